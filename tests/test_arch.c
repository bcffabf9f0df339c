/* test_arch.c — the architecture descriptions (core/arch.c) against llama.cpp: the six tiny models in
 * ../shared/testdata/arch-variants (llama with llama3 rope_freqs, qwen2, qwen3, gemma2, gemma3, phi3) give
 * llama.cpp's logits within 1e-4 (Gemma 2e-3); switching each feature off moves them by about what that
 * folder's README measured (so every feature is really exercised); unknown architectures, missing tensors
 * and unimplemented RoPE scaling are refused by name; Q4_K_M gives llama.cpp's per-tensor types (its
 * llama_tensor_get_type, written out independently below) and the quantized files run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/infer.h"
#include "core/model.h"
#include "core/synth.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "pipeline/plan.h"
#include "presets/preset.h"
#include "tests/test_util.h"
#include "tests/test_synth_logits.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { N_TOK = 32, N_VOCAB = 512 };

static const char *MODELS[] = {"llama3", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"};

static float tolerance(const char *name) { return strncmp(name, "gemma", 5) == 0 ? 2e-3f : 1e-4f; }

static bool model_path(char *buf, size_t cap, const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "testdata/arch-variants/%s.gguf", name);
    return shared_path(buf, cap, rel);
}

static void read_tokens(int32_t *tok) {
    char p[512];
    if (!shared_path(p, sizeof p, "testdata/arch-variants/tokens.txt")) skip();
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    for (int i = 0; i < N_TOK; i++) assert_int_equal(fscanf(f, "%d", &tok[i]), 1);
    fclose(f);
}

static void read_reference(const char *name, float *ref) {
    char rel[128], p[512];
    snprintf(rel, sizeof rel, "testdata/arch-variants/logits-%s.f32", name);
    if (!shared_path(p, sizeof p, rel)) skip();
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    assert_int_equal(fread(ref, sizeof(float), N_TOK * N_VOCAB, f), N_TOK * N_VOCAB);
    fclose(f);
}


/* max |a - b| over rows [r0, r1) */
static float max_diff(const float *a, const float *b, int r0, int r1) {
    float d = 0;
    for (size_t i = (size_t)r0 * N_VOCAB; i < (size_t)r1 * N_VOCAB; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static void test_logits_match_llamacpp(void **state) {
    (void)state;
    int32_t tok[N_TOK];
    read_tokens(tok);
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB), *got = malloc(sizeof(float) * N_TOK * N_VOCAB);
    for (size_t i = 0; i < QL_ARRAY_LEN(MODELS); i++) {
        char p[512];
        if (!model_path(p, sizeof p, MODELS[i])) skip();
        read_reference(MODELS[i], ref);
        ql_model *m;
        assert_int_equal(ql_model_load(p, &m), QL_OK);
        ql_test_run_tokens(m, tok, N_TOK, got);
        float d = max_diff(got, ref, 0, N_TOK);
        printf("  %-7s max |qlab - llama.cpp| = %.3g (tolerance %g)\n", MODELS[i], d, tolerance(MODELS[i]));
        if (!(d <= tolerance(MODELS[i]))) fail_msg("%s: logits differ from llama.cpp by %g", MODELS[i], d);
        ql_model_free(m);
    }
    free(ref);
    free(got);
}

/* ---- ablations: each feature switched off in the loaded model ---- */

static void no_rope_freqs(ql_model *m) { m->rope_freqs = NULL; }
static void flip_rope_pairs(ql_model *m) { m->cfg.rope_neox = !m->cfg.rope_neox; }
static void no_embd_scale(ql_model *m) { m->cfg.embd_scale = 1.0f; }
static void no_attn_softcap(ql_model *m) { m->cfg.attn_softcap = 0; }
static void no_final_softcap(ql_model *m) { m->cfg.final_softcap = 0; }
/* the window wider than the sequence: the sliding layers keep their RoPE, only the mask goes */
static void no_window(ql_model *m) { m->cfg.n_swa = 1 << 20; }
/* the global layers' RoPE (base 1e6 with its linear x8) on the sliding layers too */
static void swa_global_base(ql_model *m) {
    m->cfg.rope_base_swa = m->cfg.rope_base;
    m->cfg.rope_scale_swa = m->cfg.rope_scale;
}
static void no_linear_scaling(ql_model *m) { m->cfg.rope_scale = 1.0f; }
static void no_biases(ql_model *m) {
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].bq = m->layers[l].bk = m->layers[l].bv = NULL;
}
static void no_qk_norm(ql_model *m) {
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].q_norm = m->layers[l].k_norm = NULL;
}
static void no_post_norms(ql_model *m) {
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].post_attn_norm = m->layers[l].post_ffn_norm = NULL;
}
static void swap_gate_up(ql_model *m) {
    for (int l = 0; l < m->cfg.n_layer; l++) {
        ql_gguf_tensor *t = m->layers[l].w_gate;
        m->layers[l].w_gate = m->layers[l].w_up;
        m->layers[l].w_up = t;
    }
}

typedef struct {
    const char *model, *what;
    void (*ablate)(ql_model *);
    float readme;      /* the README's max change (float64 NumPy pass) */
    int rows_unchanged; /* rows 0..n-1 must not move (a window of 8 hides nothing before position 8) */
} ablation;

static const ablation ABLATIONS[] = {
    {"llama3", "no rope_freqs", no_rope_freqs, 0.068f, 0},
    {"llama3", "normal -> NEOX", flip_rope_pairs, 7.6f, 0},
    {"qwen2", "no q/k/v biases", no_biases, 12.4f, 0},
    {"qwen2", "NEOX -> normal", flip_rope_pairs, 6.6f, 0},
    {"qwen3", "no q/k norm", no_qk_norm, 2.6f, 0},
    {"qwen3", "NEOX -> normal", flip_rope_pairs, 6.9f, 0},
    {"gemma2", "no x8 embedding scale", no_embd_scale, 5.5f, 0},
    {"gemma2", "no post norms", no_post_norms, 3.2f, 0},
    {"gemma2", "no attention soft-cap", no_attn_softcap, 0.29f, 0},
    {"gemma2", "no final soft-cap", no_final_softcap, 12.7f, 0},
    {"gemma2", "no sliding window", no_window, 3.5f, 8},
    {"gemma2", "NEOX -> normal", flip_rope_pairs, 2.8f, 0},
    {"gemma3", "no x8 embedding scale", no_embd_scale, 11.3f, 0},
    {"gemma3", "no post norms", no_post_norms, 5.0f, 0},
    {"gemma3", "no q/k norm", no_qk_norm, 1.5f, 0},
    {"gemma3", "no sliding window", no_window, 8.5f, 8},
    {"gemma3", "sliding layers with the global RoPE", swa_global_base, 4.7f, 0},
    {"gemma3", "no linear x8 on the global layer", no_linear_scaling, 0.77f, 0},
    {"gemma3", "NEOX -> normal", flip_rope_pairs, 4.5f, 0},
    {"phi3", "gate and up halves swapped", swap_gate_up, 9.9f, 0},
    {"phi3", "NEOX -> normal", flip_rope_pairs, 6.8f, 0},
};

static void test_ablations_move_logits(void **state) {
    (void)state;
    int32_t tok[N_TOK];
    read_tokens(tok);
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB), *got = malloc(sizeof(float) * N_TOK * N_VOCAB);
    for (size_t i = 0; i < QL_ARRAY_LEN(ABLATIONS); i++) {
        const ablation *a = &ABLATIONS[i];
        char p[512];
        if (!model_path(p, sizeof p, a->model)) skip();
        read_reference(a->model, ref);
        ql_model *m;
        assert_int_equal(ql_model_load(p, &m), QL_OK);
        a->ablate(m);
        ql_test_run_tokens(m, tok, N_TOK, got);
        const float tol = tolerance(a->model), d = max_diff(got, ref, 0, N_TOK);
        printf("  %-7s %-38s moves the logits by %.3g (README: %g)\n", a->model, a->what, d, a->readme);
        /* far beyond the tolerance, and the size llama.cpp's semantics give (an ablation of something
         * else would land elsewhere) */
        if (!(d > 10 * tol && d > 0.5f * a->readme && d < 2.0f * a->readme))
            fail_msg("%s, %s: logits moved by %g, README says %g", a->model, a->what, d, a->readme);
        if (a->rows_unchanged) {
            float early = max_diff(got, ref, 0, a->rows_unchanged);
            if (!(early <= tol)) fail_msg("%s, %s: rows 0-%d moved by %g", a->model, a->what, a->rows_unchanged - 1, early);
        }
        ql_model_free(m);
    }
    free(ref);
    free(got);
}

/* ---- refusals: one message naming the model and what is missing ---- */

static void expect_refused(const char *name, void (*edit)(ql_gguf *), const char *want1, const char *want2) {
    char p[512];
    if (!model_path(p, sizeof p, name)) skip();
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    edit(g);
    ql_model *m = NULL;
    assert_int_not_equal(ql_model_from_gguf(g, p, &m), QL_OK); /* takes g either way */
    assert_null(m);
    const char *e = ql_last_error();
    printf("  refused: %s\n", e);
    assert_non_null(strstr(e, p));
    assert_non_null(strstr(e, want1));
    if (want2) assert_non_null(strstr(e, want2));
    assert_null(strchr(e, '\n'));
}

static void unknown_arch(ql_gguf *g) { ql_gguf_set_str(g, "general.architecture", "mamba2"); }
static void drop_k_norm(ql_gguf *g) {
    int64_t i = ql_gguf_find_tensor(g, "blk.1.attn_k_norm.weight");
    assert_true(i >= 0);
    strcpy(g->tensors[i].name, "blk.1.attn_k_nrm.weight"); /* shorter: fits the name's buffer */
}
static void drop_qkv(ql_gguf *g) {
    int64_t i = ql_gguf_find_tensor(g, "blk.0.attn_qkv.weight");
    assert_true(i >= 0);
    strcpy(g->tensors[i].name, "blk.0.attn_qk.weight");
}
static void longrope(ql_gguf *g) { ql_gguf_set_str(g, "gemma3.rope.scaling.type", "longrope"); }
static void add_factor(ql_gguf *g, const char *name) {
    static const float f[8] = {1, 1, 1, 1, 2, 2, 2, 2};
    int64_t ne[4] = {8, 1, 1, 1};
    ql_gguf_add_tensor(g, name, QL_TYPE_F32, 1, ne, f);
}
static void long_factors_only(ql_gguf *g) { add_factor(g, "rope_factors_long.weight"); }
static void bad_attn_factor(ql_gguf *g) { ql_gguf_set_f32(g, "phi3.rope.scaling.attn_factor", -1.0f); }

static void test_refusals(void **state) {
    (void)state;
    expect_refused("qwen3", unknown_arch, "architecture 'mamba2' is not supported", "gemma3");
    expect_refused("qwen3", drop_k_norm, "missing tensor 'blk.1.attn_k_norm.weight'", NULL);
    expect_refused("phi3", drop_qkv, "missing tensor 'blk.0.attn_qkv.weight'", NULL);
    expect_refused("gemma3", longrope, "rope scaling type 'longrope'", "not implemented");
    /* LongRoPE: phi3's (llama.cpp loads the factors for it alone), both factor vectors or none */
    expect_refused("qwen2", long_factors_only, "architecture 'qwen2' has no LongRoPE factors", NULL);
    expect_refused("phi3", long_factors_only, "missing tensor 'rope_factors_short.weight'", NULL);
    expect_refused("phi3", bad_attn_factor, "rope.scaling.attn_factor must be a positive number", NULL);

    /* the command line: one line on stderr, exit status non-zero */
    const char *qlab = getenv("QLAB");
    char p[512];
    if (!qlab || !model_path(p, sizeof p, "qwen3")) return;
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    drop_k_norm(g);
    char out[] = "/tmp/qlab-arch-missing-XXXXXX.gguf", err[] = "/tmp/qlab-arch-err-XXXXXX";
    int fd = mkstemps(out, 5);
    assert_true(fd >= 0);
    close(fd);
    fd = mkstemp(err);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(ql_gguf_write(g, out, NULL), QL_OK);
    ql_gguf_free(g);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s info %s >/dev/null 2>%s", qlab, out, err);
    int rc = system(cmd);
    assert_true(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) != 0);
    FILE *f = fopen(err, "r");
    char line[1024], extra[16];
    assert_non_null(fgets(line, sizeof line, f));
    assert_non_null(strstr(line, "missing tensor 'blk.1.attn_k_norm.weight'"));
    assert_null(fgets(extra, sizeof extra, f)); /* one line */
    fclose(f);
    unlink(out);
    unlink(err);
}

/* ---- Q4_K_M: llama.cpp's llama_tensor_get_type (34af94cd), written out for the tensors these models have ---- */

static bool more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/* llama.cpp's fallback when a row does not fit the block (convert_incompatible_tensor) */
static const char *fit(const char *type, int64_t ncols) {
    int block = strcmp(type, "q8_0") == 0 ? 32 : 256;
    if (ncols % block == 0) return type;
    const char *fb = !strcmp(type, "q4_k") ? "q5_0" : !strcmp(type, "q5_k") ? "q5_1" : !strcmp(type, "q6_k") ? "q8_0" : "f16";
    return ncols % 32 == 0 ? fb : "f16";
}

static const char *llamacpp_q4_k_m(const char *name, int64_t ncols, int n_layer, bool has_output) {
    int layer = -1;
    sscanf(name, "blk.%d.", &layer);
    if (!strcmp(name, "output.weight") || (!has_output && !strcmp(name, "token_embd.weight")))
        return ncols % 256 ? "q8_0" : "q6_k"; /* its output rule: Q8_0 when the row does not fit Q4_K */
    if (strstr(name, "attn_v.weight")) return fit(more_bits(layer, n_layer) ? "q6_k" : "q4_k", ncols);
    if (strstr(name, "ffn_down")) return fit(more_bits(layer, n_layer) ? "q6_k" : "q4_k", ncols);
    if (strstr(name, "attn_qkv.weight")) return fit("q5_k", ncols);
    return fit("q4_k", ncols);
}

static void test_q4_k_m_types(void **state) {
    (void)state;
    ql_preset *pr;
    assert_int_equal(ql_preset_load("Q4_K_M", &pr), QL_OK);
    for (size_t i = 0; i < QL_ARRAY_LEN(MODELS); i++) {
        char p[512];
        if (!model_path(p, sizeof p, MODELS[i])) skip();
        ql_model *m;
        assert_int_equal(ql_model_load(p, &m), QL_OK);
        ql_plan *plan;
        assert_int_equal(ql_preset_resolve(pr, m, false, &plan), QL_OK);
        int n = 0;
        for (int64_t t = 0; t < m->gguf->n_tensors; t++) {
            const ql_gguf_tensor *gt = &m->gguf->tensors[t];
            const ql_plan_entry *e = ql_plan_find(plan, gt->name);
            if (!ql_tensor_is_quantizable(gt->name, gt->n_dims, gt->ne)) {
                assert_null(e);
                continue;
            }
            assert_non_null(e);
            const char *want = llamacpp_q4_k_m(gt->name, gt->ne[0], m->cfg.n_layer, !m->cfg.tied_output);
            if (strcmp(e->format->name, want) != 0)
                fail_msg("%s %s: plan says %s, llama.cpp %s", MODELS[i], gt->name, e->format->name, want);
            n++;
        }
        assert_true(n >= 7 * m->cfg.n_layer / 2); /* every layer's matrices were compared */
        ql_plan_free(plan);
        ql_model_free(m);
    }
    ql_preset_free(pr);
}

/* llama.cpp's other attn_qkv rules (Q3_K_M/L: Q4_K, Q5_K_M: Q6_K), seen through the 64-wide fallbacks:
 * without them phi3's attn_qkv would get the default's fallback (Q4_0 for Q3_K, Q5_1 for Q5_K) */
static void test_attn_qkv_rules(void **state) {
    (void)state;
    char p[512];
    if (!model_path(p, sizeof p, "phi3")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(p, &m), QL_OK);
    static const struct { const char *preset, *qkv, *q_default; } want[] = {
        {"Q3_K_M", "q5_0", "q4_0"}, {"Q3_K_L", "q5_0", "q4_0"}, {"Q4_K_M", "q5_1", "q5_0"}, {"Q5_K_M", "q8_0", "q5_1"},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(want); i++) {
        ql_preset *pr;
        ql_plan *plan;
        assert_int_equal(ql_preset_load(want[i].preset, &pr), QL_OK);
        assert_int_equal(ql_preset_resolve(pr, m, false, &plan), QL_OK);
        const ql_plan_entry *qkv = ql_plan_find(plan, "blk.1.attn_qkv.weight");
        const ql_plan_entry *up = ql_plan_find(plan, "blk.1.ffn_up.weight"); /* fused gate+up: the default */
        assert_non_null(qkv);
        assert_non_null(up);
        if (strcmp(qkv->format->name, want[i].qkv) || strcmp(up->format->name, want[i].q_default))
            fail_msg("%s: attn_qkv %s (want %s), ffn_up %s (want %s)", want[i].preset, qkv->format->name, want[i].qkv,
                     up->format->name, want[i].q_default);
        ql_plan_free(plan);
        ql_preset_free(pr);
    }
    ql_model_free(m);
}

/* qlab quant --preset Q4_K_M, then qlab logits and qlab ppl on the result, for each model */
static void test_quantized_models_run(void **state) {
    (void)state;
    const char *qlab = getenv("QLAB");
    char tokf[512], text[512];
    if (!qlab) {
        printf("SKIP: QLAB (the qlab binary) not set\n");
        skip();
    }
    if (!shared_path(tokf, sizeof tokf, "testdata/arch-variants/tokens.txt") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt"))
        skip();
    int32_t tok[N_TOK];
    read_tokens(tok);
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB), *got = malloc(sizeof(float) * N_TOK * N_VOCAB);
    char dir[] = "/tmp/qlab-arch-q-XXXXXX";
    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < QL_ARRAY_LEN(MODELS); i++) {
        char p[512], q[600], lg[600], cmd[4096];
        if (!model_path(p, sizeof p, MODELS[i])) skip();
        snprintf(q, sizeof q, "%s/%s-q4km.gguf", dir, MODELS[i]);
        snprintf(lg, sizeof lg, "%s/%s.f32", dir, MODELS[i]);
        snprintf(cmd, sizeof cmd,
                 "%s quant %s --preset Q4_K_M -o %s 2>/dev/null && %s logits %s --tokens %s -o %s 2>/dev/null && "
                 "%s ppl %s --text %s --ctx 128 --chunks 2 --json 2>/dev/null | grep -q '\"ppl\"'",
                 qlab, p, q, qlab, q, tokf, lg, qlab, q, text);
        if (system(cmd) != 0) fail_msg("%s: %s failed", MODELS[i], cmd);
        FILE *f = fopen(lg, "rb");
        assert_non_null(f);
        assert_int_equal(fread(got, sizeof(float), N_TOK * N_VOCAB, f), N_TOK * N_VOCAB);
        fclose(f);
        read_reference(MODELS[i], ref);
        /* 4-8 bit weights: near the F32 logits (which span about 15), not equal */
        float d = max_diff(got, ref, 0, N_TOK);
        printf("  %-7s Q4_K_M logits within %.3g of F32 llama.cpp\n", MODELS[i], d);
        assert_true(d > 1e-4f && d < 5.0f);
        unlink(q);
        unlink(lg);
    }
    rmdir(dir);
    free(ref);
    free(got);
}

/* ---- YaRN (no llama.cpp reference file): the properties of ggml's rope_yarn on the CPU backend's op ---- */

static void test_yarn_rope(void **state) {
    (void)state;
    char p[512];
    if (!model_path(p, sizeof p, "qwen2")) skip();
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    ql_gguf_set_str(g, "qwen2.rope.scaling.type", "yarn");
    ql_gguf_set_f32(g, "qwen2.rope.scaling.factor", 4.0f);
    ql_gguf_set_u32(g, "qwen2.rope.scaling.original_context_length", 64);
    ql_model *m;
    assert_int_equal(ql_model_from_gguf(g, p, &m), QL_OK);
    assert_true(m->cfg.rope_yarn && m->cfg.rope_neox);
    const ql_backend_ops *ops = ql_backend_find("cpu");
    void *be;
    assert_int_equal(ops->create(m, 1, &be), QL_OK);
    /* head_dim 16, base 1e6, original context 64: ggml's correction range is pairs [0, 2] */
    enum { T = 21, HD = 16, HALF = 8 };
    float x[T * HD], cs[HD];
    memset(x, 0, sizeof x);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HALF; i++) x[t * HD + i] = 1.0f; /* NEOX pair (i, i+8) = (1, 0) */
    assert_int_equal(ops->rope(be, x, T, 1, 0, T, cs), QL_OK);
    const float mscale = 1.0f + 0.1f * logf(4.0f); /* the attention temperature YaRN folds into cos/sin */
    struct { int t, pair; double angle; } want[] = {
        {3, 0, 3.0},                                           /* below the range: extrapolated, unscaled */
        {10, 1, 10 * pow(1e6, -2.0 / 16) * (0.5 + 0.5 / 4)},   /* halfway up the ramp: half and half */
        {20, 2, 20 * pow(1e6, -4.0 / 16) / 4},                 /* the range's end: interpolated, / factor */
        {20, 5, 20 * pow(1e6, -10.0 / 16) / 4},
    };
    for (size_t k = 0; k < QL_ARRAY_LEN(want); k++) {
        const float *r = x + want[k].t * HD;
        double c = r[want[k].pair], sn = r[want[k].pair + HALF];
        double ang = atan2(sn, c), mag = hypot(c, sn);
        if (fabs(ang - want[k].angle) > 1e-5 || fabs(mag - mscale) > 1e-5)
            fail_msg("yarn pair %d at %d: angle %g (want %g), magnitude %g (want %g)", want[k].pair, want[k].t, ang,
                     want[k].angle, mag, mscale);
    }
    ops->destroy(be);
    ql_model_free(m);
}

/* ---- Phi-3 LongRoPE (no llama.cpp reference file): the phi3 model given rope_factors_long/short, an attention
 * factor and an original context of 48, checked against the formula in double precision and end to end ---- */

enum { LR_HALF = 8, LR_ORIG = 48 };

/* The phi3 test model with LongRoPE factors `lf` (long) and `sf` (short), attention factor `af`. */
static ql_model *phi3_longrope(const float *lf, const float *sf, float af) {
    char p[512];
    if (!model_path(p, sizeof p, "phi3")) return NULL;
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    static const char *names[2] = {"rope_factors_long.weight", "rope_factors_short.weight"};
    const float *src[2] = {lf, sf};
    for (int k = 0; k < 2; k++) {
        float *f = malloc(LR_HALF * sizeof *f);
        memcpy(f, src[k], LR_HALF * sizeof *f);
        ql_gguf_adopt(g, f);
        int64_t ne[4] = {LR_HALF, 1, 1, 1};
        ql_gguf_add_tensor(g, names[k], QL_TYPE_F32, 1, ne, f);
    }
    if (af != 1.0f) ql_gguf_set_f32(g, "phi3.rope.scaling.attn_factor", af);
    ql_gguf_set_u32(g, "phi3.rope.scaling.original_context_length", LR_ORIG);
    ql_model *m;
    if (ql_model_from_gguf(g, p, &m)) fail_msg("%s", ql_last_error());
    return m;
}

static const float LR_LONG[LR_HALF] = {1.0f, 1.25f, 1.5f, 2.0f, 3.0f, 5.0f, 8.0f, 13.0f};
static const float LR_SHORT[LR_HALF] = {1.0f, 1.0f, 1.05f, 1.1f, 1.2f, 1.4f, 1.7f, 2.1f};

/* The rope op: pair i at position t turns by t·10000^(-2i/16)/factor[i] (short factors for a context of at
 * most 48, long ones above) and has length attn_factor, computed here in double from the formula alone. */
static void test_longrope_formula(void **state) {
    (void)state;
    const float af = 1.1902f;
    ql_model *m = phi3_longrope(LR_LONG, LR_SHORT, af);
    if (!m) skip();
    assert_non_null(m->rope_long);
    assert_true(m->cfg.n_ctx_orig == LR_ORIG && m->cfg.rope_attn_factor == af && m->cfg.rope_neox);
    const ql_backend_ops *ops = ql_backend_find("cpu");
    void *be;
    assert_int_equal(ops->create(m, 1, &be), QL_OK);
    enum { T = 40, HD = 16 };
    const int ctxs[] = {T, LR_ORIG, LR_ORIG + 1, 4096};
    for (size_t c = 0; c < QL_ARRAY_LEN(ctxs); c++) {
        const float *fac = ctxs[c] > LR_ORIG ? LR_LONG : LR_SHORT; /* llama.cpp: n_ctx_per_seq > n_ctx_orig_yarn */
        float x[T * HD], cs[HD];
        memset(x, 0, sizeof x);
        for (int t = 0; t < T; t++)
            for (int i = 0; i < LR_HALF; i++) x[t * HD + i] = 1.0f; /* NEOX pair (i, i+8) = (1, 0) */
        assert_int_equal(ops->rope(be, x, T, 1, 0, ctxs[c], cs), QL_OK);
        double worst = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < LR_HALF; i++) {
                double ang = t * pow(10000.0, -2.0 * i / HD) / fac[i];
                double dc = x[t * HD + i] - af * cos(ang), ds = x[t * HD + i + LR_HALF] - af * sin(ang);
                worst = fmax(worst, fmax(fabs(dc), fabs(ds)));
            }
        printf("  LongRoPE ctx %4d (%s factors): max |op - formula| = %.3g\n", ctxs[c],
               fac == LR_LONG ? "long" : "short", worst);
        if (!(worst < 2e-5)) fail_msg("LongRoPE at ctx %d: off the formula by %g", ctxs[c], worst);
    }
    ops->destroy(be);
    ql_model_free(m);
}


static void write_longrope_model(const char *path, const float *lf, const float *sf, float af) {
    ql_model *m = phi3_longrope(lf, sf, af);
    assert_non_null(m);
    assert_int_equal(ql_gguf_write(m->gguf, path, NULL), QL_OK);
    ql_model_free(m);
}

/* End to end: unit short factors and attention factor 1 within a context of 32 leave llama.cpp's phi3
 * logits as they are; in a context above 48 the long factors turn pair i exactly as a rope_freqs tensor of the
 * same values does (a separate code path: llama3's); the attention factor changes the logits; and
 * `qlab logits --ctx` / `qlab ppl --ctx` choose the factors the same way. */
static void test_longrope_logits(void **state) {
    (void)state;
    int32_t tok[N_TOK];
    read_tokens(tok);
    const float ones[LR_HALF] = {1, 1, 1, 1, 1, 1, 1, 1};
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB), *got = malloc(sizeof(float) * N_TOK * N_VOCAB),
          *alt = malloc(sizeof(float) * N_TOK * N_VOCAB);
    read_reference("phi3", ref);
    ql_model *m = phi3_longrope(LR_LONG, ones, 1.0f);
    if (!m) skip();
    ql_test_run_ctx(m, tok, N_TOK, N_TOK, got);
    float d_short = max_diff(got, ref, 0, N_TOK);
    ql_test_run_ctx(m, tok, N_TOK, LR_ORIG + 16, got);
    float d_long = max_diff(got, ref, 0, N_TOK);
    ql_model_free(m);
    /* the long factors as llama3's rope_freqs on the plain model */
    char p[512];
    assert_true(model_path(p, sizeof p, "phi3"));
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    float *rf = malloc(sizeof LR_LONG);
    memcpy(rf, LR_LONG, sizeof LR_LONG);
    ql_gguf_adopt(g, rf);
    int64_t ne[4] = {LR_HALF, 1, 1, 1};
    ql_gguf_add_tensor(g, "rope_freqs.weight", QL_TYPE_F32, 1, ne, rf);
    assert_int_equal(ql_model_from_gguf(g, p, &m), QL_OK);
    ql_test_run_ctx(m, tok, N_TOK, N_TOK, alt);
    ql_model_free(m);
    float d_freqs = max_diff(got, alt, 0, N_TOK);
    /* the attention factor: cos and sin of q and k scaled, so every attention score by its square */
    m = phi3_longrope(LR_LONG, ones, 1.5f);
    ql_test_run_ctx(m, tok, N_TOK, N_TOK, alt);
    ql_model_free(m);
    float d_af = max_diff(alt, ref, 0, N_TOK);
    printf("  LongRoPE logits: short (unit) factors %.3g from llama.cpp's phi3, long factors move them %.3g and "
           "equal rope_freqs within %.3g; attn_factor 1.5 moves them %.3g\n",
           d_short, d_long, d_freqs, d_af);
    assert_true(d_short <= 1e-4f);
    assert_true(d_long > 0.05f);
    assert_true(d_freqs <= 1e-5f);
    assert_true(d_af > 0.05f && max_diff(alt, ref, 0, 1) <= 1e-4f); /* row 0 attends to itself only */

    /* the command line: --ctx above the original context takes the long factors */
    const char *qlab = getenv("QLAB");
    char text[512];
    if (qlab && shared_path(text, sizeof text, "data/tinystories-valid.txt")) {
        char dir[] = "/tmp/qlab-arch-lr-XXXXXX", mp[600], tf[600], lf[600], cmd[4096];
        assert_non_null(mkdtemp(dir));
        snprintf(mp, sizeof mp, "%s/phi3-longrope.gguf", dir);
        snprintf(tf, sizeof tf, "%s/tokens.txt", dir);
        snprintf(lf, sizeof lf, "%s/out.f32", dir);
        write_longrope_model(mp, LR_LONG, LR_SHORT, 1.1902f);
        m = phi3_longrope(LR_LONG, LR_SHORT, 1.1902f);
        FILE *f = fopen(tf, "w");
        for (int t = 0; t < N_TOK; t++) fprintf(f, "%d\n", tok[t]);
        fclose(f);
        const int ctxs[] = {0, LR_ORIG, LR_ORIG + 1};
        for (size_t c = 0; c < QL_ARRAY_LEN(ctxs); c++) {
            char ctxarg[32] = "";
            if (ctxs[c]) snprintf(ctxarg, sizeof ctxarg, "--ctx %d", ctxs[c]);
            snprintf(cmd, sizeof cmd, "%s logits %s --tokens %s -o %s %s --threads 1 2>/dev/null", qlab, mp, tf, lf,
                     ctxarg);
            if (system(cmd) != 0) fail_msg("%s failed", cmd);
            f = fopen(lf, "rb");
            assert_non_null(f);
            assert_int_equal(fread(got, sizeof(float), N_TOK * N_VOCAB, f), N_TOK * N_VOCAB);
            fclose(f);
            ql_test_run_ctx(m, tok, N_TOK, ctxs[c] ? ctxs[c] : N_TOK, alt);
            float d = max_diff(got, alt, 0, N_TOK);
            printf("  qlab logits %-9s equals the in-process pass at that context within %.3g\n",
                   ctxs[c] ? ctxarg : "(no ctx)", d);
            assert_true(d <= 1e-5f);
        }
        ql_test_run_ctx(m, tok, N_TOK, N_TOK, alt);
        assert_true(max_diff(got, alt, 0, N_TOK) > 0.05f); /* the last run (long) is not the short one */
        ql_model_free(m);
        /* ppl: the two contexts around the original one give different perplexities */
        double ppl[2];
        for (int k = 0; k < 2; k++) {
            snprintf(cmd, sizeof cmd, "%s ppl %s --text %s --ctx %d --chunks 2 --json --threads 1 2>/dev/null", qlab,
                     mp, text, k ? LR_ORIG + 2 : LR_ORIG);
            FILE *pp = popen(cmd, "r");
            char buf[1024] = "";
            size_t nr = fread(buf, 1, sizeof buf - 1, pp);
            buf[nr] = 0;
            assert_int_equal(pclose(pp), 0);
            const char *at = strstr(buf, "\"ppl\": ");
            assert_non_null(at);
            ppl[k] = atof(at + 7);
        }
        printf("  qlab ppl: ctx %d (short factors) %.4f, ctx %d (long) %.4f\n", LR_ORIG, ppl[0], LR_ORIG + 2, ppl[1]);
        assert_true(ppl[0] > 1 && ppl[1] > 1 && ppl[0] != ppl[1]);
        unlink(mp);
        unlink(tf);
        unlink(lf);
        rmdir(dir);
    }
    free(ref);
    free(got);
    free(alt);
}

/* ---- attention.sliding_window_pattern as a per-layer bool array (newer llama.cpp) or a period ---- */

static ql_model *gemma3_with_pattern(const uint8_t *flags, int n, uint32_t elem_type) {
    char p[512];
    if (!model_path(p, sizeof p, "gemma3")) return NULL;
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    ql_gguf_set_arr(g, "gemma3.attention.sliding_window_pattern", elem_type, flags, (uint64_t)n);
    ql_model *m = NULL;
    if (ql_model_from_gguf(g, p, &m)) return NULL;
    return m;
}

static void test_swa_pattern_array(void **state) {
    (void)state;
    int32_t tok[N_TOK];
    read_tokens(tok);
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB), *got = malloc(sizeof(float) * N_TOK * N_VOCAB);
    read_reference("gemma3", ref);
    /* llama.cpp's default period 6 written out per layer: layers 0-4 slide, 5 is global */
    const uint8_t same[6] = {1, 1, 1, 1, 1, 0}, other[6] = {1, 0, 1, 0, 1, 0};
    ql_model *m = gemma3_with_pattern(same, 6, QL_GGUF_BOOL);
    if (!m) fail_msg("%s", ql_last_error());
    assert_true(m->cfg.swa_per_layer && ql_layer_is_swa(&m->cfg, 4) && !ql_layer_is_swa(&m->cfg, 5));
    ql_test_run_tokens(m, tok, N_TOK, got);
    ql_model_free(m);
    float d_same = max_diff(got, ref, 0, N_TOK);
    m = gemma3_with_pattern(other, 6, QL_GGUF_BOOL);
    assert_non_null(m);
    assert_true(!ql_layer_is_swa(&m->cfg, 1) && ql_layer_is_swa(&m->cfg, 2));
    char feat[512];
    ql_model_features(m, feat, sizeof feat);
    assert_non_null(strstr(feat, "3 of 6 layers"));
    ql_test_run_tokens(m, tok, N_TOK, got);
    ql_model_free(m);
    float d_other = max_diff(got, ref, 0, N_TOK);
    printf("  per-layer pattern: as the default %.3g from llama.cpp, layers 1 and 3 global moves %.3g\n", d_same,
           d_other);
    assert_true(d_same <= tolerance("gemma3"));
    assert_true(d_other > 0.1f); /* layers 1 and 3 turn global: no window, and the global layers' RoPE */
    /* integers 0/1 are bools too; malformed arrays are refused with one line naming the key */
    const uint8_t as_u8[6] = {1, 1, 1, 1, 1, 0}, two[6] = {1, 1, 2, 1, 1, 0};
    m = gemma3_with_pattern(as_u8, 6, QL_GGUF_U8);
    assert_non_null(m);
    ql_model_free(m);
    struct { const uint8_t *f; int n; uint32_t et; const char *want; } bad[] = {
        {same, 5, QL_GGUF_BOOL, "lists 5 layers, the model has 6"},
        {two, 6, QL_GGUF_U8, "sliding_window_pattern[2] is not a bool"},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(bad); i++) {
        assert_null(gemma3_with_pattern(bad[i].f, bad[i].n, bad[i].et));
        const char *e = ql_last_error();
        printf("  refused: %s\n", e);
        assert_non_null(strstr(e, bad[i].want));
        assert_non_null(strstr(e, "gemma3.gguf"));
        assert_null(strchr(e, '\n'));
    }
    /* a string is neither form */
    char p[512];
    assert_true(model_path(p, sizeof p, "gemma3"));
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    ql_gguf_set_str(g, "gemma3.attention.sliding_window_pattern", "6");
    assert_int_not_equal(ql_model_from_gguf(g, p, &m), QL_OK);
    assert_non_null(strstr(ql_last_error(), "must be a period (an integer) or an array of 6 bools, not string"));
    free(ref);
    free(got);
}

/* ---- synthetic shapes: the real models' metadata and tensor lists, without writing gigabytes ---- */

typedef struct {
    const char *shape, *arch;
    double params; /* the published parameter count (text model) */
} synth_case;

static const synth_case SYNTH[] = {
    {"llama-3.1-8b", "llama", 8.03e9},
    {"qwen3-8b", "qwen3", 8.19e9},
    {"gemma-3-4b", "gemma3", 3.88e9},
    {"phi-3-mini", "phi3", 3.82e9},
};

static void test_synth_shapes_describe(void **state) {
    (void)state;
    for (size_t i = 0; i < QL_ARRAY_LEN(SYNTH); i++) {
        const ql_synth_shape *sh = ql_synth_find(SYNTH[i].shape);
        assert_non_null(sh);
        ql_gguf *g;
        assert_int_equal(ql_synth_describe(sh, &g), QL_OK);
        ql_model *m;
        /* qlab's own loader accepts it: every tensor the description requires, with its shape */
        if (ql_model_from_gguf(g, SYNTH[i].shape, &m)) fail_msg("%s: %s", SYNTH[i].shape, ql_last_error());
        assert_string_equal(m->cfg.arch, SYNTH[i].arch);
        double n = (double)ql_model_n_params(m);
        printf("  %-13s %-6s %d layers, %.3g parameters (published %.3g)\n", SYNTH[i].shape, m->cfg.arch,
               m->cfg.n_layer, n, SYNTH[i].params);
        assert_true(fabs(n / SYNTH[i].params - 1) < 0.01);
        const ql_layer_tensors *L = &m->layers[0];
        if (!strcmp(SYNTH[i].arch, "llama")) assert_non_null(m->rope_freqs);
        if (!strcmp(SYNTH[i].arch, "qwen3")) assert_true(L->q_norm && L->k_norm && !m->cfg.tied_output);
        if (!strcmp(SYNTH[i].arch, "gemma3")) {
            assert_true(L->post_attn_norm && L->post_ffn_norm && L->q_norm && m->cfg.tied_output);
            assert_int_equal(m->cfg.n_swa, 1024);
            assert_true(ql_layer_is_swa(&m->cfg, 0) && !ql_layer_is_swa(&m->cfg, 5));
            assert_true(m->cfg.rope_scale == 8.0f && m->cfg.rope_base_swa == 10000.0f && m->cfg.embd_scale > 50);
        }
        if (!strcmp(SYNTH[i].arch, "phi3")) {
            assert_true(L->wqkv && L->w_gate_up && !strstr(ql_gguf_get_str(m->gguf, "general.name"), "phi"));
            assert_ptr_equal(ql_model_view_parent(m, L->wv, NULL), L->wqkv);
        }
        ql_model_free(m);
    }
}

/* Llama 3.1's rope_freqs as synth computes them equal the ones llama.cpp's converter wrote into the
 * reference llama3.gguf (factor 8, low 1, high 4, context 8192, base 500000, head_dim 16). */
static void test_synth_llama3_rope_freqs(void **state) {
    (void)state;
    char p[512], out[] = "/tmp/qlab-arch-rf-XXXXXX.gguf";
    if (!model_path(p, sizeof p, "llama3")) skip();
    ql_synth_shape sh = *ql_synth_find("llama-3.1-8b");
    assert_int_equal(ql_synth_parse_dims("layers=1,embd=64,heads=4,kv=2,ff=128,vocab=300,ctx=64", &sh), QL_OK);
    int fd = mkstemps(out, 5);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(ql_synth_write(&sh, 3, out, 1, NULL), QL_OK);
    ql_model *ref, *syn;
    assert_int_equal(ql_model_load(p, &ref), QL_OK);
    assert_int_equal(ql_model_load(out, &syn), QL_OK);
    assert_non_null(syn->rope_freqs);
    assert_int_equal(syn->rope_freqs->ne[0], 8);
    const float *a = ref->rope_freqs->data, *b = syn->rope_freqs->data;
    for (int i = 0; i < 8; i++)
        if (fabsf(a[i] - b[i]) > 1e-5f * a[i]) fail_msg("rope_freqs[%d]: synth %g, converter %g", i, b[i], a[i]);
    ql_model_free(ref);
    ql_model_free(syn);
    unlink(out);
}

/* ---- what llama.cpp's loader needs from a synthetic file, written out independently of core/synth.c ----
 * Checked against llama.cpp (src/llama-model.cpp llama_model::load_hparams: the keys read for every model
 * (context_length, embedding_length, block_count required; feed_forward_length and head_count via
 * get_key_or_arr; head_count_kv, key/value_length, rope.freq_base, rope.dimension_count optional, and for
 * LLM_ARCH_LLAMA n_rot must equal the head dimension), then per architecture LLAMA / QWEN3 / PHI3:
 * attention.layer_norm_rms_epsilon required, GEMMA3: attention.sliding_window and the epsilon required;
 * llama_model::load_tensors for the same four cases, with the tensor names of src/llama-arch.cpp
 * LLM_TENSOR_NAMES; llama_model_loader's get_key, which refuses a key of another GGUF type than the field's
 * (u32 for counts, f32 for floats), and its final "wrong number of tensors" check, which refuses any tensor
 * it did not create; src/llama-vocab.cpp llama_vocab::impl::load: tokenizer.ggml.model "llama" is SPM (no
 * pre-tokenizer or merges then; "gpt2" would need both), tokens required with unique texts, scores and
 * token_type optional arrays, special ids in range, and SPM's linefeed looked up as the byte token <0x0A>;
 * and the token embedding's n_vocab rows equal to the number of tokens). */

typedef struct { const char *key; uint32_t type; bool required; } want_key;

static void check_key(const ql_gguf *g, const char *shape, const char *arch, const want_key *w) {
    char k[160];
    if (!strncmp(w->key, "general.", 8) || !strncmp(w->key, "tokenizer.", 10)) snprintf(k, sizeof k, "%s", w->key);
    else snprintf(k, sizeof k, "%s.%s", arch, w->key);
    const ql_gguf_value *v = ql_gguf_get(g, k);
    if (!v) {
        if (w->required) fail_msg("%s: llama.cpp needs key %s", shape, k);
        return;
    }
    if (v->type != w->type) fail_msg("%s: key %s is %s, llama.cpp reads %s", shape, k, ql_gguf_type_name(v->type),
                                     ql_gguf_type_name(w->type));
}

static int64_t get_u(const ql_gguf *g, const char *arch, const char *key, int64_t def) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t v;
    return ql_gguf_get_int(g, k, &v) ? v : def;
}

static void check_llamacpp_loadable(const ql_gguf *g, const char *shape) {
    const char *arch = ql_gguf_get_str(g, "general.architecture");
    assert_non_null(arch);
    static const want_key common[] = {
        {"context_length", QL_GGUF_U32, true},        {"embedding_length", QL_GGUF_U32, true},
        {"block_count", QL_GGUF_U32, true},           {"feed_forward_length", QL_GGUF_U32, true},
        {"attention.head_count", QL_GGUF_U32, true},  {"attention.head_count_kv", QL_GGUF_U32, false},
        {"attention.key_length", QL_GGUF_U32, false}, {"attention.value_length", QL_GGUF_U32, false},
        {"rope.freq_base", QL_GGUF_F32, false},       {"rope.dimension_count", QL_GGUF_U32, false},
        {"attention.layer_norm_rms_epsilon", QL_GGUF_F32, true},
        {"attention.sliding_window", QL_GGUF_U32, false}, {"rope.freq_base_swa", QL_GGUF_F32, false},
        {"rope.scaling.type", QL_GGUF_STRING, false}, {"rope.scaling.factor", QL_GGUF_F32, false},
        {"vocab_size", QL_GGUF_U32, false},           {"general.file_type", QL_GGUF_U32, false},
        {"tokenizer.ggml.model", QL_GGUF_STRING, true}, {"tokenizer.ggml.tokens", QL_GGUF_ARRAY, true},
        {"tokenizer.ggml.scores", QL_GGUF_ARRAY, false}, {"tokenizer.ggml.token_type", QL_GGUF_ARRAY, false},
        {"tokenizer.ggml.bos_token_id", QL_GGUF_U32, true}, {"tokenizer.ggml.eos_token_id", QL_GGUF_U32, true},
        {"tokenizer.ggml.add_bos_token", QL_GGUF_BOOL, false},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(common); i++) check_key(g, shape, arch, &common[i]);
    if (!strcmp(arch, "gemma3")) check_key(g, shape, arch, &(want_key){"attention.sliding_window", QL_GGUF_U32, true});

    const int64_t D = get_u(g, arch, "embedding_length", 0), L = get_u(g, arch, "block_count", 0),
                  F = get_u(g, arch, "feed_forward_length", 0), H = get_u(g, arch, "attention.head_count", 0),
                  HKV = get_u(g, arch, "attention.head_count_kv", H), HD = get_u(g, arch, "attention.key_length", D / H),
                  ROT = get_u(g, arch, "rope.dimension_count", HD);
    if (!strcmp(arch, "llama")) assert_int_equal(ROT, HD); /* llama.cpp: "invalid n_rot" otherwise */

    /* the vocabulary */
    uint64_t n_tok = 0, n_sc = 0, n_tt = 0;
    const ql_gguf_value *toks = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n_tok);
    assert_non_null(toks);
    assert_non_null(ql_gguf_get_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, &n_sc));
    assert_non_null(ql_gguf_get_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, &n_tt));
    assert_true(n_sc == n_tok && n_tt == n_tok);
    const char *tm = ql_gguf_get_str(g, "tokenizer.ggml.model");
    if (!strcmp(tm, "gpt2")) {
        assert_non_null(ql_gguf_get_str(g, "tokenizer.ggml.pre"));
        assert_non_null(ql_gguf_get_arr(g, "tokenizer.ggml.merges", QL_GGUF_STRING, NULL));
    } else {
        assert_string_equal(tm, "llama");
        bool lf = false;
        for (uint64_t i = 0; i < n_tok && !lf; i++) lf = strcmp(toks[i].v.str.s, "<0x0A>") == 0;
        if (!lf) fail_msg("%s: SPM vocabulary without the <0x0A> byte token llama.cpp looks up", shape);
    }
    for (uint64_t i = 1; i < n_tok && n_tok <= 4096; i++) /* unique texts (a full-size vocabulary: spot checks) */
        assert_true(strcmp(toks[i].v.str.s, toks[i - 1].v.str.s) != 0);
    int64_t bos = -1, eos = -1;
    assert_true(ql_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos) && bos >= 0 && (uint64_t)bos < n_tok);
    assert_true(ql_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &eos) && eos >= 0 && (uint64_t)eos < n_tok);

    /* the tensors llama.cpp creates, shape by shape; nothing else may be in the file */
    typedef struct { char name[64]; int64_t ne0, ne1; bool required; } want_t;
    want_t *w = calloc((size_t)(8 + 16 * L), sizeof *w);
    int n = 0;
#define T(req, a, b, ...) do { snprintf(w[n].name, sizeof w[n].name, __VA_ARGS__); w[n].ne0 = a; w[n].ne1 = b; w[n].required = req; n++; } while (0)
    T(true, D, (int64_t)n_tok, "token_embd.weight");
    T(true, D, 1, "output_norm.weight");
    T(false, D, (int64_t)n_tok, "output.weight"); /* absent: tied to token_embd */
    if (!strcmp(arch, "llama")) T(false, ROT / 2, 1, "rope_freqs.weight");
    if (!strcmp(arch, "phi3")) {
        T(false, ROT / 2, 1, "rope_factors_long.weight");
        T(false, ROT / 2, 1, "rope_factors_short.weight");
    }
    for (int64_t l = 0; l < L; l++) {
        T(true, D, 1, "blk.%lld.attn_norm.weight", (long long)l);
        T(true, D, 1, "blk.%lld.ffn_norm.weight", (long long)l);
        T(true, F, D, "blk.%lld.ffn_down.weight", (long long)l);
        if (!strcmp(arch, "phi3")) {
            T(true, D, D + 2 * HD * HKV, "blk.%lld.attn_qkv.weight", (long long)l);
            T(true, D, D, "blk.%lld.attn_output.weight", (long long)l);
            T(true, D, 2 * F, "blk.%lld.ffn_up.weight", (long long)l);
            continue;
        }
        T(true, D, HD * H, "blk.%lld.attn_q.weight", (long long)l);
        T(true, D, HD * HKV, "blk.%lld.attn_k.weight", (long long)l);
        T(true, D, HD * HKV, "blk.%lld.attn_v.weight", (long long)l);
        T(true, HD * H, D, "blk.%lld.attn_output.weight", (long long)l);
        T(true, D, F, "blk.%lld.ffn_gate.weight", (long long)l);
        T(true, D, F, "blk.%lld.ffn_up.weight", (long long)l);
        if (!strcmp(arch, "qwen3") || !strcmp(arch, "gemma3")) {
            T(true, HD, 1, "blk.%lld.attn_q_norm.weight", (long long)l);
            T(true, HD, 1, "blk.%lld.attn_k_norm.weight", (long long)l);
        }
        if (!strcmp(arch, "gemma3")) {
            T(true, D, 1, "blk.%lld.post_attention_norm.weight", (long long)l);
            T(true, D, 1, "blk.%lld.post_ffw_norm.weight", (long long)l);
        }
    }
#undef T
    int found = 0;
    for (int i = 0; i < n; i++) {
        int64_t ti = ql_gguf_find_tensor(g, w[i].name);
        if (ti < 0) {
            if (w[i].required) fail_msg("%s: llama.cpp needs tensor %s", shape, w[i].name);
            continue;
        }
        const ql_gguf_tensor *t = &g->tensors[ti];
        const int64_t ne1 = t->n_dims > 1 ? t->ne[1] : 1;
        if (t->ne[0] != w[i].ne0 || ne1 != w[i].ne1 || (w[i].ne1 == 1 && t->n_dims != 1))
            fail_msg("%s: %s is [%lld, %lld] (%d dims), llama.cpp creates [%lld, %lld]", shape, w[i].name,
                     (long long)t->ne[0], (long long)ne1, t->n_dims, (long long)w[i].ne0, (long long)w[i].ne1);
        found++;
    }
    if (found != g->n_tensors) fail_msg("%s: %lld tensors, llama.cpp would create %d of them", shape,
                                        (long long)g->n_tensors, found);
    free(w);
}

static void test_synth_llamacpp_metadata(void **state) {
    (void)state;
    for (size_t i = 0; i < QL_ARRAY_LEN(SYNTH); i++) {
        /* the real shape with one layer, described (no data) */
        ql_synth_shape sh = *ql_synth_find(SYNTH[i].shape);
        assert_int_equal(ql_synth_parse_dims("layers=1", &sh), QL_OK);
        ql_gguf *g;
        assert_int_equal(ql_synth_describe(&sh, &g), QL_OK);
        check_llamacpp_loadable(g, SYNTH[i].shape);
        printf("  %-13s keys, vocabulary and %lld tensors as llama.cpp's loader reads them\n", SYNTH[i].shape,
               (long long)g->n_tensors);
        ql_gguf_free(g);
        /* and a small one written and read back: the writer keeps every type */
        sh = *ql_synth_find(SYNTH[i].shape);
        assert_int_equal(ql_synth_parse_dims(!strcmp(SYNTH[i].arch, "gemma3")
                                                 ? "layers=2,embd=64,heads=2,kv=1,head_dim=32,ff=96,vocab=300,ctx=64"
                                                 : "layers=2,embd=64,heads=4,kv=2,ff=96,vocab=300,ctx=64",
                                             &sh),
                         QL_OK);
        char out[] = "/tmp/qlab-arch-lc-XXXXXX.gguf";
        int fd = mkstemps(out, 5);
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(ql_synth_write(&sh, 5, out, 1, NULL), QL_OK);
        assert_int_equal(ql_gguf_open(out, &g), QL_OK);
        check_llamacpp_loadable(g, out);
        ql_gguf_free(g);
        unlink(out);
    }
}

/* Each new shape at a small layer count and width runs: qlab's forward pass in-process and `qlab logits`. */
static void test_synth_small_runs(void **state) {
    (void)state;
    const char *qlab = getenv("QLAB");
    enum { T = 16 };
    for (size_t i = 0; i < QL_ARRAY_LEN(SYNTH); i++) {
        ql_synth_shape sh = *ql_synth_find(SYNTH[i].shape);
        /* gemma3 keeps 6 layers so that one of them is global */
        const char *dims = !strcmp(SYNTH[i].arch, "gemma3")
                               ? "layers=6,embd=128,heads=4,kv=2,head_dim=32,ff=256,vocab=512,ctx=256"
                               : "layers=2,embd=128,heads=4,kv=2,ff=256,vocab=512,ctx=256";
        assert_int_equal(ql_synth_parse_dims(dims, &sh), QL_OK);
        if (!strcmp(SYNTH[i].arch, "gemma3")) sh.n_swa = 4; /* the window matters within T tokens */
        char out[] = "/tmp/qlab-arch-syn-XXXXXX.gguf";
        int fd = mkstemps(out, 5);
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(ql_synth_write(&sh, 7, out, 1, NULL), QL_OK);
        ql_model *m;
        assert_int_equal(ql_model_load(out, &m), QL_OK);
        int32_t tok[T];
        for (int t = 0; t < T; t++) tok[t] = (t * 37 + 11) % 512;
        float *lg = malloc(sizeof(float) * T * 512);
        ql_infer *inf;
        assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
        ql_scratch *s = ql_scratch_new(inf, T);
        assert_int_equal(ql_forward(inf, s, tok, T, 0, lg), QL_OK);
        float spread = 0;
        for (int j = 0; j < T * 512; j++) {
            assert_true(isfinite(lg[j]));
            spread = fmaxf(spread, fabsf(lg[j] - lg[0]));
        }
        assert_true(spread > 1e-3f); /* not a constant output */
        ql_scratch_free(s);
        ql_infer_free(inf);
        ql_model_free(m);
        free(lg);
        if (qlab) {
            char tf[] = "/tmp/qlab-arch-tok-XXXXXX", lf[] = "/tmp/qlab-arch-lg-XXXXXX", cmd[2048];
            fd = mkstemp(tf);
            FILE *f = fdopen(fd, "w");
            for (int t = 0; t < T; t++) fprintf(f, "%d\n", tok[t]);
            fclose(f);
            fd = mkstemp(lf);
            close(fd);
            snprintf(cmd, sizeof cmd, "%s logits %s --tokens %s -o %s 2>/dev/null", qlab, out, tf, lf);
            if (system(cmd) != 0) fail_msg("%s: %s failed", SYNTH[i].shape, cmd);
            struct stat st;
            assert_int_equal(stat(lf, &st), 0);
            assert_int_equal(st.st_size, (off_t)sizeof(float) * T * 512);
            unlink(tf);
            unlink(lf);
        }
        unlink(out);
    }
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_llamacpp),
        cmocka_unit_test(test_ablations_move_logits),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_q4_k_m_types),
        cmocka_unit_test(test_attn_qkv_rules),
        cmocka_unit_test(test_quantized_models_run),
        cmocka_unit_test(test_yarn_rope),
        cmocka_unit_test(test_longrope_formula),
        cmocka_unit_test(test_longrope_logits),
        cmocka_unit_test(test_swa_pattern_array),
        cmocka_unit_test(test_synth_shapes_describe),
        cmocka_unit_test(test_synth_llama3_rope_freqs),
        cmocka_unit_test(test_synth_small_runs),
        cmocka_unit_test(test_synth_llamacpp_metadata),
    };
    ql_test_order_from_env(tests, QL_ARRAY_LEN(tests));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
