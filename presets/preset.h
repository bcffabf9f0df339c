/* preset.h — presets as data: ordered rules over tensor roles/names and layer positions (INI files in
 * presets/, compiled into the binary, or any INI file a user writes), resolved against a concrete
 * model into a ql_plan. One small resolver replaces llama.cpp's if-chain; the fallback table says
 * what a format becomes when a row length does not fit its block (llama.cpp's choices), and every
 * fallback is recorded in the plan's notes. */
#ifndef QL_PRESET_H
#define QL_PRESET_H

#include "core/model.h"
#include "pipeline/plan.h"

typedef struct ql_preset ql_preset;

/* name: a built-in preset (case-insensitive, e.g. "Q4_K_M") or a path to an INI file. */
ql_status ql_preset_load(const char *name_or_path, ql_preset **out);
ql_status ql_preset_parse(const char *text, const char *label, ql_preset **out);
void ql_preset_free(ql_preset *p);
const char *ql_preset_name(const ql_preset *p);
const char *ql_preset_summary(const ql_preset *p);

/* has_imatrix: some llama.cpp rules depend on whether an importance matrix is given. */
ql_status ql_preset_resolve(const ql_preset *p, const ql_model *m, bool has_imatrix, ql_plan **out);
/* One format everywhere (qlab quant --type), with the same fallback rules. */
ql_status ql_plan_single_format(const char *spec, const ql_model *m, ql_plan **out);

int ql_preset_builtin_count(void);
const char *ql_preset_builtin_name(int i);

#endif
