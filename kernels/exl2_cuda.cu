// exl2_cuda.cu — CUDA decoder of EXL2 tensors (ExLlamaV2's mixed bits; layout and numerics in formats/fmt_exl2.c),
// bit-exact with that file's reference. API: cuda_exl2_api.h. Three steps on the stream: the stored q_invperm is
// inverted with one atomicCAS per input (a value out of range or a repeat marks the tensor bad), then one thread
// per weight decodes it (processing row -> group by a host-built row table; code from q_weight; the fp16 scale
// and value roundings of ql_exl2_scale / ql_exl2_value), or writes 0 everywhere when the permutation was bad.
#include "kernels/cuda_exl2_api.h"
#include "kernels/cuda_api.h" /* ql_cuda_available */
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh"

#include <cuda_runtime.h>

#include <cstdlib>

using namespace ql_cuda;

namespace {

QL_HD uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
QL_HD float exl2_scale(int qs, uint16_t smax_h) { // ql_exl2_scale
    const float ms = h2f(f2h(mul_rn(h2f(smax_h), 1.0f / 256.0f)));
    return h2f(f2h(mul_rn((float)(qs * qs), ms)));
}
QL_HD float exl2_value(int code, int bits, float scale) { // ql_exl2_value
    return h2f(f2h(mul_rn((float)(code - (1 << (bits - 1))), scale)));
}

struct Dev {
    int64_t N, K, invperm, scale_max, scale, weight;
};

// weight (processing row p, output n) -> dst[n, perm[p]]; item = p * N + n
QL_HD void decode_at(const Dev &D, const ql_cuda_exl2_group *g, const int32_t *row_group, const int64_t *perm,
                     const uint8_t *s, float *dst, int64_t item) {
    const int64_t p = item / D.N, n = item % D.N;
    const int i = row_group[p];
    const ql_cuda_exl2_group G = g[i];
    const uint16_t smax = (uint16_t)(s[D.scale_max + 2 * i] | s[D.scale_max + 2 * i + 1] << 8);
    const int qs = (int)(rd32(s + D.scale + (i * ((D.N + 7) / 8) + n / 8) * 4) >> (4 * (n % 8)) & 15) + 1;
    const float scale = exl2_scale(qs, smax);
    const int b = G.bits;
    const uint32_t mask = (1u << b) - 1;
    const int64_t pos = (p - G.row) * b, word = G.qrow + pos / 32;
    const int sh = (int)(pos % 32);
    const uint8_t *wp = s + D.weight + (word * D.N + n) * 4;
    uint64_t v = rd32(wp);
    if (sh + b > 32) v |= (uint64_t)rd32(wp + D.N * 4) << 32;
    dst[n * D.K + perm[p]] = exl2_value((int)((v >> sh) & mask), b, scale);
}

__global__ void k_invert(Dev D, const uint8_t *s, unsigned long long *perm, int *bad) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < D.K; k += stride) {
        const uint32_t p = rd32(s + D.invperm + 4 * k);
        if (p >= (uint32_t)D.K || atomicCAS(&perm[p], ~0ull, (unsigned long long)k) != ~0ull) *bad = 1;
    }
}
__global__ void k_decode(Dev D, const ql_cuda_exl2_group *g, const int32_t *row_group, const int64_t *perm,
                         const int *bad, const uint8_t *s, float *dst) {
    const int64_t n = D.K * D.N, stride = (int64_t)gridDim.x * blockDim.x;
    const bool zero = *bad != 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (zero) dst[i] = 0.0f;
        else decode_at(D, g, row_group, perm, s, dst, i);
    }
}

bool check(const ql_cuda_exl2_layout *L, int64_t nrows, int64_t ncols) {
    if (!L || !L->groups || L->G <= 0 || nrows <= 0 || ncols <= 0 || ncols > 65535 || nrows > INT64_MAX / ncols) {
        ql_fail(QL_ERR_ARG, "cuda: exl2: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
        return false;
    }
    return true;
}
// processing row -> its group
int32_t *row_table(const ql_cuda_exl2_layout *L, int64_t K) {
    int32_t *t = (int32_t *)calloc((size_t)K, sizeof(int32_t));
    if (!t) return nullptr;
    for (int64_t i = 0; i < L->G; i++)
        for (int64_t r = 0; r < L->groups[i].rows && L->groups[i].row + r < K; r++) t[L->groups[i].row + r] = (int32_t)i;
    return t;
}

} // namespace

extern "C" ql_status ql_cuda_exl2_dequantize_dev(const ql_cuda_exl2_layout *L, const void *src, float *dst,
                                                 int64_t nrows, int64_t ncols, void *stream) {
    if (!check(L, nrows, ncols)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const cudaStream_t s = (cudaStream_t)stream;
    const Dev D{nrows, ncols, L->invperm, L->scale_max, L->scale, L->weight};
    int32_t *rows = row_table(L, ncols);
    if (!rows) return ql_fail(QL_ERR_NOMEM, "cuda: exl2: out of memory");
    // one scratch: perm [K] int64, groups [G], row table [K] int32, bad flag
    const size_t o_g = (size_t)ncols * 8, o_rows = o_g + (size_t)L->G * sizeof(ql_cuda_exl2_group),
                 o_bad = o_rows + (size_t)ncols * 4, total = o_bad + 8;
    uint8_t *scratch = nullptr;
    cudaError_t e = cudaMallocAsync((void **)&scratch, total, s);
    if (e == cudaSuccess) e = cudaMemsetAsync(scratch, 0xff, o_g, s);
    if (e == cudaSuccess) e = cudaMemsetAsync(scratch + o_bad, 0, 8, s);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(scratch + o_g, L->groups, (size_t)L->G * sizeof(ql_cuda_exl2_group), cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(scratch + o_rows, rows, (size_t)ncols * 4, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) {
        k_invert<<<grid_for(ncols, 256), 256, 0, s>>>(D, (const uint8_t *)src, (unsigned long long *)scratch,
                                                     (int *)(scratch + o_bad));
        k_decode<<<grid_for(nrows * ncols, 256), 256, 0, s>>>(D, (const ql_cuda_exl2_group *)(scratch + o_g),
                                                             (const int32_t *)(scratch + o_rows), (const int64_t *)scratch,
                                                             (const int *)(scratch + o_bad), (const uint8_t *)src, dst);
        e = cudaGetLastError();
    }
    if (scratch) cudaFreeAsync(scratch, s);
    cudaError_t se = cudaStreamSynchronize(s); // the host tables were read by async copies; a kernel fault shows here
    if (e == cudaSuccess) e = se;
    free(rows);
    if (e != cudaSuccess) return cuda_fail(e, "exl2 decode", __FILE__, __LINE__);
    return QL_OK;
}

extern "C" ql_status ql_cuda_exl2_dequantize_emulated(const ql_cuda_exl2_layout *L, const void *src, float *dst,
                                                      int64_t nrows, int64_t ncols) {
    if (!check(L, nrows, ncols)) return QL_ERR_ARG;
    const Dev D{nrows, ncols, L->invperm, L->scale_max, L->scale, L->weight};
    const uint8_t *s = (const uint8_t *)src;
    int32_t *rows = row_table(L, ncols);
    int64_t *perm = (int64_t *)malloc((size_t)ncols * sizeof(int64_t));
    if (!rows || !perm) {
        free(rows), free(perm);
        return ql_fail(QL_ERR_NOMEM, "cuda: exl2: out of memory");
    }
    for (int64_t k = 0; k < ncols; k++) perm[k] = -1;
    bool bad = false;
    for (int64_t k = 0; k < ncols; k++) { // what k_invert's threads do, one at a time
        const uint32_t p = rd32(s + D.invperm + 4 * k);
        if (p >= (uint32_t)ncols || perm[p] != -1) bad = true;
        else perm[p] = k;
    }
    for (int64_t i = 0; i < nrows * ncols; i++) {
        if (bad) dst[i] = 0.0f;
        else decode_at(D, L->groups, rows, perm, s, dst, i);
    }
    free(rows), free(perm);
    return QL_OK;
}
