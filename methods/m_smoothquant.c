/* m_smoothquant.c — SmoothQuant (Xiao et al. 2023): per input channel j, s_j = max|X_j|^α / max|W_:j|^(1−α)
 * divides the activation (folded into the producing RMSNorm or linear rows) and multiplies the weight
 * columns, moving activation outliers into the weights so that both quantize to INT8 (W8A8 with
 * per-token dynamic activations). The model computes the same function in float. The weights are then
 * quantized with the format's own rounding. Pure; edits only the layer copy it is given. */
#include "methods/act_recipe.h"
#include "methods/layer_f32.h"
#include "methods/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The authors' recipes for llama-family models (Llama-2/3 0.85, Mistral 0.8, 70B 0.9); 0.5 is the
 * paper's balanced value for OPT-like models. On stories260K / tinystories-d256 0.85 was as good as or
 * better than 0.5 for per-token W8A8 (docs/methods.md). */
#define QL_SMOOTHQUANT_ALPHA 0.85

extern const ql_method ql_method_smoothquant;

static ql_status smoothquant_layer(ql_layer_f32 *L, const ql_stats *st, const ql_opt_values *v,
                                   ql_transform_report *rep) {
    const ql_method *M = &ql_method_smoothquant;
    const double alpha = ql_opt_float(v, M, "alpha");
    if (rep) memset(rep, 0, sizeof *rep);
    ql_scale_point pts[4];
    int np =
        ql_layer_scale_points(L, ql_opt_bool(v, M, "attn"), ql_opt_bool(v, M, "vo"), ql_opt_bool(v, M, "ffn"),
                              ql_opt_bool(v, M, "down"), pts);
    for (int k = 0; k < np; k++) {
        const ql_scale_point *p = &pts[k];
        const ql_stat_entry *e = ql_layer_point_stats(st, L->layer, p);
        if (!e || !e->absmax)
            return ql_fail(QL_ERR_ARG, "smoothquant: no statistics for blk.%d.%s", L->layer, p->point);
        /* producer entry j: the largest activation and weight magnitude over the channels it feeds */
        float *amax = ql_calloc((size_t)p->n_src, sizeof(float)),
              *wmax = ql_calloc((size_t)p->n_src, sizeof(float));
        for (int c = 0; c < p->n; c++) {
            int j = ql_scale_point_src(L, p, c);
            amax[j] = fmaxf(amax[j], e->absmax[c]);
        }
        for (int i = 0; i < p->n_lin; i++) {
            const int li = p->lin[i];
            for (int64_t r = 0; r < L->rows[li]; r++) {
                const float *wr = L->w[li] + r * L->cols[li];
                for (int c = 0; c < p->n; c++) {
                    int j = ql_scale_point_src(L, p, c);
                    wmax[j] = fmaxf(wmax[j], fabsf(wr[c]));
                }
            }
        }
        float *s = amax; /* in place */
        double smin = INFINITY, smax = 0;
        for (int j = 0; j < p->n_src; j++) {
            double v = pow(fmax(amax[j], 1e-5), alpha) / pow(fmax(wmax[j], 1e-5), 1 - alpha);
            s[j] = (float)fmax(v, 1e-5);
            smin = fmin(smin, s[j]);
            smax = fmax(smax, s[j]);
        }
        ql_scale_point_apply(L, p, s);
        if (rep && rep->n < 4) {
            ql_scale_report *r = &rep->pt[rep->n++];
            snprintf(r->point, sizeof r->point, "%s", p->point);
            r->alpha = alpha;
            r->smin = smin;
            r->smax = smax;
        }
        free(amax);
        free(wmax);
    }
    return QL_OK;
}

ql_status ql_smoothquant_layer(ql_layer_f32 *L, const ql_stats *st, const char *opts,
                               ql_transform_report *rep) {
    ql_opt_values v;
    ql_status s = ql_method_parse_opts(&ql_method_smoothquant, opts, &v);
    return s ? s : smoothquant_layer(L, st, &v, rep);
}

static ql_status sq_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                             const ql_input_stats *st, const ql_method_opts *o, void *dst) {
    (void)st; /* the smoothing happened in transform_layer; the weights round to nearest */
    return ql_format_quantize(f, w, dst, nrows, ncols, o ? o->importance : NULL, o ? o->n_threads : 1);
}

static ql_status sq_transform(ql_layer_f32 *L, const ql_stats *st, const ql_method_opts *o) {
    return smoothquant_layer(L, st, o ? o->values : NULL, NULL);
}

static const ql_opt_def sq_opts[] = {
    {"alpha", QL_OPT_FLOAT, QL_SMOOTHQUANT_ALPHA, 0, 1, NULL,
     "migration strength: s = max|x|^alpha / max|W|^(1-alpha) (0.85: the paper's Llama recipe)"},
    {"attn", QL_OPT_BOOL, 1, 0, 1, NULL, "smooth the q/k/v input through attn_norm"},
    {"ffn", QL_OPT_BOOL, 1, 0, 1, NULL, "smooth the gate/up input through ffn_norm"},
    {"down", QL_OPT_BOOL, 0, 0, 1, NULL, "also smooth the ffn_down input through ffn_up's rows"},
    {"vo", QL_OPT_BOOL, 0, 0, 1, NULL, "also smooth the attn_output input through attn_v's rows (tied per kv head)"},
};

const ql_method ql_method_smoothquant = {
    .name = "smoothquant",
    .summary = "SmoothQuant: migrate activation outliers into the weights (x/s, W·s), then round; for W8A8",
    .explain =
        "SmoothQuant moves activation outliers into the weights (x/s, W·s) so both can be stored "
        "in 8 bits (W8A8). The weights then round to nearest. Needs activation ranges.",
    .caps = QL_CAP_PER_TENSOR | QL_CAP_LAYER_TRANSFORM,
    .needs = QL_NEEDS_ACT_STATS,
    .opts = sq_opts,
    .n_opts = (int)QL_ARRAY_LEN(sq_opts),
    .quantize_tensor = sq_quantize,
    .transform_layer = sq_transform,
};
