/* test_hgemm.c — kernels/hgemm.c: F16/BF16 weights × F32 activations as dot products in 16 lanes. The AVX-512
 * twin equals the scalar reference bit for bit (a NaN equals a NaN) for row and token counts that are not whole
 * 4 × 6 tiles, with and without accumulation, on random values and on adversarial ones (zeros, infinities, NaN,
 * huge outliers, subnormal halves); on finite inputs both equal the products summed in double within float
 * rounding; types and widths the kernel does not cover are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/ggml_types.h"
#include "kernels/hgemm.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 - 0.5);
}
static uint16_t narrow(uint32_t type, float v) { return type == QL_TYPE_F16 ? ql_fp32_to_fp16(v) : ql_fp32_to_bf16(v); }
static float widen(uint32_t type, uint16_t h) { return type == QL_TYPE_F16 ? ql_fp16_to_fp32(h) : ql_bf16_to_fp32(h); }

static void check(uint32_t type, int N, int T, int K, bool adversarial) {
    uint16_t *w = malloc((size_t)N * K * sizeof *w);
    float *x = malloc((size_t)T * K * sizeof *x), *yr = malloc((size_t)T * N * sizeof *yr),
          *yv = malloc((size_t)T * N * sizeof *yv);
    for (int64_t i = 0; i < (int64_t)N * K; i++) w[i] = narrow(type, rnd() * (i % 89 == 0 ? 30.0f : 1.0f));
    for (int64_t i = 0; i < (int64_t)T * K; i++) x[i] = rnd() * (i % 53 == 0 ? 100.0f : 1.0f);
    if (adversarial) {
        for (int k = 0; k < K; k++) w[k] = 0, x[k] = 0;            /* row 0 and token 0: zeros */
        w[K + 3] = type == QL_TYPE_F16 ? 0x7c00 : 0x7f80;           /* row 1: +inf */
        w[2 * K + 5] = type == QL_TYPE_F16 ? 0x7e01 : 0x7fc1;       /* row 2: NaN */
        w[3 * K + 7] = type == QL_TYPE_F16 ? 0x0001 : 0x0001;       /* row 3: the smallest subnormal */
        w[3 * K + 8] = type == QL_TYPE_F16 ? 0x7bff : 0x7f7f;       /* ... and the largest finite */
        x[2 * K + 1] = 3e38f, x[2 * K + 2] = -3e38f;                /* token 2: overflow to ±inf */
        x[3 * K + 9] = NAN;                                         /* token 3: NaN */
    }
    for (int acc = 0; acc < 2; acc++) {
        for (int64_t i = 0; i < (int64_t)T * N; i++) yr[i] = yv[i] = acc ? (float)i * 0.5f : NAN;
        ql_hgemm_ref(type, w, N, x, T, K, yr, N, acc);
        if (ql_hgemm_available(type, K)) {
            ql_hgemm_avx512(type, w, N, x, T, K, yv, N, acc);
            for (int64_t i = 0; i < (int64_t)T * N; i++)
                if (memcmp(&yr[i], &yv[i], sizeof(float)) && !(isnan(yr[i]) && isnan(yv[i])))
                    fail_msg("%s N %d T %d K %d acc %d adv %d: y[%lld] ref %a avx512 %a", ql_type_get(type)->name, N, T,
                             K, acc, adversarial, (long long)i, (double)yr[i], (double)yv[i]);
        }
        if (ql_hgemm_available(type, K)) { /* the activations rounded to the weight's type, streamed as 16 bits */
            float *xr = malloc((size_t)T * K * sizeof *xr), *y16 = malloc((size_t)T * N * sizeof *y16);
            uint16_t *x16 = malloc((size_t)T * K * sizeof *x16);
            for (int64_t i = 0; i < (int64_t)T * K; i++) xr[i] = widen(type, narrow(type, x[i]));
            ql_hgemm_narrow(type, xr, (int64_t)T * K, x16);
            for (int64_t i = 0; i < (int64_t)T * K; i++)
                if (x16[i] != narrow(type, xr[i]) && !isnan(xr[i])) fail_msg("narrow: x[%lld]", (long long)i);
            for (int64_t i = 0; i < (int64_t)T * N; i++) yv[i] = y16[i] = acc ? (float)i * 0.5f : NAN;
            ql_hgemm_ref(type, w, N, xr, T, K, yv, N, acc);
            ql_hgemm_avx512_x16(type, w, N, x16, T, K, y16, N, acc);
            for (int64_t i = 0; i < (int64_t)T * N; i++)
                if (memcmp(&yv[i], &y16[i], sizeof(float)) && !(isnan(yv[i]) && isnan(y16[i])))
                    fail_msg("%s x16 N %d T %d K %d acc %d: y[%lld] ref %a avx512 %a", ql_type_get(type)->name, N, T, K,
                             acc, (long long)i, (double)yv[i], (double)y16[i]);
            free(xr), free(y16), free(x16);
        }
        if (adversarial) continue;
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double s = acc ? (double)(t * N + n) * 0.5 : 0, sa = fabs(s);
                for (int k = 0; k < K; k++) {
                    const double p = (double)widen(type, w[(size_t)n * K + k]) * x[(size_t)t * K + k];
                    s += p, sa += fabs(p);
                }
                if (!(fabs(yr[(size_t)t * N + n] - s) <= 1e-6 * sa + 1e-30))
                    fail_msg("%s t %d n %d: %.9g, in double %.9g", ql_type_get(type)->name, t, n,
                             (double)yr[(size_t)t * N + n], s);
            }
    }
    free(w), free(x), free(yr), free(yv);
}

static void test_products(void **state) {
    (void)state;
    const uint32_t types[2] = {QL_TYPE_F16, QL_TYPE_BF16};
    for (int i = 0; i < 2; i++) {
        check(types[i], 11, 13, 256, false);
        check(types[i], 8, 12, 64, false);
        check(types[i], 3, 5, 16, false);
        check(types[i], 9, 14, 512, true);
    }
    if (!ql_hgemm_available(QL_TYPE_F16, 256))
        printf("SKIP (part): this CPU has no AVX-512; the reference was checked against the products in double\n");
}

static void test_refused(void **state) {
    (void)state;
    assert_false(ql_hgemm_available(QL_TYPE_F16, 40)); /* not whole lanes: the sgemm path */
    assert_false(ql_hgemm_available(QL_TYPE_F32, 256));
    assert_false(ql_hgemm_available(QL_TYPE_Q8_0, 256));
    assert_false(ql_hgemm_available(QL_TYPE_BF16, 0));
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_products), cmocka_unit_test(test_refused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
