/* infer.c — forward pass (see infer.h). Shapes are row-major [tokens, features]; a weight with GGUF
 * shape ne = [K, N] is N rows of K, so y[T,N] = x[T,K] · Wᵀ is one sgemm with B transposed. */
#include "infer.h"
#include "ggml_types.h"
#include "parallel.h"
#include "format.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const ql_gguf_tensor *t;
    const float *w;  /* current F32 weights (borrowed or owned) */
    float *owned;    /* dequantized copy, freed with the infer */
} wslot;

struct ql_infer {
    const ql_model *m;
    int n_threads;
    int n_slots;
    wslot *slots;
    float *rope_freq; /* theta_scale^i for i < rope_dim/2 */
};

struct ql_scratch {
    int max_tokens;
    float *x, *xn, *q, *k, *v, *att, *scores, *gate, *up;
    ql_hook_fn hook;
    void *hook_user;
};

bool ql_tensor_to_f32(const ql_gguf_tensor *t, float *dst, int n_threads) {
    const ql_format *f = ql_format_by_type(t->type);
    if (!f || !f->dequantize_rows) return false;
    return ql_format_dequantize(f, t->data, dst, t->ne[1] * t->ne[2] * t->ne[3], t->ne[0], n_threads) == QL_OK;
}

static const float *slot_weights(const ql_infer *inf, const ql_gguf_tensor *t) {
    if (!t) return NULL;
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) return inf->slots[i].w;
    return NULL;
}

static ql_status add_slot(ql_infer *inf, const ql_gguf_tensor *t) {
    if (!t) return QL_OK;
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) return QL_OK; /* tied output shares the embedding */
    wslot *s = &inf->slots[inf->n_slots++];
    s->t = t;
    if (t->type == QL_TYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        s->w = t->data;
        return QL_OK;
    }
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
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
    const ql_config *c = &m->cfg;
    inf->slots = ql_calloc((size_t)c->n_layer * 12 + 3, sizeof(wslot));
    ql_status s = QL_OK;
    const ql_gguf_tensor *globals[] = {m->tok_embd, m->output_norm, m->output};
    for (size_t i = 0; i < 3 && !s; i++) s = add_slot(inf, globals[i]);
    for (int l = 0; l < c->n_layer && !s; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        const ql_gguf_tensor *ts[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv,
                                      L->ffn_norm, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < QL_ARRAY_LEN(ts) && !s; i++) s = add_slot(inf, ts[i]);
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

ql_scratch *ql_scratch_new(const ql_infer *inf, int max_tokens) {
    const ql_config *c = &inf->m->cfg;
    ql_scratch *s = ql_calloc(1, sizeof *s);
    size_t T = (size_t)max_tokens, D = (size_t)c->n_embd;
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_head_kv * c->head_dim;
    s->max_tokens = max_tokens;
    s->x = ql_malloc(T * D * 4);
    s->xn = ql_malloc(T * (D > Q ? D : Q) * 4);
    s->q = ql_malloc(T * Q * 4);
    s->k = ql_malloc(T * KV * 4);
    s->v = ql_malloc(T * KV * 4);
    s->att = ql_malloc(T * Q * 4);
    s->scores = ql_malloc(T * T * 4);
    s->gate = ql_malloc(T * (size_t)c->n_ff * 4);
    s->up = ql_malloc(T * (size_t)c->n_ff * 4);
    return s;
}

void ql_scratch_free(ql_scratch *s) {
    if (!s) return;
    free(s->x); free(s->xn); free(s->q); free(s->k); free(s->v);
    free(s->att); free(s->scores); free(s->gate); free(s->up);
    free(s);
}

void ql_scratch_set_hook(ql_scratch *s, ql_hook_fn fn, void *user) {
    s->hook = fn;
    s->hook_user = user;
}

/* y[T,N] = x[T,K] · W[N,K]ᵀ (+ bias) */
static void linear(float *y, const float *x, const float *w, const float *bias, int T, int K, int N) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
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
    const ql_model *m = inf->m;
    const ql_config *c = &m->cfg;
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff;
    if (T <= 0 || T > s->max_tokens) return ql_fail(QL_ERR_ARG, "forward: %d tokens (scratch holds %d)", T, s->max_tokens);
    if (logit_from < 0 || logit_from > T) return ql_fail(QL_ERR_ARG, "forward: bad logit_from %d", logit_from);
    const float *emb = slot_weights(inf, m->tok_embd);
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->n_vocab)
            return ql_fail(QL_ERR_ARG, "forward: token id %d out of range (vocab %d)", tokens[t], c->n_vocab);
        memcpy(s->x + (size_t)t * D, emb + (size_t)tokens[t] * D, (size_t)D * 4);
    }
    for (int l = 0; l < c->n_layer; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        rmsnorm(s->xn, s->x, slot_weights(inf, L->attn_norm), T, D, c->norm_eps);
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_ATTN_IN, s->xn, T, D);
        linear(s->q, s->xn, slot_weights(inf, L->wq), slot_weights(inf, L->bq), T, D, Q);
        linear(s->k, s->xn, slot_weights(inf, L->wk), slot_weights(inf, L->bk), T, D, KV);
        linear(s->v, s->xn, slot_weights(inf, L->wv), slot_weights(inf, L->bv), T, D, KV);
        rope(inf, s->q, T, c->n_head);
        rope(inf, s->k, T, c->n_head_kv);
        attention(inf, s, T);
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_ATTN_OUT_IN, s->att, T, Q);
        /* x += att · Woᵀ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, D, Q, 1.0f, s->att, Q, slot_weights(inf, L->wo), Q,
                    1.0f, s->x, D);
        rmsnorm(s->xn, s->x, slot_weights(inf, L->ffn_norm), T, D, c->norm_eps);
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_FFN_IN, s->xn, T, D);
        linear(s->gate, s->xn, slot_weights(inf, L->w_gate), NULL, T, D, F);
        linear(s->up, s->xn, slot_weights(inf, L->w_up), NULL, T, D, F);
        for (size_t i = 0, n = (size_t)T * F; i < n; i++) {
            float g = s->gate[i];
            s->gate[i] = g / (1.0f + expf(-g)) * s->up[i];
        }
        if (s->hook) s->hook(s->hook_user, l, QL_HOOK_FFN_DOWN_IN, s->gate, T, F);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, D, F, 1.0f, s->gate, F, slot_weights(inf, L->w_down),
                    F, 1.0f, s->x, D);
    }
    int R = T - logit_from;
    if (R > 0) {
        rmsnorm(s->xn, s->x + (size_t)logit_from * D, slot_weights(inf, m->output_norm), R, D, c->norm_eps);
        if (s->hook) s->hook(s->hook_user, c->n_layer, QL_HOOK_OUTPUT_IN, s->xn, R, D);
        linear(logits, s->xn, slot_weights(inf, m->output), NULL, R, D, c->n_vocab);
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
