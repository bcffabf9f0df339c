/* cuda_int_api.h — C-callable CUDA twins of the INTn codecs (kernels/codecs_int_cuda.cu), bit-exact with
 * kernels/int_quants.h's row codec and formats/fmt_int.c's 2-D tile codec. Same conventions as
 * kernels/cuda_api.h (only with QL_HAVE_CUDA; *_dev: device buffers queued on `stream`, *_emulated: the
 * kernels' per-group code run on the host; errors as ql_status). The parameters are the format's: the
 * entries of formats/fmt_int.c wrap them into the registry's CUDA column. Quantize takes no importance
 * weights: the _mse variants' search is the unweighted one (the reference with importance NULL). */
#ifndef QL_CUDA_INT_API_H
#define QL_CUDA_INT_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

/* rows of ncols: group <= 0 = one group per row (a multiple of 8 otherwise) */
ql_status ql_cuda_int_quantize_dev(const float *src, void *dst, int64_t nrows, int64_t ncols, void *stream, int bits,
                                   int group, bool sym, bool mse);
ql_status ql_cuda_int_quantize_emulated(const float *src, void *dst, int64_t nrows, int64_t ncols, int bits,
                                        int group, bool sym, bool mse);
ql_status ql_cuda_int_dequantize_dev(const void *src, float *dst, int64_t nrows, int64_t ncols, void *stream,
                                     int bits, int group, bool sym);
ql_status ql_cuda_int_dequantize_emulated(const void *src, float *dst, int64_t nrows, int64_t ncols, int bits,
                                          int group, bool sym);
/* symmetric bs x bs tiles over the whole tensor */
ql_status ql_cuda_int_tiles_quantize_dev(const float *src, void *dst, int64_t nrows, int64_t ncols, void *stream,
                                         int bits, int bs);
ql_status ql_cuda_int_tiles_quantize_emulated(const float *src, void *dst, int64_t nrows, int64_t ncols, int bits,
                                              int bs);
ql_status ql_cuda_int_tiles_dequantize_dev(const void *src, float *dst, int64_t nrows, int64_t ncols, void *stream,
                                           int bits, int bs);
ql_status ql_cuda_int_tiles_dequantize_emulated(const void *src, float *dst, int64_t nrows, int64_t ncols, int bits,
                                                int bs);

#ifdef __cplusplus
}
#endif

#endif
