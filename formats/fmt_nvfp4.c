/* fmt_nvfp4.c — NVFP4 (NVIDIA's 4-bit float, ggml's GGML_TYPE_NVFP4 = 40): E2M1 codes in blocks of 16
 * with an FP8 E4M3 scale per block, stored in ggml's layout so llama.cpp loads the file: super-blocks of
 * 64 weights {u8 d[4]; u8 qs[32]}, d[s] the unsigned E4M3 scale of sub-block s, and in sub-block s
 * element j (j < 8) is the low nibble of qs[8s + j], element j + 8 its high nibble (docs/formats.md).
 * Bit-exact with ggml-quants.c (quantize_row_nvfp4_ref / dequantize_row_nvfp4), checked against
 * ../shared/testdata/ggml-quants by tests/test_ggml_quants.c.
 *
 * The FP32 per-tensor scale. ModelOpt and compressed-tensors add one FP32 scale per tensor
 * (weight_scale_2 = amax / (6 * 448)) so that every block scale lands in E4M3's range. ggml's block has
 * no room for it; llama.cpp carries it as a separate F32 tensor "<weight>.scale" of shape [1] that it
 * multiplies into the matmul output, and treats a missing one as 1. qlab writes what ggml's own quantizer
 * writes: per-tensor scale 1, no sidecar tensor. That is exact whenever every block's amax / 6 lies in
 * E4M3's normal range [2^-6, 448] (trained LLM weights: amax of a 16-block from ~0.01 to ~10, i.e. scales
 * down to ~2^-9: the smallest blocks lose up to 2 of the scale's 3 mantissa bits). Pure, thread-safe. */
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

#define NV_TYPE 40 /* GGML_TYPE_NVFP4 */
#define NV_BLOCK 64
#define NV_SUB 16
#define NV_BYTES 36


/* Unsigned E4M3 (bias 7, 3 mantissa bits, 0x7F = NaN read as 0), returned halved. */
static float ue4m3_half(uint8_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int exp = (x >> 3) & 0xF, man = x & 0x7;
    const float raw = exp == 0 ? ldexpf((float)man, -9) : ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return raw * 0.5f;
}

/* float -> unsigned E4M3 as ggml rounds it: saturate at 448, round half up on the 4th mantissa bit,
 * subnormals (below 2^-6) rounded half up to multiples of 2^-9, never the NaN code. */
static uint8_t f32_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    uint32_t bits;
    memcpy(&bits, &x, 4);
    int exp = (int)((bits >> 23) & 0xFF) - 127 + 7;
    if (exp <= 0) {
        int man = (int)(x * 512.0f + 0.5f);
        return (uint8_t)(man > 7 ? 7 : man < 1 ? 0 : man);
    }
    if (exp >= 15) return 0x7E;
    int man = (int)((bits >> 20) & 0x7) + (int)((bits >> 19) & 1);
    if (man > 7) {
        man = 0;
        if (++exp >= 15) return 0x7E;
    }
    return (uint8_t)(exp << 3 | man);
}

static void nvfp4_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) {
    (void)imp; /* ggml's quantize_nvfp4 ignores importance weights too */
    if (ncols <= 0 || ncols % NV_BLOCK) return;
    uint8_t *y = dst;
    const float *x = src;
    for (int64_t b = 0; b < nrows * (ncols / NV_BLOCK); b++, y += NV_BYTES, x += NV_BLOCK)
        for (int s = 0; s < NV_BLOCK / NV_SUB; s++) {
            const float *xb = x + s * NV_SUB;
            float amax = 0.0f;
            for (int j = 0; j < NV_SUB; j++)
                if (amax < fabsf(xb[j])) amax = fabsf(xb[j]);
            const uint8_t ue = f32_to_ue4m3(amax / 6.0f); /* 6: the largest E2M1 magnitude */
            const float d = ue4m3_half(ue);
            y[s] = ue;
            for (int j = 0; j < NV_SUB / 2; j++)
                y[4 + s * 8 + j] = (uint8_t)(ql_e2m1_nearest(xb[j], d) | ql_e2m1_nearest(xb[j + NV_SUB / 2], d) << 4);
        }
}

static void nvfp4_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    if (ncols <= 0 || ncols % NV_BLOCK) return;
    const uint8_t *x = src;
    for (int64_t b = 0; b < nrows * (ncols / NV_BLOCK); b++, x += NV_BYTES)
        for (int s = 0; s < NV_BLOCK / NV_SUB; s++, dst += NV_SUB) {
            const float d = ue4m3_half(x[s]);
            for (int j = 0; j < NV_SUB / 2; j++) {
                const uint8_t q = x[4 + s * 8 + j];
                dst[j] = ql_e2m1x2[q & 0x0F] * d;
                dst[j + NV_SUB / 2] = ql_e2m1x2[q >> 4] * d;
            }
        }
}

const ql_format ql_fmt_nvfp4 = {
    .name = "nvfp4",
    .type = NV_TYPE,
    .family = QL_FAMILY_FP4_MICRO,
    /* LLAMA_FTYPE_MOSTLY_NVFP4; ggml's CPU backend multiplies NVFP4 by Q8_0 activations */
    .llama = &(const ql_llama_identity){.file_type = 39, .act_type = QL_TYPE_Q8_0},
    .block = NV_BLOCK,
    .block_bytes = NV_BYTES,
    .bpw = 8.0 * NV_BYTES / NV_BLOCK,
    /* llama.cpp has no fallback for NVFP4 (llama-quantize cannot write it); qlab's choice: the same E2M1
     * codes in blocks of 32 */
    .fallback = "mxfp4",
    .quantize_rows = nvfp4_quantize,
    .dequantize_rows = nvfp4_dequantize,
    .tolerance = 0.11, /* N(0,1) rows of 4096 measure 0.095 (test_traits; docs/formats.md) */
    .grid = QL_GRID_NONE, /* E2M1's code table is not sorted by code: GPTQ's grids do not model it (yet) */
    .summary = "NVIDIA NVFP4: e2m1 codes, E4M3 scale per 16 (ggml layout, per-tensor scale 1)",
    .explain = "NVIDIA's 4-bit float: e2m1 codes like MXFP4, but each block of 16 gets an 8-bit float "
               "(E4M3) scale instead of a power of two, so blocks use their whole range: 4.5 bits per "
               "weight. Blackwell GPUs multiply it natively. Stored as llama.cpp stores it (blocks of 64 "
               "holding four 16-scales).",
    .label = "nvfp4",
#ifdef QL_HAVE_CUDA /* kernels/codecs_cuda.cu, both directions */
    .cuda = &(const ql_format_cuda_ops){.quantize_dev = ql_cuda_quantize_nvfp4_dev,
                                        .dequantize_dev = ql_cuda_dequantize_nvfp4_dev,
                                        .quantize_emulated = ql_cuda_quantize_nvfp4_emulated,
                                        .dequantize_emulated = ql_cuda_dequantize_nvfp4_emulated},
#endif
};
