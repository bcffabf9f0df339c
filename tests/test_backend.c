/* test_backend.c — the forward pass's backend seam (core/backend.h): every registered backend fills every
 * operation and names itself uniquely; $QL_BACKEND picks one and an unknown name is refused listing the known
 * ones; the CPU KV cache stores and loads what it was given and refuses positions past its end; and a backend
 * that reads the stored weight bytes itself (wants_f32 = false, as a device backend will) plugs in without a
 * change to core/infer.c: its logits equal the CPU backend's bit for bit, every layer step reaches the table
 * the expected number of times, and every buffer it handed out comes back; --device (ql_backend_select) checks
 * a name and index before any work and refuses a backend this build lacks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/infer.h"
#include "core/synth.h"
#include "kernels/ggml_types.h"

static void test_registry(void **state) {
    (void)state;
    assert_true(ql_backend_count() >= 1);
    assert_string_equal(ql_backend_at(0)->name, "cpu"); /* the default */
    assert_null(ql_backend_at(ql_backend_count()));
    for (int i = 0; i < ql_backend_count(); i++) {
        const ql_backend_ops *b = ql_backend_at(i);
        assert_non_null(b->name);
        assert_non_null(b->about);
        const void *ops[] = {b->create,  b->destroy, b->alloc,  b->release, b->sync, b->set_threads, b->get_rows,
                             b->matmul,  b->rmsnorm, b->rope,   b->ffn_act, b->kv_new,   b->kv_free,
                             b->kv_store, b->kv_load, b->attention};
        for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
            if (!ops[k]) fail_msg("backend %s: operation %zu is missing", b->name, k);
        assert_ptr_equal(ql_backend_find(b->name), b);
        for (int j = 0; j < i; j++) assert_string_not_equal(ql_backend_at(j)->name, b->name);
    }
    assert_null(ql_backend_find("no-such-backend"));
    assert_non_null(strstr(ql_last_error(), "no-such-backend"));
    assert_non_null(strstr(ql_last_error(), "cpu"));
}

static void test_cpu_kv_cache(void **state) {
    (void)state;
    const ql_backend_ops *cpu = ql_backend_find("cpu");
    void *kv;
    assert_int_equal(cpu->kv_new(NULL, 4, 3, &kv), QL_OK);
    const float k[6] = {1, 2, 3, 4, 5, 6}, v[6] = {-1, -2, -3, -4, -5, -6};
    assert_int_equal(cpu->kv_store(NULL, kv, 1, 2, k, v), QL_OK);
    const float *lk, *lv;
    float tk[6], tv[6];
    assert_int_equal(cpu->kv_load(NULL, kv, 1, 2, &lk, &lv, tk, tv), QL_OK);
    assert_memory_equal(lk, k, sizeof k);
    assert_memory_equal(lv, v, sizeof v);
    assert_int_equal(cpu->kv_store(NULL, kv, 3, 2, k, v), QL_ERR_ARG); /* positions 3..4 of 4 */
    assert_int_equal(cpu->kv_load(NULL, kv, -1, 1, &lk, &lv, tk, tv), QL_ERR_ARG);
    cpu->kv_free(NULL, kv);
}

/* ---- a backend that decodes the stored bytes itself, counting what the pipeline asks of it ---- */

enum { OP_ALLOC, OP_RELEASE, OP_SYNC, OP_ROWS, OP_MATMUL, OP_NORM, OP_ROPE, OP_ACT, OP_KVNEW, OP_KVFREE, OP_STORE,
       OP_LOAD, OP_ATTN, OP_N };
static int g_calls[OP_N];
static const ql_backend_ops *g_cpu;

/* The weight with F32 rows of its own: the pipeline's (a probe's swap) or decoded here from t. */
static ql_backend_weight decoded(const ql_backend_weight *w, float **owned) {
    ql_backend_weight d = *w;
    *owned = NULL;
    if (!d.f32) {
        const ql_gguf_tensor *t = w->t;
        *owned = malloc(sizeof(float) * (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]));
        assert_true(ql_tensor_to_f32(t, *owned, 1));
        d.f32 = *owned;
    }
    return d;
}

static void *b_alloc(void *be, size_t n) { g_calls[OP_ALLOC]++; return g_cpu->alloc(be, n); }
static void b_release(void *be, void *p) { g_calls[OP_RELEASE]++; g_cpu->release(be, p); }
static ql_status b_sync(void *be) { g_calls[OP_SYNC]++; return g_cpu->sync(be); }
static ql_status b_get_rows(void *be, const ql_backend_weight *w, const int32_t *ids, int n, int dim, float *y) {
    g_calls[OP_ROWS]++;
    assert_null(w->f32); /* wants_f32 = false: nothing was decoded for us */
    float *own;
    ql_backend_weight d = decoded(w, &own);
    ql_status s = g_cpu->get_rows(be, &d, ids, n, dim, y);
    free(own);
    return s;
}
static ql_status b_matmul(void *be, const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y,
                          int T, int K, int N, float beta, float *xtmp) {
    g_calls[OP_MATMUL]++;
    assert_null(w->f32);
    assert_int_equal(w->t->ne[0], K);
    assert_int_equal(w->t->ne[1], N);
    float *own, *bown = NULL;
    ql_backend_weight d = decoded(w, &own), bd;
    if (bias) bd = decoded(bias, &bown);
    ql_status s = g_cpu->matmul(be, &d, bias ? &bd : NULL, x, y, T, K, N, beta, xtmp);
    free(own);
    free(bown);
    return s;
}
static ql_status b_rmsnorm(void *be, const ql_backend_weight *w, const float *x, float *y, int T, int D, float eps) {
    g_calls[OP_NORM]++;
    float *own;
    ql_backend_weight d = decoded(w, &own);
    ql_status s = g_cpu->rmsnorm(be, &d, x, y, T, D, eps);
    free(own);
    return s;
}
static ql_status b_rope(void *be, float *x, int T, int h, int l, int n_ctx, float *tmp) {
    g_calls[OP_ROPE]++;
    return g_cpu->rope(be, x, T, h, l, n_ctx, tmp);
}
static ql_status b_act(void *be, float *g, const float *u, size_t n) { g_calls[OP_ACT]++; return g_cpu->ffn_act(be, g, u, n); }
static ql_status b_kv_new(void *be, int t, int d, void **kv) { g_calls[OP_KVNEW]++; return g_cpu->kv_new(be, t, d, kv); }
static void b_kv_free(void *be, void *kv) { g_calls[OP_KVFREE]++; g_cpu->kv_free(be, kv); }
static ql_status b_store(void *be, void *kv, int pos, int T, const float *k, const float *v) {
    g_calls[OP_STORE]++;
    return g_cpu->kv_store(be, kv, pos, T, k, v);
}
static ql_status b_load(void *be, void *kv, int pos, int T, const float **k, const float **v, float *kt, float *vt) {
    g_calls[OP_LOAD]++;
    return g_cpu->kv_load(be, kv, pos, T, k, v, kt, vt);
}
static ql_status b_attn(void *be, const float *q, const float *k, const float *v, float *s, float *o, int T, int l) {
    g_calls[OP_ATTN]++;
    return g_cpu->attention(be, q, k, v, s, o, T, l);
}

static void test_backend_reading_bytes(void **state) {
    (void)state;
    g_cpu = ql_backend_find("cpu");
    ql_backend_ops bytes = *g_cpu;
    bytes.name = "bytes-test";
    bytes.wants_f32 = false;
    bytes.alloc = b_alloc, bytes.release = b_release, bytes.sync = b_sync, bytes.get_rows = b_get_rows;
    bytes.matmul = b_matmul, bytes.rmsnorm = b_rmsnorm, bytes.rope = b_rope, bytes.ffn_act = b_act;
    bytes.kv_new = b_kv_new, bytes.kv_free = b_kv_free, bytes.kv_store = b_store, bytes.kv_load = b_load;
    bytes.attention = b_attn;

    /* F16 weights: decoding and llama.cpp's F16 rounding of the inputs both take part */
    char path[] = "/tmp/qlab-backend-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    assert_int_equal(ql_synth_parse_dims("layers=2,embd=128,heads=4,kv=2,ff=192,vocab=300,ctx=32", &sh), QL_OK);
    sh.type = QL_TYPE_F16;
    assert_int_equal(ql_synth_write(&sh, 11, path, 1, NULL), QL_OK);
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    enum { T = 12 };
    const int V = m->cfg.n_vocab, L = m->cfg.n_layer;
    int32_t toks[T];
    for (int i = 0; i < T; i++) toks[i] = (i * 37 + 5) % V;
    float *want = malloc(sizeof(float) * T * V), *got = malloc(sizeof(float) * T * V);

    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    assert_string_equal(ql_infer_backend(inf)->name, "cpu");
    ql_scratch *s = ql_scratch_new(inf, T);
    assert_int_equal(ql_forward(inf, s, toks, T, 0, want), QL_OK);
    ql_scratch_free(s);
    ql_infer_free(inf);

    memset(g_calls, 0, sizeof g_calls);
    assert_int_equal(ql_infer_new_on(m, 1, &bytes, &inf), QL_OK);
    s = ql_scratch_new(inf, T);
    assert_int_equal(ql_forward(inf, s, toks, T, 0, got), QL_OK);
    ql_scratch_free(s);
    ql_infer_free(inf);
    assert_memory_equal(got, want, sizeof(float) * T * V);
    assert_int_equal(g_calls[OP_ROWS], 1);
    assert_int_equal(g_calls[OP_MATMUL], 7 * L + 1);
    assert_int_equal(g_calls[OP_NORM], 2 * L + 1);
    assert_int_equal(g_calls[OP_ROPE], 2 * L);
    assert_int_equal(g_calls[OP_ACT], L);
    assert_int_equal(g_calls[OP_STORE], L);
    assert_int_equal(g_calls[OP_LOAD], L);
    assert_int_equal(g_calls[OP_ATTN], L);
    assert_true(g_calls[OP_SYNC] >= 1); /* before the logits are the caller's */
    assert_true(g_calls[OP_ALLOC] > 0);
    assert_int_equal(g_calls[OP_RELEASE], g_calls[OP_ALLOC]);
    assert_int_equal(g_calls[OP_KVNEW], 1);
    assert_int_equal(g_calls[OP_KVFREE], 1);

    /* $QL_BACKEND chooses; an unknown name is refused, listing the known ones */
    setenv("QL_BACKEND", "no-such-backend", 1);
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_ERR_ARG);
    assert_null(inf);
    assert_non_null(strstr(ql_last_error(), "known: cpu"));
    setenv("QL_BACKEND", "cpu", 1);
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    ql_infer_free(inf);
    unsetenv("QL_BACKEND");

    free(want);
    free(got);
    ql_model_free(m);
    unlink(path);
}

/* --device: a registered name (and index) is checked before any work and becomes what ql_infer_new runs on; a
 * host backend has no device index; a backend this build lacks is refused saying what the build lacks. */
static void test_select_device(void **state) {
    (void)state;
    char buf[32];
    assert_string_equal(ql_backend_describe(buf, sizeof buf), "cpu"); /* the library's default: no auto choice */
    assert_int_equal(ql_backend_select("cpu:1"), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "no device 1"));
    assert_int_not_equal(ql_backend_select("cpu:x"), QL_OK);
    assert_int_not_equal(ql_backend_select(""), QL_OK);
    assert_int_not_equal(ql_backend_select("tpu"), QL_OK);
    assert_non_null(strstr(ql_last_error(), "known: cpu"));
    if (!ql_backend_find("cuda")) { /* this build has no CUDA backend: the refusal says so */
        assert_int_equal(ql_backend_select("cuda:0"), QL_ERR_UNSUPPORTED);
        assert_non_null(strstr(ql_last_error(), "CUDA"));
    }
    assert_int_equal(ql_backend_select("cpu:0"), QL_OK);
    assert_ptr_equal(ql_backend_default(), ql_backend_find("cpu"));
    assert_int_equal(ql_backend_device(), 0);
}

int main(void) {
    /* the stored-bytes forward is compared with other tables bit for bit: the decode + sgemm path (the F16/BF16 and
     * K-quant kernels with their own arithmetic have tests of their own) */
    setenv("QL_KQUANT_F32", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_cpu_kv_cache),
        cmocka_unit_test(test_backend_reading_bytes),
        cmocka_unit_test(test_select_device),
    };
    return cmocka_run_group_tests_name("backend", tests, NULL, NULL);
}
