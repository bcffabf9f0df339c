/* synth.c — synthetic models of the described architectures (see synth.h). Every row is drawn from its own seeded stream, so
 * the file is identical whatever the thread count. */
#include "core/synth.h"
#include "kernels/ggml_types.h"
#include "base/parallel.h"
#include "core/arch.h"
#include "core/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ql_synth_shape g_shapes[] = {
    {"tiny", 4, 256, 8, 4, 768, 512, 256, 10000.0f, false, QL_TYPE_F32, 0, .arch = NULL},
    /* Mixtral's layout at test size: 8 experts, 2 per token, as `llama` with llama.expert_count */
    {"tiny-moe", 2, 64, 4, 2, 128, 512, 256, 10000.0f, false, QL_TYPE_F32, 0, .arch = NULL, .n_expert = 8,
     .n_expert_used = 2},
    /* Qwen3-MoE's at test size: q/k norm, NEOX RoPE, experts narrower than the dense width it also records */
    {"tiny-qwen3moe", 2, 64, 4, 2, 192, 512, 256, 1000000.0f, false, QL_TYPE_F32, 32, .arch = "qwen3moe",
     .norm_eps = 1e-6f, .n_expert = 16, .n_expert_used = 4, .n_ff_exp = 64},
    {"llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, 131072, 500000.0f, true, QL_TYPE_F16, 0, .arch = NULL},
    {"llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.0f, false, QL_TYPE_F16, 0, .arch = NULL},
    {"llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0f, false, QL_TYPE_F16, 0, .arch = NULL},
    /* the shapes of the real configs (config.json of each model) */
    {"llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, 500000.0f, false, QL_TYPE_F16, 0,
     .rope_llama3 = {8.0f, 1.0f, 4.0f, 8192.0f}},
    {"qwen3-8b", 36, 4096, 32, 8, 12288, 151936, 40960, 1000000.0f, false, QL_TYPE_BF16, 128, .arch = "qwen3",
     .norm_eps = 1e-6f},
    {"gemma-3-4b", 34, 2560, 8, 4, 10240, 262144, 131072, 1000000.0f, true, QL_TYPE_BF16, 256, .arch = "gemma3",
     .norm_eps = 1e-6f, .rope_linear = 8.0f, .rope_base_swa = 10000.0f, .n_swa = 1024},
    /* general.name must not contain "phi3"/"phi-3": llama.cpp's vocabulary loader then looks for Phi-3's
     * <|endoftext|>, which the synthetic byte vocabulary lacks */
    {"phi-3-mini", 32, 3072, 32, 32, 8192, 32064, 4096, 10000.0f, false, QL_TYPE_BF16, 0, .arch = "phi3",
     .label = "qlab-synth-p3-mini"},
    {"mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, 1000000.0f, false, QL_TYPE_BF16, 0, .arch = NULL,
     .n_expert = 8, .n_expert_used = 2},
    {"qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960, 1000000.0f, false, QL_TYPE_BF16, 128, .arch = "qwen3moe",
     .norm_eps = 1e-6f, .n_expert = 128, .n_expert_used = 8, .n_ff_exp = 768},
    /* OLMoE's at test size: full-width q/k norm, 8 experts (2 per token) without renormalisation */
    {"tiny-olmoe", 2, 64, 4, 4, 128, 512, 256, 10000.0f, false, QL_TYPE_F32, 0, .arch = "olmoe", .n_expert = 8,
     .n_expert_used = 2},
    {"olmoe-1b-7b", 16, 2048, 16, 16, 1024, 50304, 4096, 10000.0f, false, QL_TYPE_BF16, 0, .arch = "olmoe",
     .n_expert = 64, .n_expert_used = 8},
    {"qwen1.5-moe-a2.7b", 24, 2048, 16, 16, 5632, 151936, 8192, 1000000.0f, false, QL_TYPE_BF16, 0, .arch = "qwen2moe",
     .norm_eps = 1e-6f, .n_expert = 60, .n_expert_used = 4, .n_ff_exp = 1408, .n_ff_shexp = 5632},
    /* qwen2moe at test size: q/k/v biases, 8 experts (2 per token) without renormalisation, a gated shared expert */
    {"tiny-qwen2moe", 2, 64, 4, 2, 192, 512, 256, 1000000.0f, false, QL_TYPE_F32, 0, .arch = "qwen2moe",
     .norm_eps = 1e-6f, .n_expert = 8, .n_expert_used = 2, .n_ff_exp = 64, .n_ff_shexp = 96},
    /* Test models of the dense architectures, made to give llama.cpp's logits (tests/data/arch): each turns on
     * its features with values far enough from neutral that leaving one out shows. Granite-3's multipliers
     * (embedding 12, residual 0.22, attention 1/head_dim, logits /8) */
    {"tiny-granite", 2, 64, 4, 2, 128, 512, 256, 10000.0f, false, QL_TYPE_F32, 0, .arch = "granite",
     .scales = {12.0f, 0.22f, 0.0625f, 8.0f}},
    /* Granite-MoE-shared: 8 experts (2 per token, as wide as feed_forward_length: llama.cpp reads no expert width
     * for granite) renormalised, an ungated shared expert */
    {"tiny-granitemoe", 2, 64, 4, 2, 128, 512, 256, 10000.0f, false, QL_TYPE_F32, 0, .arch = "granitemoe",
     .n_expert = 8, .n_expert_used = 2, .n_ff_shexp = 96, .scales = {12.0f, 0.22f, 0.0625f, 8.0f}},
    /* OLMo-3's layout: post-norms only, full-width q/k norm, a window of 8 on 3 of every 4 layers, YaRN x4 from
     * 16 positions on the global layer */
    {"tiny-olmo2", 4, 64, 4, 4, 128, 512, 256, 500000.0f, false, QL_TYPE_F32, 0, .arch = "olmo2", .norm_eps = 1e-6f,
     .n_swa = 8, .rope_yarn = {4.0f, 16.0f, 0.0f}},
    /* SmolLM3: layer 3 of 4 without RoPE */
    {"tiny-smollm3", 4, 64, 4, 2, 128, 512, 256, 10000.0f, true, QL_TYPE_F32, 0, .arch = "smollm3"},
    {"tiny-exaone", 2, 64, 4, 2, 128, 512, 256, 10000.0f, false, QL_TYPE_F32, 0, .arch = "exaone"},
    /* gpt-oss's layout at test size: biases everywhere, softmax sinks, a window of 8 on layer 0, 8 experts of which
     * the top 4 logits are softmaxed, SwiGLU-OAI, YaRN x4 from 16 positions */
    {"tiny-gptoss", 2, 64, 4, 2, 64, 512, 256, 150000.0f, false, QL_TYPE_F32, 16, .arch = "gpt-oss",
     .n_expert = 8, .n_expert_used = 4, .n_ff_exp = 64, .n_swa = 8, .rope_yarn = {4.0f, 16.0f, 0.0f}},
    /* gpt-oss-20b (config.json): 24 layers of 2880, 64 heads of 64 (8 for K/V), 32 experts of 2880, 4 per token */
    {"gpt-oss-20b", 24, 2880, 64, 8, 2880, 201088, 131072, 150000.0f, false, QL_TYPE_BF16, 64, .arch = "gpt-oss",
     .n_expert = 32, .n_expert_used = 4, .n_ff_exp = 2880, .n_swa = 128, .rope_yarn = {32.0f, 4096.0f, 0.0f}},
    /* ERNIE-4.5-0.3B's layout with q/k/v biases: tied output */
    {"tiny-ernie4_5", 2, 64, 4, 2, 128, 512, 256, 500000.0f, true, QL_TYPE_F32, 0, .arch = "ernie4_5",
     .biases = true},
    /* Seed-OSS's: NEOX RoPE, head_dim 32 beside an embedding of 64, q/k/v biases, the FFN norm under its other name */
    {"tiny-seed_oss", 2, 64, 4, 2, 128, 512, 256, 10000000.0f, false, QL_TYPE_F32, 32, .arch = "seed_oss",
     .norm_eps = 1e-6f, .biases = true},
    /* EXAONE-4.0-1.2B's layout (no window below 64 layers) and the 32B's at 64 thin layers: a window of 8 on 3 of
     * every 4 layers, which alone rotate */
    {"tiny-exaone4", 4, 64, 4, 2, 128, 512, 256, 1000000.0f, true, QL_TYPE_F32, 0, .arch = "exaone4"},
    {"tiny-exaone4-swa", 64, 32, 2, 1, 64, 512, 256, 1000000.0f, false, QL_TYPE_F32, 0, .arch = "exaone4",
     .n_swa = 8},
    /* Command R7B's layout: LayerNorm, parallel attention and FFN, a window of 8 on 3 of 4 layers (which alone
     * rotate), tied output, logits x0.25 */
    {"tiny-cohere2", 4, 64, 4, 2, 128, 512, 256, 50000.0f, true, QL_TYPE_F32, 0, .arch = "cohere2", .n_swa = 8,
     .scales = {0, 0, 0, 0.25f}},
    /* GLM-4.5's at test size: layer 0 dense (ff 128), then 8 experts of 32 (4 per token) chosen by sigmoid with a
     * selection bias, renormalised and scaled x2.5, one shared expert; half of each head rotates (NEOX). Without
     * GLM's q/k/v biases (tiny-glm4 has them): with them one row of these random weights lands 1e-3 from llama.cpp,
     * the dense layer 0 already 4e-6 apart on it (float noise a later layer amplifies), the other 31 rows 1e-5 */
    {"tiny-glm4moe", 3, 64, 4, 2, 128, 512, 256, 1000000.0f, false, QL_TYPE_F32, 32, .arch = "glm4moe",
     .n_expert = 8, .n_expert_used = 4, .n_ff_exp = 32, .n_ff_shexp = 32, .dense_lead = 1, .moe_scale = 2.5f,
     .rope_dim = 16},
    /* GLM-4's: half of each 32-wide head rotates (adjacent pairs), q/k/v biases, fused gate+up, four norms */
    {"tiny-glm4", 2, 64, 2, 1, 128, 512, 256, 10000.0f, false, QL_TYPE_F32, 32, .arch = "glm4", .biases = true,
     .rope_dim = 16},
    /* Ministral-3: YaRN x4 from 8 positions with a log multiplier, temperature tuning every 8 positions */
    {"tiny-mistral3", 2, 64, 4, 2, 128, 512, 256, 1000000.0f, false, QL_TYPE_F32, 0, .arch = "mistral3",
     .rope_yarn = {4.0f, 8.0f, 0.5f}, .attn_temp = 0.5f},
};

const ql_synth_shape *ql_synth_shapes(int *n) {
    *n = (int)QL_ARRAY_LEN(g_shapes);
    return g_shapes;
}

const ql_synth_shape *ql_synth_find(const char *name) {
    for (size_t i = 0; i < QL_ARRAY_LEN(g_shapes); i++)
        if (strcmp(g_shapes[i].name, name) == 0) return &g_shapes[i];
    return NULL;
}

ql_status ql_synth_parse_dims(const char *spec, ql_synth_shape *s) {
    char *copy = ql_strdup(spec), *save = NULL;
    ql_status st = QL_OK;
    for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) { st = ql_fail(QL_ERR_ARG, "--dims: '%s' is not key=value", kv); break; }
        *eq = 0;
        char *end;
        double v = strtod(eq + 1, &end);
        if (*end || v <= 0 || v > 1e7) { st = ql_fail(QL_ERR_ARG, "--dims: bad value for %s", kv); break; }
        int iv = (int)v;
        if (!strcmp(kv, "layers")) s->n_layer = iv;
        else if (!strcmp(kv, "embd")) s->n_embd = iv;
        else if (!strcmp(kv, "heads")) s->n_head = iv;
        else if (!strcmp(kv, "kv")) s->n_head_kv = iv;
        else if (!strcmp(kv, "ff")) s->n_ff = iv;
        else if (!strcmp(kv, "vocab")) s->n_vocab = iv;
        else if (!strcmp(kv, "ctx")) s->n_ctx = iv;
        else if (!strcmp(kv, "rope_base")) s->rope_base = (float)v;
        else if (!strcmp(kv, "tied")) s->tied = iv != 0;
        else if (!strcmp(kv, "head_dim")) s->head_dim = iv;
        else if (!strcmp(kv, "experts")) s->n_expert = iv;
        else if (!strcmp(kv, "experts_used")) s->n_expert_used = iv;
        else if (!strcmp(kv, "ff_exp")) s->n_ff_exp = iv;
        else if (!strcmp(kv, "ff_shexp")) s->n_ff_shexp = iv;
        else { st = ql_fail(QL_ERR_ARG, "--dims: unknown key '%s' (layers, embd, heads, kv, ff, vocab, ctx, head_dim, rope_base, tied, experts, experts_used, ff_exp, ff_shexp)", kv); break; }
    }
    free(copy);
    const int hd = s->head_dim ? s->head_dim : s->n_head ? s->n_embd / s->n_head : 0;
    if (!st && ((!s->head_dim && s->n_embd % s->n_head) || s->n_head % s->n_head_kv || hd % 2 || s->n_vocab < 259))
        st = ql_fail(QL_ERR_ARG, "--dims: embd must divide by heads (or head_dim be given), heads by kv, head dim must be even, vocab >= 259");
    if (!st && s->n_expert > 0 && (s->n_expert_used < 1 || s->n_expert_used > s->n_expert || s->n_expert > 4096))
        st = ql_fail(QL_ERR_ARG, "--dims: experts_used must be 1..experts (experts at most 4096)");
    return st;
}

/* splitmix64 seeds, xoshiro-ish fast stream */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
typedef struct { uint64_t s; } rng;
static inline uint64_t rng_next(rng *r) { return r->s = mix64(r->s); }
static inline float rng_unif(rng *r) { return ((float)(rng_next(r) >> 40) + 0.5f) * (1.0f / 16777216.0f); }
static inline float rng_normal(rng *r) {
    float u1 = rng_unif(r), u2 = rng_unif(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

typedef enum { K_EMBD, K_NORM, K_ATTN_NORM, K_LINEAR_IN, K_LINEAR_OUT, K_BIAS, K_ROPE_FREQS } tkind;

typedef struct {
    const ql_synth_shape *sh;
    uint64_t seed;
    int n_threads;
    tkind *kinds;
    uint8_t *outlier; /* per embedding channel */
    const ql_progress *progress;
    int64_t done_bytes, total_bytes;
} synth_ctx;

typedef struct {
    synth_ctx *c;
    const ql_gguf_tensor *t;
    tkind kind;
    uint64_t tseed;
    void *dst;
} fill_job;

/* Llama 3.1's RoPE factors as llama.cpp's converter computes them (LlamaModel.generate_extra_tensors):
 * 1 for wavelengths under original_context / high_freq_factor, `factor` above original_context /
 * low_freq_factor, and a smooth ramp between. */
static void llama3_rope_factors(const ql_synth_shape *sh, float *out, int64_t n) {
    const double factor = sh->rope_llama3[0], lo = sh->rope_llama3[1], hi = sh->rope_llama3[2], ctx = sh->rope_llama3[3];
    const int64_t dim = 2 * n;
    for (int64_t i = 0; i < n; i++) {
        double freq = 1.0 / pow(sh->rope_base, (double)(2 * i) / (double)dim);
        double wavelen = 2 * M_PI / freq;
        if (wavelen < ctx / hi) out[i] = 1.0f;
        else if (wavelen > ctx / lo) out[i] = (float)factor;
        else {
            double smooth = (ctx / wavelen - lo) / (hi - lo);
            out[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
        }
    }
}

static void fill_rows(void *vctx, int worker, int64_t r0, int64_t r1) {
    (void)worker;
    fill_job *j = vctx;
    const ql_gguf_tensor *t = j->t;
    const int64_t K = t->ne[0];
    float *row = ql_malloc((size_t)K * sizeof(float));
    float base_std = 1.0f / sqrtf((float)K);
    for (int64_t r = r0; r < r1; r++) {
        rng g = {mix64(j->tseed ^ (uint64_t)r * 0x632be59bd9b4e019ull)};
        if (j->kind == K_ROPE_FREQS) {
            llama3_rope_factors(j->c->sh, row, K);
        } else if (j->kind == K_BIAS) {
            for (int64_t i = 0; i < K; i++) row[i] = 0.1f * rng_normal(&g);
        } else if (j->kind == K_NORM || j->kind == K_ATTN_NORM) {
            for (int64_t i = 0; i < K; i++) {
                float v = 1.0f + 0.1f * rng_normal(&g);
                if (j->kind == K_ATTN_NORM && j->c->outlier[i]) v *= 8.0f; /* where outlier features come from */
                row[i] = v;
            }
        } else {
            /* per-row scale spread (log-normal), heavy tails (scale mixture), outlier input columns */
            float row_scale = base_std * expf(0.35f * rng_normal(&g));
            if (j->kind == K_EMBD) row_scale = 0.02f * expf(0.2f * rng_normal(&g));
            for (int64_t i = 0; i < K; i++) {
                float z = rng_normal(&g);
                if (rng_unif(&g) < 0.02f) z *= 4.0f;
                float v = z * row_scale;
                if (j->kind == K_LINEAR_IN && j->c->outlier[i]) v *= 3.0f;
                row[i] = v;
            }
        }
        size_t off = (size_t)r * (size_t)K;
        if (t->type == QL_TYPE_F32) memcpy((float *)j->dst + off, row, (size_t)K * 4);
        else if (t->type == QL_TYPE_F16)
            for (int64_t i = 0; i < K; i++) ((uint16_t *)j->dst)[off + i] = ql_fp32_to_fp16(row[i]);
        else
            for (int64_t i = 0; i < K; i++) ((uint16_t *)j->dst)[off + i] = ql_fp32_to_bf16(row[i]);
    }
    free(row);
}

/* The writer calls produce(user, index, ...); we need the tensor, so user points at this. */
typedef struct {
    synth_ctx *c;
    ql_gguf *g;
} produce_ctx;

static ql_status produce_tensor(void *user, int64_t index, void *dst, uint64_t nbytes) {
    produce_ctx *p = user;
    synth_ctx *c = p->c;
    if (ql_progress_cancelled(c->progress)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    const ql_gguf_tensor *t = &p->g->tensors[index];
    fill_job j = {c, t, c->kinds[index], mix64(c->seed ^ mix64((uint64_t)index + 1)), dst};
    ql_parallel_for(c->n_threads, t->ne[1] * t->ne[2], fill_rows, &j);
    c->done_bytes += (int64_t)nbytes;
    ql_progress_report(c->progress, c->done_bytes, c->total_bytes, "generating");
    return QL_OK;
}

/* The file's keys and tensor list; kinds[i] says how tensor i is drawn (sized for every tensor). */
static ql_status synth_build(const ql_synth_shape *sh, ql_gguf **out, tkind **kinds_out) {
    *out = NULL;
    const char *arch = sh->arch ? sh->arch : "llama";
    const ql_arch *desc = ql_arch_find(arch);
    if (!desc) return ql_fail(QL_ERR_ARG, "synth: shape '%s' names unknown architecture '%s'", sh->name, arch);
    ql_gguf *g = ql_gguf_new();
    char k[128];
    ql_gguf_set_str(g, "general.architecture", arch);
    char nm[96];
    snprintf(nm, sizeof nm, "qlab-synth-%s", sh->name);
    ql_gguf_set_str(g, "general.name", sh->label ? sh->label : nm);
    ql_gguf_set_str(g, "general.description", "synthetic weights from qlab synth: for speed tests, not quality");
    ql_gguf_set_u32(g, "general.file_type", sh->type == QL_TYPE_F32 ? 0 : sh->type == QL_TYPE_F16 ? 1 : 32);
#define SETU(key, v) snprintf(k, sizeof k, "%s." key, arch), ql_gguf_set_u32(g, k, (uint32_t)(v))
#define SETF(key, v) snprintf(k, sizeof k, "%s." key, arch), ql_gguf_set_f32(g, k, (float)(v))
    SETU("context_length", sh->n_ctx);
    SETU("embedding_length", sh->n_embd);
    SETU("block_count", sh->n_layer);
    SETU("feed_forward_length", sh->n_ff);
    SETU("attention.head_count", sh->n_head);
    SETU("attention.head_count_kv", sh->n_head_kv);
    const int64_t hd = sh->head_dim ? sh->head_dim : sh->n_embd / sh->n_head;
    SETU("rope.dimension_count", sh->rope_dim > 0 ? sh->rope_dim : hd);
    if (sh->head_dim) {
        SETU("attention.key_length", hd);
        SETU("attention.value_length", hd);
    }
    SETU("vocab_size", sh->n_vocab);
    SETF("rope.freq_base", sh->rope_base);
    if (desc->layer_norm) SETF("attention.layer_norm_epsilon", sh->norm_eps > 0 ? sh->norm_eps : 1e-5f);
    else SETF("attention.layer_norm_rms_epsilon", sh->norm_eps > 0 ? sh->norm_eps : 1e-5f);
    if (sh->n_swa > 0) SETU("attention.sliding_window", sh->n_swa);
    if (sh->n_expert > 0) {
        SETU("expert_count", sh->n_expert);
        SETU("expert_used_count", sh->n_expert_used);
        if (sh->n_ff_exp > 0) SETU("expert_feed_forward_length", sh->n_ff_exp);
        /* GLM-4.5 counts its shared experts in expert widths */
        if (sh->n_ff_shexp > 0 && desc->moe_dense_lead && sh->n_ff_exp > 0)
            SETU("expert_shared_count", sh->n_ff_shexp / sh->n_ff_exp);
        else if (sh->n_ff_shexp > 0)
            SETU("expert_shared_feed_forward_length", sh->n_ff_shexp);
        if (desc->moe_dense_lead) SETU("leading_dense_block_count", sh->dense_lead);
        if (sh->moe_scale > 0) {
            SETF("expert_weights_scale", sh->moe_scale);
            snprintf(k, sizeof k, "%s.expert_weights_norm", arch);
            ql_gguf_set_bool(g, k, true);
            SETU("expert_gating_func", 2);
        }
    }
    if (sh->rope_base_swa > 0) SETF("rope.freq_base_swa", sh->rope_base_swa);
    static const char *const scale_keys[4] = {"embedding_scale", "residual_scale", "attention.scale", "logit_scale"};
    for (int i = 0; i < 4; i++)
        if (sh->scales[i] > 0) snprintf(k, sizeof k, "%s.%s", arch, scale_keys[i]), ql_gguf_set_f32(g, k, sh->scales[i]);
    if (sh->rope_yarn[0] > 0) {
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        ql_gguf_set_str(g, k, "yarn");
        SETF("rope.scaling.factor", sh->rope_yarn[0]);
        SETU("rope.scaling.original_context_length", sh->rope_yarn[1]);
        if (sh->rope_yarn[2] > 0) SETF("rope.scaling.yarn_log_multiplier", sh->rope_yarn[2]);
    }
    if (sh->attn_temp > 0) SETF("attention.temperature_scale", sh->attn_temp);
    if (sh->rope_linear > 0) {
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        ql_gguf_set_str(g, k, "linear");
        SETF("rope.scaling.factor", sh->rope_linear);
    }
#undef SETU
#undef SETF
    ql_tokenizer_bytes_to_gguf(g, sh->n_vocab);

    const int64_t D = sh->n_embd;
    const int64_t Q = sh->n_head * hd, KV = sh->n_head_kv * hd, F = sh->n_ff;
    int64_t cap = 4 + QL_ROLE_COUNT * (int64_t)sh->n_layer;
    tkind *kinds = ql_calloc((size_t)cap, sizeof(tkind));
    ql_status s = QL_OK;
#define ADD3(name, kind, ne0, ne1, ne2, type) do { \
        int64_t ne[3] = {ne0, ne1, ne2}; \
        int64_t idx = ql_gguf_add_tensor(g, name, type, (ne2) > 1 ? 3 : (ne1) > 1 ? 2 : 1, ne, NULL); \
        if (idx < 0) { s = QL_ERR_ARG; goto out; } \
        kinds[idx] = kind; \
    } while (0)
#define ADD(name, kind, ne0, ne1, type) ADD3(name, kind, ne0, ne1, 1, type)
    ql_need need[QL_ROLE_COUNT];
    ADD("token_embd.weight", K_EMBD, D, sh->n_vocab, sh->type);
    if (sh->rope_llama3[0] > 0) ADD("rope_freqs.weight", K_ROPE_FREQS, hd / 2, 1, QL_TYPE_F32);
    for (int l = 0; l < sh->n_layer; l++) {
        ql_arch_layer_need(desc, l >= sh->dense_lead ? sh->n_expert : 0, need);
        /* the description's required roles, in role order (llama: attn_norm, q, k, v, output, ffn_norm,
         * gate, up, down, the order llama.cpp's converter writes) */
        for (int r = 0; r < QL_ROLE_COUNT; r++) {
            const ql_role_info *ri = ql_role_get((ql_role)r);
            /* and an optional shared expert (granitemoe) when the shape has one */
            /* and an optional bias when the shape asks for them */
            if (need[r] != QL_NEED_REQUIRED &&
                !(need[r] == QL_NEED_OPTIONAL && sh->n_ff_shexp > 0 &&
                  (ri->ne0 == QL_DIM_FF_SHEXP || ri->ne1 == QL_DIM_FF_SHEXP)) &&
                !(need[r] == QL_NEED_OPTIONAL && sh->biases && strstr(ri->suffix, ".bias")))
                continue;
            const int64_t dims[] = {[QL_DIM_1] = 1, [QL_DIM_EMBD] = D, [QL_DIM_Q] = Q, [QL_DIM_KV] = KV,
                                    [QL_DIM_QKV] = Q + 2 * KV, [QL_DIM_HEAD] = hd, [QL_DIM_FF] = F, [QL_DIM_2FF] = 2 * F,
                                    [QL_DIM_EXPERT] = sh->n_expert, [QL_DIM_FF_EXP] = sh->n_ff_exp > 0 ? sh->n_ff_exp : F,
                                    [QL_DIM_FF_SHEXP] = sh->n_ff_shexp > 0 ? sh->n_ff_shexp : F,
                                    [QL_DIM_HEADS] = sh->n_head};
            const int64_t ne0 = dims[ql_arch_role_ne0(desc, (ql_role)r)], ne1 = dims[ri->ne1], ne2 = dims[ri->ne2];
            tkind kind = ri->input == QL_IN_ATTN || ri->input == QL_IN_FFN || r == QL_ROLE_FFN_GATE_INP ||
                                 r == QL_ROLE_FFN_GATE_INP_SHEXP
                             ? K_LINEAR_IN
                         : ri->input != QL_IN_NONE                          ? K_LINEAR_OUT
                         : r == QL_ROLE_ATTN_NORM || r == QL_ROLE_FFN_NORM   ? K_ATTN_NORM
                         : strstr(ri->suffix, ".bias")                       ? K_BIAS
                                                                             : K_NORM;
            char n[96];
            snprintf(n, sizeof n, "blk.%d.%s", l, ri->suffix);
            /* the router and the [width, expert] biases stay F32, as llama.cpp's converter writes them */
            ADD3(n, kind, ne0, ne1, ne2, ne1 > 1 && ri->input != QL_IN_NONE ? sh->type : QL_TYPE_F32);
        }
    }
    ADD("output_norm.weight", K_NORM, D, 1, QL_TYPE_F32);
    if (!sh->tied) ADD("output.weight", K_LINEAR_OUT, D, sh->n_vocab, sh->type);
#undef ADD
#undef ADD3
out:
    if (s) {
        ql_gguf_free(g);
        free(kinds);
        return s;
    }
    *out = g;
    if (kinds_out) *kinds_out = kinds;
    else free(kinds);
    return QL_OK;
}

ql_status ql_synth_describe(const ql_synth_shape *sh, ql_gguf **out) { return synth_build(sh, out, NULL); }

ql_status ql_synth_write(const ql_synth_shape *sh, uint64_t seed, const char *path, int n_threads,
                         const ql_progress *progress) {
    ql_gguf *g;
    synth_ctx c = {.sh = sh, .seed = seed, .n_threads = n_threads, .progress = progress};
    ql_status s = synth_build(sh, &g, &c.kinds);
    if (s) return s;
    const int64_t D = sh->n_embd;
    c.outlier = ql_calloc((size_t)D, 1);
    rng og = {mix64(seed ^ 0xabcdef)};
    for (int i = 0; i < 4 + D / 512; i++) c.outlier[rng_next(&og) % (uint64_t)D] = 1;
    produce_ctx pc = {&c, g};
    for (int64_t i = 0; i < g->n_tensors; i++) {
        g->tensors[i].produce = produce_tensor;
        g->tensors[i].produce_user = &pc;
        c.total_bytes += (int64_t)g->tensors[i].nbytes;
    }
    s = ql_gguf_write(g, path, progress);
    free(c.kinds);
    free(c.outlier);
    ql_gguf_free(g);
    return s;
}
