/* iq_lattice_internal.h — the nearest-codeword search under kernels/iq_lattice.c and its AVX2 twin
 * (kernels/iq_lattice_avx2.c), exposed for the equality test (tests/test_iq_lattice.c). */
#ifndef QL_IQ_LATTICE_INTERNAL_H
#define QL_IQ_LATTICE_INTERNAL_H

/* Over grid points gi in [0, npts) with coordinates ct[j * npts + gi] (j < dim, all positive), at scale
 * s, targets ax[dim] (= |x|) and weights w[dim]: cost(gi) = Σ_j w_j (ax_j − s·c_j)² summed in j order,
 * pen(gi) = min_j 4·w_j·ax_j·(s·c_j) (the cheapest sign flip; first j on ties). gi: the first point of
 * least cost; fgi, fj: the first point of least cost + pen, and its flipped coordinate. Costs compare
 * with <, so NaN never wins; with no finite cost gi = fgi = fj = 0. npts is a multiple of 8. */
typedef struct {
    int gi;
    float cost;
    int fgi;
    int fj;
    float fcost;
    int pad;
} ql_iq_lattice_best;

void ql_iq_lattice_search_ref(const float *ct, int npts, int dim, float s, const float *ax, const float *w,
                              ql_iq_lattice_best *out);
#if defined(__x86_64__) || defined(__i386__)
#define QL_IQ_LATTICE_AVX2 1
void ql_iq_lattice_search_avx2(const float *ct, int npts, int dim, float s, const float *ax, const float *w,
                               ql_iq_lattice_best *out);
#endif

#endif
