/* format_grid.h — a storage format seen as a grid of representable values, for methods that choose
 * codes one column at a time with error feedback (GPTQ). A format block (32 or 256 columns of ggml's
 * block types, or one group of an INTn format) gets its scales FIXED by the format's own quantizer
 * (ql_grid_fix); after that, every column of the block, row by row, may take any value of the grid
 *     linear grids:  value = a·(k + o) + b,   k in [kmin, kmax]
 *     table grids:   value = a·table[k]       (IQ4_NL, IQ4_XS; NF4 with a = the block's absmax)
 * where (a, b, o) belong to one row and one sub-block (16 or 32 columns inside a K-quant block). The
 * value is computed exactly as ggml's / fmt_int.c's dequantizer computes it, so decoding the bytes
 * gives back the chosen values bit for bit. ql_grid_set_codes then writes the chosen codes into the
 * block's bytes next to the fixed scales. Everything here is pure and thread-safe for distinct rows. */
#ifndef QL_FORMAT_GRID_H
#define QL_FORMAT_GRID_H

#include "formats/format.h"

typedef struct ql_grid {
    const ql_format *f;
    const ql_grid_spec *spec; /* f->grid */
    uint32_t type;      /* ggml type id for a block grid of a ggml type, 0 otherwise (INTn, NF4) */
    int block;          /* columns fixed together; 0 = the whole row (INTn per-channel) */
    int sub;            /* columns sharing one (a, b, o) inside a block; 0 = the whole block */
    int kmin, kmax;     /* stored codes */
    const float *table; /* NULL for linear grids; else 16 sorted values */
    int block_bytes;    /* ggml types: bytes of one block */
    int bits, group;    /* INTn: bits per code, group (0 = per row) */
    bool sym, mse;      /* INTn variants */
} ql_grid;

/* The grid view of f, from its traits entry's grid hook; false (with ql_last_error set) for formats
 * whose entry says QL_GRID_NONE (floats, FP8, FP4, double-quantized NF4, 2-D blocks, decode-only types). */
bool ql_grid_init(ql_grid *g, const ql_format *f);

/* Columns in block blk of a row of ncols (the last INTn group may be shorter), and blocks per row. */
int64_t ql_grid_block_cols(const ql_grid *g, int64_t ncols, int64_t blk);
int64_t ql_grid_nblocks(const ql_grid *g, int64_t ncols);
/* Sub-blocks (sets of (a, b, o)) per block, and the sub-block of column i of a block. */
static inline int ql_grid_nsub(const ql_grid *g, int64_t block_cols) {
    return g->sub > 0 ? (int)((block_cols + g->sub - 1) / g->sub) : 1;
}
static inline int ql_grid_sub_of(const ql_grid *g, int64_t i) { return g->sub > 0 ? (int)(i / g->sub) : 0; }
/* Bytes of scratch ql_grid_fix needs for rows of ncols. */
int64_t ql_grid_scratch_bytes(const ql_grid *g, int64_t ncols);

/* Fix the scales of block blk for nrows rows: src [nrows, len] holds the block's current weights
 * (len = ql_grid_block_cols), imp [len] per-column importance or NULL. Writes the block's scale
 * fields (and provisional codes) into each row's bytes: row r at dst + r * row_bytes, rows of ncols.
 * Sub-block s of row r gets its grid in a/b/o[s * ld + r]. scratch: ql_grid_scratch_bytes bytes.
 * The bytes equal the format's own quantizer run on the block alone; ggml's legacy 32-blocks (q4_0 ..
 * q5_1) weigh their importance by the variance of the whole row, which here is the block's. */
void ql_grid_fix(const ql_grid *g, const float *src, int64_t nrows, int64_t ncols, int64_t blk,
                 const float *imp, uint8_t *dst, int64_t row_bytes, float *a, float *b, float *o, int64_t ld,
                 void *scratch);

/* Write the codes [len] of block blk into one row's bytes (scales untouched). */
void ql_grid_set_codes(const ql_grid *g, uint8_t *row, int64_t ncols, int64_t blk, const uint8_t *codes);

/* The value of code k, computed as the format's dequantizer does. */
static inline float ql_grid_value(const ql_grid *g, float a, float b, float o, int k) {
    return g->table ? a * g->table[k] : a * ((float)k + o) + b;
}

/* Nearest code to x (scalar reference; GPTQ has vectorized twins with the same arithmetic). Linear
 * grids round (x - b)/a - o half to even and clamp; table grids count the midpoints at or below x/a. */
int ql_grid_nearest(const ql_grid *g, float a, float b, float o, float x);

#endif
