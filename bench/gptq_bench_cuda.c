/* gptq_bench_cuda.c — `make bench-gptq-cuda`: seconds for GPTQ on the GPU (kernels/gptq_cuda.h) on the
 * layer of bench/gptq_bench.c (4096x4096, H = XᵀX of 1024 random tokens with per-channel scales, the same
 * random numbers), int4_g128. The one-time CUDA setup (context, cuBLAS/cuSOLVER handles, a small warm-up
 * run that loads the kernels) is timed and printed apart. Usage: gptq_bench_cuda [rows cols format block].
 * Prints "GPU: not available on this machine" without a CUDA device. Asserts nothing. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/fmt_ext.h"
#include "formats/format.h"
#include "kernels/gptq_cuda.h"

#define QL_TEST_RNG_SEED 12345 /* gptq_bench.c's generator and seed: the same layer */
#include "tests/test_rng.h"

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    const char *fname = argc > 3 ? argv[3] : "int4_g128";
    int block = argc > 4 ? atoi(argv[4]) : 128;
    const int64_t ntok = 1024;
    const ql_format *f = ql_format_by_name(fname);
    int bits = 0, group = 0;
    bool sym = false, mse = false;
    if (!f || !ql_int_format_params(f, &bits, &group, &sym, &mse) || mse || rows <= 0 || cols <= 0) {
        fprintf(stderr, "usage: gptq_bench_cuda [rows cols int{n}_g{g}[_sym]|int{n}_channel block]\n");
        return 2;
    }
    if (!ql_cuda_gptq_available()) {
        printf("GPU: not available on this machine\n");
        return 0;
    }
    double t_init = 0, t0 = ql_time_s();
    if (ql_cuda_gptq_init(&t_init)) {
        fprintf(stderr, "gptq_bench_cuda: %s\n", ql_last_error());
        return 1;
    }
    { /* warm-up: every kernel and library routine once, on 256x256 */
        enum { WN = 256 };
        float *ww = calloc(WN * WN, sizeof(float)), *wq = malloc(sizeof(float) * WN * WN);
        double *wh = calloc(WN * WN, sizeof(double));
        for (int i = 0; ww && wh && i < WN; i++)
            wh[i * WN + i] = 1.0 + i % 3, ww[i * WN + (i * 7) % WN] = 0.5f;
        if (!ww || !wq || !wh ||
            ql_cuda_gptq_int(ww, WN, WN, wh, 0, bits, group, sym, 0.01, block, wq, NULL, NULL)) {
            fprintf(stderr, "gptq_bench_cuda: warm-up: %s\n", ql_last_error());
            return 1;
        }
        free(ww), free(wq), free(wh);
    }
    double t_setup = ql_time_s() - t0;

    float *w = malloc((size_t)(rows * cols) * sizeof(float)),
          *q = malloc((size_t)(rows * cols) * sizeof(float));
    double *X = malloc((size_t)(ntok * cols) * sizeof(double)),
           *xtx = malloc((size_t)(cols * cols) * sizeof(double));
    void *dst = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
    if (!w || !q || !X || !xtx || !dst) {
        fprintf(stderr, "gptq_bench_cuda: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)(0.02 * normal());
    for (int64_t c = 0; c < cols; c++) {
        double s = exp(0.5 * normal()) * (c % 501 == 7 ? 30.0 : 1.0);
        for (int64_t t = 0; t < ntok; t++)
            X[t * cols + c] = s * normal();
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)ntok, 1.0, X, (int)cols, 0.0, xtx,
                (int)cols);
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < i; j++)
            xtx[i * cols + j] = xtx[j * cols + i];

    printf("GPU: CUDA setup %.2f s (context + cuBLAS/cuSOLVER handles %.2f s, 256x256 warm-up), not counted "
           "below\n",
           t_setup, t_init);
    ql_cuda_gptq_times tm[2];
    for (int run = 0; run < 2; run++) {
        if (ql_cuda_gptq_int(w, rows, cols, xtx, ntok, bits, group, sym, 0.01, block, q, dst, &tm[run])) {
            fprintf(stderr, "gptq_bench_cuda: %s\n", ql_last_error());
            return 1;
        }
    }
    printf(
        "GPU: gptq %lldx%lld %s block %d: %.3f s  (upload %.3f, H + Cholesky + inverse %.3f, columns %.3f, "
        "download %.3f; second run %.3f s)\n",
        (long long)rows, (long long)cols, f->name, block, tm[0].total, tm[0].upload, tm[0].factor,
        tm[0].quantize, tm[0].download, tm[1].total);
    free(w), free(q), free(X), free(xtx), free(dst);
    return 0;
}
