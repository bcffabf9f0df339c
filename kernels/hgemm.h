/* hgemm.h — y[T,N] = x[T,K] · w[N,K]ᵀ for 16-bit float weights (F16, BF16) read as stored: every output one dot
 * product along K in 16 lanes (lane l sums k ≡ l mod 16 in order with fused multiply-adds), then the lanes added
 * in a fixed tree (l + l+8, then + l+4, + l+2, + l+1). The scalar reference and the AVX-512 twin compute exactly
 * that, so they agree bit for bit whatever the tile; against sgemm over decoded rows only float rounding differs. */
#ifndef QL_HGEMM_H
#define QL_HGEMM_H

#include <stdbool.h>
#include <stdint.h>

/* True when the twin runs here for this weight type (QL_TYPE_F16 or QL_TYPE_BF16) and K (a multiple of 16). */
bool ql_hgemm_available(uint32_t type, int K);
/* Rows [0, nr) of the weight (rows of K values each, the first at w): y[t*ldy + j] = (or +=, when accumulate) the
 * product of token t < T (x[t*K ...]) and row j. */
void ql_hgemm_ref(uint32_t type, const uint16_t *w, int nr, const float *x, int T, int K, float *y, int64_t ldy,
                  bool accumulate);
void ql_hgemm_avx512(uint32_t type, const uint16_t *w, int nr, const float *x, int T, int K, float *y, int64_t ldy,
                     bool accumulate);
/* The same with the activations stored in the weight's 16-bit type (x16[t*K ...]): the product of the values they
 * hold, bit for bit what ql_hgemm_avx512 gives for those values as F32, streaming half the bytes. */
void ql_hgemm_avx512_x16(uint32_t type, const uint16_t *w, int nr, const uint16_t *x16, int T, int K, float *y,
                         int64_t ldy, bool accumulate);
/* x[n] (values already rounded to `type`, as kernels/act_round.c leaves them) in that 16-bit type, exactly */
void ql_hgemm_narrow(uint32_t type, const float *x, int64_t n, uint16_t *out);

#endif
