/* e8p.h — the E8P codebook of QuIP# (Tseng et al. 2024): 2^16 vectors of 8 dimensions, a subset of
 * E8 + 1/4, addressed by a 16-bit code, plus its one-byte restriction used as the second stage of
 * e8p_rvq3. Construction (qlab's own numbering; the set is the paper's):
 *   - 256 sign-free "source" patterns a ∈ {1/2, 3/2, 5/2, 7/2}^8: the 227 absolute values of
 *     D̂8 = D8 + 1/2 with ‖a‖² ≤ 10 (in lexicographic order of 2a, so pattern 0 is all 1/2), then
 *     29 of the 56 norm-12 patterns with five entries 3/2 and three 1/2 (the first 29 in lexicographic
 *     order of 2a; QuIP# also pads with 29 of these, the exact subset is a free choice);
 *   - code bits 0..6: the signs of coordinates 0..6 (1 = negative); the sign of coordinate 7 is fixed by
 *     the parity rule: the signed vector must lie in D̂8 (its coordinates sum to an even integer);
 *   - code bit 7: the shift, +1/4 (0) or -1/4 (1), added to every coordinate; bits 8..15: the pattern.
 * 256 patterns × 2^7 signs × 2 shifts = 65536 distinct codewords.
 * The one-byte codebook (e8p1) is pattern 0 alone: bits 0..6 signs, bit 7 the shift (256 vectors with
 * entries ±1/4, ±3/4).
 * Encoding is exact nearest-codeword search: for each shift and pattern the best signs are those of the
 * input; when they break the parity rule, the coordinate that costs least is flipped. Pure,
 * thread-safe (tables are built once under pthread_once). */
#ifndef QL_E8P_H
#define QL_E8P_H

#include <stdint.h>

#define QL_E8P_PATTERNS 256
#define QL_E8P_CODES 65536

/* pattern k's doubled absolute values 2a ∈ {1, 3, 5, 7}: [256][8] */
const uint8_t *ql_e8p_patterns(void);
void ql_e8p_decode(uint16_t code, float out[8]);
uint16_t ql_e8p_encode(const float x[8]); /* nearest codeword (squared distance); ties: +1/4, then the lower pattern */
void ql_e8p1_decode(uint8_t code, float out[8]);
uint8_t ql_e8p1_encode(const float x[8]);

#endif
