/* export_bnb.c — `--to bnb`: a folder as transformers saves a `load_in_4bit` bitsandbytes model
 * (Linear4bit / Params4bit with QuantState.as_dict(packed=True)), NF4 or FP4, with or without double
 * quantization. Per linear of N outputs x K inputs (K a multiple of 64; docs/formats.md § Exporters):
 *     weight                                  U8  [N*K/2, 1]  codes of the row-major flattened weight,
 *                                                             element 2j in the HIGH nibble of byte j
 *     weight.absmax                           F32 [nb]        per block of 64 (nb = N*K/64); with double
 *                                             U8  [nb]        quantization: codes of the dynamic map
 *     weight.quant_map                        F32 [16]        the NF4 / FP4 table
 *     weight.nested_absmax                    F32 [ceil(nb/256)]   double quantization only
 *     weight.nested_quant_map                 F32 [256]            bitsandbytes' signed dynamic map
 *     weight.quant_state.bitsandbytes__nf4    U8  [len]       JSON: quant_type, blocksize 64, dtype,
 *                                                             shape [N, K], nested_blocksize 256,
 *                                                             nested_dtype, nested_offset
 * w = quant_map[code] * absmax, absmax = nested_quant_map[q] * nested_absmax[b / 256] + nested_offset.
 * qlab's nf4/fp4 formats are bitsandbytes' own blockwise layout, so codes and absmax move unchanged.
 * Double-quantized tensors keep their 256-block grouping only in their own row order, so nf4_dq/fp4_dq
 * are refused on llama q/k (whose rows are reordered to HF order); plain nf4/fp4 work everywhere.
 *
 * LLM.int8 (transformers' `load_in_8bit`, Linear8bitLt / Int8Params), from qlab's bnb_int8 (formats/fmt_bnb8.c,
 * rows of [f32 SCB][K int8 codes], bitsandbytes' own rounding and decode):
 *     weight   I8  [N, K]   the codes, row-major
 *     SCB      F32 [N]      each row's absmax; w = (code * SCB) * float32(1/127) (int8_vectorwise_dequant)
 * One folder holds one kind: 4-bit and 8-bit linears cannot be mixed (one bitsandbytes config). */
#include "pipeline/export_st.h"
#include "formats/fmt_ext.h"
#include "kernels/ggml_types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TYPE_NF4 (QL_TYPE_EXT_BASE + 0x80)
#define TYPE_NF4_DQ (QL_TYPE_EXT_BASE + 0x81)
#define TYPE_FP4 (QL_TYPE_EXT_BASE + 0x82)
#define TYPE_FP4_DQ (QL_TYPE_EXT_BASE + 0x83)
#define BLOCK 64
#define BLOCK2 256
#define TYPE_BNB_INT8 (QL_TYPE_EXT_BASE + 0x90)
#define QS_LEN 200 /* the quant_state JSON is padded with spaces to this length (JSON allows it), so its size
                      is known before the nested offset is */

static bool bnb_accepts(uint32_t type) {
    return ql_st_is_float(type) || (type >= TYPE_NF4 && type <= TYPE_FP4_DQ) || type == TYPE_BNB_INT8;
}

static ql_status bnb_plan(const char *out, ql_st_tensor *t, const ql_st_tensor *prev, int64_t n_prev) {
    if ((t->type < TYPE_NF4 || t->type > TYPE_FP4_DQ) && t->type != TYPE_BNB_INT8)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; bnb takes nf4, fp4, nf4_dq, fp4_dq (load_in_4bit) or bnb_int8 (load_in_8bit)",
                       out, t->gguf_name, t->format->name);
    int64_t K = t->ne[0], N = t->ne[1], nb = N * K / BLOCK;
    for (int64_t i = 0; i < n_prev; i++)
        if (prev[i].kind == QL_ST_TARGET && prev[i].type != t->type)
            return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s but '%s' is %s; a bitsandbytes config has one quant type and double-quant setting",
                           out, t->gguf_name, t->format->name, prev[i].gguf_name, prev[i].format->name);
    if (t->type == TYPE_BNB_INT8) {
        t->kind = QL_ST_TARGET;
        t->bits = 8, t->group = (int)K, t->sym = true, t->scheme = 2;
        ql_st_set_out(&t->out[0], "weight", "I8", 2, N, K, true);
        ql_st_set_out(&t->out[1], "SCB", "F32", 1, N, 1, true);
        t->n_out = 2;
        return QL_OK;
    }
    if (K % BLOCK)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s': rows of %lld are not whole blocks of 64; bitsandbytes blocks the flattened tensor",
                       out, t->gguf_name, (long long)K);
    bool dq = t->type == TYPE_NF4_DQ || t->type == TYPE_FP4_DQ;
    if (dq && t->rope_heads > 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s, whose 256-block absmax groups do not survive the q/k row reordering to Hugging Face order; use %s",
                       out, t->gguf_name, t->format->name, t->type == TYPE_NF4_DQ ? "nf4" : "fp4");
    t->kind = QL_ST_TARGET;
    t->bits = 4, t->group = BLOCK, t->sym = true, t->scheme = dq;
    bool nf4 = t->type == TYPE_NF4 || t->type == TYPE_NF4_DQ;
    int n = 0;
    ql_st_set_out(&t->out[n++], "weight", "U8", 2, N * K / 2, 1, false);
    ql_st_set_out(&t->out[n++], "weight.absmax", dq ? "U8" : "F32", 1, nb, 1, false);
    ql_st_set_out(&t->out[n++], "weight.quant_map", "F32", 1, 16, 1, false);
    if (dq) {
        ql_st_set_out(&t->out[n++], "weight.nested_absmax", "F32", 1, (nb + BLOCK2 - 1) / BLOCK2, 1, false);
        ql_st_set_out(&t->out[n++], "weight.nested_quant_map", "F32", 1, 256, 1, false);
    }
    ql_st_set_out(&t->out[n++], nf4 ? "weight.quant_state.bitsandbytes__nf4" : "weight.quant_state.bitsandbytes__fp4", "U8", 1,
                  QS_LEN, 1, false);
    t->n_out = n;
    return QL_OK;
}

static void put_f32(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    ql_st_put_u32(p, u);
}

static ql_status bnb_convert(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst) {
    const int64_t K = t->ne[0], N = t->ne[1], nb = N * K / BLOCK, nb2 = (nb + BLOCK2 - 1) / BLOCK2;
    if (t->type == TYPE_BNB_INT8) { /* rows of [f32 SCB][K codes] -> weight [N, K], SCB [N] */
        for (int64_t n = 0; n < N; n++) {
            memcpy(dst + N * K + 4 * n, src + n * (4 + K), 4);
            memcpy(dst + n * K, src + n * (4 + K) + 4, (size_t)K);
        }
        return QL_OK;
    }
    const bool dq = t->scheme == 1, nf4 = t->type == TYPE_NF4 || t->type == TYPE_NF4_DQ;
    uint8_t *w = dst, *absmax = w + t->out[0].nbytes, *qmap = absmax + t->out[1].nbytes, *p = qmap + t->out[2].nbytes;
    for (int i = 0; i < 16; i++) put_f32(qmap + 4 * i, nf4 ? ql_nf4_code[i] : ql_fp4_code[i]);
    float offset = 0.0f;
    if (!dq) { /* rows of blocks [absmax f32][32 code bytes] */
        for (int64_t b = 0; b < nb; b++) {
            memcpy(absmax + 4 * b, src + b * (4 + BLOCK / 2), 4);
            memcpy(w + b * (BLOCK / 2), src + b * (4 + BLOCK / 2) + 4, BLOCK / 2);
        }
    } else { /* [offset][absmax2 x nb2][qabsmax x nb][codes] */
        memcpy(&offset, src, 4);
        memcpy(p, src + 4, (size_t)(4 * nb2));
        memcpy(absmax, src + 4 + 4 * nb2, (size_t)nb);
        memcpy(w, src + 4 + 4 * nb2 + nb, (size_t)(N * K / 2));
        const float *map = ql_bnb_dynamic_map();
        for (int i = 0; i < 256; i++) put_f32(p + 4 * nb2 + 4 * i, map[i]);
        p += t->out[3].nbytes + t->out[4].nbytes;
    }
    char qs[QS_LEN + 1];
    int len = dq ? snprintf(qs, sizeof qs,
                            "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"float16\", \"shape\": [%lld, %lld], "
                            "\"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %.9g}",
                            nf4 ? "nf4" : "fp4", BLOCK, (long long)N, (long long)K, BLOCK2, (double)offset)
                 : snprintf(qs, sizeof qs, "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"float16\", \"shape\": [%lld, %lld]}",
                            nf4 ? "nf4" : "fp4", BLOCK, (long long)N, (long long)K);
    if (len < 0 || len >= QS_LEN) return ql_fail(QL_ERR_FORMAT, "%s: quant_state does not fit %d bytes", t->gguf_name, QS_LEN);
    memset(qs + len, ' ', (size_t)(QS_LEN - len));
    memcpy(p, qs, QS_LEN);
    return QL_OK;
}

static json_t *bnb_config(const ql_st_tensor *ts, int64_t n) {
    const ql_st_tensor *q = NULL;
    json_t *skip = json_array();
    for (int64_t i = 0; i < n; i++) {
        if (ts[i].kind == QL_ST_TARGET && !q) q = &ts[i];
        size_t l = strlen(ts[i].hf_name);
        if (ts[i].kind != QL_ST_TARGET && ts[i].n_dims >= 2 && l > 7 && !strcmp(ts[i].hf_name + l - 7, ".weight") &&
            strncmp(ts[i].hf_name, "model.embed_tokens", 18))
            json_array_append_new(skip, json_string(ts[i].module));
    }
    bool nf4 = !q || q->type == TYPE_NF4 || q->type == TYPE_NF4_DQ;
    json_t *o = json_object();
    json_object_set_new(o, "quant_method", json_string("bitsandbytes"));
    if (q && q->type == TYPE_BNB_INT8) {
        /* transformers' BitsAndBytesConfig for load_in_8bit; the threshold (its default) only steers the
         * runtime's outlier inputs, the stored weights are what qlab previews */
        json_object_set_new(o, "load_in_4bit", json_false());
        json_object_set_new(o, "load_in_8bit", json_true());
        json_object_set_new(o, "_load_in_4bit", json_false());
        json_object_set_new(o, "_load_in_8bit", json_true());
        json_object_set_new(o, "llm_int8_threshold", json_real(6.0));
        json_object_set_new(o, "llm_int8_has_fp16_weight", json_false());
        json_object_set_new(o, "llm_int8_skip_modules", skip);
        return o;
    }
    json_object_set_new(o, "load_in_4bit", json_true());
    json_object_set_new(o, "load_in_8bit", json_false());
    json_object_set_new(o, "_load_in_4bit", json_true());
    json_object_set_new(o, "_load_in_8bit", json_false());
    json_object_set_new(o, "bnb_4bit_quant_type", json_string(nf4 ? "nf4" : "fp4"));
    json_object_set_new(o, "bnb_4bit_use_double_quant", json_boolean(q && q->scheme == 1));
    json_object_set_new(o, "bnb_4bit_compute_dtype", json_string("float16"));
    json_object_set_new(o, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(o, "llm_int8_skip_modules", skip);
    return o;
}

static const ql_st_target bnb_target = {"bnb", bnb_plan, bnb_convert, bnb_config, false};

static ql_status bnb_begin(ql_exporter *x, const char *out, const ql_gguf *source) {
    return ql_st_begin(x, out, source, &bnb_target);
}

const ql_exporter_ops ql_export_bnb_ops = {
    .accepts_type = bnb_accepts,
    .begin = bnb_begin,
    .add_metadata = ql_st_add_metadata,
    .add_tensor = ql_st_add_tensor,
    .add_sidecar = ql_st_add_sidecar,
    .commit = ql_st_commit,
    .abort = ql_st_abort,
    .describe = ql_st_describe,
};
