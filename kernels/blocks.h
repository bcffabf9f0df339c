/* blocks.h — the byte layouts of ggml's quantized blocks (ggml-common.h), one header for the C codecs
 * (kernels/ggml_quants_ref.c and its SIMD twins, through ggml_quants_internal.h) and the CUDA kernels
 * (kernels/codecs_cuda.cu, which reads fields at these offsets). Valid C11 and C++ (nvcc). Every field is 1 or
 * 2 bytes wide, so a struct has no padding and is exactly the file's block; the sizes are asserted at
 * compile time on both sides, so a layout edit that drifts from ggml fails the build, not a test. */
#ifndef QL_BLOCKS_H
#define QL_BLOCKS_H

#include <stdint.h>

#define QK_K 256 /* values per K-quant / IQ super-block */

#ifdef __cplusplus
#define QL_BLOCK_SIZE(type, bytes) static_assert(sizeof(type) == (bytes), #type " must be " #bytes " bytes")
#else
#define QL_BLOCK_SIZE(type, bytes) _Static_assert(sizeof(type) == (bytes), #type " must be " #bytes " bytes")
#endif

/* clang-format off */
typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;
typedef struct { uint16_t d, s; int8_t qs[32]; } blk_q8_1;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } blk_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } blk_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K;
typedef struct { uint16_t d; uint8_t qs[16]; } blk_iq4_nl;
typedef struct { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } blk_iq4_xs;
typedef struct { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; } blk_tq1_0;
typedef struct { uint8_t qs[64]; uint16_t d; } blk_tq2_0;
typedef struct { uint8_t e; uint8_t qs[16]; } blk_mxfp4;
typedef struct { uint16_t d; uint16_t qs[32]; } blk_iq2_xxs;
typedef struct { uint16_t d; uint16_t qs[32]; uint8_t scales[8]; } blk_iq2_xs;
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t scales[8]; } blk_iq2_s;
typedef struct { uint16_t d; uint8_t qs[96]; } blk_iq3_xxs;
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; } blk_iq3_s;
typedef struct { uint16_t d; uint8_t qs[32]; uint16_t qh[8]; } blk_iq1_s;
typedef struct { uint8_t qs[32]; uint8_t qh[16]; uint8_t scales[8]; } blk_iq1_m;
/* clang-format on */

QL_BLOCK_SIZE(blk_q4_0, 18);
QL_BLOCK_SIZE(blk_q4_1, 20);
QL_BLOCK_SIZE(blk_q5_0, 22);
QL_BLOCK_SIZE(blk_q5_1, 24);
QL_BLOCK_SIZE(blk_q8_0, 34);
QL_BLOCK_SIZE(blk_q8_1, 36);
QL_BLOCK_SIZE(blk_q2_K, 84);
QL_BLOCK_SIZE(blk_q3_K, 110);
QL_BLOCK_SIZE(blk_q4_K, 144);
QL_BLOCK_SIZE(blk_q5_K, 176);
QL_BLOCK_SIZE(blk_q6_K, 210);
QL_BLOCK_SIZE(blk_iq4_nl, 18);
QL_BLOCK_SIZE(blk_iq4_xs, 136);
QL_BLOCK_SIZE(blk_tq1_0, 54);
QL_BLOCK_SIZE(blk_tq2_0, 66);
QL_BLOCK_SIZE(blk_mxfp4, 17);
QL_BLOCK_SIZE(blk_iq2_xxs, 66);
QL_BLOCK_SIZE(blk_iq2_xs, 74);
QL_BLOCK_SIZE(blk_iq2_s, 82);
QL_BLOCK_SIZE(blk_iq3_xxs, 98);
QL_BLOCK_SIZE(blk_iq3_s, 110);
QL_BLOCK_SIZE(blk_iq1_s, 50);
QL_BLOCK_SIZE(blk_iq1_m, 56);

#endif /* QL_BLOCKS_H */
