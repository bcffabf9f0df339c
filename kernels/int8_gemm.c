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
/* Tiles of 2 activation rows × 4 weight rows: 8 accumulators + 6 operands fit AVX2's 16 registers. Rows
 * past the edge repeat the last row (loads stay in bounds, results are not stored). */
__attribute__((target("avx2"))) static void gemm_avx2(const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw,
                                                      int T, int N, int K, int32_t *c, int64_t ldc) {
    enum { MR = 2, NR = 4 };
    const __m256i off = _mm256_set1_epi16(128);
    const int K16 = K & ~15;
    for (int t0 = 0; t0 < T; t0 += MR)
        for (int n0 = 0; n0 < N; n0 += NR) {
            const int8_t *ar[MR];
            const uint8_t *wr[NR];
            for (int i = 0; i < MR; i++) ar[i] = a + (int64_t)(t0 + i < T ? t0 + i : T - 1) * lda;
            for (int j = 0; j < NR; j++) wr[j] = w + (int64_t)(n0 + j < N ? n0 + j : N - 1) * ldw;
            __m256i acc[MR][NR];
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_si256();
            for (int k = 0; k < K16; k += 16) {
                __m256i av[MR], wv[NR];
                for (int i = 0; i < MR; i++) av[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ar[i] + k)));
                for (int j = 0; j < NR; j++)
                    wv[j] = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(wr[j] + k))), off);
                for (int i = 0; i < MR; i++)
                    for (int j = 0; j < NR; j++) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av[i], wv[j]));
            }
            for (int i = 0; i < MR && t0 + i < T; i++)
                for (int j = 0; j < NR && n0 + j < N; j++) {
                    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[i][j]), _mm256_extracti128_si256(acc[i][j], 1));
                    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
                    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
                    int32_t sum = _mm_cvtsi128_si32(s);
                    for (int k = K16; k < K; k++) sum += (int32_t)ar[i][k] * ((int32_t)wr[j][k] - 128);
                    c[(int64_t)(t0 + i) * ldc + n0 + j] = sum;
                }
        }
}

/* Tiles of 4 × 4: 16 accumulators + 8 operands of AVX-512's 32 registers. dpbusd multiplies unsigned by
 * signed bytes, so the weights go in as their stored codes and 128·Σa[t] comes off at the end; a masked
 * load zeroes the tail of K on both sides. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void gemm_vnni(const int8_t *a, int64_t lda,
                                                                             const uint8_t *w, int64_t ldw, int T,
                                                                             int N, int K, int32_t *c, int64_t ldc) {
    enum { MR = 4, NR = 4 };
    for (int t0 = 0; t0 < T; t0 += MR) {
        const int8_t *ar[MR];
        int32_t asum[MR];
        for (int i = 0; i < MR; i++) {
            ar[i] = a + (int64_t)(t0 + i < T ? t0 + i : T - 1) * lda;
            int32_t s = 0;
            for (int k = 0; k < K; k++) s += ar[i][k];
            asum[i] = s;
        }
        for (int n0 = 0; n0 < N; n0 += NR) {
            const uint8_t *wr[NR];
            for (int j = 0; j < NR; j++) wr[j] = w + (int64_t)(n0 + j < N ? n0 + j : N - 1) * ldw;
            __m512i acc[MR][NR];
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_si512();
            for (int k = 0; k < K; k += 64) {
                const __mmask64 m = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
                __m512i av[MR], wv[NR];
                for (int i = 0; i < MR; i++) av[i] = _mm512_maskz_loadu_epi8(m, ar[i] + k);
                for (int j = 0; j < NR; j++) wv[j] = _mm512_maskz_loadu_epi8(m, wr[j] + k);
                for (int i = 0; i < MR; i++)
                    for (int j = 0; j < NR; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], wv[j], av[i]);
            }
            for (int i = 0; i < MR && t0 + i < T; i++)
                for (int j = 0; j < NR && n0 + j < N; j++)
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
