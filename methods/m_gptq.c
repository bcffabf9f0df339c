/* m_gptq.c — GPTQ (Frantar et al. 2022): quantize a weight matrix column by column, feeding each
 * column's rounding error back into the columns not yet quantized through the Cholesky factor of the
 * inverse Hessian, so that the layer output error tr(ΔW H ΔWᵀ) stays small. Codes land on the grid of
 * the target format (methods/format_grid.h): INTn groups and ggml's block types, whose scales are
 * fixed by the format's own quantizer when GPTQ reaches a block (or up front with static_groups=1).
 *
 * Numerics. H = 2·XᵀX/n_tokens in double; dead inputs (H_ii = 0) get H_ii = 1 and W[:, i] = 0; then
 * λ = damp·mean(diag H) on the diagonal (raised tenfold, up to 4 times, if H is still not positive
 * definite). U = the upper Cholesky factor of H⁻¹ comes from ONE factorization and one triangular
 * inverse: with J the reversal permutation, J·H·J = L·Lᵀ gives H⁻¹ = (J L⁻¹ J)ᵀ(J L⁻¹ J), so
 * U = J·L⁻¹·J = (J·L·J)⁻¹ (potrf + trtri: 2n³/3 flops instead of 4n³/3 for potrf + potri + potrf).
 * The Cholesky runs in double: XᵀX of LLM inputs has a huge dynamic range (outlier channels) and
 * cond(H) reaches ~100·n even after damping, which a float32 factorization turns into noise. The
 * triangular inverse only sees cond(L) = sqrt(cond(H)), so it runs in float (twice the speed; tests
 * match an all-double GPTQ value for value on a Hessian whose diagonal spans 10^6). (The LDLQ form of
 * QuIP needs no inverse, but its partial sums are not the error-updated weights that block scales are
 * fixed from.)
 *
 * Layout and loops. W is held transposed (Wt [ncols, nrows], columns in processing order) so a column
 * is contiguous. Columns go in lazy batches of `block`: inside a batch each column is first brought up
 * to date (left-looking: w_j -= Σ_{t<j in batch} U[t,j]·e_t, e_t = (w_t - q_t)/U_tt, a
 * register-blocked loop over rows), then rounded to the grid; rows are split in chunks across
 * n_threads workers (rows are independent given U). After the batch the trailing columns get one
 * BLAS-3 update Wt[i2:] -= U[i1:i2, i2:]ᵀ·E. A block's columns are brought up to date the same way
 * when its scales get fixed, so they see every error fed back so far. The per-row loops are
 * auto-vectorized (AVX2 twin picked at run time through kernels/simd.h; no FMA contraction, so every
 * CPU gives the same bytes).
 * Thread-safety: reentrant; temporarily sets OpenBLAS's thread count to n_threads. */
#include "methods/gptq.h"
#include "methods/method.h"

#include <cblas.h>
#ifdef QL_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#include <lapacke.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/parallel.h"
#include "core/backend.h"
#include "formats/fmt_ext.h"
#include "kernels/gptq_cuda.h"
#include "kernels/simd.h"

#define QL_IQ_GROUPS 32 /* groups of 8 in a 256-column lattice block (kernels/iq_lattice.h) */

#define ROW_CHUNK 128 /* rows per work item: a batch of E and W for a chunk stays in L2 */

/* GCC 12 at -O2 only vectorizes loops whose trip count is a known multiple of the vector width. */
#if defined(__GNUC__) && !defined(__clang__)
#define VECTORIZE __attribute__((optimize("-ftree-vectorize", "-fvect-cost-model=dynamic")))
#else
#define VECTORIZE
#endif

/* ---- per-row kernels, instantiated for the baseline ISA and for AVX2 ----
 * sub_combination: y[0..nr) -= Σ_t c[t] · e_t[0..nr), e_t = E + t·lde (four terms per pass over y).
 * quant_linear / quant_table: round one column to its grid; e = (w - q) · dinv. */
#define GPTQ_KERNELS(SFX, ATTR)                                                                              \
    static ATTR VECTORIZE void sub_combination_##SFX(float *restrict y, const float *restrict E,             \
                                                     int64_t lde, const float *c, int64_t nt, int64_t nr) {  \
        int64_t t = 0;                                                                                       \
        for (; t + 4 <= nt; t += 4) {                                                                        \
            const float c0 = c[t], c1 = c[t + 1], c2 = c[t + 2], c3 = c[t + 3];                              \
            const float *restrict e0 = E + t * lde, *restrict e1 = e0 + lde, *restrict e2 = e1 + lde,        \
                                  *restrict e3 = e2 + lde;                                                   \
            for (int64_t r = 0; r < nr; r++)                                                                 \
                y[r] -= (c0 * e0[r] + c1 * e1[r]) + (c2 * e2[r] + c3 * e3[r]);                               \
        }                                                                                                    \
        for (; t < nt; t++) {                                                                                \
            const float c0 = c[t];                                                                           \
            const float *restrict e0 = E + t * lde;                                                          \
            for (int64_t r = 0; r < nr; r++)                                                                 \
                y[r] -= c0 * e0[r];                                                                          \
        }                                                                                                    \
    }                                                                                                        \
    static ATTR VECTORIZE void quant_linear_##SFX(                                                           \
        const float *restrict w, const float *restrict a, const float *restrict b, const float *restrict o,  \
        float kmin, float kmax, float dinv, uint8_t *restrict code, float *restrict e, float *restrict q,    \
        int64_t nr) {                                                                                        \
        const float magic = 12582912.0f; /* 1.5·2^23: v + magic - magic rounds half to even, |v| < 2^22 */  \
        for (int64_t r = 0; r < nr; r++) {                                                                   \
            float v = (w[r] - b[r]) / a[r] - o[r];                                                           \
            v = v > kmin ? v : kmin; /* NaN (a == 0) -> kmin */                                              \
            v = v < kmax ? v : kmax;                                                                         \
            float k = (v + magic) - magic;                                                                   \
            float qr = a[r] * (k + o[r]) + b[r]; /* = ql_grid_value: the dequantizer's arithmetic */         \
            code[r] = (uint8_t)(int)k;                                                                       \
            e[r] = (w[r] - qr) * dinv;                                                                       \
            q[r] = qr;                                                                                       \
        }                                                                                                    \
    }                                                                                                        \
    static ATTR VECTORIZE void quant_table_##SFX(const float *restrict w, const float *restrict a,           \
                                                 const float *table, float dinv, uint8_t *restrict code,     \
                                                 float *restrict e, float *restrict q, int64_t nr) {         \
        float mid[16];                                                                                       \
        for (int i = 1; i < 16; i++)                                                                         \
            mid[i] = table[i - 1] + table[i];                                                                \
        for (int64_t r = 0; r < nr; r++) {                                                                   \
            float y2 = 2.0f * (w[r] / a[r]);                                                                 \
            int k = 0;                                                                                       \
            for (int i = 1; i < 16; i++)                                                                     \
                k += y2 >= mid[i];                                                                           \
            float qr = a[r] * table[k];                                                                      \
            code[r] = (uint8_t)k;                                                                            \
            e[r] = (w[r] - qr) * dinv;                                                                       \
            q[r] = qr;                                                                                       \
        }                                                                                                    \
    }

GPTQ_KERNELS(base, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
GPTQ_KERNELS(avx2, __attribute__((target("avx2"))))
#define HAVE_AVX2_TWIN 1
#endif

typedef struct {
    void (*sub_combination)(float *restrict, const float *restrict, int64_t, const float *, int64_t, int64_t);
    void (*quant_linear)(const float *restrict, const float *restrict, const float *restrict,
                         const float *restrict, float, float, float, uint8_t *restrict, float *restrict,
                         float *restrict, int64_t);
    void (*quant_table)(const float *restrict, const float *restrict, const float *, float, uint8_t *restrict,
                        float *restrict, float *restrict, int64_t);
} gptq_kernels;

static gptq_kernels pick_kernels(void) {
#ifdef HAVE_AVX2_TWIN
    if (ql_simd_level_get() >= QL_SIMD_AVX2)
        return (gptq_kernels){sub_combination_avx2, quant_linear_avx2, quant_table_avx2};
#endif
    return (gptq_kernels){sub_combination_base, quant_linear_base, quant_table_base};
}

typedef struct {
    const ql_grid *g;
    gptq_kernels k;
    int64_t nrows, ncols, bw, nsub; /* bw: columns per format block; nsub: grids per block */
    int64_t nchunks, block;         /* block: lazy batch width */
    bool static_groups;
    const float *U;                /* [n, n] upper triangle, processing order */
    const int64_t *perm, *invperm; /* processing position -> column, and back */
    const int64_t *fix_at;         /* [n] block to fix before position j, or -1 */
    const float *imp;              /* [ncols] importance, column order */
    float *Wt;                     /* [n, nrows] current weights */
    float *E;                      /* [block, nrows] (w - q) / U_jj of the current batch */
    uint8_t *codes;                /* [ncols, nrows] chosen codes, column order */
    float *qv;                     /* [ncols, nrows] chosen values, or NULL */
    float *A, *B, *O;              /* [nblocks * nsub, nrows] grids */
    uint8_t *dst;
    int64_t row_bytes;
    const ql_progress *progress;
    atomic_int stop; /* a worker saw the cancel flag */
} gptq_ctx;

typedef struct {
    int64_t i1, i2;             /* current batch */
    float *Ub;                  /* [block, block]: Ub[p - i1][t - i1] = U[t, p] inside the batch */
    float *gather, *col, *coef; /* [ROW_CHUNK, format block], [ROW_CHUNK], [lazy batch] */
    void *scratch;              /* ql_grid_fix's */
} gptq_worker;

/* U[t, p] for t in [i1, j): from the batch's transposed copy when p is in the batch */
static const float *coef_of(const gptq_ctx *c, gptq_worker *wk, int64_t p, int64_t j) {
    if (p < wk->i2)
        return wk->Ub + (p - wk->i1) * c->block;
    for (int64_t t = wk->i1; t < j; t++)
        wk->coef[t - wk->i1] = c->U[t * c->ncols + p];
    return wk->coef;
}

/* Fix block blk's grids for rows [r0, r1), GPTQ being at position j of batch [i1, i2): the block's
 * columns (all at positions >= j) are brought up to date with the batch's pending errors first. */
static void fix_block(const gptq_ctx *c, gptq_worker *wk, int64_t blk, int64_t j, int64_t r0, int64_t r1) {
    const ql_grid *g = c->g;
    int64_t nr = r1 - r0, c0 = blk * c->bw, len = ql_grid_block_cols(g, c->ncols, blk);
    float *G = wk->gather, *col = wk->col;
    for (int64_t i = 0; i < len; i++) {
        int64_t p = c->invperm[c0 + i];
        memcpy(col, c->Wt + p * c->nrows + r0, (size_t)nr * sizeof(float));
        if (j > wk->i1)
            c->k.sub_combination(col, c->E + r0, c->nrows, coef_of(c, wk, p, j), j - wk->i1, nr);
        for (int64_t r = 0; r < nr; r++)
            G[r * len + i] = col[r];
    }
    int64_t off = blk * c->nsub * c->nrows + r0;
    ql_grid_fix(g, G, nr, c->ncols, blk, c->imp ? c->imp + c0 : NULL, c->dst + r0 * c->row_bytes,
                c->row_bytes, c->A + off, c->B + off, c->O + off, c->nrows, wk->scratch);
}

/* Columns [i1, i2) of the rows [r0, r1): bring each up to date, fix blocks that start, round. */
static void batch_rows(const gptq_ctx *c, gptq_worker *wk, int64_t r0, int64_t r1) {
    const ql_grid *g = c->g;
    int64_t nr = r1 - r0;
    for (int64_t j = wk->i1; j < wk->i2; j++) {
        if (c->fix_at[j] >= 0)
            fix_block(c, wk, c->fix_at[j], j, r0, r1);
        int64_t col = c->perm[j], blk = g->block > 0 ? col / c->bw : 0;
        int64_t s = ql_grid_sub_of(g, col - blk * c->bw);
        float *wj = c->Wt + j * c->nrows + r0;
        if (j > wk->i1)
            c->k.sub_combination(wj, c->E + r0, c->nrows, coef_of(c, wk, j, j), j - wk->i1, nr);
        int64_t gi = (blk * c->nsub + s) * c->nrows + r0;
        float dinv = 1.0f / c->U[j * c->ncols + j];
        float *e = c->E + (j - wk->i1) * c->nrows + r0;
        uint8_t *code = c->codes + col * c->nrows + r0;
        float *q = c->qv ? c->qv + col * c->nrows + r0 : wk->col;
        if (g->table)
            c->k.quant_table(wj, c->A + gi, g->table, dinv, code, e, q, nr);
        else
            c->k.quant_linear(wj, c->A + gi, c->B + gi, c->O + gi, (float)g->kmin, (float)g->kmax, dinv, code,
                              e, q, nr);
    }
}

/* The whole of GPTQ for the rows of chunks [k0, k1): rows are independent given U, so each worker runs
 * every batch on its own rows, trailing update included (single-threaded BLAS), with no barrier. */
static void gptq_rows(void *ctx, int w, int64_t k0, int64_t k1) {
    gptq_ctx *c = ctx;
    gptq_worker wk = {0};
    int64_t n = c->ncols, B = c->block, R0 = k0 * ROW_CHUNK, R1 = QL_MIN(c->nrows, k1 * ROW_CHUNK);
    if (R1 <= R0)
        return;
    wk.Ub = ql_malloc((size_t)(B * B) * sizeof(float));
    wk.gather = ql_malloc((size_t)(ROW_CHUNK * c->bw) * sizeof(float));
    wk.col = ql_malloc(ROW_CHUNK * sizeof(float));
    wk.coef = ql_malloc((size_t)B * sizeof(float));
    int64_t sb = ql_grid_scratch_bytes(c->g, n);
    wk.scratch = sb > 0 ? ql_malloc((size_t)sb) : NULL;
    if (c->static_groups) /* every block's grid from the weights before any update */
        for (int64_t k = k0; k < k1; k++)
            for (int64_t blk = 0; blk < ql_grid_nblocks(c->g, n); blk++)
                fix_block(c, &wk, blk, 0, k * ROW_CHUNK, QL_MIN(c->nrows, (k + 1) * ROW_CHUNK));
    for (int64_t i1 = 0; i1 < n && !atomic_load(&c->stop); i1 += B) {
        if (ql_progress_cancelled(c->progress)) {
            atomic_store(&c->stop, 1);
            break;
        }
        wk.i1 = i1;
        wk.i2 = QL_MIN(n, i1 + B);
        for (int64_t p = i1; p < wk.i2; p++)
            for (int64_t t = i1; t < p; t++)
                wk.Ub[(p - i1) * B + (t - i1)] = c->U[t * n + p];
        for (int64_t k = k0; k < k1; k++)
            batch_rows(c, &wk, k * ROW_CHUNK, QL_MIN(c->nrows, (k + 1) * ROW_CHUNK));
        if (wk.i2 < n) /* Wt[i2:, R0:R1] -= U[i1:i2, i2:]ᵀ · E[:, R0:R1] */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(n - wk.i2), (int)(R1 - R0),
                        (int)(wk.i2 - i1), -1.0f, c->U + i1 * n + wk.i2, (int)n, c->E + R0, (int)c->nrows,
                        1.0f, c->Wt + wk.i2 * c->nrows + R0, (int)c->nrows);
        if (w == 0) /* worker 0 runs on the caller's thread */
            ql_progress_report(c->progress, wk.i2, n, "gptq");
    }
    free(wk.Ub), free(wk.gather), free(wk.col), free(wk.coef), free(wk.scratch);
}

/* Write the codes into every row's bytes, and the chosen values into deq (rows of chunks [k0, k1)). */
typedef struct {
    gptq_ctx *c;
    float *deq;
} pack_ctx;

static void pack_range(void *ctx, int w, int64_t k0, int64_t k1) {
    pack_ctx *pc = ctx;
    gptq_ctx *c = pc->c;
    const ql_grid *g = c->g;
    int64_t n = c->ncols, nblk = ql_grid_nblocks(g, n);
    (void)w;
    uint8_t *rc = ql_malloc((size_t)(ROW_CHUNK * n)); /* [ROW_CHUNK, ncols] codes, row order */
    for (int64_t k = k0; k < k1; k++) {
        int64_t r0 = k * ROW_CHUNK, r1 = QL_MIN(c->nrows, r0 + ROW_CHUNK), nr = r1 - r0;
        /* transpose through a 64x128 tile: strides of nrows / ncols bytes alias in the caches */
        uint8_t tile[64][ROW_CHUNK];
        for (int64_t col0 = 0; col0 < n; col0 += 64) {
            int64_t nc = QL_MIN(64, n - col0);
            for (int64_t i = 0; i < nc; i++)
                memcpy(tile[i], c->codes + (col0 + i) * c->nrows + r0, (size_t)nr);
            for (int64_t r = 0; r < nr; r++)
                for (int64_t i = 0; i < nc; i++)
                    rc[r * n + col0 + i] = tile[i][r];
        }
        if (pc->deq)
            for (int64_t col = 0; col < n; col++) {
                const float *q = c->qv + col * c->nrows + r0;
                for (int64_t r = 0; r < nr; r++)
                    pc->deq[(r0 + r) * n + col] = q[r];
            }
        for (int64_t r = 0; r < nr; r++)
            for (int64_t blk = 0; blk < nblk; blk++)
                ql_grid_set_codes(g, c->dst + (r0 + r) * c->row_bytes, n, blk,
                                  rc + r * n + (g->block > 0 ? blk * c->bw : 0));
    }
    free(rc);
}

/* ---- Hessian -> U ---- */

/* i before j in act order: larger H_ii first, ties by column (a stable, deterministic order) */
static bool goes_first(const double *d, int64_t i, int64_t j) { return d[i] != d[j] ? d[i] > d[j] : i < j; }

/* Merge sort of idx[n] into act order (qsort_r is not C11). tmp: n entries. */
static void sort_act_order(int64_t *idx, int64_t n, const double *key, int64_t *tmp) {
    if (n < 2)
        return;
    int64_t h = n / 2;
    sort_act_order(idx, h, key, tmp);
    sort_act_order(idx + h, n - h, key, tmp);
    int64_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = goes_first(key, idx[j], idx[i]) ? idx[j++] : idx[i++];
    while (i < h)
        tmp[k++] = idx[i++];
    while (j < n)
        tmp[k++] = idx[j++];
    memcpy(idx, tmp, (size_t)n * sizeof *idx);
}

/* P (row-major lower triangle) = J·Hp·J with Hp = H permuted, H = scale·XᵀX with dead columns fixed
 * and lam on the diagonal. */
static void build_reversed(double *P, const double *xtx, int64_t n, double scale, const bool *dead,
                           double lam, const int64_t *perm) {
    for (int64_t a = 0; a < n; a++) {
        int64_t pa = perm[n - 1 - a];
        const double *hrow = xtx + pa * n;
        double *prow = P + a * n;
        for (int64_t b = 0; b < a; b++) {
            int64_t pb = perm[n - 1 - b];
            prow[b] = dead[pa] || dead[pb] ? 0.0 : scale * hrow[pb];
        }
        prow[a] = (dead[pa] ? 1.0 : scale * hrow[pa]) + lam;
    }
}

/* ---- lattice i-quants: groups of 8 columns through the type's vector grid ----
 * For each 256-column block: the block's columns (up to date with every earlier block) are quantized by
 * the format's own quantizer, which fixes d and the sub-block scales; then its 32 groups of 8 go in
 * order, each rounded to the nearest codeword at its fixed scale (weights 1/U_jj², GPTQ's per-column
 * cost) and its error fed forward. A group is rounded jointly, so its columns do not see each other's
 * error; the feedback stays exact OBS compensation for the columns after it: with d = w_S − q_S the
 * errors e solve e·U_SS = d (forward substitution), and every later column p gets w_p −= Σ_k e_k U[k, p]
 * (U_SS is the 8×8 diagonal block of the upper Cholesky factor of H⁻¹; with a 1×1 block this is GPTQ).
 * Columns go in natural order (act_order would split the groups). */
typedef struct {
    const ql_format *f;
    int64_t nrows, ncols, row_bytes;
    const float *U, *imp;
    float *Wt; /* [ncols, nrows] */
    uint8_t *dst;
    const ql_progress *progress;
    atomic_int stop;
    ql_status st; /* first quantizer failure (worker 0 reports) */
} lat_ctx;

static void lattice_rows(void *ctx, int w, int64_t k0, int64_t k1) {
    lat_ctx *c = ctx;
    const ql_format *f = c->f;
    const ql_grid_spec *gs = f->grid;
    const int64_t n = c->ncols, N = c->nrows, BW = f->block, R0 = k0 * ROW_CHUNK, R1 = QL_MIN(N, k1 * ROW_CHUNK);
    if (R1 <= R0) return;
    const int64_t nr = R1 - R0, bb = f->block_bytes;
    float *G = ql_malloc((size_t)(nr * BW) * sizeof(float));
    uint8_t *blk = ql_malloc((size_t)(nr * bb));
    float *E = ql_malloc((size_t)(BW * nr) * sizeof(float)); /* [BW, nr] */
    float *sc = ql_malloc((size_t)(nr * QL_IQ_GROUPS) * sizeof(float));
    float x[8], wt[8], q[8], e[8];
    for (int64_t c0 = 0; c0 < n && !atomic_load(&c->stop); c0 += BW) {
        if (ql_progress_cancelled(c->progress)) {
            atomic_store(&c->stop, 1);
            break;
        }
        for (int64_t r = 0; r < nr; r++)
            for (int64_t i = 0; i < BW; i++) G[r * BW + i] = c->Wt[(c0 + i) * N + R0 + r];
        ql_status qs = ql_format_quantize(f, G, blk, nr, BW, c->imp + c0, 1);
        if (qs) {
            if (w == 0) c->st = qs;
            atomic_store(&c->stop, 1);
            break;
        }
        for (int64_t r = 0; r < nr; r++) gs->vscales(f->type, blk + r * bb, sc + r * QL_IQ_GROUPS);
        for (int64_t g = 0; g < BW / 8; g++) {
            const int64_t j0 = c0 + 8 * g;
            for (int k = 0; k < 8; k++) {
                const float u = c->U[(j0 + k) * n + j0 + k];
                wt[k] = 1.0f / (u * u);
            }
            for (int64_t r = 0; r < nr; r++) {
                for (int k = 0; k < 8; k++) x[k] = c->Wt[(j0 + k) * N + R0 + r];
                gs->vround(f->type, blk + r * bb, (int)g, sc[r * QL_IQ_GROUPS + g], x, wt, q);
                for (int k = 0; k < 8; k++) { /* e·U_SS = x − q */
                    float d = x[k] - q[k];
                    for (int i = 0; i < k; i++) d -= e[i] * c->U[(j0 + i) * n + j0 + k];
                    e[k] = d / c->U[(j0 + k) * n + j0 + k];
                    E[(j0 - c0 + k) * nr + r] = e[k];
                }
            }
            for (int64_t p = j0 + 8; p < c0 + BW; p++) { /* the block's later columns */
                float *wp = c->Wt + p * N + R0;
                for (int k = 0; k < 8; k++) {
                    const float u = c->U[(j0 + k) * n + p];
                    const float *ek = E + (j0 - c0 + k) * nr;
                    for (int64_t r = 0; r < nr; r++) wp[r] -= u * ek[r];
                }
            }
        }
        for (int64_t r = 0; r < nr; r++)
            memcpy(c->dst + (R0 + r) * c->row_bytes + (c0 / BW) * bb, blk + r * bb, (size_t)bb);
        if (c0 + BW < n) /* Wt[c0+BW:, R0:R1] -= U[c0:c0+BW, c0+BW:]ᵀ · E */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(n - c0 - BW), (int)nr, (int)BW, -1.0f,
                        c->U + c0 * n + c0 + BW, (int)n, E, (int)nr, 1.0f, c->Wt + (c0 + BW) * N + R0, (int)N);
        if (w == 0) ql_progress_report(c->progress, c0 + BW, n, "gptq");
    }
    free(G), free(blk), free(E), free(sc);
}

static ql_status gptq_lattice(const float *w, int64_t nrows, int64_t n, const ql_format *f, const float *U,
                              const float *imp, const bool *dead, int nt, const ql_progress *prog, void *dst,
                              float *deq) {
    lat_ctx c = {.f = f, .nrows = nrows, .ncols = n, .U = U, .imp = imp, .dst = dst, .progress = prog};
    c.row_bytes = ql_format_tensor_bytes(f, n, 1);
    memset(dst, 0, (size_t)(c.row_bytes * nrows));
    c.Wt = ql_malloc((size_t)(n * nrows) * sizeof(float));
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t j = 0; j < n; j++) {
            const float v = w[r * n + j];
            c.Wt[j * nrows + r] = dead[j] || !isfinite(v) ? 0.0f : v;
        }
    ql_blas_set_threads(1);
    ql_parallel_for(nt, (nrows + ROW_CHUNK - 1) / ROW_CHUNK, lattice_rows, &c);
    free(c.Wt);
    if (c.st) return c.st;
    if (atomic_load(&c.stop)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    if (deq) f->dequantize_rows(dst, deq, nrows, n);
    return QL_OK;
}

/* ---- the method ---- */

extern const ql_method ql_method_gptq;

/* GPTQ needs a grid of representable values per block to feed rounding errors forward on. */
static bool is_lattice(const ql_format *f) { return f->grid && f->grid->kind == QL_GRID_KIND_LATTICE; }

static bool gptq_serves(const ql_format *f, char *why, size_t cap) {
    ql_grid g;
    if (!f->whole_tensor && (is_lattice(f) || ql_grid_init(&g, f))) return true;
    snprintf(why, cap, "%s has no code grid for GPTQ's error feedback (qlab formats --methods --json lists the formats "
             "gptq writes)", f->name);
    return false;
}

/* ---- the GPU path (kernels/gptq_cuda.h): the device runs the Hessian work and the column loop; a block's
 * scales are fixed here, on the host, by the registry's quantizer (ql_grid_fix, rows split over the workers),
 * when the device reaches the block: the bytes of the scales are the format's own choice, as on the CPU. ---- */
typedef struct {
    const ql_grid *g;
    ql_cuda_gptq_grid *cg;
    int64_t ncols, row_bytes, nblk, fixed;
    uint8_t *dst;
    const double *diag; /* [ncols] dead-fixed diag H: importance = diag + lam unless the caller gave one */
    const float *user_imp;
    float *imp; /* [ncols], filled at the first fix (lam is known then) */
    bool imp_ready;
    int nt;
    const ql_progress *prog;
    /* the block being fixed */
    const float *G;
    int64_t blk, rows, len;
    float *a, *b, *o;
} dev_fix_ctx;

static void dev_fix_rows(void *ctx, int w, int64_t k0, int64_t k1) {
    dev_fix_ctx *c = ctx;
    (void)w;
    const int64_t r0 = k0 * ROW_CHUNK, r1 = QL_MIN(c->rows, k1 * ROW_CHUNK);
    if (r1 <= r0) return;
    const int64_t sb = ql_grid_scratch_bytes(c->g, c->ncols);
    void *scratch = sb > 0 ? ql_malloc((size_t)sb) : NULL;
    const int64_t c0 = c->g->block > 0 ? c->blk * c->g->block : 0;
    ql_grid_fix(c->g, c->G + r0 * c->len, r1 - r0, c->ncols, c->blk, c->imp + c0, c->dst + r0 * c->row_bytes,
                c->row_bytes, c->a + r0, c->b + r0, c->o + r0, c->rows, scratch);
    free(scratch);
}

static ql_status dev_fix(void *user, int64_t blk, const float *G, int64_t rows, int64_t len, float *a, float *b,
                         float *o) {
    dev_fix_ctx *c = user;
    if (ql_progress_cancelled(c->prog)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    if (!c->imp_ready) {
        for (int64_t i = 0; i < c->ncols; i++)
            c->imp[i] = c->user_imp ? c->user_imp[i] : (float)(c->diag[i] + c->cg->lam);
        c->imp_ready = true;
    }
    c->G = G, c->blk = blk, c->rows = rows, c->len = len, c->a = a, c->b = b, c->o = o;
    ql_parallel_for(c->nt, (rows + ROW_CHUNK - 1) / ROW_CHUNK, dev_fix_rows, c);
    ql_progress_report(c->prog, ++c->fixed, c->nblk, "gptq");
    return QL_OK;
}

/* the device fix's progress and cancellation (the fix itself ran on the device) */
static ql_status dev_fixed(void *user, int64_t blk) {
    dev_fix_ctx *c = user;
    (void)blk;
    if (ql_progress_cancelled(c->prog)) return ql_fail(QL_ERR_CANCELLED, "cancelled");
    ql_progress_report(c->prog, ++c->fixed, c->nblk, "gptq");
    return QL_OK;
}

static ql_status gptq_device(bool emulate, const float *w, int64_t nrows, int64_t n, const ql_format *f,
                             const ql_grid *grid, const ql_input_stats *st, const ql_method_opts *o, double damp,
                             int block, const int64_t *perm, bool act, bool stat, const double *diag, void *dst,
                             float *deq) {
    int bits = 0, group = 0;
    bool sym = false, mse = true;
    const int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    if (!act && !stat && ql_int_format_params(f, &bits, &group, &sym, &mse) && !mse) /* all on the device */
        return (emulate ? ql_cuda_gptq_int_emulate : ql_cuda_gptq_int)(w, nrows, n, st->xtx, st->n_tokens, bits,
                                                                      group, sym, damp, block, deq, dst, NULL);
    const int64_t row_bytes = ql_format_tensor_bytes(f, n, 1), nblk = ql_grid_nblocks(grid, n);
    const int64_t bw = grid->block > 0 ? grid->block : n;
    memset(dst, 0, (size_t)(row_bytes * nrows));
    ql_cuda_gptq_grid cg = {.bw = bw, .sub = grid->sub, .kmin = grid->kmin, .kmax = grid->kmax,
                            .table = grid->table, .fix = dev_fix};
    dev_fix_ctx fc = {.g = grid, .cg = &cg, .ncols = n, .row_bytes = row_bytes, .nblk = nblk, .dst = dst,
                      .diag = diag, .user_imp = o ? o->importance : NULL, .nt = nt, .prog = o ? o->progress : NULL};
    fc.imp = ql_malloc((size_t)n * sizeof(float));
    cg.user = &fc;
    /* the registry's device twin of the block's scale search, where the format has one: blocks never come
     * to the host (a format with its own fix hook, NF4, keeps it). $QL_GPTQ_HOST_FIX=1 keeps the host's
     * round trip, to measure what the twin saves (same bytes either way: test_gptq_cuda) */
    const char *host_fix = getenv("QL_GPTQ_HOST_FIX");
    if (f->cuda && f->cuda->grid_fix_dev && f->cuda->grid_fix_emulated && !grid->spec->fix &&
        !(host_fix && strcmp(host_fix, "1") == 0)) {
        cg.fix_dev = f->cuda->grid_fix_dev, cg.fix_emulated = f->cuda->grid_fix_emulated;
        cg.imp = o ? o->importance : NULL;
        cg.blocks = dst, cg.row_bytes = row_bytes, cg.block_bytes = grid->block_bytes;
        cg.fixed = dev_fixed;
    }
    uint8_t *codes = ql_malloc((size_t)(nrows * n));
    ql_status s = (emulate ? ql_cuda_gptq_grid_emulate : ql_cuda_gptq_grid_run)(
        w, nrows, n, st->xtx, st->n_tokens, damp, block, act ? perm : NULL, stat, &cg, codes, deq, NULL);
    if (!s)
        for (int64_t r = 0; r < nrows; r++)
            for (int64_t blk = 0; blk < nblk; blk++)
                ql_grid_set_codes(grid, (uint8_t *)dst + r * row_bytes, n, blk,
                                  codes + r * n + (grid->block > 0 ? blk * bw : 0));
    free(codes), free(fc.imp);
    return s;
}

static bool backend_is_cuda(void) {
    const ql_backend_ops *b = ql_backend_default();
    return b && strcmp(b->name, "cuda") == 0;
}

ql_status ql_gptq_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                           const ql_input_stats *st, const ql_method_opts *o, void *dst, float *deq) {
    return ql_gptq_quantize_on(backend_is_cuda() ? QL_GPTQ_ON_CUDA : QL_GPTQ_ON_CPU, w, nrows, ncols, f, st, o, dst,
                               deq);
}

ql_status ql_gptq_quantize_on(ql_gptq_where where, float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                              const ql_input_stats *st, const ql_method_opts *o, void *dst, float *deq) {
    const ql_opt_values *ov = o ? o->values : NULL; /* ranges were checked when they were parsed */
    const double damp = ql_opt_float(ov, &ql_method_gptq, "damp");
    const bool lattice = is_lattice(f);
    const bool act = !lattice && ql_opt_bool(ov, &ql_method_gptq, "act_order"); /* groups stay whole */
    const bool stat = ql_opt_bool(ov, &ql_method_gptq, "static_groups");
    const int64_t blkopt = ql_opt_int(ov, &ql_method_gptq, "block");
    if (nrows <= 0 || ncols <= 0)
        return ql_fail(QL_ERR_ARG, "gptq: empty tensor");
    if (!st || !st->xtx || st->n != ncols)
        return ql_fail(QL_ERR_ARG, "gptq: needs the Hessian X^T X of the layer input (%lld columns)",
                       (long long)ncols);
    char why[256];
    ql_grid grid;
    if (!gptq_serves(f, why, sizeof why) || (!lattice && !ql_grid_init(&grid, f))) /* no silent rounding */
        return ql_fail(QL_ERR_UNSUPPORTED, "gptq: %s", why);
    if (!ql_format_fits(f, ncols))
        return ql_fail(QL_ERR_ARG, "gptq: format %s needs rows that are a multiple of %d (got %lld)", f->name,
                       f->block, (long long)ncols);
    int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    const ql_progress *prog = o ? o->progress : NULL;
    const int64_t n = ncols, B = QL_MIN(blkopt, ncols);

    /* Hessian diagonal, dead columns, damping, order */
    double scale = st->n_tokens > 0 ? 2.0 / (double)st->n_tokens : 1.0;
    double *diag = ql_malloc((size_t)n * sizeof(double));
    bool *dead = ql_malloc((size_t)n);
    int64_t *perm = ql_malloc((size_t)n * 3 * sizeof(int64_t)), *invperm = perm + n, *fix_at = perm + 2 * n;
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        double h = st->xtx[i * n + i] * scale;
        dead[i] = !(h > 0) || !isfinite(h);
        diag[i] = dead[i] ? 1.0 : h;
        mean += diag[i];
        perm[i] = i;
    }
    mean /= (double)n;
    if (act)
        sort_act_order(perm, n, diag, invperm);
    for (int64_t j = 0; j < n; j++)
        invperm[perm[j]] = j;
    if (where != QL_GPTQ_ON_CPU && !lattice) {
#ifdef QL_HAVE_CUDA
        if (where == QL_GPTQ_ON_CUDA) cudaSetDevice(ql_backend_device()); /* --device cuda:N */
#endif
        ql_status ds = gptq_device(where == QL_GPTQ_ON_CUDA_EMULATED, w, nrows, n, f, &grid, st, o, damp, (int)B,
                                   perm, act, stat, diag, dst, deq);
        free(diag), free(dead), free(perm);
        return ds;
    }

    int saved_threads = ql_blas_get_threads();
    ql_blas_set_threads(nt);
    double *P = ql_malloc((size_t)(n * n) * sizeof(double));
    lapack_int info = 0;
    double lam = damp * mean;
    float *U = ql_malloc((size_t)(n * n) * sizeof(float));
    for (int attempt = 0; attempt < 5; attempt++) {
        build_reversed(P, st->xtx, n, scale, dead, lam, perm);
        /* P row-major lower = column-major upper: potrf('U') leaves the row-major lower L of J·H·J */
        info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, P, (lapack_int)n);
        if (info == 0)
            break;
        lam = lam > 0 ? lam * 10 : 1e-6 * mean;
    }
    if (info == 0) {
        /* U = J·L⁻¹·J = (J·L·J)⁻¹: J·L·J is upper triangular, row-major = column-major lower */
        for (int64_t i = 0; i < n; i++) {
            const double *lrow = P + (n - 1 - i) * n + (n - 1); /* lrow[-j] = L[n-1-i, n-1-j] */
            float *urow = U + i * n;
            for (int64_t j = i; j < n; j++)
                urow[j] = (float)lrow[-j];
        }
        info = LAPACKE_strtri(LAPACK_COL_MAJOR, 'L', 'N', (lapack_int)n, U, (lapack_int)n);
    }
    free(P);
    if (info != 0) {
        free(U), free(diag), free(dead), free(perm);
        ql_blas_set_threads(saved_threads);
        return ql_fail(QL_ERR_ARG, "gptq: Hessian not positive definite even with dampening %g", lam / mean);
    }

    /* importance for the format's quantizer: the caller's, else the (damped) Hessian diagonal */
    float *imp = ql_malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        imp[i] = o && o->importance ? o->importance[i] : (float)(diag[i] + lam);
    if (lattice) {
        ql_status ls = gptq_lattice(w, nrows, n, f, U, imp, dead, nt, prog, dst, deq);
        ql_blas_set_threads(saved_threads);
        free(imp), free(U), free(diag), free(dead), free(perm);
        return ls;
    }

    gptq_ctx c = {.g = &grid,
                  .k = pick_kernels(),
                  .nrows = nrows,
                  .ncols = n,
                  .block = B,
                  .static_groups = stat,
                  .U = U,
                  .perm = perm,
                  .invperm = invperm,
                  .fix_at = fix_at,
                  .imp = imp,
                  .dst = dst,
                  .progress = prog};
    c.bw = grid.block > 0 ? grid.block : n;
    c.nsub = ql_grid_nsub(&grid, c.bw);
    c.nchunks = (nrows + ROW_CHUNK - 1) / ROW_CHUNK;
    c.row_bytes = ql_format_tensor_bytes(f, n, 1);
    int64_t nblk = ql_grid_nblocks(&grid, n);
    memset(dst, 0, (size_t)(c.row_bytes * nrows));

    /* Wt [n, nrows] = W's columns in processing order; dead columns and non-finite weights are 0 */
    c.Wt = ql_malloc((size_t)(n * nrows) * sizeof(float));
    for (int64_t r0 = 0; r0 < nrows; r0 += 32) /* through a 32x32 tile: power-of-two strides alias */
        for (int64_t j0 = 0; j0 < n; j0 += 32) {
            float tile[32][32];
            int64_t nr = QL_MIN(32, nrows - r0), nj = QL_MIN(32, n - j0);
            for (int64_t r = 0; r < nr; r++)
                for (int64_t j = 0; j < nj; j++)
                    tile[j][r] = w[(r0 + r) * n + perm[j0 + j]];
            for (int64_t j = 0; j < nj; j++) {
                bool d = dead[perm[j0 + j]];
                for (int64_t r = 0; r < nr; r++)
                    c.Wt[(j0 + j) * nrows + r0 + r] = d || !isfinite(tile[j][r]) ? 0.0f : tile[j][r];
            }
        }
    c.E = ql_malloc((size_t)(B * nrows) * sizeof(float));
    c.codes = ql_malloc((size_t)(n * nrows));
    c.qv = deq ? ql_malloc((size_t)(n * nrows) * sizeof(float)) : NULL;
    size_t gsz = (size_t)(nblk * c.nsub * nrows) * sizeof(float);
    c.A = ql_malloc(gsz), c.B = ql_malloc(gsz), c.O = ql_malloc(gsz);

    /* when each block's grid gets fixed: at its first column in processing order (static: up front) */
    bool *fixed = ql_calloc((size_t)nblk, 1);
    for (int64_t j = 0; j < n; j++) {
        int64_t blk = grid.block > 0 ? perm[j] / c.bw : 0;
        fix_at[j] = stat || fixed[blk] ? -1 : blk;
        fixed[blk] = true;
    }
    free(fixed);

    /* workers on row ranges call BLAS themselves: one BLAS thread each */
    ql_blas_set_threads(1);
    ql_parallel_for(nt, c.nchunks, gptq_rows, &c);
    ql_blas_set_threads(saved_threads);
    ql_status s = atomic_load(&c.stop) ? ql_fail(QL_ERR_CANCELLED, "cancelled") : QL_OK;
    if (!s) {
        pack_ctx pc = {.c = &c, .deq = deq};
        ql_parallel_for(nt, c.nchunks, pack_range, &pc);
    }

    free(c.A), free(c.B), free(c.O), free(c.qv), free(c.codes), free(c.E), free(c.Wt);
    free(imp), free(U), free(diag), free(dead), free(perm);
    return s;
}

static ql_status gptq_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                               const ql_input_stats *st, const ql_method_opts *o, void *dst) {
    return ql_gptq_quantize(w, nrows, ncols, f, st, o, dst, NULL);
}

/* Mirrors ql_gptq_quantize's allocations: the Cholesky work (n² doubles + n² floats), the transposed weights,
 * codes and (for sequential runs) dequantized values, the lazy batch of errors, the grids, and per worker a
 * block x block slice of U: `block` times the workers is the option-driven term. */
static double gptq_work_bytes(int64_t nrows, int64_t ncols, const ql_format *f, const ql_method_opts *o, char *what,
                              size_t what_cap, char *how, size_t how_cap) {
    (void)f;
    const double n = (double)ncols, r = (double)nrows;
    const double B = (double)QL_MIN(ql_opt_int(o ? o->values : NULL, &ql_method_gptq, "block"), ncols);
    const int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    const double chol = 12.0 * n * n, cols = r * n * (4.0 + 1.0 + 4.0) + 3.0 * 4.0 * r * n / 8.0,
                 batch = 4.0 * B * r + nt * (4.0 * B * B + 4.0 * 128 * 256 + 4.0 * B);
    snprintf(what, what_cap, "a %lldx%lld Hessian factor (%.1f MiB), the weights by column (%.1f MiB) and block=%lld "
                             "x %d workers (%.1f MiB)",
             (long long)ncols, (long long)ncols, chol / 1048576.0, cols / 1048576.0, (long long)B, nt,
             batch / 1048576.0);
    snprintf(how, how_cap, "lower --method-opts block=, use fewer --threads, or quantize this tensor with rtn");
    return chol + cols + batch;
}

static const ql_opt_def gptq_opts[] = {
    {"damp", QL_OPT_FLOAT, 0.01, 0, 10, NULL,
     "Hessian dampening, fraction of the mean diagonal (raised x10 if H is singular)"},
    {"act_order", QL_OPT_BOOL, 0, 0, 1, NULL,
     "1: quantize columns by decreasing H_ii; a block's scales are fixed when GPTQ first reaches it"},
    {"block", QL_OPT_INT, 128, 1, 65536, NULL, "columns per lazy batch (BLAS-3 trailing update)"},
    {"static_groups", QL_OPT_BOOL, 0, 0, 1, NULL,
     "1: fix every block's scales from the original weights before any update (0: from the updated ones)"},
};

const ql_method ql_method_gptq = {
    .work_bytes = gptq_work_bytes,
    .name = "gptq",
    .summary = "GPTQ: column-wise rounding with Hessian error feedback (formats with a code grid)",
    .explain =
        "GPTQ rounds one input column at a time and pushes each column's rounding error onto the columns "
        "not yet rounded, weighted by the inverse Hessian H = Σ x xᵀ of the layer's input. The errors then "
        "cancel in the layer's output instead of adding up. Needs activation statistics with Hessians.",
    .caps = QL_CAP_PER_TENSOR,
    .needs = QL_NEEDS_HESSIAN,
    .opts = gptq_opts,
    .n_opts = (int)QL_ARRAY_LEN(gptq_opts),
    .serves = gptq_serves,
    .quantize_tensor = gptq_quantize,
};
