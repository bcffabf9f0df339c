/* simd2.h — more AVX2 / AVX-512 twins of the scalar codecs in ggml_quants.h (kernels/ggml_quants_simd2.c):
 * Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, F16 and BF16. Same contract as simd.h: output
 * IDENTICAL to the _ref twin (bytes for quantize, float bits for dequantize) on any input, with and without
 * importance; blocks the vector code cannot reproduce exactly (non-finite inputs, products outside a cast's
 * range) go to the scalar reference. The level is simd.h's (ql_simd_level_get / ql_simd_set_level,
 * QL_FORCE_REF=1). The AVX2 F16 kernels also need F16C (else the reference runs).
 * Signatures are the format registry's (methods/format.h): rows [nrows, ncols] packed without padding,
 * importance NULL or ncols weights shared by every row. Pure and thread-safe; buffers belong to the
 * caller. */
#ifndef QL_SIMD2_H
#define QL_SIMD2_H

#include <stddef.h>
#include <stdint.h>

/* Legacy blocks of 32: ncols a multiple of 32. */
void ql_quantize_rows_q4_0_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q4_0_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q4_1_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q4_1_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q5_0_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q5_0_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q5_1_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q5_1_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_iq4_nl_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                  const float *importance);
void ql_dequantize_rows_iq4_nl_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);

/* K-quants: ncols a multiple of 256. */
void ql_quantize_rows_q2_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q2_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q3_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q3_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q5_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q5_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);

/* F16 (round to nearest even; equal to ql_fp32_to_fp16 / ql_fp16_to_fp32 on every input, NaN payloads
 * and signalling NaNs included) and BF16 (equal to ql_fp32_to_bf16 / ql_bf16_to_fp32). Any ncols;
 * importance is unused. */
void ql_quantize_rows_f16_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                               const float *importance);
void ql_dequantize_rows_f16_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_bf16_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_bf16_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);

#endif
