/* m_awq.c — AWQ (Lin et al. 2024), activation-aware weight quantization. Per input point of a layer:
 * grid search of per-channel scales s (s = s_x^α, or duo: s_x^α / s_w^(1−α), normalized so that
 * max·min = 1) that minimize the output error Σ tr(ΔW H ΔWᵀ), ΔW = Q(W·diag(s))·diag(s)⁻¹ − W, H = Σxxᵀ,
 * of the linears reading the point in their target format; the scales are folded into the producer.
 * Then a clipping search: per (row, quantization group) the range shrinks to 1 − i/20 (i < 10) of the
 * group's absmax, picked by the group's own error δ H_gg δᵀ, kept when the whole matrix improves.
 * The per-tensor method (no transform) does the clipping search with s = 1. Pure: edits only the
 * buffers it is given. */
#include "methods/act_recipe.h"
#include "methods/layer_f32.h"
#include "methods/method.h"
#include "core/output_error.h"
#include "formats/fmt_ext.h"
#include "core/backend.h"
#include "kernels/awq_cuda.h"

#include <cblas.h>
#ifdef QL_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AWQ_CLIP_GRID 20
#define AWQ_MAX_SHRINK 0.5
#define AWQ_DIAG_MAX 8192 /* largest width for which a dense diagonal H is built when Σxxᵀ is absent */
#define AWQ_BATCH_ELEMS ((int64_t)1 << 26) /* weights per device batch of candidates (host: 2 floats each) */

/* Where the searches' output errors are evaluated: ql_awq_set_where (0 = the selected backend's choice). */
static int g_where = QL_AWQ_AUTO;
void ql_awq_set_where(int where) { g_where = where; }

/* The device evaluator of H for this search (kernels/awq_cuda.h), or NULL for the CPU. *err: its failure. */
static ql_cuda_qerr *qerr_open(const double *H, int64_t n, ql_status *err) {
    int w = g_where;
    *err = QL_OK;
    if (w == QL_AWQ_AUTO) {
        const ql_backend_ops *b = ql_backend_default();
        w = b && strcmp(b->name, "cuda") == 0 ? QL_AWQ_CUDA : QL_AWQ_CPU;
    }
    if (w == QL_AWQ_CPU) return NULL;
    ql_cuda_qerr *e = NULL;
#ifdef QL_HAVE_CUDA
    if (w == QL_AWQ_CUDA) cudaSetDevice(ql_backend_device()); /* --device cuda:N */
#endif
    *err = ql_cuda_qerr_new(H, n, w == QL_AWQ_CUDA_EMULATED, &e);
    return e;
}

/* Width of one quantization group along a row (the unit clipping works on); 0 when clipping makes no
 * sense (float formats, FP8 with one scale per row or tensor). */
static int64_t quant_group(const ql_format *f, int64_t cols) {
    int group;
    if (ql_int_format_params(f, NULL, &group, NULL, NULL)) return group > 0 ? QL_MIN(group, cols) : cols;
    if (f->block > 1) return QL_MIN(f->block, cols);
    return 0;
}

/* H as a dense [n, n] matrix: Σxxᵀ when collected, else diag(Σx²) (NULL if too wide). *owned: free it. */
static const double *dense_hessian(const ql_input_stats *st, double **owned) {
    *owned = NULL;
    if (st->xtx) return st->xtx;
    if (!st->mean_sq || st->n > AWQ_DIAG_MAX) return NULL;
    double *H = ql_calloc((size_t)(st->n * st->n), sizeof(double));
    for (int64_t j = 0; j < st->n; j++) H[j * st->n + j] = (double)st->mean_sq[j] * (double)st->n_tokens;
    *owned = H;
    return H;
}

/* clip_search's loop with the errors on the device (kernels/awq_cuda.h): the shrinks go in batches of
 * candidates, each group's error δ H_gg δᵀ of every candidate from one batched product; the choice per
 * (row, group) and the final keep-or-not as on the CPU. q: scratch [rows, cols]. */
static ql_status clip_search_dev(float *ws, float *q, int64_t rows, int64_t cols, const ql_format *f, const float *s,
                                 ql_cuda_qerr *qe, int64_t g, int n_threads, const double *before, double *after) {
    const int64_t ng = (cols + g - 1) / g, n = rows * cols;
    const int n_shrink = (int)(AWQ_MAX_SHRINK * AWQ_CLIP_GRID);
    const int K = (int)QL_MAX(1, QL_MIN(n_shrink, AWQ_BATCH_ELEMS / n));
    float *amax = ql_calloc((size_t)(rows * ng), sizeof(float)), *bestp = ql_malloc((size_t)(rows * ng) * sizeof(float));
    double *beste = ql_malloc((size_t)(rows * ng) * sizeof(double)), *eg = ql_malloc((size_t)(K * rows * ng) * sizeof(double));
    float *wc = ql_malloc((size_t)(K * n) * sizeof(float)), *qk = ql_malloc((size_t)(K * n) * sizeof(float));
    ql_status st = QL_OK;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float *a = &amax[r * ng + c / g];
            *a = fmaxf(*a, fabsf(ws[r * cols + c]));
        }
    for (int64_t i = 0; i < rows * ng; i++) bestp[i] = 1.0f, beste[i] = INFINITY;
    for (int k0 = 0; k0 < n_shrink && !st; k0 += K) {
        const int nk = QL_MIN(K, n_shrink - k0);
        for (int k = 0; k < nk && !st; k++) {
            const float p = 1.0f - (float)(k0 + k) / AWQ_CLIP_GRID;
            float *wk = wc + k * n;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    const float m = p * amax[r * ng + c / g], v = ws[r * cols + c];
                    wk[r * cols + c] = v > m ? m : v < -m ? -m : v;
                }
            st = ql_format_roundtrip(f, wk, qk + k * n, rows, cols, NULL, n_threads);
        }
        if (!st) st = ql_cuda_qerr_eval(qe, nk, rows, qk, ws, 0, s, 0, g, NULL, eg);
        for (int k = 0; k < nk && !st; k++) /* in shrink order: ties keep the earlier, as on the CPU */
            for (int64_t i = 0; i < rows * ng; i++)
                if (eg[k * rows * ng + i] < beste[i]) beste[i] = eg[k * rows * ng + i], bestp[i] = 1.0f - (float)(k0 + k) / AWQ_CLIP_GRID;
    }
    if (!st) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                const float m = bestp[r * ng + c / g] * amax[r * ng + c / g], v = ws[r * cols + c];
                wc[r * cols + c] = v > m ? m : v < -m ? -m : v;
            }
        double l = 0;
        if (!(st = ql_format_roundtrip(f, wc, q, rows, cols, NULL, n_threads)) &&
            !(st = ql_cuda_qerr_eval(qe, 1, rows, q, ws, 0, s, 0, 0, &l, NULL)) && l < *before) {
            memcpy(ws, wc, (size_t)n * sizeof(float));
            *after = l;
        }
    }
    free(amax), free(bestp), free(beste), free(eg), free(wc), free(qk);
    return st;
}

/* Clipping search on ws [rows, cols] (weights already multiplied by s; s NULL = 1), in place.
 * *before / *after get the whole-matrix loss without / with the clipping kept. */
static ql_status clip_search(float *ws, int64_t rows, int64_t cols, const ql_format *f, const float *s,
                             const double *H, ql_cuda_qerr *qe, int n_threads, bool measure_only, double *before,
                             double *after) {
    const int64_t g = quant_group(f, cols), bytes = ql_format_tensor_bytes(f, cols, rows);
    if (bytes < 0) return ql_fail(QL_ERR_ARG, "awq: rows of %lld do not fit %s", (long long)cols, f->name);
    const size_t n = (size_t)(rows * cols);
    float *q = ql_malloc(n * sizeof(float));
    ql_status st = ql_format_roundtrip(f, ws, q, rows, cols, NULL, n_threads);
    if (st) goto done;
    if (qe) {
        if ((st = ql_cuda_qerr_eval(qe, 1, rows, q, ws, 0, s, 0, 0, before, NULL))) goto done;
        *after = *before;
    } else {
        *before = *after = ql_output_error(q, ws, s, rows, cols, H);
    }
    if (g <= 0 || measure_only) goto done;
    if (qe) {
        st = clip_search_dev(ws, q, rows, cols, f, s, qe, g, n_threads, before, after);
        goto done;
    }
    {
        const int64_t ng = (cols + g - 1) / g;
        float *amax = ql_calloc((size_t)(rows * ng), sizeof(float)),
              *bestp = ql_malloc((size_t)(rows * ng) * sizeof(float));
        double *beste = ql_malloc((size_t)(rows * ng) * sizeof(double));
        double *D = ql_malloc((size_t)(rows * g) * sizeof(double)),
               *M = ql_malloc((size_t)(rows * g) * sizeof(double));
        double *Hg = ql_malloc((size_t)(g * g) * sizeof(double));
        float *wc = ql_malloc(n * sizeof(float));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                float *a = &amax[r * ng + c / g];
                *a = fmaxf(*a, fabsf(ws[r * cols + c]));
            }
        for (int64_t i = 0; i < rows * ng; i++) {
            bestp[i] = 1.0f;
            beste[i] = INFINITY;
        }
        const int n_shrink = (int)(AWQ_MAX_SHRINK * AWQ_CLIP_GRID);
        for (int k = 0; k < n_shrink && !st; k++) {
            const float p = 1.0f - (float)k / AWQ_CLIP_GRID;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    const float m = p * amax[r * ng + c / g], v = ws[r * cols + c];
                    wc[r * cols + c] = v > m ? m : v < -m ? -m : v;
                }
            st = ql_format_roundtrip(f, wc, q, rows, cols, NULL, n_threads);
            /* each group's own output error: δ_g H_gg δ_gᵀ for all rows at once */
            for (int64_t gi = 0; gi < ng && !st; gi++) {
                const int64_t c0 = gi * g, w = QL_MIN(g, cols - c0);
                for (int64_t a = 0; a < w; a++)
                    for (int64_t b = 0; b < w; b++) Hg[a * w + b] = H[(c0 + a) * cols + c0 + b];
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t a = 0; a < w; a++) {
                        const int64_t i = r * cols + c0 + a;
                        D[r * w + a] = ((double)q[i] - ws[i]) / (s ? s[c0 + a] : 1.0f);
                    }
                cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)rows, (int)w, 1.0, Hg, (int)w, D,
                            (int)w, 0.0, M, (int)w);
                for (int64_t r = 0; r < rows; r++) {
                    double e = 0;
                    for (int64_t a = 0; a < w; a++) e += D[r * w + a] * M[r * w + a];
                    if (e < beste[r * ng + gi]) {
                        beste[r * ng + gi] = e;
                        bestp[r * ng + gi] = p;
                    }
                }
            }
        }
        if (!st) {
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    const float m = bestp[r * ng + c / g] * amax[r * ng + c / g], v = ws[r * cols + c];
                    wc[r * cols + c] = v > m ? m : v < -m ? -m : v;
                }
            st = ql_format_roundtrip(f, wc, q, rows, cols, NULL, n_threads);
            if (!st) {
                /* measured against the unclipped weights: the target is the original layer's output */
                double l = ql_output_error(q, ws, s, rows, cols, H);
                if (l < *before) {
                    memcpy(ws, wc, n * sizeof(float));
                    *after = l;
                }
            }
        }
        free(amax);
        free(bestp);
        free(beste);
        free(D);
        free(M);
        free(Hg);
        free(wc);
    }
done:
    free(q);
    return st;
}

typedef struct {
    int grid;
    bool duo, clip, clip_qk;
    int n_threads;
} awq_opts;

/* Mean over rows (of every searched reader) of |W| / the absmax of its quantization group, per channel. */
static void weight_saliency(const ql_layer_f32 *L, const ql_scale_point *p, const int *lin, int nl,
                            double *sw) {
    int64_t total_rows = 0;
    for (int c = 0; c < p->n; c++) sw[c] = 0;
    for (int i = 0; i < nl; i++) {
        const int li = lin[i];
        const int64_t cols = L->cols[li];
        int64_t g = quant_group(L->fmt[li], cols);
        if (g <= 0) g = QL_MIN(cols, 128);
        for (int64_t r = 0; r < L->rows[li]; r++) {
            const float *wr = L->w[li] + r * cols;
            for (int64_t c0 = 0; c0 < cols; c0 += g) {
                const int64_t w = QL_MIN(g, cols - c0);
                float m = 0;
                for (int64_t a = 0; a < w; a++) m = fmaxf(m, fabsf(wr[c0 + a]));
                for (int64_t a = 0; a < w; a++) sw[c0 + a] += fabsf(wr[c0 + a]) / (m + 1e-6);
            }
        }
        total_rows += L->rows[li];
    }
    for (int c = 0; c < p->n; c++) sw[c] /= (double)(total_rows ? total_rows : 1);
}

/* awq_point's grid over α (and duo) with the output errors on the device: for each candidate s the point's
 * linears are scaled and rounded on the host (the registry's quantizer) and stacked by rows, candidates in
 * batches of up to AWQ_BATCH_ELEMS weights, each batch's losses from one product with H (awq_cuda.h). The
 * candidates, their order and the choice (strictly smaller loss wins) are the CPU loop's. */
/* One grid point's smoothing scales: s_j = x̄_j^a (duo: x̄_j^a / w̄_j^(1-a)), floored at 1e-4 and divided by
 * √(max·min) so they straddle 1; se[c] is the scale of input column c (scale points may share inputs). */
static void candidate_scales(const ql_layer_f32 *L, const ql_scale_point *p, const double *sx, const double *sw, int ns,
                             int64_t n, double a, int duo, float *s, float *se) {
    double mx = 0, mn = INFINITY;
    for (int j = 0; j < ns; j++) {
        double v = duo ? pow(sx[j], a) / (pow(sw[j], 1 - a) + 1e-4) : pow(sx[j], a);
        v = fmax(v, 1e-4);
        s[j] = (float)v;
        mx = fmax(mx, v);
        mn = fmin(mn, v);
    }
    const double norm = sqrt(mx * mn);
    for (int j = 0; j < ns; j++) s[j] = (float)(s[j] / norm);
    for (int64_t c = 0; c < n; c++) se[c] = s[ql_scale_point_src(L, p, c)];
}

static ql_status grid_search_dev(const ql_layer_f32 *L, const ql_scale_point *p, const int *lin, int nl,
                                 const double *sx, const double *sw, const awq_opts *o, ql_cuda_qerr *qe, float *s,
                                 float *se, float *best, double *best_loss, double *loss_rtn, double *best_alpha,
                                 bool *best_duo) {
    const int n = p->n, ns = p->n_src, ncand = o->grid * (o->duo ? 2 : 1);
    int64_t R = 0;
    for (int i = 0; i < nl; i++) R += L->rows[lin[i]];
    const int K = (int)QL_MAX(1, QL_MIN(ncand, AWQ_BATCH_ELEMS / (R * n)));
    float *ws = ql_malloc((size_t)(K * R * n) * sizeof(float)), *q = ql_malloc((size_t)(K * R * n) * sizeof(float));
    float *sk = ql_malloc((size_t)(K * ns) * sizeof(float)), *sek = ql_malloc((size_t)(K * n) * sizeof(float));
    double *loss = ql_malloc((size_t)K * sizeof(double));
    ql_status st = QL_OK;
    for (int c0 = 0; c0 < ncand && !st; c0 += K) {
        const int nk = QL_MIN(K, ncand - c0);
        for (int k = 0; k < nk && !st; k++) {
            const int cand = c0 + k, duo = cand / o->grid, gi = cand % o->grid;
            const double a = (double)gi / o->grid;
            float *sj = sk + k * ns, *sc = sek + k * n;
            candidate_scales(L, p, sx, sw, ns, n, a, duo, sj, sc);
            int64_t r0 = 0;
            for (int i = 0; i < nl && !st; i++) { /* ql_quant_output_error's scaling and rounding */
                const int li = lin[i];
                const int64_t rows = L->rows[li], cnt = rows * n;
                float *wk = ws + (k * R + r0) * n;
                for (int64_t e = 0; e < cnt; e++) wk[e] = L->w[li][e] * sc[e % n];
                if (ql_format_roundtrip(L->fmt[li], wk, q + (k * R + r0) * n, rows, n, NULL, o->n_threads))
                    st = ql_fail(QL_ERR_ARG, "awq: cannot quantize blk.%d linear %d as %s", L->layer, li,
                                 L->fmt[li]->name);
                r0 += rows;
            }
        }
        if (!st) st = ql_cuda_qerr_eval(qe, nk, R, q, ws, R * n, sek, n, 0, loss, NULL);
        for (int k = 0; k < nk && !st; k++) {
            const int cand = c0 + k;
            if (cand == 0) *loss_rtn = loss[k];
            if (loss[k] < *best_loss) {
                *best_loss = loss[k];
                *best_alpha = (double)(cand % o->grid) / o->grid;
                *best_duo = cand >= o->grid;
                memcpy(best, sk + k * ns, (size_t)ns * sizeof(float));
            }
        }
    }
    memcpy(s, best, (size_t)ns * sizeof(float));
    (void)se;
    free(ws), free(q), free(sk), free(sek), free(loss);
    return st;
}

static ql_status awq_point(ql_layer_f32 *L, const ql_scale_point *p, const ql_stat_entry *e,
                           const awq_opts *o, ql_scale_report *rep) {
    int lin[3], nl = 0;
    for (int i = 0; i < p->n_lin; i++) {
        const int li = p->lin[i];
        if (L->fmt[li] && ql_format_fits(L->fmt[li], L->cols[li])) lin[nl++] = li;
    }
    if (!nl) return QL_OK;
    ql_input_stats view;
    ql_stats_view(e, &view);
    double *Hown;
    const double *H = dense_hessian(&view, &Hown);
    if (!H || !view.mean_abs)
        return ql_fail(QL_ERR_ARG, "awq: blk.%d.%s needs Σxxᵀ statistics", L->layer, p->point);
    const int n = p->n, ns = p->n_src;
    /* per producer entry: mean of s_x and s_w over the channels it feeds */
    double *sx = ql_calloc((size_t)ns, sizeof(double)), *sw = ql_calloc((size_t)ns, sizeof(double));
    double *swc = ql_malloc((size_t)n * sizeof(double));
    int *cnt = ql_calloc((size_t)ns, sizeof(int));
    weight_saliency(L, p, lin, nl, swc);
    for (int c = 0; c < n; c++) {
        const int j = ql_scale_point_src(L, p, c);
        sx[j] += view.mean_abs[c];
        sw[j] += swc[c];
        cnt[j]++;
    }
    for (int j = 0; j < ns; j++) {
        sx[j] /= cnt[j] ? cnt[j] : 1;
        sw[j] /= cnt[j] ? cnt[j] : 1;
    }
    float *s = ql_malloc((size_t)ns * sizeof(float)), *best = ql_malloc((size_t)ns * sizeof(float));
    float *se = ql_malloc((size_t)n * sizeof(float));
    double best_loss = INFINITY, loss_rtn = -1, best_alpha = 0;
    bool best_duo = false;
    ql_status st = QL_OK;
    ql_cuda_qerr *qe = qerr_open(H, n, &st);
    if (qe) st = grid_search_dev(L, p, lin, nl, sx, sw, o, qe, s, se, best, &best_loss, &loss_rtn, &best_alpha,
                                 &best_duo);
    for (int duo = 0; duo <= (o->duo ? 1 : 0) && !st && !qe; duo++)
        for (int gi = 0; gi < o->grid && !st; gi++) {
            const double a = (double)gi / o->grid;
            candidate_scales(L, p, sx, sw, ns, n, a, duo, s, se);
            double loss = 0;
            for (int i = 0; i < nl && !st; i++) {
                const int li = lin[i];
                double l = ql_quant_output_error(L->w[li], L->rows[li], L->cols[li], L->fmt[li], se, H,
                                                 o->n_threads);
                if (l < 0)
                    st = ql_fail(QL_ERR_ARG, "awq: cannot quantize blk.%d linear %d as %s", L->layer, li,
                                 L->fmt[li]->name);
                loss += l;
            }
            if (st) break;
            if (!duo && gi == 0) loss_rtn = loss;
            if (loss < best_loss) {
                best_loss = loss;
                best_alpha = a;
                best_duo = duo;
                memcpy(best, s, (size_t)ns * sizeof(float));
            }
        }
    double final_loss = best_loss;
    if (!st) {
        ql_scale_point_apply(L, p, best);
        for (int c = 0; c < n; c++) se[c] = best[ql_scale_point_src(L, p, c)];
        if (o->clip) {
            final_loss = 0;
            for (int i = 0; i < nl && !st; i++) {
                const int li = lin[i];
                double before, after;
                /* attention logits are not a plain linear output: AWQ leaves q/k unclipped */
                const bool skip = !o->clip_qk && (li == QL_LIN_Q || li == QL_LIN_K);
                st = clip_search(L->w[li], L->rows[li], L->cols[li], L->fmt[li], se, H, qe, o->n_threads, skip,
                                 &before, &after);
                final_loss += after;
            }
        }
    }
    if (rep) {
        snprintf(rep->point, sizeof rep->point, "%s", p->point);
        rep->alpha = best_alpha;
        rep->duo = best_duo;
        rep->loss_rtn = loss_rtn;
        rep->loss_scale = best_loss;
        rep->loss_final = final_loss;
        rep->smin = INFINITY;
        rep->smax = 0;
        for (int j = 0; j < ns; j++) {
            rep->smin = fmin(rep->smin, best[j]);
            rep->smax = fmax(rep->smax, best[j]);
        }
    }
    ql_cuda_qerr_free(qe);
    free(sx);
    free(sw);
    free(swc);
    free(cnt);
    free(s);
    free(best);
    free(se);
    free(Hown);
    return st;
}

extern const ql_method ql_method_awq;

static ql_status awq_layer(ql_layer_f32 *L, const ql_stats *st, const ql_opt_values *v, int n_threads,
                           const ql_progress *progress, ql_transform_report *rep) {
    const ql_method *M = &ql_method_awq;
    awq_opts o = {
        .grid = (int)ql_opt_int(v, M, "grid"),
        .duo = ql_opt_bool(v, M, "duo"),
        .clip = ql_opt_bool(v, M, "clip"),
        .clip_qk = ql_opt_bool(v, M, "clip_qk"),
        .n_threads = n_threads > 0 ? n_threads : 1,
    };
    if (rep) memset(rep, 0, sizeof *rep);
    ql_scale_point pts[4];
    const int np =
        ql_layer_scale_points(L, ql_opt_bool(v, M, "attn"), ql_opt_bool(v, M, "vo"), ql_opt_bool(v, M, "ffn"),
                              ql_opt_bool(v, M, "down"), pts);
    for (int k = 0; k < np; k++) {
        if (ql_progress_cancelled(progress)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
        const ql_stat_entry *e = ql_layer_point_stats(st, L->layer, &pts[k]);
        if (!e) return ql_fail(QL_ERR_ARG, "awq: no statistics for blk.%d.%s", L->layer, pts[k].point);
        ql_scale_report r = {0};
        ql_status s = awq_point(L, &pts[k], e, &o, &r);
        if (s) return s;
        if (rep && r.point[0]) rep->pt[rep->n++] = r;
        ql_progress_report(progress, k + 1, np, "awq");
    }
    return QL_OK;
}

ql_status ql_awq_layer(ql_layer_f32 *L, const ql_stats *st, const char *spec, int n_threads,
                       const ql_progress *progress, ql_transform_report *rep) {
    ql_opt_values v;
    ql_status s = ql_method_parse_opts(&ql_method_awq, spec, &v);
    return s ? s : awq_layer(L, st, &v, n_threads, progress, rep);
}

/* Per tensor (no scale migration): the clipping search with s = 1, then the format's rounding. */
static ql_status awq_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                              const ql_input_stats *st, const ql_method_opts *o, void *dst) {
    const int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    if (st && st->n == ncols && ql_opt_bool(o ? o->values : NULL, &ql_method_awq, "clip")) {
        double *Hown;
        const double *H = dense_hessian(st, &Hown);
        if (H) {
            double before, after;
            ql_status s = QL_OK;
            ql_cuda_qerr *qe = qerr_open(H, ncols, &s);
            if (!s) s = clip_search(w, nrows, ncols, f, NULL, H, qe, nt, false, &before, &after);
            ql_cuda_qerr_free(qe);
            free(Hown);
            if (s) return s;
        }
    }
    return ql_format_quantize(f, w, dst, nrows, ncols, o ? o->importance : NULL, nt);
}

static ql_status awq_transform(ql_layer_f32 *L, const ql_stats *st, const ql_method_opts *o) {
    return awq_layer(L, st, o ? o->values : NULL, o ? o->n_threads : 1, o ? o->progress : NULL, NULL);
}

static const ql_opt_def awq_opts_schema[] = {
    {"grid", QL_OPT_INT, 20, 1, 1000, NULL, "scale exponents alpha = 0, 1/grid, ..., (grid-1)/grid"},
    {"duo", QL_OPT_BOOL, 1, 0, 1, NULL, "also try s = s_x^alpha / s_w^(1-alpha) (AutoAWQ's duo scaling)"},
    {"clip", QL_OPT_BOOL, 1, 0, 1, NULL, "search a clipped range per quantization group (shrink down to 0.55)"},
    {"clip_qk", QL_OPT_BOOL, 0, 0, 1, NULL, "also clip attn_q/attn_k (AWQ skips them)"},
    {"attn", QL_OPT_BOOL, 1, 0, 1, NULL, "scale q/k/v through attn_norm"},
    {"vo", QL_OPT_BOOL, 1, 0, 1, NULL, "scale attn_output through attn_v's rows (tied per kv head)"},
    {"ffn", QL_OPT_BOOL, 1, 0, 1, NULL, "scale gate/up through ffn_norm"},
    {"down", QL_OPT_BOOL, 1, 0, 1, NULL, "scale ffn_down through ffn_up's rows"},
};

const ql_method ql_method_awq = {
    .name = "awq",
    .summary =
        "AWQ: per-channel scales searched on the layer output error, folded into the norms; clipping search",
    .explain =
        "Activation-aware weight quantization: input channels that see large activations matter more, so "
        "AWQ scales their weights up before rounding (and the activations down, folded into the previous "
        "norm), searching the scale exponent that minimises the layer's output error. Needs statistics.",
    .caps = QL_CAP_PER_TENSOR | QL_CAP_LAYER_TRANSFORM,
    .needs = QL_NEEDS_ACT_STATS | QL_NEEDS_HESSIAN,
    .opts = awq_opts_schema,
    .n_opts = (int)QL_ARRAY_LEN(awq_opts_schema),
    .quantize_tensor = awq_quantize,
    .transform_layer = awq_transform,
};
