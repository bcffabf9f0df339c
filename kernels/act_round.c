/* act_round.c — the rounding llama.cpp's CPU backend applies to activations (kernels/act_round.h): the scalar
 * reference, and an AVX2 twin. The preview spends a fifth of its time here on a K-quant model when the rounding
 * is scalar (a libm nearbyintf call per value). The twin keeps every operation of the reference in the same
 * order: the same products (no FMA), round-to-nearest-even, cvttps' INT_MIN for NaN, the first largest |x|. */
#include "kernels/act_round.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"
#include "base/ql_common.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

float ql_act_q8_k_block(const float *x, int32_t v[256]) {
    float amax = 0, mx = 0;
    for (int j = 0; j < 256; j++)
        if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); mx = x[j]; }
    if (amax == 0) {
        memset(v, 0, 256 * sizeof *v);
        return 0;
    }
    const float iscale = -127.f / mx;
    for (int j = 0; j < 256; j++) {
        const int c = (int)nearbyintf(iscale * x[j]);
        v[j] = c > 127 ? 127 : c;
    }
    return 1.0f / iscale;
}

float ql_act_q8_0_block(const float *x, float r[32]) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
    for (int j = 0; j < 32; j++) r[j] = nearbyintf(x[j] * id);
    return ql_fp16_to_fp32(ql_fp32_to_fp16(d));
}

void ql_act_round_ref(uint32_t act, const float *x, float *y, int64_t n) {
    if (act == QL_TYPE_F16) {
        for (int64_t i = 0; i < n; i++) y[i] = ql_fp16_to_fp32(ql_fp32_to_fp16(x[i]));
        return;
    }
    if (act == QL_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) y[i] = ql_bf16_to_fp32(ql_fp32_to_bf16(x[i]));
        return;
    }
    if (act == QL_TYPE_Q8_K) {
        int32_t v[256];
        for (int64_t b = 0; b < n; b += 256) {
            const float d = ql_act_q8_k_block(x + b, v);
            for (int j = 0; j < 256; j++) y[b + j] = d * (float)v[j];
        }
        return;
    }
    /* Q8_0 / Q8_1 */
    float r[32];
    for (int64_t b = 0; b < n; b += 32) {
        const float dh = ql_act_q8_0_block(x + b, r);
        for (int j = 0; j < 32; j++) y[b + j] = dh * r[j];
    }
}

#define AVX2 __attribute__((target("avx2")))

/* max |x| over 8k values, NaN lanes skipped (maxps returns its second operand when the first is NaN) */
AVX2 static float absmax8(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

AVX2 static void q8_k_avx2(const float *x, float *y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n; b += 256, x += 256, y += 256) {
        const float amax = absmax8(x, 256);
        if (amax == 0) {
            memset(y, 0, 256 * sizeof *y);
            continue;
        }
        /* the reference's mx: the first value whose |x| is the block's largest */
        float mx = 0;
        const __m256 va = _mm256_set1_ps(amax);
        for (int j = 0; j < 256; j += 8) {
            const int eq = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), va, _CMP_EQ_OQ));
            if (eq) {
                mx = x[j + __builtin_ctz((unsigned)eq)];
                break;
            }
        }
        const float iscale = -127.f / mx, d = 1.0f / iscale;
        const __m256 vis = _mm256_set1_ps(iscale), vd = _mm256_set1_ps(d);
        const __m256i cap = _mm256_set1_epi32(127);
        for (int j = 0; j < 256; j += 8) {
            const __m256 r = _mm256_round_ps(_mm256_mul_ps(vis, _mm256_loadu_ps(x + j)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i v = _mm256_min_epi32(_mm256_cvttps_epi32(r), cap);
            _mm256_storeu_ps(y + j, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(v)));
        }
    }
}

AVX2 static void q8_0_avx2(const float *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n; b += 32, x += 32, y += 32) {
        const float amax = absmax8(x, 32);
        const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        const __m256 vdh = _mm256_set1_ps(ql_fp16_to_fp32(ql_fp32_to_fp16(d))), vid = _mm256_set1_ps(id);
        for (int j = 0; j < 32; j += 8) {
            const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vid),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_storeu_ps(y + j, _mm256_mul_ps(vdh, r));
        }
    }
}

/* F16 / BF16 through the registry's SIMD codecs (equal to the reference conversions), a chunk at a time */
static void half_round_trip(uint32_t act, const float *x, float *y, int64_t n) {
    uint16_t h[2048];
    for (int64_t i = 0; i < n; i += 2048) {
        const int64_t m = QL_MIN((int64_t)2048, n - i);
        if (act == QL_TYPE_F16) {
            ql_quantize_rows_f16_fast(x + i, h, 1, m, NULL);
            ql_dequantize_rows_f16_fast(h, y + i, 1, m);
        } else {
            ql_quantize_rows_bf16_fast(x + i, h, 1, m, NULL);
            ql_dequantize_rows_bf16_fast(h, y + i, 1, m);
        }
    }
}

void ql_act_round(uint32_t act, const float *x, float *y, int64_t n) {
    if (act == QL_TYPE_F16 || act == QL_TYPE_BF16) {
        half_round_trip(act, x, y, n);
        return;
    }
    if (ql_simd_level_get() < QL_SIMD_AVX2) {
        ql_act_round_ref(act, x, y, n);
        return;
    }
    if (act == QL_TYPE_Q8_K) q8_k_avx2(x, y, n);
    else q8_0_avx2(x, y, n);
}
