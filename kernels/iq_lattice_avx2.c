/* iq_lattice_avx2.c — the AVX2 twin of ql_iq_lattice_search_ref (kernels/iq_lattice.c): eight grid points
 * per register, one lane each, every lane doing the reference's arithmetic in the reference's order (no
 * FMA: products rounded before sums), so costs are bit-identical; each lane keeps its first best, and the
 * lanes reduce to the least cost with the smallest grid index, which is the reference's "first best".
 * tests/test_iq_lattice.c checks equality on random and adversarial inputs (zeros, Inf, NaN, outliers). */
#include "kernels/iq_lattice_internal.h"

#ifdef QL_IQ_LATTICE_AVX2
#include <immintrin.h>
#include <math.h>

static void reduce(const float *cost, const int *gi, const int *fj, ql_iq_lattice_best *o, int which) {
    int best = -1;
    for (int k = 0; k < 8; k++) {
        if (gi[k] < 0) continue;
        if (best < 0 || cost[k] < cost[best] || (cost[k] == cost[best] && gi[k] < gi[best])) best = k;
    }
    if (which == 0) {
        o->gi = best < 0 ? 0 : gi[best];
        o->cost = best < 0 ? INFINITY : cost[best];
    } else {
        o->fgi = best < 0 ? 0 : gi[best];
        o->fj = best < 0 ? 0 : fj[best];
        o->fcost = best < 0 ? INFINITY : cost[best];
    }
}

__attribute__((target("avx2"))) void ql_iq_lattice_search_avx2(const float *ct, int npts, int dim, float s,
                                                               const float *ax, const float *w,
                                                               ql_iq_lattice_best *out) {
    const __m256 S = _mm256_set1_ps(s), INF = _mm256_set1_ps(INFINITY), FOUR = _mm256_set1_ps(4.0f);
    __m256 bc = INF, bf = INF;
    __m256i bgi = _mm256_set1_epi32(-1), bfgi = _mm256_set1_epi32(-1), bfj = _mm256_setzero_si256();
    __m256i gidx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i EIGHT = _mm256_set1_epi32(8);
    __m256 AX[8], W[8], W4AX[8];
    for (int j = 0; j < dim; j++) {
        AX[j] = _mm256_set1_ps(ax[j]);
        W[j] = _mm256_set1_ps(w[j]);
        W4AX[j] = _mm256_mul_ps(_mm256_mul_ps(FOUR, W[j]), AX[j]); /* (4·w)·ax, as the reference */
    }
    for (int g0 = 0; g0 < npts; g0 += 8, gidx = _mm256_add_epi32(gidx, EIGHT)) {
        __m256 cost = _mm256_setzero_ps(), pen = INF;
        __m256i jp = _mm256_setzero_si256();
        for (int j = 0; j < dim; j++) {
            const __m256 v = _mm256_mul_ps(S, _mm256_loadu_ps(ct + j * npts + g0));
            const __m256 d = _mm256_sub_ps(AX[j], v);
            cost = _mm256_add_ps(cost, _mm256_mul_ps(_mm256_mul_ps(W[j], d), d));
            const __m256 p = _mm256_mul_ps(W4AX[j], v);
            const __m256 lt = _mm256_cmp_ps(p, pen, _CMP_LT_OQ);
            pen = _mm256_blendv_ps(pen, p, lt);
            jp = _mm256_castps_si256(
                _mm256_blendv_ps(_mm256_castsi256_ps(jp), _mm256_castsi256_ps(_mm256_set1_epi32(j)), lt));
        }
        const __m256 m = _mm256_cmp_ps(cost, bc, _CMP_LT_OQ);
        bc = _mm256_blendv_ps(bc, cost, m);
        bgi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bgi), _mm256_castsi256_ps(gidx), m));
        const __m256 cf = _mm256_add_ps(cost, pen);
        const __m256 mf = _mm256_cmp_ps(cf, bf, _CMP_LT_OQ);
        bf = _mm256_blendv_ps(bf, cf, mf);
        bfgi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bfgi), _mm256_castsi256_ps(gidx), mf));
        bfj = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bfj), _mm256_castsi256_ps(jp), mf));
    }
    float c[8], f[8];
    int gi[8], fgi[8], fj[8];
    _mm256_storeu_ps(c, bc);
    _mm256_storeu_ps(f, bf);
    _mm256_storeu_si256((__m256i *)gi, bgi);
    _mm256_storeu_si256((__m256i *)fgi, bfgi);
    _mm256_storeu_si256((__m256i *)fj, bfj);
    reduce(c, gi, NULL, out, 0);
    reduce(f, fgi, fj, out, 1);
}
#endif
