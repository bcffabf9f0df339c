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
/* The failure "no CUDA device" with the runtime's reason (an insufficient driver, no device found), for `who`. */
ql_status ql_cuda_no_device(const char *who);

/* One set of entry points per kernel, named after the format it implements; the format registry's CUDA
 * column points at them (formats/format.h, ql_format_cuda_ops). *_dev: device buffers, queued on
 * `stream` (a cudaStream_t, NULL = default stream); returns after the launch (launch errors are reported,
 * execution errors surface at the caller's next synchronization). *_emulated: the kernels' per-block
 * code run on the host (no device needed), so tests check the device arithmetic on any machine.
 * Dequantize: F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS. Quantize (ggml's
 * no-imatrix path): the same list less F16/BF16. Both ways: MXFP4, NVFP4, TQ1_0, TQ2_0. Dequantize only: the
 * lattice i-quants IQ1_S..IQ3_S (their quantizers' searches stay on the CPU). */
typedef ql_status (*ql_cuda_dequant_dev_fn)(const void *src, float *dst, int64_t nrows, int64_t ncols, void *stream);
typedef ql_status (*ql_cuda_quant_dev_fn)(const float *src, void *dst, int64_t nrows, int64_t ncols, void *stream);
#define QL_CUDA_DEQUANT_DECL(lname)                                                                         \
    ql_status ql_cuda_dequantize_##lname##_dev(const void *src, float *dst, int64_t nrows, int64_t ncols,    \
                                               void *stream);                                               \
    ql_status ql_cuda_dequantize_##lname##_emulated(const void *src, float *dst, int64_t nrows, int64_t ncols);
#define QL_CUDA_QUANT_DECL(lname)                                                                           \
    ql_status ql_cuda_quantize_##lname##_dev(const float *src, void *dst, int64_t nrows, int64_t ncols,      \
                                             void *stream);                                                 \
    ql_status ql_cuda_quantize_##lname##_emulated(const float *src, void *dst, int64_t nrows, int64_t ncols);
QL_CUDA_DEQUANT_DECL(f16) QL_CUDA_DEQUANT_DECL(bf16) QL_CUDA_DEQUANT_DECL(q4_0) QL_CUDA_DEQUANT_DECL(q4_1)
QL_CUDA_DEQUANT_DECL(q5_0) QL_CUDA_DEQUANT_DECL(q5_1) QL_CUDA_DEQUANT_DECL(q8_0) QL_CUDA_DEQUANT_DECL(q2_k)
QL_CUDA_DEQUANT_DECL(q3_k) QL_CUDA_DEQUANT_DECL(q4_k) QL_CUDA_DEQUANT_DECL(q5_k) QL_CUDA_DEQUANT_DECL(q6_k)
QL_CUDA_DEQUANT_DECL(iq4_nl) QL_CUDA_DEQUANT_DECL(iq4_xs)
QL_CUDA_QUANT_DECL(q4_0) QL_CUDA_QUANT_DECL(q8_0) QL_CUDA_QUANT_DECL(q4_k) QL_CUDA_QUANT_DECL(q6_k)
QL_CUDA_QUANT_DECL(q4_1) QL_CUDA_QUANT_DECL(q5_0) QL_CUDA_QUANT_DECL(q5_1) QL_CUDA_QUANT_DECL(q2_k)
QL_CUDA_QUANT_DECL(q3_k) QL_CUDA_QUANT_DECL(q5_k) QL_CUDA_QUANT_DECL(iq4_nl) QL_CUDA_QUANT_DECL(iq4_xs)
/* IQ4_NL as llama.cpp writes its KV cache (ggml's quicker search, ql_quantize_row_iq4_nl_fast_ref) */
QL_CUDA_QUANT_DECL(iq4_nl_kv)
QL_CUDA_DEQUANT_DECL(mxfp4) QL_CUDA_QUANT_DECL(mxfp4) QL_CUDA_DEQUANT_DECL(nvfp4) QL_CUDA_QUANT_DECL(nvfp4)
QL_CUDA_DEQUANT_DECL(iq2_xxs) QL_CUDA_DEQUANT_DECL(iq2_xs) QL_CUDA_DEQUANT_DECL(iq2_s) QL_CUDA_DEQUANT_DECL(iq3_xxs)
QL_CUDA_DEQUANT_DECL(iq3_s) QL_CUDA_DEQUANT_DECL(iq1_s) QL_CUDA_DEQUANT_DECL(iq1_m) QL_CUDA_DEQUANT_DECL(tq1_0)
QL_CUDA_DEQUANT_DECL(tq2_0) QL_CUDA_QUANT_DECL(tq1_0) QL_CUDA_QUANT_DECL(tq2_0)

/* GPTQ's block fix on the device (kernels/gptq_cuda.h, ql_cuda_gptq_grid.fix_dev): G [rows, len] (len = the
 * block's columns) quantized row by row with the block's importance imp [len] by the format's imatrix
 * quantizer into blocks + r·row_bytes (bit-exact with the reference's quantize_row(x, imatrix)), and each
 * sub-block's grid parsed from those bytes into a/b/o[s·ld + r] as the format's grid parser does. *_dev:
 * device buffers, queued on stream; *_emulated: the same per-row code on host buffers (stream ignored).
 * Every ggml type with a code grid: Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS. */
#define QL_CUDA_FIX_DECL(lname)                                                                             \
    ql_status ql_cuda_grid_fix_##lname##_dev(const float *G, int64_t rows, int64_t len, const float *imp,   \
                                             void *blocks, int64_t row_bytes, float *a, float *b, float *o, \
                                             int64_t ld, void *stream);                                     \
    ql_status ql_cuda_grid_fix_##lname##_emulated(const float *G, int64_t rows, int64_t len, const float *imp,\
                                                  void *blocks, int64_t row_bytes, float *a, float *b,       \
                                                  float *o, int64_t ld, void *stream);
QL_CUDA_FIX_DECL(q4_k) QL_CUDA_FIX_DECL(q5_k) QL_CUDA_FIX_DECL(q6_k) QL_CUDA_FIX_DECL(q3_k) QL_CUDA_FIX_DECL(q2_k)
QL_CUDA_FIX_DECL(q8_0) QL_CUDA_FIX_DECL(q4_0) QL_CUDA_FIX_DECL(q4_1) QL_CUDA_FIX_DECL(q5_0) QL_CUDA_FIX_DECL(q5_1)
QL_CUDA_FIX_DECL(iq4_nl) QL_CUDA_FIX_DECL(iq4_xs)

/* Host buffers: copies in, runs fn, copies back (synchronous). src_bytes / dst_bytes: the quantized
 * side's size. nrows == 0 only checks the shape. */
ql_status ql_cuda_run_dequantize(ql_cuda_dequant_dev_fn fn, const void *host_src, int64_t src_bytes,
                                 float *host_dst, int64_t nrows, int64_t ncols);
ql_status ql_cuda_run_quantize(ql_cuda_quant_dev_fn fn, const float *host_src, void *host_dst, int64_t dst_bytes,
                               int64_t nrows, int64_t ncols);

/* Dequantize bandwidth: iters runs of fn on a [nrows, ncols] device tensor of `bytes` random codes;
 * *gbps gets (bytes read + bytes written) / second of kernel time. */
ql_status ql_cuda_bench_dequantize(ql_cuda_dequant_dev_fn fn, int64_t bytes, int64_t nrows, int64_t ncols,
                                   int iters, double *gbps);

/* Quantize speed: iters runs of fn on host_src [nrows, ncols] copied to the device (after one warm-up run);
 * *ms gets the kernel time of one run; host_dst (dst_bytes, may be NULL) the codes of the last run. */
ql_status ql_cuda_bench_quantize(ql_cuda_quant_dev_fn fn, const float *host_src, void *host_dst, int64_t dst_bytes,
                                 int64_t nrows, int64_t ncols, int iters, double *ms);

#ifdef __cplusplus
}
#endif

#endif
