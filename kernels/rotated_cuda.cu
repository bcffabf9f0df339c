// rotated_cuda.cu — CUDA decoders of the formats stored in a randomized-Hadamard basis (formats/fmt_quip.c):
// e8p / e8p_rvq3 / e8p_rvq4 (E8P lattice codes, kernels/e8p.c) and rht_int{n}_g64 (INTn groups,
// codecs_int_cuda.cu), then the two-sided inverse RHT of kernels/hadamard.c, bit-exact with that reference.
// API: cuda_rotated_api.h. Why it is exact although the reference is a sequential transform: every element of a
// Sylvester butterfly stage is one add or subtract of the same two inputs, every Paley output a left-to-right sum
// over k of ±inputs starting at 0, the norm one multiply, the signs one multiply by a product; so one launch per
// stage, one thread per output element, gives the reference's bits (stages are ordered by the stream).
// The seed and the E8P scales are read from the stored bytes on the device (no host round trip).
#include "kernels/cuda_rotated_api.h"
#include "kernels/cuda_api.h"     /* ql_cuda_available */
#include "kernels/cuda_int_api.h" /* rht_int's INT groups */
#include "kernels/cuda_common.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>

extern "C" {
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
}

using namespace ql_cuda;

namespace {

constexpr int QUIP_HEADER = 16; // f32 scale1, f32 scale2, u64 seed (formats/fmt_quip.h's QL_QUIP_HEADER)

QL_HD uint32_t ld32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
QL_HD uint64_t ld64(const uint8_t *p) { return ld32(p) | (uint64_t)ld32(p + 4) << 32; }

QL_HD uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
QL_HD float rht_sign(uint64_t seed, int which, int64_t i) { // ql_rht_sign
    const uint64_t z = splitmix64(seed ^ (which ? 0xD1B54A32D192ED03ull : 0)) + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    return splitmix64(z) >> 63 ? -1.0f : 1.0f;
}

// ---- E8P decode: vector k of the tensor, its 8 weights s1·d (+ s2·e) ----
struct Pat {
    uint8_t p[QL_E8P_PATTERNS][8];
};
QL_HD void decode_pattern(const Pat &T, int k, unsigned signs, unsigned shift, float out[8]) {
    int sum = 0;
    for (int i = 0; i < 7; i++) sum += (signs >> i & 1) ? -T.p[k][i] : T.p[k][i];
    sum += T.p[k][7];
    const bool neg7 = (sum & 3) != 0;
    const float sh = shift ? -0.25f : 0.25f;
    for (int i = 0; i < 8; i++) {
        const float pf = mul_rn(0.5f, (float)T.p[k][i]);
        const bool neg = i < 7 ? (signs >> i & 1) != 0 : neg7;
        out[i] = add_rn(neg ? fneg(pf) : pf, sh);
    }
}
QL_HD void e8p_vector(const Pat &T, int stage2, const uint8_t *src, int64_t nvec, float *dst, int64_t k) {
    const float s1 = u2f(ld32(src)), s2 = u2f(ld32(src + 4));
    const uint8_t *a = src + QUIP_HEADER, *b = a + 2 * nvec;
    float d[8], e[8];
    const unsigned c1 = (unsigned)(a[2 * k] | a[2 * k + 1] << 8);
    decode_pattern(T, (int)(c1 >> 8), c1 & 127u, c1 >> 7 & 1u, d);
    for (int i = 0; i < 8; i++) dst[8 * k + i] = mul_rn(s1, d[i]);
    if (!stage2) return;
    if (stage2 == 1) {
        decode_pattern(T, 0, b[k] & 127u, b[k] >> 7 & 1u, e);
    } else {
        const unsigned c2 = (unsigned)(b[2 * k] | b[2 * k + 1] << 8);
        decode_pattern(T, (int)(c2 >> 8), c2 & 127u, c2 >> 7 & 1u, e);
    }
    for (int i = 0; i < 8; i++) dst[8 * k + i] = add_rn(dst[8 * k + i], mul_rn(s2, e[i]));
}

// ---- the inverse RHT, stage by stage ----
// A transform along one axis of w [nrows, ncols]: element i (0..n) of batch t at t·ts + i·is.
struct Axis {
    int64_t n, pow2, batch, ts, is;
    int m;
    float norm;
    bool transpose; // the inverse reads H's columns
    QL_HD int64_t at(int64_t t, int64_t i) const { return t * ts + i * is; }
};
// Sylvester stage `len`: pair p of batch t (item = t · n/2 + p)
QL_HD void butterfly(const Axis &A, float *x, int64_t len, int64_t item) {
    const int64_t half = A.n / 2, t = item / half, p = item % half;
    const int64_t a = p / (A.pow2 / 2), q = p % (A.pow2 / 2);
    const int64_t j = (q / len) * 2 * len + q % len;
    float *u = x + A.at(t, a * A.pow2 + j), *v = x + A.at(t, a * A.pow2 + j + len);
    const float s = add_rn(*u, *v), d = sub_rn(*u, *v);
    *u = s, *v = d;
}
// Paley across a for each b (transpose: the inverse), from the copy tmp; item = t · n + (a · pow2 + b)
QL_HD void paley(const Axis &A, const int8_t *hm, const float *tmp, float *x, int64_t item) {
    const int64_t t = item / A.n, i = item % A.n, a = i / A.pow2, b = i % A.pow2;
    float out = 0.0f;
    for (int k = 0; k < A.m; k++) {
        const float in = tmp[A.at(t, k * A.pow2 + b)];
        out = (A.transpose ? hm[k * A.m + a] : hm[a * A.m + k]) > 0 ? add_rn(out, in) : sub_rn(out, in);
    }
    x[A.at(t, i)] = out;
}
QL_HD void scale_at(float *x, float norm, int64_t i) { x[i] = mul_rn(x[i], norm); }
// the signs: row[c] *= sin[c] · so
QL_HD void signs_at(float *x, const uint8_t *seed_bytes, int64_t ncols, int64_t i) {
    const uint64_t seed = ld64(seed_bytes);
    x[i] = mul_rn(x[i], mul_rn(rht_sign(seed, 0, i % ncols), rht_sign(seed, 1, i / ncols)));
}

__global__ void k_e8p(Pat T, int stage2, const uint8_t *src, int64_t nvec, float *dst) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < nvec; k += stride)
        e8p_vector(T, stage2, src, nvec, dst, k);
}
__global__ void k_butterfly(Axis A, float *x, int64_t len, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) butterfly(A, x, len, i);
}
__global__ void k_paley(Axis A, const int8_t *hm, const float *tmp, float *x, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) paley(A, hm, tmp, x, i);
}
__global__ void k_scale(float *x, float norm, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) scale_at(x, norm, i);
}
__global__ void k_signs(float *x, const uint8_t *seed_bytes, int64_t ncols, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        signs_at(x, seed_bytes, ncols, i);
}

Axis axis_of(const ql_had &h, int64_t batch, int64_t ts, int64_t is, bool transpose = true) {
    return Axis{h.n, h.pow2, batch, ts, is, h.m, (float)(1.0 / sqrt((double)h.n)), transpose};
}

// One axis of the inverse transform (ql_had_apply with transpose), on the device or the host.
ql_status axis_dev(const Axis &A, const ql_had &h, float *x, float *tmp, int8_t *hm_dev, cudaStream_t s) {
    const int64_t pairs = A.batch * (A.n / 2), all = A.batch * A.n;
    for (int64_t len = 1; len < A.pow2; len *= 2) k_butterfly<<<grid_for(pairs, 256), 256, 0, s>>>(A, x, len, pairs);
    if (h.m > 1) {
        QL_CUDA_TRY(cudaMemcpyAsync(tmp, x, (size_t)all * sizeof(float), cudaMemcpyDeviceToDevice, s));
        k_paley<<<grid_for(all, 256), 256, 0, s>>>(A, hm_dev, tmp, x, all);
    }
    k_scale<<<grid_for(all, 256), 256, 0, s>>>(x, A.norm, all);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
void axis_host(const Axis &A, const ql_had &h, float *x, float *tmp) {
    const int64_t pairs = A.batch * (A.n / 2), all = A.batch * A.n;
    for (int64_t len = 1; len < A.pow2; len *= 2)
        for (int64_t i = 0; i < pairs; i++) butterfly(A, x, len, i);
    if (h.m > 1) {
        memcpy(tmp, x, (size_t)all * sizeof(float));
        for (int64_t i = 0; i < all; i++) paley(A, h.hm, tmp, x, i);
    }
    for (int64_t i = 0; i < all; i++) scale_at(x, A.norm, i);
}

// Plans of both sides; false with ql_fail when a side cannot be served.
bool plans(int64_t nrows, int64_t ncols, ql_had *hin, ql_had *hout) {
    char why[160];
    if (nrows <= 0 || ncols <= 0 || ncols > INT64_MAX / nrows) {
        ql_fail(QL_ERR_ARG, "cuda: rotated: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
        return false;
    }
    if (!ql_had_init(hin, ncols, why, sizeof why)) {
        ql_fail(QL_ERR_ARG, "cuda: rotated: %s", why);
        return false;
    }
    if (!ql_had_init(hout, nrows, why, sizeof why)) {
        ql_had_free(hin);
        ql_fail(QL_ERR_ARG, "cuda: rotated: %s", why);
        return false;
    }
    return true;
}

// W = S_out·H_outᵀ·W̃·H_in·S_in in place (ql_rht_matrix, inverse): the column side, each row, the signs.
ql_status inverse_dev(float *w, int64_t nrows, int64_t ncols, const uint8_t *seed_dev, cudaStream_t s) {
    ql_had hin, hout;
    if (!plans(nrows, ncols, &hin, &hout)) return QL_ERR_ARG;
    float *tmp = nullptr;
    int8_t *hm_in = nullptr, *hm_out = nullptr;
    ql_status st = QL_OK;
    cudaError_t e = cudaSuccess;
    if (hin.m > 1 || hout.m > 1) e = cudaMallocAsync((void **)&tmp, (size_t)(nrows * ncols) * sizeof(float), s);
    if (e == cudaSuccess && hin.m > 1 && (e = cudaMallocAsync((void **)&hm_in, (size_t)hin.m * hin.m, s)) == cudaSuccess)
        e = cudaMemcpyAsync(hm_in, hin.hm, (size_t)hin.m * hin.m, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess && hout.m > 1 &&
        (e = cudaMallocAsync((void **)&hm_out, (size_t)hout.m * hout.m, s)) == cudaSuccess)
        e = cudaMemcpyAsync(hm_out, hout.hm, (size_t)hout.m * hout.m, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess) st = cuda_fail(e, "rotated: scratch", __FILE__, __LINE__);
    if (st == QL_OK) st = axis_dev(axis_of(hout, ncols, 1, ncols), hout, w, tmp, hm_out, s);
    if (st == QL_OK) st = axis_dev(axis_of(hin, nrows, ncols, 1), hin, w, tmp, hm_in, s);
    if (st == QL_OK) {
        k_signs<<<grid_for(nrows * ncols, 256), 256, 0, s>>>(w, seed_dev, ncols, nrows * ncols);
        e = cudaGetLastError();
        if (e != cudaSuccess) st = cuda_fail(e, "rotated: signs", __FILE__, __LINE__);
    }
    if (tmp) cudaFreeAsync(tmp, s);
    if (hm_in) cudaFreeAsync(hm_in, s);
    if (hm_out) cudaFreeAsync(hm_out, s);
    if (hin.m > 1 || hout.m > 1) { // the host plans' tables were read by async copies
        cudaError_t se = cudaStreamSynchronize(s);
        if (se != cudaSuccess && st == QL_OK) st = cuda_fail(se, "rotated: sync", __FILE__, __LINE__);
    }
    ql_had_free(&hin);
    ql_had_free(&hout);
    return st;
}
ql_status inverse_host(float *w, int64_t nrows, int64_t ncols, const uint8_t *seed_bytes) {
    ql_had hin, hout;
    if (!plans(nrows, ncols, &hin, &hout)) return QL_ERR_ARG;
    float *tmp = hin.m > 1 || hout.m > 1 ? (float *)malloc((size_t)(nrows * ncols) * sizeof(float)) : nullptr;
    axis_host(axis_of(hout, ncols, 1, ncols), hout, w, tmp);
    axis_host(axis_of(hin, nrows, ncols, 1), hin, w, tmp);
    for (int64_t i = 0; i < nrows * ncols; i++) signs_at(w, seed_bytes, ncols, i);
    free(tmp);
    ql_had_free(&hin);
    ql_had_free(&hout);
    return QL_OK;
}

// ---- the forward RHT of rht_int's quantizer: ql_quip_sanitize, then W̃ = H_out·S_out·W·S_in·H_inᵀ ----
__global__ void k_absmax_finite(const float *w, int64_t n, uint32_t *amax) {
    uint32_t m = 0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        if (finite_f(w[i])) m = max(m, f2u(fabs_bits(w[i])));
    atomicMax(amax, m);
}
QL_HD void sanitize_at(float *w, float amax, int64_t i) {
    const float v = w[i];
    if (v != v) w[i] = 0;
    else if (!finite_f(v)) w[i] = v > 0 ? amax : fneg(amax);
}
__global__ void k_sanitize(float *w, const uint32_t *amax, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) sanitize_at(w, u2f(*amax), i);
}

ql_status forward_dev(float *w, int64_t nrows, int64_t ncols, const uint8_t *seed_dev, uint32_t *amax_dev,
                      cudaStream_t s) {
    ql_had hin, hout;
    if (!plans(nrows, ncols, &hin, &hout)) return QL_ERR_ARG;
    const int64_t n = nrows * ncols;
    float *tmp = nullptr;
    int8_t *hm_in = nullptr, *hm_out = nullptr;
    ql_status st = QL_OK;
    cudaError_t e = cudaMemsetAsync(amax_dev, 0, 4, s);
    if (e == cudaSuccess) {
        k_absmax_finite<<<grid_for(n, 256, 1024), 256, 0, s>>>(w, n, amax_dev);
        k_sanitize<<<grid_for(n, 256), 256, 0, s>>>(w, amax_dev, n);
        k_signs<<<grid_for(n, 256), 256, 0, s>>>(w, seed_dev, ncols, n);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess && (hin.m > 1 || hout.m > 1)) e = cudaMallocAsync((void **)&tmp, (size_t)n * sizeof(float), s);
    if (e == cudaSuccess && hin.m > 1 && (e = cudaMallocAsync((void **)&hm_in, (size_t)hin.m * hin.m, s)) == cudaSuccess)
        e = cudaMemcpyAsync(hm_in, hin.hm, (size_t)hin.m * hin.m, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess && hout.m > 1 &&
        (e = cudaMallocAsync((void **)&hm_out, (size_t)hout.m * hout.m, s)) == cudaSuccess)
        e = cudaMemcpyAsync(hm_out, hout.hm, (size_t)hout.m * hout.m, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess) st = cuda_fail(e, "rotated: forward", __FILE__, __LINE__);
    if (st == QL_OK) st = axis_dev(axis_of(hin, nrows, ncols, 1, false), hin, w, tmp, hm_in, s);
    if (st == QL_OK) st = axis_dev(axis_of(hout, ncols, 1, ncols, false), hout, w, tmp, hm_out, s);
    if (tmp) cudaFreeAsync(tmp, s);
    if (hm_in) cudaFreeAsync(hm_in, s);
    if (hm_out) cudaFreeAsync(hm_out, s);
    if (hin.m > 1 || hout.m > 1) {
        cudaError_t se = cudaStreamSynchronize(s);
        if (se != cudaSuccess && st == QL_OK) st = cuda_fail(se, "rotated: sync", __FILE__, __LINE__);
    }
    ql_had_free(&hin);
    ql_had_free(&hout);
    return st;
}
ql_status forward_host(float *w, int64_t nrows, int64_t ncols, const uint8_t *seed_bytes) {
    ql_had hin, hout;
    if (!plans(nrows, ncols, &hin, &hout)) return QL_ERR_ARG;
    const int64_t n = nrows * ncols;
    uint32_t amax = 0;
    for (int64_t i = 0; i < n; i++)
        if (finite_f(w[i]) && f2u(fabs_bits(w[i])) > amax) amax = f2u(fabs_bits(w[i]));
    for (int64_t i = 0; i < n; i++) sanitize_at(w, u2f(amax), i);
    for (int64_t i = 0; i < n; i++) signs_at(w, seed_bytes, ncols, i);
    float *tmp = hin.m > 1 || hout.m > 1 ? (float *)malloc((size_t)n * sizeof(float)) : nullptr;
    axis_host(axis_of(hin, nrows, ncols, 1, false), hin, w, tmp);
    axis_host(axis_of(hout, ncols, 1, ncols, false), hout, w, tmp);
    free(tmp);
    ql_had_free(&hin);
    ql_had_free(&hout);
    return QL_OK;
}

Pat patterns() {
    Pat T;
    memcpy(T.p, ql_e8p_patterns(), sizeof T.p);
    return T;
}

} // namespace

extern "C" ql_status ql_cuda_e8p_dequantize_dev(int stage2, const void *src, float *dst, int64_t nrows, int64_t ncols,
                                                void *stream) {
    if (nrows <= 0 || ncols <= 0 || ncols % 8 || stage2 < 0 || stage2 > 2)
        return ql_fail(QL_ERR_ARG, "cuda: e8p: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const cudaStream_t s = (cudaStream_t)stream;
    const int64_t nvec = nrows * ncols / 8;
    k_e8p<<<grid_for(nvec, 128), 128, 0, s>>>(patterns(), stage2, (const uint8_t *)src, nvec, dst);
    QL_CUDA_TRY(cudaGetLastError());
    return inverse_dev(dst, nrows, ncols, (const uint8_t *)src + 8, s);
}
extern "C" ql_status ql_cuda_e8p_dequantize_emulated(int stage2, const void *src, float *dst, int64_t nrows,
                                                     int64_t ncols) {
    if (nrows <= 0 || ncols <= 0 || ncols % 8 || stage2 < 0 || stage2 > 2)
        return ql_fail(QL_ERR_ARG, "cuda: e8p: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    const Pat T = patterns();
    const int64_t nvec = nrows * ncols / 8;
    for (int64_t k = 0; k < nvec; k++) e8p_vector(T, stage2, (const uint8_t *)src, nvec, dst, k);
    return inverse_host(dst, nrows, ncols, (const uint8_t *)src + 8);
}
extern "C" ql_status ql_cuda_rht_int_dequantize_dev(int bits, int group, const void *src, float *dst, int64_t nrows,
                                                    int64_t ncols, void *stream) {
    ql_status st = ql_cuda_int_dequantize_dev((const uint8_t *)src + 8, dst, nrows, ncols, stream, bits, group, false);
    if (st != QL_OK) return st;
    return inverse_dev(dst, nrows, ncols, (const uint8_t *)src, (cudaStream_t)stream);
}
extern "C" ql_status ql_cuda_rht_int_dequantize_emulated(int bits, int group, const void *src, float *dst,
                                                         int64_t nrows, int64_t ncols) {
    ql_status st = ql_cuda_int_dequantize_emulated((const uint8_t *)src + 8, dst, nrows, ncols, bits, group, false);
    if (st != QL_OK) return st;
    return inverse_host(dst, nrows, ncols, (const uint8_t *)src);
}

extern "C" ql_status ql_cuda_rht_int_quantize_dev(int bits, int group, uint64_t seed, const float *src, void *dst,
                                                  int64_t nrows, int64_t ncols, void *stream) {
    if (nrows <= 0 || ncols <= 0 || ncols > INT64_MAX / nrows / 8)
        return ql_fail(QL_ERR_ARG, "cuda: rht: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const cudaStream_t s = (cudaStream_t)stream;
    const int64_t n = nrows * ncols;
    uint8_t seed_bytes[8];
    for (int k = 0; k < 8; k++) seed_bytes[k] = (uint8_t)(seed >> (8 * k));
    float *w = nullptr;
    QL_CUDA_TRY(cudaMallocAsync((void **)&w, (size_t)n * sizeof(float) + 8, s)); // + the absmax word
    cudaError_t e = cudaMemcpyAsync(w, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dst, seed_bytes, 8, cudaMemcpyHostToDevice, s);
    ql_status st = e == cudaSuccess ? QL_OK : cuda_fail(e, "rht quantize", __FILE__, __LINE__);
    if (st == QL_OK) st = forward_dev(w, nrows, ncols, (const uint8_t *)dst, (uint32_t *)(w + n), s);
    if (st == QL_OK) st = ql_cuda_int_quantize_dev(w, (uint8_t *)dst + 8, nrows, ncols, stream, bits, group, false, false);
    cudaFreeAsync(w, s);
    cudaError_t se = cudaStreamSynchronize(s); // seed_bytes was read by an async copy
    if (se != cudaSuccess && st == QL_OK) st = cuda_fail(se, "rht quantize: sync", __FILE__, __LINE__);
    return st;
}
extern "C" ql_status ql_cuda_rht_int_quantize_emulated(int bits, int group, uint64_t seed, const float *src, void *dst,
                                                       int64_t nrows, int64_t ncols) {
    if (nrows <= 0 || ncols <= 0 || ncols > INT64_MAX / nrows / 8)
        return ql_fail(QL_ERR_ARG, "cuda: rht: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    const int64_t n = nrows * ncols;
    float *w = (float *)malloc((size_t)n * sizeof(float));
    if (!w) return ql_fail(QL_ERR_NOMEM, "cuda: rht: out of memory");
    memcpy(w, src, (size_t)n * sizeof(float));
    uint8_t *d = (uint8_t *)dst;
    for (int k = 0; k < 8; k++) d[k] = (uint8_t)(seed >> (8 * k));
    ql_status st = forward_host(w, nrows, ncols, d);
    if (st == QL_OK) st = ql_cuda_int_quantize_emulated(w, d + 8, nrows, ncols, bits, group, false, false);
    free(w);
    return st;
}
