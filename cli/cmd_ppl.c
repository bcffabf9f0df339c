/* cmd_ppl.c — `qlab ppl`, `qlab logits` and `qlab tokenize`: the measuring commands. */
#include "cli/cli.h"
#include "core/model.h"
#include "core/ppl.h"
#include "core/kv_cache.h"
#include "core/kv_settings.h"
#include "base/parallel.h"
#include "base/atomic_file.h"
#include "methods/act_recipe.h"
#include "methods/layer_f32.h"
#include "core/stats.h"

#include <cblas.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *PPL_USAGE =
    "usage: qlab ppl MODEL --text FILE [--ctx 512] [--chunks N] [--threads N] [--json]\n"
    "                [--save-logits F] [--kld-base F] [--kv K[:V]] [--batch B]\n"
    "Perplexity of MODEL on FILE, computed as llama.cpp's perplexity tool does: the whole file tokenized with BOS,\n"
    "chunks of --ctx tokens, each chunk starting with BOS, only the second half of each chunk scored.\n"
    "  --save-logits F   store the log-probabilities of every scored token (the base for --kld-base)\n"
    "  --kld-base F      also report KL divergence, its 99th percentile and top-1 agreement against F\n"
    "  --json            one JSON object on stdout: ppl, ppl_stderr, chunks, tokens_scored, tokens_per_s, ...\n"
    "  --act MODE        simulate activation quantization in every linear layer: int8_token (per-token dynamic),\n"
    "                    int8_tensor (per-tensor static), fp8_token, fp8_tensor, llm_int8 (outliers kept in float)\n"
    "  --act-stats F     statistics (qlab stats) giving the static scales for *_tensor modes: of MODEL, or of the\n"
    "                    model MODEL is a weight-quantized copy of (not of a model SmoothQuant/AWQ rescaled)\n"
    "  --act-threshold T LLM.int8() outlier threshold on |x| (default 6)\n"
    "A file written by qlab quant with activation schemes (a plan's [activations], quant --act) carries them as\n"
    "qlab.act.* keys and is measured with them; --act MODE (or --act none) replaces them.\n"
    "  --kv K[:V]        KV cache scheme (default f32): llama.cpp's f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl\n"
    "                    (as llama-perplexity -fa on -ctk K -ctv V), or qlab's int{8,4,2}_{token,channel}_g{32,64,128}\n"
    "                    [_rN: N recent tokens in float][_had: Hadamard-rotated K], fp8_e4m3, fp8_e5m2, kivi4, kivi2.\n"
    "                    Without --kld-base, a float-cache pass runs first and KLD against it is reported.\n"
    "                    Without --kv, a file with KV settings (a plan's [kv], qlab.kv.* keys) runs them\n"
    "  --batch B         sequences the KV memory figure is given for (default 1)\n"
    "  " CLI_DEVICE_USAGE;

/* Does every layer of the settings keep the float cache (nothing to measure KLD for)? */
static bool kv_settings_all_f32(const ql_kv_settings *s) {
    if (!ql_kv_scheme_is_f32(&s->scheme)) return false;
    for (int i = 0; i < s->n_layer_own; i++)
        if (!ql_kv_scheme_is_f32(&s->layer_scheme[i])) return false;
    return true;
}

static ql_status load_model_and_tokens(const char *model_path, const char *text_path, ql_model **m, int32_t **ids,
                                       int64_t *n_ids) {
    ql_status s = ql_model_load(model_path, m);
    if (s) return s;
    if (!(*m)->tok) return ql_model_no_tokenizer(*m, "perplexity needs one");
    char *text;
    size_t len;
    if ((s = ql_read_file(text_path, &text, &len))) return s;
    s = ql_tokenize((*m)->tok, text, len, true, ids, n_ids);
    free(text);
    return s;
}

int cmd_ppl(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, PPL_USAGE);
    const char *flag, *pos, *model = NULL, *text = NULL;
    ql_ppl_opts o = {.n_ctx = 512, .n_threads = ql_default_threads()};
    bool json = false, ctx_given = false;
    const char *act = NULL, *act_stats = NULL;
    double act_threshold = 0;
    const char *kv = NULL;
    int batch = 1;
    bool batch_given = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (model) return cli_usage_error("ppl", PPL_USAGE, "unexpected argument '%s'", pos);
            model = pos;
        } else if (!strcmp(flag, "--text") || !strcmp(flag, "-f")) text = cli_value(&a, flag);
        else if (!strcmp(flag, "--ctx") || !strcmp(flag, "-c")) o.n_ctx = cli_int(&a, flag, 4, 1 << 20), ctx_given = true;
        else if (!strcmp(flag, "--chunks")) o.n_chunks = cli_int(&a, flag, 1, 1 << 30);
        else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t")) o.n_threads = cli_int(&a, flag, 1, 256);
        else if (!strcmp(flag, "--json")) json = true;
        else if (!strcmp(flag, "--save-logits")) o.save_logits = cli_value(&a, flag);
        else if (!strcmp(flag, "--kld-base")) o.kld_base = cli_value(&a, flag);
        else if (!strcmp(flag, "--act")) act = cli_value(&a, flag);
        else if (!strcmp(flag, "--act-stats")) act_stats = cli_value(&a, flag);
        else if (!strcmp(flag, "--act-threshold")) act_threshold = cli_double(&a, flag);
        else if (!strcmp(flag, "--kv")) kv = cli_value(&a, flag);
        else if (!strcmp(flag, "--batch")) batch = cli_int(&a, flag, 1, 1 << 16), batch_given = true;
        else if (cli_device_flag(&a, flag)) continue;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model || !text) return cli_usage_error("ppl", PPL_USAGE, "needs MODEL and --text FILE");
    ql_kv_scheme kvs = ql_kv_scheme_f32();
    if (kv && !ql_kv_scheme_parse(kv, &kvs)) return cli_fail("ppl");
    if (cli_refuse_input_as_output("ppl", o.save_logits, CLI_INPUTS(model, text, o.kld_base, act_stats))) return 1;
    ql_act_mode act_mode = QL_ACT_NONE;
    float act_spec_threshold = 0;
    if (act && ql_act_spec_parse(act, &act_mode, &act_spec_threshold))
        return cli_usage_error("ppl", PPL_USAGE, "--act: %s", ql_last_error());
    if (act_spec_threshold > 0 && act_threshold <= 0) act_threshold = act_spec_threshold;
    if (ql_act_mode_is_static(act_mode) && !act_stats)
        return cli_usage_error("ppl", PPL_USAGE, "--act %s needs --act-stats FILE (static scales)", act);
    ql_model *m = NULL;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    ql_infer *inf = NULL;
    int rc = 0;
    ql_kv_settings file_kv;
    ql_kv_settings_init(&file_kv);
    char kv_base[4096] = ""; /* the float-cache pass's log-probabilities (removed at the end) */
    double t0 = ql_time_s();
    if (load_model_and_tokens(model, text, &m, &ids, &n_ids) || ql_infer_new(m, o.n_threads, &inf)) {
        rc = cli_fail("ppl");
        goto out;
    }
    if ((o.n_ctx = cli_fit_ctx("ppl", m, o.n_ctx, ctx_given)) < 0) {
        rc = cli_fail("ppl");
        goto out;
    }
    if (!ql_kv_scheme_is_f32(&kvs) && ql_infer_set_kv(inf, &kvs)) {
        rc = cli_fail("ppl");
        goto out;
    }
    /* without --kv, the KV settings the file carries (a plan's [kv], qlab.kv.*) */
    if (!kv && ql_kv_settings_from_gguf(m->gguf, model, m->cfg.n_layer, &file_kv)) {
        rc = cli_fail("ppl");
        goto out;
    }
    if (file_kv.set) {
        if (ql_infer_set_kv_settings(inf, &file_kv)) {
            rc = cli_fail("ppl");
            goto out;
        }
        if (!json) {
            char d[512];
            fprintf(stderr, "qlab ppl: KV cache as the file says (qlab.kv.*): %s\n",
                    ql_kv_settings_describe(&file_kv, d, sizeof d));
        }
    }
    if (act_mode != QL_ACT_NONE) {
        ql_stats *ast = NULL;
        bool other_weights = false;
        ql_status as = act_stats ? ql_stats_load(act_stats, &ast) : QL_OK;
        /* the scales must describe this model's activations: a weight-quantized copy of the model they were
         * collected on is fine, a SmoothQuant/AWQ-rescaled one (other norm weights) is not */
        if (!as && ast) as = ql_stats_check_model(ast, act_stats, m, QL_STATS_SAME_ACTIVATIONS, &other_weights);
        if (!as && other_weights && !json)
            fprintf(stderr, "qlab ppl: note: %s was collected on %s (same shapes and norms, other weights)\n",
                    act_stats, ast->model);
        if (!as) as = ql_infer_set_act_quant_all(inf, ast, act_mode, (float)act_threshold, false);
        ql_stats_free(ast);
        if (as) {
            rc = cli_fail("ppl");
            goto out;
        }
    }
    if (!act) { /* the schemes the file was quantized with */
        int n_set = 0, counts[QL_ACT_MODE_COUNT];
        if (ql_infer_set_act_quant_from_file(inf, &n_set, counts)) {
            rc = cli_fail("ppl");
            goto out;
        }
        if (n_set && !json) {
            fprintf(stderr, "qlab ppl: activations quantized as the file says (qlab.act.*):");
            for (int k = 1; k < QL_ACT_MODE_COUNT; k++)
                if (counts[k]) fprintf(stderr, " %s %d", ql_act_mode_name((ql_act_mode)k), counts[k]);
            fprintf(stderr, " linears\n");
        }
    }
    if (!json)
        fprintf(stderr, "qlab ppl: %s, %lld tokens (tokenized and loaded in %.2fs), ctx %d\n", model, (long long)n_ids,
                ql_time_s() - t0, o.n_ctx);
    ql_progress *bar = cli_progress_bar("ppl");
    ql_ppl_result r;
    ql_status s = QL_OK;
    const bool kv_quantized = !ql_kv_scheme_is_f32(&kvs) || (file_kv.set && !kv_settings_all_f32(&file_kv));
    if (kv_quantized && !o.kld_base) {
        /* the same text with the float cache first: the KV scheme's KLD is measured against it */
        const char *tmpdir = getenv("TMPDIR");
        snprintf(kv_base, sizeof kv_base, "%s/qlab-kv-base-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
        int fd = mkstemp(kv_base);
        if (fd < 0) {
            kv_base[0] = 0;
            rc = cli_usage_error("ppl", NULL, "cannot create a temporary file in %s: %s", tmpdir ? tmpdir : "/tmp", strerror(errno));
            goto out;
        }
        close(fd);
        ql_ppl_opts bo = o;
        bo.save_logits = kv_base;
        bo.kld_base = NULL;
        ql_kv_scheme f32 = ql_kv_scheme_f32();
        if (!json) fprintf(stderr, "qlab ppl: float KV cache first (the base for KLD)\n");
        if (!(s = ql_infer_set_kv(inf, &f32))) s = ql_perplexity(inf, ids, n_ids, &bo, bar, &r);
        if (!s) s = file_kv.set ? ql_infer_set_kv_settings(inf, &file_kv) : ql_infer_set_kv(inf, &kvs);
        o.kld_base = kv_base;
    }
    if (!s) s = ql_perplexity(inf, ids, n_ids, &o, bar, &r);
    cli_progress_done(bar);
    if (s) {
        rc = cli_fail("ppl");
        goto out;
    }
    char kvname[512];
    if (file_kv.set) ql_kv_settings_describe(&file_kv, kvname, sizeof kvname);
    else ql_kv_scheme_name(&kvs, kvname, sizeof kvname);
    if (file_kv.set && !batch_given && file_kv.batch > 0) batch = file_kv.batch;
    const int64_t kv_bytes = file_kv.set ? ql_kv_settings_bytes(&file_kv, &m->cfg, o.n_ctx, batch)
                                         : ql_kv_cache_bytes(&m->cfg, &kvs, o.n_ctx, batch);
    ql_kv_scheme f16 = kvs;
    ql_kv_scheme_parse("f16", &f16);
    const int64_t kv_f16 = ql_kv_cache_bytes(&m->cfg, &f16, o.n_ctx, batch);
    int64_t w_bytes = 0;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) w_bytes += (int64_t)m->gguf->tensors[i].nbytes;
    if (json) {
        printf("{\"model\": \"%s\", \"ctx\": %d, \"ppl\": %.6f, \"ppl_stderr\": %.6f, \"chunks\": %d, "
               "\"tokens_scored\": %lld, \"tokens_per_s\": %.1f, \"seconds\": %.3f",
               model, o.n_ctx, r.ppl, r.ppl_stderr, r.chunks, (long long)r.tokens_scored, r.tokens_per_s, r.seconds);
        printf(", \"kv\": \"%s\", \"kv_bytes\": %lld, \"kv_batch\": %d, \"weights_bytes\": %lld", kvname,
               (long long)kv_bytes, batch, (long long)w_bytes);
        if (r.has_kld)
            printf(", \"kld_mean\": %.8f, \"kld_stderr\": %.8f, \"kld_p99\": %.8f, \"kld_max\": %.8f, "
                   "\"top1_agreement\": %.6f, \"ppl_base\": %.6f",
                   r.kld_mean, r.kld_stderr, r.kld_p99, r.kld_max, r.top1_agreement, r.ppl_base);
        printf("}\n");
    } else {
        printf("PPL = %.4f +/- %.5f   (%d chunks of %d, %lld tokens scored, %.0f tokens/s, %.1fs)\n", r.ppl,
               r.ppl_stderr, r.chunks, o.n_ctx, (long long)r.tokens_scored, r.tokens_per_s, r.seconds);
        if (r.has_kld)
            printf("KLD mean = %.6f +/- %.6f   p99 = %.6f   max = %.4f   top-1 agreement = %.3f%%   base PPL = %.4f\n",
                   r.kld_mean, r.kld_stderr, r.kld_p99, r.kld_max, 100 * r.top1_agreement, r.ppl_base);
        if (o.save_logits) printf("log-probabilities saved to %s\n", o.save_logits);
        printf("memory at ctx %d x %d sequence%s: KV cache %s %.3f MiB (f16 %.3f MiB), weights %.3f MiB\n", o.n_ctx,
               batch, batch > 1 ? "s" : "", kvname, kv_bytes / 1048576.0, kv_f16 / 1048576.0, w_bytes / 1048576.0);
        if (file_kv.set && file_kv.ctx > 0 && file_kv.ctx != o.n_ctx) { /* the plan's deployment context */
            const int64_t at = ql_kv_settings_bytes(&file_kv, &m->cfg, file_kv.ctx, batch);
            printf("memory at the file's ctx %lld x %d: KV cache %.3f MiB + weights %.3f MiB = %.3f MiB\n",
                   (long long)file_kv.ctx, batch, at / 1048576.0, w_bytes / 1048576.0, (at + w_bytes) / 1048576.0);
        }
    }
out:
    ql_kv_settings_free(&file_kv);
    if (kv_base[0]) unlink(kv_base);
    free(ids);
    ql_infer_free(inf);
    ql_model_free(m);
    return rc;
}

static const char *LOGITS_USAGE =
    "usage: qlab logits MODEL --tokens FILE -o OUT.f32 [--ctx N] [--threads N]\n"
    "Writes the logits of every position (n_tokens x n_vocab float32, row-major) for the token ids in FILE\n"
    "(one id per line). Row i is the prediction after seeing tokens 0..i.\n"
    "  --ctx N   the context the tokens run in (default: their number; at least that), as llama.cpp's -c:\n"
    "           a model with LongRoPE factors (Phi-3 128k) uses its long factors when N exceeds\n"
    "           rope.scaling.original_context_length, else the short ones\n";

static ql_status read_token_file(const char *path, int32_t **ids, int64_t *n) {
    char *text;
    size_t len;
    ql_status s = ql_read_file(path, &text, &len);
    if (s) return s;
    int64_t cap = 256, cnt = 0;
    int32_t *v = ql_malloc((size_t)cap * 4);
    char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(text);
            free(v);
            return ql_fail(QL_ERR_FORMAT, "%s: not a token id near byte %ld", path, (long)(p - text));
        }
        if (cnt == cap) v = ql_realloc(v, (size_t)(cap *= 2) * 4);
        v[cnt++] = (int32_t)x;
        p = end;
    }
    free(text);
    *ids = v;
    *n = cnt;
    return cnt ? QL_OK : ql_fail(QL_ERR_FORMAT, "%s: no token ids", path);
}

int cmd_logits(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, LOGITS_USAGE);
    const char *flag, *pos, *model = NULL, *tokens = NULL, *out = NULL;
    int threads = ql_default_threads(), ctx = 0;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) model = pos;
        else if (!strcmp(flag, "--tokens")) tokens = cli_value(&a, flag);
        else if (!strcmp(flag, "--ctx") || !strcmp(flag, "-c")) ctx = cli_int(&a, flag, 1, 1 << 20);
        else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t")) threads = cli_int(&a, flag, 1, 256);
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model || !tokens || !out) return cli_usage_error("logits", LOGITS_USAGE, "needs MODEL, --tokens FILE and -o OUT");
    if (cli_refuse_input_as_output("logits", out, CLI_INPUTS(model, tokens))) return 1;
    ql_model *m = NULL;
    ql_infer *inf = NULL;
    ql_scratch *sc = NULL;
    int32_t *ids = NULL;
    int64_t n = 0;
    float *logits = NULL;
    int rc = 0;
    ql_blas_set_threads(threads);
    if (ql_model_load(model, &m) || read_token_file(tokens, &ids, &n) || ql_infer_new(m, threads, &inf)) {
        rc = cli_fail("logits");
        goto done;
    }
    if (n > (1 << 20)) {
        rc = cli_usage_error("logits", NULL, "%s: too many tokens (%lld)", tokens, (long long)n);
        goto done;
    }
    if (ctx > 0 && ctx < n) {
        rc = cli_usage_error("logits", NULL, "--ctx %d is shorter than the %lld tokens of %s", ctx, (long long)n,
                             tokens);
        goto done;
    }
    /* the scratch (and its KV cache) is the pass's context: what LongRoPE's choice of factors reads */
    if (ctx > n && (ctx = cli_fit_ctx("logits", m, ctx, true)) < 0) {
        rc = cli_fail("logits");
        goto done;
    }
    sc = ql_scratch_new(inf, ctx > n ? ctx : (int)n);
    logits = ql_malloc((size_t)n * m->cfg.n_vocab * sizeof(float));
    if (ql_forward(inf, sc, ids, (int)n, 0, logits)) {
        rc = cli_fail("logits");
        goto done;
    }
    if (ql_atomic_write_file(out, logits, (size_t)n * m->cfg.n_vocab * sizeof(float))) rc = cli_fail("logits");
    else fprintf(stderr, "qlab logits: wrote %lld x %d logits to %s\n", (long long)n, m->cfg.n_vocab, out);
done:
    free(logits);
    free(ids);
    ql_scratch_free(sc);
    ql_infer_free(inf);
    ql_model_free(m);
    return rc;
}

static const char *TOKENIZE_USAGE =
    "usage: qlab tokenize MODEL (--text FILE | --prompt TEXT) [--no-bos] [--pieces]\n"
    "Prints the token ids (one per line; with --pieces, id and text).\n";

int cmd_tokenize(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, TOKENIZE_USAGE);
    const char *flag, *pos, *model = NULL, *file = NULL, *prompt = NULL;
    bool bos = true, pieces = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) model = pos;
        else if (!strcmp(flag, "--text")) file = cli_value(&a, flag);
        else if (!strcmp(flag, "--prompt") || !strcmp(flag, "-p")) prompt = cli_value(&a, flag);
        else if (!strcmp(flag, "--no-bos")) bos = false;
        else if (!strcmp(flag, "--pieces")) pieces = true;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model || (!file && !prompt)) return cli_usage_error("tokenize", TOKENIZE_USAGE, "needs MODEL and a text");
    ql_model *m = NULL;
    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    int64_t n = 0;
    int rc = 0;
    if (ql_model_load(model, &m)) return cli_fail("tokenize");
    if (!m->tok) {
        ql_model_no_tokenizer(m, NULL);
        ql_model_free(m);
        return cli_fail("tokenize");
    }
    if (file && ql_read_file(file, &text, &len)) rc = cli_fail("tokenize");
    else if (ql_tokenize(m->tok, file ? text : prompt, file ? len : strlen(prompt), bos, &ids, &n)) rc = cli_fail("tokenize");
    for (int64_t i = 0; !rc && i < n; i++) {
        if (pieces) {
            char buf[256];
            int l = ql_token_to_piece(m->tok, ids[i], buf, sizeof buf);
            printf("%d\t'%.*s'\n", ids[i], l < 0 ? 0 : l > 255 ? 255 : l, buf);
        } else
            printf("%d\n", ids[i]);
    }
    free(ids);
    free(text);
    ql_model_free(m);
    return rc;
}
