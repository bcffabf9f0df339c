/* train_decode.c — token-by-token forward of a ql_train_model with a K/V cache per sequence (train.h),
 * several sequences in step. Sampling training text from the model itself (LLM-QAT's data-free text)
 * otherwise re-runs every prefix: len²/2 token passes per sequence instead of len. The sequences of a
 * batch sit at the same position, so each linear layer is one matrix product over the batch and the
 * rotary angles are shared; only attention reads each sequence's own cache. The ops are train.c's
 * (rmsnorm, linear, rope, SwiGLU), so the logits follow ql_train_forward's to rounding. */
#include "core/train.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ql_train_decoder {
    const ql_train_model *tm;
    int batch, max_tokens;
    double *kc, *vc; /* [n_layer][batch][max_tokens][kv_dim] */
    double *x, *xn, *q, *k, *v, *att, *g, *u, *rinv, *scores, *logits;
    double *block;
};

static const double *Wd(const ql_train_model *tm, int i) { return tm->p[i].eff ? tm->p[i].eff : tm->p[i].w; }

ql_train_decoder *ql_train_decoder_new(const ql_train_model *tm, int batch, int max_tokens) {
    const ql_config *c = &tm->cfg;
    if (batch < 1 || max_tokens < 1) return NULL;
    const size_t B = (size_t)batch, D = c->n_embd, Q = (size_t)c->n_head * c->head_dim,
                 KV = (size_t)c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab;
    const size_t cache = (size_t)c->n_layer * B * max_tokens * KV;
    const size_t n = 2 * cache + B * (2 * D + 2 * Q + 2 * KV + 2 * F + 1 + V) + (size_t)max_tokens;
    ql_train_decoder *d = ql_calloc(1, sizeof *d);
    d->tm = tm, d->batch = batch, d->max_tokens = max_tokens;
    double *p = d->block = ql_malloc(n * sizeof(double));
    d->kc = p, p += cache;
    d->vc = p, p += cache;
    d->x = p, p += B * D;
    d->xn = p, p += B * D;
    d->q = p, p += B * Q;
    d->att = p, p += B * Q;
    d->k = p, p += B * KV;
    d->v = p, p += B * KV;
    d->g = p, p += B * F;
    d->u = p, p += B * F;
    d->rinv = p, p += B;
    d->logits = p, p += B * V;
    d->scores = p;
    return d;
}

void ql_train_decoder_free(ql_train_decoder *d) {
    if (!d) return;
    free(d->block);
    free(d);
}

int ql_train_blas_threads(int n) {
    int old = ql_blas_get_threads();
    ql_blas_set_threads(n);
    return old;
}

/* Sequence b's attention at position pos over its cache (positions 0..pos, this one stored already):
 * the causal softmax of ql_tr_attention_fwd's last row, one query at a time. */
static void attend_one(ql_train_decoder *d, int l, int b, int pos) {
    const ql_config *c = &d->tm->cfg;
    const int hd = c->head_dim, H = c->n_head, group = H / c->n_head_kv, KV = c->n_head_kv * hd;
    const double scale = 1.0 / sqrt((double)hd);
    const size_t base = (((size_t)l * d->batch + b) * d->max_tokens) * KV;
    const double *K = d->kc + base, *Vc = d->vc + base;
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        const double *q = d->q + (size_t)b * H * hd + (size_t)h * hd;
        double *out = d->att + (size_t)b * H * hd + (size_t)h * hd, mx = -INFINITY, sum = 0;
        for (int j = 0; j <= pos; j++) {
            const double *kr = K + (size_t)j * KV + (size_t)kvh * hd;
            double s = 0;
            for (int i = 0; i < hd; i++) s += q[i] * kr[i];
            d->scores[j] = s * scale;
            mx = d->scores[j] > mx ? d->scores[j] : mx;
        }
        for (int j = 0; j <= pos; j++) sum += (d->scores[j] = exp(d->scores[j] - mx));
        memset(out, 0, (size_t)hd * sizeof(double));
        for (int j = 0; j <= pos; j++) {
            const double pj = d->scores[j] / sum, *vr = Vc + (size_t)j * KV + (size_t)kvh * hd;
            for (int i = 0; i < hd; i++) out[i] += pj * vr[i];
        }
    }
}

ql_status ql_train_decode_step(ql_train_decoder *d, const int32_t *tokens, int n_seq, int pos, const double **logits) {
    const ql_train_model *tm = d->tm;
    const ql_config *c = &tm->cfg;
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab;
    if (n_seq < 1 || n_seq > d->batch) return ql_fail(QL_ERR_ARG, "decode: %d sequences (the decoder holds %d)", n_seq, d->batch);
    if (pos < 0 || pos >= d->max_tokens)
        return ql_fail(QL_ERR_ARG, "decode: position %d outside the cache of %d", pos, d->max_tokens);
    for (int b = 0; b < n_seq; b++)
        if (tokens[b] < 0 || tokens[b] >= V)
            return ql_fail(QL_ERR_ARG, "decode: token id %d out of range (vocab %d)", tokens[b], V);
    const double *E = Wd(tm, tm->tok_embd);
    for (int b = 0; b < n_seq; b++) memcpy(d->x + (size_t)b * D, E + (size_t)tokens[b] * D, (size_t)D * sizeof(double));
    for (int l = 0; l < c->n_layer; l++) {
        const ql_train_layer *tl = &tm->layers[l];
        ql_tr_rmsnorm_fwd(d->xn, d->rinv, d->x, Wd(tm, tl->attn_norm), n_seq, D, c->norm_eps);
        ql_tr_linear_fwd(d->q, d->xn, Wd(tm, tl->wq), tl->bq >= 0 ? Wd(tm, tl->bq) : NULL, n_seq, D, Q, 0.0);
        ql_tr_linear_fwd(d->k, d->xn, Wd(tm, tl->wk), tl->bk >= 0 ? Wd(tm, tl->bk) : NULL, n_seq, D, KV, 0.0);
        ql_tr_linear_fwd(d->v, d->xn, Wd(tm, tl->wv), tl->bv >= 0 ? Wd(tm, tl->bv) : NULL, n_seq, D, KV, 0.0);
        for (int b = 0; b < n_seq; b++) {
            ql_tr_rope_row(tm, d->q + (size_t)b * Q, c->n_head, pos, false);
            ql_tr_rope_row(tm, d->k + (size_t)b * KV, c->n_head_kv, pos, false);
            const size_t at = ((((size_t)l * d->batch + b) * d->max_tokens) + pos) * KV;
            memcpy(d->kc + at, d->k + (size_t)b * KV, (size_t)KV * sizeof(double));
            memcpy(d->vc + at, d->v + (size_t)b * KV, (size_t)KV * sizeof(double));
            attend_one(d, l, b, pos);
        }
        ql_tr_linear_fwd(d->x, d->att, Wd(tm, tl->wo), NULL, n_seq, Q, D, 1.0);
        ql_tr_rmsnorm_fwd(d->xn, d->rinv, d->x, Wd(tm, tl->ffn_norm), n_seq, D, c->norm_eps);
        ql_tr_linear_fwd(d->g, d->xn, Wd(tm, tl->w_gate), NULL, n_seq, D, F, 0.0);
        ql_tr_linear_fwd(d->u, d->xn, Wd(tm, tl->w_up), NULL, n_seq, D, F, 0.0);
        ql_tr_swiglu_fwd(d->g, d->g, d->u, (size_t)n_seq * F);
        ql_tr_linear_fwd(d->x, d->g, Wd(tm, tl->w_down), NULL, n_seq, F, D, 1.0);
    }
    ql_tr_rmsnorm_fwd(d->xn, d->rinv, d->x, Wd(tm, tm->output_norm), n_seq, D, c->norm_eps);
    ql_tr_linear_fwd(d->logits, d->xn, Wd(tm, tm->output), NULL, n_seq, D, V, 0.0);
    *logits = d->logits;
    return QL_OK;
}
