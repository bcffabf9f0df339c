/* simd.h — AVX2 / AVX-512 twins of the scalar codecs (kernels/ggml_quants.h, kernels/int_quants.h), one
 * file per format family: kernels/simd_legacy.c (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), simd_kquants.c
 * (Q2_K..Q6_K), simd_int.c (INT4 g128), simd_float.c (F16, BF16), over the one set of vector primitives
 * in kernels/simd_prims.h; the level is kept by kernels/simd.c.
 * Every fast function produces output IDENTICAL to its _ref twin (bytes for quantize, float bits for
 * dequantize), on any input, NaN/Inf included, with and without importance: blocks the vector code cannot
 * reproduce exactly (non-finite inputs, products outside a cast's defined range) are handed to the scalar
 * reference block by block (row by row for the legacy imatrix paths, whose weights span the row).
 * The level is picked once at start-up (AVX-512 > AVX2 > ref, QL_FORCE_REF=1 forces ref); tests may
 * change it with ql_simd_set_level. The AVX2 F16 kernels also need F16C (else the reference runs).
 * Functions are pure and thread-safe; buffers belong to the caller.
 * The _fast functions have the format registry's signature (formats/format.h): rows [nrows, ncols]
 * packed without padding, importance NULL or ncols weights shared by every row (ggml's imatrix). */
#ifndef QL_SIMD_H
#define QL_SIMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { QL_SIMD_REF = 0, QL_SIMD_AVX2 = 1, QL_SIMD_AVX512 = 2 } ql_simd_level;

/* Best level this CPU (and OS) supports, ignoring QL_FORCE_REF. */
ql_simd_level ql_simd_detect(void);
/* The level the _fast functions use now. */
ql_simd_level ql_simd_level_get(void);
/* Use `level` from now on (all threads); clamped to what the CPU supports. Returns the level in effect. */
ql_simd_level ql_simd_set_level(ql_simd_level level);
const char *ql_simd_level_name(ql_simd_level level); /* "ref", "avx2", "avx512" */
/* True when the CPU has F16C, which the AVX2 F16 kernels need besides AVX2. */
bool ql_simd_has_f16c(void);

/* ggml Q8_0 / Q4_K / Q6_K: ncols must be a multiple of the block (32 / 256 / 256). */
void ql_quantize_rows_q8_0_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q8_0_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q4_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q4_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_q6_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance);
void ql_dequantize_rows_q6_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);

/* INT4, groups of 128, fp16 scales, 4-bit zero points (int4_g128) or symmetric (int4_g128_sym): the
 * layout of kernels/int_quants_ref.c (ql_int_quantize_rows_ref with bits 4, group 128, mse false). Any ncols;
 * rows that are not whole groups go to the reference. importance is unused (as by those entries). */
void ql_quantize_rows_int4_g128_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                     const float *importance);
void ql_dequantize_rows_int4_g128_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_int4_g128_sym_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                         const float *importance);
void ql_dequantize_rows_int4_g128_sym_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
/* One bitsandbytes 4-bit block of 64 weights, when it is plain (every weight finite, absmax = the largest
 * |x| > 0 with a finite 1/absmax): *absmax, and codes packed two a byte (element 2j in the high nibble of
 * byte j), code i = leaf[number of thr below v] (+ 8 when sign_split and v < 0, thresholds then compared with
 * |v|), v = x[i] * (1/absmax). false (nothing written) for any other block, or when this CPU has no twin:
 * formats/fmt_nf4.c then codes it. */
typedef struct {
    const float *thr; /* sorted; at most 15 */
    int nthr;
    const uint8_t *leaf; /* nthr + 1 codes */
    bool sign_split;
} ql_bnb4_thresholds;
bool ql_bnb4_block64_fast(const ql_bnb4_thresholds *t, const float *x, float *absmax, uint8_t *packed);

/* One LLM.int8 row (bnb_int8, formats/fmt_bnb8.c: [f32 absmax][ncols int8 codes]); false (nothing written)
 * when this CPU has no twin or ncols is not a multiple of 16: the reference codes it. */
bool ql_bnb8_row_fast(const float *x, uint8_t *out, int64_t ncols);

/* INT8 per output row, symmetric, fp16 scale (int8_channel): ql_int_quantize_rows_ref with bits 8, group 0 (the
 * row), sym, no MSE. Any ncols; rows that are not whole vectors go to the reference. importance is unused. */
void ql_quantize_rows_int8_channel_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                        const float *importance);
void ql_dequantize_rows_int8_channel_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
/* For methods/fmt_int.c's entry X-macro: the twin of int{n}_g{g}[_sym][_mse], or NULL where there is none. */
#define QL_INT_QUANT_FAST(n, g, sym, mse)                                                                    \
    ((n) == 4 && (g) == 128 && !(mse)                                                                        \
         ? ((sym) ? ql_quantize_rows_int4_g128_sym_fast : ql_quantize_rows_int4_g128_fast)                   \
         : NULL)
#define QL_INT_DEQUANT_FAST(n, g, sym, mse)                                                                  \
    ((n) == 4 && (g) == 128                                                                                  \
         ? ((sym) ? ql_dequantize_rows_int4_g128_sym_fast : ql_dequantize_rows_int4_g128_fast)               \
         : NULL)


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
