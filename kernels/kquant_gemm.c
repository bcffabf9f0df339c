/* kquant_gemm.c — ggml-quantized weights (K-quants and IQ4_XS under Q8_K activations, the legacy 32-blocks and
 * IQ4_NL under Q8_0/Q8_1) times their activations as integer dot products (kernels/kquant_gemm.h): the
 * scalar reference and an AVX-512 VNNI twin. Why: the preview of a K-quant model spent ~80 % of its time in sgemm
 * over weights decoded to F32, at this CPU's F32 peak; llama.cpp runs the same products on int8/int16 units.
 * The twin decodes 16 rows at a time into int16 codes sc·q laid out [K/2][16 rows][2] (one 64-byte vector per
 * pair of columns) and multiplies 8 tokens at a time with vpdpwssd (16 rows × 2 columns × 8 tokens a step). */
#include "kernels/kquant_gemm.h"
#include "kernels/act_round.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"
#include "base/ql_common.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { QB = 256, ROWS = 16, TOK = 8 };

/* how a weight type's block is multiplied out (the float steps after the integer sums) */
typedef enum { EPI_PLAIN, EPI_KMINS, EPI_KMINS16, EPI_ADDMIN } epilogue;
static int weight_block(uint32_t type) { /* values per weight block = per activation block */
    switch (type) {
    case QL_TYPE_Q2_K: case QL_TYPE_Q3_K: case QL_TYPE_Q4_K: case QL_TYPE_Q5_K: case QL_TYPE_Q6_K: case QL_TYPE_IQ4_XS:
        return 256;
    case QL_TYPE_Q4_0: case QL_TYPE_Q4_1: case QL_TYPE_Q5_0: case QL_TYPE_Q5_1: case QL_TYPE_Q8_0: case QL_TYPE_IQ4_NL:
        return 32;
    default: return 0;
    }
}
static epilogue epilogue_of(uint32_t type) {
    return type == QL_TYPE_Q4_K || type == QL_TYPE_Q5_K ? EPI_KMINS
           : type == QL_TYPE_Q2_K                         ? EPI_KMINS16
           : type == QL_TYPE_Q4_1 || type == QL_TYPE_Q5_1 ? EPI_ADDMIN
                                                          : EPI_PLAIN;
}

/* ---- activations ---- */

static bool act_alloc(int T, int K, int bs, ql_kq_act *a) {
    memset(a, 0, sizeof *a);
    a->T = T, a->T8 = (T + TOK - 1) / TOK * TOK, a->K = K, a->bs = bs;
    a->q = calloc((size_t)a->T8 * K, sizeof *a->q);
    a->d = calloc((size_t)a->T8 * (K / bs), sizeof *a->d);
    a->bsum = calloc((size_t)a->T8 * (K / 32), sizeof *a->bsum);
    a->bsum16 = bs == QB ? calloc((size_t)a->T8 * (K / 16), sizeof *a->bsum16) : NULL; /* Q2_K's mins only */
    if (a->q && a->d && a->bsum && (a->bsum16 || bs != QB)) return true;
    ql_kq_act_free(a);
    return false;
}

void ql_kq_act_free(ql_kq_act *a) {
    free(a->q), free(a->d), free(a->bsum), free(a->bsum16);
    memset(a, 0, sizeof *a);
}

/* The reference's codes (kernels/act_round.c's blocks) with the sums of the codes per 32 (and 16) */
static bool act_rows_ref(const float *x, int T, int K, ql_kq_act *a) {
    for (int64_t i = 0; i < (int64_t)T * K; i++)
        if (!isfinite(x[i])) return false;
    const int bs = a->bs, nb = K / bs;
    int32_t v[QB];
    float r[32];
    for (int t = 0; t < T; t++)
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (size_t)t * K + (size_t)b * bs;
            int16_t *q = a->q + (size_t)t * K + (size_t)b * bs;
            if (bs == QB) {
                a->d[(size_t)t * nb + b] = ql_act_q8_k_block(xb, v);
                for (int j = 0; j < QB; j++) q[j] = (int16_t)v[j];
            } else {
                a->d[(size_t)t * nb + b] = ql_act_q8_0_block(xb, r);
                for (int j = 0; j < 32; j++) q[j] = (int16_t)r[j];
            }
            for (int s = 0; s < bs / 16; s++) {
                int32_t sum = 0;
                for (int j = 0; j < 16; j++) sum += q[16 * s + j];
                if (a->bsum16) a->bsum16[(size_t)t * (K / 16) + b * (bs / 16) + s] = sum;
                if (s & 1) a->bsum[(size_t)t * (K / 32) + b * (bs / 32) + s / 2] += sum;
                else a->bsum[(size_t)t * (K / 32) + b * (bs / 32) + s / 2] = sum;
            }
        }
    return true;
}

bool ql_kq_act_quantize_ref(const float *x, int T, int K, uint32_t act, ql_kq_act *a) {
    const int bs = act == QL_TYPE_Q8_K ? QB : 32;
    if (K % bs != 0 || !act_alloc(T, K, bs, a)) return false;
    if (act_rows_ref(x, T, K, a)) return true;
    ql_kq_act_free(a);
    return false;
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

AVX512 static bool act_block_avx512(const float *v, int16_t *q, float *d, int32_t *bsum, int32_t *bsum16) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 m = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int j = 0; j < QB; j += 16) {
        const __m512 x = _mm512_loadu_ps(v + j);
        bad |= _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, x), _mm512_set1_ps(INFINITY), _CMP_NLT_UQ); /* NaN, inf */
        m = _mm512_max_ps(_mm512_andnot_ps(sign, x), m);
    }
    if (bad) return false;
    const float amax = _mm512_reduce_max_ps(m);
    if (amax == 0) return true;
    float mx = 0;
    for (int j = 0; j < QB; j += 16) {
        const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(v + j)), _mm512_set1_ps(amax),
                                                _CMP_EQ_OQ);
        if (eq) {
            mx = v[j + __builtin_ctz(eq)];
            break;
        }
    }
    const float iscale = -127.f / mx;
    *d = 1.0f / iscale;
    const __m512 vis = _mm512_set1_ps(iscale);
    for (int j = 0; j < QB; j += 32) {
        __m512i c[2];
        for (int h = 0; h < 2; h++) {
            const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(vis, _mm512_loadu_ps(v + j + 16 * h)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            c[h] = _mm512_min_epi32(_mm512_cvttps_epi32(r), _mm512_set1_epi32(127));
            _mm256_storeu_si256((__m256i *)(q + j + 16 * h), _mm512_cvtepi32_epi16(c[h]));
        }
        bsum16[j / 16] = _mm512_reduce_add_epi32(c[0]);
        bsum16[j / 16 + 1] = _mm512_reduce_add_epi32(c[1]);
        bsum[j / 32] = bsum16[j / 16] + bsum16[j / 16 + 1];
    }
    return true;
}

/* Q8_0 over 32 values: amax with fmaxf's NaN rule (no NaN arrives here), codes x·id to nearest */
AVX512 static bool act_block32_avx512(const float *v, int16_t *q, float *d, int32_t *bsum) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16);
    const __m512 a0 = _mm512_andnot_ps(sign, x0), a1 = _mm512_andnot_ps(sign, x1);
    if (_mm512_cmp_ps_mask(a0, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ) |
        _mm512_cmp_ps_mask(a1, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ))
        return false;
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    const float dd = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
    *d = ql_fp16_to_fp32(ql_fp32_to_fp16(dd));
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i c0 = _mm512_cvttps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(x0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512i c1 = _mm512_cvttps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(x1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm256_storeu_si256((__m256i *)q, _mm512_cvtepi32_epi16(c0));
    _mm256_storeu_si256((__m256i *)(q + 16), _mm512_cvtepi32_epi16(c1));
    *bsum = _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
    return true;
}

bool ql_kq_act_quantize(const float *x, int T, int K, uint32_t act, ql_kq_act *a) {
    if (!ql_kq_gemm_available(act == QL_TYPE_Q8_K ? QL_TYPE_Q6_K : QL_TYPE_Q8_0, act)) return ql_kq_act_quantize_ref(x, T, K, act, a);
    const int bs = act == QL_TYPE_Q8_K ? QB : 32;
    if (K % bs != 0 || !act_alloc(T, K, bs, a)) return false;
    const int nb = K / bs;
    for (int t = 0; t < T; t++)
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)t * K + (size_t)b * bs;
            int16_t *q = a->q + (size_t)t * K + (size_t)b * bs;
            float *d = a->d + (size_t)t * nb + b;
            int32_t *bsum = a->bsum + (size_t)t * (K / 32) + b * (bs / 32);
            int32_t *bsum16 = bs == QB ? a->bsum16 + (size_t)t * (K / 16) + b * (bs / 16) : NULL;
            if (!(bs == QB ? act_block_avx512(v, q, d, bsum, bsum16) : act_block32_avx512(v, q, d, bsum))) {
                ql_kq_act_free(a);
                return false;
            }
        }
    return true;
}

/* ---- one 256-block of a weight row: int16 codes sc·q, the block scale, and (Q4_K) dmin and the 8 mins ---- */

/* one block of a weight row: int16 codes (sc·q for K-quants), the scale, and dmin (K-quants' min scale, or the
 * additive min of Q4_1/Q5_1) with the 8 mins per 32 of the K-quants */
static void decode_block(uint32_t type, const uint8_t *blk, int16_t w[QB], float *dw, float *dmin, int32_t m[16]) {
    if (weight_block(type) == 32) {
        *dmin = 0;
        switch (type) {
        case QL_TYPE_Q8_0: {
            const blk_q8_0 *x = (const blk_q8_0 *)blk;
            *dw = ql_fp16_to_fp32(x->d);
            for (int j = 0; j < 32; j++) w[j] = x->qs[j];
            return;
        }
        case QL_TYPE_Q4_0: case QL_TYPE_Q4_1: case QL_TYPE_IQ4_NL: {
            const uint8_t *qs = type == QL_TYPE_Q4_1 ? ((const blk_q4_1 *)blk)->qs : ((const blk_q4_0 *)blk)->qs;
            *dw = ql_fp16_to_fp32(((const blk_q4_0 *)blk)->d);
            if (type == QL_TYPE_Q4_1) *dmin = ql_fp16_to_fp32(((const blk_q4_1 *)blk)->m);
            for (int j = 0; j < 16; j++) {
                const int lo = qs[j] & 0xF, hi = qs[j] >> 4;
                w[j] = (int16_t)(type == QL_TYPE_IQ4_NL ? kvalues_iq4nl[lo] : type == QL_TYPE_Q4_0 ? lo - 8 : lo);
                w[j + 16] = (int16_t)(type == QL_TYPE_IQ4_NL ? kvalues_iq4nl[hi] : type == QL_TYPE_Q4_0 ? hi - 8 : hi);
            }
            return;
        }
        default: { /* Q5_0, Q5_1 */
            const bool one = type == QL_TYPE_Q5_1;
            const uint8_t *qs = one ? ((const blk_q5_1 *)blk)->qs : ((const blk_q5_0 *)blk)->qs;
            uint32_t qh;
            memcpy(&qh, one ? ((const blk_q5_1 *)blk)->qh : ((const blk_q5_0 *)blk)->qh, 4);
            *dw = ql_fp16_to_fp32(((const blk_q5_0 *)blk)->d);
            if (one) *dmin = ql_fp16_to_fp32(((const blk_q5_1 *)blk)->m);
            for (int j = 0; j < 16; j++) {
                const int x0 = (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10), x1 = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
                w[j] = (int16_t)(one ? x0 : x0 - 16);
                w[j + 16] = (int16_t)(one ? x1 : x1 - 16);
            }
            return;
        }
        }
    }
    if (type == QL_TYPE_Q4_K || type == QL_TYPE_Q5_K) { /* Q5_K: the same, plus a fifth bit from qh */
        const bool five = type == QL_TYPE_Q5_K;
        const blk_q4_K *x4 = (const blk_q4_K *)blk;
        const blk_q5_K *x5 = (const blk_q5_K *)blk;
        const uint8_t *scales = five ? x5->scales : x4->scales, *q = five ? x5->qs : x4->qs, *qh = five ? x5->qh : NULL;
        *dw = ql_fp16_to_fp32(five ? x5->d : x4->d), *dmin = ql_fp16_to_fp32(five ? x5->dmin : x4->dmin);
        for (int j = 0; j < 4; j++, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            get_scale_min_k4(2 * j, scales, &sc0, &m0);
            get_scale_min_k4(2 * j + 1, scales, &sc1, &m1);
            m[2 * j] = m0, m[2 * j + 1] = m1;
            for (int l = 0; l < 32; l++) {
                const int h0 = qh && (qh[l] >> (2 * j) & 1) ? 16 : 0, h1 = qh && (qh[l] >> (2 * j + 1) & 1) ? 16 : 0;
                w[64 * j + l] = (int16_t)(sc0 * ((q[l] & 0xF) + h0));
                w[64 * j + 32 + l] = (int16_t)(sc1 * ((q[l] >> 4) + h1));
            }
        }
        return;
    }
    if (type == QL_TYPE_Q2_K) { /* scale and min per 16 values, 4 bits each */
        const blk_q2_K *x = (const blk_q2_K *)blk;
        *dw = ql_fp16_to_fp32(x->d), *dmin = ql_fp16_to_fp32(x->dmin);
        const uint8_t *q = x->qs;
        int is = 0, p = 0;
        for (int h = 0; h < 2; h++, q += 32)
            for (int j = 0, shift = 0; j < 4; j++, shift += 2)
                for (int half = 0; half < 2; half++, is++) {
                    const int sc = x->scales[is] & 0xF;
                    m[is] = x->scales[is] >> 4;
                    for (int l = 0; l < 16; l++) w[p++] = (int16_t)(sc * ((q[l + 16 * half] >> shift) & 3));
                }
        return;
    }
    if (type == QL_TYPE_IQ4_XS) { /* IQ4_NL's code book, a signed 6-bit scale per 32 values */
        const blk_iq4_xs *x = (const blk_iq4_xs *)blk;
        *dw = ql_fp16_to_fp32(x->d), *dmin = 0;
        const uint8_t *qs = x->qs;
        for (int ib = 0; ib < QB / 32; ib++, qs += 16) {
            const int ls = (((x->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((x->scales_h >> 2 * ib) & 3) << 4)) - 32;
            for (int j = 0; j < 16; j++) {
                w[32 * ib + j] = (int16_t)(ls * kvalues_iq4nl[qs[j] & 0xf]);
                w[32 * ib + j + 16] = (int16_t)(ls * kvalues_iq4nl[qs[j] >> 4]);
            }
        }
        return;
    }
    if (type == QL_TYPE_Q3_K) { /* signed 6-bit scale per 16 values, codes -4..3 */
        const blk_q3_K *x = (const blk_q3_K *)blk;
        int8_t scales[16];
        q3_K_unpack_scales(x->scales, scales);
        *dw = ql_fp16_to_fp32(x->d), *dmin = 0;
        const uint8_t *q = x->qs, *hm = x->hmask;
        int is = 0, p = 0;
        uint8_t bit = 1;
        for (int h = 0; h < 2; h++, q += 32)
            for (int j = 0, shift = 0; j < 4; j++, shift += 2, bit <<= 1)
                for (int half = 0; half < 2; half++, is++) {
                    const int sc = scales[is] - 32;
                    for (int l = 0; l < 16; l++) {
                        const int i = l + 16 * half;
                        w[p++] = (int16_t)(sc * (((q[i] >> shift) & 3) - ((hm[i] & bit) ? 0 : 4)));
                    }
                }
        return;
    }
    const blk_q6_K *x = (const blk_q6_K *)blk; /* Q6_K */
    *dw = ql_fp16_to_fp32(x->d), *dmin = 0;
    const uint8_t *ql = x->ql, *qh = x->qh;
    const int8_t *sc = x->scales;
    for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8)
        for (int l = 0; l < 32; l++) {
            const int p = 128 * h + l, is = l / 16;
            w[p + 0] = (int16_t)(sc[is + 0] * (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32));
            w[p + 32] = (int16_t)(sc[is + 2] * (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32));
            w[p + 64] = (int16_t)(sc[is + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32));
            w[p + 96] = (int16_t)(sc[is + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32));
        }
}

static int64_t block_bytes(uint32_t type) {
    switch (type) {
    case QL_TYPE_Q2_K: return sizeof(blk_q2_K);
    case QL_TYPE_Q3_K: return sizeof(blk_q3_K);
    case QL_TYPE_Q4_K: return sizeof(blk_q4_K);
    case QL_TYPE_Q5_K: return sizeof(blk_q5_K);
    case QL_TYPE_Q6_K: return sizeof(blk_q6_K);
    case QL_TYPE_Q4_0: case QL_TYPE_IQ4_NL: return sizeof(blk_q4_0);
    case QL_TYPE_IQ4_XS: return sizeof(blk_iq4_xs);
    case QL_TYPE_Q4_1: return sizeof(blk_q4_1);
    case QL_TYPE_Q5_0: return sizeof(blk_q5_0);
    case QL_TYPE_Q5_1: return sizeof(blk_q5_1);
    default: return sizeof(blk_q8_0);
    }
}

bool ql_kq_gemm_available(uint32_t type, uint32_t act) {
    static int vnni = -1;
    if (vnni < 0) vnni = ql_simd_detect() >= QL_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni");
    const int bs = weight_block(type);
    return vnni && ql_simd_level_get() >= QL_SIMD_AVX512 && bs > 0 &&
           (act == QL_TYPE_Q8_K ? bs == QB : (act == QL_TYPE_Q8_0 || act == QL_TYPE_Q8_1) && bs == 32);
}

/* the float steps of one block, shared by both versions in this order: da·(dw·isum ∓ dmin·msum) */
static inline float block_term(float da, float dw, float dmin, int32_t isum, int32_t msum, epilogue e) {
    float v = dw * (float)isum;
    if (e == EPI_KMINS || e == EPI_KMINS16) v = v - dmin * (float)msum;
    else if (e == EPI_ADDMIN) v = v + dmin * (float)msum;
    return da * v;
}

/* The code sums the mins of a K-quant block multiply (per 32, or per 16 for Q2_K) and how many: 0 for no mins */
static inline int min_sums(epilogue e, const ql_kq_act *a, int t, int b, const int32_t **sums) {
    if (e == EPI_KMINS16) *sums = a->bsum16 + (size_t)t * (a->K / 16) + b * 16;
    else *sums = a->bsum + (size_t)t * (a->K / 32) + b * (a->bs / 32);
    return e == EPI_KMINS16 ? 16 : e == EPI_KMINS ? 8 : 0;
}

void ql_kq_gemm_ref(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, const ql_kq_act *a, float *y,
                    int64_t ldy, bool accumulate) {
    const int K = a->K, bs = weight_block(type), nb = K / bs;
    const epilogue e = epilogue_of(type);
    int16_t w[QB];
    int32_t m[16];
    float *acc = ql_malloc((size_t)a->T * sizeof *acc);
    for (int n = 0; n < nr; n++) {
        for (int t = 0; t < a->T; t++) acc[t] = 0;
        for (int b = 0; b < nb; b++) {
            float dw, dmin;
            decode_block(type, rows + n * row_bytes + b * block_bytes(type), w, &dw, &dmin, m);
            for (int t = 0; t < a->T; t++) {
                const int16_t *q = a->q + (size_t)t * K + (size_t)b * bs;
                const int32_t *sums;
                const int nm = min_sums(e, a, t, b, &sums);
                int32_t isum = 0, msum = e == EPI_ADDMIN ? sums[0] : 0;
                for (int j = 0; j < bs; j++) isum += (int32_t)q[j] * w[j];
                for (int s = 0; s < nm; s++) msum += m[s] * sums[s];
                acc[t] = acc[t] + block_term(a->d[(size_t)t * nb + b], dw, dmin, isum, msum, e);
            }
        }
        for (int t = 0; t < a->T; t++) y[t * ldy + n] = accumulate ? y[t * ldy + n] + acc[t] : acc[t];
    }
    free(acc);
}

/* 16 rows decoded for the twin: codes [K/2][16][2], scales [nb][16], dmin [nb][16], mins [nb][8][16] */
typedef struct {
    int16_t *w;
    float *dw, *dmin;
    int32_t *m;
} tile;

static void decode_tile(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, int K, tile *tl) {
    const int bs = weight_block(type), nb = K / bs;
    int16_t w[QB];
    int32_t m[16] = {0};
    const int nm = epilogue_of(type) == EPI_KMINS16 ? 16 : 8;
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < nb; b++) {
            float dw = 0, dmin = 0;
            if (r < nr) decode_block(type, rows + r * row_bytes + b * block_bytes(type), w, &dw, &dmin, m);
            else memset(w, 0, sizeof w), memset(m, 0, sizeof m);
            tl->dw[b * ROWS + r] = dw, tl->dmin[b * ROWS + r] = dmin;
            if (bs == QB)
                for (int s = 0; s < nm; s++) tl->m[(b * nm + s) * ROWS + r] = m[s];
            int16_t *dst = tl->w + (size_t)b * (bs / 2) * (2 * ROWS) + 2 * r;
            for (int k2 = 0; k2 < bs / 2; k2++) dst[k2 * 2 * ROWS] = w[2 * k2], dst[k2 * 2 * ROWS + 1] = w[2 * k2 + 1];
        }
}

AVX512 static void tile_tokens(const tile *tl, int K, int bs, epilogue e, const ql_kq_act *a, int t0, float *y,
                               int64_t ldy, int nr, bool accumulate) {
    const int nb = K / bs, h = bs / 2;
    __m512 yacc[TOK];
    for (int i = 0; i < TOK; i++) yacc[i] = _mm512_setzero_ps();
    const int32_t *A[TOK];
    for (int i = 0; i < TOK; i++) A[i] = (const int32_t *)(a->q + (size_t)(t0 + i) * K);
    for (int b = 0; b < nb; b++) {
        /* eight named accumulators: as an array, gcc keeps them in memory (a load and a store per vpdpwssd) */
        __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        const int16_t *wb = tl->w + (size_t)b * h * (2 * ROWS);
        const int32_t *a0 = A[0] + b * h, *a1 = A[1] + b * h, *a2 = A[2] + b * h, *a3 = A[3] + b * h,
                      *a4 = A[4] + b * h, *a5 = A[5] + b * h, *a6 = A[6] + b * h, *a7 = A[7] + b * h;
        for (int k2 = 0; k2 < h; k2++) {
            const __m512i wv = _mm512_loadu_si512((const void *)(wb + k2 * 2 * ROWS));
            c0 = _mm512_dpwssd_epi32(c0, wv, _mm512_set1_epi32(a0[k2]));
            c1 = _mm512_dpwssd_epi32(c1, wv, _mm512_set1_epi32(a1[k2]));
            c2 = _mm512_dpwssd_epi32(c2, wv, _mm512_set1_epi32(a2[k2]));
            c3 = _mm512_dpwssd_epi32(c3, wv, _mm512_set1_epi32(a3[k2]));
            c4 = _mm512_dpwssd_epi32(c4, wv, _mm512_set1_epi32(a4[k2]));
            c5 = _mm512_dpwssd_epi32(c5, wv, _mm512_set1_epi32(a5[k2]));
            c6 = _mm512_dpwssd_epi32(c6, wv, _mm512_set1_epi32(a6[k2]));
            c7 = _mm512_dpwssd_epi32(c7, wv, _mm512_set1_epi32(a7[k2]));
        }
        const __m512i acc[TOK] = {c0, c1, c2, c3, c4, c5, c6, c7};
        const __m512 dw = _mm512_loadu_ps(tl->dw + b * ROWS), dmin = _mm512_loadu_ps(tl->dmin + b * ROWS);
        for (int i = 0; i < TOK; i++) {
            const int t = t0 + i;
            const int32_t *sums;
            const int nm = min_sums(e, a, t, b, &sums);
            __m512 v = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(acc[i]));
            if (nm) {
                __m512i ms = _mm512_setzero_si512();
                for (int s = 0; s < nm; s++)
                    ms = _mm512_add_epi32(ms, _mm512_mullo_epi32(_mm512_loadu_si512((const void *)(tl->m + (b * nm + s) * ROWS)),
                                                                 _mm512_set1_epi32(sums[s])));
                v = _mm512_sub_ps(v, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(ms)));
            } else if (e == EPI_ADDMIN) {
                v = _mm512_add_ps(v, _mm512_mul_ps(dmin, _mm512_set1_ps((float)sums[0])));
            }
            yacc[i] = _mm512_add_ps(yacc[i], _mm512_mul_ps(_mm512_set1_ps(a->d[(size_t)t * nb + b]), v));
        }
    }
    const __mmask16 mask = (__mmask16)((1u << nr) - 1);
    for (int i = 0; i < TOK && t0 + i < a->T; i++) {
        float *yr = y + (t0 + i) * ldy;
        __m512 v = yacc[i];
        if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yr), v);
        _mm512_mask_storeu_ps(yr, mask, v);
    }
}

void ql_kq_gemm_vnni(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, const ql_kq_act *a, float *y,
                     int64_t ldy, bool accumulate) {
    const int K = a->K, bs = weight_block(type), nb = K / bs;
    tile tl = {ql_malloc((size_t)K * ROWS * sizeof(int16_t)), ql_malloc((size_t)nb * ROWS * sizeof(float)),
               ql_malloc((size_t)nb * ROWS * sizeof(float)), ql_malloc((size_t)(K / 16) * ROWS * sizeof(int32_t))};
    for (int n0 = 0; n0 < nr; n0 += ROWS) {
        const int nt = QL_MIN(ROWS, nr - n0);
        decode_tile(type, rows + n0 * row_bytes, row_bytes, nt, K, &tl);
        for (int t0 = 0; t0 < a->T; t0 += TOK)
            tile_tokens(&tl, K, bs, epilogue_of(type), a, t0, y + n0, ldy, nt, accumulate);
    }
    free(tl.w), free(tl.dw), free(tl.dmin), free(tl.m);
}
