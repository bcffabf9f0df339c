/* quip_bench.c — encode speed of QuIP#'s formats and method (`make bench` runs it): seconds per million
 * weights on one rows x cols layer (default 1024 x 1024, a 1024 x 1024 Hessian of 2048 random tokens with
 * uneven channel scales), threads workers (default 2): e8p / e8p_rvq4 / rht_int4_g64 with their own
 * rounding (RTN, single-threaded by the format contract), quip (LDLQ) into e8p and e8p_rvq4.
 * Wall and process CPU seconds (CPU: what a loaded shared machine still measures fairly).
 * Usage: quip_bench [rows cols threads]. Prints; asserts nothing. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/ql_common.h"
#include "formats/format.h"
#include "methods/method.h"

#define QL_TEST_RNG_SEED 977
#include "tests/test_rng.h"
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 1024, cols = argc > 2 ? atoll(argv[2]) : 1024;
    const int threads = argc > 3 ? atoi(argv[3]) : 2;
    const int64_t ntok = 2048;
    if (rows <= 0 || cols <= 0 || threads <= 0) {
        fprintf(stderr, "usage: quip_bench [rows cols threads]\n");
        return 2;
    }
    float *w = malloc(sizeof(float) * (size_t)(rows * cols)), *out = malloc(sizeof(float) * (size_t)(rows * cols));
    double *X = malloc(sizeof(double) * (size_t)(ntok * cols)), *xtx = malloc(sizeof(double) * (size_t)(cols * cols));
    for (int64_t i = 0; i < rows * cols; i++) w[i] = (float)(0.02 * normal());
    for (int64_t c = 0; c < cols; c++) {
        const double s = c % 31 == 0 ? 8.0 : 0.5 + uniform();
        for (int64_t t = 0; t < ntok; t++) X[t * cols + c] = s * normal();
    }
    openblas_set_num_threads(threads);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cols, (int)cols, (int)ntok, 1.0, X, (int)cols, X,
                (int)cols, 0.0, xtx, (int)cols);
    ql_input_stats st = {.n = cols, .n_tokens = ntok, .xtx = xtx};
    const double mw = (double)(rows * cols) / 1e6;
    printf("quip_bench: %lld x %lld layer, %d threads\n", (long long)rows, (long long)cols, threads);
    const struct {
        const char *fmt, *method;
    } runs[] = {{"e8p", "rtn"}, {"e8p_rvq4", "rtn"}, {"rht_int4_g64", "rtn"}, {"e8p", "quip"}, {"e8p_rvq4", "quip"}};
    for (size_t i = 0; i < QL_ARRAY_LEN(runs); i++) {
        const ql_format *f = ql_format_by_name(runs[i].fmt);
        const ql_method *m = ql_method_by_name(runs[i].method);
        ql_method_opts o = {.n_threads = threads};
        double t0 = ql_time_s(), c0 = cpu_s();
        if (ql_method_roundtrip(m, w, rows, cols, f, &st, &o, out)) {
            fprintf(stderr, "quip_bench: %s: %s\n", runs[i].fmt, ql_last_error());
            return 1;
        }
        double dt = ql_time_s() - t0, dc = cpu_s() - c0;
        printf("  %-14s %-5s %8.2f s per million weights wall, %8.2f s CPU (quantize + decode)\n", runs[i].fmt,
               runs[i].method, dt / mw, dc / mw);
    }
    free(w), free(out), free(X), free(xtx);
    return 0;
}
