/* sense.c — sensitivity measurement and the .qss file (see sense.h and docs/sensitivity.md).
 * The KLD level keeps, for every calibration sequence, the base log-probabilities [T, V] and the
 * residual stream entering every layer (and leaving the last) [T, D]: memory n_seq*T*(V + (L+1)*D)
 * floats. A probe swaps one tensor's F32 weights for its dequantized candidate and runs the sequences
 * in parallel (one per worker, single-threaded BLAS) from that tensor's layer; per-sequence sums are
 * combined in sequence order, so results do not depend on the thread count. */
#include "sensitivity/sense.h"
#include "base/atomic_file.h"
#include "formats/format.h"
#include "pipeline/imatrix.h"
#include "methods/method.h"
#include "base/parallel.h"
#include "pipeline/plan.h"
#include "core/ppl.h"
#include "core/stats.h"
#include "core/output_error.h"
#include "core/actquant.h"
#include "core/kv_cache.h"
#include "core/backend.h"
#include "kernels/awq_cuda.h"

#include <cblas.h>
#ifdef QL_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SENSE_MAGIC "qlab-sensitivity"
#define MAX_CANDS 4096
#define MAX_TENSORS (1 << 20)
#define MAX_BATCH 64        /* candidates in one batched probe */
#define BATCH_ROWS 8192     /* rows of one batched pass on a device backend (sequences x candidates x positions) */
#define BATCH_LOGITS (1024.0 * 1048576.0) /* bytes of one batched pass's logits */

static const char *g_level_names[] = {"weight", "output", "kld"};

const char *ql_sense_level_name(int level) {
    return level >= 0 && level <= QL_SENSE_KLD ? g_level_names[level] : "none";
}

bool ql_sense_level_parse(const char *s, int *level) {
    for (int i = 0; i <= QL_SENSE_KLD; i++)
        if (s && strcasecmp(s, g_level_names[i]) == 0) {
            *level = i;
            return true;
        }
    return false;
}

/* ---------------- candidates ---------------- */

void ql_sense_free_strings(char **v, int n) {
    if (!v) return;
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void push_unique(char ***v, int *n, int *cap, const char *s) {
    for (int i = 0; i < *n; i++)
        if (strcmp((*v)[i], s) == 0) return;
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        *v = ql_realloc(*v, (size_t)*cap * sizeof **v);
    }
    (*v)[(*n)++] = ql_strdup(s);
}

static void canonical_spec(char *buf, size_t cap, const ql_format *f, const char *method) {
    if (!method || !*method || strcasecmp(method, "rtn") == 0) snprintf(buf, cap, "%s", f->name);
    else snprintf(buf, cap, "%s+%s", f->name, ql_method_by_name(method)->name);
}

ql_status ql_sense_check_candidate(const char *spec, const ql_format *f, const char *method) {
    const ql_method *me = ql_method_find(method);
    char why[256];
    if (!me) return ql_fail(QL_ERR_ARG, "candidate '%s': %s", spec, ql_last_error());
    if (!(me->caps & QL_CAP_PER_TENSOR) || (me->caps & QL_CAP_LAYER_TRANSFORM))
        return ql_fail(QL_ERR_ARG,
                       "candidate '%s': %s transforms whole layers; per-tensor sensitivity cannot measure it", spec,
                       me->name);
    if (!ql_method_serves(me, f, why, sizeof why))
        return ql_fail(QL_ERR_ARG, "candidate '%s': %s cannot write %s: %s", spec, me->name, f->name, why);
    return QL_OK;
}

ql_status ql_sense_parse_candidates(const char *list, char ***out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    if (!list) return ql_fail(QL_ERR_ARG, "no candidates");
    char **v = NULL;
    int n = 0, cap = 0;
    char *copy = ql_strdup(list), *save = NULL;
    ql_status st = QL_OK;
    for (char *item = strtok_r(copy, ",", &save); item && !st; item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item)) item++;
        for (char *e = item + strlen(item); e > item && isspace((unsigned char)e[-1]);) *--e = 0;
        if (!*item) continue;
        char *plus = strchr(item, '+');
        const char *method = "rtn";
        const ql_method *me = ql_method_by_name("rtn");
        if (plus) {
            *plus = 0;
            method = plus + 1;
            if (!(me = ql_method_find(method))) {
                st = ql_fail(QL_ERR_ARG, "candidate '%s+%s': %s", item, method, ql_last_error());
                break;
            }
            if (!(me->caps & QL_CAP_PER_TENSOR) || (me->caps & QL_CAP_LAYER_TRANSFORM)) {
                /* AWQ/SmoothQuant move scales between the tensors of a layer: no per-tensor error to measure */
                st = ql_fail(QL_ERR_ARG, "candidate '%s+%s': %s transforms whole layers; per-tensor sensitivity "
                                         "cannot measure it", item, method, me->name);
                break;
            }
        }
        char spec[160];
        if (strpbrk(item, "*?[")) {
            int matched = 0;
            for (int i = 0; i < ql_format_count(); i++) { /* the formats the method can write */
                const ql_format *f = ql_format_at(i);
                if (!ql_method_serves(me, f, NULL, 0) || fnmatch(item, f->name, FNM_CASEFOLD) != 0) continue;
                /* formats that cannot run without an imatrix come only when named (and --imatrix given) */
                if (f->requires_importance) continue;
                canonical_spec(spec, sizeof spec, f, method);
                push_unique(&v, &n, &cap, spec);
                matched++;
            }
            if (!matched)
                st = ql_fail(QL_ERR_ARG, "candidate pattern '%s' matches no format that %s can write", item, me->name);
            continue;
        }
        const ql_format *f = ql_format_by_name(item);
        char why[256];
        if (!f) st = ql_fail(QL_ERR_ARG, "candidate '%s': unknown format (qlab formats lists them)", item);
        else if (!f->quantize_rows)
            st = ql_fail(QL_ERR_ARG, "candidate '%s': qlab can decode but not encode it", item);
        else if (!ql_method_serves(me, f, why, sizeof why))
            st = ql_fail(QL_ERR_UNSUPPORTED, "candidate '%s+%s': %s cannot write %s: %s", item, method, me->name,
                         f->name, why);
        else {
            canonical_spec(spec, sizeof spec, f, method);
            push_unique(&v, &n, &cap, spec);
        }
    }
    free(copy);
    if (!st && n == 0) st = ql_fail(QL_ERR_ARG, "no candidates in '%s'", list);
    if (!st && n > MAX_CANDS) st = ql_fail(QL_ERR_ARG, "%d candidates (at most %d)", n, MAX_CANDS);
    if (st) {
        ql_sense_free_strings(v, n);
        return st;
    }
    *out = v;
    *n_out = n;
    return QL_OK;
}

/* ---------------- skeleton ---------------- */

static int64_t numel(const ql_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

static void cell_reset(ql_sense_cell *c, int64_t bytes) {
    c->bytes = bytes;
    c->level = -1;
    c->werr = c->oerr = c->kld = c->dppl = NAN;
}

static int64_t cand_bytes(const char *spec, int64_t ncols, int64_t nrows) {
    const ql_format *f;
    char method[64];
    if (ql_parse_format_method(spec, &f, method, sizeof method)) return -1;
    if (!ql_format_fits(f, ncols)) return -1;
    return ql_format_tensor_bytes(f, ncols, nrows);
}

ql_status ql_sense_new(const ql_model *m, char *const *cands, int n_cand, ql_sense **out) {
    *out = NULL;
    if (n_cand <= 0 || n_cand > MAX_CANDS) return ql_fail(QL_ERR_ARG, "need 1..%d candidates", MAX_CANDS);
    for (int c = 0; c < n_cand; c++) {
        const ql_format *f;
        char method[64];
        if (ql_parse_format_method(cands[c], &f, method, sizeof method)) return QL_ERR_ARG;
        if (ql_sense_check_candidate(cands[c], f, method)) return QL_ERR_ARG;
    }
    const ql_gguf *g = m->gguf;
    ql_sense *s = ql_calloc(1, sizeof *s);
    s->model = ql_strdup(m->path ? m->path : "");
    struct stat stt;
    if (m->path && stat(m->path, &stt) == 0 && S_ISREG(stt.st_mode)) s->file_bytes = (int64_t)stt.st_size;
    s->calib = ql_strdup("");
    s->stats = ql_strdup("");
    s->imatrix = ql_strdup("");
    s->level = QL_SENSE_WEIGHT;
    s->n_tensors_file = g->n_tensors;
    s->tensors = ql_calloc((size_t)(g->n_tensors ? g->n_tensors : 1), sizeof *s->tensors);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        if (!ql_tensor_is_quantizable(t->name, (int)t->n_dims, t->ne)) {
            s->other_params += numel(t);
            s->other_bytes += (int64_t)t->nbytes;
            continue;
        }
        ql_sense_tensor *st = &s->tensors[s->n_tensors++];
        st->name = ql_strdup(t->name);
        st->ncols = t->ne[0];
        st->nrows = t->ne[1] * t->ne[2] * t->ne[3];
        st->orig_bytes = (int64_t)t->nbytes;
        st->orig_type = t->type;
    }
    s->n_cand = n_cand;
    s->cand = ql_calloc((size_t)n_cand, sizeof *s->cand);
    for (int c = 0; c < n_cand; c++) s->cand[c] = ql_strdup(cands[c]);
    s->cells = ql_calloc((size_t)s->n_tensors * (size_t)n_cand + 1, sizeof *s->cells);
    for (int t = 0; t < s->n_tensors; t++)
        for (int c = 0; c < n_cand; c++)
            cell_reset(ql_sense_cell_at(s, t, c),
                       cand_bytes(s->cand[c], s->tensors[t].ncols, s->tensors[t].nrows));
    *out = s;
    return QL_OK;
}

void ql_sense_free(ql_sense *s) {
    if (!s) return;
    for (int t = 0; t < s->n_tensors; t++) free(s->tensors[t].name);
    free(s->tensors);
    ql_sense_free_strings(s->cand, s->n_cand);
    free(s->cells);
    ql_sense_free_strings(s->act, s->n_act);
    free(s->act_cells);
    ql_sense_free_strings(s->kv, s->n_kv);
    free(s->kv_cells);
    free(s->model);
    free(s->calib);
    free(s->stats);
    free(s->imatrix);
    free(s);
}

uint64_t ql_sense_hash_tokens(const int32_t *tokens, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)tokens[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xff;
            h *= 1099511628211ull;
        }
    }
    return h;
}

static void set_str(char **dst, const char *v) {
    free(*dst);
    *dst = ql_strdup(v ? v : "");
}

void ql_sense_set_context(ql_sense *s, const char *calib, const int32_t *tokens, int64_t n_seq,
                          int64_t seq_len, const char *stats, const char *imatrix, int level) {
    set_str(&s->calib, calib);
    set_str(&s->stats, stats);
    set_str(&s->imatrix, imatrix);
    s->n_seq = tokens ? n_seq : 0;
    s->seq_len = tokens ? seq_len : 0;
    s->tokens_hash = tokens ? ql_sense_hash_tokens(tokens, n_seq * seq_len) : 0;
    s->level = level;
}

int ql_sense_find_tensor(const ql_sense *s, const char *name) {
    for (int t = 0; t < s->n_tensors; t++)
        if (strcmp(s->tensors[t].name, name) == 0) return t;
    return -1;
}

int ql_sense_find_cand(const ql_sense *s, const char *spec) {
    for (int c = 0; c < s->n_cand; c++)
        if (strcmp(s->cand[c], spec) == 0) return c;
    return -1;
}

ql_status ql_sense_adopt(ql_sense *dst, const ql_sense *old, int *n_adopted) {
    if (n_adopted) *n_adopted = 0;
    if (old->n_tensors != dst->n_tensors)
        return ql_fail(QL_ERR_ARG, "a different model (%d tensors, not %d)", old->n_tensors, dst->n_tensors);
    for (int t = 0; t < dst->n_tensors; t++) {
        const ql_sense_tensor *a = &dst->tensors[t], *b = &old->tensors[t];
        if (strcmp(a->name, b->name) || a->ncols != b->ncols || a->nrows != b->nrows ||
            a->orig_type != b->orig_type)
            return ql_fail(QL_ERR_ARG, "a different model (tensor %d is %s, not %s)", t, b->name, a->name);
    }
    /* weight-level numbers depend on the tokens only through data-aware methods and the imatrix, but one
     * rule is easier to trust: the same calibration or nothing */
    if (old->tokens_hash != dst->tokens_hash || old->n_seq != dst->n_seq || old->seq_len != dst->seq_len)
        return ql_fail(QL_ERR_ARG,
                       "different calibration tokens (%lld x %lld from '%s', not %lld x %lld from '%s')",
                       (long long)old->n_seq, (long long)old->seq_len, old->calib, (long long)dst->n_seq,
                       (long long)dst->seq_len, dst->calib);
    if (strcmp(old->stats, dst->stats))
        return ql_fail(QL_ERR_ARG, "different statistics ('%s', not '%s')", old->stats, dst->stats);
    if (strcmp(old->imatrix, dst->imatrix))
        return ql_fail(QL_ERR_ARG, "a different imatrix ('%s', not '%s')", old->imatrix, dst->imatrix);
    int n = 0;
    for (int c = 0; c < dst->n_cand; c++) {
        int oc = ql_sense_find_cand(old, dst->cand[c]);
        if (oc < 0) continue;
        for (int t = 0; t < dst->n_tensors; t++) {
            const ql_sense_cell *o = ql_sense_cell_at(old, t, oc);
            ql_sense_cell *d = ql_sense_cell_at(dst, t, c);
            if (o->level < 0 || o->bytes != d->bytes) continue;
            *d = *o;
            n++;
        }
    }
    for (int a = 0; a < dst->n_act; a++)
        for (int oa = 0; oa < old->n_act; oa++) {
            if (strcmp(dst->act[a], old->act[oa])) continue;
            for (int t = 0; t < dst->n_tensors; t++) {
                const ql_sense_act_cell *o = ql_sense_act_cell_at(old, t, oa);
                if (o->level < 0) continue;
                *ql_sense_act_cell_at(dst, t, a) = *o;
                n++;
            }
        }
    for (int a = 0; a < dst->n_kv && old->kv_layers == dst->kv_layers && old->kv_heads == dst->kv_heads &&
                    old->kv_head_dim == dst->kv_head_dim;
         a++)
        for (int oa = 0; oa < old->n_kv; oa++) {
            if (strcmp(dst->kv[a], old->kv[oa])) continue;
            for (int l = 0; l < dst->kv_layers; l++) {
                const ql_sense_act_cell *o = ql_sense_kv_cell_at(old, l, oa);
                if (o->level < 0) continue;
                *ql_sense_kv_cell_at(dst, l, a) = *o;
                n++;
            }
        }
    if (old->base_ppl > 0) dst->base_ppl = old->base_ppl;
    dst->seconds += old->seconds;
    if (n_adopted) *n_adopted = n;
    return QL_OK;
}

double ql_sense_error(const ql_sense *s, int t, int c, int level) {
    const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
    if (e->bytes < 0 || e->level < level) return NAN;
    switch (level) {
    case QL_SENSE_WEIGHT:
        return e->werr;
    case QL_SENSE_OUTPUT:
        return e->oerr;
    case QL_SENSE_KLD:
        return e->kld;
    default:
        return NAN;
    }
}

int ql_sense_complete_level(const ql_sense *s) {
    int lv = QL_SENSE_KLD;
    for (int t = 0; t < s->n_tensors; t++)
        for (int c = 0; c < s->n_cand; c++) {
            const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            if (e->bytes >= 0 && e->level < lv) lv = e->level;
        }
    return lv;
}

void ql_sense_scores(const ql_sense *s, int level, char *const *cands, int n_cands, double *score) {
    for (int t = 0; t < s->n_tensors; t++) {
        double sum = 0;
        int n = 0;
        for (int k = 0; k < (cands ? n_cands : s->n_cand); k++) {
            int c = cands ? ql_sense_find_cand(s, cands[k]) : k;
            if (c < 0) continue;
            double e = ql_sense_error(s, t, c, level);
            if (!isfinite(e)) continue;
            sum += log(e > 1e-12 ? e : 1e-12);
            n++;
        }
        score[t] = n ? exp(sum / n) : NAN;
    }
}

/* ---------------- measurement ---------------- */

typedef struct kld_ctx kld_ctx;
typedef struct {
    kld_ctx *c;
    int64_t seq;
} hook_user;

struct kld_ctx {
    const ql_infer *inf;
    const int32_t *tokens;
    int T, V, D, L;
    int64_t n_seq;
    float *resid; /* [(L+1) * n_seq * T * D] */
    float *base_lp; /* [n_seq * T * V] */
    ql_scratch **sc;
    float **logits;
    hook_user *hu;
    double *kld, *nll; /* per sequence */
    double base_ppl;
    int n_workers;
    int layer_from;
    bool from_tokens;
    bool base;
    const ql_progress *progress;
    pthread_mutex_t lock;
    ql_status status;
    char err[256];
    /* batched probes (ql_forward_variants): the variants of one tensor; an item is seq_per_item sequences
     * under all of them, in each worker's scratch and logits of brows rows (grown on demand); per-(variant,
     * sequence) sums in vkld/vnll [var->n * n_seq]; KLD sums of one item over kld_threads when one worker runs */
    const ql_weight_variants *var;
    int seq_per_item, kld_threads;
    ql_scratch **bsc;
    float **blogits;
    int64_t brows;
    double *vkld, *vnll;
    int vcap;
};

static float *resid_at(const kld_ctx *c, int layer, int64_t seq) {
    return c->resid + ((size_t)layer * (size_t)c->n_seq + (size_t)seq) * (size_t)c->T * (size_t)c->D;
}

static void capture(void *user, int layer, ql_hook_point where, const float *x, int n, int dim) {
    hook_user *h = user;
    if (where != QL_HOOK_RESIDUAL || layer < 0 || layer > h->c->L || n != h->c->T || dim != h->c->D) return;
    memcpy(resid_at(h->c, layer, h->seq), x, (size_t)n * (size_t)dim * sizeof(float));
}

static void kld_fail(kld_ctx *c, ql_status s) {
    pthread_mutex_lock(&c->lock);
    if (!c->status) {
        c->status = s;
        snprintf(c->err, sizeof c->err, "%s", ql_last_error());
    }
    pthread_mutex_unlock(&c->lock);
}

static double row_lse(const float *lg, int V) {
    float mx = lg[0];
    for (int i = 1; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)(lg[i] - mx));
    return (double)mx + log(sum);
}

static void seq_kld(kld_ctx *c, int64_t seq, const float *lg, double *kld_out, double *nll_out);

static void kld_item(void *vctx, int worker, int64_t seq) {
    kld_ctx *c = vctx;
    if (c->status || ql_progress_cancelled(c->progress)) return;
    const int T = c->T;
    const int32_t *tok = c->tokens + seq * T;
    float *lg = c->logits[worker];
    ql_status s;
    if (c->base) {
        c->hu[worker].seq = seq;
        s = ql_forward(c->inf, c->sc[worker], tok, T, 0, lg);
    } else
        s = ql_forward_from(c->inf, c->sc[worker], tok,
                            c->from_tokens ? NULL : resid_at(c, c->layer_from, seq),
                            c->from_tokens ? 0 : c->layer_from, T, 0, lg);
    if (s) {
        kld_fail(c, s);
        return;
    }
    seq_kld(c, seq, lg, &c->kld[seq], &c->nll[seq]);
}

/* KLD against the stored base and NLL of sequence seq from its logits lg [T, V]; the base pass stores its
 * log-probabilities instead. */
static void seq_kld(kld_ctx *c, int64_t seq, const float *lg, double *kld_out, double *nll_out) {
    const int T = c->T, V = c->V;
    const int32_t *tok = c->tokens + seq * T;
    double kld = 0, nll = 0;
    for (int t = 0; t < T; t++) {
        const float *row = lg + (size_t)t * V;
        float *blp = c->base_lp + ((size_t)seq * T + (size_t)t) * (size_t)V;
        double lse = row_lse(row, V);
        if (c->base) {
            for (int i = 0; i < V; i++) blp[i] = (float)((double)row[i] - lse);
        } else {
            /* the probe's log-probs rounded to float like the stored base: an unchanged model gives 0 */
            double k = 0;
            for (int i = 0; i < V; i++) {
                double lb = blp[i];
                k += exp(lb) * (lb - (double)(float)((double)row[i] - lse));
            }
            kld += k > 0 ? k : 0;
        }
        if (t + 1 < T) nll -= (double)row[tok[t + 1]] - lse;
    }
    *kld_out = kld;
    *nll_out = nll;
}

typedef struct {
    kld_ctx *c;
    const float *lg;
    int64_t q0, nq;
} slice_job;

/* Slice b = v·nq + j of a batched item: sequence q0 + j under variant v. */
static void slice_kld_range(void *vjob, int worker, int64_t b0, int64_t b1) {
    (void)worker;
    const slice_job *j = vjob;
    kld_ctx *c = j->c;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t v = b / j->nq, q = j->q0 + b % j->nq;
        seq_kld(c, q, j->lg + (size_t)b * c->T * c->V, &c->vkld[v * c->n_seq + q], &c->vnll[v * c->n_seq + q]);
    }
}

static void kld_item_batched(void *vctx, int worker, int64_t item) {
    kld_ctx *c = vctx;
    if (c->status || ql_progress_cancelled(c->progress)) return;
    const int T = c->T;
    const int64_t q0 = item * c->seq_per_item, nq = QL_MIN((int64_t)c->seq_per_item, c->n_seq - q0);
    const int32_t **tp = ql_malloc((size_t)nq * sizeof *tp);
    const float **xp = ql_malloc((size_t)nq * sizeof *xp);
    for (int64_t j = 0; j < nq; j++) {
        tp[j] = c->tokens + (q0 + j) * T;
        xp[j] = c->from_tokens ? NULL : resid_at(c, c->layer_from, q0 + j);
    }
    ql_status s = ql_forward_variants(c->inf, c->bsc[worker], c->var, tp, c->from_tokens ? NULL : xp, (int)nq,
                                      c->from_tokens ? 0 : c->layer_from, T, c->blogits[worker]);
    free(tp);
    free(xp);
    if (s) {
        kld_fail(c, s);
        return;
    }
    slice_job j = {c, c->blogits[worker], q0, nq};
    const int64_t n_slices = (int64_t)c->var->n * nq;
    if (c->n_workers == 1 && c->kld_threads > 1) ql_parallel_for(c->kld_threads, n_slices, slice_kld_range, &j);
    else slice_kld_range(&j, worker, 0, n_slices);
}

/* Runs every sequence (base pass or one probe); per-sequence sums, combined in order by the caller. */
static ql_status kld_run(kld_ctx *c, int n_threads) {
    c->status = QL_OK;
    int saved = ql_blas_get_threads();
    ql_blas_set_threads(1);
    ql_parallel_items(n_threads, c->n_seq, kld_item, c);
    ql_blas_set_threads(saved);
    if (c->status) return ql_fail(c->status, "%s", c->err);
    if (ql_progress_cancelled(c->progress)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    return QL_OK;
}

/* Σ_v count_v ‖d_v‖² over the rows of an embedding (the output-space error of a lookup table). */
static double counted_rows(const float *d, int64_t nrows, int64_t n, const int64_t *counts) {
    double tr = 0;
    for (int64_t r = 0; r < nrows; r++) {
        if (!counts[r]) continue;
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += (double)d[r * n + i] * d[r * n + i];
        tr += (double)counts[r] * s;
    }
    return tr;
}

static int tensor_layer(const ql_model *m, const ql_gguf_tensor *t, bool *from_tokens) {
    *from_tokens = false;
    if (t == m->tok_embd) {
        *from_tokens = true;
        return 0;
    }
    if (t == m->output) return m->cfg.n_layer;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const ql_gguf_tensor *ts[QL_ROLE_COUNT];
        const int n = ql_model_layer_linears(m, l, ts, NULL); /* stored tensors: a fused one once */
        for (int i = 0; i < n; i++)
            if (ts[i] == t) return l;
    }
    return -1;
}

typedef struct {
    ql_sense *s;
    const char *path;
    double interval, last, t0, seconds0;
    const ql_sense_share *share; /* cells other processes measured arrive here before each save */
    int64_t collected;
} checkpointer;

/* Whether this process measures cell (kind, t, c) (ql_sense_share). */
static bool share_mine(const ql_sense_share *sh, int kind, int t, int c) {
    return !sh || !sh->mine || sh->mine(sh->user, kind, t, c);
}

static ql_status checkpoint(checkpointer *cp, bool force) {
    if (cp->share && cp->share->collect) cp->collected += cp->share->collect(cp->share->user, cp->s);
    double now = ql_time_s();
    if (!cp->path || (!force && now - cp->last < cp->interval)) return QL_OK;
    cp->s->seconds = cp->seconds0 + (now - cp->t0);
    cp->last = now;
    return ql_sense_save(cp->s, cp->path);
}

/* The last checkpoint of a run; a failure's own message survives it (the checkpoint must not overwrite it). */
static ql_status final_checkpoint(checkpointer *cp, ql_status st) {
    char reason[512];
    snprintf(reason, sizeof reason, "%s", ql_last_error());
    ql_status cs = checkpoint(cp, true);
    if (!st && cs) return cs;
    if (st) ql_fail(st, "%s", reason);
    return st;
}

/* n workers' scratches and logits (the arrays may be NULL) */
static void free_worker_buffers(ql_scratch **sc, float **logits, int n) {
    if (sc)
        for (int w = 0; w < n; w++) {
            ql_scratch_free(sc[w]);
            free(logits[w]);
        }
    free(sc);
    free(logits);
}

static void kld_ctx_free(kld_ctx *c) {
    free_worker_buffers(c->sc, c->logits, c->n_workers);
    free(c->hu);
    free_worker_buffers(c->bsc, c->blogits, c->n_workers);
    free(c->vkld);
    free(c->vnll);
    free(c->resid);
    free(c->base_lp);
    free(c->kld);
    free(c->nll);
    pthread_mutex_destroy(&c->lock);
}

/* ---------------- output-level errors on the GPU ----------------
 * tr(ΔW H ΔWᵀ) costs rows·cols² flops per cell (8B ffn_down: 0.8 Tflop), the bulk of a sweep on the CPU. When
 * the backend is cuda, H goes to the device once per tensor and every candidate's error is one DGEMM there
 * (kernels/awq_cuda.h; D = ΔW in double as on the CPU, sums per row then over rows: ~1e-15 relative apart). */
static int g_qerr_where = 0; /* QL_SENSE_QERR_* */
void ql_sense_set_qerr_where(int where) { g_qerr_where = where; }

static ql_cuda_qerr *qerr_open(const double *H, int64_t n, ql_status *st) {
    int w = g_qerr_where;
    *st = QL_OK;
    if (w == QL_SENSE_QERR_AUTO) {
        const ql_backend_ops *b = ql_backend_default();
        w = b && strcmp(b->name, "cuda") == 0 ? QL_SENSE_QERR_CUDA : QL_SENSE_QERR_CPU;
    }
    if (w == QL_SENSE_QERR_CPU || !H) return NULL;
    ql_cuda_qerr *e = NULL;
#ifdef QL_HAVE_CUDA
    if (w == QL_SENSE_QERR_CUDA) cudaSetDevice(ql_backend_device()); /* --device cuda:N, on this worker thread */
#endif
    *st = ql_cuda_qerr_new(H, n, w == QL_SENSE_QERR_EMULATED, &e);
    return e;
}

/* tr(D H Dᵀ) for D [nr, nc]: on the device when qe, else core/output_error.c (NAN and *st set on failure) */
static double out_error(ql_cuda_qerr *qe, const float *d, int64_t nr, int64_t nc, const double *H, ql_status *st) {
    if (!qe) return ql_output_error(d, NULL, NULL, nr, nc, H);
    double t = NAN;
    *st = ql_cuda_qerr_eval(qe, 1, nr, d, NULL, 0, NULL, 0, 0, &t, NULL);
    return *st ? NAN : t;
}

/* wq = dequantized Q(w) exactly as qlab quant produces it: the method (RTN when it needs statistics the
 * tensor has none of, as for embeddings), importance from the imatrix for formats that use it. */
static ql_status quantize_as_planned(const char *name, const float *w, float *wq, int64_t nr, int64_t nc,
                                     const ql_format *f, const char *method, const ql_input_stats *vp,
                                     const ql_imatrix *im, int nth) {
    const ql_method *me = ql_method_by_name(method);
    if (!me) return ql_fail(QL_ERR_ARG, "unknown method '%s'", method);
    if (me->needs && !vp) me = ql_method_by_name("rtn");
    if (!ql_format_fits(f, nc))
        return ql_fail(QL_ERR_ARG, "%s: rows of %lld do not fit %s", name, (long long)nc, f->name);
    float *imp = NULL;
    if (im && f->uses_importance) {
        imp = ql_malloc((size_t)nc * sizeof(float));
        if (!ql_imatrix_importance(im, name, nc, imp)) {
            free(imp);
            imp = NULL;
        }
    }
    ql_method_opts mo = {.n_threads = nth, .importance = imp, .progress = NULL};
    ql_status st = ql_method_roundtrip(me, w, nr, nc, f, vp, &mo, wq);
    free(imp);
    return st;
}

/* Buffers for n_workers, then the base pass: log-probabilities and (residuals) every layer's input stream. */
static ql_status kld_setup(kld_ctx *kc, const ql_infer *inf, const ql_sense_opts *o, int n_workers,
                           bool residuals, const ql_progress *progress) {
    const ql_config *cfg = &ql_infer_model(inf)->cfg;
    kc->inf = inf;
    kc->tokens = o->tokens;
    kc->T = o->seq_len;
    kc->V = cfg->n_vocab;
    kc->D = cfg->n_embd;
    kc->L = cfg->n_layer;
    kc->n_seq = o->n_seq;
    kc->progress = progress;
    size_t nr = residuals ? (size_t)(kc->L + 1) * (size_t)kc->n_seq * (size_t)kc->T * (size_t)kc->D : 0;
    size_t nb = (size_t)kc->n_seq * (size_t)kc->T * (size_t)kc->V;
    kc->resid = nr ? malloc(nr * sizeof(float)) : NULL;
    kc->base_lp = malloc(nb * sizeof(float));
    if ((nr && !kc->resid) || !kc->base_lp)
        return ql_fail(QL_ERR_NOMEM,
                       "the kld level needs %.1f GiB for base log-probabilities and residual streams; "
                       "use fewer calibration tokens",
                       (double)(nr + nb) * 4 / (1 << 30));
    kc->sc = ql_calloc((size_t)n_workers, sizeof *kc->sc);
    kc->logits = ql_calloc((size_t)n_workers, sizeof *kc->logits);
    kc->hu = ql_calloc((size_t)n_workers, sizeof *kc->hu);
    kc->kld = ql_calloc((size_t)kc->n_seq, sizeof *kc->kld);
    kc->nll = ql_calloc((size_t)kc->n_seq, sizeof *kc->nll);
    for (int wk = 0; wk < n_workers; wk++) {
        kc->sc[wk] = ql_scratch_new(inf, kc->T);
        kc->logits[wk] = ql_malloc((size_t)kc->T * (size_t)kc->V * sizeof(float));
        kc->hu[wk].c = kc;
        if (residuals) ql_scratch_set_hook(kc->sc[wk], capture, &kc->hu[wk]);
    }
    kc->n_workers = n_workers;
    kc->base = true;
    ql_status st = kld_run(kc, n_workers);
    kc->base = false;
    for (int wk = 0; wk < n_workers; wk++) ql_scratch_set_hook(kc->sc[wk], NULL, NULL);
    if (st) return st;
    double nll = 0;
    for (int64_t q = 0; q < kc->n_seq; q++) nll += kc->nll[q];
    kc->base_ppl = exp(nll / ((double)kc->n_seq * (kc->T - 1)));
    return QL_OK;
}

/* One probe over every sequence with the infer's current weights; mean KLD per token and perplexity. */
static ql_status kld_probe(kld_ctx *kc, int layer_from, bool from_tokens, double *kld, double *ppl) {
    kc->layer_from = layer_from;
    kc->from_tokens = from_tokens;
    ql_status st = kld_run(kc, kc->n_workers);
    if (st) return st;
    double k = 0, nll = 0;
    for (int64_t q = 0; q < kc->n_seq; q++) {
        k += kc->kld[q];
        nll += kc->nll[q];
    }
    *kld = k / ((double)kc->n_seq * kc->T);
    *ppl = exp(nll / ((double)kc->n_seq * (kc->T - 1)));
    return QL_OK;
}

/* One batched probe: every sequence under each of var's variants of one tensor (ql_forward_variants), items
 * of seq_per_item sequences; mean KLD per token and perplexity of each variant, summed in sequence order. */
static ql_status kld_probe_variants(kld_ctx *kc, const ql_weight_variants *var, int seq_per_item, int layer_from,
                                    bool from_tokens, double *kld, double *ppl) {
    const int64_t rows = (int64_t)var->n * seq_per_item * kc->T;
    if (rows > kc->brows) {
        if (!kc->bsc) {
            kc->bsc = ql_calloc((size_t)kc->n_workers, sizeof *kc->bsc);
            kc->blogits = ql_calloc((size_t)kc->n_workers, sizeof *kc->blogits);
        }
        for (int w = 0; w < kc->n_workers; w++) {
            ql_scratch_free(kc->bsc[w]);
            free(kc->blogits[w]);
            kc->blogits[w] = NULL;
            kc->bsc[w] = ql_scratch_new_rows(kc->inf, kc->T, (int)rows);
            kc->blogits[w] = malloc((size_t)rows * (size_t)kc->V * sizeof(float));
            if (!kc->bsc[w] || !kc->blogits[w]) {
                kc->brows = 0;
                return ql_fail(QL_ERR_NOMEM, "no memory for a batched probe of %lld rows (--cand-batch smaller)",
                               (long long)rows);
            }
        }
        kc->brows = rows;
    }
    if (var->n > kc->vcap) {
        free(kc->vkld);
        free(kc->vnll);
        kc->vkld = ql_calloc((size_t)var->n * (size_t)kc->n_seq, sizeof *kc->vkld);
        kc->vnll = ql_calloc((size_t)var->n * (size_t)kc->n_seq, sizeof *kc->vnll);
        kc->vcap = var->n;
    }
    kc->var = var;
    kc->seq_per_item = seq_per_item;
    kc->layer_from = layer_from;
    kc->from_tokens = from_tokens;
    kc->status = QL_OK;
    int saved = ql_blas_get_threads();
    ql_blas_set_threads(kc->n_workers == 1 ? saved : 1);
    ql_parallel_items(kc->n_workers, (kc->n_seq + seq_per_item - 1) / seq_per_item, kld_item_batched, kc);
    ql_blas_set_threads(saved);
    kc->var = NULL;
    if (kc->status) return ql_fail(kc->status, "%s", kc->err);
    if (ql_progress_cancelled(kc->progress)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    for (int v = 0; v < var->n; v++) {
        double k = 0, nll = 0;
        for (int64_t q = 0; q < kc->n_seq; q++) {
            k += kc->vkld[v * kc->n_seq + q];
            nll += kc->vnll[v * kc->n_seq + q];
        }
        kld[v] = k / ((double)kc->n_seq * kc->T);
        ppl[v] = exp(nll / ((double)kc->n_seq * (kc->T - 1)));
    }
    return QL_OK;
}

void ql_sense_batch_shape(const ql_model *m, const ql_sense_opts *o, int n_cand, int *cand_batch, int *seq_per_item) {
    const ql_backend_ops *b = ql_backend_default();
    const bool serial = b && b->serial;
    int nb = o->cand_batch > 0 ? o->cand_batch : serial ? 8 : 4;
    nb = QL_MAX(1, QL_MIN(QL_MIN(nb, n_cand), MAX_BATCH));
    /* groups of equal size: 6 candidates in batches of at most 4 run as 3 + 3, not 4 + 2 padded to 4 */
    if (o->cand_batch <= 0 && n_cand > 0) {
        const int groups = (n_cand + nb - 1) / nb;
        nb = (n_cand + groups - 1) / groups;
    }
    if (o->level < QL_SENSE_KLD || o->seq_len < 1) nb = 1;
    const int T = QL_MAX(o->seq_len, 1);
    int64_t spi = o->seq_batch > 0 ? QL_MIN((int64_t)o->seq_batch, QL_MAX(o->n_seq, 1))
                  : serial && nb > 1 ? QL_MAX((int64_t)1, QL_MIN(QL_MAX(o->n_seq, 1), (int64_t)BATCH_ROWS / ((int64_t)nb * T)))
                                     : 1;
    /* within half the memory budget: every worker's batched buffers and logits, and the nb - 1 dequantized
     * candidates beyond one of the largest tensor (an 8B output matrix is 2 GiB in F32); its logits within
     * BATCH_LOGITS (a device backend holds them twice more, on the GPU: 8192 rows of a 128k vocabulary would be
     * 4 GiB). Fewer sequences first, then fewer candidates. */
    const double budget = 0.5 * ql_mem_budget_bytes();
    const int workers = serial && nb > 1 ? 1 : (int)QL_MAX((int64_t)1, QL_MIN((int64_t)QL_MAX(o->n_threads, 1), o->n_seq));
    int64_t largest = 0;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const ql_gguf_tensor *t = &m->gguf->tensors[i];
        if (ql_tensor_is_quantizable(t->name, (int)t->n_dims, t->ne)) largest = QL_MAX(largest, numel(t));
    }
    for (;;) {
        const int64_t rows = nb * spi * T;
        const double logits = 4.0 * (double)rows * m->cfg.n_vocab;
        const double bytes = workers * (ql_scratch_bytes_rows(&m->cfg, T, (int)QL_MIN(rows, (int64_t)INT32_MAX)) + logits) +
                             4.0 * (double)(nb - 1) * (double)largest;
        if ((bytes <= budget && logits <= BATCH_LOGITS) || (nb == 1 && spi == 1)) break;
        if (spi > 1) spi = QL_MAX((int64_t)1, spi / 2);
        else nb = QL_MAX(1, nb / 2);
    }
    *cand_batch = nb;
    *seq_per_item = (int)spi;
}

ql_status ql_sense_measure(ql_sense *s, const ql_model *m, const ql_sense_opts *o,
                           const ql_progress *progress) {
    const int level = o->level;
    const int nth = o->n_threads > 0 ? o->n_threads : 1;
    if (level < QL_SENSE_WEIGHT || level > QL_SENSE_KLD)
        return ql_fail(QL_ERR_ARG, "bad sensitivity level %d", level);
    if (level >= QL_SENSE_OUTPUT && (!o->tokens || o->n_seq <= 0 || o->seq_len < 2))
        return ql_fail(QL_ERR_ARG, "the %s level needs calibration tokens", ql_sense_level_name(level));
    if (o->tokens)
        for (int64_t i = 0; i < o->n_seq * o->seq_len; i++)
            if (o->tokens[i] < 0 || o->tokens[i] >= m->cfg.n_vocab)
                return ql_fail(QL_ERR_ARG, "calibration token %d out of range (vocab %d)", o->tokens[i],
                               m->cfg.n_vocab);
    for (int c = 0; c < s->n_cand; c++) {
        const ql_format *f;
        char mname[64];
        if (ql_parse_format_method(s->cand[c], &f, mname, sizeof mname)) return QL_ERR_ARG;
        if (ql_sense_check_candidate(s->cand[c], f, mname)) return QL_ERR_ARG;
        if (f->requires_importance && !o->imatrix)
            return ql_fail(QL_ERR_ARG, "candidate '%s': %s needs an importance matrix (--imatrix)", s->cand[c],
                           f->name);
        const ql_method *me = ql_method_by_name(mname);
        if (me->needs && !o->stats)
            return ql_fail(QL_ERR_ARG,
                           "candidate '%s' needs calibration statistics (--stats, or --calib/--text)",
                           s->cand[c]);
        if ((me->needs & QL_NEEDS_HESSIAN) && !o->stats->has_hessian)
            return ql_fail(QL_ERR_ARG, "candidate '%s' needs Hessians; the statistics have none", s->cand[c]);
    }
    int64_t todo = 0, todo_all = 0; /* cells measured here; in the whole job (progress counts every process) */
    bool need_kld = false;
    for (int t = 0; t < s->n_tensors; t++) {
        int64_t gi = ql_gguf_find_tensor(m->gguf, s->tensors[t].name);
        if (gi < 0) return ql_fail(QL_ERR_ARG, "the model has no tensor '%s'", s->tensors[t].name);
        const ql_gguf_tensor *gt = &m->gguf->tensors[gi];
        if (gt->ne[0] != s->tensors[t].ncols || numel(gt) != s->tensors[t].ncols * s->tensors[t].nrows)
            return ql_fail(QL_ERR_ARG, "tensor '%s' has a different shape in the model", gt->name);
        for (int c = 0; c < s->n_cand; c++) {
            const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            if (e->bytes >= 0 && e->level < level) {
                todo_all++;
                if (!share_mine(o->share, 0, t, c)) continue;
                todo++;
                need_kld |= level == QL_SENSE_KLD;
            }
        }
    }
    if (level > s->level) s->level = level;
    checkpointer cp = {s,           o->checkpoint, o->checkpoint_s > 0 ? o->checkpoint_s : 20.0,
                       ql_time_s(), ql_time_s(),   s->seconds, o->share, 0};
    if (!todo) return checkpoint(&cp, true);

    const ql_config *cfg = &m->cfg;
    ql_infer *inf = NULL;
    kld_ctx kc;
    memset(&kc, 0, sizeof kc);
    pthread_mutex_init(&kc.lock, NULL);
    int n_workers = (int)QL_MIN((int64_t)nth, QL_MAX(o->n_seq, 1));
    int nb, seq_per_item;
    ql_sense_batch_shape(m, o, s->n_cand, &nb, &seq_per_item);
    /* a device backend runs one pass at a time: one worker issues the batched passes, every thread sums KLD */
    const ql_backend_ops *bops = ql_backend_default();
    if (nb > 1 && bops && bops->serial) n_workers = 1;
    kc.kld_threads = nth;
    if (nb > 1) ql_log(2, "sensitivity: %d candidates x %d sequences per forward pass", nb, seq_per_item);
    int64_t *counts = NULL;
    float *w = NULL, *wqs[MAX_BATCH] = {0}, *delta = NULL;
    ql_status st = QL_OK;
    int64_t done = 0;

    if (level >= QL_SENSE_OUTPUT) {
        counts = ql_calloc((size_t)cfg->n_vocab, sizeof *counts);
        for (int64_t i = 0; i < o->n_seq * o->seq_len; i++) counts[o->tokens[i]]++;
    }
    if (need_kld) {
        if ((st = ql_infer_new(m, nth, &inf))) goto out;
        ql_progress_report(progress, 0, todo_all, "base model");
        if ((st = kld_setup(&kc, inf, o, n_workers, true, progress))) goto out;
        s->base_ppl = kc.base_ppl;
    }

    for (int t = 0; t < s->n_tensors && !st; t++) {
        bool any = false;
        for (int c = 0; c < s->n_cand; c++) {
            const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            any |= e->bytes >= 0 && e->level < level && share_mine(o->share, 0, t, c);
        }
        if (!any) continue;
        const ql_sense_tensor *te = &s->tensors[t];
        const ql_gguf_tensor *gt = &m->gguf->tensors[ql_gguf_find_tensor(m->gguf, te->name)];
        const int64_t nr = te->nrows, nc = te->ncols, n = nr * nc;
        w = ql_malloc((size_t)n * sizeof(float));
        for (int k = 0; k < nb; k++) wqs[k] = ql_malloc((size_t)n * sizeof(float));
        delta = ql_malloc((size_t)n * sizeof(float));
        if (!ql_tensor_to_f32(gt, w, nth)) {
            st = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': its type cannot be decoded", te->name);
            break;
        }
        /* output-space reference tr(W H Wᵀ) */
        const ql_stat_entry *se = o->stats ? ql_stats_for_tensor(o->stats, te->name) : NULL;
        if (se && se->n != nc) se = NULL;
        ql_input_stats view = {0}, *vp = NULL;
        if (se) {
            ql_stats_view(se, &view);
            vp = &view;
        }
        const bool is_embd = gt == m->tok_embd && nr == cfg->n_vocab;
        double oref = NAN;
        ql_cuda_qerr *qe = NULL;
        if (level >= QL_SENSE_OUTPUT && se && se->xtx && (qe = qerr_open(se->xtx, nc, &st), st)) break;
        if (level >= QL_SENSE_OUTPUT) {
            if (se && se->xtx) oref = out_error(qe, w, nr, nc, se->xtx, &st);
            else if (is_embd && counts) oref = counted_rows(w, nr, nc, counts);
        }
        bool from_tokens = false;
        int layer = tensor_layer(m, gt, &from_tokens);
        /* candidates in fixed groups of nb by index (the pass's shape must not depend on what is left to do
         * or on which process does it: the sums of a GEMM depend on its row count) */
        for (int c0 = 0; c0 < s->n_cand && !st; c0 += nb) {
            /* members to measure and where each got to (the cells keep their level until finished: a checkpoint
             * between two members' ends saves the others as they were) */
            enum { NOT_REACHED, NO_ERROR_KNOWN, QUANTIZED };
            int grp[MAX_BATCH], state[MAX_BATCH] = {0}, nk = 0, nq = 0;
            float *wv[MAX_BATCH];
            uint32_t types[MAX_BATCH];
            for (int c = c0; c < QL_MIN(c0 + nb, s->n_cand); c++) {
                const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
                if (e->bytes >= 0 && e->level < level && share_mine(o->share, 0, t, c)) grp[nk++] = c;
            }
            for (int k = 0; k < nk && !st; k++) {
                const int c = grp[k];
                ql_sense_cell *e = ql_sense_cell_at(s, t, c);
                if (ql_progress_cancelled(progress)) {
                    st = ql_fail(QL_ERR_CANCELLED, "cancelled");
                    break;
                }
                char phase[256];
                snprintf(phase, sizeof phase, "%s %s", te->name, s->cand[c]);
                ql_progress_report(progress, done + cp.collected, todo_all, phase);
                const ql_format *f;
                char mname[64];
                ql_parse_format_method(s->cand[c], &f, mname, sizeof mname);
                /* ggml's imatrix-only types cannot quantize a tensor the imatrix has no data for (llama.cpp's
                 * imatrix skips output and token_embd), and qlab quant refuses it: the cell is measured as
                 * "no error known" (NaN at every level), which qlab plan never picks */
                if (f->requires_importance && !(o->imatrix && ql_imatrix_find(o->imatrix, te->name))) {
                    e->werr = e->oerr = e->kld = e->dppl = NAN;
                    state[k] = NO_ERROR_KNOWN;
                    continue;
                }
                float *wq = wqs[nq];
                if ((st = quantize_as_planned(te->name, w, wq, nr, nc, f, mname, vp, o->imatrix, nth))) break;
                for (int64_t i = 0; i < n; i++) delta[i] = wq[i] - w[i];
                e->werr = ql_weight_error(w, wq, n);
                if (level >= QL_SENSE_OUTPUT) {
                    double num = NAN;
                    if (se && se->xtx && (num = out_error(qe, delta, nr, nc, se->xtx, &st), st)) break;
                    else if (is_embd && counts) num = counted_rows(delta, nr, nc, counts);
                    e->oerr = isfinite(num) && oref > 0 ? num / oref : NAN;
                }
                if (level >= QL_SENSE_KLD && layer < 0) e->kld = e->dppl = NAN; /* not used by the forward pass */
                wv[nq] = wq;
                types[nq++] = f->type;
                state[k] = QUANTIZED;
            }
            if (!st && level >= QL_SENSE_KLD && layer >= 0 && nq > 0) {
                double kld[MAX_BATCH], ppl[MAX_BATCH];
                if (nb == 1) {
                    const float *old = ql_infer_swap_weight_typed(inf, gt, wv[0], types[0]);
                    st = kld_probe(&kc, layer, from_tokens, &kld[0], &ppl[0]);
                    ql_infer_swap_weight_typed(inf, gt, old, gt->type);
                } else {
                    /* the same nb variants every pass: pad a short group with copies of its first member */
                    for (int k = nq; k < nb; k++) wv[k] = wv[0], types[k] = types[0];
                    const ql_weight_variants vs = {gt, nb, (const float *const *)wv, types};
                    st = kld_probe_variants(&kc, &vs, seq_per_item, layer, from_tokens, kld, ppl);
                }
                for (int k = 0, j = 0; k < nk && !st; k++) {
                    ql_sense_cell *e = ql_sense_cell_at(s, t, grp[k]);
                    if (state[k] != QUANTIZED) continue;
                    e->kld = kld[j];
                    e->dppl = ppl[j++] - s->base_ppl;
                }
            }
            for (int k = 0; k < nk && !st; k++) {
                ql_sense_cell *e = ql_sense_cell_at(s, t, grp[k]);
                if (state[k] == NOT_REACHED) continue;
                e->level = level;
                done++;
                if (o->share && o->share->measured && (st = o->share->measured(o->share->user, s, 0, t, grp[k]))) break;
                ql_status cs = checkpoint(&cp, false);
                if (cs) st = cs;
                char phase[256];
                snprintf(phase, sizeof phase, "%s %s", te->name, s->cand[grp[k]]);
                ql_progress_report(progress, done + cp.collected, todo_all, phase);
            }
        }
        ql_cuda_qerr_free(qe);
        free(w);
        for (int k = 0; k < nb; k++) free(wqs[k]), wqs[k] = NULL;
        free(delta);
        w = delta = NULL;
    }
out:
    st = final_checkpoint(&cp, st);
    kld_ctx_free(&kc);
    ql_infer_free(inf);
    free(counts);
    free(w);
    for (int k = 0; k < MAX_BATCH; k++) free(wqs[k]);
    free(delta);
    return st;
}

/* ---------------- activation schemes ---------------- */

ql_status ql_sense_parse_act_candidates(const char *list, char ***out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    char **v = NULL;
    int n = 0, cap = 0;
    char *buf = ql_strdup(list ? list : ""), *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        for (char *e = tok + strlen(tok); e > tok && e[-1] == ' ';) *--e = 0;
        ql_act_mode mode = QL_ACT_NONE;
        float thr = 0;
        ql_status ps = ql_act_spec_parse(tok, &mode, &thr); /* on failure mode is not set: keep its message */
        if (ps || mode == QL_ACT_NONE) {
            if (!ps) ql_fail(QL_ERR_ARG, "--act-candidates: 'none' is the float model every scheme is measured "
                                         "against, not a candidate");
            free(buf);
            ql_sense_free_strings(v, n);
            return QL_ERR_ARG;
        }
        char spec[64];
        ql_act_spec_format(mode, thr, spec, sizeof spec);
        push_unique(&v, &n, &cap, spec);
    }
    free(buf);
    if (!n) return ql_fail(QL_ERR_ARG, "--act-candidates: no scheme given");
    *out = v;
    *n_out = n;
    return QL_OK;
}

/* Re-grid a rows × schemes table of runtime cells onto the scheme names want: the cells of a scheme the
 * table already has are kept when keep_old, every other cell is unmeasured. Replaces *names and *cells. */
static void regrid_scheme_cells(char ***names, ql_sense_act_cell **cells, int *n, int rows, char *const *want,
                                int n_want, bool keep_old) {
    const size_t cols = (size_t)(n_want > 0 ? n_want : 1);
    ql_sense_act_cell *nc = ql_calloc((size_t)(rows > 0 ? rows : 1) * cols, sizeof *nc);
    char **nn = ql_calloc(cols, sizeof *nn);
    for (int a = 0; a < n_want; a++) {
        nn[a] = ql_strdup(want[a]);
        int old = -1;
        for (int k = 0; k < *n && old < 0 && keep_old; k++)
            if (!strcmp((*names)[k], want[a])) old = k;
        for (int r = 0; r < rows; r++) {
            ql_sense_act_cell *c = &nc[(size_t)r * (size_t)n_want + (size_t)a];
            if (old >= 0) *c = (*cells)[(size_t)r * (size_t)*n + (size_t)old];
            else c->level = -1, c->kld = c->dppl = NAN;
        }
    }
    ql_sense_free_strings(*names, *n);
    free(*cells);
    *names = nn;
    *cells = nc;
    *n = n_want;
}

void ql_sense_set_act(ql_sense *s, char *const *acts, int n_act) {
    regrid_scheme_cells(&s->act, &s->act_cells, &s->n_act, s->n_tensors, acts, n_act, true);
}

ql_status ql_sense_measure_act(ql_sense *s, const ql_model *m, const ql_sense_opts *o, const ql_progress *progress) {
    if (!s->n_act) return QL_OK;
    if (!o->tokens || o->n_seq <= 0 || o->seq_len < 2)
        return ql_fail(QL_ERR_ARG, "activation sensitivity needs calibration tokens");
    ql_act_mode *mode = ql_calloc((size_t)s->n_act, sizeof *mode);
    float *thr = ql_calloc((size_t)s->n_act, sizeof *thr);
    ql_status st = QL_OK;
    int64_t todo = 0, done = 0;
    for (int a = 0; a < s->n_act && !st; a++) {
        st = ql_act_spec_parse(s->act[a], &mode[a], &thr[a]);
        if (!st && ql_act_mode_is_static(mode[a]) && !o->stats)
            st = ql_fail(QL_ERR_ARG, "activation scheme %s takes static scales from statistics (--stats, or "
                                     "--calib/--text)", s->act[a]);
    }
    int64_t todo_all = 0;
    for (int t = 0; t < s->n_tensors; t++)
        for (int a = 0; a < s->n_act; a++)
            if (ql_sense_act_cell_at(s, t, a)->level < 0) {
                todo_all++;
                todo += share_mine(o->share, 1, t, a);
            }
    const int nth = o->n_threads > 0 ? o->n_threads : 1;
    ql_infer *inf = NULL;
    kld_ctx kc;
    memset(&kc, 0, sizeof kc);
    pthread_mutex_init(&kc.lock, NULL);
    checkpointer cp = {s, o->checkpoint, o->checkpoint_s > 0 ? o->checkpoint_s : 20.0, ql_time_s(), ql_time_s(),
                       s->seconds, o->share, 0};
    if (st || !todo) goto out;
    if ((st = ql_infer_new(m, nth, &inf))) goto out;
    ql_progress_report(progress, 0, todo_all, "base model");
    if ((st = kld_setup(&kc, inf, o, (int)QL_MIN((int64_t)nth, QL_MAX(o->n_seq, 1)), true, progress))) goto out;
    s->base_ppl = kc.base_ppl;
    for (int t = 0; t < s->n_tensors && !st; t++) {
        int64_t gi = ql_gguf_find_tensor(m->gguf, s->tensors[t].name);
        const ql_gguf_tensor *gt = gi >= 0 ? &m->gguf->tensors[gi] : NULL;
        bool from_tokens = false;
        int layer = gt ? tensor_layer(m, gt, &from_tokens) : -1;
        for (int a = 0; a < s->n_act && !st; a++) {
            ql_sense_act_cell *e = ql_sense_act_cell_at(s, t, a);
            if (e->level >= 0 || !share_mine(o->share, 1, t, a)) continue;
            if (ql_progress_cancelled(progress)) {
                st = ql_fail(QL_ERR_CANCELLED, "cancelled");
                break;
            }
            char phase[256];
            snprintf(phase, sizeof phase, "%s input %s", s->tensors[t].name, s->act[a]);
            ql_progress_report(progress, done + cp.collected, todo_all, phase);
            e->kld = e->dppl = NAN; /* embeddings are looked up: no input to quantize */
            if (gt && layer >= 0 && !from_tokens) {
                const ql_stat_entry *se = o->stats ? ql_stats_for_tensor(o->stats, gt->name) : NULL;
                ql_input_stats view = {0};
                if (se && se->n == gt->ne[0]) ql_stats_view(se, &view);
                ql_act_quant aq;
                if (ql_act_mode_is_static(mode[a]) && !view.absmax)
                    st = ql_fail(QL_ERR_ARG, "activation scheme %s: the statistics have no entry for the input of '%s'",
                                 s->act[a], gt->name);
                if (!st) st = ql_act_quant_init(&aq, mode[a], view.absmax, view.n, thr[a]);
                if (!st && ql_infer_set_act_quant(inf, gt, &aq)) {
                    double kld, ppl;
                    st = kld_probe(&kc, layer, false, &kld, &ppl);
                    ql_infer_set_act_quant(inf, gt, NULL);
                    if (!st) e->kld = kld, e->dppl = ppl - s->base_ppl;
                }
            }
            if (st) break;
            e->level = QL_SENSE_KLD;
            done++;
            if (o->share && o->share->measured && (st = o->share->measured(o->share->user, s, 1, t, a))) break;
            ql_status cs = checkpoint(&cp, false);
            if (cs) st = cs;
            ql_progress_report(progress, done + cp.collected, todo_all, phase);
        }
    }
out:
    st = final_checkpoint(&cp, st);
    kld_ctx_free(&kc);
    ql_infer_free(inf);
    free(mode);
    free(thr);
    return st;
}

/* ---------------- KV-cache schemes ---------------- */

ql_status ql_sense_parse_kv_candidates(const char *list, char ***out, int *n_out) {
    char *buf = ql_strdup(list), *save = NULL;
    char **v = NULL;
    int n = 0, cap = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        for (char *e = tok + strlen(tok); e > tok && e[-1] == ' ';) *--e = 0;
        ql_kv_scheme sc;
        const bool parsed = ql_kv_scheme_parse(tok, &sc);
        if (!parsed || ql_kv_scheme_is_f32(&sc)) {
            if (parsed)
                ql_fail(QL_ERR_ARG, "--kv-candidates: 'f32' is the float cache every scheme is measured against, "
                                    "not a candidate");
            else ql_fail(QL_ERR_ARG, "--kv-candidates: %s", ql_last_error());
            free(buf);
            ql_sense_free_strings(v, n);
            return QL_ERR_ARG;
        }
        char name[160];
        push_unique(&v, &n, &cap, ql_kv_scheme_name(&sc, name, sizeof name));
    }
    free(buf);
    if (!n) return ql_fail(QL_ERR_ARG, "--kv-candidates: no scheme given");
    *out = v;
    *n_out = n;
    return QL_OK;
}

void ql_sense_set_kv(ql_sense *s, char *const *kv, int n_kv, int n_layer, int n_head_kv, int head_dim) {
    /* cells measured on another cache geometry mean nothing here */
    const bool same = s->kv_layers == n_layer && s->kv_heads == n_head_kv && s->kv_head_dim == head_dim;
    regrid_scheme_cells(&s->kv, &s->kv_cells, &s->n_kv, n_layer, kv, n_kv, same);
    s->kv_layers = n_layer, s->kv_heads = n_head_kv, s->kv_head_dim = head_dim;
}

int64_t ql_sense_kv_layer_bytes(const ql_sense *s, int k, int64_t ctx, int batch) {
    ql_kv_scheme sc;
    if (k < 0 || k >= s->n_kv || !ql_kv_scheme_parse(s->kv[k], &sc)) return -1;
    int64_t a = ql_kv_side_bytes(&sc.k, s->kv_heads, s->kv_head_dim, ctx),
            b = ql_kv_side_bytes(&sc.v, s->kv_heads, s->kv_head_dim, ctx);
    return a < 0 || b < 0 ? -1 : (a + b) * (batch > 0 ? batch : 1);
}

ql_status ql_sense_measure_kv(ql_sense *s, const ql_model *m, const ql_sense_opts *o, const ql_progress *progress) {
    if (!s->n_kv) return QL_OK;
    if (!o->tokens || o->n_seq <= 0 || o->seq_len < 2)
        return ql_fail(QL_ERR_ARG, "KV-cache sensitivity needs calibration tokens");
    if (s->kv_layers != m->cfg.n_layer || s->kv_heads != m->cfg.n_head_kv || s->kv_head_dim != m->cfg.head_dim)
        return ql_fail(QL_ERR_ARG, "KV cells describe another model (%d layers of %d x %d)", s->kv_layers, s->kv_heads,
                       s->kv_head_dim);
    ql_kv_scheme *sc = ql_calloc((size_t)s->n_kv, sizeof *sc);
    ql_status st = QL_OK;
    for (int a = 0; a < s->n_kv && !st; a++) /* every scheme fits the heads before anything runs */
        st = !ql_kv_scheme_parse(s->kv[a], &sc[a]) ? QL_ERR_ARG : ql_kv_scheme_check(&sc[a], &m->cfg, m->path);
    int64_t todo = 0, done = 0;
    for (int l = 0; l < s->kv_layers; l++)
        for (int a = 0; a < s->n_kv; a++) todo += ql_sense_kv_cell_at(s, l, a)->level < 0;
    const int nth = o->n_threads > 0 ? o->n_threads : 1;
    ql_infer *inf = NULL;
    kld_ctx kc;
    memset(&kc, 0, sizeof kc);
    pthread_mutex_init(&kc.lock, NULL);
    /* KV cells are measured by one process (qlab sense runs this on rank 0 alone): nothing arrives from others */
    checkpointer cp = {s, o->checkpoint, o->checkpoint_s > 0 ? o->checkpoint_s : 20.0, ql_time_s(), ql_time_s(),
                       s->seconds, NULL, 0};
    if (st || !todo) goto out;
    if ((st = ql_infer_new(m, nth, &inf))) goto out;
    ql_progress_report(progress, 0, todo, "base model");
    if ((st = kld_setup(&kc, inf, o, (int)QL_MIN((int64_t)nth, QL_MAX(o->n_seq, 1)), true, progress))) goto out;
    s->base_ppl = kc.base_ppl;
    for (int l = 0; l < s->kv_layers && !st; l++)
        for (int a = 0; a < s->n_kv && !st; a++) {
            ql_sense_act_cell *e = ql_sense_kv_cell_at(s, l, a);
            if (e->level >= 0) continue;
            if (ql_progress_cancelled(progress)) {
                st = ql_fail(QL_ERR_CANCELLED, "cancelled");
                break;
            }
            char phase[256];
            snprintf(phase, sizeof phase, "layer %d KV %s", l, s->kv[a]);
            ql_progress_report(progress, done, todo, phase);
            double kld, ppl;
            if ((st = ql_infer_set_kv_layer(inf, l, &sc[a]))) break;
            st = kld_probe(&kc, l, false, &kld, &ppl); /* layers before l are unchanged: start from l's input */
            ql_infer_set_kv_layer(inf, l, NULL);
            if (st) break;
            e->kld = kld, e->dppl = ppl - s->base_ppl, e->level = QL_SENSE_KLD;
            done++;
            ql_progress_report(progress, done, todo, phase);
            if ((st = checkpoint(&cp, false))) break;
        }
out:
    st = final_checkpoint(&cp, st);
    kld_ctx_free(&kc);
    ql_infer_free(inf);
    free(sc);
    return st;
}

ql_status ql_sense_plan_kld(const ql_model *m, const ql_plan *plan, const ql_sense_opts *o,
                            const ql_progress *progress, ql_sense_joint *out) {
    memset(out, 0, sizeof *out);
    const int nth = o->n_threads > 0 ? o->n_threads : 1;
    if (!o->tokens || o->n_seq <= 0 || o->seq_len < 2)
        return ql_fail(QL_ERR_ARG, "checking a plan needs calibration tokens");
    for (int64_t i = 0; i < o->n_seq * o->seq_len; i++)
        if (o->tokens[i] < 0 || o->tokens[i] >= m->cfg.n_vocab)
            return ql_fail(QL_ERR_ARG, "calibration token %d out of range (vocab %d)", o->tokens[i],
                           m->cfg.n_vocab);
    for (int i = 0; i < plan->n; i++)
        if (ql_gguf_find_tensor(m->gguf, plan->e[i].tensor) < 0)
            return ql_fail(QL_ERR_ARG, "plan names tensor '%s', which %s does not have", plan->e[i].tensor,
                           m->path);
    ql_infer *inf = NULL;
    kld_ctx kc;
    memset(&kc, 0, sizeof kc);
    pthread_mutex_init(&kc.lock, NULL);
    int n_workers = (int)QL_MIN((int64_t)nth, o->n_seq);
    float **bufs = ql_calloc((size_t)plan->n + 1, sizeof *bufs);
    const float **olds = ql_calloc((size_t)plan->n + 1, sizeof *olds);
    bool *swapped = ql_calloc((size_t)plan->n + 1, sizeof *swapped);
    float *w = NULL;
    ql_status st = ql_infer_new(m, nth, &inf);
    if (!st) st = kld_setup(&kc, inf, o, n_workers, false, progress);
    for (int i = 0; i < plan->n && !st; i++) {
        const ql_plan_entry *e = &plan->e[i];
        const ql_gguf_tensor *gt = &m->gguf->tensors[ql_gguf_find_tensor(m->gguf, e->tensor)];
        if (e->format->type == gt->type) continue; /* qlab quant copies it */
        ql_progress_report(progress, i, plan->n, e->tensor);
        const int64_t nc = gt->ne[0], nr = numel(gt) / nc, n = nr * nc;
        w = ql_malloc((size_t)n * sizeof(float));
        bufs[i] = ql_malloc((size_t)n * sizeof(float));
        if (!ql_tensor_to_f32(gt, w, nth))
            st = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type cannot be decoded", e->tensor);
        const ql_stat_entry *se = o->stats ? ql_stats_for_tensor(o->stats, e->tensor) : NULL;
        ql_input_stats view = {0};
        if (se && se->n == nc) ql_stats_view(se, &view);
        const ql_method *me = ql_method_by_name(e->method);
        if (!st && me && me->needs && !o->stats)
            st = ql_fail(QL_ERR_ARG, "tensor '%s': method '%s' needs statistics", e->tensor, e->method);
        if (!st)
            st = quantize_as_planned(e->tensor, w, bufs[i], nr, nc, e->format, e->method,
                                     se && se->n == nc ? &view : NULL, o->imatrix, nth);
        free(w);
        w = NULL;
        if (st) break;
        bool from_tokens;
        if (tensor_layer(m, gt, &from_tokens) < 0) {
            st = ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s' is not used by the forward pass", e->tensor);
            break;
        }
        olds[i] = ql_infer_swap_weight_typed(inf, gt, bufs[i], e->format->type); /* NULL: streamed weights */
        swapped[i] = true;
        out->tensors++;
    }
    /* the plan's activation schemes, as qlab quant stores them and qlab ppl runs them */
    for (int l = 0; l <= m->cfg.n_layer && !st && plan->n_act; l++) {
        const ql_layer_tensors *L = l < m->cfg.n_layer ? &m->layers[l] : NULL;
        const ql_gguf_tensor *ts[] = {L ? L->wq : m->output, L ? L->wk : NULL, L ? L->wv : NULL, L ? L->wo : NULL,
                                      L ? L->w_gate : NULL, L ? L->w_up : NULL, L ? L->w_down : NULL};
        for (size_t i = 0; i < QL_ARRAY_LEN(ts) && !st; i++) {
            const ql_plan_act *pa = ts[i] ? ql_plan_find_act(plan, ts[i]->name, L != NULL) : NULL;
            if (!pa || pa->mode == QL_ACT_NONE) continue;
            const ql_stat_entry *se = o->stats ? ql_stats_for_tensor(o->stats, ts[i]->name) : NULL;
            ql_input_stats view = {0};
            if (se && se->n == ts[i]->ne[0]) ql_stats_view(se, &view);
            ql_act_quant aq;
            st = ql_act_quant_init(&aq, pa->mode, view.absmax, view.n, pa->threshold);
            if (!st) ql_infer_set_act_quant(inf, ts[i], &aq);
        }
    }
    if (!st) {
        ql_progress_report(progress, plan->n, plan->n, "joint");
        st = kld_probe(&kc, 0, true, &out->kld, &out->ppl);
        out->base_ppl = kc.base_ppl;
    }
    for (int i = 0; i < plan->n; i++) {
        if (swapped[i]) {
            const ql_gguf_tensor *gt = &m->gguf->tensors[ql_gguf_find_tensor(m->gguf, plan->e[i].tensor)];
            ql_infer_swap_weight_typed(inf, gt, olds[i], gt->type);
        }
        free(bufs[i]);
    }
    free(bufs);
    free(olds);
    free(swapped);
    kld_ctx_free(&kc);
    ql_infer_free(inf);
    return st;
}

/* ---------------- file ---------------- */

static bool clean_str(const char *s) {
    for (; *s; s++)
        if (*s == '\t' || *s == '\n' || *s == '\r') return false;
    return true;
}

static void put_double(FILE *f, double v) {
    if (isnan(v)) fputs("nan", f);
    else if (isinf(v)) fputs(v > 0 ? "inf" : "-inf", f);
    else fprintf(f, "%.17g", v);
}

ql_status ql_sense_save(const ql_sense *s, const char *path) {
    const char *strs[] = {s->model, s->calib, s->stats, s->imatrix};
    for (size_t i = 0; i < QL_ARRAY_LEN(strs); i++)
        if (!clean_str(strs[i])) return ql_fail(QL_ERR_ARG, "%s: '%s' has a tab or newline", path, strs[i]);
    for (int t = 0; t < s->n_tensors; t++)
        if (!clean_str(s->tensors[t].name) || !*s->tensors[t].name)
            return ql_fail(QL_ERR_ARG, "%s: tensor name with a tab or newline", path);
    ql_atomic_file *af;
    ql_status st = ql_atomic_open(path, &af);
    if (st) return st;
    FILE *f = ql_atomic_stream(af); /* write errors are sticky in ferror: the commit reports them */
    fprintf(f, "%s %d\n", SENSE_MAGIC, QL_SENSE_VERSION);
    fprintf(f, "model\t%s\nfile_bytes\t%lld\nother\t%lld\t%lld\nn_tensors_file\t%lld\n", s->model,
            (long long)s->file_bytes, (long long)s->other_params, (long long)s->other_bytes,
            (long long)s->n_tensors_file);
    fprintf(f, "calib\t%s\ntokens\t%lld\t%lld\t%016llx\nstats\t%s\nimatrix\t%s\nlevel\t%s\nbase_ppl\t",
            s->calib, (long long)s->n_seq, (long long)s->seq_len, (unsigned long long)s->tokens_hash,
            s->stats, s->imatrix, ql_sense_level_name(s->level));
    put_double(f, s->base_ppl);
    fprintf(f, "\nseconds\t%.3f\ncandidates\t%d\n", s->seconds, s->n_cand);
    for (int c = 0; c < s->n_cand; c++) fprintf(f, "c\t%s\n", s->cand[c]);
    fprintf(f, "tensors\t%d\n", s->n_tensors);
    for (int t = 0; t < s->n_tensors; t++) {
        const ql_sense_tensor *te = &s->tensors[t];
        fprintf(f, "t\t%s\t%lld\t%lld\t%lld\t%u\n", te->name, (long long)te->ncols, (long long)te->nrows,
                (long long)te->orig_bytes, te->orig_type);
    }
    fprintf(f, "cells\t%lld\n", (long long)s->n_tensors * s->n_cand);
    for (int t = 0; t < s->n_tensors; t++)
        for (int c = 0; c < s->n_cand; c++) {
            const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            fprintf(f, "m\t%d\t%d\t%lld\t%d\t", t, c, (long long)e->bytes, e->level);
            put_double(f, e->werr);
            fputc('\t', f);
            put_double(f, e->oerr);
            fputc('\t', f);
            put_double(f, e->kld);
            fputc('\t', f);
            put_double(f, e->dppl);
            fputc('\n', f);
        }
    if (s->n_act) { /* optional: activation schemes (--act-candidates) */
        fprintf(f, "acts\t%d\n", s->n_act);
        for (int a = 0; a < s->n_act; a++) fprintf(f, "a\t%s\n", s->act[a]);
        for (int t = 0; t < s->n_tensors; t++)
            for (int a = 0; a < s->n_act; a++) {
                const ql_sense_act_cell *e = ql_sense_act_cell_at(s, t, a);
                fprintf(f, "k\t%d\t%d\t%d\t", t, a, e->level);
                put_double(f, e->kld);
                fputc('\t', f);
                put_double(f, e->dppl);
                fputc('\n', f);
            }
    }
    if (s->n_kv) { /* optional: KV-cache schemes (--kv-candidates), one row per layer */
        fprintf(f, "kvs\t%d\t%d\t%d\t%d\n", s->n_kv, s->kv_layers, s->kv_heads, s->kv_head_dim);
        for (int a = 0; a < s->n_kv; a++) fprintf(f, "v\t%s\n", s->kv[a]);
        for (int l = 0; l < s->kv_layers; l++)
            for (int a = 0; a < s->n_kv; a++) {
                const ql_sense_act_cell *e = ql_sense_kv_cell_at(s, l, a);
                fprintf(f, "q\t%d\t%d\t%d\t", l, a, e->level);
                put_double(f, e->kld);
                fputc('\t', f);
                put_double(f, e->dppl);
                fputc('\n', f);
            }
    }
    fprintf(f, "end\n");
    return ql_atomic_commit(af);
}

/* A cursor over the lines of the file; fields split on tabs in place. */
typedef struct {
    char *p, *end;
    const char *path;
    int line;
    char *f[12];
    int nf;
} reader;

static bool next_line(reader *r) {
    if (r->p >= r->end) return false;
    char *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
    char *line = r->p;
    if (nl) {
        *nl = 0;
        r->p = nl + 1;
    } else r->p = r->end;
    r->line++;
    r->nf = 0;
    for (char *q = line;;) {
        if (r->nf == (int)QL_ARRAY_LEN(r->f)) return true;
        r->f[r->nf++] = q;
        char *tab = strchr(q, '\t');
        if (!tab) break;
        *tab = 0;
        q = tab + 1;
    }
    return true;
}

static ql_status bad(const reader *r, const char *what) {
    return ql_fail(QL_ERR_FORMAT, "%s: line %d: %s", r->path, r->line, what);
}

static ql_status expect(reader *r, const char *key, int nf) {
    if (!next_line(r)) return ql_fail(QL_ERR_FORMAT, "%s: truncated before '%s'", r->path, key);
    if (strcmp(r->f[0], key) != 0 || r->nf != nf) {
        char msg[96];
        snprintf(msg, sizeof msg, "expected '%s' with %d fields", key, nf - 1);
        return bad(r, msg);
    }
    return QL_OK;
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *v) {
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (!*s || *end || errno || x < lo || x > hi) return false;
    *v = x;
    return true;
}

static bool parse_dbl(const char *s, double *v) {
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (!*s || *end) return false;
    *v = x;
    return true;
}

/* The activation ("k") and KV-cache ("q") cell tables share one line shape, in row-major order:
 * TAG row scheme level kld dppl. */
static ql_status read_runtime_cells(reader *r, const char *tag, const ql_sense *s, int rows, int cols,
                                    ql_sense_act_cell *(*cell_at)(const ql_sense *, int, int), const char *what) {
    ql_status st;
    char msg[64];
    for (int i = 0; i < rows; i++)
        for (int a = 0; a < cols; a++) {
            if ((st = expect(r, tag, 6))) return st;
            ql_sense_act_cell *e = cell_at(s, i, a);
            int64_t ri, ai, lv;
            if (!parse_i64(r->f[1], 0, INT32_MAX, &ri) || !parse_i64(r->f[2], 0, INT32_MAX, &ai))
                return bad(r, "bad cell index");
            if (!parse_i64(r->f[3], -1, QL_SENSE_KLD, &lv)) return bad(r, "bad level");
            if (ri != i || ai != a) {
                snprintf(msg, sizeof msg, "%s cells out of order", what);
                return bad(r, msg);
            }
            e->level = (int)lv;
            if (!parse_dbl(r->f[4], &e->kld) || !parse_dbl(r->f[5], &e->dppl)) return bad(r, "bad number");
        }
    return QL_OK;
}

ql_status ql_sense_load(const char *path, ql_sense **out) {
    *out = NULL;
    char *text;
    size_t len;
    ql_status st = ql_read_file(path, &text, &len);
    if (st) return st;
    reader r = {text, text + len, path, 0, {0}, 0};
    ql_sense *s = ql_calloc(1, sizeof *s);
    s->model = ql_strdup("");
    s->calib = ql_strdup("");
    s->stats = ql_strdup("");
    s->imatrix = ql_strdup("");
    int64_t v, v2;
    char magic[40];
    snprintf(magic, sizeof magic, "%s %d", SENSE_MAGIC, QL_SENSE_VERSION);
    if (!next_line(&r) || r.nf != 1 || strncmp(r.f[0], SENSE_MAGIC " ", strlen(SENSE_MAGIC) + 1) != 0) {
        st = ql_fail(QL_ERR_FORMAT, "%s: not a qlab sensitivity file", path);
        goto fail;
    }
    if (strcmp(r.f[0], magic) != 0) {
        st = ql_fail(QL_ERR_FORMAT, "%s: sensitivity file version '%s'; this qlab reads version %d", path,
                     r.f[0] + strlen(SENSE_MAGIC) + 1, QL_SENSE_VERSION);
        goto fail;
    }
#define EXPECT(key, nf)                            \
    do {                                           \
        if ((st = expect(&r, key, nf))) goto fail; \
    } while (0)
#define NUM(str, lo, hi, dst, what)        \
    do {                                   \
        if (!parse_i64(str, lo, hi, &v)) { \
            st = bad(&r, "bad " what);     \
            goto fail;                     \
        }                                  \
        dst = v;                           \
    } while (0)
    EXPECT("model", 2);
    set_str(&s->model, r.f[1]);
    EXPECT("file_bytes", 2);
    NUM(r.f[1], 0, INT64_MAX, s->file_bytes, "file size");
    EXPECT("other", 3);
    NUM(r.f[1], 0, INT64_MAX, s->other_params, "parameter count");
    NUM(r.f[2], 0, INT64_MAX, s->other_bytes, "byte count");
    EXPECT("n_tensors_file", 2);
    NUM(r.f[1], 0, INT64_MAX, s->n_tensors_file, "tensor count");
    EXPECT("calib", 2);
    set_str(&s->calib, r.f[1]);
    EXPECT("tokens", 4);
    NUM(r.f[1], 0, INT64_MAX, s->n_seq, "sequence count");
    NUM(r.f[2], 0, INT64_MAX, s->seq_len, "sequence length");
    {
        char *end;
        errno = 0;
        unsigned long long h = strtoull(r.f[3], &end, 16);
        if (strlen(r.f[3]) != 16 || *end || errno) {
            st = bad(&r, "bad token hash");
            goto fail;
        }
        s->tokens_hash = h;
    }
    EXPECT("stats", 2);
    set_str(&s->stats, r.f[1]);
    EXPECT("imatrix", 2);
    set_str(&s->imatrix, r.f[1]);
    EXPECT("level", 2);
    if (!ql_sense_level_parse(r.f[1], &s->level)) {
        st = bad(&r, "unknown level");
        goto fail;
    }
    EXPECT("base_ppl", 2);
    if (!parse_dbl(r.f[1], &s->base_ppl)) {
        st = bad(&r, "bad base_ppl");
        goto fail;
    }
    EXPECT("seconds", 2);
    if (!parse_dbl(r.f[1], &s->seconds)) {
        st = bad(&r, "bad seconds");
        goto fail;
    }
    EXPECT("candidates", 2);
    NUM(r.f[1], 1, MAX_CANDS, s->n_cand, "candidate count");
    s->cand = ql_calloc((size_t)s->n_cand, sizeof *s->cand);
    for (int c = 0; c < s->n_cand; c++) {
        EXPECT("c", 2);
        const ql_format *f;
        char mname[64];
        if (ql_parse_format_method(r.f[1], &f, mname, sizeof mname) || ql_sense_check_candidate(r.f[1], f, mname)) {
            char msg[400];
            snprintf(msg, sizeof msg, "candidate '%.100s': %.280s", r.f[1], ql_last_error());
            st = bad(&r, msg);
            goto fail;
        }
        s->cand[c] = ql_strdup(r.f[1]);
    }
    EXPECT("tensors", 2);
    {
        int64_t nt;
        NUM(r.f[1], 0, MAX_TENSORS, nt, "tensor count");
        /* each tensor and cell needs a line: bound the counts by the bytes left before allocating */
        if ((size_t)nt * 8 > (size_t)(r.end - r.p)) {
            st = bad(&r, "tensor count larger than the file");
            goto fail;
        }
        s->tensors = ql_calloc((size_t)nt + 1, sizeof *s->tensors);
        for (int t = 0; t < nt; t++) {
            EXPECT("t", 6);
            ql_sense_tensor *te = &s->tensors[t];
            if (!*r.f[1]) {
                st = bad(&r, "empty tensor name");
                goto fail;
            }
            te->name = ql_strdup(r.f[1]);
            s->n_tensors = t + 1;
            NUM(r.f[2], 1, INT64_MAX, te->ncols, "row length");
            NUM(r.f[3], 1, INT64_MAX, te->nrows, "row count");
            NUM(r.f[4], 0, INT64_MAX, te->orig_bytes, "byte count");
            NUM(r.f[5], 0, UINT32_MAX, te->orig_type, "type");
            if (te->nrows > INT64_MAX / te->ncols) {
                st = bad(&r, "tensor too large");
                goto fail;
            }
        }
    }
    EXPECT("cells", 2);
    NUM(r.f[1], 0, INT64_MAX, v2, "cell count");
    if (v2 != (int64_t)s->n_tensors * s->n_cand || (size_t)v2 * 16 > (size_t)(r.end - r.p) + 16) {
        st = bad(&r, "cell count does not match tensors x candidates");
        goto fail;
    }
    s->cells = ql_calloc((size_t)v2 + 1, sizeof *s->cells);
    for (int t = 0; t < s->n_tensors; t++)
        for (int c = 0; c < s->n_cand; c++) {
            EXPECT("m", 9);
            ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            int64_t ti, ci;
            NUM(r.f[1], 0, INT32_MAX, ti, "tensor index");
            NUM(r.f[2], 0, INT32_MAX, ci, "candidate index");
            if (ti != t || ci != c) {
                st = bad(&r, "cells out of order");
                goto fail;
            }
            NUM(r.f[3], -1, INT64_MAX, e->bytes, "byte count");
            NUM(r.f[4], -1, QL_SENSE_KLD, e->level, "level");
            if (!parse_dbl(r.f[5], &e->werr) || !parse_dbl(r.f[6], &e->oerr) || !parse_dbl(r.f[7], &e->kld) ||
                !parse_dbl(r.f[8], &e->dppl)) {
                st = bad(&r, "bad number");
                goto fail;
            }
            int64_t expect_bytes = cand_bytes(s->cand[c], s->tensors[t].ncols, s->tensors[t].nrows);
            if (e->bytes != expect_bytes) {
                st = bad(&r, "byte count disagrees with the format (a different qlab version?)");
                goto fail;
            }
        }
    bool more = next_line(&r);
    if (more && r.nf == 2 && !strcmp(r.f[0], "acts")) {
        NUM(r.f[1], 1, MAX_CANDS, v2, "scheme count");
        char **names = ql_calloc((size_t)v2, sizeof *names);
        int n_names = 0;
        for (int a = 0; a < v2 && !st; a++) {
            ql_act_mode mode;
            float thr;
            if ((st = expect(&r, "a", 2))) break;
            if (ql_act_spec_parse(r.f[1], &mode, &thr) || mode == QL_ACT_NONE) st = bad(&r, "unknown activation scheme");
            else names[n_names++] = ql_strdup(r.f[1]);
        }
        if (!st) ql_sense_set_act(s, names, n_names);
        ql_sense_free_strings(names, n_names);
        if (st) goto fail;
        if ((st = read_runtime_cells(&r, "k", s, s->n_tensors, s->n_act, ql_sense_act_cell_at, "activation")))
            goto fail;
        more = next_line(&r);
    }
    if (more && r.nf == 5 && !strcmp(r.f[0], "kvs")) {
        int64_t nk, nl, nh, hd;
        NUM(r.f[1], 1, MAX_CANDS, nk, "KV scheme count");
        NUM(r.f[2], 1, 1 << 16, nl, "layer count");
        NUM(r.f[3], 1, 1 << 16, nh, "KV head count");
        NUM(r.f[4], 1, 1 << 16, hd, "head dimension");
        char **names = ql_calloc((size_t)nk, sizeof *names);
        int n_names = 0;
        for (int a = 0; a < nk && !st; a++) {
            ql_kv_scheme sc;
            if ((st = expect(&r, "v", 2))) break;
            if (!ql_kv_scheme_parse(r.f[1], &sc) || ql_kv_scheme_is_f32(&sc)) st = bad(&r, "unknown KV-cache scheme");
            else names[n_names++] = ql_strdup(r.f[1]);
        }
        if (!st) ql_sense_set_kv(s, names, n_names, (int)nl, (int)nh, (int)hd);
        ql_sense_free_strings(names, n_names);
        if (st) goto fail;
        if ((st = read_runtime_cells(&r, "q", s, s->kv_layers, s->n_kv, ql_sense_kv_cell_at, "KV")))
            goto fail;
        more = next_line(&r);
    }
    if (!more || r.nf != 1 || strcmp(r.f[0], "end") != 0) {
        st = ql_fail(QL_ERR_FORMAT, "%s: truncated (no 'end' line)", path);
        goto fail;
    }
#undef EXPECT
#undef NUM
    free(text);
    *out = s;
    return QL_OK;
fail:
    free(text);
    ql_sense_free(s);
    return st;
}
