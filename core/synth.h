/* synth.h — models of any described architecture (core/arch.h) with random weights whose statistics resemble trained ones
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
    /* What the real model's GGUF says beyond the llama basics; zero / NULL: as llama. The tensors follow
     * the architecture's description (required roles only: q/k norms, post norms, fused attn_qkv ...). */
    const char *arch;      /* general.architecture (NULL: llama) */
    const char *label;     /* general.name (NULL: qlab-synth-NAME); llama.cpp reads meaning into some names */
    float norm_eps;        /* 0: 1e-5 */
    float rope_linear;     /* rope.scaling.type = linear with this factor (0: none) */
    float rope_base_swa;   /* rope.freq_base_swa (0: not written) */
    int n_swa;             /* attention.sliding_window (0: not written) */
    int n_expert, n_expert_used; /* a mixture of experts in every layer (0: dense): ARCH.expert_count, ... */
    int n_ff_exp;          /* an expert's width, written as expert_feed_forward_length (0: n_ff, not written) */
    int n_ff_shexp;        /* a shared expert's (architectures that have one), expert_shared_feed_forward_length */
    float rope_llama3[4];  /* Llama 3.1 RoPE: factor, low_freq_factor, high_freq_factor, original context; a
                              rope_freqs tensor computed as llama.cpp's converter does (factor 0: none) */
    float scales[4];       /* ARCH.embedding_scale, residual_scale, attention.scale, logit_scale (Granite; Cohere: the
                              last); 0: not written */
    float rope_yarn[3];    /* YaRN: factor, original context, yarn_log_multiplier (factor 0: none; 0: not written) */
    float attn_temp;       /* attention.temperature_scale (0: not written) */
    bool biases;           /* also the biases the description allows (q/k/v, attention output) */
    int rope_dim;          /* rope.dimension_count when only part of each head rotates (0: head_dim) */
    int dense_lead;        /* leading_dense_block_count: the first layers of a MoE model that are dense */
    float moe_scale;       /* expert_weights_scale (0: not written); with it expert_weights_norm = true and
                              expert_gating_func = 2 (sigmoid) are written too */
} ql_synth_shape;

/* Named shapes: "tiny", "tiny-moe", "llama-3.2-1b", "llama-2-7b", "llama-3-8b", "llama-3.1-8b", "qwen3-8b",
 * "gemma-3-4b", "phi-3-mini", "mixtral-8x7b", "qwen3-30b-a3b", "tiny-qwen3moe", "qwen1.5-moe-a2.7b",
 * "tiny-qwen2moe", "olmoe-1b-7b", "tiny-olmoe", and the test models of the dense architectures added with them
 * ("tiny-granite", "tiny-granitemoe", "tiny-olmo2", "tiny-smollm3", "tiny-exaone", "tiny-mistral3"). NULL if
 * unknown. */
const ql_synth_shape *ql_synth_find(const char *name);
const ql_synth_shape *ql_synth_shapes(int *n);
/* Parses "layers=4,embd=256,heads=8,kv=4,ff=768,vocab=512,ctx=256" (also head_dim, rope_base, tied, experts,
 * experts_used, ff_exp, ff_shexp) over `base`. */
ql_status ql_synth_parse_dims(const char *spec, ql_synth_shape *shape);

/* The model's metadata and tensor list without data (what ql_synth_write would write): for dry runs and
 * for checking a shape loads; free with ql_gguf_free. */
ql_status ql_synth_describe(const ql_synth_shape *shape, ql_gguf **out);

ql_status ql_synth_write(const ql_synth_shape *shape, uint64_t seed, const char *path, int n_threads,
                         const ql_progress *progress);

#endif
