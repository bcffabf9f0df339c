/* forward_cuda.h — C-callable device kernels of the forward pass for the CUDA backend (core/backend_cuda.c):
 * RMSNorm, RoPE, the causal softmax of attention (soft-cap, sliding window), SwiGLU / GeGLU, soft-cap, scale,
 * residual and bias adds, llama.cpp's activation rounding (F16, BF16, Q8_0/Q8_1, Q8_K), an fp16/bf16 KV
 * store, and qlab's INT / FP8 KV sides with their float band. Each op's arithmetic is one __host__ __device__ function in kernels/forward_cuda.cu; the *_emulated
 * entry points run the kernels' own decomposition (same lanes, same reduction tree) on the host, so
 * tests/test_cuda_forward.c holds the device arithmetic against the CPU backend on a machine without a GPU.
 * Only built when the Makefile finds nvcc (QL_HAVE_CUDA). Device entry points queue on `stream` (a
 * cudaStream_t) and take device or managed pointers; they return launch errors (ql_fail's message). */
#ifndef QL_FORWARD_CUDA_H
#define QL_FORWARD_CUDA_H

#include <stdbool.h> /* before extern "C": ql_common.h's system headers stay C++-clean */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

/* Threads of one row's reduction (RMSNorm, softmax); the emulation sums in the same lanes and tree. */
#define QL_CUDAFWD_LANES 256

/* The angle of RoPE pair i at position pos, as core/backend_cpu.c computes it (ggml's rope_yarn): what the
 * backend needs to fill its cos/sin table. */
typedef struct ql_cudafwd_rope_params {
    const float *freq;    /* base^(-2i/d) for i < half (the global or the sliding layers' base) */
    const float *factors; /* rope_freqs divisors (llama3) or NULL */
    float freq_scale;     /* 1 / linear scaling factor */
    float ext_factor;     /* YaRN ramp weight (0: off) */
    float mscale;         /* YaRN magnitude scale (1: off) */
    float corr0, corr1;   /* YaRN ramp pair range */
    int half;             /* rope_dim / 2 */
} ql_cudafwd_rope_params;

/* cs[2i], cs[2i+1] = cos, sin of pair i at position pos (host: the table is computed once per length). */
void ql_cudafwd_rope_cs_row(const ql_cudafwd_rope_params *p, int pos, float *cs);

/* The entries of llama.cpp's fp16 GELU table (the CPU backend's), for the device's copy. */
void ql_cudafwd_gelu_table(uint16_t *table /* 65536 */);

/* y[T, D] = x / rms(x) · w (y may be x). */
ql_status ql_cudafwd_rmsnorm(const float *x, const float *w, float *y, int T, int D, float eps, void *stream);
void ql_cudafwd_rmsnorm_emulated(const float *x, const float *w, float *y, int T, int D, float eps);
/* Rotates x[T, n_heads·head_dim] in place: pair i of position t by cs[t][2i], cs[t][2i+1]. */
ql_status ql_cudafwd_rope(float *x, const float *cs, int T, int n_heads, int head_dim, int half, bool neox,
                          void *stream);
void ql_cudafwd_rope_emulated(float *x, const float *cs, int T, int n_heads, int head_dim, int half, bool neox);
/* Row i of S [T, T] (scaled scores) becomes the causal softmax over the positions it sees (soft-cap when
 * cap > 0, the `window` most recent when window > 0); every other entry 0. */
ql_status ql_cudafwd_softmax(float *S, int T, float cap, int window, void *stream);
void ql_cudafwd_softmax_emulated(float *S, int T, float cap, int window);
/* gate[i] = silu(gate[i]) · up[i], or with the fp16 GELU table (device copy) when table != NULL. */
ql_status ql_cudafwd_glu(float *gate, const float *up, size_t n, const uint16_t *table, void *stream);
void ql_cudafwd_glu_emulated(float *gate, const float *up, size_t n, const uint16_t *table);
/* x[i] = cap · tanh(x[i] / cap). */
ql_status ql_cudafwd_softcap(float *x, size_t n, float cap, void *stream);
void ql_cudafwd_softcap_emulated(float *x, size_t n, float cap);
/* x[i] *= s;  y[i] += x[i];  y[t, j] += b[j] for t < T, j < N. */
ql_status ql_cudafwd_scale(float *x, size_t n, float s, void *stream);
ql_status ql_cudafwd_add(float *y, const float *x, size_t n, void *stream);
ql_status ql_cudafwd_add_bias(float *y, const float *b, int T, int N, void *stream);
/* y[T, K] = x rounded as ggml's quantize_row_<act> then back (act: F16, BF16, Q8_K, and Q8_0's blocks for any
 * other type, as the CPU backend does); y may be x. QL_ERR_UNSUPPORTED for F32 (nothing to round). */
ql_status ql_cudafwd_round_act(uint32_t act, const float *x, float *y, int T, int K, void *stream);
ql_status ql_cudafwd_round_act_emulated(uint32_t act, const float *x, float *y, int T, int K);
/* The 16-bit KV store: dst[i] = fp16 (bf16 when bf16) of x[i], and back. */
ql_status ql_cudafwd_to_half(const float *x, uint16_t *dst, size_t n, bool bf16, void *stream);
ql_status ql_cudafwd_from_half(const uint16_t *src, float *y, size_t n, bool bf16, void *stream);
void ql_cudafwd_to_half_emulated(const float *x, uint16_t *dst, size_t n, bool bf16);
void ql_cudafwd_from_half_emulated(const uint16_t *src, float *y, size_t n, bool bf16);
/* n values (whole blocks of 32) into Q8_0 blocks as llama.cpp writes its KV cache (ggml-cpu's quantize_row_q8_0:
 * the reference's fp16 scale, codes rounded half to even; core/kv_cache.c does the same on the CPU). */
ql_status ql_cudafwd_quantize_q8_0_kv(const float *x, void *dst, int64_t n, void *stream);
ql_status ql_cudafwd_quantize_q8_0_kv_emulated(const float *x, void *dst, int64_t n);
/* qlab's own KV sides (core/kv_cache.h: INT per token or per channel, FP8 per head, K rotated by a Hadamard
 * matrix), simulated as core/kv_cache.c does: tokens [a, e) of the float rows x [.., n_head_kv·head_dim] are
 * rounded into the decoded rows y (rotated first and the decode rotated back when hadamard, through tmp, which
 * holds e - a rows). Bit for bit quantize_tokens of core/kv_cache.c. */
typedef struct ql_cudafwd_kv_side {
    bool fp8;         /* else INT */
    int bits;         /* INT: 8, 4, 2 */
    bool per_channel; /* INT: groups of `group` tokens per channel, else of `group` channels per token */
    int group;
    bool e5m2;        /* FP8 */
    bool hadamard;
    int n_head_kv, head_dim;
} ql_cudafwd_kv_side;
ql_status ql_cudafwd_kv_round(const ql_cudafwd_kv_side *s, const float *x, float *y, float *tmp, int a, int e,
                              void *stream);
void ql_cudafwd_kv_round_emulated(const ql_cudafwd_kv_side *s, const float *x, float *y, float *tmp, int a, int e);
/* The float band of attention over a side a query at position i reads quantized below Nq(i + 1), Nq(n) =
 * max(n - residual, 0) / G · G (ql_kv_side_quantized_prefix): on S [T, T] (row = query), patch sets
 * S[i, j] = Sf[i, j] for Nq(i + 1) <= j <= i; band writes B[i, j] = P[i, j] there and 0 elsewhere. */
ql_status ql_cudafwd_kv_patch(float *S, const float *Sf, int T, int residual, int G, void *stream);
ql_status ql_cudafwd_kv_band(const float *P, float *B, int T, int residual, int G, void *stream);
void ql_cudafwd_kv_patch_emulated(float *S, const float *Sf, int T, int residual, int G);
void ql_cudafwd_kv_band_emulated(const float *P, float *B, int T, int residual, int G);
/* Simulated activation quantization, core/actquant.c's ql_act_quant_apply bit for bit: y [T, K] = x rounded by
 * mode (core/actquant.h's ql_act_mode values, which core/backend_cuda.c checks against these: INT8 per token,
 * INT8 per tensor with step `scale`, FP8 E4M3 per token, FP8 per tensor, LLM.int8(): columns with any
 * |x| > threshold (> 0, the default resolved by the caller) in these T rows kept, the rest INT8 per token); y may
 * be x. flags: K bytes of device scratch (LLM.int8's outlier columns). Absmax values are maxima, the same in
 * any order, so rows reduce in parallel. */
#define QL_CUDAFWD_ACT_INT8_TOKEN 1
#define QL_CUDAFWD_ACT_INT8_TENSOR 2
#define QL_CUDAFWD_ACT_FP8_TOKEN 3
#define QL_CUDAFWD_ACT_FP8_TENSOR 4
#define QL_CUDAFWD_ACT_LLM_INT8 5
ql_status ql_cudafwd_act_quant(int mode, float scale, float threshold, const float *x, float *y, int T, int K,
                               uint8_t *flags, void *stream);
void ql_cudafwd_act_quant_emulated(int mode, float scale, float threshold, const float *x, float *y, int T, int K);
/* INT8 weights under dynamic INT8 activations, core/wmatmul.c's ql_wmatmul_int8 bit for bit: x [T, K] quantized per
 * token into q [T, K] and d [T] (scratch), integer products with weight rows of (fp16 scale, K codes with zero point
 * 128) at stride ldw, exact in int32 whatever the order, then y[t, n] = d[t]·s[n]·acc, added to y when beta != 0. */
ql_status ql_cudafwd_int8_matmul(const float *x, int8_t *q, float *d, const uint8_t *rows, int64_t ldw, float *y,
                                 int T, int K, int N, float beta, void *stream);
void ql_cudafwd_int8_matmul_emulated(const float *x, int8_t *q, float *d, const uint8_t *rows, int64_t ldw, float *y,
                                     int T, int K, int N, float beta);
/* d[i] = a[i] - b[i]. */
ql_status ql_cudafwd_sub(const float *a, const float *b, float *d, size_t n, void *stream);
/* y[i] = x[i] as double (exact), for the Σ xᵀx of activation statistics. */
ql_status ql_cudafwd_to_double(const float *x, double *y, size_t n, void *stream);

#ifdef __cplusplus
}
#endif

#endif
