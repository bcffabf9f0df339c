/* cmd_sense.c — `qlab sense` (measure per-tensor sensitivity), `qlab plan` (allocate bits to a target
 * and write a plan), `qlab pareto` (the predicted error-vs-BPW frontier) and `qlab sense-diff` (how two
 * calibration sets rank the tensors). See docs/sensitivity.md. */
#include "cli/cli.h"
#include "core/kv_cache.h"
#include "sensitivity/allocate.h"
#include "pipeline/calib.h"
#include "pipeline/imatrix.h"
#include "methods/method.h"
#include "core/model.h"
#include "base/parallel.h"
#include "pipeline/plan.h"
#include "core/ppl.h"
#include "sensitivity/sense.h"
#include "sensitivity/sense_dist.h"
#include "base/dist.h"
#include "core/stats.h"
#include "pipeline/export.h"
#include "pipeline/quantize.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------- progress with ETA ---------------- */

typedef struct {
    ql_progress p;
    const char *label;
    double t0, tlast, tstart; /* tstart: first cell (the base pass is not a cell) */
    int64_t dstart;
    bool tty;
    int last_pct;
} eta_bar;

static void fmt_secs(char *buf, size_t cap, double s) {
    if (s < 0 || !isfinite(s)) snprintf(buf, cap, "?");
    else if (s < 90) snprintf(buf, cap, "%.0fs", s);
    else if (s < 5400) snprintf(buf, cap, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
    else snprintf(buf, cap, "%.0fh%02.0fm", floor(s / 3600), fmod(s / 60, 60));
}

static void eta_draw(void *user, int64_t done, int64_t total, const char *phase) {
    eta_bar *b = user;
    double now = ql_time_s();
    if (b->tstart == 0 && done > 0) { /* rate from the first measured cell on */
        b->tstart = b->tlast;
        b->dstart = done - 1;
    }
    if (done == 0) b->tlast = now;
    int pct = total > 0 ? (int)(100.0 * (double)done / (double)total) : 0;
    bool line_due = b->tty ? now - b->t0 >= 0 && (now - b->tlast >= 0.2 || done == total)
                           : (pct / 10 > b->last_pct / 10 || done == total || now - b->tlast >= 30);
    if (!line_due) return;
    if (done > 0) b->tlast = now;
    b->last_pct = pct;
    char el[32], eta[32];
    fmt_secs(el, sizeof el, now - b->t0);
    double rate = (done > b->dstart && b->tstart > 0) ? (now - b->tstart) / (double)(done - b->dstart) : -1;
    fmt_secs(eta, sizeof eta, rate > 0 ? rate * (double)(total - done) : -1);
    if (b->tty) {
        fprintf(stderr, "\r%s %3d%% %lld/%lld  %-44.44s  %s elapsed, ETA %s   ", b->label, pct,
                (long long)done, (long long)total, phase ? phase : "", el, eta);
        fflush(stderr);
    } else
        fprintf(stderr, "%s: %3d%% %lld/%lld %s (%s elapsed, ETA %s)\n", b->label, pct, (long long)done,
                (long long)total, phase ? phase : "", el, eta);
}

static ql_progress *eta_bar_new(const char *label) {
    eta_bar *b = ql_calloc(1, sizeof *b);
    b->p.fn = eta_draw;
    b->p.user = b;
    b->p.cancel = &cli_cancel_flag;
    b->label = label;
    b->t0 = b->tlast = ql_time_s();
    b->tty = isatty(2);
    b->last_pct = -10;
    return &b->p;
}

static void eta_bar_done(ql_progress *p) {
    eta_bar *b = (eta_bar *)p;
    if (b->tty) fprintf(stderr, "\r%*s\r", 110, "");
    free(b);
}

/* ---------------- qlab sense ---------------- */

static const char *SENSE_USAGE =
    "usage: qlab sense MODEL (--calib SPEC [--samples 32] [--len 256] [--seed S] [--mode random|docs]\n"
    "                        | --text FILE [--ctx 256] [--chunks 32])\n"
    "                  --candidates LIST [--level weight|output|kld] [--stats FILE] [--imatrix FILE]\n"
    "                  [--act-candidates LIST] [--kv-candidates LIST] [--threads N] [--checkpoint-every S]\n"
    "                  [--cand-batch N] -o SENS.qss [--force]\n"
    "       qlab sense MODEL (--calib ... | --text ...) --check-plan PLAN.ini [--json]\n"
    "Measures, for every 2-D weight of MODEL and every candidate, the exact bits and the error of\n"
    "quantizing that tensor alone, at three levels (each includes the cheaper ones):\n"
    "  weight  relative ||W - Q(W)||^2\n"
    "  output  tr(dW H dW^T) / tr(W H W^T), H = sum x x^T of the layer input over the calibration tokens\n"
    "  kld     KL divergence (and delta PPL) of the whole model on the calibration tokens (default)\n"
    "LIST: comma-separated FORMAT[+METHOD]; FORMAT may be a glob, e.g.\n"
    "  'q4_0,q5_0,int?_g32_mse,f16,int4_g32+gptq'\n"
    "Statistics for the output level and data-aware methods are computed from the calibration tokens\n"
    "unless --stats gives a file from qlab stats. --imatrix quantizes as qlab quant --imatrix will.\n"
    "The file is checkpointed while measuring: after Ctrl-C, run the same command again to resume; a run\n"
    "with more candidates reuses what the file has. --force starts over. --checkpoint-every S saves it every\n"
    "S seconds (default 20).\n"
    "Several processes: mpirun -np N qlab sense ... (one node: add --oversubscribe when N exceeds the cores;\n"
    "nodes: --hostfile FILE). The cells are shared out over the ranks, rank 0 writes the file (the same bytes\n"
    "as one process, but for its seconds line) and checkpoints every cell finished anywhere; after a rank dies,\n"
    "run the same command again (with any number of ranks) to resume. --threads (per rank) defaults to the cores\n"
    "per rank; the statistics computed here are added up by ranks x threads workers, as one process with\n"
    "--threads ranks x threads does (only the output-level errors depend on that number).\n"
    CLI_DEVICE_USAGE
    "--cand-batch N  kld level: candidates of one tensor measured in one forward pass (the layers after the\n"
    "  tensor multiply N versions' rows at once). Default: 8 on a GPU, with as many sequences as fill 8192\n"
    "  rows; 4 on the CPU, a sequence per thread. Smaller when the memory budget asks. Passes of\n"
    "  another shape may round float sums differently: KLD cells agree to ~1e-7 absolute, not always bit for bit.\n"
    "--act-candidates LIST  activation schemes (int8_token, int8_tensor, fp8_token, fp8_tensor, llm_int8[:T]):\n"
    "  for every linear, the KLD with only its input quantized that way (weights float); static schemes take\n"
    "  their scales from the statistics. qlab plan --act / qlab pareto --act add them to the prediction.\n"
    "--kv-candidates LIST   KV-cache schemes (qlab ppl --help: q8_0, q4_0, q8_0:q4_0, kivi4, ...): for every\n"
    "  layer, the KLD with only that layer's cache in the scheme. qlab plan / pareto --ctx N trade them against\n"
    "  weight bits under one memory budget (weights + KV cache at N tokens).\n"
    "Then: qlab plan SENS.qss --target-bpw B -o PLAN.ini.\n"
    "--check-plan quantizes every tensor of a plan at once and reports the joint KLD on the same\n"
    "calibration tokens: what the per-tensor sum that qlab plan predicts should be, if errors add up.\n";

typedef struct {
    const char *text, *calib;
    int ctx, chunks, samples, mode;
    bool ctx_given;
    uint64_t seed;
} sense_calib;

static ql_status text_chunks(const ql_model *m, const char *path, int ctx, int want, int32_t **out,
                             int64_t *n_seq) {
    char *text;
    size_t len;
    int32_t *ids;
    int64_t n;
    ql_status s = ql_read_file(path, &text, &len);
    if (s) return s;
    s = ql_tokenize(m->tok, text, len, true, &ids, &n);
    free(text);
    if (s) return s;
    int64_t chunks = n / ctx;
    if (want > 0 && want < chunks) chunks = want;
    if (chunks < 1) {
        free(ids);
        return ql_fail(QL_ERR_ARG, "%s: %lld tokens, fewer than one chunk of %d", path, (long long)n, ctx);
    }
    int32_t bos = ql_tokenizer_add_bos(m->tok) ? ql_tokenizer_bos(m->tok) : -1;
    if (bos >= 0)
        for (int64_t i = 0; i < chunks; i++) ids[i * ctx] = bos;
    *out = ids;
    *n_seq = chunks;
    return QL_OK;
}

int cmd_sense(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, SENSE_USAGE);
    const char *flag, *pos, *model = NULL, *out = NULL, *cands = NULL, *stats_path = NULL, *im_path = NULL;
    const char *check = NULL, *act_cands = NULL, *kv_cands = NULL;
    bool json = false;
    sense_calib ca = {.ctx = 256, .chunks = 32, .samples = 32};
    int level = QL_SENSE_KLD, threads = ql_default_threads();
    bool force = false, threads_given = false;
    double checkpoint_s = 0;
    int cand_batch = 0;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (model) return cli_usage_error("sense", SENSE_USAGE, "unexpected argument '%s'", pos);
            model = pos;
        } else if (!strcmp(flag, "--text") || !strcmp(flag, "-f")) ca.text = cli_value(&a, flag);
        else if (!strcmp(flag, "--calib")) ca.calib = cli_value(&a, flag);
        else if (!strcmp(flag, "--samples")) ca.samples = cli_int(&a, flag, 1, 1 << 24);
        else if (!strcmp(flag, "--len") || !strcmp(flag, "--ctx") || !strcmp(flag, "-c"))
            ca.ctx = cli_int(&a, flag, 8, 1 << 20), ca.ctx_given = true;
        else if (!strcmp(flag, "--chunks")) ca.chunks = cli_int(&a, flag, 1, 1 << 30);
        else if (!strcmp(flag, "--seed")) ca.seed = (uint64_t)cli_int(&a, flag, 0, 1 << 30);
        else if (!strcmp(flag, "--mode")) {
            const char *v = cli_value(&a, flag);
            if (v && strcmp(v, "docs") && strcmp(v, "random"))
                return cli_usage_error("sense", SENSE_USAGE, "--mode is random or docs, not '%s'", v);
            ca.mode = v && !strcmp(v, "docs") ? QL_CALIB_DOCS : QL_CALIB_RANDOM;
        } else if (!strcmp(flag, "--candidates")) cands = cli_value(&a, flag);
        else if (!strcmp(flag, "--act-candidates")) act_cands = cli_value(&a, flag);
        else if (!strcmp(flag, "--kv-candidates")) kv_cands = cli_value(&a, flag);
        else if (!strcmp(flag, "--level")) {
            const char *v = cli_value(&a, flag);
            if (v && !ql_sense_level_parse(v, &level))
                return cli_usage_error("sense", SENSE_USAGE, "--level is weight, output or kld, not '%s'", v);
        } else if (!strcmp(flag, "--stats")) stats_path = cli_value(&a, flag);
        else if (!strcmp(flag, "--imatrix")) im_path = cli_value(&a, flag);
        else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t"))
            threads = cli_int(&a, flag, 1, 256), threads_given = true;
        else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--force")) force = true;
        else if (!strcmp(flag, "--checkpoint-every")) {
            checkpoint_s = cli_double(&a, flag);
            if (!a.error && !(checkpoint_s > 0 && checkpoint_s <= 1e6))
                return cli_usage_error("sense", SENSE_USAGE, "--checkpoint-every is seconds above 0, not '%g'",
                                       checkpoint_s);
        } else if (!strcmp(flag, "--check-plan")) check = cli_value(&a, flag);
        else if (!strcmp(flag, "--cand-batch")) cand_batch = cli_int(&a, flag, 1, 64);
        else if (!strcmp(flag, "--json")) json = true;
        else if (cli_device_flag(&a, flag)) continue;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    /* under mpirun: the cells are shared out (sense_dist.h), rank 0 alone reads and writes OUT */
    const bool dist = ql_dist_size() > 1;
    const int rank = ql_dist_rank();
    if (dist && check)
        return cli_usage_error("sense", SENSE_USAGE, "--check-plan runs one pass: run it as one process, not under mpirun");
    if (dist && !threads_given) threads = QL_MAX(1, ql_default_threads() / ql_dist_local_size());
    bool began = false; /* the ranks have agreed on the cells: from here a worker's failure goes to rank 0 */
    ql_sense_dist *dd = NULL;
    ql_sense_share share;
    if (check) {
        if (!model || (!ca.text && !ca.calib))
            return cli_usage_error("sense", SENSE_USAGE,
                                   "--check-plan needs MODEL and --calib SPEC or --text FILE");
        cands = NULL;
        level = QL_SENSE_KLD;
    } else if (!model || !cands || !out)
        return cli_usage_error("sense", SENSE_USAGE, "needs MODEL, --candidates LIST and -o OUT");
    if (ca.text && ca.calib) return cli_usage_error("sense", SENSE_USAGE, "give --calib or --text, not both");
    if (cli_refuse_input_as_output("sense", out, CLI_INPUTS(model, ca.text, stats_path, im_path, check))) return 1;
    if (!ca.text && !ca.calib && level > QL_SENSE_WEIGHT)
        return cli_usage_error("sense", SENSE_USAGE,
                               "the %s level needs calibration: --calib SPEC or --text FILE",
                               ql_sense_level_name(level));
    char **cl = NULL;
    int ncl = 0;
    ql_plan *plan = NULL;
    if (check ? ql_plan_load(check, &plan) != QL_OK : ql_sense_parse_candidates(cands, &cl, &ncl) != QL_OK)
        return cli_fail("sense");
    char **acl = NULL;
    int nacl = 0;
    if (act_cands && !check) {
        if (ql_sense_parse_act_candidates(act_cands, &acl, &nacl)) {
            ql_sense_free_strings(cl, ncl);
            return cli_usage_error("sense", SENSE_USAGE, "%s", ql_last_error());
        }
        if (!ca.text && !ca.calib) {
            ql_sense_free_strings(cl, ncl);
            ql_sense_free_strings(acl, nacl);
            return cli_usage_error("sense", SENSE_USAGE, "--act-candidates needs calibration: --calib SPEC or --text FILE");
        }
    }
    char **kcl = NULL;
    int nkcl = 0;
    if (kv_cands && !check) {
        if (ql_sense_parse_kv_candidates(kv_cands, &kcl, &nkcl) || (!ca.text && !ca.calib)) {
            if (kcl) ql_fail(QL_ERR_ARG, "--kv-candidates needs calibration: --calib SPEC or --text FILE");
            ql_sense_free_strings(cl, ncl);
            ql_sense_free_strings(acl, nacl);
            ql_sense_free_strings(kcl, nkcl);
            return cli_usage_error("sense", SENSE_USAGE, "%s", ql_last_error());
        }
    }

    ql_model *m = NULL;
    ql_stats *st = NULL;
    ql_imatrix *im = NULL;
    ql_sense *s = NULL, *old = NULL;
    int32_t *tok = NULL;
    int64_t n_seq = 0;
    int rc = 0;
    char desc[1200] = "";
    bool needs_stats = level >= QL_SENSE_OUTPUT;
    for (int c = 0; c < ncl; c++) {
        const ql_format *f;
        char me[64];
        if (!ql_parse_format_method(cl[c], &f, me, sizeof me) && ql_method_by_name(me) && ql_method_by_name(me)->needs)
            needs_stats = true;
    }
    for (int k = 0; k < nacl; k++) {
        ql_act_mode am;
        float at;
        if (!ql_act_spec_parse(acl[k], &am, &at) && ql_act_mode_is_static(am)) needs_stats = true;
    }
    if (plan) {
        needs_stats = ql_plan_act_needs_stats(plan);
        for (int i = 0; i < plan->n; i++) {
            const ql_method *me = ql_method_by_name(plan->e[i].method);
            needs_stats |= me && me->needs;
        }
    }
    if (ql_model_load(model, &m) || (im_path && ql_imatrix_load(im_path, &im))) {
        rc = cli_fail("sense");
        goto done;
    }
    if ((ca.text || ca.calib) && !m->tok) {
        ql_model_no_tokenizer(m, "calibration needs one");
        rc = cli_fail("sense");
        goto done;
    }
    if ((ca.text || ca.calib) && (ca.ctx = cli_fit_ctx("sense", m, ca.ctx, ca.ctx_given)) < 0) {
        rc = cli_fail("sense");
        goto done;
    }
    ql_status ss = QL_OK;
    if (ca.calib) {
        ql_calib_opts co = {.n_samples = ca.samples, .seq_len = ca.ctx, .seed = ca.seed, .mode = ca.mode};
        ql_calib_set *set = NULL;
        ss = ql_calib_build(ca.calib, m->tok, &co, &set);
        if (!ss) {
            n_seq = set->n_samples;
            tok = set->tokens;
            set->tokens = NULL;
            ql_calib_free(set);
            snprintf(desc, sizeof desc, "calib %s (%d x %d, seed %llu, %s)", ca.calib, ca.samples, ca.ctx,
                     (unsigned long long)ca.seed, ca.mode == QL_CALIB_DOCS ? "docs" : "random");
        }
    } else if (ca.text) {
        ss = text_chunks(m, ca.text, ca.ctx, ca.chunks, &tok, &n_seq);
        if (!ss)
            snprintf(desc, sizeof desc, "text %s (%lld chunks of %d)", ca.text, (long long)n_seq, ca.ctx);
    }
    if (ss) {
        rc = cli_fail("sense");
        goto done;
    }
    if (stats_path) {
        if (ql_stats_load_for_model(stats_path, m, QL_STATS_SAME_MODEL, &st)) {
            rc = cli_fail("sense");
            goto done;
        }
    } else if (needs_stats && tok) {
        /* under mpirun: ranks x threads sequence workers shared out, so the statistics (and every output-level
         * error) equal one process's with that many threads; every rank gets rank 0's sums */
        ql_stats_opts so = {.hessian = true,
                            .output = true,
                            .n_threads = dist ? threads * ql_dist_size() : threads,
                            .distribute = dist,
                            .all_ranks = true};
        ss = cli_collect_stats(m, tok, n_seq, ca.ctx, &so, "sense: statistics", &st);
        if (ss) {
            rc = cli_fail("sense");
            goto done;
        }
    }
    /* --check-plan set level to kld */
    ql_sense_opts o = {.level = level,
                       .n_threads = threads,
                       .tokens = tok,
                       .n_seq = n_seq,
                       .seq_len = ca.ctx,
                       .stats = st,
                       .imatrix = im,
                       .cand_batch = cand_batch};
    if (plan) {
        ql_sense_joint j;
        ql_progress *bar = cli_progress_bar("sense: check");
        ss = ql_sense_plan_kld(m, plan, &o, bar, &j);
        cli_progress_done(bar);
        if (ss) {
            rc = cli_fail("sense");
            goto done;
        }
        if (json)
            printf("{\"plan\": \"%s\", \"tensors\": %d, \"kld\": %.8g, \"ppl\": %.6f, \"base_ppl\": %.6f}\n",
                   check, j.tensors, j.kld, j.ppl, j.base_ppl);
        else
            printf("%s: %d tensors quantized together: KLD %.6g per token, PPL %.4f (base %.4f) on %s\n",
                   check, j.tensors, j.kld, j.ppl, j.base_ppl, desc);
        goto done;
    }
    if (ql_sense_new(m, cl, ncl, &s)) {
        rc = cli_fail("sense");
        goto done;
    }
    ql_sense_set_context(s, desc, tok, n_seq, ca.ctx,
                         stats_path ? stats_path
                         : st       ? "calibration tokens"
                                    : "",
                         im_path ? im_path : "", level);
    ql_sense_set_act(s, acl, nacl);
    ql_sense_set_kv(s, kcl, nkcl, m->cfg.n_layer, m->cfg.n_head_kv, m->cfg.head_dim);
    for (int k = 0; k < nkcl; k++) { /* a scheme the heads cannot hold is refused before any measuring */
        ql_kv_scheme ks;
        if (!ql_kv_scheme_parse(kcl[k], &ks) || ql_kv_scheme_check(&ks, &m->cfg, model)) {
            rc = cli_fail("sense");
            goto done;
        }
    }
    struct stat sb;
    if (rank == 0 && !force && stat(out, &sb) == 0) {
        int adopted = 0;
        if (ql_sense_load(out, &old)) {
            fprintf(stderr, "qlab sense: %s exists and cannot be resumed (%s); --force overwrites it\n", out,
                    ql_last_error());
            rc = 1;
        } else if (ql_sense_adopt(s, old, &adopted)) {
            fprintf(stderr, "qlab sense: %s was measured with %s; --force overwrites it\n", out,
                    ql_last_error());
            rc = 1;
        }
        if (rc && !dist) goto done;
        if (adopted) fprintf(stderr, "qlab sense: reusing %d measured cells from %s\n", adopted, out);
    }
    o.checkpoint = rank == 0 ? out : NULL;
    o.checkpoint_s = checkpoint_s;
    /* rank 0's batch shape for every rank (a pass's shape fixes its float sums), and a rank's cells of one
     * tensor in whole candidate groups */
    ql_sense_batch_shape(m, &o, s->n_cand, &o.cand_batch, &o.seq_batch);
    if (dist) {
        ss = ql_sense_dist_begin(s, level, rc ? QL_ERR_ARG : QL_OK, &o.cand_batch, &o.seq_batch, &dd, &share);
        if (ss) {
            if (!rc && rank == 0) rc = cli_fail("sense");
            rc = rc ? rc : 1;
            goto done;
        }
        began = true;
    }
    int64_t cells = 0;
    for (int t = 0; t < s->n_tensors; t++)
        for (int c = 0; c < s->n_cand; c++) cells += ql_sense_cell_at(s, t, c)->bytes >= 0;
    if (rank == 0) {
        fprintf(stderr, "qlab sense: %s: %d tensors x %d candidates (%lld that fit), level %s, %s", model,
                s->n_tensors, s->n_cand, (long long)cells, ql_sense_level_name(level),
                *desc ? desc : "no calibration");
        if (dist) fprintf(stderr, "; %d MPI ranks x %d threads", ql_dist_size(), threads);
        fprintf(stderr, "\n");
    }
    o.share = dist ? &share : NULL;
    double t0 = ql_time_s();
    ql_progress quiet = {.cancel = &cli_cancel_flag}; /* ranks other than 0 draw nothing but stop on a signal */
    ql_progress *bar = rank == 0 ? eta_bar_new("sense") : &quiet;
    ss = ql_sense_measure(s, m, &o, bar);
    if (!ss && s->n_act) ss = ql_sense_measure_act(s, m, &o, bar);
    if (dist) ss = ql_sense_dist_end(dd, s, ss, rank == 0 ? out : NULL, checkpoint_s, bar);
    if (rank == 0) eta_bar_done(bar);
    if (rank != 0) { /* rank 0 reports for the job */
        if (ss && ss != QL_ERR_CANCELLED) fprintf(stderr, "qlab sense: rank %d: %s\n", rank, ql_last_error());
        rc = ss == QL_ERR_CANCELLED ? 130 : ss ? 1 : 0;
        goto done;
    }
    if (!ss && s->n_kv) { /* rank 0 alone: KV cells are not shared out over ranks */
        ql_sense_opts ko = o;
        ko.share = NULL;
        ql_progress *kb = eta_bar_new("sense: kv");
        ss = ql_sense_measure_kv(s, m, &ko, kb);
        eta_bar_done(kb);
    }
    if (ss == QL_ERR_CANCELLED) {
        fprintf(stderr,
                "qlab sense: interrupted; %s holds what was measured: run the same command to resume\n", out);
        rc = 130;
        goto done;
    }
    if (ss) {
        rc = cli_fail("sense");
        goto done;
    }
    fprintf(stderr, "qlab sense: wrote %s (%.1fs this run, %.1fs in all)\n", out, ql_time_s() - t0,
            s->seconds);
    if (s->base_ppl > 0)
        fprintf(stderr, "qlab sense: base perplexity on the calibration tokens %.4f\n", s->base_ppl);
    for (int k = 0; k < s->n_act; k++) { /* what each scheme costs, summed over the linears, and where most */
        double sum = 0, worst = -1;
        int wt = -1, n = 0;
        for (int t = 0; t < s->n_tensors; t++) {
            double v = ql_sense_act_cell_at(s, t, k)->kld;
            if (!isfinite(v)) continue;
            sum += v, n++;
            if (v > worst) worst = v, wt = t;
        }
        printf("activations %-12s %3d linears: summed KLD %.6g, largest %.6g (%s)\n", s->act[k], n, sum,
               worst > 0 ? worst : 0, wt >= 0 ? s->tensors[wt].name : "-");
    }
    for (int k = 0; k < s->n_kv; k++) { /* each KV scheme: summed over the layers, the most sensitive layer */
        double sum = 0, worst = -1;
        int wl = -1;
        for (int l = 0; l < s->kv_layers; l++) {
            double v = ql_sense_kv_cell_at(s, l, k)->kld;
            if (!isfinite(v)) continue;
            sum += v;
            if (v > worst) worst = v, wl = l;
        }
        printf("kv cache %-14s %3d layers: summed KLD %.6g, largest %.6g (layer %d), %lld bytes/layer at ctx 4096\n",
               s->kv[k], s->kv_layers, sum, worst > 0 ? worst : 0, wl, (long long)ql_sense_kv_layer_bytes(s, k, 4096, 1));
    }
done:
    /* Rank 0 failing, or any rank before the ranks agreed, ends the whole job: the others would wait for it.
     * A worker's later failure reached rank 0, which saved what was measured. */
    if (dist && rc && (rank == 0 || !began)) {
        fflush(NULL);
        ql_dist_abort(rc);
    }
    ql_sense_dist_free(dd);
    ql_plan_free(plan);
    ql_sense_free(s);
    ql_sense_free(old);
    ql_sense_free_strings(cl, ncl);
    ql_sense_free_strings(acl, nacl);
    ql_sense_free_strings(kcl, nkcl);
    free(tok);
    ql_stats_free(st);
    ql_imatrix_free(im);
    ql_model_free(m);
    return rc;
}

/* ---------------- qlab plan ---------------- */

/* "3.5GiB", "3500MB", "2G" (binary), "123456" (bytes) */
static bool parse_size(const char *v, int64_t *out) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || !(x > 0)) return false;
    while (*end == ' ') end++;
    double mul = 1;
    char u = (char)toupper((unsigned char)*end);
    if (u) {
        const char *units = "KMGT";
        const char *p = strchr(units, u);
        if (!p) return false;
        int k = (int)(p - units) + 1;
        end++;
        bool binary = true;
        if (*end == 'i' || *end == 'I') end++;
        else if (*end == 'B' || *end == 'b') binary = false;
        if (*end == 'B' || *end == 'b') end++;
        if (*end) return false;
        mul = pow(binary ? 1024.0 : 1000.0, k);
    }
    *out = (int64_t)(x * mul);
    return true;
}

static const char *PLAN_USAGE =
    "usage: qlab plan SENS.qss (--target-bpw B [--whole-file] | --target-size SIZE\n"
    "                 | --target-mem SIZE --ctx N [--batch B]) -o PLAN.ini\n"
    "                 [--rule 'PATTERN OP FORMAT']... [--metric weight|output|kld] [--act S [--act-max-kld X]]\n"
    "                 [--solver auto|dp|lagrange] [--tolerance 0.01] [--to EXPORTER] [--quiet]\n"
    "Chooses one measured candidate per tensor so that the summed predicted error is smallest within the\n"
    "budget (a multiple-choice knapsack: exact DP on small models, Lagrangian relaxation and repair\n"
    "otherwise).\n"
    "  --target-bpw B   bits per weight over the quantized tensors (bpw_quantized of qlab info), hit within\n"
    "                   --tolerance; --whole-file counts every tensor (bpw of qlab info)\n"
    "  --target-size S  size of the output file: 3.5GiB, 900MB, 2G, or bytes\n"
    "  --target-mem S   (or --budget-bytes N) memory at run time: the output file + the KV cache at --ctx N\n"
    "                   tokens for --batch B sequences; every layer's cache is f32 or one of the schemes measured\n"
    "                   by qlab sense --kv-candidates, traded against weight bits by the same knapsack; written\n"
    "                   as the plan's [kv]\n"
    "  --rule R         'token_embd>=q6_k', 'blk.*.attn_v>=q4_k', 'blk.0.ffn_down=q8_0' (pin),\n"
    "                   'output!=q4_0' (exclude); >= <= > < compare bits on that tensor; a pattern\n"
    "                   without '.' names a role in every layer ('attn_v' = 'blk.*.attn_v')\n"
    "  --metric M       the error to minimise (default: the highest level measured)\n"
    "  --act SCHEME     also quantize every linear's input with SCHEME (measured by qlab sense --act-candidates):\n"
    "                   written as the plan's [activations]; its summed per-linear KLD joins the prediction\n"
    "  --act-max-kld X  linears whose input costs more than X KLD with SCHEME keep float inputs\n"
    "  --to EXPORTER    only candidates whose format EXPORTER can store (exl2: the exl2_* mixes, giving\n"
    "                   ExLlamaV2-like fractional bits per layer; gptq, awq, compressed-tensors, bnb), and\n"
    "                   (with -o, when the measured model is readable) what each tensor becomes there\n"
    "Apply the plan with: qlab quant MODEL --plan PLAN.ini -o OUT.gguf\n";

typedef struct {
    char **rules;
    int n_rules, cap;
    int metric, solver;
    double tolerance;
    const char *act;   /* --act SCHEME: activations from the file's measured schemes */
    double act_max_kld; /* --act-max-kld X: linears above X keep float inputs */
    int kv_ctx, kv_batch; /* --ctx N [--batch B]: the KV cache joins the memory budget */
} alloc_flags;

static int parse_alloc_flag(cli_args *a, const char *flag, alloc_flags *af, const char *cmd,
                            const char *usage) {
    if (!strcmp(flag, "--act")) {
        af->act = cli_value(a, flag);
        return 1;
    }
    if (!strcmp(flag, "--act-max-kld")) {
        af->act_max_kld = cli_double(a, flag);
        return 1;
    }
    if (!strcmp(flag, "--ctx")) {
        af->kv_ctx = cli_int(a, flag, 1, 1 << 24);
        return 1;
    }
    if (!strcmp(flag, "--batch")) {
        af->kv_batch = cli_int(a, flag, 1, 1 << 16);
        return 1;
    }
    if (!strcmp(flag, "--rule")) {
        const char *v = cli_value(a, flag);
        if (!v) return 1;
        /* several rules may share one flag, separated by ';' or ',' */
        char *copy = ql_strdup(v), *save = NULL;
        for (char *r = strtok_r(copy, ";,", &save); r; r = strtok_r(NULL, ";,", &save)) {
            while (*r == ' ') r++;
            if (!*r) continue;
            if (af->n_rules == af->cap) {
                af->cap = af->cap ? 2 * af->cap : 8;
                af->rules = ql_realloc(af->rules, (size_t)af->cap * sizeof *af->rules);
            }
            af->rules[af->n_rules++] = ql_strdup(r);
        }
        free(copy);
    } else if (!strcmp(flag, "--metric")) {
        const char *v = cli_value(a, flag);
        if (v && !ql_sense_level_parse(v, &af->metric)) {
            a->error = true;
            cli_usage_error(cmd, usage, "--metric is weight, output or kld, not '%s'", v);
        }
    } else if (!strcmp(flag, "--solver")) {
        const char *v = cli_value(a, flag);
        if (!v) return 1;
        if (!strcmp(v, "auto")) af->solver = QL_MCKP_AUTO;
        else if (!strcmp(v, "dp")) af->solver = QL_MCKP_DP;
        else if (!strcmp(v, "lagrange")) af->solver = QL_MCKP_LAGRANGE;
        else {
            a->error = true;
            cli_usage_error(cmd, usage, "--solver is auto, dp or lagrange, not '%s'", v);
        }
    } else if (!strcmp(flag, "--tolerance")) af->tolerance = cli_double(a, flag);
    else return 0;
    return 1;
}

static void alloc_flags_free(alloc_flags *af) { ql_sense_free_strings(af->rules, af->n_rules); }

static void print_export_line(void *user, const char *tensor, const char *format, bool refused, const char *what) {
    (void)user;
    printf("%-32s %-16s %s%s\n", tensor, format, refused ? "REFUSED: " : "-> ", what);
}

/* plan --to X -o PLAN: what each tensor of the measured model becomes in X's folder, as qlab quant --dry-run
 * --to prints it (the model is loaded only for this; a model that is gone is a note, not a failure). Returns
 * non-zero when X would refuse a tensor. */
static int describe_export(const ql_sense *s, const ql_plan *plan, const char *to) {
    const ql_exporter_info *x;
    ql_model *m = NULL;
    if (ql_exporter_find(to, &x) || !x->folder) return 0;
    if (!*s->model || ql_model_load(s->model, &m)) {
        fprintf(stderr, "qlab plan: note: the measured model '%s' cannot be read here; qlab quant MODEL --plan PLAN --to %s "
                        "--dry-run shows what each tensor becomes\n", s->model, to);
        return 0;
    }
    printf("--to %s: what each tensor becomes\n", to);
    int refused = ql_quantize_describe(m, plan, x, "OUT", print_export_line, NULL);
    ql_model_free(m);
    if (refused < 0) return cli_fail("plan");
    if (refused) fprintf(stderr, "qlab plan: --to %s would refuse %d tensors (REFUSED above)\n", to, refused);
    return refused != 0;
}

/* --to EXPORTER: a "*!=CAND" rule for every measured candidate whose format the exporter cannot store. */
static ql_status restrict_to_exporter(const ql_sense *s, const char *to, const char *path, alloc_flags *af) {
    const ql_exporter_info *x;
    ql_status st = ql_exporter_find(to, &x);
    if (st) return st;
    int kept = 0;
    for (int c = 0; c < s->n_cand; c++) {
        char name[128];
        snprintf(name, sizeof name, "%s", s->cand[c]);
        char *plus = strchr(name, '+');
        if (plus) *plus = 0;
        const ql_format *f = ql_format_by_name(name);
        if (f && x->ops->accepts_type(f->type)) {
            kept++;
            continue;
        }
        if (af->n_rules == af->cap) {
            af->cap = af->cap ? 2 * af->cap : 8;
            af->rules = ql_realloc(af->rules, (size_t)af->cap * sizeof *af->rules);
        }
        char rule[160];
        snprintf(rule, sizeof rule, "*!=%s", s->cand[c]);
        af->rules[af->n_rules++] = ql_strdup(rule);
    }
    if (!kept)
        return ql_fail(QL_ERR_ARG, "%s: none of its %d candidates can be stored by the %s exporter (it takes %s); measure some with qlab sense --candidates",
                       path, s->n_cand, x->name, x->accepts);
    return QL_OK;
}

int cmd_plan(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, PLAN_USAGE);
    const char *flag, *pos, *path = NULL, *out = NULL, *size = NULL, *to = NULL;
    double bpw = 0;
    bool whole = false, quiet = false, mem = false;
    alloc_flags af = {.metric = -1};
    int rc = 0;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (path) {
                alloc_flags_free(&af);
                return cli_usage_error("plan", PLAN_USAGE, "unexpected argument '%s'", pos);
            }
            path = pos;
        } else if (parse_alloc_flag(&a, flag, &af, "plan", PLAN_USAGE)) continue;
        else if (!strcmp(flag, "--target-bpw") || !strcmp(flag, "--bpw")) {
            const char *v = a.i < a.argc ? a.argv[a.i] : "";
            bpw = cli_double(&a, flag);
            if (!a.error && !(isfinite(bpw) && bpw > 0)) {
                alloc_flags_free(&af);
                return cli_usage_error("plan", PLAN_USAGE, "--target-bpw must be a positive number of bits, got '%s'", v);
            }
        }
        else if (!strcmp(flag, "--target-size")) size = cli_value(&a, flag);
        else if (!strcmp(flag, "--target-mem") || !strcmp(flag, "--budget-bytes")) size = cli_value(&a, flag), mem = true;
        else if (!strcmp(flag, "--whole-file")) whole = true;
        else if (!strcmp(flag, "--to")) to = cli_value(&a, flag);
        else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--quiet") || !strcmp(flag, "-q")) quiet = true;
        else {
            alloc_flags_free(&af);
            return cli_unknown(&a, flag);
        }
    }
    int64_t target_bytes = 0;
    if (!a.error && size && !parse_size(size, &target_bytes)) {
        rc = cli_usage_error("plan", PLAN_USAGE, "--target-size: '%s' is not a size like 3.5GiB", size);
        goto early;
    }
    if (a.error) {
        rc = 2;
        goto early;
    }
    if (!path || (bpw <= 0 && !size)) {
        rc = cli_usage_error("plan", PLAN_USAGE, "needs SENS.qss and --target-bpw B or --target-size S");
        goto early;
    }
    if (bpw > 0 && size) {
        rc = cli_usage_error("plan", PLAN_USAGE, "give --target-bpw or --target-size, not both");
        goto early;
    }
    if (mem != (af.kv_ctx > 0)) {
        rc = cli_usage_error("plan", PLAN_USAGE, mem ? "--target-mem counts the KV cache: give --ctx N"
                                                     : "--ctx puts the KV cache in the budget: give --target-mem SIZE");
        goto early;
    }
    if (cli_refuse_input_as_output("plan", out, CLI_INPUTS(path))) {
        rc = 1;
        goto early;
    }
    ql_sense *s = NULL;
    ql_alloc_result r = {0};
    ql_plan *plan = NULL;
    if (ql_sense_load(path, &s)) {
        rc = cli_fail("plan");
        goto early;
    }
    if (to && restrict_to_exporter(s, to, path, &af)) {
        rc = cli_fail("plan");
        goto out;
    }
    ql_alloc_opts o = {.target_bpw = bpw,
                       .whole_file = whole,
                       .target_bytes = target_bytes,
                       .metric = af.metric,
                       .rules = af.rules,
                       .n_rules = af.n_rules,
                       .tolerance = af.tolerance,
                       .method = af.solver,
                       .kv_ctx = af.kv_ctx,
                       .kv_batch = af.kv_batch};
    if (ql_alloc_check_target(s, &o) || ql_allocate(s, &o, &r)) {
        rc = cli_fail("plan");
        goto out;
    }
    if (!quiet) {
        printf("%-28s %-22s %10s %7s %12s  %s\n", "tensor", "choice", "bytes", "bpw",
               ql_sense_level_name(r.metric), "note");
        for (int t = 0; t < r.n; t++) {
            const ql_alloc_choice *c = &r.c[t];
            const ql_sense_tensor *te = &s->tensors[t];
            printf("%-28s %-22s %10lld %7.3f %12.4g  %s\n", te->name, c->spec ? c->spec : "(kept)",
                   (long long)c->bytes, 8.0 * (double)c->bytes / (double)(te->ncols * te->nrows), c->err,
                   c->note ? c->note : "");
        }
    }
    char gap[64] = "optimal (exact DP)";
    if (!r.exact)
        snprintf(gap, sizeof gap, "lower bound %.4g (gap %.2f%%)", r.lower_bound,
                 r.err > 0 && isfinite(r.lower_bound) ? 100 * (r.err - r.lower_bound) / r.err : 0.0);
    printf("bpw %.4f over quantized tensors, %.4f over the file; %.2f MiB of weights; predicted %s %.5g, "
           "%s\n",
           r.bpw, r.bpw_file, (double)r.bytes / 1048576.0, ql_sense_level_name(r.metric), r.err, gap);
    if (r.kv_n) {
        printf("%-28s %-22s %10s %7s %12s\n", "kv cache", "choice", "bytes", "", "kld");
        for (int l = 0; l < r.kv_n; l++) {
            const int k = r.kv_choice[l];
            ql_kv_scheme ks = ql_kv_scheme_f32();
            if (k >= 0) ql_kv_scheme_parse(s->kv[k], &ks);
            int64_t b = k >= 0 ? ql_sense_kv_layer_bytes(s, k, r.kv_ctx, r.kv_batch)
                               : 2 * ql_kv_side_bytes(&ks.k, s->kv_heads, s->kv_head_dim, r.kv_ctx) * r.kv_batch;
            char lname[32];
            snprintf(lname, sizeof lname, "layer %d", l);
            printf("%-28s %-22s %10lld %7s %12.4g\n", lname, k >= 0 ? s->kv[k] : "f32", (long long)b, "",
                   k >= 0 ? fmax(ql_sense_kv_cell_at(s, l, k)->kld, 0) : 0.0);
        }
        printf("KV cache at ctx %lld x %d: %lld bytes (%.2f MiB), predicted KLD %.5g of the total; weights file + "
               "cache %lld bytes (%.2f MiB)\n",
               (long long)r.kv_ctx, r.kv_batch, (long long)r.kv_bytes, r.kv_bytes / 1048576.0, r.kv_err,
               (long long)(r.file_bytes + r.kv_bytes), (r.file_bytes + r.kv_bytes) / 1048576.0);
    }
    double act_kld = 0;
    int act_q = 0, act_f = 0;
    if (af.act) {
        if (ql_alloc_act(s, af.act, af.act_max_kld, NULL, &act_kld, &act_q, &act_f)) {
            rc = cli_fail("plan");
            goto out;
        }
        printf("activations %s on %d linears (%d kept float: KLD above %g): + %.5g KLD", af.act, act_q, act_f,
               af.act_max_kld, act_kld);
        if (r.metric == QL_SENSE_KLD) printf(", predicted KLD with activations %.5g", r.err + act_kld);
        printf("\n");
    }
    if (r.uniform)
        printf("one format everywhere (%s, fallbacks where its blocks do not fit) is predicted better than any mix "
               "within the target: the plan is that\n", r.uniform);
    if (r.file_bytes)
        printf("estimated file size %lld bytes (%.2f MiB)\n", (long long)r.file_bytes,
               r.file_bytes / 1048576.0);
    if (!r.target_hit) {
        if (size)
            fprintf(stderr,
                    "qlab plan: warning: could not fill the size target (%lld bytes allowed for the weights, "
                    "%lld used): candidates too coarse or all at their largest\n",
                    (long long)r.budget_bytes, (long long)r.bytes);
        else
            fprintf(
                stderr,
                "qlab plan: warning: achieved %.4f bpw, not within %.3g of %.4f (the candidates cannot get "
                "closer)\n",
                whole ? r.bpw_file : r.bpw, af.tolerance > 0 ? af.tolerance : 0.01, bpw);
    }
    if (out) {
        char src[512];
        if (size && mem) snprintf(src, sizeof src, "qlab plan %s --target-mem %s --ctx %d", path, size, af.kv_ctx);
        else if (size) snprintf(src, sizeof src, "qlab plan %s --target-size %s", path, size);
        else
            snprintf(src, sizeof src, "qlab plan %s --target-bpw %g%s", path, bpw,
                     whole ? " --whole-file" : "");
        if (ql_alloc_plan(s, &r, src, &plan) ||
            (af.act && ql_alloc_act(s, af.act, af.act_max_kld, plan, &act_kld, &act_q, &act_f)) ||
            ql_plan_save(plan, *s->model ? s->model : NULL, out)) {
            rc = cli_fail("plan");
            goto out;
        }
        bool needs = false;
        for (int i = 0; i < plan->n; i++) {
            const ql_method *me = ql_method_by_name(plan->e[i].method);
            needs |= me && me->needs;
        }
        needs |= ql_plan_act_needs_stats(plan);
        fprintf(stderr, "qlab plan: wrote %s; apply: qlab quant %s --plan %s%s -o OUT.gguf\n", out,
                *s->model ? s->model : "MODEL", out, needs ? " --stats STATS.qls" : "");
        if (to && describe_export(s, plan, to)) rc = 1;
    }
out:
    ql_plan_free(plan);
    ql_alloc_result_free(&r);
    ql_sense_free(s);
early:
    alloc_flags_free(&af);
    return rc;
}

/* ---------------- qlab pareto ---------------- */

static const char *PARETO_USAGE =
    "usage: qlab pareto SENS.qss [--points 40] [--csv] [--whole-file] [--rule R]... [--metric M]\n"
    "                   [--act S [--act-max-kld X]] [--ctx N [--batch B]]\n"
    "The predicted error-vs-BPW frontier: the least summed error the allocator finds at each size, from\n"
    "the cheapest to the most expensive assignment. --csv prints bpw,bpw_file,bytes,error; otherwise a\n"
    "terminal plot (log error) and a table. Rules as in qlab plan. With --act SCHEME [--act-max-kld X], a second\n"
    "series (a) adds that activation scheme's summed KLD to every point: weights and activations together.\n"
    "With --ctx N [--batch B], the KV cache at N tokens joins the budget (schemes measured by qlab sense\n"
    "--kv-candidates, traded against weight bits): the x axis is then MiB of weights + cache, and --csv adds\n"
    "kv_bytes and mem_bytes.\n";

/* x of a point: bits per weight, or (mem) MiB of weights + KV cache */
static double plot_x(const ql_frontier_point *p, bool whole, bool mem) {
    return mem ? (double)(p->bytes + p->kv_bytes) / 1048576.0 : whole ? p->bpw_file : p->bpw;
}

static void plot(const ql_frontier_point *p, int n, bool whole, bool mem, const char *metric, double act_add) {
    enum { W = 64, H = 18 };
    char grid[H][W + 1];
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < n; i++) {
        double x = plot_x(&p[i], whole, mem), y = log10(fmax(p[i].err, 1e-12)),
               ya = log10(fmax(p[i].err + act_add, 1e-12));
        x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, fmax(y, ya));
    }
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    for (int r = 0; r < H; r++) {
        memset(grid[r], ' ', W);
        grid[r][W] = 0;
    }
    for (int i = 0; i < n; i++) {
        double x = plot_x(&p[i], whole, mem), y = log10(fmax(p[i].err, 1e-12));
        int cx = (int)lround((x - x0) / (x1 - x0) * (W - 1)),
            cy = (int)lround((y1 - y) / (y1 - y0) * (H - 1));
        grid[cy][cx] = '*';
        if (act_add > 0) {
            int ca = (int)lround((y1 - log10(fmax(p[i].err + act_add, 1e-12))) / (y1 - y0) * (H - 1));
            if (grid[ca][cx] == ' ') grid[ca][cx] = 'a';
        }
    }
    printf("predicted %s (log scale) vs %s%s\n", metric, mem ? "MiB of quantized weights + KV cache" : "bits per weight",
           whole && !mem ? " (whole file)" : "");
    if (act_add > 0) printf("* weights only, a with activations\n");
    for (int r = 0; r < H; r++) {
        double y = y1 - (y1 - y0) * r / (H - 1);
        if (r % 3 == 0 || r == H - 1) printf("%10.3g |%s\n", pow(10, y), grid[r]);
        else printf("%10s |%s\n", "", grid[r]);
    }
    printf("%10s +", "");
    for (int i = 0; i < W; i++) putchar('-');
    printf("\n%10s  %-8.3f%*s%8.3f  %s\n", "", x0, W - 16, "", x1, mem ? "MiB" : "bpw");
}

int cmd_pareto(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, PARETO_USAGE);
    const char *flag, *pos, *path = NULL;
    int points = 40, rc = 0;
    bool csv = false, whole = false;
    alloc_flags af = {.metric = -1};
    while (cli_next(&a, &flag, &pos)) {
        if (pos) path = pos;
        else if (parse_alloc_flag(&a, flag, &af, "pareto", PARETO_USAGE)) continue;
        else if (!strcmp(flag, "--points")) points = cli_int(&a, flag, 2, 100000);
        else if (!strcmp(flag, "--csv")) csv = true;
        else if (!strcmp(flag, "--whole-file")) whole = true;
        else {
            alloc_flags_free(&af);
            return cli_unknown(&a, flag);
        }
    }
    if (a.error || !path) {
        alloc_flags_free(&af);
        return a.error ? 2 : cli_usage_error("pareto", PARETO_USAGE, "needs SENS.qss");
    }
    ql_sense *s = NULL;
    ql_frontier_point *p = NULL;
    int n = 0;
    ql_alloc_opts o = {.metric = af.metric, .rules = af.rules, .n_rules = af.n_rules, .method = af.solver,
                       .kv_ctx = af.kv_ctx, .kv_batch = af.kv_batch};
    const bool mem = af.kv_ctx > 0;
    if (ql_sense_load(path, &s) || ql_alloc_frontier(s, &o, points, &p, &n)) {
        rc = cli_fail("pareto");
        goto out;
    }
    int metric = af.metric >= 0 ? af.metric : ql_sense_complete_level(s);
    double act_kld = 0;
    int act_q = 0, act_f = 0;
    if (af.act) {
        if (ql_alloc_act(s, af.act, af.act_max_kld, NULL, &act_kld, &act_q, &act_f)) {
            rc = cli_fail("pareto");
            goto out;
        }
        if (metric != QL_SENSE_KLD) {
            rc = cli_usage_error("pareto", PARETO_USAGE, "--act adds KLD: the frontier must be measured at the kld level");
            goto out;
        }
    }
    if (csv) {
        printf("bpw,bpw_file,bytes,%s%s%s\n", ql_sense_level_name(metric), af.act ? ",kld_with_act" : "",
               mem ? ",kv_bytes,mem_bytes" : "");
        for (int i = 0; i < n; i++) {
            printf("%.6f,%.6f,%lld,%.9g", p[i].bpw, p[i].bpw_file, (long long)p[i].bytes, p[i].err);
            if (af.act) printf(",%.9g", p[i].err + act_kld);
            if (mem) printf(",%lld,%lld", (long long)p[i].kv_bytes, (long long)(p[i].bytes + p[i].kv_bytes));
            printf("\n");
        }
    } else {
        if (af.act)
            printf("activations %s on %d linears (%d kept float): + %.5g KLD at every size\n", af.act, act_q, act_f,
                   act_kld);
        plot(p, n, whole, mem, ql_sense_level_name(metric), act_kld);
        printf("\n%10s %10s %12s %14s%s\n", "bpw", "bpw_file", "bytes", ql_sense_level_name(metric),
               mem ? "       kv_bytes" : "");
        int step = n > 16 ? (n + 15) / 16 : 1;
        for (int i = 0; i < n; i++)
            if (i % step == 0 || i == n - 1) {
                printf("%10.4f %10.4f %12lld %14.6g", p[i].bpw, p[i].bpw_file, (long long)p[i].bytes, p[i].err);
                if (mem) printf(" %14lld", (long long)p[i].kv_bytes);
                printf("\n");
            }
    }
out:
    free(p);
    ql_sense_free(s);
    alloc_flags_free(&af);
    return rc;
}

/* ---------------- qlab sense-diff ---------------- */

static const char *DIFF_USAGE =
    "usage: qlab sense-diff A.qss B.qss [--level weight|output|kld] [--top N]\n"
    "Ranks the tensors by sensitivity (geometric mean error over the candidates both files measured)\n"
    "under each file, e.g. the same model measured with two calibration sets, and lists the tensors whose\n"
    "rank moved most, with the Spearman correlation of the two rankings.\n";

typedef struct {
    int t;
    double score;
} ranked;

static int cmp_ranked(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    bool nx = isnan(x->score), ny = isnan(y->score);
    if (nx != ny) return nx ? 1 : -1;
    if (x->score != y->score) return x->score > y->score ? -1 : 1; /* most sensitive first */
    return x->t - y->t;
}

static void ranks_of(const double *score, int n, int *rank) {
    ranked *r = ql_malloc((size_t)n * sizeof *r);
    for (int i = 0; i < n; i++) r[i] = (ranked){i, score[i]};
    qsort(r, (size_t)n, sizeof *r, cmp_ranked);
    for (int i = 0; i < n; i++) rank[r[i].t] = i + 1;
    free(r);
}

typedef struct {
    int t, move;
} moved;

static int cmp_moved(const void *a, const void *b) {
    const moved *x = a, *y = b;
    if (abs(x->move) != abs(y->move)) return abs(y->move) - abs(x->move);
    return x->t - y->t;
}

int cmd_sense_diff(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, DIFF_USAGE);
    const char *flag, *pos, *pa = NULL, *pb = NULL;
    int level = -1, top = 20, rc = 0;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (!pa) pa = pos;
            else if (!pb) pb = pos;
            else return cli_usage_error("sense-diff", DIFF_USAGE, "unexpected argument '%s'", pos);
        } else if (!strcmp(flag, "--level")) {
            const char *v = cli_value(&a, flag);
            if (v && !ql_sense_level_parse(v, &level))
                return cli_usage_error("sense-diff", DIFF_USAGE, "--level is weight, output or kld, not '%s'",
                                       v);
        } else if (!strcmp(flag, "--top")) top = cli_int(&a, flag, 1, 1 << 20);
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!pa || !pb) return cli_usage_error("sense-diff", DIFF_USAGE, "needs two sensitivity files");
    ql_sense *A = NULL, *B = NULL;
    double *sa = NULL, *sb = NULL;
    int *ra = NULL, *rb = NULL, *map = NULL;
    char **common = NULL;
    int nc = 0;
    moved *mv = NULL;
    if (ql_sense_load(pa, &A) || ql_sense_load(pb, &B)) {
        rc = cli_fail("sense-diff");
        goto out;
    }
    int la = ql_sense_complete_level(A), lb = ql_sense_complete_level(B);
    int lv = level >= 0 ? level : QL_MIN(la, lb);
    if (lv < 0 || lv > la || lv > lb) {
        fprintf(stderr, "qlab sense-diff: the files are measured at levels %s and %s\n",
                ql_sense_level_name(la), ql_sense_level_name(lb));
        rc = 1;
        goto out;
    }
    common = ql_calloc((size_t)A->n_cand, sizeof *common);
    for (int c = 0; c < A->n_cand; c++)
        if (ql_sense_find_cand(B, A->cand[c]) >= 0) common[nc++] = A->cand[c];
    map = ql_malloc((size_t)(A->n_tensors + 1) * sizeof *map);
    int shared = 0;
    for (int t = 0; t < A->n_tensors; t++) {
        map[t] = ql_sense_find_tensor(B, A->tensors[t].name);
        shared += map[t] >= 0;
    }
    if (!nc || !shared) {
        fprintf(stderr, "qlab sense-diff: the files share %s\n", nc ? "no tensor" : "no candidate");
        rc = 1;
        goto out;
    }
    double *fa = ql_malloc((size_t)A->n_tensors * sizeof *fa),
           *fb = ql_malloc((size_t)B->n_tensors * sizeof *fb);
    ql_sense_scores(A, lv, common, nc, fa);
    ql_sense_scores(B, lv, common, nc, fb);
    /* rank over the tensors both files have */
    sa = ql_malloc((size_t)shared * sizeof *sa);
    sb = ql_malloc((size_t)shared * sizeof *sb);
    int *idx = ql_malloc((size_t)shared * sizeof *idx);
    int k = 0;
    for (int t = 0; t < A->n_tensors; t++)
        if (map[t] >= 0) {
            idx[k] = t;
            sa[k] = fa[t];
            sb[k] = fb[map[t]];
            k++;
        }
    free(fa);
    free(fb);
    ra = ql_malloc((size_t)shared * sizeof *ra);
    rb = ql_malloc((size_t)shared * sizeof *rb);
    ranks_of(sa, shared, ra);
    ranks_of(sb, shared, rb);
    double d2 = 0;
    mv = ql_malloc((size_t)shared * sizeof *mv);
    for (int i = 0; i < shared; i++) {
        d2 += (double)(ra[i] - rb[i]) * (ra[i] - rb[i]);
        mv[i] = (moved){i, rb[i] - ra[i]};
    }
    double rho = shared > 1 ? 1 - 6 * d2 / ((double)shared * ((double)shared * shared - 1)) : 1;
    qsort(mv, (size_t)shared, sizeof *mv, cmp_moved);
    printf("A: %s (%s)\nB: %s (%s)\n", pa, A->calib, pb, B->calib);
    printf("%d tensors, %d common candidates, level %s; Spearman rank correlation %.4f\n", shared, nc,
           ql_sense_level_name(lv), rho);
    printf("rank 1 = most sensitive; score = geometric mean %s over the common candidates\n\n",
           ql_sense_level_name(lv));
    printf("%-28s %6s %6s %6s %12s %12s %8s\n", "tensor", "rank A", "rank B", "move", "score A", "score B",
           "B/A");
    for (int i = 0; i < shared && i < top; i++) {
        int j = mv[i].t;
        printf("%-28s %6d %6d %+6d %12.4g %12.4g %8.3f\n", A->tensors[idx[j]].name, ra[j], rb[j], mv[i].move,
               sa[j], sb[j], sa[j] > 0 ? sb[j] / sa[j] : NAN);
    }
    free(idx);
out:
    free(common);
    free(map);
    free(sa);
    free(sb);
    free(ra);
    free(rb);
    free(mv);
    ql_sense_free(A);
    ql_sense_free(B);
    return rc;
}
