/* test_gptq.c — GPTQ (methods/m_gptq.c) and the format grids under it (methods/format_grid.c):
 * grids decode to exactly the values they promise; on a synthetic layer (heavy-tailed weights, inputs
 * with correlated and outlier channels) GPTQ's output error tr(ΔW H ΔWᵀ) beats round-to-nearest for
 * INTn and ggml block formats (ratios printed); the bytes decode to exactly the values GPTQ chose; the
 * blocked float implementation picks the same values as a textbook double-precision GPTQ written
 * here; act_order, static_groups, lazy-batch sizes, dead input channels, rows that are not a multiple
 * of the group, non-finite weights and bad options work; threads and kernel ISA do not change the
 * bytes; one real layer of ../shared/models/tinystories-d256.gguf. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/format.h"
#include "methods/gptq.h"
#include "core/gguf.h"
#include "core/infer.h"
#include "methods/method.h"
#include "kernels/simd.h"
#include "tests/test_util.h"

/* options as qlab quant passes them: parsed once against gptq's schema */
static ql_method_opts gptq_opts(const char *spec, int threads, ql_opt_values *v) {
    ql_status s = ql_method_parse_opts(ql_method_by_name("gptq"), spec, v);
    if (s)
        fprintf(stderr, "gptq options '%s': %s\n", spec, ql_last_error());
    assert_int_equal(s, QL_OK);
    return (ql_method_opts){.values = v, .n_threads = threads};
}

/* ---- random numbers ---- */

#define QL_TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "tests/test_rng.h"
static void seed(uint64_t s) { g_rng = s * 0x9E3779B97F4A7C15ull + 1; }
static double student3(void) { /* heavy tails */
    double c = 0;
    for (int i = 0; i < 3; i++) {
        double z = normal();
        c += z * z;
    }
    return normal() / sqrt(c / 3.0);
}

/* ---- a synthetic layer ---- */

static double g_outlier = 20.0; /* scale of the outlier input channels */

typedef struct {
    int64_t nrows, ncols, ntok;
    float *w;    /* [nrows, ncols] */
    double *xtx; /* [ncols, ncols] */
    ql_input_stats st;
} layer;

/* X [ntok, ncols]: channel noise + 16 shared factors (correlation), per-channel scales with a few
 * outlier channels; dead channels are exactly 0. W: rows of Student-t(3) weights with varied scale. */
static void layer_init(layer *L, int64_t nrows, int64_t ncols, int64_t ntok, int n_dead, uint64_t s) {
    seed(s);
    L->nrows = nrows, L->ncols = ncols, L->ntok = ntok;
    L->w = malloc((size_t)(nrows * ncols) * sizeof(float));
    for (int64_t r = 0; r < nrows; r++) {
        double rs = 0.02 * exp(0.5 * normal());
        for (int64_t c = 0; c < ncols; c++)
            L->w[r * ncols + c] = (float)(rs * student3());
    }
    const int nf = 16;
    double *V = malloc((size_t)(nf * ncols) * sizeof(double)), *sc = malloc((size_t)ncols * sizeof(double));
    for (int64_t i = 0; i < nf * ncols; i++)
        V[i] = normal() * 0.7;
    for (int64_t c = 0; c < ncols; c++)
        sc[c] = exp(0.4 * normal()) * (c % 97 == 5 ? g_outlier : 1.0);
    for (int d = 0; d < n_dead; d++)
        sc[(d * 37 + 11) % ncols] = 0.0;
    double *X = malloc((size_t)(ntok * ncols) * sizeof(double));
    double f[16];
    for (int64_t t = 0; t < ntok; t++) {
        for (int k = 0; k < nf; k++)
            f[k] = normal();
        for (int64_t c = 0; c < ncols; c++) {
            double x = normal();
            for (int k = 0; k < nf; k++)
                x += f[k] * V[k * ncols + c];
            X[t * ncols + c] = sc[c] * x;
        }
    }
    L->xtx = calloc((size_t)(ncols * ncols), sizeof(double));
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)ncols, (int)ntok, 1.0, X, (int)ncols, 0.0, L->xtx,
                (int)ncols);
    for (int64_t i = 0; i < ncols; i++)
        for (int64_t j = 0; j < i; j++)
            L->xtx[i * ncols + j] = L->xtx[j * ncols + i];
    L->st = (ql_input_stats){.n = ncols, .n_tokens = ntok, .xtx = L->xtx};
    free(X), free(V), free(sc);
}

static void layer_free(layer *L) { free(L->w), free(L->xtx); }

/* tr(ΔW H ΔWᵀ) / n_tokens with H = XᵀX */
static double out_err(const layer *L, const float *wq) {
    int64_t n = L->ncols, m = L->nrows;
    double *D = calloc((size_t)(m * n), sizeof(double)), *T = calloc((size_t)(m * n), sizeof(double));
    for (int64_t i = 0; i < m * n; i++)
        D[i] = (double)wq[i] - L->w[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)n, 1.0, D, (int)n, L->xtx,
                (int)n, 0.0, T, (int)n);
    double e = 0;
    for (int64_t i = 0; i < m * n; i++)
        e += D[i] * T[i];
    free(D), free(T);
    return e / (double)L->ntok;
}

static const ql_format *fmt(const char *name) {
    const ql_format *f = ql_format_by_name(name);
    if (!f)
        fprintf(stderr, "format %s missing\n", name);
    assert_non_null(f);
    return f;
}

/* quantized copy of W by RTN (with or without the Hessian diagonal as importance) */
static double rtn_err(const layer *L, const ql_format *f, bool with_imp) {
    int64_t bytes = ql_format_tensor_bytes(f, L->ncols, L->nrows);
    void *q = malloc((size_t)bytes);
    float *d = malloc((size_t)(L->nrows * L->ncols) * sizeof(float));
    float *imp = malloc((size_t)L->ncols * sizeof(float));
    for (int64_t i = 0; i < L->ncols; i++)
        imp[i] = (float)(L->xtx[i * L->ncols + i] / L->ntok + 1e-8);
    assert_int_equal(ql_format_quantize(f, L->w, q, L->nrows, L->ncols, with_imp ? imp : NULL, 1), QL_OK);
    f->dequantize_rows(q, d, L->nrows, L->ncols);
    double e = out_err(L, d);
    free(q), free(d), free(imp);
    return e;
}

/* GPTQ with `spec`; checks that the bytes decode (scalar reference) to exactly the values GPTQ chose */
static double gptq_err(const layer *L, const ql_format *f, const char *spec, int threads, void **bytes_out) {
    int64_t bytes = ql_format_tensor_bytes(f, L->ncols, L->nrows), nw = L->nrows * L->ncols;
    void *q = malloc((size_t)bytes);
    float *chosen = malloc((size_t)nw * sizeof(float)), *d = malloc((size_t)nw * sizeof(float));
    float *w = malloc((size_t)nw * sizeof(float));
    memcpy(w, L->w, (size_t)nw * sizeof(float));
    ql_opt_values parsed;
    ql_method_opts o = gptq_opts(spec, threads, &parsed);
    ql_status s = ql_gptq_quantize(w, L->nrows, L->ncols, f, &L->st, &o, q, chosen);
    if (s)
        fprintf(stderr, "gptq %s: %s\n", f->name, ql_last_error());
    assert_int_equal(s, QL_OK);
    f->dequantize_rows(q, d, L->nrows, L->ncols);
    int64_t bad = 0;
    for (int64_t i = 0; i < nw; i++)
        bad += !(d[i] == chosen[i]) || !isfinite(d[i]);
    if (bad)
        fprintf(stderr, "%s: %lld decoded values differ from GPTQ's choice\n", f->name, (long long)bad);
    assert_int_equal(bad, 0);
    double e = out_err(L, d);
    free(w), free(chosen), free(d);
    if (bytes_out)
        *bytes_out = q;
    else
        free(q);
    return e;
}

/* ---- tests ---- */

static void test_registry(void **state) {
    (void)state;
    const ql_method *m = ql_method_by_name("gptq");
    assert_non_null(m);
    assert_true(m->needs & QL_NEEDS_HESSIAN);
    static const char *const names[] = {"damp", "act_order", "static_groups", "block"};
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) {
        bool found = false;
        for (int k = 0; k < m->n_opts; k++) found |= !strcmp(m->opts[k].name, names[i]);
        assert_true(found);
    }
}

static const char *const k_grid_formats[] = {
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q8_0",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
    "int4_g32",
    "int4_g128_sym",
    "int3_g64",
    "int8_g32",
    "int2_g32_sym_mse",
    "int4_g128_mse",
    "int4_channel",
    "nf4",
};

/* Fix every block from random rows, write random codes: decoding gives ql_grid_value exactly; nearest
 * is the nearest grid value; with the fix's own codes the bytes equal the format's RTN bytes. */
static void test_grid_exact(void **state) {
    (void)state;
    for (size_t fi = 0; fi < QL_ARRAY_LEN(k_grid_formats); fi++) {
        const ql_format *f = fmt(k_grid_formats[fi]);
        ql_grid g;
        assert_true(ql_grid_init(&g, f));
        bool is_int = g.type == 0;
        int64_t nrows = 6, ncols = is_int ? 172 : 512, rb = ql_format_tensor_bytes(f, ncols, 1);
        int64_t nblk = ql_grid_nblocks(&g, ncols);
        seed(fi + 1);
        float *src = malloc((size_t)(nrows * ncols) * sizeof(float)),
              *imp = malloc((size_t)ncols * sizeof(float));
        for (int64_t i = 0; i < nrows * ncols; i++)
            src[i] = (float)(student3() * (i % 7 == 0 ? 3 : 1));
        for (int64_t i = 0; i < ncols; i++)
            imp[i] = (float)(0.1 + uniform());
        /* the legacy 32-blocks' imatrix quantizers weigh by a variance over the whole row, which a
         * block-by-block fix cannot see: compare those without importance */
        bool row_wide = g.type && g.block == 32 && !g.table;
        const float *use_imp = f->uses_importance && !row_wide ? imp : NULL;
        uint8_t *bytes = calloc((size_t)(rb * nrows), 1), *ref = calloc((size_t)(rb * nrows), 1);
        float *dec = malloc((size_t)(nrows * ncols) * sizeof(float)),
              *want = malloc((size_t)(nrows * ncols) * sizeof(float));
        f->quantize_rows(src, ref, nrows, ncols, use_imp);
        int64_t nsubmax = 32;
        float *a = malloc((size_t)(nsubmax * nrows) * sizeof(float)),
              *b = malloc((size_t)(nsubmax * nrows) * sizeof(float)),
              *o = malloc((size_t)(nsubmax * nrows) * sizeof(float));
        void *scratch = malloc((size_t)QL_MAX(1, ql_grid_scratch_bytes(&g, ncols)));
        uint8_t codes[4096];
        /* 1. fix only: must reproduce the format's own bytes */
        for (int64_t blk = 0; blk < nblk; blk++) {
            int64_t c0 = g.block > 0 ? blk * g.block : 0, len = ql_grid_block_cols(&g, ncols, blk);
            float *slice = malloc((size_t)(nrows * len) * sizeof(float));
            for (int64_t r = 0; r < nrows; r++)
                memcpy(slice + r * len, src + r * ncols + c0, (size_t)len * sizeof(float));
            ql_grid_fix(&g, slice, nrows, ncols, blk, use_imp ? use_imp + c0 : NULL, bytes, rb, a, b, o,
                        nrows, scratch);
            free(slice);
        }
        if (memcmp(bytes, ref, (size_t)(rb * nrows)) != 0)
            fprintf(stderr, "%s: fixed bytes differ from RTN\n", f->name);
        assert_memory_equal(bytes, ref, (size_t)(rb * nrows));
        /* 2. random codes on the fixed grids */
        for (int64_t blk = 0; blk < nblk; blk++) {
            int64_t c0 = g.block > 0 ? blk * g.block : 0, len = ql_grid_block_cols(&g, ncols, blk);
            float *slice = malloc((size_t)(nrows * len) * sizeof(float));
            for (int64_t r = 0; r < nrows; r++)
                memcpy(slice + r * len, src + r * ncols + c0, (size_t)len * sizeof(float));
            ql_grid_fix(&g, slice, nrows, ncols, blk, use_imp ? use_imp + c0 : NULL, bytes, rb, a, b, o,
                        nrows, scratch);
            for (int64_t r = 0; r < nrows; r++) {
                for (int64_t i = 0; i < len; i++) {
                    int s = ql_grid_sub_of(&g, i);
                    float A = a[s * nrows + r], B = b[s * nrows + r], O = o[s * nrows + r];
                    int k = g.kmin + (int)(uniform() * (g.kmax - g.kmin + 1));
                    if (k > g.kmax)
                        k = g.kmax;
                    codes[i] = (uint8_t)k;
                    want[r * ncols + c0 + i] = ql_grid_value(&g, A, B, O, k);
                    /* nearest really is nearest */
                    float x = slice[r * len + i];
                    int kn = ql_grid_nearest(&g, A, B, O, x);
                    assert_true(kn >= g.kmin && kn <= g.kmax);
                    float en = fabsf(x - ql_grid_value(&g, A, B, O, kn));
                    for (int kk = g.kmin; kk <= g.kmax; kk++)
                        assert_true(en <= fabsf(x - ql_grid_value(&g, A, B, O, kk)) * (1 + 1e-5f) + 1e-6f);
                }
                ql_grid_set_codes(&g, bytes + r * rb, ncols, blk, codes);
            }
            free(slice);
        }
        f->dequantize_rows(bytes, dec, nrows, ncols);
        int64_t bad = 0;
        for (int64_t i = 0; i < nrows * ncols; i++)
            bad += !(dec[i] == want[i]);
        if (bad)
            fprintf(stderr, "%s: %lld values differ after set_codes\n", f->name, (long long)bad);
        assert_int_equal(bad, 0);
        free(src), free(imp), free(bytes), free(ref), free(dec), free(want), free(a), free(b), free(o),
            free(scratch);
    }
}

static void test_beats_rtn(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 64, 512, 4096, 0, 7);
    static const char *const must[] = {"int4_g32", "int4_g128", "q4_0", "q4_k", "q3_k", "nf4"};
    static const char *const also[] = {"q4_1",     "q5_0",     "q5_1",      "q8_0",         "q2_k",
                                       "q5_k",     "q6_k",     "iq4_nl",    "iq4_xs",       "int4_g128_sym",
                                       "int3_g64", "int2_g32", "int8_g128", "int4_channel", "int4_g128_mse"};
    printf("  %-14s %12s %12s %12s %8s %8s\n", "format", "gptq", "rtn", "rtn+imat", "g/rtn", "g/imat");
    for (size_t i = 0; i < QL_ARRAY_LEN(must) + QL_ARRAY_LEN(also); i++) {
        bool required = i < QL_ARRAY_LEN(must);
        const ql_format *f = fmt(required ? must[i] : also[i - QL_ARRAY_LEN(must)]);
        double eg = gptq_err(&L, f, NULL, 2, NULL), er = rtn_err(&L, f, false), ei = rtn_err(&L, f, true);
        printf("  %-14s %12.4e %12.4e %12.4e %8.3f %8.3f%s\n", f->name, eg, er, ei, eg / er, eg / ei,
               required ? "" : "  (informational)");
        if (required) {
            assert_true(eg < er);
            assert_true(eg < ei);
        }
    }
    layer_free(&L);
}

/* ---- a reference GPTQ: the textbook algorithm in double, one column at a time ----
 * H = 2XᵀX/N + λI, U = chol(H⁻¹) upper, for each column j: fix the block's grid when j starts one
 * (from the current row), q = nearest grid value, e = (w_j - q)/U_jj, w_p -= e·U[j, p] for p > j. */
static void chol_lower(double *A, int64_t n) { /* in place, lower triangle */
    for (int64_t j = 0; j < n; j++) {
        double d = A[j * n + j];
        for (int64_t k = 0; k < j; k++)
            d -= A[j * n + k] * A[j * n + k];
        assert_true(d > 0);
        A[j * n + j] = sqrt(d);
        for (int64_t i = j + 1; i < n; i++) {
            double v = A[i * n + j];
            for (int64_t k = 0; k < j; k++)
                v -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = v / A[j * n + j];
        }
        for (int64_t k = j + 1; k < n; k++)
            A[j * n + k] = 0;
    }
}

static void reference_gptq(const layer *L, const ql_format *f, double damp, bool act, bool stat, float *out) {
    int64_t n = L->ncols, m = L->nrows;
    double *H = malloc((size_t)(n * n) * sizeof(double)), *Hi = calloc((size_t)(n * n), sizeof(double));
    double mean = 0, sc = 2.0 / (double)L->ntok;
    for (int64_t i = 0; i < n; i++)
        mean += L->xtx[i * n + i] > 0 ? L->xtx[i * n + i] * sc : 1.0;
    double lam = damp * mean / (double)n;
    float *imp = malloc((size_t)n * sizeof(float));
    double *dg = malloc((size_t)n * sizeof(double));
    int64_t *perm = malloc((size_t)n * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        dg[i] = L->xtx[i * n + i] > 0 ? L->xtx[i * n + i] * sc : 1.0;
        imp[i] = (float)(dg[i] + lam);
        perm[i] = i;
    }
    if (act) /* selection sort: decreasing H_ii, ties by column */
        for (int64_t i = 0; i < n; i++) {
            int64_t best = i;
            for (int64_t k = i + 1; k < n; k++)
                if (dg[perm[k]] > dg[perm[best]] || (dg[perm[k]] == dg[perm[best]] && perm[k] < perm[best]))
                    best = k;
            int64_t t = perm[i];
            perm[i] = perm[best], perm[best] = t;
        }
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++) {
            int64_t pa = perm[a], pb = perm[b];
            H[a * n + b] = pa == pb                                      ? dg[pa] + lam
                           : (dg[pa] == 1.0 && L->xtx[pa * n + pa] == 0) ? 0
                                                                         : L->xtx[pa * n + pb] * sc;
        }
    chol_lower(H, n); /* H = L Lᵀ; Hi = L⁻ᵀ L⁻¹ column by column */
    double *x = malloc((size_t)n * sizeof(double));
    for (int64_t c = 0; c < n; c++) {
        for (int64_t i = 0; i < n; i++) { /* L y = e_c */
            double v = i == c ? 1.0 : 0.0;
            for (int64_t k = 0; k < i; k++)
                v -= H[i * n + k] * x[k];
            x[i] = v / H[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; i--) { /* Lᵀ z = y */
            double v = x[i];
            for (int64_t k = i + 1; k < n; k++)
                v -= H[k * n + i] * Hi[k * n + c];
            Hi[i * n + c] = v / H[i * n + i];
        }
    }
    chol_lower(Hi, n); /* Hi = M Mᵀ, U = Mᵀ: U[j][p] = Hi[p][j] */
    ql_grid g;
    assert_true(ql_grid_init(&g, f));
    int64_t rb = ql_format_tensor_bytes(f, n, 1), bw = g.block > 0 ? g.block : n,
            nblk = ql_grid_nblocks(&g, n);
    uint8_t *row = calloc((size_t)rb, 1);
    void *scratch = malloc((size_t)QL_MAX(1, ql_grid_scratch_bytes(&g, n)));
    float slice[4096], *a = malloc((size_t)(n * 3) * sizeof(float)), *b = a + n, *o = b + n; /* per column */
    double *w = malloc((size_t)n * sizeof(double));
    bool *fixed = malloc((size_t)nblk);
    for (int64_t r = 0; r < m; r++) {
        for (int64_t i = 0; i < n; i++)
            w[i] = L->xtx[i * n + i] > 0 ? L->w[r * n + i] : 0.0;
        memset(fixed, 0, (size_t)nblk);
        for (int64_t j = 0; j < n; j++) {
            for (int64_t blk = 0; blk < nblk;
                 blk++) { /* static: all at j = 0; else at the block's first column */
                if (fixed[blk] || (!stat && blk != perm[j] / bw))
                    continue;
                int64_t c0 = blk * bw, len = ql_grid_block_cols(&g, n, blk);
                float ga[32], gb[32], go[32];
                for (int64_t i = 0; i < len; i++)
                    slice[i] = (float)w[c0 + i];
                ql_grid_fix(&g, slice, 1, n, blk, imp + c0, row, rb, ga, gb, go, 1, scratch);
                for (int64_t i = 0; i < len; i++) {
                    int s = ql_grid_sub_of(&g, i);
                    a[c0 + i] = ga[s], b[c0 + i] = gb[s], o[c0 + i] = go[s];
                }
                fixed[blk] = true;
            }
            int64_t col = perm[j];
            int k = ql_grid_nearest(&g, a[col], b[col], o[col], (float)w[col]);
            float q = ql_grid_value(&g, a[col], b[col], o[col], k);
            out[r * n + col] = q;
            double e = (w[col] - q) / Hi[j * n + j];
            for (int64_t p = j + 1; p < n; p++)
                w[perm[p]] -= e * Hi[p * n + j];
        }
    }
    free(H), free(Hi), free(imp), free(dg), free(perm), free(x), free(row), free(scratch), free(a), free(w);
    free(fixed);
}

/* the blocked, threaded float implementation chooses the same values as the textbook GPTQ in double
 * (act_order, static_groups and lazy batches that split format blocks included) */
static void test_matches_reference(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 32, 256, 2048, 9, 29);
    static const struct {
        const char *f, *spec;
        bool act, stat;
    } cases[] = {
        {"int4_g32", NULL, 0, 0},
        {"int3_g64_sym", NULL, 0, 0},
        {"q4_k", NULL, 0, 0},
        {"q3_k", NULL, 0, 0},
        {"q4_0", NULL, 0, 0},
        {"iq4_nl", NULL, 0, 0},
        {"int4_g32", "act_order=1", 1, 0},
        {"q4_k", "act_order=1", 1, 0},
        {"iq4_xs", "act_order=1", 1, 0},
        {"int4_g32", "static_groups=1,act_order=1", 1, 1},
        {"q6_k", "static_groups=1", 0, 1},
        {"int4_g32", "block=20", 0, 0},
        {"q5_k", "act_order=1,block=64", 1, 0},
    };
    int64_t nw = L.nrows * L.ncols;
    float *ref = malloc((size_t)nw * sizeof(float)), *got = malloc((size_t)nw * sizeof(float));
    float *w = malloc((size_t)nw * sizeof(float));
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); i++) {
        const ql_format *f = fmt(cases[i].f);
        reference_gptq(&L, f, 0.01, cases[i].act, cases[i].stat, ref);
        void *q = malloc((size_t)ql_format_tensor_bytes(f, L.ncols, L.nrows));
        memcpy(w, L.w, (size_t)nw * sizeof(float));
        ql_opt_values parsed;
        ql_method_opts o = gptq_opts(cases[i].spec, 2, &parsed);
        assert_int_equal(ql_gptq_quantize(w, L.nrows, L.ncols, f, &L.st, &o, q, got), QL_OK);
        int64_t same = 0;
        for (int64_t k = 0; k < nw; k++)
            same += ref[k] == got[k];
        double er = out_err(&L, ref), eg = out_err(&L, got);
        if (getenv("GPTQ_DEBUG"))
            for (int64_t r = 0, shown = 0; r < L.nrows && shown < 5; r++) {
                int64_t j = 0;
                while (j < L.ncols && ref[r * L.ncols + j] == got[r * L.ncols + j])
                    j++;
                if (j < L.ncols && ++shown)
                    printf("   row %lld first diff col %lld: ref %.8g got %.8g\n", (long long)r, (long long)j,
                           ref[r * L.ncols + j], got[r * L.ncols + j]);
            }
        printf("  %-13s %-28s same values as the reference %6.2f%%, error ratio %.4f\n", f->name,
               cases[i].spec ? cases[i].spec : "", 100.0 * same / nw, eg / er);
        /* float vs double: a near-tie in a format's scale search (IQ4's) can flip one row's block scale,
         * and that row then takes its own path; everything else is identical */
        assert_true(same > 0.9 * nw);
        assert_true(fabs(eg / er - 1) < 0.02);
        free(q);
    }
    free(ref), free(got), free(w);
    layer_free(&L);
}

/* a harsh Hessian (outlier channels 1000x, so diag H spans 10^6 and more, no damping beyond 1%): the float
 * updates on top of the double factorization still agree with the all-double reference */
static void test_matches_reference_harsh(void **state) {
    (void)state;
    layer L;
    g_outlier = 1000.0;
    layer_init(&L, 16, 512, 1024, 3, 31);
    g_outlier = 20.0;
    static const char *const fm[] = {"int4_g128", "q4_k", "q6_k", "int8_g32"};
    int64_t nw = L.nrows * L.ncols;
    float *ref = malloc((size_t)nw * sizeof(float)), *got = malloc((size_t)nw * sizeof(float));
    float *w = malloc((size_t)nw * sizeof(float));
    for (size_t i = 0; i < QL_ARRAY_LEN(fm); i++) {
        const ql_format *f = fmt(fm[i]);
        reference_gptq(&L, f, 0.01, true, false, ref);
        void *q = malloc((size_t)ql_format_tensor_bytes(f, L.ncols, L.nrows));
        memcpy(w, L.w, (size_t)nw * sizeof(float));
        ql_opt_values parsed;
        ql_method_opts o = gptq_opts("act_order=1", 2, &parsed);
        assert_int_equal(ql_gptq_quantize(w, L.nrows, L.ncols, f, &L.st, &o, q, got), QL_OK);
        int64_t same = 0;
        for (int64_t k = 0; k < nw; k++)
            same += ref[k] == got[k];
        double er = out_err(&L, ref), eg = out_err(&L, got), e0 = rtn_err(&L, f, false);
        printf("  harsh H, %-10s same values as the reference %6.2f%%, error ratio %.4f (gptq/rtn %.3f)\n",
               f->name, 100.0 * same / nw, eg / er, eg / e0);
        assert_true(same > 0.9 * nw);
        assert_true(fabs(eg / er - 1) < 0.02);
        free(q);
    }
    free(ref), free(got), free(w);
    layer_free(&L);
}

static void test_act_order_static(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 64, 512, 4096, 0, 11);
    static const char *const fm[] = {"int4_g128", "int4_g32", "q4_k", "q3_k", "iq4_xs"};
    static const char *const specs[] = {"act_order=1", "act_order=1,static_groups=1", "static_groups=1",
                                        "block=32", "block=300,damp=0.1"};
    for (size_t i = 0; i < QL_ARRAY_LEN(fm); i++) {
        const ql_format *f = fmt(fm[i]);
        double er = rtn_err(&L, f, false), e0 = gptq_err(&L, f, NULL, 1, NULL);
        printf("  %-10s rtn %.4e  default %.3f", f->name, er, e0 / er);
        for (size_t k = 0; k < QL_ARRAY_LEN(specs); k++) {
            double e = gptq_err(&L, f, specs[k], 2, NULL);
            printf("  %s %.3f", specs[k], e / er);
            assert_true(e < er);
        }
        printf("\n");
    }
    /* static_groups=1: the INT scales are RTN's scales of the original weights (imp unused, no _mse) */
    const ql_format *f = fmt("int4_g128");
    void *q = NULL;
    gptq_err(&L, f, "static_groups=1,act_order=1", 1, &q);
    int64_t rb = ql_format_tensor_bytes(f, L.ncols, 1), ng = (L.ncols + 127) / 128;
    uint8_t *ref = malloc((size_t)(rb * L.nrows));
    f->quantize_rows(L.w, ref, L.nrows, L.ncols, NULL);
    for (int64_t r = 0; r < L.nrows; r++) /* fp16 scales then 4-bit zeros */
        assert_memory_equal((uint8_t *)q + r * rb, ref + r * rb, (size_t)(2 * ng + (ng * 4 + 7) / 8));
    free(ref), free(q);
    layer_free(&L);
}

/* neither the thread count nor the kernels' instruction set changes the bytes */
static void test_threads_and_chunks(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 300, 256, 1024, 0, 5); /* 300 rows: chunks of 128 with a short tail */
    const ql_format *f = fmt("q4_k");
    int64_t bytes = ql_format_tensor_bytes(f, L.ncols, L.nrows);
    void *q1 = NULL, *q2 = NULL;
    double e1 = gptq_err(&L, f, "act_order=1", 1, &q1), e2 = gptq_err(&L, f, "act_order=1", 2, &q2);
    printf("  q4_k 300x256: 1 thread %.6e, 2 threads %.6e, same bytes: %s\n", e1, e2,
           memcmp(q1, q2, (size_t)bytes) ? "no" : "yes");
    assert_memory_equal(q1, q2, (size_t)bytes);
    assert_true(e1 < rtn_err(&L, f, false));
    /* the baseline and AVX2 kernels do the same arithmetic */
    ql_simd_level lv = ql_simd_level_get();
    void *q3 = NULL;
    ql_simd_set_level(QL_SIMD_REF);
    gptq_err(&L, f, "act_order=1", 2, &q3);
    ql_simd_set_level(lv);
    printf("  kernels %s vs ref: same bytes: %s\n", ql_simd_level_name(lv),
           memcmp(q1, q3, (size_t)bytes) ? "no" : "yes");
    assert_memory_equal(q1, q3, (size_t)bytes);
    free(q1), free(q2), free(q3);
    layer_free(&L);
}

static void test_dead_columns(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 32, 256, 2048, 40, 3);
    static const char *const fm[] = {"int4_g32", "q4_0", "q4_k", "iq4_nl"};
    for (size_t i = 0; i < QL_ARRAY_LEN(fm); i++) {
        const ql_format *f = fmt(fm[i]);
        for (int act = 0; act < 2; act++) {
            int64_t nw = L.nrows * L.ncols;
            float *chosen = malloc((size_t)nw * sizeof(float)), *w = malloc((size_t)nw * sizeof(float));
            void *q = malloc((size_t)ql_format_tensor_bytes(f, L.ncols, L.nrows));
            memcpy(w, L.w, (size_t)nw * sizeof(float));
            ql_opt_values parsed;
            ql_method_opts o = gptq_opts(act ? "act_order=1" : NULL, 2, &parsed);
            assert_int_equal(ql_gptq_quantize(w, L.nrows, L.ncols, f, &L.st, &o, q, chosen), QL_OK);
            for (int64_t i2 = 0; i2 < nw; i2++)
                assert_true(isfinite(chosen[i2]));
            if (i < 2) /* grids that contain 0: dead inputs are written as exactly 0 */
                for (int64_t r = 0; r < L.nrows; r++)
                    for (int64_t c = 0; c < L.ncols; c++)
                        if (L.xtx[c * L.ncols + c] == 0)
                            assert_true(chosen[r * L.ncols + c] == 0.0f);
            free(chosen), free(w), free(q);
        }
        double eg = gptq_err(&L, f, NULL, 1, NULL), er = rtn_err(&L, f, false);
        printf("  %-8s with 40 dead inputs: gptq/rtn %.3f\n", f->name, eg / er);
        assert_true(eg < er);
    }
    /* all inputs dead (H = 0): every weight is irrelevant; still valid bytes */
    memset(L.xtx, 0, (size_t)(L.ncols * L.ncols) * sizeof(double));
    gptq_err(&L, fmt("q4_k"), NULL, 1, NULL);
    gptq_err(&L, fmt("int4_g128"), "act_order=1", 1, NULL);
    layer_free(&L);
}

static void test_odd_width(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 48, 172, 4096, 0, 13);
    static const char *const fm[] = {"int4_g32", "int4_g128", "int3_g64_sym", "int4_g128_mse", "int8_g256"};
    for (size_t i = 0; i < QL_ARRAY_LEN(fm); i++) {
        const ql_format *f = fmt(fm[i]);
        double er = rtn_err(&L, f, false), eg = gptq_err(&L, f, NULL, 2, NULL);
        double ea = gptq_err(&L, f, "act_order=1", 2, NULL),
               es = gptq_err(&L, f, "act_order=1,static_groups=1", 1, NULL);
        printf("  %-14s n=172: gptq/rtn %.3f, act_order %.3f, static %.3f\n", f->name, eg / er, ea / er,
               es / er);
        assert_true(eg < er);
        assert_true(ea < er);
        assert_true(es < er);
    }
    /* ggml block formats cannot store rows of 172 */
    int64_t nw = L.nrows * L.ncols;
    float *w = malloc((size_t)nw * sizeof(float));
    memcpy(w, L.w, (size_t)nw * sizeof(float));
    uint8_t buf[16];
    ql_method_opts o = {.n_threads = 1};
    assert_int_equal(ql_gptq_quantize(w, L.nrows, L.ncols, fmt("q4_0"), &L.st, &o, buf, NULL), QL_ERR_ARG);
    free(w);
    layer_free(&L);
}

static void test_bad_input(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 8, 64, 256, 0, 17);
    const ql_method *m = ql_method_by_name("gptq");
    const ql_format *f = fmt("q4_0");
    int64_t nw = L.nrows * L.ncols;
    float *w = malloc((size_t)nw * sizeof(float));
    void *q = malloc((size_t)ql_format_tensor_bytes(f, L.ncols, L.nrows));
    /* bad options are refused when they are parsed, before any work (more cases: test_methods.c) */
    static const char *const bad[] = {"damp=-1", "block=0", "act_order=2", "static_groups=0.5"};
    for (size_t i = 0; i < QL_ARRAY_LEN(bad); i++) {
        ql_opt_values parsed;
        assert_int_equal(ql_method_parse_opts(m, bad[i], &parsed), QL_ERR_ARG);
        assert_non_null(strstr(ql_last_error(), "gptq"));
    }
    ql_method_opts o = {.n_threads = 1};
    assert_int_equal(m->quantize_tensor(w, L.nrows, L.ncols, f, NULL, &o, q), QL_ERR_ARG);
    ql_input_stats wrong = L.st;
    wrong.n = 32;
    assert_int_equal(m->quantize_tensor(w, L.nrows, L.ncols, f, &wrong, &o, q), QL_ERR_ARG);
    /* through the registry entry, damp=0 on a full-rank H works */
    memcpy(w, L.w, (size_t)nw * sizeof(float));
    ql_opt_values parsed0;
    ql_method_opts o0 = gptq_opts("damp=0", 1, &parsed0);
    assert_int_equal(m->quantize_tensor(w, L.nrows, L.ncols, f, &L.st, &o0, q), QL_OK);
    /* formats without a grid are refused (no silent rounding to nearest), naming why */
    const ql_format *f16 = fmt("f16");
    void *a = malloc((size_t)ql_format_tensor_bytes(f16, L.ncols, L.nrows));
    void *b = NULL;
    memcpy(w, L.w, (size_t)nw * sizeof(float));
    assert_int_equal(m->quantize_tensor(w, L.nrows, L.ncols, f16, &L.st, &o, a), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "no code grid"));
    /* non-finite weights are taken as 0: valid bytes, finite values */
    memcpy(w, L.w, (size_t)nw * sizeof(float));
    w[3] = NAN, w[70] = INFINITY, w[200] = -INFINITY;
    float *chosen = malloc((size_t)nw * sizeof(float)), *dec = malloc((size_t)nw * sizeof(float));
    assert_int_equal(ql_gptq_quantize(w, L.nrows, L.ncols, f, &L.st, &o, q, chosen), QL_OK);
    f->dequantize_rows(q, dec, L.nrows, L.ncols);
    for (int64_t i = 0; i < nw; i++)
        assert_true(isfinite(chosen[i]) && dec[i] == chosen[i]);
    free(chosen), free(dec);
    /* cancellation */
    volatile int cancel = 1;
    ql_progress pr = {.cancel = &cancel};
    ql_method_opts oc = {.n_threads = 1, .progress = &pr};
    memcpy(w, L.w, (size_t)nw * sizeof(float));
    assert_int_equal(m->quantize_tensor(w, L.nrows, L.ncols, f, &L.st, &oc, q), QL_ERR_CANCELLED);
    free(a), free(b), free(w), free(q);
    layer_free(&L);
}

/* a real layer: tinystories-d256 weights, synthetic inputs with outlier channels */
static void test_real_layer(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "models/tinystories-d256.gguf"))
        skip();
    ql_gguf *gg = NULL;
    assert_int_equal(ql_gguf_open(path, &gg), QL_OK);
    static const char *const names[] = {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"};
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) {
        int64_t ti = ql_gguf_find_tensor(gg, names[i]);
        if (ti < 0) {
            printf("SKIP: %s not in %s\n", names[i], path);
            continue;
        }
        const ql_gguf_tensor *t = &gg->tensors[ti];
        layer L;
        layer_init(&L, 8, t->ne[0], 4096, 0, 23 + i); /* X and H for this width; W replaced below */
        free(L.w);
        L.nrows = t->ne[1];
        L.w = malloc((size_t)(L.nrows * L.ncols) * sizeof(float));
        assert_true(ql_tensor_to_f32(t, L.w, 1));
        static const char *const fm[] = {"q4_k", "int4_g128", "q3_k"};
        for (size_t k = 0; k < QL_ARRAY_LEN(fm); k++) {
            const ql_format *f = fmt(fm[k]);
            double er = rtn_err(&L, f, true), eg = gptq_err(&L, f, "act_order=1", 2, NULL);
            printf("  %s [%lld x %lld] %-9s gptq(act_order)/rtn+imat %.3f\n", names[i], (long long)L.nrows,
                   (long long)L.ncols, f->name, eg / er);
            assert_true(eg < er);
        }
        layer_free(&L);
    }
    ql_gguf_free(gg);
}

/* ---- lattice i-quants (kernels/iq_lattice.h) ---- */

static const char *const k_lattice_formats[] = {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_m", "iq1_s"};

static double group_cost(const float *x, const float *w, const float *q) {
    double c = 0;
    for (int k = 0; k < 8; k++) c += (double)w[k] * ((double)x[k] - q[k]) * ((double)x[k] - q[k]);
    return c;
}

/* After the format's quantizer fixed a block: rounding any group at the block's scale writes a code that
 * decodes to exactly the values returned, changes nothing else in the block, never costs more than the
 * quantizer's own code for that group (the search is exhaustive), and survives zeros, huge outliers,
 * Inf and NaN targets. */
static void test_lattice_grid(void **state) {
    (void)state;
    seed(91);
    const int64_t ncols = 512, nrows = 6;
    float *w = malloc((size_t)(nrows * ncols) * sizeof(float)), *imp = malloc((size_t)ncols * sizeof(float));
    float *dec = malloc((size_t)ncols * sizeof(float)), *dec0 = malloc((size_t)ncols * sizeof(float));
    for (int64_t i = 0; i < nrows * ncols; i++) w[i] = (float)(0.03 * student3());
    for (int64_t i = 0; i < ncols; i++) imp[i] = (float)exp(normal());
    for (size_t fi = 0; fi < QL_ARRAY_LEN(k_lattice_formats); fi++) {
        const ql_format *f = fmt(k_lattice_formats[fi]);
        assert_int_equal(f->grid->kind, QL_GRID_KIND_LATTICE);
        assert_true(ql_method_serves(ql_method_by_name("gptq"), f, NULL, 0));
        const int64_t rb = ql_format_tensor_bytes(f, ncols, 1);
        uint8_t *q = malloc((size_t)(nrows * rb)), *q2 = malloc((size_t)rb);
        assert_int_equal(ql_format_quantize(f, w, q, nrows, ncols, imp, 1), QL_OK);
        int64_t worse = 0, groups = 0;
        for (int64_t r = 0; r < nrows; r++) {
            uint8_t *row = q + r * rb;
            f->dequantize_rows(row, dec0, 1, ncols);
            for (int64_t b = 0; b < ncols / 256; b++) {
                uint8_t *blk = row + b * f->block_bytes;
                float sc[32];
                f->grid->vscales(f->type, blk, sc);
                for (int g = 0; g < 32; g++) {
                    const float *x = w + r * ncols + b * 256 + 8 * g, *wt = imp + b * 256 + 8 * g;
                    float qv[8], xt[8];
                    memcpy(xt, x, sizeof xt);
                    const int mode = (int)((r * 32 + g) % 7);
                    if (mode == 1) memset(xt, 0, sizeof xt);                 /* zeros */
                    if (mode == 2) xt[g % 8] = 1e30f;                          /* huge outlier */
                    if (mode == 3) xt[(g + 3) % 8] = (g & 1) ? -INFINITY : INFINITY;
                    if (mode == 4) xt[(g + 5) % 8] = NAN;
                    memcpy(q2, row, (size_t)rb);
                    f->grid->vround(f->type, q2 + b * f->block_bytes, g, sc[g], xt, wt, qv);
                    f->dequantize_rows(q2, dec, 1, ncols);
                    for (int64_t i = 0; i < ncols; i++) {
                        const bool in_group = i >= b * 256 + 8 * g && i < b * 256 + 8 * g + 8;
                        const float want = in_group ? qv[i - b * 256 - 8 * g] : dec0[i];
                        if (!(dec[i] == want)) fail_msg("%s row %lld group %lld/%d: value %lld decodes to %g, not %g",
                                                        f->name, (long long)r, (long long)b, g, (long long)i, dec[i], want);
                    }
                    if (mode == 0 || mode >= 5) { /* at least as close as the quantizer's own code */
                        groups++;
                        worse += group_cost(xt, wt, qv) > group_cost(xt, wt, dec0 + b * 256 + 8 * g) * (1 + 1e-5) + 1e-30;
                    }
                }
            }
        }
        if (worse) fail_msg("%s: %lld of %lld groups rounded worse than the quantizer's code", f->name,
                            (long long)worse, (long long)groups);
        free(q), free(q2);
    }
    free(w), free(imp), free(dec), free(dec0);
}

/* GPTQ through the lattice grids beats the format's own quantizer given the Hessian diagonal as
 * importance (what an imatrix gives) in output error tr(ΔW H ΔWᵀ), on a synthetic layer and on real
 * tinystories-d256 layers with synthetic correlated inputs; threads do not change the bytes. */
static void test_lattice_beats_rtn(void **state) {
    (void)state;
    layer L;
    layer_init(&L, 64, 768, 2048, 0, 77);
    for (size_t fi = 0; fi < QL_ARRAY_LEN(k_lattice_formats); fi++) {
        const ql_format *f = fmt(k_lattice_formats[fi]);
        const double er = rtn_err(&L, f, true), eg = gptq_err(&L, f, "", 2, NULL);
        printf("  synthetic [64 x 768] %-8s gptq/rtn+imat %.3f\n", f->name, eg / er);
        assert_true(eg < er);
    }
    layer_free(&L);
    /* rows split in chunks of 128 with a short tail: the thread count does not change the bytes (256
     * columns, as test_threads_and_chunks: OpenBLAS factors wider Hessians differently per thread count) */
    layer_init(&L, 300, 256, 1024, 0, 5);
    for (size_t fi = 0; fi < QL_ARRAY_LEN(k_lattice_formats); fi += 2) {
        const ql_format *f = fmt(k_lattice_formats[fi]);
        void *b1 = NULL, *b2 = NULL;
        gptq_err(&L, f, "", 1, &b1);
        gptq_err(&L, f, "", 3, &b2);
        assert_memory_equal(b1, b2, (size_t)ql_format_tensor_bytes(f, L.ncols, L.nrows));
        free(b1), free(b2);
    }
    layer_free(&L);
    char path[512];
    if (!shared_path(path, sizeof path, "models/tinystories-d256.gguf")) {
        printf("SKIP: the real-layer half needs ../shared/models/tinystories-d256.gguf\n");
        return;
    }
    ql_gguf *gg = NULL;
    assert_int_equal(ql_gguf_open(path, &gg), QL_OK);
    const int64_t ti = ql_gguf_find_tensor(gg, "blk.1.ffn_down.weight");
    assert_true(ti >= 0);
    const ql_gguf_tensor *t = &gg->tensors[ti];
    layer_init(&L, 8, t->ne[0], 4096, 0, 29);
    free(L.w);
    L.nrows = t->ne[1];
    L.w = malloc((size_t)(L.nrows * L.ncols) * sizeof(float));
    assert_true(ql_tensor_to_f32(t, L.w, 1));
    const size_t step = getenv("QL_QUICK") ? 4 : 1; /* QL_QUICK (ASan): iq2_xxs and iq3_s only */
    for (size_t fi = 0; fi < QL_ARRAY_LEN(k_lattice_formats); fi += step) {
        const ql_format *f = fmt(k_lattice_formats[fi]);
        const double er = rtn_err(&L, f, true), eg = gptq_err(&L, f, "", 2, NULL);
        printf("  blk.1.ffn_down [%lld x %lld] %-8s gptq/rtn+imat %.3f\n", (long long)L.nrows, (long long)L.ncols,
               f->name, eg / er);
        assert_true(eg < er);
    }
    layer_free(&L);
    ql_gguf_free(gg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_grid_exact),
        cmocka_unit_test(test_beats_rtn),
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_matches_reference_harsh),
        cmocka_unit_test(test_act_order_static),
        cmocka_unit_test(test_threads_and_chunks),
        cmocka_unit_test(test_dead_columns),
        cmocka_unit_test(test_odd_width),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_real_layer),
        cmocka_unit_test(test_lattice_grid),
        cmocka_unit_test(test_lattice_beats_rtn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
