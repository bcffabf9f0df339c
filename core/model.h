/* model.h — a decoder model of a described architecture (core/arch.h) as qlab sees it: hyper-parameters, tensors indexed by role, the
 * metadata (a ql_gguf, carried through to exports) and the tokenizer. Loaded from a GGUF file, a
 * Hugging Face folder or a llama2.c checkpoint; every loader first produces a ql_gguf with GGUF
 * names and GGUF (rope-interleaved) q/k row order, so the forward pass has one layout to handle.
 * Tensor data stays memory-mapped; nothing is copied whole unless a conversion requires it. */
#ifndef QL_MODEL_H
#define QL_MODEL_H

#include "core/arch.h"
#include "core/gguf.h"
#include "core/tokenizer.h"

typedef struct {
    char arch[32];
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx_train;
    int head_dim;       /* n_embd / n_head unless the file says otherwise */
    int rope_dim;       /* dimensions rotated (llama: head_dim) */
    float rope_base;    /* default 10000 */
    float rope_scale;   /* linear scaling factor (positions divided by it); 1 = none */
    int rope_neox;      /* 1: rotate (i, i+half) pairs (qwen2 style); 0: adjacent pairs (llama) */
    float norm_eps;
    bool tied_output;   /* no output.weight: the embedding is the classifier */
    /* Set from the architecture description (core/arch.h) and the file's keys; see ql_model_from_gguf. */
    const ql_arch *desc;    /* never NULL once loaded */
    ql_ffn_act ffn_act;     /* SwiGLU or GeGLU (tanh GELU) */
    float embd_scale;       /* token embeddings are multiplied by it (1: none; Gemma: sqrt(n_embd)) */
    float attn_scale;       /* scores = q·k · attn_scale (1/sqrt(head_dim) unless the description says) */
    float attn_softcap;     /* scores = c·tanh(scores/c) after scaling (0: none; Gemma-2) */
    float final_softcap;    /* logits = c·tanh(logits/c) (0: none; Gemma-2) */
    int n_swa;              /* sliding window: a query at p sees keys p' with p - p' < n_swa (0: none) */
    int swa_pattern;        /* layer l slides when n_swa > 0 and l % swa_pattern < swa_pattern - 1 */
    float rope_base_swa, rope_scale_swa; /* RoPE of the sliding layers (Gemma-3: base 10000, no scaling) */
    /* YaRN (rope.scaling.type = yarn): ggml's ramp between interpolated and extrapolated angles */
    bool rope_yarn;
    int yarn_orig_ctx;
    float yarn_ext_factor, yarn_attn_factor, yarn_beta_fast, yarn_beta_slow;
    /* rope.scaling.original_context_length (default n_ctx_train): YaRN's ramp, and the context above which
     * LongRoPE rotates with its long factors (llama.cpp: n_ctx_orig_yarn) */
    int n_ctx_orig;
    /* rope.scaling.attn_factor (1: none): cos and sin are multiplied by it in every architecture, as llama.cpp
     * folds it into its attention factor (Phi-3 LongRoPE: sqrt(1 + ln(scale) / ln(original context))) */
    float rope_attn_factor;
    /* attention.sliding_window_pattern given as a per-layer array (true: the layer slides), instead of a
     * period; then swa_layer_bits, not swa_pattern, says which layers slide */
    bool swa_per_layer;
    uint64_t swa_layer_bits[64]; /* bit l of word l/64; n_layer <= 4096 */
    /* Mixture of experts (ARCH.expert_count > 0): each token's FFN is the n_expert_used experts the router
     * rates highest, of n_ff_exp hidden units each (ARCH.expert_feed_forward_length, else n_ff), their outputs
     * weighted by the router's softmax (renormalised over the chosen ones when moe_norm_weights). 0: dense. */
    int n_expert, n_expert_used, n_ff_exp;
    bool moe_norm_weights;
    int n_ff_shexp; /* the shared expert's width (ARCH.expert_shared_feed_forward_length, else n_ff); 0: none */
    int n_layer_dense_lead;   /* the first layers of a MoE model that are dense (GLM-4.5: 1 or 3) */
    ql_moe_gating moe_gating; /* the description's, or the file's expert_gating_func */
    float moe_weights_scale;  /* the chosen experts' weights times it (0: none; ARCH.expert_weights_scale) */
    float residual_scale; /* each block's output times it before the residual add (1: none; Granite) */
    float logit_mult;     /* logits multiplied by it (1: none; Granite: 1 / logit_scale, Cohere: logit_scale) */
    bool rope_off;        /* no layer rotates (Granite with rope.scaling.finetuned = false) */
    bool rope_swa_only;   /* with a window, only sliding layers rotate (Cohere-2) */
    int nope_period;      /* layer l does not rotate when (l + 1) % nope_period == 0 (0: all rotate; SmolLM3) */
    /* q at position p times 1 + attn_temp_scale·ln(1 + floor(p / attn_temp_floor)) (0: none; Ministral-3) */
    float attn_temp_scale;
    int attn_temp_floor;
} ql_config;

/* The width of the FFN's hidden activation (ffn_down's input): an expert's in a MoE model. */
static inline int ql_ffn_hidden(const ql_config *c) { return c->n_expert > 0 ? c->n_ff_exp : c->n_ff; }

/* True when layer l of c uses the sliding window (and the sliding RoPE base). */
static inline bool ql_layer_is_swa(const ql_config *c, int l) {
    if (c->swa_per_layer) return c->n_swa > 0 && l >= 0 && l < 4096 && (c->swa_layer_bits[l / 64] >> (l % 64) & 1);
    return c->n_swa > 0 && c->swa_pattern > 0 && l % c->swa_pattern < c->swa_pattern - 1;
}

/* True when layer l of c has a mixture-of-experts FFN (a MoE model's leading dense layers have not). */
static inline bool ql_layer_is_moe(const ql_config *c, int l) { return c->n_expert > 0 && l >= c->n_layer_dense_lead; }

/* True when layer l of c applies RoPE to q and k. */
static inline bool ql_layer_has_rope(const ql_config *c, int l) {
    return !c->rope_off && !(c->nope_period > 0 && (l + 1) % c->nope_period == 0) &&
           !(c->rope_swa_only && c->n_swa > 0 && !ql_layer_is_swa(c, l));
}

/* One layer's tensors by role (NULL: the architecture or the file has none). When the file stores fused
 * projections (attn_qkv, a gate+up ffn_up), wqkv / w_gate_up are the stored tensors and wq, wk, wv,
 * w_gate, w_up are row views of them (model-owned structs pointing into the stored bytes; see
 * ql_model_view_parent), so the forward pass reads one layout. */
typedef struct {
    ql_gguf_tensor *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv;
    ql_gguf_tensor *ffn_norm, *w_gate, *w_up, *w_down;
    ql_gguf_tensor *wqkv, *w_gate_up, *q_norm, *k_norm, *post_attn_norm, *post_ffn_norm;
    /* a MoE layer (then w_gate, w_up, w_down are NULL): the router [n_embd → n_expert] and the 3-D experts */
    ql_gguf_tensor *ffn_gate_inp, *gate_exps, *up_exps, *down_exps;
    /* a shared expert beside them (qwen2moe): its gate vector [n_embd] and a dense SwiGLU FFN; NULL: none */
    ql_gguf_tensor *gate_inp_shexp, *gate_shexp, *up_shexp, *down_shexp;
    /* gpt-oss: attention output bias, per-head softmax sinks, router bias, per-expert projection biases */
    ql_gguf_tensor *bo, *attn_sinks, *gate_inp_b, *gate_exps_b, *up_exps_b, *down_exps_b;
    ql_gguf_tensor *exp_probs_b; /* GLM-4.5: the experts' selection bias */
} ql_layer_tensors;

/* The slot of role r in L (every role has one). */
ql_gguf_tensor **ql_layer_role(ql_layer_tensors *L, ql_role r);
ql_gguf_tensor *ql_layer_role_get(const ql_layer_tensors *L, ql_role r);

typedef struct ql_model {
    char *path;
    ql_config cfg;
    ql_gguf *gguf;            /* metadata + tensors (owned) */
    ql_tokenizer *tok;        /* owned; NULL if the file has no tokenizer */
    ql_gguf_tensor *tok_embd, *output_norm, *output; /* output == tok_embd when tied */
    ql_gguf_tensor *rope_freqs; /* llama3 RoPE: angle of pair i divided by rope_freqs[i] (NULL: none) */
    /* Phi-3 LongRoPE (architectures whose description allows them): factors used like rope_freqs, the long
     * ones when the context exceeds cfg.n_ctx_orig, else the short ones (NULL: none; both or neither) */
    ql_gguf_tensor *rope_long, *rope_short;
    ql_layer_tensors *layers; /* n_layer entries (all NULL in a weights-only model) */
    /* Loaded by ql_model_load_weights for an architecture qlab cannot run: tensors and hyper-parameters only, for
     * quantization by tensor names (as llama-quantize does); every forward pass refuses it (ql_infer_new_on). */
    bool weights_only;
    int n_views;
    struct ql_tensor_view { ql_gguf_tensor *view; const ql_gguf_tensor *parent; int64_t row0; } *views;
} ql_model;

/* The rope frequency factors (rope_dim/2 F32 values, angle of pair i divided by factor i) for a pass whose
 * context (its KV cache, the scratch's size) holds n_ctx tokens, as llama.cpp's get_rope_factors chooses:
 * rope_freqs if present, else LongRoPE's long factors when n_ctx > cfg.n_ctx_orig, else its short ones;
 * NULL when the model has none. */
const float *ql_model_rope_factors(const ql_model *m, int n_ctx);
/* For a row view of a fused tensor: the stored tensor and the view's first row; NULL when t is stored. */
const ql_gguf_tensor *ql_model_view_parent(const ql_model *m, const ql_gguf_tensor *t, int64_t *row0);
/* The same by the view's name (a copy of the model, or names kept by training): its stored tensor in m and first
 * row; NULL when no view of m has that name. */
const ql_gguf_tensor *ql_model_view_parent_by_name(const ql_model *m, const char *name, int64_t *row0);
/* The stored linear tensors of layer l (fused ones once, never their views), in role order, with the
 * activation each multiplies (ql_role_input); returns the count (at most QL_ROLE_COUNT). */
int ql_model_layer_linears(const ql_model *m, int l, const ql_gguf_tensor **out, int *input);

typedef enum { QL_SRC_GGUF, QL_SRC_HF, QL_SRC_LLAMA2C } ql_model_source;

/* Detects the source kind from `path` (a .gguf file, a folder with config.json, a llama2.c .bin). */
ql_status ql_model_load(const char *path, ql_model **out);
/* ql_model_load, except that an architecture without a description (core/arch.c) loads as a weights-only model
 * instead of failing: the tensors, block_count and the head counts when present, the tokenizer when it loads. */
ql_status ql_model_load_weights(const char *path, ql_model **out);
/* Builds the model view over an existing ql_gguf (takes ownership of g). */
ql_status ql_model_from_gguf(ql_gguf *g, const char *path, ql_model **out);
void ql_model_free(ql_model *m);
/* Fails (QL_ERR_FORMAT) with what to do about a model without a tokenizer: which files the loader
 * looks for (tokenizer.bin or tok<vocab>.bin beside a llama2.c .bin, tokenizer.json in a Hugging Face
 * folder) and where; `need` says what wanted one ("perplexity needs one"). */
ql_status ql_model_no_tokenizer(const ql_model *m, const char *need);
int64_t ql_model_n_params(const ql_model *m);
/* What the forward pass does beyond plain llama, in words ("NEOX RoPE, GeGLU (tanh GELU), post norms, ..."),
 * or "plain llama" (for qlab info and the workbench). */
void ql_model_features(const ql_model *m, char *buf, size_t cap);

/* Loaders into the common representation (core/hf.c, core/llama2c.c). */
ql_status ql_hf_load(const char *dir, ql_gguf **out);
ql_status ql_llama2c_load(const char *bin_path, ql_gguf **out);
/* GGUF → Hugging Face folder (config.json, model.safetensors, tokenizer metadata). */
ql_status ql_hf_save(const ql_gguf *g, const char *dir);
/* For exporters that write Hugging Face folders (pipeline/export_st.c): the HF name of a GGUF tensor
 * (malloc'ed), with *rope_heads > 0 when its rows must be put back in HF's q/k order with
 * ql_rope_permute_rows(..., false) for that many heads; and config.json's text for model g. */
char *ql_hf_tensor_name(const ql_gguf *g, const char *gguf_name, int *rope_heads);
ql_status ql_hf_config_text(const ql_gguf *g, const char *torch_dtype, char **out);
/* True when the HF folder stores this tensor as its GGUF value minus 1 (Gemma's RMSNorm weights). */
bool ql_hf_norm_shift(const ql_gguf *g, const char *gguf_name);

/* Safetensors header parsing (exposed for fuzzing): fills `g` with tensors pointing into buf. */
ql_status ql_safetensors_parse(const void *buf, size_t size, const char *label, ql_gguf *g);

/* The rope permutation between HF (half-split) and GGUF (interleaved) q/k row order, on whole rows
 * of any element type: rows = n_head * head_dim, each row_bytes long; dst and src must not alias. */
void ql_rope_permute_rows(void *dst, const void *src, int n_head, int64_t rows, size_t row_bytes,
                          bool to_gguf);

#endif
