/* sense_dist.c — sensitivity cells over MPI ranks (sense_dist.h): the owner of each cell, the per-cell result
 * messages to rank 0, rank 0's collection and the end of the job. All communication goes through base/dist. */
#include "sensitivity/sense_dist.h"
#include "base/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { TAG_CELL = 41 }; /* one tag: MPI keeps a rank's messages in order, so its "end" follows its cells */
enum { MSG_CELL = 1, MSG_END = 2 };

/* One finished cell, or a rank's end (status and message). Fixed size; ranks share one build (dist.h). */
typedef struct {
    int32_t type, kind, t, c, level, status;
    double werr, oerr, kld, dppl, base_ppl;
    char err[256];
} cell_msg;

struct ql_sense_dist {
    int rank, size;
    int32_t *owner;     /* [n_tensors * n_cand] weight cells, then [n_tensors * n_act]; -1: nothing to measure */
    int n_cand, n_act, n_tensors;
    int64_t total;      /* cells to measure in the whole job */
    int64_t own_done, received;
    bool *ended;        /* [size] rank 0: that rank has said it ended */
    ql_status worker_st;
    char worker_err[300];
    double t0, seconds0;
};

static int32_t *owner_at(ql_sense_dist *d, int kind, int t, int c) {
    return kind == 0 ? &d->owner[(size_t)t * (size_t)d->n_cand + (size_t)c]
                     : &d->owner[(size_t)d->n_tensors * (size_t)d->n_cand + (size_t)t * (size_t)d->n_act + (size_t)c];
}

static bool dist_mine(void *user, int kind, int t, int c) {
    ql_sense_dist *d = user;
    return *owner_at(d, kind, t, c) == d->rank;
}

static ql_status dist_measured(void *user, const ql_sense *s, int kind, int t, int c) {
    ql_sense_dist *d = user;
    d->own_done++;
    if (d->rank == 0) return QL_OK;
    cell_msg m;
    memset(&m, 0, sizeof m);
    m.type = MSG_CELL, m.kind = kind, m.t = t, m.c = c, m.base_ppl = s->base_ppl;
    if (kind == 0) {
        const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
        m.level = e->level, m.werr = e->werr, m.oerr = e->oerr, m.kld = e->kld, m.dppl = e->dppl;
    } else {
        const ql_sense_act_cell *e = ql_sense_act_cell_at(s, t, c);
        m.level = e->level, m.kld = e->kld, m.dppl = e->dppl;
    }
    return ql_dist_send(0, TAG_CELL, &m, sizeof m);
}

/* Rank 0: one message from `src` into s (a cell) or into d (an end). */
static void take(ql_sense_dist *d, ql_sense *s, int src, const cell_msg *m) {
    if (m->type == MSG_END) {
        d->ended[src] = true;
        if (m->status && !d->worker_st) {
            d->worker_st = (ql_status)m->status;
            snprintf(d->worker_err, sizeof d->worker_err, "rank %d: %.256s", src, m->err);
        }
        return;
    }
    /* a cell this rank owns and nobody else: anything else is a message from another job or build */
    bool ok = m->type == MSG_CELL && (m->kind == 0 || m->kind == 1) && m->t >= 0 && m->t < d->n_tensors &&
              m->c >= 0 && m->c < (m->kind == 0 ? d->n_cand : d->n_act) && *owner_at(d, m->kind, m->t, m->c) == src;
    if (!ok) {
        if (!d->worker_st) {
            d->worker_st = QL_ERR_FORMAT;
            snprintf(d->worker_err, sizeof d->worker_err, "rank %d sent a cell it does not own (%d, %d, %d)", src,
                     m->kind, m->t, m->c);
        }
        return;
    }
    if (m->kind == 0) {
        ql_sense_cell *e = ql_sense_cell_at(s, m->t, m->c);
        e->level = m->level, e->werr = m->werr, e->oerr = m->oerr, e->kld = m->kld, e->dppl = m->dppl;
    } else {
        ql_sense_act_cell *e = ql_sense_act_cell_at(s, m->t, m->c);
        e->level = m->level, e->kld = m->kld, e->dppl = m->dppl;
    }
    if (m->base_ppl > 0) s->base_ppl = m->base_ppl; /* every rank computes the same base pass */
    d->received++;
}

/* Rank 0: every message waiting now; how many cells arrived. */
static int drain(ql_sense_dist *d, ql_sense *s) {
    int64_t before = d->received;
    int src;
    size_t n;
    while (ql_dist_poll(TAG_CELL, &src, &n)) {
        cell_msg m;
        size_t got = 0;
        if (n != sizeof m || ql_dist_recv(src, TAG_CELL, &m, sizeof m, &got) || got != sizeof m) {
            if (!d->worker_st) {
                d->worker_st = QL_ERR_IO;
                snprintf(d->worker_err, sizeof d->worker_err, "rank %d: a message of %zu bytes, not %zu", src, n,
                         sizeof m);
            }
            if (n != sizeof m) { /* take it off the queue all the same */
                char *junk = ql_malloc(n ? n : 1);
                ql_dist_recv(src, TAG_CELL, junk, n, &got);
                free(junk);
            }
            continue;
        }
        take(d, s, src, &m);
    }
    return (int)(d->received - before);
}

static int dist_collect(void *user, ql_sense *s) {
    ql_sense_dist *d = user;
    return d->rank == 0 ? drain(d, s) : 0;
}

ql_status ql_sense_dist_begin(ql_sense *s, int level, ql_status rank0_status, int *cand_batch, int *seq_batch,
                              ql_sense_dist **out, ql_sense_share *share) {
    *out = NULL;
    memset(share, 0, sizeof *share);
    int32_t verdict = rank0_status;
    ql_status st = ql_dist_bcast(&verdict, sizeof verdict, 0);
    if (st) return st;
    if (verdict) return ql_dist_rank() == 0 ? (ql_status)verdict
                                            : ql_fail((ql_status)verdict, "rank 0 stopped (see its message)");
    int32_t shape[2] = {*cand_batch > 0 ? *cand_batch : 1, *seq_batch};
    if ((st = ql_dist_bcast(shape, sizeof shape, 0))) return st;
    *cand_batch = shape[0];
    *seq_batch = shape[1];
    const int group = shape[0];
    ql_sense_dist *d = ql_calloc(1, sizeof *d);
    d->rank = ql_dist_rank();
    d->size = ql_dist_size();
    d->n_cand = s->n_cand, d->n_act = s->n_act, d->n_tensors = s->n_tensors;
    size_t n = (size_t)s->n_tensors * (size_t)(s->n_cand + s->n_act);
    d->owner = ql_malloc((n ? n : 1) * sizeof *d->owner);
    d->ended = ql_calloc((size_t)d->size, sizeof *d->ended);
    d->t0 = ql_time_s();
    d->seconds0 = s->seconds;
    if (d->rank == 0) {
        /* What is left, in file order (tensor by tensor), in groups of `group` candidates (one batched pass);
         * the k-th group with something left goes to rank k mod N, turned by t when a tensor has a multiple of N
         * groups, so the groups of one tensor spread over the ranks and no rank gets every cell of one group of
         * candidates (with one group per tensor the ranks take turns by tensor). */
        const int per_tensor = (s->n_cand + group - 1) / group, turn = per_tensor % d->size == 0 && per_tensor > 1;
        int64_t k = 0;
        for (int t = 0; t < s->n_tensors; t++) {
            for (int c0 = 0; c0 < s->n_cand; c0 += group) {
                bool any = false;
                for (int c = c0; c < s->n_cand && c < c0 + group; c++) {
                    const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
                    const bool left = e->bytes >= 0 && e->level < level;
                    *owner_at(d, 0, t, c) = left ? (int32_t)((k + (turn ? t : 0)) % d->size) : -1;
                    any |= left;
                }
                k += any;
            }
            for (int a = 0; a < s->n_act; a++)
                *owner_at(d, 1, t, a) = ql_sense_act_cell_at(s, t, a)->level < 0 ? (int32_t)((k++ + t) % d->size) : -1;
        }
    }
    int64_t sizes[3] = {s->n_tensors, s->n_cand, s->n_act}, mine_sizes[3] = {s->n_tensors, s->n_cand, s->n_act};
    if ((st = ql_dist_bcast(sizes, sizeof sizes, 0))) goto fail;
    if (memcmp(sizes, mine_sizes, sizeof sizes)) {
        st = ql_fail(QL_ERR_ARG, "rank %d sees %lld tensors x %lld candidates (+%lld schemes), rank 0 %lld x %lld (+%lld)",
                     d->rank, (long long)mine_sizes[0], (long long)mine_sizes[1], (long long)mine_sizes[2],
                     (long long)sizes[0], (long long)sizes[1], (long long)sizes[2]);
        goto fail; /* the same command on every rank builds the same skeleton; this one was given another model */
    }
    if ((st = ql_dist_bcast(d->owner, n * sizeof *d->owner, 0))) goto fail;
    for (size_t i = 0; i < n; i++) d->total += d->owner[i] >= 0;
    share->mine = dist_mine;
    share->measured = dist_measured;
    share->collect = dist_collect;
    share->user = d;
    *out = d;
    return QL_OK;
fail:
    ql_sense_dist_free(d);
    return st;
}

static void save_now(ql_sense_dist *d, ql_sense *s, const char *path, ql_status *st) {
    s->seconds = d->seconds0 + (ql_time_s() - d->t0);
    if (!path) return;
    char reason[512];
    snprintf(reason, sizeof reason, "%s", ql_last_error());
    ql_status ss = ql_sense_save(s, path);
    if (ss && !*st) *st = ss;
    else if (*st) ql_fail(*st, "%s", reason); /* a failure's own message survives the save */
}

ql_status ql_sense_dist_end(ql_sense_dist *d, ql_sense *s, ql_status st, const char *path, double interval_s,
                            const ql_progress *progress) {
    if (d->rank != 0) {
        cell_msg m;
        memset(&m, 0, sizeof m);
        m.type = MSG_END;
        m.status = st;
        if (st) snprintf(m.err, sizeof m.err, "%s", ql_last_error());
        ql_status ss = ql_dist_send(0, TAG_CELL, &m, sizeof m);
        return st ? st : ss;
    }
    d->ended[0] = true;
    double last = ql_time_s(), interval = interval_s > 0 ? interval_s : 20.0;
    bool cancelled = false;
    for (;;) {
        drain(d, s);
        bool all = true;
        for (int r = 0; r < d->size; r++) all &= d->ended[r];
        if (all) break;
        if (ql_progress_cancelled(progress)) {
            cancelled = true;
            break;
        }
        ql_progress_report(progress, d->own_done + d->received, d->total, "waiting for the other ranks");
        if (ql_time_s() - last >= interval) {
            ql_status ss = QL_OK;
            save_now(d, s, path, &ss);
            last = ql_time_s();
        }
        struct timespec ts = {0, 2000000}; /* 2 ms: cells take far longer than a poll */
        nanosleep(&ts, NULL);
    }
    ql_progress_report(progress, d->own_done + d->received, d->total, "gathered");
    if (!st && d->worker_st) st = ql_fail(d->worker_st, "%s", d->worker_err);
    if (!st && cancelled) st = ql_fail(QL_ERR_CANCELLED, "cancelled");
    save_now(d, s, path, &st);
    return st;
}

void ql_sense_dist_free(ql_sense_dist *d) {
    if (!d) return;
    free(d->owner);
    free(d->ended);
    free(d);
}
