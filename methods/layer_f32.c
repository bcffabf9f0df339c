/* layer_f32.c — writable F32 copies of one decoder layer and the scale-point plumbing shared by
 * SmoothQuant and AWQ, and the output error of a quantized weight under an input second moment
 * (see layer_f32.h). */
#include "methods/layer_f32.h"
#include "core/output_error.h"
#include "formats/fmt_ext.h"
#include "kernels/ggml_types.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- layer tensors ---------------- */

const ql_gguf_tensor *ql_layer_linear(const ql_model *m, int layer, int lin) {
    if (!m || layer < 0 || layer >= m->cfg.n_layer) return NULL;
    const ql_layer_tensors *L = &m->layers[layer];
    switch (lin) {
    case QL_LIN_Q: return L->wq;
    case QL_LIN_K: return L->wk;
    case QL_LIN_V: return L->wv;
    case QL_LIN_O: return L->wo;
    case QL_LIN_GATE: return L->w_gate;
    case QL_LIN_UP: return L->w_up;
    case QL_LIN_DOWN: return L->w_down;
    default: return NULL;
    }
}

static float *tensor_copy(const ql_gguf_tensor *t, int n_threads, ql_status *s) {
    if (!t || *s) return NULL;
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *p = malloc((size_t)n * sizeof(float));
    if (!p) {
        *s = ql_fail(QL_ERR_NOMEM, "out of memory copying '%s'", t->name);
        return NULL;
    }
    if (!ql_tensor_to_f32(t, p, n_threads)) {
        const ql_type_info *ti = ql_type_get(t->type);
        *s = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': cannot decode type %s", t->name, ti ? ti->name : "?");
        free(p);
        return NULL;
    }
    return p;
}

ql_status ql_layer_f32_init(ql_layer_f32 *L, const ql_model *m, int layer, int n_threads) {
    memset(L, 0, sizeof *L);
    if (!m || layer < 0 || layer >= m->cfg.n_layer)
        return ql_fail(QL_ERR_ARG, "layer %d out of range", layer);
    const ql_layer_tensors *T = &m->layers[layer];
    L->layer = layer;
    L->n_head = m->cfg.n_head;
    L->n_head_kv = m->cfg.n_head_kv;
    L->head_dim = m->cfg.head_dim;
    ql_status s = QL_OK;
    if (!T->attn_norm || !T->ffn_norm) /* OLMo-2 normalises block outputs instead */
        return ql_fail(QL_ERR_UNSUPPORTED, "layer %d of this %s model has no pre-norm: scale-migrating methods (awq, "
                                           "smoothquant) fold their scales into one; use gptq or rtn", layer,
                       m->cfg.arch);
    if (T->ffn_gate_inp) /* scales migrate into one gate/up/down; a router and expert stacks have no such path */
        return ql_fail(QL_ERR_UNSUPPORTED, "layer %d is a mixture-of-experts layer: scale-migrating methods (awq, "
                                           "smoothquant) have no MoE form in qlab; use gptq or rtn", layer);
    /* a fused attn_qkv / ffn_up (gate+up) is copied through its row views, one linear each: the quantization
     * driver writes the edited rows back into the fused tensor (pipeline/quantize.c, run_transforms) */
    L->attn_norm = tensor_copy(T->attn_norm, n_threads, &s);
    L->ffn_norm = tensor_copy(T->ffn_norm, n_threads, &s);
    if (T->bv) L->bv = tensor_copy(T->bv, n_threads, &s);
    for (int i = 0; i < QL_LIN_COUNT && !s; i++) {
        const ql_gguf_tensor *t = ql_layer_linear(m, layer, i);
        if (!t) {
            s = ql_fail(QL_ERR_UNSUPPORTED, "layer %d lacks a linear layer (%d)", layer, i);
            break;
        }
        L->cols[i] = t->ne[0];
        L->rows[i] = t->ne[1];
        L->w[i] = tensor_copy(t, n_threads, &s);
    }
    if (s) ql_layer_f32_deinit(L);
    return s;
}

void ql_layer_f32_deinit(ql_layer_f32 *L) {
    if (!L) return;
    free(L->attn_norm);
    free(L->ffn_norm);
    free(L->bv);
    for (int i = 0; i < QL_LIN_COUNT; i++) {
        free(L->w[i]);
        free(L->in_scale[i]);
        free(L->out_scale[i]);
    }
    memset(L, 0, sizeof *L);
}

void ql_layer_f32_swap_into(ql_infer *inf, const ql_model *m, const ql_layer_f32 *L) {
    const ql_layer_tensors *T = &m->layers[L->layer];
    ql_infer_swap_weight(inf, T->attn_norm, L->attn_norm);
    ql_infer_swap_weight(inf, T->ffn_norm, L->ffn_norm);
    if (T->bv && L->bv) ql_infer_swap_weight(inf, T->bv, L->bv);
    for (int i = 0; i < QL_LIN_COUNT; i++)
        ql_infer_swap_weight(inf, ql_layer_linear(m, L->layer, i), L->w[i]);
}

/* ---------------- scale points ---------------- */

int ql_layer_scale_points(const ql_layer_f32 *L, bool attn, bool vo, bool ffn, bool down,
                          ql_scale_point out[4]) {
    int k = 0;
    if (attn)
        out[k++] = (ql_scale_point){.point = "attn_in",
                                    .n = (int)L->cols[QL_LIN_Q],
                                    .n_src = (int)L->cols[QL_LIN_Q],
                                    .norm = L->attn_norm,
                                    .prev_lin = -1,
                                    .n_lin = 3,
                                    .lin = {QL_LIN_Q, QL_LIN_K, QL_LIN_V}};
    /* v→o: attention output channel (head h, dim d) is a mix of v rows (kv head of h, d) */
    if (vo && L->head_dim > 0 && L->n_head_kv > 0 &&
        L->rows[QL_LIN_V] == (int64_t)L->n_head_kv * L->head_dim &&
        L->cols[QL_LIN_O] == (int64_t)L->n_head * L->head_dim)
        out[k++] = (ql_scale_point){.point = "attn_out_in",
                                    .n = (int)L->cols[QL_LIN_O],
                                    .n_src = (int)L->rows[QL_LIN_V],
                                    .prev_lin = QL_LIN_V,
                                    .n_lin = 1,
                                    .lin = {QL_LIN_O}};
    if (ffn)
        out[k++] = (ql_scale_point){.point = "ffn_in",
                                    .n = (int)L->cols[QL_LIN_GATE],
                                    .n_src = (int)L->cols[QL_LIN_GATE],
                                    .norm = L->ffn_norm,
                                    .prev_lin = -1,
                                    .n_lin = 2,
                                    .lin = {QL_LIN_GATE, QL_LIN_UP}};
    /* up→down: ffn_down reads silu(gate)·up, linear in up's rows */
    if (down && L->rows[QL_LIN_UP] == L->cols[QL_LIN_DOWN])
        out[k++] = (ql_scale_point){.point = "ffn_down_in",
                                    .n = (int)L->cols[QL_LIN_DOWN],
                                    .n_src = (int)L->rows[QL_LIN_UP],
                                    .prev_lin = QL_LIN_UP,
                                    .n_lin = 1,
                                    .lin = {QL_LIN_DOWN}};
    return k;
}

int ql_scale_point_src(const ql_layer_f32 *L, const ql_scale_point *p, int c) {
    if (p->n_src == p->n) return c;
    const int hd = L->head_dim, group = L->n_head / L->n_head_kv;
    return (c / hd / group) * hd + c % hd;
}

void ql_scale_point_apply(ql_layer_f32 *L, const ql_scale_point *p, const float *s) {
    if (p->norm)
        for (int k = 0; k < p->n_src; k++) p->norm[k] /= s[k];
    if (p->prev_lin >= 0) {
        const int64_t pc = L->cols[p->prev_lin];
        for (int k = 0; k < p->n_src; k++) {
            float *r = L->w[p->prev_lin] + (int64_t)k * pc, inv = 1.0f / s[k];
            for (int64_t j = 0; j < pc; j++) r[j] *= inv;
        }
        float **os = &L->out_scale[p->prev_lin];
        if (!*os) {
            *os = ql_malloc((size_t)L->rows[p->prev_lin] * sizeof(float));
            for (int64_t r = 0; r < L->rows[p->prev_lin]; r++) (*os)[r] = 1.0f;
        }
        for (int k = 0; k < p->n_src; k++) (*os)[k] *= s[k];
        if (p->prev_lin == QL_LIN_V && L->bv)
            for (int k = 0; k < p->n_src; k++) L->bv[k] /= s[k];
    }
    for (int i = 0; i < p->n_lin; i++) {
        const int li = p->lin[i];
        const int64_t cols = L->cols[li];
        if (!L->in_scale[li]) {
            L->in_scale[li] = ql_malloc((size_t)cols * sizeof(float));
            for (int64_t c = 0; c < cols; c++) L->in_scale[li][c] = 1.0f;
        }
        float *se = ql_malloc((size_t)cols * sizeof(float));
        for (int64_t c = 0; c < cols; c++) {
            se[c] = s[ql_scale_point_src(L, p, (int)c)];
            L->in_scale[li][c] *= se[c];
        }
        for (int64_t r = 0; r < L->rows[li]; r++) {
            float *wr = L->w[li] + r * cols;
            for (int64_t c = 0; c < cols; c++) wr[c] *= se[c];
        }
        free(se);
    }
}

const ql_stat_entry *ql_layer_point_stats(const ql_stats *st, int layer, const ql_scale_point *p) {
    if (!st) return NULL;
    char name[64];
    snprintf(name, sizeof name, "blk.%d.%s", layer, p->point);
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->e[i].name, name)) return st->e[i].n == p->n ? &st->e[i] : NULL;
    return NULL;
}

/* ---------------- output error under H ---------------- */

double ql_quant_output_error(const float *w, int64_t rows, int64_t cols, const ql_format *f,
                             const float *col_scale, const double *H, int n_threads) {
    if (!H || !ql_format_fits(f, cols) || ql_format_tensor_bytes(f, cols, rows) < 0) return -1;
    const size_t n = (size_t)(rows * cols);
    float *ws = malloc(n * sizeof(float)), *q = malloc(n * sizeof(float));
    double loss = -1;
    if (ws && q) {
        for (size_t i = 0; i < n; i++) ws[i] = col_scale ? w[i] * col_scale[i % (size_t)cols] : w[i];
        if (!ql_format_roundtrip(f, ws, q, rows, cols, NULL, n_threads))
            loss = ql_output_error(q, ws, col_scale, rows, cols, H);
    }
    free(ws);
    free(q);
    return loss;
}
