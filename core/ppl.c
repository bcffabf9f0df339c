/* ppl.c — perplexity / KLD driver and the log-probability file (see ppl.h and docs/formats.md).
 * Log-prob file: "QLLOGP01", u32 n_ctx, u32 n_vocab, u32 n_chunks, u32 first, then n_chunks*n_ctx int32
 * tokens (as evaluated, BOS included), then for every chunk and scored row: f32 min, f32 step,
 * u16[n_vocab] with logp ≈ min + step*q (about 5e-4 resolution, the same trade llama.cpp makes). */
#include "core/ppl.h"
#include "base/parallel.h"
#include "base/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOGP_MAGIC "QLLOGP01"
#define LOGP_HEADER 24

ql_status ql_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return ql_fail(QL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ql_fail(QL_ERR_IO, "%s: not a regular file", path);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return ql_fail(QL_ERR_NOMEM, "%s: too large to read", path);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (n != (size_t)st.st_size) {
        free(buf);
        return ql_fail(QL_ERR_IO, "%s: short read", path);
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return QL_OK;
}

typedef struct {
    const ql_infer *inf;
    const int32_t *tokens;
    int n_ctx, first, n_vocab, n_chunks, base_chunks;
    int32_t bos;
    ql_scratch **scratch;
    float **logits;
    int32_t **chunk_tokens;
    /* per-chunk results, combined in order afterwards */
    double *nll, *nll2, *kld, *kld2, *nll_base;
    int64_t *top1;
    float *kld_tok; /* per scored token */
    /* log-prob files */
    int save_fd;
    const uint8_t *base; /* mapped base file */
    ql_status status;
    pthread_mutex_t lock;
    atomic_int done;
    const ql_progress *progress;
    const ql_ppl_opts *opts;
    int score_threads; /* threads scoring one chunk's rows (one chunk at a time: a device backend, streaming) */
    int64_t chunk0;    /* the chunk the current round of items starts at */
} ppl_ctx;

static size_t row_bytes(int n_vocab) { return 8 + 2 * (size_t)n_vocab; }
/* offset of a chunk's rows in a log-prob file holding file_chunks chunks */
static size_t chunk_off(const ppl_ctx *c, int file_chunks, int chunk) {
    return LOGP_HEADER + (size_t)file_chunks * c->n_ctx * 4 +
           (size_t)chunk * (c->n_ctx - 1 - c->first) * row_bytes(c->n_vocab);
}

static void set_status(ppl_ctx *c, ql_status s) {
    pthread_mutex_lock(&c->lock);
    if (!c->status) c->status = s;
    pthread_mutex_unlock(&c->lock);
}

static void encode_row(const float *logits, int V, uint8_t *out, float *lp) {
    float mx = logits[0];
    for (int i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)(logits[i] - mx));
    float lse = (float)log(sum);
    float mn = 0;
    for (int i = 0; i < V; i++) {
        lp[i] = logits[i] - mx - lse;
        mn = lp[i] < mn ? lp[i] : mn;
    }
    float step = -mn / 65535.0f;
    if (!(step > 0)) step = 1e-12f;
    memcpy(out, &mn, 4);
    memcpy(out + 4, &step, 4);
    uint16_t *q = (uint16_t *)(out + 8);
    for (int i = 0; i < V; i++) {
        float v = (lp[i] - mn) / step + 0.5f;
        q[i] = (uint16_t)(v < 0 ? 0 : v > 65535 ? 65535 : v);
    }
}

static void decode_row(const uint8_t *in, int V, float *lp) {
    float mn, step;
    memcpy(&mn, in, 4);
    memcpy(&step, in + 4, 4);
    const uint8_t *q = in + 8;
    for (int i = 0; i < V; i++) {
        uint16_t u;
        memcpy(&u, q + 2 * i, 2);
        lp[i] = mn + step * u;
    }
    /* renormalize: rounding errors then cost KLD only to second order (self-KLD ~1e-9, not ~1e-4) */
    float mx = lp[0];
    for (int i = 1; i < V; i++) mx = lp[i] > mx ? lp[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)(lp[i] - mx));
    float lse = mx + (float)log(sum);
    for (int i = 0; i < V; i++) lp[i] -= lse;
}

/* One scored row's figures; summed over a chunk's rows in row order, however many threads scored them. */
typedef struct {
    double nll, kld, nllb;
    int top1;
} row_score;

typedef struct {
    const ppl_ctx *c;
    int64_t chunk;
    const float *logits;
    uint8_t *rowbuf; /* --save-logits rows, or NULL */
    row_score *out;
} score_job;

/* Rows [j0, j1) of one chunk: NLL, and with a base its KLD, top-1 agreement and NLL; encoded for --save-logits. */
static void score_rows(void *vjob, int worker, int64_t j0, int64_t j1) {
    (void)worker;
    const score_job *sj = vjob;
    const ppl_ctx *c = sj->c;
    const int n_ctx = c->n_ctx, first = c->first, V = c->n_vocab, rows = n_ctx - 1 - first;
    const int64_t chunk = sj->chunk;
    float *lp = ql_malloc((size_t)V * 2 * sizeof(float)), *lpb = lp + V;
    for (int64_t j = j0; j < j1; j++) {
        const float *lg = sj->logits + (size_t)j * V;
        const int target = c->tokens[chunk * n_ctx + first + j + 1];
        row_score *r = &sj->out[j];
        r->nll = -ql_log_softmax_at(lg, V, target);
        if (sj->rowbuf) encode_row(lg, V, sj->rowbuf + (size_t)j * row_bytes(V), lp);
        if (c->base) {
            decode_row(c->base + chunk_off(c, c->base_chunks, (int)chunk) + (size_t)j * row_bytes(V), V, lpb);
            float mx = lg[0];
            int am = 0, amb = 0;
            for (int i = 1; i < V; i++) {
                if (lg[i] > mx) { mx = lg[i]; am = i; }
                if (lpb[i] > lpb[amb]) amb = i;
            }
            double sum = 0;
            for (int i = 0; i < V; i++) sum += exp((double)(lg[i] - mx));
            double lse = mx + log(sum), k = 0;
            for (int i = 0; i < V; i++) {
                double pb = exp((double)lpb[i]);
                k += pb * ((double)lpb[i] - ((double)lg[i] - lse));
            }
            if (k < 0) k = 0; /* quantized base can give -1e-7 */
            r->kld = k;
            c->kld_tok[chunk * rows + j] = (float)k;
            r->top1 = am == amb;
            r->nllb = -lpb[target];
        }
    }
    free(lp);
}

static void run_chunk(void *vctx, int worker, int64_t item) {
    ppl_ctx *c = vctx;
    const int64_t chunk = c->chunk0 + item;
    if (c->status || ql_progress_cancelled(c->progress)) return;
    const int n_ctx = c->n_ctx, first = c->first, V = c->n_vocab, rows = n_ctx - 1 - first;
    int32_t *tok = c->chunk_tokens[worker];
    memcpy(tok, c->tokens + chunk * n_ctx, (size_t)n_ctx * 4);
    if (c->bos >= 0) tok[0] = c->bos;
    float *logits = c->logits[worker];
    ql_status s = ql_forward(c->inf, c->scratch[worker], tok, n_ctx, first, logits);
    if (s) {
        set_status(c, s);
        return;
    }
    uint8_t *rowbuf = c->save_fd >= 0 ? ql_malloc(row_bytes(V) * (size_t)rows) : NULL;
    row_score *sc = ql_calloc((size_t)(rows > 0 ? rows : 1), sizeof *sc);
    score_job sj = {c, chunk, logits, rowbuf, sc};
    /* a 128k vocabulary makes a row's log-softmax ~0.5 ms: with one chunk at a time (a GPU computes the next
     * one meanwhile only if the host keeps up) every thread scores rows */
    if (c->score_threads > 1 && rows > 1) ql_parallel_for(c->score_threads, rows, score_rows, &sj);
    else score_rows(&sj, 0, 0, rows);
    double nll = 0, nll2 = 0, kld = 0, kld2 = 0, nllb = 0;
    int64_t top1 = 0;
    for (int j = 0; j < rows; j++) {
        nll += sc[j].nll;
        nll2 += sc[j].nll * sc[j].nll;
        if (c->base) {
            kld += sc[j].kld;
            kld2 += sc[j].kld * sc[j].kld;
            top1 += sc[j].top1;
            nllb += sc[j].nllb;
        }
    }
    free(sc);
    if (rowbuf) {
        size_t n = row_bytes(V) * (size_t)rows;
        if (pwrite(c->save_fd, rowbuf, n, (off_t)chunk_off(c, c->n_chunks, (int)chunk)) != (ssize_t)n)
            set_status(c, ql_fail(QL_ERR_IO, "writing log-probabilities failed: %s", strerror(errno)));
        free(rowbuf);
    }
    c->nll[chunk] = nll;
    c->nll2[chunk] = nll2;
    c->kld[chunk] = kld;
    c->kld2[chunk] = kld2;
    c->nll_base[chunk] = nllb;
    c->top1[chunk] = top1;
    int d = atomic_fetch_add(&c->done, 1) + 1;
    pthread_mutex_lock(&c->lock);
    if (c->opts->on_chunk) c->opts->on_chunk(c->opts->on_chunk_user, (int)chunk, rows, nll, nll2, kld, kld2, top1, nllb);
    ql_progress_report(c->progress, d, c->n_chunks, "perplexity");
    pthread_mutex_unlock(&c->lock);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Working memory of one worker: forward-pass scratch, logits of the scored half, the chunk's tokens. */
static double chunk_bytes(const ql_config *c, int n_ctx) {
    return ql_scratch_bytes(c, n_ctx) + 4.0 * (n_ctx - n_ctx / 2) * c->n_vocab + 4.0 * n_ctx;
}

ql_status ql_perplexity(const ql_infer *inf, const int32_t *tokens, int64_t n_tokens, const ql_ppl_opts *o,
                        const ql_progress *progress, ql_ppl_result *res) {
    memset(res, 0, sizeof *res);
    const ql_model *m = ql_infer_model(inf);
    int n_ctx = o->n_ctx > 0 ? o->n_ctx : 512;
    if (n_ctx < 4) return ql_fail(QL_ERR_ARG, "--ctx must be at least 4");
    /* Check the working memory before allocating any: a chunk needs a forward-pass scratch (attention
     * scores are ctx x ctx floats) and the logits of its scored half. Fewer workers when all of them do
     * not fit; a refusal with the figures when one does not. */
    double per_worker = chunk_bytes(&m->cfg, n_ctx), budget = ql_mem_budget_bytes();
    if (per_worker > budget) {
        int fits = 4, hi = n_ctx; /* the largest ctx that fits, by bisection */
        while (hi - fits > 1) {
            int mid = fits + (hi - fits) / 2;
            if (chunk_bytes(&m->cfg, mid) <= budget) fits = mid;
            else hi = mid;
        }
        return ql_fail(QL_ERR_NOMEM,
                       "ctx %d needs %.1f GiB of working memory (attention grows with ctx squared), more than the "
                       "memory budget of %.1f GiB (60%% of RAM, or QL_MEM_BUDGET_MB); use --ctx %d or less",
                       n_ctx, per_worker / 1073741824.0, budget / 1073741824.0, fits);
    }
    int64_t max_chunks = n_tokens / n_ctx;
    if (max_chunks < 1)
        return ql_fail(QL_ERR_ARG, "the text has %lld tokens, fewer than one chunk of %d; use a smaller --ctx",
                       (long long)n_tokens, n_ctx);
    int n_chunks = (int)(o->n_chunks > 0 && o->n_chunks < max_chunks ? o->n_chunks : max_chunks);
    int n_threads = o->n_threads > 0 ? o->n_threads : ql_default_threads();
    int workers = n_threads < n_chunks ? n_threads : n_chunks;
    /* one layer decoded at a time, or one device queue: parallel inside BLAS and the decoder */
    if (ql_infer_streaming(inf) || ql_infer_backend(inf)->serial) workers = 1;
    if (workers * per_worker > budget) workers = (int)(budget / per_worker);
    int blas_threads = n_threads / workers;
    ppl_ctx c = {.inf = inf, .tokens = tokens, .n_ctx = n_ctx, .first = n_ctx / 2, .n_vocab = m->cfg.n_vocab,
                 .n_chunks = n_chunks, .save_fd = -1, .progress = progress, .opts = o,
                 .score_threads = workers == 1 ? n_threads : 1};
    c.bos = m->tok && ql_tokenizer_add_bos(m->tok) ? ql_tokenizer_bos(m->tok) : -1;
    pthread_mutex_init(&c.lock, NULL);
    const int rows = n_ctx - 1 - c.first, V = c.n_vocab;
    ql_status s = QL_OK;
    void *base_map = NULL;
    size_t base_len = 0;
    ql_atomic_file *save = NULL; /* the --save-logits file; workers pwrite on its descriptor */

    if (o->kld_base) {
        if ((s = ql_map_file(o->kld_base, &base_map, &base_len))) return s;
        uint32_t hdr[4];
        if (base_len < LOGP_HEADER || memcmp(base_map, LOGP_MAGIC, 8) != 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: not a qlab log-probability file (write one with --save-logits)", o->kld_base);
            goto out;
        }
        memcpy(hdr, (uint8_t *)base_map + 8, 16);
        if ((int)hdr[0] != n_ctx || (int)hdr[1] != V || (int)hdr[3] != c.first) {
            s = ql_fail(QL_ERR_FORMAT, "%s: made with ctx %u and vocab %u; this run has ctx %d and vocab %d", o->kld_base,
                        hdr[0], hdr[1], n_ctx, V);
            goto out;
        }
        if (hdr[2] == 0 || hdr[2] > INT32_MAX) { /* fuzz_logprobs: 0 chunks indexed kld_tok[-1] */
            s = ql_fail(QL_ERR_FORMAT, "%s: header says it holds %u chunks", o->kld_base, hdr[2]);
            goto out;
        }
        if ((int)hdr[2] < n_chunks) n_chunks = c.n_chunks = (int)hdr[2];
        c.base_chunks = (int)hdr[2]; /* offsets in the base use the file's own chunk count */
        if (base_len != chunk_off(&c, c.base_chunks, c.base_chunks)) {
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated or wrong size", o->kld_base);
            goto out;
        }
        const int32_t *bt = (const int32_t *)((uint8_t *)base_map + LOGP_HEADER);
        for (int64_t i = 0; i < (int64_t)n_chunks * n_ctx; i++) {
            int32_t want = tokens[i];
            if (i % n_ctx == 0 && c.bos >= 0) want = c.bos;
            if (bt[i] != want) {
                s = ql_fail(QL_ERR_FORMAT, "%s: was computed on different tokens (first difference at token %lld)",
                            o->kld_base, (long long)i);
                goto out;
            }
        }
        c.base = base_map;
        res->has_kld = true;
    }
    if (o->save_logits) {
        if ((s = ql_atomic_open(o->save_logits, &save))) goto out;
        c.save_fd = ql_atomic_fd(save);
        uint8_t hdr[LOGP_HEADER];
        uint32_t h[4] = {(uint32_t)n_ctx, (uint32_t)V, (uint32_t)n_chunks, (uint32_t)c.first};
        memcpy(hdr, LOGP_MAGIC, 8);
        memcpy(hdr + 8, h, 16);
        int32_t *tk = ql_malloc((size_t)n_chunks * n_ctx * 4);
        memcpy(tk, tokens, (size_t)n_chunks * n_ctx * 4);
        if (c.bos >= 0)
            for (int i = 0; i < n_chunks; i++) tk[(size_t)i * n_ctx] = c.bos;
        bool ok = pwrite(c.save_fd, hdr, LOGP_HEADER, 0) == LOGP_HEADER &&
                  pwrite(c.save_fd, tk, (size_t)n_chunks * n_ctx * 4, LOGP_HEADER) == (ssize_t)((size_t)n_chunks * n_ctx * 4);
        free(tk);
        if (!ok) {
            s = ql_fail(QL_ERR_IO, "%s: write failed", o->save_logits);
            goto out;
        }
    }
    c.scratch = ql_calloc((size_t)workers, sizeof *c.scratch);
    c.logits = ql_calloc((size_t)workers, sizeof *c.logits);
    c.chunk_tokens = ql_calloc((size_t)workers, sizeof *c.chunk_tokens);
    for (int w = 0; w < workers; w++) {
        c.scratch[w] = ql_scratch_new(inf, n_ctx);
        c.logits[w] = ql_malloc((size_t)(n_ctx - c.first) * V * sizeof(float));
        c.chunk_tokens[w] = ql_malloc((size_t)n_ctx * 4);
    }
    c.nll = ql_calloc((size_t)n_chunks * 6, sizeof(double));
    c.nll2 = c.nll + n_chunks; c.kld = c.nll2 + n_chunks; c.kld2 = c.kld + n_chunks; c.nll_base = c.kld2 + n_chunks;
    c.top1 = ql_calloc((size_t)n_chunks, sizeof(int64_t));
    c.kld_tok = c.base ? ql_calloc((size_t)n_chunks * rows, sizeof(float)) : NULL;
    {
        int saved_blas = ql_infer_set_op_threads(inf, blas_threads);
        double t0 = ql_time_s();
        /* chunks side by side, a thread each; the last n_chunks % workers (fewer than the workers) then share all
         * the threads, instead of leaving threads idle for a whole chunk (3 chunks on 2 threads took 2 chunk-times) */
        const int whole = n_chunks / workers * workers, rest = n_chunks - whole;
        ql_parallel_items(workers, whole, run_chunk, &c);
        if (rest) {
            ql_infer_set_op_threads(inf, QL_MAX(1, n_threads / rest));
            c.score_threads = rest == 1 ? n_threads : 1;
            c.chunk0 = whole;
            ql_parallel_items(rest, rest, run_chunk, &c);
        }
        res->seconds = ql_time_s() - t0;
        ql_infer_set_op_threads(inf, saved_blas);
    }
    if (!c.status && ql_progress_cancelled(progress)) c.status = ql_fail(QL_ERR_CANCELLED, "cancelled");
    s = c.status;
    if (!s) {
        double nll = 0, nll2 = 0, kld = 0, kld2 = 0, nllb = 0;
        int64_t top1 = 0, count = (int64_t)n_chunks * rows;
        for (int i = 0; i < n_chunks; i++) {
            nll += c.nll[i]; nll2 += c.nll2[i]; kld += c.kld[i]; kld2 += c.kld2[i]; nllb += c.nll_base[i];
            top1 += c.top1[i];
        }
        nll /= count;
        nll2 /= count;
        res->ppl = exp(nll);
        double var = nll2 - nll * nll;
        res->ppl_stderr = var > 0 && count > 1 ? sqrt(var / (count - 1)) * res->ppl : 0;
        res->chunks = n_chunks;
        res->tokens_scored = count;
        res->tokens_per_s = res->seconds > 0 ? (double)n_chunks * n_ctx / res->seconds : 0;
        if (c.base) {
            res->kld_mean = kld / count;
            double kv = kld2 / count - res->kld_mean * res->kld_mean;
            res->kld_stderr = kv > 0 && count > 1 ? sqrt(kv / (count - 1)) : 0;
            qsort(c.kld_tok, (size_t)count, sizeof(float), cmp_float);
            res->kld_p99 = c.kld_tok[(int64_t)(0.99 * (double)(count - 1))];
            res->kld_max = c.kld_tok[count - 1];
            res->top1_agreement = (double)top1 / count;
            res->ppl_base = exp(nllb / count);
        }
    }
    /* the file must end where the last chunk's rows end */
    if (save && !s && ftruncate(c.save_fd, (off_t)chunk_off(&c, n_chunks, n_chunks)) != 0)
        s = ql_fail(QL_ERR_IO, "%s: write failed: %s", o->save_logits, strerror(errno));
    if (save && !s) {
        s = ql_atomic_commit(save);
        save = NULL;
    }
out:
    ql_atomic_abort(save); /* no-op after a commit; otherwise nothing is left behind */
    if (c.scratch)
        for (int w = 0; w < workers; w++) {
            ql_scratch_free(c.scratch[w]);
            free(c.logits[w]);
            free(c.chunk_tokens[w]);
        }
    free(c.scratch); free(c.logits); free(c.chunk_tokens);
    free(c.nll); free(c.top1); free(c.kld_tok);
    if (base_map) ql_unmap_file(base_map, base_len);
    pthread_mutex_destroy(&c.lock);
    return s;
}
