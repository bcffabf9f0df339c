/* test_train.c — the backward pass (core/train.h): every op's gradient against central finite differences in
 * double (relative error below 1e-4), the whole model's gradient on tiny random models (tied and separate
 * output, q/k/v biases, adjacent and NeoX rope, GQA, cross-entropy and KL losses), gradient accumulation,
 * AdamW's schedule and clipping, the training forward's logits against core/infer.c's on stories260K, per-layer
 * recompute giving bit-identical gradients, and fake-quantized activations / KV against core/infer.c's. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/infer.h"
#include "core/model.h"
#include "core/train.h"
#include "core/synth.h"
#include "tests/test_util.h"

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static double rnd(void) { /* [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}
static double *rvec(size_t n, double scale) {
    double *v = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) v[i] = scale * rnd();
    return v;
}

/* ‖a − n‖ / ‖n‖: the analytic gradient a against the numeric n */
static double rel_err(const double *a, const double *n, size_t len) {
    double d = 0, s = 0;
    for (size_t i = 0; i < len; i++) {
        d += (a[i] - n[i]) * (a[i] - n[i]);
        s += n[i] * n[i];
    }
    return sqrt(d) / (sqrt(s) > 1e-300 ? sqrt(s) : 1e-300);
}

/* An op under test: f = Σ cot · op(inputs), evaluated after the caller perturbs one input in place. */
typedef double (*scalar_fn)(void *ctx);

/* numeric ∂f/∂x_i for every element of x (perturbed in place and restored) */
static void numeric_grad(scalar_fn f, void *ctx, double *x, size_t n, double *out) {
    const double h = 1e-5;
    for (size_t i = 0; i < n; i++) {
        const double x0 = x[i];
        x[i] = x0 + h;
        double fp = f(ctx);
        x[i] = x0 - h;
        double fm = f(ctx);
        x[i] = x0;
        out[i] = (fp - fm) / (2 * h);
    }
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- linear ---- */
typedef struct { int T, K, N; double *x, *W, *b, *cot, *y; } lin_ctx;
static double lin_f(void *p) {
    lin_ctx *c = p;
    ql_tr_linear_fwd(c->y, c->x, c->W, c->b, c->T, c->K, c->N, 0.0);
    return dot(c->y, c->cot, (size_t)c->T * c->N);
}
static void test_grad_linear(void **state) {
    (void)state;
    lin_ctx c = {.T = 5, .K = 7, .N = 6};
    c.x = rvec(35, 1), c.W = rvec(42, 1), c.b = rvec(6, 1), c.cot = rvec(30, 1), c.y = rvec(30, 1);
    double dx[35], dW[42] = {0}, db[6] = {0}, nx[35], nW[42], nb[6];
    ql_tr_linear_bwd(dx, 0.0, dW, db, c.cot, c.x, c.W, c.T, c.K, c.N);
    numeric_grad(lin_f, &c, c.x, 35, nx);
    numeric_grad(lin_f, &c, c.W, 42, nW);
    numeric_grad(lin_f, &c, c.b, 6, nb);
    assert_true(rel_err(dx, nx, 35) < 1e-4);
    assert_true(rel_err(dW, nW, 42) < 1e-4);
    assert_true(rel_err(db, nb, 6) < 1e-4);
    /* dx_beta 1 accumulates: the same gradient on top of what was there */
    double acc[35];
    for (int i = 0; i < 35; i++) acc[i] = 1.0;
    ql_tr_linear_bwd(acc, 1.0, NULL, NULL, c.cot, c.x, c.W, c.T, c.K, c.N);
    for (int i = 0; i < 35; i++) assert_true(fabs(acc[i] - 1.0 - dx[i]) < 1e-12);
    free(c.x), free(c.W), free(c.b), free(c.cot), free(c.y);
}

/* ---- RMSNorm ---- */
typedef struct { int T, D; double *x, *w, *cot, *y, *r; } rms_ctx;
static double rms_f(void *p) {
    rms_ctx *c = p;
    ql_tr_rmsnorm_fwd(c->y, c->r, c->x, c->w, c->T, c->D, 1e-5);
    return dot(c->y, c->cot, (size_t)c->T * c->D);
}
static void test_grad_rmsnorm(void **state) {
    (void)state;
    rms_ctx c = {.T = 4, .D = 9};
    c.x = rvec(36, 2), c.w = rvec(9, 1), c.cot = rvec(36, 1), c.y = rvec(36, 1), c.r = rvec(4, 1);
    double dx[36] = {0}, dw[9] = {0}, nx[36], nw[9];
    rms_f(&c);
    ql_tr_rmsnorm_bwd(dx, dw, c.cot, c.x, c.r, c.w, c.T, c.D);
    numeric_grad(rms_f, &c, c.x, 36, nx);
    numeric_grad(rms_f, &c, c.w, 9, nw);
    assert_true(rel_err(dx, nx, 36) < 1e-4);
    assert_true(rel_err(dw, nw, 9) < 1e-4);
    free(c.x), free(c.w), free(c.cot), free(c.y), free(c.r);
}

/* ---- RoPE, attention, SwiGLU ---- */
static ql_config small_cfg(int neox, int n_head, int n_head_kv) {
    ql_config c = {.n_layer = 2, .n_embd = 8, .n_head = n_head, .n_head_kv = n_head_kv, .n_ff = 12, .n_vocab = 11,
                   .n_ctx_train = 16, .rope_base = 10000.0f, .rope_scale = 1.0f, .rope_neox = neox, .norm_eps = 1e-5f};
    c.head_dim = c.n_embd / c.n_head;
    c.rope_dim = c.head_dim;
    return c;
}

typedef struct { const ql_train_model *tm; int T, H; double *x, *tmp, *cot; } rope_ctx;
static double rope_f(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->T * c->H * c->tm->cfg.head_dim;
    memcpy(c->tmp, c->x, n * sizeof(double));
    ql_tr_rope(c->tm, c->tmp, c->T, c->H, false);
    return dot(c->tmp, c->cot, n);
}
static void test_grad_rope(void **state) {
    (void)state;
    for (int neox = 0; neox <= 1; neox++) {
        ql_config cfg = small_cfg(neox, 2, 1);
        ql_train_model *tm = ql_train_model_random(&cfg, false, 1, 0.3);
        rope_ctx c = {.tm = tm, .T = 6, .H = 2};
        size_t n = 6 * 2 * cfg.head_dim;
        c.x = rvec(n, 1), c.tmp = rvec(n, 1), c.cot = rvec(n, 1);
        double *a = malloc(n * sizeof(double)), *num = malloc(n * sizeof(double));
        memcpy(a, c.cot, n * sizeof(double));
        ql_tr_rope(tm, a, c.T, c.H, true);
        numeric_grad(rope_f, &c, c.x, n, num);
        assert_true(rel_err(a, num, n) < 1e-4);
        free(a), free(num), free(c.x), free(c.tmp), free(c.cot);
        ql_train_model_free(tm);
    }
}

typedef struct { const ql_config *cfg; int T; double *q, *k, *v, *cot, *out, *P; } att_ctx;
static double att_f(void *p) {
    att_ctx *c = p;
    ql_tr_attention_fwd(c->cfg, c->out, c->P, c->q, c->k, c->v, c->T);
    return dot(c->out, c->cot, (size_t)c->T * c->cfg->n_head * c->cfg->head_dim);
}
static void test_grad_attention(void **state) {
    (void)state;
    const int heads[][2] = {{2, 2}, {4, 2}, {4, 1}}; /* MHA, GQA, MQA */
    for (size_t hcase = 0; hcase < 3; hcase++) {
        ql_config cfg = small_cfg(0, heads[hcase][0], heads[hcase][1]);
        const int T = 7;
        size_t nq = (size_t)T * cfg.n_head * cfg.head_dim, nkv = (size_t)T * cfg.n_head_kv * cfg.head_dim;
        att_ctx c = {.cfg = &cfg, .T = T};
        c.q = rvec(nq, 1.5), c.k = rvec(nkv, 1.5), c.v = rvec(nkv, 1), c.cot = rvec(nq, 1), c.out = rvec(nq, 1);
        c.P = rvec((size_t)cfg.n_head * T * T, 1);
        double *dq = malloc(nq * 8), *dk = malloc(nkv * 8), *dv = malloc(nkv * 8), *dP = malloc((size_t)T * T * 8);
        double *nq_ = malloc(nq * 8), *nk = malloc(nkv * 8), *nv = malloc(nkv * 8);
        att_f(&c);
        ql_tr_attention_bwd(&cfg, dq, dk, dv, dP, c.cot, c.P, c.q, c.k, c.v, T);
        numeric_grad(att_f, &c, c.q, nq, nq_);
        numeric_grad(att_f, &c, c.k, nkv, nk);
        numeric_grad(att_f, &c, c.v, nkv, nv);
        assert_true(rel_err(dq, nq_, nq) < 1e-4);
        assert_true(rel_err(dk, nk, nkv) < 1e-4);
        assert_true(rel_err(dv, nv, nkv) < 1e-4);
        /* the mask: the first position's output depends on the first key and value only */
        const size_t row = (size_t)cfg.n_head * cfg.head_dim, kvrow = (size_t)cfg.n_head_kv * cfg.head_dim;
        for (size_t j = row; j < nq; j++) c.cot[j] = 0;
        ql_tr_attention_bwd(&cfg, dq, dk, dv, dP, c.cot, c.P, c.q, c.k, c.v, T);
        double first = 0;
        for (size_t j = 0; j < kvrow; j++) first += fabs(dv[j]);
        assert_true(first > 0);
        for (size_t j = kvrow; j < nkv; j++) assert_true(dk[j] == 0 && dv[j] == 0);
        free(dq), free(dk), free(dv), free(dP), free(nq_), free(nk), free(nv);
        free(c.q), free(c.k), free(c.v), free(c.cot), free(c.out), free(c.P);
    }
}

typedef struct { size_t n; double *g, *u, *h, *cot; } swi_ctx;
static double swi_f(void *p) {
    swi_ctx *c = p;
    ql_tr_swiglu_fwd(c->h, c->g, c->u, c->n);
    return dot(c->h, c->cot, c->n);
}
static void test_grad_swiglu(void **state) {
    (void)state;
    swi_ctx c = {.n = 40};
    c.g = rvec(40, 4), c.u = rvec(40, 2), c.h = rvec(40, 1), c.cot = rvec(40, 1);
    double dg[40], du[40], ng[40], nu[40];
    ql_tr_swiglu_bwd(dg, du, c.cot, c.g, c.u, 40);
    numeric_grad(swi_f, &c, c.g, 40, ng);
    numeric_grad(swi_f, &c, c.u, 40, nu);
    assert_true(rel_err(dg, ng, 40) < 1e-4);
    assert_true(rel_err(du, nu, 40) < 1e-4);
    free(c.g), free(c.u), free(c.h), free(c.cot);
}

/* ---- the whole model ---- */
typedef struct {
    ql_train_model *tm;
    ql_train_acts *a;
    const int32_t *tok;
    int T, score_from;
    const float *teacher;
    double ce_w, kl_w;
} model_ctx;
static double model_f(void *p) {
    model_ctx *c = p;
    assert_int_equal(ql_train_forward(c->tm, c->a, c->tok, c->T, NULL), QL_OK);
    return ql_train_loss(c->tm, c->a, c->tok, c->T, c->score_from, c->teacher, c->ce_w, c->kl_w, NULL, NULL);
}

static void check_model(bool tied, bool bias, int neox, int n_head, int n_head_kv, double ce_w, double kl_w) {
    ql_config cfg = small_cfg(neox, n_head, n_head_kv);
    cfg.tied_output = tied;
    ql_train_model *tm = ql_train_model_random(&cfg, bias, 7 + (uint64_t)tied * 2 + (uint64_t)bias, 0.4);
    const int T = 6;
    int32_t tok[6] = {1, 5, 3, 10, 0, 5};
    float teacher[6 * 11];
    for (int i = 0; i < 6 * 11; i++) teacher[i] = (float)(2 * rnd());
    model_ctx c = {.tm = tm, .a = ql_train_acts_new(&cfg, T), .tok = tok, .T = T, .score_from = 1,
                   .teacher = teacher, .ce_w = ce_w, .kl_w = kl_w};
    model_f(&c);
    ql_train_zero_grad(tm);
    assert_int_equal(ql_train_backward(tm, c.a, tok, T), QL_OK);
    double *num = malloc((size_t)tm->n_weights * sizeof(double));
    numeric_grad(model_f, &c, tm->w_all, (size_t)tm->n_weights, num);
    /* every tensor on its own, so a small one's error is not hidden by a large one's */
    for (int i = 0; i < tm->n_params; i++) {
        const ql_train_param *p = &tm->p[i];
        const size_t off = (size_t)(p->w - tm->w_all), n = (size_t)p->rows * p->cols;
        double e = rel_err(p->g, num + off, n);
        if (!(e < 1e-4)) fail_msg("tied=%d bias=%d neox=%d heads=%d/%d: %s gradient off by %g", tied, bias, neox,
                                  n_head, n_head_kv, p->name, e);
    }
    free(num);
    ql_train_acts_free(c.a);
    ql_train_model_free(tm);
}

static void test_grad_model(void **state) {
    (void)state;
    check_model(false, false, 0, 2, 1, 1.0, 0.0); /* separate output, GQA, cross-entropy */
    check_model(true, true, 0, 2, 2, 0.0, 1.0);   /* tied output, biases, KL to a teacher */
    check_model(false, true, 1, 4, 2, 0.5, 0.5);  /* NeoX rope, both losses */
}

/* Accumulation: backward adds into the gradients, so two calls give the sum of two separate ones. */
static void test_grad_accumulates(void **state) {
    (void)state;
    ql_config cfg = small_cfg(0, 2, 1);
    ql_train_model *tm = ql_train_model_random(&cfg, false, 3, 0.4);
    ql_train_acts *a = ql_train_acts_new(&cfg, 5);
    int32_t s1[5] = {1, 2, 3, 4, 5}, s2[5] = {9, 8, 7, 6, 5};
    double *g1 = malloc((size_t)tm->n_weights * 8), *g2 = malloc((size_t)tm->n_weights * 8);
    const int32_t *seqs[2] = {s1, s2};
    double *outs[2] = {g1, g2};
    for (int k = 0; k < 2; k++) {
        ql_train_zero_grad(tm);
        ql_train_forward(tm, a, seqs[k], 5, NULL);
        ql_train_loss(tm, a, seqs[k], 5, 0, NULL, 1.0, 0.0, NULL, NULL);
        ql_train_backward(tm, a, seqs[k], 5);
        memcpy(outs[k], tm->g_all, (size_t)tm->n_weights * 8);
    }
    ql_train_zero_grad(tm);
    for (int k = 0; k < 2; k++) {
        ql_train_forward(tm, a, seqs[k], 5, NULL);
        ql_train_loss(tm, a, seqs[k], 5, 0, NULL, 1.0, 0.0, NULL, NULL);
        ql_train_backward(tm, a, seqs[k], 5);
    }
    double mx = 0;
    for (int64_t i = 0; i < tm->n_weights; i++) mx = fmax(mx, fabs(tm->g_all[i] - g1[i] - g2[i]));
    assert_true(mx < 1e-12);
    free(g1), free(g2);
    ql_train_acts_free(a);
    ql_train_model_free(tm);
}

/* AdamW: warm-up is linear, the cosine ends at lr·min_ratio, clipping bounds the step, and training a tiny
 * model on one sequence drives its cross-entropy down. */
static void test_adamw(void **state) {
    (void)state;
    ql_adamw_opts o = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0, .warmup = 10,
                       .total_steps = 110, .min_lr_ratio = 0.1, .clip = 1.0};
    assert_true(fabs(ql_adamw_lr(&o, 0) - 1e-3) < 1e-15);
    assert_true(fabs(ql_adamw_lr(&o, 9) - 1e-2) < 1e-15);
    assert_true(fabs(ql_adamw_lr(&o, 60) - (1e-3 + 0.5 * 9e-3)) < 1e-12);
    assert_true(fabs(ql_adamw_lr(&o, 110) - 1e-3) < 1e-15);
    assert_true(ql_adamw_lr(&o, 30) > ql_adamw_lr(&o, 31));

    ql_config cfg = small_cfg(0, 2, 1);
    ql_train_model *tm = ql_train_model_random(&cfg, false, 5, 0.4);
    ql_train_acts *a = ql_train_acts_new(&cfg, 8);
    int32_t seq[8] = {3, 1, 4, 1, 5, 9, 2, 6};
    ql_adamw *opt = ql_adamw_new(tm, &o);
    double first = 0, last = 0;
    for (int step = 0; step < 100; step++) {
        ql_train_zero_grad(tm);
        ql_train_forward(tm, a, seq, 8, NULL);
        double loss = ql_train_loss(tm, a, seq, 8, 0, NULL, 1.0, 0.0, NULL, NULL);
        ql_train_backward(tm, a, seq, 8);
        double gn = ql_adamw_step(opt, tm, 1.0);
        assert_true(isfinite(gn));
        if (step == 0) first = loss;
        last = loss;
    }
    assert_true(last < 0.25 * first);
    /* a frozen tensor does not move */
    tm->p[tm->output_norm].frozen = true;
    double before = tm->p[tm->output_norm].w[0];
    ql_train_forward(tm, a, seq, 8, NULL);
    ql_train_loss(tm, a, seq, 8, 0, NULL, 1.0, 0.0, NULL, NULL);
    ql_train_zero_grad(tm);
    ql_train_backward(tm, a, seq, 8);
    ql_adamw_step(opt, tm, 1.0);
    assert_true(tm->p[tm->output_norm].w[0] == before);
    ql_adamw_free(opt);
    ql_train_acts_free(a);
    ql_train_model_free(tm);
}

/* The training forward computes core/infer.c's logits (F32 weights, no llama.cpp rounding for F32) on every
 * llama-shaped model: stories260K, the arch-variants with rope_freqs (llama3, which training divides angles by),
 * q/k/v biases (qwen2) and fused projections (phi3), and the synthetic EXAONE (NEOX), ERNIE (biases, tied output)
 * and Seed-OSS (FFN norm under post_attention_norm, heads wider than the embedding) test models. */
/* Max |train logit - infer logit| relative to the largest logit; drop_factors: train without the rope_freqs
 * factors (to show they matter). */
static double train_vs_infer(const ql_model *m, const char *what, bool drop_factors) {
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    const int T = 64, V = m->cfg.n_vocab;
    int32_t tok[64];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)((i * 37 + 11) % V);
    ql_scratch *s = ql_scratch_new(inf, T);
    float *ref = malloc((size_t)T * V * sizeof(float));
    assert_int_equal(ql_forward(inf, s, tok, T, 0, ref), QL_OK);
    ql_train_model *tm;
    assert_int_equal(ql_train_model_from(m, &tm), QL_OK);
    if (drop_factors) {
        assert_non_null(tm->rope_ff);
        free(tm->rope_ff);
        tm->rope_ff = NULL;
    }
    ql_train_acts *a = ql_train_acts_new(&tm->cfg, T);
    const double *lg;
    assert_int_equal(ql_train_forward(tm, a, tok, T, &lg), QL_OK);
    double mx = 0, scale = 0;
    for (int i = 0; i < T * V; i++) {
        mx = fmax(mx, fabs(lg[i] - ref[i]));
        scale = fmax(scale, fabs(ref[i]));
    }
    printf("train forward vs infer, %-14s%s max |dlogit| %.3g (logits up to %.3g)\n", what,
           drop_factors ? " (no rope_freqs in training)" : "", mx, scale);
    ql_train_acts_free(a);
    ql_train_model_free(tm);
    free(ref);
    ql_scratch_free(s);
    ql_infer_free(inf);
    return mx / scale;
}

static void forward_matches_infer(const ql_model *m, const char *what) {
    const double rel = train_vs_infer(m, what, false);
    if (!(rel < 1e-3)) fail_msg("%s: the training forward differs from the inference one by %g relative", what, rel);
}

static ql_model *synth_model(const char *shape) {
    char p[256];
    snprintf(p, sizeof p, "/tmp/qlab_test_train_%d_%s.gguf", (int)getpid(), shape);
    assert_int_equal(ql_synth_write(ql_synth_find(shape), 1, p, 1, NULL), QL_OK);
    ql_model *m = NULL;
    assert_int_equal(ql_model_load(p, &m), QL_OK);
    unlink(p); /* mapped: the data stays until the model is freed */
    return m;
}

static void test_forward_matches_infer(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "models/stories260K.gguf")) skip();
    static const char *files[] = {"models/stories260K.gguf", "testdata/arch-variants/llama3.gguf",
                                  "testdata/arch-variants/qwen2.gguf", "testdata/arch-variants/phi3.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        assert_true(shared_path(path, sizeof path, files[i]));
        ql_model *m;
        assert_int_equal(ql_model_load(path, &m), QL_OK);
        forward_matches_infer(m, strrchr(files[i], '/') + 1);
        if (m->rope_freqs) assert_true(train_vs_infer(m, "llama3.gguf", true) > 1e-2); /* the factors matter */
        ql_model_free(m);
    }
    static const char *shapes[] = {"tiny-exaone", "tiny-ernie4_5", "tiny-seed_oss"};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        ql_model *m = synth_model(shapes[i]);
        forward_matches_infer(m, shapes[i]);
        ql_model_free(m);
    }
}

/* A model whose forward pass has a step the training pass lacks is refused, naming it, instead of trained as
 * another model. */
static void test_refuses_what_it_cannot_compute(void **state) {
    (void)state;
    static const struct { const char *shape, *why; } cases[] = {
        {"tiny-granite", "embedding scale"}, {"tiny-olmo2", "sliding window"},
        {"tiny-smollm3", "layers without RoPE"},     {"tiny-mistral3", "temperature"},
        {"tiny-glm4", "part of each head"},           {"tiny-gptoss", "mixture-of-experts"},
        {"tiny-moe", "mixture-of-experts"},          {"tiny-cohere2", "sliding window"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ql_model *m = synth_model(cases[i].shape);
        ql_train_model *tm = NULL;
        assert_int_equal(ql_train_model_from(m, &tm), QL_ERR_UNSUPPORTED);
        assert_null(tm);
        if (!strstr(ql_last_error(), cases[i].why)) fail_msg("%s: '%s' lacks '%s'", cases[i].shape, ql_last_error(), cases[i].why);
        ql_model_free(m);
    }
    char path[512];
    if (!shared_path(path, sizeof path, "testdata/arch-variants/gemma2.gguf")) return;
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    ql_train_model *tm = NULL;
    assert_int_equal(ql_train_model_from(m, &tm), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "SwiGLU"));
    ql_model_free(m);
}

/* Recompute (per-layer activation checkpointing): the gradients are the same bits as with every activation
 * kept, for a model deep and wide enough that BLAS takes its blocked paths, and the kept activations shrink. */
static void test_recompute_bit_identical(void **state) {
    (void)state;
    ql_config cfg = small_cfg(0, 4, 2);
    cfg.n_layer = 4, cfg.n_embd = 64, cfg.head_dim = 16, cfg.rope_dim = 16, cfg.n_ff = 96, cfg.n_vocab = 50;
    cfg.n_ctx_train = 40;
    for (int tied = 0; tied < 2; tied++) {
        cfg.tied_output = tied;
        ql_train_model *tm = ql_train_model_random(&cfg, tied, 21 + (uint64_t)tied, 0.3);
        const int T = 33;
        int32_t tok[33];
        for (int t = 0; t < T; t++) tok[t] = (int32_t)((t * 7 + 3 + tied) % cfg.n_vocab);
        float *teacher = malloc((size_t)T * cfg.n_vocab * sizeof(float));
        for (int i = 0; i < T * cfg.n_vocab; i++) teacher[i] = (float)(3 * rnd());
        double *g[2], loss[2];
        for (int rc = 0; rc < 2; rc++) {
            ql_train_acts *a = ql_train_acts_new_opt(&cfg, T, rc == 1);
            assert_int_equal(ql_train_acts_recompute(a), rc == 1);
            ql_train_zero_grad(tm);
            /* two micro-batches: accumulation goes through the recomputed layers too */
            for (int k = 0; k < 2; k++) {
                assert_int_equal(ql_train_forward(tm, a, tok + k, T - k, NULL), QL_OK);
                loss[rc] = ql_train_loss(tm, a, tok + k, T - k, 0, teacher, 0.3, 0.7, NULL, NULL);
                assert_int_equal(ql_train_backward(tm, a, tok + k, T - k), QL_OK);
            }
            g[rc] = malloc((size_t)tm->n_weights * sizeof(double));
            memcpy(g[rc], tm->g_all, (size_t)tm->n_weights * sizeof(double));
            ql_train_acts_free(a);
        }
        assert_memory_equal(&loss[0], &loss[1], sizeof(double));
        double gn = 0;
        for (int64_t i = 0; i < tm->n_weights; i++) gn += g[0][i] * g[0][i];
        assert_true(gn > 0); /* something was computed */
        assert_memory_equal(g[0], g[1], (size_t)tm->n_weights * sizeof(double));
        free(g[0]), free(g[1]), free(teacher);
        ql_train_model_free(tm);
    }
    /* memory: one layer's intermediates instead of n_layer; the automatic choice follows the limit */
    const double full = ql_train_acts_bytes_opt(&cfg, 33, false), rec = ql_train_acts_bytes_opt(&cfg, 33, true);
    assert_true(rec < full);
    assert_false(ql_train_choose_recompute(&cfg, 33, 1000, full + 1000));
    assert_true(ql_train_choose_recompute(&cfg, 33, 1000, full + 999));
}

/* Fake quantization of activations (INT8 per token on every linear's input) and, separately, of K/V (an FP8 E4M3
 * cache: stories260K's heads of 8 fit no block type): the training forward computes what core/infer.c's forward
 * with the same setting computes. KV: every position to float rounding. Activations: the positions before the
 * first rounding tie that double and float break differently (such a flip then travels to the later positions
 * through attention), at least 3/4 of them here. Both together (issue 15's reported mismatch): every position
 * while attn_output's input stays float; with it rounded too, the first difference is an exact INT8 tie (below).
 * The backward runs on the rounded activations. */
static void keep_att_in(void *user, int layer, ql_hook_point where, const float *x, int n, int dim) {
    if (where == QL_HOOK_ATTN_OUT_IN) memcpy((float *)user + (size_t)layer * n * dim, x, (size_t)n * dim * sizeof(float));
}

static int positions_matching(const double *lg, const float *ref, int T, int V) {
    int n = 0;
    for (int t = 0; t < T; t++) {
        double mx = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, fabs(lg[(size_t)t * V + i] - ref[(size_t)t * V + i]));
        if (mx >= 1e-3) break;
        n++;
    }
    return n;
}

static void test_fake_quant_matches_infer(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "models/stories260K.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    const int T = 64, V = m->cfg.n_vocab;
    int32_t tok[64];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)((i * 37 + 11) % V);
    ql_kv_scheme kv;
    assert_true(ql_kv_scheme_parse("fp8_e4m3", &kv));
    ql_act_quant aq;
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TOKEN, NULL, 0, 0), QL_OK);
    ql_train_model *tm;
    assert_int_equal(ql_train_model_from(m, &tm), QL_OK);
    const ql_act_quant **act_in = calloc((size_t)tm->n_params, sizeof *act_in);
    for (int i = 0; i < tm->n_params; i++)
        if (tm->p[i].is_matrix && i != tm->tok_embd) act_in[i] = &aq;
    ql_train_acts *a = ql_train_acts_new(&tm->cfg, T);
    float *ref = malloc((size_t)T * V * sizeof(float));
    double *plain = malloc((size_t)T * V * sizeof(double));
    const double *lg;
    assert_int_equal(ql_train_forward(tm, a, tok, T, &lg), QL_OK);
    memcpy(plain, lg, (size_t)T * V * sizeof(double));
    /* modes: 0 activations, 1 KV, 2 both with attn_output's input left float, 3 both everywhere */
    static const char *const what[] = {"activations", "KV", "activations (not attn_output) + KV",
                                       "activations + KV"};
    const int Q = m->cfg.n_head * m->cfg.head_dim, L = m->cfg.n_layer;
    float *att_in = malloc((size_t)L * T * Q * sizeof(float));
    for (int mode = 0; mode < 4; mode++) {
        const bool with_act = mode != 1, with_kv = mode != 0;
        const ql_act_quant **use = calloc((size_t)tm->n_params, sizeof *use);
        for (int i = 0; i < tm->n_params && with_act; i++)
            if (act_in[i] && !(mode == 2 && strstr(tm->p[i].name, "attn_output"))) use[i] = act_in[i];
        ql_infer *inf;
        assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
        if (with_kv) assert_int_equal(ql_infer_set_kv(inf, &kv), QL_OK);
        for (int i = 0; i < tm->n_params; i++)
            if (use[i]) assert_true(ql_infer_set_act_quant(inf, tm->p[i].src, use[i]));
        ql_scratch *s = ql_scratch_new(inf, T);
        ql_scratch_set_hook(s, keep_att_in, att_in);
        assert_int_equal(ql_forward(inf, s, tok, T, 0, ref), QL_OK);
        tm->act_in = with_act ? use : NULL, tm->kv = with_kv ? &kv : NULL;
        assert_int_equal(ql_train_check_fake_quant(tm), QL_OK);
        assert_int_equal(ql_train_forward(tm, a, tok, T, &lg), QL_OK);
        double moved = 0;
        for (int i = 0; i < T * V; i++) moved = fmax(moved, fabs(lg[i] - plain[i]));
        const int n = positions_matching(lg, ref, T, V);
        printf("fake-quantized %s: %d of %d positions equal to infer's, max |Δlogit| to the float forward %.3g\n",
               what[mode], n, T, moved);
        assert_true(moved > 1e-2);
        if (mode == 1 || mode == 2) assert_int_equal(n, T);
        else if (mode == 0) assert_true(n >= 3 * T / 4);
        else {
            /* Both everywhere: the first position that differs holds an exact INT8 rounding tie in the input of
             * some attn_output (x·127/amax = k + 1/2 in float): the FP8 cache stores a head's values as codes
             * times one per-token scale, so one value column can be exactly twice another and the product P·V
             * keeps that in core/infer.c's float sgemm; the training forward's double product rounds it an ulp
             * off, and the tie breaks the other way. Neither forward is wrong; the tie is exact. */
            assert_true(n >= 2 && n < T);
            int ties = 0;
            for (int l = 0; l < L; l++) {
                const float *row = att_in + ((size_t)l * T + n) * Q;
                float amax = 0;
                for (int j = 0; j < Q; j++) amax = fmaxf(amax, fabsf(row[j]));
                for (int j = 0; j < Q; j++) {
                    const float y = row[j] * (127.0f / amax);
                    ties += y - floorf(y) == 0.5f;
                }
            }
            printf("  first differing position %d: %d exact INT8 ties in attn_output inputs there\n", n, ties);
            assert_true(ties > 0);
        }
        ql_train_loss(tm, a, tok, T, 0, NULL, 1.0, 0.0, NULL, NULL);
        ql_train_zero_grad(tm);
        assert_int_equal(ql_train_backward(tm, a, tok, T), QL_OK);
        double gn = 0;
        for (int64_t i = 0; i < tm->n_weights; i++) gn += tm->g_all[i] * tm->g_all[i];
        assert_true(gn > 0 && isfinite(gn));
        ql_scratch_free(s);
        ql_infer_free(inf);
        tm->act_in = NULL;
        free(use);
    }
    free(att_in);
    /* refused: a float residual window, q and k reading one input under two schemes */
    ql_kv_scheme res;
    assert_true(ql_kv_scheme_parse("int4_token_g32_r16", &res));
    tm->kv = &res;
    assert_int_not_equal(ql_train_check_fake_quant(tm), QL_OK);
    assert_non_null(strstr(ql_last_error(), "residual"));
    tm->kv = NULL;
    tm->act_in = act_in;
    act_in[tm->layers[0].wk] = NULL;
    assert_int_not_equal(ql_train_check_fake_quant(tm), QL_OK);
    assert_null(strchr(ql_last_error(), '\n'));
    tm->act_in = NULL;
    free(act_in), free(plain), free(ref);
    ql_train_acts_free(a);
    ql_train_model_free(tm);
    ql_model_free(m);
}

/* The KV-cached decoder (core/train_decode.c, what --self-text samples with): token by token, three sequences
 * in step, it gives every position's logits of a full ql_train_forward over each sequence, for MHA and GQA,
 * adjacent and NeoX rope, tied output with q/k/v biases and separate output without; a sequence decoded alone
 * gives its logits in the batch; a position past the cache and a token out of range are refused. */
static void test_decoder_matches_forward(void **state) {
    (void)state;
    for (int variant = 0; variant < 4; variant++) {
        ql_config cfg = small_cfg(variant & 1, 4, variant & 2 ? 2 : 4);
        cfg.n_embd = 32, cfg.head_dim = 8, cfg.rope_dim = 8, cfg.n_ff = 40, cfg.n_vocab = 23, cfg.n_ctx_train = 24;
        const bool tied = variant >= 2;
        cfg.tied_output = tied;
        ql_train_model *tm = ql_train_model_random(&cfg, tied, 40 + (uint64_t)variant, 0.4);
        enum { T = 19, NS = 3 };
        int32_t tok[NS][T];
        for (int b = 0; b < NS; b++)
            for (int t = 0; t < T; t++) tok[b][t] = (int32_t)((t * (5 + 2 * b) + 3 * b + variant) % cfg.n_vocab);
        const int V = cfg.n_vocab;
        double *ref = malloc((size_t)NS * T * V * sizeof(double));
        ql_train_acts *a = ql_train_acts_new(&cfg, T);
        for (int b = 0; b < NS; b++) {
            const double *lg;
            assert_int_equal(ql_train_forward(tm, a, tok[b], T, &lg), QL_OK);
            memcpy(ref + (size_t)b * T * V, lg, (size_t)T * V * sizeof(double));
        }
        ql_train_decoder *d = ql_train_decoder_new(tm, 4, T), *d1 = ql_train_decoder_new(tm, 1, T);
        double err = 0, alone = 0, mag = 0;
        for (int t = 0; t < T; t++) {
            int32_t step[NS];
            for (int b = 0; b < NS; b++) step[b] = tok[b][t];
            const double *lg, *lg1;
            assert_int_equal(ql_train_decode_step(d, step, NS, t, &lg), QL_OK);
            for (int b = 0; b < NS; b++)
                for (int i = 0; i < V; i++) {
                    const double r = ref[((size_t)b * T + t) * V + i];
                    err = fmax(err, fabs(lg[(size_t)b * V + i] - r));
                    mag = fmax(mag, fabs(r));
                }
            assert_int_equal(ql_train_decode_step(d1, &step[2], 1, t, &lg1), QL_OK);
            for (int i = 0; i < V; i++) alone = fmax(alone, fabs(lg1[i] - lg[2 * V + i]));
        }
        assert_true(mag > 0.1); /* the logits are not trivially zero */
        assert_true(err < 1e-10 * mag);
        assert_true(alone < 1e-12 * mag);
        const double *lg;
        int32_t bad = (int32_t)V;
        assert_int_not_equal(ql_train_decode_step(d, tok[0], 1, T, &lg), QL_OK); /* past the cache */
        assert_int_not_equal(ql_train_decode_step(d, &bad, 1, 0, &lg), QL_OK);
        assert_int_not_equal(ql_train_decode_step(d, tok[0], 5, 0, &lg), QL_OK); /* more than the batch */
        ql_train_decoder_free(d), ql_train_decoder_free(d1);
        ql_train_acts_free(a);
        free(ref);
        ql_train_model_free(tm);
    }
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_linear),    cmocka_unit_test(test_grad_rmsnorm),
        cmocka_unit_test(test_grad_rope),      cmocka_unit_test(test_grad_attention),
        cmocka_unit_test(test_grad_swiglu),    cmocka_unit_test(test_grad_model),
        cmocka_unit_test(test_grad_accumulates), cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_forward_matches_infer),
        cmocka_unit_test(test_refuses_what_it_cannot_compute), cmocka_unit_test(test_recompute_bit_identical),
        cmocka_unit_test(test_fake_quant_matches_infer), cmocka_unit_test(test_decoder_matches_forward),
    };
    ql_test_order_from_env(tests, QL_ARRAY_LEN(tests));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
