// awq_cuda.cu — tr(ΔW H ΔWᵀ) for batches of candidates on the GPU (API and guarantees: awq_cuda.h): the
// element-wise steps are __host__ __device__ functors run by k_each on the device and by loops in the
// emulation; D·H is one cublasDgemm (OpenBLAS's dgemm with the same arguments in the emulation), the
// diagonal blocks H_gg one cublasDgemmStridedBatched (a dgemm per group). Row-major arrays are seen by the
// column-major BLAS as their transposes: M = D·H  <=>  Mᵀ = H·Dᵀ (H symmetric).
#include "kernels/awq_cuda.h"
#include "kernels/cuda_api.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_libs.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cblas.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

using namespace ql_cuda;

// D [K·R, n] = (q − ws_k) / s_k, in double (core/output_error.c's quotient)
struct BuildD {
    const float *q, *ws, *s;
    double *D;
    int64_t R, n, ws_stride, s_stride;
    QL_HD void operator()(int64_t idx) const {
        const int64_t k = idx / (R * n), rc = idx % (R * n), c = rc % n;
        const double ref = ws ? (double)ws[k * ws_stride + rc] : 0.0;
        const double sc = s ? (double)s[k * s_stride + c] : 1.0;
        D[idx] = ddiv_rn(dsub_rn((double)q[idx], ref), sc);
    }
};

// out[row] = Σ_c D∘M over one row (columns in order)
struct RowSum {
    const double *D, *M;
    double *out;
    int64_t n;
    QL_HD void operator()(int64_t row) const {
        double e = 0;
        for (int64_t c = 0; c < n; c++) e = dadd_rn(e, dmul_rn(D[row * n + c], M[row * n + c]));
        out[row] = e;
    }
};

// out[row·ng + gi] = Σ_a D∘M over group gi of one row (m_gptq.c's clip_search order)
struct GroupSum {
    const double *D, *M;
    double *out;
    int64_t n, g, ng;
    QL_HD void operator()(int64_t idx) const {
        const int64_t row = idx / ng, gi = idx % ng, c0 = gi * g, w = g < n - c0 ? g : n - c0;
        double e = 0;
        for (int64_t a = 0; a < w; a++) e = dadd_rn(e, dmul_rn(D[row * n + c0 + a], M[row * n + c0 + a]));
        out[idx] = e;
    }
};

#define CUBLAS_TRY(call)                                                                                     \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                     \
            return ql_fail(s_ == CUBLAS_STATUS_ALLOC_FAILED ? QL_ERR_NOMEM : QL_ERR_IO,                      \
                           "kernels/awq_cuda.cu:%d: %s: cuBLAS status %d", __LINE__, #call, (int)s_);      \
    } while (0)

// One cuBLAS handle for the process (creating one costs ~0.1 s: sense opens an evaluator per tensor), used under
// g_mu: evaluations from several threads queue on the one device.
std::mutex g_mu;
const ql_cublas_api *g_cb; // kernels/cuda_libs.h: opened, not linked
cublasHandle_t g_blas;
bool g_blas_ready = false;

// A buffer on the device (or the host, emulated) that only grows.
struct Buf {
    void *p = nullptr;
    size_t bytes = 0;
};

} // namespace

struct ql_cuda_qerr {
    bool dev;
    int64_t n;
    cublasHandle_t blas;
    int nsm;
    Buf H, q, ws, s, D, M, out;
    std::vector<double> host_out;

    ql_status grow(Buf &b, size_t bytes) {
        if (b.bytes >= bytes) return QL_OK;
        release(b);
        if (dev) {
            QL_CUDA_TRY(cudaMalloc(&b.p, bytes));
        } else if (!(b.p = malloc(bytes))) {
            return ql_fail(QL_ERR_NOMEM, "awq_cuda: out of host memory (%zu bytes)", bytes);
        }
        b.bytes = bytes;
        return QL_OK;
    }
    void release(Buf &b) {
        if (b.p) dev ? (void)cudaFree(b.p) : free(b.p);
        b.p = nullptr;
        b.bytes = 0;
    }
    ql_status put(Buf &b, const void *h, size_t bytes) {
        ql_status st = grow(b, bytes);
        if (st) return st;
        if (dev)
            QL_CUDA_TRY(cudaMemcpy(b.p, h, bytes, cudaMemcpyHostToDevice));
        else
            memcpy(b.p, h, bytes);
        return QL_OK;
    }
    template <class Op> ql_status each(const Op &op, int64_t count) {
        if (count <= 0) return QL_OK;
        if (!dev) {
            for (int64_t i = 0; i < count; i++) op(i);
            return QL_OK;
        }
        k_each<Op><<<grid_for(count, 256, (int64_t)(nsm > 0 ? nsm : 1) * 32), 256>>>(op, count);
        QL_CUDA_TRY(cudaGetLastError());
        return QL_OK;
    }
    // C (m x cols, ld n) = A (m x k, ld n) · B (k x cols, ld n), column-major, batched over `batch` groups
    // strideA/B/C apart
    ql_status gemm(int64_t m, int64_t cols, int64_t k, const double *A, int64_t sa, const double *B, int64_t sb,
                   double *C, int64_t sc, int64_t batch) {
        const double one = 1.0, zero = 0.0;
        if (!dev) {
            for (int64_t i = 0; i < batch; i++)
                cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)cols, (int)k, one, A + i * sa,
                            (int)n, B + i * sb, (int)n, zero, C + i * sc, (int)n);
            return QL_OK;
        }
        if (batch == 1)
            CUBLAS_TRY(g_cb->Dgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, (int)cols, (int)k, &one, A, (int)n, B,
                                   (int)n, &zero, C, (int)n));
        else
            CUBLAS_TRY(g_cb->DgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, (int)cols, (int)k, &one, A,
                                                 (int)n, sa, B, (int)n, sb, &zero, C, (int)n, sc, (int)batch));
        return QL_OK;
    }
    ql_status fetch(size_t count) {
        host_out.resize(count);
        if (dev)
            QL_CUDA_TRY(cudaMemcpy(host_out.data(), out.p, count * sizeof(double), cudaMemcpyDeviceToHost));
        else
            memcpy(host_out.data(), out.p, count * sizeof(double));
        return QL_OK;
    }
};

extern "C" ql_status ql_cuda_qerr_new(const double *H, int64_t n, bool emulate, ql_cuda_qerr **out) {
    *out = nullptr;
    if (!H || n <= 0 || n > (1 << 20)) return ql_fail(QL_ERR_ARG, "awq_cuda: bad Hessian (%lld columns)", (long long)n);
    if (!emulate && !ql_cuda_available()) return ql_cuda_no_device("awq_cuda");
    ql_cuda_qerr *e = new (std::nothrow) ql_cuda_qerr();
    if (!e) return ql_fail(QL_ERR_NOMEM, "awq_cuda: out of memory");
    e->dev = !emulate;
    e->n = n;
    ql_status st = QL_OK;
    if (e->dev) {
        std::lock_guard<std::mutex> lock(g_mu);
        int d = 0;
        if (!g_cb && !(g_cb = ql_cublas())) {
            e->dev = false;
            delete e;
            return QL_ERR_UNSUPPORTED; // ql_last_error() names the library
        }
        if (cudaGetDevice(&d) != cudaSuccess || cudaDeviceGetAttribute(&e->nsm, cudaDevAttrMultiProcessorCount, d) != cudaSuccess ||
            (!g_blas_ready && g_cb->Create(&g_blas) != CUBLAS_STATUS_SUCCESS)) {
            e->dev = false; // nothing allocated on the device yet
            delete e;
            return ql_fail(QL_ERR_IO, "kernels/awq_cuda.cu:%d: CUDA / cuBLAS setup failed", __LINE__);
        }
        g_blas_ready = true;
        e->blas = g_blas;
    }
    if ((st = e->put(e->H, H, (size_t)(n * n) * sizeof(double)))) {
        ql_cuda_qerr_free(e);
        return st;
    }
    *out = e;
    return QL_OK;
}

extern "C" void ql_cuda_qerr_free(ql_cuda_qerr *e) {
    if (!e) return;
    Buf *bufs[] = {&e->H, &e->q, &e->ws, &e->s, &e->D, &e->M, &e->out};
    for (Buf *b : bufs) e->release(*b);
    delete e;
}

extern "C" ql_status ql_cuda_qerr_eval(ql_cuda_qerr *e, int K, int64_t R, const float *q, const float *ws,
                                       int64_t ws_stride, const float *s, int64_t s_stride, int64_t g,
                                       double *total, double *group) {
    if (!e || K < 1 || R < 1 || !q || (group && g <= 0) || ws_stride < 0 || s_stride < 0 ||
        (int64_t)K * R > INT32_MAX)
        return ql_fail(QL_ERR_ARG, "awq_cuda: bad arguments (K %d, R %lld, g %lld)", K, (long long)R, (long long)g);
    std::unique_lock<std::mutex> lock(g_mu, std::defer_lock);
    if (e->dev) lock.lock();
    const int64_t n = e->n, KR = (int64_t)K * R, cnt = KR * n;
    const int64_t wsn = ws_stride ? (int64_t)(K - 1) * ws_stride + R * n : R * n;
    const int64_t sn = s ? (s_stride ? (int64_t)(K - 1) * s_stride + n : n) : 0;
    ql_status st;
    if ((st = e->put(e->q, q, (size_t)cnt * sizeof(float))) || (ws && (st = e->put(e->ws, ws, (size_t)wsn * sizeof(float)))) ||
        (s && (st = e->put(e->s, s, (size_t)sn * sizeof(float)))) || (st = e->grow(e->D, (size_t)cnt * sizeof(double))) ||
        (st = e->grow(e->M, (size_t)cnt * sizeof(double))))
        return st;
    double *D = (double *)e->D.p, *M = (double *)e->M.p, *H = (double *)e->H.p;
    if ((st = e->each(BuildD{(const float *)e->q.p, ws ? (const float *)e->ws.p : nullptr, s ? (const float *)e->s.p : nullptr, D, R,
                             n, ws_stride, s_stride},
                      cnt)))
        return st;
    if (total) {
        if ((st = e->gemm(n, KR, n, H, 0, D, 0, M, 0, 1)) || (st = e->grow(e->out, (size_t)KR * sizeof(double))) ||
            (st = e->each(RowSum{D, M, (double *)e->out.p, n}, KR)) || (st = e->fetch((size_t)KR)))
            return st;
        for (int k = 0; k < K; k++) {
            double t = 0;
            for (int64_t r = 0; r < R; r++) t += e->host_out[(size_t)(k * R + r)];
            total[k] = t;
        }
    }
    if (group) {
        const int64_t gg = g < n ? g : n, nfull = n / gg, ng = (n + gg - 1) / gg, tail = n - nfull * gg;
        if ((st = e->gemm(gg, KR, gg, H, gg * (n + 1), D, gg, M, gg, nfull)) ||
            (tail && (st = e->gemm(tail, KR, tail, H + nfull * gg * (n + 1), 0, D + nfull * gg, 0, M + nfull * gg, 0, 1))) ||
            (st = e->grow(e->out, (size_t)(KR * ng) * sizeof(double))) ||
            (st = e->each(GroupSum{D, M, (double *)e->out.p, n, gg, ng}, KR * ng)) || (st = e->fetch((size_t)(KR * ng))))
            return st;
        memcpy(group, e->host_out.data(), (size_t)(KR * ng) * sizeof(double));
    }
    return QL_OK;
}
