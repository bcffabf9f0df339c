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

#endif
