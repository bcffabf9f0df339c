/* cuda_exl2_api.h — C-callable CUDA decoder of ExLlamaV2's EXL2 tensors (kernels/exl2_cuda.cu), bit-exact with
 * formats/fmt_exl2.c's reference. The format file owns the layout: it passes the tensor's groups (in processing
 * order) and the byte offsets of q_invperm, q_scale_max, q_scale and q_weight. Same conventions as
 * kernels/cuda_api.h (QL_HAVE_CUDA only; *_dev: device buffers on `stream`, *_emulated: the per-element code on
 * the host). A stored q_invperm that is not a permutation decodes to zeros, as the reference does. */
#ifndef QL_CUDA_EXL2_API_H
#define QL_CUDA_EXL2_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

typedef struct ql_cuda_exl2_group {
    int bits;
    int64_t row, rows, qrow; /* first processing row, count, first 32-bit row of q_weight */
} ql_cuda_exl2_group;
typedef struct ql_cuda_exl2_layout {
    const ql_cuda_exl2_group *groups; /* host memory, G entries */
    int64_t G, invperm, scale_max, scale, weight; /* byte offsets in the tensor */
} ql_cuda_exl2_layout;

/* src: the tensor's bytes; dst [nrows = N outputs, ncols = K inputs] */
ql_status ql_cuda_exl2_dequantize_dev(const ql_cuda_exl2_layout *L, const void *src, float *dst, int64_t nrows,
                                      int64_t ncols, void *stream);
ql_status ql_cuda_exl2_dequantize_emulated(const ql_cuda_exl2_layout *L, const void *src, float *dst, int64_t nrows,
                                           int64_t ncols);

#ifdef __cplusplus
}
#endif

#endif
