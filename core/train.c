/* train.c — the trainable model, the forward pass that keeps its activations, each op's backward beside
 * its forward, the losses (cross-entropy, KL to a teacher) and AdamW (see train.h). The forward follows
 * core/infer.c step for step (same rope frequencies, same norm, same causal softmax) so that its logits
 * are core/infer.c's up to float rounding; it does not go through the backend table because the backward
 * needs every intermediate and double precision, which the inference ops do not keep. */
#include "core/train.h"
#include "core/infer.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- the model */

static int add_param(ql_train_model *tm, int *cap, const char *name, const ql_gguf_tensor *src, int rows, int cols,
                     bool matrix) {
    if (tm->n_params == *cap) {
        *cap = *cap ? *cap * 2 : 32;
        tm->p = ql_realloc(tm->p, (size_t)*cap * sizeof *tm->p);
    }
    ql_train_param *p = &tm->p[tm->n_params];
    memset(p, 0, sizeof *p);
    p->name = name;
    p->src = src;
    p->rows = rows;
    p->cols = cols;
    p->is_matrix = matrix;
    tm->n_weights += (int64_t)rows * cols;
    return tm->n_params++;
}

/* Gives every tensor its place in the two blocks once all are added. */
static void place_params(ql_train_model *tm) {
    tm->w_all = ql_calloc((size_t)tm->n_weights, sizeof(double));
    tm->g_all = ql_calloc((size_t)tm->n_weights, sizeof(double));
    int64_t off = 0;
    for (int i = 0; i < tm->n_params; i++) {
        tm->p[i].w = tm->w_all + off;
        tm->p[i].g = tm->g_all + off;
        off += (int64_t)tm->p[i].rows * tm->p[i].cols;
    }
}

static void rope_table(ql_train_model *tm) {
    int half = tm->cfg.rope_dim / 2;
    tm->rope_freq = ql_malloc((size_t)(half > 0 ? half : 1) * sizeof(double));
    /* ggml's (and core/backend_cpu.c's) recurrence in float, so positions rotate by the same angles */
    float theta_scale = powf(tm->cfg.rope_base, -2.0f / (float)tm->cfg.rope_dim), f = 1.0f;
    for (int i = 0; i < half; i++, f *= theta_scale) tm->rope_freq[i] = f;
}

/* Adds the tensors of a model's geometry; src (may be NULL) supplies names and source tensors. */
static void add_all(ql_train_model *tm, const ql_model *m, bool with_bias) {
    const ql_config *c = &tm->cfg;
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab;
    int cap = 0;
    static const char *const rnames[] = {"token_embd.weight", "output_norm.weight", "output.weight"};
    tm->tok_embd = add_param(tm, &cap, m ? m->tok_embd->name : rnames[0], m ? m->tok_embd : NULL, V, D, true);
    tm->output_norm = add_param(tm, &cap, m ? m->output_norm->name : rnames[1], m ? m->output_norm : NULL, 1, D, false);
    tm->output = c->tied_output ? tm->tok_embd
                                : add_param(tm, &cap, m ? m->output->name : rnames[2], m ? m->output : NULL, V, D, true);
    tm->layers = ql_calloc((size_t)c->n_layer, sizeof *tm->layers);
    for (int l = 0; l < c->n_layer; l++) {
        const ql_layer_tensors *L = m ? &m->layers[l] : NULL;
        ql_train_layer *tl = &tm->layers[l];
        struct { int *slot; const ql_gguf_tensor *t; const char *suffix; int rows, cols; bool present; } d[] = {
            {&tl->attn_norm, L ? L->attn_norm : NULL, "attn_norm.weight", 1, D, true},
            {&tl->wq, L ? L->wq : NULL, "attn_q.weight", Q, D, true},
            {&tl->wk, L ? L->wk : NULL, "attn_k.weight", KV, D, true},
            {&tl->wv, L ? L->wv : NULL, "attn_v.weight", KV, D, true},
            {&tl->wo, L ? L->wo : NULL, "attn_output.weight", D, Q, true},
            {&tl->bq, L ? L->bq : NULL, "attn_q.bias", 1, Q, L ? L->bq != NULL : with_bias},
            {&tl->bk, L ? L->bk : NULL, "attn_k.bias", 1, KV, L ? L->bk != NULL : with_bias},
            {&tl->bv, L ? L->bv : NULL, "attn_v.bias", 1, KV, L ? L->bv != NULL : with_bias},
            {&tl->ffn_norm, L ? L->ffn_norm : NULL, "ffn_norm.weight", 1, D, true},
            {&tl->w_gate, L ? L->w_gate : NULL, "ffn_gate.weight", F, D, true},
            {&tl->w_up, L ? L->w_up : NULL, "ffn_up.weight", F, D, true},
            {&tl->w_down, L ? L->w_down : NULL, "ffn_down.weight", D, F, true},
        };
        for (size_t i = 0; i < QL_ARRAY_LEN(d); i++) {
            *d[i].slot = -1;
            if (!d[i].present) continue;
            const char *name = d[i].t ? d[i].t->name : d[i].suffix; /* random models: names repeat per layer */
            *d[i].slot = add_param(tm, &cap, name, d[i].t, d[i].rows, d[i].cols, d[i].rows > 1);
        }
    }
    place_params(tm);
    rope_table(tm);
}

/* What the training pass (a llama-shaped layer: RMSNorm, q/k/v with optional biases, RoPE with rope_freqs or a
 * linear scale, causal softmax attention, SwiGLU) does not compute, for the model m; NULL when it computes all of
 * it. The forward pass (core/infer.c) runs more; training must refuse the rest rather than train another model. */
static const char *train_missing(const ql_model *m) {
    const ql_config *c = &m->cfg;
    if (c->n_expert > 0) return "mixture-of-experts layers";
    if (c->ffn_act != QL_FFN_SWIGLU) return "an FFN activation other than SwiGLU";
    if (c->embd_scale != 1.0f) return "an embedding scale";
    if (c->attn_softcap > 0 || c->final_softcap > 0) return "logit soft-capping";
    if (c->n_swa > 0) return "a sliding window";
    if (c->residual_scale != 1.0f || c->logit_mult != 1.0f) return "residual or logit scales";
    if (c->desc->layer_norm || c->desc->parallel_block) return "LayerNorm or a parallel attention/FFN block";
    if (c->attn_scale != 1.0f / sqrtf((float)c->head_dim)) return "an attention scale other than 1/sqrt(head_dim)";
    if (c->rope_off || c->nope_period > 0) return "layers without RoPE";
    if (c->attn_temp_scale > 0) return "attention temperature tuning";
    if (c->rope_yarn || c->rope_attn_factor != 1.0f || m->rope_long) return "YaRN or LongRoPE";
    if (c->rope_dim != c->head_dim) return "RoPE over part of each head";
    for (int l = 0; l < c->n_layer; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        if (L->q_norm || L->k_norm) return "q/k norms";
        if (L->post_attn_norm || L->post_ffn_norm) return "post norms";
        if (!L->attn_norm || !L->ffn_norm) return "blocks without a pre-norm";
        if (L->bo || L->attn_sinks) return "an attention output bias or sinks";
    }
    return NULL;
}

ql_status ql_train_model_from(const ql_model *m, ql_train_model **out) {
    *out = NULL;
    const char *missing = train_missing(m);
    if (missing)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: training (QAT) of this %s model is not implemented: its forward pass has "
                                           "%s, which the training pass does not compute",
                       m->path, m->cfg.arch, missing);
    ql_train_model *tm = ql_calloc(1, sizeof *tm);
    tm->cfg = m->cfg;
    if (m->rope_freqs) { /* F32, rope_dim/2 values (checked at load) */
        tm->rope_ff = ql_malloc((size_t)(m->cfg.rope_dim / 2) * sizeof *tm->rope_ff);
        memcpy(tm->rope_ff, m->rope_freqs->data, (size_t)(m->cfg.rope_dim / 2) * sizeof *tm->rope_ff);
    }
    add_all(tm, m, false);
    int64_t most = 0;
    for (int i = 0; i < tm->n_params; i++) most = QL_MAX(most, (int64_t)tm->p[i].rows * tm->p[i].cols);
    float *tmp = ql_malloc((size_t)most * sizeof(float));
    for (int i = 0; i < tm->n_params; i++) {
        ql_train_param *p = &tm->p[i];
        int64_t n = (int64_t)p->rows * p->cols;
        if (!ql_tensor_to_f32(p->src, tmp, 1)) {
            free(tmp);
            ql_train_model_free(tm);
            return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s' cannot be decoded for training", p->name);
        }
        for (int64_t j = 0; j < n; j++) p->w[j] = tmp[j];
    }
    free(tmp);
    *out = tm;
    return QL_OK;
}

/* splitmix64 then Box-Muller: a reproducible normal stream for random test models */
static uint64_t mix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double normal(uint64_t *s) {
    double u1 = ((mix64(s) >> 11) + 1.0) / 9007199254740993.0, u2 = (mix64(s) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

ql_train_model *ql_train_model_random(const ql_config *cfg, bool with_bias, uint64_t seed, double scale) {
    ql_train_model *tm = ql_calloc(1, sizeof *tm);
    tm->cfg = *cfg;
    add_all(tm, NULL, with_bias);
    uint64_t s = seed;
    for (int i = 0; i < tm->n_params; i++) {
        ql_train_param *p = &tm->p[i];
        bool norm = strstr(p->name, "norm") != NULL;
        for (int64_t j = 0; j < (int64_t)p->rows * p->cols; j++)
            p->w[j] = norm ? 1.0 + 0.1 * normal(&s) : scale * normal(&s);
    }
    return tm;
}

void ql_train_model_free(ql_train_model *tm) {
    if (!tm) return;
    for (int i = 0; i < tm->n_params; i++) free(tm->p[i].codes);
    free(tm->w_all);
    free(tm->g_all);
    free(tm->p);
    free(tm->layers);
    free(tm->rope_freq);
    free(tm->rope_ff);
    free(tm);
}

void ql_train_zero_grad(ql_train_model *tm) { memset(tm->g_all, 0, (size_t)tm->n_weights * sizeof(double)); }

int ql_train_find(const ql_train_model *tm, const char *name) {
    for (int i = 0; i < tm->n_params; i++)
        if (strcmp(tm->p[i].name, name) == 0) return i;
    return -1;
}

static const double *W(const ql_train_model *tm, int i) { return tm->p[i].eff ? tm->p[i].eff : tm->p[i].w; }

/* ---------------------------------------------------------------- activations */

typedef struct {
    double *x;   /* [T, D] the residual stream entering the layer */
    double *r1, *xn1, *q, *k, *v, *P, *att, *x1, *r2, *xn2, *g, *u, *h;
} layer_acts;

struct ql_train_acts {
    int max_tokens, T;
    bool recompute; /* layers 1.. keep only their input x; their other fields alias layer 0's */
    layer_acts *L;
    double *x_out, *rf, *xnf, *logits, *dlogits; /* x_out [T, D] leaves the last layer */
    /* backward scratch */
    double *dx, *dxn, *dq, *dk, *dv, *datt, *dg, *du, *dh, *dP;
    double *block; /* everything above lives in one allocation */
};

/* The buffers in allocation order, with their sizes in doubles; NULL acts just counts. With recompute, every
 * layer keeps its input x (the checkpoint the backward recomputes from) and shares one set of intermediates. */
static size_t acts_layout(const ql_config *c, int T, bool recompute, ql_train_acts *a) {
    const size_t D = c->n_embd, Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_head_kv * c->head_dim;
    const size_t F = c->n_ff, V = c->n_vocab, H = c->n_head, t = T;
    size_t off = 0;
#define TAKE(ptr, n)                                    \
    do {                                                \
        if (a) (ptr) = a->block + off;                  \
        off += (n);                                     \
    } while (0)
    for (int l = 0; l < c->n_layer; l++) {
        layer_acts *la = a ? &a->L[l] : NULL;
        double *dummy = NULL;
#define LT(field, n) TAKE(*(la ? &la->field : &dummy), n)
        LT(x, t * D);
        if (recompute && l > 0) {
            if (la) {
                double *x = la->x;
                *la = a->L[0];
                la->x = x;
            }
            continue;
        }
        LT(r1, t); LT(xn1, t * D); LT(q, t * Q); LT(k, t * KV); LT(v, t * KV); LT(P, H * t * t);
        LT(att, t * Q); LT(x1, t * D); LT(r2, t); LT(xn2, t * D); LT(g, t * F); LT(u, t * F); LT(h, t * F);
#undef LT
    }
    double *dummy = NULL;
#define AT(field, n) TAKE(*(a ? &a->field : &dummy), n)
    AT(x_out, t * D); AT(rf, t); AT(xnf, t * D); AT(logits, t * V); AT(dlogits, t * V);
    AT(dx, t * D); AT(dxn, t * D); AT(dq, t * Q); AT(dk, t * KV); AT(dv, t * KV); AT(datt, t * Q);
    AT(dg, t * F); AT(du, t * F); AT(dh, t * F); AT(dP, t * t);
#undef AT
#undef TAKE
    return off;
}

double ql_train_acts_bytes_opt(const ql_config *c, int max_tokens, bool recompute) {
    return 8.0 * (double)acts_layout(c, max_tokens, recompute, NULL);
}
double ql_train_acts_bytes(const ql_config *c, int max_tokens) { return ql_train_acts_bytes_opt(c, max_tokens, false); }

ql_train_acts *ql_train_acts_new_opt(const ql_config *c, int max_tokens, bool recompute) {
    ql_train_acts *a = ql_calloc(1, sizeof *a);
    a->max_tokens = max_tokens;
    a->recompute = recompute;
    a->L = ql_calloc((size_t)c->n_layer, sizeof *a->L);
    size_t n = acts_layout(c, max_tokens, recompute, NULL);
    a->block = ql_calloc(n, sizeof(double));
    acts_layout(c, max_tokens, recompute, a);
    return a;
}
ql_train_acts *ql_train_acts_new(const ql_config *c, int max_tokens) { return ql_train_acts_new_opt(c, max_tokens, false); }

bool ql_train_acts_recompute(const ql_train_acts *a) { return a->recompute; }

bool ql_train_choose_recompute(const ql_config *c, int T, double other_bytes, double limit_bytes) {
    return ql_train_acts_bytes_opt(c, T, false) + other_bytes > limit_bytes;
}

void ql_train_acts_free(ql_train_acts *a) {
    if (!a) return;
    free(a->block);
    free(a->L);
    free(a);
}

/* ---------------------------------------------------------------- ops: forward, then backward */

void ql_tr_linear_fwd(double *y, const double *x, const double *Wt, const double *b, int T, int K, int N, double beta) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0, x, K, Wt, K, beta, y, N);
    if (b)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < N; j++) y[(size_t)t * N + j] += b[j];
}

void ql_tr_linear_bwd(double *dx, double dx_beta, double *dW, double *db, const double *dy, const double *x,
                      const double *Wt, int T, int K, int N) {
    if (dx) cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, N, 1.0, dy, N, Wt, K, dx_beta, dx, K);
    if (dW) cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, T, 1.0, dy, N, x, K, 1.0, dW, K);
    if (db)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < N; j++) db[j] += dy[(size_t)t * N + j];
}

void ql_tr_rmsnorm_fwd(double *y, double *rinv, const double *x, const double *w, int T, int D, double eps) {
    for (int t = 0; t < T; t++) {
        const double *xr = x + (size_t)t * D;
        double *yr = y + (size_t)t * D, ss = 0;
        for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        double r = 1.0 / sqrt(ss / D + eps);
        rinv[t] = r;
        for (int i = 0; i < D; i++) yr[i] = xr[i] * r * w[i];
    }
}

/* y_i = x_i r w_i, r = (mean x² + eps)^(-1/2), ∂r/∂x_j = -r³ x_j / D:
 * dx_j = r w_j dy_j - x_j r³/D Σ_i dy_i w_i x_i;  dw_i = Σ_t dy_i x_i r */
void ql_tr_rmsnorm_bwd(double *dx, double *dw, const double *dy, const double *x, const double *rinv, const double *w,
                       int T, int D) {
    for (int t = 0; t < T; t++) {
        const double *xr = x + (size_t)t * D, *dyr = dy + (size_t)t * D;
        double *dxr = dx + (size_t)t * D, r = rinv[t], dot = 0;
        for (int i = 0; i < D; i++) dot += dyr[i] * w[i] * xr[i];
        double c = dot * r * r * r / D;
        for (int i = 0; i < D; i++) {
            dxr[i] += r * w[i] * dyr[i] - xr[i] * c;
            if (dw) dw[i] += dyr[i] * xr[i] * r;
        }
    }
}

/* A rotation of each pair; its transpose (the backward) is the rotation by minus the angle. */
void ql_tr_rope_row(const ql_train_model *tm, double *x, int n_heads, int pos, bool inverse) {
    const ql_config *c = &tm->cfg;
    const int hd = c->head_dim, half = c->rope_dim / 2;
    const float pos_scale = 1.0f / (c->rope_scale > 0 ? c->rope_scale : 1.0f);
    /* the angle as the backend computes it: float position times float frequency */
    const float fpos = (float)pos * pos_scale;
    for (int i = 0; i < half; i++) {
        float theta = fpos * (float)tm->rope_freq[i];
        if (tm->rope_ff) theta /= tm->rope_ff[i]; /* as the backend divides pair i's angle */
        const double cs = cos((double)theta), sn = inverse ? -sin((double)theta) : sin((double)theta);
        for (int h = 0; h < n_heads; h++) {
            double *r = x + (size_t)h * hd;
            int a = c->rope_neox ? i : 2 * i, b = c->rope_neox ? i + half : 2 * i + 1;
            double x0 = r[a], x1 = r[b];
            r[a] = x0 * cs - x1 * sn;
            r[b] = x0 * sn + x1 * cs;
        }
    }
}

void ql_tr_rope(const ql_train_model *tm, double *x, int T, int n_heads, bool inverse) {
    for (int t = 0; t < T; t++) ql_tr_rope_row(tm, x + (size_t)t * n_heads * tm->cfg.head_dim, n_heads, t, inverse);
}

void ql_tr_attention_fwd(const ql_config *c, double *out, double *P, const double *q, const double *k, const double *v,
                         int T) {
    const int hd = c->head_dim, H = c->n_head, group = H / c->n_head_kv;
    const int ldq = H * hd, ldkv = c->n_head_kv * hd;
    const double scale = 1.0 / sqrt((double)hd);
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        double *S = P + (size_t)h * T * T;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q + h * hd, ldq, k + kvh * hd, ldkv, 0.0,
                    S, T);
        for (int i = 0; i < T; i++) {
            double *row = S + (size_t)i * T, mx = -INFINITY, sum = 0;
            for (int j = 0; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
            for (int j = 0; j <= i; j++) sum += (row[j] = exp(row[j] - mx));
            for (int j = 0; j <= i; j++) row[j] /= sum;
            for (int j = i + 1; j < T; j++) row[j] = 0.0; /* causal mask */
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0, S, T, v + kvh * hd, ldkv, 0.0,
                    out + h * hd, ldq);
    }
}

/* O = P V, P = softmax(scale·Q Kᵀ) (causal): dP = dO Vᵀ, dV += Pᵀ dO, dS = P ∘ (dP − rowsum(dP ∘ P)),
 * dQ = scale·dS K, dK += scale·dSᵀ Q. Heads sharing a KV head add into its dK, dV. */
void ql_tr_attention_bwd(const ql_config *c, double *dq, double *dk, double *dv, double *dP, const double *dout,
                         const double *P, const double *q, const double *k, const double *v, int T) {
    const int hd = c->head_dim, H = c->n_head, group = H / c->n_head_kv;
    const int ldq = H * hd, ldkv = c->n_head_kv * hd;
    const double scale = 1.0 / sqrt((double)hd);
    memset(dk, 0, (size_t)T * ldkv * sizeof(double));
    memset(dv, 0, (size_t)T * ldkv * sizeof(double));
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        const double *Ph = P + (size_t)h * T * T, *dOh = dout + h * hd;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0, dOh, ldq, v + kvh * hd, ldkv, 0.0, dP, T);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0, Ph, T, dOh, ldq, 1.0, dv + kvh * hd, ldkv);
        for (int i = 0; i < T; i++) {
            const double *pr = Ph + (size_t)i * T;
            double *dr = dP + (size_t)i * T, dot = 0;
            for (int j = 0; j <= i; j++) dot += dr[j] * pr[j];
            for (int j = 0; j <= i; j++) dr[j] = pr[j] * (dr[j] - dot);
            for (int j = i + 1; j < T; j++) dr[j] = 0.0;
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dP, T, k + kvh * hd, ldkv, 0.0,
                    dq + h * hd, ldq);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dP, T, q + h * hd, ldq, 1.0,
                    dk + kvh * hd, ldkv);
    }
}

void ql_tr_swiglu_fwd(double *h, const double *g, const double *u, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
}

/* silu(g) = g σ(g), silu'(g) = σ(g) (1 + g (1 − σ(g))) */
void ql_tr_swiglu_bwd(double *dg, double *du, const double *dh, const double *g, const double *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double s = 1.0 / (1.0 + exp(-g[i]));
        du[i] = dh[i] * g[i] * s;
        dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
    }
}

/* ---------------------------------------------------------------- the model's forward and backward */

/* ---------------------------------------------------------------- fake quantization of activations and KV */

static const ql_act_quant *act_of(const ql_train_model *tm, int i) {
    return tm->act_in && i >= 0 && tm->act_in[i] && tm->act_in[i]->mode != QL_ACT_NONE ? tm->act_in[i] : NULL;
}

static bool same_act(const ql_act_quant *a, const ql_act_quant *b) {
    if (!a || !b) return a == b;
    return a->mode == b->mode && a->scale == b->scale && a->threshold == b->threshold;
}

ql_status ql_train_check_fake_quant(const ql_train_model *tm) {
    for (int l = 0; l < tm->cfg.n_layer; l++) {
        const ql_train_layer *tl = &tm->layers[l];
        if (!same_act(act_of(tm, tl->wq), act_of(tm, tl->wk)) || !same_act(act_of(tm, tl->wq), act_of(tm, tl->wv)))
            return ql_fail(QL_ERR_UNSUPPORTED, "layer %d: attn_q, attn_k and attn_v read one input; training needs one "
                                               "activation scheme for the three", l);
        if (!same_act(act_of(tm, tl->w_gate), act_of(tm, tl->w_up)))
            return ql_fail(QL_ERR_UNSUPPORTED, "layer %d: ffn_gate and ffn_up read one input; training needs one "
                                               "activation scheme for both", l);
    }
    if (tm->kv) {
        if (tm->kv->k.residual || tm->kv->v.residual)
            return ql_fail(QL_ERR_UNSUPPORTED, "KV scheme with a float residual window: not emulated in training (each "
                                               "query would see its own window)");
        return ql_kv_scheme_check(tm->kv, &tm->cfg, "the model");
    }
    return QL_OK;
}

/* x [T, K] (double) rounded in place as aq rounds a linear's input. */
static void fake_quant_act(double *x, int T, int K, const ql_act_quant *aq) {
    if (!aq) return;
    float *f = ql_malloc((size_t)T * K * sizeof(float));
    for (size_t i = 0; i < (size_t)T * K; i++) f[i] = (float)x[i];
    ql_act_quant_apply(aq, f, f, T, K);
    for (size_t i = 0; i < (size_t)T * K; i++) x[i] = f[i];
    free(f);
}

/* x [T, n_head_kv·head_dim] rounded in place through one side of the cache scheme. */
static void fake_quant_kv(double *x, int T, const ql_config *c, const ql_kv_side *side) {
    if (side->kind == QL_KV_F32) return;
    const int kvd = c->n_head_kv * c->head_dim;
    float *f = ql_malloc((size_t)T * kvd * sizeof(float));
    for (size_t i = 0; i < (size_t)T * kvd; i++) f[i] = (float)x[i];
    ql_kv_buf *b = ql_kv_buf_new(side, T, c->n_head_kv, c->head_dim);
    if (!ql_kv_buf_store(b, 0, T, f) && !ql_kv_buf_load(b, 0, T, f))
        for (size_t i = 0; i < (size_t)T * kvd; i++) x[i] = f[i];
    ql_kv_buf_free(b);
    free(f);
}

/* Layer l's forward from its input la->x; writes the next layer's input unless only the intermediates are
 * wanted (recomputing them for the backward: the same ops on the same input give the same bits). */
static void layer_forward(const ql_train_model *tm, ql_train_acts *a, int l, int T, bool write_next) {
    const ql_config *c = &tm->cfg;
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff;
    const ql_train_layer *tl = &tm->layers[l];
    layer_acts *la = &a->L[l];
    double *x_next = l + 1 < c->n_layer ? a->L[l + 1].x : a->x_out;
    ql_tr_rmsnorm_fwd(la->xn1, la->r1, la->x, W(tm, tl->attn_norm), T, D, c->norm_eps);
    fake_quant_act(la->xn1, T, D, act_of(tm, tl->wq));
    ql_tr_linear_fwd(la->q, la->xn1, W(tm, tl->wq), tl->bq >= 0 ? W(tm, tl->bq) : NULL, T, D, Q, 0.0);
    ql_tr_linear_fwd(la->k, la->xn1, W(tm, tl->wk), tl->bk >= 0 ? W(tm, tl->bk) : NULL, T, D, KV, 0.0);
    ql_tr_linear_fwd(la->v, la->xn1, W(tm, tl->wv), tl->bv >= 0 ? W(tm, tl->bv) : NULL, T, D, KV, 0.0);
    ql_tr_rope(tm, la->q, T, c->n_head, false);
    ql_tr_rope(tm, la->k, T, c->n_head_kv, false);
    if (tm->kv) fake_quant_kv(la->k, T, c, &tm->kv->k), fake_quant_kv(la->v, T, c, &tm->kv->v);
    ql_tr_attention_fwd(c, la->att, la->P, la->q, la->k, la->v, T);
    fake_quant_act(la->att, T, Q, act_of(tm, tl->wo));
    memcpy(la->x1, la->x, (size_t)T * D * sizeof(double));
    ql_tr_linear_fwd(la->x1, la->att, W(tm, tl->wo), NULL, T, Q, D, 1.0);
    ql_tr_rmsnorm_fwd(la->xn2, la->r2, la->x1, W(tm, tl->ffn_norm), T, D, c->norm_eps);
    fake_quant_act(la->xn2, T, D, act_of(tm, tl->w_gate));
    ql_tr_linear_fwd(la->g, la->xn2, W(tm, tl->w_gate), NULL, T, D, F, 0.0);
    ql_tr_linear_fwd(la->u, la->xn2, W(tm, tl->w_up), NULL, T, D, F, 0.0);
    ql_tr_swiglu_fwd(la->h, la->g, la->u, (size_t)T * F);
    fake_quant_act(la->h, T, F, act_of(tm, tl->w_down));
    if (!write_next) return;
    memcpy(x_next, la->x1, (size_t)T * D * sizeof(double));
    ql_tr_linear_fwd(x_next, la->h, W(tm, tl->w_down), NULL, T, F, D, 1.0);
}

ql_status ql_train_forward(const ql_train_model *tm, ql_train_acts *a, const int32_t *tokens, int T,
                           const double **logits) {
    const ql_config *c = &tm->cfg;
    const int D = c->n_embd, V = c->n_vocab;
    if (T <= 0 || T > a->max_tokens) return ql_fail(QL_ERR_ARG, "train: %d tokens (activations hold %d)", T, a->max_tokens);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= V)
            return ql_fail(QL_ERR_ARG, "train: token id %d out of range (vocab %d)", tokens[t], V);
    a->T = T;
    const double *E = W(tm, tm->tok_embd);
    double *x = c->n_layer ? a->L[0].x : a->x_out;
    for (int t = 0; t < T; t++) memcpy(x + (size_t)t * D, E + (size_t)tokens[t] * D, (size_t)D * sizeof(double));
    for (int l = 0; l < c->n_layer; l++) layer_forward(tm, a, l, T, true);
    ql_tr_rmsnorm_fwd(a->xnf, a->rf, a->x_out, W(tm, tm->output_norm), T, D, c->norm_eps);
    fake_quant_act(a->xnf, T, D, act_of(tm, tm->output));
    ql_tr_linear_fwd(a->logits, a->xnf, W(tm, tm->output), NULL, T, D, V, 0.0);
    if (logits) *logits = a->logits;
    return QL_OK;
}

double ql_train_loss(const ql_train_model *tm, ql_train_acts *a, const int32_t *tokens, int T, int score_from,
                     const float *teacher, double ce_weight, double kl_weight, double *ce_out, double *kl_out) {
    const int V = tm->cfg.n_vocab;
    memset(a->dlogits, 0, (size_t)T * V * sizeof(double));
    const int n = T - 1 - score_from;
    double ce = 0, kl = 0;
    if (n <= 0) return 0;
    for (int t = score_from; t < T - 1; t++) {
        const double *z = a->logits + (size_t)t * V;
        double *dz = a->dlogits + (size_t)t * V, mx = z[0], sum = 0;
        for (int i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        for (int i = 0; i < V; i++) sum += exp(z[i] - mx);
        const double lse = mx + log(sum);
        /* d CE / dz = softmax − onehot; d KL(t‖s) / dz = softmax − p_teacher */
        for (int i = 0; i < V; i++) dz[i] = (ce_weight + kl_weight) * exp(z[i] - lse) / n;
        if (ce_weight != 0) {
            ce += lse - z[tokens[t + 1]];
            dz[tokens[t + 1]] -= ce_weight / n;
        }
        if (kl_weight != 0 && teacher) {
            const float *zt = teacher + (size_t)t * V;
            double tmx = zt[0], tsum = 0;
            for (int i = 1; i < V; i++) tmx = zt[i] > tmx ? zt[i] : tmx;
            for (int i = 0; i < V; i++) tsum += exp(zt[i] - tmx);
            const double tlse = tmx + log(tsum);
            for (int i = 0; i < V; i++) {
                const double lpt = zt[i] - tlse, pt = exp(lpt);
                kl += pt * (lpt - (z[i] - lse));
                dz[i] -= kl_weight * pt / n;
            }
        }
    }
    ce /= n;
    kl /= n;
    if (ce_out) *ce_out = ce;
    if (kl_out) *kl_out = kl;
    return ce_weight * ce + kl_weight * kl;
}

static double *G(ql_train_model *tm, int i) { return i >= 0 ? tm->p[i].g : NULL; }

ql_status ql_train_backward(ql_train_model *tm, ql_train_acts *a, const int32_t *tokens, int T) {
    const ql_config *c = &tm->cfg;
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab;
    if (T != a->T) return ql_fail(QL_ERR_ARG, "train: backward over %d tokens after a forward over %d", T, a->T);
    /* logits = xnf Woutᵀ; xnf = rmsnorm(x_out) */
    ql_tr_linear_bwd(a->dxn, 0.0, G(tm, tm->output), NULL, a->dlogits, a->xnf, W(tm, tm->output), T, D, V);
    memset(a->dx, 0, (size_t)T * D * sizeof(double));
    ql_tr_rmsnorm_bwd(a->dx, G(tm, tm->output_norm), a->dxn, a->x_out, a->rf, W(tm, tm->output_norm), T, D);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        const ql_train_layer *tl = &tm->layers[l];
        layer_acts *la = &a->L[l];
        /* the shared intermediates hold the last layer's after the forward; any other layer is recomputed */
        if (a->recompute && l < c->n_layer - 1) layer_forward(tm, a, l, T, false);
        /* x_next = x1 + h W_downᵀ: dx passes through, dh = dx W_down */
        ql_tr_linear_bwd(a->dh, 0.0, G(tm, tl->w_down), NULL, a->dx, la->h, W(tm, tl->w_down), T, F, D);
        ql_tr_swiglu_bwd(a->dg, a->du, a->dh, la->g, la->u, (size_t)T * F);
        ql_tr_linear_bwd(a->dxn, 0.0, G(tm, tl->w_gate), NULL, a->dg, la->xn2, W(tm, tl->w_gate), T, D, F);
        ql_tr_linear_bwd(a->dxn, 1.0, G(tm, tl->w_up), NULL, a->du, la->xn2, W(tm, tl->w_up), T, D, F);
        ql_tr_rmsnorm_bwd(a->dx, G(tm, tl->ffn_norm), a->dxn, la->x1, la->r2, W(tm, tl->ffn_norm), T, D);
        /* x1 = x + att W_oᵀ */
        ql_tr_linear_bwd(a->datt, 0.0, G(tm, tl->wo), NULL, a->dx, la->att, W(tm, tl->wo), T, Q, D);
        ql_tr_attention_bwd(c, a->dq, a->dk, a->dv, a->dP, a->datt, la->P, la->q, la->k, la->v, T);
        ql_tr_rope(tm, a->dq, T, c->n_head, true);
        ql_tr_rope(tm, a->dk, T, c->n_head_kv, true);
        ql_tr_linear_bwd(a->dxn, 0.0, G(tm, tl->wq), G(tm, tl->bq), a->dq, la->xn1, W(tm, tl->wq), T, D, Q);
        ql_tr_linear_bwd(a->dxn, 1.0, G(tm, tl->wk), G(tm, tl->bk), a->dk, la->xn1, W(tm, tl->wk), T, D, KV);
        ql_tr_linear_bwd(a->dxn, 1.0, G(tm, tl->wv), G(tm, tl->bv), a->dv, la->xn1, W(tm, tl->wv), T, D, KV);
        ql_tr_rmsnorm_bwd(a->dx, G(tm, tl->attn_norm), a->dxn, la->x, la->r1, W(tm, tl->attn_norm), T, D);
    }
    double *dE = G(tm, tm->tok_embd);
    for (int t = 0; t < T; t++) {
        double *row = dE + (size_t)tokens[t] * D;
        const double *d = a->dx + (size_t)t * D;
        for (int i = 0; i < D; i++) row[i] += d[i];
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- AdamW */

ql_adamw *ql_adamw_new(const ql_train_model *tm, const ql_adamw_opts *o) {
    ql_adamw *opt = ql_calloc(1, sizeof *opt);
    opt->o = *o;
    opt->n = tm->n_weights;
    opt->m = ql_calloc((size_t)opt->n, sizeof(double));
    opt->v = ql_calloc((size_t)opt->n, sizeof(double));
    return opt;
}

void ql_adamw_free(ql_adamw *opt) {
    if (!opt) return;
    free(opt->m);
    free(opt->v);
    free(opt);
}

double ql_adamw_lr(const ql_adamw_opts *o, int64_t step) {
    if (o->warmup > 0 && step < o->warmup) return o->lr * (double)(step + 1) / o->warmup;
    const int64_t decay = (int64_t)o->total_steps - o->warmup;
    if (decay <= 0) return o->lr;
    double frac = (double)(step - o->warmup) / (double)decay;
    frac = frac < 0 ? 0 : frac > 1 ? 1 : frac;
    const double lo = o->lr * o->min_lr_ratio;
    return lo + (o->lr - lo) * 0.5 * (1.0 + cos(3.141592653589793 * frac));
}

double ql_adamw_step(ql_adamw *opt, ql_train_model *tm, double grad_scale) {
    double ss = 0;
    for (int i = 0; i < tm->n_params; i++) {
        const ql_train_param *p = &tm->p[i];
        if (p->frozen) continue;
        for (int64_t j = 0; j < (int64_t)p->rows * p->cols; j++) ss += p->g[j] * p->g[j];
    }
    const double norm = sqrt(ss) * grad_scale;
    double scale = grad_scale;
    if (opt->o.clip > 0 && norm > opt->o.clip) scale *= opt->o.clip / norm;
    const double lr = ql_adamw_lr(&opt->o, opt->step);
    const double b1 = opt->o.beta1, b2 = opt->o.beta2, t = (double)(opt->step + 1);
    const double c1 = 1.0 - pow(b1, t), c2 = 1.0 - pow(b2, t);
    for (int i = 0; i < tm->n_params; i++) {
        ql_train_param *p = &tm->p[i];
        if (p->frozen) continue;
        const int64_t off = p->w - tm->w_all, n = (int64_t)p->rows * p->cols;
        const double wd = p->is_matrix ? opt->o.weight_decay : 0.0;
        for (int64_t j = 0; j < n; j++) {
            const double g = p->g[j] * scale;
            double *m = &opt->m[off + j], *v = &opt->v[off + j];
            *m = b1 * *m + (1 - b1) * g;
            *v = b2 * *v + (1 - b2) * g * g;
            p->w[j] -= lr * ((*m / c1) / (sqrt(*v / c2) + opt->o.eps) + wd * p->w[j]);
        }
    }
    opt->step++;
    return norm;
}
