/* quantize.c — the model quantization driver (see quantize.h). */
#include "pipeline/quantize.h"

#include "base/atomic_file.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "pipeline/imatrix.h"
#include "core/infer.h"
#include "methods/method.h"
#include "core/stats.h"
#include "methods/act_recipe.h"
#include "methods/layer_f32.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* F32 weights that replace a source tensor's decoded values (after a scale-migrating transform). */
typedef struct {
    float *w;
    float *in_scale; /* the columns were multiplied by this: importance is divided by its square */
} override;

typedef struct {
    const ql_model *m;
    const ql_quant_opts *o;
    ql_gguf *out;
    override *ov;   /* [n source tensors] or NULL */
    float *wbuf;    /* decode buffer reused across tensors: fresh gigabyte mallocs cost seconds of page faults */
    size_t wcap;
    const ql_progress *progress;
    int64_t done, total;
    double t0;
    ql_opt_values *values; /* [ql_method_count()]: o->method_opts parsed once for each planned method */
    int64_t rounded;       /* tensors planned with a data-aware method that got rtn */
} quant_ctx;

int64_t ql_file_type_for_format(const char *name) {
    const ql_format *f = name ? ql_format_by_name(name) : NULL;
    return f ? ql_format_llama_file_type(f) : -1; /* QL_FTYPE_NONE is -1 */
}

static int method_index(const ql_method *m) {
    for (int i = 0; i < ql_method_count(); i++)
        if (ql_method_at(i) == m) return i;
    return 0;
}

/* The stored tensor behind linear `lin` of layer l: a fused attn_qkv / ffn_up (gate+up) for its row views. Plans,
 * overrides and statistics are per stored tensor. */
static const ql_gguf_tensor *stored_linear(const ql_model *m, int l, int lin) {
    const ql_gguf_tensor *t = ql_layer_linear(m, l, lin), *parent = t ? ql_model_view_parent(m, t, NULL) : NULL;
    return parent ? parent : t;
}

/* Does a transform method (AWQ, SmoothQuant) rescale the layer this tensor belongs to? Then statistics
 * measured on the original model no longer describe its input. */
static const ql_method *layer_transform_of(const ql_model *m, const ql_plan *p, const char *tensor) {
    int layer;
    if (sscanf(tensor, "blk.%d.", &layer) != 1 || layer < 0 || layer >= m->cfg.n_layer) return NULL;
    bool member = false;
    const ql_method *tm = NULL;
    for (int i = 0; i < QL_LIN_COUNT; i++) {
        const ql_gguf_tensor *t = stored_linear(m, layer, i);
        if (!t) continue;
        member |= !strcmp(t->name, tensor);
        const ql_plan_entry *e = ql_plan_find(p, t->name);
        const ql_method *mm = e ? ql_method_by_name(e->method) : NULL;
        if (mm && mm->transform_layer && !tm) tm = mm;
    }
    return member ? tm : NULL;
}

/* The one rule both the driver and --dry-run apply: rtn, and why, when the planned method cannot use
 * what this tensor has. have: statistics for its input exist; hessian: they include XᵀX. */
static const ql_method *effective_method(const ql_method *meth, const ql_method *transformed_by, bool have,
                                         bool hessian, const char *tensor, const char *why_missing, char *why,
                                         size_t cap) {
    if (!meth->needs) return meth;
    if (transformed_by && !meth->transform_layer) {
        snprintf(why, cap, "%s rescales this layer: %s cannot use statistics of the unscaled weights",
                 transformed_by->name, meth->name);
        return ql_method_by_name("rtn");
    }
    if (meth->transform_layer && transformed_by) return meth; /* the transform already used the statistics */
    if (!have) {
        snprintf(why, cap, "%s needs input statistics: %s", meth->name, why_missing);
        return ql_method_by_name("rtn");
    }
    if ((meth->needs & QL_NEEDS_HESSIAN) && !hessian) {
        snprintf(why, cap, "%s needs the Hessian of %s's input; the statistics have none", meth->name, tensor);
        return ql_method_by_name("rtn");
    }
    return meth;
}

/* why_missing for a tensor without statistics */
static void missing_reason(const char *tensor, const ql_stat_entry *se, int64_t ncols, char *buf, size_t cap) {
    char point[96];
    if (!ql_stats_input_name(tensor, point, sizeof point))
        snprintf(buf, cap, "%s is looked up, not multiplied, so it has none", tensor);
    else if (se)
        snprintf(buf, cap, "they were measured for %lld input features, %s has %lld", (long long)se->n, tensor,
                 (long long)ncols);
    else
        snprintf(buf, cap, "the statistics have no entry for its input %s", point);
}

const ql_method *ql_quant_method_for(const ql_model *m, const ql_plan *plan, const ql_plan_entry *e,
                                     const ql_stats *stats, bool stats_planned, char *why, size_t cap) {
    char dummy[8];
    if (!why || !cap) why = dummy, cap = sizeof dummy;
    why[0] = 0;
    const ql_method *meth = ql_method_by_name(e->method);
    int64_t ti = ql_gguf_find_tensor(m->gguf, e->tensor);
    if (!meth || ti < 0) return meth;
    int64_t ncols = m->gguf->tensors[ti].ne[0];
    char point[96], missing[200] = "";
    bool have, hessian;
    const ql_stat_entry *se = NULL;
    if (stats) {
        se = ql_stats_for_tensor(stats, e->tensor);
        have = se && se->n == ncols;
        hessian = have && stats->has_hessian;
    } else {
        have = stats_planned && ql_stats_input_name(e->tensor, point, sizeof point);
        hessian = have;
    }
    if (!have) {
        if (!stats && !stats_planned) snprintf(missing, sizeof missing, "none given (--stats FILE or --text FILE)");
        else missing_reason(e->tensor, se, ncols, missing, sizeof missing);
    }
    return effective_method(meth, layer_transform_of(m, plan, e->tensor), have, hessian, e->tensor, missing, why,
                            cap);
}

/* A method's own progress (done of total steps on one tensor) shown as that tensor's share of the whole
 * bar, with the method's phase after the tensor name; the cancel flag is the driver's, so Ctrl-C reaches a
 * long per-tensor method (AQLM keeps a checkpoint then). */
typedef struct {
    ql_progress p;
    const ql_progress *outer;
    int64_t base, span, total;
    const char *name;
} sub_progress;

static void sub_progress_fn(void *user, int64_t done, int64_t total, const char *phase) {
    sub_progress *sp = user;
    char buf[256];
    snprintf(buf, sizeof buf, "%s: %s", sp->name, phase ? phase : "");
    int64_t d = total > 0 ? (int64_t)((double)sp->span * (double)QL_MIN(done, total) / (double)total) : 0;
    ql_progress_report(sp->outer, sp->base + d, sp->total, buf);
}

/* Quantize one source tensor into format f with its planned method; stats may be NULL. */
static ql_status quantize_one(quant_ctx *c, const ql_gguf_tensor *src, const ql_format *f, const ql_stats *stats,
                              void *dst) {
    int64_t ncols = src->ne[0], nrows = src->ne[1] * src->ne[2] * src->ne[3];
    size_t need = (size_t)(ncols * nrows) * sizeof(float);
    if (need > c->wcap) {
        free(c->wbuf);
        c->wbuf = malloc(need);
        c->wcap = c->wbuf ? need : 0;
    }
    float *w = c->wbuf;
    float *imp = NULL;
    if (!w) return ql_fail(QL_ERR_NOMEM, "out of memory for tensor '%s'", src->name);
    ql_status s = QL_OK;
    const override *ov = c->ov ? &c->ov[src - c->m->gguf->tensors] : NULL;
    if (ov && ov->w)
        memcpy(w, ov->w, (size_t)(ncols * nrows) * sizeof(float));
    else if (!ql_tensor_to_f32(src, w, c->o->n_threads)) {
        const ql_type_info *ti = ql_type_get(src->type);
        s = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': cannot decode type %s", src->name, ti ? ti->name : "?");
        goto out;
    }
    /* a MoE expert stack: each expert's rows with its own importance (llama-quantize's per-expert slice) */
    const int64_t n_mat = src->ne[2] * src->ne[3];
    if (c->o->imatrix && f->uses_importance) {
        imp = ql_malloc((size_t)(ncols * n_mat) * sizeof(float));
        bool ok = true;
        for (int64_t k = 0; k < n_mat && ok; k++)
            ok = ql_imatrix_importance_mat(c->o->imatrix, src->name, ncols, n_mat, k, imp + k * ncols);
        if (!ok) {
            free(imp);
            imp = NULL;
        } else if (ov && ov->in_scale)
            for (int64_t j = 0; j < ncols * n_mat; j++) imp[j] /= ov->in_scale[j % ncols] * ov->in_scale[j % ncols];
    }
    const ql_plan_entry *e = ql_plan_find(c->o->plan, src->name);
    const ql_method *planned = ql_method_by_name(e ? e->method : "rtn");
    ql_input_stats view = {0}, *vp = NULL;
    const ql_stat_entry *se = stats ? ql_stats_for_tensor(stats, src->name) : NULL;
    if (se && se->n == ncols) {
        ql_stats_view(se, &view);
        vp = &view;
    }
    /* the same rule --dry-run reports (ql_quant_method_for) */
    char why[256] = "", missing[200] = "";
    if (!vp) missing_reason(src->name, se, ncols, missing, sizeof missing);
    const ql_method *meth = effective_method(planned, layer_transform_of(c->m, c->o->plan, src->name), vp != NULL,
                                             vp && vp->xtx, src->name, missing, why, sizeof why);
    if (meth != planned) {
        c->rounded++;
        ql_log(1, "%s: rounded to nearest: %s", src->name, why);
    }
    if (meth->transform_layer && ov && ov->w) { /* scales already migrated: the layer's weights round */
        meth = ql_method_by_name("rtn");
        vp = NULL;
    }
    ql_method_opts mo = {.values = &c->values[method_index(planned)], .n_threads = c->o->n_threads, .importance = imp};
    if (meth != planned) mo.values = NULL;
    sub_progress sp = {.p = {.fn = sub_progress_fn, .cancel = c->progress ? c->progress->cancel : NULL},
                       .outer = c->progress, .base = c->done, .span = ncols * nrows, .total = c->total,
                       .name = src->name};
    sp.p.user = &sp;
    mo.progress = &sp.p;
    if (imp && n_mat > 1) {
        const int64_t rows = nrows / n_mat;
        const size_t bytes = ql_format_tensor_bytes(f, ncols, rows);
        for (int64_t k = 0; k < n_mat && !s; k++) {
            mo.importance = imp + k * ncols;
            s = meth->quantize_tensor(w + k * rows * ncols, rows, ncols, f, vp, &mo, (uint8_t *)dst + (size_t)k * bytes);
        }
    } else
        s = meth->quantize_tensor(w, nrows, ncols, f, vp, &mo, dst);
out:
    free(imp);
    c->done += ncols * nrows;
    ql_progress_report(c->progress, c->done, c->total, src->name);
    return s;
}

static ql_status produce(void *user, int64_t index, void *dst, uint64_t nbytes) {
    quant_ctx *c = user;
    (void)nbytes;
    if (ql_progress_cancelled(c->progress)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    const ql_gguf_tensor *out_t = &c->out->tensors[index];
    const ql_gguf_tensor *src = &c->m->gguf->tensors[ql_gguf_find_tensor(c->m->gguf, out_t->name)];
    ql_status s = quantize_one(c, src, ql_format_by_type(out_t->type), c->o->stats, dst);
    ql_gguf_release(c->m->gguf, src->data, src->nbytes); /* streaming: the source's pages leave RSS */
    return s;
}

/* Scale-migrating methods (AWQ, SmoothQuant) edit a whole layer at once: norms, the linears reading
 * them and the producers of later inputs. Run them up front, layer by layer, and keep the edited F32
 * weights as overrides: planned tensors are then quantized from them, norms written from them. */
static ql_status run_transforms(quant_ctx *c) {
    const ql_model *m = c->m;
    c->ov = ql_calloc((size_t)m->gguf->n_tensors, sizeof *c->ov);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const ql_method *meth = NULL;
        for (int i = 0; i < QL_LIN_COUNT && !meth; i++) {
            const ql_plan_entry *e = ql_plan_find(c->o->plan, stored_linear(m, l, i)->name);
            const ql_method *mm = e ? ql_method_by_name(e->method) : NULL;
            if (mm && mm->transform_layer) meth = mm;
        }
        if (!meth) continue;
        ql_layer_f32 L;
        ql_status s = ql_layer_f32_init(&L, m, l, c->o->n_threads);
        if (s) return s;
        for (int i = 0; i < QL_LIN_COUNT; i++) {
            const ql_plan_entry *e = ql_plan_find(c->o->plan, stored_linear(m, l, i)->name);
            L.fmt[i] = e ? e->format : NULL;
        }
        ql_method_opts mo = {.values = &c->values[method_index(meth)], .n_threads = c->o->n_threads};
        s = meth->transform_layer(&L, c->o->stats, &mo);
        if (s) {
            ql_layer_f32_deinit(&L);
            return s;
        }
        /* take ownership of the edited arrays (the layer struct gives them up) */
        const ql_layer_tensors *T = &m->layers[l];
        const ql_gguf_tensor *norms[3] = {T->attn_norm, T->ffn_norm, T->bv};
        float **nsrc[3] = {&L.attn_norm, &L.ffn_norm, &L.bv};
        for (int k = 0; k < 3; k++)
            if (norms[k] && *nsrc[k]) {
                c->ov[norms[k] - m->gguf->tensors].w = *nsrc[k];
                ql_gguf_adopt(c->out, *nsrc[k]);
                *nsrc[k] = NULL;
            }
        for (int i = 0; i < QL_LIN_COUNT && !s; i++) {
            const ql_gguf_tensor *t = ql_layer_linear(m, l, i);
            int64_t row0 = 0;
            const ql_gguf_tensor *parent = ql_model_view_parent(m, t, &row0);
            if (!parent) {
                override *o = &c->ov[t - m->gguf->tensors];
                o->w = L.w[i];
                o->in_scale = L.in_scale[i];
                ql_gguf_adopt(c->out, L.w[i]);
                if (L.in_scale[i]) ql_gguf_adopt(c->out, L.in_scale[i]);
                L.w[i] = NULL;
                L.in_scale[i] = NULL;
                continue;
            }
            /* a row view of a fused tensor: its edited rows go into the parent's override, whose readers share
             * one input and so one column scale (q, k, v read attn_in; gate, up read ffn_in) */
            override *o = &c->ov[parent - m->gguf->tensors];
            const int64_t cols = parent->ne[0];
            const bool first = !o->w; /* the parent's first part in this layer */
            if (first) {
                o->w = ql_malloc((size_t)(cols * parent->ne[1]) * sizeof(float));
                ql_gguf_adopt(c->out, o->w);
                if (!ql_tensor_to_f32(parent, o->w, c->o->n_threads))
                    s = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': cannot decode its type", parent->name);
            }
            memcpy(o->w + row0 * cols, L.w[i], (size_t)(L.rows[i] * cols) * sizeof(float));
            if (first && L.in_scale[i]) {
                o->in_scale = L.in_scale[i];
                ql_gguf_adopt(c->out, L.in_scale[i]);
                L.in_scale[i] = NULL;
            } else if (!s && (!o->in_scale != !L.in_scale[i] ||
                              (L.in_scale[i] && memcmp(o->in_scale, L.in_scale[i], (size_t)cols * sizeof(float)))))
                s = ql_fail(QL_ERR_UNSUPPORTED, "%s: the parts of fused '%s' were given different input scales",
                            m->path, parent->name);
        }
        ql_layer_f32_deinit(&L);
        if (s) return s;
        if (ql_progress_cancelled(c->progress)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    }
    return QL_OK;
}

/* True-sequential order: the inputs of each group of layers are measured with every earlier group
 * already quantized (its dequantized weights swapped into the forward pass). Groups share one input:
 * q/k/v, then attn_output, then gate/up, then ffn_down, layer by layer, then output. The bytes are
 * computed here and written afterwards. */
static ql_status quantize_sequential(quant_ctx *c) {
    const ql_model *m = c->m;
    ql_infer *inf = NULL;
    ql_status s = ql_infer_new(m, c->o->n_threads, &inf);
    if (s) return s;
    static const char *points[4] = {"attn_in", "attn_out_in", "ffn_in", "ffn_down_in"};
    const int n_groups = m->cfg.n_layer * 4 + 1;
    for (int gi = 0; gi < n_groups && !s; gi++) {
        int layer = gi / 4, k = gi % 4;
        char point[64], names[QL_ROLE_COUNT][96];
        int n_names = 0;
        if (gi == n_groups - 1) {
            snprintf(point, sizeof point, "output_in");
            snprintf(names[n_names++], 96, "output.weight");
        } else {
            snprintf(point, sizeof point, "blk.%d.%s", layer, points[k]);
            /* the layer's stored linears that read this group's input (a fused attn_qkv or ffn_up once) */
            const ql_gguf_tensor *lin[QL_ROLE_COUNT];
            int in[QL_ROLE_COUNT];
            const int nl = ql_model_layer_linears(m, layer, lin, in);
            for (int r = 0; r < nl; r++)
                if (in[r] == k) snprintf(names[n_names++], 96, "%s", lin[r]->name);
        }
        /* only groups with a data-aware method need fresh statistics */
        bool needs = false;
        for (int i = 0; i < n_names; i++) {
            const ql_plan_entry *e = ql_plan_find(c->o->plan, names[i]);
            int64_t ti = ql_gguf_find_tensor(c->out, names[i]);
            needs |= e && ti >= 0 && !c->out->tensors[ti].data && ql_method_by_name(e->method)->needs;
        }
        if (!needs) continue;
        ql_stats *st = NULL;
        ql_stats_opts so = {.hessian = true, .output = gi == n_groups - 1, .n_threads = c->o->n_threads, .only = point};
        if ((s = ql_stats_collect(inf, c->o->calib_tokens, c->o->n_seq, c->o->seq_len, &so, NULL, &st))) break;
        for (int i = 0; i < n_names && !s; i++) {
            int64_t ti = ql_gguf_find_tensor(c->out, names[i]);
            if (ti < 0 || c->out->tensors[ti].data) continue; /* not planned, or copied unchanged */
            ql_gguf_tensor *ot = &c->out->tensors[ti];
            const ql_gguf_tensor *src = &m->gguf->tensors[ql_gguf_find_tensor(m->gguf, names[i])];
            void *bytes = ql_malloc(ot->nbytes);
            s = quantize_one(c, src, ql_format_by_type(ot->type), st, bytes);
            if (s) {
                free(bytes);
                break;
            }
            ot->data = bytes;
            ot->produce = NULL;
            ql_gguf_adopt(c->out, bytes);
            /* later groups see this tensor as quantized */
            int64_t n = src->ne[0] * src->ne[1];
            float *deq = ql_malloc((size_t)n * sizeof(float));
            s = ql_format_dequantize(ql_format_by_type(ot->type), bytes, deq, src->ne[1], src->ne[0], c->o->n_threads);
            ql_infer_swap_weight(inf, src, deq);
            ql_gguf_adopt(c->out, deq);
        }
        ql_stats_free(st);
        if (!s && ql_progress_cancelled(c->progress)) s = ql_fail(QL_ERR_CANCELLED, "cancelled");
    }
    ql_infer_free(inf);
    return s;
}

/* The plan's activation schemes as qlab.act.* keys (core/actquant.h) in out, so `qlab ppl` on the file runs
 * them. A static scale is the calibration absmax of the linear's input as the output model sees it: a
 * scale-migrating transform divided input channel j by in_scale[j] (ov, may be NULL), so its absmax is divided
 * the same way. sizing: only the keys' sizes matter (no statistics needed; static scales are placeholders). */
static ql_status plan_act_keys(const ql_model *m, const ql_plan *plan, const ql_stats *stats, const override *ov,
                               ql_gguf *out, bool sizing) {
    if (!plan || !plan->n_act) return QL_OK;
    for (int i = 0; i < plan->n_act; i++) { /* every named tensor is a linear of this model */
        const char *name = plan->act[i].tensor;
        bool ok = !strcmp(name, QL_PLAN_ACT_DEFAULT) || (m->output && !strcmp(m->output->name, name));
        for (int l = 0; l < m->cfg.n_layer && !ok; l++)
            for (int k = 0; k < QL_LIN_COUNT && !ok; k++) {
                const ql_gguf_tensor *li = ql_layer_linear(m, l, k);
                ok = li && !strcmp(li->name, name);
            }
        if (!ok)
            return ql_fail(QL_ERR_ARG, "plan [activations] names '%s', which is not a linear layer of %s", name,
                           m->path);
    }
    const int n_t = m->cfg.n_layer * QL_LIN_COUNT + 1;
    for (int i = 0; i < n_t; i++) {
        const bool block = i < n_t - 1;
        const ql_gguf_tensor *t = block ? ql_layer_linear(m, i / QL_LIN_COUNT, i % QL_LIN_COUNT) : m->output;
        if (!t) continue;
        const ql_plan_act *pa = ql_plan_find_act(plan, t->name, block);
        if (!pa || pa->mode == QL_ACT_NONE) continue;
        ql_act_quant aq;
        float *absmax = NULL, one = 1;
        int64_t n = 0;
        if (ql_act_mode_is_static(pa->mode) && sizing) {
            absmax = &one;
            n = 1;
        } else if (ql_act_mode_is_static(pa->mode)) {
            const ql_stat_entry *e = stats ? ql_stats_for_tensor(stats, t->name) : NULL;
            ql_input_stats view = {0};
            if (e) ql_stats_view(e, &view);
            if (!e || !view.absmax || view.n != t->ne[0])
                return ql_fail(QL_ERR_ARG,
                               "tensor '%s': static activation scheme %s needs calibration statistics of its input "
                               "(--stats FILE or --text FILE)",
                               t->name, ql_act_mode_name(pa->mode));
            n = view.n;
            absmax = ql_malloc((size_t)n * sizeof(float));
            const ql_gguf_tensor *stored = block ? stored_linear(m, i / QL_LIN_COUNT, i % QL_LIN_COUNT) : t;
            const float *in_scale = ov ? ov[stored - m->gguf->tensors].in_scale : NULL;
            for (int64_t j = 0; j < n; j++) absmax[j] = in_scale ? view.absmax[j] / in_scale[j] : view.absmax[j];
        }
        ql_status s = ql_act_quant_init(&aq, pa->mode, absmax, n, pa->threshold);
        if (absmax != &one) free(absmax);
        if (s) return s;
        ql_act_quant_to_gguf(out, t->name, &aq);
    }
    return QL_OK;
}

/* The source's own qlab.act.* keys are not carried over: the plan decides the output's activation schemes. */
static bool is_act_key(const char *key) { return strncmp(key, "qlab.act.", 9) == 0; }

/* The plan's KV settings as qlab.kv.* keys (core/kv_settings.h), checked against the model first: a scheme the
 * head dimension cannot hold is refused here, not when the file is run. The source's keys go either way. */
static ql_status plan_kv_keys(const ql_model *m, const ql_plan *plan, ql_gguf *out) {
    ql_kv_settings none;
    ql_kv_settings_init(&none);
    const ql_kv_settings *kv = plan ? &plan->kv : &none;
    if (kv->set) {
        ql_status s = ql_kv_settings_check(kv, &m->cfg, m->path);
        if (s) return ql_fail(s, "plan [kv]: %s", ql_last_error());
    }
    ql_kv_settings_to_gguf(kv, out);
    return QL_OK;
}

static ql_status plan_activations(quant_ctx *c) {
    for (int64_t k = c->out->n_kv - 1; k >= 0; k--)
        if (is_act_key(c->out->kv[k].key)) ql_gguf_remove(c->out, c->out->kv[k].key);
    ql_status s = plan_kv_keys(c->m, c->o->plan, c->out);
    return s ? s : plan_act_keys(c->m, c->o->plan, c->o->stats, c->ov, c->out, false);
}

/* The keys ql_quantize_model sets on the output besides the source's (all u32). */
static const char *const ADDED_KEYS[] = {"general.file_type", "general.quantization_version"};

int64_t ql_quantize_file_bytes(const ql_model *m, const int64_t *tensor_bytes, const ql_plan *plan) {
    const ql_gguf *g = m->gguf;
    uint64_t align = g->alignment ? g->alignment : 32, head = ql_gguf_header_bytes(g);
    for (size_t k = 0; k < QL_ARRAY_LEN(ADDED_KEYS); k++)
        if (!ql_gguf_get(g, ADDED_KEYS[k])) head += 8 + strlen(ADDED_KEYS[k]) + 4 + 4; /* key, type, u32 */
    /* activation keys: the plan's replace the source's; sized by writing both sets into empty headers */
    ql_gguf *dropped = ql_gguf_new(), *added = ql_gguf_new();
    for (int64_t k = 0; k < g->n_kv; k++)
        if (is_act_key(g->kv[k].key) || ql_kv_settings_is_key(g->kv[k].key))
            ql_gguf_set_value(dropped, g->kv[k].key, &g->kv[k].val);
    if (!plan_act_keys(m, plan, NULL, NULL, added, true) && !plan_kv_keys(m, plan, added))
        head = head + ql_gguf_header_bytes(added) - ql_gguf_header_bytes(dropped);
    ql_gguf_free(dropped);
    ql_gguf_free(added);
    uint64_t total = (head + align - 1) / align * align;
    for (int64_t i = 0; i < g->n_tensors; i++) total += ((uint64_t)tensor_bytes[i] + align - 1) / align * align;
    return (int64_t)total;
}

/* Before anything is computed or written: the memory quantizing tensor t takes (the driver's F32 copy of
 * it plus what its method allocates for this shape, format and options) must fit the budget, else one line
 * naming the tensor, the need and what to reduce. */
static ql_status check_work_memory(quant_ctx *c, const ql_gguf_tensor *t, const ql_plan_entry *e) {
    const int64_t ncols = t->ne[0], nrows = t->ne[1] * t->ne[2] * t->ne[3];
    const ql_method *meth = ql_method_by_name(e->method);
    /* the method quantize_one will run (a tensor without statistics rounds to nearest); in a sequential run
     * the statistics come later, so the planned method is assumed */
    const ql_stat_entry *se = c->o->stats ? ql_stats_for_tensor(c->o->stats, t->name) : NULL;
    if (c->o->stats) {
        char why[256] = "", missing[200] = "";
        bool have = se && se->n == ncols;
        if (!have) missing_reason(t->name, se, ncols, missing, sizeof missing);
        meth = effective_method(meth, layer_transform_of(c->m, c->o->plan, t->name), have, have && se->xtx, t->name,
                                missing, why, sizeof why);
    }
    double need = 4.0 * (double)nrows * (double)ncols;
    char what[400] = "its F32 copy", how[200] = "the tensor alone is too large for this budget";
    if (meth->work_bytes && meth == ql_method_by_name(e->method)) {
        const ql_method_opts mo = {.values = &c->values[method_index(meth)], .n_threads = c->o->n_threads};
        need += meth->work_bytes(nrows, ncols, e->format, &mo, what, sizeof what, how, sizeof how);
    }
    char label[sizeof what + 256];
    snprintf(label, sizeof label, "tensor '%s' (%lld x %lld): %s to %s (%s)", t->name, (long long)nrows,
             (long long)ncols, meth->name, e->format->name, what);
    return ql_mem_check(need, label, how);
}

static ql_status never_produced(void *user, int64_t tag, void *dst, uint64_t nbytes) {
    (void)user, (void)tag, (void)dst, (void)nbytes;
    return ql_fail(QL_ERR_ARG, "a dry run writes nothing");
}

int ql_quantize_describe(const ql_model *m, const ql_plan *plan, const ql_exporter_info *info, const char *out_path,
                         void (*line)(void *user, const char *tensor, const char *format, bool refused, const char *what),
                         void *user) {
    const ql_gguf *in = m->gguf;
    ql_exporter *x = NULL;
    if (ql_export_begin(info, out_path, in, &x)) return -1;
    ql_gguf *keys = ql_gguf_new();
    ql_status s = plan_act_keys(m, plan, NULL, NULL, keys, true);
    for (int64_t i = 0; i < keys->n_kv && !s; i++) s = ql_export_add_metadata(x, keys->kv[i].key, &keys->kv[i].val);
    ql_gguf_free(keys);
    if (s) {
        ql_export_abort(x);
        return -1;
    }
    int refused = 0;
    for (int64_t i = 0; i < in->n_tensors; i++) {
        const ql_gguf_tensor *t = &in->tensors[i];
        const ql_plan_entry *e = ql_plan_find(plan, t->name);
        const uint32_t type = e ? e->format->type : t->type;
        const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        const ql_format *f = ql_format_by_type(type);
        const ql_type_info *ti = ql_type_get(type);
        const int64_t nbytes = e ? ql_format_tensor_bytes(e->format, t->ne[0], rows) : (int64_t)t->nbytes;
        char what[1024];
        if (nbytes < 0) {
            snprintf(what, sizeof what, "%s cannot store its %lld x %lld shape", e->format->name, (long long)rows, (long long)t->ne[0]);
            line(user, t->name, e->format->name, true, what);
            refused++;
            continue;
        }
        ql_export_tensor et = {.name = t->name, .type = type, .n_dims = t->n_dims, .ne = t->ne, .nbytes = (uint64_t)nbytes,
                               .produce = never_produced, .produce_tag = i};
        const bool no = ql_export_add_tensor(x, &et) != QL_OK;
        if (no) snprintf(what, sizeof what, "%s", ql_last_error());
        else ql_export_describe(x, type, what, sizeof what);
        refused += no;
        line(user, t->name, f ? f->name : ti ? ti->name : "?", no, what);
    }
    ql_export_abort(x);
    return refused;
}

ql_status ql_quantize_model(const ql_model *m, const ql_quant_opts *o, const char *out_path, const ql_progress *progress,
                            ql_quant_stats *st) {
    memset(st, 0, sizeof *st);
    const ql_gguf *in = m->gguf;
    quant_ctx c = {.m = m, .o = o, .progress = progress, .t0 = ql_time_s()};
    c.out = ql_gguf_new();
    ql_gguf_copy_kv(c.out, in);
    st->llama_cpp_compatible = true;
    ql_status s = QL_OK;
    /* a folder target that would be refused at the end is refused before any work */
    if (o->exporter && o->exporter->folder && (s = ql_atomic_dir_check(out_path, o->replace))) goto out;
    /* check every plan entry names a tensor of this model */
    for (int i = 0; i < o->plan->n; i++)
        if (ql_gguf_find_tensor(in, o->plan->e[i].tensor) < 0) {
            s = ql_fail(QL_ERR_ARG, "plan names tensor '%s', which %s does not have", o->plan->e[i].tensor, m->path);
            goto out;
        }
    /* every planned method exists and can write its format; the options are parsed once, per method */
    const int nm = ql_method_count();
    const ql_method *used[32];
    int n_used = 0;
    c.values = ql_calloc((size_t)nm, sizeof *c.values);
    for (int i = 0; i < o->plan->n; i++) {
        const ql_plan_entry *e = &o->plan->e[i];
        const ql_method *meth = ql_method_by_name(e->method);
        char why[256];
        if (!meth) {
            s = ql_fail(QL_ERR_ARG, "tensor '%s': unknown method '%s'", e->tensor, e->method);
            goto out;
        }
        if (!ql_method_serves(meth, e->format, why, sizeof why)) {
            s = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': %s cannot write %s: %s", e->tensor, meth->name,
                        e->format->name, why);
            goto out;
        }
        /* refused before anything is written: these quantizers cannot run without weights */
        if (e->format->requires_importance && !(o->imatrix && ql_imatrix_find(o->imatrix, e->tensor))) {
            s = ql_fail(QL_ERR_ARG, "tensor '%s': %s needs an importance matrix (--imatrix)%s", e->tensor,
                        e->format->name, o->imatrix ? " and the one given has no data for it" : "");
            goto out;
        }
        bool seen = false;
        for (int k = 0; k < n_used; k++) seen |= used[k] == meth;
        if (!seen && n_used < 32) used[n_used++] = meth;
    }
    /* options given to the run win over the ones the plan stores */
    const char *method_opts = o->method_opts ? o->method_opts : o->plan->method_opts;
    if ((s = ql_method_check_opts(used, n_used, method_opts))) goto out;
    for (int k = 0; k < n_used; k++)
        if ((s = ql_method_parse_shared_opts(used[k], method_opts, &c.values[method_index(used[k])]))) goto out;
    for (int k = 0; k < nm; k++) /* methods not in the plan: defaults (never read) */
        if (!c.values[k].method) ql_method_parse_opts(ql_method_at(k), NULL, &c.values[k]);
    bool transforms = false;
    for (int i = 0; i < o->plan->n; i++) transforms |= ql_method_by_name(o->plan->e[i].method)->transform_layer != NULL;
    if (transforms) {
        if (o->sequential) {
            s = ql_fail(QL_ERR_UNSUPPORTED, "--sequential cannot be combined with scale-migrating methods (awq, smoothquant)");
            goto out;
        }
        if ((s = run_transforms(&c))) goto out;
    }
    int64_t counts[QL_TYPE_GGML_COUNT] = {0};
    for (int64_t i = 0; i < in->n_tensors; i++) {
        const ql_gguf_tensor *t = &in->tensors[i];
        const ql_plan_entry *e = ql_plan_find(o->plan, t->name);
        bool requant = e && (e->format->type != t->type || (c.ov && c.ov[i].w));
        if (e && requant) { /* a tensor already in its planned format is copied: its method does not run */
            const ql_method *meth = ql_method_by_name(e->method);
            if (meth->needs && !o->stats && !o->sequential) {
                s = ql_fail(QL_ERR_ARG, "tensor '%s': method '%s' needs calibration statistics (--stats FILE or --text FILE)",
                            t->name, e->method);
                goto out;
            }
            if ((meth->needs & QL_NEEDS_HESSIAN) && !o->sequential && !o->stats->has_hessian) {
                s = ql_fail(QL_ERR_ARG, "method '%s' needs Hessians; the statistics were collected with --no-hessian", e->method);
                goto out;
            }
        }
        if (requant && (s = check_work_memory(&c, t, e))) goto out;
        if (requant && !ql_format_fits(e->format, t->ne[0])) {
            s = ql_fail(QL_ERR_ARG, "tensor '%s': rows of %lld do not fit %s", t->name, (long long)t->ne[0], e->format->name);
            goto out;
        }
        char why[256];
        if (requant && e->format->shape_ok && !e->format->shape_ok(t->ne[0], (t->ne[1] * t->ne[2] * t->ne[3]), why, sizeof why)) {
            s = ql_fail(QL_ERR_ARG, "tensor '%s' (%lld x %lld): %s refuses it: %s", t->name, (long long)(t->ne[1] * t->ne[2] * t->ne[3]),
                        (long long)t->ne[0], e->format->name, why);
            goto out;
        }
        uint32_t type = requant ? e->format->type : t->type;
        int64_t idx = ql_gguf_add_tensor(c.out, t->name, type, t->n_dims, t->ne, requant ? NULL : t->data);
        if (idx < 0) {
            s = QL_ERR_ARG;
            goto out;
        }
        if (requant) {
            c.out->tensors[idx].produce = produce;
            c.out->tensors[idx].produce_user = &c;
            c.total += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
            st->tensors_quantized++;
            st->weights_quantized += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        } else
            st->tensors_copied++;
        if (e && e->note) st->tensors_fallback++;
        if (!ql_type_is_ggml(type)) st->llama_cpp_compatible = false;
        else if (t->n_dims >= 2) counts[type] += t->ne[0] * t->ne[1];
        st->bytes_in += (int64_t)t->nbytes;
        st->bytes_out += (int64_t)c.out->tensors[idx].nbytes;
    }
    if (c.ov) {
        /* tensors copied unchanged but edited by a transform (norms, v bias) are written as F32 from the override */
        for (int64_t i = 0; i < c.out->n_tensors; i++) {
            ql_gguf_tensor *ot = &c.out->tensors[i];
            int64_t si = ql_gguf_find_tensor(in, ot->name);
            if (!ot->data || !c.ov[si].w) continue;
            ot->data = c.ov[si].w;
            ot->type = QL_TYPE_F32;
            ot->nbytes = (uint64_t)(ot->ne[0] * ot->ne[1] * ot->ne[2] * ot->ne[3]) * sizeof(float);
        }
    }
    int64_t ft = o->plan->file_type;
    if (ft < 0) {
        /* the ggml type holding most weights names the file, as llama.cpp's single-type ftypes do */
        uint32_t best = QL_TYPE_F32;
        for (uint32_t t = 0; t < QL_TYPE_GGML_COUNT; t++)
            if (counts[t] > counts[best]) best = t;
        const ql_type_info *ti = ql_type_get(best);
        ft = st->llama_cpp_compatible ? ql_file_type_for_format(ti->name) : -1;
        if (ft < 0) ft = st->llama_cpp_compatible ? 0 : 1024; /* 1024: qlab extension mix, see docs/formats.md */
    }
    if ((s = plan_activations(&c))) goto out;
    /* folder exporters describe in their own config how the codes were chosen (gptq's desc_act): each
     * planned method's option spec. GGUF output, whose size ql_quantize_file_bytes predicts, carries none. */
    if (o->exporter && o->exporter->folder && method_opts && *method_opts)
        for (int k = 0; k < n_used; k++) {
            char key[96];
            snprintf(key, sizeof key, "qlab.quant.opts.%s", used[k]->name);
            ql_gguf_set_str(c.out, key, method_opts);
        }
    ql_gguf_set_u32(c.out, ADDED_KEYS[0], (uint32_t)ft);
    ql_gguf_set_u32(c.out, ADDED_KEYS[1], 2);
    if (o->sequential) {
        if (!o->calib_tokens) {
            s = ql_fail(QL_ERR_ARG, "sequential quantization needs calibration tokens (--text or --calib)");
            goto out;
        }
        if ((s = quantize_sequential(&c))) goto out;
    }
    /* the bar counts weights quantized (in produce); the writer only needs the cancel flag */
    ql_progress cancel_only = {.cancel = progress ? progress->cancel : NULL};
    s = ql_export_image_replace(o->exporter ? o->exporter : ql_exporter_default(), out_path, in, c.out, o->replace,
                                &cancel_only);
    st->seconds = ql_time_s() - c.t0;
    st->tensors_rounded = c.rounded;
out:
    free(c.values);
    free(c.ov);
    free(c.wbuf);
    ql_gguf_free(c.out);
    return s;
}
