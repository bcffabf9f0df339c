/* test_kquant_gemm.c — kernels/kquant_gemm.c: K-quant weights × Q8_K activations as integer dot products. The
 * AVX-512 VNNI twin equals the scalar reference bit for bit (codes, scales and block sums of the activations;
 * every output), with row counts that are not a multiple of 16 and token counts not a multiple of 8, with
 * accumulation; both equal, within float rounding, the products of the Q8_K-rounded activations and the decoded
 * weights summed in double; non-finite activations are refused (the float path takes them). The legacy types
 * (blocks of 32 under Q8_0 / Q8_1) likewise. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/act_round.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "kernels/kquant_gemm.h"
#include "formats/format.h"

static uint64_t g_rng = 0x1234567887654321ull;
static float rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 - 0.5);
}

/* every weight type the kernel covers, with the activation rounding llama.cpp pairs it with */
static const uint32_t types[][2] = {
    {QL_TYPE_Q2_K, QL_TYPE_Q8_K},    {QL_TYPE_Q3_K, QL_TYPE_Q8_K},   {QL_TYPE_Q4_K, QL_TYPE_Q8_K},
    {QL_TYPE_Q5_K, QL_TYPE_Q8_K},    {QL_TYPE_Q6_K, QL_TYPE_Q8_K},   {QL_TYPE_IQ4_XS, QL_TYPE_Q8_K},
    {QL_TYPE_Q4_0, QL_TYPE_Q8_0},    {QL_TYPE_Q4_1, QL_TYPE_Q8_1},   {QL_TYPE_Q5_0, QL_TYPE_Q8_0},
    {QL_TYPE_Q5_1, QL_TYPE_Q8_1},    {QL_TYPE_Q8_0, QL_TYPE_Q8_0},   {QL_TYPE_IQ4_NL, QL_TYPE_Q8_0},
    {QL_TYPE_IQ2_XXS, QL_TYPE_Q8_K}, {QL_TYPE_IQ2_XS, QL_TYPE_Q8_K}, {QL_TYPE_IQ2_S, QL_TYPE_Q8_K},
    {QL_TYPE_IQ3_XXS, QL_TYPE_Q8_K}, {QL_TYPE_IQ3_S, QL_TYPE_Q8_K},  {QL_TYPE_IQ1_S, QL_TYPE_Q8_K},
    {QL_TYPE_IQ1_M, QL_TYPE_Q8_K},   {QL_TYPE_TQ1_0, QL_TYPE_Q8_K},  {QL_TYPE_TQ2_0, QL_TYPE_Q8_K}};

static void check_type(uint32_t type, uint32_t act, int T, int N, int K) {
    const ql_format *f = ql_format_by_type(type);
    assert_non_null(f);
    const int64_t rb = ql_format_tensor_bytes(f, K, 1);
    float *w = malloc((size_t)N * K * sizeof *w), *wd = malloc((size_t)N * K * sizeof *wd);
    float *x = malloc((size_t)T * K * sizeof *x), *xr = malloc((size_t)T * K * sizeof *xr);
    uint8_t *rows = malloc((size_t)N * rb);
    for (int64_t i = 0; i < (int64_t)N * K; i++) w[i] = rnd() * (i % 97 == 0 ? 8.0f : 1.0f);
    for (int64_t i = 0; i < (int64_t)T * K; i++) x[i] = rnd() * (i % 61 == 0 ? 20.0f : 1.0f);
    for (int k = 0; k < K; k++) x[k] = 0; /* token 0: all zero */
    x[K + 5] = -3e4f;                     /* token 1: one outlier */
    float *imp = NULL; /* the types llama.cpp will not make without an importance matrix get a random one */
    if (f->requires_importance) {
        imp = malloc((size_t)K * sizeof *imp);
        for (int k = 0; k < K; k++) imp[k] = 0.6f + rnd();
    }
    f->quantize_rows(w, rows, N, K, imp);
    free(imp);
    f->dequantize_rows(rows, wd, N, K);
    ql_act_round_ref(act, x, xr, (int64_t)T * K);
    ql_kq_act ar, av;
    assert_true(ql_kq_act_quantize_ref(x, T, K, act, &ar));
    assert_true(ql_kq_act_quantize(x, T, K, act, &av));
    assert_memory_equal(ar.d, av.d, (size_t)ar.T8 * (K / ar.bs) * sizeof *ar.d);
    assert_memory_equal(ar.bsum, av.bsum, (size_t)ar.T8 * (K / 32) * sizeof *ar.bsum);
    assert_memory_equal(ar.qu, av.qu, (size_t)ar.T8 * K);
    if (act == QL_TYPE_Q8_K) assert_memory_equal(ar.bsum16, av.bsum16, (size_t)ar.T8 * (K / 16) * sizeof *ar.bsum16);
    for (int t = 0; t < T; t++) /* the codes times the block scale are the rounded activations */
        for (int k = 0; k < K; k++)
            assert_true(ar.d[t * (K / ar.bs) + k / ar.bs] * (float)(ar.qu[(size_t)t * K + k] - 128) == xr[(size_t)t * K + k]);
    float *yr = malloc((size_t)T * N * sizeof *yr), *yv = malloc((size_t)T * N * sizeof *yv);
    for (int acc = 0; acc < 2; acc++) {
        for (int64_t i = 0; i < (int64_t)T * N; i++) yr[i] = yv[i] = acc ? (float)i * 0.25f : NAN;
        ql_kq_gemm_ref(type, rows, rb, N, &ar, yr, N, acc);
        if (ql_kq_gemm_available(type, act)) {
            ql_kq_gemm_vnni(type, rows, rb, N, &av, yv, N, acc);
            for (int64_t i = 0; i < (int64_t)T * N; i++)
                if (memcmp(&yr[i], &yv[i], sizeof(float)))
                    fail_msg("%s T %d N %d K %d acc %d: y[%lld] ref %a vnni %a", f->name, T, N, K, acc, (long long)i,
                             (double)yr[i], (double)yv[i]);
        }
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                /* both forms round d·sc·q and dmin·m (the float path per weight, this one per block), which may
                 * nearly cancel: the bound is float rounding of the larger, at most ~2 max|w| per weight */
                double s = 0, sa = 0, xa = 0, wmax = 0;
                for (int k = 0; k < K; k++) {
                    const double p = (double)xr[(size_t)t * K + k] * wd[(size_t)n * K + k];
                    s += p, sa += fabs(p), xa += fabs(xr[(size_t)t * K + k]);
                    wmax = fmax(wmax, fabs(wd[(size_t)n * K + k]));
                }
                if (acc) s += (double)(t * N + n) * 0.25;
                const double got = yr[(size_t)t * N + n];
                if (!(fabs(got - s) <= 2e-6 * sa + 4e-7 * xa * wmax + 1e-6 * fabs(s) + 1e-30))
                    fail_msg("%s t %d n %d: integer path %.9g, float products %.9g (sum |.| %.3g)", f->name, t, n, got, s,
                             sa);
            }
    }
    ql_kq_act_free(&ar);
    ql_kq_act_free(&av);
    free(w), free(wd), free(x), free(xr), free(rows), free(yr), free(yv);
}

static void test_products(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        check_type(types[i][0], types[i][1], 13, 37, 512);
        check_type(types[i][0], types[i][1], 8, 16, 256);
        check_type(types[i][0], types[i][1], 3, 5, 768);
    }
    assert_false(ql_kq_gemm_available(QL_TYPE_Q4_0, QL_TYPE_Q8_K)); /* pairs llama.cpp never makes */
    assert_false(ql_kq_gemm_available(QL_TYPE_Q4_K, QL_TYPE_Q8_0));
    if (!ql_kq_gemm_available(QL_TYPE_Q4_K, QL_TYPE_Q8_K))
        printf("SKIP (part): this CPU has no AVX-512 VNNI; the reference was checked against the float products\n");
}

/* Blocks of random bytes: every code and scale a file can hold (Q8_0's -128, IQ4_XS's scale -32, the largest
 * lattice points, fp16 scales that are infinite or NaN). The twin still equals the reference bit for bit (a NaN
 * equals a NaN). */
static void test_random_blocks(void **state) {
    (void)state;
    enum { T = 9, N = 19, K = 512 };
    float *x = malloc((size_t)T * K * sizeof *x), *yr = malloc((size_t)T * N * sizeof *yr),
          *yv = malloc((size_t)T * N * sizeof *yv);
    for (int64_t i = 0; i < (int64_t)T * K; i++) x[i] = rnd() * (i % 37 == 0 ? 50.0f : 1.0f);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (!ql_kq_gemm_available(types[i][0], types[i][1])) continue;
        const int64_t rb = ql_format_tensor_bytes(ql_format_by_type(types[i][0]), K, 1);
        uint8_t *rows = malloc((size_t)N * rb);
        for (int64_t j = 0; j < (int64_t)N * rb; j++) rows[j] = (uint8_t)(rnd() * 512.0f);
        ql_kq_act ar, av;
        assert_true(ql_kq_act_quantize_ref(x, T, K, types[i][1], &ar));
        assert_true(ql_kq_act_quantize(x, T, K, types[i][1], &av));
        ql_kq_gemm_ref(types[i][0], rows, rb, N, &ar, yr, N, false);
        ql_kq_gemm_vnni(types[i][0], rows, rb, N, &av, yv, N, false);
        for (int j = 0; j < T * N; j++)
            if (memcmp(&yr[j], &yv[j], sizeof(float)) && !(isnan(yr[j]) && isnan(yv[j])))
                fail_msg("%s random blocks: y[%d] ref %a vnni %a", ql_type_get(types[i][0])->name, j, (double)yr[j],
                         (double)yv[j]);
        ql_kq_act_free(&ar);
        ql_kq_act_free(&av);
        free(rows);
    }
    free(x), free(yr), free(yv);
}

static void test_not_finite(void **state) {
    (void)state;
    float x[2 * 256] = {0};
    x[300] = NAN;
    ql_kq_act a;
    for (int act = 0; act < 2; act++) {
        const uint32_t at = act ? QL_TYPE_Q8_0 : QL_TYPE_Q8_K;
        x[300] = NAN;
        assert_false(ql_kq_act_quantize_ref(x, 2, 256, at, &a));
        assert_false(ql_kq_act_quantize(x, 2, 256, at, &a));
        x[300] = INFINITY;
        assert_false(ql_kq_act_quantize(x, 2, 256, at, &a));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_products), cmocka_unit_test(test_random_blocks),
                                       cmocka_unit_test(test_not_finite)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
