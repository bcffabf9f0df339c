/* kv_cache.c — KV-cache schemes (names, sizes, head-dimension checks) and the per-layer buffer that stores
 * rows the way a scheme does (see kv_cache.h). llama.cpp's types go through the format registry's codecs;
 * qlab's INT/FP8 schemes are simulated (the buffer keeps the decoded floats, the memory figure is what a
 * packed cache would hold). */
#include "core/kv_cache.h"
#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "kernels/blocks.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's cache types, in its -ctk / -ctv list order */
static const char *const LLAMA_TYPES[] = {"f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"};

static const char *const EXAMPLES[] = {"f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl",
                                       "int8_token_g32", "int4_token_g32", "int8_channel_g32", "int4_channel_g32",
                                       "kivi4", "kivi2", "fp8_e4m3", "fp8_e5m2"};

const char *const *ql_kv_scheme_examples(int *n) {
    *n = (int)QL_ARRAY_LEN(EXAMPLES);
    return EXAMPLES;
}

ql_kv_scheme ql_kv_scheme_f32(void) {
    ql_kv_scheme s;
    memset(&s, 0, sizeof s);
    return s;
}

static bool parse_uint(const char **p, int *out) {
    const char *s = *p;
    if (*s < '0' || *s > '9') return false;
    long v = 0;
    while (*s >= '0' && *s <= '9' && v < 1000000) v = v * 10 + (*s++ - '0');
    *out = (int)v;
    *p = s;
    return true;
}

/* one side; false (no message) when the text is not a scheme */
static bool parse_side(const char *t, ql_kv_side *o) {
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < QL_ARRAY_LEN(LLAMA_TYPES); i++)
        if (!strcmp(t, LLAMA_TYPES[i])) {
            if (i == 0) return true; /* f32 */
            const ql_format *f = ql_format_by_name(t);
            if (!f) return false;
            o->kind = QL_KV_GGML;
            o->type = f->type;
            return true;
        }
    const char *p = t;
    if (!strncmp(p, "int", 3)) {
        p += 3;
        o->kind = QL_KV_INT;
        if (!parse_uint(&p, &o->bits) || (o->bits != 8 && o->bits != 4 && o->bits != 2)) return false;
        if (!strncmp(p, "_token", 6)) o->axis = QL_KV_PER_TOKEN, p += 6;
        else if (!strncmp(p, "_channel", 8)) o->axis = QL_KV_PER_CHANNEL, p += 8;
        else return false;
        if (strncmp(p, "_g", 2)) return false;
        p += 2;
        if (!parse_uint(&p, &o->group) || (o->group != 32 && o->group != 64 && o->group != 128)) return false;
    } else if (!strncmp(p, "fp8_e4m3", 8) || !strncmp(p, "fp8_e5m2", 8)) {
        o->kind = QL_KV_FP8;
        o->e5m2 = p[5] == '5';
        p += 8;
    } else
        return false;
    if (!strncmp(p, "_r", 2)) {
        p += 2;
        if (!parse_uint(&p, &o->residual) || o->residual < 1 || o->residual > 65536) return false;
    }
    if (!strcmp(p, "_had")) o->hadamard = true, p += 4;
    return *p == 0;
}

bool ql_kv_scheme_parse(const char *text, ql_kv_scheme *out) {
    *out = ql_kv_scheme_f32();
    char buf[160];
    if (!text || strlen(text) >= sizeof buf) {
        ql_fail(QL_ERR_ARG, "unknown KV cache scheme '%s'", text ? text : "");
        return false;
    }
    snprintf(buf, sizeof buf, "%s", text);
    for (char *c = buf; *c; c++) *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    if (!strcmp(buf, "kivi4") || !strcmp(buf, "kivi2")) {
        snprintf(buf, sizeof buf, "int%c_channel_g32_r128:int%c_token_g32_r128", text[4], text[4]);
    }
    char *colon = strchr(buf, ':');
    if (colon) *colon = 0;
    const char *ks = buf, *vs = colon ? colon + 1 : buf;
    bool ok = parse_side(ks, &out->k) && parse_side(vs, &out->v) && !out->v.hadamard;
    if (!ok) {
        ql_fail(QL_ERR_ARG,
                "unknown KV cache scheme '%s' (K[:V], each f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl, "
                "int{8,4,2}_{token,channel}_g{32,64,128}[_rN][_had], fp8_e4m3|fp8_e5m2[_rN][_had], or kivi4/kivi2; "
                "_had on K only)",
                text);
        *out = ql_kv_scheme_f32();
    }
    return ok;
}

const char *ql_kv_side_name(const ql_kv_side *s, char *buf, size_t n) {
    char tail[32] = "";
    if (s->residual) snprintf(tail, sizeof tail, "_r%d", s->residual);
    if (s->hadamard) strncat(tail, "_had", sizeof tail - strlen(tail) - 1);
    switch (s->kind) {
    case QL_KV_F32: snprintf(buf, n, "f32"); break;
    case QL_KV_GGML: {
        const ql_format *f = ql_format_by_type(s->type);
        snprintf(buf, n, "%s", f ? f->name : "?");
        break;
    }
    case QL_KV_INT:
        snprintf(buf, n, "int%d_%s_g%d%s", s->bits, s->axis == QL_KV_PER_CHANNEL ? "channel" : "token", s->group, tail);
        break;
    case QL_KV_FP8: snprintf(buf, n, "fp8_%s%s", s->e5m2 ? "e5m2" : "e4m3", tail); break;
    }
    return buf;
}

bool ql_kv_scheme_equal(const ql_kv_scheme *a, const ql_kv_scheme *b) {
    const ql_kv_side *x[2] = {&a->k, &a->v}, *y[2] = {&b->k, &b->v};
    for (int i = 0; i < 2; i++)
        if (x[i]->kind != y[i]->kind || x[i]->type != y[i]->type || x[i]->bits != y[i]->bits ||
            x[i]->axis != y[i]->axis || x[i]->group != y[i]->group || x[i]->e5m2 != y[i]->e5m2 ||
            x[i]->residual != y[i]->residual || x[i]->hadamard != y[i]->hadamard)
            return false;
    return true;
}

const char *ql_kv_scheme_name(const ql_kv_scheme *s, char *buf, size_t n) {
    char k[64], v[64];
    ql_kv_side_name(&s->k, k, sizeof k);
    ql_kv_side_name(&s->v, v, sizeof v);
    ql_kv_side vk = s->k;
    vk.hadamard = false;
    ql_kv_scheme same = {vk, s->v};
    if (!s->k.hadamard && ql_kv_scheme_equal(&same, &(ql_kv_scheme){s->v, s->v})) snprintf(buf, n, "%s", k);
    else snprintf(buf, n, "%s:%s", k, v);
    return buf;
}

bool ql_kv_scheme_is_f32(const ql_kv_scheme *s) {
    ql_kv_scheme f = ql_kv_scheme_f32();
    return ql_kv_scheme_equal(s, &f);
}

static ql_status check_side(const ql_kv_side *s, const char *which, const ql_config *c, const char *model) {
    char nm[64];
    ql_kv_side_name(s, nm, sizeof nm);
    const int hd = c->head_dim;
    if (s->kind == QL_KV_GGML) {
        const ql_format *f = ql_format_by_type(s->type);
        if (!f || hd % f->block != 0)
            return ql_fail(QL_ERR_UNSUPPORTED,
                           "%s: %s cache type %s needs a head dimension that is a multiple of %d, this model's is %d "
                           "(llama.cpp refuses it too); use f16, bf16, fp8_e4m3 or int8_channel_g32",
                           model, which, nm, f ? f->block : 0, hd);
    }
    if (s->kind == QL_KV_INT && s->axis == QL_KV_PER_TOKEN && hd % s->group != 0) {
        char fits[64] = "";
        for (int g = 32; g <= 128; g *= 2)
            if (hd % g == 0) snprintf(fits + strlen(fits), sizeof fits - strlen(fits), "%s g%d", *fits ? "," : "", g);
        return ql_fail(QL_ERR_UNSUPPORTED,
                       "%s: %s cache %s groups %d channels of one head, but the head dimension is %d; %s%s", model,
                       which, nm, s->group, hd, *fits ? "groups that fit:" : "use a per-channel scheme (int*_channel_g*)",
                       fits);
    }
    if (s->hadamard && (hd & (hd - 1)) != 0)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: %s cache %s needs a power-of-two head dimension for the Hadamard rotation, this model's is %d",
                       model, which, nm, hd);
    return QL_OK;
}

ql_status ql_kv_scheme_check(const ql_kv_scheme *s, const ql_config *c, const char *model_name) {
    ql_status st = check_side(&s->k, "K", c, model_name);
    return st ? st : check_side(&s->v, "V", c, model_name);
}

int ql_kv_side_token_group(const ql_kv_side *s) {
    return s->kind == QL_KV_INT && s->axis == QL_KV_PER_CHANNEL ? s->group : 1;
}

int ql_kv_side_quantized_prefix(const ql_kv_side *s, int n) {
    if (s->kind == QL_KV_F32) return n;
    int G = ql_kv_side_token_group(s), m = n - s->residual;
    return m > 0 ? m / G * G : 0;
}

int64_t ql_kv_side_bytes(const ql_kv_side *s, int n_head_kv, int head_dim, int64_t n) {
    const int64_t kv_dim = (int64_t)n_head_kv * head_dim;
    if (s->kind == QL_KV_F32) return n * kv_dim * 4;
    if (s->kind == QL_KV_GGML) {
        const ql_format *f = ql_format_by_type(s->type);
        return f ? ql_format_tensor_bytes(f, kv_dim, n) : -1;
    }
    int64_t G = ql_kv_side_token_group(s), m = n - s->residual;
    int64_t nq = m > 0 ? m / G * G : 0, tail = (n - nq) * kv_dim * 2; /* the float window, as fp16 */
    if (s->kind == QL_KV_FP8) return nq * n_head_kv * (head_dim + 4) + tail; /* codes + f32 scale per head */
    /* INT: codes plus an fp16 scale and fp16 minimum per group */
    if (s->axis == QL_KV_PER_TOKEN) return nq * n_head_kv * (head_dim / s->group) * (s->group * s->bits / 8 + 4) + tail;
    return nq / G * kv_dim * (G * s->bits / 8 + 4) + tail;
}

int64_t ql_kv_cache_bytes(const ql_config *c, const ql_kv_scheme *s, int64_t ctx, int batch) {
    int64_t k = ql_kv_side_bytes(&s->k, c->n_head_kv, c->head_dim, ctx), v = ql_kv_side_bytes(&s->v, c->n_head_kv, c->head_dim, ctx);
    if (k < 0 || v < 0) return -1;
    return (k + v) * c->n_layer * (batch > 0 ? batch : 1);
}

uint32_t ql_kv_q_round_type(const ql_kv_side *k) {
    if (k->kind != QL_KV_GGML || k->hadamard) return QL_TYPE_F32;
    return ql_format_llama_act_type(k->type);
}

/* ---- the buffer ---- */

struct ql_kv_buf {
    ql_kv_side s;
    const ql_format *f; /* QL_KV_GGML */
    int max_tokens, n_head_kv, hd, kv_dim;
    int n_quant;        /* tokens [0, n_quant) are in the quantized store */
    float *x;           /* float rows [max_tokens, kv_dim] */
    float *deq;         /* INT / FP8: decoded rows [max_tokens, kv_dim] */
    uint8_t *bytes;     /* GGML: encoded rows */
    int64_t row_bytes;
};

ql_kv_buf *ql_kv_buf_new(const ql_kv_side *s, int max_tokens, int n_head_kv, int head_dim) {
    ql_kv_buf *b = ql_calloc(1, sizeof *b);
    b->s = *s;
    b->max_tokens = max_tokens;
    b->n_head_kv = n_head_kv;
    b->hd = head_dim;
    b->kv_dim = n_head_kv * head_dim;
    b->x = ql_malloc((size_t)max_tokens * b->kv_dim * sizeof(float));
    if (s->kind == QL_KV_GGML) {
        b->f = ql_format_by_type(s->type);
        b->row_bytes = b->f ? ql_format_tensor_bytes(b->f, b->kv_dim, 1) : -1;
        if (b->row_bytes <= 0) {
            ql_kv_buf_free(b);
            return NULL;
        }
        b->bytes = ql_malloc((size_t)max_tokens * b->row_bytes);
    } else if (s->kind != QL_KV_F32)
        b->deq = ql_malloc((size_t)max_tokens * b->kv_dim * sizeof(float));
    return b;
}

void ql_kv_buf_free(ql_kv_buf *b) {
    if (!b) return;
    free(b->x);
    free(b->deq);
    free(b->bytes);
    free(b);
}

const float *ql_kv_buf_float(const ql_kv_buf *b) { return b->x; }

const uint8_t *ql_kv_buf_bytes(const ql_kv_buf *b, int64_t *row_bytes) {
    if (row_bytes) *row_bytes = b->row_bytes;
    return b->bytes;
}

/* In-place normalized fast Walsh–Hadamard transform of n (a power of two) values; its own inverse. */
static void hadamard(float *x, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], c = x[j + h];
                x[j] = a + c;
                x[j + h] = a - c;
            }
    const float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++) x[i] *= s;
}

/* ggml-cpu's quantize_row_q8_0 (what llama.cpp's cache write calls): like the reference but with the
 * vector units' round-half-to-even, so a code on a .5 tie can differ from the file quantizer's roundf. */
static void quantize_q8_0_cpu(const float *x, blk_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        y[b].d = ql_fp32_to_fp16(d);
        for (int j = 0; j < 32; j++) y[b].qs[j] = (int8_t)nearbyintf(x[j] * id);
    }
}

/* min/max asymmetric INTn of n values at stride st; scale and minimum stored as fp16 */
static void int_group(const float *x, float *y, int n, size_t st, int bits) {
    float mn = INFINITY, mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = x[i * st];
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }
    const int qmax = (1 << bits) - 1;
    const float d = ql_fp16_to_fp32(ql_fp32_to_fp16((mx - mn) / qmax)), m = ql_fp16_to_fp32(ql_fp32_to_fp16(mn));
    const float id = d > 0 ? 1.0f / d : 0.0f;
    for (int i = 0; i < n; i++) {
        float q = nearbyintf((x[i * st] - m) * id);
        q = q < 0 ? 0 : q > qmax ? (float)qmax : q;
        y[i * st] = q * d + m;
    }
}

/* one head's FP8 codes with an f32 scale amax / fp8 max */
static void fp8_head(const float *x, float *y, int n, bool e5m2) {
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float s = amax / (e5m2 ? 57344.0f : 448.0f);
    for (int i = 0; i < n; i++) {
        if (s == 0) {
            y[i] = 0;
            continue;
        }
        y[i] = e5m2 ? ql_fp8_e5m2_to_f32(ql_f32_to_fp8_e5m2(x[i] / s)) * s
                    : ql_fp8_e4m3_to_f32(ql_f32_to_fp8_e4m3(x[i] / s)) * s;
    }
}

/* quantize tokens [a, b) (whole token groups) into the store */
static void quantize_tokens(ql_kv_buf *b, int a, int e) {
    const int D = b->kv_dim, hd = b->hd;
    const ql_kv_side *s = &b->s;
    const float *src = b->x + (size_t)a * D;
    float *rot = NULL;
    if (s->hadamard) { /* quantize the rotated rows, hand back the un-rotated decode */
        rot = ql_malloc((size_t)(e - a) * D * sizeof(float));
        memcpy(rot, src, (size_t)(e - a) * D * sizeof(float));
        for (int64_t r = 0; r < (int64_t)(e - a) * b->n_head_kv; r++) hadamard(rot + r * hd, hd);
        src = rot;
    }
    if (s->kind == QL_KV_GGML) {
        uint8_t *dst = b->bytes + (size_t)a * b->row_bytes;
        if (b->f->type == QL_TYPE_Q8_0) quantize_q8_0_cpu(src, (blk_q8_0 *)dst, (int64_t)(e - a) * D);
        else if (b->f->type == QL_TYPE_IQ4_NL) ql_quantize_row_iq4_nl_fast_ref(src, dst, (int64_t)(e - a) * D);
        else ql_format_quantize(b->f, src, dst, e - a, D, NULL, 1);
    } else {
        float *y = b->deq + (size_t)a * D;
        if (s->kind == QL_KV_FP8)
            for (int64_t r = 0; r < (int64_t)(e - a) * b->n_head_kv; r++) fp8_head(src + r * hd, y + r * hd, hd, s->e5m2);
        else if (s->axis == QL_KV_PER_TOKEN)
            for (int64_t g = 0; g < (int64_t)(e - a) * D / s->group; g++)
                int_group(src + g * s->group, y + g * s->group, s->group, 1, s->bits);
        else
            for (int t = 0; t < e - a; t += s->group)
                for (int c = 0; c < D; c++)
                    int_group(src + (size_t)t * D + c, y + (size_t)t * D + c, s->group, (size_t)D, s->bits);
        if (rot)
            for (int64_t r = 0; r < (int64_t)(e - a) * b->n_head_kv; r++) hadamard(y + r * hd, hd);
    }
    free(rot);
}

ql_status ql_kv_buf_store(ql_kv_buf *b, int pos, int T, const float *x) {
    if (pos < 0 || T < 0 || pos + T > b->max_tokens)
        return ql_fail(QL_ERR_ARG, "kv cache: positions %d..%d past its %d", pos, pos + T, b->max_tokens);
    memcpy(b->x + (size_t)pos * b->kv_dim, x, (size_t)T * b->kv_dim * sizeof(float));
    if (b->s.kind == QL_KV_F32) return QL_OK;
    const int G = ql_kv_side_token_group(&b->s);
    if (pos < b->n_quant) b->n_quant = pos / G * G; /* rewritten tokens: their groups are quantized again */
    const int end = (pos + T) / G * G;
    if (end > b->n_quant) quantize_tokens(b, b->n_quant, end);
    if (end > b->n_quant) b->n_quant = end;
    return QL_OK;
}

ql_status ql_kv_buf_load(const ql_kv_buf *b, int pos, int T, float *out) {
    if (pos < 0 || T < 0 || pos + T > b->max_tokens)
        return ql_fail(QL_ERR_ARG, "kv cache: positions %d..%d past its %d", pos, pos + T, b->max_tokens);
    const int D = b->kv_dim, hd = b->hd;
    int q_end = b->n_quant < pos + T ? b->n_quant : pos + T, nq = q_end > pos ? q_end - pos : 0;
    if (nq > 0) {
        if (b->s.kind == QL_KV_GGML) {
            ql_format_dequantize(b->f, b->bytes + (size_t)pos * b->row_bytes, out, nq, D, 1);
            if (b->s.hadamard)
                for (int64_t r = 0; r < (int64_t)nq * b->n_head_kv; r++) hadamard(out + r * hd, hd);
        } else if (b->s.kind != QL_KV_F32)
            memcpy(out, b->deq + (size_t)pos * D, (size_t)nq * D * sizeof(float));
        else
            nq = 0;
    }
    memcpy(out + (size_t)nq * D, b->x + (size_t)(pos + nq) * D, (size_t)(T - nq) * D * sizeof(float));
    return QL_OK;
}
