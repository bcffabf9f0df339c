/* test_iq_simd.c — the AVX2 twin of the i-quant quantizers' neighbour search (kernels/iq_quants_avx2.c)
 * against the scalar reference (kernels/iq_quants_ref.c): the search itself on random and adversarial
 * lists and values (ties, zeros, Inf, NaN, huge outliers, zero and negative weights), and every i-quant's
 * whole fast quantizer (the registry's simd column) against its reference quantizer, byte for byte, on
 * random, zero, outlier and non-finite rows, with and without an imatrix. Skips (saying so) on a CPU
 * without AVX2, where the fast path is the reference. */
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
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_quants.h"
#include "kernels/iq_quants_internal.h"
#include "kernels/simd.h"

static uint64_t g_rng = 4242;
static uint32_t next_u32(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 16);
}
static double uniform(void) { return ((double)next_u32() + 0.5) / 4294967296.0; }
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

static bool have_avx2(void) {
#ifdef QL_IQ_NBR_AVX2
    if (ql_simd_level_get() >= QL_SIMD_AVX2) return true;
#endif
    printf("SKIP: no AVX2 on this CPU (or not an x86 build): the fast quantizers are the reference here\n");
    return false;
}

/* A value for an adversarial slot: mode 0 normal, then zero, huge, ±Inf, NaN, tiny. */
static float odd_value(int mode) {
    switch (mode) {
    case 1: return 0.0f;
    case 2: return 1e30f;
    case 3: return next_u32() & 1 ? INFINITY : -INFINITY;
    case 4: return NAN;
    case 5: return 1e-30f;
    default: return (float)normal();
    }
}

static void test_search_twin(void **state) {
    (void)state;
    if (!have_avx2()) return;
#ifdef QL_IQ_NBR_AVX2
    enum { NGRID = 2048 };
    static int32_t keys[NGRID];
    uint16_t nb[1 + 64];
    int cases = 0, none = 0, ties = 0;
    for (int it = 0; it < 20000; it++) {
        const int dim = it % 2 ? 8 : 4, bits = it % 3 ? 2 : 3;
        const int nlev = bits == 2 ? 3 : 8;
        if (it % 500 == 0)
            for (int g = 0; g < NGRID; g++) {
                int32_t k = 0;
                for (int j = 0; j < 8; j++) k |= (int32_t)(next_u32() % (unsigned)nlev) << (bits * j);
                keys[g] = k;
            }
        const int cnt = 1 + (int)(next_u32() % 40);
        nb[0] = (uint16_t)cnt;
        for (int k = 1; k <= cnt; k++) /* repeats on purpose: equal scores must resolve to the first */
            nb[k] = (uint16_t)(it % 7 == 0 ? next_u32() % 4 : next_u32() % NGRID);
        float qtab[8], x[8], w[8];
        for (int l = 0; l < 8; l++) qtab[l] = it % 4 ? (float)(2 * l + 1) : (float)(l - 1) + 0.125f;
        const float s = it % 11 == 0 ? 0.0f : (float)fabs(normal()) * (it % 13 == 0 ? 1e20f : 1.0f);
        for (int j = 0; j < 8; j++) {
            const int mode = it % 5 == 0 ? (int)(next_u32() % 6) : 0;
            x[j] = mode ? odd_value(mode) : (float)(fabs(normal()) * 4);
            w[j] = it % 17 == 0 ? 0.0f : it % 19 == 0 ? -(float)uniform() : (float)uniform();
            if (it % 23 == 0 && j == 3) w[j] = odd_value((int)(next_u32() % 6));
        }
        const int a = ql_iq_nbr_search_ref(nb, keys, dim, bits, qtab, s, x, w);
        const int b = ql_iq_nbr_search_avx2(nb, keys, dim, bits, qtab, s, x, w);
        if (a != b)
            fail_msg("case %d (dim %d bits %d, %d entries, s %g): reference picks %d, AVX2 %d", it, dim, bits, cnt,
                     (double)s, a, b);
        cases++;
        none += a < 0;
        ties += it % 7 == 0 || it % 17 == 0;
    }
    printf("  %d searches equal (%d with no finite score, %d built for ties)\n", cases, none, ties);
    assert_true(none > 0 && none < cases); /* both outcomes were exercised */
#endif
}

static const char *const k_types[] = {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m"};

static void test_fast_quantizers(void **state) {
    (void)state;
    if (!have_avx2()) return;
    const int64_t nrows = getenv("QL_QUICK") ? 4 : 12, ncols = 512;
    float *x = malloc((size_t)(nrows * ncols) * sizeof(float)), imp[512];
    for (int64_t i = 0; i < ncols; i++) imp[i] = (float)exp(normal());
    for (int64_t r = 0; r < nrows; r++) {
        float *row = x + r * ncols;
        const float sc = r % 3 == 0 ? 0.02f : r % 3 == 1 ? 1.0f : 300.0f;
        for (int64_t i = 0; i < ncols; i++) row[i] = (float)normal() * sc;
        switch (r % 6) { /* adversarial rows: zeros, outliers, non-finite values */
        case 1: memset(row, 0, 256 * sizeof(float)); break;
        case 2: row[17] = 1e30f, row[300] = -5000.0f; break;
        case 3: row[40] = INFINITY, row[290] = -INFINITY; break;
        case 4: row[5] = NAN; break;
        case 5: for (int64_t i = 0; i < 64; i++) row[i] = 0; break;
        default: break;
        }
    }
    for (size_t t = 0; t < QL_ARRAY_LEN(k_types); t++) {
        const ql_format *f = ql_format_by_name(k_types[t]);
        assert_non_null(f);
        assert_non_null(f->simd);
        assert_non_null(f->simd->quantize_rows);
        const int64_t bytes = ql_format_tensor_bytes(f, ncols, nrows);
        uint8_t *a = malloc((size_t)bytes), *b = malloc((size_t)bytes);
        for (int with_imat = 0; with_imat < 2; with_imat++) {
            if (!with_imat && ql_ggml_quantize_requires_imatrix(f->type)) continue; /* ggml refuses these */
            const float *im = with_imat ? imp : NULL;
            memset(a, 0xAA, (size_t)bytes), memset(b, 0x55, (size_t)bytes);
            f->quantize_rows(x, a, nrows, ncols, im);
            f->simd->quantize_rows(x, b, nrows, ncols, im);
            if (memcmp(a, b, (size_t)bytes)) {
                int64_t i = 0;
                while (a[i] == b[i]) i++;
                fail_msg("%s%s: fast quantizer differs from the reference at byte %lld (row %lld)", f->name,
                         with_imat ? " with imatrix" : "", (long long)i, (long long)(i / (bytes / nrows)));
            }
        }
        free(a), free(b);
    }
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_twin),
        cmocka_unit_test(test_fast_quantizers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
