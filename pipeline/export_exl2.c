/* export_exl2.c — `--to exl2`: an ExLlamaV2 model folder (EXL2 tensors, quantization_config
 * quant_method "exl2"). Every quantized block linear must be one of the exl2_* formats (formats/
 * fmt_exl2.c, written by --method exl2 or rtn); per linear with K inputs and N outputs, G groups
 * (layout and sources: docs/formats.md § Exporters):
 *     q_invperm    I32 [K]        position of input k in the processing order (argsort of q_perm)
 *     q_perm       I32 [K]        input at each position (ExLlamaV2's loader recomputes it from q_invperm)
 *     q_scale_max  F16 [G]        each group's maximum scale (the loader multiplies it by 1/256)
 *     q_groups     I16 [2G]       per group: bits, first row of q_weight
 *     q_scale      I32 [G, N/8]   4-bit scale codes qs-1, eight outputs per word, LSB first
 *     q_weight     I32 [qrows, N] each output's codes down a group as one LSB-first stream of words
 * qlab's bytes already hold these parts in this order (the format's storage is ExLlamaV2's), so the
 * export copies them; only q/k projections get their outputs (the columns here) put back in Hugging
 * Face's row order. The checkpoint dequantizes to exactly the values qlab previewed. */
#include "core/model.h"
#include "formats/fmt_exl2.h"
#include "pipeline/export_st.h"

#include <stdlib.h>
#include <string.h>

static bool exl2_accepts(uint32_t type) {
    return ql_st_is_float(type) || ql_exl2_format_mix(ql_format_by_type(type), NULL);
}

static ql_status exl2_plan(const char *out, ql_st_tensor *t, const ql_st_tensor *prev, int64_t n_prev) {
    (void)prev, (void)n_prev;
    ql_exl2_mix mix;
    ql_exl2_offsets o;
    if (!ql_exl2_format_mix(t->format, &mix))
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; exl2 takes the exl2_* formats (qlab formats lists them)",
                       out, t->gguf_name, t->format->name);
    int64_t K = t->ne[0], N = t->ne[1];
    if (!ql_exl2_offsets_of(&mix, K, N, &o) || N % 32)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %lld x %lld; exl2 needs both dimensions to be multiples of 32",
                       out, t->gguf_name, (long long)N, (long long)K);
    t->kind = QL_ST_TARGET;
    t->bits = mix.bits[0];
    ql_st_set_out(&t->out[0], "q_invperm", "I32", 1, K, 1, false);
    ql_st_set_out(&t->out[1], "q_perm", "I32", 1, K, 1, false);
    ql_st_set_out(&t->out[2], "q_scale_max", "F16", 1, o.G, 1, false);
    ql_st_set_out(&t->out[3], "q_groups", "I16", 1, 2 * o.G, 1, false);
    ql_st_set_out(&t->out[4], "q_scale", "I32", 2, o.G, N / 8, false);
    ql_st_set_out(&t->out[5], "q_weight", "I32", 2, o.qrows, N, false);
    t->n_out = 6;
    return QL_OK;
}

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static ql_status exl2_convert(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst) {
    ql_exl2_mix mix;
    ql_exl2_offsets o;
    const int64_t K = t->ne[0], N = t->ne[1];
    if (!ql_exl2_format_mix(t->format, &mix) || !ql_exl2_offsets_of(&mix, K, N, &o))
        return ql_fail(QL_ERR_FORMAT, "%s: not an EXL2 tensor", t->gguf_name);
    /* map[hf output] = qlab's output row: identity, or the q/k rope order put back */
    int32_t *map = malloc((size_t)N * 4), *id = malloc((size_t)N * 4);
    if (!map || !id) {
        free(map), free(id);
        return ql_fail(QL_ERR_NOMEM, "out of memory converting '%s'", t->gguf_name);
    }
    for (int64_t n = 0; n < N; n++) id[n] = (int32_t)n;
    if (t->rope_heads > 0) ql_rope_permute_rows(map, id, t->rope_heads, N, 4, false);
    else memcpy(map, id, (size_t)N * 4);
    free(id);

    uint8_t *inv = dst, *perm = inv + 4 * K, *smax = perm + 4 * K, *groups = smax + 2 * o.G, *scale = groups + 4 * o.G,
            *weight = scale + o.G * (N / 8) * 4;
    memcpy(inv, src + o.invperm, (size_t)(4 * K));
    for (int64_t k = 0; k < K; k++) { /* q_perm = argsort(q_invperm); a stored non-permutation is refused */
        uint32_t p = rd32(src + o.invperm + 4 * k);
        if (p >= (uint32_t)K) {
            free(map);
            return ql_fail(QL_ERR_FORMAT, "%s: q_invperm[%lld] = %u is outside 0..%lld", t->gguf_name, (long long)k, p,
                           (long long)K - 1);
        }
        ql_st_put_u32(perm + 4 * p, (uint32_t)k);
    }
    memcpy(smax, src + o.scale_max, (size_t)(2 * o.G));
    memcpy(groups, src + o.groups, (size_t)(4 * o.G));
    memset(scale, 0, (size_t)(o.G * (N / 8) * 4));
    for (int64_t g = 0; g < o.G; g++)
        for (int64_t n = 0; n < N; n++) {
            int64_t m = map[n];
            uint32_t qs = rd32(src + o.scale + (g * (N / 8) + m / 8) * 4) >> (4 * (m % 8)) & 15;
            uint8_t *w = scale + (g * (N / 8) + n / 8) * 4;
            ql_st_put_u32(w, rd32(w) | qs << (4 * (n % 8)));
        }
    for (int64_t r = 0; r < o.qrows; r++)
        for (int64_t n = 0; n < N; n++) memcpy(weight + (r * N + n) * 4, src + o.weight + (r * N + map[n]) * 4, 4);
    free(map);
    return QL_OK;
}

static json_t *exl2_config(const ql_st_tensor *ts, int64_t n) {
    double bits = 0, params = 0;
    bool head_quant = false;
    for (int64_t i = 0; i < n; i++) {
        if (ts[i].kind != QL_ST_TARGET) continue;
        bits += (double)ts[i].nbytes * 8.0;
        params += (double)ts[i].ne[0] * (double)ts[i].ne[1];
    }
    for (int64_t i = 0; i < n; i++)
        if (!strcmp(ts[i].hf_name, "lm_head.weight") && ts[i].kind == QL_ST_TARGET) head_quant = true;
    json_t *o = json_object();
    json_object_set_new(o, "quant_method", json_string("exl2"));
    json_object_set_new(o, "version", json_string("qlab"));
    /* ExLlamaV2 writes its target; here the achieved bits per weight of the quantized linears */
    json_object_set_new(o, "bits", json_real(params > 0 ? bits / params : 0.0));
    json_object_set_new(o, "head_bits", json_integer(head_quant ? 8 : 16));
    json_object_set_new(o, "meta", json_pack("{s:s}", "quantizer", "qlab"));
    return o;
}

static const ql_st_target exl2_target = {"exl2", exl2_plan, exl2_convert, exl2_config, false};

static ql_status exl2_begin(ql_exporter *x, const char *out, const ql_gguf *source) {
    return ql_st_begin(x, out, source, &exl2_target);
}

const ql_exporter_ops ql_export_exl2_ops = {
    .accepts_type = exl2_accepts,
    .begin = exl2_begin,
    .add_metadata = ql_st_add_metadata,
    .add_tensor = ql_st_add_tensor,
    .add_sidecar = ql_st_add_sidecar,
    .commit = ql_st_commit,
    .abort = ql_st_abort,
    .describe = ql_st_describe,
};
