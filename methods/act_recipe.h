/* act_recipe.h — activation quantization from calibration statistics, for a whole model, and the named
 * weight+activation recipes (W8A8-INT8, W8A8-FP8, LLM.int8()). */
#ifndef QL_ACT_RECIPE_H
#define QL_ACT_RECIPE_H

#include "core/actquant.h"
#include "core/infer.h"
#include "core/stats.h"

/* Sets `mode` on every stored linear of every decoder layer (a fused attn_qkv / ffn_up once), and on
 * output.weight when include_output (W8A8 recipes keep the classifier in 16 bits). Static scales come from st (required for static
 * modes, else may be NULL). QL_ACT_NONE clears them. */
ql_status ql_infer_set_act_quant_all(ql_infer *inf, const ql_stats *st, ql_act_mode mode, float threshold,
                                     bool include_output);

/* Applies the activation settings the model file carries (qlab.act.* keys, core/actquant.h) to inf: what
 * `qlab quant --plan` stored for each linear input. *n_set: how many linears got a scheme (0: the file has
 * none). A key naming a tensor that is not a linear of the model, or a malformed setting, fails with a
 * message naming the file. counts (may be NULL) [QL_ACT_MODE_COUNT]: linears per mode. */
ql_status ql_infer_set_act_quant_from_file(ql_infer *inf, int *n_set, int *counts);

/* Named weight+activation recipes: the weight format goes in the plan, the activation mode in the
 * forward pass (ql_infer_set_act_quant_all). */
typedef struct {
    const char *name;          /* "W8A8-INT8", ... */
    const char *weight_format; /* registry name (formats/format.h) */
    ql_act_mode act;
    const char *summary;
} ql_act_recipe;

int ql_act_recipe_count(void);
const ql_act_recipe *ql_act_recipe_at(int i);
const ql_act_recipe *ql_act_recipe_by_name(const char *name); /* case-insensitive */

#endif
