/* test_stats.c — activation statistics: agreement with llama.cpp's imatrix on stories260K, internal
 * consistency (diag of Σxxᵀ = Σx², symmetry), byte-identical files from the same inputs, file
 * validation, and the model fingerprint that refuses statistics from another model (a SmoothQuant-rescaled
 * copy of the model they were collected on included). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline/imatrix.h"
#include "core/ppl.h"
#include "core/stats.h"
#include "methods/layer_f32.h"
#include "tests/test_util.h"

static int32_t *chunks_of(const ql_model *m, const char *text_path, int ctx, int64_t want, int64_t *n_seq) {
    char *text;
    size_t len;
    assert_int_equal(ql_read_file(text_path, &text, &len), QL_OK);
    int32_t *ids;
    int64_t n;
    assert_int_equal(ql_tokenize(m->tok, text, len, true, &ids, &n), QL_OK);
    free(text);
    *n_seq = n / ctx < want ? n / ctx : want;
    for (int64_t i = 0; i < *n_seq; i++) ids[i * ctx] = 1;
    return ids;
}

static uint8_t *slurp(const char *p, size_t *n) {
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void test_stats_consistent_and_deterministic(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt"))
        skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 2, &inf), QL_OK);
    int64_t n_seq;
    int32_t *tok = chunks_of(m, text, 64, 24, &n_seq);
    ql_stats_opts o = {.hessian = true, .output = true, .n_threads = 2};
    ql_stats *a, *b;
    assert_int_equal(ql_stats_collect(inf, tok, n_seq, 64, &o, NULL, &a), QL_OK);
    assert_int_equal(a->n, 4 * 5 + 1);
    for (int i = 0; i < a->n; i++) {
        const ql_stat_entry *e = &a->e[i];
        assert_int_equal(e->n_tokens, n_seq * 64);
        for (int64_t j = 0; j < e->n; j++) {
            assert_true(fabs(e->xtx[j * e->n + j] - e->sum_sq[j]) <= 1e-9 * (1 + e->sum_sq[j]));
            assert_true(e->absmax[j] * e->absmax[j] * (double)e->n_tokens >= e->sum_sq[j] * (1 - 1e-6));
            for (int64_t k = 0; k < j; k++) assert_true(e->xtx[j * e->n + k] == e->xtx[k * e->n + j]);
        }
    }
    assert_non_null(ql_stats_for_tensor(a, "blk.2.attn_v.weight"));
    assert_ptr_equal(ql_stats_for_tensor(a, "blk.2.attn_v.weight"), ql_stats_for_tensor(a, "blk.2.attn_q.weight"));
    assert_int_equal(ql_stats_for_tensor(a, "blk.4.ffn_down.weight")->n, 172);
    assert_null(ql_stats_for_tensor(a, "token_embd.weight"));
    /* same inputs, same thread count: byte-identical files */
    assert_int_equal(ql_stats_collect(inf, tok, n_seq, 64, &o, NULL, &b), QL_OK);
    char p1[] = "/tmp/qlab-st1-XXXXXX", p2[] = "/tmp/qlab-st2-XXXXXX";
    close(mkstemp(p1));
    close(mkstemp(p2));
    assert_int_equal(ql_stats_save(a, p1), QL_OK);
    assert_int_equal(ql_stats_save(b, p2), QL_OK);
    size_t n1, n2;
    uint8_t *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    /* load back: same numbers */
    ql_stats *c;
    assert_int_equal(ql_stats_load(p1, &c), QL_OK);
    assert_int_equal(c->n, a->n);
    assert_memory_equal(c->e[7].xtx, a->e[7].xtx, (size_t)(a->e[7].n * a->e[7].n) * 8);
    /* every truncation is refused, naming the file */
    for (size_t cut = 0; cut < n1; cut += n1 / 97 + 1) {
        FILE *f = fopen(p2, "wb");
        fwrite(b1, 1, cut, f);
        fclose(f);
        ql_stats *bad = NULL;
        assert_int_equal(ql_stats_load(p2, &bad), QL_ERR_FORMAT);
        assert_non_null(strstr(ql_last_error(), p2));
    }
    free(b1);
    free(b2);
    unlink(p1);
    unlink(p2);
    ql_stats_free(a);
    ql_stats_free(b);
    ql_stats_free(c);
    free(tok);
    ql_infer_free(inf);
    ql_model_free(m);
}

/* Statistics carry the fingerprint of the model they were collected on. The case: a SmoothQuant-
 * rescaled model (norms divided by s, weight columns multiplied by s, the same function in float) given the
 * unsmoothed model's statistics gave static activation scales for the wrong activations. */
static void test_fingerprint_refuses_other_model(void **state) {
    (void)state;
    char model[512], text[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt"))
        skip();
    ql_model *m, *sq;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    assert_int_equal(ql_model_load(model, &sq), QL_OK);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 2, &inf), QL_OK);
    int64_t n_seq;
    int32_t *tok = chunks_of(m, text, 64, 8, &n_seq);
    ql_stats_opts o = {.hessian = false, .n_threads = 2};
    ql_stats *st;
    assert_int_equal(ql_stats_collect(inf, tok, n_seq, 64, &o, NULL, &st), QL_OK);
    assert_string_equal(st->model, model);
    /* the file keeps the fingerprint; the same model passes both checks */
    char p1[] = "/tmp/qlab-fp-XXXXXX";
    close(mkstemp(p1));
    assert_int_equal(ql_stats_save(st, p1), QL_OK);
    ql_stats *back;
    assert_int_equal(ql_stats_load_for_model(p1, m, QL_STATS_SAME_MODEL, &back), QL_OK);
    assert_true(back->fp.shape_norms == st->fp.shape_norms && back->fp.weights == st->fp.weights);
    assert_string_equal(back->model, model);
    ql_stats_free(back);
    bool other = true;
    assert_int_equal(ql_stats_check_model(st, p1, sq, QL_STATS_SAME_MODEL, &other), QL_OK);
    assert_false(other);

    /* SmoothQuant on every layer of the second copy, its tensors pointed at the rescaled floats */
    const int nl = sq->cfg.n_layer;
    ql_layer_f32 L[8];
    const void *saved[8][QL_LIN_COUNT + 2];
    for (int l = 0; l < nl; l++) {
        assert_int_equal(ql_layer_f32_init(&L[l], sq, l, 1), QL_OK);
        assert_int_equal(ql_smoothquant_layer(&L[l], st, NULL, NULL), QL_OK);
        ql_layer_tensors *T = &sq->layers[l];
        saved[l][0] = T->attn_norm->data;
        saved[l][1] = T->ffn_norm->data;
        T->attn_norm->data = L[l].attn_norm;
        T->ffn_norm->data = L[l].ffn_norm;
        for (int i = 0; i < QL_LIN_COUNT; i++) {
            ql_gguf_tensor *t = (ql_gguf_tensor *)ql_layer_linear(sq, l, i);
            saved[l][2 + i] = t->data;
            t->data = L[l].w[i];
        }
    }
    for (int mode = 0; mode < 2; mode++) {
        assert_int_equal(ql_stats_check_model(st, p1, sq, mode ? QL_STATS_SAME_ACTIVATIONS : QL_STATS_SAME_MODEL,
                                               NULL),
                         QL_ERR_ARG);
        /* one line naming the statistics file and both models */
        const char *e = ql_last_error();
        assert_non_null(strstr(e, p1));
        assert_non_null(strstr(e, model));
        assert_null(strchr(e, '\n'));
    }
    ql_stats *bad = NULL;
    assert_int_equal(ql_stats_load_for_model(p1, sq, QL_STATS_SAME_ACTIVATIONS, &bad), QL_ERR_ARG);
    assert_null(bad);
    for (int l = 0; l < nl; l++) {
        ql_layer_tensors *T = &sq->layers[l];
        T->attn_norm->data = saved[l][0];
        T->ffn_norm->data = saved[l][1];
        for (int i = 0; i < QL_LIN_COUNT; i++) ((ql_gguf_tensor *)ql_layer_linear(sq, l, i))->data = saved[l][2 + i];
    }
    /* a weight-only change (one linear rounded, as a weight-quantized copy would be): the activations are
     * the model's own, so static activation scales may be used; data-aware methods may not */
    ql_gguf_tensor *q = (ql_gguf_tensor *)ql_layer_linear(sq, 3, 0);
    const void *keep = q->data;
    float *rounded = malloc(q->nbytes);
    for (uint64_t i = 0; i < q->nbytes / 4; i++) rounded[i] = roundf(((const float *)keep)[i] * 64) / 64;
    q->data = rounded;
    assert_int_equal(ql_stats_check_model(st, p1, sq, QL_STATS_SAME_ACTIVATIONS, &other), QL_OK);
    assert_true(other);
    assert_int_equal(ql_stats_check_model(st, p1, sq, QL_STATS_SAME_MODEL, NULL), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "weights"));
    q->data = keep;
    free(rounded);

    /* version 1 files (no fingerprint) are refused with what to do */
    size_t n;
    uint8_t *b = slurp(p1, &n);
    b[8] = 1;
    FILE *f = fopen(p1, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    assert_int_equal(ql_stats_load(p1, &bad), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "version 1"));
    assert_non_null(strstr(ql_last_error(), p1));
    free(b);
    unlink(p1);
    for (int l = 0; l < nl; l++) ql_layer_f32_deinit(&L[l]);
    ql_stats_free(st);
    free(tok);
    ql_infer_free(inf);
    ql_model_free(m);
    ql_model_free(sq);
}

/* Σx² per column over 100 chunks of TinyStories equals llama.cpp's imatrix over the same chunks:
 * the first 100 chunks are a prefix of llama.cpp's 1535, so compare the mean x² shape on those columns
 * loosely (correlation), and exactly in the full-run CLI test. */
static void test_imatrix_agrees_with_llamacpp(void **state) {
    (void)state;
    char model[512], text[512], ref[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf") ||
        !shared_path(text, sizeof text, "data/tinystories-valid.txt") ||
        !shared_path(ref, sizeof ref, "testdata/stories260K-imatrix/imatrix-ts.gguf"))
        skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 2, &inf), QL_OK);
    int64_t n_seq;
    int32_t *tok = chunks_of(m, text, 256, 100, &n_seq);
    ql_stats_opts o = {.hessian = false, .n_threads = 2};
    ql_stats *st;
    assert_int_equal(ql_stats_collect(inf, tok, n_seq, 256, &o, NULL, &st), QL_OK);
    ql_imatrix *im;
    assert_int_equal(ql_imatrix_load(ref, &im), QL_OK);
    double worst = 1;
    for (int i = 0; i < im->n; i++) {
        const ql_imatrix_entry *r = &im->entries[i];
        const ql_stat_entry *e = ql_stats_for_tensor(st, r->name);
        assert_non_null(e);
        assert_int_equal(e->n, r->n);
        double sxy = 0, sxx = 0, syy = 0;
        for (int64_t j = 0; j < r->n; j++) {
            double x = e->sum_sq[j] / e->n_tokens, y = r->sum2[j] / r->count;
            sxy += x * y; sxx += x * x; syy += y * y;
        }
        double cos = sxy / sqrt(sxx * syy);
        worst = fmin(worst, cos);
    }
    printf("imatrix (100 chunks) vs llama.cpp (1535 chunks): worst cosine %.5f\n", worst);
    assert_true(worst > 0.98);
    ql_imatrix_free(im);
    ql_stats_free(st);
    free(tok);
    ql_infer_free(inf);
    ql_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_consistent_and_deterministic),
        cmocka_unit_test(test_fingerprint_refuses_other_model),
        cmocka_unit_test(test_imatrix_agrees_with_llamacpp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
