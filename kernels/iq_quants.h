/* iq_quants.h — quantizers for ggml's lattice i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
 * IQ3_S) and ternary types (TQ1_0, TQ2_0), bit-exact with ggml-quants.c (llama.cpp 34af94cd). Their
 * decoders are in ggml_quants.h. Code: kernels/iq_quants_ref.c. The first use of each lattice builds
 * its key map and neighbour lists once (pthread_once; IQ1's is the largest, a fraction of a second);
 * after that every function is pure and thread-safe. Rows are n (ncols) values, a multiple of 256. */
#ifndef QL_IQ_QUANTS_H
#define QL_IQ_QUANTS_H

#include <stdbool.h>
#include <stdint.h>

#include "base/ql_common.h"

/* True for the types ggml quantizes only with importance weights (ggml_quantize_requires_imatrix):
 * IQ2_XXS, IQ2_XS, IQ1_S. IQ1_M is not among them: without weights it uses x^2 as ggml does. */
bool ql_ggml_quantize_requires_imatrix(uint32_t type);

/* Whole matrices [nrows, ncols], rows packed: QL_OK, or QL_ERR_ARG with the reason in ql_last_error()
 * when the type needs an imatrix and got none, or ncols is not a multiple of 256; QL_ERR_UNSUPPORTED
 * for a type not quantized here. imatrix: NULL or ncols weights, the same for every row (as ggml). */
ql_status ql_iq_quantize_rows(uint32_t type, const float *src, void *dst, int64_t nrows, int64_t ncols,
                              const float *imatrix);

/* One row of n values -> n/256 blocks. For IQ2_XXS, IQ2_XS and IQ1_S imatrix must not be NULL (ggml
 * asserts; these abort): check ql_ggml_quantize_requires_imatrix first, or use ql_iq_quantize_rows. */
void ql_quantize_row_iq2_xxs_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq2_xs_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq2_s_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq3_xxs_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq3_s_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq1_s_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_iq1_m_ref(const float *x, void *y, int64_t n, const float *imatrix);
void ql_quantize_row_tq1_0_ref(const float *x, void *y, int64_t n, const float *imatrix); /* imatrix unused */
void ql_quantize_row_tq2_0_ref(const float *x, void *y, int64_t n, const float *imatrix); /* imatrix unused */

/* The same applied to each row of [nrows, ncols] (nothing written when ncols % 256 or nrows <= 0), with
 * the signature of the format registry's quantize_rows, named as its ENTRY macro expects. */
#define QL_IQ_ROWS_DECL(lname)                                                                           \
    void ql_quantize_rows_##lname##_ref(const float *src, void *dst, int64_t nrows, int64_t ncols,       \
                                        const float *imatrix);
QL_IQ_ROWS_DECL(iq2_xxs) QL_IQ_ROWS_DECL(iq2_xs) QL_IQ_ROWS_DECL(iq2_s) QL_IQ_ROWS_DECL(iq3_xxs)
QL_IQ_ROWS_DECL(iq3_s) QL_IQ_ROWS_DECL(iq1_s) QL_IQ_ROWS_DECL(iq1_m) QL_IQ_ROWS_DECL(tq1_0)
QL_IQ_ROWS_DECL(tq2_0)
/* The same bytes through the AVX2 neighbour search where the CPU has it (the format registry's simd
 * column; QL_FORCE_REF=1 or a CPU without AVX2 gives the reference's path). */
#define QL_IQ_ROWS_FAST_DECL(lname)                                                                      \
    void ql_quantize_rows_##lname##_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,      \
                                         const float *imatrix);
QL_IQ_ROWS_FAST_DECL(iq2_xxs) QL_IQ_ROWS_FAST_DECL(iq2_xs) QL_IQ_ROWS_FAST_DECL(iq2_s)
QL_IQ_ROWS_FAST_DECL(iq3_xxs) QL_IQ_ROWS_FAST_DECL(iq3_s) QL_IQ_ROWS_FAST_DECL(iq1_s) QL_IQ_ROWS_FAST_DECL(iq1_m)
#undef QL_IQ_ROWS_FAST_DECL
#undef QL_IQ_ROWS_DECL

#endif
