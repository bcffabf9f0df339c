/* test_cuda.c — the CUDA column of the format registry (ql_format.cuda, kernels/codecs_cuda.cu) against
 * the entries' scalar reference: every dequantize kernel the registry points at on the reference's own
 * codes (random + adversarial rows) and on random bytes, every quantize kernel on random + adversarial
 * rows. The formats are found by walking the registry, so a new CUDA kernel is tested as soon as an
 * entry points at it. Exact equality, with one documented allowance: NaN outputs of a
 * dequantize are compared as "both NaN" (payload not compared), and quantized blocks whose INPUT holds
 * NaN/Inf are reported but not required to match (there the reference's bits come from x86's NaN
 * propagation order, which the device only imitates). Without a GPU, the kernels' own per-element code is
 * run on the host (ql_cuda_emulate_*: every dequantize path, one element or eight per thread, and every
 * quantize kernel) and the device math they share (kernels/cuda_common.cuh, cuda_half.cuh, built for the
 * host by nvcc in tests/cuda_host_check.cu) is held against the reference and against real SSE results:
 * fp16 both ways, x86's NaN results, cvttss2si, roundf. GPTQ's kernels have their host run in
 * tests/test_gptq_cuda.c. Issue 16's codecs (INTn, NF4/FP4, FP8, MXFP4/NVFP4, the i-quants' and ternary
 * decoders, AQLM, EXL2, the rotated formats) are walked the same way; test_ext_shapes adds the shapes the 7x512
 * walk misses, test_backend_quantize the CUDA backend's RTN op. Without a device (or without CUDA in the build)
 * the device tests print
 * "SKIP: no CUDA device" and skip. The block layouts (kernels/blocks.h) are checked against the type table
 * in every build. The dequantize bandwidth run is a benchmark, not a test: bench/cuda_dequant_bench.c,
 * `make bench-cuda`. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "formats/format.h"
#include "kernels/blocks.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "base/ql_common.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#include "tests/cuda_host_check.h"
#endif

/* The one layout header the C codecs and the CUDA kernels share agrees with the type table (sizes of every
 * ggml block type it describes). */
static void test_block_layouts(void **state) {
    (void)state;
    static const struct {
        uint32_t type;
        size_t bytes;
        int block;
    } L[] = {
        {QL_TYPE_Q4_0, sizeof(blk_q4_0), 32},       {QL_TYPE_Q4_1, sizeof(blk_q4_1), 32},
        {QL_TYPE_Q5_0, sizeof(blk_q5_0), 32},       {QL_TYPE_Q5_1, sizeof(blk_q5_1), 32},
        {QL_TYPE_Q8_0, sizeof(blk_q8_0), 32},       {QL_TYPE_Q8_1, sizeof(blk_q8_1), 32},
        {QL_TYPE_Q2_K, sizeof(blk_q2_K), QK_K},     {QL_TYPE_Q3_K, sizeof(blk_q3_K), QK_K},
        {QL_TYPE_Q4_K, sizeof(blk_q4_K), QK_K},     {QL_TYPE_Q5_K, sizeof(blk_q5_K), QK_K},
        {QL_TYPE_Q6_K, sizeof(blk_q6_K), QK_K},     {QL_TYPE_IQ4_NL, sizeof(blk_iq4_nl), 32},
        {QL_TYPE_IQ4_XS, sizeof(blk_iq4_xs), QK_K}, {QL_TYPE_TQ1_0, sizeof(blk_tq1_0), QK_K},
        {QL_TYPE_TQ2_0, sizeof(blk_tq2_0), QK_K},   {QL_TYPE_MXFP4, sizeof(blk_mxfp4), 32},
        {QL_TYPE_IQ2_XXS, sizeof(blk_iq2_xxs), QK_K}, {QL_TYPE_IQ2_XS, sizeof(blk_iq2_xs), QK_K},
        {QL_TYPE_IQ2_S, sizeof(blk_iq2_s), QK_K},   {QL_TYPE_IQ3_XXS, sizeof(blk_iq3_xxs), QK_K},
        {QL_TYPE_IQ3_S, sizeof(blk_iq3_s), QK_K},   {QL_TYPE_IQ1_S, sizeof(blk_iq1_s), QK_K},
        {QL_TYPE_IQ1_M, sizeof(blk_iq1_m), QK_K},
    };
    for (size_t i = 0; i < sizeof L / sizeof L[0]; ++i) {
        const ql_type_info *ti = ql_type_get(L[i].type);
        assert_non_null(ti);
        if ((size_t)ti->block_bytes != L[i].bytes || ti->block != L[i].block)
            fail_msg("%s: blocks.h says %zu bytes per %d, the type table %d per %d", ti->name, L[i].bytes,
                     L[i].block, ti->block_bytes, ti->block);
    }
}

#ifdef QL_HAVE_CUDA
typedef const ql_format ctype_t;
enum { NROWS = 7, NCOLS = 512, NKIND = 16 };

static uint64_t g_rng = 0x243F6A8885A308D3ull;
static uint64_t rnd64(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rnd_n(void) {
    double u1 = (double)(rnd64() >> 11) * (1.0 / 9007199254740992.0) + 1e-300;
    double u2 = (double)(rnd64() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Row kinds: gauss, zeros, outliers 1e30 / +-65504, NaN, +-Inf, denormals, constants, tiny, alternating,
 * halves (rounding ties), huge 1e37, first-of-equal-magnitude, sparse. */
static void fill_row(float *x, int64_t n, int kind) {
    for (int64_t i = 0; i < n; ++i) {
        float g = rnd_n(), v;
        switch (kind) {
        case 0: v = g; break;
        case 1: v = 0.0f; break;
        case 2: v = i == n / 3 ? 1e30f : g; break;
        case 3: v = i == 77 ? 65504.0f : (i == 300 ? -65504.0f : g * 0.01f); break;
        case 4: v = i % 97 == 13 ? NAN : g; break;
        case 5: v = i % 131 == 7 ? INFINITY : (i % 61 == 60 ? -INFINITY : g); break;
        case 6: v = g * 1e-40f; break;
        case 7: v = 3.0f; break;
        case 8: v = -2.5f; break;
        case 9: v = g * 1e-20f; break;
        case 10: v = (i & 1) ? 1.0f : -1.0f; break;
        case 11: v = i % 32 == 0 ? 127.0f : (float)((int)(rnd64() % 255) - 127) + 0.5f; break;
        case 12: v = g * 1e37f; break;
        case 13: v = i % 16 == 0 ? -4.0f : (i % 16 == 1 ? 4.0f : g); break;
        case 14: v = rnd64() % 17 == 0 ? g * 10 : 0.0f; break;
        default: v = (rnd64() & 3) == 0 ? g * 100 : g * 0.01f; break;
        }
        x[i] = v;
    }
}

static bool block_finite(const float *x, int n) {
    for (int i = 0; i < n; ++i)
        if (!isfinite(x[i])) return false;
    return true;
}

/* Dequantized floats: identical bits, or both NaN. Returns the first bad index or -1. */
static int64_t first_float_diff(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (memcmp(&a[i], &b[i], 4) != 0) return i;
    }
    return -1;
}

typedef ql_status (*deq_fn)(ctype_t *, const void *, float *, int64_t, int64_t);
typedef ql_status (*q_fn)(ctype_t *, const float *, void *, int64_t, int64_t);

/* the entry's reference (no importance weights: the CUDA quantizers are ggml's no-imatrix path), except for a
 * format that cannot quantize without them (the i-quants whose codes a CUDA decoder reads): weights of ones */
static size_t ref_quantize(ctype_t *f, const float *x, void *q, int64_t nrows, int64_t ncols, const float *imp) {
    float *ones = NULL;
    if (!imp && f->requires_importance) {
        ones = malloc(sizeof(float) * (size_t)ncols);
        for (int64_t i = 0; i < ncols; i++) ones[i] = 1.0f;
        imp = ones;
    }
    f->quantize_rows(x, q, nrows, ncols, imp);
    free(ones);
    return (size_t)ql_format_tensor_bytes(f, ncols, nrows);
}
static bool ref_dequantize(ctype_t *f, const void *q, float *y, int64_t nrows, int64_t ncols) {
    f->dequantize_rows(q, y, nrows, ncols);
    return true;
}
static ql_status deq_host(ctype_t *f, const void *q, float *y, int64_t nrows, int64_t ncols) {
    return f->cuda->dequantize_emulated(q, y, nrows, ncols);
}
static ql_status q_host(ctype_t *f, const float *x, void *q, int64_t nrows, int64_t ncols) {
    return f->cuda->quantize_emulated(x, q, nrows, ncols);
}
static ql_status deq_device(ctype_t *f, const void *q, float *y, int64_t nrows, int64_t ncols) {
    return ql_cuda_run_dequantize(f->cuda->dequantize_dev, q, ql_format_tensor_bytes(f, ncols, nrows), y, nrows, ncols);
}
static ql_status q_device(ctype_t *f, const float *x, void *q, int64_t nrows, int64_t ncols) {
    return ql_cuda_run_quantize(f->cuda->quantize_dev, x, q, ql_format_tensor_bytes(f, ncols, nrows), nrows, ncols);
}
static bool has_cuda_dequant(ctype_t *f) { return f->cuda && f->cuda->dequantize_dev; }
static bool has_cuda_quant(ctype_t *f) { return f->cuda && f->cuda->quantize_dev; }

/* Dequantize the reference's codes of every row kind, and random bytes, with `deq`; compare with ref. */
static void check_dequant(const ctype_t *t, deq_fn deq, const char *who) {
    /* 7 rows, or 8 for a format that refuses 7 (the rotated ones need a Hadamard size) */
    const int64_t nr = ql_format_tensor_bytes(t, NCOLS, NROWS) > 0 ? NROWS : 8;
    const int64_t total = ql_format_tensor_bytes(t, NCOLS, nr);
    uint8_t *q = malloc((size_t)total);
    float *x = malloc(sizeof(float) * nr * NCOLS), *a = malloc(sizeof(float) * nr * NCOLS),
          *b = malloc(sizeof(float) * nr * NCOLS);
    /* a format whose quantizer learns codebooks (code_usage: AQLM) is a search costing seconds per tensor: its
     * decoder gets random bytes, once as they come and once with every fp16 finite (bit 6 of odd bytes clear) */
    const bool learned = t->code_usage != NULL;
    /* a whole-tensor decoder without a CUDA quantizer (EXL2's 45 mixes, the rotated formats) has a costly
     * reference encoder: every fourth row kind, rotating with the entry so the family still sees them all */
    const bool sparse = t->whole_tensor && !(t->cuda && t->cuda->quantize_dev);
    for (int kind = 0; kind <= NKIND; ++kind) {
        if (sparse && !learned && kind < NKIND && (kind + (int)t->type) % 4 != 0) continue;
        if (learned && kind < NKIND) {
            if (kind > 0) continue;
            for (int64_t i = 0; i < total; ++i) q[i] = (uint8_t)(rnd64() & (i & 1 ? 0xBF : 0xFF));
        } else if (kind < NKIND) {
            for (int r = 0; r < nr; ++r) fill_row(x + r * NCOLS, NCOLS, kind);
            assert_int_equal(ref_quantize(t, x, q, nr, NCOLS, NULL), (size_t)total);
        } else {
            for (int64_t i = 0; i < total; ++i)
                q[i] = (uint8_t)rnd64(); /* NaN/Inf/subnormal scales too */
        }
        memset(a, 0xA5, sizeof(float) * nr * NCOLS);
        ql_status st = deq(t, q, a, nr, NCOLS);
        if (st != QL_OK) fail_msg("%s dequantize %s: %s", who, t->name, ql_last_error());
        assert_true(ref_dequantize(t, q, b, nr, NCOLS));
        int64_t bad = first_float_diff(a, b, nr * NCOLS);
        if (bad >= 0)
            fail_msg("%s dequantize %s (%s): element %lld is %.9g (0x%08x), ref %.9g (0x%08x)", who, t->name,
                     kind < NKIND ? "codes of the reference" : "random bytes", (long long)bad, (double)a[bad],
                     ((uint32_t *)a)[bad], (double)b[bad], ((uint32_t *)b)[bad]);
    }
    free(q);
    free(x);
    free(a);
    free(b);
}

/* Quantize every row kind with `qf`; blocks with finite input must match the reference byte for byte. A format
 * with its own layout (row_bytes / tensor_bytes: qlab's extension formats) handles NaN/Inf by rule rather than
 * by x86's propagation, so its whole tensor must match, bad values included. */
static void check_quant(const ctype_t *t, q_fn qf, const char *who) {
    /* 7 rows, or 8 for a format that refuses 7 (the rotated ones need a Hadamard size) */
    const int64_t nr = ql_format_tensor_bytes(t, NCOLS, NROWS) > 0 ? NROWS : 8;
    const ql_format *ti = t;
    const int64_t total = ql_format_tensor_bytes(t, NCOLS, nr), bb = ti->block_bytes, nbr = NCOLS / ti->block;
    const bool own_layout = t->row_bytes || t->tensor_bytes;
    uint8_t *qa = malloc((size_t)total), *qb = malloc((size_t)total);
    float *x = malloc(sizeof(float) * nr * NCOLS);
    int loose = 0, loose_bad = 0;
    /* the INT _mse variants search 80 clippings per group: their 48 entries run every third row kind (the
     * kinds rotate with the entry, so together they still see all of them), keeping this test near 2 s */
    const bool slow = t->grid && t->grid->kind == QL_GRID_KIND_INT && t->grid->mse;
    for (int kind = 0; kind < NKIND; ++kind) {
        if (slow && (kind + (int)t->type) % 3 != 0) continue;
        for (int r = 0; r < nr; ++r) fill_row(x + r * NCOLS, NCOLS, (kind + r) % NKIND == 0 ? 0 : kind);
        memset(qa, 0xA5, (size_t)total);
        ql_status st = qf(t, x, qa, nr, NCOLS);
        if (st != QL_OK) fail_msg("%s quantize %s: %s", who, t->name, ql_last_error());
        assert_int_equal(ref_quantize(t, x, qb, nr, NCOLS, NULL), (size_t)total);
        if (own_layout) {
            for (int64_t i = 0; i < total; ++i)
                if (qa[i] != qb[i])
                    fail_msg("%s quantize %s (row kind %d): byte %lld of %lld is %02x, ref %02x", who, t->name, kind,
                             (long long)i, (long long)total, qa[i], qb[i]);
            continue;
        }
        for (int64_t blk = 0; blk < nr * nbr; ++blk) {
            const bool same = memcmp(qa + blk * bb, qb + blk * bb, (size_t)bb) == 0;
            if (!block_finite(x + blk * ti->block, ti->block)) {
                loose++;
                loose_bad += !same;
                continue;
            }
            if (!same) {
                int64_t i = 0;
                while (qa[blk * bb + i] == qb[blk * bb + i]) i++;
                fail_msg("%s quantize %s (row kind %d): block %lld byte %lld is %02x, ref %02x", who, t->name,
                         kind, (long long)blk, (long long)i, qa[blk * bb + i], qb[blk * bb + i]);
            }
        }
    }
    if (loose_bad)
        printf("  %s quantize %s: %d of %d blocks with NaN/Inf input differ (allowed)\n", who, t->name,
               loose_bad, loose);
    free(qa);
    free(qb);
    free(x);
}

/* Host run of the kernels' code: needs no device. */
static void test_emulation(void **state) {
    (void)state;
    int nd = 0, nq = 0;
    for (int i = 0; i < ql_format_count(); ++i) {
        ctype_t *f = ql_format_at(i);
        if (has_cuda_dequant(f)) {
            assert_non_null(f->cuda->dequantize_emulated);
            check_dequant(f, deq_host, "host");
            nd++;
        }
        if (has_cuda_quant(f)) {
            assert_non_null(f->cuda->quantize_emulated);
            assert_non_null(f->quantize_rows);
            check_quant(f, q_host, "host");
            nq++;
        }
    }
    assert_true(nd > 0); /* a CUDA build with an empty column would test nothing */
    printf("  host run of the registry's CUDA column: %d dequantizers, %d quantizers identical to ref\n", nd, nq);
}

/* Shapes the 512-wide check does not reach: odd widths (a row's codes end inside a byte, so the INT tile codec
 * takes its one-thread path and a per-row codec packs rows of odd bit length), ragged tiles (INT, FP8), 3/5/6-bit
 * zero streams that cross byte boundaries between groups, the tensor as one group, NF4/FP4 rows whose last
 * block is short and odd. */
static void test_ext_shapes(void **state) {
    (void)state;
    static const struct {
        const char *name;
        int64_t rows, cols;
    } S[] = {{"int4_b64", 5, 37},    {"int4_b128", 130, 3},  {"int8_b64", 65, 67},   {"int4_channel", 3, 37},
             {"int8_tensor", 3, 37}, {"int3_g32", 3, 32 * 9}, {"int5_g64_mse", 2, 64 * 9}, {"int6_g32_sym", 2, 32 * 17},
             {"fp8_e4m3_block", 130, 131}, {"fp8_e5m2_block", 3, 300}, {"fp8_e4m3_channel", 3, 37},
             {"fp8_e5m2", 5, 37}, {"nf4", 3, 101}, {"fp4", 2, 65},
             /* Paley factors on both sides (12, 20, 24 = p + 1): the rotated decoders' non-butterfly stage */
             {"e8p", 12, 96}, {"e8p_rvq3", 24, 160}, {"e8p_rvq4", 20, 24}, {"rht_int4_g64", 20, 192},
             {"rht_int3_g64", 12, 40},
             /* EXL2 with outputs not a multiple of 8 (q_scale's nibbles) and mixed bits crossing 32-bit words */
             {"exl2_10x4b64_90x3b64", 5, 96}, {"exl2_5x8b32_10x4b32_85x3b32", 3, 160}};
    for (size_t k = 0; k < QL_ARRAY_LEN(S); k++) {
        ctype_t *f = ql_format_by_name(S[k].name);
        assert_non_null(f);
        assert_non_null(f->cuda);
        const int64_t n = S[k].rows * S[k].cols, bytes = ql_format_tensor_bytes(f, S[k].cols, S[k].rows);
        assert_true(bytes > 0);
        float *x = malloc(sizeof(float) * (size_t)n), *a = malloc(sizeof(float) * (size_t)n),
              *b = malloc(sizeof(float) * (size_t)n);
        uint8_t *qa = malloc((size_t)bytes), *qb = malloc((size_t)bytes);
        for (int kind = 0; kind < NKIND; kind += 3) {
            fill_row(x, n, kind);
            memset(qa, 0x5A, (size_t)bytes);
            ref_quantize(f, x, qb, S[k].rows, S[k].cols, NULL);
            if (f->cuda->quantize_emulated) { /* the rotated formats have a decoder only */
                assert_int_equal(f->cuda->quantize_emulated(x, qa, S[k].rows, S[k].cols), QL_OK);
                if (memcmp(qa, qb, (size_t)bytes) != 0)
                    fail_msg("host quantize %s %lldx%lld (kind %d) differs from ref", f->name, (long long)S[k].rows,
                             (long long)S[k].cols, kind);
            } else {
                memcpy(qa, qb, (size_t)bytes);
            }
            assert_int_equal(f->cuda->dequantize_emulated(qa, a, S[k].rows, S[k].cols), QL_OK);
            ref_dequantize(f, qb, b, S[k].rows, S[k].cols);
            assert_int_equal(first_float_diff(a, b, n), -1);
            if (ql_cuda_available()) {
                if (f->cuda->quantize_dev) {
                    assert_int_equal(q_device(f, x, qa, S[k].rows, S[k].cols), QL_OK);
                    if (memcmp(qa, qb, (size_t)bytes) != 0) fail_msg("cuda quantize %s: odd shape differs", f->name);
                }
                assert_int_equal(deq_device(f, qa, a, S[k].rows, S[k].cols), QL_OK);
                assert_int_equal(first_float_diff(a, b, n), -1);
            }
        }
        free(x), free(a), free(b), free(qa), free(qb);
    }
}

/* ---- the device math on the host, against the reference and real SSE ---- */

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#if defined(__x86_64__)
/* What the SSE instructions the reference compiles to return, operands in this order (NaN bits included). */
static float sse_add(float a, float b) { __asm__("addss %1, %0" : "+x"(a) : "x"(b)); return a; }
static float sse_sub(float a, float b) { __asm__("subss %1, %0" : "+x"(a) : "x"(b)); return a; }
static float sse_mul(float a, float b) { __asm__("mulss %1, %0" : "+x"(a) : "x"(b)); return a; }
static float sse_div(float a, float b) { __asm__("divss %1, %0" : "+x"(a) : "x"(b)); return a; }
static float sse_sqrt(float a) { float r; __asm__("sqrtss %1, %0" : "=x"(r) : "x"(a)); return r; }
static int sse_cvtt(float a) { int r; __asm__("cvttss2si %1, %0" : "=r"(r) : "x"(a)); return r; }
#endif

/* zeros, infinities, NaNs with payloads (quiet and signalling, both signs), the edges of fp16 and int32,
 * subnormals, rounding ties, huge outliers */
static const uint32_t k_edge_bits[] = {
    0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7fa00001, 0xff812345,
    0x7f800001, 0x7fffffff, 0x00000001, 0x807fffff, 0x00800000, 0x3f000000, 0xbf000000, 0x3fc00000,
    0x40200000, 0x4f000000, 0xcf000000, 0x4effffff, 0xcf000001, 0x477fe000, 0x477ff000, 0x477fefff,
    0x38800000, 0x387fffff, 0x33800000, 0x33000000, 0x33000001, 0x7f7fffff, 0xff7fffff, 0x4b400000,
    0x3f800000, 0xbf800000, 0x5f000000, 0xdf000000, 0x7149f2ca, 0x0da24260,
};

/* Bits of a random float: every exponent equally likely, so NaN, Inf and subnormals come up often. */
static float rnd_bits_float(void) { return bitsf((uint32_t)rnd64()); }

static void test_device_math_on_host(void **state) {
    (void)state;
    /* fp16 -> fp32: all 65536 codes, bit for bit */
    for (uint32_t h = 0; h < 65536; ++h) {
        const float a = ql_cudachk_h2f((uint16_t)h), b = ql_fp16_to_fp32((uint16_t)h);
        if (fbits(a) != fbits(b)) fail_msg("h2f(0x%04x) = 0x%08x, ref 0x%08x", h, fbits(a), fbits(b));
    }
    /* fp32 -> fp16: every half's float and its neighbours and midpoints, the edge list, random bit patterns */
    int n = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint32_t u = fbits(ql_fp16_to_fp32((uint16_t)h));
        const uint32_t cand[] = {u, u + 1, u - 1, u + 0x1000, u + 0xfff, u + 0x1001};
        for (int k = 0; k < 6; ++k, ++n) {
            const float f = bitsf(cand[k]);
            if (ql_cudachk_f2h(f) != ql_fp32_to_fp16(f))
                fail_msg("f2h(0x%08x) = 0x%04x, ref 0x%04x", cand[k], ql_cudachk_f2h(f), ql_fp32_to_fp16(f));
        }
    }
    for (int i = 0; i < 1 << 20; ++i, ++n) {
        const float f = i < (int)QL_ARRAY_LEN(k_edge_bits) ? bitsf(k_edge_bits[i]) : rnd_bits_float();
        if (ql_cudachk_f2h(f) != ql_fp32_to_fp16(f))
            fail_msg("f2h(0x%08x) = 0x%04x, ref 0x%04x", fbits(f), ql_cudachk_f2h(f), ql_fp32_to_fp16(f));
    }
    /* sign-bit operations never touch a NaN's payload; finite_f is isfinite */
    for (int i = 0; i < 200000; ++i) {
        const float f = i < (int)QL_ARRAY_LEN(k_edge_bits) ? bitsf(k_edge_bits[i]) : rnd_bits_float();
        assert_int_equal(fbits(ql_cudachk_fabs_bits(f)), fbits(f) & 0x7fffffffu);
        assert_int_equal(fbits(ql_cudachk_fneg(f)), fbits(f) ^ 0x80000000u);
        assert_int_equal(ql_cudachk_finite_f(f), isfinite(f) != 0);
        /* roundf: half away from zero (a NaN stays a NaN) */
        const float r = ql_cudachk_round_away(f), want = roundf(f);
        if (!(isnan(r) && isnan(want)) && fbits(r) != fbits(want))
            fail_msg("round_away(0x%08x) = 0x%08x, roundf 0x%08x", fbits(f), fbits(r), fbits(want));
    }
    /* MXFP4's scale exponent: floorf(log2f(x)) within 4096 floats of every power of two (elsewhere the floor is
     * the exponent whatever the rounding), subnormals included */
    for (int e = 0; e < 255; ++e)
        for (int d = -4096; d < 4096; ++d) {
            const int64_t u = ((int64_t)e << 23) + d;
            if (u <= 0 || u >= 0x7f800000) continue;
            const float f = bitsf((uint32_t)u), want = floorf(log2f(f));
            if (fbits(ql_cudachk_floor_log2f(f)) != fbits(want))
                fail_msg("floor_log2f(0x%08x) = %g, floorf(log2f) %g", (uint32_t)u, (double)ql_cudachk_floor_log2f(f),
                         (double)want);
        }
#if defined(__x86_64__)
    /* the device's NaN fix-up reproduces SSE: feed it the GPU's canonical NaN for every NaN-producing pair */
    const float gpu_nan = bitsf(0x7fffffffu);
    int nan_cases = 0;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_edge_bits) + 64; ++i)
        for (size_t j = 0; j < QL_ARRAY_LEN(k_edge_bits) + 64; ++j) {
            const float a = i < QL_ARRAY_LEN(k_edge_bits) ? bitsf(k_edge_bits[i]) : rnd_bits_float();
            const float b = j < QL_ARRAY_LEN(k_edge_bits) ? bitsf(k_edge_bits[j]) : rnd_bits_float();
            const float x86[5] = {sse_add(a, b), sse_sub(a, b), sse_mul(a, b), sse_div(a, b), sse_sqrt(a)};
            for (int op = 0; op < 5; ++op) {
                if (!isnan(x86[op])) continue;
                const float got = ql_cudachk_x86_nan(gpu_nan, a, op == 4 ? a : b);
                nan_cases++;
                if (fbits(got) != fbits(x86[op]))
                    fail_msg("x86_nan op %d (0x%08x, 0x%08x): 0x%08x, SSE 0x%08x", op, fbits(a), fbits(b),
                             fbits(got), fbits(x86[op]));
            }
            /* a number passes through untouched */
            if (!isnan(x86[0])) assert_int_equal(fbits(ql_cudachk_x86_nan(x86[0], a, b)), fbits(x86[0]));
        }
    /* cvttss2si: truncation, INT_MIN for NaN and out of range */
    for (int i = 0; i < 400000; ++i) {
        const float f = i < (int)QL_ARRAY_LEN(k_edge_bits) ? bitsf(k_edge_bits[i])
                        : (i & 1)                          ? rnd_bits_float()
                                                           : (float)rnd_n() * 3e9f;
        if (ql_cudachk_cvtt_x86(f) != sse_cvtt(f))
            fail_msg("cvtt_x86(0x%08x) = %d, cvttss2si %d", fbits(f), ql_cudachk_cvtt_x86(f), sse_cvtt(f));
    }
    printf("  device math on the host: h2f x65536, f2h x%d, x86 NaN results x%d (vs SSE), cvttss2si, roundf\n", n,
           nan_cases);
#else
    printf("  device math on the host: fp16 and rounding checked; SSE comparisons need x86-64\n");
#endif
}

static bool have_device(void) {
    if (ql_cuda_available()) return true;
    printf("SKIP: no CUDA device\n");
    return false;
}

static void test_device_dequantize(void **state) {
    (void)state;
    if (!have_device()) skip();
    for (int i = 0; i < ql_format_count(); ++i)
        if (has_cuda_dequant(ql_format_at(i))) check_dequant(ql_format_at(i), deq_device, "cuda");
    /* 15 values: not a multiple of 8, so the one-element-per-thread kernel runs */
    const char *odd[] = {"f16", "bf16"};
    for (int t = 0; t < 2; ++t) {
        ctype_t *f = ql_format_by_name(odd[t]);
        uint16_t h[15];
        float a[15], b[15];
        for (int i = 0; i < 15; ++i) h[i] = (uint16_t)rnd64();
        assert_int_equal(deq_device(f, h, a, 5, 3), QL_OK);
        assert_true(ref_dequantize(f, h, b, 5, 3));
        assert_int_equal(first_float_diff(a, b, 15), -1);
    }
}

static void test_device_quantize(void **state) {
    (void)state;
    if (!have_device()) skip();
    for (int i = 0; i < ql_format_count(); ++i)
        if (has_cuda_quant(ql_format_at(i))) check_quant(ql_format_at(i), q_device, "cuda");
    /* a big matrix: many thread blocks, grid-stride loops */
    const int64_t nrows = 300, ncols = 4096;
    float *x = malloc(sizeof(float) * (size_t)(nrows * ncols));
    for (int64_t i = 0; i < nrows * ncols; ++i) x[i] = rnd_n();
    for (int i = 0; i < ql_format_count(); ++i) {
        ctype_t *f = ql_format_at(i);
        if (!has_cuda_quant(f)) continue;
        const size_t n = (size_t)ql_format_tensor_bytes(f, ncols, nrows);
        uint8_t *a = malloc(n), *b = malloc(n);
        assert_int_equal(q_device(f, x, a, nrows, ncols), QL_OK);
        ref_quantize(f, x, b, nrows, ncols, NULL);
        if (memcmp(a, b, n) != 0) fail_msg("cuda quantize %s: 300x4096 differs from ref", f->name);
        free(a);
        free(b);
    }
    free(x);
}

/* RTN through the CUDA backend's quantize op (what `qlab quant --device cuda` runs): the reference's bytes for
 * every format with a CUDA quantizer; refused (so the caller quantizes on the host) without a device, for a
 * format without a kernel, and with importance weights the format would use. */
static void test_backend_quantize(void **state) {
    (void)state;
    const ql_backend_ops *be = ql_backend_find("cuda");
    assert_non_null(be);
    assert_non_null(be->quantize);
    enum { R = 16, C = 512 };
    float *x = malloc(sizeof(float) * R * C), imp[C];
    for (int i = 0; i < R * C; i++) x[i] = rnd_n();
    for (int i = 0; i < C; i++) imp[i] = 1.0f + (float)(i % 7);
    uint8_t q[R * C * 5];
    assert_int_equal(be->quantize(ql_format_by_name("iq2_xxs"), x, q, R, C, NULL), QL_ERR_UNSUPPORTED); /* decode only */
    assert_int_equal(be->quantize(ql_format_by_name("exl2_4b128"), x, q, R, C, NULL), QL_ERR_UNSUPPORTED); /* decoder */
    assert_int_equal(be->quantize(ql_format_by_name("f32"), x, q, R, C, NULL), QL_ERR_UNSUPPORTED); /* no column */
    assert_int_equal(be->quantize(ql_format_by_name("q4_k"), x, q, R, C, imp), QL_ERR_UNSUPPORTED);
    if (!have_device()) {
        assert_int_equal(be->quantize(ql_format_by_name("q4_k"), x, q, R, C, NULL), QL_ERR_UNSUPPORTED);
        free(x);
        skip();
    }
    int n = 0;
    for (int i = 0; i < ql_format_count(); ++i) {
        ctype_t *f = ql_format_at(i);
        if (!has_cuda_quant(f)) continue;
        const int64_t bytes = ql_format_tensor_bytes(f, C, R);
        uint8_t *a = malloc((size_t)bytes), *b = malloc((size_t)bytes);
        if (be->quantize(f, x, a, R, C, NULL) != QL_OK) fail_msg("backend quantize %s: %s", f->name, ql_last_error());
        ref_quantize(f, x, b, R, C, NULL);
        if (memcmp(a, b, (size_t)bytes) != 0) fail_msg("backend quantize %s differs from ref", f->name);
        free(a);
        free(b);
        n++;
    }
    printf("  cuda backend RTN: %d formats identical to ref\n", n);
    free(x);
}

static void test_errors(void **state) {
    (void)state;
    float x[64] = {0};
    uint8_t q[64] = {0};
    /* shape errors do not need a device */
    assert_int_equal(ql_cuda_dequantize_q4_k_dev(q, x, 1, 100, NULL), QL_ERR_ARG);
    assert_int_equal(ql_cuda_quantize_q4_0_emulated(x, q, 1, 33), QL_ERR_ARG);
    assert_int_equal(ql_cuda_run_quantize(NULL, x, q, 64, 1, 256), QL_ERR_UNSUPPORTED);
    assert_null(ql_format_by_name("f32")->cuda); /* no kernel: the column is empty there */
    if (!have_device()) skip();
    assert_int_equal(ql_cuda_run_dequantize(ql_cuda_dequantize_q8_0_dev, q, 0, x, 0, 32), QL_OK); /* zero rows */
    assert_int_equal(ql_cuda_dequantize_q8_0_dev(NULL, NULL, 0, 32, NULL), QL_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_layouts),
        cmocka_unit_test(test_device_math_on_host),
        cmocka_unit_test(test_emulation),
        cmocka_unit_test(test_ext_shapes),
        cmocka_unit_test(test_backend_quantize),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_device_dequantize),
        cmocka_unit_test(test_device_quantize),
    };
    return cmocka_run_group_tests_name("cuda", tests, NULL, NULL);
}

#else /* built without CUDA */

static void test_no_cuda(void **state) {
    (void)state;
    printf("SKIP: no CUDA device (this build has no CUDA: nvcc was not found)\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_block_layouts), cmocka_unit_test(test_no_cuda)};
    return cmocka_run_group_tests_name("cuda", tests, NULL, NULL);
}
#endif
