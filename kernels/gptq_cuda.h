/* gptq_cuda.h — GPTQ on the GPU. ql_cuda_gptq_int: the INTn group formats (int{n}_g{g}[_sym],
 * int{n}_channel) entirely on the device; ql_cuda_gptq_grid_run: any per-column grid with act order and
 * static groups, the block scales fixed by a caller's hook (below). Both follow methods/m_gptq.c's
 * algorithm and arithmetic: H damping + Cholesky
 * (double) + triangular inverse (float) with cuSOLVER, the per-batch column loop as a CUDA kernel (one
 * thread per row; a group's scale and zero fixed from the error-updated weights when GPTQ reaches it,
 * exactly as the format's own quantizer does), the trailing update with cublasSgemm. The chosen values
 * match the CPU method's to rounding: cuBLAS/cuSOLVER sum in other orders than OpenBLAS/LAPACK.
 * Implementation: kernels/gptq_cuda.cu, built only when the Makefile finds nvcc (which defines
 * QL_HAVE_CUDA for C files); without it the functions below are inline stubs that fail with
 * QL_ERR_UNSUPPORTED. Errors: QL_ERR_ARG (shapes, options, Hessian not positive definite),
 * QL_ERR_UNSUPPORTED (no device), QL_ERR_NOMEM (device allocation), QL_ERR_IO (any other CUDA, cuBLAS or
 * cuSOLVER failure, with kernels/gptq_cuda.cu:LINE in the message). Calls are serialized by a lock; they
 * use the current device. Buffers belong to the caller. */
#ifndef QL_GPTQ_CUDA_H
#define QL_GPTQ_CUDA_H

#include <stdbool.h> /* before extern "C": ql_common.h's system headers stay C++-clean */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/ql_common.h"

/* Seconds spent in each phase of one call (wall clock, the device synchronized between phases). */
typedef struct {
    double total;    /* the whole call */
    double upload;   /* allocations + host -> device copies of W and XᵀX */
    double factor;   /* dampened H, Cholesky, triangular inverse (U = chol(H⁻¹) upper) */
    double quantize; /* the batches: column kernel + trailing SGEMM */
    double download; /* packing, transposing, device -> host copies */
    double damp;     /* dampening used, as a fraction of mean(diag H) (raised x10 when H was singular) */
} ql_cuda_gptq_times;


/* GPTQ into any per-column code grid (ggml's block types, INTn, table grids), with act order and static
 * groups: the Hessian work on the device (dampened H permuted into processing order, Cholesky in double,
 * triangular inverse, the column loop with the CPU's rounding arithmetic, the trailing updates as one
 * SGEMM per lazy batch), the format's scale search by the caller's `fix` hook (methods/m_gptq.c hands it
 * the registry's quantizer, so the scales are the format's own choice on the error-updated weights). */
/* A format's block fix on the device (kernels/cuda_api.h: ql_cuda_grid_fix_*): G [rows, len] -> the block's
 * bytes at blocks + r·row_bytes and its sub-blocks' grids at a/b/o[s·ld + r]. */
typedef ql_status (*ql_cuda_gptq_grid_fix_fn)(const float *G, int64_t rows, int64_t len, const float *imp,
                                              void *blocks, int64_t row_bytes, float *a, float *b, float *o,
                                              int64_t ld, void *stream);

typedef struct ql_cuda_gptq_grid {
    int64_t bw;         /* columns per format block (a block's scales are fixed together); cols = one per row */
    int64_t sub;        /* columns per (a, b, o) inside a block; 0 = the whole block */
    int kmin, kmax;     /* stored codes (linear grids) */
    const float *table; /* NULL: value = a·(k + o) + b; else 16 sorted values, value = a·table[k] */
    /* Fix the scales of block blk: G [rows, len] (host, row-major) holds the block's columns brought up to
     * date with every error fed back so far; the hook writes the grids of its nsub sub-blocks to
     * a, b, o [nsub, rows] (host; sub-block s of row r at [s·rows + r]). Called from the calling thread. */
    ql_status (*fix)(void *user, int64_t blk, const float *G, int64_t rows, int64_t len, float *a, float *b,
                     float *o);
    void *user;
    double lam; /* out: the dampening added to diag H (set before the first fix; importance = diag H + lam) */
    /* Optional, the block fix on the device (no host round trip per block): when set (both, the format's
     * ql_format_cuda_ops.grid_fix_dev / _emulated: the run picks the one of its kind), `fix` is not called;
     * the gathered block stays where it is and fix_dev quantizes it with the importance imp [cols] (host;
     * NULL: the dampened diag H + lam, as m_gptq.c) into the format's bytes, and parses its grids.
     * blocks (host, [rows, row_bytes], row_bytes >= the blocks of a row) gets every block's bytes at the
     * end (scales and provisional codes: ql_grid_set_codes writes the chosen codes over them). fixed
     * (optional) is called on the host after each block is queued: progress and cancellation. */
    ql_cuda_gptq_grid_fix_fn fix_dev, fix_emulated;
    const float *imp;
    uint8_t *blocks;
    int64_t row_bytes, block_bytes;
    ql_status (*fixed)(void *user, int64_t blk);
} ql_cuda_gptq_grid;

#if defined(QL_HAVE_CUDA) || defined(__CUDACC__)

/* 1 when a CUDA device can be used (checked once), else 0. */
int ql_cuda_gptq_available(void);

/* One-time setup: CUDA context, cuBLAS and cuSOLVER handles (kept for the process). Optional: the
 * first ql_cuda_gptq_int does it too. *seconds_out (may be NULL) gets the time it took. */
ql_status ql_cuda_gptq_init(double *seconds_out);

/* GPTQ of w [rows, cols] (row-major F32) with the Hessian from xtx [cols, cols] = Σ x xᵀ over n_tokens
 * tokens (H = 2·xtx/n_tokens; n_tokens <= 0 uses xtx as H). Options as the CPU method's: damp (fraction
 * of mean(diag H), in [0, 10]), block (lazy batch width, 1..65536, the method's default is 128).
 * Format: bits in 2..8, group > 0 columns per group (the last may be shorter) or 0 for one group per
 * row, sym = the _sym variant (no zero points); the _mse variants are not supported.
 * Outputs, each optional (NULL): q [rows, cols] the chosen values (what decoding dst gives back),
 * dst the format's bytes (rows of ql_int_row_bytes(cols, bits, group, sym), fmt_int.c's layout),
 * times the phase timings. Inputs are not modified. Dead inputs (H_ii <= 0) quantize to 0, non-finite
 * weights are taken as 0, as on the CPU. */
ql_status ql_cuda_gptq_int(const float *w, int64_t rows, int64_t cols, const double *xtx, int64_t n_tokens,
                           int bits, int group, bool sym, double damp, int block, float *q, void *dst,
                           ql_cuda_gptq_times *times);

/* The same computation on the host: the kernels' per-element code run in loops, LAPACK's dpotrf /
 * strtri and OpenBLAS's sgemm in place of cuSOLVER / cuBLAS with the same arguments. Needs no device:
 * lets tests check the GPU path's logic where there is no GPU. Slow (single thread). */
ql_status ql_cuda_gptq_int_emulate(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                   int64_t n_tokens, int bits, int group, bool sym, double damp, int block,
                                   float *q, void *dst, ql_cuda_gptq_times *times);


/* GPTQ of w [rows, cols] into the grid g (see ql_cuda_gptq_grid), options as the CPU method's (damp,
 * block, static_groups: every block fixed from the weights before any update, by g->fix in block order).
 * perm [cols] (processing position -> column) or NULL for the natural order: the caller's
 * act-order sort, so both paths take the same order. Outputs: codes [rows, cols] (row-major, column order)
 * and, optional, q [rows, cols] the chosen values. Dead inputs and non-finite weights as above. */
ql_status ql_cuda_gptq_grid_run(const float *w, int64_t rows, int64_t cols, const double *xtx, int64_t n_tokens,
                                double damp, int block, const int64_t *perm, bool static_groups,
                                ql_cuda_gptq_grid *g, uint8_t *codes, float *q, ql_cuda_gptq_times *times);
/* The same on the host (see ql_cuda_gptq_int_emulate). */
ql_status ql_cuda_gptq_grid_emulate(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                    int64_t n_tokens, double damp, int block, const int64_t *perm,
                                    bool static_groups, ql_cuda_gptq_grid *g, uint8_t *codes, float *q,
                                    ql_cuda_gptq_times *times);

#else /* built without CUDA */

static inline int ql_cuda_gptq_available(void) { return 0; }
static inline ql_status ql_cuda_gptq_init(double *seconds_out) {
    if (seconds_out) *seconds_out = 0;
    return ql_fail(QL_ERR_UNSUPPORTED, "gptq_cuda: built without CUDA (nvcc was not found)");
}
static inline ql_status ql_cuda_gptq_int(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                         int64_t n_tokens, int bits, int group, bool sym, double damp,
                                         int block, float *q, void *dst, ql_cuda_gptq_times *times) {
    (void)w, (void)rows, (void)cols, (void)xtx, (void)n_tokens, (void)bits, (void)group, (void)sym;
    (void)damp, (void)block, (void)q, (void)dst, (void)times;
    return ql_fail(QL_ERR_UNSUPPORTED, "gptq_cuda: built without CUDA (nvcc was not found)");
}
static inline ql_status ql_cuda_gptq_int_emulate(const float *w, int64_t rows, int64_t cols,
                                                 const double *xtx, int64_t n_tokens, int bits, int group,
                                                 bool sym, double damp, int block, float *q, void *dst,
                                                 ql_cuda_gptq_times *times) {
    return ql_cuda_gptq_int(w, rows, cols, xtx, n_tokens, bits, group, sym, damp, block, q, dst, times);
}

static inline ql_status ql_cuda_gptq_grid_run(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                              int64_t n_tokens, double damp, int block, const int64_t *perm,
                                              bool static_groups, ql_cuda_gptq_grid *g, uint8_t *codes,
                                              float *q, ql_cuda_gptq_times *times) {
    (void)w, (void)rows, (void)cols, (void)xtx, (void)n_tokens, (void)damp, (void)block, (void)perm;
    (void)static_groups, (void)g, (void)codes, (void)q, (void)times;
    return ql_fail(QL_ERR_UNSUPPORTED, "gptq_cuda: built without CUDA (nvcc was not found)");
}
static inline ql_status ql_cuda_gptq_grid_emulate(const float *w, int64_t rows, int64_t cols, const double *xtx,
                                                  int64_t n_tokens, double damp, int block, const int64_t *perm,
                                                  bool static_groups, ql_cuda_gptq_grid *g, uint8_t *codes,
                                                  float *q, ql_cuda_gptq_times *times) {
    return ql_cuda_gptq_grid_run(w, rows, cols, xtx, n_tokens, damp, block, perm, static_groups, g, codes, q,
                                 times);
}

#endif

#ifdef __cplusplus
}
#endif

#endif
