/* test_formats.c — the format registry, driven by the table itself: every entry's fields, round-trip
 * error against its own tolerance, awkward shapes and bad values, sizes against bpw; then the exact
 * parts of the qlab extension types (FP8 codes, NF4/FP4 tables, INTn bit layout, double quant) and a
 * GGUF write/read of extension-typed tensors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "core/gguf.h"
#include "core/infer.h"
#include "base/ql_common.h"

/* ---- helpers ---- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static double uniform01(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return ((double)(g_rng >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void) {
    return (float)(sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01()));
}

static void fill_gauss(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = gauss();
}

static bool is_ext(const ql_format *f) { return f->type >= QL_TYPE_EXT_BASE; }

/* quantize + dequantize through the registry drivers; returns false if a driver refused */
static bool round_trip(const ql_format *f, const float *x, float *y, int64_t nrows, int64_t ncols,
                       const float *imp) {
    int64_t nb = ql_format_tensor_bytes(f, ncols, nrows);
    if (nb <= 0) return false;
    void *q = calloc(1, (size_t)nb);
    /* formats that cannot quantize without importance get weights of ones (the tolerance's basis) */
    float *ones = NULL;
    if (!imp && f->requires_importance) {
        ones = malloc(sizeof(float) * (size_t)ncols);
        for (int64_t i = 0; i < ncols; i++) ones[i] = 1.0f;
        imp = ones;
    }
    bool ok = ql_format_quantize(f, x, q, nrows, ncols, imp, 2) == QL_OK &&
              ql_format_dequantize(f, q, y, nrows, ncols, 2) == QL_OK;
    free(q);
    free(ones);
    return ok;
}

/* RMSE / RMS over entries where skip is NULL or skip[i] is false */
static double rel_rmse(const float *x, const float *y, int64_t n, const bool *skip) {
    double e = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        if (skip && skip[i]) continue;
        double d = (double)y[i] - x[i];
        e += d * d;
        r += (double)x[i] * x[i];
    }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

static bool same_float_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* ---- (a) every entry is complete and unique ---- */

static void test_registry_fields(void **state) {
    (void)state;
    int n = ql_format_count();
    assert_true(n > 0);
    assert_null(ql_format_at(n));
    assert_null(ql_format_at(-1));
    for (int i = 0; i < n; i++) {
        const ql_format *f = ql_format_at(i);
        assert_non_null(f);
        if (!f->name || !*f->name) fail_msg("entry %d has no name", i);
        if (!f->summary || !*f->summary) fail_msg("%s: no summary", f->name);
        if (f->block <= 0 || f->block_bytes <= 0)
            fail_msg("%s: block %d / %d bytes", f->name, f->block, f->block_bytes);
        if (!(f->bpw > 0 && f->bpw <= 32)) fail_msg("%s: bpw %g", f->name, f->bpw);
        /* a tolerance bounds a round trip: f32 is exact, decode-only types have none to bound */
        bool no_tol = f->type == QL_TYPE_F32 || !f->quantize_rows;
        if (!(f->tolerance > 0 || (no_tol && f->tolerance == 0)))
            fail_msg("%s: tolerance %g", f->name, f->tolerance);
        if (!f->dequantize_rows) fail_msg("%s: no dequantize_rows", f->name);
        if (!f->quantize_rows && !ql_type_is_ggml(f->type))
            fail_msg("%s: only ggml's decode-only types may lack quantize_rows", f->name);
        if (f->whole_tensor && !f->tensor_bytes) fail_msg("%s: whole_tensor without tensor_bytes", f->name);
        if (f->uses_importance && !f->quantize_rows)
            fail_msg("%s: uses_importance but cannot quantize", f->name);
        const ql_type_info *ti = ql_type_get(f->type);
        if (!ti) fail_msg("%s: type %#x not known to ggml_types", f->name, f->type);
        if (is_ext(f)) {
            if (f->type >= QL_TYPE_EXT_BASE + 256)
                fail_msg("%s: type %#x past the extension table", f->name, f->type);
            if (strcmp(ti->name, f->name) != 0) fail_msg("%s: registered as %s", f->name, ti->name);
            if (ql_type_by_name(f->name) != (int64_t)f->type)
                fail_msg("%s: ql_type_by_name disagrees", f->name);
        }
        if (ql_format_by_name(f->name) != f) fail_msg("%s: by_name finds another entry", f->name);
        if (ql_format_by_type(f->type) != f) fail_msg("%s: by_type finds another entry", f->name);
        for (int j = 0; j < i; j++) {
            const ql_format *g = ql_format_at(j);
            if (strcasecmp(f->name, g->name) == 0) fail_msg("name %s used twice", f->name);
            if (f->type == g->type) fail_msg("type %#x used by %s and %s", f->type, f->name, g->name);
        }
    }
}

/* the names are an API and the ids are in files: both must stay put */
static void test_extension_names_and_ids(void **state) {
    (void)state;
    static const int bits[] = {2, 3, 4, 5, 6, 8}, groups[] = {32, 64, 128, 256};
    static const char *const sfx[] = {"", "_sym", "_mse", "_sym_mse"};
    for (int b = 0; b < 6; b++)
        for (int g = 0; g < 4; g++)
            for (int v = 0; v < 4; v++) {
                char name[64];
                snprintf(name, sizeof name, "int%d_g%d%s", bits[b], groups[g], sfx[v]);
                const ql_format *f = ql_format_by_name(name);
                if (!f) fail_msg("%s missing", name);
                int nb = 0, ng = 0;
                bool sym = false, mse = false;
                assert_true(ql_int_format_params(f, &nb, &ng, &sym, &mse));
                assert_int_equal(nb, bits[b]);
                assert_int_equal(ng, groups[g]);
                assert_int_equal(sym, (v & 1) != 0);
                assert_int_equal(mse, (v & 2) != 0);
                assert_int_equal(f->uses_importance, mse);
                assert_int_equal(f->type, QL_TYPE_EXT_BASE + (uint32_t)((b * 4 + g) * 4 + v));
                assert_int_equal(f->block, groups[g]);
                assert_false(f->whole_tensor);
            }
    static const struct {
        const char *name;
        uint32_t id;
        bool whole;
    } fixed[] = {
        {"int4_channel", 0x62, false},
        {"int8_channel", 0x65, false},
        {"int8_tensor", 0x6D, true},
        {"int4_b64", 0x74, true},
        {"int4_b128", 0x75, true},
        {"int8_b64", 0x7A, true},
        {"int8_b128", 0x7B, true},
        {"nf4", 0x80, false},
        {"nf4_dq", 0x81, true},
        {"fp4", 0x82, false},
        {"fp4_dq", 0x83, true},
        {"fp8_e4m3", 0x88, true},
        {"fp8_e5m2", 0x89, true},
        {"fp8_e4m3_channel", 0x8A, false},
        {"fp8_e5m2_channel", 0x8B, false},
        {"fp8_e4m3_block", 0x8C, true},
        {"fp8_e5m2_block", 0x8D, true},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(fixed); i++) {
        const ql_format *f = ql_format_by_name(fixed[i].name);
        if (!f) fail_msg("%s missing", fixed[i].name);
        assert_int_equal(f->type, QL_TYPE_EXT_BASE + fixed[i].id);
        assert_int_equal(f->whole_tensor, fixed[i].whole);
    }
    int bits8 = 0, group = -1;
    bool sym = false;
    assert_true(ql_int_format_params(ql_format_by_name("int8_channel"), &bits8, &group, &sym, NULL));
    assert_int_equal(bits8, 8);
    assert_int_equal(group, 0);
    assert_true(sym);
    assert_false(ql_int_format_params(ql_format_by_name("nf4"), NULL, NULL, NULL, NULL));
}

/* ---- (b) round trip of N(0,1) rows of 4096 within each entry's own tolerance ---- */

static void test_round_trip_gauss(void **state) {
    (void)state;
    /* QL_QUICK (the ASan pass): 2 rows instead of 8 — every codec still runs on full 4096-wide rows */
    const int64_t nr = getenv("QL_QUICK") && !strcmp(getenv("QL_QUICK"), "1") ? 2 : 8, nc = 4096;
    float *x = malloc(sizeof(float) * nr * nc), *y = malloc(sizeof(float) * nr * nc);
    fill_gauss(x, nr * nc);
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!f->quantize_rows) continue;
        if (!ql_format_fits(f, nc)) fail_msg("%s: does not fit rows of 4096", f->name);
        if (!round_trip(f, x, y, nr, nc, NULL)) fail_msg("%s: driver failed: %s", f->name, ql_last_error());
        double e = rel_rmse(x, y, nr * nc, NULL);
        if (!(e <= f->tolerance)) fail_msg("%s: RMSE/RMS %.5f > tolerance %.5f", f->name, e, f->tolerance);
    }
    free(x);
    free(y);
}

/* ---- (c) awkward sizes and values ---- */

static void check_finite(const ql_format *f, const float *y, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(y[i])) fail_msg("%s: %s: output %lld is %g", f->name, what, (long long)i, y[i]);
}

static void test_awkward_sizes(void **state) {
    (void)state;
    static const int64_t sizes[] = {1, 31, 33, 172, 1000};
    /* QL_QUICK (the ASan pass) stops before the 1000-wide rows: the short and odd lengths are the point here */
    const size_t n_sizes = getenv("QL_QUICK") && !strcmp(getenv("QL_QUICK"), "1") ? 4 : QL_ARRAY_LEN(sizes);
    const int64_t nr = 3;
    float *x = malloc(sizeof(float) * nr * 1000), *y = malloc(sizeof(float) * nr * 1000);
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!f->quantize_rows) continue;
        for (size_t s = 0; s < n_sizes; s++) {
            int64_t nc = sizes[s];
            char why[256] = "";
            if (ql_format_fits(f, nc) && f->shape_ok && !f->shape_ok(nc, nr, why, sizeof why)) {
                /* rotated formats serve Hadamard sizes only, and say why not */
                if (!why[0]) fail_msg("%s: refuses %lld x %lld without a reason", f->name, (long long)nr, (long long)nc);
                if (round_trip(f, x, y, nr, nc, NULL)) fail_msg("%s: quantized a shape it refuses", f->name);
                continue;
            }
            if (!ql_format_fits(f, nc)) {
                if (is_ext(f))
                    fail_msg("%s: extension formats take any row length (%lld)", f->name, (long long)nc);
                continue;
            }
            fill_gauss(x, nr * nc);
            if (!round_trip(f, x, y, nr, nc, NULL)) fail_msg("%s: ncols %lld failed", f->name, (long long)nc);
            check_finite(f, y, nr * nc, "gauss");
            /* short rows / short last groups are still quantized, not garbage */
            double e = rel_rmse(x, y, nr * nc, NULL);
            if (is_ext(f) && nc >= 31 && !(e <= 1.5 * f->tolerance))
                fail_msg("%s: ncols %lld: RMSE/RMS %.4f > 1.5 x %.4f", f->name, (long long)nc, e,
                         f->tolerance);
            memset(x, 0, sizeof(float) * nr * nc);
            if (!round_trip(f, x, y, nr, nc, NULL)) fail_msg("%s: zeros failed", f->name);
            for (int64_t k = 0; k < nr * nc; k++)
                if (y[k] != 0.0f) fail_msg("%s: zero row decoded to %g", f->name, y[k]);
        }
    }
    free(x);
    free(y);
}

/* quantize_whole_threads (whole-tensor formats that split their work) gives quantize_rows' bytes exactly, on
 * 1, 2 and 3 threads, for gaussian weights with NaN, infinities, subnormals, a huge outlier and signed zeros, and
 * for an all-zero tensor. Shapes above ql_format_quantize's one-thread cut (1 << 16 weights). */
static void test_whole_tensor_threads(void **state) {
    (void)state;
    const int64_t nr = 300, nc = 517;
    const size_t n = (size_t)(nr * nc);
    float *x = malloc(sizeof(float) * n);
    int checked = 0;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!f->quantize_whole_threads) continue;
        assert_true(f->whole_tensor);
        const int64_t nb = ql_format_tensor_bytes(f, nc, nr);
        assert_true(nb > 0);
        uint8_t *ref = malloc((size_t)nb), *thr = malloc((size_t)nb);
        for (int kind = 0; kind < 2; kind++) {
            if (kind == 0) {
                fill_gauss(x, (int64_t)n);
                x[7] = NAN, x[1000] = INFINITY, x[2000] = -INFINITY, x[3000] = 1e-40f, x[4000] = -0.0f;
                x[n - 1] = 3e4f; /* the outlier sets the scale, last so a split reduction must find it */
            } else
                memset(x, 0, sizeof(float) * n);
            f->quantize_rows(x, ref, nr, nc, NULL);
            for (int t = 1; t <= 3; t++) {
                memset(thr, 0xA5, (size_t)nb);
                f->quantize_whole_threads(x, thr, nr, nc, t);
                if (memcmp(ref, thr, (size_t)nb)) fail_msg("%s: %d threads differ from quantize_rows", f->name, t);
            }
            /* and through the registry's entry point, which picks the threaded one */
            memset(thr, 0xA5, (size_t)nb);
            assert_int_equal(ql_format_quantize(f, x, thr, nr, nc, NULL, 2), QL_OK);
            assert_memory_equal(ref, thr, (size_t)nb);
        }
        free(ref);
        free(thr);
        checked++;
    }
    assert_true(checked >= 1); /* fp8_e4m3 / fp8_e5m2 have one */
    free(x);
}

static void test_bad_values(void **state) {
    (void)state;
    const int64_t nr = 4, nc = 256;
    float *x = malloc(sizeof(float) * nr * nc), *y = malloc(sizeof(float) * nr * nc);
    bool *skip = calloc((size_t)(nr * nc), sizeof(bool));
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!f->quantize_rows) continue;
        /* one huge outlier per row: no crash; extension types stay finite and keep its sign */
        fill_gauss(x, nr * nc);
        for (int64_t r = 0; r < nr; r++) x[r * nc + 17] = r % 2 ? -1e30f : 1e30f;
        assert_true(round_trip(f, x, y, nr, nc, NULL));
        if (is_ext(f) && f->rotated) check_finite(f, y, nr * nc, "outlier"); /* spread over the row: finite */
        if (is_ext(f) && !f->rotated) {
            check_finite(f, y, nr * nc, "outlier");
            for (int64_t r = 0; r < nr; r++) {
                float v = y[r * nc + 17];
                if (!(r % 2 ? v < -1000.0f : v > 1000.0f))
                    fail_msg("%s: outlier 1e30 decoded as %g", f->name, v);
            }
        }
        /* NaN and ±inf: extension types decode NaN to 0 and ±inf to the ends of the grid, and the rest
         * of the row keeps its accuracy (the scale comes from the finite weights) */
        fill_gauss(x, nr * nc);
        memset(skip, 0, (size_t)(nr * nc) * sizeof(bool));
        for (int64_t r = 0; r < nr; r++) {
            x[r * nc + 3] = NAN;
            x[r * nc + 5] = INFINITY;
            x[r * nc + 9] = -INFINITY;
            skip[r * nc + 3] = skip[r * nc + 5] = skip[r * nc + 9] = true;
        }
        assert_true(round_trip(f, x, y, nr, nc, NULL));
        if (is_ext(f) && f->rotated) check_finite(f, y, nr * nc, "NaN/inf");
        /* learned vector codebooks (AQLM) have no per-weight grid: a NaN's 0 and an inf's clamp are
         * approximated by the codewords like any weight, so only finiteness and the row's accuracy hold */
        const bool grid_ends = f->family != QL_FAMILY_ADDITIVE;
        if (is_ext(f) && !f->rotated) {
            check_finite(f, y, nr * nc, "NaN/inf");
            for (int64_t r = 0; r < nr && grid_ends; r++) {
                const float *yr = y + r * nc;
                if (yr[3] != 0.0f) fail_msg("%s: NaN decoded as %g", f->name, yr[3]);
                for (int c = 0; c < 32; c++) /* columns 0..31 share a group/block in every format */
                    if (yr[5] < yr[c] || yr[9] > yr[c])
                        fail_msg("%s: inf decoded as %g / -inf as %g, not the ends (col %d: %g)", f->name,
                                 yr[5], yr[9], c, yr[c]);
                if (!(yr[5] > 0 && yr[9] < 0)) fail_msg("%s: ±inf decoded as %g / %g", f->name, yr[5], yr[9]);
            }
            double e = rel_rmse(x, y, nr * nc, skip);
            if (!(e <= 1.5 * f->tolerance)) fail_msg("%s: NaN/inf poisoned the row: %.4f", f->name, e);
        }
        /* float denormals: finite, tiny */
        for (int64_t k = 0; k < nr * nc; k++) x[k] = (float)(k % 7 - 3) * 1e-40f;
        assert_true(round_trip(f, x, y, nr, nc, NULL));
        if (is_ext(f)) {
            check_finite(f, y, nr * nc, "denormals");
            for (int64_t k = 0; k < nr * nc; k++)
                if (fabsf(y[k]) > 1e-30f) fail_msg("%s: denormal decoded as %g", f->name, y[k]);
        }
    }
    free(x);
    free(y);
    free(skip);
}

/* ---- (d) sizes ---- */

static void test_sizes_match_bpw(void **state) {
    (void)state;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!f->whole_tensor) {
            int64_t row = ql_format_tensor_bytes(f, 4096, 1);
            if (row * 8.0 / 4096 != f->bpw)
                fail_msg("%s: row of 4096 = %lld bytes, bpw %g", f->name, (long long)row, f->bpw);
            assert_int_equal(ql_format_tensor_bytes(f, 4096, 7), 7 * row);
        } else {
            /* whole-tensor formats: bpw leaves out only per-tensor constants (<= 16 bytes: QuIP#'s two
             * scales and rotation seed) */
            int64_t t = ql_format_tensor_bytes(f, 4096, 4096);
            double extra = t * 8.0 - f->bpw * 4096.0 * 4096.0;
            if (!(extra >= 0 && extra <= 128))
                fail_msg("%s: 4096x4096 = %lld bytes, bpw %g", f->name, (long long)t, f->bpw);
        }
        if (is_ext(f)) {
            /* the GGUF reader sizes extension types through the registry */
            assert_int_equal(ql_type_tensor_bytes(f->type, 172, 5), ql_format_tensor_bytes(f, 172, 5));
            /* hostile shapes: no overflow */
            assert_int_equal(ql_format_tensor_bytes(f, INT64_MAX / 2, 1 << 20), -1);
            assert_true(ql_format_tensor_bytes(f, 0, 1) < 0);
        }
    }
    /* bpw formulas, counted exactly */
    assert_true(ql_format_by_name("int4_g128")->bpw == 4 + 16.0 / 128 + 4.0 / 128);
    assert_true(ql_format_by_name("int4_g128_sym")->bpw == 4.125);
    assert_true(ql_format_by_name("nf4")->bpw == 4.5);
    assert_true(ql_format_by_name("nf4_dq")->bpw == 4 + 8.0 / 64 + 32.0 / (64 * 256));
    /* shorter last group: 172 = 128 + 44 -> 2 scales, 2 zeros (1 byte), 172 * 4 bits */
    assert_int_equal(ql_format_tensor_bytes(ql_format_by_name("int4_g128"), 172, 1), 4 + 1 + 86);
    /* int3_g32 on 172: 6 groups -> 12 + ceil(18 / 8) + ceil(516 / 8) */
    assert_int_equal(ql_format_tensor_bytes(ql_format_by_name("int3_g32"), 172, 1), 12 + 3 + 65);
    assert_int_equal(ql_int_row_bytes(172, 3, 32, false), 80);
    /* nf4 on 172: 2 full blocks of 36 + a block of 44 (4 + 22) */
    assert_int_equal(ql_format_tensor_bytes(ql_format_by_name("nf4"), 172, 1), 2 * 36 + 4 + 22);
    /* nf4_dq on [172, 3]: 9 blocks -> 4 + 4 + 9 + 3 * 86 */
    assert_int_equal(ql_format_tensor_bytes(ql_format_by_name("nf4_dq"), 172, 3), 4 + 4 + 9 + 3 * 86);
    /* fp8 block on [200, 130]: 2 x 2 blocks */
    assert_int_equal(ql_format_tensor_bytes(ql_format_by_name("fp8_e4m3_block"), 200, 130), 16 + 200 * 130);
}

/* ---- (e) FP8 ---- */

typedef struct {
    const char *name;
    float (*dec)(uint8_t);
    uint8_t (*enc)(float);
    float max;
} fp8_case;

static const fp8_case k_fp8[] = {
    {"e4m3", ql_fp8_e4m3_to_f32, ql_f32_to_fp8_e4m3, 448.0f},
    {"e5m2", ql_fp8_e5m2_to_f32, ql_f32_to_fp8_e5m2, 57344.0f},
};

static void test_fp8_all_codes(void **state) {
    (void)state;
    for (size_t k = 0; k < QL_ARRAY_LEN(k_fp8); k++) {
        const fp8_case *t = &k_fp8[k];
        int n_nan = 0, n_inf = 0;
        for (int c = 0; c < 256; c++) {
            float d = t->dec((uint8_t)c);
            float dd = t->dec(t->enc(d));
            if (isnan(d)) {
                n_nan++;
                if (!isnan(dd)) fail_msg("%s code %#x: NaN re-encoded as %g", t->name, c, dd);
                continue;
            }
            if (isinf(d)) n_inf++;
            if (!same_float_bits(d, dd)) fail_msg("%s code %#x: %g -> %g", t->name, c, d, dd);
            if (isfinite(d) && fabsf(d) > t->max) fail_msg("%s code %#x: %g beyond max", t->name, c, d);
        }
        assert_int_equal(n_nan, k == 0 ? 2 : 6);
        assert_int_equal(n_inf, k == 0 ? 0 : 2);
        /* round to nearest even between every pair of neighbouring positive finite codes */
        for (int c = 0; c < 127; c++) {
            float lo = t->dec((uint8_t)c), hi = t->dec((uint8_t)(c + 1));
            if (!isfinite(lo) || !isfinite(hi)) continue;
            float mid = (float)(((double)lo + hi) / 2);
            uint8_t even = (c % 2 == 0) ? (uint8_t)c : (uint8_t)(c + 1);
            if (t->enc(mid) != even)
                fail_msg("%s: midpoint %g of codes %#x/%#x -> %#x", t->name, mid, c, c + 1, t->enc(mid));
            if (t->enc(nextafterf(mid, 0)) != c) fail_msg("%s: below midpoint of %#x", t->name, c);
            if (t->enc(nextafterf(mid, INFINITY)) != c + 1) fail_msg("%s: above midpoint of %#x", t->name, c);
            if (t->enc(-mid) != (uint8_t)(even | 0x80)) fail_msg("%s: negative midpoint of %#x", t->name, c);
        }
    }
    /* fixed points of the OCP spec */
    assert_true(ql_fp8_e4m3_to_f32(0x7E) == 448.0f);
    assert_true(ql_fp8_e4m3_to_f32(0x08) == ldexpf(1, -6));
    assert_true(ql_fp8_e4m3_to_f32(0x01) == ldexpf(1, -9));
    assert_true(isnan(ql_fp8_e4m3_to_f32(0x7F)) && isnan(ql_fp8_e4m3_to_f32(0xFF)));
    assert_int_equal(ql_f32_to_fp8_e4m3(1000.0f), 0x7E);
    assert_int_equal(ql_f32_to_fp8_e4m3(-INFINITY), 0xFE);
    assert_int_equal(ql_f32_to_fp8_e4m3(464.0f), 0x7E); /* would round to 480: saturate first */
    assert_int_equal(ql_f32_to_fp8_e4m3(ldexpf(1, -10)), 0x00); /* tie with 0 -> even */
    assert_int_equal(ql_f32_to_fp8_e4m3(3 * ldexpf(1, -10)), 0x02);
    assert_int_equal(ql_f32_to_fp8_e4m3(-0.0f), 0x80);
    assert_true(ql_fp8_e5m2_to_f32(0x7B) == 57344.0f);
    assert_true(isinf(ql_fp8_e5m2_to_f32(0x7C)) && ql_fp8_e5m2_to_f32(0xFC) < 0);
    assert_true(ql_fp8_e5m2_to_f32(0x01) == ldexpf(1, -16));
    assert_int_equal(ql_f32_to_fp8_e5m2(1e6f), 0x7B);
    assert_int_equal(ql_f32_to_fp8_e5m2(INFINITY), 0x7C);
    assert_true(isnan(ql_fp8_e5m2_to_f32(ql_f32_to_fp8_e5m2(NAN))));
}

/* through the registry: absmax 448 gives scale 1, so every finite E4M3 value is stored exactly */
static void test_fp8_scaled_exact(void **state) {
    (void)state;
    float x[256], y[256];
    int n = 0;
    x[n++] = 448.0f;
    for (int c = 0; c < 256; c++) {
        float d = ql_fp8_e4m3_to_f32((uint8_t)c);
        if (!isnan(d)) x[n++] = d;
    }
    static const char *const names[] = {"fp8_e4m3", "fp8_e4m3_channel", "fp8_e4m3_block"};
    for (size_t k = 0; k < 3; k++) {
        const ql_format *f = ql_format_by_name(names[k]);
        assert_true(round_trip(f, x, y, 1, n, NULL));
        for (int i = 0; i < n; i++)
            if (!same_float_bits(x[i], y[i])) fail_msg("%s: %g -> %g", f->name, x[i], y[i]);
    }
}

/* ---- (e) NF4 / FP4 / double quant ---- */

static void test_nf4_tables(void **state) {
    (void)state;
    static const double nf4_ref[16] = {-1.0,       -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734,
                                       -0.0910500, 0.0,        0.0795803,  0.1609302,  0.2461123,  0.3379152,
                                       0.4407098,  0.5626170,  0.7229568,  1.0};
    static const double fp4_ref[8] = {0, 0.0625, 8, 12, 4, 6, 2, 3};
    for (int i = 0; i < 16; i++) {
        if (fabs(ql_nf4_code[i] - nf4_ref[i]) > 1e-7) fail_msg("nf4 code %d = %.8f", i, ql_nf4_code[i]);
        if (fabs(ql_fp4_code[i] - (i < 8 ? 1 : -1) * fp4_ref[i % 8] / 12) > 1e-7) fail_msg("fp4 code %d", i);
        assert_int_equal(ql_nf4_encode(ql_nf4_code[i]), i);
        if (i != 8) assert_int_equal(ql_fp4_encode(ql_fp4_code[i]), i); /* -0 encodes as +0 */
    }
    /* nearest code, ties to the lower code, as bitsandbytes' tree */
    for (int i = 0; i < 15; i++) {
        float mid = (ql_nf4_code[i] + ql_nf4_code[i + 1]) / 2;
        uint8_t c = ql_nf4_encode(mid);
        assert_true(c == i || c == i + 1);
        assert_int_equal(ql_nf4_encode(ql_nf4_code[i] + 0.3f * (ql_nf4_code[i + 1] - ql_nf4_code[i])), i);
        assert_int_equal(ql_nf4_encode(ql_nf4_code[i] + 0.7f * (ql_nf4_code[i + 1] - ql_nf4_code[i])), i + 1);
    }
    /* the dynamic map: 256 sorted values, 0 at 127, 1 at 255, coded onto themselves */
    const float *map = ql_bnb_dynamic_map();
    assert_true(map[127] == 0.0f);
    assert_true(map[255] == 1.0f);
    assert_true(fabsf(map[0] + 0.99296875f) < 1e-6f);
    assert_true(fabsf(map[128] - 5.5e-7f) < 1e-12f);
    for (int i = 0; i < 256; i++) {
        if (i) assert_true(map[i] > map[i - 1]);
        if (ql_bnb_dynamic_encode(map[i]) != i)
            fail_msg("dynamic map %d (%g) -> %d", i, map[i], ql_bnb_dynamic_encode(map[i]));
    }
    assert_int_equal(ql_bnb_dynamic_encode(2.0f), 255);
    assert_int_equal(ql_bnb_dynamic_encode(-2.0f), 0);
}

static void test_nf4_layout(void **state) {
    (void)state;
    /* one block: absmax 2; -2 -> code 0, +2 -> 15, 0 -> 7; element 0 in the high nibble */
    float x[64] = {0};
    x[0] = -2.0f;
    x[1] = 2.0f;
    const ql_format *f = ql_format_by_name("nf4");
    uint8_t q[36];
    assert_int_equal(ql_format_tensor_bytes(f, 64, 1), 36);
    assert_int_equal(ql_format_quantize(f, x, q, 1, 64, NULL, 1), QL_OK);
    float am;
    memcpy(&am, q, 4);
    assert_true(am == 2.0f);
    assert_int_equal(q[4], 0x0F);
    for (int i = 5; i < 36; i++) assert_int_equal(q[i], 0x77);
    /* every code decodes to its table value times absmax */
    for (int i = 0; i < 32; i++) q[4 + i] = (uint8_t)((i % 16) << 4 | (15 - i % 16));
    float y[64];
    assert_int_equal(ql_format_dequantize(f, q, y, 1, 64, 1), QL_OK);
    for (int i = 0; i < 32; i++) {
        assert_true(y[2 * i] == ql_nf4_code[i % 16] * 2.0f);
        assert_true(y[2 * i + 1] == ql_nf4_code[15 - i % 16] * 2.0f);
    }
}

static void check_dq(const char *plain_name, const char *dq_name) {
    const ql_format *f = ql_format_by_name(plain_name), *fd = ql_format_by_name(dq_name);
    const int64_t nr = 16, nc = 4096;
    float *x = malloc(sizeof(float) * nr * nc), *y = malloc(sizeof(float) * nr * nc),
          *yd = malloc(sizeof(float) * nr * nc);
    fill_gauss(x, nr * nc);
    for (int64_t k = 0; k < nc; k++) x[3 * nc + k] *= 10; /* absmax values that vary */
    uint8_t *q = malloc((size_t)ql_format_tensor_bytes(f, nc, nr)),
            *qd = malloc((size_t)ql_format_tensor_bytes(fd, nc, nr));
    assert_int_equal(ql_format_quantize(f, x, q, nr, nc, NULL, 1), QL_OK);
    assert_int_equal(ql_format_quantize(fd, x, qd, nr, nc, NULL, 1), QL_OK);
    assert_int_equal(ql_format_dequantize(f, q, y, nr, nc, 1), QL_OK);
    assert_int_equal(ql_format_dequantize(fd, qd, yd, nr, nc, 1), QL_OK);
    /* the 4-bit codes are chosen with the exact absmax in both */
    int64_t nb = nr * nc / 64, codes_off = 4 + 4 * ((nb + 255) / 256) + nb;
    for (int64_t b = 0; b < nb; b++)
        if (memcmp(q + b * 36 + 4, qd + codes_off + b * 32, 32) != 0)
            fail_msg("%s: block %lld codes differ", dq_name, (long long)b);
    double e_dq = rel_rmse(y, yd, nr * nc, NULL);
    if (!(e_dq <= 0.01)) fail_msg("%s: %.5f away from %s", dq_name, e_dq, plain_name);
    double e = rel_rmse(x, yd, nr * nc, NULL);
    if (!(e <= fd->tolerance)) fail_msg("%s: RMSE/RMS %.4f", dq_name, e);
    free(x);
    free(y);
    free(yd);
    free(q);
    free(qd);
}

static void test_double_quant(void **state) {
    (void)state;
    check_dq("nf4", "nf4_dq");
    check_dq("fp4", "fp4_dq");
}

/* ---- INTn specifics ---- */

static void test_int_layout(void **state) {
    (void)state;
    /* int3_g32_sym: values -4..3 repeated; m = -4 -> scale 1; codes x + 4 = 0..7, LSB first */
    float x[64], y[64];
    for (int i = 0; i < 32; i++) x[i] = (float)(i % 8 - 4);
    const ql_format *f = ql_format_by_name("int3_g32_sym");
    uint8_t q[16];
    assert_int_equal(ql_format_tensor_bytes(f, 32, 1), 14);
    assert_int_equal(ql_format_quantize(f, x, q, 1, 32, NULL, 1), QL_OK);
    assert_int_equal(q[0] | q[1] << 8, 0x3C00); /* fp16 1.0 */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(q[2 + 3 * i], 0x88);
        assert_int_equal(q[3 + 3 * i], 0xC6);
        assert_int_equal(q[4 + 3 * i], 0xFA);
    }
    assert_int_equal(ql_format_dequantize(f, q, y, 1, 32, 1), QL_OK);
    for (int i = 0; i < 32; i++) assert_true(x[i] == y[i]);
    /* int4_g32 (zero points): group 0 = 0..15 (scale 1, zero 0), group 1 = -15..0 (scale 1, zero 15) */
    for (int i = 0; i < 32; i++) {
        x[i] = (float)(i % 16);
        x[32 + i] = (float)(i % 16) - 15.0f;
    }
    f = ql_format_by_name("int4_g32");
    uint8_t q4[64];
    assert_int_equal(ql_format_tensor_bytes(f, 64, 1), 4 + 1 + 32);
    assert_int_equal(ql_format_quantize(f, x, q4, 1, 64, NULL, 1), QL_OK);
    assert_int_equal(q4[0] | q4[1] << 8, 0x3C00);
    assert_int_equal(q4[2] | q4[3] << 8, 0x3C00);
    assert_int_equal(q4[4], 0xF0);
    assert_int_equal(q4[5], 0x10);
    assert_int_equal(q4[12], 0xFE);
    assert_int_equal(ql_format_dequantize(f, q4, y, 1, 64, 1), QL_OK);
    for (int i = 0; i < 64; i++) assert_true(x[i] == y[i]);
}

static void test_int_short_last_group(void **state) {
    (void)state;
    /* 172 = 128 + 44: the last group has its own scale, so tiny weights there survive */
    float x[172], y[172];
    fill_gauss(x, 172);
    for (int i = 128; i < 172; i++) x[i] *= 1e-3f;
    const ql_format *f = ql_format_by_name("int4_g128");
    assert_true(round_trip(f, x, y, 1, 172, NULL));
    double e = rel_rmse(x + 128, y + 128, 44, NULL);
    if (!(e <= f->tolerance * 1.5)) fail_msg("last group RMSE/RMS %.4f", e);
}

/* the registry entry is exactly the named reference (the fast twin will be tested against it too) */
static void test_int_reference(void **state) {
    (void)state;
    const int64_t nr = 4, nc = 1000;
    float *x = malloc(sizeof(float) * nr * nc), *imp = malloc(sizeof(float) * nc);
    fill_gauss(x, nr * nc);
    for (int64_t i = 0; i < nc; i++) imp[i] = (float)(uniform01() * 4);
    const ql_format *f = ql_format_by_name("int4_g128");
    int64_t nb = ql_format_tensor_bytes(f, nc, nr);
    assert_int_equal(nb, nr * ql_int_row_bytes(nc, 4, 128, false));
    uint8_t *a = calloc(1, (size_t)nb), *b = calloc(1, (size_t)nb);
    assert_int_equal(ql_format_quantize(f, x, a, nr, nc, imp, 2), QL_OK);
    ql_int_quantize_rows_ref(x, b, nr, nc, imp, 4, 128, false, false);
    assert_memory_equal(a, b, (size_t)nb);
    float *y1 = malloc(sizeof(float) * nr * nc), *y2 = malloc(sizeof(float) * nr * nc);
    assert_int_equal(ql_format_dequantize(f, a, y1, nr, nc, 2), QL_OK);
    ql_int_dequantize_rows_ref(b, y2, nr, nc, 4, 128, false);
    assert_memory_equal(y1, y2, sizeof(float) * nr * nc);
    free(a);
    free(b);
    free(y1);
    free(y2);
    free(x);
    free(imp);
}

static double weighted_err(const float *x, const float *y, const float *w, int64_t nr, int64_t nc) {
    double e = 0;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t c = 0; c < nc; c++) {
            double d = (double)y[r * nc + c] - x[r * nc + c];
            e += (w ? w[c] : 1.0) * d * d;
        }
    return e;
}

static void test_int_mse_and_importance(void **state) {
    (void)state;
    const int64_t nr = 8, nc = 1024;
    float *x = malloc(sizeof(float) * nr * nc), *y0 = malloc(sizeof(float) * nr * nc),
          *y1 = malloc(sizeof(float) * nr * nc), *w = malloc(sizeof(float) * nc);
    fill_gauss(x, nr * nc);
    for (int64_t c = 0; c < nc; c++) w[c] = c % 9 == 0 ? 50.0f : 0.1f;
    static const char *const pairs[][2] = {
        {"int3_g128", "int3_g128_mse"}, {"int2_g64_sym", "int2_g64_sym_mse"}, {"int4_g256", "int4_g256_mse"}};
    for (size_t p = 0; p < QL_ARRAY_LEN(pairs); p++) {
        const ql_format *plain = ql_format_by_name(pairs[p][0]), *mse = ql_format_by_name(pairs[p][1]);
        /* the search includes the plain choice, so it can only be better, group by group */
        assert_true(round_trip(plain, x, y0, nr, nc, NULL));
        assert_true(round_trip(mse, x, y1, nr, nc, NULL));
        double e0 = weighted_err(x, y0, NULL, nr, nc), e1 = weighted_err(x, y1, NULL, nr, nc);
        if (!(e1 <= e0)) fail_msg("%s: %.4f worse than %s %.4f", mse->name, e1, plain->name, e0);
        /* with importance: the weighted error can only drop */
        assert_true(round_trip(mse, x, y0, nr, nc, w));
        double ew = weighted_err(x, y0, w, nr, nc), eu = weighted_err(x, y1, w, nr, nc);
        if (!(ew <= eu)) fail_msg("%s: importance ignored (%.4f vs %.4f)", mse->name, ew, eu);
        assert_true(mse->uses_importance);
        assert_false(plain->uses_importance);
    }
    free(x);
    free(y0);
    free(y1);
    free(w);
}

/* ---- (f) GGUF round trip of extension-typed tensors ---- */

static void test_gguf_round_trip(void **state) {
    (void)state;
    static const char *const names[] = {
        "int4_g128", "int3_g32_sym", "int8_channel", "int8_tensor",      "int4_b64",      "nf4",
        "nf4_dq",    "fp4_dq",       "fp8_e4m3",     "fp8_e5m2_channel", "fp8_e4m3_block"};
    const int64_t ne[2] = {172, 5};
    float x[172 * 5], y[172 * 5], z[172 * 5];
    fill_gauss(x, 172 * 5);
    void *bufs[QL_ARRAY_LEN(names)];
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.architecture", "llama");
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) {
        const ql_format *f = ql_format_by_name(names[i]);
        int64_t nb = ql_format_tensor_bytes(f, ne[0], ne[1]);
        bufs[i] = calloc(1, (size_t)nb);
        assert_int_equal(ql_format_quantize(f, x, bufs[i], ne[1], ne[0], NULL, 1), QL_OK);
        if (ql_gguf_add_tensor(g, names[i], f->type, 2, ne, bufs[i]) < 0)
            fail_msg("%s: %s", names[i], ql_last_error());
    }
    char path[] = "/tmp/qlab_test_formats_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    if (ql_gguf_write(g, path, NULL) != QL_OK) fail_msg("write: %s", ql_last_error());
    ql_gguf *r = NULL;
    if (ql_gguf_open(path, &r) != QL_OK) fail_msg("open: %s", ql_last_error());
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) {
        const ql_format *f = ql_format_by_name(names[i]);
        int64_t ti = ql_gguf_find_tensor(r, names[i]);
        assert_true(ti >= 0);
        const ql_gguf_tensor *t = &r->tensors[ti];
        assert_int_equal(t->type, f->type);
        assert_int_equal(t->ne[0], 172);
        assert_int_equal(t->ne[1], 5);
        assert_int_equal(t->nbytes, (uint64_t)ql_format_tensor_bytes(f, 172, 5));
        assert_memory_equal(t->data, bufs[i], t->nbytes);
        /* and the model path decodes it through the registry */
        assert_true(ql_tensor_to_f32(t, y, 1));
        assert_int_equal(ql_format_dequantize(f, bufs[i], z, 5, 172, 1), QL_OK);
        assert_memory_equal(y, z, sizeof y);
    }
    ql_gguf_free(r);
    ql_gguf_free(g);
    unlink(path);
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) free(bufs[i]);
}

/* ql_round_even (the INTn codecs' rounding, kernels/int_quants.h) is nearbyintf without the libm call: equal on
 * the edges (halves, 2^22..2^23 where floats have halves, the first whole floats at 2^23, signs) and on 4M
 * random bit patterns (the every-float check is in docs/results.md) */
static void test_round_even(void **state) {
    (void)state;
    float edge[] = {0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 0.49999997f, 4194304.5f, 4194305.5f, 8388607.5f, 8388606.5f,
                    8388608.0f, 8388609.0f, 16777216.0f, 1e30f, -8388607.5f, -4194305.5f, 0.0f, -0.0f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        if (ql_round_even(edge[i]) != nearbyintf(edge[i])) fail_msg("%a: %a, nearbyintf %a", edge[i], ql_round_even(edge[i]), nearbyintf(edge[i]));
    uint32_t x = 2463534242u;
    for (int i = 0; i < (1 << 22); i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        float f;
        memcpy(&f, &x, 4);
        if (f != f) continue;
        if (ql_round_even(f) != nearbyintf(f)) fail_msg("%a: %a, nearbyintf %a", f, ql_round_even(f), nearbyintf(f));
    }
}

/* The vectorized E4M3 encoder equals the per-weight reference byte for byte: a stride through all 2^32 float bit
 * patterns (every sign, exponent and NaN payload class) under scales from tiny to huge, the adversarial values
 * (±0, ±Inf, NaN, the saturation edge 448/464, the subnormal/normal edge 2^-6, the subnormal ties k/512 + 1/1024),
 * and a scale of 0. Lengths that are not a multiple of the vector width check the tail. */
static void test_fp8_fast_encode(void **state) {
    (void)state;
    const int64_t n = 1 << 20;
    float *x = malloc((size_t)n * sizeof(float));
    uint8_t *a = malloc((size_t)n), *b = malloc((size_t)n);
    assert_non_null(x);
    assert_non_null(a);
    assert_non_null(b);
    uint32_t bits = 12345;
    for (int64_t i = 0; i < n; i++, bits += 4099u * 1024u + 77u) memcpy(&x[i], &bits, 4);
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 448.0f, -448.0f, 464.0f, 464.0001f,
                             463.99f, 1e30f, -1e30f, 0.015625f, 0.0156249f, -0.015625f, 1.0f / 1024, 3.0f / 1024,
                             5.0f / 1024, 15.0f / 1024, 1e-45f, -1e-45f, 1.17549435e-38f, 0.5f, 1.0f, -1.0f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[i] = special[i];
    const float scales[] = {1.0f, 0.37f, 1.0f / 448.0f, 1e-30f, 1e-40f, 3e30f, 2.5f, 0.0f};
    for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
        for (int64_t len = n - 7; len <= n; len += 7) {
            memset(a, 0xAA, (size_t)n);
            memset(b, 0x55, (size_t)n);
            ql_fp8_encode_scaled(false, x, a, len, scales[si]);
            ql_fp8_encode_scaled_ref(false, x, b, len, scales[si]);
            int64_t bad = -1;
            for (int64_t i = 0; i < len && bad < 0; i++)
                if (a[i] != b[i]) bad = i;
            if (bad >= 0) fail_msg("scale %g: x %a -> fast 0x%02x, reference 0x%02x", scales[si], x[bad], a[bad], b[bad]);
        }
    }
    /* and the scale a tensor really gets: its finite absmax / 448 */
    float m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(x[i]) && fabsf(x[i]) > m) m = fabsf(x[i]);
    ql_fp8_encode_scaled(false, x, a, n, m / 448.0f);
    ql_fp8_encode_scaled_ref(false, x, b, n, m / 448.0f);
    assert_memory_equal(a, b, (size_t)n);
    free(x);
    free(a);
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_fields),
        cmocka_unit_test(test_round_even),
        cmocka_unit_test(test_extension_names_and_ids),
        cmocka_unit_test(test_round_trip_gauss),
        cmocka_unit_test(test_awkward_sizes),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_whole_tensor_threads),
        cmocka_unit_test(test_sizes_match_bpw),
        cmocka_unit_test(test_fp8_all_codes),
        cmocka_unit_test(test_fp8_scaled_exact),
        cmocka_unit_test(test_nf4_tables),
        cmocka_unit_test(test_nf4_layout),
        cmocka_unit_test(test_double_quant),
        cmocka_unit_test(test_int_layout),
        cmocka_unit_test(test_int_short_last_group),
        cmocka_unit_test(test_int_reference),
        cmocka_unit_test(test_int_mse_and_importance),
        cmocka_unit_test(test_gguf_round_trip),
        cmocka_unit_test(test_fp8_fast_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
