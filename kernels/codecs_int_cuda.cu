// codecs_int_cuda.cu — CUDA twins of qlab's INTn codecs (kernels/int_quants.h, formats/fmt_int.c): the row
// codec (groups of g along a row with n-bit zeros or symmetric, per row, the whole tensor as one row, MSE
// clipping search) and the 2-D tile codec, quantize and dequantize, bit-exact with the scalar reference.
// API: cuda_int_api.h; the format entries in formats/fmt_int.c point at them with their parameters.
// Exactness as in codecs_cuda.cu: the per-group code is __host__ __device__, float and double operations go
// through the _rn helpers of cuda_common.cuh (never contracted to FMA), rounding to nearest-even is rint
// on both sides, fp16 is cuda_half.cuh's bit code. The reference never lets a NaN reach a scale or a code,
// so no x86 NaN imitation is needed here.
// Threads. Dequantize: one per output element. Quantize (rows): one per 8 consecutive groups of a row, so
// each thread owns whole bytes of the zero-point stream (8 zeros of n bits = n bytes) and of the code stream
// (a group of g >= 32 codes is a whole number of bytes); a per-row codec (g = the row) has one thread per
// row. Quantize (tiles): one per tile, or one for the tensor when a row's codes end inside a byte.
#include "kernels/cuda_int_api.h"
#include "kernels/cuda_api.h" /* ql_cuda_available */
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh"

#include <cuda_runtime.h>

using namespace ql_cuda;

namespace {

QL_HD int64_t bits_to_bytes(int64_t nbits) { return (nbits + 7) / 8; }
QL_HD void bits_or(uint8_t *buf, int64_t pos, int n, unsigned v) {
    const int64_t byte = pos >> 3;
    const int sh = (int)(pos & 7);
    buf[byte] |= (uint8_t)(v << sh);
    if (sh + n > 8) buf[byte + 1] |= (uint8_t)(v >> (8 - sh));
}
QL_HD unsigned bits_get(const uint8_t *buf, int64_t pos, int n) {
    const int64_t byte = pos >> 3;
    const int sh = (int)(pos & 7);
    unsigned w = (unsigned)buf[byte] >> sh;
    if (sh + n > 8) w |= (unsigned)buf[byte + 1] << (8 - sh);
    return w & ((1u << n) - 1);
}
QL_HD uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
QL_HD void st16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
QL_HD bool finite(float v) { return finite_f(v); }

// ql_int_code
QL_HD int int_code(float x, float id, int zero, int maxq) {
    float v = mul_rn(x, id);
    if (v != v) return zero;
    v = add_rn(rint_even(v), (float)zero);
    return v < 0.0f ? 0 : v > (float)maxq ? maxq : (int)v;
}

struct GroupParam {
    uint16_t scale_h;
    float scale;
    int zero;
};

// ql_int_params_for
QL_HD GroupParam params_for(float p, float lo, float hi, float m, int bits, bool sym) {
    const int maxq = (1 << bits) - 1, half = 1 << (bits - 1);
    GroupParam gp;
    const double s = sym ? ddiv_rn(dmul_rn((double)p, (double)m), (double)-half)
                         : ddiv_rn(dsub_rn(dmul_rn((double)p, (double)hi), dmul_rn((double)p, (double)lo)),
                                   (double)maxq);
    float sf = (float)s; // double -> float, round to nearest on both sides
    sf = sf > 65504.0f ? 65504.0f : sf < -65504.0f ? -65504.0f : sf;
    gp.scale_h = f2h(sf);
    gp.scale = h2f(gp.scale_h);
    if (sym) {
        gp.zero = half;
    } else {
        const float id = gp.scale != 0.0f ? div_rn(1.0f, gp.scale) : 0.0f;
        const float z = rint_even(mul_rn(fneg(mul_rn(p, lo)), id));
        gp.zero = z < 0.0f ? 0 : z > (float)maxq ? maxq : cvtt_x86(z);
    }
    return gp;
}

// choose_group of int_quants_ref.c, no importance weights
QL_HD GroupParam choose_group(const float *x, int64_t len, int bits, bool sym, bool mse) {
    const int maxq = (1 << bits) - 1;
    float lo = 0.0f, hi = 0.0f, m = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        const float v = x[i];
        if (!finite(v)) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        if (fabs_bits(v) > fabs_bits(m)) m = v;
    }
    GroupParam best = params_for(1.0f, lo, hi, m, bits, sym);
    if (!mse) return best;
    double best_err = INFINITY;
    for (int k = 0; k < 80; k++) { // QL_INT_MSE_STEPS
        const float p = div_rn((float)(100 - k), 100.0f);
        const GroupParam gp = k == 0 ? best : params_for(p, lo, hi, m, bits, sym);
        const float id = gp.scale != 0.0f ? div_rn(1.0f, gp.scale) : 0.0f;
        double err = 0.0;
        for (int64_t i = 0; i < len; i++) {
            if (!finite(x[i])) continue;
            const float y = mul_rn((float)(int_code(x[i], id, gp.zero, maxq) - gp.zero), gp.scale);
            const double d = dsub_rn((double)y, (double)x[i]);
            err = dadd_rn(err, dmul_rn(d, d)); // the reference's 1.0 * d * d: the product by 1.0 is exact
        }
        if (err < best_err) {
            best_err = err;
            best = gp;
        }
    }
    return best;
}

struct IntRows {
    int bits, sym, mse;
    int64_t g, ng, ncols, rb, nchunks;
    QL_HD int64_t zero_bytes() const { return sym ? 0 : bits_to_bytes(ng * bits); }
};

// groups 8c .. 8c+7 of row r: clears the bytes it owns, then writes scales, zeros and codes
QL_HD void int_quant_chunk(const IntRows &P, const float *src, uint8_t *dst, int64_t item) {
    const int64_t r = item / P.nchunks, c = item % P.nchunks;
    const int64_t k0 = 8 * c, k1 = k0 + 8 < P.ng ? k0 + 8 : P.ng;
    const int bits = P.bits, maxq = (1 << bits) - 1;
    const float *x = src + r * P.ncols;
    uint8_t *row = dst + r * P.rb;
    uint8_t *zeros = row + 2 * P.ng;
    uint8_t *codes = zeros + P.zero_bytes();
    // owned bytes: scales of k0..k1, zero bits [k0*bits, k1*bits), code bits [k0*g*bits, min(k1*g, ncols)*bits)
    for (int64_t k = 2 * k0; k < 2 * k1; k++) row[k] = 0;
    if (!P.sym) {
        const int64_t b0 = k0 * bits / 8, b1 = k1 == P.ng ? P.zero_bytes() : k1 * bits / 8;
        for (int64_t b = b0; b < b1; b++) zeros[b] = 0;
    }
    const int64_t c_end = k1 * P.g < P.ncols ? k1 * P.g : P.ncols;
    const int64_t cb0 = k0 * P.g * bits / 8, cb1 = k1 == P.ng ? bits_to_bytes(P.ncols * bits) : c_end * bits / 8;
    for (int64_t b = cb0; b < cb1; b++) codes[b] = 0;
    for (int64_t k = k0; k < k1; k++) {
        const int64_t c0 = k * P.g, len = P.g < P.ncols - c0 ? P.g : P.ncols - c0;
        const GroupParam gp = choose_group(x + c0, len, bits, P.sym, P.mse);
        st16(row + 2 * k, gp.scale_h);
        if (!P.sym) bits_or(zeros, k * bits, bits, (unsigned)gp.zero);
        const float id = gp.scale != 0.0f ? div_rn(1.0f, gp.scale) : 0.0f;
        for (int64_t i = 0; i < len; i++)
            bits_or(codes, (c0 + i) * bits, bits, (unsigned)int_code(x[c0 + i], id, gp.zero, maxq));
    }
}

QL_HD float int_dequant_at(const IntRows &P, const uint8_t *src, int64_t i) {
    const int64_t r = i / P.ncols, col = i % P.ncols, k = col / P.g;
    const uint8_t *row = src + r * P.rb;
    const uint8_t *zeros = row + 2 * P.ng;
    const uint8_t *codes = zeros + P.zero_bytes();
    const float s = h2f(ld16(row + 2 * k));
    const int zero = P.sym ? 1 << (P.bits - 1) : (int)bits_get(zeros, k * P.bits, P.bits);
    return mul_rn((float)((int)bits_get(codes, col * P.bits, P.bits) - zero), s);
}

struct Tiles {
    int bits;
    int64_t bs, nrows, ncols, nbr, nbc;
};

// tile t of the 2-D codec (block2d_quantize): its scale and codes (the caller cleared the buffer)
QL_HD void tile_quant(const Tiles &T, const float *src, uint8_t *dst, int64_t t) {
    const int64_t br = t / T.nbc, bc = t % T.nbc;
    const int64_t r1 = (br + 1) * T.bs < T.nrows ? (br + 1) * T.bs : T.nrows;
    const int64_t c1 = (bc + 1) * T.bs < T.ncols ? (bc + 1) * T.bs : T.ncols;
    uint8_t *codes = dst + 2 * T.nbr * T.nbc;
    const int maxq = (1 << T.bits) - 1;
    float m = 0.0f;
    for (int64_t r = br * T.bs; r < r1; r++)
        for (int64_t c = bc * T.bs; c < c1; c++) {
            const float v = src[r * T.ncols + c];
            if (finite(v) && fabs_bits(v) > fabs_bits(m)) m = v;
        }
    const GroupParam gp = params_for(1.0f, 0.0f, 0.0f, m, T.bits, true);
    st16(dst + 2 * t, gp.scale_h);
    const float id = gp.scale != 0.0f ? div_rn(1.0f, gp.scale) : 0.0f;
    for (int64_t r = br * T.bs; r < r1; r++)
        for (int64_t c = bc * T.bs; c < c1; c++)
            bits_or(codes, (r * T.ncols + c) * T.bits, T.bits,
                    (unsigned)int_code(src[r * T.ncols + c], id, gp.zero, maxq));
}

QL_HD float tile_dequant_at(const Tiles &T, const uint8_t *src, int64_t i) {
    const int64_t r = i / T.ncols, c = i % T.ncols;
    const float s = h2f(ld16(src + 2 * ((r / T.bs) * T.nbc + c / T.bs)));
    const uint8_t *codes = src + 2 * T.nbr * T.nbc;
    return mul_rn((float)((int)bits_get(codes, i * T.bits, T.bits) - (1 << (T.bits - 1))), s);
}

// One INT8 group over a whole tensor (int8_tensor): int_quant_chunk would be one thread walking all of it (an
// 8B model's 525M-value embedding: tens of seconds). The scale needs only the reference's first value of
// largest magnitude, a reduction: keys order by |v|, then by lower index; non-finite values do not count.
QL_HD bool whole_int8(const IntRows &P, int64_t nrows) {
    return nrows == 1 && P.ng == 1 && P.sym && !P.mse && P.bits == 8 && P.ncols <= (int64_t)UINT32_MAX;
}
QL_HD unsigned long long absmax_key(float v, int64_t i) {
    if (!finite_f(v)) return 0;
    return (unsigned long long)(f2u(v) & 0x7fffffffu) << 32 | (0xffffffffu - (uint32_t)i);
}
// the winning value, or the reference's +0 when every value is zero or not finite
QL_HD float absmax_value(const float *x, unsigned long long key) {
    return key >> 32 ? x[0xffffffffu - (uint32_t)key] : 0.0f;
}
// scale and the code of value i (row: 2 bytes of scale, then one byte per value)
QL_HD void whole_int8_at(const float *x, unsigned long long key, uint8_t *row, int64_t i) {
    const GroupParam gp = params_for(1.0f, 0.0f, 0.0f, absmax_value(x, key), 8, true);
    const float id = gp.scale != 0.0f ? div_rn(1.0f, gp.scale) : 0.0f;
    if (i == 0) st16(row, gp.scale_h);
    row[2 + i] = (uint8_t)int_code(x[i], id, gp.zero, 255);
}
__global__ void k_absmax_key(const float *__restrict__ x, int64_t n, unsigned long long *key) {
    __shared__ unsigned long long sh[256];
    unsigned long long k = 0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const unsigned long long u = absmax_key(x[i], i);
        if (u > k) k = u;
    }
    sh[threadIdx.x] = k;
    __syncthreads();
    for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) { // blockDim.x is 256
        if (threadIdx.x < h && sh[threadIdx.x + h] > sh[threadIdx.x]) sh[threadIdx.x] = sh[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicMax(key, sh[0]);
}
__global__ void k_whole_int8(const float *__restrict__ x, int64_t n, const unsigned long long *key, uint8_t *row) {
    const unsigned long long k = *key;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) whole_int8_at(x, k, row, i);
}

__global__ void k_int_quant(IntRows P, const float *__restrict__ src, uint8_t *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        int_quant_chunk(P, src, dst, i);
}
__global__ void k_int_dequant(IntRows P, const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = int_dequant_at(P, src, i);
}
__global__ void k_tile_quant(Tiles T, const float *__restrict__ src, uint8_t *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        tile_quant(T, src, dst, i);
}
__global__ void k_tile_dequant(Tiles T, const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = tile_dequant_at(T, src, i);
}

// the parameters of a [nrows, ncols] INTn row tensor; false (with ql_fail) when they do not describe one
bool int_rows(int64_t nrows, int64_t ncols, int bits, int group, bool sym, bool mse, IntRows *P) {
    if (nrows < 0 || ncols <= 0 || bits < 1 || bits > 8 || ncols > INT64_MAX / 16 ||
        (group > 0 && group % 8 != 0)) {
        ql_fail(QL_ERR_ARG, "cuda: INT%d rows of %lld (group %d) are not a codec shape", bits, (long long)ncols,
                group);
        return false;
    }
    P->bits = bits;
    P->sym = sym;
    P->mse = mse;
    P->ncols = ncols;
    P->g = group > 0 ? group : ncols;
    P->ng = (ncols + P->g - 1) / P->g;
    P->nchunks = (P->ng + 7) / 8;
    P->rb = 2 * P->ng + P->zero_bytes() + bits_to_bytes(ncols * bits);
    if (nrows && P->rb > INT64_MAX / nrows) {
        ql_fail(QL_ERR_ARG, "cuda: INT%d tensor too large", bits);
        return false;
    }
    return true;
}

bool tiles(int64_t nrows, int64_t ncols, int bits, int bs, Tiles *T) {
    if (nrows <= 0 || ncols <= 0 || bits < 1 || bits > 8 || bs <= 0 || ncols > INT64_MAX / nrows / 8) {
        ql_fail(QL_ERR_ARG, "cuda: INT%d tiles of %d: bad shape %lld x %lld", bits, bs, (long long)nrows,
                (long long)ncols);
        return false;
    }
    *T = Tiles{bits, bs, nrows, ncols, (nrows + bs - 1) / bs, (ncols + bs - 1) / bs};
    return true;
}
int64_t tile_bytes(const Tiles &T) { return 2 * T.nbr * T.nbc + bits_to_bytes(T.nrows * T.ncols * T.bits); }

// A row's codes end inside a byte, so neighbouring tiles across a row end share it: one thread then.
bool tiles_share_bytes(const Tiles &T) { return (T.ncols * T.bits) % 8 != 0 || (T.bs * T.bits) % 8 != 0; }

} // namespace

extern "C" ql_status ql_cuda_int_quantize_dev(const float *src, void *dst, int64_t nrows, int64_t ncols, void *stream,
                                              int bits, int group, bool sym, bool mse) {
    IntRows P;
    if (!int_rows(nrows, ncols, bits, group, sym, mse, &P)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * P.nchunks;
    if (n == 0) return QL_OK;
    const cudaStream_t s = (cudaStream_t)stream;
    if (whole_int8(P, nrows)) {
        unsigned long long *key = NULL;
        QL_CUDA_TRY(cudaMallocAsync((void **)&key, sizeof *key, s));
        cudaError_t e = cudaMemsetAsync(key, 0, sizeof *key, s);
        if (e == cudaSuccess) {
            k_absmax_key<<<grid_for(P.ncols, 256), 256, 0, s>>>(src, P.ncols, key);
            k_whole_int8<<<grid_for(P.ncols, 256), 256, 0, s>>>(src, P.ncols, key, (uint8_t *)dst);
            e = cudaGetLastError();
        }
        cudaError_t fe = cudaFreeAsync(key, s);
        if (e == cudaSuccess) e = fe;
        return e == cudaSuccess ? QL_OK : cuda_fail(e, "int8 tensor quantize", __FILE__, __LINE__);
    }
    k_int_quant<<<grid_for(n, 64), 64, 0, s>>>(P, src, (uint8_t *)dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_int_quantize_emulated(const float *src, void *dst, int64_t nrows, int64_t ncols, int bits,
                                                   int group, bool sym, bool mse) {
    IntRows P;
    if (!int_rows(nrows, ncols, bits, group, sym, mse, &P)) return QL_ERR_ARG;
    if (whole_int8(P, nrows)) { // the device's reduction, in the same key order
        unsigned long long key = 0;
        for (int64_t i = 0; i < ncols; i++) {
            const unsigned long long u = absmax_key(src[i], i);
            if (u > key) key = u;
        }
        for (int64_t i = 0; i < ncols; i++) whole_int8_at(src, key, (uint8_t *)dst, i);
        return QL_OK;
    }
    for (int64_t i = 0; i < nrows * P.nchunks; i++) int_quant_chunk(P, src, (uint8_t *)dst, i);
    return QL_OK;
}
extern "C" ql_status ql_cuda_int_dequantize_dev(const void *src, float *dst, int64_t nrows, int64_t ncols,
                                                void *stream, int bits, int group, bool sym) {
    IntRows P;
    if (!int_rows(nrows, ncols, bits, group, sym, false, &P)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ncols;
    if (n == 0) return QL_OK;
    k_int_dequant<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(P, (const uint8_t *)src, dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_int_dequantize_emulated(const void *src, float *dst, int64_t nrows, int64_t ncols,
                                                     int bits, int group, bool sym) {
    IntRows P;
    if (!int_rows(nrows, ncols, bits, group, sym, false, &P)) return QL_ERR_ARG;
    for (int64_t i = 0; i < nrows * ncols; i++) dst[i] = int_dequant_at(P, (const uint8_t *)src, i);
    return QL_OK;
}

extern "C" ql_status ql_cuda_int_tiles_quantize_dev(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                                    void *stream, int bits, int bs) {
    Tiles T;
    if (!tiles(nrows, ncols, bits, bs, &T)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const cudaStream_t s = (cudaStream_t)stream;
    QL_CUDA_TRY(cudaMemsetAsync(dst, 0, (size_t)tile_bytes(T), s));
    const int64_t n = T.nbr * T.nbc;
    if (tiles_share_bytes(T))
        k_tile_quant<<<1, 1, 0, s>>>(T, src, (uint8_t *)dst, n); // one thread walks every tile
    else
        k_tile_quant<<<grid_for(n, 64), 64, 0, s>>>(T, src, (uint8_t *)dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_int_tiles_quantize_emulated(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                                         int bits, int bs) {
    Tiles T;
    if (!tiles(nrows, ncols, bits, bs, &T)) return QL_ERR_ARG;
    memset(dst, 0, (size_t)tile_bytes(T));
    for (int64_t t = 0; t < T.nbr * T.nbc; t++) tile_quant(T, src, (uint8_t *)dst, t);
    return QL_OK;
}
extern "C" ql_status ql_cuda_int_tiles_dequantize_dev(const void *src, float *dst, int64_t nrows, int64_t ncols,
                                                      void *stream, int bits, int bs) {
    Tiles T;
    if (!tiles(nrows, ncols, bits, bs, &T)) return QL_ERR_ARG;
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    const int64_t n = nrows * ncols;
    k_tile_dequant<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(T, (const uint8_t *)src, dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}
extern "C" ql_status ql_cuda_int_tiles_dequantize_emulated(const void *src, float *dst, int64_t nrows, int64_t ncols,
                                                           int bits, int bs) {
    Tiles T;
    if (!tiles(nrows, ncols, bits, bs, &T)) return QL_ERR_ARG;
    for (int64_t i = 0; i < nrows * ncols; i++) dst[i] = tile_dequant_at(T, (const uint8_t *)src, i);
    return QL_OK;
}
