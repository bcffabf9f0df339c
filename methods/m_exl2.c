/* m_exl2.c — `--method exl2`: ExLlamaV2's AdaptiveGPTQ for the EXL2 formats (formats/fmt_exl2.c),
 * written from exllamav2/conversion/adaptivegptq.py and exllamav2_ext/cpp/quantize_func.cpp:
 *   1. the inputs are ordered by decreasing H_ii (act-order; H = XᵀX of the layer input), so the first
 *      groups — the ones a mix gives more bits — hold the inputs that matter most;
 *   2. H is damped by damp·mean(diag H) (ExLlamaV2's percdamp 0.12) and U = the upper Cholesky factor of
 *      H⁻¹ in that order (raised tenfold, up to 4 times, if H is still not positive definite);
 *   3. group by group, in order: the group's scales are fitted to its CURRENT weights (error from the
 *      groups before already added), then each input row is rounded and its error e = (w - q)/U_kk is
 *      pushed onto the rows after it inside the group (w_j -= U_kj·e), and after the group onto every
 *      later row at once (one sgemm: W[b:] -= U[a:b, b:]ᵀ·E).
 * Error feedback therefore crosses the bit-width boundaries: the 2-bit groups absorb what the 3-bit
 * groups before them could not represent. Runs in float like ExLlamaV2 (the Cholesky in double).
 * Thread-safety: reentrant; sets OpenBLAS's thread count to n_threads while it runs. */
#include "formats/fmt_exl2.h"
#include "methods/method.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const ql_method ql_method_exl2;

static bool exl2_serves(const ql_format *f, char *why, size_t cap) {
    if (ql_exl2_format_mix(f, NULL)) return true;
    snprintf(why, cap, "%s is not an EXL2 format (exl2 writes the exl2_* formats; qlab formats lists them)", f->name);
    return false;
}

/* U (float, row-major upper) = chol(Hp⁻¹)ᵀ, Hp = H permuted + lam on the diagonal. */
static bool inverse_cholesky(const double *xtx, int64_t K, const int64_t *perm, double lam, double *P, float *U) {
    for (int64_t a = 0; a < K; a++)
        for (int64_t b = 0; b < K; b++) P[a * K + b] = xtx[perm[a] * K + perm[b]] + (a == b ? lam : 0.0);
    /* row-major = column-major transposed; P is symmetric, so 'L' here is the row-major upper */
    if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)K, P, (lapack_int)K)) return false;
    if (LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', (lapack_int)K, P, (lapack_int)K)) return false;
    for (int64_t a = 0; a < K; a++) /* mirror the lower triangle of H⁻¹ */
        for (int64_t b = a + 1; b < K; b++) P[a * K + b] = P[b * K + a];
    if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)K, P, (lapack_int)K)) return false;
    for (int64_t a = 0; a < K; a++)
        for (int64_t b = 0; b < K; b++) U[a * K + b] = b >= a ? (float)P[a * K + b] : 0.0f;
    return true;
}

static ql_status exl2_quantize_tensor(float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                                      const ql_input_stats *st, const ql_method_opts *o, void *dst) {
    const ql_opt_values *ov = o ? o->values : NULL;
    const double damp = ql_opt_float(ov, &ql_method_exl2, "damp");
    const bool act = ql_opt_bool(ov, &ql_method_exl2, "act_order");
    const int64_t K = ncols, N = nrows;
    ql_exl2_mix mix;
    char why[256];
    if (!exl2_serves(f, why, sizeof why) || !ql_exl2_format_mix(f, &mix)) return ql_fail(QL_ERR_UNSUPPORTED, "exl2: %s", why);
    ql_exl2_offsets off;
    if (!ql_exl2_offsets_of(&mix, K, N, &off))
        return ql_fail(QL_ERR_ARG, "exl2: %s cannot store a %lld x %lld tensor (both dimensions must be multiples of 32, rows at most 65535)",
                       f->name, (long long)N, (long long)K);
    if (!st || !st->xtx || st->n != K)
        return ql_fail(QL_ERR_ARG, "exl2: needs the Hessian X^T X of the layer input (%lld columns)", (long long)K);
    const ql_progress *prog = o ? o->progress : NULL;
    int nt = o && o->n_threads > 0 ? o->n_threads : 1;

    int64_t *perm = ql_malloc((size_t)K * 2 * sizeof *perm);
    double *diag = ql_malloc((size_t)K * sizeof *diag), mean = 0;
    for (int64_t k = 0; k < K; k++) {
        double h = st->xtx[k * K + k];
        diag[k] = isfinite(h) && h > 0 ? h : 0.0;
        mean += diag[k];
        perm[k] = k;
    }
    mean = mean > 0 ? mean / (double)K : 1.0;
    if (act) ql_exl2_order_desc(perm, K, diag, perm + K);
    free(diag);

    int saved = ql_blas_get_threads();
    ql_blas_set_threads(nt);
    double *P = ql_malloc((size_t)(K * K) * sizeof(double));
    float *U = ql_malloc((size_t)(K * K) * sizeof(float));
    bool ok = false;
    double lam = damp > 0 ? damp * mean : 1e-6 * mean;
    for (int attempt = 0; attempt < 5 && !ok; attempt++, lam *= 10) ok = inverse_cholesky(st->xtx, K, perm, lam, P, U);
    free(P);
    if (!ok) {
        free(U), free(perm);
        ql_blas_set_threads(saved);
        return ql_fail(QL_ERR_ARG, "exl2: Hessian not positive definite even with dampening %g", lam / mean);
    }

    ql_exl2_group *g = ql_malloc((size_t)off.G * sizeof *g);
    ql_exl2_layout(&mix, K, g);
    float *wt = ql_malloc((size_t)(K * N) * sizeof(float)), *E = ql_malloc((size_t)(128 * N) * sizeof(float));
    float *scale = ql_malloc((size_t)N * sizeof(float)), *q = ql_malloc((size_t)N * sizeof(float));
    uint8_t *codes = ql_malloc((size_t)(K * N)), *qs = ql_malloc((size_t)(off.G * N));
    uint16_t *smax = ql_malloc((size_t)off.G * sizeof *smax);
    for (int64_t p = 0; p < K; p++)
        for (int64_t n = 0; n < N; n++) {
            float v = w[n * K + perm[p]];
            wt[p * N + n] = isfinite(v) ? v : 0.0f; /* the error of a non-finite weight is not fed forward */
        }
    ql_status s = QL_OK;
    for (int64_t i = 0; i < off.G; i++) {
        if (ql_progress_cancelled(prog)) {
            s = ql_fail(QL_ERR_CANCELLED, "cancelled");
            break;
        }
        const int64_t a = g[i].row, b = a + g[i].rows;
        ql_exl2_fit_group(wt + a * N, g[i].rows, N, g[i].bits, qs + i * N, &smax[i], scale);
        for (int64_t k = a; k < b; k++) {
            float *row = wt + k * N, *e = E + (k - a) * N;
            ql_exl2_round_row(row, scale, g[i].bits, N, codes + k * N, q);
            const float d = U[k * K + k];
            for (int64_t n = 0; n < N; n++) e[n] = (row[n] - q[n]) / d;
            for (int64_t j = k + 1; j < b; j++) {
                const float c = U[k * K + j];
                float *rj = wt + j * N;
                for (int64_t n = 0; n < N; n++) rj[n] -= c * e[n];
            }
        }
        if (b < K)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(K - b), (int)N, (int)(b - a), -1.0f,
                        U + a * K + b, (int)K, E, (int)N, 1.0f, wt + b * N, (int)N);
        ql_progress_report(prog, i + 1, off.G, "exl2");
    }
    ql_blas_set_threads(saved);
    if (!s) ql_exl2_pack(&mix, K, N, perm, qs, smax, codes, dst);
    free(g), free(wt), free(E), free(scale), free(q), free(codes), free(qs), free(smax), free(U), free(perm);
    return s;
}

static const ql_opt_def exl2_opts[] = {
    {"damp", QL_OPT_FLOAT, 0.12, 0, 10, NULL, "Hessian dampening, fraction of the mean diagonal (ExLlamaV2: 0.12)"},
    {"act_order", QL_OPT_BOOL, 1, 0, 1, NULL,
     "1: inputs by decreasing H_ii, so the higher-bit groups get the inputs that matter most (ExLlamaV2 always does)"},
};

const ql_method ql_method_exl2 = {
    .name = "exl2",
    .summary = "ExLlamaV2's adaptive GPTQ for the EXL2 mixed-bit formats",
    .explain = "For the exl2_* formats: the inputs are sorted by how much activation they carry, the first "
               "share gets the higher bit width, and each group's rounding error is pushed onto the groups "
               "after it through the inverse Hessian, as ExLlamaV2's converter does. Needs statistics with "
               "Hessians.",
    .caps = QL_CAP_PER_TENSOR,
    .needs = QL_NEEDS_HESSIAN,
    .opts = exl2_opts,
    .n_opts = (int)QL_ARRAY_LEN(exl2_opts),
    .serves = exl2_serves,
    .quantize_tensor = exl2_quantize_tensor,
};
