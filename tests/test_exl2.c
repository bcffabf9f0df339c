/* test_exl2.c — the EXL2 formats (formats/fmt_exl2.c) and --method exl2 (methods/m_exl2.c): group layout
 * against ExLlamaV2's AdaptiveGPTQ.configure worked by hand, every entry's bpw against its own sizes, the
 * packed words (q_weight streams that straddle words, q_scale nibbles, q_groups, q_invperm) against codes
 * placed by hand, the fp16 scale arithmetic (a subnormal max scale included), round trips of every
 * entry within its tolerance with error falling as bits rise, the importance order, GPTQ's error feedback
 * beating plain rounding on the layer output, refusals, and the decoder on corrupt bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/ql_common.h"
#include "formats/fmt_exl2.h"
#include "methods/method.h"
#include "tests/test_util.h"

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static double rnd_u(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) * (1.0 / 9007199254740992.0);
}
static float rnd_n(void) { /* N(0, 1), Box-Muller */
    double u = rnd_u(), v = rnd_u();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static const ql_format *fmt(const char *name) {
    const ql_format *f = ql_format_by_name(name);
    assert_non_null(f);
    return f;
}

/* configure(): g_i = ceil(min(K p_i, remaining) / gs_i); 4096 x 0.05 = 204.8 -> 4 groups of 64 at 3 bits,
 * then 3840 rows left -> 60 groups at 2 bits; q_weight rows 64*3/32 = 6 per 3-bit group, 4 per 2-bit one */
static void test_layout_by_hand(void **state) {
    (void)state;
    ql_exl2_mix m;
    assert_true(ql_exl2_format_mix(fmt("exl2_5x3b64_95x2b64"), &m));
    ql_exl2_group g[64];
    assert_int_equal(ql_exl2_layout(&m, 4096, g), 64);
    assert_int_equal(g[3].bits, 3);
    assert_int_equal(g[4].bits, 2);
    assert_int_equal(g[4].row, 256);
    assert_int_equal(g[4].qrow, 24);
    assert_int_equal(g[63].qrow, 24 + 59 * 4);
    /* three parts, K = 768: 0.05 -> ceil(38.4/32) = 2 groups of 32 at 6 bits (64 rows), 0.2 -> ceil(153.6/64)
     * = 3 groups of 64 at 3 bits, then min(576, 512) -> 8 groups of 64 at 2 bits */
    assert_true(ql_exl2_format_mix(fmt("exl2_5x6b32_20x3b64_75x2b64"), &m));
    ql_exl2_group h[16];
    assert_int_equal(ql_exl2_layout(&m, 768, h), 13);
    assert_int_equal(h[1].bits, 6);
    assert_int_equal(h[2].row, 64);
    assert_int_equal(h[2].qrow, 12);
    assert_int_equal(h[4].bits, 3);
    assert_int_equal(h[5].bits, 2);
    assert_int_equal(h[5].row, 256);
    assert_int_equal(h[12].row + h[12].rows, 768);
    /* every entry: its bpw is the size of a 4096 x 4096 tensor, as ExLlamaV2's QParams.bpw counts it */
    int n = 0;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!ql_exl2_format_mix(f, NULL)) continue;
        n++;
        int64_t b = ql_format_tensor_bytes(f, 4096, 4096);
        assert_true(b > 0);
        assert_true(fabs(f->bpw - 8.0 * (double)b / (4096.0 * 4096.0)) < 1e-12);
        assert_int_equal(ql_format_tensor_bytes(f, 4096 + 16, 4096), -1); /* rows not whole 32-words */
    }
    assert_int_equal(n, 45);
}

/* K = 64, N = 32, 0.1:4b_32g/0.9:3b_32g: a 4-bit group (q_weight rows 0..3) then a 3-bit group (rows 4..6). */
static void test_packing_by_hand(void **state) {
    (void)state;
    ql_exl2_mix m;
    assert_true(ql_exl2_format_mix(fmt("exl2_10x4b32_90x3b32"), &m));
    const int64_t K = 64, N = 32;
    ql_exl2_offsets o;
    assert_true(ql_exl2_offsets_of(&m, K, N, &o));
    assert_int_equal(o.G, 2);
    assert_int_equal(o.qrows, 7);
    assert_int_equal(o.total, 4 * K + 2 * 2 + 4 * 2 + 2 * (N / 8) * 4 + 7 * N * 4);
    int64_t perm[64];
    for (int64_t p = 0; p < K; p++) perm[p] = K - 1 - p; /* processing order = inputs reversed */
    uint8_t codes[64 * 32], qs[2 * 32];
    for (int64_t p = 0; p < K; p++)
        for (int64_t n = 0; n < N; n++) codes[p * N + n] = (uint8_t)((p * 7 + n) % (p < 32 ? 16 : 8));
    for (int i = 0; i < 2 * 32; i++) qs[i] = (uint8_t)(1 + i % 16);
    uint16_t smax[2] = {ql_fp32_to_fp16(0.5f), ql_fp32_to_fp16(2.0f)};
    uint8_t *d = calloc((size_t)o.total, 1);
    ql_exl2_pack(&m, K, N, perm, qs, smax, codes, d);
    assert_int_equal(rd32(d + o.invperm + 4 * 0), 63); /* input 0 is processed last */
    assert_int_equal(rd32(d + o.invperm + 4 * 63), 0);
    assert_int_equal(d[o.groups + 0] | d[o.groups + 1] << 8, 4); /* q_groups: [4, 0, 3, 4] */
    assert_int_equal(d[o.groups + 2] | d[o.groups + 3] << 8, 0);
    assert_int_equal(d[o.groups + 4] | d[o.groups + 5] << 8, 3);
    assert_int_equal(d[o.groups + 6] | d[o.groups + 7] << 8, 4);
    /* q_scale: output 9 of group 1 is nibble 1 of word 1, holding qs - 1 */
    assert_int_equal(rd32(d + o.scale + (1 * (N / 8) + 1) * 4) >> 4 & 15, qs[32 + 9] - 1);
    /* q_weight, 4 bits: word (row 1, output 5) holds rows 8..15 of output 5, LSB first */
    uint32_t w = rd32(d + o.weight + (1 * N + 5) * 4), want = 0;
    for (int r = 0; r < 8; r++) want |= (uint32_t)codes[(8 + r) * N + 5] << (4 * r);
    assert_int_equal(w, want);
    /* 3 bits: row 10 of the group (processing row 42) sits at bits 30..32: two bits in word 4, one in word 5 */
    uint32_t w4 = rd32(d + o.weight + (4 * N + 3) * 4), w5 = rd32(d + o.weight + (5 * N + 3) * 4);
    unsigned c = codes[42 * N + 3];
    assert_int_equal(w4 >> 30, c & 3);
    assert_int_equal(w5 & 1, c >> 2);
    assert_int_equal(w5 >> 1 & 7, codes[43 * N + 3]);
    /* the decoder reads back code x scale in fp16, at the input the permutation names */
    const ql_format *f = fmt("exl2_10x4b32_90x3b32");
    float *out = malloc((size_t)(K * N) * sizeof(float));
    assert_int_equal(ql_format_dequantize(f, d, out, N, K, 1), QL_OK);
    for (int64_t p = 0; p < K; p += 13)
        for (int64_t n = 0; n < N; n += 5) {
            int bits = p < 32 ? 4 : 3;
            float s = ql_exl2_scale(qs[(p < 32 ? 0 : 32) + n], smax[p < 32 ? 0 : 1]);
            assert_true(out[n * K + perm[p]] == ql_exl2_value(codes[p * N + n], bits, s));
        }
    /* hand values: code 13 of 4 bits = 5 steps up; qs 3 under max 0.5 -> 9 * 0.5/256 */
    assert_true(ql_exl2_scale(3, ql_fp32_to_fp16(0.5f)) == 9.0f / 512.0f);
    assert_true(ql_exl2_value(13, 4, 9.0f / 512.0f) == ql_fp16_to_fp32(ql_fp32_to_fp16(45.0f / 512.0f)));
    /* max scale 2^-8 (1 + 2^-10): /256 is an fp16 subnormal, 256.25 units of 2^-24, rounded to 256 */
    assert_true(ql_exl2_scale(1, 0x1C01) == ldexpf(1.0f, -16));
    free(out);
    free(d);
}

/* Every entry round-trips N(0,1) within its tolerance; error falls as the bits rise. */
static void test_round_trip(void **state) {
    (void)state;
    const int64_t K = 256, N = 64;
    float *w = malloc((size_t)(K * N) * sizeof(float)), *q = malloc((size_t)(K * N) * sizeof(float));
    for (int64_t i = 0; i < K * N; i++) w[i] = rnd_n();
    double e2 = 0, e4 = 0, e8 = 0;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!ql_exl2_format_mix(f, NULL)) continue;
        assert_int_equal(ql_format_roundtrip(f, w, q, N, K, NULL, 1), QL_OK);
        double se = 0, ss = 0;
        for (int64_t j = 0; j < K * N; j++) se += (double)(q[j] - w[j]) * (q[j] - w[j]), ss += (double)w[j] * w[j];
        double rel = sqrt(se / ss);
        if (rel > f->tolerance) fail_msg("%s: RMSE/RMS %.4f above its tolerance %.3f", f->name, rel, f->tolerance);
        if (!strcmp(f->name, "exl2_5x3b64_95x2b64")) e2 = rel;
        if (!strcmp(f->name, "exl2_4b128")) e4 = rel;
        if (!strcmp(f->name, "exl2_8b128")) e8 = rel;
    }
    print_message("  RMSE/RMS: 2.13 bpw %.4f, 4.04 bpw %.4f, 8.04 bpw %.4f\n", e2, e4, e8);
    assert_true(e2 > e4 && e4 > e8 && e8 > 0);
    free(w);
    free(q);
}

/* With importance, the most important input is processed first (q_invperm 0) and so gets the high bits. */
static void test_importance_order(void **state) {
    (void)state;
    const ql_format *f = fmt("exl2_30x4b32_70x2b32");
    const int64_t K = 128, N = 32;
    float *w = malloc((size_t)(K * N) * sizeof(float)), imp[128];
    for (int64_t i = 0; i < K * N; i++) w[i] = rnd_n();
    for (int64_t k = 0; k < K; k++) imp[k] = (float)((k * 37) % 128);
    uint8_t *d = malloc((size_t)ql_format_tensor_bytes(f, K, N));
    assert_int_equal(ql_format_quantize(f, w, d, N, K, imp, 1), QL_OK);
    int64_t top = 0;
    for (int64_t k = 0; k < K; k++)
        if (imp[k] > imp[top]) top = k;
    assert_int_equal(rd32(d + 4 * top), 0);
    for (int64_t k = 0; k < K; k++) assert_true(rd32(d + 4 * k) < (uint32_t)K);
    free(w);
    free(d);
}

static double out_err(const float *a, const float *b, const double *H, int64_t N, int64_t K) {
    double e = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < K; i++) {
            double di = a[n * K + i] - b[n * K + i];
            if (di == 0) continue;
            for (int64_t j = 0; j < K; j++) e += di * H[i * K + j] * (a[n * K + j] - b[n * K + j]);
        }
    return e;
}

/* GPTQ's feedback (m_exl2) against the same formats rounded in the same input order without it. */
static void test_method_beats_rounding(void **state) {
    (void)state;
    const int64_t K = 128, N = 64, T = 512;
    double *H = calloc((size_t)(K * K), sizeof(double));
    float *X = malloc((size_t)(T * K) * sizeof(float)), *w = malloc((size_t)(K * N) * sizeof(float));
    float *a = malloc((size_t)(K * N) * sizeof(float)), *b = malloc((size_t)(K * N) * sizeof(float)), imp[128];
    for (int64_t t = 0; t < T; t++) { /* correlated inputs with a few loud channels */
        float common = rnd_n();
        for (int64_t k = 0; k < K; k++) X[t * K + k] = (rnd_n() + 0.8f * common) * (k % 16 == 0 ? 8.0f : 1.0f);
    }
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++)
            for (int64_t t = 0; t < T; t++) H[i * K + j] += (double)X[t * K + i] * X[t * K + j];
    for (int64_t k = 0; k < K; k++) imp[k] = (float)H[k * K + k];
    for (int64_t i = 0; i < K * N; i++) w[i] = 0.05f * rnd_n();
    ql_input_stats st = {.n = K, .n_tokens = T, .xtx = H};
    const ql_method *me = ql_method_by_name("exl2");
    assert_non_null(me);
    const char *names[] = {"exl2_5x3b64_95x2b64", "exl2_10x5b128_90x4b128"};
    for (int i = 0; i < 2; i++) {
        const ql_format *f = fmt(names[i]);
        assert_int_equal(ql_method_roundtrip(me, w, N, K, f, &st, NULL, a), QL_OK);
        assert_int_equal(ql_format_roundtrip(f, w, b, N, K, imp, 1), QL_OK);
        double eg = out_err(w, a, H, N, K), er = out_err(w, b, H, N, K);
        print_message("  %s: output error %.4g with feedback, %.4g rounded\n", f->name, eg, er);
        assert_true(eg < 0.9 * er);
    }
    /* refusals: no Hessian, a format that is not EXL2 */
    uint8_t *d = malloc((size_t)ql_format_tensor_bytes(fmt("exl2_4b128"), K, N));
    ql_method_opts o = {.n_threads = 1};
    assert_int_not_equal(me->quantize_tensor(w, N, K, fmt("exl2_4b128"), NULL, &o, d), QL_OK);
    assert_non_null(strstr(ql_last_error(), "Hessian"));
    char why[256];
    assert_false(ql_method_serves(me, fmt("int4_g128"), why, sizeof why));
    free(d), free(H), free(X), free(w), free(a), free(b);
}

/* Corrupt bytes: a q_invperm that is not a permutation decodes to zeros; random bytes never crash. */
static void test_corrupt_bytes(void **state) {
    (void)state;
    const ql_format *f = fmt("exl2_5x8b32_10x4b32_85x3b32");
    const int64_t K = 256, N = 64, nb = ql_format_tensor_bytes(f, K, N);
    uint8_t *d = malloc((size_t)nb);
    float *out = malloc((size_t)(K * N) * sizeof(float));
    for (int trial = 0; trial < 4; trial++) {
        for (int64_t i = 0; i < nb; i++) d[i] = (uint8_t)(rnd_u() * 256);
        if (trial >= 2)
            for (int64_t k = 0; k < K; k++) d[4 * k] = (uint8_t)k, d[4 * k + 1] = d[4 * k + 2] = d[4 * k + 3] = 0;
        assert_int_equal(ql_format_dequantize(f, d, out, N, K, 1), QL_OK);
        if (trial < 2)
            for (int64_t i = 0; i < K * N; i++) assert_true(out[i] == 0.0f);
    }
    free(d);
    free(out);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_by_hand),       cmocka_unit_test(test_packing_by_hand),
        cmocka_unit_test(test_round_trip),           cmocka_unit_test(test_importance_order),
        cmocka_unit_test(test_method_beats_rounding), cmocka_unit_test(test_corrupt_bytes),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof tests[0]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
