/* aqlm_bench.c — AQLM encoding speed (issue 13): seconds for --method aqlm on one rows x cols layer with a
 * cols x cols Hessian (XᵀX of 1024 random tokens with per-channel scales), per phase, the encode time per
 * million weights, and the CPU seconds of all threads and of the main thread. Usage: aqlm_bench [rows cols
 * threads format method-opts]; defaults 4096 4096 2 aqlm_2x8 with the method's defaults. Prints; asserts
 * nothing. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "formats/format.h"
#include "methods/method.h"

#define QL_TEST_RNG_SEED 777
#include "tests/test_rng.h"

static double g_t0;

/* CPU seconds of this thread (RUSAGE_THREAD) or of the whole process */
static double cpu_s(int who) {
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}
static void report(void *user, int64_t done, int64_t total, const char *phase) {
    (void)user;
    fprintf(stderr, "  %6.1fs  %lld/%lld  %s\n", ql_time_s() - g_t0, (long long)done, (long long)total, phase);
}

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int threads = argc > 3 ? atoi(argv[3]) : 2;
    const char *fname = argc > 4 ? argv[4] : "aqlm_2x8";
    const char *spec = argc > 5 ? argv[5] : "checkpoint=0";
    const int64_t ntok = 1024;
    const ql_format *f = ql_format_by_name(fname);
    const ql_method *m = ql_method_by_name("aqlm");
    ql_opt_values ov;
    if (!f || !m || rows <= 0 || cols <= 0 || threads <= 0 || ql_method_parse_opts(m, spec, &ov)) {
        fprintf(stderr, "usage: aqlm_bench [rows cols threads format method-opts] %s\n", ql_last_error());
        return 2;
    }
    float *w = malloc((size_t)(rows * cols) * sizeof(float)), *X = malloc((size_t)(ntok * cols) * sizeof(float));
    float *xtxf = malloc((size_t)(cols * cols) * sizeof(float));
    double *xtx = malloc((size_t)(cols * cols) * sizeof(double));
    uint8_t *dst = malloc((size_t)ql_format_tensor_bytes(f, cols, rows));
    if (!w || !X || !xtxf || !xtx || !dst) return 1;
    for (int64_t i = 0; i < rows * cols; i++) w[i] = (float)(0.02 * normal());
    for (int64_t t = 0; t < ntok; t++)
        for (int64_t c = 0; c < cols; c++) X[t * cols + c] = (float)(normal() * (c % 64 == 0 ? 8.0 : 1.0));
    openblas_set_num_threads(threads);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)ntok, 1.0f, X, (int)cols, 0.0f, xtxf, (int)cols);
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < cols; j++) xtx[i * cols + j] = xtxf[(i < j ? i : j) * cols + (i < j ? j : i)];
    ql_input_stats st = {.n = cols, .n_tokens = ntok, .xtx = xtx};
    ql_progress pr = {.fn = report};
    ql_method_opts o = {.values = &ov, .n_threads = threads, .progress = &pr};
    g_t0 = ql_time_s();
    const double main0 = cpu_s(RUSAGE_THREAD), all0 = cpu_s(RUSAGE_SELF);
    ql_status s = m->quantize_tensor(w, rows, cols, f, &st, &o, dst);
    double sec = ql_time_s() - g_t0;
    const double main_cpu = cpu_s(RUSAGE_THREAD) - main0, all_cpu = cpu_s(RUSAGE_SELF) - all0;
    if (s) {
        fprintf(stderr, "aqlm_bench: %s\n", ql_last_error());
        return 1;
    }
    /* FNV-1a of the bytes written: a speed change that must keep the results can be checked by it */
    uint64_t hash = 1469598103934665603ull;
    for (int64_t i = 0; i < ql_format_tensor_bytes(f, cols, rows); i++) hash = (hash ^ dst[i]) * 1099511628211ull;
    printf("aqlm %s %lldx%lld, %d threads (%s): %.1f s, %.2f s per million weights, bytes FNV-1a %016llx\n", fname,
           (long long)rows, (long long)cols, threads, spec, sec, sec / ((double)rows * (double)cols / 1e6),
           (unsigned long long)hash);
    /* The main thread runs every serial part and one share of each parallel one (ql_parallel_for's worker 0,
     * OpenBLAS's caller), so on an idle machine the wall time is about its CPU time, whatever the load now. */
    printf("CPU s: %.1f all threads, %.1f main thread (≈ wall on an idle machine; all / main = %.2f)\n", all_cpu,
           main_cpu, main_cpu > 0 ? all_cpu / main_cpu : 0.0);
    return 0;
}
