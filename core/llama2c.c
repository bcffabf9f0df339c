/* llama2c.c — Karpathy's llama2.c checkpoints (.bin) as a ql_gguf: the legacy version-0 layout
 * (7 int32 header, float32 weights, RoPE tables) and the version-1 "ak42" float32 layout. Tensors
 * point into the mmapped file, adopted by the returned ql_gguf. llama2.c rotates adjacent pairs,
 * which is GGUF's q/k row order already, so nothing is permuted or copied. The tokenizer comes from
 * tokenizer.bin (or tok<vocab>.bin) beside the checkpoint when one is there. Thread-safe. */
#include "core/model.h"
#include "kernels/ggml_types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define AK42_MAGIC 0x616b3432u
#define AK42_HEADER 256

typedef struct {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} l2c_config;

/* a*b with a sticky overflow flag */
static uint64_t mul(uint64_t a, uint64_t b, bool *ovf) {
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r)) *ovf = true;
    return r;
}

static uint64_t add(uint64_t a, uint64_t b, bool *ovf) {
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r)) *ovf = true;
    return r;
}

typedef struct {
    ql_gguf *g;
    const uint8_t *base;
    uint64_t pos; /* byte offset of the next weight */
    char name[64];
} cursor;

/* Adds `count` float32 tensors (fmt gets the layer number) of GGUF shape [ne0, ne1] at the cursor;
 * ne1 == 0 makes a vector [ne0]. The caller has checked that the file holds them all. */
static ql_status take(cursor *c, const char *fmt, int count, int64_t ne0, int64_t ne1) {
    for (int l = 0; l < count; l++) {
        snprintf(c->name, sizeof c->name, fmt, l);
        int64_t ne[2] = {ne0, ne1 ? ne1 : 1};
        if (ql_gguf_add_tensor(c->g, c->name, QL_TYPE_F32, ne1 ? 2 : 1, ne, c->base + c->pos) < 0)
            return QL_ERR_FORMAT;
        c->pos += (uint64_t)ne[0] * (uint64_t)ne[1] * 4;
    }
    return QL_OK;
}

static void tokenizer_beside(const char *bin_path, int32_t n_vocab, ql_gguf *g, ql_status *s) {
    const char *slash = strrchr(bin_path, '/');
    size_t dl = slash ? (size_t)(slash - bin_path + 1) : 0;
    char cand[2][64];
    snprintf(cand[0], sizeof cand[0], "tokenizer.bin");
    snprintf(cand[1], sizeof cand[1], "tok%d.bin", (int)n_vocab);
    for (int i = 0; i < 2; i++) {
        size_t n = dl + strlen(cand[i]) + 1;
        char *p = ql_malloc(n);
        memcpy(p, bin_path, dl);
        memcpy(p + dl, cand[i], strlen(cand[i]) + 1);
        struct stat st;
        bool there = stat(p, &st) == 0 && S_ISREG(st.st_mode) && strcmp(p, bin_path) != 0;
        if (there) *s = ql_tokenizer_llama2c_to_gguf(p, n_vocab, g);
        free(p);
        if (there) return;
    }
}

ql_status ql_llama2c_load(const char *bin_path, ql_gguf **out) {
    *out = NULL;
    void *addr = NULL;
    size_t size = 0;
    ql_status s = ql_map_file(bin_path, &addr, &size);
    if (s) return s;
    const uint8_t *p = addr;
    l2c_config cf;
    uint64_t header = 28;
    bool v1 = false, shared;
    if (size >= 4 && (p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24) == AK42_MAGIC) {
        int32_t version;
        if (size < AK42_HEADER) {
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated llama2.c header (%zu bytes)", bin_path, size);
            goto fail;
        }
        memcpy(&version, p + 4, 4);
        if (version != 1) {
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: llama2.c export version %d (only float32 versions 0 and 1)",
                        bin_path, (int)version);
            goto fail;
        }
        memcpy(&cf, p + 8, sizeof cf);
        shared = p[8 + sizeof cf] != 0;
        header = AK42_HEADER;
        v1 = true;
    } else {
        if (size < sizeof cf) {
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated llama2.c header (%zu bytes)", bin_path, size);
            goto fail;
        }
        memcpy(&cf, p, sizeof cf);
        shared = cf.vocab_size > 0; /* a negative vocab size marks an unshared classifier */
        if (cf.vocab_size < 0 && cf.vocab_size != INT32_MIN) cf.vocab_size = -cf.vocab_size;
    }
    if (cf.dim <= 0 || cf.dim > 1 << 20 || cf.hidden_dim <= 0 || cf.hidden_dim > 1 << 22 ||
        cf.n_layers <= 0 || cf.n_layers > 4096 || cf.n_heads <= 0 || cf.n_heads > 4096 ||
        cf.n_kv_heads <= 0 || cf.n_kv_heads > cf.n_heads || cf.n_heads % cf.n_kv_heads ||
        cf.dim % cf.n_heads || (cf.dim / cf.n_heads) % 2 || cf.vocab_size <= 0 || cf.vocab_size > 1 << 24 ||
        cf.seq_len <= 0 || cf.seq_len > 1 << 24) {
        s = ql_fail(
            QL_ERR_FORMAT,
            "%s: not a llama2.c checkpoint (dim %d, hidden %d, layers %d, heads %d/%d, vocab %d, seq_len %d)",
            bin_path, (int)cf.dim, (int)cf.hidden_dim, (int)cf.n_layers, (int)cf.n_heads, (int)cf.n_kv_heads,
            (int)cf.vocab_size, (int)cf.seq_len);
        goto fail;
    }
    const uint64_t D = (uint64_t)cf.dim, F = (uint64_t)cf.hidden_dim, L = (uint64_t)cf.n_layers,
                   V = (uint64_t)cf.vocab_size;
    const uint64_t hs = D / (uint64_t)cf.n_heads, KV = hs * (uint64_t)cf.n_kv_heads;
    bool ovf = false;
    uint64_t floats = mul(V, D, &ovf);                         /* token embedding */
    floats = add(floats, mul(L, mul(D, 2, &ovf), &ovf), &ovf); /* two norms per layer */
    floats = add(floats, mul(L, add(mul(D, D, &ovf), mul(D, D, &ovf), &ovf), &ovf), &ovf); /* wq, wo */
    floats = add(floats, mul(L, mul(mul(D, KV, &ovf), 2, &ovf), &ovf), &ovf);              /* wk, wv */
    floats = add(floats, mul(L, mul(mul(D, F, &ovf), 3, &ovf), &ovf), &ovf);               /* w1, w2, w3 */
    floats = add(floats, D, &ovf);                                                         /* final norm */
    if (!v1) floats = add(floats, mul((uint64_t)cf.seq_len, hs, &ovf), &ovf); /* freq_cis real + imag */
    if (!shared) floats = add(floats, mul(V, D, &ovf), &ovf);
    uint64_t want = add(header, mul(floats, 4, &ovf), &ovf);
    if (ovf || want != size) {
        s = ql_fail(QL_ERR_FORMAT, "%s: %zu bytes, but a llama2.c checkpoint with this header has %llu",
                    bin_path, size, ovf ? 0ULL : (unsigned long long)want);
        goto fail;
    }

    ql_gguf *g = ql_gguf_new();
    g->path = ql_strdup(bin_path);
    ql_gguf_adopt_map(g, addr, size);
    addr = NULL;
    ql_gguf_set_str(g, "general.architecture", "llama");
    const char *base = strrchr(bin_path, '/');
    ql_gguf_set_str(g, "general.name", base ? base + 1 : bin_path);
    ql_gguf_set_u32(g, "general.file_type", 0);
    ql_gguf_set_u32(g, "llama.context_length", (uint32_t)cf.seq_len);
    ql_gguf_set_u32(g, "llama.embedding_length", (uint32_t)cf.dim);
    ql_gguf_set_u32(g, "llama.feed_forward_length", (uint32_t)cf.hidden_dim);
    ql_gguf_set_u32(g, "llama.block_count", (uint32_t)cf.n_layers);
    ql_gguf_set_u32(g, "llama.attention.head_count", (uint32_t)cf.n_heads);
    ql_gguf_set_u32(g, "llama.attention.head_count_kv", (uint32_t)cf.n_kv_heads);
    ql_gguf_set_u32(g, "llama.rope.dimension_count", (uint32_t)hs);
    ql_gguf_set_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f); /* llama2.c's run.c constant */
    ql_gguf_set_f32(g, "llama.rope.freq_base", 10000.0f);
    ql_gguf_set_u32(g, "llama.vocab_size", (uint32_t)cf.vocab_size);

    cursor c = {g, p, header, {0}};
    const int nl = cf.n_layers;
    const int64_t d = cf.dim, f = cf.hidden_dim, kv = (int64_t)KV, v = cf.vocab_size;
    if (!v1) {
        /* run.c order: embedding, per-kind blocks over layers, final norm, RoPE tables, classifier */
        if (take(&c, "token_embd.weight", 1, d, v) || take(&c, "blk.%d.attn_norm.weight", nl, d, 0) ||
            take(&c, "blk.%d.attn_q.weight", nl, d, d) || take(&c, "blk.%d.attn_k.weight", nl, d, kv) ||
            take(&c, "blk.%d.attn_v.weight", nl, d, kv) || take(&c, "blk.%d.attn_output.weight", nl, d, d) ||
            take(&c, "blk.%d.ffn_norm.weight", nl, d, 0) || take(&c, "blk.%d.ffn_gate.weight", nl, d, f) ||
            take(&c, "blk.%d.ffn_down.weight", nl, f, d) || take(&c, "blk.%d.ffn_up.weight", nl, d, f) ||
            take(&c, "output_norm.weight", 1, d, 0))
            goto fail_g;
        c.pos += (uint64_t)cf.seq_len * hs * 4; /* freq_cis_real/imag: recomputed from rope.freq_base */
    } else {
        /* export.py version 1: all norms first, then the embedding, then the matrices by kind */
        if (take(&c, "blk.%d.attn_norm.weight", nl, d, 0) || take(&c, "blk.%d.ffn_norm.weight", nl, d, 0) ||
            take(&c, "output_norm.weight", 1, d, 0) || take(&c, "token_embd.weight", 1, d, v) ||
            take(&c, "blk.%d.attn_q.weight", nl, d, d) || take(&c, "blk.%d.attn_k.weight", nl, d, kv) ||
            take(&c, "blk.%d.attn_v.weight", nl, d, kv) || take(&c, "blk.%d.attn_output.weight", nl, d, d) ||
            take(&c, "blk.%d.ffn_gate.weight", nl, d, f) || take(&c, "blk.%d.ffn_down.weight", nl, f, d) ||
            take(&c, "blk.%d.ffn_up.weight", nl, d, f))
            goto fail_g;
    }
    if (!shared && take(&c, "output.weight", 1, d, v)) goto fail_g;
    s = QL_OK;
    tokenizer_beside(bin_path, cf.vocab_size, g, &s);
    if (s) {
        ql_gguf_free(g);
        return s;
    }
    *out = g;
    return QL_OK;
fail_g:
    s = ql_fail(QL_ERR_FORMAT, "%s: cannot lay out tensor '%s'", bin_path, c.name);
    ql_gguf_free(g);
    return s;
fail:
    ql_unmap_file(addr, size);
    return s;
}
