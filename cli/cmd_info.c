/* cmd_info.c — `qlab info`: hyper-parameters, per-tensor types/shapes/sizes, bits per weight. */
#include "cli/cli.h"
#include "kernels/ggml_types.h"
#include "core/model.h"
#include "core/kv_cache.h"
#include "core/kv_settings.h"
#include "core/actquant.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *INFO_USAGE =
    "usage: qlab info MODEL [--json] [--no-tensors] [--ctx N [--batch B] [--kv K[:V]]]\n"
    "Architecture, hyper-parameters, parameter count and every tensor (name, shape, type, bytes, bits per weight).\n"
    "MODEL is a .gguf file, a Hugging Face folder (config.json + safetensors) or a llama2.c .bin.\n"
    "bpw counts every tensor; bpw_quantized only the 2-D weight matrices (what target-BPW plans count).\n"
    "--ctx N prints the KV cache's exact bytes at N tokens for B sequences (default 1) beside the weights':\n"
    "for the --kv scheme (see qlab ppl --help), or for every llama.cpp cache type and a few qlab schemes.\n"
    "A file quantized with a plan's [activations] / [kv] shows them (runtime), the KV memory at the plan's context\n"
    "and the llama.cpp flags that run the same cache (-ctk K -ctv V -fa on), or why llama.cpp has none.\n";


static int64_t numel(const ql_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

int cmd_info(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, INFO_USAGE);
    const char *flag, *pos, *path = NULL;
    bool json = false, tensors = true;
    int ctx = 0, batch = 1;
    const char *kv = NULL;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) path = pos;
        else if (!strcmp(flag, "--json")) json = true;
        else if (!strcmp(flag, "--no-tensors")) tensors = false;
        else if (!strcmp(flag, "--ctx") || !strcmp(flag, "-c")) ctx = cli_int(&a, flag, 1, 1 << 24);
        else if (!strcmp(flag, "--batch")) batch = cli_int(&a, flag, 1, 1 << 16);
        else if (!strcmp(flag, "--kv")) kv = cli_value(&a, flag);
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!path) return cli_usage_error("info", INFO_USAGE, "needs MODEL");
    ql_kv_scheme kvs;
    if (kv && !ql_kv_scheme_parse(kv, &kvs)) return cli_fail("info");
    if (kv && !ctx) return cli_usage_error("info", INFO_USAGE, "--kv needs --ctx N");
    int n_kv_list;
    const char *const *kv_list = ql_kv_scheme_examples(&n_kv_list);
    ql_model *m;
    if (ql_model_load_weights(path, &m)) return cli_fail("info"); /* an unknown architecture: tensors only */
    const ql_config *c = &m->cfg;
    const ql_gguf *g = m->gguf;
    ql_kv_settings fkv; /* the runtime settings the file carries (qlab.kv.*, qlab.act.*) */
    if (ql_kv_settings_from_gguf(g, path, c->n_layer, &fkv)) {
        ql_model_free(m);
        return cli_fail("info");
    }
    int act_counts[QL_ACT_MODE_COUNT] = {0};
    for (int64_t k = 0; k < g->n_kv; k++) {
        ql_act_mode am;
        const char *v = !strncmp(g->kv[k].key, QL_ACT_KEY_MODE, strlen(QL_ACT_KEY_MODE)) ? ql_gguf_get_str(g, g->kv[k].key) : NULL;
        if (v && ql_act_mode_parse(v, &am)) act_counts[am]++;
    }
    char kv_desc[512] = "", kv_flags[256] = "";
    bool kv_llama = false;
    const int kv_ctx = fkv.ctx > 0 ? (int)fkv.ctx : ctx, kv_batch = fkv.batch > 0 ? fkv.batch : batch;
    int64_t kv_mem = 0;
    if (fkv.set) {
        ql_kv_settings_describe(&fkv, kv_desc, sizeof kv_desc);
        kv_llama = ql_kv_settings_llama_flags(&fkv, kv_flags, sizeof kv_flags);
        if (kv_ctx) kv_mem = ql_kv_settings_bytes(&fkv, c, kv_ctx, kv_batch);
    }
    int64_t n_params = 0, bytes = 0, q_params = 0, q_bytes = 0;
    bool ggml_only = true;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        n_params += numel(t);
        bytes += (int64_t)t->nbytes;
        if (t->n_dims >= 2 && t->ne[1] > 1) {
            q_params += numel(t);
            q_bytes += (int64_t)t->nbytes;
        }
        ggml_only &= ql_type_is_ggml(t->type);
    }
    /* what llama.cpp refuses: types it does not know, and a GGUF without tokenizer.ggml.model */
    const char *refusal = !ggml_only ? "uses qlab extension types: llama.cpp cannot run it"
                        : !ql_gguf_get(g, "tokenizer.ggml.model")
                            ? "no tokenizer (tokenizer.ggml.model missing): llama.cpp refuses to load it"
                            : NULL;
    double bpw = n_params ? 8.0 * bytes / n_params : 0, bpwq = q_params ? 8.0 * q_bytes / q_params : 0;
    const char *name = ql_gguf_get_str(g, "general.name");
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string(path));
        json_object_set_new(o, "arch", json_string(c->arch));
        json_object_set_new(o, "forward_pass", json_boolean(!m->weights_only)); /* false: quant by tensor names only */
        if (name) json_object_set_new(o, "name", json_string(name));
        json_object_set_new(o, "n_params", json_integer(n_params));
        json_object_set_new(o, "bytes", json_integer(bytes));
        json_object_set_new(o, "bpw", json_real(bpw));
        json_object_set_new(o, "bpw_quantized", json_real(bpwq));
        json_object_set_new(o, "llama_cpp_compatible", json_boolean(!refusal));
        if (refusal) json_object_set_new(o, "llama_cpp_problem", json_string(refusal));
        json_t *hp = json_object();
        json_object_set_new(hp, "n_layer", json_integer(c->n_layer));
        json_object_set_new(hp, "n_embd", json_integer(c->n_embd));
        json_object_set_new(hp, "n_head", json_integer(c->n_head));
        json_object_set_new(hp, "n_head_kv", json_integer(c->n_head_kv));
        json_object_set_new(hp, "head_dim", json_integer(c->head_dim));
        json_object_set_new(hp, "n_ff", json_integer(c->n_ff));
        if (c->n_expert > 0) { /* a mixture of experts */
            json_object_set_new(hp, "n_expert", json_integer(c->n_expert));
            json_object_set_new(hp, "n_expert_used", json_integer(c->n_expert_used));
            json_object_set_new(hp, "n_ff_exp", json_integer(c->n_ff_exp));
        }
        json_object_set_new(hp, "n_vocab", json_integer(c->n_vocab));
        json_object_set_new(hp, "n_ctx_train", json_integer(c->n_ctx_train));
        json_object_set_new(hp, "rope_base", json_real(c->rope_base));
        json_object_set_new(hp, "rope_scale", json_real(c->rope_scale));
        json_object_set_new(hp, "norm_eps", json_real(c->norm_eps));
        json_object_set_new(hp, "tied_output", json_boolean(c->tied_output));
        json_object_set_new(o, "hparams", hp);
        char feat[512];
        ql_model_features(m, feat, sizeof feat);
        json_object_set_new(o, "features", json_string(feat));
        if (fkv.set) {
            json_t *rt = json_object();
            json_object_set_new(rt, "kv_scheme", json_string(kv_desc));
            json_object_set_new(rt, kv_llama ? "llama_cpp_flags" : "llama_cpp_problem", json_string(kv_flags));
            if (kv_ctx) {
                json_object_set_new(rt, "ctx", json_integer(kv_ctx));
                json_object_set_new(rt, "batch", json_integer(kv_batch));
                json_object_set_new(rt, "kv_bytes", json_integer(kv_mem));
                json_object_set_new(rt, "total_bytes", json_integer(kv_mem + bytes));
            }
            json_object_set_new(o, "runtime_kv", rt);
        }
        json_t *acts = json_object();
        for (int k = 1; k < QL_ACT_MODE_COUNT; k++)
            if (act_counts[k]) json_object_set_new(acts, ql_act_mode_name((ql_act_mode)k), json_integer(act_counts[k]));
        json_object_set_new(o, "runtime_activations", acts);
        if (ctx) {
            json_t *kvo = json_object(), *list = json_object();
            json_object_set_new(kvo, "ctx", json_integer(ctx));
            json_object_set_new(kvo, "batch", json_integer(batch));
            for (int i = 0; i < (kv ? 1 : n_kv_list); i++) {
                ql_kv_scheme sc;
                char nm[160];
                if (!kv) ql_kv_scheme_parse(kv_list[i], &sc);
                else sc = kvs;
                bool fits = ql_kv_scheme_check(&sc, c, path) == QL_OK;
                json_object_set_new(list, ql_kv_scheme_name(&sc, nm, sizeof nm),
                                    fits ? json_integer(ql_kv_cache_bytes(c, &sc, ctx, batch)) : json_null());
            }
            json_object_set_new(kvo, "bytes", list);
            json_object_set_new(o, "kv_cache", kvo);
        }
        if (tensors) {
            json_t *arr = json_array();
            for (int64_t i = 0; i < g->n_tensors; i++) {
                const ql_gguf_tensor *t = &g->tensors[i];
                const ql_type_info *ti = ql_type_get(t->type);
                json_t *to = json_object(), *shape = json_array();
                for (int d = 0; d < t->n_dims; d++) json_array_append_new(shape, json_integer(t->ne[d]));
                json_object_set_new(to, "name", json_string(t->name));
                json_object_set_new(to, "type", json_string(ti ? ti->name : "?"));
                json_object_set_new(to, "shape", shape);
                json_object_set_new(to, "bytes", json_integer((json_int_t)t->nbytes));
                json_object_set_new(to, "bpw", json_real(8.0 * (double)t->nbytes / (double)numel(t)));
                json_array_append_new(arr, to);
            }
            json_object_set_new(o, "tensors", arr);
        }
        char *s = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("%s  (%s%s%s)\n", path, c->arch, name ? ", " : "", name ? name : "");
        if (m->weights_only) /* no description: only what quantization by tensor names reads */
            printf("  layers %d, heads %d (kv %d), %s output; no forward pass in qlab for '%s': quant only, by tensor "
                   "names\n", c->n_layer, c->n_head, c->n_head_kv, c->tied_output ? "tied" : "separate", c->arch);
        else {
            printf("  layers %d, embd %d, heads %d (kv %d, dim %d), ffn %d, vocab %d, ctx %d\n", c->n_layer, c->n_embd,
                   c->n_head, c->n_head_kv, c->head_dim, c->n_ff, c->n_vocab, c->n_ctx_train);
            printf("  rope base %g%s, norm eps %g, %s output, tokenizer %s\n", c->rope_base,
                   c->rope_scale != 1 ? " (linear scaling)" : "", c->norm_eps, c->tied_output ? "tied" : "separate",
                   m->tok ? (ql_tokenizer_kind(m->tok) == QL_TOK_SPM ? "sentencepiece" : "bpe") : "none");
            char feat[512];
            ql_model_features(m, feat, sizeof feat);
            printf("  %s\n", feat);
        }
        printf("  %lld parameters, %.2f MiB, %.3f bits/weight (%.3f over 2-D weights)\n", (long long)n_params,
               bytes / 1048576.0, bpw, bpwq);
        printf("  %s\n", refusal ? refusal : "plain GGUF: llama.cpp can run it");
        bool any_act = false;
        for (int k = 1; k < QL_ACT_MODE_COUNT; k++) any_act |= act_counts[k] > 0;
        if (any_act) {
            printf("  runtime activations (qlab.act.*, qlab ppl applies them):");
            for (int k = 1; k < QL_ACT_MODE_COUNT; k++)
                if (act_counts[k]) printf(" %s %d", ql_act_mode_name((ql_act_mode)k), act_counts[k]);
            printf(" linears\n");
        }
        if (fkv.set) {
            printf("  runtime KV cache (qlab.kv.*, qlab ppl applies it): %s\n", kv_desc);
            if (kv_ctx)
                printf("    at ctx %d x %d: KV %lld bytes (%.3f MiB) + weights %.3f MiB = %.3f MiB\n", kv_ctx, kv_batch,
                       (long long)kv_mem, kv_mem / 1048576.0, bytes / 1048576.0, (kv_mem + bytes) / 1048576.0);
            if (kv_llama) printf("    llama.cpp: %s\n", kv_flags);
            else printf("    llama.cpp: no equivalent: %s\n", kv_flags);
        }
        if (ctx) {
            printf("  KV cache at ctx %d x %d sequence%s (weights %.2f MiB):\n", ctx, batch, batch > 1 ? "s" : "",
                   bytes / 1048576.0);
            for (int i = 0; i < (kv ? 1 : n_kv_list); i++) {
                ql_kv_scheme sc;
                char nm[160];
                if (!kv) ql_kv_scheme_parse(kv_list[i], &sc);
                else sc = kvs;
                ql_kv_scheme_name(&sc, nm, sizeof nm);
                if (ql_kv_scheme_check(&sc, c, path) != QL_OK) {
                    printf("    %-42s does not fit head dim %d\n", nm, c->head_dim);
                    continue;
                }
                int64_t kb = ql_kv_cache_bytes(c, &sc, ctx, batch);
                printf("    %-42s %14lld bytes %10.3f MiB\n", nm, (long long)kb, kb / 1048576.0);
            }
        }
        if (tensors) {
            printf("\n  %-32s %-20s %-8s %12s %7s\n", "tensor", "shape", "type", "bytes", "bpw");
            for (int64_t i = 0; i < g->n_tensors; i++) {
                const ql_gguf_tensor *t = &g->tensors[i];
                const ql_type_info *ti = ql_type_get(t->type);
                char shape[64];
                int o = 0;
                for (int d = 0; d < t->n_dims; d++)
                    o += snprintf(shape + o, sizeof shape - (size_t)o, "%s%lld", d ? " x " : "", (long long)t->ne[d]);
                printf("  %-32s %-20s %-8s %12llu %7.3f\n", t->name, shape, ti ? ti->name : "?",
                       (unsigned long long)t->nbytes, 8.0 * (double)t->nbytes / (double)numel(t));
            }
        }
    }
    ql_kv_settings_free(&fkv);
    ql_model_free(m);
    return 0;
}
