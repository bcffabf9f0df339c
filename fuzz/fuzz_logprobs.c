/* fuzz_logprobs.c — libFuzzer harness for log-probability files (qlab ppl --kld-base): the header and
 * sizes are checked against the run, then every stored value is read in a real (tiny) perplexity run. */
#include "fuzz/fuzz_util.h"
#include "core/infer.h"
#include "core/ppl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const ql_model *m = fuzz_model();
    static ql_infer *inf;
    if (!inf && ql_infer_new(m, 1, &inf)) abort();
    int32_t tokens[32];
    for (int i = 0; i < 32; i++) tokens[i] = (int32_t)((i * 37 + 11) % 300);
    ql_ppl_opts o = {.n_ctx = 16, .n_chunks = 2, .n_threads = 1, .kld_base = fuzz_put(data, size, ".qlp")};
    ql_ppl_result r;
    ql_perplexity(inf, tokens, 32, &o, NULL, &r);
    return 0;
}
