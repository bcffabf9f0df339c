/* fmt_int.c — INTn storage formats: n-bit integer codes with fp16 scales, per group along a row
 * (int{n}_g{g}[_sym][_mse], n-bit zero points unless _sym), per row (int{n}_channel), per tensor
 * (int8_tensor) and per 2-D block (int{n}_b{bs}). Layouts and type ids: docs/formats.md. The scalar
 * functions here are the specification; a fast twin must match them bit for bit. Pure, thread-safe.
 *
 * Rules shared by every INTn entry:
 * - codes are packed tightly, n bits each, LSB first (code i occupies bits i*n .. i*n+n-1 of the
 *   stream, bit 0 = LSB of byte 0); streams are padded with zero bits to a whole byte.
 * - asymmetric: range [min(x,0), max(x,0)], scale = range / (2^n-1), zero = round(-min/scale),
 *   q = clamp(round(x/scale) + zero, 0, 2^n-1), value = (q - zero) * scale.
 * - symmetric: m = the weight of largest magnitude (sign kept), scale = m / -2^(n-1) (so m itself is
 *   exact), q = clamp(round(x/scale) + 2^(n-1), 0, 2^n-1), value = (q - 2^(n-1)) * scale.
 * - round = nearest, ties to even; x/scale is computed as x * (1/scale) with the fp16-rounded scale;
 *   |scale| saturates at 65504 (fp16 max).
 * - bad values: scales come from finite weights only; NaN decodes to 0, +inf / -inf to the largest /
 *   smallest value of the group's grid. Output is always finite. */
#include "formats/fmt_ext.h"

#include <math.h>
#include <string.h>

#include "kernels/ggml_types.h"
#include "kernels/int_quants.h"
#include "kernels/simd.h" /* SIMD twins of int4_g128[_sym] */

/* The CUDA column: kernels/codecs_int_cuda.cu's codecs with this entry's parameters (s, d, r, c, st: source,
 * destination, rows, columns, stream). Empty without nvcc. */
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_int_api.h"
#define INT_CUDA_DEFINE(id, qdev, qemu, ddev, demu)                                                          \
    static ql_status id##_cq(const float *s, void *d, int64_t r, int64_t c, void *st) { return qdev; }       \
    static ql_status id##_cqe(const float *s, void *d, int64_t r, int64_t c) { return qemu; }                \
    static ql_status id##_cd(const void *s, float *d, int64_t r, int64_t c, void *st) { return ddev; }       \
    static ql_status id##_cde(const void *s, float *d, int64_t r, int64_t c) { return demu; }                \
    static const ql_format_cuda_ops id##_cuda = {.quantize_dev = id##_cq, .dequantize_dev = id##_cd,                  \
                                                 .quantize_emulated = id##_cqe,                                       \
                                                 .dequantize_emulated = id##_cde};
#define INT_CUDA_OPS(id) (&id##_cuda)
/* rows: the row codec with (bits, group, sym, mse); a whole tensor as one row; tiles of bs */
#define INT_CUDA_ROWS(id, n, g, sym, mse)                                                                    \
    INT_CUDA_DEFINE(id, ql_cuda_int_quantize_dev(s, d, r, c, st, n, g, sym, mse),                            \
                    ql_cuda_int_quantize_emulated(s, d, r, c, n, g, sym, mse),                               \
                    ql_cuda_int_dequantize_dev(s, d, r, c, st, n, g, sym),                                   \
                    ql_cuda_int_dequantize_emulated(s, d, r, c, n, g, sym))
#define INT_CUDA_TENSOR(id, n)                                                                               \
    INT_CUDA_DEFINE(id, ql_cuda_int_quantize_dev(s, d, 1, r * c, st, n, 0, true, false),                     \
                    ql_cuda_int_quantize_emulated(s, d, 1, r * c, n, 0, true, false),                        \
                    ql_cuda_int_dequantize_dev(s, d, 1, r * c, st, n, 0, true),                              \
                    ql_cuda_int_dequantize_emulated(s, d, 1, r * c, n, 0, true))
#define INT_CUDA_TILES(id, n, bs)                                                                            \
    INT_CUDA_DEFINE(id, ql_cuda_int_tiles_quantize_dev(s, d, r, c, st, n, bs),                               \
                    ql_cuda_int_tiles_quantize_emulated(s, d, r, c, n, bs),                                  \
                    ql_cuda_int_tiles_dequantize_dev(s, d, r, c, st, n, bs),                                 \
                    ql_cuda_int_tiles_dequantize_emulated(s, d, r, c, n, bs))
#else
#define INT_CUDA_ROWS(id, n, g, sym, mse)
#define INT_CUDA_TENSOR(id, n)
#define INT_CUDA_TILES(id, n, bs)
#define INT_CUDA_OPS(id) NULL
#endif

static int64_t rows_total(int64_t row_bytes, int64_t nrows) {
    return row_bytes < 0 ? -1 : ql_int_mul_checked(row_bytes, nrows);
}

/* ---- 2-D blocks (and the whole tensor as one block): symmetric, fp16 scale per bs x bs block ----
 * Layout: [fp16 scales, block grid row-major][codes of the whole tensor, row-major, one bit stream]. */

static int64_t block2d_bytes(int64_t ncols, int64_t nrows, int bits, int64_t bs) {
    if (ncols <= 0 || nrows <= 0) return -1;
    int64_t nbr = (nrows + bs - 1) / bs, nbc = (ncols + bs - 1) / bs;
    int64_t nscales = ql_int_mul_checked(nbr, nbc), n = ql_int_mul_checked(ncols, nrows);
    if (nscales < 0 || n < 0 || n > INT64_MAX / 8) return -1;
    return ql_int_add_checked(ql_int_mul_checked(nscales, 2), ql_bits_to_bytes(n * bits));
}

static void block2d_quantize(const float *src, uint8_t *dst, int64_t nrows, int64_t ncols, int bits,
                             int64_t bs) {
    int64_t total = block2d_bytes(ncols, nrows, bits, bs);
    if (total < 0) return;
    memset(dst, 0, (size_t)total);
    int64_t nbr = (nrows + bs - 1) / bs, nbc = (ncols + bs - 1) / bs;
    uint8_t *codes = dst + 2 * nbr * nbc;
    int maxq = (1 << bits) - 1;
    for (int64_t br = 0; br < nbr; br++)
        for (int64_t bc = 0; bc < nbc; bc++) {
            int64_t r1 = QL_MIN(nrows, (br + 1) * bs), c1 = QL_MIN(ncols, (bc + 1) * bs);
            float m = 0.0f;
            for (int64_t r = br * bs; r < r1; r++)
                for (int64_t c = bc * bs; c < c1; c++) {
                    float v = src[r * ncols + c];
                    if (isfinite(v) && fabsf(v) > fabsf(m)) m = v;
                }
            ql_int_group_param gp = ql_int_params_for(1.0f, 0.0f, 0.0f, m, bits, true);
            ql_put_f16le(dst + 2 * (br * nbc + bc), gp.scale_h);
            float id = gp.scale != 0.0f ? 1.0f / gp.scale : 0.0f;
            for (int64_t r = br * bs; r < r1; r++)
                for (int64_t c = bc * bs; c < c1; c++)
                    ql_bits_or(codes, (r * ncols + c) * bits, bits,
                             (unsigned)ql_int_code(src[r * ncols + c], id, gp.zero, maxq));
        }
}

static void block2d_dequantize(const uint8_t *src, float *dst, int64_t nrows, int64_t ncols, int bits,
                               int64_t bs) {
    if (block2d_bytes(ncols, nrows, bits, bs) < 0) return;
    int64_t nbr = (nrows + bs - 1) / bs, nbc = (ncols + bs - 1) / bs;
    const uint8_t *codes = src + 2 * nbr * nbc;
    int half = 1 << (bits - 1);
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c = 0; c < ncols; c++) {
            float s = ql_fp16_to_fp32(ql_get_f16le(src + 2 * ((r / bs) * nbc + c / bs)));
            dst[r * ncols + c] = (float)((int)ql_bits_get(codes, (r * ncols + c) * bits, bits) - half) * s;
        }
}

/* ---- registry entries ----
 * Type ids (never reuse): QL_TYPE_EXT_BASE +
 *   0x00..0x5F  int{n}_g{g}{sfx}: (bit_index * 4 + group_index) * 4 + sym + 2 * mse
 *   0x60..0x65  int{n}_channel: 0x60 + bit_index
 *   0x68..0x6D  int{n}_tensor:  0x68 + bit_index
 *   0x70..0x7B  int{n}_b{bs}:   0x70 + bit_index * 2 + (bs == 128)
 * with bit_index 0..5 for n = 2,3,4,5,6,8 and group_index 0..3 for g = 32,64,128,256. */
#define BIT_INDEX(n) ((n) == 8 ? 5 : (n) - 2)
#define GROUP_INDEX(g) ((g) == 32 ? 0 : (g) == 64 ? 1 : (g) == 128 ? 2 : 3)
/* RMSE / RMS bound for N(0,1) rows of 4096 (measured worst case over groups and variants, + margin) */
#define INT_TOL(n)                                                                                           \
    ((n) == 2 ? 0.60 : (n) == 3 ? 0.28 : (n) == 4 ? 0.14 : (n) == 5 ? 0.07 : (n) == 6 ? 0.035 : 0.009)

/* the traits' short label: "i4g128" + s (symmetric) + m (MSE clipping) */
#define INT_SFX_00 ""
#define INT_SFX_10 "s"
#define INT_SFX_01 "m"
#define INT_SFX_11 "sm"
#define INT_SFX_(sym, mse) INT_SFX_##sym##mse
#define INT_SFX(sym, mse) INT_SFX_(sym, mse)
#define INT_GRID(n, g, sym_, mse_)                                                                           \
    (&(const ql_grid_spec){.kind = QL_GRID_KIND_INT, .bits = n, .group = g, .sym = sym_, .mse = mse_})
#define INT_GROUP_WORDS                                                                                      \
    "Integer groups: each group of g weights along a row gets an fp16 scale (and, unless _sym, a zero "      \
    "point), and each weight an n-bit integer. Smaller groups follow the weights more closely and cost "     \
    "more bits; _mse searches a clipped range per group instead of using the extremes. GPTQ and AWQ write "  \
    "these (int4_g128 is their classic setting)."

#define INT_GROUP_ENTRY(n, g, sfx, sym, mse, desc)                                                           \
    INT_CUDA_ROWS(int##n##_g##g##sfx, n, g, sym, mse)                                                        \
    static void int##n##_g##g##sfx##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,     \
                                               const float *imp) {                                           \
        ql_int_quantize_rows_ref(src, dst, nrows, ncols, imp, n, g, sym, mse);                               \
    }                                                                                                        \
    static void int##n##_g##g##sfx##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) { \
        ql_int_dequantize_rows_ref(src, dst, nrows, ncols, n, g, sym);                                       \
    }                                                                                                        \
    static int64_t int##n##_g##g##sfx##_row_bytes(int64_t ncols) {                                           \
        return ql_int_row_bytes(ncols, n, g, sym);                                                           \
    }                                                                                                        \
    static int64_t int##n##_g##g##sfx##_tensor_bytes(int64_t ncols, int64_t nrows) {                         \
        return rows_total(ql_int_row_bytes(ncols, n, g, sym), nrows);                                        \
    }                                                                                                        \
    const ql_format ql_fmt_int##n##_g##g##sfx = {                                                            \
        .name = "int" #n "_g" #g #sfx,                                                                       \
        .summary = "INT" #n ", groups of " #g ": " desc,                                                     \
        .type = QL_TYPE_EXT_BASE + (BIT_INDEX(n) * 4 + GROUP_INDEX(g)) * 4 + (sym) + 2 * (mse),              \
        .family = QL_FAMILY_INT,                                                                             \
        .grid = INT_GRID(n, g, sym, mse),                                                                    \
        .label = "i" #n "g" #g INT_SFX(sym, mse),                                                            \
        .explain = INT_GROUP_WORDS,                                                                          \
        .block = g,                                                                                          \
        .block_bytes = (16 + ((sym) ? 0 : (n)) + (g) * (n) + 7) / 8,                                         \
        .bpw = (n) + 16.0 / (g) + ((sym) ? 0.0 : (double)(n) / (g)),                                         \
        .uses_importance = (mse),                                                                            \
        .tolerance = INT_TOL(n),                                                                             \
        .row_bytes = int##n##_g##g##sfx##_row_bytes,                                                         \
        .tensor_bytes = int##n##_g##g##sfx##_tensor_bytes,                                                   \
        .quantize_rows = int##n##_g##g##sfx##_quantize,                                                      \
        .dequantize_rows = int##n##_g##g##sfx##_dequantize,                                                  \
        /* both NULL for most variants: then the column is empty (test_traits, formats --json) */                \
        .simd = &(const ql_format_ops){QL_INT_QUANT_FAST(n, g, sym, mse), QL_INT_DEQUANT_FAST(n, g, sym, mse)}, \
        .cuda = INT_CUDA_OPS(int##n##_g##g##sfx),                                                            \
    };

QL_FMT_INT_FAMILY(INT_GROUP_ENTRY)

/* per output row, symmetric (LLM.int8()'s vector-wise layout with an fp16 scale) */
#define INT_CHANNEL_ENTRY(n, tol, words)                                                                            \
    INT_CUDA_ROWS(int##n##_channel, n, 0, true, false)                                                       \
    static void int##n##_channel_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,         \
                                          const float *imp) {                                                \
        (void)imp;                                                                                           \
        ql_int_quantize_rows_ref(src, dst, nrows, ncols, NULL, n, 0, true, false);                           \
    }                                                                                                        \
    static void int##n##_channel_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {     \
        ql_int_dequantize_rows_ref(src, dst, nrows, ncols, n, 0, true);                                      \
    }                                                                                                        \
    static int64_t int##n##_channel_row_bytes(int64_t ncols) { return ql_int_row_bytes(ncols, n, 0, true); } \
    static int64_t int##n##_channel_tensor_bytes(int64_t ncols, int64_t nrows) {                             \
        return rows_total(ql_int_row_bytes(ncols, n, 0, true), nrows);                                       \
    }                                                                                                        \
    const ql_format ql_fmt_int##n##_channel = {                                                              \
        .name = "int" #n "_channel",                                                                         \
        .summary = "INT" #n " per output row: fp16 scale per row, symmetric",                                \
        .type = QL_TYPE_EXT_BASE + 0x60 + BIT_INDEX(n),                                                      \
        .family = QL_FAMILY_INT,                                                                             \
        .grid = INT_GRID(n, 0, 1, 0),                                                                        \
        .label = "i" #n "c",                                                                                 \
        .explain = words,                                                                                    \
        .block = 1,                                                                                          \
        .block_bytes = 1,                                                                                    \
        .bpw = (n) + 16.0 / 4096,                                                                            \
        .tolerance = tol,                                                                                    \
        .row_bytes = int##n##_channel_row_bytes,                                                             \
        .tensor_bytes = int##n##_channel_tensor_bytes,                                                       \
        .quantize_rows = int##n##_channel_quantize,                                                          \
        .dequantize_rows = int##n##_channel_dequantize,                                                      \
        .simd = (n) == 8 ? &(const ql_format_ops){ql_quantize_rows_int8_channel_fast,                       \
                                                  ql_dequantize_rows_int8_channel_fast} : NULL,              \
        .cuda = INT_CUDA_OPS(int##n##_channel),                                                              \
    };

INT_CHANNEL_ENTRY(4, 0.18,
                  "INT4 with one scale per output row: 16 levels shared by a whole row, so large and small "
                  "weights in a row compete for them.")
INT_CHANNEL_ENTRY(8, 0.012, "INT8 with one scale per output row (per channel): the standard W8 of GPU inference "
                            "stacks.")

/* one fp16 scale for the whole tensor: the tensor is one symmetric group (layout [scale][codes]) */
static int64_t int8_tensor_tensor_bytes(int64_t ncols, int64_t nrows) {
    int64_t n = ql_int_mul_checked(ncols, nrows);
    return n <= 0 ? -1 : ql_int_row_bytes(n, 8, 0, true);
}
static void int8_tensor_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,
                                 const float *imp) {
    (void)imp;
    ql_int_quantize_rows_ref(src, dst, 1, nrows * ncols, NULL, 8, 0, true, false);
}
static void int8_tensor_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {
    ql_int_dequantize_rows_ref(src, dst, 1, nrows * ncols, 8, 0, true);
}
INT_CUDA_TENSOR(int8_tensor, 8)
const ql_format ql_fmt_int8_tensor = {
    .name = "int8_tensor",
    .summary = "INT8 with one fp16 scale for the whole tensor, symmetric",
    .type = QL_TYPE_EXT_BASE + 0x68 + BIT_INDEX(8),
    .family = QL_FAMILY_INT,
    .grid = QL_GRID_NONE, /* one scale for the whole tensor: no per-block scale to fix */
    .label = "i8t",
    .explain = "Plain INT8 with a single scale for the whole matrix: the simplest 8-bit scheme. One outlier "
               "weight stretches the scale for everyone.",
    .block = 1,
    .block_bytes = 1,
    .bpw = 8.0,
    .whole_tensor = true,
    .tolerance = 0.014,
    .tensor_bytes = int8_tensor_tensor_bytes,
    .quantize_rows = int8_tensor_quantize,
    .dequantize_rows = int8_tensor_dequantize,
    .cuda = INT_CUDA_OPS(int8_tensor),
};

#define INT_BLOCK2D_ENTRY(n, bs, tol)                                                                        \
    INT_CUDA_TILES(int##n##_b##bs, n, bs)                                                                    \
    static int64_t int##n##_b##bs##_tensor_bytes(int64_t ncols, int64_t nrows) {                             \
        return block2d_bytes(ncols, nrows, n, bs);                                                           \
    }                                                                                                        \
    static void int##n##_b##bs##_quantize(const float *src, void *dst, int64_t nrows, int64_t ncols,         \
                                          const float *imp) {                                                \
        (void)imp;                                                                                           \
        block2d_quantize(src, dst, nrows, ncols, n, bs);                                                     \
    }                                                                                                        \
    static void int##n##_b##bs##_dequantize(const void *src, float *dst, int64_t nrows, int64_t ncols) {     \
        block2d_dequantize(src, dst, nrows, ncols, n, bs);                                                   \
    }                                                                                                        \
    const ql_format ql_fmt_int##n##_b##bs = {                                                                \
        .name = "int" #n "_b" #bs,                                                                           \
        .summary = "INT" #n ", fp16 scale per " #bs "x" #bs " block, symmetric",                             \
        .type = QL_TYPE_EXT_BASE + 0x70 + BIT_INDEX(n) * 2 + ((bs) == 128),                                  \
        .family = QL_FAMILY_INT,                                                                             \
        .grid = QL_GRID_NONE, /* 2-D tiles cross rows: a column-at-a-time method cannot fix them */         \
        .label = "i" #n "b" #bs,                                                                             \
        .explain = "INT" #n " with one scale per square tile of the matrix (64x64 or 128x128).",             \
        .block = bs,                                                                                         \
        .block_bytes = ((bs) * (bs) * (n)) / 8 + 2,                                                          \
        .bpw = (n) + 16.0 / ((bs) * (bs)),                                                                   \
        .whole_tensor = true,                                                                                \
        .tolerance = tol,                                                                                    \
        .tensor_bytes = int##n##_b##bs##_tensor_bytes,                                                       \
        .quantize_rows = int##n##_b##bs##_quantize,                                                          \
        .dequantize_rows = int##n##_b##bs##_dequantize,                                                      \
        .cuda = INT_CUDA_OPS(int##n##_b##bs),                                                                \
    };

INT_BLOCK2D_ENTRY(4, 64, 0.17)
INT_BLOCK2D_ENTRY(4, 128, 0.17)
INT_BLOCK2D_ENTRY(8, 64, 0.011)
INT_BLOCK2D_ENTRY(8, 128, 0.011)

/* ---- parameters of the row-wise entries, for methods that write INTn codes themselves ---- */

bool ql_int_format_params(const ql_format *f, int *bits, int *group, bool *sym, bool *mse) {
    const ql_grid_spec *g = f ? f->grid : NULL;
    if (!g || g->kind != QL_GRID_KIND_INT) return false;
    if (bits) *bits = g->bits;
    if (group) *group = g->group;
    if (sym) *sym = g->sym;
    if (mse) *mse = g->mse;
    return true;
}
