/* fuzz_preset.c — libFuzzer harness for preset INI files (qlab quant --preset FILE): parsing, then the
 * rule resolver (patterns, conditions, fallbacks) on a small model, as qlab quant runs it. */
#include "fuzz/fuzz_util.h"
#include "pipeline/plan.h"
#include "presets/preset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const ql_model *m = fuzz_model();
    ql_preset *p = NULL;
    if (ql_preset_load(fuzz_put(data, size, ".ini"), &p) != QL_OK) return 0;
    for (int imat = 0; imat < 2; imat++) {
        ql_plan *plan = NULL;
        if (ql_preset_resolve(p, m, imat, &plan) == QL_OK) ql_plan_free(plan);
    }
    ql_preset_free(p);
    return 0;
}
