/* fmt_mxfp4.c — MXFP4 (OCP Microscaling v1.0, ggml's GGML_TYPE_MXFP4): the whole format in one file,
 * the proof that a ggml-compatible type is one file + one line in format.c. Blocks of 32 weights:
 * {u8 e; u8 qs[16]}, e an E8M0 power-of-two scale, qs 4-bit E2M1 codes (element j in the low nibble of
 * qs[j], element j + 16 in the high nibble). Bit-exact with ggml-quants.c (llama.cpp 34af94cd):
 * quantize_row_mxfp4_ref and dequantize_row_mxfp4, checked against ../shared/testdata/ggml-quants by
 * tests/test_ggml_quants.c. Pure, thread-safe. */
#include "formats/format.h"
#include "kernels/e2m1.h"
#include "kernels/ggml_types.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#endif

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif

#define MX_BLOCK 32
#define MX_BYTES 17


/* E8M0 exponent e as 2^(e-128), i.e. half of 2^(e-127), built from float bits (subnormal for e < 2) */
static float e8m0_half(uint8_t e) {
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void mxfp4_quantize_row(const float *x, uint8_t *y, int64_t n) {
    for (int64_t i = 0; i < n / MX_BLOCK; i++, x += MX_BLOCK, y += MX_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < MX_BLOCK; j++)
            if (amax < fabsf(x[j])) amax = fabsf(x[j]);
        /* the largest E2M1 magnitude is 6 = 1.5·2^2: scale 2^(floor(log2 amax) - 2). ggml casts the float
         * straight to uint8_t; through int it is the same byte on x86 and defined behaviour everywhere
         * (amax below 2^-125 gives a negative exponent that wraps, as ggml's bytes do). */
        const uint8_t e = amax > 0.0f ? (uint8_t)(int)(floorf(log2f(amax)) - 2 + 127) : 0;
        const float d = e8m0_half(e);
        y[0] = e;
        for (int j = 0; j < MX_BLOCK / 2; j++)
            y[1 + j] = (uint8_t)(ql_e2m1_nearest(x[j], d) | ql_e2m1_nearest(x[j + MX_BLOCK / 2], d) << 4);
    }
}

static void mxfp4_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) {
    (void)imp; /* ggml's quantize_mxfp4 ignores importance weights too */
    if (ncols <= 0 || ncols % MX_BLOCK) return;
    const int64_t rb = ncols / MX_BLOCK * MX_BYTES;
    for (int64_t r = 0; r < nrows; r++) mxfp4_quantize_row(src + r * ncols, (uint8_t *)dst + r * rb, ncols);
}

static void mxfp4_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    if (ncols <= 0 || ncols % MX_BLOCK) return;
    const uint8_t *x = src;
    for (int64_t b = 0; b < nrows * (ncols / MX_BLOCK); b++, x += MX_BYTES, dst += MX_BLOCK) {
        const float d = e8m0_half(x[0]);
        for (int j = 0; j < MX_BLOCK / 2; j++) {
            dst[j] = ql_e2m1x2[x[1 + j] & 0x0F] * d;
            dst[j + MX_BLOCK / 2] = ql_e2m1x2[x[1 + j] >> 4] * d;
        }
    }
}

const ql_format ql_fmt_mxfp4 = {
    .name = "mxfp4",
    .type = QL_TYPE_MXFP4,
    .family = QL_FAMILY_FP4_MICRO,
    /* LLAMA_FTYPE_MOSTLY_MXFP4_MOE; ggml's CPU backend multiplies MXFP4 by Q8_0 activations */
    .llama = &(const ql_llama_identity){.file_type = 38, .act_type = QL_TYPE_Q8_0},
    .block = MX_BLOCK,
    .block_bytes = MX_BYTES,
    .bpw = 8.0 * MX_BYTES / MX_BLOCK,
    .quantize_rows = mxfp4_quantize,
    .dequantize_rows = mxfp4_dequantize,
    .tolerance = 0.13, /* N(0,1) rows of 4096 measure 0.115 (test_traits): 8 magnitudes under a power-of-two scale */
    /* the E2M1 table is not sorted by code and the scale is a power of two picked from the block's max:
     * GPTQ's grids do not model it (yet) */
    .grid = QL_GRID_NONE,
    .summary = "OCP MXFP4: e2m1 codes, e8m0 (power-of-two) scale per 32",
    .explain = "OCP microscaling FP4: 4-bit floats (e2m1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives) "
               "sharing one power-of-two scale per 32 weights, 4.25 bits per weight. gpt-oss ships its experts "
               "this way; the power-of-two scale is cheap in hardware but wastes up to half the range.",
    .label = "mxfp4",
#ifdef QL_HAVE_CUDA /* kernels/codecs_cuda.cu, both directions */
    .cuda = &(const ql_format_cuda_ops){.quantize_dev = ql_cuda_quantize_mxfp4_dev,
                                        .dequantize_dev = ql_cuda_dequantize_mxfp4_dev,
                                        .quantize_emulated = ql_cuda_quantize_mxfp4_emulated,
                                        .dequantize_emulated = ql_cuda_dequantize_mxfp4_emulated},
#endif
};
