/* iq_quants_internal.h — the off-grid neighbour search at the heart of ggml's i-quant quantizers
 * (kernels/iq_quants_ref.c) and its AVX2 twin (kernels/iq_quants_avx2.c), exposed for the equality test
 * (tests/test_iquants.c). */
#ifndef QL_IQ_QUANTS_INTERNAL_H
#define QL_IQ_QUANTS_INTERNAL_H

#include <stdint.h>

/* Over the list nb[1..nb[0]] of grid indices (nb[0] >= 1), point gi's level of coordinate j being
 * (keys[gi] >> bits·j) & (2^bits − 1) (< 8) and that level's value qtab[level]: the grid index of the
 * first list entry minimising d2 = Σ_j w_j·(s·qtab[l_j] − x_j)², j = 0..dim−1 summed in order, each
 * product rounded before it is added (ggml's arithmetic), compared with < starting from FLT_MAX — so
 * NaN, Inf and FLT_MAX never win; -1 when nothing is below FLT_MAX. dim <= 8. The AVX2 twin reads the
 * list 8 entries at a time: nb[1 .. nb[0] + 7] must be readable (what lies past the list is ignored). */
typedef int (*ql_iq_nbr_fn)(const uint16_t *nb, const int32_t *keys, int dim, int bits, const float *qtab, float s,
                            const float *x, const float *w);

int ql_iq_nbr_search_ref(const uint16_t *nb, const int32_t *keys, int dim, int bits, const float *qtab, float s,
                         const float *x, const float *w);
#if defined(__x86_64__) || defined(__i386__)
#define QL_IQ_NBR_AVX2 1
int ql_iq_nbr_search_avx2(const uint16_t *nb, const int32_t *keys, int dim, int bits, const float *qtab, float s,
                          const float *x, const float *w);
#endif

#endif
