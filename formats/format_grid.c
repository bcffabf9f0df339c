/* format_grid.c — the generic driver of format grids (format_grid.h): block grids whose hooks come
 * from the format's traits entry (ql_format.grid: a parser + packer after the entry's own quantizer for
 * ggml's types in fmt_ggml.c, or fix + set_codes hooks for NF4 in fmt_nf4.c), and the row-wise INTn
 * grid (fmt_int.c's layout), whose code is here because every INTn entry shares it. Pure, thread-safe. */
#include "formats/format_grid.h"

#include <math.h>
#include <string.h>

#include "formats/fmt_ext.h"
#include "kernels/ggml_types.h"

static inline float f16_at(const uint8_t *p) { return ql_fp16_to_fp32((uint16_t)(p[0] | (p[1] << 8))); }

bool ql_grid_init(ql_grid *g, const ql_format *f) {
    memset(g, 0, sizeof *g);
    g->f = f;
    const ql_grid_spec *s = f->grid;
    if (!s || s->kind == QL_GRID_KIND_NONE || s->kind == QL_GRID_KIND_LATTICE || f->whole_tensor) {
        ql_fail(QL_ERR_UNSUPPORTED, "format %s has no code grid for error-feedback methods", f->name);
        return false;
    }
    g->spec = s;
    if (s->kind == QL_GRID_KIND_BLOCK) {
        g->type = f->type < QL_TYPE_EXT_BASE ? f->type : 0;
        g->block = f->block;
        g->sub = s->sub;
        g->kmin = s->kmin;
        g->kmax = s->kmax;
        g->table = s->table;
        g->block_bytes = f->block_bytes;
        g->bits = s->bits;
        return true;
    }
    g->bits = s->bits;
    g->group = s->group;
    g->sym = s->sym;
    g->mse = s->mse;
    g->block = s->group;
    g->sub = 0;
    g->kmin = 0;
    g->kmax = (1 << s->bits) - 1;
    return true;
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
    if (g->spec->kind == QL_GRID_KIND_BLOCK)
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
    if (g->spec->fix) { /* the format fixes the block's scales itself (NF4: absmax of the current weights) */
        (void)imp, (void)ld, (void)scratch;
        g->spec->fix(src, nrows, len, blk, dst, row_bytes, a, b, o);
        return;
    }
    if (g->spec->kind == QL_GRID_KIND_BLOCK) {
        /* the registry's SIMD twin when there is one: bit-identical to the reference, several times faster */
        ql_quantize_fn quant = g->f->simd && g->f->simd->quantize_rows ? g->f->simd->quantize_rows : g->f->quantize_rows;
        for (int64_t r = 0; r < nrows; r++) {
            uint8_t *x = dst + r * row_bytes + blk * g->block_bytes;
            quant(src + r * len, x, 1, len, imp);
            g->spec->parse(x, a + r, b + r, o + r, ld);
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
    if (g->spec->set_codes) {
        g->spec->set_codes(row, ql_grid_block_cols(g, ncols, blk), blk, codes);
        return;
    }
    if (g->spec->kind == QL_GRID_KIND_BLOCK) {
        g->spec->pack(row + blk * g->block_bytes, codes);
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
