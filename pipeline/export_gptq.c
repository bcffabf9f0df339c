/* export_gptq.c — `--to gptq`: GPTQModel / AutoGPTQ checkpoints (checkpoint_format "gptq", the
 * historic v1 layout that transformers, vLLM and TGI load). Per linear with K inputs, N outputs,
 * groups of g along the input (layout and sources: docs/formats.md § Exporters):
 *     qweight  I32 [K*bits/32, N]  codes of column n packed along the input, LSB first, as one bit
 *                                  stream through consecutive words (so 3-bit codes straddle words)
 *     qzeros   I32 [K/g, N*bits/32] zero points minus one (the v1 offset), packed along the output
 *     scales   F16 [K/g, N]
 *     g_idx    I32 [K]             k / g: qlab's groups are consecutive columns even under GPTQ's act
 *                                  order (m_gptq processes columns by decreasing Hessian diagonal but
 *                                  fixes each group's grid on the columns k/g), so desc_act records
 *                                  only the processing order (the run's gptq act_order option)
 * qlab's codes and fp16 scales are copied unchanged, so the checkpoint dequantizes to exactly the
 * values qlab previewed: w = scale * (q - (stored_zero + 1)). One (bits, group, sym) for the whole
 * model; block linears left in float are excluded through GPTQModel's "dynamic" ("-:" rules). */
#include "pipeline/export_st.h"
#include "formats/fmt_ext.h"
#include "methods/method.h"

#include <stdlib.h>
#include <string.h>

static bool gptq_bits_ok(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

static bool gptq_accepts(uint32_t type) {
    if (ql_st_is_float(type)) return true;
    int bits;
    const ql_format *f = ql_format_by_type(type);
    return f && ql_int_format_params(f, &bits, NULL, NULL, NULL) && gptq_bits_ok(bits);
}

static ql_status gptq_plan(const char *out, ql_st_tensor *t, const ql_st_tensor *prev, int64_t n_prev) {
    int bits, group;
    bool sym;
    if (!ql_int_format_params(t->format, &bits, &group, &sym, NULL) || !gptq_bits_ok(bits))
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; gptq takes int{2,3,4,8}_g{32,64,128,256}[_sym] and int{4,8}_channel",
                       out, t->gguf_name, t->format->name);
    int64_t K = t->ne[0], N = t->ne[1];
    bool channel = group == 0; /* int{4,8}_channel: group_size -1, whatever the row length */
    if (channel) group = (int)K;
    if (K % group)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s': rows of %lld do not split into groups of %d; gptq needs whole groups (use a group that divides %lld, or int{4,8}_channel)",
                       out, t->gguf_name, (long long)K, group, (long long)K);
    if ((K * bits) % 32 || (N * bits) % 32)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %lld x %lld; gptq packs %d-bit codes into whole 32-bit words along both dimensions",
                       out, t->gguf_name, (long long)N, (long long)K, bits);
    for (int64_t i = 0; i < n_prev; i++)
        if (prev[i].kind == QL_ST_TARGET && (prev[i].bits != bits || prev[i].sym != sym ||
                                             (prev[i].scheme ? !channel : channel || prev[i].group != group)))
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s but '%s' is %s; a gptq checkpoint has one bits/group/sym for every layer",
                           out, t->gguf_name, t->format->name, prev[i].gguf_name, prev[i].format->name);
    t->kind = QL_ST_TARGET;
    t->bits = bits, t->group = group, t->sym = sym;
    t->scheme = channel;
    ql_st_set_out(&t->out[0], "qweight", "I32", 2, K * bits / 32, N, false);
    ql_st_set_out(&t->out[1], "qzeros", "I32", 2, K / group, N * bits / 32, false);
    ql_st_set_out(&t->out[2], "scales", "F16", 2, K / group, N, false);
    ql_st_set_out(&t->out[3], "g_idx", "I32", 1, K, 1, false);
    t->n_out = 4;
    return QL_OK;
}

/* Sets `bits` bits at bit position pos of a stream of 32-bit words (LSB first). */
static void put_bits32(uint32_t *w, int64_t pos, int bits, uint32_t v) {
    int sh = (int)(pos & 31);
    w[pos >> 5] |= v << sh;
    if (sh + bits > 32) w[(pos >> 5) + 1] |= v >> (32 - sh);
}

static ql_status gptq_convert(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst) {
    const int64_t K = t->ne[0], N = t->ne[1], ng = K / t->group, bits = t->bits;
    const uint32_t maxq = (1u << bits) - 1;
    const int64_t qw_rows = K * bits / 32, qz_cols = N * bits / 32;
    uint32_t *qz = calloc((size_t)(ng * qz_cols), 4);
    if (!qz) return ql_fail(QL_ERR_NOMEM, "out of memory packing '%s'", t->gguf_name);
    uint8_t *scales = dst + t->out[0].nbytes + t->out[1].nbytes, *gidx = scales + t->out[2].nbytes;
    /* qweight column n is row n's codes as one LSB-first stream through little-endian words: exactly the
     * bytes of qlab's code stream (K * bits is a whole number of words), so each row's stream is copied
     * word by word into its column, 16 rows at a time (the writes of a qweight row stay together) */
    const ql_st_int_row r0 = ql_st_int_row_at(t, src, 0);
    const int64_t rb = N > 1 ? ql_st_int_row_at(t, src, 1).row - r0.row : 0;
    const int64_t coff = 2 * ng + (t->sym ? 0 : ql_bits_to_bytes(ng * bits));
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        const int64_t nb = QL_MIN(16, N - n0);
        for (int64_t i = 0; i < qw_rows; i++) {
            uint8_t *d = dst + 4 * (i * N + n0);
            const uint8_t *s0 = src + n0 * rb + coff + 4 * i;
            for (int64_t j = 0; j < nb; j++) memcpy(d + 4 * j, s0 + j * rb, 4);
        }
    }
    for (int64_t n = 0; n < N; n++) {
        ql_st_int_row r = ql_st_int_row_at(t, src, n);
        for (int64_t g = 0; g < ng; g++) {
            unsigned z = ql_st_int_zero(&r, g);
            if (z == 0) { /* v1 stores zero - 1: a zero point of 0 would read back as 2^bits */
                free(qz);
                return ql_fail(QL_ERR_UNSUPPORTED, "%s: row %lld group %lld has zero point 0, which the gptq (v1) layout cannot hold; use a _sym format",
                               t->gguf_name, (long long)n, (long long)g);
            }
            put_bits32(qz + g * qz_cols, n * bits, (int)bits, (z - 1) & maxq);
            memcpy(scales + 2 * (g * N + n), r.row + 2 * g, 2); /* the row's fp16 scales, little-endian */
        }
    }
    for (int64_t i = 0; i < ng * qz_cols; i++) ql_st_put_u32(dst + t->out[0].nbytes + 4 * i, qz[i]);
    for (int64_t k = 0; k < K; k++) ql_st_put_u32(gidx + 4 * k, (uint32_t)(k / t->group));
    free(qz);
    return QL_OK;
}

/* "^model\.layers\.0\.mlp\.down_proj$" */
static char *anchored_regex(const char *name) {
    size_t n = strlen(name);
    char *r = malloc(2 * n + 3), *p = r;
    *p++ = '^';
    for (size_t i = 0; i < n; i++) {
        if (name[i] == '.') *p++ = '\\';
        *p++ = name[i];
    }
    *p++ = '$';
    *p = 0;
    return r;
}

/* The gptq method's options as the quantizer recorded them (qlab.quant.opts.gptq), else the defaults. */
static void gptq_method_opts(const ql_st_tensor *ts, int64_t n, bool *act_order, bool *static_groups) {
    const ql_method *gm = ql_method_by_name("gptq");
    const char *spec = NULL;
    for (int64_t i = 0; i < n && !spec; i++)
        if (ts[i].quant_keys) {
            const ql_gguf_value *v = ql_gguf_get(ts[i].quant_keys, "qlab.quant.opts.gptq");
            if (v && v->type == QL_GGUF_STRING) spec = v->v.str.s;
        }
    ql_opt_values ov;
    bool ok = gm && spec && ql_method_parse_shared_opts(gm, spec, &ov) == QL_OK;
    *act_order = ok && ql_opt_bool(&ov, gm, "act_order");
    *static_groups = ok && ql_opt_bool(&ov, gm, "static_groups");
}

static json_t *gptq_config(const ql_st_tensor *ts, int64_t n) {
    const ql_st_tensor *q = NULL;
    json_t *dyn = json_object();
    for (int64_t i = 0; i < n; i++) {
        if (ts[i].kind == QL_ST_TARGET && !q) q = &ts[i];
        size_t l = strlen(ts[i].hf_name);
        if (ts[i].kind != QL_ST_TARGET && ts[i].n_dims >= 2 && !strncmp(ts[i].hf_name, "model.layers.", 13) && l > 7 &&
            !strcmp(ts[i].hf_name + l - 7, ".weight")) {
            char *re = anchored_regex(ts[i].module), key[600];
            snprintf(key, sizeof key, "-:%s", re);
            json_object_set_new(dyn, key, json_object());
            free(re);
        }
    }
    json_t *o = json_object();
    json_object_set_new(o, "quant_method", json_string("gptq"));
    json_object_set_new(o, "checkpoint_format", json_string("gptq"));
    json_object_set_new(o, "bits", json_integer(q ? q->bits : 4));
    json_object_set_new(o, "group_size", json_integer(!q ? 128 : q->scheme ? -1 : q->group));
    bool act_order, static_groups;
    gptq_method_opts(ts, n, &act_order, &static_groups);
    json_object_set_new(o, "desc_act", json_boolean(act_order));
    json_object_set_new(o, "sym", json_boolean(q ? q->sym : true));
    json_object_set_new(o, "static_groups", json_boolean(static_groups));
    json_object_set_new(o, "true_sequential", json_true());
    json_object_set_new(o, "lm_head", json_false());
    json_object_set_new(o, "pack_dtype", json_string("int32"));
    json_object_set_new(o, "meta", json_pack("{s:s}", "quantizer", "qlab"));
    if (json_object_size(dyn)) json_object_set_new(o, "dynamic", dyn);
    else json_decref(dyn);
    return o;
}

static const ql_st_target gptq_target = {"gptq", gptq_plan, gptq_convert, gptq_config, false};

static ql_status gptq_begin(ql_exporter *x, const char *out, const ql_gguf *source) {
    return ql_st_begin(x, out, source, &gptq_target);
}

const ql_exporter_ops ql_export_gptq_ops = {
    .accepts_type = gptq_accepts,
    .begin = gptq_begin,
    .add_metadata = ql_st_add_metadata,
    .add_tensor = ql_st_add_tensor,
    .add_sidecar = ql_st_add_sidecar,
    .commit = ql_st_commit,
    .abort = ql_st_abort,
    .describe = ql_st_describe,
};
