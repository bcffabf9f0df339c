/* test_tui_runtime.c — a plan with activation and KV settings round-trips through the workbench, `qlab quant
 * --plan` and `qlab ppl` with identical figures (issue 12), on tinystories-d256 (its head dimension of 32 holds
 * llama.cpp's block types):
 *   - loading the INI in the Plan screen keeps its [activations] and [kv] (the KV figure's context becomes the
 *     plan's); the Runtime view (R) shows each linear's input scheme, each layer's cache and the exact memory
 *     (file + cache, the figure qlab info prints) and llama.cpp's flags;
 *   - K sets a layer's own scheme (refused with a message when the heads cannot hold it or the text is not a
 *     scheme); S saves an INI that loads back with the same settings;
 *   - the Preview's perplexity of the plan equals, to 1e-9, the perplexity of the file `ql_quantize_model`
 *     writes from the saved INI with the file's settings applied as `qlab ppl` applies them, which differs from
 *     the same file measured with the float cache; with $QLAB set the CLI itself (quant --plan, ppl --json)
 *     gives the same figure to the printed digits. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/kv_settings.h"
#include "core/ppl.h"
#include "methods/act_recipe.h"
#include "pipeline/plan.h"
#include "pipeline/quantize.h"
#include "tui/app.h"
#include "tests/test_util.h"

static char *render(ql_tui_app *a) {
    ql_canvas c;
    ql_canvas_init(&c, 80, 24);
    ql_tui_render(a, &c);
    char *t = ql_canvas_text(&c);
    ql_canvas_deinit(&c);
    return t;
}

static void assert_screen_has(ql_tui_app *a, const char *needle) {
    char *t = render(a);
    if (!strstr(t, needle)) {
        printf("--- screen without '%s':\n%s", needle, t);
        free(t);
        fail();
    }
    free(t);
}

/* PPL of `path` on `text` (ctx 128, 2 chunks) with the settings the file carries applied or not. */
static double file_ppl(const char *path, const char *text, bool settings) {
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    char *txt;
    size_t len;
    int32_t *ids;
    int64_t n;
    assert_int_equal(ql_read_file(text, &txt, &len), QL_OK);
    assert_int_equal(ql_tokenize(m->tok, txt, len, true, &ids, &n), QL_OK);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 2, &inf), QL_OK);
    if (settings) {
        int n_act;
        assert_int_equal(ql_infer_set_act_quant_from_file(inf, &n_act, NULL), QL_OK);
        assert_true(n_act > 0);
        ql_kv_settings kv;
        assert_int_equal(ql_kv_settings_from_gguf(m->gguf, path, m->cfg.n_layer, &kv), QL_OK);
        assert_true(kv.set);
        assert_int_equal(ql_infer_set_kv_settings(inf, &kv), QL_OK);
        ql_kv_settings_free(&kv);
    }
    ql_ppl_opts po = {.n_ctx = 128, .n_chunks = 2, .n_threads = 2};
    ql_ppl_result pr;
    assert_int_equal(ql_perplexity(inf, ids, n, &po, NULL, &pr), QL_OK);
    ql_infer_free(inf);
    free(ids);
    free(txt);
    ql_model_free(m);
    return pr.ppl;
}

static void test_runtime_round_trip(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/tinystories-d256.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt")) {
        skip();
        return;
    }
    char dir[] = "/tmp/qlab-test-tuirt-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char in_ini[600], out_ini[600], out_gguf[600], keys[1400];
    snprintf(in_ini, sizeof in_ini, "%s/in.ini", dir);
    snprintf(out_ini, sizeof out_ini, "%s/out.ini", dir);
    snprintf(out_gguf, sizeof out_gguf, "%s/out.gguf", dir);
    FILE *f = fopen(in_ini, "w");
    assert_non_null(f);
    fputs("[tensors]\nblk.0.attn_q.weight = q8_0\nblk.1.ffn_down.weight = q4_0\n"
          "[activations]\ndefault = int8_token\nblk.2.ffn_down.weight = llm_int8\n"
          "[kv]\nscheme = q8_0:q4_0\nctx = 2048\n",
          f);
    fclose(f);
    ql_tui_config cfg = {.model = model, .text = text, .n_threads = 2};
    ql_tui_app *a;
    assert_int_equal(ql_tui_app_new(&cfg, &a), QL_OK);
    snprintf(keys, sizeof keys, "3L%s<enter>R", in_ini);
    ql_tui_feed(a, keys);
    const ql_kv_settings *kv = ql_tui_runtime_kv(a);
    assert_non_null(kv);
    assert_int_equal(a->plan.kv_ctx, 2048);
    assert_true(a->plan.show_runtime);
    /* the Runtime view: input schemes, the cache per layer, exact memory, llama.cpp's flags */
    assert_screen_has(a, "blk.2   i8t  i8t  i8t  i8t  i8t  i8t   l8  q8_0:q4_0");
    const int64_t kv_bytes = ql_kv_settings_bytes(kv, &a->model->cfg, 2048, 1);
    assert_int_equal(kv_bytes, 4 * 2048 * 128 / 32 * (34 + 18)); /* 4 layers, kv_dim 128, q8_0 K + q4_0 V */
    ql_tui_totals t = ql_tui_plan_totals(a);
    assert_int_equal(t.kv_bytes, kv_bytes);
    char line[160];
    snprintf(line, sizeof line, "KV %d,%03d,%03d = ", (int)(kv_bytes / 1000000), (int)(kv_bytes / 1000 % 1000),
             (int)(kv_bytes % 1000));
    assert_screen_has(a, line);
    assert_screen_has(a, "llama.cpp: -ctk q8_0 -ctv q4_0 -fa on");
    /* K: a layer's own scheme; refusals leave the settings alone */
    ql_tui_feed(a, "Kblk.3=f16<enter>");
    ql_kv_scheme l3 = ql_kv_settings_layer(ql_tui_runtime_kv(a), 3), f16;
    assert_true(ql_kv_scheme_parse("f16", &f16));
    assert_true(ql_kv_scheme_equal(&l3, &f16));
    assert_screen_has(a, "per-layer");
    ql_tui_feed(a, "Kblk.1=int8_token_g64<enter>"); /* a group of 64 in a head of 32 */
    assert_non_null(strstr(a->msg, "int8_token_g64"));
    ql_tui_feed(a, "Kblk.9=q8_0<enter>");
    assert_non_null(strstr(a->msg, "blk.9"));
    ql_tui_feed(a, "Kq3_x<enter>");
    assert_non_null(strstr(a->msg, "q3_x"));
    assert_int_equal(ql_tui_runtime_kv(a)->n_layer_own, 1);
    /* S: the INI carries both sides */
    snprintf(keys, sizeof keys, "S<c-u>%s<enter>", out_ini);
    ql_tui_feed(a, keys);
    ql_plan *p;
    assert_int_equal(ql_plan_load(out_ini, &p), QL_OK);
    assert_true(p->kv.set);
    assert_int_equal(p->kv.ctx, 2048);
    ql_kv_scheme q84;
    assert_true(ql_kv_scheme_parse("q8_0:q4_0", &q84));
    assert_true(ql_kv_scheme_equal(&p->kv.scheme, &q84));
    ql_kv_scheme pl3 = ql_kv_settings_layer(&p->kv, 3);
    assert_true(ql_kv_scheme_equal(&pl3, &f16));
    const ql_plan_act *pa = ql_plan_find_act(p, "blk.2.ffn_down.weight", true);
    assert_non_null(pa);
    assert_int_equal(pa->mode, QL_ACT_LLM_INT8);
    pa = ql_plan_find_act(p, "blk.0.attn_k.weight", true);
    assert_non_null(pa);
    assert_int_equal(pa->mode, QL_ACT_INT8_TOKEN);
    /* Preview: the plan measured with its settings */
    ql_tui_feed(a, "5c128<enter>n2<enter><enter><wait>");
    assert_int_equal(a->preview.n_hist, 1);
    const double preview = a->preview.hist[0].r.ppl;
    /* qlab quant --plan OUT.ini, then qlab ppl on the file: the same number */
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    ql_quant_opts qo = {.plan = p, .n_threads = 2};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m, &qo, out_gguf, NULL, &qs), QL_OK);
    ql_model_free(m);
    const double with = file_ppl(out_gguf, text, true), without = file_ppl(out_gguf, text, false);
    printf("preview PPL %.9f, file with its settings %.9f, with float inputs and cache %.9f\n", preview, with, without);
    assert_true(fabs(with - preview) <= 1e-9 * preview);
    assert_true(fabs(without - preview) > 1e-6 * preview);
    const char *qlab = getenv("QLAB"), *quick = getenv("QL_QUICK");
    if (quick && !strcmp(quick, "1")) printf("SKIP (CLI part): QL_QUICK=1 (the library calls above are the CLI's)\n");
    else if (qlab && *qlab) {
        char cmd[3000];
        snprintf(cmd, sizeof cmd, "'%s' quant '%s' --plan '%s' -o '%s/cli.gguf' >/dev/null 2>&1 && '%s' ppl '%s/cli.gguf' "
                 "--text '%s' --ctx 128 --chunks 2 --threads 2 --json 2>/dev/null",
                 qlab, model, out_ini, dir, qlab, dir, text);
        FILE *pp = popen(cmd, "r");
        assert_non_null(pp);
        char out[4096] = "";
        size_t got = fread(out, 1, sizeof out - 1, pp);
        out[got] = 0;
        assert_int_equal(pclose(pp), 0);
        const char *k = strstr(out, "\"ppl\": ");
        assert_non_null(k);
        double cli = strtod(k + 7, NULL);
        printf("qlab quant --plan + qlab ppl: %.6f\n", cli);
        assert_true(fabs(cli - preview) <= 5e-7 * preview + 1e-6); /* printed with 6 decimals */
        snprintf(cmd, sizeof cmd, "%s/cli.gguf", dir);
        unlink(cmd);
    } else printf("SKIP (CLI part): QLAB (the qlab binary) not set\n");
    ql_plan_free(p);
    ql_tui_app_free(a);
    unlink(in_ini);
    unlink(out_ini);
    unlink(out_gguf);
    rmdir(dir);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runtime_round_trip),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof tests[0]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
