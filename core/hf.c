/* hf.c — Hugging Face model folders (config.json + model.safetensors or shards listed in
 * model.safetensors.index.json + tokenizer.json) to and from the common ql_gguf representation, for
 * each transformers class in the architecture table (g_archs): llama.cpp's tensor names and metadata
 * keys, GGUF (rope-interleaved) q/k row order for llama, Gemma's 1 + w norms, and the tensors llama.cpp's
 * converter derives from config.json (llama3 rope_freqs, Phi-3 LongRoPE factors).
 * Loaded tensors point into the mmapped shards (adopted by the ql_gguf) except where bytes must change
 * (llama q/k permutation, Gemma norms, misaligned data), which live in buffers the ql_gguf owns.
 * ql_hf_save writes config.json and one model.safetensors whose "__metadata__" carries every GGUF key
 * config.json does not give back (tokenizer included) so HF -> GGUF -> HF -> GGUF round-trips exactly.
 * A folder with a quantization_config (GPTQ, AWQ, compressed-tensors, bitsandbytes) is read with every
 * safetensors dtype and its quantized modules become registry-format tensors in core/hf_quant.c.
 * No global state: concurrent loads/saves of different folders are fine. */
#include "core/model.h"
#include "core/hf_quant.h"
#include "kernels/ggml_types.h"
#include "base/atomic_file.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#define QLAB_META_PREFIX "qlab.gguf." /* decoded in core/safetensors.c */

/* ---------------------------------------------------------------- rope permutation */

/* HF stores each head's q/k rows as [first halves of the rotated pairs; second halves]; GGUF stores
 * the pairs adjacent. Within head h (head_dim rows), GGUF row 2j+s is HF row s*head_dim/2 + j.
 * This is convert_hf_to_gguf's reshape(n_head, 2, hd/2, cols).swapaxes(1, 2). */
void ql_rope_permute_rows(void *dst, const void *src, int n_head, int64_t rows, size_t row_bytes,
                          bool to_gguf) {
    if (rows <= 0) return;
    if (n_head <= 0 || rows % n_head || (rows / n_head) % 2) {
        memcpy(dst, src, (size_t)rows * row_bytes); /* no valid head split: leave the order alone */
        return;
    }
    const int64_t hd = rows / n_head, half = hd / 2;
    uint8_t *d = dst;
    const uint8_t *s = src;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t j = 0; j < half; j++)
            for (int64_t k = 0; k < 2; k++) {
                int64_t gg = h * hd + 2 * j + k, hf = h * hd + k * half + j;
                int64_t to = to_gguf ? gg : hf, from = to_gguf ? hf : gg;
                memcpy(d + (size_t)to * row_bytes, s + (size_t)from * row_bytes, row_bytes);
            }
}

/* ---------------------------------------------------------------- architectures */

/* One layer tensor's name in both spellings (without "model.layers.N." / "blk.N." and the
 * ".weight"/".bias" suffix). Order in a table is the order tensors get inside a layer. */
typedef struct {
    const char *hf, *gg;
    int role;
} layer_name;
enum { ROLE_OTHER = 0, ROLE_Q = 1, ROLE_K = 2 };

static const layer_name g_llama_layers[] = {
    {"input_layernorm", "attn_norm", 0},    {"self_attn.q_proj", "attn_q", ROLE_Q},
    {"self_attn.k_proj", "attn_k", ROLE_K}, {"self_attn.v_proj", "attn_v", 0},
    {"self_attn.q_norm", "attn_q_norm", 0}, {"self_attn.k_norm", "attn_k_norm", 0},
    {"self_attn.o_proj", "attn_output", 0}, {"post_attention_layernorm", "ffn_norm", 0},
    {"mlp.gate_proj", "ffn_gate", 0},       {"mlp.up_proj", "ffn_up", 0},
    {"mlp.down_proj", "ffn_down", 0},
};
/* Gemma 2/3 norm around both halves of a layer: HF's post_attention_layernorm is the norm *after*
 * attention (llama.cpp's post_attention_norm), not the pre-FFN norm it is in llama. */
static const layer_name g_gemma_layers[] = {
    {"input_layernorm", "attn_norm", 0},
    {"self_attn.q_proj", "attn_q", ROLE_Q},
    {"self_attn.k_proj", "attn_k", ROLE_K},
    {"self_attn.v_proj", "attn_v", 0},
    {"self_attn.q_norm", "attn_q_norm", 0},
    {"self_attn.k_norm", "attn_k_norm", 0},
    {"self_attn.o_proj", "attn_output", 0},
    {"post_attention_layernorm", "post_attention_norm", 0},
    {"pre_feedforward_layernorm", "ffn_norm", 0},
    {"mlp.gate_proj", "ffn_gate", 0},
    {"mlp.up_proj", "ffn_up", 0},
    {"mlp.down_proj", "ffn_down", 0},
    {"post_feedforward_layernorm", "post_ffw_norm", 0},
};
/* Phi-3 keeps its fused projections under llama.cpp's names (attn_qkv rows: q, k, v; ffn_up rows:
 * gate, up), exactly as convert_hf_to_gguf.py writes them. */
static const layer_name g_phi3_layers[] = {
    {"input_layernorm", "attn_norm", 0},     {"self_attn.qkv_proj", "attn_qkv", 0},
    {"self_attn.o_proj", "attn_output", 0},  {"post_attention_layernorm", "ffn_norm", 0},
    {"mlp.gate_up_proj", "ffn_up", 0},       {"mlp.down_proj", "ffn_down", 0},
};

/* OLMo-2/3: no pre-norms; HF's post_attention_layernorm / post_feedforward_layernorm normalise the blocks'
 * outputs (llama.cpp's post norms); q_norm / k_norm span all heads. */
static const layer_name g_olmo2_layers[] = {
    {"self_attn.q_proj", "attn_q", 0},
    {"self_attn.k_proj", "attn_k", 0},
    {"self_attn.v_proj", "attn_v", 0},
    {"self_attn.q_norm", "attn_q_norm", 0},
    {"self_attn.k_norm", "attn_k_norm", 0},
    {"self_attn.o_proj", "attn_output", 0},
    {"post_attention_layernorm", "post_attention_norm", 0},
    {"mlp.gate_proj", "ffn_gate", 0},
    {"mlp.up_proj", "ffn_up", 0},
    {"mlp.down_proj", "ffn_down", 0},
    {"post_feedforward_layernorm", "post_ffw_norm", 0},
};

/* Seed-OSS: llama's names, but its post_attention_layernorm (the FFN's pre-norm) keeps the name llama.cpp's
 * converter gives it, post_attention_norm (core/arch.c loads it as the FFN norm). */
static const layer_name g_seed_oss_layers[] = {
    {"input_layernorm", "attn_norm", 0},    {"self_attn.q_proj", "attn_q", 0},
    {"self_attn.k_proj", "attn_k", 0},      {"self_attn.v_proj", "attn_v", 0},
    {"self_attn.o_proj", "attn_output", 0}, {"post_attention_layernorm", "post_attention_norm", 0},
    {"mlp.gate_proj", "ffn_gate", 0},       {"mlp.up_proj", "ffn_up", 0},
    {"mlp.down_proj", "ffn_down", 0},
};
/* GLM-4: norms before and after both blocks, gate and up fused (gate rows first, as llama.cpp's SwiGLU splits) */
static const layer_name g_glm4_layers[] = {
    {"input_layernorm", "attn_norm", 0},
    {"self_attn.q_proj", "attn_q", 0},
    {"self_attn.k_proj", "attn_k", 0},
    {"self_attn.v_proj", "attn_v", 0},
    {"self_attn.o_proj", "attn_output", 0},
    {"post_self_attn_layernorm", "post_attention_norm", 0},
    {"post_attention_layernorm", "ffn_norm", 0},
    {"mlp.gate_up_proj", "ffn_up", 0},
    {"mlp.down_proj", "ffn_down", 0},
    {"post_mlp_layernorm", "post_ffw_norm", 0},
};

/* Tensors every layer must have (GGUF names after "blk.N."). */
#define REQ_ATTN "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight"
#define REQ_FFN "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"
static const char *const g_req_llama[] = {REQ_ATTN, REQ_FFN, NULL};
static const char *const g_req_qwen3[] = {REQ_ATTN, REQ_FFN, "attn_q_norm.weight", "attn_k_norm.weight", NULL};
static const char *const g_req_gemma2[] = {REQ_ATTN, REQ_FFN, "post_attention_norm.weight", "post_ffw_norm.weight",
                                           NULL};
static const char *const g_req_gemma3[] = {REQ_ATTN,
                                           REQ_FFN,
                                           "post_attention_norm.weight",
                                           "post_ffw_norm.weight",
                                           "attn_q_norm.weight",
                                           "attn_k_norm.weight",
                                           NULL};
static const char *const g_req_olmo2[] = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                          "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                                          "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "post_ffw_norm.weight",
                                          NULL};
static const char *const g_req_exaone4[] = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                            "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                                            "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "post_ffw_norm.weight",
                                            NULL};
static const char *const g_req_seed_oss[] = {REQ_ATTN, "post_attention_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                                             "ffn_down.weight", NULL};
static const char *const g_req_glm4[] = {REQ_ATTN, "post_attention_norm.weight", "ffn_norm.weight", "ffn_up.weight",
                                         "ffn_down.weight", "post_ffw_norm.weight", NULL};
static const char *const g_req_cohere2[] = {REQ_ATTN, "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", NULL};
static const char *const g_req_phi3[] = {"attn_norm.weight", "attn_qkv.weight", "attn_output.weight",
                                         "ffn_norm.weight",  "ffn_up.weight",   "ffn_down.weight",
                                         NULL};

/* Everything that differs between the architectures on the Hugging Face side. The numerics a model
 * needs (rope style, norms, activation) are core/model.c's business; this is only names, layouts and
 * config.json fields. */
typedef struct {
    const char *model_type, *hf_class, *arch; /* config.json model_type / architectures[0]; GGUF arch */
    const layer_name *layers;
    size_t n_layers;
    const char *const *required;
    bool permute;    /* llama-style rope: q/k rows need the HF -> GGUF permutation */
    bool norm_shift; /* HF RMSNorm computes x * (1 + w); llama.cpp's converter stores 1 + w */
    bool nested;     /* the text model's parameters may sit under "text_config" */
    /* defaults where transformers' config class (and llama.cpp's converter) supply one; 0 = required */
    int64_t def_heads, def_heads_kv, def_head_dim, def_ctx;
    double def_eps, def_theta;
    int64_t swa_pattern; /* llama.cpp's built-in sliding-window period (0: no sliding window) */
    bool trim_vocab;     /* embedding rows past the tokenizer's vocabulary are dropped (Gemma 3's padding) */
    const char *const *scalars; /* config.json number, GGUF key (after "ARCH.") pairs copied both ways; NULL ends */
} hf_arch;

/* Granite's multipliers, as llama.cpp's converter names them */
static const char *const g_cohere2_scalars[] = {"logit_scale", "logit_scale", NULL};
static const char *const g_granite_scalars[] = {"embedding_multiplier", "embedding_scale", "residual_multiplier",
                                                "residual_scale", "attention_multiplier", "attention.scale",
                                                "logits_scaling", "logit_scale", NULL};
enum { HF_MAX_SCALARS = 4 };

#define LAYERS(t) t, QL_ARRAY_LEN(t)
static const hf_arch g_archs[] = {
    /* model_type, class, arch, layers, required, permute, norm_shift, nested,
       default heads, kv heads, head_dim, context, eps, rope base, sliding period, trim_vocab, scalars */
    {"llama", "LlamaForCausalLM", "llama", LAYERS(g_llama_layers), g_req_llama, true, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"mistral", "MistralForCausalLM", "llama", LAYERS(g_llama_layers), g_req_llama, true, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"qwen2", "Qwen2ForCausalLM", "qwen2", LAYERS(g_llama_layers), g_req_llama /* q/k/v biases optional */, false,
     false, false, 0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"qwen3", "Qwen3ForCausalLM", "qwen3", LAYERS(g_llama_layers), g_req_qwen3, false, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"gemma2", "Gemma2ForCausalLM", "gemma2", LAYERS(g_gemma_layers), g_req_gemma2, false, true, false,
     0, 0, 0, 0, 0, 10000.0, 2, false, NULL},
    {"gemma3_text", "Gemma3ForCausalLM", "gemma3", LAYERS(g_gemma_layers), g_req_gemma3, false, true, false,
     8, 4, 256, 131072, 1e-6, 1e6, 6, true, NULL},
    {"gemma3", "Gemma3ForConditionalGeneration", "gemma3", LAYERS(g_gemma_layers), g_req_gemma3, false, true, true,
     8, 4, 256, 131072, 1e-6, 1e6, 6, true, NULL},
    {"phi3", "Phi3ForCausalLM", "phi3", LAYERS(g_phi3_layers), g_req_phi3, false, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"granite", "GraniteForCausalLM", "granite", LAYERS(g_llama_layers), g_req_llama, true, false, false,
     0, 0, 0, 0, 0, 0, 0, false, g_granite_scalars},
    {"smollm3", "SmolLM3ForCausalLM", "smollm3", LAYERS(g_llama_layers), g_req_llama, true, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"olmo2", "Olmo2ForCausalLM", "olmo2", LAYERS(g_olmo2_layers), g_req_olmo2, false, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    /* OLMo-3: OLMo-2's layers with a sliding window on 3 of every 4 (layer_types) */
    {"olmo3", "Olmo3ForCausalLM", "olmo2", LAYERS(g_olmo2_layers), g_req_olmo2, false, false, false,
     0, 0, 0, 0, 0, 0, 4, false, NULL},
    /* EXAONE-4: OLMo-2's names (its q/k norms are per head); the 32B's window by layer_types */
    {"exaone4", "Exaone4ForCausalLM", "exaone4", LAYERS(g_olmo2_layers), g_req_exaone4, false, false, false,
     0, 0, 0, 0, 0, 0, 4, false, NULL},
    {"seed_oss", "SeedOssForCausalLM", "seed_oss", LAYERS(g_seed_oss_layers), g_req_seed_oss, false, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"ernie4_5", "Ernie4_5ForCausalLM", "ernie4_5", LAYERS(g_llama_layers), g_req_llama, false, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    {"glm4", "Glm4ForCausalLM", "glm4", LAYERS(g_glm4_layers), g_req_glm4, false, false, false,
     0, 0, 0, 0, 0, 0, 0, false, NULL},
    /* Command R7B: llama's names without the FFN norm (its block is parallel), LayerNorm weights, interleaved
     * rotary as GGUF keeps it (no permutation), a tied output unless the config says otherwise */
    {"cohere2", "Cohere2ForCausalLM", "cohere2", LAYERS(g_llama_layers), g_req_cohere2, false, false, false,
     0, 0, 0, 0, 1e-5, 0, 4, false, g_cohere2_scalars},
};
#define SUPPORTED_TYPES "llama, mistral, qwen2, qwen3, gemma2, gemma3, gemma3_text, phi3, granite, smollm3, olmo2, olmo3, cohere2, exaone4, seed_oss, ernie4_5, glm4"

/* LayerNorm architectures keep their epsilon under other names, in config.json and in GGUF. */
static bool uses_layer_norm(const char *gguf_arch) {
    const ql_arch *d = ql_arch_find(gguf_arch);
    return d && d->layer_norm;
}
static const char *gguf_eps_key(const char *gguf_arch) {
    return uses_layer_norm(gguf_arch) ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon";
}

/* The entry ql_hf_save writes for a GGUF file: the first with its architecture, preferring one with a sliding
 * window when the file has one (olmo2 with a window is OLMo-3) and one without when it has none. */
static const hf_arch *arch_for_gguf(const ql_gguf *g) {
    const char *arch = ql_gguf_get_str(g, "general.architecture");
    if (!arch) arch = "llama";
    char k[96];
    int64_t swa = 0;
    snprintf(k, sizeof k, "%s.attention.sliding_window", arch);
    const bool window = ql_gguf_get_int(g, k, &swa) && swa > 0;
    const hf_arch *first = NULL;
    for (size_t i = 0; i < QL_ARRAY_LEN(g_archs); i++) {
        if (strcmp(arch, g_archs[i].arch) != 0) continue;
        if ((g_archs[i].swa_pattern > 0) == window) return &g_archs[i];
        if (!first) first = &g_archs[i];
    }
    return first;
}

/* ---------------------------------------------------------------- tensor names */

/* group: 0 embedding, 1 layers, 2 final norm, 3 classifier, 4 anything else */
static const struct {
    const char *hf, *gg;
} g_global_names[] = {
    {"model.embed_tokens", "token_embd"},
    {NULL, NULL},
    {"model.norm", "output_norm"},
    {"lm_head", "output"},
};

typedef struct {
    int group, layer, role, bias;
    int index; /* position in the architecture's layer table */
} name_info;

/* Maps a tensor name between HF and GGUF spelling for architecture `a`. Names it does not know are
 * passed through unchanged (group 4). Returns a malloc'ed string. */
static char *map_name(const char *name, bool to_gguf, const hf_arch *a, name_info *ni) {
    memset(ni, 0, sizeof *ni);
    ni->group = 4;
    ni->layer = -1;
    ni->index = -1;
    if (!a) a = &g_archs[0];
    size_t len = strlen(name), stem;
    const char *suffix;
    if (len > 7 && strcmp(name + len - 7, ".weight") == 0)
        stem = len - 7, suffix = "weight";
    else if (len > 5 && strcmp(name + len - 5, ".bias") == 0)
        stem = len - 5, suffix = "bias", ni->bias = 1;
    else
        return ql_strdup(name);
    const char *pfx_in = to_gguf ? "model.layers." : "blk.", *pfx_out = to_gguf ? "blk." : "model.layers.";
    size_t pl = strlen(pfx_in);
    char buf[512];
    if (stem > pl && strncmp(name, pfx_in, pl) == 0) {
        const char *p = name + pl;
        int layer = 0, nd = 0;
        while (*p >= '0' && *p <= '9' && nd < 7) layer = layer * 10 + (*p++ - '0'), nd++;
        if (nd == 0 || nd == 7 || *p != '.') return ql_strdup(name);
        p++;
        size_t mlen = (size_t)(name + stem - p);
        for (size_t i = 0; i < a->n_layers; i++) {
            const char *in = to_gguf ? a->layers[i].hf : a->layers[i].gg;
            const char *out = to_gguf ? a->layers[i].gg : a->layers[i].hf;
            if (strlen(in) == mlen && strncmp(p, in, mlen) == 0) {
                snprintf(buf, sizeof buf, "%s%d.%s.%s", pfx_out, layer, out, suffix);
                ni->group = 1, ni->layer = layer, ni->role = a->layers[i].role, ni->index = (int)i;
                return ql_strdup(buf);
            }
        }
        return ql_strdup(name);
    }
    for (size_t i = 0; i < QL_ARRAY_LEN(g_global_names); i++) {
        const char *in = to_gguf ? g_global_names[i].hf : g_global_names[i].gg;
        const char *out = to_gguf ? g_global_names[i].gg : g_global_names[i].hf;
        if (in && strlen(in) == stem && strncmp(name, in, stem) == 0) {
            snprintf(buf, sizeof buf, "%s.%s", out, suffix);
            ni->group = (int)i;
            return ql_strdup(buf);
        }
    }
    return ql_strdup(name);
}

/* Multimodal checkpoints (Gemma 3 4B+) keep the text model under a prefix and carry a vision tower
 * llama.cpp's text GGUF leaves out. Returns the text-model name (malloc'ed) or NULL to skip. */
static char *text_model_name(const char *name) {
    static const char *skip[] = {"vision_tower.", "multi_modal_projector.", "multimodal_projector.",
                                 "vision_model.", "model.vision_tower.", "model.multi_modal_projector."};
    for (size_t i = 0; i < QL_ARRAY_LEN(skip); i++)
        if (strncmp(name, skip[i], strlen(skip[i])) == 0) return NULL;
    static const struct {
        const char *from, *to;
    } strip[] = {{"language_model.model.", "model."},
                 {"model.language_model.", "model."},
                 {"language_model.lm_head.", "lm_head."}};
    for (size_t i = 0; i < QL_ARRAY_LEN(strip); i++) {
        size_t fl = strlen(strip[i].from);
        if (strncmp(name, strip[i].from, fl) == 0) {
            size_t tl = strlen(strip[i].to), rl = strlen(name + fl);
            char *r = ql_malloc(tl + rl + 1);
            memcpy(r, strip[i].to, tl);
            memcpy(r + tl, name + fl, rl + 1);
            return r;
        }
    }
    return ql_strdup(name);
}

/* RMSNorm weights llama.cpp's converter shifts for Gemma ("...norm.weight" on both sides). */
static bool is_norm_weight(const char *name) {
    size_t n = strlen(name);
    return n >= 11 && strcmp(name + n - 11, "norm.weight") == 0;
}

/* ---------------------------------------------------------------- small helpers */

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = ql_malloc(a + b + 2);
    memcpy(p, dir, a);
    size_t n = a;
    if (a && dir[a - 1] != '/') p[n++] = '/';
    memcpy(p + n, name, b + 1);
    return p;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static size_t type_elem_size(uint32_t type) {
    return type == QL_TYPE_F32 ? 4 : (type == QL_TYPE_F16 || type == QL_TYPE_BF16) ? 2 : 0;
}

/* 1: present and an integral number (stored in *out); 0: absent or null; -1: anything else. */
static int json_get_int(const json_t *o, const char *key, int64_t *out) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e15) {
            *out = (int64_t)d;
            return 1;
        }
    }
    return -1;
}

static int json_get_f64(const json_t *o, const char *key, double *out) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return -1;
    *out = json_number_value(v);
    return isfinite(*out) ? 1 : -1;
}

/* A token id is an integer or (eos in newer configs) a list whose first entry is used. */
static bool json_get_token_id(const json_t *o, const char *key, int64_t *out) {
    const json_t *v = json_object_get(o, key);
    if (json_is_array(v)) v = json_array_get(v, 0);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) return false;
    *out = json_integer_value(v);
    return true;
}

static ql_status load_json(const char *path, json_t **out) {
    json_error_t err;
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!*out) {
        if (!file_exists(path)) return ql_fail(QL_ERR_IO, "%s: cannot read", path);
        return ql_fail(QL_ERR_FORMAT, "%s: line %d: %s", path, err.line, err.text);
    }
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return ql_fail(QL_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- config.json */

typedef struct {
    const hf_arch *a;
    char arch[16];
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx, head_dim, rope_dims;
    bool tied;
    double eps, rope_base;
    char rope_type[16]; /* rope.scaling.type written to GGUF: "" (none), linear or yarn */
    double rope_factor;
    int64_t orig_ctx;                      /* rope.scaling.original_context_length; 0: not written */
    double attn_factor;                    /* rope.scaling.attn_factor; 0: not written */
    double yarn_beta_fast, yarn_beta_slow; /* 0: not written */
    bool llama3;                           /* rope_freqs.weight from these: */
    double l3_factor, l3_lo, l3_hi;
    int64_t l3_ctx;
    const json_t *long_factor, *short_factor; /* Phi-3 LongRoPE (borrowed from the config JSON) */
    int64_t sliding_window, swa_pattern;      /* 0: none / the architecture's default; -1: per layer: */
    uint8_t *swa_layers;                      /* n_layer flags (1: slides) when no period describes them */
    double attn_softcap, final_softcap, rope_base_swa; /* 0: not written */
    double scalars[HF_MAX_SCALARS];           /* the architecture's scalars (hf_arch.scalars); 0: not written */
    int64_t bos, eos; /* -1 when not given */
} hf_config;

static ql_status cfg_int(const char *path, const json_t *o, const char *key, bool required, int64_t def,
                         int64_t lo, int64_t hi, int64_t *out) {
    int r = json_get_int(o, key, out);
    if (r == 0) {
        if (required) return ql_fail(QL_ERR_FORMAT, "%s: missing '%s'", path, key);
        *out = def;
        return QL_OK;
    }
    if (r < 0 || *out < lo || *out > hi)
        return ql_fail(QL_ERR_FORMAT, "%s: '%s' must be an integer in [%lld, %lld]", path, key, (long long)lo,
                       (long long)hi);
    return QL_OK;
}

static ql_status cfg_f64(const char *path, const json_t *o, const char *key, double def, double *out) {
    int r = json_get_f64(o, key, out);
    if (r == 0) *out = def;
    if (r < 0 || !(*out > 0)) return ql_fail(QL_ERR_FORMAT, "%s: '%s' must be a positive number", path, key);
    return QL_OK;
}

/* A soft-cap: absent -> def, null -> 0 (none), else a positive number. */
static ql_status cfg_cap(const char *path, const json_t *o, const char *key, double def, double *out) {
    const json_t *v = json_object_get(o, key);
    if (!v) {
        *out = def;
        return QL_OK;
    }
    if (json_is_null(v)) {
        *out = 0;
        return QL_OK;
    }
    return cfg_f64(path, o, key, def, out);
}

/* The sliding-window layers from "layer_types" (["sliding_attention", ..., "full_attention"]) or
 * "sliding_window_pattern" (a period, or one bool per layer, true: it slides). A period is kept as one
 * (layer i is global when (i + 1) % period == 0, as llama.cpp's set_swa_pattern and transformers' Gemma
 * classes both count); any other layout becomes c->swa_layers (pattern -1), written to GGUF as the per-layer
 * bool array newer llama.cpp reads. */
static ql_status cfg_swa_pattern(const char *path, const json_t *p, hf_config *c, int64_t *pattern) {
    const json_t *lt = json_object_get(p, "layer_types");
    const char *key = "layer_types";
    if (!lt || json_is_null(lt)) {
        lt = json_object_get(p, key = "sliding_window_pattern");
        if (!json_is_array(lt)) return cfg_int(path, p, key, false, c->a->swa_pattern, 1, 1 << 20, pattern);
    }
    if (!json_is_array(lt) || (int64_t)json_array_size(lt) != c->n_layer)
        return ql_fail(QL_ERR_FORMAT, "%s: '%s' must list %lld layers", path, key, (long long)c->n_layer);
    uint8_t *slides = ql_malloc((size_t)c->n_layer);
    for (int64_t i = 0; i < c->n_layer; i++) {
        const json_t *e = json_array_get(lt, (size_t)i);
        const char *t = json_string_value(e);
        if (json_is_boolean(e)) slides[i] = json_is_true(e);
        else if (t && strcmp(t, "full_attention") == 0) slides[i] = 0;
        else if (t && strcmp(t, "sliding_attention") == 0) slides[i] = 1;
        else {
            free(slides);
            return ql_fail(QL_ERR_FORMAT, "%s: '%s'[%lld] must be %s", path, key, (long long)i,
                           strcmp(key, "layer_types") == 0 ? "\"sliding_attention\" or \"full_attention\"" : "a bool");
        }
    }
    int64_t first_full = -1;
    for (int64_t i = 0; i < c->n_layer && first_full < 0; i++)
        if (!slides[i]) first_full = i;
    int64_t period = first_full < 0 ? c->n_layer + 1 : first_full + 1;
    bool periodic = true;
    for (int64_t i = 0; i < c->n_layer; i++) periodic = periodic && slides[i] == ((i + 1) % period != 0);
    if (periodic) {
        free(slides);
        *pattern = first_full < 0 ? 0 : period; /* 0: every layer slides */
    } else {
        c->swa_layers = slides;
        *pattern = -1;
    }
    return QL_OK;
}

/* rope_scaling: what llama.cpp's converter does with each type, or a refusal naming the type. */
static ql_status cfg_rope_scaling(const char *path, const json_t *p, hf_config *c) {
    const json_t *rs = json_object_get(p, "rope_scaling");
    if (!rs || json_is_null(rs)) return QL_OK;
    if (!json_is_object(rs)) return ql_fail(QL_ERR_FORMAT, "%s: 'rope_scaling' must be an object or null", path);
    const json_t *t = json_object_get(rs, "rope_type");
    if (!json_is_string(t)) t = json_object_get(rs, "type");
    if (!json_is_string(t)) return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling has no type", path);
    const char *type = json_string_value(t);
    ql_status s;
    if (strcmp(type, "default") == 0 || strcmp(type, "none") == 0) return QL_OK;
    bool phi3 = strcmp(c->arch, "phi3") == 0;
    if (strcmp(type, "linear") == 0 && !phi3) {
        snprintf(c->rope_type, sizeof c->rope_type, "linear");
        return cfg_f64(path, rs, "factor", 1.0, &c->rope_factor);
    }
    if (strcmp(type, "llama3") == 0 && strcmp(c->arch, "llama") == 0) {
        /* convert_hf_to_gguf.py reads original_max_position_embeddings from the top level of
         * config.json (default 8192), not from rope_scaling: so does this, to get its exact factors */
        c->llama3 = true;
        if ((s = cfg_f64(path, rs, "factor", 8.0, &c->l3_factor)) ||
            (s = cfg_f64(path, rs, "low_freq_factor", 1.0, &c->l3_lo)) ||
            (s = cfg_f64(path, rs, "high_freq_factor", 4.0, &c->l3_hi)) ||
            (s = cfg_int(path, p, "original_max_position_embeddings", false, 8192, 1, (int64_t)1 << 30, &c->l3_ctx)))
            return s;
        if (c->l3_lo == c->l3_hi)
            return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling low_freq_factor equals high_freq_factor", path);
        int64_t inner;
        if (json_get_int(rs, "original_max_position_embeddings", &inner) == 1 && inner != c->l3_ctx)
            ql_log(1, "%s: rope_scaling.original_max_position_embeddings %lld is ignored, as llama.cpp's "
                      "converter does (it uses %lld)", path, (long long)inner, (long long)c->l3_ctx);
        return QL_OK;
    }
    if (strcmp(type, "yarn") == 0 && !phi3) {
        snprintf(c->rope_type, sizeof c->rope_type, "yarn");
        if ((s = cfg_f64(path, rs, "factor", 1.0, &c->rope_factor)) ||
            (s = cfg_int(path, rs, "original_max_position_embeddings", false, 0, 0, (int64_t)1 << 30, &c->orig_ctx)))
            return s;
        if (json_get_f64(rs, "beta_fast", &c->yarn_beta_fast) < 0 || json_get_f64(rs, "beta_slow", &c->yarn_beta_slow) < 0)
            return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling beta_fast/beta_slow must be numbers", path);
        return QL_OK;
    }
    if (phi3 && (strcmp(type, "longrope") == 0 || strcmp(type, "su") == 0 || strcmp(type, "yarn") == 0)) {
        /* convert_hf_to_gguf.py (Phi3MiniModel): the factors become rope_factors_long/short, the
         * attention factor a key; the scaling type itself is not written */
        if (c->orig_ctx <= 0)
            return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling '%s' needs 'original_max_position_embeddings'", path, type);
        c->long_factor = json_object_get(rs, "long_factor");
        c->short_factor = json_object_get(rs, "short_factor");
        int64_t want = c->rope_dims / 2;
        const json_t *fs[2] = {c->long_factor, c->short_factor};
        for (int k = 0; k < 2; k++) {
            if (!json_is_array(fs[k]) || (int64_t)json_array_size(fs[k]) != want)
                return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling '%s' needs %s with %lld numbers", path, type,
                               k ? "short_factor" : "long_factor", (long long)want);
            for (size_t i = 0; i < json_array_size(fs[k]); i++)
                if (!json_is_number(json_array_get(fs[k], i)))
                    return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling %s[%zu] is not a number", path,
                                   k ? "short_factor" : "long_factor", i);
        }
        double scale = (double)c->n_ctx / (double)c->orig_ctx;
        c->attn_factor = scale <= 1.0                 ? 1.0
                         : strcmp(type, "yarn") == 0 ? 0.1 * log(scale) + 1.0
                                                      : sqrt(1 + log(scale) / log((double)c->orig_ctx));
        return QL_OK;
    }
    return ql_fail(QL_ERR_UNSUPPORTED,
                   "%s: rope_scaling type '%.32s' is not implemented for %s (linear, yarn; llama3 for llama; "
                   "longrope for phi3)",
                   path, type, c->arch);
}

/* Reads and validates config.json into *c. `path` names the file in errors. */
static ql_status parse_config_fields(const char *path, const json_t *root, hf_config *c);

/* Reads and validates config.json into *c (c->swa_layers: the caller frees it on success). */
static ql_status parse_config(const char *path, const json_t *root, hf_config *c) {
    ql_status s = parse_config_fields(path, root, c);
    if (s) {
        free(c->swa_layers);
        c->swa_layers = NULL;
    }
    return s;
}

static ql_status parse_config_fields(const char *path, const json_t *root, hf_config *c) {
    memset(c, 0, sizeof *c);
    c->bos = c->eos = -1;
    const json_t *mt = json_object_get(root, "model_type");
    const char *type = json_is_string(mt) ? json_string_value(mt) : NULL;
    const json_t *cls = json_array_get(json_object_get(root, "architectures"), 0);
    const char *cname = json_is_string(cls) ? json_string_value(cls) : NULL;
    for (size_t i = 0; i < QL_ARRAY_LEN(g_archs) && !c->a; i++)
        if (type ? strcmp(type, g_archs[i].model_type) == 0 : cname && strcmp(cname, g_archs[i].hf_class) == 0)
            c->a = &g_archs[i];
    if (!c->a)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: architecture '%.64s' (model_type '%.64s') is not supported (" SUPPORTED_TYPES ")",
                       path, cname ? cname : "(none)", type ? type : "(missing)");
    snprintf(c->arch, sizeof c->arch, "%s", c->a->arch);
    /* Gemma 3 4B+ (Gemma3ForConditionalGeneration) keeps the language model's fields in text_config */
    const json_t *p = root;
    const json_t *tc = json_object_get(root, "text_config");
    if (c->a->nested && json_is_object(tc)) p = tc;
    ql_status s;
    const hf_arch *a = c->a;
    if ((s = cfg_int(path, p, "hidden_size", true, 0, 1, 1 << 20, &c->n_embd)) ||
        (s = cfg_int(path, p, "num_hidden_layers", true, 0, 1, 4096, &c->n_layer)) ||
        (s = cfg_int(path, p, "num_attention_heads", !a->def_heads, a->def_heads, 1, 4096, &c->n_head)) ||
        (s = cfg_int(path, p, "num_key_value_heads", false, a->def_heads_kv ? a->def_heads_kv : c->n_head, 1,
                     c->n_head, &c->n_head_kv)) ||
        (s = cfg_int(path, p, "intermediate_size", true, 0, 1, 1 << 22, &c->n_ff)) ||
        (s = cfg_int(path, p, "vocab_size", false, 0, 1, 1 << 24, &c->n_vocab)) ||
        (s = cfg_int(path, p, "max_position_embeddings", false, a->def_ctx ? a->def_ctx : 2048, 1,
                     (int64_t)1 << 30, &c->n_ctx)) ||
        (s = cfg_int(path, p, "head_dim", false, a->def_head_dim, 2, 4096, &c->head_dim)))
        return s;
    if (c->n_head % c->n_head_kv)
        return ql_fail(QL_ERR_FORMAT,
                       "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld", path,
                       (long long)c->n_head, (long long)c->n_head_kv);
    if (!c->head_dim) {
        if (c->n_embd % c->n_head)
            return ql_fail(QL_ERR_FORMAT,
                           "%s: hidden_size %lld is not a multiple of num_attention_heads %lld", path,
                           (long long)c->n_embd, (long long)c->n_head);
        c->head_dim = c->n_embd / c->n_head;
    }
    if (c->head_dim % 2)
        return ql_fail(QL_ERR_FORMAT, "%s: head dimension %lld is odd", path, (long long)c->head_dim);
    c->rope_dims = c->head_dim;
    double prf = 1.0;
    if (json_get_f64(p, "partial_rotary_factor", &prf) < 0 || !(prf > 0 && prf <= 1))
        return ql_fail(QL_ERR_FORMAT, "%s: 'partial_rotary_factor' must be in (0, 1]", path);
    if (prf != 1.0) c->rope_dims = (int64_t)(prf * (double)c->n_embd) / c->n_head; /* the converter's rounding */
    if (c->rope_dims < 2 || c->rope_dims % 2 || c->rope_dims > c->head_dim)
        return ql_fail(QL_ERR_FORMAT, "%s: rotary dimension %lld does not fit head dimension %lld", path,
                       (long long)c->rope_dims, (long long)c->head_dim);
    if ((s = cfg_f64(path, p, uses_layer_norm(a->arch) ? "layer_norm_eps" : "rms_norm_eps", a->def_eps ? a->def_eps : 1e-6,
                     &c->eps)) ||
        (s = cfg_f64(path, p, "rope_theta", a->def_theta ? a->def_theta : 10000.0, &c->rope_base)))
        return s;
    const json_t *tie = json_object_get(p, "tie_word_embeddings");
    if (!tie) tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_null(tie) && !json_is_boolean(tie))
        return ql_fail(QL_ERR_FORMAT, "%s: 'tie_word_embeddings' must be true or false", path);
    c->tied = json_is_true(tie);

    if (strcmp(c->arch, "phi3") == 0) {
        if ((s = cfg_int(path, p, "original_max_position_embeddings", false, 0, 1, (int64_t)1 << 30, &c->orig_ctx)) ||
            (s = cfg_int(path, p, "sliding_window", false, 0, 0, (int64_t)1 << 30, &c->sliding_window)))
            return s;
    }
    if (c->a->norm_shift) { /* Gemma 2 / 3 */
        bool g3 = strcmp(c->arch, "gemma3") == 0;
        if ((s = cfg_int(path, p, "sliding_window", false, 4096, 1, (int64_t)1 << 30, &c->sliding_window)) ||
            (s = cfg_swa_pattern(path, p, c, &c->swa_pattern)) ||
            (s = cfg_cap(path, p, "final_logit_softcapping", g3 ? 0 : 30.0, &c->final_softcap)) ||
            (s = cfg_cap(path, p, "attn_logit_softcapping", g3 ? 0 : 50.0, &c->attn_softcap)))
            return s;
        if (g3 && c->attn_softcap > 0)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: attn_logit_softcapping is not part of gemma3 (llama.cpp has none)", path);
        if (c->swa_pattern == 1) c->sliding_window = 0; /* every layer global */
        if (g3 && (s = cfg_f64(path, p, "rope_local_base_freq", 10000.0, &c->rope_base_swa))) return s;
        int64_t qpas;
        if (json_get_int(p, "query_pre_attn_scalar", &qpas) == 1 && qpas != c->head_dim &&
            qpas != c->n_embd / c->n_head)
            ql_log(1, "%s: query_pre_attn_scalar %lld is neither head_dim nor hidden_size/heads; llama.cpp "
                      "scales queries by 1/sqrt(head_dim)", path, (long long)qpas);
    }
    if (!c->a->norm_shift && c->a->swa_pattern > 0) { /* OLMo-3: a window on the layers layer_types says slide */
        if ((s = cfg_int(path, p, "sliding_window", false, 0, 0, (int64_t)1 << 30, &c->sliding_window)) ||
            (c->sliding_window > 0 && (s = cfg_swa_pattern(path, p, c, &c->swa_pattern))))
            return s;
        if (c->swa_pattern == 1) c->sliding_window = 0; /* every layer global */
    }
    for (int i = 0; c->a->scalars && c->a->scalars[2 * i] && i < HF_MAX_SCALARS; i++)
        if ((s = cfg_f64(path, p, c->a->scalars[2 * i], 0, &c->scalars[i]))) return s;
    if ((s = cfg_rope_scaling(path, p, c))) return s;
    if (c->a->norm_shift && strcmp(c->arch, "gemma3") == 0 && c->rope_type[0] && strcmp(c->rope_type, "linear") != 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: gemma3 rope_scaling must be linear (llama.cpp applies it to the global layers)", path);
    if (!json_get_token_id(p, "bos_token_id", &c->bos)) json_get_token_id(root, "bos_token_id", &c->bos);
    if (!json_get_token_id(p, "eos_token_id", &c->eos)) json_get_token_id(root, "eos_token_id", &c->eos);
    return QL_OK;
}

static void set_arch_key_u32(ql_gguf *g, const char *arch, const char *key, int64_t v) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    ql_gguf_set_u32(g, k, (uint32_t)v);
}

static void set_arch_key_f32(ql_gguf *g, const char *arch, const char *key, double v) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    ql_gguf_set_f32(g, k, (float)v);
}

/* The GGUF keys llama.cpp's converter writes for these fields. */
static void config_to_gguf(const hf_config *c, ql_gguf *g) {
    const char *a = c->arch;
    ql_gguf_set_str(g, "general.architecture", a);
    set_arch_key_u32(g, a, "context_length", c->n_ctx);
    set_arch_key_u32(g, a, "embedding_length", c->n_embd);
    set_arch_key_u32(g, a, "block_count", c->n_layer);
    set_arch_key_u32(g, a, "feed_forward_length", c->n_ff);
    set_arch_key_u32(g, a, "attention.head_count", c->n_head);
    set_arch_key_u32(g, a, "attention.head_count_kv", c->n_head_kv);
    set_arch_key_f32(g, a, gguf_eps_key(a), c->eps);
    set_arch_key_f32(g, a, "rope.freq_base", c->rope_base);
    set_arch_key_u32(g, a, "rope.dimension_count", c->rope_dims);
    if (c->head_dim != c->n_embd / c->n_head) {
        set_arch_key_u32(g, a, "attention.key_length", c->head_dim);
        set_arch_key_u32(g, a, "attention.value_length", c->head_dim);
    }
    if (c->rope_type[0]) {
        char k[128];
        snprintf(k, sizeof k, "%s.rope.scaling.type", a);
        ql_gguf_set_str(g, k, c->rope_type);
        set_arch_key_f32(g, a, "rope.scaling.factor", c->rope_factor);
    }
    if (c->orig_ctx > 0 && (c->long_factor || strcmp(c->rope_type, "yarn") == 0 || c->orig_ctx != c->n_ctx))
        set_arch_key_u32(g, a, "rope.scaling.original_context_length", c->orig_ctx);
    if (c->attn_factor > 0) set_arch_key_f32(g, a, "rope.scaling.attn_factor", c->attn_factor);
    if (c->yarn_beta_fast > 0) set_arch_key_f32(g, a, "rope.scaling.yarn_beta_fast", c->yarn_beta_fast);
    if (c->yarn_beta_slow > 0) set_arch_key_f32(g, a, "rope.scaling.yarn_beta_slow", c->yarn_beta_slow);
    if (c->rope_base_swa > 0) set_arch_key_f32(g, a, "rope.freq_base_swa", c->rope_base_swa);
    if (c->sliding_window > 0) set_arch_key_u32(g, a, "attention.sliding_window", c->sliding_window);
    if (c->sliding_window > 0 && c->swa_layers) {
        char k[128];
        snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", a);
        ql_gguf_set_arr(g, k, QL_GGUF_BOOL, c->swa_layers, (uint64_t)c->n_layer);
    } else if (c->sliding_window > 0 && c->swa_pattern != c->a->swa_pattern) /* llama.cpp's default otherwise */
        set_arch_key_u32(g, a, "attention.sliding_window_pattern", c->swa_pattern);
    for (int i = 0; c->a->scalars && c->a->scalars[2 * i] && i < HF_MAX_SCALARS; i++)
        if (c->scalars[i] > 0) set_arch_key_f32(g, a, c->a->scalars[2 * i + 1], c->scalars[i]);
    if (c->attn_softcap > 0) set_arch_key_f32(g, a, "attn_logit_softcapping", c->attn_softcap);
    if (c->final_softcap > 0) set_arch_key_f32(g, a, "final_logit_softcapping", c->final_softcap);
    if (c->n_vocab > 0) set_arch_key_u32(g, a, "vocab_size", c->n_vocab);
}

/* rope_freqs.weight for Llama 3.x "llama3" rope scaling, in float32 as convert_hf_to_gguf.py computes
 * it with torch (LlamaModel.generate_extra_tensors): every intermediate is a float32 tensor, and torch
 * evaluates `scalar / tensor` as reciprocal(tensor) * scalar. */
static void llama3_rope_factors(double base, int64_t dim, double factor, double lo, double hi, int64_t ctx,
                                float *out) {
    const float lo_wl = (float)((double)ctx / lo), hi_wl = (float)((double)ctx / hi);
    for (int64_t i = 0; i < dim / 2; i++) {
        /* volatile: each step rounds to float32, as the tensor ops do, never fused or wider */
        volatile float e = (float)(2 * i) / (float)dim;
        volatile float freq = 1.0f / powf((float)base, e);
        volatile float wl = (1.0f / freq) * (float)(2 * M_PI);
        if (wl < hi_wl) out[i] = 1.0f;
        else if (wl > lo_wl) out[i] = (float)factor;
        else {
            volatile float smooth = ((1.0f / wl) * (float)ctx - (float)lo) / (float)(hi - lo);
            volatile float d = (1.0f - smooth) / (float)factor + smooth;
            out[i] = 1.0f / d;
        }
    }
}

/* ---------------------------------------------------------------- loading */

typedef struct {
    char *name; /* GGUF name */
    uint32_t type;
    int n_dims;
    int64_t ne[QL_MAX_DIMS];
    const uint8_t *data;
    uint64_t nbytes;
    name_info ni;
    int64_t order;   /* position in the files, for names without a canonical place */
    const char *src; /* shard path (borrowed from the shard list) */
    bool gguf_order; /* q/k rows already in GGUF order (a quantized whole-tensor import, core/hf_quant.c) */
} load_entry;

static int entry_cmp(const void *pa, const void *pb) {
    const load_entry *a = pa, *b = pb;
    if (a->ni.group != b->ni.group) return a->ni.group < b->ni.group ? -1 : 1;
    if (a->ni.group == 1) {
        if (a->ni.layer != b->ni.layer) return a->ni.layer < b->ni.layer ? -1 : 1;
        if (a->ni.index != b->ni.index) return a->ni.index < b->ni.index ? -1 : 1;
        if (a->ni.bias != b->ni.bias) return a->ni.bias < b->ni.bias ? -1 : 1;
    }
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Shard file names from model.safetensors.index.json, in first-use order. */
static ql_status read_index(const char *path, json_t *idx, char ***shards, int *n_shards) {
    const json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0)
        return ql_fail(QL_ERR_FORMAT, "%s: 'weight_map' must be a non-empty object", path);
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)wm, key, val) {
        if (!json_is_string(val))
            return ql_fail(QL_ERR_FORMAT, "%s: weight_map['%s'] is not a string", path, key);
        const char *f = json_string_value(val);
        if (!f[0] || strchr(f, '/') || strcmp(f, "..") == 0 || strcmp(f, ".") == 0 ||
            strlen(f) != json_string_length(val))
            return ql_fail(QL_ERR_FORMAT, "%s: weight_map['%s'] names '%s', not a file in this folder", path,
                           key, f);
        bool seen = false;
        for (int i = 0; i < *n_shards && !seen; i++) seen = strcmp((*shards)[i], f) == 0;
        if (seen) continue;
        *shards = ql_realloc(*shards, (size_t)(*n_shards + 1) * sizeof **shards);
        (*shards)[(*n_shards)++] = ql_strdup(f);
    }
    return QL_OK;
}

/* Copies a tensor into an owned buffer, permuting q/k rows when `heads` > 0. */
static ql_status own_copy(ql_gguf *g, const load_entry *e, int heads, const void **data) {
    void *buf = malloc(e->nbytes ? e->nbytes : 1);
    if (!buf)
        return ql_fail(QL_ERR_NOMEM, "%s: no memory for a copy of '%s' (%llu bytes)", e->src, e->name,
                       (unsigned long long)e->nbytes);
    if (heads > 0) {
        int64_t rows = e->n_dims >= 2 ? e->ne[1] : e->ne[0];
        ql_rope_permute_rows(buf, e->data, heads, rows, (size_t)(e->nbytes / (uint64_t)rows), true);
    } else {
        memcpy(buf, e->data, e->nbytes);
    }
    ql_gguf_adopt(g, buf);
    *data = buf;
    return QL_OK;
}

/* Gemma's RMSNorm weights as llama.cpp's converter stores them: 1 + w in float32 (it widens BF16 to
 * F32 before adding; F16 stays F16 for the addition, which therefore rounds to F16 first). */
static ql_status add_shifted_norm(ql_gguf *g, const load_entry *e) {
    size_t esz = type_elem_size(e->type);
    if (!esz || e->n_dims != 1)
        return ql_fail(QL_ERR_FORMAT, "%s: norm tensor '%s' must be a 1-D f32, f16 or bf16 vector", e->src, e->name);
    int64_t n = e->ne[0];
    float *buf = malloc((size_t)(n ? n : 1) * sizeof *buf);
    if (!buf) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", e->src, e->name);
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = e->data + (size_t)i * esz;
        uint16_t h = 0;
        float f = 0;
        if (esz == 4) memcpy(&f, p, 4);
        else memcpy(&h, p, 2);
        if (e->type == QL_TYPE_F32) buf[i] = f + 1.0f;
        else if (e->type == QL_TYPE_BF16) buf[i] = ql_bf16_to_fp32(h) + 1.0f;
        else buf[i] = ql_fp16_to_fp32(ql_fp32_to_fp16(ql_fp16_to_fp32(h) + 1.0f));
    }
    ql_gguf_adopt(g, buf);
    int64_t ne[QL_MAX_DIMS] = {n, 1, 1, 1};
    if (ql_gguf_add_tensor(g, e->name, QL_TYPE_F32, 1, ne, buf) < 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", ql_last_error());
        return ql_fail(QL_ERR_FORMAT, "%s: %s", e->src, why);
    }
    return QL_OK;
}

/* Tensors llama.cpp's converter derives from config.json: rope_freqs (llama3 scaling) and Phi-3's
 * LongRoPE factors. A rope_freqs.weight already in the folder (carried by ql_hf_save when no config
 * reproduces it) wins. */
static void add_config_tensors(ql_gguf *g, const hf_config *c) {
    if (c->llama3 && ql_gguf_find_tensor(g, "rope_freqs.weight") < 0) {
        int64_t ne[QL_MAX_DIMS] = {c->rope_dims / 2, 1, 1, 1};
        float *f = ql_malloc((size_t)ne[0] * sizeof *f);
        llama3_rope_factors(c->rope_base, c->rope_dims, c->l3_factor, c->l3_lo, c->l3_hi, c->l3_ctx, f);
        ql_gguf_adopt(g, f);
        ql_gguf_add_tensor(g, "rope_freqs.weight", QL_TYPE_F32, 1, ne, f);
    }
    const json_t *fs[2] = {c->long_factor, c->short_factor};
    static const char *names[2] = {"rope_factors_long.weight", "rope_factors_short.weight"};
    for (int k = 0; k < 2; k++) {
        if (!fs[k]) continue;
        int64_t ne[QL_MAX_DIMS] = {(int64_t)json_array_size(fs[k]), 1, 1, 1};
        float *f = ql_malloc((size_t)ne[0] * sizeof *f);
        for (int64_t i = 0; i < ne[0]; i++) f[i] = (float)json_number_value(json_array_get(fs[k], (size_t)i));
        ql_gguf_adopt(g, f);
        ql_gguf_add_tensor(g, names[k], QL_TYPE_F32, 1, ne, f);
    }
}

/* Every tensor the architecture needs, so a folder with one missing fails here, naming it. */
static ql_status check_required(const char *dir, const hf_config *c, const ql_gguf *g) {
    static const char *globals[] = {"token_embd.weight", "output_norm.weight"};
    char gg[256];
    for (size_t i = 0; i < QL_ARRAY_LEN(globals); i++)
        if (ql_gguf_find_tensor(g, globals[i]) < 0) {
            name_info ni;
            char *hf = map_name(globals[i], false, c->a, &ni);
            ql_status s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is missing (%s needs it)", dir, hf, c->arch);
            free(hf);
            return s;
        }
    for (int64_t l = 0; l < c->n_layer; l++)
        for (const char *const *r = c->a->required; *r; r++) {
            snprintf(gg, sizeof gg, "blk.%lld.%s", (long long)l, *r);
            if (ql_gguf_find_tensor(g, gg) >= 0) continue;
            name_info ni;
            char *hf = map_name(gg, false, c->a, &ni);
            ql_status s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is missing (%s needs it)", dir, hf, c->arch);
            free(hf);
            return s;
        }
    return QL_OK;
}

static ql_status add_entry(ql_gguf *g, const hf_config *c, const load_entry *e) {
    if (e->ni.group == 1 && e->ni.layer >= c->n_layer)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is for layer %d but config.json has %lld layers",
                       e->src, e->name, e->ni.layer, (long long)c->n_layer);
    int heads = 0;
    if (c->a->permute && e->ni.group == 1 && (e->ni.role == ROLE_Q || e->ni.role == ROLE_K)) {
        heads = e->gguf_order ? 0 : (int)(e->ni.role == ROLE_Q ? c->n_head : c->n_head_kv);
        int expect = (int)(e->ni.role == ROLE_Q ? c->n_head : c->n_head_kv);
        int64_t rows = e->n_dims >= 2 ? e->ne[1] : e->ne[0];
        bool ok =
            rows == expect * c->head_dim && e->ne[2] == 1 && e->ne[3] == 1 && (e->n_dims == 2 || e->ni.bias);
        if (!ok)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %lld rows, expected %d heads x %lld", e->src,
                           e->name, (long long)rows, expect, (long long)c->head_dim);
    }
    if (c->a->norm_shift && is_norm_weight(e->name)) return add_shifted_norm(g, e);
    const void *data = e->data;
    size_t esz = type_elem_size(e->type);
    ql_status s;
    if (heads > 0 || (esz && (uintptr_t)data % esz))
        if ((s = own_copy(g, e, heads, &data))) return s;
    if (ql_gguf_add_tensor(g, e->name, e->type, e->n_dims, e->ne, data) < 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", ql_last_error());
        return ql_fail(QL_ERR_FORMAT, "%s: %s", e->src, why);
    }
    return QL_OK;
}

/* bos/eos named by text in tokenizer_config.json. gguf-py's SpecialVocab reads these before config.json,
 * so llama.cpp's converter takes e.g. Phi-3's <|endoftext|> or an instruct model's end-of-turn token from
 * here rather than tokenizer.json's guess. */
static void special_from_tokenizer_config(const char *dir, ql_gguf *g) {
    char *p = path_join(dir, "tokenizer_config.json");
    json_t *tc = json_load_file(p, 0, NULL);
    free(p);
    uint64_t n = 0;
    const ql_gguf_value *tok = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n);
    static const char *keys[][2] = {{"bos_token", "tokenizer.ggml.bos_token_id"},
                                    {"eos_token", "tokenizer.ggml.eos_token_id"}};
    for (int k = 0; k < 2 && json_is_object(tc) && tok; k++) {
        const json_t *v = json_object_get(tc, keys[k][0]);
        if (json_is_object(v)) v = json_object_get(v, "content");
        const char *text = json_string_value(v);
        if (!text) continue;
        size_t tl = strlen(text);
        for (uint64_t i = 0; i < n; i++)
            if (tok[i].v.str.len == tl && memcmp(tok[i].v.str.s, text, tl) == 0) {
                ql_gguf_set_u32(g, keys[k][1], (uint32_t)i);
                break;
            }
    }
    json_decref(tc);
}

/* bos/eos from config.json or generation_config.json, only where the tokenizer did not set them. */
static void special_ids(const char *dir, const hf_config *c, ql_gguf *g) {
    if (!ql_gguf_get(g, "tokenizer.ggml.tokens")) return;
    int64_t bos = c->bos, eos = c->eos;
    char *gp = path_join(dir, "generation_config.json");
    json_t *gen = json_load_file(gp, 0, NULL);
    free(gp);
    if (json_is_object(gen)) {
        if (bos < 0) json_get_token_id(gen, "bos_token_id", &bos);
        if (eos < 0) json_get_token_id(gen, "eos_token_id", &eos);
    }
    json_decref(gen);
    if (bos >= 0 && !ql_gguf_get(g, "tokenizer.ggml.bos_token_id"))
        ql_gguf_set_u32(g, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (eos >= 0 && !ql_gguf_get(g, "tokenizer.ggml.eos_token_id"))
        ql_gguf_set_u32(g, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
}

/* llama.cpp's Gemma 3 converter keeps only the embedding rows the tokenizer has tokens for (the
 * checkpoint pads its vocabulary, e.g. 262208 rows for 262144 tokens); the rows stay in the mapping. */
static void trim_embedding(ql_gguf *g, const hf_config *c) {
    uint64_t n_tok = 0;
    if (!ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n_tok) || n_tok == 0) return;
    int64_t te = ql_gguf_find_tensor(g, "token_embd.weight");
    if (te < 0) return;
    ql_gguf_tensor *t = &g->tensors[te];
    if (t->n_dims != 2 || t->ne[1] <= (int64_t)n_tok) return;
    t->nbytes = t->nbytes / (uint64_t)t->ne[1] * n_tok;
    t->ne[1] = (int64_t)n_tok;
    set_arch_key_u32(g, c->arch, "vocab_size", (int64_t)n_tok);
}

/* general.file_type as llama.cpp's converter would set it: 0 all F32, 1 mostly F16, 32 mostly BF16. */
static void set_file_type(ql_gguf *g) {
    if (ql_gguf_get(g, "general.file_type")) return;
    uint32_t seen = UINT32_MAX;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        if (t->n_dims < 2) continue;
        if (seen != UINT32_MAX && seen != t->type) return;
        seen = t->type;
    }
    if (seen == QL_TYPE_F32 || seen == UINT32_MAX)
        ql_gguf_set_u32(g, "general.file_type", 0);
    else if (seen == QL_TYPE_F16)
        ql_gguf_set_u32(g, "general.file_type", 1);
    else if (seen == QL_TYPE_BF16)
        ql_gguf_set_u32(g, "general.file_type", 32);
}

/* What core/hf_quant.c asks about the architecture (user = the hf_config). */
static int quant_rope_heads(void *user, const char *hf_weight_name) {
    const hf_config *c = user;
    name_info ni;
    char *gn = map_name(hf_weight_name, true, c->a, &ni);
    free(gn);
    if (!c->a->permute || ni.group != 1 || ni.bias) return 0;
    return ni.role == ROLE_Q ? (int)c->n_head : ni.role == ROLE_K ? (int)c->n_head_kv : 0;
}

static char *quant_gguf_name(void *user, const char *hf_name) {
    const hf_config *c = user;
    name_info ni;
    return map_name(hf_name, true, c->a, &ni);
}

ql_status ql_hf_load(const char *dir, ql_gguf **out) {
    *out = NULL;
    ql_status s = QL_OK;
    json_t *cfg_json = NULL, *idx_json = NULL;
    char **shards = NULL;
    int n_shards = 0;
    load_entry *ents = NULL;
    int64_t n_ents = 0;
    ql_hfq_tensor *raw = NULL;
    int64_t n_raw = 0, cap_raw = 0;
    ql_hfq *hq = NULL;
    ql_gguf *g = NULL;
    hf_config cfg = {0};
    char *cfg_path = path_join(dir, "config.json");
    char *idx_path = path_join(dir, "model.safetensors.index.json");
    char **shard_paths = NULL;

    if (!file_exists(cfg_path)) {
        s = ql_fail(QL_ERR_IO, "%s: no config.json (not a Hugging Face model folder)", dir);
        goto done;
    }
    if ((s = load_json(cfg_path, &cfg_json)) || (s = parse_config(cfg_path, cfg_json, &cfg)) ||
        (s = ql_hfq_parse(cfg_path, cfg_json, &hq)))
        goto done;

    if (file_exists(idx_path)) {
        if ((s = load_json(idx_path, &idx_json)) || (s = read_index(idx_path, idx_json, &shards, &n_shards)))
            goto done;
    } else {
        char *one = path_join(dir, "model.safetensors");
        bool have = file_exists(one);
        free(one);
        if (!have) {
            char *pt = path_join(dir, "pytorch_model.bin");
            bool torch = file_exists(pt);
            free(pt);
            s = torch ? ql_fail(QL_ERR_UNSUPPORTED,
                                "%s: only safetensors weights are supported (found pytorch_model.bin)", dir)
                      : ql_fail(QL_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
            goto done;
        }
        shards = ql_malloc(sizeof *shards);
        shards[n_shards++] = ql_strdup("model.safetensors");
    }

    g = ql_gguf_new();
    g->path = ql_strdup(dir);
    ql_gguf_set_str(g, "general.architecture", cfg.arch); /* first key, as in converted GGUF files */
    shard_paths = ql_calloc((size_t)n_shards, sizeof *shard_paths);
    for (int i = 0; i < n_shards; i++) {
        shard_paths[i] = path_join(dir, shards[i]);
        void *addr = NULL;
        size_t len = 0;
        if ((s = ql_map_file(shard_paths[i], &addr, &len))) goto done;
        if (addr) ql_gguf_adopt_map(g, addr, len);
        ql_gguf *tmp = ql_gguf_new();
        uint8_t *dtypes = NULL;
        /* a quantized checkpoint's integer and FP8 parts are read too (core/hf_quant.c explains them) */
        s = hq ? ql_safetensors_parse_any(addr ? addr : "", len, shard_paths[i], tmp, &dtypes)
               : ql_safetensors_parse(addr ? addr : "", len, shard_paths[i], tmp);
        if (s) {
            free(dtypes);
            ql_gguf_free(tmp);
            goto done;
        }
        for (int64_t k = 0; k < tmp->n_kv; k++) /* the GGUF layout key would disagree with g->alignment */
            if (strcmp(tmp->kv[k].key, "general.alignment") != 0)
                ql_gguf_set_value(g, tmp->kv[k].key, &tmp->kv[k].val);
        for (int64_t t = 0; t < tmp->n_tensors; t++) {
            const ql_gguf_tensor *src = &tmp->tensors[t];
            size_t nl = strlen(src->name);
            if (nl > 21 && strcmp(src->name + nl - 21, ".rotary_emb.inv_freq") == 0)
                continue; /* recomputed */
            char *tname = text_model_name(src->name);
            if (!tname) continue; /* a vision tower: not part of the text model */
            /* Gemma's output is the embedding; llama.cpp's converter drops a stray lm_head (AutoAWQ) */
            if (cfg.a->norm_shift && strncmp(tname, "lm_head.", 8) == 0) {
                free(tname);
                continue;
            }
            if (n_raw == cap_raw) {
                cap_raw = cap_raw ? cap_raw * 2 : 256;
                raw = ql_realloc(raw, (size_t)cap_raw * sizeof *raw);
            }
            ql_hfq_tensor *r = &raw[n_raw++];
            memset(r, 0, sizeof *r);
            r->name = tname;
            r->dtype = dtypes ? dtypes[t] : 0;
            r->type = src->type;
            r->n_dims = src->n_dims;
            memcpy(r->ne, src->ne, sizeof r->ne);
            r->data = src->data;
            r->nbytes = src->nbytes;
            r->src = shard_paths[i];
        }
        free(dtypes);
        ql_gguf_free(tmp);
    }
    if (idx_json) { /* every tensor the index promises must have been found */
        const char *key;
        const json_t *val;
        json_object_foreach(json_object_get(idx_json, "weight_map"), key, val) {
            char *tn = text_model_name(key);
            if (!tn) continue;
            bool found = cfg.a->norm_shift && strncmp(tn, "lm_head.", 8) == 0; /* dropped above */
            for (int64_t k = 0; k < n_raw && !found; k++) found = strcmp(raw[k].name, tn) == 0;
            free(tn);
            size_t kl = strlen(key);
            if (!found && !(kl > 21 && strcmp(key + kl - 21, ".rotary_emb.inv_freq") == 0)) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is listed in the index but missing from %s",
                            idx_path, key, json_string_value(val));
                goto done;
            }
        }
    }
    if (hq) { /* quantized modules -> one registry-format (or F32) tensor each */
        ql_hfq_arch qa = {.user = &cfg, .rope_heads = quant_rope_heads, .gguf_name = quant_gguf_name};
        if ((s = ql_hfq_convert(hq, dir, &qa, &raw, &n_raw, g))) goto done;
    }
    ents = ql_calloc((size_t)(n_raw ? n_raw : 1), sizeof *ents);
    for (int64_t k = 0; k < n_raw; k++) {
        load_entry *e = &ents[n_ents++];
        e->name = map_name(raw[k].name, true, cfg.a, &e->ni);
        e->type = raw[k].type;
        e->n_dims = raw[k].n_dims;
        memcpy(e->ne, raw[k].ne, sizeof e->ne);
        e->data = raw[k].data;
        e->nbytes = raw[k].nbytes;
        e->order = n_ents;
        e->src = raw[k].src;
        e->gguf_order = raw[k].gguf_order;
    }
    if (n_ents == 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: the safetensors files hold no tensors", dir);
        goto done;
    }
    qsort(ents, (size_t)n_ents, sizeof *ents, entry_cmp);
    config_to_gguf(&cfg, g);
    for (int64_t k = 0; k < n_ents; k++)
        if ((s = add_entry(g, &cfg, &ents[k]))) goto done;
    add_config_tensors(g, &cfg);
    if ((s = check_required(dir, &cfg, g))) goto done;
    if (cfg.n_vocab <= 0) {
        int64_t te = ql_gguf_find_tensor(g, "token_embd.weight");
        if (te >= 0 && g->tensors[te].n_dims == 2)
            set_arch_key_u32(g, cfg.arch, "vocab_size", g->tensors[te].ne[1]);
    }
    set_file_type(g);
    if (!ql_gguf_get(g, "general.name")) {
        const char *base = strrchr(dir, '/');
        base = base && base[1] ? base + 1 : dir;
        ql_gguf_set_str(g, "general.name", base);
    }
    /* Tokenizer: qlab's own exact metadata (restored from __metadata__) wins over tokenizer.json. */
    if (!ql_gguf_get(g, "tokenizer.ggml.model")) {
        char *tp = path_join(dir, "tokenizer.json");
        if (file_exists(tp)) s = ql_tokenizer_json_to_gguf(tp, g);
        free(tp);
        if (s) goto done;
        special_from_tokenizer_config(dir, g);
    }
    special_ids(dir, &cfg, g);
    if (cfg.a->trim_vocab) trim_embedding(g, &cfg);
    *out = g;
    g = NULL;
done:
    for (int64_t k = 0; k < n_ents; k++) free(ents[k].name);
    free(ents);
    for (int64_t k = 0; k < n_raw; k++) free(raw[k].name);
    free(raw);
    ql_hfq_free(hq);
    for (int i = 0; i < n_shards; i++) {
        free(shards[i]);
        if (shard_paths) free(shard_paths[i]);
    }
    free(shards);
    free(shard_paths);
    json_decref(cfg_json);
    json_decref(idx_json);
    free(cfg.swa_layers);
    free(cfg_path);
    free(idx_path);
    ql_gguf_free(g);
    return s;
}

/* ---------------------------------------------------------------- saving */

static const char *hex_digits = "0123456789abcdef";

/* GGUF value -> JSON payload (see core/safetensors.c for the decoder). */
static json_t *enc_payload(const ql_gguf_value *v) {
    switch (v->type) {
    case QL_GGUF_U8:
    case QL_GGUF_U16:
    case QL_GGUF_U32:
    case QL_GGUF_U64: return json_integer((json_int_t)v->v.u);
    case QL_GGUF_I8:
    case QL_GGUF_I16:
    case QL_GGUF_I32:
    case QL_GGUF_I64: return json_integer((json_int_t)v->v.i);
    case QL_GGUF_F32:
    case QL_GGUF_F64:
        if (isnan(v->v.f)) return json_string("nan");
        if (isinf(v->v.f)) return json_string(v->v.f > 0 ? "inf" : "-inf");
        return json_real(v->v.f);
    case QL_GGUF_BOOL: return json_boolean(v->v.u != 0);
    case QL_GGUF_STRING: {
        json_t *j = memchr(v->v.str.s, 0, v->v.str.len) ? NULL : json_stringn(v->v.str.s, v->v.str.len);
        if (j) return j;
        char *h = ql_malloc(v->v.str.len * 2 + 1);
        for (uint64_t i = 0; i < v->v.str.len; i++) {
            h[2 * i] = hex_digits[(uint8_t)v->v.str.s[i] >> 4];
            h[2 * i + 1] = hex_digits[(uint8_t)v->v.str.s[i] & 15];
        }
        h[v->v.str.len * 2] = 0;
        j = json_pack("{s:s}", "hex", h);
        free(h);
        return j;
    }
    case QL_GGUF_ARRAY: {
        json_t *items = json_array();
        for (uint64_t i = 0; i < v->v.arr.n; i++)
            json_array_append_new(items, enc_payload(&v->v.arr.items[i]));
        return json_pack("[I,o]", (json_int_t)v->v.arr.elem_type, items);
    }
    }
    return json_null();
}

static char *enc_value(const ql_gguf_value *v) {
    json_t *j = json_pack("[I,o]", (json_int_t)v->type, enc_payload(v));
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(j);
    return s;
}

/* The shortest decimal that reads back as the same float, so config.json shows 1e-05,
 * not 1.0000000000000001e-05. */
static double short_float(double f) {
    char buf[48];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, f);
        double d = strtod(buf, NULL);
        if ((float)d == (float)f) return d;
    }
    return f;
}

typedef struct {
    const ql_gguf_tensor *t;
    int64_t index;
    char *hf_name;
    int heads;  /* > 0: permute rows back to HF order with this many heads */
    bool shift; /* Gemma norm: write v - 1 as F32 */
    uint64_t offset, nbytes;
} save_entry;

static ql_status write_text_file(const char *path, const char *text) {
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) return s;
    fputs(text, ql_atomic_stream(af));
    fputc('\n', ql_atomic_stream(af));
    return ql_atomic_commit(af); /* a failed fputs is sticky in ferror: the commit reports it */
}

static float elem_f32(const void *p, uint32_t type, int64_t i) {
    if (type == QL_TYPE_F32) {
        float f;
        memcpy(&f, (const uint8_t *)p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const uint8_t *)p + 2 * i, 2);
    return type == QL_TYPE_BF16 ? ql_bf16_to_fp32(h) : ql_fp16_to_fp32(h);
}

static ql_status write_tensor_bytes(ql_atomic_file *af, const save_entry *e, void **scratch, void **scratch2) {
    const ql_gguf_tensor *t = e->t;
    size_t n = (size_t)t->nbytes;
    const void *src = t->data;
    ql_status s;
    if (!src) {
        *scratch = ql_realloc(*scratch, n ? n : 1);
        if ((s = t->produce(t->produce_user, e->index, *scratch, t->nbytes))) return s;
        src = *scratch;
    }
    if (e->shift) { /* HF Gemma stores w where llama.cpp stores 1 + w */
        int64_t ne = (int64_t)(e->nbytes / 4);
        float *w = ql_malloc((size_t)(ne ? ne : 1) * sizeof *w);
        int64_t lossy = 0;
        for (int64_t i = 0; i < ne; i++) {
            float v = elem_f32(src, t->type, i);
            w[i] = v - 1.0f;
            lossy += w[i] + 1.0f != v;
        }
        if (lossy)
            ql_log(1, "%s: %lld values of '%s' are not exactly 1 + a float32 (they read back rounded)", "hf save",
                   (long long)lossy, t->name);
        s = ql_atomic_write(af, w, e->nbytes);
        free(w);
        return s;
    }
    if (e->heads > 0) {
        int64_t rows = t->n_dims >= 2 ? t->ne[1] : t->ne[0];
        *scratch2 = ql_realloc(*scratch2, n ? n : 1);
        ql_rope_permute_rows(*scratch2, src, e->heads, rows, n / (size_t)rows, false);
        src = *scratch2;
    }
    return ql_atomic_write(af, src, n);
}

typedef struct {
    const char *arch;
    const hf_arch *a;
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, head_dim, n_vocab, rope_dims;
    double eps, rope_base;
    bool l3_ok; /* rope_freqs.weight is exactly what these llama3 parameters give: config carries it */
    double l3_factor, l3_lo, l3_hi;
    int64_t l3_ctx;
    bool longrope; /* Phi-3 rope_factors_long/short go into rope_scaling */
} save_config;

static bool gkey_int(const ql_gguf *g, const char *arch, const char *key, int64_t *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return ql_gguf_get_int(g, k, out);
}

static bool gkey_f64(const ql_gguf *g, const char *arch, const char *key, double *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return ql_gguf_get_f64(g, k, out);
}

static const ql_gguf_tensor *f32_vector(const ql_gguf *g, const char *name, int64_t n) {
    int64_t i = ql_gguf_find_tensor(g, name);
    if (i < 0) return NULL;
    const ql_gguf_tensor *t = &g->tensors[i];
    return t->type == QL_TYPE_F32 && t->n_dims == 1 && t->ne[0] == n && t->data ? t : NULL;
}

/* The llama3 rope_scaling whose factors are rope_freqs.weight bit for bit: the factor is the largest
 * value; the rest is searched over the values Llama 3.x releases use. */
static void find_llama3_params(const ql_gguf *g, save_config *c) {
    const ql_gguf_tensor *t = f32_vector(g, "rope_freqs.weight", c->rope_dims / 2);
    if (!t) return;
    const float *want = t->data;
    int64_t n = t->ne[0];
    float mx = 0;
    for (int64_t i = 0; i < n; i++) mx = want[i] > mx ? want[i] : mx;
    if (!(mx >= 1.0f)) return;
    static const double los[] = {1, 2, 0.5}, his[] = {4, 2, 8, 1};
    static const int64_t ctxs[] = {8192, 4096, 16384, 32768, 2048, 65536, 131072};
    float *got = ql_malloc((size_t)n * sizeof *got);
    for (size_t a = 0; a < QL_ARRAY_LEN(los) && !c->l3_ok; a++)
        for (size_t b = 0; b < QL_ARRAY_LEN(his) && !c->l3_ok; b++)
            for (size_t k = 0; k < QL_ARRAY_LEN(ctxs) && !c->l3_ok; k++) {
                if (los[a] == his[b]) continue;
                llama3_rope_factors(c->rope_base, c->rope_dims, mx, los[a], his[b], ctxs[k], got);
                if (memcmp(got, want, (size_t)n * sizeof *got) == 0) {
                    c->l3_ok = true;
                    c->l3_factor = mx, c->l3_lo = los[a], c->l3_hi = his[b], c->l3_ctx = ctxs[k];
                }
            }
    free(got);
    if (!c->l3_ok)
        ql_log(1, "%s: rope_freqs.weight matches no llama3 rope_scaling; it is kept as a tensor (qlab reads it, "
                  "transformers ignores it)", g->path ? g->path : "model");
}

static ql_status gather_save_config(const ql_gguf *g, const char *label, save_config *c) {
    memset(c, 0, sizeof *c);
    const char *arch = ql_gguf_get_str(g, "general.architecture");
    if (!arch) arch = "llama";
    c->arch = arch;
    c->a = arch_for_gguf(g);
    if (!c->a)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: architecture '%s' cannot be saved as a Hugging Face folder",
                       label, arch);
    int64_t te = ql_gguf_find_tensor(g, "token_embd.weight");
    const ql_gguf_tensor *emb = te >= 0 ? &g->tensors[te] : NULL;
    if (!gkey_int(g, arch, "embedding_length", &c->n_embd) && emb) c->n_embd = emb->ne[0];
    if (!gkey_int(g, arch, "vocab_size", &c->n_vocab) && emb) c->n_vocab = emb->ne[1];
    if (!gkey_int(g, arch, "block_count", &c->n_layer) ||
        !gkey_int(g, arch, "attention.head_count", &c->n_head) ||
        !gkey_int(g, arch, "feed_forward_length", &c->n_ff) || c->n_embd <= 0 || c->n_vocab <= 0)
        return ql_fail(QL_ERR_FORMAT,
                       "%s: missing hyper-parameters (%s.block_count, .embedding_length, "
                       ".attention.head_count, .feed_forward_length, token_embd.weight)",
                       label, arch);
    if (!gkey_int(g, arch, "attention.head_count_kv", &c->n_head_kv)) c->n_head_kv = c->n_head;
    if (c->n_layer <= 0 || c->n_head <= 0 || c->n_head_kv <= 0 || c->n_ff <= 0 || c->n_head % c->n_head_kv)
        return ql_fail(QL_ERR_FORMAT, "%s: invalid hyper-parameters", label);
    if (!gkey_int(g, arch, "attention.key_length", &c->head_dim)) c->head_dim = c->n_embd / c->n_head;
    if (!gkey_int(g, arch, "rope.dimension_count", &c->rope_dims)) c->rope_dims = c->head_dim;
    if (c->head_dim <= 0 || c->rope_dims <= 0 || c->rope_dims > c->head_dim)
        return ql_fail(QL_ERR_FORMAT, "%s: invalid head or rope dimension", label);
    if (!gkey_int(g, arch, "context_length", &c->n_ctx)) c->n_ctx = 2048;
    if (!gkey_f64(g, arch, gguf_eps_key(arch), &c->eps)) c->eps = 1e-5;
    if (!gkey_f64(g, arch, "rope.freq_base", &c->rope_base)) c->rope_base = 10000.0;
    if (strcmp(arch, "llama") == 0) find_llama3_params(g, c);
    c->longrope = strcmp(arch, "phi3") == 0 && f32_vector(g, "rope_factors_long.weight", c->rope_dims / 2) &&
                  f32_vector(g, "rope_factors_short.weight", c->rope_dims / 2);
    return QL_OK;
}

/* A GGUF f32/u32 key as a JSON number, or null when absent. */
static json_t *key_real(const ql_gguf *g, const char *arch, const char *key) {
    double v;
    return gkey_f64(g, arch, key, &v) ? json_real(short_float(v)) : json_null();
}

static json_t *f32_array_json(const ql_gguf *g, const char *name) {
    const ql_gguf_tensor *t = &g->tensors[ql_gguf_find_tensor(g, name)];
    json_t *a = json_array();
    for (int64_t i = 0; i < t->ne[0]; i++) json_array_append_new(a, json_real(short_float(((const float *)t->data)[i])));
    return a;
}

/* "sliding_window" and "layer_types" for a model with a window: the per-layer array (newer llama.cpp) says which
 * layers slide, else the period does; *listed says which. */
static void write_layer_types(json_t *o, const ql_gguf *g, const save_config *c, int64_t swa, int64_t pattern,
                              bool *listed) {
    json_object_set_new(o, "sliding_window", swa > 0 ? json_integer(swa) : json_null());
    char pk[128];
    snprintf(pk, sizeof pk, "%s.attention.sliding_window_pattern", c->arch);
    uint64_t n_flags = 0;
    const ql_gguf_value *flags = ql_gguf_get_arr(g, pk, QL_GGUF_BOOL, &n_flags);
    if (flags && n_flags != (uint64_t)c->n_layer) flags = NULL;
    json_t *lt = json_array();
    for (int64_t i = 0; i < c->n_layer; i++) {
        bool full = flags ? flags[i].v.u == 0 : pattern > 0 && (i + 1) % pattern == 0;
        json_array_append_new(lt, json_string(full ? "full_attention" : "sliding_attention"));
    }
    json_object_set_new(o, "layer_types", lt);
    *listed = flags != NULL;
}

/* config.json as the architecture's transformers config class reads it: the inverse of parse_config +
 * config_to_gguf for every field they use. */
static char *config_json_text(const ql_gguf *g, const save_config *c, const char *torch_dtype) {
    const char *arch = c->arch;
    bool gemma = c->a->norm_shift, gemma3 = strcmp(arch, "gemma3") == 0, phi3 = strcmp(arch, "phi3") == 0;
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", c->a->hf_class));
    json_object_set_new(o, "model_type", json_string(c->a->model_type));
    json_object_set_new(o, "hidden_size", json_integer(c->n_embd));
    json_object_set_new(o, "intermediate_size", json_integer(c->n_ff));
    json_object_set_new(o, "num_hidden_layers", json_integer(c->n_layer));
    json_object_set_new(o, "num_attention_heads", json_integer(c->n_head));
    json_object_set_new(o, "num_key_value_heads", json_integer(c->n_head_kv));
    /* transformers' defaults for head_dim differ per class (Qwen3 128, Gemma 256): always write it there */
    if (gemma || strcmp(arch, "qwen3") == 0 || c->head_dim != c->n_embd / c->n_head)
        json_object_set_new(o, "head_dim", json_integer(c->head_dim));
    if (c->rope_dims != c->head_dim)
        json_object_set_new(o, "partial_rotary_factor",
                            json_real((double)(c->rope_dims * c->n_head) / (double)c->n_embd));
    json_object_set_new(o, "max_position_embeddings", json_integer(c->n_ctx));
    json_object_set_new(o, uses_layer_norm(arch) ? "layer_norm_eps" : "rms_norm_eps", json_real(short_float(c->eps)));
    json_object_set_new(o, "rope_theta", json_real(short_float(c->rope_base)));
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const char *rst = ql_gguf_get_str(g, k);
    double factor = 1.0;
    int64_t orig = 0;
    bool has_orig = gkey_int(g, arch, "rope.scaling.original_context_length", &orig);
    json_t *rs = json_null();
    if (c->l3_ok) {
        rs = json_pack("{s:s,s:f,s:f,s:f,s:I}", "rope_type", "llama3", "factor", short_float(c->l3_factor),
                       "low_freq_factor", c->l3_lo, "high_freq_factor", c->l3_hi, "original_max_position_embeddings",
                       (json_int_t)c->l3_ctx);
        if (c->l3_ctx != 8192) /* where llama.cpp's converter looks for it */
            json_object_set_new(o, "original_max_position_embeddings", json_integer(c->l3_ctx));
    } else if (c->longrope) {
        rs = json_pack("{s:s,s:o,s:o}", "type", "longrope", "long_factor", f32_array_json(g, "rope_factors_long.weight"),
                       "short_factor", f32_array_json(g, "rope_factors_short.weight"));
    } else if (rst && strcmp(rst, "none") != 0 && gkey_f64(g, arch, "rope.scaling.factor", &factor)) {
        rs = json_pack("{s:s,s:s,s:f}", "type", rst, "rope_type", rst, "factor", short_float(factor));
        if (strcmp(rst, "yarn") == 0) {
            if (has_orig) json_object_set_new(rs, "original_max_position_embeddings", json_integer(orig));
            double b;
            if (gkey_f64(g, arch, "rope.scaling.yarn_beta_fast", &b)) json_object_set_new(rs, "beta_fast", json_real(short_float(b)));
            if (gkey_f64(g, arch, "rope.scaling.yarn_beta_slow", &b)) json_object_set_new(rs, "beta_slow", json_real(short_float(b)));
        }
    }
    json_object_set_new(o, "rope_scaling", rs);
    json_object_set_new(o, "tie_word_embeddings", json_boolean(ql_gguf_find_tensor(g, "output.weight") < 0));
    json_object_set_new(o, "vocab_size", json_integer(c->n_vocab));
    json_object_set_new(o, "hidden_act", json_string(gemma ? "gelu_pytorch_tanh" : "silu"));
    bool qkv_bias = ql_gguf_find_tensor(g, "blk.0.attn_q.bias") >= 0;
    if (strcmp(arch, "llama") == 0 || strcmp(arch, "qwen3") == 0 || gemma)
        json_object_set_new(o, "attention_bias", json_boolean(qkv_bias));
    if (strcmp(arch, "qwen2") == 0 || strcmp(arch, "qwen3") == 0)
        json_object_set_new(o, "use_sliding_window", json_false());
    int64_t swa = 0, pattern = c->a->swa_pattern;
    gkey_int(g, arch, "attention.sliding_window", &swa);
    gkey_int(g, arch, "attention.sliding_window_pattern", &pattern);
    if (gemma) {
        json_object_set_new(o, "hidden_activation", json_string("gelu_pytorch_tanh"));
        /* llama.cpp scales queries by 1/sqrt(head_dim) except for the 27B models */
        bool big = (!gemma3 && c->n_layer == 46) || (gemma3 && c->n_layer == 62);
        json_object_set_new(o, "query_pre_attn_scalar", json_integer(big ? c->n_embd / c->n_head : c->head_dim));
        json_object_set_new(o, "attn_logit_softcapping", key_real(g, arch, "attn_logit_softcapping"));
        json_object_set_new(o, "final_logit_softcapping", key_real(g, arch, "final_logit_softcapping"));
        if (swa <= 0) pattern = 1; /* no window: every layer global */
        bool listed;
        write_layer_types(o, g, c, swa, pattern, &listed);
        if (gemma3 && !listed) {
            json_object_set_new(o, "sliding_window_pattern", json_integer(pattern));
        }
        if (gemma3) {
            double b = 10000.0;
            gkey_f64(g, arch, "rope.freq_base_swa", &b);
            json_object_set_new(o, "rope_local_base_freq", json_real(short_float(b)));
        }
    }
    bool listed;
    if (!gemma && c->a->swa_pattern > 0 && swa > 0) write_layer_types(o, g, c, swa, pattern, &listed); /* OLMo-3 */
    for (int i = 0; c->a->scalars && c->a->scalars[2 * i] && i < HF_MAX_SCALARS; i++) /* Granite's multipliers */
        json_object_set_new(o, c->a->scalars[2 * i], key_real(g, arch, c->a->scalars[2 * i + 1]));
    if (phi3) {
        json_object_set_new(o, "original_max_position_embeddings", json_integer(has_orig ? orig : c->n_ctx));
        json_object_set_new(o, "sliding_window", swa > 0 ? json_integer(swa) : json_null());
    }
    json_object_set_new(o, "torch_dtype", json_string(torch_dtype));
    int64_t id;
    if (ql_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &id))
        json_object_set_new(o, "bos_token_id", json_integer(id));
    if (ql_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &id))
        json_object_set_new(o, "eos_token_id", json_integer(id));
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}

/* The GGUF keys config.json will give back on load (parsed the way ql_hf_load parses it): those are not
 * repeated in the safetensors metadata, so the config is their one source. */
static ql_status keys_from_config(const char *label, const char *cfg_text, ql_gguf **out) {
    *out = NULL;
    json_error_t err;
    json_t *root = json_loads(cfg_text, 0, &err);
    if (!root) return ql_fail(QL_ERR_FORMAT, "%s: config.json could not be re-read: %s", label, err.text);
    hf_config hc;
    char path[512];
    snprintf(path, sizeof path, "%s (config.json written for it)", label);
    ql_status s = parse_config(path, root, &hc);
    if (!s) {
        *out = ql_gguf_new();
        config_to_gguf(&hc, *out);
        free(hc.swa_layers);
    }
    json_decref(root);
    return s;
}

ql_status ql_hf_save(const ql_gguf *g, const char *dir) {
    const char *label = g->path ? g->path : "model";
    save_config c;
    ql_status s = gather_save_config(g, label, &c);
    if (s) return s;

    /* check everything before touching the folder */
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        if (!type_elem_size(t->type)) {
            const ql_type_info *ti = ql_type_get(t->type);
            return ql_fail(QL_ERR_UNSUPPORTED,
                           "%s: tensor '%s' is %s; safetensors export supports f32, f16 and bf16 only", label,
                           t->name, ti ? ti->name : "an unknown type");
        }
        if (!t->data && !t->produce)
            return ql_fail(QL_ERR_ARG, "%s: tensor '%s' has no data", label, t->name);
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return ql_fail(QL_ERR_IO, "%s: cannot create folder: %s", dir, strerror(errno));

    save_entry *ents = ql_calloc((size_t)(g->n_tensors ? g->n_tensors : 1), sizeof *ents);
    int64_t n = 0;
    json_t *hdr = json_object(), *meta = json_object();
    char *st_path = path_join(dir, "model.safetensors"), *cfg_path = path_join(dir, "config.json");
    char *hdr_text = NULL, *cfg_text = NULL;
    void *scratch = NULL, *scratch2 = NULL;
    ql_gguf *from_cfg = NULL;
    int n_f32 = 0, n_f16 = 0, n_bf16 = 0;

    /* data layout: 4-byte types first, then 2-byte ones, so every tensor stays aligned to its element */
    uint64_t off = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int64_t i = 0; i < g->n_tensors; i++) {
            const ql_gguf_tensor *t = &g->tensors[i];
            /* tensors config.json regenerates */
            if ((c.l3_ok && strcmp(t->name, "rope_freqs.weight") == 0) ||
                (c.longrope && (strcmp(t->name, "rope_factors_long.weight") == 0 ||
                                strcmp(t->name, "rope_factors_short.weight") == 0)))
                continue;
            bool shift = c.a->norm_shift && is_norm_weight(t->name) && t->n_dims == 1;
            uint32_t out_type = shift ? QL_TYPE_F32 : t->type;
            if ((type_elem_size(out_type) == 4) != (pass == 0)) continue;
            save_entry *e = &ents[n++];
            name_info ni;
            e->t = t;
            e->index = i;
            e->shift = shift;
            e->hf_name = map_name(t->name, false, c.a, &ni);
            e->offset = off;
            e->nbytes = shift ? (uint64_t)t->ne[0] * 4 : t->nbytes;
            off += e->nbytes;
            if (c.a->permute && ni.group == 1 && (ni.role == ROLE_Q || ni.role == ROLE_K)) {
                e->heads = (int)(ni.role == ROLE_Q ? c.n_head : c.n_head_kv);
                int64_t rows = t->n_dims >= 2 ? t->ne[1] : t->ne[0];
                if (rows % e->heads || (rows / e->heads) % 2 || (t->n_dims > 2 && t->ne[2] * t->ne[3] != 1)) {
                    s = ql_fail(QL_ERR_FORMAT,
                                "%s: tensor '%s' has %lld rows, not a whole number of %d even-sized heads",
                                label, t->name, (long long)rows, e->heads);
                    goto done;
                }
            }
            if (t->n_dims >= 2)
                *(t->type == QL_TYPE_F32 ? &n_f32 : t->type == QL_TYPE_F16 ? &n_f16 : &n_bf16) += 1;
            json_t *shape = json_array();
            for (int d = t->n_dims - 1; d >= 0; d--) json_array_append_new(shape, json_integer(t->ne[d]));
            const char *dt = out_type == QL_TYPE_F32 ? "F32" : out_type == QL_TYPE_F16 ? "F16" : "BF16";
            if (json_object_get(hdr, e->hf_name)) {
                json_decref(shape);
                s = ql_fail(QL_ERR_FORMAT, "%s: two tensors map to the Hugging Face name '%s'", label,
                            e->hf_name);
                goto done;
            }
            json_object_set_new(hdr, e->hf_name,
                                json_pack("{s:s,s:o,s:[I,I]}", "dtype", dt, "shape", shape, "data_offsets",
                                          (json_int_t)e->offset, (json_int_t)(e->offset + e->nbytes)));
        }

    const char *torch_dtype = n_bf16 > n_f16 && n_bf16 > n_f32 ? "bfloat16"
                              : n_f16 > n_f32                  ? "float16"
                                                               : "float32";
    cfg_text = config_json_text(g, &c, torch_dtype);
    if ((s = keys_from_config(label, cfg_text, &from_cfg))) goto done;

    /* every GGUF key that config.json does not carry: tokenizer, general.*, extra arch keys */
    json_object_set_new(meta, "format", json_string("pt"));
    for (int64_t i = 0; i < g->n_kv; i++) {
        const char *key = g->kv[i].key;
        if (strcmp(key, "general.architecture") == 0 || strcmp(key, "general.alignment") == 0) continue;
        char *enc = enc_value(&g->kv[i].val);
        int64_t ci = ql_gguf_find_kv(from_cfg, key);
        if (ci >= 0) {
            char *back = enc_value(&from_cfg->kv[ci].val);
            if (!enc || !back || strcmp(enc, back) != 0)
                ql_log(1, "%s: %s reads back from config.json as %s, not %s", label, key, back ? back : "?",
                       enc ? enc : "?");
            free(back);
            free(enc);
            continue;
        }
        char mk[512];
        snprintf(mk, sizeof mk, "%s%s", QLAB_META_PREFIX, key);
        if (enc) json_object_set_new(meta, mk, json_string(enc));
        free(enc);
    }
    json_object_set_new(hdr, "__metadata__", meta);
    meta = NULL;
    hdr_text = json_dumps(hdr, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!hdr_text) {
        s = ql_fail(QL_ERR_FORMAT, "%s: metadata could not be encoded as JSON", label);
        goto done;
    }

    /* model.safetensors */
    ql_atomic_file *af;
    if ((s = ql_atomic_open(st_path, &af))) goto done;
    size_t hl = strlen(hdr_text), padded = (hl + 7) & ~(size_t)7;
    uint8_t len8[8];
    for (int b = 0; b < 8; b++) len8[b] = (uint8_t)((uint64_t)padded >> (8 * b));
    s = ql_atomic_write(af, len8, 8);
    if (!s) s = ql_atomic_write(af, hdr_text, hl);
    if (!s) s = ql_atomic_write(af, "        ", padded - hl);
    for (int64_t i = 0; i < n && !s; i++) s = write_tensor_bytes(af, &ents[i], &scratch, &scratch2);
    if (s) ql_atomic_abort(af);
    else s = ql_atomic_commit(af);
    if (s) goto done;

    /* a stale shard index would shadow the new file on the next load */
    char *idx = path_join(dir, "model.safetensors.index.json");
    unlink(idx);
    free(idx);

    s = write_text_file(cfg_path, cfg_text);
done:
    for (int64_t i = 0; i < n; i++) free(ents[i].hf_name);
    free(ents);
    json_decref(hdr);
    json_decref(meta);
    free(hdr_text);
    free(cfg_text);
    free(st_path);
    free(cfg_path);
    free(scratch);
    free(scratch2);
    ql_gguf_free(from_cfg);
    return s;
}

/* ---------------------------------------------------------------- for folder exporters */

char *ql_hf_tensor_name(const ql_gguf *g, const char *gguf_name, int *rope_heads) {
    name_info ni;
    const hf_arch *a = arch_for_gguf(g);
    char *hf = map_name(gguf_name, false, a, &ni);
    *rope_heads = 0;
    save_config c;
    if (ni.group == 1 && (ni.role == ROLE_Q || ni.role == ROLE_K) && !gather_save_config(g, "model", &c) &&
        c.a->permute)
        *rope_heads = (int)(ni.role == ROLE_Q ? c.n_head : c.n_head_kv);
    return hf;
}

ql_status ql_hf_config_text(const ql_gguf *g, const char *torch_dtype, char **out) {
    *out = NULL;
    save_config c;
    ql_status s = gather_save_config(g, g->path ? g->path : "model", &c);
    if (s) return s;
    *out = config_json_text(g, &c, torch_dtype);
    return *out ? QL_OK : ql_fail(QL_ERR_FORMAT, "%s: config.json could not be encoded", g->path ? g->path : "model");
}

bool ql_hf_norm_shift(const ql_gguf *g, const char *gguf_name) {
    const hf_arch *a = arch_for_gguf(g);
    return a && a->norm_shift && is_norm_weight(gguf_name);
}
