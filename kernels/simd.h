/* simd.h — AVX2 / AVX-512 twins of the scalar codecs in ggml_quants.h (kernels/ggml_quants_simd.c).
 * Every fast function produces output IDENTICAL to its _ref twin (bytes for quantize, float bits for
 * dequantize), on any input, NaN/Inf included: blocks the vector code cannot reproduce exactly (non-finite
 * inputs, out-of-range integer conversions) are handed to the scalar reference block by block.
 * The level is picked once at start-up (AVX-512 > AVX2 > ref, QL_FORCE_REF=1 forces ref); tests may
 * change it with ql_simd_set_level. Functions are pure and thread-safe; buffers belong to the caller.
 * The _fast functions have the format registry's signature (methods/format.h): rows [nrows, ncols]
 * packed without padding, importance NULL or ncols weights shared by every row (ggml's imatrix). */
#ifndef QL_SIMD_H
#define QL_SIMD_H

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
 * layout of methods/fmt_int.c (ql_int_quantize_rows_ref with bits 4, group 128, mse false). Any ncols;
 * rows that are not whole groups go to the reference. importance is unused (as by those entries). */
void ql_quantize_rows_int4_g128_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                     const float *importance);
void ql_dequantize_rows_int4_g128_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_quantize_rows_int4_g128_sym_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                         const float *importance);
void ql_dequantize_rows_int4_g128_sym_fast(const void *src, float *dst, int64_t nrows, int64_t ncols);
/* For methods/fmt_int.c's entry X-macro: the twin of int{n}_g{g}[_sym][_mse], or NULL where there is none. */
#define QL_INT_QUANT_FAST(n, g, sym, mse)                                                                    \
    ((n) == 4 && (g) == 128 && !(mse)                                                                        \
         ? ((sym) ? ql_quantize_rows_int4_g128_sym_fast : ql_quantize_rows_int4_g128_fast)                   \
         : NULL)
#define QL_INT_DEQUANT_FAST(n, g, sym, mse)                                                                  \
    ((n) == 4 && (g) == 128                                                                                  \
         ? ((sym) ? ql_dequantize_rows_int4_g128_sym_fast : ql_dequantize_rows_int4_g128_fast)               \
         : NULL)

#endif
