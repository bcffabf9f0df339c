/* hf.c — Hugging Face model folders (config.json + model.safetensors or shards listed in
 * model.safetensors.index.json + tokenizer.json) to and from the common ql_gguf representation:
 * GGUF metadata keys, GGUF tensor names, GGUF (rope-interleaved) q/k row order for llama.
 * Loaded tensors point into the mmapped shards (adopted by the ql_gguf) except where bytes must change
 * (llama q/k permutation, misaligned data), which live in buffers the ql_gguf owns.
 * ql_hf_save writes config.json and one model.safetensors whose "__metadata__" also carries every
 * non-architecture GGUF key (tokenizer included) so HF -> GGUF -> HF -> GGUF round-trips exactly.
 * No global state: concurrent loads/saves of different folders are fine. */
#include "core/model.h"
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

/* ---------------------------------------------------------------- tensor names */

typedef struct {
    const char *hf, *gg;
} name_pair;

/* Order here is the order tensors get inside a layer. */
static const name_pair g_layer_names[] = {
    {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
    {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
    {"self_attn.q_norm", "attn_q_norm"}, {"self_attn.k_norm", "attn_k_norm"},
    {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
    {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},
};
enum { ROLE_Q = 1, ROLE_K = 2 };

/* group: 0 embedding, 1 layers, 2 final norm, 3 classifier, 4 anything else */
static const name_pair g_global_names[] = {
    {"model.embed_tokens", "token_embd"},
    {NULL, NULL},
    {"model.norm", "output_norm"},
    {"lm_head", "output"},
};

typedef struct {
    int group, layer, role, bias;
} name_info;

/* Maps a tensor name between HF and GGUF spelling. Names it does not know are passed through
 * unchanged (group 4). Returns a malloc'ed string. */
static char *map_name(const char *name, bool to_gguf, name_info *ni) {
    memset(ni, 0, sizeof *ni);
    ni->group = 4;
    ni->layer = -1;
    ni->role = -1;
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
        for (size_t i = 0; i < QL_ARRAY_LEN(g_layer_names); i++) {
            const char *in = to_gguf ? g_layer_names[i].hf : g_layer_names[i].gg;
            const char *out = to_gguf ? g_layer_names[i].gg : g_layer_names[i].hf;
            if (strlen(in) == mlen && strncmp(p, in, mlen) == 0) {
                snprintf(buf, sizeof buf, "%s%d.%s.%s", pfx_out, layer, out, suffix);
                ni->group = 1, ni->layer = layer, ni->role = (int)i;
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
    char arch[16];
    bool permute; /* llama-style rope: q/k rows need the HF -> GGUF permutation */
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx, head_dim;
    bool head_dim_given, tied;
    double eps, rope_base, rope_factor;
    char rope_type[32];
    int64_t bos, eos; /* -1 when not given */
} hf_config;

static const struct {
    const char *model_type, *hf_class, *arch;
    bool permute;
} g_archs[] = {
    {"llama", "LlamaForCausalLM", "llama", true},
    {"mistral", "MistralForCausalLM", "llama", true},
    {"qwen2", "Qwen2ForCausalLM", "qwen2", false},
    {"qwen3", "Qwen3ForCausalLM", "qwen3", false},
};

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

/* Reads and validates config.json into *c. `path` names the file in errors. */
static ql_status parse_config(const char *path, const json_t *root, hf_config *c) {
    memset(c, 0, sizeof *c);
    c->bos = c->eos = -1;
    const json_t *mt = json_object_get(root, "model_type");
    const char *type = json_is_string(mt) ? json_string_value(mt) : NULL;
    int ai = -1;
    for (size_t i = 0; i < QL_ARRAY_LEN(g_archs); i++) {
        if (type && strcmp(type, g_archs[i].model_type) == 0) ai = (int)i;
        const json_t *cls = json_array_get(json_object_get(root, "architectures"), 0);
        if (!type && json_is_string(cls) && strcmp(json_string_value(cls), g_archs[i].hf_class) == 0)
            ai = (int)i;
    }
    if (ai < 0)
        return ql_fail(QL_ERR_UNSUPPORTED,
                       "%s: model_type '%.64s' is not supported (llama, mistral, qwen2, qwen3)", path,
                       type ? type : "(missing)");
    snprintf(c->arch, sizeof c->arch, "%s", g_archs[ai].arch);
    c->permute = g_archs[ai].permute;
    ql_status s;
    if ((s = cfg_int(path, root, "hidden_size", true, 0, 1, 1 << 20, &c->n_embd)) ||
        (s = cfg_int(path, root, "num_hidden_layers", true, 0, 1, 4096, &c->n_layer)) ||
        (s = cfg_int(path, root, "num_attention_heads", true, 0, 1, 4096, &c->n_head)) ||
        (s = cfg_int(path, root, "num_key_value_heads", false, c->n_head, 1, c->n_head, &c->n_head_kv)) ||
        (s = cfg_int(path, root, "intermediate_size", true, 0, 1, 1 << 22, &c->n_ff)) ||
        (s = cfg_int(path, root, "vocab_size", false, 0, 1, 1 << 24, &c->n_vocab)) ||
        (s = cfg_int(path, root, "max_position_embeddings", false, 2048, 1, (int64_t)1 << 30, &c->n_ctx)) ||
        (s = cfg_int(path, root, "head_dim", false, 0, 2, 4096, &c->head_dim)))
        return s;
    if (c->n_head % c->n_head_kv)
        return ql_fail(QL_ERR_FORMAT,
                       "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld", path,
                       (long long)c->n_head, (long long)c->n_head_kv);
    c->head_dim_given = c->head_dim != 0;
    if (!c->head_dim_given) {
        if (c->n_embd % c->n_head)
            return ql_fail(QL_ERR_FORMAT,
                           "%s: hidden_size %lld is not a multiple of num_attention_heads %lld", path,
                           (long long)c->n_embd, (long long)c->n_head);
        c->head_dim = c->n_embd / c->n_head;
    }
    if (c->head_dim % 2)
        return ql_fail(QL_ERR_FORMAT, "%s: head dimension %lld is odd", path, (long long)c->head_dim);
    if ((s = cfg_f64(path, root, "rms_norm_eps", 1e-6, &c->eps)) ||
        (s = cfg_f64(path, root, "rope_theta", 10000.0, &c->rope_base)))
        return s;
    const json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_null(tie) && !json_is_boolean(tie))
        return ql_fail(QL_ERR_FORMAT, "%s: 'tie_word_embeddings' must be true or false", path);
    c->tied = json_is_true(tie);
    const json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return ql_fail(QL_ERR_FORMAT, "%s: 'rope_scaling' must be an object or null", path);
        const json_t *t = json_object_get(rs, "rope_type");
        if (!json_is_string(t)) t = json_object_get(rs, "type");
        if (!json_is_string(t)) return ql_fail(QL_ERR_FORMAT, "%s: rope_scaling has no type", path);
        if (strcmp(json_string_value(t), "default") != 0) {
            snprintf(c->rope_type, sizeof c->rope_type, "%s", json_string_value(t));
            if ((s = cfg_f64(path, rs, "factor", 1.0, &c->rope_factor))) return s;
            if (strcmp(c->rope_type, "linear") != 0)
                ql_log(1, "%s: rope_scaling type '%s' is recorded but only 'linear' is applied", path,
                       c->rope_type);
        }
    }
    json_get_token_id(root, "bos_token_id", &c->bos);
    json_get_token_id(root, "eos_token_id", &c->eos);
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

static void config_to_gguf(const hf_config *c, ql_gguf *g) {
    const char *a = c->arch;
    ql_gguf_set_str(g, "general.architecture", a);
    set_arch_key_u32(g, a, "context_length", c->n_ctx);
    set_arch_key_u32(g, a, "embedding_length", c->n_embd);
    set_arch_key_u32(g, a, "block_count", c->n_layer);
    set_arch_key_u32(g, a, "feed_forward_length", c->n_ff);
    set_arch_key_u32(g, a, "attention.head_count", c->n_head);
    set_arch_key_u32(g, a, "attention.head_count_kv", c->n_head_kv);
    set_arch_key_f32(g, a, "attention.layer_norm_rms_epsilon", c->eps);
    set_arch_key_f32(g, a, "rope.freq_base", c->rope_base);
    set_arch_key_u32(g, a, "rope.dimension_count", c->head_dim);
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
    if (c->n_vocab > 0) set_arch_key_u32(g, a, "vocab_size", c->n_vocab);
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
} load_entry;

static int entry_cmp(const void *pa, const void *pb) {
    const load_entry *a = pa, *b = pb;
    if (a->ni.group != b->ni.group) return a->ni.group < b->ni.group ? -1 : 1;
    if (a->ni.group == 1) {
        if (a->ni.layer != b->ni.layer) return a->ni.layer < b->ni.layer ? -1 : 1;
        if (a->ni.role != b->ni.role) return a->ni.role < b->ni.role ? -1 : 1;
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

static ql_status add_entry(ql_gguf *g, const hf_config *c, const load_entry *e) {
    if (e->ni.group == 1 && e->ni.layer >= c->n_layer)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is for layer %d but config.json has %lld layers",
                       e->src, e->name, e->ni.layer, (long long)c->n_layer);
    int heads = 0;
    if (c->permute && e->ni.group == 1 && (e->ni.role == ROLE_Q || e->ni.role == ROLE_K)) {
        heads = (int)(e->ni.role == ROLE_Q ? c->n_head : c->n_head_kv);
        int64_t rows = e->n_dims >= 2 ? e->ne[1] : e->ne[0];
        bool ok =
            rows == heads * c->head_dim && e->ne[2] == 1 && e->ne[3] == 1 && (e->n_dims == 2 || e->ni.bias);
        if (!ok)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %lld rows, expected %d heads x %lld", e->src,
                           e->name, (long long)rows, heads, (long long)c->head_dim);
    }
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

ql_status ql_hf_load(const char *dir, ql_gguf **out) {
    *out = NULL;
    ql_status s = QL_OK;
    json_t *cfg_json = NULL, *idx_json = NULL;
    char **shards = NULL;
    int n_shards = 0;
    load_entry *ents = NULL;
    int64_t n_ents = 0, cap_ents = 0;
    ql_gguf *g = NULL;
    hf_config cfg;
    char *cfg_path = path_join(dir, "config.json");
    char *idx_path = path_join(dir, "model.safetensors.index.json");
    char **shard_paths = NULL;

    if (!file_exists(cfg_path)) {
        s = ql_fail(QL_ERR_IO, "%s: no config.json (not a Hugging Face model folder)", dir);
        goto done;
    }
    if ((s = load_json(cfg_path, &cfg_json)) || (s = parse_config(cfg_path, cfg_json, &cfg))) goto done;

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
        s = ql_safetensors_parse(addr ? addr : "", len, shard_paths[i], tmp);
        if (s) {
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
            if (n_ents == cap_ents) {
                cap_ents = cap_ents ? cap_ents * 2 : 256;
                ents = ql_realloc(ents, (size_t)cap_ents * sizeof *ents);
            }
            load_entry *e = &ents[n_ents++];
            memset(e, 0, sizeof *e);
            e->name = map_name(src->name, true, &e->ni);
            e->type = src->type;
            e->n_dims = src->n_dims;
            memcpy(e->ne, src->ne, sizeof e->ne);
            e->data = src->data;
            e->nbytes = src->nbytes;
            e->order = n_ents;
            e->src = shard_paths[i];
        }
        ql_gguf_free(tmp);
    }
    if (idx_json) { /* every tensor the index promises must have been found */
        const char *key;
        const json_t *val;
        json_object_foreach(json_object_get(idx_json, "weight_map"), key, val) {
            name_info ni;
            char *gn = map_name(key, true, &ni);
            bool found = false;
            for (int64_t k = 0; k < n_ents && !found; k++) found = strcmp(ents[k].name, gn) == 0;
            free(gn);
            size_t kl = strlen(key);
            if (!found && !(kl > 21 && strcmp(key + kl - 21, ".rotary_emb.inv_freq") == 0)) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is listed in the index but missing from %s",
                            idx_path, key, json_string_value(val));
                goto done;
            }
        }
    }
    if (n_ents == 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: the safetensors files hold no tensors", dir);
        goto done;
    }
    qsort(ents, (size_t)n_ents, sizeof *ents, entry_cmp);
    config_to_gguf(&cfg, g);
    for (int64_t k = 0; k < n_ents; k++)
        if ((s = add_entry(g, &cfg, &ents[k]))) goto done;
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
    }
    special_ids(dir, &cfg, g);
    *out = g;
    g = NULL;
done:
    for (int64_t k = 0; k < n_ents; k++) free(ents[k].name);
    free(ents);
    for (int i = 0; i < n_shards; i++) {
        free(shards[i]);
        if (shard_paths) free(shard_paths[i]);
    }
    free(shards);
    free(shard_paths);
    json_decref(cfg_json);
    json_decref(idx_json);
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
    int heads; /* > 0: permute rows back to HF order with this many heads */
    uint64_t offset;
} save_entry;

static ql_status write_text_file(const char *path, const char *text) {
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) return s;
    fputs(text, ql_atomic_stream(af));
    fputc('\n', ql_atomic_stream(af));
    return ql_atomic_commit(af); /* a failed fputs is sticky in ferror: the commit reports it */
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
    const char *model_type, *hf_class;
    bool permute;
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, head_dim, n_vocab;
    double eps, rope_base;
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

static ql_status gather_save_config(const ql_gguf *g, const char *label, save_config *c) {
    memset(c, 0, sizeof *c);
    const char *arch = ql_gguf_get_str(g, "general.architecture");
    if (!arch) arch = "llama";
    c->arch = arch;
    for (size_t i = 0; i < QL_ARRAY_LEN(g_archs); i++)
        if (strcmp(arch, g_archs[i].model_type) == 0) {
            c->model_type = g_archs[i].model_type;
            c->hf_class = g_archs[i].hf_class;
            c->permute = g_archs[i].permute;
        }
    if (!c->model_type)
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
    if (!gkey_int(g, arch, "context_length", &c->n_ctx)) c->n_ctx = 2048;
    if (!gkey_f64(g, arch, "attention.layer_norm_rms_epsilon", &c->eps)) c->eps = 1e-5;
    if (!gkey_f64(g, arch, "rope.freq_base", &c->rope_base)) c->rope_base = 10000.0;
    return QL_OK;
}

static char *config_json_text(const ql_gguf *g, const save_config *c, const char *torch_dtype) {
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", c->hf_class));
    json_object_set_new(o, "model_type", json_string(c->model_type));
    json_object_set_new(o, "hidden_size", json_integer(c->n_embd));
    json_object_set_new(o, "intermediate_size", json_integer(c->n_ff));
    json_object_set_new(o, "num_hidden_layers", json_integer(c->n_layer));
    json_object_set_new(o, "num_attention_heads", json_integer(c->n_head));
    json_object_set_new(o, "num_key_value_heads", json_integer(c->n_head_kv));
    if (c->head_dim != c->n_embd / c->n_head) json_object_set_new(o, "head_dim", json_integer(c->head_dim));
    json_object_set_new(o, "max_position_embeddings", json_integer(c->n_ctx));
    json_object_set_new(o, "rms_norm_eps", json_real(short_float(c->eps)));
    json_object_set_new(o, "rope_theta", json_real(short_float(c->rope_base)));
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", c->arch);
    const char *rst = ql_gguf_get_str(g, k);
    double factor = 1.0;
    if (rst && strcmp(rst, "none") != 0 && gkey_f64(g, c->arch, "rope.scaling.factor", &factor))
        json_object_set_new(
            o, "rope_scaling",
            json_pack("{s:s,s:s,s:f}", "type", rst, "rope_type", rst, "factor", short_float(factor)));
    else
        json_object_set_new(o, "rope_scaling", json_null());
    json_object_set_new(o, "tie_word_embeddings", json_boolean(ql_gguf_find_tensor(g, "output.weight") < 0));
    json_object_set_new(o, "vocab_size", json_integer(c->n_vocab));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    bool qkv_bias = ql_gguf_find_tensor(g, "blk.0.attn_q.bias") >= 0;
    if (strcmp(c->model_type, "llama") == 0) json_object_set_new(o, "attention_bias", json_boolean(qkv_bias));
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
    int n_f32 = 0, n_f16 = 0, n_bf16 = 0;

    /* data layout: 4-byte types first, then 2-byte ones, so every tensor stays aligned to its element */
    uint64_t off = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int64_t i = 0; i < g->n_tensors; i++) {
            const ql_gguf_tensor *t = &g->tensors[i];
            if ((type_elem_size(t->type) == 4) != (pass == 0)) continue;
            save_entry *e = &ents[n++];
            name_info ni;
            e->t = t;
            e->index = i;
            e->hf_name = map_name(t->name, false, &ni);
            e->offset = off;
            off += t->nbytes;
            if (c.permute && ni.group == 1 && (ni.role == ROLE_Q || ni.role == ROLE_K)) {
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
            const char *dt = t->type == QL_TYPE_F32 ? "F32" : t->type == QL_TYPE_F16 ? "F16" : "BF16";
            if (json_object_get(hdr, e->hf_name)) {
                json_decref(shape);
                s = ql_fail(QL_ERR_FORMAT, "%s: two tensors map to the Hugging Face name '%s'", label,
                            e->hf_name);
                goto done;
            }
            json_object_set_new(hdr, e->hf_name,
                                json_pack("{s:s,s:o,s:[I,I]}", "dtype", dt, "shape", shape, "data_offsets",
                                          (json_int_t)e->offset, (json_int_t)(e->offset + t->nbytes)));
        }

    /* every GGUF key that config.json does not carry: tokenizer, general.*, extra arch keys */
    json_object_set_new(meta, "format", json_string("pt"));
    size_t al = strlen(c.arch);
    for (int64_t i = 0; i < g->n_kv; i++) {
        const char *key = g->kv[i].key;
        if (strcmp(key, "general.architecture") == 0 || strcmp(key, "general.alignment") == 0) continue;
        if (strncmp(key, c.arch, al) == 0 && key[al] == '.') {
            static const char *derived[] = {"context_length",
                                            "embedding_length",
                                            "block_count",
                                            "feed_forward_length",
                                            "attention.head_count",
                                            "attention.head_count_kv",
                                            "attention.layer_norm_rms_epsilon",
                                            "rope.freq_base",
                                            "rope.dimension_count",
                                            "attention.key_length",
                                            "attention.value_length",
                                            "vocab_size",
                                            "rope.scaling.type",
                                            "rope.scaling.factor"};
            bool skip = false;
            for (size_t d = 0; d < QL_ARRAY_LEN(derived) && !skip; d++)
                skip = strcmp(key + al + 1, derived[d]) == 0;
            if (skip) continue;
        }
        char *enc = enc_value(&g->kv[i].val);
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

    const char *torch_dtype = n_bf16 > n_f16 && n_bf16 > n_f32 ? "bfloat16"
                              : n_f16 > n_f32                  ? "float16"
                                                               : "float32";
    cfg_text = config_json_text(g, &c, torch_dtype);

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
    return s;
}

/* ---------------------------------------------------------------- for folder exporters */

char *ql_hf_tensor_name(const ql_gguf *g, const char *gguf_name, int *rope_heads) {
    name_info ni;
    char *hf = map_name(gguf_name, false, &ni);
    *rope_heads = 0;
    save_config c;
    if (ni.group == 1 && (ni.role == ROLE_Q || ni.role == ROLE_K) && !gather_save_config(g, "model", &c) && c.permute)
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
