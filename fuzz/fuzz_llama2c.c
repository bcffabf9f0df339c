/* fuzz_llama2c.c — libFuzzer harness for llama2.c files: checkpoints (.bin, the header and every tensor
 * size checked against the file) and tokenizer.bin (first input byte picks which). */
#include "fuzz/fuzz_util.h"
#include "core/gguf.h"
#include "core/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *path = fuzz_put(data + 1, size - 1, ".bin");
    ql_gguf *g = NULL;
    if (data[0] & 1) {
        g = ql_gguf_new();
        ql_tokenizer_llama2c_to_gguf(path, 32 + (data[0] >> 1), g);
        ql_gguf_free(g);
    } else if (ql_llama2c_load(path, &g) == QL_OK)
        ql_gguf_free(g);
    return 0;
}
