/* test_moe.c — mixture-of-experts models: the synthetic Mixtral-layout (`llama` with 8 experts, 2 per token) and
 * qwen3moe (16 experts, 4 per token) models give llama.cpp's logits (tests/data/moe, made by llama.cpp from the
 * same synth files), and so do qwen2moe (8 experts without renormalisation, a gated shared expert) and olmoe
 * (q/k norm over the whole of q and k);
 * renormalising the chosen experts' weights, the number of experts per token and the shared expert visibly
 * matter; a batched pass that varies an expert tensor equals separate passes; bad expert keys and missing
 * expert tensors are refused by name; quantization treats the 3-D expert tensors as rows and leaves the router
 * in F32, as llama-quantize does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/infer.h"
#include "core/model.h"
#include "core/stats.h"
#include "core/synth.h"
#include "core/train.h"
#include "kernels/ggml_types.h"
#include "formats/format.h"
#include "pipeline/imatrix.h"
#include "pipeline/plan.h"
#include "presets/preset.h"
#include "tests/test_util.h"
#include "tests/test_synth_logits.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { N_TOK = QL_TEST_N_TOK, N_VOCAB = QL_TEST_N_VOCAB };
/* the logits reach 10: 2e-5 of that, float sums in another order (the dense arch-variants agree to 1e-4) */
static const float TOL = 2e-4f;
static const char *SHAPES[] = {"tiny-moe", "tiny-qwen3moe", "tiny-qwen2moe", "tiny-olmoe"};

static void test_logits_match_llamacpp(void **state) {
    (void)state;
    for (size_t i = 0; i < QL_ARRAY_LEN(SHAPES); i++) {
        ql_model *m = ql_test_synth_model("moe", SHAPES[i]);
        assert_true(m->cfg.n_expert > 0 && m->layers[0].gate_exps && !m->layers[0].w_gate);
        ql_test_expect_logits(m, "tests/data/moe", SHAPES[i], TOL);
        ql_model_free(m);
    }
}

/* Each routing detail moves the logits far past the tolerance, so the comparison above exercises it. */
static void test_routing_details_matter(void **state) {
    (void)state;
    float *ref = malloc(sizeof(float) * N_TOK * N_VOCAB), *got = malloc(sizeof(float) * N_TOK * N_VOCAB);
    for (size_t i = 0; i < QL_ARRAY_LEN(SHAPES); i++) {
        ql_test_read_logits("tests/data/moe", SHAPES[i], ref);
        ql_model *m = ql_test_synth_model("moe", SHAPES[i]);
        const bool norm = m->cfg.moe_norm_weights;
        m->cfg.moe_norm_weights = !norm;
        ql_test_run(m, got);
        const float d_norm = ql_test_max_diff(got, ref, (size_t)N_TOK * N_VOCAB);
        m->cfg.moe_norm_weights = norm;
        if (m->cfg.desc->qk_norm_full) { /* OLMoE's q/k norm per head instead of over the row */
            ql_arch per_head = *m->cfg.desc;
            const ql_arch *full = m->cfg.desc;
            per_head.qk_norm_full = false;
            m->cfg.desc = &per_head;
            for (int l = 0; l < 2; l++) m->layers[l].q_norm->ne[0] = m->layers[l].k_norm->ne[0] = m->cfg.head_dim;
            ql_test_run(m, got);
            const float d_qk = ql_test_max_diff(got, ref, (size_t)N_TOK * N_VOCAB);
            printf("  %-14s q/k norm per head: %.3g\n", SHAPES[i], d_qk);
            assert_true(d_qk > 100 * TOL);
            m->cfg.desc = full;
        }
        if (m->layers[0].gate_shexp) { /* without the shared expert */
            ql_layer_tensors keep[2] = {m->layers[0], m->layers[1]};
            for (int l = 0; l < 2; l++) m->layers[l].gate_shexp = NULL;
            ql_test_run(m, got);
            const float d_sh = ql_test_max_diff(got, ref, (size_t)N_TOK * N_VOCAB);
            printf("  %-14s without the shared expert: %.3g\n", SHAPES[i], d_sh);
            assert_true(d_sh > 100 * TOL);
            m->layers[0] = keep[0];
            m->layers[1] = keep[1];
        }
        m->cfg.n_expert_used = 1;
        ql_test_run(m, got);
        const float d_top1 = ql_test_max_diff(got, ref, (size_t)N_TOK * N_VOCAB);
        printf("  %-14s renormalising %s: %.3g; one expert per token: %.3g\n", SHAPES[i], norm ? "off" : "on", d_norm,
               d_top1);
        assert_true(d_norm > 100 * TOL);
        assert_true(d_top1 > 100 * TOL);
        ql_model_free(m);
    }
    free(ref);
    free(got);
}

/* Statistics per expert (what qlab imatrix writes for the stacks): each token's FFN input reaches n_expert_used
 * experts, so over a layer's experts the rows add up to k per token and Σ x² to k times the pooled ffn_in's; the
 * down inputs add up to the pooled ffn_down_in's. Both with one worker and with three (merged per entry). */
static void test_stats_per_expert(void **state) {
    (void)state;
    ql_model *m = ql_test_synth_model("moe", "tiny-qwen3moe");
    const ql_config *c = &m->cfg;
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    enum { NS = 6 };
    int32_t tok[NS * N_TOK];
    for (int i = 0; i < NS * N_TOK; i++) tok[i] = QL_TEST_TOKENS[(i * 7) % N_TOK];
    for (int threads = 1; threads <= 3; threads += 2) {
        ql_stats_opts o = {.n_threads = threads, .per_expert = true};
        ql_stats *st = NULL;
        assert_int_equal(ql_stats_collect(inf, tok, NS, N_TOK, &o, NULL, &st), QL_OK);
        for (int l = 0; l < c->n_layer; l++) {
            char nm[64], nd[64];
            snprintf(nm, sizeof nm, "blk.%d.ffn_in", l);
            snprintf(nd, sizeof nd, "blk.%d.ffn_down_in", l);
            const ql_stat_entry *fin = NULL, *fdown = NULL;
            for (int i = 0; i < st->n; i++) {
                if (!strcmp(st->e[i].name, nm)) fin = &st->e[i];
                if (!strcmp(st->e[i].name, nd)) fdown = &st->e[i];
            }
            assert_non_null(fin);
            assert_non_null(fdown);
            int64_t rows = 0;
            double sq = 0, sq_down = 0, ref = 0, ref_down = 0;
            for (int e = 0; e < c->n_expert; e++) {
                const ql_stat_entry *in = ql_stats_expert_entry(st, l, e, false), *dn = ql_stats_expert_entry(st, l, e, true);
                assert_non_null(in);
                assert_non_null(dn);
                assert_int_equal(in->n, c->n_embd);
                assert_int_equal(dn->n, c->n_ff_exp);
                assert_int_equal(in->n_tokens, dn->n_tokens);
                rows += in->n_tokens;
                for (int64_t j = 0; j < in->n; j++) sq += in->sum_sq[j];
                for (int64_t j = 0; j < dn->n; j++) sq_down += dn->sum_sq[j];
            }
            for (int64_t j = 0; j < fin->n; j++) ref += fin->sum_sq[j];
            for (int64_t j = 0; j < fdown->n; j++) ref_down += fdown->sum_sq[j];
            assert_int_equal(rows, (int64_t)c->n_expert_used * fin->n_tokens);
            assert_true(fabs(sq - c->n_expert_used * ref) <= 1e-9 * sq);
            assert_true(fabs(sq_down - ref_down) <= 1e-9 * sq_down);
        }
        assert_null(ql_stats_expert_entry(st, c->n_layer, 0, false));
        ql_stats_free(st);
    }
    ql_stats_opts o = {.n_threads = 1}; /* not asked: no expert entries */
    ql_stats *st = NULL;
    assert_int_equal(ql_stats_collect(inf, tok, NS, N_TOK, &o, NULL, &st), QL_OK);
    assert_int_equal(st->n, 4 * c->n_layer);
    assert_null(ql_stats_expert_entry(st, 0, 0, false));
    ql_stats_free(st);
    ql_infer_free(inf);
    ql_model_free(m);
}

/* A sensitivity batch that varies ffn_down_exps (2 variants x 2 sequences) gives, per row, what a pass with that
 * variant swapped in gives. */
static void test_variant_pass_matches_swaps(void **state) {
    (void)state;
    ql_model *m = ql_test_synth_model("moe", "tiny-qwen3moe");
    const ql_gguf_tensor *t = m->layers[1].down_exps;
    const size_t n = (size_t)(t->ne[0] * t->ne[1] * t->ne[2]);
    float *alt = malloc(n * sizeof(float));
    const float *orig = t->data;
    for (size_t i = 0; i < n; i++) alt[i] = orig[i] * (1.0f + 0.25f * (float)((i * 2654435761u) % 7) / 7.0f);
    const float *w[2] = {orig, alt};
    const uint32_t types[2] = {QL_TYPE_F32, QL_TYPE_F32};
    ql_weight_variants var = {t, 2, w, types};
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    ql_scratch *sb = ql_scratch_new_rows(inf, N_TOK, 4 * N_TOK), *s1 = ql_scratch_new(inf, N_TOK);
    const int32_t *toks[2] = {QL_TEST_TOKENS, QL_TEST_TOKENS + 8};
    const int T = 24;
    float *batch = malloc(sizeof(float) * 4 * T * N_VOCAB), *one = malloc(sizeof(float) * T * N_VOCAB);
    assert_int_equal(ql_forward_variants(inf, sb, &var, toks, NULL, 2, 0, T, batch), QL_OK);
    float worst = 0, moved = 0;
    for (int v = 0; v < 2; v++) {
        ql_infer_swap_weight(inf, t, w[v]);
        for (int q = 0; q < 2; q++) {
            assert_int_equal(ql_forward(inf, s1, toks[q], T, 0, one), QL_OK);
            worst = fmaxf(worst, ql_test_max_diff(one, batch + (size_t)(v * 2 + q) * T * N_VOCAB, (size_t)T * N_VOCAB));
            if (v == 1) moved = fmaxf(moved, ql_test_max_diff(one, batch + (size_t)q * T * N_VOCAB, (size_t)T * N_VOCAB));
        }
    }
    printf("  batched vs separate passes: %.3g (the variant moves logits by %.3g)\n", worst, moved);
    assert_true(worst <= TOL);
    assert_true(moved > 100 * TOL);
    free(batch);
    free(one);
    free(alt);
    ql_scratch_free(sb);
    ql_scratch_free(s1);
    ql_infer_free(inf);
    ql_model_free(m);
}

/* Loads an edited copy of tiny-moe and expects a refusal whose message names `want`. */
static void expect_refused(void (*edit)(ql_gguf *), const char *want) {
    char p[256], q[256];
    ql_test_synth_path(p, sizeof p, "moe", "tiny-moe");
    ql_model_free(ql_test_synth_model("moe", "tiny-moe"));
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(p, &g), QL_OK);
    edit(g);
    snprintf(q, sizeof q, "/tmp/qlab_test_moe_%d_edit.gguf", (int)getpid());
    assert_int_equal(ql_gguf_write(g, q, NULL), QL_OK);
    ql_gguf_free(g);
    ql_model *m = NULL;
    assert_int_not_equal(ql_model_load(q, &m), QL_OK);
    assert_null(m);
    if (!strstr(ql_last_error(), want)) fail_msg("refusal '%s' does not name '%s'", ql_last_error(), want);
    unlink(q);
}
static void too_many_used(ql_gguf *g) { ql_gguf_set_u32(g, "llama.expert_used_count", 9); }
static void drop_down_exps(ql_gguf *g) {
    int64_t i = ql_gguf_find_tensor(g, "blk.1.ffn_down_exps.weight");
    assert_true(i >= 0);
    g->tensors[i].name[4] = '9'; /* blk.9: not a layer of the model */
}
static void fewer_experts(ql_gguf *g) { ql_gguf_set_u32(g, "llama.expert_count", 4); }

static void test_refusals(void **state) {
    (void)state;
    expect_refused(too_many_used, "expert_used_count 9");
    expect_refused(drop_down_exps, "blk.1.ffn_down_exps.weight");
    expect_refused(fewer_experts, "blk.0.ffn_gate_inp.weight");
    ql_model *m = ql_test_synth_model("moe", "tiny-moe");
    ql_train_model *tm = NULL;
    assert_int_equal(ql_train_model_from(m, &tm), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "mixture-of-experts"));
    ql_model_free(m);
}

/* Q4_K_M over the 64-wide MoE models (rows too short for K-quants: llama.cpp's fallbacks) keeps the router F32 and
 * plans every expert tensor; the fallback of a 3-D tensor is by its row length, as for 2-D ones; the 8-expert rules
 * apply at exactly 8 experts. */
static void test_plan_covers_experts(void **state) {
    (void)state;
    ql_model *m = ql_test_synth_model("moe", "tiny-qwen3moe");
    ql_plan *plan = ql_test_preset_plan(m, "Q4_K_M");
    assert_null(ql_plan_find(plan, "blk.0.ffn_gate_inp.weight"));
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const ql_gguf_tensor *ts[3] = {m->layers[l].gate_exps, m->layers[l].up_exps, m->layers[l].down_exps};
        for (int i = 0; i < 3; i++) {
            const ql_plan_entry *e = ql_plan_find(plan, ts[i]->name);
            if (!e) fail_msg("%s is not planned", ts[i]->name);
            assert_int_equal(ts[i]->ne[0] % e->format->block, 0);
        }
    }
    ql_plan_free(plan);
    /* llama.cpp's 8-expert rules: attn_v and attn_k in Q8_0 for Mixtral's 8 experts, not for 16 */
    ql_model *m8 = ql_test_synth_model("moe", "tiny-moe");
    plan = ql_test_preset_plan(m8, "Q4_K_M");
    assert_string_equal(ql_plan_find(plan, "blk.1.attn_v.weight")->format->name, "q8_0");
    assert_string_equal(ql_plan_find(plan, "blk.1.attn_k.weight")->format->name, "q8_0");
    ql_plan_free(plan);
    plan = ql_test_preset_plan(m, "Q4_K_M");
    assert_string_not_equal(ql_plan_find(plan, "blk.1.attn_k.weight")->format->name, "q8_0");
    ql_plan_free(plan);
    ql_model_free(m8);
    ql_model_free(m);
}

/* An expert stack's imatrix entry (llama.cpp's [n, n_expert] in_sum2, one count per expert) survives a GGUF round
 * trip, gives each expert its own importance and all ones to an expert no token reached (llama-quantize's fill);
 * the legacy .dat cannot hold it and says so. */
static void test_imatrix_expert_entries(void **state) {
    (void)state;
    ql_imatrix *im = ql_imatrix_new();
    ql_imatrix_entry *e = ql_imatrix_entry_get_experts(im, "blk.0.ffn_up_exps.weight", 4, 3);
    assert_non_null(e);
    assert_null(ql_imatrix_entry_get_experts(im, "blk.0.ffn_up_exps.weight", 4, 2)); /* another shape */
    const double counts[3] = {2, 0, 8};
    for (int k = 0; k < 3; k++) e->count += (e->counts[k] = counts[k]);
    for (int i = 0; i < 12; i++) e->sum2[i] = 1 + i;
    ql_imatrix_entry *d = ql_imatrix_entry_get(im, "blk.0.attn_q.weight", 4);
    for (int i = 0; i < 4; i++) d->sum2[i] = 2 * i + 1;
    d->count = 4;
    char p[256], q[256];
    snprintf(p, sizeof p, "/tmp/qlab_test_moe_%d_im.gguf", (int)getpid());
    snprintf(q, sizeof q, "/tmp/qlab_test_moe_%d_im.dat", (int)getpid());
    assert_int_equal(ql_imatrix_save(im, p), QL_OK);
    assert_int_not_equal(ql_imatrix_save(im, q), QL_OK);
    assert_non_null(strstr(ql_last_error(), "3 experts"));
    assert_int_not_equal(access(q, F_OK), 0);
    ql_imatrix_free(im);
    assert_int_equal(ql_imatrix_load(p, &im), QL_OK);
    unlink(p);
    float imp[4];
    assert_false(ql_imatrix_importance(im, "blk.0.ffn_up_exps.weight", 4, imp)); /* a stack, not one matrix */
    assert_true(ql_imatrix_importance_mat(im, "blk.0.ffn_up_exps.weight", 4, 3, 0, imp));
    for (int i = 0; i < 4; i++) assert_float_equal(imp[i], (1 + i) / 2.0, 1e-6);
    assert_true(ql_imatrix_importance_mat(im, "blk.0.ffn_up_exps.weight", 4, 3, 1, imp));
    for (int i = 0; i < 4; i++) assert_float_equal(imp[i], 1.0, 0);
    assert_true(ql_imatrix_importance_mat(im, "blk.0.ffn_up_exps.weight", 4, 3, 2, imp));
    for (int i = 0; i < 4; i++) assert_float_equal(imp[i], (9 + i) / 8.0, 1e-6);
    assert_false(ql_imatrix_importance_mat(im, "blk.0.ffn_up_exps.weight", 4, 2, 0, imp)); /* other expert count */
    assert_true(ql_imatrix_importance(im, "blk.0.attn_q.weight", 4, imp));
    assert_float_equal(imp[3], 7 / 4.0, 1e-6);
    ql_imatrix_free(im);
}

static int cleanup(void **state) {
    (void)state;
    for (size_t i = 0; i < QL_ARRAY_LEN(SHAPES); i++) {
        char p[256];
        ql_test_synth_path(p, sizeof p, "moe", SHAPES[i]);
        unlink(p);
    }
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_llamacpp),
        cmocka_unit_test(test_routing_details_matter),
        cmocka_unit_test(test_variant_pass_matches_swaps),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_plan_covers_experts),
        cmocka_unit_test(test_imatrix_expert_entries),
        cmocka_unit_test(test_stats_per_expert),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
