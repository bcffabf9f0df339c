/* ggml_quants_simd2.c — AVX2 and AVX-512 twins of the Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q2_K / Q3_K / Q5_K /
 * IQ4_NL / F16 / BF16 codecs in ggml_quants_ref.c, producing IDENTICAL bytes / float bits (see simd2.h).
 * Exactness is kept as in ggml_quants_simd.c:
 *  - every float operation is the reference's, in the reference's order, without FMA (targets without
 *    "fma"; -std=c11 / the pragma below keep contraction off);
 *  - the scale searches are sequential sums, so lanes run INDEPENDENT blocks or sub-blocks (one per lane,
 *    each summing in the reference's order) instead of splitting one sum; a data-dependent refinement
 *    (make_q3_quants) runs in every lane until no lane changes, which leaves finished lanes as they were;
 *  - blocks with NaN/Inf input, or whose products fall outside the range where C's float->int cast is
 *    defined, go to the scalar reference (rows, for the legacy imatrix paths whose weights span the row).
 * F16 uses the F16C / AVX-512F conversions (round to nearest even: equal to ql_fp32_to_fp16 on all 2^32
 * inputs); cvtph2ps quiets signalling NaNs where the reference does not, so those lanes are rebuilt in
 * integers. The width-generic kernels are written once with GCC vector extensions and instantiated twice
 * by including this file into itself (W = 8 AVX2, W = 16 AVX-512). No AMX, no VNNI. Pure, thread-safe. */
#ifndef QL_SIMD2_TEMPLATE
#include "kernels/simd2.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "kernels/ggml_quants.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/ggml_types.h"
#include "base/ql_common.h"
#include "kernels/simd.h"

#if defined(__x86_64__) || defined(__i386__)
#define QL_SIMD2_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif

static const float iq4_values_f[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                       1,    13,   25,  38,  53,  69,  89,  113};

/* 32 bytes at a time for the bit packing (both instantiations have 256-bit registers). */
typedef uint8_t u8x32 __attribute__((vector_size(32)));
typedef int8_t i8x32 __attribute__((vector_size(32)));

/* ---- scalar pieces: the reference's own come from ggml_quants_internal.h ---- */
/* ql_fp16_to_fp32, inlined (the dequantizers call it once per block). */
static inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    float f;
    if (exp == 0) {
        const float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    u = exp == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((exp + 112) << 23) | (man << 13);
    memcpy(&f, &u, 4);
    return f;
}

static bool all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!(fabsf(x[i]) <= FLT_MAX)) return false;
    return true;
}

/* Legacy 4-bit packing of 32 levels (the 5-bit one, pack_q5, is in ggml_quants_internal.h). */
static void pack_q4(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

/* The four legacy kinds share the block-of-32 drivers. */
enum { LEG_Q4_0, LEG_Q4_1, LEG_Q5_0, LEG_Q5_1 };

#if QL_SIMD2_X86
/* ---- the two instantiations ---- */
#define QL_SIMD2_TEMPLATE 1
#define W 8
#define TGT __attribute__((target("avx2")))
#define TGTF __attribute__((target("avx2,f16c")))
#define SFX(name) name##_avx2
#include "kernels/ggml_quants_simd2.c"
#undef W
#undef TGT
#undef TGTF
#undef SFX

#define W 16
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define TGTF TGT
#define SFX(name) name##_avx512
#include "kernels/ggml_quants_simd2.c"
#undef W
#undef TGT
#undef TGTF
#undef SFX
#undef QL_SIMD2_TEMPLATE

static bool g_f16c; /* the AVX2 F16 kernels also need F16C */

__attribute__((constructor)) static void simd2_init(void) {
    unsigned a, b, c, d;
    g_f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

#define DISPATCH(call_avx512, call_avx2)                                                                     \
    switch (ql_simd_level_get()) {                                                                           \
    case QL_SIMD_AVX512: call_avx512; return;                                                                \
    case QL_SIMD_AVX2: call_avx2; return;                                                                    \
    default: break;                                                                                          \
    }
#define DISPATCH_F16(call_avx512, call_avx2)                                                                 \
    switch (ql_simd_level_get()) {                                                                           \
    case QL_SIMD_AVX512: call_avx512; return;                                                                \
    case QL_SIMD_AVX2:                                                                                       \
        if (g_f16c) {                                                                                        \
            call_avx2;                                                                                       \
            return;                                                                                          \
        }                                                                                                    \
        break;                                                                                               \
    default: break;                                                                                          \
    }
#else
#define DISPATCH(call_avx512, call_avx2)
#define DISPATCH_F16(call_avx512, call_avx2)
#endif

/* ---- registry entry points: pick the level, walk the rows ---- */

static const struct {
    int block_bytes;
    void (*ref)(const float *x, void *y, int64_t n, const float *imatrix);
    void (*ref_rows)(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imatrix);
} legacy[] = {
    [LEG_Q4_0] = {18, ql_quantize_row_q4_0_ref, ql_quantize_rows_q4_0_ref},
    [LEG_Q4_1] = {20, ql_quantize_row_q4_1_ref, ql_quantize_rows_q4_1_ref},
    [LEG_Q5_0] = {22, ql_quantize_row_q5_0_ref, ql_quantize_rows_q5_0_ref},
    [LEG_Q5_1] = {24, ql_quantize_row_q5_1_ref, ql_quantize_rows_q5_1_ref},
};

/* Without imatrix a legacy matrix is one long row of blocks. With it, sigma2 spans the row, so a row with a
 * non-finite value (or a non-finite imatrix) goes to the reference whole. */
static void legacy_quant_rows(int kind, const float *src, void *dst, int64_t nrows, int64_t ncols,
                              const float *imp) {
    const int64_t nb_row = ncols / 32, nb = nrows * nb_row;
    if (ncols <= 0 || ncols % 32) {
        legacy[kind].ref_rows(src, dst, nrows, ncols, imp); /* writes nothing, as the reference */
        return;
    }
    const int64_t rb = nb_row * legacy[kind].block_bytes;
    if (!imp) {
        DISPATCH(legacy_rtn_avx512(kind, src, dst, nb), legacy_rtn_avx2(kind, src, dst, nb))
        legacy[kind].ref_rows(src, dst, nrows, ncols, NULL);
        return;
    }
    const bool imp_ok = all_finite(imp, ncols);
    for (int64_t r = 0; r < nrows; ++r) {
        const float *x = src + r * ncols;
        uint8_t *y = (uint8_t *)dst + r * rb;
        bool done = false;
        if (imp_ok && all_finite(x, ncols)) {
            const float sigma2 = ql_ggml_row_sigma2(x, ncols);
            switch (ql_simd_level_get()) {
#if QL_SIMD2_X86
            case QL_SIMD_AVX512: legacy_imat_avx512(kind, x, y, nb_row, imp, sigma2); done = true; break;
            case QL_SIMD_AVX2: legacy_imat_avx2(kind, x, y, nb_row, imp, sigma2); done = true; break;
#endif
            default: break;
            }
        }
        if (!done) legacy[kind].ref(x, y, ncols, imp);
    }
}

void ql_quantize_rows_q4_0_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    legacy_quant_rows(LEG_Q4_0, src, dst, nrows, ncols, importance);
}
void ql_quantize_rows_q4_1_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    legacy_quant_rows(LEG_Q4_1, src, dst, nrows, ncols, importance);
}
void ql_quantize_rows_q5_0_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    legacy_quant_rows(LEG_Q5_0, src, dst, nrows, ncols, importance);
}
void ql_quantize_rows_q5_1_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    legacy_quant_rows(LEG_Q5_1, src, dst, nrows, ncols, importance);
}

void ql_dequantize_rows_q4_0_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / 32);
    DISPATCH(q4_0_dequant_avx512(src, dst, nb), q4_0_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q4_0_ref(src, dst, nrows, ncols);
}
void ql_dequantize_rows_q4_1_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / 32);
    DISPATCH(q4_1_dequant_avx512(src, dst, nb), q4_1_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q4_1_ref(src, dst, nrows, ncols);
}
void ql_dequantize_rows_q5_0_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / 32);
    DISPATCH(q5_0_dequant_avx512(src, dst, nb), q5_0_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q5_0_ref(src, dst, nrows, ncols);
}
void ql_dequantize_rows_q5_1_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / 32);
    DISPATCH(q5_1_dequant_avx512(src, dst, nb), q5_1_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q5_1_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_iq4_nl_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                  const float *importance) {
    const int64_t nb_row = ncols / 32;
    DISPATCH(iq4_nl_quant_avx512(src, dst, nrows * nb_row, nb_row, importance),
             iq4_nl_quant_avx2(src, dst, nrows * nb_row, nb_row, importance))
    ql_quantize_rows_iq4_nl_ref(src, dst, nrows, ncols, importance);
}
void ql_dequantize_rows_iq4_nl_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / 32);
    DISPATCH(iq4_nl_dequant_avx512(src, dst, nb), iq4_nl_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_iq4_nl_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_q2_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    const int64_t nb_row = ncols / QK_K;
    DISPATCH(q2_K_quant_avx512(src, dst, nrows * nb_row, nb_row, importance),
             q2_K_quant_avx2(src, dst, nrows * nb_row, nb_row, importance))
    ql_quantize_rows_q2_k_ref(src, dst, nrows, ncols, importance);
}
void ql_dequantize_rows_q2_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / QK_K);
    DISPATCH(q2_K_dequant_avx512(src, dst, nb), q2_K_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q2_k_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_q3_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    const int64_t nb_row = ncols / QK_K;
    DISPATCH(q3_K_quant_avx512(src, dst, nrows * nb_row, nb_row, importance),
             q3_K_quant_avx2(src, dst, nrows * nb_row, nb_row, importance))
    ql_quantize_rows_q3_k_ref(src, dst, nrows, ncols, importance);
}
void ql_dequantize_rows_q3_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / QK_K);
    DISPATCH(q3_K_dequant_avx512(src, dst, nb), q3_K_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q3_k_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_q5_k_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    const int64_t nb_row = ncols / QK_K;
    DISPATCH(q5_K_quant_avx512(src, dst, nrows * nb_row, nb_row, importance),
             q5_K_quant_avx2(src, dst, nrows * nb_row, nb_row, importance))
    ql_quantize_rows_q5_k_ref(src, dst, nrows, ncols, importance);
}
void ql_dequantize_rows_q5_k_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t nb = nrows * (ncols / QK_K);
    DISPATCH(q5_K_dequant_avx512(src, dst, nb), q5_K_dequant_avx2(src, dst, nb))
    ql_dequantize_rows_q5_k_ref(src, dst, nrows, ncols);
}

void ql_quantize_rows_f16_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                               const float *importance) {
    (void)importance;
    const int64_t n = nrows * ncols;
    DISPATCH_F16(f16_quant_avx512(src, dst, n), f16_quant_avx2(src, dst, n))
    ql_quantize_rows_f16_ref(src, dst, nrows, ncols, NULL);
}
void ql_dequantize_rows_f16_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t n = nrows * ncols;
    DISPATCH_F16(f16_dequant_avx512(src, dst, n), f16_dequant_avx2(src, dst, n))
    ql_dequantize_rows_f16_ref(src, dst, nrows, ncols);
}
void ql_quantize_rows_bf16_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                const float *importance) {
    (void)importance;
    const int64_t n = nrows * ncols;
    DISPATCH(bf16_quant_avx512(src, dst, n), bf16_quant_avx2(src, dst, n))
    ql_quantize_rows_bf16_ref(src, dst, nrows, ncols, NULL);
}
void ql_dequantize_rows_bf16_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t n = nrows * ncols;
    DISPATCH(bf16_dequant_avx512(src, dst, n), bf16_dequant_avx2(src, dst, n))
    ql_dequantize_rows_bf16_ref(src, dst, nrows, ncols);
}

#else /* ================= QL_SIMD2_TEMPLATE: one instantiation, W lanes, target TGT ================= */

typedef float SFX(vf) __attribute__((vector_size(4 * W)));
typedef int32_t SFX(vi) __attribute__((vector_size(4 * W)));
typedef uint32_t SFX(vu) __attribute__((vector_size(4 * W)));
typedef uint16_t SFX(vu16) __attribute__((vector_size(2 * W)));
typedef int8_t SFX(vs8) __attribute__((vector_size(W)));
typedef uint8_t SFX(vu8) __attribute__((vector_size(W)));
#define VF SFX(vf)
#define VI SFX(vi)
#define VU SFX(vu)

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
/* (int)a for lanes in ok (others give 0): only in-range values reach the conversion */
static inline TGT VI SFX(trunc_ok)(VI ok, VF a) {
    return __builtin_convertvector(SFX(sel)(ok, a, SFX(splat)(0.f)), VI);
}
/* nearest_int, lane-wise: the same 1.5*2^23 trick and integer arithmetic */
static inline TGT VI SFX(nearest)(VF f) {
    VF v = f + 12582912.f;
    return ((VI)v & 0x007fffff) - 0x00400000;
}

#if W == 8
static inline TGT VF SFX(vsqrt)(VF a) { return (VF)_mm256_sqrt_ps((__m256)a); }
static inline TGT VI SFX(imin)(VI a, VI b) { return (VI)_mm256_min_epi32((__m256i)a, (__m256i)b); }
static inline TGT VI SFX(imax)(VI a, VI b) { return (VI)_mm256_max_epi32((__m256i)a, (__m256i)b); }
static inline TGT unsigned SFX(mask)(VI m) { return (unsigned)_mm256_movemask_ps((__m256)m); }
static inline TGT bool SFX(all)(VI m) { return SFX(mask)(m) == 0xff; }
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
#else
static inline TGT VF SFX(vsqrt)(VF a) { return (VF)_mm512_sqrt_ps((__m512)a); }
static inline TGT VI SFX(imin)(VI a, VI b) { return (VI)_mm512_min_epi32((__m512i)a, (__m512i)b); }
static inline TGT VI SFX(imax)(VI a, VI b) { return (VI)_mm512_max_epi32((__m512i)a, (__m512i)b); }
static inline TGT unsigned SFX(mask)(VI m) { return (unsigned)_mm512_movepi32_mask((__m512i)m); }
static inline TGT bool SFX(all)(VI m) { return SFX(mask)(m) == 0xffff; }
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
#endif

static inline TGT VI SFX(mini)(VI l, int hi) { return SFX(imin)(l, (VI){0} + hi); }
static inline TGT VI SFX(clampi)(VI l, int lo, int hi) { return SFX(imax)(SFX(mini)(l, hi), (VI){0} + lo); }

/* true when all n floats at p are finite (n a multiple of W) */
static inline TGT bool SFX(finite)(const float *p, int64_t n) {
    VI ok = (VI){0} - 1;
    for (int64_t i = 0; i < n; i += W) ok &= SFX(vabs)(SFX(load)(p + i)) <= FLT_MAX;
    return SFX(all)(ok);
}

/* lane s of element i of n lanes-transposed levels -> bytes */
static inline TGT void SFX(untranspose)(const VI *Lv, int n, int s, uint8_t *L) {
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)Lv[i][s];
}

/* ---------------- the searches, one (sub-)block per lane ---------------- */

/* make_qx_quants(n, nmax, x, L, 1, qw) for n-element sub-blocks (n <= 32): xt[i] holds element i of every
 * lane. qw false: weights x^2 (wt unused). L gets level + nmax. Returns the scale. */
static inline TGT __attribute__((always_inline)) VF SFX(qx_lanes)(int n, const VF *xt, const VF *wt, bool qw,
                                                                  int nmax, VI *L) {
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
        VI Ln[32];
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

/* make_qkx2_quants (v3 false) / make_qkx3_quants (v3 true) for n-element sub-blocks (n <= 32), one per
 * lane, weights wt; mad: absolute instead of squared error. Writes levels L[i], returns scale, *the_min. */
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

/* make_q3_quants(16, 4, x, L, true) for 16-element sub-blocks, one per lane, in two independent vectors
 * (xt[g][i]: element i, group g) so that one group's long dependency chain overlaps the other's. The
 * coordinate descent is sequential inside a lane; a pass that changes nothing leaves the state as it was,
 * so lanes the reference would have stopped simply repeat a no-op pass. L gets level + 4. */
static TGT void SFX(q3_lanes)(VF xt[2][16], VI L[2][16], VF *scale) {
    enum { n = 16, nmax = 4, NG = 2 };
    VF sumlx[NG], suml2[NG];
    VI small[NG];
    for (int g = 0; g < NG; ++g) {
        VF max = SFX(splat)(0.f), amax = max;
        for (int i = 0; i < n; ++i) {
            const VF ax = SFX(vabs)(xt[g][i]);
            const VI gt = ax > amax;
            amax = SFX(sel)(gt, ax, amax);
            max = SFX(sel)(gt, xt[g][i], max);
        }
        small[g] = amax < GROUP_MAX_EPS;
        const VF iscale = (float)-nmax / max;
        sumlx[g] = suml2[g] = SFX(splat)(0.f);
        for (int i = 0; i < n; ++i) {
            L[g][i] = SFX(clampi)(SFX(nearest)(iscale * xt[g][i]), -nmax, nmax - 1);
            const VF w = xt[g][i] * xt[g][i];
            const VF lf = SFX(cvt)(L[g][i]);
            sumlx[g] += w * xt[g][i] * lf;
            suml2[g] += w * lf * lf;
        }
    }
    for (int itry = 0; itry < 5; ++itry) {
        VI changed = (VI){0};
        for (int i = 0; i < n; ++i)
            for (int g = 0; g < NG; ++g) {
                const VF x = xt[g][i], w = x * x;
                const VF lf = SFX(cvt)(L[g][i]);
                VF slx = sumlx[g] - w * x * lf;
                const VI pos = slx > 0.f;
                VF sl2 = suml2[g] - w * lf * lf;
                const VI new_l = SFX(clampi)(SFX(nearest)(x * sl2 / slx), -nmax, nmax - 1);
                const VF nf = SFX(cvt)(new_l);
                slx += w * x * nf;
                sl2 += w * nf * nf;
                const VI acc = pos & (new_l != L[g][i]) & (sl2 > 0.f) &
                               (slx * slx * suml2[g] > sumlx[g] * sumlx[g] * sl2);
                L[g][i] = SFX(seli)(acc, new_l, L[g][i]);
                sumlx[g] = SFX(sel)(acc, slx, sumlx[g]);
                suml2[g] = SFX(sel)(acc, sl2, suml2[g]);
                changed |= acc;
            }
        if (!SFX(mask)(changed)) break;
    }
    for (int g = 0; g < NG; ++g) {
        for (int i = 0; i < n; ++i) L[g][i] = SFX(seli)(small[g], (VI){0}, L[g][i] + nmax);
        const VF sc = SFX(sel)(suml2[g] > 0.f, sumlx[g] / suml2[g], SFX(splat)(0.f));
        scale[g] = SFX(sel)(small[g], SFX(splat)(0.f), sc);
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

/* The block search of iq4_nl_impl (sbs 32: one block per lane); returns the block scale. */
static TGT VF SFX(iq4nl_lanes)(const VF *xt, const VF *wt) {
    enum { n = 32, ntry = 7 };
    VF max = SFX(splat)(0.f), amax = max;
    for (int i = 0; i < n; ++i) {
        const VF ax = SFX(vabs)(xt[i]);
        const VI gt = ax > amax;
        amax = SFX(sel)(gt, ax, amax);
        max = SFX(sel)(gt, xt[i], max);
    }
    const VI small = amax < GROUP_MAX_EPS;
    VF d = -max / (float)kvalues_iq4nl[0];
    VF id = 1 / d;
    VF sumqx = SFX(splat)(0.f), sumq2 = sumqx;
    for (int i = 0; i < n; ++i) {
        const VF q = SFX(lut16)(iq4_values_f, SFX(iq4_index)(id * xt[i]));
        const VF wq = wt[i] * q;
        sumqx += wq * xt[i];
        sumq2 += wq * q;
    }
    d = SFX(sel)(sumq2 > 0.f, sumqx / sumq2, SFX(splat)(0.f));
    VF best = d * sumqx;
    for (int itry = -ntry; itry <= ntry; ++itry) {
        id = (float)(itry + kvalues_iq4nl[0]) / max;
        sumqx = sumq2 = SFX(splat)(0.f);
        for (int i = 0; i < n; ++i) {
            const VF q = SFX(lut16)(iq4_values_f, SFX(iq4_index)(id * xt[i]));
            const VF wq = wt[i] * q;
            sumqx += wq * xt[i];
            sumq2 += wq * q;
        }
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
            qw[s] = imatrix && b < nb ? imatrix + 32 * (b % nb_row) : NULL;
            use[s] = b < nb && SFX(finite)(x + 32 * b, 32) && (!qw[s] || SFX(finite)(qw[s], 32));
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
        const float d = fp16_to_fp32(x[i].d);
        for (int k = 0; k < 16; k += W) {
            SFX(vu8) b;
            memcpy(&b, x[i].qs + k, W);
            const VI q = __builtin_convertvector(b, VI);
            SFX(store)(y + 32 * i + k, d * SFX(lut16)(iq4_values_f, q & 0xF));
            SFX(store)(y + 32 * i + 16 + k, d * SFX(lut16)(iq4_values_f, q >> 4));
        }
    }
}

/* ---------------- Q4_0 / Q4_1 / Q5_0 / Q5_1 ---------------- */

/* One block of 32 without imatrix: levels t[32 / W] and the fp16 scale (and min); false when the block
 * needs the reference (non-finite input, or a product outside [0, 64) where the cast is plain). */
static TGT bool SFX(legacy_block)(int kind, const float *xb, uint16_t *dh, uint16_t *mh, VI *t) {
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
        *mh = ql_fp32_to_fp16(min);
    }
    const float id = d ? 1.0f / d : 0.0f;
    for (int k = 0; k < K; ++k) {
        const VF p = (kind == LEG_Q4_1 || kind == LEG_Q5_1 ? v[k] - sub : v[k]) * id + bias;
        const VI in = (p >= 0.f) & (p < 64.f);
        ok &= in;
        t[k] = SFX(mini)(SFX(trunc_ok)(in, p), top);
    }
    if (!SFX(all)(ok)) return false;
    *dh = ql_fp32_to_fp16(d);
    return true;
}

static TGT void SFX(pack4)(const VI *t, uint8_t *qs) {
    for (int k = 0; k < 16 / W; ++k) {
        const SFX(vu8) b = __builtin_convertvector((t[k] & 0xF) | ((t[k + 16 / W] & 0xF) << 4), SFX(vu8));
        memcpy(qs + k * W, &b, W);
    }
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
        VI t[32 / W];
        switch (kind) {
        case LEG_Q4_0: {
            blk_q4_0 *y = (blk_q4_0 *)vy + i;
            if (SFX(legacy_block)(kind, xb, &y->d, NULL, t))
                SFX(pack4)(t, y->qs);
            else
                ql_quantize_row_q4_0_ref(xb, y, 32, NULL);
            break;
        }
        case LEG_Q4_1: {
            blk_q4_1 *y = (blk_q4_1 *)vy + i;
            if (SFX(legacy_block)(kind, xb, &y->d, &y->m, t))
                SFX(pack4)(t, y->qs);
            else
                ql_quantize_row_q4_1_ref(xb, y, 32, NULL);
            break;
        }
        case LEG_Q5_0: {
            blk_q5_0 *y = (blk_q5_0 *)vy + i;
            if (SFX(legacy_block)(kind, xb, &y->d, NULL, t))
                SFX(pack5)(t, y->qs, y->qh);
            else
                ql_quantize_row_q5_0_ref(xb, y, 32, NULL);
            break;
        }
        default: {
            blk_q5_1 *y = (blk_q5_1 *)vy + i;
            if (SFX(legacy_block)(kind, xb, &y->d, &y->m, t))
                SFX(pack5)(t, y->qs, y->qh);
            else
                ql_quantize_row_q5_1_ref(xb, y, 32, NULL);
            break;
        }
        }
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
            const int64_t b = ib + s;
            uint8_t L[32];
            SFX(untranspose)(Lv, 32, s, L);
            switch (kind) {
            case LEG_Q4_0:
                ((blk_q4_0 *)vy)[b].d = ql_fp32_to_fp16(sc[s]);
                pack_q4(L, ((blk_q4_0 *)vy)[b].qs);
                break;
            case LEG_Q4_1:
                ((blk_q4_1 *)vy)[b].d = ql_fp32_to_fp16(sc[s]);
                ((blk_q4_1 *)vy)[b].m = ql_fp32_to_fp16(-mn[s]);
                pack_q4(L, ((blk_q4_1 *)vy)[b].qs);
                break;
            case LEG_Q5_0:
                ((blk_q5_0 *)vy)[b].d = ql_fp32_to_fp16(sc[s]);
                pack_q5(L, ((blk_q5_0 *)vy)[b].qs, ((blk_q5_0 *)vy)[b].qh);
                break;
            default:
                ((blk_q5_1 *)vy)[b].d = ql_fp32_to_fp16(sc[s]);
                ((blk_q5_1 *)vy)[b].m = ql_fp32_to_fp16(-mn[s]);
                pack_q5(L, ((blk_q5_1 *)vy)[b].qs, ((blk_q5_1 *)vy)[b].qh);
                break;
            }
        }
    }
}

static TGT void SFX(q4_0_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q4_0 *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int k = 0; k < 16; k += W) {
            SFX(vu8) b;
            memcpy(&b, x[i].qs + k, W);
            const VI q = __builtin_convertvector(b, VI);
            SFX(store)(y + 32 * i + k, SFX(cvt)((q & 0xF) - 8) * d);
            SFX(store)(y + 32 * i + 16 + k, SFX(cvt)((q >> 4) - 8) * d);
        }
    }
}

static TGT void SFX(q4_1_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q4_1 *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
        for (int k = 0; k < 16; k += W) {
            SFX(vu8) b;
            memcpy(&b, x[i].qs + k, W);
            const VI q = __builtin_convertvector(b, VI);
            SFX(store)(y + 32 * i + k, SFX(cvt)(q & 0xF) * d + m);
            SFX(store)(y + 32 * i + 16 + k, SFX(cvt)(q >> 4) * d + m);
        }
    }
}

/* element e's fifth bit is bit e of qh */
static inline TGT VI SFX(q5_high)(uint32_t qh, int e0) {
    VI e;
    for (int l = 0; l < W; ++l) e[l] = e0 + l;
    return (VI)((((VU){0} + qh) >> (VU)e) & 1) << 4;
}

static TGT void SFX(q5_0_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q5_0 *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int k = 0; k < 16; k += W) {
            SFX(vu8) b;
            memcpy(&b, x[i].qs + k, W);
            const VI q = __builtin_convertvector(b, VI);
            SFX(store)(y + 32 * i + k, SFX(cvt)(((q & 0xF) | SFX(q5_high)(qh, k)) - 16) * d);
            SFX(store)(y + 32 * i + 16 + k, SFX(cvt)(((q >> 4) | SFX(q5_high)(qh, 16 + k)) - 16) * d);
        }
    }
}

static TGT void SFX(q5_1_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q5_1 *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int k = 0; k < 16; k += W) {
            SFX(vu8) b;
            memcpy(&b, x[i].qs + k, W);
            const VI q = __builtin_convertvector(b, VI);
            SFX(store)(y + 32 * i + k, SFX(cvt)((q & 0xF) | SFX(q5_high)(qh, k)) * d + m);
            SFX(store)(y + 32 * i + 16 + k, SFX(cvt)((q >> 4) | SFX(q5_high)(qh, 16 + k)) * d + m);
        }
    }
}

/* ---------------- K-quants ---------------- */

/* qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6 (levels 0..3) */
static TGT void SFX(pack_2bit)(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128) {
        u8x32 a, b, c, d;
        memcpy(&a, L + j, 32);
        memcpy(&b, L + j + 32, 32);
        memcpy(&c, L + j + 64, 32);
        memcpy(&d, L + j + 96, 32);
        const u8x32 q = a | (b << 2) | (c << 4) | (d << 6);
        memcpy(qs + j / 4, &q, 32);
    }
}

/* Levels nearest((x + dm) / d) clamped to [lo, hi], plus off, for n elements (n a multiple of W). */
static inline TGT void SFX(requant)(const float *x, float dm, float d, int lo, int hi, int off, int n,
                                   uint8_t *L) {
    for (int k = 0; k < n; k += W) {
        const VI l = SFX(clampi)(SFX(nearest)((SFX(load)(x + k) + dm) / d), lo, hi) + off;
        const SFX(vu8) b = __builtin_convertvector(l, SFX(vu8));
        memcpy(L + k, &b, W);
    }
}

/* Sub-blocks p..p+W-1 of 16 of one super-block, transposed: xt[i * W + s] = x[16 * (p + s) + i]. */
static inline TGT void SFX(load16)(const float *xb, const float *qw, int p, VF *X, VF *Wq) {
    float xt[16 * W], wt[16 * W];
    for (int s = 0; s < W; ++s)
        for (int i = 0; i < 16; ++i) {
            xt[i * W + s] = xb[16 * (p + s) + i];
            wt[i * W + s] = qw ? qw[16 * (p + s) + i] : 0.f;
        }
    for (int i = 0; i < 16; ++i) {
        X[i] = SFX(load)(xt + i * W);
        Wq[i] = SFX(load)(wt + i * W);
    }
}

static TGT void SFX(q2_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    blk_q2_K *y = vy;
    for (int64_t b = 0; b < nb; ++b) {
        const float *xb = x + QK_K * b;
        const float *qw = imatrix ? imatrix + QK_K * (b % nb_row) : NULL;
        if (!SFX(finite)(xb, QK_K) || (qw && !SFX(finite)(qw, QK_K))) {
            ql_quantize_row_q2_K_ref(xb, &y[b], QK_K, qw);
            continue;
        }
        float sigma2 = 0;
        if (qw) {
            float sumx2 = 0;
            for (int j = 0; j < QK_K; ++j) sumx2 += xb[j] * xb[j];
            sigma2 = sumx2 / QK_K;
        }
        float scales[QK_K / 16], mins[QK_K / 16], sw[QK_K / 16];
        uint8_t L[QK_K];
        for (int p = 0; p < QK_K / 16; p += W) {
            VF X[16], Wt[16], swv = SFX(splat)(0.f), mn;
            VI Lv[16];
            SFX(load16)(xb, qw, p, X, Wt);
            VF sc;
            if (qw) {
                for (int i = 0; i < 16; ++i) {
                    Wt[i] = Wt[i] * SFX(vsqrt)(sigma2 + X[i] * X[i]);
                    swv += Wt[i];
                }
                sc = SFX(qkx_lanes)(16, X, Wt, 3, -0.9f, 0.05f, 36, true, false, Lv, &mn);
            } else {
                for (int i = 0; i < 16; ++i) Wt[i] = SFX(vabs)(X[i]);
                sc = SFX(qkx_lanes)(16, X, Wt, 3, -0.5f, 0.1f, 15, false, true, Lv, &mn);
            }
            SFX(store)(scales + p, sc);
            SFX(store)(mins + p, mn);
            SFX(store)(sw + p, swv);
            for (int s = 0; s < W; ++s) SFX(untranspose)(Lv, 16, s, L + 16 * (p + s));
        }
        ql_ggml_q2_K_pack_scales(scales, mins, sw, qw != NULL, &y[b]);
        const float dd = fp16_to_fp32(y[b].d), dmm = fp16_to_fp32(y[b].dmin);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = dd * (y[b].scales[j] & 0xF);
            if (!d) continue;
            const float dm = dmm * (y[b].scales[j] >> 4);
            SFX(requant)(xb + 16 * j, dm, d, 0, 3, 0, 16, L + 16 * j);
        }
        SFX(pack_2bit)(L, y[b].qs);
    }
}

static TGT void SFX(q2_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q2_K *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d);
        const float min = fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int h = 0; h < 2; ++h) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; l += W) {
                        SFX(vu8) b;
                        memcpy(&b, q + 16 * h + l, W);
                        const VI v = (__builtin_convertvector(b, VI) >> shift) & 3;
                        SFX(store)(y + l, dl * SFX(cvt)(v) - ml);
                    }
                    y += 16;
                }
            }
            q += 32;
        }
    }
}

/* Q3_K's tail (q3_K_finish): levels against the stored scales, the high bits into hmask, the rest packed. */
static TGT void SFX(q3_K_finish)(const float *x, blk_q3_K *y, int8_t *L) {
    const float d_all = fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        int sc = j < 8 ? y->scales[j] & 0xF : y->scales[j - 8] >> 4;
        sc = (sc | (((y->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float d = d_all * sc;
        if (!d) continue;
        SFX(requant)(x + 16 * j, 0.0f, d, -4, 3, 4, 16, (uint8_t *)L + 16 * j);
    }
    u8x32 hm = (u8x32){0};
    for (int c = 0; c < QK_K / 32; ++c) {
        i8x32 v;
        memcpy(&v, L + 32 * c, 32);
        const i8x32 gt = v > 3;
        hm |= (u8x32)gt & (uint8_t)(1u << c);
        v -= gt & 4;
        memcpy(L + 32 * c, &v, 32);
    }
    memcpy(y->hmask, &hm, 32);
    SFX(pack_2bit)((const uint8_t *)L, y->qs);
}

/* SB = W / 8 super-blocks per pass: their 16 * SB sub-blocks fill two vectors (t = g * W + lane). */
static TGT void SFX(q3_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    enum { SB = W / 8, NG = 2 };
    blk_q3_K *y = vy;
    for (int64_t ib = 0; ib < nb; ib += SB) {
        bool use[SB];
        const float *qw[SB];
        float sigma2[SB];
        for (int sb = 0; sb < SB; ++sb) {
            const int64_t b = ib + sb;
            const float *xb = x + QK_K * b;
            qw[sb] = imatrix && b < nb ? imatrix + QK_K * (b % nb_row) : NULL;
            use[sb] = b < nb && SFX(finite)(xb, QK_K) && (!qw[sb] || SFX(finite)(qw[sb], QK_K));
            sigma2[sb] = 0;
            if (use[sb] && qw[sb]) {
                float sumx2 = 0;
                for (int j = 0; j < QK_K; ++j) sumx2 += xb[j] * xb[j];
                sigma2[sb] = 2 * sumx2 / QK_K;
            }
        }
        VF X[NG][16], Wt[NG][16], sc[NG], swv[NG];
        VI Lv[NG][16];
        for (int g = 0; g < NG; ++g) {
            float xt[16 * W], wt[16 * W], sg[W];
            for (int s = 0; s < W; ++s) {
                const int t = g * W + s, sb = t / 16, j = t % 16;
                const float *xs = x + QK_K * (ib + sb) + 16 * j;
                sg[s] = sigma2[sb];
                for (int i = 0; i < 16; ++i) {
                    xt[i * W + s] = use[sb] ? xs[i] : 0.f;
                    wt[i * W + s] = use[sb] && qw[sb] ? qw[sb][16 * j + i] : 0.f;
                }
            }
            swv[g] = SFX(splat)(0.f);
            const VF sig = SFX(load)(sg);
            for (int i = 0; i < 16; ++i) {
                X[g][i] = SFX(load)(xt + i * W);
                if (imatrix) {
                    Wt[g][i] = SFX(load)(wt + i * W) * SFX(vsqrt)(sig + X[g][i] * X[g][i]);
                    swv[g] += Wt[g][i];
                }
            }
        }
        if (imatrix)
            for (int g = 0; g < NG; ++g) sc[g] = SFX(qx_lanes)(16, X[g], Wt[g], true, 4, Lv[g]);
        else
            SFX(q3_lanes)(X, Lv, sc);
        float scales[NG * W], sws[NG * W];
        for (int g = 0; g < NG; ++g) {
            SFX(store)(scales + g * W, sc[g]);
            SFX(store)(sws + g * W, swv[g]);
        }
        for (int sb = 0; sb < SB; ++sb) {
            const int64_t b = ib + sb;
            if (b >= nb) break;
            if (!use[sb]) {
                ql_quantize_row_q3_K_ref(x + QK_K * b, &y[b], QK_K, qw[sb]);
                continue;
            }
            int8_t L[QK_K];
            for (int j = 0; j < 16; ++j) {
                const int t = 16 * sb + j;
                SFX(untranspose)(Lv[t / W], 16, t % W, (uint8_t *)L + 16 * j);
            }
            ql_ggml_q3_K_pack_scales(scales + 16 * sb, sws + 16 * sb, imatrix != NULL, &y[b]);
            SFX(q3_K_finish)(x + QK_K * b, &y[b], L);
        }
    }
}

static TGT void SFX(q3_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q3_K *x = vx;
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    int8_t scales[16];
    for (int64_t i = 0; i < nb; i++) {
        const float d_all = fp16_to_fp32(x[i].d);
        const uint8_t *q = x[i].qs;
        memcpy(aux, x[i].scales, 12);
        const uint32_t tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        memcpy(scales, aux, 16);
        int is = 0, bit = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int shift = 0; shift < 8; shift += 2, ++bit) {
                for (int h = 0; h < 2; ++h) {
                    const float dl = d_all * (scales[is++] - 32);
                    for (int l = 0; l < 16; l += W) {
                        SFX(vu8) b, m;
                        memcpy(&b, q + 16 * h + l, W);
                        memcpy(&m, x[i].hmask + 16 * h + l, W);
                        const VI v = (__builtin_convertvector(b, VI) >> shift) & 3;
                        const VI hi = (__builtin_convertvector(m, VI) >> bit) & 1;
                        SFX(store)(y + l, dl * SFX(cvt)(v - ((hi ^ 1) << 2)));
                    }
                    y += 16;
                }
            }
            q += 32;
        }
    }
}

/* Q5_K: G = W / 8 super-blocks per pass, one 32-element sub-block per lane (as Q4_K in
 * ggml_quants_simd.c). */
static TGT void SFX(q5_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    enum { G = W / 8 };
    blk_q5_K *y = vy;
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
        const VF scale = imatrix ? SFX(qkx_lanes)(32, X, Wt, 31, -0.9f, 0.05f, 36, true, false, Lv, &the_min)
                                 : SFX(qkx_lanes)(32, X, Wt, 31, -0.5f, 0.1f, 15, false, false, Lv, &the_min);
        float scales[W], mins[W], sws[W];
        SFX(store)(scales, scale);
        SFX(store)(mins, the_min);
        SFX(store)(sws, sw);
        for (int g = 0; g < G; ++g) {
            const int64_t b = ib + g;
            if (b >= nb) break;
            if (!use[g]) {
                ql_quantize_row_q5_K_ref(x + QK_K * b, &y[b], QK_K, qw[g]);
                continue;
            }
            uint8_t L[QK_K];
            for (int s = 0; s < 8; ++s) SFX(untranspose)(Lv, 32, 8 * g + s, L + 32 * s);
            ql_ggml_k45_pack_scales(scales + 8 * g, mins + 8 * g, sws + 8 * g, imatrix != NULL, y[b].scales,
                                    &y[b].d, &y[b].dmin);
            const float dd = fp16_to_fp32(y[b].d), dmm = fp16_to_fp32(y[b].dmin);
            for (int j = 0; j < QK_K / 32; ++j) {
                uint8_t sc, m;
                get_scale_min_k4(j, y[b].scales, &sc, &m);
                const float d = dd * sc;
                if (!d) continue;
                SFX(requant)(x + QK_K * b + 32 * j, dmm * m, d, 0, 31, 0, 32, L + 32 * j);
            }
            u8x32 qh = (u8x32){0};
            for (int nn = 0; nn < 4; ++nn) {
                u8x32 l1, l2;
                memcpy(&l1, L + 64 * nn, 32);
                memcpy(&l2, L + 64 * nn + 32, 32);
                const u8x32 h1 = (u8x32)(l1 > 15), h2 = (u8x32)(l2 > 15);
                qh |= (h1 & (uint8_t)(1u << (2 * nn))) | (h2 & (uint8_t)(2u << (2 * nn)));
                const u8x32 ql = (l1 & 0xF) | ((l2 & 0xF) << 4);
                memcpy(y[b].qs + 32 * nn, &ql, 32);
            }
            memcpy(y[b].qh, &qh, 32);
        }
    }
}

static TGT void SFX(q5_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q5_K *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = fp16_to_fp32(x[i].d);
        const float min = fp16_to_fp32(x[i].dmin);
        uint8_t sc, m;
        for (int j = 0; j < QK_K / 64; ++j) {
            get_scale_min_k4(2 * j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(2 * j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l += W) {
                SFX(vu8) a, h;
                memcpy(&a, ql + l, W);
                memcpy(&h, qh + l, W);
                const VI A = __builtin_convertvector(a, VI), H = __builtin_convertvector(h, VI);
                const VI v1 = (A & 0xF) + (((H >> (2 * j)) & 1) << 4);
                const VI v2 = (A >> 4) + (((H >> (2 * j + 1)) & 1) << 4);
                SFX(store)(y + l, d1 * SFX(cvt)(v1) - m1);
                SFX(store)(y + 32 + l, d2 * SFX(cvt)(v2) - m2);
            }
            y += 64;
            ql += 32;
        }
    }
}

/* ---------------- F16 / BF16 ---------------- */

static TGTF void SFX(f16_dequant)(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        VF v = SFX(h2f)(x + i);
        SFX(vu16) h16;
        memcpy(&h16, x + i, sizeof(h16));
        const VU h = __builtin_convertvector(h16, VU);
        const VI nan = ((h & 0x7c00) == 0x7c00) & ((h & 0x3ff) != 0);
        if (SFX(mask)(nan)) { /* cvtph2ps quiets signalling NaNs; the reference keeps the payload as is */
            const VU fix = ((h & 0x8000) << 16) | 0x7f800000u | ((h & 0x3ff) << 13);
            v = (VF)SFX(seli)(nan, (VI)fix, (VI)v);
        }
        SFX(store)(y + i, v);
    }
    for (; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

static TGTF void SFX(f16_quant)(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    int64_t i = 0;
    for (; i + W <= n; i += W) SFX(f2h)(y + i, SFX(load)(x + i));
    for (; i < n; ++i) y[i] = ql_fp32_to_fp16(x[i]);
}

static TGT void SFX(bf16_dequant)(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        SFX(vu16) h;
        memcpy(&h, x + i, sizeof(h));
        const VU u = __builtin_convertvector(h, VU) << 16;
        memcpy(y + i, &u, sizeof(u));
    }
    for (; i < n; ++i) y[i] = ql_bf16_to_fp32(x[i]);
}

static TGT void SFX(bf16_quant)(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        VU u;
        memcpy(&u, x + i, sizeof(u));
        const VI nan = (u & 0x7fffffffu) > 0x7f800000u;
        const VU r = (u + (0x7fffu + ((u >> 16) & 1))) >> 16;
        const VU q = (VU)SFX(seli)(nan, (VI)((u >> 16) | 64), (VI)r);
        const SFX(vu16) h = __builtin_convertvector(q, SFX(vu16));
        memcpy(y + i, &h, sizeof(h));
    }
    for (; i < n; ++i) y[i] = ql_fp32_to_bf16(x[i]);
}

#undef VF
#undef VI
#undef VU
#endif /* QL_SIMD2_TEMPLATE */
