/* cli_calib.c — the calibration-input flags shared by stats, imatrix, quant and sense: either
 * llama.cpp-style consecutive chunks of one text file (--text, --ctx, --chunks), or a calibration
 * set drawn from a mix of sources (--calib SPEC, --samples, --len, --seed, --mode; core/calib.h). */
#include "cli/cli.h"
#include "pipeline/calib.h"
#include "base/parallel.h"
#include "core/ppl.h"
#include "core/stats.h"

#include <stdlib.h>
#include <string.h>

void cli_calib_defaults(cli_calib *ca, int ctx, int chunks) {
    memset(ca, 0, sizeof *ca);
    ca->ctx = ctx;
    ca->chunks = chunks;
    ca->threads = ql_default_threads();
}

int cli_calib_flag(cli_args *a, const char *flag, cli_calib *ca) {
    if (!strcmp(flag, "--text") || !strcmp(flag, "-f")) ca->text = cli_value(a, flag);
    else if (!strcmp(flag, "--calib")) ca->calib = cli_value(a, flag);
    else if (!strcmp(flag, "--samples")) ca->samples = cli_int(a, flag, 1, 1 << 24);
    else if (!strcmp(flag, "--len") || !strcmp(flag, "--ctx") || !strcmp(flag, "-c")) {
        ca->ctx = cli_int(a, flag, 8, 1 << 20);
        ca->ctx_given = true;
    }    else if (!strcmp(flag, "--seed")) ca->seed = (uint64_t)cli_int(a, flag, 0, 1 << 30);
    else if (!strcmp(flag, "--mode")) {
        const char *v = cli_value(a, flag);
        ca->mode = v && !strcmp(v, "docs") ? QL_CALIB_DOCS : QL_CALIB_RANDOM;
    } else if (!strcmp(flag, "--chunks")) ca->chunks = cli_int(a, flag, 1, 1 << 30);
    else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t")) ca->threads = cli_int(a, flag, 1, 256);
    else return 0;
    return 1;
}

/* Consecutive chunks of ctx tokens, the first token of each replaced by BOS (llama-imatrix's input). */
static ql_status text_chunks(const ql_model *m, const cli_calib *ca, int32_t **out, int64_t *n_seq) {
    char *text;
    size_t len;
    int32_t *ids;
    int64_t n;
    ql_status s = ql_read_file(ca->text, &text, &len);
    if (s) return s;
    s = ql_tokenize(m->tok, text, len, true, &ids, &n);
    free(text);
    if (s) return s;
    int64_t chunks = n / ca->ctx;
    if (ca->chunks > 0 && ca->chunks < chunks) chunks = ca->chunks;
    if (chunks < 1) {
        free(ids);
        return ql_fail(QL_ERR_ARG, "%s: %lld tokens, fewer than one chunk of %d", ca->text, (long long)n, ca->ctx);
    }
    int32_t bos = ql_tokenizer_add_bos(m->tok) ? ql_tokenizer_bos(m->tok) : -1;
    if (bos >= 0)
        for (int64_t i = 0; i < chunks; i++) ids[i * ca->ctx] = bos;
    *out = ids;
    *n_seq = chunks;
    return QL_OK;
}

ql_status cli_calib_tokens(const ql_model *m, cli_calib *ca, int32_t **tok, int64_t *n_seq) {
    if (!m->tok) return ql_model_no_tokenizer(m, "calibration needs one");
    ca->ctx = cli_fit_ctx(ca->label ? ca->label : "calib", m, ca->ctx, ca->ctx_given);
    if (ca->ctx < 0) return QL_ERR_ARG; /* ql_last_error says why */
    ca->ctx_given = true; /* decided once */
    if (!ca->calib) return text_chunks(m, ca, tok, n_seq);
    /* a calibration set: N samples of L tokens drawn from a mix of sources (see qlab calib --help) */
    ql_calib_opts co = {.n_samples = ca->samples, .seq_len = ca->ctx, .seed = ca->seed, .mode = ca->mode};
    ql_calib_set *set = NULL;
    ql_status s = ql_calib_build(ca->calib, m->tok, &co, &set);
    if (s) return s;
    *n_seq = set->n_samples;
    *tok = set->tokens;
    set->tokens = NULL;
    ql_calib_free(set);
    return QL_OK;
}

ql_status cli_collect_stats(const struct ql_model *m, const int32_t *tok, int64_t n_seq, int seq_len,
                            const ql_stats_opts *o, const char *label, ql_stats **out) {
    ql_infer *inf = NULL;
    ql_status s = ql_infer_new(m, o->n_threads, &inf);
    if (s) return s;
    ql_progress *bar = cli_progress_bar(label);
    s = ql_stats_collect(inf, tok, n_seq, seq_len, o, bar, out);
    cli_progress_done(bar);
    ql_infer_free(inf);
    return s;
}
