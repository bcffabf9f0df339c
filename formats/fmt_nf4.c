/* fmt_nf4.c — bitsandbytes 4-bit formats: NF4 and FP4 codes with a float32 absmax per block of 64
 * (nf4, fp4, row-wise), and their double-quantized forms (nf4_dq, fp4_dq, whole tensor): the block
 * absmax values, minus their mean, are coded with bitsandbytes' 8-bit dynamic map in blocks of 256
 * with a float32 scale each. Numerics follow bitsandbytes' CUDA kernels (kQuantizeBlockwise): codes
 * are chosen by the same decision trees / binary search on x * (1/absmax). Layouts: docs/formats.md.
 * Bad values: absmax values come from finite weights only; NaN -> the code of 0, +inf / -inf -> the
 * code of +1 / -1 (so ±absmax); the output is always finite. Pure and thread-safe. */
#include "formats/fmt_ext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ggml_types.h"
#include "kernels/simd.h"

#define BNB_BLOCK 64
#define BNB_BLOCK2 256 /* second-level block (absmax values per float32 scale) */

/* create_normal_map(offset=0.9677083), as float32, indexed by code */
const float ql_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* e2m1 with bias 2 in bitsandbytes' bit order [0, 0.0625, 8, 12, 4, 6, 2, 3] / 12, then negatives */
const float ql_fp4_code[16] = {
    0.0f, 0.0625f / 12, 8.0f / 12, 1.0f, 4.0f / 12, 6.0f / 12, 2.0f / 12, 3.0f / 12,
    -0.0f, -0.0625f / 12, -8.0f / 12, -1.0f, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12,
};

/* Nearest NF4 code: thresholds are the midpoints between neighbouring code values (bitsandbytes'
 * dQuantizeNF4); a value exactly on a midpoint goes to the lower code. */
static const float k_nf4_mid[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
};
static inline uint8_t nf4_encode_inline(float x) {
    const float *mid = k_nf4_mid;
    /* the tree descends on "x > threshold": the code is the number of thresholds below x, found here by a
     * branch-free binary search over the sorted midpoints (4 compares, not 15; NaN compares false everywhere,
     * as in the tree, and yields code 0) */
    unsigned c = 0;
    c += (x > mid[c + 7]) << 3;
    c += (x > mid[c + 3]) << 2;
    c += (x > mid[c + 1]) << 1;
    c += x > mid[c];
    return (uint8_t)c;
}

uint8_t ql_nf4_encode(float x) { return nf4_encode_inline(x); }

/* bitsandbytes' dQuantizeFP4: sign bit from x < 0, magnitude by a tree of thresholds. The tree is a search
 * tree over its 7 sorted thresholds, so the leaf it reaches is fixed by how many thresholds |x| passes; that
 * count, mapped to the tree's leaf codes, is computed here without a branch (bitsandbytes' nested ifs were
 * mispredicted on half the weights: 60% of an fp4 export's CPU time). NaN passes none, as in the tree: 0.
 * Equal to the tree on every float (checked over all 2^32 bit patterns when it was written). */
static const float k_fp4_thr[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                   0.4166667f,  0.583333f,  0.8333333f};
static const uint8_t k_fp4_leaf[8] = {0, 1, 6, 7, 4, 5, 2, 3}; /* the tree's code after passing n thresholds */
static inline uint8_t fp4_encode_inline(float x) {
    uint8_t sign = x < 0.0f ? 8 : 0;
    x = fabsf(x);
    unsigned n = 0;
    for (int i = 0; i < 7; i++) n += x > k_fp4_thr[i];
    return (uint8_t)(k_fp4_leaf[n] + sign);
}

uint8_t ql_fp4_encode(float x) { return fp4_encode_inline(x); }

/* The CUDA column (kernels/codecs_ext_cuda.cu) codes by counting thresholds passed: for NF4 the midpoints
 * above; for FP4 the decision tree's thresholds in increasing order, each count mapped to the code the tree
 * reaches (test_cuda / test_traits hold the two against the encoders above). */
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_ext_api.h"
static ql_cuda_bnb4 g_cuda_nf4, g_cuda_fp4;
static void dynamic_map_init(void);
__attribute__((constructor)) static void cuda_tables_init(void) {
    dynamic_map_init(); /* constructors run in no set order: fill the map now (it is computed the same each time) */
    memcpy(g_cuda_nf4.dyn, ql_bnb_dynamic_map(), sizeof g_cuda_nf4.dyn);
    memcpy(g_cuda_fp4.dyn, ql_bnb_dynamic_map(), sizeof g_cuda_fp4.dyn);
    memcpy(g_cuda_nf4.code, ql_nf4_code, sizeof g_cuda_nf4.code);
    memcpy(g_cuda_nf4.thr, k_nf4_mid, sizeof k_nf4_mid);
    for (int i = 0; i < 16; i++) g_cuda_nf4.order[i] = (uint8_t)i;
    g_cuda_nf4.nthr = 15;
    g_cuda_nf4.zero = 7, g_cuda_nf4.plus_one = 15, g_cuda_nf4.minus_one = 0;
    memcpy(g_cuda_fp4.code, ql_fp4_code, sizeof g_cuda_fp4.code);
    memcpy(g_cuda_fp4.thr, k_fp4_thr, sizeof k_fp4_thr);
    memcpy(g_cuda_fp4.order, k_fp4_leaf, sizeof k_fp4_leaf);
    g_cuda_fp4.nthr = 7;
    g_cuda_fp4.sign_split = true;
    g_cuda_fp4.zero = 0, g_cuda_fp4.plus_one = 3, g_cuda_fp4.minus_one = 11;
}
#define BNB4_CUDA_DEFINE(lname)                                                                              \
    static ql_status lname##_cq(const float *s, void *d, int64_t r, int64_t c, void *st) {                    \
        return ql_cuda_bnb4_quantize_dev(&g_cuda_##lname, s, d, r, c, st);                                   \
    }                                                                                                        \
    static ql_status lname##_cqe(const float *s, void *d, int64_t r, int64_t c) {                             \
        return ql_cuda_bnb4_quantize_emulated(&g_cuda_##lname, s, d, r, c);                                  \
    }                                                                                                        \
    static ql_status lname##_cd(const void *s, float *d, int64_t r, int64_t c, void *st) {                    \
        return ql_cuda_bnb4_dequantize_dev(&g_cuda_##lname, s, d, r, c, st);                                 \
    }                                                                                                        \
    static ql_status lname##_cde(const void *s, float *d, int64_t r, int64_t c) {                             \
        return ql_cuda_bnb4_dequantize_emulated(&g_cuda_##lname, s, d, r, c);                                \
    }                                                                                                        \
    static const ql_format_cuda_ops lname##_cuda = {.quantize_dev = lname##_cq, .dequantize_dev = lname##_cd,          \
                                                    .quantize_emulated = lname##_cqe,                                  \
                                                    .dequantize_emulated = lname##_cde};                               \
    static ql_status lname##_dq_cq(const float *s, void *d, int64_t r, int64_t c, void *st) {                 \
        return ql_cuda_bnb4_dq_quantize_dev(&g_cuda_##lname, s, d, r, c, st);                                \
    }                                                                                                        \
    static ql_status lname##_dq_cqe(const float *s, void *d, int64_t r, int64_t c) {                          \
        return ql_cuda_bnb4_dq_quantize_emulated(&g_cuda_##lname, s, d, r, c);                               \
    }                                                                                                        \
    static ql_status lname##_dq_cd(const void *s, float *d, int64_t r, int64_t c, void *st) {                 \
        return ql_cuda_bnb4_dq_dequantize_dev(&g_cuda_##lname, s, d, r, c, st);                              \
    }                                                                                                        \
    static ql_status lname##_dq_cde(const void *s, float *d, int64_t r, int64_t c) {                          \
        return ql_cuda_bnb4_dq_dequantize_emulated(&g_cuda_##lname, s, d, r, c);                             \
    }                                                                                                        \
    static const ql_format_cuda_ops lname##_dq_cuda = {.quantize_dev = lname##_dq_cq, .dequantize_dev = lname##_dq_cd, \
                                                       .quantize_emulated = lname##_dq_cqe,                           \
                                                       .dequantize_emulated = lname##_dq_cde};
#define BNB4_CUDA_OPS(lname) (&lname##_cuda)
#else
#define BNB4_CUDA_DEFINE(lname)
#define BNB4_CUDA_OPS(lname) NULL
#endif

/* ---- bitsandbytes' 8-bit dynamic map (create_dynamic_map(signed=True, 7, 8)) ----
 * For each decade i = 0..6: the midpoints of torch.linspace(0.1, 1, 2^i + 1), times 10^(i-6), with
 * both signs; plus 0 and 1; sorted. Computed in float32 the way torch does (linspace from both ends,
 * the python scalar rounded to float before the product). */
static float g_dyn[256];

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

__attribute__((constructor)) static void dynamic_map_init(void) {
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        float start = 0.1f, end = 1.0f, step = (end - start) / (float)(items - 1);
        float b[65];
        for (int j = 0; j < items; j++)
            b[j] = j < items / 2 ? start + step * (float)j : end - step * (float)(items - 1 - j);
        float scale = (float)pow(10.0, i - 6);
        for (int j = 0; j + 1 < items; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            g_dyn[n++] = scale * mean;
            g_dyn[n++] = -scale * mean;
        }
    }
    g_dyn[n++] = 0.0f;
    g_dyn[n++] = 1.0f;
    qsort(g_dyn, (size_t)n, sizeof(float), cmp_float);
}

const float *ql_bnb_dynamic_map(void) { return g_dyn; }

/* bitsandbytes' dQuantize<0>: 7-step binary search from the middle, then the nearer neighbour by
 * comparing with the float midpoint */
uint8_t ql_bnb_dynamic_encode(float x) {
    const float *code = g_dyn;
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = code[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) return (uint8_t)(x > (upper + val) * 0.5f ? upper_pivot : pivot);
    return (uint8_t)(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

/* ---- shared pieces ---- */

/* A block of 64 finite weights scaled by a finite 1/absmax, encoded with the encoder inlined (no call per weight:
 * the export-speed path, issue 14); the same codes as calling encode on each. */
static void nf4_encode_64(const float *x, float inv, uint8_t *c) {
    for (int i = 0; i < 64; i++) c[i] = nf4_encode_inline(x[i] * inv);
}
static void fp4_encode_64(const float *x, float inv, uint8_t *c) {
    for (int i = 0; i < 64; i++) c[i] = fp4_encode_inline(x[i] * inv);
}

typedef struct {
    const float *code;
    uint8_t (*encode)(float);
    void (*encode_64)(const float *x, float inv, uint8_t *codes);
    uint8_t zero, plus_one, minus_one; /* codes for NaN, +inf, -inf */
    ql_bnb4_thresholds thr;            /* the same encoder as counted thresholds, for the SIMD twin */
} bnb4_kind;

static const uint8_t k_nf4_leaf[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const bnb4_kind k_nf4 = {ql_nf4_code, ql_nf4_encode, nf4_encode_64, 7, 15, 0, {k_nf4_mid, 15, k_nf4_leaf, false}};
static const bnb4_kind k_fp4 = {ql_fp4_code, ql_fp4_encode, fp4_encode_64, 0, 3, 11, {k_fp4_thr, 7, k_fp4_leaf, true}};

static inline void put_f32(uint8_t *p, float f) { memcpy(p, &f, 4); }
static inline float get_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

static float finite_absmax(const float *x, int64_t len) {
    float m = 0.0f;
    for (int64_t i = 0; i < len; i++)
        if (isfinite(x[i]) && fabsf(x[i]) > m) m = fabsf(x[i]);
    return m;
}

/* Codes of one block into `out` (ceil(len/2) bytes, element 2j in the high nibble of byte j). */
static void encode_block(const bnb4_kind *k, const float *x, int64_t len, float absmax, uint8_t *out) {
    float inv = 1.0f / absmax;
    bool plain = len == 64 && absmax > 0.0f && isfinite(inv);
    for (int64_t i = 0; i < len && plain; i++) plain = isfinite(x[i]);
    if (plain) { /* the common case: what the loop below does, without a branch or call per weight */
        uint8_t c[64];
        k->encode_64(x, inv, c);
        for (int i = 0; i < 32; i++) out[i] = (uint8_t)(c[2 * i] << 4 | c[2 * i + 1]);
        return;
    }
    memset(out, 0, (size_t)(len + 1) / 2);
    for (int64_t i = 0; i < len; i++) {
        float v = x[i];
        uint8_t c;
        if (isnan(v)) c = k->zero;
        else if (isinf(v)) c = v > 0 ? k->plus_one : k->minus_one;
        else if (absmax == 0.0f) c = k->zero;
        else c = k->encode(isinf(inv) ? v / absmax : v * inv); /* subnormal absmax: 1/absmax overflows */
        out[i / 2] |= (uint8_t)(i % 2 ? c : c << 4);
    }
}

static void decode_block(const bnb4_kind *k, const uint8_t *in, int64_t len, float absmax, float *y) {
    for (int64_t i = 0; i < len; i++) {
        uint8_t c = i % 2 ? in[i / 2] & 15 : in[i / 2] >> 4;
        y[i] = k->code[c] * absmax;
    }
}

/* ---- nf4 / fp4: row-wise, per block [f32 absmax][codes], a shorter last block when needed ---- */

static int64_t bnb4_row_bytes(int64_t ncols) {
    if (ncols <= 0 || ncols > INT64_MAX / 2) return -1;
    int64_t full = ncols / BNB_BLOCK, rem = ncols % BNB_BLOCK;
    return full * (4 + BNB_BLOCK / 2) + (rem ? 4 + (rem + 1) / 2 : 0);
}

static int64_t bnb4_tensor_bytes(int64_t ncols, int64_t nrows) {
    int64_t rb = bnb4_row_bytes(ncols);
    if (rb < 0 || nrows < 0 || (nrows && rb > INT64_MAX / nrows)) return -1;
    return rb * nrows;
}

/* fast: plain blocks through the SIMD twin (kernels/simd_bnb4.c: the same absmax and codes) */
static void bnb4_quantize(const bnb4_kind *k, const float *src, void *dst, int64_t nrows, int64_t ncols, bool fast) {
    int64_t rb = bnb4_row_bytes(ncols);
    if (rb < 0) return;
    for (int64_t r = 0; r < nrows; r++) {
        uint8_t *p = (uint8_t *)dst + r * rb;
        for (int64_t c0 = 0; c0 < ncols; c0 += BNB_BLOCK) {
            const float *x = src + r * ncols + c0;
            int64_t len = QL_MIN(BNB_BLOCK, ncols - c0);
            float am;
            if (!(fast && len == BNB_BLOCK && ql_bnb4_block64_fast(&k->thr, x, &am, p + 4))) {
                am = finite_absmax(x, len);
                encode_block(k, x, len, am, p + 4);
            }
            put_f32(p, am);
            p += 4 + (len + 1) / 2;
        }
    }
}

static void bnb4_dequantize(const bnb4_kind *k, const void *src, float *dst, int64_t nrows, int64_t ncols) {
    int64_t rb = bnb4_row_bytes(ncols);
    if (rb < 0) return;
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *p = (const uint8_t *)src + r * rb;
        for (int64_t c0 = 0; c0 < ncols; c0 += BNB_BLOCK) {
            int64_t len = QL_MIN(BNB_BLOCK, ncols - c0);
            decode_block(k, p + 4, len, get_f32(p), dst + r * ncols + c0);
            p += 4 + (len + 1) / 2;
        }
    }
}

/* ---- nf4_dq / fp4_dq: whole tensor ----
 * [offset f32][absmax2: nb2 x f32][qabsmax: nb x u8][codes: nrows x ceil(ncols/2) bytes]
 * nb = nrows * ceil(ncols/64) blocks (row by row), nb2 = ceil(nb/256). */

typedef struct {
    int64_t nb, nb2, row_code_bytes, total;
} dq_layout;

static bool dq_layout_of(int64_t ncols, int64_t nrows, dq_layout *l) {
    if (ncols <= 0 || nrows <= 0 || ncols > INT64_MAX / 2) return false;
    int64_t bpr = (ncols + BNB_BLOCK - 1) / BNB_BLOCK;
    l->row_code_bytes = (ncols + 1) / 2;
    if (bpr > INT64_MAX / nrows || l->row_code_bytes > INT64_MAX / nrows) return false;
    l->nb = bpr * nrows;
    l->nb2 = (l->nb + BNB_BLOCK2 - 1) / BNB_BLOCK2;
    int64_t codes = l->row_code_bytes * nrows;
    if (codes > INT64_MAX - l->nb - 4 * l->nb2 - 4) return false;
    l->total = 4 + 4 * l->nb2 + l->nb + codes;
    return true;
}

static int64_t bnb4_dq_tensor_bytes(int64_t ncols, int64_t nrows) {
    dq_layout l;
    return dq_layout_of(ncols, nrows, &l) ? l.total : -1;
}

static void bnb4_dq_quantize(const bnb4_kind *k, const float *src, void *dst, int64_t nrows, int64_t ncols) {
    dq_layout l;
    if (!dq_layout_of(ncols, nrows, &l)) return;
    uint8_t *base = dst, *a2p = base + 4, *qa = a2p + 4 * l.nb2, *codes = qa + l.nb;
    float *absmax = ql_malloc((size_t)l.nb * sizeof(float));
    /* first level: codes with the exact absmax, as bitsandbytes does before compressing it */
    int64_t b = 0;
    double sum = 0.0;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c0 = 0; c0 < ncols; c0 += BNB_BLOCK, b++) {
            const float *x = src + r * ncols + c0;
            int64_t len = QL_MIN(BNB_BLOCK, ncols - c0);
            absmax[b] = finite_absmax(x, len);
            sum += absmax[b];
            uint8_t tmp[BNB_BLOCK / 2];
            encode_block(k, x, len, absmax[b], tmp);
            /* blocks of a row are contiguous in the row's code bytes (64 is even) */
            memcpy(codes + r * l.row_code_bytes + c0 / 2, tmp, (size_t)(len + 1) / 2);
        }
    /* second level: absmax - mean with the dynamic map, blocks of 256, float32 scale each */
    float offset = (float)(sum / (double)l.nb);
    put_f32(base, offset);
    for (int64_t b2 = 0; b2 < l.nb2; b2++) {
        int64_t i0 = b2 * BNB_BLOCK2, i1 = QL_MIN(l.nb, i0 + BNB_BLOCK2);
        float am2 = 0.0f;
        for (int64_t i = i0; i < i1; i++) am2 = fmaxf(am2, fabsf(absmax[i] - offset));
        put_f32(a2p + 4 * b2, am2);
        float inv = 1.0f / am2;
        for (int64_t i = i0; i < i1; i++) {
            float v = absmax[i] - offset;
            /* 127 is the 0 of the map; a subnormal am2 makes 1/am2 overflow */
            qa[i] = am2 == 0.0f ? 127 : ql_bnb_dynamic_encode(isinf(inv) ? v / am2 : v * inv);
        }
    }
    free(absmax);
}

static void bnb4_dq_dequantize(const bnb4_kind *k, const void *src, float *dst, int64_t nrows,
                               int64_t ncols) {
    dq_layout l;
    if (!dq_layout_of(ncols, nrows, &l)) return;
    const uint8_t *base = src, *a2p = base + 4, *qa = a2p + 4 * l.nb2, *codes = qa + l.nb;
    float offset = get_f32(base);
    int64_t b = 0;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c0 = 0; c0 < ncols; c0 += BNB_BLOCK, b++) {
            float am = g_dyn[qa[b]] * get_f32(a2p + 4 * (b / BNB_BLOCK2)) + offset;
            int64_t len = QL_MIN(BNB_BLOCK, ncols - c0);
            decode_block(k, codes + r * l.row_code_bytes + c0 / 2, len, am, dst + r * ncols + c0);
        }
}

/* ---- registry entries: type ids QL_TYPE_EXT_BASE + 0x80..0x83 (never reuse) ---- */

/* ---- NF4's code grid for error-feedback methods (formats/format_grid.h) ----
 * Per block of 64: [f32 absmax][32 bytes of codes, element 2j in the high nibble] (a shorter last block
 * when the row is not a multiple of 64). A table grid: value = absmax · code[k], the 16 sorted NF4
 * values, exactly as the dequantizer computes it. The block's absmax is fixed from its current
 * (error-updated) weights when GPTQ reaches it, as bitsandbytes computes it: the largest finite |w|.
 * No importance (NF4 has no per-weight scale search). */

static void nf4_grid_set_codes(uint8_t *row, int64_t len, int64_t blk, const uint8_t *codes) {
    uint8_t *q = row + blk * (4 + BNB_BLOCK / 2) + 4;
    for (int64_t i = 0; i + 1 < len; i += 2)
        q[i / 2] = (uint8_t)((codes[i] & 15) << 4 | (codes[i + 1] & 15));
    if (len % 2)
        q[len / 2] = (uint8_t)((codes[len - 1] & 15) << 4);
}

static void nf4_grid_fix(const float *src, int64_t nrows, int64_t len, int64_t blk, uint8_t *dst, int64_t row_bytes,
                         float *a, float *b, float *o) {
    uint8_t codes[BNB_BLOCK];
    for (int64_t r = 0; r < nrows; r++) {
        const float *x = src + r * len;
        float am = 0.0f;
        for (int64_t i = 0; i < len; i++)
            if (isfinite(x[i]) && fabsf(x[i]) > am)
                am = fabsf(x[i]);
        uint8_t *row = dst + r * row_bytes;
        memcpy(row + blk * (4 + BNB_BLOCK / 2), &am, 4);
        const float inv = 1.0f / am; /* provisional codes: this file's own rounding of the block as it stands */
        for (int64_t i = 0; i < len; i++) {
            if (am == 0.0f || isnan(x[i]))
                codes[i] = 7; /* the code of 0 */
            else if (isinf(x[i]))
                codes[i] = x[i] > 0 ? 15 : 0;
            else
                codes[i] = ql_nf4_encode(isinf(inv) ? x[i] / am : x[i] * inv);
        }
        nf4_grid_set_codes(row, len, blk, codes);
        a[r] = am, b[r] = 0.0f, o[r] = 0.0f;
    }
}

static const ql_grid_spec k_nf4_grid = {.kind = QL_GRID_KIND_BLOCK, .kmin = 0, .kmax = 15, .table = ql_nf4_code,
                                        .bits = 4, .fix = nf4_grid_fix, .set_codes = nf4_grid_set_codes};

#define BNB4_ENTRIES(lname, kind, id, tol, desc, grid_, words, words_dq)                                                             \
    BNB4_CUDA_DEFINE(lname)                                                                                  \
    static void lname##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,                  \
                                 const float *imp) {                                                         \
        (void)imp;                                                                                           \
        bnb4_quantize(&kind, src, dst, nrows, ncols, false);                                                 \
    }                                                                                                        \
    void ql_quantize_rows_##lname##_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,          \
                                         const float *imp) {                                                 \
        (void)imp;                                                                                           \
        bnb4_quantize(&kind, src, dst, nrows, ncols, true);                                                  \
    }                                                                                                        \
    static void lname##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {              \
        bnb4_dequantize(&kind, src, dst, nrows, ncols);                                                      \
    }                                                                                                        \
    static void lname##_dq_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,               \
                                    const float *imp) {                                                      \
        (void)imp;                                                                                           \
        bnb4_dq_quantize(&kind, src, dst, nrows, ncols);                                                     \
    }                                                                                                        \
    static void lname##_dq_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {           \
        bnb4_dq_dequantize(&kind, src, dst, nrows, ncols);                                                   \
    }                                                                                                        \
    const ql_format ql_fmt_##lname = {                                                                       \
        .name = #lname,                                                                                      \
        .summary = "bitsandbytes " desc ": 4-bit codes, float32 absmax per 64",                              \
        .type = QL_TYPE_EXT_BASE + (id),                                                                     \
        .family = QL_FAMILY_BNB4,                                                                            \
        .grid = grid_,                                                                                       \
        .label = #lname,                                                                                     \
        .explain = words,                                                                                    \
        .block = BNB_BLOCK,                                                                                  \
        .block_bytes = 4 + BNB_BLOCK / 2,                                                                    \
        .bpw = 4.5,                                                                                          \
        .tolerance = tol,                                                                                    \
        .row_bytes = bnb4_row_bytes,                                                                         \
        .tensor_bytes = bnb4_tensor_bytes,                                                                   \
        .quantize_rows = lname##_quantize,                                                                   \
        .dequantize_rows = lname##_dequantize,                                                               \
        .simd = &(const ql_format_ops){ql_quantize_rows_##lname##_fast, NULL}, /* no dequantize twin */      \
        .cuda = BNB4_CUDA_OPS(lname),                                                                        \
    };                                                                                                       \
    const ql_format ql_fmt_##lname##_dq = {                                                                  \
        .name = #lname "_dq",                                                                                \
        .summary = "bitsandbytes " desc " + double quant: absmax as 8-bit dynamic codes per 256",            \
        .type = QL_TYPE_EXT_BASE + (id) + 1,                                                                 \
        .family = QL_FAMILY_BNB4,                                                                            \
        .grid = QL_GRID_NONE, /* the 8-bit absmax codes of a 256-group cross blocks: not modelled */        \
        .label = #lname "dq",                                                                                \
        .explain = words_dq,                                                                                 \
        .block = BNB_BLOCK,                                                                                  \
        .block_bytes = 1 + BNB_BLOCK / 2,                                                                    \
        .bpw = 4.0 + 8.0 / BNB_BLOCK + 32.0 / (BNB_BLOCK * BNB_BLOCK2),                                      \
        .whole_tensor = true,                                                                                \
        .tolerance = tol,                                                                                    \
        .tensor_bytes = bnb4_dq_tensor_bytes,                                                                \
        .quantize_rows = lname##_dq_quantize,                                                                \
        .dequantize_rows = lname##_dq_dequantize,                                                            \
        .cuda = BNB4_CUDA_OPS(lname##_dq),                                                                   \
    };

BNB4_ENTRIES(nf4, k_nf4, 0x80, 0.12, "NF4", &k_nf4_grid,
             "bitsandbytes NormalFloat4: 16 levels placed at quantiles of a normal distribution, which is what "
             "trained weights look like, with one float scale (absmax) per 64 weights.",
             "NF4 whose per-64 scales are themselves quantized to 8 bits in groups of 256 (QLoRA's double "
             "quantization): 4.13 bits instead of 4.5.")
BNB4_ENTRIES(fp4, k_fp4, 0x82, 0.16, "FP4", QL_GRID_NONE, /* FP4's code table is not sorted by code */
             "bitsandbytes FP4: 4-bit floats (sign, 2 exponent, 1 mantissa bit) times a per-64 absmax.",
             "bitsandbytes FP4 with double-quantized scales.")
