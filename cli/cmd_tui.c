/* cmd_tui.c — `qlab tui [MODEL]`: the workbench in the terminal, or, with --keys, a headless run of
 * a key script that prints the final screen as text (for scripts, docs and checks without a tty). */
#include "cli/cli.h"
#include "tui/tui.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *TUI_USAGE =
    "usage: qlab tui [MODEL] [--text FILE] [--calib SPEC] [--threads N] [--mono] [--ascii]\n"
    "                [--keys SCRIPT [--size WxH]]\n"
    "The workbench: load a model, collect statistics, measure, assign formats by hand or to a target, preview\n"
    "perplexity/KLD, export. Screens: Model, Calib, Plan, Auto, Preview, Export, Catalogue; ? lists every key.\n"
    "  MODEL           a .gguf file, a Hugging Face folder or a llama2.c .bin (default: models/tiny.gguf)\n"
    "  --text FILE     evaluation text for Preview (default: the shared data folder's, when present)\n"
    "  --calib SPEC    calibration source(s), as qlab calib takes them (default: a text beside it)\n"
    "  --mono          no colours (NO_COLOR does the same); --ascii: no Unicode drawing characters\n"
    "  --keys SCRIPT   no terminal: feed the keys (<enter> <esc> <tab> <up> <down> <left> <right> <pgup> <pgdn>\n"
    "                  <bs> <c-r> <wait> ...), then print the screen as text at --size (default 80x24)\n"
    "  " CLI_DEVICE_USAGE;

int cmd_tui(int argc, char **argv) {
    /* `qlab workbench` is the same command; its usage says so under its own name */
    static char usage[2048];
    snprintf(usage, sizeof usage, "usage: qlab %s%s", argv[0], TUI_USAGE + strlen("usage: qlab tui"));
    cli_args a;
    cli_args_init(&a, argc, argv, usage);
    const char *flag, *pos, *keys = NULL, *size = "80x24";
    ql_tui_config cfg = {0};
    ql_tui_term_opts to = {0};
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (cfg.model) return cli_usage_error("tui", usage, "unexpected argument '%s'", pos);
            cfg.model = pos;
        } else if (!strcmp(flag, "--text")) cfg.text = cli_value(&a, flag);
        else if (!strcmp(flag, "--calib")) cfg.calib = cli_value(&a, flag);
        else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t")) cfg.n_threads = cli_int(&a, flag, 1, 256);
        else if (!strcmp(flag, "--mono")) to.mono = true;
        else if (!strcmp(flag, "--ascii")) to.ascii = true;
        else if (!strcmp(flag, "--keys")) keys = cli_value(&a, flag);
        else if (!strcmp(flag, "--size")) size = cli_value(&a, flag);
        else if (cli_device_flag(&a, flag)) continue;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    int w = 0, h = 0;
    if (sscanf(size, "%dx%d", &w, &h) != 2 || w < 20 || h < 8 || w > 1000 || h > 500)
        return cli_usage_error("tui", usage, "--size must be WxH, e.g. 80x24");
    if (!cfg.model) {
        FILE *f = fopen("models/tiny.gguf", "rb");
        if (f) {
            fclose(f);
            cfg.model = "models/tiny.gguf";
        }
    }
    ql_tui_app *app;
    if (ql_tui_app_new(&cfg, &app)) return cli_fail("tui");
    int rc = 0;
    if (keys) {
        ql_tui_feed(app, keys);
        ql_tui_wait(app);
        ql_canvas c;
        ql_canvas_init(&c, w, h);
        ql_tui_render(app, &c);
        char *txt = ql_canvas_text(&c);
        fputs(txt, stdout);
        free(txt);
        ql_canvas_deinit(&c);
    } else
        rc = ql_tui_run_terminal(app, &to);
    ql_tui_app_free(app);
    return rc;
}
