/* view_runtime.c — the Plan screen's Runtime view (R): what the plan runs besides its weights. Per layer, the
 * activation scheme of each linear's input (the plan's [activations]) and the KV-cache scheme (its [kv]) with the
 * cache's exact bytes at the chosen context; under the table, weights + cache = memory, and the llama.cpp flags
 * that run the same cache (or why there are none). K sets the scheme, k the context. */
#include "tui/view.h"
#include "core/kv_settings.h"
#include "methods/layer_f32.h"

#include <stdio.h>
#include <string.h>

/* A scheme in 4 columns: "-" float, i8t / i8s (INT8 per token / static), f8t / f8s, l8 (LLM.int8()). */
static const char *act_short(const ql_plan_act *pa) {
    if (!pa) return "-";
    switch (pa->mode) {
    case QL_ACT_INT8_TOKEN: return "i8t";
    case QL_ACT_INT8_TENSOR: return "i8s";
    case QL_ACT_FP8_TOKEN: return "f8t";
    case QL_ACT_FP8_TENSOR: return "f8s";
    case QL_ACT_LLM_INT8: return "l8";
    default: return "-";
    }
}

void ql_view_runtime(ql_tui_app *a, ql_canvas *c, ql_rect r) {
    const ql_model *m = a->model;
    const ql_config *cf = &m->cfg;
    const ql_kv_settings *kv = ql_tui_runtime_kv(a);
    const int ctx = a->plan.kv_ctx, batch = kv && kv->batch > 0 ? kv->batch : 1;
    int y = r.y;
    int x = ql_canvas_printf(c, 1, y, 0, QL_ST_BOLD, "Runtime: inputs and KV cache at ctx %d", ctx);
    ql_view_fit(c, x + 2, y, c->w - x - 3, QL_ST_DIM, "R table · K KV scheme · k context");
    y++;
    static const char *const ROLE[QL_LIN_COUNT] = {"q", "k", "v", "out", "gate", "up", "down"};
    const int x_kv = 8 + QL_LIN_COUNT * 5 + 1, x_bytes = c->w - 14;
    ql_canvas_fill(c, 0, y, c->w, 1, ' ', QL_ST_HEADER);
    ql_canvas_puts(c, 1, y, 0, QL_ST_HEADER, "layer");
    for (int k = 0; k < QL_LIN_COUNT; k++) ql_canvas_printf(c, 8 + k * 5, y, 0, QL_ST_HEADER, "%4s", ROLE[k]);
    ql_canvas_puts(c, x_kv, y, 0, QL_ST_HEADER, "KV cache");
    ql_canvas_printf(c, x_bytes, y, 0, QL_ST_HEADER, "%13s", "bytes");
    y++;
    const int rows = r.y + r.h - y - 3; /* three lines under the table: memory, llama.cpp, legend */
    const ql_plan *rt = a->plan.runtime;
    int shown = 0;
    for (int l = 0; l < cf->n_layer && shown < rows; l++, shown++) {
        ql_canvas_printf(c, 1, y, 0, QL_ST_NORMAL, "blk.%d", l);
        for (int k = 0; k < QL_LIN_COUNT; k++) {
            const ql_gguf_tensor *t = ql_layer_linear(m, l, k);
            const ql_plan_act *pa = t && rt ? ql_plan_find_act(rt, t->name, true) : NULL;
            if (pa && pa->mode == QL_ACT_NONE) pa = NULL;
            ql_canvas_printf(c, 8 + k * 5, y, 0, pa ? QL_ST_MARK : QL_ST_DIM, "%4s", t ? act_short(pa) : "");
        }
        ql_kv_scheme sc = kv ? ql_kv_settings_layer(kv, l) : ql_kv_scheme_f32();
        char nm[160];
        if (kv) ql_kv_scheme_name(&sc, nm, sizeof nm);
        else snprintf(nm, sizeof nm, "f16 (no [kv])");
        ql_kv_settings one; /* this layer's share: a uniform cache's n_layer-th part */
        ql_kv_settings_init(&one);
        one.scheme = kv ? sc : (ql_kv_scheme){0};
        if (!kv) ql_kv_scheme_parse("f16", &one.scheme);
        int64_t b = ql_kv_settings_bytes(&one, cf, ctx, batch) / (cf->n_layer ? cf->n_layer : 1);
        ql_view_fit(c, x_kv, y, x_bytes - x_kv - 1, kv ? QL_ST_NORMAL : QL_ST_DIM, nm);
        char bs[32];
        ql_fmt_count(bs, sizeof bs, b);
        ql_canvas_printf(c, x_bytes, y, 0, QL_ST_NORMAL, "%13s", bs);
        y++;
    }
    if (shown < cf->n_layer) ql_canvas_printf(c, 1, y++, 0, QL_ST_DIM, "... %d more layers", cf->n_layer - shown);
    y = r.y + r.h - 3;
    ql_tui_totals t = ql_tui_plan_totals(a);
    char fb[32], kb[32], tb[32], line[320];
    ql_fmt_count(fb, sizeof fb, t.file_bytes);
    ql_fmt_count(kb, sizeof kb, t.kv_bytes);
    ql_fmt_count(tb, sizeof tb, t.file_bytes + t.kv_bytes);
    snprintf(line, sizeof line, "memory at ctx %d x %d: file %s + KV %s = %s B", ctx, batch, fb, kb, tb);
    ql_view_fit(c, 1, y++, c->w - 2, QL_ST_BOLD, line);
    char flags[256];
    if (!kv) snprintf(line, sizeof line, "llama.cpp: its default f16 cache (K sets a scheme for the plan's [kv])");
    else if (ql_kv_settings_llama_flags(kv, flags, sizeof flags)) snprintf(line, sizeof line, "llama.cpp: %s", flags);
    else snprintf(line, sizeof line, "llama.cpp: none: %s", flags);
    ql_view_fit(c, 1, y++, c->w - 2, QL_ST_NORMAL, line);
    ql_view_fit(c, 1, y, c->w - 2, QL_ST_DIM,
                "inputs: - float, i8t/i8s INT8 token/static, f8t/f8s FP8, l8 LLM.int8()");
}
