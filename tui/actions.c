/* actions.c — what every key does: a binding table (screen mask, key, help text, action) that the
 * help overlay lists verbatim, the actions as functions of (app, key) returning reaction flags, the
 * one-line prompt (typed values and paths, with Tab completion) and the file browser. */
#include "tui/app.h"
#include "kernels/ggml_types.h"
#include "tui/jobs.h"
#include "methods/method.h"
#include "presets/preset.h"
#include "sensitivity/sense.h"
#include "tui/tui_sense.h"
#include "pipeline/export.h"

#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef unsigned (*action_fn)(ql_tui_app *a, int key);

typedef struct {
    unsigned screens; /* bit per ql_tui_screen */
    int key, key2;    /* key2: an alternative key (0 none) */
    const char *keyname;
    const char *help;
    action_fn fn;
} binding;

#define ON(s) (1u << QL_SCR_##s)
#define ALL ((1u << QL_SCR_COUNT) - 1)

enum {
    P_NONE, P_FILTER, P_OPEN, P_SRC_PATH, P_SRC_WEIGHT, P_SAMPLES, P_SEQLEN, P_SEED, P_STATS_SAVE, P_STATS_LOAD,
    P_TEXT, P_CTX, P_CHUNKS, P_PRESET, P_TYPE, P_METHOD_ROW, P_METHOD_ALL, P_CAND, P_PLAN_SAVE, P_PLAN_LOAD, P_KV,
    P_TARGET, P_EXPORT_PATH, P_SENSE_SAVE, P_SENSE_LOAD, P_KV_SCHEME, P_QAT,
};
static const bool PROMPT_IS_PATH[] = {[P_OPEN] = true, [P_SRC_PATH] = true, [P_STATS_SAVE] = true,
                                      [P_STATS_LOAD] = true, [P_TEXT] = true, [P_PLAN_SAVE] = true,
                                      [P_PLAN_LOAD] = true, [P_EXPORT_PATH] = true, [P_SENSE_SAVE] = true,
                                      [P_SENSE_LOAD] = true};

static void prompt_open(ql_tui_app *a, int purpose, const char *label, const char *initial) {
    ql_tui_prompt *p = &a->prompt;
    p->active = true;
    p->purpose = purpose;
    ql_tui_copy(p->label, sizeof p->label, label);
    ql_tui_copy(p->buf, sizeof p->buf, initial ? initial : "");
    p->len = (int)strlen(p->buf);
    p->fresh = true;
}

static bool need_model(ql_tui_app *a) {
    if (a->model) return true;
    ql_tui_msg(a, 2, "no model open: o on the Model screen opens one");
    return false;
}

/* ---------------------------------------------------------------- global */

static unsigned act_help(ql_tui_app *a, int k) {
    (void)k;
    a->help = !a->help;
    a->help_scroll = 0;
    return QL_R_REDRAW;
}

static unsigned act_next(ql_tui_app *a, int k) {
    a->screen = (ql_tui_screen)((a->screen + (k == QL_KEY_BTAB ? QL_SCR_COUNT - 1 : 1)) % QL_SCR_COUNT);
    return QL_R_REDRAW;
}

static unsigned act_jump(ql_tui_app *a, int k) {
    a->screen = (ql_tui_screen)(k - '1');
    return QL_R_REDRAW;
}

static unsigned act_quit(ql_tui_app *a, int k) {
    (void)k;
    if (a->job && !a->quit_armed) {
        a->quit_armed = true;
        ql_tui_msg(a, 1, "%s is running: q again cancels it and quits; Esc cancels it only", a->job->name);
        return QL_R_REDRAW;
    }
    if (a->job) {
        ql_tui_job_cancel(a);
        ql_tui_job_collect(a, true);
    }
    return QL_R_QUIT;
}

static unsigned act_cancel(ql_tui_app *a, int k) {
    (void)k;
    if (a->job) {
        ql_tui_job_cancel(a);
        ql_tui_msg(a, 1, "cancelling %s...", a->job->name);
    } else
        a->msg[0] = 0;
    a->quit_armed = false;
    return QL_R_REDRAW;
}

static unsigned act_redraw(ql_tui_app *a, int k) {
    (void)a, (void)k;
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- lists */

/* Moves a cursor over n lines for the usual navigation keys; page is the visible height. */
static bool list_move(int *cursor, int n, int key, int page) {
    int c = *cursor;
    if (page < 1) page = 1;
    switch (key) {
    case QL_KEY_UP: case 'k': c--; break;
    case QL_KEY_DOWN: case 'j': c++; break;
    case QL_KEY_PGUP: c -= page; break;
    case QL_KEY_PGDN: c += page; break;
    case QL_KEY_HOME: c = 0; break;
    case QL_KEY_END: c = n - 1; break;
    default: return false;
    }
    if (c >= n) c = n - 1;
    if (c < 0) c = 0;
    *cursor = c;
    return true;
}

static int body_h(const ql_tui_app *a) { return a->h - 4 > 1 ? a->h - 4 : 1; }

/* ---------------------------------------------------------------- Model */

static unsigned model_move(ql_tui_app *a, int k) {
    int lines[4096];
    int n = ql_tui_model_lines(a, lines, 4096);
    list_move(&a->m_cursor, n, k, body_h(a) - 6);
    return QL_R_REDRAW;
}

static unsigned model_sort(ql_tui_app *a, int k) {
    (void)k;
    a->m_sort = (a->m_sort + 1) % 4;
    static const char *names[] = {"file order", "name", "size (largest first)", "type"};
    ql_tui_msg(a, 0, "tensors sorted by %s", names[a->m_sort]);
    return QL_R_REDRAW;
}

static unsigned model_filter(ql_tui_app *a, int k) {
    (void)k;
    prompt_open(a, P_FILTER, "filter tensors (substring, empty: all)", a->m_filter);
    return QL_R_REDRAW;
}

static unsigned model_open(ql_tui_app *a, int k) {
    prompt_open(a, P_OPEN, "open model (.gguf, HF folder, llama2.c .bin)", k == 'o' ? a->model_path : "");
    return QL_R_REDRAW;
}

static void browser_open(ql_tui_app *a, ql_tui_browse purpose, const char *start);

static unsigned model_browse(ql_tui_app *a, int k) {
    (void)k;
    browser_open(a, QL_BROWSE_MODEL, a->model_path);
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- Calibration */

static int calib_fields(const ql_tui_app *a) { return a->calib.n_sources + QL_CF_COUNT; }

static unsigned calib_move(ql_tui_app *a, int k) {
    list_move(&a->calib.field, calib_fields(a), k, 4);
    return QL_R_REDRAW;
}

static unsigned calib_add(ql_tui_app *a, int k) {
    (void)k;
    if (a->calib.n_sources == QL_TUI_MAX_SOURCES) {
        ql_tui_msg(a, 2, "at most %d sources", QL_TUI_MAX_SOURCES);
        return QL_R_REDRAW;
    }
    browser_open(a, QL_BROWSE_SOURCE, a->calib.n_sources ? a->calib.src[a->calib.n_sources - 1].path : ".");
    return QL_R_REDRAW;
}

static unsigned calib_delete(ql_tui_app *a, int k) {
    (void)k;
    int f = a->calib.field;
    if (f >= a->calib.n_sources) {
        ql_tui_msg(a, 1, "move to a source line to remove it");
        return QL_R_REDRAW;
    }
    memmove(&a->calib.src[f], &a->calib.src[f + 1], (size_t)(a->calib.n_sources - f - 1) * sizeof a->calib.src[0]);
    a->calib.n_sources--;
    if (a->calib.field >= calib_fields(a)) a->calib.field = calib_fields(a) - 1;
    return QL_R_REDRAW;
}

static unsigned calib_weight(ql_tui_app *a, int k) {
    (void)k;
    if (a->calib.field >= a->calib.n_sources) {
        ql_tui_msg(a, 1, "move to a source line to set its weight");
        return QL_R_REDRAW;
    }
    char b[32];
    snprintf(b, sizeof b, "%g", a->calib.src[a->calib.field].weight);
    prompt_open(a, P_SRC_WEIGHT, "mix weight of this source (> 0; weights are normalised)", b);
    return QL_R_REDRAW;
}

static unsigned text_browse(ql_tui_app *a, int k);

static unsigned calib_edit(ql_tui_app *a, int k) {
    int f = a->calib.field - a->calib.n_sources;
    char b[64];
    if (f < 0) {
        prompt_open(a, P_SRC_PATH, "source path (file, folder, archive; JSONL: path:field=text)",
                    a->calib.src[a->calib.field].path);
        return QL_R_REDRAW;
    }
    switch (f) {
    case QL_CF_ADD: return calib_add(a, k);
    case QL_CF_SAMPLES:
        snprintf(b, sizeof b, "%d", a->calib.samples);
        prompt_open(a, P_SAMPLES, "samples (sequences drawn from the mix)", b);
        break;
    case QL_CF_LEN:
        snprintf(b, sizeof b, "%d", a->calib.seq_len);
        prompt_open(a, P_SEQLEN, "tokens per sample (BOS included)", b);
        break;
    case QL_CF_SEED:
        snprintf(b, sizeof b, "%llu", (unsigned long long)a->calib.seed);
        prompt_open(a, P_SEED, "seed", b);
        break;
    case QL_CF_MODE:
        a->calib.mode = a->calib.mode == QL_CALIB_RANDOM ? QL_CALIB_DOCS : QL_CALIB_RANDOM;
        break;
    case QL_CF_TEXT: return text_browse(a, k);
    }
    return QL_R_REDRAW;
}

static unsigned calib_build(ql_tui_app *a, int k) {
    if (need_model(a)) ql_tui_start_calib(a, k == 'r');
    return QL_R_REDRAW;
}

static unsigned calib_stats_save(ql_tui_app *a, int k) {
    (void)k;
    prompt_open(a, P_STATS_SAVE, "save statistics to (qlab quant --stats reads it)", "stats.qls");
    return QL_R_REDRAW;
}

static unsigned calib_stats_load(ql_tui_app *a, int k) {
    (void)k;
    prompt_open(a, P_STATS_LOAD, "load statistics from (written by qlab stats)", "stats.qls");
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- Plan */

static int plan_page(const ql_tui_app *a) { return body_h(a) - 3; }

static unsigned plan_move(ql_tui_app *a, int k) {
    int *lines = ql_malloc((size_t)(a->plan.n_rows + a->plan.n_groups + 1) * sizeof(int));
    int n = ql_tui_plan_lines(a, lines, a->plan.n_rows + a->plan.n_groups + 1);
    list_move(&a->plan.cursor, n, k, plan_page(a));
    free(lines);
    return QL_R_REDRAW;
}

static unsigned plan_col(ql_tui_app *a, int k) {
    if (k == QL_KEY_LEFT && a->plan.col > 0) a->plan.col--;
    if (k == QL_KEY_RIGHT && a->plan.col + 1 < a->plan.n_cand) a->plan.col++;
    return QL_R_REDRAW;
}

/* The line under the cursor: >= 0 a row, < 0 a group header (-1 - group). */
static int plan_current(const ql_tui_app *a) {
    int cap = a->plan.n_rows + a->plan.n_groups + 1;
    int *lines = ql_malloc((size_t)cap * sizeof(int));
    int n = ql_tui_plan_lines(a, lines, cap);
    int c = a->plan.cursor < n ? a->plan.cursor : n - 1;
    int v = n > 0 ? lines[c < 0 ? 0 : c] : -1 - a->plan.n_groups;
    free(lines);
    return v;
}

/* The next fitting candidate up (dir > 0) or down from a row's current format, by its exact bytes. */
static const ql_format *plan_step(const ql_tui_app *a, const ql_tui_row *r, int dir) {
    int64_t cur = ql_tui_row_bytes(a, r);
    const ql_format *best = NULL;
    int64_t best_b = 0;
    for (int k = 0; k < a->plan.n_cand; k++) {
        const ql_format *f = a->plan.cand[k];
        if (!ql_tui_cand_fits(f, r)) continue;
        int64_t b = ql_format_tensor_bytes(f, r->ne0, r->ne1);
        if (dir > 0 && b > cur && (!best || b < best_b)) best = f, best_b = b;
        if (dir < 0 && b < cur && (!best || b > best_b)) best = f, best_b = b;
    }
    return best;
}

typedef enum { SEL_ROW, SEL_LAYER, SEL_KIND, SEL_ALL } plan_sel;

static bool row_selected(const ql_tui_row *r, const ql_tui_row *ref, int group, plan_sel sel) {
    switch (sel) {
    case SEL_ROW: return r == ref;
    case SEL_LAYER: return r->layer + 1 == group;
    case SEL_KIND: return ref && !strcmp(r->kind, ref->kind);
    case SEL_ALL: return true;
    }
    return false;
}

static unsigned plan_bits(ql_tui_app *a, int k) {
    if (!need_model(a)) return QL_R_REDRAW;
    int dir = (k == '+' || k == '=' || k == ']' || k == '}' || k == ')') ? 1 : -1;
    plan_sel sel = (k == '+' || k == '=' || k == '-') ? SEL_ROW
                   : (k == ']' || k == '[')           ? SEL_LAYER
                   : (k == '}' || k == '{')           ? SEL_KIND
                                                      : SEL_ALL;
    int line = plan_current(a);
    const ql_tui_row *ref = line >= 0 ? &a->plan.rows[line] : NULL;
    int group = line >= 0 ? ref->layer + 1 : -1 - line;
    if ((sel == SEL_ROW || sel == SEL_KIND) && !ref) {
        if (sel == SEL_KIND) {
            ql_tui_msg(a, 1, "move to a tensor row to pick its kind");
            return QL_R_REDRAW;
        }
        sel = SEL_LAYER; /* +/- on a layer header acts on the layer */
    }
    if (sel == SEL_ROW && ref->pinned) {
        ql_tui_msg(a, 1, "%s is pinned (p unpins it)", a->model->gguf->tensors[ref->tensor].name);
        return QL_R_REDRAW;
    }
    const ql_format **nf = ql_malloc((size_t)a->plan.n_rows * sizeof *nf + 1);
    int changed = 0, pinned = 0, stuck = 0;
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        nf[i] = r->fmt;
        if (!row_selected(r, ref, group, sel)) continue;
        if (r->pinned) {
            pinned++;
            continue;
        }
        const ql_format *f = plan_step(a, r, dir);
        if (f) {
            nf[i] = f;
            changed++;
        } else
            stuck++;
    }
    if (changed) {
        ql_tui_undo_push(a);
        for (int i = 0; i < a->plan.n_rows; i++)
            if (nf[i] != a->plan.rows[i].fmt) {
                a->plan.rows[i].fmt = nf[i];
                a->plan.rows[i].note[0] = 0;
            }
        a->plan.edits++;
    }
    free(nf);
    static const char *what[] = {"tensor", "tensors of the layer", "tensors of that kind", "tensors"};
    if (changed == 1 && sel == SEL_ROW)
        ql_tui_msg(a, 0, "%s -> %s", a->model->gguf->tensors[ref->tensor].name, ref->fmt->name);
    else if (changed)
        ql_tui_msg(a, 0, "%s %d %s%s%.0d%s", dir > 0 ? "raised" : "lowered", changed, what[sel],
                   pinned ? " (pinned kept: " : "", pinned, pinned ? ")" : "");
    else
        ql_tui_msg(a, 1, "no %s candidate fits (%d at the %s, %d pinned); C edits the candidates",
                   dir > 0 ? "larger" : "smaller", stuck, dir > 0 ? "top" : "bottom", pinned);
    return QL_R_REDRAW;
}

static void toggle_group(ql_tui_app *a, int g) {
    a->plan.collapsed[g] = !a->plan.collapsed[g];
    /* keep the cursor on the header */
    int cap = a->plan.n_rows + a->plan.n_groups + 1;
    int *lines = ql_malloc((size_t)cap * sizeof(int));
    int n = ql_tui_plan_lines(a, lines, cap);
    for (int i = 0; i < n; i++)
        if (lines[i] == -1 - g) a->plan.cursor = i;
    free(lines);
}

static unsigned plan_enter(ql_tui_app *a, int k) {
    (void)k;
    if (!need_model(a)) return QL_R_REDRAW;
    int line = plan_current(a);
    if (line < -a->plan.n_groups) return QL_R_REDRAW;
    if (line < 0) {
        toggle_group(a, -1 - line);
        return QL_R_REDRAW;
    }
    ql_tui_row *r = &a->plan.rows[line];
    if (!a->plan.n_cand) return QL_R_REDRAW;
    const ql_format *f = a->plan.cand[a->plan.col];
    const char *name = a->model->gguf->tensors[r->tensor].name;
    if (r->pinned) ql_tui_msg(a, 1, "%s is pinned (p unpins it)", name);
    else if (!ql_tui_cand_fits(f, r))
        ql_tui_msg(a, 1, "%s cannot store rows of %lld (blocks of %d)", f->name, (long long)r->ne0, f->block);
    else if (r->fmt != f || strcmp(r->method, a->plan.cand_method[a->plan.col])) {
        ql_tui_undo_push(a);
        r->fmt = f;
        ql_tui_copy(r->method, sizeof r->method, a->plan.cand_method[a->plan.col]);
        r->note[0] = 0;
        a->plan.edits++;
        ql_tui_msg(a, 0, "%s -> %s", name, f->name);
    }
    return QL_R_REDRAW;
}

static unsigned plan_collapse(ql_tui_app *a, int k) {
    int line = plan_current(a);
    if (k == 'z') {
        bool any_open = false;
        for (int g = 0; g < a->plan.n_groups; g++) any_open |= !a->plan.collapsed[g];
        for (int g = 0; g < a->plan.n_groups; g++) a->plan.collapsed[g] = any_open;
        a->plan.cursor = 0;
        return QL_R_REDRAW;
    }
    if (line >= -a->plan.n_groups) toggle_group(a, line >= 0 ? a->plan.rows[line].layer + 1 : -1 - line);
    return QL_R_REDRAW;
}

static unsigned plan_pin(ql_tui_app *a, int k) {
    (void)k;
    int line = plan_current(a);
    if (line < 0) {
        ql_tui_msg(a, 1, "move to a tensor row to pin it");
        return QL_R_REDRAW;
    }
    ql_tui_undo_push(a);
    ql_tui_row *r = &a->plan.rows[line];
    r->pinned = !r->pinned;
    ql_tui_msg(a, 0, "%s %s", a->model->gguf->tensors[r->tensor].name,
               r->pinned ? "pinned: layer/kind/all edits, presets and the solver leave it alone" : "unpinned");
    return QL_R_REDRAW;
}

static unsigned plan_undo(ql_tui_app *a, int k) {
    bool ok = k == 'u' ? ql_tui_undo(a) : ql_tui_redo(a);
    ql_tui_msg(a, ok ? 0 : 1, "%s", ok ? (k == 'u' ? "undone" : "redone") : (k == 'u' ? "nothing to undo" : "nothing to redo"));
    return QL_R_REDRAW;
}

static unsigned plan_preset(ql_tui_app *a, int k) {
    if (!need_model(a)) return QL_R_REDRAW;
    if (k == 'P') {
        char names[512] = "";
        for (int i = 0; i < ql_preset_builtin_count() && strlen(names) < 400; i++) {
            if (i) strcat(names, " ");
            strcat(names, ql_preset_builtin_name(i));
        }
        char label[400];
        snprintf(label, sizeof label, "preset, a name or an INI file: %.360s", names);
        prompt_open(a, P_PRESET, label, "Q4_K_M");
    } else
        prompt_open(a, P_TYPE, "one format for every tensor (row fallbacks noted), e.g. q4_k, int4_g32", "q8_0");
    return QL_R_REDRAW;
}

static unsigned plan_method(ql_tui_app *a, int k) {
    if (!need_model(a)) return QL_R_REDRAW;
    char label[96], names[128] = "";
    for (int i = 0; i < ql_method_count(); i++) {
        if (i) strcat(names, ", ");
        strcat(names, ql_method_at(i)->name);
    }
    snprintf(label, sizeof label, "method for %s (%.50s)", k == 'm' ? "this tensor" : "every unpinned tensor", names);
    int line = plan_current(a);
    prompt_open(a, k == 'm' ? P_METHOD_ROW : P_METHOD_ALL, label, line >= 0 ? a->plan.rows[line].method : "rtn");
    return QL_R_REDRAW;
}

static unsigned plan_cand(ql_tui_app *a, int k) {
    (void)k;
    char buf[QL_TUI_PATH] = "";
    for (int i = 0; i < a->plan.n_cand; i++) {
        if (i) strcat(buf, ",");
        strcat(buf, a->plan.cand[i]->name);
    }
    prompt_open(a, P_CAND, "candidate formats (the columns and the +/- ladder), comma-separated", buf);
    return QL_R_REDRAW;
}

static unsigned plan_measure(ql_tui_app *a, int k) {
    (void)k;
    ql_tui_start_measure(a);
    return QL_R_REDRAW;
}

static unsigned plan_file(ql_tui_app *a, int k) {
    if (!need_model(a)) return QL_R_REDRAW;
    if (k == 'S') prompt_open(a, P_PLAN_SAVE, "save plan as INI (qlab quant --plan reads it)", "plan.ini");
    else prompt_open(a, P_PLAN_LOAD, "load plan INI (written by qlab quant --save-plan or here)", "plan.ini");
    return QL_R_REDRAW;
}

/* R: the Runtime view (activation schemes, KV cache, memory) in place of the table, and back. */
static unsigned plan_runtime(ql_tui_app *a, int k) {
    (void)k;
    a->plan.show_runtime = !a->plan.show_runtime;
    return QL_R_REDRAW;
}

/* K: the plan's KV-cache scheme, for every layer or one. */
static unsigned plan_kv_scheme(ql_tui_app *a, int k) {
    (void)k;
    const ql_kv_settings *kv = ql_tui_runtime_kv(a);
    char b[160];
    if (kv) ql_kv_scheme_name(&kv->scheme, b, sizeof b);
    else snprintf(b, sizeof b, "q8_0");
    prompt_open(a, P_KV_SCHEME, "KV cache: K[:V] for every layer (q8_0, q8_0:q4_0, kivi4, f32 ...) or blk.N=K[:V]", b);
    return QL_R_REDRAW;
}

static unsigned plan_kv(ql_tui_app *a, int k) {
    (void)k;
    char b[32];
    snprintf(b, sizeof b, "%d", a->plan.kv_ctx);
    prompt_open(a, P_KV, "context length for the KV-cache figure (tokens)", b);
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- Auto */

enum { AF_MODE, AF_TARGET, AF_GGML, AF_MINBITS, AF_COUNT };

static unsigned auto_move(ql_tui_app *a, int k) {
    list_move(&a->autos.field, AF_COUNT, k, AF_COUNT);
    return QL_R_REDRAW;
}

/* The next candidate format (by bits) after f for the embeddings/output rule; NULL ends the cycle. */
static const ql_format *next_min_io(const ql_tui_app *a, const ql_format *f, int d) {
    const ql_format *list[QL_TUI_MAX_CAND + 1];
    int n = 0;
    list[n++] = NULL;
    for (int k = 0; k < a->plan.n_cand; k++) {
        bool dup = false;
        for (int j = 1; j < n; j++) dup |= list[j] == a->plan.cand[k];
        if (!dup) list[n++] = a->plan.cand[k];
    }
    int i = 0;
    while (i < n && list[i] != f) i++;
    return list[((i < n ? i : 0) + d + n) % n];
}

static unsigned auto_adjust(ql_tui_app *a, int k) {
    int d = k == QL_KEY_RIGHT ? 1 : -1;
    ql_tui_auto *u = &a->autos;
    switch (u->field) {
    case AF_MODE: u->by_size = !u->by_size; break;
    case AF_TARGET:
        if (u->by_size) {
            double step = u->target_mib > 100 ? 10 : u->target_mib > 10 ? 1 : 0.01;
            u->target_mib = fmax(0.01, u->target_mib + d * step);
        } else
            u->target_bpw = fmin(32, fmax(1, u->target_bpw + d * 0.05));
        break;
    case AF_GGML: u->ggml_only = !u->ggml_only; break;
    case AF_MINBITS: u->min_io = next_min_io(a, u->min_io, d); break;
    }
    return QL_R_REDRAW;
}

static unsigned auto_enter(ql_tui_app *a, int k) {
    if (a->autos.field != AF_TARGET) return auto_adjust(a, QL_KEY_RIGHT);
    (void)k;
    char b[32];
    snprintf(b, sizeof b, "%.3f", a->autos.by_size ? a->autos.target_mib : a->autos.target_bpw);
    prompt_open(a, P_TARGET, a->autos.by_size ? "target file size (MiB)" : "target bits per weight (over the planned tensors)", b);
    return QL_R_REDRAW;
}

static unsigned auto_solve(ql_tui_app *a, int k) {
    ql_tui_start_solve(a, k == 'f');
    return QL_R_REDRAW;
}

static unsigned auto_accept(ql_tui_app *a, int k) {
    (void)k;
    ql_tui_auto *u = &a->autos;
    if (!u->has_solution || !u->sol_fmt) {
        ql_tui_msg(a, 1, "no solution yet: s solves for the target");
        return QL_R_REDRAW;
    }
    ql_tui_undo_push(a);
    for (int i = 0; i < a->plan.n_rows; i++) {
        ql_tui_row *r = &a->plan.rows[i];
        if (r->pinned) continue;
        r->fmt = u->sol_fmt[i];
        ql_tui_copy(r->method, sizeof r->method, u->sol_method[i]);
        r->note[0] = 0;
    }
    snprintf(a->plan.source, sizeof a->plan.source, "auto %.2f %s", u->by_size ? u->target_mib : u->target_bpw,
             u->by_size ? "MiB" : "bpw");
    a->plan.edits = 0;
    ql_tui_msg(a, 0, "solution accepted into the plan (%.3f bits/weight); u on the Plan screen undoes it", u->sol_bpw);
    return QL_R_REDRAW;
}

static unsigned sense_level(ql_tui_app *a, int k) {
    (void)k;
    /* auto -> weight -> output -> kld -> auto */
    a->sense_level = a->sense_level >= QL_SENSE_KLD ? -1 : a->sense_level + 1;
    if (a->qsense) ql_tui_sense_refresh(a);
    ql_tui_msg(a, 0, "level: %s%s", a->sense_level < 0 ? "auto: " : "", ql_tui_level_label(ql_tui_sense_level(a)));
    return QL_R_REDRAW;
}

static unsigned sense_file(ql_tui_app *a, int k) {
    if (k == 'W' && !a->qsense) {
        ql_tui_msg(a, 1, "nothing measured yet (x measures)");
        return QL_R_REDRAW;
    }
    if (k == 'W') prompt_open(a, P_SENSE_SAVE, "save the measurements (.qss; qlab plan --sense reads it)", "sense.qss");
    else prompt_open(a, P_SENSE_LOAD, "load measurements (.qss written by qlab sense)", "sense.qss");
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- Preview */

static unsigned preview_run(ql_tui_app *a, int k) {
    (void)k;
    ql_tui_start_preview(a);
    return QL_R_REDRAW;
}

static unsigned text_browse(ql_tui_app *a, int k) {
    if (k == 'T') prompt_open(a, P_TEXT, "evaluation text (plain text file)", a->preview.text);
    else browser_open(a, QL_BROWSE_TEXT, a->preview.text[0] ? a->preview.text : ".");
    return QL_R_REDRAW;
}

static unsigned qat_form(ql_tui_app *a, int k) {
    (void)k;
    if (!need_model(a)) return QL_R_REDRAW;
    char b[64];
    ql_tui_qat_form(a, b, sizeof b);
    prompt_open(a, P_QAT, "train the plan: STEPS LR MODE (qat, norms, scales, codebooks); Esc stops it, keeping the best",
                b);
    return QL_R_REDRAW;
}

static unsigned preview_opts(ql_tui_app *a, int k) {
    char b[32];
    if (k == 'c') {
        snprintf(b, sizeof b, "%d", a->preview.ctx);
        prompt_open(a, P_CTX, "context per chunk (tokens; the second half of each chunk is scored)", b);
    } else {
        snprintf(b, sizeof b, "%d", a->preview.chunks);
        prompt_open(a, P_CHUNKS, "chunks to evaluate (0: the whole text)", b);
    }
    return QL_R_REDRAW;
}

static unsigned preview_move(ql_tui_app *a, int k) {
    list_move(&a->preview.cursor, a->preview.n_hist, k, 5);
    return QL_R_REDRAW;
}

static unsigned preview_forget(ql_tui_app *a, int k) {
    (void)k;
    ql_tui_preview *p = &a->preview;
    if (!p->n_hist) return QL_R_REDRAW;
    int c = p->cursor;
    memmove(&p->hist[c], &p->hist[c + 1], (size_t)(p->n_hist - c - 1) * sizeof p->hist[0]);
    p->n_hist--;
    if (p->cursor >= p->n_hist) p->cursor = p->n_hist ? p->n_hist - 1 : 0;
    p->last = -1;
    ql_tui_msg(a, 0, "history entry removed (its result is no longer cached)");
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- Export */

static unsigned export_run(ql_tui_app *a, int k) {
    (void)k;
    ql_tui_start_export(a);
    return QL_R_REDRAW;
}

static unsigned export_path(ql_tui_app *a, int k) {
    (void)k;
    const ql_exporter_info *x = ql_exporter_at(a->exp.format);
    prompt_open(a, P_EXPORT_PATH,
                x && x->folder ? "output folder (written to PATH.tmp.XXXXXX, then renamed)"
                               : "output file (written to PATH.tmp.XXXXXX, then renamed)",
                a->exp.path);
    return QL_R_REDRAW;
}

/* The next exporter of the registry. The path follows: a folder target drops ".gguf", GGUF gets it back. */
static unsigned export_target(ql_tui_app *a, int k) {
    (void)k;
    int n = ql_exporter_count();
    if (n <= 0) return QL_R_NONE;
    a->exp.format = (a->exp.format + 1) % n;
    const ql_exporter_info *x = ql_exporter_at(a->exp.format);
    char *p = a->exp.path;
    size_t l = strlen(p);
    bool has_gguf = l > 5 && !strcmp(p + l - 5, ".gguf");
    if (x->folder && has_gguf) p[l - 5] = 0;
    else if (!x->folder && !has_gguf && l && l + 6 < sizeof a->exp.path) strcat(p, ".gguf");
    ql_tui_msg(a, 0, "export target: %s (%s)", x->name, x->summary);
    return QL_R_REDRAW;
}

static unsigned export_plan(ql_tui_app *a, int k) {
    (void)k;
    char b[QL_TUI_PATH + 8];
    ql_tui_copy(b, sizeof b, a->exp.path);
    size_t l = strlen(b);
    if (l > 5 && !strcmp(b + l - 5, ".gguf")) b[l - 5] = 0;
    strcat(b, ".ini");
    prompt_open(a, P_PLAN_SAVE, "save plan as INI (qlab quant --plan reads it)", b);
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- Catalogue */

static unsigned cat_move(ql_tui_app *a, int k) {
    list_move(&a->cat.cursor, ql_tui_cat_count(), k, body_h(a) - 2);
    return QL_R_REDRAW;
}

static unsigned cat_layer(ql_tui_app *a, int k) {
    if (!a->plan.n_rows) return QL_R_REDRAW;
    int d = k == ']' ? 1 : -1;
    a->cat.row = (a->cat.row + d + a->plan.n_rows) % a->plan.n_rows;
    return QL_R_REDRAW;
}

static unsigned cat_demo(ql_tui_app *a, int k) {
    (void)k;
    if (a->cat.cursor < ql_format_count()) {
        const ql_format *f = ql_format_at(a->cat.cursor);
        if (!f->quantize_rows) ql_tui_msg(a, 1, "%s is decode-only", f->name);
        else {
            a->cat.demo_fmt = f;
            ql_tui_msg(a, 0, "methods now write %s codes", f->name);
        }
    } else
        ql_tui_msg(a, 1, "move to a format first: methods write into the chosen format");
    return QL_R_REDRAW;
}

static unsigned cat_compute(ql_tui_app *a, int k) {
    (void)k;
    a->cat.effect_key = 0;
    ql_tui_start_effect(a);
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- the table */

static const binding BINDINGS[] = {
    {ALL, '?', QL_KEY_F1, "? F1", "this help (Esc closes)", act_help},
    {ALL, QL_KEY_TAB, QL_KEY_BTAB, "Tab S-Tab", "next / previous screen", act_next},
    {ALL, '1', 0, "1-7", "go to a screen: Model Calib Plan Auto Preview Export Catalogue", act_jump},
    {ALL, '2', 0, NULL, NULL, act_jump}, {ALL, '3', 0, NULL, NULL, act_jump}, {ALL, '4', 0, NULL, NULL, act_jump},
    {ALL, '5', 0, NULL, NULL, act_jump}, {ALL, '6', 0, NULL, NULL, act_jump}, {ALL, '7', 0, NULL, NULL, act_jump},
    {ALL, QL_KEY_ESC, 0, "Esc", "cancel the running job / clear the message", act_cancel},
    {ALL, 'q', QL_KEY_CTRL('c'), "q C-c", "quit (asks first while a job runs)", act_quit},
    {ALL, QL_KEY_CTRL('l'), 0, "C-l", "redraw", act_redraw},

    {ON(MODEL), QL_KEY_UP, QL_KEY_DOWN, "Up Down", "move (PgUp PgDn Home End too)", model_move},
    {ON(MODEL), QL_KEY_PGUP, QL_KEY_PGDN, NULL, NULL, model_move},
    {ON(MODEL), QL_KEY_HOME, QL_KEY_END, NULL, NULL, model_move},
    {ON(MODEL), 's', 0, "s", "sort: file order, name, size, type", model_sort},
    {ON(MODEL), '/', 0, "/", "filter tensors by name", model_filter},
    {ON(MODEL), 'o', 0, "o", "open another model (type a path)", model_open},
    {ON(MODEL), 'O', 0, "O", "open another model (file browser)", model_browse},

    {ON(CALIB), QL_KEY_UP, QL_KEY_DOWN, "Up Down", "choose a field", calib_move},
    {ON(CALIB), QL_KEY_ENTER, 0, "Enter", "edit the field (toggle the mode; browse for the text)", calib_edit},
    {ON(CALIB), 'a', 0, "a", "add a source (file browser)", calib_add},
    {ON(CALIB), 'd', 0, "d", "remove the source under the cursor", calib_delete},
    {ON(CALIB), 'w', 0, "w", "mix weight of the source under the cursor", calib_weight},
    {ON(CALIB), 'b', 0, "b", "build and inspect the set (coverage, overlap, passages)", calib_build},
    {ON(CALIB), 'r', 0, "r", "run activation statistics over the set (worker thread)", calib_build},
    {ON(CALIB), 'S', 0, "S", "save the statistics to a file", calib_stats_save},
    {ON(CALIB), 'L', 0, "L", "load statistics from a file", calib_stats_load},

    {ON(PLAN), QL_KEY_UP, QL_KEY_DOWN, "Up Down", "move (PgUp PgDn Home End too)", plan_move},
    {ON(PLAN), QL_KEY_PGUP, QL_KEY_PGDN, NULL, NULL, plan_move},
    {ON(PLAN), QL_KEY_HOME, QL_KEY_END, NULL, NULL, plan_move},
    {ON(PLAN), QL_KEY_LEFT, QL_KEY_RIGHT, "Left Right", "choose a candidate column", plan_col},
    {ON(PLAN), QL_KEY_ENTER, 0, "Enter", "give the row the column's format (on a layer: fold/unfold)", plan_enter},
    {ON(PLAN), ' ', 0, "Space", "fold / unfold the layer", plan_collapse},
    {ON(PLAN), 'z', 0, "z", "fold / unfold every layer", plan_collapse},
    {ON(PLAN), '+', '=', "+ -", "raise / lower the row's bits (next fitting candidate)", plan_bits},
    {ON(PLAN), '-', 0, NULL, NULL, plan_bits},
    {ON(PLAN), ']', '[', "] [", "raise / lower the whole layer", plan_bits},
    {ON(PLAN), '}', '{', "} {", "raise / lower every tensor of this kind (all ffn_down ...)", plan_bits},
    {ON(PLAN), ')', '(', ") (", "raise / lower every tensor", plan_bits},
    {ON(PLAN), 'p', 0, "p", "pin / unpin the row", plan_pin},
    {ON(PLAN), 'u', 0, "u", "undo", plan_undo},
    {ON(PLAN), 'U', QL_KEY_CTRL('r'), "U C-r", "redo", plan_undo},
    {ON(PLAN), 'P', 0, "P", "apply a preset (Q4_K_M ... or an INI file of rules)", plan_preset},
    {ON(PLAN), 'T', 0, "T", "one format everywhere", plan_preset},
    {ON(PLAN), 'm', 0, "m", "method for the row (rtn, gptq, awq ...)", plan_method},
    {ON(PLAN), 'M', 0, "M", "method for every unpinned row", plan_method},
    {ON(PLAN), 'C', 0, "C", "edit the candidate formats", plan_cand},
    {ON(PLAN) | ON(AUTO), 'x', 0, "x", "measure every candidate's error (heat map)", plan_measure},
    {ON(PLAN) | ON(AUTO), 'l', 0, "l", "measurement level: auto, weight, output, KLD", sense_level},
    {ON(PLAN) | ON(AUTO), 'X', 0, "X", "load measurements (.qss from qlab sense)", sense_file},
    {ON(PLAN) | ON(AUTO), 'W', 0, "W", "save the measurements (.qss)", sense_file},
    {ON(PLAN), 'S', 0, "S", "save the plan as INI", plan_file},
    {ON(PLAN), 'L', 0, "L", "load a plan INI", plan_file},
    {ON(PLAN), 'k', 0, "k", "context for the KV-cache figure", plan_kv},
    {ON(PLAN), 'K', 0, "K", "KV-cache scheme of the plan (every layer, or blk.N=...)", plan_kv_scheme},
    {ON(PLAN), 'R', 0, "R", "Runtime view: input schemes, KV cache, memory", plan_runtime},

    {ON(AUTO), QL_KEY_UP, QL_KEY_DOWN, "Up Down", "choose a field", auto_move},
    {ON(AUTO), QL_KEY_LEFT, QL_KEY_RIGHT, "Left Right", "move the slider / toggle", auto_adjust},
    {ON(AUTO), QL_KEY_ENTER, 0, "Enter", "edit the target (or type a number on its row) / toggle", auto_enter},
    {ON(AUTO), 's', 0, "s", "solve for the target (worker thread)", auto_solve},
    {ON(AUTO), 'f', 0, "f", "compute the Pareto frontier", auto_solve},
    {ON(AUTO), 'a', 0, "a", "accept the solution into the plan", auto_accept},

    {ON(PREVIEW), QL_KEY_ENTER, 'r', "Enter r", "evaluate the current plan (cached when unchanged)", preview_run},
    {ON(PREVIEW), 't', 0, "t", "choose the text (file browser)", text_browse},
    {ON(PREVIEW), 'T', 0, "T", "type the text's path", text_browse},
    {ON(PREVIEW), 'c', 0, "c", "context per chunk", preview_opts},
    {ON(PREVIEW), 'n', 0, "n", "number of chunks", preview_opts},
    {ON(PREVIEW), QL_KEY_UP, QL_KEY_DOWN, "Up Down", "move in the history", preview_move},
    {ON(PREVIEW), 'd', 0, "d", "forget the history entry", preview_forget},
    {ON(PREVIEW), 'Q', 0, "Q", "train the plan (QAT or tuning), live loss/KLD curve, result into the history", qat_form},

    {ON(EXPORT), 'e', QL_KEY_ENTER, "e Enter", "export the plan to the chosen target (worker thread, atomic)", export_run},
    {ON(EXPORT), 'p', 0, "p", "output path", export_path},
    {ON(EXPORT), 't', 0, "t", "next export target (GGUF, GPTQ, AWQ, compressed-tensors, bnb ...)", export_target},
    {ON(EXPORT), 's', 0, "s", "save the plan as INI beside it", export_plan},

    {ON(CATALOGUE), QL_KEY_UP, QL_KEY_DOWN, "Up Down", "choose a format or method (PgUp PgDn Home End too)", cat_move},
    {ON(CATALOGUE), QL_KEY_PGUP, QL_KEY_PGDN, NULL, NULL, cat_move},
    {ON(CATALOGUE), QL_KEY_HOME, QL_KEY_END, NULL, NULL, cat_move},
    {ON(CATALOGUE), ']', '[', "] [", "next / previous example tensor of the model", cat_layer},
    {ON(CATALOGUE), 'f', 0, "f", "methods write the format under the cursor", cat_demo},
    {ON(CATALOGUE), QL_KEY_ENTER, 0, "Enter", "recompute the effect", cat_compute},
};

int ql_tui_binding_count(void) { return (int)QL_ARRAY_LEN(BINDINGS); }

/* For the help overlay: the i-th documented binding (NULL for undocumented aliases). */
bool ql_tui_binding_doc(int i, unsigned *screens, const char **key, const char **help) {
    if (i < 0 || i >= (int)QL_ARRAY_LEN(BINDINGS) || !BINDINGS[i].keyname) return false;
    *screens = BINDINGS[i].screens;
    *key = BINDINGS[i].keyname;
    *help = BINDINGS[i].help;
    return true;
}

/* ---------------------------------------------------------------- prompt */

static bool parse_int(const char *s, long lo, long hi, long *out) {
    char *e;
    long v = strtol(s, &e, 10);
    while (*e == ' ') e++;
    if (e == s || *e || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static void apply_plan(ql_tui_app *a, ql_plan *p, const char *source) {
    ql_tui_undo_push(a);
    ql_tui_plan_adopt(a, p, source, true);
    int notes = 0;
    for (int i = 0; i < a->plan.n_rows; i++) notes += a->plan.rows[i].note[0] != 0;
    ql_tui_totals t = ql_tui_plan_totals(a);
    ql_tui_msg(a, 0, "%s: %.3f bits/weight, %.2f MiB%s%.0d%s", source, t.bpw, t.file_bytes / 1048576.0,
               notes ? "; " : "", notes, notes ? " fell back to a format that fits (marked *)" : "");
}

static void prompt_submit(ql_tui_app *a) {
    ql_tui_prompt *p = &a->prompt;
    const char *v = p->buf;
    long x;
    p->active = false;
    switch (p->purpose) {
    case P_FILTER:
        ql_tui_copy(a->m_filter, sizeof a->m_filter, v);
        a->m_cursor = a->m_scroll = 0;
        break;
    case P_OPEN:
        if (*v) ql_tui_start_open(a, v);
        break;
    case P_SRC_PATH:
        if (a->calib.field < a->calib.n_sources && *v)
            ql_tui_copy(a->calib.src[a->calib.field].path, sizeof a->calib.src[0].path, v);
        break;
    case P_SRC_WEIGHT: {
        char *e;
        double w = strtod(v, &e);
        if (e == v || *e || !(w > 0)) ql_tui_msg(a, 2, "a weight must be a number > 0");
        else if (a->calib.field < a->calib.n_sources) a->calib.src[a->calib.field].weight = w;
        break;
    }
    case P_SAMPLES:
        if (parse_int(v, 1, 1 << 20, &x)) a->calib.samples = (int)x;
        else ql_tui_msg(a, 2, "samples: a whole number from 1");
        break;
    case P_SEQLEN:
        if (parse_int(v, 2, 1 << 20, &x)) a->calib.seq_len = (int)x;
        else ql_tui_msg(a, 2, "length: a whole number from 2");
        break;
    case P_SEED:
        if (parse_int(v, 0, 0x7fffffffL, &x)) a->calib.seed = (uint64_t)x;
        else ql_tui_msg(a, 2, "seed: a whole number");
        break;
    case P_STATS_SAVE: if (*v) ql_tui_start_stats_file(a, v, true); break;
    case P_STATS_LOAD: if (*v) ql_tui_start_stats_file(a, v, false); break;
    case P_TEXT:
        if (*v) ql_tui_copy(a->preview.text, sizeof a->preview.text, v);
        break;
    case P_CTX:
        if (parse_int(v, 8, 1 << 20, &x)) a->preview.ctx = (int)x;
        else ql_tui_msg(a, 2, "context: a whole number from 8");
        break;
    case P_CHUNKS:
        if (parse_int(v, 0, 1 << 30, &x)) a->preview.chunks = (int)x;
        else ql_tui_msg(a, 2, "chunks: a whole number (0: all)");
        break;
    case P_QAT:
        if (ql_tui_qat_parse(a, v)) ql_tui_start_qat(a);
        break;
    case P_PRESET: {
        ql_preset *ps = NULL;
        ql_plan *plan = NULL;
        if (ql_preset_load(v, &ps) || ql_preset_resolve(ps, a->model, false, &plan)) ql_tui_msg(a, 2, "%s", ql_last_error());
        else {
            char src[96];
            snprintf(src, sizeof src, "preset %s", ql_preset_name(ps));
            apply_plan(a, plan, src);
        }
        ql_plan_free(plan);
        ql_preset_free(ps);
        break;
    }
    case P_TYPE: {
        ql_plan *plan = NULL;
        if (ql_plan_single_format(v, a->model, &plan)) ql_tui_msg(a, 2, "%s", ql_last_error());
        else {
            char src[96];
            snprintf(src, sizeof src, "--type %.80s", v);
            apply_plan(a, plan, src);
        }
        ql_plan_free(plan);
        break;
    }
    case P_METHOD_ROW:
    case P_METHOD_ALL: {
        const ql_method *me = ql_method_find(v);
        if (!me) {
            ql_tui_msg(a, 2, "%s", ql_last_error());
            break;
        }
        int line = plan_current(a);
        char why[256] = "";
        /* a method that cannot write a row's format leaves that row alone: no silent rounding to nearest */
        if (p->purpose == P_METHOD_ROW && line >= 0) {
            const ql_tui_row *r = &a->plan.rows[line];
            const ql_format *f = r->fmt ? r->fmt : r->orig;
            if (f && !ql_method_serves(me, f, why, sizeof why)) {
                ql_tui_msg(a, 2, "%s cannot write %s: %s", me->name, f->name, why);
                break;
            }
        }
        ql_tui_undo_push(a);
        int n = 0, kept = 0;
        for (int i = 0; i < a->plan.n_rows; i++) {
            ql_tui_row *r = &a->plan.rows[i];
            if ((p->purpose == P_METHOD_ROW && i != line) || (p->purpose == P_METHOD_ALL && r->pinned)) continue;
            const ql_format *f = r->fmt ? r->fmt : r->orig;
            if (f && !ql_method_serves(me, f, why, sizeof why)) {
                kept++;
                continue;
            }
            ql_tui_copy(r->method, sizeof r->method, me->name);
            if (!r->fmt && r->orig) r->fmt = r->orig;
            n++;
        }
        a->plan.edits++;
        if (kept)
            ql_tui_msg(a, n ? 1 : 2, "%d tensors use %s; %d keep their method: %s", n, me->name, kept, why);
        else
            ql_tui_msg(a, me->needs && !a->calib.stats ? 1 : 0, "%d tensors use %s%s", n, me->name,
                       me->needs && !a->calib.stats ? "; it needs statistics: run them on the Calib screen (r)" : "");
        break;
    }
    case P_CAND: {
        if (a->job) {
            ql_tui_msg(a, 1, "busy: %s is running (Esc cancels it)", a->job->name);
            break;
        }
        const ql_format *c[QL_TUI_MAX_CAND];
        char meth[QL_TUI_MAX_CAND][16];
        int n = 0;
        char buf[QL_TUI_PATH];
        ql_tui_copy(buf, sizeof buf, v);
        for (char *t = strtok(buf, ", "); t && n < QL_TUI_MAX_CAND; t = strtok(NULL, ", ")) {
            char mname[64], why[256];
            if (ql_parse_format_method(t, &c[n], mname, sizeof mname) || !c[n]->quantize_rows || !ql_method_by_name(mname)) {
                ql_tui_msg(a, 2, "'%.60s' is not FORMAT[+METHOD] that qlab can quantize to (see the Catalogue)", t);
                return;
            }
            if (!ql_method_serves(ql_method_by_name(mname), c[n], why, sizeof why)) {
                ql_tui_msg(a, 2, "'%.60s': %s cannot write %s: %.150s", t, mname, c[n]->name, why);
                return;
            }
            if (c[n]->requires_importance) { /* the TUI's measurements run without an imatrix */
                ql_tui_msg(a, 2, "'%.60s' needs an importance matrix: measure it with qlab sense --imatrix", t);
                return;
            }
            ql_tui_copy(meth[n], sizeof meth[n], mname);
            n++;
        }
        if (!n) {
            ql_tui_msg(a, 2, "give at least one format");
            break;
        }
        ql_tui_set_candidates(a, c, meth, n);
        if (a->sense) {
            /* keep every cell measured for a candidate that stays, as qlab sense does with its file */
            const ql_sense *old = a->qsense;
            char *specs[QL_TUI_MAX_CAND];
            for (int k = 0; k < n; k++) {
                char sp[96];
                ql_tui_cand_spec(a, k, sp, sizeof sp);
                specs[k] = ql_strdup(sp);
            }
            ql_sense *ns = NULL;
            int kept = 0;
            if (old && !ql_sense_new(a->model, specs, n, &ns)) {
                ql_sense_set_context(ns, old->calib, NULL, 0, 0, old->stats, old->imatrix, old->level);
                ns->n_seq = old->n_seq, ns->seq_len = old->seq_len, ns->tokens_hash = old->tokens_hash;
                ns->base_ppl = old->base_ppl, ns->file_bytes = old->file_bytes, ns->seconds = old->seconds;
                if (ql_sense_adopt(ns, old, &kept)) kept = 0;
            }
            for (int k = 0; k < n; k++) free(specs[k]);
            ql_tui_sense_free(a->sense);
            a->sense = NULL;
            ql_sense_free(a->qsense);
            a->qsense = ns;
            if (ns) ql_tui_sense_refresh(a);
            ql_tui_msg(a, 1, "candidates changed: %d measured cells kept (x measures the new candidates)", kept);
        }
        break;
    }
    case P_SENSE_SAVE:
        if (a->qsense && ql_sense_save(a->qsense, v)) ql_tui_msg(a, 2, "%s", ql_last_error());
        else if (a->qsense) ql_tui_msg(a, 0, "measurements saved to %.200s (qlab plan --sense reads it)", v);
        break;
    case P_SENSE_LOAD: {
        if (a->job) {
            ql_tui_msg(a, 1, "busy: %s is running (Esc cancels it)", a->job->name);
            break;
        }
        ql_sense *q = NULL;
        if (ql_sense_load(v, &q)) {
            ql_tui_msg(a, 2, "%s", ql_last_error());
            break;
        }
        int found = 0;
        for (int t = 0; t < q->n_tensors; t++) found += ql_gguf_find_tensor(a->model->gguf, q->tensors[t].name) >= 0;
        if (found < q->n_tensors) {
            ql_tui_msg(a, 2, "%.200s describes another model (%d of its %d tensors are not here)", v, q->n_tensors - found,
                       q->n_tensors);
            ql_sense_free(q);
            break;
        }
        ql_sense_free(a->qsense);
        a->qsense = q;
        ql_tui_sense_refresh(a);
        ql_tui_msg(a, 0, "measurements loaded: %d tensors x %d candidates, %s level", q->n_tensors, q->n_cand,
                   ql_sense_level_name(a->sense ? a->sense->level : q->level));
        break;
    }
    case P_PLAN_SAVE: {
        ql_plan *plan = ql_tui_plan_build(a);
        if (ql_plan_save(plan, a->model_path, v)) ql_tui_msg(a, 2, "%s", ql_last_error());
        else ql_tui_msg(a, 0, "plan saved to %s (%d tensors; qlab quant MODEL --plan %s -o OUT.gguf)", v, plan->n, v);
        ql_plan_free(plan);
        break;
    }
    case P_PLAN_LOAD: {
        ql_plan *plan = NULL;
        if (ql_plan_load(v, &plan)) {
            ql_tui_msg(a, 2, "%s", ql_last_error());
            break;
        }
        int unknown = 0;
        for (int i = 0; i < plan->n; i++) unknown += ql_gguf_find_tensor(a->model->gguf, plan->e[i].tensor) < 0;
        char src[96];
        snprintf(src, sizeof src, "plan %.80s", v);
        apply_plan(a, plan, src);
        ql_tui_plan_set_runtime(a, plan);
        if (unknown) ql_tui_msg(a, 1, "%d tensors of %.200s are not in this model (ignored)", unknown, v);
        ql_plan_free(plan);
        break;
    }
    case P_KV_SCHEME: ql_tui_set_kv(a, v); break;
    case P_KV:
        if (parse_int(v, 1, 1 << 24, &x)) a->plan.kv_ctx = (int)x;
        else ql_tui_msg(a, 2, "context: a whole number of tokens");
        break;
    case P_TARGET: {
        char *e;
        double t = strtod(v, &e);
        if (e == v || *e || !(t > 0)) ql_tui_msg(a, 2, "the target must be a number > 0");
        else if (a->autos.by_size) a->autos.target_mib = t;
        else a->autos.target_bpw = t;
        break;
    }
    case P_EXPORT_PATH:
        if (*v) ql_tui_copy(a->exp.path, sizeof a->exp.path, v);
        break;
    }
}

/* Tab in a path prompt: complete to the longest common prefix of the matching directory entries. */
static void prompt_complete(ql_tui_prompt *p) {
    char dir[QL_TUI_PATH], base[QL_TUI_PATH];
    const char *slash = strrchr(p->buf, '/');
    if (slash) {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - p->buf + 1), p->buf);
        ql_tui_copy(base, sizeof base, slash + 1);
    } else {
        snprintf(dir, sizeof dir, "./");
        ql_tui_copy(base, sizeof base, p->buf);
    }
    DIR *d = opendir(dir);
    if (!d) return;
    char best[QL_TUI_PATH] = "";
    int matches = 0;
    bool best_dir = false;
    size_t bl = strlen(base);
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, base, bl) || !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (!matches++) {
            ql_tui_copy(best, sizeof best, e->d_name);
            char full[2 * QL_TUI_PATH + 2];
            snprintf(full, sizeof full, "%s%s", dir, e->d_name);
            struct stat st;
            best_dir = stat(full, &st) == 0 && S_ISDIR(st.st_mode);
        } else {
            size_t i = 0;
            while (best[i] && best[i] == e->d_name[i]) i++;
            best[i] = 0;
        }
    }
    closedir(d);
    if (!matches) return;
    char out[2 * QL_TUI_PATH + 2];
    snprintf(out, sizeof out, "%s%s%s", slash ? dir : "", best, matches == 1 && best_dir ? "/" : "");
    ql_tui_copy(p->buf, sizeof p->buf, out);
    p->len = (int)strlen(p->buf);
}

static unsigned prompt_key(ql_tui_app *a, int k) {
    ql_tui_prompt *p = &a->prompt;
    bool fresh = p->fresh;
    p->fresh = false;
    if (fresh && k >= 32 && k < 0x110000 && k != 127) p->buf[p->len = 0] = 0; /* typing replaces the default */
    if (k == QL_KEY_ESC) p->active = false;
    else if (k == QL_KEY_ENTER || k == '\r') prompt_submit(a);
    else if (k == QL_KEY_BACKSPACE || k == 8) {
        while (p->len > 0 && ((unsigned char)p->buf[p->len - 1] & 0xC0) == 0x80) p->len--; /* whole UTF-8 char */
        if (p->len > 0) p->len--;
        p->buf[p->len] = 0;
    } else if (k == QL_KEY_CTRL('u')) p->buf[p->len = 0] = 0;
    else if (k == QL_KEY_TAB && p->purpose < (int)QL_ARRAY_LEN(PROMPT_IS_PATH) && PROMPT_IS_PATH[p->purpose])
        prompt_complete(p);
    else if (k >= 32 && k < 0x110000 && k != 127) {
        char u[5];
        int n = k < 0x80 ? (u[0] = (char)k, 1)
              : k < 0x800 ? (u[0] = (char)(0xC0 | (k >> 6)), u[1] = (char)(0x80 | (k & 0x3F)), 2)
              : k < 0x10000 ? (u[0] = (char)(0xE0 | (k >> 12)), u[1] = (char)(0x80 | ((k >> 6) & 0x3F)),
                               u[2] = (char)(0x80 | (k & 0x3F)), 3)
                            : (u[0] = (char)(0xF0 | (k >> 18)), u[1] = (char)(0x80 | ((k >> 12) & 0x3F)),
                               u[2] = (char)(0x80 | ((k >> 6) & 0x3F)), u[3] = (char)(0x80 | (k & 0x3F)), 4);
        if (p->len + n < (int)sizeof p->buf - 1) {
            memcpy(p->buf + p->len, u, (size_t)n);
            p->len += n;
            p->buf[p->len] = 0;
        }
    }
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- file browser */

static int cmp_name(const void *x, const void *y) {
    const char *a = *(char *const *)x, *b = *(char *const *)y;
    bool da = a[strlen(a) - 1] == '/', db = b[strlen(b) - 1] == '/';
    if (da != db) return da ? -1 : 1; /* folders first */
    return strcmp(a, b);
}

static void browser_clear(ql_tui_browser *b) {
    for (int i = 0; i < b->n; i++) free(b->names[i]);
    b->n = 0;
}

static void browser_read(ql_tui_app *a, const char *dir) {
    ql_tui_browser *b = &a->browser;
    char real[PATH_MAX];
    if (!realpath(dir, real)) ql_tui_copy(real, sizeof real, dir);
    DIR *d = opendir(real);
    if (!d) {
        ql_tui_msg(a, 2, "%s: cannot open", real);
        return;
    }
    browser_clear(b);
    ql_tui_copy(b->dir, sizeof b->dir, real);
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' && strcmp(e->d_name, "..")) continue; /* hidden */
        if (!strcmp(e->d_name, "..") && !strcmp(real, "/")) continue;
        char full[PATH_MAX + 256];
        snprintf(full, sizeof full, "%s/%s", real, e->d_name);
        struct stat st;
        if (stat(full, &st) != 0) continue;
        if (b->n == b->cap) {
            b->cap = b->cap ? 2 * b->cap : 64;
            b->names = ql_realloc(b->names, (size_t)b->cap * sizeof *b->names);
            b->sizes = ql_realloc(b->sizes, (size_t)b->cap * sizeof *b->sizes);
        }
        size_t l = strlen(e->d_name);
        char *nm = ql_malloc(l + 2);
        memcpy(nm, e->d_name, l + 1);
        if (S_ISDIR(st.st_mode)) strcat(nm, "/");
        b->names[b->n] = nm;
        b->sizes[b->n] = (int64_t)st.st_size;
        b->n++;
    }
    closedir(d);
    /* sizes follow names: sort an index instead of both arrays */
    int *idx = ql_malloc((size_t)(b->n ? b->n : 1) * sizeof *idx);
    char **nm = ql_malloc((size_t)(b->n ? b->n : 1) * sizeof *nm);
    int64_t *sz = ql_malloc((size_t)(b->n ? b->n : 1) * sizeof *sz);
    memcpy(nm, b->names, (size_t)b->n * sizeof *nm);
    qsort(nm, (size_t)b->n, sizeof *nm, cmp_name);
    for (int i = 0; i < b->n; i++)
        for (int j = 0; j < b->n; j++)
            if (b->names[j] == nm[i]) sz[i] = b->sizes[j];
    memcpy(b->names, nm, (size_t)b->n * sizeof *nm);
    memcpy(b->sizes, sz, (size_t)b->n * sizeof *sz);
    free(idx);
    free(nm);
    free(sz);
    b->cursor = b->scroll = 0;
}

static void browser_open(ql_tui_app *a, ql_tui_browse purpose, const char *start) {
    char dir[QL_TUI_PATH];
    ql_tui_copy(dir, sizeof dir, start && *start ? start : ".");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    a->browser.purpose = purpose;
    browser_read(a, dir);
    if (!a->browser.n && !a->browser.dir[0]) a->browser.purpose = QL_BROWSE_NONE;
}

/* A path relative to the working directory when the file is below it (shorter to read). */
static void short_path(const char *full, char *out, size_t cap) {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) {
        size_t l = strlen(cwd);
        if (!strncmp(full, cwd, l) && full[l] == '/') {
            snprintf(out, cap, "%s", full + l + 1);
            return;
        }
    }
    snprintf(out, cap, "%s", full);
}

static unsigned browser_key(ql_tui_app *a, int k) {
    ql_tui_browser *b = &a->browser;
    if (k == QL_KEY_ESC || k == 'q') {
        b->purpose = QL_BROWSE_NONE;
        return QL_R_REDRAW;
    }
    if (list_move(&b->cursor, b->n, k, a->h - 8)) return QL_R_REDRAW;
    if (k == QL_KEY_BACKSPACE || k == QL_KEY_LEFT) {
        char up[QL_TUI_PATH + 4];
        snprintf(up, sizeof up, "%s/..", b->dir);
        browser_read(a, up);
        return QL_R_REDRAW;
    }
    if ((k != QL_KEY_ENTER && k != QL_KEY_RIGHT) || !b->n) return QL_R_REDRAW;
    const char *nm = b->names[b->cursor];
    char full[2 * QL_TUI_PATH], rel[2 * QL_TUI_PATH];
    snprintf(full, sizeof full, "%s/%s", b->dir, nm);
    size_t l = strlen(full);
    bool dir = l && full[l - 1] == '/';
    if (dir) full[--l] = 0;
    /* a Hugging Face folder opens as a model; any other folder is entered */
    char cfg[2 * QL_TUI_PATH + 16];
    snprintf(cfg, sizeof cfg, "%s/config.json", full);
    struct stat st;
    bool hf = dir && b->purpose == QL_BROWSE_MODEL && stat(cfg, &st) == 0;
    bool folder_source = dir && b->purpose == QL_BROWSE_SOURCE && k == QL_KEY_RIGHT; /* Right adds a whole folder */
    if (dir && !hf && !folder_source) {
        browser_read(a, full);
        return QL_R_REDRAW;
    }
    short_path(full, rel, sizeof rel);
    ql_tui_browse purpose = b->purpose;
    b->purpose = QL_BROWSE_NONE;
    switch (purpose) {
    case QL_BROWSE_SOURCE:
        if (a->calib.n_sources < QL_TUI_MAX_SOURCES) {
            ql_tui_source *s = &a->calib.src[a->calib.n_sources++];
            ql_tui_copy(s->path, sizeof s->path, rel);
            s->weight = 1;
            a->calib.field = a->calib.n_sources - 1;
            ql_tui_msg(a, 0, "source added: %s (w sets its weight)", rel);
        }
        break;
    case QL_BROWSE_TEXT:
        ql_tui_copy(a->preview.text, sizeof a->preview.text, rel);
        ql_tui_msg(a, 0, "evaluation text: %s", rel);
        break;
    case QL_BROWSE_MODEL: ql_tui_start_open(a, rel); break;
    case QL_BROWSE_PLAN: break;
    case QL_BROWSE_NONE: break;
    }
    return QL_R_REDRAW;
}

/* ---------------------------------------------------------------- dispatch */

static unsigned help_key(ql_tui_app *a, int k) {
    if (k == QL_KEY_ESC || k == '?' || k == 'q' || k == QL_KEY_F1 || k == QL_KEY_ENTER) a->help = false;
    else if (k == QL_KEY_DOWN || k == 'j') a->help_scroll++;
    else if (k == QL_KEY_UP || k == 'k') a->help_scroll = a->help_scroll > 0 ? a->help_scroll - 1 : 0;
    else if (k == QL_KEY_PGDN) a->help_scroll += 10;
    else if (k == QL_KEY_PGUP) a->help_scroll = a->help_scroll > 10 ? a->help_scroll - 10 : 0;
    else if (k == QL_KEY_HOME) a->help_scroll = 0;
    return QL_R_REDRAW;
}

unsigned ql_tui_handle(ql_tui_app *a, int k) {
    if (k == QL_KEY_RESIZE) return QL_R_REDRAW;
    if (k == '\r') k = QL_KEY_ENTER;
    if (k == 8) k = QL_KEY_BACKSPACE;
    if (k >= QL_KEY_CLICK) {
        int x = (k - QL_KEY_CLICK) & 1023, y = (k - QL_KEY_CLICK) >> 10;
        if (y == 0 && !a->prompt.active && a->browser.purpose == QL_BROWSE_NONE) {
            int t = ql_tui_tab_at(x);
            if (t >= 0) {
                a->help = false;
                a->screen = (ql_tui_screen)t;
            }
        }
        return QL_R_REDRAW;
    }
    if (a->prompt.active) return prompt_key(a, k);
    if (a->browser.purpose != QL_BROWSE_NONE) return browser_key(a, k);
    if (a->help) return help_key(a, k);
    if (a->screen == QL_SCR_AUTO && a->autos.field == AF_TARGET && a->model && ((k >= '0' && k <= '9') || k == '.')) {
        auto_enter(a, QL_KEY_ENTER); /* typing a number on the target row edits the target, as in a form */
        return prompt_key(a, k) | QL_R_REDRAW;
    }
    unsigned r = QL_R_NONE;
    bool found = false;
    for (int pass = 0; pass < 2 && !found; pass++) /* screen bindings first, then global ones */
        for (size_t i = 0; i < QL_ARRAY_LEN(BINDINGS); i++) {
            const binding *b = &BINDINGS[i];
            bool global = b->screens == ALL;
            if ((pass == 0) == global || !(b->screens & (1u << a->screen))) continue;
            if (b->key == k || (b->key2 && b->key2 == k)) {
                if (!a->model && !global && a->screen != QL_SCR_MODEL && a->screen != QL_SCR_CATALOGUE) {
                    need_model(a);
                    return QL_R_REDRAW;
                }
                r = b->fn(a, k);
                found = true;
                break;
            }
        }
    if (!found && k < 0x110000 && k > 32) ql_tui_msg(a, 1, "key '%c' does nothing here (? lists the keys)", k < 127 ? k : '?');
    if (k != 'q' && k != QL_KEY_CTRL('c')) a->quit_armed = false;
    /* the Catalogue keeps its example current whenever the worker is free */
    if (a->screen == QL_SCR_CATALOGUE && !a->job && !(r & QL_R_QUIT)) ql_tui_cat_refresh(a);
    return r | QL_R_REDRAW;
}
