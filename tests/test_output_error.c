/* test_output_error.c — the one quantize-then-dequantize (ql_format_roundtrip, ql_method_roundtrip) and
 * the one output / weight error (core/output_error.h): against straightforward loops written here, on
 * seeded random matrices with a random symmetric positive semi-definite H, with and without column
 * scales, across row counts that do and do not fill the row blocks, plus the edge cases (zero change,
 * zero weights, shapes a format cannot store, decode-only formats). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/output_error.h"
#include "formats/format.h"
#include "methods/layer_f32.h"
#include "methods/method.h"
#include "base/ql_common.h"

static uint64_t g_rng = 0x5DEECE66Dull;
static double rnd_u(void) { /* [0, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) * (1.0 / 9007199254740992.0);
}
static float rnd_f(void) { return (float)(2 * rnd_u() - 1); }

/* H = A Aᵀ with A [n, k]: symmetric positive semi-definite, full (both triangles). */
static double *random_h(int64_t n, int64_t k) {
    double *A = malloc((size_t)(n * k) * sizeof(double)), *H = calloc((size_t)(n * n), sizeof(double));
    for (int64_t i = 0; i < n * k; i++) A[i] = 2 * rnd_u() - 1;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t t = 0; t < k; t++) H[i * n + j] += A[i * k + t] * A[j * k + t];
    free(A);
    return H;
}

/* Σ_r Σ_ij δ_ri H_ij δ_rj with δ = (a − b) / s, in long double */
static double naive_out(const float *a, const float *b, const float *s, int64_t rows, int64_t cols, const double *H) {
    long double tr = 0;
    double *d = malloc((size_t)cols * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            d[c] = ((double)a[r * cols + c] - (b ? b[r * cols + c] : 0.0f)) / (s ? s[c] : 1.0f);
        for (int64_t i = 0; i < cols; i++)
            for (int64_t j = 0; j < cols; j++) tr += (long double)d[i] * H[i * cols + j] * d[j];
    }
    free(d);
    return (double)tr;
}

static void test_output_error_matches_definition(void **state) {
    (void)state;
    const int64_t cols = 48;
    double *H = random_h(cols, 20);
    const int64_t row_counts[] = {1, 63, 64, 65, 200};
    for (size_t k = 0; k < sizeof row_counts / sizeof row_counts[0]; k++) {
        const int64_t rows = row_counts[k], n = rows * cols;
        float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float)), s[48];
        for (int64_t i = 0; i < n; i++) {
            a[i] = rnd_f();
            b[i] = a[i] + 0.01f * rnd_f();
        }
        for (int c = 0; c < cols; c++) s[c] = 0.25f + (float)rnd_u() * 4;
        const float *scales[] = {NULL, s};
        for (int si = 0; si < 2; si++) {
            const double got = ql_output_error(a, b, scales[si], rows, cols, H);
            const double want = naive_out(a, b, scales[si], rows, cols, H);
            assert_true(want > 0);
            assert_true(fabs(got - want) <= 1e-10 * want);
            /* b NULL: the reference tr(W H Wᵀ) */
            const double ref = ql_output_error(a, NULL, scales[si], rows, cols, H);
            assert_true(fabs(ref - naive_out(a, NULL, scales[si], rows, cols, H)) <= 1e-10 * ref);
        }
        /* rows are independent: the first rows alone give the same partial sum as computed alone */
        if (rows > 64) {
            const double whole = ql_output_error(a, b, NULL, rows, cols, H);
            const double head = ql_output_error(a, b, NULL, 64, cols, H);
            const double tail = ql_output_error(a + 64 * cols, b + 64 * cols, NULL, rows - 64, cols, H);
            assert_true(fabs(whole - (head + tail)) <= 1e-12 * whole);
        }
        assert_true(ql_output_error(a, a, s, rows, cols, H) == 0); /* no change, no error */
        free(a);
        free(b);
    }
    /* H = I: the squared Frobenius norm of the change */
    double *I = calloc(16, sizeof(double));
    for (int i = 0; i < 4; i++) I[i * 4 + i] = 1;
    const float a[8] = {1, 2, 3, 4, 0, 0, 0, 0}, b[8] = {1, 2, 3, 2, 0, 0, 0, -1};
    assert_true(ql_output_error(a, b, NULL, 2, 4, I) == 5.0);
    free(I);
    free(H);
}

static void test_weight_error(void **state) {
    (void)state;
    const float w[4] = {1, -2, 2, 0}, q[4] = {1, -2, 1, 1}, z[4] = {0};
    assert_true(ql_weight_error(w, q, 4) == 2.0 / 9.0);
    assert_true(ql_weight_error(w, w, 4) == 0);
    assert_true(ql_weight_error(z, z, 4) == 0);
    assert_true(isinf(ql_weight_error(z, q, 4)));
}

static void test_format_roundtrip(void **state) {
    (void)state;
    const int64_t rows = 8, cols = 512, n = rows * cols;
    float *w = malloc((size_t)n * sizeof(float)), *out = malloc((size_t)n * sizeof(float)),
          *want = malloc((size_t)n * sizeof(float)), imp[512];
    for (int64_t i = 0; i < n; i++) w[i] = rnd_f();
    for (int c = 0; c < cols; c++) imp[c] = 0.1f + (float)rnd_u();
    const char *names[] = {"q4_k", "q8_0", "int4_g128", "nf4", "iq4_nl"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const ql_format *f = ql_format_by_name(names[k]);
        assert_non_null(f);
        const float *imps[] = {NULL, imp};
        for (int ii = 0; ii < 2; ii++) {
            void *codes = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
            assert_int_equal(ql_format_quantize(f, w, codes, rows, cols, imps[ii], 2), QL_OK);
            assert_int_equal(ql_format_dequantize(f, codes, want, rows, cols, 2), QL_OK);
            free(codes);
            assert_int_equal(ql_format_roundtrip(f, w, out, rows, cols, imps[ii], 2), QL_OK);
            assert_memory_equal(out, want, (size_t)n * sizeof(float));
            /* through a method: RTN and "no method" are the format's own rounding, w untouched */
            float *w0 = malloc((size_t)n * sizeof(float));
            memcpy(w0, w, (size_t)n * sizeof(float));
            ql_method_opts mo = {.n_threads = 2, .importance = imps[ii]};
            memset(out, 0, (size_t)n * sizeof(float));
            assert_int_equal(ql_method_roundtrip(ql_method_by_name("rtn"), w, rows, cols, f, NULL, &mo, out), QL_OK);
            assert_memory_equal(out, want, (size_t)n * sizeof(float));
            memset(out, 0, (size_t)n * sizeof(float));
            assert_int_equal(ql_method_roundtrip(NULL, w, rows, cols, f, NULL, &mo, out), QL_OK);
            assert_memory_equal(out, want, (size_t)n * sizeof(float));
            assert_memory_equal(w, w0, (size_t)n * sizeof(float));
            free(w0);
        }
        /* in place */
        memcpy(out, w, (size_t)n * sizeof(float));
        assert_int_equal(ql_format_roundtrip(f, out, out, rows, cols, NULL, 1), QL_OK);
        assert_int_equal(ql_format_roundtrip(f, w, want, rows, cols, NULL, 1), QL_OK);
        assert_memory_equal(out, want, (size_t)n * sizeof(float));
    }
    /* a shape the format cannot store, and a decode-only format: errors, not crashes */
    assert_int_equal(ql_format_roundtrip(ql_format_by_name("q4_k"), w, out, 1, 100, NULL, 1), QL_ERR_ARG);
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (f->quantize_rows || !ql_format_fits(f, cols)) continue;
        assert_int_not_equal(ql_format_roundtrip(f, w, out, rows, cols, NULL, 1), QL_OK);
        break;
    }
    free(w);
    free(out);
    free(want);
}

/* ql_quant_output_error (methods/layer_f32.h) is the round trip of w·s measured by ql_output_error. */
static void test_quant_output_error(void **state) {
    (void)state;
    const int64_t rows = 70, cols = 64, n = rows * cols;
    double *H = random_h(cols, 16);
    float *w = malloc((size_t)n * sizeof(float)), *ws = malloc((size_t)n * sizeof(float)),
          *q = malloc((size_t)n * sizeof(float)), s[64];
    for (int64_t i = 0; i < n; i++) w[i] = rnd_f();
    for (int c = 0; c < cols; c++) s[c] = 0.5f + (float)rnd_u();
    const ql_format *f = ql_format_by_name("q4_0");
    for (int scaled = 0; scaled < 2; scaled++) {
        const float *cs = scaled ? s : NULL;
        for (int64_t i = 0; i < n; i++) ws[i] = cs ? w[i] * cs[i % cols] : w[i];
        assert_int_equal(ql_format_roundtrip(f, ws, q, rows, cols, NULL, 1), QL_OK);
        const double want = ql_output_error(q, ws, cs, rows, cols, H);
        assert_true(want > 0);
        assert_true(ql_quant_output_error(w, rows, cols, f, cs, H, 2) == want);
    }
    assert_true(ql_quant_output_error(w, rows, cols, ql_format_by_name("q4_k"), NULL, H, 1) < 0); /* 64 % 256 */
    free(w);
    free(ws);
    free(q);
    free(H);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_error_matches_definition),
        cmocka_unit_test(test_weight_error),
        cmocka_unit_test(test_format_roundtrip),
        cmocka_unit_test(test_quant_output_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
