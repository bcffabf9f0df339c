/* synth.h — llama-family models with random weights whose statistics resemble trained ones
 * (per-row scale spread, heavy tails, a few outlier input channels mirrored by large norm weights),
 * and a byte-level vocabulary so every command runs on them. For speed and scale tests only: their
 * perplexity means nothing. Tensors are generated while the file is written, so a 7B model never
 * needs more than one tensor in memory. */
#ifndef QL_SYNTH_H
#define QL_SYNTH_H

#include "core/gguf.h"

typedef struct {
    const char *name;
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rope_base;
    bool tied;
    uint32_t type; /* storage type of 2-D weights: F32, F16 or BF16 */
    int head_dim;  /* 0: n_embd / n_head; else written as attention.key_length (heads need not tile embd) */
} ql_synth_shape;

/* Named shapes: "tiny", "llama-3.2-1b", "llama-2-7b", "llama-3-8b". NULL if unknown. */
const ql_synth_shape *ql_synth_find(const char *name);
const ql_synth_shape *ql_synth_shapes(int *n);
/* Parses "layers=4,embd=256,heads=8,kv=4,ff=768,vocab=512,ctx=256" (also head_dim, rope_base, tied) over `base`. */
ql_status ql_synth_parse_dims(const char *spec, ql_synth_shape *shape);

ql_status ql_synth_write(const ql_synth_shape *shape, uint64_t seed, const char *path, int n_threads,
                         const ql_progress *progress);

#endif
