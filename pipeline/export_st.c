/* export_st.c — the safetensors-folder exporter base (see export_st.h): collects tensor descriptions,
 * asks the target what each quantized linear becomes, and at commit writes the whole folder into
 * "<OUT>.tmp.XXXXXX" beside OUT — shards (each file through base/atomic_file, so fsynced), the shard
 * index, config.json, generation_config.json, sidecars — and renames it to OUT. A failure or cancel
 * removes the temporary folder; an existing non-empty OUT is refused, never replaced. Tensors stream:
 * one source tensor's bytes (and its converted outputs) are in memory at a time; the shards are written in
 * bulk mode (base/atomic_file: a writer thread, O_DIRECT) and the tokenizer files by a thread beside them. */
#include "pipeline/export_st.h"
#include "base/atomic_file.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/int_quants.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_DEFAULT_SHARD_BYTES 5000000000ull /* transformers' default max_shard_size "5GB" */

typedef struct {
    char *name;
    void *bytes;
    size_t n;
} sidecar;

typedef struct {
    const ql_st_target *target;
    const ql_gguf *source;
    ql_st_tensor *t;
    int64_t n, cap;
    sidecar *side;
    int n_side;
    ql_gguf *act_keys; /* the image's qlab.act.* keys (core/actquant.h), read per tensor as it arrives */
    ql_gguf *quant_keys; /* the image's qlab.quant.* keys (how the codes were chosen), for the target's config */
    ql_st_kv_scheme_fn kv_scheme; /* ql_st_set_kv_scheme's; NULL: no KV settings in this target */
    json_t *kv_json;   /* the target's kv_cache_scheme for the image's qlab.kv.* keys (NULL: float cache) */
} st_state;

/* ---------------------------------------------------------------- helpers for targets */

void ql_st_set_out(ql_st_out *o, const char *suffix, const char *dtype, int n_dims, int64_t d0, int64_t d1,
                   bool permute_rows) {
    memset(o, 0, sizeof *o);
    snprintf(o->suffix, sizeof o->suffix, "%s", suffix);
    o->dtype = dtype;
    o->n_dims = n_dims;
    o->shape[0] = d0;
    o->shape[1] = n_dims > 1 ? d1 : 1;
    int64_t esz = !strcmp(dtype, "F32") || !strcmp(dtype, "I32") ? 4 : !strcmp(dtype, "I64") ? 8
                  : !strcmp(dtype, "F8_E4M3") || !strcmp(dtype, "U8") || !strcmp(dtype, "I8") ? 1 : 2;
    o->nbytes = (uint64_t)(d0 * (n_dims > 1 ? d1 : 1) * esz);
    o->permute_rows = permute_rows;
}

bool ql_st_is_float(uint32_t type) { return type == QL_TYPE_F32 || type == QL_TYPE_F16 || type == QL_TYPE_BF16; }

ql_st_int_row ql_st_int_row_at(const ql_st_tensor *t, const uint8_t *src, int64_t r) {
    ql_st_int_row ir = {.ncols = t->ne[0], .bits = t->bits, .group = t->group, .sym = t->sym};
    ir.ng = (ir.ncols + t->group - 1) / t->group;
    int64_t rb = ql_int_row_bytes(ir.ncols, t->bits, t->group == t->ne[0] ? 0 : t->group, t->sym);
    ir.row = src + r * rb;
    return ir;
}

uint16_t ql_st_int_scale(const ql_st_int_row *r, int64_t g) { return ql_get_f16le(r->row + 2 * g); }

unsigned ql_st_int_zero(const ql_st_int_row *r, int64_t g) {
    if (r->sym) return 1u << (r->bits - 1);
    return ql_bits_get(r->row + 2 * r->ng, g * r->bits, r->bits);
}

unsigned ql_st_int_code(const ql_st_int_row *r, int64_t c) {
    int64_t off = 2 * r->ng + (r->sym ? 0 : ql_bits_to_bytes(r->ng * r->bits));
    return ql_bits_get(r->row + off, c * r->bits, r->bits);
}

void ql_st_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ---------------------------------------------------------------- collecting */

ql_status ql_st_begin(ql_exporter *x, const char *out_path, const ql_gguf *source, const ql_st_target *target) {
    if (!source) return ql_fail(QL_ERR_ARG, "%s: the %s exporter needs the source model", out_path, target->name);
    /* an existing non-empty OUT was refused (or, with --force, accepted) by the seam (ql_export_begin_replace) */
    st_state *st = ql_calloc(1, sizeof *st);
    st->target = target;
    st->source = source;
    x->state = st;
    return QL_OK;
}

/* GGUF keys have no place in a Hugging Face folder: config.json is derived from the source model. The
 * activation schemes are kept: they become the target's input_activations (metadata arrives before tensors);
 * so are the method options the quantizer recorded (qlab.quant.opts.<method>), for the target's config, and the
 * KV settings (qlab.kv.*): they become its kv_cache_scheme. */
ql_status ql_st_add_metadata(ql_exporter *x, const char *key, const ql_gguf_value *val) {
    st_state *st = x->state;
    if (!strncmp(key, "qlab.quant.", 11)) {
        if (!st->quant_keys) st->quant_keys = ql_gguf_new();
        ql_gguf_set_value(st->quant_keys, key, val);
        return QL_OK;
    }
    if (strncmp(key, "qlab.act.", 9) && !ql_kv_settings_is_key(key)) return QL_OK;
    if (!st->act_keys) st->act_keys = ql_gguf_new();
    ql_gguf_set_value(st->act_keys, key, val);
    return QL_OK;
}

ql_status ql_st_add_sidecar(ql_exporter *x, const char *file_name, const void *bytes, size_t n) {
    st_state *st = x->state;
    st->side = ql_realloc(st->side, (size_t)(st->n_side + 1) * sizeof *st->side);
    sidecar *sc = &st->side[st->n_side++];
    sc->name = ql_strdup(file_name);
    sc->bytes = ql_malloc(n ? n : 1);
    memcpy(sc->bytes, bytes, n);
    sc->n = n;
    return QL_OK;
}

static bool in_decoder_block(const char *hf_name) { return strncmp(hf_name, "model.layers.", 13) == 0; }

ql_status ql_st_add_tensor(ql_exporter *x, const ql_export_tensor *et) {
    st_state *st = x->state;
    if (et->n_dims > 2 && et->ne[2] * et->ne[3] != 1)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has more than two dimensions", x->out_path, et->name);
    if (st->n == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 64;
        st->t = ql_realloc(st->t, (size_t)st->cap * sizeof *st->t);
    }
    ql_st_tensor *t = &st->t[st->n];
    memset(t, 0, sizeof *t);
    t->gguf_name = ql_strdup(et->name);
    t->hf_name = ql_hf_tensor_name(st->source, et->name, &t->rope_heads);
    t->norm_shift = et->n_dims == 1 && ql_hf_norm_shift(st->source, et->name);
    size_t hl = strlen(t->hf_name);
    t->module = ql_strdup(t->hf_name);
    if (hl > 7 && !strcmp(t->hf_name + hl - 7, ".weight")) t->module[hl - 7] = 0;
    t->type = et->type;
    t->n_dims = et->n_dims;
    for (int d = 0; d < 4; d++) t->ne[d] = d < et->n_dims ? et->ne[d] : 1;
    t->nbytes = et->nbytes;
    t->data = et->data;
    t->produce = et->produce;
    t->produce_user = et->produce_user;
    t->produce_tag = et->produce_tag;
    t->quant_keys = st->quant_keys;
    st->n++; /* from here on, abort frees it */
    bool has_act = false;
    if (st->act_keys) {
        ql_status as = ql_act_quant_from_gguf(st->act_keys, x->out_path, t->gguf_name, &t->act, &has_act);
        if (as) return as;
        if (has_act && !st->target->activations)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has activation scheme %s, which the %s format cannot "
                                               "hold (--to compressed-tensors or gguf can)",
                           x->out_path, t->gguf_name, ql_act_mode_name(t->act.mode), st->target->name);
    }
    for (int64_t i = 0; i < st->n - 1; i++)
        if (!strcmp(st->t[i].hf_name, t->hf_name))
            return ql_fail(QL_ERR_FORMAT, "%s: two tensors map to the Hugging Face name '%s'", x->out_path, t->hf_name);
    int64_t rows = t->ne[1], cols = t->ne[0];
    int64_t rope_rows = t->n_dims >= 2 ? rows : cols; /* a q/k bias is permuted element by element */
    if (t->rope_heads > 0 && (rope_rows % t->rope_heads || (rope_rows / t->rope_heads) % 2))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %lld rows, not a whole number of %d even-sized heads",
                       x->out_path, t->gguf_name, (long long)rope_rows, t->rope_heads);
    if (ql_st_is_float(t->type)) {
        const char *dt = t->type == QL_TYPE_F32 ? "F32" : t->type == QL_TYPE_F16 ? "F16" : "BF16";
        ql_st_out *o = &t->out[t->n_out++];
        ql_st_set_out(o, "", dt, t->n_dims > 1 ? 2 : 1, t->n_dims > 1 ? rows : cols, cols, false);
        t->kind = QL_ST_FLOAT;
        if (has_act)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is float but has activation scheme %s; the %s format "
                                               "quantizes a linear's input only with its weight",
                           x->out_path, t->gguf_name, ql_act_mode_name(t->act.mode), st->target->name);
        return QL_OK;
    }
    t->format = ql_format_by_type(t->type);
    if (!t->format)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has a type qlab has no format for", x->out_path, t->gguf_name);
    if (t->n_dims >= 2 && in_decoder_block(t->hf_name) && !strcmp(t->hf_name + hl - 7, ".weight"))
        return st->target->plan(x->out_path, t, st->t, st->n - 1);
    /* quantized, but outside what the ecosystem quantizes: exact F32 values, listed as not converted */
    if (has_act)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has activation scheme %s, but the %s format leaves it in "
                                           "float",
                       x->out_path, t->gguf_name, ql_act_mode_name(t->act.mode), st->target->name);
    t->kind = QL_ST_DEQUANT;
    ql_st_set_out(&t->out[t->n_out++], "", "F32", t->n_dims > 1 ? 2 : 1, t->n_dims > 1 ? rows : cols, cols, true);
    return QL_OK;
}

/* ---------------------------------------------------------------- describing (--dry-run) */

void ql_st_describe(ql_exporter *x, char *buf, size_t n) {
    st_state *st = x->state;
    if (!n) return;
    buf[0] = 0;
    if (st->n == 0) return;
    const ql_st_tensor *t = &st->t[st->n - 1];
    size_t len = 0;
#define ADD(...)                                                                                             \
    do {                                                                                                     \
        if (len < n) {                                                                                       \
            int k_ = snprintf(buf + len, n - len, __VA_ARGS__);                                              \
            if (k_ > 0) len += (size_t)k_;                                                                   \
        }                                                                                                    \
    } while (0)
    if (t->kind == QL_ST_FLOAT) ADD("kept in float (%s): ", t->format ? "not quantized" : "a float tensor");
    else if (t->kind == QL_ST_DEQUANT)
        ADD("kept in float (%s quantizes only decoder-block linears; %s decoded exactly): ", st->target->name, t->format->name);
    for (int k = 0; k < t->n_out; k++) {
        const ql_st_out *o = &t->out[k];
        char name[400];
        if (o->suffix[0]) snprintf(name, sizeof name, "%s.%s", t->module, o->suffix);
        else snprintf(name, sizeof name, "%s", t->hf_name);
        if (o->n_dims == 2) ADD("%s%s %s [%lld, %lld]", k ? ", " : "", name, o->dtype, (long long)o->shape[0], (long long)o->shape[1]);
        else ADD("%s%s %s [%lld]", k ? ", " : "", name, o->dtype, (long long)o->shape[0]);
    }
    if (t->kind == QL_ST_TARGET) {
        if (t->group > 0) ADD("; %d-bit", t->bits);
        else ADD("; %.2f bits per weight", t->format->bpw); /* mixed bits (exl2): the format's average */
        if (t->group > 0 && t->group < t->ne[0]) ADD(", group %d", t->group);
        else if (t->group == t->ne[0]) ADD(", per channel");
        if (t->act.mode != QL_ACT_NONE) ADD(", inputs %s", ql_act_mode_name(t->act.mode));
    }
#undef ADD
}

/* ---------------------------------------------------------------- writing */

static void st_free(st_state *st) {
    for (int64_t i = 0; i < st->n; i++) {
        free(st->t[i].gguf_name);
        free(st->t[i].hf_name);
        free(st->t[i].module);
    }
    free(st->t);
    for (int i = 0; i < st->n_side; i++) {
        free(st->side[i].name);
        free(st->side[i].bytes);
    }
    free(st->side);
    ql_gguf_free(st->act_keys);
    ql_gguf_free(st->quant_keys);
    json_decref(st->kv_json);
    free(st);
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = ql_malloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static void out_name(char *buf, size_t cap, const ql_st_tensor *t, const ql_st_out *o) {
    if (o->suffix[0]) snprintf(buf, cap, "%s.%s", t->module, o->suffix);
    else snprintf(buf, cap, "%s", t->hf_name);
}

static uint64_t tensor_out_bytes(const ql_st_tensor *t) {
    uint64_t n = 0;
    for (int k = 0; k < t->n_out; k++) n += t->out[k].nbytes;
    return n;
}



/* GGUF's 1 + w back to HF Gemma's w, in the tensor's own float type. */
static void shift_norm(void *buf, uint32_t type, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (type == QL_TYPE_F32) {
            ((float *)buf)[i] -= 1.0f;
        } else {
            uint16_t *h = (uint16_t *)buf + i;
            *h = type == QL_TYPE_BF16 ? ql_fp32_to_bf16(ql_bf16_to_fp32(*h) - 1.0f) : ql_fp32_to_fp16(ql_fp16_to_fp32(*h) - 1.0f);
        }
    }
}

/* One source tensor's outputs, converted, into *buf. The three buffers are sized once for the largest tensor
 * (write_folder): reallocating them per tensor gave the pages back and faulted them in again each time. */
static ql_status convert_tensor(const st_state *st, const ql_st_tensor *t, uint8_t **src_buf, uint8_t **tmp,
                                uint8_t **buf) {
    const uint8_t *src = t->data;
    if (!src) {
        ql_status s = t->produce(t->produce_user, t->produce_tag, *src_buf, t->nbytes);
        if (s) return s;
        src = *src_buf;
    }
    int64_t rows = t->ne[1], cols = t->ne[0];
    bool row_wise = t->kind == QL_ST_FLOAT || (t->format && !t->format->whole_tensor);
    if (t->rope_heads > 0 && row_wise) { /* q/k rows back to HF order before anything reads them */
        int64_t prow = t->n_dims >= 2 ? rows : cols;
        ql_rope_permute_rows(*tmp, src, t->rope_heads, prow, (size_t)(t->nbytes / (uint64_t)prow), false);
        src = *tmp;
    }
    if (t->kind == QL_ST_FLOAT) {
        memcpy(*buf, src, t->nbytes);
        if (t->norm_shift) shift_norm(*buf, t->type, t->ne[0]);
    } else if (t->kind == QL_ST_DEQUANT) {
        ql_status s = ql_format_dequantize(t->format, src, (float *)*buf, rows, cols, 1);
        if (s) return s;
        if (t->norm_shift) shift_norm(*buf, QL_TYPE_F32, t->ne[0]);
    } else {
        ql_status s = st->target->convert(t, src, *buf);
        if (s) return s;
    }
    if (t->rope_heads > 0 && !row_wise) { /* whole-tensor formats: permute the outputs' rows */
        uint64_t off = 0;
        for (int k = 0; k < t->n_out; k++) {
            const ql_st_out *o = &t->out[k];
            if (o->permute_rows) {
                ql_rope_permute_rows(*tmp, *buf + off, t->rope_heads, o->shape[0], (size_t)(o->nbytes / (uint64_t)o->shape[0]),
                                     false);
                memcpy(*buf + off, *tmp, o->nbytes);
            }
            off += o->nbytes;
        }
    }
    return QL_OK;
}

static ql_status write_json(const char *dir, const char *name, json_t *j) {
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    if (!text) return ql_fail(QL_ERR_FORMAT, "%s: %s could not be encoded", dir, name);
    size_t n = strlen(text);
    text[n] = '\n'; /* the terminator's byte becomes the newline: exactly n + 1 bytes are written */
    char *p = join(dir, name);
    ql_status s = ql_atomic_write_file(p, text, n + 1);
    free(p);
    free(text);
    return s;
}

static ql_status write_shard(const st_state *st, const char *path, int64_t a, int64_t b, const ql_progress *progress,
                             int64_t *done, int64_t total, uint8_t **src_buf, uint8_t **tmp, uint8_t **buf) {
    json_t *hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0;
    char name[512];
    for (int64_t i = a; i < b; i++)
        for (int k = 0; k < st->t[i].n_out; k++) {
            const ql_st_out *o = &st->t[i].out[k];
            out_name(name, sizeof name, &st->t[i], o);
            json_t *shape = json_array();
            for (int d = 0; d < o->n_dims; d++) json_array_append_new(shape, json_integer(o->shape[d]));
            json_object_set_new(hdr, name,
                                json_pack("{s:s,s:o,s:[I,I]}", "dtype", o->dtype, "shape", shape, "data_offsets",
                                          (json_int_t)off, (json_int_t)(off + o->nbytes)));
            off += o->nbytes;
        }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) {
        free(text);
        return s;
    }
    ql_atomic_set_bulk(af); /* GBs of tensors: staged, written by a thread while the next tensor converts */
    size_t hl = strlen(text), padded = (hl + 7) & ~(size_t)7; /* data starts 8-aligned */
    uint8_t len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (uint8_t)((uint64_t)padded >> (8 * k));
    s = ql_atomic_write(af, len8, 8);
    if (!s) s = ql_atomic_write(af, text, hl);
    if (!s) s = ql_atomic_write(af, "        ", padded - hl);
    free(text);
    for (int64_t i = a; i < b && !s; i++) {
        if (ql_progress_cancelled(progress)) {
            s = ql_fail(QL_ERR_CANCELLED, "cancelled");
            break;
        }
        if ((s = convert_tensor(st, &st->t[i], src_buf, tmp, buf))) break;
        s = ql_atomic_write(af, *buf, tensor_out_bytes(&st->t[i]));
        *done += 1;
        ql_progress_report(progress, *done, total, "writing");
    }
    if (s) {
        ql_atomic_abort(af);
        return s;
    }
    return ql_atomic_commit(af);
}

static json_t *generation_config(const ql_gguf *g) {
    int64_t bos, eos;
    bool hb = ql_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos);
    bool he = ql_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &eos);
    if (!hb && !he) return NULL;
    json_t *o = json_object();
    json_object_set_new(o, "_from_model_config", json_true());
    if (hb) json_object_set_new(o, "bos_token_id", json_integer(bos));
    if (he) json_object_set_new(o, "eos_token_id", json_integer(eos));
    return o;
}

/* tokenizer.json converted from the source's GGUF tokenizer keys, and the tokenizer_config.json that
 * transformers' AutoTokenizer reads beside it. A tokenizer model with no conversion (only llama/gpt2
 * have one) leaves both out: the weights are still usable with the original tokenizer files. */
static ql_status write_tokenizer(const ql_gguf *g, const char *dir) {
    char *text;
    if (!ql_gguf_get(g, "tokenizer.ggml.model") || ql_tokenizer_gguf_to_json(g, &text)) return QL_OK;
    char *p = join(dir, "tokenizer.json");
    ql_status s = ql_atomic_write_file(p, text, strlen(text));
    free(p);
    free(text);
    if (s) return s;
    uint64_t n = 0;
    const ql_gguf_value *tok = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n);
    json_t *o = json_object();
    static const char *const keys[][2] = {{"tokenizer.ggml.bos_token_id", "bos_token"},
                                          {"tokenizer.ggml.eos_token_id", "eos_token"},
                                          {"tokenizer.ggml.unknown_token_id", "unk_token"},
                                          {"tokenizer.ggml.padding_token_id", "pad_token"}};
    for (size_t k = 0; k < QL_ARRAY_LEN(keys); k++) {
        int64_t id;
        if (ql_gguf_get_int(g, keys[k][0], &id) && id >= 0 && (uint64_t)id < n)
            json_object_set_new(o, keys[k][1], json_string(tok[id].v.str.s));
    }
    const ql_gguf_value *ab = ql_gguf_get(g, "tokenizer.ggml.add_bos_token"), *ae = ql_gguf_get(g, "tokenizer.ggml.add_eos_token");
    bool spm = !strcmp(ql_gguf_get_str(g, "tokenizer.ggml.model"), "llama");
    json_object_set_new(o, "add_bos_token", json_boolean(ab ? ab->v.u != 0 : spm));
    json_object_set_new(o, "add_eos_token", json_boolean(ae && ae->v.u != 0));
    json_object_set_new(o, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(o, "tokenizer_class", json_string(spm ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast"));
    const char *arch = ql_gguf_get_str(g, "general.architecture");
    char key[128];
    int64_t ctx;
    snprintf(key, sizeof key, "%s.context_length", arch ? arch : "llama");
    if (ql_gguf_get_int(g, key, &ctx)) json_object_set_new(o, "model_max_length", json_integer(ctx));
    s = write_json(dir, "tokenizer_config.json", o);
    json_decref(o);
    return s;
}

static ql_status write_folder_files(st_state *st, const char *tmpdir, const ql_progress *progress) {
    uint64_t max_shard = ST_DEFAULT_SHARD_BYTES;
    const char *env = getenv("QLAB_MAX_SHARD_BYTES");
    if (env && strtoull(env, NULL, 10) > 0) max_shard = strtoull(env, NULL, 10);
    /* shards: tensors in order, a new shard when the next tensor's outputs would pass the limit */
    int64_t *start = ql_malloc((size_t)(st->n + 2) * sizeof *start);
    int n_shards = 0;
    uint64_t cur = 0, total_bytes = 0;
    start[0] = 0;
    for (int64_t i = 0; i < st->n; i++) {
        uint64_t b = tensor_out_bytes(&st->t[i]);
        if (cur > 0 && cur + b > max_shard) start[++n_shards] = i, cur = 0;
        cur += b;
        total_bytes += b;
    }
    start[++n_shards] = st->n;
    ql_status s = QL_OK;
    uint64_t max_in = 1, max_out = 1;
    for (int64_t i = 0; i < st->n; i++) {
        max_in = st->t[i].nbytes > max_in ? st->t[i].nbytes : max_in;
        max_out = tensor_out_bytes(&st->t[i]) > max_out ? tensor_out_bytes(&st->t[i]) : max_out;
    }
    uint8_t *src_buf = ql_malloc(max_in), *tmp = ql_malloc(max_in > max_out ? max_in : max_out), *buf = ql_malloc(max_out);
    int64_t done = 0;
    json_t *weight_map = json_object();
    char name[512], file[64];
    for (int k = 0; k < n_shards && !s; k++) {
        if (n_shards == 1) snprintf(file, sizeof file, "model.safetensors");
        else snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        for (int64_t i = start[k]; i < start[k + 1]; i++)
            for (int o = 0; o < st->t[i].n_out; o++) {
                out_name(name, sizeof name, &st->t[i], &st->t[i].out[o]);
                json_object_set_new(weight_map, name, json_string(file));
            }
        char *p = join(tmpdir, file);
        s = write_shard(st, p, start[k], start[k + 1], progress, &done, st->n, &src_buf, &tmp, &buf);
        free(p);
    }
    free(src_buf);
    free(tmp);
    free(buf);
    free(start);
    if (!s && n_shards > 1) {
        json_t *idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)total_bytes, "weight_map", weight_map);
        weight_map = NULL;
        s = write_json(tmpdir, "model.safetensors.index.json", idx);
        json_decref(idx);
    }
    json_decref(weight_map);
    if (s) return s;

    char *cfg_text;
    if ((s = ql_hf_config_text(st->source, "float16", &cfg_text))) return s;
    json_t *cfg = json_loads(cfg_text, 0, NULL);
    free(cfg_text);
    if (!cfg) return ql_fail(QL_ERR_FORMAT, "%s: config.json could not be built", tmpdir);
    json_t *qc = st->target->quant_config(st->t, st->n);
    if (st->kv_json && json_is_object(qc)) {
        json_object_set(qc, "kv_cache_scheme", st->kv_json);
    }
    json_object_set_new(cfg, "quantization_config", qc);
    s = write_json(tmpdir, "config.json", cfg);
    json_decref(cfg);
    json_t *gen = s ? NULL : generation_config(st->source);
    if (gen) {
        s = write_json(tmpdir, "generation_config.json", gen);
        json_decref(gen);
    }
    for (int i = 0; i < st->n_side && !s; i++) {
        char *p = join(tmpdir, st->side[i].name);
        s = ql_atomic_write_file(p, st->side[i].bytes, st->side[i].n);
        free(p);
    }
    return s;
}

/* The tokenizer files are written by a thread of their own while the tensors are: converting llama-3's
 * 128k-token vocabulary and merges to JSON is ~0.4 s of jansson on one core, which ran after the last
 * tensor with the other core idle. Its error message is carried back (ql_last_error is per thread). */
typedef struct {
    const ql_gguf *source;
    const char *dir;
    ql_status s;
    char err[512];
} tokenizer_job;

static void *tokenizer_thread(void *arg) {
    tokenizer_job *j = arg;
    j->s = write_tokenizer(j->source, j->dir);
    if (j->s) snprintf(j->err, sizeof j->err, "%s", ql_last_error());
    return NULL;
}

static ql_status write_folder(st_state *st, const char *tmpdir, const ql_progress *progress) {
    tokenizer_job j = {.source = st->source, .dir = tmpdir};
    pthread_t th;
    sigset_t all, old;
    sigfillset(&all); /* signals stay with the main thread, which polls the cancel flag */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    bool threaded = pthread_create(&th, NULL, tokenizer_thread, &j) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    ql_status s = write_folder_files(st, tmpdir, progress);
    if (threaded) {
        pthread_join(th, NULL); /* before the caller may remove tmpdir */
        if (!s && j.s) s = ql_fail(j.s, "%s", j.err);
    } else if (!s)
        s = write_tokenizer(st->source, tmpdir);
    return s;
}

void ql_st_set_kv_scheme(ql_exporter *x, ql_st_kv_scheme_fn fn) { ((st_state *)x->state)->kv_scheme = fn; }

/* The image's KV settings as the target's kv_cache_scheme (st->kv_json), or a refusal naming the folder: a
 * quantized cache the target cannot describe is not dropped silently. */
static ql_status st_kv_scheme(st_state *st, const char *out_path) {
    if (!st->act_keys) return QL_OK;
    ql_kv_settings kv;
    ql_status s = ql_kv_settings_from_gguf(st->act_keys, out_path, 1 << 20, &kv);
    if (s || !kv.set) return s;
    bool all_f32 = ql_kv_scheme_is_f32(&kv.scheme);
    for (int i = 0; i < kv.n_layer_own; i++) all_f32 &= ql_kv_scheme_is_f32(&kv.layer_scheme[i]);
    char why[256] = "", d[512];
    if (!all_f32) {
        if (st->kv_scheme) st->kv_json = st->kv_scheme(&kv, why, sizeof why);
        else snprintf(why, sizeof why, "%s checkpoints have no KV cache scheme", st->target->name);
        if (!st->kv_json)
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: the KV cache %s (qlab.kv.*) cannot be exported: %s", out_path,
                        ql_kv_settings_describe(&kv, d, sizeof d), why);
    }
    ql_kv_settings_free(&kv);
    return s;
}

ql_status ql_st_commit(ql_exporter *x, const ql_progress *progress) {
    st_state *st = x->state;
    char *tmpdir;
    ql_status s = st_kv_scheme(st, x->out_path);
    if (s) {
        st_free(st);
        return s;
    }
    s = ql_atomic_dir_open(x->out_path, &tmpdir);
    if (!s) {
        if ((s = write_folder(st, tmpdir, progress))) ql_atomic_dir_abort(tmpdir);
        else s = x->replace ? ql_atomic_dir_commit_replace(x->out_path, tmpdir) : ql_atomic_dir_commit(x->out_path, tmpdir);
    }
    st_free(st);
    return s;
}

/* Nothing reached the disk before commit. */
void ql_st_abort(ql_exporter *x) { st_free(x->state); }
