/* int8_gemm.h — INT8×INT8→INT32 matrix products for W8A8 with dynamic per-token activations: activations
 * as signed int8 codes, weights as the unsigned codes of a symmetric INT8 row (value = code - 128, the
 * layout of formats/fmt_int.c's int8_channel rows after their fp16 scale). Sums are exact in int32, so
 * every kernel gives the same integers: the scalar reference below is the specification, the AVX2 and
 * AVX-512 VNNI twins must equal it bit for bit (tests/test_int8_gemm.c). Pure and thread-safe. */
#ifndef QL_INT8_GEMM_H
#define QL_INT8_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* Longest row the kernels accept: K · 255 · 127 must fit an int32 (the VNNI kernel sums unsigned codes). */
#define QL_I8GEMM_MAX_K 65536

typedef enum { QL_I8GEMM_REF = 0, QL_I8GEMM_AVX2, QL_I8GEMM_VNNI, QL_I8GEMM_COUNT } ql_i8gemm_kernel;

/* c[t·ldc + n] = Σ_k a[t·lda + k] · (w[n·ldw + k] − 128) for t < T, n < N, k < K (K ≤ QL_I8GEMM_MAX_K). */
void ql_gemm_s8u8_ref(const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw, int T, int N, int K, int32_t *c,
                      int64_t ldc);
/* The same with kernel `k`; false (nothing written) when this CPU lacks it. */
bool ql_gemm_s8u8_with(ql_i8gemm_kernel k, const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw, int T, int N,
                       int K, int32_t *c, int64_t ldc);
/* The fastest kernel this CPU has (the reference under QL_FORCE_REF=1, see kernels/simd.c), with the
 * rows of w split over n_threads. */
void ql_gemm_s8u8(const int8_t *a, int64_t lda, const uint8_t *w, int64_t ldw, int T, int N, int K, int32_t *c,
                  int64_t ldc, int n_threads);
ql_i8gemm_kernel ql_gemm_s8u8_best(void);
const char *ql_i8gemm_kernel_name(ql_i8gemm_kernel k); /* "ref", "avx2", "avx512-vnni" */

#endif
