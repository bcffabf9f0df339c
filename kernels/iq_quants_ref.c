/* iq_quants_ref.c — scalar reference QUANTIZERS for ggml's lattice i-quants (IQ2_XXS, IQ2_XS, IQ2_S,
 * IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) and ternary types (TQ1_0, TQ2_0), bit-exact with ggml-quants.c
 * (llama.cpp 34af94cd; checked against ../shared/testdata/ggml-quants by tests/test_iquants.c).
 * API in iq_quants.h; their decoders live in ggml_quants_ref.c, the grids themselves in iq_tables.h.
 *
 * What ggml builds at ggml_quantize_init() and does not store, this file derives lazily, once per
 * lattice (pthread_once, so concurrent first calls are safe): for every "key" — a vector of 8 (or 4)
 * rounded levels — either the grid point it names, or the list of grid points nearest to it, which
 * the searches then score with the real weights. The searches reproduce ggml's float arithmetic in
 * ggml's order (products rounded before sums, -ffp-contract=off as in ggml_quants_ref.c); reorder
 * nothing here without re-running the test.
 *
 * Where ggml aborts (an off-grid point with no finite-score neighbour, which needs non-finite input)
 * this code picks the first neighbour instead, so hostile rows never crash; such rows have no ggml
 * reference to match. Pure after the one-time table build; thread-safe. */
#include "kernels/iq_quants.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/ggml_types.h"
#include "kernels/iq_quants_internal.h"
#include "kernels/iq_tables.h"
#include "kernels/simd.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ggml's per-type "all zero" thresholds for a group's largest magnitude. */
#define EPS_IQ3_XXS 1e-8f
#define EPS_IQ2_S 1e-8f
#define EPS_IQ1_M 1e-7f
#define EPS_IQ1_S 1e-12f

/* ------------------------------------------------------------------------------------------------
 * Lattices: grid points as levels, key -> point map, neighbour lists.
 * ---------------------------------------------------------------------------------------------- */

/* A key packs one level per coordinate, `bits` bits each, coordinate 0 lowest. A grid coordinate's
 * level is its rank among the distinct coordinate values of that grid (ggml's kgrid tables are
 * exactly these keys; the searches work on odd integers 2*level+1). */
typedef struct {
    int ngrid, dim, bits;
    int nwant;               /* an off-grid key keeps every point at its nwant smallest distances */
    int map_size;            /* keys 0..map_size-1: every key whose levels stay within the grid's */
    uint8_t *level;          /* [ngrid * dim] */
    int32_t *keys;           /* [ngrid]: each point's levels packed as a key (the neighbour searches read these) */
    int32_t *map;            /* >= 0: grid index; < 0: -(1 + offset of the key's list in nbr) */
    uint16_t *nbr;           /* lists: count, then that many grid indices (by distance, then index) */
} lattice;

enum { LAT_IQ2XXS, LAT_IQ2XS, LAT_IQ2S, LAT_IQ1, LAT_IQ3XXS, LAT_IQ3S, LAT_COUNT };

static lattice g_lat[LAT_COUNT];

/* Coordinate j of grid point i as an integer (IQ1's grid holds signed bytes, the others unsigned). */
static int grid_coord(int which, int i, int j) {
    switch (which) {
    case LAT_IQ2XXS: return (uint8_t)(iq2xxs_grid[i] >> 8 * j);
    case LAT_IQ2XS: return (uint8_t)(iq2xs_grid[i] >> 8 * j);
    case LAT_IQ2S: return (uint8_t)(iq2s_grid[i] >> 8 * j);
    case LAT_IQ1: return (int8_t)(uint8_t)(iq1s_grid[i] >> 8 * j);
    case LAT_IQ3XXS: return (uint8_t)(iq3xxs_grid[i] >> 8 * j);
    default: return (uint8_t)(iq3s_grid[i] >> 8 * j);
    }
}

static void lattice_build(int which) {
    static const struct {
        int ngrid, dim, bits, nwant;
    } shape[LAT_COUNT] = {
        [LAT_IQ2XXS] = {256, 8, 2, 2},  [LAT_IQ2XS] = {512, 8, 2, 2}, [LAT_IQ2S] = {1024, 8, 2, 1},
        [LAT_IQ1] = {QL_NGRID_IQ1S, 8, 2, 3}, [LAT_IQ3XXS] = {256, 4, 3, 2}, [LAT_IQ3S] = {512, 4, 3, 3},
    };
    lattice *lt = &g_lat[which];
    const int ngrid = shape[which].ngrid, dim = shape[which].dim, bits = shape[which].bits;
    lt->ngrid = ngrid;
    lt->dim = dim;
    lt->bits = bits;
    lt->nwant = shape[which].nwant;

    /* distinct coordinate values, sorted: their ranks are the levels */
    int values[16], nvalues = 0;
    for (int i = 0; i < ngrid; ++i)
        for (int j = 0; j < dim; ++j) {
            const int v = grid_coord(which, i, j);
            int pos = 0;
            while (pos < nvalues && values[pos] < v) ++pos;
            if (pos < nvalues && values[pos] == v) continue;
            if (nvalues == 16) ql_abort("iq_quants: grid has more than 16 coordinate values");
            memmove(values + pos + 1, values + pos, (size_t)(nvalues - pos) * sizeof(int));
            values[pos] = v;
            nvalues++;
        }
    lt->level = ql_malloc((size_t)ngrid * (size_t)dim);
    for (int i = 0; i < ngrid; ++i)
        for (int j = 0; j < dim; ++j) {
            const int v = grid_coord(which, i, j);
            int r = 0;
            while (values[r] != v) ++r;
            lt->level[i * dim + j] = (uint8_t)r;
        }

    int max_key = 0;
    for (int j = 0; j < dim; ++j) max_key |= (nvalues - 1) << (bits * j);
    lt->map_size = max_key + 1;
    lt->map = ql_malloc((size_t)lt->map_size * sizeof(int32_t));
    for (int k = 0; k < lt->map_size; ++k) lt->map[k] = INT32_MIN;
    lt->keys = ql_malloc((size_t)ngrid * sizeof(int32_t));
    for (int i = 0; i < ngrid; ++i) {
        int key = 0;
        for (int j = 0; j < dim; ++j) key |= lt->level[i * dim + j] << (bits * j);
        lt->map[key] = i;
        lt->keys[i] = key;
    }

    /* Neighbours of every key that is not a grid point, by squared distance between the odd
     * coordinates 2l+1; ties keep grid order. Equivalent to sorting (distance, index) pairs and
     * cutting after the nwant-th distinct distance. A distance is the sum of two half-key distances
     * (first and second half of the coordinates) from a small table: IQ1's 42k keys x 2048 points
     * then take a fraction of a second. */
    const int hb = bits * dim / 2, hmask = (1 << hb) - 1, mask = (1 << bits) - 1;
    int *half_d2 = ql_malloc(((size_t)1 << (2 * hb)) * sizeof(int));
    for (int a = 0; a <= hmask; ++a)
        for (int b = 0; b <= hmask; ++b) {
            int s = 0;
            for (int j = 0; j < dim / 2; ++j) {
                const int diff = 2 * ((a >> (bits * j)) & mask) - 2 * ((b >> (bits * j)) & mask);
                s += diff * diff;
            }
            half_d2[(a << hb) | b] = s;
        }
    int *glo = ql_malloc((size_t)ngrid * sizeof(int)), *ghi = ql_malloc((size_t)ngrid * sizeof(int));
    for (int i = 0; i < ngrid; ++i) {
        int key = 0;
        for (int j = 0; j < dim; ++j) key |= lt->level[i * dim + j] << (bits * j);
        glo[i] = key & hmask;
        ghi[i] = key >> hb;
    }
    int *d2 = ql_malloc((size_t)ngrid * sizeof(int));
    size_t cap = 1 << 16, used = 0;
    uint16_t *nbr = ql_malloc(cap * sizeof(uint16_t));
    for (int key = 0; key < lt->map_size; ++key) {
        if (lt->map[key] != INT32_MIN) continue;
        const int *dlo = half_d2 + ((key & hmask) << hb), *dhi = half_d2 + ((key >> hb) << hb);
        int best[4], nbest = 0; /* the nwant smallest distinct distances, ascending */
        for (int i = 0; i < ngrid; ++i) {
            const int s = dlo[glo[i]] + dhi[ghi[i]];
            d2[i] = s;
            int p = 0;
            while (p < nbest && best[p] < s) ++p;
            if (p < nbest && best[p] == s) continue;
            if (p >= lt->nwant) continue;
            if (nbest == lt->nwant) nbest--;
            memmove(best + p + 1, best + p, (size_t)(nbest - p) * sizeof(int));
            best[p] = s;
            nbest++;
        }
        if (used + 1 + (size_t)ngrid > cap) {
            cap = 2 * cap + (size_t)ngrid;
            nbr = ql_realloc(nbr, cap * sizeof(uint16_t));
        }
        const size_t head = used++;
        for (int b = 0; b < nbest; ++b)
            for (int i = 0; i < ngrid; ++i)
                if (d2[i] == best[b]) nbr[used++] = (uint16_t)i;
        nbr[head] = (uint16_t)(used - head - 1);
        lt->map[key] = -1 - (int32_t)head;
    }
    nbr = ql_realloc(nbr, (used + 8) * sizeof(uint16_t)); /* the AVX2 search reads 8 entries at a time */
    memset(nbr + used, 0, 8 * sizeof(uint16_t));
    free(d2);
    free(glo);
    free(ghi);
    free(half_d2);
    lt->nbr = nbr;
}

static pthread_once_t g_once[LAT_COUNT] = {PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT,
                                           PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT};
static void build_iq2xxs(void) { lattice_build(LAT_IQ2XXS); }
static void build_iq2xs(void) { lattice_build(LAT_IQ2XS); }
static void build_iq2s(void) { lattice_build(LAT_IQ2S); }
static void build_iq1(void) { lattice_build(LAT_IQ1); }
static void build_iq3xxs(void) { lattice_build(LAT_IQ3XXS); }
static void build_iq3s(void) { lattice_build(LAT_IQ3S); }

static const lattice *get_lattice(int which) {
    static void (*const build[LAT_COUNT])(void) = {build_iq2xxs, build_iq2xs, build_iq2s,
                                                   build_iq1,    build_iq3xxs, build_iq3s};
    pthread_once(&g_once[which], build[which]);
    return &g_lat[which];
}

static inline int key_of(const lattice *lt, const int8_t *L) {
    int key = 0;
    for (int j = 0; j < lt->dim; ++j) key |= L[j] << (lt->bits * j);
    return key;
}

/* Grid index for a key, or -1 when the key is off the grid (or outside the map). */
static inline int on_grid(const lattice *lt, int key) {
    return key >= 0 && key < lt->map_size && lt->map[key] >= 0 ? lt->map[key] : -1;
}

static inline const uint16_t *neighbours_of(const lattice *lt, int key) {
    return lt->nbr + (-1 - lt->map[key]);
}

static inline void levels_of(const lattice *lt, int gi, int8_t *L) {
    for (int j = 0; j < lt->dim; ++j) L[j] = (int8_t)lt->level[gi * lt->dim + j];
}

/* Scalar reference of the neighbour search (contract in iq_quants_internal.h): levels come out of the
 * point's key, values out of qtab, and the sum runs in ggml's order. */
int ql_iq_nbr_search_ref(const uint16_t *nb, const int32_t *keys, int dim, int bits, const float *qtab, float scale,
                         const float *x, const float *weight) {
    const int mask = (1 << bits) - 1;
    float best_d2 = FLT_MAX;
    int gi = -1;
    for (int n = 1; n <= nb[0]; ++n) {
        const int32_t key = keys[nb[n]];
        float d2 = 0;
        for (int j = 0; j < dim; ++j) {
            const float diff = scale * qtab[(key >> (bits * j)) & mask] - x[j];
            d2 += weight[j] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            gi = nb[n];
        }
    }
    return gi;
}

/* The odd integers 2l+1 of IQ2/IQ3 levels, as floats (exact) */
static const float k_odd[8] = {1, 3, 5, 7, 9, 11, 13, 15};

/* Off-grid piece (IQ2/IQ3): the neighbour minimising sum w (scale*(2l+1) - x)^2; writes its levels. */
static int best_neighbour(const lattice *lt, int key, const float *xval, const float *weight, float scale,
                          int8_t *L, ql_iq_nbr_fn nf) {
    const uint16_t *nb = neighbours_of(lt, key);
    int gi = nf(nb, lt->keys, lt->dim, lt->bits, k_odd, scale, xval, weight);
    if (gi < 0) gi = nb[1]; /* non-finite scores only (ggml aborts here) */
    levels_of(lt, gi, L);
    return gi;
}

/* The grid index of L's key; falls back to point 0 only for non-finite input (ggml aborts). */
static inline int final_index(const lattice *lt, const int8_t *L) {
    const int gi = on_grid(lt, key_of(lt, L));
    return gi >= 0 ? gi : 0;
}

/* ------------------------------------------------------------------------------------------------
 * Shared pieces of the IQ2 / IQ3 searches
 * ---------------------------------------------------------------------------------------------- */

/* Importance of each value: imatrix-weighted sqrt(sigma2 + x^2), else the type's own fallback. */
static void group_weights(const float *xb, const float *qw, int n, float sigma2, int fallback, float *weight) {
    if (qw)
        for (int i = 0; i < n; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    else if (fallback == 0)
        for (int i = 0; i < n; ++i) weight[i] = xb[i] * xb[i];
    else
        for (int i = 0; i < n; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
}

/* |x| of 8 values and their sign mask. With even_parity the mask must have an even popcount (only 7
 * bits are stored), so the least important value (smallest w*x^2) is flipped if needed. */
static uint8_t fold_signs(const float *xb, const float *weight, float *xval, bool even_parity) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; ++i) {
        if (xb[i] >= 0) {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            ++nflip;
            s |= (uint8_t)(1 << i);
        }
    }
    if (even_parity && nflip % 2) {
        int imin = 0;
        float min = weight[0] * xb[0] * xb[0];
        for (int i = 1; i < 8; ++i) {
            const float ax = weight[i] * xb[i] * xb[i];
            if (ax < min) {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= (uint8_t)(1 << imin);
    }
    return even_parity ? (uint8_t)(s & 127) : s;
}

/* The per-type knobs of the group search below. */
typedef struct {
    int n;              /* values per group: 16 or 32 */
    int kmaxq;          /* levels per coordinate: 3 (IQ2) or 8 (IQ3) */
    int is_lo, is_hi;   /* candidate inverse scales (2*kmaxq - 1 + is*is_step) / ref */
    float is_step;
    bool always_refine; /* IQ2_XXS: re-round every piece at the best scale, on grid or not */
    bool refine_all;    /* IQ3_S: when refining, re-round every piece (not only off-grid ones) */
    bool on_grid_init;  /* IQ3_S starts as "off grid", so it always refines */
} search_knobs;

static float square_sum_ratio(const float *weight, const float *xval, const int8_t *L, int n, float *sumq2_out) {
    float sumqx = 0, sumq2 = 0;
    for (int i = 0; i < n; ++i) {
        const float w = weight[i];
        const float q = (float)(2 * L[i] + 1);
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    *sumq2_out = sumq2;
    return sumqx;
}

/* Round xval * id to levels (clamped) for one piece; returns the grid index or -1 (off grid). */
static int round_piece(const lattice *lt, const float *xval, float id, int kmaxq, int8_t *L) {
    for (int j = 0; j < lt->dim; ++j) {
        const int l = nearest_int(0.5f * (id * xval[j] - 1));
        L[j] = (int8_t)QMAX(0, QMIN(kmaxq - 1, l));
    }
    return on_grid(lt, key_of(lt, L));
}

/* ggml's scale search for one group of non-negative values xval with weights: try the candidate
 * scales, snapping each piece to the grid (nearest off-grid neighbour by sqrt-weights waux), keep
 * the best least-squares fit, then re-round at that scale. L holds the caller's starting levels and
 * returns the final ones; scale0 is the fallback when no candidate fits. Returns the scale. */
static float lattice_search(const lattice *lt, const search_knobs *kn, const float *xval, const float *weight,
                            const float *waux, float ref, float scale0, int8_t *L, ql_iq_nbr_fn nf) {
    const int npiece = kn->n / lt->dim;
    int8_t Laux[32];
    bool piece_on[8], piece_on_aux[8];
    float best = 0, scale = scale0;
    for (int k = 0; k < npiece; ++k) piece_on[k] = kn->on_grid_init;
    for (int is = kn->is_lo; is <= kn->is_hi; ++is) {
        const float id = (2 * kn->kmaxq - 1 + is * kn->is_step) / ref;
        const float this_scale = 1 / id;
        for (int k = 0; k < npiece; ++k) {
            const int o = k * lt->dim;
            piece_on_aux[k] = true;
            if (round_piece(lt, xval + o, id, kn->kmaxq, Laux + o) < 0) {
                piece_on_aux[k] = false;
                best_neighbour(lt, key_of(lt, Laux + o), xval + o, waux + o, this_scale, Laux + o, nf);
            }
        }
        float sumq2;
        const float sumqx = square_sum_ratio(weight, xval, Laux, kn->n, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, (size_t)kn->n);
            memcpy(piece_on, piece_on_aux, sizeof(piece_on));
        }
    }
    int n_off = 0;
    for (int k = 0; k < npiece; ++k) n_off += !piece_on[k];
    if ((kn->always_refine || n_off > 0) && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < npiece; ++k) {
            if (!kn->always_refine && !kn->refine_all && piece_on[k]) continue;
            const int o = k * lt->dim;
            const int gi = round_piece(lt, xval + o, id, kn->kmaxq, L + o);
            if (gi < 0) best_neighbour(lt, key_of(lt, L + o), xval + o, waux + o, scale, L + o, nf);
        }
        float sumq2;
        const float sumqx = square_sum_ratio(weight, xval, L, kn->n, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

/* 4-bit sub-block scale relative to the super-block scale d = max_scale/31: l with (2l+1)*d/2 ~ s */
static inline uint8_t scale_nibble(float id, float s) {
    const int l = nearest_int(0.5f * (id * s - 1));
    return (uint8_t)QMAX(0, QMIN(15, l));
}

static float block_sigma2(const float *xbl, float times) {
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
    return times * sumx2 / QK_K;
}

static void need_imatrix(const float *imatrix, const char *type) {
    if (!imatrix) {
        /* ggml_quantize_chunk asserts here too; ql_ggml_quantize_rows refuses before reaching it */
        char msg[96];
        snprintf(msg, sizeof(msg), "%s quantization called without an importance matrix", type);
        ql_abort(msg);
    }
}

/* ------------------------------------------------------------------------------------------------
 * IQ2_XXS: 8 groups of 32, 4 pieces of 8 on the 256-point grid, 7 sign bits per piece, 4-bit scales
 * ---------------------------------------------------------------------------------------------- */
static void row_iq2_xxs(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    need_imatrix(imatrix, "IQ2_XXS");
    const lattice *lt = get_lattice(LAT_IQ2XXS);
    const search_knobs kn = {.n = 32, .kmaxq = 3, .is_lo = -6, .is_hi = 6, .is_step = 0.1f, .always_refine = true};
    blk_iq2_xxs *y = vy;
    float weight[32], waux[32], xval[32], scales[8];
    int8_t L[32];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        uint32_t q2[16] = {0};
        y[ibl].d = ql_fp32_to_fp16(0.f);
        const float sigma2 = block_sigma2(xbl, 1);
        float max_scale = 0;
        for (int ib = 0; ib < 8; ++ib) {
            const float *xb = xbl + 32 * ib;
            uint8_t signs[4];
            group_weights(xb, imatrix + QK_K * ibl + 32 * ib, 32, sigma2, 0, weight);
            for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
            for (int k = 0; k < 4; ++k) signs[k] = fold_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, true);
            float max = xval[0];
            for (int i = 1; i < 32; ++i) max = QMAX(max, xval[i]);
            if (max < GROUP_MAX_EPS) {
                scales[ib] = 0;
                continue;
            }
            /* start from the weighted fit on levels 0..3 (ggml's make_qp_quants) */
            float scale = ql_ggml_make_qp_quants(32, kn.kmaxq + 1, xval, (uint8_t *)L, weight);
            const float eff_max = scale * kn.kmaxq;
            if (eff_max <= 0) {
                scales[ib] = 0;
                continue;
            }
            scale = lattice_search(lt, &kn, xval, weight, waux, eff_max, scale, L, nf);
            if (scale < 0) { /* cannot happen for |x| >= 0; mirrors ggml */
                scale = -scale;
                for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)(~signs[k] & 127);
            }
            for (int k = 0; k < 4; ++k) {
                q2[2 * ib + 0] |= (uint32_t)final_index(lt, L + 8 * k) << 8 * k;
                q2[2 * ib + 1] |= (uint32_t)signs[k] << 7 * k;
            }
            scales[ib] = scale;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) {
            memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
            continue;
        }
        const float d = max_scale / 31;
        y[ibl].d = ql_fp32_to_fp16(d);
        const float id = 1 / d;
        for (int ib = 0; ib < 8; ++ib) q2[2 * ib + 1] |= (uint32_t)scale_nibble(id, scales[ib]) << 28;
        memcpy(y[ibl].qs, q2, sizeof(q2));
    }
}

/* ------------------------------------------------------------------------------------------------
 * IQ2_XS (512-point grid) and IQ2_S (1024 points, full 8-bit signs): 16 groups of 16, 2 pieces each
 * ---------------------------------------------------------------------------------------------- */
static void row_iq2_xs(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    need_imatrix(imatrix, "IQ2_XS");
    const lattice *lt = get_lattice(LAT_IQ2XS);
    const search_knobs kn = {.n = 16, .kmaxq = 3, .is_lo = -9, .is_hi = 9, .is_step = 0.1f, .on_grid_init = true};
    blk_iq2_xs *y = vy;
    float weight[16], waux[16], xval[16], scales[16];
    int8_t L[16];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        uint16_t q2[32] = {0};
        y[ibl].d = ql_fp32_to_fp16(0.f);
        memset(y[ibl].scales, 0, sizeof(y[ibl].scales));
        const float sigma2 = block_sigma2(xbl, 1);
        float max_scale = 0;
        for (int ib = 0; ib < 16; ++ib) {
            const float *xb = xbl + 16 * ib;
            uint8_t signs[2];
            group_weights(xb, imatrix + QK_K * ibl + 16 * ib, 16, sigma2, 0, weight);
            for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);
            for (int k = 0; k < 2; ++k) signs[k] = fold_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, true);
            float max = xval[0];
            for (int i = 1; i < 16; ++i) max = QMAX(max, xval[i]);
            memset(L, 0, sizeof(L));
            if (max < GROUP_MAX_EPS) {
                scales[ib] = 0;
                continue;
            }
            float scale = lattice_search(lt, &kn, xval, weight, waux, max, max / (2 * kn.kmaxq - 1), L, nf);
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 2; ++k) signs[k] = (uint8_t)(~signs[k] & 127);
            }
            for (int k = 0; k < 2; ++k)
                q2[2 * ib + k] = (uint16_t)(final_index(lt, L + 8 * k) | (signs[k] << 9));
            scales[ib] = scale;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) {
            memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
            continue;
        }
        const float d = max_scale / 31;
        y[ibl].d = ql_fp32_to_fp16(d);
        const float id = 1 / d;
        for (int ib = 0; ib < 16; ++ib)
            y[ibl].scales[ib / 2] |= (uint8_t)(scale_nibble(id, scales[ib]) << 4 * (ib % 2));
        memcpy(y[ibl].qs, q2, sizeof(q2));
    }
}

static void row_iq2_s(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    const lattice *lt = get_lattice(LAT_IQ2S);
    const search_knobs kn = {.n = 16, .kmaxq = 3, .is_lo = -9, .is_hi = 9, .is_step = 0.1f, .on_grid_init = true};
    blk_iq2_s *y = vy;
    float weight[16], waux[16], xval[16], scales[16];
    int8_t L[16];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        memset(&y[ibl], 0, sizeof(y[ibl]));
        y[ibl].d = ql_fp32_to_fp16(0.f);
        uint8_t *qs = y[ibl].qs, *signs_out = y[ibl].qs + QK_K / 8; /* qs[64] = 32 indices + 32 sign bytes */
        const float sigma2 = block_sigma2(xbl, 2);
        float max_scale = 0;
        for (int ib = 0; ib < 16; ++ib) {
            const float *xb = xbl + 16 * ib;
            uint8_t signs[2];
            group_weights(xb, imatrix ? imatrix + QK_K * ibl + 16 * ib : NULL, 16, sigma2, 1, weight);
            for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);
            for (int k = 0; k < 2; ++k) signs[k] = fold_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, false);
            float max = xval[0];
            for (int i = 1; i < 16; ++i) max = QMAX(max, xval[i]);
            memset(L, 0, sizeof(L));
            if (max < EPS_IQ2_S) {
                scales[ib] = 0;
                continue;
            }
            float scale = lattice_search(lt, &kn, xval, weight, waux, max, max / (2 * kn.kmaxq - 1), L, nf);
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 2; ++k) signs[k] = (uint8_t)~signs[k];
            }
            for (int k = 0; k < 2; ++k) {
                const int gi = final_index(lt, L + 8 * k), i8 = 2 * ib + k;
                qs[i8] = (uint8_t)(gi & 255);
                y[ibl].qh[i8 / 4] |= (uint8_t)((gi >> 8) << 2 * (i8 % 4));
                signs_out[i8] = signs[k];
            }
            scales[ib] = scale;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) continue;
        const float d = max_scale / 31;
        y[ibl].d = ql_fp32_to_fp16(d * 0.9875f);
        const float id = 1 / d;
        for (int ib = 0; ib < 16; ++ib)
            y[ibl].scales[ib / 2] |= (uint8_t)(scale_nibble(id, scales[ib]) << 4 * (ib % 2));
    }
}

/* ------------------------------------------------------------------------------------------------
 * IQ3_XXS (256 points of 4) and IQ3_S (512 points, 9-bit indices, full signs): 8 groups of 32
 * ---------------------------------------------------------------------------------------------- */
static void row_iq3_xxs(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    const lattice *lt = get_lattice(LAT_IQ3XXS);
    const search_knobs kn = {
        .n = 32, .kmaxq = 8, .is_lo = -15, .is_hi = 15, .is_step = 0.2f, .on_grid_init = true};
    blk_iq3_xxs *y = vy;
    float weight[32], waux[32], xval[32], scales[8];
    int8_t L[32];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        uint8_t idx[64] = {0};
        uint32_t scales_and_signs[8] = {0};
        y[ibl].d = ql_fp32_to_fp16(0.f);
        const float sigma2 = block_sigma2(xbl, 2);
        float max_scale = 0;
        for (int ib = 0; ib < 8; ++ib) {
            const float *xb = xbl + 32 * ib;
            uint8_t signs[4];
            group_weights(xb, imatrix ? imatrix + QK_K * ibl + 32 * ib : NULL, 32, sigma2, 0, weight);
            for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
            for (int k = 0; k < 4; ++k) signs[k] = fold_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, true);
            float max = xval[0];
            for (int i = 1; i < 32; ++i) max = QMAX(max, xval[i]);
            memset(L, 0, sizeof(L));
            if (max < EPS_IQ3_XXS) {
                scales[ib] = 0;
                continue;
            }
            float scale = lattice_search(lt, &kn, xval, weight, waux, max, max / (2 * kn.kmaxq - 1), L, nf);
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)(~signs[k] & 127);
            }
            for (int k = 0; k < 8; ++k) idx[8 * ib + k] = (uint8_t)final_index(lt, L + 4 * k);
            scales_and_signs[ib] = (uint32_t)signs[0] | ((uint32_t)signs[1] << 7) | ((uint32_t)signs[2] << 14) |
                                   ((uint32_t)signs[3] << 21);
            scales[ib] = scale;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) {
            memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
            continue;
        }
        const float d = max_scale / 31;
        y[ibl].d = ql_fp32_to_fp16(d * 1.0125f);
        const float id = 1 / d;
        for (int ib = 0; ib < 8; ++ib) scales_and_signs[ib] |= (uint32_t)scale_nibble(id, scales[ib]) << 28;
        memcpy(y[ibl].qs, idx, 64);
        memcpy(y[ibl].qs + 64, scales_and_signs, 32);
    }
}

static void row_iq3_s(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    const lattice *lt = get_lattice(LAT_IQ3S);
    const search_knobs kn = {.n = 32, .kmaxq = 8, .is_lo = -9, .is_hi = 9, .is_step = 0.2f, .refine_all = true};
    blk_iq3_s *y = vy;
    float weight[32], waux[32], xval[32], scales[8];
    int8_t L[32];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        memset(&y[ibl], 0, sizeof(y[ibl]));
        y[ibl].d = ql_fp32_to_fp16(0.f);
        /* ggml advances its index and sign cursors only past groups it encoded: after an all-zero
         * group the following groups' indices and signs sit one slot early (their qh bits and scales
         * do not move). Reproduced for bit-exactness; the decoder then misplaces those groups. */
        uint8_t *qs = y[ibl].qs, *signs_out = y[ibl].signs;
        const float sigma2 = block_sigma2(xbl, 2);
        float max_scale = 0;
        for (int ib = 0; ib < 8; ++ib) {
            const float *xb = xbl + 32 * ib;
            uint8_t signs[4];
            group_weights(xb, imatrix ? imatrix + QK_K * ibl + 32 * ib : NULL, 32, sigma2, 0, weight);
            for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
            for (int k = 0; k < 4; ++k) signs[k] = fold_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, false);
            float max = xval[0];
            for (int i = 1; i < 32; ++i) max = QMAX(max, xval[i]);
            memset(L, 0, sizeof(L));
            if (!max) {
                scales[ib] = 0;
                continue;
            }
            float scale = lattice_search(lt, &kn, xval, weight, waux, max, max / (2 * kn.kmaxq - 1), L, nf);
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)~signs[k];
            }
            for (int k = 0; k < 8; ++k) {
                const int gi = final_index(lt, L + 4 * k);
                qs[k] = (uint8_t)(gi & 255);
                y[ibl].qh[ib] |= (uint8_t)((gi >> 8) << k);
            }
            qs += 8;
            memcpy(signs_out, signs, 4);
            signs_out += 4;
            scales[ib] = scale;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) continue;
        const float d = max_scale / 31;
        y[ibl].d = ql_fp32_to_fp16(d * 1.033f);
        const float id = 1 / d;
        for (int ib = 0; ib < 8; ib += 2)
            y[ibl].scales[ib / 2] =
                (uint8_t)(scale_nibble(id, scales[ib]) | (scale_nibble(id, scales[ib + 1]) << 4));
    }
}

/* ------------------------------------------------------------------------------------------------
 * IQ1_S / IQ1_M: values in {-1, 0, 1} + a shared shift of +-1/8, on the 2048-point grid
 * ---------------------------------------------------------------------------------------------- */

/* Sort order of a group's values, ascending; ties keep index order (ggml's qsort on glibc 2.36 is
 * a merge sort, hence stable — the reference files were made there). NaN compares equal to all. */
static void sort_order(const float *xb, int n, int *order) {
    for (int i = 0; i < n; ++i) {
        int p = i;
        while (p > 0 && xb[order[p - 1]] > xb[i]) {
            order[p] = order[p - 1];
            --p;
        }
        order[p] = i;
    }
}

/* Off-grid IQ1 piece: the neighbour minimising sum w (scale*xg[l] - x)^2 with the shifted values xg. */
static int iq1_best_neighbour(const lattice *lt, int key, const float *xb, const float *weight, float scale,
                              const float *xg, int8_t *L, ql_iq_nbr_fn nf) {
    const uint16_t *nb = neighbours_of(lt, key);
    const float qtab[8] = {xg[0], xg[1], xg[2], 0, 0, 0, 0, 0};
    int gi = nf(nb, lt->keys, 8, lt->bits, qtab, scale, xb, weight);
    /* ggml then scans the whole grid (reading past the group: a bug it cannot reach with finite
     * input) and aborts if that fails too; non-finite input only, so take the first neighbour */
    if (gi < 0) gi = nb[1];
    levels_of(lt, gi, L);
    return gi;
}

/* Grid indices of a group's pieces from levels L; off-grid pieces snapped with iq1_best_neighbour.
 * xg[k] holds piece k's three shifted values. Returns false when some piece was off the grid. */
static bool iq1_snap(const lattice *lt, const float *xb, const float *weight, float scale, int npiece,
                     const float *const *xg, int8_t *L, uint16_t *index, ql_iq_nbr_fn nf) {
    bool all_on = true;
    for (int k = 0; k < npiece; ++k) {
        const int key = key_of(lt, L + 8 * k);
        int gi = on_grid(lt, key);
        if (gi < 0) {
            all_on = false;
            gi = iq1_best_neighbour(lt, key, xb + 8 * k, weight + 8 * k, scale, xg[k], L + 8 * k, nf);
        }
        index[k] = (uint16_t)gi;
    }
    return all_on;
}

/* Least-squares refit of the scale over the snapped pieces (kept only when positive). */
static float iq1_refit(const lattice *lt, const float *xb, const float *weight, int npiece, const float *const *xg,
                       const uint16_t *index, float scale) {
    float sumqx = 0, sumq2 = 0;
    for (int k = 0; k < npiece; ++k) {
        const uint8_t *lv = lt->level + index[k] * 8;
        for (int j = 0; j < 8; ++j) {
            const float w = weight[8 * k + j];
            const float q = xg[k][lv[j]];
            sumqx += w * q * xb[8 * k + j];
            sumq2 += w * q * q;
        }
    }
    return sumqx > 0 && sumq2 > 0 ? sumqx / sumq2 : scale;
}

static const float iq1_xp[3] = {-1 + QL_IQ1S_DELTA, QL_IQ1S_DELTA, 1 + QL_IQ1S_DELTA};
static const float iq1_xm[3] = {-1 - QL_IQ1S_DELTA, -QL_IQ1S_DELTA, 1 - QL_IQ1S_DELTA};

static void row_iq1_s(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    need_imatrix(imatrix, "IQ1_S");
    const lattice *lt = get_lattice(LAT_IQ1);
    blk_iq1_s *y = vy;
    float weight[32], sumx[33], sumw[33], scales[8];
    int8_t L[32], shifts[8];
    int order[32];
    uint16_t index[4];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        y[ibl].d = ql_fp32_to_fp16(0.f);
        memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
        memset(y[ibl].qh, 0, sizeof(y[ibl].qh));
        const float sigma2 = block_sigma2(xbl, 2);
        float max_scale = 0;
        for (int ib = 0; ib < 8; ++ib) {
            const float *xb = xbl + 32 * ib;
            group_weights(xb, imatrix + QK_K * ibl + 32 * ib, 32, sigma2, 0, weight);
            float max = fabsf(xb[0]);
            for (int i = 1; i < 32; ++i) max = QMAX(max, fabsf(xb[i]));
            scales[ib] = 0;
            shifts[ib] = 1;
            if (max < EPS_IQ1_S) continue;
            /* Exact weighted fit: sorted, the values split into three runs (-1, 0, +1); prefix sums
             * score every split (i1, i2) for both shifts in O(1). */
            sort_order(xb, 32, order);
            sumx[0] = sumw[0] = 0;
            for (int j = 0; j < 32; ++j) {
                const int i = order[j];
                sumx[j + 1] = sumx[j] + weight[i] * xb[i];
                sumw[j + 1] = sumw[j] + weight[i];
            }
            float best_score = -FLT_MAX, scale = max;
            int besti1 = -1, besti2 = -1, best_shift = 0;
            for (int i1 = 0; i1 <= 32; ++i1)
                for (int i2 = i1; i2 <= 32; ++i2)
                    for (int sh = 1; sh >= -1; sh -= 2) {
                        const float *v = sh == 1 ? iq1_xp : iq1_xm;
                        const float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] +
                                            (sumx[32] - sumx[i2]) * v[2];
                        const float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] +
                                            (sumw[i2] - sumw[i1]) * v[1] * v[1] +
                                            (sumw[32] - sumw[i2]) * v[2] * v[2];
                        if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
                            scale = sumqx / sumq2;
                            best_score = scale * sumqx;
                            besti1 = i1;
                            besti2 = i2;
                            best_shift = sh;
                        }
                    }
            if (besti1 < 0 || besti2 < 0 || best_shift == 0) continue;
            for (int j = 0; j < 32; ++j) L[order[j]] = (int8_t)(j < besti1 ? 0 : j < besti2 ? 1 : 2);
            if (scale < 0) {
                for (int j = 0; j < 32; ++j) L[j] = (int8_t)(2 - L[j]);
                scale = -scale;
                best_shift = -best_shift;
            }
            const float *xx = best_shift == 1 ? iq1_xp : iq1_xm;
            const float *const xg[4] = {xx, xx, xx, xx};
            if (!iq1_snap(lt, xb, weight, scale, 4, xg, L, index, nf))
                scale = iq1_refit(lt, xb, weight, 4, xg, index, scale);
            uint16_t h = 0;
            for (int k = 0; k < 4; ++k) {
                y[ibl].qs[4 * ib + k] = (uint8_t)(index[k] & 255);
                h |= (uint16_t)((index[k] >> 8) << 3 * k);
            }
            y[ibl].qh[ib] = h;
            scales[ib] = scale;
            shifts[ib] = (int8_t)best_shift;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) continue;
        const float d = max_scale / 15;
        y[ibl].d = ql_fp32_to_fp16(d * 1.125f);
        const float id = 1 / d;
        for (int ib = 0; ib < 8; ++ib) {
            int l = nearest_int(0.5f * (id * scales[ib] - 1));
            l = QMAX(0, QMIN(7, l));
            if (shifts[ib] == -1) l |= 8;
            y[ibl].qh[ib] |= (uint16_t)(l << 12);
        }
    }
}

/* IQ1_M: groups of 16, each half (8 values) with its own shift sign: 4 combinations k, bit 1 of k
 * for the first half, bit 0 for the second (0 = +delta). */
static inline const float *iq1m_shift(int k, int half) {
    return (half == 0 ? k < 2 : k % 2 == 0) ? iq1_xp : iq1_xm;
}

static void row_iq1_m(const float *x, void *vy, int64_t n, const float *imatrix, ql_iq_nbr_fn nf) {
    const lattice *lt = get_lattice(LAT_IQ1);
    static const uint8_t shift_bits[4] = {0x00, 0x80, 0x08, 0x88};
    blk_iq1_m *y = vy;
    float weight[16], scales[16];
    int8_t L[16], shifts[16];
    int order[16];
    uint16_t index[2];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
        memset(y[ibl].qh, 0, sizeof(y[ibl].qh));
        memset(y[ibl].scales, 0, sizeof(y[ibl].scales));
        const float sigma2 = block_sigma2(xbl, 2);
        float max_scale = 0;
        for (int ib = 0; ib < 16; ++ib) {
            const float *xb = xbl + 16 * ib;
            group_weights(xb, imatrix ? imatrix + QK_K * ibl + 16 * ib : NULL, 16, sigma2, 0, weight);
            float max = fabsf(xb[0]);
            for (int i = 1; i < 16; ++i) max = QMAX(max, fabsf(xb[i]));
            scales[ib] = 0;
            shifts[ib] = 0;
            if (max < EPS_IQ1_M) continue;
            sort_order(xb, 16, order);
            float best_score = -FLT_MAX, scale = max;
            int besti1 = -1, besti2 = -1, best_k = -1;
            /* ggml sums each split afresh, value by value in sorted order, from 0. The products are
             * the same for every split, and the running sums over the first two runs are shared by
             * all splits with the same i1 (then i2), so only the tail is re-added: the very same
             * float additions in the same order, about half the work. */
            float px[16][3][4], pq[16][3][4];
            for (int j = 0; j < 16; ++j) {
                const int i = order[j], half = i >= 8;
                for (int t = 0; t < 3; ++t)
                    for (int k = 0; k < 4; ++k) {
                        const float v = iq1m_shift(k, half)[t];
                        px[j][t][k] = weight[i] * v * xb[i];
                        pq[j][t][k] = weight[i] * v * v;
                    }
            }
            float run0x[4] = {0}, run0q[4] = {0};
            for (int i1 = 0; i1 <= 16; ++i1) {
                if (i1 > 0)
                    for (int k = 0; k < 4; ++k) {
                        run0x[k] += px[i1 - 1][0][k];
                        run0q[k] += pq[i1 - 1][0][k];
                    }
                float run1x[4], run1q[4];
                memcpy(run1x, run0x, sizeof(run1x));
                memcpy(run1q, run0q, sizeof(run1q));
                for (int i2 = i1; i2 <= 16; ++i2) {
                    if (i2 > i1)
                        for (int k = 0; k < 4; ++k) {
                            run1x[k] += px[i2 - 1][1][k];
                            run1q[k] += pq[i2 - 1][1][k];
                        }
                    float sumqx[4], sumq2[4];
                    memcpy(sumqx, run1x, sizeof(sumqx));
                    memcpy(sumq2, run1q, sizeof(sumq2));
                    for (int j = i2; j < 16; ++j)
                        for (int k = 0; k < 4; ++k) {
                            sumqx[k] += px[j][2][k];
                            sumq2[k] += pq[j][2][k];
                        }
                    for (int k = 0; k < 4; ++k)
                        if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best_score * sumq2[k]) {
                            scale = sumqx[k] / sumq2[k];
                            best_score = scale * sumqx[k];
                            besti1 = i1;
                            besti2 = i2;
                            best_k = k;
                        }
                }
            }
            if (besti1 < 0 || besti2 < 0 || best_k < 0) continue;
            for (int j = 0; j < 16; ++j) L[order[j]] = (int8_t)(j < besti1 ? 0 : j < besti2 ? 1 : 2);
            if (scale < 0) {
                for (int j = 0; j < 16; ++j) L[j] = (int8_t)(2 - L[j]);
                scale = -scale;
                best_k = 3 - best_k; /* both halves change sign */
            }
            const float *const xg[2] = {iq1m_shift(best_k, 0), iq1m_shift(best_k, 1)};
            if (!iq1_snap(lt, xb, weight, scale, 2, xg, L, index, nf))
                scale = iq1_refit(lt, xb, weight, 2, xg, index, scale);
            y[ibl].qs[2 * ib + 0] = (uint8_t)(index[0] & 255);
            y[ibl].qs[2 * ib + 1] = (uint8_t)(index[1] & 255);
            y[ibl].qh[ib] = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
            scales[ib] = scale;
            shifts[ib] = (int8_t)best_k;
            max_scale = QMAX(max_scale, scale);
        }
        if (!max_scale) continue;
        /* 3-bit group scales against d = max_scale/15, then d itself refit over the whole block */
        uint16_t sc[4] = {0};
        float d = max_scale / 15;
        const float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int ib = 0; ib < 16; ++ib) {
            int l = nearest_int(0.5f * (id * scales[ib] - 1));
            l = QMAX(0, QMIN(7, l));
            sc[ib / 4] |= (uint16_t)(l << 3 * (ib % 4));
            y[ibl].qh[ib] |= shift_bits[shifts[ib]];
            const float *xb = xbl + 16 * ib;
            group_weights(xb, imatrix ? imatrix + QK_K * ibl + 16 * ib : NULL, 16, sigma2, 0, weight);
            for (int k = 0; k < 2; ++k) {
                const float *xx = iq1m_shift(shifts[ib], k);
                const int gi = y[ibl].qs[2 * ib + k] + ((y[ibl].qh[ib] << (8 - 4 * k)) & 0x700);
                const uint8_t *lv = lt->level + gi * 8;
                for (int j = 0; j < 8; ++j) {
                    const float w = weight[8 * k + j];
                    const float q = xx[lv[j]] * (2 * l + 1);
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
        }
        if (sumq2 > 0) d = sumqx / sumq2;
        const uint16_t h = ql_fp32_to_fp16(d * 1.1125f);
        sc[0] |= (uint16_t)((h & 0x000f) << 12);
        sc[1] |= (uint16_t)((h & 0x00f0) << 8);
        sc[2] |= (uint16_t)((h & 0x0f00) << 4);
        sc[3] |= (uint16_t)(h & 0xf000);
        memcpy(y[ibl].scales, sc, sizeof(sc));
    }
}

/* ------------------------------------------------------------------------------------------------
 * Ternary: d = max|x| per 256, trits round(x/d) in {-1, 0, 1} stored as digits 0..2
 * ---------------------------------------------------------------------------------------------- */

/* lroundf (ties away from zero, as ggml) clamped to a trit, which only non-finite input needs. */
static inline int trit(float v) {
    if (!(v > -1.5f && v < 1.5f)) return v > 0 ? 2 : 0; /* also NaN -> digit 0 */
    return (int)lroundf(v) + 1;
}

/* Five (or four, times 3) base-3 digits as a byte holding the fraction digits/243, rounded up, so
 * the decoder's (b * 3^n * 3) >> 8 recovers digit n. */
static inline uint8_t pack_trits(int q) { return (uint8_t)(((uint16_t)q * 256 + (243 - 1)) / 243); }

void ql_quantize_row_tq1_0_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix; /* ggml's TQ quantizers ignore it */
    blk_tq1_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK_K; ++ib) {
        float amax = 0;
        for (int j = 0; j < QK_K; ++j) amax = QMAX(amax, fabsf(x[j]));
        const float id = amax ? 1.0f / amax : 0.0f;
        y[ib].d = ql_fp32_to_fp16(amax);
        for (int m = 0; m < 32; ++m) { /* 160 values: digit n of byte m is x[m + 32n] */
            int q = 0;
            for (int d = 0; d < 5; ++d) q = q * 3 + trit(x[m + 32 * d] * id);
            y[ib].qs[m] = pack_trits(q);
        }
        x += 160;
        for (int m = 0; m < 16; ++m) { /* 80 values */
            int q = 0;
            for (int d = 0; d < 5; ++d) q = q * 3 + trit(x[m + 16 * d] * id);
            y[ib].qs[32 + m] = pack_trits(q);
        }
        x += 80;
        for (int m = 0; m < 4; ++m) { /* 16 values, 4 digits: the 5th (least significant) is 0 */
            int q = 0;
            for (int d = 0; d < 4; ++d) q = q * 3 + trit(x[m + 4 * d] * id);
            y[ib].qh[m] = pack_trits((uint8_t)q * 3);
        }
        x += 16;
    }
}

void ql_quantize_row_tq2_0_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    blk_tq2_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK_K; ++ib) {
        float amax = 0;
        for (int j = 0; j < QK_K; ++j) amax = QMAX(amax, fabsf(x[j]));
        const float id = amax ? 1.0f / amax : 0.0f;
        y[ib].d = ql_fp32_to_fp16(amax);
        for (int h = 0; h < 2; ++h) { /* 128 values per 32 bytes, 2 bits each */
            for (int m = 0; m < 32; ++m) {
                int q = 0;
                for (int l = 0; l < 4; ++l) q |= trit(x[m + 32 * l] * id) << 2 * l;
                y[ib].qs[32 * h + m] = (uint8_t)q;
            }
            x += 128;
        }
    }
}

/* ------------------------------------------------------------------------------------------------
 * Whole matrices
 * ---------------------------------------------------------------------------------------------- */
/* The public row quantizers: the reference with the scalar neighbour search, and the fast twins
 * (the registry's simd column) with the AVX2 one where the CPU has it: the same bytes either way. */
static ql_iq_nbr_fn fast_nbr(void) {
#ifdef QL_IQ_NBR_AVX2
    if (ql_simd_level_get() >= QL_SIMD_AVX2) return ql_iq_nbr_search_avx2;
#endif
    return ql_iq_nbr_search_ref;
}
#define IQ_ROW_PAIR(lname)                                                                               \
    void ql_quantize_row_##lname##_ref(const float *x, void *y, int64_t n, const float *imatrix) {      \
        row_##lname(x, y, n, imatrix, ql_iq_nbr_search_ref);                                             \
    }                                                                                                    \
    static void row_##lname##_fast(const float *x, void *y, int64_t n, const float *imatrix) {          \
        row_##lname(x, y, n, imatrix, fast_nbr());                                                       \
    }
IQ_ROW_PAIR(iq2_xxs)
IQ_ROW_PAIR(iq2_xs)
IQ_ROW_PAIR(iq2_s)
IQ_ROW_PAIR(iq3_xxs)
IQ_ROW_PAIR(iq3_s)
IQ_ROW_PAIR(iq1_s)
IQ_ROW_PAIR(iq1_m)

bool ql_ggml_quantize_requires_imatrix(uint32_t type) {
    return type == QL_TYPE_IQ2_XXS || type == QL_TYPE_IQ2_XS || type == QL_TYPE_IQ1_S;
}

typedef void (*row_quantizer)(const float *x, void *y, int64_t n, const float *imatrix);

static void quantize_rows(row_quantizer fn, size_t block_bytes, const float *src, void *dst, int64_t nrows,
                          int64_t ncols, const float *imatrix) {
    if (nrows <= 0 || ncols <= 0 || ncols % QK_K) return;
    const size_t rb = (size_t)(ncols / QK_K) * block_bytes;
    for (int64_t r = 0; r < nrows; ++r) fn(src + r * ncols, (char *)dst + (size_t)r * rb, ncols, imatrix);
}

#define IQ_ROWS(lname, blk_t)                                                                            \
    void ql_quantize_rows_##lname##_ref(const float *src, void *dst, int64_t nrows, int64_t ncols,       \
                                        const float *imatrix) {                                          \
        quantize_rows(ql_quantize_row_##lname##_ref, sizeof(blk_t), src, dst, nrows, ncols, imatrix);    \
    }
IQ_ROWS(iq2_xxs, blk_iq2_xxs)
IQ_ROWS(iq2_xs, blk_iq2_xs)
IQ_ROWS(iq2_s, blk_iq2_s)
IQ_ROWS(iq3_xxs, blk_iq3_xxs)
IQ_ROWS(iq3_s, blk_iq3_s)
IQ_ROWS(iq1_s, blk_iq1_s)
IQ_ROWS(iq1_m, blk_iq1_m)
IQ_ROWS(tq1_0, blk_tq1_0)
IQ_ROWS(tq2_0, blk_tq2_0)
#define IQ_ROWS_FAST(lname, blk_t)                                                                       \
    void ql_quantize_rows_##lname##_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,      \
                                         const float *imatrix) {                                         \
        quantize_rows(row_##lname##_fast, sizeof(blk_t), src, dst, nrows, ncols, imatrix);               \
    }
IQ_ROWS_FAST(iq2_xxs, blk_iq2_xxs)
IQ_ROWS_FAST(iq2_xs, blk_iq2_xs)
IQ_ROWS_FAST(iq2_s, blk_iq2_s)
IQ_ROWS_FAST(iq3_xxs, blk_iq3_xxs)
IQ_ROWS_FAST(iq3_s, blk_iq3_s)
IQ_ROWS_FAST(iq1_s, blk_iq1_s)
IQ_ROWS_FAST(iq1_m, blk_iq1_m)

ql_status ql_iq_quantize_rows(uint32_t type, const float *src, void *dst, int64_t nrows, int64_t ncols,
                              const float *imatrix) {
    static const struct {
        uint32_t type;
        row_quantizer fn;
        size_t block_bytes;
    } table[] = {
        {QL_TYPE_IQ2_XXS, ql_quantize_row_iq2_xxs_ref, sizeof(blk_iq2_xxs)},
        {QL_TYPE_IQ2_XS, ql_quantize_row_iq2_xs_ref, sizeof(blk_iq2_xs)},
        {QL_TYPE_IQ2_S, ql_quantize_row_iq2_s_ref, sizeof(blk_iq2_s)},
        {QL_TYPE_IQ3_XXS, ql_quantize_row_iq3_xxs_ref, sizeof(blk_iq3_xxs)},
        {QL_TYPE_IQ3_S, ql_quantize_row_iq3_s_ref, sizeof(blk_iq3_s)},
        {QL_TYPE_IQ1_S, ql_quantize_row_iq1_s_ref, sizeof(blk_iq1_s)},
        {QL_TYPE_IQ1_M, ql_quantize_row_iq1_m_ref, sizeof(blk_iq1_m)},
        {QL_TYPE_TQ1_0, ql_quantize_row_tq1_0_ref, sizeof(blk_tq1_0)},
        {QL_TYPE_TQ2_0, ql_quantize_row_tq2_0_ref, sizeof(blk_tq2_0)},
    };
    const ql_type_info *ti = ql_type_get(type);
    for (size_t i = 0; i < QL_ARRAY_LEN(table); ++i) {
        if (table[i].type != type) continue;
        if (!imatrix && ql_ggml_quantize_requires_imatrix(type))
            return ql_fail(QL_ERR_ARG,
                           "%s: ggml quantizes this type only with an importance matrix (give one with --imatrix)",
                           ti->name);
        if (nrows < 0 || ncols <= 0 || ncols % QK_K)
            return ql_fail(QL_ERR_ARG, "%s: rows of %lld values are not whole blocks of %d", ti->name,
                           (long long)ncols, QK_K);
        quantize_rows(table[i].fn, table[i].block_bytes, src, dst, nrows, ncols, imatrix);
        return QL_OK;
    }
    return ql_fail(QL_ERR_UNSUPPORTED, "%s: not an i-quant or ternary type", ti ? ti->name : "unknown type");
}
