/* e8p_avx2.c — the AVX2 twin of ql_e8p_scan_ref (kernels/e8p.c): eight patterns per register, one lane
 * each, every lane doing the reference's arithmetic in the reference's order (products rounded before
 * sums, no FMA), so distances are bit-identical; each lane keeps its first best and the lanes reduce to
 * the least distance with the smallest pattern, which is the reference's "first best". tests/test_quip.c
 * checks equality on random and adversarial inputs (zeros, Inf, NaN, huge values). */
#include "kernels/e8p_internal.h"

#ifdef QL_E8P_AVX2
#include <immintrin.h>
#include <limits.h>

__attribute__((target("avx2"))) float ql_e8p_scan_avx2(const float az[8], unsigned neg, float zz, int npat,
                                                       unsigned *code) {
    const ql_e8p_tables_t *t = ql_e8p_tables();
    const __m256 BIG = _mm256_set1_ps(1e30f), ZZ = _mm256_set1_ps(zz), TWO = _mm256_set1_ps(2.0f);
    const __m256i THREE = _mm256_set1_epi32(3), NEG = _mm256_set1_epi32((int)neg);
    __m256 AZ[8];
    for (int i = 0; i < 8; i++) AZ[i] = _mm256_set1_ps(az[i]);
    __m256 bd = BIG;
    __m256i bk = _mm256_set1_epi32(INT_MAX), bs = _mm256_setzero_si256();
    __m256i kidx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int k0 = 0; k0 < npat; k0 += 8) {
        __m256 score = _mm256_setzero_ps(), mincost = BIG;
        __m256i imin = _mm256_setzero_si256(), sum = _mm256_setzero_si256();
        for (int i = 0; i < 8; i++) {
            const __m256 c = _mm256_mul_ps(_mm256_loadu_ps(&t->patf_t[i][k0]), AZ[i]);
            score = _mm256_add_ps(score, c);
            const __m256 lt = _mm256_cmp_ps(c, mincost, _CMP_LT_OQ);
            mincost = _mm256_blendv_ps(mincost, c, lt);
            imin = _mm256_blendv_epi8(imin, _mm256_set1_epi32(i), _mm256_castps_si256(lt));
            const __m256i p = _mm256_loadu_si256((const __m256i *)&t->pat_t[i][k0]);
            sum = (neg >> i & 1) ? _mm256_sub_epi32(sum, p) : _mm256_add_epi32(sum, p);
        }
        /* parity broken (sum & 3 != 0): flip the cheapest coordinate */
        const __m256i broken = _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_and_si256(sum, THREE), _mm256_setzero_si256()),
                                                _mm256_set1_epi32(-1));
        score = _mm256_blendv_ps(score, _mm256_sub_ps(score, _mm256_mul_ps(TWO, mincost)), _mm256_castsi256_ps(broken));
        const __m256i flip = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(1), imin), broken);
        const __m256i s = _mm256_xor_si256(NEG, flip);
        const __m256 d = _mm256_sub_ps(_mm256_add_ps(ZZ, _mm256_loadu_ps(&t->norm[k0])), _mm256_mul_ps(TWO, score));
        const __m256 better = _mm256_cmp_ps(d, bd, _CMP_LT_OQ);
        bd = _mm256_blendv_ps(bd, d, better);
        bk = _mm256_blendv_epi8(bk, kidx, _mm256_castps_si256(better));
        bs = _mm256_blendv_epi8(bs, s, _mm256_castps_si256(better));
        kidx = _mm256_add_epi32(kidx, _mm256_set1_epi32(8));
    }
    float d[8];
    int k[8], s[8];
    _mm256_storeu_ps(d, bd);
    _mm256_storeu_si256((__m256i *)k, bk);
    _mm256_storeu_si256((__m256i *)s, bs);
    int best = -1;
    for (int l = 0; l < 8; l++) {
        if (k[l] == INT_MAX) continue;
        if (best < 0 || d[l] < d[best] || (d[l] == d[best] && k[l] < k[best])) best = l;
    }
    if (best < 0) {
        *code = 0;
        return 1e30f;
    }
    *code = (unsigned)k[best] << 8 | ((unsigned)s[best] & 127u);
    return d[best];
}
#endif
