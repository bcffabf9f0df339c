/* jobs.h — long work off the interface thread. A job is a record with three functions: `run` on the
 * worker thread (library calls only; it reads its own inputs, which are copies or objects the app
 * promises not to replace while a job runs, and writes its own outputs), `apply` on the main thread
 * once the worker has ended (moves the outputs into the app state), and `destroy`. Progress, the
 * cancel flag (Esc) and a preview's running estimate live in the record under its lock; the main
 * thread copies them into app->jv on every tick. One job at a time: starting a second one while the
 * first runs is refused with a message. */
#ifndef QL_TUI_JOBS_H
#define QL_TUI_JOBS_H

#include "tui/app.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct ql_tui_job {
    char name[32];
    bool quiet; /* no "done" message (the Catalogue's small jobs) */
    void (*run)(struct ql_tui_job *j);
    void (*apply)(ql_tui_app *a, struct ql_tui_job *j);
    void (*destroy)(struct ql_tui_job *j);
    void *ctx;
    pthread_t th;
    atomic_int finished;
    volatile int cancel;
    pthread_mutex_t lock;
    int64_t done, total;
    char phase[64];
    char stage[32]; /* shown before the phase: "base model", "plan" */
    double t0;
    /* running estimate (preview): sums over the chunks finished so far */
    bool has_live, live_plan; /* live_plan: the sums include KLD and top-1 (the plan's run, not the base's) */
    int live_chunks;
    int64_t live_n, live_top1;
    double live_nll, live_nll2, live_kld, live_kld2, live_nllb;
    ql_status status;
    char err[256];
    ql_progress progress; /* fn/user/cancel wired to this record */
    /* optional: copies job-specific live state into the app, called under lock on every snapshot */
    void (*snap)(ql_tui_app *a, struct ql_tui_job *j);
} ql_tui_job;

/* A job record with progress wired up; ctx is owned by the job (destroy frees it). */
ql_tui_job *ql_tui_job_new(const char *name, void (*run)(ql_tui_job *), void (*apply)(ql_tui_app *, ql_tui_job *),
                           void (*destroy)(ql_tui_job *), void *ctx);
/* Starts j on the worker thread; refuses (frees j, sets a message, returns false) when busy. */
bool ql_tui_job_start(ql_tui_app *a, ql_tui_job *j);
/* For run(): record a failure with the thread's ql_last_error(). */
void ql_tui_job_fail(ql_tui_job *j, ql_status s);
void ql_tui_job_phase(ql_tui_job *j, const char *phase, int64_t done, int64_t total);
void ql_tui_job_stage(ql_tui_job *j, const char *stage); /* also resets the running estimate */
/* Main thread: joins a finished (or, with block, any) job and applies it. Returns true if collected. */
bool ql_tui_job_collect(ql_tui_app *a, bool block);
void ql_tui_job_cancel(ql_tui_app *a);
void ql_tui_job_snapshot(ql_tui_app *a);

/* The jobs (tui/work.c). Each checks its preconditions, sets a message and returns false when it
 * cannot start. */
bool ql_tui_start_open(ql_tui_app *a, const char *path);
bool ql_tui_start_calib(ql_tui_app *a, bool then_stats);
bool ql_tui_start_stats_file(ql_tui_app *a, const char *path, bool save);
bool ql_tui_start_measure(ql_tui_app *a);
bool ql_tui_start_solve(ql_tui_app *a, bool pareto);
bool ql_tui_start_preview(ql_tui_app *a);
bool ql_tui_start_export(ql_tui_app *a);
/* QAT or tuning of the current plan (a->qat's steps, lr, mode), then its preview into the history. */
bool ql_tui_start_qat(ql_tui_app *a);
/* The training form ("STEPS LR MODE", mode qat|norms|scales|codebooks): its current text, and reading it back
 * into a->qat (false with a message when it does not parse). */
void ql_tui_qat_form(const ql_tui_app *a, char *buf, size_t cap);
bool ql_tui_qat_parse(ql_tui_app *a, const char *form);
/* The Preview screen's history: appends h (the oldest entry leaves when full) and selects it; and the key of
 * the base model's saved log-probabilities (model, text, ctx, chunks) that KLD is measured against. */
void ql_tui_preview_push(ql_tui_app *a, const ql_tui_hist *h);
uint64_t ql_tui_preview_base_key(const ql_tui_app *a);
bool ql_tui_start_effect(ql_tui_app *a);
/* Starts the Catalogue's effect job when the item, tensor or statistics changed and the worker is free. */
bool ql_tui_cat_refresh(ql_tui_app *a);

/* Catalogue helpers shared with the views: the item under the cursor is format i (i < count) or
 * method i - ql_format_count(). */
int ql_tui_cat_count(void);

/* Plain-words explanations (tui/explain.c): a paragraph for a format or a method. */
const char *ql_tui_explain_format(const ql_format *f);
const char *ql_tui_explain_method(const char *name);

#endif
