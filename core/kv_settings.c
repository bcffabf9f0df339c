/* kv_settings.c — the KV-cache settings of a plan or a quantized file: per-layer schemes, exact memory, the
 * qlab.kv.* GGUF keys and the llama.cpp flags that run the same cache (see kv_settings.h). */
#include "core/kv_settings.h"
#include "core/gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ql_kv_settings_init(ql_kv_settings *s) {
    memset(s, 0, sizeof *s);
    s->scheme = ql_kv_scheme_f32();
}

void ql_kv_settings_free(ql_kv_settings *s) {
    if (!s) return;
    free(s->layer_idx);
    free(s->layer_scheme);
    ql_kv_settings_init(s);
}

void ql_kv_settings_copy(ql_kv_settings *dst, const ql_kv_settings *src) {
    ql_kv_settings_free(dst);
    *dst = *src;
    dst->layer_idx = NULL, dst->layer_scheme = NULL, dst->n_layer_own = 0;
    for (int i = 0; i < src->n_layer_own; i++) ql_kv_settings_set_layer(dst, src->layer_idx[i], &src->layer_scheme[i]);
    dst->set = src->set;
}

void ql_kv_settings_set_layer(ql_kv_settings *s, int layer, const ql_kv_scheme *scheme) {
    s->set = true;
    for (int i = 0; i < s->n_layer_own; i++)
        if (s->layer_idx[i] == layer) {
            s->layer_scheme[i] = *scheme;
            return;
        }
    s->layer_idx = ql_realloc(s->layer_idx, (size_t)(s->n_layer_own + 1) * sizeof *s->layer_idx);
    s->layer_scheme = ql_realloc(s->layer_scheme, (size_t)(s->n_layer_own + 1) * sizeof *s->layer_scheme);
    s->layer_idx[s->n_layer_own] = layer;
    s->layer_scheme[s->n_layer_own++] = *scheme;
}

ql_kv_scheme ql_kv_settings_layer(const ql_kv_settings *s, int layer) {
    for (int i = 0; i < s->n_layer_own; i++)
        if (s->layer_idx[i] == layer) return s->layer_scheme[i];
    return s->scheme;
}

int64_t ql_kv_settings_bytes(const ql_kv_settings *s, const ql_config *c, int64_t ctx, int batch) {
    int64_t total = 0;
    for (int l = 0; l < c->n_layer; l++) {
        ql_kv_scheme sc = ql_kv_settings_layer(s, l);
        /* ql_kv_cache_bytes counts every layer alike: one layer is its n_layer-th part, exactly */
        int64_t b = ql_kv_cache_bytes(c, &sc, ctx, batch);
        if (b < 0) return -1;
        total += b / (c->n_layer ? c->n_layer : 1);
    }
    return total;
}

ql_status ql_kv_settings_check(const ql_kv_settings *s, const ql_config *c, const char *model_name) {
    ql_status st = ql_kv_scheme_check(&s->scheme, c, model_name);
    for (int i = 0; i < s->n_layer_own && !st; i++) {
        if (s->layer_idx[i] < 0 || s->layer_idx[i] >= c->n_layer)
            return ql_fail(QL_ERR_ARG, "%s: KV scheme for layer %d, but the model has %d layers", model_name,
                           s->layer_idx[i], c->n_layer);
        st = ql_kv_scheme_check(&s->layer_scheme[i], c, model_name);
    }
    return st;
}

const char *ql_kv_settings_describe(const ql_kv_settings *s, char *buf, size_t n) {
    char nm[160];
    size_t o = (size_t)snprintf(buf, n, "%s", ql_kv_scheme_name(&s->scheme, nm, sizeof nm));
    for (int i = 0; i < s->n_layer_own && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, ", layer %d %s", s->layer_idx[i],
                              ql_kv_scheme_name(&s->layer_scheme[i], nm, sizeof nm));
    return buf;
}

/* llama.cpp's name for a side, NULL when it has none (qlab's INT/FP8 schemes, a Hadamard-rotated K). */
static const char *llama_cache_type(const ql_kv_side *side, char *buf, size_t n) {
    if (side->hadamard) return NULL;
    if (side->kind == QL_KV_F32) return "f32";
    if (side->kind != QL_KV_GGML) return NULL;
    return ql_kv_side_name(side, buf, n); /* the parser takes only llama.cpp's cache types for this kind */
}

bool ql_kv_settings_llama_flags(const ql_kv_settings *s, char *buf, size_t n) {
    for (int i = 0; i < s->n_layer_own; i++)
        if (!ql_kv_scheme_equal(&s->layer_scheme[i], &s->scheme)) {
            snprintf(buf, n, "llama.cpp has one cache type for all layers: the per-layer KV schemes have no "
                             "llama.cpp equivalent");
            return false;
        }
    char kb[64], vb[64], nm[160];
    const char *k = llama_cache_type(&s->scheme.k, kb, sizeof kb), *v = llama_cache_type(&s->scheme.v, vb, sizeof vb);
    if (!k || !v) {
        snprintf(buf, n, "%s is a qlab-only KV scheme: llama.cpp has no cache type for it",
                 ql_kv_scheme_name(&s->scheme, nm, sizeof nm));
        return false;
    }
    /* flash attention: what llama.cpp needs for a quantized V cache, and the path qlab's figures match */
    snprintf(buf, n, "-ctk %s -ctv %s -fa on", k, v);
    return true;
}

bool ql_kv_settings_is_key(const char *key) { return strncmp(key, "qlab.kv.", 8) == 0; }

void ql_kv_settings_to_gguf(const ql_kv_settings *s, ql_gguf *g) {
    for (int64_t k = g->n_kv - 1; k >= 0; k--)
        if (ql_kv_settings_is_key(g->kv[k].key)) ql_gguf_remove(g, g->kv[k].key);
    if (!s->set) return;
    char nm[160], key[64];
    ql_gguf_set_str(g, QL_KV_KEY_SCHEME, ql_kv_scheme_name(&s->scheme, nm, sizeof nm));
    for (int i = 0; i < s->n_layer_own; i++) {
        snprintf(key, sizeof key, QL_KV_KEY_LAYER "%d", s->layer_idx[i]);
        ql_gguf_set_str(g, key, ql_kv_scheme_name(&s->layer_scheme[i], nm, sizeof nm));
    }
    if (s->ctx > 0) ql_gguf_set_u32(g, QL_KV_KEY_CTX, (uint32_t)s->ctx);
    if (s->batch > 0) ql_gguf_set_u32(g, QL_KV_KEY_BATCH, (uint32_t)s->batch);
}

static ql_status parse_key_scheme(const ql_gguf *g, const char *path, const char *key, ql_kv_scheme *out) {
    const char *v = ql_gguf_get_str(g, key);
    if (!v) return ql_fail(QL_ERR_FORMAT, "%s: %s is not a string", path, key);
    if (!ql_kv_scheme_parse(v, out)) return ql_fail(QL_ERR_FORMAT, "%s: %s: %s", path, key, ql_last_error());
    return QL_OK;
}

ql_status ql_kv_settings_from_gguf(const ql_gguf *g, const char *path, int n_layer, ql_kv_settings *s) {
    ql_kv_settings_init(s);
    ql_status st = QL_OK;
    const size_t lp = strlen(QL_KV_KEY_LAYER);
    for (int64_t k = 0; k < g->n_kv && !st; k++) {
        const char *key = g->kv[k].key;
        if (!ql_kv_settings_is_key(key)) continue;
        s->set = true;
        if (!strcmp(key, QL_KV_KEY_SCHEME)) st = parse_key_scheme(g, path, key, &s->scheme);
        else if (!strcmp(key, QL_KV_KEY_CTX) || !strcmp(key, QL_KV_KEY_BATCH)) {
            int64_t v;
            if (!ql_gguf_get_int(g, key, &v) || v < 1 || v > (1 << 24))
                st = ql_fail(QL_ERR_FORMAT, "%s: %s must be an integer in 1..%d", path, key, 1 << 24);
            else if (!strcmp(key, QL_KV_KEY_CTX)) s->ctx = v;
            else s->batch = (int)v;
        } else if (!strncmp(key, QL_KV_KEY_LAYER, lp)) {
            char *end;
            long l = strtol(key + lp, &end, 10);
            ql_kv_scheme sc;
            if (end == key + lp || *end || l < 0 || l >= n_layer)
                st = ql_fail(QL_ERR_FORMAT, "%s: %s names no layer of the model (%d layers)", path, key, n_layer);
            else if (!(st = parse_key_scheme(g, path, key, &sc))) ql_kv_settings_set_layer(s, (int)l, &sc);
        } else
            st = ql_fail(QL_ERR_FORMAT, "%s: unknown key %s (known: %s, %s<N>, %s, %s)", path, key, QL_KV_KEY_SCHEME,
                         QL_KV_KEY_LAYER, QL_KV_KEY_CTX, QL_KV_KEY_BATCH);
    }
    if (st) ql_kv_settings_free(s);
    return st;
}

ql_status ql_infer_set_kv_settings(ql_infer *inf, const ql_kv_settings *s) {
    const ql_model *m = ql_infer_model(inf);
    ql_status st = ql_kv_settings_check(s, &m->cfg, m->path);
    for (int l = 0; l < m->cfg.n_layer && !st; l++) {
        ql_kv_scheme sc = ql_kv_settings_layer(s, l);
        st = ql_infer_set_kv_layer(inf, l, &sc);
    }
    return st;
}
