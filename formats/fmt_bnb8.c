/* fmt_bnb8.c — bnb_int8: bitsandbytes' LLM.int8() weight storage (Linear8bitLt / Int8Params, what
 * transformers saves for a `load_in_8bit` model) as a registry entry, so `--to bnb` writes it and a
 * load_in_8bit folder loads back without a detour through F32. Rows of [f32 SCB][ncols int8 codes]:
 *   SCB  = max |w| over the row (the row statistics bitsandbytes keeps as `SCB`)
 *   code = round_half_even(w * (127 / SCB)), in [-127, 127]     (int8_vectorwise_quant, float32)
 *   w'   = (code * SCB) * float32(1/127)                          (int8_vectorwise_dequant: A * stats * 7.874015718698502e-3,
 *                                                                   each product rounded to float32, in that order)
 * The decode is bitsandbytes' own expression, not code * (SCB / 127): the two differ in the last bit, and
 * an exporter must reproduce the ecosystem's values exactly (docs/formats.md § Exporters). Bad values: the
 * row maximum sees finite weights only, NaN gives code 0, ±inf the extreme codes, an all-zero (or
 * non-finite) row SCB 0 and codes 0. Type id QL_TYPE_EXT_BASE + 0x90 (never reuse). Pure, thread-safe. */
#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/int_quants.h"
#include "kernels/simd.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif

#define BNB8_INV127 7.874015718698502e-3f /* bitsandbytes' reciprocal of 127, as a float32 */

static int64_t bnb8_row_bytes(int64_t ncols) { return ncols > 0 && ncols < INT64_MAX - 4 ? 4 + ncols : -1; }
static int64_t bnb8_tensor_bytes(int64_t ncols, int64_t nrows) {
    const int64_t row = bnb8_row_bytes(ncols);
    return row > 0 && nrows >= 0 && (nrows == 0 || row <= INT64_MAX / nrows) ? nrows * row : -1;
}

static void bnb8_quantize_rows(const float *src, void *dst, int64_t nrows, int64_t ncols, bool fast) {
    uint8_t *out = dst;
    for (int64_t r = 0; r < nrows; r++, src += ncols, out += 4 + ncols) {
        if (fast && ql_bnb8_row_fast(src, out, ncols)) continue; /* the SIMD twin: the same bytes */
        float amax = 0.0f;
        for (int64_t c = 0; c < ncols; c++) {
            float a = fabsf(src[c]);
            if (isfinite(a) && a > amax) amax = a;
        }
        memcpy(out, &amax, 4); /* little-endian hosts only, as every qlab layout */
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t c = 0; c < ncols; c++) {
            float x = src[c];
            /* ql_round_even: nearbyintf's result in the default rounding mode, without a libm call per weight
             * (it differs only in the sign of a zero result, which the int8 cast drops) */
            float q = isnan(x) ? 0.0f : ql_round_even(x * inv); /* ±inf * inv: ±inf, clamped below */
            if (inv == 0.0f) q = 0.0f;
            q = q < -127.0f ? -127.0f : q > 127.0f ? 127.0f : q;
            out[4 + c] = (uint8_t)(int8_t)q;
        }
    }
}

static void bnb8_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) {
    (void)imp; /* LLM.int8's weight rounding is plain absmax */
    bnb8_quantize_rows(src, dst, nrows, ncols, false);
}

void ql_quantize_rows_bnb_int8_fast(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) {
    (void)imp;
    bnb8_quantize_rows(src, dst, nrows, ncols, true);
}

static void bnb8_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const uint8_t *in = src;
    for (int64_t r = 0; r < nrows; r++, in += 4 + ncols, dst += ncols) {
        float scb;
        memcpy(&scb, in, 4);
        for (int64_t c = 0; c < ncols; c++) dst[c] = (float)(int8_t)in[4 + c] * scb * BNB8_INV127;
    }
}

const ql_format ql_fmt_bnb_int8 = {
    .name = "bnb_int8",
    .summary = "bitsandbytes LLM.int8 weights: int8 per row, float32 absmax (SCB), bnb's decode",
    .type = QL_TYPE_EXT_BASE + 0x90,
    .family = QL_FAMILY_INT,
    .grid = QL_GRID_NONE,
    .label = "bnb8",
    .explain = "bitsandbytes' 8-bit weights (transformers' load_in_8bit): each output row is scaled by its "
               "largest magnitude (kept as a float32, SCB) and rounded to -127..127. The value is "
               "code x SCB x (1/127) exactly as bitsandbytes computes it, so --to bnb writes the same "
               "model qlab previews. LLM.int8()'s float outlier inputs are an activation scheme (--act llm_int8).",
    .block = 1,
    .block_bytes = 1,
    .bpw = 8.0 + 32.0 / 4096,
    .tolerance = 0.012, /* int8_channel's rounding: one step of max/127 over ~3.5 sigma rows */
    .row_bytes = bnb8_row_bytes,
    .tensor_bytes = bnb8_tensor_bytes,
    .quantize_rows = bnb8_quantize,
    .dequantize_rows = bnb8_dequantize,
    .simd = &(const ql_format_ops){ql_quantize_rows_bnb_int8_fast, NULL}, /* quantize twin only */
};
