/* awq_cuda.h — the quadratic output error of quantized weights, tr(ΔW H ΔWᵀ), on the GPU, for AWQ's scale and
 * clip searches (methods/m_awq.c): H (double, [n, n], Σ x xᵀ of the layer input) stays on the device, and one
 * call evaluates K candidates at once — D_k = (q_k − ws_k)/s_k in double, M = D·H with one DGEMM over the K·R
 * rows, then per candidate the total Σ D∘M and/or, per row and quantization group of g columns, δ H_gg δᵀ
 * (a strided batched DGEMM over the diagonal blocks). Arithmetic as core/output_error.c and m_awq.c's
 * clip_search (double, the same quotient); the sums run per row, then over rows, so totals agree with the CPU's
 * single running sum to rounding (~1e-15 relative), and the per-group sums term for term where the BLAS gives
 * the same D·H. Built only with nvcc; without it every function fails with QL_ERR_UNSUPPORTED.
 * Errors: QL_ERR_ARG (shapes), QL_ERR_UNSUPPORTED (no device), QL_ERR_NOMEM, QL_ERR_IO (CUDA / cuBLAS, with
 * kernels/awq_cuda.cu:LINE). A handle is used by one thread at a time; evaluations on the device are serialized
 * (one cuBLAS handle for the process). */
#ifndef QL_AWQ_CUDA_H
#define QL_AWQ_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

typedef struct ql_cuda_qerr ql_cuda_qerr;

#if defined(QL_HAVE_CUDA) || defined(__CUDACC__)

/* H [n, n] (row-major, symmetric) copied to the device (emulate: kept on the host, cuBLAS replaced by
 * OpenBLAS with the same arguments and the kernels' per-element code run in loops: needs no GPU). */
ql_status ql_cuda_qerr_new(const double *H, int64_t n, bool emulate, ql_cuda_qerr **out);
void ql_cuda_qerr_free(ql_cuda_qerr *e);

/* K candidates of R rows: candidate k has values q + k·R·n, reference ws + k·ws_stride (0: one reference for
 * all; ws NULL: 0, D = q exactly), column scales s + k·s_stride (s NULL: 1). total [K] (or NULL) gets Σ D∘(D H); group (or NULL; g > 0
 * columns per group, the last may be shorter) gets [K, R, ng] with entry δ H_gg δᵀ. */
ql_status ql_cuda_qerr_eval(ql_cuda_qerr *e, int K, int64_t R, const float *q, const float *ws, int64_t ws_stride,
                            const float *s, int64_t s_stride, int64_t g, double *total, double *group);

#else

static inline ql_status ql_cuda_qerr_new(const double *H, int64_t n, bool emulate, ql_cuda_qerr **out) {
    (void)H, (void)n, (void)emulate;
    *out = NULL;
    return ql_fail(QL_ERR_UNSUPPORTED, "awq_cuda: built without CUDA (nvcc was not found)");
}
static inline void ql_cuda_qerr_free(ql_cuda_qerr *e) { (void)e; }
static inline ql_status ql_cuda_qerr_eval(ql_cuda_qerr *e, int K, int64_t R, const float *q, const float *ws,
                                          int64_t ws_stride, const float *s, int64_t s_stride, int64_t g,
                                          double *total, double *group) {
    (void)e, (void)K, (void)R, (void)q, (void)ws, (void)ws_stride, (void)s, (void)s_stride, (void)g, (void)total;
    (void)group;
    return ql_fail(QL_ERR_UNSUPPORTED, "awq_cuda: built without CUDA (nvcc was not found)");
}

#endif

#ifdef __cplusplus
}
#endif

#endif
