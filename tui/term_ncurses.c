/* term_ncurses.c — the one file that talks to curses: terminal set-up and teardown, colours for 256,
 * 8 or no colours, reading keys (and clicks) into the app's event codes, copying the canvas to the
 * screen, and restoring the terminal on every way out (normal quit, SIGTERM/SIGHUP/SIGINT, crash
 * signals, ql_abort). Everything else in tui/ is plain C that tests run without a terminal. */
#define NCURSES_WIDECHAR 1
#include "tui/tui.h"

#include <locale.h>
#include <ncurses.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_active; /* curses owns the terminal */
static volatile sig_atomic_t g_stop;   /* SIGTERM/SIGHUP/SIGINT seen */
static attr_t g_attr[QL_ST_COUNT];
static short g_pair[QL_ST_COUNT];
static bool g_ascii;

static void restore_terminal(void) {
    if (g_active) {
        g_active = 0;
        endwin();
    }
}

/* Crash: give the terminal back first (as htop's CRT_handleSIGSEGV does), then let the default
 * action run (core dump, the right exit status). SA_RESETHAND already put the default back. */
static void on_crash(int sig) {
    restore_terminal();
    static const char msg[] = "qlab: crashed; the terminal was restored\n";
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
    raise(sig);
}

static void on_stop(int sig) { g_stop = sig; }

static void on_abort(const char *msg) {
    (void)msg;
    restore_terminal(); /* ql_abort prints its message and aborts after this */
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    int crash[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof crash / sizeof crash[0]; i++) sigaction(crash[i], &sa, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    int stop[] = {SIGTERM, SIGHUP, SIGINT, SIGQUIT};
    for (size_t i = 0; i < sizeof stop / sizeof stop[0]; i++) sigaction(stop[i], &sa, NULL);
    ql_abort_set(on_abort);
    atexit(restore_terminal);
}

typedef struct {
    short fg, bg;
    attr_t attr;
} look;

/* 256 colours: a green→red heat ramp on backgrounds, orange for the active tab and marks. */
static const look LOOK256[QL_ST_COUNT] = {
    [QL_ST_NORMAL] = {-1, -1, 0}, [QL_ST_DIM] = {245, -1, 0}, [QL_ST_BOLD] = {-1, -1, A_BOLD},
    [QL_ST_TITLE] = {231, 24, A_BOLD}, [QL_ST_TAB] = {252, 24, 0}, [QL_ST_TAB_ON] = {16, 214, A_BOLD},
    [QL_ST_HEADER] = {231, 238, A_BOLD}, [QL_ST_CURSOR] = {16, 153, 0}, [QL_ST_STATUS] = {252, 236, 0},
    [QL_ST_ERROR] = {196, -1, A_BOLD}, [QL_ST_OK] = {40, -1, 0}, [QL_ST_WARN] = {214, -1, 0},
    [QL_ST_KEY] = {75, -1, A_BOLD}, [QL_ST_ASSIGNED] = {16, 231, A_BOLD}, [QL_ST_PINNED] = {213, -1, A_BOLD},
    [QL_ST_BAR] = {75, -1, 0}, [QL_ST_BAR_BG] = {240, -1, 0}, [QL_ST_BOX] = {75, -1, 0},
    [QL_ST_PLOT] = {75, -1, 0}, [QL_ST_MARK] = {214, -1, A_BOLD},
    [QL_ST_HEAT0 + 0] = {231, 22, 0}, [QL_ST_HEAT0 + 1] = {231, 28, 0}, [QL_ST_HEAT0 + 2] = {231, 64, 0},
    [QL_ST_HEAT0 + 3] = {16, 100, 0}, [QL_ST_HEAT0 + 4] = {16, 136, 0}, [QL_ST_HEAT0 + 5] = {16, 166, 0},
    [QL_ST_HEAT0 + 6] = {231, 160, 0}, [QL_ST_HEAT0 + 7] = {231, 124, A_BOLD},
};

static const look LOOK8[QL_ST_COUNT] = {
    [QL_ST_NORMAL] = {-1, -1, 0}, [QL_ST_DIM] = {-1, -1, A_DIM}, [QL_ST_BOLD] = {-1, -1, A_BOLD},
    [QL_ST_TITLE] = {COLOR_WHITE, COLOR_BLUE, A_BOLD}, [QL_ST_TAB] = {COLOR_WHITE, COLOR_BLUE, 0},
    [QL_ST_TAB_ON] = {COLOR_BLACK, COLOR_YELLOW, A_BOLD}, [QL_ST_HEADER] = {COLOR_BLACK, COLOR_CYAN, 0},
    [QL_ST_CURSOR] = {-1, -1, A_REVERSE}, [QL_ST_STATUS] = {COLOR_BLACK, COLOR_WHITE, 0},
    [QL_ST_ERROR] = {COLOR_RED, -1, A_BOLD}, [QL_ST_OK] = {COLOR_GREEN, -1, 0}, [QL_ST_WARN] = {COLOR_YELLOW, -1, 0},
    [QL_ST_KEY] = {COLOR_CYAN, -1, A_BOLD}, [QL_ST_ASSIGNED] = {-1, -1, A_REVERSE | A_BOLD},
    [QL_ST_PINNED] = {COLOR_MAGENTA, -1, A_BOLD}, [QL_ST_BAR] = {COLOR_CYAN, -1, 0}, [QL_ST_BAR_BG] = {-1, -1, A_DIM},
    [QL_ST_BOX] = {COLOR_CYAN, -1, 0}, [QL_ST_PLOT] = {COLOR_CYAN, -1, 0}, [QL_ST_MARK] = {COLOR_YELLOW, -1, A_BOLD},
    [QL_ST_HEAT0 + 0] = {COLOR_GREEN, -1, 0}, [QL_ST_HEAT0 + 1] = {COLOR_GREEN, -1, 0},
    [QL_ST_HEAT0 + 2] = {COLOR_GREEN, -1, A_BOLD}, [QL_ST_HEAT0 + 3] = {COLOR_YELLOW, -1, 0},
    [QL_ST_HEAT0 + 4] = {COLOR_YELLOW, -1, A_BOLD}, [QL_ST_HEAT0 + 5] = {COLOR_RED, -1, 0},
    [QL_ST_HEAT0 + 6] = {COLOR_RED, -1, A_BOLD}, [QL_ST_HEAT0 + 7] = {COLOR_RED, -1, A_BOLD | A_REVERSE},
};

/* Monochrome: attributes only; the numbers and brackets carry the information. */
static const attr_t MONO[QL_ST_COUNT] = {
    [QL_ST_DIM] = A_DIM, [QL_ST_BOLD] = A_BOLD, [QL_ST_TITLE] = A_REVERSE, [QL_ST_TAB] = A_REVERSE,
    [QL_ST_TAB_ON] = A_BOLD | A_UNDERLINE, [QL_ST_HEADER] = A_UNDERLINE | A_BOLD, [QL_ST_CURSOR] = A_REVERSE,
    [QL_ST_STATUS] = A_REVERSE, [QL_ST_ERROR] = A_BOLD, [QL_ST_WARN] = A_BOLD, [QL_ST_KEY] = A_BOLD,
    [QL_ST_ASSIGNED] = A_REVERSE | A_BOLD, [QL_ST_PINNED] = A_BOLD, [QL_ST_BAR_BG] = A_DIM, [QL_ST_MARK] = A_BOLD,
    [QL_ST_HEAT0 + 0] = A_DIM, [QL_ST_HEAT0 + 1] = A_DIM, [QL_ST_HEAT0 + 5] = A_BOLD, [QL_ST_HEAT0 + 6] = A_BOLD,
    [QL_ST_HEAT0 + 7] = A_BOLD | A_UNDERLINE,
};

static void setup_colours(bool mono) {
    memset(g_pair, 0, sizeof g_pair);
    if (mono || !has_colors()) {
        memcpy(g_attr, MONO, sizeof g_attr);
        return;
    }
    start_color();
    use_default_colors();
    const look *L = COLORS >= 256 && COLOR_PAIRS >= QL_ST_COUNT + 1 ? LOOK256 : LOOK8;
    for (int s = 0; s < QL_ST_COUNT; s++) {
        g_attr[s] = L[s].attr;
        if (L[s].fg < 0 && L[s].bg < 0) continue;
        if (s + 1 >= COLOR_PAIRS) continue;
        init_pair((short)(s + 1), L[s].fg, L[s].bg);
        g_pair[s] = (short)(s + 1);
    }
}

/* Without UTF-8 the box drawing and block characters become ASCII. */
static wchar_t ascii_of(uint32_t ch) {
    if (ch < 128) return (wchar_t)ch;
    switch (ch) {
    case 0x2500: case 0x2594: return '-';
    case 0x2502: return '|';
    case 0x250C: case 0x2510: case 0x2514: case 0x2518: case 0x251C: case 0x2524: return '+';
    case 0x2588: case 0x2587: case 0x2586: case 0x2585: return '#';
    case 0x2584: case 0x2583: case 0x2580: return '=';
    case 0x2582: case 0x2581: return '_';
    case 0x2591: case 0x00B7: case 0x2022: return '.';
    case 0x25CF: return 'o';
    case 0x25C6: return '*';
    case 0x25B8: case 0x25B6: return '>';
    case 0x25BE: return 'v';
    case 0x25C0: return '<';
    case 0x2014: return '-';
    default: return '?';
    }
}

static void blit(const ql_canvas *c) {
    for (int y = 0; y < c->h && y < LINES; y++)
        for (int x = 0; x < c->w && x < COLS; x++) {
            const ql_cell *p = &c->cells[(size_t)y * c->w + x];
            wchar_t wc[2] = {g_ascii ? ascii_of(p->ch) : (wchar_t)p->ch, 0};
            cchar_t cc;
            setcchar(&cc, wc, g_attr[p->st], g_pair[p->st], NULL);
            mvadd_wch(y, x, &cc); /* the bottom-right cell may report ERR; it is still drawn */
        }
}

static int map_key(int rc, wint_t ch) {
    if (rc == KEY_CODE_YES) {
        switch (ch) {
        case KEY_UP: return QL_KEY_UP;
        case KEY_DOWN: return QL_KEY_DOWN;
        case KEY_LEFT: return QL_KEY_LEFT;
        case KEY_RIGHT: return QL_KEY_RIGHT;
        case KEY_PPAGE: return QL_KEY_PGUP;
        case KEY_NPAGE: return QL_KEY_PGDN;
        case KEY_HOME: return QL_KEY_HOME;
        case KEY_END: return QL_KEY_END;
        case KEY_BTAB: return QL_KEY_BTAB;
        case KEY_DC: return QL_KEY_DEL;
        case KEY_BACKSPACE: return QL_KEY_BACKSPACE;
        case KEY_ENTER: return QL_KEY_ENTER;
        case KEY_F(1): return QL_KEY_F1;
        case KEY_RESIZE: return QL_KEY_RESIZE;
        case KEY_MOUSE: {
            MEVENT me;
            if (getmouse(&me) == OK && (me.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED)) && me.x < 1024)
                return QL_KEY_CLICK + (me.y << 10 | me.x);
            return -1;
        }
        default: return -1;
        }
    }
    if (ch == '\r') return QL_KEY_ENTER;
    if (ch == 8) return QL_KEY_BACKSPACE;
    return (int)ch;
}

int ql_tui_run_terminal(ql_tui_app *a, const ql_tui_term_opts *o) {
    if (!isatty(0) || !isatty(1)) {
        fprintf(stderr, "qlab tui: needs a terminal (use --keys SCRIPT for a headless run)\n");
        return 1;
    }
    setlocale(LC_ALL, "");
    const char *cs = setlocale(LC_CTYPE, NULL);
    g_ascii = (o && o->ascii) || !cs || !(strstr(cs, "UTF-8") || strstr(cs, "utf8") || strstr(cs, "UTF8"));
    bool mono = (o && o->mono) || getenv("NO_COLOR");
    install_signals();
    if (!initscr()) {
        fprintf(stderr, "qlab tui: cannot initialise the terminal\n");
        return 1;
    }
    g_active = 1;
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    curs_set(0);
    set_escdelay(25);
    timeout(100); /* ticks while idle: job progress and results */
    mousemask(BUTTON1_CLICKED | BUTTON1_PRESSED, NULL);
    mouseinterval(0);
    setup_colours(mono);
    ql_canvas c;
    ql_canvas_init(&c, COLS, LINES);
    bool dirty = true;
    int frames = 0;
    for (;;) {
        if (g_stop) {
            ql_tui_handle(a, QL_KEY_ESC); /* cancel the job, then leave */
            ql_tui_wait(a);
            break;
        }
        if (dirty) {
            if (c.w != COLS || c.h != LINES) ql_canvas_resize(&c, COLS, LINES);
            ql_tui_render(a, &c);
            erase();
            blit(&c);
            refresh();
            dirty = false;
            if (o && o->max_frames > 0 && ++frames >= o->max_frames) break;
        }
        wint_t ch;
        int rc = get_wch(&ch);
        unsigned r;
        if (rc == ERR) r = ql_tui_tick(a);
        else {
            int ev = map_key(rc, ch);
            r = ev >= 0 ? ql_tui_handle(a, ev) : QL_R_NONE;
            if (ev == QL_KEY_RESIZE) r |= QL_R_REDRAW;
            r |= ql_tui_tick(a);
        }
        if (r & QL_R_QUIT) break;
        if (r & QL_R_REDRAW) dirty = true;
    }
    ql_canvas_deinit(&c);
    restore_terminal();
    ql_abort_set(NULL);
    return 0;
}
