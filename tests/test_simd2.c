/* test_simd2.c — the AVX2 / AVX-512 codecs of kernels/simd.h (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K,
 * Q5_K, F16, BF16) against the scalar reference: every fast kernel at every level this CPU has must give
 * IDENTICAL bytes (quantize) and float bits (dequantize) on random rows and on adversarial ones (zeros, huge
 * outliers 1e30 / 65504, NaN with any payload, +-Inf, denormals, constants, ties, raw random bits), with and
 * without importance weights, several rows at once and through the threaded registry. F16 / BF16 are also
 * checked value by value: all 65536 halves decoded, and every float sign/exponent/top-mantissa pattern with
 * the rounding-relevant low bits encoded (all 2^32 floats with QL_EXHAUSTIVE=1). */
#define SIMD_TEST_SEED 0x2545F4914F6CDD1Dull
#define SIMD_TEST_NKIND 30                  /* all kinds, with raw bits and fp16/bf16 rounding edges */
#define SIMD_TEST_IMAT_MODES {0, 1, 2, 3, 4} /* ... and a NaN weight */
#include "tests/simd_test_util.h"

#include "kernels/simd.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"

static const kernel_t kernels[] = {
    {"q4_0", 32, ql_quantize_rows_q4_0_fast, ql_dequantize_rows_q4_0_fast, true},
    {"q4_1", 32, ql_quantize_rows_q4_1_fast, ql_dequantize_rows_q4_1_fast, true},
    {"q5_0", 32, ql_quantize_rows_q5_0_fast, ql_dequantize_rows_q5_0_fast, true},
    {"q5_1", 32, ql_quantize_rows_q5_1_fast, ql_dequantize_rows_q5_1_fast, true},
    {"iq4_nl", 32, ql_quantize_rows_iq4_nl_fast, ql_dequantize_rows_iq4_nl_fast, true},
    {"q2_k", 256, ql_quantize_rows_q2_k_fast, ql_dequantize_rows_q2_k_fast, true},
    {"q3_k", 256, ql_quantize_rows_q3_k_fast, ql_dequantize_rows_q3_k_fast, true},
    {"q5_k", 256, ql_quantize_rows_q5_k_fast, ql_dequantize_rows_q5_k_fast, true},
    {"f16", 1, ql_quantize_rows_f16_fast, ql_dequantize_rows_f16_fast, false},
    {"bf16", 1, ql_quantize_rows_bf16_fast, ql_dequantize_rows_bf16_fast, false},
};

/* F16 / BF16 value by value: all 65536 halves decoded; floats encoded over every sign / exponent /
 * top-7-mantissa pattern (the high 16 bits) with low halves covering every rounding case (ties, just
 * below / above, sticky bits), plus 4M random floats — or all 2^32 floats with QL_EXHAUSTIVE=1. */
static void check_f16_bf16_values(void) {
    enum { CH = 1 << 16 };
    uint16_t *h = malloc(CH * 2), *hr = malloc(CH * 2);
    float *f = malloc(CH * 4), *fr = malloc(CH * 4);
    const char *lvl = ql_simd_level_name(ql_simd_level_get());
    for (uint32_t i = 0; i < CH; ++i) h[i] = (uint16_t)i;
    ql_dequantize_rows_f16_fast(h, f, 1, CH);
    for (uint32_t i = 0; i < CH; ++i) fr[i] = ql_fp16_to_fp32(h[i]);
    int64_t bad = first_diff(f, fr, CH * 4);
    if (bad >= 0) fail_msg("f16 decode %s: half %04llx differs", lvl, (long long)(bad / 4));
    ql_dequantize_rows_bf16_fast(h, f, 1, CH);
    for (uint32_t i = 0; i < CH; ++i) fr[i] = ql_bf16_to_fp32(h[i]);
    bad = first_diff(f, fr, CH * 4);
    if (bad >= 0) fail_msg("bf16 decode %s: value %04llx differs", lvl, (long long)(bad / 4));

    static const uint16_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x17ff, 0x1800, 0x1fff,
                                    0x2000, 0x2001, 0x3000, 0x4000, 0x5000, 0x6000, 0x7fff, 0x8000,
                                    0x8001, 0x9000, 0xa000, 0xc000, 0xe000, 0xefff, 0xf000, 0xffff};
    const char *e = getenv("QL_EXHAUSTIVE");
    const bool all = e && *e && strcmp(e, "0") != 0;
    const uint64_t nchunks = all ? (1ull << 16) : QL_ARRAY_LEN(lows) + 64;
    uint32_t *u = malloc(CH * 4);
    for (uint64_t c = 0; c < nchunks; ++c) {
        for (uint32_t i = 0; i < CH; ++i) {
            const uint32_t low = all ? i : c < QL_ARRAY_LEN(lows) ? lows[c] : (uint32_t)rnd64() & 0xffff;
            u[i] = all ? (uint32_t)(c << 16) | low : (i << 16) | low;
        }
        memcpy(f, u, CH * 4);
        ql_quantize_rows_f16_fast(f, h, 1, CH, NULL);
        for (uint32_t i = 0; i < CH; ++i) hr[i] = ql_fp32_to_fp16(f[i]);
        bad = first_diff(h, hr, CH * 2);
        if (bad >= 0) fail_msg("f16 encode %s: float %08x differs", lvl, u[bad / 2]);
        ql_quantize_rows_bf16_fast(f, h, 1, CH, NULL);
        for (uint32_t i = 0; i < CH; ++i) hr[i] = ql_fp32_to_bf16(f[i]);
        bad = first_diff(h, hr, CH * 2);
        if (bad >= 0) fail_msg("bf16 encode %s: float %08x differs", lvl, u[bad / 2]);
    }
    printf("  f16/bf16 %s: 65536 halves decoded, %s floats encoded: identical\n", lvl,
           all ? "all 2^32" : "1.8M structured + 4.2M random");
    free(u);
    free(h);
    free(hr);
    free(f);
    free(fr);
}

static void test_f16_values(void **state) {
    (void)state;
    const ql_simd_level best = ql_simd_detect();
    for (size_t l = 0; l < QL_ARRAY_LEN(levels); ++l) {
        if (levels[l] > best) continue;
        ql_simd_set_level(levels[l]);
        check_f16_bf16_values();
    }
    ql_simd_set_level(g_initial_level);
    if (best == QL_SIMD_REF) {
        printf("SKIP: this CPU has neither AVX2 nor AVX-512\n");
        skip();
    }
}

static void test_registry_threads(void **state) {
    (void)state;
    check_registry_threads(kernels, QL_ARRAY_LEN(kernels));
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
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_f16_values);
    for (size_t i = 0; i < QL_ARRAY_LEN(kernels); ++i) {
        tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(test_kernel, (void *)&kernels[i]);
        tests[n].name = kernels[i].name;
        n++;
    }
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_registry_threads);
    return _cmocka_run_group_tests("simd2", tests, n, NULL, NULL);
}
