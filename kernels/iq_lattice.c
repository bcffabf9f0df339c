/* iq_lattice.c — the lattice i-quants as a vector code grid (API and contract in iq_lattice.h): read
 * each group's scale out of a block, and round one group of 8 to its nearest codeword at a fixed scale,
 * writing the code into the block's bit fields exactly where ggml's decoders (ggml_quants_ref.c) read it.
 *
 * The search is exhaustive (256 to 1024 grid points of 8 coordinates, or 2 × 256/512 points of 4): the
 * grids' coordinates are all positive, so for a given point the best sign of each coordinate is that of
 * x, and with the even-parity rule the cheapest fix of an odd count is flipping the one coordinate whose
 * flip costs least, 4·w·|x|·v. Exhaustive on purpose: GPTQ's targets are not the quantizer's (they carry
 * fed-back error), so ggml's neighbour lists around the rounded point would miss the best codeword. */
#include "kernels/iq_lattice.h"

#include <math.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/blocks.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_tables.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

bool ql_iq_lattice_supported(uint32_t type) {
    return type == QL_TYPE_IQ2_XXS || type == QL_TYPE_IQ2_XS || type == QL_TYPE_IQ2_S || type == QL_TYPE_IQ3_XXS ||
           type == QL_TYPE_IQ3_S;
}

static inline uint32_t load32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline void store32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* The decoders' expressions, term for term (same float roundings). */
static inline float db_iq2(float d, unsigned nib) { return d * (0.5f + (float)nib) * 0.25f; }
static inline float db_iq3xxs(float d, unsigned nib) { return d * (0.5f + (float)nib) * 0.5f; }
static inline float db_iq3s(float d, unsigned nib) { return d * (float)(1 + 2 * (int)nib); }

void ql_iq_lattice_scales(uint32_t type, const void *vb, float scale[QL_IQ_LATTICE_GROUPS]) {
    for (int g = 0; g < QL_IQ_LATTICE_GROUPS; g++) {
        const int ib = g / 4, half = (g % 4) / 2;
        float s = 0;
        switch (type) {
        case QL_TYPE_IQ2_XXS: {
            const blk_iq2_xxs *b = vb;
            s = db_iq2(ql_fp16_to_fp32(b->d), load32((const uint8_t *)b->qs + 8 * ib + 4) >> 28);
            break;
        }
        case QL_TYPE_IQ2_XS: {
            const blk_iq2_xs *b = vb;
            s = db_iq2(ql_fp16_to_fp32(b->d), half ? b->scales[ib] >> 4 : b->scales[ib] & 0xf);
            break;
        }
        case QL_TYPE_IQ2_S: {
            const blk_iq2_s *b = vb;
            s = db_iq2(ql_fp16_to_fp32(b->d), half ? b->scales[ib] >> 4 : b->scales[ib] & 0xf);
            break;
        }
        case QL_TYPE_IQ3_XXS: {
            const blk_iq3_xxs *b = vb;
            s = db_iq3xxs(ql_fp16_to_fp32(b->d), load32(b->qs + QK_K / 4 + 4 * ib) >> 28);
            break;
        }
        case QL_TYPE_IQ3_S: {
            const blk_iq3_s *b = vb;
            s = db_iq3s(ql_fp16_to_fp32(b->d), (b->scales[ib / 2] >> (4 * (ib % 2))) & 0xf);
            break;
        }
        default: break;
        }
        scale[g] = s;
    }
}

/* Nearest point of an 8-coordinate grid to ax (= |x|) at scale s; with odd, the cheapest flip is added
 * and its coordinate returned in *flip. */
static int search8(const uint64_t *grid, int npts, float s, const float *ax, const float *w, bool odd, int *flip) {
    int best = 0, bflip = 0;
    float bcost = INFINITY;
    for (int gi = 0; gi < npts; gi++) {
        const uint64_t gv = grid[gi];
        float cost = 0, pen = INFINITY;
        int jp = 0;
        for (int j = 0; j < 8; j++) {
            const float v = s * (float)(uint8_t)(gv >> (8 * j));
            const float d = ax[j] - v;
            cost += w[j] * d * d;
            const float p = 4 * w[j] * ax[j] * v;
            if (p < pen) pen = p, jp = j;
        }
        if (odd) cost += pen;
        if (cost < bcost) bcost = cost, best = gi, bflip = jp;
    }
    *flip = bflip;
    return best;
}

/* The same for one half (4 coordinates) of a group on a 4-coordinate grid: the best point alone
 * (*plain, cost *cp) and the best point with one flip in this half (*flipped, cost *cf, flip *jf). */
static void search4(const uint32_t *grid, int npts, float s, const float *ax, const float *w, int *plain, float *cp,
                    int *flipped, float *cf, int *jf) {
    *plain = *flipped = 0, *jf = 0;
    *cp = *cf = INFINITY;
    for (int gi = 0; gi < npts; gi++) {
        const uint32_t gv = grid[gi];
        float cost = 0, pen = INFINITY;
        int jp = 0;
        for (int j = 0; j < 4; j++) {
            const float v = s * (float)(uint8_t)(gv >> (8 * j));
            const float d = ax[j] - v;
            cost += w[j] * d * d;
            const float p = 4 * w[j] * ax[j] * v;
            if (p < pen) pen = p, jp = j;
        }
        if (cost < *cp) *cp = cost, *plain = gi;
        if (cost + pen < *cf) *cf = cost + pen, *flipped = gi, *jf = jp;
    }
}

static inline uint8_t coord(uint64_t gv, int j) { return (uint8_t)(gv >> (8 * j)); }

void ql_iq_lattice_round(uint32_t type, void *vb, int g, float s, const float *x, const float *w, float *q) {
    const int ib = g / 4, l = g % 4;
    const bool parity = type == QL_TYPE_IQ2_XXS || type == QL_TYPE_IQ2_XS || type == QL_TYPE_IQ3_XXS;
    float ax[8];
    uint8_t signs = 0;
    int nneg = 0;
    for (int j = 0; j < 8; j++) {
        const bool neg = x[j] < 0;
        ax[j] = neg ? -x[j] : x[j];
        signs |= (uint8_t)(neg << j);
        nneg += neg;
    }
    const bool odd = parity && (nneg & 1);
    uint64_t gv8 = 0; /* the chosen point's 8 coordinates */
    if (type == QL_TYPE_IQ3_XXS || type == QL_TYPE_IQ3_S) {
        const uint32_t *grid = type == QL_TYPE_IQ3_XXS ? iq3xxs_grid : iq3s_grid;
        const int npts = type == QL_TYPE_IQ3_XXS ? 256 : 512;
        int p[2], f[2], jf[2];
        float cp[2], cf[2];
        for (int h = 0; h < 2; h++) search4(grid, npts, s, ax + 4 * h, w + 4 * h, &p[h], &cp[h], &f[h], &cf[h], &jf[h]);
        int g1 = p[0], g2 = p[1];
        if (odd) { /* one flip, in the half where it costs least */
            if (!(cp[0] + cf[1] < cf[0] + cp[1])) g1 = f[0], signs ^= (uint8_t)(1u << jf[0]);
            else g2 = f[1], signs ^= (uint8_t)(1u << (4 + jf[1]));
        }
        gv8 = (uint64_t)grid[g1] | (uint64_t)grid[g2] << 32;
        if (type == QL_TYPE_IQ3_XXS) {
            blk_iq3_xxs *b = vb;
            b->qs[8 * ib + 2 * l] = (uint8_t)g1;
            b->qs[8 * ib + 2 * l + 1] = (uint8_t)g2;
            uint8_t *ss = b->qs + QK_K / 4 + 4 * ib;
            uint32_t a = load32(ss);
            a = (a & ~(127u << (7 * l))) | (uint32_t)(signs & 127) << (7 * l);
            store32(ss, a);
        } else {
            blk_iq3_s *b = vb;
            b->qs[8 * ib + 2 * l] = (uint8_t)g1;
            b->qs[8 * ib + 2 * l + 1] = (uint8_t)g2;
            uint8_t qh = b->qh[ib];
            qh = (uint8_t)((qh & ~(3u << (2 * l))) | (unsigned)(g1 >> 8) << (2 * l) | (unsigned)(g2 >> 8) << (2 * l + 1));
            b->qh[ib] = qh;
            b->signs[4 * ib + l] = signs;
        }
    } else {
        const uint64_t *grid = type == QL_TYPE_IQ2_XXS ? iq2xxs_grid : type == QL_TYPE_IQ2_XS ? iq2xs_grid : iq2s_grid;
        const int npts = type == QL_TYPE_IQ2_XXS ? 256 : type == QL_TYPE_IQ2_XS ? 512 : 1024;
        int jf = 0;
        const int gi = search8(grid, npts, s, ax, w, odd, &jf);
        if (odd) signs ^= (uint8_t)(1u << jf);
        gv8 = grid[gi];
        if (type == QL_TYPE_IQ2_XXS) {
            blk_iq2_xxs *b = vb;
            uint8_t *base = (uint8_t *)b->qs + 8 * ib;
            base[l] = (uint8_t)gi;
            uint32_t a = load32(base + 4);
            a = (a & ~(127u << (7 * l))) | (uint32_t)(signs & 127) << (7 * l);
            store32(base + 4, a);
        } else if (type == QL_TYPE_IQ2_XS) {
            blk_iq2_xs *b = vb;
            b->qs[4 * ib + l] = (uint16_t)(gi | (signs & 127) << 9);
        } else {
            blk_iq2_s *b = vb;
            b->qs[4 * ib + l] = (uint8_t)gi;
            b->qh[ib] = (uint8_t)((b->qh[ib] & ~(3u << (2 * l))) | (unsigned)(gi >> 8) << (2 * l));
            b->qs[QK_K / 8 + 4 * ib + l] = signs;
        }
    }
    for (int j = 0; j < 8; j++) {
        const float v = s * (float)coord(gv8, j);
        q[j] = signs >> j & 1 ? -v : v;
    }
}
