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
void ql_dequantize_row_mxfp4_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq2_xxs_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq2_xs_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq2_s_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq3_xxs_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq3_s_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq1_s_ref(const void *x, float *y, int64_t n);
void ql_dequantize_row_iq1_m_ref(const void *x, float *y, int64_t n);

/* ---- whole matrices [nrows, n_per_row], row-major, rows packed with no padding ---- */
bool ql_ggml_can_quantize(uint32_t type);   /* F32 counts (plain copy) */
bool ql_ggml_can_dequantize(uint32_t type);
/* Bytes written (nrows * row_bytes), or 0 when the type has no quantizer here or n_per_row is not a
 * multiple of its block. imatrix: NULL or n_per_row weights, the same vector for every row (as ggml). */
size_t ql_ggml_quantize_rows(uint32_t type, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                             const float *imatrix);
/* false when the type has no decoder here or n_per_row is not a multiple of its block. */
bool ql_ggml_dequantize_rows(uint32_t type, const void *src, float *dst, int64_t nrows, int64_t n_per_row);

#endif
