/* fmt_quip.h — the pieces of QuIP#'s storage formats (formats/fmt_quip.c) that methods/m_quip.c's
 * LDLQ reuses: which E8P variant a format is, one 8-vector through the residual stages, the per-tensor
 * scales, sanitizing and packing a tensor. Layout and type ids: docs/formats.md § QuIP#. */
#ifndef QL_FMT_QUIP_H
#define QL_FMT_QUIP_H

#include "formats/format.h"

#define QL_QUIP_SEED 0x51554950235F5348ull /* the default RHT seed ("QUIP#_SH") */
#define QL_QUIP_HEADER 16                  /* f32 scale1, f32 scale2, u64 seed */

/* true for e8p, e8p_rvq3, e8p_rvq4; *stage2 = 0 (none), 1 (one-byte e8p1 codes), 2 (16-bit E8P codes) */
bool ql_quip_stage2(const ql_format *f, int *stage2);
/* non-finite weights: NaN -> 0, ±inf -> ± the largest finite |w| (a rotation would spread them) */
void ql_quip_sanitize(float *w, int64_t n);
/* q = s1·C1(x/s1) (+ s2·C2((x - s1·C1)/s2)); codes in c1 (and c2). A zero scale gives codes 0 and q = 0. */
void ql_quip_q8(const float x[8], float s1, float s2, int stage2, uint16_t *c1, uint16_t *c2, float q[8]);
/* Per-tensor scales for rotated weights wt [n] (n % 8 == 0): the multiple of the RMS with the least
 * squared error of nearest-codeword rounding (on up to 8192 evenly spaced vectors), then the same for
 * the residual's stage. */
void ql_quip_scales(const float *wt, int64_t n, int stage2, float *s1, float *s2);
/* dst = header + codes (c2 NULL when stage2 == 0) */
void ql_quip_pack(void *dst, int64_t nvec, int stage2, float s1, float s2, uint64_t seed, const uint16_t *c1,
                  const uint16_t *c2);

#endif
