/* int_quants.h — the INTn row codec (n-bit codes, fp16 scales, optional n-bit zeros, groups along a
 * row with a shorter last group): the scalar reference that formats/fmt_int.c exposes as formats and
 * that SIMD/CUDA twins must match bit for bit, plus the bit-stream and scale helpers both share.
 * Layout rules are in formats/fmt_int.c's header and docs/formats.md. Pure, thread-safe. */
#ifndef QL_INT_QUANTS_H
#define QL_INT_QUANTS_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "base/ql_common.h"

/* group <= 0 means one group per row (per-channel). mse: search shrink factors 1.00 .. 0.21 of the
 * range and keep the one with the lowest (importance-weighted) squared error. importance: [ncols] or NULL. */
int64_t ql_int_row_bytes(int64_t ncols, int bits, int group, bool sym);
void ql_int_quantize_rows_ref(const float *src, void *dst, int64_t nrows, int64_t ncols,
                              const float *importance, int bits, int group, bool sym, bool mse);
void ql_int_dequantize_rows_ref(const void *src, float *dst, int64_t nrows, int64_t ncols, int bits,
                                int group, bool sym);

#define QL_INT_FP16_MAX 65504.0f
#define QL_INT_MSE_STEPS 80 /* shrink factors 1.00 .. 0.21, as GPTQ's maxshrink = 0.8, grid = 100 */

/* ---- bit streams (n <= 8, so a code spans at most two bytes) ---- */

static inline void ql_bits_or(uint8_t *buf, int64_t pos, int n, unsigned v) {
    int64_t byte = pos >> 3;
    int sh = (int)(pos & 7);
    buf[byte] |= (uint8_t)(v << sh);
    if (sh + n > 8) buf[byte + 1] |= (uint8_t)(v >> (8 - sh));
}

static inline unsigned ql_bits_get(const uint8_t *buf, int64_t pos, int n) {
    int64_t byte = pos >> 3;
    int sh = (int)(pos & 7);
    unsigned w = (unsigned)buf[byte] >> sh;
    if (sh + n > 8) w |= (unsigned)buf[byte + 1] << (8 - sh);
    return w & ((1u << n) - 1);
}

static inline void ql_put_f16le(uint8_t *p, uint16_t h) {
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static inline uint16_t ql_get_f16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline int64_t ql_bits_to_bytes(int64_t nbits) { return (nbits + 7) / 8; }

/* a*b, or -1 on overflow / negative input */
static inline int64_t ql_int_mul_checked(int64_t a, int64_t b) {
    if (a < 0 || b < 0) return -1;
    if (a && b > INT64_MAX / a) return -1;
    return a * b;
}

static inline int64_t ql_int_add_checked(int64_t a, int64_t b) {
    if (a < 0 || b < 0 || a > INT64_MAX - b) return -1;
    return a + b;
}

/* ---- one group: choose scale (and zero), encode ---- */

static inline float ql_int_clamp_scale(float s) { return s > QL_INT_FP16_MAX ? QL_INT_FP16_MAX : s < -QL_INT_FP16_MAX ? -QL_INT_FP16_MAX : s; }

/* the code of x; NaN (or inf * 0 when the scale is 0) gets the zero point */
/* nearbyintf in the default rounding mode without a libm call (x86-64's baseline has no roundss): adding and
 * subtracting 2^23 (with v's sign) leaves a float below 2^23 in magnitude rounded half to even, since the sum
 * lies where floats are whole numbers; larger ones are whole already. Only the sign of a zero can differ
 * (+0 for -0.3), which no integer code sees. Checked against nearbyintf on every float (docs/results.md). */
static inline float ql_round_even(float v) {
    const float c = copysignf(8388608.0f, v);
    return fabsf(v) < 8388608.0f ? (v + c) - c : v;
}

static inline int ql_int_code(float x, float id, int zero, int maxq) {
    float v = x * id;
    if (v != v) return zero;
    v = ql_round_even(v) + (float)zero;
    return v < 0.0f ? 0 : v > (float)maxq ? maxq : (int)v;
}

typedef struct {
    uint16_t scale_h; /* fp16 bits */
    float scale;      /* its value */
    int zero;
} ql_int_group_param;

/* Scale and zero for shrink factor p of the group's range (lo <= 0 <= hi, m = signed max magnitude). */
static inline ql_int_group_param ql_int_params_for(float p, float lo, float hi, float m, int bits, bool sym) {
    int maxq = (1 << bits) - 1, half = 1 << (bits - 1);
    ql_int_group_param gp;
    double s = sym ? (double)p * m / -half : ((double)p * hi - (double)p * lo) / maxq;
    gp.scale_h = ql_fp32_to_fp16(ql_int_clamp_scale((float)s));
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

#endif
