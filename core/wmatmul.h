/* wmatmul.h — weight-only matmul as deployed, for the CPU backend (core/backend_cpu.c): a weight is read in
 * the format it is stored in, from the file mapping, instead of being decoded to F32 at load. A block of
 * weight rows is decoded into a small buffer just before each sgemm (the decode is the format's exact one,
 * so the products equal those of a once-decoded F32 copy), and INT8-per-row weights times INT8 per-token
 * activations run as integer products (kernels/int8_gemm.h). Memory stays at the mapped file plus one
 * tile per thread. F32 rows handed in by a probe (ql_backend_weight.f32) always win. */
#ifndef QL_WMATMUL_H
#define QL_WMATMUL_H

#include "core/backend.h"

/* y[T, N] = x[T, K] · Wᵀ + beta·y (+ bias[N]); x is already rounded as the layer wants. n_threads decode
 * the tiles (sgemm uses OpenBLAS's own count). */
ql_status ql_wmatmul_f32(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                         int K, int N, float beta, int n_threads);

/* y[i, 0..dim) = row ids[i] of w, decoded from the stored bytes unless w->f32 is given. */
ql_status ql_wmatmul_get_rows(const ql_backend_weight *w, const int32_t *ids, int n, int dim, float *y);

/* The n floats of a one-row weight (norm, bias): w->f32, the mapping itself when stored as aligned F32,
 * else decoded into *owned (the caller frees it; NULL otherwise). */
ql_status ql_weight_vector(const ql_backend_weight *w, int64_t n, const float **out, float **owned);

/* Rows [r0, r0 + nr) of w as F32 [nr, K]: a pointer into w->f32 or the mapping, or decoded into buf
 * (which holds nr·K floats; whole-tensor formats need every row: r0 = 0, nr = all). NULL with ql_fail()
 * when the format has no decoder. */
const float *ql_weight_rows(const ql_backend_weight *w, int64_t r0, int64_t nr, int64_t K, float *buf, int n_threads);

/* True when w is stored as INT8 rows with one scale per row (the format's grid says so: INT, 8 bits, one
 * symmetric group per row) and K fits the integer kernels: then ql_wmatmul_int8 computes what the float
 * emulation of dynamic per-token INT8 activations (core/actquant.c, QL_ACT_INT8_TOKEN) computes, as
 * y = d_x[t] · s_w[n] · Σ q_x · q_w in int32. */
bool ql_wmatmul_int8_applies(const ql_backend_weight *w, int K);
/* y[T, N] = that product + beta·y (+ bias). xtmp: scratch of T·K floats (holds the int8 codes and scales). */
ql_status ql_wmatmul_int8(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                          int K, int N, float beta, void *xtmp, int n_threads);

/* Per-token INT8 codes of x [T, K] exactly as ql_act_quant_apply(QL_ACT_INT8_TOKEN) rounds them: q [T, K],
 * d [T] (the value is q · d). */
void ql_quantize_tokens_int8(const float *x, int T, int K, int8_t *q, float *d);

/* ggml-quantized weights (K-quants, i-quants, ternary, legacy 32-blocks), stored, under llama.cpp's
 * Q8_K / Q8_0 / Q8_1 rounding of the input, as integer dot products on
 * an AVX-512 VNNI CPU (kernels/kquant_gemm.h); QL_KQUANT_F32=1 keeps the F32 sgemm path. ql_wmatmul_kquant returns
 * QL_ERR_UNSUPPORTED (nothing written, no error set) when an input is not finite: the caller takes the float path. */
bool ql_wmatmul_kquant_applies(const ql_backend_weight *w, int K);
ql_status ql_wmatmul_kquant(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                            int K, int N, float beta, int n_threads);

/* F16 / BF16 weights, stored, widened inside the kernel (kernels/hgemm.h) on an AVX-512 CPU when K is a multiple
 * of 16: no decoded copy, no sgemm. QL_KQUANT_F32=1 keeps the decode + sgemm path here too. */
bool ql_wmatmul_half_applies(const ql_backend_weight *w, int K);
ql_status ql_wmatmul_half(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                          int K, int N, float beta, int n_threads);

#endif
