/* kquant_gemm.c — ggml-quantized weights (K-quants, i-quants and ternary under Q8_K activations, the legacy 32-blocks and
 * IQ4_NL under Q8_0/Q8_1) times their activations as integer dot products (kernels/kquant_gemm.h): the
 * scalar reference and an AVX-512 VNNI twin. Why: the preview of a K-quant model spent ~80 % of its time in sgemm
 * over weights decoded to F32, at this CPU's F32 peak; llama.cpp runs the same products on int8/int16 units.
 * The twin decodes 16 rows at a time into int8 codes with their integer sub-block scales kept apart, laid out
 * [K/4][16 rows][4] (one 64-byte vector per 4 columns), and multiplies 8 tokens at a time with vpdpbusd against the
 * activations' codes + 128 (u8); the 128·Σ sc·c that adds is subtracted once per block. */
#include "kernels/kquant_gemm.h"
#include "kernels/act_round.h"
#include "kernels/ggml_quants.h"
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
    case QL_TYPE_IQ2_XXS: case QL_TYPE_IQ2_XS: case QL_TYPE_IQ2_S: case QL_TYPE_IQ3_XXS: case QL_TYPE_IQ3_S:
    case QL_TYPE_IQ1_S: case QL_TYPE_IQ1_M: case QL_TYPE_TQ1_0: case QL_TYPE_TQ2_0:
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
    a->d = calloc((size_t)a->T8 * (K / bs), sizeof *a->d);
    a->bsum = calloc((size_t)a->T8 * (K / 32), sizeof *a->bsum);
    a->bsum16 = bs == QB ? calloc((size_t)a->T8 * (K / 16), sizeof *a->bsum16) : NULL; /* Q2_K's mins only */
    a->qu = malloc((size_t)a->T8 * K);
    if (bs == QB) a->mpair = calloc((size_t)a->T8 * (K / 32 + K / 64), sizeof *a->mpair);
    if (a->qu) memset(a->qu, 128, (size_t)a->T8 * K); /* code 0: the padding tokens and all-zero blocks */
    if (a->d && a->bsum && a->qu && (bs != QB || (a->bsum16 && a->mpair))) return true;
    ql_kq_act_free(a);
    return false;
}

void ql_kq_act_free(ql_kq_act *a) {
    free(a->d), free(a->bsum), free(a->bsum16), free(a->qu), free(a->mpair);
    memset(a, 0, sizeof *a);
}

/* The reference's codes (kernels/act_round.c's blocks) with the sums of the codes per 32 (and 16) */
static bool act_rows_ref(const float *x, int T, int K, ql_kq_act *a) {
    for (int64_t i = 0; i < (int64_t)T * K; i++)
        if (!isfinite(x[i])) return false;
    const int bs = a->bs, nb = K / bs;
    int32_t v[QB];
    int16_t q[QB];
    float r[32];
    for (int t = 0; t < T; t++)
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (size_t)t * K + (size_t)b * bs;
            if (bs == QB) {
                a->d[(size_t)t * nb + b] = ql_act_q8_k_block(xb, v);
                for (int j = 0; j < QB; j++) q[j] = (int16_t)v[j];
            } else {
                a->d[(size_t)t * nb + b] = ql_act_q8_0_block(xb, r);
                for (int j = 0; j < 32; j++) q[j] = (int16_t)r[j];
            }
            for (int j = 0; j < bs; j++) a->qu[(size_t)t * K + (size_t)b * bs + j] = (uint8_t)(q[j] + 128);
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

/* The code sums the K-quant mins multiply, two to an int32 (|sum| <= 32·127 fits int16) for vpdpwssd: per 32, then
 * per 16 (Q2_K) — the same arrays whichever version rounded the codes */
static void pair_sums(ql_kq_act *a) {
    if (!a->mpair) return;
    const int K = a->K;
    for (int t = 0; t < a->T8; t++) {
        uint32_t *p32 = a->mpair + (size_t)t * (K / 64), *p16 = a->mpair + (size_t)a->T8 * (K / 64) + (size_t)t * (K / 32);
        const int32_t *s32 = a->bsum + (size_t)t * (K / 32), *s16 = a->bsum16 + (size_t)t * (K / 16);
        for (int i = 0; i < K / 64; i++) p32[i] = (uint16_t)s32[2 * i] | (uint32_t)(uint16_t)s32[2 * i + 1] << 16;
        for (int i = 0; i < K / 32; i++) p16[i] = (uint16_t)s16[2 * i] | (uint32_t)(uint16_t)s16[2 * i + 1] << 16;
    }
}

bool ql_kq_act_quantize_ref(const float *x, int T, int K, uint32_t act, ql_kq_act *a) {
    const int bs = act == QL_TYPE_Q8_K ? QB : 32;
    if (K % bs != 0 || !act_alloc(T, K, bs, a)) return false;
    if (act_rows_ref(x, T, K, a)) {
        pair_sums(a);
        return true;
    }
    ql_kq_act_free(a);
    return false;
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

AVX512 static bool act_block_avx512(const float *v, uint8_t *qu, float *d, int32_t *bsum, int32_t *bsum16) {
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
            _mm_storeu_si128((__m128i *)(qu + j + 16 * h), _mm512_cvtepi32_epi8(_mm512_add_epi32(c[h], _mm512_set1_epi32(128))));
        }
        bsum16[j / 16] = _mm512_reduce_add_epi32(c[0]);
        bsum16[j / 16 + 1] = _mm512_reduce_add_epi32(c[1]);
        bsum[j / 32] = bsum16[j / 16] + bsum16[j / 16 + 1];
    }
    return true;
}

/* Q8_0 over 32 values: amax with fmaxf's NaN rule (no NaN arrives here), codes x·id to nearest */
AVX512 static bool act_block32_avx512(const float *v, uint8_t *qu, float *d, int32_t *bsum) {
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
    _mm_storeu_si128((__m128i *)qu, _mm512_cvtepi32_epi8(_mm512_add_epi32(c0, _mm512_set1_epi32(128))));
    _mm_storeu_si128((__m128i *)(qu + 16), _mm512_cvtepi32_epi8(_mm512_add_epi32(c1, _mm512_set1_epi32(128))));
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
            uint8_t *qu = a->qu + (size_t)t * K + (size_t)b * bs;
            float *d = a->d + (size_t)t * nb + b;
            int32_t *bsum = a->bsum + (size_t)t * (K / 32) + b * (bs / 32);
            int32_t *bsum16 = bs == QB ? a->bsum16 + (size_t)t * (K / 16) + b * (bs / 16) : NULL;
            if (!(bs == QB ? act_block_avx512(v, qu, d, bsum, bsum16) : act_block32_avx512(v, qu, d, bsum))) {
                ql_kq_act_free(a);
                return false;
            }
        }
    pair_sums(a);
    return true;
}

/* ---- one block of a weight row as int8 codes c, int scales per sub-block, the float scale(s), the mins ---- */

/* One block of a weight row: value j = dw·sc[j / L]·c[j] (− dmin·m[j / L'] for the K-quant mins, + dmin for
 * Q4_1/Q5_1's additive min), with L, the values per integer scale, returned (the whole block when there is
 * none: sc[0] = 1). Codes fit int8 and sc·c int16, so the reference's products and the twin's are exact. */
static int decode_block(uint32_t type, const uint8_t *blk, int8_t c[QB], int16_t sc[16], float *dw, float *dmin,
                        int32_t m[16]) {
    *dmin = 0;
    if (weight_block(type) == 32) {
        sc[0] = 1;
        switch (type) {
        case QL_TYPE_Q8_0: {
            const blk_q8_0 *x = (const blk_q8_0 *)blk;
            *dw = ql_fp16_to_fp32(x->d);
            memcpy(c, x->qs, 32);
            return 32;
        }
        case QL_TYPE_Q4_0: case QL_TYPE_Q4_1: case QL_TYPE_IQ4_NL: {
            const uint8_t *qs = type == QL_TYPE_Q4_1 ? ((const blk_q4_1 *)blk)->qs : ((const blk_q4_0 *)blk)->qs;
            *dw = ql_fp16_to_fp32(((const blk_q4_0 *)blk)->d);
            if (type == QL_TYPE_Q4_1) *dmin = ql_fp16_to_fp32(((const blk_q4_1 *)blk)->m);
            for (int j = 0; j < 16; j++) {
                const int lo = qs[j] & 0xF, hi = qs[j] >> 4;
                c[j] = (int8_t)(type == QL_TYPE_IQ4_NL ? kvalues_iq4nl[lo] : type == QL_TYPE_Q4_0 ? lo - 8 : lo);
                c[j + 16] = (int8_t)(type == QL_TYPE_IQ4_NL ? kvalues_iq4nl[hi] : type == QL_TYPE_Q4_0 ? hi - 8 : hi);
            }
            return 32;
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
                c[j] = (int8_t)(one ? x0 : x0 - 16);
                c[j + 16] = (int8_t)(one ? x1 : x1 - 16);
            }
            return 32;
        }
        }
    }
    const int L = ql_ggml_block_int_codes(type, blk, c, sc, dw); /* the lattice and ternary types */
    if (L) return L;
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
            sc[2 * j] = sc0, sc[2 * j + 1] = sc1, m[2 * j] = m0, m[2 * j + 1] = m1;
            for (int l = 0; l < 32; l += 8) { /* 8 bytes at a time: the nibbles, plus Q5_K's fifth bits at 0x10 */
                const uint64_t nib = 0x0f0f0f0f0f0f0f0full, one = 0x0101010101010101ull;
                uint64_t v, h = 0, lo, hi;
                memcpy(&v, q + l, 8);
                if (qh) memcpy(&h, qh + l, 8);
                lo = (v & nib) | ((h >> (2 * j)) & one) << 4;
                hi = ((v >> 4) & nib) | ((h >> (2 * j + 1)) & one) << 4;
                memcpy(c + 64 * j + l, &lo, 8);
                memcpy(c + 64 * j + 32 + l, &hi, 8);
            }
        }
        return 32;
    }
    if (type == QL_TYPE_Q2_K) { /* scale and min per 16 values, 4 bits each */
        const blk_q2_K *x = (const blk_q2_K *)blk;
        *dw = ql_fp16_to_fp32(x->d), *dmin = ql_fp16_to_fp32(x->dmin);
        const uint8_t *q = x->qs;
        int is = 0, p = 0;
        for (int h = 0; h < 2; h++, q += 32)
            for (int j = 0, shift = 0; j < 4; j++, shift += 2)
                for (int half = 0; half < 2; half++, is++) {
                    sc[is] = x->scales[is] & 0xF, m[is] = x->scales[is] >> 4;
                    for (int l = 0; l < 16; l++) c[p++] = (int8_t)((q[l + 16 * half] >> shift) & 3);
                }
        return 16;
    }
    if (type == QL_TYPE_IQ4_XS) { /* IQ4_NL's code book, a signed 6-bit scale per 32 values */
        const blk_iq4_xs *x = (const blk_iq4_xs *)blk;
        *dw = ql_fp16_to_fp32(x->d);
        const uint8_t *qs = x->qs;
        for (int ib = 0; ib < QB / 32; ib++, qs += 16) {
            sc[ib] = (int16_t)((((x->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((x->scales_h >> 2 * ib) & 3) << 4)) - 32);
            for (int j = 0; j < 16; j++) {
                c[32 * ib + j] = kvalues_iq4nl[qs[j] & 0xf];
                c[32 * ib + j + 16] = kvalues_iq4nl[qs[j] >> 4];
            }
        }
        return 32;
    }
    if (type == QL_TYPE_Q3_K) { /* signed 6-bit scale per 16 values, codes -4..3 */
        const blk_q3_K *x = (const blk_q3_K *)blk;
        int8_t scales[16];
        q3_K_unpack_scales(x->scales, scales);
        *dw = ql_fp16_to_fp32(x->d);
        const uint8_t *q = x->qs, *hm = x->hmask;
        int is = 0, p = 0;
        uint8_t bit = 1;
        for (int h = 0; h < 2; h++, q += 32)
            for (int j = 0, shift = 0; j < 4; j++, shift += 2, bit <<= 1)
                for (int half = 0; half < 2; half++, is++) {
                    sc[is] = (int16_t)(scales[is] - 32);
                    for (int l = 0; l < 16; l++) {
                        const int i = l + 16 * half;
                        c[p++] = (int8_t)(((q[i] >> shift) & 3) - ((hm[i] & bit) ? 0 : 4));
                    }
                }
        return 16;
    }
    const blk_q6_K *x = (const blk_q6_K *)blk; /* Q6_K: an int8 scale per 16 values, in order */
    *dw = ql_fp16_to_fp32(x->d);
    for (int s = 0; s < 16; s++) sc[s] = x->scales[s];
    const uint8_t *ql = x->ql, *qh = x->qh;
    for (int h = 0; h < 2; h++, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            const int p = 128 * h + l;
            c[p + 0] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            c[p + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            c[p + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            c[p + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    return 16;
}

static int64_t block_bytes(uint32_t type) { return ql_type_get(type)->block_bytes; }

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
    const int64_t bb = block_bytes(type);
    int8_t c[QB];
    int16_t sc[16], w[QB];
    int32_t m[16];
    float *acc = ql_malloc((size_t)a->T * sizeof *acc);
    for (int n = 0; n < nr; n++) {
        for (int t = 0; t < a->T; t++) acc[t] = 0;
        for (int b = 0; b < nb; b++) {
            float dw, dmin;
            const int L = decode_block(type, rows + n * row_bytes + b * bb, c, sc, &dw, &dmin, m);
            for (int j = 0; j < bs; j++) w[j] = (int16_t)(sc[j / L] * c[j]);
            for (int t = 0; t < a->T; t++) {
                const uint8_t *qu = a->qu + (size_t)t * K + (size_t)b * bs;
                const int32_t *sums;
                const int nm = min_sums(e, a, t, b, &sums);
                int32_t isum = 0, msum = e == EPI_ADDMIN ? sums[0] : 0;
                for (int j = 0; j < bs; j++) isum += ((int32_t)qu[j] - 128) * w[j];
                for (int s = 0; s < nm; s++) msum += m[s] * sums[s];
                acc[t] = acc[t] + block_term(a->d[(size_t)t * nb + b], dw, dmin, isum, msum, e);
            }
        }
        for (int t = 0; t < a->T; t++) y[t * ldy + n] = accumulate ? y[t * ldy + n] + acc[t] : acc[t];
    }
    free(acc);
}

/* 16 rows decoded for the twin: codes [K/4][16][4] (one 64-byte vector per 4 columns), per block: the integer
 * scales [nsub][16], the offset 128·Σ sc·c [16] the unsigned activations add, dw and dmin [16], the mins [nm][16] */
typedef struct {
    int8_t *c;
    int32_t *sc, *off;
    int16_t *m; /* [nb][nm/2][16][2]: a pair of mins per row, vpdpwssd's operand */
    float *dw, *dmin;
} tile;

/* returns the values per integer scale (decode_block's L, the same for every block of a type) */
static int decode_tile(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, int K, tile *tl) {
    const int bs = weight_block(type), nb = K / bs, nm = epilogue_of(type) == EPI_KMINS16 ? 16 : 8;
    const int64_t bb = block_bytes(type);
    int8_t c[QB];
    int16_t sc[16];
    int32_t m[16] = {0};
    int L = bs;
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < nb; b++) {
            float dw = 0, dmin = 0;
            if (r < nr) L = decode_block(type, rows + r * row_bytes + b * bb, c, sc, &dw, &dmin, m);
            else memset(c, 0, sizeof c), memset(m, 0, sizeof m), memset(sc, 0, sizeof sc);
            tl->dw[b * ROWS + r] = dw, tl->dmin[b * ROWS + r] = dmin;
            if (bs == QB)
                for (int s = 0; s < nm; s++) tl->m[((b * nm + s) / 2 * ROWS + r) * 2 + s % 2] = (int16_t)m[s];
            /* the scales are laid out per 16 values whatever L is, so the twin reads them the same way */
            int32_t off = 0;
            for (int s = 0; s < bs / 16; s++) {
                int32_t sum = 0;
                for (int j = 0; j < 16; j++) sum += c[16 * s + j];
                const int32_t scale = sc[16 * s / L];
                tl->sc[((size_t)b * (bs / 16) + s) * ROWS + r] = scale;
                off += scale * sum;
            }
            tl->off[b * ROWS + r] = 128 * off;
            int8_t *dst = tl->c + (size_t)b * bs * ROWS + 4 * r;
            for (int k4 = 0; k4 < bs / 4; k4++) memcpy(dst + (size_t)k4 * 4 * ROWS, c + 4 * k4, 4);
        }
    return L;
}

/* vpdpbusd (c += Σ4 a_u8·b_s8) in inline assembly: with the intrinsic, gcc 12 writes each result to a fresh register
 * and copies it back (8 moves per 8 products in the loop below) */
AVX512 static inline __m512i dpbusd(__m512i c, __m512i a, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(c) : "v"(a), "v"(b));
    return c;
}

/* Σ over one scale's span of (q+128)·c for 8 tokens: n4 steps of 4 columns from column k4 = kb, into c0..c7 */
#define DPBUSD_SPAN(kb, n4)                                                                                          \
    for (int k4 = (kb); k4 < (kb) + (n4); k4++) {                                                                   \
        const __m512i wv = _mm512_loadu_si512((const void *)(wc + (size_t)k4 * 4 * ROWS));                         \
        c0 = dpbusd(c0, _mm512_set1_epi32(a0[k4]), wv);                                                \
        c1 = dpbusd(c1, _mm512_set1_epi32(a1[k4]), wv);                                                \
        c2 = dpbusd(c2, _mm512_set1_epi32(a2[k4]), wv);                                                \
        c3 = dpbusd(c3, _mm512_set1_epi32(a3[k4]), wv);                                                \
        c4 = dpbusd(c4, _mm512_set1_epi32(a4[k4]), wv);                                                \
        c5 = dpbusd(c5, _mm512_set1_epi32(a5[k4]), wv);                                                \
        c6 = dpbusd(c6, _mm512_set1_epi32(a6[k4]), wv);                                                \
        c7 = dpbusd(c7, _mm512_set1_epi32(a7[k4]), wv);                                                \
    }

/* The exact integer sums of one block for 8 tokens (16 rows each): Σ_s sc_s·Σ (q+128)·c − 128·Σ sc·c. A function of
 * its own with named accumulators: inlined into the token loop, gcc copied them between registers every step. */
AVX512 __attribute__((noinline)) static void block_isums(const tile *tl, const int32_t *const A[TOK], int b, int bs,
                                                         int L, __m512i out[TOK]) {
    const int8_t *wc = tl->c;
    const int32_t *a0 = A[0], *a1 = A[1], *a2 = A[2], *a3 = A[3], *a4 = A[4], *a5 = A[5], *a6 = A[6], *a7 = A[7];
    const __m512i off = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_loadu_si512((const void *)(tl->off + b * ROWS)));
    if (L == bs) { /* one scale per block, 1: no products by scales */
        __m512i c0 = off, c1 = off, c2 = off, c3 = off, c4 = off, c5 = off, c6 = off, c7 = off;
        DPBUSD_SPAN(b * (bs / 4), bs / 4)
        out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3, out[4] = c4, out[5] = c5, out[6] = c6, out[7] = c7;
        return;
    }
    __m512i s0 = off, s1 = off, s2 = off, s3 = off, s4 = off, s5 = off, s6 = off, s7 = off;
    for (int s = 0; s < bs / L; s++) {
        __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        DPBUSD_SPAN(b * (bs / 4) + s * (L / 4), L / 4)
        const __m512i sv = _mm512_loadu_si512((const void *)(tl->sc + ((size_t)b * (bs / 16) + s * (L / 16)) * ROWS));
        s0 = _mm512_add_epi32(s0, _mm512_mullo_epi32(c0, sv));
        s1 = _mm512_add_epi32(s1, _mm512_mullo_epi32(c1, sv));
        s2 = _mm512_add_epi32(s2, _mm512_mullo_epi32(c2, sv));
        s3 = _mm512_add_epi32(s3, _mm512_mullo_epi32(c3, sv));
        s4 = _mm512_add_epi32(s4, _mm512_mullo_epi32(c4, sv));
        s5 = _mm512_add_epi32(s5, _mm512_mullo_epi32(c5, sv));
        s6 = _mm512_add_epi32(s6, _mm512_mullo_epi32(c6, sv));
        s7 = _mm512_add_epi32(s7, _mm512_mullo_epi32(c7, sv));
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3, out[4] = s4, out[5] = s5, out[6] = s6, out[7] = s7;
}

AVX512 static void tile_tokens(const tile *tl, int K, int bs, int L, epilogue e, const ql_kq_act *a, int t0,
                               float *y, int64_t ldy, int nr, bool accumulate) {
    const int nb = K / bs;
    __m512 yacc[TOK];
    for (int i = 0; i < TOK; i++) yacc[i] = _mm512_setzero_ps();
    const int32_t *A[TOK]; /* the unsigned codes of 8 tokens, 4 at a time (one int32 per broadcast) */
    for (int i = 0; i < TOK; i++) A[i] = (const int32_t *)(a->qu + (size_t)(t0 + i) * K);
    for (int b = 0; b < nb; b++) {
        __m512i acc[TOK];
        block_isums(tl, A, b, bs, L, acc);
        const __m512 dw = _mm512_loadu_ps(tl->dw + b * ROWS), dmin = _mm512_loadu_ps(tl->dmin + b * ROWS);
        for (int i = 0; i < TOK; i++) {
            const int t = t0 + i;
            const int32_t *sums;
            const int nm = min_sums(e, a, t, b, &sums);
            __m512 v = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(acc[i]));
            if (nm) { /* Σ m·sum by pairs: int16 mins × int16 code sums */
                const uint32_t *pairs = nm == 16 ? a->mpair + (size_t)a->T8 * (K / 64) + (size_t)t * (K / 32) + b * 8
                                                 : a->mpair + (size_t)t * (K / 64) + b * 4;
                __m512i ms = _mm512_setzero_si512();
                for (int s2 = 0; s2 < nm / 2; s2++)
                    ms = _mm512_dpwssd_epi32(ms, _mm512_loadu_si512((const void *)(tl->m + (b * nm / 2 + s2) * ROWS * 2)),
                                             _mm512_set1_epi32((int)pairs[s2]));
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
    tile tl = {ql_malloc((size_t)K * ROWS), ql_malloc((size_t)(K / 16) * ROWS * sizeof(int32_t)),
               ql_malloc((size_t)nb * ROWS * sizeof(int32_t)), ql_malloc((size_t)(K / 16) * ROWS * sizeof(int16_t)),
               ql_malloc((size_t)nb * ROWS * sizeof(float)), ql_malloc((size_t)nb * ROWS * sizeof(float))};
    for (int n0 = 0; n0 < nr; n0 += ROWS) {
        const int nt = QL_MIN(ROWS, nr - n0);
        const int L = decode_tile(type, rows + n0 * row_bytes, row_bytes, nt, K, &tl);
        for (int t0 = 0; t0 < a->T; t0 += TOK)
            tile_tokens(&tl, K, bs, L, epilogue_of(type), a, t0, y + n0, ldy, nt, accumulate);
    }
    free(tl.c), free(tl.sc), free(tl.off), free(tl.m), free(tl.dw), free(tl.dmin);
}
