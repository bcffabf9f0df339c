/* fuzz_plan.c — libFuzzer harness for plan INI files (qlab quant --plan, the TUI's L): inih parsing and
 * qlab's validation of every section, key, format, method and activation/KV setting. */
#include "fuzz/fuzz_util.h"
#include "pipeline/plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_plan *p = NULL;
    if (ql_plan_load(fuzz_put(data, size, ".ini"), &p) == QL_OK) ql_plan_free(p);
    return 0;
}
