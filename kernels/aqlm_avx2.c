/* aqlm_avx2.c — the AVX2 twin of ql_aqlm_dequantize_ref (kernels/aqlm.c): one group of 8 weights is one
 * 256-bit register, the M codewords are added in codebook order and the sum multiplied by the row scale, the
 * same two roundings per step as the reference, so the floats are identical (tests/test_aqlm.c checks it on
 * random and adversarial tensors). Falls back to the reference below AVX2 (ql_simd_level_get). Also the AVX2
 * scatter of the encoder's least-squares assembly (bit-identical to the plain loop in kernels/aqlm.c). */
#include "kernels/aqlm.h"
#include "kernels/simd.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

__attribute__((target("avx2"))) static void decode_avx2(int M, int B, const void *src, float *dst, int64_t nrows,
                                                         int64_t ncols) {
    const int64_t K = (int64_t)1 << B, ng = (ncols + QL_AQLM_GROUP - 1) / QL_AQLM_GROUP;
    const uint8_t *p = src;
    float *cb = malloc((size_t)(M * K * QL_AQLM_GROUP) * sizeof(float));
    if (!cb) return;
    for (int64_t i = 0; i < M * K * QL_AQLM_GROUP; i++)
        cb[i] = ql_fp16_to_fp32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    const uint8_t *sc = p + M * K * QL_AQLM_GROUP * 2, *codes = sc + 2 * nrows;
    for (int64_t r = 0; r < nrows; r++) {
        const __m256 s = _mm256_set1_ps(ql_fp16_to_fp32((uint16_t)(sc[2 * r] | sc[2 * r + 1] << 8)));
        for (int64_t j = 0; j < ng; j++) {
            __m256 acc = _mm256_setzero_ps();
            const int64_t base = (r * ng + j) * M;
            for (int m = 0; m < M; m++) {
                const int64_t i = base + m;
                const int64_t k = B <= 8 ? codes[i] : (codes[2 * i] | codes[2 * i + 1] << 8);
                acc = _mm256_add_ps(acc, _mm256_loadu_ps(cb + (m * K + k) * QL_AQLM_GROUP));
            }
            acc = _mm256_mul_ps(acc, s);
            float *o = dst + r * ncols + j * QL_AQLM_GROUP;
            if (ncols - j * QL_AQLM_GROUP >= QL_AQLM_GROUP)
                _mm256_storeu_ps(o, acc);
            else {
                float t[QL_AQLM_GROUP];
                _mm256_storeu_ps(t, acc);
                memcpy(o, t, (size_t)(ncols - j * QL_AQLM_GROUP) * sizeof(float));
            }
        }
    }
    free(cb);
}

void ql_aqlm_dequantize_avx2(int M, int B, const void *src, float *dst, int64_t nrows, int64_t ncols) {
    if (ql_simd_level_get() >= QL_SIMD_AVX2)
        decode_avx2(M, B, src, dst, nrows, ncols);
    else
        ql_aqlm_dequantize_ref(M, B, src, dst, nrows, ncols);
}

/* One row's contribution to the least-squares matrix: 8×8 blocks of H (64 floats each, [d][e]) scaled by s2
 * and added to 8×8 blocks of A (64 doubles each); 4-wide, multiply then add (no FMA), as the plain loop. */
__attribute__((target("avx2"))) void ql_aqlm_ls_scatter_avx2(double *ab, const float *hb, double s2,
                                                             const int32_t *j2, const uint16_t *k2, int64_t cnt) {
    const __m256d vs = _mm256_set1_pd(s2);
    for (int64_t i = 0; i < cnt; i++) {
        double *ar = ab + (int64_t)k2[i] * QL_AQLM_GROUP * QL_AQLM_GROUP;
        const float *hr = hb + (int64_t)j2[i] * QL_AQLM_GROUP * QL_AQLM_GROUP;
        for (int e = 0; e < QL_AQLM_GROUP * QL_AQLM_GROUP; e += 4) {
            const __m256d hv = _mm256_cvtps_pd(_mm_loadu_ps(hr + e));
            _mm256_storeu_pd(ar + e, _mm256_add_pd(_mm256_loadu_pd(ar + e), _mm256_mul_pd(vs, hv)));
        }
    }
}
