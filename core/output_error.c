/* output_error.c — tr(ΔW H ΔWᵀ) in row blocks through one dsymm each, and the relative weight error
 * (core/output_error.h). Rows are independent in dsymm and the trace is summed row after row, so the
 * block size changes neither the result nor its rounding. */
#include "core/output_error.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

double ql_output_error(const float *a, const float *b, const float *col_scale, int64_t rows, int64_t cols,
                       const double *H) {
    const int64_t RB = 64; /* rows per dsymm: two [RB, cols] double buffers */
    double *D = malloc((size_t)(RB * cols) * sizeof(double)), *M = malloc((size_t)(RB * cols) * sizeof(double));
    double tr = -1;
    if (!D || !M) goto out;
    tr = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += RB) {
        const int64_t nr = rows - r0 < RB ? rows - r0 : RB;
        for (int64_t r = 0; r < nr; r++)
            for (int64_t c = 0; c < cols; c++) {
                const int64_t i = (r0 + r) * cols + c;
                D[r * cols + c] = ((double)a[i] - (b ? b[i] : 0.0f)) / (col_scale ? col_scale[c] : 1.0f);
            }
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)nr, (int)cols, 1.0, H, (int)cols, D, (int)cols,
                    0.0, M, (int)cols);
        for (int64_t i = 0; i < nr * cols; i++) tr += D[i] * M[i];
    }
out:
    free(D);
    free(M);
    return tr;
}

double ql_weight_error(const float *w, const float *q, int64_t n) {
    double sw = 0, sd = 0;
    for (int64_t i = 0; i < n; i++) {
        const float d = q[i] - w[i]; /* rounded to float, as a dequantized weight is */
        sw += (double)w[i] * w[i];
        sd += (double)d * d;
    }
    return sw > 0 ? sd / sw : sd > 0 ? INFINITY : 0;
}
