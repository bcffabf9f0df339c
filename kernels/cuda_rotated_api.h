/* cuda_rotated_api.h — C-callable CUDA decoders of the rotated formats (kernels/rotated_cuda.cu): E8P codes
 * (stage2 0: e8p, 1: e8p_rvq3's one-byte second stage, 2: e8p_rvq4's 16-bit one) and rht_int INTn groups,
 * each followed by the two-sided inverse randomized Hadamard transform, bit-exact with formats/fmt_quip.c.
 * Same conventions as kernels/cuda_api.h (only with QL_HAVE_CUDA; *_dev: device buffers queued on `stream`,
 * with stream-ordered scratch of one matrix when a side has a Paley factor; *_emulated: the same per-element
 * code on the host). The layout (header, seed) is fmt_quip.c's; the seed is read from the stored bytes. */
#ifndef QL_CUDA_ROTATED_API_H
#define QL_CUDA_ROTATED_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

ql_status ql_cuda_e8p_dequantize_dev(int stage2, const void *src, float *dst, int64_t nrows, int64_t ncols,
                                     void *stream);
ql_status ql_cuda_e8p_dequantize_emulated(int stage2, const void *src, float *dst, int64_t nrows, int64_t ncols);
ql_status ql_cuda_rht_int_dequantize_dev(int bits, int group, const void *src, float *dst, int64_t nrows,
                                         int64_t ncols, void *stream);
/* rht_int's quantizer: NaN -> 0 and ±Inf -> ±(largest finite |w|), the forward RHT with seed, INT groups */
ql_status ql_cuda_rht_int_quantize_dev(int bits, int group, uint64_t seed, const float *src, void *dst, int64_t nrows,
                                       int64_t ncols, void *stream);
ql_status ql_cuda_rht_int_quantize_emulated(int bits, int group, uint64_t seed, const float *src, void *dst,
                                            int64_t nrows, int64_t ncols);
ql_status ql_cuda_rht_int_dequantize_emulated(int bits, int group, const void *src, float *dst, int64_t nrows,
                                              int64_t ncols);

#ifdef __cplusplus
}
#endif

#endif
