/* plan.h — a quantization plan: for every tensor of a model, the format it is stored in and the
 * method that chooses its codes, plus a note (why: a rule, a fallback). Saved and loaded as INI so a
 * person can edit it:
 *     [plan]
 *     model = path/to/model.gguf          ; informational
 *     source = preset Q4_K_M               ; how it was made
 *     [tensors]
 *     blk.0.attn_q.weight = q4_k           ; FORMAT or FORMAT+METHOD (rtn when absent)
 * Tensors not listed keep their type. Names of formats/methods are checked on load. */
#ifndef QL_PLAN_H
#define QL_PLAN_H

#include "base/ql_common.h"

struct ql_format;
struct ql_model;

typedef struct {
    char *tensor;                   /* GGUF tensor name */
    const struct ql_format *format; /* registry entry */
    char *method;                   /* "rtn", "gptq", ... */
    char *note;                     /* e.g. "fallback from q4_k: rows of 64 are not a multiple of 256"; may be NULL */
} ql_plan_entry;

typedef struct ql_plan {
    int n, cap;
    ql_plan_entry *e;
    char *source;         /* "preset Q4_K_M", "--type q8_0", a file name */
    int64_t file_type;    /* general.file_type to write; -1: derive */
} ql_plan;

ql_plan *ql_plan_new(void);
void ql_plan_free(ql_plan *p);
/* Adds or replaces the entry for `tensor` (strings are copied). */
void ql_plan_set(ql_plan *p, const char *tensor, const struct ql_format *f, const char *method, const char *note);
const ql_plan_entry *ql_plan_find(const ql_plan *p, const char *tensor);
ql_status ql_plan_save(const ql_plan *p, const char *model_path, const char *path);
ql_status ql_plan_load(const char *path, ql_plan **out);
/* "q4_k" or "int4_g128+gptq" → format and method (method "rtn" when absent). */
ql_status ql_parse_format_method(const char *spec, const struct ql_format **f, char *method, size_t method_cap);

/* Does this tensor get quantized at all (2-D weight matrices; norms and biases stay as they are)? */
bool ql_tensor_is_quantizable(const char *name, int n_dims, const int64_t *ne);

#endif
