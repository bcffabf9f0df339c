/* m_quip.c — QuIP# (Tseng et al. 2024) without fine-tuning: incoherence processing (randomized Hadamard
 * transforms on both sides, kernels/hadamard.h), then BlockLDLQ into the E8P formats of formats/fmt_quip.c
 * (e8p, e8p_rvq3, e8p_rvq4) with their per-tensor scales.
 *
 * Numerics. In the rotated basis the input Hessian is H̃ = H_in·S_in·H·S_in·H_inᵀ (H = XᵀX in double,
 * the scale of H does not matter), damped by damp·mean(diag H̃) (QuIP#'s sigma_reg = 1e-2; raised x10
 * up to 4 times if the Cholesky fails). With H̃ = C·Cᵀ (Cholesky, double) and D = blockdiag(C_kk·C_kkᵀ),
 * L = C·blockdiag(C_kk)⁻¹ is unit block-lower-triangular with H̃ = L·D·Lᵀ over blocks of 8 columns (one
 * E8P vector). For each row, the output error e·H̃·eᵀ = Σ_k (e·L)_k·D_k·(e·L)_kᵀ, and
 * (e·L)_k = e_k + Σ_{j>k} e_j·L_jk: so blocks go from the last to the first, each rounding the target
 * W̃_k + Σ_{j>k} (W̃_j − Ŵ_j)·L_jk to the nearest codeword (one sgemm per block of 8 columns). QuIP#'s
 * extra coordinate-descent passes and fine-tuning are not done. The scales are the format's own
 * (ql_quip_scales on the rotated weights), so e8p with RTN and with quip differ only in LDLQ.
 * Rows are independent given L: n_threads workers take 64-row ranges through all blocks (one OpenBLAS
 * thread each). Thread-safety: reentrant. */
#include "methods/method.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/parallel.h"
#include "formats/fmt_quip.h"
#include "kernels/hadamard.h"

static bool quip_serves(const ql_format *f, char *why, size_t cap) {
    if (ql_quip_stage2(f, NULL)) return true;
    if (why && cap) snprintf(why, cap, "quip writes the E8P lattice formats (e8p, e8p_rvq3, e8p_rvq4), not %s", f->name);
    return false;
}

static const ql_opt_def quip_opts[] = {
    {"damp", QL_OPT_FLOAT, 0.01, 0, 10, NULL,
     "Hessian dampening, fraction of the mean diagonal of the rotated Hessian (raised x10 if singular)"},
    {"scale_search", QL_OPT_BOOL, 1, 0, 1, NULL,
     "1: run LDLQ at 0.9x..1.35x the format's scales and keep the least Hessian-weighted error (5x the time)"},
    {"ldlq", QL_OPT_BOOL, 1, 0, 1, NULL, "0: round each 8-vector to its nearest codeword (rotation alone, no error feedback)"},
};

extern const ql_method ql_method_quip;

#define LDLQ_ROWS 64 /* rows per work item */

typedef struct {
    const float *w, *L;
    uint16_t *c1, *c2;
    float *err; /* [nrows, n]: W̃ − Ŵ, written by the workers */
    int64_t n, nb, nrows;
    float s1, s2;
    int stage2;
    const ql_progress *prog;
    atomic_int stop;
    atomic_llong done;
} ldlq_ctx;

/* BlockLDLQ of rows [item·LDLQ_ROWS, ...): blocks from the last to the first; E holds W̃ − Ŵ of the blocks done */
static void ldlq_rows(void *ctx, int worker, int64_t item) {
    (void)worker;
    ldlq_ctx *c = ctx;
    const int64_t r0 = item * LDLQ_ROWS, nr = QL_MIN(LDLQ_ROWS, c->nrows - r0), n = c->n, nb = c->nb;
    if (atomic_load(&c->stop)) return;
    float *E = ql_calloc((size_t)(nr * n), sizeof(float)), *T = ql_malloc((size_t)(nr * 8) * sizeof(float));
    const float *w = c->w + r0 * n;
    for (int64_t k = nb - 1; k >= 0; k--) {
        const int64_t kb = 8 * k, rest = n - kb - 8;
        for (int64_t r = 0; r < nr; r++) memcpy(T + r * 8, w + r * n + kb, 8 * sizeof(float));
        if (rest > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, 8, (int)rest, 1.0f, E + kb + 8, (int)n,
                        c->L + (kb + 8) * n + kb, (int)n, 1.0f, T, 8);
        for (int64_t r = 0; r < nr; r++) {
            float q[8];
            const int64_t v = (r0 + r) * nb + k;
            ql_quip_q8(T + r * 8, c->s1, c->s2, c->stage2, &c->c1[v], &c->c2[v], q);
            for (int i = 0; i < 8; i++) E[r * n + kb + i] = w[r * n + kb + i] - q[i];
        }
    }
    memcpy(c->err + r0 * n, E, (size_t)(nr * n) * sizeof(float));
    free(E), free(T);
    long long d = atomic_fetch_add(&c->done, nr) + nr;
    if (ql_progress_cancelled(c->prog)) atomic_store(&c->stop, 1);
    else ql_progress_report(c->prog, d, c->nrows, "quip");
}

static ql_status quip_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f, const ql_input_stats *st,
                               const ql_method_opts *o, void *dst) {
    int stage2 = 0;
    if (!ql_quip_stage2(f, &stage2)) return ql_fail(QL_ERR_ARG, "quip cannot write %s", f->name);
    char why[256];
    if (!f->shape_ok(ncols, nrows, why, sizeof why))
        return ql_fail(QL_ERR_ARG, "quip: %s cannot store a %lld x %lld tensor: %s", f->name, (long long)nrows,
                       (long long)ncols, why);
    const ql_opt_values *v = o ? o->values : NULL;
    const bool ldlq = ql_opt_bool(v, &ql_method_quip, "ldlq");
    const double damp = ql_opt_float(v, &ql_method_quip, "damp");
    if (ldlq && (!st || !st->xtx || st->n != ncols))
        return ql_fail(QL_ERR_ARG, "quip: needs the Hessian X^T X of the layer input (%lld columns): collect "
                                   "statistics with Hessians (qlab stats --hessian) and pass --stats",
                       (long long)ncols);
    const int64_t n = ncols, nb = n / 8, nvec = nrows * nb;
    const int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    const ql_progress *prog = o ? o->progress : NULL;

    ql_quip_sanitize(w, nrows * n);
    ql_rht_matrix(w, nrows, n, QL_QUIP_SEED, false, NULL, 0);
    float s1, s2;
    ql_quip_scales(w, nrows * n, stage2, &s1, &s2);
    uint16_t *c1 = ql_malloc((size_t)nvec * 2), *c2 = ql_malloc((size_t)nvec * 2);

    if (!ldlq) {
        for (int64_t k = 0; k < nvec; k++) {
            float q[8];
            ql_quip_q8(w + 8 * k, s1, s2, stage2, &c1[k], &c2[k], q);
        }
        ql_quip_pack(dst, nvec, stage2, s1, s2, QL_QUIP_SEED, c1, c2);
        free(c1), free(c2);
        return QL_OK;
    }

    /* rotated, damped Hessian and its Cholesky factor */
    double *H = ql_malloc((size_t)(n * n) * sizeof(double));
    memcpy(H, st->xtx, (size_t)(n * n) * sizeof(double));
    for (int64_t i = 0; i < n * n; i++)
        if (!isfinite(H[i])) H[i] = 0;
    ql_rht_hessian(H, n, QL_QUIP_SEED, NULL, 0);
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += H[i * n + i];
    mean = mean > 0 ? mean / (double)n : 1.0;
    double *C = ql_malloc((size_t)(n * n) * sizeof(double));
    lapack_int info = 1;
    double lam = damp * mean;
    for (int attempt = 0; attempt < 5 && info != 0; attempt++) {
        memcpy(C, H, (size_t)(n * n) * sizeof(double));
        for (int64_t i = 0; i < n; i++) C[i * n + i] += lam;
        info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)n, C, (lapack_int)n);
        if (info != 0) lam = lam > 0 ? lam * 10 : 1e-6 * mean;
    }
    float *Hf = ql_malloc((size_t)(n * n) * sizeof(float)); /* H̃ for the output error of each scale */
    for (int64_t i = 0; i < n * n; i++) Hf[i] = (float)(H[i] / mean);
    free(H);
    if (info != 0) {
        free(C), free(c1), free(c2), free(Hf);
        return ql_fail(QL_ERR_ARG, "quip: Hessian not positive definite even with dampening %g", lam / mean);
    }
    /* L[j, kb..kb+8) = C[j, kb..kb+8) · C_kk⁻¹ for rows j below block k (float, row-major [n, n]) */
    float *L = ql_calloc((size_t)(n * n), sizeof(float));
    for (int64_t k = 0; k < nb; k++) {
        const int64_t kb = 8 * k;
        double inv[8][8] = {{0}};
        for (int c = 0; c < 8; c++) { /* column c of C_kk⁻¹ by forward substitution */
            for (int r = 0; r < 8; r++) {
                double s = r == c ? 1.0 : 0.0;
                for (int t = 0; t < r; t++) s -= C[(kb + r) * n + kb + t] * inv[t][c];
                inv[r][c] = s / C[(kb + r) * n + kb + r];
            }
        }
        for (int64_t j = kb + 8; j < n; j++)
            for (int c = 0; c < 8; c++) {
                double s = 0;
                for (int t = c; t < 8; t++) s += C[j * n + kb + t] * inv[t][c];
                L[j * n + kb + c] = (float)s;
            }
    }
    free(C);

    /* rows are independent given L: workers take ranges of rows through every block, one BLAS thread each.
     * With scale_search, LDLQ runs at several multiples of the format's scales (error feedback makes the
     * targets larger than the rotated weights, so rounding's best scale is not LDLQ's) and the codes with
     * the least tr(ΔW̃ H̃ ΔW̃ᵀ) are kept. */
    static const float mults[] = {1.0f, 0.9f, 1.1f, 1.2f, 1.35f};
    const int nm = ql_opt_bool(v, &ql_method_quip, "scale_search") ? (int)QL_ARRAY_LEN(mults) : 1;
    float *err = ql_malloc((size_t)(nrows * n) * sizeof(float)), *eh = ql_malloc((size_t)(nrows * n) * sizeof(float));
    uint16_t *b1 = ql_malloc((size_t)nvec * 2), *b2 = ql_malloc((size_t)nvec * 2);
    double best = INFINITY;
    float bs1 = s1, bs2 = s2;
    ql_status s = QL_OK;
    int saved = ql_blas_get_threads();
    for (int mi = 0; mi < nm && !s; mi++) {
        ldlq_ctx lc = {.w = w, .L = L, .c1 = c1, .c2 = c2, .err = err, .n = n, .nb = nb, .nrows = nrows,
                       .s1 = s1 * mults[mi], .s2 = s2 * mults[mi], .stage2 = stage2, .prog = prog};
        ql_blas_set_threads(1);
        ql_parallel_items(nt, (nrows + LDLQ_ROWS - 1) / LDLQ_ROWS, ldlq_rows, &lc);
        ql_blas_set_threads(nt);
        if (atomic_load(&lc.stop)) {
            s = ql_fail(QL_ERR_CANCELLED, "cancelled");
            break;
        }
        double e = 0;
        if (nm > 1) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nrows, (int)n, (int)n, 1.0f, err, (int)n, Hf,
                        (int)n, 0.0f, eh, (int)n);
            for (int64_t i = 0; i < nrows * n; i++) e += (double)err[i] * eh[i];
        }
        if (e < best) {
            best = e, bs1 = lc.s1, bs2 = lc.s2;
            memcpy(b1, c1, (size_t)nvec * 2);
            memcpy(b2, c2, (size_t)nvec * 2);
        }
    }
    ql_blas_set_threads(saved);
    if (!s) ql_quip_pack(dst, nvec, stage2, bs1, bs2, QL_QUIP_SEED, b1, b2);
    free(err), free(eh), free(b1), free(b2), free(Hf);
    free(L), free(c1), free(c2);
    return s;
}

/* Mirrors quip_quantize: the rotated Hessian, its factor and two float copies (24 n² bytes), the error and
 * its Hessian product (8 bytes per weight) and four code vectors; `ldlq=0` needs only the codes. */
static double quip_work_bytes(int64_t nrows, int64_t ncols, const ql_format *f, const ql_method_opts *o, char *what,
                              size_t what_cap, char *how, size_t how_cap) {
    (void)f;
    const double n = (double)ncols, r = (double)nrows, codes = 4.0 * 2.0 * r * n / 8.0;
    const bool ldlq = ql_opt_bool(o ? o->values : NULL, &ql_method_quip, "ldlq");
    const double hess = ldlq ? 24.0 * n * n : 0, err = ldlq ? 8.0 * r * n : 0;
    snprintf(what, what_cap, "a %lldx%lld rotated Hessian and its factor (%.1f MiB), LDLQ errors (%.1f MiB)",
             (long long)ncols, (long long)ncols, hess / 1048576.0, err / 1048576.0);
    snprintf(how, how_cap, "use --method-opts ldlq=0 (no error feedback) or quantize this tensor with rtn");
    return hess + err + codes;
}

const ql_method ql_method_quip = {
    .work_bytes = quip_work_bytes,
    .name = "quip",
    .summary = "QuIP#: Hadamard incoherence + E8P lattice codes + BlockLDLQ (e8p, e8p_rvq3, e8p_rvq4)",
    .explain =
        "QuIP# rotates each weight matrix on both sides with randomized Hadamard transforms, so no weight "
        "sticks out, then codes every 8 rotated weights as one point of the E8 lattice (2 bits per weight, "
        "3 or 4 with a residual stage). Like GPTQ, each block's rounding error is fed forward through the "
        "calibration Hessian (LDLQ). The stored weights are the rotated ones; qlab decodes them rotated "
        "back. Needs activation statistics with Hessians. (No fine-tuning, unlike the paper's best results.)",
    .caps = QL_CAP_PER_TENSOR | QL_CAP_RUNTIME_TRANSFORM,
    .needs = QL_NEEDS_HESSIAN,
    .opts = quip_opts,
    .n_opts = (int)QL_ARRAY_LEN(quip_opts),
    .serves = quip_serves,
    .quantize_tensor = quip_quantize,
};
