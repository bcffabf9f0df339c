/* test_hf_arch.c — Hugging Face folders of the architectures beyond llama: each of the six models in
 * ../shared/testdata/arch-variants (llama with llama3 rope_freqs, qwen2, qwen3, gemma2, gemma3, phi3)
 * saved as an HF folder and loaded back with every tensor bit for bit and every metadata key equal,
 * with the config.json fields transformers reads checked; hand-written configs per architecture (as
 * transformers writes them, Gemma 3 nested under text_config with a vision tower) loaded into
 * llama.cpp's GGUF view (keys, Gemma's 1 + w norms, llama3 factors, Phi-3 LongRoPE tensors); and the
 * refusals: an unsupported architecture, a missing tensor, an unimplemented rope_scaling type. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "kernels/ggml_types.h"
#include "core/infer.h"
#include "core/model.h"
#include "pipeline/export.h"
#include "tests/test_util.h"

/* ---------------------------------------------------------------- fixtures */

static void write_text(const char *dir, const char *name, const char *s) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(s, f);
    assert_int_equal(fclose(f), 0);
}

/* A small safetensors writer for hand-built folders: F32 tensors with HF (row-major, outer first)
 * shapes, values from a fixed LCG so a test can recompute them. */
typedef struct {
    const char *name;
    int n_dims;
    int64_t shape[2];
} st_tensor;

static float lcg_value(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f;
}

/* dtypes: NULL (all F32) or one of "F32", "F16", "BF16" per tensor, the LCG value rounded to it. */
static void write_safetensors_typed(const char *dir, const st_tensor *t, int n, uint32_t seed,
                                    const char *const *dtypes) {
    json_t *hdr = json_object();
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        int64_t ne = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1);
        const char *dt = dtypes ? dtypes[i] : "F32";
        int esz = strcmp(dt, "F32") == 0 ? 4 : 2;
        json_t *shape = t[i].n_dims == 2 ? json_pack("[I,I]", (json_int_t)t[i].shape[0], (json_int_t)t[i].shape[1])
                                         : json_pack("[I]", (json_int_t)t[i].shape[0]);
        json_object_set_new(hdr, t[i].name, json_pack("{s:s,s:o,s:[I,I]}", "dtype", dt, "shape", shape,
                                                      "data_offsets", (json_int_t)off, (json_int_t)(off + esz * ne)));
        off += (uint64_t)(esz * ne);
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hl = strlen(text), padded = (hl + 7) & ~(size_t)7;
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    uint64_t len = padded;
    fwrite(&len, 8, 1, f);
    fwrite(text, 1, hl, f);
    fwrite("        ", 1, padded - hl, f);
    free(text);
    for (int i = 0; i < n; i++) {
        int64_t ne = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1);
        const char *dt = dtypes ? dtypes[i] : "F32";
        for (int64_t k = 0; k < ne; k++) {
            float v = lcg_value(&seed);
            uint16_t h = !strcmp(dt, "BF16") ? ql_fp32_to_bf16(v) : ql_fp32_to_fp16(v);
            if (!strcmp(dt, "F32")) fwrite(&v, 4, 1, f);
            else fwrite(&h, 2, 1, f);
        }
    }
    assert_int_equal(fclose(f), 0);
}

static void write_safetensors(const char *dir, const st_tensor *t, int n, uint32_t seed) {
    write_safetensors_typed(dir, t, n, seed, NULL);
}

/* The value the LCG gave tensor `which` element `k` (tensors written in order). */
static float st_value(const st_tensor *t, int which, int64_t k, uint32_t seed) {
    for (int i = 0; i <= which; i++) {
        int64_t ne = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1);
        for (int64_t j = 0; j < ne; j++) {
            float v = lcg_value(&seed);
            if (i == which && j == k) return v;
        }
    }
    return NAN;
}

static bool same_value(const ql_gguf_value *a, const ql_gguf_value *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case QL_GGUF_STRING: return a->v.str.len == b->v.str.len && !memcmp(a->v.str.s, b->v.str.s, a->v.str.len);
    case QL_GGUF_F32:
    case QL_GGUF_F64: return a->v.f == b->v.f;
    case QL_GGUF_ARRAY:
        if (a->v.arr.elem_type != b->v.arr.elem_type || a->v.arr.n != b->v.arr.n) return false;
        for (uint64_t i = 0; i < a->v.arr.n; i++)
            if (!same_value(&a->v.arr.items[i], &b->v.arr.items[i])) return false;
        return true;
    default: return a->v.u == b->v.u;
    }
}

static const ql_gguf_tensor *tensor(const ql_gguf *g, const char *name) {
    int64_t i = ql_gguf_find_tensor(g, name);
    if (i < 0) fail_msg("tensor %s missing", name);
    return &g->tensors[i];
}

static double key_f64(const ql_gguf *g, const char *key) {
    double d;
    if (!ql_gguf_get_f64(g, key, &d)) fail_msg("key %s missing", key);
    return d;
}

static int64_t key_int(const ql_gguf *g, const char *key) {
    int64_t v;
    if (!ql_gguf_get_int(g, key, &v)) fail_msg("key %s missing", key);
    return v;
}

static json_t *load_config(const char *dir) {
    char p[1024];
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *c = json_load_file(p, 0, NULL);
    assert_non_null(c);
    return c;
}

static bool file_contains(const char *dir, const char *name, const char *needle) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    uint64_t hl = 0;
    assert_int_equal(fread(&hl, 8, 1, f), 1);
    char *h = calloc(1, hl + 1);
    assert_int_equal(fread(h, 1, hl, f), hl);
    fclose(f);
    bool r = strstr(h, needle) != NULL;
    free(h);
    return r;
}

/* ---------------------------------------------------------------- GGUF -> HF -> GGUF */

static void roundtrip_one(const char *name) {
    char rel[128], path[512];
    snprintf(rel, sizeof rel, "testdata/arch-variants/%s.gguf", name);
    if (!shared_path(path, sizeof path, rel)) skip();
    ql_gguf *g, *h;
    assert_int_equal(ql_gguf_open(path, &g), QL_OK);
    char *dir = ql_test_mkdtemp("hf_arch");
    assert_int_equal(ql_hf_save(g, dir), QL_OK);
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s: %s", name, ql_last_error());

    /* every tensor bit for bit, nothing more */
    assert_int_equal(h->n_tensors, g->n_tensors);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *a = &g->tensors[i], *b = tensor(h, a->name);
        assert_int_equal(a->type, b->type);
        assert_int_equal(a->n_dims, b->n_dims);
        for (int d = 0; d < a->n_dims; d++) assert_int_equal(a->ne[d], b->ne[d]);
        assert_int_equal(a->nbytes, b->nbytes);
        if (memcmp(a->data, b->data, a->nbytes)) fail_msg("%s: tensor %s differs", name, a->name);
    }
    /* every key with its value; the only new one is ARCH.vocab_size (config.json's vocab_size) */
    const char *arch = ql_gguf_get_str(g, "general.architecture");
    for (int64_t i = 0; i < g->n_kv; i++) {
        int64_t j = ql_gguf_find_kv(h, g->kv[i].key);
        if (j < 0) fail_msg("%s: key %s lost", name, g->kv[i].key);
        if (!same_value(&g->kv[i].val, &h->kv[j].val)) fail_msg("%s: key %s changed", name, g->kv[i].key);
    }
    char vs[128];
    snprintf(vs, sizeof vs, "%s.vocab_size", arch);
    for (int64_t j = 0; j < h->n_kv; j++)
        if (ql_gguf_find_kv(g, h->kv[j].key) < 0 && strcmp(h->kv[j].key, vs) != 0)
            fail_msg("%s: key %s appeared", name, h->kv[j].key);

    /* config.json carries what transformers reads (not only qlab's metadata copy) */
    json_t *c = load_config(dir);
    const char *mt = json_string_value(json_object_get(c, "model_type"));
    assert_non_null(mt);
    if (!strcmp(name, "llama3")) {
        json_t *rs = json_object_get(c, "rope_scaling");
        assert_string_equal(json_string_value(json_object_get(rs, "rope_type")), "llama3");
        assert_true(json_number_value(json_object_get(rs, "factor")) == 8.0);
        assert_true(json_number_value(json_object_get(rs, "low_freq_factor")) == 1.0);
        assert_true(json_number_value(json_object_get(rs, "high_freq_factor")) == 4.0);
        assert_false(file_contains(dir, "model.safetensors", "rope_freqs")); /* regenerated from config */
        assert_true(file_contains(dir, "model.safetensors", "model.layers.0.self_attn.q_proj.weight"));
    } else if (!strcmp(name, "gemma2")) {
        assert_string_equal(mt, "gemma2");
        assert_true(json_number_value(json_object_get(c, "attn_logit_softcapping")) == 5.0);
        assert_true(json_number_value(json_object_get(c, "final_logit_softcapping")) == 3.0);
        assert_int_equal(json_integer_value(json_object_get(c, "sliding_window")), 8);
        assert_int_equal(json_integer_value(json_object_get(c, "head_dim")), 32);
        assert_string_equal(json_string_value(json_array_get(json_object_get(c, "layer_types"), 0)),
                            "sliding_attention");
        assert_string_equal(json_string_value(json_array_get(json_object_get(c, "layer_types"), 1)), "full_attention");
        assert_true(file_contains(dir, "model.safetensors", "model.layers.1.pre_feedforward_layernorm.weight"));
    } else if (!strcmp(name, "gemma3")) {
        assert_string_equal(mt, "gemma3_text");
        assert_int_equal(json_integer_value(json_object_get(c, "sliding_window_pattern")), 6);
        assert_true(json_number_value(json_object_get(c, "rope_local_base_freq")) == 10000.0);
        json_t *rs = json_object_get(c, "rope_scaling");
        assert_string_equal(json_string_value(json_object_get(rs, "rope_type")), "linear");
        assert_true(json_number_value(json_object_get(rs, "factor")) == 8.0);
        assert_true(json_is_null(json_object_get(c, "attn_logit_softcapping")));
    } else if (!strcmp(name, "phi3")) {
        assert_string_equal(mt, "phi3");
        assert_true(file_contains(dir, "model.safetensors", "model.layers.0.self_attn.qkv_proj.weight"));
        assert_true(file_contains(dir, "model.safetensors", "model.layers.0.mlp.gate_up_proj.weight"));
        assert_false(json_is_true(json_object_get(c, "tie_word_embeddings")));
    } else if (!strcmp(name, "qwen3")) {
        assert_int_equal(json_integer_value(json_object_get(c, "head_dim")), 32);
        assert_true(file_contains(dir, "model.safetensors", "model.layers.0.self_attn.q_norm.weight"));
    }
    json_decref(c);

    /* a second trip gives the same folder contents (the transforms invert exactly) */
    char *dir2 = ql_test_mkdtemp("hf_arch");
    assert_int_equal(ql_hf_save(h, dir2), QL_OK);
    ql_gguf *h2;
    assert_int_equal(ql_hf_load(dir2, &h2), QL_OK);
    assert_int_equal(h2->n_tensors, g->n_tensors);
    for (int64_t i = 0; i < g->n_tensors; i++)
        assert_memory_equal(g->tensors[i].data, tensor(h2, g->tensors[i].name)->data, g->tensors[i].nbytes);
    ql_gguf_free(h2);
    ql_test_rm_flat_dir(dir2);
    ql_gguf_free(h);
    ql_gguf_free(g);
    ql_test_rm_flat_dir(dir);
}

static void test_roundtrip_llama3(void **state) { (void)state, roundtrip_one("llama3"); }
static void test_roundtrip_qwen2(void **state) { (void)state, roundtrip_one("qwen2"); }
static void test_roundtrip_qwen3(void **state) { (void)state, roundtrip_one("qwen3"); }
static void test_roundtrip_gemma2(void **state) { (void)state, roundtrip_one("gemma2"); }
static void test_roundtrip_gemma3(void **state) { (void)state, roundtrip_one("gemma3"); }
static void test_roundtrip_phi3(void **state) { (void)state, roundtrip_one("phi3"); }

/* Gemma's norms are stored in the folder as HF has them (w, used as 1 + w). */
static void test_gemma_norm_shift(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "testdata/arch-variants/gemma2.gguf")) skip();
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(path, &g), QL_OK);
    char *dir = ql_test_mkdtemp("hf_arch");
    assert_int_equal(ql_hf_save(g, dir), QL_OK);
    char st[1024];
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    FILE *f = fopen(st, "rb");
    assert_non_null(f);
    uint64_t hl;
    assert_int_equal(fread(&hl, 8, 1, f), 1);
    char *h = calloc(1, hl + 1);
    assert_int_equal(fread(h, 1, hl, f), hl);
    json_t *hdr = json_loads(h, 0, NULL);
    free(h);
    assert_non_null(hdr);
    static const char *pairs[][2] = {{"model.layers.1.post_feedforward_layernorm.weight", "blk.1.post_ffw_norm.weight"},
                                     {"model.layers.0.post_attention_layernorm.weight", "blk.0.post_attention_norm.weight"},
                                     {"model.norm.weight", "output_norm.weight"}};
    for (size_t p = 0; p < 3; p++) {
        json_t *e = json_object_get(hdr, pairs[p][0]);
        assert_non_null(e);
        uint64_t off = (uint64_t)json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 0));
        const ql_gguf_tensor *t = tensor(g, pairs[p][1]);
        float *w = malloc(t->nbytes);
        assert_int_equal(fseek(f, (long)(8 + hl + off), SEEK_SET), 0);
        assert_int_equal(fread(w, 1, t->nbytes, f), t->nbytes);
        for (int64_t i = 0; i < t->ne[0]; i++) assert_true(w[i] == ((const float *)t->data)[i] - 1.0f);
        free(w);
    }
    fclose(f);
    json_decref(hdr);
    ql_gguf_free(g);
    ql_test_rm_flat_dir(dir);
}

/* The folder exporters (gptq/awq/...) shift Gemma's norms the same way: a float norm leaves as w. */
static void test_exporter_norm_shift(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "testdata/arch-variants/gemma3.gguf")) skip();
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(path, &g), QL_OK);
    char *dir = ql_test_mkdtemp("hf_arch");
    char out[600];
    snprintf(out, sizeof out, "%s/gptq", dir);
    static const char *names[] = {"blk.2.attn_k_norm.weight", "blk.0.attn_q.weight"};
    ql_exporter *x;
    assert_int_equal(ql_export_begin(ql_exporter_by_name("gptq"), out, g, &x), QL_OK);
    for (int k = 0; k < 2; k++) {
        const ql_gguf_tensor *t = tensor(g, names[k]);
        ql_export_tensor et = {.name = t->name, .type = t->type, .n_dims = t->n_dims, .ne = t->ne, .nbytes = t->nbytes,
                               .data = t->data};
        assert_int_equal(ql_export_add_tensor(x, &et), QL_OK);
    }
    if (ql_export_commit(x, NULL) != QL_OK) fail_msg("%s", ql_last_error());
    char st[700];
    snprintf(st, sizeof st, "%s/model.safetensors", out);
    FILE *f = fopen(st, "rb");
    assert_non_null(f);
    uint64_t hl;
    assert_int_equal(fread(&hl, 8, 1, f), 1);
    char *h = calloc(1, hl + 1);
    assert_int_equal(fread(h, 1, hl, f), hl);
    json_t *hdr = json_loads(h, 0, NULL);
    free(h);
    static const char *hf[] = {"model.layers.2.self_attn.k_norm.weight", "model.layers.0.self_attn.q_proj.weight"};
    for (int k = 0; k < 2; k++) {
        json_t *e = json_object_get(hdr, hf[k]);
        assert_non_null(e);
        uint64_t off = (uint64_t)json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 0));
        const ql_gguf_tensor *t = tensor(g, names[k]);
        float *w = malloc(t->nbytes);
        assert_int_equal(fseek(f, (long)(8 + hl + off), SEEK_SET), 0);
        assert_int_equal(fread(w, 1, t->nbytes, f), t->nbytes);
        for (int64_t i = 0; i < t->ne[0]; i++) /* the norm shifted, the projection untouched */
            assert_true(w[i] == ((const float *)t->data)[i] - (k == 0 ? 1.0f : 0.0f));
        free(w);
    }
    fclose(f);
    json_decref(hdr);
    ql_gguf_free(g);
    unlink(st);
    char p2[700];
    static const char *files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                  "quantize_config.json"};
    for (size_t i = 0; i < QL_ARRAY_LEN(files); i++) {
        snprintf(p2, sizeof p2, "%s/%s", out, files[i]);
        unlink(p2);
    }
    rmdir(out);
    ql_test_rm_flat_dir(dir);
}

/* ---------------------------------------------------------------- hand-written configs */

/* llama3: config.json of Llama-3.2 style; rope_freqs as llama.cpp's converter computes them, which
 * for these parameters are llama3.gguf's own (made by that computation) */
static void test_config_llama3(void **state) {
    (void)state;
    char *dir = ql_test_mkdtemp("hf_arch");
    write_text(dir, "config.json",
               "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
               "\"intermediate_size\":96,\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
               "\"max_position_embeddings\":131072,\"rms_norm_eps\":1e-05,\"rope_theta\":500000.0,"
               "\"rope_scaling\":{\"factor\":8.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
               "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},\"tie_word_embeddings\":true,"
               "\"vocab_size\":32,\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}");
    const st_tensor ts[] = {
        {"model.embed_tokens.weight", 2, {32, 64}},
        {"model.norm.weight", 1, {64, 0}},
        {"model.layers.0.input_layernorm.weight", 1, {64, 0}},
        {"model.layers.0.self_attn.q_proj.weight", 2, {64, 64}},
        {"model.layers.0.self_attn.k_proj.weight", 2, {32, 64}},
        {"model.layers.0.self_attn.v_proj.weight", 2, {32, 64}},
        {"model.layers.0.self_attn.o_proj.weight", 2, {64, 64}},
        {"model.layers.0.post_attention_layernorm.weight", 1, {64, 0}},
        {"model.layers.0.mlp.gate_proj.weight", 2, {96, 64}},
        {"model.layers.0.mlp.up_proj.weight", 2, {96, 64}},
        {"model.layers.0.mlp.down_proj.weight", 2, {64, 96}},
    };
    write_safetensors(dir, ts, (int)QL_ARRAY_LEN(ts), 11);
    ql_gguf *h;
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "llama");
    assert_true(key_f64(h, "llama.rope.freq_base") == 500000.0);
    assert_int_equal(ql_gguf_find_kv(h, "llama.rope.scaling.type"), -1); /* llama3 is a tensor, not a type */
    const ql_gguf_tensor *rf = tensor(h, "rope_freqs.weight");
    assert_int_equal(rf->type, QL_TYPE_F32);
    assert_int_equal(rf->ne[0], 8);
    const float *f = rf->data;
    /* high frequency 1, low frequency = factor, one value on the ramp between */
    for (int i = 0; i < 4; i++) assert_true(f[i] == 1.0f);
    assert_true(f[4] > 2.69f && f[4] < 2.70f);
    for (int i = 5; i < 8; i++) assert_true(f[i] == 8.0f);
    char ref[512];
    if (shared_path(ref, sizeof ref, "testdata/arch-variants/llama3.gguf")) {
        ql_gguf *g;
        assert_int_equal(ql_gguf_open(ref, &g), QL_OK);
        assert_memory_equal(tensor(g, "rope_freqs.weight")->data, f, 8 * sizeof(float));
        ql_gguf_free(g);
    }
    ql_gguf_free(h);
    ql_test_rm_flat_dir(dir);
}

/* gemma2 as transformers writes it: norms come out as 1 + w, post/pre norms under llama.cpp's names,
 * soft-caps and window as keys, lm_head (AutoAWQ adds one) dropped */
static void test_config_gemma2(void **state) {
    (void)state;
    char *dir = ql_test_mkdtemp("hf_arch");
    write_text(dir, "config.json",
               "{\"architectures\":[\"Gemma2ForCausalLM\"],\"model_type\":\"gemma2\",\"attention_bias\":false,"
               "\"attn_logit_softcapping\":50.0,\"cache_implementation\":\"hybrid\",\"final_logit_softcapping\":30.0,"
               "\"head_dim\":32,\"hidden_act\":\"gelu_pytorch_tanh\",\"hidden_activation\":\"gelu_pytorch_tanh\","
               "\"hidden_size\":64,\"intermediate_size\":96,\"max_position_embeddings\":8192,"
               "\"num_attention_heads\":4,\"num_hidden_layers\":2,\"num_key_value_heads\":2,"
               "\"query_pre_attn_scalar\":32,\"rms_norm_eps\":1e-06,\"rope_theta\":10000.0,\"sliding_window\":4096,"
               "\"torch_dtype\":\"float32\",\"vocab_size\":32}");
    st_tensor ts[40];
    int n = 0;
    char names[40][96];
#define T2(nm, a, b) (snprintf(names[n], 96, "%s", nm), ts[n] = (st_tensor){names[n], 2, {a, b}}, n++)
#define T1(nm, a) (snprintf(names[n], 96, "%s", nm), ts[n] = (st_tensor){names[n], 1, {a, 0}}, n++)
    T2("model.embed_tokens.weight", 32, 64);
    T1("model.norm.weight", 64);
    T2("lm_head.weight", 32, 64);
    for (int l = 0; l < 2; l++) {
        char b[96];
#define L(s) (snprintf(b, sizeof b, "model.layers.%d.%s", l, s), b)
        T1(L("input_layernorm.weight"), 64);
        T2(L("self_attn.q_proj.weight"), 128, 64);
        T2(L("self_attn.k_proj.weight"), 64, 64);
        T2(L("self_attn.v_proj.weight"), 64, 64);
        T2(L("self_attn.o_proj.weight"), 64, 128);
        T1(L("post_attention_layernorm.weight"), 64);
        T1(L("pre_feedforward_layernorm.weight"), 64);
        T2(L("mlp.gate_proj.weight"), 96, 64);
        T2(L("mlp.up_proj.weight"), 96, 64);
        T2(L("mlp.down_proj.weight"), 64, 96);
        T1(L("post_feedforward_layernorm.weight"), 64);
    }
    write_safetensors(dir, ts, n, 7);
    ql_gguf *h;
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "gemma2");
    assert_int_equal(key_int(h, "gemma2.attention.key_length"), 32);
    assert_int_equal(key_int(h, "gemma2.attention.sliding_window"), 4096);
    assert_true(key_f64(h, "gemma2.attn_logit_softcapping") == 50.0);
    assert_true(key_f64(h, "gemma2.final_logit_softcapping") == 30.0);
    assert_int_equal(ql_gguf_find_kv(h, "gemma2.attention.sliding_window_pattern"), -1); /* llama.cpp's 2 */
    assert_int_equal(ql_gguf_find_tensor(h, "output.weight"), -1);
    /* 1 + w for every norm, in float32 */
    /* tensors 3..13 are layer 0, 14..24 layer 1, in the order written above */
    const int which[] = {1, 19, 20};
    const char *gg[] = {"output_norm.weight", "blk.1.post_attention_norm.weight", "blk.1.ffn_norm.weight"};
    assert_string_equal(ts[19].name, "model.layers.1.post_attention_layernorm.weight");
    assert_string_equal(ts[20].name, "model.layers.1.pre_feedforward_layernorm.weight");
    for (int k = 0; k < 3; k++) {
        const ql_gguf_tensor *t = tensor(h, gg[k]);
        for (int64_t i = 0; i < 64; i += 9)
            assert_true(((const float *)t->data)[i] == st_value(ts, which[k], i, 7) + 1.0f);
    }
    /* a projection is untouched (Gemma's HF rope order is llama.cpp's NEOX order) */
    assert_true(((const float *)tensor(h, "blk.0.attn_q.weight")->data)[5] == st_value(ts, 4, 5, 7));
    ql_gguf_free(h);

    /* half-precision checkpoints: the converter widens BF16 to F32 before adding 1, but adds in F16 */
    const char *dts[40];
    for (int i = 0; i < n; i++) dts[i] = ts[i].n_dims == 2 ? "BF16" : "F32";
    dts[1] = "BF16", dts[20] = "F16";
    write_safetensors_typed(dir, ts, n, 7, dts);
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    for (int64_t i = 0; i < 64; i++) {
        float v1 = st_value(ts, 1, i, 7), v20 = st_value(ts, 20, i, 7);
        assert_true(((const float *)tensor(h, "output_norm.weight")->data)[i] ==
                    ql_bf16_to_fp32(ql_fp32_to_bf16(v1)) + 1.0f);
        assert_true(((const float *)tensor(h, "blk.1.ffn_norm.weight")->data)[i] ==
                    ql_fp16_to_fp32(ql_fp32_to_fp16(ql_fp16_to_fp32(ql_fp32_to_fp16(v20)) + 1.0f)));
    }
    assert_int_equal(tensor(h, "output_norm.weight")->type, QL_TYPE_F32);
    assert_int_equal(tensor(h, "blk.0.attn_q.weight")->type, QL_TYPE_BF16);
    ql_gguf_free(h);

    /* a missing tensor is named in HF spelling */
    write_safetensors(dir, ts, n - 1, 7); /* drops layer 1's post_feedforward_layernorm */
    assert_int_not_equal(ql_hf_load(dir, &h), QL_OK);
    assert_non_null(strstr(ql_last_error(), "model.layers.1.post_feedforward_layernorm.weight"));
    assert_non_null(strstr(ql_last_error(), dir));
    ql_test_rm_flat_dir(dir);
}

/* Gemma 3 4B+: Gemma3ForConditionalGeneration, text fields under text_config (defaults from the
 * config class where absent), weights under language_model., a vision tower to leave out */
static void test_config_gemma3_nested(void **state) {
    (void)state;
    char *dir = ql_test_mkdtemp("hf_arch");
    write_text(dir, "config.json",
               "{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"model_type\":\"gemma3\","
               "\"text_config\":{\"hidden_size\":64,\"intermediate_size\":96,\"model_type\":\"gemma3_text\","
               "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":32,"
               "\"rope_scaling\":{\"factor\":8.0,\"rope_type\":\"linear\"},\"sliding_window\":1024,"
               "\"vocab_size\":300},\"vision_config\":{\"hidden_size\":16},\"torch_dtype\":\"float32\"}");
    /* Gemma's tokenizer layout (tests/data/tok/gemma-spm.json, 271 tokens) */
    FILE *tf = fopen("tests/data/tok/gemma-spm.json", "rb");
    assert_non_null(tf);
    char *tok = calloc(1, 1 << 16);
    size_t tn = fread(tok, 1, (1 << 16) - 1, tf);
    fclose(tf);
    assert_true(tn > 0 && tn < (1 << 16) - 1);
    write_text(dir, "tokenizer.json", tok);
    free(tok);
    /* an instruct checkpoint's end-of-turn eos, by text, as gguf-py's SpecialVocab reads it */
    write_text(dir, "tokenizer_config.json", "{\"add_bos_token\":true,\"bos_token\":\"<bos>\","
                                              "\"eos_token\":{\"content\":\"<end_of_turn>\",\"special\":true}}");
    const st_tensor ts[] = {
        {"language_model.model.embed_tokens.weight", 2, {300, 64}}, /* padded past the 271 tokens */
        {"language_model.model.norm.weight", 1, {64, 0}},
        {"vision_tower.vision_model.embeddings.patch_embedding.weight", 2, {16, 16}},
        {"multi_modal_projector.mm_input_projection_weight", 2, {16, 64}},
        {"language_model.model.layers.0.input_layernorm.weight", 1, {64, 0}},
        {"language_model.model.layers.0.self_attn.q_proj.weight", 2, {128, 64}},
        {"language_model.model.layers.0.self_attn.k_proj.weight", 2, {64, 64}},
        {"language_model.model.layers.0.self_attn.v_proj.weight", 2, {64, 64}},
        {"language_model.model.layers.0.self_attn.q_norm.weight", 1, {32, 0}},
        {"language_model.model.layers.0.self_attn.k_norm.weight", 1, {32, 0}},
        {"language_model.model.layers.0.self_attn.o_proj.weight", 2, {64, 128}},
        {"language_model.model.layers.0.post_attention_layernorm.weight", 1, {64, 0}},
        {"language_model.model.layers.0.pre_feedforward_layernorm.weight", 1, {64, 0}},
        {"language_model.model.layers.0.mlp.gate_proj.weight", 2, {96, 64}},
        {"language_model.model.layers.0.mlp.up_proj.weight", 2, {96, 64}},
        {"language_model.model.layers.0.mlp.down_proj.weight", 2, {64, 96}},
        {"language_model.model.layers.0.post_feedforward_layernorm.weight", 1, {64, 0}},
    };
    write_safetensors(dir, ts, (int)QL_ARRAY_LEN(ts), 5);
    ql_gguf *h;
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "gemma3");
    assert_int_equal(h->n_tensors, (int64_t)QL_ARRAY_LEN(ts) - 2); /* no vision tensors */
    assert_int_equal(key_int(h, "gemma3.context_length"), 131072); /* Gemma3TextConfig defaults */
    assert_true(key_f64(h, "gemma3.rope.freq_base") == 1e6);
    assert_true(key_f64(h, "gemma3.rope.freq_base_swa") == 10000.0);
    assert_string_equal(ql_gguf_get_str(h, "gemma3.rope.scaling.type"), "linear");
    assert_true(key_f64(h, "gemma3.rope.scaling.factor") == 8.0);
    assert_int_equal(key_int(h, "gemma3.attention.sliding_window"), 1024);
    assert_int_equal(ql_gguf_find_kv(h, "gemma3.final_logit_softcapping"), -1);
    assert_int_equal(ql_gguf_find_kv(h, "gemma3.attn_logit_softcapping"), -1);
    /* llama.cpp's converter drops the embedding rows past the tokenizer's vocabulary */
    assert_int_equal(tensor(h, "token_embd.weight")->ne[1], 271);
    assert_int_equal(tensor(h, "token_embd.weight")->nbytes, 271 * 64 * 4);
    assert_int_equal(key_int(h, "gemma3.vocab_size"), 271);
    bool sp = true;
    assert_true(ql_gguf_get_bool(h, "tokenizer.ggml.add_space_prefix", &sp) && !sp);
    assert_int_equal(key_int(h, "tokenizer.ggml.bos_token_id"), 2);
    assert_int_equal(key_int(h, "tokenizer.ggml.eos_token_id"), 269); /* not tokenizer.json's <eos> */
    const ql_gguf_tensor *qn = tensor(h, "blk.0.attn_q_norm.weight");
    assert_true(((const float *)qn->data)[3] == st_value(ts, 8, 3, 5) + 1.0f);
    ql_gguf_free(h);

    /* malformed per-layer lists are refused naming the key and the entry */
    static const struct { const char *list, *want; } bad[] = {
        {"\"layer_types\":[\"full_attention\",\"global\",\"sliding_attention\"]", "'layer_types'[1] must be"},
        {"\"layer_types\":[\"full_attention\",\"sliding_attention\"]", "'layer_types' must list 3 layers"},
        {"\"sliding_window_pattern\":[true,1,false]", "'sliding_window_pattern'[1] must be a bool"},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(bad); i++) {
        char cfg[1024];
        snprintf(cfg, sizeof cfg,
                 "{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\",\"hidden_size\":64,"
                 "\"intermediate_size\":96,\"num_hidden_layers\":3,\"num_attention_heads\":4,\"head_dim\":32,%s}",
                 bad[i].list);
        write_text(dir, "config.json", cfg);
        assert_int_equal(ql_hf_load(dir, &h), QL_ERR_FORMAT);
        printf("  refused: %s\n", ql_last_error());
        assert_non_null(strstr(ql_last_error(), bad[i].want));
        assert_null(strchr(ql_last_error(), '\n'));
    }
    ql_test_rm_flat_dir(dir);
}

/* A sliding-window layout no period describes (layers 1 and 3 of gemma3's six global): GGUF's per-layer bool
 * array becomes config.json's layer_types and comes back as the same array, with the same logits */
static void test_gemma3_per_layer_pattern(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "testdata/arch-variants/gemma3.gguf")) skip();
    ql_gguf *g, *h;
    assert_int_equal(ql_gguf_open(path, &g), QL_OK);
    const uint8_t flags[6] = {1, 0, 1, 0, 1, 1};
    ql_gguf_set_arr(g, "gemma3.attention.sliding_window_pattern", QL_GGUF_BOOL, flags, 6);
    char *dir = ql_test_mkdtemp("hf_arch");
    assert_int_equal(ql_hf_save(g, dir), QL_OK);
    json_t *c = load_config(dir);
    const json_t *lt = json_object_get(c, "layer_types");
    for (int i = 0; i < 6; i++)
        assert_string_equal(json_string_value(json_array_get(lt, (size_t)i)),
                            flags[i] ? "sliding_attention" : "full_attention");
    assert_null(json_object_get(c, "sliding_window_pattern")); /* a period would contradict the list */
    json_decref(c);
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    uint64_t n = 0;
    const ql_gguf_value *v = ql_gguf_get_arr(h, "gemma3.attention.sliding_window_pattern", QL_GGUF_BOOL, &n);
    assert_non_null(v);
    assert_int_equal(n, 6);
    for (int i = 0; i < 6; i++) assert_int_equal(v[i].v.u, flags[i]);
    ql_model *ma, *mb;
    assert_int_equal(ql_model_from_gguf(g, path, &ma), QL_OK);
    assert_int_equal(ql_model_from_gguf(h, dir, &mb), QL_OK);
    for (int l = 0; l < 6; l++) assert_int_equal(ql_layer_is_swa(&mb->cfg, l), flags[l]);
    enum { T = 12 };
    int32_t tok[T];
    for (int t = 0; t < T; t++) tok[t] = (t * 31 + 5) % 512;
    float *la = malloc(sizeof(float) * T * 512), *lb = malloc(sizeof(float) * T * 512);
    ql_model *ms[2] = {ma, mb};
    float *out[2] = {la, lb};
    for (int k = 0; k < 2; k++) {
        ql_infer *inf;
        assert_int_equal(ql_infer_new(ms[k], 1, &inf), QL_OK);
        ql_scratch *s = ql_scratch_new(inf, T);
        assert_int_equal(ql_forward(inf, s, tok, T, 0, out[k]), QL_OK);
        ql_scratch_free(s);
        ql_infer_free(inf);
    }
    assert_memory_equal(la, lb, sizeof(float) * T * 512);
    free(la);
    free(lb);
    ql_model_free(ma);
    ql_model_free(mb);
    ql_test_rm_flat_dir(dir);
}

/* Phi-3 with LongRoPE (Phi-3-mini-128k style): the factors become llama.cpp's rope_factors_long/short
 * tensors and the attention factor a key; the fused projections keep their layout */
static void test_config_phi3_longrope(void **state) {
    (void)state;
    char *dir = ql_test_mkdtemp("hf_arch");
    write_text(dir, "config.json",
               "{\"architectures\":[\"Phi3ForCausalLM\"],\"model_type\":\"phi3\",\"hidden_size\":64,"
               "\"intermediate_size\":96,\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":4,"
               "\"max_position_embeddings\":131072,\"original_max_position_embeddings\":4096,\"rms_norm_eps\":1e-05,"
               "\"rope_theta\":10000.0,\"sliding_window\":262144,\"tie_word_embeddings\":false,\"vocab_size\":32,"
               "\"rope_scaling\":{\"type\":\"longrope\",\"long_factor\":[1.0,1.5,2.0,2.5,3.0,3.5,4.0,4.5],"
               "\"short_factor\":[1.0,1.0,1.0,1.0,1.25,1.25,1.25,1.25]}}");
    const st_tensor ts[] = {
        {"model.embed_tokens.weight", 2, {32, 64}},
        {"model.norm.weight", 1, {64, 0}},
        {"lm_head.weight", 2, {32, 64}},
        {"model.layers.0.input_layernorm.weight", 1, {64, 0}},
        {"model.layers.0.self_attn.qkv_proj.weight", 2, {192, 64}},
        {"model.layers.0.self_attn.o_proj.weight", 2, {64, 64}},
        {"model.layers.0.post_attention_layernorm.weight", 1, {64, 0}},
        {"model.layers.0.mlp.gate_up_proj.weight", 2, {192, 64}},
        {"model.layers.0.mlp.down_proj.weight", 2, {64, 96}},
    };
    write_safetensors(dir, ts, (int)QL_ARRAY_LEN(ts), 3);
    ql_gguf *h;
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "phi3");
    assert_int_equal(tensor(h, "blk.0.attn_qkv.weight")->ne[1], 192);
    assert_int_equal(tensor(h, "blk.0.ffn_up.weight")->ne[1], 192);
    assert_true(((const float *)tensor(h, "blk.0.ffn_up.weight")->data)[100] == st_value(ts, 7, 100, 3));
    const float *lf = tensor(h, "rope_factors_long.weight")->data, *sf = tensor(h, "rope_factors_short.weight")->data;
    assert_true(lf[7] == 4.5f && sf[4] == 1.25f && sf[0] == 1.0f);
    assert_int_equal(key_int(h, "phi3.rope.scaling.original_context_length"), 4096);
    double want = sqrt(1 + log(131072.0 / 4096.0) / log(4096.0));
    assert_true(key_f64(h, "phi3.rope.scaling.attn_factor") == (double)(float)want);
    assert_int_equal(key_int(h, "phi3.attention.sliding_window"), 262144);
    assert_int_equal(ql_gguf_find_kv(h, "phi3.rope.scaling.type"), -1);

    /* and back: config.json gets the factors, the folder no factor tensors */
    char *dir2 = ql_test_mkdtemp("hf_arch");
    assert_int_equal(ql_hf_save(h, dir2), QL_OK);
    json_t *c = load_config(dir2);
    json_t *rs = json_object_get(c, "rope_scaling");
    assert_string_equal(json_string_value(json_object_get(rs, "type")), "longrope");
    assert_true(json_number_value(json_array_get(json_object_get(rs, "long_factor"), 7)) == 4.5);
    assert_int_equal(json_integer_value(json_object_get(c, "original_max_position_embeddings")), 4096);
    json_decref(c);
    assert_false(file_contains(dir2, "model.safetensors", "rope_factors"));
    ql_gguf *h2;
    assert_int_equal(ql_hf_load(dir2, &h2), QL_OK);
    assert_memory_equal(tensor(h2, "rope_factors_long.weight")->data, lf, 8 * sizeof(float));
    assert_true(key_f64(h2, "phi3.rope.scaling.attn_factor") == key_f64(h, "phi3.rope.scaling.attn_factor"));
    ql_gguf_free(h2);
    ql_test_rm_flat_dir(dir2);
    ql_gguf_free(h);
    ql_test_rm_flat_dir(dir);
}

/* qwen2 / qwen3 configs: biases, q/k norms, head_dim from config, YaRN keys */
static void test_config_qwen(void **state) {
    (void)state;
    char *dir = ql_test_mkdtemp("hf_arch");
    write_text(dir, "config.json",
               "{\"architectures\":[\"Qwen3ForCausalLM\"],\"model_type\":\"qwen3\",\"attention_bias\":false,"
               "\"head_dim\":32,\"hidden_act\":\"silu\",\"hidden_size\":64,\"intermediate_size\":96,"
               "\"max_position_embeddings\":40960,\"num_attention_heads\":4,\"num_hidden_layers\":1,"
               "\"num_key_value_heads\":2,\"rms_norm_eps\":1e-06,\"rope_theta\":1000000,\"tie_word_embeddings\":true,"
               "\"use_sliding_window\":false,\"vocab_size\":32,"
               "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0,\"original_max_position_embeddings\":32768}}");
    const st_tensor ts[] = {
        {"model.embed_tokens.weight", 2, {32, 64}},
        {"model.norm.weight", 1, {64, 0}},
        {"model.layers.0.input_layernorm.weight", 1, {64, 0}},
        {"model.layers.0.self_attn.q_proj.weight", 2, {128, 64}},
        {"model.layers.0.self_attn.k_proj.weight", 2, {64, 64}},
        {"model.layers.0.self_attn.v_proj.weight", 2, {64, 64}},
        {"model.layers.0.self_attn.q_norm.weight", 1, {32, 0}},
        {"model.layers.0.self_attn.k_norm.weight", 1, {32, 0}},
        {"model.layers.0.self_attn.o_proj.weight", 2, {64, 128}},
        {"model.layers.0.post_attention_layernorm.weight", 1, {64, 0}},
        {"model.layers.0.mlp.gate_proj.weight", 2, {96, 64}},
        {"model.layers.0.mlp.up_proj.weight", 2, {96, 64}},
        {"model.layers.0.mlp.down_proj.weight", 2, {64, 96}},
    };
    write_safetensors(dir, ts, (int)QL_ARRAY_LEN(ts), 9);
    ql_gguf *h;
    if (ql_hf_load(dir, &h) != QL_OK) fail_msg("%s", ql_last_error());
    assert_string_equal(ql_gguf_get_str(h, "general.architecture"), "qwen3");
    assert_int_equal(key_int(h, "qwen3.attention.key_length"), 32);
    assert_int_equal(key_int(h, "qwen3.rope.dimension_count"), 32);
    assert_string_equal(ql_gguf_get_str(h, "qwen3.rope.scaling.type"), "yarn");
    assert_true(key_f64(h, "qwen3.rope.scaling.factor") == 4.0);
    assert_int_equal(key_int(h, "qwen3.rope.scaling.original_context_length"), 32768);
    /* NEOX model: q rows untouched; q_norm is not shifted (only Gemma's are) */
    assert_true(((const float *)tensor(h, "blk.0.attn_q.weight")->data)[64 * 3] == st_value(ts, 3, 64 * 3, 9));
    assert_true(((const float *)tensor(h, "blk.0.attn_q_norm.weight")->data)[2] == st_value(ts, 6, 2, 9));
    ql_gguf_free(h);
    ql_test_rm_flat_dir(dir);
}

/* ---------------------------------------------------------------- refusals */

static void expect_refusal(const char *config, ql_status want, const char *needle) {
    char *dir = ql_test_mkdtemp("hf_arch");
    write_text(dir, "config.json", config);
    const st_tensor ts[] = {{"model.embed_tokens.weight", 2, {32, 64}}};
    write_safetensors(dir, ts, 1, 1);
    ql_gguf *h = NULL;
    assert_int_equal(ql_hf_load(dir, &h), want);
    assert_null(h);
    const char *e = ql_last_error();
    if (!strstr(e, needle) || !strstr(e, dir)) fail_msg("error '%s' should name %s and '%s'", e, dir, needle);
    assert_null(strchr(e, '\n'));
    ql_test_rm_flat_dir(dir);
}

static void test_refusals(void **state) {
    (void)state;
    expect_refusal("{\"architectures\":[\"MambaForCausalLM\"],\"model_type\":\"mamba\",\"hidden_size\":64}",
                   QL_ERR_UNSUPPORTED, "MambaForCausalLM");
    expect_refusal("{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
                   "\"intermediate_size\":96,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                   "\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2.0}}",
                   QL_ERR_UNSUPPORTED, "'dynamic'");
    expect_refusal("{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\",\"hidden_size\":64,"
                   "\"intermediate_size\":96,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                   "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}}",
                   QL_ERR_UNSUPPORTED, "'llama3'");
    expect_refusal("{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\",\"hidden_size\":64,"
                   "\"intermediate_size\":96,\"num_hidden_layers\":1,\"attn_logit_softcapping\":50.0}",
                   QL_ERR_UNSUPPORTED, "attn_logit_softcapping");
    expect_refusal("{\"architectures\":[\"Phi3ForCausalLM\"],\"model_type\":\"phi3\",\"hidden_size\":64,"
                   "\"intermediate_size\":96,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                   "\"max_position_embeddings\":131072,\"original_max_position_embeddings\":4096,"
                   "\"rope_scaling\":{\"type\":\"longrope\",\"long_factor\":[1.0],\"short_factor\":[1.0]}}",
                   QL_ERR_FORMAT, "long_factor");
    /* a llama folder without its first layer's k_proj */
    expect_refusal("{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
                   "\"intermediate_size\":96,\"num_hidden_layers\":1,\"num_attention_heads\":4}",
                   QL_ERR_FORMAT, "missing");
}

/* A GGUF of each architecture without one tensor it needs: the model loader names the file and the
 * tensor. Architectures this build's forward pass does not load yet are reported as skipped. */
static void test_gguf_missing_tensor(void **state) {
    (void)state;
    static const char *models[][2] = {{"llama3", "blk.1.attn_k.weight"},  {"qwen2", "blk.0.ffn_down.weight"},
                                      {"qwen3", "blk.1.attn_q_norm.weight"}, {"gemma2", "blk.0.post_ffw_norm.weight"},
                                      {"gemma3", "blk.5.attn_k_norm.weight"}, {"phi3", "blk.1.attn_qkv.weight"}};
    int tested = 0;
    for (size_t m = 0; m < QL_ARRAY_LEN(models); m++) {
        char rel[128], path[512];
        snprintf(rel, sizeof rel, "testdata/arch-variants/%s.gguf", models[m][0]);
        if (!shared_path(path, sizeof path, rel)) skip();
        ql_model *full;
        if (ql_model_load(path, &full) != QL_OK) {
            printf("SKIP: %s: %s\n", models[m][0], ql_last_error());
            continue;
        }
        ql_model_free(full);
        ql_gguf *g, *cut = ql_gguf_new();
        assert_int_equal(ql_gguf_open(path, &g), QL_OK);
        ql_gguf_copy_kv(cut, g);
        for (int64_t i = 0; i < g->n_tensors; i++) {
            const ql_gguf_tensor *t = &g->tensors[i];
            if (strcmp(t->name, models[m][1]) != 0)
                assert_true(ql_gguf_add_tensor(cut, t->name, t->type, t->n_dims, t->ne, t->data) >= 0);
        }
        char out[256];
        snprintf(out, sizeof out, "/tmp/qlab_test_hf_arch_cut_%d_%s.gguf", (int)getpid(), models[m][0]);
        assert_int_equal(ql_gguf_write(cut, out, NULL), QL_OK);
        ql_model *mm = NULL;
        ql_status s = ql_model_load(out, &mm);
        if (s == QL_OK) fail_msg("%s without %s loaded", models[m][0], models[m][1]);
        if (!strstr(ql_last_error(), models[m][1]) || !strstr(ql_last_error(), out))
            fail_msg("%s: error '%s' should name the file and %s", models[m][0], ql_last_error(), models[m][1]);
        unlink(out);
        ql_gguf_free(cut);
        ql_gguf_free(g);
        tested++;
    }
    printf("%d of 6 architectures checked\n", tested);
    assert_true(tested >= 1); /* llama3 (plain llama) loads in every build */
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_llama3),  cmocka_unit_test(test_roundtrip_qwen2),
        cmocka_unit_test(test_roundtrip_qwen3),   cmocka_unit_test(test_roundtrip_gemma2),
        cmocka_unit_test(test_roundtrip_gemma3),  cmocka_unit_test(test_roundtrip_phi3),
        cmocka_unit_test(test_gemma3_per_layer_pattern),
        cmocka_unit_test(test_gemma_norm_shift), cmocka_unit_test(test_exporter_norm_shift),  cmocka_unit_test(test_config_llama3),
        cmocka_unit_test(test_config_gemma2),     cmocka_unit_test(test_config_gemma3_nested),
        cmocka_unit_test(test_config_phi3_longrope), cmocka_unit_test(test_config_qwen),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_gguf_missing_tensor),
    };
    ql_test_order_from_env(tests, QL_ARRAY_LEN(tests));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
