/* test_ggml_quants.c — bit-exactness of the registry's reference codecs for ggml types (the entries'
 * quantize_rows / dequantize_rows: kernels/ggml_quants_ref.c, formats/fmt_mxfp4.c, fmt_nvfp4.c) against
 * ggml's own output (../shared/testdata/ggml-quants, made with llama.cpp 34af94cd), plus robustness on
 * awkward rows. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "tests/test_util.h"
#include "base/ql_common.h"
#include "kernels/iq_tables.h"
#include "formats/format.h"

/* The traits entry's reference codec (never the SIMD twin: the specification is what is checked here).
 * Bytes written, 0 when the type has no entry or quantizer or the row does not fit its block. */
static size_t ref_quantize(uint32_t type, const float *src, void *dst, int64_t nrows, int64_t ncols,
                                    const float *imat) {
    const ql_format *f = ql_format_by_type(type);
    if (!f || !f->quantize_rows || !ql_format_fits(f, ncols)) return 0;
    f->quantize_rows(src, dst, nrows, ncols, imat);
    return (size_t)ql_format_tensor_bytes(f, ncols, nrows);
}
static bool ref_dequantize(uint32_t type, const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const ql_format *f = ql_format_by_type(type);
    if (!f || !f->dequantize_rows || !ql_format_fits(f, ncols)) return false;
    f->dequantize_rows(src, dst, nrows, ncols);
    return true;
}
static bool ref_can_quantize(uint32_t type) {
    const ql_format *f = ql_format_by_type(type);
    return f && f->quantize_rows;
}
static bool ref_can_dequantize(uint32_t type) {
    const ql_format *f = ql_format_by_type(type);
    return f && f->dequantize_rows;
}

#define NROWS 64
#define NCOLS 512

typedef struct {
    const char *name; /* file stem: ggml type name in upper case */
    uint32_t type;
    bool imat; /* a TYPE-imat.q file exists */
} case_t;

static const case_t cases[] = {
    {"F16", QL_TYPE_F16, false},      {"BF16", QL_TYPE_BF16, false},    {"Q4_0", QL_TYPE_Q4_0, true},
    {"Q4_1", QL_TYPE_Q4_1, true},     {"Q5_0", QL_TYPE_Q5_0, true},     {"Q5_1", QL_TYPE_Q5_1, true},
    {"Q8_0", QL_TYPE_Q8_0, false},    {"Q2_K", QL_TYPE_Q2_K, true},     {"Q3_K", QL_TYPE_Q3_K, true},
    {"Q4_K", QL_TYPE_Q4_K, true},     {"Q5_K", QL_TYPE_Q5_K, true},     {"Q6_K", QL_TYPE_Q6_K, true},
    {"IQ4_NL", QL_TYPE_IQ4_NL, true}, {"IQ4_XS", QL_TYPE_IQ4_XS, true},
    /* the FP4 microscaling types: one file each in formats/ (ggml's quantizers ignore the imatrix) */
    {"MXFP4", QL_TYPE_MXFP4, false},  {"NVFP4", 40 /* GGML_TYPE_NVFP4 */, false},
};

static char g_dir[1024];
static float *g_input, *g_imatrix;

/* Reads a whole file; returns NULL when absent. *len gets the size. Caller frees. */
static void *read_file(const char *dir, const char *name, size_t *len) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
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
    g_input = read_file(g_dir, "input.f32", &n1);
    g_imatrix = read_file(g_dir, "imatrix.f32", &n2);
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

static int g_pass_q, g_pass_deq, g_total_q, g_total_deq;

/* Quantize input (with or without imatrix) and compare bytes; dequantize ggml's bytes and compare bits. */
static void check_one(const case_t *c, bool imat) {
    char qname[64], dname[64];
    snprintf(qname, sizeof(qname), "%s%s.q", c->name, imat ? "-imat" : "");
    snprintf(dname, sizeof(dname), "%s%s.deq.f32", c->name, imat ? "-imat" : "");
    size_t qlen = 0, dlen = 0;
    uint8_t *ref_q = read_file(g_dir, qname, &qlen);
    float *ref_d = read_file(g_dir, dname, &dlen);
    assert_non_null(ref_q);
    assert_non_null(ref_d);
    int64_t row_bytes = ql_type_row_bytes(c->type, NCOLS);
    assert_true(row_bytes > 0);
    assert_int_equal(qlen, (size_t)(row_bytes * NROWS));
    assert_int_equal(dlen, (size_t)NROWS * NCOLS * 4);

    uint8_t *q = calloc(1, qlen);
    float *d = calloc(NROWS * NCOLS, sizeof(float));
    size_t wrote = ref_quantize(c->type, g_input, q, NROWS, NCOLS, imat ? g_imatrix : NULL);
    assert_int_equal(wrote, qlen);
    long bad_q = -1;
    for (size_t i = 0; i < qlen; ++i)
        if (q[i] != ref_q[i]) {
            bad_q = (long)i;
            break;
        }
    assert_true(ref_dequantize(c->type, ref_q, d, NROWS, NCOLS));
    long bad_d = -1;
    for (size_t i = 0; i < (size_t)NROWS * NCOLS; ++i)
        if (memcmp(&d[i], &ref_d[i], 4) != 0) {
            bad_d = (long)i;
            break;
        }

    g_total_q++;
    g_total_deq++;
    if (bad_q < 0) g_pass_q++;
    if (bad_d < 0) g_pass_deq++;
    printf("  %-12s quantize %s", qname, bad_q < 0 ? "bit-exact" : "MISMATCH");
    if (bad_q >= 0)
        printf(" (first at byte %ld: row %ld, byte %ld in row)", bad_q, bad_q / row_bytes, bad_q % row_bytes);
    printf("; dequantize %s", bad_d < 0 ? "bit-exact" : "MISMATCH");
    if (bad_d >= 0)
        printf(" (first at %ld: got %.9g want %.9g)", bad_d, (double)d[bad_d], (double)ref_d[bad_d]);
    printf("\n");
    free(q);
    free(d);
    free(ref_q);
    free(ref_d);
    assert_true(bad_q < 0);
    assert_true(bad_d < 0);
}

static void test_reference(void **state) {
    const case_t *c = *state;
    if (!g_input) {
        /* skips only without the shared folder; a folder that lacks the vectors (or has short ones) fails */
        char path[1200];
        if (!shared_path(path, sizeof path, "testdata/ggml-quants/input.f32")) skip();
        fail_msg("%s/input.f32 or imatrix.f32: unreadable or of the wrong size", g_dir);
    }
    check_one(c, false);
    if (c->imat) check_one(c, true);
}

/* Rows that stress the searches: zeros, one huge outlier, constants, tiny values, alternating signs. */
static void test_awkward_rows(void **state) {
    (void)state;
    enum { N = 512 };
    static const uint32_t types[] = {QL_TYPE_Q4_0,   QL_TYPE_Q4_1,   QL_TYPE_Q5_0, QL_TYPE_Q5_1, QL_TYPE_Q8_0,
                                     QL_TYPE_Q2_K,   QL_TYPE_Q3_K,   QL_TYPE_Q4_K, QL_TYPE_Q5_K, QL_TYPE_Q6_K,
                                     QL_TYPE_IQ4_NL, QL_TYPE_IQ4_XS, QL_TYPE_F16,  QL_TYPE_BF16,
                                     QL_TYPE_MXFP4}; /* not NVFP4: its E4M3 scale saturates at 448·6 */
    float rows[6][N], w[N], wzero[N];
    memset(wzero, 0, sizeof(wzero)); /* an all-zero imatrix must not produce NaN */
    for (int i = 0; i < N; ++i) {
        rows[0][i] = 0.0f;
        rows[1][i] = i == 77 ? 30000.0f : 1e-3f * (float)((i * 37) % 11 - 5);
        rows[2][i] = -2.5f;
        rows[3][i] = 1e-20f * (float)(i % 7);
        rows[4][i] = (i & 1) ? 1.0f : -1.0f;
        rows[5][i] = i == 301 ? -30000.0f : 0.0f;
        w[i] = i % 5 == 0 ? 0.0f : 1.0f + (float)i;
    }
    uint8_t q[N * 4];
    float out[N];
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); ++t) {
        for (int r = 0; r < 6; ++r) {
            for (int im = 0; im < 3; ++im) {
                const float *imat = im == 0 ? NULL : im == 1 ? w : wzero;
                size_t wrote = ref_quantize(types[t], rows[r], q, 1, N, imat);
                assert_int_equal(wrote, (size_t)ql_type_row_bytes(types[t], N));
                assert_true(ref_dequantize(types[t], q, out, 1, N));
                for (int i = 0; i < N; ++i) {
                    if (!isfinite(out[i]))
                        fail_msg("type %u row %d imat %d: non-finite at %d", types[t], r, im, i);
                }
                if (r == 0)
                    for (int i = 0; i < N; ++i) assert_true(out[i] == 0.0f);
                if ((r == 1 || r == 5) && im < 2) { /* the outlier survives to within ~1/3 */
                    int at = r == 1 ? 77 : 301; /* w[at] != 0 */
                    if (!(fabsf(out[at] - rows[r][at]) < 0.35f * fabsf(rows[r][at])))
                        fail_msg("type %u row %d imat %d: outlier %g decoded as %g", types[t], r, im,
                                 (double)rows[r][at], (double)out[at]);
                }
            }
        }
    }
}

static void test_unsupported(void **state) {
    (void)state;
    float x[256] = {0}, y[256];
    uint8_t q[1024];
    assert_int_equal(ref_quantize(QL_TYPE_I32, x, q, 1, 256, NULL), 0);
    assert_int_equal(ref_quantize(12345, x, q, 1, 256, NULL), 0);
    assert_int_equal(ref_quantize(QL_TYPE_Q4_K, x, q, 1, 100, NULL), 0); /* not a multiple of 256 */
    assert_false(ref_dequantize(12345, q, y, 1, 256));
    assert_false(ref_dequantize(QL_TYPE_Q4_0, q, y, 1, 33));
    assert_true(ref_can_quantize(QL_TYPE_Q6_K));
    assert_true(ref_can_quantize(QL_TYPE_TQ2_0));
    assert_false(ref_can_quantize(QL_TYPE_Q8_K)); /* still decode-only */
    assert_true(ref_can_quantize(QL_TYPE_MXFP4));
    assert_true(ref_can_dequantize(QL_TYPE_TQ2_0));
}

/* Known values for formats with no reference file: TQ2_0, TQ1_0, MXFP4 decode. */
static void test_small_decoders(void **state) {
    (void)state;
    uint8_t blk[66];
    float y[256];
    memset(blk, 0, sizeof(blk));
    for (int m = 0; m < 32; ++m) blk[m] = (uint8_t)(0 | (1 << 2) | (2 << 4) | (3 << 6)); /* -1, 0, 1, 2 */
    uint16_t d = ql_fp32_to_fp16(0.5f);
    memcpy(blk + 64, &d, 2);
    assert_true(ref_dequantize(QL_TYPE_TQ2_0, blk, y, 1, 256));
    assert_true(y[0] == -0.5f && y[32] == 0.0f && y[64] == 0.5f && y[96] == 1.0f && y[128] == -0.5f);

    /* TQ1_0: byte 0 is the ceiling of 256*t/243 for the trits t = (2,1,0,1,2) -> values 1,0,-1,0,1 */
    uint8_t t1[54];
    memset(t1, 0, sizeof(t1));
    int t = 2 * 81 + 1 * 27 + 0 * 9 + 1 * 3 + 2;
    t1[0] = (uint8_t)((t * 256 + 242) / 243);
    d = ql_fp32_to_fp16(2.0f);
    memcpy(t1 + 52, &d, 2);
    assert_true(ref_dequantize(QL_TYPE_TQ1_0, t1, y, 1, 256));
    assert_true(y[0] == 2.0f && y[32] == 0.0f && y[64] == -2.0f && y[96] == 0.0f && y[128] == 2.0f);

    /* MXFP4: e = 128 -> half scale 1; nibble 7 -> 12 (6.0 doubled), nibble 9 -> -1 */
    uint8_t mx[17];
    memset(mx, 0, sizeof(mx));
    mx[0] = 128;
    mx[1] = 0x97;
    assert_true(ref_dequantize(QL_TYPE_MXFP4, mx, y, 1, 32));
    assert_true(y[0] == 12.0f && y[16] == -1.0f && y[1] == 0.0f);
}

/* The lattice tables are transcribed data: check length, coordinate set and sort order (ggml lists
 * every grid in ascending order; IQ1S's order is over the digits -1 < 0 < 1, high byte first). */
static void check_grid(const char *name, const uint64_t *g, size_t n, size_t want_n, int nbytes,
                       const uint8_t *vals, int nvals, bool ternary) {
    if (n != want_n) fail_msg("%s: %zu entries, want %zu", name, n, want_n);
    for (size_t i = 0; i < n; ++i) {
        for (int k = 0; k < nbytes; ++k) {
            uint8_t b = (uint8_t)(g[i] >> (8 * k));
            bool ok = false;
            for (int v = 0; v < nvals; ++v) ok |= b == vals[v];
            if (!ok) fail_msg("%s[%zu]: byte %d = 0x%02x not a grid coordinate", name, i, k, b);
        }
        if (i == 0) continue;
        uint64_t a = g[i - 1], b = g[i];
        if (ternary) { /* map 0xff,0,1 -> 0,1,2 per byte so that numeric order follows digit order */
            uint64_t ma = 0, mb = 0;
            for (int k = nbytes - 1; k >= 0; --k) {
                ma = ma * 3 + (uint8_t)((uint8_t)(a >> 8 * k) + 1);
                mb = mb * 3 + (uint8_t)((uint8_t)(b >> 8 * k) + 1);
            }
            a = ma;
            b = mb;
        }
        if (!(a < b)) fail_msg("%s: entries %zu and %zu out of order", name, i - 1, i);
    }
}

static void test_iq_tables(void **state) {
    (void)state;
    static const uint8_t v2[] = {0x08, 0x19, 0x2b}, v3x[] = {4, 12, 20, 28, 36, 44, 52, 62},
                         v3s[] = {1, 3, 5, 7, 9, 11, 13, 15}, v1[] = {0xff, 0x00, 0x01};
    uint64_t g3x[QL_ARRAY_LEN(iq3xxs_grid)], g3s[QL_ARRAY_LEN(iq3s_grid)];
    for (size_t i = 0; i < QL_ARRAY_LEN(g3x); ++i) g3x[i] = iq3xxs_grid[i];
    for (size_t i = 0; i < QL_ARRAY_LEN(g3s); ++i) g3s[i] = iq3s_grid[i];
    check_grid("iq2xxs_grid", iq2xxs_grid, QL_ARRAY_LEN(iq2xxs_grid), 256, 8, v2, 3, false);
    check_grid("iq2xs_grid", iq2xs_grid, QL_ARRAY_LEN(iq2xs_grid), 512, 8, v2, 3, false);
    check_grid("iq2s_grid", iq2s_grid, QL_ARRAY_LEN(iq2s_grid), 1024, 8, v2, 3, false);
    check_grid("iq3xxs_grid", g3x, QL_ARRAY_LEN(g3x), 256, 4, v3x, 8, false);
    check_grid("iq3s_grid", g3s, QL_ARRAY_LEN(g3s), 512, 4, v3s, 8, false);
    check_grid("iq1s_grid", iq1s_grid, QL_ARRAY_LEN(iq1s_grid), QL_NGRID_IQ1S, 8, v1, 3, true);
}

/* Hand-built IQ blocks: layout, sign parity bit, scale decode. */
static void test_iq_decoders(void **state) {
    (void)state;
    float y[256];
    const uint16_t one = ql_fp32_to_fp16(1.0f);

    /* IQ2_XXS: grid 0 (all 8), scale nibble 0 -> db = 0.125; sign index 1 flips element 0 and, by
     * parity, element 7; so y = -1, 1, 1, 1, 1, 1, 1, -1 */
    uint8_t b2[66];
    memset(b2, 0, sizeof(b2));
    memcpy(b2, &one, 2);
    uint32_t aux1 = 1; /* second word of sub-block 0: signs for group 0 = 1, scale 0 */
    memcpy(b2 + 2 + 4, &aux1, 4);
    assert_true(ref_dequantize(QL_TYPE_IQ2_XXS, b2, y, 1, 256));
    assert_true(y[0] == -1.0f && y[1] == 1.0f && y[6] == 1.0f && y[7] == -1.0f && y[8] == 1.0f);

    /* IQ2_XS: index 1 -> grid 0x...082b, byte 0 = 43; scales low nibble 1 -> db = 1.5*0.25 */
    uint8_t bx[74];
    memset(bx, 0, sizeof(bx));
    memcpy(bx, &one, 2);
    uint16_t q = 1;
    memcpy(bx + 2, &q, 2);
    bx[2 + 64] = 1;
    assert_true(ref_dequantize(QL_TYPE_IQ2_XS, bx, y, 1, 256));
    assert_true(y[0] == 0.375f * 43 && y[1] == 0.375f * 8 && y[16] == 0.125f * 8);

    /* IQ3_S: all zero indices -> grid 0 = all 1; scale 0 -> db = d; sign byte 0x01 negates element 0 */
    uint8_t b3[110];
    memset(b3, 0, sizeof(b3));
    memcpy(b3, &one, 2);
    b3[2 + 64 + 8] = 0x01;
    assert_true(ref_dequantize(QL_TYPE_IQ3_S, b3, y, 1, 256));
    assert_true(y[0] == -1.0f && y[1] == 1.0f && y[255] == 1.0f);

    /* IQ1_S: grid 0 = all -1, delta +0.125 (bit 15 clear), scale 0 -> dl = d */
    uint8_t b1[50];
    memset(b1, 0, sizeof(b1));
    memcpy(b1, &one, 2);
    assert_true(ref_dequantize(QL_TYPE_IQ1_S, b1, y, 1, 256));
    assert_true(y[0] == -0.875f && y[255] == -0.875f);

    /* IQ1_M: fp16 1.0 = 0x3c00 spread over the top nibbles of the scale words: word 2 gets 0xc,
     * word 3 gets 0x3; delta sign bit 0x08 set for group 0 -> -1 - 0.125 */
    uint8_t bm[56];
    memset(bm, 0, sizeof(bm));
    uint16_t sc[4] = {0, 0, 0xc000, 0x3000};
    memcpy(bm + 48, sc, 8);
    bm[32] = 0x08;
    assert_true(ref_dequantize(QL_TYPE_IQ1_M, bm, y, 1, 256));
    assert_true(y[0] == -1.125f && y[8] == -0.875f);

    /* IQ3_XXS: indices 0 -> grid 4s; scale nibble 0 -> db = 0.25 */
    uint8_t bxx[98];
    memset(bxx, 0, sizeof(bxx));
    memcpy(bxx, &one, 2);
    assert_true(ref_dequantize(QL_TYPE_IQ3_XXS, bxx, y, 1, 256));
    assert_true(y[0] == 1.0f && y[255] == 1.0f);

    /* IQ2_S: index from qs (low 8) and qh (2 high bits): qh 0x01 -> index 256 for group 0 */
    uint8_t bs[82];
    memset(bs, 0, sizeof(bs));
    memcpy(bs, &one, 2);
    bs[2 + 64] = 0x01;
    assert_true(ref_dequantize(QL_TYPE_IQ2_S, bs, y, 1, 256));
    for (int j = 0; j < 8; ++j) assert_true(y[j] == 0.125f * (float)(uint8_t)(iq2s_grid[256] >> 8 * j));
    assert_true(y[8] == 1.0f);
}

static int summary(void **state) {
    (void)state;
    if (g_total_q)
        printf("ggml-quants reference: quantize bit-exact %d/%d, dequantize bit-exact %d/%d\n", g_pass_q,
               g_total_q, g_pass_deq, g_total_deq);
    return group_teardown(state);
}

int main(void) {
    struct CMUnitTest tests[QL_ARRAY_LEN(cases) + 6];
    size_t n = 0;
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); ++i) {
        tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(test_reference, (void *)&cases[i]);
        tests[n].name = cases[i].name;
        n++;
    }
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_awkward_rows);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_unsupported);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_small_decoders);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_iq_tables);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_iq_decoders);
    return _cmocka_run_group_tests("ggml_quants", tests, n, group_setup, summary);
}
