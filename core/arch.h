/* arch.h — the architecture descriptions: one table entry per `general.architecture` (llama, mistral, qwen2,
 * qwen3, gemma2, gemma3, phi3, granite, olmo2, smollm3, exaone, mistral3, ernie4_5, seed_oss, glm4, cohere2, gpt-oss
 * and the MoE ones) saying which
 * per-layer tensor roles it has (required, optional or absent), which norms, the FFN activation, the RoPE layout, and the defaults of the features its GGUF
 * keys switch on (embedding scale, soft-capping, sliding-window pattern). core/model.c loads a model by
 * this description and core/infer.c runs the steps it enables; neither names an architecture. The role
 * table beside it says what every tensor role is (GGUF suffix, shape, which activation feeds it), so
 * statistics, sensitivity and quantization find a layer's linears without name special cases.
 * Adding an architecture = one line in g_arch (core/arch.c). */
#ifndef QL_ARCH_H
#define QL_ARCH_H

#include "base/ql_common.h"

/* Per-layer tensor roles. The fused roles (ATTN_QKV, FFN_GATE_UP) are stored tensors that the model
 * also presents as row views under the separate roles (q/k/v, gate/up), so the forward pass has one
 * layout; statistics and quantization use the stored tensors. */
typedef enum {
    QL_ROLE_ATTN_NORM,
    QL_ROLE_ATTN_Q,
    QL_ROLE_ATTN_K,
    QL_ROLE_ATTN_V,
    QL_ROLE_ATTN_QKV,      /* fused q, k, v rows (phi3) */
    QL_ROLE_ATTN_Q_BIAS,
    QL_ROLE_ATTN_K_BIAS,
    QL_ROLE_ATTN_V_BIAS,
    QL_ROLE_ATTN_Q_NORM,   /* per-head RMSNorm of q before RoPE (qwen3, gemma3) */
    QL_ROLE_ATTN_K_NORM,
    QL_ROLE_ATTN_OUT,
    QL_ROLE_ATTN_POST_NORM, /* norm of the attention output before the residual add (gemma2/3, olmo2) */
    QL_ROLE_FFN_NORM,
    QL_ROLE_FFN_GATE,
    QL_ROLE_FFN_UP,
    QL_ROLE_FFN_GATE_UP,   /* fused gate then up rows, stored as ffn_up (phi3) */
    QL_ROLE_FFN_DOWN,
    QL_ROLE_FFN_POST_NORM,
    /* mixture of experts (Mixtral as `llama` with ARCH.expert_count, qwen3moe): the router, kept F32 as
     * llama.cpp keeps it (never a quantization target), and the experts' projections stored as one 3-D
     * tensor each, [row length, rows, expert]; expert e is rows [e·rows, (e+1)·rows) of it */
    QL_ROLE_FFN_GATE_INP,
    QL_ROLE_FFN_GATE_EXPS,
    QL_ROLE_FFN_UP_EXPS,
    QL_ROLE_FFN_DOWN_EXPS,
    /* a shared expert every token runs (qwen2moe: its output scaled by sigmoid(x · ffn_gate_inp_shexp); granitemoe:
     * added as it is, no gate vector) */
    QL_ROLE_FFN_GATE_INP_SHEXP,
    QL_ROLE_FFN_GATE_SHEXP,
    QL_ROLE_FFN_UP_SHEXP,
    QL_ROLE_FFN_DOWN_SHEXP,
    /* gpt-oss: a bias on the attention output, one learned softmax sink per head (an extra logit every query's
     * softmax includes, whose value is dropped), a bias on the router logits and one per expert on each
     * projection ([width, expert]: expert e's bias is row e) */
    QL_ROLE_ATTN_OUT_BIAS,
    QL_ROLE_ATTN_SINKS,
    QL_ROLE_FFN_GATE_INP_BIAS,
    QL_ROLE_FFN_GATE_EXPS_BIAS,
    QL_ROLE_FFN_UP_EXPS_BIAS,
    QL_ROLE_FFN_DOWN_EXPS_BIAS,
    /* GLM-4.5 (DeepSeek-V3's routing): a bias added to the router's probabilities for choosing experts only */
    QL_ROLE_FFN_EXP_PROBS_B,
    QL_ROLE_COUNT
} ql_role;

/* Which activation a linear reads: the same order as infer.h's ql_hook_point (checked there). */
typedef enum { QL_IN_NONE = -1, QL_IN_ATTN = 0, QL_IN_ATTN_OUT, QL_IN_FFN, QL_IN_FFN_DOWN } ql_role_input;

/* Shape dimensions a role names; resolved against the config by core/model.c. */
typedef enum {
    QL_DIM_1, QL_DIM_EMBD, QL_DIM_Q, QL_DIM_KV, QL_DIM_QKV, QL_DIM_HEAD, QL_DIM_FF, QL_DIM_2FF,
    QL_DIM_EXPERT, /* cfg.n_expert */
    QL_DIM_FF_EXP,  /* cfg.n_ff_exp: one expert's hidden width */
    QL_DIM_FF_SHEXP, /* cfg.n_ff_shexp: the shared expert's */
    QL_DIM_HEADS     /* cfg.n_head */
} ql_dim;

typedef struct {
    const char *suffix;  /* GGUF name inside "blk.N.": "attn_q.weight" */
    ql_dim ne0, ne1;     /* GGUF shape: ne0 = row length */
    ql_role_input input; /* the activation a linear multiplies; QL_IN_NONE for norms, biases and the router */
    ql_role fused_into;  /* a separate role that is a row view of a fused one (QL_ROLE_COUNT: none) */
    ql_dim ne2;          /* the third dimension (experts); QL_DIM_1 (zero-initialised) for 2-D roles */
} ql_role_info;

const ql_role_info *ql_role_get(ql_role r);
/* The role of a tensor name "blk.N.SUFFIX" (any architecture; ffn_up resolves to QL_ROLE_FFN_UP), or -1. */
int ql_role_of_name(const char *name, int *layer);

typedef enum { QL_NEED_ABSENT = 0, QL_NEED_OPTIONAL, QL_NEED_REQUIRED } ql_need;
/* Whether layers have a mixture-of-experts FFN: never, when the file says ARCH.expert_count > 0 (llama.cpp's
 * llama architecture holds Mixtral that way), or always (qwen3moe). */
typedef enum { QL_MOE_NEVER = 0, QL_MOE_BY_KEY, QL_MOE_ALWAYS } ql_moe;
/* SWIGLU_OAI (gpt-oss's experts): gate g clamped above at 7, up u to [-7, 7], g·sigmoid(1.702·g)·(u + 1) */
typedef enum { QL_FFN_SWIGLU = 0, QL_FFN_GEGLU_TANH, QL_FFN_SWIGLU_OAI } ql_ffn_act;
/* How the router's logits weight the chosen experts: a softmax over all experts, then the top k (Mixtral, Qwen);
 * or the top k logits, then a softmax over those k (gpt-oss) */
/* or a sigmoid of each logit, chosen with a selection bias (GLM-4.5, DeepSeek-V3): the file's expert_gating_func
 * (1 softmax, 2 sigmoid, 3 top-k softmax) overrides the description */
typedef enum { QL_GATING_SOFTMAX = 0, QL_GATING_TOPK_SOFTMAX, QL_GATING_SIGMOID } ql_moe_gating;

typedef struct {
    const char *name;        /* general.architecture */
    const char *family;      /* what it runs as, for listings ("llama" for mistral) */
    bool rope_neox;          /* pair i with i + rope_dim/2 (else 2i with 2i+1), fixed by the name in llama.cpp */
    ql_ffn_act ffn_act;
    bool embd_scale_sqrt;    /* token embeddings times sqrt(n_embd) */
    int swa_pattern;         /* with ARCH.attention.sliding_window: every swa_pattern-th layer is global,
                                the others slide (llama.cpp's default period; 0 = the window is ignored) */
    /* 46-layer Gemma-2 27B scales q by 1/sqrt(n_embd/n_head) instead of 1/sqrt(head_dim) (llama.cpp) */
    int attn_scale_embd_layers;
    bool swa_rope_unscaled;  /* sliding layers ignore rope.scaling (Gemma-3: linear x8 on global layers only) */
    bool swa_rope_plain;     /* ... and also YaRN's ramp and every attention factor (OLMo-3: YaRN on global layers) */
    int nope_period;         /* SmolLM3: layer l has no RoPE when (l + 1) % nope_period == 0 (0: every layer rotates) */
    /* Granite: ARCH.embedding_scale multiplies the embeddings, residual_scale each block's output before its
     * residual add, attention.scale replaces 1/sqrt(head_dim), logits are divided by logit_scale, and
     * rope.scaling.finetuned = false turns RoPE off */
    bool granite_scales;
    /* Ministral-3: ARCH.attention.temperature_scale s > 0 multiplies q at position p by
     * 1 + s·ln(1 + floor(p / original context)) (llama.cpp's Llama-4 temperature tuning) */
    bool attn_temperature;
    bool rope_long_short;    /* rope_factors_long/short.weight may be present (Phi-3 LongRoPE; llama.cpp
                                loads them for phi3 only and refuses them elsewhere as unused tensors) */
    ql_moe moe;
    bool moe_norm_weights;   /* the chosen experts' router probabilities are renormalised to sum 1 */
    bool qk_norm_full;       /* attn_q_norm / attn_k_norm normalise all of q / k at once (OLMoE), not each head */
    ql_moe_gating moe_gating;
    bool layer_norm;         /* LayerNorm (centred; key attention.layer_norm_epsilon) instead of RMSNorm (Cohere) */
    bool parallel_block;     /* attention and FFN both read the layer's one norm; x += ffn + attention (Cohere) */
    bool rope_swa_only;      /* with a window, only the sliding layers rotate: the global ones have no RoPE */
    bool swa_rope_global;    /* sliding layers rotate with the global base and scale (rope.freq_base_swa unused) */
    bool moe_dense_lead;     /* the first ARCH.leading_dense_block_count layers are dense (GLM-4.5) */
    /* EXAONE-4 (llama.cpp's rule): the window exists only in files of swa_layer_count layers (the 32B), and is
     * swa_default wide when the file does not say (0 and 0: any file, from the key) */
    int swa_layer_count, swa_default;
    bool logit_scale_mult;   /* logits multiplied by ARCH.logit_scale (Cohere; Granite divides by it) */
    /* gpt-oss stores its FFN's pre-norm as post_attention_norm.weight: loaded into ffn_norm */
    bool ffn_norm_is_post_attn_norm;
    ql_need need[QL_ROLE_COUNT]; /* of a dense layer; ql_arch_layer_need gives a MoE layer's */
} ql_arch;

/* The roles a layer of `a` needs when it has n_expert experts (0: a dense layer, also a MoE model's leading dense
 * ones): the description's, with the dense FFN projections swapped for the router and the expert tensors when the
 * layer is MoE. */
void ql_arch_layer_need(const ql_arch *a, int n_expert, ql_need need[QL_ROLE_COUNT]);
/* Role r's row length in architecture a: the role table's, except full-width q/k norms. */
ql_dim ql_arch_role_ne0(const ql_arch *a, ql_role r);

/* The description for general.architecture `name`, or NULL. */
const ql_arch *ql_arch_find(const char *name);
int ql_arch_count(void);
const ql_arch *ql_arch_at(int i);
/* "llama, mistral, qwen2, ..." for messages. */
void ql_arch_list(char *buf, size_t cap);

#endif
