/* views.c — the frame (tab bar, plan footer, status line), the overlays (help, prompt, file browser)
 * and the Model, Calibration, Preview and Export screens. State in, cells out: nothing here changes
 * the app except remembering the size it drew at and keeping scroll positions in range. */
#include "tui/view.h"
#include "kernels/ggml_types.h"
#include "tui/jobs.h"
#include "methods/method.h"
#include "pipeline/export.h"
#include "core/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

void ql_fmt_bytes(char *buf, size_t cap, double b) {
    if (b < 1024) snprintf(buf, cap, "%.0f B", b);
    else if (b < 1048576) snprintf(buf, cap, "%.1f KiB", b / 1024);
    else if (b < 1073741824.0) snprintf(buf, cap, "%.2f MiB", b / 1048576);
    else snprintf(buf, cap, "%.2f GiB", b / 1073741824.0);
}

void ql_fmt_count(char *buf, size_t cap, int64_t n) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%lld", (long long)(n < 0 ? -n : n));
    int l = (int)strlen(tmp), o = 0;
    char out[48];
    if (n < 0) out[o++] = '-';
    for (int i = 0; i < l; i++) {
        if (i && (l - i) % 3 == 0) out[o++] = ',';
        out[o++] = tmp[i];
    }
    out[o] = 0;
    snprintf(buf, cap, "%s", out);
}

void ql_fmt_err(char *buf, size_t cap, double v) {
    if (!isfinite(v)) snprintf(buf, cap, "—");
    else if (v == 0) snprintf(buf, cap, "0");
    else if (v >= 0.01 && v < 10) snprintf(buf, cap, "%.3f", v);
    else if (v >= 10 && v < 99999) snprintf(buf, cap, "%.0f", v);
    else {
        int e = (int)floor(log10(v));
        double m = v / pow(10, e);
        if (m >= 9.5) m = 1, e++;
        snprintf(buf, cap, "%.0fe%d", m, e);
    }
}

const char *ql_basename(const char *p) {
    const char *s = strrchr(p, '/');
    if (s && !s[1]) { /* "dir/" */
        while (s > p && s[-1] != '/') s--;
        return s;
    }
    return s ? s + 1 : p;
}

int ql_view_fit(ql_canvas *c, int x, int y, int w, int st, const char *text) {
    if (ql_utf8_width(text) <= w) return ql_canvas_puts(c, x, y, x + w, st, text);
    /* too long: whole words up to w-1 columns, then an ellipsis, so no word is cut in half */
    const char *p = text, *brk = NULL;
    int cols = 0;
    while (*p && cols < w - 1) {
        if (*p == ' ') brk = p;
        ql_utf8_next(&p);
        cols++;
    }
    const char *end = *p == ' ' ? p : brk ? brk : p;
    while (end > text && end[-1] == ' ') end--;
    char line[512];
    snprintf(line, sizeof line, "%.*s…", (int)(end - text) < 500 ? (int)(end - text) : 500, text);
    return ql_canvas_puts(c, x, y, x + w, st, line);
}

int ql_view_wrap(ql_canvas *c, int x, int y, int w, int max_rows, int st, const char *text) {
    int row = 0;
    const char *p = text;
    while (*p && row < max_rows) {
        while (*p == ' ') p++;
        /* take as many whole words as fit in w columns */
        const char *end = p, *brk = NULL;
        int cols = 0;
        while (*end && *end != '\n' && cols < w) {
            if (*end == ' ') brk = end;
            ql_utf8_next(&end);
            cols++;
        }
        if (*end && *end != '\n' && *end != ' ' && brk) end = brk;
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)(end - p), p);
        ql_canvas_puts(c, x, y + row, x + w, st, line);
        row++;
        p = *end == '\n' ? end + 1 : end;
    }
    return row;
}

void ql_sense_range(const ql_tui_sense *s, double *lo, double *hi) {
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int i = 0; s && i < s->n_rows * s->n_cand; i++) {
        double v = s->err[i];
        if (!isfinite(v) || v <= 0) continue;
        double l = log10(v);
        *lo = l < *lo ? l : *lo;
        *hi = l > *hi ? l : *hi;
    }
    if (!isfinite(*lo)) *lo = *hi = 0;
}

int ql_heat_style(double v, double lo, double hi) {
    if (!isfinite(v)) return QL_ST_DIM;
    if (v <= 0 || hi - lo < 1e-9) return QL_ST_HEAT0;
    int k = (int)floor((log10(v) - lo) / (hi - lo) * 7.999);
    return QL_ST_HEAT0 + (k < 0 ? 0 : k > 7 ? 7 : k);
}

/* ---------------------------------------------------------------- frame */

static const int TAB_X0 = 6;

int ql_tui_tab_x(int i) {
    int x = TAB_X0;
    for (int k = 0; k < i; k++) x += 4 + (int)strlen(ql_tui_screen_name((ql_tui_screen)k));
    return x;
}

int ql_tui_tab_at(int x) {
    for (int i = 0; i < QL_SCR_COUNT; i++)
        if (x >= ql_tui_tab_x(i) && x < ql_tui_tab_x(i + 1)) return i;
    return -1;
}

static void draw_tabs(ql_tui_app *a, ql_canvas *c) {
    ql_canvas_fill(c, 0, 0, c->w, 1, ' ', QL_ST_TITLE);
    ql_canvas_puts(c, 1, 0, 0, QL_ST_TITLE, "qlab");
    for (int i = 0; i < QL_SCR_COUNT; i++)
        ql_canvas_printf(c, ql_tui_tab_x(i), 0, 0, i == (int)a->screen ? QL_ST_TAB_ON : QL_ST_TAB, " %d %s ", i + 1,
                         ql_tui_screen_name((ql_tui_screen)i));
    int end = ql_tui_tab_x(QL_SCR_COUNT);
    /* the model, and the device its forward passes run on (--device; CUDA by default when there is a GPU) */
    char dev[32], name[1100];
    snprintf(name, sizeof name, "%s │ %s", a->model ? ql_basename(a->model_path) : "(no model)",
             ql_backend_describe(dev, sizeof dev));
    int l = ql_utf8_width(name);
    if (c->w - end > l + 2) ql_canvas_puts(c, c->w - l - 1, 0, 0, QL_ST_TITLE, name);
}

static void draw_footer(ql_tui_app *a, ql_canvas *c, int y) {
    ql_canvas_fill(c, 0, y, c->w, 1, ' ', QL_ST_STATUS);
    if (!a->model) return;
    ql_tui_totals t = ql_tui_plan_totals(a);
    char size[32], kv[32], kld[32];
    ql_fmt_bytes(size, sizeof size, (double)t.file_bytes);
    ql_fmt_bytes(kv, sizeof kv, (double)t.kv_bytes);
    if (isfinite(t.pred_kld)) snprintf(kld, sizeof kld, "%.4f", t.pred_kld);
    else snprintf(kld, sizeof kld, "—");
    char src[64];
    snprintf(src, sizeof src, "%.40s%s", a->plan.source, a->plan.edits ? " +edits" : "");
    int x = ql_canvas_printf(c, 1, y, 0, QL_ST_STATUS, "BPW %.3f │ file %s │ KV@%d %s │ pred. KLD %s │ ", t.bpw, size,
                             a->plan.kv_ctx, kv, kld);
    ql_view_fit(c, x, y, c->w - x - 1, QL_ST_STATUS, src);
}

static void draw_status(ql_tui_app *a, ql_canvas *c, int y) {
    ql_canvas_fill(c, 0, y, c->w, 1, ' ', QL_ST_NORMAL);
    const ql_tui_jobview *v = &a->jv;
    if (v->running && !a->quit_armed) {
        int x = ql_canvas_printf(c, 0, y, 0, QL_ST_BOLD, " %s", v->name);
        x = ql_canvas_printf(c, x + 1, y, 0, QL_ST_DIM, "%.24s", v->phase);
        double frac = v->total > 0 ? (double)v->done / (double)v->total : 0;
        int bw = c->w - x - 34;
        if (bw > 30) bw = 30;
        if (bw >= 5) {
            ql_canvas_bar(c, x + 1, y, bw, frac);
            x += bw + 1;
        }
        double eta = frac > 0.02 ? v->elapsed / frac - v->elapsed : NAN;
        char etas[24] = "";
        if (isfinite(eta)) snprintf(etas, sizeof etas, " ETA %.0fs", eta);
        ql_canvas_printf(c, x + 1, y, 0, QL_ST_NORMAL, "%3.0f%% %.0fs%s  Esc cancels", 100 * frac, v->elapsed, etas);
        return;
    }
    if (a->msg[0]) {
        ql_view_fit(c, 1, y, c->w - 2, a->msg_level == 2 ? QL_ST_ERROR : a->msg_level == 1 ? QL_ST_WARN : QL_ST_NORMAL,
                    a->msg);
        return;
    }
    int x = ql_canvas_puts(c, 1, y, 0, QL_ST_DIM, "? help   Tab next screen   1-7 jump   q quit");
    char dev[32], on[48]; /* where Preview, statistics and sensitivity run (--device) */
    snprintf(on, sizeof on, "device %s", ql_backend_describe(dev, sizeof dev));
    int w = (int)strlen(on);
    if (c->w - 2 - w > x + 2) ql_canvas_puts(c, c->w - 2 - w, y, 0, QL_ST_DIM, on);
}

static void draw_prompt(ql_tui_app *a, ql_canvas *c) {
    int w = c->w - 4, y = c->h - 6;
    if (w < 20) w = c->w;
    /* a label longer than the title (the preset list) is wrapped inside a taller box, not cut */
    int lw = ql_utf8_width(a->prompt.label), extra = 0;
    if (lw > w - 6) {
        extra = lw / (w - 6) + 1;
        if (extra > 4) extra = 4;
        y -= extra;
        ql_canvas_fill(c, 2, y, w, 4 + extra, ' ', QL_ST_NORMAL);
        ql_canvas_box(c, 2, y, w, 4 + extra, QL_ST_BOX, "");
        ql_view_wrap(c, 4, y + 1, w - 6, extra, QL_ST_BOLD, a->prompt.label);
        y += extra;
    } else
        ql_canvas_box(c, 2, y, w, 4, QL_ST_BOX, a->prompt.label);
    int room = w - 6;
    const char *s = a->prompt.buf;
    int width = ql_utf8_width(s);
    while (width > room) { /* show the end of a long path */
        ql_utf8_next(&s);
        width--;
    }
    int x = ql_canvas_puts(c, 4, y + 1, 2 + w - 1, QL_ST_NORMAL, s);
    ql_canvas_set(c, x, y + 1, 0x2588, QL_ST_BOLD);
    ql_canvas_puts(c, 4, y + 2, 2 + w - 1, QL_ST_DIM, "Enter accepts · Esc cancels · C-u clears · Tab completes a path");
}

static void draw_browser(ql_tui_app *a, ql_canvas *c) {
    ql_tui_browser *b = &a->browser;
    static const char *titles[] = {"", "add a calibration source", "choose the evaluation text", "choose a plan",
                                   "open a model"};
    int x = 1, y = 1, w = c->w - 2, h = c->h - 3;
    ql_canvas_fill(c, 0, 1, c->w, c->h - 3, ' ', QL_ST_NORMAL);
    ql_canvas_box(c, x, y, w, h, QL_ST_BOX, titles[b->purpose]);
    const char *dir = b->dir;
    int dl = ql_utf8_width(dir);
    while (dl > w - 4) {
        ql_utf8_next(&dir);
        dl--;
    }
    ql_canvas_puts(c, x + 2, y + 1, x + w - 1, QL_ST_HEADER, dir);
    int rows = h - 4;
    if (b->cursor < b->scroll) b->scroll = b->cursor;
    if (b->cursor >= b->scroll + rows) b->scroll = b->cursor - rows + 1;
    for (int i = 0; i < rows && b->scroll + i < b->n; i++) {
        int k = b->scroll + i;
        int st = k == b->cursor ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, x + 1, y + 2 + i, w - 2, 1, ' ', st);
        ql_canvas_puts(c, x + 2, y + 2 + i, x + w - 13, st, b->names[k]);
        size_t l = strlen(b->names[k]);
        if (b->names[k][l - 1] != '/') {
            char sz[24];
            ql_fmt_bytes(sz, sizeof sz, (double)b->sizes[k]);
            ql_canvas_printf(c, x + w - 12, y + 2 + i, x + w - 1, st, "%10s", sz);
        }
    }
    ql_canvas_puts(c, x + 2, y + h - 2, x + w - 1, QL_ST_DIM,
                   b->purpose == QL_BROWSE_SOURCE ? "Enter choose/open · ← parent · → add a whole folder · Esc close"
                                                  : "Enter choose/open · ← parent · Esc close");
}

static void draw_help(ql_tui_app *a, ql_canvas *c) {
    int x = 1, y = 1, w = c->w - 2, h = c->h - 3;
    ql_canvas_fill(c, 0, 1, c->w, c->h - 3, ' ', QL_ST_NORMAL);
    ql_canvas_box(c, x, y, w, h, QL_ST_BOX, "keys (Esc closes, Up/Down scroll)");
    /* lines: the current screen's keys, the global keys, then every other screen's */
    char lines[160][160];
    int sts[160], n = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int s = -1; s < QL_SCR_COUNT; s++) {
            bool global = s < 0;
            if ((pass == 0 && (global || s != (int)a->screen)) || (pass == 1 && !global) ||
                (pass == 2 && (global || s == (int)a->screen)))
                continue;
            if (n < 160) {
                ql_tui_copy(lines[n], sizeof lines[n], global ? "Everywhere" : ql_tui_screen_name((ql_tui_screen)s));
                sts[n++] = QL_ST_HEADER;
            }
            for (int i = 0; i < ql_tui_binding_count() && n < 160; i++) {
                unsigned scr;
                const char *key, *help;
                if (!ql_tui_binding_doc(i, &scr, &key, &help)) continue;
                bool all = scr == (1u << QL_SCR_COUNT) - 1;
                if (global ? !all : (all || !(scr & (1u << s)))) continue;
                /* a description longer than the window continues on the next line, under itself */
                int room = w - 3 - 14;
                const char *p = help;
                bool first = true;
                while (*p && n < 160) {
                    const char *end = p, *brk = NULL;
                    int cols = 0;
                    while (*end && cols < room) {
                        if (*end == ' ') brk = end;
                        ql_utf8_next(&end);
                        cols++;
                    }
                    if (*end && *end != ' ' && brk) end = brk;
                    snprintf(lines[n], sizeof lines[n], "  %-11s %.*s", first ? key : "", (int)(end - p), p);
                    sts[n++] = QL_ST_NORMAL;
                    first = false;
                    p = end;
                    while (*p == ' ') p++;
                }
            }
        }
    if (n < 160) snprintf(lines[n], sizeof lines[n], "Prompts: Enter accepts, Esc cancels, C-u clears, Tab completes paths"), sts[n++] = QL_ST_DIM;
    int rows = h - 2;
    if (a->help_scroll > n - rows) a->help_scroll = n - rows > 0 ? n - rows : 0;
    for (int i = 0; i < rows && a->help_scroll + i < n; i++)
        ql_canvas_puts(c, x + 2, y + 1 + i, x + w - 1, sts[a->help_scroll + i], lines[a->help_scroll + i]);
    if (n > rows)
        ql_canvas_printf(c, x + w - 14, y + h - 1, x + w - 1, QL_ST_BOX, " %d-%d/%d ", a->help_scroll + 1,
                         a->help_scroll + rows < n ? a->help_scroll + rows : n, n);
}

void ql_tui_render(ql_tui_app *a, ql_canvas *c) {
    ql_canvas_clear(c);
    a->w = c->w;
    a->h = c->h;
    if (c->w < QL_TUI_MIN_W || c->h < QL_TUI_MIN_H) {
        ql_canvas_puts(c, 0, 0, 0, QL_ST_WARN, "terminal too small");
        ql_canvas_printf(c, 0, 1, 0, QL_ST_NORMAL, "%dx%d: needs %dx%d or more", c->w, c->h, QL_TUI_MIN_W, QL_TUI_MIN_H);
        return;
    }
    draw_tabs(a, c);
    ql_rect body = {0, 1, c->w, c->h - 3};
    if (!a->model && a->screen != QL_SCR_CATALOGUE && a->screen != QL_SCR_MODEL) {
        ql_canvas_puts(c, 2, 2, 0, QL_ST_WARN, "No model is open. On the Model screen (1), o opens one.");
    } else
        switch (a->screen) {
        case QL_SCR_MODEL: ql_view_model(a, c, body); break;
        case QL_SCR_CALIB: ql_view_calib(a, c, body); break;
        case QL_SCR_PLAN: (a->plan.show_runtime ? ql_view_runtime : ql_view_plan)(a, c, body); break;
        case QL_SCR_AUTO: ql_view_auto(a, c, body); break;
        case QL_SCR_PREVIEW: ql_view_preview(a, c, body); break;
        case QL_SCR_EXPORT: ql_view_export(a, c, body); break;
        case QL_SCR_CATALOGUE: ql_view_catalogue(a, c, body); break;
        case QL_SCR_COUNT: break;
        }
    draw_footer(a, c, c->h - 2);
    draw_status(a, c, c->h - 1);
    if (a->help) draw_help(a, c);
    if (a->browser.purpose != QL_BROWSE_NONE) draw_browser(a, c);
    if (a->prompt.active) draw_prompt(a, c);
}

/* ---------------------------------------------------------------- Model */

static void shape_str(const ql_gguf_tensor *t, char *buf, size_t cap) {
    buf[0] = 0;
    for (int d = 0; d < t->n_dims; d++) {
        char p[24];
        snprintf(p, sizeof p, d ? " x %lld" : "%lld", (long long)t->ne[d]);
        if (strlen(buf) + strlen(p) < cap) strcat(buf, p);
    }
}

void ql_view_model(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    if (!a->model) {
        ql_canvas_puts(c, 2, r.y + 1, 0, QL_ST_WARN, "No model is open.");
        ql_canvas_puts(c, 2, r.y + 3, 0, QL_ST_NORMAL, "o  type a path (.gguf file, Hugging Face folder, llama2.c .bin)");
        ql_canvas_puts(c, 2, r.y + 4, 0, QL_ST_NORMAL, "O  browse for one");
        return;
    }
    const ql_model *m = a->model;
    const ql_config *cf = &m->cfg;
    const ql_gguf *g = m->gguf;
    int64_t np = ql_model_n_params(m);
    char cnt[32], f32[32], f16[32], fb[32];
    ql_fmt_count(cnt, sizeof cnt, np);
    ql_fmt_bytes(f32, sizeof f32, (double)np * 4);
    ql_fmt_bytes(f16, sizeof f16, (double)np * 2);
    ql_fmt_bytes(fb, sizeof fb, (double)(a->file_bytes ? a->file_bytes : 0));
    const char *name = ql_gguf_get_str(g, "general.name");
    int64_t all = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) all += (int64_t)g->tensors[i].nbytes;
    int y = r.y;
    int x = ql_canvas_printf(c, 1, y, 0, QL_ST_BOLD, "%s", ql_basename(a->model_path));
    ql_canvas_printf(c, x, y, 0, QL_ST_NORMAL, "  %s%s%s · %s", cf->arch, name ? " · " : "", name ? name : "",
                     a->file_bytes ? fb : "folder");
    char ffn[96];
    if (cf->n_expert > 0) /* a mixture of experts: what each token runs */
        snprintf(ffn, sizeof ffn, "experts %d of %d, %d wide", cf->n_expert_used, cf->n_expert, cf->n_ff_exp);
    else
        snprintf(ffn, sizeof ffn, "ffn %d", cf->n_ff);
    ql_canvas_printf(c, 1, ++y, 0, QL_ST_NORMAL,
                     "layers %d · embd %d · heads %d (kv %d, dim %d) · %s · vocab %d · ctx %d", cf->n_layer,
                     cf->n_embd, cf->n_head, cf->n_head_kv, cf->head_dim, ffn, cf->n_vocab, cf->n_ctx_train);
    ql_canvas_printf(c, 1, ++y, 0, QL_ST_NORMAL, "%s parameters · F32 %s · F16 %s · stored %.2f bpw",
                     cnt, f32, f16, np ? all * 8.0 / np : 0);
    ql_canvas_printf(c, 1, ++y, 0, QL_ST_DIM, "rope base %g%s · norm eps %g · %s output · tokenizer %s", cf->rope_base,
                     cf->rope_neox ? " (neox)" : "", cf->norm_eps, cf->tied_output ? "tied" : "separate",
                     !m->tok ? "none" : ql_tokenizer_kind(m->tok) == QL_TOK_SPM ? "sentencepiece" : "byte-level BPE");
    int *lines = ql_malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof(int));
    int n = ql_tui_model_lines(a, lines, (int)g->n_tensors);
    static const char *sorts[] = {"file order", "name", "size", "type"};
    y += 2;
    ql_canvas_printf(c, 1, y, 0, QL_ST_NORMAL, "Tensors %d of %lld · sort: %s (s) · filter: %s (/)", n,
                     (long long)g->n_tensors, sorts[a->m_sort], a->m_filter[0] ? a->m_filter : "none");
    int wide = c->w - 48; /* name column */
    if (wide < 20) wide = 20;
    y++;
    ql_canvas_fill(c, 0, y, c->w, 1, ' ', QL_ST_HEADER);
    ql_canvas_printf(c, 1, y, 0, QL_ST_HEADER, "%-*s %-16s %-8s %10s %7s", wide, "name", "shape", "type", "bytes", "bpw");
    int rows = r.y + r.h - y - 1;
    if (a->m_cursor >= n) a->m_cursor = n ? n - 1 : 0;
    if (a->m_cursor < a->m_scroll) a->m_scroll = a->m_cursor;
    if (a->m_cursor >= a->m_scroll + rows) a->m_scroll = a->m_cursor - rows + 1;
    for (int i = 0; i < rows && a->m_scroll + i < n; i++) {
        int k = a->m_scroll + i;
        const ql_gguf_tensor *t = &g->tensors[lines[k]];
        char shape[48], bytes[32];
        shape_str(t, shape, sizeof shape);
        ql_fmt_count(bytes, sizeof bytes, (int64_t)t->nbytes);
        int64_t ne = 1;
        for (int d = 0; d < t->n_dims; d++) ne *= t->ne[d];
        const ql_type_info *ti = ql_type_get(t->type);
        int st = k == a->m_cursor ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, 0, y + 1 + i, c->w, 1, ' ', st);
        ql_canvas_printf(c, 1, y + 1 + i, 0, st, "%-*.*s %-16s %-8s %10s %7.3f", wide, wide, t->name, shape,
                         ti ? ti->name : "?", bytes, ne ? t->nbytes * 8.0 / ne : 0);
    }
    free(lines);
}

/* ---------------------------------------------------------------- Calibration */

void ql_view_calib(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    ql_tui_calib *k = &a->calib;
    int y = r.y;
    ql_canvas_puts(c, 1, y, 0, QL_ST_BOLD, "Calibration set");
    ql_canvas_puts(c, 17, y, 0, QL_ST_DIM, " what statistics, GPTQ/AWQ and sensitivity run over");
    y++;
    double wsum = 0;
    for (int i = 0; i < k->n_sources; i++) wsum += k->src[i].weight;
    int field = 0;
    for (int i = 0; i < k->n_sources; i++, field++) {
        int st = k->field == field ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, 0, y, c->w, 1, ' ', st);
        int n_drawn = k->set && i < k->set->n_sources ? k->set->sources[i].n_samples : -1;
        int x = ql_canvas_printf(c, 1, y, 0, st, "source %d  %3.0f%%  ", i + 1, wsum > 0 ? 100 * k->src[i].weight / wsum : 0);
        x = ql_canvas_puts(c, x, y, c->w - 14, st, k->src[i].path);
        if (n_drawn >= 0) ql_canvas_printf(c, c->w - 14, y, 0, st, "%5d samples", n_drawn);
        y++;
    }
    const char *mode = k->mode == QL_CALIB_DOCS ? "document starts" : "random windows";
    char vals[QL_CF_COUNT][QL_TUI_PATH + 32];
    ql_tui_copy(vals[QL_CF_ADD], sizeof vals[0], k->n_sources ? "" : "(no source yet)");
    snprintf(vals[QL_CF_SAMPLES], sizeof vals[0], "%d", k->samples);
    snprintf(vals[QL_CF_LEN], sizeof vals[0], "%d tokens", k->seq_len);
    snprintf(vals[QL_CF_SEED], sizeof vals[0], "%llu", (unsigned long long)k->seed);
    ql_tui_copy(vals[QL_CF_MODE], sizeof vals[0], mode);
    ql_tui_copy(vals[QL_CF_TEXT], sizeof vals[0], a->preview.text[0] ? a->preview.text : "(none)");
    static const char *labels[] = {"+ add a source (a)", "samples", "length", "seed", "sampling", "eval. text"};
    for (int f = 0; f < QL_CF_COUNT; f++, field++) {
        int st = k->field == field ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, 0, y, c->w, 1, ' ', st);
        ql_canvas_printf(c, 1, y, 0, st, "%-19s %s", labels[f], vals[f]);
        y++;
    }
    y++;
    if (k->set) {
        const ql_calib_set *s = k->set;
        char tok[32];
        ql_fmt_count(tok, sizeof tok, (int64_t)s->n_samples * s->seq_len);
        ql_canvas_printf(c, 1, y++, 0, QL_ST_BOLD, "The set: %d samples x %d = %s tokens", s->n_samples, s->seq_len, tok);
        char ov[64];
        if (k->overlap >= 0) snprintf(ov, sizeof ov, "%.1f%% of its 8-grams", 100 * k->overlap);
        else snprintf(ov, sizeof ov, "not measured (no evaluation text)");
        /* the overlap first: it is the figure that warns of contamination */
        char cov[200];
        snprintf(cov, sizeof cov, "overlap with the eval. text: %s · coverage %.1f%% of the vocabulary (%lld ids)", ov,
                 100 * k->coverage, (long long)k->distinct);
        y += ql_view_wrap(c, 3, y, c->w - 4, 2, k->overlap > 0.05 ? QL_ST_WARN : QL_ST_NORMAL, cov);
        for (int i = 0; i < s->n_sources && y < r.y + r.h - 5; i++) {
            const ql_calib_source *so = &s->sources[i];
            char t2[32], d2[32];
            ql_fmt_count(t2, sizeof t2, so->n_tokens);
            ql_fmt_count(d2, sizeof d2, so->n_docs);
            ql_canvas_printf(c, 3, y++, 0, QL_ST_DIM, "%-24.24s %s tokens, %s documents%s%s", ql_basename(so->path), t2, d2,
                             so->n_skipped ? ", skipped lines" : "", so->truncated ? ", truncated" : "");
        }
        for (int i = 0; i < 3 && k->passages[i][0] && y < r.y + r.h - 3; i++) {
            char pass[200];
            snprintf(pass, sizeof pass, "“…%s…”", k->passages[i]);
            ql_view_fit(c, 3, y++, c->w - 4, QL_ST_NORMAL, pass);
        }
    } else
        ql_canvas_puts(c, 1, y++, 0, QL_ST_DIM, "b builds the set and shows what it holds; r also runs the statistics.");
    y = y < r.y + r.h - 2 ? y + 1 : r.y + r.h - 2;
    if (k->stats) {
        const ql_stats *st = k->stats;
        ql_canvas_printf(c, 1, y++, 0, QL_ST_OK, "Statistics: %d linear inputs, %lld sequences x %lld tokens%s", st->n,
                         (long long)st->n_sequences, (long long)st->seq_len, st->has_hessian ? ", Hessians" : "");
        ql_canvas_printf(c, 3, y, 0, QL_ST_DIM, "from %s · S saves, L loads", k->stats_label);
    } else
        ql_canvas_puts(c, 1, y, 0, QL_ST_NORMAL, "Statistics: none yet · r runs them · L loads a file from qlab stats");
}

/* ---------------------------------------------------------------- Preview */

static void draw_errbar(ql_canvas *c, int x, int y, int w, double base, double v, double err) {
    double lo = fmin(base, v - 2 * err), hi = fmax(base, v + 2 * err);
    double pad = (hi - lo) * 0.1 + 1e-9;
    lo -= pad;
    hi += pad;
    ql_canvas_fill(c, x, y, w, 1, 0x00B7, QL_ST_DIM);
#define POS(val) (x + (int)lround(((val) - lo) / (hi - lo) * (w - 1)))
    for (int i = POS(v - 2 * err); i <= POS(v + 2 * err); i++) ql_canvas_set(c, i, y, 0x2500, QL_ST_NORMAL);
    ql_canvas_set(c, POS(v - 2 * err), y, 0x251C, QL_ST_NORMAL);
    ql_canvas_set(c, POS(v + 2 * err), y, 0x2524, QL_ST_NORMAL);
    ql_canvas_set(c, POS(base), y, '|', QL_ST_OK);
    ql_canvas_set(c, POS(v), y, 0x25CF, QL_ST_MARK);
#undef POS
}

void ql_view_preview(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    ql_tui_preview *p = &a->preview;
    int y = r.y;
    ql_canvas_puts(c, 1, y, 0, QL_ST_BOLD, "Text");
    ql_canvas_puts(c, 10, y, c->w - 22, QL_ST_NORMAL, p->text[0] ? p->text : "(none: t chooses one)");
    ql_canvas_puts(c, c->w - 21, y++, 0, QL_ST_DIM, "t browse · T type");
    char chunks[24];
    if (p->chunks > 0) snprintf(chunks, sizeof chunks, "%d", p->chunks);
    else snprintf(chunks, sizeof chunks, "all");
    ql_canvas_printf(c, 1, y, 0, QL_ST_NORMAL, "Context  %d tokens (c) · chunks %s (n)", p->ctx, chunks);
    if (p->has_base)
        ql_canvas_printf(c, 45, y, 0, QL_ST_DIM, "base PPL %.4f ± %.4f", p->base.ppl, p->base.ppl_stderr);
    y++;
    ql_tui_totals t = ql_tui_plan_totals(a);
    char size[32];
    ql_fmt_bytes(size, sizeof size, (double)t.file_bytes);
    ql_canvas_printf(c, 1, y++, 0, QL_ST_NORMAL, "Plan     %.32s%s · %.3f bits/weight · %s", a->plan.source,
                     a->plan.edits ? " +edits" : "", t.bpw, size);
    y++;
    const ql_tui_jobview *v = &a->jv;
    if (v->running && !strcmp(v->name, "preview")) {
        ql_canvas_printf(c, 1, y, 0, QL_ST_BOLD, "Running  %s", v->phase);
        if (v->has_live && v->live_is_kld) {
            ql_canvas_printf(c, 1, y + 1, 0, QL_ST_NORMAL, "after %d chunks: PPL %.4f ± %.4f · KLD %.5f ± %.5f · top-1 %.1f%%",
                             v->live_chunks, v->live_ppl, v->live_ppl_err, v->live_kld, v->live_kld_err, 100 * v->live_top1);
            int bw = c->w - 20 < 50 ? c->w - 20 : 50;
            ql_canvas_puts(c, 1, y + 2, 0, QL_ST_DIM, "PPL ±2σ");
            draw_errbar(c, 10, y + 2, bw, v->base_ppl > 0 ? v->base_ppl : v->live_ppl, v->live_ppl, v->live_ppl_err);
            ql_canvas_puts(c, 11 + bw, y + 2, 0, QL_ST_DIM, "| base");
        } else if (v->has_live) {
            ql_canvas_printf(c, 1, y + 1, 0, QL_ST_NORMAL, "base model after %d chunks: PPL %.4f ± %.4f", v->live_chunks,
                             v->live_ppl, v->live_ppl_err);
            ql_canvas_puts(c, 1, y + 2, 0, QL_ST_DIM, "(its log-probabilities are kept: KLD and top-1 compare with them)");
        } else
            ql_canvas_puts(c, 1, y + 1, 0, QL_ST_DIM, "the running estimate appears after the first chunk");
    } else if (p->last >= 0 && p->last < p->n_hist) {
        const ql_tui_hist *h = &p->hist[p->last];
        ql_canvas_printf(c, 1, y, 0, QL_ST_BOLD, "Result   PPL %.4f ± %.4f", h->r.ppl, h->r.ppl_stderr);
        ql_canvas_printf(c, 1, y + 1, 0, QL_ST_NORMAL, "KLD %.5f ± %.5f (p99 %.4f, max %.3f) · top-1 agreement %.2f%%",
                         h->r.kld_mean, h->r.kld_stderr, h->r.kld_p99, h->r.kld_max, 100 * h->r.top1_agreement);
        int bw = c->w - 20 < 50 ? c->w - 20 : 50;
        ql_canvas_puts(c, 1, y + 2, 0, QL_ST_DIM, "PPL ±2σ");
        draw_errbar(c, 10, y + 2, bw, h->r.ppl_base, h->r.ppl, h->r.ppl_stderr);
        ql_canvas_puts(c, 11 + bw, y + 2, 0, QL_ST_DIM, "| base");
    } else
        ql_canvas_puts(c, 1, y, 0, QL_ST_DIM,
                       "Enter evaluates the plan: quantized to a temporary GGUF, then perplexity,");
    if (!v->running && !(p->last >= 0 && p->last < p->n_hist))
        ql_canvas_puts(c, 1, y + 1, 0, QL_ST_DIM, "KL divergence and top-1 agreement against the model as loaded.");
    y += 4;
    y += ql_view_qat(a, c, y, (r.y + r.h - y) / 2); /* Q: a training run's curve, above the history */
    ql_canvas_fill(c, 0, y, c->w, 1, ' ', QL_ST_HEADER);
    /* narrow: PPL without its ± and no seconds column, so the plan label keeps room to tell rows apart */
    bool wide = c->w >= 100;
    int fixed = wide ? 64 : 46;
    int lw = c->w - fixed > 14 ? (c->w - fixed < 40 ? c->w - fixed : 40) : 14;
    if (wide)
        ql_canvas_printf(c, 1, y, 0, QL_ST_HEADER, "%2s %-*s %6s %9s %17s %8s %6s %4s", "#", lw, "plan", "bpw", "size",
                         "PPL", "KLD", "top-1", "s");
    else
        ql_canvas_printf(c, 1, y, 0, QL_ST_HEADER, "%2s %-*s %6s %9s %8s %8s %6s", "#", lw, "plan", "bpw", "size", "PPL",
                         "KLD", "top-1");
    int rows = r.y + r.h - y - 2; /* the last line details the row under the cursor */
    if (p->cursor < 0) p->cursor = 0;
    int scroll = p->cursor >= rows ? p->cursor - rows + 1 : 0;
    for (int i = 0; i < rows && scroll + i < p->n_hist; i++) {
        int k = scroll + i;
        const ql_tui_hist *h = &p->hist[k];
        char size[32], ppl[32];
        ql_fmt_bytes(size, sizeof size, (double)h->bytes);
        snprintf(ppl, sizeof ppl, "%.4f±%.4f", h->r.ppl, h->r.ppl_stderr);
        int st = k == p->cursor ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, 0, y + 1 + i, c->w, 1, ' ', st);
        if (wide)
            ql_canvas_printf(c, 1, y + 1 + i, 0, st, "%2d %-*.*s %6.3f %9s %17s %8.5f %5.1f%% %4.1f", k + 1, lw, lw,
                             h->label, h->bpw, size, ppl, h->r.kld_mean, 100 * h->r.top1_agreement, h->seconds);
        else
            ql_canvas_printf(c, 1, y + 1 + i, 0, st, "%2d %-*.*s %6.3f %9s %8.4f %8.5f %5.1f%%", k + 1, lw, lw, h->label,
                             h->bpw, size, h->r.ppl, h->r.kld_mean, 100 * h->r.top1_agreement);
    }
    if (p->n_hist && p->cursor < p->n_hist)
        ql_canvas_printf(c, 1, r.y + r.h - 1, c->w - 1, QL_ST_DIM, "%d: %s", p->cursor + 1, p->hist[p->cursor].detail);
    if (!p->n_hist) ql_canvas_puts(c, 1, y + 1, 0, QL_ST_DIM, "no evaluations yet");
}

/* ---------------------------------------------------------------- Export */

void ql_view_export(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    int y = r.y;
    ql_canvas_puts(c, 1, y++, 0, QL_ST_BOLD, "Export the plan");
    y++;
    const ql_exporter_info *xi = ql_exporter_at(a->exp.format);
    if (!xi) xi = ql_exporter_default();
    ql_canvas_printf(c, 1, y, 0, QL_ST_NORMAL, "%-9s %s: %.*s", "target", xi->name, c->w > 40 ? c->w - 32 : 8, xi->summary);
    ql_canvas_puts(c, c->w - 4, y++, 0, QL_ST_DIM, "(t)");
    ql_canvas_printf(c, 1, y, 0, QL_ST_NORMAL, "%-9s ", "path");
    ql_canvas_puts(c, 11, y, c->w - 6, QL_ST_BOLD, a->exp.path);
    ql_canvas_puts(c, c->w - 4, y++, 0, QL_ST_DIM, "(p)");
    ql_tui_totals t = ql_tui_plan_totals(a);
    char size[32];
    ql_fmt_bytes(size, sizeof size, (double)t.file_bytes);
    int planned = 0, ext = 0, data = 0, fallbacks = 0;
    char ext_names[160] = ""; /* every extension format the file will hold, not just the first */
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *rw = &a->plan.rows[i];
        if (rw->fmt && rw->fmt != rw->orig) planned++;
        const ql_format *f = ql_tui_row_format(rw);
        if (f && !ql_type_is_ggml(f->type)) {
            ext++;
            size_t nl = strlen(f->name), el = strlen(ext_names);
            const char *hit = strstr(ext_names, f->name);
            bool listed = hit && (hit == ext_names || hit[-1] == ' ') && (hit[nl] == ',' || hit[nl] == 0);
            if (!listed && el + nl + 3 < sizeof ext_names)
                snprintf(ext_names + el, sizeof ext_names - el, "%s%s", el ? ", " : "", f->name);
        }
        const ql_method *me = ql_method_by_name(rw->method);
        data += me && me->needs;
        fallbacks += rw->note[0] != 0;
    }
    char line[320];
    snprintf(line, sizeof line, "%.40s%s · %d of %d tensors change · %.3f bits/weight · %s", a->plan.source,
             a->plan.edits ? " +edits" : "", planned, a->plan.n_rows, t.bpw, size);
    ql_canvas_printf(c, 1, y, 0, QL_ST_NORMAL, "%-9s", "plan");
    y += ql_view_wrap(c, 11, y, c->w - 12, 2, QL_ST_NORMAL, line);
    ql_canvas_printf(c, 1, y++, 0, data && !a->calib.stats ? QL_ST_ERROR : QL_ST_NORMAL, "%-9s %d tensors use a data-aware method%s",
                     "methods", data, data ? (a->calib.stats ? " (statistics loaded)" : ": run statistics first (Calib, r)") : "");
    if (ext) {
        snprintf(line, sizeof line, "%d tensors use qlab extension formats (%s): llama.cpp cannot load the file, qlab can",
                 ext, ext_names);
        ql_canvas_printf(c, 1, y, 0, QL_ST_WARN, "%-9s", "note");
        y += ql_view_wrap(c, 11, y, c->w - 12, 3, QL_ST_WARN, line);
    } else
        ql_canvas_printf(c, 1, y++, 0, QL_ST_OK, "%-9s every tensor type is one llama.cpp knows", "note");
    if (fallbacks)
        ql_canvas_printf(c, 1, y++, 0, QL_ST_DIM, "%-9s %d tensors fell back to a format that fits their rows", "", fallbacks);
    y++;
    ql_canvas_puts(c, 1, y++, 0, QL_ST_NORMAL, "e or Enter writes it: PATH.tmp.XXXXXX first, renamed when complete, so an");
    ql_canvas_puts(c, 1, y++, 0, QL_ST_NORMAL, "error, a full disk or Esc leaves nothing half-written. s saves the plan INI.");
    y++;
    const ql_tui_jobview *v = &a->jv;
    if (v->running && !strcmp(v->name, "export")) {
        double frac = v->total > 0 ? (double)v->done / v->total : 0;
        ql_canvas_printf(c, 1, y, 0, QL_ST_BOLD, "writing %3.0f%%", 100 * frac);
        ql_canvas_bar(c, 15, y, c->w - 18 < 50 ? c->w - 18 : 50, frac);
        ql_canvas_puts(c, 15, y + 1, 0, QL_ST_DIM, v->phase);
        y += 3;
    }
    if (a->exp.n_log) {
        ql_canvas_puts(c, 1, y++, 0, QL_ST_HEADER, "Written this session");
        for (int i = a->exp.n_log - 1; i >= 0 && y < r.y + r.h; i--)
            y += ql_view_wrap(c, 3, y, c->w - 4, r.y + r.h - y, QL_ST_NORMAL, a->exp.log[i]);
    }
}
