/* test_infer.c — forward pass against llama.cpp's reference logits for stories260K, perplexity
 * bookkeeping on a short text, and the largest head dimension the loader accepts (4096: the rope's
 * cos/sin once lived in a 2048-float stack array; under `make asan` an overflow is reported). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/infer.h"
#include "core/ppl.h"
#include "core/synth.h"
#include "kernels/ggml_types.h"
#include "tests/test_util.h"

static void test_logits_match_llamacpp(void **state) {
    (void)state;
    char model[512], tokf[512], logf[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) skip();
    if (!shared_path(tokf, sizeof tokf, "testdata/stories260K-logits/tokens.txt") ||
        !shared_path(logf, sizeof logf, "testdata/stories260K-logits/logits.f32"))
        skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    int32_t toks[64];
    int n = 0;
    FILE *f = fopen(tokf, "r");
    assert_non_null(f);
    while (n < 64 && fscanf(f, "%d", &toks[n]) == 1) n++;
    fclose(f);
    assert_int_equal(n, 32);
    const int V = m->cfg.n_vocab;
    float *ref = malloc((size_t)n * V * 4), *got = malloc((size_t)n * V * 4);
    f = fopen(logf, "rb");
    assert_int_equal(fread(ref, 4, (size_t)n * V, f), (size_t)n * V);
    fclose(f);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    ql_scratch *s = ql_scratch_new(inf, n);
    assert_int_equal(ql_forward(inf, s, toks, n, 0, got), QL_OK);
    double maxd = 0;
    for (int i = 0; i < n * V; i++) maxd = fmax(maxd, fabs((double)ref[i] - got[i]));
    printf("max |logit - llama.cpp| = %.3g\n", maxd);
    assert_true(maxd < 1e-4);
    /* logits computed for a suffix only must equal the same rows of the full run */
    float *tail = malloc((size_t)4 * V * 4);
    assert_int_equal(ql_forward(inf, s, toks, n, n - 4, tail), QL_OK);
    /* not bit-equal: BLAS blocks a 4-row product differently from a 32-row one */
    for (int i = 0; i < 4 * V; i++) assert_true(fabs((double)tail[i] - got[(size_t)(n - 4) * V + i]) < 1e-5);
    free(tail);
    free(ref);
    free(got);
    ql_scratch_free(s);
    ql_infer_free(inf);
    ql_model_free(m);
}

/* PPL over hand-made tokens must equal exp(mean NLL) of the scored positions, whatever the thread count. */
static void test_ppl_bookkeeping(void **state) {
    (void)state;
    char model[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    const int ctx = 16, chunks = 3, V = m->cfg.n_vocab;
    int32_t toks[16 * 3 + 5];
    for (int i = 0; i < ctx * chunks + 5; i++) toks[i] = 3 + (i * 37) % 400;
    /* reference: direct computation */
    ql_scratch *s = ql_scratch_new(inf, ctx);
    float *lg = malloc((size_t)ctx * V * 4);
    double nll = 0, nll_first = 0;
    int count = 0;
    for (int c = 0; c < chunks; c++) {
        int32_t t[16];
        memcpy(t, toks + c * ctx, sizeof t);
        t[0] = 1;
        assert_int_equal(ql_forward(inf, s, t, ctx, 0, lg), QL_OK);
        for (int j = ctx / 2; j < ctx - 1; j++, count++) nll -= ql_log_softmax_at(lg + (size_t)j * V, V, toks[c * ctx + j + 1]);
        if (c == 0) nll_first = nll;
    }
    double want = exp(nll / count);
    /* one chunk: one worker, whose rows every thread scores (as on a device backend) */
    for (int threads = 1; threads <= 3; threads += 2) {
        ql_ppl_opts o1 = {.n_ctx = ctx, .n_chunks = 1, .n_threads = threads};
        ql_ppl_result r1;
        assert_int_equal(ql_perplexity(inf, toks, ctx * chunks, &o1, NULL, &r1), QL_OK);
        assert_int_equal(r1.tokens_scored, ctx - 1 - ctx / 2);
        assert_true(fabs(r1.ppl - exp(nll_first / (ctx - 1 - ctx / 2))) < 1e-6 * r1.ppl);
    }
    char tmp[] = "/tmp/qlab-ppl-XXXXXX";
    int fd = mkstemp(tmp);
    close(fd);
    for (int threads = 1; threads <= 2; threads++) {
        ql_ppl_opts o = {.n_ctx = ctx, .n_threads = threads, .save_logits = threads == 1 ? tmp : NULL,
                         .kld_base = threads == 2 ? tmp : NULL};
        ql_ppl_result r;
        assert_int_equal(ql_perplexity(inf, toks, ctx * chunks + 5, &o, NULL, &r), QL_OK);
        assert_int_equal(r.chunks, chunks);
        assert_int_equal(r.tokens_scored, count);
        if (fabs(r.ppl - want) >= 1e-6 * want) printf("ppl %.9f want %.9f\n", r.ppl, want);
        assert_true(fabs(r.ppl - want) < 1e-6 * want);
        if (threads == 2) {
            /* the same model against its own saved log-probs: KLD ~ 0 (quantization of the file only) */
            assert_true(r.has_kld);
            assert_true(r.kld_mean < 1e-5);
            assert_true(r.top1_agreement > 0.99);
            assert_true(fabs(r.ppl_base - r.ppl) < 1e-3 * r.ppl);
        }
    }
    /* a base computed with another ctx is refused with a message naming the file */
    ql_ppl_opts bad = {.n_ctx = 8, .n_threads = 1, .kld_base = tmp};
    ql_ppl_result r;
    assert_int_equal(ql_perplexity(inf, toks, ctx * chunks, &bad, NULL, &r), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), tmp));
    unlink(tmp);
    free(lg);
    ql_scratch_free(s);
    ql_infer_free(inf);
    ql_model_free(m);
}

/* A synthetic model with `head_dim` (written as attention.key_length, heads not tiling embd): load status,
 * and when it loads, logits of an 8-token pass into lg [8, 259]. */
static ql_status run_head_dim(int head_dim, float *lg) {
    char path[] = "/tmp/qlab-hd-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    char dims[160];
    snprintf(dims, sizeof dims, "layers=1,embd=64,heads=2,kv=1,ff=64,vocab=259,ctx=16,head_dim=%d", head_dim);
    assert_int_equal(ql_synth_parse_dims(dims, &sh), QL_OK);
    assert_int_equal(ql_synth_write(&sh, 7, path, 1, NULL), QL_OK);
    ql_model *m;
    ql_status st = ql_model_load(path, &m);
    if (st == QL_OK) {
        assert_int_equal(m->cfg.head_dim, head_dim);
        assert_int_equal(m->cfg.rope_dim, head_dim);
        ql_infer *inf;
        assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
        ql_scratch *s = ql_scratch_new(inf, 8);
        const int32_t toks[8] = {1, 72, 101, 108, 108, 111, 32, 33};
        assert_int_equal(ql_forward(inf, s, toks, 8, 0, lg), QL_OK);
        ql_scratch_free(s);
        ql_infer_free(inf);
        ql_model_free(m);
    }
    unlink(path);
    return st;
}

static void test_largest_head_dim(void **state) {
    (void)state;
    enum { V = 259 };
    float *a = malloc(sizeof(float) * 8 * V), *b = malloc(sizeof(float) * 8 * V);
    assert_int_equal(run_head_dim(4096, a), QL_OK);
    /* the pass is deterministic and every logit is a number: no stray writes into the rotation */
    assert_int_equal(run_head_dim(4096, b), QL_OK);
    double spread = 0;
    for (int i = 0; i < 8 * V; i++) {
        assert_true(isfinite(a[i]));
        assert_true(a[i] == b[i]);
        spread = fmax(spread, fabs((double)a[i] - a[i % V]));
    }
    assert_true(spread > 0); /* positions differ: attention and rope did something */
    /* one step past the limit is refused, naming the file */
    assert_int_equal(run_head_dim(4098, a), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "head dimension 4098"));
    free(a);
    free(b);
}

/* ---- batched passes: several versions of one weight at once (sensitivity probes) ---- */

typedef struct {
    float *resid; /* [T, D] entering layer `want` */
    int want, T, D;
} resid_grab;

static void grab_resid(void *user, int layer, ql_hook_point where, const float *x, int n, int dim) {
    resid_grab *g = user;
    if (where == QL_HOOK_RESIDUAL && layer == g->want && n == g->T && dim == g->D)
        memcpy(g->resid, x, (size_t)n * dim * sizeof(float));
}

/* ql_forward_variants against one ql_forward_from per (variant, sequence) with that variant swapped in:
 * the same logits up to BLAS blocking (~1e-6 relative), every variant applied (they differ from each other), for a layer
 * weight (start from saved residuals), the embedding (start from tokens) and the output matrix. */
static void check_variants(ql_model *m, const ql_gguf_tensor *t, int layer_from, bool from_tokens, bool llm_int8) {
    enum { T = 16, NSEQ = 2, NV = 3 };
    const int V = m->cfg.n_vocab, D = m->cfg.n_embd;
    const int64_t n = t->ne[0] * t->ne[1];
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    /* LLM.int8()'s outlier columns depend on the rows a matmul sees: a batched pass must keep each sequence
     * its own batch (a threshold low enough that the two sequences' outlier columns differ) */
    ql_act_quant aq = {.mode = QL_ACT_LLM_INT8, .threshold = 1.5f};
    if (llm_int8) assert_true(ql_infer_set_act_quant(inf, m->layers[m->cfg.n_layer - 1].w_down, &aq));
    float *w0 = malloc((size_t)n * 4), *var[NV];
    assert_true(ql_tensor_to_f32(t, w0, 1));
    uint32_t types[NV] = {QL_TYPE_F32, QL_TYPE_Q8_0, QL_TYPE_Q4_0};
    unsigned rng = 12345;
    for (int v = 0; v < NV; v++) {
        var[v] = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) {
            rng = rng * 1103515245u + 12345u;
            var[v][i] = w0[i] * (1.0f + 0.2f * (float)(v + 1) * ((float)(rng >> 16 & 0x7fff) / 32768.0f - 0.5f));
        }
    }
    int32_t toks[NSEQ][T];
    for (int q = 0; q < NSEQ; q++)
        for (int i = 0; i < T; i++) toks[q][i] = i == 0 ? 1 : 3 + (i * 37 + q * 101) % 400;
    /* residuals entering layer_from, from the unperturbed model */
    float *resid[NSEQ];
    ql_scratch *s = ql_scratch_new(inf, T);
    float *lg = malloc((size_t)T * V * 4);
    for (int q = 0; q < NSEQ; q++) {
        resid[q] = malloc((size_t)T * D * 4);
        resid_grab g = {resid[q], layer_from, T, D};
        ql_scratch_set_hook(s, grab_resid, &g);
        assert_int_equal(ql_forward(inf, s, toks[q], T, 0, lg), QL_OK);
        ql_scratch_set_hook(s, NULL, NULL);
    }
    /* one pass per (variant, sequence), the way probes ran before batching */
    float *want = malloc((size_t)NV * NSEQ * T * V * 4), *got = malloc((size_t)NV * NSEQ * T * V * 4);
    for (int v = 0; v < NV; v++) {
        const float *old = ql_infer_swap_weight_typed(inf, t, var[v], types[v]);
        for (int q = 0; q < NSEQ; q++)
            assert_int_equal(ql_forward_from(inf, s, toks[q], from_tokens ? NULL : resid[q], from_tokens ? 0 : layer_from,
                                             T, 0, want + ((size_t)v * NSEQ + q) * T * V),
                             QL_OK);
        ql_infer_swap_weight_typed(inf, t, old, t->type);
    }
    /* a scratch too small for the batch is refused */
    const float *wv[NV] = {var[0], var[1], var[2]};
    ql_weight_variants vs = {t, NV, wv, types};
    const int32_t *tp[NSEQ] = {toks[0], toks[1]};
    const float *xp[NSEQ] = {resid[0], resid[1]};
    assert_int_equal(ql_forward_variants(inf, s, &vs, tp, from_tokens ? NULL : xp, NSEQ, from_tokens ? 0 : layer_from, T,
                                         got),
                     QL_ERR_ARG);
    ql_scratch *sb = ql_scratch_new_rows(inf, T, NV * NSEQ * T);
    assert_int_equal(ql_forward_variants(inf, sb, &vs, tp, from_tokens ? NULL : xp, NSEQ, from_tokens ? 0 : layer_from,
                                         T, got),
                     QL_OK);
    double maxd = 0, spread = 0;
    for (size_t i = 0; i < (size_t)NV * NSEQ * T * V; i++) maxd = fmax(maxd, fabs((double)want[i] - got[i]));
    for (size_t i = 0; i < (size_t)NSEQ * T * V; i++) spread = fmax(spread, fabs((double)got[i] - got[(size_t)NSEQ * T * V + i]));
    printf("%s from layer %d: max |batched - one by one| = %.3g, variants 0/1 differ by %.3g\n", t->name,
           from_tokens ? 0 : layer_from, maxd, spread);
    assert_true(maxd < 1e-4); /* logits of |x| ~ 10: float sums in another blocking */
    assert_true(spread > 1e-3);
    /* the scratch is the plain one again afterwards: an ordinary pass gives the unperturbed logits */
    float *plain = malloc((size_t)T * V * 4);
    assert_int_equal(ql_forward(inf, sb, toks[0], T, 0, plain), QL_OK);
    assert_int_equal(ql_forward(inf, s, toks[0], T, 0, lg), QL_OK);
    for (int i = 0; i < T * V; i++) assert_true(fabs((double)plain[i] - lg[i]) < 1e-5);
    free(plain);
    ql_scratch_free(sb);
    for (int q = 0; q < NSEQ; q++) free(resid[q]);
    for (int v = 0; v < NV; v++) free(var[v]);
    free(w0);
    free(lg);
    free(want);
    free(got);
    ql_scratch_free(s);
    ql_infer_free(inf);
}

static void test_forward_variants(void **state) {
    (void)state;
    char model[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    check_variants(m, m->layers[2].wq, 2, false, false);
    check_variants(m, m->layers[3].w_down, 3, false, false);
    check_variants(m, m->tok_embd, 0, true, false);
    check_variants(m, m->output, m->cfg.n_layer, false, false);
    check_variants(m, m->layers[1].wv, 1, false, true);
    ql_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_llamacpp),
        cmocka_unit_test(test_ppl_bookkeeping),
        cmocka_unit_test(test_largest_head_dim),
        cmocka_unit_test(test_forward_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
