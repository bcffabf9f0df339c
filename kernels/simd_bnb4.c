/* simd_bnb4.c — AVX2 / AVX-512 twin of the common case of the bitsandbytes 4-bit encoders (the reference is
 * formats/fmt_nf4.c): 64 finite weights times 1/absmax, each coded by how many of the sorted thresholds it
 * passes — NF4's 15 midpoints, or FP4's 7 thresholds on |v| followed by the tree's leaf code and the sign
 * bit — the counting form the CUDA column uses too — with the block's finite absmax and the nibble packing.
 * fmt_nf4.c keeps every other block (NaN, inf, a zero or subnormal absmax, a short last block) on the
 * reference. Exactness rules: kernels/simd_internal.h. */
#ifndef QL_SIMD_TEMPLATE
#include "kernels/simd_internal.h"

#define QL_SIMD_BODY "kernels/simd_bnb4.c"
#include "kernels/simd_instantiate.h"

bool ql_bnb4_block64_fast(const ql_bnb4_thresholds *t, const float *x, float *absmax, uint8_t *packed) {
    bool (*k)(const ql_bnb4_thresholds *, const float *, float *, uint8_t *) =
        QL_SIMD_PICK(bnb4_block64_avx512, bnb4_block64_avx2);
    return k && t->nthr <= 15 && k(t, x, absmax, packed);
}

#else /* ================= the vector body, W lanes (kernels/simd_instantiate.h) ================= */

static TGT bool SFX(bnb4_block64)(const ql_bnb4_thresholds *t, const float *x, float *absmax, uint8_t *packed) {
    VF amax = SFX(splat)(0.f);
    VI finite = (VI){0} - 1;
    for (int c = 0; c < 64; c += W) { /* the largest finite magnitude; NaN and inf fail a <= FLT_MAX */
        const VF a = SFX(vabs)(SFX(load)(x + c));
        const VI fin = a <= FLT_MAX;
        finite &= fin;
        amax = SFX(sel)(fin & (a > amax), a, amax);
    }
    const float am = SFX(hmax)(amax), inv = 1.0f / am;
    if (!SFX(all)(finite) || !(am > 0.0f) || !isfinite(inv)) return false; /* the reference's other cases */
    uint8_t n[64], neg[64], codes[64];
    for (int c = 0; c < 64; c += W) {
        const VF v = SFX(load)(x + c) * inv; /* the reference's x[i] * inv, lane by lane */
        const VF a = t->sign_split ? SFX(vabs)(v) : v;
        VI cnt = (VI){0};
        for (int j = 0; j < t->nthr; j++) cnt -= a > t->thr[j]; /* a true compare is -1 */
        SFX(store_u8)(n + c, cnt);
        SFX(store_u8)(neg + c, (v < 0.f) & 8);
    }
    if (t->sign_split)
        for (int i = 0; i < 64; i++) codes[i] = (uint8_t)(t->leaf[n[i]] + neg[i]);
    else
        for (int i = 0; i < 64; i++) codes[i] = t->leaf[n[i]];
    for (int i = 0; i < 32; i++) packed[i] = (uint8_t)(codes[2 * i] << 4 | codes[2 * i + 1]);
    *absmax = am;
    return true;
}

#endif /* QL_SIMD_TEMPLATE */
