/* hgemm.c — F16/BF16 weights times F32 activations without a decoded copy (kernels/hgemm.h): the scalar reference
 * and an AVX-512 twin with 4 rows × 6 tokens of accumulators, the weights widened in registers. Why: decoding F16
 * rows to F32 tiles for OpenBLAS cost a pass over memory and ran at ~80 % of this core's FMA peak; llama.cpp's
 * tinyBLAS widens inside the kernel and keeps the peak. Each output is one dot product computed the same way in
 * every tile shape, so the remainders (rows not a multiple of 4, tokens not of 6) and the reference agree bit for
 * bit with the 4 × 6 tiles. */
#include "kernels/hgemm.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"
#include "base/ql_common.h"

#include <immintrin.h>
#include <math.h>

enum { LANES = 16, RM = 4, RN = 6 };

bool ql_hgemm_available(uint32_t type, int K) {
    return (type == QL_TYPE_F16 || type == QL_TYPE_BF16) && K % LANES == 0 && K > 0 &&
           ql_simd_level_get() >= QL_SIMD_AVX512;
}

static float widen(uint32_t type, uint16_t h) { return type == QL_TYPE_F16 ? ql_fp16_to_fp32(h) : ql_bf16_to_fp32(h); }

/* the lanes' fixed reduction order, shared by both versions */
static float lanes_sum(const float a[LANES]) {
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

void ql_hgemm_ref(uint32_t type, const uint16_t *w, int nr, const float *x, int T, int K, float *y, int64_t ldy,
                  bool accumulate) {
    for (int n = 0; n < nr; n++)
        for (int t = 0; t < T; t++) {
            float acc[LANES] = {0};
            const uint16_t *wr = w + (size_t)n * K;
            const float *xr = x + (size_t)t * K;
            for (int k = 0; k < K; k += LANES)
                for (int l = 0; l < LANES; l++) acc[l] = fmaf(widen(type, wr[k + l]), xr[k + l], acc[l]);
            const float s = lanes_sum(acc);
            y[t * ldy + n] = accumulate ? y[t * ldy + n] + s : s;
        }
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))

AVX512 static inline __m512 load_w(uint32_t type, const uint16_t *p) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return type == QL_TYPE_F16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 static inline float hsum(__m512 v) { /* lanes_sum's order */
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b)); /* (0+2, 1+3) */
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

AVX512 static inline void put(float *y, float s, bool accumulate) { *y = accumulate ? *y + s : s; }

/* The kernels twice: activations as F32 (xs = 1), or stored in the weight's own 16-bit type (xs = 2, half the bytes
 * to stream: exact when they were rounded to that type, which is what llama.cpp does before these products). */
#define LOAD_X(p, k) (x16 ? load_w(type, (const uint16_t *)(p) + (k)) : _mm512_loadu_ps((const float *)(p) + (k)))

/* one output, for the rows and tokens outside whole 4 × 6 tiles */
AVX512 static void dot_1x1(uint32_t type, const uint16_t *w, const void *x, bool x16, int K, float *y, bool accumulate) {
    __m512 acc = _mm512_setzero_ps();
    for (int k = 0; k < K; k += LANES) acc = _mm512_fmadd_ps(load_w(type, w + k), LOAD_X(x, k), acc);
    put(y, hsum(acc), accumulate);
}

/* 4 rows × 6 tokens; named accumulators (an array would live in memory) */
#define ROW4(j, xv)                                                                                                  \
    c0##j = _mm512_fmadd_ps(w0, xv, c0##j), c1##j = _mm512_fmadd_ps(w1, xv, c1##j),                                 \
    c2##j = _mm512_fmadd_ps(w2, xv, c2##j), c3##j = _mm512_fmadd_ps(w3, xv, c3##j)
#define STORE4(j)                                                                                                    \
    put(y + (j) * ldy + 0, hsum(c0##j), accumulate), put(y + (j) * ldy + 1, hsum(c1##j), accumulate),               \
    put(y + (j) * ldy + 2, hsum(c2##j), accumulate), put(y + (j) * ldy + 3, hsum(c3##j), accumulate)

AVX512 static inline __attribute__((always_inline)) void tile_4x6(uint32_t type, const uint16_t *w, const void *x,
                                                                  bool x16, int K, float *y, int64_t ldy, bool accumulate) {
    const __m512 z = _mm512_setzero_ps();
    __m512 c00 = z, c10 = z, c20 = z, c30 = z, c01 = z, c11 = z, c21 = z, c31 = z, c02 = z, c12 = z, c22 = z, c32 = z;
    __m512 c03 = z, c13 = z, c23 = z, c33 = z, c04 = z, c14 = z, c24 = z, c34 = z, c05 = z, c15 = z, c25 = z, c35 = z;
    const uint16_t *r0 = w, *r1 = w + K, *r2 = w + 2 * (size_t)K, *r3 = w + 3 * (size_t)K;
    const size_t xb = x16 ? 2 : 4; /* bytes per activation */
    const char *x0 = x, *x1 = x0 + xb * K, *x2 = x1 + xb * K, *x3 = x2 + xb * K, *x4 = x3 + xb * K, *x5 = x4 + xb * K;
    for (int k = 0; k < K; k += LANES) {
        const __m512 w0 = load_w(type, r0 + k), w1 = load_w(type, r1 + k), w2 = load_w(type, r2 + k),
                     w3 = load_w(type, r3 + k);
        __m512 xv = LOAD_X(x0, k);
        ROW4(0, xv);
        xv = LOAD_X(x1, k);
        ROW4(1, xv);
        xv = LOAD_X(x2, k);
        ROW4(2, xv);
        xv = LOAD_X(x3, k);
        ROW4(3, xv);
        xv = LOAD_X(x4, k);
        ROW4(4, xv);
        xv = LOAD_X(x5, k);
        ROW4(5, xv);
    }
    STORE4(0);
    STORE4(1);
    STORE4(2);
    STORE4(3);
    STORE4(4);
    STORE4(5);
}

/* the tile loop, specialised for the weight type and the activations' width (constant after inlining) */
AVX512 static inline __attribute__((always_inline)) void rows_tokens(uint32_t type, const uint16_t *w, int nr,
                                                                     const void *x, bool x16, int T, int K, float *y,
                                                                     int64_t ldy, bool accumulate) {
    const int n4 = nr / RM * RM, t6 = T / RN * RN;
    const size_t xb = x16 ? 2 : 4;
    const char *xc = x;
    /* a block of rows (in L2) against each 6 tokens in turn (in L1): every activation is read once per block rather
     * than once per 4 rows */
    const int rb = QL_MAX(RM, (int)(256 * 1024 / ((size_t)K * 2)) / RM * RM);
    for (int b0 = 0; b0 < n4; b0 += rb)
        for (int t0 = 0; t0 < t6; t0 += RN)
            for (int n0 = b0; n0 < QL_MIN(b0 + rb, n4); n0 += RM)
                tile_4x6(type, w + (size_t)n0 * K, xc + xb * t0 * K, x16, K, y + t0 * ldy + n0, ldy, accumulate);
    for (int n0 = 0; n0 < n4; n0 += RM) {
        for (int t = t6; t < T; t++)
            for (int n = n0; n < n0 + RM; n++)
                dot_1x1(type, w + (size_t)n * K, xc + xb * t * K, x16, K, y + t * ldy + n, accumulate);
    }
    for (int n = n4; n < nr; n++)
        for (int t = 0; t < T; t++) dot_1x1(type, w + (size_t)n * K, xc + xb * t * K, x16, K, y + t * ldy + n, accumulate);
}

AVX512 static void f16_x32(const uint16_t *w, int nr, const void *x, int T, int K, float *y, int64_t ldy, bool acc) {
    rows_tokens(QL_TYPE_F16, w, nr, x, false, T, K, y, ldy, acc);
}
AVX512 static void f16_x16(const uint16_t *w, int nr, const void *x, int T, int K, float *y, int64_t ldy, bool acc) {
    rows_tokens(QL_TYPE_F16, w, nr, x, true, T, K, y, ldy, acc);
}
AVX512 static void bf16_x32(const uint16_t *w, int nr, const void *x, int T, int K, float *y, int64_t ldy, bool acc) {
    rows_tokens(QL_TYPE_BF16, w, nr, x, false, T, K, y, ldy, acc);
}
AVX512 static void bf16_x16(const uint16_t *w, int nr, const void *x, int T, int K, float *y, int64_t ldy, bool acc) {
    rows_tokens(QL_TYPE_BF16, w, nr, x, true, T, K, y, ldy, acc);
}

void ql_hgemm_avx512(uint32_t type, const uint16_t *w, int nr, const float *x, int T, int K, float *y, int64_t ldy,
                     bool accumulate) {
    (type == QL_TYPE_F16 ? f16_x32 : bf16_x32)(w, nr, x, T, K, y, ldy, accumulate);
}

void ql_hgemm_avx512_x16(uint32_t type, const uint16_t *w, int nr, const uint16_t *x16, int T, int K, float *y,
                         int64_t ldy, bool accumulate) {
    (type == QL_TYPE_F16 ? f16_x16 : bf16_x16)(w, nr, x16, T, K, y, ldy, accumulate);
}

AVX512 static void narrow_avx512(uint32_t type, const float *x, int64_t n, uint16_t *out) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __m256i h = type == QL_TYPE_F16 ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                                              : _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
        _mm256_storeu_si256((__m256i *)(out + i), h);
    }
    for (; i < n; i++) out[i] = type == QL_TYPE_F16 ? ql_fp32_to_fp16(x[i]) : ql_fp32_to_bf16(x[i]);
}

void ql_hgemm_narrow(uint32_t type, const float *x, int64_t n, uint16_t *out) {
    if (ql_simd_level_get() >= QL_SIMD_AVX512) narrow_avx512(type, x, n, out);
    else
        for (int64_t i = 0; i < n; i++) out[i] = type == QL_TYPE_F16 ? ql_fp32_to_fp16(x[i]) : ql_fp32_to_bf16(x[i]);
}
