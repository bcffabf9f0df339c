/* format_grid.c — grid views of the formats GPTQ can write: ggml's legacy, K and IQ4 block types
 * (scales fixed by the registry entry's own quantizer, codes packed in ggml's bit layout), the
 * row-wise INTn formats of fmt_int.c, and bitsandbytes' NF4 (fmt_nf4.c). Each ggml entry has a parser
 * (block bytes -> (a, b, o) per sub-block, with the dequantizer's arithmetic) and a packer (codes ->
 * the block's code fields). Pure, thread-safe. */
#include "formats/format_grid.h"

#include <math.h>
#include <string.h>

#include "formats/fmt_ext.h"
#include "kernels/ggml_types.h"

#define QK_K 256

static const float k_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static inline float f16_at(const uint8_t *p) { return ql_fp16_to_fp32((uint16_t)(p[0] | (p[1] << 8))); }

/* ---- parsers: (a, b, o) of every sub-block, s-th at [s * ld] ---- */

typedef void (*parse_fn)(const uint8_t *blk, float *a, float *b, float *o, int64_t ld);
typedef void (*pack_fn)(uint8_t *blk, const uint8_t *c);

static void parse_q4_0(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = -8.0f;
}
static void parse_q4_1(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = f16_at(x + 2), o[0] = 0.0f;
}
static void parse_q5_0(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = -16.0f;
}
static void parse_q8_0(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = -128.0f; /* code = q + 128 */
}
static void parse_iq4_nl(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    (void)ld;
    a[0] = f16_at(x), b[0] = 0.0f, o[0] = 0.0f;
}

static void parse_q2_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x + 80), dmin = f16_at(x + 82);
    for (int s = 0; s < 16; s++) {
        uint8_t sc = x[s];
        float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
        a[s * ld] = dl, b[s * ld] = -ml, o[s * ld] = 0.0f;
    }
}

static int q3_k_scale(const uint8_t *scales, int j) {
    int sc = j < 8 ? scales[j] & 0xF : scales[j - 8] >> 4;
    return (sc | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}
static void parse_q3_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x + 108);
    for (int s = 0; s < 16; s++)
        a[s * ld] = d * q3_k_scale(x + 96, s), b[s * ld] = 0.0f, o[s * ld] = -4.0f;
}

static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}
static void parse_q45_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x), dmin = f16_at(x + 2);
    for (int s = 0; s < 8; s++) {
        uint8_t sc, m;
        scale_min_k4(s, x + 4, &sc, &m);
        a[s * ld] = d * sc, b[s * ld] = -(dmin * m), o[s * ld] = 0.0f;
    }
}
static void parse_q6_k(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x + 208);
    for (int s = 0; s < 16; s++)
        a[s * ld] = d * (int8_t)x[192 + s], b[s * ld] = 0.0f, o[s * ld] = -32.0f;
}
static void parse_iq4_xs(const uint8_t *x, float *a, float *b, float *o, int64_t ld) {
    const float d = f16_at(x);
    const unsigned sh = (unsigned)(x[2] | (x[3] << 8));
    for (int ib = 0; ib < 8; ib++) {
        int ls = ((x[4 + ib / 2] >> 4 * (ib % 2)) & 0xf) | (((sh >> 2 * ib) & 3) << 4);
        a[ib * ld] = d * (ls - 32), b[ib * ld] = 0.0f, o[ib * ld] = 0.0f;
    }
}

/* ---- packers: codes [block] -> code fields (every code bit rewritten) ---- */

static void pack_nibbles32(uint8_t *qs, const uint8_t *c) {
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)((c[j] & 0xF) | ((c[j + 16] & 0xF) << 4));
}
static void pack_q4_0(uint8_t *x, const uint8_t *c) { pack_nibbles32(x + 2, c); }
static void pack_q4_1(uint8_t *x, const uint8_t *c) { pack_nibbles32(x + 4, c); }
static void pack_q5(uint8_t *qh, uint8_t *qs, const uint8_t *c) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++)
        h |= (uint32_t)((c[i] >> 4) & 1) << i;
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
    pack_nibbles32(qs, c);
}
static void pack_q5_0(uint8_t *x, const uint8_t *c) { pack_q5(x + 2, x + 6, c); }
static void pack_q5_1(uint8_t *x, const uint8_t *c) { pack_q5(x + 4, x + 8, c); }
static void pack_q8_0(uint8_t *x, const uint8_t *c) {
    for (int j = 0; j < 32; j++)
        x[2 + j] = (uint8_t)(int8_t)((int)c[j] - 128);
}
static void pack_2bit256(uint8_t *qs, const uint8_t *c) { /* Q2_K / Q3_K low bits */
    memset(qs, 0, 64);
    for (int e = 0; e < QK_K; e++)
        qs[(e / 128) * 32 + e % 32] |= (uint8_t)((c[e] & 3) << (2 * ((e % 128) / 32)));
}
static void pack_q2_k(uint8_t *x, const uint8_t *c) { pack_2bit256(x + 16, c); }
static void pack_q3_k(uint8_t *x, const uint8_t *c) {
    memset(x, 0, 32);
    for (int e = 0; e < QK_K; e++)
        x[e % 32] |= (uint8_t)(((c[e] >> 2) & 1) << (e / 32));
    pack_2bit256(x + 32, c);
}
static void pack_q4_k(uint8_t *x, const uint8_t *c) {
    uint8_t *qs = x + 16;
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++)
            qs[32 * k + l] = (uint8_t)((c[64 * k + l] & 0xF) | ((c[64 * k + 32 + l] & 0xF) << 4));
}
static void pack_q5_k(uint8_t *x, const uint8_t *c) {
    uint8_t *qh = x + 16, *ql = x + 48;
    memset(qh, 0, 32);
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) {
            uint8_t lo = c[64 * k + l], hi = c[64 * k + 32 + l];
            ql[32 * k + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
            qh[l] |= (uint8_t)(((lo >> 4) & 1) << (2 * k) | ((hi >> 4) & 1) << (2 * k + 1));
        }
}
static void pack_q6_k(uint8_t *x, const uint8_t *c) {
    uint8_t *ql = x, *qh = x + 128;
    for (int h = 0; h < 2; h++) {
        const uint8_t *L = c + 128 * h;
        for (int l = 0; l < 32; l++) {
            ql[64 * h + l] = (uint8_t)((L[l] & 0xF) | ((L[l + 64] & 0xF) << 4));
            ql[64 * h + l + 32] = (uint8_t)((L[l + 32] & 0xF) | ((L[l + 96] & 0xF) << 4));
            qh[32 * h + l] = (uint8_t)(((L[l] >> 4) & 3) | (((L[l + 32] >> 4) & 3) << 2) |
                                       (((L[l + 64] >> 4) & 3) << 4) | (((L[l + 96] >> 4) & 3) << 6));
        }
    }
}
static void pack_iq4_nl(uint8_t *x, const uint8_t *c) { pack_nibbles32(x + 2, c); }
static void pack_iq4_xs(uint8_t *x, const uint8_t *c) {
    for (int ib = 0; ib < 8; ib++)
        pack_nibbles32(x + 8 + 16 * ib, c + 32 * ib);
}

typedef struct {
    uint32_t type;
    int block, sub, kmin, kmax;
    bool table;
    parse_fn parse;
    pack_fn pack;
} ggml_grid;

static const ggml_grid g_ggml[] = {
    {QL_TYPE_Q4_0, 32, 32, 0, 15, false, parse_q4_0, pack_q4_0},
    {QL_TYPE_Q4_1, 32, 32, 0, 15, false, parse_q4_1, pack_q4_1},
    {QL_TYPE_Q5_0, 32, 32, 0, 31, false, parse_q5_0, pack_q5_0},
    {QL_TYPE_Q5_1, 32, 32, 0, 31, false, parse_q4_1, pack_q5_1},  /* d, m first, like Q4_1 */
    {QL_TYPE_Q8_0, 32, 32, 1, 255, false, parse_q8_0, pack_q8_0}, /* q in [-127, 127] as ggml writes */
    {QL_TYPE_Q2_K, QK_K, 16, 0, 3, false, parse_q2_k, pack_q2_k},
    {QL_TYPE_Q3_K, QK_K, 16, 0, 7, false, parse_q3_k, pack_q3_k},
    {QL_TYPE_Q4_K, QK_K, 32, 0, 15, false, parse_q45_k, pack_q4_k},
    {QL_TYPE_Q5_K, QK_K, 32, 0, 31, false, parse_q45_k, pack_q5_k},
    {QL_TYPE_Q6_K, QK_K, 16, 0, 63, false, parse_q6_k, pack_q6_k},
    {QL_TYPE_IQ4_NL, 32, 32, 0, 15, true, parse_iq4_nl, pack_iq4_nl},
    {QL_TYPE_IQ4_XS, QK_K, 32, 0, 15, true, parse_iq4_xs, pack_iq4_xs},
};

static const ggml_grid *ggml_grid_of(uint32_t type) {
    for (size_t i = 0; i < QL_ARRAY_LEN(g_ggml); i++)
        if (g_ggml[i].type == type)
            return &g_ggml[i];
    return NULL;
}

/* ---- NF4 (fmt_nf4.c): per block of 64 [f32 absmax][32 bytes of codes, element 2j in the high nibble]
 * (a shorter last block when the row is not a multiple of 64). A table grid: value = absmax · code[k],
 * the 16 sorted NF4 values, exactly as the dequantizer computes it. The block's absmax is fixed from
 * its current (error-updated) weights when GPTQ reaches it, as bitsandbytes computes it: the largest
 * finite |w|. No importance (NF4 has no per-weight scale search). ---- */

extern const ql_format ql_fmt_nf4;
#define NF4_BLOCK 64
#define NF4_BLOCK_BYTES (4 + NF4_BLOCK / 2)

static bool is_nf4(const ql_grid *g) { return g->f == &ql_fmt_nf4; }

static void nf4_init(ql_grid *g) {
    g->block = NF4_BLOCK;
    g->sub = 0;
    g->kmin = 0;
    g->kmax = 15;
    g->table = ql_nf4_code;
    g->block_bytes = NF4_BLOCK_BYTES;
    g->bits = 4;
}

static void nf4_set_codes(uint8_t *row, int64_t len, int64_t blk, const uint8_t *codes) {
    uint8_t *q = row + blk * NF4_BLOCK_BYTES + 4;
    for (int64_t i = 0; i + 1 < len; i += 2)
        q[i / 2] = (uint8_t)((codes[i] & 15) << 4 | (codes[i + 1] & 15));
    if (len % 2)
        q[len / 2] = (uint8_t)((codes[len - 1] & 15) << 4);
}

static void nf4_fix(const float *src, int64_t nrows, int64_t len, int64_t blk, uint8_t *dst, int64_t row_bytes,
                    float *a, float *b, float *o) {
    uint8_t codes[NF4_BLOCK];
    for (int64_t r = 0; r < nrows; r++) {
        const float *x = src + r * len;
        float am = 0.0f;
        for (int64_t i = 0; i < len; i++)
            if (isfinite(x[i]) && fabsf(x[i]) > am)
                am = fabsf(x[i]);
        uint8_t *row = dst + r * row_bytes;
        memcpy(row + blk * NF4_BLOCK_BYTES, &am, 4);
        const float inv = 1.0f / am; /* provisional codes: fmt_nf4.c's own rounding of the block as it stands */
        for (int64_t i = 0; i < len; i++) {
            if (am == 0.0f || isnan(x[i]))
                codes[i] = 7; /* the code of 0 */
            else if (isinf(x[i]))
                codes[i] = x[i] > 0 ? 15 : 0;
            else
                codes[i] = ql_nf4_encode(isinf(inv) ? x[i] / am : x[i] * inv);
        }
        nf4_set_codes(row, len, blk, codes);
        a[r] = am, b[r] = 0.0f, o[r] = 0.0f;
    }
}

bool ql_grid_init(ql_grid *g, const ql_format *f) {
    memset(g, 0, sizeof *g);
    g->f = f;
    if (f == &ql_fmt_nf4) {
        nf4_init(g);
        return true;
    }
    int bits, group;
    bool sym, mse;
    if (f->type < QL_TYPE_EXT_BASE) {
        const ggml_grid *e = ggml_grid_of(f->type);
        if (!e || f->whole_tensor) {
            ql_fail(QL_ERR_UNSUPPORTED, "format %s has no code grid for error-feedback methods", f->name);
            return false;
        }
        g->type = e->type;
        g->block = e->block;
        g->sub = e->sub;
        g->kmin = e->kmin;
        g->kmax = e->kmax;
        g->table = e->table ? k_iq4nl : NULL;
        g->block_bytes = f->block_bytes;
        return true;
    }
    if (ql_int_format_params(f, &bits, &group, &sym, &mse) && !f->whole_tensor) {
        g->bits = bits;
        g->group = group;
        g->sym = sym;
        g->mse = mse;
        g->block = group;
        g->sub = 0;
        g->kmin = 0;
        g->kmax = (1 << bits) - 1;
        return true;
    }
    ql_fail(QL_ERR_UNSUPPORTED, "format %s has no code grid for error-feedback methods", f->name);
    return false;
}

int64_t ql_grid_nblocks(const ql_grid *g, int64_t ncols) {
    return g->block > 0 ? (ncols + g->block - 1) / g->block : 1;
}

int64_t ql_grid_block_cols(const ql_grid *g, int64_t ncols, int64_t blk) {
    if (g->block <= 0)
        return ncols;
    return QL_MIN((int64_t)g->block, ncols - blk * g->block);
}

int64_t ql_grid_scratch_bytes(const ql_grid *g, int64_t ncols) {
    if (g->type || is_nf4(g))
        return 0;
    int64_t len = g->block > 0 ? QL_MIN((int64_t)g->block, ncols) : ncols;
    return ql_int_row_bytes(len, g->bits, (int)len, g->sym);
}

/* ---- INTn row layout (fmt_int.c): [fp16 scale per group][zeros, bits each][codes, bits each] ---- */

static inline void put_bits(uint8_t *buf, int64_t pos, int n, unsigned v) {
    int64_t byte = pos >> 3;
    int sh = (int)(pos & 7);
    unsigned mask = (1u << n) - 1;
    v &= mask;
    buf[byte] = (uint8_t)((buf[byte] & ~(mask << sh)) | (v << sh));
    if (sh + n > 8)
        buf[byte + 1] = (uint8_t)((buf[byte + 1] & ~(mask >> (8 - sh))) | (v >> (8 - sh)));
}


static void int_layout(const ql_grid *g, int64_t ncols, int64_t *zeros_off, int64_t *codes_off) {
    int64_t ng = ql_grid_nblocks(g, ncols);
    *zeros_off = 2 * ng;
    *codes_off = 2 * ng + (g->sym ? 0 : (ng * g->bits + 7) / 8);
}

void ql_grid_fix(const ql_grid *g, const float *src, int64_t nrows, int64_t ncols, int64_t blk,
                 const float *imp, uint8_t *dst, int64_t row_bytes, float *a, float *b, float *o, int64_t ld,
                 void *scratch) {
    int64_t len = ql_grid_block_cols(g, ncols, blk);
    if (is_nf4(g)) {
        (void)imp, (void)ld, (void)scratch;
        nf4_fix(src, nrows, len, blk, dst, row_bytes, a, b, o);
        return;
    }
    if (g->type) {
        const ggml_grid *e = ggml_grid_of(g->type);
        /* the registry's SIMD twin when there is one: bit-identical to the reference, several times faster */
        ql_quantize_fn quant = g->f->quantize_rows_fast ? g->f->quantize_rows_fast : g->f->quantize_rows;
        for (int64_t r = 0; r < nrows; r++) {
            uint8_t *x = dst + r * row_bytes + blk * g->block_bytes;
            quant(src + r * len, x, 1, len, imp);
            e->parse(x, a + r, b + r, o + r, ld);
        }
        return;
    }
    int64_t zoff, coff;
    int_layout(g, ncols, &zoff, &coff);
    uint8_t *tmp = scratch;
    int half = 1 << (g->bits - 1);
    for (int64_t r = 0; r < nrows; r++) {
        uint8_t *row = dst + r * row_bytes;
        ql_int_quantize_rows_ref(src + r * len, tmp, 1, len, imp, g->bits, (int)len, g->sym, g->mse);
        row[2 * blk] = tmp[0];
        row[2 * blk + 1] = tmp[1];
        int zero = half;
        const uint8_t *tcodes = tmp + 2;
        if (!g->sym) {
            zero = (int)ql_bits_get(tmp + 2, 0, g->bits);
            put_bits(row + zoff, blk * g->bits, g->bits, (unsigned)zero);
            tcodes += (g->bits + 7) / 8;
        }
        int64_t c0 = g->block > 0 ? blk * g->block : 0;
        for (int64_t i = 0; i < len; i++)
            put_bits(row + coff, (c0 + i) * g->bits, g->bits, ql_bits_get(tcodes, i * g->bits, g->bits));
        a[r] = f16_at(tmp), b[r] = 0.0f, o[r] = (float)-zero;
    }
}

void ql_grid_set_codes(const ql_grid *g, uint8_t *row, int64_t ncols, int64_t blk, const uint8_t *codes) {
    if (is_nf4(g)) {
        nf4_set_codes(row, ql_grid_block_cols(g, ncols, blk), blk, codes);
        return;
    }
    if (g->type) {
        ggml_grid_of(g->type)->pack(row + blk * g->block_bytes, codes);
        return;
    }
    int64_t zoff, coff, len = ql_grid_block_cols(g, ncols, blk);
    int_layout(g, ncols, &zoff, &coff);
    int64_t c0 = g->block > 0 ? blk * g->block : 0, pos = c0 * g->bits;
    if (pos % 8) { /* groups start on a byte whenever group·bits is a multiple of 8: always, in practice */
        for (int64_t i = 0; i < len; i++)
            put_bits(row + coff, (c0 + i) * g->bits, g->bits, codes[i]);
        return;
    }
    uint8_t *out = row + coff + pos / 8;
    uint32_t acc = 0, mask = (1u << g->bits) - 1;
    int nb = 0;
    for (int64_t i = 0; i < len; i++) {
        acc |= (codes[i] & mask) << nb;
        nb += g->bits;
        while (nb >= 8) {
            *out++ = (uint8_t)acc;
            acc >>= 8;
            nb -= 8;
        }
    }
    if (nb)
        *out = (uint8_t)((*out & ~((1u << nb) - 1)) | acc); /* keep the next group's bits */
}

int ql_grid_nearest(const ql_grid *g, float a, float b, float o, float x) {
    if (g->table) { /* the code whose value is nearest: count the midpoints below x/a (a < 0 mirrors both) */
        float y2 = 2.0f * (x / a);
        int k = 0;
        for (int i = 1; i < 16; i++)
            k += y2 >= g->table[i - 1] + g->table[i];
        return k;
    }
    float v = (x - b) / a - o;
    v = v > (float)g->kmin ? v : (float)g->kmin; /* NaN (a == 0) lands on kmin */
    v = v < (float)g->kmax ? v : (float)g->kmax;
    return (int)nearbyintf(v);
}
