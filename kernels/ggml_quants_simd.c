/* ggml_quants_simd.c — AVX2 and AVX-512 twins of the Q8_0 / Q4_K / Q6_K codecs in ggml_quants_ref.c,
 * producing IDENTICAL bytes / float bits (see simd.h). How exactness is kept:
 *  - every float operation is the reference's, in the reference's order: no FMA (the functions are
 *    compiled for "avx2" without "fma", and -std=c11 / the pragma below keep contraction off);
 *  - the K-quant scale searches are sequential sums, so lanes run INDEPENDENT sub-blocks (one sub-block
 *    per lane, each summing its elements in the reference's order) instead of splitting one sum;
 *  - blocks with NaN/Inf input (or, for Q8_0, a value whose integer conversion is out of range) go to
 *    the scalar reference, block by block, because the reference's result there depends on C's
 *    undefined float->int8 conversion as the compiler emits it.
 * The width-generic kernels are written once with GCC vector extensions and instantiated twice by
 * including this file into itself (QL_SIMD_TEMPLATE) with W = 8 (AVX2) and W = 16 (AVX-512).
 * No AMX, no VNNI: only avx2 / avx512f,bw,vl,dq instructions. Pure and thread-safe. */
#ifndef QL_SIMD_TEMPLATE
#include "kernels/simd.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/int_quants.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/ggml_types.h"
#include "base/ql_common.h"

#if defined(__x86_64__) || defined(__i386__)
#define QL_SIMD_X86 1
#include <immintrin.h>
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif

/* INT4 g128 group parameters: methods/fmt_int.c's params_for with shrink p = 1 (no MSE search), the
 * same double-then-float arithmetic. lo <= 0 <= hi, m = first finite weight of largest magnitude. */
typedef struct {
    uint16_t scale_h;
    float scale;
    int zero;
} int4_group;

static int4_group int4_params(float lo, float hi, float m, bool sym) {
    const float p = 1.0f, fp16_max = 65504.0f;
    const int maxq = 15, half = 8;
    int4_group gp;
    double s = sym ? (double)p * m / -half : ((double)p * hi - (double)p * lo) / maxq;
    float sf = (float)s;
    sf = sf > fp16_max ? fp16_max : sf < -fp16_max ? -fp16_max : sf;
    gp.scale_h = ql_fp32_to_fp16(sf);
    gp.scale = ql_fp16_to_fp32(gp.scale_h);
    if (sym) {
        gp.zero = half;
    } else {
        float id = gp.scale != 0.0f ? 1.0f / gp.scale : 0.0f;
        float z = nearbyintf(-(p * lo) * id);
        gp.zero = z < 0.0f ? 0 : z > (float)maxq ? maxq : (int)z;
    }
    return gp;
}

#if QL_SIMD_X86
/* ---- the two instantiations ---- */
#define QL_SIMD_TEMPLATE 1
#define W 8
#define TGT __attribute__((target("avx2")))
#define SFX(name) name##_avx2
#include "kernels/ggml_quants_simd.c"
#undef W
#undef TGT
#undef SFX

#define W 16
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define SFX(name) name##_avx512
#include "kernels/ggml_quants_simd.c"
#undef W
#undef TGT
#undef SFX
#undef QL_SIMD_TEMPLATE
#endif

/* ---- level selection ---- */
static atomic_int g_level = QL_SIMD_REF;

ql_simd_level ql_simd_detect(void) {
#if QL_SIMD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return QL_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2")) return QL_SIMD_AVX2;
#endif
    return QL_SIMD_REF;
}

__attribute__((constructor)) static void simd_init(void) {
    const char *e = getenv("QL_FORCE_REF");
    bool force_ref = e && *e && strcmp(e, "0") != 0;
    atomic_store(&g_level, force_ref ? QL_SIMD_REF : ql_simd_detect());
}

ql_simd_level ql_simd_level_get(void) {
    return (ql_simd_level)atomic_load_explicit(&g_level, memory_order_relaxed);
}

ql_simd_level ql_simd_set_level(ql_simd_level level) {
    ql_simd_level best = ql_simd_detect();
    if (level > best) level = best;
    if (level < QL_SIMD_REF) level = QL_SIMD_REF;
    atomic_store(&g_level, level);
    return level;
}

const char *ql_simd_level_name(ql_simd_level level) {
    switch (level) {
    case QL_SIMD_AVX512: return "avx512";
    case QL_SIMD_AVX2: return "avx2";
    default: return "ref";
    }
}

/* ---- registry entry points: pick the level, walk the rows ---- */
#if QL_SIMD_X86
#define DISPATCH(call_avx512, call_avx2)                                                                     \
    switch (ql_simd_level_get()) {                                                                           \
    case QL_SIMD_AVX512: call_avx512; return;                                                                \
    case QL_SIMD_AVX2: call_avx2; return;                                                                    \
    default: break;                                                                                          \
    }
#else
#define DISPATCH(call_avx512, call_avx2)
#endif

void ql_quantize_rows_q8_0_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    (void)importance;                        /* Q8_0 has no imatrix path, as in ggml */
    const int64_t nb = nrows * (ncols / 32); /* no per-row state: the matrix is one long row */
    DISPATCH(q8_0_quant_avx512(src, dst, nb), q8_0_quant_avx2(src, dst, nb))
    ql_quantize_rows_q8_0_ref(src, dst, nrows, ncols, NULL);
}

void ql_dequantize_rows_q8_0_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / 32);
    DISPATCH(q8_0_dequant_avx512(src, dst, nb), q8_0_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q8_0_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_q4_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    const int64_t nb_row = ncols / QK_K;
    DISPATCH(q4_K_quant_avx512(src, dst, nrows * nb_row, nb_row, importance),
             q4_K_quant_avx2(src, dst, nrows * nb_row, nb_row, importance))
    ql_quantize_rows_q4_k_ref(src, dst, nrows, ncols, importance);
}

void ql_dequantize_rows_q4_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / QK_K);
    DISPATCH(q4_K_dequant_avx512(src, dst, nb), q4_K_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q4_k_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_q6_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    const int64_t nb_row = ncols / QK_K;
    DISPATCH(q6_K_quant_avx512(src, dst, nrows * nb_row, nb_row, importance),
             q6_K_quant_avx2(src, dst, nrows * nb_row, nb_row, importance))
    ql_quantize_rows_q6_k_ref(src, dst, nrows, ncols, importance);
}

void ql_dequantize_rows_q6_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / QK_K);
    DISPATCH(q6_K_dequant_avx512(src, dst, nb), q6_K_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q6_k_ref(src, dst, nrows, ncols);
}

/* INT4 g128 (fmt_int.c layout: [fp16 scales][4-bit zeros unless sym][4-bit codes]); importance is unused
 * by the non-MSE entries. Rows that are not whole groups of 128 go to the reference. */
static void int4_g128_quant_rows(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp,
                                 bool sym) {
    const int64_t rb = ql_int_row_bytes(ncols, 4, 128, sym);
    if (ncols % 128 == 0 && rb > 0) {
        uint8_t *out = dst;
        switch (ql_simd_level_get()) {
#if QL_SIMD_X86
        case QL_SIMD_AVX512:
            for (int64_t r = 0; r < nrows; ++r)
                int4_g128_quant_avx512(src + r * ncols, out + r * rb, ncols, sym);
            return;
        case QL_SIMD_AVX2:
            for (int64_t r = 0; r < nrows; ++r)
                int4_g128_quant_avx2(src + r * ncols, out + r * rb, ncols, sym);
            return;
#endif
        default: break;
        }
    }
    ql_int_quantize_rows_ref(src, dst, nrows, ncols, imp, 4, 128, sym, false);
}

static void int4_g128_dequant_rows(const void *src, float *dst, int64_t nrows, int64_t ncols, bool sym) {
    const int64_t rb = ql_int_row_bytes(ncols, 4, 128, sym);
    if (ncols % 128 == 0 && rb > 0) {
        const uint8_t *in = src;
        switch (ql_simd_level_get()) {
#if QL_SIMD_X86
        case QL_SIMD_AVX512:
            for (int64_t r = 0; r < nrows; ++r)
                int4_g128_dequant_avx512(in + r * rb, dst + r * ncols, ncols, sym);
            return;
        case QL_SIMD_AVX2:
            for (int64_t r = 0; r < nrows; ++r)
                int4_g128_dequant_avx2(in + r * rb, dst + r * ncols, ncols, sym);
            return;
#endif
        default: break;
        }
    }
    ql_int_dequantize_rows_ref(src, dst, nrows, ncols, 4, 128, sym);
}

void ql_quantize_rows_int4_g128_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                     const float *importance) {
    int4_g128_quant_rows(src, dst, nrows, ncols, importance, false);
}
void ql_dequantize_rows_int4_g128_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    int4_g128_dequant_rows(src, dst, nrows, ncols, false);
}
void ql_quantize_rows_int4_g128_sym_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                         const float *importance) {
    int4_g128_quant_rows(src, dst, nrows, ncols, importance, true);
}
void ql_dequantize_rows_int4_g128_sym_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    int4_g128_dequant_rows(src, dst, nrows, ncols, true);
}

#else /* ================= QL_SIMD_TEMPLATE: one instantiation, W lanes, target TGT ================= */

typedef float SFX(vf) __attribute__((vector_size(4 * W)));
typedef int32_t SFX(vi) __attribute__((vector_size(4 * W)));
typedef int8_t SFX(vs8) __attribute__((vector_size(W)));
typedef uint8_t SFX(vu8) __attribute__((vector_size(W)));
#define VF SFX(vf)
#define VI SFX(vi)

static inline TGT VF SFX(splat)(float a) { return (VF){0} + a; }
static inline TGT VF SFX(load)(const float *p) {
    VF v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static inline TGT void SFX(store)(float *p, VF v) { memcpy(p, &v, sizeof(v)); }
/* m ? a : b, lane-wise (m lanes are all-ones or zero) */
static inline TGT VF SFX(sel)(VI m, VF a, VF b) { return (VF)(((VI)a & m) | ((VI)b & ~m)); }
static inline TGT VI SFX(seli)(VI m, VI a, VI b) { return (a & m) | (b & ~m); }
static inline TGT VF SFX(vabs)(VF a) { return (VF)((VI)a & 0x7fffffff); }
static inline TGT VF SFX(cvt)(VI a) { return __builtin_convertvector(a, VF); }
/* nearest_int, lane-wise: the same 1.5*2^23 trick and integer arithmetic */
static inline TGT VI SFX(nearest)(VF f) {
    VF v = f + 12582912.f;
    return ((VI)v & 0x007fffff) - 0x00400000;
}
static inline TGT VI SFX(clampi)(VI l, int lo, int hi) {
    l = SFX(seli)(l < hi, l, (VI){0} + hi);
    return SFX(seli)(l > lo, l, (VI){0} + lo);
}

#if W == 8
static inline TGT VF SFX(vsqrt)(VF a) { return (VF)_mm256_sqrt_ps((__m256)a); }
static inline TGT unsigned SFX(mask)(VI m) { return (unsigned)_mm256_movemask_ps((__m256)m); }
static inline TGT bool SFX(all)(VI m) { return SFX(mask)(m) == 0xff; }
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
#else
static inline TGT VF SFX(vsqrt)(VF a) { return (VF)_mm512_sqrt_ps((__m512)a); }
static inline TGT unsigned SFX(mask)(VI m) { return (unsigned)_mm512_movepi32_mask((__m512i)m); }
static inline TGT bool SFX(all)(VI m) { return SFX(mask)(m) == 0xffff; }
static inline TGT VF SFX(roundcur)(VF a) {
    return (VF)_mm512_roundscale_ps((__m512)a, _MM_FROUND_CUR_DIRECTION);
}
static inline TGT float SFX(hmin)(VF v) { return _mm512_reduce_min_ps((__m512)v); }
static inline TGT float SFX(hmax)(VF v) { return _mm512_reduce_max_ps((__m512)v); }
#endif

/* true when all n floats at p are finite (multiple of W) */
static inline TGT bool SFX(finite)(const float *p, int n) {
    VI ok = (VI){0} - 1;
    for (int i = 0; i < n; i += W) ok &= SFX(vabs)(SFX(load)(p + i)) <= FLT_MAX;
    return SFX(all)(ok);
}

/* ---------------- Q8_0 ---------------- */
static TGT void SFX(q8_0_quant)(const float *x, void *vy, int64_t nb) {
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
        int8_t q[32];
        for (int k = 0; k < 32 / W; ++k) {
            VF p = v[k] * id;
            VF a = SFX(vabs)(p);
            ok &= a < 127.5f; /* roundf then int8 is exact below this; NaN fails */
            /* lanes that failed are redone in scalar; zero them so the cast and negation stay defined */
            a = SFX(sel)(a < 127.5f, a, SFX(splat)(0.f));
            /* roundf: half away from zero; a - trunc(a) is exact */
            VI t = __builtin_convertvector(a, VI);
            VI r = t - (a - SFX(cvt)(t) >= 0.5f);
            r = SFX(seli)(p < 0.f, -r, r);
            SFX(vs8) b = __builtin_convertvector(r, SFX(vs8));
            memcpy(q + k * W, &b, W);
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
        const VF d = SFX(splat)(ql_fp16_to_fp32(x[i].d));
        for (int k = 0; k < 32; k += W) {
            SFX(vs8) b;
            memcpy(&b, x[i].qs + k, W);
            SFX(store)(y + i * 32 + k, SFX(cvt)(__builtin_convertvector(b, VI)) * d);
        }
    }
}

/* ---------------- Q4_K ---------------- */

/* make_qkx2_quants (v3 false) / make_qkx3_quants (v3 true) for 32-element sub-blocks, one per lane:
 * xt[i], wt[i] hold element i of every lane's sub-block. Writes levels L[i], returns scale, *the_min. */
static TGT VF SFX(qkx_lanes)(const VF *xt, const VF *wt, int nmax, float rmin, float rdelta, int nstep,
                             bool v3, VI *L, VF *the_min) {
    enum { n = 32 };
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
        diff = diff * diff;
        best_error += wt[i] * diff;
    }
    VI Laux[n];
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
            const VF wl = wt[i] * SFX(cvt)(l);
            sum_l += wl;
            sum_l2 += wl * SFX(cvt)(l);
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
            VF diff = this_scale * SFX(cvt)(Laux[i]) + this_min - xt[i];
            diff = diff * diff;
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

/* Final levels of one super-block against its stored scales (k45_requant), 32 at a time. */
static TGT void SFX(q4_K_requant)(const float *x, const blk_q4_K *y, uint8_t *L) {
    uint8_t sc, m;
    for (int j = 0; j < QK_K / 32; ++j) {
        get_scale_min_k4(j, y->scales, &sc, &m);
        const float d = ql_fp16_to_fp32(y->d) * sc;
        if (!d) continue;
        const float dm = ql_fp16_to_fp32(y->dmin) * m;
        for (int k = 0; k < 32; k += W) {
            VI l = SFX(clampi)(SFX(nearest)((SFX(load)(x + 32 * j + k) + dm) / d), 0, 15);
            SFX(vu8) b = __builtin_convertvector(l, SFX(vu8));
            memcpy(L + 32 * j + k, &b, W);
        }
    }
}

/* nb super-blocks, W/8 at a time (one sub-block per lane); imatrix restarts every nb_row super-blocks. */
static TGT void SFX(q4_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    enum { G = W / 8 };
    blk_q4_K *y = vy;
    for (int64_t ib = 0; ib < nb; ib += G) {
        float xt[32 * W], wt[32 * W];
        bool use[G];
        const float *qw[G];
        for (int g = 0; g < G; ++g) {
            const int64_t b = ib + g;
            qw[g] = imatrix && b < nb ? imatrix + QK_K * (b % nb_row) : NULL;
            use[g] = b < nb && SFX(finite)(x + QK_K * b, QK_K) && (!qw[g] || SFX(finite)(qw[g], QK_K));
            for (int s = 0; s < 8; ++s)
                for (int i = 0; i < 32; ++i) {
                    xt[i * W + 8 * g + s] = use[g] ? x[QK_K * b + 32 * s + i] : 0.f;
                    wt[i * W + 8 * g + s] = use[g] && qw[g] ? qw[g][32 * s + i] : 1.f;
                }
        }
        VF X[32], Wt[32];
        for (int i = 0; i < 32; ++i) X[i] = SFX(load)(xt + i * W);
        VF sw = SFX(splat)(0.f);
        if (imatrix) {
            float sig[W];
            for (int g = 0; g < G; ++g) {
                float sum_x2 = 0;
                if (use[g])
                    for (int l = 0; l < QK_K; ++l) sum_x2 += x[QK_K * (ib + g) + l] * x[QK_K * (ib + g) + l];
                const float sigma2 = 2 * sum_x2 / QK_K;
                for (int s = 0; s < 8; ++s) sig[8 * g + s] = sigma2;
            }
            const VF sigma2 = SFX(load)(sig);
            for (int i = 0; i < 32; ++i) {
                Wt[i] = SFX(load)(wt + i * W) * SFX(vsqrt)(sigma2 + X[i] * X[i]);
                sw += Wt[i];
            }
        } else {
            VF sum_x2 = SFX(splat)(0.f);
            for (int i = 0; i < 32; ++i) sum_x2 += X[i] * X[i];
            const VF av_x = SFX(vsqrt)(sum_x2 / 32);
            for (int i = 0; i < 32; ++i) Wt[i] = av_x + SFX(vabs)(X[i]);
        }
        VI Lv[32];
        VF the_min;
        VF scale = imatrix ? SFX(qkx_lanes)(X, Wt, 15, -0.9f, 0.05f, 36, true, Lv, &the_min)
                           : SFX(qkx_lanes)(X, Wt, 15, -1.f, 0.1f, 20, false, Lv, &the_min);
        float scales[W], mins[W], sws[W];
        int32_t lt[32 * W];
        SFX(store)(scales, scale);
        SFX(store)(mins, the_min);
        SFX(store)(sws, sw);
        for (int i = 0; i < 32; ++i) memcpy(lt + i * W, &Lv[i], sizeof(Lv[i]));
        for (int g = 0; g < G; ++g) {
            const int64_t b = ib + g;
            if (b >= nb) break;
            if (!use[g]) {
                ql_quantize_row_q4_K_ref(x + QK_K * b, &y[b], QK_K, qw[g]);
                continue;
            }
            uint8_t L[QK_K];
            for (int s = 0; s < 8; ++s)
                for (int i = 0; i < 32; ++i) L[32 * s + i] = (uint8_t)lt[i * W + 8 * g + s];
            ql_ggml_k45_pack_scales(scales + 8 * g, mins + 8 * g, sws + 8 * g, imatrix != NULL, y[b].scales,
                                    &y[b].d, &y[b].dmin);
            SFX(q4_K_requant)(x + QK_K * b, &y[b], L);
            ql_ggml_q4_K_pack_levels(L, &y[b]);
        }
    }
}

static TGT void SFX(q4_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q4_K *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = ql_fp16_to_fp32(x[i].d);
        const float min = ql_fp16_to_fp32(x[i].dmin);
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(j / 32, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(j / 32 + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l += W) {
                SFX(vu8) b;
                memcpy(&b, q + l, W);
                const VI qi = __builtin_convertvector(b, VI);
                SFX(store)(y + l, d1 * SFX(cvt)(qi & 0xF) - m1);
                SFX(store)(y + 32 + l, d2 * SFX(cvt)(qi >> 4) - m2);
            }
            y += 64;
            q += 32;
        }
    }
}

/* ---------------- Q6_K ---------------- */

/* make_qx_quants(16, nmax, x, L, rmse_type 1, qw) for 16-element sub-blocks, one per lane. L gets
 * level + nmax. qw false: weights x^2 (wt unused). */
static TGT VF SFX(qx_lanes)(const VF *xt, const VF *wt, bool qw, int nmax, VI *L) {
    enum { n = 16 };
    VF max = SFX(splat)(0.f), amax = max;
    for (int i = 0; i < n; ++i) {
        const VF ax = SFX(vabs)(xt[i]);
        const VI gt = ax > amax;
        amax = SFX(sel)(gt, ax, amax);
        max = SFX(sel)(gt, xt[i], max);
    }
    const VI small = amax < GROUP_MAX_EPS;
    VF iscale = (float)-nmax / max;
    VF sumlx = SFX(splat)(0.f), suml2 = sumlx;
    for (int i = 0; i < n; ++i) {
        const VI l = SFX(clampi)(SFX(nearest)(iscale * xt[i]), -nmax, nmax - 1);
        L[i] = l + nmax;
        const VF w = qw ? wt[i] : xt[i] * xt[i];
        const VF lf = SFX(cvt)(l);
        sumlx += w * xt[i] * lf;
        suml2 += w * lf * lf;
    }
    VF scale = SFX(sel)(suml2 != 0.f, sumlx / suml2, SFX(splat)(0.f));
    VF best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = SFX(splat)(0.f);
        VI Ln[n];
        for (int i = 0; i < n; ++i) {
            const VI l = SFX(clampi)(SFX(nearest)(iscale * xt[i]), -nmax, nmax - 1);
            Ln[i] = l + nmax;
            const VF w = qw ? wt[i] : xt[i] * xt[i];
            const VF lf = SFX(cvt)(l);
            sumlx += w * xt[i] * lf;
            suml2 += w * lf * lf;
        }
        const VI acc = (suml2 > 0.f) & (sumlx * sumlx > best * suml2);
        for (int i = 0; i < n; ++i) L[i] = SFX(seli)(acc, Ln[i], L[i]);
        scale = SFX(sel)(acc, sumlx / suml2, scale);
        best = SFX(sel)(acc, scale * sumlx, best);
    }
    for (int i = 0; i < n; ++i) L[i] = SFX(seli)(small, (VI){0}, L[i]);
    return SFX(sel)(small, SFX(splat)(0.f), scale);
}

static TGT void SFX(q6_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    blk_q6_K *y = vy;
    for (int64_t b = 0; b < nb; ++b) {
        const float *xb = x + QK_K * b;
        const float *qw = imatrix ? imatrix + QK_K * (b % nb_row) : NULL;
        if (!SFX(finite)(xb, QK_K) || (qw && !SFX(finite)(qw, QK_K))) {
            ql_quantize_row_q6_K_ref(xb, &y[b], QK_K, qw);
            continue;
        }
        float scales[QK_K / 16];
        int8_t L[QK_K];
        for (int p = 0; p < QK_K / 16; p += W) { /* W sub-blocks of 16 per pass */
            float xt[16 * W], wt[16 * W];
            for (int s = 0; s < W; ++s)
                for (int i = 0; i < 16; ++i) {
                    xt[i * W + s] = xb[16 * (p + s) + i];
                    wt[i * W + s] = qw ? qw[16 * (p + s) + i] : 0.f;
                }
            VF X[16], Wt[16];
            VI Lv[16];
            for (int i = 0; i < 16; ++i) {
                X[i] = SFX(load)(xt + i * W);
                Wt[i] = SFX(load)(wt + i * W);
            }
            SFX(store)(scales + p, SFX(qx_lanes)(X, Wt, qw != NULL, 32, Lv));
            int32_t lt[16 * W];
            for (int i = 0; i < 16; ++i) memcpy(lt + i * W, &Lv[i], sizeof(Lv[i]));
            for (int s = 0; s < W; ++s)
                for (int i = 0; i < 16; ++i) L[16 * (p + s) + i] = (int8_t)lt[i * W + s];
        }
        if (!ql_ggml_q6_K_pack_scales(scales, &y[b])) continue;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = ql_fp16_to_fp32(y[b].d) * y[b].scales[j];
            if (!d) continue;
            for (int k = 0; k < 16; k += W) { /* W <= 16 */
                VI l = SFX(clampi)(SFX(nearest)(SFX(load)(xb + 16 * j + k) / d), -32, 31) + 32;
                SFX(vs8) v = __builtin_convertvector(l, SFX(vs8));
                memcpy(L + 16 * j + k, &v, W);
            }
        }
        ql_ggml_q6_K_pack_levels(L, &y[b]);
    }
}

static TGT void SFX(q6_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q6_K *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = ql_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int l = 0; l < 32; l += W) {
                const int is = l / 16;
                SFX(vu8) a, b, h;
                memcpy(&a, ql + l, W);
                memcpy(&b, ql + l + 32, W);
                memcpy(&h, qh + l, W);
                const VI A = __builtin_convertvector(a, VI), B = __builtin_convertvector(b, VI);
                const VI H = __builtin_convertvector(h, VI);
                const VI q1 = ((A & 0xF) | (((H >> 0) & 3) << 4)) - 32;
                const VI q2 = ((B & 0xF) | (((H >> 2) & 3) << 4)) - 32;
                const VI q3 = ((A >> 4) | (((H >> 4) & 3) << 4)) - 32;
                const VI q4 = ((B >> 4) | (((H >> 6) & 3) << 4)) - 32;
                SFX(store)(y + l + 0, (d * sc[is + 0]) * SFX(cvt)(q1));
                SFX(store)(y + l + 32, (d * sc[is + 2]) * SFX(cvt)(q2));
                SFX(store)(y + l + 64, (d * sc[is + 4]) * SFX(cvt)(q3));
                SFX(store)(y + l + 96, (d * sc[is + 6]) * SFX(cvt)(q4));
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* ---------------- INT4 g128 (methods/fmt_int.c, non-MSE entries) ---------------- */
static TGT void SFX(int4_g128_quant)(const float *x, uint8_t *row, int64_t ncols, bool sym) {
    const int64_t ng = ncols / 128;
    uint8_t *zeros = row + 2 * ng;
    uint8_t *codes = zeros + (sym ? 0 : (ng * 4 + 7) / 8);
    if (!sym) memset(zeros, 0, (size_t)(ng * 4 + 7) / 8);
    for (int64_t k = 0; k < ng; ++k) {
        const float *xg = x + 128 * k;
        VF lo = SFX(splat)(0.f), hi = lo, amax = lo;
        for (int c = 0; c < 128; c += W) { /* non-finite weights do not count (as 0 they change nothing) */
            const VF v = SFX(load)(xg + c);
            const VF v0 = SFX(sel)(SFX(vabs)(v) <= FLT_MAX, v, SFX(splat)(0.f));
            lo = SFX(sel)(v0 < lo, v0, lo);
            hi = SFX(sel)(v0 > hi, v0, hi);
            const VF a = SFX(vabs)(v0);
            amax = SFX(sel)(a > amax, a, amax);
        }
        const float am = SFX(hmax)(amax);
        float m = 0.0f; /* the first weight reaching the largest magnitude, sign kept */
        if (am > 0.0f)
            for (int c = 0; c < 128; c += W) {
                const unsigned hit = SFX(mask)(SFX(vabs)(SFX(load)(xg + c)) == am);
                if (hit) {
                    m = xg[c + __builtin_ctz(hit)];
                    break;
                }
            }
        const int4_group gp = int4_params(SFX(hmin)(lo), SFX(hmax)(hi), m, sym);
        row[2 * k] = (uint8_t)gp.scale_h;
        row[2 * k + 1] = (uint8_t)(gp.scale_h >> 8);
        if (!sym) zeros[k / 2] |= (uint8_t)(gp.zero << (4 * (k & 1)));
        const float id = gp.scale != 0.0f ? 1.0f / gp.scale : 0.0f;
        const VI zero = (VI){0} + gp.zero;
        uint8_t q[128];
        for (int c = 0; c < 128; c += W) {
            const VF v = SFX(load)(xg + c) * id;
            VF r = SFX(roundcur)(v) + (float)gp.zero;
            r = SFX(sel)(r < 0.f, SFX(splat)(0.f), SFX(sel)(r > 15.f, SFX(splat)(15.f), r));
            const VI qi = SFX(seli)(v != v, zero, __builtin_convertvector(r, VI));
            SFX(vu8) b = __builtin_convertvector(qi, SFX(vu8));
            memcpy(q + c, &b, W);
        }
        for (int i = 0; i < 64; ++i) codes[64 * k + i] = (uint8_t)(q[2 * i] | (q[2 * i + 1] << 4));
    }
}

static TGT void SFX(int4_g128_dequant)(const uint8_t *row, float *y, int64_t ncols, bool sym) {
    const int64_t ng = ncols / 128;
    const uint8_t *zeros = row + 2 * ng;
    const uint8_t *codes = zeros + (sym ? 0 : (ng * 4 + 7) / 8);
    for (int64_t k = 0; k < ng; ++k) {
        const float s = ql_fp16_to_fp32((uint16_t)(row[2 * k] | (row[2 * k + 1] << 8)));
        const int zero = sym ? 8 : (zeros[k / 2] >> (4 * (k & 1))) & 0xF;
        uint8_t q[128];
        for (int i = 0; i < 64; ++i) {
            q[2 * i] = codes[64 * k + i] & 0xF;
            q[2 * i + 1] = codes[64 * k + i] >> 4;
        }
        for (int c = 0; c < 128; c += W) {
            SFX(vu8) b;
            memcpy(&b, q + c, W);
            SFX(store)(y + 128 * k + c, SFX(cvt)(__builtin_convertvector(b, VI) - zero) * s);
        }
    }
}

#undef VF
#undef VI
#endif /* QL_SIMD_TEMPLATE */
