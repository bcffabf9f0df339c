/* fuzz_stats.c — libFuzzer harness for activation statistics files (.qls: quant/sense --stats, ppl
 * --act-stats): the loader, then the fingerprint check against a model, both ways it is used. */
#include "fuzz/fuzz_util.h"
#include "core/stats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const ql_model *m = fuzz_model();
    const char *path = fuzz_put(data, size, ".qls");
    ql_stats *s = NULL;
    if (ql_stats_load(path, &s) != QL_OK) return 0;
    bool differ;
    ql_stats_check_model(s, path, m, QL_STATS_SAME_MODEL, &differ);
    ql_stats_check_model(s, path, m, QL_STATS_SAME_ACTIVATIONS, &differ);
    ql_stats_free(s);
    return 0;
}
