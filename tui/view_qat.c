/* view_qat.c — the Preview screen's training panel: the run's loss per step and its held-out KLD at each
 * evaluation as a live curve (log scale), with the start and best held-out KLD; drawn while a run goes and
 * after it, until the screen's history is all that is left to compare (Q starts a run, tui/work_qat.c). */
#include "tui/view.h"

#include <math.h>
#include <stdio.h>

int ql_view_qat(ql_tui_app *a, ql_canvas *c, int y, int h) {
    const ql_tui_qat *q = &a->qat;
    if (!q->shown || h < 6) return 0;
    static const char *const modes[] = {"QAT", "tuning norms", "tuning scales", "tuning codebooks"};
    const char *mode = q->mode >= 0 && q->mode < 4 ? modes[q->mode] : "training";
    const int last = q->n ? q->step[q->n - 1] : 0;
    char best[64] = "";
    if (isfinite(q->best_kld)) snprintf(best, sizeof best, " · best %.5f at step %d", q->best_kld, q->best_step);
    char start[48] = "";
    if (isfinite(q->kld_start)) snprintf(start, sizeof start, " · start %.5f", q->kld_start);
    ql_canvas_printf(c, 1, y, c->w - 1, QL_ST_HEADER, "Training  %s, step %d/%d, lr %g%s%s", mode, last, q->total, q->lr,
                     start, best);
    double xs[QL_TUI_QAT_PTS];
    for (int i = 0; i < q->n; i++) xs[i] = q->step[i];
    const ql_plot_series s[2] = {{xs, q->loss, q->n, 0x00B7, QL_ST_PLOT}, {xs, q->kld, q->n, 0x25CF, QL_ST_MARK}};
    if (!ql_canvas_plot(c, 1, y + 1, c->w - 24, h - 1, s, 2, true))
        ql_canvas_puts(c, 12, y + 1 + (h - 1) / 2, 0, QL_ST_DIM, "the first step's loss appears here");
    ql_canvas_puts(c, c->w - 22, y + 2, 0, QL_ST_PLOT, "· training loss");
    ql_canvas_puts(c, c->w - 22, y + 3, 0, QL_ST_MARK, "● held-out KLD");
    ql_canvas_puts(c, c->w - 22, y + 4, 0, QL_ST_DIM, a->jv.running ? "Esc stops, keeps best" : "result: history");
    return h;
}
