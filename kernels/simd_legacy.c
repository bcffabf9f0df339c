/* simd_legacy.c — AVX2 / AVX-512 twins of ggml's blocks of 32: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL
 * (kernels/simd.h); ncols a multiple of 32. Without imatrix a legacy block is a few vector operations
 * (rounding, no search); with it, the make_qx_quants / make_qkx3_quants searches run one block per lane
 * (kernels/simd_prims.h) and, as sigma2 spans the row, a row with a non-finite value (or a non-finite
 * imatrix) goes to the reference whole. IQ4_NL searches one block per lane with or without imatrix.
 * Exactness rules and the two-width build: kernels/simd_internal.h. */
#ifndef QL_SIMD_TEMPLATE
#include "kernels/simd_internal.h"

#include <stddef.h>

static const float iq4_values_f[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                       1,    13,   25,  38,  53,  69,  89,  113};

/* Legacy 4-bit packing of 32 levels (the 5-bit one, pack_q5, is in ggml_quants_internal.h). */
static inline void pack_q4(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

static bool all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!(fabsf(x[i]) <= FLT_MAX)) return false;
    return true;
}

/* The four legacy kinds share the block-of-32 drivers: each block is the fp16 scale d at offset 0, then
 * (byte offsets, 0 where absent) the fp16 min m, the 32 fifth bits qh and the 16 bytes of nibbles qs. */
enum { LEG_Q4_0, LEG_Q4_1, LEG_Q5_0, LEG_Q5_1 };
static const struct {
    int size, m, qh, qs;
    void (*ref)(const float *x, void *y, int64_t n, const float *imatrix);
    void (*ref_rows)(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imatrix);
} legacy[] = {
    [LEG_Q4_0] = {sizeof(blk_q4_0), 0, 0, offsetof(blk_q4_0, qs), ql_quantize_row_q4_0_ref,
                  ql_quantize_rows_q4_0_ref},
    [LEG_Q4_1] = {sizeof(blk_q4_1), offsetof(blk_q4_1, m), 0, offsetof(blk_q4_1, qs), ql_quantize_row_q4_1_ref,
                  ql_quantize_rows_q4_1_ref},
    [LEG_Q5_0] = {sizeof(blk_q5_0), 0, offsetof(blk_q5_0, qh), offsetof(blk_q5_0, qs), ql_quantize_row_q5_0_ref,
                  ql_quantize_rows_q5_0_ref},
    [LEG_Q5_1] = {sizeof(blk_q5_1), offsetof(blk_q5_1, m), offsetof(blk_q5_1, qh), offsetof(blk_q5_1, qs),
                  ql_quantize_row_q5_1_ref, ql_quantize_rows_q5_1_ref},
};

static inline void put_fp16(uint8_t *p, float v) {
    const uint16_t h = ql_fp32_to_fp16(v);
    memcpy(p, &h, 2);
}

#define QL_SIMD_BODY "kernels/simd_legacy.c"
#include "kernels/simd_instantiate.h"

/* Without imatrix a legacy matrix is one long row of blocks. With it, sigma2 spans the row, so a row with a
 * non-finite value (or a non-finite imatrix) goes to the reference whole. */
static void legacy_quant_rows(int kind, const float *src, void *dst, int64_t nrows, int64_t ncols,
                              const float *imp) {
    const int64_t nb_row = ncols / 32, rb = ncols > 0 && ncols % 32 == 0 ? nb_row * legacy[kind].size : 0;
    void (*rtn)(int, const float *, void *, int64_t) = QL_SIMD_PICK(legacy_rtn_avx512, legacy_rtn_avx2);
    void (*imat)(int, const float *, void *, int64_t, const float *, float) =
        QL_SIMD_PICK(legacy_imat_avx512, legacy_imat_avx2);
    const bool has_kernel = imp ? imat != NULL : rtn != NULL;
    if (rb <= 0 || !has_kernel) {
        legacy[kind].ref_rows(src, dst, nrows, ncols, imp); /* also what a shape it cannot store gets */
        return;
    }
    if (!imp) {
        rtn(kind, src, dst, nrows * nb_row);
        return;
    }
    const bool imp_ok = all_finite(imp, ncols);
    for (int64_t r = 0; r < nrows; ++r) {
        const float *x = src + r * ncols;
        uint8_t *y = (uint8_t *)dst + r * rb;
        if (imp_ok && all_finite(x, ncols))
            imat(kind, x, y, nb_row, imp, ql_ggml_row_sigma2(x, ncols));
        else
            legacy[kind].ref(x, y, ncols, imp);
    }
}

/* The four kinds' entry points. */
#define LEGACY_QUANT_ENTRY(lname, kind)                                                                      \
    void ql_quantize_rows_##lname##_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,         \
                                         const float *importance) {                                          \
        legacy_quant_rows(kind, src, dst, nrows, ncols, importance);                                         \
    }
LEGACY_QUANT_ENTRY(q4_0, LEG_Q4_0)
LEGACY_QUANT_ENTRY(q4_1, LEG_Q4_1)
LEGACY_QUANT_ENTRY(q5_0, LEG_Q5_0)
LEGACY_QUANT_ENTRY(q5_1, LEG_Q5_1)

/* Q8_0 has no imatrix path, as in ggml: q8_0_quant takes (x, y, nb, nb_row, importance) and ignores the
 * last two. */
QL_SIMD_QUANT_ENTRY(q8_0, q8_0_quant, 32)
QL_SIMD_QUANT_ENTRY(iq4_nl, iq4_nl_quant, 32)
QL_SIMD_DEQUANT_ENTRY(q8_0, q8_0_dequant, 32)
QL_SIMD_DEQUANT_ENTRY(q4_0, q4_0_dequant, 32)
QL_SIMD_DEQUANT_ENTRY(q4_1, q4_1_dequant, 32)
QL_SIMD_DEQUANT_ENTRY(q5_0, q5_0_dequant, 32)
QL_SIMD_DEQUANT_ENTRY(q5_1, q5_1_dequant, 32)
QL_SIMD_DEQUANT_ENTRY(iq4_nl, iq4_nl_dequant, 32)

#else /* ================= the vector body, W lanes (kernels/simd_instantiate.h) ================= */

/* ---------------- Q8_0 ---------------- */
static TGT void SFX(q8_0_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    (void)nb_row;
    (void)imatrix;
    blk_q8_0 *y = vy;
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        VF v[32 / W];
        VI ok = (VI){0} - 1;
        VF amax = SFX(splat)(0.f);
        for (int k = 0; k < 32 / W; ++k) {
            v[k] = SFX(load)(xb + k * W);
            VF a = SFX(vabs)(v[k]);
            ok &= a <= FLT_MAX;
            amax = SFX(sel)(a > amax, a, amax);
        }
        if (!SFX(all)(ok)) { /* NaN/Inf: the reference's order-dependent NaN max and UB casts */
            ql_quantize_row_q8_0_ref(xb, &y[i], 32, NULL);
            continue;
        }
        const float am = SFX(hmax)(amax);
        const float d = am / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        uint8_t q[32];
        for (int k = 0; k < 32 / W; ++k) {
            VF p = v[k] * id;
            VF a = SFX(vabs)(p);
            ok &= a < 127.5f; /* roundf then int8 is exact below this; NaN fails */
            /* lanes that failed are redone in scalar; zero them so the cast and negation stay defined */
            a = SFX(sel)(a < 127.5f, a, SFX(splat)(0.f));
            /* roundf: half away from zero; a - trunc(a) is exact */
            VI t = __builtin_convertvector(a, VI);
            VI r = t - (a - SFX(cvt)(t) >= 0.5f);
            SFX(store_u8)(q + k * W, SFX(seli)(p < 0.f, -r, r));
        }
        if (!SFX(all)(ok)) {
            ql_quantize_row_q8_0_ref(xb, &y[i], 32, NULL);
            continue;
        }
        y[i].d = ql_fp32_to_fp16(d);
        memcpy(y[i].qs, q, 32);
    }
}

static TGT void SFX(q8_0_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q8_0 *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const VF d = SFX(splat)(ql_simd_fp16_to_fp32(x[i].d));
        for (int k = 0; k < 32; k += W) SFX(store)(y + i * 32 + k, SFX(cvt)(SFX(load_s8)(x[i].qs + k)) * d);
    }
}

/* ---------------- IQ4_NL ---------------- */

/* best_index_int8(16, kvalues_iq4nl, al), the same binary search lane-wise: thr[j] = val[j-1] + val[j]. */
static inline TGT VI SFX(iq4_index)(VF al) {
    static const float thr[16] = {0, -231, -187, -148, -114, -84, -57, -32,
                                  -9, 14,  38,   63,   91,   122, 158, 202};
    const VF x2 = al + al;
    VI idx = (VI){0};
    for (int step = 8; step > 0; step >>= 1) {
        const VI j = idx + step;
        idx = SFX(seli)(x2 >= SFX(lut16)(thr, j), j, idx);
    }
    return idx;
}

/* sum w*q*x and sum w*q*q over a block for the codebook values q picked at inverse scale id */
static inline TGT __attribute__((always_inline)) void SFX(iq4_sums)(const VF *xt, const VF *wt, VF id,
                                                                    VF *sumqx, VF *sumq2) {
    *sumqx = *sumq2 = SFX(splat)(0.f);
    for (int i = 0; i < 32; ++i) {
        const VF q = SFX(lut16)(iq4_values_f, SFX(iq4_index)(id * xt[i]));
        const VF wq = wt[i] * q;
        *sumqx += wq * xt[i];
        *sumq2 += wq * q;
    }
}

/* The block search of iq4_nl_impl (sbs 32: one block per lane); returns the block scale. */
static TGT VF SFX(iq4nl_lanes)(const VF *xt, const VF *wt) {
    enum { n = 32, ntry = 7 };
    VF max;
    const VI small = SFX(absmax_lanes)(n, xt, &max) < GROUP_MAX_EPS;
    VF d = -max / (float)kvalues_iq4nl[0];
    VF sumqx, sumq2;
    SFX(iq4_sums)(xt, wt, 1 / d, &sumqx, &sumq2);
    d = SFX(sel)(sumq2 > 0.f, sumqx / sumq2, SFX(splat)(0.f));
    VF best = d * sumqx;
    for (int itry = -ntry; itry <= ntry; ++itry) {
        SFX(iq4_sums)(xt, wt, (float)(itry + kvalues_iq4nl[0]) / max, &sumqx, &sumq2);
        const VI acc = (sumq2 > 0.f) & (sumqx * sumqx > best * sumq2);
        const VF nd = sumqx / sumq2;
        d = SFX(sel)(acc, nd, d);
        best = SFX(sel)(acc, nd * sumqx, best);
    }
    return SFX(sel)(small, SFX(splat)(0.f), d);
}

static TGT void SFX(iq4_nl_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row,
                                  const float *imatrix) {
    blk_iq4_nl *y = vy;
    for (int64_t ib = 0; ib < nb; ib += W) {
        float xt[32 * W], wt[32 * W];
        bool use[W];
        const float *qw[W];
        for (int s = 0; s < W; ++s) {
            const int64_t b = ib + s;
            use[s] = SFX(block_usable)(x, imatrix, b, nb, nb_row, 32, &qw[s]);
            for (int i = 0; i < 32; ++i) {
                xt[i * W + s] = use[s] ? x[32 * b + i] : 0.f;
                wt[i * W + s] = use[s] && qw[s] ? qw[s][i] : 0.f;
            }
        }
        VF X[32], Wt[32];
        for (int i = 0; i < 32; ++i) X[i] = SFX(load)(xt + i * W);
        if (imatrix) {
            VF sigma2 = SFX(splat)(0.f);
            for (int i = 0; i < 32; ++i) sigma2 += X[i] * X[i];
            sigma2 *= 2.f / 32;
            for (int i = 0; i < 32; ++i) Wt[i] = SFX(load)(wt + i * W) * SFX(vsqrt)(sigma2 + X[i] * X[i]);
        } else {
            for (int i = 0; i < 32; ++i) Wt[i] = X[i] * X[i];
        }
        const VF scale = SFX(iq4nl_lanes)(X, Wt);
        const VF id = SFX(sel)(scale != 0.f, 1 / scale, SFX(splat)(0.f));
        VI Lv[32];
        for (int i = 0; i < 32; ++i) Lv[i] = SFX(iq4_index)(id * X[i]);
        float sc[W];
        SFX(store)(sc, scale);
        for (int s = 0; s < W && ib + s < nb; ++s) {
            const int64_t b = ib + s;
            if (!use[s]) {
                ql_quantize_row_iq4_nl_ref(x + 32 * b, &y[b], 32, qw[s]);
                continue;
            }
            uint8_t L[32];
            SFX(untranspose)(Lv, 32, s, L);
            y[b].d = ql_fp32_to_fp16(sc[s]);
            pack_q4(L, y[b].qs);
        }
    }
}

static TGT void SFX(iq4_nl_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_iq4_nl *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = ql_simd_fp16_to_fp32(x[i].d);
        for (int k = 0; k < 16; k += W) {
            const VI q = SFX(load_u8)(x[i].qs + k);
            SFX(store)(y + 32 * i + k, d * SFX(lut16)(iq4_values_f, q & 0xF));
            SFX(store)(y + 32 * i + 16 + k, d * SFX(lut16)(iq4_values_f, q >> 4));
        }
    }
}

/* ---------------- Q4_0 / Q4_1 / Q5_0 / Q5_1 ---------------- */

/* One block of 32 without imatrix: levels t[32 / W] and the fp16 scale (and min); false when the block
 * needs the reference (non-finite input, or a product outside [0, 64) where the cast is plain). */
static TGT bool SFX(legacy_block)(int kind, const float *xb, uint8_t *dh, uint8_t *mh, VI *t) {
    enum { K = 32 / W };
    VF v[K];
    VI ok = (VI){0} - 1;
    for (int k = 0; k < K; ++k) {
        v[k] = SFX(load)(xb + k * W);
        ok &= SFX(vabs)(v[k]) <= FLT_MAX;
    }
    if (!SFX(all)(ok)) return false;
    float d, sub = 0.0f, bias;
    int top;
    if (kind == LEG_Q4_0 || kind == LEG_Q5_0) {
        const int half = kind == LEG_Q4_0 ? 8 : 16;
        VF amax = SFX(splat)(0.f);
        for (int k = 0; k < K; ++k) {
            const VF a = SFX(vabs)(v[k]);
            amax = SFX(sel)(a > amax, a, amax);
        }
        const float am = SFX(hmax)(amax);
        float max = 0.0f; /* the first element reaching amax, sign kept (0 when all are zero) */
        if (am > 0.0f)
            for (int k = 0; k < K; ++k) {
                const unsigned hit = SFX(mask)(SFX(vabs)(v[k]) == am);
                if (hit) {
                    max = xb[k * W + __builtin_ctz(hit)];
                    break;
                }
            }
        d = max / (float)-half;
        bias = (float)half + 0.5f;
        top = 2 * half - 1;
    } else {
        VF mn = v[0], mx = v[0];
        for (int k = 1; k < K; ++k) {
            mn = SFX(sel)(v[k] < mn, v[k], mn);
            mx = SFX(sel)(v[k] > mx, v[k], mx);
        }
        float min = SFX(hmin)(mn), max = SFX(hmax)(mx);
        if (min == 0.0f || max == 0.0f) { /* the reference keeps the first zero it meets: its sign */
            float z = 0.0f;
            for (int k = 0; k < K; ++k) {
                const unsigned hit = SFX(mask)(v[k] == 0.f);
                if (hit) {
                    z = xb[k * W + __builtin_ctz(hit)];
                    break;
                }
            }
            if (min == 0.0f) min = z;
            if (max == 0.0f) max = z;
        }
        const int nmax = kind == LEG_Q4_1 ? 15 : 31;
        d = (max - min) / (float)nmax;
        sub = min;
        bias = 0.5f;
        top = kind == LEG_Q4_1 ? 15 : 1 << 30; /* Q5_1 does not clamp */
        put_fp16(mh, min);
    }
    const float id = d ? 1.0f / d : 0.0f;
    for (int k = 0; k < K; ++k) {
        const VF p = (kind == LEG_Q4_1 || kind == LEG_Q5_1 ? v[k] - sub : v[k]) * id + bias;
        const VI in = (p >= 0.f) & (p < 64.f);
        ok &= in;
        t[k] = SFX(mini)(SFX(trunc_ok)(in, p), top);
    }
    if (!SFX(all)(ok)) return false;
    put_fp16(dh, d);
    return true;
}

static TGT void SFX(pack4)(const VI *t, uint8_t *qs) {
    for (int k = 0; k < 16 / W; ++k) SFX(store_u8)(qs + k * W, (t[k] & 0xF) | ((t[k + 16 / W] & 0xF) << 4));
}

static TGT void SFX(pack5)(const VI *t, uint8_t *qs, uint8_t *qh) {
    SFX(pack4)(t, qs);
    uint32_t h = 0;
    for (int k = 0; k < 32 / W; ++k) h |= (uint32_t)SFX(mask)(t[k] << 27) << (k * W); /* bit 4 of element e */
    memcpy(qh, &h, 4);
}

static TGT void SFX(legacy_rtn)(int kind, const float *x, void *vy, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float *xb = x + 32 * i;
        uint8_t *y = (uint8_t *)vy + legacy[kind].size * i;
        VI t[32 / W];
        if (!SFX(legacy_block)(kind, xb, y, y + legacy[kind].m, t))
            legacy[kind].ref(xb, y, 32, NULL);
        else if (legacy[kind].qh)
            SFX(pack5)(t, y + legacy[kind].qs, y + legacy[kind].qh);
        else
            SFX(pack4)(t, y + legacy[kind].qs);
    }
}

/* One row with imatrix (all finite; sigma2 the row's): weights qw * sqrt(sigma2 + x^2), W blocks per pass,
 * one per lane (the last block repeated to fill the lanes). */
static TGT void SFX(legacy_imat)(int kind, const float *x, void *vy, int64_t nb, const float *imatrix,
                                 float sigma2) {
    for (int64_t ib = 0; ib < nb; ib += W) {
        float xt[32 * W], wt[32 * W];
        for (int s = 0; s < W; ++s) {
            const int64_t b = QMIN(ib + s, nb - 1);
            for (int i = 0; i < 32; ++i) {
                xt[i * W + s] = x[32 * b + i];
                wt[i * W + s] = imatrix[32 * b + i];
            }
        }
        VF X[32], Wt[32];
        for (int i = 0; i < 32; ++i) {
            X[i] = SFX(load)(xt + i * W);
            Wt[i] = SFX(load)(wt + i * W) * SFX(vsqrt)(sigma2 + X[i] * X[i]);
        }
        VI Lv[32];
        VF scale, the_min = SFX(splat)(0.f);
        if (kind == LEG_Q4_0 || kind == LEG_Q5_0)
            scale = SFX(qx_lanes)(32, X, Wt, true, kind == LEG_Q4_0 ? 8 : 16, Lv);
        else
            scale = SFX(qkx_lanes)(32, X, Wt, kind == LEG_Q4_1 ? 15 : 31, -0.9f, 0.05f, 36, true, false, Lv,
                                   &the_min);
        float sc[W], mn[W];
        SFX(store)(sc, scale);
        SFX(store)(mn, the_min);
        for (int s = 0; s < W && ib + s < nb; ++s) {
            uint8_t *y = (uint8_t *)vy + legacy[kind].size * (ib + s);
            uint8_t L[32];
            SFX(untranspose)(Lv, 32, s, L);
            put_fp16(y, sc[s]);
            if (legacy[kind].m) put_fp16(y + legacy[kind].m, -mn[s]);
            if (legacy[kind].qh)
                pack_q5(L, y + legacy[kind].qs, y + legacy[kind].qh);
            else
                pack_q4(L, y + legacy[kind].qs);
        }
    }
}

/* element e's fifth bit is bit e of qh */
static inline TGT VI SFX(q5_high)(uint32_t qh, int e0) {
    VI e;
    for (int l = 0; l < W; ++l) e[l] = e0 + l;
    return (VI)((((VU){0} + qh) >> (VU)e) & 1) << 4;
}

/* Q4_0 / Q4_1 / Q5_0 / Q5_1: y = d * (level - offset) (+ m); level = nibble (| fifth bit). */
static inline TGT __attribute__((always_inline)) void SFX(legacy_dequant)(int kind, const void *vx, float *y,
                                                                          int64_t nb) {
    const int size = legacy[kind].size, has_m = legacy[kind].m != 0, has_h = legacy[kind].qh != 0;
    const int off = has_m ? 0 : has_h ? 16 : 8;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = (const uint8_t *)vx + size * i;
        uint16_t dh, mh = 0;
        uint32_t qh = 0;
        memcpy(&dh, b, 2);
        if (has_m) memcpy(&mh, b + legacy[kind].m, 2);
        if (has_h) memcpy(&qh, b + legacy[kind].qh, 4);
        const float d = ql_simd_fp16_to_fp32(dh), m = ql_simd_fp16_to_fp32(mh);
        for (int k = 0; k < 16; k += W) {
            const VI q = SFX(load_u8)(b + legacy[kind].qs + k);
            VI lo = q & 0xF, hi = q >> 4;
            if (has_h) {
                lo |= SFX(q5_high)(qh, k);
                hi |= SFX(q5_high)(qh, 16 + k);
            }
            if (has_m) {
                SFX(store)(y + 32 * i + k, SFX(cvt)(lo) * d + m);
                SFX(store)(y + 32 * i + 16 + k, SFX(cvt)(hi) * d + m);
            } else {
                SFX(store)(y + 32 * i + k, SFX(cvt)(lo - off) * d);
                SFX(store)(y + 32 * i + 16 + k, SFX(cvt)(hi - off) * d);
            }
        }
    }
}
static TGT void SFX(q4_0_dequant)(const void *vx, float *y, int64_t nb) { SFX(legacy_dequant)(LEG_Q4_0, vx, y, nb); }
static TGT void SFX(q4_1_dequant)(const void *vx, float *y, int64_t nb) { SFX(legacy_dequant)(LEG_Q4_1, vx, y, nb); }
static TGT void SFX(q5_0_dequant)(const void *vx, float *y, int64_t nb) { SFX(legacy_dequant)(LEG_Q5_0, vx, y, nb); }
static TGT void SFX(q5_1_dequant)(const void *vx, float *y, int64_t nb) { SFX(legacy_dequant)(LEG_Q5_1, vx, y, nb); }

#endif /* QL_SIMD_TEMPLATE */
