/* cmd_quant.c — `qlab quant` (apply a type, preset or plan and write a GGUF) and `qlab formats`
 * (the registry catalogue). */
#include "base/atomic_file.h"
#include "cli/cli.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "pipeline/imatrix.h"
#include "core/model.h"
#include "base/parallel.h"
#include "presets/preset.h"
#include "pipeline/quantize.h"
#include "methods/method.h"
#include "core/ppl.h"
#include "core/stats.h"
#include "methods/layer_f32.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *QUANT_USAGE =
    "usage: qlab quant MODEL -o OUT.gguf (--type FORMAT | --preset NAME|FILE | --plan FILE) [--to gguf]\n"
    "                  [--method NAME [--method-opts K=V,...]] [--stats FILE | --text FILE [--ctx N] [--chunks N]]\n"
    "                  [--imatrix FILE] [--act SCHEME] [--threads N] [--save-plan FILE] [--dry-run] [--force]\n"
    "usage: qlab quantize [--imatrix FILE] MODEL OUT.gguf TYPE [THREADS]   (llama-quantize's order; TYPE a preset)\n"
    "Quantizes every 2-D weight of MODEL and writes a GGUF with all of its metadata.\n"
    "  --type FORMAT     one format everywhere (qlab formats lists them), e.g. q4_k, int4_g128, nf4_dq\n"
    "  --preset NAME     a built-in recipe (qlab formats --presets lists them: llama.cpp's mixes Q2_K ... Q8_0,\n"
    "                    IQ1_S ... IQ4_XS with llama-quantize's per-tensor types; INT8, INT4_G128, NF4_DQ, FP8 ...)\n"
    "                    or an INI file of rules\n"
    "  --plan FILE       one format per tensor, as written by --save-plan or qlab plan\n"
    "  --method NAME     how codes are chosen for every planned tensor: rtn (default), gptq, awq, ... (qlab formats\n"
    "                    --methods lists them and their options); a method that cannot write the format is refused\n"
    "                    (tensors that fell back to another format, or are kept in float, keep rtn and say so);\n"
    "                    --format is a synonym of --type\n"
    "  --method-opts K=V,...  options of the method, checked against its schema (unknown or bad ones are refused)\n"
    "  --stats FILE      activation statistics from qlab stats (needed by gptq/awq/smoothquant)\n"
    "  --text FILE       ...or compute them here from a calibration text (--ctx 512, --chunks 128 by default)\n"
    "  --calib SPEC      ...or from a calibration set (--samples N --len L --seed S; see qlab calib --help)\n"
    "  --sequential      true-sequential: each layer's inputs are measured with earlier layers already quantized\n"
    "  --imatrix FILE    importance weights (llama.cpp imatrix GGUF or legacy .dat)\n"
    "  --act SCHEME      activation scheme of every block linear's input, stored in the output (qlab ppl applies it):\n"
    "                    int8_token, fp8_token (dynamic per token), int8_tensor, fp8_tensor (static: scales from\n"
    "                    --stats/--text), llm_int8[:THRESHOLD], none; a plan's [activations] section does the same\n"
    "                    per tensor\n"
    "  --save-plan FILE  write the resolved plan (edit it, then apply it with --plan)\n"
    "  --to EXPORTER     the output's ecosystem: gguf (default), gptq, awq, compressed-tensors, bnb, exl2\n"
    "                    (Hugging Face folders for transformers/vLLM/TGI; OUT is then a folder)\n"
    "  --force           a folder target replaces an existing non-empty folder OUT (swapped in whole when the\n"
    "                    export is complete; without --force such an OUT is refused before any work)\n"
    "  --dry-run         resolve and print the plan (what each tensor really gets, and why), write nothing; with\n"
    "                    --to a folder target, also what each tensor becomes there (tensors, dtypes, shapes, bits,\n"
    "                    group, kept in float and why, or the refusal; exit 1 if any is refused)\n"
    "Rows that do not fit a format's block fall back: K-quants and IQ types as llama-quantize does (q4_k -> q5_0 ->\n"
    "f16 ...); other types (q4_0, q8_0 ...) to f16, where llama-quantize refuses the model. Each fallback is printed,\n"
    "says which of the two happened, and is recorded in the plan.\n"
    "  " CLI_DEVICE_USAGE
    "                         on cuda, RTN runs the format's CUDA quantizer (same bytes as the CPU); a format without\n"
    "                         one, or importance weights the format uses, quantize on the CPU\n";

/* One line of --dry-run --to: the tensor, its qlab format, what the target stores (or REFUSED and why). */
static void print_export_line(void *user, const char *tensor, const char *format, bool refused, const char *what) {
    (void)user;
    printf("%-32s %-16s %s%s\n", tensor, format, refused ? "REFUSED: " : "-> ", what);
}

static bool is_float_format(const ql_format *f) {
    return f->type == QL_TYPE_F32 || f->type == QL_TYPE_F16 || f->type == QL_TYPE_BF16;
}

/* --method for every planned tensor. A tensor whose format the method cannot write keeps rtn, and says
 * so, only when that format is not what was asked for: a llama.cpp-style fallback (rows that do not fit)
 * or a float format (nothing to choose). Anything else is refused: no silent rounding to nearest. */
static int apply_method(ql_plan *plan, const ql_method *meth) {
    int served = 0, kept = 0;
    char why[256], first[256] = "";
    for (int i = 0; i < plan->n; i++) {
        ql_plan_entry *e = &plan->e[i];
        if (ql_method_serves(meth, e->format, why, sizeof why)) {
            free(e->method);
            e->method = ql_strdup(meth->name);
            served++;
        } else if (e->note || is_float_format(e->format)) {
            if (!first[0]) snprintf(first, sizeof first, "%s", why);
            kept++;
        } else {
            fprintf(stderr, "qlab quant: --method %s cannot write %s: %s\n", meth->name, e->format->name, why);
            return 1;
        }
    }
    if (!served && kept) {
        fprintf(stderr, "qlab quant: --method %s cannot write any planned tensor: %s\n", meth->name, first);
        return 1;
    }
    if (kept)
        fprintf(stderr, "qlab quant: %d tensors in fallback or float formats keep rtn (%s; --dry-run lists them)\n",
                kept, first);
    return 0;
}

/* What the output runs with besides its weights, and how to get the same at run time elsewhere. */
static void print_runtime(const ql_model *m, const ql_plan *plan) {
    int counts[QL_ACT_MODE_COUNT] = {0}, n = 0;
    const int n_t = m->cfg.n_layer * QL_LIN_COUNT + 1;
    for (int i = 0; i < n_t; i++) {
        const bool block = i < n_t - 1;
        const ql_gguf_tensor *t = block ? ql_layer_linear(m, i / QL_LIN_COUNT, i % QL_LIN_COUNT) : m->output;
        const ql_plan_act *pa = t ? ql_plan_find_act(plan, t->name, block) : NULL;
        if (pa && pa->mode != QL_ACT_NONE) counts[pa->mode]++, n++;
    }
    if (plan->kv.set) { /* the plan's KV cache: stored as qlab.kv.* keys, and how llama.cpp runs the same */
        char d[512], flags[256];
        bool llama = ql_kv_settings_llama_flags(&plan->kv, flags, sizeof flags);
        fprintf(stderr, "qlab quant: KV cache %s (stored as qlab.kv.* keys: `qlab ppl` on the output runs it); "
                        "llama.cpp: %s%s\n",
                ql_kv_settings_describe(&plan->kv, d, sizeof d), llama ? "" : "no equivalent: ", flags);
    }
    if (!n) return;
    fprintf(stderr, "qlab quant: activations of %d linears quantized at run time:", n);
    for (int k = 1; k < QL_ACT_MODE_COUNT; k++)
        if (counts[k]) fprintf(stderr, " %s %d", ql_act_mode_name((ql_act_mode)k), counts[k]);
    fprintf(stderr, " (stored as qlab.act.* keys: `qlab ppl` on the output applies them; llama.cpp ignores them "
                    "and rounds activations to its own dot-product types)\n");
}

int cmd_quant(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, QUANT_USAGE);
    const char *flag, *pos, *model = NULL, *out = NULL, *type = NULL, *preset = NULL, *plan_path = NULL;
    const char *imatrix = NULL, *save_plan = NULL, *method = NULL, *method_opts = NULL, *stats_path = NULL;
    const char *to = NULL, *act = NULL;
    cli_calib ca;
    cli_calib_defaults(&ca, 512, 128);
    bool sequential = false;
    int32_t *calib_tok = NULL;
    int64_t calib_n = 0;
    int threads = ql_default_threads();
    bool dry = false, force = false, positional_out = false, positional_threads = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) { /* MODEL, then llama-quantize's OUT TYPE [THREADS] */
            if (!model) model = pos;
            else if (!out) out = pos, positional_out = true;
            else if (positional_out && !preset && !type && !plan_path) preset = pos;
            else if (positional_out && preset && !positional_threads) {
                char *end;
                const long n = strtol(pos, &end, 10);
                if (*end || n < 1 || n > 256)
                    return cli_usage_error("quant", QUANT_USAGE, "THREADS '%s' is not a number from 1 to 256", pos);
                threads = (int)n, positional_threads = true;
            } else return cli_usage_error("quant", QUANT_USAGE, "unexpected argument '%s'", pos);
        } else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--type") || !strcmp(flag, "--format")) type = cli_value(&a, flag);
        else if (!strcmp(flag, "--method")) method = cli_value(&a, flag);
        else if (!strcmp(flag, "--method-opts")) method_opts = cli_value(&a, flag);
        else if (!strcmp(flag, "--stats")) stats_path = cli_value(&a, flag);
        else if (!strcmp(flag, "--sequential")) sequential = true;
        else if (cli_calib_flag(&a, flag, &ca)) threads = ca.threads;
        else if (!strcmp(flag, "--preset")) preset = cli_value(&a, flag);
        else if (!strcmp(flag, "--plan")) plan_path = cli_value(&a, flag);
        else if (!strcmp(flag, "--imatrix")) imatrix = cli_value(&a, flag);
        else if (!strcmp(flag, "--save-plan")) save_plan = cli_value(&a, flag);
        else if (!strcmp(flag, "--to")) to = cli_value(&a, flag);
        else if (!strcmp(flag, "--act")) act = cli_value(&a, flag);
        else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t")) threads = cli_int(&a, flag, 1, 256);
        else if (!strcmp(flag, "--dry-run")) dry = true;
        else if (!strcmp(flag, "--force")) force = true;
        else if (cli_device_flag(&a, flag)) continue;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model) return cli_usage_error("quant", QUANT_USAGE, "needs MODEL");
    if (!out && !dry && !save_plan) return cli_usage_error("quant", QUANT_USAGE, "needs -o OUT.gguf");
    if ((type != NULL) + (preset != NULL) + (plan_path != NULL) != 1)
        return cli_usage_error("quant", QUANT_USAGE, "give exactly one of --type, --preset, --plan");
    ql_act_mode act_mode = QL_ACT_NONE;
    float act_threshold = 0;
    if (act && ql_act_spec_parse(act, &act_mode, &act_threshold))
        return cli_usage_error("quant", QUANT_USAGE, "--act: %s", ql_last_error());
    const ql_exporter_info *exporter = ql_exporter_default();
    if (to && ql_exporter_find(to, &exporter)) return cli_usage_error("quant", QUANT_USAGE, "%s", ql_last_error());
    if (cli_refuse_input_as_output("quant", out, CLI_INPUTS(model, plan_path, stats_path, imatrix, ca.text, preset)) ||
        cli_refuse_input_as_output("quant", save_plan, CLI_INPUTS(model, plan_path, stats_path, imatrix, ca.text, out)))
        return 1;
    if (out && !dry && exporter->folder && ql_atomic_dir_check(out, force)) { /* before any work */
        fprintf(stderr, "qlab quant: %s\n", ql_last_error());
        return 1;
    }
    ql_model *m = NULL;
    ql_imatrix *im = NULL;
    ql_preset *ps = NULL;
    ql_plan *plan = NULL;
    ql_stats *stats = NULL;
    int rc = 0;
    const ql_method *meth = NULL;
    if (method && !(meth = ql_method_find(method))) return cli_usage_error("quant", QUANT_USAGE, "%s", ql_last_error());
    if (meth && method_opts) { /* refused before any model is loaded */
        ql_opt_values ov;
        if (ql_method_parse_opts(meth, method_opts, &ov))
            return cli_usage_error("quant", QUANT_USAGE, "%s", ql_last_error());
    }
    if (ql_model_load_weights(model, &m) || (imatrix && ql_imatrix_load(imatrix, &im))) {
        rc = cli_fail("quant");
        goto done;
    }
    if (m->weights_only)
        fprintf(stderr, "qlab quant: %s: architecture '%s' has no forward pass in qlab: its tensors are quantized by "
                        "name (%d layers, GQA %d), as llama-quantize does; methods and statistics that run the model "
                        "are refused\n", model, m->cfg.arch, m->cfg.n_layer, m->cfg.n_head / m->cfg.n_head_kv);
    ql_status s;
    if (type) s = ql_plan_single_format(type, m, &plan);
    else if (preset) {
        s = ql_preset_load(preset, &ps);
        if (!s) s = ql_preset_resolve(ps, m, im != NULL, &plan);
    } else
        s = ql_plan_load(plan_path, &plan);
    if (s) {
        rc = cli_fail("quant");
        goto done;
    }
    /* formats that cannot quantize without importance: refused before calibration or writing anything
     * when there is no --imatrix; a tensor the imatrix has no data for (token_embd: no matmul reads it)
     * gets q2_k instead, as llama-quantize gives token_embd in its IQ2_XXS / IQ2_XS / IQ1_S mixes */
    for (int i = 0; i < plan->n; i++) {
        const ql_plan_entry *e = &plan->e[i];
        if (!e->format->requires_importance || (im && ql_imatrix_find(im, e->tensor))) continue;
        if (!im && !dry) {
            fprintf(stderr, "qlab quant: %s needs an importance matrix (--imatrix) (tensor '%s')\n", e->format->name,
                    e->tensor);
            rc = 1;
            goto done;
        }
        if (im) {
            char note[128], tensor[256], method[64]; /* copies: ql_plan_set frees the entry's strings */
            snprintf(note, sizeof note, "%s needs importance; the imatrix has none for it", e->format->name);
            snprintf(tensor, sizeof tensor, "%s", e->tensor);
            snprintf(method, sizeof method, "%s", e->method);
            ql_plan_set(plan, tensor, ql_format_by_name("q2_k"), method, note);
        }
    }
    if (act) ql_plan_set_act(plan, QL_PLAN_ACT_DEFAULT, act_mode, act_threshold);
    if (meth && (rc = apply_method(plan, meth))) goto done;
    if (!meth && (method_opts || plan->method_opts)) { /* the plan's own methods share the options */
        const ql_method *used[32];
        int n_used = 0;
        for (int i = 0; i < plan->n; i++) {
            const ql_method *pm = ql_method_by_name(plan->e[i].method);
            bool seen = !pm;
            for (int k = 0; k < n_used; k++) seen |= used[k] == pm;
            if (!seen && n_used < 32) used[n_used++] = pm;
        }
        if (ql_method_check_opts(used, n_used, method_opts ? method_opts : plan->method_opts)) {
            rc = cli_usage_error("quant", QUANT_USAGE, "%s", ql_last_error());
            goto done;
        }
    }
    bool needs = false;
    for (int i = 0; i < plan->n; i++) needs |= ql_method_by_name(plan->e[i].method) && ql_method_by_name(plan->e[i].method)->needs;
    needs |= ql_plan_act_needs_stats(plan); /* static activation scales come from the statistics */
    if (stats_path && ql_stats_load_for_model(stats_path, m, QL_STATS_SAME_MODEL, &stats)) {
        rc = cli_fail("quant");
        goto done;
    }
    if (needs && (!stats || sequential) && cli_calib_given(&ca) && !dry) {
        ca.label = "quant";
        if (cli_calib_tokens(m, &ca, &calib_tok, &calib_n)) { rc = cli_fail("quant"); goto done; }
        if (!sequential) {
            /* statistics once, from the unquantized model (qlab stats would give the same file) */
            ql_stats_opts so = {.hessian = true, .output = true, .n_threads = threads};
            if (cli_collect_stats(m, calib_tok, calib_n, ca.ctx, &so, "stats", &stats)) { rc = cli_fail("quant"); goto done; }
        }
    }
    if (needs && sequential && !calib_tok && !dry) {
        rc = cli_usage_error("quant", QUANT_USAGE, "--sequential needs calibration text: --text FILE or --calib SPEC");
        goto done;
    }
    if (needs && !stats && !sequential && !dry) {
        rc = cli_usage_error("quant", QUANT_USAGE, "the plan needs calibration (a data-aware method or static activation scales): give --stats FILE or --text FILE");
        goto done;
    }
    bool ext = false;
    for (int i = 0; i < plan->n; i++) {
        const ql_plan_entry *e = &plan->e[i];
        if (e->note) fprintf(stderr, "qlab quant: %s: %s -> %s\n", e->tensor, e->note, e->format->name);
        ext |= !ql_type_is_ggml(e->format->type);
        if (dry) { /* what the tensor really gets: the driver's own rule (ql_quant_method_for) */
            char why[256];
            const ql_method *got = ql_quant_method_for(m, plan, e, stats, cli_calib_given(&ca), why, sizeof why);
            if (meth && got != meth && !why[0]) ql_method_serves(meth, e->format, why, sizeof why);
            bool rtn = !got || !strcmp(got->name, "rtn");
            printf("%-32s %s%s%s%s%s\n", e->tensor, e->format->name, rtn ? "" : "+", rtn ? "" : got->name,
                   why[0] ? "  # rtn: " : "", why);
        }
    }
    if (ext && !exporter->folder) /* a folder export is for another ecosystem: llama.cpp is not the reader */
        fprintf(stderr, "qlab quant: warning: the plan uses qlab extension formats; llama.cpp cannot load the result "
                        "(qlab can; see docs/formats.md)\n");
    if (imatrix) {
        int missing = 0;
        for (int i = 0; i < plan->n; i++)
            if (plan->e[i].format->uses_importance && !ql_imatrix_find(im, plan->e[i].tensor)) missing++;
        if (missing)
            fprintf(stderr, "qlab quant: note: %s has no data for %d planned tensors (quantized without importance)\n",
                    imatrix, missing);
    }
    if (save_plan && ql_plan_save(plan, model, save_plan)) {
        rc = cli_fail("quant");
        goto done;
    }
    if (dry && exporter->folder) { /* --to X: what each tensor becomes in that ecosystem's folder */
        printf("--to %s: what each tensor becomes (nothing is written)\n", exporter->name);
        int refused = ql_quantize_describe(m, plan, exporter, out ? out : "OUT", print_export_line, NULL);
        if (refused < 0) {
            rc = cli_fail("quant");
            goto done;
        }
        if (refused) {
            fprintf(stderr, "qlab quant: --to %s would refuse %d tensor%s (REFUSED above); nothing written\n", exporter->name,
                    refused, refused == 1 ? "" : "s");
            rc = 1;
        }
        goto done;
    }
    if (dry || !out) goto done;
    ql_quant_opts o = {.plan = plan, .imatrix = im, .stats = stats, .method_opts = method_opts, .n_threads = threads,
                       .sequential = sequential, .calib_tokens = calib_tok, .n_seq = calib_n, .seq_len = ca.ctx,
                       .exporter = exporter, .replace = force};
    ql_quant_stats st;
    ql_progress *bar = cli_progress_bar("quant");
    s = ql_quantize_model(m, &o, out, bar, &st);
    cli_progress_done(bar);
    if (s) {
        rc = cli_fail("quant");
        goto done;
    }
    double gb = st.weights_quantized * 4.0 / 1e9;
    fprintf(stderr,
            "qlab quant: wrote %s: %lld tensors quantized (%lld fell back), %lld copied; %.2f MiB -> %.2f MiB; "
            "%.2fs (%.2f GB/s of f32 weights)\n",
            out, (long long)st.tensors_quantized, (long long)st.tensors_fallback, (long long)st.tensors_copied,
            st.bytes_in / 1048576.0, st.bytes_out / 1048576.0, st.seconds, st.seconds > 0 ? gb / st.seconds : 0);
    if (plan->n_act || plan->kv.set) print_runtime(m, plan);
    if (st.tensors_rounded)
        fprintf(stderr, "qlab quant: %lld tensors had no statistics for their method and were rounded to nearest "
                        "(--dry-run lists them)\n", (long long)st.tensors_rounded);
done:
    free(calib_tok);
    ql_stats_free(stats);
    ql_plan_free(plan);
    ql_preset_free(ps);
    ql_imatrix_free(im);
    ql_model_free(m);
    return rc;
}

static const char *FORMATS_USAGE =
    "usage: qlab formats [--json] [--methods | --presets]\n"
    "Every storage format qlab knows: name, bits per weight, block, whether llama.cpp can load it, and a summary.\n"
    "--methods lists the quantization methods instead (what they need, their options); --presets the built-in\n"
    "presets (qlab quant --preset NAME) with what each does.\n";

/* The built-in presets, one line each (or a JSON array of {name, summary}). */
static int list_presets(bool json) {
    json_t *arr = json ? json_array() : NULL;
    for (int i = 0; i < ql_preset_builtin_count(); i++) {
        ql_preset *p;
        if (ql_preset_load(ql_preset_builtin_name(i), &p)) {
            fprintf(stderr, "qlab formats: %s\n", ql_last_error());
            json_decref(arr);
            return 1;
        }
        if (json) {
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(ql_preset_name(p)));
            json_object_set_new(o, "summary", json_string(ql_preset_summary(p)));
            json_array_append_new(arr, o);
        } else printf("%-14s %s\n", ql_preset_name(p), ql_preset_summary(p));
        ql_preset_free(p);
    }
    if (json) {
        char *txt = json_dumps(arr, JSON_INDENT(2));
        puts(txt);
        free(txt);
        json_decref(arr);
    }
    return 0;
}

int cmd_formats(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, FORMATS_USAGE);
    const char *flag, *pos;
    bool json = false, methods = false, presets = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) return cli_usage_error("formats", FORMATS_USAGE, "unexpected argument '%s'", pos);
        if (!strcmp(flag, "--json")) json = true;
        else if (!strcmp(flag, "--methods")) methods = true;
        else if (!strcmp(flag, "--presets")) presets = true;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (presets && methods) return cli_usage_error("formats", FORMATS_USAGE, "give --methods or --presets, not both");
    if (presets) return list_presets(json);
    if (methods) {
        json_t *marr = json ? json_array() : NULL;
        for (int i = 0; i < ql_method_count(); i++) {
            const ql_method *me = ql_method_at(i);
            char needs[96] = "", caps[128];
            if (!me->needs) strcat(needs, "nothing");
            if (me->needs & QL_NEEDS_ACT_STATS) strcat(needs, "activation-stats ");
            if (me->needs & QL_NEEDS_HESSIAN) strcat(needs, "hessian ");
            ql_method_caps_str(me->caps, caps, sizeof caps);
            if (json) {
                json_t *o = json_object(), *opts = json_array(), *fmts = json_array();
                json_object_set_new(o, "name", json_string(me->name));
                json_object_set_new(o, "summary", json_string(me->summary));
                json_object_set_new(o, "needs", json_string(needs));
                json_object_set_new(o, "capabilities", json_string(caps));
                for (int k = 0; k < me->n_opts; k++) {
                    const ql_opt_def *d = &me->opts[k];
                    static const char *const tn[] = {"int", "float", "bool", "enum"};
                    json_t *od = json_object();
                    json_object_set_new(od, "name", json_string(d->name));
                    json_object_set_new(od, "type", json_string(tn[d->type]));
                    if (d->type == QL_OPT_ENUM) {
                        json_t *ch = json_array();
                        for (int c = 0; d->choices[c]; c++) json_array_append_new(ch, json_string(d->choices[c]));
                        json_object_set_new(od, "choices", ch);
                        json_object_set_new(od, "default", json_string(d->choices[(int)d->def]));
                    } else {
                        json_object_set_new(od, "default", json_real(d->def));
                        json_object_set_new(od, "min", json_real(d->min));
                        json_object_set_new(od, "max", json_real(d->max));
                    }
                    json_object_set_new(od, "help", json_string(d->help));
                    json_array_append_new(opts, od);
                }
                json_object_set_new(o, "options", opts);
                for (int k = 0; k < ql_format_count(); k++)
                    if (ql_method_serves(me, ql_format_at(k), NULL, 0))
                        json_array_append_new(fmts, json_string(ql_format_at(k)->name));
                json_object_set_new(o, "formats", fmts);
                json_array_append_new(marr, o);
            } else {
                printf("%-12s needs: %-28s %s\n%14s%s\n", me->name, needs, me->summary, "does: ", caps);
                if (!me->n_opts) printf("%14s(none)\n", "options: ");
                for (int k = 0; k < me->n_opts; k++) {
                    char line[320];
                    ql_opt_describe(&me->opts[k], line, sizeof line);
                    printf("%14s%s\n", k ? "" : "options: ", line);
                }
                if (me->serves) {
                    char why[256];
                    int n = 0;
                    for (int k = 0; k < ql_format_count(); k++) n += ql_method_serves(me, ql_format_at(k), why, sizeof why);
                    printf("%14s%d of the formats that can quantize (qlab formats --methods --json lists them)\n",
                           "writes: ", n);
                }
            }
        }
        if (json) {
            char *js = json_dumps(marr, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
            printf("%s\n", js);
            free(js);
            json_decref(marr);
        }
        return 0;
    }
    json_t *arr = json ? json_array() : NULL;
    if (!json) printf("%-22s %8s %6s %6s %-5s %s\n", "name", "bpw", "block", "ggml", "imat", "summary");
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        bool ggml = ql_type_is_ggml(f->type);
        if (json) {
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(f->name));
            json_object_set_new(o, "summary", json_string(f->summary));
            json_object_set_new(o, "type_id", json_integer(f->type));
            json_object_set_new(o, "bpw", json_real(f->bpw));
            json_object_set_new(o, "block", json_integer(f->block));
            json_object_set_new(o, "block_bytes", json_integer(f->block_bytes));
            json_object_set_new(o, "family", json_string(ql_format_family_name(f->family)));
            json_object_set_new(o, "llama_cpp", json_boolean(ggml));
            if (f->llama) { /* llama.cpp's identity of the type, from the traits entry */
                json_t *l = json_object();
                json_object_set_new(l, "file_type", f->llama->file_type == QL_FTYPE_NONE
                                                        ? json_null()
                                                        : json_integer(f->llama->file_type));
                const ql_type_info *at = ql_type_get(f->llama->act_type);
                json_object_set_new(l, "act_type", json_string(at ? at->name : "?"));
                json_object_set_new(o, "llama", l);
            }
            json_object_set_new(o, "uses_importance", json_boolean(f->uses_importance));
            json_object_set_new(o, "can_quantize", json_boolean(f->quantize_rows != NULL));
            json_object_set_new(o, "whole_tensor", json_boolean(f->whole_tensor));
            json_object_set_new(o, "grid", json_boolean(f->grid && f->grid->kind != QL_GRID_KIND_NONE));
            /* only the operations that exist in this build; each is checked against the reference by
             * tests/test_traits.c (CUDA: the kernels' arithmetic emulated on the host, and on the device
             * where one exists) */
            json_t *be = json_object();
            if (f->simd && (f->simd->quantize_rows || f->simd->dequantize_rows)) {
                json_t *ops = json_array();
                if (f->simd->quantize_rows) json_array_append_new(ops, json_string("quantize"));
                if (f->simd->dequantize_rows) json_array_append_new(ops, json_string("dequantize"));
                json_object_set_new(be, "cpu_simd", ops);
            }
            if (f->cuda && (f->cuda->quantize_dev || f->cuda->dequantize_dev)) {
                json_t *ops = json_array();
                if (f->cuda->quantize_dev) json_array_append_new(ops, json_string("quantize"));
                if (f->cuda->dequantize_dev) json_array_append_new(ops, json_string("dequantize"));
                json_object_set_new(be, "cuda", ops);
            }
            json_object_set_new(o, "backends", be);
            json_array_append_new(arr, o);
        } else
            printf("%-22s %8.4f %6d %6s %-5s %s\n", f->name, f->bpw, f->block, ggml ? "yes" : "no",
                   f->uses_importance ? "yes" : "", f->summary);
    }
    if (json) {
        char *s = json_dumps(arr, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
        printf("%s\n", s);
        free(s);
        json_decref(arr);
    }
    return 0;
}
