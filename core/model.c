/* model.c — builds the llama-family model view (config + tensors by role + tokenizer) over a ql_gguf,
 * whatever file it came from, and checks every tensor's shape against the hyper-parameters so the
 * forward pass can trust them. */
#include "core/model.h"
#include "kernels/ggml_types.h"

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

static ql_status want(ql_model *m, ql_gguf_tensor **slot, const char *name, bool required, int64_t ne0, int64_t ne1) {
    int64_t i = ql_gguf_find_tensor(m->gguf, name);
    *slot = NULL;
    if (i < 0) {
        if (required) return ql_fail(QL_ERR_FORMAT, "%s: missing tensor '%s'", m->path, name);
        return QL_OK;
    }
    ql_gguf_tensor *t = &m->gguf->tensors[i];
    int64_t nrows = t->n_dims > 1 ? t->ne[1] : 1;
    if (t->ne[0] != ne0 || nrows != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", m->path, name,
                       (long long)t->ne[0], (long long)nrows, (long long)ne0, (long long)ne1);
    *slot = t;
    return QL_OK;
}

static const char *arch_or_default(const ql_gguf *g) {
    const char *a = ql_gguf_get_str(g, "general.architecture");
    return a ? a : "llama";
}

ql_status ql_model_from_gguf(ql_gguf *g, const char *path, ql_model **out) {
    *out = NULL;
    ql_model *m = ql_calloc(1, sizeof *m);
    m->gguf = g;
    m->path = ql_strdup(path);
    ql_config *c = &m->cfg;
    ql_status s = QL_OK;
    const char *arch = arch_or_default(g);
    static const char *supported[] = {"llama", "mistral", "qwen2", "qwen3"};
    bool ok = false;
    for (size_t i = 0; i < QL_ARRAY_LEN(supported); i++) ok |= strcmp(arch, supported[i]) == 0;
    if (!ok) {
        s = ql_fail(QL_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (llama family only)", path, arch);
        goto fail;
    }
    snprintf(c->arch, sizeof c->arch, "%s", arch);
    c->n_layer = (int)get_int_or(g, arch, "block_count", 0);
    c->n_embd = (int)get_int_or(g, arch, "embedding_length", 0);
    c->n_head = (int)get_int_or(g, arch, "attention.head_count", 0);
    c->n_head_kv = (int)get_int_or(g, arch, "attention.head_count_kv", c->n_head);
    c->n_ff = (int)get_int_or(g, arch, "feed_forward_length", 0);
    c->n_ctx_train = (int)get_int_or(g, arch, "context_length", 2048);
    if (c->n_layer <= 0 || c->n_layer > 4096 || c->n_embd <= 0 || c->n_embd > 1 << 20 || c->n_head <= 0 ||
        c->n_head > 4096 || c->n_head_kv <= 0 || c->n_head % c->n_head_kv || c->n_ff <= 0 || c->n_ff > 1 << 22) {
        s = ql_fail(QL_ERR_FORMAT, "%s: missing or invalid hyper-parameters (layers %d, embd %d, heads %d/%d, ff %d)", path,
                    c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->n_ff);
        goto fail;
    }
    c->head_dim = (int)get_int_or(g, arch, "attention.key_length", c->n_embd / c->n_head);
    if (c->head_dim <= 0 || c->head_dim > 4096 || c->head_dim % 2) {
        s = ql_fail(QL_ERR_FORMAT, "%s: invalid head dimension %d", path, c->head_dim);
        goto fail;
    }
    c->rope_dim = (int)get_int_or(g, arch, "rope.dimension_count", c->head_dim);
    if (c->rope_dim <= 0 || c->rope_dim > c->head_dim || c->rope_dim % 2) c->rope_dim = c->head_dim;
    c->rope_base = (float)get_f64_or(g, arch, "rope.freq_base", 10000.0);
    c->rope_scale = 1.0f;
    char k[160];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const char *st = ql_gguf_get_str(g, k);
    if (st && strcmp(st, "linear") == 0) c->rope_scale = (float)get_f64_or(g, arch, "rope.scaling.factor", 1.0);
    else if (!st) c->rope_scale = (float)get_f64_or(g, arch, "rope.scale_linear", 1.0);
    if (!(c->rope_scale > 0)) c->rope_scale = 1.0f;
    c->rope_neox = strncmp(arch, "qwen", 4) == 0;
    c->norm_eps = (float)get_f64_or(g, arch, "attention.layer_norm_rms_epsilon", 1e-5);

    int64_t te = ql_gguf_find_tensor(g, "token_embd.weight");
    if (te < 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", path);
        goto fail;
    }
    c->n_vocab = (int)g->tensors[te].ne[1];
    const int64_t D = c->n_embd, Q = (int64_t)c->n_head * c->head_dim, KV = (int64_t)c->n_head_kv * c->head_dim;
    if ((s = want(m, &m->tok_embd, "token_embd.weight", true, D, c->n_vocab))) goto fail;
    if ((s = want(m, &m->output_norm, "output_norm.weight", true, D, 1))) goto fail;
    if ((s = want(m, &m->output, "output.weight", false, D, c->n_vocab))) goto fail;
    c->tied_output = m->output == NULL;
    if (!m->output) m->output = m->tok_embd;
    m->layers = ql_calloc((size_t)c->n_layer, sizeof *m->layers);
    for (int l = 0; l < c->n_layer; l++) {
        ql_layer_tensors *L = &m->layers[l];
        char n[96];
#define T(slot, nm, req, a, b) \
        snprintf(n, sizeof n, "blk.%d." nm, l); \
        if ((s = want(m, &L->slot, n, req, a, b))) goto fail;
        T(attn_norm, "attn_norm.weight", true, D, 1)
        T(wq, "attn_q.weight", true, D, Q)
        T(wk, "attn_k.weight", true, D, KV)
        T(wv, "attn_v.weight", true, D, KV)
        T(wo, "attn_output.weight", true, Q, D)
        T(bq, "attn_q.bias", false, Q, 1)
        T(bk, "attn_k.bias", false, KV, 1)
        T(bv, "attn_v.bias", false, KV, 1)
        T(ffn_norm, "ffn_norm.weight", true, D, 1)
        T(w_gate, "ffn_gate.weight", true, D, c->n_ff)
        T(w_up, "ffn_up.weight", true, D, c->n_ff)
        T(w_down, "ffn_down.weight", true, c->n_ff, D)
#undef T
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
