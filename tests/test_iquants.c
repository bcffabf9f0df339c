/* test_iquants.c — kernels/iq_quants_ref.c against ggml's own output: every IQ1/IQ2/IQ3/TQ vector in
 * ../shared/testdata/ggml-quants quantized byte for byte and decoded bit for bit; concurrent first
 * use of the lazily built lattice tables; refusal without an imatrix where ggml refuses; and rows
 * ggml has no vector for (zeros, outliers, NaN), which must not crash and keep basic sense. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_quants.h"
#include "tests/test_util.h"

#define NROWS 64
#define NCOLS 512

typedef void (*row_decoder)(const void *x, float *y, int64_t n);

typedef struct {
    const char *name; /* file stem, ggml's upper-case type name */
    uint32_t type;
    bool plain;       /* TYPE.q exists (no imatrix) */
    bool imat;        /* TYPE-imat.q exists */
    row_decoder decode;
} case_t;

static const case_t cases[] = {
    {"IQ2_XXS", QL_TYPE_IQ2_XXS, false, true, ql_dequantize_row_iq2_xxs_ref},
    {"IQ2_XS", QL_TYPE_IQ2_XS, false, true, ql_dequantize_row_iq2_xs_ref},
    {"IQ2_S", QL_TYPE_IQ2_S, true, true, ql_dequantize_row_iq2_s_ref},
    {"IQ3_XXS", QL_TYPE_IQ3_XXS, true, true, ql_dequantize_row_iq3_xxs_ref},
    {"IQ3_S", QL_TYPE_IQ3_S, true, true, ql_dequantize_row_iq3_s_ref},
    {"IQ1_S", QL_TYPE_IQ1_S, false, true, ql_dequantize_row_iq1_s_ref},
    {"IQ1_M", QL_TYPE_IQ1_M, true, true, ql_dequantize_row_iq1_m_ref},
    {"TQ1_0", QL_TYPE_TQ1_0, true, false, ql_dequantize_row_tq1_0_ref},
    {"TQ2_0", QL_TYPE_TQ2_0, true, false, ql_dequantize_row_tq2_0_ref},
};

/* Bytes of nrows rows, or 0 when quantization was refused. */
static size_t quantize(uint32_t type, const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imat) {
    if (ql_iq_quantize_rows(type, src, dst, nrows, ncols, imat) != QL_OK) return 0;
    return (size_t)(nrows * ql_type_row_bytes(type, ncols));
}

static void dequantize(uint32_t type, const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t rb = ql_type_row_bytes(type, ncols);
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); ++i)
        if (cases[i].type == type) {
            for (int64_t r = 0; r < nrows; ++r) cases[i].decode((const char *)src + r * rb, dst + r * ncols, ncols);
            return;
        }
    fail_msg("no decoder for type %u", type);
}

static char g_dir[1024];
static float *g_input, *g_imatrix;

static void *read_file(const char *name, size_t *len) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

static int group_setup(void **state) {
    (void)state;
    const char *sh = getenv("QL_SHARED");
    snprintf(g_dir, sizeof(g_dir), "%s/testdata/ggml-quants", sh && *sh ? sh : "../shared");
    size_t n1 = 0, n2 = 0;
    g_input = read_file("input.f32", &n1);
    g_imatrix = read_file("imatrix.f32", &n2);
    if (!g_input || !g_imatrix || n1 != NROWS * NCOLS * 4 || n2 != NCOLS * 4) {
        free(g_input);
        free(g_imatrix);
        g_input = g_imatrix = NULL;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    free(g_input);
    free(g_imatrix);
    return 0;
}

static size_t row_bytes(uint32_t type, int64_t n) { return (size_t)ql_type_row_bytes(type, n); }

/* ---- first use from several threads at once: each must see complete tables ---------------------- */

typedef struct {
    uint32_t type;
    const float *imatrix;
    uint8_t *out;
} job_t;

static void *quantize_job(void *arg) {
    job_t *j = arg;
    quantize(j->type, g_input, j->out, NROWS, NCOLS, j->imatrix);
    return NULL;
}

/* Runs first in the group, so the lattices are still unbuilt: 4 threads per lattice-sharing pair
 * (IQ1_S and IQ1_M share one; IQ2_XXS, IQ3_S each their own) race to build them, and every thread's
 * bytes must equal ggml's. */
static void test_concurrent_first_use(void **state) {
    (void)state;
    if (!g_input) {
        /* skips only without the shared folder; a folder that lacks the vectors (or has short ones) fails */
        char path[1200];
        if (!shared_path(path, sizeof path, "testdata/ggml-quants/input.f32")) skip();
        fail_msg("%s/input.f32 or imatrix.f32: unreadable or of the wrong size", g_dir);
    }
    static const struct {
        uint32_t type;
        const char *file;
    } plan[4] = {{QL_TYPE_IQ1_S, "IQ1_S-imat.q"},
                 {QL_TYPE_IQ1_M, "IQ1_M-imat.q"},
                 {QL_TYPE_IQ2_XXS, "IQ2_XXS-imat.q"},
                 {QL_TYPE_IQ3_S, "IQ3_S-imat.q"}};
    enum { PER = 2 };
    pthread_t th[4 * PER];
    job_t jobs[4 * PER];
    for (int t = 0; t < 4 * PER; ++t) {
        jobs[t].type = plan[t % 4].type;
        jobs[t].imatrix = g_imatrix;
        jobs[t].out = calloc(NROWS, row_bytes(jobs[t].type, NCOLS));
        assert_int_equal(pthread_create(&th[t], NULL, quantize_job, &jobs[t]), 0);
    }
    for (int t = 0; t < 4 * PER; ++t) assert_int_equal(pthread_join(th[t], NULL), 0);
    for (int t = 0; t < 4 * PER; ++t) {
        size_t len = 0;
        uint8_t *ref = read_file(plan[t % 4].file, &len);
        assert_non_null(ref);
        assert_int_equal(len, NROWS * row_bytes(jobs[t].type, NCOLS));
        assert_memory_equal(jobs[t].out, ref, len);
        free(ref);
        free(jobs[t].out);
    }
}

/* ---- the reference vectors ------------------------------------------------------------------- */

static int g_pass, g_total;

static void check_one(const case_t *c, bool imat) {
    char qname[64], dname[64];
    snprintf(qname, sizeof(qname), "%s%s.q", c->name, imat ? "-imat" : "");
    snprintf(dname, sizeof(dname), "%s%s.deq.f32", c->name, imat ? "-imat" : "");
    size_t qlen = 0, dlen = 0;
    uint8_t *ref_q = read_file(qname, &qlen);
    float *ref_d = read_file(dname, &dlen);
    assert_non_null(ref_q);
    assert_non_null(ref_d);
    const size_t rb = row_bytes(c->type, NCOLS);
    assert_int_equal(qlen, rb * NROWS);
    assert_int_equal(dlen, (size_t)NROWS * NCOLS * 4);

    uint8_t *q = calloc(1, qlen);
    float *d = calloc(NROWS * NCOLS, sizeof(float));
    /* one row first, so the timing below excludes the one-time table build */
    assert_int_equal(quantize(c->type, g_input, q, 1, NCOLS, imat ? g_imatrix : NULL), rb);
    const double t0 = ql_time_s();
    const size_t wrote = quantize(c->type, g_input, q, NROWS, NCOLS, imat ? g_imatrix : NULL);
    const double dt = ql_time_s() - t0;
    assert_int_equal(wrote, qlen);
    long bad_q = -1, nbad_q = 0;
    for (size_t i = 0; i < qlen; ++i)
        if (q[i] != ref_q[i]) {
            if (bad_q < 0) bad_q = (long)i;
            nbad_q++;
        }
    /* ggml's bytes through qlab's decoder, and qlab's own bytes too (equal when the bytes are) */
    dequantize(c->type, ref_q, d, NROWS, NCOLS);
    long bad_d = -1;
    for (size_t i = 0; i < (size_t)NROWS * NCOLS; ++i)
        if (memcmp(&d[i], &ref_d[i], 4) != 0) {
            bad_d = (long)i;
            break;
        }
    dequantize(c->type, q, d, NROWS, NCOLS);
    long bad_own = -1;
    for (size_t i = 0; i < (size_t)NROWS * NCOLS; ++i)
        if (memcmp(&d[i], &ref_d[i], 4) != 0) {
            bad_own = (long)i;
            break;
        }
    g_total++;
    if (bad_q < 0 && bad_d < 0 && bad_own < 0) g_pass++;
    printf("  %-15s bytes %s", qname, bad_q < 0 ? "bit-exact" : "MISMATCH");
    if (bad_q >= 0)
        printf(" (%ld bytes differ, first at row %ld byte %ld)", nbad_q, bad_q / (long)rb, bad_q % (long)rb);
    printf("; floats %s; %.0f rows/s\n", bad_d < 0 && bad_own < 0 ? "bit-exact" : "MISMATCH",
           dt > 0 ? NROWS / dt : 0.0);
    free(q);
    free(d);
    free(ref_q);
    free(ref_d);
    assert_true(bad_q < 0);
    assert_true(bad_d < 0);
    assert_true(bad_own < 0);
}

static void test_reference(void **state) {
    const case_t *c = *state;
    if (!g_input) {
        /* skips only without the shared folder; a folder that lacks the vectors (or has short ones) fails */
        char path[1200];
        if (!shared_path(path, sizeof path, "testdata/ggml-quants/input.f32")) skip();
        fail_msg("%s/input.f32 or imatrix.f32: unreadable or of the wrong size", g_dir);
    }
    if (c->plain) check_one(c, false);
    if (c->imat) check_one(c, true);
}

/* ---- refusal without an imatrix -------------------------------------------------------------- */

static void test_requires_imatrix(void **state) {
    (void)state;
    float x[256];
    for (int i = 0; i < 256; ++i) x[i] = (float)((i * 37) % 19) - 9.0f;
    uint8_t q[256];
    static const uint32_t need[] = {QL_TYPE_IQ2_XXS, QL_TYPE_IQ2_XS, QL_TYPE_IQ1_S};
    for (size_t i = 0; i < QL_ARRAY_LEN(need); ++i) {
        assert_true(ql_ggml_quantize_requires_imatrix(need[i]));
        memset(q, 0xAB, sizeof(q));
        assert_int_equal(ql_iq_quantize_rows(need[i], x, q, 1, 256, NULL), QL_ERR_ARG);
        assert_non_null(strstr(ql_last_error(), "importance matrix"));
        assert_non_null(strstr(ql_last_error(), ql_type_get(need[i])->name));
        assert_int_equal(q[0], 0xAB); /* nothing written */
        float w[256];
        for (int j = 0; j < 256; ++j) w[j] = 1.0f;
        assert_int_equal(ql_iq_quantize_rows(need[i], x, q, 1, 256, w), QL_OK);
        assert_int_not_equal(q[0] | q[1], 0); /* a non-zero scale was written */
    }
    /* the others quantize without one (IQ1_M falls back to x^2 weights, as ggml) */
    static const uint32_t free_[] = {QL_TYPE_IQ2_S, QL_TYPE_IQ3_XXS, QL_TYPE_IQ3_S, QL_TYPE_IQ1_M,
                                     QL_TYPE_TQ1_0, QL_TYPE_TQ2_0};
    for (size_t i = 0; i < QL_ARRAY_LEN(free_); ++i) {
        assert_false(ql_ggml_quantize_requires_imatrix(free_[i]));
        assert_int_equal(ql_iq_quantize_rows(free_[i], x, q, 1, 256, NULL), QL_OK);
    }
    assert_false(ql_ggml_quantize_requires_imatrix(QL_TYPE_Q4_K));
    /* rows that are not whole super-blocks, and types this file does not quantize, are refused */
    assert_int_equal(ql_iq_quantize_rows(QL_TYPE_IQ3_S, x, q, 1, 128, NULL), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "128"));
    assert_int_equal(ql_iq_quantize_rows(QL_TYPE_Q4_K, x, q, 1, 256, NULL), QL_ERR_UNSUPPORTED);
    /* the registry-shaped entry point writes the same bytes as the checked one */
    uint8_t a[2 * 110], b[2 * 110];
    float x2[512];
    for (int i = 0; i < 512; ++i) x2[i] = x[i % 256] * (i < 256 ? 1.0f : -0.5f);
    assert_int_equal(ql_iq_quantize_rows(QL_TYPE_IQ3_S, x2, a, 2, 256, NULL), QL_OK);
    ql_quantize_rows_iq3_s_ref(x2, b, 2, 256, NULL);
    assert_memory_equal(a, b, sizeof(a));
}

/* ---- rows with no ggml reference ------------------------------------------------------------- */

static const uint32_t all_types[] = {QL_TYPE_IQ2_XXS, QL_TYPE_IQ2_XS, QL_TYPE_IQ2_S, QL_TYPE_IQ3_XXS, QL_TYPE_IQ3_S,
                                     QL_TYPE_IQ1_S,   QL_TYPE_IQ1_M,  QL_TYPE_TQ1_0, QL_TYPE_TQ2_0};

/* Quantize one row of NCOLS with a varying importance vector (as a real imatrix) and decode it. */
static void roundtrip(uint32_t type, const float *x, float *y) {
    float w[NCOLS];
    for (int i = 0; i < NCOLS; ++i) w[i] = 1.0f + (float)(i % 7);
    uint8_t *q = calloc(1, row_bytes(type, NCOLS));
    assert_int_equal(quantize(type, x, q, 1, NCOLS, w), row_bytes(type, NCOLS));
    dequantize(type, q, y, 1, NCOLS);
    free(q);
}

static void smooth_row(float *x) {
    for (int i = 0; i < NCOLS; ++i) x[i] = sinf(0.37f * (float)i) * (1.0f + 0.5f * cosf(0.05f * (float)i));
}

static void test_zero_row(void **state) {
    (void)state;
    float x[NCOLS] = {0}, y[NCOLS];
    for (size_t t = 0; t < QL_ARRAY_LEN(all_types); ++t) {
        roundtrip(all_types[t], x, y);
        for (int i = 0; i < NCOLS; ++i) assert_true(y[i] == 0.0f);
    }
    /* One all-zero group among normal ones. No lattice point is zero, so ggml (and qlab) decode
     * such a group to its smallest level at scale nibble 0: small next to the block's values, not 0.
     * IQ3_S shifts the following groups' bytes as ggml does, so only finiteness holds there. */
    smooth_row(x);
    for (int i = 64; i < 96; ++i) x[i] = 0;
    float amax = 0;
    for (int i = 0; i < NCOLS; ++i) amax = fmaxf(amax, fabsf(x[i]));
    for (size_t t = 0; t < QL_ARRAY_LEN(all_types); ++t) {
        roundtrip(all_types[t], x, y);
        float zmax = 0;
        for (int i = 0; i < NCOLS; ++i) assert_true(isfinite(y[i]));
        for (int i = 64; i < 96; ++i) zmax = fmaxf(zmax, fabsf(y[i]));
        printf("  %-8s zero group decodes to at most %.4f (row max %.4f)\n", ql_type_get(all_types[t])->name,
               (double)zmax, (double)amax);
        if (all_types[t] == QL_TYPE_TQ1_0 || all_types[t] == QL_TYPE_TQ2_0) assert_true(zmax == 0.0f);
        else if (all_types[t] != QL_TYPE_IQ3_S) assert_true(zmax < 0.15f * amax);
    }
}

/* A huge outlier (still within fp16's range once divided by the grid's largest level) dominates its
 * block: it keeps its sign and most of its magnitude; the block's other values stay finite. */
static void test_outlier_row(void **state) {
    (void)state;
    float x[NCOLS], y[NCOLS];
    smooth_row(x);
    x[300] = -2000.0f;
    for (size_t t = 0; t < QL_ARRAY_LEN(all_types); ++t) {
        roundtrip(all_types[t], x, y);
        for (int i = 0; i < NCOLS; ++i) assert_true(isfinite(y[i]));
        assert_true(y[300] < -1000.0f && y[300] > -3000.0f);
        /* the other super-block is untouched by the outlier: decent error there */
        double e2 = 0, s2 = 0;
        for (int i = 0; i < 256; ++i) {
            e2 += (double)(y[i] - x[i]) * (y[i] - x[i]);
            s2 += (double)x[i] * x[i];
        }
        assert_true(e2 < 0.6 * s2);
    }
}

/* Beyond what ggml handles: an outlier so large the fp16 scale overflows, and NaN. ggml aborts on
 * NaN in the lattice searches (no neighbour scores below FLT_MAX); qlab must not crash, and the
 * untouched super-block (values 0..255) must decode exactly as it does without the bad value. */
static void test_hostile_rows(void **state) {
    (void)state;
    float x[NCOLS], y[NCOLS], clean[NCOLS];
    const float bad[] = {1e30f, -INFINITY, NAN};
    for (size_t t = 0; t < QL_ARRAY_LEN(all_types); ++t) {
        smooth_row(x);
        roundtrip(all_types[t], x, clean);
        for (size_t b = 0; b < QL_ARRAY_LEN(bad); ++b) {
            smooth_row(x);
            x[400] = bad[b];
            roundtrip(all_types[t], x, y);
            assert_memory_equal(y, clean, 256 * sizeof(float));
        }
    }
}

/* TQ on genuinely ternary weights: every value is recovered exactly (d = max|x| is exact in fp16). */
static void test_ternary_exact(void **state) {
    (void)state;
    float x[NCOLS], y[NCOLS];
    for (int i = 0; i < NCOLS; ++i) x[i] = 0.5f * (float)((i * 7 + i / 3) % 3 - 1);
    for (int t = 0; t < 2; ++t) {
        roundtrip(t ? QL_TYPE_TQ2_0 : QL_TYPE_TQ1_0, x, y);
        assert_memory_equal(x, y, sizeof(x));
    }
}

static int summary(void **state) {
    if (g_total) printf("i-quants vs ggml: %d/%d vectors bit-exact (bytes and floats)\n", g_pass, g_total);
    return group_teardown(state);
}

int main(void) {
    struct CMUnitTest tests[QL_ARRAY_LEN(cases) + 8];
    size_t n = 0;
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_concurrent_first_use);
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); ++i) {
        tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(test_reference, (void *)&cases[i]);
        tests[n].name = cases[i].name;
        n++;
    }
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_requires_imatrix);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_zero_row);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_outlier_row);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_hostile_rows);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_ternary_exact);
    return _cmocka_run_group_tests("iquants", tests, n, group_setup, summary);
}
