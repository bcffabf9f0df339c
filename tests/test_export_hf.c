/* test_export_hf.c — the safetensors-folder exporters (pipeline/export_st.c, export_gptq.c,
 * export_awq.c, export_ct.c) at the bit level: qlab rows with known codes, zeros and scales go through
 * the exporter, and the words in the written safetensors are compared with words computed by hand from
 * each ecosystem's layout (docs/formats.md § Exporters). Also: codes a layout cannot hold are refused
 * with nothing left behind, a non-empty output folder is refused, shards + index when over the limit.
 * The whole-model check (every tensor, bit for bit, against qlab's dequantization) is
 * tests/decode_hf_quant.py, run from tests/cli_test.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core/gguf.h"
#include "core/tokenizer.h"
#include "formats/format.h"
#include "kernels/int_quants.h"
#include "pipeline/export.h"
#include "tests/test_util.h"

static ql_gguf *make_source(void) {
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.architecture", "llama");
    ql_gguf_set_u32(g, "llama.block_count", 1);
    ql_gguf_set_u32(g, "llama.embedding_length", 32);
    ql_gguf_set_u32(g, "llama.attention.head_count", 4);
    ql_gguf_set_u32(g, "llama.feed_forward_length", 8);
    ql_gguf_set_u32(g, "llama.vocab_size", 16);
    ql_gguf_set_u32(g, "tokenizer.ggml.bos_token_id", 1);
    return g;
}

/* A qlab INTn tensor of N rows x K columns, one group per row when group == K: code(n, k) and
 * zero(n) given, every scale 1.0. */
static uint8_t *int_rows(int64_t N, int64_t K, int bits, int group, bool sym, unsigned (*code)(int64_t, int64_t),
                         unsigned (*zero)(int64_t), uint64_t *nbytes) {
    int64_t ng = (K + group - 1) / group, rb = ql_int_row_bytes(K, bits, group == K ? 0 : group, sym);
    uint8_t *b = calloc((size_t)(N * rb), 1);
    for (int64_t n = 0; n < N; n++) {
        uint8_t *r = b + n * rb;
        for (int64_t g = 0; g < ng; g++) {
            ql_put_f16le(r + 2 * g, 0x3C00);
            if (!sym) ql_bits_or(r + 2 * ng, g * bits, bits, zero(n));
        }
        int64_t off = 2 * ng + (sym ? 0 : ql_bits_to_bytes(ng * bits));
        for (int64_t k = 0; k < K; k++) ql_bits_or(r + off, k * bits, bits, code(n, k));
    }
    *nbytes = (uint64_t)(N * rb);
    return b;
}

static unsigned code_n_plus_k(int64_t n, int64_t k) { return (unsigned)((n + k) & 15); }
static unsigned zero_n_plus_1(int64_t n) { return (unsigned)(n + 1); }
static unsigned zero_n(int64_t n) { return (unsigned)n; }
static unsigned code_k_mod_8(int64_t n, int64_t k) { (void)n; return (unsigned)(k & 7); }

static char g_dir[256];

static ql_status export_one(const char *to, const char *fmt, const char *name, int64_t N, int64_t K, const void *bytes,
                            uint64_t nbytes) {
    ql_gguf *src = make_source();
    ql_exporter *x;
    ql_status s = ql_export_begin(ql_exporter_by_name(to), g_dir, src, &x);
    if (!s) {
        int64_t ne[2] = {K, N};
        ql_export_tensor t = {.name = name, .type = ql_format_by_name(fmt)->type, .n_dims = 2, .ne = ne, .nbytes = nbytes,
                              .data = bytes};
        s = ql_export_add_tensor(x, &t);
        if (s) ql_export_abort(x);
        else s = ql_export_commit(x, NULL);
    }
    ql_gguf_free(src);
    return s;
}

/* The bytes of tensor `name` in g_dir/model.safetensors, with its dtype and element count checked. */
static uint8_t *read_tensor(const char *name, const char *dtype, int64_t numel, uint8_t **file) {
    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", g_dir);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *file = malloc((size_t)n);
    assert_int_equal(fread(*file, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)(*file)[i] << (8 * i);
    json_t *h = json_loadb((const char *)*file + 8, hl, 0, NULL);
    assert_non_null(h);
    json_t *e = json_object_get(h, name);
    if (!e) fail_msg("%s has no tensor %s", p, name);
    assert_string_equal(json_string_value(json_object_get(e, "dtype")), dtype);
    int64_t cnt = 1;
    json_t *dim;
    size_t i;
    json_array_foreach(json_object_get(e, "shape"), i, dim) cnt *= json_integer_value(dim);
    assert_int_equal(cnt, numel);
    int64_t off = json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 0));
    json_decref(h);
    return *file + 8 + hl + off;
}

static uint32_t word(const uint8_t *p, int64_t i) {
    p += 4 * i;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void rm_out(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    assert_int_equal(system(cmd), 0);
}

#define DOWN "model.layers.0.mlp.down_proj."

/* 8 outputs x 32 inputs, int4_g32 asymmetric: code(n, k) = (n + k) & 15, zero(n) = n + 1, scale 1. */
static void test_gptq_words(void **state) {
    (void)state;
    uint64_t nb;
    uint8_t *q = int_rows(8, 32, 4, 32, false, code_n_plus_k, zero_n_plus_1, &nb), *file;
    assert_int_equal(export_one("gptq", "int4_g32", "blk.0.ffn_down.weight", 8, 32, q, nb), QL_OK);
    /* qweight [32*4/32 = 4, 8]: word (i, n) holds inputs 8i..8i+7 of output n, input 8i in the low nibble */
    const uint8_t *w = read_tensor(DOWN "qweight", "I32", 4 * 8, &file);
    assert_int_equal(word(w, 0 * 8 + 0), 0x76543210u); /* n 0, k 0..7 */
    assert_int_equal(word(w, 0 * 8 + 1), 0x87654321u); /* n 1, k 0..7 */
    assert_int_equal(word(w, 1 * 8 + 0), 0xFEDCBA98u); /* n 0, k 8..15 */
    assert_int_equal(word(w, 3 * 8 + 2), 0x10FEDCBAu); /* n 2, k 24..31: 26..33 mod 16 */
    free(file);
    /* qzeros [1, 8*4/32 = 1]: zero(n) - 1 = n in nibble n */
    assert_int_equal(word(read_tensor(DOWN "qzeros", "I32", 1, &file), 0), 0x76543210u);
    free(file);
    const uint8_t *sc = read_tensor(DOWN "scales", "F16", 8, &file);
    for (int n = 0; n < 8; n++) assert_int_equal(ql_get_f16le(sc + 2 * n), 0x3C00);
    free(file);
    const uint8_t *gi = read_tensor(DOWN "g_idx", "I32", 32, &file);
    for (int k = 0; k < 32; k++) assert_int_equal(word(gi, k), 0);
    free(file);
    /* config.json names the scheme */
    char p[300];
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    json_t *cfg = json_load_file(p, 0, NULL);
    assert_non_null(cfg);
    json_t *qc = json_object_get(cfg, "quantization_config");
    assert_string_equal(json_string_value(json_object_get(qc, "quant_method")), "gptq");
    assert_int_equal(json_integer_value(json_object_get(qc, "bits")), 4);
    assert_int_equal(json_integer_value(json_object_get(qc, "group_size")), 32);
    assert_true(json_is_false(json_object_get(qc, "sym")));
    json_decref(cfg);
    snprintf(p, sizeof p, "%s/generation_config.json", g_dir);
    assert_int_equal(access(p, F_OK), 0);
    free(q);
    rm_out();
}

/* 3-bit codes run through consecutive words as one bit stream: code(k) = k & 7 for inputs 0..31 gives
 * bits 3k..3k+2; word 0 takes k = 0..9 whole, the low two bits of k = 10 (value 2 -> bit 31 set) ... */
static void test_gptq_3bit_stream(void **state) {
    (void)state;
    uint64_t nb;
    uint8_t *q = int_rows(32, 32, 3, 32, true, code_k_mod_8, NULL, &nb), *file;
    assert_int_equal(export_one("gptq", "int3_g32_sym", "blk.0.ffn_down.weight", 32, 32, q, nb), QL_OK);
    const uint8_t *w = read_tensor(DOWN "qweight", "I32", 3 * 32, &file);
    for (int n = 0; n < 32; n++) {
        assert_int_equal(word(w, 0 * 32 + n), 0x88FAC688u);
        assert_int_equal(word(w, 1 * 32 + n), 0xC688FAC6u);
    }
    free(file);
    /* symmetric: zero 4 stored as 3 = 0b011 for each of 32 outputs, a 96-bit stream */
    const uint8_t *z = read_tensor(DOWN "qzeros", "I32", 3, &file);
    assert_int_equal(word(z, 0), 0xDB6DB6DBu);
    assert_int_equal(word(z, 1), 0xB6DB6DB6u);
    assert_int_equal(word(z, 2), 0x6DB6DB6Du);
    free(file);
    free(q);
    rm_out();
}

static void test_awq_words(void **state) {
    (void)state;
    uint64_t nb;
    uint8_t *q = int_rows(8, 32, 4, 32, false, code_n_plus_k, zero_n_plus_1, &nb), *file;
    assert_int_equal(export_one("awq", "int4_g32", "blk.0.ffn_down.weight", 8, 32, q, nb), QL_OK);
    /* qweight [32, 1]: nibble i holds output column ORDER[i] = 0,2,4,6,1,3,5,7; input 0 has code n */
    const uint8_t *w = read_tensor(DOWN "qweight", "I32", 32, &file);
    assert_int_equal(word(w, 0), 0x75316420u);
    assert_int_equal(word(w, 9), 0x0ECAFDB9u); /* input 9: code 9 + n mod 16 in column n */
    free(file);
    /* qzeros [1, 1]: zero(n) = n + 1, same interleave, no offset */
    assert_int_equal(word(read_tensor(DOWN "qzeros", "I32", 1, &file), 0), 0x86427531u);
    free(file);
    free(q);
    rm_out();
}

static void test_ct_words(void **state) {
    (void)state;
    uint64_t nb;
    uint8_t *q = int_rows(8, 32, 4, 32, false, code_n_plus_k, zero_n_plus_1, &nb), *file;
    assert_int_equal(export_one("compressed-tensors", "int4_g32", "blk.0.ffn_down.weight", 8, 32, q, nb), QL_OK);
    /* weight_packed [8, 4]: row n, eight inputs per word, stored = signed + 8 = qlab's code */
    const uint8_t *w = read_tensor(DOWN "weight_packed", "I32", 8 * 4, &file);
    assert_int_equal(word(w, 0 * 4 + 0), 0x76543210u);
    assert_int_equal(word(w, 2 * 4 + 3), 0x10FEDCBAu);
    free(file);
    /* weight_zero_point [8/8 = 1, 1]: packed along the outputs, stored = signed zero + 8 = qlab's zero */
    assert_int_equal(word(read_tensor(DOWN "weight_zero_point", "I32", 1, &file), 0), 0x87654321u);
    free(file);
    const uint8_t *shape = read_tensor(DOWN "weight_shape", "I64", 2, &file);
    assert_int_equal(word(shape, 0), 8);
    assert_int_equal(word(shape, 1), 0);
    assert_int_equal(word(shape, 2), 32);
    free(file);
    free(q);
    rm_out();
}

/* bnb nf4, 2 rows x 64: qlab's [absmax f32][32 code bytes] blocks become the flattened weight bytes
 * (element 2j high nibble) and an F32 absmax per block; quant_state is the JSON bitsandbytes reads. */
static void test_bnb_bytes(void **state) {
    (void)state;
    uint8_t q[2 * 36], *file;
    for (int r = 0; r < 2; r++) {
        float am = r ? 0.5f : 2.0f;
        memcpy(q + 36 * r, &am, 4);
        for (int j = 0; j < 32; j++) q[36 * r + 4 + j] = (uint8_t)((j & 15) << 4 | (15 - (j & 15)));
    }
    assert_int_equal(export_one("bnb", "nf4", "blk.0.ffn_down.weight", 2, 64, q, sizeof q), QL_OK);
    const uint8_t *w = read_tensor(DOWN "weight", "U8", 64, &file);
    assert_int_equal(w[0], 0x0F);  /* row 0: codes 0, 15 */
    assert_int_equal(w[5], 0x5A);  /* codes 5, 10 */
    assert_int_equal(w[32], 0x0F); /* row 1 follows row 0 directly */
    free(file);
    const uint8_t *am = read_tensor(DOWN "weight.absmax", "F32", 2, &file);
    assert_int_equal(word(am, 0), 0x40000000u); /* 2.0f */
    assert_int_equal(word(am, 1), 0x3F000000u); /* 0.5f */
    free(file);
    const uint8_t *qm = read_tensor(DOWN "weight.quant_map", "F32", 16, &file);
    assert_int_equal(word(qm, 0), 0xBF800000u);  /* NF4 code 0 = -1 */
    assert_int_equal(word(qm, 7), 0);            /* code 7 = 0 */
    assert_int_equal(word(qm, 15), 0x3F800000u); /* code 15 = 1 */
    free(file);
    const uint8_t *qs = read_tensor(DOWN "weight.quant_state.bitsandbytes__nf4", "U8", 200, &file);
    json_t *j = json_loadb((const char *)qs, 200, 0, NULL); /* trailing spaces are valid JSON */
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "quant_type")), "nf4");
    assert_int_equal(json_integer_value(json_object_get(j, "blocksize")), 64);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "shape"), 0)), 2);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "shape"), 1)), 64);
    json_decref(j);
    free(file);
    rm_out();
}

static int entries(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, needle)) n++;
    closedir(d);
    return n;
}

static void test_refusals_leave_nothing(void **state) {
    (void)state;
    uint64_t nb;
    /* zero point 0: GPTQ v1 stores zero - 1, which cannot be 0 - 1; refused at commit, nothing written */
    uint8_t *q = int_rows(8, 32, 4, 32, false, code_n_plus_k, zero_n, &nb);
    assert_int_equal(export_one("gptq", "int4_g32", "blk.0.ffn_down.weight", 8, 32, q, nb), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "zero point 0"));
    assert_int_equal(access(g_dir, F_OK), -1);
    char parent[256];
    snprintf(parent, sizeof parent, "%s", g_dir);
    *strrchr(parent, '/') = 0;
    assert_int_equal(entries(parent, ".tmp."), 0);
    /* the same rows are fine for awq and compressed-tensors, which store zeros as they are */
    assert_int_equal(export_one("awq", "int4_g32", "blk.0.ffn_down.weight", 8, 32, q, nb), QL_OK);
    /* a non-empty output folder is refused before anything is written */
    assert_int_equal(export_one("compressed-tensors", "int4_g32", "blk.0.ffn_down.weight", 8, 32, q, nb), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), "not an empty folder"));
    rm_out();
    free(q);
    /* rows that do not split into whole groups: named tensor, what the target needs */
    q = int_rows(8, 40, 4, 32, true, code_n_plus_k, NULL, &nb);
    assert_int_equal(export_one("awq", "int4_g32_sym", "blk.0.ffn_down.weight", 8, 40, q, nb), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "blk.0.ffn_down.weight"));
    assert_non_null(strstr(ql_last_error(), "groups of 32"));
    assert_int_equal(access(g_dir, F_OK), -1);
    free(q);
}

static void test_shards_and_index(void **state) {
    (void)state;
    uint64_t nb;
    uint8_t *q = int_rows(8, 32, 4, 32, true, code_n_plus_k, NULL, &nb);
    setenv("QLAB_MAX_SHARD_BYTES", "100", 1);
    ql_gguf *src = make_source();
    ql_exporter *x;
    assert_int_equal(ql_export_begin(ql_exporter_by_name("gptq"), g_dir, src, &x), QL_OK);
    int64_t ne[2] = {32, 8};
    const char *names[] = {"blk.0.ffn_down.weight", "blk.0.ffn_up.weight", "blk.0.ffn_gate.weight"};
    for (int i = 0; i < 3; i++) {
        ql_export_tensor t = {.name = names[i], .type = ql_format_by_name("int4_g32_sym")->type, .n_dims = 2, .ne = ne,
                              .nbytes = nb, .data = q};
        assert_int_equal(ql_export_add_tensor(x, &t), QL_OK);
    }
    assert_int_equal(ql_export_commit(x, NULL), QL_OK);
    unsetenv("QLAB_MAX_SHARD_BYTES");
    ql_gguf_free(src);
    /* each tensor's outputs (128 + 4 + 16 + 128 bytes) pass 100 alone: three shards */
    assert_int_equal(entries(g_dir, "-of-00003.safetensors"), 3);
    char p[300];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", g_dir);
    json_t *idx = json_load_file(p, 0, NULL);
    assert_non_null(idx);
    json_t *wm = json_object_get(idx, "weight_map");
    assert_string_equal(json_string_value(json_object_get(wm, "model.layers.0.mlp.up_proj.qweight")),
                        "model-00002-of-00003.safetensors");
    assert_int_equal(json_object_size(wm), 12);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")), 3 * (128 + 4 + 16 + 128));
    json_decref(idx);
    rm_out();
    free(q);
}

/* tokenizer.json written from GGUF keys reads back (core/tokenizer.c's own HF reader) into a tokenizer
 * that splits text exactly as the original: SentencePiece merges derived from the scores keep their
 * order. */
static void test_tokenizer_json_round_trip(void **state) {
    (void)state;
    static const char *models[] = {"models/stories260K.gguf", "models/tinystories-d256.gguf"};
    static const char *texts[] = {"Once upon a time, there was a little girl named Lily.",
                                  "  two spaces, tabs\tand\nnew lines; digits 12345 and caf\xC3\xA9 \xE2\x9C\x93",
                                  "The end."};
    for (size_t mi = 0; mi < 2; mi++) {
        char path[512];
        if (!shared_path(path, sizeof path, models[mi])) skip(); /* no shared folder: skipped, not passed */
        ql_gguf *g;
        assert_int_equal(ql_gguf_open(path, &g), QL_OK);
        char *json;
        assert_int_equal(ql_tokenizer_gguf_to_json(g, &json), QL_OK);
        char tp[300];
        snprintf(tp, sizeof tp, "%s.tokenizer.json", g_dir);
        FILE *f = fopen(tp, "w");
        assert_non_null(f);
        fputs(json, f);
        fclose(f);
        free(json);
        ql_gguf *h = ql_gguf_new();
        assert_int_equal(ql_tokenizer_json_to_gguf(tp, h), QL_OK);
        unlink(tp);
        ql_tokenizer *a, *b;
        assert_int_equal(ql_tokenizer_from_gguf(g, &a), QL_OK);
        assert_int_equal(ql_tokenizer_from_gguf(h, &b), QL_OK);
        assert_int_equal(ql_tokenizer_n_vocab(a), ql_tokenizer_n_vocab(b));
        assert_int_equal(ql_tokenizer_bos(a), ql_tokenizer_bos(b));
        assert_int_equal(ql_tokenizer_eos(a), ql_tokenizer_eos(b));
        int64_t merged = 0;
        for (size_t ti = 0; ti < QL_ARRAY_LEN(texts); ti++) {
            int32_t *ia, *ib;
            int64_t na, nb;
            assert_int_equal(ql_tokenize(a, texts[ti], strlen(texts[ti]), true, &ia, &na), QL_OK);
            assert_int_equal(ql_tokenize(b, texts[ti], strlen(texts[ti]), true, &ib, &nb), QL_OK);
            assert_int_equal(na, nb);
            assert_memory_equal(ia, ib, (size_t)na * sizeof *ia);
            merged += (int64_t)strlen(texts[ti]) - na; /* fewer tokens than bytes: merges were applied */
            free(ia), free(ib);
        }
        assert_true(merged > 20);
        ql_tokenizer_free(a), ql_tokenizer_free(b);
        ql_gguf_free(g), ql_gguf_free(h);
    }
}

static int setup(void **state) {
    (void)state;
    char tmpl[] = "/tmp/qlab-export-hf-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    snprintf(g_dir, sizeof g_dir, "%s/out", tmpl);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    *strrchr(g_dir, '/') = 0;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq_words),          cmocka_unit_test(test_gptq_3bit_stream),
        cmocka_unit_test(test_awq_words),           cmocka_unit_test(test_ct_words),
        cmocka_unit_test(test_refusals_leave_nothing), cmocka_unit_test(test_shards_and_index),
        cmocka_unit_test(test_tokenizer_json_round_trip), cmocka_unit_test(test_bnb_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
