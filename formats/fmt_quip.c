/* fmt_quip.c — storage formats in a randomized-Hadamard basis: QuIP#'s E8P lattice codes (e8p = 2 bits,
 * e8p_rvq3 = E8P + a one-byte E8P restriction, e8p_rvq4 = E8P + E8P: residual vector quantization) and,
 * sharing the rotation, INTn groups of the rotated weights (rht_int{2,3,4}_g64, QuaRot-style incoherence
 * without a vector codebook). A tensor W [nrows, ncols] is stored as W̃ = H_out·S_out·W·S_in·H_inᵀ
 * (kernels/hadamard.h; signs from the seed in the header); decoding returns the weights rotated back, so
 * the F32 forward pass computes exactly what a QuIP# runtime computes with y = S_out·H_outᵀ·W̃·H_in·S_in·x.
 * The quantizers here are nearest rounding (RTN in the rotated basis); methods/m_quip.c adds LDLQ.
 * Both dimensions must be Hadamard sizes (2^k·m, kernels/hadamard.h), E8P rows a multiple of 8.
 * Layouts and type ids QL_TYPE_EXT_BASE + 0xA0..0xAA: docs/formats.md § QuIP#. Pure and thread-safe. */
#include "formats/fmt_quip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/e8p.h"
#include "kernels/ggml_types.h"
#include "kernels/hadamard.h"
#include "kernels/int_quants.h"

/* ---- shared pieces ---- */

void ql_quip_sanitize(float *w, int64_t n) {
    float amax = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(w[i]) && fabsf(w[i]) > amax) amax = fabsf(w[i]);
    for (int64_t i = 0; i < n; i++)
        if (isnan(w[i])) w[i] = 0;
        else if (isinf(w[i])) w[i] = w[i] > 0 ? amax : -amax;
}

static bool hadamard_shape(int64_t ncols, int64_t nrows, int mult, char *why, size_t cap) {
    if (ncols <= 0 || nrows <= 0 || ncols % mult) {
        if (why && cap) snprintf(why, cap, "rows of %lld are not a multiple of %d", (long long)ncols, mult);
        return false;
    }
    char w2[200];
    if (!ql_had_supported(ncols, w2, sizeof w2)) {
        if (why && cap) snprintf(why, cap, "row length: %s", w2);
        return false;
    }
    if (!ql_had_supported(nrows, w2, sizeof w2)) {
        if (why && cap) snprintf(why, cap, "row count: %s", w2);
        return false;
    }
    return true;
}

static inline void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void put_f32(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(p, u);
}
static inline float get_f32(const uint8_t *p) {
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void put_u64(uint8_t *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

/* ---- E8P ---- */

static int stage2_bytes(int stage2) { return stage2 == 2 ? 2 : stage2; }

void ql_quip_q8(const float x[8], float s1, float s2, int stage2, uint16_t *c1, uint16_t *c2, float q[8]) {
    float y[8], d[8];
    if (s1 > 0) {
        for (int i = 0; i < 8; i++) y[i] = x[i] / s1;
        *c1 = ql_e8p_encode(y);
        ql_e8p_decode(*c1, d);
        for (int i = 0; i < 8; i++) q[i] = s1 * d[i];
    } else {
        *c1 = 0;
        for (int i = 0; i < 8; i++) q[i] = 0;
    }
    if (!stage2) return;
    if (!(s2 > 0)) {
        *c2 = 0;
        return;
    }
    for (int i = 0; i < 8; i++) y[i] = (x[i] - q[i]) / s2;
    if (stage2 == 1) {
        *c2 = ql_e8p1_encode(y);
        ql_e8p1_decode((uint8_t)*c2, d);
    } else {
        *c2 = ql_e8p_encode(y);
        ql_e8p_decode(*c2, d);
    }
    for (int i = 0; i < 8; i++) q[i] += s2 * d[i];
}

/* the multiple c·rms (c = 0.40 .. 1.60) with the least rounding error over the sample; 0 for rms 0 */
static float best_scale(const float *v, int64_t nvec, int64_t step, bool one_byte) {
    double ss = 0;
    int64_t cnt = 0;
    for (int64_t k = 0; k < nvec; k += step, cnt++)
        for (int i = 0; i < 8; i++) ss += (double)v[k * 8 + i] * v[k * 8 + i];
    double rms = cnt ? sqrt(ss / (double)(cnt * 8)) : 0;
    if (!(rms > 0) || !isfinite(rms)) return 0;
    float best = (float)rms;
    double beste = INFINITY;
    for (int t = 0; t <= 24; t++) {
        float s = (float)(rms * (0.40 + 0.05 * t));
        if (!(s > 0)) continue;
        double e = 0;
        for (int64_t k = 0; k < nvec; k += step) {
            float y[8], d[8];
            for (int i = 0; i < 8; i++) y[i] = v[k * 8 + i] / s;
            if (one_byte) ql_e8p1_decode(ql_e8p1_encode(y), d);
            else ql_e8p_decode(ql_e8p_encode(y), d);
            for (int i = 0; i < 8; i++) {
                double r = v[k * 8 + i] - (double)s * d[i];
                e += r * r;
            }
        }
        if (e < beste) beste = e, best = s;
    }
    return best;
}

void ql_quip_scales(const float *wt, int64_t n, int stage2, float *s1, float *s2) {
    const int64_t nvec = n / 8, step = nvec > 8192 ? nvec / 8192 : 1;
    *s1 = best_scale(wt, nvec, step, false);
    *s2 = 0;
    if (!stage2 || !(*s1 > 0)) return;
    /* the residual of stage 1 on the same sample */
    int64_t ns = (nvec + step - 1) / step;
    float *res = malloc((size_t)ns * 8 * sizeof(float));
    if (!res) return;
    for (int64_t k = 0, j = 0; k < nvec; k += step, j++) {
        uint16_t c1, c2;
        float q[8];
        ql_quip_q8(wt + k * 8, *s1, 0, 0, &c1, &c2, q);
        for (int i = 0; i < 8; i++) res[j * 8 + i] = wt[k * 8 + i] - q[i];
    }
    *s2 = best_scale(res, ns, 1, stage2 == 1);
    free(res);
}

void ql_quip_pack(void *dst, int64_t nvec, int stage2, float s1, float s2, uint64_t seed, const uint16_t *c1,
                  const uint16_t *c2) {
    uint8_t *p = dst;
    put_f32(p, s1);
    put_f32(p + 4, s2);
    put_u64(p + 8, seed);
    uint8_t *a = p + QL_QUIP_HEADER, *b = a + 2 * nvec;
    for (int64_t k = 0; k < nvec; k++) {
        a[2 * k] = (uint8_t)c1[k];
        a[2 * k + 1] = (uint8_t)(c1[k] >> 8);
        if (stage2 == 1) b[k] = (uint8_t)c2[k];
        else if (stage2 == 2) b[2 * k] = (uint8_t)c2[k], b[2 * k + 1] = (uint8_t)(c2[k] >> 8);
    }
}

static int64_t e8p_size(int64_t ncols, int64_t nrows, int stage2) {
    if (!hadamard_shape(ncols, nrows, 8, NULL, 0)) return -1;
    int64_t nvec = ql_int_mul_checked(ncols / 8, nrows);
    int64_t b = ql_int_mul_checked(nvec, 2 + stage2_bytes(stage2));
    return b < 0 ? -1 : ql_int_add_checked(b, QL_QUIP_HEADER);
}

static bool e8p_shape_ok(int64_t ncols, int64_t nrows, char *why, size_t cap) {
    return hadamard_shape(ncols, nrows, 8, why, cap);
}

static void e8p_encode_tensor(const float *src, void *dst, int64_t nrows, int64_t ncols, int stage2) {
    if (e8p_size(ncols, nrows, stage2) < 0) return;
    const int64_t n = nrows * ncols, nvec = n / 8;
    float *w = ql_malloc((size_t)n * sizeof(float));
    memcpy(w, src, (size_t)n * sizeof(float));
    ql_quip_sanitize(w, n);
    ql_rht_matrix(w, nrows, ncols, QL_QUIP_SEED, false, NULL, 0);
    float s1, s2;
    ql_quip_scales(w, n, stage2, &s1, &s2);
    uint16_t *c1 = ql_malloc((size_t)nvec * 2), *c2 = ql_malloc((size_t)nvec * 2);
    for (int64_t k = 0; k < nvec; k++) {
        float q[8];
        ql_quip_q8(w + 8 * k, s1, s2, stage2, &c1[k], &c2[k], q);
    }
    ql_quip_pack(dst, nvec, stage2, s1, s2, QL_QUIP_SEED, c1, c2);
    free(c1), free(c2), free(w);
}

static void e8p_decode_tensor(const void *src, float *dst, int64_t nrows, int64_t ncols, int stage2) {
    if (e8p_size(ncols, nrows, stage2) < 0) return;
    const uint8_t *p = src;
    const float s1 = get_f32(p), s2 = get_f32(p + 4);
    const uint64_t seed = get_u64(p + 8);
    const int64_t nvec = nrows * ncols / 8;
    const uint8_t *a = p + QL_QUIP_HEADER, *b = a + 2 * nvec;
    for (int64_t k = 0; k < nvec; k++) {
        float d[8], e[8];
        ql_e8p_decode((uint16_t)(a[2 * k] | a[2 * k + 1] << 8), d);
        for (int i = 0; i < 8; i++) dst[8 * k + i] = s1 * d[i];
        if (!stage2) continue;
        if (stage2 == 1) ql_e8p1_decode(b[k], e);
        else ql_e8p_decode((uint16_t)(b[2 * k] | b[2 * k + 1] << 8), e);
        for (int i = 0; i < 8; i++) dst[8 * k + i] += s2 * e[i];
    }
    ql_rht_matrix(dst, nrows, ncols, seed, true, NULL, 0);
}



#define E8P_WORDS                                                                                            \
    "QuIP#: the weight matrix is first rotated on both sides by randomized Hadamard transforms, which "      \
    "spreads outliers evenly (incoherence), then every 8 consecutive rotated weights are replaced by the "   \
    "nearest of 65536 points of the E8 lattice (shifted by 1/4) times one scale per tensor: 16 bits per 8 "  \
    "weights. Decoding rotates back. With --method quip, LDLQ feeds each block's rounding error forward "   \
    "through the calibration Hessian, as GPTQ does. llama.cpp cannot load it."

/* the catalogue's "before and after the rotation" view: the weights in the basis the codes see */
static void rotate_default(float *w, int64_t nrows, int64_t ncols) {
    ql_rht_matrix(w, nrows, ncols, QL_QUIP_SEED, false, NULL, 0);
}

/* The CUDA column: decode only (kernels/rotated_cuda.cu: codes, then the inverse RHT); the encoders are searches
 * over the rotated tensor that stay on the CPU. */
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_rotated_api.h"
#define ROT_CUDA(id, dev, emu)                                                                                \
    static ql_status id##_cd(const void *s, float *d, int64_t r, int64_t c, void *st) { return dev; }        \
    static ql_status id##_cde(const void *s, float *d, int64_t r, int64_t c) { return emu; }                 \
    static const ql_format_cuda_ops id##_cuda = {.dequantize_dev = id##_cd, .dequantize_emulated = id##_cde};
#define ROT_CUDA_OPS(id) (&id##_cuda)
/* rht_int: quantize too (the forward rotation, then INT groups) */
#define RHT_CUDA(n)                                                                                          \
    static ql_status rht_int##n##_cd(const void *s, float *d, int64_t r, int64_t c, void *st) {              \
        return ql_cuda_rht_int_dequantize_dev(n, RHT_GROUP, s, d, r, c, st);                                 \
    }                                                                                                        \
    static ql_status rht_int##n##_cde(const void *s, float *d, int64_t r, int64_t c) {                       \
        return ql_cuda_rht_int_dequantize_emulated(n, RHT_GROUP, s, d, r, c);                                \
    }                                                                                                        \
    static ql_status rht_int##n##_cq(const float *s, void *d, int64_t r, int64_t c, void *st) {              \
        if (rht_bytes(c, r, n) < 0) return ql_fail(QL_ERR_ARG, "rht_int%d: a %lld x %lld tensor does not fit", n, \
                                                    (long long)r, (long long)c);                             \
        return ql_cuda_rht_int_quantize_dev(n, RHT_GROUP, QL_QUIP_SEED, s, d, r, c, st);                     \
    }                                                                                                        \
    static ql_status rht_int##n##_cqe(const float *s, void *d, int64_t r, int64_t c) {                       \
        if (rht_bytes(c, r, n) < 0) return ql_fail(QL_ERR_ARG, "rht_int%d: a %lld x %lld tensor does not fit", n, \
                                                    (long long)r, (long long)c);                             \
        return ql_cuda_rht_int_quantize_emulated(n, RHT_GROUP, QL_QUIP_SEED, s, d, r, c);                    \
    }                                                                                                        \
    static const ql_format_cuda_ops rht_int##n##_cuda = {.quantize_dev = rht_int##n##_cq,                           \
                                                         .dequantize_dev = rht_int##n##_cd,                          \
                                                         .quantize_emulated = rht_int##n##_cqe,                        \
                                                         .dequantize_emulated = rht_int##n##_cde};
#else
#define RHT_CUDA(n)
#define ROT_CUDA(id, dev, emu)
#define ROT_CUDA_OPS(id) NULL
#endif

#define E8P_ENTRY(lname, st2, id, bits, tol, lbl, summ, extra)                                               \
    ROT_CUDA(lname, ql_cuda_e8p_dequantize_dev(st2, s, d, r, c, st), ql_cuda_e8p_dequantize_emulated(st2, s, d, r, c)) \
    static int64_t lname##_tensor_bytes(int64_t ncols, int64_t nrows) { return e8p_size(ncols, nrows, st2); } \
    static void lname##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) { \
        (void)imp;                                                                                           \
        e8p_encode_tensor(src, dst, nrows, ncols, st2);                                                           \
    }                                                                                                        \
    static void lname##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {              \
        e8p_decode_tensor(src, dst, nrows, ncols, st2);                                                         \
    }                                                                                                        \
    const ql_format ql_fmt_##lname = {                                                                       \
        .name = #lname,                                                                                      \
        .summary = summ,                                                                                     \
        .type = QL_TYPE_EXT_BASE + (id),                                                                     \
        .family = QL_FAMILY_ROTATED,                                                                         \
        .grid = QL_GRID_NONE,                                                                                \
        .label = lbl,                                                                                        \
        .explain = E8P_WORDS extra,                                                                          \
        .block = 8,                                                                                          \
        .block_bytes = 2 + ((st2) == 2 ? 2 : (st2)),                                                              \
        .bpw = bits,                                                                                         \
        .whole_tensor = true,                                                                                \
        .rotated = true,                                                                                     \
        .code_basis = rotate_default,                                                                        \
        .shape_ok = e8p_shape_ok,                                                                            \
        .tolerance = tol,                                                                                    \
        .tensor_bytes = lname##_tensor_bytes,                                                                \
        .quantize_rows = lname##_quantize,                                                                   \
        .dequantize_rows = lname##_dequantize,                                                               \
        .cuda = ROT_CUDA_OPS(lname),                                                                         \
    };

E8P_ENTRY(e8p, 0, 0xA0, 2.0, 0.36, "e8p", "QuIP# E8P: Hadamard-rotated, 8-dim lattice codes, 2 bits", "")
E8P_ENTRY(e8p_rvq3, 1, 0xA1, 3.0, 0.22, "e8p_r3",
          "QuIP# E8P + 1-bit residual stage (RVQ), 3 bits",
          " e8p_rvq3 adds a second 8-bit code per 8 weights for the residual (256 points with entries ±1/4, ±3/4).")
E8P_ENTRY(e8p_rvq4, 2, 0xA2, 4.0, 0.12, "e8p_r4", "QuIP# E8P + E8P residual stage (RVQ), 4 bits",
          " e8p_rvq4 codes the residual with a second E8P code and its own scale.")

bool ql_quip_stage2(const ql_format *f, int *stage2) {
    int s = f == &ql_fmt_e8p ? 0 : f == &ql_fmt_e8p_rvq3 ? 1 : f == &ql_fmt_e8p_rvq4 ? 2 : -1;
    if (s < 0) return false;
    if (stage2) *stage2 = s;
    return true;
}

/* ---- rht_int{n}_g64: INTn groups of the rotated weights ---- */

#define RHT_GROUP 64

static int64_t rht_bytes(int64_t ncols, int64_t nrows, int bits) {
    if (!hadamard_shape(ncols, nrows, 1, NULL, 0)) return -1;
    int64_t b = ql_int_mul_checked(ql_int_row_bytes(ncols, bits, RHT_GROUP, false), nrows);
    return b < 0 ? -1 : ql_int_add_checked(b, 8);
}

static bool rht_shape_ok(int64_t ncols, int64_t nrows, char *why, size_t cap) {
    return hadamard_shape(ncols, nrows, 1, why, cap);
}

static void rht_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols, int bits) {
    if (rht_bytes(ncols, nrows, bits) < 0) return;
    const int64_t n = nrows * ncols;
    float *w = ql_malloc((size_t)n * sizeof(float));
    memcpy(w, src, (size_t)n * sizeof(float));
    ql_quip_sanitize(w, n);
    ql_rht_matrix(w, nrows, ncols, QL_QUIP_SEED, false, NULL, 0);
    put_u64(dst, QL_QUIP_SEED);
    ql_int_quantize_rows_ref(w, (uint8_t *)dst + 8, nrows, ncols, NULL, bits, RHT_GROUP, false, false);
    free(w);
}

static void rht_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols, int bits) {
    if (rht_bytes(ncols, nrows, bits) < 0) return;
    ql_int_dequantize_rows_ref((const uint8_t *)src + 8, dst, nrows, ncols, bits, RHT_GROUP, false);
    ql_rht_matrix(dst, nrows, ncols, get_u64(src), true, NULL, 0);
}

#define RHT_WORDS                                                                                            \
    "Rotation alone (QuaRot-style incoherence): the matrix is rotated on both sides by randomized Hadamard "  \
    "transforms, then stored as INTn groups of 64 with an fp16 scale and zero point, exactly like intN_g64. " \
    "Compare with intN_g64 to see what the rotation buys: outliers no longer set the scale of their group. "  \
    "Decoding rotates back. llama.cpp cannot load it."

#define RHT_ENTRY(n, id, tol)                                                                                \
    RHT_CUDA(n)                                                                                              \
    static int64_t rht_int##n##_tensor_bytes(int64_t ncols, int64_t nrows) { return rht_bytes(ncols, nrows, n); } \
    static void rht_int##n##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,             \
                                      const float *imp) {                                                    \
        (void)imp;                                                                                           \
        rht_quantize(src, dst, nrows, ncols, n);                                                             \
    }                                                                                                        \
    static void rht_int##n##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {         \
        rht_dequantize(src, dst, nrows, ncols, n);                                                           \
    }                                                                                                        \
    const ql_format ql_fmt_rht_int##n##_g64 = {                                                              \
        .name = "rht_int" #n "_g64",                                                                         \
        .summary = "Hadamard-rotated INT" #n ", groups of 64 (QuaRot-style, no codebook)",                   \
        .type = QL_TYPE_EXT_BASE + (id),                                                                     \
        .family = QL_FAMILY_ROTATED,                                                                         \
        .grid = QL_GRID_NONE,                                                                                \
        .label = "h" #n "g64",                                                                               \
        .explain = RHT_WORDS,                                                                                \
        .block = 1,                                                                                          \
        .block_bytes = 1,                                                                                    \
        .bpw = (n) + 16.0 / RHT_GROUP + (double)(n) / RHT_GROUP,                                             \
        .whole_tensor = true,                                                                                \
        .rotated = true,                                                                                     \
        .code_basis = rotate_default,                                                                        \
        .shape_ok = rht_shape_ok,                                                                            \
        .tolerance = tol,                                                                                    \
        .tensor_bytes = rht_int##n##_tensor_bytes,                                                           \
        .quantize_rows = rht_int##n##_quantize,                                                              \
        .dequantize_rows = rht_int##n##_dequantize,                                                          \
        .cuda = ROT_CUDA_OPS(rht_int##n),                                                                    \
    };

RHT_ENTRY(2, 0xA8, 0.6)
RHT_ENTRY(3, 0xA9, 0.3)
RHT_ENTRY(4, 0xAA, 0.15)
