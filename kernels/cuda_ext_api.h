/* cuda_ext_api.h — C-callable CUDA twins of two of qlab's extension codecs (kernels/codecs_ext_cuda.cu):
 * bitsandbytes' 4-bit block codecs (NF4 / FP4, formats/fmt_nf4.c, row-wise layout) and OCP FP8 with a float32
 * scale per tensor, per row or per 128x128 tile (formats/fmt_fp8.c), bit-exact with those files' reference.
 * Same conventions as kernels/cuda_api.h (only with QL_HAVE_CUDA; *_dev: device buffers queued on `stream`,
 * *_emulated: the kernels' per-item code run on the host; errors as ql_status). The format files own the
 * numbers (code tables, thresholds) and pass them in. */
#ifndef QL_CUDA_EXT_API_H
#define QL_CUDA_EXT_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

/* A 4-bit codebook codec with a float32 absmax per block of 64 (a shorter last block), the codes chosen by
 * thresholds: code = (sign_split && x < 0 ? 8 : 0) + order[#{i : x' > thr[i]}], x' = |x| when sign_split. */
typedef struct ql_cuda_bnb4 {
    float code[16];     /* decoded value of each code (times absmax) */
    float thr[15];      /* sorted thresholds on x / absmax */
    uint8_t order[16];  /* code of each threshold count */
    int nthr;
    bool sign_split;
    uint8_t zero, plus_one, minus_one; /* codes of NaN (and of everything when absmax is 0), +inf, -inf */
    float dyn[256];     /* the double-quant forms: bitsandbytes' 8-bit dynamic map, sorted */
} ql_cuda_bnb4;
ql_status ql_cuda_bnb4_quantize_dev(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows, int64_t ncols,
                                    void *stream);
ql_status ql_cuda_bnb4_quantize_emulated(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows,
                                         int64_t ncols);
ql_status ql_cuda_bnb4_dequantize_dev(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                      int64_t ncols, void *stream);
ql_status ql_cuda_bnb4_dequantize_emulated(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                           int64_t ncols);

/* The double-quantized whole-tensor layout (fmt_nf4.c's *_dq): the absmax of each block of 64 coded with the
 * dynamic map in blocks of 256 around their mean. The mean is a double sum taken in block order, as the
 * reference takes it: one device thread adds them (the other steps are parallel). */
ql_status ql_cuda_bnb4_dq_quantize_dev(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows,
                                       int64_t ncols, void *stream);
ql_status ql_cuda_bnb4_dq_quantize_emulated(const ql_cuda_bnb4 *k, const float *src, void *dst, int64_t nrows,
                                            int64_t ncols);
ql_status ql_cuda_bnb4_dq_dequantize_dev(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                         int64_t ncols, void *stream);
ql_status ql_cuda_bnb4_dq_dequantize_emulated(const ql_cuda_bnb4 *k, const void *src, float *dst, int64_t nrows,
                                              int64_t ncols);

/* AQLM's decoder (kernels/aqlm.h layout: f16 codebooks, f16 row scales, codes): M codebooks of 2^B vectors */
ql_status ql_cuda_aqlm_dequantize_dev(int M, int B, const void *src, float *dst, int64_t nrows, int64_t ncols,
                                      void *stream);
ql_status ql_cuda_aqlm_dequantize_emulated(int M, int B, const void *src, float *dst, int64_t nrows, int64_t ncols);

/* OCP FP8: e5m2 false = E4M3 "fn" (max 448), true = E5M2 (max 57344); scale layouts below */
typedef enum { QL_CUDA_FP8_TENSOR, QL_CUDA_FP8_ROW, QL_CUDA_FP8_TILE128 } ql_cuda_fp8_layout;
ql_status ql_cuda_fp8_quantize_dev(bool e5m2, ql_cuda_fp8_layout lay, const float *src, void *dst, int64_t nrows,
                                   int64_t ncols, void *stream);
ql_status ql_cuda_fp8_quantize_emulated(bool e5m2, ql_cuda_fp8_layout lay, const float *src, void *dst,
                                        int64_t nrows, int64_t ncols);
ql_status ql_cuda_fp8_dequantize_dev(bool e5m2, ql_cuda_fp8_layout lay, const void *src, float *dst, int64_t nrows,
                                     int64_t ncols, void *stream);
ql_status ql_cuda_fp8_dequantize_emulated(bool e5m2, ql_cuda_fp8_layout lay, const void *src, float *dst,
                                          int64_t nrows, int64_t ncols);

#ifdef __cplusplus
}
#endif

#endif
