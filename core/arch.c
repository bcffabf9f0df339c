/* arch.c — the role table and the architecture descriptions (see arch.h). Facts follow llama.cpp 34af94cd
 * (llama-arch.cpp tensor names, llama-model.cpp hparams and graph builders); the tiny models in
 * ../shared/testdata/arch-variants check them through tests/test_arch.c. */
#include "core/arch.h"

#include <stdio.h>
#include <string.h>

#define NONE QL_ROLE_COUNT
static const ql_role_info g_roles[QL_ROLE_COUNT] = {
    [QL_ROLE_ATTN_NORM] = {"attn_norm.weight", QL_DIM_EMBD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_Q] = {"attn_q.weight", QL_DIM_EMBD, QL_DIM_Q, QL_IN_ATTN, QL_ROLE_ATTN_QKV},
    [QL_ROLE_ATTN_K] = {"attn_k.weight", QL_DIM_EMBD, QL_DIM_KV, QL_IN_ATTN, QL_ROLE_ATTN_QKV},
    [QL_ROLE_ATTN_V] = {"attn_v.weight", QL_DIM_EMBD, QL_DIM_KV, QL_IN_ATTN, QL_ROLE_ATTN_QKV},
    [QL_ROLE_ATTN_QKV] = {"attn_qkv.weight", QL_DIM_EMBD, QL_DIM_QKV, QL_IN_ATTN, NONE},
    [QL_ROLE_ATTN_Q_BIAS] = {"attn_q.bias", QL_DIM_Q, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_K_BIAS] = {"attn_k.bias", QL_DIM_KV, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_V_BIAS] = {"attn_v.bias", QL_DIM_KV, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_Q_NORM] = {"attn_q_norm.weight", QL_DIM_HEAD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_K_NORM] = {"attn_k_norm.weight", QL_DIM_HEAD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_OUT] = {"attn_output.weight", QL_DIM_Q, QL_DIM_EMBD, QL_IN_ATTN_OUT, NONE},
    [QL_ROLE_ATTN_POST_NORM] = {"post_attention_norm.weight", QL_DIM_EMBD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_NORM] = {"ffn_norm.weight", QL_DIM_EMBD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_GATE] = {"ffn_gate.weight", QL_DIM_EMBD, QL_DIM_FF, QL_IN_FFN, QL_ROLE_FFN_GATE_UP},
    [QL_ROLE_FFN_UP] = {"ffn_up.weight", QL_DIM_EMBD, QL_DIM_FF, QL_IN_FFN, QL_ROLE_FFN_GATE_UP},
    [QL_ROLE_FFN_GATE_UP] = {"ffn_up.weight", QL_DIM_EMBD, QL_DIM_2FF, QL_IN_FFN, NONE},
    [QL_ROLE_FFN_DOWN] = {"ffn_down.weight", QL_DIM_FF, QL_DIM_EMBD, QL_IN_FFN_DOWN, NONE},
    [QL_ROLE_FFN_POST_NORM] = {"post_ffw_norm.weight", QL_DIM_EMBD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_GATE_INP] = {"ffn_gate_inp.weight", QL_DIM_EMBD, QL_DIM_EXPERT, QL_IN_NONE, NONE},
    /* an expert reads only the tokens routed to it; statistics pool every expert's rows (core/infer.c) */
    [QL_ROLE_FFN_GATE_EXPS] = {"ffn_gate_exps.weight", QL_DIM_EMBD, QL_DIM_FF_EXP, QL_IN_FFN, NONE, QL_DIM_EXPERT},
    [QL_ROLE_FFN_UP_EXPS] = {"ffn_up_exps.weight", QL_DIM_EMBD, QL_DIM_FF_EXP, QL_IN_FFN, NONE, QL_DIM_EXPERT},
    [QL_ROLE_FFN_DOWN_EXPS] = {"ffn_down_exps.weight", QL_DIM_FF_EXP, QL_DIM_EMBD, QL_IN_FFN_DOWN, NONE, QL_DIM_EXPERT},
    [QL_ROLE_FFN_GATE_INP_SHEXP] = {"ffn_gate_inp_shexp.weight", QL_DIM_EMBD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_GATE_SHEXP] = {"ffn_gate_shexp.weight", QL_DIM_EMBD, QL_DIM_FF_SHEXP, QL_IN_FFN, NONE},
    [QL_ROLE_FFN_UP_SHEXP] = {"ffn_up_shexp.weight", QL_DIM_EMBD, QL_DIM_FF_SHEXP, QL_IN_FFN, NONE},
    /* its input is narrower than the experts' pooled one (ffn_down_in): no statistics, so rtn (core/infer.c) */
    [QL_ROLE_FFN_DOWN_SHEXP] = {"ffn_down_shexp.weight", QL_DIM_FF_SHEXP, QL_DIM_EMBD, QL_IN_FFN_DOWN, NONE},
    [QL_ROLE_ATTN_OUT_BIAS] = {"attn_output.bias", QL_DIM_EMBD, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_ATTN_SINKS] = {"attn_sinks.weight", QL_DIM_HEADS, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_GATE_INP_BIAS] = {"ffn_gate_inp.bias", QL_DIM_EXPERT, QL_DIM_1, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_GATE_EXPS_BIAS] = {"ffn_gate_exps.bias", QL_DIM_FF_EXP, QL_DIM_EXPERT, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_UP_EXPS_BIAS] = {"ffn_up_exps.bias", QL_DIM_FF_EXP, QL_DIM_EXPERT, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_DOWN_EXPS_BIAS] = {"ffn_down_exps.bias", QL_DIM_EMBD, QL_DIM_EXPERT, QL_IN_NONE, NONE},
    [QL_ROLE_FFN_EXP_PROBS_B] = {"exp_probs_b.bias", QL_DIM_EXPERT, QL_DIM_1, QL_IN_NONE, NONE},
};
#undef NONE

const ql_role_info *ql_role_get(ql_role r) { return (unsigned)r < QL_ROLE_COUNT ? &g_roles[r] : NULL; }

/* Role sets, written once and combined per architecture below. R = required, O = optional. */
#define R QL_NEED_REQUIRED
#define O QL_NEED_OPTIONAL
#define ATTN_SEPARATE [QL_ROLE_ATTN_NORM] = R, [QL_ROLE_ATTN_Q] = R, [QL_ROLE_ATTN_K] = R, [QL_ROLE_ATTN_V] = R, \
                      [QL_ROLE_ATTN_OUT] = R
#define FFN_SEPARATE [QL_ROLE_FFN_NORM] = R, [QL_ROLE_FFN_GATE] = R, [QL_ROLE_FFN_UP] = R, [QL_ROLE_FFN_DOWN] = R
#define QKV_BIAS(n) [QL_ROLE_ATTN_Q_BIAS] = n, [QL_ROLE_ATTN_K_BIAS] = n, [QL_ROLE_ATTN_V_BIAS] = n
#define QK_NORM [QL_ROLE_ATTN_Q_NORM] = R, [QL_ROLE_ATTN_K_NORM] = R
#define POST_NORMS [QL_ROLE_ATTN_POST_NORM] = R, [QL_ROLE_FFN_POST_NORM] = R
#define FFN_MOE [QL_ROLE_FFN_NORM] = R, [QL_ROLE_FFN_GATE_INP] = R, [QL_ROLE_FFN_GATE_EXPS] = R, \
                [QL_ROLE_FFN_UP_EXPS] = R, [QL_ROLE_FFN_DOWN_EXPS] = R
#define FFN_SHEXP [QL_ROLE_FFN_GATE_INP_SHEXP] = R, [QL_ROLE_FFN_GATE_SHEXP] = R, [QL_ROLE_FFN_UP_SHEXP] = R, \
                  [QL_ROLE_FFN_DOWN_SHEXP] = R
/* Granite-MoE-shared: an ungated shared expert, present when the file says expert_shared_feed_forward_length */
#define FFN_SHEXP_UNGATED [QL_ROLE_FFN_GATE_SHEXP] = O, [QL_ROLE_FFN_UP_SHEXP] = O, [QL_ROLE_FFN_DOWN_SHEXP] = O

static const ql_arch g_arch[] = {
    /* Mixtral is `llama` with llama.expert_count: softmax router, top-k, weights renormalised (llm_build_llama) */
    {.name = "llama", .family = "llama", .moe = QL_MOE_BY_KEY, .moe_norm_weights = true,
     .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE}},
    /* Mistral GGUFs say "llama"; llama.cpp ignores Mistral-7B-v0.1's sliding window for both names */
    {.name = "mistral", .family = "llama", .moe = QL_MOE_BY_KEY, .moe_norm_weights = true,
     .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE}},
    {.name = "qwen2", .family = "qwen2", .rope_neox = true, .need = {ATTN_SEPARATE, QKV_BIAS(R), FFN_SEPARATE}},
    {.name = "qwen3", .family = "qwen3", .rope_neox = true, .need = {ATTN_SEPARATE, QK_NORM, FFN_SEPARATE}},
    /* Qwen3-30B-A3B / 235B-A22B: qwen3 attention, every layer MoE, top-k weights renormalised (norm_topk_prob) */
    {.name = "qwen3moe", .family = "qwen3moe", .rope_neox = true, .moe = QL_MOE_ALWAYS, .moe_norm_weights = true,
     .need = {ATTN_SEPARATE, QK_NORM, FFN_MOE}},
    /* Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B: qwen2 attention, experts without renormalisation plus a gated shared
     * expert (llm_build_qwen2moe) */
    {.name = "qwen2moe", .family = "qwen2moe", .rope_neox = true, .moe = QL_MOE_ALWAYS,
     .need = {ATTN_SEPARATE, QKV_BIAS(R), FFN_MOE, FFN_SHEXP}},
    /* OLMoE-1B-7B: RMSNorm over the whole of q and of k before RoPE, experts without renormalisation */
    {.name = "olmoe", .family = "olmoe", .rope_neox = true, .moe = QL_MOE_ALWAYS, .qk_norm_full = true,
     .need = {ATTN_SEPARATE, QK_NORM, FFN_MOE}},
    {.name = "gemma2", .family = "gemma2", .rope_neox = true, .ffn_act = QL_FFN_GEGLU_TANH, .embd_scale_sqrt = true,
     .swa_pattern = 2, .attn_scale_embd_layers = 46, .need = {ATTN_SEPARATE, POST_NORMS, FFN_SEPARATE}},
    {.name = "gemma3", .family = "gemma3", .rope_neox = true, .ffn_act = QL_FFN_GEGLU_TANH, .embd_scale_sqrt = true,
     .swa_pattern = 6, .attn_scale_embd_layers = 62, .swa_rope_unscaled = true,
     .need = {ATTN_SEPARATE, QK_NORM, POST_NORMS, FFN_SEPARATE}},
    {.name = "phi3", .family = "phi3", .rope_neox = true, .rope_long_short = true,
     .need = {[QL_ROLE_ATTN_NORM] = R, [QL_ROLE_ATTN_QKV] = R, [QL_ROLE_ATTN_OUT] = R, [QL_ROLE_FFN_NORM] = R,
              [QL_ROLE_FFN_GATE_UP] = R, [QL_ROLE_FFN_DOWN] = R}},
    /* Granite 3.x: llama with four multipliers (llm_build_granite); granitemoe: every layer MoE, renormalised,
     * with the optional ungated shared expert of Granite-MoE-shared */
    {.name = "granite", .family = "granite", .granite_scales = true, .moe = QL_MOE_BY_KEY, .moe_norm_weights = true,
     .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE, FFN_SHEXP_UNGATED}},
    {.name = "granitemoe", .family = "granite", .granite_scales = true, .moe = QL_MOE_ALWAYS, .moe_norm_weights = true,
     .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE, FFN_SHEXP_UNGATED}},
    /* OLMo-2 and OLMo-3: no pre-norms, a norm on each block's output, RMSNorm over the whole of q and of k; OLMo-3's
     * sliding window: 3 of every 4 layers, which rotate without its YaRN scaling */
    {.name = "olmo2", .family = "olmo2", .rope_neox = true, .qk_norm_full = true, .swa_pattern = 4,
     .swa_rope_unscaled = true, .swa_rope_plain = true,
     .need = {[QL_ROLE_ATTN_Q] = R, [QL_ROLE_ATTN_K] = R, [QL_ROLE_ATTN_V] = R, [QL_ROLE_ATTN_OUT] = R, QK_NORM,
              POST_NORMS, [QL_ROLE_FFN_GATE] = R, [QL_ROLE_FFN_UP] = R, [QL_ROLE_FFN_DOWN] = R}},
    /* SmolLM3: llama whose every 4th layer has no RoPE */
    {.name = "smollm3", .family = "llama", .nope_period = 4, .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE}},
    /* EXAONE 3.x: llama with NEOX RoPE */
    {.name = "exaone", .family = "llama", .rope_neox = true, .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE}},
    /* gpt-oss-20b / 120b (llm_build_openai_moe): biases on q/k/v, the attention output, the router and every
     * expert projection; a softmax sink per head; a window of 128 on every other layer (even ones); the top 4
     * router logits softmaxed; SwiGLU-OAI experts (MXFP4 in the released files); the FFN's pre-norm stored as
     * post_attention_norm */
    {.name = "gpt-oss", .family = "gpt-oss", .rope_neox = true, .swa_pattern = 2, .ffn_act = QL_FFN_SWIGLU_OAI,
     .moe = QL_MOE_ALWAYS, .moe_gating = QL_GATING_TOPK_SOFTMAX, .ffn_norm_is_post_attn_norm = true,
     .need = {[QL_ROLE_ATTN_NORM] = R, [QL_ROLE_ATTN_Q] = R, [QL_ROLE_ATTN_K] = R, [QL_ROLE_ATTN_V] = R, QKV_BIAS(R),
              [QL_ROLE_ATTN_OUT] = R, [QL_ROLE_ATTN_OUT_BIAS] = R, [QL_ROLE_ATTN_SINKS] = R,
              [QL_ROLE_ATTN_POST_NORM] = R, [QL_ROLE_FFN_GATE_INP] = R, [QL_ROLE_FFN_GATE_INP_BIAS] = R,
              [QL_ROLE_FFN_GATE_EXPS] = R, [QL_ROLE_FFN_UP_EXPS] = R, [QL_ROLE_FFN_DOWN_EXPS] = R,
              [QL_ROLE_FFN_GATE_EXPS_BIAS] = R, [QL_ROLE_FFN_UP_EXPS_BIAS] = R, [QL_ROLE_FFN_DOWN_EXPS_BIAS] = R}},
    /* ERNIE-4.5 dense (0.3B): llama (llm_build_ernie4_5 loads an attention output bias but never adds it; the
     * released models have none) */
    {.name = "ernie4_5", .family = "llama", .need = {ATTN_SEPARATE, QKV_BIAS(O), FFN_SEPARATE}},
    /* Seed-OSS-36B: NEOX RoPE, optional q/k/v biases, the FFN's pre-norm stored as post_attention_norm */
    {.name = "seed_oss", .family = "seed_oss", .rope_neox = true, .ffn_norm_is_post_attn_norm = true,
     .need = {[QL_ROLE_ATTN_NORM] = R, [QL_ROLE_ATTN_Q] = R, [QL_ROLE_ATTN_K] = R, [QL_ROLE_ATTN_V] = R, QKV_BIAS(O),
              [QL_ROLE_ATTN_OUT] = R, [QL_ROLE_ATTN_POST_NORM] = R, [QL_ROLE_FFN_GATE] = R, [QL_ROLE_FFN_UP] = R,
              [QL_ROLE_FFN_DOWN] = R}},
    /* EXAONE-4.0: OLMo-2's post-norm layout with per-head q/k norms; the 32B (64 layers) slides on 3 of every 4
     * layers (4096 unless the file says) and rotates only those, with the global base */
    {.name = "exaone4", .family = "exaone4", .rope_neox = true, .swa_pattern = 4, .rope_swa_only = true,
     .swa_rope_global = true, .swa_layer_count = 64, .swa_default = 4096,
     .need = {[QL_ROLE_ATTN_Q] = R, [QL_ROLE_ATTN_K] = R, [QL_ROLE_ATTN_V] = R, QKV_BIAS(O), [QL_ROLE_ATTN_OUT] = R,
              QK_NORM, POST_NORMS, [QL_ROLE_FFN_GATE] = R, [QL_ROLE_FFN_UP] = R, [QL_ROLE_FFN_DOWN] = R}},
    /* Command R7B / Command A (cohere2): LayerNorm, attention and FFN in parallel from one norm, a window on 3 of
     * every 4 layers, which alone rotate (with the global base), tied output, logits times logit_scale */
    {.name = "cohere2", .family = "cohere2", .layer_norm = true, .parallel_block = true, .swa_pattern = 4,
     .rope_swa_only = true, .swa_rope_global = true, .logit_scale_mult = true,
     .need = {ATTN_SEPARATE, QKV_BIAS(O), [QL_ROLE_ATTN_OUT_BIAS] = O, [QL_ROLE_FFN_GATE] = R, [QL_ROLE_FFN_UP] = R,
              [QL_ROLE_FFN_DOWN] = R}},
    /* GLM-4.5 / 4.5-Air / 4.6 (glm4moe): NEOX RoPE over half of each head, q/k/v biases, optional per-head q/k
     * norms, the FFN norm under post_attention_norm; after the leading dense layers, experts chosen by a sigmoid
     * with a selection bias, their weights renormalised and scaled (ARCH.expert_weights_scale), and ungated shared
     * experts (ARCH.expert_shared_count of the expert width); the trailing nextn_predict_layers (multi-token
     * prediction) are not part of the forward pass */
    {.name = "glm4moe", .family = "glm4moe", .rope_neox = true, .moe = QL_MOE_ALWAYS,
     .moe_gating = QL_GATING_SIGMOID, .moe_dense_lead = true, .ffn_norm_is_post_attn_norm = true,
     .need = {[QL_ROLE_ATTN_NORM] = R, [QL_ROLE_ATTN_Q] = R, [QL_ROLE_ATTN_K] = R, [QL_ROLE_ATTN_V] = R, QKV_BIAS(O),
              [QL_ROLE_ATTN_Q_NORM] = O, [QL_ROLE_ATTN_K_NORM] = O, [QL_ROLE_ATTN_OUT] = R,
              [QL_ROLE_ATTN_POST_NORM] = R, [QL_ROLE_FFN_GATE] = R, [QL_ROLE_FFN_UP] = R, [QL_ROLE_FFN_DOWN] = R,
              FFN_SHEXP_UNGATED}},
    /* GLM-4 (-0414, dense): adjacent-pair RoPE over half of each head, q/k/v biases, gate and up fused in ffn_up,
     * norms on both blocks' outputs as well as their inputs */
    {.name = "glm4", .family = "glm4",
     .need = {ATTN_SEPARATE, QKV_BIAS(O), POST_NORMS, [QL_ROLE_FFN_NORM] = R, [QL_ROLE_FFN_GATE_UP] = R,
              [QL_ROLE_FFN_DOWN] = R}},
    /* Ministral-3 and Mistral-Small-3.x as converted since late 2025: llama with YaRN and the temperature tuning */
    {.name = "mistral3", .family = "llama", .attn_temperature = true, .moe = QL_MOE_BY_KEY, .moe_norm_weights = true,
     .need = {ATTN_SEPARATE, FFN_SEPARATE}},
};
#undef R
#undef O
#undef ATTN_SEPARATE
#undef FFN_SEPARATE
#undef QKV_BIAS
#undef QK_NORM
#undef POST_NORMS
#undef FFN_MOE
#undef FFN_SHEXP
#undef FFN_SHEXP_UNGATED

void ql_arch_layer_need(const ql_arch *a, int n_expert, ql_need need[QL_ROLE_COUNT]) {
    for (int r = 0; r < QL_ROLE_COUNT; r++) need[r] = a->need[r];
    if (a->moe == QL_MOE_NEVER || n_expert <= 0) { /* dense (or a leading dense layer): no shared expert either */
        need[QL_ROLE_FFN_GATE_INP_SHEXP] = need[QL_ROLE_FFN_GATE_SHEXP] = need[QL_ROLE_FFN_UP_SHEXP] =
            need[QL_ROLE_FFN_DOWN_SHEXP] = QL_NEED_ABSENT;
        return;
    }
    need[QL_ROLE_FFN_GATE] = need[QL_ROLE_FFN_UP] = need[QL_ROLE_FFN_GATE_UP] = need[QL_ROLE_FFN_DOWN] = QL_NEED_ABSENT;
    need[QL_ROLE_FFN_GATE_INP] = need[QL_ROLE_FFN_GATE_EXPS] = need[QL_ROLE_FFN_UP_EXPS] = need[QL_ROLE_FFN_DOWN_EXPS] =
        QL_NEED_REQUIRED;
    if (a->moe_gating == QL_GATING_SIGMOID) need[QL_ROLE_FFN_EXP_PROBS_B] = QL_NEED_REQUIRED;
}

ql_dim ql_arch_role_ne0(const ql_arch *a, ql_role r) {
    if (a && a->qk_norm_full && r == QL_ROLE_ATTN_Q_NORM) return QL_DIM_Q;
    if (a && a->qk_norm_full && r == QL_ROLE_ATTN_K_NORM) return QL_DIM_KV;
    return g_roles[r].ne0;
}

int ql_arch_count(void) { return (int)QL_ARRAY_LEN(g_arch); }
const ql_arch *ql_arch_at(int i) { return i >= 0 && i < ql_arch_count() ? &g_arch[i] : NULL; }

const ql_arch *ql_arch_find(const char *name) {
    for (size_t i = 0; name && i < QL_ARRAY_LEN(g_arch); i++)
        if (strcmp(g_arch[i].name, name) == 0) return &g_arch[i];
    return NULL;
}

void ql_arch_list(char *buf, size_t cap) {
    size_t used = 0;
    if (cap) buf[0] = 0;
    for (size_t i = 0; i < QL_ARRAY_LEN(g_arch); i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", g_arch[i].name);
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
    }
}

int ql_role_of_name(const char *name, int *layer) {
    int l = -1, off = 0;
    if (sscanf(name, "blk.%d.%n", &l, &off) != 1 || off <= 0) return -1;
    if (layer) *layer = l;
    for (int r = 0; r < QL_ROLE_COUNT; r++)
        if (r != QL_ROLE_FFN_GATE_UP && strcmp(name + off, g_roles[r].suffix) == 0) return r;
    return -1;
}
