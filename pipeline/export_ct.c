/* export_ct.c — `--to compressed-tensors`: llm-compressor's checkpoints, which vLLM and transformers
 * load (quant_method "compressed-tensors", quantization_status "compressed"). Per linear with K
 * inputs, N outputs (docs/formats.md § Exporters):
 *   pack-quantized (INT4 / INT8 weights, row-wise groups, per channel, or per tensor):
 *     weight_packed     I32 [N, ceil(K*bits/32)]  codes of row n, 32/bits per word along the input,
 *                                                 LSB first; stored = signed code + 2^(bits-1)
 *     weight_scale      F16 [N, K/g] (group), [N, 1] (channel), [1] (tensor)
 *     weight_zero_point I32 [N*bits/32, K/g]      asymmetric only: signed zero + 2^(bits-1), packed
 *                                                 along the output dimension
 *     weight_shape      I64 [2] = N, K
 *   float-quantized (FP8 E4M3 per tensor / channel / 128x128 block):
 *     weight            F8_E4M3 [N, K]
 *     weight_scale      F32 [1], [N, 1] or [ceil(N/128), ceil(K/128)]
 *   nvfp4-pack-quantized (qlab's nvfp4: E2M1 codes, an E4M3 scale per 16 weights; llm-compressor's NVFP4A16):
 *     weight_packed       U8 [N, K/2]        two E2M1 codes per byte, even column in the low nibble
 *     weight_scale        F8_E4M3 [N, K/16]  the block scales, the same bytes as ggml's
 *     weight_global_scale F32 [1] = 1        w = e2m1(code) * weight_scale / weight_global_scale
 *   static activation scale (the plan's int8_tensor / fp8_tensor input scheme, from qlab.act.scale.*):
 *     input_scale       F32 [1]                   x ≈ input_scale * q, q INT8 or FP8 E4M3
 * w = scale * (q - zero) with q, zero signed: qlab's unsigned code c and zero z are exactly q + 2^(n-1)
 * and zero + 2^(n-1) (symmetric: z = 2^(n-1), i.e. zero 0), so the packed words hold qlab's codes
 * unchanged and the checkpoint dequantizes to qlab's preview. Mixed plans get one config group per
 * format, targeting their modules by anchored regex ("re:^...$"); lm_head and block linears left in
 * float are listed under "ignore". A group's input_activations is the linears' input scheme: per token,
 * `dynamic: true` (int8_token, fp8_token), or per tensor with a stored input_scale (int8_tensor,
 * fp8_tensor); LLM.int8()'s float outlier columns have no compressed-tensors form and are refused.
 * kv_cache_scheme (the plan's [kv], from qlab.kv.*): one QuantizationArgs for K and V of every layer, dynamic:
 * llama.cpp's q8_0/q5_x/q4_x as INT groups of 32 (symmetric for _0), qlab's per-token INT groups as asymmetric
 * groups, FP8 E4M3 per head; a float cache stays null; what it cannot say (per-layer or K≠V schemes, KIVI's
 * per-channel groups, float windows, Hadamard, iq4_nl, E5M2) is refused naming the folder. */
#include "pipeline/export_st.h"
#include "formats/fmt_ext.h"
#include "kernels/ggml_types.h"

#include <stdlib.h>
#include <string.h>

enum { CT_INT_ROW = 1, CT_INT8_TENSOR, CT_FP8_TENSOR, CT_FP8_CHANNEL, CT_FP8_BLOCK, CT_NVFP4 };

#define TYPE_INT8_TENSOR (QL_TYPE_EXT_BASE + 0x6D)
#define TYPE_FP8_E4M3 (QL_TYPE_EXT_BASE + 0x88)
#define TYPE_FP8_E4M3_CHANNEL (QL_TYPE_EXT_BASE + 0x8A)
#define TYPE_FP8_E4M3_BLOCK (QL_TYPE_EXT_BASE + 0x8C)
#define FP8_BLOCK 128
#define TYPE_NVFP4 40 /* GGML_TYPE_NVFP4: formats/fmt_nvfp4.c's ggml layout */
#define NV_SUPER 64    /* ggml's NVFP4 super-block: {u8 d[4]; u8 qs[32]}, four 16-blocks */

static int ct_scheme(uint32_t type, int *bits, int *group, bool *sym) {
    const ql_format *f = ql_format_by_type(type);
    if (!f) return 0;
    if (ql_int_format_params(f, bits, group, sym, NULL)) return *bits == 4 || *bits == 8 ? CT_INT_ROW : 0;
    *bits = 8, *group = 0, *sym = true;
    return type == TYPE_INT8_TENSOR        ? CT_INT8_TENSOR
           : type == TYPE_FP8_E4M3         ? CT_FP8_TENSOR
           : type == TYPE_FP8_E4M3_CHANNEL ? CT_FP8_CHANNEL
           : type == TYPE_FP8_E4M3_BLOCK   ? CT_FP8_BLOCK
           : type == TYPE_NVFP4            ? (*bits = 4, *group = 16, CT_NVFP4)
                                           : 0;
}

static bool ct_accepts(uint32_t type) {
    int bits, group;
    bool sym;
    return ql_st_is_float(type) || ct_scheme(type, &bits, &group, &sym);
}

static ql_status ct_plan(const char *out, ql_st_tensor *t, const ql_st_tensor *prev, int64_t n_prev) {
    (void)prev, (void)n_prev;
    int bits = 0, group = 0;
    bool sym = true;
    int scheme = ct_scheme(t->type, &bits, &group, &sym);
    if (!scheme)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; compressed-tensors takes int{4,8}_g*[_sym], int{4,8}_channel, int8_tensor, fp8_e4m3[_channel|_block], nvfp4",
                       out, t->gguf_name, t->format->name);
    int64_t K = t->ne[0], N = t->ne[1];
    t->kind = QL_ST_TARGET;
    t->scheme = scheme, t->bits = bits, t->sym = sym;
    t->group = scheme == CT_NVFP4 ? group : scheme == CT_INT_ROW && group > 0 ? group : (int)K;
    if (scheme == CT_INT_ROW && K % t->group)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s': rows of %lld do not split into groups of %d; compressed-tensors needs whole groups",
                       out, t->gguf_name, (long long)K, t->group);
    if (scheme == CT_INT_ROW && !sym && N % (32 / bits))
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has %lld outputs; asymmetric zero points pack %d per word along them",
                       out, t->gguf_name, (long long)N, 32 / bits);
    if (scheme == CT_FP8_BLOCK && t->rope_heads > 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' is fp8_e4m3_block, whose 128-row blocks do not survive the q/k row reordering to Hugging Face order; use fp8_e4m3_channel",
                       out, t->gguf_name);
    int n = 0;
    if (scheme == CT_INT_ROW || scheme == CT_INT8_TENSOR) {
        int pf = 32 / bits;
        ql_st_set_out(&t->out[n++], "weight_packed", "I32", 2, N, (K + pf - 1) / pf, true);
        if (scheme == CT_INT8_TENSOR) ql_st_set_out(&t->out[n++], "weight_scale", "F16", 1, 1, 1, false);
        else ql_st_set_out(&t->out[n++], "weight_scale", "F16", 2, N, K / t->group, false);
        if (!sym) ql_st_set_out(&t->out[n++], "weight_zero_point", "I32", 2, N / pf, K / t->group, false);
        ql_st_set_out(&t->out[n++], "weight_shape", "I64", 1, 2, 1, false);
    } else if (scheme == CT_NVFP4) {
        ql_st_set_out(&t->out[n++], "weight_packed", "U8", 2, N, K / 2, true);
        ql_st_set_out(&t->out[n++], "weight_scale", "F8_E4M3", 2, N, K / 16, true);
        ql_st_set_out(&t->out[n++], "weight_global_scale", "F32", 1, 1, 1, false);
    } else {
        ql_st_set_out(&t->out[n++], "weight", "F8_E4M3", 2, N, K, true);
        if (scheme == CT_FP8_TENSOR) ql_st_set_out(&t->out[n++], "weight_scale", "F32", 1, 1, 1, false);
        else if (scheme == CT_FP8_CHANNEL) ql_st_set_out(&t->out[n++], "weight_scale", "F32", 2, N, 1, false);
        else ql_st_set_out(&t->out[n++], "weight_scale", "F32", 2, (N + FP8_BLOCK - 1) / FP8_BLOCK, (K + FP8_BLOCK - 1) / FP8_BLOCK, false);
    }
    if (t->act.mode == QL_ACT_LLM_INT8)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has activation scheme llm_int8, whose float outlier columns "
                                           "compressed-tensors cannot describe; use int8_token or --to gguf",
                       out, t->gguf_name);
    if (ql_act_mode_is_static(t->act.mode)) ql_st_set_out(&t->out[n++], "input_scale", "F32", 1, 1, 1, false);
    t->n_out = n;
    return QL_OK;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static ql_status ct_convert_weight(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst) {
    const int64_t K = t->ne[0], N = t->ne[1];
    uint8_t *p = dst;
    if (t->scheme == CT_INT_ROW || t->scheme == CT_INT8_TENSOR) {
        const int bits = t->bits, pf = 32 / bits;
        const int64_t wpr = (K + pf - 1) / pf, ng = K / t->group;
        uint8_t *scales = p + t->out[0].nbytes;
        uint8_t *zp = scales + t->out[1].nbytes;
        uint32_t *zw = NULL;
        if (!t->sym && !(zw = calloc((size_t)(N / pf * ng), 4))) return ql_fail(QL_ERR_NOMEM, "out of memory packing '%s'", t->gguf_name);
        const uint8_t *codes8 = src + 2; /* int8_tensor: [f16 scale][8-bit codes, row-major] */
        /* 32/bits codes per little-endian word along the row, LSB first: the bytes of qlab's code stream (the
         * row's last word zero-padded), so each row is one copy */
        const int64_t sb = ql_bits_to_bytes(K * bits), coff = t->scheme == CT_INT_ROW ? 2 * ng + (t->sym ? 0 : ql_bits_to_bytes(ng * bits)) : 0;
        for (int64_t n = 0; n < N; n++) {
            ql_st_int_row r = {0};
            if (t->scheme == CT_INT_ROW) r = ql_st_int_row_at(t, src, n);
            memcpy(p + 4 * n * wpr, t->scheme == CT_INT_ROW ? r.row + coff : codes8 + n * K, (size_t)sb);
            memset(p + 4 * n * wpr + sb, 0, (size_t)(4 * wpr - sb));
            if ((K * bits) % 8) p[4 * n * wpr + sb - 1] &= (uint8_t)((1u << ((K * bits) % 8)) - 1); /* bits past the row */
            if (t->scheme == CT_INT8_TENSOR) continue;
            memcpy(scales + 2 * n * ng, r.row, (size_t)(2 * ng)); /* the row's fp16 scales, little-endian */
            for (int64_t g = 0; g < ng && zw; g++) zw[(n / pf) * ng + g] |= (uint32_t)ql_st_int_zero(&r, g) << (bits * (n % pf));
        }
        if (t->scheme == CT_INT8_TENSOR) scales[0] = src[0], scales[1] = src[1];
        if (zw) {
            for (int64_t i = 0; i < N / pf * ng; i++) ql_st_put_u32(zp + 4 * i, zw[i]);
            zp += t->out[2].nbytes;
            free(zw);
        }
        put_u64(zp, (uint64_t)N);
        put_u64(zp + 8, (uint64_t)K);
        return QL_OK;
    }
    if (t->scheme == CT_NVFP4) {
        /* ggml's super-block {d[4], qs[32]}: element j of 16-block s is the low nibble of qs[8s + j] (j < 8) or
         * the high nibble of qs[8s + j - 8]; compressed-tensors packs columns 2i, 2i+1 into one byte, low first.
         * Both read a code as E2M1 (bit 3 = sign) times the block's E4M3 scale; the global scale is 1 (ggml's
         * value is already code x scale, see formats/fmt_nvfp4.c), so the decode is the same product. */
        const int64_t nsb = K / NV_SUPER, rb = nsb * 36;
        uint8_t *scales = p + t->out[0].nbytes, *gs = scales + t->out[1].nbytes;
        memset(p, 0, t->out[0].nbytes);
        for (int64_t n = 0; n < N; n++)
            for (int64_t b = 0; b < nsb; b++) {
                const uint8_t *blk = src + n * rb + b * 36;
                for (int sb = 0; sb < 4; sb++) {
                    if (blk[sb] == 0x7F)
                        return ql_fail(QL_ERR_UNSUPPORTED, "%s: row %lld has the NaN scale code 0x7F, which qlab reads as 0 and compressed-tensors as NaN",
                                       t->gguf_name, (long long)n);
                    scales[n * (K / 16) + b * 4 + sb] = blk[sb];
                    for (int j = 0; j < 16; j++) {
                        uint8_t q = blk[4 + 8 * sb + (j & 7)];
                        unsigned c = j < 8 ? q & 15 : q >> 4;
                        int64_t k = b * NV_SUPER + sb * 16 + j;
                        p[n * (K / 2) + k / 2] |= (uint8_t)(c << (4 * (k & 1)));
                    }
                }
            }
        ql_st_put_u32(gs, 0x3F800000u); /* 1.0f */
        return QL_OK;
    }
    /* FP8: the codes are E4M3 bytes already; only the scales move */
    uint8_t *scales = p + t->out[0].nbytes;
    if (t->scheme == CT_FP8_CHANNEL) /* rows of [f32 scale][K codes] */
        for (int64_t n = 0; n < N; n++) {
            memcpy(scales + 4 * n, src + n * (4 + K), 4);
            memcpy(p + n * K, src + n * (4 + K) + 4, (size_t)K);
        }
    else { /* [scales][codes, row-major] */
        uint64_t sb = t->out[1].nbytes;
        memcpy(scales, src, sb);
        memcpy(p, src + sb, (size_t)(N * K));
    }
    return QL_OK;
}

static ql_status ct_convert(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst) {
    ql_status s = ct_convert_weight(t, src, dst);
    if (s || !ql_act_mode_is_static(t->act.mode)) return s;
    uint64_t off = 0; /* input_scale is the last output */
    for (int i = 0; i < t->n_out - 1; i++) off += t->out[i].nbytes;
    uint32_t bits;
    memcpy(&bits, &t->act.scale, 4);
    ql_st_put_u32(dst + off, bits);
    return QL_OK;
}

static const char *ct_format_of(int scheme) {
    return scheme == CT_INT_ROW || scheme == CT_INT8_TENSOR ? "pack-quantized"
           : scheme == CT_NVFP4                            ? "nvfp4-pack-quantized"
                                                           : "float-quantized";
}

static json_t *ct_weights(const ql_st_tensor *t) {
    bool fp = t->scheme >= CT_FP8_TENSOR;
    const char *strategy = t->scheme == CT_NVFP4                                      ? "tensor_group"
                           : t->scheme == CT_INT8_TENSOR || t->scheme == CT_FP8_TENSOR ? "tensor"
                           : t->scheme == CT_FP8_CHANNEL || t->group == t->ne[0]  ? "channel"
                           : t->scheme == CT_FP8_BLOCK                            ? "block"
                                                                                  : "group";
    json_t *w = json_object();
    json_object_set_new(w, "num_bits", json_integer(t->bits));
    json_object_set_new(w, "type", json_string(fp ? "float" : "int"));
    json_object_set_new(w, "symmetric", json_boolean(t->sym));
    json_object_set_new(w, "strategy", json_string(strategy));
    json_object_set_new(w, "group_size", !strcmp(strategy, "group") || t->scheme == CT_NVFP4 ? json_integer(t->group) : json_null());
    json_object_set_new(w, "block_structure", t->scheme == CT_FP8_BLOCK ? json_pack("[i,i]", FP8_BLOCK, FP8_BLOCK) : json_null());
    json_object_set_new(w, "dynamic", json_false());
    json_object_set_new(w, "actorder", json_null());
    json_object_set_new(w, "observer", json_string("minmax"));
    json_object_set_new(w, "observer_kwargs", json_object());
    return w;
}

/* The group's input_activations: null (float inputs) or compressed-tensors' QuantizationArgs. */
static json_t *ct_inputs(const ql_st_tensor *t) {
    const ql_act_mode m = t->act.mode;
    if (m == QL_ACT_NONE) return json_null();
    const bool fp = m == QL_ACT_FP8_TOKEN || m == QL_ACT_FP8_TENSOR, stat = ql_act_mode_is_static(m);
    json_t *a = json_object();
    json_object_set_new(a, "num_bits", json_integer(8));
    json_object_set_new(a, "type", json_string(fp ? "float" : "int"));
    json_object_set_new(a, "symmetric", json_true());
    json_object_set_new(a, "strategy", json_string(stat ? "tensor" : "token"));
    json_object_set_new(a, "group_size", json_null());
    json_object_set_new(a, "block_structure", json_null());
    json_object_set_new(a, "dynamic", json_boolean(!stat));
    json_object_set_new(a, "actorder", json_null());
    json_object_set_new(a, "observer", stat ? json_string("minmax") : json_null());
    json_object_set_new(a, "observer_kwargs", json_object());
    return a;
}

/* Two linears share a config group when weights and inputs are quantized alike. */
static bool ct_same_group(const ql_st_tensor *x, const ql_st_tensor *y) {
    json_t *a = ct_weights(x), *b = ct_weights(y), *ia = ct_inputs(x), *ib = ct_inputs(y);
    bool same = json_equal(a, b) && json_equal(ia, ib);
    json_decref(a), json_decref(b), json_decref(ia), json_decref(ib);
    return same;
}

static json_t *ct_config(const ql_st_tensor *ts, int64_t n) {
    /* one config group per distinct weight scheme, in order of first use */
    json_t *groups = json_object(), *ignore = json_array();
    const ql_st_tensor *first[64];
    json_t *targets[64];
    int ng = 0;
    bool mixed_formats = false;
    for (int64_t i = 0; i < n; i++) {
        const ql_st_tensor *t = &ts[i];
        size_t l = strlen(t->hf_name);
        bool linear = t->n_dims >= 2 && l > 7 && !strcmp(t->hf_name + l - 7, ".weight") &&
                      strncmp(t->hf_name, "model.embed_tokens", 18);
        if (t->kind != QL_ST_TARGET) {
            if (linear) json_array_append_new(ignore, json_string(!strcmp(t->module, "lm_head") ? "lm_head" : t->module));
            continue;
        }
        int g = 0;
        while (g < ng && !ct_same_group(first[g], t)) g++;
        if (g == ng && ng < 64) {
            first[ng] = t, targets[ng] = json_array(), ng++;
            mixed_formats |= strcmp(ct_format_of(first[0]->scheme), ct_format_of(t->scheme)) != 0;
        }
        if (g < ng) {
            size_t ml = strlen(t->module);
            char *re = malloc(2 * ml + 6), *p = re;
            p += sprintf(p, "re:^");
            for (size_t k = 0; k < ml; k++) {
                if (t->module[k] == '.') *p++ = '\\';
                *p++ = t->module[k];
            }
            strcpy(p, "$");
            json_array_append_new(targets[g], json_string(re));
            free(re);
        }
    }
    bool has_lm_head = false;
    for (size_t i = 0; i < json_array_size(ignore); i++) has_lm_head |= !strcmp(json_string_value(json_array_get(ignore, i)), "lm_head");
    if (!has_lm_head) json_array_append_new(ignore, json_string("lm_head")); /* tied or float: never a quantized Linear here */
    for (int g = 0; g < ng; g++) {
        char name[32];
        snprintf(name, sizeof name, "group_%d", g);
        if (ng == 1) {
            json_decref(targets[g]);
            targets[g] = json_pack("[s]", "Linear");
        }
        json_object_set_new(groups, name,
                            json_pack("{s:o,s:o,s:o,s:n,s:s}", "targets", targets[g], "weights", ct_weights(first[g]),
                                      "input_activations", ct_inputs(first[g]), "output_activations", "format",
                                      ct_format_of(first[g]->scheme)));
    }
    json_t *o = json_object();
    json_object_set_new(o, "quant_method", json_string("compressed-tensors"));
    json_object_set_new(o, "format", json_string(mixed_formats ? "mixed-precision" : ng ? ct_format_of(first[0]->scheme) : "dense"));
    json_object_set_new(o, "quantization_status", json_string("compressed"));
    json_object_set_new(o, "config_groups", groups);
    json_object_set_new(o, "ignore", ignore);
    json_object_set_new(o, "kv_cache_scheme", json_null());
    json_object_set_new(o, "global_compression_ratio", json_null());
    return o;
}

/* One side of the cache as QuantizationArgs, NULL (why filled) when it has no compressed-tensors form. */
static json_t *ct_kv_side(const ql_kv_side *sd, char *why, size_t n) {
    char nm[64];
    ql_kv_side_name(sd, nm, sizeof nm);
    if (sd->residual || sd->hadamard) {
        snprintf(why, n, "%s keeps a float window or a Hadamard rotation, which compressed-tensors cannot describe", nm);
        return NULL;
    }
    int bits = 8, group = 0;
    bool sym = true, fp = false;
    const char *strategy = "group";
    if (sd->kind == QL_KV_GGML) {
        /* llama.cpp's block types: blocks of 32 channels of a token, an fp16 scale (+ minimum for _1) */
        static const struct { const char *name; int bits; bool sym; } legacy[] = {
            {"q8_0", 8, true}, {"q5_0", 5, true}, {"q5_1", 5, false}, {"q4_0", 4, true}, {"q4_1", 4, false}};
        size_t i = 0;
        while (i < QL_ARRAY_LEN(legacy) && strcmp(legacy[i].name, nm)) i++;
        if (i == QL_ARRAY_LEN(legacy)) {
            snprintf(why, n, "%s has no compressed-tensors form (a float cache type or a non-uniform grid)", nm);
            return NULL;
        }
        bits = legacy[i].bits, sym = legacy[i].sym, group = 32;
    } else if (sd->kind == QL_KV_INT) {
        if (sd->axis == QL_KV_PER_CHANNEL) {
            snprintf(why, n, "%s groups tokens per channel (KIVI), which compressed-tensors cannot describe", nm);
            return NULL;
        }
        bits = sd->bits, sym = false, group = sd->group; /* scale + minimum per group of channels of a token */
    } else if (sd->kind == QL_KV_FP8) {
        if (sd->e5m2) {
            snprintf(why, n, "%s: compressed-tensors' float type is E4M3", nm);
            return NULL;
        }
        fp = true, strategy = "attn_head"; /* one scale per head (and token: computed as the token is stored) */
    } else {
        snprintf(why, n, "%s is a float cache", nm);
        return NULL;
    }
    json_t *a = json_object();
    json_object_set_new(a, "num_bits", json_integer(bits));
    json_object_set_new(a, "type", json_string(fp ? "float" : "int"));
    json_object_set_new(a, "symmetric", json_boolean(sym));
    json_object_set_new(a, "strategy", json_string(strategy));
    json_object_set_new(a, "group_size", group ? json_integer(group) : json_null());
    json_object_set_new(a, "block_structure", json_null());
    json_object_set_new(a, "dynamic", json_true()); /* scales are computed as each token is stored */
    json_object_set_new(a, "actorder", json_null());
    json_object_set_new(a, "observer", json_null());
    json_object_set_new(a, "observer_kwargs", json_object());
    return a;
}

/* kv_cache_scheme is one QuantizationArgs for K and V of every layer: the image's settings must be one scheme,
 * the same on both sides, with a form there. */
static json_t *ct_kv_scheme(const ql_kv_settings *kv, char *why, size_t n) {
    for (int i = 0; i < kv->n_layer_own; i++)
        if (!ql_kv_scheme_equal(&kv->layer_scheme[i], &kv->scheme)) {
            snprintf(why, n, "kv_cache_scheme is one scheme for every layer, the plan gives layers their own");
            return NULL;
        }
    if (!ql_kv_scheme_equal(&(ql_kv_scheme){kv->scheme.k, kv->scheme.k}, &kv->scheme)) {
        snprintf(why, n, "kv_cache_scheme is one scheme for K and V, the plan's differ");
        return NULL;
    }
    return ct_kv_side(&kv->scheme.k, why, n);
}

static const ql_st_target ct_target = {"compressed-tensors", ct_plan, ct_convert, ct_config, true};

static ql_status ct_begin(ql_exporter *x, const char *out, const ql_gguf *source) {
    ql_status s = ql_st_begin(x, out, source, &ct_target);
    if (!s) ql_st_set_kv_scheme(x, ct_kv_scheme);
    return s;
}

const ql_exporter_ops ql_export_ct_ops = {
    .accepts_type = ct_accepts,
    .begin = ct_begin,
    .add_metadata = ql_st_add_metadata,
    .add_tensor = ql_st_add_tensor,
    .add_sidecar = ql_st_add_sidecar,
    .commit = ql_st_commit,
    .abort = ql_st_abort,
    .describe = ql_st_describe,
};
