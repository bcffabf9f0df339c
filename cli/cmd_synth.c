/* cmd_synth.c — `qlab synth` and `qlab convert`. */
#include "cli/cli.h"
#include "base/atomic_file.h"
#include "kernels/ggml_types.h"
#include "core/model.h"
#include "base/parallel.h"
#include "core/synth.h"
#include "pipeline/export.h"
#include "formats/format.h"

#include <stdlib.h>
#include <string.h>

static const char *SYNTH_USAGE_HEAD =
    "usage: qlab synth --shape NAME [-o OUT.gguf] [--dims k=v,...] [--type f32|f16|bf16] [--seed N] [--threads N]\n"
    "                  [--dry-run]\n"
    "A model with random weights shaped like trained ones (row-scale spread, heavy tails, outlier channels), the\n"
    "metadata and tensors of its architecture (core/arch.c's description) and a byte-level vocabulary, for speed\n"
    "and scale tests, never for quality claims. The tiny-* shapes are the test models of their architectures.\n"
    "Shapes (architecture):";
static const char *SYNTH_USAGE_TAIL =
    "\n--dims overrides: layers, embd, heads, kv, ff, vocab, ctx, head_dim, rope_base, tied, experts, experts_used,\n"
    "ff_exp, ff_shexp (e.g. --dims layers=2,embd=512). --dry-run prints the keys and tensors (name, type, shape) and writes nothing.\n"
    "Default OUT: synth-NAME.gguf.\n";

/* The usage with the shape table (core/synth.c) listed, so a new shape needs no edit here. */
static const char *synth_usage(void) {
    static char buf[8192];
    if (buf[0]) return buf;
    size_t used = (size_t)snprintf(buf, sizeof buf, "%s", SYNTH_USAGE_HEAD), line = 22;
    int n;
    const ql_synth_shape *sh = ql_synth_shapes(&n);
    for (int i = 0; i < n && used < sizeof buf; i++) {
        char item[96];
        const int w = snprintf(item, sizeof item, " %s (%s)%s", sh[i].name, sh[i].arch ? sh[i].arch : "llama",
                               i + 1 < n ? "," : ".");
        if (line + (size_t)w > 112) used += (size_t)snprintf(buf + used, sizeof buf - used, "\n"), line = 0;
        used += (size_t)snprintf(buf + used, sizeof buf - used, "%s", item);
        line += (size_t)w;
    }
    if (used < sizeof buf) snprintf(buf + used, sizeof buf - used, "%s", SYNTH_USAGE_TAIL);
    return buf;
}

/* --dry-run: what the file would hold, on stdout */
static int synth_dry_run(const ql_synth_shape *sh) {
    ql_gguf *g;
    if (ql_synth_describe(sh, &g)) return cli_fail("synth");
    int64_t params = 0;
    uint64_t bytes = 0;
    for (int64_t i = 0; i < g->n_kv; i++) {
        const ql_gguf_kv *kv = &g->kv[i];
        if (!strncmp(kv->key, "tokenizer.", 10)) continue; /* the byte vocabulary: thousands of entries */
        char v[96];
        if (kv->val.type == QL_GGUF_STRING) snprintf(v, sizeof v, "%s", ql_gguf_get_str(g, kv->key));
        else {
            double d;
            if (ql_gguf_get_f64(g, kv->key, &d)) snprintf(v, sizeof v, "%g", d);
            else snprintf(v, sizeof v, "(%s)", ql_gguf_type_name(kv->val.type));
        }
        printf("key     %s = %s\n", kv->key, v);
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        const ql_type_info *ti = ql_type_get(t->type);
        printf("tensor  %s %s [%lld, %lld]\n", t->name, ti ? ti->name : "?", (long long)t->ne[0], (long long)t->ne[1]);
        params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        bytes += t->nbytes;
    }
    printf("total   %lld tensors, %lld parameters, %.2f GiB of tensor data\n", (long long)g->n_tensors,
           (long long)params, bytes / 1073741824.0);
    ql_gguf_free(g);
    return 0;
}

int cmd_synth(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, synth_usage());
    const char *flag, *pos, *shape_name = NULL, *out = NULL, *dims = NULL, *type = NULL;
    uint64_t seed = 1;
    int threads = ql_default_threads();
    bool dry = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) return cli_usage_error("synth", synth_usage(), "unexpected argument '%s'", pos);
        if (!strcmp(flag, "--dry-run")) { dry = true; continue; }
        if (!strcmp(flag, "--shape")) shape_name = cli_value(&a, flag);
        else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--dims")) dims = cli_value(&a, flag);
        else if (!strcmp(flag, "--type")) type = cli_value(&a, flag);
        else if (!strcmp(flag, "--seed")) seed = (uint64_t)cli_int(&a, flag, 0, 1 << 30);
        else if (!strcmp(flag, "--threads") || !strcmp(flag, "-t")) threads = cli_int(&a, flag, 1, 256);
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!shape_name) shape_name = dims ? "tiny" : NULL;
    if (!shape_name) return cli_usage_error("synth", synth_usage(), "needs --shape NAME");
    const ql_synth_shape *base = ql_synth_find(shape_name);
    if (!base) return cli_usage_error("synth", synth_usage(), "unknown shape '%s'", shape_name);
    ql_synth_shape sh = *base;
    if (dims && ql_synth_parse_dims(dims, &sh)) return cli_fail("synth");
    if (type) {
        int64_t t = ql_type_by_name(type);
        if (t != QL_TYPE_F32 && t != QL_TYPE_F16 && t != QL_TYPE_BF16)
            return cli_usage_error("synth", synth_usage(), "--type must be f32, f16 or bf16");
        sh.type = (uint32_t)t;
    }
    if (dry) return synth_dry_run(&sh);
    char defname[128];
    if (!out) {
        snprintf(defname, sizeof defname, "synth-%s.gguf", shape_name);
        out = defname;
    }
    ql_progress *bar = cli_progress_bar("synth");
    ql_status s = ql_synth_write(&sh, seed, out, threads, bar);
    cli_progress_done(bar);
    if (s) return cli_fail("synth");
    fprintf(stderr, "qlab synth: wrote %s (%s: %d layers, embd %d, vocab %d)\n", out, shape_name, sh.n_layer, sh.n_embd,
            sh.n_vocab);
    return 0;
}

static const char *CONVERT_USAGE =
    "usage: qlab convert IN -o OUT [--type f32|f16|bf16]\n"
    "IN: a .gguf file, a Hugging Face folder or a llama2.c .bin (tokenizer.bin beside it).\n"
    "OUT: a path ending in .gguf writes GGUF; anything else is a Hugging Face folder (config.json,\n"
    "model.safetensors). --type converts the weight matrices (norms stay F32); quantized ones are\n"
    "dequantized exactly as qlab's preview does, e.g. to compare an export with what qlab computed.\n"
    "Hugging Face classes, both ways: Llama (3.x rope_freqs from rope_scaling), Mistral, Qwen2, Qwen3,\n"
    "Gemma 2, Gemma 3 (also Gemma3ForConditionalGeneration's text model), Phi-3 (LongRoPE factors),\n"
    "with the tensors and keys llama.cpp's convert_hf_to_gguf.py writes.\n";

static bool is_float(uint32_t t) { return t == QL_TYPE_F32 || t == QL_TYPE_F16 || t == QL_TYPE_BF16; }

typedef struct {
    const ql_gguf *src;
    uint32_t type;
} convert_ctx;

static ql_status convert_produce(void *user, int64_t index, void *dst, uint64_t nbytes) {
    (void)nbytes;
    const convert_ctx *c = user;
    const ql_gguf_tensor *t = &c->src->tensors[index];
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *tmp = malloc((size_t)n * sizeof(float));
    if (!tmp) return ql_fail(QL_ERR_NOMEM, "out of memory converting '%s'", t->name);
    const ql_format *qf = is_float(t->type) ? NULL : ql_format_by_type(t->type);
    if (qf) { /* a quantized tensor: qlab's own dequantization, exactly what its preview computes with */
        ql_status s = ql_format_dequantize(qf, t->data, tmp, t->ne[1] * t->ne[2] * t->ne[3], t->ne[0], 1);
        if (s) {
            free(tmp);
            return s;
        }
    }
    for (int64_t i = 0; i < n && !qf; i++) {
        if (t->type == QL_TYPE_F32) memcpy(&tmp[i], (const float *)t->data + i, 4);
        else if (t->type == QL_TYPE_F16) tmp[i] = ql_fp16_to_fp32(((const uint16_t *)t->data)[i]);
        else tmp[i] = ql_bf16_to_fp32(((const uint16_t *)t->data)[i]);
    }
    for (int64_t i = 0; i < n; i++) {
        if (c->type == QL_TYPE_F32) memcpy((float *)dst + i, &tmp[i], 4);
        else if (c->type == QL_TYPE_F16) ((uint16_t *)dst)[i] = ql_fp32_to_fp16(tmp[i]);
        else ((uint16_t *)dst)[i] = ql_fp32_to_bf16(tmp[i]);
    }
    free(tmp);
    return QL_OK;
}


int cmd_convert(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, CONVERT_USAGE);
    const char *flag, *pos, *in = NULL, *out = NULL, *type = NULL;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (in) return cli_usage_error("convert", CONVERT_USAGE, "unexpected argument '%s'", pos);
            in = pos;
        } else if (!strcmp(flag, "-o") || !strcmp(flag, "--output")) out = cli_value(&a, flag);
        else if (!strcmp(flag, "--type") || !strcmp(flag, "--outtype")) type = cli_value(&a, flag);
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!in || !out) return cli_usage_error("convert", CONVERT_USAGE, "needs IN and -o OUT");
    if (cli_refuse_input_as_output("convert", out, CLI_INPUTS(in))) return 1;
    int64_t to = -1;
    if (type) {
        to = ql_type_by_name(type);
        if (!(to >= 0 && is_float((uint32_t)to)))
            return cli_usage_error("convert", CONVERT_USAGE, "--type must be f32, f16 or bf16");
    }
    ql_model *m;
    if (ql_model_load(in, &m)) return cli_fail("convert"); /* validates the model, not just the container */
    const ql_gguf *src = m->gguf;
    if (!ql_gguf_get(src, "tokenizer.ggml.model")) {
        /* llama.cpp refuses a GGUF without tokenizer.ggml.model, and qlab cannot read text with it */
        ql_model_no_tokenizer(m, "llama.cpp will refuse the output and qlab cannot measure it");
        fprintf(stderr, "qlab convert: warning: %s\n", ql_last_error());
    }
    ql_gguf *g = ql_gguf_new();
    ql_gguf_copy_kv(g, src);
    convert_ctx cc = {src, (uint32_t)to};
    int rc = 0;
    for (int64_t i = 0; i < src->n_tensors; i++) {
        const ql_gguf_tensor *t = &src->tensors[i];
        bool conv = to >= 0 && t->n_dims >= 2 && t->type != (uint32_t)to && (is_float(t->type) || ql_format_by_type(t->type));
        int64_t idx = ql_gguf_add_tensor(g, t->name, conv ? (uint32_t)to : t->type, t->n_dims, t->ne, conv ? NULL : t->data);
        if (idx < 0) {
            rc = cli_fail("convert");
            goto out;
        }
        if (conv) {
            g->tensors[idx].produce = convert_produce;
            g->tensors[idx].produce_user = &cc;
        }
    }
    if (to >= 0) ql_gguf_set_u32(g, "general.file_type", to == QL_TYPE_F32 ? 0 : to == QL_TYPE_F16 ? 1 : 32);
    size_t ol = strlen(out);
    ql_status s;
    ql_progress *bar = cli_progress_bar("convert");
    if (ol > 5 && strcmp(out + ol - 5, ".gguf") == 0) s = ql_export_image(ql_exporter_by_name("gguf"), out, src, g, bar);
    else { /* the whole folder appears at once, complete, or not at all */
        char *tmpdir;
        if (!(s = ql_atomic_dir_open(out, &tmpdir))) {
            if ((s = ql_hf_save(g, tmpdir))) ql_atomic_dir_abort(tmpdir);
            else s = ql_atomic_dir_commit(out, tmpdir);
        }
    }
    cli_progress_done(bar);
    if (s) rc = cli_fail("convert");
    else fprintf(stderr, "qlab convert: %s -> %s (%lld tensors)\n", in, out, (long long)g->n_tensors);
out:
    ql_gguf_free(g);
    ql_model_free(m);
    return rc;
}
