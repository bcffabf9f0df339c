/* fuzz_model.c — libFuzzer harness for everything a hostile GGUF reaches after parsing: the model
 * view (hyper-parameters, tensor shapes by role) and the tokenizer built from its metadata; when both
 * are accepted, tokenize and detokenize a short text, as `qlab ppl` would. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_gguf *g = NULL;
    if (ql_gguf_parse(data, size, "fuzz.gguf", &g) != QL_OK) return 0;
    ql_model *m = NULL;
    if (ql_model_from_gguf(g, "fuzz.gguf", &m) != QL_OK) return 0; /* took ownership of g */
    if (m->tok) {
        static const char text[] = "Once upon a time, \xe2\x96\x81 there was <s> a caf\xc3\xa9\n\xff";
        int32_t *ids = NULL;
        int64_t n = 0;
        if (ql_tokenize(m->tok, text, sizeof text - 1, true, &ids, &n) == QL_OK) {
            char buf[64];
            for (int64_t i = 0; i < n; i++) ql_token_to_piece(m->tok, ids[i], buf, sizeof buf);
        }
        free(ids);
    }
    ql_model_free(m);
    return 0;
}
