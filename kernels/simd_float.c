/* simd_float.c — AVX2 / AVX-512 twins of the F16 and BF16 codecs (kernels/simd.h), any row length.
 * F16 uses the F16C / AVX-512F conversions (round to nearest even: equal to ql_fp32_to_fp16 on all 2^32
 * inputs); cvtph2ps quiets signalling NaNs where the reference does not, so those lanes are rebuilt in
 * integers. BF16 is integer arithmetic (round to nearest even, NaNs kept quiet as the reference does).
 * Exactness rules and the two-width build: kernels/simd_internal.h. */
#ifndef QL_SIMD_TEMPLATE
#include "kernels/simd_internal.h"

#define QL_SIMD_BODY "kernels/simd_float.c"
#include "kernels/simd_instantiate.h"

/* Element-wise codecs: the whole matrix is one run of nrows * ncols values. avx2_ok: the AVX2 kernel
 * may run (F16 needs F16C besides AVX2; without it the reference runs). */
#define FLOAT_ENTRIES(lname, avx2_ok)                                                                        \
    void ql_quantize_rows_##lname##_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,         \
                                         const float *importance) {                                          \
        (void)importance;                                                                                    \
        void (*k)(const float *, void *, int64_t) =                                                          \
            QL_SIMD_PICK(lname##_quant_avx512, (avx2_ok) ? lname##_quant_avx2 : NULL);                       \
        if (k)                                                                                               \
            k(src, dst, nrows * ncols);                                                                      \
        else                                                                                                 \
            ql_quantize_rows_##lname##_ref(src, dst, nrows, ncols, NULL);                                   \
    }                                                                                                        \
    void ql_dequantize_rows_##lname##_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {     \
        void (*k)(const void *, float *, int64_t) =                                                          \
            QL_SIMD_PICK(lname##_dequant_avx512, (avx2_ok) ? lname##_dequant_avx2 : NULL);                   \
        if (k)                                                                                               \
            k(src, dst, nrows * ncols);                                                                      \
        else                                                                                                 \
            ql_dequantize_rows_##lname##_ref(src, dst, nrows, ncols);                                       \
    }

FLOAT_ENTRIES(f16, ql_simd_has_f16c())
FLOAT_ENTRIES(bf16, true)

#else /* ================= the vector body, W lanes (kernels/simd_instantiate.h) ================= */

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
    for (; i < n; ++i) y[i] = ql_simd_fp16_to_fp32(x[i]);
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

#endif /* QL_SIMD_TEMPLATE */
