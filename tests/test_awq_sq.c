/* test_awq_sq.c — activation quantization in the preview forward pass (INT8/FP8 per token / per tensor,
 * LLM.int8()), SmoothQuant and AWQ on stories260K: the transforms keep the float model's logits, AWQ's
 * scales lower the output error tr(ΔW H ΔWᵀ) against RTN, W8A8 after SmoothQuant stays within 1% of the
 * float perplexity. Prints the measured numbers (docs/methods.md quotes them). Also the runtime side of a
 * plan: scheme specs, the qlab.act.* GGUF keys (round trip, malformed keys refused naming the file) and the
 * plan INI's [activations] section and method_opts (round trip, unknown schemes refused). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "methods/act_recipe.h"
#include "methods/layer_f32.h"
#include "methods/method.h"
#include "formats/fmt_ext.h"
#include "core/gguf.h"
#include "core/ppl.h"
#include "pipeline/plan.h"
#include "pipeline/quantize.h"
#include <sys/stat.h>
#include "tests/test_util.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#endif

#include <unistd.h>

#define CAL_SEQ 32
#define CAL_LEN 64
#define PPL_CTX 256
#define PPL_CHUNKS 50

/* ---------------- unit tests (no shared data) ---------------- */

static void test_modes_and_recipes(void **state) {
    (void)state;
    for (int i = 0; i < QL_ACT_MODE_COUNT; i++) {
        ql_act_mode m;
        assert_true(ql_act_mode_parse(ql_act_mode_name((ql_act_mode)i), &m));
        assert_int_equal(m, i);
    }
    ql_act_mode m;
    assert_true(ql_act_mode_parse("INT8", &m));
    assert_int_equal(m, QL_ACT_INT8_TOKEN);
    assert_false(ql_act_mode_parse("int7_token", &m));
    for (int i = 0; i < ql_act_recipe_count(); i++) {
        const ql_act_recipe *r = ql_act_recipe_at(i);
        assert_non_null(ql_format_by_name(r->weight_format));
        assert_ptr_equal(ql_act_recipe_by_name(r->name), r);
    }
    assert_non_null(ql_act_recipe_by_name("w8a8-int8"));
    /* static modes need calibration */
    ql_act_quant aq;
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TENSOR, NULL, 0, 0), QL_ERR_ARG);
    const ql_method *awq = ql_method_by_name("awq"), *sq = ql_method_by_name("smoothquant");
    assert_non_null(awq);
    assert_non_null(sq);
    assert_non_null(awq->transform_layer);
    assert_non_null(sq->transform_layer);
    assert_true(awq->needs & QL_NEEDS_HESSIAN);
}

static void test_act_specs_and_keys(void **state) {
    (void)state;
    ql_act_mode m;
    float thr;
    char buf[64];
    assert_int_equal(ql_act_spec_parse("llm_int8:4", &m, &thr), QL_OK);
    assert_int_equal(m, QL_ACT_LLM_INT8);
    assert_true(thr == 4.0f);
    ql_act_spec_format(m, thr, buf, sizeof buf);
    assert_string_equal(buf, "llm_int8:4");
    ql_act_spec_format(QL_ACT_LLM_INT8, QL_LLM_INT8_THRESHOLD, buf, sizeof buf);
    assert_string_equal(buf, "llm_int8");
    assert_int_equal(ql_act_spec_parse("fp8_tensor", &m, &thr), QL_OK);
    assert_int_equal(m, QL_ACT_FP8_TENSOR);
    assert_true(thr == 0);
    assert_int_equal(ql_act_spec_parse("int9", &m, &thr), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "unknown activation scheme 'int9'"));
    assert_int_equal(ql_act_spec_parse("int8_token:3", &m, &thr), QL_ERR_ARG);
    assert_int_equal(ql_act_spec_parse("llm_int8:-1", &m, &thr), QL_ERR_ARG);
    assert_int_equal(ql_act_spec_parse("llm_int8:", &m, &thr), QL_ERR_ARG);
    /* every mode through the GGUF keys and back */
    const float absmax[3] = {0.5f, 3.0f, 1.25f};
    ql_gguf *g = ql_gguf_new();
    for (int i = 1; i < QL_ACT_MODE_COUNT; i++) {
        ql_act_quant aq, back;
        char name[32];
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", i);
        assert_int_equal(ql_act_quant_init(&aq, (ql_act_mode)i, absmax, 3, 4.5f), QL_OK);
        ql_act_quant_to_gguf(g, name, &aq);
        bool found = false;
        assert_int_equal(ql_act_quant_from_gguf(g, "x.gguf", name, &back, &found), QL_OK);
        assert_true(found);
        assert_int_equal(back.mode, aq.mode);
        if (ql_act_mode_is_static(aq.mode)) {
            assert_true(back.scale == aq.scale);
            assert_true(back.scale == 3.0f / (aq.mode == QL_ACT_INT8_TENSOR ? 127.0f : 448.0f));
        }
        if (aq.mode == QL_ACT_LLM_INT8) assert_true(back.threshold == 4.5f);
    }
    ql_act_quant none;
    bool found = true;
    assert_int_equal(ql_act_quant_from_gguf(g, "x.gguf", "blk.0.attn_q.weight", &none, &found), QL_OK);
    assert_false(found);
    assert_int_equal(none.mode, QL_ACT_NONE);
    /* malformed settings: one message naming the file */
    ql_gguf_set_str(g, QL_ACT_KEY_MODE "blk.9.ffn_up.weight", "int7_token");
    assert_int_equal(ql_act_quant_from_gguf(g, "bad.gguf", "blk.9.ffn_up.weight", &none, &found), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "bad.gguf"));
    assert_non_null(strstr(ql_last_error(), "int7_token"));
    ql_gguf_set_str(g, QL_ACT_KEY_MODE "blk.9.ffn_up.weight", "int8_tensor"); /* static without a scale */
    assert_int_equal(ql_act_quant_from_gguf(g, "bad.gguf", "blk.9.ffn_up.weight", &none, &found), QL_ERR_FORMAT);
    ql_gguf_set_f32(g, QL_ACT_KEY_SCALE "blk.9.ffn_up.weight", -1.0f);
    assert_int_equal(ql_act_quant_from_gguf(g, "bad.gguf", "blk.9.ffn_up.weight", &none, &found), QL_ERR_FORMAT);
    ql_gguf_set_f32(g, QL_ACT_KEY_SCALE "blk.9.ffn_up.weight", NAN);
    assert_int_equal(ql_act_quant_from_gguf(g, "bad.gguf", "blk.9.ffn_up.weight", &none, &found), QL_ERR_FORMAT);
    ql_gguf_set_f32(g, QL_ACT_KEY_SCALE "blk.9.ffn_up.weight", 0.25f);
    assert_int_equal(ql_act_quant_from_gguf(g, "bad.gguf", "blk.9.ffn_up.weight", &none, &found), QL_OK);
    assert_true(none.scale == 0.25f);
    ql_gguf_free(g);
}

static void test_plan_activations(void **state) {
    (void)state;
    char dir[] = "/tmp/qlab-actplan-XXXXXX", path[64], bad[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/p.ini", dir);
    snprintf(bad, sizeof bad, "%s/bad.ini", dir);
    ql_plan *p = ql_plan_new();
    ql_plan_set(p, "blk.0.attn_q.weight", ql_format_by_name("int8_channel"), "smoothquant", NULL);
    ql_plan_set_act(p, QL_PLAN_ACT_DEFAULT, QL_ACT_INT8_TENSOR, 0);
    ql_plan_set_act(p, "blk.1.ffn_down.weight", QL_ACT_LLM_INT8, 4.0f);
    ql_plan_set_act(p, "output.weight", QL_ACT_NONE, 0);
    p->method_opts = ql_strdup("alpha=0.5");
    assert_true(ql_plan_act_needs_stats(p));
    assert_int_equal(ql_plan_save(p, NULL, path), QL_OK);
    ql_plan *q = NULL;
    assert_int_equal(ql_plan_load(path, &q), QL_OK);
    assert_int_equal(q->n_act, 3);
    assert_string_equal(q->method_opts, "alpha=0.5");
    assert_string_equal(q->e[0].method, "smoothquant");
    const ql_plan_act *a = ql_plan_find_act(q, "blk.1.ffn_down.weight", true);
    assert_non_null(a);
    assert_int_equal(a->mode, QL_ACT_LLM_INT8);
    assert_true(a->threshold == 4.0f);
    a = ql_plan_find_act(q, "blk.3.attn_v.weight", true); /* the default, for block linears only */
    assert_non_null(a);
    assert_int_equal(a->mode, QL_ACT_INT8_TENSOR);
    assert_null(ql_plan_find_act(q, "token_embd.weight", false));
    a = ql_plan_find_act(q, "output.weight", false);
    assert_non_null(a);
    assert_int_equal(a->mode, QL_ACT_NONE);
    ql_plan_free(q);
    ql_plan_free(p);
    FILE *f = fopen(bad, "w");
    assert_non_null(f);
    fputs("[tensors]\nblk.0.attn_q.weight = q8_0\n[activations]\ndefault = int7_token\n", f);
    fclose(f);
    q = NULL;
    assert_int_equal(ql_plan_load(bad, &q), QL_ERR_FORMAT);
    assert_null(q);
    assert_non_null(strstr(ql_last_error(), "bad.ini"));
    assert_non_null(strstr(ql_last_error(), "unknown activation scheme 'int7_token'"));
    unlink(path);
    unlink(bad);
    rmdir(dir);
}

static void test_apply_bounds(void **state) {
    (void)state;
    enum { T = 7, K = 96 };
    float x[T * K], y[T * K];
    uint64_t r = 12345;
    for (int i = 0; i < T * K; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(r >> 11) / 9007199254740992.0 * 4 - 2);
    }
    x[3 * K + 10] = 40.0f; /* one outlier in column 10 */
    x[5 * K + 50] = -7.5f; /* and one in column 50 */
    /* per-token INT8: error <= step/2 with step = row absmax / 127 */
    ql_act_quant aq;
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TOKEN, NULL, 0, 0), QL_OK);
    assert_int_equal(ql_act_quant_apply(&aq, x, y, T, K), 0);
    for (int t = 0; t < T; t++) {
        float amax = 0;
        for (int j = 0; j < K; j++) amax = fmaxf(amax, fabsf(x[t * K + j]));
        for (int j = 0; j < K; j++) assert_true(fabsf(y[t * K + j] - x[t * K + j]) <= amax / 254 * 1.0001f);
    }
    /* per-token FP8: relative error <= 2^-4 for normal values */
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_FP8_TOKEN, NULL, 0, 0), QL_OK);
    ql_act_quant_apply(&aq, x, y, T, K);
    for (int t = 0; t < T; t++) {
        float amax = 0;
        for (int j = 0; j < K; j++) amax = fmaxf(amax, fabsf(x[t * K + j]));
        for (int j = 0; j < K; j++)
            if (fabsf(x[t * K + j]) > amax / 448 * 64)
                assert_true(fabsf(y[t * K + j] - x[t * K + j]) <= fabsf(x[t * K + j]) / 16 * 1.0001f);
    }
    /* static INT8 with a calibrated range of 2: saturates the outlier at 2 */
    float amax_cal[K];
    for (int j = 0; j < K; j++) amax_cal[j] = 2.0f;
    ql_input_stats st = {.n = K, .absmax = amax_cal};
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TENSOR, st.absmax, st.n, 0), QL_OK);
    assert_float_equal(aq.scale, 2.0f / 127, 1e-7);
    ql_act_quant_apply(&aq, x, y, T, K);
    assert_float_equal(y[3 * K + 10], 2.0f, 1e-6);
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_FP8_TENSOR, st.absmax, st.n, 0), QL_OK);
    ql_act_quant_apply(&aq, x, y, T, K);
    assert_float_equal(y[3 * K + 10], 2.0f, 1e-6);
    /* LLM.int8(): columns 10 and 50 exact, the rest INT8 with the row's non-outlier absmax */
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_LLM_INT8, NULL, 0, 0), QL_OK);
    assert_int_equal(ql_act_quant_apply(&aq, x, y, T, K), 2);
    for (int t = 0; t < T; t++) {
        float amax = 0;
        for (int j = 0; j < K; j++)
            if (j != 10 && j != 50) amax = fmaxf(amax, fabsf(x[t * K + j]));
        for (int j = 0; j < K; j++) {
            if (j == 10 || j == 50)
                assert_true(y[t * K + j] == x[t * K + j]);
            else
                assert_true(fabsf(y[t * K + j] - x[t * K + j]) <= amax / 254 * 1.0001f);
        }
    }
    /* a higher threshold sees no outlier column but the 40 */
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_LLM_INT8, NULL, 0, 8.0f), QL_OK);
    assert_int_equal(ql_act_quant_apply(&aq, x, y, T, K), 1);
    /* in place works */
    memcpy(y, x, sizeof x);
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TOKEN, NULL, 0, 0), QL_OK);
    ql_act_quant_apply(&aq, y, y, T, K);
    assert_true(fabsf(y[3 * K + 10] - 40.0f) < 1e-5f);
}

/* ---------------- stories260K ---------------- */

typedef struct {
    ql_model *m;
    int32_t *ids; /* the whole text, BOS first */
    int64_t n_ids;
    int32_t *cal; /* CAL_SEQ x CAL_LEN, from the end of the text (the perplexity uses the start) */
    ql_stats *st;
    double ppl_float;
} fixture;

static fixture g_fx;

static ql_infer *new_infer(void) {
    ql_infer *inf;
    assert_int_equal(ql_infer_new(g_fx.m, 2, &inf), QL_OK);
    return inf;
}

static int setup(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt"))
        return 0;
    if (ql_model_load(model, &g_fx.m)) return -1;
    char *buf;
    size_t len;
    if (ql_read_file(text, &buf, &len)) return -1;
    if (ql_tokenize(g_fx.m->tok, buf, len, true, &g_fx.ids, &g_fx.n_ids)) return -1;
    free(buf);
    if (g_fx.n_ids < PPL_CTX * PPL_CHUNKS + CAL_SEQ * CAL_LEN) return -1;
    g_fx.cal = malloc(sizeof(int32_t) * CAL_SEQ * CAL_LEN);
    memcpy(g_fx.cal, g_fx.ids + g_fx.n_ids - CAL_SEQ * CAL_LEN, sizeof(int32_t) * CAL_SEQ * CAL_LEN);
    for (int i = 0; i < CAL_SEQ; i++) g_fx.cal[i * CAL_LEN] = 1;
    ql_infer *inf;
    if (ql_infer_new(g_fx.m, 2, &inf)) return -1;
    ql_stats_opts so = {.hessian = true, .n_threads = 2};
    ql_status s = ql_stats_collect(inf, g_fx.cal, CAL_SEQ, CAL_LEN, &so, NULL, &g_fx.st);
    ql_infer_free(inf);
    return s ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    ql_stats_free(g_fx.st);
    free(g_fx.cal);
    free(g_fx.ids);
    ql_model_free(g_fx.m);
    memset(&g_fx, 0, sizeof g_fx);
    return 0;
}

#define NEED_MODEL()                                                                                         \
    do {                                                                                                     \
        if (!g_fx.m) skip();                                                                                 \
    } while (0)

static float *logits_of(const ql_infer *inf, int n) {
    const int V = g_fx.m->cfg.n_vocab;
    float *lg = malloc(sizeof(float) * (size_t)n * V);
    ql_scratch *sc = ql_scratch_new(inf, n);
    assert_int_equal(ql_forward(inf, sc, g_fx.ids, n, 0, lg), QL_OK);
    ql_scratch_free(sc);
    return lg;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static double perplexity(const ql_infer *inf) {
    ql_ppl_opts o = {.n_ctx = PPL_CTX, .n_chunks = PPL_CHUNKS, .n_threads = 2};
    ql_ppl_result r;
    assert_int_equal(ql_perplexity(inf, g_fx.ids, g_fx.n_ids, &o, NULL, &r), QL_OK);
    assert_int_equal(r.chunks, PPL_CHUNKS);
    return r.ppl;
}

/* The float model's perplexity, measured by whichever case first needs it: no case may rely on another
 * having run before it (each runs alone: QL_TEST_FILTER=NAME, or last to first: QL_TEST_REVERSE=1). */
static double float_ppl(void) {
    if (g_fx.ppl_float == 0) {
        ql_infer *inf = new_infer();
        g_fx.ppl_float = perplexity(inf);
        ql_infer_free(inf);
    }
    return g_fx.ppl_float;
}

static ql_layer_f32 *load_layers(void) {
    const int nl = g_fx.m->cfg.n_layer;
    ql_layer_f32 *L = calloc((size_t)nl, sizeof *L);
    for (int l = 0; l < nl; l++) assert_int_equal(ql_layer_f32_init(&L[l], g_fx.m, l, 1), QL_OK);
    return L;
}

static void free_layers(ql_layer_f32 *L) {
    for (int l = 0; l < g_fx.m->cfg.n_layer; l++) ql_layer_f32_deinit(&L[l]);
    free(L);
}

/* Round trips every linear of the layers through format f (in place): the preview of a quantized model. */
static void quantize_linears(ql_layer_f32 *L, const ql_format *f) {
    for (int l = 0; l < g_fx.m->cfg.n_layer; l++)
        for (int i = 0; i < QL_LIN_COUNT; i++) {
            int64_t rows = L[l].rows[i], cols = L[l].cols[i];
            void *buf = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
            assert_int_equal(ql_format_quantize(f, L[l].w[i], buf, rows, cols, NULL, 1), QL_OK);
            assert_int_equal(ql_format_dequantize(f, buf, L[l].w[i], rows, cols, 1), QL_OK);
            free(buf);
        }
}

static void swap_all(ql_infer *inf, const ql_layer_f32 *L) {
    for (int l = 0; l < g_fx.m->cfg.n_layer; l++) ql_layer_f32_swap_into(inf, g_fx.m, &L[l]);
}

static void test_smoothquant_equivalent(void **state) {
    (void)state;
    NEED_MODEL();
    const int n = 128, V = g_fx.m->cfg.n_vocab;
    ql_infer *inf = new_infer();
    float *base = logits_of(inf, n);
    ql_layer_f32 *L = load_layers();
    for (int l = 0; l < g_fx.m->cfg.n_layer; l++) {
        ql_transform_report rep;
        assert_int_equal(ql_smoothquant_layer(&L[l], g_fx.st, "alpha=0.5,down=1,vo=1", &rep), QL_OK);
        assert_int_equal(rep.n, 4);
        for (int k = 0; k < rep.n; k++) assert_true(rep.pt[k].smin > 0 && rep.pt[k].smax < 1e6);
        if (l == 0)
            printf("smoothquant blk.0: s in [%.3g, %.3g] (attn_in), [%.3g, %.3g] (ffn_down_in)\n",
                   rep.pt[0].smin, rep.pt[0].smax, rep.pt[3].smin, rep.pt[3].smax);
        assert_non_null(L[l].in_scale[QL_LIN_Q]);
        assert_non_null(L[l].out_scale[QL_LIN_UP]);
    }
    swap_all(inf, L);
    float *after = logits_of(inf, n);
    double d = max_abs_diff(base, after, (size_t)n * V);
    printf("smoothquant (alpha 0.5, all 4 points): max |logit diff| vs float = %.2e\n", d);
    assert_true(d < 1e-3);
    /* bad options are refused */
    assert_int_equal(ql_smoothquant_layer(&L[0], g_fx.st, "alpha=1.5", NULL), QL_ERR_ARG);
    free(base);
    free(after);
    ql_infer_free(inf);
    free_layers(L);
}

/* tr(ΔW H ΔWᵀ) of linear i after the transforms, against the original weights w0 (decoded: L->w[i]
 * already holds the decoded weights, else they are quantized with f here). */
static double linear_loss(const ql_layer_f32 *L, int i, const float *w0, const ql_format *f, bool decoded) {
    const int64_t rows = L->rows[i], cols = L->cols[i];
    char name[64];
    snprintf(name, sizeof name, "%s", ql_layer_linear(g_fx.m, L->layer, i)->name);
    const ql_stat_entry *e = ql_stats_for_tensor(g_fx.st, name);
    assert_non_null(e);
    float *q = malloc(sizeof(float) * (size_t)(rows * cols));
    void *buf = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
    if (decoded) {
        memcpy(q, L->w[i], sizeof(float) * (size_t)(rows * cols));
    } else {
        assert_int_equal(ql_format_quantize(f, L->w[i], buf, rows, cols, NULL, 1), QL_OK);
        assert_int_equal(ql_format_dequantize(f, buf, q, rows, cols, 1), QL_OK);
    }
    double loss = 0;
    double *d = malloc(sizeof(double) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            double v = q[r * cols + c];
            if (L->out_scale[i]) v *= L->out_scale[i][r];
            if (L->in_scale[i]) v /= L->in_scale[i][c];
            d[c] = v - w0[r * cols + c];
        }
        for (int64_t a = 0; a < cols; a++) {
            double acc = 0;
            for (int64_t b = 0; b < cols; b++) acc += e->xtx[a * cols + b] * d[b];
            loss += d[a] * acc;
        }
    }
    free(d);
    free(q);
    free(buf);
    return loss;
}

/* The per-tensor AWQ method (clipping search only, s = 1): L->w[] replaced by what the codes decode to. */
static void awq_per_tensor(ql_layer_f32 *L, const ql_format *f) {
    const ql_method *awq = ql_method_by_name("awq");
    float *deq = NULL;
    for (int i = 0; i < QL_LIN_COUNT; i++) {
        int64_t rows = L->rows[i], cols = L->cols[i];
        void *dst = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
        ql_input_stats view;
        ql_stats_view(ql_stats_for_tensor(g_fx.st, ql_layer_linear(g_fx.m, L->layer, i)->name), &view);
        ql_method_opts mo = {.n_threads = 1};
        assert_int_equal(awq->quantize_tensor(L->w[i], rows, cols, f, &view, &mo, dst), QL_OK);
        /* keep what the stored codes decode to (re-rounding a decoded INTn grid may move it) */
        deq = realloc(deq, sizeof(float) * (size_t)(rows * cols));
        assert_int_equal(ql_format_dequantize(f, dst, deq, rows, cols, 1), QL_OK);
        memcpy(L->w[i], deq, sizeof(float) * (size_t)(rows * cols));
        free(dst);
    }
    free(deq);
}

static void awq_check(const char *fmt_name) {
    const ql_format *f = ql_format_by_name(fmt_name);
    assert_non_null(f);
    const int nl = g_fx.m->cfg.n_layer, n = 128, V = g_fx.m->cfg.n_vocab;
    enum { RTN, SCALES, AWQ, AWQ_QK, CLIP_ONLY, NV };
    static const char *label[NV] = {"rtn", "awq-scales", "awq", "awq clip_qk=1", "clip-only"};
    static const char *opts[NV] = {NULL, "clip=0", NULL, "clip_qk=1", NULL};
    ql_layer_f32 *Ls[NV];
    double tot[NV] = {0};
    for (int v = 0; v < NV; v++) Ls[v] = load_layers();
    for (int l = 0; l < nl; l++) {
        ql_transform_report rep[NV];
        for (int v = SCALES; v <= AWQ_QK; v++) {
            for (int i = 0; i < QL_LIN_COUNT; i++) Ls[v][l].fmt[i] = f;
            assert_int_equal(ql_awq_layer(&Ls[v][l], g_fx.st, opts[v], 2, NULL, &rep[v]), QL_OK);
            assert_int_equal(rep[v].n, 4);
        }
        awq_per_tensor(&Ls[CLIP_ONLY][l], f);
        double loss[NV];
        for (int v = 0; v < NV; v++) {
            loss[v] = 0;
            for (int i = 0; i < QL_LIN_COUNT; i++)
                loss[v] += linear_loss(&Ls[v][l], i, Ls[RTN][l].w[i], f, v == CLIP_ONLY);
            tot[v] += loss[v];
        }
        const ql_transform_report *r = &rep[AWQ];
        printf("awq %-9s blk.%d  tr(dW H dW^T): rtn %.4g  awq-scales %.4g  awq %.4g  awq clip_qk=1 %.4g  "
               "clip-only %.4g"
               "  (alpha attn %.2f%s, o %.2f%s, ffn %.2f%s, down %.2f%s)\n",
               fmt_name, l, loss[RTN], loss[SCALES], loss[AWQ], loss[AWQ_QK], loss[CLIP_ONLY], r->pt[0].alpha,
               r->pt[0].duo ? " duo" : "", r->pt[1].alpha, r->pt[1].duo ? " duo" : "", r->pt[2].alpha,
               r->pt[2].duo ? " duo" : "", r->pt[3].alpha, r->pt[3].duo ? " duo" : "");
        /* the search includes alpha = 0 (plain RTN), so a layer can only improve; a little slack for the
         * v rows rescaled by the v→o step after the q/k/v search */
        assert_true(loss[SCALES] <= loss[RTN] * 1.001);
        assert_true(loss[AWQ] <= loss[SCALES] * 1.001);
        assert_true(loss[AWQ_QK] <= loss[AWQ] * 1.001);
        assert_true(loss[CLIP_ONLY] <= loss[RTN] * 1.0000001);
    }
    printf("awq %-9s all layers: rtn %.4g", fmt_name, tot[RTN]);
    for (int v = SCALES; v < NV; v++)
        printf("  %s %.4g (%+.1f%%)", label[v], tot[v], 100 * (tot[v] / tot[RTN] - 1));
    printf("\n");
    assert_true(tot[SCALES] < tot[RTN] * 0.98);
    assert_true(tot[AWQ] < tot[SCALES]);
    /* the scales alone leave the float model as it was */
    ql_infer *inf = new_infer();
    float *base = logits_of(inf, n);
    swap_all(inf, Ls[SCALES]);
    float *after = logits_of(inf, n);
    double d = max_abs_diff(base, after, (size_t)n * V);
    printf("awq %-9s (clip=0): max |logit diff| vs float = %.2e\n", fmt_name, d);
    assert_true(d < 1e-3);
    ql_infer_free(inf);
    free(base);
    free(after);
    /* perplexity of each quantized model */
    printf("awq %-9s ppl (tinystories-valid, ctx %d, %d chunks): float %.4f", fmt_name, PPL_CTX, PPL_CHUNKS,
           float_ppl());
    double p[NV];
    for (int v = 0; v < NV; v++) {
        if (v != CLIP_ONLY) quantize_linears(Ls[v], f);
        inf = new_infer();
        swap_all(inf, Ls[v]);
        p[v] = perplexity(inf);
        ql_infer_free(inf);
        printf("  %s %.4f", label[v], p[v]);
        free_layers(Ls[v]);
    }
    printf("\n");
    assert_true(p[AWQ] < p[RTN]);
}

static void test_float_ppl(void **state) {
    (void)state;
    NEED_MODEL();
    printf("float ppl (tinystories-valid, ctx %d, %d chunks): %.4f\n", PPL_CTX, PPL_CHUNKS, float_ppl());
    assert_true(g_fx.ppl_float > 1 && isfinite(g_fx.ppl_float));
}

static void test_awq_int4_g128(void **state) {
    (void)state;
    NEED_MODEL();
    awq_check("int4_g128");
}

static void test_awq_int4_g32(void **state) {
    (void)state;
    NEED_MODEL();
    awq_check("int4_g32");
}

static void test_awq_q4_0(void **state) {
    (void)state;
    NEED_MODEL();
    /* any format: ffn_down's 172-wide rows don't fit q4_0's blocks of 32, so AWQ skips that point */
    const ql_format *f = ql_format_by_name("q4_0");
    ql_layer_f32 L;
    assert_int_equal(ql_layer_f32_init(&L, g_fx.m, 2, 1), QL_OK);
    for (int i = 0; i < QL_LIN_COUNT; i++) L.fmt[i] = ql_format_fits(f, L.cols[i]) ? f : NULL;
    ql_transform_report rep;
    assert_int_equal(ql_awq_layer(&L, g_fx.st, NULL, 1, NULL, &rep), QL_OK);
    assert_int_equal(rep.n, 3);
    for (int k = 0; k < rep.n; k++) {
        printf("awq q4_0 blk.2 %-11s rtn %.4g  scales %.4g  +clip %.4g\n", rep.pt[k].point,
               rep.pt[k].loss_rtn, rep.pt[k].loss_scale, rep.pt[k].loss_final);
        assert_true(rep.pt[k].loss_scale <= rep.pt[k].loss_rtn);
        assert_true(rep.pt[k].loss_final <= rep.pt[k].loss_scale * (1 + 1e-9));
    }
    ql_layer_f32_deinit(&L);
}

/* AWQ's searches with the errors on the GPU path (kernels/awq_cuda.h), emulated on the host, against the CPU:
 * every point's chosen α / duo, its losses (to 1e-9 relative: the device sums per row, then over rows) and the
 * scaled, clipped weights of every linear identical; the per-tensor clip search likewise. On a GPU the same
 * with the device (else "SKIP: no CUDA device"). Layers 0 and 2, int4_g32 and q4_0. */
#ifdef QL_HAVE_CUDA
static void awq_where_case(const char *fmt, int where, int layer) {
    const ql_format *f = ql_format_by_name(fmt);
    ql_layer_f32 A, B;
    assert_int_equal(ql_layer_f32_init(&A, g_fx.m, layer, 1), QL_OK);
    assert_int_equal(ql_layer_f32_init(&B, g_fx.m, layer, 1), QL_OK);
    for (int i = 0; i < QL_LIN_COUNT; i++) A.fmt[i] = B.fmt[i] = ql_format_fits(f, A.cols[i]) ? f : NULL;
    ql_transform_report ra, rb;
    ql_awq_set_where(QL_AWQ_CPU);
    assert_int_equal(ql_awq_layer(&A, g_fx.st, NULL, 2, NULL, &ra), QL_OK);
    ql_awq_set_where(where);
    ql_status s = ql_awq_layer(&B, g_fx.st, NULL, 2, NULL, &rb);
    ql_awq_set_where(QL_AWQ_AUTO);
    if (s) fail_msg("awq %s: %s", fmt, ql_last_error());
    assert_int_equal(ra.n, rb.n);
    for (int k = 0; k < ra.n; k++) {
        printf("awq %-8s blk.%d %-11s %s alpha %.2f duo %d  losses %.9g %.9g %.9g vs cpu alpha %.2f duo %d  %.9g %.9g "
               "%.9g\n",
               fmt, layer, rb.pt[k].point, where == QL_AWQ_CUDA ? "cuda" : "host", rb.pt[k].alpha, rb.pt[k].duo,
               rb.pt[k].loss_rtn, rb.pt[k].loss_scale, rb.pt[k].loss_final, ra.pt[k].alpha, ra.pt[k].duo,
               ra.pt[k].loss_rtn, ra.pt[k].loss_scale, ra.pt[k].loss_final);
        assert_string_equal(ra.pt[k].point, rb.pt[k].point);
        assert_float_equal(ra.pt[k].alpha, rb.pt[k].alpha, 0.0);
        assert_int_equal(ra.pt[k].duo, rb.pt[k].duo);
        assert_float_equal(rb.pt[k].loss_rtn, ra.pt[k].loss_rtn, 1e-9 * ra.pt[k].loss_rtn);
        assert_float_equal(rb.pt[k].loss_scale, ra.pt[k].loss_scale, 1e-9 * ra.pt[k].loss_scale);
        assert_float_equal(rb.pt[k].loss_final, ra.pt[k].loss_final, 1e-9 * ra.pt[k].loss_final);
    }
    for (int i = 0; i < QL_LIN_COUNT; i++)
        assert_memory_equal(A.w[i], B.w[i], sizeof(float) * (size_t)(A.rows[i] * A.cols[i]));
    /* the per-tensor method (clip search, s = 1) on attn_q */
    const ql_method *awq = ql_method_by_name("awq");
    ql_input_stats view;
    ql_stats_view(ql_stats_for_tensor(g_fx.st, ql_layer_linear(g_fx.m, layer, QL_LIN_Q)->name), &view);
    const int64_t rows = A.rows[QL_LIN_Q], cols = A.cols[QL_LIN_Q], bytes = ql_format_tensor_bytes(f, cols, rows);
    uint8_t *da = malloc((size_t)bytes), *db = malloc((size_t)bytes);
    assert_true(da && db);
    ql_method_opts mo = {.n_threads = 1};
    ql_awq_set_where(QL_AWQ_CPU);
    assert_int_equal(awq->quantize_tensor(A.w[QL_LIN_Q], rows, cols, f, &view, &mo, da), QL_OK);
    ql_awq_set_where(where);
    assert_int_equal(awq->quantize_tensor(B.w[QL_LIN_Q], rows, cols, f, &view, &mo, db), QL_OK);
    ql_awq_set_where(QL_AWQ_AUTO);
    assert_memory_equal(da, db, (size_t)bytes);
    free(da), free(db);
    ql_layer_f32_deinit(&A);
    ql_layer_f32_deinit(&B);
}
#endif

static void test_awq_device_emulated(void **state) {
    (void)state;
    NEED_MODEL();
#ifdef QL_HAVE_CUDA
    awq_where_case("int4_g32", QL_AWQ_CUDA_EMULATED, 0);
    awq_where_case("q4_0", QL_AWQ_CUDA_EMULATED, 2);
    if (!ql_cuda_available()) {
        printf("SKIP: no CUDA device (the emulation above ran)\n");
        return;
    }
    awq_where_case("int4_g32", QL_AWQ_CUDA, 0);
    awq_where_case("q4_0", QL_AWQ_CUDA, 2);
#else
    printf("SKIP: built without CUDA\n");
    skip();
#endif
}

/* W8A8 perplexity: weights fmt on every decoder linear, activations `mode`, optional SmoothQuant first. */
static double w8a8_ppl(const char *fmt, ql_act_mode mode, const char *sq_opts) {
    ql_layer_f32 *L = load_layers();
    ql_stats *st = g_fx.st, *st2 = NULL;
    if (sq_opts) {
        for (int l = 0; l < g_fx.m->cfg.n_layer; l++)
            assert_int_equal(ql_smoothquant_layer(&L[l], g_fx.st, sq_opts, NULL), QL_OK);
        if (ql_act_mode_is_static(mode)) {
            /* static scales must come from the smoothed activations: re-collect on the smoothed model */
            ql_infer *inf = new_infer();
            swap_all(inf, L);
            ql_stats_opts so = {.n_threads = 2};
            assert_int_equal(ql_stats_collect(inf, g_fx.cal, CAL_SEQ, CAL_LEN, &so, NULL, &st2), QL_OK);
            st = st2;
            ql_infer_free(inf);
        }
    }
    if (fmt) quantize_linears(L, ql_format_by_name(fmt));
    ql_infer *inf = new_infer();
    swap_all(inf, L);
    assert_int_equal(ql_infer_set_act_quant_all(inf, st, mode, 0, false), QL_OK);
    double p = perplexity(inf);
    ql_infer_free(inf);
    ql_stats_free(st2);
    free_layers(L);
    return p;
}

static void test_w8a8(void **state) {
    (void)state;
    NEED_MODEL();
    const double f = float_ppl();
    const double sq_dyn = w8a8_ppl("int8_channel", QL_ACT_INT8_TOKEN, "");
    const double sq05_dyn = w8a8_ppl("int8_channel", QL_ACT_INT8_TOKEN, "alpha=0.5");
    const double dyn = w8a8_ppl("int8_channel", QL_ACT_INT8_TOKEN, NULL);
    const double stat = w8a8_ppl("int8_channel", QL_ACT_INT8_TENSOR, NULL);
    const double sq_stat = w8a8_ppl("int8_channel", QL_ACT_INT8_TENSOR, "");
    const double sqd_stat = w8a8_ppl("int8_channel", QL_ACT_INT8_TENSOR, "down=1");
    const double w8 = w8a8_ppl("int8_channel", QL_ACT_NONE, NULL);
    const double a8 = w8a8_ppl(NULL, QL_ACT_INT8_TOKEN, NULL);
    const double fp8_w = w8a8_ppl("fp8_e4m3_channel", QL_ACT_NONE, NULL);
    const double fp8_a = w8a8_ppl(NULL, QL_ACT_FP8_TOKEN, NULL);
    const double fp8_dyn = w8a8_ppl("fp8_e4m3_channel", QL_ACT_FP8_TOKEN, NULL);
    const double fp8_stat = w8a8_ppl("fp8_e4m3", QL_ACT_FP8_TENSOR, NULL);
    const double llm = w8a8_ppl("int8_channel", QL_ACT_LLM_INT8, NULL);
#define ROW(name, v) printf("  %-56s %.4f  (%+.2f%%)\n", name, v, 100 * ((v) / f - 1))
    printf("W8A8 on stories260K, tinystories-valid ctx %d, %d chunks (perplexity, change vs float):\n",
           PPL_CTX, PPL_CHUNKS);
    ROW("float", f);
    ROW("INT8 weights only (int8_channel)", w8);
    ROW("INT8 activations only (per token)", a8);
    ROW("W8A8-INT8 per-token dynamic, no smoothing", dyn);
    ROW("W8A8-INT8 per-token dynamic, SmoothQuant (alpha 0.85)", sq_dyn);
    ROW("W8A8-INT8 per-token dynamic, SmoothQuant alpha=0.5", sq05_dyn);
    ROW("W8A8-INT8 per-tensor static, no smoothing", stat);
    ROW("W8A8-INT8 per-tensor static, SmoothQuant (alpha 0.85)", sq_stat);
    ROW("W8A8-INT8 per-tensor static, SmoothQuant down=1", sqd_stat);
    ROW("FP8 weights only (fp8_e4m3_channel)", fp8_w);
    ROW("FP8 activations only (per token)", fp8_a);
    ROW("W8A8-FP8 per-token dynamic (fp8_e4m3_channel)", fp8_dyn);
    ROW("W8A8-FP8 per-tensor static (fp8_e4m3)", fp8_stat);
    ROW("LLM.int8() (int8_channel, threshold 6)", llm);
#undef ROW
    int64_t n_out = 0, n_ch = 0;
    for (int i = 0; i < g_fx.st->n; i++)
        for (int64_t j = 0; j < g_fx.st->e[i].n; j++, n_ch++)
            n_out += g_fx.st->e[i].absmax[j] > QL_LLM_INT8_THRESHOLD;
    printf("  input channels with calibration max|x| > 6 (LLM.int8() outliers): %lld of %lld\n",
           (long long)n_out, (long long)n_ch);
    assert_true(fabs(sq_dyn / f - 1) < 0.01);
    /* per-tensor static activations without smoothing are clearly worse than SmoothQuant + per token */
    assert_true(stat > sq_dyn * 1.005);
    assert_true(sqd_stat < stat);
    assert_true(fabs(llm / f - 1) < 0.01);
    assert_true(fabs(fp8_dyn / f - 1) < 0.02);
}

/* A plan's activation schemes through qlab quant's driver: the file carries them (its size is the one
 * ql_quantize_file_bytes predicts, keys included), ql_infer_set_act_quant_from_file applies them, and the logits
 * equal setting the same schemes by hand with the same statistics, bit for bit. Re-quantizing the file with a
 * plan without activations drops the keys. */
static void test_plan_act_file(void **state) {
    (void)state;
    if (!g_fx.m) {
        puts("SKIP: shared folder missing");
        skip();
    }
    const ql_model *m = g_fx.m;
    char dir[] = "/tmp/qlab-actfile-XXXXXX", out[64], out2[64];
    assert_non_null(mkdtemp(dir));
    snprintf(out, sizeof out, "%s/a.gguf", dir);
    snprintf(out2, sizeof out2, "%s/b.gguf", dir);
    ql_plan *p = ql_plan_new();
    ql_plan_set(p, "blk.0.attn_q.weight", ql_format_by_name("q8_0"), "rtn", NULL);
    ql_plan_set_act(p, QL_PLAN_ACT_DEFAULT, QL_ACT_INT8_TENSOR, 0);
    ql_plan_set_act(p, "blk.1.ffn_down.weight", QL_ACT_LLM_INT8, 4.0f);
    ql_plan_set_act(p, "output.weight", QL_ACT_FP8_TOKEN, 0);
    ql_quant_opts qo = {.plan = p, .stats = g_fx.st, .n_threads = 2};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m, &qo, out, NULL, &qs), QL_OK);
    int64_t *tb = calloc((size_t)m->gguf->n_tensors, sizeof *tb);
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const ql_gguf_tensor *t = &m->gguf->tensors[i];
        const ql_plan_entry *e = ql_plan_find(p, t->name);
        tb[i] = e ? ql_format_tensor_bytes(e->format, t->ne[0], t->ne[1]) : (int64_t)t->nbytes;
    }
    struct stat sb;
    assert_int_equal(stat(out, &sb), 0);
    assert_int_equal((int64_t)sb.st_size, ql_quantize_file_bytes(m, tb, p));
    assert_true(ql_quantize_file_bytes(m, tb, p) > ql_quantize_file_bytes(m, tb, NULL));
    /* the file's schemes vs the same by hand on the same weights */
    ql_model *q = NULL;
    assert_int_equal(ql_model_load(out, &q), QL_OK);
    ql_infer *a = NULL, *b = NULL;
    assert_int_equal(ql_infer_new(q, 1, &a), QL_OK);
    assert_int_equal(ql_infer_new(q, 1, &b), QL_OK);
    int n_set = 0, counts[QL_ACT_MODE_COUNT];
    assert_int_equal(ql_infer_set_act_quant_from_file(a, &n_set, counts), QL_OK);
    assert_int_equal(n_set, q->cfg.n_layer * QL_LIN_COUNT + 1);
    assert_int_equal(counts[QL_ACT_LLM_INT8], 1);
    assert_int_equal(counts[QL_ACT_FP8_TOKEN], 1);
    assert_int_equal(counts[QL_ACT_INT8_TENSOR], n_set - 2);
    assert_int_equal(ql_infer_set_act_quant_all(b, g_fx.st, QL_ACT_INT8_TENSOR, 0, false), QL_OK);
    ql_act_quant aq;
    ql_act_quant_init(&aq, QL_ACT_LLM_INT8, NULL, 0, 4.0f);
    assert_true(ql_infer_set_act_quant(b, ql_layer_linear(q, 1, QL_LIN_DOWN), &aq));
    ql_act_quant_init(&aq, QL_ACT_FP8_TOKEN, NULL, 0, 0);
    assert_true(ql_infer_set_act_quant(b, q->output, &aq));
    enum { N = 48 };
    const int V = q->cfg.n_vocab;
    float *la = malloc(sizeof(float) * N * V), *lb = malloc(sizeof(float) * N * V), *l0 = malloc(sizeof(float) * N * V);
    ql_scratch *sa = ql_scratch_new(a, N), *sb2 = ql_scratch_new(b, N);
    assert_int_equal(ql_forward(a, sa, g_fx.ids, N, 0, la), QL_OK);
    assert_int_equal(ql_forward(b, sb2, g_fx.ids, N, 0, lb), QL_OK);
    assert_memory_equal(la, lb, sizeof(float) * N * V);
    ql_infer_set_act_quant_all(b, NULL, QL_ACT_NONE, 0, true);
    assert_int_equal(ql_forward(b, sb2, g_fx.ids, N, 0, l0), QL_OK);
    assert_memory_not_equal(la, l0, sizeof(float) * N * V); /* the schemes did something */
    ql_scratch_free(sa);
    ql_scratch_free(sb2);
    ql_infer_free(a);
    ql_infer_free(b);
    free(la), free(lb), free(l0);
    /* a plan without activations: the source's keys are not carried over */
    ql_plan *p2 = ql_plan_new();
    ql_plan_set(p2, "blk.0.attn_k.weight", ql_format_by_name("q8_0"), "rtn", NULL);
    ql_quant_opts qo2 = {.plan = p2, .n_threads = 2};
    assert_int_equal(ql_quantize_model(q, &qo2, out2, NULL, &qs), QL_OK);
    ql_model *q2 = NULL;
    assert_int_equal(ql_model_load(out2, &q2), QL_OK);
    for (int64_t k = 0; k < q2->gguf->n_kv; k++) assert_true(strncmp(q2->gguf->kv[k].key, "qlab.act.", 9) != 0);
    assert_int_equal(stat(out2, &sb), 0);
    for (int64_t i = 0; i < q->gguf->n_tensors; i++) {
        const ql_plan_entry *e = ql_plan_find(p2, q->gguf->tensors[i].name);
        tb[i] = e ? ql_format_tensor_bytes(e->format, q->gguf->tensors[i].ne[0], q->gguf->tensors[i].ne[1])
                  : (int64_t)q->gguf->tensors[i].nbytes;
    }
    assert_int_equal((int64_t)sb.st_size, ql_quantize_file_bytes(q, tb, p2));
    ql_model_free(q2);
    ql_model_free(q);
    ql_plan_free(p2);
    ql_plan_free(p);
    free(tb);
    unlink(out);
    unlink(out2);
    rmdir(dir);
}

/* Scale migration over fused projections (Phi-3: attn_qkv, ffn_up = gate+up): SmoothQuant into f32 keeps the
 * float model (logits within float rounding of the original's) while it did move scales (the norms and the fused
 * rows changed), and AWQ into int8_channel runs through the same write-back. */
static void test_fused_transforms(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "testdata/arch-variants/phi3.gguf")) skip();
    ql_model *m = NULL;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    assert_non_null(m->layers[0].wqkv);
    assert_non_null(m->layers[0].w_gate_up);
    enum { T = 32, NSEQ = 4 };
    int32_t ids[T * NSEQ];
    for (int i = 0; i < T * NSEQ; i++) ids[i] = 1 + (i * 37 + i / 7) % (m->cfg.n_vocab - 1);
    ql_infer *inf = NULL;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    ql_stats *st = NULL;
    ql_stats_opts so = {.hessian = true, .n_threads = 1};
    assert_int_equal(ql_stats_collect(inf, ids, NSEQ, T, &so, NULL, &st), QL_OK);
    char dir[] = "/tmp/qlab-fused-XXXXXX", out[64];
    assert_non_null(mkdtemp(dir));
    snprintf(out, sizeof out, "%s/sq.gguf", dir);
    const char *methods[2] = {"smoothquant", "awq"}, *formats[2] = {"f32", "int8_channel"};
    for (int k = 0; k < 2; k++) {
        ql_plan *p = ql_plan_new();
        for (int l = 0; l < m->cfg.n_layer; l++) {
            const ql_gguf_tensor *ts[QL_ROLE_COUNT];
            const int n = ql_model_layer_linears(m, l, ts, NULL);
            for (int i = 0; i < n; i++) ql_plan_set(p, ts[i]->name, ql_format_by_name(formats[k]), methods[k], NULL);
        }
        ql_quant_opts qo = {.plan = p, .stats = st, .n_threads = 1};
        ql_quant_stats qs;
        assert_int_equal(ql_quantize_model(m, &qo, out, NULL, &qs), QL_OK);
        ql_plan_free(p);
        if (k == 1) break;
        ql_model *q = NULL;
        assert_int_equal(ql_model_load(out, &q), QL_OK);
        const ql_gguf_tensor *an = &q->gguf->tensors[ql_gguf_find_tensor(q->gguf, "blk.0.attn_norm.weight")];
        const ql_gguf_tensor *qkv = &q->gguf->tensors[ql_gguf_find_tensor(q->gguf, m->layers[0].wqkv->name)];
        assert_memory_not_equal(an->data, m->layers[0].attn_norm->data, an->nbytes);
        assert_memory_not_equal(qkv->data, m->layers[0].wqkv->data, qkv->nbytes);
        ql_infer *qi = NULL;
        assert_int_equal(ql_infer_new(q, 1, &qi), QL_OK);
        const int V = m->cfg.n_vocab;
        float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
        ql_scratch *sa = ql_scratch_new(inf, T), *sb = ql_scratch_new(qi, T);
        assert_int_equal(ql_forward(inf, sa, ids, T, 0, a), QL_OK);
        assert_int_equal(ql_forward(qi, sb, ids, T, 0, b), QL_OK);
        double worst = 0, scale = 0;
        for (int i = 0; i < T * V; i++) {
            worst = fmax(worst, fabs((double)a[i] - b[i]));
            scale = fmax(scale, fabs((double)a[i]));
        }
        printf("phi3 smoothquant into f32: logits within %.3g of the original's (max |logit| %.3g)\n", worst, scale);
        assert_true(worst <= 1e-4 * scale);
        ql_scratch_free(sa);
        ql_scratch_free(sb);
        ql_infer_free(qi);
        ql_model_free(q);
        free(a);
        free(b);
    }
    unlink(out);
    rmdir(dir);
    ql_stats_free(st);
    ql_infer_free(inf);
    ql_model_free(m);
}

int main(void) {
    struct CMUnitTest unit[] = {
        cmocka_unit_test(test_modes_and_recipes),
        cmocka_unit_test(test_apply_bounds),
        cmocka_unit_test(test_act_specs_and_keys),
        cmocka_unit_test(test_plan_activations),
    };
    struct CMUnitTest model[] = {
        cmocka_unit_test(test_float_ppl),     cmocka_unit_test(test_smoothquant_equivalent),
        cmocka_unit_test(test_awq_int4_g128), cmocka_unit_test(test_awq_int4_g32),
        cmocka_unit_test(test_awq_q4_0),      cmocka_unit_test(test_awq_device_emulated),
        cmocka_unit_test(test_w8a8),
        cmocka_unit_test(test_plan_act_file),
        cmocka_unit_test(test_fused_transforms),
    };
    ql_test_order_from_env(unit, sizeof unit / sizeof *unit);
    ql_test_order_from_env(model, sizeof model / sizeof *model);
    int fails = cmocka_run_group_tests_name("actquant", unit, NULL, NULL);
    fails += cmocka_run_group_tests_name("awq_sq_stories260K", model, setup, teardown);
    return fails;
}
