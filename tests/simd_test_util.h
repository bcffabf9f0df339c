/* simd_test_util.h — harness shared by test_simd.c and test_simd2.c: fast kernel vs scalar reference at
 * every SIMD level this CPU has, on deterministic random and adversarial rows (zeros, outliers, NaN/Inf,
 * denormals, constants, ties, raw bits ...), with and without importance weights. Include once, from a
 * test's .c file, after defining:
 *   SIMD_TEST_SEED        the test's random seed (uint64_t literal)
 *   SIMD_TEST_NKIND       how many row kinds of kind_names it uses (22: the basic ones, 30: all)
 *   SIMD_TEST_IMAT_MODES  brace list of fill_imatrix modes to try on each kind, e.g. {0, 1, 2, 4} */
#ifndef QL_SIMD_TEST_UTIL_H
#define QL_SIMD_TEST_UTIL_H
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/simd.h"
#include "formats/format.h"
#include "base/ql_common.h"

#if !defined(SIMD_TEST_SEED) || !defined(SIMD_TEST_NKIND) || !defined(SIMD_TEST_IMAT_MODES)
#error "define SIMD_TEST_SEED, SIMD_TEST_NKIND and SIMD_TEST_IMAT_MODES before including simd_test_util.h"
#endif

typedef struct {
    const char *name; /* registry name; its quantize_rows / dequantize_rows are the reference */
    int block;        /* row lengths tested are multiples of this */
    ql_quantize_fn quant;
    ql_dequantize_fn dequant; /* NULL: the format has a quantize twin only (its dequantize is the reference) */
    bool imatrix; /* the fast quantizer has an imatrix path to test */
} kernel_t;

static const ql_format *fmt_of(const kernel_t *k) {
    const ql_format *f = ql_format_by_name(k->name);
    if (!f) fail_msg("format %s is not in the registry", k->name);
    return f;
}

static int64_t tensor_bytes(const kernel_t *k, int64_t ncols, int64_t nrows) {
    int64_t n = ql_format_tensor_bytes(fmt_of(k), ncols, nrows);
    assert_true(n >= 0);
    return n;
}

static const ql_simd_level levels[] = {QL_SIMD_AVX2, QL_SIMD_AVX512};
static ql_simd_level g_initial_level;

/* ---- deterministic data ---- */
static uint64_t g_rng = SIMD_TEST_SEED;
static uint64_t rnd64(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd_u(void) { return (double)(rnd64() >> 11) * (1.0 / 9007199254740992.0) + 1e-300; }
static float rnd_n(void) { return (float)(sqrt(-2.0 * log(rnd_u())) * cos(6.283185307179586 * rnd_u())); }
static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The first 22 kinds are the basic adversarial rows; 22.. add raw bits and fp16/bf16 rounding edges. */
enum { NKIND = SIMD_TEST_NKIND };
static const char *const kind_names[30] = {
    "gauss",         "gauss*1e-3",   "zeros",        "outlier 1e30", "outlier 65504", "outlier -65504",
    "NaN",           "+Inf",         "-Inf",         "denormals",    "denormal+1",    "const 3",
    "const -2.5",    "tiny 1e-20",   "alternating",  "ties",         "ramp",          "sparse",
    "one per block", "huge 1e37",    "neg max first", "mixed",       "random bits",   "fp16 ties",
    "fp16 edges",    "NaN payloads", "bf16 ties",    "signed zeros", "+-3e38",        "small ints",
};
_Static_assert(SIMD_TEST_NKIND >= 22 && SIMD_TEST_NKIND <= 30, "SIMD_TEST_NKIND");

/* Fills x[n] with values of kind `kind`. */
static void fill_row(float *x, int64_t n, int kind) {
    static const float edges[] = {65504.0f, 65519.996f, 65520.0f, 65536.0f, 6.1035156e-5f, 6.0975552e-5f,
                                  5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 8.940697e-8f, -0.0f, 1e-45f,
                                  3.4028235e38f, 1.1754944e-38f, 0.33325195f, 2049.0f, 4097.0f};
    for (int64_t i = 0; i < n; ++i) {
        float g = rnd_n();
        float v;
        switch (kind) {
        case 0: v = g; break;
        case 1: v = g * 1e-3f; break;
        case 2: v = 0.0f; break;
        case 3: v = i == n / 3 ? 1e30f : g; break;
        case 4: v = i == 77 % n ? 65504.0f : g; break;
        case 5: v = i == (n - 5 + n) % n ? -65504.0f : g * 0.01f; break;
        case 6: v = i % 97 == 13 ? NAN : g; break;
        case 7: v = i % 131 == 7 ? INFINITY : g; break;
        case 8: v = i % 61 == 60 ? -INFINITY : g; break;
        case 9: v = g * 1e-40f; break;
        case 10: v = i % 2 ? g * 1e-39f : g; break;
        case 11: v = 3.0f; break;
        case 12: v = -2.5f; break;
        case 13: v = g * 1e-20f; break;
        case 14: v = (i & 1) ? 1.0f : -1.0f; break;
        case 15: /* amax 127 and halves: Q8_0 sees exact .5 products (roundf ties) */
            v = i % 32 == 0 ? 127.0f : (float)((int)(rnd64() % 255) - 127) + 0.5f;
            break;
        case 16: v = (float)i / (float)n - 0.5f; break;
        case 17: v = rnd64() % 17 == 0 ? g * 10 : 0.0f; break;
        case 18: v = i % 32 == 5 ? g : 0.0f; break;
        case 19: v = g * 1e37f; break;
        case 20: v = i % 16 == 0 ? -4.0f : (i % 16 == 1 ? 4.0f : g); break; /* |max| tie: first wins */
        case 21: v = (rnd64() & 3) == 0 ? g * 100 : g * 0.01f; break;
        case 22: v = from_bits((uint32_t)rnd64()); break;
        case 23: { /* halfway between two fp16 values (normal or subnormal) */
            const uint32_t r = (uint32_t)rnd64();
            const uint32_t e = 103 + r % 39; /* fp32 exponents of fp16 subnormals .. 65504 */
            v = from_bits(((r >> 31) << 31) | (e << 23) | (((r >> 8) & 0x7fe000u) | 0x1000u));
            if (e < 113) v = ((float)(r % 1024) + 0.5f) * 5.9604644775390625e-8f * ((r >> 31) ? -1.0f : 1.0f);
            break;
        }
        case 24: v = edges[rnd64() % QL_ARRAY_LEN(edges)] * ((rnd64() & 1) ? -1.0f : 1.0f); break;
        case 25: { /* NaN, quiet or signalling, any payload, either sign; every third value */
            const uint32_t r = (uint32_t)rnd64();
            const uint32_t payload = (r & 0x7fffffu) ? r & 0x7fffffu : 1u;
            v = i % 3 ? g : from_bits((r & 0x80000000u) | 0x7f800000u | payload);
            break;
        }
        case 26: v = from_bits(((uint32_t)rnd64() & 0xffff0000u) | 0x8000u); break;
        case 27: v = (rnd64() & 1) ? -0.0f : (i % 5 == 0 ? g : 0.0f); break;
        case 28: v = (i & 1) ? 3e38f : -3e38f; break;
        default: v = (float)((int)(rnd64() % 33) - 16); break;
        }
        x[i] = v;
    }
}

/* Importance weights: 0 uniform, 1 sparse ramp, 2 zeros, 3 a NaN, 4 signed products of gaussians. */
static void fill_imatrix(float *w, int64_t n, int mode) {
    for (int64_t i = 0; i < n; ++i) {
        switch (mode) {
        case 0: w[i] = 0.5f + (float)rnd_u() * 4.0f; break;
        case 1: w[i] = i % 5 == 0 ? 0.0f : 1.0f + (float)i; break;
        case 2: w[i] = 0.0f; break;
        case 3: w[i] = i == n / 2 ? NAN : 1.0f; break; /* a non-finite imatrix: the reference decides */
        default: w[i] = rnd_n() * rnd_n(); break;     /* some negative, some large */
        }
    }
}

static int64_t first_diff(const void *a, const void *b, size_t n) {
    const uint8_t *p = a, *q = b;
    for (size_t i = 0; i < n; ++i)
        if (p[i] != q[i]) return (int64_t)i;
    return -1;
}

/* Quantize rows with the fast kernel at the current level and with the reference; bytes must match.
 * Then dequantize the reference bytes both ways; float bits must match. */
static void check_rows(const kernel_t *k, const float *x, int64_t nrows, int64_t ncols, const float *imat,
                       const char *what) {
    const ql_format *f = fmt_of(k);
    const int64_t rb = tensor_bytes(k, ncols, 1);
    const size_t qbytes = (size_t)(rb * nrows), fbytes = (size_t)(nrows * ncols) * sizeof(float);
    uint8_t *qf = malloc(qbytes), *qr = malloc(qbytes);
    float *df = malloc(fbytes), *dr = malloc(fbytes);
    memset(qf, 0xA5, qbytes);
    memset(qr, 0x5A, qbytes);
    k->quant(x, qf, nrows, ncols, imat);
    f->quantize_rows(x, qr, nrows, ncols, imat);
    int64_t bad = first_diff(qf, qr, qbytes);
    if (bad >= 0)
        fail_msg("%s %s [%s] imat=%s: quantize differs at byte %lld (row %lld, byte %lld): %02x vs ref %02x",
                 k->name, ql_simd_level_name(ql_simd_level_get()), what, imat ? "yes" : "no", (long long)bad,
                 (long long)(bad / rb), (long long)(bad % rb), qf[bad], qr[bad]);
    memset(df, 0xA5, fbytes);
    memset(dr, 0x5A, fbytes);
    (k->dequant ? k->dequant : f->dequantize_rows)(qr, df, nrows, ncols);
    f->dequantize_rows(qr, dr, nrows, ncols);
    bad = first_diff(df, dr, fbytes);
    if (bad >= 0)
        fail_msg("%s %s [%s]: dequantize differs at float %lld: %.9g vs ref %.9g", k->name,
                 ql_simd_level_name(ql_simd_level_get()), what, (long long)(bad / 4), (double)df[bad / 4],
                 (double)dr[bad / 4]);
    free(qf);
    free(qr);
    free(df);
    free(dr);
}

/* Dequantize arbitrary bytes (random codes, scales that are NaN/Inf/subnormal fp16) both ways. */
static void check_random_bytes(const kernel_t *k, int64_t nrows, int64_t ncols) {
    const size_t qbytes = (size_t)tensor_bytes(k, ncols, nrows),
                 fbytes = (size_t)(nrows * ncols) * sizeof(float);
    if (!k->dequant) return; /* no dequantize twin */
    uint8_t *q = malloc(qbytes);
    float *df = malloc(fbytes), *dr = malloc(fbytes);
    for (size_t i = 0; i < qbytes; ++i) q[i] = (uint8_t)rnd64();
    k->dequant(q, df, nrows, ncols);
    fmt_of(k)->dequantize_rows(q, dr, nrows, ncols);
    int64_t bad = first_diff(df, dr, fbytes);
    if (bad >= 0)
        fail_msg("%s %s: dequantize of random bytes differs at float %lld", k->name,
                 ql_simd_level_name(ql_simd_level_get()), (long long)(bad / 4));
    free(q);
    free(df);
    free(dr);
}

static void run_kernel_at_level(const kernel_t *k) {
    static const int imat_modes[] = SIMD_TEST_IMAT_MODES;
    /* rows need not be whole blocks / vectors: 200 checks the short-group route (INTn) and the scalar
     * tails (F16 / BF16, whose block of 1 also gives rows of 1, 2 and 3) */
    const int64_t ncols_list[] = {k->block, 2 * k->block, 3 * k->block, 4096, 200};
    const size_t nlist = ql_format_fits(fmt_of(k), 200) ? 5 : 4;
    char what[96];
    /* one kind per matrix, several rows (odd counts) */
    for (size_t c = 0; c < nlist; ++c) {
        const int64_t ncols = ncols_list[c];
        const int64_t nrows = c == 3 ? 3 : 5;
        float *x = malloc(sizeof(float) * (size_t)(nrows * ncols));
        float *w = malloc(sizeof(float) * (size_t)ncols);
        for (int kind = 0; kind < NKIND; ++kind) {
            for (int64_t r = 0; r < nrows; ++r) fill_row(x + r * ncols, ncols, kind);
            snprintf(what, sizeof(what), "%s, %lldx%lld", kind_names[kind], (long long)nrows,
                     (long long)ncols);
            check_rows(k, x, nrows, ncols, NULL, what);
            if (k->imatrix)
                for (size_t m = 0; m < QL_ARRAY_LEN(imat_modes); ++m) {
                    fill_imatrix(w, ncols, imat_modes[m]);
                    check_rows(k, x, nrows, ncols, w, what);
                }
        }
        /* every row a different kind */
        for (int rep = 0; rep < 3; ++rep) {
            for (int64_t r = 0; r < nrows; ++r) fill_row(x + r * ncols, ncols, (int)(rnd64() % NKIND));
            snprintf(what, sizeof(what), "mixed kinds, %lldx%lld", (long long)nrows, (long long)ncols);
            check_rows(k, x, nrows, ncols, NULL, what);
            if (k->imatrix) {
                fill_imatrix(w, ncols, 0);
                check_rows(k, x, nrows, ncols, w, what);
            }
        }
        check_random_bytes(k, nrows, ncols);
        free(x);
        free(w);
    }
    /* a single row, and zero rows (must not touch anything) */
    float one[256];
    fill_row(one, k->block, 0);
    check_rows(k, one, 1, k->block, NULL, "single block");
    k->quant(one, NULL, 0, k->block, NULL);
    if (k->dequant) k->dequant(NULL, one, 0, k->block);
}

/* cmocka test, prestate = the kernel_t: identical to the reference at every level the CPU has. */
static void test_kernel(void **state) {
    const kernel_t *k = *state;
    const ql_simd_level best = ql_simd_detect();
    int ran = 0;
    for (size_t l = 0; l < QL_ARRAY_LEN(levels); ++l) {
        if (levels[l] > best) {
            printf("  %s: %s not available on this CPU, skipped\n", k->name, ql_simd_level_name(levels[l]));
            continue;
        }
        assert_int_equal(ql_simd_set_level(levels[l]), levels[l]);
        run_kernel_at_level(k);
        printf("  %s: %s identical to ref\n", k->name, ql_simd_level_name(levels[l]));
        ran++;
    }
    /* the ref level must route to the reference too */
    assert_int_equal(ql_simd_set_level(QL_SIMD_REF), QL_SIMD_REF);
    run_kernel_at_level(k);
    ql_simd_set_level(g_initial_level);
    if (!ran) {
        printf("SKIP: %s: this CPU has neither AVX2 nor AVX-512\n", k->name);
        skip();
    }
}

/* The registry entries use the fast kernels, and the threaded driver still matches the reference. */
static void check_registry_threads(const kernel_t *kernels, size_t nkernels) {
    const ql_simd_level best = ql_simd_detect();
    for (size_t i = 0; i < nkernels; ++i) {
        const kernel_t *k = &kernels[i];
        const ql_format *f = fmt_of(k);
        assert_true(f->simd && f->simd->quantize_rows == k->quant);
        assert_true(f->simd && f->simd->dequantize_rows == k->dequant);
        const int64_t ncols = 2048, nrows = 37; /* 75776 weights: above the driver's threading cut */
        const int64_t rb = tensor_bytes(k, ncols, 1);
        float *x = malloc(sizeof(float) * (size_t)(nrows * ncols)), *w = malloc(sizeof(float) * ncols);
        uint8_t *qa = malloc((size_t)(rb * nrows)), *qb = malloc((size_t)(rb * nrows));
        float *da = malloc(sizeof(float) * (size_t)(nrows * ncols)),
              *db = malloc(sizeof(float) * (size_t)(nrows * ncols));
        for (int64_t r = 0; r < nrows; ++r) fill_row(x + r * ncols, ncols, (int)(r % NKIND));
        fill_imatrix(w, ncols, 0);
        for (size_t l = 0; l < QL_ARRAY_LEN(levels); ++l) {
            if (levels[l] > best) continue;
            ql_simd_set_level(levels[l]);
            for (int im = 0; im < (k->imatrix ? 2 : 1); ++im) {
                for (int nt = 1; nt <= 3; ++nt) {
                    assert_int_equal(ql_format_quantize(f, x, qa, nrows, ncols, im ? w : NULL, nt), QL_OK);
                    f->quantize_rows(x, qb, nrows, ncols, im ? w : NULL);
                    assert_int_equal(first_diff(qa, qb, (size_t)(rb * nrows)), -1);
                    assert_int_equal(ql_format_dequantize(f, qb, da, nrows, ncols, nt), QL_OK);
                    f->dequantize_rows(qb, db, nrows, ncols);
                    assert_int_equal(first_diff(da, db, sizeof(float) * (size_t)(nrows * ncols)), -1);
                }
            }
        }
        ql_simd_set_level(g_initial_level);
        free(x);
        free(w);
        free(qa);
        free(qb);
        free(da);
        free(db);
    }
}

/* Rough speed of fast vs reference on 64 rows of 4096, with and without imatrix (printed, not asserted). */
static void print_speed(const kernel_t *kernels, size_t nkernels) {
    const int64_t nrows = 64, ncols = 4096;
    float *x = malloc(sizeof(float) * (size_t)(nrows * ncols)),
          *y = malloc(sizeof(float) * (size_t)(nrows * ncols)), *w = malloc(sizeof(float) * (size_t)ncols);
    uint8_t *q = malloc((size_t)(nrows * ncols) * 2);
    for (int64_t i = 0; i < nrows * ncols; ++i) x[i] = rnd_n();
    fill_imatrix(w, ncols, 0);
    for (size_t i = 0; i < nkernels; ++i) {
        const kernel_t *k = &kernels[i];
        const ql_format *f = fmt_of(k);
        for (int im = 0; im < (k->imatrix ? 2 : 1); ++im) {
            const float *imp = im ? w : NULL;
            double t0 = ql_time_s();
            f->quantize_rows(x, q, nrows, ncols, imp);
            double t1 = ql_time_s();
            k->quant(x, q, nrows, ncols, imp);
            double t2 = ql_time_s();
            f->dequantize_rows(q, y, nrows, ncols);
            double t3 = ql_time_s();
            (k->dequant ? k->dequant : f->dequantize_rows)(q, y, nrows, ncols);
            double t4 = ql_time_s();
            printf("  %-6s%s (%s): quantize %.1f ms -> %.1f ms (x%.1f), "
                   "dequantize %.2f ms -> %.2f ms (x%.1f)\n",
                   k->name, im ? "+imat" : "     ", ql_simd_level_name(ql_simd_level_get()), (t1 - t0) * 1e3,
                   (t2 - t1) * 1e3, (t1 - t0) / (t2 - t1), (t3 - t2) * 1e3, (t4 - t3) * 1e3,
                   (t3 - t2) / (t4 - t3));
        }
    }
    free(x);
    free(y);
    free(w);
    free(q);
}

#endif /* QL_SIMD_TEST_UTIL_H */
