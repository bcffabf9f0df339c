/* gptq_bench.c — `make bench-gptq`: seconds for GPTQ on one 4096x4096 layer with a 4096x4096 Hessian
 * (H = XᵀX of 1024 random tokens with per-channel scales, dampened by GPTQ as usual), int4_g128,
 * 2 OpenBLAS threads. Usage: gptq_bench [rows cols threads format spec]. Prints; asserts nothing. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/format.h"
#include "formats/format_grid.h"
#include "methods/method.h"

#define QL_TEST_RNG_SEED 12345
#include "tests/test_rng.h"

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int threads = argc > 3 ? atoi(argv[3]) : 2;
    const char *fname = argc > 4 ? argv[4] : "int4_g128";
    const char *spec = argc > 5 ? argv[5] : NULL;
    const int64_t ntok = 1024;
    const ql_format *f = ql_format_by_name(fname);
    const ql_method *m = ql_method_by_name("gptq");
    if (!f || !m || rows <= 0 || cols <= 0 || threads <= 0) {
        fprintf(stderr, "usage: gptq_bench [rows cols threads format spec]\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    float *w = malloc((size_t)(rows * cols) * sizeof(float)),
          *w2 = malloc((size_t)(rows * cols) * sizeof(float));
    double *X = malloc((size_t)(ntok * cols) * sizeof(double)),
           *xtx = malloc((size_t)(cols * cols) * sizeof(double));
    void *dst = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
    if (!w || !w2 || !X || !xtx || !dst) {
        fprintf(stderr, "gptq_bench: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)(0.02 * normal());
    for (int64_t c = 0; c < cols; c++) {
        double s = exp(0.5 * normal()) * (c % 501 == 7 ? 30.0 : 1.0);
        for (int64_t t = 0; t < ntok; t++)
            X[t * cols + c] = s * normal();
    }
    double t0 = ql_time_s();
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)ntok, 1.0, X, (int)cols, 0.0, xtx,
                (int)cols);
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < i; j++)
            xtx[i * cols + j] = xtx[j * cols + i];
    double t_h = ql_time_s() - t0;
    ql_input_stats st = {.n = cols, .n_tokens = ntok, .xtx = xtx};
    ql_opt_values parsed;
    if (ql_method_parse_opts(ql_method_by_name("gptq"), spec, &parsed)) {
        fprintf(stderr, "gptq_bench: %s\n", ql_last_error());
        return 2;
    }
    ql_method_opts o = {.values = &parsed, .n_threads = threads};

    memcpy(w2, w, (size_t)(rows * cols) * sizeof(float));
    t0 = ql_time_s();
    ql_status s = ql_format_quantize(f, w2, dst, rows, cols, NULL, threads);
    double t_rtn = ql_time_s() - t0;
    memcpy(w2, w, (size_t)(rows * cols) * sizeof(float));
    t0 = ql_time_s();
    if (!s)
        s = m->quantize_tensor(w2, rows, cols, f, &st, &o, dst);
    double t_gptq = ql_time_s() - t0;
    if (s) {
        fprintf(stderr, "gptq_bench: %s\n", ql_last_error());
        return 1;
    }
    printf("gptq %lldx%lld %s%s%s, %d threads: %.2f s  (rtn %.2f s; building XtX of %lld tokens %.2f s)\n",
           (long long)rows, (long long)cols, f->name, spec ? " " : "", spec ? spec : "", threads, t_gptq,
           t_rtn, (long long)ntok, t_h);
    free(w), free(w2), free(X), free(xtx), free(dst);
    return 0;
}
