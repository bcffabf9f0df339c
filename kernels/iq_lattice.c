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
#include <pthread.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/blocks.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_lattice_internal.h"
#include "kernels/iq_tables.h"
#include "kernels/simd.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

bool ql_iq_lattice_supported(uint32_t type) {
    return type == QL_TYPE_IQ2_XXS || type == QL_TYPE_IQ2_XS || type == QL_TYPE_IQ2_S || type == QL_TYPE_IQ3_XXS ||
           type == QL_TYPE_IQ3_S || type == QL_TYPE_IQ1_S || type == QL_TYPE_IQ1_M;
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
static inline float db_iq1(float d, unsigned s3) { return d * (float)(2 * (int)s3 + 1); }
/* IQ1_M spreads its fp16 super-block scale over the top nibbles of the four 16-bit scale words */
static inline uint16_t iq1m_d(const uint16_t sc[4]) {
    return (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
}

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
        case QL_TYPE_IQ1_S: {
            const blk_iq1_s *b = vb;
            s = db_iq1(ql_fp16_to_fp32(b->d), (b->qh[ib] >> 12) & 7);
            break;
        }
        case QL_TYPE_IQ1_M: {
            const blk_iq1_m *b = vb;
            uint16_t sc[4];
            memcpy(sc, b->scales, sizeof sc);
            s = db_iq1(ql_fp16_to_fp32(iq1m_d(sc)), (sc[ib / 2] >> (6 * (ib % 2) + 3 * half)) & 7);
            break;
        }
        default: break;
        }
        scale[g] = s;
    }
}

/* The grids' coordinates as floats, coordinate-major (ct[j * npts + gi]), so that the AVX2 twin
 * (iq_lattice_avx2.c) scores 8 grid points per register; built once (pthread_once). Converting a byte
 * to float is exact, so both searches see the decoder's values. */
static float g_ct2xxs[8 * 256], g_ct2xs[8 * 512], g_ct2s[8 * 1024], g_ct3xxs[4 * 256], g_ct3s[4 * 512];
/* IQ1: a decoded value is dl·(c + δ) with c in {−1, 0, 1} and δ = ±QL_IQ1S_DELTA, so the "coordinates"
 * searched are c + δ (one table per sign of δ), summed in float as the decoder sums them */
static float g_ct1p[8 * 2048], g_ct1m[8 * 2048];
static pthread_once_t g_ct_once = PTHREAD_ONCE_INIT;
static void build_coords(void) {
    for (int j = 0; j < 8; j++) {
        for (int gi = 0; gi < 256; gi++) g_ct2xxs[j * 256 + gi] = (float)(uint8_t)(iq2xxs_grid[gi] >> (8 * j));
        for (int gi = 0; gi < 512; gi++) g_ct2xs[j * 512 + gi] = (float)(uint8_t)(iq2xs_grid[gi] >> (8 * j));
        for (int gi = 0; gi < 1024; gi++) g_ct2s[j * 1024 + gi] = (float)(uint8_t)(iq2s_grid[gi] >> (8 * j));
    }
    for (int j = 0; j < 8; j++)
        for (int gi = 0; gi < 2048; gi++) {
            const int8_t c = (int8_t)(uint8_t)(iq1s_grid[gi] >> (8 * j));
            g_ct1p[j * 2048 + gi] = c + QL_IQ1S_DELTA;
            g_ct1m[j * 2048 + gi] = c + -QL_IQ1S_DELTA;
        }
    for (int j = 0; j < 4; j++) {
        for (int gi = 0; gi < 256; gi++) g_ct3xxs[j * 256 + gi] = (float)(uint8_t)(iq3xxs_grid[gi] >> (8 * j));
        for (int gi = 0; gi < 512; gi++) g_ct3s[j * 512 + gi] = (float)(uint8_t)(iq3s_grid[gi] >> (8 * j));
    }
}

/* Scalar reference of the search (contract in iq_lattice_internal.h). */
void ql_iq_lattice_search_ref(const float *ct, int npts, int dim, float s, const float *ax, const float *w,
                              ql_iq_lattice_best *out) {
    ql_iq_lattice_best b = {0, INFINITY, 0, 0, INFINITY, 0};
    for (int gi = 0; gi < npts; gi++) {
        float cost = 0, pen = INFINITY;
        int jp = 0;
        for (int j = 0; j < dim; j++) {
            const float v = s * ct[j * npts + gi];
            const float d = ax[j] - v;
            cost += w[j] * d * d;
            const float p = 4 * w[j] * ax[j] * v;
            if (p < pen) pen = p, jp = j;
        }
        if (cost < b.cost) b.cost = cost, b.gi = gi;
        const float cf = cost + pen;
        if (cf < b.fcost) b.fcost = cf, b.fgi = gi, b.fj = jp;
    }
    *out = b;
}

static void search(const float *ct, int npts, int dim, float s, const float *ax, const float *w,
                   ql_iq_lattice_best *out) {
#ifdef QL_IQ_LATTICE_AVX2
    if (ql_simd_level_get() >= QL_SIMD_AVX2) {
        ql_iq_lattice_search_avx2(ct, npts, dim, s, ax, w, out);
        return;
    }
#endif
    ql_iq_lattice_search_ref(ct, npts, dim, s, ax, w, out);
}

static inline uint8_t coord(uint64_t gv, int j) { return (uint8_t)(gv >> (8 * j)); }

/* IQ1_S / IQ1_M: no sign bits (the grid holds −1, 0, 1); the target is x itself. IQ1_S's δ is shared by
 * the 4 groups of a 32-block and stays as the quantizer chose it; IQ1_M's δ is per group, so both signs
 * are searched (+δ first on a tie). */
static void iq1_round(uint32_t type, void *vb, int g, float s, const float *x, const float *w, float *q) {
    const int ib = g / 4, l = g % 4;
    ql_iq_lattice_best h;
    const float *ct;
    bool neg;
    if (type == QL_TYPE_IQ1_S) {
        blk_iq1_s *b = vb;
        neg = b->qh[ib] & 0x8000;
        ct = neg ? g_ct1m : g_ct1p;
        search(ct, 2048, 8, s, x, w, &h);
        b->qs[4 * ib + l] = (uint8_t)h.gi;
        b->qh[ib] = (uint16_t)((b->qh[ib] & ~(7u << (3 * l))) | (unsigned)(h.gi >> 8) << (3 * l));
    } else {
        blk_iq1_m *b = vb;
        ql_iq_lattice_best hm;
        search(g_ct1p, 2048, 8, s, x, w, &h);
        search(g_ct1m, 2048, 8, s, x, w, &hm);
        neg = hm.cost < h.cost;
        if (neg) h = hm;
        ct = neg ? g_ct1m : g_ct1p;
        b->qs[4 * ib + l] = (uint8_t)h.gi;
        uint8_t *qh = &b->qh[2 * ib + l / 2];
        const unsigned sh = 4 * (unsigned)(l % 2); /* low nibble: even group, high: odd; bit 3 of each: δ < 0 */
        *qh = (uint8_t)((*qh & ~(15u << sh)) | ((unsigned)(h.gi >> 8) | (unsigned)neg << 3) << sh);
    }
    for (int j = 0; j < 8; j++) q[j] = s * ct[j * 2048 + h.gi];
}

void ql_iq_lattice_round(uint32_t type, void *vb, int g, float s, const float *x, const float *w, float *q) {
    const int ib = g / 4, l = g % 4;
    pthread_once(&g_ct_once, build_coords);
    if (type == QL_TYPE_IQ1_S || type == QL_TYPE_IQ1_M) {
        iq1_round(type, vb, g, s, x, w, q);
        return;
    }
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
        const float *ct = type == QL_TYPE_IQ3_XXS ? g_ct3xxs : g_ct3s;
        const int npts = type == QL_TYPE_IQ3_XXS ? 256 : 512;
        ql_iq_lattice_best h[2];
        for (int k = 0; k < 2; k++) search(ct, npts, 4, s, ax + 4 * k, w + 4 * k, &h[k]);
        int g1 = h[0].gi, g2 = h[1].gi;
        if (odd) { /* one flip, in the half where it costs least */
            if (!(h[0].cost + h[1].fcost < h[0].fcost + h[1].cost)) g1 = h[0].fgi, signs ^= (uint8_t)(1u << h[0].fj);
            else g2 = h[1].fgi, signs ^= (uint8_t)(1u << (4 + h[1].fj));
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
        const float *ct = type == QL_TYPE_IQ2_XXS ? g_ct2xxs : type == QL_TYPE_IQ2_XS ? g_ct2xs : g_ct2s;
        const int npts = type == QL_TYPE_IQ2_XXS ? 256 : type == QL_TYPE_IQ2_XS ? 512 : 1024;
        ql_iq_lattice_best h;
        search(ct, npts, 8, s, ax, w, &h);
        int gi = h.gi;
        if (odd) gi = h.fgi, signs ^= (uint8_t)(1u << h.fj);
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
