/* act_round.h — llama.cpp's CPU rounding of a layer's input before a quantized matmul, as float values:
 * F16 / BF16 round trips, Q8_0 / Q8_1 (blocks of 32: fp16 scale amax/127, codes rounded to nearest even, as
 * ggml's AVX quantize_row_q8_0 does) and Q8_K (blocks of 256: scale -127/x of the first largest |x|, codes
 * to nearest even, capped at 127). The scalar reference and an AVX2 twin that equals it bit for bit on every
 * input (NaN, infinities and ties included); n must be a multiple of the block. y may be x. */
#ifndef QL_ACT_ROUND_H
#define QL_ACT_ROUND_H

#include <stdint.h>

void ql_act_round_ref(uint32_t act, const float *x, float *y, int64_t n);
/* One block of the reference, as scale and codes (the rounded value is scale × code; kernels/kquant_gemm.c keeps
 * the codes): Q8_K, 256 values → codes (INT_MIN where the product is not finite), returns the scale (0 with all
 * codes 0 for a block without a finite nonzero value); Q8_0, 32 values → codes as rounded floats, returns the
 * fp16-rounded scale. */
float ql_act_q8_k_block(const float *x, int32_t v[256]);
float ql_act_q8_0_block(const float *x, float r[32]);
/* The fastest twin this CPU runs at the SIMD level in effect (kernels/simd.h) */
void ql_act_round(uint32_t act, const float *x, float *y, int64_t n);

#endif
