/* actquant.c — simulated activation quantization, W8A8 recipes, F32 layer copies and the scale-point
 * plumbing shared by SmoothQuant and AWQ (see actquant.h). */
#include "actquant.h"
#include "fmt_ext.h"
#include "ggml_types.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------- activation quantization ---------------- */

static const char *const MODE_NAMES[QL_ACT_MODE_COUNT] = {"none",      "int8_token", "int8_tensor",
                                                          "fp8_token", "fp8_tensor", "llm_int8"};

const char *ql_act_mode_name(ql_act_mode m) { return m >= 0 && m < QL_ACT_MODE_COUNT ? MODE_NAMES[m] : "?"; }

bool ql_act_mode_parse(const char *s, ql_act_mode *out) {
    if (!s) return false;
    for (int i = 0; i < QL_ACT_MODE_COUNT; i++)
        if (!strcasecmp(s, MODE_NAMES[i])) {
            *out = (ql_act_mode)i;
            return true;
        }
    if (!strcasecmp(s, "int8"))
        *out = QL_ACT_INT8_TOKEN;
    else if (!strcasecmp(s, "fp8"))
        *out = QL_ACT_FP8_TOKEN;
    else if (!strcasecmp(s, "llm.int8") || !strcasecmp(s, "llm.int8()"))
        *out = QL_ACT_LLM_INT8;
    else
        return false;
    return true;
}

bool ql_act_mode_is_static(ql_act_mode m) { return m == QL_ACT_INT8_TENSOR || m == QL_ACT_FP8_TENSOR; }

ql_status ql_act_quant_init(ql_act_quant *aq, ql_act_mode mode, const ql_input_stats *st, float threshold) {
    memset(aq, 0, sizeof *aq);
    if (mode < 0 || mode >= QL_ACT_MODE_COUNT)
        return ql_fail(QL_ERR_ARG, "activation quantization: bad mode %d", mode);
    aq->mode = mode;
    aq->threshold = threshold > 0 ? threshold : QL_LLM_INT8_THRESHOLD;
    if (ql_act_mode_is_static(mode)) {
        if (!st || !st->absmax)
            return ql_fail(QL_ERR_ARG, "activation quantization %s needs calibration statistics (absmax)",
                           MODE_NAMES[mode]);
        float amax = 0;
        for (int64_t j = 0; j < st->n; j++) amax = fmaxf(amax, st->absmax[j]);
        aq->scale = amax / (mode == QL_ACT_INT8_TENSOR ? 127.0f : 448.0f);
    }
    return QL_OK;
}

static inline float int8_round(float x, float d, float id) {
    float q = nearbyintf(x * id);
    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
    return q * d;
}

static inline float fp8_round(float x, float d, float id) {
    return ql_fp8_e4m3_to_f32(ql_f32_to_fp8_e4m3(x * id)) * d;
}

int ql_act_quant_apply(const ql_act_quant *aq, const float *x, float *y, int T, int K) {
    const size_t n = (size_t)T * K;
    const ql_act_mode mode = aq ? aq->mode : QL_ACT_NONE;
    switch (mode) {
    case QL_ACT_INT8_TENSOR:
    case QL_ACT_FP8_TENSOR: {
        const float d = aq->scale, id = d > 0 ? 1.0f / d : 0.0f;
        if (mode == QL_ACT_INT8_TENSOR)
            for (size_t i = 0; i < n; i++) y[i] = int8_round(x[i], d, id);
        else
            for (size_t i = 0; i < n; i++) y[i] = fp8_round(x[i], d, id);
        return 0;
    }
    case QL_ACT_INT8_TOKEN:
    case QL_ACT_FP8_TOKEN: {
        const float qmax = mode == QL_ACT_INT8_TOKEN ? 127.0f : 448.0f;
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * K;
            float *yr = y + (size_t)t * K, amax = 0;
            for (int j = 0; j < K; j++) amax = fmaxf(amax, fabsf(xr[j]));
            const float d = amax / qmax, id = amax > 0 ? qmax / amax : 0.0f;
            if (mode == QL_ACT_INT8_TOKEN)
                for (int j = 0; j < K; j++) yr[j] = int8_round(xr[j], d, id);
            else
                for (int j = 0; j < K; j++) yr[j] = fp8_round(xr[j], d, id);
        }
        return 0;
    }
    case QL_ACT_LLM_INT8: {
        /* outlier columns: any |x| above the threshold anywhere in this batch (bitsandbytes' rule) */
        const float thr = aq->threshold > 0 ? aq->threshold : QL_LLM_INT8_THRESHOLD;
        unsigned char *out = ql_calloc((size_t)K, 1);
        int n_out = 0;
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * K;
            for (int j = 0; j < K; j++)
                if (!out[j] && fabsf(xr[j]) > thr) {
                    out[j] = 1;
                    n_out++;
                }
        }
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * K;
            float *yr = y + (size_t)t * K, amax = 0;
            for (int j = 0; j < K; j++)
                if (!out[j]) amax = fmaxf(amax, fabsf(xr[j]));
            const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
            for (int j = 0; j < K; j++) yr[j] = out[j] ? xr[j] : int8_round(xr[j], d, id);
        }
        free(out);
        return n_out;
    }
    default:
        if (y != x) memmove(y, x, n * sizeof(float));
        return 0;
    }
}

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

ql_status ql_infer_set_act_quant_all(ql_infer *inf, const ql_stats *st, ql_act_mode mode, float threshold,
                                     bool include_output) {
    const ql_model *m = ql_infer_model(inf);
    const int n_t = m->cfg.n_layer * QL_LIN_COUNT + 1;
    for (int i = 0; i < n_t; i++) {
        const ql_gguf_tensor *t =
            i < n_t - 1 ? ql_layer_linear(m, i / QL_LIN_COUNT, i % QL_LIN_COUNT) : m->output;
        if (!t) continue;
        ql_act_quant aq;
        ql_input_stats view = {0};
        if (i == n_t - 1 && !include_output) {
            ql_infer_set_act_quant(inf, t, NULL);
            continue;
        }
        const ql_stat_entry *e = st ? ql_stats_for_tensor(st, t->name) : NULL;
        if (e) ql_stats_view(e, &view);
        if (ql_act_mode_is_static(mode) && (!e || e->n != t->ne[0]))
            return ql_fail(QL_ERR_ARG, "activation quantization %s: no statistics for the input of '%s'",
                           ql_act_mode_name(mode), t->name);
        ql_status s = ql_act_quant_init(&aq, mode, e ? &view : NULL, threshold);
        if (s) return s;
        ql_infer_set_act_quant(inf, t, &aq);
    }
    return QL_OK;
}

static const ql_act_recipe RECIPES[] = {
    {"W8A8-INT8", "int8_channel", QL_ACT_INT8_TOKEN,
     "INT8 weights per output channel + INT8 activations per token, dynamic (SmoothQuant's; smooth first)"},
    {"W8A8-INT8-STATIC", "int8_channel", QL_ACT_INT8_TENSOR,
     "INT8 weights per output channel + INT8 activations with one calibrated scale per layer"},
    {"W8A8-FP8", "fp8_e4m3_channel", QL_ACT_FP8_TOKEN,
     "FP8 E4M3 weights per output channel + FP8 activations per token, dynamic (compressed-tensors "
     "FP8_DYNAMIC)"},
    {"W8A8-FP8-STATIC", "fp8_e4m3", QL_ACT_FP8_TENSOR,
     "FP8 E4M3 weights and activations, one static scale per tensor (compressed-tensors FP8)"},
    {"LLM.INT8", "int8_channel", QL_ACT_LLM_INT8,
     "LLM.int8(): INT8 weights per row, activations INT8 per token except outlier columns (|x| > 6) in "
     "float"},
};

int ql_act_recipe_count(void) { return (int)QL_ARRAY_LEN(RECIPES); }
const ql_act_recipe *ql_act_recipe_at(int i) {
    return i >= 0 && i < ql_act_recipe_count() ? &RECIPES[i] : NULL;
}
const ql_act_recipe *ql_act_recipe_by_name(const char *name) {
    for (int i = 0; name && i < ql_act_recipe_count(); i++)
        if (!strcasecmp(RECIPES[i].name, name)) return &RECIPES[i];
    return NULL;
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
    if (!T->attn_norm || !T->ffn_norm)
        return ql_fail(QL_ERR_UNSUPPORTED, "layer %d has no RMSNorm weights", layer);
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
    int64_t bytes = ql_format_tensor_bytes(f, cols, rows);
    if (bytes < 0 || !H || !ql_format_fits(f, cols)) return -1;
    const size_t n = (size_t)(rows * cols);
    float *ws = malloc(n * sizeof(float)), *q = malloc(n * sizeof(float));
    void *buf = malloc((size_t)bytes);
    const int64_t RB = 256;
    double *D = malloc((size_t)(RB * cols) * sizeof(double)),
           *M = malloc((size_t)(RB * cols) * sizeof(double));
    double loss = -1;
    if (!ws || !q || !buf || !D || !M) goto out;
    for (size_t i = 0; i < n; i++) ws[i] = col_scale ? w[i] * col_scale[i % (size_t)cols] : w[i];
    if (ql_format_quantize(f, ws, buf, rows, cols, NULL, n_threads) ||
        ql_format_dequantize(f, buf, q, rows, cols, n_threads))
        goto out;
    loss = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += RB) {
        const int64_t nr = QL_MIN(RB, rows - r0);
        for (int64_t r = 0; r < nr; r++)
            for (int64_t c = 0; c < cols; c++) {
                size_t i = (size_t)((r0 + r) * cols + c);
                D[r * cols + c] = col_scale ? (double)q[i] / col_scale[c] - w[i] : (double)q[i] - w[i];
            }
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)nr, (int)cols, 1.0, H, (int)cols, D,
                    (int)cols, 0.0, M, (int)cols);
        for (int64_t i = 0; i < nr * cols; i++) loss += D[i] * M[i];
    }
out:
    free(ws);
    free(q);
    free(buf);
    free(D);
    free(M);
    return loss;
}
