/* fuzz_gguf.c — libFuzzer harness for the GGUF reader: parse arbitrary bytes, then touch every
 * value and tensor the parser accepted (what a caller would do), so out-of-range pointers surface. */
#include <stdint.h>
#include <string.h>

#include "core/gguf.h"

static uint64_t touch_value(const ql_gguf_value *v) {
    uint64_t h = v->type;
    if (v->type == QL_GGUF_STRING) {
        for (uint64_t i = 0; i < v->v.str.len; i++) h += (uint8_t)v->v.str.s[i];
    } else if (v->type == QL_GGUF_ARRAY) {
        for (uint64_t i = 0; i < v->v.arr.n; i++) h += touch_value(&v->v.arr.items[i]);
    } else
        h += v->v.u;
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_gguf *g = NULL;
    if (ql_gguf_parse(data, size, "fuzz.gguf", &g) != QL_OK) return 0;
    volatile uint64_t h = 0;
    for (int64_t i = 0; i < g->n_kv; i++) h += touch_value(&g->kv[i].val);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const uint8_t *p = g->tensors[i].data;
        if (g->tensors[i].nbytes) h += p[0] + p[g->tensors[i].nbytes - 1];
    }
    (void)h;
    ql_gguf_free(g);
    return 0;
}
