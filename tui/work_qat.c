/* work_qat.c — the Preview screen's training job (Q): QAT or tuning of the current plan with pipeline/qat.h,
 * its loss and held-out KLD handed to the screen as a live curve, Esc stopping the training with the best
 * held-out weights kept, then the trained plan evaluated like a preview (quantized to a temporary GGUF,
 * perplexity and KLD against the base model's saved log-probabilities) into the history, beside the
 * untrained plan's row. Training text: the calibration set when one is built, else the evaluation text after
 * the chunks the preview scores (never the scored text). No training arithmetic lives here. */
#include "tui/jobs.h"
#include "core/infer.h"
#include "core/kv_settings.h"
#include "core/tokenizer.h"
#include "methods/act_recipe.h"
#include "pipeline/qat.h"
#include "pipeline/quantize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const ql_model *m;    /* the app's model: read-only (the teacher and the training copy's source) */
    const ql_stats *stats;
    ql_plan *plan;
    char model_path[QL_TUI_PATH], text[QL_TUI_PATH], base_path[QL_TUI_PATH], tmp[QL_TUI_PATH];
    int ctx, chunks, n_threads, steps, mode;
    double lr;
    int32_t *tokens;      /* calibration samples copied at start (NULL: cut from the text in the job) */
    int64_t n_seq;
    int seq_len;
    volatile int stop;    /* Esc during training: stop after this step, keep the best weights */
    ql_tui_qat curve;     /* written by the worker under the job's lock */
    ql_qat_result res;
    ql_ppl_result r;
    ql_tui_hist h;
} qat_ctx;

static const char *mode_word(int mode) {
    return mode == QL_QAT_FULL ? "qat" : mode == QL_TUNE_NORMS ? "tune norms" : mode == QL_TUNE_SCALES ? "tune scales"
                                                                                                   : "tune codebooks";
}

/* the form's words for the modes, in ql_qat_mode order */
static const char *const FORM_MODES[] = {"qat", "norms", "scales", "codebooks"};

void ql_tui_qat_form(const ql_tui_app *a, char *buf, size_t cap) {
    const ql_tui_qat *q = &a->qat;
    const int mode = q->mode >= 0 && q->mode < 4 ? q->mode : 0;
    snprintf(buf, cap, "%d %g %s", q->steps > 0 ? q->steps : 30, q->lr > 0 ? q->lr : 1e-4, FORM_MODES[mode]);
}

bool ql_tui_qat_parse(ql_tui_app *a, const char *form) {
    int steps = 0, used = 0;
    double lr = 0;
    char mode[32] = "qat";
    const int got = sscanf(form, "%d %lf %n", &steps, &lr, &used);
    if (got < 2 || steps < 1 || steps > 1000000 || !(lr > 0) || !isfinite(lr) || lr > 1)
        return ql_tui_msg(a, 2, "training: STEPS LR [MODE], e.g. 30 1e-4 qat (steps from 1, lr in (0, 1])"), false;
    if (form[used] && sscanf(form + used, "%31s", mode) != 1) mode[0] = 0;
    for (int i = 0; i < 4; i++)
        if (!strcmp(mode, FORM_MODES[i])) {
            a->qat.steps = steps, a->qat.lr = lr, a->qat.mode = i;
            return true;
        }
    return ql_tui_msg(a, 2, "training mode '%s': qat, norms, scales or codebooks", mode), false;
}

/* Worker: one point per step; when the arrays are full every other point goes (the curve keeps its shape). */
static void on_step(void *user, const ql_qat_report *r) {
    ql_tui_job *j = user;
    qat_ctx *c = j->ctx;
    pthread_mutex_lock(&j->lock);
    ql_tui_qat *q = &c->curve;
    if (q->n == QL_TUI_QAT_PTS) {
        int k = 0;
        for (int i = 0; i < q->n; i += 2, k++) {
            q->step[k] = q->step[i], q->loss[k] = q->loss[i];
            q->kld[k] = isnan(q->kld[i]) && i + 1 < q->n ? q->kld[i + 1] : q->kld[i];
        }
        q->n = k;
    }
    q->step[q->n] = r->step, q->loss[q->n] = r->loss, q->kld[q->n] = r->evaluated ? r->eval_kld : NAN;
    q->n++;
    if (r->evaluated && !(r->eval_kld >= q->best_kld)) q->best_kld = r->eval_kld, q->best_step = r->step;
    pthread_mutex_unlock(&j->lock);
    char ph[64];
    snprintf(ph, sizeof ph, "step %d/%d, loss %.4f", r->step, r->steps, r->loss);
    ql_tui_job_phase(j, ph, r->step, r->steps);
    /* Esc stops the training only: the job goes on to evaluate the best weights (a second Esc cancels that) */
    if (j->cancel) c->stop = 1, j->cancel = 0;
}

static void qat_snap(ql_tui_app *a, ql_tui_job *j) { a->qat = ((qat_ctx *)j->ctx)->curve; }

/* The text's tokens after the scored chunks, cut into sequences of seq_len. */
static ql_status text_sequences(qat_ctx *c) {
    char *text = NULL;
    size_t len;
    int32_t *ids = NULL;
    int64_t n = 0;
    ql_status s = ql_read_file(c->text, &text, &len);
    if (!s) s = ql_tokenize(c->m->tok, text, len, true, &ids, &n);
    free(text);
    if (s) return s;
    const int64_t from = (int64_t)c->chunks * c->ctx, avail = n - from;
    c->seq_len = c->ctx < 256 ? c->ctx : 256;
    c->n_seq = avail > 0 ? avail / c->seq_len : 0;
    if (c->n_seq > 512) c->n_seq = 512;
    if (c->n_seq < 2) {
        free(ids);
        return ql_fail(QL_ERR_ARG, "%s: fewer than 2 sequences of %d tokens after the %d scored chunks: build a "
                                   "calibration set (Calib screen) to train on", c->text, c->seq_len, c->chunks);
    }
    c->tokens = ql_malloc((size_t)(c->n_seq * c->seq_len) * sizeof(int32_t));
    memcpy(c->tokens, ids + from, (size_t)(c->n_seq * c->seq_len) * sizeof(int32_t));
    free(ids);
    return QL_OK;
}

static void qat_run(ql_tui_job *j) {
    qat_ctx *c = j->ctx;
    ql_train_model *tm = NULL;
    ql_model *m2 = NULL, *qm = NULL;
    ql_infer *inf = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    ql_status s = QL_OK;
    ql_tui_job_stage(j, mode_word(c->mode));
    ql_tui_job_phase(j, "preparing", 0, c->steps);
    if (!c->tokens && (s = text_sequences(c))) goto out;
    /* held out: the last sequences, never trained on */
    int64_t n_eval = c->n_seq / 10 > 8 ? 8 : c->n_seq / 10 < 1 ? 1 : c->n_seq / 10;
    ql_qat_opts o = {
        .plan = c->plan, .mode = (ql_qat_mode)c->mode, .train = c->tokens, .n_train = c->n_seq - n_eval,
        .eval = c->tokens + (c->n_seq - n_eval) * c->seq_len, .n_eval = n_eval, .seq_len = c->seq_len,
        .steps = c->steps, .accum = 1,
        .adam = {.lr = c->lr, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .warmup = c->steps / 10, .min_lr_ratio = 0.1,
                 .clip = 1.0},
        .kl_weight = 1.0, .seed = 1, .n_threads = c->n_threads, .eval_every = c->steps >= 20 ? c->steps / 20 : 1,
        .keep_best = true, .recompute = -1, .report = on_step, .user = j, .cancel = &c->stop,
    };
    s = ql_qat_run(c->m, &o, &tm, &c->res);
    if (s == QL_ERR_CANCELLED && tm) s = QL_OK; /* stopped: the best held-out weights were handed back */
    pthread_mutex_lock(&j->lock);
    c->curve.kld_start = c->res.eval_kld_start;
    c->curve.best_kld = c->res.best_kld, c->curve.best_step = c->res.best_step;
    pthread_mutex_unlock(&j->lock);
    if (s) goto out;
    /* the trained plan, evaluated as a preview: a second copy of the model takes the trained weights */
    ql_tui_job_stage(j, "trained plan");
    ql_tui_job_phase(j, "quantizing", 0, 1);
    if ((s = ql_model_load(c->model_path, &m2)) || (s = ql_qat_apply(m2, tm))) goto out;
    ql_train_model_free(tm);
    tm = NULL;
    ql_quant_opts qo = {.plan = c->plan, .stats = c->stats, .n_threads = c->n_threads};
    ql_quant_stats qs;
    if ((s = ql_quantize_model(m2, &qo, c->tmp, &j->progress, &qs)) || (s = ql_model_load(c->tmp, &qm))) goto out;
    struct stat st;
    c->h.bytes = stat(c->tmp, &st) == 0 ? (int64_t)st.st_size : qs.bytes_out;
    size_t len;
    int64_t n = 0;
    if ((s = ql_read_file(c->text, &text, &len)) || (s = ql_tokenize(c->m->tok, text, len, true, &ids, &n))) goto out;
    ql_tui_job_phase(j, "loading", 0, 1);
    if ((s = ql_infer_new(qm, c->n_threads, &inf))) goto out;
    int n_act;
    if ((s = ql_infer_set_act_quant_from_file(inf, &n_act, NULL))) goto out;
    ql_kv_settings fkv;
    if ((s = ql_kv_settings_from_gguf(qm->gguf, c->tmp, qm->cfg.n_layer, &fkv))) goto out;
    if (fkv.set) s = ql_infer_set_kv_settings(inf, &fkv);
    ql_kv_settings_free(&fkv);
    if (s) goto out;
    ql_ppl_opts po = {.n_ctx = c->ctx, .n_chunks = c->chunks, .n_threads = c->n_threads, .kld_base = c->base_path};
    s = ql_perplexity(inf, ids, n, &po, &j->progress, &c->r);
out:
    if (s) ql_tui_job_fail(j, s);
    ql_train_model_free(tm);
    ql_infer_free(inf);
    ql_model_free(qm);
    ql_model_free(m2);
    unlink(c->tmp);
    free(text);
    free(ids);
}

static void qat_apply(ql_tui_app *a, ql_tui_job *j) {
    qat_ctx *c = j->ctx;
    a->qat = c->curve; /* the worker has ended: the last points without the lock */
    if (j->status) return;
    c->h.r = c->r;
    c->h.seconds = ql_time_s() - j->t0;
    char tail[48];
    snprintf(tail, sizeof tail, " +%s %d%s", mode_word(c->mode), c->res.steps_done,
             c->res.steps_done < c->steps ? " stopped" : "");
    char label[160];
    snprintf(label, sizeof label, "%.40s%s", c->h.label, tail);
    ql_tui_copy(c->h.label, sizeof c->h.label, label);
    ql_tui_preview_push(a, &c->h);
    ql_tui_msg(a, 0, "%s: held-out KLD %.5f -> %.5f (best step %d); PPL %.4f, KLD %.5f over %d chunks", mode_word(c->mode),
               c->res.eval_kld_start, c->res.best_kld, c->res.best_step, c->r.ppl, c->r.kld_mean, c->r.chunks);
}

static void qat_destroy(ql_tui_job *j) {
    qat_ctx *c = j->ctx;
    ql_plan_free(c->plan);
    free(c->tokens);
    free(c);
}

bool ql_tui_start_qat(ql_tui_app *a) {
    if (!a->model) return ql_tui_msg(a, 2, "open a model first"), false;
    if (!a->model->tok)
        return ql_model_no_tokenizer(a->model, "training needs one"), ql_tui_msg(a, 2, "%s", ql_last_error()), false;
    if (!a->preview.has_base || a->preview.base_key != ql_tui_preview_base_key(a))
        return ql_tui_msg(a, 2, "evaluate the plan first (Enter): the trained plan is compared with it"), false;
    if (a->plan.n_rows == 0) return ql_tui_msg(a, 2, "no tensors to plan"), false;
    qat_ctx *c = ql_calloc(1, sizeof *c);
    c->plan = ql_tui_plan_build(a);
    ql_status s = ql_qat_check_plan(a->model, c->plan);
    if (s) {
        ql_tui_msg(a, 2, "%s", ql_last_error());
        qat_destroy(&(ql_tui_job){.ctx = c});
        return false;
    }
    c->m = a->model;
    c->stats = a->calib.stats;
    ql_tui_copy(c->model_path, sizeof c->model_path, a->model_path);
    ql_tui_copy(c->text, sizeof c->text, a->preview.text);
    ql_tui_copy(c->base_path, sizeof c->base_path, a->preview.base_logits);
    snprintf(c->tmp, sizeof c->tmp, "%s/qat.gguf", a->tmpdir);
    c->ctx = a->preview.ctx, c->chunks = a->preview.chunks, c->n_threads = a->n_threads;
    c->steps = a->qat.steps, c->mode = a->qat.mode, c->lr = a->qat.lr;
    if (a->calib.set && a->calib.set->n_samples >= 2) { /* a copy: the set may be rebuilt while this runs */
        const ql_calib_set *cs = a->calib.set;
        c->seq_len = cs->seq_len, c->n_seq = cs->n_samples;
        c->tokens = ql_malloc((size_t)(c->n_seq * c->seq_len) * sizeof(int32_t));
        memcpy(c->tokens, cs->tokens, (size_t)(c->n_seq * c->seq_len) * sizeof(int32_t));
    } else if (c->chunks <= 0) {
        ql_tui_msg(a, 2, "the preview scores the whole text: set a number of chunks (n) or build a calibration set, "
                         "so that training does not see the scored text");
        qat_destroy(&(ql_tui_job){.ctx = c});
        return false;
    }
    ql_tui_totals t = ql_tui_plan_totals(a);
    c->h.hash = ql_tui_hash_str(ql_tui_plan_hash(a) ^ ql_tui_preview_base_key(a), mode_word(c->mode));
    c->h.bpw = t.bpw;
    c->h.bytes = t.file_bytes;
    ql_tui_copy(c->h.label, sizeof c->h.label, a->plan.source);
    snprintf(c->h.detail, sizeof c->h.detail, "%s of the plan · %d steps at lr %g · trained on %s", mode_word(c->mode),
             c->steps, c->lr, c->tokens ? "the calibration set" : "the text after the scored chunks");
    c->curve = (ql_tui_qat){.steps = c->steps, .mode = c->mode, .lr = c->lr, .shown = true, .total = c->steps,
                            .kld_start = NAN, .best_kld = NAN};
    const ql_tui_qat before = a->qat;
    a->qat = c->curve; /* before the worker starts writing c->curve */
    ql_tui_job *j = ql_tui_job_new("training", qat_run, qat_apply, qat_destroy, c);
    j->snap = qat_snap;
    if (!ql_tui_job_start(a, j)) {
        a->qat = before;
        return false;
    }
    return true;
}
