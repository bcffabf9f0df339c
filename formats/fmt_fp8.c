/* fmt_fp8.c — OCP FP8 storage formats: E4M3 "fn" and E5M2 codes with a float32 scale per tensor
 * (fp8_e4m3, fp8_e5m2), per output row (*_channel) or per 128x128 block (*_block, DeepSeek-V3 style).
 * scale = absmax / max_representable; code = fp8(x / scale); value = fp8_to_f32(code) * scale.
 * Bad values: absmax comes from finite weights only; NaN stores +0, +inf / -inf store ±max (the
 * output is always finite). A zero scale (all-zero or all-non-finite block) decodes to 0. Pure and
 * thread-safe. Layouts and type ids: docs/formats.md. */
#include "formats/fmt_ext.h"

#include <math.h>
#include <string.h>

#include "base/parallel.h"
#include "kernels/ggml_types.h"

#define E4M3_MAX 448.0f
#define E5M2_MAX 57344.0f
#define FP8_BLOCK 128

/* ---- the codecs ---- */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* |a| (finite, <= the format's max) to an unsigned code with `mbits` mantissa bits and `bias`,
 * round to nearest even, subnormals kept */
static inline uint8_t encode_magnitude(float a, int mbits, int bias) {
    float min_normal = ldexpf(1.0f, 1 - bias);
    if (a < min_normal) {
        /* subnormal grid: multiples of 2^(1-bias-mbits); the scaling by a power of two is exact and
         * 2^mbits (rounding up out of the subnormals) is exactly the code of min_normal */
        return (uint8_t)nearbyintf(ldexpf(a, bias - 1 + mbits));
    }
    uint32_t u = f32_bits(a);
    int shift = 23 - mbits;
    u += ((1u << (shift - 1)) - 1) + ((u >> shift) & 1); /* RNE on the dropped mantissa bits */
    u >>= shift;                                       /* exponent carries naturally */
    return (uint8_t)(u - ((uint32_t)(127 - bias) << mbits));
}

/* inline bodies: the scaled-tensor loops below encode hundreds of millions of weights, and a call per
 * weight through a pointer (with ldexpf for the constant min_normal) was most of an fp8 export's time */
static inline uint8_t e4m3_inline(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x)) return sign | 0x7F;
    float a = fabsf(x);
    if (a > E4M3_MAX) a = E4M3_MAX; /* saturate, ±inf included (no infinities in "fn") */
    return sign | encode_magnitude(a, 3, 7);
}

static inline uint8_t e5m2_inline(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x)) return sign | 0x7E;
    if (isinf(x)) return sign | 0x7C;
    float a = fabsf(x);
    if (a > E5M2_MAX) a = E5M2_MAX; /* finite values saturate */
    return sign | encode_magnitude(a, 2, 15);
}

uint8_t ql_f32_to_fp8_e4m3(float x) { return e4m3_inline(x); }
uint8_t ql_f32_to_fp8_e5m2(float x) { return e5m2_inline(x); }

float ql_fp8_e4m3_to_f32(uint8_t c) {
    int e = (c >> 3) & 15, m = c & 7;
    float v;
    if (e == 15 && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return c & 0x80 ? -v : v;
}

float ql_fp8_e5m2_to_f32(uint8_t c) {
    int e = (c >> 2) & 31, m = c & 3;
    float v;
    if (e == 31) v = m == 0 ? INFINITY : NAN;
    else if (e == 0) v = ldexpf((float)m, -16);
    else v = ldexpf(1.0f + (float)m / 4.0f, e - 15);
    return c & 0x80 ? -v : v;
}

/* ---- scaled tensors ---- */

typedef struct {
    float max;
    bool e5m2; /* else e4m3 */
    float (*decode)(uint8_t);
} fp8_kind;

static const fp8_kind k_e4m3 = {E4M3_MAX, false, ql_fp8_e4m3_to_f32};
static const fp8_kind k_e5m2 = {E5M2_MAX, true, ql_fp8_e5m2_to_f32};

static inline void put_f32(uint8_t *p, float f) { memcpy(p, &f, 4); }
static inline float get_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

static float scale_of(const fp8_kind *k, float absmax) { return absmax / k->max; }

static inline uint8_t encode_scaled(const fp8_kind *k, float x, float scale) {
    if (isnan(x) || scale == 0.0f) return 0; /* a zero scale decodes every code to 0 */
    float v = x / scale;
    if (isinf(v)) v = copysignf(k->max, v); /* ±inf, or x / tiny scale overflowed: saturate */
    return k->e5m2 ? e5m2_inline(v) : e4m3_inline(v);
}

/* The reference over n weights (ql_fp8_encode_scaled_ref). */
static void encode_scaled_n_ref(const fp8_kind *k, const float *src, uint8_t *dst, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) dst[i] = encode_scaled(k, src[i], scale);
}

/* E4M3 over n weights without branches, so that the compiler vectorizes it (an AVX2 clone picked at load time;
 * no FMA, no reassociation: ISO C arithmetic). The same bytes as encode_scaled, step by step: v = x / scale
 * (the same division); ±inf and overflow saturate through the min, as copysignf(max, v) does; the sign is v's;
 * subnormals are rounded to even by the 2^23 trick, which is nearbyintf's result under the default rounding
 * for 0 <= t < 8 (t = a·2^9, exact); normals by the same integer rounding; NaN x gives 0. A scale of 0 gives
 * all zeros, as the reference. -fno-trapping-math (no FP traps are enabled; values are unchanged) lets the compiler
 * compute both sides of each select. Checked against the reference in test_formats (test_fp8_fast_encode). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default"),
               optimize("-ftree-vectorize", "-fvect-cost-model=dynamic", "-fno-trapping-math")))
#endif
static void e4m3_encode_scaled_n(const float *restrict src, uint8_t *restrict dst, int64_t n, float scale) {
    if (scale == 0.0f) {
        memset(dst, 0, (size_t)n);
        return;
    }
    /* on the bit patterns of |v| (non-negative floats order as integers), so no float compare blocks the
     * vectorizer (-ftrapping-math keeps float compares from if-conversion) */
    const uint32_t max_bits = 0x43E00000u /* 448 */, min_normal_bits = 0x3C800000u /* 2^-6 */;
    for (int64_t i = 0; i < n; i++) {
        const float v = src[i] / scale;
        uint32_t vb;
        memcpy(&vb, &v, 4);
        const uint32_t sign = (vb >> 24) & 0x80u, mag = vb & 0x7FFFFFFFu;
        const uint32_t u = mag > max_bits ? max_bits : mag; /* ±inf and overflow saturate (NaN: below) */
        float a;
        memcpy(&a, &u, 4);
        const uint32_t nrm = ((u + 0x7FFFFu + ((u >> 20) & 1u)) >> 20) - (120u << 3);
        const float t = a * 512.0f, r = (t + 8388608.0f) - 8388608.0f;
        const uint32_t sub = (uint32_t)(int32_t)r;
        const uint32_t code = u < min_normal_bits ? sub : nrm;
        dst[i] = (uint8_t)(mag > 0x7F800000u ? 0u : (sign | code)); /* v is NaN exactly when x is */
    }
}

static void encode_scaled_n(const fp8_kind *k, const float *src, uint8_t *dst, int64_t n, float scale) {
    if (k->e5m2)
        encode_scaled_n_ref(k, src, dst, n, scale);
    else
        e4m3_encode_scaled_n(src, dst, n, scale);
}

void ql_fp8_encode_scaled(bool e5m2, const float *src, uint8_t *dst, int64_t n, float scale) {
    encode_scaled_n(e5m2 ? &k_e5m2 : &k_e4m3, src, dst, n, scale);
}
void ql_fp8_encode_scaled_ref(bool e5m2, const float *src, uint8_t *dst, int64_t n, float scale) {
    encode_scaled_n_ref(e5m2 ? &k_e5m2 : &k_e4m3, src, dst, n, scale);
}

/* lut: k->decode of all 256 codes (decode_lut), so that a dequantize calls no ldexpf per weight */
static inline float decode_scaled(const float *lut, uint8_t c, float scale) {
    float v = lut[c] * scale;
    return isfinite(v) ? v : 0.0f; /* only a hand-made NaN/inf code can get here */
}

static void decode_lut(const fp8_kind *k, float lut[256]) {
    for (int c = 0; c < 256; c++) lut[c] = k->decode((uint8_t)c);
}

static inline void absmax_acc(float *m, float v) {
    if (isfinite(v) && fabsf(v) > *m) *m = fabsf(v);
}

/* per tensor: [f32 scale][codes] */
static int64_t fp8_tensor_bytes(int64_t ncols, int64_t nrows) {
    if (ncols <= 0 || nrows <= 0 || ncols > (INT64_MAX - 4) / nrows) return -1;
    return 4 + ncols * nrows;
}

static void fp8_tensor_quantize(const fp8_kind *k, const float *src, uint8_t *dst, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) absmax_acc(&m, src[i]);
    float s = scale_of(k, m);
    put_f32(dst, s);
    encode_scaled_n(k, src, dst + 4, n, s);
}

/* The same bytes on n_threads threads: each worker's finite absmax over its range (a maximum, so the order of
 * the reduction cannot change it), then the codes by ranges. */
typedef struct {
    const fp8_kind *k;
    const float *src;
    uint8_t *codes;
    float scale;
    float part[256]; /* per worker's absmax (ql_parallel_for has at most 256 workers) */
} fp8_tensor_job;

static void fp8_absmax_range(void *ctx, int w, int64_t a, int64_t b) {
    fp8_tensor_job *j = ctx;
    float m = 0.0f;
    for (int64_t i = a; i < b; i++) absmax_acc(&m, j->src[i]);
    j->part[w] = m;
}

static void fp8_encode_range(void *ctx, int w, int64_t a, int64_t b) {
    (void)w;
    fp8_tensor_job *j = ctx;
    encode_scaled_n(j->k, j->src + a, j->codes + a, b - a, j->scale);
}

static void fp8_tensor_quantize_threads(const fp8_kind *k, const float *src, uint8_t *dst, int64_t n, int n_threads) {
    fp8_tensor_job j = {.k = k, .src = src, .codes = dst + 4};
    n_threads = QL_MAX(1, QL_MIN(n_threads, 256));
    ql_parallel_for(n_threads, n, fp8_absmax_range, &j);
    float m = 0.0f;
    for (int w = 0; w < n_threads && w < n; w++) m = j.part[w] > m ? j.part[w] : m;
    j.scale = scale_of(k, m);
    put_f32(dst, j.scale);
    ql_parallel_for(n_threads, n, fp8_encode_range, &j);
}

static void fp8_tensor_dequantize(const fp8_kind *k, const uint8_t *src, float *dst, int64_t n) {
    float s = get_f32(src), lut[256];
    decode_lut(k, lut);
    for (int64_t i = 0; i < n; i++) dst[i] = decode_scaled(lut, src[4 + i], s);
}

/* per row: [f32 scale][ncols codes] per row */
static int64_t fp8_row_bytes(int64_t ncols) { return ncols <= 0 || ncols > INT64_MAX - 4 ? -1 : 4 + ncols; }
static int64_t fp8_rows_tensor_bytes(int64_t ncols, int64_t nrows) {
    int64_t rb = fp8_row_bytes(ncols);
    if (rb < 0 || nrows < 0 || (nrows && rb > INT64_MAX / nrows)) return -1;
    return rb * nrows;
}

/* per 128x128 block: [f32 scales, block grid row-major][codes nrows x ncols] */
static int64_t fp8_block_bytes(int64_t ncols, int64_t nrows) {
    if (ncols <= 0 || nrows <= 0 || ncols > INT64_MAX / nrows) return -1;
    int64_t nb = ((nrows + FP8_BLOCK - 1) / FP8_BLOCK) * ((ncols + FP8_BLOCK - 1) / FP8_BLOCK);
    if (ncols * nrows > INT64_MAX - 4 * nb) return -1;
    return 4 * nb + ncols * nrows;
}

static void fp8_block_quantize(const fp8_kind *k, const float *src, uint8_t *dst, int64_t nrows,
                               int64_t ncols) {
    int64_t nbr = (nrows + FP8_BLOCK - 1) / FP8_BLOCK, nbc = (ncols + FP8_BLOCK - 1) / FP8_BLOCK;
    uint8_t *codes = dst + 4 * nbr * nbc;
    for (int64_t br = 0; br < nbr; br++)
        for (int64_t bc = 0; bc < nbc; bc++) {
            int64_t r0 = br * FP8_BLOCK, r1 = QL_MIN(nrows, r0 + FP8_BLOCK);
            int64_t c0 = bc * FP8_BLOCK, c1 = QL_MIN(ncols, c0 + FP8_BLOCK);
            float m = 0.0f;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++) absmax_acc(&m, src[r * ncols + c]);
            float s = scale_of(k, m);
            put_f32(dst + 4 * (br * nbc + bc), s);
            for (int64_t r = r0; r < r1; r++)
                encode_scaled_n(k, src + r * ncols + c0, codes + r * ncols + c0, c1 - c0, s);
        }
}

static void fp8_block_dequantize(const fp8_kind *k, const uint8_t *src, float *dst, int64_t nrows,
                                 int64_t ncols) {
    int64_t nbr = (nrows + FP8_BLOCK - 1) / FP8_BLOCK, nbc = (ncols + FP8_BLOCK - 1) / FP8_BLOCK;
    const uint8_t *codes = src + 4 * nbr * nbc;
    float lut[256];
    decode_lut(k, lut);
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *srow = src + 4 * (r / FP8_BLOCK) * nbc;
        for (int64_t c = 0; c < ncols; c++)
            dst[r * ncols + c] = decode_scaled(lut, codes[r * ncols + c], get_f32(srow + 4 * (c / FP8_BLOCK)));
    }
}

/* ---- the CUDA column (kernels/codecs_ext_cuda.cu): the same codec per layout; empty without nvcc ---- */
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_ext_api.h"
#define FP8_CUDA_DEFINE(id, e5m2, lay)                                                                       \
    static ql_status id##_cq(const float *s, void *d, int64_t r, int64_t c, void *st) {                       \
        return ql_cuda_fp8_quantize_dev(e5m2, lay, s, d, r, c, st);                                          \
    }                                                                                                        \
    static ql_status id##_cqe(const float *s, void *d, int64_t r, int64_t c) {                                \
        return ql_cuda_fp8_quantize_emulated(e5m2, lay, s, d, r, c);                                         \
    }                                                                                                        \
    static ql_status id##_cd(const void *s, float *d, int64_t r, int64_t c, void *st) {                       \
        return ql_cuda_fp8_dequantize_dev(e5m2, lay, s, d, r, c, st);                                        \
    }                                                                                                        \
    static ql_status id##_cde(const void *s, float *d, int64_t r, int64_t c) {                                \
        return ql_cuda_fp8_dequantize_emulated(e5m2, lay, s, d, r, c);                                       \
    }                                                                                                        \
    static const ql_format_cuda_ops id##_cuda = {.quantize_dev = id##_cq, .dequantize_dev = id##_cd,                  \
                                                 .quantize_emulated = id##_cqe,                                       \
                                                 .dequantize_emulated = id##_cde};
#define FP8_CUDA_ALL(lname, e5m2)                                                                            \
    FP8_CUDA_DEFINE(lname, e5m2, QL_CUDA_FP8_TENSOR)                                                         \
    FP8_CUDA_DEFINE(lname##_channel, e5m2, QL_CUDA_FP8_ROW)                                                  \
    FP8_CUDA_DEFINE(lname##_block, e5m2, QL_CUDA_FP8_TILE128)
#define FP8_CUDA_OPS(id) (&id##_cuda)
#else
#define FP8_CUDA_ALL(lname, e5m2)
#define FP8_CUDA_OPS(id) NULL
#endif

/* ---- registry entries: type ids QL_TYPE_EXT_BASE + 0x88..0x8D (never reuse) ---- */

#define FP8_ENTRIES(lname, kind, id, tol, desc, lbl, w_tensor, w_channel, w_block)                                                              \
    FP8_CUDA_ALL(lname, (kind).max > E4M3_MAX)                                                               \
    static void lname##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,                  \
                                 const float *imp) {                                                         \
        (void)imp;                                                                                           \
        if (fp8_tensor_bytes(ncols, nrows) >= 0) fp8_tensor_quantize(&kind, src, dst, nrows * ncols);        \
    }                                                                                                        \
    static void lname##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {              \
        if (fp8_tensor_bytes(ncols, nrows) >= 0) fp8_tensor_dequantize(&kind, src, dst, nrows * ncols);      \
    }                                                                                                        \
    static void lname##_quantize_threads(const float *src, void *dst, int64_t nrows, int64_t ncols, int nt) {  \
        if (fp8_tensor_bytes(ncols, nrows) >= 0) fp8_tensor_quantize_threads(&kind, src, dst, nrows * ncols, nt); \
    }                                                                                                        \
    static void lname##_channel_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,          \
                                         const float *imp) {                                                 \
        (void)imp;                                                                                           \
        for (int64_t r = 0; r < nrows; r++)                                                                  \
            fp8_tensor_quantize(&kind, src + r * ncols, (uint8_t *)dst + r * (4 + ncols), ncols);            \
    }                                                                                                        \
    static void lname##_channel_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {      \
        for (int64_t r = 0; r < nrows; r++)                                                                  \
            fp8_tensor_dequantize(&kind, (const uint8_t *)src + r * (4 + ncols), dst + r * ncols, ncols);    \
    }                                                                                                        \
    static void lname##_block_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,            \
                                       const float *imp) {                                                   \
        (void)imp;                                                                                           \
        if (fp8_block_bytes(ncols, nrows) >= 0) fp8_block_quantize(&kind, src, dst, nrows, ncols);           \
    }                                                                                                        \
    static void lname##_block_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {        \
        if (fp8_block_bytes(ncols, nrows) >= 0) fp8_block_dequantize(&kind, src, dst, nrows, ncols);         \
    }                                                                                                        \
    const ql_format ql_fmt_##lname = {                                                                       \
        .name = #lname,                                                                                      \
        .summary = "OCP FP8 " desc ", one float32 scale per tensor",                                         \
        .type = QL_TYPE_EXT_BASE + (id),                                                                     \
        .family = QL_FAMILY_FP8,                                                                             \
        .grid = QL_GRID_NONE,                                                                                \
        .label = lbl "t",                                                                                    \
        .explain = w_tensor,                                                                                 \
        .block = 1,                                                                                          \
        .block_bytes = 1,                                                                                    \
        .bpw = 8.0,                                                                                          \
        .whole_tensor = true,                                                                                \
        .tolerance = tol,                                                                                    \
        .tensor_bytes = fp8_tensor_bytes,                                                                    \
        .quantize_rows = lname##_quantize,                                                                   \
        .dequantize_rows = lname##_dequantize,                                                               \
        .quantize_whole_threads = lname##_quantize_threads,                                                  \
        .cuda = FP8_CUDA_OPS(lname),                                                                         \
    };                                                                                                       \
    const ql_format ql_fmt_##lname##_channel = {                                                             \
        .name = #lname "_channel",                                                                           \
        .summary = "OCP FP8 " desc ", float32 scale per output row",                                         \
        .type = QL_TYPE_EXT_BASE + (id) + 2,                                                                 \
        .family = QL_FAMILY_FP8,                                                                             \
        .grid = QL_GRID_NONE,                                                                                \
        .label = lbl "c",                                                                                    \
        .explain = w_channel,                                                                                \
        .block = 1,                                                                                          \
        .block_bytes = 1,                                                                                    \
        .bpw = 8.0 + 32.0 / 4096,                                                                            \
        .tolerance = tol,                                                                                    \
        .row_bytes = fp8_row_bytes,                                                                          \
        .tensor_bytes = fp8_rows_tensor_bytes,                                                               \
        .quantize_rows = lname##_channel_quantize,                                                           \
        .dequantize_rows = lname##_channel_dequantize,                                                       \
        .cuda = FP8_CUDA_OPS(lname##_channel),                                                               \
    };                                                                                                       \
    const ql_format ql_fmt_##lname##_block = {                                                               \
        .name = #lname "_block",                                                                             \
        .summary = "OCP FP8 " desc ", float32 scale per 128x128 block",                                      \
        .type = QL_TYPE_EXT_BASE + (id) + 4,                                                                 \
        .family = QL_FAMILY_FP8,                                                                             \
        .grid = QL_GRID_NONE,                                                                                \
        .label = lbl "b",                                                                                    \
        .explain = w_block,                                                                                  \
        .block = FP8_BLOCK,                                                                                  \
        .block_bytes = FP8_BLOCK * FP8_BLOCK + 4,                                                            \
        .bpw = 8.0 + 32.0 / (FP8_BLOCK * FP8_BLOCK),                                                         \
        .whole_tensor = true,                                                                                \
        .tolerance = tol,                                                                                    \
        .tensor_bytes = fp8_block_bytes,                                                                     \
        .quantize_rows = lname##_block_quantize,                                                             \
        .dequantize_rows = lname##_block_dequantize,                                                         \
        .cuda = FP8_CUDA_OPS(lname##_block),                                                                 \
    };

FP8_ENTRIES(fp8_e4m3, k_e4m3, 0x88, 0.035, "E4M3 (max 448)", "e4m3",
            "8-bit floats with 4 exponent and 3 mantissa bits (max 448), one scale for the whole tensor. "
            "Floats keep relative precision for small and large weights alike.",
            "8-bit floats (E4M3, max 448) with one float scale per output row: what vLLM's FP8 checkpoints use "
            "on Hopper GPUs.",
            "8-bit floats (4 exponent, 3 mantissa bits) with one float scale per 128x128 tile, as DeepSeek-V3 "
            "ships its weights.")
FP8_ENTRIES(fp8_e5m2, k_e5m2, 0x89, 0.07, "E5M2 (max 57344)", "e5m2",
            "8-bit floats with 5 exponent and 2 mantissa bits, one scale per tensor: wide range, coarse steps.",
            "8-bit floats (E5M2) with one scale per output row.",
            "8-bit floats with 5 exponent and 2 mantissa bits and one scale per 128x128 tile: more range, less "
            "precision than E4M3.")
