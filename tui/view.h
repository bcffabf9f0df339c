/* view.h — drawing helpers shared by the tui/view_*.c files (state -> canvas; never curses). */
#ifndef QL_TUI_VIEW_H
#define QL_TUI_VIEW_H

#include "tui/app.h"

/* The body of a screen: rows y0..y0+h-1, full width. */
typedef struct {
    int x, y, w, h;
} ql_rect;

void ql_view_model(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_calib(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_plan(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_auto(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_preview(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_export(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_catalogue(ql_tui_app *a, ql_canvas *c, ql_rect r);
void ql_view_runtime(ql_tui_app *a, ql_canvas *c, ql_rect r);
/* The Preview screen's training curve in rows y..y+h-1 (tui/view_qat.c); returns the rows used (0: no run). */
int ql_view_qat(ql_tui_app *a, ql_canvas *c, int y, int h);

/* "1.12 MiB", "512 B", "3.4 GiB" */
void ql_fmt_bytes(char *buf, size_t cap, double bytes);
/* 292800 -> "292,800" */
void ql_fmt_count(char *buf, size_t cap, int64_t n);
/* A compact error value in at most 5 columns: "0.012", "3e-4", "—" for NAN. */
void ql_fmt_err(char *buf, size_t cap, double v);
/* The last path component. */
const char *ql_basename(const char *path);
/* Word-wraps text into the rectangle; returns the rows used. */
int ql_view_wrap(ql_canvas *c, int x, int y, int w, int max_rows, int st, const char *text);
/* One line of at most w columns: whole words and an ellipsis when the text is longer (never half a word). */
int ql_view_fit(ql_canvas *c, int x, int y, int w, int st, const char *text);
/* Heat-map style for error v given the table's log10 range [lo, hi]. */
int ql_heat_style(double v, double lo, double hi);
void ql_sense_range(const ql_tui_sense *s, double *lo, double *hi);

#endif
