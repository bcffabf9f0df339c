/* app.h — the workbench's state as plain data, and the three functions that move it:
 *     ql_tui_handle(app, event) -> reaction flags     (keys through a binding table, tui/actions.c)
 *     ql_tui_tick(app)          -> reaction flags     (collects a finished job, refreshes progress)
 *     ql_tui_render(app, canvas)                      (state -> cell grid, tui/view_*.c)
 * Nothing here includes curses: tui/term_ncurses.c feeds events in and copies the canvas out, and
 * tests/test_tui.c drives whole sessions the same way without a terminal.
 * Long work (statistics, measurement, preview, export, ...) runs on one worker thread at a time
 * (tui/jobs.c); the worker only touches its own job record, and the main thread applies the result
 * when it collects the job, so the state below is only ever read and written by the main thread.
 * The app owns everything it points to; library objects (model, stats, calibration set) are
 * borrowed read-only by a running job and are never replaced while one runs. */
#ifndef QL_TUI_APP_H
#define QL_TUI_APP_H

#include "tui/canvas.h"
#include "pipeline/calib.h"
#include "formats/format.h"
#include "core/model.h"
#include "pipeline/plan.h"
#include "core/ppl.h"
#include "core/stats.h"

#include <limits.h>
#include <stdbool.h>

/* ---- events: printable characters are themselves; everything else is normalised to these ---- */
#define QL_KEY_ENTER '\n'
#define QL_KEY_TAB '\t'
#define QL_KEY_ESC 27
#define QL_KEY_BACKSPACE 127
#define QL_KEY_CTRL(c) ((c) & 0x1f)
enum {
    QL_KEY_UP = 0x110000, QL_KEY_DOWN, QL_KEY_LEFT, QL_KEY_RIGHT, QL_KEY_PGUP, QL_KEY_PGDN, QL_KEY_HOME, QL_KEY_END,
    QL_KEY_BTAB, QL_KEY_DEL, QL_KEY_F1, QL_KEY_RESIZE,
    QL_KEY_CLICK = 0x120000, /* + (y << 10 | x): a left click at column x, row y */
};

/* reaction flags returned by ql_tui_handle / ql_tui_tick */
enum { QL_R_NONE = 0, QL_R_REDRAW = 1, QL_R_QUIT = 2 };

typedef enum {
    QL_SCR_MODEL, QL_SCR_CALIB, QL_SCR_PLAN, QL_SCR_AUTO, QL_SCR_PREVIEW, QL_SCR_EXPORT, QL_SCR_CATALOGUE,
    QL_SCR_COUNT
} ql_tui_screen;

#define QL_TUI_PATH 1024
/* The smallest terminal the workbench draws in: every screen is laid out and tested at this size, so
 * below it meaning would be cut; the message, the docs and the check use this one figure. */
#define QL_TUI_MIN_W 80
#define QL_TUI_MIN_H 24
#define QL_TUI_MAX_CAND 24
#define QL_TUI_MAX_SOURCES 8
#define QL_TUI_MAX_HIST 64
#define QL_TUI_UNDO 128

/* ---- the plan, one row per quantizable tensor ---- */
typedef struct {
    int tensor;            /* index into model->gguf->tensors */
    int layer;             /* block number; -1 for tensors outside the blocks (token_embd, output) */
    char kind[24];         /* "attn_q", "ffn_down", "token_embd", "output" */
    int64_t ne0, ne1, n;   /* row length, rows, weights */
    const ql_format *orig; /* the stored type as a registry entry (NULL if the registry lacks it) */
    const ql_format *fmt;  /* planned format; NULL keeps the stored type */
    char method[16];       /* "rtn", "gptq", ... */
    bool pinned;           /* untouched by layer/kind/all edits, presets and the solver */
    char note[96];         /* e.g. a preset's fallback reason */
} ql_tui_row;

typedef struct {
    const ql_format **fmt; /* [n_rows] */
    char (*method)[16];
    bool *pinned;
    char source[96];
} ql_tui_snapshot;

/* What a measurement says about each (tensor, candidate) pair, in plan-row order: a view at one
 * level of the sensitivity module's ql_sense (tui/tui_sense.c builds it), which is all the Plan and
 * Auto screens read. */
typedef struct {
    int n_rows, n_cand;
    const ql_format *cand[QL_TUI_MAX_CAND];
    char cand_method[QL_TUI_MAX_CAND][16];
    double *err;                   /* [n_rows * n_cand]; NAN: the candidate does not fit / not measured */
    int level;                     /* ql_sense_level shown */
    char metric[48];               /* "KLD", "output err", "weight err" */
    bool additive_kld;             /* err are per-tensor KLD predictions: their sum predicts the KLD */
} ql_tui_sense;

typedef struct {
    int n_rows;
    ql_tui_row *rows;
    int n_groups;                  /* group 0: tensors outside blocks; group l+1: block l */
    bool *collapsed;               /* [n_groups] */
    int cursor, scroll;            /* into the visible line list */
    int col, col_scroll;           /* the candidate column under the cursor */
    int n_cand;
    const ql_format *cand[QL_TUI_MAX_CAND];
    char cand_method[QL_TUI_MAX_CAND][16]; /* "rtn" or a method: a candidate is FORMAT[+METHOD] */
    ql_tui_snapshot undo[QL_TUI_UNDO], redo[QL_TUI_UNDO];
    int n_undo, n_redo;
    char source[96];               /* "preset Q4_K_M", "auto 4.00 bpw", "plan file x.ini" */
    int edits;                     /* hand edits since source */
    int kv_ctx;                    /* context for the KV-cache figure */
    ql_plan *runtime;              /* a loaded plan's [activations], [kv] and method_opts, kept through edits and
                                      saved, previewed and exported with the plan; NULL: none */
    bool show_runtime;             /* R: the Plan screen shows the Runtime view (tui/view_runtime.c) */
} ql_tui_plan;

typedef struct {
    double target_bpw;
    bool by_size;                  /* target a file size instead */
    double target_mib;
    bool ggml_only;                /* only formats llama.cpp can load */
    const ql_format *min_io;       /* token_embd/output at least as many bits as this (NULL: no rule) */
    int field;                     /* cursor */
    int n_pareto;
    double pareto_bpw[64], pareto_err[64];
    bool has_solution;
    const ql_format **sol_fmt;     /* [n_rows] the solution (NULL: keep as stored) */
    char (*sol_method)[16];
    double sol_bpw, sol_err, sol_gap;
    bool sol_exact, sol_hit;
} ql_tui_auto;

typedef struct {
    uint64_t hash;                 /* plan + text + ctx + chunks + statistics */
    char label[72];                /* source, edited rows, methods: what tells rows apart */
    char detail[200];              /* everything, for the row under the cursor */
    double bpw;
    int64_t bytes;
    ql_ppl_result r;
    double seconds;
} ql_tui_hist;

typedef struct {
    char text[QL_TUI_PATH];
    int ctx, chunks;
    int n_hist, cursor;
    ql_tui_hist hist[QL_TUI_MAX_HIST];
    bool has_base;                 /* base log-probabilities saved for base_key */
    uint64_t base_key;
    char base_logits[QL_TUI_PATH]; /* temporary file, removed on exit */
    ql_ppl_result base;
    int last;                      /* history index of the last evaluation shown, -1 none */
} ql_tui_preview;

/* Training the current plan from the Preview screen (Q; tui/work_qat.c): the form's values and the curve of
 * the last run, copied from the job on every tick. */
#define QL_TUI_QAT_PTS 256
typedef struct {
    int steps, mode;               /* mode: ql_qat_mode (pipeline/qat.h) */
    double lr;
    bool shown;                    /* a run started: the Preview screen draws its curve */
    int n, total;                  /* points, steps of the run */
    int step[QL_TUI_QAT_PTS];      /* every step while they fit, then every other one (thinned in place) */
    double loss[QL_TUI_QAT_PTS], kld[QL_TUI_QAT_PTS]; /* kld NAN where the step was not evaluated */
    double kld_start, best_kld;
    int best_step;
} ql_tui_qat;

typedef struct {
    char path[QL_TUI_PATH];
    int format;                    /* exporter index; 0 = GGUF */
    char log[6][200];
    int n_log;
} ql_tui_export;

typedef struct {
    char path[QL_TUI_PATH];
    double weight;
} ql_tui_source;

typedef struct {
    int n_sources;
    ql_tui_source src[QL_TUI_MAX_SOURCES];
    int samples, seq_len, mode;
    uint64_t seed;
    int field;                     /* cursor: sources first, then the scalar fields */
    ql_calib_set *set;             /* built set (owned) */
    uint64_t set_key;              /* spec+options it was built from */
    double coverage, overlap;      /* distinct tokens / vocab; 8-gram overlap with the evaluation text */
    int64_t distinct, overlap_grams;
    char passages[3][160];
    ql_stats *stats;               /* owned */
    char stats_label[160];
} ql_tui_calib;

typedef struct {
    int cursor, scroll;            /* over formats then methods */
    int row;                       /* plan row whose tensor is the example (] [ move it) */
    int used_row;                  /* the row shown: row, or the next one the format fits */
    const ql_format *demo_fmt;     /* the format methods write into */
    bool has_effect;
    uint64_t effect_key;
    char effect_err[160];
    double rel_rmse, snr_db, max_abs, out_err, out_err_rtn;
    bool has_out_err;
    int hist[33];                  /* error histogram over [-hist_range, hist_range] */
    double hist_range;
    float before[48], after[48];   /* the first weights of the tensor's first row */
    int n_strip;
    bool has_rot;                  /* formats with a code basis (rotated): weights before and after it */
    int rot_before[33], rot_after[33];
    double rot_range, kurt_before, kurt_after;
    bool has_usage;                /* additive codebooks: codeword use of the format's own encoding */
    int usage[33];                 /* uses per codeword, sorted from most to least used, in 33 bins */
    int usage_used, usage_total;   /* codewords used at least once / all codewords */
} ql_tui_catalogue;

typedef enum { QL_BROWSE_NONE, QL_BROWSE_SOURCE, QL_BROWSE_TEXT, QL_BROWSE_PLAN, QL_BROWSE_MODEL } ql_tui_browse;

typedef struct {
    ql_tui_browse purpose;
    char dir[QL_TUI_PATH];
    int n, cap, cursor, scroll;
    char **names;                  /* entries; directories end in '/' */
    int64_t *sizes;
} ql_tui_browser;

typedef struct {
    bool active;
    int purpose;                   /* tui/actions.c's prompt ids */
    char label[400];               /* wrapped inside the prompt box when longer than its title */
    char buf[QL_TUI_PATH];
    int len;
    bool fresh;                    /* the text is the default: the first typed character replaces it */
} ql_tui_prompt;

/* What the status line shows of the running job (copied from the job record on every tick). */
typedef struct {
    bool running;
    char name[32], phase[64];
    int64_t done, total;
    double elapsed;
    bool has_live;                 /* preview: running estimate so far */
    bool live_is_kld;              /* of the plan (PPL, KLD, top-1); else of the base model (PPL) */
    int live_chunks;
    double base_ppl;               /* the base model's PPL over the same chunks (plan runs) */
    double live_ppl, live_ppl_err, live_kld, live_kld_err, live_top1;
} ql_tui_jobview;

struct ql_tui_job;

typedef struct ql_tui_app {
    ql_model *model;
    char model_path[QL_TUI_PATH];
    int64_t file_bytes;            /* size of the model file (0 for folders) */
    int n_threads;
    ql_tui_screen screen;
    int w, h;                      /* last render size */
    bool help;                     /* the ? overlay */
    int help_scroll;
    bool quit_armed;               /* q pressed while a job runs */
    ql_tui_prompt prompt;
    ql_tui_browser browser;
    /* Model screen */
    int m_cursor, m_scroll, m_sort; /* sort: 0 file order, 1 name, 2 bytes, 3 type */
    char m_filter[64];
    ql_tui_plan plan;
    struct ql_sense *qsense;       /* the sensitivity module's measurements (owned); NULL until measured */
    int sense_level;               /* level to measure/show: ql_sense_level, -1 = the best the data allows */
    ql_tui_sense *sense;           /* the view of qsense the screens draw (owned); NULL when none */
    ql_tui_auto autos;
    ql_tui_calib calib;
    ql_tui_preview preview;
    ql_tui_export exp;
    ql_tui_catalogue cat;
    ql_tui_qat qat;
    struct ql_tui_job *job;        /* the running job, or NULL */
    ql_tui_jobview jv;
    char msg[256];
    int msg_level;                 /* 0 info, 1 warning, 2 error */
    char tmpdir[512];
} ql_tui_app;

typedef struct {
    const char *model;             /* may be NULL: start on an empty workbench */
    const char *text;              /* evaluation text; NULL: look for a default */
    const char *calib;             /* calibration spec; NULL: the evaluation text */
    int n_threads;                 /* <= 0: ql_default_threads() */
} ql_tui_config;

/* Creates the workbench and loads cfg->model (synchronously). On failure returns the status and
 * leaves *out NULL; the message is in ql_last_error(). */
ql_status ql_tui_app_new(const ql_tui_config *cfg, ql_tui_app **out);
void ql_tui_app_free(ql_tui_app *a); /* tui/jobs.c: stops the worker, then ql_tui_app_release */
void ql_tui_app_release(ql_tui_app *a); /* frees the state; no job may be running */

unsigned ql_tui_handle(ql_tui_app *a, int event);
unsigned ql_tui_tick(ql_tui_app *a);
void ql_tui_wait(ql_tui_app *a);      /* blocks until the running job ends and is applied */
void ql_tui_render(ql_tui_app *a, ql_canvas *c);

/* Feeds a key script: plain characters, and <enter> <esc> <tab> <btab> <up> <down> <left> <right>
 * <pgup> <pgdn> <home> <end> <bs> <del> <f1> <c-x> (control keys), <wait> (wait for the job). Returns
 * the OR of the reactions. Used by tests and `qlab tui --keys`. */
unsigned ql_tui_feed(ql_tui_app *a, const char *script);

/* ---- helpers shared by the tui/ files (not for other modules) ---- */
void ql_tui_msg(ql_tui_app *a, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *ql_tui_screen_name(ql_tui_screen s);
/* Plan rows <-> ql_plan; the returned plan is owned by the caller. */
ql_plan *ql_tui_plan_build(const ql_tui_app *a);
/* Takes p's activation schemes and method options as the plan's runtime settings (copies; none: cleared). */
void ql_tui_plan_set_runtime(ql_tui_app *a, const ql_plan *p);
/* The plan's KV settings (NULL: none, the f16 figure); and setting them from "K[:V]" (every layer) or
 * "blk.N=K[:V]" (one layer), checked against the model's heads: false with a message when refused. */
const ql_kv_settings *ql_tui_runtime_kv(const ql_tui_app *a);
bool ql_tui_set_kv(ql_tui_app *a, const char *spec);
/* The activation scheme of row r's input (NULL: float). */
const ql_plan_act *ql_tui_row_act(const ql_tui_app *a, const ql_tui_row *r);
void ql_tui_plan_adopt(ql_tui_app *a, const ql_plan *p, const char *source, bool keep_pins);
uint64_t ql_tui_plan_hash(const ql_tui_app *a);
/* The format a row ends up stored in (planned, else stored); NULL if the registry lacks it. */
const ql_format *ql_tui_row_format(const ql_tui_row *r);
int64_t ql_tui_row_bytes(const ql_tui_app *a, const ql_tui_row *r);
/* Totals of the current plan: bits per weight over the plan rows, the whole file, KV cache at kv_ctx
 * (the plan's [kv] scheme, exact; f16 K and V without one), and the predicted KLD (NAN when no measurement predicts it). */
typedef struct {
    double bpw;
    int64_t file_bytes, kv_bytes, weights;
    double pred_kld;
} ql_tui_totals;
ql_tui_totals ql_tui_plan_totals(const ql_tui_app *a);
/* Candidate index of the row's format and method (else the first candidate of that format; -1 none). */
int ql_tui_cand_index(const ql_tui_app *a, const ql_tui_row *r);
bool ql_tui_cand_fits(const ql_format *f, const ql_tui_row *r);
void ql_tui_undo_push(ql_tui_app *a);
bool ql_tui_undo(ql_tui_app *a);
bool ql_tui_redo(ql_tui_app *a);
/* Visible lines of the Plan screen: >= 0 a row index, < 0 a group header (-1 - group). */
int ql_tui_plan_lines(const ql_tui_app *a, int *lines, int cap);
/* methods may be NULL (all "rtn"). */
void ql_tui_set_candidates(ql_tui_app *a, const ql_format *const *cand, char (*methods)[16], int n);
void ql_tui_sense_free(ql_tui_sense *s);
ql_status ql_tui_open_model(ql_tui_app *a, ql_model *m, const char *path); /* takes m */
uint64_t ql_tui_hash_str(uint64_t h, const char *s);
/* Copies src into dst[cap], truncating (always terminated). */
void ql_tui_copy(char *dst, size_t cap, const char *src);
/* Model screen: tensor indices after the filter, in the chosen sort order. */
int ql_tui_model_lines(const ql_tui_app *a, int *lines, int cap);
/* Calibration screen fields after the sources. */
enum { QL_CF_ADD, QL_CF_SAMPLES, QL_CF_LEN, QL_CF_SEED, QL_CF_MODE, QL_CF_TEXT, QL_CF_COUNT };
/* The tab under column x of the tab bar (-1 none); views and mouse clicks share the layout. */
int ql_tui_tab_at(int x);
int ql_tui_tab_x(int i);
/* The key table, for the help overlay: false for undocumented aliases. */
int ql_tui_binding_count(void);
bool ql_tui_binding_doc(int i, unsigned *screens, const char **key, const char **help);

#endif
