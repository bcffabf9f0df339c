/* iq_lattice.h — ggml's lattice i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) seen as a vector code
 * grid, for methods that choose codes one group at a time with error feedback (GPTQ). Once a 256-block
 * has been written by the type's own quantizer, its super-block scale d and its 4-bit sub-block scales
 * are fixed; after that, each group of 8 consecutive weights may take ANY point of the type's grid with
 * ANY allowed sign pattern (IQ2_XXS, IQ2_XS, IQ3_XXS: an even number of minus signs, as only 7 sign bits
 * are stored) at its group's scale. IQ1_S and IQ1_M have no sign bits: a group is any of the 2048 points of
 * {−1,0,1}⁸ in iq1s_grid plus the shift δ = ±1/8 (IQ1_S: δ shared by the 32-block, kept; IQ1_M: δ per
 * group, chosen with the point). Code: kernels/iq_lattice.c. Pure and thread-safe. */
#ifndef QL_IQ_LATTICE_H
#define QL_IQ_LATTICE_H

#include <stdbool.h>
#include <stdint.h>

#define QL_IQ_LATTICE_GROUPS 32 /* groups of 8 in a 256-block */

/* True for the seven types above. */
bool ql_iq_lattice_supported(uint32_t type);

/* The scale of each of the 32 groups of one block, computed as ggml's decoder computes it: every decoded
 * value is ±(scale[g] · grid coordinate), one rounding. */
void ql_iq_lattice_scales(uint32_t type, const void *blk, float scale[QL_IQ_LATTICE_GROUPS]);

/* The codeword of group g (0..31) nearest to x[8] in Σ w_j (x_j − q_j)² at scale s: exhaustive over the
 * grid, each coordinate's sign that of x_j, and where the sign count must be even the cheapest single
 * flip. Writes the code (grid index and sign bits) into blk, scales untouched, and the decoded values
 * into q[8] (bit for bit what the decoder gives when s is the block's scale of group g). Non-finite x or
 * w give grid point 0; no crash. */
void ql_iq_lattice_round(uint32_t type, void *blk, int g, float s, const float *x, const float *w, float *q);

#endif
