/* infer.c — forward pass (see infer.h). Shapes are row-major [tokens, features]; a weight with GGUF
 * shape ne = [K, N] is N rows of K, so y[T,N] = x[T,K] · Wᵀ is one sgemm with B transposed. */
#include "core/infer.h"
#include "core/actquant.h"
#include "kernels/ggml_types.h"
#include "base/parallel.h"
#include "formats/format.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const ql_gguf_tensor *t;
    const float *w;  /* current F32 weights (borrowed or owned) */
    float *owned;    /* dequantized copy, freed with the infer */
    uint32_t act_type; /* what llama.cpp's CPU backend converts this layer's input to (F32: nothing) */
    int layer;         /* -1 for embedding / output tensors */
    bool deferred;     /* streaming: decoded per layer into the scratch, w is NULL */
    ql_act_quant aq;   /* simulated activation quantization (core/actquant.h); mode none: off */
} wslot;

struct ql_infer {
    const ql_model *m;
    int n_threads;
    bool emulate_llamacpp;
    bool streaming;       /* layer weights are decoded per forward pass into the scratch (model > memory budget) */
    int64_t layer_floats; /* largest sum of deferred floats over one layer */
    int n_slots;
    wslot *slots;
    float *rope_freq; /* theta_scale^i for i < rope_dim/2 */
};

struct ql_scratch {
    int max_tokens;
    /* streaming: the current layer's decoded weights, and where each deferred slot points into them */
    float *layer_w;
    const float **slot_ptr;
    int layer_loaded;
    float *x, *xn, *q, *k, *v, *att, *scores, *gate, *up, *xq;
    ql_hook_fn hook;
    void *hook_user;
};

bool ql_tensor_to_f32(const ql_gguf_tensor *t, float *dst, int n_threads) {
    const ql_format *f = ql_format_by_type(t->type);
    if (!f || !f->dequantize_rows) return false;
    return ql_format_dequantize(f, t->data, dst, t->ne[1] * t->ne[2] * t->ne[3], t->ne[0], n_threads) == QL_OK;
}

static const wslot *find_slot(const ql_infer *inf, const ql_gguf_tensor *t) {
    if (!t) return NULL;
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) return &inf->slots[i];
    return NULL;
}

static const float *slot_weights(const ql_infer *inf, const ql_gguf_tensor *t) {
    const wslot *s = find_slot(inf, t);
    return s ? s->w : NULL;
}

/* The weights a forward pass uses: the slot's own, or (streaming) the scratch's decoded copy. */
static const float *weights_of(const ql_infer *inf, const ql_scratch *sc, const ql_gguf_tensor *t) {
    const wslot *s = find_slot(inf, t);
    if (!s) return NULL;
    return s->w ? s->w : sc->slot_ptr[s - inf->slots];
}

/* Streaming: decode layer l's deferred tensors into the scratch (once per layer per forward pass). */
static ql_status load_layer(const ql_infer *inf, ql_scratch *sc, int l) {
    if (!inf->streaming || sc->layer_loaded == l) return QL_OK;
    if (!sc->layer_w) {
        sc->layer_w = malloc((size_t)inf->layer_floats * sizeof(float));
        sc->slot_ptr = ql_calloc((size_t)inf->n_slots, sizeof *sc->slot_ptr);
        if (!sc->layer_w) return ql_fail(QL_ERR_NOMEM, "out of memory for one layer's weights");
    }
    float *p = sc->layer_w;
    for (int i = 0; i < inf->n_slots; i++) {
        const wslot *ws = &inf->slots[i];
        if (!ws->deferred || ws->layer != l || ws->w) continue;
        const ql_gguf_tensor *t = ws->t;
        if (!ql_tensor_to_f32(t, p, inf->n_threads))
            return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s' cannot be decoded", t->name);
        sc->slot_ptr[i] = p;
        p += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    sc->layer_loaded = l;
    return QL_OK;
}

bool ql_infer_streaming(const ql_infer *inf) { return inf->streaming; }

/* ggml's vec_dot_type: llama.cpp multiplies a quantized weight by activations that it first rounds to
 * this type (a fact of the format's traits entry). Emulating it makes qlab's perplexity of a GGUF file
 * agree with llama.cpp's to the digit. */
static uint32_t llamacpp_act_type(uint32_t wtype) { return ql_format_llama_act_type(wtype); }

/* Round activation rows x[T, K] the way ggml's quantize_row_<act> does, then back to float. */
static void round_activations(uint32_t act, const float *x, float *y, int T, int K) {
    const size_t n = (size_t)T * K;
    if (act == QL_TYPE_F16) {
        for (size_t i = 0; i < n; i++) y[i] = ql_fp16_to_fp32(ql_fp32_to_fp16(x[i]));
        return;
    }
    if (act == QL_TYPE_BF16) {
        for (size_t i = 0; i < n; i++) y[i] = ql_bf16_to_fp32(ql_fp32_to_bf16(x[i]));
        return;
    }
    if (act == QL_TYPE_Q8_K) {
        for (size_t b = 0; b < n; b += 256) {
            float amax = 0, mx = 0;
            for (int j = 0; j < 256; j++)
                if (fabsf(x[b + j]) > amax) { amax = fabsf(x[b + j]); mx = x[b + j]; }
            if (amax == 0) {
                for (int j = 0; j < 256; j++) y[b + j] = 0;
                continue;
            }
            const float iscale = -127.f / mx, d = 1.0f / iscale;
            for (int j = 0; j < 256; j++) {
                int v = (int)nearbyintf(iscale * x[b + j]);
                y[b + j] = d * (float)(v > 127 ? 127 : v);
            }
        }
        return;
    }
    /* Q8_0 / Q8_1: blocks of 32, fp16 scale amax/127, codes rounded to nearest */
    for (size_t b = 0; b < n; b += 32) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b + j]));
        const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        const float dh = ql_fp16_to_fp32(ql_fp32_to_fp16(d));
        for (int j = 0; j < 32; j++) y[b + j] = dh * nearbyintf(x[b + j] * id);
    }
}

static ql_status add_slot(ql_infer *inf, const ql_gguf_tensor *t, int layer) {
    if (!t) return QL_OK;
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) return QL_OK; /* tied output shares the embedding */
    wslot *s = &inf->slots[inf->n_slots++];
    s->t = t;
    s->act_type = inf->emulate_llamacpp ? llamacpp_act_type(t->type) : QL_TYPE_F32;
    s->layer = layer;
    if (t->type == QL_TYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        s->w = t->data;
        return QL_OK;
    }
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (inf->streaming && layer >= 0) {
        if (!ql_format_by_type(t->type) || !ql_format_by_type(t->type)->dequantize_rows) {
            const ql_type_info *ti = ql_type_get(t->type);
            return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be decoded yet", t->name, ti ? ti->name : "?");
        }
        s->deferred = true;
        return QL_OK;
    }
    s->owned = malloc((size_t)n * sizeof(float));
    if (!s->owned) return ql_fail(QL_ERR_NOMEM, "out of memory dequantizing '%s'", t->name);
    if (!ql_tensor_to_f32(t, s->owned, inf->n_threads)) {
        const ql_type_info *ti = ql_type_get(t->type);
        return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be decoded yet", t->name, ti ? ti->name : "?");
    }
    s->w = s->owned;
    return QL_OK;
}

ql_status ql_infer_new(const ql_model *m, int n_threads, ql_infer **out) {
    *out = NULL;
    ql_infer *inf = ql_calloc(1, sizeof *inf);
    inf->m = m;
    inf->n_threads = n_threads > 0 ? n_threads : 1;
    const char *emu = getenv("QL_NO_LLAMACPP_ACT");
    inf->emulate_llamacpp = !(emu && *emu && strcmp(emu, "0") != 0);
    const ql_config *c = &m->cfg;
    inf->slots = ql_calloc((size_t)c->n_layer * 12 + 3, sizeof(wslot));
    ql_status s = QL_OK;
    /* Stream layer weights when decoding them all to F32 would not fit the memory budget: then each
     * forward pass decodes one layer at a time into its scratch (models larger than RAM still run). */
    int64_t decode_bytes = 0, layer_max = 0;
    for (int l = 0; l < c->n_layer; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        const ql_gguf_tensor *ts[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv,
                                      L->ffn_norm, L->w_gate, L->w_up, L->w_down};
        int64_t lf = 0;
        for (size_t i = 0; i < QL_ARRAY_LEN(ts); i++)
            if (ts[i] && ts[i]->type != QL_TYPE_F32) lf += ts[i]->ne[0] * ts[i]->ne[1] * ts[i]->ne[2] * ts[i]->ne[3];
        decode_bytes += lf * 4;
        layer_max = lf > layer_max ? lf : layer_max;
    }
    const char *st = getenv("QL_STREAM"), *budget_env = getenv("QL_MEM_BUDGET_MB");
    double budget = 0.6 * (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (budget_env && *budget_env) budget = atof(budget_env) * 1048576.0;
    inf->streaming = st && *st ? strcmp(st, "0") != 0 : (double)decode_bytes > budget;
    inf->layer_floats = layer_max;
    if (inf->streaming)
        ql_log(2, "%s: decoding layers on the fly (%.1f GiB of F32 weights exceed the memory budget)", m->path,
               decode_bytes / 1073741824.0);
    const ql_gguf_tensor *globals[] = {m->tok_embd, m->output_norm, m->output};
    for (size_t i = 0; i < 3 && !s; i++) s = add_slot(inf, globals[i], -1);
    for (int l = 0; l < c->n_layer && !s; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        const ql_gguf_tensor *ts[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv,
                                      L->ffn_norm, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < QL_ARRAY_LEN(ts) && !s; i++) s = add_slot(inf, ts[i], l);
    }
    if (s) {
        ql_infer_free(inf);
        return s;
    }
    int half = c->rope_dim / 2;
    inf->rope_freq = ql_malloc((size_t)half * sizeof(float));
    /* ggml multiplies theta by theta_scale = base^(-2/n_dims) once per pair, in float */
    float theta_scale = powf(c->rope_base, -2.0f / (float)c->rope_dim), f = 1.0f;
    for (int i = 0; i < half; i++, f *= theta_scale) inf->rope_freq[i] = f;
    *out = inf;
    return QL_OK;
}

void ql_infer_free(ql_infer *inf) {
    if (!inf) return;
    for (int i = 0; i < inf->n_slots; i++) free(inf->slots[i].owned);
    free(inf->slots);
    free(inf->rope_freq);
    free(inf);
}

const ql_model *ql_infer_model(const ql_infer *inf) { return inf->m; }

const float *ql_infer_swap_weight(ql_infer *inf, const ql_gguf_tensor *t, const float *data) {
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) {
            const float *old = inf->slots[i].w;
            inf->slots[i].w = data;
            return old;
        }
    return NULL;
}

const float *ql_infer_swap_weight_typed(ql_infer *inf, const ql_gguf_tensor *t, const float *data, uint32_t type) {
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) {
            const float *old = inf->slots[i].w;
            inf->slots[i].w = data;
            inf->slots[i].act_type = inf->emulate_llamacpp ? llamacpp_act_type(type) : QL_TYPE_F32;
            return old;
        }
    return NULL;
}

bool ql_infer_set_act_quant(ql_infer *inf, const ql_gguf_tensor *w, const ql_act_quant *aq) {
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == w) {
            if (aq) inf->slots[i].aq = *aq;
            else memset(&inf->slots[i].aq, 0, sizeof inf->slots[i].aq);
            return true;
        }
    return false;
}

ql_scratch *ql_scratch_new(const ql_infer *inf, int max_tokens) {
    const ql_config *c = &inf->m->cfg;
    ql_scratch *s = ql_calloc(1, sizeof *s);
    size_t T = (size_t)max_tokens, D = (size_t)c->n_embd;
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_head_kv * c->head_dim;
    s->max_tokens = max_tokens;
    s->layer_loaded = -1;
    s->x = ql_malloc(T * D * 4);
    s->xn = ql_malloc(T * (D > Q ? D : Q) * 4);
    s->q = ql_malloc(T * Q * 4);
    s->k = ql_malloc(T * KV * 4);
    s->v = ql_malloc(T * KV * 4);
    s->att = ql_malloc(T * Q * 4);
    s->scores = ql_malloc(T * T * 4);
    s->gate = ql_malloc(T * (size_t)c->n_ff * 4);
    s->up = ql_malloc(T * (size_t)c->n_ff * 4);
    size_t widest = QL_MAX(QL_MAX(D, Q), (size_t)c->n_ff);
    s->xq = ql_malloc(T * widest * 4);
    return s;
}

/* Mirrors ql_scratch_new's allocations: keep the two together. */
double ql_scratch_bytes(const ql_config *c, int max_tokens) {
    double T = max_tokens, D = c->n_embd, Q = (double)c->n_head * c->head_dim, KV = (double)c->n_head_kv * c->head_dim;
    double F = c->n_ff, widest = QL_MAX(QL_MAX(D, Q), F);
    return 4.0 * T * (D + QL_MAX(D, Q) + Q + 2 * KV + Q + T + 2 * F + widest);
}

double ql_mem_budget_bytes(void) {
    const char *budget_env = getenv("QL_MEM_BUDGET_MB");
    if (budget_env && *budget_env) return atof(budget_env) * 1048576.0;
    return 0.6 * (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
}

void ql_scratch_free(ql_scratch *s) {
    if (!s) return;
    free(s->x); free(s->xn); free(s->q); free(s->k); free(s->v);
    free(s->att); free(s->scores); free(s->gate); free(s->up); free(s->xq);
    free(s->layer_w); free(s->slot_ptr);
    free(s);
}

void ql_scratch_set_hook(ql_scratch *s, ql_hook_fn fn, void *user) {
    s->hook = fn;
    s->hook_user = user;
}

/* y[T,N] (+)= x[T,K] · W[N,K]ᵀ (+ bias); beta = 1 accumulates into y (residual adds) */
static void linear(const ql_infer *inf, ql_scratch *sc, float *y, const float *x, const ql_gguf_tensor *wt,
                   const ql_gguf_tensor *bt, int T, int K, int N, float beta) {
    const wslot *ws = find_slot(inf, wt);
    if (ws->aq.mode != QL_ACT_NONE) {
        ql_act_quant_apply(&ws->aq, x, sc->xq, T, K);
        x = sc->xq;
    } else if (ws->act_type != QL_TYPE_F32) {
        round_activations(ws->act_type, x, sc->xq, T, K);
        x = sc->xq;
    }
    const float *w = ws->w ? ws->w : sc->slot_ptr[ws - inf->slots];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, w, K, beta, y, N);
    const float *bias = weights_of(inf, sc, bt);
    if (bias)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < N; j++) y[(size_t)t * N + j] += bias[j];
}

static void rmsnorm(float *y, const float *x, const float *w, int T, int D, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *yr = y + (size_t)t * D;
        double ss = 0; /* ggml accumulates the sum of squares in double */
        for (int i = 0; i < D; i++) ss += (double)(xr[i] * xr[i]);
        float scale = 1.0f / sqrtf((float)(ss / D) + eps);
        for (int i = 0; i < D; i++) yr[i] = xr[i] * scale * w[i];
    }
}

/* rotate each head of x[T, n_heads*head_dim] in place; position of row t is t */
static void rope(const ql_infer *inf, float *x, int T, int n_heads) {
    const ql_config *c = &inf->m->cfg;
    const int hd = c->head_dim, half = c->rope_dim / 2;
    const float pos_scale = 1.0f / c->rope_scale;
    float cs[2048];
    for (int t = 0; t < T; t++) {
        float p = (float)t * pos_scale;
        for (int i = 0; i < half; i++) {
            float theta = p * inf->rope_freq[i];
            cs[2 * i] = cosf(theta);
            cs[2 * i + 1] = sinf(theta);
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
}

static void attention(const ql_infer *inf, ql_scratch *s, int T) {
    const ql_config *c = &inf->m->cfg;
    const int hd = c->head_dim, H = c->n_head, HKV = c->n_head_kv, group = H / HKV;
    const int ldq = H * hd, ldkv = HKV * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        const float *qh = s->q + h * hd, *kh = s->k + kvh * hd, *vh = s->v + kvh * hd;
        float *S = s->scores;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qh, ldq, kh, ldkv, 0.0f, S, T);
        for (int i = 0; i < T; i++) {
            float *row = S + (size_t)i * T;
            float mx = -INFINITY;
            for (int j = 0; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
            float sum = 0;
            for (int j = 0; j <= i; j++) {
                row[j] = expf(row[j] - mx);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            for (int j = 0; j <= i; j++) row[j] *= inv;
            for (int j = i + 1; j < T; j++) row[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S, T, vh, ldkv, 0.0f,
                    s->att + h * hd, ldq);
    }
}

ql_status ql_forward(const ql_infer *inf, ql_scratch *s, const int32_t *tokens, int T, int logit_from,
                     float *logits) {
    return ql_forward_from(inf, s, tokens, NULL, 0, T, logit_from, logits);
}

ql_status ql_forward_from(const ql_infer *inf, ql_scratch *s, const int32_t *tokens, const float *x_in, int layer_from,
                          int T, int logit_from, float *logits) {
    const ql_model *m = inf->m;
    const ql_config *c = &m->cfg;
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff;
    if (T <= 0 || T > s->max_tokens) return ql_fail(QL_ERR_ARG, "forward: %d tokens (scratch holds %d)", T, s->max_tokens);
    if (logit_from < 0 || logit_from > T) return ql_fail(QL_ERR_ARG, "forward: bad logit_from %d", logit_from);
    if (layer_from < 0 || layer_from > c->n_layer || (layer_from > 0 && !x_in))
        return ql_fail(QL_ERR_ARG, "forward: bad start layer %d", layer_from);
    if (x_in)
        memcpy(s->x, x_in, (size_t)T * D * sizeof(float));
    else {
        const float *emb = slot_weights(inf, m->tok_embd);
        for (int t = 0; t < T; t++) {
            if (tokens[t] < 0 || tokens[t] >= c->n_vocab)
                return ql_fail(QL_ERR_ARG, "forward: token id %d out of range (vocab %d)", tokens[t], c->n_vocab);
            memcpy(s->x + (size_t)t * D, emb + (size_t)tokens[t] * D, (size_t)D * 4);
        }
    }
    for (int l = layer_from; l < c->n_layer; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        ql_status ls = load_layer(inf, s, l);
        if (ls) return ls;
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_RESIDUAL, s->x, T, D);
        rmsnorm(s->xn, s->x, weights_of(inf, s, L->attn_norm), T, D, c->norm_eps);
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_ATTN_IN, s->xn, T, D);
        linear(inf, s, s->q, s->xn, L->wq, L->bq, T, D, Q, 0.0f);
        linear(inf, s, s->k, s->xn, L->wk, L->bk, T, D, KV, 0.0f);
        linear(inf, s, s->v, s->xn, L->wv, L->bv, T, D, KV, 0.0f);
        rope(inf, s->q, T, c->n_head);
        rope(inf, s->k, T, c->n_head_kv);
        attention(inf, s, T);
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_ATTN_OUT_IN, s->att, T, Q);
        /* x += att · Woᵀ */
        linear(inf, s, s->x, s->att, L->wo, NULL, T, Q, D, 1.0f);
        rmsnorm(s->xn, s->x, weights_of(inf, s, L->ffn_norm), T, D, c->norm_eps);
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_FFN_IN, s->xn, T, D);
        linear(inf, s, s->gate, s->xn, L->w_gate, NULL, T, D, F, 0.0f);
        linear(inf, s, s->up, s->xn, L->w_up, NULL, T, D, F, 0.0f);
        for (size_t i = 0, n = (size_t)T * F; i < n; i++) {
            float g = s->gate[i];
            s->gate[i] = g / (1.0f + expf(-g)) * s->up[i];
        }
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_FFN_DOWN_IN, s->gate, T, F);
        linear(inf, s, s->x, s->gate, L->w_down, NULL, T, F, D, 1.0f);
    }
    /* the stream leaving the last layer: ql_forward_from(layer_from = n_layer) restarts at output_norm */
    if (s->hook) s->hook(s->hook_user, c->n_layer, QL_HOOK_RESIDUAL, s->x, T, D);
    int R = T - logit_from;
    if (R > 0) {
        rmsnorm(s->xn, s->x + (size_t)logit_from * D, slot_weights(inf, m->output_norm), R, D, c->norm_eps);
        if (s->hook) s->hook(s->hook_user, c->n_layer, QL_HOOK_OUTPUT_IN, s->xn, R, D);
        linear(inf, s, logits, s->xn, m->output, NULL, R, D, c->n_vocab, 0.0f);
    }
    return QL_OK;
}

double ql_log_softmax_at(const float *logits, int n_vocab, int tok) {
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)(logits[i] - mx));
    return (double)(logits[tok] - mx) - log(sum);
}
