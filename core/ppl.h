/* ppl.h — perplexity and KL divergence computed the way llama.cpp's perplexity tool does: the whole
 * text tokenized with BOS, cut into chunks of n_ctx tokens, the first token of each chunk replaced by
 * BOS, only the second half of each chunk scored. Chunks run in parallel (one per worker, each with
 * single-threaded BLAS); sums are combined in chunk order so results do not depend on thread count. */
#ifndef QL_PPL_H
#define QL_PPL_H

#include "core/infer.h"

typedef struct {
    int n_ctx;              /* default 512 */
    int n_chunks;           /* <= 0: all */
    int n_threads;
    const char *save_logits; /* write the log-probabilities of every scored token (for --kld-base) */
    const char *kld_base;    /* compare against a file written by save_logits */
    /* optional: called after each chunk (serialised, in completion order) with that chunk's sums over
     * its n_scored tokens, so a caller can show a running estimate; kld, top1 and nll_base (the base's
     * negative log-likelihood of the same tokens) are 0 without kld_base */
    void (*on_chunk)(void *user, int chunk, int64_t n_scored, double nll, double nll2, double kld, double kld2,
                     int64_t top1, double nll_base);
    void *on_chunk_user;
} ql_ppl_opts;

typedef struct {
    double ppl, ppl_stderr;
    int chunks;
    int64_t tokens_scored;
    double seconds, tokens_per_s; /* tokens_per_s counts all evaluated tokens, as llama.cpp does */
    bool has_kld;
    double kld_mean, kld_stderr, kld_p99, kld_max, top1_agreement, ppl_base;
} ql_ppl_result;

ql_status ql_perplexity(const ql_infer *inf, const int32_t *tokens, int64_t n_tokens, const ql_ppl_opts *opts,
                        const ql_progress *progress, ql_ppl_result *res);

/* Reads a whole text file into a malloc'ed, NUL-terminated buffer (errors name the file). */
ql_status ql_read_file(const char *path, char **data, size_t *len);

#endif
