/* act_recipe.c — activation quantization set up from calibration statistics on every linear of a
 * model, and the named weight+activation recipes (W8A8 and LLM.int8()). See act_recipe.h. */
#include "methods/act_recipe.h"
#include "methods/layer_f32.h"

#include <string.h>
#include <strings.h>

ql_status ql_infer_set_act_quant_all(ql_infer *inf, const ql_stats *st, ql_act_mode mode, float threshold,
                                     bool include_output) {
    const ql_model *m = ql_infer_model(inf);
    /* every stored linear (a fused attn_qkv or ffn_up once: its input is the same for all its rows), then output */
    for (int l = 0; l <= m->cfg.n_layer; l++) {
        const ql_gguf_tensor *lin[QL_ROLE_COUNT];
        const int n_lin = l < m->cfg.n_layer ? ql_model_layer_linears(m, l, lin, NULL) : 1;
        if (l == m->cfg.n_layer) lin[0] = m->output;
        for (int i = 0; i < n_lin; i++) {
            const ql_gguf_tensor *t = lin[i];
            ql_act_quant aq;
            ql_input_stats view = {0};
            if (l == m->cfg.n_layer && !include_output) {
                ql_infer_set_act_quant(inf, t, NULL);
                continue;
            }
            const ql_stat_entry *e = st ? ql_stats_for_tensor(st, t->name) : NULL;
            if (e) ql_stats_view(e, &view);
            if (ql_act_mode_is_static(mode) && (!e || e->n != t->ne[0]))
                return ql_fail(QL_ERR_ARG, "activation quantization %s: no statistics for the input of '%s'",
                               ql_act_mode_name(mode), t->name);
            ql_status s = ql_act_quant_init(&aq, mode, e ? view.absmax : NULL, e ? view.n : 0, threshold);
            if (s) return s;
            ql_infer_set_act_quant(inf, t, &aq);
        }
    }
    return QL_OK;
}

ql_status ql_infer_set_act_quant_from_file(ql_infer *inf, int *n_set, int *counts) {
    const ql_model *m = ql_infer_model(inf);
    const ql_gguf *g = m->gguf;
    *n_set = 0;
    if (counts) memset(counts, 0, QL_ACT_MODE_COUNT * sizeof *counts);
    const size_t plen = strlen(QL_ACT_KEY_MODE);
    for (int64_t k = 0; k < g->n_kv; k++) {
        const char *key = g->kv[k].key;
        if (strncmp(key, QL_ACT_KEY_MODE, plen) != 0) continue;
        const char *name = key + plen;
        /* only the inputs of matmuls the pass runs: block linears and the classifier */
        const ql_gguf_tensor *t = NULL;
        for (int l = 0; l < m->cfg.n_layer && !t; l++)
            for (int i = 0; i < QL_LIN_COUNT && !t; i++) {
                const ql_gguf_tensor *li = ql_layer_linear(m, l, i);
                if (li && !strcmp(li->name, name)) t = li;
            }
        if (!t && m->output && !strcmp(m->output->name, name)) t = m->output;
        if (!t) return ql_fail(QL_ERR_FORMAT, "%s: %s names no linear layer of the model", m->path, key);
        ql_act_quant aq;
        bool found;
        ql_status s = ql_act_quant_from_gguf(g, m->path, name, &aq, &found);
        if (s) return s;
        if (!found || !ql_infer_set_act_quant(inf, t, &aq)) continue;
        (*n_set)++;
        if (counts) counts[aq.mode]++;
    }
    return QL_OK;
}

static const ql_act_recipe RECIPES[] = {
    {"W8A8-INT8", "int8_channel", QL_ACT_INT8_TOKEN,
     "INT8 weights per output channel + INT8 activations per token, dynamic (SmoothQuant's; smooth first)"},
    {"W8A8-INT8-STATIC", "int8_channel", QL_ACT_INT8_TENSOR,
     "INT8 weights per output channel + INT8 activations with one calibrated scale per layer"},
    {"W8A8-FP8", "fp8_e4m3_channel", QL_ACT_FP8_TOKEN,
     "FP8 E4M3 weights per output channel + FP8 activations per token, dynamic (compressed-tensors "
     "FP8_DYNAMIC)"},
    {"W8A8-FP8-STATIC", "fp8_e4m3", QL_ACT_FP8_TENSOR,
     "FP8 E4M3 weights and activations, one static scale per tensor (compressed-tensors FP8)"},
    {"LLM.INT8", "int8_channel", QL_ACT_LLM_INT8,
     "LLM.int8(): INT8 weights per row, activations INT8 per token except outlier columns (|x| > 6) in "
     "float"},
};

int ql_act_recipe_count(void) { return (int)QL_ARRAY_LEN(RECIPES); }
const ql_act_recipe *ql_act_recipe_at(int i) {
    return i >= 0 && i < ql_act_recipe_count() ? &RECIPES[i] : NULL;
}
const ql_act_recipe *ql_act_recipe_by_name(const char *name) {
    for (int i = 0; name && i < ql_act_recipe_count(); i++)
        if (!strcasecmp(RECIPES[i].name, name)) return &RECIPES[i];
    return NULL;
}

