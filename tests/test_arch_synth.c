/* test_arch_synth.c — the architectures whose test models are synthetic (core/synth.c "tiny-granite" ...): each
 * gives llama.cpp's logits (tests/data/arch, made by llama.cpp from the same synth files), and each feature that
 * sets it apart from llama moves the logits far past the tolerance when it is left out, so the comparison
 * exercises it: Granite's four multipliers and its ungated shared expert, OLMo-2's missing pre-norms, full-width
 * q/k norm and OLMo-3's plain RoPE on sliding layers, SmolLM3's layers without RoPE, EXAONE's NEOX RoPE,
 * Ministral-3's temperature tuning and YaRN log multiplier, gpt-oss's sinks, biases, top-k softmax routing and
 * SwiGLU-OAI. Bad multipliers are refused by name; Granite, SmolLM3, OLMo-3, Command R7B, EXAONE-4, Seed-OSS,
 * ERNIE-4.5 and GLM-4 survive a Hugging Face folder round trip with the same logits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>

#include "core/infer.h"
#include "core/model.h"
#include "core/synth.h"
#include "kernels/ggml_types.h"
#include "pipeline/plan.h"
#include "pipeline/quantize.h"
#include "presets/preset.h"
#include "tests/test_util.h"
#include "tests/test_synth_logits.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { N_TOK = QL_TEST_N_TOK, N_VOCAB = QL_TEST_N_VOCAB };
/* logits reach 10: float sums in another order move one row of tiny-exaone by 2.7e-4, the rest by < 6e-5 */
static const float TOL = 5e-4f;
static const char *SHAPES[] = {"tiny-granite", "tiny-granitemoe", "tiny-olmo2", "tiny-smollm3", "tiny-exaone",
                               "tiny-mistral3", "tiny-gptoss", "tiny-ernie4_5", "tiny-seed_oss", "tiny-glm4",
                               "tiny-cohere2", "tiny-exaone4", "tiny-exaone4-swa", "tiny-glm4moe"};

static void test_logits_match_llamacpp(void **state) {
    (void)state;
    for (size_t i = 0; i < QL_ARRAY_LEN(SHAPES); i++) {
        ql_model *m = ql_test_synth_model("arch_synth", SHAPES[i]);
        assert_string_equal(m->cfg.arch, ql_synth_find(SHAPES[i])->arch);
        ql_test_expect_logits(m, "tests/data/arch", SHAPES[i], TOL);
        ql_model_free(m);
    }
}

/* How far the logits move from llama.cpp's when `edit` changes the loaded model (and `undo` puts it back). */
typedef void (*model_edit)(ql_model *m, void *saved);
static float moved(ql_model *m, const float *ref, model_edit edit, model_edit undo, const char *what) {
    float *got = malloc(sizeof(float) * N_TOK * N_VOCAB);
    char saved[sizeof(ql_config) + 4 * sizeof(ql_layer_tensors)];
    edit(m, saved);
    ql_test_run(m, got);
    undo(m, saved);
    const float d = ql_test_max_diff(got, ref, (size_t)N_TOK * N_VOCAB);
    printf("  %-16s %-34s %.3g\n", m->cfg.arch, what, d);
    free(got);
    return d;
}

static void save_cfg(ql_model *m, void *saved) { memcpy(saved, &m->cfg, sizeof m->cfg); }
static void restore_cfg(ql_model *m, void *saved) { memcpy(&m->cfg, saved, sizeof m->cfg); }
static void no_embd_scale(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.embd_scale = 1.0f; }
static void no_residual_scale(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.residual_scale = 1.0f; }
static void no_logit_scale(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.logit_mult = 1.0f; }
static void default_attn_scale(ql_model *m, void *saved) {
    save_cfg(m, saved), m->cfg.attn_scale = 1.0f / sqrtf((float)m->cfg.head_dim);
}
static void rope_everywhere(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.nope_period = 0; }
static void rope_adjacent(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.rope_neox = 0; }
static void no_temperature(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.attn_temp_scale = 0; }
static void yarn_factor_one(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.yarn_attn_factor = 1.0f; }
/* OLMo-3's sliding layers with the global layers' YaRN scaling (both of its sliding-RoPE switches off) */
static ql_arch g_edited;
static void swa_rope_yarn(ql_model *m, void *saved) {
    save_cfg(m, saved);
    g_edited = *m->cfg.desc;
    g_edited.swa_rope_plain = g_edited.swa_rope_unscaled = false;
    m->cfg.desc = &g_edited;
    m->cfg.rope_scale_swa = m->cfg.rope_scale;
}
static void save_layers(ql_model *m, void *saved) {
    memcpy(saved, &m->cfg, sizeof m->cfg);
    memcpy((char *)saved + sizeof m->cfg, m->layers, (size_t)m->cfg.n_layer * sizeof *m->layers);
}
static void restore_layers(ql_model *m, void *saved) {
    memcpy(&m->cfg, saved, sizeof m->cfg);
    memcpy(m->layers, (char *)saved + sizeof m->cfg, (size_t)m->cfg.n_layer * sizeof *m->layers);
}
static void no_shared_expert(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].gate_shexp = NULL;
}
/* OLMo-2 with llama's pre-norms, borrowing its post-norm weights (normalising the blocks' inputs as well) */
static void add_pre_norms(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        m->layers[l].attn_norm = m->layers[l].post_attn_norm;
        m->layers[l].ffn_norm = m->layers[l].post_ffn_norm;
    }
}

/* gpt-oss without each of its parts */
static void no_sinks(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].attn_sinks = NULL;
}
static void no_expert_biases(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++)
        m->layers[l].gate_exps_b = m->layers[l].up_exps_b = m->layers[l].down_exps_b = NULL;
}
static void no_router_bias(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].gate_inp_b = NULL;
}
static void no_out_bias(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].bo = NULL;
}
static void plain_swiglu(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.ffn_act = QL_FFN_SWIGLU; }
static void softmax_then_topk(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.moe_gating = QL_GATING_SOFTMAX; }

/* Seed-OSS without the FFN norm it stores under post_attention_norm; ERNIE without its q/k/v biases */
static void no_ffn_norm(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].ffn_norm = NULL;
}
static void no_qkv_biases(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].bq = m->layers[l].bk = m->layers[l].bv = NULL;
}

/* Cohere-2 with RMSNorm, a sequential block, RoPE on its global layers too */
static void rms_instead_of_layer_norm(ql_model *m, void *saved) {
    save_cfg(m, saved);
    g_edited = *m->cfg.desc;
    g_edited.layer_norm = false;
    m->cfg.desc = &g_edited;
}
static void sequential_block(ql_model *m, void *saved) { /* the FFN then reads a second norm of x + attention */
    save_layers(m, saved);
    g_edited = *m->cfg.desc;
    g_edited.parallel_block = false;
    m->cfg.desc = &g_edited;
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].ffn_norm = m->layers[l].attn_norm;
}
static void rope_on_global_layers(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.rope_swa_only = false; }

/* EXAONE-4 without q/k norms; its 32B layout without the window */
static void no_qk_norms(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].q_norm = m->layers[l].k_norm = NULL;
}
static void no_window(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.n_swa = 0; }

/* GLM-4.5's routing without each of its parts */
static void softmax_gating(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.moe_gating = QL_GATING_SOFTMAX; }
static void no_selection_bias(ql_model *m, void *saved) {
    save_layers(m, saved);
    for (int l = 0; l < m->cfg.n_layer; l++) m->layers[l].exp_probs_b = NULL;
}
static void no_weights_scale(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.moe_weights_scale = 0; }
static void no_renormalising(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.moe_norm_weights = false; }

/* GLM-4 rotating whole heads instead of their first half */
static void rope_whole_head(ql_model *m, void *saved) { save_cfg(m, saved), m->cfg.rope_dim = m->cfg.head_dim; }

static void test_features_matter(void **state) {
    (void)state;
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB);
    struct {
        const char *shape, *what;
        model_edit edit, undo;
    } cases[] = {
        {"tiny-granite", "embedding scale 1", no_embd_scale, restore_cfg},
        {"tiny-granite", "residual scale 1", no_residual_scale, restore_cfg},
        {"tiny-granite", "logit scale 1", no_logit_scale, restore_cfg},
        {"tiny-granite", "attention scale 1/sqrt(head_dim)", default_attn_scale, restore_cfg},
        {"tiny-granitemoe", "residual scale 1 (MoE output)", no_residual_scale, restore_cfg},
        {"tiny-granitemoe", "without the shared expert", no_shared_expert, restore_layers},
        {"tiny-olmo2", "with pre-norms", add_pre_norms, restore_layers},
        {"tiny-olmo2", "YaRN on the sliding layers too", swa_rope_yarn, restore_cfg},
        {"tiny-smollm3", "RoPE on every layer", rope_everywhere, restore_cfg},
        {"tiny-exaone", "adjacent-pair RoPE", rope_adjacent, restore_cfg},
        {"tiny-mistral3", "no temperature tuning", no_temperature, restore_cfg},
        {"tiny-mistral3", "YaRN log multiplier ignored", yarn_factor_one, restore_cfg},
        {"tiny-gptoss", "without attention sinks", no_sinks, restore_layers},
        {"tiny-gptoss", "without expert biases", no_expert_biases, restore_layers},
        {"tiny-gptoss", "without the router bias", no_router_bias, restore_layers},
        {"tiny-gptoss", "without the attention output bias", no_out_bias, restore_layers},
        {"tiny-gptoss", "plain SwiGLU", plain_swiglu, restore_cfg},
        {"tiny-gptoss", "softmax over all experts, then top k", softmax_then_topk, restore_cfg},
        {"tiny-seed_oss", "without the FFN norm", no_ffn_norm, restore_layers},
        {"tiny-ernie4_5", "without q/k/v biases", no_qkv_biases, restore_layers},
        {"tiny-glm4", "RoPE over the whole head", rope_whole_head, restore_cfg},
        {"tiny-cohere2", "RMSNorm instead of LayerNorm", rms_instead_of_layer_norm, restore_cfg},
        {"tiny-cohere2", "attention, then FFN", sequential_block, restore_layers},
        {"tiny-cohere2", "RoPE on the global layers too", rope_on_global_layers, restore_cfg},
        {"tiny-cohere2", "logits not scaled", no_logit_scale, restore_cfg},
        {"tiny-exaone4", "without q/k norms", no_qk_norms, restore_layers},
        {"tiny-exaone4-swa", "RoPE on the global layers too", rope_on_global_layers, restore_cfg},
        {"tiny-exaone4-swa", "no window (every layer global, no RoPE)", no_window, restore_cfg},
        {"tiny-glm4moe", "softmax instead of sigmoid gating", softmax_gating, restore_cfg},
        {"tiny-glm4moe", "without the selection bias", no_selection_bias, restore_layers},
        {"tiny-glm4moe", "without the x2.5 weights scale", no_weights_scale, restore_cfg},
        {"tiny-glm4moe", "without renormalising", no_renormalising, restore_cfg},
        {"tiny-glm4moe", "without the shared expert", no_shared_expert, restore_layers},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); i++) {
        ql_model *m = ql_test_synth_model("arch_synth", cases[i].shape);
        ql_test_read_logits("tests/data/arch", cases[i].shape, ref);
        const float d = moved(m, ref, cases[i].edit, cases[i].undo, cases[i].what);
        if (!(d > 100 * TOL)) fail_msg("%s: %s moves the logits only %g", cases[i].shape, cases[i].what, d);
        ql_model_free(m);
    }
    free(ref);
}

/* A Granite file without its logit scale, or with a negative multiplier, is refused by name. */
static void test_bad_multipliers_refused(void **state) {
    (void)state;
    ql_synth_shape sh = *ql_synth_find("tiny-granite");
    char p[256];
    ql_test_synth_path(p, sizeof p, "arch_synth", "bad-granite");
    const float bad[][4] = {{12.0f, 0.22f, 0.0625f, 0.0f}, {12.0f, -0.5f, 0.0625f, 8.0f}};
    for (size_t i = 0; i < QL_ARRAY_LEN(bad); i++) {
        memcpy(sh.scales, bad[i], sizeof sh.scales);
        if (bad[i][1] < 0) sh.scales[1] = 0; /* synth writes positive values only: edit the key below */
        assert_int_equal(ql_synth_write(&sh, 1, p, 1, NULL), QL_OK);
        ql_gguf *g = NULL;
        assert_int_equal(ql_gguf_open(p, &g), QL_OK);
        if (bad[i][1] < 0) ql_gguf_set_f32(g, "granite.residual_scale", bad[i][1]);
        ql_model *m = NULL;
        const ql_status st = ql_model_from_gguf(g, p, &m);
        assert_int_equal(st, QL_ERR_FORMAT);
        assert_null(m);
        assert_non_null(strstr(ql_last_error(), "logit_scale"));
        assert_non_null(strstr(ql_last_error(), p));
    }
    unlink(p);
}

/* The folder a Hugging Face download would be: model.safetensors without the __metadata__ qlab adds, so
 * everything the model needs comes from config.json. */
static void strip_safetensors_metadata(const char *dir) {
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | buf[i];
    json_t *hdr = json_loadb((const char *)buf + 8, (size_t)hl, 0, NULL);
    assert_non_null(hdr);
    assert_int_equal(json_object_del(hdr, "__metadata__"), 0);
    char *text = json_dumps(hdr, JSON_COMPACT);
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
    f = fopen(p, "wb");
    assert_non_null(f);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(padded >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(text, 1, tl, f);
    for (size_t i = tl; i < padded; i++) fputc(' ', f);
    fwrite(buf + 8 + hl, 1, (size_t)n - 8 - (size_t)hl, f);
    fclose(f);
    free(text);
    json_decref(hdr);
    free(buf);
}

/* GGUF -> Hugging Face folder -> qlab: config.json carries what the architecture needs (Granite's multipliers,
 * OLMo-3's and Command R7B's windows by layer_types, Command R7B's logit scale and LayerNorm epsilon), and the loaded
 * folder gives the GGUF's logits exactly. */
static void test_hf_roundtrip_same_logits(void **state) {
    (void)state;
    static const struct { const char *shape, *model_type, *field; double value; } cases[] = {
        {"tiny-granite", "granite", "residual_multiplier", 0.22},
        {"tiny-smollm3", "smollm3", "num_hidden_layers", 4},
        {"tiny-olmo2", "olmo3", "sliding_window", 8},
        {"tiny-cohere2", "cohere2", "logit_scale", 0.25},
        {"tiny-exaone4-swa", "exaone4", "sliding_window", 8},
        {"tiny-seed_oss", "seed_oss", "head_dim", 32},
        {"tiny-ernie4_5", "ernie4_5", "num_hidden_layers", 2},
        {"tiny-glm4", "glm4", "partial_rotary_factor", 0.5},
    };
    float *a = malloc(sizeof(float) * N_TOK * N_VOCAB), *b = malloc(sizeof(float) * N_TOK * N_VOCAB);
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); i++) {
        ql_model *m = ql_test_synth_model("arch_synth", cases[i].shape);
        ql_test_run(m, a);
        char *dir = ql_test_mkdtemp("arch_hf");
        assert_int_equal(ql_hf_save(m->gguf, dir), QL_OK);
        char p[1024];
        snprintf(p, sizeof p, "%s/config.json", dir);
        json_t *cfg = json_load_file(p, 0, NULL);
        assert_non_null(cfg);
        assert_string_equal(json_string_value(json_object_get(cfg, "model_type")), cases[i].model_type);
        assert_true(fabs(json_number_value(json_object_get(cfg, cases[i].field)) - cases[i].value) < 1e-6);
        if (!strcmp(cases[i].model_type, "cohere2")) /* LayerNorm's epsilon under its own name */
            assert_true(json_is_number(json_object_get(cfg, "layer_norm_eps")) && !json_object_get(cfg, "rms_norm_eps"));
        if (!strcmp(cases[i].model_type, "olmo3") || !strcmp(cases[i].model_type, "cohere2") ||
            !strcmp(cases[i].model_type, "exaone4")) { /* 0-2 slide, 3 not */
            const json_t *lt = json_object_get(cfg, "layer_types");
            assert_true(json_array_size(lt) >= 4);
            assert_string_equal(json_string_value(json_array_get(lt, 2)), "sliding_attention");
            assert_string_equal(json_string_value(json_array_get(lt, 3)), "full_attention");
        }
        json_decref(cfg);
        strip_safetensors_metadata(dir);
        ql_model *h = NULL;
        assert_int_equal(ql_model_load(dir, &h), QL_OK);
        assert_string_equal(h->cfg.arch, m->cfg.arch);
        assert_true(h->cfg.residual_scale == m->cfg.residual_scale && h->cfg.logit_mult == m->cfg.logit_mult &&
                    h->cfg.n_swa == m->cfg.n_swa && h->cfg.nope_period == m->cfg.nope_period);
        ql_test_run(h, b);
        const float d = ql_test_max_diff(a, b, (size_t)N_TOK * N_VOCAB);
        printf("  %-16s GGUF vs its HF folder: %.3g\n", cases[i].shape, d);
        assert_true(d == 0.0f);
        ql_model_free(h);
        ql_model_free(m);
        ql_test_rm_flat_dir(dir);
    }
    free(a);
    free(b);
}

/* gpt-oss as released: MXFP4 experts. qlab's MXFP4_MOE preset writes llama-quantize's bytes (bench/vs_llamacpp.sh
 * checks that) and the quantized model gives the logits llama.cpp gives for llama-quantize's file
 * (tests/data/arch/logits-tiny-gptoss-mxfp4.f32), its activations rounded to Q8_0 as ggml's MXFP4 dot product does. */
static void test_gptoss_mxfp4_experts(void **state) {
    (void)state;
    ql_model *m = ql_test_synth_model("arch_synth", "tiny-gptoss");
    ql_plan *plan = ql_test_preset_plan(m, "MXFP4_MOE");
    char out[256];
    ql_test_synth_path(out, sizeof out, "arch_synth", "gptoss-mxfp4");
    ql_quant_opts qo = {.plan = plan, .n_threads = 1};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m, &qo, out, NULL, &qs), QL_OK);
    ql_model *q = NULL;
    assert_int_equal(ql_model_load(out, &q), QL_OK);
    assert_int_equal(q->layers[0].gate_exps->type, QL_TYPE_MXFP4);
    assert_int_equal(q->layers[0].ffn_gate_inp->type, QL_TYPE_F32);
    float *got = malloc(sizeof(float) * N_TOK * N_VOCAB), *ref = malloc(sizeof(float) * N_TOK * N_VOCAB),
          *f32 = malloc(sizeof(float) * N_TOK * N_VOCAB);
    ql_test_read_logits("tests/data/arch", "tiny-gptoss-mxfp4", ref);
    ql_test_run(q, got);
    ql_test_run(m, f32);
    const float d = ql_test_max_diff(got, ref, (size_t)N_TOK * N_VOCAB), moved = ql_test_max_diff(f32, ref, (size_t)N_TOK * N_VOCAB);
    printf("  MXFP4 experts: max |qlab - llama.cpp| = %.3g (the F32 model is %.3g away)\n", d, moved);
    assert_true(d <= TOL);
    assert_true(moved > 100 * TOL);
    free(got), free(ref), free(f32);
    ql_model_free(q);
    ql_model_free(m);
    ql_plan_free(plan);
    unlink(out);
}

static int cleanup(void **state) {
    (void)state;
    char p[256];
    for (size_t i = 0; i < QL_ARRAY_LEN(SHAPES); i++) {
        ql_test_synth_path(p, sizeof p, "arch_synth", SHAPES[i]);
        unlink(p);
    }
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_llamacpp),
        cmocka_unit_test(test_features_matter),
        cmocka_unit_test(test_bad_multipliers_refused),
        cmocka_unit_test(test_hf_roundtrip_same_logits),
        cmocka_unit_test(test_gptoss_mxfp4_experts),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
