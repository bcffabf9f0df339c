/* canvas.c — the cell grid (see canvas.h). */
#include "tui/canvas.h"
#include "base/ql_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ql_canvas_init(ql_canvas *c, int w, int h) {
    c->w = c->h = 0;
    c->cells = NULL;
    ql_canvas_resize(c, w, h);
}

void ql_canvas_deinit(ql_canvas *c) {
    free(c->cells);
    c->cells = NULL;
    c->w = c->h = 0;
}

void ql_canvas_resize(ql_canvas *c, int w, int h) {
    if (w < 1) w = 1;
    if (h < 1) h = 1;
    if (w != c->w || h != c->h) {
        free(c->cells);
        c->cells = ql_malloc((size_t)w * h * sizeof *c->cells);
        c->w = w;
        c->h = h;
    }
    ql_canvas_clear(c);
}

void ql_canvas_clear(ql_canvas *c) {
    for (int i = 0; i < c->w * c->h; i++) c->cells[i] = (ql_cell){' ', QL_ST_NORMAL};
}

ql_cell *ql_canvas_at(ql_canvas *c, int x, int y) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return NULL;
    return &c->cells[(size_t)y * c->w + x];
}

void ql_canvas_set(ql_canvas *c, int x, int y, uint32_t ch, int st) {
    ql_cell *p = ql_canvas_at(c, x, y);
    if (p) *p = (ql_cell){ch, (uint8_t)st};
}

uint32_t ql_utf8_next(const char **s) {
    const unsigned char *p = (const unsigned char *)*s;
    uint32_t c = p[0];
    int n = 0;
    if (c < 0x80) n = 0;
    else if ((c & 0xE0) == 0xC0) { c &= 0x1F; n = 1; }
    else if ((c & 0xF0) == 0xE0) { c &= 0x0F; n = 2; }
    else if ((c & 0xF8) == 0xF0) { c &= 0x07; n = 3; }
    else { *s += 1; return 0xFFFD; }
    for (int i = 1; i <= n; i++) {
        if ((p[i] & 0xC0) != 0x80) { *s += i; return 0xFFFD; }
        c = (c << 6) | (p[i] & 0x3F);
    }
    *s += n + 1;
    return c;
}

int ql_utf8_width(const char *s) {
    int n = 0;
    while (*s) {
        ql_utf8_next(&s);
        n++;
    }
    return n;
}

int ql_canvas_puts(ql_canvas *c, int x, int y, int max_x, int st, const char *s) {
    if (max_x <= 0 || max_x > c->w) max_x = c->w;
    while (s && *s) {
        uint32_t ch = ql_utf8_next(&s);
        if (ch == '\n' || ch == '\t') ch = ' ';
        if (x < max_x) ql_canvas_set(c, x, y, ch, st);
        x++;
    }
    return x;
}

int ql_canvas_printf(ql_canvas *c, int x, int y, int max_x, int st, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return ql_canvas_puts(c, x, y, max_x, st, buf);
}

void ql_canvas_fill(ql_canvas *c, int x, int y, int w, int h, uint32_t ch, int st) {
    for (int j = y; j < y + h; j++)
        for (int i = x; i < x + w; i++) ql_canvas_set(c, i, j, ch, st);
}

void ql_canvas_style(ql_canvas *c, int x, int y, int w, int st) {
    for (int i = x; i < x + w; i++) {
        ql_cell *p = ql_canvas_at(c, i, y);
        if (p) p->st = (uint8_t)st;
    }
}

void ql_canvas_hline(ql_canvas *c, int x, int y, int w, int st) { ql_canvas_fill(c, x, y, w, 1, 0x2500, st); }

void ql_canvas_box(ql_canvas *c, int x, int y, int w, int h, int st, const char *title) {
    if (w < 2 || h < 2) return;
    ql_canvas_fill(c, x, y, w, h, ' ', QL_ST_NORMAL);
    ql_canvas_set(c, x, y, 0x250C, st);
    ql_canvas_set(c, x + w - 1, y, 0x2510, st);
    ql_canvas_set(c, x, y + h - 1, 0x2514, st);
    ql_canvas_set(c, x + w - 1, y + h - 1, 0x2518, st);
    ql_canvas_fill(c, x + 1, y, w - 2, 1, 0x2500, st);
    ql_canvas_fill(c, x + 1, y + h - 1, w - 2, 1, 0x2500, st);
    ql_canvas_fill(c, x, y + 1, 1, h - 2, 0x2502, st);
    ql_canvas_fill(c, x + w - 1, y + 1, 1, h - 2, 0x2502, st);
    if (title && *title) ql_canvas_printf(c, x + 2, y, x + w - 2, QL_ST_BOLD, " %s ", title);
}

void ql_canvas_bar(ql_canvas *c, int x, int y, int w, double frac) {
    if (w <= 0) return;
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    int fill = (int)(frac * w + 0.5);
    for (int i = 0; i < w; i++)
        ql_canvas_set(c, x + i, y, i < fill ? 0x2588 : 0x2591, i < fill ? QL_ST_BAR : QL_ST_BAR_BG);
}

static int utf8_put(char *o, uint32_t ch) {
    if (ch < 0x80) { o[0] = (char)ch; return 1; }
    if (ch < 0x800) { o[0] = (char)(0xC0 | (ch >> 6)); o[1] = (char)(0x80 | (ch & 0x3F)); return 2; }
    if (ch < 0x10000) {
        o[0] = (char)(0xE0 | (ch >> 12));
        o[1] = (char)(0x80 | ((ch >> 6) & 0x3F));
        o[2] = (char)(0x80 | (ch & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (ch >> 18));
    o[1] = (char)(0x80 | ((ch >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((ch >> 6) & 0x3F));
    o[3] = (char)(0x80 | (ch & 0x3F));
    return 4;
}

char *ql_canvas_text(const ql_canvas *c) {
    char *out = ql_malloc((size_t)c->h * (c->w * 4 + 1) + 1), *o = out;
    for (int y = 0; y < c->h; y++) {
        char *line = o;
        for (int x = 0; x < c->w; x++) o += utf8_put(o, c->cells[(size_t)y * c->w + x].ch);
        while (o > line && o[-1] == ' ') o--;
        *o++ = '\n';
    }
    *o = 0;
    return out;
}

bool ql_canvas_plot(ql_canvas *c, int x, int y, int w, int h, const ql_plot_series *s, int n_series, bool logy) {
    const int px = x + 8, pw = w - 8, ph = h - 2; /* 7 columns of labels and the axis; two rows under */
    if (pw < 4 || ph < 2) return false;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int k = 0; k < n_series; k++)
        for (int i = 0; i < s[k].n; i++) {
            const double xv = s[k].x[i], yv = logy ? (s[k].y[i] > 0 ? log10(s[k].y[i]) : NAN) : s[k].y[i];
            if (!isfinite(xv) || !isfinite(yv)) continue;
            xlo = fmin(xlo, xv), xhi = fmax(xhi, xv), ylo = fmin(ylo, yv), yhi = fmax(yhi, yv);
        }
    for (int j = 0; j < ph; j++) ql_canvas_set(c, px - 1, y + j, 0x2502, QL_ST_DIM);
    ql_canvas_hline(c, px - 1, y + ph, pw + 1, QL_ST_DIM);
    ql_canvas_set(c, px - 1, y + ph, 0x2514, QL_ST_DIM);
    if (!isfinite(xlo)) return false;
    if (xhi <= xlo) xhi = xlo + 1;
    if (yhi - ylo < 1e-12) { /* one level: centred */
        const double pad = logy ? 0.05 : fmax(fabs(yhi) * 0.05, 1e-12);
        ylo -= pad, yhi += pad;
    }
    ql_canvas_printf(c, x, y, px - 1, QL_ST_DIM, "%7.3g", logy ? pow(10, yhi) : yhi);
    ql_canvas_printf(c, x, y + ph - 1, px - 1, QL_ST_DIM, "%7.3g", logy ? pow(10, ylo) : ylo);
    ql_canvas_printf(c, px, y + ph + 1, 0, QL_ST_DIM, "%.0f", xlo);
    char hi[32];
    snprintf(hi, sizeof hi, "%.0f", xhi);
    ql_canvas_puts(c, px + pw - (int)strlen(hi), y + ph + 1, 0, QL_ST_DIM, hi);
    for (int k = 0; k < n_series; k++)
        for (int i = 0; i < s[k].n; i++) {
            const double xv = s[k].x[i], yv = logy ? (s[k].y[i] > 0 ? log10(s[k].y[i]) : NAN) : s[k].y[i];
            if (!isfinite(xv) || !isfinite(yv)) continue;
            const int cx = px + (int)lround((xv - xlo) / (xhi - xlo) * (pw - 1));
            const int cy = y + ph - 1 - (int)lround((yv - ylo) / (yhi - ylo) * (ph - 1));
            ql_canvas_set(c, cx, cy, s[k].glyph, s[k].st);
        }
    return true;
}
