/* fmt_ggml.c — registry entries for ggml's own types: plain floats, the legacy and K block formats,
 * IQ4, and the decode-only types (IQ1..IQ3, TQ, MXFP4) that qlab loads but does not write. The codecs
 * are kernels/ggml_quants_ref.c (bit-exact with llama.cpp); fast twins are in kernels/ggml_quants_simd.c
 * and kernels/ggml_quants_simd2.c. */
#include "formats/format.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"
#include "kernels/simd2.h"

#include <string.h>

#define GGML_CODEC(lname, TYPE)                                                                          \
    static void lname##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) { \
        ql_ggml_quantize_rows(TYPE, src, dst, nrows, ncols, imp);                                       \
    }                                                                                                    \
    static void lname##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {          \
        ql_ggml_dequantize_rows(TYPE, src, dst, nrows, ncols);                                          \
    }

#define GGML_DECODER(lname, TYPE)                                                                        \
    static void lname##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {          \
        ql_ggml_dequantize_rows(TYPE, src, dst, nrows, ncols);                                          \
    }

GGML_CODEC(f32, QL_TYPE_F32)
GGML_CODEC(f16, QL_TYPE_F16)
GGML_CODEC(bf16, QL_TYPE_BF16)
GGML_CODEC(q4_0, QL_TYPE_Q4_0)
GGML_CODEC(q4_1, QL_TYPE_Q4_1)
GGML_CODEC(q5_0, QL_TYPE_Q5_0)
GGML_CODEC(q5_1, QL_TYPE_Q5_1)
GGML_CODEC(q8_0, QL_TYPE_Q8_0)
GGML_CODEC(q2_k, QL_TYPE_Q2_K)
GGML_CODEC(q3_k, QL_TYPE_Q3_K)
GGML_CODEC(q4_k, QL_TYPE_Q4_K)
GGML_CODEC(q5_k, QL_TYPE_Q5_K)
GGML_CODEC(q6_k, QL_TYPE_Q6_K)
GGML_CODEC(iq4_nl, QL_TYPE_IQ4_NL)
GGML_CODEC(iq4_xs, QL_TYPE_IQ4_XS)
GGML_DECODER(iq2_xxs, QL_TYPE_IQ2_XXS)
GGML_DECODER(iq2_xs, QL_TYPE_IQ2_XS)
GGML_DECODER(iq2_s, QL_TYPE_IQ2_S)
GGML_DECODER(iq3_xxs, QL_TYPE_IQ3_XXS)
GGML_DECODER(iq3_s, QL_TYPE_IQ3_S)
GGML_DECODER(iq1_s, QL_TYPE_IQ1_S)
GGML_DECODER(iq1_m, QL_TYPE_IQ1_M)
GGML_DECODER(tq1_0, QL_TYPE_TQ1_0)
GGML_DECODER(tq2_0, QL_TYPE_TQ2_0)
GGML_DECODER(mxfp4, QL_TYPE_MXFP4)
GGML_DECODER(q8_k, QL_TYPE_Q8_K)

#define ENTRY(lname, TYPE, blk, bytes, imp, tol, summ)                                                   \
    const ql_format ql_fmt_##lname = {.name = #lname, .summary = summ, .type = TYPE, .block = blk,        \
                                      .block_bytes = bytes, .bpw = 8.0 * (bytes) / (blk),                \
                                      .uses_importance = imp, .tolerance = tol,                          \
                                      .quantize_rows = lname##_quantize, .dequantize_rows = lname##_dequantize};
/* ENTRY plus the SIMD twins ql_{quantize,dequantize}_rows_<lname>_fast from kernels/simd.h, simd2.h */
#define ENTRY_FAST(lname, TYPE, blk, bytes, imp, tol, summ)                                              \
    const ql_format ql_fmt_##lname = {.name = #lname, .summary = summ, .type = TYPE, .block = blk,        \
                                      .block_bytes = bytes, .bpw = 8.0 * (bytes) / (blk),                \
                                      .uses_importance = imp, .tolerance = tol,                          \
                                      .quantize_rows = lname##_quantize, .dequantize_rows = lname##_dequantize, \
                                      .quantize_rows_fast = ql_quantize_rows_##lname##_fast,             \
                                      .dequantize_rows_fast = ql_dequantize_rows_##lname##_fast};
#define DECODE_ENTRY(lname, TYPE, blk, bytes, summ)                                                      \
    const ql_format ql_fmt_##lname = {.name = #lname, .summary = summ, .type = TYPE, .block = blk,        \
                                      .block_bytes = bytes, .bpw = 8.0 * (bytes) / (blk),                \
                                      .dequantize_rows = lname##_dequantize};

ENTRY(f32, QL_TYPE_F32, 1, 4, false, 0.0, "IEEE float32: the unquantized reference")
ENTRY_FAST(f16, QL_TYPE_F16, 1, 2, false, 0.001, "IEEE float16 (round to nearest even)")
ENTRY_FAST(bf16, QL_TYPE_BF16, 1, 2, false, 0.005, "bfloat16: float32's range, 8 bits of mantissa")
ENTRY_FAST(q8_0, QL_TYPE_Q8_0, 32, 34, false, 0.01, "ggml Q8_0: int8 codes, one fp16 scale per 32 weights")
ENTRY_FAST(q6_k, QL_TYPE_Q6_K, 256, 210, true, 0.03, "ggml Q6_K: 6-bit codes, int8 scales per 16, fp16 per 256")
ENTRY_FAST(q5_k, QL_TYPE_Q5_K, 256, 176, true, 0.05, "ggml Q5_K: 5-bit codes, 6-bit scale+min per 32, fp16 per 256")
ENTRY_FAST(q5_1, QL_TYPE_Q5_1, 32, 24, true, 0.06, "ggml Q5_1: 5-bit codes, fp16 scale and min per 32")
ENTRY_FAST(q5_0, QL_TYPE_Q5_0, 32, 22, true, 0.07, "ggml Q5_0: 5-bit symmetric codes, fp16 scale per 32")
ENTRY_FAST(q4_k, QL_TYPE_Q4_K, 256, 144, true, 0.1, "ggml Q4_K: 4-bit codes, 6-bit scale+min per 32, fp16 per 256")
ENTRY_FAST(q4_1, QL_TYPE_Q4_1, 32, 20, true, 0.12, "ggml Q4_1: 4-bit codes, fp16 scale and min per 32")
ENTRY_FAST(q4_0, QL_TYPE_Q4_0, 32, 18, true, 0.14, "ggml Q4_0: 4-bit symmetric codes, fp16 scale per 32")
ENTRY_FAST(iq4_nl, QL_TYPE_IQ4_NL, 32, 18, true, 0.12, "ggml IQ4_NL: 4-bit non-linear codebook, fp16 scale per 32")
ENTRY(iq4_xs, QL_TYPE_IQ4_XS, 256, 136, true, 0.12, "ggml IQ4_XS: IQ4_NL codes, 6-bit scales per 32, fp16 per 256")
ENTRY_FAST(q3_k, QL_TYPE_Q3_K, 256, 110, true, 0.25, "ggml Q3_K: 3-bit codes, 6-bit scales per 16, fp16 per 256")
ENTRY_FAST(q2_k, QL_TYPE_Q2_K, 256, 84, true, 0.45, "ggml Q2_K: 2-bit codes, 4-bit scale+min per 16, fp16 per 256")
DECODE_ENTRY(iq3_s, QL_TYPE_IQ3_S, 256, 110, "ggml IQ3_S (decode only): 3.4375 bpw lattice codes")
DECODE_ENTRY(iq3_xxs, QL_TYPE_IQ3_XXS, 256, 98, "ggml IQ3_XXS (decode only): 3.0625 bpw lattice codes")
DECODE_ENTRY(iq2_s, QL_TYPE_IQ2_S, 256, 82, "ggml IQ2_S (decode only): 2.5625 bpw")
DECODE_ENTRY(iq2_xs, QL_TYPE_IQ2_XS, 256, 74, "ggml IQ2_XS (decode only): 2.3125 bpw")
DECODE_ENTRY(iq2_xxs, QL_TYPE_IQ2_XXS, 256, 66, "ggml IQ2_XXS (decode only): 2.0625 bpw E8 codes")
DECODE_ENTRY(iq1_m, QL_TYPE_IQ1_M, 256, 56, "ggml IQ1_M (decode only): 1.75 bpw")
DECODE_ENTRY(iq1_s, QL_TYPE_IQ1_S, 256, 50, "ggml IQ1_S (decode only): 1.5625 bpw")
DECODE_ENTRY(tq1_0, QL_TYPE_TQ1_0, 256, 54, "ggml TQ1_0 (decode only): ternary, 1.6875 bpw")
DECODE_ENTRY(tq2_0, QL_TYPE_TQ2_0, 256, 66, "ggml TQ2_0 (decode only): ternary, 2.0625 bpw")
DECODE_ENTRY(mxfp4, QL_TYPE_MXFP4, 32, 17, "OCP MXFP4 (decode only): e2m1 codes, e8m0 scale per 32")
DECODE_ENTRY(q8_k, QL_TYPE_Q8_K, 256, 292, "ggml Q8_K (decode only): llama.cpp's intermediate type")
