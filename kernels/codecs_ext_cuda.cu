// codecs_ext_cuda.cu — CUDA twins of bitsandbytes' 4-bit block codecs (NF4 / FP4, row-wise and double-quantized),
// of OCP FP8 with a float32 scale per tensor / row / 128x128 tile, and AQLM's decoder, bit-exact with
// formats/fmt_nf4.c, formats/fmt_fp8.c and kernels/aqlm.c.
// API: cuda_ext_api.h. Exactness as in codecs_cuda.cu: per-item code is __host__ __device__, float operations
// are cuda_common.cuh's unfused _rn ones, scalings by powers of two are multiplications by exact constants.
// Absmax values are maxima, which do not depend on the order they are taken in, so the device reduces them
// in parallel (atomicMax on the bits of non-negative floats) where the reference loops.
// Threads. NF4/FP4: one per block of 64 (it owns the block's 4 + 32 bytes). FP8: one block of threads per
// (scale group, slice) for the absmax, then one thread per weight.
#include "kernels/cuda_ext_api.h"
#include "kernels/cuda_api.h" /* ql_cuda_available */
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh"
#include "kernels/cuda_fp8.cuh"
#include "kernels/aqlm.h" /* QL_AQLM_GROUP */

#include <cuda_runtime.h>

using namespace ql_cuda;

namespace {

QL_HD void put_f32(uint8_t *p, float f) {
    const uint32_t u = f2u(f);
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(u >> (8 * k));
}
QL_HD float get_f32(const uint8_t *p) {
    return u2f((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

// ---- NF4 / FP4 ----
constexpr int BNB_BLOCK = 64;

QL_HD int64_t bnb4_row_bytes(int64_t ncols) {
    const int64_t full = ncols / BNB_BLOCK, rem = ncols % BNB_BLOCK;
    return full * (4 + BNB_BLOCK / 2) + (rem ? 4 + (rem + 1) / 2 : 0);
}
QL_HD uint8_t bnb4_encode(const ql_cuda_bnb4 &k, float x) {
    uint8_t sign = 0;
    if (k.sign_split) {
        sign = x < 0.0f ? 8 : 0;
        x = fabs_bits(x);
    }
    int c = 0;
    for (int i = 0; i < k.nthr; i++) c += x > k.thr[i];
    return (uint8_t)(k.order[c] + sign);
}
// one block of len values x: its finite absmax (returned) and its codes packed two per byte into out
// (encode_block of fmt_nf4.c), shared by the plain layout and the double-quantized one
QL_HD float bnb4_encode_block(const ql_cuda_bnb4 &k, const float *x, int64_t len, uint8_t *out) {
    float am = 0.0f;
    for (int64_t i = 0; i < len; i++)
        if (finite_f(x[i]) && fabs_bits(x[i]) > am) am = fabs_bits(x[i]);
    const float inv = div_rn(1.0f, am);
    for (int64_t i = 0; i < (len + 1) / 2; i++) out[i] = 0;
    for (int64_t i = 0; i < len; i++) {
        const float v = x[i];
        uint8_t c;
        if (is_nan(v)) c = k.zero;
        else if (is_inf(v)) c = v > 0 ? k.plus_one : k.minus_one;
        else if (am == 0.0f) c = k.zero;
        else c = bnb4_encode(k, is_inf(inv) ? div_rn(v, am) : mul_rn(v, inv)); // subnormal absmax: 1/am overflows
        out[i / 2] |= (uint8_t)(i % 2 ? c : c << 4);
    }
    return am;
}
// block b of row r: absmax, then the codes
QL_HD void bnb4_quant_block(const ql_cuda_bnb4 &k, const float *src, uint8_t *dst, int64_t ncols, int64_t item) {
    const int64_t nblk = (ncols + BNB_BLOCK - 1) / BNB_BLOCK, r = item / nblk, b = item % nblk;
    const int64_t c0 = b * BNB_BLOCK, len = BNB_BLOCK < ncols - c0 ? BNB_BLOCK : ncols - c0;
    uint8_t *p = dst + r * bnb4_row_bytes(ncols) + b * (4 + BNB_BLOCK / 2);
    put_f32(p, bnb4_encode_block(k, src + r * ncols + c0, len, p + 4));
}
QL_HD float bnb4_dequant_at(const ql_cuda_bnb4 &k, const uint8_t *src, int64_t ncols, int64_t i) {
    const int64_t r = i / ncols, col = i % ncols, b = col / BNB_BLOCK, j = col % BNB_BLOCK;
    const uint8_t *p = src + r * bnb4_row_bytes(ncols) + b * (4 + BNB_BLOCK / 2);
    const uint8_t byte = p[4 + j / 2];
    return mul_rn(k.code[j % 2 ? byte & 15 : byte >> 4], get_f32(p));
}

__global__ void k_bnb4_quant(ql_cuda_bnb4 k, const float *__restrict__ src, uint8_t *__restrict__ dst, int64_t ncols,
                             int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        bnb4_quant_block(k, src, dst, ncols, i);
}
__global__ void k_bnb4_dequant(ql_cuda_bnb4 k, const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t ncols,
                               int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = bnb4_dequant_at(k, src, ncols, i);
}

bool bnb4_shape(int64_t nrows, int64_t ncols) {
    if (nrows < 0 || ncols <= 0 || ncols > INT64_MAX / 2 || (nrows && bnb4_row_bytes(ncols) > INT64_MAX / nrows)) {
        ql_fail(QL_ERR_ARG, "cuda: bnb4: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
        return false;
    }
    return true;
}

// ---- NF4 / FP4 with double-quantized absmax (bnb4_dq_* of fmt_nf4.c) ----
constexpr int BNB_BLOCK2 = 256;
struct Dq {
    int64_t nrows, ncols, bpr, nb, nb2, rcb;
    QL_HD int64_t a2_off() const { return 4; }
    QL_HD int64_t qa_off() const { return 4 + 4 * nb2; }
    QL_HD int64_t codes_off() const { return 4 + 4 * nb2 + nb; }
};
bool dq_layout(int64_t nrows, int64_t ncols, Dq *L) {
    if (ncols <= 0 || nrows <= 0 || ncols > INT64_MAX / 2) return false;
    L->nrows = nrows, L->ncols = ncols;
    L->bpr = (ncols + BNB_BLOCK - 1) / BNB_BLOCK;
    L->rcb = (ncols + 1) / 2;
    if (L->bpr > INT64_MAX / nrows || L->rcb > INT64_MAX / nrows) return false;
    L->nb = L->bpr * nrows;
    L->nb2 = (L->nb + BNB_BLOCK2 - 1) / BNB_BLOCK2;
    return L->rcb * nrows <= INT64_MAX - L->nb - 4 * L->nb2 - 4;
}
// bitsandbytes' dQuantize<0> on the dynamic map (ql_bnb_dynamic_encode)
QL_HD uint8_t dyn_encode(const float *code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = code[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) return (uint8_t)(x > mul_rn(add_rn(upper, val), 0.5f) ? upper_pivot : pivot);
    return (uint8_t)(x < mul_rn(add_rn(lower, val), 0.5f) ? lower_pivot : pivot);
}
// first level, block b: exact absmax into absmax[b], codes into the row's code bytes
QL_HD void dq_block(const ql_cuda_bnb4 &k, const Dq &L, const float *src, uint8_t *dst, float *absmax, int64_t b) {
    const int64_t r = b / L.bpr, c0 = (b % L.bpr) * BNB_BLOCK, len = BNB_BLOCK < L.ncols - c0 ? BNB_BLOCK : L.ncols - c0;
    absmax[b] = bnb4_encode_block(k, src + r * L.ncols + c0, len, dst + L.codes_off() + r * L.rcb + c0 / 2);
}
// the mean of the absmax values: a double sum in block order
QL_HD void dq_offset(const Dq &L, const float *absmax, uint8_t *dst) {
    double sum = 0.0;
    for (int64_t b = 0; b < L.nb; b++) sum = dadd_rn(sum, (double)absmax[b]);
    put_f32(dst, (float)ddiv_rn(sum, (double)L.nb));
}
// second level, group g of 256 absmax values
QL_HD void dq_group(const ql_cuda_bnb4 &k, const Dq &L, const float *absmax, uint8_t *dst, int64_t g) {
    const float offset = get_f32(dst);
    const int64_t i0 = g * BNB_BLOCK2, i1 = i0 + BNB_BLOCK2 < L.nb ? i0 + BNB_BLOCK2 : L.nb;
    float am2 = 0.0f;
    for (int64_t i = i0; i < i1; i++) am2 = fmaxf(am2, fabs_bits(sub_rn(absmax[i], offset)));
    put_f32(dst + L.a2_off() + 4 * g, am2);
    const float inv = div_rn(1.0f, am2);
    uint8_t *qa = dst + L.qa_off();
    for (int64_t i = i0; i < i1; i++) {
        const float v = sub_rn(absmax[i], offset);
        qa[i] = am2 == 0.0f ? 127 : dyn_encode(k.dyn, is_inf(inv) ? div_rn(v, am2) : mul_rn(v, inv));
    }
}
QL_HD float dq_dequant_at(const ql_cuda_bnb4 &k, const Dq &L, const uint8_t *src, int64_t i) {
    const int64_t r = i / L.ncols, c = i % L.ncols, b = r * L.bpr + c / BNB_BLOCK;
    const float am = add_rn(mul_rn(k.dyn[src[L.qa_off() + b]], get_f32(src + L.a2_off() + 4 * (b / BNB_BLOCK2))),
                            get_f32(src));
    const uint8_t byte = src[L.codes_off() + r * L.rcb + c / 2];
    return mul_rn(k.code[c % 2 ? byte & 15 : byte >> 4], am);
}
__global__ void k_dq_blocks(ql_cuda_bnb4 k, Dq L, const float *__restrict__ src, uint8_t *dst, float *absmax) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < L.nb; b += stride)
        dq_block(k, L, src, dst, absmax, b);
}
__global__ void k_dq_offset(Dq L, const float *absmax, uint8_t *dst) { dq_offset(L, absmax, dst); }
__global__ void k_dq_groups(ql_cuda_bnb4 k, Dq L, const float *absmax, uint8_t *dst) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < L.nb2; g += stride)
        dq_group(k, L, absmax, dst, g);
}
__global__ void k_dq_dequant(ql_cuda_bnb4 k, Dq L, const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = dq_dequant_at(k, L, src, i);
}

// ---- AQLM decode ----
struct Aqlm {
    int M, B;
    int64_t nrows, ncols, ng, K;
    QL_HD int code_at(const uint8_t *codes, int64_t i) const {
        return B <= 8 ? codes[i] : (int)(codes[2 * i] | codes[2 * i + 1] << 8);
    }
};
QL_HD float aqlm_dequant_at(const Aqlm &A, const uint8_t *src, int64_t i) {
    const int64_t r = i / A.ncols, col = i % A.ncols, j = col / QL_AQLM_GROUP, d = col % QL_AQLM_GROUP;
    const int64_t cbn = (int64_t)A.M * A.K * QL_AQLM_GROUP;
    const uint8_t *sc = src + 2 * cbn, *codes = sc + 2 * A.nrows;
    float acc = 0.0f;
    for (int m = 0; m < A.M; m++) {
        const int64_t e = ((int64_t)m * A.K + A.code_at(codes, (r * A.ng + j) * A.M + m)) * QL_AQLM_GROUP + d;
        acc = add_rn(acc, h2f((uint16_t)(src[2 * e] | src[2 * e + 1] << 8)));
    }
    return mul_rn(acc, h2f((uint16_t)(sc[2 * r] | sc[2 * r + 1] << 8)));
}
__global__ void k_aqlm_dequant(Aqlm A, const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = aqlm_dequant_at(A, src, i);
}
bool aqlm_shape(int M, int B, int64_t nrows, int64_t ncols, Aqlm *A) {
    if (M < 1 || M > 8 || B < 1 || B > 16 || nrows <= 0 || ncols <= 0 || ncols > ((int64_t)1 << 40) ||
        nrows > ((int64_t)1 << 40)) {
        ql_fail(QL_ERR_ARG, "cuda: aqlm: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
        return false;
    }
    *A = Aqlm{M, B, nrows, ncols, (ncols + QL_AQLM_GROUP - 1) / QL_AQLM_GROUP, (int64_t)1 << B};
    return true;
}

// ---- FP8 ----
struct Fp8 {
    bool e5m2;
    ql_cuda_fp8_layout lay;
    int64_t nrows, ncols, nbr, nbc;
    QL_HD float max() const { return e5m2 ? 57344.0f : 448.0f; }
    QL_HD int64_t groups() const { return lay == QL_CUDA_FP8_TENSOR ? 1 : lay == QL_CUDA_FP8_ROW ? nrows : nbr * nbc; }
    QL_HD int64_t group_of(int64_t i) const {
        const int64_t r = i / ncols, c = i % ncols;
        return lay == QL_CUDA_FP8_TENSOR ? 0 : lay == QL_CUDA_FP8_ROW ? r : (r / 128) * nbc + c / 128;
    }
    QL_HD bool first_of_group(int64_t i) const {
        const int64_t r = i / ncols, c = i % ncols;
        return lay == QL_CUDA_FP8_TENSOR ? i == 0 : lay == QL_CUDA_FP8_ROW ? c == 0 : r % 128 == 0 && c % 128 == 0;
    }
    QL_HD int64_t scale_off(int64_t g) const {
        return lay == QL_CUDA_FP8_TENSOR ? 0 : lay == QL_CUDA_FP8_ROW ? g * (4 + ncols) : 4 * g;
    }
    QL_HD int64_t code_off(int64_t i) const {
        const int64_t r = i / ncols, c = i % ncols;
        return lay == QL_CUDA_FP8_TENSOR ? 4 + i : lay == QL_CUDA_FP8_ROW ? r * (4 + ncols) + 4 + c : 4 * nbr * nbc + i;
    }
    // element e of group g in a fixed walk (the absmax reduction's): rows of the group's tile/row/tensor
    QL_HD int64_t group_size(int64_t g) const {
        if (lay == QL_CUDA_FP8_TENSOR) return nrows * ncols;
        if (lay == QL_CUDA_FP8_ROW) return ncols;
        const int64_t br = g / nbc, bc = g % nbc;
        const int64_t h = (br + 1) * 128 < nrows ? 128 : nrows - br * 128, w = (bc + 1) * 128 < ncols ? 128 : ncols - bc * 128;
        return h * w;
    }
    QL_HD int64_t group_elem(int64_t g, int64_t e) const {
        if (lay == QL_CUDA_FP8_TENSOR) return e;
        if (lay == QL_CUDA_FP8_ROW) return g * ncols + e;
        const int64_t br = g / nbc, bc = g % nbc;
        const int64_t w = (bc + 1) * 128 < ncols ? 128 : ncols - bc * 128;
        return (br * 128 + e / w) * ncols + bc * 128 + e % w;
    }
};

QL_HD uint8_t fp8_encode_scaled(const Fp8 &F, float x, float scale) {
    if (is_nan(x) || scale == 0.0f) return 0;
    float v = div_rn(x, scale);
    if (is_inf(v)) v = (f2u(v) & 0x80000000u) ? fneg(F.max()) : F.max();
    return fp8_encode(F.e5m2, v);
}
QL_HD float fp8_dequant_at(const Fp8 &F, const uint8_t *src, int64_t i) {
    const float v = mul_rn(fp8_decode(F.e5m2, src[F.code_off(i)]), get_f32(src + F.scale_off(F.group_of(i))));
    return finite_f(v) ? v : 0.0f;
}
QL_HD void fp8_quant_at(const Fp8 &F, const float *src, uint8_t *dst, const uint32_t *amax_bits, int64_t i) {
    const int64_t g = F.group_of(i);
    const float scale = div_rn(u2f(amax_bits[g]), F.max());
    if (F.first_of_group(i)) put_f32(dst + F.scale_off(g), scale);
    dst[F.code_off(i)] = fp8_encode_scaled(F, src[i], scale);
}

// block (g, s): slice s of group g's elements, reduced in shared memory, one atomicMax
__global__ void k_fp8_absmax(Fp8 F, const float *__restrict__ src, uint32_t *amax_bits, int slices) {
    __shared__ uint32_t red[256];
    const int64_t g = blockIdx.x, n = F.group_size(g);
    uint32_t m = 0;
    for (int64_t e = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; e < n; e += (int64_t)slices * blockDim.x) {
        const float v = src[F.group_elem(g, e)];
        if (finite_f(v)) m = max(m, f2u(fabs_bits(v)));
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) red[threadIdx.x] = max(red[threadIdx.x], red[threadIdx.x + h]);
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicMax(&amax_bits[g], red[0]);
}
__global__ void k_fp8_quant(Fp8 F, const float *__restrict__ src, uint8_t *__restrict__ dst, const uint32_t *amax_bits,
                            int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fp8_quant_at(F, src, dst, amax_bits, i);
}
__global__ void k_fp8_dequant(Fp8 F, const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = fp8_dequant_at(F, src, i);
}

bool fp8_shape(bool e5m2, ql_cuda_fp8_layout lay, int64_t nrows, int64_t ncols, Fp8 *F) {
    if (nrows <= 0 || ncols <= 0 || ncols > (INT64_MAX / 2) / nrows ||
        (lay != QL_CUDA_FP8_TENSOR && lay != QL_CUDA_FP8_ROW && lay != QL_CUDA_FP8_TILE128)) {
        ql_fail(QL_ERR_ARG, "cuda: fp8: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
        return false;
    }
    *F = Fp8{e5m2, lay, nrows, ncols, (nrows + 127) / 128, (ncols + 127) / 128};
    return true;
}

} // namespace

extern "C" ql_status ql_cuda_bnb4_quantize_dev(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows,
                                               int64_t ncols, void *stream) {
    if (!bnb4_shape(nrows, ncols)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ((ncols + BNB_BLOCK - 1) / BNB_BLOCK);
    if (n == 0) return QL_OK;
    k_bnb4_quant<<<grid_for(n, 128), 128, 0, (cudaStream_t)stream>>>(*k, src, (uint8_t *)dst, ncols, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_bnb4_quantize_emulated(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows,
                                                    int64_t ncols) {
    if (!bnb4_shape(nrows, ncols)) return QL_ERR_ARG;
    for (int64_t i = 0; i < nrows * ((ncols + BNB_BLOCK - 1) / BNB_BLOCK); i++)
        bnb4_quant_block(*k, src, (uint8_t *)dst, ncols, i);
    return QL_OK;
}
extern "C" ql_status ql_cuda_bnb4_dequantize_dev(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                                 int64_t ncols, void *stream) {
    if (!bnb4_shape(nrows, ncols)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ncols;
    if (n == 0) return QL_OK;
    k_bnb4_dequant<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(*k, (const uint8_t *)src, dst, ncols, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_bnb4_dequantize_emulated(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                                      int64_t ncols) {
    if (!bnb4_shape(nrows, ncols)) return QL_ERR_ARG;
    for (int64_t i = 0; i < nrows * ncols; i++) dst[i] = bnb4_dequant_at(*k, (const uint8_t *)src, ncols, i);
    return QL_OK;
}

extern "C" ql_status ql_cuda_fp8_quantize_dev(bool e5m2, ql_cuda_fp8_layout lay, const float *src, void *dst,
                                              int64_t nrows, int64_t ncols, void *stream) {
    Fp8 F;
    if (!fp8_shape(e5m2, lay, nrows, ncols, &F)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const cudaStream_t s = (cudaStream_t)stream;
    const int64_t ng = F.groups(), n = nrows * ncols;
    if (ng > 2147483647) return ql_fail(QL_ERR_ARG, "cuda: fp8: too many scale groups");
    uint32_t *amax = nullptr;
    QL_CUDA_TRY(cudaMallocAsync((void **)&amax, (size_t)ng * 4, s));
    cudaError_t e = cudaMemsetAsync(amax, 0, (size_t)ng * 4, s);
    const int slices = lay == QL_CUDA_FP8_TENSOR ? 1024 : 1;
    if (e == cudaSuccess) {
        k_fp8_absmax<<<dim3((unsigned)ng, (unsigned)slices), 256, 0, s>>>(F, src, amax, slices);
        k_fp8_quant<<<grid_for(n, 256), 256, 0, s>>>(F, src, (uint8_t *)dst, amax, n);
        e = cudaGetLastError();
    }
    cudaFreeAsync(amax, s);
    if (e != cudaSuccess) return cuda_fail(e, "fp8 quantize", __FILE__, __LINE__);
    return QL_OK;
}
extern "C" ql_status ql_cuda_fp8_quantize_emulated(bool e5m2, ql_cuda_fp8_layout lay, const float *src, void *dst,
                                                   int64_t nrows, int64_t ncols) {
    Fp8 F;
    if (!fp8_shape(e5m2, lay, nrows, ncols, &F)) return QL_ERR_ARG;
    const int64_t ng = F.groups(), n = nrows * ncols;
    uint32_t *amax = (uint32_t *)calloc((size_t)ng, 4);
    if (!amax) return ql_fail(QL_ERR_NOMEM, "cuda: fp8: out of memory");
    for (int64_t g = 0; g < ng; g++) // the device's reduction, one group at a time
        for (int64_t e = 0; e < F.group_size(g); e++) {
            const float v = src[F.group_elem(g, e)];
            if (finite_f(v) && f2u(fabs_bits(v)) > amax[g]) amax[g] = f2u(fabs_bits(v));
        }
    for (int64_t i = 0; i < n; i++) fp8_quant_at(F, src, (uint8_t *)dst, amax, i);
    free(amax);
    return QL_OK;
}
extern "C" ql_status ql_cuda_fp8_dequantize_dev(bool e5m2, ql_cuda_fp8_layout lay, const void *src, float *dst,
                                                int64_t nrows, int64_t ncols, void *stream) {
    Fp8 F;
    if (!fp8_shape(e5m2, lay, nrows, ncols, &F)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ncols;
    k_fp8_dequant<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(F, (const uint8_t *)src, dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_fp8_dequantize_emulated(bool e5m2, ql_cuda_fp8_layout lay, const void *src, float *dst,
                                                     int64_t nrows, int64_t ncols) {
    Fp8 F;
    if (!fp8_shape(e5m2, lay, nrows, ncols, &F)) return QL_ERR_ARG;
    for (int64_t i = 0; i < nrows * ncols; i++) dst[i] = fp8_dequant_at(F, (const uint8_t *)src, i);
    return QL_OK;
}

extern "C" ql_status ql_cuda_bnb4_dq_quantize_dev(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows,
                                                  int64_t ncols, void *stream) {
    Dq L;
    if (!dq_layout(nrows, ncols, &L)) return ql_fail(QL_ERR_ARG, "cuda: bnb4 dq: bad shape");
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const cudaStream_t s = (cudaStream_t)stream;
    float *absmax = nullptr;
    QL_CUDA_TRY(cudaMallocAsync((void **)&absmax, (size_t)L.nb * sizeof(float), s));
    k_dq_blocks<<<grid_for(L.nb, 128), 128, 0, s>>>(*k, L, src, (uint8_t *)dst, absmax);
    k_dq_offset<<<1, 1, 0, s>>>(L, absmax, (uint8_t *)dst);
    k_dq_groups<<<grid_for(L.nb2, 64), 64, 0, s>>>(*k, L, absmax, (uint8_t *)dst);
    const cudaError_t e = cudaGetLastError();
    cudaFreeAsync(absmax, s);
    if (e != cudaSuccess) return cuda_fail(e, "bnb4 dq quantize", __FILE__, __LINE__);
    return QL_OK;
}
extern "C" ql_status ql_cuda_bnb4_dq_quantize_emulated(const ql_cuda_bnb4 *k, const float *src, void *dst,
                                                       int64_t nrows, int64_t ncols) {
    Dq L;
    if (!dq_layout(nrows, ncols, &L)) return ql_fail(QL_ERR_ARG, "cuda: bnb4 dq: bad shape");
    float *absmax = (float *)malloc((size_t)L.nb * sizeof(float));
    if (!absmax) return ql_fail(QL_ERR_NOMEM, "cuda: bnb4 dq: out of memory");
    for (int64_t b = 0; b < L.nb; b++) dq_block(*k, L, src, (uint8_t *)dst, absmax, b);
    dq_offset(L, absmax, (uint8_t *)dst);
    for (int64_t g = 0; g < L.nb2; g++) dq_group(*k, L, absmax, (uint8_t *)dst, g);
    free(absmax);
    return QL_OK;
}
extern "C" ql_status ql_cuda_bnb4_dq_dequantize_dev(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                                    int64_t ncols, void *stream) {
    Dq L;
    if (!dq_layout(nrows, ncols, &L)) return ql_fail(QL_ERR_ARG, "cuda: bnb4 dq: bad shape");
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ncols;
    k_dq_dequant<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(*k, L, (const uint8_t *)src, dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_bnb4_dq_dequantize_emulated(const ql_cuda_bnb4 *k, const void *src, float *dst,
                                                         int64_t nrows, int64_t ncols) {
    Dq L;
    if (!dq_layout(nrows, ncols, &L)) return ql_fail(QL_ERR_ARG, "cuda: bnb4 dq: bad shape");
    for (int64_t i = 0; i < nrows * ncols; i++) dst[i] = dq_dequant_at(*k, L, (const uint8_t *)src, i);
    return QL_OK;
}

extern "C" ql_status ql_cuda_aqlm_dequantize_dev(int M, int B, const void *src, float *dst, int64_t nrows,
                                                 int64_t ncols, void *stream) {
    Aqlm A;
    if (!aqlm_shape(M, B, nrows, ncols, &A)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ncols;
    k_aqlm_dequant<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(A, (const uint8_t *)src, dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_aqlm_dequantize_emulated(int M, int B, const void *src, float *dst, int64_t nrows,
                                                      int64_t ncols) {
    Aqlm A;
    if (!aqlm_shape(M, B, nrows, ncols, &A)) return QL_ERR_ARG;
    for (int64_t i = 0; i < nrows * ncols; i++) dst[i] = aqlm_dequant_at(A, (const uint8_t *)src, i);
    return QL_OK;
}
