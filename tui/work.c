/* work.c — the workbench's long jobs, each a thin sequence of library calls (see jobs.h): open a
 * model, build a calibration set and collect statistics, load/save statistics, measure candidate
 * errors, solve for a target, preview a plan (quantize to a temporary GGUF with ql_quantize_model,
 * then ql_perplexity against the base model's saved log-probabilities), export, and the Catalogue's
 * effect of one format or method on one real tensor. No quantization arithmetic lives here. */
#include "tui/jobs.h"
#include "core/kv_settings.h"
#include "tui/tui_sense.h"
#include "sensitivity/allocate.h"
#include "sensitivity/sense.h"
#include "kernels/ggml_types.h"
#include "core/infer.h"
#include "core/output_error.h"
#include "methods/method.h"
#include "methods/act_recipe.h"
#include "pipeline/quantize.h"
#include "pipeline/export.h"
#include "core/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- open a model */

typedef struct {
    char path[QL_TUI_PATH];
    ql_model *m;
} open_ctx;

static void open_run(ql_tui_job *j) {
    open_ctx *c = j->ctx;
    ql_tui_job_phase(j, "loading", 0, 1);
    ql_status s = ql_model_load(c->path, &c->m);
    if (s) ql_tui_job_fail(j, s);
}

static void open_apply(ql_tui_app *a, ql_tui_job *j) {
    open_ctx *c = j->ctx;
    if (j->status || !c->m) return;
    ql_tui_open_model(a, c->m, c->path);
    c->m = NULL;
    ql_tui_msg(a, 0, "opened %s: %d tensors to plan", a->model_path, a->plan.n_rows);
}

static void open_destroy(ql_tui_job *j) {
    open_ctx *c = j->ctx;
    ql_model_free(c->m);
    free(c);
}

bool ql_tui_start_open(ql_tui_app *a, const char *path) {
    open_ctx *c = ql_calloc(1, sizeof *c);
    ql_tui_copy(c->path, sizeof c->path, path);
    return ql_tui_job_start(a, ql_tui_job_new("open model", open_run, open_apply, open_destroy, c));
}

/* ---------------------------------------------------------------- calibration set + statistics */

static void spec_append(char *spec, size_t cap, const char *path, double w) {
    size_t l = strlen(spec);
    if (l && l + 1 < cap) spec[l++] = '+';
    for (const char *p = path; *p && l + 2 < cap; p++) {
        if (*p == '+' || *p == '@' || *p == '\\') spec[l++] = '\\';
        spec[l++] = *p;
    }
    spec[l] = 0;
    char wb[32];
    snprintf(wb, sizeof wb, "@%g", w);
    if (l + strlen(wb) + 1 < cap) strcat(spec, wb);
}

typedef struct {
    char spec[4 * QL_TUI_PATH + 64];
    char eval[QL_TUI_PATH];
    ql_calib_opts opts;
    const ql_model *m;
    int n_threads;
    bool then_stats;
    const ql_calib_set *borrowed; /* the app's set when it is already built for this spec */
    ql_calib_set *set;            /* built here */
    uint64_t key;
    int64_t distinct, grams;
    double overlap;
    bool overlap_done;
    char passages[3][160];
    ql_stats *stats;
} calib_ctx;

static uint64_t calib_key(const ql_tui_app *a, const char *spec) {
    char b[96];
    snprintf(b, sizeof b, "%d/%d/%d/%llu", a->calib.samples, a->calib.seq_len, a->calib.mode,
             (unsigned long long)a->calib.seed);
    return ql_tui_hash_str(ql_tui_hash_str(ql_tui_hash_str(0, a->model_path), spec), b);
}

static void passage(const ql_tokenizer *tok, const int32_t *ids, int n, char *out, size_t cap) {
    size_t l = 0;
    out[0] = 0;
    for (int i = 0; i < n && l + 1 < cap; i++) {
        char piece[64];
        int k = ql_token_to_piece(tok, ids[i], piece, sizeof piece);
        for (int j = 0; j < k && j < (int)sizeof piece && l + 1 < cap; j++) {
            unsigned char ch = (unsigned char)piece[j];
            out[l++] = ch == '\n' || ch == '\r' || ch == '\t' ? ' ' : (char)ch;
        }
    }
    out[l] = 0;
}

static void calib_run(ql_tui_job *j) {
    calib_ctx *c = j->ctx;
    ql_status s = QL_OK;
    const ql_calib_set *set = c->borrowed;
    if (!set) {
        ql_tui_job_phase(j, "reading sources", 0, 1);
        c->opts.progress = &j->progress;
        if ((s = ql_calib_build(c->spec, c->m->tok, &c->opts, &c->set))) {
            ql_tui_job_fail(j, s);
            return;
        }
        set = c->set;
        c->distinct = ql_calib_distinct_tokens(set, c->m->cfg.n_vocab);
        for (int i = 0; i < 3 && i < set->n_samples; i++) {
            int first = set->bos >= 0 ? 1 : 0;
            passage(c->m->tok, set->tokens + (size_t)i * set->seq_len + first,
                    set->seq_len - first < 48 ? set->seq_len - first : 48, c->passages[i], sizeof c->passages[i]);
        }
    }
    /* the overlap is against the evaluation text as it is now, also for a set built before it changed */
    char *text;
    size_t len;
    int32_t *ids = NULL;
    int64_t n = 0;
    c->overlap = -1;
    if (c->eval[0] && !ql_read_file(c->eval, &text, &len)) {
        if (!ql_tokenize(c->m->tok, text, len, false, &ids, &n)) c->overlap = ql_calib_ngram_overlap(set, ids, n, 8, &c->grams);
        free(text);
        free(ids);
    }
    c->overlap_done = true;
    if (!c->then_stats || j->cancel) return;
    ql_infer *inf = NULL;
    ql_tui_job_phase(j, "preparing the forward pass", 0, 1);
    if ((s = ql_infer_new(c->m, c->n_threads, &inf))) {
        ql_tui_job_fail(j, s);
        return;
    }
    ql_stats_opts so = {.hessian = true, .output = true, .n_threads = c->n_threads};
    s = ql_stats_collect(inf, set->tokens, set->n_samples, set->seq_len, &so, &j->progress, &c->stats);
    ql_infer_free(inf);
    if (s) {
        ql_tui_job_fail(j, s);
        return;
    }
    c->stats->source = ql_strdup(c->spec);
}

static void calib_apply(ql_tui_app *a, ql_tui_job *j) {
    calib_ctx *c = j->ctx;
    if (c->set) {
        ql_calib_free(a->calib.set);
        a->calib.set = c->set;
        c->set = NULL;
        a->calib.set_key = c->key;
        a->calib.distinct = c->distinct;
        a->calib.coverage = c->m->cfg.n_vocab ? (double)c->distinct / c->m->cfg.n_vocab : 0;
        memcpy(a->calib.passages, c->passages, sizeof c->passages);
    }
    if (c->overlap_done) {
        a->calib.overlap = c->overlap;
        a->calib.overlap_grams = c->grams;
    }
    if (c->stats) {
        ql_stats_free(a->calib.stats);
        a->calib.stats = c->stats;
        c->stats = NULL;
        snprintf(a->calib.stats_label, sizeof a->calib.stats_label, "%d samples x %d tokens of the set above",
                 a->calib.set ? a->calib.set->n_samples : 0, a->calib.set ? a->calib.set->seq_len : 0);
        ql_tui_msg(a, 0, "statistics: %d linear inputs over %lld tokens (Hessians kept for GPTQ/AWQ)",
                   a->calib.stats->n, (long long)(a->calib.stats->n_sequences * a->calib.stats->seq_len));
    } else if (!j->status && a->calib.set)
        ql_tui_msg(a, 0, "calibration set: %d samples x %d tokens, %.1f%% of the vocabulary", a->calib.set->n_samples,
                   a->calib.set->seq_len, 100 * a->calib.coverage);
}

static void calib_destroy(ql_tui_job *j) {
    calib_ctx *c = j->ctx;
    ql_calib_free(c->set);
    ql_stats_free(c->stats);
    free(c);
}

bool ql_tui_start_calib(ql_tui_app *a, bool then_stats) {
    if (!a->model) return ql_tui_msg(a, 2, "open a model first"), false;
    if (!a->model->tok)
        return ql_model_no_tokenizer(a->model, "calibration text needs one"), ql_tui_msg(a, 2, "%s", ql_last_error()), false;
    if (!a->calib.n_sources) return ql_tui_msg(a, 2, "add a calibration source first (a on the Calib screen)"), false;
    calib_ctx *c = ql_calloc(1, sizeof *c);
    for (int i = 0; i < a->calib.n_sources; i++)
        spec_append(c->spec, sizeof c->spec, a->calib.src[i].path, a->calib.src[i].weight);
    ql_tui_copy(c->eval, sizeof c->eval, a->preview.text);
    c->opts = (ql_calib_opts){.n_samples = a->calib.samples, .seq_len = a->calib.seq_len, .seed = a->calib.seed,
                              .mode = a->calib.mode};
    c->m = a->model;
    c->n_threads = a->n_threads;
    c->then_stats = then_stats;
    c->key = calib_key(a, c->spec);
    if (a->calib.set && a->calib.set_key == c->key) c->borrowed = a->calib.set;
    return ql_tui_job_start(a, ql_tui_job_new(then_stats ? "statistics" : "calibration set", calib_run, calib_apply,
                                              calib_destroy, c));
}

/* ---------------------------------------------------------------- statistics files */

typedef struct {
    char path[QL_TUI_PATH];
    bool save;
    const ql_stats *src;
    const ql_model *m; /* loading: the statistics must have been collected on it */
    ql_stats *loaded;
} statsfile_ctx;

static void statsfile_run(ql_tui_job *j) {
    statsfile_ctx *c = j->ctx;
    ql_tui_job_phase(j, c->save ? "writing" : "reading", 0, 1);
    ql_status s = c->save ? ql_stats_save(c->src, c->path) : ql_stats_load_for_model(c->path, c->m, QL_STATS_SAME_MODEL, &c->loaded);
    if (s) ql_tui_job_fail(j, s);
}

static void statsfile_apply(ql_tui_app *a, ql_tui_job *j) {
    statsfile_ctx *c = j->ctx;
    if (j->status) return;
    if (c->save) {
        ql_tui_msg(a, 0, "statistics saved to %s (qlab quant --stats reads it)", c->path);
        return;
    }
    ql_stats_free(a->calib.stats);
    a->calib.stats = c->loaded;
    c->loaded = NULL;
    snprintf(a->calib.stats_label, sizeof a->calib.stats_label, "file %.150s", c->path);
    ql_tui_msg(a, 0, "statistics loaded: %d linear inputs", a->calib.stats->n);
}

static void statsfile_destroy(ql_tui_job *j) {
    statsfile_ctx *c = j->ctx;
    ql_stats_free(c->loaded);
    free(c);
}

bool ql_tui_start_stats_file(ql_tui_app *a, const char *path, bool save) {
    if (save && !a->calib.stats) return ql_tui_msg(a, 2, "no statistics to save: run them first (r)"), false;
    statsfile_ctx *c = ql_calloc(1, sizeof *c);
    ql_tui_copy(c->path, sizeof c->path, path);
    c->save = save;
    c->src = a->calib.stats;
    c->m = a->model;
    return ql_tui_job_start(a, ql_tui_job_new(save ? "save statistics" : "load statistics", statsfile_run,
                                              statsfile_apply, statsfile_destroy, c));
}

/* ---------------------------------------------------------------- measurement */

typedef struct {
    const ql_model *m;
    const ql_stats *stats;
    const ql_calib_set *set; /* borrowed: tokens for the output and KLD levels */
    int32_t *eval;           /* owned: the evaluation text's chunks, when there is no calibration set */
    int64_t eval_seq;
    int eval_len;
    ql_sense *s;             /* taken from the app (resumed) or made here; handed back in apply */
    int level, n_threads;
} measure_ctx;

/* Without a calibration set, the first chunks of the evaluation text, cut as the Preview cuts them (ctx
 * tokens each, BOS first): at most the Preview's chunk count and 16, so a measurement costs what 16 preview
 * chunks per cell cost. Only a prefix of the file is tokenized (enough bytes for those tokens). */
#define QL_TUI_EVAL_SENSE_CHUNKS 16
static ql_status eval_chunks(const ql_tui_app *a, int32_t **out, int64_t *n_seq, int *seq_len) {
    *out = NULL;
    char *text;
    size_t len;
    ql_status st = ql_read_file(a->preview.text, &text, &len);
    if (st) return st;
    const int ctx = a->preview.ctx;
    int want = a->preview.chunks > 0 && a->preview.chunks < QL_TUI_EVAL_SENSE_CHUNKS ? a->preview.chunks
                                                                                   : QL_TUI_EVAL_SENSE_CHUNKS;
    size_t cap = (size_t)want * (size_t)ctx * 32; /* bytes: far more than a token ever takes */
    if (len > cap) {
        len = cap;
        while (len > 0 && text[len - 1] != ' ' && text[len - 1] != '\n') len--; /* not inside a word */
    }
    int32_t *ids = NULL;
    int64_t n = 0;
    st = ql_tokenize(a->model->tok, text, len, true, &ids, &n);
    free(text);
    if (st) return st;
    int64_t k = n / ctx < want ? n / ctx : want;
    if (k < 1) {
        free(ids);
        return ql_fail(QL_ERR_ARG, "%s: fewer than %d tokens (one chunk of the Preview's context)", a->preview.text, ctx);
    }
    const int32_t bos = ql_tokenizer_bos(a->model->tok);
    for (int64_t i = 0; i < k && bos >= 0; i++) ids[i * ctx] = bos;
    *out = ids;
    *n_seq = k;
    *seq_len = ctx;
    return QL_OK;
}

static void measure_run(ql_tui_job *j) {
    measure_ctx *c = j->ctx;
    ql_sense_opts o = {.level = c->level, .n_threads = c->n_threads, .stats = c->stats};
    if (c->set) {
        o.tokens = c->set->tokens;
        o.n_seq = c->set->n_samples;
        o.seq_len = c->set->seq_len;
    } else if (c->eval) {
        o.tokens = c->eval;
        o.n_seq = c->eval_seq;
        o.seq_len = c->eval_len;
    }
    ql_status s = ql_sense_measure(c->s, c->m, &o, &j->progress);
    if (s) ql_tui_job_fail(j, s);
}

static void measure_apply(ql_tui_app *a, ql_tui_job *j) {
    measure_ctx *c = j->ctx;
    /* even a cancelled run keeps what it measured: x again resumes */
    ql_sense_free(a->qsense);
    a->qsense = c->s;
    c->s = NULL;
    ql_tui_sense_refresh(a);
    if (!j->status)
        ql_tui_msg(a, 0, "measured %d tensors x %d candidates at the %s level in %.1fs", a->qsense->n_tensors,
                   a->qsense->n_cand, ql_sense_level_name(c->level), ql_time_s() - j->t0);
}

static void measure_destroy(ql_tui_job *j) {
    measure_ctx *c = j->ctx;
    ql_sense_free(c->s);
    free(c->eval);
    free(c);
}

bool ql_tui_start_measure(ql_tui_app *a) {
    if (!a->model) return ql_tui_msg(a, 2, "open a model first"), false;
    if (!a->plan.n_cand) return ql_tui_msg(a, 2, "no candidate formats (C sets them)"), false;
    int level = ql_tui_sense_level(a);
    if (level > QL_SENSE_WEIGHT && !a->calib.set && !ql_tui_eval_text_usable(a)) {
        ql_tui_msg(a, 1, "the %s level needs tokens: build a calibration set on the Calib screen (b) or choose an "
                   "evaluation text on the Preview screen (t)", ql_sense_level_name(level));
        return false;
    }
    for (int k = 0; k < a->plan.n_cand; k++) {
        const ql_method *me = ql_method_by_name(a->plan.cand_method[k]);
        if (me && me->needs && !a->calib.stats)
            return ql_tui_msg(a, 2, "candidate %s+%s needs statistics: run them on the Calib screen (r)",
                              a->plan.cand[k]->name, me->name), false;
    }
    char *cands[QL_TUI_MAX_CAND];
    for (int k = 0; k < a->plan.n_cand; k++) {
        char spec[96];
        ql_tui_cand_spec(a, k, spec, sizeof spec);
        cands[k] = ql_strdup(spec);
    }
    measure_ctx *c = ql_calloc(1, sizeof *c);
    c->m = a->model;
    c->stats = a->calib.stats;
    c->set = level > QL_SENSE_WEIGHT ? a->calib.set : NULL;
    c->level = level;
    c->n_threads = a->n_threads;
    ql_status st = ql_sense_new(a->model, cands, a->plan.n_cand, &c->s);
    for (int k = 0; k < a->plan.n_cand; k++) free(cands[k]);
    if (!st && level > QL_SENSE_WEIGHT && !c->set) st = eval_chunks(a, &c->eval, &c->eval_seq, &c->eval_len);
    if (st) {
        ql_tui_msg(a, 2, "%s", ql_last_error());
        ql_sense_free(c->s);
        free(c->eval);
        free(c);
        return false;
    }
    char calib[QL_TUI_PATH + 64] = "";
    if (c->set) snprintf(calib, sizeof calib, "calibration set");
    else if (c->eval)
        snprintf(calib, sizeof calib, "evaluation text %.*s (%lld x %d)", QL_TUI_PATH - 1, a->preview.text,
                 (long long)c->eval_seq, c->eval_len);
    const int32_t *tok = c->set ? c->set->tokens : c->eval;
    ql_sense_set_context(c->s, calib, tok, c->set ? c->set->n_samples : c->eval_seq,
                         c->set ? c->set->seq_len : c->eval_len, a->calib.stats ? a->calib.stats_label : "", "",
                         level);
    c->s->file_bytes = a->file_bytes;
    if (a->qsense && !a->job) { /* resume: keep every cell already measured on the same data */
        int n = 0;
        if (!ql_sense_adopt(c->s, a->qsense, &n) && n) ql_log(3, "tui: %d measured cells kept", n);
    }
    return ql_tui_job_start(a, ql_tui_job_new("sensitivity", measure_run, measure_apply, measure_destroy, c));
}

/* ---------------------------------------------------------------- solve / Pareto */

typedef struct {
    const ql_sense *s;  /* borrowed from the app (nothing replaces it while a job runs) */
    ql_alloc_opts o;
    char **rules;
    int n_rules;
    bool pareto;
    ql_alloc_result r;
    bool has_r;
    ql_frontier_point *pts;
    int n_pts;
} solve_ctx;

static void solve_run(ql_tui_job *j) {
    solve_ctx *c = j->ctx;
    ql_tui_job_phase(j, c->pareto ? "frontier" : "allocating", 0, 1);
    ql_status s;
    if (c->pareto) s = ql_alloc_frontier(c->s, &c->o, 48, &c->pts, &c->n_pts);
    else if (!(s = ql_alloc_check_target(c->s, &c->o))) s = ql_allocate(c->s, &c->o, &c->r); /* as qlab plan */
    if (s) ql_tui_job_fail(j, s);
    else c->has_r = !c->pareto;
}

static void solve_apply(ql_tui_app *a, ql_tui_job *j) {
    solve_ctx *c = j->ctx;
    ql_tui_auto *u = &a->autos;
    if (j->status) {
        if (!c->pareto) u->has_solution = false; /* the old solution is not the answer to this target */
        return;
    }
    if (c->pareto) {
        u->n_pareto = c->n_pts < 64 ? c->n_pts : 64;
        for (int i = 0; i < u->n_pareto; i++) {
            u->pareto_bpw[i] = c->pts[i].bpw;
            u->pareto_err[i] = c->pts[i].err;
        }
        ql_tui_msg(a, 0, "frontier: %d plans from %.2f to %.2f bits/weight", u->n_pareto, u->n_pareto ? u->pareto_bpw[0] : 0,
                   u->n_pareto ? u->pareto_bpw[u->n_pareto - 1] : 0);
        return;
    }
    int n = a->plan.n_rows;
    free(u->sol_fmt);
    free(u->sol_method);
    u->sol_fmt = ql_calloc((size_t)(n ? n : 1), sizeof *u->sol_fmt);
    u->sol_method = ql_calloc((size_t)(n ? n : 1), sizeof *u->sol_method);
    for (int i = 0; i < n; i++) {
        const ql_tui_row *rw = &a->plan.rows[i];
        u->sol_fmt[i] = rw->fmt;
        ql_tui_copy(u->sol_method[i], sizeof u->sol_method[i], rw->method);
        int t = ql_sense_find_tensor(c->s, a->model->gguf->tensors[rw->tensor].name);
        if (t < 0 || t >= c->r.n) continue;
        const char *spec = c->r.c[t].spec;
        const ql_format *f = NULL;
        char mbuf[64] = "rtn";
        if (spec && ql_parse_format_method(spec, &f, mbuf, sizeof mbuf)) continue;
        u->sol_fmt[i] = spec ? f : NULL;
        ql_tui_copy(u->sol_method[i], sizeof u->sol_method[i], mbuf);
    }
    u->has_solution = true;
    u->sol_bpw = c->r.bpw;
    u->sol_err = c->r.err;
    u->sol_gap = c->r.err - c->r.lower_bound;
    u->sol_exact = c->r.exact;
    u->sol_hit = c->r.target_hit;
    if (c->r.uniform)
        ql_tui_msg(a, 1, "solution: %s everywhere, %.3f bits/weight: predicted %s %.5g, better than any mix within "
                   "the target; a accepts it", c->r.uniform, c->r.bpw, ql_sense_level_name(c->r.metric), c->r.err);
    else
        ql_tui_msg(a, 0, "solution: %.3f bits/weight, predicted %s %.5g%s; a accepts it into the plan", c->r.bpw,
                   ql_sense_level_name(c->r.metric), c->r.err, c->r.exact ? " (optimal)" : "");
}

static void solve_destroy(ql_tui_job *j) {
    solve_ctx *c = j->ctx;
    if (c->has_r) ql_alloc_result_free(&c->r);
    free(c->pts);
    ql_tui_rules_free(c->rules, c->n_rules);
    free(c);
}

bool ql_tui_start_solve(ql_tui_app *a, bool pareto) {
    if (!a->model) return ql_tui_msg(a, 2, "open a model first"), false;
    if (!a->qsense || !a->sense) return ql_tui_msg(a, 2, "measure first: x on the Plan or Auto screen"), false;
    solve_ctx *c = ql_calloc(1, sizeof *c);
    c->s = a->qsense;
    c->pareto = pareto;
    c->n_rules = ql_tui_rules(a, &c->rules);
    c->o.rules = c->rules;
    c->o.n_rules = c->n_rules;
    c->o.metric = a->sense->level;
    if (a->autos.by_size) c->o.target_bytes = (int64_t)(a->autos.target_mib * 1048576.0);
    else c->o.target_bpw = a->autos.target_bpw;
    return ql_tui_job_start(a, ql_tui_job_new(pareto ? "frontier" : "solve", solve_run, solve_apply, solve_destroy, c));
}

/* ---------------------------------------------------------------- preview */

typedef struct {
    const ql_model *m;
    const ql_stats *stats;
    ql_plan *plan;
    char text[QL_TUI_PATH], base_path[QL_TUI_PATH], tmp[QL_TUI_PATH];
    int ctx, chunks, n_threads;
    bool need_base;
    uint64_t base_key;
    ql_ppl_result base, r;
    ql_tui_hist h;
} preview_ctx;

static void on_chunk(void *user, int chunk, int64_t n, double nll, double nll2, double kld, double kld2, int64_t top1,
                     double nll_base) {
    ql_tui_job *j = user;
    (void)chunk;
    pthread_mutex_lock(&j->lock);
    j->has_live = true;
    j->live_chunks++;
    j->live_n += n;
    j->live_nll += nll;
    j->live_nll2 += nll2;
    j->live_kld += kld;
    j->live_kld2 += kld2;
    j->live_top1 += top1;
    j->live_nllb += nll_base;
    pthread_mutex_unlock(&j->lock);
}

static void preview_run(ql_tui_job *j) {
    preview_ctx *c = j->ctx;
    char *text = NULL;
    size_t len;
    int32_t *ids = NULL;
    int64_t n = 0;
    ql_infer *inf = NULL;
    ql_model *qm = NULL;
    ql_status s;
    ql_tui_job_phase(j, "tokenizing", 0, 1);
    if ((s = ql_read_file(c->text, &text, &len)) || (s = ql_tokenize(c->m->tok, text, len, true, &ids, &n))) goto out;
    ql_ppl_opts po = {.n_ctx = c->ctx, .n_chunks = c->chunks, .n_threads = c->n_threads};
    po.on_chunk = on_chunk;
    po.on_chunk_user = j;
    if (c->need_base) {
        ql_tui_job_stage(j, "base model");
        po.save_logits = c->base_path;
        if ((s = ql_infer_new(c->m, c->n_threads, &inf)) || (s = ql_perplexity(inf, ids, n, &po, &j->progress, &c->base)))
            goto out;
        ql_infer_free(inf);
        inf = NULL;
        po.save_logits = NULL;
    }
    if (c->plan->n == 0) { /* the model as stored: the base run is the answer */
        c->r = c->base;
        c->r.has_kld = true;
        c->r.kld_mean = c->r.kld_stderr = c->r.kld_p99 = c->r.kld_max = 0;
        c->r.top1_agreement = 1;
        c->r.ppl_base = c->base.ppl;
        if (!c->need_base) { /* base result known: nothing to run */
            s = QL_OK;
            goto out;
        }
        goto out;
    }
    ql_quant_opts qo = {.plan = c->plan, .stats = c->stats, .n_threads = c->n_threads};
    ql_quant_stats qs;
    ql_tui_job_stage(j, "plan");
    ql_tui_job_phase(j, "quantizing", 0, 1);
    if ((s = ql_quantize_model(c->m, &qo, c->tmp, &j->progress, &qs))) goto out;
    if ((s = ql_model_load(c->tmp, &qm))) goto out;
    struct stat st;
    c->h.bytes = stat(c->tmp, &st) == 0 ? (int64_t)st.st_size : qs.bytes_out;
    ql_tui_job_phase(j, "loading", 0, 1);
    if ((s = ql_infer_new(qm, c->n_threads, &inf))) goto out;
    int n_act; /* the plan's activation schemes, as `qlab ppl` applies them to the exported file */
    if ((s = ql_infer_set_act_quant_from_file(inf, &n_act, NULL))) goto out;
    ql_kv_settings fkv; /* and its KV cache (qlab.kv.*), as `qlab ppl` runs it */
    if ((s = ql_kv_settings_from_gguf(qm->gguf, c->tmp, qm->cfg.n_layer, &fkv))) goto out;
    if (fkv.set) s = ql_infer_set_kv_settings(inf, &fkv);
    ql_kv_settings_free(&fkv);
    if (s) goto out;
    po.kld_base = c->base_path;
    pthread_mutex_lock(&j->lock);
    j->live_plan = true;
    pthread_mutex_unlock(&j->lock);
    s = ql_perplexity(inf, ids, n, &po, &j->progress, &c->r);
out:
    if (s) ql_tui_job_fail(j, s);
    ql_infer_free(inf);
    ql_model_free(qm);
    unlink(c->tmp);
    free(text);
    free(ids);
}

static void preview_apply(ql_tui_app *a, ql_tui_job *j) {
    preview_ctx *c = j->ctx;
    if (c->need_base && (!j->status || c->base.chunks > 0)) {
        a->preview.has_base = c->base.chunks > 0;
        a->preview.base_key = c->base_key;
        a->preview.base = c->base;
    }
    if (j->status) return;
    c->h.r = c->r;
    c->h.seconds = ql_time_s() - j->t0;
    ql_tui_preview_push(a, &c->h);
    ql_tui_msg(a, 0, "PPL %.4f +/- %.4f, KLD %.5f, top-1 %.1f%% (%d chunks of %d)", c->r.ppl, c->r.ppl_stderr,
               c->r.kld_mean, 100 * c->r.top1_agreement, c->r.chunks, c->ctx);
}

void ql_tui_preview_push(ql_tui_app *a, const ql_tui_hist *h) {
    ql_tui_preview *p = &a->preview;
    int k = p->n_hist;
    if (k == QL_TUI_MAX_HIST) {
        memmove(p->hist, p->hist + 1, (QL_TUI_MAX_HIST - 1) * sizeof *p->hist);
        k--;
    }
    p->hist[k] = *h;
    p->n_hist = k + 1;
    p->last = p->cursor = k;
}

static void preview_destroy(ql_tui_job *j) {
    preview_ctx *c = j->ctx;
    ql_plan_free(c->plan);
    free(c);
}

uint64_t ql_tui_preview_base_key(const ql_tui_app *a) {
    char b[64];
    snprintf(b, sizeof b, "%d/%d", a->preview.ctx, a->preview.chunks);
    return ql_tui_hash_str(ql_tui_hash_str(ql_tui_hash_str(0, a->model_path), a->preview.text), b);
}

/* What a preview result depends on: the plan, the text, ctx, chunks, and the statistics when a
 * data-aware method uses them. */
static uint64_t preview_key(const ql_tui_app *a) {
    uint64_t h = ql_tui_plan_hash(a) ^ ql_tui_preview_base_key(a);
    bool data = false;
    for (int i = 0; i < a->plan.n_rows; i++) data |= strcmp(a->plan.rows[i].method, "rtn") != 0;
    if (data) h = ql_tui_hash_str(h, a->calib.stats_label);
    return h;
}

bool ql_tui_start_preview(ql_tui_app *a) {
    if (!a->model) return ql_tui_msg(a, 2, "open a model first"), false;
    if (!a->model->tok)
        return ql_model_no_tokenizer(a->model, "perplexity needs one"), ql_tui_msg(a, 2, "%s", ql_last_error()), false;
    if (!a->preview.text[0]) return ql_tui_msg(a, 2, "choose a text first (t)"), false;
    uint64_t key = preview_key(a);
    for (int i = a->preview.n_hist - 1; i >= 0; i--)
        if (a->preview.hist[i].hash == key) {
            a->preview.last = a->preview.cursor = i;
            ql_tui_msg(a, 0, "unchanged plan: cached result #%d (PPL %.4f)", i + 1, a->preview.hist[i].r.ppl);
            return true;
        }
    preview_ctx *c = ql_calloc(1, sizeof *c);
    c->m = a->model;
    c->stats = a->calib.stats;
    c->plan = ql_tui_plan_build(a);
    for (int i = 0; i < c->plan->n; i++) {
        const ql_method *me = ql_method_by_name(c->plan->e[i].method);
        if (me && me->needs && !a->calib.stats) {
            ql_tui_msg(a, 2, "%s uses %s, which needs statistics: run them on the Calib screen (r)",
                       c->plan->e[i].tensor, me->name);
            preview_destroy(&(ql_tui_job){.ctx = c});
            return false;
        }
    }
    ql_tui_copy(c->text, sizeof c->text, a->preview.text);
    c->ctx = a->preview.ctx;
    c->chunks = a->preview.chunks;
    c->n_threads = a->n_threads;
    c->base_key = ql_tui_preview_base_key(a);
    c->need_base = !a->preview.has_base || a->preview.base_key != c->base_key;
    if (!c->need_base) c->base = a->preview.base;
    snprintf(c->base_path, sizeof c->base_path, "%s/base.logp", a->tmpdir);
    ql_tui_copy(a->preview.base_logits, sizeof a->preview.base_logits, c->base_path);
    snprintf(c->tmp, sizeof c->tmp, "%s/preview.gguf", a->tmpdir);
    ql_tui_totals t = ql_tui_plan_totals(a);
    c->h.hash = key;
    c->h.bpw = t.bpw;
    c->h.bytes = t.file_bytes;
    /* what tells history rows apart: the plan's source, how many rows were edited, the methods used;
     * the text and context go in the detail line (the same for most rows of a session) */
    char methods[64] = "";
    for (int i = 0; i < a->plan.n_rows; i++) {
        const char *me = a->plan.rows[i].method;
        if (!me[0] || !strcmp(me, "rtn") || strstr(methods, me)) continue;
        size_t l = strlen(methods);
        snprintf(methods + l, sizeof methods - l, "%s%s", l ? "," : "", me);
    }
    char edited[24] = "";
    if (a->plan.edits) snprintf(edited, sizeof edited, " +%de", a->plan.edits);
    char label[160];
    snprintf(label, sizeof label, "%.30s%s%s%.20s", a->plan.source, edited, methods[0] ? " +" : "", methods);
    ql_tui_copy(c->h.label, sizeof c->h.label, label);
    const char *tb = strrchr(a->preview.text, '/');
    snprintf(c->h.detail, sizeof c->h.detail, "%d edits · %s · %.32s · ctx %d x %d chunks", a->plan.edits,
             methods[0] ? methods : "rtn", tb ? tb + 1 : a->preview.text, c->ctx, c->chunks);
    return ql_tui_job_start(a, ql_tui_job_new("preview", preview_run, preview_apply, preview_destroy, c));
}

/* ---------------------------------------------------------------- export */

typedef struct {
    const ql_model *m;
    const ql_stats *stats;
    ql_plan *plan;
    char path[QL_TUI_PATH];
    int n_threads;
    const ql_exporter_info *exporter;
    ql_quant_stats qs;
} export_ctx;

static void export_run(ql_tui_job *j) {
    export_ctx *c = j->ctx;
    ql_quant_opts qo = {.plan = c->plan, .stats = c->stats, .n_threads = c->n_threads,
                        .exporter = c->exporter};
    ql_tui_job_phase(j, "quantizing", 0, 1);
    ql_status s = ql_quantize_model(c->m, &qo, c->path, &j->progress, &c->qs);
    if (s) ql_tui_job_fail(j, s);
}

static void export_apply(ql_tui_app *a, ql_tui_job *j) {
    export_ctx *c = j->ctx;
    ql_tui_export *e = &a->exp;
    char line[200];
    if (j->status)
        snprintf(line, sizeof line, "%.100s: %.70s (nothing written)", c->path, j->status == QL_ERR_CANCELLED ? "cancelled" : j->err);
    else
        snprintf(line, sizeof line, "%.100s: %.2f MiB, %lld tensors quantized (%lld fell back), %lld copied, %.1fs%s", c->path,
                 c->qs.bytes_out / 1048576.0, (long long)c->qs.tensors_quantized, (long long)c->qs.tensors_fallback,
                 (long long)c->qs.tensors_copied, c->qs.seconds, c->qs.llama_cpp_compatible ? ", llama.cpp can load it" : "");
    if (e->n_log == (int)QL_ARRAY_LEN(e->log)) {
        memmove(e->log, e->log + 1, sizeof e->log - sizeof e->log[0]);
        e->n_log--;
    }
    ql_tui_copy(e->log[e->n_log++], sizeof e->log[0], line);
    if (!j->status) ql_tui_msg(a, 0, "wrote %s", line);
}

static void export_destroy(ql_tui_job *j) {
    export_ctx *c = j->ctx;
    ql_plan_free(c->plan);
    free(c);
}

bool ql_tui_start_export(ql_tui_app *a) {
    if (!a->model) return ql_tui_msg(a, 2, "open a model first"), false;
    if (!a->exp.path[0]) return ql_tui_msg(a, 2, "choose an output path first (p)"), false;
    if (ql_same_file(a->exp.path, a->model_path))
        return ql_tui_msg(a, 2, "%s is the model being quantized: choose another output path (p)", a->exp.path), false;
    export_ctx *c = ql_calloc(1, sizeof *c);
    c->m = a->model;
    c->stats = a->calib.stats;
    c->plan = ql_tui_plan_build(a);
    ql_tui_copy(c->path, sizeof c->path, a->exp.path);
    c->n_threads = a->n_threads;
    c->exporter = ql_exporter_at(a->exp.format);
    if (!c->exporter) c->exporter = ql_exporter_default();
    return ql_tui_job_start(a, ql_tui_job_new("export", export_run, export_apply, export_destroy, c));
}

/* ---------------------------------------------------------------- catalogue: effect on one tensor */

int ql_tui_cat_count(void) { return ql_format_count() + ql_method_count(); }

typedef struct {
    const ql_gguf_tensor *t;
    const ql_format *f;     /* the format the codes are stored in */
    const ql_method *me;    /* NULL: the format's own rounding */
    const ql_stat_entry *se;
    int n_threads;
    uint64_t key;
    ql_tui_catalogue out;
    char err[160];
} effect_ctx;

/* Relative output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) over up to 32 rows (H = Σ x xᵀ of the input). */
static double output_error(const float *w, const float *q, int64_t nrows, int64_t n, const double *H) {
    const int64_t step = nrows > 32 ? nrows / 32 : 1, cap = (nrows + step - 1) / step;
    float *ws = ql_malloc((size_t)(cap * n) * sizeof(float)), *qs = ql_malloc((size_t)(cap * n) * sizeof(float));
    int64_t ns = 0;
    for (int64_t r = 0; r < nrows; r += step, ns++) {
        memcpy(ws + ns * n, w + r * n, (size_t)n * sizeof(float));
        memcpy(qs + ns * n, q + r * n, (size_t)n * sizeof(float));
    }
    const double num = ql_output_error(qs, ws, NULL, ns, n, H), den = ql_output_error(ws, NULL, NULL, ns, n, H);
    free(ws);
    free(qs);
    return den > 0 && num >= 0 ? num / den : NAN;
}

/* q = what w becomes through method me (NULL: the format's own rounding) with this pane's statistics. */
static ql_status quant_roundtrip(const effect_ctx *c, const ql_method *me, const float *w, int64_t nrows, int64_t ncols,
                                 float *q) {
    ql_input_stats view = {0};
    if (c->se) ql_stats_view(c->se, &view);
    ql_method_opts mo = {.n_threads = c->n_threads}; /* the defaults of its schema */
    return ql_method_roundtrip(me, w, nrows, ncols, c->f, c->se ? &view : NULL, &mo, q);
}

static void effect_run(ql_tui_job *j) {
    effect_ctx *c = j->ctx;
    const ql_gguf_tensor *t = c->t;
    int64_t ncols = t->ne[0], nrows = 1;
    for (int d = 1; d < t->n_dims; d++) nrows *= t->ne[d];
    float *w = ql_malloc((size_t)(nrows * ncols) * sizeof(float)), *q = ql_malloc((size_t)(nrows * ncols) * sizeof(float));
    ql_status s = QL_OK;
    ql_tui_job_phase(j, "decoding", 0, 2);
    if (!ql_tensor_to_f32(t, w, c->n_threads)) s = ql_fail(QL_ERR_UNSUPPORTED, "%s: cannot decode its type", t->name);
    ql_tui_job_phase(j, "quantizing", 1, 2);
    if (!s && c->me && c->me->needs && !c->se)
        s = ql_fail(QL_ERR_ARG, "%s needs activation statistics: run them on the Calib screen (r)", c->me->name);
    if (!s && c->me && (c->me->needs & QL_NEEDS_HESSIAN) && !c->se->xtx)
        s = ql_fail(QL_ERR_ARG, "%s needs Hessians; these statistics have none", c->me->name);
    if (!s) s = quant_roundtrip(c, c->me, w, nrows, ncols, q);
    if (s) {
        ql_tui_job_fail(j, s);
        ql_tui_copy(c->err, sizeof c->err, j->err);
        j->status = QL_OK; /* shown in the pane, not as a failed job */
        goto out;
    }
    ql_tui_catalogue *o = &c->out;
    double mx = 0;
    int64_t n = nrows * ncols;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)q[i] - w[i]));
    const double rel = ql_weight_error(w, q, n); /* Σ(q − w)² / Σw² */
    o->rel_rmse = sqrt(rel);
    o->snr_db = rel > 0 ? -10 * log10(rel) : INFINITY;
    o->max_abs = mx;
    o->hist_range = mx > 0 ? mx : 1;
    const int B = (int)QL_ARRAY_LEN(o->hist);
    for (int64_t i = 0; i < n; i++) {
        int b = (int)floor(((double)q[i] - w[i]) / o->hist_range * (B / 2) + B / 2 + 0.5);
        o->hist[b < 0 ? 0 : b >= B ? B - 1 : b]++;
    }
    o->n_strip = ncols < (int64_t)QL_ARRAY_LEN(o->before) ? (int)ncols : (int)QL_ARRAY_LEN(o->before);
    for (int i = 0; i < o->n_strip; i++) {
        o->before[i] = w[i];
        o->after[i] = q[i];
    }
    if (c->f->code_basis) { /* what the rotation does to the weights the codes see */
        memcpy(q, w, (size_t)n * sizeof(float));
        c->f->code_basis(q, nrows, ncols);
        double rm = 0, m2[2] = {0, 0}, m4[2] = {0, 0};
        for (int64_t i = 0; i < n; i++) rm = fmax(rm, fmax(fabs(w[i]), fabs(q[i])));
        o->rot_range = rm > 0 ? rm : 1;
        for (int64_t i = 0; i < n; i++)
            for (int k = 0; k < 2; k++) {
                const double v = k ? q[i] : w[i];
                int b = (int)floor(v / o->rot_range * (B / 2) + B / 2 + 0.5);
                (k ? o->rot_after : o->rot_before)[b < 0 ? 0 : b >= B ? B - 1 : b]++;
                m2[k] += v * v, m4[k] += v * v * v * v;
            }
        o->kurt_before = m2[0] > 0 ? m4[0] * (double)n / (m2[0] * m2[0]) : NAN;
        o->kurt_after = m2[1] > 0 ? m4[1] * (double)n / (m2[1] * m2[1]) : NAN;
        o->has_rot = true;
    }
    if (c->f->code_usage) { /* codeword use of the format's own encoding of this tensor */
        ql_tui_job_phase(j, "codebook usage", 1, 2);
        const int64_t nb = ql_format_tensor_bytes(c->f, ncols, nrows);
        void *bytes = nb > 0 ? ql_malloc((size_t)nb) : NULL;
        enum { CAP = 4 << 16 };
        uint32_t *cnt = ql_malloc(CAP * sizeof(uint32_t));
        int nc = 0;
        if (bytes && !ql_format_quantize(c->f, w, bytes, nrows, ncols, NULL, c->n_threads))
            nc = c->f->code_usage(bytes, nrows, ncols, cnt, CAP);
        if (nc > 0) {
            /* counting sort by use, most used first, then 33 bins of consecutive ranks */
            uint32_t mx = 0;
            for (int i = 0; i < nc; i++) mx = cnt[i] > mx ? cnt[i] : mx;
            int64_t *nwith = ql_calloc((size_t)mx + 1, sizeof(int64_t));
            for (int i = 0; i < nc; i++) nwith[cnt[i]]++;
            int rank = 0;
            for (int64_t u = mx; u >= 0; u--)
                for (int64_t t = 0; t < nwith[u]; t++, rank++) o->usage[(int64_t)rank * B / nc] += (int)u;
            free(nwith);
            o->usage_total = nc;
            for (int i = 0; i < nc; i++) o->usage_used += cnt[i] > 0;
            o->has_usage = true;
        }
        free(cnt);
        free(bytes);
    }
    if (c->se && c->se->xtx && c->se->n == ncols) {
        ql_tui_job_phase(j, "output error", 1, 2);
        o->out_err = output_error(w, q, nrows, ncols, c->se->xtx);
        o->has_out_err = true;
        o->out_err_rtn = o->out_err;
        if (c->me && strcmp(c->me->name, "rtn") != 0 && !quant_roundtrip(c, NULL, w, nrows, ncols, q))
            o->out_err_rtn = output_error(w, q, nrows, ncols, c->se->xtx);
    }
    o->has_effect = true;
out:
    free(w);
    free(q);
}

static void effect_apply(ql_tui_app *a, ql_tui_job *j) {
    effect_ctx *c = j->ctx;
    ql_tui_catalogue *cat = &a->cat;
    int cursor = cat->cursor, scroll = cat->scroll, row = cat->row, used = cat->used_row;
    const ql_format *demo = cat->demo_fmt;
    if (!j->status || c->err[0]) {
        *cat = c->out;
        cat->has_effect = true;
        ql_tui_copy(cat->effect_err, sizeof cat->effect_err, c->err);
    }
    cat->cursor = cursor;
    cat->scroll = scroll;
    cat->row = row;
    cat->used_row = used;
    cat->demo_fmt = demo;
    cat->effect_key = c->key;

}

static void effect_destroy(ql_tui_job *j) { free(j->ctx); }

static uint64_t effect_key(const ql_tui_app *a) {
    char k[96];
    const ql_format *f = a->cat.cursor < ql_format_count() ? ql_format_at(a->cat.cursor) : a->cat.demo_fmt;
    snprintf(k, sizeof k, "%d/%d/%s/%p", a->cat.cursor, a->cat.row, f ? f->name : "-", (const void *)a->calib.stats);
    return ql_tui_hash_str(ql_tui_hash_str(0, a->model_path), k);
}

bool ql_tui_cat_refresh(ql_tui_app *a) {
    if (a->job || !a->model || effect_key(a) == a->cat.effect_key) return false;
    return ql_tui_start_effect(a);
}

bool ql_tui_start_effect(ql_tui_app *a) {
    if (!a->model || !a->plan.n_rows) return false;
    int item = a->cat.cursor;
    effect_ctx *c = ql_calloc(1, sizeof *c);
    if (a->cat.row >= a->plan.n_rows) a->cat.row = 0;
    if (item < ql_format_count()) c->f = ql_format_at(item);
    else {
        c->me = ql_method_at(item - ql_format_count());
        c->f = a->cat.demo_fmt;
    }
    /* the chosen tensor, or the next one whose rows the format can store */
    int row = a->cat.row;
    for (int i = 0; c->f && i < a->plan.n_rows; i++) {
        int k = (a->cat.row + i) % a->plan.n_rows;
        if (ql_format_fits(c->f, a->plan.rows[k].ne0)) {
            row = k;
            break;
        }
    }
    a->cat.used_row = row;
    const ql_tui_row *r = &a->plan.rows[row];
    c->t = &a->model->gguf->tensors[r->tensor];
    c->se = a->calib.stats ? ql_stats_for_tensor(a->calib.stats, c->t->name) : NULL;
    if (c->se && c->se->n != c->t->ne[0]) c->se = NULL;
    c->n_threads = a->n_threads;
    c->key = effect_key(a);
    a->cat.effect_key = c->key;
    if (!c->f || !c->f->quantize_rows) {
        a->cat.has_effect = true;
        snprintf(a->cat.effect_err, sizeof a->cat.effect_err, "%s is decode-only in qlab: nothing to quantize with",
                 c->f ? c->f->name : "?");
        free(c);
        return false;
    }
    ql_tui_job *j = ql_tui_job_new("catalogue", effect_run, effect_apply, effect_destroy, c);
    j->quiet = true;
    return ql_tui_job_start(a, j);
}
