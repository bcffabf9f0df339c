/* hf_quant.c — reading quantized Hugging Face checkpoints back into qlab tensors (see core/hf_quant.h).
 * Owns the `quantization_config` readers (gptq, awq, compressed-tensors, bitsandbytes 4-bit and 8-bit)
 * and, per quantized module, the unpacking of its parts into one of two intermediate grids:
 *   an integer grid: codes q[N][K], zero points z[N][ng], scales s[N][ng], optional g_idx (GPTQ, AWQ,
 *     compressed-tensors int), w = (q - z[g]) * s[g], g = g_idx[k] or k / group;
 *   an FP8 grid: E4M3 codes and f32 scales per tensor / row / block.
 * A grid becomes the registry format that stores exactly those codes, zero points and scales (found
 * by name in formats/, e.g. int4_g128, int8_channel, fp8_e4m3_block) when one does, else F32 computed
 * as that ecosystem dequantizes (one note per reason). bitsandbytes 4-bit maps onto nf4/fp4(_dq).
 * Every dtype, shape and index read from the folder is checked before use; the layouts and their
 * sources are in docs/formats.md § Exporters (the writers are pipeline/export_*.c). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "core/hf_quant.h"
#include "core/actquant.h"
#include "core/model.h"
#include "formats/fmt_exl2.h"
#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/int_quants.h"

#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { HQ_GPTQ, HQ_AWQ, HQ_CT, HQ_BNB4, HQ_BNB8, HQ_EXL2 } hq_method;
enum { CT_PACK, CT_INTQ, CT_FLOAT, CT_NVFP4 };                /* compressed-tensors group formats */
enum { ST_TENSOR, ST_CHANNEL, ST_GROUP, ST_BLOCK, ST_TGROUP }; /* strategies (tensor_group: NVFP4's groups + a global scale) */

typedef struct {
    char *name;
    json_t *targets; /* owned reference */
    int format, bits, strategy, group, bh, bw;
    bool sym, is_float;
    ql_act_mode act; /* the inputs' scheme; QL_ACT_NONE: float inputs */
} ct_group;

struct ql_hfq {
    hq_method m;
    char *cfg_path;
    int bits, group; /* gptq / awq; group -1: per channel */
    bool v2;         /* gptq checkpoint_format gptq_v2: zero points without the -1 offset */
    ct_group *groups;
    int n_groups;
    char *ct_format;
};

const char *ql_hfq_method(const ql_hfq *q) {
    static const char *names[] = {"gptq", "awq", "compressed-tensors", "bitsandbytes 4-bit", "bitsandbytes LLM.int8", "exl2"};
    return names[q->m];
}

void ql_hfq_free(ql_hfq *q) {
    if (!q) return;
    for (int i = 0; i < q->n_groups; i++) free(q->groups[i].name), json_decref(q->groups[i].targets);
    free(q->groups), free(q->cfg_path), free(q->ct_format);
    free(q);
}

/* ---------------------------------------------------------------- config */

static int get_int(const json_t *o, const char *key, int def, bool *bad) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > (1 << 20)) {
        *bad = true;
        return def;
    }
    return (int)json_integer_value(v);
}

static bool get_bool(const json_t *o, const char *key, bool def, bool *bad) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) *bad = true;
    return json_is_true(v);
}

static const char *get_str(const json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }

static ql_status ct_parse_args(const char *path, const char *gname, const json_t *w, ct_group *g) {
    bool bad = false;
    if (!json_is_object(w)) return ql_fail(QL_ERR_FORMAT, "%s: config group '%s' has no 'weights' object", path, gname);
    g->bits = get_int(w, "num_bits", 8, &bad);
    g->sym = get_bool(w, "symmetric", true, &bad);
    const char *type = get_str(w, "type"), *strat = get_str(w, "strategy");
    g->is_float = type && !strcmp(type, "float");
    if (!type || (!g->is_float && strcmp(type, "int")))
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: config group '%s': weights type '%.16s' (int or float)", path, gname, type ? type : "?");
    g->strategy = !strat ? -1 : !strcmp(strat, "tensor") ? ST_TENSOR : !strcmp(strat, "channel") ? ST_CHANNEL
                              : !strcmp(strat, "group") ? ST_GROUP : !strcmp(strat, "block") ? ST_BLOCK
                              : !strcmp(strat, "tensor_group") ? ST_TGROUP : -1;
    if (g->strategy < 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: config group '%s': weights strategy '%.16s' (tensor, channel, group, block, tensor_group)", path,
                       gname, strat ? strat : "?");
    g->group = get_int(w, "group_size", 0, &bad);
    if ((g->strategy == ST_GROUP || g->strategy == ST_TGROUP) && g->group <= 0) bad = true;
    if (g->strategy == ST_BLOCK) {
        const json_t *bs = json_object_get(w, "block_structure");
        if (!json_is_array(bs) || json_array_size(bs) != 2 || !json_is_integer(json_array_get(bs, 0)) ||
            !json_is_integer(json_array_get(bs, 1)))
            bad = true;
        else {
            json_int_t a = json_integer_value(json_array_get(bs, 0)), b = json_integer_value(json_array_get(bs, 1));
            if (a < 1 || b < 1 || a > (1 << 20) || b > (1 << 20)) bad = true;
            else g->bh = (int)a, g->bw = (int)b;
        }
    }
    if (bad) return ql_fail(QL_ERR_FORMAT, "%s: config group '%s': malformed weights (num_bits, symmetric, group_size, block_structure)", path, gname);
    if (g->is_float ? g->bits != 8 && !(g->bits == 4 && g->strategy == ST_TGROUP) : (g->bits < 2 || g->bits > 8))
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: config group '%s': %d-bit %s weights are not read", path, gname, g->bits,
                       g->is_float ? "float" : "int");
    return QL_OK;
}

/* input_activations -> a qlab activation scheme (symmetric 8-bit per token or per tensor), else none
 * with a note: the preview then runs those inputs in float. */
static ql_act_mode ct_parse_act(const char *path, const char *gname, const json_t *a) {
    if (!json_is_object(a)) return QL_ACT_NONE;
    bool bad = false;
    int bits = get_int(a, "num_bits", 8, &bad);
    bool sym = get_bool(a, "symmetric", true, &bad), dyn = get_bool(a, "dynamic", false, &bad);
    const char *type = get_str(a, "type"), *strat = get_str(a, "strategy");
    bool fp = type && !strcmp(type, "float");
    if (!bad && bits == 8 && sym && type && strat) {
        if (!strcmp(strat, "token") && dyn) return fp ? QL_ACT_FP8_TOKEN : QL_ACT_INT8_TOKEN;
        if (!strcmp(strat, "tensor") && !dyn) return fp ? QL_ACT_FP8_TENSOR : QL_ACT_INT8_TENSOR;
    }
    ql_log(1, "%s: config group '%s': input_activations (%.8s %d-bit %s%s) have no qlab scheme; its inputs are previewed in float",
           path, gname, type ? type : "?", bits, strat ? strat : "?", sym ? "" : ", asymmetric");
    return QL_ACT_NONE;
}

ql_status ql_hfq_parse(const char *cfg_path, const json_t *root, ql_hfq **out) {
    *out = NULL;
    const json_t *qc = json_object_get(root, "quantization_config");
    if (!qc || json_is_null(qc)) return QL_OK;
    if (!json_is_object(qc)) return ql_fail(QL_ERR_FORMAT, "%s: 'quantization_config' must be an object", cfg_path);
    const char *method = get_str(qc, "quant_method");
    if (!method) return ql_fail(QL_ERR_FORMAT, "%s: quantization_config has no 'quant_method'", cfg_path);
    ql_hfq *q = ql_calloc(1, sizeof *q);
    q->cfg_path = ql_strdup(cfg_path);
    ql_status s = QL_OK;
    bool bad = false;
    if (!strcmp(method, "gptq")) {
        q->m = HQ_GPTQ;
        q->bits = get_int(qc, "bits", 4, &bad);
        q->group = get_int(qc, "group_size", 128, &bad);
        const char *cf = get_str(qc, "checkpoint_format");
        if (cf && strcmp(cf, "gptq") && strcmp(cf, "gptq_v2"))
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: gptq checkpoint_format '%.32s' is not read (gptq, gptq_v2)", cfg_path, cf);
        q->v2 = cf && !strcmp(cf, "gptq_v2");
        const json_t *dyn = json_object_get(qc, "dynamic");
        const char *key;
        const json_t *val;
        if (json_is_object(dyn))
            json_object_foreach((json_t *)dyn, key, val) if (strncmp(key, "-:", 2) && !s) s = ql_fail(
                QL_ERR_UNSUPPORTED, "%s: gptq 'dynamic' rule '%.64s' changes a module's bits or group, which qlab does not read (only '-:' exclusions)",
                cfg_path, key);
        if (!s && !bad && q->bits != 2 && q->bits != 3 && q->bits != 4 && q->bits != 8)
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: gptq bits %d (2, 3, 4 or 8)", cfg_path, q->bits);
        if (!s && !bad && (q->group == 0 || q->group < -1))
            s = ql_fail(QL_ERR_FORMAT, "%s: gptq group_size %d (a positive size or -1)", cfg_path, q->group);
    } else if (!strcmp(method, "awq")) {
        q->m = HQ_AWQ;
        q->bits = get_int(qc, "bits", get_int(qc, "w_bit", 4, &bad), &bad);
        q->group = get_int(qc, "group_size", get_int(qc, "q_group_size", 128, &bad), &bad);
        const char *v = get_str(qc, "version");
        if (v && strcasecmp(v, "gemm"))
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: awq version '%.16s' is not read (gemm)", cfg_path, v);
        else if (!bad && q->bits != 4)
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: awq bits %d (4)", cfg_path, q->bits);
        else if (!bad && q->group <= 0)
            s = ql_fail(QL_ERR_FORMAT, "%s: awq group_size %d must be positive", cfg_path, q->group);
    } else if (!strcmp(method, "bitsandbytes")) {
        bool b4 = get_bool(qc, "load_in_4bit", false, &bad) || get_bool(qc, "_load_in_4bit", false, &bad);
        bool b8 = get_bool(qc, "load_in_8bit", false, &bad) || get_bool(qc, "_load_in_8bit", false, &bad);
        if (b4 == b8 && !bad)
            s = ql_fail(QL_ERR_FORMAT, "%s: bitsandbytes config must set exactly one of load_in_4bit and load_in_8bit", cfg_path);
        q->m = b4 ? HQ_BNB4 : HQ_BNB8;
    } else if (!strcmp(method, "compressed-tensors")) {
        q->m = HQ_CT;
        const char *fmt = get_str(qc, "format");
        q->ct_format = ql_strdup(fmt ? fmt : "");
        const char *st = get_str(qc, "quantization_status");
        if (st && strcmp(st, "compressed") && strcmp(st, "frozen"))
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: compressed-tensors quantization_status '%.16s' (compressed)", cfg_path, st);
        const json_t *groups = json_object_get(qc, "config_groups");
        if (!s && !json_is_object(groups)) s = ql_fail(QL_ERR_FORMAT, "%s: compressed-tensors needs 'config_groups'", cfg_path);
        const char *gname;
        const json_t *gv;
        if (!s)
            json_object_foreach((json_t *)groups, gname, gv) {
                if (s) break;
                if (!json_is_object(gv)) {
                    s = ql_fail(QL_ERR_FORMAT, "%s: config group '%s' is not an object", cfg_path, gname);
                    break;
                }
                q->groups = ql_realloc(q->groups, (size_t)(q->n_groups + 1) * sizeof *q->groups);
                ct_group *g = &q->groups[q->n_groups++];
                memset(g, 0, sizeof *g);
                g->name = ql_strdup(gname);
                const json_t *t = json_object_get(gv, "targets");
                if (!json_is_array(t)) {
                    s = ql_fail(QL_ERR_FORMAT, "%s: config group '%s' has no 'targets' list", cfg_path, gname);
                    break;
                }
                g->targets = json_incref((json_t *)t);
                const char *gf = get_str(gv, "format");
                if (!gf || !gf[0]) gf = fmt;
                if (!gf || !strcmp(gf, "mixed-precision")) gf = "";
                g->format = !strcmp(gf, "pack-quantized") ? CT_PACK : !strcmp(gf, "int-quantized") ? CT_INTQ
                          : !strcmp(gf, "float-quantized") || !strcmp(gf, "naive-quantized") ? CT_FLOAT
                          : !strcmp(gf, "nvfp4-pack-quantized") ? CT_NVFP4 : -1;
                if (g->format < 0) {
                    s = ql_fail(QL_ERR_UNSUPPORTED, "%s: config group '%s': format '%.32s' is not read (pack-quantized, int-quantized, float-quantized, nvfp4-pack-quantized)",
                                cfg_path, gname, gf);
                    break;
                }
                if ((s = ct_parse_args(cfg_path, gname, json_object_get(gv, "weights"), g))) break;
                if (g->format == CT_NVFP4 ? !(g->is_float && g->bits == 4 && g->strategy == ST_TGROUP && g->group == 16)
                                          : g->is_float != (g->format == CT_FLOAT) || g->strategy == ST_TGROUP) {
                    s = ql_fail(QL_ERR_UNSUPPORTED, "%s: config group '%s': %d-bit %s weights (%s) in format %s", cfg_path, gname, g->bits,
                                g->is_float ? "float" : "int", get_str(json_object_get(gv, "weights"), "strategy"), gf);
                    break;
                }
                g->act = ct_parse_act(cfg_path, gname, json_object_get(gv, "input_activations"));
            }
    } else if (!strcmp(method, "exl2")) {
        q->m = HQ_EXL2; /* every fact (bits, groups, permutation) is in each module's tensors */
    } else {
        s = ql_fail(QL_ERR_UNSUPPORTED, "%s: quant_method '%.32s' is not read (gptq, awq, compressed-tensors, bitsandbytes, exl2)", cfg_path,
                    method);
    }
    if (!s && bad) s = ql_fail(QL_ERR_FORMAT, "%s: quantization_config (%s) has a malformed field", cfg_path, method);
    if (s) {
        ql_hfq_free(q);
        return s;
    }
    *out = q;
    return QL_OK;
}

/* ---------------------------------------------------------------- reading values */

static uint32_t rd_u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static float rd_f32(const uint8_t *p) {
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static int64_t rd_i64(const uint8_t *p) {
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--) u = u << 8 | p[i];
    return (int64_t)u;
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr_f32(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
}
/* element i of a float tensor (F32 / F16 / BF16) */
static float rd_float(const ql_hfq_tensor *t, int64_t i) {
    const uint8_t *p = t->data;
    if (t->dtype == QL_STD_F32) return rd_f32(p + 4 * i);
    uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
    return t->dtype == QL_STD_F16 ? ql_fp16_to_fp32(h) : ql_bf16_to_fp32(h);
}
static bool is_float_dtype(int d) { return d == QL_STD_F32 || d == QL_STD_F16 || d == QL_STD_BF16; }

/* ---------------------------------------------------------------- the conversion context */

typedef struct {
    const ql_hfq *q;
    const char *dir;
    const ql_hfq_arch *arch;
    ql_hfq_tensor *ts;
    int64_t n;
    bool *used;
    ql_gguf *g;
    /* notes: one line per reason, with a count and the first tensor */
    struct { char reason[160]; char first[160]; int count; } notes[16];
    int n_notes;
} hq_ctx;

static void note(hq_ctx *c, const char *module, const char *reason) {
    for (int i = 0; i < c->n_notes; i++)
        if (!strcmp(c->notes[i].reason, reason)) {
            c->notes[i].count++;
            return;
        }
    if (c->n_notes == (int)QL_ARRAY_LEN(c->notes)) return;
    snprintf(c->notes[c->n_notes].reason, sizeof c->notes[0].reason, "%s", reason);
    snprintf(c->notes[c->n_notes].first, sizeof c->notes[0].first, "%s", module);
    c->notes[c->n_notes++].count = 1;
}

static ql_hfq_tensor *part(hq_ctx *c, const char *module, const char *suffix) {
    size_t ml = strlen(module), sl = strlen(suffix);
    for (int64_t i = 0; i < c->n; i++) {
        const char *nm = c->ts[i].name;
        if (!c->used[i] && strlen(nm) == ml + 1 + sl && !strncmp(nm, module, ml) && nm[ml] == '.' && !strcmp(nm + ml + 1, suffix)) {
            c->used[i] = true;
            return &c->ts[i];
        }
    }
    return NULL;
}

/* Checks a part's presence, dtype (mask of ql_st_dtype bits) and safetensors shape [d0, d1]; d1 < 0:
 * 1-D [d0]; d0 < 0: always fails (the caller found the rank wrong). */
static ql_status check_part(hq_ctx *c, const char *module, const char *suffix, const ql_hfq_tensor *t, unsigned dmask,
                            int64_t d0, int64_t d1) {
    if (!t) return ql_fail(QL_ERR_FORMAT, "%s: module '%s' lacks its '%s' tensor", c->dir, module, suffix);
    if (t->dtype < 0 || !(dmask & (1u << t->dtype)))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has dtype %s, which %s does not use there", c->dir, t->name,
                       ql_st_dtype_name(t->dtype), ql_hfq_method(c->q));
    bool ok = d1 < 0 ? t->n_dims == 1 && t->ne[0] == d0
                     : t->n_dims == 2 && t->ne[1] == d0 && t->ne[0] == d1;
    if (!ok) {
        char want[64], got[96];
        if (d0 < 0) snprintf(want, sizeof want, "two dimensions");
        else if (d1 < 0) snprintf(want, sizeof want, "[%lld]", (long long)d0);
        else snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        int len = snprintf(got, sizeof got, "[");
        for (int d = t->n_dims - 1; d >= 0 && len < 80; d--)
            len += snprintf(got + len, sizeof got - (size_t)len, "%lld%s", (long long)t->ne[d], d ? ", " : "");
        snprintf(got + len, sizeof got - (size_t)len, "]");
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", c->dir, t->name, got, want);
    }
    return QL_OK;
}
#define FLOATS ((1u << QL_STD_F32) | (1u << QL_STD_F16) | (1u << QL_STD_BF16))
#define INT32S ((1u << QL_STD_I32) | (1u << QL_STD_U32))

/* number of elements */
static int64_t numel(const ql_hfq_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->ne[d];
    return n;
}

/* Adds the converted module: `data` (malloc'ed, adopted by g) of registry type `type`, K x N. */
static void emit(hq_ctx *c, const char *module, const ql_hfq_tensor *like, uint32_t type, int64_t K, int64_t N, void *data,
                 uint64_t nbytes, bool gguf_order) {
    const char *src = like ? like->src : c->dir; /* `like` points into c->ts, which moves below */
    ql_gguf_adopt(c->g, data);
    c->ts = ql_realloc(c->ts, (size_t)(c->n + 1) * sizeof *c->ts);
    c->used = ql_realloc(c->used, (size_t)(c->n + 1) * sizeof *c->used);
    ql_hfq_tensor *t = &c->ts[c->n];
    c->used[c->n++] = false;
    memset(t, 0, sizeof *t);
    size_t ml = strlen(module);
    t->name = ql_malloc(ml + 8);
    memcpy(t->name, module, ml);
    memcpy(t->name + ml, ".weight", 8);
    t->dtype = -1;
    t->type = type;
    t->n_dims = 2;
    t->ne[0] = K, t->ne[1] = N, t->ne[2] = t->ne[3] = 1;
    t->data = data;
    t->nbytes = nbytes;
    t->src = src;
    t->gguf_order = gguf_order;
}

static int rope_heads(hq_ctx *c, const char *module) {
    if (!c->arch || !c->arch->rope_heads) return 0;
    size_t ml = strlen(module);
    char *w = ql_malloc(ml + 8);
    memcpy(w, module, ml);
    memcpy(w + ml, ".weight", 8);
    int h = c->arch->rope_heads(c->arch->user, w);
    free(w);
    return h;
}

/* ---------------------------------------------------------------- the integer grid */

typedef struct {
    int64_t N, K, ng, group;
    int bits;
    bool channel;    /* one group per row, written as per channel (gptq group_size -1, ct strategy channel) */
    bool per_tensor; /* one scale for the whole tensor (ct strategy tensor) */
    uint8_t *q;      /* [N][K] */
    int32_t *z;      /* [N][ng] */
    float *s;        /* [N][ng] */
    int32_t *gidx;   /* [K] or NULL */
} igrid;

static ql_status igrid_alloc(hq_ctx *c, const char *module, igrid *g) {
    if (g->N <= 0 || g->K <= 0 || g->ng <= 0 || g->N > INT64_MAX / g->K || g->N * g->K > ((int64_t)1 << 40) ||
        g->N > INT64_MAX / g->ng)
        return ql_fail(QL_ERR_FORMAT, "%s: module '%s' has an impossible shape (%lld x %lld, %lld groups)", c->dir, module,
                       (long long)g->N, (long long)g->K, (long long)g->ng);
    g->q = malloc((size_t)(g->N * g->K));
    g->z = malloc((size_t)(g->N * g->ng) * sizeof *g->z);
    g->s = malloc((size_t)(g->N * g->ng) * sizeof *g->s);
    if (!g->q || !g->z || !g->s) return ql_fail(QL_ERR_NOMEM, "%s: no memory to unpack '%s'", c->dir, module);
    return QL_OK;
}

static void igrid_free(igrid *g) { free(g->q), free(g->z), free(g->s), free(g->gidx); }

static ql_status read_gidx(hq_ctx *c, const char *module, const ql_hfq_tensor *t, igrid *g) {
    if (!t) return QL_OK;
    ql_status s = check_part(c, module, t->name + strlen(module) + 1, t, INT32S, g->K, -1);
    if (s) return s;
    g->gidx = ql_malloc((size_t)g->K * sizeof *g->gidx);
    for (int64_t k = 0; k < g->K; k++) {
        int32_t v = (int32_t)rd_u32(t->data + 4 * k);
        if (v < 0 || v >= g->ng)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': g_idx[%lld] = %d is not a group (0..%lld)", c->dir, t->name, (long long)k, v,
                           (long long)g->ng - 1);
        g->gidx[k] = v;
    }
    return QL_OK;
}

static int64_t group_of(const igrid *g, int64_t k) { return g->gidx ? g->gidx[k] : k / g->group; }

static ql_status emit_igrid(hq_ctx *c, const char *module, const ql_hfq_tensor *like, const igrid *g) {
    const int maxq = (1 << g->bits) - 1, mid = 1 << (g->bits - 1);
    const int64_t N = g->N, K = g->K;
    bool in_order = true, zeros_ok = true, sym = true, f16_ok = true, same_scale = true;
    for (int64_t k = 0; k < K && g->gidx; k++) in_order &= g->gidx[k] == k / g->group;
    for (int64_t i = 0; i < N * g->ng; i++) {
        zeros_ok &= g->z[i] >= 0 && g->z[i] <= maxq;
        sym &= g->z[i] == mid;
        uint16_t h = ql_fp32_to_fp16(g->s[i]);
        float back = ql_fp16_to_fp32(h);
        f16_ok &= memcmp(&back, &g->s[i], 4) == 0;
        same_scale &= memcmp(&g->s[i], &g->s[0], 4) == 0;
    }
    /* the registry entry that stores these fields as they are */
    char name[48] = "";
    int fgroup = 0;
    const char *why = NULL;
    if (!in_order) why = "act-order g_idx groups columns out of order";
    else if (!zeros_ok) why = "a zero point outside the code range";
    else if (!f16_ok) why = "scales not exact in fp16";
    else if (g->per_tensor) {
        if (g->bits == 8 && sym && same_scale) snprintf(name, sizeof name, "int8_tensor");
        else why = "a per-tensor scale other than symmetric int8";
    } else {
        if (g->ng == 1 && g->channel && sym) snprintf(name, sizeof name, "int%d_channel", g->bits);
        if (!name[0] || !ql_format_by_name(name)) {
            int64_t gs = g->ng == 1 ? K : g->group;
            if (gs == 32 || gs == 64 || gs == 128 || gs == 256) snprintf(name, sizeof name, "int%d_g%lld%s", g->bits, (long long)gs, sym ? "_sym" : "");
            fgroup = (int)gs;
        }
    }
    const ql_format *f = name[0] ? ql_format_by_name(name) : NULL;
    int fb = 0, fg = 0;
    bool fs = false;
    if (f && f->whole_tensor != g->per_tensor) f = NULL;
    if (f && !g->per_tensor && (!ql_int_format_params(f, &fb, &fg, &fs, NULL) || fb != g->bits || fs != sym || (fg && fg != fgroup)))
        f = NULL;
    if (!f && !why) why = "no registry format with these bits and group size";
    if (f) {
        int64_t bytes = ql_format_tensor_bytes(f, K, N);
        int heads = g->per_tensor ? rope_heads(c, module) : 0;
        uint8_t *buf = bytes > 0 ? calloc(1, (size_t)bytes) : NULL;
        if (!buf) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
        if (g->per_tensor) { /* int8_tensor: [f16 scale][8-bit codes, row-major], q/k rows put in GGUF order here */
            if (bytes != 2 + N * K) {
                free(buf);
                return ql_fail(QL_ERR_FORMAT, "%s: '%s': %s sizes disagree", c->dir, module, f->name);
            }
            ql_put_f16le(buf, ql_fp32_to_fp16(g->s[0]));
            if (heads > 0) ql_rope_permute_rows(buf + 2, g->q, heads, N, (size_t)K, true);
            else memcpy(buf + 2, g->q, (size_t)(N * K));
        } else {
            int64_t rb = ql_int_row_bytes(K, g->bits, fg, sym);
            if (rb < 0 || rb * N != bytes) {
                free(buf);
                return ql_fail(QL_ERR_FORMAT, "%s: '%s': %s sizes disagree", c->dir, module, f->name);
            }
            for (int64_t n = 0; n < N; n++) {
                uint8_t *row = buf + n * rb, *zeros = row + 2 * g->ng, *codes = zeros + (sym ? 0 : ql_bits_to_bytes(g->ng * g->bits));
                for (int64_t j = 0; j < g->ng; j++) {
                    ql_put_f16le(row + 2 * j, ql_fp32_to_fp16(g->s[n * g->ng + j]));
                    if (!sym) ql_bits_or(zeros, j * g->bits, g->bits, (unsigned)g->z[n * g->ng + j]);
                }
                for (int64_t k = 0; k < K; k++) ql_bits_or(codes, k * g->bits, g->bits, g->q[n * K + k]);
            }
        }
        emit(c, module, like, f->type, K, N, buf, (uint64_t)bytes, heads > 0);
        return QL_OK;
    }
    /* F32, as the ecosystem dequantizes: (q - zero) * scale in float */
    float *w = malloc((size_t)(N * K) * sizeof *w);
    if (!w) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            int64_t j = g->per_tensor ? 0 : n * g->ng + group_of(g, k);
            w[n * K + k] = (float)(g->q[n * K + k] - g->z[j]) * g->s[j];
        }
    note(c, module, why);
    emit(c, module, like, QL_TYPE_F32, K, N, w, (uint64_t)(N * K) * 4, false);
    return QL_OK;
}

/* value `i` of a LSB-first bit stream through little-endian 32-bit words starting at `words` */
static unsigned stream_get(const uint8_t *words, int64_t pos, int bits) {
    unsigned v = 0;
    for (int b = 0; b < bits; b++) {
        int64_t p = pos + b;
        v |= (unsigned)((words[p >> 3] >> (p & 7)) & 1) << b; /* LE words: bit p of the stream is bit p%8 of byte p/8 */
    }
    return v;
}

/* ---------------------------------------------------------------- gptq */

static ql_status do_gptq(hq_ctx *c, const char *module, ql_hfq_tensor *qw) {
    const ql_hfq *q = c->q;
    ql_hfq_tensor *qz = part(c, module, "qzeros"), *sc = part(c, module, "scales"), *gi = part(c, module, "g_idx");
    const int bits = q->bits;
    ql_status s;
    if (qw->n_dims != 2) return check_part(c, module, "qweight", qw, INT32S, -1, 0);
    if (!sc || sc->n_dims != 2) return check_part(c, module, "scales", sc, FLOATS, -1, 0);
    igrid g = {0};
    g.bits = bits;
    g.N = qw->ne[0];
    int64_t Kp = qw->ne[1];
    g.K = gi ? gi->ne[0] : Kp * 32 / bits;
    g.channel = q->group == -1;
    g.group = g.channel ? g.K : q->group;
    g.ng = (g.K + g.group - 1) / g.group;
    if (g.K <= 0 || (g.K * bits + 31) / 32 != Kp)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %lld packed rows; %lld inputs of %d bits need %lld", c->dir, qw->name, (long long)Kp,
                       (long long)g.K, bits, (long long)((g.K * bits + 31) / 32));
    int64_t zc = (g.N * bits + 31) / 32;
    if ((s = check_part(c, module, "qweight", qw, INT32S, Kp, g.N)) || (s = check_part(c, module, "qzeros", qz, INT32S, g.ng, zc)) ||
        (s = check_part(c, module, "scales", sc, FLOATS, g.ng, g.N)) || (s = igrid_alloc(c, module, &g)) || (s = read_gidx(c, module, gi, &g))) {
        igrid_free(&g);
        return s;
    }
    /* qweight: column n holds the codes of output n as one bit stream through its words (rows) */
    const uint8_t *w = qw->data;
    for (int64_t n = 0; n < g.N; n++)
        for (int64_t k = 0; k < g.K; k++) {
            int64_t pos = k * bits;
            uint32_t lo = rd_u32(w + 4 * ((pos >> 5) * g.N + n));
            unsigned v = lo >> (pos & 31);
            if ((pos & 31) + bits > 32) v |= rd_u32(w + 4 * (((pos >> 5) + 1) * g.N + n)) << (32 - (pos & 31));
            g.q[n * g.K + k] = (uint8_t)(v & ((1u << bits) - 1));
        }
    for (int64_t j = 0; j < g.ng; j++)
        for (int64_t n = 0; n < g.N; n++) {
            g.z[n * g.ng + j] = (int32_t)stream_get(qz->data + 4 * j * zc, n * bits, bits) + (q->v2 ? 0 : 1);
            g.s[n * g.ng + j] = rd_float(sc, j * g.N + n);
        }
    s = emit_igrid(c, module, qw, &g);
    igrid_free(&g);
    return s;
}

/* ---------------------------------------------------------------- awq */

static ql_status do_awq(hq_ctx *c, const char *module, ql_hfq_tensor *qw) {
    static const int ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7}; /* nibble i holds column 8w + ORDER[i] */
    ql_hfq_tensor *qz = part(c, module, "qzeros"), *sc = part(c, module, "scales");
    ql_status s;
    if (qw->n_dims != 2) return check_part(c, module, "qweight", qw, INT32S, -1, 0);
    if (!sc || sc->n_dims != 2) return check_part(c, module, "scales", sc, FLOATS, -1, 0);
    igrid g = {0};
    g.bits = 4;
    g.K = qw->ne[1];
    g.N = sc->ne[0];
    g.group = c->q->group;
    g.ng = (g.K + g.group - 1) / g.group;
    if (g.N % 8) return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %lld outputs; awq packs eight per word", c->dir, sc->name, (long long)g.N);
    const int64_t W = g.N / 8;
    if ((s = check_part(c, module, "qweight", qw, INT32S, g.K, W)) || (s = check_part(c, module, "qzeros", qz, INT32S, g.ng, W)) ||
        (s = check_part(c, module, "scales", sc, FLOATS, g.ng, g.N)) || (s = igrid_alloc(c, module, &g))) {
        igrid_free(&g);
        return s;
    }
    int nib[8];
    for (int i = 0; i < 8; i++) nib[ORDER[i]] = i;
    for (int64_t n = 0; n < g.N; n++) {
        int sh = 4 * nib[n % 8];
        for (int64_t k = 0; k < g.K; k++) g.q[n * g.K + k] = (uint8_t)((rd_u32(qw->data + 4 * (k * W + n / 8)) >> sh) & 15);
        for (int64_t j = 0; j < g.ng; j++) {
            g.z[n * g.ng + j] = (int32_t)((rd_u32(qz->data + 4 * (j * W + n / 8)) >> sh) & 15);
            g.s[n * g.ng + j] = rd_float(sc, j * g.N + n);
        }
    }
    s = emit_igrid(c, module, qw, &g);
    igrid_free(&g);
    return s;
}

/* ---------------------------------------------------------------- compressed-tensors */

static bool target_matches(const char *target, const char *module) {
    if (!strcmp(target, "Linear")) return true;
    if (strncmp(target, "re:", 3)) return !strcmp(target, module);
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(target + 3), PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);
    if (!re) return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    /* Python's re.match: anchored at the start only */
    int rc = pcre2_match(re, (PCRE2_SPTR)module, strlen(module), 0, PCRE2_ANCHORED, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

/* The config group of a module: an exact name wins over a regex, a regex over "Linear". */
static const ct_group *ct_group_of(const ql_hfq *q, const char *module) {
    const ct_group *best = NULL;
    int best_rank = 0;
    for (int i = 0; i < q->n_groups; i++)
        for (size_t k = 0; k < json_array_size(q->groups[i].targets); k++) {
            const char *t = json_string_value(json_array_get(q->groups[i].targets, k));
            if (!t || !target_matches(t, module)) continue;
            int rank = !strcmp(t, "Linear") ? 1 : !strncmp(t, "re:", 3) ? 2 : 3;
            if (rank > best_rank) best = &q->groups[i], best_rank = rank;
        }
    return best;
}

static ql_status ct_activation(hq_ctx *c, const char *module, const ct_group *grp) {
    ql_hfq_tensor *is = part(c, module, "input_scale"), *iz = part(c, module, "input_zero_point");
    (void)iz; /* asymmetric inputs have no qlab scheme: ct_parse_act noted it */
    if (grp->act == QL_ACT_NONE || !c->arch || !c->arch->gguf_name) return QL_OK;
    float scale = 0;
    if (ql_act_mode_is_static(grp->act)) {
        if (!is) return ql_fail(QL_ERR_FORMAT, "%s: module '%s' has static input activations but no 'input_scale'", c->dir, module);
        if (!is_float_dtype(is->dtype) || numel(is) != 1)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' must hold one float", c->dir, is->name);
        scale = rd_float(is, 0);
        if (!(scale > 0) || !isfinite(scale))
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' = %g is not a positive scale", c->dir, is->name, (double)scale);
    }
    size_t ml = strlen(module);
    char *w = ql_malloc(ml + 8);
    memcpy(w, module, ml);
    memcpy(w + ml, ".weight", 8);
    char *gn = c->arch->gguf_name(c->arch->user, w);
    free(w);
    char key[512];
    snprintf(key, sizeof key, QL_ACT_KEY_MODE "%s", gn);
    ql_gguf_set_str(c->g, key, ql_act_mode_name(grp->act));
    if (ql_act_mode_is_static(grp->act)) {
        snprintf(key, sizeof key, QL_ACT_KEY_SCALE "%s", gn);
        ql_gguf_set_f32(c->g, key, scale);
    }
    free(gn);
    return QL_OK;
}

static ql_status ct_fp8(hq_ctx *c, const char *module, const ct_group *grp, ql_hfq_tensor *wt, ql_hfq_tensor *sc) {
    ql_status s;
    if (wt->n_dims != 2) return check_part(c, module, "weight", wt, 1u << QL_STD_F8_E4M3, -1, 0);
    const int64_t N = wt->ne[1], K = wt->ne[0];
    int64_t sr = 1, scn = 1;
    if (grp->strategy == ST_CHANNEL) sr = N;
    else if (grp->strategy == ST_GROUP) sr = N, scn = (K + grp->group - 1) / grp->group;
    else if (grp->strategy == ST_BLOCK) sr = (N + grp->bh - 1) / grp->bh, scn = (K + grp->bw - 1) / grp->bw;
    if ((s = check_part(c, module, "weight", wt, 1u << QL_STD_F8_E4M3, N, K))) return s;
    if (!sc) return check_part(c, module, "weight_scale", sc, FLOATS, sr, scn);
    bool ok = is_float_dtype(sc->dtype) && numel(sc) == sr * scn &&
              (grp->strategy == ST_TENSOR ? sc->n_dims <= 2 : sc->n_dims == 2 && sc->ne[1] == sr);
    if (!ok) return check_part(c, module, "weight_scale", sc, FLOATS, sr, scn);
    int heads = rope_heads(c, module);
    const uint8_t *codes = wt->data;
    const char *fname = grp->strategy == ST_TENSOR ? "fp8_e4m3" : grp->strategy == ST_CHANNEL ? "fp8_e4m3_channel"
                      : grp->strategy == ST_BLOCK && grp->bh == 128 && grp->bw == 128 && heads == 0 ? "fp8_e4m3_block" : NULL;
    const ql_format *f = fname ? ql_format_by_name(fname) : NULL;
    if (f) {
        int64_t bytes = ql_format_tensor_bytes(f, K, N), sb = 4 * sr * scn;
        uint8_t *buf = bytes > 0 ? malloc((size_t)bytes) : NULL;
        if (!buf) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
        if (grp->strategy == ST_CHANNEL) { /* rows of [f32 scale][K codes] */
            for (int64_t n = 0; n < N; n++) {
                wr_f32(buf + n * (4 + K), rd_float(sc, n));
                memcpy(buf + n * (4 + K) + 4, codes + n * K, (size_t)K);
            }
        } else { /* [scales][codes]; per tensor, q/k rows put in GGUF order here */
            for (int64_t i = 0; i < sr * scn; i++) wr_f32(buf + 4 * i, rd_float(sc, i));
            if (heads > 0) ql_rope_permute_rows(buf + sb, codes, heads, N, (size_t)K, true);
            else memcpy(buf + sb, codes, (size_t)(N * K));
        }
        emit(c, module, wt, f->type, K, N, buf, (uint64_t)bytes, heads > 0 && grp->strategy != ST_CHANNEL);
        return QL_OK;
    }
    float *w = malloc((size_t)(N * K) * sizeof *w);
    if (!w) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            int64_t j = grp->strategy == ST_TENSOR ? 0 : grp->strategy == ST_CHANNEL ? n
                      : grp->strategy == ST_GROUP ? n * scn + k / grp->group : (n / grp->bh) * scn + k / grp->bw;
            float v = ql_fp8_e4m3_to_f32(codes[n * K + k]) * rd_float(sc, j);
            w[n * K + k] = isfinite(v) ? v : 0.0f;
        }
    note(c, module, heads > 0 ? "fp8 blocks on q/k (rows reordered to GGUF order)" : "fp8 groups or blocks other than 128x128");
    emit(c, module, wt, QL_TYPE_F32, K, N, w, (uint64_t)(N * K) * 4, false);
    return QL_OK;
}

/* nvfp4-pack-quantized (compressed-tensors' NVFP4PackedCompressor): weight_packed U8 [N, K/2], two E2M1
 * codes per byte (even column in the low nibble, bit 3 the sign), weight_scale F8_E4M3 [N, K/16],
 * weight_global_scale [1]; w = e2m1(code) * (scale / global_scale) in float. With global scale 1, block
 * scales that are non-negative and not NaN, and K a multiple of 64 this is exactly qlab's nvfp4 (ggml's
 * layout: e2m1x2(code) * ue4m3(scale)/2 is the same product); else F32 as compressed-tensors computes it. */
static ql_status ct_nvfp4(hq_ctx *c, const char *module, ql_hfq_tensor *wt, ql_hfq_tensor *sc) {
    ql_status s;
    if (wt->n_dims != 2) return check_part(c, module, "weight_packed", wt, 1u << QL_STD_U8, -1, 0);
    const int64_t N = wt->ne[1], K = wt->ne[0] * 2;
    ql_hfq_tensor *gs = part(c, module, "weight_global_scale");
    if (K % 16) return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %lld inputs; nvfp4 groups are 16", c->dir, wt->name, (long long)K);
    if ((s = check_part(c, module, "weight_packed", wt, 1u << QL_STD_U8, N, K / 2)) ||
        (s = check_part(c, module, "weight_scale", sc, 1u << QL_STD_F8_E4M3, N, K / 16)))
        return s;
    if (!gs || !is_float_dtype(gs->dtype) || numel(gs) != 1)
        return ql_fail(QL_ERR_FORMAT, "%s: module '%s' needs a one-float 'weight_global_scale'", c->dir, module);
    const float global = rd_float(gs, 0);
    if (!(global > 0) || !isfinite(global))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' = %g is not a positive scale", c->dir, gs->name, (double)global);
    bool exact = global == 1.0f && K % 64 == 0;
    for (int64_t i = 0; i < N * (K / 16) && exact; i++) exact = sc->data[i] < 0x7F; /* sign clear, not NaN */
    if (exact) {
        const ql_format *f = ql_format_by_name("nvfp4");
        int64_t bytes = f ? ql_format_tensor_bytes(f, K, N) : -1;
        uint8_t *buf = bytes == N * (K / 64) * 36 ? calloc(1, (size_t)bytes) : NULL;
        if (!buf) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s' (nvfp4)", c->dir, module);
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                uint8_t *blk = buf + (n * (K / 64) + k / 64) * 36;
                const int sub = (int)(k % 64) / 16, j = (int)(k % 16);
                unsigned code = wt->data[n * (K / 2) + k / 2] >> (4 * (k & 1)) & 15;
                if (j == 0) blk[sub] = sc->data[n * (K / 16) + k / 16];
                blk[4 + 8 * sub + (j & 7)] |= (uint8_t)(code << (j < 8 ? 0 : 4));
            }
        emit(c, module, wt, f->type, K, N, buf, (uint64_t)bytes, false);
        return QL_OK;
    }
    static const float e2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3, -4, -6};
    float *w = malloc((size_t)(N * K) * sizeof *w);
    if (!w) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            float v = e2m1[wt->data[n * (K / 2) + k / 2] >> (4 * (k & 1)) & 15] * (ql_fp8_e4m3_to_f32(sc->data[n * (K / 16) + k / 16]) / global);
            w[n * K + k] = isfinite(v) ? v : 0.0f;
        }
    note(c, module, global != 1.0f ? "nvfp4 with a global scale other than 1" : "nvfp4 with negative or NaN block scales, or rows not in 64s");
    emit(c, module, wt, QL_TYPE_F32, K, N, w, (uint64_t)(N * K) * 4, false);
    return QL_OK;
}

static ql_status do_ct(hq_ctx *c, const char *module, ql_hfq_tensor *main_part, bool packed) {
    const ct_group *grp = ct_group_of(c->q, module);
    if (!grp) return ql_fail(QL_ERR_FORMAT, "%s: module '%s' is quantized but no config group targets it", c->dir, module);
    if (packed ? grp->format != CT_PACK && grp->format != CT_NVFP4 : grp->format != (main_part->dtype == QL_STD_F8_E4M3 ? CT_FLOAT : CT_INTQ))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' (%s) does not match config group '%s'", c->dir, main_part->name,
                       ql_st_dtype_name(main_part->dtype), grp->name);
    ql_hfq_tensor *sc = part(c, module, "weight_scale");
    ql_status s = ct_activation(c, module, grp);
    if (s) return s;
    if (grp->format == CT_FLOAT) return ct_fp8(c, module, grp, main_part, sc);
    if (grp->format == CT_NVFP4) return ct_nvfp4(c, module, main_part, sc);
    const int bits = grp->bits, mid = 1 << (bits - 1);
    igrid g = {0};
    g.bits = bits;
    if (packed) {
        ql_hfq_tensor *shp = part(c, module, "weight_shape");
        if ((s = check_part(c, module, "weight_shape", shp, 1u << QL_STD_I64 | INT32S, 2, -1))) return s;
        int64_t a = shp->dtype == QL_STD_I64 ? rd_i64(shp->data) : (int32_t)rd_u32(shp->data);
        int64_t b = shp->dtype == QL_STD_I64 ? rd_i64(shp->data + 8) : (int32_t)rd_u32(shp->data + 4);
        g.N = a, g.K = b;
        if (a <= 0 || b <= 0 || a > (1 << 24) || b > (1 << 24))
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' = [%lld, %lld] is not a weight shape", c->dir, shp->name, (long long)a, (long long)b);
    } else {
        if (main_part->n_dims != 2) return check_part(c, module, "weight", main_part, 1u << QL_STD_I8, -1, 0);
        g.N = main_part->ne[1], g.K = main_part->ne[0];
    }
    g.per_tensor = grp->strategy == ST_TENSOR;
    g.channel = grp->strategy == ST_CHANNEL;
    if (grp->strategy == ST_BLOCK) return ql_fail(QL_ERR_UNSUPPORTED, "%s: module '%s': int weights in blocks are not read", c->dir, module);
    g.group = grp->strategy == ST_GROUP ? grp->group : g.K;
    g.ng = (g.K + g.group - 1) / g.group;
    const int pf = 32 / bits;
    if ((packed && 32 % bits) || (!packed && bits != 8 && 8 % bits))
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: module '%s': %d-bit codes do not pack", c->dir, module, bits);
    if (packed ? (s = check_part(c, module, "weight_packed", main_part, INT32S, g.N, (g.K + pf - 1) / pf))
               : (s = check_part(c, module, "weight", main_part, 1u << QL_STD_I8, g.N, g.K)))
        return s;
    int64_t sr = g.per_tensor ? 1 : g.N, scn = g.per_tensor ? 1 : g.ng;
    if (!sc || !is_float_dtype(sc->dtype) || numel(sc) != sr * scn || (!g.per_tensor && (sc->n_dims != 2 || sc->ne[1] != sr)))
        return check_part(c, module, "weight_scale", sc, FLOATS, sr, scn);
    ql_hfq_tensor *zp = part(c, module, "weight_zero_point"), *gi = part(c, module, "weight_g_idx");
    int64_t zr = packed ? (sr + pf - 1) / pf : sr;
    if (!grp->sym && !zp) return check_part(c, module, "weight_zero_point", zp, INT32S, zr, scn);
    if (zp && (numel(zp) != zr * scn || (packed ? !(INT32S & (1u << zp->dtype)) : zp->dtype != QL_STD_I8 && !(INT32S & (1u << zp->dtype)))))
        return check_part(c, module, "weight_zero_point", zp, packed ? INT32S : (1u << QL_STD_I8 | INT32S), zr, scn);
    if ((s = igrid_alloc(c, module, &g)) || (s = read_gidx(c, module, gi, &g))) {
        igrid_free(&g);
        return s;
    }
    for (int64_t n = 0; n < g.N; n++)
        for (int64_t k = 0; k < g.K; k++) {
            int v;
            if (packed) v = (int)((rd_u32(main_part->data + 4 * (n * ((g.K + pf - 1) / pf) + k / pf)) >> (bits * (k % pf))) & ((1u << bits) - 1));
            else {
                v = (int8_t)main_part->data[n * g.K + k] + mid;
                if (v < 0 || v > 2 * mid - 1) {
                    igrid_free(&g);
                    return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': value %d at [%lld, %lld] is not a %d-bit code", c->dir, main_part->name,
                                   v - mid, (long long)n, (long long)k, bits);
                }
            }
            g.q[n * g.K + k] = (uint8_t)v;
        }
    for (int64_t r = 0; r < sr; r++)
        for (int64_t j = 0; j < scn; j++) {
            int32_t z = mid;
            if (zp && packed) z = (int32_t)((rd_u32(zp->data + 4 * ((r / pf) * scn + j)) >> (bits * (r % pf))) & ((1u << bits) - 1));
            else if (zp) {
                int64_t zs = zp->dtype == QL_STD_I8 ? (int8_t)zp->data[r * scn + j] : (int64_t)(int32_t)rd_u32(zp->data + 4 * (r * scn + j));
                if (zs < -mid || zs >= mid) {
                    igrid_free(&g);
                    return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': zero point %lld is not a %d-bit value", c->dir, zp->name, (long long)zs, bits);
                }
                z = (int32_t)zs + mid;
            }
            g.z[r * g.ng + j] = z;
            g.s[r * g.ng + j] = rd_float(sc, r * scn + j);
        }
    if (g.per_tensor) /* one scale and zero for every row */
        for (int64_t n = 1; n < g.N; n++) g.z[n * g.ng] = g.z[0], g.s[n * g.ng] = g.s[0];
    s = emit_igrid(c, module, main_part, &g);
    igrid_free(&g);
    return s;
}

/* ---------------------------------------------------------------- bitsandbytes */

static ql_status do_bnb4(hq_ctx *c, const char *module, ql_hfq_tensor *wt, ql_hfq_tensor *qs, bool nf4) {
    char qsn[64];
    snprintf(qsn, sizeof qsn, "weight.quant_state.bitsandbytes__%s", nf4 ? "nf4" : "fp4");
    if (qs->dtype != QL_STD_U8 || qs->n_dims != 1)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' must be a U8 vector (the quant state JSON)", c->dir, qs->name);
    json_error_t err;
    json_t *j = json_loadb((const char *)qs->data, (size_t)qs->nbytes, 0, &err);
    const json_t *shape = json_object_get(j, "shape");
    const char *qt = get_str(j, "quant_type");
    bool bad = !qt || strcmp(qt, nf4 ? "nf4" : "fp4") != 0; /* qt dies with j below */
    int bs = get_int(j, "blocksize", 64, &bad), nbs = get_int(j, "nested_blocksize", 256, &bad);
    double offset = 0;
    const json_t *off = json_object_get(j, "nested_offset");
    if (off && json_is_number(off)) offset = json_number_value(off);
    else if (off) bad = true;
    int64_t N = 0, K = 0;
    if (json_is_array(shape) && json_array_size(shape) == 2 && json_is_integer(json_array_get(shape, 0)) &&
        json_is_integer(json_array_get(shape, 1)))
        N = json_integer_value(json_array_get(shape, 0)), K = json_integer_value(json_array_get(shape, 1));
    json_decref(j);
    if (bad || bs < 16 || bs > 4096 || nbs < 16 || nbs > 4096 || N <= 0 || K <= 0 ||
        N > (1 << 24) || K > (1 << 24) || !(fabs(offset) <= 3.0e38))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is not a bitsandbytes quant state (quant_type, blocksize, shape [N, K])", c->dir, qs->name);
    const int64_t n_el = N * K, nb = (n_el + bs - 1) / bs, nb2 = (nb + nbs - 1) / nbs;
    ql_hfq_tensor *am = part(c, module, "weight.absmax"), *qm = part(c, module, "weight.quant_map");
    ql_hfq_tensor *na = part(c, module, "weight.nested_absmax"), *nm = part(c, module, "weight.nested_quant_map");
    const bool dq = na || nm;
    ql_status s;
    if (wt->dtype != QL_STD_U8 || numel(wt) != (n_el + 1) / 2)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' must hold %lld U8 bytes of packed codes for shape [%lld, %lld]", c->dir, wt->name,
                       (long long)((n_el + 1) / 2), (long long)N, (long long)K);
    if ((s = check_part(c, module, "weight.absmax", am, dq ? 1u << QL_STD_U8 : 1u << QL_STD_F32, nb, -1)) ||
        (s = check_part(c, module, "weight.quant_map", qm, 1u << QL_STD_F32, 16, -1)))
        return s;
    if (dq && ((s = check_part(c, module, "weight.nested_absmax", na, 1u << QL_STD_F32, nb2, -1)) ||
               (s = check_part(c, module, "weight.nested_quant_map", nm, 1u << QL_STD_F32, 256, -1))))
        return s;
    const float *table = nf4 ? ql_nf4_code : ql_fp4_code;
    bool map_ok = true;
    for (int i = 0; i < 16; i++) {
        float v = rd_f32(qm->data + 4 * i);
        map_ok &= memcmp(&v, &table[i], 4) == 0;
    }
    const float *dyn = ql_bnb_dynamic_map();
    for (int i = 0; dq && i < 256; i++) {
        float v = rd_f32(nm->data + 4 * i);
        map_ok &= memcmp(&v, &dyn[i], 4) == 0;
    }
    int heads = rope_heads(c, module);
    const char *why = !map_ok ? "a quant_map or nested map other than qlab's tables"
                    : bs != 64 || (dq && nbs != 256) ? "a blocksize other than 64 (nested 256)"
                    : K % 64 ? "blocks that run across rows (row length not a multiple of 64)"
                    : dq && heads > 0 ? "double-quantized q/k (rows reordered to GGUF order)" : NULL;
    const uint8_t *codes = wt->data;
    if (!why) {
        char name[16];
        snprintf(name, sizeof name, "%s%s", nf4 ? "nf4" : "fp4", dq ? "_dq" : "");
        const ql_format *f = ql_format_by_name(name);
        int64_t bytes = f ? ql_format_tensor_bytes(f, K, N) : -1;
        uint8_t *buf = bytes > 0 ? malloc((size_t)bytes) : NULL;
        if (!buf) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s' (%s)", c->dir, module, name);
        if (!dq) { /* rows of blocks [f32 absmax][32 code bytes] */
            if (bytes != nb * 36) {
                free(buf);
                return ql_fail(QL_ERR_FORMAT, "%s: '%s': %s sizes disagree", c->dir, module, name);
            }
            for (int64_t b = 0; b < nb; b++) {
                memcpy(buf + 36 * b, am->data + 4 * b, 4);
                memcpy(buf + 36 * b + 4, codes + 32 * b, 32);
            }
        } else { /* [offset][absmax2 x nb2][qabsmax x nb][codes] */
            if (bytes != 4 + 4 * nb2 + nb + n_el / 2) {
                free(buf);
                return ql_fail(QL_ERR_FORMAT, "%s: '%s': %s sizes disagree", c->dir, module, name);
            }
            wr_f32(buf, (float)offset);
            memcpy(buf + 4, na->data, (size_t)(4 * nb2));
            memcpy(buf + 4 + 4 * nb2, am->data, (size_t)nb);
            memcpy(buf + 4 + 4 * nb2 + nb, codes, (size_t)(n_el / 2));
        }
        emit(c, module, wt, f->type, K, N, buf, (uint64_t)bytes, false);
        return QL_OK;
    }
    float *w = malloc((size_t)n_el * sizeof *w);
    if (!w) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    float map[16];
    for (int i = 0; i < 16; i++) map[i] = rd_f32(qm->data + 4 * i);
    for (int64_t b = 0; b < nb; b++) {
        float a = dq ? rd_f32(nm->data + 4 * am->data[b]) * rd_f32(na->data + 4 * (b / nbs)) + (float)offset : rd_f32(am->data + 4 * b);
        for (int64_t i = b * bs; i < n_el && i < (b + 1) * bs; i++) {
            unsigned code = i % 2 ? codes[i / 2] & 15 : codes[i / 2] >> 4;
            w[i] = map[code] * a;
        }
    }
    note(c, module, why);
    emit(c, module, wt, QL_TYPE_F32, K, N, w, (uint64_t)n_el * 4, false);
    return QL_OK;
}

static ql_status do_bnb8(hq_ctx *c, const char *module, ql_hfq_tensor *wt, ql_hfq_tensor *scb) {
    part(c, module, "weight_format");
    ql_status s;
    if (wt->n_dims != 2) return check_part(c, module, "weight", wt, 1u << QL_STD_I8, -1, 0);
    const int64_t N = wt->ne[1], K = wt->ne[0];
    if ((s = check_part(c, module, "weight", wt, 1u << QL_STD_I8, N, K)) || (s = check_part(c, module, "SCB", scb, FLOATS, N, -1)))
        return s;
    /* F32 SCB: exactly qlab's bnb_int8 (bitsandbytes' rows, its decode), codes -127..127 */
    bool exact = scb->dtype == QL_STD_F32;
    for (int64_t i = 0; i < N * K && exact; i++) exact = wt->data[i] != 0x80;
    const ql_format *f = exact ? ql_format_by_name("bnb_int8") : NULL;
    if (f && ql_format_tensor_bytes(f, K, N) == N * (4 + K)) {
        uint8_t *buf = malloc((size_t)(N * (4 + K)));
        if (!buf) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
        for (int64_t n = 0; n < N; n++) {
            memcpy(buf + n * (4 + K), scb->data + 4 * n, 4);
            memcpy(buf + n * (4 + K) + 4, wt->data + n * K, (size_t)K);
        }
        emit(c, module, wt, f->type, K, N, buf, (uint64_t)(N * (4 + K)), false);
        return QL_OK;
    }
    float *w = malloc((size_t)(N * K) * sizeof *w);
    if (!w) return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    for (int64_t n = 0; n < N; n++) {
        float r = rd_float(scb, n);
        /* bitsandbytes' int8_vectorwise_dequant: A * SCB * (1/127) */
        for (int64_t k = 0; k < K; k++) w[n * K + k] = (float)(int8_t)wt->data[n * K + k] * r * 7.874015718698502e-3f;
    }
    note(c, module, "LLM.int8 with a non-F32 SCB or the code -128");
    emit(c, module, wt, QL_TYPE_F32, K, N, w, (uint64_t)(N * K) * 4, false);
    return QL_OK;
}

/* ---------------------------------------------------------------- exl2 */

/* ExLlamaV2's parts (docs/formats.md § Exporters, pipeline/export_exl2.c writes them): K from q_invperm,
 * N from q_weight's columns, each group's bits and first q_weight row from q_groups; a group's row count
 * is its share of q_weight (whole 32-row words, since every group but ExLlamaV2's last is 32..128 rows
 * and K is a multiple of 32). The group list is matched against the exl2_* registry entries' layouts at
 * this K; a match is re-packed into that entry's storage (the same parts in qlab's order, outputs of q/k
 * in GGUF's order), anything else is decoded to F32 the way ExLlamaV2's kernels do. */
static ql_status do_exl2(hq_ctx *c, const char *module, ql_hfq_tensor *qw) {
    ql_hfq_tensor *ip = part(c, module, "q_invperm"), *pp = part(c, module, "q_perm"), *sm = part(c, module, "q_scale_max");
    ql_hfq_tensor *gr = part(c, module, "q_groups"), *qs = part(c, module, "q_scale");
    const unsigned perm_types = INT32S | 1u << QL_STD_I16;
    ql_status s;
    if (qw->n_dims != 2) return check_part(c, module, "q_weight", qw, INT32S, -1, 0);
    if (!ip || ip->n_dims != 1) return check_part(c, module, "q_invperm", ip, perm_types, -1, 0);
    if (!sm || sm->n_dims != 1) return check_part(c, module, "q_scale_max", sm, 1u << QL_STD_F16, -1, 0);
    const int64_t N = qw->ne[0], qrows = qw->ne[1], K = ip->ne[0], G = sm->ne[0];
    if (N % 8 || K % 32 || K > 65535 || G < 1 || G > K)
        return ql_fail(QL_ERR_FORMAT, "%s: module '%s' is %lld x %lld with %lld groups; exl2 needs outputs in eights and inputs in 32s (at most 65535)",
                       c->dir, module, (long long)N, (long long)K, (long long)G);
    if ((s = check_part(c, module, "q_weight", qw, INT32S, qrows, N)) || (s = check_part(c, module, "q_invperm", ip, perm_types, K, -1)) ||
        (s = check_part(c, module, "q_scale_max", sm, 1u << QL_STD_F16, G, -1)) ||
        (s = check_part(c, module, "q_groups", gr, 1u << QL_STD_I16 | 1u << QL_STD_U16, 2 * G, -1)) ||
        (s = check_part(c, module, "q_scale", qs, INT32S, G, N / 8)) || (pp && (s = check_part(c, module, "q_perm", pp, perm_types, K, -1))))
        return s;
    const bool ip16 = ip->dtype == QL_STD_I16, pp16 = pp && pp->dtype == QL_STD_I16;
    /* the group list, every field checked */
    ql_exl2_group *g = malloc((size_t)G * sizeof *g);
    int64_t *perm = malloc((size_t)K * sizeof *perm);
    if (!g || !perm) {
        free(g), free(perm);
        return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    }
    int64_t row = 0;
    for (int64_t i = 0; i < G && !s; i++) {
        int bits = (int16_t)(gr->data[4 * i] | gr->data[4 * i + 1] << 8);
        int64_t q0 = (uint16_t)(gr->data[4 * i + 2] | gr->data[4 * i + 3] << 8);
        int64_t q1 = i + 1 < G ? (uint16_t)(gr->data[4 * i + 6] | gr->data[4 * i + 7] << 8) : qrows;
        if (bits < 2 || bits > 8 || q0 != (i ? g[i - 1].qrow + (g[i - 1].rows * g[i - 1].bits) / 32 : 0) || q1 <= q0 || q1 > qrows ||
            ((q1 - q0) * 32) % bits || row + (q1 - q0) * 32 / bits > K)
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s.q_groups': group %lld (%d bits from q_weight row %lld) does not tile %lld inputs in %lld rows",
                        c->dir, module, (long long)i, bits, (long long)q0, (long long)K, (long long)qrows);
        else {
            g[i] = (ql_exl2_group){.bits = bits, .row = row, .rows = (q1 - q0) * 32 / bits, .qrow = q0};
            row += g[i].rows;
        }
    }
    if (!s && row != K)
        s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s.q_groups' covers %lld of %lld inputs", c->dir, module, (long long)row, (long long)K);
    /* perm[p] = the input at processing position p; q_invperm must be a permutation, q_perm its inverse */
    for (int64_t p = 0; p < K && !s; p++) perm[p] = -1;
    for (int64_t k = 0; k < K && !s; k++) {
        int64_t p = ip16 ? (int16_t)(ip->data[2 * k] | ip->data[2 * k + 1] << 8) : (int32_t)rd_u32(ip->data + 4 * k);
        if (p < 0 || p >= K || perm[p] >= 0)
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is not a permutation of 0..%lld (entry %lld)", c->dir, ip->name, (long long)K - 1, (long long)k);
        else perm[p] = k;
    }
    for (int64_t p = 0; pp && p < K && !s; p++) {
        int64_t v = pp16 ? (int16_t)(pp->data[2 * p] | pp->data[2 * p + 1] << 8) : (int32_t)rd_u32(pp->data + 4 * p);
        if (v != perm[p])
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is not the inverse of q_invperm (entry %lld)", c->dir, pp->name, (long long)p);
    }
    if (s) {
        free(g), free(perm);
        return s;
    }
    /* the registry entry whose layout at this K is this group list */
    const ql_format *f = NULL;
    ql_exl2_mix mix;
    for (int i = 0; i < ql_format_count() && !f && N % 32 == 0; i++) {
        const ql_format *e = ql_format_at(i);
        ql_exl2_offsets o;
        if (!ql_exl2_format_mix(e, &mix) || !ql_exl2_offsets_of(&mix, K, N, &o) || o.G != G || o.qrows != qrows) continue;
        ql_exl2_group *eg = malloc((size_t)G * sizeof *eg);
        if (!eg) break;
        ql_exl2_layout(&mix, K, eg);
        bool same = true;
        for (int64_t j = 0; j < G && same; j++)
            same = eg[j].bits == g[j].bits && eg[j].row == g[j].row && eg[j].rows == g[j].rows && eg[j].qrow == g[j].qrow;
        free(eg);
        if (same) f = e;
    }
    const int heads = rope_heads(c, module);
    /* col[qlab output] = the HF output it holds (q/k: GGUF's rope order; else the identity) */
    int32_t *col = malloc((size_t)N * 4), *id = malloc((size_t)N * 4);
    if (!col || !id) {
        free(g), free(perm), free(col), free(id);
        return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    }
    for (int64_t n = 0; n < N; n++) id[n] = (int32_t)n;
    if (f && heads > 0) ql_rope_permute_rows(col, id, heads, N, 4, true);
    else memcpy(col, id, (size_t)N * 4);
    free(id);
    if (f) {
        ql_exl2_offsets o;
        ql_exl2_offsets_of(&mix, K, N, &o);
        uint8_t *buf = calloc(1, (size_t)o.total);
        if (!buf) {
            free(g), free(perm), free(col);
            return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
        }
        for (int64_t p = 0; p < K; p++) put_u32(buf + o.invperm + 4 * perm[p], (uint32_t)p);
        memcpy(buf + o.scale_max, sm->data, (size_t)(2 * G));
        memcpy(buf + o.groups, gr->data, (size_t)(4 * G));
        for (int64_t i = 0; i < G; i++)
            for (int64_t n = 0; n < N; n++) {
                int64_t h = col[n];
                uint32_t v = rd_u32(qs->data + 4 * (i * (N / 8) + h / 8)) >> (4 * (h % 8)) & 15;
                uint8_t *w = buf + o.scale + 4 * (i * (N / 8) + n / 8);
                put_u32(w, rd_u32(w) | v << (4 * (n % 8)));
            }
        for (int64_t r = 0; r < qrows; r++)
            for (int64_t n = 0; n < N; n++) memcpy(buf + o.weight + 4 * (r * N + n), qw->data + 4 * (r * N + col[n]), 4);
        free(g), free(perm), free(col);
        emit(c, module, qw, f->type, K, N, buf, (uint64_t)o.total, heads > 0);
        return QL_OK;
    }
    /* F32 in HF order, as ExLlamaV2 dequantizes (formats/fmt_exl2.c: ql_exl2_scale, ql_exl2_value) */
    float *w = malloc((size_t)(N * K) * sizeof *w), *scale = malloc((size_t)N * sizeof *scale);
    if (!w || !scale) {
        free(g), free(perm), free(col), free(w), free(scale);
        return ql_fail(QL_ERR_NOMEM, "%s: no memory for '%s'", c->dir, module);
    }
    for (int64_t i = 0; i < G; i++) {
        const uint16_t smax = (uint16_t)(sm->data[2 * i] | sm->data[2 * i + 1] << 8);
        for (int64_t n = 0; n < N; n++)
            scale[n] = ql_exl2_scale((int)(rd_u32(qs->data + 4 * (i * (N / 8) + n / 8)) >> (4 * (n % 8)) & 15) + 1, smax);
        const int b = g[i].bits;
        for (int64_t r = 0; r < g[i].rows; r++) {
            const int64_t k = perm[g[i].row + r], pos = g[i].qrow * 32 + r * b;
            for (int64_t n = 0; n < N; n++) {
                unsigned code = 0;
                for (int j = 0; j < b; j++) { /* bit (pos + j) of output n's stream down the rows of q_weight */
                    int64_t bit = pos + j;
                    code |= (rd_u32(qw->data + 4 * ((bit >> 5) * N + n)) >> (bit & 31) & 1u) << j;
                }
                w[n * K + k] = ql_exl2_value((int)code, b, scale[n]);
            }
        }
    }
    free(g), free(perm), free(col), free(scale);
    note(c, module, "an exl2 group layout no exl2_* registry entry has at this size");
    emit(c, module, qw, QL_TYPE_F32, K, N, w, (uint64_t)(N * K) * 4, false);
    return QL_OK;
}

/* ---------------------------------------------------------------- driver */

static bool ends_with(const char *s, const char *suf, size_t *stem) {
    size_t a = strlen(s), b = strlen(suf);
    if (a <= b || strcmp(s + a - b, suf)) return false;
    *stem = a - b;
    return true;
}

static ql_status convert_one(hq_ctx *c, int64_t i) {
    ql_hfq_tensor *t = &c->ts[i];
    size_t stem;
    char module[400];
    const hq_method m = c->q->m;
    const char *anchor = m == HQ_GPTQ || m == HQ_AWQ ? ".qweight" : m == HQ_EXL2 ? ".q_weight" : m == HQ_CT ? NULL : ".weight";
    if (anchor && !ends_with(t->name, anchor, &stem)) return QL_OK;
    if (m == HQ_CT) {
        bool packed = ends_with(t->name, ".weight_packed", &stem);
        if (!packed && !ends_with(t->name, ".weight", &stem)) return QL_OK;
        if (stem >= sizeof module) return ql_fail(QL_ERR_FORMAT, "%s: tensor name '%.64s...' is too long", c->dir, t->name);
        memcpy(module, t->name, stem), module[stem] = 0;
        if (!packed && is_float_dtype(t->dtype)) return QL_OK; /* a module left in float */
        c->used[i] = true;
        return do_ct(c, module, t, packed);
    }
    if (stem >= sizeof module) return ql_fail(QL_ERR_FORMAT, "%s: tensor name '%.64s...' is too long", c->dir, t->name);
    memcpy(module, t->name, stem), module[stem] = 0;
    if (m == HQ_BNB4 || m == HQ_BNB8) {
        if (is_float_dtype(t->dtype)) return QL_OK; /* llm_int8_skip_modules, embeddings, norms */
        c->used[i] = true;
        if (m == HQ_BNB8) return do_bnb8(c, module, t, part(c, module, "SCB"));
        ql_hfq_tensor *qs = part(c, module, "weight.quant_state.bitsandbytes__nf4");
        bool nf4 = qs != NULL;
        if (!qs) qs = part(c, module, "weight.quant_state.bitsandbytes__fp4");
        if (!qs) return ql_fail(QL_ERR_FORMAT, "%s: module '%s' has a %s weight but no quant_state", c->dir, module, ql_st_dtype_name(t->dtype));
        return do_bnb4(c, module, t, qs, nf4);
    }
    c->used[i] = true;
    return m == HQ_GPTQ ? do_gptq(c, module, t) : m == HQ_EXL2 ? do_exl2(c, module, t) : do_awq(c, module, t);
}

ql_status ql_hfq_convert(const ql_hfq *q, const char *dir, const ql_hfq_arch *arch, ql_hfq_tensor **ts, int64_t *n, ql_gguf *g) {
    hq_ctx c = {.q = q, .dir = dir, .arch = arch, .ts = *ts, .n = *n, .g = g};
    c.used = ql_calloc((size_t)(c.n ? c.n : 1), sizeof *c.used);
    ql_status s = QL_OK;
    const int64_t n0 = c.n;
    int64_t converted = 0;
    for (int64_t i = 0; i < n0 && !s; i++) {
        if (c.used[i]) continue;
        int64_t before = c.n;
        s = convert_one(&c, i);
        converted += c.n - before;
    }
    /* whatever is left must be a plain float tensor */
    for (int64_t i = 0; i < c.n && !s; i++)
        if (!c.used[i] && c.ts[i].dtype >= 0 && !is_float_dtype(c.ts[i].dtype))
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' (%s) is not part of any %s module qlab reads", dir, c.ts[i].name,
                        ql_st_dtype_name(c.ts[i].dtype), ql_hfq_method(q));
    if (!s && converted == 0)
        ql_log(1, "%s: config.json says %s but no module is quantized; loading the float tensors", dir, ql_hfq_method(q));
    if (!s)
        for (int i = 0; i < c.n_notes; i++)
            ql_log(1, "%s: %d %s module%s (first: %s) decoded to F32, no registry format holds it exactly: %s", dir, c.notes[i].count, ql_hfq_method(q),
                   c.notes[i].count == 1 ? "" : "s", c.notes[i].first, c.notes[i].reason);
    /* drop the consumed parts */
    int64_t w = 0;
    for (int64_t i = 0; i < c.n; i++) {
        if (c.used[i]) {
            free(c.ts[i].name);
            continue;
        }
        c.ts[w++] = c.ts[i];
    }
    c.n = w;
    free(c.used);
    *ts = c.ts;
    *n = c.n;
    return s;
}
