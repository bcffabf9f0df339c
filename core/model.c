/* model.c — builds the llama-family model view (config + tensors by role + tokenizer) over a ql_gguf,
 * whatever file it came from, and checks every tensor's shape against the hyper-parameters so the
 * forward pass can trust them. */
#include "core/model.h"
#include "kernels/ggml_types.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static ql_status load_by_kind(const char *path, ql_gguf **g) {
    struct stat st;
    if (stat(path, &st) != 0) return ql_fail(QL_ERR_IO, "%s: no such file or folder", path);
    if (S_ISDIR(st.st_mode)) return ql_hf_load(path, g);
    FILE *f = fopen(path, "rb");
    if (!f) return ql_fail(QL_ERR_IO, "%s: cannot open", path);
    char magic[4] = {0};
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    if (n == 4 && memcmp(magic, "GGUF", 4) == 0) return ql_gguf_open(path, g);
    size_t len = strlen(path);
    if (len > 4 && strcmp(path + len - 4, ".bin") == 0) return ql_llama2c_load(path, g);
    if (len > 12 && strcmp(path + len - 12, ".safetensors") == 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: give the Hugging Face folder (with config.json), not the .safetensors file", path);
    return ql_fail(QL_ERR_FORMAT, "%s: not a GGUF file, Hugging Face folder or llama2.c .bin", path);
}

ql_status ql_model_load(const char *path, ql_model **out) {
    ql_gguf *g = NULL;
    ql_status s = load_by_kind(path, &g);
    if (s) return s;
    return ql_model_from_gguf(g, path, out);
}

ql_status ql_model_no_tokenizer(const ql_model *m, const char *need) {
    const char *p = m->path ? m->path : "the model";
    struct stat st;
    bool dir = m->path && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
    size_t len = strlen(p);
    const char *slash = strrchr(p, '/');
    int dl = slash ? (int)(slash - p) : 1;
    const char *d = slash ? p : ".";
    if (slash == p) dl = 1; /* a file in / */
    if (dir)
        return ql_fail(QL_ERR_FORMAT, "%s has no tokenizer%s%s: put the model's tokenizer.json in that folder", p,
                       need ? "; " : "", need ? need : "");
    if (len > 4 && !strcmp(p + len - 4, ".bin"))
        return ql_fail(QL_ERR_FORMAT, "%s has no tokenizer%s%s: put llama2.c's tokenizer.bin or tok%d.bin in %.*s", p,
                       need ? "; " : "", need ? need : "", m->cfg.n_vocab, dl, d);
    return ql_fail(QL_ERR_FORMAT,
                   "%s has no tokenizer%s%s: convert it again with one (tokenizer.bin or tok%d.bin beside a llama2.c "
                   ".bin, tokenizer.json in a Hugging Face folder)",
                   p, need ? "; " : "", need ? need : "", m->cfg.n_vocab);
}

static int64_t get_int_or(const ql_gguf *g, const char *arch, const char *key, int64_t def) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t v;
    return ql_gguf_get_int(g, k, &v) ? v : def;
}

static double get_f64_or(const ql_gguf *g, const char *arch, const char *key, double def) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    double v;
    return ql_gguf_get_f64(g, k, &v) ? v : def;
}

static ql_status want3(ql_model *m, ql_gguf_tensor **slot, const char *name, bool required, int64_t ne0, int64_t ne1,
                       int64_t ne2) {
    int64_t i = ql_gguf_find_tensor(m->gguf, name);
    *slot = NULL;
    if (i < 0) {
        if (required) return ql_fail(QL_ERR_FORMAT, "%s: missing tensor '%s'", m->path, name);
        return QL_OK;
    }
    ql_gguf_tensor *t = &m->gguf->tensors[i];
    int64_t nrows = t->n_dims > 1 ? t->ne[1] : 1;
    if (t->ne[0] != ne0 || nrows != ne1 || t->ne[2] != ne2 || t->ne[3] != 1) {
        if (ne2 == 1 && t->ne[2] == 1)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", m->path, name,
                           (long long)t->ne[0], (long long)nrows, (long long)ne0, (long long)ne1);
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld, %lld], expected [%lld, %lld, %lld]", m->path,
                       name, (long long)t->ne[0], (long long)nrows, (long long)t->ne[2], (long long)ne0, (long long)ne1,
                       (long long)ne2);
    }
    *slot = t;
    return QL_OK;
}

static ql_status want(ql_model *m, ql_gguf_tensor **slot, const char *name, bool required, int64_t ne0, int64_t ne1) {
    return want3(m, slot, name, required, ne0, ne1, 1);
}

static const char *arch_or_default(const ql_gguf *g) {
    const char *a = ql_gguf_get_str(g, "general.architecture");
    return a ? a : "llama";
}

/* One line per role: where its slot is in ql_layer_tensors. */
static const size_t g_role_slot[QL_ROLE_COUNT] = {
    [QL_ROLE_ATTN_NORM] = offsetof(ql_layer_tensors, attn_norm),
    [QL_ROLE_ATTN_Q] = offsetof(ql_layer_tensors, wq),
    [QL_ROLE_ATTN_K] = offsetof(ql_layer_tensors, wk),
    [QL_ROLE_ATTN_V] = offsetof(ql_layer_tensors, wv),
    [QL_ROLE_ATTN_QKV] = offsetof(ql_layer_tensors, wqkv),
    [QL_ROLE_ATTN_Q_BIAS] = offsetof(ql_layer_tensors, bq),
    [QL_ROLE_ATTN_K_BIAS] = offsetof(ql_layer_tensors, bk),
    [QL_ROLE_ATTN_V_BIAS] = offsetof(ql_layer_tensors, bv),
    [QL_ROLE_ATTN_Q_NORM] = offsetof(ql_layer_tensors, q_norm),
    [QL_ROLE_ATTN_K_NORM] = offsetof(ql_layer_tensors, k_norm),
    [QL_ROLE_ATTN_OUT] = offsetof(ql_layer_tensors, wo),
    [QL_ROLE_ATTN_POST_NORM] = offsetof(ql_layer_tensors, post_attn_norm),
    [QL_ROLE_FFN_NORM] = offsetof(ql_layer_tensors, ffn_norm),
    [QL_ROLE_FFN_GATE] = offsetof(ql_layer_tensors, w_gate),
    [QL_ROLE_FFN_UP] = offsetof(ql_layer_tensors, w_up),
    [QL_ROLE_FFN_GATE_UP] = offsetof(ql_layer_tensors, w_gate_up),
    [QL_ROLE_FFN_DOWN] = offsetof(ql_layer_tensors, w_down),
    [QL_ROLE_FFN_POST_NORM] = offsetof(ql_layer_tensors, post_ffn_norm),
    [QL_ROLE_FFN_GATE_INP] = offsetof(ql_layer_tensors, ffn_gate_inp),
    [QL_ROLE_FFN_GATE_EXPS] = offsetof(ql_layer_tensors, gate_exps),
    [QL_ROLE_FFN_UP_EXPS] = offsetof(ql_layer_tensors, up_exps),
    [QL_ROLE_FFN_DOWN_EXPS] = offsetof(ql_layer_tensors, down_exps),
    [QL_ROLE_FFN_GATE_INP_SHEXP] = offsetof(ql_layer_tensors, gate_inp_shexp),
    [QL_ROLE_FFN_GATE_SHEXP] = offsetof(ql_layer_tensors, gate_shexp),
    [QL_ROLE_FFN_UP_SHEXP] = offsetof(ql_layer_tensors, up_shexp),
    [QL_ROLE_FFN_DOWN_SHEXP] = offsetof(ql_layer_tensors, down_shexp),
    [QL_ROLE_ATTN_OUT_BIAS] = offsetof(ql_layer_tensors, bo),
    [QL_ROLE_ATTN_SINKS] = offsetof(ql_layer_tensors, attn_sinks),
    [QL_ROLE_FFN_GATE_INP_BIAS] = offsetof(ql_layer_tensors, gate_inp_b),
    [QL_ROLE_FFN_GATE_EXPS_BIAS] = offsetof(ql_layer_tensors, gate_exps_b),
    [QL_ROLE_FFN_UP_EXPS_BIAS] = offsetof(ql_layer_tensors, up_exps_b),
    [QL_ROLE_FFN_DOWN_EXPS_BIAS] = offsetof(ql_layer_tensors, down_exps_b),
    [QL_ROLE_FFN_EXP_PROBS_B] = offsetof(ql_layer_tensors, exp_probs_b),
};

ql_gguf_tensor **ql_layer_role(ql_layer_tensors *L, ql_role r) {
    return (ql_gguf_tensor **)((char *)L + g_role_slot[r]);
}
ql_gguf_tensor *ql_layer_role_get(const ql_layer_tensors *L, ql_role r) {
    return *(ql_gguf_tensor *const *)((const char *)L + g_role_slot[r]);
}

static int64_t dim_of(const ql_config *c, ql_dim d) {
    const int64_t Q = (int64_t)c->n_head * c->head_dim, KV = (int64_t)c->n_head_kv * c->head_dim;
    switch (d) {
    case QL_DIM_1: return 1;
    case QL_DIM_EMBD: return c->n_embd;
    case QL_DIM_Q: return Q;
    case QL_DIM_KV: return KV;
    case QL_DIM_QKV: return Q + 2 * KV;
    case QL_DIM_HEAD: return c->head_dim;
    case QL_DIM_FF: return c->n_ff;
    case QL_DIM_2FF: return 2 * (int64_t)c->n_ff;
    case QL_DIM_EXPERT: return c->n_expert;
    case QL_DIM_FF_EXP: return c->n_ff_exp;
    case QL_DIM_FF_SHEXP: return c->n_ff_shexp;
    case QL_DIM_HEADS: return c->n_head;
    }
    return 0;
}

/* A row view [row0, row0 + rows) of a stored 2-D tensor: ggml rows are whole blocks, so the view's bytes
 * are a contiguous slice of the parent's. */
static ql_gguf_tensor *add_view(ql_model *m, const ql_gguf_tensor *parent, int64_t row0, int64_t rows, const char *part) {
    ql_gguf_tensor *v = ql_calloc(1, sizeof *v);
    const uint64_t row_bytes = parent->nbytes / (uint64_t)(parent->ne[1] * parent->ne[2] * parent->ne[3]);
    char nm[192];
    snprintf(nm, sizeof nm, "%s[%s]", parent->name, part);
    v->name = ql_strdup(nm);
    v->type = parent->type;
    v->n_dims = 2;
    v->ne[0] = parent->ne[0];
    v->ne[1] = rows;
    v->ne[2] = v->ne[3] = 1;
    v->nbytes = row_bytes * (uint64_t)rows;
    v->data = parent->data ? (const uint8_t *)parent->data + row_bytes * (uint64_t)row0 : NULL;
    m->views = ql_realloc(m->views, (size_t)(m->n_views + 1) * sizeof *m->views);
    m->views[m->n_views++] = (struct ql_tensor_view){v, parent, row0};
    return v;
}

const ql_gguf_tensor *ql_model_view_parent(const ql_model *m, const ql_gguf_tensor *t, int64_t *row0) {
    for (int i = 0; t && i < m->n_views; i++)
        if (m->views[i].view == t) {
            if (row0) *row0 = m->views[i].row0;
            return m->views[i].parent;
        }
    return NULL;
}

const ql_gguf_tensor *ql_model_view_parent_by_name(const ql_model *m, const char *name, int64_t *row0) {
    for (int i = 0; name && i < m->n_views; i++)
        if (!strcmp(m->views[i].view->name, name)) return ql_model_view_parent(m, m->views[i].view, row0);
    return NULL;
}

int ql_model_layer_linears(const ql_model *m, int l, const ql_gguf_tensor **out, int *input) {
    int n = 0;
    if (l < 0 || l >= m->cfg.n_layer) return 0;
    for (int r = 0; r < QL_ROLE_COUNT; r++) {
        const ql_role_info *ri = ql_role_get((ql_role)r);
        const ql_gguf_tensor *t = ql_layer_role_get(&m->layers[l], (ql_role)r);
        if (!t || ri->input == QL_IN_NONE || ql_model_view_parent(m, t, NULL)) continue;
        out[n] = t;
        if (input) input[n] = ri->input;
        n++;
    }
    return n;
}

/* RoPE scaling by rope.scaling.type: none, linear (positions / factor) and yarn are implemented; anything
 * else (a new name) is refused rather than run with wrong angles. Phi-3's LongRoPE is not a type here: it is
 * the rope_factors_long/short tensors (load_rope_factors) plus rope.scaling.attn_factor, read below for every
 * architecture because llama.cpp's load_hparams reads it for all of them. */
static ql_status read_rope_scaling(const ql_gguf *g, const char *arch, const char *path, ql_config *c) {
    char k[160];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const char *st = ql_gguf_get_str(g, k);
    c->rope_scale = 1.0f;
    if (!st) c->rope_scale = (float)get_f64_or(g, arch, "rope.scale_linear", 1.0);
    else if (!strcmp(st, "linear") || !strcmp(st, "yarn")) c->rope_scale = (float)get_f64_or(g, arch, "rope.scaling.factor", 1.0);
    else if (strcmp(st, "none") != 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: rope scaling type '%s' (%s) is not implemented (none, linear, yarn)",
                       path, st, k);
    if (!(c->rope_scale > 0)) c->rope_scale = 1.0f;
    c->n_ctx_orig = (int)get_int_or(g, arch, "rope.scaling.original_context_length", c->n_ctx_train);
    c->rope_attn_factor = (float)get_f64_or(g, arch, "rope.scaling.attn_factor", 1.0);
    if (!(c->rope_attn_factor > 0) || !isfinite(c->rope_attn_factor))
        return ql_fail(QL_ERR_FORMAT, "%s: %s.rope.scaling.attn_factor must be a positive number", path, arch);
    if (st && !strcmp(st, "yarn") && c->rope_scale != 1.0f) {
        c->rope_yarn = true;
        c->yarn_orig_ctx = c->n_ctx_orig;
        c->yarn_ext_factor = (float)get_f64_or(g, arch, "rope.scaling.yarn_ext_factor", 1.0);
        c->yarn_attn_factor = (float)get_f64_or(g, arch, "rope.scaling.yarn_attn_factor", 1.0);
        c->yarn_beta_fast = (float)get_f64_or(g, arch, "rope.scaling.yarn_beta_fast", 32.0);
        c->yarn_beta_slow = (float)get_f64_or(g, arch, "rope.scaling.yarn_beta_slow", 1.0);
        if (c->yarn_orig_ctx <= 0) return ql_fail(QL_ERR_FORMAT, "%s: yarn rope scaling without an original context", path);
    }
    return QL_OK;
}

/* The multipliers and RoPE switches some descriptions read from keys (Granite's four scales, SmolLM3's layers
 * without RoPE, Ministral-3's temperature tuning and YaRN log multiplier); 1 / 0 / off elsewhere. */
static ql_status read_scales(const ql_gguf *g, const char *arch, const char *path, const ql_arch *desc, ql_config *c) {
    c->residual_scale = c->logit_mult = 1.0f;
    c->rope_swa_only = desc->rope_swa_only;
    if (desc->logit_scale_mult) { /* Cohere: required, as llama.cpp reads it */
        const double ls = get_f64_or(g, arch, "logit_scale", 0);
        if (!(ls > 0) || !isfinite(ls))
            return ql_fail(QL_ERR_FORMAT, "%s: %s needs a positive %s.logit_scale", path, arch, arch);
        c->logit_mult = (float)ls;
    }
    c->nope_period = desc->nope_period;
    if (desc->granite_scales) {
        const double es = get_f64_or(g, arch, "embedding_scale", 0), rs = get_f64_or(g, arch, "residual_scale", 0),
                     as = get_f64_or(g, arch, "attention.scale", 0), ls = get_f64_or(g, arch, "logit_scale", 0);
        /* llama.cpp requires logit_scale; the others are optional, 0 meaning "not used" */
        if (!(ls > 0) || !isfinite(ls) || !(es >= 0) || !isfinite(es) || !(rs >= 0) || !isfinite(rs) || !(as >= 0) ||
            !isfinite(as))
            return ql_fail(QL_ERR_FORMAT, "%s: %s needs a positive %s.logit_scale and non-negative embedding_scale, "
                                          "residual_scale, attention.scale (got %g, %g, %g, %g)",
                           path, arch, arch, ls, es, rs, as);
        c->logit_mult = 1.0f / (float)ls; /* llama.cpp: ggml_scale(logits, 1.0f / f_logit_scale) */
        if (es > 0) c->embd_scale = (float)es;
        if (rs > 0) c->residual_scale = (float)rs;
        if (as > 0) c->attn_scale = (float)as;
        char k[160];
        bool finetuned = true; /* Granite's switch for RoPE */
        snprintf(k, sizeof k, "%s.rope.scaling.finetuned", arch);
        if (ql_gguf_get_bool(g, k, &finetuned)) c->rope_off = !finetuned;
    }
    if (desc->attn_temperature) {
        const double ts = get_f64_or(g, arch, "attention.temperature_scale", 0);
        if (!(ts >= 0) || !isfinite(ts) || (ts > 0 && c->n_ctx_orig <= 0))
            return ql_fail(QL_ERR_FORMAT, "%s: invalid %s.attention.temperature_scale %g (or no original context)", path,
                           arch, ts);
        c->attn_temp_scale = (float)ts;
        c->attn_temp_floor = c->n_ctx_orig;
        /* transformers' mscale / mscale_all_dims with mscale 1, as llama.cpp's context computes it: it divides
         * ggml's 1 + 0.1·ln(factor) back out and multiplies the one with the log multiplier in */
        const double lm = get_f64_or(g, arch, "rope.scaling.yarn_log_multiplier", 0);
        if (c->rope_yarn && lm != 0 && c->rope_scale > 1.0f) {
            const float lf = logf(c->rope_scale);
            c->yarn_attn_factor = (1.0f + 0.1f * lf) / (1.0f + 0.1f * (float)lm * lf) / (1.0f + 0.1f * lf);
        }
    }
    return QL_OK;
}

/* LongRoPE's two factor vectors: allowed where the description says (llama.cpp creates them for phi3 only,
 * so elsewhere they would be unused tensors it refuses), both or neither, F32 with rope_dim/2 values. */
static ql_status load_rope_factors(ql_model *m, const char *path) {
    static const char *names[2] = {"rope_factors_long.weight", "rope_factors_short.weight"};
    ql_gguf_tensor **slots[2] = {&m->rope_long, &m->rope_short};
    const ql_config *c = &m->cfg;
    int found = 0;
    for (int i = 0; i < 2; i++) found += ql_gguf_find_tensor(m->gguf, names[i]) >= 0;
    if (!found) return QL_OK;
    if (!c->desc->rope_long_short)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: architecture '%s' has no LongRoPE factors ('%s' is phi3's)", path,
                       c->arch, names[ql_gguf_find_tensor(m->gguf, names[0]) >= 0 ? 0 : 1]);
    for (int i = 0; i < 2; i++) {
        ql_status s = want(m, slots[i], names[i], true, c->rope_dim / 2, 1);
        if (s) return s; /* names the one that is missing or misshapen */
        if ((*slots[i])->type != QL_TYPE_F32 || !(*slots[i])->data)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' must be F32", path, names[i]);
        const float *f = (*slots[i])->data;
        for (int64_t j = 0; j < (*slots[i])->ne[0]; j++)
            if (!(f[j] > 0) || !isfinite(f[j]))
                return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' value %lld is %g (factors divide angles: must be "
                                              "positive)", path, names[i], (long long)j, (double)f[j]);
    }
    if (c->n_ctx_orig <= 0)
        return ql_fail(QL_ERR_FORMAT, "%s: LongRoPE factors without an original context length", path);
    return QL_OK;
}

const float *ql_model_rope_factors(const ql_model *m, int n_ctx) {
    if (m->rope_freqs) return m->rope_freqs->data;
    const ql_gguf_tensor *t = n_ctx > m->cfg.n_ctx_orig ? m->rope_long : m->rope_short;
    return t ? t->data : NULL;
}

/* attention.sliding_window_pattern: a period (llama.cpp's set_swa_pattern: layer l is global when
 * (l + 1) % period == 0) or, as newer llama.cpp writes it, one bool per layer (true: the layer slides; its
 * get_key_or_arr wants exactly n_layer of them). Integers 0/1 are taken as bools; anything else is refused. */
static ql_status read_swa_pattern(const ql_gguf *g, const char *arch, const char *path, int def, ql_config *c) {
    char k[160];
    snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", arch);
    const ql_gguf_value *v = ql_gguf_get(g, k);
    c->swa_pattern = def;
    if (!v) return QL_OK;
    if (v->type != QL_GGUF_ARRAY) {
        int64_t p;
        if (!ql_gguf_get_int(g, k, &p) || p < 0 || p > 1 << 20)
            return ql_fail(QL_ERR_FORMAT, "%s: %s must be a period (an integer) or an array of %d bools, not %s", path,
                           k, c->n_layer, ql_gguf_type_name(v->type));
        c->swa_pattern = (int)p;
        return QL_OK;
    }
    if (v->v.arr.n != (uint64_t)c->n_layer)
        return ql_fail(QL_ERR_FORMAT, "%s: %s lists %llu layers, the model has %d", path, k,
                       (unsigned long long)v->v.arr.n, c->n_layer);
    memset(c->swa_layer_bits, 0, sizeof c->swa_layer_bits);
    for (uint64_t l = 0; l < v->v.arr.n; l++) {
        const ql_gguf_value *e = &v->v.arr.items[l];
        int64_t b;
        switch (e->type) {
        case QL_GGUF_BOOL: case QL_GGUF_U8: case QL_GGUF_U16: case QL_GGUF_U32: case QL_GGUF_U64:
            b = e->v.u > 1 ? -1 : (int64_t)e->v.u;
            break;
        case QL_GGUF_I8: case QL_GGUF_I16: case QL_GGUF_I32: case QL_GGUF_I64: b = e->v.i; break;
        default: b = -1;
        }
        if (b != 0 && b != 1)
            return ql_fail(QL_ERR_FORMAT, "%s: %s[%llu] is not a bool (%s)", path, k, (unsigned long long)l,
                           ql_gguf_type_name(e->type));
        if (b) c->swa_layer_bits[l / 64] |= (uint64_t)1 << (l % 64);
    }
    c->swa_per_layer = true;
    return QL_OK;
}

/* ARCH.expert_count / expert_used_count / expert_feed_forward_length, checked against what the description
 * allows; a MoE model whose file lacks feed_forward_length (qwen3moe's is the dense width it does not use)
 * takes the experts' width for n_ff so the checks below hold. */
static ql_status read_experts(const ql_gguf *g, const char *arch, const char *path, const ql_arch *desc, ql_config *c) {
    const int64_t ne = get_int_or(g, arch, "expert_count", 0), nu = get_int_or(g, arch, "expert_used_count", 0);
    if (ne <= 0 && desc->moe != QL_MOE_ALWAYS) return QL_OK;
    if (desc->moe == QL_MOE_NEVER)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: %s.expert_count = %lld, but qlab runs '%s' as a dense model", path, arch,
                       (long long)ne, arch);
    const int64_t ff = get_int_or(g, arch, "expert_feed_forward_length", c->n_ff);
    if (ne < 1 || ne > 4096 || nu < 1 || nu > ne || ff < 1 || ff > 1 << 22)
        return ql_fail(QL_ERR_FORMAT, "%s: invalid mixture of experts: %s.expert_count %lld, expert_used_count %lld, "
                                      "expert width %lld", path, arch, (long long)ne, (long long)nu, (long long)ff);
    c->n_expert = (int)ne;
    c->n_expert_used = (int)nu;
    c->n_ff_exp = (int)ff;
    c->moe_norm_weights = desc->moe_norm_weights;
    c->moe_gating = desc->moe_gating;
    if (c->n_ff <= 0) c->n_ff = c->n_ff_exp;
    if (desc->moe_gating == QL_GATING_SIGMOID) { /* DeepSeek-V3-style routing: what llama.cpp reads for it */
        char k[160];
        bool norm = false;
        snprintf(k, sizeof k, "%s.expert_weights_norm", arch);
        c->moe_norm_weights = ql_gguf_get_bool(g, k, &norm) && norm;
        const double ws = get_f64_or(g, arch, "expert_weights_scale", 0);
        const int64_t gf = get_int_or(g, arch, "expert_gating_func", 0);
        if (!(ws >= 0) || !isfinite(ws) || gf < 0 || gf > 3)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: %s.expert_weights_scale %g / expert_gating_func %lld is not "
                                               "implemented (gating 1 softmax, 2 sigmoid, 3 top-k softmax)",
                           path, arch, ws, (long long)gf);
        c->moe_weights_scale = (float)ws;
        if (gf) c->moe_gating = gf == 1 ? QL_GATING_SOFTMAX : gf == 2 ? QL_GATING_SIGMOID : QL_GATING_TOPK_SOFTMAX;
    }
    if (desc->moe_dense_lead) {
        const int64_t lead = get_int_or(g, arch, "leading_dense_block_count", 0);
        if (lead < 0 || lead > c->n_layer)
            return ql_fail(QL_ERR_FORMAT, "%s: %s.leading_dense_block_count %lld is not in 0..%d", path, arch,
                           (long long)lead, c->n_layer);
        c->n_layer_dense_lead = (int)lead;
    }
    if (desc->need[QL_ROLE_FFN_GATE_SHEXP] == QL_NEED_ABSENT) return QL_OK; /* n_ff_shexp 0: no shared expert */
    /* an optional shared expert (granitemoe) is there when the file gives its width, or (GLM-4.5) how many experts
     * wide it is */
    const int64_t n_shared = get_int_or(g, arch, "expert_shared_count", 0);
    const int64_t fs = n_shared > 0 && n_shared <= 64
                           ? n_shared * c->n_ff_exp
                           : get_int_or(g, arch, "expert_shared_feed_forward_length",
                                        desc->need[QL_ROLE_FFN_GATE_SHEXP] == QL_NEED_OPTIONAL ? 0 : c->n_ff);
    if (fs == 0 && desc->need[QL_ROLE_FFN_GATE_SHEXP] == QL_NEED_OPTIONAL) return QL_OK;
    if (fs < 1 || fs > 1 << 22)
        return ql_fail(QL_ERR_FORMAT, "%s: invalid shared expert width %lld", path, (long long)fs);
    c->n_ff_shexp = (int)fs;
    return QL_OK;
}

/* No description: what quantization by tensor names needs, and nothing a forward pass would read. */
static ql_status weights_only_model(ql_gguf *g, const char *path, const char *arch, ql_model **out) {
    static const ql_arch generic = {.name = "weights-only", .family = "weights-only (quantization by tensor names)"};
    ql_model *m = ql_calloc(1, sizeof *m);
    m->gguf = g;
    m->path = ql_strdup(path);
    m->weights_only = true;
    ql_config *c = &m->cfg;
    c->desc = &generic;
    snprintf(c->arch, sizeof c->arch, "%s", arch);
    int max_layer = -1; /* blk.N. names, for files whose block_count key is missing */
    for (int64_t i = 0; i < g->n_tensors; i++) {
        int l;
        if (sscanf(g->tensors[i].name, "blk.%d.", &l) == 1 && l > max_layer && l < 4096) max_layer = l;
    }
    const int64_t nl = get_int_or(g, arch, "block_count", max_layer + 1);
    c->n_layer = nl > 0 && nl <= 4096 ? (int)nl : max_layer + 1;
    c->n_embd = (int)get_int_or(g, arch, "embedding_length", 0);
    c->n_head = (int)get_int_or(g, arch, "attention.head_count", 1);
    c->n_head_kv = (int)get_int_or(g, arch, "attention.head_count_kv", c->n_head);
    if (c->n_head <= 0 || c->n_head > 1 << 16) c->n_head = 1; /* per-layer arrays, or none: GQA unknown, taken as 1 */
    if (c->n_head_kv <= 0 || c->n_head_kv > c->n_head) c->n_head_kv = c->n_head;
    const int64_t ne = get_int_or(g, arch, "expert_count", 0); /* llama-quantize's rules for 8 experts */
    c->n_expert = ne > 0 && ne <= 1 << 16 ? (int)ne : 0;
    int64_t te = ql_gguf_find_tensor(g, "token_embd.weight"), ou = ql_gguf_find_tensor(g, "output.weight");
    m->tok_embd = te >= 0 ? &g->tensors[te] : NULL;
    m->output = ou >= 0 ? &g->tensors[ou] : m->tok_embd;
    c->tied_output = ou < 0; /* llama-quantize: no output.weight means the embedding is the classifier */
    c->n_vocab = m->tok_embd && m->tok_embd->n_dims >= 2 ? (int)m->tok_embd->ne[1] : 0;
    m->layers = ql_calloc((size_t)(c->n_layer > 0 ? c->n_layer : 1), sizeof *m->layers);
    if (ql_gguf_get(g, "tokenizer.ggml.tokens") && ql_tokenizer_from_gguf(g, &m->tok)) m->tok = NULL; /* not needed */
    *out = m;
    return QL_OK;
}

ql_status ql_model_load_weights(const char *path, ql_model **out) {
    ql_gguf *g = NULL;
    ql_status s = load_by_kind(path, &g);
    if (s) return s;
    const char *arch = arch_or_default(g);
    if (!ql_arch_find(arch)) return weights_only_model(g, path, arch, out);
    return ql_model_from_gguf(g, path, out);
}

ql_status ql_model_from_gguf(ql_gguf *g, const char *path, ql_model **out) {
    *out = NULL;
    ql_model *m = ql_calloc(1, sizeof *m);
    m->gguf = g;
    m->path = ql_strdup(path);
    ql_config *c = &m->cfg;
    ql_status s = QL_OK;
    const char *arch = arch_or_default(g);
    const ql_arch *desc = ql_arch_find(arch);
    if (!desc) {
        char known[256];
        ql_arch_list(known, sizeof known);
        s = ql_fail(QL_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (known: %s)", path, arch, known);
        goto fail;
    }
    c->desc = desc;
    snprintf(c->arch, sizeof c->arch, "%s", arch);
    c->n_layer = (int)get_int_or(g, arch, "block_count", 0);
    /* trailing multi-token-prediction layers (GLM-4.5's nextn): stored with the others, outside the forward pass */
    const int64_t nextn = get_int_or(g, arch, "nextn_predict_layers", 0);
    if (nextn > 0 && nextn < c->n_layer) c->n_layer -= (int)nextn;
    c->n_embd = (int)get_int_or(g, arch, "embedding_length", 0);
    c->n_head = (int)get_int_or(g, arch, "attention.head_count", 0);
    c->n_head_kv = (int)get_int_or(g, arch, "attention.head_count_kv", c->n_head);
    c->n_ff = (int)get_int_or(g, arch, "feed_forward_length", 0);
    c->n_ctx_train = (int)get_int_or(g, arch, "context_length", 2048);
    if ((s = read_experts(g, arch, path, desc, c))) goto fail;
    if (c->n_layer <= 0 || c->n_layer > 4096 || c->n_embd <= 0 || c->n_embd > 1 << 20 || c->n_head <= 0 ||
        c->n_head > 4096 || c->n_head_kv <= 0 || c->n_head % c->n_head_kv || c->n_ff <= 0 || c->n_ff > 1 << 22) {
        s = ql_fail(QL_ERR_FORMAT, "%s: missing or invalid hyper-parameters (layers %d, embd %d, heads %d/%d, ff %d)", path,
                    c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->n_ff);
        goto fail;
    }
    c->head_dim = (int)get_int_or(g, arch, "attention.key_length", c->n_embd / c->n_head);
    if (c->head_dim <= 0 || c->head_dim > 4096 || c->head_dim % 2 ||
        get_int_or(g, arch, "attention.value_length", c->head_dim) != c->head_dim) {
        s = ql_fail(QL_ERR_FORMAT, "%s: invalid head dimension %d (or a value length that differs from it)", path,
                    c->head_dim);
        goto fail;
    }
    c->rope_dim = (int)get_int_or(g, arch, "rope.dimension_count", c->head_dim);
    if (c->rope_dim <= 0 || c->rope_dim > c->head_dim || c->rope_dim % 2) c->rope_dim = c->head_dim;
    c->rope_base = (float)get_f64_or(g, arch, "rope.freq_base", 10000.0);
    if ((s = read_rope_scaling(g, arch, path, c))) goto fail;
    c->rope_neox = desc->rope_neox;
    c->norm_eps = (float)get_f64_or(g, arch, desc->layer_norm ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon",
                                    1e-5);
    c->ffn_act = desc->ffn_act;
    c->embd_scale = desc->embd_scale_sqrt ? sqrtf((float)c->n_embd) : 1.0f;
    c->attn_scale = 1.0f / sqrtf((float)(desc->attn_scale_embd_layers == c->n_layer ? c->n_embd / c->n_head : c->head_dim));
    c->attn_softcap = (float)get_f64_or(g, arch, "attn_logit_softcapping", 0.0);
    c->final_softcap = (float)get_f64_or(g, arch, "final_logit_softcapping", 0.0);
    if (!(c->attn_softcap >= 0) || !(c->final_softcap >= 0)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: negative logit soft-capping", path);
        goto fail;
    }
    if ((s = read_swa_pattern(g, arch, path, desc->swa_pattern, c))) goto fail;
    c->n_swa = desc->swa_pattern > 0 ? (int)get_int_or(g, arch, "attention.sliding_window", desc->swa_default) : 0;
    if (desc->swa_layer_count > 0 && c->n_layer != desc->swa_layer_count) c->n_swa = 0;
    if (c->n_swa < 0 || c->swa_pattern < 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: invalid sliding window %d / pattern %d", path, c->n_swa, c->swa_pattern);
        goto fail;
    }
    c->rope_base_swa = desc->swa_rope_global ? c->rope_base : (float)get_f64_or(g, arch, "rope.freq_base_swa", c->rope_base);
    c->rope_scale_swa = desc->swa_rope_unscaled ? 1.0f : c->rope_scale;
    if ((s = read_scales(g, arch, path, desc, c))) goto fail;

    int64_t te = ql_gguf_find_tensor(g, "token_embd.weight");
    if (te < 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", path);
        goto fail;
    }
    c->n_vocab = (int)g->tensors[te].ne[1];
    const int64_t D = c->n_embd;
    if ((s = want(m, &m->tok_embd, "token_embd.weight", true, D, c->n_vocab))) goto fail;
    if ((s = want(m, &m->output_norm, "output_norm.weight", true, D, 1))) goto fail;
    if ((s = want(m, &m->output, "output.weight", false, D, c->n_vocab))) goto fail;
    if ((s = want(m, &m->rope_freqs, "rope_freqs.weight", false, c->rope_dim / 2, 1))) goto fail;
    if (m->rope_freqs && m->rope_freqs->type != QL_TYPE_F32) {
        s = ql_fail(QL_ERR_FORMAT, "%s: tensor 'rope_freqs.weight' must be F32", path);
        goto fail;
    }
    if ((s = load_rope_factors(m, path))) goto fail;
    c->tied_output = m->output == NULL;
    if (!m->output) m->output = m->tok_embd;
    m->layers = ql_calloc((size_t)c->n_layer, sizeof *m->layers);
    ql_need need[QL_ROLE_COUNT];
    for (int l = 0; l < c->n_layer; l++) {
        ql_layer_tensors *L = &m->layers[l];
        ql_arch_layer_need(desc, ql_layer_is_moe(c, l) ? c->n_expert : 0, need);
        for (int r = 0; r < QL_ROLE_COUNT; r++) {
            if (need[r] == QL_NEED_ABSENT) continue;
            const ql_role_info *ri = ql_role_get((ql_role)r);
            char n[96];
            snprintf(n, sizeof n, "blk.%d.%s", l, ri->suffix);
            if ((s = want3(m, ql_layer_role(L, (ql_role)r), n, need[r] == QL_NEED_REQUIRED,
                           dim_of(c, ql_arch_role_ne0(desc, (ql_role)r)),
                           dim_of(c, ri->ne1), dim_of(c, ri->ne2))))
                goto fail;
        }
        /* gpt-oss's FFN pre-norm, stored under the post-attention norm's name */
        if (desc->ffn_norm_is_post_attn_norm) L->ffn_norm = L->post_attn_norm, L->post_attn_norm = NULL;
        /* the sinks and the expert biases are read as floats, slice by slice */
        const ql_gguf_tensor *f32_only[] = {L->attn_sinks, L->gate_exps_b, L->up_exps_b, L->down_exps_b, L->exp_probs_b};
        for (size_t i = 0; i < QL_ARRAY_LEN(f32_only); i++)
            if (f32_only[i] && f32_only[i]->type != QL_TYPE_F32) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' must be F32", path, f32_only[i]->name);
                goto fail;
            }
        /* fused projections: the separate roles become row views, so the forward pass has one layout */
        const int64_t Q = dim_of(c, QL_DIM_Q), KV = dim_of(c, QL_DIM_KV), F = c->n_ff;
        if (L->wqkv) {
            L->wq = add_view(m, L->wqkv, 0, Q, "q");
            L->wk = add_view(m, L->wqkv, Q, KV, "k");
            L->wv = add_view(m, L->wqkv, Q + KV, KV, "v");
        }
        if (L->w_gate_up) {
            L->w_gate = add_view(m, L->w_gate_up, 0, F, "gate");
            L->w_up = add_view(m, L->w_gate_up, F, F, "up");
        }
        const bool ffn = ql_layer_is_moe(c, l) ? L->ffn_gate_inp && L->gate_exps && L->up_exps && L->down_exps
                                         : L->w_gate && L->w_up && L->w_down;
        if ((need[QL_ROLE_ATTN_NORM] && !L->attn_norm) || !L->wq || !L->wk || !L->wv || !L->wo ||
            (need[QL_ROLE_FFN_NORM] && !L->ffn_norm) || !ffn) {
            s = ql_fail(QL_ERR_FORMAT, "%s: architecture '%s' layer %d lacks a projection its description needs", path,
                        arch, l);
            goto fail;
        }
    }
    if (ql_gguf_get(g, "tokenizer.ggml.tokens")) {
        if ((s = ql_tokenizer_from_gguf(g, &m->tok))) goto fail;
        if (ql_tokenizer_n_vocab(m->tok) > c->n_vocab) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tokenizer has %d tokens but the embedding only %d rows", path,
                        ql_tokenizer_n_vocab(m->tok), c->n_vocab);
            goto fail;
        }
    }
    *out = m;
    return QL_OK;
fail:
    ql_model_free(m);
    return s;
}

void ql_model_free(ql_model *m) {
    if (!m) return;
    ql_tokenizer_free(m->tok);
    ql_gguf_free(m->gguf);
    for (int i = 0; i < m->n_views; i++) {
        free(m->views[i].view->name);
        free(m->views[i].view);
    }
    free(m->views);
    free(m->layers);
    free(m->path);
    free(m);
}

int64_t ql_model_n_params(const ql_model *m) {
    int64_t n = 0;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const ql_gguf_tensor *t = &m->gguf->tensors[i];
        n += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    return n;
}

void ql_model_features(const ql_model *m, char *buf, size_t cap) {
    const ql_config *c = &m->cfg;
    const ql_layer_tensors *L = c->n_layer > 0 ? &m->layers[0] : NULL;
    size_t used = 0;
    buf[0] = 0;
#define ADDF(...) do { \
        int w_ = snprintf(buf + used, cap - used, "%s", used ? ", " : ""); \
        if (w_ > 0 && (size_t)w_ < cap - used) used += (size_t)w_; \
        w_ = snprintf(buf + used, cap - used, __VA_ARGS__); \
        if (w_ > 0 && (size_t)w_ < cap - used) used += (size_t)w_; \
    } while (0)
    if (c->rope_neox) ADDF("NEOX RoPE");
    if (c->rope_dim < c->head_dim) ADDF("RoPE on %d of %d head dims", c->rope_dim, c->head_dim);
    if (m->rope_freqs) ADDF("rope_freqs factors");
    if (c->rope_yarn) ADDF("YaRN x%g from %d", c->rope_scale, c->yarn_orig_ctx);
    if (m->rope_long) ADDF("LongRoPE (long factors above ctx %d)", c->n_ctx_orig);
    if (c->rope_attn_factor != 1.0f) ADDF("rope attention factor %g", c->rope_attn_factor);
    if (c->ffn_act == QL_FFN_GEGLU_TANH) ADDF("GeGLU (tanh GELU)");
    if (c->embd_scale != 1.0f) ADDF("embedding x%g", c->embd_scale);
    if (L && L->bq) ADDF("q/k/v bias");
    if (L && L->q_norm) ADDF(c->desc->qk_norm_full ? "q/k norm (full width)" : "q/k norm");
    if (L && L->post_attn_norm) ADDF("post norms");
    if (L && L->wqkv) ADDF("fused attn_qkv");
    if (L && L->w_gate_up) ADDF("fused gate+up");
    if (c->n_swa > 0 && c->swa_per_layer) {
        int n = 0;
        for (int l = 0; l < c->n_layer; l++) n += ql_layer_is_swa(c, l);
        ADDF("sliding window %d (%d of %d layers, listed; base %g, scale %g)", c->n_swa, n, c->n_layer,
             c->rope_base_swa, c->rope_scale_swa);
    } else if (c->n_swa > 0)
        ADDF("sliding window %d (%d of every %d layers; base %g, scale %g)", c->n_swa, c->swa_pattern - 1,
             c->swa_pattern, c->rope_base_swa, c->rope_scale_swa);
    if (c->n_expert > 0)
        ADDF("mixture of experts (%d of %d, width %d%s%s)", c->n_expert_used, c->n_expert, c->n_ff_exp,
             c->moe_gating == QL_GATING_SIGMOID ? ", sigmoid routing" : "",
             c->moe_norm_weights ? ", weights renormalised" : "");
    if (c->n_layer_dense_lead > 0) ADDF("first %d layer%s dense", c->n_layer_dense_lead, c->n_layer_dense_lead > 1 ? "s" : "");
    if (c->moe_weights_scale != 0.0f && c->moe_weights_scale != 1.0f) ADDF("expert weights x%g", c->moe_weights_scale);
    /* a MoE model's leading layers may be dense: the expert parts are the first MoE layer's */
    if (c->n_layer_dense_lead > 0 && c->n_layer_dense_lead < c->n_layer) L = &m->layers[c->n_layer_dense_lead];
    if (L && L->exp_probs_b) ADDF("expert selection bias");
    if (L && L->gate_shexp) ADDF("%s shared expert (width %d)", L->gate_inp_shexp ? "gated" : "ungated", c->n_ff_shexp);
    if (L && !L->attn_norm) ADDF("no pre-norms");
    if (L && L->attn_sinks) ADDF("attention sinks");
    if (L && L->bo) ADDF("output bias");
    if (L && L->gate_exps_b) ADDF("expert biases");
    if (c->n_expert > 0 && c->desc->moe_gating == QL_GATING_TOPK_SOFTMAX) ADDF("softmax over the top %d", c->n_expert_used);
    if (c->ffn_act == QL_FFN_SWIGLU_OAI) ADDF("SwiGLU-OAI (clamp 7, alpha 1.702)");
    if (c->residual_scale != 1.0f) ADDF("residual x%g", c->residual_scale);
    if (c->logit_mult != 1.0f) ADDF("logits x%g", c->logit_mult);
    if (c->desc->layer_norm) ADDF("LayerNorm");
    if (c->desc->parallel_block) ADDF("parallel attention and FFN");
    if (c->rope_swa_only && c->n_swa > 0) ADDF("RoPE on sliding layers only");
    if (c->attn_scale != 1.0f / sqrtf((float)c->head_dim)) ADDF("attention scale %g", c->attn_scale);
    if (c->rope_off) ADDF("no RoPE");
    else if (c->nope_period > 0) ADDF("no RoPE on every %dth layer", c->nope_period);
    if (c->attn_temp_scale > 0) ADDF("attention temperature %g per %d positions", c->attn_temp_scale, c->attn_temp_floor);
    if (c->attn_softcap > 0) ADDF("attention soft-cap %g", c->attn_softcap);
    if (c->final_softcap > 0) ADDF("final soft-cap %g", c->final_softcap);
#undef ADDF
    if (!used) snprintf(buf, cap, "plain llama");
}
