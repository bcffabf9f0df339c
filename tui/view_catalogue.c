/* view_catalogue.c — every format and method of the registries, explained, with its effect on one
 * real tensor of the loaded model: error figures, an error histogram and the first weights of a row
 * before and after; for rotated formats the weight histogram before and after the rotation, for additive
 * codebooks the codeword usage (computed by the catalogue job in tui/work.c). */
#include "tui/view.h"
#include "kernels/ggml_types.h"
#include "tui/jobs.h"
#include "methods/method.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const uint32_t BLOCKS[] = {' ', 0x2581, 0x2582, 0x2583, 0x2584, 0x2585, 0x2586, 0x2587, 0x2588};

static void needs_str(unsigned needs, char *b, size_t cap) {
    b[0] = 0;
    if (!needs) snprintf(b, cap, "nothing but the weights");
    if (needs & QL_NEEDS_ACT_STATS) strncat(b, "activation statistics ", cap - strlen(b) - 1);
    if (needs & QL_NEEDS_HESSIAN) strncat(b, "Hessians (Σ x xᵀ) ", cap - strlen(b) - 1);
}

/* A two-row histogram: each of the bins is a column whose height (16 steps) is its share. */
static void draw_hist(ql_canvas *c, int x, int y, const int *hist, int bins) {
    int mx = 1;
    for (int i = 0; i < bins; i++) mx = hist[i] > mx ? hist[i] : mx;
    for (int i = 0; i < bins; i++) {
        int h = hist[i] ? 1 + (int)((double)hist[i] / mx * 15) : 0;
        int st = i == bins / 2 ? QL_ST_OK : QL_ST_PLOT;
        ql_canvas_set(c, x + i, y + 1, BLOCKS[h > 8 ? 8 : h], st);
        ql_canvas_set(c, x + i, y, BLOCKS[h > 8 ? h - 8 : 0], st);
    }
}

/* One row of weights as bars around an axis between two rows: positive values rise in the upper
 * row (eighths), negative ones hang in the lower row (Unicode has only 1/8, 1/2 and full upper blocks). */
static void draw_strip(ql_canvas *c, int x, int y, const float *v, int n, double scale, int st) {
    for (int i = 0; i < n; i++) {
        int h = (int)lround(fabs(v[i]) / scale * 8);
        h = h > 8 ? 8 : h;
        if (v[i] >= 0) ql_canvas_set(c, x + i, y, h ? BLOCKS[h] : 0x2581, h ? st : QL_ST_DIM);
        else ql_canvas_set(c, x + i, y + 1, h <= 2 ? 0x2594 : h <= 5 ? 0x2580 : 0x2588, st);
    }
}

void ql_view_catalogue(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    ql_tui_catalogue *k = &a->cat;
    int nf = ql_format_count(), n = ql_tui_cat_count();
    int lw = c->w >= 120 ? 26 : 20;
    /* the list */
    int rows = r.h;
    if (k->cursor >= n) k->cursor = n - 1;
    if (k->cursor < k->scroll) k->scroll = k->cursor;
    if (k->cursor >= k->scroll + rows) k->scroll = k->cursor - rows + 1;
    for (int i = 0; i < rows && k->scroll + i < n; i++) {
        int it = k->scroll + i;
        int st = it == k->cursor ? QL_ST_CURSOR : it < nf ? QL_ST_NORMAL : QL_ST_BOLD;
        ql_canvas_fill(c, 0, r.y + i, lw, 1, ' ', st);
        if (it < nf) {
            const ql_format *f = ql_format_at(it);
            ql_canvas_printf(c, 1, r.y + i, lw, f->quantize_rows ? st : (it == k->cursor ? st : QL_ST_DIM), "%-*.*s%5.2f",
                             lw - 7, lw - 7, f->name, f->bpw);
        } else
            ql_canvas_printf(c, 1, r.y + i, lw, st, "+%s", ql_method_at(it - nf)->name);
    }
    for (int i = 0; i < rows; i++) ql_canvas_set(c, lw, r.y + i, 0x2502, QL_ST_DIM);
    /* the pane */
    int x = lw + 2, w = c->w - x - 1, y = r.y;
    const ql_format *f = k->cursor < nf ? ql_format_at(k->cursor) : NULL;
    const ql_method *me = f ? NULL : ql_method_at(k->cursor - nf);
    if (f) {
        int xe = ql_canvas_printf(c, x, y, 0, QL_ST_BOLD, "%s", f->name);
        ql_canvas_printf(c, xe + 2, y++, 0, QL_ST_NORMAL, "%.4f bits/weight · block %d · llama.cpp: %s%s", f->bpw, f->block,
                         ql_type_is_ggml(f->type) ? "yes" : "no (qlab only)", f->quantize_rows ? "" : " · decode only");
        y += ql_view_wrap(c, x, y, w, 2, QL_ST_DIM, f->summary);
        y += ql_view_wrap(c, x, y, w, 6, QL_ST_NORMAL, ql_tui_explain_format(f));
        ql_canvas_printf(c, x, y++, 0, QL_ST_DIM, "needs: %s%s", "the weights",
                         f->uses_importance ? "; uses an importance matrix when given" : "");
    } else {
        char needs[96];
        needs_str(me->needs, needs, sizeof needs);
        ql_canvas_printf(c, x, y++, 0, QL_ST_BOLD, "method %s", me->name);
        y += ql_view_wrap(c, x, y, w, 2, QL_ST_DIM, me->summary);
        const char *ex = ql_tui_explain_method(me->name);
        if (ex) y += ql_view_wrap(c, x, y, w, 6, QL_ST_NORMAL, ex);
        ql_canvas_printf(c, x, y++, 0, me->needs && !a->calib.stats ? QL_ST_WARN : QL_ST_DIM, "needs: %s%s", needs,
                         me->needs && !a->calib.stats ? " (none loaded: Calib, r)" : "");
        char caps[128], why[256] = "";
        ql_method_caps_str(me->caps, caps, sizeof caps);
        ql_canvas_printf(c, x, y++, 0, QL_ST_DIM, "does: %s · options: %d (qlab formats --methods)", caps, me->n_opts);
        if (k->demo_fmt && !ql_method_serves(me, k->demo_fmt, why, sizeof why))
            y += ql_view_wrap(c, x, y, w, 2, QL_ST_WARN, why); /* refused, not rounded to nearest */
        else
            ql_canvas_printf(c, x, y++, 0, QL_ST_DIM, "writes: %s (f on a format changes it)",
                             k->demo_fmt ? k->demo_fmt->name : "?");
    }
    if (!a->model || !a->plan.n_rows) {
        ql_canvas_puts(c, x, y + 1, 0, QL_ST_DIM, "Open a model to see the effect on one of its tensors.");
        return;
    }
    y++;
    int ri = k->has_effect ? k->used_row : k->row;
    const ql_tui_row *rw = &a->plan.rows[ri >= 0 && ri < a->plan.n_rows ? ri : 0];
    const char *tn = a->model->gguf->tensors[rw->tensor].name;
    ql_canvas_printf(c, x, y++, 0, QL_ST_HEADER, "Effect on %s (%lldx%lld) · ] [", tn, (long long)rw->ne0,
                     (long long)rw->ne1);
    if (a->jv.running && !strcmp(a->jv.name, "catalogue")) {
        ql_canvas_puts(c, x, y, 0, QL_ST_DIM, "computing...");
        return;
    }
    if (!k->has_effect) {
        ql_canvas_puts(c, x, y, 0, QL_ST_DIM, a->job ? "waiting for the running job" : "Enter computes it");
        return;
    }
    if (k->effect_err[0]) {
        ql_view_wrap(c, x, y, w, 3, QL_ST_WARN, k->effect_err);
        return;
    }
    char out[80] = "";
    if (k->has_out_err) {
        if (me && strcmp(me->name, "rtn"))
            snprintf(out, sizeof out, " · output err %.3g (rtn %.3g)", k->out_err, k->out_err_rtn);
        else
            snprintf(out, sizeof out, " · output err %.3g", k->out_err);
    }
    ql_canvas_printf(c, x, y++, 0, QL_ST_NORMAL, "rel. RMSE %.4f · SNR %.1f dB · max |err| %.3g%s", k->rel_rmse, k->snr_db,
                     k->max_abs, out);
    int bins = (int)(sizeof k->hist / sizeof k->hist[0]);
    if (k->has_rot && y + 4 <= r.y + r.h) { /* the weights the codes see: the rotation evens out outliers */
        ql_canvas_printf(c, x, y, 0, QL_ST_DIM, "weights before rotation (kurtosis %.1f)", k->kurt_before);
        ql_canvas_printf(c, x + bins + 3, y++, 0, QL_ST_DIM, "after (kurtosis %.1f) ±%.2g", k->kurt_after,
                         k->rot_range);
        draw_hist(c, x, y, k->rot_before, bins);
        draw_hist(c, x + bins + 3, y, k->rot_after, bins);
        y += 2;
    }
    if (k->has_usage && y + 3 <= r.y + r.h) { /* how evenly the learned codewords are used */
        ql_canvas_printf(c, x, y++, 0, QL_ST_DIM, "codebook usage: %d of %d codewords used; uses by rank:",
                         k->usage_used, k->usage_total);
        draw_hist(c, x, y, k->usage, bins);
        y += 2;
    }
    if (y + 9 > r.y + r.h) { /* 80x24: keep the histogram and the strip, drop the labels */
        draw_hist(c, x, y, k->hist, bins);
        ql_canvas_printf(c, x + bins + 1, y + 1, 0, QL_ST_DIM, "error ±%.2g", k->hist_range);
        y += 2;
    } else {
        ql_canvas_puts(c, x, y++, 0, QL_ST_DIM, "error histogram (quantized − original):");
        draw_hist(c, x, y, k->hist, bins);
        y += 2;
        ql_canvas_printf(c, x, y, 0, QL_ST_DIM, "-%.2g", k->hist_range);
        ql_canvas_puts(c, x + bins / 2, y, 0, QL_ST_DIM, "0");
        ql_canvas_printf(c, x + bins - 4, y++, 0, QL_ST_DIM, "+%.2g", k->hist_range);
    }
    int ns = k->n_strip < w - 8 ? k->n_strip : w - 8;
    double scale = 1e-12;
    for (int i = 0; i < ns; i++) scale = fmax(scale, fmax(fabs(k->before[i]), fabs(k->after[i])));
    if (y + 5 <= r.y + r.h) {
        ql_canvas_puts(c, x, y, 0, QL_ST_DIM, "before");
        draw_strip(c, x + 7, y, k->before, ns, scale, QL_ST_NORMAL);
        ql_canvas_puts(c, x, y + 2, 0, QL_ST_DIM, "after");
        draw_strip(c, x + 7, y + 2, k->after, ns, scale, QL_ST_MARK);
        y += 4;
    }
    /* the first weights as numbers */
    int per = (w - 7) / 7;
    if (per > 12) per = 12;
    if (y + 1 < r.y + r.h) {
        int xx = ql_canvas_puts(c, x, y, 0, QL_ST_DIM, "w   ");
        for (int i = 0; i < per && i < k->n_strip; i++) xx = ql_canvas_printf(c, xx, y, 0, QL_ST_NORMAL, "%+6.3f ", k->before[i]);
        xx = ql_canvas_puts(c, x, y + 1, 0, QL_ST_DIM, "ŵ   ");
        for (int i = 0; i < per && i < k->n_strip; i++) xx = ql_canvas_printf(c, xx, y + 1, 0, QL_ST_MARK, "%+6.3f ", k->after[i]);
    }
}
