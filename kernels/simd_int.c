/* simd_int.c — AVX2 / AVX-512 twins of the INTn codecs of kernels/int_quants_ref.c that have one: INT4 in
 * groups of 128 with fp16 scales, asymmetric (4-bit zero points) or symmetric, without the MSE search, and
 * INT8 per output row, symmetric (int8_channel: W8 exports) (kernels/simd.h). Rows that are not whole groups of 128 go to the reference; importance is unused, as
 * by those entries. Exactness rules and the two-width build: kernels/simd_internal.h. */
#ifndef QL_SIMD_TEMPLATE
#include "kernels/simd_internal.h"

#include "kernels/int_quants.h"

#define QL_SIMD_BODY "kernels/simd_int.c"
#include "kernels/simd_instantiate.h"

/* Layout [fp16 scales][4-bit zeros unless sym][4-bit codes], one row at a time; rows that are not whole
 * groups of 128 go to the reference. */
static void int4_g128_quant_rows(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp,
                                 bool sym) {
    const int64_t rb = ql_int_row_bytes(ncols, 4, 128, sym);
    void (*k)(const float *, uint8_t *, int64_t, bool) = QL_SIMD_PICK(int4_g128_quant_avx512, int4_g128_quant_avx2);
    if (!k || ncols % 128 != 0 || rb <= 0) {
        ql_int_quantize_rows_ref(src, dst, nrows, ncols, imp, 4, 128, sym, false);
        return;
    }
    for (int64_t r = 0; r < nrows; ++r) k(src + r * ncols, (uint8_t *)dst + r * rb, ncols, sym);
}

static void int4_g128_dequant_rows(const void *src, float *dst, int64_t nrows, int64_t ncols, bool sym) {
    const int64_t rb = ql_int_row_bytes(ncols, 4, 128, sym);
    void (*k)(const uint8_t *, float *, int64_t, bool) = QL_SIMD_PICK(int4_g128_dequant_avx512, int4_g128_dequant_avx2);
    if (!k || ncols % 128 != 0 || rb <= 0) {
        ql_int_dequantize_rows_ref(src, dst, nrows, ncols, 4, 128, sym);
        return;
    }
    for (int64_t r = 0; r < nrows; ++r) k((const uint8_t *)src + r * rb, dst + r * ncols, ncols, sym);
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

/* int8_channel: [fp16 scale][ncols byte codes] per row; rows that are not a multiple of 16 go to the reference */
void ql_quantize_rows_int8_channel_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                        const float *importance) {
    const int64_t rb = ql_int_row_bytes(ncols, 8, 0, true);
    void (*k)(const float *, uint8_t *, int64_t) = QL_SIMD_PICK(int8_channel_quant_avx512, int8_channel_quant_avx2);
    if (!k || ncols % 16 != 0 || rb <= 0) { /* 16: whole vectors at either width */
        ql_int_quantize_rows_ref(src, dst, nrows, ncols, NULL, 8, 0, true, false);
        return;
    }
    (void)importance; /* unused, as by the entry */
    for (int64_t r = 0; r < nrows; ++r) k(src + r * ncols, (uint8_t *)dst + r * rb, ncols);
}
void ql_dequantize_rows_int8_channel_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t rb = ql_int_row_bytes(ncols, 8, 0, true);
    void (*k)(const uint8_t *, float *, int64_t) = QL_SIMD_PICK(int8_channel_dequant_avx512, int8_channel_dequant_avx2);
    if (!k || ncols % 16 != 0 || rb <= 0) {
        ql_int_dequantize_rows_ref(src, dst, nrows, ncols, 8, 0, true);
        return;
    }
    for (int64_t r = 0; r < nrows; ++r) k((const uint8_t *)src + r * rb, dst + r * ncols, ncols);
}

bool ql_bnb8_row_fast(const float *x, uint8_t *out, int64_t ncols) {
    void (*k)(const float *, uint8_t *, int64_t) = QL_SIMD_PICK(bnb8_row_avx512, bnb8_row_avx2);
    if (!k || ncols % 16 != 0) return false;
    k(x, out, ncols);
    return true;
}

#else /* ================= the vector body, W lanes (kernels/simd_instantiate.h) ================= */

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
        /* the reference's own group parameters (shrink 1: no MSE search) */
        const ql_int_group_param gp = ql_int_params_for(1.0f, SFX(hmin)(lo), SFX(hmax)(hi), m, 4, sym);
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
            SFX(store_u8)(q + c, SFX(seli)(v != v, zero, __builtin_convertvector(r, VI)));
        }
        for (int i = 0; i < 64; ++i) codes[64 * k + i] = (uint8_t)(q[2 * i] | (q[2 * i + 1] << 4));
    }
}

static TGT void SFX(int4_g128_dequant)(const uint8_t *row, float *y, int64_t ncols, bool sym) {
    const int64_t ng = ncols / 128;
    const uint8_t *zeros = row + 2 * ng;
    const uint8_t *codes = zeros + (sym ? 0 : (ng * 4 + 7) / 8);
    for (int64_t k = 0; k < ng; ++k) {
        const float s = ql_simd_fp16_to_fp32((uint16_t)(row[2 * k] | (row[2 * k + 1] << 8)));
        const int zero = sym ? 8 : (zeros[k / 2] >> (4 * (k & 1))) & 0xF;
        uint8_t q[128];
        for (int i = 0; i < 64; ++i) {
            q[2 * i] = codes[64 * k + i] & 0xF;
            q[2 * i + 1] = codes[64 * k + i] >> 4;
        }
        for (int c = 0; c < 128; c += W)
            SFX(store)(y + 128 * k + c, SFX(cvt)(SFX(load_u8)(q + c) - zero) * s);
    }
}

/* One int8_channel row (ncols a multiple of W): the reference's group rule with the whole row as the group
 * (finite weights only, the first weight of largest magnitude sets the symmetric scale), then
 * code = clamp(round_even(x / scale) + 128, 0, 255), NaN -> 128. */
static TGT void SFX(int8_channel_quant)(const float *x, uint8_t *row, int64_t ncols) {
    VF amax = SFX(splat)(0.f);
    for (int64_t c = 0; c < ncols; c += W) { /* non-finite weights do not count */
        const VF a = SFX(vabs)(SFX(load)(x + c));
        amax = SFX(sel)((a <= FLT_MAX) & (a > amax), a, amax);
    }
    const float am = SFX(hmax)(amax);
    float m = 0.0f; /* the first weight reaching the largest magnitude, sign kept (+0 when all are 0) */
    if (am > 0.0f)
        for (int64_t c = 0; c < ncols; c += W) {
            const unsigned hit = SFX(mask)(SFX(vabs)(SFX(load)(x + c)) == am);
            if (hit) {
                m = x[c + __builtin_ctz(hit)];
                break;
            }
        }
    const ql_int_group_param gp = ql_int_params_for(1.0f, 0.0f, 0.0f, m, 8, true); /* sym: lo/hi unused */
    row[0] = (uint8_t)gp.scale_h;
    row[1] = (uint8_t)(gp.scale_h >> 8);
    uint8_t *codes = row + 2;
    const float id = gp.scale != 0.0f ? 1.0f / gp.scale : 0.0f;
    const VI zero = (VI){0} + 128;
    for (int64_t c = 0; c < ncols; c += W) {
        const VF v = SFX(load)(x + c) * id;
        VF r = SFX(roundcur)(v) + 128.f;
        r = SFX(sel)(r < 0.f, SFX(splat)(0.f), SFX(sel)(r > 255.f, SFX(splat)(255.f), r));
        SFX(store_u8)(codes + c, SFX(seli)(v != v, zero, __builtin_convertvector(r, VI)));
    }
}

static TGT void SFX(int8_channel_dequant)(const uint8_t *row, float *y, int64_t ncols) {
    const float s = ql_simd_fp16_to_fp32((uint16_t)(row[0] | (row[1] << 8)));
    for (int64_t c = 0; c < ncols; c += W) SFX(store)(y + c, SFX(cvt)(SFX(load_u8)(row + 2 + c) - 128) * s);
}

/* One LLM.int8 row (ncols a multiple of W): [f32 absmax over finite weights][int8 codes], code =
 * clamp(round_even(x * (127 / absmax)), -127, 127), NaN and an all-zero row -> 0 (formats/fmt_bnb8.c). */
static TGT void SFX(bnb8_row)(const float *x, uint8_t *out, int64_t ncols) {
    VF amax = SFX(splat)(0.f);
    for (int64_t c = 0; c < ncols; c += W) {
        const VF a = SFX(vabs)(SFX(load)(x + c));
        amax = SFX(sel)((a <= FLT_MAX) & (a > amax), a, amax);
    }
    const float am = SFX(hmax)(amax);
    memcpy(out, &am, 4);
    const float inv = am > 0.0f ? 127.0f / am : 0.0f;
    const VI all_zero = (VI){0} - (inv == 0.0f ? 1 : 0); /* every lane set: a row without scale codes 0 */
    for (int64_t c = 0; c < ncols; c += W) {
        const VF v = SFX(load)(x + c) * inv;
        VF r = SFX(roundcur)(v);
        r = SFX(sel)(r < -127.f, SFX(splat)(-127.f), SFX(sel)(r > 127.f, SFX(splat)(127.f), r));
        r = SFX(sel)((v != v) | all_zero, SFX(splat)(0.f), r);
        SFX(store_u8)(out + 4 + c, __builtin_convertvector(r, VI));
    }
}

#endif /* QL_SIMD_TEMPLATE */
