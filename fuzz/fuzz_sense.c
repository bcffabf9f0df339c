/* fuzz_sense.c — libFuzzer harness for sensitivity files (.qss: qlab plan, pareto, sense-diff, the TUI). */
#include "fuzz/fuzz_util.h"
#include "sensitivity/sense.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_sense *s = NULL;
    if (ql_sense_load(fuzz_put(data, size, ".qss"), &s) == QL_OK) ql_sense_free(s);
    return 0;
}
