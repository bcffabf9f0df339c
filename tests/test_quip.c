/* test_quip.c — QuIP# and the Hadamard rotations (kernels/hadamard, kernels/e8p, formats/fmt_quip,
 * methods/m_quip): the fast transform equals the dense reference and is orthogonal for 2^k and Paley
 * sizes (768 = 12·64 included), 172 is refused with the reason; the E8P codebook has 256 patterns (227
 * of norm² ≤ 10, 29 of norm² 12), 65536 distinct codewords in E8 + 1/4, the one-byte restriction 256;
 * encoding finds the nearest codeword (brute force over all 65536 on random points); the RHT of a
 * matrix and of a Hessian agree (output error is invariant); LDLQ has a lower Hessian-weighted error
 * than rounding alone on a random correlated H, and a Hessian of many tokens beats one of few on held-out
 * inputs; e8p tensors survive a GGUF write and read bit for bit;
 * rotation + INTn beats INTn on heavy-tailed weights; the AVX2 pattern scan equals the scalar one bit for
 * bit on random and adversarial points (zeros, ±0, Inf, NaN, huge values, ties). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/ql_common.h"
#include "core/gguf.h"
#include "core/output_error.h"
#include "formats/fmt_quip.h"
#include "formats/format.h"
#include "kernels/e8p.h"
#include "kernels/e8p_internal.h"
#include "kernels/hadamard.h"
#include "kernels/simd.h"
#include "methods/method.h"
#include "tests/test_util.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double rnd_u(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) * (1.0 / 9007199254740992.0);
}
static double rnd_n(void) { /* N(0, 1), Box-Muller */
    double u = rnd_u(), v = rnd_u();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* ---- Hadamard ---- */

static void test_hadamard_sizes(void **state) {
    (void)state;
    const int64_t sizes[] = {1, 2, 8, 12, 20, 24, 64, 96, 256, 320, 768};
    const size_t nsizes = getenv("QL_QUICK") ? QL_ARRAY_LEN(sizes) - 1 : QL_ARRAY_LEN(sizes);
    for (size_t s = 0; s < nsizes; s++) {
        const int64_t n = sizes[s];
        ql_had h;
        char why[256] = "";
        if (!ql_had_init(&h, n, why, sizeof why)) fail_msg("size %lld refused: %s", (long long)n, why);
        float *M = malloc(sizeof(float) * (size_t)(n * n));
        ql_had_dense_ref(&h, M);
        /* orthogonal: M·Mᵀ = I */
        double worst = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                double d = 0;
                for (int64_t k = 0; k < n; k++) d += (double)M[i * n + k] * M[j * n + k];
                worst = fmax(worst, fabs(d - (i == j)));
            }
        if (worst > 1e-5) fail_msg("n=%lld: M Mᵀ - I up to %g", (long long)n, worst);
        /* entries ±1/sqrt(n) */
        for (int64_t i = 0; i < n * n; i++)
            if (fabs(fabs(M[i]) * sqrt((double)n) - 1) > 1e-5) fail_msg("n=%lld: entry %g", (long long)n, M[i]);
        /* the fast transform and its transpose equal M·x and Mᵀ·x; the transpose undoes it */
        const int64_t width = 3;
        float *x = malloc(sizeof(float) * (size_t)(n * width)), *y = malloc(sizeof(float) * (size_t)(n * width));
        for (int tr = 0; tr < 2; tr++) {
            for (int64_t i = 0; i < n * width; i++) x[i] = (float)rnd_n();
            memcpy(y, x, sizeof(float) * (size_t)(n * width));
            ql_had_apply(&h, y, width, tr);
            for (int64_t i = 0; i < n; i++)
                for (int64_t c = 0; c < width; c++) {
                    double r = 0;
                    for (int64_t k = 0; k < n; k++) r += (double)(tr ? M[k * n + i] : M[i * n + k]) * x[k * width + c];
                    if (fabs(r - y[i * width + c]) > 1e-4 * (1 + fabs(r)))
                        fail_msg("n=%lld transpose=%d: fast %g, reference %g", (long long)n, tr, y[i * width + c], r);
                }
            ql_had_apply(&h, y, width, !tr);
            for (int64_t i = 0; i < n * width; i++)
                if (fabsf(y[i] - x[i]) > 1e-4f) fail_msg("n=%lld: inverse off by %g", (long long)n, y[i] - x[i]);
        }
        free(x), free(y), free(M);
        ql_had_free(&h);
    }
    /* 768 goes through a Paley factor of 12 */
    ql_had h;
    assert_true(ql_had_init(&h, 768, NULL, 0));
    assert_int_equal(h.m, 12);
    assert_int_equal(h.pow2, 64);
    ql_had_free(&h);
}

static void test_hadamard_refuses_172(void **state) {
    (void)state;
    char why[256] = "";
    ql_had h;
    assert_false(ql_had_init(&h, 172, why, sizeof why));
    assert_non_null(strstr(why, "172"));
    assert_non_null(strstr(why, "43"));
    assert_false(ql_had_supported(172, NULL, 0));
    /* the formats refuse the shape, and the driver says why */
    const ql_format *f = ql_format_by_name("e8p");
    assert_non_null(f);
    assert_true(ql_format_tensor_bytes(f, 172, 64) < 0);
    assert_true(ql_format_tensor_bytes(f, 256, 172) < 0);
    assert_true(ql_format_tensor_bytes(f, 256, 64) > 0);
    float *w = calloc(172 * 256, sizeof(float)), *out = calloc(172 * 256, sizeof(float));
    assert_int_not_equal(ql_format_roundtrip(f, w, out, 172, 256, NULL, 1), QL_OK);
    assert_non_null(strstr(ql_last_error(), "172"));
    assert_non_null(strstr(ql_last_error(), "Hadamard"));
    const ql_format *rh = ql_format_by_name("rht_int4_g64");
    assert_int_not_equal(ql_format_roundtrip(rh, w, out, 64, 172, NULL, 1), QL_OK);
    assert_non_null(strstr(ql_last_error(), "no Hadamard matrix of order 172"));
    const ql_method *q = ql_method_by_name("quip");
    assert_non_null(q);
    assert_int_not_equal(ql_method_roundtrip(q, w, 172, 256, f, NULL, NULL, out), QL_OK);
    assert_non_null(strstr(ql_last_error(), "172"));
    free(w), free(out);
}

/* ---- E8P ---- */

static int cmp_vec(const void *a, const void *b) { return memcmp(a, b, 8 * sizeof(int)); }

static void test_e8p_codebook(void **state) {
    (void)state;
    const uint8_t *p = ql_e8p_patterns();
    int n10 = 0, n12 = 0;
    for (int k = 0; k < QL_E8P_PATTERNS; k++) {
        int s = 0;
        for (int i = 0; i < 8; i++) {
            int v = p[k * 8 + i];
            if (v != 1 && v != 3 && v != 5 && v != 7) fail_msg("pattern %d entry %d = %d/2", k, i, v);
            s += v * v;
        }
        if (s <= 40) n10++;
        else if (s == 48) n12++;
        else fail_msg("pattern %d has norm² %g", k, s / 4.0);
        for (int j = 0; j < k; j++)
            if (!memcmp(p + 8 * j, p + 8 * k, 8)) fail_msg("patterns %d and %d repeat", j, k);
    }
    assert_int_equal(n10, 227);
    assert_int_equal(n12, 29);
    /* every code decodes to a point of D̂8 ± 1/4 (4x: integers; D̂8: odd entries summing to 0 mod 4 when doubled) */
    int(*all)[8] = malloc(sizeof(int[8]) * QL_E8P_CODES);
    for (int c = 0; c < QL_E8P_CODES; c++) {
        float v[8];
        ql_e8p_decode((uint16_t)c, v);
        const float sh = (c >> 7 & 1) ? -0.25f : 0.25f;
        int sum = 0;
        double nn = 0;
        for (int i = 0; i < 8; i++) {
            float t = 2 * (v[i] - sh);
            if (t != floorf(t) || ((int)t & 1) == 0) fail_msg("code %d coordinate %d = %g", c, i, v[i]);
            sum += (int)t;
            nn += (v[i] - sh) * (v[i] - sh);
            all[c][i] = (int)lrintf(4 * v[i]);
        }
        if (sum % 4 != 0) fail_msg("code %d: not in D8 + 1/2 (doubled sum %d)", c, sum);
        if (nn > 12 + 1e-6) fail_msg("code %d: norm² %g", c, nn);
    }
    qsort(all, QL_E8P_CODES, sizeof all[0], cmp_vec);
    for (int c = 1; c < QL_E8P_CODES; c++)
        if (!memcmp(all[c - 1], all[c], sizeof all[0])) fail_msg("two codes decode to the same vector");
    free(all);
    /* the one-byte restriction: 256 distinct vectors with entries ±1/4, ±3/4 */
    int b[256][8];
    for (int c = 0; c < 256; c++) {
        float v[8];
        ql_e8p1_decode((uint8_t)c, v);
        for (int i = 0; i < 8; i++) {
            if (fabsf(fabsf(v[i]) - 0.25f) > 1e-7f && fabsf(fabsf(v[i]) - 0.75f) > 1e-7f)
                fail_msg("e8p1 code %d entry %g", c, v[i]);
            b[c][i] = (int)lrintf(4 * v[i]);
        }
    }
    qsort(b, 256, sizeof b[0], cmp_vec);
    for (int c = 1; c < 256; c++) assert_memory_not_equal(b[c - 1], b[c], sizeof b[0]);
}

static void test_e8p_nearest(void **state) {
    (void)state;
    float(*cb)[8] = malloc(sizeof(float[8]) * QL_E8P_CODES);
    for (int c = 0; c < QL_E8P_CODES; c++) ql_e8p_decode((uint16_t)c, cb[c]);
    const int npts = getenv("QL_QUICK") ? 60 : 400;
    for (int t = 0; t < npts; t++) {
        float x[8];
        const double sc = t % 3 == 0 ? 0.3 : t % 3 == 1 ? 1.0 : 2.5; /* inside, at and beyond the shell */
        for (int i = 0; i < 8; i++) x[i] = (float)(sc * rnd_n());
        if (t == 0) memset(x, 0, sizeof x); /* adversarial: the origin, ties everywhere */
        if (t == 1) for (int i = 0; i < 8; i++) x[i] = 0.25f;
        if (t == 2) for (int i = 0; i < 8; i++) x[i] = i & 1 ? 1e6f : -1e6f;
        double best = INFINITY;
        for (int c = 0; c < QL_E8P_CODES; c++) {
            double d = 0;
            for (int i = 0; i < 8; i++) d += ((double)x[i] - cb[c][i]) * ((double)x[i] - cb[c][i]);
            best = fmin(best, d);
        }
        const uint16_t got = ql_e8p_encode(x);
        double d = 0;
        for (int i = 0; i < 8; i++) d += ((double)x[i] - cb[got][i]) * ((double)x[i] - cb[got][i]);
        if (d > best * (1 + 1e-5) + 1e-6) fail_msg("point %d: encode at distance² %g, nearest %g", t, d, best);
        /* the one-byte codebook likewise */
        double b1 = INFINITY;
        for (int c = 0; c < 256; c++) {
            float v[8];
            ql_e8p1_decode((uint8_t)c, v);
            double e = 0;
            for (int i = 0; i < 8; i++) e += ((double)x[i] - v[i]) * ((double)x[i] - v[i]);
            b1 = fmin(b1, e);
        }
        float v[8];
        ql_e8p1_decode(ql_e8p1_encode(x), v);
        double e = 0;
        for (int i = 0; i < 8; i++) e += ((double)x[i] - v[i]) * ((double)x[i] - v[i]);
        if (e > b1 * (1 + 1e-5) + 1e-6) fail_msg("point %d: e8p1 encode at %g, nearest %g", t, e, b1);
    }
    free(cb);
}

/* ---- the rotation of a matrix and of its Hessian ---- */

static double *random_h(int64_t n, int64_t k, bool outliers) {
    double *A = malloc(sizeof(double) * (size_t)(n * k)), *H = calloc((size_t)(n * n), sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        const double s = outliers && i % 17 == 3 ? 20.0 : 1.0; /* a few loud input channels */
        for (int64_t t = 0; t < k; t++) A[i * k + t] = s * rnd_n() + 0.5 * (t % 5 == 0); /* correlated */
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t t = 0; t < k; t++) H[i * n + j] += A[i * k + t] * A[j * k + t];
    free(A);
    return H;
}

static void test_rht_consistent(void **state) {
    (void)state;
    const int64_t R = 24, C = 96;
    float *w = malloc(sizeof(float) * R * C), *d = malloc(sizeof(float) * R * C), *wr = malloc(sizeof(float) * R * C);
    float *dr = malloc(sizeof(float) * R * C);
    for (int64_t i = 0; i < R * C; i++) w[i] = (float)rnd_n(), d[i] = (float)(0.1 * rnd_n());
    double *H = random_h(C, 40, true), *Hr = malloc(sizeof(double) * C * C);
    memcpy(Hr, H, sizeof(double) * C * C);
    memcpy(wr, w, sizeof(float) * R * C);
    memcpy(dr, d, sizeof(float) * R * C);
    assert_true(ql_rht_matrix(wr, R, C, 7, false, NULL, 0));
    assert_true(ql_rht_matrix(dr, R, C, 7, false, NULL, 0));
    assert_true(ql_rht_hessian(Hr, C, 7, NULL, 0));
    /* tr(ΔW H ΔWᵀ) is the same in both bases; Frobenius norms too */
    double e0 = ql_output_error(d, NULL, NULL, R, C, H), e1 = ql_output_error(dr, NULL, NULL, R, C, Hr);
    assert_true(fabs(e0 - e1) <= 1e-4 * e0);
    /* and the inverse brings W back */
    assert_true(ql_rht_matrix(wr, R, C, 7, true, NULL, 0));
    for (int64_t i = 0; i < R * C; i++) assert_true(fabsf(wr[i] - w[i]) < 1e-4f);
    free(w), free(d), free(wr), free(dr), free(H), free(Hr);
}

/* ---- the AVX2 pattern scan against the scalar reference ---- */

static void scan_inputs(const float z[8], float az[8], unsigned *neg, float *zz) {
    *neg = 0, *zz = 0;
    for (int i = 0; i < 8; i++) {
        az[i] = z[i] < 0 ? -z[i] : z[i];
        *zz += z[i] * z[i];
        if (z[i] < 0) *neg |= 1u << i;
    }
}

static void test_e8p_scan_avx2(void **state) {
    (void)state;
#ifdef QL_E8P_AVX2
    if (ql_simd_detect() < QL_SIMD_AVX2) {
        print_message("SKIP: this CPU has no AVX2\n");
        skip();
    }
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e30f, -3e38f, 0.25f, -0.75f, 1.75f, 1e-40f};
    const int nspec = (int)QL_ARRAY_LEN(specials);
    int checked = 0;
    for (int t = 0; t < 20000; t++) {
        float z[8];
        const int kind = t % 5;
        for (int i = 0; i < 8; i++) {
            if (kind == 0) z[i] = (float)(rnd_n() * 1.5);
            else if (kind == 1) z[i] = (float)((int)(rnd_u() * 8) - 4) * 0.5f + 0.25f; /* on the lattice: ties */
            else if (kind == 2) z[i] = specials[(int)(rnd_u() * nspec)];
            else if (kind == 3) z[i] = rnd_u() < 0.2 ? specials[(int)(rnd_u() * nspec)] : (float)rnd_n();
            else z[i] = (float)(rnd_n() * (rnd_u() < 0.1 ? 1e6 : 1e-3)); /* outliers and tiny values */
        }
        if (t == 0) memset(z, 0, sizeof z);
        float az[8], zz;
        unsigned neg;
        scan_inputs(z, az, &neg, &zz);
        for (int npat = 8; npat <= QL_E8P_PATTERNS; npat += 248) {
            unsigned cr = 0xFFFFFFFFu, ca = 0xFFFFFFFEu;
            const float dr = ql_e8p_scan_ref(az, neg, zz, npat, &cr), da = ql_e8p_scan_avx2(az, neg, zz, npat, &ca);
            if (cr != ca || memcmp(&dr, &da, sizeof dr) != 0)
                fail_msg("point %d (kind %d, %d patterns): ref code %u d %a, avx2 code %u d %a", t, kind, npat, cr,
                         (double)dr, ca, (double)da);
            checked++;
        }
    }
    assert_int_equal(checked, 40000);
#else
    print_message("SKIP: not an x86 build\n");
    skip();
#endif
}

/* ---- LDLQ vs rounding alone, e8p and the RVQ stages ---- */

static void test_ldlq_beats_rtn(void **state) {
    (void)state;
    const int64_t R = 64, C = 256;
    double *H = random_h(C, 96, true);
    ql_input_stats st = {.n = C, .n_tokens = 96, .xtx = H};
    float *w = malloc(sizeof(float) * R * C), *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C);
    for (int64_t i = 0; i < R * C; i++) w[i] = (float)rnd_n();
    const ql_method *q = ql_method_by_name("quip");
    const char *fmts[] = {"e8p", "e8p_rvq3", "e8p_rvq4"};
    double prev = INFINITY;
    for (int k = 0; k < 3; k++) {
        const ql_format *f = ql_format_by_name(fmts[k]);
        assert_non_null(f);
        assert_true(ql_method_serves(q, f, NULL, 0));
        ql_opt_values nold;
        assert_int_equal(ql_method_parse_opts(q, "ldlq=0", &nold), QL_OK);
        ql_method_opts o_rtn = {.values = &nold, .n_threads = 2}, o = {.n_threads = 2};
        assert_int_equal(ql_method_roundtrip(q, w, R, C, f, &st, &o_rtn, a), QL_OK);
        assert_int_equal(ql_method_roundtrip(q, w, R, C, f, &st, &o, b), QL_OK);
        /* ldlq=0 is the format's own quantizer */
        float *c = malloc(sizeof(float) * R * C);
        assert_int_equal(ql_format_roundtrip(f, w, c, R, C, NULL, 1), QL_OK);
        assert_memory_equal(a, c, sizeof(float) * R * C);
        free(c);
        const double e_rtn = ql_output_error(w, a, NULL, R, C, H), e_ldlq = ql_output_error(w, b, NULL, R, C, H);
        printf("  %s: tr(ΔW H ΔWᵀ) rounding %.4g, LDLQ %.4g (%.2fx)\n", f->name, e_rtn, e_ldlq, e_rtn / e_ldlq);
        if (!(e_ldlq < 0.9 * e_rtn)) fail_msg("%s: LDLQ %g not below rounding %g", f->name, e_ldlq, e_rtn);
        if (!(e_ldlq < prev)) fail_msg("%s: more bits, no less error (%g vs %g)", f->name, e_ldlq, prev);
        prev = e_ldlq;
    }
    /* without a Hessian quip refuses, naming what it needs */
    assert_int_not_equal(ql_method_roundtrip(q, w, R, C, ql_format_by_name("e8p"), NULL, NULL, a), QL_OK);
    assert_non_null(strstr(ql_last_error(), "Hessian"));
    /* quip does not write other formats */
    char why[160] = "";
    assert_false(ql_method_serves(q, ql_format_by_name("q4_k"), why, sizeof why));
    assert_non_null(strstr(why, "e8p"));
    free(w), free(a), free(b), free(H);
}

/* ---- more calibration tokens, better LDLQ ----
 * Why the low-bit pipeline takes its statistics from the whole calibration text (qlab stats without
 * --chunks; docs/methods.md): at 2-4 bits LDLQ follows the Hessian it is given, and one summed over few
 * tokens is a poor estimate of the inputs the layer will see. Inputs drawn from one correlated
 * distribution (a random mixing of factors with a decaying spectrum, a few loud channels); the output error is judged on a Hessian of
 * held-out tokens from the same distribution. */

static double *sampled_h(int64_t n, int64_t k, const double *mix) {
    /* x = mix·z, z ~ N(0, I_n) with a decaying spectrum (std 1/sqrt(1+f)), as real layer inputs have */
    double *A = malloc(sizeof(double) * (size_t)(n * k)), *H = calloc((size_t)(n * n), sizeof(double));
    double *z = malloc(sizeof(double) * (size_t)n);
    for (int64_t t = 0; t < k; t++) {
        for (int64_t f = 0; f < n; f++) z[f] = rnd_n() / sqrt(1.0 + (double)f);
        for (int64_t i = 0; i < n; i++) {
            double x = 0;
            for (int64_t f = 0; f < n; f++) x += mix[i * n + f] * z[f];
            A[i * k + t] = x * (i % 17 == 3 ? 4.0 : 1.0);
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t t = 0; t < k; t++) acc += A[i * k + t] * A[j * k + t];
            H[i * n + j] = acc;
        }
    free(A), free(z);
    return H;
}

static void test_more_tokens_better_ldlq(void **state) {
    (void)state;
    g_rng = 0x5DEECE66Dull; /* its own draw: the earlier tests take a QL_QUICK-dependent share of the stream */
    const int64_t R = 64, C = 128, few_tokens = C, many_tokens = 32 * C;
    double *mix = malloc(sizeof(double) * C * C);
    for (int64_t i = 0; i < C * C; i++) mix[i] = rnd_n();
    double *h_few = sampled_h(C, few_tokens, mix), *h_many = sampled_h(C, many_tokens, mix);
    double *h_test = sampled_h(C, many_tokens, mix);
    float *w = malloc(sizeof(float) * R * C), *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C);
    for (int64_t i = 0; i < R * C; i++) w[i] = (float)rnd_n();
    const ql_method *q = ql_method_by_name("quip");
    const char *fmts[] = {"e8p", "e8p_rvq3"};
    double e_few[2], e_many[2];
    ql_status st_few[2], st_many[2];
    for (int k = 0; k < 2; k++) {
        const ql_format *f = ql_format_by_name(fmts[k]);
        ql_input_stats few = {.n = C, .n_tokens = few_tokens, .xtx = h_few};
        ql_input_stats many = {.n = C, .n_tokens = many_tokens, .xtx = h_many};
        ql_method_opts o = {.n_threads = 2};
        st_few[k] = ql_method_roundtrip(q, w, R, C, f, &few, &o, a);
        st_many[k] = ql_method_roundtrip(q, w, R, C, f, &many, &o, b);
        e_few[k] = ql_output_error(w, a, NULL, R, C, h_test), e_many[k] = ql_output_error(w, b, NULL, R, C, h_test);
        printf("  %s: held-out tr(dW H dW^T) with %lld tokens %.4g, with %lld tokens %.4g (%.2fx)\n", f->name,
               (long long)few_tokens, e_few[k], (long long)many_tokens, e_many[k], e_few[k] / e_many[k]);
    }
    free(w), free(a), free(b), free(mix), free(h_few), free(h_many), free(h_test);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(st_few[k], QL_OK);
        assert_int_equal(st_many[k], QL_OK);
        if (!(e_many[k] < 0.9 * e_few[k]))
            fail_msg("%s: %g with many tokens not below %g with few", fmts[k], e_many[k], e_few[k]);
    }
}

/* ---- rotation alone: rht_int2_g64 vs int2_g64 on weights with outliers ---- */

static void test_rotation_helps_int(void **state) {
    (void)state;
    const int64_t R = 64, C = 256;
    float *w = malloc(sizeof(float) * R * C), *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C);
    /* heavy tails everywhere (Student t, 3 degrees of freedom), as trained weights have: a group's
     * range is set by its largest few weights, which the rotation spreads out */
    for (int64_t i = 0; i < R * C; i++) {
        double chi2 = 0;
        for (int k = 0; k < 3; k++) {
            double z = rnd_n();
            chi2 += z * z;
        }
        w[i] = (float)(0.02 * rnd_n() / sqrt(chi2 / 3));
    }
    for (int bits = 2; bits <= 4; bits++) {
        char n1[32], n2[32];
        snprintf(n1, sizeof n1, "int%d_g64", bits);
        snprintf(n2, sizeof n2, "rht_int%d_g64", bits);
        const ql_format *f1 = ql_format_by_name(n1), *f2 = ql_format_by_name(n2);
        assert_non_null(f1);
        assert_non_null(f2);
        assert_true(fabs(f1->bpw - f2->bpw) < 1e-12);
        assert_int_equal(ql_format_roundtrip(f1, w, a, R, C, NULL, 1), QL_OK);
        assert_int_equal(ql_format_roundtrip(f2, w, b, R, C, NULL, 1), QL_OK);
        double e1 = 0, e2 = 0;
        for (int64_t i = 0; i < R * C; i++) e1 += (w[i] - a[i]) * (double)(w[i] - a[i]), e2 += (w[i] - b[i]) * (double)(w[i] - b[i]);
        printf("  %s %.4g vs %s %.4g\n", n1, e1, n2, e2);
        if (!(e2 < e1)) fail_msg("%s: rotation did not help (%g vs %g)", n2, e2, e1);
    }
    free(w), free(a), free(b);
}

/* ---- GGUF: written and read back, the codes are the same bytes and decode the same ---- */

static void test_gguf_round_trip(void **state) {
    (void)state;
    const int64_t R = 128, C = 768;
    float *w = malloc(sizeof(float) * R * C), *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C);
    for (int64_t i = 0; i < R * C; i++) w[i] = (float)rnd_n();
    const char *fmts[] = {"e8p", "e8p_rvq3", "e8p_rvq4", "rht_int3_g64"};
    char path[] = "/tmp/test_quip_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ql_gguf *g = ql_gguf_new();
    void *codes[4];
    for (int k = 0; k < 4; k++) {
        const ql_format *f = ql_format_by_name(fmts[k]);
        int64_t bytes = ql_format_tensor_bytes(f, C, R);
        assert_true(bytes > 0);
        codes[k] = malloc((size_t)bytes);
        assert_int_equal(ql_format_quantize(f, w, codes[k], R, C, NULL, 1), QL_OK);
        const int64_t ne[2] = {C, R};
        assert_true(ql_gguf_add_tensor(g, fmts[k], f->type, 2, ne, codes[k]) >= 0);
    }
    assert_int_equal(ql_gguf_write(g, path, NULL), QL_OK);
    ql_gguf_free(g);
    ql_gguf *r = NULL;
    assert_int_equal(ql_gguf_open(path, &r), QL_OK);
    for (int k = 0; k < 4; k++) {
        const ql_format *f = ql_format_by_name(fmts[k]);
        int64_t ti = ql_gguf_find_tensor(r, fmts[k]);
        assert_true(ti >= 0);
        const ql_gguf_tensor *t = &r->tensors[ti];
        assert_int_equal(t->type, f->type);
        assert_int_equal((int64_t)t->nbytes, ql_format_tensor_bytes(f, C, R));
        assert_memory_equal(t->data, codes[k], (size_t)t->nbytes);
        assert_int_equal(ql_format_dequantize(f, codes[k], a, R, C, 1), QL_OK);
        assert_int_equal(ql_format_dequantize(f, t->data, b, R, C, 1), QL_OK);
        assert_memory_equal(a, b, sizeof(float) * R * C);
        double e = 0, s = 0;
        for (int64_t i = 0; i < R * C; i++) e += (w[i] - b[i]) * (double)(w[i] - b[i]), s += (double)w[i] * w[i];
        if (!(sqrt(e / s) <= f->tolerance)) fail_msg("%s: RMSE/RMS %g over %g", f->name, sqrt(e / s), f->tolerance);
        free(codes[k]);
    }
    ql_gguf_free(r);
    unlink(path);
    free(w), free(a), free(b);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hadamard_sizes),     cmocka_unit_test(test_hadamard_refuses_172),
        cmocka_unit_test(test_e8p_codebook),       cmocka_unit_test(test_e8p_nearest),
        cmocka_unit_test(test_e8p_scan_avx2),
        cmocka_unit_test(test_rht_consistent),     cmocka_unit_test(test_ldlq_beats_rtn),
        cmocka_unit_test(test_more_tokens_better_ldlq),
        cmocka_unit_test(test_rotation_helps_int), cmocka_unit_test(test_gguf_round_trip),
    };
    ql_test_order_from_env(tests, QL_ARRAY_LEN(tests));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
