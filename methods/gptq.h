/* gptq.h — GPTQ (methods/m_gptq.c) as a function, for callers that need the chosen values too
 * (sensitivity, tests). */
#ifndef QL_GPTQ_H
#define QL_GPTQ_H

#include "formats/format_grid.h"
#include "methods/method.h"

/* GPTQ (m_gptq.c) as a function: the method's quantize_tensor, plus deq [nrows, ncols] (or NULL)
 * receiving the values it chose, which decoding dst reproduces exactly. */
ql_status ql_gptq_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                           const ql_input_stats *st, const ql_method_opts *o, void *dst, float *deq);

/* Where ql_gptq_quantize_on runs: the CPU method, the GPU (kernels/gptq_cuda.h; INTn groups in natural order
 * entirely on the device, every other grid with the Hessian work and column loop on the device and each block's
 * scale search by the registry's quantizer on the host), or that GPU path emulated on the host (tests). */
typedef enum { QL_GPTQ_ON_CPU, QL_GPTQ_ON_CUDA, QL_GPTQ_ON_CUDA_EMULATED } ql_gptq_where;

/* ql_gptq_quantize picks QL_GPTQ_ON_CUDA when the selected backend (core/backend.h) is "cuda" and the format
 * has a per-column grid (lattice i-quants stay on the CPU). */
ql_status ql_gptq_quantize_on(ql_gptq_where where, float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                              const ql_input_stats *st, const ql_method_opts *o, void *dst, float *deq);

#endif
