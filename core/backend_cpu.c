/* backend_cpu.c — the CPU backend of the forward pass (core/backend.h), the reference whose numerics
 * tests/test_infer.c holds against llama.cpp. It reads each weight in its stored format from the file
 * mapping and decodes a block of rows just before each sgemm, or multiplies INT8 by INT8 (core/wmatmul.c),
 * so memory is the file plus small tiles (wants_f32 = false). The same table with wants_f32 = true runs on
 * F32 copies decoded by the pipeline, and gives the same numbers (tests/test_wmatmul.c compares them).
 * Buffers are plain heap memory, sync() has nothing to wait for; the F32 KV cache hands out views of itself
 * from kv_load, a KV scheme's cache (core/kv_cache.h) decodes into the caller's buffers, and kv_attention
 * reads it the way llama.cpp's CPU flash attention does. */
#include "core/backend.h"
#include "kernels/act_round.h"
#include "core/wmatmul.h"
#include "kernels/ggml_types.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const ql_config *c;
    const ql_model *m;    /* for the layers' attention sinks */
    float *rope_freq;     /* theta_scale^i for i < rope_dim/2, global layers */
    float *rope_freq_swa; /* the same with the sliding layers' base */
    const float *rope_ff; /* rope_freqs factors (llama3), rope_dim/2 of them, or NULL */
    const float *rope_ff_short, *rope_ff_long; /* LongRoPE's, chosen per pass by its context */
    float yarn_corr[2];   /* YaRN: the pair range where the ramp mixes (ggml_rope_yarn_corr_dims) */
} cpu_backend;

typedef struct {
    float *k, *v; /* [max_tokens, kv_dim]: the F32 cache (NULL for a scheme's) */
    int max_tokens, kv_dim;
    ql_kv_buf *kb, *vb; /* a KV scheme's K and V (core/kv_cache.h), NULL for the F32 cache */
    ql_kv_scheme scheme;
} cpu_kv;

static float *rope_table(float base, int rope_dim) {
    int half = rope_dim / 2;
    float *t = ql_malloc((size_t)(half > 0 ? half : 1) * sizeof(float));
    /* ggml multiplies theta by theta_scale = base^(-2/n_dims) once per pair, in float */
    float theta_scale = powf(base, -2.0f / (float)rope_dim), f = 1.0f;
    for (int i = 0; i < half; i++, f *= theta_scale) t[i] = f;
    return t;
}

/* llama.cpp's CPU GELU (GGML_GELU_FP16): the input rounded to fp16 indexes a table of fp16 tanh-GELU values */
static uint16_t g_gelu_f16[1 << 16];
static pthread_once_t g_gelu_once = PTHREAD_ONCE_INIT;
static void gelu_table_init(void) {
    for (int i = 0; i < 1 << 16; i++) {
        float x = ql_fp16_to_fp32((uint16_t)i);
        float y = 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
        g_gelu_f16[i] = ql_fp32_to_fp16(y);
    }
}

static ql_status cpu_create(const ql_model *m, int n_threads, void **out) {
    (void)n_threads; /* BLAS runs with the caller's OpenBLAS thread count */
    const ql_config *c = &m->cfg;
    cpu_backend *be = ql_calloc(1, sizeof *be);
    be->c = c;
    be->m = m;
    be->rope_freq = rope_table(c->rope_base, c->rope_dim);
    be->rope_freq_swa = rope_table(c->rope_base_swa > 0 ? c->rope_base_swa : c->rope_base, c->rope_dim);
    /* F32, rope_dim/2 values (checked at load); rope_freqs wins over LongRoPE's pair, as in llama.cpp */
    be->rope_ff = m->rope_freqs ? m->rope_freqs->data : NULL;
    be->rope_ff_short = ql_model_rope_factors(m, 0);
    be->rope_ff_long = ql_model_rope_factors(m, INT_MAX);
    if (c->rope_yarn) {
        /* ggml_rope_yarn_corr_dims: the pairs whose wavelength is between beta_fast and beta_slow turns */
        const float nd = (float)c->rope_dim, lb = 2 * logf(c->rope_base), oc = (float)c->yarn_orig_ctx;
        float start = floorf(nd * logf(oc / (c->yarn_beta_fast * 2 * (float)M_PI)) / lb);
        float end = ceilf(nd * logf(oc / (c->yarn_beta_slow * 2 * (float)M_PI)) / lb);
        be->yarn_corr[0] = start > 0 ? start : 0;
        be->yarn_corr[1] = end < nd - 1 ? end : nd - 1;
    }
    if (c->ffn_act == QL_FFN_GEGLU_TANH) pthread_once(&g_gelu_once, gelu_table_init);
    *out = be;
    return QL_OK;
}

static void cpu_destroy(void *p) {
    cpu_backend *be = p;
    if (!be) return;
    free(be->rope_freq);
    free(be->rope_freq_swa);
    free(be);
}

static void *cpu_alloc(void *be, size_t bytes) {
    (void)be;
    return ql_malloc(bytes ? bytes : 1);
}

static void cpu_release(void *be, void *p) {
    (void)be;
    free(p);
}

static ql_status cpu_sync(void *be) {
    (void)be;
    return QL_OK;
}

static int cpu_set_threads(void *be, int n) {
    (void)be;
    int old = ql_blas_get_threads();
    ql_blas_set_threads(n);
    return old;
}

static ql_status cpu_get_rows(void *be, const ql_backend_weight *w, const int32_t *ids, int n, int dim, float *y) {
    (void)be;
    return ql_wmatmul_get_rows(w, ids, n, dim, y);
}

/* y[T,N] (+)= x[T,K] · W[N,K]ᵀ (+ bias), GGUF ne = [K, N] being N rows of K: INT8 weights under dynamic
 * INT8 activations and ggml-quantized weights under llama.cpp's input rounding as integer products, F16/BF16
 * weights widened in the kernel, everything else as sgemm over decoded F32 rows (core/wmatmul.c) */
static ql_status cpu_matmul(void *be, const ql_backend_weight *w, const ql_backend_weight *bias, const float *x,
                           float *y, int T, int K, int N, float beta, float *xtmp) {
    (void)be;
    const int nth = ql_blas_get_threads();
    if (ql_wmatmul_int8_applies(w, K)) return ql_wmatmul_int8(w, bias, x, y, T, K, N, beta, xtmp, nth);
    if (ql_wmatmul_kquant_applies(w, K)) {
        const ql_status st = ql_wmatmul_kquant(w, bias, x, y, T, K, N, beta, nth);
        if (st != QL_ERR_UNSUPPORTED) return st;
    }
    if (w->aq && w->aq->mode != QL_ACT_NONE) {
        ql_act_quant_apply(w->aq, x, xtmp, T, K);
        x = xtmp;
    } else if (w->act_type != QL_TYPE_F32) {
        ql_act_round(w->act_type, x, xtmp, (int64_t)T * K);
        x = xtmp;
    }
    if (ql_wmatmul_half_applies(w, K)) return ql_wmatmul_half(w, bias, x, y, T, K, N, beta, nth);
    return ql_wmatmul_f32(w, bias, x, y, T, K, N, beta, nth);
}

/* y = norm(x) · w per row of D: RMSNorm (ggml_rms_norm: the sum of squares in double) or, centred, LayerNorm
 * (ggml_norm: mean and variance in double, the centred row scaled in float), then the weight as build_norm
 * multiplies it. */
static ql_status norm_rows(const ql_backend_weight *wt, const float *x, float *y, int T, int D, float eps, bool centre) {
    const float *w;
    float *owned;
    ql_status s = ql_weight_vector(wt, D, &w, &owned);
    if (s) return s;
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *yr = y + (size_t)t * D;
        float mean = 0;
        if (centre) {
            double sum = 0;
            for (int i = 0; i < D; i++) sum += (double)xr[i];
            mean = (float)(sum / D);
        }
        double ss = 0;
        for (int i = 0; i < D; i++) {
            const float v = centre ? xr[i] - mean : xr[i];
            ss += (double)(v * v);
        }
        const float scale = 1.0f / sqrtf((float)(ss / D) + eps);
        for (int i = 0; i < D; i++) yr[i] = (centre ? xr[i] - mean : xr[i]) * scale * w[i];
    }
    free(owned);
    return QL_OK;
}

static ql_status cpu_rmsnorm(void *be, const ql_backend_weight *wt, const float *x, float *y, int T, int D, float eps) {
    (void)be;
    return norm_rows(wt, x, y, T, D, eps, false);
}

static ql_status cpu_layernorm(void *be, const ql_backend_weight *wt, const float *x, float *y, int T, int D,
                               float eps) {
    (void)be;
    return norm_rows(wt, x, y, T, D, eps, true);
}

/* cos/sin of each pair for one position go to cs[rope_dim] (the caller's: rope_dim reaches 4096). The angle
 * follows ggml's rope_yarn: theta = pos · base^(-2i/d) / factor[i] (rope_freqs, or LongRoPE's long factors
 * when the pass's context n_ctx exceeds the original one, else its short ones), times freq_scale (1/linear
 * factor); YaRN mixes that with the unscaled angle by a ramp over the pairs. cos/sin are scaled by mscale:
 * rope.scaling.attn_factor (llama.cpp multiplies it into every architecture's attn_factor), times YaRN's. */
static ql_status cpu_rope(void *p, float *x, int T, int n_heads, int layer, int n_ctx, float *cs) {
    const cpu_backend *be = p;
    const ql_config *c = be->c;
    const int hd = c->head_dim, half = c->rope_dim / 2;
    const bool swa = ql_layer_is_swa(c, layer);
    const float *freq = swa ? be->rope_freq_swa : be->rope_freq;
    const float freq_scale = 1.0f / (swa ? c->rope_scale_swa : c->rope_scale);
    const bool plain = swa && c->desc->swa_rope_plain;
    const float ext = c->rope_yarn && !plain ? c->yarn_ext_factor : 0.0f;
    float mscale = plain ? 1.0f : (c->rope_yarn ? c->yarn_attn_factor : 1.0f) * c->rope_attn_factor;
    if (ext != 0.0f) mscale *= 1.0f + 0.1f * logf(1.0f / freq_scale);
    const float *ff = be->rope_ff ? be->rope_ff : n_ctx > c->n_ctx_orig ? be->rope_ff_long : be->rope_ff_short;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            float theta = (float)t * freq[i];
            if (ff) theta /= ff[i];
            float interp = freq_scale * theta;
            if (ext != 0.0f) {
                float y = ((float)i - be->yarn_corr[0]) / fmaxf(0.001f, be->yarn_corr[1] - be->yarn_corr[0]);
                float mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext;
                interp = interp * (1.0f - mix) + theta * mix;
            }
            cs[2 * i] = cosf(interp) * mscale;
            cs[2 * i + 1] = sinf(interp) * mscale;
        }
        for (int h = 0; h < n_heads; h++) {
            float *r = x + ((size_t)t * n_heads + h) * hd;
            for (int i = 0; i < half; i++) {
                int a = c->rope_neox ? i : 2 * i, b = c->rope_neox ? i + half : 2 * i + 1;
                float x0 = r[a], x1 = r[b];
                r[a] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
                r[b] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
            }
        }
    }
    return QL_OK;
}

static ql_status cpu_ffn_act(void *p, float *gate, const float *up, size_t n) {
    const cpu_backend *be = p;
    if (be->c->ffn_act == QL_FFN_GEGLU_TANH) {
        /* ggml_vec_geglu_f32: 0 below -10, identity above 10, else the fp16 table */
        for (size_t i = 0; i < n; i++) {
            float g = gate[i], y;
            if (g <= -10.0f) y = 0.0f;
            else if (g >= 10.0f) y = g;
            else y = ql_fp16_to_fp32(g_gelu_f16[ql_fp32_to_fp16(g)]);
            gate[i] = y * up[i];
        }
        return QL_OK;
    }
    if (be->c->ffn_act == QL_FFN_SWIGLU_OAI) { /* ggml_compute_forward_swiglu_oai_f32: alpha 1.702, limit 7 */
        for (size_t i = 0; i < n; i++) {
            const float x = fminf(gate[i], 7.0f), y = fminf(fmaxf(up[i], -7.0f), 7.0f);
            gate[i] = x / (1.0f + expf(1.702f * (-x))) * (y + 1.0f);
        }
        return QL_OK;
    }
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
    return QL_OK;
}

/* ggml: scale by 1/cap, tanh, scale by cap */
static ql_status cpu_softcap(void *be, float *x, size_t n, float cap) {
    (void)be;
    const float inv = 1.0f / cap;
    for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i] * inv) * cap;
    return QL_OK;
}

static ql_status cpu_scale(void *be, float *x, size_t n, float s) {
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] *= s;
    return QL_OK;
}

static ql_status cpu_add(void *be, float *y, const float *x, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] += x[i];
    return QL_OK;
}

static ql_status cpu_kv_new(void *be, int max_tokens, int kv_dim, void **out) {
    (void)be;
    cpu_kv *kv = ql_calloc(1, sizeof *kv);
    kv->max_tokens = max_tokens;
    kv->kv_dim = kv_dim;
    kv->k = ql_malloc((size_t)max_tokens * kv_dim * sizeof(float));
    kv->v = ql_malloc((size_t)max_tokens * kv_dim * sizeof(float));
    *out = kv;
    return QL_OK;
}

static void cpu_kv_free(void *be, void *p) {
    (void)be;
    cpu_kv *kv = p;
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    ql_kv_buf_free(kv->kb);
    ql_kv_buf_free(kv->vb);
    free(kv);
}

static ql_status cpu_kv_store(void *be, void *p, int pos, int T, const float *k, const float *v) {
    (void)be;
    cpu_kv *kv = p;
    if (kv->kb) {
        ql_status st = ql_kv_buf_store(kv->kb, pos, T, k);
        return st ? st : ql_kv_buf_store(kv->vb, pos, T, v);
    }
    if (pos < 0 || T < 0 || pos + T > kv->max_tokens)
        return ql_fail(QL_ERR_ARG, "kv cache: positions %d..%d past its %d", pos, pos + T, kv->max_tokens);
    memcpy(kv->k + (size_t)pos * kv->kv_dim, k, (size_t)T * kv->kv_dim * sizeof(float));
    memcpy(kv->v + (size_t)pos * kv->kv_dim, v, (size_t)T * kv->kv_dim * sizeof(float));
    return QL_OK;
}

static ql_status cpu_kv_load(void *be, void *p, int pos, int T, const float **k, const float **v, float *ktmp,
                             float *vtmp) {
    (void)be;
    cpu_kv *kv = p;
    if (kv->kb) {
        ql_status st = ql_kv_buf_load(kv->kb, pos, T, ktmp);
        if (!st) st = ql_kv_buf_load(kv->vb, pos, T, vtmp);
        *k = ktmp;
        *v = vtmp;
        return st;
    }
    if (pos < 0 || T < 0 || pos + T > kv->max_tokens)
        return ql_fail(QL_ERR_ARG, "kv cache: positions %d..%d past its %d", pos, pos + T, kv->max_tokens);
    *k = kv->k + (size_t)pos * kv->kv_dim;
    *v = kv->v + (size_t)pos * kv->kv_dim;
    return QL_OK;
}

/* Row i of S [T, T] (scaled scores) becomes the causal softmax over the positions layer `layer` sees: soft-capped
 * when cfg.attn_softcap > 0, the cfg.n_swa most recent on a sliding layer; every other entry 0. A finite `sink`
 * (gpt-oss's per-head learned logit) joins the max and the sum, as ggml's soft_max with sinks has it, and takes
 * its share of the probability without a value. */
static void causal_softmax(const ql_config *c, float *S, int T, int layer, float sink) {
    const float cap = c->attn_softcap;
    const int window = ql_layer_is_swa(c, layer) ? c->n_swa : 0; /* 0: every earlier position */
    for (int i = 0; i < T; i++) {
        float *row = S + (size_t)i * T;
        const int j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
        if (cap > 0)
            for (int j = j0; j <= i; j++) row[j] = tanhf(row[j] * (1.0f / cap)) * cap;
        float mx = -INFINITY;
        for (int j = j0; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
        mx = sink > mx ? sink : mx;
        float sum = 0;
        for (int j = j0; j <= i; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        if (isfinite(sink)) sum += expf(sink - mx);
        float inv = 1.0f / sum;
        for (int j = 0; j < j0; j++) row[j] = 0.0f;
        for (int j = j0; j <= i; j++) row[j] *= inv;
        for (int j = i + 1; j < T; j++) row[j] = 0.0f;
    }
}

/* Head h's softmax sink on layer `layer`, -inf where the model has none. */
static float head_sink(const cpu_backend *be, int layer, int h) {
    const ql_gguf_tensor *t =
        be->m && be->m->layers && layer >= 0 && layer < be->c->n_layer ? be->m->layers[layer].attn_sinks : NULL;
    return t && t->data ? ((const float *)t->data)[h] : -INFINITY;
}

static ql_status cpu_attention(void *p, const float *q, const float *k, const float *v, float *S, float *out, int T,
                               int layer) {
    const cpu_backend *be = p;
    const ql_config *c = be->c;
    const int hd = c->head_dim, H = c->n_head, HKV = c->n_head_kv, group = H / HKV;
    const int ldq = H * hd, ldkv = HKV * hd;
    const float scale = c->attn_scale;
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        const float *qh = q + h * hd, *kh = k + kvh * hd, *vh = v + kvh * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qh, ldq, kh, ldkv, 0.0f, S, T);
        causal_softmax(c, S, T, layer, head_sink(be, layer, h));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S, T, vh, ldkv, 0.0f, out + h * hd, ldq);
    }
    return QL_OK;
}

static ql_status cpu_kv_new_scheme(void *p, int max_tokens, int kv_dim, const ql_kv_scheme *sch, void **out) {
    const cpu_backend *be = p;
    if (!sch || ql_kv_scheme_is_f32(sch)) return cpu_kv_new(p, max_tokens, kv_dim, out);
    const int hd = be->c->head_dim, nkv = kv_dim / hd;
    cpu_kv *kv = ql_calloc(1, sizeof *kv);
    kv->max_tokens = max_tokens;
    kv->kv_dim = kv_dim;
    kv->scheme = *sch;
    kv->kb = ql_kv_buf_new(&sch->k, max_tokens, nkv, hd);
    kv->vb = ql_kv_buf_new(&sch->v, max_tokens, nkv, hd);
    if (!kv->kb || !kv->vb) {
        cpu_kv_free(p, kv);
        return ql_fail(QL_ERR_UNSUPPORTED, "kv cache: cannot store rows of %d in this scheme", kv_dim);
    }
    *out = kv;
    return QL_OK;
}

/* Attention read from a scheme's cache. The quantized rows are decoded once and multiplied with sgemm like
 * the F32 path; what ggml-cpu's flash attention does differently is reproduced where it changes numbers:
 * the query is first rounded to the K type's vec_dot type (so Q8_0 x Q8_0 products), and a query reads the
 * float rows of its residual window (ql_kv_side_quantized_prefix), patched into the scores and the output
 * after the two sgemms. What remains different is summation order, and for an f16 V ggml's one-query path
 * (decoding) keeps its V·softmax accumulator in fp16, here F32 as in ggml's tiled prompt path, which is what
 * perplexity runs. */
static ql_status cpu_kv_attention(void *p, void *kvp, float *q, float *S, float *out, int T, int layer, float *kt,
                                  float *vt) {
    const cpu_backend *be = p;
    cpu_kv *kv = kvp;
    if (!kv->kb) return cpu_attention(p, q, kv->k, kv->v, S, out, T, layer);
    const ql_config *c = be->c;
    const int hd = c->head_dim, H = c->n_head, HKV = c->n_head_kv, group = H / HKV;
    const int ldq = H * hd, ldkv = HKV * hd;
    ql_status st = ql_kv_buf_load(kv->kb, 0, T, kt);
    if (!st) st = ql_kv_buf_load(kv->vb, 0, T, vt);
    if (st) return st;
    const uint32_t qr = ql_kv_q_round_type(&kv->scheme.k);
    if (qr != QL_TYPE_F32) ql_act_round(qr, q, q, (int64_t)T * ldq); /* in place: a block is read before written */
    const ql_kv_side *ks = &kv->scheme.k, *vs = &kv->scheme.v;
    /* a side has a float band when some query reads recent rows unquantized */
    const bool kband = ks->kind != QL_KV_F32 && (ks->residual || ql_kv_side_token_group(ks) > 1);
    const bool vband = vs->kind != QL_KV_F32 && (vs->residual || ql_kv_side_token_group(vs) > 1);
    const float *kf = ql_kv_buf_float(kv->kb), *vf = ql_kv_buf_float(kv->vb);
    const float scale = c->attn_scale;
    /* the bands are patched a block of QB queries at a time with small sgemms over the keys [lo, i1) that
     * cover every row's window (lo = the first row's window start: windows only move right) */
    enum { QB = 64 };
    float *band = kband || vband ? ql_malloc(((size_t)QB * T + (size_t)T * hd) * sizeof(float)) : NULL;
    float *diff = band ? band + (size_t)QB * T : NULL;
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        const float *qh = q + h * hd, *kh = kt + kvh * hd, *vh = vt + kvh * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qh, ldq, kh, ldkv, 0.0f, S, T);
        for (int i0 = 0; kband && i0 < T; i0 += QB) {
            const int i1 = i0 + QB < T ? i0 + QB : T, lo = ql_kv_side_quantized_prefix(ks, i0 + 1), w = i1 - lo;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, w, hd, scale, qh + (size_t)i0 * ldq, ldq,
                        kf + (size_t)lo * ldkv + kvh * hd, ldkv, 0.0f, band, w);
            for (int i = i0; i < i1; i++)
                for (int j = ql_kv_side_quantized_prefix(ks, i + 1); j <= i; j++)
                    S[(size_t)i * T + j] = band[(size_t)(i - i0) * w + (j - lo)];
        }
        causal_softmax(c, S, T, layer, head_sink(be, layer, h));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S, T, vh, ldkv, 0.0f, out + h * hd, ldq);
        /* out += P_window · (V_float - V_decoded) over each row's window */
        for (int i0 = 0; vband && i0 < T; i0 += QB) {
            const int i1 = i0 + QB < T ? i0 + QB : T, lo = ql_kv_side_quantized_prefix(vs, i0 + 1), w = i1 - lo;
            for (int j = lo; j < i1; j++)
                for (int e = 0; e < hd; e++)
                    diff[(size_t)(j - lo) * hd + e] = vf[(size_t)j * ldkv + kvh * hd + e] - vh[(size_t)j * ldkv + e];
            for (int i = i0; i < i1; i++) {
                float *b = band + (size_t)(i - i0) * w;
                const int from = ql_kv_side_quantized_prefix(vs, i + 1);
                for (int j = lo; j < i1; j++) b[j - lo] = j >= from && j <= i ? S[(size_t)i * T + j] : 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, hd, w, 1.0f, band, w, diff, hd, 1.0f,
                        out + (size_t)i0 * ldq + h * hd, ldq);
        }
    }
    free(band);
    return QL_OK;
}

const ql_backend_ops ql_backend_cpu = {
    .name = "cpu",
    .about = "weights read in their stored format (row tiles decoded before each sgemm, INT8xINT8 for W8A8), "
             "OpenBLAS sgemm, F32 KV cache",
    .wants_f32 = false,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .sync = cpu_sync,
    .set_threads = cpu_set_threads,
    .get_rows = cpu_get_rows,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .rope = cpu_rope,
    .ffn_act = cpu_ffn_act,
    .softcap = cpu_softcap,
    .scale = cpu_scale,
    .add = cpu_add,
    .kv_new = cpu_kv_new,
    .kv_free = cpu_kv_free,
    .kv_store = cpu_kv_store,
    .kv_load = cpu_kv_load,
    .attention = cpu_attention,
    .kv_new_scheme = cpu_kv_new_scheme,
    .kv_attention = cpu_kv_attention,
};
