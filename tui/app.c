/* app.c — workbench state: creation, the plan rows and what they add up to, undo/redo, messages,
 * tick/wait, and the key-script feeder used by tests and `qlab tui --keys`. */
#include "tui/app.h"
#include "kernels/ggml_types.h"
#include "base/parallel.h"
#include "pipeline/quantize.h"
#include "sensitivity/sense.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *SCREEN_NAMES[QL_SCR_COUNT] = {"Model", "Calib", "Plan", "Auto", "Preview", "Export", "Catalogue"};

const char *ql_tui_screen_name(ql_tui_screen s) { return s < QL_SCR_COUNT ? SCREEN_NAMES[s] : "?"; }

void ql_tui_msg(ql_tui_app *a, int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->msg, sizeof a->msg, fmt, ap);
    va_end(ap);
    a->msg_level = level;
}

uint64_t ql_tui_hash_str(uint64_t h, const char *s) {
    if (!h) h = 1469598103934665603ull;
    for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (h ^ 0xff) * 1099511628211ull; /* separator, so "ab"+"c" differs from "a"+"bc" */
}

void ql_tui_copy(char *dst, size_t cap, const char *src) {
    if (!cap) return;
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = 0;
}

/* ---------------------------------------------------------------- plan rows */

const ql_format *ql_tui_row_format(const ql_tui_row *r) { return r->fmt ? r->fmt : r->orig; }

bool ql_tui_cand_fits(const ql_format *f, const ql_tui_row *r) {
    return f && f->quantize_rows && ql_format_tensor_bytes(f, r->ne0, r->n / r->ne0) > 0;
}

int64_t ql_tui_row_bytes(const ql_tui_app *a, const ql_tui_row *r) {
    const ql_format *f = r->fmt;
    int64_t b = f ? ql_format_tensor_bytes(f, r->ne0, r->n / r->ne0) : -1;
    return b > 0 ? b : (int64_t)a->model->gguf->tensors[r->tensor].nbytes;
}

int ql_tui_cand_index(const ql_tui_app *a, const ql_tui_row *r) {
    const ql_format *f = ql_tui_row_format(r);
    int any = -1;
    for (int i = 0; i < a->plan.n_cand; i++)
        if (a->plan.cand[i] == f) {
            if (!strcmp(a->plan.cand_method[i], r->method)) return i;
            if (any < 0) any = i;
        }
    return any;
}

ql_tui_totals ql_tui_plan_totals(const ql_tui_app *a) {
    ql_tui_totals t = {0};
    if (!a->model) return t;
    const ql_gguf *g = a->model->gguf;
    int64_t bits = 0;
    int64_t *tensor_bytes = ql_malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *tensor_bytes);
    for (int64_t i = 0; i < g->n_tensors; i++) tensor_bytes[i] = (int64_t)g->tensors[i].nbytes;
    bool kld_ok = a->sense && a->sense->additive_kld;
    double kld = 0;
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        int64_t b = ql_tui_row_bytes(a, r);
        tensor_bytes[r->tensor] = b;
        bits += b * 8;
        t.weights += r->n;
        if (kld_ok) {
            int c = ql_tui_cand_index(a, r);
            double e = c >= 0 && i < a->sense->n_rows ? a->sense->err[(size_t)i * a->sense->n_cand + c] : NAN;
            if (!r->fmt || r->fmt == r->orig) e = 0; /* unchanged: no added error */
            kld += e;
        }
    }
    t.bpw = t.weights ? (double)bits / (double)t.weights : 0;
    t.file_bytes = ql_quantize_file_bytes(a->model, tensor_bytes, a->plan.runtime); /* exactly what the export writes */
    free(tensor_bytes);
    const ql_config *c = &a->model->cfg;
    const ql_kv_settings *kv = ql_tui_runtime_kv(a);
    t.kv_bytes = kv ? ql_kv_settings_bytes(kv, c, a->plan.kv_ctx, kv->batch > 0 ? kv->batch : 1)
                    : 2ll * c->n_layer * a->plan.kv_ctx * c->n_head_kv * c->head_dim * 2;
    t.pred_kld = kld_ok ? kld : NAN;
    return t;
}

int ql_tui_plan_lines(const ql_tui_app *a, int *lines, int cap) {
    int n = 0;
    for (int g = 0; g < a->plan.n_groups; g++) {
        bool any = false;
        for (int i = 0; i < a->plan.n_rows && !any; i++) any = a->plan.rows[i].layer + 1 == g;
        if (!any) continue;
        if (n < cap) lines[n] = -1 - g;
        n++;
        if (a->plan.collapsed[g]) continue;
        for (int i = 0; i < a->plan.n_rows; i++)
            if (a->plan.rows[i].layer + 1 == g) {
                if (n < cap) lines[n] = i;
                n++;
            }
    }
    return n;
}

typedef struct {
    const ql_format *f;
    char m[16];
} cand_pair;

static int cmp_bpw(const void *x, const void *y) {
    const cand_pair *a = x, *b = y;
    if (a->f->bpw != b->f->bpw) return (a->f->bpw > b->f->bpw) - (a->f->bpw < b->f->bpw);
    int c = strcmp(a->f->name, b->f->name);
    return c ? c : strcmp(a->m, b->m);
}

void ql_tui_set_candidates(ql_tui_app *a, const ql_format *const *cand, char (*methods)[16], int n) {
    cand_pair p[QL_TUI_MAX_CAND];
    int k = 0;
    for (int i = 0; i < n && k < QL_TUI_MAX_CAND; i++) {
        if (!cand[i]) continue;
        const char *m = methods && methods[i][0] ? methods[i] : "rtn";
        bool dup = false;
        for (int j = 0; j < k; j++) dup |= p[j].f == cand[i] && !strcmp(p[j].m, m);
        if (dup) continue;
        p[k].f = cand[i];
        ql_tui_copy(p[k].m, sizeof p[k].m, m);
        k++;
    }
    qsort(p, (size_t)k, sizeof p[0], cmp_bpw);
    for (int i = 0; i < k; i++) {
        a->plan.cand[i] = p[i].f;
        memcpy(a->plan.cand_method[i], p[i].m, sizeof p[i].m);
    }
    a->plan.n_cand = k;
    if (a->plan.col >= k) a->plan.col = k ? k - 1 : 0;
    a->plan.col_scroll = 0;
}

static const char *DEFAULT_CAND[] = {"q2_k", "q3_k", "q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0", "f16"};

static void snap_free(ql_tui_snapshot *s) {
    free(s->fmt);
    free(s->method);
    free(s->pinned);
    memset(s, 0, sizeof *s);
}

static void snap_take(const ql_tui_app *a, ql_tui_snapshot *s) {
    int n = a->plan.n_rows;
    s->fmt = ql_malloc((size_t)(n ? n : 1) * sizeof *s->fmt);
    s->method = ql_malloc((size_t)(n ? n : 1) * sizeof *s->method);
    s->pinned = ql_malloc((size_t)(n ? n : 1) * sizeof *s->pinned);
    for (int i = 0; i < n; i++) {
        s->fmt[i] = a->plan.rows[i].fmt;
        memcpy(s->method[i], a->plan.rows[i].method, sizeof s->method[i]);
        s->pinned[i] = a->plan.rows[i].pinned;
    }
    ql_tui_copy(s->source, sizeof s->source, a->plan.source);
}

static void snap_restore(ql_tui_app *a, const ql_tui_snapshot *s) {
    for (int i = 0; i < a->plan.n_rows; i++) {
        a->plan.rows[i].fmt = s->fmt[i];
        memcpy(a->plan.rows[i].method, s->method[i], sizeof s->method[i]);
        a->plan.rows[i].pinned = s->pinned[i];
    }
    ql_tui_copy(a->plan.source, sizeof a->plan.source, s->source);
}

static void stack_push(ql_tui_snapshot *st, int *n, ql_tui_snapshot s) {
    if (*n == QL_TUI_UNDO) { /* drop the oldest */
        snap_free(&st[0]);
        memmove(st, st + 1, (QL_TUI_UNDO - 1) * sizeof *st);
        (*n)--;
    }
    st[(*n)++] = s;
}

void ql_tui_undo_push(ql_tui_app *a) {
    ql_tui_snapshot s;
    snap_take(a, &s);
    stack_push(a->plan.undo, &a->plan.n_undo, s);
    while (a->plan.n_redo) snap_free(&a->plan.redo[--a->plan.n_redo]);
}

bool ql_tui_undo(ql_tui_app *a) {
    if (!a->plan.n_undo) return false;
    ql_tui_snapshot now;
    snap_take(a, &now);
    stack_push(a->plan.redo, &a->plan.n_redo, now);
    ql_tui_snapshot *s = &a->plan.undo[--a->plan.n_undo];
    snap_restore(a, s);
    snap_free(s);
    return true;
}

bool ql_tui_redo(ql_tui_app *a) {
    if (!a->plan.n_redo) return false;
    ql_tui_snapshot now;
    snap_take(a, &now);
    stack_push(a->plan.undo, &a->plan.n_undo, now);
    ql_tui_snapshot *s = &a->plan.redo[--a->plan.n_redo];
    snap_restore(a, s);
    snap_free(s);
    return true;
}

ql_plan *ql_tui_plan_build(const ql_tui_app *a) {
    ql_plan *p = ql_plan_new();
    const ql_gguf *g = a->model->gguf;
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        if (!r->fmt || (r->fmt == r->orig && !strcmp(r->method, "rtn"))) continue;
        ql_plan_set(p, g->tensors[r->tensor].name, r->fmt, r->method, r->note[0] ? r->note : NULL);
    }
    const ql_plan *rt = a->plan.runtime;
    for (int i = 0; rt && i < rt->n_act; i++) ql_plan_set_act(p, rt->act[i].tensor, rt->act[i].mode, rt->act[i].threshold);
    if (rt && rt->method_opts) p->method_opts = ql_strdup(rt->method_opts);
    if (rt && rt->kv.set) { /* the KV figure's context is the plan's */
        ql_kv_settings_copy(&p->kv, &rt->kv);
        p->kv.ctx = a->plan.kv_ctx;
    }
    char src[160];
    snprintf(src, sizeof src, "qlab tui: %s%s", a->plan.source, a->plan.edits ? " + hand edits" : "");
    p->source = ql_strdup(src);
    return p;
}

void ql_tui_plan_set_runtime(ql_tui_app *a, const ql_plan *p) {
    ql_plan_free(a->plan.runtime);
    a->plan.runtime = NULL;
    if (!p || (!p->n_act && !p->method_opts && !p->kv.set)) return;
    ql_plan *rt = a->plan.runtime = ql_plan_new();
    for (int i = 0; i < p->n_act; i++) ql_plan_set_act(rt, p->act[i].tensor, p->act[i].mode, p->act[i].threshold);
    if (p->method_opts) rt->method_opts = ql_strdup(p->method_opts);
    if (p->kv.set) {
        ql_kv_settings_copy(&rt->kv, &p->kv);
        if (p->kv.ctx > 0) a->plan.kv_ctx = (int)p->kv.ctx;
    }
}

const ql_kv_settings *ql_tui_runtime_kv(const ql_tui_app *a) {
    return a->plan.runtime && a->plan.runtime->kv.set ? &a->plan.runtime->kv : NULL;
}

bool ql_tui_set_kv(ql_tui_app *a, const char *spec) {
    const char *eq = strchr(spec, '=');
    int layer = -1;
    if (eq) { /* blk.N=SCHEME */
        char *end;
        long l = strncmp(spec, "blk.", 4) ? -1 : strtol(spec + 4, &end, 10);
        if (l < 0 || l >= a->model->cfg.n_layer || end != eq) {
            ql_tui_msg(a, 2, "KV: '%.60s': blk.N=SCHEME with N a layer (0-%d), or SCHEME for every layer", spec,
                       a->model->cfg.n_layer - 1);
            return false;
        }
        layer = (int)l;
        spec = eq + 1;
    }
    ql_kv_scheme sc;
    if (!ql_kv_scheme_parse(spec, &sc) || ql_kv_scheme_check(&sc, &a->model->cfg, a->model_path)) {
        ql_tui_msg(a, 2, "%s", ql_last_error());
        return false;
    }
    if (!a->plan.runtime) a->plan.runtime = ql_plan_new();
    ql_kv_settings *kv = &a->plan.runtime->kv;
    if (layer >= 0) ql_kv_settings_set_layer(kv, layer, &sc);
    else { /* every layer: earlier per-layer choices go */
        ql_kv_settings_free(kv);
        kv->scheme = sc;
    }
    kv->set = true;
    char d[512];
    ql_tui_msg(a, 0, "KV cache: %s", ql_kv_settings_describe(kv, d, sizeof d));
    return true;
}

const ql_plan_act *ql_tui_row_act(const ql_tui_app *a, const ql_tui_row *r) {
    if (!a->plan.runtime) return NULL;
    const ql_plan_act *pa =
        ql_plan_find_act(a->plan.runtime, a->model->gguf->tensors[r->tensor].name, r->layer >= 0);
    return pa && pa->mode != QL_ACT_NONE ? pa : NULL;
}

void ql_tui_plan_adopt(ql_tui_app *a, const ql_plan *p, const char *source, bool keep_pins) {
    const ql_gguf *g = a->model->gguf;
    for (int i = 0; i < a->plan.n_rows; i++) {
        ql_tui_row *r = &a->plan.rows[i];
        if (keep_pins && r->pinned) continue;
        const ql_plan_entry *e = ql_plan_find(p, g->tensors[r->tensor].name);
        r->fmt = e ? e->format : NULL;
        ql_tui_copy(r->method, sizeof r->method, e && e->method ? e->method : "rtn");
        ql_tui_copy(r->note, sizeof r->note, e && e->note ? e->note : "");
    }
    ql_tui_copy(a->plan.source, sizeof a->plan.source, source);
    a->plan.edits = 0;
}

uint64_t ql_tui_plan_hash(const ql_tui_app *a) {
    uint64_t h = ql_tui_hash_str(0, a->model_path);
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        const ql_format *f = r->fmt && r->fmt != r->orig ? r->fmt : NULL;
        if (!f && !strcmp(r->method, "rtn")) continue;
        h = ql_tui_hash_str(h, a->model->gguf->tensors[r->tensor].name);
        h = ql_tui_hash_str(h, f ? f->name : "-");
        h = ql_tui_hash_str(h, r->method);
    }
    const ql_plan *rt = a->plan.runtime; /* activation schemes change the previewed figures too */
    for (int i = 0; rt && i < rt->n_act; i++) {
        char spec[64];
        ql_act_spec_format(rt->act[i].mode, rt->act[i].threshold, spec, sizeof spec);
        h = ql_tui_hash_str(ql_tui_hash_str(h, rt->act[i].tensor), spec);
    }
    if (rt && rt->method_opts) h = ql_tui_hash_str(h, rt->method_opts);
    if (rt && rt->kv.set) /* so is the KV cache: every layer's scheme (a description could be cut short) */
        for (int l = 0; l < a->model->cfg.n_layer; l++) {
            ql_kv_scheme sc = ql_kv_settings_layer(&rt->kv, l);
            char nm[160];
            h = ql_tui_hash_str(h, ql_kv_scheme_name(&sc, nm, sizeof nm));
        }
    return h;
}

static void free_rows(ql_tui_app *a) {
    for (int i = 0; i < a->plan.n_undo; i++) snap_free(&a->plan.undo[i]);
    for (int i = 0; i < a->plan.n_redo; i++) snap_free(&a->plan.redo[i]);
    a->plan.n_undo = a->plan.n_redo = 0;
    free(a->plan.rows);
    free(a->plan.collapsed);
    a->plan.rows = NULL;
    a->plan.collapsed = NULL;
    a->plan.n_rows = a->plan.n_groups = 0;
    ql_plan_free(a->plan.runtime);
    a->plan.runtime = NULL;
}

void ql_tui_sense_free(ql_tui_sense *s) {
    if (!s) return;
    free(s->err);
    free(s);
}

/* "blk.12.ffn_down.weight" -> layer 12, kind "ffn_down"; others -> -1 and the name before ".weight" */
static void parse_name(const char *name, int *layer, char *kind, size_t cap) {
    int l, off = 0;
    if (sscanf(name, "blk.%d.%n", &l, &off) == 1 && off > 0) *layer = l;
    else *layer = -1, off = 0;
    snprintf(kind, cap, "%s", name + off);
    char *dot = strstr(kind, ".weight");
    if (dot) *dot = 0;
}

static void build_rows(ql_tui_app *a) {
    const ql_gguf *g = a->model->gguf;
    a->plan.rows = ql_calloc((size_t)(g->n_tensors ? g->n_tensors : 1), sizeof *a->plan.rows);
    int n = 0, max_layer = -1;
    /* tensors outside the blocks first (token_embd, output), then the blocks in file order */
    for (int pass = 0; pass < 2; pass++)
        for (int64_t i = 0; i < g->n_tensors; i++) {
            const ql_gguf_tensor *t = &g->tensors[i];
            if (!ql_tensor_is_quantizable(t->name, t->n_dims, t->ne)) continue;
            int layer;
            char kind[64];
            parse_name(t->name, &layer, kind, sizeof kind);
            if ((pass == 0) != (layer < 0)) continue;
            ql_tui_row *r = &a->plan.rows[n++];
            r->tensor = (int)i;
            r->layer = layer;
            ql_tui_copy(r->kind, sizeof r->kind, kind);
            r->ne0 = t->ne[0];
            r->n = 1;
            for (int d = 0; d < t->n_dims; d++) r->n *= t->ne[d];
            r->ne1 = r->n / r->ne0;
            r->orig = ql_format_by_type(t->type);
            snprintf(r->method, sizeof r->method, "rtn");
            if (layer > max_layer) max_layer = layer;
        }
    a->plan.n_rows = n;
    a->plan.n_groups = max_layer + 2;
    a->plan.collapsed = ql_calloc((size_t)a->plan.n_groups, sizeof(bool));
    a->plan.cursor = a->plan.scroll = 0;
    snprintf(a->plan.source, sizeof a->plan.source, "as stored");
    a->plan.edits = 0;
}

/* The llama.cpp ladder, less the formats no tensor of this model can use; when some tensors fit no
 * block format below f16 (rows of 172 ...), qlab's INTn groups (which allow a short last group) too. */
static void default_candidates(ql_tui_app *a) {
    static const char *INT_LADDER[] = {"int2_g32", "int3_g32", "int4_g32", "int5_g32", "int6_g32", "int8_g32"};
    const ql_format *c[QL_TUI_MAX_CAND];
    int n = 0;
    for (size_t i = 0; i < QL_ARRAY_LEN(DEFAULT_CAND); i++) {
        const ql_format *f = ql_format_by_name(DEFAULT_CAND[i]);
        bool used = false;
        for (int r = 0; f && r < a->plan.n_rows && !used; r++) used = ql_tui_cand_fits(f, &a->plan.rows[r]);
        if (used) c[n++] = f;
    }
    bool stuck = false; /* a row whose only candidate is f16 */
    for (int r = 0; r < a->plan.n_rows && !stuck; r++) {
        int fit = 0;
        for (int k = 0; k < n; k++) fit += c[k]->bpw < 16 && ql_tui_cand_fits(c[k], &a->plan.rows[r]);
        stuck = fit == 0;
    }
    for (size_t i = 0; stuck && i < QL_ARRAY_LEN(INT_LADDER); i++) {
        const ql_format *f = ql_format_by_name(INT_LADDER[i]);
        if (f && f->quantize_rows) c[n++] = f;
    }
    ql_tui_set_candidates(a, c, NULL, n);
    a->plan.col = 0;
}

static bool file_exists(const char *p) {
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A text to evaluate on when none was given: the shared data folder's TinyStories text for story
 * models, WikiText-2 otherwise. */
static void default_texts(ql_tui_app *a, const ql_tui_config *cfg) {
    const char *roots[] = {getenv("QL_SHARED"), "../shared", "shared"};
    const char *name = a->model ? ql_gguf_get_str(a->model->gguf, "general.name") : NULL;
    bool stories = strstr(a->model_path, "stories") || (name && strstr(name, "stories"));
    const char *eval = stories ? "data/tinystories-valid.txt" : "data/wikitext-2-test.raw";
    const char *cal = stories ? "data/tinystories-valid.txt" : "data/wikitext-2-valid.raw";
    char buf[QL_TUI_PATH];
    if (cfg && cfg->text) ql_tui_copy(a->preview.text, sizeof a->preview.text, cfg->text);
    for (size_t i = 0; i < QL_ARRAY_LEN(roots) && !a->preview.text[0]; i++) {
        if (!roots[i]) continue;
        snprintf(buf, sizeof buf, "%s/%s", roots[i], eval);
        if (file_exists(buf)) ql_tui_copy(a->preview.text, sizeof a->preview.text, buf);
    }
    a->calib.n_sources = 0;
    if (cfg && cfg->calib) {
        ql_tui_copy(a->calib.src[0].path, sizeof a->calib.src[0].path, cfg->calib);
        a->calib.src[0].weight = 1;
        a->calib.n_sources = 1;
        return;
    }
    for (size_t i = 0; i < QL_ARRAY_LEN(roots); i++) {
        if (!roots[i]) continue;
        snprintf(buf, sizeof buf, "%s/%s", roots[i], cal);
        if (file_exists(buf)) {
            ql_tui_copy(a->calib.src[0].path, sizeof a->calib.src[0].path, buf);
            a->calib.src[0].weight = 1;
            a->calib.n_sources = 1;
            return;
        }
    }
    if (a->preview.text[0]) {
        ql_tui_copy(a->calib.src[0].path, sizeof a->calib.src[0].path, a->preview.text);
        a->calib.src[0].weight = 1;
        a->calib.n_sources = 1;
    }
}

static void reset_model_state(ql_tui_app *a) {
    free_rows(a);
    ql_tui_sense_free(a->sense);
    a->sense = NULL;
    ql_sense_free(a->qsense);
    a->qsense = NULL;
    free(a->autos.sol_fmt);
    free(a->autos.sol_method);
    a->autos.sol_fmt = NULL;
    a->autos.sol_method = NULL;
    a->autos.has_solution = false;
    a->autos.n_pareto = 0;
    ql_calib_free(a->calib.set);
    a->calib.set = NULL;
    a->calib.set_key = 0;
    ql_stats_free(a->calib.stats);
    a->calib.stats = NULL;
    a->calib.stats_label[0] = 0;
    a->preview.n_hist = 0;
    a->preview.cursor = 0;
    a->preview.last = -1;
    a->preview.has_base = false;
    if (a->preview.base_logits[0]) unlink(a->preview.base_logits);
    a->cat.has_effect = false;
    a->cat.effect_key = 0;
    a->m_cursor = a->m_scroll = 0;
}

ql_status ql_tui_open_model(ql_tui_app *a, ql_model *m, const char *path) {
    reset_model_state(a);
    ql_model_free(a->model);
    a->model = m;
    ql_tui_copy(a->model_path, sizeof a->model_path, path);
    struct stat st;
    a->file_bytes = stat(path, &st) == 0 && S_ISREG(st.st_mode) ? (int64_t)st.st_size : 0;
    build_rows(a);
    default_candidates(a);
    const ql_config *c = &m->cfg;
    a->plan.kv_ctx = c->n_ctx_train > 0 ? c->n_ctx_train : 4096;
    int ctx = c->n_ctx_train > 0 && c->n_ctx_train < 512 ? c->n_ctx_train : 512;
    if (ctx < 16) ctx = 16;
    a->preview.ctx = ctx;
    a->calib.seq_len = ctx;
    /* the Catalogue's first example: a block-0 tensor whose rows most block formats fit */
    a->cat.row = 0;
    int best = -1;
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        int score = r->layer == 0 ? (r->ne0 % 256 == 0 ? 3 : r->ne0 % 32 == 0 ? 2 : 1) : 0;
        if (score > best) best = score, a->cat.row = i;
    }
    /* a default export name beside the model: NAME-qlab.gguf */
    char base[QL_TUI_PATH];
    ql_tui_copy(base, sizeof base, path);
    size_t l = strlen(base);
    while (l && base[l - 1] == '/') base[--l] = 0;
    if (l > 5 && !strcmp(base + l - 5, ".gguf")) base[l - 5] = 0;
    const char *slash = strrchr(base, '/');
    snprintf(a->exp.path, sizeof a->exp.path, "%.200s-qlab.gguf", slash ? slash + 1 : base);
    return QL_OK;
}

ql_status ql_tui_app_new(const ql_tui_config *cfg, ql_tui_app **out) {
    *out = NULL;
    ql_model *m = NULL;
    if (cfg && cfg->model) {
        ql_status s = ql_model_load(cfg->model, &m);
        if (s) return s;
    }
    ql_tui_app *a = ql_calloc(1, sizeof *a);
    a->n_threads = cfg && cfg->n_threads > 0 ? cfg->n_threads : ql_default_threads();
    a->w = 80;
    a->h = 24;
    a->preview.ctx = 512;
    a->preview.chunks = 16;
    a->preview.last = -1;
    a->calib.samples = 64;
    a->calib.seq_len = 512;
    a->calib.seed = 1;
    a->autos.target_bpw = 4.5;
    a->autos.target_mib = 0;
    a->plan.kv_ctx = 4096;
    a->sense_level = -1;
    a->cat.demo_fmt = ql_format_by_name("int4_g32");
    const char *td = getenv("TMPDIR");
    snprintf(a->tmpdir, sizeof a->tmpdir, "%s/qlab-tui.XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(a->tmpdir)) ql_tui_copy(a->tmpdir, sizeof a->tmpdir, td && *td ? td : "/tmp");
    if (m) ql_tui_open_model(a, m, cfg->model);
    default_texts(a, cfg);
    if (a->model) {
        ql_tui_totals t = ql_tui_plan_totals(a);
        /* the hint first: at 80 columns a long path would push it off the line */
        const char *base = strrchr(a->model_path, '/');
        ql_tui_msg(a, 0, "? for help · %s: %d tensors to plan, %.2f bits/weight as stored", base ? base + 1 : a->model_path,
                   a->plan.n_rows, t.bpw);
        a->autos.target_mib = t.file_bytes / 1048576.0 / 4;
    } else
        ql_tui_msg(a, 1, "no model: press o on the Model screen to open one");
    *out = a;
    return QL_OK;
}

/* The job-free part of ql_tui_app_free (tui/jobs.c stops the worker first). */
void ql_tui_app_release(ql_tui_app *a) {
    if (!a) return;
    reset_model_state(a);
    ql_model_free(a->model);
    for (int i = 0; i < a->browser.n; i++) free(a->browser.names[i]);
    free(a->browser.names);
    free(a->browser.sizes);
    if (a->preview.base_logits[0]) unlink(a->preview.base_logits);
    rmdir(a->tmpdir); /* only succeeds when empty: never removes anything else */
    free(a);
}

/* ---------------------------------------------------------------- key scripts */

static const struct { const char *name; int key; } KEY_NAMES[] = {
    {"enter", QL_KEY_ENTER}, {"esc", QL_KEY_ESC}, {"tab", QL_KEY_TAB}, {"btab", QL_KEY_BTAB}, {"up", QL_KEY_UP},
    {"down", QL_KEY_DOWN}, {"left", QL_KEY_LEFT}, {"right", QL_KEY_RIGHT}, {"pgup", QL_KEY_PGUP},
    {"pgdn", QL_KEY_PGDN}, {"home", QL_KEY_HOME}, {"end", QL_KEY_END}, {"bs", QL_KEY_BACKSPACE},
    {"del", QL_KEY_DEL}, {"f1", QL_KEY_F1}, {"lt", '<'}, {"space", ' '},
};

unsigned ql_tui_feed(ql_tui_app *a, const char *s) {
    unsigned r = 0;
    while (*s && !(r & QL_R_QUIT)) {
        if (*s == '<') {
            const char *e = strchr(s, '>');
            char name[16];
            if (e && e - s - 1 < (int)sizeof name) {
                snprintf(name, sizeof name, "%.*s", (int)(e - s - 1), s + 1);
                int key = -1;
                for (size_t i = 0; i < QL_ARRAY_LEN(KEY_NAMES); i++)
                    if (!strcmp(name, KEY_NAMES[i].name)) key = KEY_NAMES[i].key;
                if (!strncmp(name, "c-", 2) && isalpha((unsigned char)name[2]) && !name[3])
                    key = QL_KEY_CTRL(name[2]);
                if (!strcmp(name, "wait")) {
                    ql_tui_wait(a);
                    r |= QL_R_REDRAW;
                    s = e + 1;
                    continue;
                }
                if (key >= 0) {
                    r |= ql_tui_handle(a, key);
                    s = e + 1;
                    continue;
                }
            }
        }
        r |= ql_tui_handle(a, (unsigned char)*s++);
    }
    return r;
}

/* ---------------------------------------------------------------- Model screen list */

static int cmp_tensor(const void *x, const void *y, void *ctx) {
    const ql_tui_app *a = ctx;
    const ql_gguf_tensor *t = a->model->gguf->tensors;
    int i = *(const int *)x, j = *(const int *)y, c = 0;
    switch (a->m_sort) {
    case 1: c = strcmp(t[i].name, t[j].name); break;
    case 2: c = (t[i].nbytes < t[j].nbytes) - (t[i].nbytes > t[j].nbytes); break; /* largest first */
    case 3: c = (int)t[i].type - (int)t[j].type; break;
    default: break;
    }
    return c ? c : i - j;
}

int ql_tui_model_lines(const ql_tui_app *a, int *lines, int cap) {
    if (!a->model) return 0;
    const ql_gguf *g = a->model->gguf;
    int n = 0;
    for (int64_t i = 0; i < g->n_tensors && n < cap; i++)
        if (!a->m_filter[0] || strstr(g->tensors[i].name, a->m_filter)) lines[n++] = (int)i;
    qsort_r(lines, (size_t)n, sizeof *lines, cmp_tensor, (void *)a);
    return n;
}
