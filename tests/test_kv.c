/* test_kv.c — KV-cache schemes (core/kv_cache.h) and the CPU backend's cache in them: names parse and print
 * back, unknown ones are refused; bytes at (ctx, batch) equal a hand count; a llama.cpp-type cache stores the
 * registry codec's bytes and loads its decode (q8_0 with ggml-cpu's ties-to-even, checked on a tie);
 * qlab's INT/FP8 schemes stay within their grid's error and Hadamard rotation leaves Q·K unchanged;
 * kv_attention equals a plain online-softmax flash-attention loop (as ggml-cpu's) on the same decoded rows,
 * with the query rounded to the K type's vec_dot type and the residual window read in float; a head
 * dimension that cannot hold a type is refused; the F32 scheme set explicitly is bit-identical to the
 * default cache on a synthetic model, and a quantized one changes the logits but only a little. */
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
#include "core/kv_cache.h"
#include "core/synth.h"
#include "formats/format.h"
#include "kernels/blocks.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "tests/test_util.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) / 8388608.0 - 1.0);
}
static float grand(void) { /* heavy-ish tails: product of two uniforms scaled */
    return frand() * 2.0f + (frand() > 0.9f ? 8.0f * frand() : 0.0f);
}

static void test_names(void **state) {
    (void)state;
    const char *ok[] = {"f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl", "q8_0:q4_0",
                        "int8_token_g32", "int4_channel_g128", "int2_token_g64_r16", "int4_channel_g32_r128:int4_token_g32_r128",
                        "fp8_e4m3", "fp8_e5m2_r8", "int4_token_g32_had:int4_token_g32", "fp8_e4m3_had:q8_0"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ql_kv_scheme s, t;
        char buf[160];
        if (!ql_kv_scheme_parse(ok[i], &s)) fail_msg("'%s' should parse: %s", ok[i], ql_last_error());
        assert_string_equal(ql_kv_scheme_name(&s, buf, sizeof buf), ok[i]);
        assert_true(ql_kv_scheme_parse(buf, &t));
        assert_true(ql_kv_scheme_equal(&s, &t));
    }
    ql_kv_scheme s, t;
    assert_true(ql_kv_scheme_parse("KIVI4", &s));
    assert_true(ql_kv_scheme_parse("int4_channel_g32_r128:int4_token_g32_r128", &t));
    assert_true(ql_kv_scheme_equal(&s, &t));
    assert_true(ql_kv_scheme_parse("f32", &s) && ql_kv_scheme_is_f32(&s));
    assert_false(ql_kv_scheme_parse("q8_0", &s) && ql_kv_scheme_is_f32(&s));
    const char *bad[] = {"", "q4_k", "int3_token_g32", "int4_token_g48", "int4_row_g32", "int4_token_g32_r0",
                         "fp8", "q8_0:", "q8_0:int4_token_g32_had", "q8_0_had", "int8_token_g32_x", "f16:f16:f16"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ql_kv_scheme_parse(bad[i], &s)) fail_msg("'%s' should be refused", bad[i]);
        assert_non_null(strstr(ql_last_error(), "unknown KV cache scheme"));
        assert_null(strchr(ql_last_error(), '\n'));
    }
}

static ql_config cfg_of(int n_layer, int n_head, int n_head_kv, int hd) {
    ql_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = n_layer, c.n_head = n_head, c.n_head_kv = n_head_kv, c.head_dim = hd, c.rope_dim = hd;
    c.n_embd = n_head * hd, c.rope_base = 10000, c.rope_scale = 1, c.norm_eps = 1e-5f;
    c.attn_scale = 1.0f / sqrtf((float)hd);
    return c;
}

static void test_bytes(void **state) {
    (void)state;
    const ql_config c = cfg_of(3, 8, 4, 64); /* kv_dim 256 */
    ql_kv_scheme s;
    assert_true(ql_kv_scheme_parse("f32", &s));
    assert_int_equal(ql_kv_cache_bytes(&c, &s, 100, 2), 3LL * 2 * 2 * 100 * 256 * 4);
    assert_true(ql_kv_scheme_parse("q8_0:q4_0", &s));
    assert_int_equal(ql_kv_cache_bytes(&c, &s, 100, 1), 3LL * 100 * (256 / 32) * (34 + 18));
    /* per token, groups of 32 channels: 4 bits x 32 = 16 bytes + fp16 scale and minimum */
    assert_true(ql_kv_scheme_parse("int4_token_g32", &s));
    assert_int_equal(ql_kv_side_bytes(&s.k, 4, 64, 10), 10LL * 4 * 2 * (16 + 4));
    /* per channel, groups of 64 tokens, 16 in float: 100 - 16 = 84 -> 64 quantized, 36 tokens as fp16 */
    assert_true(ql_kv_scheme_parse("int2_channel_g64_r16", &s));
    assert_int_equal(ql_kv_side_quantized_prefix(&s.k, 100), 64);
    assert_int_equal(ql_kv_side_quantized_prefix(&s.k, 79), 0);
    assert_int_equal(ql_kv_side_bytes(&s.k, 4, 64, 100), 256LL * (16 + 4) + 36LL * 256 * 2);
    assert_true(ql_kv_scheme_parse("fp8_e4m3_r8", &s));
    assert_int_equal(ql_kv_side_quantized_prefix(&s.k, 100), 92);
    assert_int_equal(ql_kv_side_bytes(&s.k, 4, 64, 100), 92LL * 4 * (64 + 4) + 8LL * 256 * 2);
}

static void test_refusals(void **state) {
    (void)state;
    const ql_config c8 = cfg_of(2, 6, 6, 8); /* stories260K's head dimension */
    ql_kv_scheme s;
    const char *refused[] = {"q8_0", "q4_0", "f16:iq4_nl", "int8_token_g32", "int4_token_g32_had:f16"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        assert_true(ql_kv_scheme_parse(refused[i], &s));
        if (ql_kv_scheme_check(&s, &c8, "m.gguf") == QL_OK) fail_msg("%s fits head dim 8?", refused[i]);
        assert_non_null(strstr(ql_last_error(), "m.gguf"));
        assert_null(strchr(ql_last_error(), '\n'));
    }
    assert_true(ql_kv_scheme_parse("q8_0", &s));
    ql_kv_scheme_check(&s, &c8, "m.gguf");
    assert_non_null(strstr(ql_last_error(), "multiple of 32"));
    assert_true(ql_kv_scheme_parse("int8_token_g64", &s));
    const ql_config c32 = cfg_of(2, 4, 4, 32);
    assert_int_not_equal(ql_kv_scheme_check(&s, &c32, "m"), QL_OK);
    assert_non_null(strstr(ql_last_error(), "g32")); /* names the group that fits */
    const char *fits[] = {"f16", "bf16", "int8_channel_g32", "fp8_e4m3_had:fp8_e4m3", "int2_channel_g32_r128"};
    for (size_t i = 0; i < sizeof fits / sizeof fits[0]; i++) {
        assert_true(ql_kv_scheme_parse(fits[i], &s));
        if (ql_kv_scheme_check(&s, &c8, "m") != QL_OK) fail_msg("%s: %s", fits[i], ql_last_error());
    }
    const ql_config c48 = cfg_of(1, 2, 2, 48);
    assert_true(ql_kv_scheme_parse("fp8_e4m3_had:f16", &s));
    assert_int_not_equal(ql_kv_scheme_check(&s, &c48, "m"), QL_OK);
    assert_non_null(strstr(ql_last_error(), "power-of-two"));
}

/* llama.cpp-type caches hold exactly the registry codec's bytes (iq4_nl: ggml's quicker from_float variant,
 * which the cache write calls; it is a different quantizer from the file's, checked to differ somewhere) */
static void test_ggml_store_exact(void **state) {
    (void)state;
    const char *types[] = {"f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"};
    const int T = 37, nkv = 2, hd = 64, D = nkv * hd;
    float *x = malloc((size_t)T * D * sizeof(float)), *out = malloc((size_t)T * D * sizeof(float)),
          *ref = malloc((size_t)T * D * sizeof(float));
    for (int i = 0; i < T * D; i++) x[i] = grand();
    for (int i = 0; i < D; i++) x[5 * D + i] = 0; /* an all-zero row */
    x[7 * D + 3] = 1e4f;                            /* an outlier */
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        ql_kv_scheme s;
        assert_true(ql_kv_scheme_parse(types[t], &s));
        const ql_format *f = ql_format_by_type(s.k.type);
        assert_non_null(f);
        ql_kv_buf *b = ql_kv_buf_new(&s.k, T + 5, nkv, hd);
        assert_non_null(b);
        /* two stores (positions 0..19, then 20..36) equal one */
        assert_int_equal(ql_kv_buf_store(b, 0, 20, x), QL_OK);
        assert_int_equal(ql_kv_buf_store(b, 20, T - 20, x + 20 * D), QL_OK);
        int64_t rb;
        const uint8_t *bytes = ql_kv_buf_bytes(b, &rb);
        assert_int_equal(rb, ql_format_tensor_bytes(f, D, 1));
        uint8_t *want = malloc((size_t)T * rb);
        assert_int_equal(ql_format_quantize(f, x, want, T, D, NULL, 1), QL_OK);
        if (s.k.type == QL_TYPE_IQ4_NL) {
            assert_memory_not_equal(bytes, want, (size_t)T * rb);
            ql_quantize_row_iq4_nl_fast_ref(x, want, (int64_t)T * D);
        }
        if (memcmp(bytes, want, (size_t)T * rb)) fail_msg("%s: cache bytes differ from the registry codec's", types[t]);
        assert_int_equal(ql_kv_buf_load(b, 0, T, out), QL_OK);
        assert_int_equal(ql_format_dequantize(f, want, ref, T, D, 1), QL_OK);
        assert_memory_equal(out, ref, (size_t)T * D * sizeof(float));
        assert_int_equal(ql_kv_buf_load(b, 3, T + 3, out), QL_ERR_ARG); /* past the end */
        free(want);
        ql_kv_buf_free(b);
    }
    /* q8_0 on a tie: amax 127 gives id 1, and 2.5 rounds to 2 (ggml-cpu's vector rounding, the cache write),
     * where the file quantizer's roundf gives 3 */
    ql_kv_scheme s;
    assert_true(ql_kv_scheme_parse("q8_0", &s));
    ql_kv_buf *b = ql_kv_buf_new(&s.k, 1, 1, 32);
    float row[32] = {127.0f, 2.5f, -3.5f};
    assert_int_equal(ql_kv_buf_store(b, 0, 1, row), QL_OK);
    const blk_q8_0 *blk = (const blk_q8_0 *)ql_kv_buf_bytes(b, NULL);
    assert_int_equal(blk->qs[0], 127);
    assert_int_equal(blk->qs[1], 2);
    assert_int_equal(blk->qs[2], -4);
    blk_q8_0 file;
    ql_format_quantize(ql_format_by_type(QL_TYPE_Q8_0), row, &file, 1, 32, NULL, 1);
    assert_int_equal(file.qs[1], 3);
    ql_kv_buf_free(b);
    free(x), free(out), free(ref);
}

/* qlab's schemes: the decode is within the grid's half step of each group, per-channel groups span tokens,
 * the tail of an incomplete token group stays float, Hadamard keeps dot products */
static void test_own_schemes(void **state) {
    (void)state;
    const int T = 70, nkv = 2, hd = 32, D = nkv * hd;
    float *x = malloc((size_t)T * D * sizeof(float)), *out = malloc((size_t)T * D * sizeof(float));
    for (int i = 0; i < T * D; i++) x[i] = grand();
    const char *names[] = {"int8_token_g32", "int4_token_g32", "int2_token_g32", "int8_channel_g32",
                           "int4_channel_g64", "fp8_e4m3", "fp8_e5m2", "int4_token_g32_had:f32", "fp8_e4m3_had:f32"};
    for (size_t n = 0; n < sizeof names / sizeof names[0]; n++) {
        ql_kv_scheme s;
        assert_true(ql_kv_scheme_parse(names[n], &s));
        ql_kv_buf *b = ql_kv_buf_new(&s.k, T, nkv, hd);
        assert_int_equal(ql_kv_buf_store(b, 0, T, x), QL_OK);
        assert_int_equal(ql_kv_buf_load(b, 0, T, out), QL_OK);
        const int G = ql_kv_side_token_group(&s.k), full = T / G * G;
        double err = 0, sig = 0;
        int changed = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < D; i++) {
                float a = x[t * D + i], q = out[t * D + i];
                if (t >= full) assert_true(a == q); /* incomplete token group: float */
                changed += a != q;
                err += (double)(a - q) * (a - q);
                sig += (double)a * a;
            }
        double rel = sqrt(err / sig);
        const double bound = s.k.kind == QL_KV_FP8 ? (s.k.e5m2 ? 0.15 : 0.07)
                             : s.k.bits == 8   ? 0.01
                             : s.k.bits == 4   ? 0.15
                                               : 0.6;
        if (!(rel < bound) || changed == 0) fail_msg("%s: relative error %.4f (bound %.2f), %d values changed", names[n], rel, bound, changed);
        if (s.k.kind == QL_KV_INT && !s.k.hadamard && s.k.axis == QL_KV_PER_TOKEN) {
            /* every value within half a step of its group's grid: step = (max - min) / (2^bits - 1) */
            for (int g = 0; g < T * D / s.k.group; g++) {
                float mn = INFINITY, mx = -INFINITY;
                for (int i = 0; i < s.k.group; i++) {
                    float a = x[g * s.k.group + i];
                    mn = fminf(mn, a), mx = fmaxf(mx, a);
                }
                float step = (mx - mn) / (float)((1 << s.k.bits) - 1);
                for (int i = 0; i < s.k.group; i++)
                    assert_true(fabsf(x[g * s.k.group + i] - out[g * s.k.group + i]) <= 0.5f * step * 1.01f + 1e-3f * fabsf(mn));
            }
        }
        ql_kv_buf_free(b);
    }
    /* per-channel: a channel that is constant across a token group decodes exactly (scale 0 → its minimum) */
    ql_kv_scheme s;
    assert_true(ql_kv_scheme_parse("int2_channel_g32", &s));
    for (int t = 0; t < 32; t++) x[t * D + 5] = 0.75f;
    ql_kv_buf *b = ql_kv_buf_new(&s.k, T, nkv, hd);
    ql_kv_buf_store(b, 0, T, x);
    ql_kv_buf_load(b, 0, T, out);
    for (int t = 0; t < 32; t++) assert_true(out[t * D + 5] == 0.75f);
    ql_kv_buf_free(b);
    free(x), free(out);
}

/* ---- attention against a plain loop ---- */

/* ggml-cpu's flash attention for one query row and head, on decoded K/V rows: scores one key at a time,
 * online softmax (running maximum M, sum S, output rescaled when M grows), V accumulated in float */
static void flash_ref(const float *q, const float *const *krows, const float *const *vrows, int n, int hd, float scale,
                      float *out) {
    float M = -INFINITY, S = 0;
    double *acc = calloc((size_t)hd, sizeof(double));
    for (int j = 0; j < n; j++) {
        double d = 0;
        for (int e = 0; e < hd; e++) d += (double)q[e] * krows[j][e];
        float s = (float)d * scale, ms = 1, vs = 1;
        const float Mold = M;
        if (s > M) {
            M = s;
            ms = expf(Mold - M);
            for (int e = 0; e < hd; e++) acc[e] *= ms;
        } else
            vs = expf(s - M);
        for (int e = 0; e < hd; e++) acc[e] += (double)vs * vrows[j][e];
        S = S * ms + vs;
    }
    for (int e = 0; e < hd; e++) out[e] = (float)(acc[e] / S);
    free(acc);
}

static void attention_case(const char *scheme_name, int H, int HKV, int hd, int T) {
    ql_config c = cfg_of(1, H, HKV, hd);
    ql_model m;
    memset(&m, 0, sizeof m);
    m.cfg = c;
    const ql_backend_ops *cpu = ql_backend_find("cpu");
    void *be, *kv;
    assert_int_equal(cpu->create(&m, 1, &be), QL_OK);
    ql_kv_scheme s;
    assert_true(ql_kv_scheme_parse(scheme_name, &s));
    const int Q = H * hd, D = HKV * hd;
    assert_int_equal(cpu->kv_new_scheme(be, T, D, &s, &kv), QL_OK);
    float *q = malloc((size_t)T * Q * 4), *q2 = malloc((size_t)T * Q * 4), *k = malloc((size_t)T * D * 4),
          *v = malloc((size_t)T * D * 4), *S = malloc((size_t)T * T * 4), *out = malloc((size_t)T * Q * 4),
          *kt = malloc((size_t)T * D * 4), *vt = malloc((size_t)T * D * 4), *kd = malloc((size_t)T * D * 4),
          *vd = malloc((size_t)T * D * 4), *ref = malloc((size_t)hd * 4);
    for (int i = 0; i < T * Q; i++) q[i] = 2.0f * frand();
    for (int i = 0; i < T * D; i++) k[i] = 2.0f * frand(), v[i] = grand();
    memcpy(q2, q, (size_t)T * Q * 4);
    assert_int_equal(cpu->kv_store(be, kv, 0, T, k, v), QL_OK);
    assert_int_equal(cpu->kv_attention(be, kv, q2, S, out, T, 0, kt, vt), QL_OK);
    /* the reference: decoded rows from separate buffers, the query rounded through the registry's codec of
     * the K type's vec_dot type (no ties in random data, so roundf = ties-to-even) */
    ql_kv_buf *kb = ql_kv_buf_new(&s.k, T, HKV, hd), *vb = ql_kv_buf_new(&s.v, T, HKV, hd);
    ql_kv_buf_store(kb, 0, T, k), ql_kv_buf_store(vb, 0, T, v);
    ql_kv_buf_load(kb, 0, T, kd), ql_kv_buf_load(vb, 0, T, vd);
    const uint32_t qr = ql_kv_q_round_type(&s.k);
    if (qr == QL_TYPE_Q8_0 || qr == QL_TYPE_Q8_1) {
        /* Q8_1's values are Q8_0's (its extra sum only feeds q4_1/q5_1's minimum term); rounded by a q8_0 cache
         * (ties to even, as ggml-cpu's from_float; test_ggml_store_exact holds it to the registry codec) */
        ql_kv_side q8 = {.kind = QL_KV_GGML, .type = QL_TYPE_Q8_0};
        ql_kv_buf *qb = ql_kv_buf_new(&q8, T, H, hd);
        ql_kv_buf_store(qb, 0, T, q);
        ql_kv_buf_load(qb, 0, T, q);
        ql_kv_buf_free(qb);
    } else if (qr != QL_TYPE_F32)
        assert_int_equal(ql_format_roundtrip(ql_format_by_type(qr), q, q, T, Q, NULL, 1), QL_OK);
    const float **kr = malloc((size_t)T * sizeof *kr), **vr = malloc((size_t)T * sizeof *vr);
    double worst = 0;
    for (int i = 0; i < T; i++)
        for (int h = 0; h < H; h++) {
            const int kvh = h / (H / HKV), nk = ql_kv_side_quantized_prefix(&s.k, i + 1),
                      nv = ql_kv_side_quantized_prefix(&s.v, i + 1);
            for (int j = 0; j <= i; j++) {
                kr[j] = (j < nk ? kd : k) + (size_t)j * D + kvh * hd;
                vr[j] = (j < nv ? vd : v) + (size_t)j * D + kvh * hd;
            }
            flash_ref(q + (size_t)i * Q + h * hd, kr, vr, i + 1, hd, 1.0f / sqrtf((float)hd), ref);
            for (int e = 0; e < hd; e++) {
                double d = fabs((double)ref[e] - out[(size_t)i * Q + h * hd + e]);
                worst = d > worst ? d : worst;
            }
        }
    if (getenv("KV_DEBUG")) printf("%s worst %g qr %u\n", scheme_name, worst, qr);
    if (!(worst < 2e-5)) fail_msg("%s: attention differs from the flash-attention loop by %g", scheme_name, worst);
    /* and it is not the float answer (the scheme changed something) unless it is f32 */
    if (!ql_kv_scheme_is_f32(&s)) {
        float *f32out = malloc((size_t)T * Q * 4);
        memcpy(q2, q, (size_t)T * Q * 4);
        cpu->attention(be, q2, k, v, S, f32out, T, 0);
        assert_memory_not_equal(f32out, out, (size_t)T * Q * 4);
        free(f32out);
    }
    free(kr), free(vr);
    ql_kv_buf_free(kb), ql_kv_buf_free(vb);
    free(q), free(q2), free(k), free(v), free(S), free(out), free(kt), free(vt), free(kd), free(vd), free(ref);
    cpu->kv_free(be, kv);
    cpu->destroy(be);
}

static void test_attention(void **state) {
    (void)state;
    const char *schemes[] = {"f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_1", "iq4_nl", "q8_0:q4_0",
                             "int8_token_g32", "kivi4", "int2_channel_g32_r8:int4_token_g64_r5", "fp8_e4m3_had:fp8_e5m2"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (!getenv("KV_ONLY") || !strcmp(getenv("KV_ONLY"), schemes[i])) attention_case(schemes[i], 4, 2, 64, 150);
    attention_case("q8_0", 3, 3, 32, 40);
}

/* On a synthetic model: the F32 scheme set explicitly is the default cache bit for bit; q8_0 changes the
 * logits a little; the scheme can differ per layer; hd 8 refuses q8_0 through ql_infer_set_kv */
static void test_forward(void **state) {
    (void)state;
    char path[] = "/tmp/qlab-test-kv-XXXXXX.gguf";
    int fd = mkstemps(path, 5);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    assert_int_equal(ql_synth_parse_dims("layers=2,embd=128,heads=4,kv=2,ff=192,vocab=300,ctx=64", &sh), QL_OK);
    assert_int_equal(ql_synth_write(&sh, 5, path, 1, NULL), QL_OK);
    ql_model *m;
    ql_infer *inf;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    const int T = 48, V = m->cfg.n_vocab;
    int32_t tok[48];
    for (int i = 0; i < T; i++) tok[i] = (i * 37 + 11) % V;
    float *a = malloc((size_t)T * V * 4), *b = malloc((size_t)T * V * 4), *c = malloc((size_t)T * V * 4);
    ql_scratch *sc = ql_scratch_new(inf, T);
    assert_int_equal(ql_forward(inf, sc, tok, T, 0, a), QL_OK);
    ql_kv_scheme s;
    assert_true(ql_kv_scheme_parse("f32", &s));
    assert_int_equal(ql_infer_set_kv(inf, &s), QL_OK);
    assert_int_equal(ql_forward(inf, sc, tok, T, 0, b), QL_OK);
    assert_memory_equal(a, b, (size_t)T * V * 4);
    assert_true(ql_kv_scheme_parse("q8_0", &s));
    assert_int_equal(ql_infer_set_kv(inf, &s), QL_OK);
    assert_int_equal(ql_forward(inf, sc, tok, T, 0, b), QL_OK);
    double d = 0, n = 0;
    for (int i = 0; i < T * V; i++) d += fabs((double)a[i] - b[i]), n += fabs((double)a[i]);
    if (!(d > 0 && d < 0.05 * n)) fail_msg("q8_0 KV changed the logits by %g of %g", d, n);
    assert_true(ql_kv_scheme_parse("q4_0", &s));
    assert_int_equal(ql_infer_set_kv(inf, &s), QL_OK);
    assert_int_equal(ql_forward(inf, sc, tok, T, 0, b), QL_OK);
    /* only layer 1 in q4_0: differs from both */
    assert_true(ql_kv_scheme_parse("f32", &s));
    assert_int_equal(ql_infer_set_kv_layer(inf, 0, &s), QL_OK);
    assert_int_equal(ql_forward(inf, sc, tok, T, 0, c), QL_OK);
    assert_memory_not_equal(c, a, (size_t)T * V * 4);
    assert_memory_not_equal(c, b, (size_t)T * V * 4);
    assert_int_equal(ql_infer_kv_layer(inf, 1).k.type, QL_TYPE_Q4_0);
    /* back to the default: a again, bit for bit */
    assert_int_equal(ql_infer_set_kv(inf, NULL), QL_OK);
    assert_int_equal(ql_forward(inf, sc, tok, T, 0, c), QL_OK);
    assert_memory_equal(a, c, (size_t)T * V * 4);
    ql_scratch_free(sc);
    ql_infer_free(inf);
    ql_model_free(m);
    unlink(path);
    free(a), free(b), free(c);

    char p2[512];
    if (!shared_path(p2, sizeof p2, "models/stories260K.gguf")) return;
    assert_int_equal(ql_model_load(p2, &m), QL_OK);
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    assert_true(ql_kv_scheme_parse("q8_0", &s));
    assert_int_not_equal(ql_infer_set_kv(inf, &s), QL_OK);
    assert_non_null(strstr(ql_last_error(), "stories260K"));
    assert_true(ql_kv_scheme_parse("int8_channel_g32", &s));
    assert_int_equal(ql_infer_set_kv(inf, &s), QL_OK);
    ql_infer_free(inf);
    ql_model_free(m);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),          cmocka_unit_test(test_bytes),     cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_ggml_store_exact), cmocka_unit_test(test_own_schemes), cmocka_unit_test(test_attention),
        cmocka_unit_test(test_forward),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof tests[0]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
