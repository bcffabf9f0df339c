/* test_hf.c — Hugging Face folders, safetensors and llama2.c checkpoints: stories260K.gguf saved as a
 * HF folder and loaded back bit-exactly (q/k permuted on the way and back), sharded safetensors with
 * an index, llama2.c .bin files written here from the GGUF tensors, the rope permutation itself, and
 * hostile inputs that must fail with QL_ERR_FORMAT naming the file. Fixtures live in mkdtemp folders. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "kernels/ggml_types.h"
#include "core/model.h"
#include "tests/test_util.h"

/* ---------------------------------------------------------------- fixtures */

static void join(char *buf, size_t cap, const char *dir, const char *name) {
    snprintf(buf, cap, "%s/%s", dir, name);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void write_text(const char *path, const char *s) { write_file(path, s, strlen(s)); }

/* A safetensors file from a header text and data bytes; hdr_len overrides the length field when non-zero. */
static void write_st_raw(const char *path, const char *hdr, const void *data, size_t n, uint64_t hdr_len) {
    size_t hl = strlen(hdr);
    uint64_t len = hdr_len ? hdr_len : hl;
    uint8_t *buf = malloc(8 + hl + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    if (n) memcpy(buf + 8 + hl, data, n);
    write_file(path, buf, 8 + hl + n);
    free(buf);
}

static const char *st_dtype(uint32_t type) {
    return type == QL_TYPE_F32 ? "F32" : type == QL_TYPE_F16 ? "F16" : "BF16";
}

/* Writes tensors [from, to) of g (names as they are) as one safetensors file; adds them to weight_map. */
static void write_st_subset(const char *path, const char *file, const ql_gguf *g, int64_t from, int64_t to,
                            json_t *weight_map) {
    json_t *hdr = json_object();
    uint64_t off = 0;
    for (int64_t i = from; i < to; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        json_t *shape = json_array();
        for (int d = t->n_dims - 1; d >= 0; d--) json_array_append_new(shape, json_integer(t->ne[d]));
        json_object_set_new(hdr, t->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", st_dtype(t->type), "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + t->nbytes)));
        off += t->nbytes;
        if (weight_map) json_object_set_new(weight_map, t->name, json_string(file));
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    uint8_t *data = malloc(off ? off : 1);
    off = 0;
    for (int64_t i = from; i < to; i++) {
        memcpy(data + off, g->tensors[i].data, g->tensors[i].nbytes);
        off += g->tensors[i].nbytes;
    }
    write_st_raw(path, text, data, off, 0);
    free(data);
    free(text);
    json_decref(hdr);
}

static ql_gguf *open_stories(void) {
    char model[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) return NULL;
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(model, &g), QL_OK);
    return g;
}

/* Every tensor of `want` is in `got` with the same type, shape and bytes (output.weight may be absent
 * in `got` when allow_tied). Returns how many were compared. */
static int64_t assert_same_tensors(const ql_gguf *want, const ql_gguf *got, bool allow_tied) {
    int64_t n = 0;
    for (int64_t i = 0; i < want->n_tensors; i++) {
        const ql_gguf_tensor *a = &want->tensors[i];
        int64_t j = ql_gguf_find_tensor(got, a->name);
        if (j < 0 && allow_tied && strcmp(a->name, "output.weight") == 0) continue;
        if (j < 0) fail_msg("tensor %s missing after the round trip", a->name);
        const ql_gguf_tensor *b = &got->tensors[j];
        assert_int_equal(a->type, b->type);
        assert_int_equal(a->n_dims, b->n_dims);
        for (int d = 0; d < QL_MAX_DIMS; d++) assert_int_equal(a->ne[d], b->ne[d]);
        assert_int_equal(a->nbytes, b->nbytes);
        if (memcmp(a->data, b->data, a->nbytes) != 0) fail_msg("tensor %s differs", a->name);
        n++;
    }
    return n;
}

static void assert_same_int(const ql_gguf *a, const ql_gguf *b, const char *key, int64_t def) {
    int64_t x = def, y = def;
    ql_gguf_get_int(a, key, &x);
    assert_true(ql_gguf_get_int(b, key, &y));
    if (x != y) fail_msg("%s: %lld vs %lld", key, (long long)x, (long long)y);
}

static void assert_error_names(ql_status got, ql_status want, const char *needle) {
    if (got != want)
        fail_msg("status %s, expected %s (%s)", ql_status_str(got), ql_status_str(want), ql_last_error());
    if (!strstr(ql_last_error(), needle)) fail_msg("error '%s' does not name '%s'", ql_last_error(), needle);
}

/* ---------------------------------------------------------------- rope permutation */

static void test_rope_permute(void **state) {
    (void)state;
    /* one head of 4 rows: HF rows (r0 r1 | r2 r3) are pairs (r0,r2), (r1,r3); GGUF keeps pairs adjacent */
    int32_t hf[4] = {10, 11, 12, 13}, gg[4], back[4];
    ql_rope_permute_rows(gg, hf, 1, 4, sizeof(int32_t), true);
    int32_t want[4] = {10, 12, 11, 13};
    assert_memory_equal(gg, want, sizeof want);
    /* several heads, multi-byte rows, both directions */
    enum { H = 3, HD = 8, ROWS = H * HD, COLS = 5 };
    float src[ROWS][COLS], mid[ROWS][COLS], out[ROWS][COLS];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) src[r][c] = (float)(r * 100 + c);
    ql_rope_permute_rows(mid, src, H, ROWS, sizeof src[0], true);
    for (int h = 0; h < H; h++)
        for (int j = 0; j < HD / 2; j++) {
            assert_true(mid[h * HD + 2 * j][0] == src[h * HD + j][0]);
            assert_true(mid[h * HD + 2 * j + 1][3] == src[h * HD + HD / 2 + j][3]);
        }
    ql_rope_permute_rows(out, mid, H, ROWS, sizeof src[0], false);
    assert_memory_equal(out, src, sizeof src);
    ql_rope_permute_rows(back, gg, 1, 4, sizeof(int32_t), false);
    assert_memory_equal(back, hf, sizeof hf);
}

/* ---------------------------------------------------------------- HF save / load */

static void test_hf_roundtrip(void **state) {
    (void)state;
    ql_gguf *g = open_stories();
    if (!g) skip();
    char *dir = ql_test_mkdtemp("hf");
    char p[1024];
    assert_int_equal(ql_hf_save(g, dir), QL_OK);

    /* config.json says what HF tools need */
    join(p, sizeof p, dir, "config.json");
    json_t *cfg = json_load_file(p, 0, NULL);
    assert_non_null(cfg);
    assert_string_equal(json_string_value(json_object_get(cfg, "model_type")), "llama");
    assert_int_equal(json_integer_value(json_object_get(cfg, "hidden_size")), 64);
    assert_int_equal(json_integer_value(json_object_get(cfg, "num_key_value_heads")), 4);
    assert_int_equal(json_integer_value(json_object_get(cfg, "intermediate_size")), 172);
    assert_false(json_is_true(json_object_get(cfg, "tie_word_embeddings")));
    json_decref(cfg);

    /* the file holds HF names and HF (half-split) q/k row order */
    join(p, sizeof p, dir, "model.safetensors");
    void *addr;
    size_t len;
    assert_int_equal(ql_map_file(p, &addr, &len), QL_OK);
    ql_gguf *st = ql_gguf_new();
    assert_int_equal(ql_safetensors_parse(addr, len, p, st), QL_OK);
    assert_int_equal(st->n_tensors, g->n_tensors);
    int64_t iq = ql_gguf_find_tensor(st, "model.layers.2.self_attn.q_proj.weight");
    int64_t ik = ql_gguf_find_tensor(st, "model.layers.2.self_attn.k_proj.weight");
    assert_true(iq >= 0 && ik >= 0);
    assert_true(ql_gguf_find_tensor(st, "lm_head.weight") >= 0);
    assert_true(ql_gguf_find_tensor(st, "model.embed_tokens.weight") >= 0);
    const ql_gguf_tensor *gq = &g->tensors[ql_gguf_find_tensor(g, "blk.2.attn_q.weight")];
    const ql_gguf_tensor *gk = &g->tensors[ql_gguf_find_tensor(g, "blk.2.attn_k.weight")];
    float *tmp = malloc(gq->nbytes);
    ql_rope_permute_rows(tmp, gq->data, 8, gq->ne[1], (size_t)gq->ne[0] * 4, false);
    assert_memory_equal(tmp, st->tensors[iq].data, gq->nbytes);
    assert_true(memcmp(gq->data, st->tensors[iq].data, gq->nbytes) != 0); /* really permuted */
    ql_rope_permute_rows(tmp, gk->data, 4, gk->ne[1], (size_t)gk->ne[0] * 4, false);
    assert_memory_equal(tmp, st->tensors[ik].data, gk->nbytes);
    free(tmp);
    ql_gguf_free(st);
    ql_unmap_file(addr, len);

    /* HF -> GGUF: every tensor bit-exact, hyper-parameters and tokenizer carried */
    ql_gguf *h;
    assert_int_equal(ql_hf_load(dir, &h), QL_OK);
    assert_int_equal(h->n_tensors, g->n_tensors);
    assert_int_equal(assert_same_tensors(g, h, false), g->n_tensors);
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "llama");
    static const char *keys[] = {"llama.block_count",           "llama.embedding_length",
                                 "llama.attention.head_count",  "llama.attention.head_count_kv",
                                 "llama.feed_forward_length",   "llama.context_length",
                                 "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    for (size_t i = 0; i < QL_ARRAY_LEN(keys); i++) assert_same_int(g, h, keys[i], 0);
    assert_same_int(g, h, "llama.rope.dimension_count", 8);
    double e1, e2;
    assert_true(ql_gguf_get_f64(g, "llama.attention.layer_norm_rms_epsilon", &e1));
    assert_true(ql_gguf_get_f64(h, "llama.attention.layer_norm_rms_epsilon", &e2));
    assert_true((float)e1 == (float)e2);
    assert_true(ql_gguf_get_f64(h, "llama.rope.freq_base", &e2) && e2 == 10000.0);
    uint64_t n1, n2;
    const ql_gguf_value *t1 = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n1);
    const ql_gguf_value *t2 = ql_gguf_get_arr(h, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n2);
    assert_non_null(t1);
    assert_non_null(t2);
    assert_int_equal(n1, n2);
    for (uint64_t i = 0; i < n1; i++) assert_string_equal(t1[i].v.str.s, t2[i].v.str.s);
    const ql_gguf_value *s1 = ql_gguf_get_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, &n1);
    const ql_gguf_value *s2 = ql_gguf_get_arr(h, "tokenizer.ggml.scores", QL_GGUF_F32, &n2);
    assert_true(s1 && s2 && n1 == n2);
    for (uint64_t i = 0; i < n1; i++) assert_true(s1[i].v.f == s2[i].v.f);
    assert_string_equal(ql_gguf_get_str(g, "tokenizer.ggml.model"),
                        ql_gguf_get_str(h, "tokenizer.ggml.model"));

    /* GGUF -> HF -> GGUF again, through a written GGUF file */
    char *dir2 = ql_test_mkdtemp("hf");
    assert_int_equal(ql_hf_save(h, dir2), QL_OK);
    ql_gguf *h2;
    assert_int_equal(ql_hf_load(dir2, &h2), QL_OK);
    join(p, sizeof p, dir2, "again.gguf");
    assert_int_equal(ql_gguf_write(h2, p, NULL), QL_OK);
    ql_gguf *h3;
    assert_int_equal(ql_gguf_open(p, &h3), QL_OK);
    assert_int_equal(assert_same_tensors(g, h3, false), g->n_tensors);
    ql_gguf_free(h3);
    ql_gguf_free(h2);

    /* the loaded folder is a model the rest of qlab accepts */
    ql_model *m;
    assert_int_equal(ql_model_from_gguf(h, dir, &m), QL_OK);
    assert_int_equal(m->cfg.n_layer, 5);
    assert_int_equal(m->cfg.n_head_kv, 4);
    assert_false(m->cfg.tied_output);
    ql_model_free(m);
    ql_gguf_free(g);
    ql_test_rm_flat_dir(dir2);
    ql_test_rm_flat_dir(dir);
}

static void test_hf_save_rejects_quantized(void **state) {
    (void)state;
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.architecture", "llama");
    ql_gguf_set_u32(g, "llama.block_count", 1);
    ql_gguf_set_u32(g, "llama.embedding_length", 32);
    ql_gguf_set_u32(g, "llama.attention.head_count", 4);
    ql_gguf_set_u32(g, "llama.feed_forward_length", 32);
    static uint8_t blocks[34 * 32]; /* q8_0: 32 rows of one 34-byte block */
    int64_t ne[2] = {32, 32};
    assert_true(ql_gguf_add_tensor(g, "token_embd.weight", QL_TYPE_Q8_0, 2, ne, blocks) >= 0);
    char *dir = ql_test_mkdtemp("hf");
    assert_int_equal(ql_hf_save(g, dir), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "token_embd.weight"));
    char p[1024];
    join(p, sizeof p, dir, "model.safetensors");
    assert_int_equal(access(p, F_OK), -1); /* nothing half-written */
    ql_gguf_free(g);
    ql_test_rm_flat_dir(dir);
}

/* A qwen2 folder: arch qwen2, biases mapped, no permutation. Built from stories260K tensors. */
static void test_hf_qwen2_no_permute(void **state) {
    (void)state;
    ql_gguf *g = open_stories();
    if (!g) skip();
    char *dir = ql_test_mkdtemp("hf");
    assert_int_equal(ql_hf_save(g, dir), QL_OK);
    char p[1024];
    join(p, sizeof p, dir, "config.json");
    json_t *cfg = json_load_file(p, 0, NULL);
    json_object_set_new(cfg, "model_type", json_string("qwen2"));
    json_object_set_new(cfg, "rope_theta", json_real(1000000.0));
    json_object_set_new(cfg, "rope_scaling", json_pack("{s:s,s:f}", "type", "linear", "factor", 4.0));
    assert_int_equal(json_dump_file(cfg, p, 0), 0);
    json_decref(cfg);
    ql_gguf *h;
    assert_int_equal(ql_hf_load(dir, &h), QL_OK);
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "qwen2");
    int64_t n;
    assert_true(ql_gguf_get_int(h, "qwen2.block_count", &n) && n == 5);
    double d;
    assert_true(ql_gguf_get_f64(h, "qwen2.rope.freq_base", &d) && d == 1e6);
    assert_true(ql_gguf_get_f64(h, "qwen2.rope.scaling.factor", &d) && d == 4.0);
    assert_string_equal(ql_gguf_get_str(h, "qwen2.rope.scaling.type"), "linear");
    /* the file's q rows (HF order) come through untouched for a NeoX-rope model */
    const ql_gguf_tensor *gq = &g->tensors[ql_gguf_find_tensor(g, "blk.1.attn_q.weight")];
    const ql_gguf_tensor *hq = &h->tensors[ql_gguf_find_tensor(h, "blk.1.attn_q.weight")];
    float *tmp = malloc(gq->nbytes);
    ql_rope_permute_rows(tmp, gq->data, 8, gq->ne[1], (size_t)gq->ne[0] * 4, false);
    assert_memory_equal(tmp, hq->data, gq->nbytes);
    free(tmp);
    ql_gguf_free(h);
    ql_gguf_free(g);
    ql_test_rm_flat_dir(dir);
}

static void test_hf_sharded(void **state) {
    (void)state;
    ql_gguf *g = open_stories();
    if (!g) skip();
    char *dir = ql_test_mkdtemp("hf"), *sdir = ql_test_mkdtemp("hf");
    assert_int_equal(ql_hf_save(g, dir), QL_OK);
    char p[1024], q[1024];
    join(p, sizeof p, dir, "model.safetensors");
    void *addr;
    size_t len;
    assert_int_equal(ql_map_file(p, &addr, &len), QL_OK);
    ql_gguf *st = ql_gguf_new();
    assert_int_equal(ql_safetensors_parse(addr, len, p, st), QL_OK);
    json_t *wm = json_object();
    int64_t half = st->n_tensors / 2;
    join(q, sizeof q, sdir, "model-00001-of-00002.safetensors");
    write_st_subset(q, "model-00001-of-00002.safetensors", st, 0, half, wm);
    join(q, sizeof q, sdir, "model-00002-of-00002.safetensors");
    write_st_subset(q, "model-00002-of-00002.safetensors", st, half, st->n_tensors, wm);
    json_t *idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)1, "weight_map", wm);
    join(q, sizeof q, sdir, "model.safetensors.index.json");
    assert_int_equal(json_dump_file(idx, q, JSON_INDENT(1)), 0);
    join(p, sizeof p, dir, "config.json");
    json_t *cfg = json_load_file(p, 0, NULL);
    join(q, sizeof q, sdir, "config.json");
    assert_int_equal(json_dump_file(cfg, q, 0), 0);
    json_decref(cfg);

    ql_gguf *h;
    assert_int_equal(ql_hf_load(sdir, &h), QL_OK);
    assert_int_equal(h->n_tensors, g->n_tensors);
    assert_int_equal(assert_same_tensors(g, h, false), g->n_tensors);
    assert_null(ql_gguf_get(h, "tokenizer.ggml.tokens")); /* no tokenizer in these shards */
    ql_gguf_free(h);

    /* without carried metadata, tokenizer.json is translated (a tiny byte-level BPE vocabulary) */
    join(q, sizeof q, sdir, "tokenizer.json");
    write_text(q, "{\"added_tokens\": [], \"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
                  " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
                  " \"merges\": [\"a b\"]}}");
    assert_int_equal(ql_hf_load(sdir, &h), QL_OK);
    uint64_t nt;
    assert_non_null(ql_gguf_get_arr(h, "tokenizer.ggml.tokens", QL_GGUF_STRING, &nt));
    assert_int_equal(nt, 3);
    assert_string_equal(ql_gguf_get_str(h, "tokenizer.ggml.model"), "gpt2");
    ql_gguf_free(h);
    unlink(q);

    /* an index that names a tensor no shard holds */
    json_object_set_new(json_object_get(idx, "weight_map"), "model.layers.0.mlp.extra.weight",
                        json_string("model-00001-of-00002.safetensors"));
    join(q, sizeof q, sdir, "model.safetensors.index.json");
    assert_int_equal(json_dump_file(idx, q, 0), 0);
    assert_error_names(ql_hf_load(sdir, &h), QL_ERR_FORMAT, "model.safetensors.index.json");
    /* an index that points outside the folder */
    write_text(q, "{\"weight_map\": {\"lm_head.weight\": \"../model.safetensors\"}}");
    assert_error_names(ql_hf_load(sdir, &h), QL_ERR_FORMAT, "model.safetensors.index.json");
    json_decref(idx);
    ql_gguf_free(st);
    ql_unmap_file(addr, len);
    ql_gguf_free(g);
    ql_test_rm_flat_dir(sdir);
    ql_test_rm_flat_dir(dir);
}

/* ---------------------------------------------------------------- hostile safetensors / config */

static void test_safetensors_corrupt(void **state) {
    (void)state;
    char *dir = ql_test_mkdtemp("hf");
    char p[1024];
    join(p, sizeof p, dir, "config.json");
    write_text(p, "{\"model_type\": \"llama\", \"hidden_size\": 4, \"num_hidden_layers\": 1, "
                  "\"num_attention_heads\": 2, \"intermediate_size\": 8, \"vocab_size\": 4}");
    join(p, sizeof p, dir, "model.safetensors");
    float data[4] = {1, 2, 3, 4};
    const char *ok_hdr = "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    static const struct {
        const char *hdr;
        uint64_t len_override;
        size_t ndata;
        ql_status want;
    } cases[] = {
        {"{}", 1000000, 16, QL_ERR_FORMAT},      /* header length past EOF */
        {"{\"a\": [1, 2", 0, 16, QL_ERR_FORMAT}, /* bad JSON */
        {"[1, 2, 3]", 0, 16, QL_ERR_FORMAT},     /* not an object */
        {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,64]}}", 0, 16,
         QL_ERR_FORMAT}, /* offsets out of range */
        {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[4,16]}}", 0, 16,
         QL_ERR_FORMAT}, /* wrong byte count */
        {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,4]}}", 0, 16,
         QL_ERR_FORMAT}, /* end before begin */
        {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 0, 16,
         QL_ERR_FORMAT}, /* negative dimension */
        {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,16]}}",
         0, 16, QL_ERR_FORMAT}, /* shape overflow */
        {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4]}}", 0, 16, QL_ERR_FORMAT}, /* no offsets */
        {"{\"model.norm.weight\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 0, 16,
         QL_ERR_UNSUPPORTED},                                                      /* dtype */
        {"{\"__metadata__\":{\"qlab.gguf.x\":\"[4, -1]\"}}", 0, 0, QL_ERR_FORMAT}, /* bad carried value */
        {"{\"__metadata__\":{\"qlab.gguf.x\":\"[9, [8, [\\\"a\\\", 3]]]\"}}", 0, 0, QL_ERR_FORMAT},
        {"{\"__metadata__\":{\"qlab.gguf.x\":\"[8, {\\\"hex\\\": \\\"4g\\\"}]\"}}", 0, 0, QL_ERR_FORMAT},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); i++) {
        write_st_raw(p, cases[i].hdr, data, cases[i].ndata, cases[i].len_override);
        ql_gguf *h = (ql_gguf *)0x1;
        ql_status s = ql_hf_load(dir, &h);
        if (s != cases[i].want) fail_msg("case %zu: %s (%s)", i, ql_status_str(s), ql_last_error());
        assert_null(h);
        assert_non_null(strstr(ql_last_error(), "model.safetensors"));
        if (cases[i].want == QL_ERR_UNSUPPORTED)
            assert_non_null(strstr(ql_last_error(), "model.norm.weight"));
    }
    /* too short for the length field, direct parse */
    ql_gguf *g = ql_gguf_new();
    assert_error_names(ql_safetensors_parse("abc", 3, "short.st", g), QL_ERR_FORMAT, "short.st");
    /* a good one parses, with GGUF shape order and the carried metadata decoded */
    const char *meta_hdr = "{\"__metadata__\":{\"format\":\"pt\",\"qlab.gguf.a.b\":\"[4, 7]\","
                           "\"qlab.gguf.s\":\"[8, {\\\"hex\\\": \\\"41004a\\\"}]\","
                           "\"qlab.gguf.f\":\"[9, [6, [1.5, \\\"-inf\\\"]]]\"},"
                           "\"w\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,16]}}";
    uint8_t buf[512];
    size_t hl = strlen(meta_hdr);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, meta_hdr, hl);
    memcpy(buf + 8 + hl, data, 16);
    assert_int_equal(ql_safetensors_parse(buf, 8 + hl + 16, "good.st", g), QL_OK);
    assert_int_equal(g->n_tensors, 1);
    assert_int_equal(g->tensors[0].type, QL_TYPE_BF16);
    assert_int_equal(g->tensors[0].ne[0], 4);
    assert_int_equal(g->tensors[0].ne[1], 2);
    int64_t v;
    assert_true(ql_gguf_get_int(g, "a.b", &v) && v == 7);
    const ql_gguf_value *sv = ql_gguf_get(g, "s");
    assert_true(sv && sv->type == QL_GGUF_STRING && sv->v.str.len == 3 &&
                memcmp(sv->v.str.s, "A\0J", 3) == 0);
    uint64_t nf;
    const ql_gguf_value *fv = ql_gguf_get_arr(g, "f", QL_GGUF_F32, &nf);
    assert_true(fv && nf == 2 && fv[0].v.f == 1.5 && fv[1].v.f < -1e308);
    assert_null(ql_gguf_get(g, "format"));
    ql_gguf_free(g);

    /* a good file next to a broken config.json */
    write_st_raw(p, ok_hdr, data, 16, 0);
    join(p, sizeof p, dir, "config.json");
    write_text(p, "{\"model_type\": \"llama\", \"hidden_size\": ");
    ql_gguf *h;
    assert_error_names(ql_hf_load(dir, &h), QL_ERR_FORMAT, "config.json");
    write_text(p, "{\"model_type\": \"gpt2\", \"hidden_size\": 4}");
    assert_error_names(ql_hf_load(dir, &h), QL_ERR_UNSUPPORTED, "config.json");
    write_text(p, "{\"model_type\": \"llama\", \"hidden_size\": 4, \"num_hidden_layers\": 1, "
                  "\"num_attention_heads\": 3, \"intermediate_size\": 8}");
    assert_error_names(ql_hf_load(dir, &h), QL_ERR_FORMAT, "config.json");
    /* a layer the config does not have */
    write_text(p, "{\"model_type\": \"llama\", \"hidden_size\": 4, \"num_hidden_layers\": 1, "
                  "\"num_attention_heads\": 2, \"intermediate_size\": 8}");
    join(p, sizeof p, dir, "model.safetensors");
    write_st_raw(p,
                 "{\"model.layers.3.input_layernorm.weight\":{\"dtype\":\"F32\",\"shape\":[4],"
                 "\"data_offsets\":[0,16]}}",
                 data, 16, 0);
    assert_error_names(ql_hf_load(dir, &h), QL_ERR_FORMAT, "model.safetensors");
    /* q rows that do not match the heads */
    write_st_raw(p,
                 "{\"model.layers.0.self_attn.q_proj.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],"
                 "\"data_offsets\":[0,16]}}",
                 data, 16, 0);
    assert_error_names(ql_hf_load(dir, &h), QL_ERR_FORMAT, "model.safetensors");
    /* no weights at all */
    unlink(p);
    assert_error_names(ql_hf_load(dir, &h), QL_ERR_IO, dir);
    ql_test_rm_flat_dir(dir);
}

/* ---------------------------------------------------------------- llama2.c */

static void put(FILE *f, const ql_gguf *g, const char *name) {
    int64_t i = ql_gguf_find_tensor(g, name);
    if (i < 0) fail_msg("no tensor %s", name);
    assert_int_equal(fwrite(g->tensors[i].data, 1, g->tensors[i].nbytes, f), g->tensors[i].nbytes);
}

static void put_layers(FILE *f, const ql_gguf *g, const char *kind, int n_layer) {
    char n[96];
    for (int l = 0; l < n_layer; l++) {
        snprintf(n, sizeof n, "blk.%d.%s.weight", l, kind);
        put(f, g, n);
    }
}

/* llama2.c checkpoint from the GGUF tensors: version 0 (run.c layout) or version 1 ("ak42"). */
static void write_llama2c(const char *path, const ql_gguf *g, int version, bool shared) {
    int64_t dim, hidden, nl, nh, nkv, ctx;
    assert_true(ql_gguf_get_int(g, "llama.embedding_length", &dim));
    assert_true(ql_gguf_get_int(g, "llama.feed_forward_length", &hidden));
    assert_true(ql_gguf_get_int(g, "llama.block_count", &nl));
    assert_true(ql_gguf_get_int(g, "llama.attention.head_count", &nh));
    assert_true(ql_gguf_get_int(g, "llama.attention.head_count_kv", &nkv));
    ctx = 512;
    int32_t vocab = (int32_t)g->tensors[ql_gguf_find_tensor(g, "token_embd.weight")].ne[1];
    int32_t hdr[7] = {(int32_t)dim, (int32_t)hidden, (int32_t)nl,
                      (int32_t)nh,  (int32_t)nkv,    version == 0 && !shared ? -vocab : vocab,
                      (int32_t)ctx};
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (version == 1) {
        uint8_t h[256] = {0};
        uint32_t magic = 0x616b3432;
        int32_t ver = 1;
        memcpy(h, &magic, 4);
        memcpy(h + 4, &ver, 4);
        memcpy(h + 8, hdr, sizeof hdr);
        h[36] = shared;
        fwrite(h, 1, 256, f);
        put_layers(f, g, "attn_norm", (int)nl);
        put_layers(f, g, "ffn_norm", (int)nl);
        put(f, g, "output_norm.weight");
        put(f, g, "token_embd.weight");
        static const char *kinds[] = {"attn_q",   "attn_k",   "attn_v", "attn_output",
                                      "ffn_gate", "ffn_down", "ffn_up"};
        for (int k = 0; k < 7; k++) put_layers(f, g, kinds[k], (int)nl);
    } else {
        fwrite(hdr, 4, 7, f);
        put(f, g, "token_embd.weight");
        static const char *kinds[] = {"attn_norm", "attn_q",   "attn_k",   "attn_v", "attn_output",
                                      "ffn_norm",  "ffn_gate", "ffn_down", "ffn_up"};
        for (int k = 0; k < 9; k++) put_layers(f, g, kinds[k], (int)nl);
        put(f, g, "output_norm.weight");
        size_t nfreq = (size_t)ctx * (size_t)(dim / nh); /* real + imag, seq_len * head_size / 2 each */
        float *z = calloc(nfreq, sizeof *z);
        fwrite(z, 4, nfreq, f);
        free(z);
    }
    if (!shared) put(f, g, "output.weight");
    assert_int_equal(fclose(f), 0);
}

/* llama2.c's tokenizer.bin from the GGUF vocabulary (what llama2.c's tokenizer.py export writes). */
static void write_tokenizer_bin(const char *path, const ql_gguf *g) {
    uint64_t n;
    const ql_gguf_value *toks = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n);
    const ql_gguf_value *scores = ql_gguf_get_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, &n);
    assert_true(toks && scores);
    FILE *f = fopen(path, "wb");
    int32_t maxlen = 0;
    for (uint64_t i = 0; i < n; i++) maxlen = (int32_t)QL_MAX((uint64_t)maxlen, toks[i].v.str.len);
    fwrite(&maxlen, 4, 1, f);
    for (uint64_t i = 0; i < n; i++) {
        char text[256];
        const char *s = toks[i].v.str.s;
        size_t k = 0;
        if (i == 1)
            s = "\n<s>\n";
        else if (i == 2)
            s = "\n</s>\n";
        for (; *s && k < sizeof text - 1; s++) { /* ▁ (e2 96 81) -> space */
            if ((uint8_t)s[0] == 0xe2 && (uint8_t)s[1] == 0x96 && (uint8_t)s[2] == 0x81)
                text[k++] = ' ', s += 2;
            else
                text[k++] = *s;
        }
        float sc = (float)scores[i].v.f;
        int32_t len = (int32_t)k;
        fwrite(&sc, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(text, 1, k, f);
    }
    fclose(f);
}

static void test_llama2c(void **state) {
    (void)state;
    ql_gguf *g = open_stories();
    if (!g) skip();
    char *dir = ql_test_mkdtemp("hf");
    char p[1024], t[1024];
    static const struct {
        int version;
        bool shared;
    } variants[] = {{0, true}, {0, false}, {1, true}, {1, false}};
    for (size_t v = 0; v < QL_ARRAY_LEN(variants); v++) {
        snprintf(p, sizeof p, "%s/stories260K_v%d_%d.bin", dir, variants[v].version, variants[v].shared);
        write_llama2c(p, g, variants[v].version, variants[v].shared);
        ql_gguf *h;
        if (ql_llama2c_load(p, &h) != QL_OK) fail_msg("variant %zu: %s", v, ql_last_error());
        int64_t n = assert_same_tensors(g, h, variants[v].shared);
        assert_int_equal(n, variants[v].shared ? g->n_tensors - 1 : g->n_tensors);
        assert_int_equal(h->n_tensors, n);
        assert_int_equal(ql_gguf_find_tensor(h, "output.weight") >= 0, !variants[v].shared);
        static const char *keys[] = {"llama.block_count",          "llama.embedding_length",
                                     "llama.attention.head_count", "llama.attention.head_count_kv",
                                     "llama.feed_forward_length",  "llama.rope.dimension_count"};
        for (size_t i = 0; i < QL_ARRAY_LEN(keys); i++) assert_same_int(g, h, keys[i], 0);
        int64_t ctx;
        assert_true(ql_gguf_get_int(h, "llama.context_length", &ctx) && ctx == 512);
        assert_null(ql_gguf_get(h, "tokenizer.ggml.tokens")); /* no tokenizer.bin yet */
        ql_gguf_free(h);
    }
    /* the tokenizer beside the checkpoint is picked up, and the model view builds */
    join(t, sizeof t, dir, "tokenizer.bin");
    write_tokenizer_bin(t, g);
    snprintf(p, sizeof p, "%s/stories260K_v0_1.bin", dir);
    ql_gguf *h;
    assert_int_equal(ql_llama2c_load(p, &h), QL_OK);
    uint64_t nt;
    assert_non_null(ql_gguf_get_arr(h, "tokenizer.ggml.tokens", QL_GGUF_STRING, &nt));
    assert_int_equal(nt, 512);
    ql_model *m;
    assert_int_equal(ql_model_from_gguf(h, p, &m), QL_OK);
    assert_true(m->cfg.tied_output);
    assert_int_equal(m->cfg.n_vocab, 512);
    ql_model_free(m);

    /* truncated and padded files name the file */
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)size + 4);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    snprintf(t, sizeof t, "%s/broken.bin", dir);
    write_file(t, buf, (size_t)size - 4);
    assert_error_names(ql_llama2c_load(t, &h), QL_ERR_FORMAT, "broken.bin");
    memset(buf + size, 0, 4);
    write_file(t, buf, (size_t)size + 4);
    assert_error_names(ql_llama2c_load(t, &h), QL_ERR_FORMAT, "broken.bin");
    write_file(t, buf, 20);
    assert_error_names(ql_llama2c_load(t, &h), QL_ERR_FORMAT, "broken.bin");
    int32_t bad[7] = {64, 172, 5, 8, 3, 512, 512}; /* 8 heads over 3 kv heads */
    memcpy(buf, bad, sizeof bad);
    write_file(t, buf, (size_t)size);
    assert_error_names(ql_llama2c_load(t, &h), QL_ERR_FORMAT, "broken.bin");
    int32_t huge[7] = {1 << 20, 1 << 22,    4096,   4096,
                       4096,    -(1 << 24), 1 << 24}; /* sizes overflow nothing, mismatch */
    memcpy(buf, huge, sizeof huge);
    write_file(t, buf, (size_t)size);
    assert_error_names(ql_llama2c_load(t, &h), QL_ERR_FORMAT, "broken.bin");
    free(buf);
    ql_gguf_free(g);
    ql_test_rm_flat_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_permute),
        cmocka_unit_test(test_hf_roundtrip),
        cmocka_unit_test(test_hf_save_rejects_quantized),
        cmocka_unit_test(test_hf_qwen2_no_permute),
        cmocka_unit_test(test_hf_sharded),
        cmocka_unit_test(test_safetensors_corrupt),
        cmocka_unit_test(test_llama2c),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
