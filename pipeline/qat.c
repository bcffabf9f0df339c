/* qat.c — the training loop of qat.h: fake quantization through each planned format's own round trip
 * (ql_format_roundtrip), straight-through gradients, tuning with fixed codes (a format's continuous parameters
 * through its registry entry's `tunable` hook, never its name), teacher logits from
 * core/infer.c's forward of the float model, held-out KLD, atomic checkpoints and resume. Which training
 * sequence a micro-batch sees is a pure function of (seed, step, micro-batch), and every piece of state a
 * step reads is in the checkpoint, so a resumed run repeats an uninterrupted one exactly. */
#include "pipeline/qat.h"
#include "base/atomic_file.h"
#include "base/parallel.h"
#include "core/infer.h"
#include "core/tokenizer.h"
#include "formats/format.h"
#include "formats/fmt_ext.h"
#include "kernels/ggml_types.h"

#include <float.h>
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ql_qat_no_ste(const ql_format *f) {
    if (!f->quantize_rows) return "is decode-only (no quantizer to run in the forward pass)";
    if (f->requires_importance) return "cannot quantize without importance data (no fixed round trip to train through)";
    return NULL;
}

ql_status ql_qat_check_plan(const ql_model *m, const ql_plan *plan) {
    for (int i = 0; i < plan->n; i++) {
        const ql_plan_entry *e = &plan->e[i];
        const char *why = ql_qat_no_ste(e->format);
        if (why)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: format %s has no straight-through path: it %s", e->tensor,
                           e->format->name, why);
        int64_t t = ql_gguf_find_tensor(m->gguf, e->tensor);
        if (t >= 0 && !ql_format_fits(e->format, m->gguf->tensors[t].ne[0]))
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: format %s cannot store rows of %lld", e->tensor, e->format->name,
                           (long long)m->gguf->tensors[t].ne[0]);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- LSQ */

int64_t ql_lsq_groups(int64_t rows, int64_t cols, int group) {
    return rows * (group > 0 ? (cols + group - 1) / group : 1);
}

#define LSQ_LOOP(...)                                                                              \
    do {                                                                                           \
        const int64_t gl = group > 0 ? group : cols, gpr = (cols + gl - 1) / gl;                   \
        const double qmax = (double)((1 << bits) - 1);                                             \
        for (int64_t r = 0; r < rows; r++)                                                         \
            for (int64_t gi = 0; gi < gpr; gi++) {                                                 \
                const int64_t gix = r * gpr + gi, j0 = r * cols + gi * gl;                         \
                const int64_t j1 = r * cols + (gi * gl + gl < cols ? gi * gl + gl : cols);         \
                (void)qmax;                                                                        \
                __VA_ARGS__                                                                        \
            }                                                                                      \
    } while (0)

void ql_lsq_init(double *s, double *z, const double *w, int64_t rows, int64_t cols, int group, int bits, bool sym) {
    LSQ_LOOP({
        double st, zz;
        if (sym) {
            /* the weight of largest magnitude, sign kept, lands on code 0 (value -2^(bits-1) · s) */
            double m = 0;
            for (int64_t j = j0; j < j1; j++)
                if (fabs(w[j]) > fabs(m)) m = w[j];
            zz = (double)(1 << (bits - 1));
            st = m / -zz;
        } else {
            double mn = 0, mx = 0;
            for (int64_t j = j0; j < j1; j++) mn = fmin(mn, w[j]), mx = fmax(mx, w[j]);
            st = (mx - mn) / qmax;
            zz = st != 0 ? nearbyint(-mn / st) : 0;
        }
        /* an all-zero group: any step reproduces it; keep one that divides */
        s[gix] = st != 0 ? st : 1e-8;
        z[gix] = zz;
    });
}

void ql_lsq_forward(double *v, const double *w, const double *s, const double *z, int64_t rows, int64_t cols,
                    int group, int bits) {
    LSQ_LOOP({
        const double st = s[gix], zz = z[gix];
        for (int64_t j = j0; j < j1; j++) {
            const double k = fmin(fmax(nearbyint(w[j] / st) + zz, 0.0), qmax);
            v[j] = st * (k - zz);
        }
    });
}

void ql_lsq_backward(double *dw, double *ds, const double *dv, const double *w, const double *s, const double *z,
                     int64_t rows, int64_t cols, int group, int bits) {
    LSQ_LOOP({
        const double st = s[gix], zz = z[gix];
        double acc = 0;
        for (int64_t j = j0; j < j1; j++) {
            const double x = w[j] / st, kr = nearbyint(x) + zz, k = fmin(fmax(kr, 0.0), qmax);
            const bool inside = kr >= 0 && kr <= qmax;
            acc += dv[j] * (inside ? k - zz - x : k - zz);
            dw[j] = inside ? dv[j] : 0.0;
        }
        ds[gix] += acc;
    });
}

/* One planned weight: its format, the values the forward uses, and (tuning scales) one multiplier per block. */
typedef struct {
    int param;
    const ql_format *f;
    float *buf;    /* [n] round-trip scratch */
    double *q;     /* [n] the quantized weights: recomputed each step (QAT) or fixed (tuning) */
    double *eff;   /* [n] tuning scales: s_block · q */
    int64_t n, n_blocks;
    int block;
    double *s, *sg, *sm, *sv; /* [n_blocks] */
    /* LSQ: the steps are s0 · s (s the trained multiplier, neutral 1: Adam then moves every group's step by the
     * same relative amount whatever its size), zeros fixed; n_blocks = groups */
    bool lsq;
    int lsq_bits, lsq_group;
    double *s0, *z, *st, *dst; /* [n_blocks]: initial steps, zeros, current steps, d loss / d step */
    /* tuning codebooks: the tensor's bytes (codes fixed) and the entry's continuous parameters theta, kept in
     * s (n_blocks = their number; Adam moves them in absolute units, as the AQLM paper's fine-tuning does) */
    uint8_t *bytes;
    int64_t n_bytes;
    double *dtheta; /* [n_blocks] */
} qparam;

typedef struct {
    const ql_qat_opts *o;
    ql_train_model *tm;
    ql_adamw *opt;
    qparam *qp;
    int n_qp;
    int64_t n_scales;
} qat_state;

/* w (double) → float → the format's quantize-then-dequantize → q (double) */
static ql_status fake_quant(const ql_train_model *tm, qparam *qp, const double *w, int n_threads) {
    const ql_train_param *p = &tm->p[qp->param];
    for (int64_t j = 0; j < qp->n; j++) qp->buf[j] = (float)w[j];
    ql_status s = ql_format_roundtrip(qp->f, qp->buf, qp->buf, p->rows, p->cols, NULL, n_threads);
    if (s) return s;
    for (int64_t j = 0; j < qp->n; j++) qp->q[j] = qp->buf[j];
    return QL_OK;
}

static void free_state(qat_state *st) {
    for (int i = 0; i < st->n_qp; i++) {
        qparam *q = &st->qp[i];
        free(q->buf), free(q->q), free(q->eff), free(q->s), free(q->sg), free(q->sm), free(q->sv);
        free(q->s0), free(q->z), free(q->st), free(q->dst);
        free(q->bytes), free(q->dtheta);
    }
    free(st->qp);
    ql_adamw_free(st->opt);
}

/* The weights each planned tensor is multiplied with in this step's forward pass. */
static ql_status prepare_forward(qat_state *st) {
    for (int i = 0; i < st->n_qp; i++) {
        qparam *qp = &st->qp[i];
        ql_train_param *p = &st->tm->p[qp->param];
        if (qp->lsq) {
            for (int64_t b = 0; b < qp->n_blocks; b++) qp->st[b] = qp->s0[b] * qp->s[b];
            ql_lsq_forward(qp->q, p->w, qp->st, qp->z, p->rows, p->cols, qp->lsq_group, qp->lsq_bits);
            p->eff = qp->q;
        } else if (st->o->mode == QL_QAT_FULL) {
            ql_status s = fake_quant(st->tm, qp, p->w, st->o->n_threads);
            if (s) return s;
            p->eff = qp->q;
        } else if (st->o->mode == QL_TUNE_SCALES) {
            for (int64_t j = 0; j < qp->n; j++) qp->eff[j] = qp->s[j / qp->block] * qp->q[j];
            p->eff = qp->eff;
        } else if (qp->bytes) { /* what the bytes with these parameters decode to */
            qp->f->tunable->decode(qp->bytes, qp->s, p->rows, p->cols, true, qp->eff);
            p->eff = qp->eff;
        } else
            p->eff = qp->q;
    }
    return QL_OK;
}

/* After the backward: the clipped straight-through estimator drops the gradient of master weights outside
 * their row's quantized range (the quantizer saturates there); tuning scales collect d/ds = Σ g·q per block. */
static void after_backward(qat_state *st) {
    for (int i = 0; i < st->n_qp; i++) {
        qparam *qp = &st->qp[i];
        ql_train_param *p = &st->tm->p[qp->param];
        if (qp->lsq) {
            /* LSQ's own straight-through backward: clipped for w, the step's gradient into sg (per multiplier) */
            memset(qp->dst, 0, (size_t)qp->n_blocks * sizeof(double));
            ql_lsq_backward(p->g, qp->dst, p->g, p->w, qp->st, qp->z, p->rows, p->cols, qp->lsq_group, qp->lsq_bits);
            for (int64_t b = 0; b < qp->n_blocks; b++) qp->sg[b] = qp->dst[b] * qp->s0[b];
            continue;
        }
        if (st->o->mode == QL_QAT_FULL && st->o->ste == QL_STE_CLIPPED)
            for (int r = 0; r < p->rows; r++) {
                const double *q = qp->q + (size_t)r * p->cols, *w = p->w + (size_t)r * p->cols;
                double *g = p->g + (size_t)r * p->cols, amax = 0;
                for (int j = 0; j < p->cols; j++) amax = fmax(amax, fabs(q[j]));
                for (int j = 0; j < p->cols; j++)
                    if (fabs(w[j]) > amax) g[j] = 0;
            }
        if (st->o->mode == QL_TUNE_SCALES) {
            memset(qp->sg, 0, (size_t)qp->n_blocks * sizeof(double));
            for (int64_t j = 0; j < qp->n; j++) qp->sg[j / qp->block] += p->g[j] * qp->q[j];
        }
        if (qp->bytes) {
            memset(qp->sg, 0, (size_t)qp->n_blocks * sizeof(double));
            qp->f->tunable->backward(qp->bytes, qp->s, p->rows, p->cols, p->g, qp->sg);
        }
    }
}

/* Adam on the block scales, with the weights' learning rate and no decay (a scale's neutral value is 1). */
static void scales_step(qat_state *st, double grad_scale) {
    const ql_adamw_opts *o = &st->opt->o;
    double lr = ql_adamw_lr(o, st->opt->step - 1);
    const double t = (double)st->opt->step;
    if (st->o->lsq) lr *= (st->o->lsq_lr > 0 ? st->o->lsq_lr : 1e-3) / o->lr; /* the weights' schedule, its own peak */
    const double c1 = 1.0 - pow(o->beta1, t), c2 = 1.0 - pow(o->beta2, t);
    for (int i = 0; i < st->n_qp; i++) {
        qparam *qp = &st->qp[i];
        for (int64_t b = 0; b < qp->n_blocks; b++) {
            const double g = qp->sg[b] * grad_scale;
            qp->sm[b] = o->beta1 * qp->sm[b] + (1 - o->beta1) * g;
            qp->sv[b] = o->beta2 * qp->sv[b] + (1 - o->beta2) * g * g;
            qp->s[b] -= lr * (qp->sm[b] / c1) / (sqrt(qp->sv[b] / c2) + o->eps);
        }
    }
}

/* ---------------------------------------------------------------- checkpoints */

#define CKPT_MAGIC "QLQATCK1"
typedef struct {
    char magic[8];
    uint32_t mode, reserved;
    uint64_t seed;
    int64_t n_weights, n_scales, step;
} ckpt_header;

static ql_status ckpt_save(const qat_state *st, const char *path) {
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) return s;
    ckpt_header h = {.mode = (uint32_t)st->o->mode | (st->o->lsq ? 0x100u : 0u), .seed = st->o->seed, .n_weights = st->tm->n_weights,
                     .n_scales = st->n_scales, .step = st->opt->step};
    memcpy(h.magic, CKPT_MAGIC, 8);
    const size_t n = (size_t)st->tm->n_weights * sizeof(double);
    if ((s = ql_atomic_write(af, &h, sizeof h)) || (s = ql_atomic_write(af, st->tm->w_all, n)) ||
        (s = ql_atomic_write(af, st->opt->m, n)) || (s = ql_atomic_write(af, st->opt->v, n))) {
        ql_atomic_abort(af);
        return s;
    }
    for (int i = 0; i < st->n_qp && !s; i++) {
        const qparam *qp = &st->qp[i];
        const size_t b = (size_t)qp->n_blocks * sizeof(double);
        if (b && ((s = ql_atomic_write(af, qp->s, b)) || (s = ql_atomic_write(af, qp->sm, b)) ||
                  (s = ql_atomic_write(af, qp->sv, b))))
            break;
    }
    if (s) {
        ql_atomic_abort(af);
        return s;
    }
    return ql_atomic_commit(af);
}

/* Every size in the file is checked against this run's before anything is copied. */
static ql_status ckpt_load(qat_state *st, const char *path, bool *found) {
    *found = false;
    FILE *f = fopen(path, "rb");
    if (!f) return QL_OK; /* nothing to resume: a fresh run */
    ckpt_header h;
    ql_status s = QL_OK;
    const int64_t n = st->tm->n_weights;
    if (fread(&h, sizeof h, 1, f) != 1 || memcmp(h.magic, CKPT_MAGIC, 8) != 0)
        s = ql_fail(QL_ERR_FORMAT, "%s: not a qlab QAT checkpoint", path);
    else if (h.n_weights != n || h.n_scales != st->n_scales || h.mode != ((uint32_t)st->o->mode | (st->o->lsq ? 0x100u : 0u)))
        s = ql_fail(QL_ERR_FORMAT, "%s: checkpoint of another run (%lld weights, %lld scales, mode %u; this run: %lld, "
                                   "%lld, %u)", path, (long long)h.n_weights, (long long)h.n_scales, h.mode,
                    (long long)n, (long long)st->n_scales, (unsigned)st->o->mode);
    else if (h.seed != st->o->seed)
        s = ql_fail(QL_ERR_FORMAT, "%s: checkpoint made with seed %llu, this run has %llu", path,
                    (unsigned long long)h.seed, (unsigned long long)st->o->seed);
    else if (h.step < 0 || h.step > st->o->steps)
        s = ql_fail(QL_ERR_FORMAT, "%s: checkpoint at step %lld, outside this run's %d steps", path, (long long)h.step,
                    st->o->steps);
    else if (fread(st->tm->w_all, sizeof(double), (size_t)n, f) != (size_t)n ||
             fread(st->opt->m, sizeof(double), (size_t)n, f) != (size_t)n ||
             fread(st->opt->v, sizeof(double), (size_t)n, f) != (size_t)n)
        s = ql_fail(QL_ERR_FORMAT, "%s: truncated checkpoint", path);
    for (int i = 0; i < st->n_qp && !s; i++) {
        qparam *qp = &st->qp[i];
        const size_t b = (size_t)qp->n_blocks;
        if (b && (fread(qp->s, sizeof(double), b, f) != b || fread(qp->sm, sizeof(double), b, f) != b ||
                  fread(qp->sv, sizeof(double), b, f) != b))
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated checkpoint", path);
    }
    if (!s && fgetc(f) != EOF) s = ql_fail(QL_ERR_FORMAT, "%s: trailing bytes after the checkpoint", path);
    fclose(f);
    if (!s) {
        st->opt->step = h.step;
        *found = true;
    }
    return s;
}

/* ---------------------------------------------------------------- the loop */

static uint64_t mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The training sequence of micro-batch k of step `step`: a function of the seed and the position only. */
static int64_t pick_sequence(uint64_t seed, int64_t step, int k, int accum, int64_t n) {
    return (int64_t)(mix(seed ^ mix((uint64_t)(step * accum + k))) % (uint64_t)n);
}

/* Mean KL(teacher ‖ student) over the held-out sequences (teacher logits cached). */
static ql_status evaluate(qat_state *st, ql_train_acts *a, const float *teacher_eval, double *kld) {
    const ql_qat_opts *o = st->o;
    const int T = o->seq_len, V = st->tm->cfg.n_vocab;
    double sum = 0;
    ql_status s = prepare_forward(st);
    for (int64_t i = 0; i < o->n_eval && !s; i++) {
        const int32_t *tok = o->eval + i * T;
        if ((s = ql_train_forward(st->tm, a, tok, T, NULL))) break;
        double kl;
        ql_train_loss(st->tm, a, tok, T, 0, teacher_eval + (size_t)i * T * V, 0.0, 1.0, NULL, &kl);
        sum += kl;
    }
    *kld = o->n_eval ? sum / o->n_eval : NAN;
    return s;
}

static void save_best(const qat_state *st, double *w, double *sc) {
    memcpy(w, st->tm->w_all, (size_t)st->tm->n_weights * sizeof(double));
    for (int i = 0, off = 0; i < st->n_qp; off += (int)st->qp[i].n_blocks, i++)
        if (st->qp[i].n_blocks) memcpy(sc + off, st->qp[i].s, (size_t)st->qp[i].n_blocks * sizeof(double));
}

/* Finite as floats: fake quantization and the export see them as F32. */
static bool weights_finite(const ql_train_model *tm) {
    for (int64_t i = 0; i < tm->n_weights; i++)
        if (!(fabs(tm->w_all[i]) <= FLT_MAX)) return false;
    return true;
}

double ql_qat_memory_bytes(const ql_model *m, int T, int64_t n_eval, bool recompute) {
    return ql_train_acts_bytes_opt(&m->cfg, T, recompute) + 5.0 * 8 * (double)ql_model_n_params(m) +
           ql_scratch_bytes(&m->cfg, T) + 4.0 * T * m->cfg.n_vocab * (double)(1 + n_eval);
}

/* The next parameter after `after` that plan entry `tensor` covers: the tensor itself, or a row view of it when it
 * is fused (Phi-3's attn_qkv, ffn_up train as their views), each planned like the whole; -1 when none. */
static int planned_param(const ql_model *m, const ql_train_model *tm, const char *tensor, int after) {
    for (int pi = after + 1; pi < tm->n_params; pi++) {
        const char *n = tm->p[pi].name;
        const ql_gguf_tensor *parent = ql_model_view_parent_by_name(m, n, NULL);
        if (n && !strcmp(parent ? parent->name : n, tensor)) return pi;
    }
    return -1;
}

ql_status ql_qat_run(const ql_model *m, const ql_qat_opts *o, ql_train_model **out, ql_qat_result *res) {
    *out = NULL;
    memset(res, 0, sizeof *res);
    res->eval_kld_start = res->eval_kld_end = NAN;
    res->resumed_from = -1;
    const int T = o->seq_len;
    if (!(o->adam.lr > 0) || !isfinite(o->adam.lr))
        return ql_fail(QL_ERR_ARG, "learning rate %g: it must be a positive number", o->adam.lr);
    if (o->steps <= 0 || o->accum <= 0 || T < 2) return ql_fail(QL_ERR_ARG, "qat: steps, accumulation and length must be positive");
    if (o->n_train <= 0) return ql_fail(QL_ERR_ARG, "qat: no training sequence of %d tokens", T);
    if (!(o->kl_weight > 0) && !(o->ce_weight > 0)) return ql_fail(QL_ERR_ARG, "qat: neither KL nor CE weight is positive");
    ql_status s = ql_qat_check_plan(m, o->plan);
    if (s) return s;
    /* refused before allocating: double master weights, gradients, two Adam moments and the fake-quantized
     * copy, the kept activations, the teacher's scratch and its logits */
    const double other = ql_qat_memory_bytes(m, T, o->n_eval, false) - ql_train_acts_bytes_opt(&m->cfg, T, false);
    const char *limit_what = NULL;
    const double limit = ql_mem_limit_bytes(&limit_what);
    const bool recompute = o->recompute > 0 || (o->recompute < 0 && ql_train_choose_recompute(&m->cfg, T, other, limit));
    res->recomputed = recompute;
    const double need = ql_train_acts_bytes_opt(&m->cfg, T, recompute) + other;
    if (need > limit)
        return ql_fail(QL_ERR_NOMEM, "training at --len %d needs %.2f GiB, more than %s allows (%.2f GiB)", T,
                       need / 1073741824.0, limit_what ? limit_what : "memory", limit / 1073741824.0);
    const double t0 = ql_time_s();
    qat_state st = {.o = o};
    if ((s = ql_train_model_from(m, &st.tm))) return s;
    ql_train_model *tm = st.tm;
    const int V = tm->cfg.n_vocab;
    /* activations and KV: rounded in the training forward as at run time (straight-through backward) */
    ql_act_quant *acts_q = ql_calloc((size_t)tm->n_params, sizeof *acts_q);
    const ql_act_quant **act_in = ql_calloc((size_t)tm->n_params, sizeof *act_in);
    int n_act = 0;
    for (int i = 0; i < tm->n_params && !s; i++) {
        const ql_train_param *p = &tm->p[i];
        if (!p->is_matrix || i == tm->tok_embd) continue;
        const ql_plan_act *pa = ql_plan_find_act(o->plan, p->name, strncmp(p->name, "blk.", 4) == 0);
        if (!pa || pa->mode == QL_ACT_NONE) continue;
        if (ql_act_mode_is_static(pa->mode))
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: activation scheme %s needs calibrated scales; training fake-quantizes "
                                            "the per-token schemes (int8_token, fp8_token, llm_int8)", p->name,
                        ql_act_mode_name(pa->mode));
        else if (!(s = ql_act_quant_init(&acts_q[i], pa->mode, NULL, 0, pa->threshold)))
            act_in[i] = &acts_q[i], n_act++;
    }
    tm->act_in = n_act ? act_in : NULL;
    tm->kv = o->kv && !ql_kv_scheme_is_f32(o->kv) ? o->kv : NULL;
    if (!s) s = ql_train_check_fake_quant(tm);
    /* planned weights */
    st.qp = ql_calloc((size_t)tm->n_params + 1, sizeof *st.qp);
    int n_lsq = 0, n_tunable = 0;
    /* one (entry, parameter) pair per iteration: i moves on once its parameters are exhausted (pi back to -1) */
    for (int i = 0, pi = -1; i < o->plan->n && !s; pi < 0 ? i++ : 0) {
        const ql_plan_entry *e = &o->plan->e[i];
        if ((pi = planned_param(m, tm, e->tensor, pi)) < 0) continue;
        if (!tm->p[pi].is_matrix || e->format->type == QL_TYPE_F32) continue;
        qparam *qp = &st.qp[st.n_qp++];
        const ql_train_param *p = &tm->p[pi];
        qp->param = pi;
        qp->f = e->format;
        qp->n = (int64_t)p->rows * p->cols;
        qp->buf = ql_malloc((size_t)qp->n * sizeof(float));
        qp->q = ql_malloc((size_t)qp->n * sizeof(double));
        if (o->mode == QL_TUNE_CODEBOOKS && e->format->tunable) {
            /* the codes once; then only theta moves. A tensor MODEL already stores in the planned format keeps its
             * bytes (codes chosen by a method with calibration statistics, e.g. `quant --method aqlm`, which the
             * format's own quantizer cannot redo): the AQLM paper fine-tunes exactly that PTQ result. */
            const ql_format_tunable *tu = e->format->tunable;
            qp->n_bytes = ql_format_tensor_bytes(e->format, p->cols, p->rows);
            qp->bytes = ql_malloc((size_t)qp->n_bytes);
            const ql_gguf_tensor *src = p->src;
            if (src && src->type == e->format->type && src->data && src->nbytes == (uint64_t)qp->n_bytes) {
                memcpy(qp->bytes, src->data, (size_t)qp->n_bytes);
                res->codes_from_model++;
            } else {
                for (int64_t j = 0; j < qp->n; j++) qp->buf[j] = (float)p->w[j];
                if ((s = ql_format_quantize(e->format, qp->buf, qp->bytes, p->rows, p->cols, NULL, o->n_threads))) break;
            }
            qp->n_blocks = tu->len(p->rows, p->cols);
            qp->s = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            tu->get(qp->bytes, p->rows, p->cols, qp->s);
            qp->sg = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->sm = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->sv = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->eff = ql_malloc((size_t)qp->n * sizeof(double));
            st.n_scales += qp->n_blocks;
            n_tunable++;
            continue;
        }
        if (o->mode != QL_QAT_FULL && (s = fake_quant(tm, qp, p->w, o->n_threads))) break;
        int bits, group;
        bool sym, mse;
        if (o->mode == QL_QAT_FULL && o->lsq && ql_int_format_params(e->format, &bits, &group, &sym, &mse)) {
            qp->lsq = true, qp->lsq_bits = bits, qp->lsq_group = group;
            qp->n_blocks = ql_lsq_groups(p->rows, p->cols, group);
            qp->s = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            for (int64_t b = 0; b < qp->n_blocks; b++) qp->s[b] = 1.0;
            qp->sg = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->sm = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->sv = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->s0 = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            qp->z = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            qp->st = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            qp->dst = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            ql_lsq_init(qp->s0, qp->z, p->w, p->rows, p->cols, group, bits, sym);
            st.n_scales += qp->n_blocks;
            n_lsq++;
        }
        if (o->mode == QL_TUNE_SCALES) {
            /* one multiplier per block of the format along the row (per row when blocks do not tile it) */
            qp->block = e->format->block > 1 && p->cols % e->format->block == 0 ? e->format->block : p->cols;
            qp->n_blocks = qp->n / qp->block;
            qp->s = ql_malloc((size_t)qp->n_blocks * sizeof(double));
            for (int64_t b = 0; b < qp->n_blocks; b++) qp->s[b] = 1.0;
            qp->sg = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->sm = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->sv = ql_calloc((size_t)qp->n_blocks, sizeof(double));
            qp->eff = ql_malloc((size_t)qp->n * sizeof(double));
            st.n_scales += qp->n_blocks;
        }
    }
    if (!s && o->lsq && n_lsq == 0)
        s = ql_fail(QL_ERR_UNSUPPORTED, "--lsq: no planned tensor has an INT grid format (int{n}_g{g}, int{n}_channel) "
                                        "whose step could be learned");
    if (!s && o->mode == QL_TUNE_CODEBOOKS && n_tunable == 0) {
        char have[300] = "";
        for (int i = 0, n = 0; i < ql_format_count(); i++) {
            const ql_format *f = ql_format_at(i);
            if (f->tunable && strlen(have) + strlen(f->name) + 3 < sizeof have)
                snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", n++ ? ", " : "", f->name);
        }
        s = ql_fail(QL_ERR_UNSUPPORTED, "--tune codebooks: no planned tensor's format has continuous parameters to tune "
                                        "with its codes fixed (formats that have: %s)", have);
    }
    /* tuning: every matrix keeps its (quantized) values; the vectors and the scales train */
    if (o->mode != QL_QAT_FULL)
        for (int i = 0; i < tm->n_params; i++) tm->p[i].frozen = tm->p[i].is_matrix;
    ql_adamw_opts ao = o->adam;
    ao.total_steps = o->steps;
    st.opt = ql_adamw_new(tm, &ao);
    ql_infer *teacher = NULL;
    ql_scratch *tsc = NULL;
    ql_train_acts *acts = NULL;
    float *tlog = NULL, *teval = NULL;
    bool resumed = false;
    if (!s && o->resume && o->checkpoint) s = ckpt_load(&st, o->checkpoint, &resumed);
    if (resumed) res->resumed_from = (int)st.opt->step;
    const ql_model *tmodel = o->teacher ? o->teacher : m;
    if (!s && (tmodel->cfg.n_vocab != m->cfg.n_vocab || tmodel->cfg.n_layer != m->cfg.n_layer ||
               tmodel->cfg.n_embd != m->cfg.n_embd))
        s = ql_fail(QL_ERR_ARG, "%s: the teacher's geometry (vocab %d, %d layers of %d) is not %s's (vocab %d, %d layers of %d)",
                    tmodel->path, tmodel->cfg.n_vocab, tmodel->cfg.n_layer, tmodel->cfg.n_embd, m->path, m->cfg.n_vocab,
                    m->cfg.n_layer, m->cfg.n_embd);
    if (!s) s = ql_infer_new(tmodel, o->n_threads, &teacher);
    if (!s) {
        ql_infer_set_op_threads(teacher, o->n_threads);
        tsc = ql_scratch_new(teacher, T);
        acts = ql_train_acts_new_opt(&tm->cfg, T, recompute);
        tlog = ql_malloc((size_t)T * V * sizeof(float));
        res->peak_train_bytes = ql_train_acts_bytes_opt(&tm->cfg, T, recompute) + 5.0 * 8 * tm->n_weights + 48.0 * st.n_scales +
                                ql_scratch_bytes(&tm->cfg, T) + 4.0 * T * V * (1 + o->n_eval);
    }
    if (!s && o->n_eval > 0) {
        teval = ql_malloc((size_t)o->n_eval * T * V * sizeof(float));
        for (int64_t i = 0; i < o->n_eval && !s; i++)
            s = ql_forward(teacher, tsc, o->eval + i * T, T, 0, teval + (size_t)i * T * V);
        if (!s) s = evaluate(&st, acts, teval, &res->eval_kld_start);
    }
    /* keep_best: the weights (and scales) at the best held-out evaluation so far, the start included */
    double *best_w = NULL, *best_s = NULL;
    res->best_kld = res->eval_kld_start;
    if (!s && o->keep_best && o->n_eval > 0) {
        best_w = ql_malloc((size_t)tm->n_weights * sizeof(double));
        best_s = ql_malloc((size_t)(st.n_scales ? st.n_scales : 1) * sizeof(double));
        save_best(&st, best_w, best_s);
        res->best_step = (int)st.opt->step;
    }
    const int64_t first = st.opt->step;
    const double t_loop = ql_time_s();
    ql_qat_report r = {.steps = o->steps};
    while (!s && st.opt->step < o->steps) {
        const int64_t step = st.opt->step;
        if ((s = prepare_forward(&st))) break;
        ql_train_zero_grad(tm);
        double loss = 0, ce = 0, kl = 0;
        for (int k = 0; k < o->accum && !s; k++) {
            const int32_t *tok = o->train + pick_sequence(o->seed, step, k, o->accum, o->n_train) * T;
            if (o->kl_weight > 0 && (s = ql_forward(teacher, tsc, tok, T, 0, tlog))) break;
            if ((s = ql_train_forward(tm, acts, tok, T, NULL))) break;
            double c1, k1;
            loss += ql_train_loss(tm, acts, tok, T, 0, o->kl_weight > 0 ? tlog : NULL, o->ce_weight, o->kl_weight, &c1,
                                  &k1);
            ce += c1, kl += k1;
            s = ql_train_backward(tm, acts, tok, T);
        }
        if (s) break;
        loss /= o->accum, ce /= o->accum, kl /= o->accum;
        if (!isfinite(loss)) {
            s = ql_fail(QL_ERR_ARG, "the loss became %g at step %lld; stopped%s%s", loss, (long long)step + 1,
                        o->checkpoint ? ", the last good checkpoint is " : " (no checkpoint was asked for)",
                        o->checkpoint ? o->checkpoint : "");
            break;
        }
        after_backward(&st);
        r.lr = ql_adamw_lr(&st.opt->o, step);
        r.grad_norm = ql_adamw_step(st.opt, tm, 1.0 / o->accum);
        if (o->mode == QL_TUNE_SCALES || o->mode == QL_TUNE_CODEBOOKS || n_lsq) scales_step(&st, 1.0 / o->accum);
        if (!weights_finite(tm)) {
            s = ql_fail(QL_ERR_ARG, "the weights became too large for float at step %lld (learning rate %g too "
                                        "high?); stopped%s%s", (long long)step + 1, r.lr,
                        o->checkpoint ? ", the last good checkpoint is " : "", o->checkpoint ? o->checkpoint : "");
            break;
        }
        const double el = ql_time_s() - t_loop;
        const int64_t done_here = st.opt->step - first;
        r.step = (int)st.opt->step;
        r.loss = loss, r.ce = ce, r.kl = kl;
        r.tokens_per_s = el > 0 ? (double)done_here * o->accum * T / el : 0;
        r.eta_s = done_here > 0 ? el / done_here * (o->steps - st.opt->step) : 0;
        r.evaluated = false;
        const bool last = st.opt->step == o->steps;
        const bool cancel = o->cancel && *o->cancel;
        if (o->n_eval > 0 && (last || (o->eval_every > 0 && st.opt->step % o->eval_every == 0))) {
            if ((s = evaluate(&st, acts, teval, &r.eval_kld))) break;
            r.evaluated = true;
            res->eval_kld_end = r.eval_kld;
            if (best_w && r.eval_kld < res->best_kld) save_best(&st, best_w, best_s), res->best_kld = r.eval_kld,
                                                      res->best_step = r.step;
        }
        r.checkpointed = false;
        if (o->checkpoint && (last || cancel || (o->checkpoint_every > 0 && st.opt->step % o->checkpoint_every == 0))) {
            if ((s = ckpt_save(&st, o->checkpoint))) break;
            r.checkpointed = true;
        }
        if (o->report) o->report(o->user, &r);
        if (cancel && !last) {
            s = ql_fail(QL_ERR_CANCELLED, "stopped at step %lld of %d%s%s", (long long)st.opt->step, o->steps,
                        o->checkpoint ? "; resume from " : "", o->checkpoint ? o->checkpoint : "");
            break;
        }
    }
    res->steps_done = (int)st.opt->step;
    if (best_w && (!s || s == QL_ERR_CANCELLED)) {
        /* the best evaluation's weights and scales replace the last ones (the Adam state is not needed any more) */
        memcpy(tm->w_all, best_w, (size_t)tm->n_weights * sizeof(double));
        for (int i = 0, off = 0; i < st.n_qp; off += (int)st.qp[i].n_blocks, i++)
            if (st.qp[i].n_blocks) memcpy(st.qp[i].s, best_s + off, (size_t)st.qp[i].n_blocks * sizeof(double));
        res->eval_kld_end = res->best_kld;
    }
    free(best_w);
    free(best_s);
    if (!s && o->n_eval > 0 && isnan(res->eval_kld_end)) res->eval_kld_end = res->eval_kld_start;
    /* the weights to export: tuned scales folded in, fixed codes' tensors as they were */
    if (!s || s == QL_ERR_CANCELLED)
        for (int i = 0; i < st.n_qp; i++) {
            qparam *qp = &st.qp[i];
            ql_train_param *p = &tm->p[qp->param];
            if (o->mode == QL_TUNE_SCALES)
                for (int64_t j = 0; j < qp->n; j++) p->w[j] = qp->s[j / qp->block] * qp->q[j];
            if (qp->bytes) {
                /* the tuned parameters written into the bytes, which the export copies; w is what they decode to */
                qp->f->tunable->set(qp->bytes, qp->s, p->rows, p->cols);
                qp->f->tunable->decode(qp->bytes, qp->s, p->rows, p->cols, true, p->w);
                p->codes = qp->bytes, p->codes_type = qp->f->type, p->codes_bytes = (uint64_t)qp->n_bytes;
                qp->bytes = NULL;
            }
            if (qp->lsq) {
                /* the learned grid's values: the exporter re-chooses the codes (and scales) from them */
                for (int64_t b = 0; b < qp->n_blocks; b++) qp->st[b] = qp->s0[b] * qp->s[b];
                ql_lsq_forward(p->w, p->w, qp->st, qp->z, p->rows, p->cols, qp->lsq_group, qp->lsq_bits);
            }
            p->eff = NULL;
        }
    else
        for (int i = 0; i < st.n_qp; i++) tm->p[st.qp[i].param].eff = NULL;
    res->seconds = ql_time_s() - t0;
    tm->act_in = NULL, tm->kv = NULL; /* the caller's model outlives these */
    free(act_in);
    free(acts_q);
    free(tlog);
    free(teval);
    ql_train_acts_free(acts);
    ql_scratch_free(tsc);
    ql_infer_free(teacher);
    free_state(&st);
    if (s && s != QL_ERR_CANCELLED) {
        ql_train_model_free(tm);
        return s;
    }
    *out = tm;
    return s;
}

/* The stored tensor a trained parameter writes into: itself, or for a row view of a fused tensor its parent and
 * first row; NULL when m has neither. */
static ql_gguf_tensor *qat_target(ql_model *m, const char *name, int64_t *row0) {
    *row0 = 0;
    const ql_gguf_tensor *parent = ql_model_view_parent_by_name(m, name, row0);
    const int64_t ti = ql_gguf_find_tensor(m->gguf, parent ? parent->name : name);
    return ti >= 0 ? &m->gguf->tensors[ti] : NULL;
}

ql_status ql_qat_apply(ql_model *m, const ql_train_model *tm) {
    /* fused tensors whose parts were written already: the parts of one go into one new buffer */
    const ql_gguf_tensor **done = ql_calloc((size_t)tm->n_params + 1, sizeof *done);
    int n_done = 0;
    ql_status st = QL_OK;
    for (int i = 0; i < tm->n_params && !st; i++) {
        const ql_train_param *p = &tm->p[i];
        /* by name: m may be another copy of the model the training read (the workbench keeps its own) */
        int64_t row0;
        ql_gguf_tensor *t = qat_target(m, p->name, &row0);
        if (!t) {
            st = ql_fail(QL_ERR_ARG, "qat: tensor '%s' has no model tensor to write into", p->name ? p->name : "?");
            break;
        }
        const int64_t n = (int64_t)p->rows * p->cols;
        const bool part = row0 > 0 || p->rows < t->ne[1];
        bool started = false;
        for (int k = 0; k < n_done; k++) started |= done[k] == t;
        if (part && !started) done[n_done++] = t;
        if (p->codes) {
            /* tuned bytes in the plan's format: the quantize driver copies a tensor already in it unchanged; the
             * parts of a fused tensor are whole rows, so their bytes line up one after another */
            if (!part) {
                void *copy = ql_malloc((size_t)p->codes_bytes);
                memcpy(copy, p->codes, (size_t)p->codes_bytes);
                ql_gguf_adopt(m->gguf, copy);
                t->type = p->codes_type;
                t->data = copy;
                t->nbytes = (uint64_t)p->codes_bytes;
                continue;
            }
            const ql_format *cf = ql_format_by_type(p->codes_type);
            const int64_t row_bytes = cf ? ql_format_tensor_bytes(cf, p->cols, 1) : -1;
            if (!cf || cf->whole_tensor || row_bytes <= 0 || (uint64_t)(row_bytes * p->rows) != (uint64_t)p->codes_bytes) {
                st = ql_fail(QL_ERR_UNSUPPORTED, "qat: '%s' is part of fused '%s' and its format keeps no per-row bytes",
                             p->name, t->name);
                break;
            }
            if (started && t->type != p->codes_type) {
                st = ql_fail(QL_ERR_ARG, "qat: the parts of fused '%s' were tuned into different formats", t->name);
                break;
            }
            uint8_t *copy = started ? (uint8_t *)t->data : ql_malloc((size_t)(row_bytes * t->ne[1]));
            if (!started) ql_gguf_adopt(m->gguf, copy);
            memcpy(copy + row0 * row_bytes, p->codes, (size_t)p->codes_bytes);
            t->type = p->codes_type;
            t->data = copy;
            t->nbytes = (uint64_t)(row_bytes * t->ne[1]);
            continue;
        }
        if (part && started && t->type != QL_TYPE_F32) {
            st = ql_fail(QL_ERR_ARG, "qat: the parts of fused '%s' were tuned into different formats", t->name);
            break;
        }
        float *buf = started ? (float *)t->data : ql_malloc((size_t)(t->ne[0] * t->ne[1]) * sizeof(float));
        if (!started) {
            /* rows no part covers keep their values */
            if (part && !ql_tensor_to_f32(t, buf, 1)) {
                free(buf);
                st = ql_fail(QL_ERR_UNSUPPORTED, "qat: '%s' cannot be decoded", t->name);
                break;
            }
            ql_gguf_adopt(m->gguf, buf);
        }
        for (int64_t j = 0; j < n; j++) buf[row0 * p->cols + j] = (float)p->w[j];
        t->type = QL_TYPE_F32;
        t->data = buf;
        t->nbytes = (uint64_t)(t->ne[0] * t->ne[1]) * sizeof(float);
    }
    free(done);
    return st;
}

/* ---------------------------------------------------------------- data-free text (LLM-QAT) */

/* Sequences are sampled SAMPLE_BATCH at a time through the KV-cached decoder (core/train_decode.c): batch
 * k holds sequences k·SAMPLE_BATCH.., a split that does not depend on the thread count, and each sequence
 * draws from its own random stream, so the text is the same for any number of threads. */
enum { SAMPLE_BATCH = 16 };

typedef struct {
    const ql_train_model *tm;
    ql_train_decoder **dec;
    int32_t **step_tok;
    int len, V;
    int32_t bos, eos;
    double temp;
    uint64_t seed;
    int32_t *out;
    const ql_progress *progress;
    int64_t n;
    int64_t done; /* sequences finished (progress only; updated under the lock) */
    pthread_mutex_t lock;
    ql_status s;
} sample_ctx;

/* One token from softmax(logits / T) by inverse CDF, in double for a sum independent of the thread count. */
static int sample_token(const double *lg, int V, double temp, uint64_t *rng) {
    double mx = -INFINITY, sum = 0;
    for (int v = 0; v < V; v++) mx = fmax(mx, lg[v] / temp);
    for (int v = 0; v < V; v++) sum += exp(lg[v] / temp - mx);
    *rng = mix(*rng);
    double u = (double)(*rng >> 11) * 0x1.0p-53 * sum, acc = 0;
    for (int v = 0; v < V; v++) {
        acc += exp(lg[v] / temp - mx);
        if (u < acc) return v;
    }
    return V - 1;
}

static void sample_batch(void *ctx_, int worker, int64_t k) {
    sample_ctx *c = ctx_;
    if (c->s || ql_progress_cancelled(c->progress)) return;
    const int64_t first = k * SAMPLE_BATCH;
    const int nb = (int)(c->n - first < SAMPLE_BATCH ? c->n - first : SAMPLE_BATCH);
    int32_t *step = c->step_tok[worker];
    uint64_t rng[SAMPLE_BATCH];
    for (int b = 0; b < nb; b++) {
        rng[b] = mix(c->seed ^ mix((uint64_t)(first + b) + 0x5A17));
        c->out[(first + b) * c->len] = c->bos;
    }
    for (int t = 1; t < c->len; t++) {
        for (int b = 0; b < nb; b++) step[b] = c->out[(first + b) * c->len + t - 1];
        const double *lg;
        ql_status s = ql_train_decode_step(c->dec[worker], step, nb, t - 1, &lg);
        if (s) {
            pthread_mutex_lock(&c->lock);
            if (!c->s) c->s = s;
            pthread_mutex_unlock(&c->lock);
            return;
        }
        for (int b = 0; b < nb; b++) {
            int pick = sample_token(lg + (size_t)b * c->V, c->V, c->temp, &rng[b]);
            /* a finished story: the next one starts as the training text's stories do */
            c->out[(first + b) * c->len + t] = pick == c->eos && c->bos >= 0 ? c->bos : pick;
        }
        if (ql_progress_cancelled(c->progress)) return;
    }
    pthread_mutex_lock(&c->lock);
    c->done += nb;
    ql_progress_report(c->progress, c->done, c->n, "sampling");
    pthread_mutex_unlock(&c->lock);
}

ql_status ql_qat_sample_text(const ql_model *m, int64_t n, int len, double temperature, uint64_t seed, int n_threads,
                             const ql_progress *progress, int32_t *out) {
    if (!m->tok) return ql_model_no_tokenizer(m, "sampling training text needs one");
    const int32_t bos = ql_tokenizer_bos(m->tok);
    if (bos < 0) return ql_fail(QL_ERR_UNSUPPORTED, "%s: the tokenizer has no BOS token to start sampled text from", m->path);
    if (n <= 0 || len < 2) return ql_fail(QL_ERR_ARG, "sampling: need at least one sequence of 2 tokens or more");
    if (!(temperature > 0) || !isfinite(temperature))
        return ql_fail(QL_ERR_ARG, "sampling temperature %g: it must be a positive number", temperature);
    const int64_t n_batches = (n + SAMPLE_BATCH - 1) / SAMPLE_BATCH;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > n_batches) n_threads = (int)n_batches;
    ql_train_model *tm = NULL;
    ql_status s = ql_train_model_from(m, &tm);
    if (s) return s;
    const int old_blas = ql_train_blas_threads(1); /* parallel over batches instead */
    sample_ctx c = {.tm = tm, .len = len, .V = m->cfg.n_vocab, .bos = bos, .eos = ql_tokenizer_eos(m->tok),
                    .temp = temperature, .seed = seed, .out = out, .progress = progress, .n = n};
    pthread_mutex_init(&c.lock, NULL);
    c.dec = ql_calloc((size_t)n_threads, sizeof *c.dec);
    c.step_tok = ql_calloc((size_t)n_threads, sizeof *c.step_tok);
    for (int w = 0; w < n_threads; w++) {
        c.dec[w] = ql_train_decoder_new(tm, SAMPLE_BATCH, len);
        c.step_tok[w] = ql_malloc(SAMPLE_BATCH * sizeof(int32_t));
    }
    ql_parallel_items(n_threads, n_batches, sample_batch, &c);
    s = c.s;
    if (!s && ql_progress_cancelled(progress)) s = ql_fail(QL_ERR_CANCELLED, "sampling cancelled");
    for (int w = 0; w < n_threads; w++) {
        ql_train_decoder_free(c.dec[w]);
        free(c.step_tok[w]);
    }
    free(c.dec);
    free(c.step_tok);
    pthread_mutex_destroy(&c.lock);
    ql_train_blas_threads(old_blas);
    ql_train_model_free(tm);
    return s;
}
