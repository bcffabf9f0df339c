/* stats.c — activation statistics capture, combine, save and load, and the model fingerprint that ties
 * a statistics file to the model it came from (see stats.h).
 * File: "QLSTATS1", u32 version(2), u32 flags (1 = hessian), u64 n_sequences, u64 seq_len, u32 n_entries,
 * u32 source_len, source bytes, u64 fp.shape_norms, u64 fp.weights, u32 model_len, model path bytes;
 * per entry: u32 name_len, name, u64 n, u64 n_tokens, f64 sum_abs[n],
 * f64 sum_sq[n], f32 absmax[n], then (if hessian) f64 xtx[n*n] full symmetric. Little-endian. */
#include "core/stats.h"
#include "base/parallel.h"
#include "base/atomic_file.h"
#include "base/dist.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATS_MAGIC "QLSTATS1"
#define STATS_VERSION 2u /* 2: model fingerprint; 1 had none and is refused */

static const char *POINT_NAMES[] = {"attn_in", "attn_out_in", "ffn_in", "ffn_down_in", "output_in"};

bool ql_stats_input_name(const char *t, char *buf, size_t cap) {
    int layer = -1;
    if (!strcmp(t, "output.weight")) {
        snprintf(buf, cap, "output_in");
        return true;
    }
    /* the role table says which activation each linear reads (attn_qkv: attn_in, a fused ffn_up: ffn_in) */
    const int r = ql_role_of_name(t, &layer);
    const int in = r < 0 ? QL_IN_NONE : (int)ql_role_get((ql_role)r)->input;
    if (in == QL_IN_NONE) return false;
    const char *p = POINT_NAMES[in];
    snprintf(buf, cap, "blk.%d.%s", layer, p);
    return true;
}

static void entry_alloc(ql_stat_entry *e, const char *name, int64_t n, bool hessian) {
    e->name = ql_strdup(name);
    e->n = n;
    e->sum_abs = ql_calloc((size_t)n, sizeof(double));
    e->sum_sq = ql_calloc((size_t)n, sizeof(double));
    e->absmax = ql_calloc((size_t)n, sizeof(float));
    if (hessian) e->xtx = ql_calloc((size_t)(n * n), sizeof(double));
}

static void entry_free(ql_stat_entry *e) {
    free(e->name); free(e->xtx); free(e->sum_abs); free(e->sum_sq); free(e->absmax);
    free(e->mean_abs_f); free(e->mean_sq_f);
}

void ql_stats_free(ql_stats *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) entry_free(&s->e[i]);
    free(s->e);
    free(s->source);
    free(s->model);
    free(s);
}

/* ---------------------------------------------------------------- fingerprint */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* a final avalanche so that summing per-tensor hashes (order-independent: a model's tensors may come in any
 * file order) does not let structured differences cancel */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

void ql_model_fingerprint(const ql_model *m, ql_model_fp *out) {
    const uint64_t seed = 0xcbf29ce484222325ull;
    const ql_config *c = &m->cfg;
    const int32_t dims[] = {c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->n_ff, c->n_vocab, c->head_dim,
                            c->rope_dim, c->rope_neox, c->tied_output};
    const float fl[] = {c->rope_base, c->rope_scale, c->norm_eps};
    uint64_t a = fnv(fnv(fnv(seed, c->arch, strnlen(c->arch, sizeof c->arch)), dims, sizeof dims), fl, sizeof fl);
    uint64_t w = seed;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const ql_gguf_tensor *t = &m->gguf->tensors[i];
        uint64_t h = fnv(seed, t->name, strlen(t->name));
        h = fnv(h, &t->n_dims, sizeof t->n_dims);
        h = fnv(h, t->ne, sizeof(int64_t) * (size_t)(t->n_dims > 0 && t->n_dims <= QL_MAX_DIMS ? t->n_dims : 0));
        bool flat = t->n_dims <= 1;
        if (flat) {
            h = fnv(h, &t->type, sizeof t->type);
            if (t->data) h = fnv(h, t->data, t->nbytes);
            a += mix64(h);
        } else {
            a += mix64(h);
            uint64_t g = fnv(h, &t->type, sizeof t->type);
            const uint8_t *d = t->data;
            const uint64_t win = 64, n_win = 64;
            if (d && t->nbytes <= win * n_win) g = fnv(g, d, t->nbytes);
            else if (d)
                for (uint64_t k = 0; k < n_win; k++) g = fnv(g, d + (t->nbytes - win) * k / (n_win - 1), win);
            w += mix64(g);
        }
    }
    out->shape_norms = mix64(a);
    out->weights = mix64(w);
}

ql_status ql_stats_check_model(const ql_stats *s, const char *stats_path, const ql_model *m, ql_stats_match match,
                               bool *weights_differ) {
    ql_model_fp fp;
    ql_model_fingerprint(m, &fp);
    const bool norms = fp.shape_norms == s->fp.shape_norms, weights = fp.weights == s->fp.weights;
    if (weights_differ) *weights_differ = !weights;
    if (norms && (weights || match == QL_STATS_SAME_ACTIVATIONS)) return QL_OK;
    return ql_fail(QL_ERR_ARG,
                   "%s: statistics collected on another model (%s), not %s: %s differ; collect them on this model "
                   "with qlab stats",
                   stats_path, s->model && s->model[0] ? s->model : "?", m->path ? m->path : "this model",
                   norms ? "the weights" : "the shapes or norm weights");
}

ql_status ql_stats_load_for_model(const char *path, const ql_model *m, ql_stats_match match, ql_stats **out) {
    ql_stats *s = NULL;
    ql_status st = ql_stats_load(path, &s);
    if (!st) st = ql_stats_check_model(s, path, m, match, NULL);
    if (st) {
        ql_stats_free(s);
        return st;
    }
    *out = s;
    return QL_OK;
}

/* per-worker accumulators: one ql_stats with the same layout, plus a double scratch for dsyrk; Σ xᵀx goes to
 * the backend's device accumulators when it has them (xtx_add: the CUDA backend), one per entry, folded into the
 * host's at the end; an entry whose accumulator cannot be made (device memory) stays on the host */
typedef struct {
    ql_stats *acc;
    double *xd;
    int64_t xd_cap;
    int n_layer;
    bool output;
    const ql_backend_ops *ops; /* the infer's backend, when it accumulates Σ xᵀx itself; else NULL */
    void *be;
    void **dev;     /* per entry: the device accumulator, or NULL */
    bool *on_host;  /* per entry: the device refused one, the host accumulates */
    ql_status st;   /* the first device error (the hook cannot return one) */
    char err[256];
} worker_acc;

static int entry_index(int n_layer, int layer, ql_hook_point p) {
    if (p == QL_HOOK_OUTPUT_IN) return 4 * n_layer;
    return layer * 4 + (int)p;
}

/* Per-expert entries: after the layer points and output_in, two per (layer, expert). */
static int expert_entry_index(int base, int n_expert, int layer, int e, bool down) {
    return base + ((layer * n_expert + e) * 2 + (down ? 1 : 0));
}

/* Expert e's entry of layer l (down: its down projection's input), or NULL when s holds none. */
static ql_stat_entry *expert_entry(const ql_stats *s, int layer, int e, bool down) {
    if (s->n_expert <= 0 || layer < 0 || layer >= s->n_layer || e < 0 || e >= s->n_expert) return NULL;
    return &s->e[expert_entry_index(s->expert_base, s->n_expert, layer, e, down)];
}

static void accumulate(ql_stat_entry *e, const float *x, int n, int dim) {
    for (int t = 0; t < n; t++) {
        const float *r = x + (size_t)t * dim;
        for (int i = 0; i < dim; i++) {
            float a = fabsf(r[i]);
            e->sum_abs[i] += a;
            e->sum_sq[i] += (double)r[i] * r[i];
            if (a > e->absmax[i]) e->absmax[i] = a;
        }
    }
    e->n_tokens += n;
}

static void hook(void *user, int layer, ql_hook_point where, const float *x, int n, int dim) {
    worker_acc *w = user;
    if (where == QL_HOOK_EXPERT_IN || where == QL_HOOK_EXPERT_DOWN_IN) {
        const int ex = ql_hook_expert();
        ql_stat_entry *e = expert_entry(w->acc, layer, ex, where == QL_HOOK_EXPERT_DOWN_IN);
        if (e) accumulate(e, x, n, dim);
        return;
    }
    if (where == QL_HOOK_RESIDUAL || where > QL_HOOK_EXPERT_DOWN_IN || (where == QL_HOOK_OUTPUT_IN && !w->output)) return;
    ql_stat_entry *e = &w->acc->e[entry_index(w->n_layer, layer, where)];
    accumulate(e, x, n, dim);
    const int ei = entry_index(w->n_layer, layer, where);
    if (e->xtx && w->ops && !w->on_host[ei] && !w->st) {
        ql_status st = w->dev[ei] ? QL_OK : w->ops->xtx_new(w->be, dim, &w->dev[ei]);
        if (st == QL_ERR_NOMEM) {
            w->on_host[ei] = true; /* no room on the device: this entry on the host */
        } else {
            if (!st) st = w->ops->xtx_add(w->be, w->dev[ei], x, n, dim);
            if (st) {
                w->st = st;
                snprintf(w->err, sizeof w->err, "%s", ql_last_error());
            }
            return;
        }
    }
    if (e->xtx) {
        int64_t need = (int64_t)n * dim;
        if (need > w->xd_cap) {
            w->xd = ql_realloc(w->xd, (size_t)need * sizeof(double));
            w->xd_cap = need;
        }
        for (int64_t i = 0; i < need; i++) w->xd[i] = x[i];
        /* upper triangle of Σ xᵀx in double: BLAS-3, and no float cancellation over many tokens */
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, dim, n, 1.0, w->xd, dim, 1.0, e->xtx, dim);
    }
}

static ql_stats *stats_new(const ql_config *c, bool hessian, bool output, const char *only, bool per_expert) {
    ql_stats *s = ql_calloc(1, sizeof *s);
    const int base = 4 * c->n_layer + (output ? 1 : 0), E = per_expert ? c->n_expert : 0;
    s->n = base + 2 * c->n_layer * E;
    s->expert_base = base;
    s->n_expert = E;
    s->n_layer = c->n_layer;
    s->e = ql_calloc((size_t)s->n, sizeof *s->e);
    s->has_hessian = hessian && !only; /* partial Hessians are for in-memory use, never saved */
    /* ffn_down_in: an expert's width in MoE layers, the dense one in a MoE model's leading dense layers */
    int64_t dims[4] = {c->n_embd, (int64_t)c->n_head * c->head_dim, c->n_embd, ql_ffn_hidden(c)};
    char name[64];
    for (int l = 0; l < c->n_layer; l++)
        for (int p = 0; p < 4; p++) {
            dims[3] = ql_layer_is_moe(c, l) ? c->n_ff_exp : c->n_ff;
            snprintf(name, sizeof name, "blk.%d.%s", l, POINT_NAMES[p]);
            entry_alloc(&s->e[l * 4 + p], name, dims[p], hessian && (!only || !strcmp(only, name)));
        }
    if (output) entry_alloc(&s->e[4 * c->n_layer], "output_in", c->n_embd, hessian && (!only || !strcmp(only, "output_in")));
    for (int l = 0; l < c->n_layer; l++)
        for (int e = 0; e < E; e++)
            for (int down = 0; down < 2; down++) {
                snprintf(name, sizeof name, "blk.%d.expert_%s.%d", l, down ? "down_in" : "in", e);
                entry_alloc(&s->e[expert_entry_index(base, E, l, e, down)], name, down ? c->n_ff_exp : c->n_embd, false);
            }
    return s;
}

const ql_stat_entry *ql_stats_expert_entry(const ql_stats *s, int layer, int e, bool down) {
    return expert_entry(s, layer, e, down);
}

typedef struct {
    const ql_infer *inf;
    const int32_t *tokens;
    int64_t n_seq, own_seq; /* own_seq: sequences of this rank's workers (the progress total) */
    int seq_len, workers;
    int rank, size; /* workers are shared out over MPI ranks: local worker k is worker rank + k * size */
    worker_acc *acc;
    ql_status status;
    const ql_progress *progress;
    int64_t done;
    pthread_mutex_t lock;
} collect_ctx;

/* Local workers b..e-1, one after another (one each when every worker has its thread). */
static void collect_worker(collect_ctx *c, int local);
static void collect_range(void *vctx, int thread, int64_t b, int64_t e) {
    (void)thread;
    for (int64_t local = b; local < e; local++) collect_worker(vctx, (int)local);
}

static void collect_worker(collect_ctx *c, int local) {
    const int worker = c->rank + local * c->size;
    ql_scratch *sc = ql_scratch_new(c->inf, c->seq_len);
    ql_scratch_set_hook(sc, hook, &c->acc[worker]);
    /* the output layer's input is only seen when logits are computed */
    const bool out = c->acc[worker].output;
    float *logits = out ? ql_malloc((size_t)c->seq_len * ql_infer_model(c->inf)->cfg.n_vocab * sizeof(float)) : NULL;
    /* static assignment: worker w takes sequences w, w+W, ... (deterministic sums) */
    for (int64_t i = worker; i < c->n_seq; i += c->workers) {
        if (c->status || ql_progress_cancelled(c->progress)) break;
        ql_status s = ql_forward(c->inf, sc, c->tokens + i * c->seq_len, c->seq_len, out ? 0 : c->seq_len, logits);
        pthread_mutex_lock(&c->lock);
        if (s && !c->status) c->status = s;
        c->done++;
        ql_progress_report(c->progress, c->done, c->own_seq, "statistics");
        pthread_mutex_unlock(&c->lock);
    }
    free(logits);
    ql_scratch_free(sc);
}

static void finish(ql_stats *s) {
    for (int i = 0; i < s->n; i++) {
        ql_stat_entry *e = &s->e[i];
        free(e->mean_abs_f);
        free(e->mean_sq_f);
        e->mean_abs_f = ql_malloc((size_t)e->n * sizeof(float));
        e->mean_sq_f = ql_malloc((size_t)e->n * sizeof(float));
        double inv = e->n_tokens ? 1.0 / (double)e->n_tokens : 0;
        for (int64_t j = 0; j < e->n; j++) {
            e->mean_abs_f[j] = (float)(e->sum_abs[j] * inv);
            e->mean_sq_f[j] = (float)(e->sum_sq[j] * inv);
        }
        if (e->xtx)
            for (int64_t r = 0; r < e->n; r++)
                for (int64_t c = 0; c < r; c++) e->xtx[r * e->n + c] = e->xtx[c * e->n + r];
    }
}

/* ---- statistics over MPI ranks (ql_stats_opts.distribute): one status, then each worker's sums ---- */

enum { TAG_STATS = 42 };

static ql_status send_workers(collect_ctx *c, ql_status st) {
    if (c->rank >= c->workers) return st; /* fewer workers than ranks: this one had none, rank 0 expects nothing */
    int32_t head[2] = {st, 0};
    ql_status ss = ql_dist_send_all(0, TAG_STATS, head, sizeof head);
    for (int w = c->rank; !st && !ss && w < c->workers; w += c->size) {
        const ql_stats *a = c->acc[w].acc;
        for (int i = 0; i < a->n && !ss; i++) {
            const ql_stat_entry *e = &a->e[i];
            ss = ql_dist_send_all(0, TAG_STATS, &e->n_tokens, sizeof e->n_tokens);
            if (!ss) ss = ql_dist_send_all(0, TAG_STATS, e->sum_abs, (size_t)e->n * sizeof *e->sum_abs);
            if (!ss) ss = ql_dist_send_all(0, TAG_STATS, e->sum_sq, (size_t)e->n * sizeof *e->sum_sq);
            if (!ss) ss = ql_dist_send_all(0, TAG_STATS, e->absmax, (size_t)e->n * sizeof *e->absmax);
            if (!ss && e->xtx) ss = ql_dist_send_all(0, TAG_STATS, e->xtx, (size_t)(e->n * e->n) * sizeof *e->xtx);
        }
    }
    return st ? st : ss;
}

/* Worker w's sums from its rank into into (laid out as this rank's); the rank's status comes before its first. */
static ql_status recv_worker(collect_ctx *c, int w, ql_stats *into) {
    const int src = w % c->size;
    if (w < c->size) { /* the first worker of that rank */
        int32_t head[2];
        ql_status st = ql_dist_recv_all(src, TAG_STATS, head, sizeof head);
        if (st) return st;
        if (head[0]) return ql_fail((ql_status)head[0], "statistics: rank %d failed (see its message)", src);
    }
    for (int i = 0; i < into->n; i++) {
        ql_stat_entry *e = &into->e[i];
        ql_status st = ql_dist_recv_all(src, TAG_STATS, &e->n_tokens, sizeof e->n_tokens);
        if (!st) st = ql_dist_recv_all(src, TAG_STATS, e->sum_abs, (size_t)e->n * sizeof *e->sum_abs);
        if (!st) st = ql_dist_recv_all(src, TAG_STATS, e->sum_sq, (size_t)e->n * sizeof *e->sum_sq);
        if (!st) st = ql_dist_recv_all(src, TAG_STATS, e->absmax, (size_t)e->n * sizeof *e->absmax);
        if (!st && e->xtx) st = ql_dist_recv_all(src, TAG_STATS, e->xtx, (size_t)(e->n * e->n) * sizeof *e->xtx);
        if (st) return st;
    }
    return QL_OK;
}

/* Rank 0's summed (not yet finished) statistics into every rank's s, after rank 0's status: all_ranks. */
static ql_status share_sums(ql_stats *s, ql_status st) {
    int32_t verdict = st;
    ql_status bs = ql_dist_bcast(&verdict, sizeof verdict, 0);
    if (bs) return bs;
    if (verdict) return ql_dist_rank() == 0 ? (ql_status)verdict
                                            : ql_fail((ql_status)verdict, "statistics: rank 0 failed (see its message)");
    for (int i = 0; i < s->n && !bs; i++) {
        ql_stat_entry *e = &s->e[i];
        bs = ql_dist_bcast_all(&e->n_tokens, sizeof e->n_tokens, 0);
        if (!bs) bs = ql_dist_bcast_all(e->sum_abs, (size_t)e->n * sizeof *e->sum_abs, 0);
        if (!bs) bs = ql_dist_bcast_all(e->sum_sq, (size_t)e->n * sizeof *e->sum_sq, 0);
        if (!bs) bs = ql_dist_bcast_all(e->absmax, (size_t)e->n * sizeof *e->absmax, 0);
        if (!bs && e->xtx) bs = ql_dist_bcast_all(e->xtx, (size_t)(e->n * e->n) * sizeof *e->xtx, 0);
    }
    return bs;
}

/* The sums become statistics of the model inf runs: counts, fingerprint, means, the mirrored Hessian. */
static ql_status stats_done(ql_stats *s, const ql_infer *inf, int64_t n_seq, int seq_len, ql_stats **out) {
    s->n_sequences = n_seq;
    s->seq_len = seq_len;
    const ql_model *m = ql_infer_model(inf);
    ql_model_fingerprint(m, &s->fp);
    s->model = ql_strdup(m->path ? m->path : "");
    finish(s);
    *out = s;
    return QL_OK;
}

ql_status ql_stats_collect(const ql_infer *inf, const int32_t *tokens, int64_t n_seq, int seq_len,
                           const ql_stats_opts *o, const ql_progress *progress, ql_stats **out) {
    const ql_config *c = &ql_infer_model(inf)->cfg;
    int workers = o->n_threads > 0 ? o->n_threads : 1;
    if (workers > n_seq) workers = (int)(n_seq > 0 ? n_seq : 1);
    /* every worker accumulates its own copy (sums, and with Hessians an n x n double matrix per input) and
     * runs its own pass: checked against the memory budget before any of it is allocated */
    const int64_t dims[4] = {c->n_embd, (int64_t)c->n_head * c->head_dim, c->n_embd, ql_ffn_hidden(c)};
    double per_worker = ql_scratch_bytes(c, seq_len), hess = 0;
    for (int p = 0; p < 4; p++) {
        per_worker += (double)c->n_layer * 32.0 * (double)dims[p];
        if (o->hessian && !o->only) hess += (double)c->n_layer * 8.0 * (double)dims[p] * (double)dims[p];
    }
    if (o->hessian && o->only) /* one input's Hessian: at most the widest */
        hess = 8.0 * (double)QL_MAX(dims[1], dims[3]) * (double)QL_MAX(QL_MAX(dims[0], dims[1]), dims[3]);
    else if (o->hessian && o->output)
        hess += 8.0 * (double)c->n_embd * (double)c->n_embd;
    per_worker += hess;
    if (o->per_expert) /* sums, squares, max and the two means of every expert's inputs */
        per_worker += 32.0 * c->n_layer * c->n_expert * (double)(c->n_embd + c->n_ff_exp);
    /* under mpirun a rank holds its own workers, plus one more for the sums it receives (rank 0) or is sent */
    const int rank = o->distribute ? ql_dist_rank() : 0, size = o->distribute ? ql_dist_size() : 1;
    const int n_local = workers > rank ? (workers - rank + size - 1) / size : 0;
    const int held = n_local + (size > 1);
    char what[200];
    snprintf(what, sizeof what, "statistics%s over %d workers (--threads; %.1f MiB of Hessians each)",
             o->hessian ? " with Hessians" : "", held, hess / 1048576.0);
    ql_status ms = ql_mem_check(per_worker * held, what,
                                o->hessian ? "use fewer --threads, or --no-hessian where no method needs Hessians"
                                           : "use fewer --threads or a shorter --ctx");
    if (ms) return ms;
    collect_ctx ctx = {.inf = inf, .tokens = tokens, .n_seq = n_seq, .seq_len = seq_len, .workers = workers,
                       .progress = progress, .rank = rank, .size = size};
    /* every worker keeps its own accumulators (on the device when the backend has them) */
    const ql_backend_ops *ops = ql_infer_backend(inf);
    pthread_mutex_init(&ctx.lock, NULL);
    ctx.acc = ql_calloc((size_t)workers, sizeof *ctx.acc);
    for (int w = 0; w < workers; w++) {
        if (w % ctx.size != ctx.rank) continue; /* another rank's worker */
        ctx.own_seq += n_seq > w ? (n_seq - w + workers - 1) / workers : 0;
        ctx.acc[w].acc = stats_new(c, o->hessian, o->output, o->only, o->per_expert);
        ctx.acc[w].n_layer = c->n_layer;
        ctx.acc[w].output = o->output;
        if (ops->xtx_add) {
            ctx.acc[w].ops = ops;
            ctx.acc[w].be = ql_infer_backend_context(inf);
            ctx.acc[w].dev = ql_calloc((size_t)ctx.acc[w].acc->n, sizeof(void *));
            ctx.acc[w].on_host = ql_calloc((size_t)ctx.acc[w].acc->n, sizeof(bool));
        }
    }
    /* A device backend (serial) takes one pass at a time anyway; concurrent passes would also make a streamed
     * model refill its two layer buffers back and forth. Its workers run one after another, each with BLAS's
     * threads for the accumulators that live on the host. */
    int saved = ql_blas_get_threads();
    if (!ops->serial) ql_blas_set_threads(1);
    if (n_local > 0) ql_parallel_for(ops->serial ? 1 : n_local, n_local, collect_range, &ctx);
    ql_blas_set_threads(saved);
    ql_status st = ctx.status;
    /* the device accumulators into the host's (which saw none of their tokens' Σ xᵀx) */
    for (int w = 0; w < workers; w++) {
        worker_acc *a = &ctx.acc[w];
        if (!st && a->st) st = ql_fail(a->st, "%s", a->err);
        for (int i = 0; a->dev && i < a->acc->n; i++)
            if (a->dev[i]) {
                ql_status gs = st ? QL_OK : ops->xtx_get(a->be, a->dev[i], a->acc->e[i].xtx);
                if (gs && !st) st = gs;
                ops->xtx_free(a->be, a->dev[i]);
            }
        free(a->dev);
        free(a->on_host);
    }
    if (!st && ql_progress_cancelled(progress)) st = ql_fail(QL_ERR_CANCELLED, "cancelled");
    if (ctx.size > 1 && ctx.rank != 0) { /* hand this rank's workers to rank 0, in worker order */
        st = send_workers(&ctx, st);
        for (int w = 0; w < workers; w++) {
            ql_stats_free(ctx.acc[w].acc);
            free(ctx.acc[w].xd);
        }
        free(ctx.acc);
        pthread_mutex_destroy(&ctx.lock);
        *out = NULL;
        if (!o->all_ranks) return st;
        ql_stats *s = stats_new(c, o->hessian, o->output, o->only, o->per_expert);
        ql_status bs = share_sums(s, QL_OK);
        if (!st) st = bs;
        if (st) {
            ql_stats_free(s);
            return st;
        }
        return stats_done(s, inf, n_seq, seq_len, out);
    }
    ql_stats *s = ctx.acc[0].acc;
    for (int w = 1; w < workers; w++) {
        if (!ctx.acc[w].acc && !st) { /* another rank's worker: its sums arrive in this order */
            ctx.acc[w].acc = stats_new(c, o->hessian, o->output, o->only, o->per_expert);
            st = recv_worker(&ctx, w, ctx.acc[w].acc);
        }
        ql_stats *t = ctx.acc[w].acc;
        if (!t) continue;
        for (int i = 0; i < s->n; i++) {
            ql_stat_entry *a = &s->e[i], *b = &t->e[i];
            a->n_tokens += b->n_tokens;
            for (int64_t j = 0; j < a->n; j++) {
                a->sum_abs[j] += b->sum_abs[j];
                a->sum_sq[j] += b->sum_sq[j];
                if (b->absmax[j] > a->absmax[j]) a->absmax[j] = b->absmax[j];
            }
            if (a->xtx)
                for (int64_t j = 0; j < a->n * a->n; j++) a->xtx[j] += b->xtx[j];
        }
        ql_stats_free(t);
    }
    for (int w = 0; w < workers; w++) free(ctx.acc[w].xd);
    free(ctx.acc);
    pthread_mutex_destroy(&ctx.lock);
    if (ctx.size > 1 && o->all_ranks) st = share_sums(s, st);
    if (st) {
        ql_stats_free(s);
        return st;
    }
    return stats_done(s, inf, n_seq, seq_len, out);
}

const ql_stat_entry *ql_stats_for_tensor(const ql_stats *s, const char *tensor_name) {
    char name[96];
    if (!ql_stats_input_name(tensor_name, name, sizeof name)) return NULL;
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].name, name)) return &s->e[i];
    return NULL;
}

void ql_stats_view(const ql_stat_entry *e, ql_input_stats *v) {
    v->n = e->n;
    v->n_tokens = e->n_tokens;
    v->xtx = e->xtx;
    v->absmax = e->absmax;
    v->mean_abs = e->mean_abs_f;
    v->mean_sq = e->mean_sq_f;
}

/* ---------------------------------------------------------------- file */

ql_status ql_stats_save(const ql_stats *s, const char *path) {
    ql_atomic_file *af;
    ql_status st = ql_atomic_open(path, &af);
    if (st) return st;
    FILE *f = ql_atomic_stream(af); /* write errors are sticky in ferror: the commit reports them */
    uint32_t version = STATS_VERSION, flags = s->has_hessian ? 1 : 0, n = (uint32_t)s->n;
    uint64_t nseq = (uint64_t)s->n_sequences, slen = (uint64_t)s->seq_len;
    const char *src = s->source ? s->source : "";
    uint32_t srcl = (uint32_t)strlen(src);
    fwrite(STATS_MAGIC, 1, 8, f);
    fwrite(&version, 4, 1, f); fwrite(&flags, 4, 1, f); fwrite(&nseq, 8, 1, f); fwrite(&slen, 8, 1, f);
    fwrite(&n, 4, 1, f); fwrite(&srcl, 4, 1, f); fwrite(src, 1, srcl, f);
    const char *model = s->model ? s->model : "";
    uint32_t ml = (uint32_t)strlen(model);
    fwrite(&s->fp.shape_norms, 8, 1, f); fwrite(&s->fp.weights, 8, 1, f);
    fwrite(&ml, 4, 1, f); fwrite(model, 1, ml, f);
    for (int i = 0; i < s->n; i++) {
        const ql_stat_entry *e = &s->e[i];
        uint32_t nl = (uint32_t)strlen(e->name);
        uint64_t dn = (uint64_t)e->n, nt = (uint64_t)e->n_tokens;
        fwrite(&nl, 4, 1, f); fwrite(e->name, 1, nl, f); fwrite(&dn, 8, 1, f); fwrite(&nt, 8, 1, f);
        fwrite(e->sum_abs, 8, (size_t)e->n, f); fwrite(e->sum_sq, 8, (size_t)e->n, f);
        fwrite(e->absmax, 4, (size_t)e->n, f);
        if (s->has_hessian) fwrite(e->xtx, 8, (size_t)(e->n * e->n), f);
    }
    return ql_atomic_commit(af);
}

typedef struct { const uint8_t *p; size_t size, pos; const char *path; } rd;
static bool take(rd *r, void *dst, size_t n) {
    if (n > r->size - r->pos) return false;
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return true;
}

ql_status ql_stats_load(const char *path, ql_stats **out) {
    void *map;
    size_t len;
    ql_status st = ql_map_file(path, &map, &len);
    if (st) return st;
    rd r = {map, len, 0, path};
    char magic[8];
    uint32_t version = 0, flags = 0, n = 0, srcl = 0;
    uint64_t nseq = 0, slen = 0;
    ql_stats *s = NULL;
    if (!take(&r, magic, 8) || memcmp(magic, STATS_MAGIC, 8) != 0) {
        st = ql_fail(QL_ERR_FORMAT, "%s: not a qlab statistics file", path);
        goto out;
    }
    if (!take(&r, &version, 4) || !take(&r, &flags, 4) || !take(&r, &nseq, 8) || !take(&r, &slen, 8) ||
        !take(&r, &n, 4) || !take(&r, &srcl, 4)) {
        st = ql_fail(QL_ERR_FORMAT, "%s: truncated header", path);
        goto out;
    }
    if (version == 1) {
        st = ql_fail(QL_ERR_FORMAT,
                     "%s: statistics file version 1 records no model fingerprint; collect it again with qlab stats",
                     path);
        goto out;
    }
    if (version != STATS_VERSION || srcl > len - r.pos || n > (len - r.pos) / 20) {
        st = ql_fail(QL_ERR_FORMAT, "%s: bad or truncated header (version %u)", path, version);
        goto out;
    }
    s = ql_calloc(1, sizeof *s);
    s->has_hessian = flags & 1;
    s->n_sequences = (int64_t)nseq;
    s->seq_len = (int64_t)slen;
    s->source = ql_malloc(srcl + 1);
    take(&r, s->source, srcl);
    s->source[srcl] = 0;
    uint32_t ml = 0;
    if (!take(&r, &s->fp.shape_norms, 8) || !take(&r, &s->fp.weights, 8) || !take(&r, &ml, 4) || ml > len - r.pos) {
        st = ql_fail(QL_ERR_FORMAT, "%s: truncated model fingerprint", path);
        goto out;
    }
    s->model = ql_malloc(ml + 1);
    take(&r, s->model, ml);
    s->model[ml] = 0;
    s->e = ql_calloc(n, sizeof *s->e);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nl;
        uint64_t dn, nt;
        char name[256];
        if (!take(&r, &nl, 4) || nl == 0 || nl >= sizeof name || !take(&r, name, nl) || !take(&r, &dn, 8) ||
            !take(&r, &nt, 8)) {
            st = ql_fail(QL_ERR_FORMAT, "%s: entry %u: truncated", path, i);
            goto out;
        }
        name[nl] = 0;
        /* every array must fit in what remains before anything is allocated */
        uint64_t per = 8 + 8 + 4, rem = len - r.pos;
        if (dn == 0 || dn > (1u << 20) || dn * per > rem || (s->has_hessian && dn * dn > (rem - dn * per) / 8)) {
            st = ql_fail(QL_ERR_FORMAT, "%s: entry '%s' claims %llu features, more than the file holds", path, name,
                         (unsigned long long)dn);
            goto out;
        }
        ql_stat_entry *e = &s->e[s->n++];
        entry_alloc(e, name, (int64_t)dn, s->has_hessian);
        e->n_tokens = (int64_t)nt;
        take(&r, e->sum_abs, 8 * dn);
        take(&r, e->sum_sq, 8 * dn);
        take(&r, e->absmax, 4 * dn);
        if (s->has_hessian) take(&r, e->xtx, 8 * dn * dn);
    }
    if (r.pos != len) {
        st = ql_fail(QL_ERR_FORMAT, "%s: %zu unexpected bytes at the end", path, len - r.pos);
        goto out;
    }
    finish(s);
out:
    ql_unmap_file(map, len);
    if (st) {
        ql_stats_free(s);
        return st;
    }
    *out = s;
    return QL_OK;
}
