/* view_plan.c — the Plan screen (rows grouped by layer, a heat-map column per candidate format, the
 * current assignment highlighted) and the Auto screen (target, constraints, Pareto plot). */
#include "tui/view.h"
#include "tui/jobs.h"
#include "tui/tui_sense.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

/* A format name that fits w columns: the name when it fits, else the traits entry's short label
 * ("int4_g128_sym" -> "i4g128s", "fp8_e4m3_channel" -> "e4m3c"), cut to the room left. */
static void short_name(const ql_format *f, const char *method, int w, char *out, size_t cap) {
    char sfx[8] = "";
    /* the method as one capital (int4_g32+gptq -> "i4g32G") */
    if (method && method[0] && strcmp(method, "rtn")) snprintf(sfx, sizeof sfx, "%c", toupper((unsigned char)method[0]));
    int room = w - (int)strlen(sfx);
    const char *b = (int)strlen(f->name) <= room || !f->label ? f->name : f->label;
    /* still too long: an INTn label keeps its digits ("i4g32" -> "4g32") */
    if ((int)strlen(b) > room && b[0] == 'i' && isdigit((unsigned char)b[1])) b++;
    snprintf(out, cap, "%.*s%s", room > 0 ? room : 0, b, sfx);
}

/* The measured error of plan row `row` in plan column k (the view's columns are the plan's). */
static double sense_err(const ql_tui_app *a, int row, int k) {
    const ql_tui_sense *s = a->sense;
    if (!s || row >= s->n_rows || k >= s->n_cand || s->cand[k] != a->plan.cand[k]) return NAN;
    return s->err[(size_t)row * s->n_cand + k];
}

void ql_view_plan(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    ql_tui_plan *p = &a->plan;
    const ql_gguf *g = a->model->gguf;
    int y = r.y;
    /* geometry: name | format | bits | one column per candidate */
    int name_w = c->w >= 120 ? 26 : 15, cw = c->w >= 120 ? 8 : 6;
    int x_fmt = 1 + name_w + 1, x_bits = x_fmt + 9, x_cells = x_bits + 7;
    int vis = (c->w - x_cells - 1) / cw;
    if (vis < 1) vis = 1;
    if (p->col < p->col_scroll) p->col_scroll = p->col;
    if (p->col >= p->col_scroll + vis) p->col_scroll = p->col - vis + 1;
    if (p->col_scroll > 0 && p->col_scroll + vis > p->n_cand) p->col_scroll = p->n_cand - vis > 0 ? p->n_cand - vis : 0;
    double lo, hi;
    ql_sense_range(a->sense, &lo, &hi);
    int x = ql_canvas_printf(c, 1, y, 0, QL_ST_BOLD, "Plan: %.30s%s", p->source, p->edits ? " +edits" : "");
    int n_act = 0; /* rows marked A: their input is quantized at run time (the plan's [activations]) */
    for (int i = 0; i < p->n_rows; i++) n_act += ql_tui_row_act(a, &p->rows[i]) != NULL;
    if (n_act) x = ql_canvas_printf(c, x + 1, y, 0, QL_ST_MARK, "· A: %d inputs quantized", n_act);
    if (a->sense) {
        char cells[160];
        snprintf(cells, sizeof cells, "cells: %s%s · l level", a->sense->metric,
                 a->sense->additive_kld ? ", they add up to the predicted KLD" : "");
        ql_view_fit(c, x + 2, y, c->w - x - 3, QL_ST_DIM, cells);
    }
    else
        ql_canvas_printf(c, x + 2, y, 0, QL_ST_DIM, "cells: · fits, ● assigned (x measures errors)");
    y++;
    ql_canvas_fill(c, 0, y, c->w, 1, ' ', QL_ST_HEADER);
    ql_canvas_printf(c, 1, y, 0, QL_ST_HEADER, "%-*s %-8s %5s", name_w, "tensor", "format", "bits");
    for (int k = 0; k < vis && p->col_scroll + k < p->n_cand; k++) {
        int ci = p->col_scroll + k;
        char hn[32];
        short_name(p->cand[ci], p->cand_method[ci], cw - 1, hn, sizeof hn);
        ql_canvas_printf(c, x_cells + k * cw, y, x_cells + (k + 1) * cw, ci == p->col ? QL_ST_CURSOR : QL_ST_HEADER, "%*s",
                         cw - 1, hn);
    }
    if (p->col_scroll > 0) ql_canvas_set(c, x_cells - 1, y, 0x25C0, QL_ST_HEADER);
    if (p->col_scroll + vis < p->n_cand) ql_canvas_set(c, c->w - 1, y, 0x25B6, QL_ST_HEADER);
    y++;
    int cap = p->n_rows + p->n_groups + 1;
    int *lines = ql_malloc((size_t)cap * sizeof(int));
    int n = ql_tui_plan_lines(a, lines, cap);
    int rows = r.y + r.h - y - 1; /* the last body row is the detail line */
    if (p->cursor >= n) p->cursor = n ? n - 1 : 0;
    if (p->cursor < p->scroll) p->scroll = p->cursor;
    if (p->cursor >= p->scroll + rows) p->scroll = p->cursor - rows + 1;
    for (int i = 0; i < rows && p->scroll + i < n; i++) {
        int li = lines[p->scroll + i], yy = y + i;
        bool cur = p->scroll + i == p->cursor;
        if (li < 0) { /* a layer header: totals of its rows and how many rows sit on each candidate */
            int gi = -1 - li, cnt = 0, counts[QL_TUI_MAX_CAND] = {0};
            int64_t bytes = 0, wts = 0;
            for (int k = 0; k < p->n_rows; k++) {
                const ql_tui_row *rw = &p->rows[k];
                if (rw->layer + 1 != gi) continue;
                cnt++;
                bytes += ql_tui_row_bytes(a, rw);
                wts += rw->n;
                int ci = ql_tui_cand_index(a, rw);
                if (ci >= 0) counts[ci]++;
            }
            char label[32];
            if (gi == 0) snprintf(label, sizeof label, "embd/output");
            else snprintf(label, sizeof label, "blk.%d", gi - 1);
            int st = cur ? QL_ST_CURSOR : QL_ST_BOLD;
            ql_canvas_fill(c, 0, yy, x_cells - 1, 1, ' ', st);
            ql_canvas_printf(c, 1, yy, 1 + name_w, st, "%s %s", p->collapsed[gi] ? "▸" : "▾", label);
            ql_canvas_printf(c, x_fmt, yy, x_fmt + 8, cur ? st : QL_ST_DIM, "%d tens.", cnt);
            ql_canvas_printf(c, x_bits, yy, x_bits + 5, st, "%5.2f", wts ? bytes * 8.0 / wts : 0);
            for (int k = 0; k < vis && p->col_scroll + k < p->n_cand; k++)
                if (counts[p->col_scroll + k])
                    ql_canvas_printf(c, x_cells + k * cw, yy, 0, QL_ST_DIM, "%*d", cw - 1, counts[p->col_scroll + k]);
            continue;
        }
        const ql_tui_row *rw = &p->rows[li];
        const ql_format *f = ql_tui_row_format(rw);
        int st = cur ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, 0, yy, x_cells - 1, 1, ' ', st);
        const char *nm = rw->kind; /* the layer is in the group header; token_embd/output stand alone */
        ql_canvas_printf(c, 1, yy, 1 + name_w, st, "%s%s", rw->layer >= 0 ? "  " : "", nm);
        if (rw->pinned) ql_canvas_set(c, name_w, yy, 0x25C6, cur ? QL_ST_CURSOR : QL_ST_PINNED);
        char fmt[16];
        snprintf(fmt, sizeof fmt, "%s%s", f ? f->name : "?", strcmp(rw->method, "rtn") ? "+" : "");
        ql_canvas_printf(c, x_fmt, yy, x_fmt + 8, st == QL_ST_CURSOR ? st : (rw->fmt && rw->fmt != rw->orig ? QL_ST_BOLD : QL_ST_DIM),
                         "%-8s", fmt);
        ql_canvas_printf(c, x_bits, yy, x_bits + 5, st, "%5.2f", ql_tui_row_bytes(a, rw) * 8.0 / (double)rw->n);
        if (rw->note[0]) ql_canvas_set(c, x_bits + 5, yy, '*', QL_ST_WARN);
        if (ql_tui_row_act(a, rw)) ql_canvas_set(c, x_fmt + 8, yy, 'A', cur ? QL_ST_CURSOR : QL_ST_MARK);
        for (int k = 0; k < vis && p->col_scroll + k < p->n_cand; k++) {
            const ql_format *cf = p->cand[p->col_scroll + k];
            int cx = x_cells + k * cw;
            bool fits = ql_tui_cand_fits(cf, rw), assigned = cf == f;
            char cell[16];
            int cs;
            if (!fits) {
                snprintf(cell, sizeof cell, "%*s", cw - 1, "");
                cs = QL_ST_DIM;
            } else if (a->sense) {
                double e = sense_err(a, li, p->col_scroll + k);
                ql_fmt_err(cell, sizeof cell, e);
                cs = ql_heat_style(e, lo, hi);
            } else {
                ql_tui_copy(cell, sizeof cell, assigned ? "●" : "·");
                cs = assigned ? QL_ST_ASSIGNED : QL_ST_DIM;
            }
            if (assigned) {
                cs = QL_ST_ASSIGNED;
                ql_canvas_fill(c, cx, yy, cw - 1, 1, ' ', cs);
            }
            int wdt = ql_utf8_width(cell);
            int off = a->sense ? cw - 1 - wdt : (cw - 1 - wdt) / 2; /* numbers right-aligned, marks centred */
            ql_canvas_puts(c, cx + off, yy, cx + cw - 1, cs, cell);
            if (assigned && cw >= 7) { /* brackets make the assignment visible in monochrome too */
                ql_canvas_set(c, cx - 1, yy, '[', QL_ST_ASSIGNED);
                ql_canvas_set(c, cx + cw - 1, yy, ']', QL_ST_ASSIGNED);
            }
            if (cur && p->col_scroll + k == p->col && !assigned) ql_canvas_style(c, cx, yy, cw - 1, QL_ST_CURSOR);
        }
    }
    if (!n) ql_canvas_puts(c, 2, y, 0, QL_ST_DIM, "this model has no 2-D weights to plan");
    /* the detail line: the full name, shape, what it was, and why */
    int line = n ? lines[p->cursor] : 0;
    int dy = r.y + r.h - 1;
    if (n && line >= 0) {
        const ql_tui_row *rw = &p->rows[line];
        const ql_format *f = ql_tui_row_format(rw);
        char note[200];
        ql_tui_copy(note, sizeof note, rw->note[0] ? rw->note : rw->pinned ? "pinned" : "");
        bool rtn = !strcmp(rw->method, "rtn");
        const ql_plan_act *pa = ql_tui_row_act(a, rw);
        char act[72] = "";
        if (pa) {
            char spec[48];
            ql_act_spec_format(pa->mode, pa->threshold, spec, sizeof spec);
            snprintf(act, sizeof act, " · input %s", spec);
        }
        ql_canvas_printf(c, 1, dy, 0, QL_ST_DIM, "%s %lldx%lld · %s → %s%s%s%s%s%s", g->tensors[rw->tensor].name,
                         (long long)rw->ne0, (long long)rw->ne1, rw->orig ? rw->orig->name : "?", f ? f->name : "?",
                         rtn ? "" : "+", rtn ? "" : rw->method, act, note[0] ? " · " : "", note);
    } else if (n)
        ql_canvas_puts(c, 1, dy, 0, QL_ST_DIM, "Enter/Space folds · ] [ raise/lower the layer · ? lists every key");
    free(lines);
}

/* ---------------------------------------------------------------- Auto */

void ql_view_auto(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    ql_tui_auto *u = &a->autos;
    int y = r.y;
    int x = ql_canvas_puts(c, 1, y, 0, QL_ST_BOLD, "Auto: the best plan for a budget");
    char head[160];
    if (a->sense) snprintf(head, sizeof head, "minimising the sum of per-tensor %s", a->sense->metric);
    else snprintf(head, sizeof head, "measure first: x (level %s, l changes it)", ql_tui_level_label(ql_tui_sense_level(a)));
    ql_view_fit(c, x + 2, y++, c->w - x - 3, a->sense ? QL_ST_DIM : QL_ST_WARN, head);
    y++;
    double bmin = 1.5, bmax = 16;
    char val[40];
    if (u->by_size) snprintf(val, sizeof val, "%.2f MiB", u->target_mib);
    else snprintf(val, sizeof val, "%.2f bits/weight", u->target_bpw);
    const char *labels[] = {"target", u->by_size ? "file size" : "bits/weight", "llama.cpp formats only",
                            "embeddings/output"};
    char vals[4][64];
    ql_tui_copy(vals[0], sizeof vals[0], u->by_size ? "a file size   (← → switches to bits/weight)" : "bits per weight   (← → switches to a file size)");
    snprintf(vals[1], sizeof vals[1], "◀ %s ▶", val);
    ql_tui_copy(vals[2], sizeof vals[2], u->ggml_only ? "yes" : "no");
    if (u->min_io) snprintf(vals[3], sizeof vals[3], "at least as many bits as %s", u->min_io->name);
    else snprintf(vals[3], sizeof vals[3], "no rule");
    for (int f = 0; f < 4; f++, y++) {
        int st = u->field == f ? QL_ST_CURSOR : QL_ST_NORMAL;
        ql_canvas_fill(c, 0, y, c->w, 1, ' ', st);
        ql_canvas_printf(c, 1, y, 0, st, "%-24s %s", labels[f], vals[f]);
    }
    /* the slider for bits/weight */
    if (!u->by_size) {
        int sx = 26, sw = c->w - sx - 12 < 50 ? c->w - sx - 12 : 50;
        ql_canvas_printf(c, 1, y, 0, QL_ST_DIM, "%24s", "");
        ql_canvas_printf(c, sx - 4, y, 0, QL_ST_DIM, "%.1f", bmin);
        ql_canvas_fill(c, sx, y, sw, 1, 0x2500, QL_ST_DIM);
        int pos = sx + (int)lround((fmin(fmax(u->target_bpw, bmin), bmax) - bmin) / (bmax - bmin) * (sw - 1));
        ql_canvas_set(c, pos, y, 0x25CF, QL_ST_MARK);
        ql_canvas_printf(c, sx + sw + 1, y, 0, QL_ST_DIM, "%.0f", bmax);
    }
    y += 2;
    ql_tui_totals t = ql_tui_plan_totals(a);
    if (u->has_solution) {
        char sol[160];
        snprintf(sol, sizeof sol, "solution: %.3f bpw, predicted %s %.4g (%s) · a accepts it", u->sol_bpw,
                 a->sense ? a->sense->metric : "error", u->sol_err,
                 u->sol_exact ? "optimal" : u->sol_gap > 0 ? "near-optimal" : "optimal");
        ql_view_fit(c, 1, y++, c->w - 2, u->sol_hit ? QL_ST_OK : QL_ST_WARN, sol);
    } else
        ql_canvas_puts(c, 1, y++, 0, QL_ST_DIM, "s solves for the target · f draws the frontier · pinned rows keep their format");
    /* the plot: error (log) against bits/weight; the frontier as dots, the current plan as ◆ */
    int px = 10, py = y + 1, pw = c->w - px - 3, ph = r.y + r.h - py - 2;
    if (ph < 4 || pw < 20) return;
    double cur_err = NAN;
    if (a->sense) {
        cur_err = 0;
        for (int i = 0; i < a->plan.n_rows; i++) {
            int ci = ql_tui_cand_index(a, &a->plan.rows[i]);
            const ql_tui_row *rw = &a->plan.rows[i];
            if (!rw->fmt || rw->fmt == rw->orig) continue;
            cur_err += ci >= 0 && i < a->sense->n_rows ? a->sense->err[(size_t)i * a->sense->n_cand + ci] : NAN;
        }
    }
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
#define ADD(bx, ey)                                                                                                      \
    do {                                                                                                               \
        if (isfinite(bx) && isfinite(ey) && (ey) > 0) {                                                                \
            xlo = fmin(xlo, bx), xhi = fmax(xhi, bx), ylo = fmin(ylo, log10(ey)), yhi = fmax(yhi, log10(ey));          \
        }                                                                                                              \
    } while (0)
    for (int i = 0; i < u->n_pareto; i++) ADD(u->pareto_bpw[i], u->pareto_err[i]);
    ADD(t.bpw, cur_err);
    if (u->has_solution) ADD(u->sol_bpw, u->sol_err);
#undef ADD
    ql_canvas_puts(c, 1, py - 1, c->w - 37, QL_ST_HEADER, "Frontier: predicted error vs bpw");
    for (int j = 0; j < ph; j++) ql_canvas_set(c, px - 1, py + j, 0x2502, QL_ST_DIM);
    ql_canvas_hline(c, px - 1, py + ph, pw + 1, QL_ST_DIM);
    ql_canvas_set(c, px - 1, py + ph, 0x2514, QL_ST_DIM);
    if (!isfinite(xlo)) {
        ql_canvas_puts(c, px + 1, py + ph / 2, 0, QL_ST_DIM,
                       a->sense ? "f computes the frontier" : "measure first (x), then f computes the frontier");
        return;
    }
    if (xhi - xlo < 0.5) xlo -= 0.25, xhi += 0.25;
    if (yhi - ylo < 0.5) ylo -= 0.25, yhi += 0.25;
    char yl[16];
    ql_fmt_err(yl, sizeof yl, pow(10, yhi));
    ql_canvas_printf(c, 1, py, px - 1, QL_ST_DIM, "%7s", yl);
    ql_fmt_err(yl, sizeof yl, pow(10, ylo));
    ql_canvas_printf(c, 1, py + ph - 1, px - 1, QL_ST_DIM, "%7s", yl);
    /* ticks every ~16 columns */
    int nt = pw / 16 > 1 ? pw / 16 : 1;
    for (int i = 0; i <= nt; i++) {
        int tx = px + (int)lround((double)i / nt * (pw - 1));
        if (i) ql_canvas_set(c, tx, py + ph, 0x2534, QL_ST_DIM);
        ql_canvas_printf(c, i == nt ? tx - 4 : tx, py + ph + 1, 0, QL_ST_DIM, "%.2f", xlo + (xhi - xlo) * i / nt);
    }
#define PX(bx) (px + (int)lround(((bx) - xlo) / (xhi - xlo) * (pw - 1)))
#define PY(ey) (py + ph - 1 - (int)lround((log10(ey) - ylo) / (yhi - ylo) * (ph - 1)))
    for (int i = 0; i < u->n_pareto; i++)
        if (u->pareto_err[i] > 0) ql_canvas_set(c, PX(u->pareto_bpw[i]), PY(u->pareto_err[i]), 0x2022, QL_ST_PLOT);
    if (u->has_solution && u->sol_err > 0) ql_canvas_set(c, PX(u->sol_bpw), PY(u->sol_err), 'x', QL_ST_OK);
    if (isfinite(cur_err) && cur_err > 0) ql_canvas_set(c, PX(t.bpw), PY(cur_err), 0x25C6, QL_ST_MARK);
#undef PX
#undef PY
    ql_canvas_puts(c, c->w - 36, py - 1, 0, QL_ST_DIM, "• frontier  x solution  ◆ current");
}
