// forward_cuda.cu — the forward pass's device kernels (see kernels/forward_cuda.h) for core/backend_cuda.c.
// Every op's arithmetic is a __host__ __device__ function below, written with the non-contracting _rn
// operations of cuda_common.cuh so the device does the CPU backend's float operations in its order; the
// reductions (RMSNorm's sum of squares, softmax's max and sum) run in QL_CUDAFWD_LANES lanes and a fixed
// halving tree, which the *_emulated entry points replay on the host lane by lane. What can still differ
// from the CPU backend: the reduction order (the CPU sums left to right) and the device's expf / tanhf
// (CUDA's are within 2 ulp, glibc's differ); RoPE's cos/sin come from a table the host fills with the CPU's
// own formula, and GeGLU reads a device copy of the CPU's fp16 GELU table, so both are bit-exact.
#include "kernels/forward_cuda.h"
#include "kernels/blocks.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh"
#include "kernels/cuda_fp8.cuh"

extern "C" {
#include "kernels/ggml_types.h"
}

using namespace ql_cuda;

namespace {

constexpr int LANES = QL_CUDAFWD_LANES;

// ---- the ops' arithmetic, shared by the kernels and their host emulation ----

// RMSNorm: lane `lane`'s part of the sum of squares (float products summed in double, as ggml does)
QL_HD double rms_partial(const float *x, int D, int lane) {
    double s = 0;
    for (int i = lane; i < D; i += LANES) s = dadd_rn(s, (double)mul_rn(x[i], x[i]));
    return s;
}
QL_HD float rms_scale(double ss, int D, float eps) {
    return div_rn(1.0f, sqrt_rn(add_rn((float)ddiv_rn(ss, (double)D), eps)));
}
QL_HD void rms_apply(const float *x, const float *w, float *y, int D, float scale, int lane) {
    for (int i = lane; i < D; i += LANES) y[i] = mul_rn(mul_rn(x[i], scale), w[i]);
}

// RoPE: one pair of one head (cs = cos, sin of that pair at that position)
QL_HD void rope_pair(float *r, int a, int b, float c, float s) {
    const float x0 = r[a], x1 = r[b];
    r[a] = sub_rn(mul_rn(x0, c), mul_rn(x1, s));
    r[b] = add_rn(mul_rn(x0, s), mul_rn(x1, c));
}

// causal softmax of row i: the first position it sees, then each phase of one lane
QL_HD int sm_first(int i, int window) { return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0; }
QL_HD float softcap1(float x, float inv, float cap) { return mul_rn(tanhf(mul_rn(x, inv)), cap); }
QL_HD float max_skip_nan(float m, float v) { return v > m ? v : m; } // the CPU's `row[j] > mx ? row[j] : mx`
QL_HD float sm_max_partial(float *row, int j0, int i, float cap, int lane) {
    float m = -INFINITY;
    const float inv = cap > 0 ? div_rn(1.0f, cap) : 0.0f;
    for (int j = j0 + lane; j <= i; j += LANES) {
        if (cap > 0) row[j] = softcap1(row[j], inv, cap);
        m = max_skip_nan(m, row[j]);
    }
    return m;
}
QL_HD float sm_exp_partial(float *row, int j0, int i, float mx, int lane) {
    float s = 0;
    for (int j = j0 + lane; j <= i; j += LANES) {
        row[j] = expf(sub_rn(row[j], mx));
        s = add_rn(s, row[j]);
    }
    return s;
}
QL_HD void sm_finish(float *row, int T, int j0, int i, float inv, int lane) {
    for (int j = lane; j < T; j += LANES) row[j] = j >= j0 && j <= i ? mul_rn(row[j], inv) : 0.0f;
}

// FFN activations
QL_HD float silu_mul(float g, float u) { return mul_rn(div_rn(g, add_rn(1.0f, expf(fneg(g)))), u); }
QL_HD float gelu_mul(float g, float u, const uint16_t *table) {
    float y;
    if (g <= -10.0f) y = 0.0f;
    else if (g >= 10.0f) y = g;
    else y = h2f(table[f2h(g)]);
    return mul_rn(y, u);
}

// bf16 as base/ql_common.c rounds it (nearest even, quiet NaN)
QL_HD uint16_t f2bf(float f) {
    const uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}
QL_HD float bf2f(uint16_t h) { return u2f((uint32_t)h << 16); }

// llama.cpp's activation rounding, one block: Q8_0 / Q8_1 (32 values, fp16 scale amax/127)
QL_HD void round_q8_0_block(const float *x, float *y) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabs_bits(x[j]));
    const float d = div_rn(amax, 127.f), id = amax != 0 ? div_rn(127.f, amax) : 0.f;
    const float dh = h2f(f2h(d));
    for (int j = 0; j < 32; j++) y[j] = mul_rn(dh, rintf(mul_rn(x[j], id)));
}
// Q8_K (256 values, scale -127 / the value of largest magnitude)
QL_HD void round_q8_k_block(const float *x, float *y) {
    float amax = 0, mx = 0;
    for (int j = 0; j < 256; j++)
        if (fabs_bits(x[j]) > amax) {
            amax = fabs_bits(x[j]);
            mx = x[j];
        }
    if (amax == 0) {
        for (int j = 0; j < 256; j++) y[j] = 0;
        return;
    }
    const float iscale = div_rn(-127.f, mx), d = div_rn(1.0f, iscale);
    for (int j = 0; j < 256; j++) {
        const int v = cvtt_x86(rintf(mul_rn(iscale, x[j])));
        y[j] = mul_rn(d, (float)(v > 127 ? 127 : v));
    }
}
// llama.cpp's cache write of a Q8_0 block (ggml-cpu's quantize_row_q8_0, core/kv_cache.c's quantize_q8_0_cpu):
// the reference's scale, codes rounded half to even
QL_HD void quantize_q8_0_kv_block(const float *x, blk_q8_0 *y) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabs_bits(x[j]));
    const float d = div_rn(amax, 127.f), id = amax != 0 ? div_rn(127.f, amax) : 0.f;
    y->d = f2h(d);
    for (int j = 0; j < 32; j++) y->qs[j] = (int8_t)cvtt_x86(rintf(mul_rn(x[j], id)));
}

QL_HD float round_half(float x, bool bf16) { return bf16 ? bf2f(f2bf(x)) : h2f(f2h(x)); }

// ---- kernels ----

__global__ void k_rmsnorm(const float *x, const float *w, float *y, int T, int D, float eps) {
    __shared__ double red[LANES];
    const int lane = threadIdx.x;
    for (int t = blockIdx.x; t < T; t += gridDim.x) {
        const float *xr = x + (size_t)t * D;
        red[lane] = rms_partial(xr, D, lane);
        __syncthreads();
        for (int s = LANES / 2; s > 0; s >>= 1) {
            if (lane < s) red[lane] = dadd_rn(red[lane], red[lane + s]);
            __syncthreads();
        }
        const float scale = rms_scale(red[0], D, eps);
        __syncthreads(); // red is reused by the next row
        rms_apply(xr, w, y + (size_t)t * D, D, scale, lane);
    }
}

__global__ void k_rope(float *x, const float *cs, int T, int n_heads, int hd, int half, bool neox) {
    const int64_t n = (int64_t)T * n_heads * half, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const int i = (int)(k % half);
        const int64_t th = k / half; // t * n_heads + h
        const int t = (int)(th / n_heads);
        const float *c = cs + (size_t)t * 2 * half + 2 * i;
        rope_pair(x + th * hd, neox ? i : 2 * i, neox ? i + half : 2 * i + 1, c[0], c[1]);
    }
}

__global__ void k_softmax(float *S, int T, float cap, int window) {
    __shared__ float red[LANES];
    const int lane = threadIdx.x;
    for (int i = blockIdx.x; i < T; i += gridDim.x) {
        float *row = S + (size_t)i * T;
        const int j0 = sm_first(i, window);
        red[lane] = sm_max_partial(row, j0, i, cap, lane);
        __syncthreads();
        for (int s = LANES / 2; s > 0; s >>= 1) {
            if (lane < s) red[lane] = max_skip_nan(red[lane], red[lane + s]);
            __syncthreads();
        }
        const float mx = red[0];
        __syncthreads();
        red[lane] = sm_exp_partial(row, j0, i, mx, lane);
        __syncthreads();
        for (int s = LANES / 2; s > 0; s >>= 1) {
            if (lane < s) red[lane] = add_rn(red[lane], red[lane + s]);
            __syncthreads();
        }
        const float inv = div_rn(1.0f, red[0]);
        __syncthreads();
        sm_finish(row, T, j0, i, inv, lane);
    }
}

__global__ void k_glu(float *gate, const float *up, int64_t n, const uint16_t *table) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        gate[i] = table ? gelu_mul(gate[i], up[i], table) : silu_mul(gate[i], up[i]);
}

__global__ void k_softcap(float *x, int64_t n, float inv, float cap) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = softcap1(x[i], inv, cap);
}

__global__ void k_scale(float *x, int64_t n, float s) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = mul_rn(x[i], s);
}

__global__ void k_add(float *y, const float *x, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = add_rn(y[i], x[i]);
}

__global__ void k_add_bias(float *y, const float *b, int64_t n, int N) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = add_rn(y[i], b[i % N]);
}

// one thread per block of QK values (kind 0: f16, 1: bf16, 2: q8_0, 3: q8_k)
__global__ void k_round_act(const float *x, float *y, int64_t nb, int kind) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride) {
        if (kind == 2) round_q8_0_block(x + b * 32, y + b * 32);
        else if (kind == 3) round_q8_k_block(x + b * 256, y + b * 256);
        else y[b] = round_half(x[b], kind == 1);
    }
}

__global__ void k_to_half(const float *x, uint16_t *d, int64_t n, bool bf16) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) d[i] = bf16 ? f2bf(x[i]) : f2h(x[i]);
}

__global__ void k_from_half(const uint16_t *s, float *y, int64_t n, bool bf16) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = bf16 ? bf2f(s[i]) : h2f(s[i]);
}

__global__ void k_q8_0_kv(const float *x, blk_q8_0 *y, int64_t nb) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride) quantize_q8_0_kv_block(x + b * 32, y + b);
}

__global__ void k_to_double(const float *x, double *y, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = (double)x[i];
}

// ---- qlab's KV sides (core/kv_cache.c's quantize_tokens, operation for operation) ----

// normalized fast Walsh-Hadamard transform of one head, in place (its own inverse)
QL_HD void had_head(float *x, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                const float a = x[j], c = x[j + h];
                x[j] = add_rn(a, c);
                x[j + h] = sub_rn(a, c);
            }
    const float s = div_rn(1.0f, sqrt_rn((float)n));
    for (int i = 0; i < n; i++) x[i] = mul_rn(x[i], s);
}

// min/max asymmetric INTn of n values at stride st, scale and minimum rounded through fp16 (int_group)
QL_HD void int_round(const float *x, float *y, int n, int64_t st, int bits) {
    float mn = u2f(0x7f800000u), mx = fneg(mn);
    for (int i = 0; i < n; i++) {
        const float v = x[i * st];
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }
    const int qmax = (1 << bits) - 1;
    const float d = h2f(f2h(div_rn(sub_rn(mx, mn), (float)qmax))), m = h2f(f2h(mn));
    const float id = d > 0 ? div_rn(1.0f, d) : 0.0f;
    for (int i = 0; i < n; i++) {
        float q = rint_even(mul_rn(sub_rn(x[i * st], m), id));
        q = q < 0 ? 0 : q > qmax ? (float)qmax : q;
        y[i * st] = add_rn(mul_rn(q, d), m);
    }
}

// one head's FP8 codes under an f32 scale amax / fp8 max, decoded (fp8_head)
QL_HD void fp8_round(const float *x, float *y, int n, bool e5m2) {
    float amax = 0;
    for (int i = 0; i < n; i++) {
        const float a = fabs_bits(x[i]);
        amax = a > amax ? a : amax; // fmaxf(amax, fabsf(x)): a NaN is skipped
    }
    const float s = div_rn(amax, e5m2 ? 57344.0f : 448.0f);
    for (int i = 0; i < n; i++) y[i] = s == 0 ? 0.0f : mul_rn(fp8_decode(e5m2, fp8_encode(e5m2, div_rn(x[i], s))), s);
}

// item i of the rounding of rows [0, rows) of src into y (both already offset to the first token)
QL_HD void kv_round_item(const ql_cudafwd_kv_side &s, const float *src, float *y, int64_t i) {
    const int64_t D = (int64_t)s.n_head_kv * s.head_dim;
    if (s.fp8) fp8_round(src + i * s.head_dim, y + i * s.head_dim, s.head_dim, s.e5m2); // i: (token, head)
    else if (!s.per_channel) int_round(src + i * s.group, y + i * s.group, s.group, 1, s.bits); // i: channel group
    else { // i: (token group, channel)
        const int64_t tg = i / D, c = i % D;
        int_round(src + tg * s.group * D + c, y + tg * s.group * D + c, s.group, D, s.bits);
    }
}
QL_HD int64_t kv_round_items(const ql_cudafwd_kv_side &s, int rows) {
    const int64_t D = (int64_t)s.n_head_kv * s.head_dim;
    if (s.fp8) return (int64_t)rows * s.n_head_kv;
    return s.per_channel ? (int64_t)rows / s.group * D : (int64_t)rows * D / s.group;
}

// the query rows a side's float band covers: Nq(i + 1) <= j <= i
QL_HD bool in_band(int i, int j, int residual, int G) {
    const int m = i + 1 - residual, nq = m > 0 ? m / G * G : 0;
    return j >= nq && j <= i;
}

__global__ void k_had(float *x, int64_t heads, int hd) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < heads; i += stride) had_head(x + i * hd, hd);
}
__global__ void k_kv_round(ql_cudafwd_kv_side s, const float *src, float *y, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) kv_round_item(s, src, y, i);
}
__global__ void k_kv_patch(float *S, const float *Sf, int T, int residual, int G) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, n = (int64_t)T * T;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride)
        if (in_band((int)(k / T), (int)(k % T), residual, G)) S[k] = Sf[k];
}
__global__ void k_kv_band(const float *P, float *B, int T, int residual, int G) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, n = (int64_t)T * T;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride)
        B[k] = in_band((int)(k / T), (int)(k % T), residual, G) ? P[k] : 0.0f;
}
__global__ void k_sub(const float *a, const float *b, float *d, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) d[i] = sub_rn(a[i], b[i]);
}

// ---- simulated activation quantization (core/actquant.c) ----
enum { ACT_INT8_TOKEN = QL_CUDAFWD_ACT_INT8_TOKEN, ACT_INT8_TENSOR = QL_CUDAFWD_ACT_INT8_TENSOR,
       ACT_FP8_TOKEN = QL_CUDAFWD_ACT_FP8_TOKEN, ACT_FP8_TENSOR = QL_CUDAFWD_ACT_FP8_TENSOR,
       ACT_LLM_INT8 = QL_CUDAFWD_ACT_LLM_INT8 };

QL_HD float act_int8(float x, float d, float id) {
    float q = rint_even(mul_rn(x, id));
    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
    return mul_rn(q, d);
}
QL_HD float act_fp8(float x, float d, float id) { return mul_rn(fp8_decode(false, fp8_encode(false, mul_rn(x, id))), d); }
QL_HD float act_max(float m, float x) { // fmaxf(m, fabsf(x)): a NaN is skipped
    const float a = fabs_bits(x);
    return a > m ? a : m;
}
// a row's step and its inverse from its absmax (per-token modes)
QL_HD void act_row_scale(float amax, float qmax, float *d, float *id) {
    *d = div_rn(amax, qmax);
    *id = amax > 0 ? div_rn(qmax, amax) : 0.0f;
}
QL_HD float act_one(int mode, float x, float d, float id, bool keep) {
    if (keep) return x;
    return mode == ACT_FP8_TOKEN || mode == ACT_FP8_TENSOR ? act_fp8(x, d, id) : act_int8(x, d, id);
}

__global__ void k_act_tensor(int mode, const float *x, float *y, int64_t n, float d, float id) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = act_one(mode, x[i], d, id, false);
}
__global__ void k_act_outliers(const float *x, uint8_t *flags, int64_t n, int K, float thr) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        if (fabs_bits(x[i]) > thr) flags[i % K] = 1; // every writer stores 1: no race on the value
}
// max |xr[j]| over the columns not flagged (flags NULL: all), NaN skipped: a maximum, the same in any order, so the
// block's LANES threads reduce it in parallel (every thread gets it) and the host in one loop
__device__ float block_absmax(const float *xr, int K, const uint8_t *flags) {
    __shared__ float part[LANES];
    const int lane = threadIdx.x;
    float m = 0;
    for (int j = lane; j < K; j += LANES)
        if (!flags || !flags[j]) m = act_max(m, xr[j]);
    part[lane] = m;
    __syncthreads();
    for (int h = LANES / 2; h > 0; h >>= 1) {
        if (lane < h) part[lane] = part[lane + h] > part[lane] ? part[lane + h] : part[lane];
        __syncthreads();
    }
    return part[0];
}
float row_absmax_host(const float *xr, int K, const uint8_t *flags) {
    float m = 0;
    for (int j = 0; j < K; j++)
        if (!flags || !flags[j]) m = act_max(m, xr[j]);
    return m;
}

// one block of LANES threads per row: the row's absmax (over the non-outlier columns), then the row
__global__ void k_act_rows(int mode, const float *x, float *y, int K, const uint8_t *flags) {
    const int t = blockIdx.x, lane = threadIdx.x;
    const float *xr = x + (size_t)t * K;
    float *yr = y + (size_t)t * K;
    float d, id;
    act_row_scale(block_absmax(xr, K, flags), mode == ACT_FP8_TOKEN ? 448.0f : 127.0f, &d, &id);
    for (int j = lane; j < K; j += LANES) yr[j] = act_one(mode, xr[j], d, id, flags && flags[j]);
}

// ---- INT8 x INT8 (core/wmatmul.c's ql_wmatmul_int8) ----

// one token's code (ql_quantize_tokens_int8) from its id = 127 / absmax
QL_HD int8_t token_code(float x, float id) {
    const float v = rint_even(mul_rn(x, id));
    return (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
}
// the epilogue of one output: d[t]·s·acc, accumulated when beta != 0
QL_HD float int8_out(float y, float d, const uint8_t *row, int32_t acc, float beta) {
    const float v = mul_rn(mul_rn(d, h2f((uint16_t)(row[0] | (row[1] << 8)))), (float)acc);
    return beta != 0.0f ? add_rn(y, v) : v;
}

__global__ void k_tokens_int8(const float *x, int8_t *q, float *d, int K) {
    const int t = blockIdx.x, lane = threadIdx.x;
    const float *xr = x + (size_t)t * K;
    const float amax = block_absmax(xr, K, nullptr), id = amax > 0 ? div_rn(127.0f, amax) : 0.0f;
    if (lane == 0) d[t] = div_rn(amax, 127.0f);
    for (int j = lane; j < K; j += LANES) q[(size_t)t * K + j] = token_code(xr[j], id);
}
// one warp per output (t, n): lanes stride over K, an exact int32 sum
__global__ void k_int8_dot(const int8_t *q, const float *d, const uint8_t *rows, int64_t ldw, float *y, int T, int K,
                           int N, float beta) {
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32), lane = threadIdx.x % 32;
    for (int64_t o = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; o < (int64_t)T * N; o += warps) {
        const int64_t t = o / N, n = o % N;
        const int8_t *qr = q + t * K;
        const uint8_t *r = rows + n * ldw;
        int32_t acc = 0;
        for (int k = (int)lane; k < K; k += 32) acc += (int32_t)qr[k] * ((int32_t)r[2 + k] - 128);
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) y[o] = int8_out(y[o], d[t], r, acc, beta);
    }
}

ql_status launched(const char *what) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? QL_OK : cuda_fail(e, what, __FILE__, __LINE__);
}

unsigned rows_grid(int T) { return (unsigned)(T < 1 ? 1 : T > 65535 * 4 ? 65535 * 4 : T); }

// which k_round_act kind and block length an activation type is; every type other than F16, BF16 and Q8_K
// rounds as Q8_0 (blocks of 32, fp16 scale), as the CPU backend's round_activations does; -1 for F32
int round_kind(uint32_t act, int *qk) {
    switch (act) {
    case QL_TYPE_F32: return -1;
    case QL_TYPE_F16: *qk = 1; return 0;
    case QL_TYPE_BF16: *qk = 1; return 1;
    case QL_TYPE_Q8_K: *qk = 256; return 3;
    default: *qk = 32; return 2;
    }
}

} // namespace

// ---- host-side helpers ----

extern "C" void ql_cudafwd_rope_cs_row(const ql_cudafwd_rope_params *p, int pos, float *cs) {
    // core/backend_cpu.c's cpu_rope, operation for operation (host code: glibc cosf / sinf)
    for (int i = 0; i < p->half; i++) {
        float theta = (float)pos * p->freq[i];
        if (p->factors) theta /= p->factors[i];
        float interp = p->freq_scale * theta;
        if (p->ext_factor != 0.0f) {
            float y = ((float)i - p->corr0) / fmaxf(0.001f, p->corr1 - p->corr0);
            float mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * p->ext_factor;
            interp = interp * (1.0f - mix) + theta * mix;
        }
        cs[2 * i] = cosf(interp) * p->mscale;
        cs[2 * i + 1] = sinf(interp) * p->mscale;
    }
}

extern "C" void ql_cudafwd_gelu_table(uint16_t *table) {
    for (int i = 0; i < 1 << 16; i++) {
        const float x = ql_fp16_to_fp32((uint16_t)i);
        const float y = 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
        table[i] = ql_fp32_to_fp16(y);
    }
}

// ---- device entry points ----

extern "C" ql_status ql_cudafwd_rmsnorm(const float *x, const float *w, float *y, int T, int D, float eps, void *stream) {
    if (T <= 0) return QL_OK;
    k_rmsnorm<<<rows_grid(T), LANES, 0, (cudaStream_t)stream>>>(x, w, y, T, D, eps);
    return launched("rmsnorm");
}

extern "C" ql_status ql_cudafwd_rope(float *x, const float *cs, int T, int n_heads, int head_dim, int half, bool neox,
                                     void *stream) {
    const int64_t n = (int64_t)T * n_heads * half;
    if (n <= 0) return QL_OK;
    k_rope<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(x, cs, T, n_heads, head_dim, half, neox);
    return launched("rope");
}

extern "C" ql_status ql_cudafwd_softmax(float *S, int T, float cap, int window, void *stream) {
    if (T <= 0) return QL_OK;
    k_softmax<<<rows_grid(T), LANES, 0, (cudaStream_t)stream>>>(S, T, cap, window);
    return launched("softmax");
}

extern "C" ql_status ql_cudafwd_glu(float *gate, const float *up, size_t n, const uint16_t *table, void *stream) {
    if (!n) return QL_OK;
    k_glu<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(gate, up, (int64_t)n, table);
    return launched("glu");
}

extern "C" ql_status ql_cudafwd_softcap(float *x, size_t n, float cap, void *stream) {
    if (!n) return QL_OK;
    k_softcap<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(x, (int64_t)n, 1.0f / cap, cap);
    return launched("softcap");
}

extern "C" ql_status ql_cudafwd_scale(float *x, size_t n, float s, void *stream) {
    if (!n) return QL_OK;
    k_scale<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(x, (int64_t)n, s);
    return launched("scale");
}

extern "C" ql_status ql_cudafwd_add(float *y, const float *x, size_t n, void *stream) {
    if (!n) return QL_OK;
    k_add<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(y, x, (int64_t)n);
    return launched("add");
}

extern "C" ql_status ql_cudafwd_add_bias(float *y, const float *b, int T, int N, void *stream) {
    const int64_t n = (int64_t)T * N;
    if (n <= 0) return QL_OK;
    k_add_bias<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(y, b, n, N);
    return launched("add_bias");
}

extern "C" ql_status ql_cudafwd_round_act(uint32_t act, const float *x, float *y, int T, int K, void *stream) {
    int qk;
    const int kind = round_kind(act, &qk);
    if (kind < 0) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no activation rounding to type %u", act);
    const int64_t n = (int64_t)T * K;
    if (n % qk) return ql_fail(QL_ERR_ARG, "cuda: %lld activations are not whole blocks of %d", (long long)n, qk);
    if (n <= 0) return QL_OK;
    k_round_act<<<grid_for(n / qk, 128), 128, 0, (cudaStream_t)stream>>>(x, y, n / qk, kind);
    return launched("round_act");
}

extern "C" ql_status ql_cudafwd_to_half(const float *x, uint16_t *dst, size_t n, bool bf16, void *stream) {
    if (!n) return QL_OK;
    k_to_half<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(x, dst, (int64_t)n, bf16);
    return launched("to_half");
}

extern "C" ql_status ql_cudafwd_from_half(const uint16_t *src, float *y, size_t n, bool bf16, void *stream) {
    if (!n) return QL_OK;
    k_from_half<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(src, y, (int64_t)n, bf16);
    return launched("from_half");
}

extern "C" ql_status ql_cudafwd_to_double(const float *x, double *y, size_t n, void *stream) {
    if (!n) return QL_OK;
    k_to_double<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(x, y, (int64_t)n);
    return launched("to_double");
}

extern "C" ql_status ql_cudafwd_quantize_q8_0_kv(const float *x, void *dst, int64_t n, void *stream) {
    if (n % 32) return ql_fail(QL_ERR_ARG, "cuda: %lld values are not whole Q8_0 blocks", (long long)n);
    if (n <= 0) return QL_OK;
    k_q8_0_kv<<<grid_for(n / 32, 128), 128, 0, (cudaStream_t)stream>>>(x, (blk_q8_0 *)dst, n / 32);
    return launched("q8_0 kv");
}

// ---- host emulation: the kernels' lanes and trees, run one lane after another ----

extern "C" void ql_cudafwd_rmsnorm_emulated(const float *x, const float *w, float *y, int T, int D, float eps) {
    double red[LANES];
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        for (int l = 0; l < LANES; l++) red[l] = rms_partial(xr, D, l);
        for (int s = LANES / 2; s > 0; s >>= 1)
            for (int l = 0; l < s; l++) red[l] = dadd_rn(red[l], red[l + s]);
        const float scale = rms_scale(red[0], D, eps);
        for (int l = 0; l < LANES; l++) rms_apply(xr, w, y + (size_t)t * D, D, scale, l);
    }
}

extern "C" void ql_cudafwd_rope_emulated(float *x, const float *cs, int T, int n_heads, int hd, int half, bool neox) {
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++) {
                const float *c = cs + (size_t)t * 2 * half + 2 * i;
                rope_pair(x + ((size_t)t * n_heads + h) * hd, neox ? i : 2 * i, neox ? i + half : 2 * i + 1, c[0], c[1]);
            }
}

extern "C" void ql_cudafwd_softmax_emulated(float *S, int T, float cap, int window) {
    float red[LANES];
    for (int i = 0; i < T; i++) {
        float *row = S + (size_t)i * T;
        const int j0 = sm_first(i, window);
        for (int l = 0; l < LANES; l++) red[l] = sm_max_partial(row, j0, i, cap, l);
        for (int s = LANES / 2; s > 0; s >>= 1)
            for (int l = 0; l < s; l++) red[l] = max_skip_nan(red[l], red[l + s]);
        const float mx = red[0];
        for (int l = 0; l < LANES; l++) red[l] = sm_exp_partial(row, j0, i, mx, l);
        for (int s = LANES / 2; s > 0; s >>= 1)
            for (int l = 0; l < s; l++) red[l] = add_rn(red[l], red[l + s]);
        const float inv = div_rn(1.0f, red[0]);
        for (int l = 0; l < LANES; l++) sm_finish(row, T, j0, i, inv, l);
    }
}

extern "C" void ql_cudafwd_glu_emulated(float *gate, const float *up, size_t n, const uint16_t *table) {
    for (size_t i = 0; i < n; i++) gate[i] = table ? gelu_mul(gate[i], up[i], table) : silu_mul(gate[i], up[i]);
}

extern "C" void ql_cudafwd_softcap_emulated(float *x, size_t n, float cap) {
    const float inv = 1.0f / cap;
    for (size_t i = 0; i < n; i++) x[i] = softcap1(x[i], inv, cap);
}

extern "C" ql_status ql_cudafwd_round_act_emulated(uint32_t act, const float *x, float *y, int T, int K) {
    int qk;
    const int kind = round_kind(act, &qk);
    if (kind < 0) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no activation rounding to type %u", act);
    const int64_t n = (int64_t)T * K;
    if (n % qk) return ql_fail(QL_ERR_ARG, "cuda: %lld activations are not whole blocks of %d", (long long)n, qk);
    for (int64_t b = 0; b < n / qk; b++) {
        if (kind == 2) round_q8_0_block(x + b * 32, y + b * 32);
        else if (kind == 3) round_q8_k_block(x + b * 256, y + b * 256);
        else y[b] = round_half(x[b], kind == 1);
    }
    return QL_OK;
}

extern "C" void ql_cudafwd_to_half_emulated(const float *x, uint16_t *dst, size_t n, bool bf16) {
    for (size_t i = 0; i < n; i++) dst[i] = bf16 ? f2bf(x[i]) : f2h(x[i]);
}

extern "C" void ql_cudafwd_from_half_emulated(const uint16_t *src, float *y, size_t n, bool bf16) {
    for (size_t i = 0; i < n; i++) y[i] = bf16 ? bf2f(src[i]) : h2f(src[i]);
}

extern "C" ql_status ql_cudafwd_quantize_q8_0_kv_emulated(const float *x, void *dst, int64_t n) {
    if (n % 32) return ql_fail(QL_ERR_ARG, "cuda: %lld values are not whole Q8_0 blocks", (long long)n);
    for (int64_t b = 0; b < n / 32; b++) quantize_q8_0_kv_block(x + b * 32, (blk_q8_0 *)dst + b);
    return QL_OK;
}

// ---- qlab's KV sides ----

extern "C" ql_status ql_cudafwd_kv_round(const ql_cudafwd_kv_side *s, const float *x, float *y, float *tmp, int a, int e,
                                         void *stream) {
    if (e <= a) return QL_OK;
    const int64_t D = (int64_t)s->n_head_kv * s->head_dim, rows = e - a;
    cudaStream_t st = (cudaStream_t)stream;
    const float *src = x + a * D;
    if (s->hadamard) { // quantize the rotated rows, hand back the un-rotated decode
        QL_CUDA_TRY(cudaMemcpyAsync(tmp, src, (size_t)(rows * D) * sizeof(float), cudaMemcpyDefault, st));
        k_had<<<grid_for(rows * s->n_head_kv, 128), 128, 0, st>>>(tmp, rows * s->n_head_kv, s->head_dim);
        src = tmp;
    }
    const int64_t n = kv_round_items(*s, (int)rows);
    k_kv_round<<<grid_for(n, 128), 128, 0, st>>>(*s, src, y + a * D, n);
    if (s->hadamard) k_had<<<grid_for(rows * s->n_head_kv, 128), 128, 0, st>>>(y + a * D, rows * s->n_head_kv, s->head_dim);
    return launched("kv round");
}

extern "C" void ql_cudafwd_kv_round_emulated(const ql_cudafwd_kv_side *s, const float *x, float *y, float *tmp, int a,
                                             int e) {
    if (e <= a) return;
    const int64_t D = (int64_t)s->n_head_kv * s->head_dim, rows = e - a;
    const float *src = x + a * D;
    if (s->hadamard) {
        memcpy(tmp, src, (size_t)(rows * D) * sizeof(float));
        for (int64_t h = 0; h < rows * s->n_head_kv; h++) had_head(tmp + h * s->head_dim, s->head_dim);
        src = tmp;
    }
    for (int64_t i = 0; i < kv_round_items(*s, (int)rows); i++) kv_round_item(*s, src, y + a * D, i);
    if (s->hadamard)
        for (int64_t h = 0; h < rows * s->n_head_kv; h++) had_head(y + a * D + h * s->head_dim, s->head_dim);
}

extern "C" ql_status ql_cudafwd_kv_patch(float *S, const float *Sf, int T, int residual, int G, void *stream) {
    k_kv_patch<<<grid_for((int64_t)T * T, 256), 256, 0, (cudaStream_t)stream>>>(S, Sf, T, residual, G);
    return launched("kv band scores");
}
extern "C" ql_status ql_cudafwd_kv_band(const float *P, float *B, int T, int residual, int G, void *stream) {
    k_kv_band<<<grid_for((int64_t)T * T, 256), 256, 0, (cudaStream_t)stream>>>(P, B, T, residual, G);
    return launched("kv band weights");
}
extern "C" void ql_cudafwd_kv_patch_emulated(float *S, const float *Sf, int T, int residual, int G) {
    for (int64_t k = 0; k < (int64_t)T * T; k++)
        if (in_band((int)(k / T), (int)(k % T), residual, G)) S[k] = Sf[k];
}
extern "C" void ql_cudafwd_kv_band_emulated(const float *P, float *B, int T, int residual, int G) {
    for (int64_t k = 0; k < (int64_t)T * T; k++) B[k] = in_band((int)(k / T), (int)(k % T), residual, G) ? P[k] : 0.0f;
}
extern "C" ql_status ql_cudafwd_sub(const float *a, const float *b, float *d, size_t n, void *stream) {
    k_sub<<<grid_for((int64_t)n, 256), 256, 0, (cudaStream_t)stream>>>(a, b, d, (int64_t)n);
    return launched("sub");
}

// ---- simulated activation quantization ----

extern "C" ql_status ql_cudafwd_act_quant(int mode, float scale, float threshold, const float *x, float *y, int T,
                                          int K, uint8_t *flags, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t n = (int64_t)T * K;
    if (mode == ACT_INT8_TENSOR || mode == ACT_FP8_TENSOR) {
        k_act_tensor<<<grid_for(n, 256), 256, 0, st>>>(mode, x, y, n, scale, scale > 0 ? div_rn(1.0f, scale) : 0.0f);
        return launched("activation quantization");
    }
    if (mode != ACT_INT8_TOKEN && mode != ACT_FP8_TOKEN && mode != ACT_LLM_INT8)
        return ql_fail(QL_ERR_ARG, "cuda: activation quantization mode %d", mode);
    if (mode == ACT_LLM_INT8) {
        QL_CUDA_TRY(cudaMemsetAsync(flags, 0, (size_t)K, st));
        k_act_outliers<<<grid_for(n, 256), 256, 0, st>>>(x, flags, n, K, threshold);
    }
    if (T > 0) k_act_rows<<<(unsigned)T, LANES, 0, st>>>(mode, x, y, K, mode == ACT_LLM_INT8 ? flags : nullptr);
    return launched("activation quantization");
}

extern "C" void ql_cudafwd_act_quant_emulated(int mode, float scale, float threshold, const float *x, float *y, int T,
                                              int K) {
    const int64_t n = (int64_t)T * K;
    if (mode == ACT_INT8_TENSOR || mode == ACT_FP8_TENSOR) {
        const float id = scale > 0 ? div_rn(1.0f, scale) : 0.0f;
        for (int64_t i = 0; i < n; i++) y[i] = act_one(mode, x[i], scale, id, false);
        return;
    }
    uint8_t *flags = (uint8_t *)calloc((size_t)(K > 0 ? K : 1), 1);
    if (mode == ACT_LLM_INT8)
        for (int64_t i = 0; i < n; i++)
            if (fabs_bits(x[i]) > threshold) flags[i % K] = 1;
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * K;
        float *yr = y + (size_t)t * K;
        float d, id;
        act_row_scale(row_absmax_host(xr, K, flags), mode == ACT_FP8_TOKEN ? 448.0f : 127.0f, &d, &id);
        for (int j = 0; j < K; j++) yr[j] = act_one(mode, xr[j], d, id, flags[j] != 0);
    }
    free(flags);
}

// ---- INT8 x INT8 ----

extern "C" ql_status ql_cudafwd_int8_matmul(const float *x, int8_t *q, float *d, const uint8_t *rows, int64_t ldw,
                                            float *y, int T, int K, int N, float beta, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    if (T <= 0 || N <= 0) return QL_OK;
    k_tokens_int8<<<(unsigned)T, LANES, 0, st>>>(x, q, d, K);
    k_int8_dot<<<grid_for((int64_t)T * N, 8), 256, 0, st>>>(q, d, rows, ldw, y, T, K, N, beta);
    return launched("int8 matmul");
}

extern "C" void ql_cudafwd_int8_matmul_emulated(const float *x, int8_t *q, float *d, const uint8_t *rows, int64_t ldw,
                                                float *y, int T, int K, int N, float beta) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * K;
        const float amax = row_absmax_host(xr, K, nullptr), id = amax > 0 ? div_rn(127.0f, amax) : 0.0f;
        d[t] = div_rn(amax, 127.0f);
        for (int j = 0; j < K; j++) q[(size_t)t * K + j] = token_code(xr[j], id);
    }
    for (int64_t o = 0; o < (int64_t)T * N; o++) {
        const int64_t t = o / N, n = o % N;
        const uint8_t *r = rows + n * ldw;
        int32_t acc = 0;
        for (int k = 0; k < K; k++) acc += (int32_t)q[t * K + k] * ((int32_t)r[2 + k] - 128);
        y[o] = int8_out(y[o], d[t], r, acc, beta);
    }
}
