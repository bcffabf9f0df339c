/* test_qat.c — training in the loop (pipeline/qat.h) on stories260K: plans without a straight-through path
 * and bad learning rates refused with one line; a run is deterministic for a seed and thread count; a run
 * stopped and resumed from its checkpoint ends bit-identical to an uninterrupted one; a loss that stops being
 * finite ends the run and leaves the last good checkpoint; QAT and both tunings lower the held-out KLD;
 * tuning the norms leaves every matrix as it was; and the exported file's KLD, measured by core/infer.c,
 * is the one the training forward measured (codes re-chosen from the trained weights); LSQ's backward against
 * finite differences and a learned-step run beating the fixed rule; --keep-best handing back the best step;
 * the --self-text sampler against a full-forward reference and across thread counts;
 * --tune codebooks: the AQLM codebook/scale gradient against finite differences, and a run whose export keeps
 * the codes and scores the training forward's KLD; tuning a model already stored in the planned format keeps
 * its codes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/infer.h"
#include "core/model.h"
#include "core/ppl.h"
#include "formats/format.h"
#include "pipeline/qat.h"
#include "pipeline/quantize.h"
#include "presets/preset.h"
#include "tests/test_util.h"

#define SEQ 64
#define N_TRAIN 24
#define N_EVAL 4

static ql_model *g_model;
static int32_t *g_tok;
static char g_dir[256];

static int setup(void **state) {
    (void)state;
    char path[512], text_path[512];
    if (!shared_path(path, sizeof path, "models/stories260K.gguf") ||
        !shared_path(text_path, sizeof text_path, "data/tinystories-valid.txt"))
        return 0;
    setenv("QL_NO_LLAMACPP_ACT", "1", 1); /* compare the export with the training forward, both without it */
    if (ql_model_load(path, &g_model)) return -1;
    char *text;
    size_t len;
    if (ql_read_file(text_path, &text, &len)) return -1;
    int32_t *ids;
    int64_t n;
    ql_status s = ql_tokenize(g_model->tok, text, len < 200000 ? len : 200000, true, &ids, &n);
    free(text);
    if (s || n < (N_TRAIN + N_EVAL) * SEQ) return -1;
    g_tok = ids;
    snprintf(g_dir, sizeof g_dir, "/tmp/qlab_test_qat_%d", (int)getpid());
    mkdir(g_dir, 0700);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(g_tok);
    ql_model_free(g_model);
    if (g_dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
        if (system(cmd)) return -1;
    }
    return 0;
}

static ql_plan *plan_of(const char *type) {
    ql_plan *p;
    assert_int_equal(ql_plan_single_format(type, g_model, &p), QL_OK);
    return p;
}

static ql_qat_opts base_opts(const ql_plan *plan, int steps) {
    ql_qat_opts o = {.plan = plan, .train = g_tok, .n_train = N_TRAIN, .eval = g_tok + N_TRAIN * SEQ,
                     .n_eval = N_EVAL, .seq_len = SEQ, .steps = steps, .accum = 2,
                     .adam = {.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .warmup = 2, .min_lr_ratio = 0.1,
                              .clip = 1.0},
                     .kl_weight = 1.0, .seed = 11, .n_threads = 1};
    return o;
}

#define NEED_MODEL() \
    if (!g_model) skip()

static void test_refusals(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *plan = plan_of("q4_0");
    /* a format without a straight-through path: decode-only, or needing importance data */
    const ql_format *fmts[] = {ql_format_by_name("q8_k"), ql_format_by_name("iq2_xxs")};
    for (int i = 0; i < 2; i++) {
        assert_non_null(fmts[i]);
        assert_non_null(ql_qat_no_ste(fmts[i]));
        ql_plan *bad = ql_plan_new();
        ql_plan_set(bad, "blk.0.attn_q.weight", fmts[i], "rtn", NULL);
        assert_int_not_equal(ql_qat_check_plan(g_model, bad), QL_OK);
        assert_non_null(strstr(ql_last_error(), "straight-through"));
        assert_null(strchr(ql_last_error(), '\n'));
        ql_plan_free(bad);
    }
    assert_null(ql_qat_no_ste(ql_format_by_name("q4_0")));
    assert_int_equal(ql_qat_check_plan(g_model, plan), QL_OK);
    /* a learning rate of 0 or NaN */
    const double lrs[] = {0.0, NAN, -1e-3};
    for (int i = 0; i < 3; i++) {
        ql_qat_opts o = base_opts(plan, 2);
        o.adam.lr = lrs[i];
        ql_train_model *tm = NULL;
        ql_qat_result r;
        assert_int_not_equal(ql_qat_run(g_model, &o, &tm, &r), QL_OK);
        assert_null(tm);
        assert_non_null(strstr(ql_last_error(), "learning rate"));
    }
    ql_plan_free(plan);
}

static ql_train_model *run(const ql_qat_opts *o, ql_status want, ql_qat_result *r) {
    ql_train_model *tm = NULL;
    ql_qat_result tmp;
    ql_status s = ql_qat_run(g_model, o, &tm, r ? r : &tmp);
    if (s != want) fail_msg("ql_qat_run: %d (%s), wanted %d", s, ql_last_error(), want);
    return tm;
}

static void stop_at_3(void *user, const ql_qat_report *r) {
    if (r->step == 3) *(volatile int *)user = 1;
}

static void test_deterministic_and_resume(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *plan = plan_of("q4_0");
    char ck_full[300], ck_cut[300];
    snprintf(ck_full, sizeof ck_full, "%s/full.ckpt", g_dir);
    snprintf(ck_cut, sizeof ck_cut, "%s/cut.ckpt", g_dir);
    ql_qat_opts o = base_opts(plan, 6);
    o.checkpoint = ck_full;
    ql_train_model *a = run(&o, QL_OK, NULL);
    ql_qat_opts o2 = base_opts(plan, 6);
    ql_train_model *b = run(&o2, QL_OK, NULL);
    assert_memory_equal(a->w_all, b->w_all, (size_t)a->n_weights * sizeof(double));
    /* a different seed draws other sequences: other weights */
    o2.seed = 12;
    ql_train_model *c = run(&o2, QL_OK, NULL);
    assert_memory_not_equal(a->w_all, c->w_all, (size_t)a->n_weights * sizeof(double));
    ql_train_model_free(b);
    ql_train_model_free(c);

    /* stopped after step 3 (the flag Ctrl-C sets, raised from the progress report), then resumed */
    volatile int cancel = 0;
    ql_qat_opts o3 = base_opts(plan, 6);
    o3.checkpoint = ck_cut;
    o3.cancel = &cancel;
    o3.user = (void *)&cancel;
    o3.report = stop_at_3;
    ql_qat_result r;
    ql_train_model *d = run(&o3, QL_ERR_CANCELLED, &r);
    assert_int_equal(r.steps_done, 4); /* the flag is read after the next step */
    ql_train_model_free(d);
    cancel = 0;
    o3.resume = true;
    ql_train_model *e = run(&o3, QL_OK, &r);
    assert_int_equal(r.steps_done, 6);
    assert_memory_equal(a->w_all, e->w_all, (size_t)a->n_weights * sizeof(double));
    /* resuming a finished run does nothing more */
    ql_train_model *f = run(&o3, QL_OK, &r);
    assert_memory_equal(a->w_all, f->w_all, (size_t)a->n_weights * sizeof(double));
    ql_train_model_free(e);
    ql_train_model_free(f);
    /* a checkpoint of another run is refused with one line naming the file */
    ql_qat_opts o4 = base_opts(plan, 6);
    o4.checkpoint = ck_cut;
    o4.resume = true;
    o4.seed = 99;
    run(&o4, QL_ERR_FORMAT, NULL);
    assert_non_null(strstr(ql_last_error(), ck_cut));
    ql_train_model_free(a);
    ql_plan_free(plan);
}

static void test_nan_keeps_checkpoint(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *plan = plan_of("q4_0");
    char ck[300];
    snprintf(ck, sizeof ck, "%s/nan.ckpt", g_dir);
    ql_qat_opts o = base_opts(plan, 2);
    o.checkpoint = ck;
    o.n_eval = 0;
    ql_train_model_free(run(&o, QL_OK, NULL));
    /* resumed with a learning rate that throws the weights out of float's range at step 3 */
    o.steps = 6;
    o.resume = true;
    o.checkpoint_every = 1;
    o.adam.lr = 1e300;
    o.adam.warmup = 0;
    run(&o, QL_ERR_ARG, NULL);
    assert_non_null(strstr(ql_last_error(), "stopped"));
    assert_non_null(strstr(ql_last_error(), ck));
    /* the checkpoint on disk is the last step whose loss was finite */
    FILE *f = fopen(ck, "rb");
    assert_non_null(f);
    unsigned char h[48];
    assert_int_equal(fread(h, 1, sizeof h, f), sizeof h);
    fclose(f);
    int64_t step;
    memcpy(&step, h + 40, 8);
    assert_int_equal(step, 2);
    ql_plan_free(plan);
}

/* Mean KL(float ‖ file) over the eval sequences, every position but the last, through core/infer.c. */
static double file_kld(const char *path) {
    ql_model *q;
    assert_int_equal(ql_model_load(path, &q), QL_OK);
    ql_infer *fi, *qi;
    assert_int_equal(ql_infer_new(g_model, 1, &fi), QL_OK);
    assert_int_equal(ql_infer_new(q, 1, &qi), QL_OK);
    ql_scratch *fs = ql_scratch_new(fi, SEQ), *qs = ql_scratch_new(qi, SEQ);
    const int V = g_model->cfg.n_vocab;
    float *lf = malloc((size_t)SEQ * V * 4), *lq = malloc((size_t)SEQ * V * 4);
    double sum = 0;
    for (int i = 0; i < N_EVAL; i++) {
        const int32_t *tok = g_tok + (N_TRAIN + i) * SEQ;
        assert_int_equal(ql_forward(fi, fs, tok, SEQ, 0, lf), QL_OK);
        assert_int_equal(ql_forward(qi, qs, tok, SEQ, 0, lq), QL_OK);
        double kl = 0;
        for (int t = 0; t < SEQ - 1; t++)
            for (int v = 0; v < V; v++) {
                double lpf = ql_log_softmax_at(lf + (size_t)t * V, V, v), lpq = ql_log_softmax_at(lq + (size_t)t * V, V, v);
                kl += exp(lpf) * (lpf - lpq);
            }
        sum += kl / (SEQ - 1);
    }
    free(lf), free(lq);
    ql_scratch_free(fs), ql_scratch_free(qs);
    ql_infer_free(fi), ql_infer_free(qi);
    ql_model_free(q);
    return sum / N_EVAL;
}

static void test_training_lowers_kld_and_exports(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *plan = plan_of("q4_0");
    const ql_qat_mode modes[] = {QL_QAT_FULL, QL_TUNE_NORMS, QL_TUNE_SCALES};
    for (int mi = 0; mi < 3; mi++) {
        ql_qat_opts o = base_opts(plan, 30);
        o.mode = modes[mi];
        o.adam.lr = modes[mi] == QL_QAT_FULL ? 2e-4 : 5e-3;
        ql_qat_result r;
        ql_train_model *tm = run(&o, QL_OK, &r);
        printf("mode %d: held-out KLD %.6f -> %.6f\n", modes[mi], r.eval_kld_start, r.eval_kld_end);
        assert_true(r.eval_kld_end < 0.9 * r.eval_kld_start);
        if (modes[mi] == QL_TUNE_NORMS) { /* every matrix is as loaded */
            ql_train_model *orig;
            assert_int_equal(ql_train_model_from(g_model, &orig), QL_OK);
            for (int i = 0; i < tm->n_params; i++)
                if (tm->p[i].is_matrix)
                    assert_memory_equal(tm->p[i].w, orig->p[i].w, (size_t)tm->p[i].rows * tm->p[i].cols * 8);
            ql_train_model_free(orig);
        }
        if (modes[mi] == QL_QAT_FULL) {
            /* export: a copy of the model gets the trained weights, the plan re-chooses the codes */
            ql_model *m2;
            assert_int_equal(ql_model_load(g_model->path, &m2), QL_OK);
            ql_train_model *tm2;
            assert_int_equal(ql_train_model_from(m2, &tm2), QL_OK);
            memcpy(tm2->w_all, tm->w_all, (size_t)tm->n_weights * sizeof(double));
            assert_int_equal(ql_qat_apply(m2, tm2), QL_OK);
            char out[300];
            snprintf(out, sizeof out, "%s/qat.gguf", g_dir);
            ql_quant_opts qo = {.plan = plan, .n_threads = 1};
            ql_quant_stats qs;
            assert_int_equal(ql_quantize_model(m2, &qo, out, NULL, &qs), QL_OK);
            double k = file_kld(out);
            printf("exported file: KLD %.6f (training forward %.6f)\n", k, r.eval_kld_end);
            assert_true(fabs(k - r.eval_kld_end) < 0.02 * r.eval_kld_end);
            ql_train_model_free(tm2);
            ql_model_free(m2);
        }
        ql_train_model_free(tm);
    }
    ql_plan_free(plan);
}

/* LSQ's backward against central differences of its straight-through surrogate: with the codes k and the
 * in-range mask frozen at the point, v = s·(k - z + inside·(w/s - w0/s0)) equals the forward there and has
 * exactly the gradients LSQ defines (round's derivative 1 inside the range, 0 for a clamped w; k - z - w/s and
 * k - z for the step). Groups with a shorter last one, symmetric and asymmetric, a zero group, weights past
 * the range and on rounding ties. */
typedef struct {
    const double *w0, *s0, *z, *c;
    double *k0;
    bool *in0;
    int64_t rows, cols;
    int group, bits;
} lsq_ctx;

static double lsq_surrogate(const lsq_ctx *c, const double *w, const double *s) {
    const int64_t gl = c->group > 0 ? c->group : c->cols, gpr = (c->cols + gl - 1) / gl;
    double f = 0;
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t j = 0; j < c->cols; j++) {
            const int64_t g = r * gpr + j / gl, i = r * c->cols + j;
            const double v = s[g] * (c->k0[i] - c->z[g] + (c->in0[i] ? w[i] / s[g] - c->w0[i] / c->s0[g] : 0.0));
            f += c->c[i] * v;
        }
    return f;
}

static void test_lsq_gradient(void **state) {
    (void)state;
    const int64_t rows = 3, cols = 70;
    const int groups[] = {32, 0};
    for (int sym = 0; sym < 2; sym++)
        for (int gi = 0; gi < 2; gi++) {
            const int group = groups[gi], bits = 3;
            const int64_t n = rows * cols, ng = ql_lsq_groups(rows, cols, group);
            double *w = malloc(n * 8), *c = malloc(n * 8), *v = malloc(n * 8), *dw = malloc(n * 8), *k0 = malloc(n * 8);
            double *s = malloc(ng * 8), *z = malloc(ng * 8), *ds = calloc(ng, 8), *wp = malloc(n * 8), *sp = malloc(ng * 8);
            bool *in0 = malloc(n);
            uint64_t rng = 99 + sym * 2 + gi;
            for (int64_t i = 0; i < n; i++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                w[i] = ((double)(rng >> 11) * 0x1.0p-53 - 0.5) * 0.2;
                c[i] = ((double)((rng >> 7) & 1023) / 1023.0 - 0.5);
            }
            if (group > 0)
                for (int64_t j = 0; j < 32; j++) w[cols + j] = 0; /* an all-zero group (row 1, group 0) */
            ql_lsq_init(s, z, w, rows, cols, group, bits, sym);
            /* trained steps away from the initial ones: some weights now clamp, some sit on a rounding tie */
            for (int64_t g = 0; g < ng; g++) s[g] *= 0.7;
            w[5] = s[0] * 1.5;
            w[6] = s[0] * 40;
            w[7] = -s[0] * 40;
            ql_lsq_forward(v, w, s, z, rows, cols, group, bits);
            const int64_t gl = group > 0 ? group : cols, gpr = (cols + gl - 1) / gl;
            int n_clamped = 0;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < cols; j++) {
                    const int64_t g = r * gpr + j / gl, i = r * cols + j;
                    const double kr = nearbyint(w[i] / s[g]) + z[g], qmax = (1 << bits) - 1;
                    in0[i] = kr >= 0 && kr <= qmax;
                    k0[i] = fmin(fmax(kr, 0), qmax);
                    n_clamped += !in0[i];
                    assert_true(fabs(v[i] - s[g] * (k0[i] - z[g])) <= 1e-15); /* the forward is the grid value */
                }
            assert_true(n_clamped >= 2);
            ql_lsq_backward(dw, ds, c, w, s, z, rows, cols, group, bits);
            lsq_ctx cx = {.w0 = w, .s0 = s, .z = z, .c = c, .k0 = k0, .in0 = in0, .rows = rows, .cols = cols,
                          .group = group, .bits = bits};
            double num_max = 0, err_max = 0;
            for (int64_t i = 0; i < n; i++) {
                const double h = 1e-6;
                memcpy(wp, w, n * 8);
                wp[i] = w[i] + h;
                double fp = lsq_surrogate(&cx, wp, s);
                wp[i] = w[i] - h;
                double fm = lsq_surrogate(&cx, wp, s), num = (fp - fm) / (2 * h);
                num_max = fmax(num_max, fabs(num)), err_max = fmax(err_max, fabs(num - dw[i]));
            }
            for (int64_t g = 0; g < ng; g++) {
                const double h = 1e-7 * fabs(s[g]);
                memcpy(sp, s, ng * 8);
                sp[g] = s[g] + h;
                double fp = lsq_surrogate(&cx, w, sp);
                sp[g] = s[g] - h;
                double fm = lsq_surrogate(&cx, w, sp), num = (fp - fm) / (2 * h);
                if (!(fabs(num - ds[g]) <= 1e-4 * fmax(1.0, fabs(num))))
                    fail_msg("sym %d group %d: d/ds[%lld] %.9g, finite differences %.9g", sym, group, (long long)g,
                             ds[g], num);
            }
            assert_true(num_max > 0.1);
            if (!(err_max <= 1e-6 * num_max)) fail_msg("sym %d group %d: d/dw off by %g", sym, group, err_max);
            free(w), free(c), free(v), free(dw), free(k0), free(s), free(z), free(ds), free(wp), free(sp), free(in0);
        }
}

/* --lsq: a plan whose formats are INT grids trains its steps, lowers the held-out KLD, and exports; a plan
 * without one is refused in one line. */
static void test_lsq_run(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *bad = plan_of("q4_0");
    ql_qat_opts o = base_opts(bad, 2);
    o.lsq = true;
    run(&o, QL_ERR_UNSUPPORTED, NULL);
    assert_non_null(strstr(ql_last_error(), "--lsq"));
    assert_null(strchr(ql_last_error(), '\n'));
    ql_plan_free(bad);
    ql_plan *plan = plan_of("int3_g32_sym");
    double end[2];
    for (int lsq = 0; lsq < 2; lsq++) {
        o = base_opts(plan, 30);
        o.lsq = lsq;
        o.adam.lr = 2e-4;
        o.lsq_lr = 1e-2;
        ql_qat_result r;
        ql_train_model *tm = run(&o, QL_OK, &r);
        printf("int3_g32_sym, lsq %d: held-out KLD %.6f -> %.6f\n", lsq, r.eval_kld_start, r.eval_kld_end);
        assert_true(r.eval_kld_end < 0.9 * r.eval_kld_start);
        end[lsq] = r.eval_kld_end;
        if (lsq) {
            /* export: the learned grid's values, codes and scales re-chosen by the format's quantizer */
            ql_model *m2;
            assert_int_equal(ql_model_load(g_model->path, &m2), QL_OK);
            ql_train_model *tm2;
            assert_int_equal(ql_train_model_from(m2, &tm2), QL_OK);
            memcpy(tm2->w_all, tm->w_all, (size_t)tm->n_weights * sizeof(double));
            assert_int_equal(ql_qat_apply(m2, tm2), QL_OK);
            char out[300];
            snprintf(out, sizeof out, "%s/lsq.gguf", g_dir);
            ql_quant_opts qo = {.plan = plan, .n_threads = 1};
            ql_quant_stats qs;
            assert_int_equal(ql_quantize_model(m2, &qo, out, NULL, &qs), QL_OK);
            double k = file_kld(out);
            printf("LSQ exported file: KLD %.6f (training forward %.6f)\n", k, r.eval_kld_end);
            assert_true(fabs(k - r.eval_kld_end) < 0.02 * r.eval_kld_end); /* the learned grid survives export */
            ql_train_model_free(tm2);
            ql_model_free(m2);
        }
        ql_train_model_free(tm);
    }
    printf("LSQ vs fixed rule: %.6f vs %.6f\n", end[1], end[0]);
    assert_true(end[1] < end[0]);
    ql_plan_free(plan);
}

/* --keep-best: the weights handed back are those of the best held-out evaluation (the start included), and
 * the file exported from them scores that KLD. A learning rate this high makes an intermediate step the best one. */
typedef struct { double min_kld; int n; } evals_seen;
static void on_eval(void *user, const ql_qat_report *r) {
    evals_seen *e = user;
    if (r->evaluated) e->min_kld = fmin(e->min_kld, r->eval_kld), e->n++;
}

static void test_keep_best(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *plan = plan_of("q4_0");
    ql_qat_opts o = base_opts(plan, 12);
    o.adam.lr = 6e-4;
    o.eval_every = 2;
    o.keep_best = true;
    evals_seen e = {.min_kld = INFINITY};
    o.report = on_eval, o.user = &e;
    ql_qat_result r;
    ql_train_model *tm = run(&o, QL_OK, &r);
    e.min_kld = fmin(e.min_kld, r.eval_kld_start);
    printf("keep-best: start %.6f, best %.6f at step %d of %d evaluations\n", r.eval_kld_start, r.best_kld, r.best_step,
           e.n);
    assert_int_equal(e.n, 6);
    assert_true(r.best_step > 0 && r.best_step < 12); /* neither the start nor the last step */
    assert_true(r.best_kld == e.min_kld && r.eval_kld_end == r.best_kld);
    ql_model *m2;
    assert_int_equal(ql_model_load(g_model->path, &m2), QL_OK);
    ql_train_model *tm2;
    assert_int_equal(ql_train_model_from(m2, &tm2), QL_OK);
    memcpy(tm2->w_all, tm->w_all, (size_t)tm->n_weights * sizeof(double));
    assert_int_equal(ql_qat_apply(m2, tm2), QL_OK);
    char out[300];
    snprintf(out, sizeof out, "%s/best.gguf", g_dir);
    ql_quant_opts qo = {.plan = plan, .n_threads = 1};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m2, &qo, out, NULL, &qs), QL_OK);
    const double k = file_kld(out);
    printf("keep-best exported file: KLD %.6f\n", k);
    assert_true(fabs(k - r.best_kld) < 0.02 * r.best_kld);
    ql_train_model_free(tm2);
    ql_model_free(m2);
    ql_train_model_free(tm);
    ql_plan_free(plan);
}

/* --tune codebooks through the registry's `tunable` hook (AQLM 2x8): the gradient of the codebooks and row scales
 * against central differences in double, for L = Σ c·w + ½ Σ w² over a tensor with a short last group (unused
 * codewords get exactly 0); and the decode "as stored" equals the format's own decoder of the bytes theta was
 * written into, bit for bit. */
static double cb_loss(const ql_format_tunable *tu, const void *bytes, const double *theta, int64_t R, int64_t C,
                      const double *c, double *w) {
    tu->decode(bytes, theta, R, C, false, w);
    double f = 0;
    for (int64_t i = 0; i < R * C; i++) f += c[i] * w[i] + 0.5 * w[i] * w[i];
    return f;
}

static void test_codebook_gradient(void **state) {
    (void)state;
    const ql_format *f = ql_format_by_name("aqlm_2x8");
    assert_non_null(f);
    assert_non_null(f->tunable);
    assert_null(ql_format_by_name("q4_0")->tunable);
    const int64_t R = 5, C = 20; /* groups of 8: 8, 8, 4 */
    float *wf = malloc((size_t)(R * C) * sizeof(float));
    uint64_t rng = 7;
    for (int64_t i = 0; i < R * C; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        wf[i] = (float)((double)(rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    }
    const int64_t nb = ql_format_tensor_bytes(f, C, R), n = f->tunable->len(R, C);
    uint8_t *bytes = malloc((size_t)nb);
    assert_int_equal(ql_format_quantize(f, wf, bytes, R, C, NULL, 1), QL_OK);
    double *theta = malloc((size_t)n * sizeof(double)), *dtheta = calloc((size_t)n, sizeof(double));
    double *w = malloc((size_t)(R * C) * sizeof(double)), *c = malloc((size_t)(R * C) * sizeof(double));
    f->tunable->get(bytes, R, C, theta);
    for (int64_t i = 0; i < n; i++) theta[i] *= 1.0 + 0.01 * sin((double)i); /* off the f16 grid */
    for (int64_t i = 0; i < R * C; i++) c[i] = cos(0.7 * (double)i);
    cb_loss(f->tunable, bytes, theta, R, C, c, w);
    for (int64_t i = 0; i < R * C; i++) w[i] += c[i]; /* dL/dw */
    f->tunable->backward(bytes, theta, R, C, w, dtheta);
    double worst = 0;
    int checked = 0, zero = 0;
    double *w2 = malloc((size_t)(R * C) * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        const double h = 1e-6 * fmax(1.0, fabs(theta[i])), keep = theta[i];
        theta[i] = keep + h;
        const double fp = cb_loss(f->tunable, bytes, theta, R, C, c, w2);
        theta[i] = keep - h;
        const double fm = cb_loss(f->tunable, bytes, theta, R, C, c, w2);
        theta[i] = keep;
        const double fd = (fp - fm) / (2 * h);
        if (dtheta[i] == 0 && fd == 0) {
            zero++;
            continue;
        }
        worst = fmax(worst, fabs(fd - dtheta[i]) / fmax(1e-3, fabs(fd) + fabs(dtheta[i])));
        checked++;
    }
    printf("codebook gradient: %d parameters checked (%d unused, gradient 0), worst relative error %.2e\n", checked,
           zero, worst);
    assert_true(checked > R); /* the scales and the used codewords */
    assert_true(zero > 0);
    assert_true(worst < 1e-6);
    /* as stored = the format's decoder of the written bytes */
    f->tunable->set(bytes, theta, R, C);
    float *dec = malloc((size_t)(R * C) * sizeof(float));
    assert_int_equal(ql_format_dequantize(f, bytes, dec, R, C, 1), QL_OK);
    f->tunable->decode(bytes, theta, R, C, true, w);
    for (int64_t i = 0; i < R * C; i++) assert_true(w[i] == (double)dec[i]);
    free(dec), free(w2), free(w), free(c), free(theta), free(dtheta), free(bytes), free(wf);
}

/* A short --tune codebooks run on stories260K with four matrices in aqlm_2x8: the held-out KLD falls; the
 * exported file keeps the codes the format's quantizer chose (only codebooks and scales moved) and scores, through
 * core/infer.c, the KLD the training forward measured. A plan with no tunable format is refused in one line. */
static void test_tune_codebooks_run(void **state) {
    (void)state;
    NEED_MODEL();
    ql_plan *bad = plan_of("q4_0");
    ql_qat_opts ob = base_opts(bad, 2);
    ob.mode = QL_TUNE_CODEBOOKS;
    run(&ob, QL_ERR_UNSUPPORTED, NULL);
    assert_non_null(strstr(ql_last_error(), "aqlm_2x8"));
    assert_null(strchr(ql_last_error(), '\n'));
    ql_plan_free(bad);
    const bool quick = getenv("QL_QUICK") != NULL; /* the ASan pass: one tensor, fewer steps, a weaker bound */
    /* a few tensors (learning AQLM codebooks is the slow part), the others float */
    ql_plan *plan = ql_plan_new();
    const ql_format *f = ql_format_by_name("aqlm_2x8");
    const char *const tuned[] = {"blk.0.attn_q.weight", "blk.1.ffn_up.weight", "blk.2.attn_output.weight",
                                 "blk.3.ffn_down.weight"};
    const int n_tuned = quick ? 1 : (int)QL_ARRAY_LEN(tuned);
    for (int i = 0; i < n_tuned; i++) ql_plan_set(plan, tuned[i], f, "rtn", NULL);
    ql_qat_opts o = base_opts(plan, quick ? 10 : 30);
    o.mode = QL_TUNE_CODEBOOKS;
    o.adam.lr = 1e-3; /* 5e-4: -9 %, 2e-3: -13 % after 30 steps */
    ql_qat_result r;
    ql_train_model *tm = run(&o, QL_OK, &r);
    printf("tune codebooks: held-out KLD %.6f -> %.6f\n", r.eval_kld_start, r.eval_kld_end);
    assert_true(r.eval_kld_end < (quick ? 0.99 : 0.92) * r.eval_kld_start);
    ql_model *m2;
    assert_int_equal(ql_model_load(g_model->path, &m2), QL_OK);
    ql_train_model *tm2; /* the trained state moved onto a copy of the model (apply writes into its tensors) */
    assert_int_equal(ql_train_model_from(m2, &tm2), QL_OK);
    memcpy(tm2->w_all, tm->w_all, (size_t)tm->n_weights * sizeof(double));
    int n_coded = 0;
    for (int i = 0; i < tm->n_params; i++)
        if (tm->p[i].codes) {
            tm2->p[i].codes = tm->p[i].codes, tm2->p[i].codes_type = tm->p[i].codes_type;
            tm2->p[i].codes_bytes = tm->p[i].codes_bytes, tm->p[i].codes = NULL;
            n_coded++;
        }
    assert_int_equal(n_coded, n_tuned);
    assert_int_equal(ql_qat_apply(m2, tm2), QL_OK);
    char out[300];
    snprintf(out, sizeof out, "%s/tuned-cb.gguf", g_dir);
    ql_quant_opts qo = {.plan = plan, .n_threads = 1};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m2, &qo, out, NULL, &qs), QL_OK);
    double k = file_kld(out);
    printf("exported file: KLD %.6f (training forward %.6f)\n", k, r.eval_kld_end);
    assert_true(fabs(k - r.eval_kld_end) < 0.01 * r.eval_kld_end);
    /* codes as first chosen, codebooks moved: one tensor, compared with the format's quantizer of the original */
    ql_model *q;
    assert_int_equal(ql_model_load(out, &q), QL_OK);
    const char *name = tuned[0];
    const ql_gguf_tensor *tq = &q->gguf->tensors[ql_gguf_find_tensor(q->gguf, name)];
    const ql_gguf_tensor *t0 = &g_model->gguf->tensors[ql_gguf_find_tensor(g_model->gguf, name)];
    assert_int_equal(tq->type, f->type);
    const int64_t C = t0->ne[0], R = t0->ne[1], nb = ql_format_tensor_bytes(f, C, R);
    float *w0 = malloc((size_t)(R * C) * sizeof(float));
    assert_true(ql_tensor_to_f32(t0, w0, 1));
    uint8_t *b0 = malloc((size_t)nb);
    assert_int_equal(ql_format_quantize(f, w0, b0, R, C, NULL, 1), QL_OK);
    const int64_t theta_bytes = 2 * f->tunable->len(R, C);
    assert_memory_equal(b0 + theta_bytes, (const uint8_t *)tq->data + theta_bytes, (size_t)(nb - theta_bytes));
    assert_memory_not_equal(b0, tq->data, (size_t)theta_bytes);
    free(b0), free(w0);
    ql_model_free(q);
    ql_model_free(m2);
    ql_train_model_free(tm2);
    ql_train_model_free(tm);
    ql_plan_free(plan);
}

/* Stores `name` in m as format f: the format's quantizer of the tensor's weights, each moved by a deterministic
 * pseudo-random 30 % of its size when `perturb` (codes the decoded weights' own quantization would not give back).
 * Returns the bytes (owned by m's gguf). */
static const uint8_t *store_as(ql_model *m, const char *name, const ql_format *f, bool perturb) {
    ql_gguf_tensor *t = &m->gguf->tensors[ql_gguf_find_tensor(m->gguf, name)];
    const int64_t C = t->ne[0], R = t->ne[1], nb = ql_format_tensor_bytes(f, C, R);
    float *w = malloc((size_t)(R * C) * sizeof(float));
    assert_true(ql_tensor_to_f32(t, w, 1));
    if (perturb)
        for (int64_t j = 0; j < R * C; j++) w[j] *= 1.0f + 0.3f * (float)sin(12.9898 * (double)j);
    uint8_t *b = malloc((size_t)nb);
    assert_int_equal(ql_format_quantize(f, w, b, R, C, NULL, 1), QL_OK);
    free(w);
    ql_gguf_adopt(m->gguf, b);
    t->type = f->type, t->data = b, t->nbytes = (uint64_t)nb;
    return b;
}

/* --tune codebooks on a model already quantized (the AQLM paper's fine-tuning of a PTQ result, e.g. from
 * `quant --method aqlm`): a tensor stored in the planned format keeps exactly the model's codes (not the format
 * quantizer's codes of its decoded weights, which differ), a tensor stored in another format is quantized afresh
 * in the planned one and not counted, and distilling from the float teacher lowers the held-out KLD; the export
 * copies those tensors without asking the plan's method (aqlm) for statistics. */
static void test_tune_codebooks_from_model(void **state) {
    (void)state;
    NEED_MODEL();
    const ql_format *f2 = ql_format_by_name("aqlm_2x8"), *f1 = ql_format_by_name("aqlm_1x8");
    assert_non_null(f2);
    assert_non_null(f1);
    ql_model *m2;
    assert_int_equal(ql_model_load(g_model->path, &m2), QL_OK);
    const char *kept = "blk.0.attn_q.weight", *other = "blk.1.attn_q.weight";
    const uint8_t *src = store_as(m2, kept, f2, true);
    store_as(m2, other, f1, false);
    ql_plan *plan = ql_plan_new();
    ql_plan_set(plan, kept, f2, "rtn", NULL);
    ql_plan_set(plan, other, f2, "rtn", NULL);
    ql_qat_opts o = base_opts(plan, getenv("QL_QUICK") ? 6 : 12);
    o.mode = QL_TUNE_CODEBOOKS;
    o.adam.lr = 1e-3;
    o.teacher = g_model;
    ql_train_model *tm = NULL;
    ql_qat_result r;
    assert_int_equal(ql_qat_run(m2, &o, &tm, &r), QL_OK);
    printf("tune codebooks from the model's codes: held-out KLD %.6f -> %.6f\n", r.eval_kld_start, r.eval_kld_end);
    assert_int_equal(r.codes_from_model, 1);
    assert_true(r.eval_kld_end < r.eval_kld_start);
    const ql_gguf_tensor *t = &m2->gguf->tensors[ql_gguf_find_tensor(m2->gguf, kept)];
    const int64_t C = t->ne[0], R = t->ne[1], nb = ql_format_tensor_bytes(f2, C, R);
    const int64_t theta_bytes = 2 * f2->tunable->len(R, C);
    int n_coded = 0;
    for (int i = 0; i < tm->n_params; i++) {
        const ql_train_param *p = &tm->p[i];
        if (!p->codes) continue;
        n_coded++;
        assert_int_equal(p->codes_type, f2->type);
        if (strcmp(p->name, kept)) continue;
        assert_int_equal(p->codes_bytes, (uint64_t)nb);
        assert_memory_equal(src + theta_bytes, (const uint8_t *)p->codes + theta_bytes, (size_t)(nb - theta_bytes));
        assert_memory_not_equal(src, p->codes, (size_t)theta_bytes); /* the codebooks and scales moved */
    }
    assert_int_equal(n_coded, 2);
    /* what re-quantizing the decoded weights would have started from: other codes */
    float *wd = malloc((size_t)(R * C) * sizeof(float));
    assert_true(ql_tensor_to_f32(t, wd, 1));
    uint8_t *re = malloc((size_t)nb);
    assert_int_equal(ql_format_quantize(f2, wd, re, R, C, NULL, 1), QL_OK);
    assert_memory_not_equal(src + theta_bytes, re + theta_bytes, (size_t)(nb - theta_bytes));
    free(re), free(wd);
    /* the export under a plan whose method needs statistics (aqlm): tensors already in their planned format are
     * copied, so no statistics are asked; the float model under the same plan is refused in one line */
    assert_int_equal(ql_qat_apply(m2, tm), QL_OK);
    ql_plan *pa = ql_plan_new();
    ql_plan_set(pa, kept, f2, "aqlm", NULL);
    ql_plan_set(pa, other, f2, "aqlm", NULL);
    char out[300];
    snprintf(out, sizeof out, "%s/from-model.gguf", g_dir);
    ql_quant_opts qo = {.plan = pa, .n_threads = 1};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m2, &qo, out, NULL, &qs), QL_OK);
    ql_model *q;
    assert_int_equal(ql_model_load(out, &q), QL_OK);
    const ql_gguf_tensor *tq = &q->gguf->tensors[ql_gguf_find_tensor(q->gguf, kept)];
    assert_int_equal(tq->type, f2->type);
    assert_memory_equal(src + theta_bytes, (const uint8_t *)tq->data + theta_bytes, (size_t)(nb - theta_bytes));
    ql_model_free(q);
    snprintf(out, sizeof out, "%s/refused.gguf", g_dir);
    assert_int_equal(ql_quantize_model(g_model, &qo, out, NULL, &qs), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "needs calibration statistics"));
    assert_null(strchr(ql_last_error(), '\n'));
    ql_plan_free(pa);
    ql_train_model_free(tm);
    ql_plan_free(plan);
    ql_model_free(m2);
}

/* --self-text's sampler (ql_qat_sample_text, the KV-cached decoder): the same text for 1 and 3 threads (three
 * batches, the last one partial), and the text the plain reference sampler gives — each token drawn from
 * core/infer.c's full forward over the prefix with the sampler's documented stream per sequence (splitmix64 of
 * seed ^ mix(i + 0x5A17)), an EOS becoming BOS. Double (decoder) and float (reference) logits may put a draw on
 * the other side of a CDF boundary once in a long while; all but one sequence must match token for token. */
static uint64_t ref_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void test_self_text_sampler(void **state) {
    (void)state;
    NEED_MODEL();
    enum { NS = 35, LEN = 40 };
    const uint64_t seed = 7;
    int32_t *a = malloc(NS * LEN * sizeof(int32_t)), *b = malloc(NS * LEN * sizeof(int32_t));
    assert_int_equal(ql_qat_sample_text(g_model, NS, LEN, 1.0, seed, 1, NULL, a), QL_OK);
    assert_int_equal(ql_qat_sample_text(g_model, NS, LEN, 1.0, seed, 3, NULL, b), QL_OK);
    assert_memory_equal(a, b, NS * LEN * sizeof(int32_t));
    const int V = g_model->cfg.n_vocab;
    const int32_t bos = ql_tokenizer_bos(g_model->tok), eos = ql_tokenizer_eos(g_model->tok);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(g_model, 1, &inf), QL_OK);
    ql_scratch *sc = ql_scratch_new(inf, LEN);
    float *lg = malloc((size_t)V * sizeof(float));
    int same = 0, distinct = 0;
    for (int i = 0; i < NS; i++) {
        int32_t ref[LEN];
        uint64_t rng = ref_mix(seed ^ ref_mix((uint64_t)i + 0x5A17));
        ref[0] = bos;
        for (int t = 1; t < LEN; t++) {
            assert_int_equal(ql_forward(inf, sc, ref, t, t - 1, lg), QL_OK);
            double mx = -INFINITY, sum = 0, acc = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, lg[v]);
            for (int v = 0; v < V; v++) sum += exp(lg[v] - mx);
            rng = ref_mix(rng);
            const double u = (double)(rng >> 11) * 0x1.0p-53 * sum;
            int pick = V - 1;
            for (int v = 0; v < V; v++)
                if (u < (acc += exp(lg[v] - mx))) {
                    pick = v;
                    break;
                }
            ref[t] = pick == eos ? bos : pick;
        }
        same += !memcmp(ref, a + (size_t)i * LEN, sizeof ref);
        if (i > 0) distinct += !!memcmp(a, a + (size_t)i * LEN, sizeof ref);
    }
    printf("self-text sampler: %d of %d sequences equal to the full-forward reference, %d differ from the first\n",
           same, NS, distinct);
    assert_true(same >= NS - 1);
    assert_true(distinct >= NS - 2); /* the streams are not one stream */
    free(lg);
    ql_scratch_free(sc);
    ql_infer_free(inf);
    free(a), free(b);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_deterministic_and_resume),
        cmocka_unit_test(test_nan_keeps_checkpoint),
        cmocka_unit_test(test_training_lowers_kld_and_exports),
        cmocka_unit_test(test_lsq_gradient),
        cmocka_unit_test(test_lsq_run),
        cmocka_unit_test(test_keep_best),
        cmocka_unit_test(test_self_text_sampler),
        cmocka_unit_test(test_codebook_gradient),
        cmocka_unit_test(test_tune_codebooks_run),
        cmocka_unit_test(test_tune_codebooks_from_model),
    };
    ql_test_order_from_env(tests, QL_ARRAY_LEN(tests));
    return cmocka_run_group_tests(tests, setup, teardown);
}
