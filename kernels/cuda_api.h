/* cuda_api.h — C-callable CUDA codecs for ggml block formats (kernels/codecs_cuda.cu), bit-exact with
 * the scalar reference in ggml_quants.h: every float operation is the reference's, done with the
 * non-contracting __fmul_rn/__fadd_rn/... intrinsics (no FMA), and float->int casts reproduce x86.
 * Only built when the Makefile finds nvcc (it then defines QL_HAVE_CUDA for C files): C code must call
 * these under #ifdef QL_HAVE_CUDA. Functions return ql_status and set ql_last_error() with the file/line
 * of the failing CUDA call: QL_ERR_UNSUPPORTED (no device, or no kernel for the type), QL_ERR_ARG (shape),
 * QL_ERR_NOMEM (device allocation), QL_ERR_IO (any other CUDA error). Thread-safe as the CUDA runtime is;
 * they use the current device. Buffers belong to the caller. Shapes: [nrows, ncols] rows packed without
 * padding, ncols a multiple of the type's block. */
#ifndef QL_CUDA_API_H
#define QL_CUDA_API_H

#include <stdbool.h> /* before extern "C": ql_common.h's system headers stay C++-clean */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/ggml_types.h"
#include "base/ql_common.h"

/* 1 when a CUDA device can be used (checked once), else 0. */
int ql_cuda_available(void);

/* Types with a dequantize kernel: F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS.
 * With a quantize kernel (ggml's no-imatrix path): Q4_0, Q8_0, Q4_K, Q6_K. */
bool ql_cuda_can_dequantize(uint32_t type);
bool ql_cuda_can_quantize(uint32_t type);

/* Host buffers: copies in, runs, copies back (synchronous). */
ql_status ql_cuda_dequantize(uint32_t type, const void *host_src, float *host_dst, int64_t nrows,
                             int64_t ncols);
ql_status ql_cuda_quantize(uint32_t type, const float *host_src, void *host_dst, int64_t nrows,
                           int64_t ncols);

/* Device buffers, queued on `stream` (a cudaStream_t, NULL = default stream); returns after the launch
 * (launch errors are reported, execution errors surface at the caller's next synchronization). */
ql_status ql_cuda_dequantize_dev(uint32_t type, const void *dev_src, float *dev_dst, int64_t nrows,
                                 int64_t ncols, void *stream);
ql_status ql_cuda_quantize_dev(uint32_t type, const float *dev_src, void *dev_dst, int64_t nrows,
                               int64_t ncols, void *stream);

/* The kernels' per-block code run on the host (no device needed): lets tests check the device
 * arithmetic against the reference on machines without a GPU. Same types and results as above. */
ql_status ql_cuda_emulate_dequantize(uint32_t type, const void *src, float *dst, int64_t nrows,
                                     int64_t ncols);
ql_status ql_cuda_emulate_quantize(uint32_t type, const float *src, void *dst, int64_t nrows, int64_t ncols);

/* Dequantize bandwidth: iters runs on a [nrows, ncols] device tensor of random codes; *gbps gets
 * (bytes read + bytes written) / second of kernel time. */
ql_status ql_cuda_bench_dequantize(uint32_t type, int64_t nrows, int64_t ncols, int iters, double *gbps);

#ifdef __cplusplus
}
#endif

#endif
