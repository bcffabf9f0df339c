/* test_gptq_cuda.c — GPTQ on the GPU (kernels/gptq_cuda.h) against the CPU method (ql_gptq_quantize) on a
 * synthetic 512x1024 layer with a 1024x1024 Hessian (outlier channels, one dead input), for INTn group
 * formats (asym, sym, groups smaller than the lazy batch, groups straddling batches, per channel):
 * the output error tr(ΔW H ΔWᵀ) within 2% of the CPU's, >= 99% of the chosen values identical, and the
 * format bytes decoding to exactly the returned values. The host emulation of the GPU path (same
 * per-element code, LAPACK/OpenBLAS for cuSOLVER/cuBLAS) is held to the same bounds, so the logic is
 * checked on machines without a GPU; there the device test prints "SKIP: no CUDA device".
 * The grid path (ggml blocks, tables, act order, static groups, MSE groups: ql_gptq_quantize_on) is held to
 * the same bounds against the CPU method on a 128x512 corner of the layer, emulated and on the device.
 * QL_GPTQ_CUDA_QUICK=1 runs two formats only (for compute-sanitizer). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "formats/format_grid.h"
#include "methods/gptq.h"
#include "kernels/gptq_cuda.h"
#include "methods/method.h"

#ifdef QL_HAVE_CUDA
#include <cuda_runtime.h>

/* options as qlab quant passes them: parsed once against gptq's schema */
static ql_method_opts gptq_opts(const char *spec, int threads, ql_opt_values *v) {
    ql_status s = ql_method_parse_opts(ql_method_by_name("gptq"), spec, v);
    if (s)
        fprintf(stderr, "gptq options '%s': %s\n", spec, ql_last_error());
    assert_int_equal(s, QL_OK);
    return (ql_method_opts){.values = v, .n_threads = threads};
}

enum { ROWS = 512, COLS = 1024, NTOK = 2048, DEAD_COL = 333 };

typedef struct {
    const char *fmt;
    int block;
} gcase;

typedef struct {
    int64_t rows, cols;
    const float *w;    /* [rows, cols] */
    const double *xtx; /* [cols, cols] */
} layer;

static const gcase g_cases[] = {
    {"int4_g128", 128},     /* groups = batches */
    {"int4_g128_sym", 128}, /* symmetric */
    {"int3_g32", 128},      /* groups fixed mid-batch, with pending errors */
    {"int4_g64", 96},       /* groups straddling batch ends: coefficients past the batch */
    {"int8_channel", 128},  /* one group per row */
    {"int2_g128", 128},
};

/* odd shapes: rows not a multiple of the kernel's 32, a last group of 8 columns, batches of 80 */
static const gcase g_small_cases[] = {{"int4_g64", 80}, {"int3_g64_sym", 80}};
enum { SROWS = 37, SCOLS = 200 };

static float *g_w;    /* [ROWS, COLS] */
static double *g_xtx; /* [COLS, COLS] */
static float *g_ws;   /* [SROWS, SCOLS]: the top-left corner of g_w */
static double *g_xs;  /* [SCOLS, SCOLS]: the top-left corner of g_xtx */
static layer g_big, g_small;

#define QL_TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "tests/test_rng.h"

static int setup(void **state) {
    (void)state;
    g_w = malloc(sizeof(float) * ROWS * COLS);
    g_xtx = malloc(sizeof(double) * COLS * COLS);
    double *X = malloc(sizeof(double) * NTOK * COLS);
    if (!g_w || !g_xtx || !X) return -1;
    for (int64_t i = 0; i < (int64_t)ROWS * COLS; i++)
        g_w[i] = (float)(0.02 * normal());
    for (int64_t c = 0; c < COLS; c++) {
        double s = exp(0.5 * normal()) * (c % 97 == 5 ? 30.0 : 1.0);
        for (int64_t t = 0; t < NTOK; t++)
            X[t * COLS + c] = c == DEAD_COL ? 0.0 : s * normal();
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, COLS, NTOK, 1.0, X, COLS, 0.0, g_xtx, COLS);
    for (int64_t i = 0; i < COLS; i++)
        for (int64_t j = 0; j < i; j++)
            g_xtx[i * COLS + j] = g_xtx[j * COLS + i];
    free(X);
    g_ws = malloc(sizeof(float) * SROWS * SCOLS);
    g_xs = malloc(sizeof(double) * SCOLS * SCOLS);
    if (!g_ws || !g_xs) return -1;
    for (int64_t r = 0; r < SROWS; r++)
        memcpy(g_ws + r * SCOLS, g_w + r * COLS, sizeof(float) * SCOLS);
    for (int64_t r = 0; r < SCOLS; r++)
        memcpy(g_xs + r * SCOLS, g_xtx + r * COLS, sizeof(double) * SCOLS);
    g_big = (layer){ROWS, COLS, g_w, g_xtx};
    g_small = (layer){SROWS, SCOLS, g_ws, g_xs};
    return 0;
}

static float *g_wg;
static double *g_xg;

static int teardown(void **state) {
    (void)state;
    free(g_w), free(g_xtx), free(g_ws), free(g_xs), free(g_wg), free(g_xg);
    return 0;
}

/* tr(ΔW H ΔWᵀ), ΔW = W - Q, H = XᵀX */
static double output_error(const layer *L, const float *q) {
    const int64_t n = L->rows * L->cols;
    double *d = malloc(sizeof(double) * n), *m = malloc(sizeof(double) * n);
    assert_non_null(d);
    assert_non_null(m);
    for (int64_t i = 0; i < n; i++)
        d[i] = (double)L->w[i] - (double)q[i];
    cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)L->rows, (int)L->cols, 1.0, L->xtx, (int)L->cols,
                d, (int)L->cols, 0.0, m, (int)L->cols);
    double e = 0;
    for (int64_t i = 0; i < n; i++)
        e += d[i] * m[i];
    free(d);
    free(m);
    return e;
}

static double same_fraction(const float *a, const float *b, int64_t n) {
    int64_t same = 0;
    for (int64_t i = 0; i < n; i++)
        same += a[i] == b[i];
    return (double)same / (double)n;
}

typedef ql_status (*gptq_fn)(const float *, int64_t, int64_t, const double *, int64_t, int, int, bool, double,
                             int, float *, void *, ql_cuda_gptq_times *);

/* Runs one case on the CPU method and through fn; checks the bounds; prints the figures. */
static void check_case(const gcase *gc, const layer *L, gptq_fn fn, const char *who, float *q_out) {
    const int64_t rows = L->rows, cols = L->cols;
    const ql_format *f = ql_format_by_name(gc->fmt);
    assert_non_null(f);
    int bits = 0, group = 0;
    bool sym = false, mse = true;
    assert_true(ql_int_format_params(f, &bits, &group, &sym, &mse));
    assert_false(mse);
    const int64_t n = rows * cols, bytes = ql_format_tensor_bytes(f, cols, rows);
    assert_int_equal(bytes, ql_int_row_bytes(cols, bits, group, sym) * rows);
    float *w = malloc(sizeof(float) * n), *q_cpu = malloc(sizeof(float) * n), *q = malloc(sizeof(float) * n),
          *deq = malloc(sizeof(float) * n);
    uint8_t *dst_cpu = malloc((size_t)bytes), *dst = malloc((size_t)bytes);
    assert_true(w && q_cpu && q && deq && dst_cpu && dst);

    char spec[64];
    snprintf(spec, sizeof spec, "damp=0.01,block=%d", gc->block);
    ql_input_stats st = {.n = cols, .n_tokens = NTOK, .xtx = L->xtx};
    ql_opt_values parsed;
    ql_method_opts o = gptq_opts(spec, 2, &parsed);
    memcpy(w, L->w, sizeof(float) * n);
    double t0 = ql_time_s();
    ql_status s = ql_gptq_quantize(w, rows, cols, f, &st, &o, dst_cpu, q_cpu);
    double t_cpu = ql_time_s() - t0;
    if (s) fail_msg("cpu gptq %s: %s", gc->fmt, ql_last_error());

    ql_cuda_gptq_times tm = {0};
    memset(dst, 0xA5, (size_t)bytes);
    s = fn(L->w, rows, cols, L->xtx, NTOK, bits, group, sym, 0.01, gc->block, q, dst, &tm);
    if (s) fail_msg("%s gptq %s: %s", who, gc->fmt, ql_last_error());

    /* the bytes decode to the returned values (as m_gptq.c's, which differ from the decoder's only in
     * the sign of zero: code 2^(bits-1) of a _sym group with its negative scale decodes to -0) */
    assert_int_equal(ql_format_dequantize(f, dst, deq, rows, cols, 1), QL_OK);
    for (int64_t i = 0; i < n; i++)
        if (deq[i] != q[i])
            fail_msg("%s %s: value %lld is %g, its bytes decode to %g", who, gc->fmt, (long long)i, q[i],
                     deq[i]);
    if (cols > DEAD_COL) assert_float_equal(q[5 * cols + DEAD_COL], 0.0f, 0.0f); /* dead input */

    double e_cpu = output_error(L, q_cpu), e = output_error(L, q), same = same_fraction(q, q_cpu, n);
    int64_t same_bytes = 0;
    for (int64_t i = 0; i < bytes; i++)
        same_bytes += dst[i] == dst_cpu[i];
    printf("  %-4s %lldx%lld %-13s block %3d: error %.6g vs cpu %.6g (ratio %.4f), values identical %.3f%%, "
           "bytes %.3f%%, "
           "%.3f s (cpu %.3f s)\n",
           who, (long long)rows, (long long)cols, gc->fmt, gc->block, e, e_cpu, e / e_cpu, 100 * same,
           100.0 * (double)same_bytes / (double)bytes, tm.total, t_cpu);
    if (fabs(e / e_cpu - 1) > 0.02)
        fail_msg("%s %s: error %g vs cpu %g: more than 2%% apart", who, gc->fmt, e, e_cpu);
    if (same < 0.99) fail_msg("%s %s: only %.3f%% of the values equal the cpu's", who, gc->fmt, 100 * same);
    if (q_out) memcpy(q_out, q, sizeof(float) * n);
    free(w), free(q_cpu), free(q), free(deq), free(dst_cpu), free(dst);
}

static size_t n_cases(void) {
    const char *e = getenv("QL_GPTQ_CUDA_QUICK");
    return e && strcmp(e, "1") == 0 ? 2 : QL_ARRAY_LEN(g_cases);
}

static void test_args(void **state) {
    (void)state;
    float w[64] = {0}, q[64];
    double h[64] = {0};
    for (int i = 0; i < 8; i++)
        h[i * 8 + i] = 1;
    assert_int_equal(ql_cuda_gptq_int(w, 8, 8, h, 0, 1, 8, false, 0.01, 128, q, NULL, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_gptq_int(w, 8, 8, h, 0, 4, -1, false, 0.01, 128, q, NULL, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_gptq_int(w, 8, 8, h, 0, 4, 8, false, -1, 128, q, NULL, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_gptq_int(w, 8, 8, h, 0, 4, 8, false, 0.01, 0, q, NULL, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_gptq_int(w, 0, 8, h, 0, 4, 8, false, 0.01, 128, q, NULL, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_gptq_int(NULL, 8, 8, h, 0, 4, 8, false, 0.01, 128, q, NULL, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_gptq_int_emulate(w, 8, 8, NULL, 0, 4, 8, false, 0.01, 128, q, NULL, NULL),
                     QL_ERR_ARG);
    /* a Hessian that no dampening makes positive definite */
    for (int i = 0; i < 64; i++)
        h[i] = 1;
    h[1] = h[8] = 2;
    ql_status s = ql_cuda_gptq_int_emulate(w, 8, 8, h, 0, 4, 8, false, 0.0, 128, q, NULL, NULL);
    assert_int_equal(s, QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "positive definite"));
}

/* The GPU path's code on the host: needs no device. */
static void test_emulation(void **state) {
    (void)state;
    for (size_t i = 0; i < n_cases(); i++)
        check_case(&g_cases[i], &g_big, ql_cuda_gptq_int_emulate, "host", NULL);
    for (size_t i = 0; i < QL_ARRAY_LEN(g_small_cases); i++)
        check_case(&g_small_cases[i], &g_small, ql_cuda_gptq_int_emulate, "host", NULL);
}

/* One case on the device, checked against the CPU and against the host emulation. */
static void device_case(const gcase *gc, const layer *L) {
    const int64_t n = L->rows * L->cols;
    float *qd = malloc(sizeof(float) * n), *qe = malloc(sizeof(float) * n);
    assert_true(qd && qe);
    check_case(gc, L, ql_cuda_gptq_int, "cuda", qd);
    int bits, group;
    bool sym;
    assert_true(ql_int_format_params(ql_format_by_name(gc->fmt), &bits, &group, &sym, NULL));
    assert_int_equal(ql_cuda_gptq_int_emulate(L->w, L->rows, L->cols, L->xtx, NTOK, bits, group, sym, 0.01,
                                              gc->block, qe, NULL, NULL),
                     QL_OK);
    double same = same_fraction(qd, qe, n);
    printf("  cuda %-13s vs its host emulation: values identical %.3f%%\n", gc->fmt, 100 * same);
    if (same < 0.99) fail_msg("cuda %s: only %.3f%% equal to the host emulation", gc->fmt, 100 * same);
    free(qd), free(qe);
}

static void test_device(void **state) {
    (void)state;
    if (!ql_cuda_gptq_available()) {
        printf("SKIP: no CUDA device\n");
        skip();
    }
    double t_init = 0;
    if (ql_cuda_gptq_init(&t_init)) fail_msg("init: %s", ql_last_error());
    printf("  cuda init %.3f s\n", t_init);
    for (size_t i = 0; i < n_cases(); i++)
        device_case(&g_cases[i], &g_big);
    for (size_t i = 0; i < QL_ARRAY_LEN(g_small_cases); i++)
        device_case(&g_small_cases[i], &g_small);
}


/* ---- the grid path through the method (ql_gptq_quantize_on) ---- */

typedef struct {
    const char *fmt, *spec;
} grid_case;

static const grid_case g_grid_cases[] = {
    {"q4_0", "block=128"},                 /* 32-blocks: four fixes inside a batch */
    {"q8_0", "block=128"},                 /* symmetric 8-bit codes */
    {"q5_1", "block=96"},                  /* scale + min; batches straddle blocks */
    {"q4_k", "block=128"},                 /* 256-blocks over two batches, sub-blocks of 32 */
    {"q6_k", "block=128"},                 /* sub-blocks of 16 */
    {"q3_k", "block=128"},
    {"iq4_nl", "block=128"},               /* a table grid */
    {"q4_k", "block=128,act_order=1"},     /* act order: blocks fixed where GPTQ first reaches them */
    {"q5_k", "block=128,static_groups=1"}, /* q4_k/q5_k: the scale search on the device (no host round trip) */
    {"int4_g128", "block=128,act_order=1"},
    {"int4_g64", "block=128,static_groups=1"},
    {"int4_g128_mse", "block=128"},        /* MSE scale search: the registry's quantizer on the host */
};
enum { GROWS = 128, GCOLS = 512 };
/* g_wg [GROWS, GCOLS], g_xg [GCOLS, GCOLS]: top-left corners of g_w, g_xtx (made at first use) */

/* The CPU method and the GPU path (where) on one case; same bounds as check_case. */
static void grid_check(const grid_case *gc, ql_gptq_where where, const char *who) {
    const int64_t rows = GROWS, cols = GCOLS, n = rows * cols;
    if (!g_wg) {
        g_wg = malloc(sizeof(float) * n);
        g_xg = malloc(sizeof(double) * cols * cols);
        assert_true(g_wg && g_xg);
        for (int64_t r = 0; r < rows; r++) memcpy(g_wg + r * cols, g_w + r * COLS, sizeof(float) * cols);
        for (int64_t r = 0; r < cols; r++) memcpy(g_xg + r * cols, g_xtx + r * COLS, sizeof(double) * cols);
    }
    layer L = {rows, cols, g_wg, g_xg};
    const ql_format *f = ql_format_by_name(gc->fmt);
    assert_non_null(f);
    const int64_t bytes = ql_format_tensor_bytes(f, cols, rows);
    float *w = malloc(sizeof(float) * n), *q_cpu = malloc(sizeof(float) * n), *q = malloc(sizeof(float) * n),
          *deq = malloc(sizeof(float) * n);
    uint8_t *dst_cpu = malloc((size_t)bytes), *dst = malloc((size_t)bytes);
    assert_true(w && q_cpu && q && deq && dst_cpu && dst);
    ql_input_stats st = {.n = cols, .n_tokens = NTOK, .xtx = g_xg};
    ql_opt_values parsed;
    ql_method_opts o = gptq_opts(gc->spec, 2, &parsed);
    memcpy(w, g_wg, sizeof(float) * n);
    double t0 = ql_time_s();
    if (ql_gptq_quantize_on(QL_GPTQ_ON_CPU, w, rows, cols, f, &st, &o, dst_cpu, q_cpu))
        fail_msg("cpu gptq %s: %s", gc->fmt, ql_last_error());
    double t_cpu = ql_time_s() - t0;
    memcpy(w, g_wg, sizeof(float) * n);
    memset(dst, 0xA5, (size_t)bytes);
    t0 = ql_time_s();
    if (ql_gptq_quantize_on(where, w, rows, cols, f, &st, &o, dst, q))
        fail_msg("%s gptq %s: %s", who, gc->fmt, ql_last_error());
    double t = ql_time_s() - t0;
    assert_int_equal(ql_format_dequantize(f, dst, deq, rows, cols, 1), QL_OK);
    for (int64_t i = 0; i < n; i++) /* the sign of zero aside (see check_case) */
        if (deq[i] != q[i])
            fail_msg("%s %s: value %lld is %g, its bytes decode to %g", who, gc->fmt, (long long)i, q[i], deq[i]);
    /* a dead input gets the grid's value nearest 0 (not 0 where the grid has no 0: q5_1, q4_k's mins) */
    assert_float_equal(q[5 * cols + DEAD_COL], q_cpu[5 * cols + DEAD_COL], 0.0f);
    double e_cpu = output_error(&L, q_cpu), e = output_error(&L, q), same = same_fraction(q, q_cpu, n);
    int64_t same_bytes = 0;
    for (int64_t i = 0; i < bytes; i++) same_bytes += dst[i] == dst_cpu[i];
    printf("  %-4s %-13s %-28s error %.6g vs cpu %.6g (ratio %.4f), values identical %.3f%%, bytes %.3f%%, "
           "%.3f s (cpu %.3f s)\n",
           who, gc->fmt, gc->spec, e, e_cpu, e / e_cpu, 100 * same, 100.0 * (double)same_bytes / (double)bytes, t,
           t_cpu);
    if (fabs(e / e_cpu - 1) > 0.02) fail_msg("%s %s: error %g vs cpu %g: more than 2%% apart", who, gc->fmt, e, e_cpu);
    if (same < 0.99) fail_msg("%s %s: only %.3f%% of the values equal the cpu's", who, gc->fmt, 100 * same);
    free(w), free(q_cpu), free(q), free(deq), free(dst_cpu), free(dst);
}

static size_t n_grid_cases(void) {
    const char *e = getenv("QL_GPTQ_CUDA_QUICK");
    return e && strcmp(e, "1") == 0 ? 2 : QL_ARRAY_LEN(g_grid_cases);
}

static ql_status failing_fix(void *user, int64_t blk, const float *G, int64_t rows, int64_t len, float *a,
                             float *b, float *o) {
    (void)user, (void)blk, (void)G, (void)rows, (void)len, (void)a, (void)b, (void)o;
    return ql_fail(QL_ERR_CANCELLED, "cancelled");
}

static void test_grid_emulation(void **state) {
    (void)state;
    for (size_t i = 0; i < n_grid_cases(); i++)
        grid_check(&g_grid_cases[i], QL_GPTQ_ON_CUDA_EMULATED, "host");
    /* a grid hook's failure (here: not a permutation) is one clear error, no crash */
    float w[64] = {0};
    double h[64] = {0};
    uint8_t codes[64];
    int64_t perm[8] = {0, 1, 2, 3, 4, 5, 6, 6};
    for (int i = 0; i < 8; i++) h[i * 8 + i] = 1;
    ql_cuda_gptq_grid g = {.bw = 8, .kmin = 0, .kmax = 15};
    assert_int_equal(ql_cuda_gptq_grid_emulate(w, 8, 8, h, 0, 0.01, 128, NULL, false, &g, codes, NULL, NULL),
                     QL_ERR_ARG); /* no hook */
    g.fix = failing_fix;
    assert_int_equal(ql_cuda_gptq_grid_emulate(w, 8, 8, h, 0, 0.01, 128, perm, false, &g, codes, NULL, NULL),
                     QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "permutation"));
    perm[7] = 7; /* the hook's error comes back as it is */
    assert_int_equal(ql_cuda_gptq_grid_emulate(w, 8, 8, h, 0, 0.01, 128, perm, false, &g, codes, NULL, NULL),
                     QL_ERR_CANCELLED);
}

/* ---- the device twins of the block fix (ql_format_cuda_ops.grid_fix_*): every format that has one, bit for bit
 * against the registry's quantizer + grid parser (ql_grid_fix) on random and adversarial blocks ---- */

enum { FIX_ROWS = 40 };

/* Row r of a block of len: content of kind (0..9). */
static void fix_block_fill(float *g, int64_t len, int r, int kind, uint64_t *rng) {
    for (int64_t i = 0; i < len; i++) {
        float u = (float)((*rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 40) / 16777216.0f;
        float x = 2 * u - 1;
        switch (kind % 10) {
        case 0: break;                                           /* uniform in [-1, 1) */
        case 1: x = i == 7 ? 40.0f : x * 0.01f; break;            /* one outlier */
        case 2: x = 0.0f; break;                                  /* all zero */
        case 3: x = 0.25f; break;                                 /* constant positive */
        case 4: x = fabsf(x) + 0.5f; break;                       /* positive only: min > 0 */
        case 5: x = -fabsf(x) * 3.0f; break;                      /* negative only */
        case 6: x *= 1e-30f; break;                               /* tiny: scales underflow fp16 */
        case 7: x *= 3e4f; break;                                 /* large: near fp16's range */
        case 8: x = (i % 32) < 16 ? 0.0f : x; break;              /* half-empty sub-blocks */
        default: x = (float)((int)(x * 8)) / 8; break;            /* values on a coarse grid: ties */
        }
        g[(int64_t)r * len + i] = x;
    }
}

static void test_grid_fix_twins(void **state) {
    (void)state;
    int checked = 0;
    for (int fi = 0; fi < ql_format_count(); fi++) {
        const ql_format *f = ql_format_at(fi);
        if (!f->cuda || !f->cuda->grid_fix_emulated) continue;
        assert_non_null(f->cuda->grid_fix_dev); /* both kinds or neither: the run picks by its own */
        ql_grid g;
        assert_true(ql_grid_init(&g, f));
        const int64_t len = f->block, rb = f->block_bytes, nsub = ql_grid_nsub(&g, len);
        float *G = malloc(sizeof(float) * FIX_ROWS * len), *imp = malloc(sizeof(float) * len);
        float *abo = malloc(sizeof(float) * 6 * nsub * FIX_ROWS);
        uint8_t *ref = malloc((size_t)(FIX_ROWS * rb)), *twin = malloc((size_t)(FIX_ROWS * rb));
        assert_true(G && imp && abo && ref && twin);
        float *a = abo, *b = a + nsub * FIX_ROWS, *o = b + nsub * FIX_ROWS, *a2 = o + nsub * FIX_ROWS,
              *b2 = a2 + nsub * FIX_ROWS, *o2 = b2 + nsub * FIX_ROWS;
        uint64_t rng = 0x5eed0000u + (uint64_t)fi;
        for (int trial = 0; trial < 4; trial++) {
            for (int r = 0; r < FIX_ROWS; r++) fix_block_fill(G, len, r, r + trial, &rng);
            for (int64_t i = 0; i < len; i++) { /* importance: GPTQ's diag H + lam, some columns dead-ish */
                rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
                const float u = (float)(rng >> 40) / 16777216.0f;
                imp[i] = trial == 3 ? 1.0f : (i % 29 == 3 ? 1e-8f : 0.01f + 50.0f * u * u);
            }
            memset(ref, 0, (size_t)(FIX_ROWS * rb));
            memset(twin, 0xA5, (size_t)(FIX_ROWS * rb));
            ql_grid_fix(&g, G, FIX_ROWS, len, 0, imp, ref, rb, a, b, o, FIX_ROWS, NULL);
            assert_int_equal(f->cuda->grid_fix_emulated(G, FIX_ROWS, len, imp, twin, rb, a2, b2, o2, FIX_ROWS, NULL),
                             QL_OK);
            for (int r = 0; r < FIX_ROWS; r++)
                if (memcmp(ref + r * rb, twin + r * rb, (size_t)rb))
                    fail_msg("%s fix twin: row %d (kind %d, trial %d): bytes differ from the registry's quantizer",
                             f->name, r, (r + trial) % 10, trial);
            if (memcmp(a, a2, sizeof(float) * 3 * nsub * FIX_ROWS))
                fail_msg("%s fix twin: a/b/o differ from the grid parser's (trial %d)", f->name, trial);
            if (ql_cuda_gptq_available()) { /* the device's run of the same code */
                void *dG = NULL, *dimp = NULL, *dblk = NULL, *dabo = NULL;
                const size_t gb = sizeof(float) * FIX_ROWS * len, ab = sizeof(float) * 3 * nsub * FIX_ROWS;
                assert_int_equal(cudaMalloc(&dG, gb), cudaSuccess);
                assert_int_equal(cudaMalloc(&dimp, sizeof(float) * len), cudaSuccess);
                assert_int_equal(cudaMalloc(&dblk, (size_t)(FIX_ROWS * rb)), cudaSuccess);
                assert_int_equal(cudaMalloc(&dabo, ab), cudaSuccess);
                cudaMemcpy(dG, G, gb, cudaMemcpyHostToDevice);
                cudaMemcpy(dimp, imp, sizeof(float) * len, cudaMemcpyHostToDevice);
                float *da = dabo;
                assert_int_equal(f->cuda->grid_fix_dev(dG, FIX_ROWS, len, dimp, dblk, rb, da, da + nsub * FIX_ROWS,
                                                       da + 2 * nsub * FIX_ROWS, FIX_ROWS, NULL),
                                 QL_OK);
                assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
                cudaMemcpy(twin, dblk, (size_t)(FIX_ROWS * rb), cudaMemcpyDeviceToHost);
                cudaMemcpy(a2, dabo, ab, cudaMemcpyDeviceToHost);
                cudaFree(dG), cudaFree(dimp), cudaFree(dblk), cudaFree(dabo);
                if (memcmp(ref, twin, (size_t)(FIX_ROWS * rb)) || memcmp(a, a2, ab))
                    fail_msg("%s fix twin on the device: differs from the registry's quantizer (trial %d)", f->name,
                             trial);
            }
        }
        /* a wrong shape is one error, not a write out of bounds */
        assert_int_equal(f->cuda->grid_fix_emulated(G, FIX_ROWS, len - 1, imp, twin, rb, a2, b2, o2, FIX_ROWS, NULL),
                         QL_ERR_ARG);
        printf("  fix twin %-6s %d rows x 4 trials bit-exact with the registry's quantizer\n", f->name, FIX_ROWS);
        checked++;
        free(G), free(imp), free(abo), free(ref), free(twin);
    }
    assert_true(checked >= 2); /* q4_k, q5_k at least */
}

static void test_grid_device(void **state) {
    (void)state;
    if (!ql_cuda_gptq_available()) {
        printf("SKIP: no CUDA device\n");
        skip();
    }
    for (size_t i = 0; i < n_grid_cases(); i++)
        grid_check(&g_grid_cases[i], QL_GPTQ_ON_CUDA, "cuda");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args),
        cmocka_unit_test(test_grid_fix_twins),
        cmocka_unit_test(test_grid_emulation),
        cmocka_unit_test(test_grid_device),
        cmocka_unit_test(test_emulation),
        cmocka_unit_test(test_device),
    };
    return cmocka_run_group_tests_name("gptq_cuda", tests, setup, teardown);
}

#else /* built without CUDA */

static void test_no_cuda(void **state) {
    (void)state;
    assert_int_equal(ql_cuda_gptq_available(), 0);
    printf("SKIP: no CUDA device (this build has no CUDA: nvcc was not found)\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_cuda)};
    return cmocka_run_group_tests_name("gptq_cuda", tests, NULL, NULL);
}
#endif
