/* test_iq_lattice.c — the lattice i-quants' vector-grid search (kernels/iq_lattice.c) and its AVX2 twin
 * (kernels/iq_lattice_avx2.c): the same best points, costs and flips, bit for bit, on random targets and
 * on adversarial ones (zeros, huge outliers, ±Inf, NaN, zero and huge scales, zero weights); and whole
 * ql_iq_lattice_round calls give the same block bytes and values at both SIMD levels. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_lattice.h"
#include "kernels/iq_lattice_internal.h"
#include "kernels/simd.h"
#include "tests/test_util.h"

#define QL_TEST_RNG_SEED 0x243F6A8885A308D3ull
#include "tests/test_rng.h"

/* one target of 8 values, case k: 0-3 random, then the adversarial ones */
static void make_case(int k, float *x, float *w, float *s) {
    *s = (float)(0.01 * exp(normal()));
    for (int j = 0; j < 8; j++) x[j] = (float)(normal() * 0.05), w[j] = (float)exp(normal());
    switch (k % 12) {
    case 4: memset(x, 0, 8 * sizeof(float)); break;
    case 5: x[k % 8] = 1e30f; break;
    case 6: x[(k + 1) % 8] = INFINITY; break;
    case 7: x[(k + 2) % 8] = -INFINITY; break;
    case 8: x[(k + 3) % 8] = NAN; break;
    case 9: *s = 0; break;
    case 10: *s = 1e30f; break;
    case 11: memset(w, 0, 8 * sizeof(float)), w[k % 8] = 1; break;
    default: break;
    }
}

static void same_best(const ql_iq_lattice_best *a, const ql_iq_lattice_best *b, int k) {
    if (a->gi != b->gi || a->fgi != b->fgi || a->fj != b->fj || memcmp(&a->cost, &b->cost, 4) ||
        memcmp(&a->fcost, &b->fcost, 4))
        fail_msg("case %d: ref (%d %g | %d %d %g) vs avx2 (%d %g | %d %d %g)", k, a->gi, a->cost, a->fgi, a->fj,
                 a->fcost, b->gi, b->cost, b->fgi, b->fj, b->fcost);
}

static void test_search_twin(void **state) {
    (void)state;
#ifdef QL_IQ_LATTICE_AVX2
    if (ql_simd_level_get() < QL_SIMD_AVX2) {
        printf("SKIP: no AVX2 on this CPU\n");
        return;
    }
    /* synthetic grids of 8 and 4 coordinates in the i-quants' ranges, with duplicate points (ties) */
    enum { NPTS = 1024 };
    static float ct8[8 * NPTS], ct4[4 * NPTS];
    for (int gi = 0; gi < NPTS; gi++) {
        for (int j = 0; j < 8; j++) ct8[j * NPTS + gi] = (float)(8 + 17 * ((gi * 7 + j * 3 + (gi >> 4)) % 3));
        for (int j = 0; j < 4; j++) ct4[j * NPTS + gi] = (float)(4 + 8 * ((gi * 5 + j + (gi >> 3)) % 8));
    }
    for (int k = 0; k < 600; k++) {
        float x[8], w[8], s, ax[8];
        make_case(k, x, w, &s);
        for (int j = 0; j < 8; j++) ax[j] = fabsf(x[j]);
        const int npts = (k % 3 == 0) ? 256 : (k % 3 == 1) ? 512 : 1024;
        ql_iq_lattice_best a, b;
        ql_iq_lattice_search_ref(ct8, npts, 8, s, ax, w, &a);
        ql_iq_lattice_search_avx2(ct8, npts, 8, s, ax, w, &b);
        same_best(&a, &b, k);
        ql_iq_lattice_search_ref(ct4, npts, 4, s, ax + 4, w + 4, &a);
        ql_iq_lattice_search_avx2(ct4, npts, 4, s, ax + 4, w + 4, &b);
        same_best(&a, &b, k);
    }
#else
    printf("SKIP: not an x86 build\n");
#endif
}

/* whole round calls on real blocks of every lattice type: the same bytes and values at both levels */
static void test_round_levels(void **state) {
    (void)state;
    static const char *const names[] = {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m"};
    const int64_t n = 256;
    float *row = malloc(n * sizeof(float)), imp[256];
    for (int i = 0; i < n; i++) row[i] = (float)(0.03 * normal()), imp[i] = (float)exp(normal());
    const ql_simd_level lv = ql_simd_level_get();
    for (size_t fi = 0; fi < QL_ARRAY_LEN(names); fi++) {
        const ql_format *f = ql_format_by_name(names[fi]);
        assert_non_null(f);
        assert_true(ql_iq_lattice_supported(f->type));
        uint8_t blk0[128], b1[128], b2[128];
        assert_true(f->block_bytes <= 128);
        assert_int_equal(ql_format_quantize(f, row, blk0, 1, n, imp, 1), QL_OK);
        float sc[QL_IQ_LATTICE_GROUPS];
        ql_iq_lattice_scales(f->type, blk0, sc);
        memcpy(b1, blk0, (size_t)f->block_bytes);
        memcpy(b2, blk0, (size_t)f->block_bytes);
        for (int k = 0; k < 96; k++) {
            float x[8], w[8], s, q1[8], q2[8];
            make_case(k, x, w, &s);
            const int g = k % QL_IQ_LATTICE_GROUPS;
            if (k < 48) s = sc[g]; /* the block's own scale, then arbitrary ones */
            ql_simd_set_level(QL_SIMD_REF);
            ql_iq_lattice_round(f->type, b1, g, s, x, w, q1);
            ql_simd_set_level(lv);
            ql_iq_lattice_round(f->type, b2, g, s, x, w, q2);
            assert_memory_equal(q1, q2, sizeof q1);
            assert_memory_equal(b1, b2, (size_t)f->block_bytes);
        }
    }
    ql_simd_set_level(lv);
    free(row);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_twin),
        cmocka_unit_test(test_round_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
