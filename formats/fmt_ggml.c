/* fmt_ggml.c — traits entries for ggml's own types: plain floats, the legacy and K block formats, IQ4,
 * the decode-only types (IQ1..IQ3, TQ, Q8_K) that qlab loads but does not write, and the code grids
 * GPTQ uses on the writable ones (parsers and packers below). The codecs are kernels/ggml_quants_ref.c
 * (bit-exact with llama.cpp); fast twins are in kernels/simd_*.c (kernels/simd.h).
 * MXFP4 and NVFP4 have their own files (fmt_mxfp4.c, fmt_nvfp4.c). */
#include "formats/format.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_quants.h"
#include "kernels/iq_lattice.h"
#include "kernels/simd.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#endif

#include <string.h>

#define QK_K 256

/* ---- code grids for error-feedback methods (formats/format_grid.h) ----
 * parsers: block bytes -> (a, b, o) of every sub-block, s-th at [s * ld], with the dequantizer's
 * arithmetic; packers: codes [block] -> the block's code fields (every code bit rewritten). */

static inline float f16_at(const uint8_t *p) { return ql_fp16_to_fp32((uint16_t)(p[0] | (p[1] << 8))); }

static void parse_q4_0(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = -8.0f;
}
static void parse_q4_1(const uint8_t *x, float *a, float *b, float *o, int64_t ld) { /* Q5_1 too: d, m first */
    (void)ld;
    a[0] = f16_at(x), b[0] = f16_at(x + 2), o[0] = 0.0f;
}
static void parse_q5_0(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = -16.0f;
}
static void parse_q8_0(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = -128.0f; /* code = q + 128 */
}
static void parse_iq4_nl(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = 0.0f;
}
static void parse_q2_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x + 80), dmin = f16_at(x + 82);
    for (int s = 0; s < 16; s++) {
        uint8_t sc = x[s];
        float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
        a[s * ld] = dl, b[s * ld] = -ml, o[s * ld] = 0.0f;
    }
}
static int q3_k_scale(const uint8_t *scales, int j) {
    int sc = j < 8 ? scales[j] & 0xF : scales[j - 8] >> 4;
    return (sc | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}
static void parse_q3_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x + 108);
    for (int s = 0; s < 16; s++)
        a[s * ld] = d * q3_k_scale(x + 96, s), b[s * ld] = 0.0f, o[s * ld] = -4.0f;
}
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}
static void parse_q45_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x), dmin = f16_at(x + 2);
    for (int s = 0; s < 8; s++) {
        uint8_t sc, m;
        scale_min_k4(s, x + 4, &sc, &m);
        a[s * ld] = d * sc, b[s * ld] = -(dmin * m), o[s * ld] = 0.0f;
    }
}
static void parse_q6_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x + 208);
    for (int s = 0; s < 16; s++)
        a[s * ld] = d * (int8_t)x[192 + s], b[s * ld] = 0.0f, o[s * ld] = -32.0f;
}
static void parse_iq4_xs(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x);
    const unsigned sh = (unsigned)(x[2] | (x[3] << 8));
    for (int ib = 0; ib < 8; ib++) {
        int ls = ((x[4 + ib / 2] >> 4 * (ib % 2)) & 0xf) | (((sh >> 2 * ib) & 3) << 4);
        a[ib * ld] = d * (ls - 32), b[ib * ld] = 0.0f, o[ib * ld] = 0.0f;
    }
}

static void pack_nibbles32(uint8_t *qs, const uint8_t *c) {
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)((c[j] & 0xF) | ((c[j + 16] & 0xF) << 4));
}
static void pack_q4_0(uint8_t *x, const uint8_t *c) { pack_nibbles32(x + 2, c); }
static void pack_q4_1(uint8_t *x, const uint8_t *c) { pack_nibbles32(x + 4, c); }
static void pack_q5(uint8_t *qh, uint8_t *qs, const uint8_t *c) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++)
        h |= (uint32_t)((c[i] >> 4) & 1) << i;
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
    pack_nibbles32(qs, c);
}
static void pack_q5_0(uint8_t *x, const uint8_t *c) { pack_q5(x + 2, x + 6, c); }
static void pack_q5_1(uint8_t *x, const uint8_t *c) { pack_q5(x + 4, x + 8, c); }
static void pack_q8_0(uint8_t *x, const uint8_t *c) {
    for (int j = 0; j < 32; j++)
        x[2 + j] = (uint8_t)(int8_t)((int)c[j] - 128);
}
static void pack_2bit256(uint8_t *qs, const uint8_t *c) { /* Q2_K / Q3_K low bits */
    memset(qs, 0, 64);
    for (int e = 0; e < QK_K; e++)
        qs[(e / 128) * 32 + e % 32] |= (uint8_t)((c[e] & 3) << (2 * ((e % 128) / 32)));
}
static void pack_q2_k(uint8_t *x, const uint8_t *c) { pack_2bit256(x + 16, c); }
static void pack_q3_k(uint8_t *x, const uint8_t *c) {
    memset(x, 0, 32);
    for (int e = 0; e < QK_K; e++)
        x[e % 32] |= (uint8_t)(((c[e] >> 2) & 1) << (e / 32));
    pack_2bit256(x + 32, c);
}
static void pack_q4_k(uint8_t *x, const uint8_t *c) {
    uint8_t *qs = x + 16;
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++)
            qs[32 * k + l] = (uint8_t)((c[64 * k + l] & 0xF) | ((c[64 * k + 32 + l] & 0xF) << 4));
}
static void pack_q5_k(uint8_t *x, const uint8_t *c) {
    uint8_t *qh = x + 16, *ql = x + 48;
    memset(qh, 0, 32);
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) {
            uint8_t lo = c[64 * k + l], hi = c[64 * k + 32 + l];
            ql[32 * k + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
            qh[l] |= (uint8_t)(((lo >> 4) & 1) << (2 * k) | ((hi >> 4) & 1) << (2 * k + 1));
        }
}
static void pack_q6_k(uint8_t *x, const uint8_t *c) {
    uint8_t *ql = x, *qh = x + 128;
    for (int h = 0; h < 2; h++) {
        const uint8_t *L = c + 128 * h;
        for (int l = 0; l < 32; l++) {
            ql[64 * h + l] = (uint8_t)((L[l] & 0xF) | ((L[l + 64] & 0xF) << 4));
            ql[64 * h + l + 32] = (uint8_t)((L[l + 32] & 0xF) | ((L[l + 96] & 0xF) << 4));
            qh[32 * h + l] = (uint8_t)(((L[l] >> 4) & 3) | (((L[l + 32] >> 4) & 3) << 2) |
                                       (((L[l + 64] >> 4) & 3) << 4) | (((L[l + 96] >> 4) & 3) << 6));
        }
    }
}
static void pack_iq4_nl(uint8_t *x, const uint8_t *c) { pack_nibbles32(x + 2, c); }
static void pack_iq4_xs(uint8_t *x, const uint8_t *c) {
    for (int ib = 0; ib < 8; ib++)
        pack_nibbles32(x + 8 + 16 * ib, c + 32 * ib);
}

static const float k_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

#define GRID(sub_, kmin_, kmax_, table_, parse_, pack_)                                                  \
    (&(const ql_grid_spec){.kind = QL_GRID_KIND_BLOCK, .sub = sub_, .kmin = kmin_, .kmax = kmax_,         \
                           .table = table_, .parse = parse_, .pack = pack_})

/* ---- entries ---- */

#define LLAMA(ftype, act) (&(const ql_llama_identity){.file_type = (ftype), .act_type = (act)})
#define SIMD(lname) (&(const ql_format_ops){ql_quantize_rows_##lname##_fast, ql_dequantize_rows_##lname##_fast})

/* The CUDA column (kernels/codecs_cuda.cu): dequantize only, or both directions. Empty without nvcc. */
#ifdef QL_HAVE_CUDA
#define CUDA_DQ(l)                                                                                       \
    (&(const ql_format_cuda_ops){.dequantize_dev = ql_cuda_dequantize_##l##_dev,                          \
                                 .dequantize_emulated = ql_cuda_dequantize_##l##_emulated})
#define CUDA_QDQ(l)                                                                                      \
    (&(const ql_format_cuda_ops){.quantize_dev = ql_cuda_quantize_##l##_dev,                              \
                                 .dequantize_dev = ql_cuda_dequantize_##l##_dev,                          \
                                 .quantize_emulated = ql_cuda_quantize_##l##_emulated,                    \
                                 .dequantize_emulated = ql_cuda_dequantize_##l##_emulated})
/* both directions and GPTQ's block fix on the device (the scale search with importance) */
#define CUDA_QDQ_FIX(l)                                                                                  \
    (&(const ql_format_cuda_ops){.quantize_dev = ql_cuda_quantize_##l##_dev,                              \
                                 .dequantize_dev = ql_cuda_dequantize_##l##_dev,                          \
                                 .quantize_emulated = ql_cuda_quantize_##l##_emulated,                    \
                                 .dequantize_emulated = ql_cuda_dequantize_##l##_emulated,                \
                                 .grid_fix_dev = ql_cuda_grid_fix_##l##_dev,                              \
                                 .grid_fix_emulated = ql_cuda_grid_fix_##l##_emulated})
#else
#define CUDA_DQ(l) NULL
#define CUDA_QDQ(l) NULL
#define CUDA_QDQ_FIX(l) NULL
#endif

/* A writable ggml type: reference rows codec from kernels/ggml_quants.h. */
#define ENTRY(lname, TYPE, fam, blk, bytes, imp, tol, ...)                                               \
    const ql_format ql_fmt_##lname = {.name = #lname, .type = TYPE, .family = fam, .block = blk,         \
                                      .block_bytes = bytes, .bpw = 8.0 * (bytes) / (blk),                \
                                      .uses_importance = imp, .tolerance = tol,                          \
                                      .quantize_rows = ql_quantize_rows_##lname##_ref,                   \
                                      .dequantize_rows = ql_dequantize_rows_##lname##_ref, __VA_ARGS__};
/* A decode-only ggml type. */
#define DECODE_ENTRY(lname, TYPE, fam, blk, bytes, ...)                                                  \
    const ql_format ql_fmt_##lname = {.name = #lname, .type = TYPE, .family = fam, .block = blk,         \
                                      .block_bytes = bytes, .bpw = 8.0 * (bytes) / (blk),                \
                                      .dequantize_rows = ql_dequantize_rows_##lname##_ref,               \
                                      .grid = QL_GRID_NONE, __VA_ARGS__};

ENTRY(f32, QL_TYPE_F32, QL_FAMILY_FLOAT, 1, 4, false, 0.0, .llama = LLAMA(0, QL_TYPE_F32), .grid = QL_GRID_NONE,
      .label = "f32", .summary = "IEEE float32: the unquantized reference",
      .explain = "The original: every weight is a 32-bit float. Nothing is lost, and nothing is saved. Every "
                 "other format is judged against this one.")
ENTRY(f16, QL_TYPE_F16, QL_FAMILY_FLOAT, 1, 2, false, 0.001, .llama = LLAMA(1, QL_TYPE_F16), .cuda = CUDA_DQ(f16),
      .grid = QL_GRID_NONE, .simd = SIMD(f16), .label = "f16", .summary = "IEEE float16 (round to nearest even)",
      .explain = "Each weight becomes a 16-bit float: half the memory of f32 and, for trained weights, almost "
                 "no loss. Weights larger than 65504 would overflow, which trained models practically never "
                 "have.")
ENTRY(bf16, QL_TYPE_BF16, QL_FAMILY_FLOAT, 1, 2, false, 0.005, .llama = LLAMA(32, QL_TYPE_BF16), .cuda = CUDA_DQ(bf16),
      .grid = QL_GRID_NONE, .simd = SIMD(bf16), .label = "bf16",
      .summary = "bfloat16: float32's range, 8 bits of mantissa",
      .explain = "bfloat16 keeps float32's 8 exponent bits and drops mantissa bits: the same range as f32 with "
                 "about 3 significant digits. Training frameworks use it; it never overflows where f32 would "
                 "not.")
ENTRY(q8_0, QL_TYPE_Q8_0, QL_FAMILY_GGML_LEGACY, 32, 34, false, 0.01, .llama = LLAMA(7, QL_TYPE_Q8_0), .cuda = CUDA_QDQ_FIX(q8_0),
      .grid = GRID(32, 1, 255, NULL, parse_q8_0, pack_q8_0), /* q in [-127, 127] as ggml writes */
      .simd = SIMD(q8_0), .label = "q80", .summary = "ggml Q8_0: int8 codes, one fp16 scale per 32 weights",
      .explain = "Weights are cut into blocks of 32. Each block stores one scale (the block's largest magnitude "
                 "/ 127, as fp16) and 32 signed 8-bit integers. 8.5 bits per weight, and the error is usually "
                 "below what changes a model's answers.")
ENTRY(q6_k, QL_TYPE_Q6_K, QL_FAMILY_GGML_K, 256, 210, true, 0.03, .llama = LLAMA(18, QL_TYPE_Q8_K), .cuda = CUDA_QDQ_FIX(q6_k),
      .fallback = "q8_0", .grid = GRID(16, 0, 63, NULL, parse_q6_k, pack_q6_k), .simd = SIMD(q6_k), .label = "q6k",
      .summary = "ggml Q6_K: 6-bit codes, int8 scales per 16, fp16 per 256",
      .explain = "A K-quant: super-blocks of 256 weights split into 16 blocks of 16. Each weight gets 6 bits, "
                 "each small block an 8-bit scale, and the super-block an fp16 scale for those scales. The two "
                 "levels of scales cost little and follow the weights closely.")
ENTRY(q5_k, QL_TYPE_Q5_K, QL_FAMILY_GGML_K, 256, 176, true, 0.05, .llama = LLAMA(16, QL_TYPE_Q8_K), .cuda = CUDA_QDQ_FIX(q5_k),
      .fallback = "q5_1", .grid = GRID(32, 0, 31, NULL, parse_q45_k, pack_q5_k), .simd = SIMD(q5_k),
      .label = "q5k", .summary = "ggml Q5_K: 5-bit codes, 6-bit scale+min per 32, fp16 per 256",
      .explain = "A K-quant at 5 bits: super-blocks of 256 in 8 blocks of 32, each block with a 6-bit scale and "
                 "a 6-bit minimum, so the codes can cover an off-centre range.")
ENTRY(q5_1, QL_TYPE_Q5_1, QL_FAMILY_GGML_LEGACY, 32, 24, true, 0.06, .llama = LLAMA(9, QL_TYPE_Q8_1), .cuda = CUDA_QDQ_FIX(q5_1),
      .grid = GRID(32, 0, 31, NULL, parse_q4_1, pack_q5_1), .simd = SIMD(q5_1), .label = "q51",
      .summary = "ggml Q5_1: 5-bit codes, fp16 scale and min per 32",
      .explain = "Blocks of 32: 5-bit codes with an fp16 scale and an fp16 minimum (asymmetric), 6 bits per "
                 "weight.")
ENTRY(q5_0, QL_TYPE_Q5_0, QL_FAMILY_GGML_LEGACY, 32, 22, true, 0.07, .llama = LLAMA(8, QL_TYPE_Q8_0), .cuda = CUDA_QDQ_FIX(q5_0),
      .grid = GRID(32, 0, 31, NULL, parse_q5_0, pack_q5_0), .simd = SIMD(q5_0), .label = "q50",
      .summary = "ggml Q5_0: 5-bit symmetric codes, fp16 scale per 32",
      .explain = "Blocks of 32: 5-bit symmetric codes and one fp16 scale, 5.5 bits per weight. llama.cpp's "
                 "fallback when a K-quant's 256-wide blocks do not fit a row.")
ENTRY(q4_k, QL_TYPE_Q4_K, QL_FAMILY_GGML_K, 256, 144, true, 0.1, .llama = LLAMA(14, QL_TYPE_Q8_K), .cuda = CUDA_QDQ_FIX(q4_k),
      .fallback = "q5_0", .grid = GRID(32, 0, 15, NULL, parse_q45_k, pack_q4_k), .simd = SIMD(q4_k),
      .label = "q4k", .summary = "ggml Q4_K: 4-bit codes, 6-bit scale+min per 32, fp16 per 256",
      .explain = "A K-quant at 4 bits: super-blocks of 256 in 8 blocks of 32, each with a 6-bit scale and "
                 "minimum. The usual workhorse of llama.cpp mixes (Q4_K_M).")
ENTRY(q4_1, QL_TYPE_Q4_1, QL_FAMILY_GGML_LEGACY, 32, 20, true, 0.12, .llama = LLAMA(3, QL_TYPE_Q8_1), .cuda = CUDA_QDQ_FIX(q4_1),
      .grid = GRID(32, 0, 15, NULL, parse_q4_1, pack_q4_1), .simd = SIMD(q4_1), .label = "q41",
      .summary = "ggml Q4_1: 4-bit codes, fp16 scale and min per 32",
      .explain = "Blocks of 32: 4-bit codes with an fp16 scale and minimum, 5 bits per weight.")
ENTRY(q4_0, QL_TYPE_Q4_0, QL_FAMILY_GGML_LEGACY, 32, 18, true, 0.14, .llama = LLAMA(2, QL_TYPE_Q8_0), .cuda = CUDA_QDQ_FIX(q4_0),
      .grid = GRID(32, 0, 15, NULL, parse_q4_0, pack_q4_0), .simd = SIMD(q4_0), .label = "q40",
      .summary = "ggml Q4_0: 4-bit symmetric codes, fp16 scale per 32",
      .explain = "The original llama.cpp format: blocks of 32 weights, one fp16 scale, 16 symmetric levels. "
                 "Simple and fast; K-quants at the same size are usually more accurate.")
ENTRY(iq4_nl, QL_TYPE_IQ4_NL, QL_FAMILY_GGML_IQ, 32, 18, true, 0.12, .llama = LLAMA(25, QL_TYPE_Q8_0), .cuda = CUDA_QDQ_FIX(iq4_nl),
      .grid = GRID(32, 0, 15, k_iq4nl, parse_iq4_nl, pack_iq4_nl), .simd = SIMD(iq4_nl), .label = "iq4nl",
      .summary = "ggml IQ4_NL: 4-bit non-linear codebook, fp16 scale per 32",
      .explain = "Like q4_0 but the 16 levels are not evenly spaced: a fixed non-linear table puts more levels "
                 "near zero, where most weights are.")
ENTRY(iq4_xs, QL_TYPE_IQ4_XS, QL_FAMILY_GGML_IQ, 256, 136, true, 0.12, .llama = LLAMA(30, QL_TYPE_Q8_K), .cuda = CUDA_QDQ_FIX(iq4_xs),
      .fallback = "iq4_nl", .grid = GRID(32, 0, 15, k_iq4nl, parse_iq4_xs, pack_iq4_xs), .label = "iq4xs",
      .summary = "ggml IQ4_XS: IQ4_NL codes, 6-bit scales per 32, fp16 per 256",
      .explain = "IQ4_NL codes in super-blocks of 256 with 6-bit scales per 32: the non-linear grid at 4.25 "
                 "bits.")
ENTRY(q3_k, QL_TYPE_Q3_K, QL_FAMILY_GGML_K, 256, 110, true, 0.25, .llama = LLAMA(11, QL_TYPE_Q8_K), .cuda = CUDA_QDQ_FIX(q3_k),
      .fallback = "q4_0", .grid = GRID(16, 0, 7, NULL, parse_q3_k, pack_q3_k), .simd = SIMD(q3_k), .label = "q3k",
      .summary = "ggml Q3_K: 3-bit codes, 6-bit scales per 16, fp16 per 256",
      .explain = "A K-quant at 3 bits: 8 levels per weight, blocks of 16 with 6-bit scales. Noticeably lossy; "
                 "mixes use it for the least sensitive tensors.")
ENTRY(q2_k, QL_TYPE_Q2_K, QL_FAMILY_GGML_K, 256, 84, true, 0.45, .llama = LLAMA(10, QL_TYPE_Q8_K), .cuda = CUDA_QDQ_FIX(q2_k),
      .fallback = "q4_0", .grid = GRID(16, 0, 3, NULL, parse_q2_k, pack_q2_k), .simd = SIMD(q2_k), .label = "q2k",
      .summary = "ggml Q2_K: 2-bit codes, 4-bit scale+min per 16, fp16 per 256",
      .explain = "A K-quant at 2 bits: 4 levels per weight, blocks of 16 with 4-bit scales and minimums. Big "
                 "savings, big error: only with care, usually with an importance matrix.")

#define IQ_WORDS                                                                                         \
    .explain = "An i-quant: groups of weights are coded together as points of a lattice or codebook (E8 and " \
               "friends), which packs more accuracy into very few bits. The quantizer searches the lattice "  \
               "for each group, so writing is slow; an importance matrix helps these formats most."
#define TQ_WORDS                                                                                         \
    .explain = "Ternary: every weight is -1, 0 or +1 times a block scale. Made for models trained that way " \
               "(BitNet); ordinary models fall apart in it."
/* the lattice i-quants as vector grids for GPTQ (kernels/iq_lattice.h) */
static const ql_grid_spec k_iq_lattice = {.kind = QL_GRID_KIND_LATTICE, .vdim = 8, .vscales = ql_iq_lattice_scales,
                                          .vround = ql_iq_lattice_round};
#define IQ_LATTICE (&k_iq_lattice)
/* the same quantizers with the AVX2 neighbour search (kernels/iq_quants_avx2.c); decoders stay scalar */
#define IQ_SIMD(lname) .simd = &(const ql_format_ops){ql_quantize_rows_##lname##_fast, NULL}
/* ggml refuses to write IQ2_XXS, IQ2_XS and IQ1_S without an imatrix (ggml_quantize_requires_imatrix) */
#define NEEDS_IMATRIX .requires_importance = true

/* i-quants and ternary types: quantizers in kernels/iq_quants_ref.c, bit-exact with ggml. Tolerances:
 * measured RMSE/RMS on N(0,1) rows of 4096 (importance of ones where required) plus a small margin. */
ENTRY(iq3_s, QL_TYPE_IQ3_S, QL_FAMILY_GGML_IQ, 256, 110, true, 0.18, .llama = LLAMA(26, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq3_s),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq3s", IQ_SIMD(iq3_s), IQ_WORDS,
      .summary = "ggml IQ3_S: 3.4375 bpw lattice codes")
ENTRY(iq3_xxs, QL_TYPE_IQ3_XXS, QL_FAMILY_GGML_IQ, 256, 98, true, 0.23, .llama = LLAMA(23, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq3_xxs),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq3xxs", IQ_SIMD(iq3_xxs), IQ_WORDS,
      .summary = "ggml IQ3_XXS: 3.0625 bpw lattice codes")
ENTRY(iq2_s, QL_TYPE_IQ2_S, QL_FAMILY_GGML_IQ, 256, 82, true, 0.28, .llama = LLAMA(28, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq2_s),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq2s", IQ_SIMD(iq2_s), IQ_WORDS,
      .summary = "ggml IQ2_S: 2.5625 bpw lattice codes")
ENTRY(iq2_xs, QL_TYPE_IQ2_XS, QL_FAMILY_GGML_IQ, 256, 74, true, 0.32, .llama = LLAMA(20, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq2_xs),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq2xs", IQ_SIMD(iq2_xs), IQ_WORDS, NEEDS_IMATRIX,
      .summary = "ggml IQ2_XS: 2.3125 bpw lattice codes (needs an imatrix)")
ENTRY(iq2_xxs, QL_TYPE_IQ2_XXS, QL_FAMILY_GGML_IQ, 256, 66, true, 0.36, .llama = LLAMA(19, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq2_xxs),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq2xxs", IQ_SIMD(iq2_xxs), IQ_WORDS, NEEDS_IMATRIX,
      .summary = "ggml IQ2_XXS: 2.0625 bpw E8 codes (needs an imatrix)")
ENTRY(iq1_m, QL_TYPE_IQ1_M, QL_FAMILY_GGML_IQ, 256, 56, true, 0.60, .llama = LLAMA(31, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq1_m),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq1m", IQ_SIMD(iq1_m), IQ_WORDS,
      .summary = "ggml IQ1_M: 1.75 bpw lattice codes")
ENTRY(iq1_s, QL_TYPE_IQ1_S, QL_FAMILY_GGML_IQ, 256, 50, true, 0.51, .llama = LLAMA(24, QL_TYPE_Q8_K), .cuda = CUDA_DQ(iq1_s),
      .fallback = "iq4_nl", .grid = IQ_LATTICE, .label = "iq1s", IQ_SIMD(iq1_s), IQ_WORDS, NEEDS_IMATRIX,
      .summary = "ggml IQ1_S: 1.5625 bpw lattice codes (needs an imatrix)")
ENTRY(tq1_0, QL_TYPE_TQ1_0, QL_FAMILY_GGML_TERNARY, 256, 54, false, 0.82, .llama = LLAMA(36, QL_TYPE_Q8_K), .cuda = CUDA_QDQ(tq1_0),
      .fallback = "q4_0", .grid = QL_GRID_NONE, .label = "tq10", TQ_WORDS,
      .summary = "ggml TQ1_0: ternary, 1.6875 bpw")
ENTRY(tq2_0, QL_TYPE_TQ2_0, QL_FAMILY_GGML_TERNARY, 256, 66, false, 0.82, .llama = LLAMA(37, QL_TYPE_Q8_K), .cuda = CUDA_QDQ(tq2_0),
      .fallback = "q4_0", .grid = QL_GRID_NONE, .label = "tq20", TQ_WORDS,
      .summary = "ggml TQ2_0: ternary, 2.0625 bpw")
/* llama.cpp never multiplies by a Q8_K weight (it is the activation type of the K-quants), so no
 * file type and no activation rounding */
DECODE_ENTRY(q8_k, QL_TYPE_Q8_K, QL_FAMILY_GGML_K, 256, 292, .llama = LLAMA(QL_FTYPE_NONE, QL_TYPE_F32),
             .label = "q8k", .summary = "ggml Q8_K (decode only): llama.cpp's intermediate type",
             .explain = "llama.cpp's internal 8-bit type for activations in K-quant dot products; not meant for "
                        "storing weights.")
