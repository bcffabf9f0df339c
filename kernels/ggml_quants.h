/* ggml_quants.h — scalar reference codecs for ggml's block formats, bit-exact with ggml-quants.c
 * (llama.cpp 34af94cd): quantize (with or without importance weights) and dequantize one row.
 * Buffers belong to the caller; every function is pure and thread-safe. Rows are n elements with n a
 * multiple of the type's block (32 or 256); imatrix, when given, holds n weights for that row.
 * imatrix == NULL selects ggml's no-imatrix path (the *_ref round-to-nearest quantizers for Q4_0..Q6_K),
 * which is what ggml_quantize_chunk does; it is NOT the same as passing all-ones weights. */
#ifndef QL_GGML_QUANTS_H
#define QL_GGML_QUANTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ---- quantize one row: x [n] -> y [n / block * block_bytes] ---- */
void ql_quantize_row_f16_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_bf16_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q4_0_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q4_1_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q5_0_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q5_1_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q8_0_ref(const float *x, void *y, int64_t n, const float *imatrix); /* imatrix unused */
void ql_quantize_row_q2_K_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q3_K_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q4_K_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q5_K_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_q6_K_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq4_nl_ref(const float *x, void *y, int64_t n, const float *imatrix);
/* ggml's quantize_row_iq4_nl_ref: what ggml-cpu's from_float (a llama.cpp KV-cache write) stores, a quicker
 * search than the file quantizer's (no scale search, no re-rounding), so its codes can differ */
void ql_quantize_row_iq4_nl_fast_ref(const float *x, void *y, int64_t n);
void ql_quantize_row_iq4_xs_ref(const float *x, void *y, int64_t n, const float *imatrix);

/* ---- dequantize one row: x [n / block * block_bytes] -> y [n] ---- */
void ql_dequantize_row_f16_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_bf16_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q4_0_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q4_1_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q5_0_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q5_1_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q8_0_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q2_K_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q3_K_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q4_K_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q5_K_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q6_K_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq4_nl_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq4_xs_ref(const void *x, float *y, int64_t n);
/* Dequantize-only formats (ggml writes them; qlab reads them). */
void ql_dequantize_row_q8_1_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_q8_K_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_tq1_0_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_tq2_0_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq2_xxs_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq2_xs_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq2_s_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq3_xxs_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq3_s_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq1_s_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq1_m_ref(const void *x, float *y, int64_t n);
/* One 256-block of a lattice (IQ1_S..IQ3_S) or ternary (TQ1_0, TQ2_0) type as integers, the way llama.cpp's
 * vec_dot_*_q8_K sees it: value j = *dw · sc[j / L] · c[j], where L (16, 32 or 256) is what it returns. The
 * constant factors (IQ2's 1/8, IQ3_XXS's 1/4, IQ1's ±1/8 shift as 8·g ± 1) go into *dw, so every product with
 * int8 activations is an exact integer; |c| <= 62, 1 <= sc <= 31. 0 (nothing written) for any other type. */
int ql_ggml_block_int_codes(uint32_t type, const void *blk, int8_t c[256], int16_t sc[16], float *dw);

/* ---- whole matrices [nrows, ncols], row-major, rows packed with no padding ----
 * The row codecs above applied row by row: the entry points formats/fmt_ggml.c points at (kernels know
 * block layouts, not formats). ncols must be a multiple of the block (32 or 256; 1 for the floats);
 * otherwise, or for nrows <= 0, nothing is written. imatrix: NULL or ncols weights, the same vector for
 * every row (as ggml_quantize_chunk). Same signatures as ql_quantize_fn / ql_dequantize_fn. */
#define QL_GGML_ROWS_DECL(lname)                                                                         \
    void ql_quantize_rows_##lname##_ref(const float *src, void *dst, int64_t nrows, int64_t ncols,       \
                                        const float *imatrix);                                           \
    void ql_dequantize_rows_##lname##_ref(const void *src, float *dst, int64_t nrows, int64_t ncols);
#define QL_GGML_DECODER_DECL(lname)                                                                      \
    void ql_dequantize_rows_##lname##_ref(const void *src, float *dst, int64_t nrows, int64_t ncols);
QL_GGML_ROWS_DECL(f32) QL_GGML_ROWS_DECL(f16) QL_GGML_ROWS_DECL(bf16)
QL_GGML_ROWS_DECL(q4_0) QL_GGML_ROWS_DECL(q4_1) QL_GGML_ROWS_DECL(q5_0) QL_GGML_ROWS_DECL(q5_1)
QL_GGML_ROWS_DECL(q8_0) QL_GGML_ROWS_DECL(q2_k) QL_GGML_ROWS_DECL(q3_k) QL_GGML_ROWS_DECL(q4_k)
QL_GGML_ROWS_DECL(q5_k) QL_GGML_ROWS_DECL(q6_k) QL_GGML_ROWS_DECL(iq4_nl) QL_GGML_ROWS_DECL(iq4_xs)
QL_GGML_DECODER_DECL(q8_k) QL_GGML_DECODER_DECL(tq1_0) QL_GGML_DECODER_DECL(tq2_0)
QL_GGML_DECODER_DECL(iq2_xxs) QL_GGML_DECODER_DECL(iq2_xs) QL_GGML_DECODER_DECL(iq2_s)
QL_GGML_DECODER_DECL(iq3_xxs) QL_GGML_DECODER_DECL(iq3_s) QL_GGML_DECODER_DECL(iq1_s) QL_GGML_DECODER_DECL(iq1_m)

#endif
