/* fuzz_safetensors.c — libFuzzer harness: the input is a whole safetensors file, parsed (header,
 * dtypes, shapes, offsets and qlab's carried GGUF metadata) into a fresh ql_gguf. Seeds:
 * tests/corpus/safetensors/. Build with `make fuzz`, run build-fuzz/fuzz_safetensors CORPUS_DIR. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/model.h"

static void quiet(int level, const char *msg, void *user) { (void)level, (void)msg, (void)user; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_log_set(quiet, NULL);
    ql_gguf *g = ql_gguf_new();
    if (ql_safetensors_parse(data, size, "fuzz.safetensors", g) == QL_OK) {
        /* touch every byte the parser promised is there */
        volatile uint8_t sink = 0;
        for (int64_t i = 0; i < g->n_tensors; i++) {
            const uint8_t *p = g->tensors[i].data;
            if (g->tensors[i].nbytes) sink ^= p[0] ^ p[g->tensors[i].nbytes - 1];
        }
        (void)sink;
    }
    ql_gguf_free(g);
    return 0;
}
