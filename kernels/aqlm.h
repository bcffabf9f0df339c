/* aqlm.h — additive quantization (AQLM, Egiazarian et al. 2024): the storage layout, the scalar reference
 * decoder and its AVX2 twin, and the encoder that learns codebooks, codes and scales for one weight matrix.
 *
 * A weight row r is cut into groups of QL_AQLM_GROUP = 8 consecutive inputs (a short last group when the row
 * length is not a multiple of 8); group j of row r is
 *     W[r, 8j .. 8j+7] ≈ s_r · (C_0[b_{r,j,0}] + C_1[b_{r,j,1}] + ... + C_{M-1}[b_{r,j,M-1}])
 * with M codebooks of K = 2^B vectors of 8 values each, shared by the whole tensor, and one scale per row.
 * Tensor bytes (little-endian, no padding):
 *     f16 codebooks[M][K][8] | f16 scales[nrows] | codes[nrows][ngroups][M]  (u8 when B <= 8, else u16)
 * Decoding sums the M codewords in codebook order in float, then multiplies by the scale (no FMA), so every
 * implementation gives the same floats.
 *
 * The encoder minimises the output error tr((W − Ŵ) H (W − Ŵ)ᵀ) for a symmetric positive semi-definite H (the
 * calibration Hessian XᵀX, or a diagonal of importance weights, or the identity): residual k-means start, then
 * alternations of (1) beam search over each group's M codes (Gauss–Seidel over groups, the error's gradient
 * R·H kept up to date), (2) a codebook update — exact least squares one codebook at a time (LAPACKE), or Adam
 * steps on every codebook — and (3) the closed-form optimal scale of every row. Codebooks and scales are
 * rounded to f16 after each update and the loss is always that of the stored values; a step that would raise
 * it is undone, so the loss never increases. Work is split over n_threads (base/parallel.h) and OpenBLAS.
 * Deterministic for a given thread count. */
#ifndef QL_AQLM_H
#define QL_AQLM_H

#include "base/ql_common.h"

#define QL_AQLM_GROUP 8

/* Bytes of a [nrows, ncols] tensor with M codebooks of 2^B entries; -1 when a size overflows or is invalid. */
int64_t ql_aqlm_tensor_bytes(int M, int B, int64_t ncols, int64_t nrows);

/* Scalar reference decoder / its AVX2 twin (bit-identical; the twin falls back to the reference on CPUs
 * without AVX2). src is ql_aqlm_tensor_bytes(M, B, ncols, nrows) bytes. */
void ql_aqlm_dequantize_ref(int M, int B, const void *src, float *dst, int64_t nrows, int64_t ncols);
void ql_aqlm_dequantize_avx2(int M, int B, const void *src, float *dst, int64_t nrows, int64_t ncols);

/* ---- the encoder ---- */

typedef enum { QL_AQLM_UPDATE_LS = 0, QL_AQLM_UPDATE_ADAM = 1 } ql_aqlm_update;

typedef struct ql_aqlm_params {
    int M, B;
    int beam;          /* beam width of the code search (1 = greedy coordinate descent) */
    int init_iters;    /* k-means iterations per codebook at the start */
    ql_aqlm_update update;
    int adam_steps;    /* Adam steps per alternation (update = ADAM) */
    double lr;         /* Adam learning rate, in units of the row-normalised weights */
    uint64_t seed;     /* k-means sampling */
    int n_threads;
    const ql_progress *progress; /* only its cancel flag is read here */
} ql_aqlm_params;

/* The learned state of one tensor (codebooks and scales already f16-rounded, as stored). */
typedef struct ql_aqlm_state {
    int M, B, K;
    int64_t nrows, ncols, ngroups;
    float *codebooks; /* [M][K][8] */
    float *scales;    /* [nrows] */
    uint16_t *codes;  /* [nrows][ngroups][M] */
} ql_aqlm_state;

typedef struct ql_aqlm_solver ql_aqlm_solver;

/* w [nrows, ncols] (NaN read as 0, infinities and huge values clamped to what f16 codebooks times f16 scales
 * reach). h: NULL, or [ncols, ncols] row-major (full Hessian); hdiag: NULL, or [ncols] (diagonal weights);
 * both NULL = identity. The solver copies what it needs. NULL with ql_last_error on bad arguments / memory. */
ql_aqlm_solver *ql_aqlm_solver_new(const float *w, int64_t nrows, int64_t ncols, const float *h, const float *hdiag,
                                   const ql_aqlm_params *p);
void ql_aqlm_solver_free(ql_aqlm_solver *s);
/* Residual k-means start and optimal scales. QL_ERR_CANCELLED when the progress's cancel flag is set. */
ql_status ql_aqlm_init(ql_aqlm_solver *s);
/* One alternation: codes (beam search), codebooks, scales. On cancel the state is left as it was before the
 * call (QL_ERR_CANCELLED). */
ql_status ql_aqlm_alternate(ql_aqlm_solver *s);
/* Only the code search (one sweep with the given beam width): the tests compare beam widths with it. */
ql_status ql_aqlm_encode_pass(ql_aqlm_solver *s, int beam);
/* The current loss tr((W − Ŵ) H (W − Ŵ)ᵀ) of the stored values. */
double ql_aqlm_loss(const ql_aqlm_solver *s);
/* The state, owned by the solver; a caller may overwrite it from a checkpoint and then call ql_aqlm_refresh. */
ql_aqlm_state *ql_aqlm_solver_state(ql_aqlm_solver *s);
ql_status ql_aqlm_refresh(ql_aqlm_solver *s);

/* The best of the M·K codewords for one group, by beam search over the M codebooks (tests): returns the
 * change of the loss of replacing codes[] by the chosen ones (<= 0; codes updated in place). g: the
 * gradient slice (R·H) of the group, hjj: the group's 8×8 Hessian block, s: the row scale. */
double ql_aqlm_search_group(const float *codebooks, int M, int K, const float *hjj, const float *g, float s,
                            int beam, uint16_t *codes);

/* The least-squares matrix of codebook m's update: the upper triangle (8×8 blocks (k, k2) with k2 >= k, which
 * is all dposv('U') reads) of A = Σ_r s_r² S_rᵀ H S_r, P = K·8 unknowns, into A [P][P], which the caller
 * zeroes. h: the full H [n][n] with n = ngroups·8, or NULL and hd [n] its diagonal; codes
 * [nrows][ngroups][M]. The reference loops row, group, group (rows·n² work streaming all of H per row); the
 * fast assembly visits, for each codeword band and group j, the rows whose code at j falls in the band
 * (counting sort), each row's groups ordered by their code so only blocks k2 >= k are touched: H's 8-row
 * block j and the band's rows of A stay in cache. Every entry is summed over (group j, row, group j2) in
 * that order, whatever the thread count, so it agrees with the reference (row, group, group) to rounding
 * only (tests/test_aqlm.c bounds the difference); its AVX2 scatter is bit-identical to the plain one.
 * QL_ERR_NOMEM when the fast assembly's index (rows·ngroups·6 bytes) cannot be allocated. */
ql_status ql_aqlm_ls_assemble(const float *h, const float *hd, int64_t ngroups, const uint16_t *codes, int M, int K,
                              int m, int64_t nrows, const float *scales, int n_threads, double *A);
void ql_aqlm_ls_assemble_ref(const float *h, const float *hd, int64_t ngroups, const uint16_t *codes, int M, int K,
                             int m, int64_t nrows, const float *scales, double *A);
/* The fast assembly's inner step, AVX2 twin (kernels/aqlm_avx2.c) of the plain loop in kernels/aqlm.c, on
 * 8×8 blocks stored as 64 contiguous values: for i < cnt, block k2[i] of ab (doubles) += s2 · block j2[i] of
 * hb (floats), each value as ab[..] += s2 · (double)hb[..], rounded as the plain loop rounds it. */
void ql_aqlm_ls_scatter_avx2(double *ab, const float *hb, double s2, const int32_t *j2, const uint16_t *k2,
                             int64_t cnt);

/* Pack the state into tensor bytes (ql_aqlm_tensor_bytes) / read them back (sizes from the state's fields,
 * which the caller sets; buffers allocated here). */
void ql_aqlm_pack(const ql_aqlm_state *st, void *dst);
ql_status ql_aqlm_state_alloc(ql_aqlm_state *st, int M, int B, int64_t nrows, int64_t ncols);
void ql_aqlm_state_free(ql_aqlm_state *st);
void ql_aqlm_unpack(const void *src, ql_aqlm_state *st);

/* ---- the continuous parameters with the codes fixed (end-to-end fine-tuning, `qlab qat --tune codebooks`) ----
 * theta = the M·K·8 codebook values, then the nrows row scales (ql_aqlm_theta_len). Decoding from theta with
 * as_stored rounds every value to f16 first and sums in float exactly as ql_aqlm_dequantize_ref does (what a
 * file with theta written into it decodes to); without, it is the exact function in double that the gradient
 * describes. The gradient is taken straight through the f16 rounding. */
int64_t ql_aqlm_theta_len(int M, int B, int64_t nrows);
void ql_aqlm_theta_get(int M, int B, const void *src, int64_t nrows, double *theta);
void ql_aqlm_theta_decode(int M, int B, const void *src, const double *theta, int64_t nrows, int64_t ncols,
                          bool as_stored, double *w);
/* dtheta += d loss / d theta for dw = d loss / d w [nrows, ncols] */
void ql_aqlm_theta_backward(int M, int B, const void *src, const double *theta, int64_t nrows, int64_t ncols,
                            const double *dw, double *dtheta);
/* theta written into the tensor bytes (f16), the codes untouched */
void ql_aqlm_theta_set(int M, int B, void *dst, const double *theta, int64_t nrows);

/* Codeword use: counts[m*K + k] = how many groups use codeword k of codebook m (the catalogue's histogram). */
void ql_aqlm_code_usage(int M, int B, const void *src, int64_t nrows, int64_t ncols, uint32_t *counts);

#endif
