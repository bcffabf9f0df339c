/* export_awq.c — `--to awq`: AutoAWQ's GEMM layout (quant_method "awq", version "gemm"), loaded by
 * transformers, vLLM and TGI. 4-bit only. Per linear with K inputs, N outputs, groups of g along the
 * input (docs/formats.md § Exporters):
 *     qweight I32 [K, N/8]    eight output columns per word, nibble i holding column 8w + ORDER[i]
 *     qzeros  I32 [K/g, N/8]  zero points, the same interleave, no offset
 *     scales  F16 [K/g, N]
 * with ORDER = 0,2,4,6,1,3,5,7 (AWQ's GEMM kernel dequantizes pairs of columns from one shift).
 * w = scale * (q - zero); qlab's codes, zeros and fp16 scales are copied unchanged, symmetric formats
 * with their implicit zero 8 written out. AWQ itself scales activations; qlab's awq method folds those
 * scales into the weights and norms before quantizing, so the folder needs nothing more. */
#include "pipeline/export_st.h"
#include "formats/fmt_ext.h"

#include <stdlib.h>
#include <string.h>

static const int AWQ_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};

static bool awq_accepts(uint32_t type) {
    if (ql_st_is_float(type)) return true;
    int bits, group;
    const ql_format *f = ql_format_by_type(type);
    return f && ql_int_format_params(f, &bits, &group, NULL, NULL) && bits == 4 && group > 0;
}

static ql_status awq_plan(const char *out, ql_st_tensor *t, const ql_st_tensor *prev, int64_t n_prev) {
    int bits, group;
    bool sym;
    if (!ql_int_format_params(t->format, &bits, &group, &sym, NULL) || bits != 4 || group <= 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; awq takes int4_g{32,64,128,256}[_sym] only", out,
                       t->gguf_name, t->format->name);
    int64_t K = t->ne[0], N = t->ne[1];
    if (K % group)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s': rows of %lld do not split into groups of %d; awq needs whole groups",
                       out, t->gguf_name, (long long)K, group);
    if (N % 8)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has %lld outputs; awq packs eight per word", out, t->gguf_name,
                       (long long)N);
    for (int64_t i = 0; i < n_prev; i++)
        if (prev[i].kind == QL_ST_TARGET && prev[i].group != group)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s but '%s' is %s; an awq checkpoint has one group size",
                           out, t->gguf_name, t->format->name, prev[i].gguf_name, prev[i].format->name);
    t->kind = QL_ST_TARGET;
    t->bits = 4, t->group = group, t->sym = sym;
    ql_st_set_out(&t->out[0], "qweight", "I32", 2, K, N / 8, false);
    ql_st_set_out(&t->out[1], "qzeros", "I32", 2, K / group, N / 8, false);
    ql_st_set_out(&t->out[2], "scales", "F16", 2, K / group, N, false);
    t->n_out = 3;
    return QL_OK;
}

static ql_status awq_convert(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst) {
    const int64_t K = t->ne[0], N = t->ne[1], ng = K / t->group, W = N / 8;
    int nibble_of[8]; /* column 8w + c sits in nibble nibble_of[c] */
    for (int i = 0; i < 8; i++) nibble_of[AWQ_ORDER[i]] = i;
    uint8_t *qz = dst + t->out[0].nbytes, *scales = qz + t->out[1].nbytes;
    memset(qz, 0, t->out[1].nbytes);
    /* qlab's 4-bit codes of a row are bytes holding columns 2j (low nibble) and 2j + 1 (high nibble); a
     * qweight word gathers one column of eight consecutive rows: two words per byte of the eight rows */
    const ql_st_int_row r0 = ql_st_int_row_at(t, src, 0);
    const int64_t rb = N > 1 ? ql_st_int_row_at(t, src, 1).row - r0.row : 0;
    const int64_t coff = 2 * ng + (t->sym ? 0 : ql_bits_to_bytes(ng * 4));
    for (int64_t w = 0; w < W; w++) {
        const uint8_t *rows = src + 8 * w * rb + coff;
        for (int64_t j = 0; j < K / 2; j++) {
            uint32_t lo = 0, hi = 0;
            for (int c = 0; c < 8; c++) {
                const uint32_t b = rows[c * rb + j];
                lo |= (b & 15) << (4 * nibble_of[c]);
                hi |= (b >> 4) << (4 * nibble_of[c]);
            }
            ql_st_put_u32(dst + 4 * ((2 * j) * W + w), lo);
            ql_st_put_u32(dst + 4 * ((2 * j + 1) * W + w), hi);
        }
    }
    for (int64_t n = 0; n < N; n++) {
        ql_st_int_row r = ql_st_int_row_at(t, src, n);
        const int64_t w = n / 8;
        const int sh = 4 * nibble_of[n % 8];
        for (int64_t g = 0; g < ng; g++) {
            uint8_t *zp = qz + 4 * (g * W + w);
            const uint32_t z = (uint32_t)(zp[0] | zp[1] << 8 | zp[2] << 16 | (uint32_t)zp[3] << 24) | (uint32_t)ql_st_int_zero(&r, g) << sh;
            ql_st_put_u32(zp, z);
            memcpy(scales + 2 * (g * N + n), r.row + 2 * g, 2); /* the row's fp16 scales, little-endian */
        }
    }
    return QL_OK;
}

static json_t *awq_config(const ql_st_tensor *ts, int64_t n) {
    const ql_st_tensor *q = NULL;
    json_t *skip = json_array();
    for (int64_t i = 0; i < n; i++) {
        if (ts[i].kind == QL_ST_TARGET && !q) q = &ts[i];
        size_t l = strlen(ts[i].hf_name);
        if (ts[i].kind != QL_ST_TARGET && ts[i].n_dims >= 2 && !strncmp(ts[i].hf_name, "model.layers.", 13) && l > 7 &&
            !strcmp(ts[i].hf_name + l - 7, ".weight"))
            json_array_append_new(skip, json_string(ts[i].module));
    }
    json_t *o = json_object();
    json_object_set_new(o, "quant_method", json_string("awq"));
    json_object_set_new(o, "version", json_string("gemm"));
    json_object_set_new(o, "bits", json_integer(4));
    json_object_set_new(o, "group_size", json_integer(q ? q->group : 128));
    json_object_set_new(o, "zero_point", json_true()); /* qzeros are always present; symmetric ones hold 8 */
    if (json_array_size(skip)) json_object_set_new(o, "modules_to_not_convert", skip);
    else {
        json_decref(skip);
        json_object_set_new(o, "modules_to_not_convert", json_null());
    }
    return o;
}

static const ql_st_target awq_target = {"awq", awq_plan, awq_convert, awq_config, false};

static ql_status awq_begin(ql_exporter *x, const char *out, const ql_gguf *source) {
    return ql_st_begin(x, out, source, &awq_target);
}

const ql_exporter_ops ql_export_awq_ops = {
    .accepts_type = awq_accepts,
    .begin = awq_begin,
    .add_metadata = ql_st_add_metadata,
    .add_tensor = ql_st_add_tensor,
    .add_sidecar = ql_st_add_sidecar,
    .commit = ql_st_commit,
    .abort = ql_st_abort,
    .describe = ql_st_describe,
};
