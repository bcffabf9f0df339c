// gptq_cuda.cu — GPTQ for the INTn group formats on the GPU (API and guarantees: gptq_cuda.h), following
// methods/m_gptq.c step by step so the chosen values match the CPU method's:
//   H = scale·XᵀX, dead inputs (H_ii <= 0) get H_ii = 1 and W[:, i] = 0, λ = damp·mean(diag H) (x10, up
//   to 4 times, while H is not positive definite); P = J·H·J (J reverses) -> Cholesky in double
//   (cusolverDnXpotrf) -> U = (J·L·J)⁻¹ in float (cusolverDnXtrtri) = upper Cholesky factor of H⁻¹;
//   columns in lazy batches of `block`: k_batch brings each column of the batch up to date with the
//   batch's pending errors (left-looking, the CPU's summation order), fixes a group's scale / zero when the
//   batch reaches its first column (fmt_int.c's quantizer on the error-updated weights), rounds to the
//   grid and stores e = (w - q)/U_jj; then cublasSgemm applies the batch to the trailing columns.
// Layouts as on the CPU: Wt, Q, codes [cols, rows] (a column is contiguous: thread r reads row r, so a
// warp's loads coalesce); U [cols, cols] row-major upper; P [cols, cols] symmetric.
// Exactness: the per-element code is __host__ __device__ and every float/double operation of the
// rounding path goes through the _rn intrinsics on the device (nvcc never contracts them into FMA), so
// the host emulation (same code, LAPACK/OpenBLAS in place of cuSOLVER/cuBLAS) and the device agree with
// each other and with m_gptq.c wherever the inputs to a rounding agree; the host build of this file is
// plain x86-64 (no FMA), where the compiler has nothing to contract.
#include "kernels/gptq_cuda.h"
#include "kernels/cuda_api.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh" /* h2f, f2h */

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include "kernels/cuda_libs.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

using namespace ql_cuda;

// ---------------------------------------------------------------------------------------------------
// Arithmetic: IEEE round-to-nearest, never fused (cuda_common.cuh); NaN bits are not x86's here, none of
// them reaches a stored result (non-finite weights are zeroed first, a NaN quotient clamps to 0)
// ---------------------------------------------------------------------------------------------------
QL_HD float fa(float a, float b) { return add_rn(a, b); }
QL_HD float fs(float a, float b) { return sub_rn(a, b); }
QL_HD float fm(float a, float b) { return mul_rn(a, b); }
QL_HD float fd(float a, float b) { return div_rn(a, b); }
QL_HD double da(double a, double b) { return dadd_rn(a, b); }
QL_HD double dm(double a, double b) { return dmul_rn(a, b); }
QL_HD double ds(double a, double b) { return dsub_rn(a, b); }
QL_HD double dd(double a, double b) { return ddiv_rn(a, b); }

// ---------------------------------------------------------------------------------------------------
// The column loop of one batch, for one row (m_gptq.c: batch_rows / fix_block / quant_linear)
// ---------------------------------------------------------------------------------------------------
struct BatchArgs {
    const float *Wt; // [n, rows] weights, trailing updates of the earlier batches applied
    float *E;        // [i2 - i1, rows] (w - q) / U_jj of this batch
    const float *U;  // [n, n] row-major, upper triangle
    float *Q;        // [n, rows] chosen values
    uint8_t *codes;  // [n, rows] chosen codes
    uint16_t *sc;    // [ngroups, rows] fp16 scale of each group
    uint8_t *zr;     // [ngroups, rows] zero point of each group (2^(bits-1) when sym)
    int64_t rows, n, i1, i2;
    int64_t g; // columns per group (n: one group per row)
    int bits;
    bool sym;
};

// y - Σ_t c[t·cs]·e[t·lde] for t < nt, four terms per step: m_gptq.c's sub_combination, term for term
QL_HD float sub_comb(float y, const float *e, int64_t lde, const float *c, int64_t cs, int64_t nt) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) {
        const float p01 = fa(fm(c[t * cs], e[t * lde]), fm(c[(t + 1) * cs], e[(t + 1) * lde]));
        const float p23 = fa(fm(c[(t + 2) * cs], e[(t + 2) * lde]), fm(c[(t + 3) * cs], e[(t + 3) * lde]));
        y = fs(y, fa(p01, p23));
    }
    for (; t < nt; t++)
        y = fs(y, fm(c[t * cs], e[t * lde]));
    return y;
}

// Coefficients U[i1 + t, p] for t = 0, 1, ...: from the block's shared copy Ub (ldub apart for each p of
// the batch) when there is one, else from U (n apart).
QL_HD void coef_of(const BatchArgs &A, int64_t p, const float *Ub, int64_t ldub, const float **c,
                   int64_t *cs) {
    if (Ub && p < A.i2) {
        *c = Ub + (p - A.i1) * ldub;
        *cs = 1;
    } else {
        *c = A.U + A.i1 * A.n + p;
        *cs = A.n;
    }
}

// Fix the scale and zero of the group starting at column j (GPTQ at j): its columns brought up to date
// with the batch's pending errors, then fmt_int.c's choose_group (non-MSE) / params_for(1.0f).
QL_HD void fix_group(const BatchArgs &A, int64_t r, int64_t j, const float *Eloc, int64_t lde,
                     const float *Ub, int64_t ldub, float *a_out, float *o_out) {
    const int64_t len = A.g < A.n - j ? A.g : A.n - j;
    const int maxq = (1 << A.bits) - 1, half = 1 << (A.bits - 1);
    float lo = 0.0f, hi = 0.0f, m = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        const int64_t p = j + i;
        float x = A.Wt[p * A.rows + r];
        if (j > A.i1) {
            const float *c;
            int64_t cs;
            coef_of(A, p, Ub, ldub, &c, &cs);
            x = sub_comb(x, Eloc, lde, c, cs, j - A.i1);
        }
        if (!finite_f(x)) continue;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
        if (fabs_bits(x) > fabs_bits(m)) m = x;
    }
    const double s = A.sym ? dd((double)m, (double)-half) : dd(ds((double)hi, (double)lo), (double)maxq);
    float sf = (float)s;
    sf = sf > 65504.0f ? 65504.0f : sf < -65504.0f ? -65504.0f : sf;
    const uint16_t h = f2h(sf);
    const float scale = h2f(h);
    int zero = half;
    if (!A.sym) {
        const float id = scale != 0.0f ? fd(1.0f, scale) : 0.0f;
        const float z = rintf(fm(-lo, id));
        zero = z < 0.0f ? 0 : z > (float)maxq ? maxq : (int)z;
    }
    const int64_t gi = (j / A.g) * A.rows + r;
    A.sc[gi] = h;
    A.zr[gi] = (uint8_t)zero;
    *a_out = scale;
    *o_out = (float)-zero;
}

// Columns [i1, i2) of row r. Eloc[t·lde]: this row's errors of the batch (shared memory on the device);
// Ub: U's batch block in shared memory, or NULL.
QL_HD void batch_row(const BatchArgs &A, int64_t r, float *Eloc, int64_t lde, const float *Ub, int64_t ldub) {
    const float kmax = (float)((1 << A.bits) - 1), magic = 12582912.0f; // 1.5·2^23: rounds half to even
    float a = 0.0f, o = 0.0f;
    for (int64_t j = A.i1; j < A.i2; j++) {
        if (j % A.g == 0) {
            fix_group(A, r, j, Eloc, lde, Ub, ldub, &a, &o);
        } else if (j == A.i1) { // a group fixed in an earlier batch
            const int64_t gi = (j / A.g) * A.rows + r;
            a = h2f(A.sc[gi]);
            o = (float)-(int)A.zr[gi];
        }
        float w = A.Wt[j * A.rows + r];
        if (j > A.i1) {
            const float *c;
            int64_t cs;
            coef_of(A, j, Ub, ldub, &c, &cs);
            w = sub_comb(w, Eloc, lde, c, cs, j - A.i1);
        }
        const float dinv = fd(1.0f, A.U[j * A.n + j]);
        float v = fs(fd(fs(w, 0.0f), a), o); // (w - b)/a - o with b = 0, as quant_linear
        v = v > 0.0f ? v : 0.0f;             // NaN (a == 0) -> 0
        v = v < kmax ? v : kmax;
        const float k = fs(fa(v, magic), magic);
        const float qv = fa(fm(a, fa(k, o)), 0.0f);
        const float e = fm(fs(w, qv), dinv);
        Eloc[(j - A.i1) * lde] = e;
        A.E[(j - A.i1) * A.rows + r] = e;
        A.Q[j * A.rows + r] = qv;
        A.codes[j * A.rows + r] = (uint8_t)(int)k;
    }
}

// ---------------------------------------------------------------------------------------------------
// Element-wise steps (one functor call per output element or row)
// ---------------------------------------------------------------------------------------------------

// P = J·H·J with H = scale·xtx (dead inputs: H_ii = 1, row and column 0) and lam on the diagonal; the
// (a, b) and (b, a) entries both from m_gptq.c's build_reversed entry (max(a,b), min(a,b)).
struct BuildP {
    const double *H;
    double *P;
    const uint8_t *dead;
    int64_t n;
    double scale, lam;
    QL_HD void operator()(int64_t idx) const {
        const int64_t a = idx / n, b = idx % n, hi = a > b ? a : b, lo = a > b ? b : a;
        const int64_t pa = n - 1 - hi, pb = n - 1 - lo;
        double v;
        if (a == b)
            v = da(dead[pa] ? 1.0 : dm(scale, H[pa * n + pa]), lam);
        else
            v = dead[pa] || dead[pb] ? 0.0 : dm(scale, H[pa * n + pb]);
        P[idx] = v;
    }
};

// U0 (row-major upper, float) = J·L·J from the row-major lower L = potrf's output; 0 below the diagonal.
struct BuildU {
    const double *P;
    float *U;
    int64_t n;
    QL_HD void operator()(int64_t idx) const {
        const int64_t i = idx / n, j = idx % n;
        U[idx] = j >= i ? (float)P[(n - 1 - i) * n + (n - 1 - j)] : 0.0f;
    }
};

// Wt [n, rows] from W [rows, n]: dead columns and non-finite weights become 0.
struct LoadW {
    const float *W;
    float *Wt;
    const uint8_t *dead;
    int64_t rows, n;
    QL_HD void operator()(int64_t idx) const {
        const int64_t j = idx / rows, r = idx % rows;
        const float x = W[r * n + j];
        Wt[idx] = dead[j] || !finite_f(x) ? 0.0f : x;
    }
};

// Qr [rows, n] from Q [n, rows].
struct StoreQ {
    const float *Q;
    float *Qr;
    int64_t rows, n;
    QL_HD void operator()(int64_t idx) const {
        const int64_t r = idx / n, j = idx % n;
        Qr[idx] = Q[j * rows + r];
    }
};

// ---------------------------------------------------------------------------------------------------
// The grid path (ql_cuda_gptq_grid_run): any per-column code grid, columns in processing order (act
// order), the block scales fixed by the caller's hook between column segments (m_gptq.c: fix_block /
// batch_rows / quant_linear / quant_table, term for term)
// ---------------------------------------------------------------------------------------------------
struct GridArgs {
    const float *U;       // [n, n] upper, processing order
    const float *Wt;      // [n, rows] processing order, trailing updates of earlier batches applied
    float *E;             // [B, rows] (w - q)/U_jj of this batch
    float *Q;             // [n, rows] chosen values, column order
    uint8_t *codes;       // [n, rows] chosen codes, column order
    const float *A, *B, *O; // [nblk·nsub, rows] the fixed grids
    const int64_t *perm;  // [n] processing position -> column
    int64_t rows, n, i1, bw, sub, nsub;
    float kmin, kmax;
    float mid[16]; // table grids: mid[i] = table[i-1] + table[i] (i >= 1), as m_gptq.c's quant_table
    float table[16];
    int has_table;
};

// Positions [j0, j1) of row r (all inside the batch starting at i1).
struct SegRow {
    GridArgs G;
    int64_t j0, j1;
    QL_HD void operator()(int64_t r) const {
        const float magic = 12582912.0f; // 1.5·2^23: v + magic - magic rounds half to even
        const int64_t rows = G.rows, n = G.n;
        for (int64_t j = j0; j < j1; j++) {
            const int64_t col = G.perm[j], blk = col / G.bw;
            const int64_t s = G.sub > 0 ? (col - blk * G.bw) / G.sub : 0, gi = (blk * G.nsub + s) * rows + r;
            float w = G.Wt[j * rows + r];
            if (j > G.i1) w = sub_comb(w, G.E + r, rows, G.U + G.i1 * n + j, n, j - G.i1);
            const float dinv = fd(1.0f, G.U[j * n + j]), a = G.A[gi];
            float qv;
            int k;
            if (G.has_table) {
                const float y2 = fm(2.0f, fd(w, a));
                k = 0;
                for (int i = 1; i < 16; i++) k += y2 >= G.mid[i];
                qv = fm(a, G.table[k]);
            } else {
                const float b = G.B[gi], o = G.O[gi];
                float v = fs(fd(fs(w, b), a), o);
                v = v > G.kmin ? v : G.kmin; // NaN (a == 0) -> kmin
                v = v < G.kmax ? v : G.kmax;
                const float kf = fs(fa(v, magic), magic);
                k = (int)kf;
                qv = fa(fm(a, fa(kf, o)), b);
            }
            G.E[(j - G.i1) * rows + r] = fm(fs(w, qv), dinv);
            G.Q[col * rows + r] = qv;
            G.codes[col * rows + r] = (uint8_t)k;
        }
    }
};

// Gb [rows, len] = block blk's columns (columns c0 .. c0+len-1, at positions >= j) brought up to date with
// the batch's errors of positions [i1, j).
struct GatherBlock {
    const float *U, *Wt, *E;
    const int64_t *invperm;
    float *Gb;
    int64_t rows, n, i1, j, c0, len;
    QL_HD void operator()(int64_t idx) const {
        const int64_t r = idx / len, i = idx % len, p = invperm[c0 + i];
        float x = Wt[p * rows + r];
        if (j > i1) x = sub_comb(x, E + r, rows, U + i1 * n + p, n, j - i1);
        Gb[idx] = x;
    }
};

// Wt [n, rows] in processing order from W [rows, n]: dead columns and non-finite weights become 0.
struct LoadWPerm {
    const float *W;
    float *Wt;
    const uint8_t *dead; // by column
    const int64_t *perm;
    int64_t rows, n;
    QL_HD void operator()(int64_t idx) const {
        const int64_t j = idx / rows, r = idx % rows, c = perm[j];
        const float x = W[r * n + c];
        Wt[idx] = dead[c] || !finite_f(x) ? 0.0f : x;
    }
};

// P = J·Hp·J with Hp = H permuted into processing order (m_gptq.c's build_reversed, both triangles).
struct BuildPPerm {
    const double *H;
    double *P;
    const uint8_t *dead;
    const int64_t *perm;
    int64_t n;
    double scale, lam;
    QL_HD void operator()(int64_t idx) const {
        const int64_t a = idx / n, b = idx % n, hi = a > b ? a : b, lo = a > b ? b : a;
        const int64_t pa = perm[n - 1 - hi], pb = perm[n - 1 - lo];
        double v;
        if (a == b)
            v = da(dead[pa] ? 1.0 : dm(scale, H[pa * n + pa]), lam);
        else
            v = dead[pa] || dead[pb] ? 0.0 : dm(scale, H[pa * n + pb]);
        P[idx] = v;
    }
};

// out [rows, n] (row-major) from in [n, rows]
template <class T> struct Transpose {
    const T *in;
    T *out;
    int64_t rows, n;
    QL_HD void operator()(int64_t idx) const {
        const int64_t r = idx / n, c = idx % n;
        out[idx] = in[c * rows + r];
    }
};

// One row of fmt_int.c's layout: [fp16 scale per group][zeros, bits each, unless sym][codes, bits each],
// bit streams LSB first, padded with zero bits. Every byte of the row is written.
struct PackRow {
    const uint8_t *codes; // [n, rows]
    const uint16_t *sc;   // [ng, rows]
    const uint8_t *zr;    // [ng, rows]
    uint8_t *dst;         // [rows, rb]
    int64_t rows, n, ng, rb;
    int bits;
    bool sym;
    QL_HD void operator()(int64_t r) const {
        uint8_t *out = dst + r * rb;
        for (int64_t k = 0; k < ng; k++) {
            const uint16_t h = sc[k * rows + r];
            *out++ = (uint8_t)h;
            *out++ = (uint8_t)(h >> 8);
        }
        const uint32_t mask = (1u << bits) - 1;
        for (int part = sym ? 1 : 0; part < 2; part++) { // 0: zeros, 1: codes
            const int64_t cnt = part ? n : ng;
            const uint8_t *src = part ? codes : zr;
            uint32_t acc = 0;
            int nb = 0;
            for (int64_t i = 0; i < cnt; i++) {
                acc |= ((uint32_t)src[i * rows + r] & mask) << nb;
                nb += bits;
                while (nb >= 8) {
                    *out++ = (uint8_t)acc;
                    acc >>= 8;
                    nb -= 8;
                }
            }
            if (nb) *out++ = (uint8_t)acc;
        }
    }
};

// One batch: a thread per row. Dynamic shared memory: [ldub·(B)] U block (when ldub > 0), then
// [B, blockDim.x] errors (when es).
// Ub[p·ldub + t] = U[i1 + t, i1 + p] for t < p < i2 - i1: entries idx = tid, tid + nthreads, ...
QL_HD void load_ub(const BatchArgs &A, float *Ub, int64_t ldub, int64_t tid, int64_t nthreads) {
    const int64_t nb = A.i2 - A.i1;
    for (int64_t idx = tid; idx < nb * nb; idx += nthreads) {
        const int64_t t = idx / nb, p = idx % nb;
        if (t < p) Ub[p * ldub + t] = A.U[(A.i1 + t) * A.n + A.i1 + p];
    }
}

__global__ void k_batch(BatchArgs A, int64_t ldub, int es) {
    extern __shared__ float smem[];
    float *Ub = ldub > 0 ? smem : nullptr;
    if (Ub) load_ub(A, Ub, ldub, threadIdx.x, blockDim.x);
    __syncthreads();
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= A.rows) return;
    float *Es = smem + (Ub ? ldub * (ldub - 1) : 0);
    if (es)
        batch_row(A, r, Es + threadIdx.x, blockDim.x, Ub, ldub);
    else
        batch_row(A, r, A.E + r, A.rows, Ub, ldub);
}

// ---------------------------------------------------------------------------------------------------
// Error checking
// ---------------------------------------------------------------------------------------------------
#define CUBLAS_TRY(call)                                                                                     \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                     \
            return ql_fail(s_ == CUBLAS_STATUS_ALLOC_FAILED ? QL_ERR_NOMEM : QL_ERR_IO,                      \
                           "kernels/gptq_cuda.cu:%d: %s: cuBLAS status %d", __LINE__, #call, (int)s_);      \
    } while (0)
#define CUSOLVER_TRY(call)                                                                                   \
    do {                                                                                                     \
        cusolverStatus_t s_ = (call);                                                                        \
        if (s_ != CUSOLVER_STATUS_SUCCESS)                                                                   \
            return ql_fail(s_ == CUSOLVER_STATUS_ALLOC_FAILED ? QL_ERR_NOMEM : QL_ERR_IO,                    \
                           "kernels/gptq_cuda.cu:%d: %s: cuSOLVER status %d", __LINE__, #call, (int)s_);     \
    } while (0)

// ---------------------------------------------------------------------------------------------------
// The two backends: the device (CUDA, cuBLAS, cuSOLVER) and the host emulation (loops, LAPACK, BLAS)
// ---------------------------------------------------------------------------------------------------
std::mutex g_mu;       // serializes calls: the handles below are shared
const ql_cublas_api *g_cb; // kernels/cuda_libs.h: opened, not linked
const ql_cusolver_api *g_cs;
cublasHandle_t g_blas; // created once, kept for the process
cusolverDnHandle_t g_solver;
cusolverDnParams_t g_params;
int g_nsm = 0, g_smem_optin = 0; // multiprocessors, opt-in shared memory per block (bytes)
bool g_ready = false;

ql_status device_init_locked(void) {
    if (g_ready) return QL_OK;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev <= 0) {
        cudaGetLastError();
        return ql_cuda_no_device("gptq_cuda");
    }
    int dev = 0;
    QL_CUDA_TRY(cudaGetDevice(&dev));
    QL_CUDA_TRY(cudaFree(0)); // creates the context
    QL_CUDA_TRY(cudaDeviceGetAttribute(&g_nsm, cudaDevAttrMultiProcessorCount, dev));
    QL_CUDA_TRY(cudaDeviceGetAttribute(&g_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (!(g_cb = ql_cublas()) || !(g_cs = ql_cusolver())) return QL_ERR_UNSUPPORTED; // ql_last_error() says why
    CUBLAS_TRY(g_cb->Create(&g_blas));
    CUSOLVER_TRY(g_cs->Create(&g_solver));
    CUSOLVER_TRY(g_cs->CreateParams(&g_params));
    g_ready = true;
    return QL_OK;
}

struct Ctx {
    bool dev;
    std::vector<void *> owned;
    ~Ctx() {
        for (void *p : owned) {
            if (dev)
                cudaFree(p);
            else
                free(p);
        }
    }
    template <class T> ql_status alloc(T **p, int64_t count) {
        const size_t bytes = (size_t)(count > 0 ? count : 1) * sizeof(T);
        void *q = nullptr;
        if (dev) {
            QL_CUDA_TRY(cudaMalloc(&q, bytes));
        } else if (!(q = malloc(bytes))) {
            return ql_fail(QL_ERR_NOMEM, "gptq_cuda: out of host memory (%zu bytes)", bytes);
        }
        owned.push_back(q);
        *p = (T *)q;
        return QL_OK;
    }
    ql_status put(void *d, const void *h, size_t bytes) {
        if (dev)
            QL_CUDA_TRY(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
        else
            memcpy(d, h, bytes);
        return QL_OK;
    }
    ql_status get(void *h, const void *d, size_t bytes) {
        if (dev)
            QL_CUDA_TRY(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
        else
            memcpy(h, d, bytes);
        return QL_OK;
    }
    ql_status sync() {
        if (dev) QL_CUDA_TRY(cudaDeviceSynchronize());
        return QL_OK;
    }
    // threads: per block (32 for one-thread-per-row kernels: 4096 rows then fill 128 blocks, not 16)
    template <class Op> ql_status each(const Op &op, int64_t count, int threads = 256) {
        if (count <= 0) return QL_OK;
        if (!dev) {
            for (int64_t i = 0; i < count; i++)
                op(i);
            return QL_OK;
        }
        k_each<Op><<<grid_for(count, threads, (int64_t)(g_nsm > 0 ? g_nsm : 1) * 32), threads>>>(op, count);
        QL_CUDA_TRY(cudaGetLastError());
        return QL_OK;
    }
    // potrf ('U', column-major) of P [n, n]; *info as LAPACK's
    ql_status potrf_upper(double *P, int64_t n, int *dinfo, void **work, size_t *wbytes,
                          std::vector<char> &hw, int *info) {
        if (!dev) {
            *info = (int)LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, P, (lapack_int)n);
            return QL_OK;
        }
        size_t dbytes = 0, hbytes = 0;
        CUSOLVER_TRY(g_cs->Xpotrf_bufferSize(g_solver, g_params, CUBLAS_FILL_MODE_UPPER, n, CUDA_R_64F, P,
                                                 n, CUDA_R_64F, &dbytes, &hbytes));
        if (dbytes > *wbytes) {
            if (*work) QL_CUDA_TRY(cudaFree(*work));
            *work = nullptr;
            *wbytes = 0;
            QL_CUDA_TRY(cudaMalloc(work, dbytes));
            *wbytes = dbytes;
        }
        if (hbytes > hw.size()) hw.resize(hbytes);
        CUSOLVER_TRY(g_cs->Xpotrf(g_solver, g_params, CUBLAS_FILL_MODE_UPPER, n, CUDA_R_64F, P, n,
                                      CUDA_R_64F, *work, dbytes, hbytes ? hw.data() : nullptr, hbytes,
                                      dinfo));
        QL_CUDA_TRY(cudaMemcpy(info, dinfo, sizeof(int), cudaMemcpyDeviceToHost));
        return QL_OK;
    }
    // trtri ('L', non-unit, column-major) of U [n, n] in place
    ql_status trtri_lower(float *U, int64_t n, int *dinfo, void **work, size_t *wbytes, std::vector<char> &hw,
                          int *info) {
        if (!dev) {
            *info = (int)LAPACKE_strtri(LAPACK_COL_MAJOR, 'L', 'N', (lapack_int)n, U, (lapack_int)n);
            return QL_OK;
        }
        size_t dbytes = 0, hbytes = 0;
        CUSOLVER_TRY(g_cs->Xtrtri_bufferSize(g_solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n,
                                                 CUDA_R_32F, U, n, &dbytes, &hbytes));
        if (dbytes > *wbytes) {
            if (*work) QL_CUDA_TRY(cudaFree(*work));
            *work = nullptr;
            *wbytes = 0;
            QL_CUDA_TRY(cudaMalloc(work, dbytes));
            *wbytes = dbytes;
        }
        if (hbytes > hw.size()) hw.resize(hbytes);
        CUSOLVER_TRY(g_cs->Xtrtri(g_solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_32F,
                                      U, n, *work, dbytes, hbytes ? hw.data() : nullptr, hbytes, dinfo));
        QL_CUDA_TRY(cudaMemcpy(info, dinfo, sizeof(int), cudaMemcpyDeviceToHost));
        return QL_OK;
    }
    // Wt[:, i2:] -= E · U[i1:i2, i2:] in column-major terms (Wt: rows x n, ld rows; E: rows x nb, ld rows;
    // U + i1·n + i2 seen column-major is (n - i2) x nb with ld n, hence its transpose)
    ql_status trailing(float *Wt, const float *E, const float *U, int64_t rows, int64_t n, int64_t i1,
                       int64_t i2) {
        const int m = (int)rows, nn = (int)(n - i2), k = (int)(i2 - i1), ldu = (int)n;
        const float alpha = -1.0f, beta = 1.0f;
        if (!dev) {
            cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, m, nn, k, alpha, E, m, U + i1 * n + i2, ldu,
                        beta, Wt + i2 * rows, m);
            return QL_OK;
        }
        CUBLAS_TRY(g_cb->Sgemm(g_blas, CUBLAS_OP_N, CUBLAS_OP_T, m, nn, k, &alpha, E, m, U + i1 * n + i2, ldu,
                               &beta, Wt + i2 * rows, m));
        return QL_OK;
    }
    // the batch kernel: shared U block and shared errors when they fit. The host runs the kernel's
    // blocks of 32 rows one row after the other, with the same shared-memory layout.
    ql_status batch(const BatchArgs &A, int64_t B) {
        if (!dev) {
            const int64_t nt = 32, ldub = B + 1;
            std::vector<float> smem((size_t)((B + 1) * B + B * nt));
            float *Ub = smem.data(), *Es = Ub + (B + 1) * B;
            for (int64_t r0 = 0; r0 < A.rows; r0 += nt) {
                load_ub(A, Ub, ldub, 0, 1);
                for (int64_t r = r0; r < A.rows && r < r0 + nt; r++)
                    batch_row(A, r, Es + (r - r0), nt, Ub, ldub);
            }
            return QL_OK;
        }
        const int64_t nsm = g_nsm > 0 ? g_nsm : 1;
        const int nt = A.rows <= 32 * nsm ? 32 : A.rows <= 128 * nsm ? 64 : 128;
        const int64_t optin = g_smem_optin > 0 ? g_smem_optin : 48 * 1024;
        const int64_t ub_bytes = (B + 1) * B * (int64_t)sizeof(float),
                      es_bytes = B * nt * (int64_t)sizeof(float);
        int64_t ldub = 0, bytes = 0;
        int es = 0;
        if (ub_bytes + es_bytes <= optin) {
            ldub = B + 1, es = 1, bytes = ub_bytes + es_bytes;
        } else if (es_bytes <= optin) {
            es = 1, bytes = es_bytes;
        }
        if (bytes > 48 * 1024)
            QL_CUDA_TRY(cudaFuncSetAttribute(k_batch, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        const int64_t blocks = (A.rows + nt - 1) / nt;
        k_batch<<<(unsigned)blocks, nt, (size_t)bytes>>>(A, ldub, es);
        QL_CUDA_TRY(cudaGetLastError());
        return QL_OK;
    }
};

// Device workspaces of potrf / trtri (freed on every return path).
struct Work {
    void *p = nullptr;
    size_t bytes = 0;
    bool dev = false;
    ~Work() {
        if (dev && p) cudaFree(p);
    }
};

// U = chol(H⁻¹) upper from one Cholesky of the reversed H (m_gptq.c's order): fill_p(λ) writes P with the
// dampening λ on the diagonal; λ grows ×10 (from 1e-6·mean when it starts at 0) up to 5 times until P is
// positive definite. *lam gets the λ used. One place for the plain and the grid (act-order) runs.
template <class FillP>
ql_status chol_inverse_upper(Ctx &c, FillP fill_p, double *P, float *U, int64_t n, int *dinfo, Work &work,
                             std::vector<char> &hwork, double mean, double *lam) {
    ql_status s;
    int info = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        if ((s = fill_p(*lam)) || (s = c.potrf_upper(P, n, dinfo, &work.p, &work.bytes, hwork, &info))) return s;
        if (info == 0) break;
        if (info < 0)
            return ql_fail(QL_ERR_IO, "kernels/gptq_cuda.cu:%d: potrf: argument %d", __LINE__, -info);
        *lam = *lam > 0 ? *lam * 10 : 1e-6 * mean;
    }
    if (info != 0)
        return ql_fail(QL_ERR_ARG, "gptq_cuda: Hessian not positive definite even with dampening %g", *lam / mean);
    if ((s = c.each(BuildU{P, U, n}, n * n)) || (s = c.trtri_lower(U, n, dinfo, &work.p, &work.bytes, hwork, &info)))
        return s;
    if (info != 0) return ql_fail(QL_ERR_ARG, "gptq_cuda: triangular inverse failed (info %d)", info);
    return c.sync();
}

ql_status check_args(const float *w, int64_t rows, int64_t n, const double *xtx, int bits, int group,
                     double damp, int block) {
    if (!w || !xtx) return ql_fail(QL_ERR_ARG, "gptq_cuda: NULL weights or Hessian");
    if (rows <= 0 || n <= 0 || rows > INT_MAX || n > INT_MAX / 2)
        return ql_fail(QL_ERR_ARG, "gptq_cuda: bad shape %lld x %lld", (long long)rows, (long long)n);
    if (bits < 2 || bits > 8) return ql_fail(QL_ERR_ARG, "gptq_cuda: bits=%d outside [2, 8]", bits);
    if (group < 0) return ql_fail(QL_ERR_ARG, "gptq_cuda: group=%d", group);
    if (!(damp >= 0 && damp <= 10)) return ql_fail(QL_ERR_ARG, "gptq_cuda: damp=%g outside [0, 10]", damp);
    if (block < 1 || block > 65536)
        return ql_fail(QL_ERR_ARG, "gptq_cuda: block=%d outside [1, 65536]", block);
    return QL_OK;
}

ql_status gptq_run(bool dev, const float *w, int64_t rows, int64_t n, const double *xtx, int64_t n_tokens,
                   int bits, int group, bool sym, double damp, int block, float *q, void *dst,
                   ql_cuda_gptq_times *times) {
    ql_status s = check_args(w, rows, n, xtx, bits, group, damp, block);
    if (s) return s;
    const double t0 = ql_time_s();
    Ctx c;
    c.dev = dev;
    Work work;
    work.dev = dev;
    std::vector<char> hwork;

    // Hessian diagonal, dead inputs, mean (on the host, in m_gptq.c's order: the same λ)
    const double scale = n_tokens > 0 ? 2.0 / (double)n_tokens : 1.0;
    std::vector<uint8_t> dead((size_t)n);
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        const double h = xtx[i * n + i] * scale;
        dead[(size_t)i] = !(h > 0) || !finite_d(h);
        mean += dead[(size_t)i] ? 1.0 : h;
    }
    mean /= (double)n;

    const int64_t B = block < n ? block : n, g = group > 0 && group < n ? group : n, ng = (n + g - 1) / g;
    const int64_t zbytes = sym ? 0 : (ng * bits + 7) / 8, rb = 2 * ng + zbytes + (n * bits + 7) / 8;
    double *H = nullptr, *P = nullptr;
    float *U = nullptr, *W = nullptr, *Wt = nullptr, *Q = nullptr, *E = nullptr;
    uint8_t *codes = nullptr, *zr = nullptr, *ddead = nullptr, *out = nullptr;
    uint16_t *sc = nullptr;
    int *dinfo = nullptr;
    if ((s = c.alloc(&H, n * n)) || (s = c.alloc(&P, n * n)) || (s = c.alloc(&U, n * n)) ||
        (s = c.alloc(&W, rows * n)) || (s = c.alloc(&Wt, n * rows)) || (s = c.alloc(&Q, n * rows)) ||
        (s = c.alloc(&E, B * rows)) || (s = c.alloc(&codes, n * rows)) || (s = c.alloc(&sc, ng * rows)) ||
        (s = c.alloc(&zr, ng * rows)) || (s = c.alloc(&ddead, n)) || (s = c.alloc(&dinfo, 1)) ||
        (dst && (s = c.alloc(&out, rows * rb))))
        return s;
    if ((s = c.put(H, xtx, (size_t)(n * n) * sizeof(double))) ||
        (s = c.put(W, w, (size_t)(rows * n) * sizeof(float))) || (s = c.put(ddead, dead.data(), (size_t)n)) ||
        (s = c.sync()))
        return s;
    const double t1 = ql_time_s();

    // U = chol(H⁻¹) upper, from one Cholesky of the reversed H
    double lam = damp * mean;
    if ((s = chol_inverse_upper(
             c, [&](double l) { return c.each(BuildP{H, P, ddead, n, scale, l}, n * n); }, P, U, n, dinfo, work,
             hwork, mean, &lam)))
        return s;
    const double t2 = ql_time_s();

    // the batches
    if ((s = c.each(LoadW{W, Wt, ddead, rows, n}, n * rows))) return s;
    BatchArgs A = {Wt, E, U, Q, codes, sc, zr, rows, n, 0, 0, g, bits, sym};
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        A.i1 = i1;
        A.i2 = i1 + B < n ? i1 + B : n;
        if ((s = c.batch(A, B))) return s;
        if (A.i2 < n && (s = c.trailing(Wt, E, U, rows, n, i1, A.i2))) return s;
    }
    if ((s = c.sync())) return s;
    const double t3 = ql_time_s();

    // results
    if (q && ((s = c.each(StoreQ{Q, W, rows, n}, rows * n)) ||
              (s = c.get(q, W, (size_t)(rows * n) * sizeof(float)))))
        return s;
    if (dst && ((s = c.each(PackRow{codes, sc, zr, out, rows, n, ng, rb, bits, sym}, rows)) ||
                (s = c.get(dst, out, (size_t)(rows * rb)))))
        return s;
    if ((s = c.sync())) return s;
    const double t4 = ql_time_s();
    if (times) {
        times->total = t4 - t0;
        times->upload = t1 - t0;
        times->factor = t2 - t1;
        times->quantize = t3 - t2;
        times->download = t4 - t3;
        times->damp = mean > 0 ? lam / mean : 0;
    }
    return QL_OK;
}

// The grid path: see ql_cuda_gptq_grid_run in gptq_cuda.h.
ql_status grid_run(bool dev, const float *w, int64_t rows, int64_t n, const double *xtx, int64_t n_tokens,
                   double damp, int block, const int64_t *perm_in, bool static_groups, ql_cuda_gptq_grid *gr,
                   uint8_t *codes_out, float *q, ql_cuda_gptq_times *times) {
    ql_status s = check_args(w, rows, n, xtx, 4, 0, damp, block);
    if (s) return s;
    if (!gr || !gr->fix || !codes_out || gr->bw <= 0 || gr->sub < 0 || (!gr->table && gr->kmin > gr->kmax))
        return ql_fail(QL_ERR_ARG, "gptq_cuda: bad grid description");
    const ql_cuda_gptq_grid_fix_fn fix_on = gr->fix_dev && gr->fix_emulated ? (dev ? gr->fix_dev : gr->fix_emulated)
                                                                           : nullptr;
    if (fix_on && (!gr->blocks || gr->block_bytes <= 0 || gr->bw > n ||
                   gr->row_bytes < (n + gr->bw - 1) / gr->bw * gr->block_bytes))
        return ql_fail(QL_ERR_ARG, "gptq_cuda: bad block layout for the device fix");
    const double t0 = ql_time_s();
    Ctx c;
    c.dev = dev;
    Work work;
    work.dev = dev;
    std::vector<char> hwork;

    const double scale = n_tokens > 0 ? 2.0 / (double)n_tokens : 1.0;
    std::vector<uint8_t> dead((size_t)n);
    std::vector<int64_t> perm((size_t)n), invperm((size_t)n, -1);
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        const double h = xtx[i * n + i] * scale;
        dead[(size_t)i] = !(h > 0) || !finite_d(h);
        mean += dead[(size_t)i] ? 1.0 : h;
        perm[(size_t)i] = perm_in ? perm_in[i] : i;
    }
    mean /= (double)n;
    for (int64_t j = 0; j < n; j++) {
        const int64_t col = perm[(size_t)j];
        if (col < 0 || col >= n || invperm[(size_t)col] >= 0)
            return ql_fail(QL_ERR_ARG, "gptq_cuda: perm is not a permutation of 0..%lld", (long long)n - 1);
        invperm[(size_t)col] = j;
    }
    const int64_t B = block < n ? block : n, bw = gr->bw < n ? gr->bw : n, nblk = (n + bw - 1) / bw;
    const int64_t nsub = gr->sub > 0 ? (bw + gr->sub - 1) / gr->sub : 1;
    // when each block gets fixed: at its first column in processing order (static: all up front)
    std::vector<int64_t> fix_at((size_t)n, -1);
    {
        std::vector<uint8_t> fixed((size_t)nblk, 0);
        for (int64_t j = 0; j < n; j++) {
            const int64_t blk = perm[(size_t)j] / bw;
            if (!static_groups && !fixed[(size_t)blk]) fix_at[(size_t)j] = blk;
            fixed[(size_t)blk] = 1;
        }
    }

    double *H = nullptr, *P = nullptr;
    float *U = nullptr, *W = nullptr, *Wt = nullptr, *Q = nullptr, *E = nullptr, *Ga = nullptr, *Gb = nullptr,
          *Gc = nullptr, *Gx = nullptr;
    uint8_t *codes = nullptr, *ddead = nullptr;
    int64_t *dperm = nullptr, *dinv = nullptr;
    int *dinfo = nullptr;
    float *dimp = nullptr;     // device fix: importance by column
    uint8_t *dblocks = nullptr; // device fix: [rows, row_bytes] the format's bytes
    const int64_t ngrid = nblk * nsub * rows;
    if (fix_on && ((s = c.alloc(&dimp, n)) || (s = c.alloc(&dblocks, rows * gr->row_bytes)))) return s;
    if ((s = c.alloc(&H, n * n)) || (s = c.alloc(&P, n * n)) || (s = c.alloc(&U, n * n)) ||
        (s = c.alloc(&W, rows * n)) || (s = c.alloc(&Wt, n * rows)) || (s = c.alloc(&Q, n * rows)) ||
        (s = c.alloc(&E, B * rows)) || (s = c.alloc(&codes, n * rows)) || (s = c.alloc(&Ga, ngrid)) ||
        (s = c.alloc(&Gb, ngrid)) || (s = c.alloc(&Gc, ngrid)) || (s = c.alloc(&Gx, rows * bw)) ||
        (s = c.alloc(&ddead, n)) || (s = c.alloc(&dperm, n)) || (s = c.alloc(&dinv, n)) ||
        (s = c.alloc(&dinfo, 1)))
        return s;
    if ((s = c.put(H, xtx, (size_t)(n * n) * sizeof(double))) ||
        (s = c.put(W, w, (size_t)(rows * n) * sizeof(float))) || (s = c.put(ddead, dead.data(), (size_t)n)) ||
        (s = c.put(dperm, perm.data(), (size_t)n * sizeof(int64_t))) ||
        (s = c.put(dinv, invperm.data(), (size_t)n * sizeof(int64_t))) || (s = c.sync()))
        return s;
    const double t1 = ql_time_s();

    double lam = damp * mean;
    if ((s = chol_inverse_upper(
             c, [&](double l) { return c.each(BuildPPerm{H, P, ddead, dperm, n, scale, l}, n * n); }, P, U, n, dinfo, work,
             hwork, mean, &lam)))
        return s;
    gr->lam = lam;
    if (fix_on) { // m_gptq.c's importance: the caller's, else the dampened diagonal (dead inputs at 1)
        std::vector<float> himp((size_t)n);
        for (int64_t i = 0; i < n; i++)
            himp[(size_t)i] = gr->imp ? gr->imp[i] : (float)((dead[(size_t)i] ? 1.0 : xtx[i * n + i] * scale) + lam);
        if ((s = c.put(dimp, himp.data(), (size_t)n * sizeof(float))) ||
            (s = c.put(dblocks, gr->blocks, (size_t)(rows * gr->row_bytes))))
            return s;
    }
    const double t2 = ql_time_s();

    GridArgs A = {};
    A.U = U, A.Wt = Wt, A.E = E, A.Q = Q, A.codes = codes, A.A = Ga, A.B = Gb, A.O = Gc, A.perm = dperm;
    A.rows = rows, A.n = n, A.bw = bw, A.sub = gr->sub, A.nsub = nsub;
    A.kmin = (float)gr->kmin, A.kmax = (float)gr->kmax, A.has_table = gr->table != nullptr;
    if (gr->table) {
        for (int i = 0; i < 16; i++) A.table[i] = gr->table[i];
        for (int i = 1; i < 16; i++) A.mid[i] = gr->table[i - 1] + gr->table[i];
    }
    std::vector<float> hG((size_t)(rows * bw)), ha((size_t)(nsub * rows)), hb(ha.size()), ho(ha.size());
    // block blk fixed with GPTQ at position j of the batch starting at i1: gather, hook, upload
    auto fix = [&](int64_t blk, int64_t j, int64_t i1) -> ql_status {
        const int64_t c0 = blk * bw, len = bw < n - c0 ? bw : n - c0;
        ql_status fs_;
        if (fix_on) { // the block's scale search where the block is: nothing crosses to the host
            const size_t off = (size_t)(blk * nsub * rows);
            if ((fs_ = c.each(GatherBlock{U, Wt, E, dinv, Gx, rows, n, i1, j, c0, len}, rows * len)) ||
                (fs_ = fix_on(Gx, rows, len, dimp + c0, dblocks + blk * gr->block_bytes, gr->row_bytes, Ga + off,
                              Gb + off, Gc + off, rows, nullptr)))
                return fs_;
            return gr->fixed ? gr->fixed(gr->user, blk) : QL_OK;
        }
        if ((fs_ = c.each(GatherBlock{U, Wt, E, dinv, Gx, rows, n, i1, j, c0, len}, rows * len)) ||
            (fs_ = c.get(hG.data(), Gx, (size_t)(rows * len) * sizeof(float))))
            return fs_;
        std::fill(hb.begin(), hb.end(), 0.0f);
        std::fill(ho.begin(), ho.end(), 0.0f);
        if ((fs_ = gr->fix(gr->user, blk, hG.data(), rows, len, ha.data(), hb.data(), ho.data())))
            return fs_;
        const size_t off = (size_t)(blk * nsub * rows), bytes = ha.size() * sizeof(float);
        if ((fs_ = c.put(Ga + off, ha.data(), bytes)) || (fs_ = c.put(Gb + off, hb.data(), bytes)) ||
            (fs_ = c.put(Gc + off, ho.data(), bytes)))
            return fs_;
        return QL_OK;
    };

    if ((s = c.each(LoadWPerm{W, Wt, ddead, dperm, rows, n}, n * rows))) return s;
    if (static_groups)
        for (int64_t blk = 0; blk < nblk; blk++)
            if ((s = fix(blk, 0, 0))) return s;
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = i1 + B < n ? i1 + B : n;
        A.i1 = i1;
        for (int64_t j = i1; j < i2;) {
            if (fix_at[(size_t)j] >= 0 && (s = fix(fix_at[(size_t)j], j, i1))) return s;
            int64_t j1 = j + 1;
            while (j1 < i2 && fix_at[(size_t)j1] < 0) j1++;
            if ((s = c.each(SegRow{A, j, j1}, rows, 32))) return s;
            j = j1;
        }
        if (i2 < n && (s = c.trailing(Wt, E, U, rows, n, i1, i2))) return s;
    }
    if ((s = c.sync())) return s;
    const double t3 = ql_time_s();

    // results, row-major (W's buffer is free again: codes go through Wt's)
    uint8_t *codes_r = (uint8_t *)Wt;
    if ((s = c.each(Transpose<uint8_t>{codes, codes_r, rows, n}, rows * n)) ||
        (s = c.get(codes_out, codes_r, (size_t)(rows * n))))
        return s;
    if (fix_on && (s = c.get(gr->blocks, dblocks, (size_t)(rows * gr->row_bytes)))) return s;
    if (q && ((s = c.each(Transpose<float>{Q, W, rows, n}, rows * n)) ||
              (s = c.get(q, W, (size_t)(rows * n) * sizeof(float)))))
        return s;
    if ((s = c.sync())) return s;
    const double t4 = ql_time_s();
    if (times) {
        times->total = t4 - t0;
        times->upload = t1 - t0;
        times->factor = t2 - t1;
        times->quantize = t3 - t2;
        times->download = t4 - t3;
        times->damp = mean > 0 ? lam / mean : 0;
    }
    return QL_OK;
}

} // namespace

extern "C" int ql_cuda_gptq_available(void) { return ql_cuda_available(); }

extern "C" ql_status ql_cuda_gptq_init(double *seconds_out) {
    const double t0 = ql_time_s();
    std::lock_guard<std::mutex> lock(g_mu);
    const ql_status s = device_init_locked();
    if (seconds_out) *seconds_out = ql_time_s() - t0;
    return s;
}

extern "C" ql_status ql_cuda_gptq_int(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                      int64_t n_tokens, int bits, int group, bool sym, double damp, int block,
                                      float *q, void *dst, ql_cuda_gptq_times *times) {
    ql_status s = check_args(w, rows, cols, xtx, bits, group, damp, block);
    if (s) return s;
    std::lock_guard<std::mutex> lock(g_mu);
    if ((s = device_init_locked())) return s;
    return gptq_run(true, w, rows, cols, xtx, n_tokens, bits, group, sym, damp, block, q, dst, times);
}

extern "C" ql_status ql_cuda_gptq_int_emulate(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                              int64_t n_tokens, int bits, int group, bool sym, double damp,
                                              int block, float *q, void *dst, ql_cuda_gptq_times *times) {
    return gptq_run(false, w, rows, cols, xtx, n_tokens, bits, group, sym, damp, block, q, dst, times);
}

extern "C" ql_status ql_cuda_gptq_grid_run(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                           int64_t n_tokens, double damp, int block, const int64_t *perm,
                                           bool static_groups, ql_cuda_gptq_grid *g, uint8_t *codes, float *q,
                                           ql_cuda_gptq_times *times) {
    ql_status s = check_args(w, rows, cols, xtx, 4, 0, damp, block);
    if (s) return s;
    std::lock_guard<std::mutex> lock(g_mu);
    if ((s = device_init_locked())) return s;
    return grid_run(true, w, rows, cols, xtx, n_tokens, damp, block, perm, static_groups, g, codes, q, times);
}

extern "C" ql_status ql_cuda_gptq_grid_emulate(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                               int64_t n_tokens, double damp, int block, const int64_t *perm,
                                               bool static_groups, ql_cuda_gptq_grid *g, uint8_t *codes,
                                               float *q, ql_cuda_gptq_times *times) {
    return grid_run(false, w, rows, cols, xtx, n_tokens, damp, block, perm, static_groups, g, codes, q, times);
}
