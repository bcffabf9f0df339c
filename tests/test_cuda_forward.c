/* test_cuda_forward.c — the CUDA backend (core/backend_cuda.c, kernels/forward_cuda.cu) against the CPU backend.
 * Everywhere nvcc built it: each device op's own arithmetic, run on the host by its *_emulated entry point (the
 * kernel's lanes and reduction tree), against the CPU backend's op on random and adversarial inputs (zeros, huge
 * values, NaN / Inf where they mean something), at the tolerances stated per test. Where a GPU exists (make
 * test-cuda): the device kernels against their emulation, and whole forward passes — PPL of stories260K and
 * tinystories-d256 on the GPU (resident and streamed layers; F32, f16, q8_0, q4_0, iq4_nl KV, qlab's INT / FP8 KV
 * with KIVI's residual window and Hadamard-rotated K, simulated INT8 / FP8 / LLM.int8() activations) within 1e-4
 * relative of the CPU's, and
 * activation statistics (Σ xᵀx on the device) against the CPU's.
 * Without nvcc the file says so and skips; without a GPU the device cases skip with a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/test_util.h"

#ifndef QL_HAVE_CUDA
static void test_no_cuda(void **state) {
    (void)state;
    printf("SKIP: built without nvcc: no CUDA backend to test\n");
    skip();
}
int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_cuda)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
#else

#include "core/backend.h"
#include "core/backend_cuda.h"
#include "core/infer.h"
#include "core/model.h"
#include "core/ppl.h"
#include "core/stats.h"
#include "core/synth.h"
#include "core/tokenizer.h"
#include "core/wmatmul.h"
#include "kernels/cuda_api.h"
#include "kernels/forward_cuda.h"
#include "kernels/ggml_types.h"
#include "formats/format.h"
#include "core/actquant.h"
#include "core/kv_cache.h"
#include "methods/act_recipe.h"

#include <cblas.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <unistd.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}
static float frand(float a) { return a * ((float)(rnd() % 2000001) / 1000000.0f - 1.0f); }

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ulps between a and b (both NaN: 0; one NaN: huge) */
static int64_t ulps(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) ? 0 : INT64_MAX;
    if (a == b) return 0;
    int64_t ia = bits(a), ib = bits(b);
    if (ia & 0x80000000) ia = 0x80000000 - ia;
    if (ib & 0x80000000) ib = 0x80000000 - ib;
    return ia > ib ? ia - ib : ib - ia;
}

/* every value within max_ulp, or within abs_tol of each other (for results near 0 after cancellation) */
static void expect_close(const char *what, const float *got, const float *want, size_t n, int64_t max_ulp, float abs_tol) {
    for (size_t i = 0; i < n; i++) {
        if (ulps(got[i], want[i]) <= max_ulp) continue;
        if (!isnan(got[i]) && !isnan(want[i]) && fabsf(got[i] - want[i]) <= abs_tol) continue;
        fail_msg("%s: element %zu: device math %.9g (0x%08x), cpu %.9g (0x%08x)", what, i, got[i], bits(got[i]), want[i],
                 bits(want[i]));
    }
}

/* A small synthetic model: the CPU backend reads its config (geometry, rope, activation); tests change the
 * config and recreate the backend. */
static ql_model *g_model;
static char g_path[64];

static int setup(void **state) {
    (void)state;
    strcpy(g_path, "/tmp/qlab_cudafwd_XXXXXX");
    int fd = mkstemp(g_path);
    if (fd < 0) return -1;
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    if (ql_synth_parse_dims("layers=2,embd=128,heads=4,kv=2,ff=256,vocab=300,ctx=64", &sh)) return -1;
    if (ql_synth_write(&sh, 7, g_path, 1, NULL) || ql_model_load(g_path, &g_model)) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ql_model_free(g_model);
    unlink(g_path);
    return 0;
}

static void *cpu_ctx(const ql_backend_ops **ops) {
    *ops = ql_backend_find("cpu");
    void *be = NULL;
    assert_int_equal((*ops)->create(g_model, 1, &be), QL_OK);
    return be;
}

static ql_gguf_tensor f32_tensor(float *data, int64_t n) {
    ql_gguf_tensor t = {0};
    t.name = "test";
    t.type = QL_TYPE_F32;
    t.n_dims = 1;
    t.ne[0] = n;
    t.ne[1] = t.ne[2] = t.ne[3] = 1;
    t.nbytes = (uint64_t)n * 4;
    t.data = data;
    return t;
}

/* fills x[n] in one of the input kinds the tests share */
enum { IN_RANDOM, IN_ZEROS, IN_HUGE, IN_TINY, IN_NAN, IN_KINDS };
static void fill(float *x, size_t n, int kind, float scale) {
    for (size_t i = 0; i < n; i++) {
        switch (kind) {
        case IN_ZEROS: x[i] = 0; break;
        case IN_HUGE: x[i] = (i % 3 ? 1.0f : -1.0f) * 3e18f * (1 + (float)(i % 7)); break; /* squares overflow F32 */
        case IN_TINY: x[i] = frand(1e-41f); break;                                          /* denormals */
        case IN_NAN: x[i] = i % 37 == 5 ? NAN : i % 41 == 7 ? INFINITY : frand(scale); break;
        default: x[i] = frand(scale); if (i % 97 == 3) x[i] *= 100; break; /* a few outliers */
        }
    }
}

/* RMSNorm: the double sum of squares in 256 lanes vs left to right: within 1 ulp (the double sum rounds the same
 * to float but for rare ties); the huge inputs overflow the float squares on both sides alike. */
static void test_rmsnorm(void **state) {
    (void)state;
    const ql_backend_ops *cpu;
    void *be = cpu_ctx(&cpu);
    const int dims[] = {1, 64, 257, 1000, 4096};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
        for (int kind = 0; kind < IN_KINDS; kind++) {
            const int D = dims[di], T = 3;
            float *x = malloc(sizeof(float) * T * D), *w = malloc(sizeof(float) * D), *y0 = malloc(sizeof(float) * T * D),
                  *y1 = malloc(sizeof(float) * T * D);
            fill(x, (size_t)T * D, kind, 2.0f);
            fill(w, (size_t)D, IN_RANDOM, 1.5f);
            ql_gguf_tensor wt = f32_tensor(w, D);
            ql_backend_weight bw = {.t = &wt, .f32 = w, .act_type = QL_TYPE_F32};
            assert_int_equal(cpu->rmsnorm(be, &bw, x, y0, T, D, 1e-5f), QL_OK);
            ql_cudafwd_rmsnorm_emulated(x, w, y1, T, D, 1e-5f);
            char what[64];
            snprintf(what, sizeof what, "rmsnorm D=%d input %d", D, kind);
            expect_close(what, y1, y0, (size_t)T * D, 1, 0);
            free(x), free(w), free(y0), free(y1);
        }
    cpu->destroy(be);
}

/* RoPE: the backend's angle table (ql_cuda_rope_params + ql_cudafwd_rope_cs_row) and rotation are the CPU's
 * operations: bit-exact, for adjacent and NEOX pairs, rope_freqs factors, YaRN, linear scaling, sliding layers,
 * LongRoPE's short and long factors (by the pass's context) and rope.scaling.attn_factor. */
static void test_rope(void **state) {
    (void)state;
    ql_config saved = g_model->cfg;
    ql_gguf_tensor *saved_ff = g_model->rope_freqs, *saved_long = g_model->rope_long, *saved_short = g_model->rope_short;
    const int half = g_model->cfg.rope_dim / 2;
    float *ff_data = malloc(sizeof(float) * half);
    for (int i = 0; i < half; i++) ff_data[i] = 1.0f + (float)(i % 5) * 0.75f;
    ql_gguf_tensor ff = f32_tensor(ff_data, half);
    float *long_data = malloc(sizeof(float) * half), *short_data = malloc(sizeof(float) * half);
    for (int i = 0; i < half; i++) long_data[i] = 1.0f + (float)i * 0.5f, short_data[i] = 1.0f + (float)(i % 3) * 0.1f;
    ql_gguf_tensor lt = f32_tensor(long_data, half), st = f32_tensor(short_data, half);
    for (int variant = 0; variant < 8; variant++) {
        ql_config *c = &g_model->cfg;
        *c = saved;
        g_model->rope_freqs = NULL;
        g_model->rope_long = g_model->rope_short = NULL;
        c->rope_neox = variant & 1;
        if (variant == 6) g_model->rope_long = &lt, g_model->rope_short = &st, c->n_ctx_orig = 16;
        if (variant == 7) c->rope_attn_factor = 1.1902380714f;
        if (variant == 2) g_model->rope_freqs = &ff;
        if (variant == 3) c->rope_scale = 4.0f;
        if (variant == 4) {
            c->rope_scale = 8.0f, c->rope_yarn = true, c->yarn_orig_ctx = 32, c->yarn_ext_factor = 1.0f;
            c->yarn_attn_factor = 1.0f, c->yarn_beta_fast = 32.0f, c->yarn_beta_slow = 1.0f;
        }
        if (variant == 5) c->n_swa = 4, c->swa_pattern = 2, c->rope_base_swa = 10000.0f, c->rope_scale_swa = 1.0f;
        const ql_backend_ops *cpu;
        void *be = cpu_ctx(&cpu);
        const int T = 37, H = c->n_head, hd = c->head_dim;
        for (int layer = 0; layer < 2; layer++)
          for (int n_ctx = 8; n_ctx <= 64; n_ctx *= 8) {
            float *x = malloc(sizeof(float) * T * H * hd), *y = malloc(sizeof(float) * T * H * hd);
            float *cs = malloc(sizeof(float) * T * 2 * half), *freq = malloc(sizeof(float) * half), *tmp = malloc(sizeof(float) * c->rope_dim);
            fill(x, (size_t)T * H * hd, IN_RANDOM, 3.0f);
            memcpy(y, x, sizeof(float) * T * H * hd);
            assert_int_equal(cpu->rope(be, x, T, H, layer, n_ctx, tmp), QL_OK);
            ql_cudafwd_rope_params rp;
            ql_cuda_rope_params(g_model, ql_layer_is_swa(c, layer), n_ctx, freq, &rp);
            for (int t = 0; t < T; t++) ql_cudafwd_rope_cs_row(&rp, t, cs + (size_t)t * 2 * half);
            ql_cudafwd_rope_emulated(y, cs, T, H, hd, half, c->rope_neox != 0);
            char what[64];
            snprintf(what, sizeof what, "rope variant %d layer %d n_ctx %d", variant, layer, n_ctx);
            expect_close(what, y, x, (size_t)T * H * hd, 0, 0);
            free(x), free(y), free(cs), free(freq), free(tmp);
        }
        cpu->destroy(be);
    }
    g_model->cfg = saved;
    g_model->rope_freqs = saved_ff;
    g_model->rope_long = saved_long, g_model->rope_short = saved_short;
    free(ff_data), free(long_data), free(short_data);
}

/* Attention as the backend runs it (scores and output by sgemm per head, the causal softmax kernel between) vs
 * the CPU's: the softmax's max is exact, its float sum is a 256-lane tree instead of left to right, so the
 * normalizer differs by the CPU's own rounding of a left-to-right sum of up to T terms (~sqrt(T)·2^-24 relative,
 * measured up to 1.2e-6); stated tolerance 8 ulp or 1e-5·max|v| absolute. GQA, soft-cap, sliding window; huge scores (near one-hot), zeros (uniform),
 * a NaN key (every row that sees it NaN on both sides). */
static void test_attention(void **state) {
    (void)state;
    ql_config saved = g_model->cfg;
    for (int variant = 0; variant < 3; variant++)
        for (int kind = 0; kind < IN_KINDS; kind++) {
            ql_config *c = &g_model->cfg;
            *c = saved;
            if (variant == 1) c->attn_softcap = 5.0f;
            if (variant == 2) c->n_swa = 5, c->swa_pattern = 2;
            const ql_backend_ops *cpu;
            void *be = cpu_ctx(&cpu);
            const int T = 300, H = c->n_head, HKV = c->n_head_kv, hd = c->head_dim, group = H / HKV;
            const int ldq = H * hd, ldkv = HKV * hd;
            float *q = malloc(sizeof(float) * T * ldq), *k = malloc(sizeof(float) * T * ldkv), *v = malloc(sizeof(float) * T * ldkv);
            float *S = malloc(sizeof(float) * T * T), *o0 = malloc(sizeof(float) * T * ldq), *o1 = malloc(sizeof(float) * T * ldq);
            fill(q, (size_t)T * ldq, kind == IN_NAN ? IN_RANDOM : kind, kind == IN_HUGE ? 1.0f : 1.0f);
            if (kind == IN_HUGE)
                for (int i = 0; i < T * ldq; i++) q[i] = frand(1e4f);
            fill(k, (size_t)T * ldkv, kind == IN_HUGE ? IN_RANDOM : kind == IN_NAN ? IN_RANDOM : kind, 1.0f);
            if (kind == IN_NAN) k[(size_t)200 * ldkv + 3] = NAN; /* key 200 of kv head 0 */
            fill(v, (size_t)T * ldkv, IN_RANDOM, 2.0f);
            assert_int_equal(cpu->attention(be, q, k, v, S, o0, T, 0), QL_OK);
            for (int h = 0; h < H; h++) {
                const int kvh = h / group;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, c->attn_scale, q + h * hd, ldq,
                            k + kvh * hd, ldkv, 0.0f, S, T);
                ql_cudafwd_softmax_emulated(S, T, c->attn_softcap, ql_layer_is_swa(c, 0) ? c->n_swa : 0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S, T, v + kvh * hd, ldkv, 0.0f,
                            o1 + h * hd, ldq);
            }
            char what[64];
            snprintf(what, sizeof what, "attention variant %d input %d", variant, kind);
            float vmax = 0;
            for (int i = 0; i < T * ldkv; i++) vmax = fmaxf(vmax, fabsf(v[i]));
            expect_close(what, o1, o0, (size_t)T * ldq, 8, 1e-5f * vmax);
            if (kind == IN_NAN && variant != 2) assert_true(isnan(o1[(size_t)250 * ldq]) && !isnan(o1[(size_t)150 * ldq]));
            free(q), free(k), free(v), free(S), free(o0), free(o1);
            cpu->destroy(be);
        }
    g_model->cfg = saved;
}

/* SwiGLU (host expf on both sides: bit-exact here; the device's expf is within 2 ulp) and GeGLU through the
 * CPU's own fp16 table (bit-exact everywhere), including the ±10 cut-offs, ±Inf, NaN and huge values. */
static void test_glu(void **state) {
    (void)state;
    ql_config saved = g_model->cfg;
    uint16_t *table = malloc(sizeof(uint16_t) << 16);
    ql_cudafwd_gelu_table(table);
    const size_t n = 4099;
    for (int act = 0; act < 2; act++)
        for (int kind = 0; kind < IN_KINDS; kind++) {
            g_model->cfg.ffn_act = act ? QL_FFN_GEGLU_TANH : saved.ffn_act;
            if (!act) assert_int_not_equal(saved.ffn_act, QL_FFN_GEGLU_TANH);
            const ql_backend_ops *cpu;
            void *be = cpu_ctx(&cpu);
            float *g0 = malloc(sizeof(float) * n), *g1 = malloc(sizeof(float) * n), *up = malloc(sizeof(float) * n);
            fill(g0, n, kind, 12.0f);
            g0[0] = -10.0f, g0[1] = 10.0f, g0[2] = -9.999f, g0[3] = 9.999f, g0[4] = -INFINITY, g0[5] = 88.7f;
            fill(up, n, IN_RANDOM, 2.0f);
            memcpy(g1, g0, sizeof(float) * n);
            assert_int_equal(cpu->ffn_act(be, g0, up, n), QL_OK);
            ql_cudafwd_glu_emulated(g1, up, n, act ? table : NULL);
            char what[64];
            snprintf(what, sizeof what, "%s input %d", act ? "geglu" : "swiglu", kind);
            expect_close(what, g1, g0, n, 0, 0);
            free(g0), free(g1), free(up);
            cpu->destroy(be);
        }
    g_model->cfg = saved;
    free(table);
}

/* Soft-cap: the same operations (bit-exact on the host; the device's tanhf within 2 ulp). */
static void test_softcap(void **state) {
    (void)state;
    const ql_backend_ops *cpu;
    void *be = cpu_ctx(&cpu);
    const size_t n = 1000;
    for (int kind = 0; kind < IN_KINDS; kind++) {
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        fill(a, n, kind, 100.0f);
        memcpy(b, a, sizeof(float) * n);
        assert_int_equal(cpu->softcap(be, a, n, 30.0f), QL_OK);
        ql_cudafwd_softcap_emulated(b, n, 30.0f);
        expect_close("softcap", b, a, n, 0, 0);
        free(a), free(b);
    }
    cpu->destroy(be);
}

/* llama.cpp's activation rounding before a matmul: the CPU backend's matmul with act_type and an identity
 * weight returns the rounded activations exactly (finite inputs: an Inf would meet the identity's zeros);
 * F16 / BF16 also against base's conversions on NaN / Inf. Bit-exact. */
static void test_round_act(void **state) {
    (void)state;
    const ql_backend_ops *cpu;
    void *be = cpu_ctx(&cpu);
    const int K = 512, T = 4;
    float *eye = calloc((size_t)K * K, sizeof(float));
    for (int i = 0; i < K; i++) eye[(size_t)i * K + i] = 1.0f;
    ql_gguf_tensor wt = f32_tensor(eye, (int64_t)K * K);
    wt.ne[0] = K, wt.ne[1] = K, wt.n_dims = 2;
    /* Q4_0: no activation type of its own; the CPU rounds every such type as Q8_0 */
    const uint32_t acts[] = {QL_TYPE_F16, QL_TYPE_BF16, QL_TYPE_Q8_0, QL_TYPE_Q8_1, QL_TYPE_Q8_K, QL_TYPE_Q4_0};
    float *x = malloc(sizeof(float) * T * K), *y0 = malloc(sizeof(float) * T * K), *y1 = malloc(sizeof(float) * T * K),
          *xtmp = malloc(sizeof(float) * T * K);
    for (size_t ai = 0; ai < sizeof acts / sizeof *acts; ai++)
        for (int kind = 0; kind < IN_NAN; kind++) {
            fill(x, (size_t)T * K, kind, 4.0f);
            if (kind == IN_HUGE)
                for (int i = 0; i < T * K; i++) x[i] = frand(6e4f); /* near the fp16 limit of the Q8_0 scale */
            /* ties in the code rounding; the denormal rows stay whole: their Q8_0 scale rounds to 0 in fp16 and
             * 0·Inf makes every value NaN on both sides (and the identity matmul spreads a NaN along its row) */
            if (kind != IN_TINY)
                for (int i = 0; i < 64; i++) x[i] = (float)(i - 32) * 0.5f;
            ql_backend_weight bw = {.t = &wt, .f32 = eye, .act_type = acts[ai]};
            assert_int_equal(cpu->matmul(be, &bw, NULL, x, y0, T, K, K, 0.0f, xtmp), QL_OK);
            assert_int_equal(ql_cudafwd_round_act_emulated(acts[ai], x, y1, T, K), QL_OK);
            char what[64];
            snprintf(what, sizeof what, "round to type %u input %d", acts[ai], kind);
            expect_close(what, y1, y0, (size_t)T * K, 0, 0);
        }
    const float special[] = {NAN, -NAN, INFINITY, -INFINITY, 65504.0f, 65520.0f, 1e-8f, -0.0f, 3.3895314e38f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) {
        float h, b;
        assert_int_equal(ql_cudafwd_round_act_emulated(QL_TYPE_F16, &special[i], &h, 1, 1), QL_OK);
        assert_int_equal(ql_cudafwd_round_act_emulated(QL_TYPE_BF16, &special[i], &b, 1, 1), QL_OK);
        assert_int_equal(bits(h), bits(ql_fp16_to_fp32(ql_fp32_to_fp16(special[i]))));
        assert_int_equal(bits(b), bits(ql_bf16_to_fp32(ql_fp32_to_bf16(special[i]))));
    }
    assert_int_equal(ql_cudafwd_round_act_emulated(QL_TYPE_F32, x, y1, T, K), QL_ERR_UNSUPPORTED);
    assert_int_equal(ql_cudafwd_round_act_emulated(QL_TYPE_Q8_0, x, y1, 1, 33), QL_ERR_ARG);
    free(eye), free(x), free(y0), free(y1), free(xtmp);
    cpu->destroy(be);
}

/* The 16-bit KV store: every fp16 / bf16 pattern decodes as base does, and encoding matches base on random,
 * huge, tiny (denormal) and NaN / Inf values. */
static void test_kv_half(void **state) {
    (void)state;
    uint16_t *codes = malloc(sizeof(uint16_t) << 16);
    float *dec = malloc(sizeof(float) << 16);
    for (int i = 0; i < 1 << 16; i++) codes[i] = (uint16_t)i;
    for (int bf = 0; bf < 2; bf++) {
        ql_cudafwd_from_half_emulated(codes, dec, 1 << 16, bf);
        for (int i = 0; i < 1 << 16; i++)
            assert_int_equal(bits(dec[i]), bits(bf ? ql_bf16_to_fp32((uint16_t)i) : ql_fp16_to_fp32((uint16_t)i)));
        for (int kind = 0; kind < IN_KINDS; kind++) {
            enum { N = 4096 };
            float x[N];
            uint16_t enc[N];
            fill(x, N, kind, kind == IN_RANDOM ? 7e4f : 3.0f);
            ql_cudafwd_to_half_emulated(x, enc, N, bf);
            for (int i = 0; i < N; i++) assert_int_equal(enc[i], bf ? ql_fp32_to_bf16(x[i]) : ql_fp32_to_fp16(x[i]));
        }
    }
    free(codes), free(dec);
}

/* The block KV types the backend stores on the device, against core/kv_cache.c's CPU store byte for byte: q8_0
 * with llama.cpp's cache-write rounding (ties to even: codes on .5 engineered), q4_0 through the registry's CUDA
 * codec, iq4_nl with ggml's quicker cache-write search; random, tie, zero, huge and NaN / Inf rows. */
static void test_kv_blocks(void **state) {
    (void)state;
    const char *names[3] = {"q8_0", "q4_0", "iq4_nl"};
    enum { HKV = 2, HD = 64, T = 40, D = HKV * HD };
    for (int ti = 0; ti < 3; ti++)
        for (int kind = 0; kind < IN_KINDS + 1; kind++) {
            ql_kv_scheme sch;
            assert_true(ql_kv_scheme_parse(names[ti], &sch));
            ql_kv_buf *b = ql_kv_buf_new(&sch.k, T, HKV, HD);
            assert_non_null(b);
            float x[T * D];
            if (kind < IN_KINDS) fill(x, T * D, kind, 3.0f);
            else /* ties: amax 127 makes id = 1, so every x.5 is a tie */
                for (int i = 0; i < T * D; i++) x[i] = i % 32 == 0 ? 127.0f : (float)((int)(rnd() % 200) - 100) + 0.5f;
            assert_int_equal(ql_kv_buf_store(b, 0, T, x), QL_OK);
            int64_t row_bytes;
            const uint8_t *want = ql_kv_buf_bytes(b, &row_bytes);
            uint8_t *got = malloc((size_t)row_bytes * T);
            const ql_format *f = ql_format_by_type(sch.k.type);
            if (ti == 0) assert_int_equal(ql_cudafwd_quantize_q8_0_kv_emulated(x, got, T * D), QL_OK);
            else if (ti == 2) assert_int_equal(ql_cuda_quantize_iq4_nl_kv_emulated(x, got, T, D), QL_OK);
            else assert_int_equal(f->cuda->quantize_emulated(x, got, T, D), QL_OK);
            if (memcmp(got, want, (size_t)row_bytes * T) != 0) fail_msg("%s input %d: device encoding differs", names[ti], kind);
            /* and what the device decodes is what the CPU cache hands out */
            float dec[T * D], cpu[T * D];
            assert_int_equal(f->cuda->dequantize_emulated(got, dec, T, D), QL_OK);
            assert_int_equal(ql_kv_buf_load(b, 0, T, cpu), QL_OK);
            expect_close(names[ti], dec, cpu, T * D, 0, 0);
            free(got);
            ql_kv_buf_free(b);
        }
}

/* qlab's INT / FP8 KV sides as the backend keeps them on the device (float rows, then the decode of every whole
 * token group, rotated when _had): the kernels' arithmetic against core/kv_cache.c's store and load bit for bit,
 * on random, zero, huge, tiny and NaN rows; and the float band's query/key pairs against the CPU's
 * ql_kv_side_quantized_prefix. */
static void test_kv_sim(void **state) {
    (void)state;
    const char *names[] = {"int8_token_g32",   "int4_token_g64",  "int2_token_g128_had:f32", "int4_channel_g32",
                           "int2_channel_g32_r16_had:f32", "int8_channel_g64_r8", "fp8_e4m3", "fp8_e5m2_r8",
                           "fp8_e4m3_had:f32"}; /* _had: K only */
    enum { HKV = 2, HD = 128, T = 72, D = HKV * HD };
    for (size_t ti = 0; ti < QL_ARRAY_LEN(names); ti++)
        for (int kind = 0; kind < IN_KINDS; kind++) {
            ql_kv_scheme sch;
            assert_true(ql_kv_scheme_parse(names[ti], &sch));
            ql_kv_buf *b = ql_kv_buf_new(&sch.k, T, HKV, HD);
            assert_non_null(b);
            float *x = malloc(sizeof(float) * T * D), *y = calloc(T * D, sizeof(float)), *tmp = malloc(sizeof(float) * T * D);
            float *cpu = malloc(sizeof(float) * T * D);
            fill(x, T * D, kind, 3.0f);
            assert_int_equal(ql_kv_buf_store(b, 0, T, x), QL_OK);
            assert_int_equal(ql_kv_buf_load(b, 0, T, cpu), QL_OK);
            const ql_cudafwd_kv_side sd = ql_cuda_kv_sim_side(&sch.k, HKV, HD);
            const int G = ql_kv_side_token_group(&sch.k), end = T / G * G;
            ql_cudafwd_kv_round_emulated(&sd, x, y, tmp, 0, end);
            memcpy(y + (size_t)end * D, x + (size_t)end * D, sizeof(float) * (T - end) * D); /* the float tail */
            char what[96];
            snprintf(what, sizeof what, "kv %s input %d", names[ti], kind);
            expect_close(what, y, cpu, (size_t)T * D, 0, 0);
            if (kind == IN_RANDOM) { /* the rounding did something */
                int changed = 0;
                for (int i = 0; i < end * D; i++) changed += y[i] != x[i];
                assert_true(changed > end * D / 4);
            }
            /* the band: query i reads key j in float exactly where the CPU's prefix says */
            float *S = calloc((size_t)T * T, sizeof(float)), *ones = malloc(sizeof(float) * T * T), *B = malloc(sizeof(float) * T * T);
            for (int i = 0; i < T * T; i++) ones[i] = 1.0f;
            ql_cudafwd_kv_patch_emulated(S, ones, T, sch.k.residual, G);
            ql_cudafwd_kv_band_emulated(ones, B, T, sch.k.residual, G);
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    const float want = j >= ql_kv_side_quantized_prefix(&sch.k, i + 1) && j <= i ? 1.0f : 0.0f;
                    assert_true(S[i * T + j] == want && B[i * T + j] == want);
                }
            free(S);
            free(ones);
            free(B);
            free(x);
            free(y);
            free(tmp);
            free(cpu);
            ql_kv_buf_free(b);
        }
}

/* Simulated activation quantization on the device (the backend's matmul rounds its input with it): the kernel's
 * arithmetic against core/actquant.c's ql_act_quant_apply bit for bit, every mode, on random, zero, huge, tiny and
 * NaN rows of a width that is not a multiple of the lanes; LLM.int8() with outlier columns present. */
static void test_act_quant(void **state) {
    (void)state;
    enum { T = 7, K = 300 };
    const ql_act_mode modes[] = {QL_ACT_INT8_TOKEN, QL_ACT_INT8_TENSOR, QL_ACT_FP8_TOKEN, QL_ACT_FP8_TENSOR, QL_ACT_LLM_INT8};
    for (size_t mi = 0; mi < QL_ARRAY_LEN(modes); mi++)
        for (int kind = 0; kind < IN_KINDS; kind++) {
            float x[T * K], want[T * K], got[T * K];
            fill(x, T * K, kind, 3.0f);
            ql_act_quant aq = {.mode = modes[mi], .scale = 0.02f, .threshold = 4.0f};
            const int n_out = ql_act_quant_apply(&aq, x, want, T, K);
            if (modes[mi] == QL_ACT_LLM_INT8 && kind == IN_RANDOM) assert_true(n_out > 0 && n_out < K);
            ql_cudafwd_act_quant_emulated((int)aq.mode, aq.scale, aq.threshold, x, got, T, K);
            char what[64];
            snprintf(what, sizeof what, "act %s input %d", ql_act_mode_name(aq.mode), kind);
            expect_close(what, got, want, (size_t)T * K, 0, 0);
        }
}

/* INT8 weights under dynamic INT8 activations on the device: the kernels' per-token codes and int32 products with
 * their epilogue against core/wmatmul.c's ql_wmatmul_int8 bit for bit (overwriting and accumulating; a zero token,
 * huge and tiny inputs; K not a multiple of the 256 lanes or of the 32 lanes of a product). */
static void test_int8_matmul(void **state) {
    (void)state;
    enum { T = 6, K = 333, N = 70 };
    const ql_format *f = ql_format_by_name("int8_channel");
    assert_non_null(f);
    float *w = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * T * K);
    float *want = malloc(sizeof(float) * T * N), *got = malloc(sizeof(float) * T * N), *d = malloc(sizeof(float) * T);
    int8_t *q = malloc((size_t)T * K);
    void *xtmp = malloc(sizeof(float) * T * K + 64);
    const int64_t bytes = ql_format_tensor_bytes(f, K, N);
    assert_int_equal(bytes, (int64_t)N * (K + 2));
    uint8_t *rows = malloc((size_t)bytes);
    fill(w, (size_t)K * N, IN_RANDOM, 1.0f);
    assert_int_equal(ql_format_quantize(f, w, rows, N, K, NULL, 1), QL_OK);
    ql_gguf_tensor t;
    memset(&t, 0, sizeof t);
    t.name = (char *)"int8";
    t.type = f->type;
    t.n_dims = 2;
    t.ne[0] = K, t.ne[1] = N, t.ne[2] = t.ne[3] = 1;
    t.nbytes = (uint64_t)bytes;
    t.data = rows;
    ql_act_quant aq;
    assert_int_equal(ql_act_quant_init(&aq, QL_ACT_INT8_TOKEN, NULL, 0, 0), QL_OK);
    const ql_backend_weight bw = {.t = &t, .act_type = QL_TYPE_F32, .aq = &aq};
    assert_true(ql_wmatmul_int8_applies(&bw, K));
    for (int kind = 0; kind < IN_KINDS; kind++)
        for (int pass = 0; pass < 2; pass++) {
            fill(x, (size_t)T * K, kind == IN_NAN ? IN_RANDOM : kind, 3.0f); /* NaN: no code to compare */
            for (int i = 0; i < K; i++) x[2 * K + i] = 0.0f; /* a zero token: scale 0, codes 0 */
            for (int i = 0; i < T * N; i++) want[i] = got[i] = 0.25f * (float)(i % 7);
            const float beta = (float)pass;
            assert_int_equal(ql_wmatmul_int8(&bw, NULL, x, want, T, K, N, beta, xtmp, 1), QL_OK);
            ql_cudafwd_int8_matmul_emulated(x, q, d, rows, K + 2, got, T, K, N, beta);
            char what[48];
            snprintf(what, sizeof what, "int8 matmul input %d beta %d", kind, pass);
            expect_close(what, got, want, (size_t)T * N, 0, 0);
        }
    free(w), free(x), free(want), free(got), free(d), free(q), free(xtmp), free(rows);
}

/* Σ xᵀx of activation statistics through the backend's xtx ops: the CPU backend's table given host xtx ops that
 * run the CUDA backend's dsyrk call (operation, triangle, layout) on host BLAS, against the plain CPU collection:
 * core/stats.c's plumbing (an accumulator per entry and worker, folded into the host's at the end) and the
 * layout. Within 1e-12 relative (double sums; the order of BLAS's blocking may differ), channel statistics equal. */
typedef struct {
    double *H;
    int D;
} emu_xtx;
static ql_status emu_xtx_new(void *be, int D, void **acc) {
    (void)be;
    emu_xtx *a = calloc(1, sizeof *a);
    a->D = D;
    a->H = calloc((size_t)D * D, sizeof(double));
    *acc = a;
    return QL_OK;
}
static ql_status emu_xtx_add(void *be, void *acc, const float *x, int T, int D) {
    (void)be;
    ql_cuda_xtx_emulated(x, T, D, ((emu_xtx *)acc)->H);
    return QL_OK;
}
static ql_status emu_xtx_get(void *be, void *acc, double *H) {
    (void)be;
    emu_xtx *a = acc;
    for (int64_t i = 0; i < (int64_t)a->D * a->D; i++) H[i] += a->H[i];
    return QL_OK;
}
static void emu_xtx_free(void *be, void *acc) {
    (void)be;
    emu_xtx *a = acc;
    free(a->H);
    free(a);
}

static void test_xtx(void **state) {
    (void)state;
    const ql_backend_ops *cpu = ql_backend_find("cpu");
    ql_backend_ops emu = *cpu;
    emu.name = "cpu-with-device-xtx";
    emu.xtx_new = emu_xtx_new, emu.xtx_add = emu_xtx_add, emu.xtx_get = emu_xtx_get, emu.xtx_free = emu_xtx_free;
    enum { NSEQ = 6, L = 24 };
    int32_t toks[NSEQ * L];
    for (int i = 0; i < NSEQ * L; i++) toks[i] = (i * 37 + 5) % g_model->cfg.n_vocab;
    /* a serial (device) backend runs the two workers one after another */
    ql_backend_ops emu_serial = emu;
    emu_serial.serial = true;
    emu_serial.name = "cpu-with-device-xtx, serial";
    ql_stats_opts o = {.hessian = true, .output = true, .n_threads = 2};
    ql_stats *st[3];
    const ql_backend_ops *tables[3] = {cpu, &emu, &emu_serial};
    for (int k = 0; k < 3; k++) {
        ql_infer *inf;
        assert_int_equal(ql_infer_new_on(g_model, 1, tables[k], &inf), QL_OK);
        assert_int_equal(ql_stats_collect(inf, toks, NSEQ, L, &o, NULL, &st[k]), QL_OK);
        ql_infer_free(inf);
    }
    /* The three runs' forward passes are the CPU backend's, but the workers' passes differ in threading (and the
     * serial one in order), and OpenBLAS's kernels on some CPUs (Zen 5 with Debian's 0.3.21) then differ in the
     * activations' last bits. A wrong layout or triangle is off by O(1); those differences stay within 1e-5 relative (1.4e-6 seen). */
    for (int r = 1; r < 3; r++) {
        assert_int_equal(st[0]->n, st[r]->n);
        for (int i = 0; i < st[0]->n; i++) {
            const ql_stat_entry *a = &st[r - 1]->e[i], *b = &st[r]->e[i];
            assert_int_equal(a->n_tokens, b->n_tokens);
            for (int64_t j = 0; j < a->n; j++)
                if (!(fabs(a->sum_abs[j] - b->sum_abs[j]) <= 1e-5 * fabs(a->sum_abs[j])))
                    fail_msg("%s: sum_abs[%lld] %.17g, %s %.17g", a->name, (long long)j, a->sum_abs[j],
                             tables[r]->name, b->sum_abs[j]);
            assert_non_null(a->xtx);
            double amax = 0;
            for (int64_t j = 0; j < a->n * a->n; j++) amax = fmax(amax, fabs(a->xtx[j]));
            assert_true(amax > 0);
            for (int64_t j = 0; j < a->n * a->n; j++)
                if (!(fabs(a->xtx[j] - b->xtx[j]) <= 1e-5 * amax))
                    fail_msg("%s: xtx[%lld] %.17g, %s %.17g", a->name, (long long)j, a->xtx[j], tables[r]->name,
                             b->xtx[j]);
        }
    }
    ql_stats_free(st[0]);
    ql_stats_free(st[1]);
    ql_stats_free(st[2]);
}

/* cuBLAS is opened at run time (not linked into qlab): the loader finds the build's library and every function. */
static void test_blas_open(void **state) {
    (void)state;
    const char *err = ql_cuda_blas_open();
    if (err) fail_msg("%s", err);
}

/* ---- on a GPU ---- */

static bool have_gpu(void) {
    if (ql_cuda_available()) return true;
    printf("SKIP: no CUDA device on this machine (cudaGetDeviceCount): the device checks run in make test-cuda on a GPU\n");
    return false;
}

/* The kernels against their host emulation: bit-exact where no transcendental is involved (RMSNorm, RoPE,
 * activation rounding, 16-bit KV), within 4 ulp / 1e-6 where expf / tanhf are (softmax, SwiGLU). */
static void test_device_kernels(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    const int T = 67, D = 1024, half = 32, H = 4, hd = 64;
    const size_t n = (size_t)T * D;
    float *x, *w, *y, *cs, *S;
    uint16_t *h16;
    assert_int_equal(cudaMallocManaged((void **)&x, n * 4, cudaMemAttachGlobal), cudaSuccess);
    assert_int_equal(cudaMallocManaged((void **)&w, n * 4, cudaMemAttachGlobal), cudaSuccess);
    assert_int_equal(cudaMallocManaged((void **)&y, n * 4, cudaMemAttachGlobal), cudaSuccess);
    assert_int_equal(cudaMallocManaged((void **)&cs, (size_t)T * 2 * half * 4, cudaMemAttachGlobal), cudaSuccess);
    assert_int_equal(cudaMallocManaged((void **)&S, (size_t)T * T * 4, cudaMemAttachGlobal), cudaSuccess);
    assert_int_equal(cudaMallocManaged((void **)&h16, n * 2, cudaMemAttachGlobal), cudaSuccess);
    float *ref = malloc(n * 4), *ref2 = malloc(n * 4);
    uint16_t *r16 = malloc(n * 2);
    for (int kind = 0; kind < IN_KINDS; kind++) {
        fill(x, n, kind, 3.0f);
        fill(w, n, IN_RANDOM, 1.0f);
        assert_int_equal(ql_cudafwd_rmsnorm(x, w, y, T, D, 1e-6f, NULL), QL_OK);
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        ql_cudafwd_rmsnorm_emulated(x, w, ref, T, D, 1e-6f);
        expect_close("device rmsnorm", y, ref, n, 0, 0);
        memcpy(y, x, n * 4), memcpy(ref, x, n * 4);
        for (int i = 0; i < T * 2 * half; i++) cs[i] = frand(1.0f);
        assert_int_equal(ql_cudafwd_rope(y, cs, T, H, hd, half, kind & 1, NULL), QL_OK);
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        ql_cudafwd_rope_emulated(ref, cs, T, H, hd, half, kind & 1);
        expect_close("device rope", y, ref, (size_t)T * H * hd, 0, 0);
        const uint32_t acts[] = {QL_TYPE_F16, QL_TYPE_BF16, QL_TYPE_Q8_0, QL_TYPE_Q8_K};
        for (int a = 0; a < 4; a++) {
            assert_int_equal(ql_cudafwd_round_act(acts[a], x, y, T, D, NULL), QL_OK);
            assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
            assert_int_equal(ql_cudafwd_round_act_emulated(acts[a], x, ref, T, D), QL_OK);
            expect_close("device act rounding", y, ref, n, 0, 0);
        }
        for (int bf = 0; bf < 2; bf++) {
            assert_int_equal(ql_cudafwd_to_half(x, h16, n, bf, NULL), QL_OK);
            assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
            ql_cudafwd_to_half_emulated(x, r16, n, bf);
            assert_memory_equal(h16, r16, n * 2);
        }
        for (int i = 0; i < T * T; i++) S[i] = kind == IN_HUGE ? frand(1e30f) : frand(8.0f);
        memcpy(ref, S, (size_t)T * T * 4);
        assert_int_equal(ql_cudafwd_softmax(S, T, kind == IN_ZEROS ? 3.0f : 0.0f, kind == IN_TINY ? 9 : 0, NULL), QL_OK);
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        ql_cudafwd_softmax_emulated(ref, T, kind == IN_ZEROS ? 3.0f : 0.0f, kind == IN_TINY ? 9 : 0);
        expect_close("device softmax", S, ref, (size_t)T * T, 4, 1e-6f);
        memcpy(y, x, n * 4), memcpy(ref, x, n * 4);
        assert_int_equal(ql_cudafwd_glu(y, w, n, NULL, NULL), QL_OK);
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        ql_cudafwd_glu_emulated(ref, w, n, NULL);
        expect_close("device swiglu", y, ref, n, 4, 1e-6f);
        for (int mode = QL_ACT_INT8_TOKEN; mode <= QL_ACT_LLM_INT8; mode++) {
            assert_int_equal(ql_cudafwd_act_quant(mode, 0.02f, 4.0f, x, y, T, D, (uint8_t *)h16, NULL), QL_OK);
            assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
            ql_cudafwd_act_quant_emulated(mode, 0.02f, 4.0f, x, ref, T, D);
            expect_close("device activation quantization", y, ref, n, 0, 0);
        }
    }
    cudaFree(x), cudaFree(w), cudaFree(y), cudaFree(cs), cudaFree(S), cudaFree(h16);
    free(ref), free(ref2), free(r16);
}

/* PPL of a shared model on the CPU and on the GPU backend (QL_CUDA_STREAM as given, KV scheme kv, or with "act:MODE"
 * that activation quantization on every linear). */
static double ppl_on(const char *backend, const ql_model *m, const int32_t *ids, int64_t n, const char *kv) {
    ql_infer *inf;
    assert_int_equal(ql_infer_new_on(m, 2, ql_backend_find(backend), &inf), QL_OK);
    if (kv && !strncmp(kv, "act:", 4)) { /* simulated activation quantization of every linear but output */
        ql_act_mode mode;
        assert_true(ql_act_mode_parse(kv + 4, &mode));
        assert_int_equal(ql_infer_set_act_quant_all(inf, NULL, mode, 0, false), QL_OK);
    } else if (kv) {
        ql_kv_scheme s;
        assert_true(ql_kv_scheme_parse(kv, &s));
        assert_int_equal(ql_infer_set_kv(inf, &s), QL_OK);
    }
    ql_ppl_opts o = {.n_ctx = 128, .n_chunks = 8, .n_threads = 2};
    ql_ppl_result r;
    ql_status st = ql_perplexity(inf, ids, n, &o, NULL, &r);
    if (st) fail_msg("%s: %s", backend, ql_last_error());
    ql_infer_free(inf);
    return r.ppl;
}

static void test_device_ppl(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    char text_path[512], *text;
    size_t len;
    if (!shared_path(text_path, sizeof text_path, "data/tinystories-valid.txt")) skip();
    assert_int_equal(ql_read_file(text_path, &text, &len), QL_OK);
    const char *models[] = {"models/stories260K.gguf", "models/tinystories-d256.gguf"};
    for (int mi = 0; mi < 2; mi++) {
        char path[512];
        if (!shared_path(path, sizeof path, models[mi])) skip();
        ql_model *m;
        assert_int_equal(ql_model_load(path, &m), QL_OK);
        int32_t *ids;
        int64_t n;
        assert_int_equal(ql_tokenize(m->tok, text, len > 200000 ? 200000 : len, true, &ids, &n), QL_OK);
        /* block KV types need head_dim % 32 == 0: tinystories-d256 only (stories260K's head is 8) */
        const char *kvs[] = {NULL, "f16", "q8_0", "q4_0:q8_0", "q5_1:q4_1", "iq4_nl", "kivi4",
                             "int8_token_g32_had:fp8_e4m3_r16", "int4_channel_g64:int2_token_g32_r64",
                             "act:int8_token", "act:fp8_token", "act:llm_int8"};
        for (int kv = 0; kv < (mi ? 12 : 2); kv++) {
            const double cpu = ppl_on("cpu", m, ids, n, kvs[kv]);
            for (int stream = 0; stream < 2; stream++) {
                setenv("QL_CUDA_STREAM", stream ? "1" : "0", 1);
                const double gpu = ppl_on("cuda", m, ids, n, kvs[kv]);
                const double rel = fabs(gpu - cpu) / cpu;
                print_message("%s kv %s %s: cpu PPL %.6f, cuda %.6f (rel %.2e)\n", models[mi], kvs[kv] ? kvs[kv] : "f32",
                              stream ? "streamed" : "resident", cpu, gpu, rel);
                if (!(rel <= 1e-4)) fail_msg("%s: cuda PPL %.6f vs cpu %.6f (rel %.2e > 1e-4)", models[mi], gpu, cpu, rel);
            }
            unsetenv("QL_CUDA_STREAM");
        }
        free(ids);
        ql_model_free(m);
    }
    free(text);
}

/* qlab stats on the GPU: Σ xᵀx accumulated on the device (cublasDsyrk) and the channel statistics against the
 * CPU's on tinystories-d256: xtx within 1e-6·max (the activations differ at float rounding), same token counts. */
static void test_device_stats(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    char path[512];
    if (!shared_path(path, sizeof path, "models/tinystories-d256.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    enum { NSEQ = 8, L = 128 };
    int32_t toks[NSEQ * L];
    for (int i = 0; i < NSEQ * L; i++) toks[i] = 1 + (i * 7919) % (m->cfg.n_vocab - 1);
    ql_stats_opts o = {.hessian = true, .output = true, .n_threads = 2};
    ql_stats *st[2];
    const char *names[2] = {"cpu", "cuda"};
    for (int k = 0; k < 2; k++) {
        ql_infer *inf;
        assert_int_equal(ql_infer_new_on(m, 2, ql_backend_find(names[k]), &inf), QL_OK);
        ql_status s = ql_stats_collect(inf, toks, NSEQ, L, &o, NULL, &st[k]);
        if (s) fail_msg("%s: %s", names[k], ql_last_error());
        ql_infer_free(inf);
    }
    for (int i = 0; i < st[0]->n; i++) {
        const ql_stat_entry *a = &st[0]->e[i], *b = &st[1]->e[i];
        assert_int_equal(a->n_tokens, b->n_tokens);
        double amax = 0;
        for (int64_t j = 0; j < a->n * a->n; j++) amax = fmax(amax, fabs(a->xtx[j]));
        for (int64_t j = 0; j < a->n * a->n; j++)
            if (!(fabs(a->xtx[j] - b->xtx[j]) <= 1e-5 * amax))
                fail_msg("%s: xtx[%lld] cpu %.9g, cuda %.9g", a->name, (long long)j, a->xtx[j], b->xtx[j]);
    }
    ql_stats_free(st[0]);
    ql_stats_free(st[1]);
    ql_model_free(m);
}

/* Logits of an F16 synthetic model (GQA, 2 layers) on the GPU against the CPU: F32 sgemm on decoded weights, and
 * QL_CUDA_HALF_GEMM=1 (fp16 weights × fp16-rounded activations on tensor cores, F32 accumulation), streamed
 * and resident. Stated tolerance: 1e-4 of the largest logit. */
static void test_device_logits(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    char path[64] = "/tmp/qlab_cudalogits_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    assert_int_equal(ql_synth_parse_dims("layers=2,embd=256,heads=4,kv=2,ff=512,vocab=700,ctx=128", &sh), QL_OK);
    sh.type = QL_TYPE_F16;
    assert_int_equal(ql_synth_write(&sh, 11, path, 1, NULL), QL_OK);
    ql_model *m;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    enum { T = 96 };
    const int V = m->cfg.n_vocab;
    int32_t toks[T];
    for (int i = 0; i < T; i++) toks[i] = (i * 53 + 11) % V;
    float *ref = malloc(sizeof(float) * T * V), *got = malloc(sizeof(float) * T * V);
    const char *modes[][2] = {{"0", "0"}, {"1", "0"}, {"1", "1"}}; /* half gemm, streamed */
    for (int k = -1; k < 3; k++) {
        if (k >= 0) setenv("QL_CUDA_HALF_GEMM", modes[k][0], 1), setenv("QL_CUDA_STREAM", modes[k][1], 1);
        ql_infer *inf;
        assert_int_equal(ql_infer_new_on(m, 1, ql_backend_find(k < 0 ? "cpu" : "cuda"), &inf), QL_OK);
        ql_scratch *sc = ql_scratch_new(inf, T);
        ql_status st = ql_forward(inf, sc, toks, T, 0, k < 0 ? ref : got);
        if (st) fail_msg("%s", ql_last_error());
        ql_scratch_free(sc);
        ql_infer_free(inf);
        if (k < 0) continue;
        float mx = 0, diff = 0;
        for (int i = 0; i < T * V; i++) mx = fmaxf(mx, fabsf(ref[i])), diff = fmaxf(diff, fabsf(ref[i] - got[i]));
        print_message("half gemm %s, streamed %s: max |logit diff| %.3g of max |logit| %.3g\n", modes[k][0], modes[k][1],
                      diff, mx);
        if (!(diff <= 1e-4f * mx)) fail_msg("cuda logits differ from the cpu's by %g (max logit %g)", diff, mx);
    }
    unsetenv("QL_CUDA_HALF_GEMM");
    unsetenv("QL_CUDA_STREAM");
    free(ref), free(got);
    ql_model_free(m);
    unlink(path);
}

/* Without a GPU the backend refuses to start with one line. */
static void test_no_device_message(void **state) {
    (void)state;
    if (ql_cuda_available()) {
        printf("SKIP: a CUDA device is present: the no-device refusal is not observable here\n");
        skip();
    }
    ql_infer *inf = NULL;
    assert_int_not_equal(ql_infer_new_on(g_model, 1, ql_backend_find("cuda"), &inf), QL_OK);
    assert_null(inf);
    assert_non_null(strstr(ql_last_error(), "no CUDA device"));
    assert_null(strchr(ql_last_error(), '\n'));
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),       cmocka_unit_test(test_rope),     cmocka_unit_test(test_attention),
        cmocka_unit_test(test_glu),           cmocka_unit_test(test_softcap),  cmocka_unit_test(test_round_act),
        cmocka_unit_test(test_kv_half),       cmocka_unit_test(test_kv_blocks), cmocka_unit_test(test_kv_sim), cmocka_unit_test(test_act_quant), cmocka_unit_test(test_int8_matmul), cmocka_unit_test(test_xtx), cmocka_unit_test(test_blas_open),      cmocka_unit_test(test_no_device_message),
        cmocka_unit_test(test_device_kernels), cmocka_unit_test(test_device_ppl), cmocka_unit_test(test_device_stats),
        cmocka_unit_test(test_device_logits),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof tests[0]);
    return cmocka_run_group_tests(tests, setup, teardown);
}
#endif
