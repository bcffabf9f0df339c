/* format.c — the format registry table and the generic drivers around it (threads, fast-path
 * selection, sizes, llama.cpp identity lookups). Each entry is defined in its own formats/fmt_*.c file;
 * adding a format adds one line to g_formats below. */
#include "formats/format.h"
#include "formats/fmt_int_family.h"
#include "formats/fmt_exl2_list.h"
#include "kernels/ggml_types.h"
#include "base/parallel.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern const ql_format ql_fmt_f32, ql_fmt_f16, ql_fmt_bf16;
extern const ql_format ql_fmt_q4_0, ql_fmt_q4_1, ql_fmt_q5_0, ql_fmt_q5_1, ql_fmt_q8_0;
extern const ql_format ql_fmt_q2_k, ql_fmt_q3_k, ql_fmt_q4_k, ql_fmt_q5_k, ql_fmt_q6_k;
extern const ql_format ql_fmt_iq4_nl, ql_fmt_iq4_xs;
extern const ql_format ql_fmt_iq2_xxs, ql_fmt_iq2_xs, ql_fmt_iq2_s, ql_fmt_iq3_xxs, ql_fmt_iq3_s, ql_fmt_iq1_s,
    ql_fmt_iq1_m, ql_fmt_tq1_0, ql_fmt_tq2_0, ql_fmt_q8_k;
extern const ql_format ql_fmt_mxfp4, ql_fmt_nvfp4;
/* qlab extension types (docs/formats.md): INTn family from the X-macro in fmt_ext.h */
QL_FMT_INT_FAMILY(QL_FMT_INT_EXTERN)
extern const ql_format ql_fmt_int4_channel, ql_fmt_int8_channel, ql_fmt_int8_tensor;
extern const ql_format ql_fmt_int4_b64, ql_fmt_int4_b128, ql_fmt_int8_b64, ql_fmt_int8_b128;
extern const ql_format ql_fmt_nf4, ql_fmt_nf4_dq, ql_fmt_fp4, ql_fmt_fp4_dq;
extern const ql_format ql_fmt_bnb_int8;
extern const ql_format ql_fmt_e8p, ql_fmt_e8p_rvq3, ql_fmt_e8p_rvq4, ql_fmt_rht_int2_g64, ql_fmt_rht_int3_g64,
    ql_fmt_rht_int4_g64;
extern const ql_format ql_fmt_fp8_e4m3, ql_fmt_fp8_e5m2, ql_fmt_fp8_e4m3_channel, ql_fmt_fp8_e5m2_channel,
    ql_fmt_fp8_e4m3_block, ql_fmt_fp8_e5m2_block;
extern const ql_format ql_fmt_aqlm_1x16, ql_fmt_aqlm_2x8, ql_fmt_aqlm_1x8, ql_fmt_aqlm_4x8;
#define QL_FMT_EXL2_EXTERN(i) extern const ql_format ql_fmt_exl2_##i;
QL_FMT_EXL2_LIST(QL_FMT_EXL2_EXTERN)

/* The table. Order is the catalogue order. */
static const ql_format *const g_formats[] = {
    &ql_fmt_f32, &ql_fmt_f16, &ql_fmt_bf16,
    &ql_fmt_q8_0, &ql_fmt_q6_k, &ql_fmt_q5_k, &ql_fmt_q5_1, &ql_fmt_q5_0, &ql_fmt_q4_k, &ql_fmt_q4_1, &ql_fmt_q4_0,
    &ql_fmt_iq4_nl, &ql_fmt_iq4_xs, &ql_fmt_q3_k, &ql_fmt_q2_k,
    /* decode-only ggml types (files llama.cpp writes that qlab loads and measures), then the FP4 microscaling types */
    &ql_fmt_iq3_s, &ql_fmt_iq3_xxs, &ql_fmt_iq2_s, &ql_fmt_iq2_xs, &ql_fmt_iq2_xxs, &ql_fmt_iq1_m, &ql_fmt_iq1_s,
    &ql_fmt_tq1_0, &ql_fmt_tq2_0,
    &ql_fmt_mxfp4,
    &ql_fmt_nvfp4,
    &ql_fmt_q8_k,
    /* qlab extension types: llama.cpp cannot load files that use them */
    &ql_fmt_fp8_e4m3, &ql_fmt_fp8_e5m2, &ql_fmt_fp8_e4m3_channel, &ql_fmt_fp8_e5m2_channel,
    &ql_fmt_fp8_e4m3_block, &ql_fmt_fp8_e5m2_block,
    &ql_fmt_int8_tensor, &ql_fmt_int8_channel, &ql_fmt_int8_b64, &ql_fmt_int8_b128,
    &ql_fmt_int4_channel, &ql_fmt_int4_b64, &ql_fmt_int4_b128,
    &ql_fmt_nf4, &ql_fmt_nf4_dq, &ql_fmt_fp4, &ql_fmt_fp4_dq,
    &ql_fmt_bnb_int8,
    &ql_fmt_aqlm_4x8, &ql_fmt_aqlm_2x8, &ql_fmt_aqlm_1x16, &ql_fmt_aqlm_1x8,
    QL_FMT_INT_FAMILY(QL_FMT_INT_REF)
    &ql_fmt_e8p, &ql_fmt_e8p_rvq3, &ql_fmt_e8p_rvq4, &ql_fmt_rht_int2_g64, &ql_fmt_rht_int3_g64, &ql_fmt_rht_int4_g64,
#define QL_FMT_EXL2_REF(i) &ql_fmt_exl2_##i,
    QL_FMT_EXL2_LIST(QL_FMT_EXL2_REF)
};

static bool g_force_ref;

static int64_t ext_tensor_bytes(uint32_t type, int64_t ne0, int64_t nrows);

/* runs before main so the GGUF reader knows extension types before any file is opened */
__attribute__((constructor)) static void formats_init(void) {
    const char *e = getenv("QL_FORCE_REF");
    g_force_ref = e && *e && strcmp(e, "0") != 0;
    for (size_t i = 0; i < QL_ARRAY_LEN(g_formats); i++) {
        const ql_format *f = g_formats[i];
        if (!ql_type_get(f->type)) ql_type_register(f->type, f->name, f->block, f->block_bytes);
    }
    ql_type_set_ext_sizer(ext_tensor_bytes);
}

const ql_format *ql_format_at(int i) {
    return i >= 0 && i < (int)QL_ARRAY_LEN(g_formats) ? g_formats[i] : NULL;
}

int ql_format_count(void) { return (int)QL_ARRAY_LEN(g_formats); }

const ql_format *ql_format_by_name(const char *name) {
    for (size_t i = 0; i < QL_ARRAY_LEN(g_formats); i++)
        if (strcasecmp(g_formats[i]->name, name) == 0) return g_formats[i];
    return NULL;
}

const ql_format *ql_format_by_type(uint32_t type) {
    for (size_t i = 0; i < QL_ARRAY_LEN(g_formats); i++)
        if (g_formats[i]->type == type) return g_formats[i];
    return NULL;
}

uint32_t ql_format_llama_act_type(uint32_t type) {
    const ql_format *f = ql_format_by_type(type);
    return f && f->llama ? f->llama->act_type : QL_TYPE_F32;
}

int ql_format_llama_file_type(const ql_format *f) { return f && f->llama ? f->llama->file_type : QL_FTYPE_NONE; }

const ql_format *ql_format_fallback(const ql_format *f) {
    const ql_format *n = f->fallback ? ql_format_by_name(f->fallback) : NULL;
    return n ? n : ql_format_by_name("f16");
}

const ql_grid_spec ql_grid_none = {.kind = QL_GRID_KIND_NONE};

const char *ql_format_family_name(ql_format_family f) {
    static const char *const names[QL_FAMILY_COUNT] = {
        [QL_FAMILY_FLOAT] = "float",          [QL_FAMILY_GGML_LEGACY] = "ggml-legacy",
        [QL_FAMILY_GGML_K] = "ggml-k",        [QL_FAMILY_GGML_IQ] = "ggml-iq",
        [QL_FAMILY_GGML_TERNARY] = "ggml-ternary", [QL_FAMILY_FP4_MICRO] = "fp4-microscaling",
        [QL_FAMILY_INT] = "int",              [QL_FAMILY_BNB4] = "bnb4",
        [QL_FAMILY_FP8] = "fp8",              [QL_FAMILY_ROTATED] = "rotated",
        [QL_FAMILY_ADDITIVE] = "additive-codebook", [QL_FAMILY_EXL2] = "exl2",
    };
    return f > QL_FAMILY_UNSET && f < QL_FAMILY_COUNT ? names[f] : NULL;
}

bool ql_format_fits(const ql_format *f, int64_t ncols) {
    if (ncols <= 0) return false;
    if (f->row_bytes || f->tensor_bytes) return true;
    return ncols % f->block == 0;
}

int64_t ql_format_tensor_bytes(const ql_format *f, int64_t ncols, int64_t nrows) {
    if (!ql_format_fits(f, ncols) || nrows < 0) return -1;
    if (f->shape_ok && !f->shape_ok(ncols, nrows, NULL, 0)) return -1;
    if (f->tensor_bytes) return f->tensor_bytes(ncols, nrows);
    int64_t rb = f->row_bytes ? f->row_bytes(ncols) : ncols / f->block * f->block_bytes;
    return rb * nrows;
}

static int64_t ext_tensor_bytes(uint32_t type, int64_t ne0, int64_t nrows) {
    const ql_format *f = ql_format_by_type(type);
    return f ? ql_format_tensor_bytes(f, ne0, nrows) : -1;
}

typedef struct {
    const ql_format *f;
    const float *src;
    const void *qsrc;
    void *dst;
    float *fdst;
    int64_t ncols, row_bytes;
    const float *importance;
    bool fast;
} rows_job;

static void quant_range(void *ctx, int w, int64_t r0, int64_t r1) {
    (void)w;
    rows_job *j = ctx;
    if (r1 <= r0) return;
    ql_quantize_fn fn = j->fast && j->f->simd && j->f->simd->quantize_rows ? j->f->simd->quantize_rows
                                                                          : j->f->quantize_rows;
    fn(j->src + r0 * j->ncols, (uint8_t *)j->dst + r0 * j->row_bytes, r1 - r0, j->ncols, j->importance);
}

static void dequant_range(void *ctx, int w, int64_t r0, int64_t r1) {
    (void)w;
    rows_job *j = ctx;
    if (r1 <= r0) return;
    ql_dequantize_fn fn = j->fast && j->f->simd && j->f->simd->dequantize_rows ? j->f->simd->dequantize_rows
                                                                              : j->f->dequantize_rows;
    fn((const uint8_t *)j->qsrc + r0 * j->row_bytes, j->fdst + r0 * j->ncols, r1 - r0, j->ncols);
}

ql_status ql_format_quantize(const ql_format *f, const float *src, void *dst, int64_t nrows, int64_t ncols,
                             const float *importance, int n_threads) {
    if (!f->quantize_rows) return ql_fail(QL_ERR_UNSUPPORTED, "format %s can be read but not written", f->name);
    if (!ql_format_fits(f, ncols))
        return ql_fail(QL_ERR_ARG, "format %s needs rows that are a multiple of %d (got %lld)", f->name, f->block,
                       (long long)ncols);
    char why[256];
    if (f->shape_ok && !f->shape_ok(ncols, nrows, why, sizeof why))
        return ql_fail(QL_ERR_ARG, "format %s cannot store a %lld x %lld tensor: %s", f->name, (long long)nrows,
                       (long long)ncols, why);
    /* the i-quant quantizers abort without weights, as ggml's do: refuse here instead */
    if (f->requires_importance && !importance)
        return ql_fail(QL_ERR_ARG, "%s needs an importance matrix (--imatrix)", f->name);
    rows_job j = {.f = f, .src = src, .dst = dst, .ncols = ncols, .importance = importance, .fast = !g_force_ref};
    if (f->whole_tensor) {
        if (f->quantize_whole_threads && !importance)
            f->quantize_whole_threads(src, dst, nrows, ncols, ncols * nrows < (1 << 16) ? 1 : n_threads);
        else
            quant_range(&j, 0, 0, nrows);
        return QL_OK;
    }
    j.row_bytes = ql_format_tensor_bytes(f, ncols, 1);
    ql_parallel_for(ncols * nrows < (1 << 16) ? 1 : n_threads, nrows, quant_range, &j);
    return QL_OK;
}

ql_status ql_format_dequantize(const ql_format *f, const void *src, float *dst, int64_t nrows, int64_t ncols,
                               int n_threads) {
    if (!ql_format_fits(f, ncols))
        return ql_fail(QL_ERR_ARG, "format %s: rows of %lld do not fit", f->name, (long long)ncols);
    char why[256];
    if (f->shape_ok && !f->shape_ok(ncols, nrows, why, sizeof why))
        return ql_fail(QL_ERR_ARG, "format %s cannot hold a %lld x %lld tensor: %s", f->name, (long long)nrows,
                       (long long)ncols, why);
    rows_job j = {.f = f, .qsrc = src, .fdst = dst, .ncols = ncols, .fast = !g_force_ref};
    if (f->whole_tensor) {
        dequant_range(&j, 0, 0, nrows);
        return QL_OK;
    }
    j.row_bytes = ql_format_tensor_bytes(f, ncols, 1);
    ql_parallel_for(ncols * nrows < (1 << 16) ? 1 : n_threads, nrows, dequant_range, &j);
    return QL_OK;
}


/* ---- quantize-then-dequantize ---- */

ql_status ql_format_roundtrip(const ql_format *f, const float *src, float *out, int64_t nrows, int64_t ncols,
                              const float *importance, int n_threads) {
    const int64_t bytes = ql_format_fits(f, ncols) ? ql_format_tensor_bytes(f, ncols, nrows) : -1;
    char why[256];
    if (bytes < 0 && f->shape_ok && ql_format_fits(f, ncols) && !f->shape_ok(ncols, nrows, why, sizeof why))
        return ql_fail(QL_ERR_ARG, "format %s cannot store a %lld x %lld tensor: %s", f->name, (long long)nrows,
                       (long long)ncols, why);
    if (bytes < 0)
        return ql_fail(QL_ERR_ARG, "format %s cannot store rows of %lld (blocks of %d)", f->name, (long long)ncols,
                       f->block);
    void *codes = malloc((size_t)bytes + 1); /* +1: a 0-byte tensor still gets a pointer */
    if (!codes) return ql_fail(QL_ERR_NOMEM, "out of memory for %lld bytes of %s codes", (long long)bytes, f->name);
    ql_status s = ql_format_quantize(f, src, codes, nrows, ncols, importance, n_threads);
    if (!s) s = ql_format_dequantize(f, codes, out, nrows, ncols, n_threads);
    free(codes);
    return s;
}
