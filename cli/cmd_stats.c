/* cmd_stats.c — `qlab stats` (activation statistics file) and `qlab imatrix` (llama.cpp importance
 * matrix). Both read calibration tokens the same way: llama.cpp-style consecutive chunks of a text
 * file (--text, --ctx, --chunks), the way llama-imatrix does it. */
#include "cli/cli.h"
#include "base/dist.h"
#include "pipeline/imatrix.h"
#include "core/model.h"
#include "base/parallel.h"
#include "core/ppl.h"
#include "core/stats.h"
#include "core/infer.h"

#include <stdlib.h>
#include <string.h>

static int collect(const char *cmd, const char *model, cli_calib *ca, bool hessian, bool output, bool per_expert,
                   ql_model **m, ql_stats **st) {
    int32_t *tok = NULL;
    int64_t n_seq = 0;
    /* under mpirun the --threads sequence workers are shared out over the ranks; rank 0 alone gets the sums */
    ql_stats_opts o = {.hessian = hessian, .output = output, .n_threads = ca->threads, .distribute = true,
                       .per_expert = per_expert};
    ca->label = cmd;
    if (ql_model_load(model, m) || cli_calib_tokens(*m, ca, &tok, &n_seq) ||
        cli_collect_stats(*m, tok, n_seq, ca->ctx, &o, cmd, st)) {
        free(tok);
        return cli_fail(cmd);
    }
    if (*st) (*st)->source = ql_strdup(ca->calib ? ca->calib : ca->text);
    free(tok);
    return 0;
}

static const char *STATS_USAGE =
    "usage: qlab stats MODEL (--text FILE [--ctx 512] [--chunks N] | --calib SPEC [--samples 128] [--len 512]\n"
    "                  [--seed S] [--mode random|docs]) -o STATS.qls [--no-hessian] [--output] [--threads N]\n"
    "Runs the calibration text through MODEL (consecutive chunks of --ctx tokens, each starting with BOS) and\n"
    "stores, for the input of every linear layer: Σ x xᵀ (the GPTQ Hessian, double), max|x|, mean|x|, mean x².\n"
    "The file feeds qlab quant --stats (GPTQ, AWQ, SmoothQuant) and qlab sense. Same inputs and thread count:\n"
    "byte-identical file. --output also records the input of output.weight. The file records a fingerprint of\n"
    "MODEL; statistics are refused for any other model (docs/formats.md).\n"
    "Several processes: mpirun -np N qlab stats ... shares the --threads sequence workers (default: every core of\n"
    "every rank) over the ranks; rank 0 adds them up in order and writes the file one process with the same\n"
    "--threads writes, byte for byte.\n"
    CLI_DEVICE_USAGE;

int cmd_stats(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, STATS_USAGE);
    const char *flag, *pos, *model = NULL, *out = NULL;
    cli_calib ca;
    cli_calib_defaults(&ca, 512, 0);
    bool hessian = true, output = false, threads_given = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) model = pos;
        else if (cli_calib_flag(&a, flag, &ca)) threads_given |= !strcmp(flag, "--threads") || !strcmp(flag, "-t");
        else if (!strcmp(flag, "-o") || !strcmp(flag, "--output-file")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--no-hessian")) hessian = false;
        else if (!strcmp(flag, "--output")) output = true;
        else if (cli_device_flag(&a, flag)) continue;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model || (!ca.text && !ca.calib) || !out)
        return cli_usage_error("stats", STATS_USAGE, "needs MODEL, --text FILE or --calib SPEC, and -o OUT");
    if (cli_refuse_input_as_output("stats", out, CLI_INPUTS(model, ca.text))) return 1;
    const bool dist = ql_dist_size() > 1;
    if (dist && !threads_given) /* every core of every rank */
        ca.threads = ql_dist_size() * QL_MAX(1, ql_default_threads() / ql_dist_local_size());
    ql_model *m = NULL;
    ql_stats *st = NULL;
    int rc = collect("stats", model, &ca, hessian, output, false, &m, &st);
    if (dist && rc) { /* the other ranks would wait for this one's sums */
        fflush(NULL);
        ql_dist_abort(rc);
    }
    if (!rc && st && ql_stats_save(st, out)) rc = cli_fail("stats");
    if (!rc && st)
        fprintf(stderr, "qlab stats: wrote %s (%d inputs, %lld sequences x %lld tokens%s)\n", out, st->n,
                (long long)st->n_sequences, (long long)st->seq_len, st->has_hessian ? ", with Hessians" : "");
    ql_stats_free(st);
    ql_model_free(m);
    return rc;
}

/* An expert stack's entry: llama-imatrix keeps one Σ x² and one token count per expert, over the rows routed to it,
 * which the statistics collected per expert (ql_stats_opts.per_expert) hold. */
static void put_experts(ql_imatrix *im, const ql_stats *st, const ql_gguf_tensor *t, int layer, int n_expert, bool down) {
    const int64_t n = t->ne[0];
    ql_imatrix_entry *e = ql_imatrix_entry_get_experts(im, t->name, n, n_expert);
    if (!e) return;
    for (int k = 0; k < n_expert; k++) {
        const ql_stat_entry *se = ql_stats_expert_entry(st, layer, k, down), *cnt = ql_stats_expert_entry(st, layer, k, false);
        if (!se || se->n != n || !cnt) continue;
        memcpy(e->sum2 + (size_t)k * n, se->sum_sq, (size_t)n * sizeof(double));
        e->count += (e->counts[k] = (double)cnt->n_tokens);
    }
}

static const char *IMATRIX_USAGE =
    "usage: qlab imatrix MODEL (--text FILE [--ctx 512] [--chunks N] | --calib SPEC [--samples N] [--len L] [--seed S])\n"
    "                    -o OUT [--process-output] [--threads N]\n"
    "Computes llama.cpp's importance matrix (per weight: Σ x² of each input column, and the token count) over\n"
    "consecutive --ctx chunks of FILE, as llama-imatrix does. OUT ending in .dat writes the legacy format,\n"
    "anything else GGUF; both are read by llama-quantize --imatrix and by qlab quant --imatrix. A mixture-of-\n"
    "experts model gets llama.cpp's per-expert entries (the rows routed to each expert; GGUF only), from a second\n"
    "pass over the text.\n";

int cmd_imatrix(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, IMATRIX_USAGE);
    const char *flag, *pos, *model = NULL, *out = NULL;
    cli_calib ca;
    cli_calib_defaults(&ca, 512, 0);
    bool output = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) model = pos;
        else if (cli_calib_flag(&a, flag, &ca)) continue;
        else if (!strcmp(flag, "-o") || !strcmp(flag, "--output-file")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--process-output")) output = true;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model || (!ca.text && !ca.calib) || !out)
        return cli_usage_error("imatrix", IMATRIX_USAGE, "needs MODEL, --text FILE or --calib SPEC, and -o OUT");
    if (cli_refuse_input_as_output("imatrix", out, CLI_INPUTS(model, ca.text))) return 1;
    if (ql_imatrix_path_is_dat(out)) { /* say so before the pass, not after it */
        ql_model *peek = NULL;
        const bool moe = ql_model_load_weights(model, &peek) == QL_OK && peek->cfg.n_expert > 0;
        ql_model_free(peek);
        if (moe) {
            ql_fail(QL_ERR_ARG, "%s: a mixture of experts gets per-expert entries, which only the GGUF format keeps "
                                "(write a .gguf)", out);
            return cli_fail("imatrix");
        }
    }
    ql_model *m = NULL;
    ql_stats *st = NULL;
    int rc = collect("imatrix", model, &ca, false, output, true, &m, &st);
    if (rc) goto done;
    ql_imatrix *im = ql_imatrix_new();
    ql_imatrix_add_dataset(im, ca.calib ? ca.calib : ca.text);
    im->chunk_count = st->n_sequences;
    im->chunk_size = ca.ctx;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const ql_gguf_tensor *t = &m->gguf->tensors[i];
        const ql_stat_entry *e = ql_stats_for_tensor(st, t->name);
        if (!e || e->n != t->ne[0] || t->ne[2] > 1) continue; /* expert stacks: put_experts, below */
        ql_imatrix_entry *ie = ql_imatrix_entry_get(im, t->name, e->n);
        memcpy(ie->sum2, e->sum_sq, (size_t)e->n * sizeof(double));
        ie->count = (double)e->n_tokens;
    }
    for (int l = 0; m->cfg.n_expert > 0 && l < m->cfg.n_layer; l++) {
        const ql_layer_tensors *L = &m->layers[l];
        if (!L->gate_exps) continue;
        put_experts(im, st, L->gate_exps, l, m->cfg.n_expert, false);
        put_experts(im, st, L->up_exps, l, m->cfg.n_expert, false);
        put_experts(im, st, L->down_exps, l, m->cfg.n_expert, true);
    }
    if (ql_imatrix_save(im, out)) rc = cli_fail("imatrix");
    else fprintf(stderr, "qlab imatrix: wrote %s (%d tensors, %lld chunks of %d)\n", out, im->n, (long long)st->n_sequences, ca.ctx);
    ql_imatrix_free(im);
done:
    ql_stats_free(st);
    ql_model_free(m);
    return rc;
}
