/* int8_gemm.c — the INT8×INT8→INT32 products of kernels/int8_gemm.h: the scalar reference, an AVX2 twin
 * (int8 widened to int16, _mm256_madd_epi16) and an AVX-512 VNNI twin (_mm512_dpbusd_epi32 on the unsigned
 * weight codes, with the −128 offset taken out afterwards as 128·Σa). Integer sums are exact whatever the
 * order, so the twins equal the reference exactly; the kernels only differ in speed. */
#include "kernels/int8_gemm.h"
#include "base/parallel.h"
#include "kernels/simd.h"

#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#define QL_I8_X86 1
#include <immintrin.h>
#endif

void ql_gemm_s8u8_ref(const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw, int T, int N, int K, int32_t *c,
                      int64_t ldc) {
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            const int8_t *ar = a + (int64_t)t * lda;
            const uint8_t *wr = w + (int64_t)n * ldw;
            int32_t s = 0;
            for (int k = 0; k < K; k++) s += (int32_t)ar[k] * ((int32_t)wr[k] - 128);
            c[(int64_t)t * ldc + n] = s;
        }
}

#if QL_I8_X86
/* The tiles below are written out by hand (named accumulators): GCC at -O2 does not keep an array of
 * vector accumulators in registers, and a spilled accumulator costs most of the speed. Rows past the edge
 * repeat the last row (loads stay in bounds; those results are not stored). */

/* AVX2: 2 activation rows × 4 weight rows, int8 widened to int16 and multiplied pairwise into int32 by
 * madd (exact: |a·w| ≤ 127·128, two per lane); 8 accumulators + 6 operands of the 16 registers. */
__attribute__((target("avx2"))) static inline int32_t hsum256_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2"))) static void gemm_avx2(const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw,
                                                      int T, int N, int K, int32_t *c, int64_t ldc) {
    const __m256i off = _mm256_set1_epi16(128);
    const int K16 = K & ~15;
    for (int t0 = 0; t0 < T; t0 += 2) {
        const int8_t *a0 = a + (int64_t)t0 * lda, *a1 = a + (int64_t)(t0 + 1 < T ? t0 + 1 : t0) * lda;
        for (int n0 = 0; n0 < N; n0 += 4) {
            const uint8_t *w0 = w + (int64_t)n0 * ldw, *w1 = w + (int64_t)(n0 + 1 < N ? n0 + 1 : n0) * ldw;
            const uint8_t *w2 = w + (int64_t)(n0 + 2 < N ? n0 + 2 : n0) * ldw;
            const uint8_t *w3 = w + (int64_t)(n0 + 3 < N ? n0 + 3 : n0) * ldw;
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
                    c13 = c00;
            for (int k = 0; k < K16; k += 16) {
#define LW(p) _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)((p) + k))), off)
                const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a0 + k)));
                const __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a1 + k)));
                __m256i v = LW(w0);
                c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(x0, v));
                c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(x1, v));
                v = LW(w1);
                c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(x0, v));
                c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(x1, v));
                v = LW(w2);
                c02 = _mm256_add_epi32(c02, _mm256_madd_epi16(x0, v));
                c12 = _mm256_add_epi32(c12, _mm256_madd_epi16(x1, v));
                v = LW(w3);
                c03 = _mm256_add_epi32(c03, _mm256_madd_epi16(x0, v));
                c13 = _mm256_add_epi32(c13, _mm256_madd_epi16(x1, v));
#undef LW
            }
            const __m256i acc[2][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}};
            const int8_t *ar[2] = {a0, a1};
            const uint8_t *wr[4] = {w0, w1, w2, w3};
            for (int i = 0; i < 2 && t0 + i < T; i++)
                for (int j = 0; j < 4 && n0 + j < N; j++) {
                    int32_t sum = hsum256_avx2(acc[i][j]);
                    for (int k = K16; k < K; k++) sum += (int32_t)ar[i][k] * ((int32_t)wr[j][k] - 128);
                    c[(int64_t)(t0 + i) * ldc + n0 + j] = sum;
                }
        }
    }
}

/* AVX-512 VNNI: 4 × 4 tiles, 16 accumulators + 8 operands of the 32 registers. dpbusd multiplies unsigned
 * by signed bytes, so the weights go in as their stored codes and 128·Σa[t] comes off at the end; a masked
 * load zeroes the tail of K on both sides. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void gemm_vnni(const int8_t *a, int64_t lda,
                                                                             const uint8_t *w, int64_t ldw, int T,
                                                                             int N, int K, int32_t *c, int64_t ldc) {
    for (int t0 = 0; t0 < T; t0 += 4) {
        const int8_t *ar[4];
        int32_t asum[4];
        for (int i = 0; i < 4; i++) {
            ar[i] = a + (int64_t)(t0 + i < T ? t0 + i : T - 1) * lda;
            int32_t s = 0;
            for (int k = 0; k < K; k++) s += ar[i][k];
            asum[i] = s;
        }
        for (int n0 = 0; n0 < N; n0 += 4) {
            const uint8_t *wr[4];
            for (int j = 0; j < 4; j++) wr[j] = w + (int64_t)(n0 + j < N ? n0 + j : N - 1) * ldw;
            __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
                    c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
            for (int k = 0; k < K; k += 64) {
                const __mmask64 m = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
                const __m512i x0 = _mm512_maskz_loadu_epi8(m, ar[0] + k), x1 = _mm512_maskz_loadu_epi8(m, ar[1] + k);
                const __m512i x2 = _mm512_maskz_loadu_epi8(m, ar[2] + k), x3 = _mm512_maskz_loadu_epi8(m, ar[3] + k);
                __m512i v = _mm512_maskz_loadu_epi8(m, wr[0] + k);
                c00 = _mm512_dpbusd_epi32(c00, v, x0), c10 = _mm512_dpbusd_epi32(c10, v, x1);
                c20 = _mm512_dpbusd_epi32(c20, v, x2), c30 = _mm512_dpbusd_epi32(c30, v, x3);
                v = _mm512_maskz_loadu_epi8(m, wr[1] + k);
                c01 = _mm512_dpbusd_epi32(c01, v, x0), c11 = _mm512_dpbusd_epi32(c11, v, x1);
                c21 = _mm512_dpbusd_epi32(c21, v, x2), c31 = _mm512_dpbusd_epi32(c31, v, x3);
                v = _mm512_maskz_loadu_epi8(m, wr[2] + k);
                c02 = _mm512_dpbusd_epi32(c02, v, x0), c12 = _mm512_dpbusd_epi32(c12, v, x1);
                c22 = _mm512_dpbusd_epi32(c22, v, x2), c32 = _mm512_dpbusd_epi32(c32, v, x3);
                v = _mm512_maskz_loadu_epi8(m, wr[3] + k);
                c03 = _mm512_dpbusd_epi32(c03, v, x0), c13 = _mm512_dpbusd_epi32(c13, v, x1);
                c23 = _mm512_dpbusd_epi32(c23, v, x2), c33 = _mm512_dpbusd_epi32(c33, v, x3);
            }
            const __m512i acc[4][4] = {
                {c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23}, {c30, c31, c32, c33}};
            for (int i = 0; i < 4 && t0 + i < T; i++)
                for (int j = 0; j < 4 && n0 + j < N; j++)
                    c[(int64_t)(t0 + i) * ldc + n0 + j] = _mm512_reduce_add_epi32(acc[i][j]) - 128 * asum[i];
        }
    }
}
#endif

static bool kernel_available(ql_i8gemm_kernel k) {
    switch (k) {
    case QL_I8GEMM_REF: return true;
#if QL_I8_X86
    case QL_I8GEMM_AVX2: return ql_simd_detect() >= QL_SIMD_AVX2;
    case QL_I8GEMM_VNNI:
        __builtin_cpu_init();
        return ql_simd_detect() >= QL_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni");
#endif
    default: return false;
    }
}

bool ql_gemm_s8u8_with(ql_i8gemm_kernel k, const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw, int T, int N,
                       int K, int32_t *c, int64_t ldc) {
    if (!kernel_available(k) || (k != QL_I8GEMM_REF && K > QL_I8GEMM_MAX_K)) return false;
    if (T <= 0 || N <= 0) return true;
    switch (k) {
#if QL_I8_X86
    case QL_I8GEMM_AVX2: gemm_avx2(a, lda, w, ldw, T, N, K, c, ldc); return true;
    case QL_I8GEMM_VNNI: gemm_vnni(a, lda, w, ldw, T, N, K, c, ldc); return true;
#endif
    default: ql_gemm_s8u8_ref(a, lda, w, ldw, T, N, K, c, ldc); return true;
    }
}

ql_i8gemm_kernel ql_gemm_s8u8_best(void) {
    /* QL_FORCE_REF=1 (or a test lowering the level) selects the reference for these kernels too */
    ql_simd_level lv = ql_simd_level_get();
    if (lv >= QL_SIMD_AVX512 && kernel_available(QL_I8GEMM_VNNI)) return QL_I8GEMM_VNNI;
    if (lv >= QL_SIMD_AVX2 && kernel_available(QL_I8GEMM_AVX2)) return QL_I8GEMM_AVX2;
    return QL_I8GEMM_REF;
}

const char *ql_i8gemm_kernel_name(ql_i8gemm_kernel k) {
    static const char *const names[QL_I8GEMM_COUNT] = {"ref", "avx2", "avx512-vnni"};
    return k >= 0 && k < QL_I8GEMM_COUNT ? names[k] : "?";
}

typedef struct {
    ql_i8gemm_kernel k;
    const int8_t *a;
    const uint8_t *w;
    int64_t lda, ldw, ldc;
    int T, N, K;
    int32_t *c;
} gemm_job;

enum { ROWS_PER_ITEM = 64 }; /* weight rows per work item: whole tiles, enough work per thread start */

static void gemm_range(void *ctx, int worker, int64_t begin, int64_t end) {
    (void)worker;
    const gemm_job *j = ctx;
    const int n0 = (int)(begin * ROWS_PER_ITEM), n1 = (int)(end * ROWS_PER_ITEM < j->N ? end * ROWS_PER_ITEM : j->N);
    if (n1 > n0)
        ql_gemm_s8u8_with(j->k, j->a, j->lda, j->w + (int64_t)n0 * j->ldw, j->ldw, j->T, n1 - n0, j->K, j->c + n0,
                          j->ldc);
}

void ql_gemm_s8u8(const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw, int T, int N, int K, int32_t *c,
                  int64_t ldc, int n_threads) {
    ql_i8gemm_kernel k = K <= QL_I8GEMM_MAX_K ? ql_gemm_s8u8_best() : QL_I8GEMM_REF;
    gemm_job j = {.k = k, .a = a, .w = w, .lda = lda, .ldw = ldw, .ldc = ldc, .T = T, .N = N, .K = K, .c = c};
    const int64_t items = (N + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM;
    if (n_threads <= 1 || items < 2) {
        gemm_range(&j, 0, 0, items);
        return;
    }
    ql_parallel_for(n_threads, items, gemm_range, &j);
}
