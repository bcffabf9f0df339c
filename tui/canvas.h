/* canvas.h — the off-screen grid every TUI view draws into: w×h cells of {codepoint, style}. Styles
 * are semantic names (a heat-map level, "the current assignment"), not colours; tui/term_ncurses.c
 * turns them into curses attributes for 256 colours, 8 colours or monochrome. Tests read the grid as
 * text (ql_canvas_text) and compare it with golden files, so no terminal is needed to check a screen.
 * Every call clips to the grid, so views never check bounds themselves. Not thread-safe. */
#ifndef QL_TUI_CANVAS_H
#define QL_TUI_CANVAS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    QL_ST_NORMAL = 0,
    QL_ST_DIM,      /* secondary text, disabled entries */
    QL_ST_BOLD,
    QL_ST_TITLE,    /* the top bar */
    QL_ST_TAB,      /* inactive tab */
    QL_ST_TAB_ON,   /* active tab */
    QL_ST_HEADER,   /* table headings */
    QL_ST_CURSOR,   /* the selected row */
    QL_ST_STATUS,   /* bottom lines */
    QL_ST_ERROR,
    QL_ST_OK,
    QL_ST_WARN,
    QL_ST_KEY,      /* a key name in hints and help */
    QL_ST_ASSIGNED, /* the current assignment in the plan grid */
    QL_ST_PINNED,
    QL_ST_BAR,      /* filled part of a progress bar */
    QL_ST_BAR_BG,
    QL_ST_BOX,      /* frames of overlays */
    QL_ST_PLOT,     /* plotted points */
    QL_ST_MARK,     /* the current plan on a plot */
    QL_ST_HEAT0,    /* heat map: 0 (smallest error) .. 7 (largest) */
    QL_ST_HEAT7 = QL_ST_HEAT0 + 7,
    QL_ST_COUNT
} ql_style;

typedef struct {
    uint32_t ch; /* Unicode codepoint; every codepoint is drawn one column wide */
    uint8_t st;  /* ql_style */
} ql_cell;

typedef struct {
    int w, h;
    ql_cell *cells; /* [h][w], owned */
} ql_canvas;

void ql_canvas_init(ql_canvas *c, int w, int h);
void ql_canvas_deinit(ql_canvas *c);
void ql_canvas_resize(ql_canvas *c, int w, int h); /* contents become blank */
void ql_canvas_clear(ql_canvas *c);
ql_cell *ql_canvas_at(ql_canvas *c, int x, int y); /* NULL outside */
void ql_canvas_set(ql_canvas *c, int x, int y, uint32_t ch, int st);
/* Writes UTF-8 text at (x, y) and clips at max_x (exclusive; <= 0 means the right edge). Returns the
 * column after the last character written (or that would have been written). */
int ql_canvas_puts(ql_canvas *c, int x, int y, int max_x, int st, const char *utf8);
int ql_canvas_printf(ql_canvas *c, int x, int y, int max_x, int st, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
void ql_canvas_fill(ql_canvas *c, int x, int y, int w, int h, uint32_t ch, int st);
void ql_canvas_style(ql_canvas *c, int x, int y, int w, int st); /* restyle w cells of a row */
void ql_canvas_hline(ql_canvas *c, int x, int y, int w, int st);
void ql_canvas_box(ql_canvas *c, int x, int y, int w, int h, int st, const char *title);
/* A progress bar of width w: filled fraction frac in [0,1]. */
void ql_canvas_bar(ql_canvas *c, int x, int y, int w, double frac);

/* A scatter/line plot inside (x, y, w, h): a left axis with the top and bottom values (7 columns, printed with
 * "%.3g"), a bottom axis with the first and last x, and each series' points as its glyph in its style (a later
 * series over an earlier one). y is log10-scaled when logy (non-positive values skipped); NaN points are
 * skipped. Returns false (nothing drawn but the axes) when no point is finite. */
typedef struct {
    const double *x, *y;
    int n;
    uint32_t glyph;
    int st;
} ql_plot_series;
bool ql_canvas_plot(ql_canvas *c, int x, int y, int w, int h, const ql_plot_series *s, int n_series, bool logy);

/* The grid as UTF-8 text, one line per row, trailing spaces removed; malloc'ed (caller frees). */
char *ql_canvas_text(const ql_canvas *c);

/* Decodes one UTF-8 codepoint from *s and advances it (invalid bytes give U+FFFD). */
uint32_t ql_utf8_next(const char **s);
/* Number of codepoints (= columns) of a UTF-8 string. */
int ql_utf8_width(const char *s);

#endif
