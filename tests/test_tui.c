/* test_tui.c — the workbench without a terminal: whole sessions of key presses fed through
 * ql_tui_feed (the same path the terminal uses), checked on the state and on the rendered cell grid.
 *   - canvas basics (clipping, UTF-8, text dump);
 *   - a session on a small synthetic model: plan edits by row/layer/kind, pins, undo/redo, INI
 *     round trip, the help overlay lists every binding, every screen renders at 80x24, 200x50 and
 *     when too small, the Catalogue's effect job, quitting while a job runs;
 *   - the session of issue 6 on stories260K: statistics, sensitivity, auto-assign to 4.0 bpw, one layer
 *     changed by hand, preview, export; the exported file's perplexity (ql_model_load + ql_perplexity)
 *     equals the one the Preview screen showed;
 *   - QAT started from the Preview screen (issue 15): the live curve, Esc keeping the best, the history row;
 *   - without a calibration set, the Auto screen's plans measured against every one-format plan of equal or
 *     lower size (issue 9);
 *   - golden 80x24 screens in tests/data/tui/ (QL_UPDATE_GOLDEN=1 rewrites them), with figures, format
 *     names and the registry-chosen candidate grid masked so that a new format does not break them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tui/app.h"
#include "pipeline/export.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "tui/jobs.h"
#include "core/ppl.h"
#include "core/synth.h"
#include "pipeline/calib.h"
#include "sensitivity/sense.h"
#include "tui/tui_sense.h"
#include "tests/test_util.h"

static char g_tmp[256];

static char *render(ql_tui_app *a, int w, int h) {
    ql_canvas c;
    ql_canvas_init(&c, w, h);
    ql_tui_render(a, &c);
    char *t = ql_canvas_text(&c);
    ql_canvas_deinit(&c);
    return t;
}

static bool screen_has(ql_tui_app *a, int w, int h, const char *needle) {
    char *t = render(a, w, h);
    bool ok = strstr(t, needle) != NULL;
    if (!ok) printf("--- screen without '%s':\n%s", needle, t);
    free(t);
    return ok;
}

static int find_row(const ql_tui_app *a, const char *name) {
    for (int i = 0; i < a->plan.n_rows; i++)
        if (!strcmp(a->model->gguf->tensors[a->plan.rows[i].tensor].name, name)) return i;
    return -1;
}

/* Moves the Plan cursor to the line showing `line` (a row index, or -1 - group for a header). */
static void plan_goto(ql_tui_app *a, int line) {
    int lines[1024];
    int n = ql_tui_plan_lines(a, lines, 1024);
    ql_tui_feed(a, "<home>");
    for (int i = 0; i < n && lines[i] != line; i++) ql_tui_feed(a, "<down>");
    assert_int_equal(lines[a->plan.cursor], line);
}

static const char *fmt_of(const ql_tui_app *a, int row) {
    const ql_format *f = ql_tui_row_format(&a->plan.rows[row]);
    return f ? f->name : "?";
}

/* ---------------------------------------------------------------- canvas */

static void test_canvas(void **state) {
    (void)state;
    ql_canvas c;
    ql_canvas_init(&c, 10, 3);
    assert_int_equal(ql_canvas_puts(&c, 2, 0, 0, QL_ST_BOLD, "héllo wörld"), 13);
    ql_canvas_printf(&c, 0, 1, 4, QL_ST_NORMAL, "%d", 123456);
    ql_canvas_puts(&c, -3, 2, 0, QL_ST_NORMAL, "abcdef"); /* clipped on the left */
    char *t = ql_canvas_text(&c);
    assert_string_equal(t, "  héllo wö\n1234\ndef\n");
    free(t);
    assert_int_equal(ql_canvas_at(&c, 2, 0)->st, QL_ST_BOLD);
    assert_null(ql_canvas_at(&c, 10, 0));
    ql_canvas_resize(&c, 6, 4);
    ql_canvas_box(&c, 0, 0, 6, 4, QL_ST_BOX, "x");
    t = ql_canvas_text(&c);
    assert_string_equal(t, "┌─ x─┐\n│    │\n│    │\n└────┘\n");
    free(t);
    assert_int_equal(ql_utf8_width("ŵ·█"), 3);
    ql_canvas_deinit(&c);
}

/* ---------------------------------------------------------------- a small synthetic model */

static ql_tui_app *synth_app(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/synth.gguf", g_tmp);
    struct stat st;
    if (stat(path, &st) != 0) {
        ql_synth_shape sh = *ql_synth_find("tiny");
        assert_int_equal(ql_synth_parse_dims("layers=2,embd=64,heads=4,kv=2,ff=128,vocab=300,ctx=64", &sh), QL_OK);
        assert_int_equal(ql_synth_write(&sh, 7, path, 2, NULL), QL_OK);
    }
    ql_tui_config cfg = {.model = path, .text = "/nonexistent-text", .n_threads = 2};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    return a;
}

static void test_synth_plan_edits(void **state) {
    (void)state;
    ql_tui_app *a = synth_app();
    assert_int_equal(a->plan.n_rows, 2 + 2 * 7);
    /* rows of 64 and 128: the K-quants fit nothing and are left out of the default candidates */
    for (int k = 0; k < a->plan.n_cand; k++) assert_true(a->plan.cand[k]->block <= 32);
    ql_tui_feed(a, "3T<enter>"); /* one format everywhere: the prompt's default, q8_0 */
    for (int i = 0; i < a->plan.n_rows; i++) assert_string_equal(fmt_of(a, i), "q8_0");
    int q0 = find_row(a, "blk.0.attn_q.weight"), q1 = find_row(a, "blk.1.attn_q.weight");
    int v0 = find_row(a, "blk.0.attn_v.weight"), v1 = find_row(a, "blk.1.attn_v.weight");
    assert_true(q0 >= 0 && q1 >= 0 && v0 >= 0 && v1 >= 0);
    plan_goto(a, q0);
    ql_tui_feed(a, "-");
    assert_string_equal(fmt_of(a, q0), "q5_0");
    ql_tui_feed(a, "p]"); /* pin the row, raise its layer: the pin holds */
    assert_true(a->plan.rows[q0].pinned);
    assert_string_equal(fmt_of(a, q0), "q5_0");
    assert_string_equal(fmt_of(a, v0), "f16");
    assert_string_equal(fmt_of(a, v1), "q8_0");
    assert_non_null(strstr(a->msg, "pinned"));
    ql_tui_feed(a, "{"); /* every attn_q lower: blk.1's moves, blk.0's is pinned */
    assert_string_equal(fmt_of(a, q1), "q5_0");
    assert_string_equal(fmt_of(a, q0), "q5_0");
    ql_tui_feed(a, "u");
    assert_string_equal(fmt_of(a, q1), "q8_0");
    ql_tui_feed(a, "U");
    assert_string_equal(fmt_of(a, q1), "q5_0");
    ql_tui_feed(a, "uu"); /* back before the layer raise */
    assert_string_equal(fmt_of(a, v0), "q8_0");
    ql_tui_feed(a, "<c-r>");
    assert_string_equal(fmt_of(a, v0), "f16");
    /* Enter gives the row the candidate under the column cursor */
    plan_goto(a, v1);
    ql_tui_feed(a, "<left><left><left><left><left><left><left><left><left><left><enter>");
    assert_ptr_equal(a->plan.rows[v1].fmt, a->plan.cand[0]);
    /* the plan as INI and back */
    char ini[600];
    snprintf(ini, sizeof ini, "<c-u>%s/plan.ini<enter>", g_tmp);
    ql_tui_feed(a, "S");
    ql_tui_feed(a, ini);
    assert_non_null(strstr(a->msg, "plan saved"));
    const ql_format *saved[64];
    for (int i = 0; i < a->plan.n_rows; i++) saved[i] = ql_tui_row_format(&a->plan.rows[i]);
    ql_tui_feed(a, "p"); /* unpin so loading may change every row */
    ql_tui_feed(a, "T<c-u>q4_0<enter>");
    assert_string_equal(fmt_of(a, v0), "q4_0");
    ql_tui_feed(a, "L");
    ql_tui_feed(a, ini);
    for (int i = 0; i < a->plan.n_rows; i++) assert_ptr_equal(ql_tui_row_format(&a->plan.rows[i]), saved[i]);
    /* folding a layer hides its rows; z folds everything */
    int lines[256];
    int n = ql_tui_plan_lines(a, lines, 256);
    plan_goto(a, -2);
    ql_tui_feed(a, " ");
    assert_int_equal(ql_tui_plan_lines(a, lines, 256), n - 7);
    ql_tui_feed(a, "z");
    assert_int_equal(ql_tui_plan_lines(a, lines, 256), 3);
    ql_tui_feed(a, "z");
    assert_int_equal(ql_tui_plan_lines(a, lines, 256), n);
    /* the footer always shows the totals */
    ql_tui_totals t = ql_tui_plan_totals(a);
    char bpw[32];
    snprintf(bpw, sizeof bpw, "BPW %.3f", t.bpw);
    assert_true(screen_has(a, 80, 24, bpw));
    assert_true(screen_has(a, 80, 24, "KV@64"));
    ql_tui_app_free(a);
}

/* The Export screen's target: t walks the exporter registry, the path follows (a folder for the Hugging Face
 * targets), and e writes what the chosen exporter writes — here a GPTQ folder the CLI would also write. */
static void test_export_target(void **state) {
    (void)state;
    ql_tui_app *a = synth_app();
    ql_tui_feed(a, "3T<c-u>int4_g32_sym<enter>6");
    for (int i = 0; i < ql_exporter_count() && strcmp(ql_exporter_at(a->exp.format)->name, "gptq"); i++)
        ql_tui_feed(a, "t");
    assert_string_equal(ql_exporter_at(a->exp.format)->name, "gptq");
    assert_true(screen_has(a, 100, 30, "target    gptq"));
    char dir[400], keys[600];
    snprintf(dir, sizeof dir, "%s/export-gptq", g_tmp);
    snprintf(keys, sizeof keys, "p<c-u>%s<enter>e<wait>", dir);
    ql_tui_feed(a, keys);
    assert_int_equal(a->exp.n_log, 1);
    assert_null(strstr(a->exp.log[0], "nothing written"));
    char cfg[500], *txt;
    size_t len;
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    assert_int_equal(ql_read_file(cfg, &txt, &len), QL_OK);
    assert_non_null(strstr(txt, "\"quant_method\": \"gptq\""));
    free(txt);
    /* back round to GGUF: the path gets its extension again */
    for (int i = 0; i < ql_exporter_count() && a->exp.format != 0; i++) ql_tui_feed(a, "t");
    assert_int_equal(a->exp.format, 0);
    size_t l = strlen(a->exp.path);
    assert_true(l > 5 && !strcmp(a->exp.path + l - 5, ".gguf"));
    ql_tui_app_free(a);
}

static void test_synth_screens(void **state) {
    (void)state;
    ql_tui_app *a = synth_app();
    /* the help overlay lists every documented binding */
    ql_tui_feed(a, "3?");
    assert_true(a->help);
    char *t = render(a, 200, 160);
    for (int i = 0; i < ql_tui_binding_count(); i++) {
        unsigned scr;
        const char *key, *help;
        if (!ql_tui_binding_doc(i, &scr, &key, &help)) continue;
        if (!strstr(t, help)) printf("help lacks: %s %s\n", key, help);
        assert_non_null(strstr(t, help));
    }
    free(t);
    ql_tui_feed(a, "<esc>");
    assert_false(a->help);
    /* every screen at 80x24 and 200x50, and a too-small terminal */
    for (int s = 0; s < QL_SCR_COUNT; s++) {
        char k[2] = {(char)('1' + s), 0};
        ql_tui_feed(a, k);
        ql_tui_wait(a);
        assert_int_equal(a->screen, s);
        assert_true(screen_has(a, 80, 24, ql_tui_screen_name((ql_tui_screen)s)));
        char *big = render(a, 200, 50);
        free(big);
        assert_true(screen_has(a, 30, 10, "too small"));
    }
    /* the Model screen sorts and filters */
    ql_tui_feed(a, "1/ffn<enter>");
    int lines[256];
    assert_int_equal(ql_tui_model_lines(a, lines, 256), 2 * 4); /* gate, up, down, norm per layer */
    ql_tui_feed(a, "ss");
    assert_int_equal(a->m_sort, 2);
    assert_true(a->model->gguf->tensors[lines[0]].nbytes >= a->model->gguf->tensors[lines[1]].nbytes ||
                ql_tui_model_lines(a, lines, 256) == 8);
    /* the Catalogue computes the effect of the item under the cursor on a real tensor */
    ql_tui_feed(a, "7<home>");
    ql_tui_wait(a);
    assert_true(a->cat.has_effect);
    assert_true(a->cat.rel_rmse == 0); /* f32 */
    int q8 = -1;
    for (int i = 0; i < ql_format_count(); i++)
        if (!strcmp(ql_format_at(i)->name, "q8_0")) q8 = i;
    for (int i = 0; i < q8; i++) ql_tui_feed(a, "<down>");
    ql_tui_wait(a);
    assert_true(a->cat.rel_rmse > 0 && a->cat.rel_rmse < 0.02);
    assert_true(screen_has(a, 80, 24, "rel. RMSE"));
    /* a method without statistics says what it needs */
    ql_tui_feed(a, "<end>");
    ql_tui_wait(a);
    assert_true(screen_has(a, 100, 30, "needs"));
    /* a click on the tab bar switches screens */
    ql_tui_handle(a, QL_KEY_CLICK + (0 << 10 | (ql_tui_tab_x(QL_SCR_AUTO) + 2)));
    assert_int_equal(a->screen, QL_SCR_AUTO);
    ql_tui_feed(a, "7");
    ql_tui_wait(a);
    /* unknown keys say so */
    ql_tui_feed(a, "1#");
    assert_non_null(strstr(a->msg, "does nothing"));
    /* q while a job runs asks first; the second q cancels and quits */
    ql_tui_feed(a, "3");
    assert_true(ql_tui_start_measure(a));
    unsigned r = ql_tui_handle(a, 'q');
    if (a->job) {
        assert_false(r & QL_R_QUIT);
        assert_true(a->quit_armed);
        r = ql_tui_handle(a, 'q');
    }
    assert_true(r & QL_R_QUIT);
    assert_null(a->job);
    ql_tui_app_free(a);
}

/* ---------------------------------------------------------------- the issue's session on stories260K */

static void test_stories_session(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt")) {
        skip();
        return;
    }
    double t0 = ql_time_s();
    ql_tui_config cfg = {.model = model, .text = text, .calib = text, .n_threads = 2};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    /* statistics over 8 samples of 128 tokens */
    ql_tui_feed(a, "2<down><down><enter>8<enter><down><enter>128<enter>r<wait>");
    assert_non_null(a->calib.set);
    assert_non_null(a->calib.stats);
    assert_int_equal(a->calib.set->n_samples, 8);
    assert_true(screen_has(a, 80, 24, "Statistics: 21 linear inputs"));
    /* sensitivity: per-tensor KLD of every candidate */
    ql_tui_feed(a, "3x<wait>");
    assert_non_null(a->sense);
    assert_true(a->sense->additive_kld);
    assert_true(screen_has(a, 80, 24, "cells: KLD"));
    /* auto-assign to 4.0 bits per weight and accept */
    ql_tui_feed(a, "4<down><enter>4<enter>s<wait>a");
    assert_true(a->autos.has_solution);
    ql_tui_totals t = ql_tui_plan_totals(a);
    printf("auto: %.4f bpw, predicted KLD %.4f\n", t.bpw, t.pred_kld);
    assert_true(fabs(t.bpw - 4.0) < 0.05);
    assert_true(isfinite(t.pred_kld) && t.pred_kld > 0);
    /* change one layer by hand: raise blk.2 */
    const ql_format *before[64];
    for (int i = 0; i < a->plan.n_rows; i++) before[i] = ql_tui_row_format(&a->plan.rows[i]);
    ql_tui_feed(a, "<down>3"); /* off the target row, where digits type a target */
    plan_goto(a, -1 - 3);
    ql_tui_feed(a, "]");
    int changed = 0;
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        const ql_format *f = ql_tui_row_format(r);
        if (r->layer != 2) assert_ptr_equal(f, before[i]);
        else if (f != before[i]) {
            changed++;
            assert_true(ql_format_tensor_bytes(f, r->ne0, r->ne1) > ql_format_tensor_bytes(before[i], r->ne0, r->ne1));
        }
    }
    assert_true(changed > 0);
    assert_int_equal(a->plan.edits, 1);
    t = ql_tui_plan_totals(a);
    assert_true(t.bpw > 4.0);
    /* preview on 4 chunks of 128: PPL, KLD, top-1; then instantly again from the cache */
    ql_tui_feed(a, "5c128<enter>n4<enter><enter><wait>");
    assert_int_equal(a->preview.n_hist, 1);
    const ql_tui_hist *h = &a->preview.hist[0];
    printf("preview: PPL %.6f +/- %.4f, KLD %.5f, top-1 %.4f (base %.4f)\n", h->r.ppl, h->r.ppl_stderr, h->r.kld_mean,
           h->r.top1_agreement, a->preview.base.ppl);
    assert_true(h->r.has_kld && h->r.kld_mean > 0 && h->r.top1_agreement > 0.3 && h->r.top1_agreement <= 1);
    assert_true(h->r.ppl > a->preview.base.ppl * 0.9);
    char ppl[32];
    snprintf(ppl, sizeof ppl, "PPL %.4f", h->r.ppl);
    assert_true(screen_has(a, 80, 24, ppl));
    ql_tui_feed(a, "<enter>");
    assert_null(a->job);
    assert_int_equal(a->preview.n_hist, 1);
    assert_non_null(strstr(a->msg, "cached"));
    /* export */
    char out[600], keys[700];
    snprintf(out, sizeof out, "%s/session.gguf", g_tmp);
    snprintf(keys, sizeof keys, "6p%s<enter>e<wait>", out);
    ql_tui_feed(a, keys);
    assert_int_equal(a->exp.n_log, 1);
    assert_null(strstr(a->exp.log[0], "nothing written"));
    /* the exported file, measured the way `qlab ppl` does, gives the Preview's perplexity */
    ql_model *m;
    assert_int_equal(ql_model_load(out, &m), QL_OK);
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *r = &a->plan.rows[i];
        const char *name = a->model->gguf->tensors[r->tensor].name;
        int64_t gi = ql_gguf_find_tensor(m->gguf, name);
        assert_true(gi >= 0);
        assert_int_equal(m->gguf->tensors[gi].type, ql_tui_row_format(r)->type);
    }
    char *txt;
    size_t len;
    int32_t *ids;
    int64_t n;
    assert_int_equal(ql_read_file(text, &txt, &len), QL_OK);
    assert_int_equal(ql_tokenize(m->tok, txt, len, true, &ids, &n), QL_OK);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 2, &inf), QL_OK);
    ql_ppl_opts po = {.n_ctx = 128, .n_chunks = 4, .n_threads = 2};
    ql_ppl_result pr;
    assert_int_equal(ql_perplexity(inf, ids, n, &po, NULL, &pr), QL_OK);
    printf("exported file: PPL %.6f (preview %.6f)\n", pr.ppl, h->r.ppl);
    assert_true(fabs(pr.ppl - h->r.ppl) <= 1e-9 * pr.ppl);
    ql_infer_free(inf);
    free(ids);
    free(txt);
    ql_model_free(m);
    ql_tui_app_free(a);
    printf("session: %.1fs\n", ql_time_s() - t0);
}

/* ---------------------------------------------------------------- training from the Preview screen */

/* Ticks until cond holds (the way the terminal loop does), at most 120 s. */
#define TICK_UNTIL(a, cond)                                                                                \
    do {                                                                                                   \
        const double t_end_ = ql_time_s() + 120;                                                           \
        while (!(cond) && ql_time_s() < t_end_) {                                                          \
            ql_tui_tick(a);                                                                                \
            usleep(20000);                                                                                 \
        }                                                                                                  \
        assert_true(cond);                                                                                 \
    } while (0)

/* Issue 15: Q on the Preview screen trains the current plan (here QAT of q4_0 everywhere on stories260K, on the
 * text after the scored chunks); the curve grows while it runs; Esc stops it with the best held-out weights; the
 * trained plan's evaluation lands in the history beside the untrained one. */
static void test_qat_from_preview(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt")) {
        skip();
        return;
    }
    ql_tui_config cfg = {.model = model, .text = text, .n_threads = 1};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    ql_tui_feed(a, "3T<c-u>q4_0<enter>5c64<enter>n2<enter>");
    ql_tui_feed(a, "Q"); /* refused before the plan was evaluated: nothing to compare with */
    assert_true(a->prompt.active);
    ql_tui_feed(a, "<enter>");
    assert_null(a->job);
    assert_non_null(strstr(a->msg, "evaluate the plan first"));
    ql_tui_feed(a, "<enter><wait>");
    assert_int_equal(a->preview.n_hist, 1);
    ql_tui_feed(a, "Q<c-u>30 1e-3 sideways<enter>"); /* a mode the form does not know */
    assert_null(a->job);
    assert_non_null(strstr(a->msg, "sideways"));
    ql_tui_feed(a, "Q<c-u>400 2e-4 qat<enter>");
    assert_non_null(a->job);
    /* the curve: points arrive while the job runs, and the screen draws them */
    TICK_UNTIL(a, a->qat.n >= 3);
    const int n1 = a->qat.n;
    assert_true(screen_has(a, 80, 24, "Training  QAT"));
    assert_true(screen_has(a, 80, 24, "● held-out KLD"));
    char *scr = render(a, 80, 24);
    assert_non_null(strstr(scr, "·")); /* loss points on the plot */
    if (getenv("QL_TUI_SHOW")) printf("%s", scr);
    free(scr);
    TICK_UNTIL(a, a->qat.n > n1 + 2 && isfinite(a->qat.best_kld));
    printf("curve: %d points, then %d; best held-out KLD %.5f at step %d\n", n1, a->qat.n, a->qat.best_kld,
           a->qat.best_step);
    /* stop: training ends, the best weights are evaluated into the history */
    ql_tui_feed(a, "<esc>");
    ql_tui_feed(a, "<wait>");
    assert_null(a->job);
    assert_int_equal(a->preview.n_hist, 2);
    const ql_tui_hist *ptq = &a->preview.hist[0], *qat = &a->preview.hist[1];
    printf("history: %s KLD %.5f | %s KLD %.5f (%s)\n", ptq->label, ptq->r.kld_mean, qat->label, qat->r.kld_mean, a->msg);
    assert_non_null(strstr(qat->label, "+qat"));
    assert_non_null(strstr(qat->label, "stopped"));
    assert_true(qat->r.has_kld && qat->r.kld_mean > 0);
    assert_int_equal(qat->r.chunks, ptq->r.chunks);
    assert_true(qat->bpw == ptq->bpw);
    assert_true(a->qat.n < 400 && a->qat.step[a->qat.n - 1] < 400);
    assert_true(a->qat.best_kld <= a->qat.kld_start);
    assert_true(screen_has(a, 80, 24, "+qat"));
    ql_tui_app_free(a);
}

/* ---------------------------------------------------------------- auto plans without calibration */

/* KLD of the current plan on the Preview screen's text, ctx and chunks (cached runs included). */
static double preview_kld(ql_tui_app *a) {
    ql_tui_feed(a, "5<enter><wait>");
    assert_true(a->preview.last >= 0);
    const ql_tui_hist *h = &a->preview.hist[a->preview.last];
    assert_true(h->r.has_kld);
    return h->r.kld_mean;
}

/* Issue 9: with no calibration set the Auto screen solved on weight error and, on stories260K at 4.50 bpw,
 * gave KLD 0.204 where int4_g32 everywhere (4.64 bpw) gave 0.115. An automatic plan must never lose to the
 * best one-format plan of equal or lower size: measured here, on the evaluation text, at 4.50 bpw and at the
 * size of each one-format plan between 4.5 and 10 bpw. */
static void test_auto_without_calibration(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt")) {
        skip();
        return;
    }
    if (getenv("QL_QUICK") && !strcmp(getenv("QL_QUICK"), "1")) {
        printf("SKIP: a KLD measurement of every cell and %d previews (QL_QUICK=1)\n", 2 * QL_TUI_MAX_CAND);
        skip();
        return;
    }
    ql_tui_config cfg = {.model = model, .text = text, .n_threads = 2};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    ql_tui_feed(a, "5c128<enter>n8<enter>"); /* the evaluation: 8 chunks of 128 tokens */
    assert_null(a->calib.set);
    ql_tui_feed(a, "3x<wait>");
    assert_non_null(a->qsense);
    printf("measured at the %s level without a calibration set (%s)\n", ql_sense_level_name(a->qsense->level),
           a->qsense->calib);
    assert_int_equal(a->qsense->level, QL_SENSE_KLD);
    /* every candidate alone, as one format everywhere (`qlab quant --type F`) */
    int n_cand = a->plan.n_cand;
    const ql_format *cands[QL_TUI_MAX_CAND];
    double ubpw[QL_TUI_MAX_CAND], ukld[QL_TUI_MAX_CAND];
    for (int k = 0; k < n_cand; k++) {
        cands[k] = a->plan.cand[k];
        char keys[128];
        snprintf(keys, sizeof keys, "3T<c-u>%s<enter>", cands[k]->name);
        ql_tui_feed(a, keys);
        ubpw[k] = ql_tui_plan_totals(a).bpw;
        ukld[k] = preview_kld(a);
        printf("  uniform %-10s %.3f bpw  KLD %.5f\n", cands[k]->name, ubpw[k], ukld[k]);
    }
    double targets[1 + QL_TUI_MAX_CAND];
    int n_t = 0;
    targets[n_t++] = 4.50;
    for (int k = 0; k < n_cand; k++)
        if (ubpw[k] > 4.5 && ubpw[k] < 10) targets[n_t++] = ubpw[k] + 0.0005; /* that plan fits the target */
    for (int i = 0; i < n_t; i++) {
        char keys[128];
        snprintf(keys, sizeof keys, "4<up><up><up><up><down><enter><c-u>%.4f<enter>s<wait>a", targets[i]);
        ql_tui_feed(a, keys);
        assert_true(a->autos.has_solution);
        const double bpw = ql_tui_plan_totals(a).bpw, kld = preview_kld(a);
        double best = INFINITY;
        const char *best_name = "none";
        for (int k = 0; k < n_cand; k++)
            if (ubpw[k] <= targets[i] + 1e-9 && ukld[k] < best) best = ukld[k], best_name = cands[k]->name;
        printf("auto at %.3f bpw: %.3f bpw, KLD %.5f; best one-format plan at or below: %s %.5f (target %.4f; %s)\n",
               targets[i], bpw, kld, best_name, best, a->autos.target_bpw, a->msg);
        assert_true(bpw <= targets[i] + 0.001);
        assert_true(kld <= best);
    }
    ql_tui_app_free(a);
}

/* ---------------------------------------------------------------- golden screens */

/* A golden screen freezes layout and words, not what the registry or the arithmetic says today: every
 * registered format name becomes "F", every figure (a digit run, with its '.'/',' groups) "#", and the
 * histogram / sparkline glyphs "~", runs of spaces one space; a clip rectangle (the Plan screen's candidate grid, whose columns are
 * chosen from the registry) is blanked before the text is taken. So adding a format, or a change of a
 * codec's rounding, leaves these files alone; the figures themselves are asserted by the tests that
 * compute them. */
static char *mask_screen(const char *t) {
    size_t n = strlen(t);
    char *out = malloc(4 * n + 1), *o = out;
    static const char *const glyphs[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█", "▔", "▀"};
    for (size_t i = 0; i < n;) {
        const char c = t[i];
        bool word_start = (i == 0 || !(isalnum((unsigned char)t[i - 1]) || t[i - 1] == '_'));
        if (word_start && (isalnum((unsigned char)c) || c == '_')) {
            size_t j = i;
            while (j < n && (isalnum((unsigned char)t[j]) || t[j] == '_')) j++;
            char word[64];
            if (j - i < sizeof word) {
                memcpy(word, t + i, j - i);
                word[j - i] = 0;
                if (ql_format_by_name(word)) {
                    *o++ = 'F';
                    i = j;
                    continue;
                }
            }
        }
        if (isdigit((unsigned char)c)) {
            while (i < n && (isdigit((unsigned char)t[i]) ||
                             ((t[i] == '.' || t[i] == ',') && i + 1 < n && isdigit((unsigned char)t[i + 1]))))
                i++;
            *o++ = '#';
            continue;
        }
        bool glyph = false;
        for (size_t g = 0; g < sizeof glyphs / sizeof *glyphs && !glyph; g++) {
            size_t gl = strlen(glyphs[g]);
            if (!strncmp(t + i, glyphs[g], gl)) {
                *o++ = '~';
                i += gl;
                glyph = true;
            }
        }
        if (glyph) continue;
        /* a run of spaces is one: column padding depends on the widths of the names and figures masked */
        if (c == ' ' && o > out && o[-1] == ' ') {
            i++;
            continue;
        }
        *o++ = t[i++];
    }
    *o = 0;
    return out;
}

/* clip: {x0, y0, x1, y1} cells blanked (inclusive), or NULL */
static void golden(ql_tui_app *a, const char *name, const int *clip) {
    char path[256];
    snprintf(path, sizeof path, "tests/data/tui/%s.txt", name);
    ql_canvas c;
    ql_canvas_init(&c, 80, 24);
    ql_tui_render(a, &c);
    if (clip) ql_canvas_fill(&c, clip[0], clip[1], clip[2] - clip[0] + 1, clip[3] - clip[1] + 1, ' ', QL_ST_NORMAL);
    char *raw = ql_canvas_text(&c);
    ql_canvas_deinit(&c);
    char *t = mask_screen(raw);
    free(raw);
    if (getenv("QL_UPDATE_GOLDEN")) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(t, f);
        fclose(f);
        printf("wrote %s\n", path);
    }
    char *want;
    size_t len;
    if (ql_read_file(path, &want, &len)) {
        printf("%s missing: run with QL_UPDATE_GOLDEN=1 to create it\n", path);
        free(t);
        fail();
    }
    if (strcmp(t, want)) printf("--- %s differs; got:\n%s--- want:\n%s", path, t, want);
    assert_string_equal(t, want);
    free(want);
    free(t);
}

/* The mask itself: figures and format names go, words and layout stay. */
static void test_golden_mask(void **state) {
    (void)state;
    char *m = mask_screen(" q4_0  4.5000 bits/weight · blk.12.attn_q 1,024 x64 ▁▂█ Q8_0: iq4_xs2   -0.098\n");
    assert_string_equal(m, " F # bits/weight · blk.#.attn_q # x# ~~~ F: iq#_xs# -#\n");
    free(m);
}

static void test_golden_screens(void **state) {
    (void)state;
    char model[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) {
        skip();
        return;
    }
    ql_tui_config cfg = {.model = model, .text = "/nonexistent-text", .n_threads = 2};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    ql_tui_feed(a, "<esc>"); /* the welcome message names the path, which depends on QL_SHARED */
    golden(a, "model_80x24", NULL);
    ql_tui_feed(a, "3P<enter><down><down><down><down>");
    /* the candidate columns are chosen from the registry: only the tensor / format / bits columns are kept */
    const int grid[4] = {33, 2, 79, 20};
    golden(a, "plan_q4km_80x24", grid);
    /* the assignment is drawn in its own style (so 256 colours and monochrome both show it) */
    ql_canvas c;
    ql_canvas_init(&c, 80, 24);
    ql_tui_render(a, &c);
    int assigned = 0;
    for (int i = 0; i < c.w * c.h; i++) assigned += c.cells[i].st == QL_ST_ASSIGNED;
    assert_true(assigned > 10);
    ql_canvas_deinit(&c);
    ql_tui_feed(a, "?");
    golden(a, "help_plan_80x24", NULL);
    ql_tui_feed(a, "<esc>7");
    int q4 = 0;
    for (int i = 0; i < ql_format_count(); i++)
        if (!strcmp(ql_format_at(i)->name, "q4_0")) q4 = i;
    for (int i = 0; i < q4; i++) ql_tui_feed(a, "<down>");
    ql_tui_wait(a);
    ql_tui_feed(a, "<esc>");
    golden(a, "catalogue_q4_0_80x24", NULL);
    ql_tui_app_free(a);
}

/* ---------------------------------------------------------------- issue 10: what a new user hit */

/* Lines of the 80x24 screen that run into the right edge with a letter or digit on both of its last two
 * columns: a word cut in half (boxes, bars and ellipses end lines legitimately). Prints each one. */
static int cut_words(ql_tui_app *a, const char *where) {
    char *t = render(a, 80, 24);
    int bad = 0;
    for (char *line = t, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t l = strlen(line);
        bool boxed = l > 3 && !strcmp(line + l - 3, "│");
        if (!boxed && ql_utf8_width(line) < 80) continue;
        if (boxed) l -= 3; /* text running into a box's right border */
        unsigned char x = (unsigned char)line[l - 1], y = l > 1 ? (unsigned char)line[l - 2] : ' ';
        if (x < 128 && y < 128 && isalnum(x) && isalnum(y)) {
            printf("%s: cut: '%s'\n", where, line);
            bad++;
        }
    }
    free(t);
    return bad;
}

/* Every screen, the help window and the preset prompt at 80x24: no word cut at the edge. */
static int cut_words_everywhere(ql_tui_app *a) {
    int bad = 0, screen = a->screen;
    const char *keys[] = {"1", "2", "3", "4", "5", "6", "7"};
    for (int i = 0; i < 7; i++) {
        a->screen = (ql_tui_screen)i;
        bad += cut_words(a, keys[i]);
        a->help = true;
        for (int s = 0; s < 120; s += 15) {
            a->help_scroll = s;
            bad += cut_words(a, "help");
        }
        a->help = false;
    }
    a->screen = (ql_tui_screen)screen;
    return bad;
}

static void test_new_user_session(void **state) {
    (void)state;
    char model[512], text[512], wiki[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt") ||
        !shared_path(wiki, sizeof wiki, "data/wikitext-2-valid.raw")) {
        skip();
        return;
    }
    ql_tui_config cfg = {.model = model, .text = text, .calib = text, .n_threads = 2};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    /* item 10: every screen fits 80x24 without cutting a word, here and after each step below */
    int cut = cut_words_everywhere(a);
    /* item 11: the overlap figure follows the evaluation text when the set is built again */
    ql_tui_feed(a, "2<down><down><enter>8<enter><down><enter>64<enter>b<wait>");
    assert_non_null(a->calib.set);
    double same_text = a->calib.overlap;
    assert_true(same_text > 0.5); /* the set is drawn from the evaluation text itself */
    char keys[700];
    snprintf(keys, sizeof keys, "5T<c-u>%s<enter>2b<wait>", wiki);
    ql_tui_feed(a, keys);
    char *txt;
    size_t len;
    int32_t *ids;
    int64_t n, grams;
    assert_int_equal(ql_read_file(wiki, &txt, &len), QL_OK);
    assert_int_equal(ql_tokenize(a->model->tok, txt, len, false, &ids, &n), QL_OK);
    double want = ql_calib_ngram_overlap(a->calib.set, ids, n, 8, &grams);
    free(ids);
    free(txt);
    printf("overlap: %.4f with its own text, %.4f with wikitext (want %.4f)\n", same_text, a->calib.overlap, want);
    assert_true(a->calib.overlap == want && want < same_text);
    cut += cut_words_everywhere(a);
    /* item 12: on the Auto screen's target row, typing a number edits the target */
    ql_tui_feed(a, "3lx<wait>4");
    assert_non_null(a->sense);
    while (a->autos.field != 1) ql_tui_feed(a, a->autos.field < 1 ? "<down>" : "<up>");
    ql_tui_feed(a, "0.5<enter>");
    assert_int_equal(a->screen, QL_SCR_AUTO);
    assert_true(fabs(a->autos.target_bpw - 0.5) < 1e-9);
    ql_tui_feed(a, "8<enter>s<wait>");
    assert_true(a->autos.has_solution);
    /* a target past the candidates' reach fails as qlab plan does, and the old solution goes */
    ql_tui_feed(a, "40<enter>s<wait>");
    assert_false(a->autos.has_solution);
    assert_non_null(strstr(a->msg, "reach"));
    char *scr = render(a, 80, 24);
    if (strstr(scr, "a accepts it")) printf("the stale solution is still shown:\n%s", scr);
    assert_null(strstr(scr, "a accepts it"));
    free(scr);
    cut += cut_words_everywhere(a);
    /* item 16: C keeps the measurements of candidates that stay; a method column keeps its format's digits */
    char spec0[96];
    ql_tui_cand_spec(a, 0, spec0, sizeof spec0);
    snprintf(keys, sizeof keys, "<down>3C<c-u>%s,int4_g32+gptq<enter>", spec0);
    ql_tui_feed(a, keys);
    assert_int_equal(a->plan.n_cand, 2);
    assert_non_null(a->sense);
    int measured = 0;
    for (int i = 0; i < a->sense->n_rows; i++) measured += isfinite(a->sense->err[(size_t)i * a->sense->n_cand]);
    printf("after C: %d of %d rows keep their measurement (%s)\n", measured, a->sense->n_rows, a->msg);
    assert_true(measured > 0);
    assert_true(screen_has(a, 80, 24, "4g32G"));
    snprintf(keys, sizeof keys, "C<c-u>%s,q8_0<enter>", spec0); /* no data-aware column for the previews below */
    ql_tui_feed(a, keys);
    /* item 13: the Export note names every extension format the file holds */
    ql_tui_feed(a, "T<c-u>int4_g32<enter>");
    a->plan.rows[0].fmt = ql_format_by_name("int5_g32");
    ql_tui_feed(a, "6");
    assert_true(screen_has(a, 80, 24, "int4_g32, int5_g32") || screen_has(a, 80, 24, "int5_g32, int4_g32"));
    assert_true(screen_has(a, 80, 24, "cannot load the file"));
    /* item 14: the size the footer, Preview and Export show is the exported file's, to the byte */
    char out[600];
    snprintf(out, sizeof out, "%s/new-user.gguf", g_tmp);
    snprintf(keys, sizeof keys, "p<c-u>%s<enter>e<wait>", out);
    ql_tui_feed(a, keys);
    struct stat sb;
    assert_int_equal(stat(out, &sb), 0);
    printf("exported %lld bytes, predicted %lld\n", (long long)sb.st_size, (long long)ql_tui_plan_totals(a).file_bytes);
    assert_int_equal((int64_t)sb.st_size, ql_tui_plan_totals(a).file_bytes);
    /* item 17: history rows say what differs (here: a hand edit), in full at 80x24 */
    ql_tui_feed(a, "5c64<enter>n2<enter><enter><wait>3]5<enter><wait>");
    assert_int_equal(a->preview.n_hist, 2);
    printf("history: '%s' / '%s'\n", a->preview.hist[0].label, a->preview.hist[1].label);
    assert_string_not_equal(a->preview.hist[0].label, a->preview.hist[1].label);
    assert_true(screen_has(a, 80, 24, a->preview.hist[0].label));
    assert_true(screen_has(a, 80, 24, a->preview.hist[1].label));
    assert_true(screen_has(a, 80, 24, "ctx 64 x 2 chunks"));
    cut += cut_words_everywhere(a);
    ql_tui_feed(a, "3P");
    cut += cut_words(a, "P prompt");
    ql_tui_feed(a, "<esc>");
    assert_int_equal(cut, 0);
    assert_int_equal(ql_tui_plan_totals(a).file_bytes, a->preview.hist[1].bytes);
    /* item 15: one minimum size, the one the message names */
    assert_true(screen_has(a, 79, 24, "needs 80x24"));
    assert_true(screen_has(a, 80, 23, "needs 80x24"));
    scr = render(a, 80, 24);
    assert_null(strstr(scr, "too small"));
    free(scr);
    ql_tui_app_free(a);
}

static int setup(void **state) {
    (void)state;
    const char *td = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/qlab-test-tui.XXXXXX", td && *td ? td : "/tmp");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    const char *files[] = {"synth.gguf", "plan.ini", "session.gguf", "new-user.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", g_tmp, files[i]);
        unlink(p);
    }
    rmdir(g_tmp);
    return 0;
}

/* Issue 13: the Catalogue shows what the codes see. A rotated format (e8p): weight histograms before and
 * after the rotation, each over every weight of the tensor; an additive codebook (aqlm_1x8): codeword
 * usage summing to one use per group of 8; a plain format shows neither. */
static int goto_format(ql_tui_app *a, const char *name) {
    int idx = -1;
    for (int i = 0; i < ql_format_count(); i++)
        if (!strcmp(ql_format_at(i)->name, name)) idx = i;
    assert_true(idx >= 0);
    ql_tui_feed(a, "7<home>");
    for (int i = 0; i < idx; i++) ql_tui_feed(a, "<down>");
    ql_tui_wait(a);
    ql_tui_feed(a, "<enter>");
    ql_tui_wait(a);
    return idx;
}

static void test_catalogue_codes(void **state) {
    (void)state;
    ql_tui_app *a = synth_app();
    goto_format(a, "e8p");
    assert_true(a->cat.has_effect);
    assert_string_equal(a->cat.effect_err, "");
    assert_true(a->cat.has_rot && !a->cat.has_usage);
    const ql_tui_row *rw = &a->plan.rows[a->cat.used_row];
    const int64_t n = rw->ne0 * rw->ne1;
    int64_t sb = 0, sa = 0;
    for (int i = 0; i < 33; i++) sb += a->cat.rot_before[i], sa += a->cat.rot_after[i];
    assert_int_equal(sb, n);
    assert_int_equal(sa, n);
    assert_true(isfinite(a->cat.kurt_before) && isfinite(a->cat.kurt_after) && a->cat.kurt_after > 1);
    printf("  e8p on %lldx%lld: kurtosis %.2f before, %.2f after the rotation\n", (long long)rw->ne1,
           (long long)rw->ne0, a->cat.kurt_before, a->cat.kurt_after);
    assert_true(screen_has(a, 120, 40, "before rotation"));
    goto_format(a, "aqlm_1x8");
    assert_true(a->cat.has_effect);
    assert_string_equal(a->cat.effect_err, "");
    assert_true(a->cat.has_usage && !a->cat.has_rot);
    rw = &a->plan.rows[a->cat.used_row];
    int64_t su = 0;
    for (int i = 0; i < 33; i++) su += a->cat.usage[i];
    assert_int_equal(su, rw->ne1 * ((rw->ne0 + 7) / 8));
    assert_int_equal(a->cat.usage_total, 256);
    assert_true(a->cat.usage_used >= 1 && a->cat.usage_used <= 256);
    assert_true(a->cat.usage[0] >= a->cat.usage[32]); /* most used first */
    assert_true(screen_has(a, 120, 40, "codebook usage"));
    goto_format(a, "q4_0");
    assert_true(a->cat.has_effect && !a->cat.has_rot && !a->cat.has_usage);
    ql_tui_app_free(a);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canvas),
        cmocka_unit_test(test_synth_plan_edits),
        cmocka_unit_test(test_synth_screens),
        cmocka_unit_test(test_export_target),
        cmocka_unit_test(test_catalogue_codes),
        cmocka_unit_test(test_stories_session),
        cmocka_unit_test(test_qat_from_preview),
        cmocka_unit_test(test_auto_without_calibration),
        cmocka_unit_test(test_golden_mask),
        cmocka_unit_test(test_golden_screens),
        cmocka_unit_test(test_new_user_session),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof *tests);
    return cmocka_run_group_tests(tests, setup, teardown);
}
