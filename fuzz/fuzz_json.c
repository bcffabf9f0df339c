/* fuzz_json.c — libFuzzer harness for the JSON inputs of a Hugging Face folder. Each input is used
 * three ways: as config.json (beside a tiny valid model.safetensors, so accepted configs go on to map
 * and permute tensors), as model.safetensors.index.json (beside a valid config.json), and as
 * tokenizer.json for ql_tokenizer_json_to_gguf. Files live in a private folder under /dev/shm (or
 * /tmp) made once per process. Seeds: tests/corpus/json/. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/model.h"

static char g_root[256], g_cfg_dir[300], g_idx_dir[300], g_tok[300];

static void quiet(int level, const char *msg, void *user) { (void)level, (void)msg, (void)user; }

static void put_file(const char *dir, const char *name, const void *data, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

/* A 2-layer-capable llama folder piece: q/k projections and a norm, 4 x 4 floats each. */
static void put_small_safetensors(const char *dir) {
    static const char hdr[] =
        "{\"model.layers.0.self_attn.q_proj.weight\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,"
        "64]},"
        "\"model.layers.0.self_attn.k_proj.weight\":{\"dtype\":\"F16\",\"shape\":[4,4],\"data_offsets\":[64,"
        "96]},"
        "\"model.layers.1.self_attn.q_proj.bias\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[96,104]"
        "},"
        "\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[104,120]}}";
    uint8_t buf[8 + sizeof hdr + 120];
    uint64_t n = sizeof hdr - 1;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, hdr, n);
    for (int i = 0; i < 120; i++) buf[8 + n + (size_t)i] = (uint8_t)(i * 7);
    put_file(dir, "model.safetensors", buf, 8 + n + 120);
}

static void cleanup(void) {
    static const char *const files[] = {"cfg/config.json",
                                        "cfg/model.safetensors",
                                        "idx/config.json",
                                        "idx/model.safetensors",
                                        "idx/model.safetensors.index.json",
                                        "tokenizer.json",
                                        "cfg",
                                        "idx",
                                        ""};
    char p[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_root, files[i]);
        remove(p);
    }
}

static void setup(void) {
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(g_root, sizeof g_root, "%s/qlab_fuzz_json_XXXXXX", base);
    if (!mkdtemp(g_root)) abort();
    snprintf(g_cfg_dir, sizeof g_cfg_dir, "%s/cfg", g_root);
    snprintf(g_idx_dir, sizeof g_idx_dir, "%s/idx", g_root);
    snprintf(g_tok, sizeof g_tok, "%s/tokenizer.json", g_root);
    if (mkdir(g_cfg_dir, 0700) || mkdir(g_idx_dir, 0700)) abort();
    put_small_safetensors(g_cfg_dir);
    put_small_safetensors(g_idx_dir);
    static const char cfg[] = "{\"model_type\":\"llama\",\"hidden_size\":4,\"num_hidden_layers\":2,"
                              "\"num_attention_heads\":2,\"num_key_value_heads\":2,\"intermediate_size\":8,"
                              "\"vocab_size\":4}";
    put_file(g_idx_dir, "config.json", cfg, sizeof cfg - 1);
    ql_log_set(quiet, NULL);
    atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_root[0]) setup();
    ql_gguf *g = NULL;

    put_file(g_cfg_dir, "config.json", data, size);
    if (ql_hf_load(g_cfg_dir, &g) == QL_OK) ql_gguf_free(g);

    put_file(g_idx_dir, "model.safetensors.index.json", data, size);
    g = NULL;
    if (ql_hf_load(g_idx_dir, &g) == QL_OK) ql_gguf_free(g);

    put_file(g_root, "tokenizer.json", data, size);
    g = ql_gguf_new();
    ql_tokenizer_json_to_gguf(g_tok, g);
    ql_gguf_free(g);
    return 0;
}
