/* tui.h — running the workbench in a terminal (tui/term_ncurses.c, the only file that includes
 * curses). The state, the actions and the drawing are in app.h and need no terminal. */
#ifndef QL_TUI_H
#define QL_TUI_H

#include "tui/app.h"

typedef struct {
    bool mono;      /* no colours even when the terminal has them (also: NO_COLOR set) */
    bool ascii;     /* draw with ASCII only (also automatic when the locale is not UTF-8) */
    int max_frames; /* > 0: leave after this many frames (scripted runs) */
} ql_tui_term_opts;

/* Takes over the terminal until the user quits; the terminal is restored on every exit path,
 * including SIGSEGV/SIGBUS/SIGFPE/SIGILL/SIGABRT (restore, then the default action) and
 * SIGTERM/SIGHUP/SIGINT (a clean exit). Returns 0, or 1 if the terminal could not be set up. */
int ql_tui_run_terminal(ql_tui_app *a, const ql_tui_term_opts *o);

#endif
