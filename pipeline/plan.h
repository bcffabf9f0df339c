/* plan.h — a quantization plan: for every tensor of a model, the format it is stored in and the
 * method that chooses its codes, plus a note (why: a rule, a fallback). Saved and loaded as INI so a
 * person can edit it:
 *     [plan]
 *     model = path/to/model.gguf          ; informational
 *     source = preset Q4_K_M               ; how it was made
 *     [tensors]
 *     blk.0.attn_q.weight = q4_k           ; FORMAT or FORMAT+METHOD (rtn when absent)
 *     [activations]                        ; optional: how each linear's input is quantized at run time
 *     default = int8_token                 ; every block linear not named below
 *     blk.0.ffn_down.weight = llm_int8:6   ; none, int8_token, int8_tensor, fp8_token, fp8_tensor, llm_int8[:T]
 *     [kv]                                 ; optional: the KV cache at run time (core/kv_settings.h)
 *     scheme = q8_0:q4_0                   ; K[:V], as qlab ppl --kv takes it
 *     ctx = 4096                           ; memory figures at this context ...
 *     batch = 1                            ; ... and this many sequences
 *     blk.3 = f16                          ; a layer's own scheme
 * Tensors not listed keep their type. Names of formats/methods/schemes are checked on load. The [plan] key
 * method_opts = K=V,... holds the options of the plan's methods (SmoothQuant's alpha, GPTQ's damp, ...). */
#ifndef QL_PLAN_H
#define QL_PLAN_H

#include "base/ql_common.h"
#include "core/actquant.h"
#include "core/kv_settings.h"

struct ql_format;
struct ql_model;

typedef struct {
    char *tensor;                   /* GGUF tensor name */
    const struct ql_format *format; /* registry entry */
    char *method;                   /* "rtn", "gptq", ... */
    char *note;                     /* e.g. "fallback from q4_k: rows of 64 are not a multiple of 256"; may be NULL */
} ql_plan_entry;

/* The activation scheme of one linear's input (core/actquant.h). tensor is the linear's weight name, or
 * QL_PLAN_ACT_DEFAULT for every block linear the plan does not name. */
typedef struct {
    char *tensor;
    ql_act_mode mode;
    float threshold; /* llm_int8: outlier threshold (0: the default, 6) */
} ql_plan_act;

#define QL_PLAN_ACT_DEFAULT "default"

typedef struct ql_plan {
    int n, cap;
    ql_plan_entry *e;
    int n_act, cap_act;
    ql_plan_act *act;     /* [activations]; empty: every input stays float */
    ql_kv_settings kv;    /* [kv]; kv.set false: the float cache, nothing written */
    char *method_opts;    /* "alpha=0.5,...": options of the plan's methods; NULL: defaults */
    char *source;         /* "preset Q4_K_M", "--type q8_0", a file name */
    int64_t file_type;    /* general.file_type to write; -1: derive */
} ql_plan;

ql_plan *ql_plan_new(void);
void ql_plan_free(ql_plan *p);
/* Adds or replaces the entry for `tensor` (strings are copied). */
void ql_plan_set(ql_plan *p, const char *tensor, const struct ql_format *f, const char *method, const char *note);
const ql_plan_entry *ql_plan_find(const ql_plan *p, const char *tensor);
/* Adds or replaces the activation scheme of `tensor` (or QL_PLAN_ACT_DEFAULT). */
void ql_plan_set_act(ql_plan *p, const char *tensor, ql_act_mode mode, float threshold);
/* The entry naming `tensor`, else (block_linear) the default entry, else NULL. */
const ql_plan_act *ql_plan_find_act(const ql_plan *p, const char *tensor, bool block_linear);
/* Does any entry quantize activations with a static (calibrated) scale? */
bool ql_plan_act_needs_stats(const ql_plan *p);
ql_status ql_plan_save(const ql_plan *p, const char *model_path, const char *path);
ql_status ql_plan_load(const char *path, ql_plan **out);
/* "q4_k" or "int4_g128+gptq" → format and method (method "rtn" when absent). */
ql_status ql_parse_format_method(const char *spec, const struct ql_format **f, char *method, size_t method_cap);

/* Does this tensor get quantized at all (2-D weight matrices; norms and biases stay as they are)? */
bool ql_tensor_is_quantizable(const char *name, int n_dims, const int64_t *ne);

#endif
