/* kquant_gemm.c — K-quant weights times Q8_K activations as integer dot products (kernels/kquant_gemm.h): the
 * scalar reference and an AVX-512 VNNI twin. Why: the preview of a K-quant model spent ~80 % of its time in sgemm
 * over weights decoded to F32, at this CPU's F32 peak; llama.cpp runs the same products on int8/int16 units.
 * The twin decodes 16 rows at a time into int16 codes sc·q laid out [K/2][16 rows][2] (one 64-byte vector per
 * pair of columns) and multiplies 8 tokens at a time with vpdpwssd (16 rows × 2 columns × 8 tokens a step). */
#include "kernels/kquant_gemm.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"
#include "base/ql_common.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { QB = 256, ROWS = 16, TOK = 8 };

/* ---- activations ---- */

static bool act_alloc(int T, int K, ql_kq_act *a) {
    memset(a, 0, sizeof *a);
    a->T = T, a->T8 = (T + TOK - 1) / TOK * TOK, a->K = K;
    a->q = calloc((size_t)a->T8 * K, sizeof *a->q);
    a->d = calloc((size_t)a->T8 * (K / QB), sizeof *a->d);
    a->bsum = calloc((size_t)a->T8 * (K / 32), sizeof *a->bsum);
    if (a->q && a->d && a->bsum) return true;
    ql_kq_act_free(a);
    return false;
}

void ql_kq_act_free(ql_kq_act *a) {
    free(a->q), free(a->d), free(a->bsum);
    memset(a, 0, sizeof *a);
}

/* the codes kernels/act_round.c's Q8_K reference rounds to: scale -127/x of the first largest |x| */
bool ql_kq_act_quantize_ref(const float *x, int T, int K, ql_kq_act *a) {
    if (!act_alloc(T, K, a)) return false;
    for (int t = 0; t < T; t++)
        for (int b = 0; b < K / QB; b++) {
            const float *v = x + (size_t)t * K + (size_t)b * QB;
            int16_t *q = a->q + (size_t)t * K + (size_t)b * QB;
            float amax = 0, mx = 0;
            for (int j = 0; j < QB; j++) {
                if (!isfinite(v[j])) {
                    ql_kq_act_free(a);
                    return false;
                }
                if (fabsf(v[j]) > amax) amax = fabsf(v[j]), mx = v[j];
            }
            if (amax == 0) continue; /* codes, scale and sums stay 0: the rounded block is 0 */
            const float iscale = -127.f / mx;
            a->d[(size_t)t * (K / QB) + b] = 1.0f / iscale;
            for (int j = 0; j < QB; j++) {
                const int c = (int)nearbyintf(iscale * v[j]);
                q[j] = (int16_t)(c > 127 ? 127 : c);
            }
            for (int s = 0; s < QB / 32; s++) {
                int32_t sum = 0;
                for (int j = 0; j < 32; j++) sum += q[32 * s + j];
                a->bsum[(size_t)t * (K / 32) + b * 8 + s] = sum;
            }
        }
    return true;
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

AVX512 static bool act_block_avx512(const float *v, int16_t *q, float *d, int32_t *bsum) {
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
        bsum[j / 32] = _mm512_reduce_add_epi32(_mm512_add_epi32(c[0], c[1]));
    }
    return true;
}

bool ql_kq_act_quantize(const float *x, int T, int K, ql_kq_act *a) {
    if (!ql_kq_gemm_available(QL_TYPE_Q6_K)) return ql_kq_act_quantize_ref(x, T, K, a);
    if (!act_alloc(T, K, a)) return false;
    for (int t = 0; t < T; t++)
        for (int b = 0; b < K / QB; b++)
            if (!act_block_avx512(x + (size_t)t * K + (size_t)b * QB, a->q + (size_t)t * K + (size_t)b * QB,
                                  a->d + (size_t)t * (K / QB) + b, a->bsum + (size_t)t * (K / 32) + b * 8)) {
                ql_kq_act_free(a);
                return false;
            }
    return true;
}

/* ---- one 256-block of a weight row: int16 codes sc·q, the block scale, and (Q4_K) dmin and the 8 mins ---- */

static void decode_block(uint32_t type, const uint8_t *blk, int16_t w[QB], float *dw, float *dmin, int32_t m[8]) {
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
    const blk_q6_K *x = (const blk_q6_K *)blk; /* Q6_K */
    *dw = ql_fp16_to_fp32(x->d), *dmin = 0;
    memset(m, 0, 8 * sizeof *m);
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
    return type == QL_TYPE_Q4_K ? (int64_t)sizeof(blk_q4_K) : type == QL_TYPE_Q5_K ? (int64_t)sizeof(blk_q5_K) : (int64_t)sizeof(blk_q6_K);
}

bool ql_kq_gemm_available(uint32_t type) {
    static int vnni = -1;
    if (vnni < 0) vnni = ql_simd_detect() >= QL_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni");
    return vnni && ql_simd_level_get() >= QL_SIMD_AVX512 && (type == QL_TYPE_Q4_K || type == QL_TYPE_Q5_K || type == QL_TYPE_Q6_K);
}

/* the float steps of one block, shared by both versions in this order: da·(dw·isum − dmin·msum) */
static inline float block_term(float da, float dw, float dmin, int32_t isum, int32_t msum, bool mins) {
    float v = dw * (float)isum;
    if (mins) v = v - dmin * (float)msum;
    return da * v;
}

void ql_kq_gemm_ref(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, const ql_kq_act *a, float *y,
                    int64_t ldy, bool accumulate) {
    const int K = a->K, nb = K / QB;
    const bool mins = type != QL_TYPE_Q6_K;
    int16_t w[QB];
    int32_t m[8];
    float *acc = malloc((size_t)a->T * sizeof *acc);
    for (int n = 0; n < nr; n++) {
        for (int t = 0; t < a->T; t++) acc[t] = 0;
        for (int b = 0; b < nb; b++) {
            float dw, dmin;
            decode_block(type, rows + n * row_bytes + b * block_bytes(type), w, &dw, &dmin, m);
            for (int t = 0; t < a->T; t++) {
                const int16_t *q = a->q + (size_t)t * K + (size_t)b * QB;
                int32_t isum = 0, msum = 0;
                for (int j = 0; j < QB; j++) isum += (int32_t)q[j] * w[j];
                for (int s = 0; s < 8; s++) msum += m[s] * a->bsum[(size_t)t * (K / 32) + b * 8 + s];
                acc[t] = acc[t] + block_term(a->d[(size_t)t * nb + b], dw, dmin, isum, msum, mins);
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
    const int nb = K / QB;
    int16_t w[QB];
    int32_t m[8];
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < nb; b++) {
            float dw = 0, dmin = 0;
            if (r < nr) decode_block(type, rows + r * row_bytes + b * block_bytes(type), w, &dw, &dmin, m);
            else memset(w, 0, sizeof w), memset(m, 0, sizeof m);
            tl->dw[b * ROWS + r] = dw, tl->dmin[b * ROWS + r] = dmin;
            for (int s = 0; s < 8; s++) tl->m[(b * 8 + s) * ROWS + r] = m[s];
            int16_t *dst = tl->w + (size_t)b * (QB / 2) * (2 * ROWS) + 2 * r;
            for (int k2 = 0; k2 < QB / 2; k2++) dst[k2 * 2 * ROWS] = w[2 * k2], dst[k2 * 2 * ROWS + 1] = w[2 * k2 + 1];
        }
}

AVX512 static void tile_tokens(const tile *tl, int K, bool mins, const ql_kq_act *a, int t0, float *y, int64_t ldy,
                               int nr, bool accumulate) {
    const int nb = K / QB;
    __m512 yacc[TOK];
    for (int i = 0; i < TOK; i++) yacc[i] = _mm512_setzero_ps();
    const int32_t *A[TOK];
    for (int i = 0; i < TOK; i++) A[i] = (const int32_t *)(a->q + (size_t)(t0 + i) * K);
    for (int b = 0; b < nb; b++) {
        /* eight named accumulators: as an array, gcc keeps them in memory (a load and a store per vpdpwssd) */
        __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        const int16_t *wb = tl->w + (size_t)b * (QB / 2) * (2 * ROWS);
        const int32_t *a0 = A[0] + b * (QB / 2), *a1 = A[1] + b * (QB / 2), *a2 = A[2] + b * (QB / 2),
                      *a3 = A[3] + b * (QB / 2), *a4 = A[4] + b * (QB / 2), *a5 = A[5] + b * (QB / 2),
                      *a6 = A[6] + b * (QB / 2), *a7 = A[7] + b * (QB / 2);
        for (int k2 = 0; k2 < QB / 2; k2++) {
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
            __m512 v = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(acc[i]));
            if (mins) {
                __m512i ms = _mm512_setzero_si512();
                for (int s = 0; s < 8; s++)
                    ms = _mm512_add_epi32(ms, _mm512_mullo_epi32(_mm512_loadu_si512((const void *)(tl->m + (b * 8 + s) * ROWS)),
                                                                 _mm512_set1_epi32(a->bsum[(size_t)t * (K / 32) + b * 8 + s])));
                v = _mm512_sub_ps(v, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(ms)));
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
    const int K = a->K, nb = K / QB;
    tile tl = {malloc((size_t)K * ROWS * sizeof(int16_t)), malloc((size_t)nb * ROWS * sizeof(float)),
               malloc((size_t)nb * ROWS * sizeof(float)), malloc((size_t)nb * 8 * ROWS * sizeof(int32_t))};
    if (!tl.w || !tl.dw || !tl.dmin || !tl.m) ql_abort("out of memory for a K-quant tile");
    for (int n0 = 0; n0 < nr; n0 += ROWS) {
        const int nt = QL_MIN(ROWS, nr - n0);
        decode_tile(type, rows + n0 * row_bytes, row_bytes, nt, K, &tl);
        for (int t0 = 0; t0 < a->T; t0 += TOK)
            tile_tokens(&tl, K, type != QL_TYPE_Q6_K, a, t0, y + n0, ldy, nt, accumulate);
    }
    free(tl.w), free(tl.dw), free(tl.dmin), free(tl.m);
}
