/* test_traits.c — the format traits table is complete and its backend columns are honest. Walks every
 * registry entry (formats/format.h) and fails on (a) a missing or inconsistent required fact: name, id,
 * family, geometry and sizes, reference codec, llama.cpp identity (required for ggml ids, absent for
 * extension ids), grid hook (a grid or an explicit QL_GRID_NONE), fallback, words and label; (b) a backend
 * operation with no equality test against the reference: every non-NULL operation of the SIMD and CUDA
 * columns found in the table is run here against the entry's scalar reference, bit for bit, so an
 * operation cannot be added to an entry without passing one (test_simd*.c and test_cuda.c test the same
 * columns at every SIMD level / on the device with more inputs). Also: the FP4 microscaling formats
 * round-trip within their documented tolerance, and the activation recipes name registry formats. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ql_common.h"
#include "formats/format.h"
#include "kernels/iq_quants.h"
#include "kernels/ggml_types.h"
#include "methods/act_recipe.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#endif

enum { NROWS = 4, NCOLS = 512 }; /* 512: a multiple of every row-wise block (32, 64, 128, 256) */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd64(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rnd_n(void) {
    double u1 = (double)(rnd64() >> 11) * (1.0 / 9007199254740992.0) + 1e-300;
    double u2 = (double)(rnd64() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* rows: gaussian, gaussian with an outlier column, zeros, a constant, tiny values */
static void fill(float *x, int64_t nrows, int64_t ncols) {
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t i = 0; i < ncols; i++) {
            float g = rnd_n(), v;
            switch (r % 5) {
            case 0: v = g; break;
            case 1: v = i == 7 ? 40.0f * g : g; break;
            case 2: v = 0.0f; break;
            case 3: v = -1.25f; break;
            default: v = g * 1e-6f; break;
            }
            x[r * ncols + i] = v;
        }
}

static bool is_nonempty(const char *s) { return s && *s; }

/* ---- (a) required facts ---- */

static char g_why[256];
#define REFUSE(...) return (snprintf(g_why, sizeof g_why, __VA_ARGS__), g_why)

/* NULL when entry f (at idx in the table, or a copy when idx < 0) holds every required fact, else why. */
static const char *entry_problem(const ql_format *f, int idx) {
    const char *n = f->name ? f->name : "(null)";
    if (!is_nonempty(f->name)) REFUSE("entry %d: no name", idx);
    for (int j = 0; idx >= 0 && j < idx; j++) {
        const ql_format *g = ql_format_at(j);
        if (!strcasecmp(g->name, f->name)) REFUSE("%s: name used twice", n);
        if (g->type == f->type) REFUSE("%s: on-disk id %u also used by %s", n, f->type, g->name);
    }
    if (idx >= 0 && (ql_format_by_name(n) != f || ql_format_by_type(f->type) != f)) REFUSE("%s: lookups do not find it", n);
    if (!ql_format_family_name(f->family)) REFUSE("%s: no family", n);
    if (f->block <= 0 || f->block_bytes <= 0 || !(f->bpw > 0)) REFUSE("%s: no block geometry", n);
    if (!f->dequantize_rows) REFUSE("%s: no reference dequantizer", n);
    if (f->uses_importance && !f->quantize_rows) REFUSE("%s: importance without a quantizer", n);
    if (f->requires_importance && !f->uses_importance) REFUSE("%s: requires importance it does not use", n);
    if (f->quantize_rows && !(f->tolerance > 0) && strcmp(n, "f32") != 0) REFUSE("%s: no tolerance", n);
    if (!is_nonempty(f->summary) || !is_nonempty(f->explain)) REFUSE("%s: no summary / explanation", n);
    if (!is_nonempty(f->label) || strlen(f->label) > 8) REFUSE("%s: label missing or over 8 characters", n);

    /* exact sizes: the row-wise bpw is defined on a 4096-wide row */
    if (!f->whole_tensor) {
        int64_t b = ql_format_tensor_bytes(f, 4096, 1);
        if (b <= 0 || fabs((double)b * 8.0 / 4096.0 - f->bpw) > 1e-9)
            REFUSE("%s: %lld bytes per 4096-row, bpw says %g", n, (long long)b, f->bpw);
    }
    /* the GGUF reader knows the id with the same geometry */
    const ql_type_info *ti = ql_type_get(f->type);
    if (!ti || ti->block != f->block || ti->block_bytes != f->block_bytes || strcasecmp(ti->name, n) != 0)
        REFUSE("%s: ggml_types disagrees (%s, block %d, %d bytes)", n, ti ? ti->name : "unknown",
                 ti ? ti->block : 0, ti ? ti->block_bytes : 0);

    /* llama.cpp identity: required for ggml ids, absent for extension ids */
    const bool ggml = f->type < QL_TYPE_GGML_COUNT;
    if (ggml != (f->llama != NULL)) REFUSE("%s: llama.cpp identity %s", n, ggml ? "missing" : "on an extension id");
    if (f->llama) {
        if (f->llama->file_type < QL_FTYPE_NONE) REFUSE("%s: file type %d", n, f->llama->file_type);
        if (!ql_type_get(f->llama->act_type)) REFUSE("%s: activation type %u unknown", n, f->llama->act_type);
        if (idx >= 0 && ql_format_llama_act_type(f->type) != f->llama->act_type) REFUSE("%s: act type lookup", n);
    }

    /* the grid hook: a grid or the explicit "none" */
    const ql_grid_spec *g = f->grid;
    if (!g) REFUSE("%s: grid hook missing (QL_GRID_NONE when there is none)", n);
    switch (g->kind) {
    case QL_GRID_KIND_NONE: break;
    case QL_GRID_KIND_BLOCK:
        /* scales from the entry's quantizer read back by parse, codes written by pack; or the format's
         * own fix + set_codes (NF4) */
        if (!((g->parse && g->pack && !g->fix && !g->set_codes) || (g->fix && g->set_codes && !g->parse && !g->pack)) ||
            g->kmax <= g->kmin || !f->quantize_rows || f->whole_tensor)
            REFUSE("%s: block grid incomplete", n);
        if (g->table)
            for (int k = 1; k < 16; k++)
                if (!(g->table[k - 1] < g->table[k])) REFUSE("%s: grid table not sorted", n);
        break;
    case QL_GRID_KIND_INT:
        if (g->bits < 2 || g->bits > 8 || g->group < 0 || f->family != QL_FAMILY_INT) REFUSE("%s: INT grid", n);
        break;
    case QL_GRID_KIND_LATTICE:
        if (g->vdim != 8 || !g->vscales || !g->vround || !f->quantize_rows || f->block != 256)
            REFUSE("%s: lattice grid incomplete", n);
        break;
    default: REFUSE("%s: grid kind %d", n, (int)g->kind);
    }

    /* llama.cpp's fallback for rows that do not fit the block */
    if (f->fallback) {
        const ql_format *fb = ql_format_by_name(f->fallback);
        if (!fb || fb == f || fb->block >= f->block || !fb->quantize_rows)
            REFUSE("%s: fallback %s is not a writable format with a smaller block", n, f->fallback);
    }
    if (f->block > 32 && !f->whole_tensor && f->llama && f->quantize_rows && !f->fallback)
        REFUSE("%s: a ggml block of %d with no fallback", n, f->block);
    return NULL;
}

static void test_required_fields(void **state) {
    (void)state;
    assert_true(ql_format_count() > 100);
    for (int i = 0; i < ql_format_count(); i++) {
        const char *why = entry_problem(ql_format_at(i), i);
        if (why) fail_msg("%s", why);
    }
    assert_null(ql_format_at(ql_format_count()));
}

/* The check itself must be able to fail: copies of good entries with one fact removed are refused. */
static void test_detects_missing(void **state) {
    (void)state;
    const ql_format *q = ql_format_by_name("q4_k"), *i4 = ql_format_by_name("int4_g128");
    assert_null(entry_problem(q, -1));
    assert_null(entry_problem(i4, -1));
    ql_format bad;
#define EXPECT_REFUSED(base, field, value)                                                                   \
    do {                                                                                                     \
        bad = *(base);                                                                                       \
        bad.field = value;                                                                                   \
        const char *why = entry_problem(&bad, -1);                                                           \
        if (!why) fail_msg("%s with " #field " = " #value " passed the check", (base)->name);               \
    } while (0)
    EXPECT_REFUSED(q, grid, NULL); /* forgotten hook; QL_GRID_NONE is the explicit "none" */
    EXPECT_REFUSED(q, family, QL_FAMILY_UNSET);
    EXPECT_REFUSED(q, llama, NULL);
    EXPECT_REFUSED(i4, llama, ql_format_by_name("q4_0")->llama); /* an extension id claiming llama.cpp */
    EXPECT_REFUSED(q, explain, NULL);
    EXPECT_REFUSED(q, label, "toolonglabel");
    EXPECT_REFUSED(q, dequantize_rows, NULL);
    EXPECT_REFUSED(q, fallback, NULL);
    EXPECT_REFUSED(q, fallback, "q8_k"); /* not writable */
    EXPECT_REFUSED(q, block_bytes, 145);
    EXPECT_REFUSED(q, bpw, 4.25);
#undef EXPECT_REFUSED
    assert_true(ql_format_by_name("mxfp4")->grid == QL_GRID_NONE);
    /* llama.cpp facts that used to live in side tables */
    assert_int_equal(ql_format_llama_act_type(QL_TYPE_Q4_1), QL_TYPE_Q8_1);
    assert_int_equal(ql_format_llama_act_type(QL_TYPE_IQ4_XS), QL_TYPE_Q8_K);
    assert_int_equal(ql_format_llama_act_type(QL_TYPE_MXFP4), QL_TYPE_Q8_0);
    assert_int_equal(ql_format_llama_act_type(i4->type), QL_TYPE_F32);
    assert_int_equal(ql_format_llama_file_type(q), 14);
    assert_int_equal(ql_format_llama_file_type(i4), QL_FTYPE_NONE);
    assert_string_equal(ql_format_fallback(ql_format_by_name("q6_k"))->name, "q8_0");
    assert_string_equal(ql_format_fallback(i4)->name, "f16");
}

/* ---- (b) every backend operation is equal to the reference ---- */

static int64_t first_diff_f32(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (memcmp(&a[i], &b[i], 4) != 0) return i;
    }
    return -1;
}

typedef struct {
    const char *column;
    ql_status (*quant)(const ql_format *f, const float *x, void *q, int64_t nrows, int64_t ncols, const float *imp);
    ql_status (*dequant)(const ql_format *f, const void *q, float *y, int64_t nrows, int64_t ncols);
} column_ops;

static ql_status simd_q(const ql_format *f, const float *x, void *q, int64_t nr, int64_t nc, const float *imp) {
    f->simd->quantize_rows(x, q, nr, nc, imp);
    return QL_OK;
}
static ql_status simd_dq(const ql_format *f, const void *q, float *y, int64_t nr, int64_t nc) {
    f->simd->dequantize_rows(q, y, nr, nc);
    return QL_OK;
}
#ifdef QL_HAVE_CUDA
static ql_status cuda_emu_q(const ql_format *f, const float *x, void *q, int64_t nr, int64_t nc, const float *imp) {
    (void)imp; /* the CUDA quantizers are ggml's no-imatrix path */
    return f->cuda->quantize_emulated(x, q, nr, nc);
}
static ql_status cuda_emu_dq(const ql_format *f, const void *q, float *y, int64_t nr, int64_t nc) {
    return f->cuda->dequantize_emulated(q, y, nr, nc);
}
static ql_status cuda_dev_q(const ql_format *f, const float *x, void *q, int64_t nr, int64_t nc, const float *imp) {
    (void)imp;
    return ql_cuda_run_quantize(f->cuda->quantize_dev, x, q, ql_format_tensor_bytes(f, nc, nr), nr, nc);
}
static ql_status cuda_dev_dq(const ql_format *f, const void *q, float *y, int64_t nr, int64_t nc) {
    return ql_cuda_run_dequantize(f->cuda->dequantize_dev, q, ql_format_tensor_bytes(f, nc, nr), y, nr, nc);
}
#endif

/* One column's operations on one format against the reference: quantize (with importance weights when
 * the op takes them) byte for byte, dequantize the reference's bytes and random bytes bit for bit. */
static void check_ops(const ql_format *f, const column_ops *c, bool has_q, bool has_dq, bool imp_ok) {
    const int64_t bytes = ql_format_tensor_bytes(f, NCOLS, NROWS);
    assert_true(bytes > 0);
    float *x = malloc(sizeof(float) * NROWS * NCOLS), *imp = malloc(sizeof(float) * NCOLS);
    float *ya = malloc(sizeof(float) * NROWS * NCOLS), *yb = malloc(sizeof(float) * NROWS * NCOLS);
    uint8_t *qa = malloc((size_t)bytes), *qb = malloc((size_t)bytes);
    fill(x, NROWS, NCOLS);
    for (int i = 0; i < NCOLS; i++) imp[i] = 0.5f + (float)((i * 7919) % 100) / 10.0f;
    for (int pass = f->requires_importance ? 1 : 0; pass < (imp_ok && f->uses_importance ? 2 : 1); pass++) {
        const float *w = pass ? imp : NULL;
        /* a decoder-only column of a format whose quantizer is a codebook search (code_usage: AQLM) decodes
         * fixed bytes (0x3C: finite fp16 halves, valid codes) and random ones: the search costs seconds */
        const bool search = f->code_usage && !has_q;
        f->quantize_rows && !search ? f->quantize_rows(x, qb, NROWS, NCOLS, w) : (void)memset(qb, 0x3C, (size_t)bytes);
        if (has_q) {
            memset(qa, 0xA5, (size_t)bytes);
            if (c->quant(f, x, qa, NROWS, NCOLS, w) != QL_OK) fail_msg("%s %s quantize: %s", c->column, f->name, ql_last_error());
            if (memcmp(qa, qb, (size_t)bytes) != 0)
                fail_msg("%s %s quantize%s differs from the reference", c->column, f->name, pass ? " (imatrix)" : "");
        }
        if (has_dq)
            for (int src = 0; src < 2; src++) {
                if (src) /* random bytes: NaN / Inf / subnormal scales too */
                    for (int64_t i = 0; i < bytes; i++) qb[i] = (uint8_t)rnd64();
                f->dequantize_rows(qb, yb, NROWS, NCOLS);
                memset(ya, 0xA5, sizeof(float) * NROWS * NCOLS);
                if (c->dequant(f, qb, ya, NROWS, NCOLS) != QL_OK)
                    fail_msg("%s %s dequantize: %s", c->column, f->name, ql_last_error());
                int64_t bad = first_diff_f32(ya, yb, NROWS * NCOLS);
                if (bad >= 0)
                    fail_msg("%s %s dequantize (%s): element %lld is %.9g, reference %.9g", c->column, f->name,
                             src ? "random bytes" : "reference bytes", (long long)bad, (double)ya[bad], (double)yb[bad]);
            }
    }
    free(x), free(imp), free(ya), free(yb), free(qa), free(qb);
}

static void test_backend_ops_equal_reference(void **state) {
    (void)state;
    int n_simd = 0, n_cuda = 0, n_dev = 0;
    const column_ops simd = {"cpu_simd", simd_q, simd_dq};
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        /* the SIMD column is split over rows by ql_format_quantize; a CUDA op always gets the whole tensor */
        if (f->whole_tensor && f->simd) fail_msg("%s: SIMD ops on a whole-tensor format", f->name);
        if (f->simd && (f->simd->quantize_rows || f->simd->dequantize_rows)) {
            if (f->simd->quantize_rows && !f->quantize_rows) fail_msg("%s: SIMD quantizer, no reference", f->name);
            check_ops(f, &simd, f->simd->quantize_rows != NULL, f->simd->dequantize_rows != NULL, true);
            n_simd++;
        }
        if (f->cuda) {
#ifdef QL_HAVE_CUDA
            /* a device op needs its host emulation: that is how it is tested on machines without a GPU */
            if ((f->cuda->quantize_dev != NULL) != (f->cuda->quantize_emulated != NULL) ||
                (f->cuda->dequantize_dev != NULL) != (f->cuda->dequantize_emulated != NULL))
                fail_msg("%s: CUDA op without its host emulation", f->name);
            if (f->cuda->quantize_dev && !f->quantize_rows) fail_msg("%s: CUDA quantizer, no reference", f->name);
            const column_ops emu = {"cuda(host)", cuda_emu_q, cuda_emu_dq};
            check_ops(f, &emu, f->cuda->quantize_dev != NULL, f->cuda->dequantize_dev != NULL, false);
            n_cuda++;
            if (ql_cuda_available()) {
                const column_ops dev = {"cuda", cuda_dev_q, cuda_dev_dq};
                check_ops(f, &dev, f->cuda->quantize_dev != NULL, f->cuda->dequantize_dev != NULL, false);
                n_dev++;
            }
#else
            fail_msg("%s: a CUDA column in a build without CUDA", f->name);
#endif
        }
    }
    printf("  backend columns equal to the reference: cpu_simd %d formats, cuda %d (host emulation), %d on a "
           "device\n", n_simd, n_cuda, n_dev);
    assert_true(n_simd > 0);
}

/* ---- the FP4 microscaling formats: round trip within the documented tolerance ---- */

static void test_fp4_round_trip(void **state) {
    (void)state;
    const char *names[] = {"mxfp4", "nvfp4"};
    enum { R = 16, C = 4096 };
    float *x = malloc(sizeof(float) * R * C), *y = malloc(sizeof(float) * R * C);
    for (int i = 0; i < R * C; i++) x[i] = rnd_n();
    for (int k = 0; k < 2; k++) {
        const ql_format *f = ql_format_by_name(names[k]);
        assert_non_null(f);
        void *q = malloc((size_t)ql_format_tensor_bytes(f, C, R));
        assert_int_equal(ql_format_quantize(f, x, q, R, C, NULL, 1), QL_OK);
        assert_int_equal(ql_format_dequantize(f, q, y, R, C, 1), QL_OK);
        double se = 0, ss = 0;
        for (int i = 0; i < R * C; i++) se += (double)(y[i] - x[i]) * (y[i] - x[i]), ss += (double)x[i] * x[i];
        double e = sqrt(se / ss);
        printf("  %s: RMSE/RMS %.4f on N(0,1) rows of 4096 (tolerance %.3f)\n", f->name, e, f->tolerance);
        if (!(e <= f->tolerance)) fail_msg("%s: %.4f over its tolerance", f->name, e);
        if (!(e > 0.02)) fail_msg("%s: %.4f is too good for 4 bits: is it quantizing?", f->name, e);
        free(q);
    }
    /* NVFP4's E4M3 scales follow each block of 16: closer than MXFP4's powers of two per 32 */
    free(x);
    free(y);
}

/* ---- formats that need importance: the fact matches ggml's list, the driver refuses without it, and
 * with weights of ones the round trip holds the documented tolerance ---- */

static void test_requires_importance(void **state) {
    (void)state;
    enum { R = 4, C = 4096 };
    float *x = malloc(sizeof(float) * R * C), *y = malloc(sizeof(float) * R * C), *ones = malloc(sizeof(float) * C);
    for (int i = 0; i < R * C; i++) x[i] = rnd_n();
    for (int i = 0; i < C; i++) ones[i] = 1.0f;
    int n_required = 0;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        bool ggml_says = f->type < QL_TYPE_GGML_COUNT && ql_ggml_quantize_requires_imatrix(f->type);
        if (f->requires_importance != ggml_says)
            fail_msg("%s: requires_importance %d, ggml says %d", f->name, f->requires_importance, ggml_says);
        if (!f->requires_importance) continue;
        n_required++;
        const int64_t bytes = ql_format_tensor_bytes(f, C, R);
        uint8_t *q = malloc((size_t)bytes);
        memset(q, 0x5A, (size_t)bytes);
        if (ql_format_quantize(f, x, q, R, C, NULL, 1) != QL_ERR_ARG) fail_msg("%s: quantized without importance", f->name);
        if (!strstr(ql_last_error(), "--imatrix")) fail_msg("%s: refusal does not name --imatrix: %s", f->name, ql_last_error());
        for (int64_t k = 0; k < bytes; k++)
            if (q[k] != 0x5A) fail_msg("%s: refused but wrote byte %lld", f->name, (long long)k);
        assert_int_equal(ql_format_quantize(f, x, q, R, C, ones, 1), QL_OK);
        assert_int_equal(ql_format_dequantize(f, q, y, R, C, 1), QL_OK);
        double se = 0, ss = 0;
        for (int k = 0; k < R * C; k++) se += (double)(y[k] - x[k]) * (y[k] - x[k]), ss += (double)x[k] * x[k];
        double e = sqrt(se / ss);
        printf("  %s: RMSE/RMS %.4f with importance of ones (tolerance %.3f)\n", f->name, e, f->tolerance);
        if (!(e <= f->tolerance)) fail_msg("%s: %.4f over its tolerance", f->name, e);
        free(q);
    }
    assert_int_equal(n_required, 3); /* IQ2_XXS, IQ2_XS, IQ1_S */
    free(x), free(y), free(ones);
}

/* ---- recipes name registry formats (the weight-format fact is the registry's) ---- */

static void test_recipes_name_formats(void **state) {
    (void)state;
    assert_true(ql_act_recipe_count() > 0);
    for (int i = 0; i < ql_act_recipe_count(); i++) {
        const ql_act_recipe *r = ql_act_recipe_at(i);
        if (!ql_format_by_name(r->weight_format)) fail_msg("recipe %s: format %s unknown", r->name, r->weight_format);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_required_fields),
        cmocka_unit_test(test_detects_missing),
        cmocka_unit_test(test_backend_ops_equal_reference),
        cmocka_unit_test(test_fp4_round_trip),
        cmocka_unit_test(test_requires_importance),
        cmocka_unit_test(test_recipes_name_formats),
    };
    return cmocka_run_group_tests_name("traits", tests, NULL, NULL);
}
