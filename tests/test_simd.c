/* test_simd.c — the AVX2 / AVX-512 codecs (kernels/simd.h) against the scalar reference: every fast
 * kernel at every level this CPU has must give IDENTICAL bytes (quantize) and float bits (dequantize) on
 * random rows and on adversarial ones (zeros, huge outliers, NaN/Inf, denormals, constants, ties),
 * with and without importance weights, for several rows at once and through the threaded registry. */
#define SIMD_TEST_SEED 0x9E3779B97F4A7C15ull
#define SIMD_TEST_NKIND 22              /* the basic adversarial kinds */
#define SIMD_TEST_IMAT_MODES {0, 1, 2, 4} /* uniform, sparse ramp, zeros, signed products */
#include "tests/simd_test_util.h"

#include "formats/fmt_ext.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"

static const kernel_t kernels[] = {
    {"q8_0", 32, ql_quantize_rows_q8_0_fast, ql_dequantize_rows_q8_0_fast, false},
    {"q4_k", 256, ql_quantize_rows_q4_k_fast, ql_dequantize_rows_q4_k_fast, true},
    {"q6_k", 256, ql_quantize_rows_q6_k_fast, ql_dequantize_rows_q6_k_fast, true},
    {"int4_g128", 128, ql_quantize_rows_int4_g128_fast, ql_dequantize_rows_int4_g128_fast, false},
    {"int4_g128_sym", 128, ql_quantize_rows_int4_g128_sym_fast, ql_dequantize_rows_int4_g128_sym_fast, false},
    /* block 16: rows of 16, 32, 48, 4096 take the vector path at both widths; 200 the reference tail on AVX-512 */
    /* quantize twins only (the plain 64-weight blocks); their dequantize is the reference */
    {"nf4", 64, ql_quantize_rows_nf4_fast, NULL, false},
    {"fp4", 64, ql_quantize_rows_fp4_fast, NULL, false},
    {"bnb_int8", 16, ql_quantize_rows_bnb_int8_fast, NULL, false},
    {"int8_channel", 16, ql_quantize_rows_int8_channel_fast, ql_dequantize_rows_int8_channel_fast, false},
};

static void test_registry_threads(void **state) {
    (void)state;
    check_registry_threads(kernels, QL_ARRAY_LEN(kernels));
}

static void test_levels(void **state) {
    (void)state;
    const char *e = getenv("QL_FORCE_REF");
    const bool forced = e && *e && strcmp(e, "0") != 0;
    printf("  cpu best level: %s; level at start: %s%s\n", ql_simd_level_name(ql_simd_detect()),
           ql_simd_level_name(g_initial_level), forced ? " (QL_FORCE_REF set)" : "");
    if (forced)
        assert_int_equal(g_initial_level, QL_SIMD_REF);
    else
        assert_int_equal(g_initial_level, ql_simd_detect());
    /* asking for more than the CPU has is clamped */
    assert_true(ql_simd_set_level(QL_SIMD_AVX512) <= ql_simd_detect());
    ql_simd_set_level(g_initial_level);
}


int main(int argc, char **argv) {
    g_initial_level = ql_simd_level_get();
    /* `--speed` (make bench) prints scalar vs SIMD timings instead of testing: speed is a benchmark's
     * business, not an assertion */
    if (argc > 1 && !strcmp(argv[1], "--speed")) {
        print_speed(kernels, QL_ARRAY_LEN(kernels));
        return 0;
    }
    struct CMUnitTest tests[QL_ARRAY_LEN(kernels) + 2];
    size_t n = 0;
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_levels);
    for (size_t i = 0; i < QL_ARRAY_LEN(kernels); ++i) {
        tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(test_kernel, (void *)&kernels[i]);
        tests[n].name = kernels[i].name;
        n++;
    }
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_registry_threads);
    return _cmocka_run_group_tests("simd", tests, n, NULL, NULL);
}
