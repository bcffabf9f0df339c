/* test_hf_quant.c — quantized Hugging Face folders read back (core/hf_quant.c): for each layout a tiny
 * llama folder is built here by hand, packed by this file's own writers from codes, zero points and
 * scales chosen at random (GPTQ bit streams, AWQ's interleaved nibbles, compressed-tensors' packed words,
 * bitsandbytes' blocks), and the loaded tensor must be the registry format that holds them (or F32 where
 * none does) and decode to exactly (q - zero) * scale (etc.), in GGUF's q/k row order. Hostile folders
 * (wrong shapes, out-of-range g_idx, bad quant state, parts nobody explains) give one line naming the
 * folder and the tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <unistd.h>

#include "core/model.h"
#include "formats/fmt_exl2.h"
#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "tests/test_util.h"

/* ---------------------------------------------------------------- the tiny model */

enum { E = 64, HEADS = 4, KV_HEADS = 2, HD = 16, FF = 128, VOCAB = 32 };

typedef struct {
    char name[160];
    char dtype[12];
    int nd;
    int64_t shape[2];
    uint8_t *data;
    size_t n;
} st_t;

typedef struct {
    st_t t[128];
    int n;
} folder;

static uint32_t g_rng = 12345;
static uint32_t rnd(void) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return g_rng >> 8;
}
static float rndf(void) { return (float)(rnd() % 2001) / 1000.0f - 1.0f; }

static st_t *add(folder *f, const char *name, const char *dtype, int nd, int64_t d0, int64_t d1, size_t elem) {
    assert_true(f->n < 128);
    st_t *t = &f->t[f->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->nd = nd, t->shape[0] = d0, t->shape[1] = d1;
    t->n = (size_t)(d0 * (nd == 2 ? d1 : 1)) * elem;
    t->data = calloc(1, t->n ? t->n : 1);
    return t;
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void putf(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put32(p, u);
}
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }

static void add_f32(folder *f, const char *name, int nd, int64_t d0, int64_t d1) {
    st_t *t = add(f, name, "F32", nd, d0, d1, 4);
    for (size_t i = 0; i < t->n / 4; i++) putf(t->data + 4 * i, nd == 1 ? 1.0f : rndf() * 0.1f);
}

/* the float skeleton: embedding, norms; linears are added by the caller (float or quantized) */
static void skeleton(folder *f) {
    add_f32(f, "model.embed_tokens.weight", 2, VOCAB, E);
    add_f32(f, "model.norm.weight", 1, E, 0);
    add_f32(f, "lm_head.weight", 2, VOCAB, E);
    add_f32(f, "model.layers.0.input_layernorm.weight", 1, E, 0);
    add_f32(f, "model.layers.0.post_attention_layernorm.weight", 1, E, 0);
}

static const struct {
    const char *name;
    int64_t n, k; /* outputs, inputs */
    int heads;    /* GGUF q/k row permutation */
} g_lin[] = {
    {"self_attn.q_proj", E, E, HEADS},      {"self_attn.k_proj", KV_HEADS * HD, E, KV_HEADS},
    {"self_attn.v_proj", KV_HEADS * HD, E, 0}, {"self_attn.o_proj", E, E, 0},
    {"mlp.gate_proj", FF, E, 0},            {"mlp.up_proj", FF, E, 0},
    {"mlp.down_proj", E, FF, 0},
};
#define N_LIN 7

/* config.json (with quant_config text spliced in) and model.safetensors; frees the folder's buffers */
static char *write_folder(folder *f, const char *quant_config) {
    char *dir = ql_test_mkdtemp("hfq"), path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
            "\"num_hidden_layers\": 1, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
            "\"intermediate_size\": %d, \"vocab_size\": %d, \"rms_norm_eps\": 1e-5%s%s}",
            E, HEADS, KV_HEADS, FF, VOCAB, quant_config ? ", \"quantization_config\": " : "", quant_config ? quant_config : "");
    fclose(fp);
    json_t *hdr = json_object();
    size_t off = 0;
    for (int i = 0; i < f->n; i++) {
        st_t *t = &f->t[i];
        json_t *shape = t->nd == 2 ? json_pack("[I,I]", (json_int_t)t->shape[0], (json_int_t)t->shape[1])
                                   : json_pack("[I]", (json_int_t)t->shape[0]);
        json_object_set_new(hdr, t->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", t->dtype, "shape", shape, "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + t->n)));
        off += t->n;
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    uint64_t hl = strlen(text);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
    fwrite(len8, 1, 8, fp);
    fwrite(text, 1, hl, fp);
    for (int i = 0; i < f->n; i++) {
        if (f->t[i].n) fwrite(f->t[i].data, 1, f->t[i].n, fp);
        free(f->t[i].data);
    }
    fclose(fp);
    free(text);
    f->n = 0;
    return dir;
}

/* The expected HF-order weights of each linear, kept to compare after loading. */
typedef struct {
    float *w[N_LIN];
    const char *want_format[N_LIN]; /* registry name, or "f32" */
} expect_t;

static void expect_free(expect_t *x) {
    for (int i = 0; i < N_LIN; i++) free(x->w[i]);
}

static const char *gguf_lin(int i) {
    static const char *n[] = {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight",
                              "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"};
    return n[i];
}

/* Loads dir and checks every linear's type and values (GGUF row order) against x. */
static void check_loaded(const char *dir, const expect_t *x) {
    ql_gguf *g = NULL;
    ql_status s = ql_hf_load(dir, &g);
    if (s) fail_msg("load: %s", ql_last_error());
    for (int i = 0; i < N_LIN; i++) {
        int64_t ti = ql_gguf_find_tensor(g, gguf_lin(i));
        assert_true(ti >= 0);
        const ql_gguf_tensor *t = &g->tensors[ti];
        const int64_t N = g_lin[i].n, K = g_lin[i].k;
        assert_int_equal(t->ne[0], K);
        assert_int_equal(t->ne[1], N);
        float *got = malloc((size_t)(N * K) * sizeof *got), *want = malloc((size_t)(N * K) * sizeof *want);
        if (!strcmp(x->want_format[i], "f32")) {
            if (t->type != QL_TYPE_F32) fail_msg("%s: type %u, expected F32", gguf_lin(i), t->type);
            memcpy(got, t->data, (size_t)(N * K) * 4);
        } else {
            const ql_format *f = ql_format_by_name(x->want_format[i]);
            assert_non_null(f);
            if (t->type != f->type)
                fail_msg("%s: type %s, expected %s", gguf_lin(i), ql_format_by_type(t->type) ? ql_format_by_type(t->type)->name : "?",
                         f->name);
            assert_int_equal(ql_format_dequantize(f, t->data, got, N, K, 1), QL_OK);
        }
        if (g_lin[i].heads) ql_rope_permute_rows(want, x->w[i], g_lin[i].heads, N, (size_t)K * 4, true);
        else memcpy(want, x->w[i], (size_t)(N * K) * 4);
        for (int64_t j = 0; j < N * K; j++)
            if (memcmp(&got[j], &want[j], 4)) fail_msg("%s [%lld]: %.9g, expected %.9g", gguf_lin(i), (long long)j, got[j], want[j]);
        free(got), free(want);
    }
    ql_gguf_free(g);
}

/* load must fail with a message containing both needles */
static void check_refused(const char *dir, const char *needle) {
    ql_gguf *g = NULL;
    ql_status s = ql_hf_load(dir, &g);
    assert_int_not_equal(s, QL_OK);
    assert_null(g);
    const char *msg = ql_last_error();
    if (!strstr(msg, needle) || !strstr(msg, dir)) fail_msg("message '%s' lacks '%s' or the folder", msg, needle);
    assert_null(strchr(msg, '\n'));
}

/* ---------------------------------------------------------------- integer grids */

typedef struct {
    int64_t N, K, group, ng;
    int bits;
    uint8_t *q;   /* [N][K] */
    int *z;       /* [N][ng] */
    uint16_t *s;  /* [N][ng] f16 */
    int *gidx;    /* [K] */
} grid;

static void grid_make(grid *g, int64_t N, int64_t K, int bits, int64_t group, bool sym, float *w_out) {
    g->N = N, g->K = K, g->bits = bits, g->group = group, g->ng = (K + group - 1) / group;
    g->q = malloc((size_t)(N * K));
    g->z = malloc((size_t)(N * g->ng) * sizeof(int));
    g->s = malloc((size_t)(N * g->ng) * 2);
    g->gidx = malloc((size_t)K * sizeof(int));
    for (int64_t k = 0; k < K; k++) g->gidx[k] = (int)(k / group);
    const int maxq = (1 << bits) - 1;
    for (int64_t i = 0; i < N * g->ng; i++) {
        g->z[i] = sym ? 1 << (bits - 1) : 1 + (int)(rnd() % (unsigned)maxq); /* never 0: gptq v1 cannot store it */
        g->s[i] = ql_fp32_to_fp16(0.01f + (float)(rnd() % 100) / 1000.0f);
    }
    for (int64_t i = 0; i < N * K; i++) g->q[i] = (uint8_t)(rnd() % (unsigned)(maxq + 1));
    (void)w_out;
}

static float *grid_values(const grid *g) {
    float *w = malloc((size_t)(g->N * g->K) * sizeof *w);
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t k = 0; k < g->K; k++) {
            int64_t j = n * g->ng + g->gidx[k];
            w[n * g->K + k] = (float)(g->q[n * g->K + k] - g->z[j]) * ql_fp16_to_fp32(g->s[j]);
        }
    return w;
}

static void grid_free(grid *g) { free(g->q), free(g->z), free(g->s), free(g->gidx); }

static void name_of(char *buf, size_t cap, int i, const char *suffix) {
    snprintf(buf, cap, "model.layers.0.%s.%s", g_lin[i].name, suffix);
}

/* GPTQ v1: qweight [K*b/32, N] bit stream down each column, qzeros (zero-1) along the output, scales, g_idx */
static void add_gptq(folder *f, int i, const grid *g) {
    char nm[160];
    const int b = g->bits;
    name_of(nm, sizeof nm, i, "qweight");
    st_t *qw = add(f, nm, "I32", 2, g->K * b / 32, g->N, 4);
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t k = 0; k < g->K; k++)
            for (int bit = 0; bit < b; bit++)
                if (g->q[n * g->K + k] >> bit & 1) {
                    int64_t p = k * b + bit, word = p / 32;
                    qw->data[4 * (word * g->N + n) + (p % 32) / 8] |= (uint8_t)(1u << (p % 8));
                }
    name_of(nm, sizeof nm, i, "qzeros");
    const int64_t zc = g->N * b / 32;
    st_t *qz = add(f, nm, "I32", 2, g->ng, zc, 4);
    for (int64_t j = 0; j < g->ng; j++)
        for (int64_t n = 0; n < g->N; n++) {
            unsigned v = (unsigned)(g->z[n * g->ng + j] - 1) & ((1u << b) - 1);
            for (int bit = 0; bit < b; bit++)
                if (v >> bit & 1) {
                    int64_t p = n * b + bit;
                    qz->data[4 * (j * zc) + p / 8] |= (uint8_t)(1u << (p % 8));
                }
        }
    name_of(nm, sizeof nm, i, "scales");
    st_t *sc = add(f, nm, "F16", 2, g->ng, g->N, 2);
    for (int64_t j = 0; j < g->ng; j++)
        for (int64_t n = 0; n < g->N; n++) put16(sc->data + 2 * (j * g->N + n), g->s[n * g->ng + j]);
    name_of(nm, sizeof nm, i, "g_idx");
    st_t *gi = add(f, nm, "I32", 1, g->K, 0, 4);
    for (int64_t k = 0; k < g->K; k++) put32(gi->data + 4 * k, (uint32_t)g->gidx[k]);
}

static void test_gptq(void **state) {
    (void)state;
    folder f = {0};
    expect_t x = {0};
    skeleton(&f);
    for (int i = 0; i < N_LIN; i++) {
        grid g;
        bool sym = i == 2; /* v_proj symmetric: int4_g32_sym */
        grid_make(&g, g_lin[i].n, g_lin[i].k, 4, 32, sym, NULL);
        if (i == 3) { /* o_proj: act-order g_idx, a permutation of the columns across groups -> F32 */
            for (int64_t k = g.K - 1; k > 0; k--) {
                int64_t r = rnd() % (uint32_t)(k + 1);
                int t = g.gidx[k];
                g.gidx[k] = g.gidx[r], g.gidx[r] = t;
            }
        }
        if (i == 4) g.z[5] = 16; /* gate: stored zero 15 reads back as 16 (v1's offset): no n-bit zero holds it -> F32 */
        add_gptq(&f, i, &g);
        x.w[i] = grid_values(&g);
        x.want_format[i] = i == 2 ? "int4_g32_sym" : i == 3 || i == 4 ? "f32" : "int4_g32";
        grid_free(&g);
    }
    char *dir = write_folder(&f, "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"sym\": false, \"desc_act\": true}");
    check_loaded(dir, &x);
    expect_free(&x);
    ql_test_rm_flat_dir(dir);
}

/* 8-bit and 3-bit GPTQ (3-bit codes straddle words), per channel, and v2 zero points */
static void test_gptq_bits(void **state) {
    (void)state;
    static const struct {
        int bits;
        int group; /* -1: per channel */
        const char *cfg, *want;
    } cases[] = {
        {3, 64, "{\"quant_method\": \"gptq\", \"bits\": 3, \"group_size\": 64, \"sym\": true}", "int3_g64_sym"},
        {8, -1, "{\"quant_method\": \"gptq\", \"bits\": 8, \"group_size\": -1, \"sym\": true}", "int8_channel"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        folder f = {0};
        expect_t x = {0};
        skeleton(&f);
        for (int i = 0; i < N_LIN; i++) {
            grid g;
            grid_make(&g, g_lin[i].n, g_lin[i].k, cases[c].bits, cases[c].group > 0 ? cases[c].group : g_lin[i].k, true, NULL);
            add_gptq(&f, i, &g);
            x.w[i] = grid_values(&g);
            x.want_format[i] = cases[c].want;
            grid_free(&g);
        }
        char *dir = write_folder(&f, cases[c].cfg);
        check_loaded(dir, &x);
        expect_free(&x);
        ql_test_rm_flat_dir(dir);
    }
}

/* AWQ GEMM: qweight [K, N/8] with nibble i holding column 8w + ORDER[i]; qzeros the same; scales [ng, N] */
static void test_awq(void **state) {
    (void)state;
    static const int ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    folder f = {0};
    expect_t x = {0};
    skeleton(&f);
    for (int i = 0; i < N_LIN; i++) {
        grid g;
        grid_make(&g, g_lin[i].n, g_lin[i].k, 4, 64, i == 1, NULL);
        char nm[160];
        const int64_t W = g.N / 8;
        name_of(nm, sizeof nm, i, "qweight");
        st_t *qw = add(&f, nm, "I32", 2, g.K, W, 4);
        name_of(nm, sizeof nm, i, "qzeros");
        st_t *qz = add(&f, nm, "I32", 2, g.ng, W, 4);
        name_of(nm, sizeof nm, i, "scales");
        st_t *sc = add(&f, nm, "F16", 2, g.ng, g.N, 2);
        for (int64_t w = 0; w < W; w++)
            for (int nib = 0; nib < 8; nib++) {
                int64_t n = 8 * w + ORDER[nib];
                for (int64_t k = 0; k < g.K; k++) qw->data[4 * (k * W + w) + nib / 2] |= (uint8_t)(g.q[n * g.K + k] << (4 * (nib % 2)));
                for (int64_t j = 0; j < g.ng; j++) qz->data[4 * (j * W + w) + nib / 2] |= (uint8_t)(g.z[n * g.ng + j] << (4 * (nib % 2)));
            }
        for (int64_t j = 0; j < g.ng; j++)
            for (int64_t n = 0; n < g.N; n++) put16(sc->data + 2 * (j * g.N + n), g.s[n * g.ng + j]);
        x.w[i] = grid_values(&g);
        x.want_format[i] = i == 1 ? "int4_g64_sym" : "int4_g64";
        grid_free(&g);
    }
    char *dir = write_folder(&f, "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 64, \"version\": \"gemm\", \"zero_point\": true}");
    check_loaded(dir, &x);
    expect_free(&x);
    ql_test_rm_flat_dir(dir);
}

/* compressed-tensors, three config groups: q/k/v int4 g32 sym (pack-quantized), o_proj int8 per tensor
 * (whole tensor: its q/k-free rows), gate/up FP8 per channel, down_proj asymmetric int8 per channel
 * (packed zero points), and an ignored module left in float. */
static void test_compressed_tensors(void **state) {
    (void)state;
    folder f = {0};
    expect_t x = {0};
    skeleton(&f);
    char nm[160];
    for (int i = 0; i < N_LIN; i++) {
        const int64_t N = g_lin[i].n, K = g_lin[i].k;
        if (i <= 3 || i == 6) {
            int bits = i <= 2 ? 4 : 8, pf = 32 / bits;
            grid g;
            grid_make(&g, N, K, bits, i <= 2 ? 32 : K, i != 6, NULL);
            if (i == 3) /* per tensor: one scale */
                for (int64_t r = 0; r < N; r++) g.s[r] = g.s[0];
            name_of(nm, sizeof nm, i, "weight_packed");
            st_t *wp = add(&f, nm, "I32", 2, N, K / pf, 4);
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < K; k++) wp->data[4 * (n * (K / pf) + k / pf) + (k % pf) * bits / 8] |= (uint8_t)(g.q[n * K + k] << ((k % pf) * bits % 8));
            name_of(nm, sizeof nm, i, "weight_scale");
            st_t *sc = i == 3 ? add(&f, nm, "F16", 1, 1, 0, 2) : add(&f, nm, "F16", 2, N, g.ng, 2);
            for (int64_t j = 0; j < (i == 3 ? 1 : N * g.ng); j++) put16(sc->data + 2 * j, g.s[j]);
            if (i == 6) {
                name_of(nm, sizeof nm, i, "weight_zero_point");
                st_t *zp = add(&f, nm, "I32", 2, N / pf, 1, 4);
                for (int64_t n = 0; n < N; n++) zp->data[4 * (n / pf) + (n % pf)] = (uint8_t)g.z[n];
            }
            name_of(nm, sizeof nm, i, "weight_shape");
            st_t *ws = add(&f, nm, "I64", 1, 2, 0, 8);
            ws->data[0] = (uint8_t)N, ws->data[8] = (uint8_t)K;
            x.w[i] = grid_values(&g);
            x.want_format[i] = i <= 2 ? "int4_g32_sym" : i == 3 ? "int8_tensor" : "int8_g128";
            grid_free(&g);
        } else if (i == 4) { /* ignored: float */
            name_of(nm, sizeof nm, i, "weight");
            st_t *w = add(&f, nm, "F32", 2, N, K, 4);
            x.w[i] = malloc((size_t)(N * K) * 4);
            for (int64_t j = 0; j < N * K; j++) x.w[i][j] = rndf(), putf(w->data + 4 * j, x.w[i][j]);
            x.want_format[i] = "f32";
        } else { /* FP8 E4M3 per channel */
            name_of(nm, sizeof nm, i, "weight");
            st_t *w = add(&f, nm, "F8_E4M3", 2, N, K, 1);
            name_of(nm, sizeof nm, i, "weight_scale");
            st_t *sc = add(&f, nm, "F32", 2, N, 1, 4);
            x.w[i] = malloc((size_t)(N * K) * 4);
            for (int64_t n = 0; n < N; n++) {
                float s = 0.001f * (float)(1 + rnd() % 50);
                putf(sc->data + 4 * n, s);
                for (int64_t k = 0; k < K; k++) {
                    uint8_t c = (uint8_t)(rnd() % 256);
                    if ((c & 0x7F) == 0x7F) c = 0; /* no NaN codes */
                    w->data[n * K + k] = c;
                    x.w[i][n * K + k] = ql_fp8_e4m3_to_f32(c) * s;
                }
            }
            x.want_format[i] = "fp8_e4m3_channel";
        }
    }
    char *dir = write_folder(
        &f, "{\"quant_method\": \"compressed-tensors\", \"format\": \"mixed-precision\", \"quantization_status\": \"compressed\", "
            "\"ignore\": [\"lm_head\", \"model.layers.0.mlp.gate_proj\"], \"config_groups\": {"
            "\"g0\": {\"targets\": [\"re:.*self_attn\\\\.[qkv]_proj$\"], \"format\": \"pack-quantized\", \"weights\": {\"num_bits\": 4, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"group\", \"group_size\": 32}},"
            "\"g1\": {\"targets\": [\"model.layers.0.self_attn.o_proj\"], \"format\": \"pack-quantized\", \"weights\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"tensor\"}},"
            "\"g2\": {\"targets\": [\"re:.*up_proj$\"], \"format\": \"float-quantized\", \"weights\": {\"num_bits\": 8, \"type\": \"float\", \"symmetric\": true, \"strategy\": \"channel\"}, "
            "\"input_activations\": {\"num_bits\": 8, \"type\": \"float\", \"symmetric\": true, \"strategy\": \"token\", \"dynamic\": true}},"
            "\"g3\": {\"targets\": [\"Linear\"], \"format\": \"pack-quantized\", \"weights\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": false, \"strategy\": \"channel\"}}}}");
    check_loaded(dir, &x);
    /* the FP8 group's dynamic input scheme becomes a qlab.act key */
    ql_gguf *g = NULL;
    assert_int_equal(ql_hf_load(dir, &g), QL_OK);
    const ql_gguf_value *v = ql_gguf_get(g, "qlab.act.mode.blk.0.ffn_up.weight");
    assert_non_null(v);
    assert_string_equal(v->v.str.s, "fp8_token");
    assert_null(ql_gguf_get(g, "qlab.act.mode.blk.0.attn_q.weight"));
    ql_gguf_free(g);
    expect_free(&x);
    ql_test_rm_flat_dir(dir);
}

/* nvfp4-pack-quantized: two E2M1 codes per byte (even column low), an E4M3 scale per 16 inputs, a global
 * scale. Global 1 on attention (its groups: qlab's nvfp4 holds it exactly), 0.5 on the MLP (F32 as
 * compressed-tensors divides it: e2m1 * (scale / global)). Code 8 (-0) is left out: qlab's nvfp4 reads
 * it as +0, the same value but not the same bits. */
static void test_ct_nvfp4(void **state) {
    (void)state;
    static const float e2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3, -4, -6};
    folder f = {0};
    expect_t x = {0};
    skeleton(&f);
    char nm[160];
    for (int i = 0; i < N_LIN; i++) {
        const int64_t N = g_lin[i].n, K = g_lin[i].k;
        const float global = i <= 3 ? 1.0f : 0.5f;
        name_of(nm, sizeof nm, i, "weight_packed");
        st_t *wp = add(&f, nm, "U8", 2, N, K / 2, 1);
        name_of(nm, sizeof nm, i, "weight_scale");
        st_t *sc = add(&f, nm, "F8_E4M3", 2, N, K / 16, 1);
        name_of(nm, sizeof nm, i, "weight_global_scale");
        putf(add(&f, nm, "F32", 1, 1, 0, 4)->data, global);
        for (int64_t j = 0; j < N * K / 16; j++) sc->data[j] = (uint8_t)(rnd() % 0x7F);
        x.w[i] = malloc((size_t)(N * K) * 4);
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                unsigned c = rnd() % 15;
                c += c >= 8;
                wp->data[n * (K / 2) + k / 2] |= (uint8_t)(c << (4 * (k & 1)));
                x.w[i][n * K + k] = e2m1[c] * (ql_fp8_e4m3_to_f32(sc->data[n * (K / 16) + k / 16]) / global);
            }
        x.want_format[i] = i <= 3 ? "nvfp4" : "f32";
    }
    char *dir = write_folder(
        &f, "{\"quant_method\": \"compressed-tensors\", \"format\": \"nvfp4-pack-quantized\", \"quantization_status\": \"compressed\", "
            "\"ignore\": [\"lm_head\"], \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 4, "
            "\"type\": \"float\", \"symmetric\": true, \"strategy\": \"tensor_group\", \"group_size\": 16}}}}");
    check_loaded(dir, &x);
    expect_free(&x);
    ql_test_rm_flat_dir(dir);
}

/* compressed-tensors int8 per tensor ("int-quantized": I8 weights, a BF16 scale) on every linear, q/k
 * included: the whole-tensor blob's rows are reordered to GGUF order by the converter itself */
static void build_int8_tensor(folder *f, expect_t *x) {
    skeleton(f);
    char nm[160];
    for (int i = 0; i < N_LIN; i++) {
        const int64_t N = g_lin[i].n, K = g_lin[i].k;
        grid g;
        grid_make(&g, N, K, 8, K, true, NULL);
        /* one bf16 scale that fp16 holds exactly */
        float s = ql_fp16_to_fp32(g.s[0]);
        uint32_t u;
        memcpy(&u, &s, 4);
        u &= 0xFFFF0000u;
        memcpy(&s, &u, 4);
        for (int64_t r = 0; r < N; r++) g.s[r] = ql_fp32_to_fp16(s);
        name_of(nm, sizeof nm, i, "weight");
        st_t *w = add(f, nm, "I8", 2, N, K, 1);
        for (int64_t j = 0; j < N * K; j++) w->data[j] = (uint8_t)(int8_t)(g.q[j] - 128);
        name_of(nm, sizeof nm, i, "weight_scale");
        st_t *sc = add(f, nm, "BF16", 2, 1, 1, 2);
        put16(sc->data, (uint16_t)(u >> 16));
        x->w[i] = grid_values(&g);
        x->want_format[i] = "int8_tensor";
        grid_free(&g);
    }
}

static void test_ct_tensor_qk(void **state) {
    (void)state;
    folder f = {0};
    expect_t x = {0};
    build_int8_tensor(&f, &x);
    char *dir = write_folder(&f, "{\"quant_method\": \"compressed-tensors\", \"format\": \"int-quantized\", \"config_groups\": {"
                                 "\"g\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"tensor\"}}}}");
    check_loaded(dir, &x);
    ql_test_rm_flat_dir(dir);
    expect_free(&x);
    /* static input activations need input_scale: without one the folder is refused naming the module */
    memset(&x, 0, sizeof x);
    build_int8_tensor(&f, &x);
    dir = write_folder(&f, "{\"quant_method\": \"compressed-tensors\", \"format\": \"int-quantized\", \"config_groups\": {"
                           "\"g\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"tensor\"},"
                           "\"input_activations\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"tensor\", \"dynamic\": false}}}}");
    check_refused(dir, "input_scale");
    ql_test_rm_flat_dir(dir);
    expect_free(&x);
}

/* bitsandbytes NF4 with double quantization -> nf4_dq (q/k: F32, whose rows are reordered), FP4 -> fp4,
 * and LLM.int8 -> F32 */
static void add_bnb4(folder *f, int i, bool nf4, bool dq, float **w_out) {
    const int64_t N = g_lin[i].n, K = g_lin[i].k, nb = N * K / 64, nb2 = (nb + 255) / 256;
    char nm[160];
    name_of(nm, sizeof nm, i, "weight");
    st_t *w = add(f, nm, "U8", 2, N * K / 2, 1, 1);
    for (int64_t j = 0; j < N * K / 2; j++) w->data[j] = (uint8_t)rnd();
    name_of(nm, sizeof nm, i, "weight.absmax");
    st_t *am = add(f, nm, dq ? "U8" : "F32", 1, nb, 0, dq ? 1 : 4);
    name_of(nm, sizeof nm, i, "weight.quant_map");
    st_t *qm = add(f, nm, "F32", 1, 16, 0, 4);
    const float *table = nf4 ? ql_nf4_code : ql_fp4_code;
    for (int c = 0; c < 16; c++) putf(qm->data + 4 * c, table[c]);
    float offset = 0.0625f, a2[8];
    const float *dyn = ql_bnb_dynamic_map();
    if (dq) {
        name_of(nm, sizeof nm, i, "weight.nested_absmax");
        st_t *na = add(f, nm, "F32", 1, nb2, 0, 4);
        for (int64_t b = 0; b < nb2; b++) a2[b] = 0.01f * (float)(1 + rnd() % 9), putf(na->data + 4 * b, a2[b]);
        name_of(nm, sizeof nm, i, "weight.nested_quant_map");
        st_t *nq = add(f, nm, "F32", 1, 256, 0, 4);
        for (int c = 0; c < 256; c++) putf(nq->data + 4 * c, dyn[c]);
    }
    char qs[200];
    int len = snprintf(qs, sizeof qs, "{\"quant_type\": \"%s\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [%lld, %lld]%s}",
                       nf4 ? "nf4" : "fp4", (long long)N, (long long)K, dq ? ", \"nested_blocksize\": 256, \"nested_offset\": 0.0625" : "");
    snprintf(nm, sizeof nm, "model.layers.0.%s.weight.quant_state.bitsandbytes__%s", g_lin[i].name, nf4 ? "nf4" : "fp4");
    st_t *q = add(f, nm, "U8", 1, len, 0, 1);
    memcpy(q->data, qs, (size_t)len);
    float *x = malloc((size_t)(N * K) * 4);
    for (int64_t b = 0; b < nb; b++) {
        float a;
        if (dq) {
            am->data[b] = (uint8_t)rnd();
            a = dyn[am->data[b]] * a2[b / 256] + offset;
        } else {
            a = 0.01f * (float)(1 + rnd() % 100);
            putf(am->data + 4 * b, a);
        }
        for (int64_t j = b * 64; j < (b + 1) * 64; j++) {
            unsigned c = j % 2 ? w->data[j / 2] & 15 : w->data[j / 2] >> 4;
            x[j] = table[c] * a;
        }
    }
    *w_out = x;
}

static void test_bnb(void **state) {
    (void)state;
    for (int nf4 = 0; nf4 < 2; nf4++) {
        folder f = {0};
        expect_t x = {0};
        skeleton(&f);
        for (int i = 0; i < N_LIN; i++) {
            add_bnb4(&f, i, nf4, nf4, &x.w[i]);
            x.want_format[i] = !nf4 ? "fp4" : g_lin[i].heads ? "f32" : "nf4_dq";
        }
        char *dir = write_folder(&f, nf4 ? "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_use_double_quant\": true}"
                                         : "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"fp4\"}");
        check_loaded(dir, &x);
        expect_free(&x);
        ql_test_rm_flat_dir(dir);
    }
    /* LLM.int8: w = (q * SCB) * float32(1/127), bitsandbytes' order; codes -127..127 with an F32 SCB are
     * qlab's bnb_int8, a -128 (which bnb's rounding never writes) makes down_proj F32 */
    folder f = {0};
    expect_t x = {0};
    skeleton(&f);
    char nm[160];
    for (int i = 0; i < N_LIN; i++) {
        const int64_t N = g_lin[i].n, K = g_lin[i].k;
        name_of(nm, sizeof nm, i, "weight");
        st_t *w = add(&f, nm, "I8", 2, N, K, 1);
        name_of(nm, sizeof nm, i, "SCB");
        st_t *scb = add(&f, nm, "F32", 1, N, 0, 4);
        x.w[i] = malloc((size_t)(N * K) * 4);
        for (int64_t n = 0; n < N; n++) {
            float s = 0.5f + (float)(rnd() % 100) / 50.0f;
            putf(scb->data + 4 * n, s);
            for (int64_t k = 0; k < K; k++) {
                int8_t q = (int8_t)(rnd() % 255 - 127);
                w->data[n * K + k] = (uint8_t)q;
                x.w[i][n * K + k] = (float)q * s * 7.874015718698502e-3f;
            }
        }
        if (i == 6) {
            float s0;
            memcpy(&s0, scb->data, 4);
            w->data[5] = 0x80, x.w[i][5] = -128.0f * s0 * 7.874015718698502e-3f;
        }
        x.want_format[i] = i == 6 ? "f32" : "bnb_int8";
    }
    char *dir = write_folder(&f, "{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true}");
    check_loaded(dir, &x);
    expect_free(&x);
    ql_test_rm_flat_dir(dir);
}

/* ---------------------------------------------------------------- exl2 */

static st_t *find(folder *f, const char *name);

/* One ExLlamaV2 module packed by hand from random codes, 4-bit scale codes, maximum scales and a random
 * input permutation: groups of `rows[i]` inputs at `bits[i]` (n groups, repeated over K). q_weight holds
 * each output's codes down the group as an LSB-first stream of 32-bit words (ExLlamaV2's pack_columns);
 * the expected HF-order weights use the decoder ExLlamaV2 documents (formats/fmt_exl2.h). */
static void add_exl2(folder *f, int i, const int *bits, const int *rows, int n, bool perm16, float **w_out) {
    const int64_t N = g_lin[i].n, K = g_lin[i].k;
    int64_t G = 0, qrows = 0, row = 0;
    int gb[64], gr[64];
    int64_t gq[64];
    for (int j = 0; row < K; j = (j + 1) % n) {
        assert_true(G < 64);
        gb[G] = bits[j], gr[G] = rows[j], gq[G] = qrows;
        qrows += (int64_t)rows[j] * bits[j] / 32;
        row += rows[j];
        G++;
    }
    assert_int_equal(row, K);
    char nm[160];
    name_of(nm, sizeof nm, i, "q_weight");
    st_t *qw = add(f, nm, "I32", 2, qrows, N, 4);
    name_of(nm, sizeof nm, i, "q_scale");
    st_t *qs = add(f, nm, "I32", 2, G, N / 8, 4);
    name_of(nm, sizeof nm, i, "q_scale_max");
    st_t *sm = add(f, nm, "F16", 1, G, 0, 2);
    name_of(nm, sizeof nm, i, "q_groups");
    st_t *qg = add(f, nm, "I16", 1, 2 * G, 0, 2);
    name_of(nm, sizeof nm, i, "q_invperm");
    st_t *ip = add(f, nm, perm16 ? "I16" : "I32", 1, K, 0, perm16 ? 2 : 4);
    name_of(nm, sizeof nm, i, "q_perm");
    st_t *pp = add(f, nm, perm16 ? "I16" : "I32", 1, K, 0, perm16 ? 2 : 4);
    int64_t *perm = malloc((size_t)K * sizeof *perm);
    for (int64_t k = 0; k < K; k++) perm[k] = k;
    for (int64_t k = K - 1; k > 0; k--) { /* Fisher-Yates */
        int64_t j = rnd() % (uint32_t)(k + 1), tmp = perm[k];
        perm[k] = perm[j], perm[j] = tmp;
    }
    for (int64_t p = 0; p < K; p++) {
        if (perm16) put16(pp->data + 2 * p, (uint16_t)perm[p]), put16(ip->data + 2 * perm[p], (uint16_t)p);
        else put32(pp->data + 4 * p, (uint32_t)perm[p]), put32(ip->data + 4 * perm[p], (uint32_t)p);
    }
    float *w = malloc((size_t)(N * K) * sizeof *w), *scale = malloc((size_t)N * sizeof *scale);
    row = 0;
    for (int64_t g = 0; g < G; g++) {
        uint16_t smax = ql_fp32_to_fp16(0.05f + (float)(rnd() % 100) / 200.0f);
        put16(sm->data + 2 * g, smax);
        put16(qg->data + 4 * g, (uint16_t)gb[g]), put16(qg->data + 4 * g + 2, (uint16_t)gq[g]);
        for (int64_t c = 0; c < N; c++) {
            unsigned q = rnd() % 16; /* qs - 1 */
            uint8_t *wp = qs->data + 4 * (g * (N / 8) + c / 8);
            put32(wp, (uint32_t)(wp[0] | wp[1] << 8 | wp[2] << 16 | (uint32_t)wp[3] << 24) | q << (4 * (c % 8)));
            scale[c] = ql_exl2_scale((int)q + 1, smax);
        }
        for (int r = 0; r < gr[g]; r++)
            for (int64_t c = 0; c < N; c++) {
                unsigned code = rnd() % (1u << gb[g]);
                for (int b = 0; b < gb[g]; b++) {
                    int64_t bit = gq[g] * 32 + (int64_t)r * gb[g] + b;
                    qw->data[4 * ((bit >> 5) * N + c) + ((bit & 31) >> 3)] |= (uint8_t)(((code >> b) & 1) << (bit & 7));
                }
                w[c * K + perm[row + r]] = ql_exl2_value((int)code, gb[g], scale[c]);
            }
        row += gr[g];
    }
    free(perm), free(scale);
    *w_out = w;
}

static void test_exl2(void **state) {
    (void)state;
    /* a layout of the registry (every group 32 inputs at 4 bits: exl2_4b32 at K = 64 and 128) and one no
     * entry has (3 bits before 5 bits: F32), with 32- and 16-bit permutations */
    for (int layout = 0; layout < 2; layout++) {
        folder f = {0};
        expect_t x = {0};
        skeleton(&f);
        static const int b4[] = {4}, r32[] = {32}, b35[] = {3, 5}, r3232[] = {32, 32};
        for (int i = 0; i < N_LIN; i++) {
            add_exl2(&f, i, layout ? b35 : b4, layout ? r3232 : r32, layout ? 2 : 1, i % 2, &x.w[i]);
            x.want_format[i] = layout ? "f32" : "exl2_4b32";
        }
        char *dir = write_folder(&f, "{\"quant_method\": \"exl2\", \"version\": \"0.2.0\", \"bits\": 4.0, \"head_bits\": 16}");
        check_loaded(dir, &x);
        expect_free(&x);
        ql_test_rm_flat_dir(dir);
    }
    /* hostile: q_invperm that is no permutation, q_perm that is not its inverse, q_groups that do not tile K */
    for (int harm = 0; harm < 3; harm++) {
        folder f = {0};
        skeleton(&f);
        static const int b4[] = {4}, r32[] = {32};
        float *w;
        for (int i = 0; i < N_LIN; i++) {
            add_exl2(&f, i, b4, r32, 1, false, &w);
            free(w);
        }
        const char *needle = harm == 0 ? "o_proj.q_invperm" : harm == 1 ? "o_proj.q_perm" : "o_proj.q_groups";
        if (harm == 0) put32(find(&f, "model.layers.0.self_attn.o_proj.q_invperm")->data + 4, 0);
        else if (harm == 1) {
            uint8_t *p = find(&f, "model.layers.0.self_attn.o_proj.q_perm")->data, t[4];
            memcpy(t, p, 4), memcpy(p, p + 4, 4), memcpy(p + 4, t, 4);
        } else put16(find(&f, "model.layers.0.self_attn.o_proj.q_groups")->data + 4, 5); /* group 1: 5 bits in 4 words */
        char *dir = write_folder(&f, "{\"quant_method\": \"exl2\"}");
        check_refused(dir, needle);
        ql_test_rm_flat_dir(dir);
    }
}

/* ---------------------------------------------------------------- hostile folders */

/* a gptq folder built with one part damaged by `harm`, refused naming `needle` */
static void gptq_harmed(void (*harm)(folder *f), const char *cfg, const char *needle) {
    folder f = {0};
    skeleton(&f);
    for (int i = 0; i < N_LIN; i++) {
        grid g;
        grid_make(&g, g_lin[i].n, g_lin[i].k, 4, 32, false, NULL);
        add_gptq(&f, i, &g);
        grid_free(&g);
    }
    harm(&f);
    char *dir = write_folder(&f, cfg);
    check_refused(dir, needle);
    ql_test_rm_flat_dir(dir);
}

static st_t *find(folder *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    fail_msg("no %s", name);
    return NULL;
}
static void harm_qzeros_shape(folder *f) {
    st_t *t = find(f, "model.layers.0.mlp.up_proj.qzeros");
    t->shape[1] -= 1;
    t->n -= (size_t)t->shape[0] * 4; /* a consistent tensor of the wrong shape */
}
static void harm_gidx(folder *f) { put32(find(f, "model.layers.0.self_attn.o_proj.g_idx")->data + 8, 1000); }
static void harm_scales_dtype(folder *f) { snprintf(find(f, "model.layers.0.self_attn.v_proj.scales")->dtype, 12, "I16"); }
static void harm_missing(folder *f) {
    st_t *t = find(f, "model.layers.0.mlp.down_proj.scales");
    snprintf(t->name, sizeof t->name, "model.layers.0.mlp.down_proj.scalez");
}
static void harm_nothing(folder *f) { (void)f; }

static void test_hostile(void **state) {
    (void)state;
    const char *cfg = "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"sym\": false}";
    /* a shape that disagrees: the data size follows the shape, so the tensor itself is consistent */
    gptq_harmed(harm_qzeros_shape, cfg, "mlp.up_proj.qzeros");
    gptq_harmed(harm_gidx, cfg, "o_proj.g_idx");
    gptq_harmed(harm_scales_dtype, cfg, "v_proj.scales");
    gptq_harmed(harm_missing, cfg, "down_proj");
    gptq_harmed(harm_nothing, "{\"quant_method\": \"gptq\", \"bits\": 5}", "bits 5");
    gptq_harmed(harm_nothing, "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 64}", "qzeros");
    gptq_harmed(harm_nothing, "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 32}", "qweight");
    gptq_harmed(harm_nothing, "{\"quant_method\": \"marlin\"}", "marlin");
    gptq_harmed(harm_nothing, "{\"bits\": 4}", "quant_method");
    gptq_harmed(harm_nothing, "{\"quant_method\": \"compressed-tensors\", \"config_groups\": {}}", "qweight");
    /* integer tensors without any quantization_config: the plain loader says what is missing */
    gptq_harmed(harm_nothing, "null", "quantization_config");
    /* bitsandbytes quant state that is not JSON */
    folder f = {0};
    skeleton(&f);
    float *w;
    for (int i = 0; i < N_LIN; i++) {
        add_bnb4(&f, i, true, false, &w);
        free(w);
    }
    memset(find(&f, "model.layers.0.self_attn.k_proj.weight.quant_state.bitsandbytes__nf4")->data, '[', 4);
    char *dir = write_folder(&f, "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}");
    check_refused(dir, "k_proj.weight.quant_state");
    ql_test_rm_flat_dir(dir);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq),        cmocka_unit_test(test_gptq_bits), cmocka_unit_test(test_awq),
        cmocka_unit_test(test_compressed_tensors), cmocka_unit_test(test_ct_tensor_qk), cmocka_unit_test(test_ct_nvfp4), cmocka_unit_test(test_bnb),
        cmocka_unit_test(test_exl2),        cmocka_unit_test(test_hostile),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof tests[0]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
