/* output_error.h — how far a changed weight matrix moves a linear layer's output, and how far it moved
 * the weights: the one definition of each, used by the AWQ searches, the sensitivity table and the TUI.
 * With H = Σ x xᵀ over the layer's inputs (core/stats.h), a weight change ΔW changes the outputs by
 * Σ_x ‖ΔW x‖² = tr(ΔW H ΔWᵀ). Pure; thread-safe (OpenBLAS as configured by the caller). */
#ifndef QL_OUTPUT_ERROR_H
#define QL_OUTPUT_ERROR_H

#include <stdint.h>

/* tr(ΔW H ΔWᵀ) = Σ_r δ_r H δ_rᵀ over [rows, cols] with δ = (a − b) ⊘ col_scale, in double: b NULL means
 * δ = a (so ql_output_error(w, NULL, ...) is the reference tr(W H Wᵀ)), col_scale NULL means 1 (else
 * the error is measured after undoing per-column scales, as AWQ does). H is [cols, cols], symmetric,
 * its upper triangle read. Returns a negative value when a buffer cannot be allocated. */
double ql_output_error(const float *a, const float *b, const float *col_scale, int64_t rows, int64_t cols,
                       const double *H);

/* Relative weight error Σ(q − w)² / Σw² over n values (each q − w in float, the sums in double); 0 when
 * both sums are 0, +inf when only the weights are all zero. */
double ql_weight_error(const float *w, const float *q, int64_t n);

#endif
