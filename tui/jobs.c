/* jobs.c — the worker thread: start, progress, cancel, collect (see jobs.h). */
#include "tui/jobs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void job_progress(void *user, int64_t done, int64_t total, const char *phase) {
    ql_tui_job *j = user;
    pthread_mutex_lock(&j->lock);
    j->done = done;
    j->total = total;
    if (phase) ql_tui_copy(j->phase, sizeof j->phase, phase);
    pthread_mutex_unlock(&j->lock);
}

ql_tui_job *ql_tui_job_new(const char *name, void (*run)(ql_tui_job *), void (*apply)(ql_tui_app *, ql_tui_job *),
                           void (*destroy)(ql_tui_job *), void *ctx) {
    ql_tui_job *j = ql_calloc(1, sizeof *j);
    ql_tui_copy(j->name, sizeof j->name, name);
    j->run = run;
    j->apply = apply;
    j->destroy = destroy;
    j->ctx = ctx;
    atomic_init(&j->finished, 0);
    pthread_mutex_init(&j->lock, NULL);
    j->progress.fn = job_progress;
    j->progress.user = j;
    j->progress.cancel = &j->cancel;
    return j;
}

static void job_free(ql_tui_job *j) {
    if (j->destroy) j->destroy(j);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

void ql_tui_job_fail(ql_tui_job *j, ql_status s) {
    j->status = s;
    ql_tui_copy(j->err, sizeof j->err, s == QL_ERR_CANCELLED ? "cancelled" : ql_last_error());
}

void ql_tui_job_phase(ql_tui_job *j, const char *phase, int64_t done, int64_t total) {
    job_progress(j, done, total, phase);
}

void ql_tui_job_stage(ql_tui_job *j, const char *stage) {
    pthread_mutex_lock(&j->lock);
    ql_tui_copy(j->stage, sizeof j->stage, stage);
    j->has_live = false;
    j->live_chunks = 0;
    j->live_n = j->live_top1 = 0;
    j->live_nll = j->live_nll2 = j->live_kld = j->live_kld2 = j->live_nllb = 0;
    pthread_mutex_unlock(&j->lock);
}

static void *job_main(void *arg) {
    ql_tui_job *j = arg;
    j->run(j);
    if (!j->status && j->cancel) ql_tui_job_fail(j, QL_ERR_CANCELLED);
    atomic_store(&j->finished, 1);
    return NULL;
}

bool ql_tui_job_start(ql_tui_app *a, ql_tui_job *j) {
    if (a->job) {
        ql_tui_msg(a, 1, "busy: %s is running (Esc cancels it)", a->job->name);
        job_free(j);
        return false;
    }
    j->t0 = ql_time_s();
    if (pthread_create(&j->th, NULL, job_main, j) != 0) {
        ql_tui_msg(a, 2, "%s: cannot start a thread", j->name);
        job_free(j);
        return false;
    }
    a->job = j;
    a->quit_armed = false;
    ql_tui_job_snapshot(a);
    if (!j->quiet) ql_tui_msg(a, 0, "%s started (Esc cancels)", j->name);
    return true;
}

void ql_tui_job_snapshot(ql_tui_app *a) {
    ql_tui_job *j = a->job;
    ql_tui_jobview *v = &a->jv;
    if (!j) {
        v->running = false;
        return;
    }
    pthread_mutex_lock(&j->lock);
    v->running = true;
    ql_tui_copy(v->name, sizeof v->name, j->name);
    if (j->stage[0]) snprintf(v->phase, sizeof v->phase, "%.24s: %.36s", j->stage, j->phase);
    else ql_tui_copy(v->phase, sizeof v->phase, j->phase);
    v->live_is_kld = j->live_plan;
    v->done = j->done;
    v->total = j->total;
    v->elapsed = ql_time_s() - j->t0;
    v->has_live = j->has_live && j->live_n > 0;
    if (v->has_live) {
        /* the same formulas ql_perplexity uses, over the chunks that have finished */
        double n = (double)j->live_n, nll = j->live_nll / n, var = j->live_nll2 / n - nll * nll;
        v->live_chunks = j->live_chunks;
        v->live_ppl = exp(nll);
        v->live_ppl_err = var > 0 && n > 1 ? sqrt(var / (n - 1)) * v->live_ppl : 0;
        v->live_kld = j->live_kld / n;
        double kv = j->live_kld2 / n - v->live_kld * v->live_kld;
        v->live_kld_err = kv > 0 && n > 1 ? sqrt(kv / (n - 1)) : 0;
        v->live_top1 = (double)j->live_top1 / n;
        v->base_ppl = j->live_plan ? exp(j->live_nllb / n) : 0; /* the base over the same chunks */
    }
    if (j->snap) j->snap(a, j);
    pthread_mutex_unlock(&j->lock);
}

bool ql_tui_job_collect(ql_tui_app *a, bool block) {
    ql_tui_job *j = a->job;
    if (!j) return false;
    if (!block && !atomic_load(&j->finished)) return false;
    pthread_join(j->th, NULL);
    a->job = NULL;
    a->jv.running = false;
    a->quit_armed = false;
    double secs = ql_time_s() - j->t0;
    if (j->status == QL_ERR_CANCELLED) ql_tui_msg(a, 1, "%s cancelled", j->name);
    else if (j->status) ql_tui_msg(a, 2, "%s failed: %s", j->name, j->err);
    else if (!j->quiet) ql_tui_msg(a, 0, "%s done in %.1fs", j->name, secs);
    if (j->apply) j->apply(a, j); /* may replace the message with a more precise one */
    job_free(j);
    return true;
}

void ql_tui_job_cancel(ql_tui_app *a) {
    if (a->job) a->job->cancel = 1;
}

/* ---- the app's life cycle around its worker (kept here so app.c needs nothing of jobs) ---- */

void ql_tui_app_free(ql_tui_app *a) {
    if (!a) return;
    if (a->job) {
        ql_tui_job_cancel(a);
        ql_tui_job_collect(a, true);
    }
    ql_tui_app_release(a);
}

unsigned ql_tui_tick(ql_tui_app *a) {
    if (!a->job) return a->screen == QL_SCR_CATALOGUE && ql_tui_cat_refresh(a) ? QL_R_REDRAW : QL_R_NONE;
    if (ql_tui_job_collect(a, false)) return QL_R_REDRAW;
    ql_tui_job_snapshot(a);
    return QL_R_REDRAW;
}

void ql_tui_wait(ql_tui_app *a) {
    if (a->job) ql_tui_job_collect(a, true);
    if (a->screen == QL_SCR_CATALOGUE && ql_tui_cat_refresh(a)) ql_tui_job_collect(a, true);
}
