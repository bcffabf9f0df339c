/* iq_quants_avx2.c — the AVX2 twin of ql_iq_nbr_search_ref (kernels/iq_quants_ref.c), the off-grid
 * neighbour search that dominates ggml's i-quant quantizers (~60% of their time, perf on IQ2/IQ3/IQ1):
 * eight list entries per register, one lane each. A lane gathers its point's packed key, takes each
 * coordinate's level out of it and its value from qtab with one permute, and does the reference's
 * arithmetic in the reference's order (no FMA: products rounded before sums), so every d2 is
 * bit-identical; each lane keeps its first best, and the lanes reduce to the least d2 at the smallest
 * list position, which is the reference's first best. Tested by tests/test_iquants.c (random and
 * adversarial lists and values: zeros, Inf, NaN, huge outliers) and by whole quantizers at both levels. */
#include "kernels/iq_quants_internal.h"

#ifdef QL_IQ_NBR_AVX2
#include <float.h>
#include <immintrin.h>

__attribute__((target("avx2"))) int ql_iq_nbr_search_avx2(const uint16_t *nb, const int32_t *keys, int dim, int bits,
                                                          const float *qtab, float s, const float *x,
                                                          const float *w) {
    const int cnt = nb[0];
    const __m256 Q = _mm256_loadu_ps(qtab), S = _mm256_set1_ps(s);
    const __m256i MASK = _mm256_set1_epi32((1 << bits) - 1), CNT = _mm256_set1_epi32(cnt);
    const __m256i EIGHT = _mm256_set1_epi32(8);
    __m256 X[8], W[8];
    for (int j = 0; j < dim; j++) X[j] = _mm256_set1_ps(x[j]), W[j] = _mm256_set1_ps(w[j]);
    __m256 best = _mm256_set1_ps(FLT_MAX);
    __m256i bpos = _mm256_set1_epi32(-1), pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int p = 0; p < cnt; p += 8, pos = _mm256_add_epi32(pos, EIGHT)) {
        /* lanes past the list's end read whatever follows it (the caller keeps 8 entries readable) and
         * are masked out of the gather and of the comparison */
        const __m256i in = _mm256_cmpgt_epi32(CNT, pos);
        const __m256i gi = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(nb + 1 + p)));
        const __m256i key = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), keys, gi, in, 4);
        __m256 d2 = _mm256_setzero_ps();
        for (int j = 0; j < dim; j++) {
            const __m256i lvl = _mm256_and_si256(_mm256_srl_epi32(key, _mm_cvtsi32_si128(bits * j)), MASK);
            const __m256 diff = _mm256_sub_ps(_mm256_mul_ps(S, _mm256_permutevar8x32_ps(Q, lvl)), X[j]);
            d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(W[j], diff), diff));
        }
        const __m256 lt = _mm256_and_ps(_mm256_cmp_ps(d2, best, _CMP_LT_OQ), _mm256_castsi256_ps(in));
        best = _mm256_blendv_ps(best, d2, lt);
        bpos = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bpos), _mm256_castsi256_ps(pos), lt));
    }
    /* the least d2 over the lanes, then the smallest position among the lanes holding it (a lane that
     * never won holds FLT_MAX and position -1, and is left out) */
    __m256 m = _mm256_min_ps(best, _mm256_permute2f128_ps(best, best, 1));
    m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m256i won = _mm256_andnot_si256(_mm256_cmpeq_epi32(bpos, _mm256_set1_epi32(-1)),
                                            _mm256_castps_si256(_mm256_cmp_ps(best, m, _CMP_EQ_OQ)));
    __m256i pm = _mm256_blendv_epi8(_mm256_set1_epi32(0x7fffffff), bpos, won);
    pm = _mm256_min_epi32(pm, _mm256_permute2x128_si256(pm, pm, 1));
    pm = _mm256_min_epi32(pm, _mm256_shuffle_epi32(pm, _MM_SHUFFLE(1, 0, 3, 2)));
    pm = _mm256_min_epi32(pm, _mm256_shuffle_epi32(pm, _MM_SHUFFLE(2, 3, 0, 1)));
    const int b = _mm256_cvtsi256_si32(pm);
    return b == 0x7fffffff ? -1 : nb[1 + b];
}
#endif
