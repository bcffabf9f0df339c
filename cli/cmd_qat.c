/* cmd_qat.c — `qlab qat`: quantization-aware training or tuning of a plan (pipeline/qat.h) on calibration
 * text, with a progress line per step, held-out KLD, checkpoints and resume after Ctrl-C, and the result
 * written through the PTQ exporters with codes re-chosen from the trained weights. */
#include "cli/cli.h"
#include "base/atomic_file.h"
#include "base/parallel.h"
#include "core/model.h"
#include "formats/format.h"
#include "pipeline/export.h"
#include "pipeline/plan.h"
#include "pipeline/qat.h"
#include "pipeline/quantize.h"
#include "presets/preset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static const char *QAT_USAGE =
    "usage: qlab qat MODEL (--plan FILE | --preset NAME | --type FORMAT) (--text FILE | --calib SPEC | --self-text N)\n"
    "                --steps N\n"
    "                -o OUT [--to gguf|gptq|awq|...] [options]\n"
    "Quantization-aware training: every planned weight is fake-quantized in its own format in the forward pass\n"
    "(the format's quantize-then-dequantize) and its gradient passes straight through to a float master copy;\n"
    "the loss is the KL divergence to the float model's logits (distillation) and/or next-token cross-entropy.\n"
    "The trained weights are then quantized with the plan (codes re-chosen) and written by the exporter.\n"
    "  --tune norms|scales|codebooks  instead of QAT, keep the codes and train the norm vectors (norms), one\n"
    "                       multiplier per format block plus the norms (scales), or what the format keeps\n"
    "                       continuous beside its codes plus the norms (codebooks: AQLM's codebooks and row\n"
    "                       scales, end-to-end fine-tuning; written into the output as they are). A tensor\n"
    "                       MODEL already stores in the planned format (e.g. from `quant --method aqlm`)\n"
    "                       keeps its codes and starts from its codebooks; give the float model as --teacher\n"
    "  --steps N            optimizer updates (required)\n"
    "  --lr X               peak learning rate (default 1e-4; tuning 1e-3), --warmup N (default steps/10),\n"
    "                       cosine decay to --min-lr-ratio R (default 0.1), --wd X weight decay (default 0),\n"
    "                       --clip X gradient-norm limit (default 1), --accum N sequences per update (default 1)\n"
    "  --kl W --ce W        loss weights (default KL 1, CE 0)\n"
    "  --kv SCHEME          fake-quantize K and V through this cache scheme (see qlab ppl --help; no residual\n"
    "                       window); the plan's [activations] per-token schemes fake-quantize the linears' inputs\n"
    "  --lsq                learned step sizes (LSQ) for tensors in INT grid formats (int{n}_g{g}, int{n}_channel):\n"
    "                       one trained step per group, codes and gradients straight through; --lsq-lr X (1e-3)\n"
    "  --ste identity|clip  straight-through gradient: unchanged, or zero outside the row's quantized range\n"
    "  --teacher FILE       distill from this model instead of MODEL (same geometry): e.g. --tune scales of a\n"
    "                       QAT export against the float original; --self-text samples from it too\n"
    "  --text FILE          training text in chunks of --ctx tokens (default 256; --chunks N caps them)\n"
    "  --calib SPEC         ...or a calibration set (--samples N --len L --seed S; see qlab calib --help)\n"
    "  --self-text N        ...or N sequences of --ctx tokens sampled from the float model itself (data-free, as\n"
    "                       LLM-QAT; --temp T, default 1; --seed S), cached in --save-text FILE when given\n"
    "  --eval-seqs N        held-out sequences taken from the end of the training data (default 8; 0: none),\n"
    "                       evaluated every --eval-every N steps (default steps/10) as KL(float || quantized)\n"
    "  --keep-best          export the weights of the best held-out evaluation (also after Ctrl-C), not the last\n"
    "  --checkpoint FILE    save the run there (atomically) every --checkpoint-every N steps, on Ctrl-C and at the\n"
    "                       end; --resume continues from it (the result equals an uninterrupted run)\n"
    "  --recompute on|off|auto  keep one layer's activations and recompute the others in the backward (one more\n"
    "                       forward per step; same gradients bit for bit); auto (default): when keeping them all\n"
    "                       would not fit in memory\n"
    "  --dry-run            print the training memory with and without --recompute and the automatic choice, exit\n"
    "  --seed S             which sequences the steps draw (default 0); --threads N\n"
    "  --log-every N        progress line every N steps (default: about 50 lines per run)\n"
    "A run is deterministic for a seed and a thread count. Ctrl-C stops after the current step and keeps a\n"
    "checkpoint; a loss that stops being finite ends the run and leaves the last good checkpoint.\n"
    "  " CLI_DEVICE_USAGE;

typedef struct {
    int log_every;
    double t0;
} qat_cli;

static void fmt_time(double s, char *buf, size_t cap) {
    if (s >= 3600) snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, cap, "%.0fs", s);
}

static void on_step(void *user, const ql_qat_report *r) {
    const qat_cli *c = user;
    if (!(r->step % c->log_every == 0 || r->step == r->steps || r->evaluated || r->step == 1)) return;
    char eta[32];
    fmt_time(r->eta_s, eta, sizeof eta);
    fprintf(stderr, "qlab qat: step %d/%d loss %.5f (kl %.5f ce %.4f) lr %.2e |g| %.3g %.0f tok/s ETA %s", r->step,
            r->steps, r->loss, r->kl, r->ce, r->lr, r->grad_norm, r->tokens_per_s, eta);
    if (r->evaluated) fprintf(stderr, " | held-out KLD %.6f", r->eval_kld);
    if (r->checkpointed) fprintf(stderr, " | checkpoint");
    fputc('\n', stderr);
}

/* --self-text: sampled from the float model, or read back from --save-text FILE when it holds the same request
 * (a header of n, len, temperature, seed), so repeated runs share one sampling. */
static ql_status self_text_tokens(const ql_model *m, cli_calib *ca, int n, double temp, const char *cache,
                                  int32_t **tok, int64_t *n_seq) {
    ca->ctx = cli_fit_ctx("qat", m, ca->ctx, ca->ctx_given);
    if (ca->ctx < 0) return QL_ERR_ARG;
    const size_t cnt = (size_t)n * ca->ctx;
    int32_t *buf = ql_malloc(cnt * sizeof(int32_t));
    const double hdr[4] = {n, ca->ctx, temp, (double)ca->seed};
    FILE *f = cache ? fopen(cache, "rb") : NULL;
    if (f) {
        double h[4];
        bool same = fread(h, sizeof h, 1, f) == 1 && !memcmp(h, hdr, sizeof h) && fread(buf, sizeof(int32_t), cnt, f) == cnt &&
                    fgetc(f) == EOF;
        fclose(f);
        for (size_t i = 0; same && i < cnt; i++) same = buf[i] >= 0 && buf[i] < m->cfg.n_vocab;
        if (same) {
            fprintf(stderr, "qlab qat: %d sampled sequences read from %s\n", n, cache);
            *tok = buf, *n_seq = n;
            return QL_OK;
        }
        fprintf(stderr, "qlab qat: %s holds another sampling; sampling again\n", cache);
    }
    fprintf(stderr, "qlab qat: sampling %d sequences of %d tokens from the float model (temperature %g)\n", n, ca->ctx,
            temp);
    cli_install_sigint();
    ql_progress *bar = cli_progress_bar("sample");
    ql_status s = ql_qat_sample_text(m, n, ca->ctx, temp, ca->seed, ca->threads, bar, buf);
    cli_progress_done(bar);
    if (!s && cache) {
        ql_atomic_file *af;
        if (!(s = ql_atomic_open(cache, &af))) {
            if ((s = ql_atomic_write(af, hdr, sizeof hdr)) || (s = ql_atomic_write(af, buf, cnt * sizeof(int32_t))))
                ql_atomic_abort(af);
            else
                s = ql_atomic_commit(af);
        }
    }
    if (s) {
        free(buf);
        return s;
    }
    *tok = buf, *n_seq = n;
    return QL_OK;
}

int cmd_qat(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, QAT_USAGE);
    const char *flag, *pos, *model = NULL, *out = NULL, *plan_path = NULL, *preset = NULL, *type = NULL, *to = NULL;
    const char *tune = NULL, *ste = "identity", *ckpt = NULL, *teacher_path = NULL;
    int steps = 0, accum = 1, warmup = -1, eval_seqs = 8, eval_every = -1, ckpt_every = 0, log_every = 0;
    double lr = NAN, min_lr = 0.1, wd = 0.0, clip = 1.0, kl_w = 1.0, ce_w = 0.0;
    bool resume = false, lr_given = false;
    int self_text = 0;
    bool lsq = false, dry_run = false, keep_best = false;
    const char *kv_name = NULL;
    ql_kv_scheme kv;
    double lsq_lr = 1e-3;
    double temp = 1.0;
    const char *save_text = NULL, *recompute = "auto";
    cli_calib ca;
    cli_calib_defaults(&ca, 256, 0);
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (model) return cli_usage_error("qat", QAT_USAGE, "unexpected argument '%s'", pos);
            model = pos;
        } else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--plan")) plan_path = cli_value(&a, flag);
        else if (!strcmp(flag, "--preset")) preset = cli_value(&a, flag);
        else if (!strcmp(flag, "--type")) type = cli_value(&a, flag);
        else if (!strcmp(flag, "--to")) to = cli_value(&a, flag);
        else if (!strcmp(flag, "--tune")) tune = cli_value(&a, flag);
        else if (!strcmp(flag, "--ste")) ste = cli_value(&a, flag);
        else if (!strcmp(flag, "--teacher")) teacher_path = cli_value(&a, flag);
        else if (!strcmp(flag, "--steps")) steps = cli_int(&a, flag, 1, 1 << 24);
        else if (!strcmp(flag, "--accum")) accum = cli_int(&a, flag, 1, 1 << 16);
        else if (!strcmp(flag, "--warmup")) warmup = cli_int(&a, flag, 0, 1 << 24);
        else if (!strcmp(flag, "--lr")) lr = cli_double(&a, flag), lr_given = true;
        else if (!strcmp(flag, "--min-lr-ratio")) min_lr = cli_double(&a, flag);
        else if (!strcmp(flag, "--wd")) wd = cli_double(&a, flag);
        else if (!strcmp(flag, "--clip")) clip = cli_double(&a, flag);
        else if (!strcmp(flag, "--kl")) kl_w = cli_double(&a, flag);
        else if (!strcmp(flag, "--ce")) ce_w = cli_double(&a, flag);
        else if (!strcmp(flag, "--eval-seqs")) eval_seqs = cli_int(&a, flag, 0, 1 << 20);
        else if (!strcmp(flag, "--eval-every")) eval_every = cli_int(&a, flag, 0, 1 << 24);
        else if (!strcmp(flag, "--checkpoint")) ckpt = cli_value(&a, flag);
        else if (!strcmp(flag, "--checkpoint-every")) ckpt_every = cli_int(&a, flag, 0, 1 << 24);
        else if (!strcmp(flag, "--resume")) resume = true;
        else if (!strcmp(flag, "--self-text")) self_text = cli_int(&a, flag, 1, 1 << 20);
        else if (!strcmp(flag, "--temp")) temp = cli_double(&a, flag);
        else if (!strcmp(flag, "--save-text")) save_text = cli_value(&a, flag);
        else if (!strcmp(flag, "--recompute")) recompute = cli_value(&a, flag);
        else if (!strcmp(flag, "--lsq")) lsq = true;
        else if (!strcmp(flag, "--kv")) kv_name = cli_value(&a, flag);
        else if (!strcmp(flag, "--dry-run")) dry_run = true;
        else if (!strcmp(flag, "--keep-best")) keep_best = true;
        else if (!strcmp(flag, "--lsq-lr")) lsq_lr = cli_double(&a, flag);
        else if (!strcmp(flag, "--log-every")) log_every = cli_int(&a, flag, 1, 1 << 24);
        else if (cli_calib_flag(&a, flag, &ca)) continue;
        else if (cli_device_flag(&a, flag)) continue;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model) return cli_usage_error("qat", QAT_USAGE, "needs MODEL");
    if (!out) return cli_usage_error("qat", QAT_USAGE, "needs -o OUT");
    if ((type != NULL) + (preset != NULL) + (plan_path != NULL) != 1)
        return cli_usage_error("qat", QAT_USAGE, "give exactly one of --plan, --preset, --type");
    if (cli_calib_given(&ca) == (self_text > 0))
        return cli_usage_error("qat", QAT_USAGE, "needs training text: one of --text FILE, --calib SPEC, --self-text N");
    if (!(temp > 0) || !isfinite(temp))
        return cli_usage_error("qat", QAT_USAGE, "--temp %g: the temperature must be a positive number", temp);
    if (steps <= 0) return cli_usage_error("qat", QAT_USAGE, "needs --steps N");
    ql_qat_mode mode = QL_QAT_FULL;
    if (tune && !strcmp(tune, "norms")) mode = QL_TUNE_NORMS;
    else if (tune && !strcmp(tune, "scales")) mode = QL_TUNE_SCALES;
    else if (tune && !strcmp(tune, "codebooks")) mode = QL_TUNE_CODEBOOKS;
    else if (tune)
        return cli_usage_error("qat", QAT_USAGE, "--tune %s: the choices are norms, scales and codebooks", tune);
    if (strcmp(ste, "identity") && strcmp(ste, "clip"))
        return cli_usage_error("qat", QAT_USAGE, "--ste %s: the choices are identity and clip", ste);
    if (strcmp(recompute, "on") && strcmp(recompute, "off") && strcmp(recompute, "auto"))
        return cli_usage_error("qat", QAT_USAGE, "--recompute %s: the choices are on, off and auto", recompute);
    if (kv_name && !ql_kv_scheme_parse(kv_name, &kv)) return cli_usage_error("qat", QAT_USAGE, "%s", ql_last_error());
    if (lsq && tune) return cli_usage_error("qat", QAT_USAGE, "--lsq trains steps during QAT; it does not combine with --tune");
    if (!(lsq_lr > 0) || !isfinite(lsq_lr))
        return cli_usage_error("qat", QAT_USAGE, "--lsq-lr %g: the learning rate must be a positive number", lsq_lr);
    if (!lr_given) lr = mode == QL_QAT_FULL ? 1e-4 : 1e-3;
    if (!(lr > 0) || !isfinite(lr))
        return cli_usage_error("qat", QAT_USAGE, "--lr %g: the learning rate must be a positive number", lr);
    if (!(kl_w >= 0) || !(ce_w >= 0) || !(kl_w + ce_w > 0))
        return cli_usage_error("qat", QAT_USAGE, "--kl and --ce must be non-negative and not both 0");
    if (resume && !ckpt) return cli_usage_error("qat", QAT_USAGE, "--resume needs --checkpoint FILE");
    const ql_exporter_info *exporter = ql_exporter_default();
    if (to && ql_exporter_find(to, &exporter)) return cli_usage_error("qat", QAT_USAGE, "%s", ql_last_error());
    if (cli_refuse_input_as_output("qat", out, CLI_INPUTS(model, plan_path, ca.text, ckpt, teacher_path)) ||
        cli_refuse_input_as_output("qat", ckpt, CLI_INPUTS(model, plan_path, ca.text)))
        return 1;

    int rc = 0;
    ql_model *m = NULL, *teacher = NULL;
    ql_plan *plan = NULL;
    ql_preset *ps = NULL;
    int32_t *tok = NULL;
    int64_t n_seq = 0;
    ql_train_model *tm = NULL;
    ql_status s = ql_model_load(model, &m);
    if (!s && teacher_path) s = ql_model_load(teacher_path, &teacher);
    if (!s) {
        if (type) s = ql_plan_single_format(type, m, &plan);
        else if (preset) {
            s = ql_preset_load(preset, &ps);
            if (!s) s = ql_preset_resolve(ps, m, false, &plan);
        } else
            s = ql_plan_load(plan_path, &plan);
    }
    if (!s) s = ql_qat_check_plan(m, plan);
    if (!s && dry_run) {
        const int T = cli_fit_ctx("qat", m, ca.ctx, ca.ctx_given);
        if (T < 0) {
            rc = cli_fail("qat");
            goto done;
        }
        const char *what = NULL;
        const double limit = ql_mem_limit_bytes(&what), n_eval = eval_seqs;
        const double keep = ql_qat_memory_bytes(m, T, (int64_t)n_eval, false), rec = ql_qat_memory_bytes(m, T, (int64_t)n_eval, true);
        printf("training memory at --ctx %d, batch 1, %d held-out sequences (%lld parameters):\n", T, eval_seqs,
               (long long)ql_model_n_params(m));
        printf("  activations kept:       %10.3f GiB (activations %.3f GiB)\n", keep / 1073741824.0,
               ql_train_acts_bytes_opt(&m->cfg, T, false) / 1073741824.0);
        printf("  activations recomputed: %10.3f GiB (activations %.3f GiB)\n", rec / 1073741824.0,
               ql_train_acts_bytes_opt(&m->cfg, T, true) / 1073741824.0);
        printf("  limit (%s): %.3f GiB -> --recompute auto %s\n", what ? what : "memory", limit / 1073741824.0,
               !strcmp(recompute, "off") ? "(off given)"
               : keep <= limit        ? "keeps them"
               : rec <= limit         ? "recomputes"
                                      : "refuses (neither fits)");
        goto done;
    }
    if (!s && self_text > 0)
        s = self_text_tokens(teacher ? teacher : m, &ca, self_text, temp, save_text, &tok, &n_seq);
    else if (!s) {
        ca.label = "qat";
        s = cli_calib_tokens(m, &ca, &tok, &n_seq);
    }
    if (s) {
        rc = cli_fail("qat");
        goto done;
    }
    /* held out: the last sequences, never trained on */
    int64_t n_eval = eval_seqs > 0 && n_seq > 1 ? QL_MIN((int64_t)eval_seqs, n_seq / 10 > 0 ? n_seq / 10 : 1) : 0;
    if (eval_seqs > 0 && n_eval == 0)
        fprintf(stderr, "qlab qat: note: one sequence of %d tokens: no held-out evaluation\n", ca.ctx);
    qat_cli cc = {.log_every = log_every > 0 ? log_every : (steps >= 50 ? steps / 50 : 1)};
    cli_install_sigint();
    ql_qat_opts o = {
        .plan = plan, .teacher = teacher, .mode = mode, .ste = strcmp(ste, "clip") ? QL_STE_IDENTITY : QL_STE_CLIPPED,
        .train = tok, .n_train = n_seq - n_eval, .eval = tok + (n_seq - n_eval) * ca.ctx, .n_eval = n_eval,
        .seq_len = ca.ctx, .steps = steps, .accum = accum,
        .adam = {.lr = lr, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = wd,
                 .warmup = warmup >= 0 ? warmup : steps / 10, .min_lr_ratio = min_lr, .clip = clip},
        .kl_weight = kl_w, .ce_weight = ce_w, .lsq = lsq, .lsq_lr = lsq_lr, .kv = kv_name ? &kv : NULL, .seed = ca.seed, .n_threads = ca.threads,
        .eval_every = eval_every >= 0 ? eval_every : QL_MAX(1, steps / 10),
        .checkpoint = ckpt, .checkpoint_every = ckpt_every, .resume = resume,
        .keep_best = keep_best,
        .recompute = !strcmp(recompute, "on") ? 1 : !strcmp(recompute, "off") ? 0 : -1,
        .report = on_step, .user = &cc, .cancel = &cli_cancel_flag,
    };
    fprintf(stderr, "qlab qat: %s %s, %d steps of %d x %d tokens (%lld training sequences, %lld held out), %d threads\n",
            mode == QL_QAT_FULL ? "QAT of" : mode == QL_TUNE_NORMS ? "tuning the norms of"
            : mode == QL_TUNE_SCALES ? "tuning the scales of" : "tuning the codebooks of",
            plan->source ? plan->source : "the plan", steps, accum, ca.ctx, (long long)o.n_train, (long long)n_eval,
            ca.threads);
    ql_qat_result res;
    s = ql_qat_run(m, &o, &tm, &res);
    if (s == QL_ERR_CANCELLED && keep_best && o.n_eval > 0) {
        /* Ctrl-C with --keep-best: the best weights so far are exported */
        fprintf(stderr, "qlab qat: %s; exporting the best evaluation's weights\n", ql_last_error());
        s = QL_OK;
    } else if (s == QL_ERR_CANCELLED) {
        fprintf(stderr, "qlab qat: %s\n", ql_last_error());
        rc = 130;
        goto done;
    }
    if (s) {
        rc = cli_fail("qat");
        goto done;
    }
    if (res.resumed_from >= 0) fprintf(stderr, "qlab qat: resumed from %s at step %d\n", ckpt, res.resumed_from);
    if (res.codes_from_model > 0)
        fprintf(stderr, "qlab qat: %d tensors kept MODEL's codes (already in the planned format)\n", res.codes_from_model);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr, "qlab qat: %d steps in %.1fs; held-out KLD %.6f -> %.6f; peak memory %.1f MiB (training state "
                    "%.1f MiB%s)\n", res.steps_done, res.seconds, res.eval_kld_start, res.eval_kld_end,
            ru.ru_maxrss / 1024.0, res.peak_train_bytes / 1048576.0, res.recomputed ? ", activations recomputed" : "");
    if (keep_best && o.n_eval > 0)
        fprintf(stderr, "qlab qat: keeping step %d's weights (held-out KLD %.6f)\n", res.best_step, res.best_kld);
    if ((s = ql_qat_apply(m, tm))) {
        rc = cli_fail("qat");
        goto done;
    }
    ql_quant_opts qo = {.plan = plan, .n_threads = ca.threads, .exporter = exporter};
    ql_quant_stats qs;
    ql_progress *bar = cli_progress_bar("export");
    s = ql_quantize_model(m, &qo, out, bar, &qs);
    cli_progress_done(bar);
    if (s) {
        rc = cli_fail("qat");
        goto done;
    }
    fprintf(stderr, "qlab qat: wrote %s (%lld tensors quantized, %.2f MiB)\n", out, (long long)qs.tensors_quantized,
            qs.bytes_out / 1048576.0);
done:
    ql_train_model_free(tm);
    free(tok);
    ql_plan_free(plan);
    ql_preset_free(ps);
    ql_model_free(m);
    ql_model_free(teacher);
    return rc;
}
