/* test_wmatmul.c — the weight-only runtime (core/wmatmul.c) and the INT8×INT8→INT32 kernels
 * (kernels/int8_gemm.c):
 *  - a matmul against a weight in its stored format (row tiles decoded before each sgemm) equals sgemm over
 *    the once-decoded F32 matrix bit for bit, for row-wise and whole-tensor formats, over several tiles,
 *    with beta 0 and 1 and a bias; rows for the embedding and one-row weights decode the same;
 *  - the whole forward pass on the CPU backend (stored weights) gives the same logits as the same table
 *    fed F32 copies by the pipeline (wants_f32 = true, the earlier path), on a synthetic F16 model;
 *  - every INT8 kernel this CPU has (AVX2, AVX-512 VNNI) equals the scalar reference exactly on random and
 *    adversarial codes (±127 activations against codes 0 and 255, K not a multiple of the vector width,
 *    one-row edges), and the INT8 matmul equals the float emulation of dynamic per-token INT8 activations
 *    (core/actquant.c) times the decoded int8_channel weight within float rounding. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/infer.h"
#include "core/synth.h"
#include "core/wmatmul.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/hgemm.h"
#include "kernels/int8_gemm.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float frand(void) { return (float)(rnd() % 20001) / 10000.0f - 1.0f; }

/* A [N, K] weight stored as format `name`: the codes (owned by the caller) and the tensor that points at them. */
static void *make_weight(const char *name, int K, int N, ql_gguf_tensor *t, float *decoded) {
    const ql_format *f = ql_format_by_name(name);
    assert_non_null(f);
    float *src = malloc(sizeof(float) * (size_t)K * N);
    for (size_t i = 0; i < (size_t)K * N; i++) src[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);
    const int64_t bytes = ql_format_tensor_bytes(f, K, N);
    assert_true(bytes > 0);
    void *codes = malloc((size_t)bytes);
    assert_int_equal(ql_format_quantize(f, src, codes, N, K, NULL, 1), QL_OK);
    assert_int_equal(ql_format_dequantize(f, codes, decoded, N, K, 1), QL_OK);
    free(src);
    memset(t, 0, sizeof *t);
    t->name = (char *)name;
    t->type = f->type;
    t->n_dims = 2;
    t->ne[0] = K, t->ne[1] = N, t->ne[2] = t->ne[3] = 1;
    t->nbytes = (uint64_t)bytes;
    t->data = codes;
    return codes;
}

static void test_stored_equals_decoded(void **state) {
    (void)state;
    /* K = 4096 makes the 1M-float tiles 256 rows: N = 600 runs three tiles, the last one short */
    const char *formats[] = {"q4_k", "q6_k", "q8_0", "q4_0", "iq4_nl", "f16", "bf16", "int4_g128", "int8_channel",
                             "nf4", "int8_tensor", "f32"};
    const int K = 4096, N = 600, T = 7;
    float *x = malloc(sizeof(float) * T * K), *dec = malloc(sizeof(float) * (size_t)K * N);
    float *want = malloc(sizeof(float) * T * N), *got = malloc(sizeof(float) * 3 * K), *bias = malloc(sizeof(float) * N);
    for (int i = 0; i < T * K; i++) x[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    ql_gguf_tensor bt = {.name = "bias", .type = QL_TYPE_F32, .n_dims = 1, .ne = {N, 1, 1, 1}, .data = bias};
    ql_backend_weight bw = {.t = &bt, .act_type = QL_TYPE_F32};
    for (size_t fi = 0; fi < sizeof formats / sizeof *formats; fi++) {
        ql_gguf_tensor t;
        void *codes = make_weight(formats[fi], K, N, &t, dec);
        ql_backend_weight w = {.t = &t, .act_type = QL_TYPE_F32};
        for (int pass = 0; pass < 2; pass++) { /* beta 0, then beta 1 with a bias (residual add) */
            const float beta = (float)pass;
            for (int i = 0; i < T * N; i++) want[i] = got[i] = (float)(i % 13) - 6.0f;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, dec, K, beta, want, N);
            if (pass)
                for (int r = 0; r < T; r++)
                    for (int j = 0; j < N; j++) want[r * N + j] += bias[j];
            assert_int_equal(ql_wmatmul_f32(&w, pass ? &bw : NULL, x, got, T, K, N, beta, 2), QL_OK);
            if (memcmp(got, want, sizeof(float) * T * N) != 0) fail_msg("%s: stored-format matmul differs", formats[fi]);
        }
        /* rows (the embedding lookup) and a one-row view decode exactly as the whole matrix does */
        int32_t ids[3] = {N - 1, 0, 257};
        assert_int_equal(ql_wmatmul_get_rows(&w, ids, 3, K, got), QL_OK);
        for (int i = 0; i < 3; i++) assert_memory_equal(got + (size_t)i * K, dec + (size_t)ids[i] * K, sizeof(float) * K);
        /* a probe's F32 rows win over the stored bytes */
        ql_backend_weight probe = {.t = &t, .f32 = dec + K, .act_type = QL_TYPE_F32};
        assert_int_equal(ql_wmatmul_get_rows(&probe, ids + 1, 1, K, got), QL_OK);
        assert_memory_equal(got, dec + K, sizeof(float) * K);
        free(codes);
    }
    /* a type nobody can decode fails with a message naming the tensor */
    ql_gguf_tensor bad = {.name = "blk.0.ffn_up.weight", .type = 0x7fff, .n_dims = 2, .ne = {K, 4, 1, 1}, .data = x};
    ql_backend_weight bw2 = {.t = &bad, .act_type = QL_TYPE_F32};
    assert_int_equal(ql_wmatmul_f32(&bw2, NULL, x, got, 1, K, 4, 0.0f, 1), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "blk.0.ffn_up.weight"));
    free(x), free(dec), free(want), free(got), free(bias);
}

/* The CPU backend reading stored weights against the same table handed F32 copies by the pipeline. */
static void test_forward_stored_equals_f32(void **state) {
    (void)state;
    char path[] = "/tmp/qlab-wmatmul-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    assert_int_equal(ql_synth_parse_dims("layers=2,embd=256,heads=4,kv=2,ff=512,vocab=700,ctx=64", &sh), QL_OK);
    sh.type = QL_TYPE_F16;
    assert_int_equal(ql_synth_write(&sh, 5, path, 1, NULL), QL_OK);
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    enum { T = 40 };
    const int V = m->cfg.n_vocab;
    int32_t toks[T];
    for (int i = 0; i < T; i++) toks[i] = (i * 53 + 11) % V;
    float *want = malloc(sizeof(float) * T * V), *got = malloc(sizeof(float) * T * V);
    const ql_backend_ops *cpu = ql_backend_find("cpu");
    assert_false(cpu->wants_f32); /* the default reads stored bytes: nothing is decoded at load */
    ql_backend_ops f32 = *cpu;
    f32.name = "cpu-f32-test";
    f32.wants_f32 = true;
    const ql_backend_ops *tables[2] = {&f32, cpu};
    float *out[2] = {want, got};
    for (int i = 0; i < 2; i++) {
        ql_infer *inf;
        assert_int_equal(ql_infer_new_on(m, 1, tables[i], &inf), QL_OK);
        ql_scratch *s = ql_scratch_new(inf, T);
        assert_int_equal(ql_forward(inf, s, toks, T, 0, out[i]), QL_OK);
        ql_scratch_free(s);
        ql_infer_free(inf);
    }
    assert_memory_equal(got, want, sizeof(float) * T * V);
    free(want), free(got);
    ql_model_free(m);
    unlink(path);
}

static void check_kernels(const int8_t *a, const uint8_t *w, int T, int N, int K, const char *what) {
    int32_t *ref = malloc(sizeof(int32_t) * T * N), *got = malloc(sizeof(int32_t) * T * N);
    ql_gemm_s8u8_ref(a, K, w, K + 2, T, N, K, ref, N);
    int ran = 0;
    for (int k = QL_I8GEMM_AVX2; k < QL_I8GEMM_COUNT; k++) {
        memset(got, 0x5a, sizeof(int32_t) * T * N);
        if (!ql_gemm_s8u8_with((ql_i8gemm_kernel)k, a, K, w, K + 2, T, N, K, got, N)) continue;
        ran++;
        if (memcmp(got, ref, sizeof(int32_t) * T * N) != 0)
            fail_msg("%s: kernel %s differs from the reference", what, ql_i8gemm_kernel_name((ql_i8gemm_kernel)k));
    }
    /* the threaded entry point splits rows and must not change a sum */
    ql_gemm_s8u8(a, K, w, K + 2, T, N, K, got, N, 2);
    assert_memory_equal(got, ref, sizeof(int32_t) * T * N);
    if (!ran) print_message("int8 kernels: only the reference runs on this CPU (%s)\n", what);
    free(ref), free(got);
}

static void test_int8_kernels(void **state) {
    (void)state;
    const int shapes[][3] = {{1, 1, 1}, {3, 5, 63}, {4, 4, 64}, {5, 9, 65}, {7, 130, 200}, {17, 70, 1000}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const int T = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        int8_t *a = malloc((size_t)T * K);
        uint8_t *w = malloc((size_t)N * (K + 2));
        for (int mode = 0; mode < 3; mode++) {
            for (int i = 0; i < T * K; i++)
                a[i] = mode == 0 ? (int8_t)((int)(rnd() % 255) - 127) : (int8_t)(((i / 3) & 1) ? 127 : -127);
            for (int i = 0; i < N * (K + 2); i++)
                w[i] = mode == 0 ? (uint8_t)rnd() : mode == 1 ? (uint8_t)((i & 1) ? 255 : 0) : (uint8_t)0;
            /* mode 2: every code 0 (= -128), the most negative weight, against ±127 */
            char what[64];
            snprintf(what, sizeof what, "T=%d N=%d K=%d mode %d", T, N, K, mode);
            check_kernels(a, w, T, N, K, what);
        }
        free(a), free(w);
    }
    /* the longest row the kernels take, all extremes: the sums reach ±K·127·128 without wrapping */
    const int K = QL_I8GEMM_MAX_K, T = 2, N = 2;
    int8_t *a = malloc((size_t)T * K);
    uint8_t *w = malloc((size_t)N * (K + 2));
    for (int i = 0; i < T * K; i++) a[i] = i < K ? 127 : -127;
    memset(w, 0, (size_t)N * (K + 2));
    check_kernels(a, w, T, N, K, "longest row");
    int32_t c[4];
    ql_gemm_s8u8_ref(a, K, w, K + 2, T, N, K, c, N);
    assert_int_equal(c[0], -127 * 128 * K);
    assert_int_equal(c[2], 127 * 128 * K);
    free(a), free(w);
}

/* INT8 weights × dynamic INT8 activations: the integer path against the float emulation. */
static void test_int8_matches_emulation(void **state) {
    (void)state;
    const int K = 1000, N = 300, T = 9;
    float *x = malloc(sizeof(float) * T * K), *xq = malloc(sizeof(float) * T * K), *dec = malloc(sizeof(float) * K * N);
    float *want = malloc(sizeof(float) * T * N), *got = malloc(sizeof(float) * T * N);
    void *xtmp = malloc(sizeof(float) * T * K);
    for (int i = 0; i < T * K; i++) x[i] = frand() * (i % 50 == 0 ? 20.0f : 1.0f);
    for (int i = 0; i < K; i++) x[3 * K + i] = 0.0f; /* an all-zero token: scale 0, codes 0 */
    ql_gguf_tensor t;
    void *codes = make_weight("int8_channel", K, N, &t, dec);
    ql_act_quant aq;
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TOKEN, NULL, 0, 0), QL_OK);
    ql_backend_weight w = {.t = &t, .act_type = QL_TYPE_F32, .aq = &aq};
    assert_true(ql_wmatmul_int8_applies(&w, K));
    /* not for other formats, other modes, or a probe's F32 rows */
    ql_backend_weight probe = w;
    probe.f32 = dec;
    assert_false(ql_wmatmul_int8_applies(&probe, K));
    ql_act_quant fp8;
    assert_int_equal(ql_act_quant_init(&fp8, QL_ACT_FP8_TOKEN, NULL, 0, 0), QL_OK);
    ql_backend_weight wf = w;
    wf.aq = &fp8;
    assert_false(ql_wmatmul_int8_applies(&wf, K));
    ql_gguf_tensor t4;
    float *dec4 = malloc(sizeof(float) * K * N);
    void *codes4 = make_weight("q8_0", 1024, 10, &t4, dec4);
    ql_backend_weight w4 = {.t = &t4, .act_type = QL_TYPE_F32, .aq = &aq};
    assert_false(ql_wmatmul_int8_applies(&w4, 1024));

    /* the codes and scales are exactly the emulation's rounding */
    int8_t *q = malloc((size_t)T * K);
    float d[T];
    ql_quantize_tokens_int8(x, T, K, q, d);
    ql_act_quant_apply(&aq, x, xq, T, K);
    for (int i = 0; i < T * K; i++) assert_true((float)q[i] * d[i / K] == xq[i]);

    for (int pass = 0; pass < 2; pass++) {
        const float beta = (float)pass;
        for (int i = 0; i < T * N; i++) want[i] = got[i] = 0.25f * (float)(i % 7);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, xq, K, dec, K, beta, want, N);
        assert_int_equal(ql_wmatmul_int8(&w, NULL, x, got, T, K, N, beta, xtmp, 2), QL_OK);
        for (int r = 0; r < T; r++)
            for (int j = 0; j < N; j++) {
                /* bound: float rounding of the emulation's K products and sum, against Σ|terms| */
                double mag = beta * fabs(0.25 * ((r * N + j) % 7));
                for (int k = 0; k < K; k++) mag += fabs((double)xq[r * K + k] * dec[(size_t)j * K + k]);
                const double err = fabs((double)got[r * N + j] - want[r * N + j]);
                if (err > 1e-5 * mag + 1e-30)
                    fail_msg("int8 vs emulation at (%d,%d): %g vs %g (sum |terms| %g)", r, j, got[r * N + j],
                             want[r * N + j], mag);
            }
        for (int j = 0; j < N; j++) assert_true(got[3 * N + j] == (pass ? 0.25f * (float)((3 * N + j) % 7) : 0.0f));
    }
    free(codes), free(codes4), free(dec4), free(q);
    free(x), free(xq), free(dec), free(want), free(got), free(xtmp);
}

/* F16 / BF16 weights widened in the kernel (ql_wmatmul_half, called directly: main pins the sgemm path for the
 * tests above): the kernel's own arithmetic bit for bit on either thread count, with the bias and the residual
 * add; the decoded-rows sgemm within float rounding; activations rounded to the weight's type stream as 16 bits
 * and give the same floats. */
static void test_half_path(void **state) {
    (void)state;
    const char *formats[] = {"f16", "bf16"};
    const int K = 512, N = 37, T = 13;
    float *x = malloc(sizeof(float) * T * K), *dec = malloc(sizeof(float) * (size_t)K * N), *bias = malloc(sizeof(float) * N);
    float *want = malloc(sizeof(float) * T * N), *got = malloc(sizeof(float) * T * N), *ref = malloc(sizeof(float) * T * N);
    for (int i = 0; i < T * K; i++) x[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    ql_gguf_tensor bt = {.name = "bias", .type = QL_TYPE_F32, .n_dims = 1, .ne = {N, 1, 1, 1}, .data = bias};
    ql_backend_weight bw = {.t = &bt, .act_type = QL_TYPE_F32};
    for (int fi = 0; fi < 2; fi++) {
        ql_gguf_tensor t;
        void *codes = make_weight(formats[fi], K, N, &t, dec);
        if (!ql_hgemm_available(t.type, K)) {
            printf("SKIP (part): no AVX-512 here, the half path is not taken\n");
            free(codes);
            continue;
        }
        for (int act = 0; act < 2; act++) { /* F32 activations, then activations rounded to the weight's type */
            ql_backend_weight w = {.t = &t, .act_type = act ? t.type : QL_TYPE_F32};
            if (act)
                for (int i = 0; i < T * K; i++)
                    x[i] = t.type == QL_TYPE_F16 ? ql_fp16_to_fp32(ql_fp32_to_fp16(x[i])) : ql_bf16_to_fp32(ql_fp32_to_bf16(x[i]));
            for (int threads = 1; threads <= 2; threads++) {
                for (int i = 0; i < T * N; i++) got[i] = ref[i] = want[i] = (float)(i % 13) - 6.0f;
                assert_int_equal(ql_wmatmul_half(&w, &bw, x, got, T, K, N, 1.0f, threads), QL_OK);
                ql_hgemm_ref(t.type, t.data, N, x, T, K, ref, N, true);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, dec, K, 1.0f, want, N);
                for (int r = 0; r < T; r++)
                    for (int j = 0; j < N; j++) {
                        ref[r * N + j] += bias[j], want[r * N + j] += bias[j];
                        assert_true(fabsf(got[r * N + j] - want[r * N + j]) <= 1e-4f * (1.0f + fabsf(want[r * N + j])));
                    }
                if (memcmp(got, ref, sizeof(float) * T * N)) fail_msg("%s: the half path differs from its reference", formats[fi]);
            }
        }
        free(codes);
    }
    free(x), free(dec), free(bias), free(want), free(got), free(ref);
}

int main(void) {
    /* the tests above compare stored bytes with decoded F32 rows bit for bit: that is the decode + sgemm path; the
     * kernels with their own arithmetic (hgemm, kquant_gemm) are checked against their references */
    setenv("QL_KQUANT_F32", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stored_equals_decoded),
        cmocka_unit_test(test_half_path),
        cmocka_unit_test(test_forward_stored_equals_f32),
        cmocka_unit_test(test_int8_kernels),
        cmocka_unit_test(test_int8_matches_emulation),
    };
    return cmocka_run_group_tests_name("wmatmul", tests, NULL, NULL);
}
