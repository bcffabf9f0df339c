/* simd_prims.h — the one set of vector primitives of the SIMD codecs, and the scale searches that more
 * than one format family runs (make_qx_quants, make_qkx2/3_quants), one (sub-)block per lane.
 * Included once per width by kernels/simd_instantiate.h (no include guard): W lanes, target TGT / TGTF,
 * names SFX(name). Written with GCC vector extensions; only what the extensions cannot say (sqrt, movemask,
 * horizontal min/max, table permutes, F16 conversions) is an intrinsic, in the W == 8 / W == 16 blocks.
 * Every primitive is exact: it computes what the scalar reference computes, lane by lane. */
#if !defined(QL_SIMD_TEMPLATE) || !defined(W) || !defined(SFX)
#error "kernels/simd_prims.h is included by kernels/simd_instantiate.h only"
#endif

typedef float SFX(vf) __attribute__((vector_size(4 * W)));
typedef int32_t SFX(vi) __attribute__((vector_size(4 * W)));
typedef uint32_t SFX(vu) __attribute__((vector_size(4 * W)));
typedef uint16_t SFX(vu16) __attribute__((vector_size(2 * W)));
typedef int8_t SFX(vs8) __attribute__((vector_size(W)));
typedef uint8_t SFX(vu8) __attribute__((vector_size(W)));
#define VF SFX(vf)
#define VI SFX(vi)
#define VU SFX(vu)

/* ---- lane-wise arithmetic ---- */
static inline TGT VF SFX(splat)(float a) { return (VF){0} + a; }
static inline TGT VF SFX(load)(const float *p) {
    VF v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static inline TGT void SFX(store)(float *p, VF v) { memcpy(p, &v, sizeof(v)); }
/* W bytes at p, widened to int32 lanes (unsigned / signed) */
static inline TGT VI SFX(load_u8)(const uint8_t *p) {
    SFX(vu8) b;
    memcpy(&b, p, W);
    return __builtin_convertvector(b, VI);
}
static inline TGT VI SFX(load_s8)(const int8_t *p) {
    SFX(vs8) b;
    memcpy(&b, p, W);
    return __builtin_convertvector(b, VI);
}
/* the low byte of each lane to W bytes at p */
static inline TGT void SFX(store_u8)(uint8_t *p, VI v) {
    const SFX(vu8) b = __builtin_convertvector(v, SFX(vu8));
    memcpy(p, &b, W);
}
/* m ? a : b, lane-wise (m lanes are all-ones or zero) */
static inline TGT VF SFX(sel)(VI m, VF a, VF b) { return (VF)(((VI)a & m) | ((VI)b & ~m)); }
static inline TGT VI SFX(seli)(VI m, VI a, VI b) { return (a & m) | (b & ~m); }
static inline TGT VF SFX(vabs)(VF a) { return (VF)((VI)a & 0x7fffffff); }
static inline TGT VF SFX(cvt)(VI a) { return __builtin_convertvector(a, VF); }
/* (int)a for lanes in ok (others give 0): only in-range values reach the conversion */
static inline TGT VI SFX(trunc_ok)(VI ok, VF a) {
    return __builtin_convertvector(SFX(sel)(ok, a, SFX(splat)(0.f)), VI);
}
/* nearest_int, lane-wise: the same 1.5*2^23 trick and integer arithmetic */
static inline TGT VI SFX(nearest)(VF f) {
    VF v = f + 12582912.f;
    return ((VI)v & 0x007fffff) - 0x00400000;
}

/* ---- the intrinsics, per width ---- */
#if W == 8
static inline TGT VF SFX(vsqrt)(VF a) { return (VF)_mm256_sqrt_ps((__m256)a); }
static inline TGT VI SFX(imin)(VI a, VI b) { return (VI)_mm256_min_epi32((__m256i)a, (__m256i)b); }
static inline TGT VI SFX(imax)(VI a, VI b) { return (VI)_mm256_max_epi32((__m256i)a, (__m256i)b); }
static inline TGT unsigned SFX(mask)(VI m) { return (unsigned)_mm256_movemask_ps((__m256)m); }
static inline TGT bool SFX(all)(VI m) { return SFX(mask)(m) == 0xff; }
/* rint in the current rounding mode (nearbyintf) */
static inline TGT VF SFX(roundcur)(VF a) { return (VF)_mm256_round_ps((__m256)a, _MM_FROUND_CUR_DIRECTION); }
static inline TGT float SFX(hmin)(VF v) { /* v has no NaN */
    __m128 lo = _mm256_castps256_ps128((__m256)v), hi = _mm256_extractf128_ps((__m256)v, 1);
    lo = _mm_min_ps(lo, hi);
    lo = _mm_min_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_min_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}
static inline TGT float SFX(hmax)(VF v) { /* v has no NaN */
    __m128 lo = _mm256_castps256_ps128((__m256)v), hi = _mm256_extractf128_ps((__m256)v, 1);
    lo = _mm_max_ps(lo, hi);
    lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_max_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}
/* t[idx & 15] for a 16-entry float table */
static inline TGT VF SFX(lut16)(const float *t, VI idx) {
    const __m256 lo = _mm256_loadu_ps(t), hi = _mm256_loadu_ps(t + 8);
    const __m256 a = _mm256_permutevar8x32_ps(lo, (__m256i)idx);
    const __m256 b = _mm256_permutevar8x32_ps(hi, (__m256i)idx);
    return (VF)_mm256_blendv_ps(a, b, (__m256)(idx << 28));
}
static inline TGTF VF SFX(h2f)(const uint16_t *p) {
    __m128i h;
    memcpy(&h, p, sizeof(h));
    return (VF)_mm256_cvtph_ps(h);
}
static inline TGTF void SFX(f2h)(uint16_t *p, VF v) {
    const __m128i h = _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT);
    memcpy(p, &h, sizeof(h));
}
#elif W == 16
static inline TGT VF SFX(vsqrt)(VF a) { return (VF)_mm512_sqrt_ps((__m512)a); }
static inline TGT VI SFX(imin)(VI a, VI b) { return (VI)_mm512_min_epi32((__m512i)a, (__m512i)b); }
static inline TGT VI SFX(imax)(VI a, VI b) { return (VI)_mm512_max_epi32((__m512i)a, (__m512i)b); }
static inline TGT unsigned SFX(mask)(VI m) { return (unsigned)_mm512_movepi32_mask((__m512i)m); }
static inline TGT bool SFX(all)(VI m) { return SFX(mask)(m) == 0xffff; }
static inline TGT VF SFX(roundcur)(VF a) {
    return (VF)_mm512_roundscale_ps((__m512)a, _MM_FROUND_CUR_DIRECTION);
}
static inline TGT float SFX(hmin)(VF v) { return _mm512_reduce_min_ps((__m512)v); }
static inline TGT float SFX(hmax)(VF v) { return _mm512_reduce_max_ps((__m512)v); }
static inline TGT VF SFX(lut16)(const float *t, VI idx) {
    return (VF)_mm512_permutexvar_ps((__m512i)idx, _mm512_loadu_ps(t));
}
static inline TGTF VF SFX(h2f)(const uint16_t *p) {
    __m256i h;
    memcpy(&h, p, sizeof(h));
    return (VF)_mm512_cvtph_ps(h);
}
static inline TGTF void SFX(f2h)(uint16_t *p, VF v) {
    const __m256i h = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    memcpy(p, &h, sizeof(h));
}
#else
#error "W must be 8 or 16"
#endif

static inline TGT VI SFX(mini)(VI l, int hi) { return SFX(imin)(l, (VI){0} + hi); }
static inline TGT VI SFX(clampi)(VI l, int lo, int hi) { return SFX(imax)(SFX(mini)(l, hi), (VI){0} + lo); }

/* true when all n floats at p are finite (n a multiple of W) */
static inline TGT bool SFX(finite)(const float *p, int64_t n) {
    VI ok = (VI){0} - 1;
    for (int64_t i = 0; i < n; i += W) ok &= SFX(vabs)(SFX(load)(p + i)) <= FLT_MAX;
    return SFX(all)(ok);
}

/* Block b of bs values, importance restarting every nb_row blocks: *qw its importance (NULL without
 * imatrix or past the end); true when the vector path may take it (b < nb, values and weights finite). */
static inline TGT bool SFX(block_usable)(const float *x, const float *imatrix, int64_t b, int64_t nb,
                                         int64_t nb_row, int bs, const float **qw) {
    *qw = imatrix && b < nb ? imatrix + bs * (b % nb_row) : NULL;
    return b < nb && SFX(finite)(x + bs * b, bs) && (!*qw || SFX(finite)(*qw, bs));
}

/* lane s of n lane-transposed levels -> bytes */
static inline TGT void SFX(untranspose)(const VI *Lv, int n, int s, uint8_t *L) {
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)Lv[i][s];
}

/* Levels nearest((x + dm) / d) clamped to [lo, hi], plus off, for n elements (n a multiple of W): the
 * K-quants' final pass against the stored scales. */
static inline TGT void SFX(requant)(const float *x, float dm, float d, int lo, int hi, int off, int n,
                                   uint8_t *L) {
    for (int k = 0; k < n; k += W)
        SFX(store_u8)(L + k, SFX(clampi)(SFX(nearest)((SFX(load)(x + k) + dm) / d), lo, hi) + off);
}

/* ---- the searches, one (sub-)block per lane: xt[i] holds element i of every lane ---- */

/* The largest |x| of each lane, and *max = the first element reaching it, sign kept (0 when all are 0). */
static inline TGT __attribute__((always_inline)) VF SFX(absmax_lanes)(int n, const VF *xt, VF *max) {
    VF amax = SFX(splat)(0.f);
    *max = amax;
    for (int i = 0; i < n; ++i) {
        const VF ax = SFX(vabs)(xt[i]);
        const VI gt = ax > amax;
        amax = SFX(sel)(gt, ax, amax);
        *max = SFX(sel)(gt, xt[i], *max);
    }
    return amax;
}

/* One pass of make_qx_quants at inverse scale iscale: levels L (level + nmax) and the weighted sums. */
static inline TGT __attribute__((always_inline)) void SFX(qx_pass)(int n, const VF *xt, const VF *wt, bool qw,
                                                                   int nmax, VF iscale, VI *L, VF *sumlx,
                                                                   VF *suml2) {
    *sumlx = *suml2 = SFX(splat)(0.f);
    for (int i = 0; i < n; ++i) {
        const VI l = SFX(clampi)(SFX(nearest)(iscale * xt[i]), -nmax, nmax - 1);
        L[i] = l + nmax;
        const VF w = qw ? wt[i] : xt[i] * xt[i];
        const VF lf = SFX(cvt)(l);
        *sumlx += w * xt[i] * lf;
        *suml2 += w * lf * lf;
    }
}

/* make_qx_quants(n, nmax, x, L, 1, qw) for n-element sub-blocks (n <= 32). qw false: weights x^2 (wt
 * unused). L gets level + nmax. Returns the scale. */
static inline TGT __attribute__((always_inline)) VF SFX(qx_lanes)(int n, const VF *xt, const VF *wt, bool qw,
                                                                  int nmax, VI *L) {
    VF max;
    const VI small = SFX(absmax_lanes)(n, xt, &max) < GROUP_MAX_EPS;
    VF sumlx, suml2;
    SFX(qx_pass)(n, xt, wt, qw, nmax, (float)-nmax / max, L, &sumlx, &suml2);
    VF scale = SFX(sel)(suml2 != 0.f, sumlx / suml2, SFX(splat)(0.f));
    VF best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        VI Ln[32];
        SFX(qx_pass)(n, xt, wt, qw, nmax, -(nmax + 0.1f * is) / max, Ln, &sumlx, &suml2);
        const VI acc = (suml2 > 0.f) & (sumlx * sumlx > best * suml2);
        for (int i = 0; i < n; ++i) L[i] = SFX(seli)(acc, Ln[i], L[i]);
        scale = SFX(sel)(acc, sumlx / suml2, scale);
        best = SFX(sel)(acc, scale * sumlx, best);
    }
    for (int i = 0; i < n; ++i) L[i] = SFX(seli)(small, (VI){0}, L[i]);
    return SFX(sel)(small, SFX(splat)(0.f), scale);
}

/* make_qkx2_quants (v3 false) / make_qkx3_quants (v3 true) for n-element sub-blocks (n <= 32), weights
 * wt; mad: absolute instead of squared error. Writes levels L[i], returns scale, *the_min. */
static inline TGT __attribute__((always_inline)) VF SFX(qkx_lanes)(int n, const VF *xt, const VF *wt,
                                                                   int nmax, float rmin, float rdelta,
                                                                   int nstep, bool v3, bool mad, VI *L,
                                                                   VF *the_min) {
    VF min = xt[0], max = xt[0];
    VF sum_w = wt[0];
    VF sum_x = sum_w * xt[0];
    for (int i = 1; i < n; ++i) {
        min = SFX(sel)(xt[i] < min, xt[i], min);
        max = SFX(sel)(xt[i] > max, xt[i], max);
        sum_w += wt[i];
        sum_x += wt[i] * xt[i];
    }
    min = SFX(sel)(min > 0.f, SFX(splat)(0.f), min);
    const VF min0 = min;
    const VI degen = v3 ? max <= min : max == min;
    VF iscale = (float)nmax / (max - min);
    VF scale = 1 / iscale;
    VF best_error = SFX(splat)(0.f);
    for (int i = 0; i < n; ++i) {
        L[i] = SFX(clampi)(SFX(nearest)(iscale * (xt[i] - min)), 0, nmax);
        VF diff = scale * SFX(cvt)(L[i]) + min - xt[i];
        diff = mad ? SFX(vabs)(diff) : diff * diff;
        best_error += wt[i] * diff;
    }
    VI Laux[32];
    VF Lf[32];
    for (int is = 0; is <= nstep; ++is) {
        const float c = rmin + rdelta * is + nmax;
        iscale = c / (max - min);
        VF sum_l = SFX(splat)(0.f), sum_l2 = sum_l, sum_xl = sum_l;
        for (int i = 0; i < n; ++i) {
            VI l;
            if (v3) {
                const VF v = iscale * (xt[i] - min);
                const VF vc = SFX(sel)(v < (float)nmax, v, SFX(splat)((float)nmax));
                l = SFX(seli)(v > 0.f, SFX(nearest)(vc), (VI){0});
            } else {
                l = SFX(clampi)(SFX(nearest)(iscale * (xt[i] - min)), 0, nmax);
            }
            Laux[i] = l;
            Lf[i] = SFX(cvt)(l);
            const VF wl = wt[i] * Lf[i];
            sum_l += wl;
            sum_l2 += wl * Lf[i];
            sum_xl += wl * xt[i];
        }
        const VF D = sum_w * sum_l2 - sum_l * sum_l;
        const VI dpos = D > 0.f;
        VF this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        VF this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        const VI mpos = this_min > 0.f;
        this_min = SFX(sel)(mpos, SFX(splat)(0.f), this_min);
        this_scale = SFX(sel)(mpos, sum_xl / sum_l2, this_scale);
        VF cur_error = SFX(splat)(0.f);
        for (int i = 0; i < n; ++i) {
            VF diff = this_scale * Lf[i] + this_min - xt[i];
            diff = mad ? SFX(vabs)(diff) : diff * diff;
            cur_error += wt[i] * diff;
        }
        const VI acc = dpos & (cur_error < best_error);
        for (int i = 0; i < n; ++i) L[i] = SFX(seli)(acc, Laux[i], L[i]);
        best_error = SFX(sel)(acc, cur_error, best_error);
        scale = SFX(sel)(acc, this_scale, scale);
        min = SFX(sel)(acc, this_min, min);
    }
    for (int i = 0; i < n; ++i) L[i] = SFX(seli)(degen, (VI){0}, L[i]);
    *the_min = -SFX(sel)(degen, min0, min);
    return SFX(sel)(degen, SFX(splat)(0.f), scale);
}
