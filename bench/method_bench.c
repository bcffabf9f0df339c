/* method_bench.c — `make bench`'s encode-speed table (issue 13): seconds per million weights for every
 * per-tensor method on one synthetic layer (default 1024 x 1024 weights, N(0, 0.02²); a Hessian XᵀX of
 * 2048 random tokens with uneven channel scales; its diagonal is passed as the importance (imatrix) to
 * every run, as `qlab quant --imatrix` would). Each row times ql_method_roundtrip (quantize + decode) on
 * `threads` workers (default 2): wall and process CPU seconds, CPU being the fair figure on a shared
 * machine. AQLM rows use fewer rows (the same columns) and fewer alternations so that `make bench` stays
 * short; the 4096 x 4096 aqlm_2x8 goal is `make bench-aqlm`. Layer transforms (AWQ, SmoothQuant) need a
 * model and are timed by bench/run.sh through the CLI.
 * Usage: method_bench [cols threads [method:format[:opts[:rows]] ...]]. Prints; asserts nothing. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/ql_common.h"
#include "formats/format.h"
#include "methods/method.h"

#define QL_TEST_RNG_SEED 1313
#include "tests/test_rng.h"
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* method:format[:opts[:rows]]; rows 0 = the layer's own. The default table: RTN on representative
 * formats of each family, then every per-tensor method on its typical formats. */
static const char *const k_default_runs[] = {
    "rtn:q8_0",         "rtn:q4_0",         "rtn:q4_k",          "rtn:q2_k",          "rtn:iq4_nl",
    "rtn:int4_g128",    "rtn:nf4",          "rtn:e8p",           "rtn:rht_int4_g64",  "rtn:iq3_s",
    "rtn:iq3_xxs",      "rtn:iq2_s",        "rtn:iq2_xs",        "rtn:iq2_xxs",       "rtn:iq1_m",
    "rtn:iq1_s",        "gptq:int4_g128",   "gptq:q4_k",         "gptq:iq2_xxs",      "gptq:iq1_s",
    "exl2:exl2_25x3b64_75x2b64", "quip:e8p", "quip:e8p_rvq3",    "quip:e8p_rvq4",
    "aqlm:aqlm_2x8:iters=2,checkpoint=0:256", "aqlm:aqlm_1x16:iters=1,checkpoint=0:64",
};

int main(int argc, char **argv) {
    const int64_t cols = argc > 1 ? atoll(argv[1]) : 1024;
    const int threads = argc > 2 ? atoi(argv[2]) : 2;
    const int64_t ntok = 2048, rows0 = cols;
    if (cols <= 0 || cols % 256 || threads <= 0) {
        fprintf(stderr, "usage: method_bench [cols threads [method:format[:opts[:rows]] ...]] (cols: a multiple "
                        "of 256)\n");
        return 2;
    }
    const int nruns = argc > 3 ? argc - 3 : (int)QL_ARRAY_LEN(k_default_runs);
    float *w = malloc(sizeof(float) * (size_t)(rows0 * cols)), *out = malloc(sizeof(float) * (size_t)(rows0 * cols));
    float *imp = malloc(sizeof(float) * (size_t)cols);
    double *X = malloc(sizeof(double) * (size_t)(ntok * cols)), *xtx = malloc(sizeof(double) * (size_t)(cols * cols));
    if (!w || !out || !imp || !X || !xtx) return 1;
    for (int64_t i = 0; i < rows0 * cols; i++) w[i] = (float)(0.02 * normal());
    for (int64_t c = 0; c < cols; c++) {
        const double s = c % 31 == 0 ? 8.0 : 0.5 + uniform();
        for (int64_t t = 0; t < ntok; t++) X[t * cols + c] = s * normal();
    }
    openblas_set_num_threads(threads);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cols, (int)cols, (int)ntok, 1.0, X, (int)cols, X,
                (int)cols, 0.0, xtx, (int)cols);
    for (int64_t c = 0; c < cols; c++) imp[c] = (float)(xtx[c * cols + c] / (double)ntok);
    ql_input_stats st = {.n = cols, .n_tokens = ntok, .xtx = xtx};
    printf("method_bench: layer [rows x %lld], %d threads, importance = diag(XᵀX)/tokens; seconds per million "
           "weights (quantize + decode)\n",
           (long long)cols, threads);
    printf("  %-8s %-26s %-24s %6s %10s %10s\n", "method", "format", "options", "rows", "wall s/M", "CPU s/M");
    for (int i = 0; i < nruns; i++) {
        char spec[256];
        snprintf(spec, sizeof spec, "%s", argc > 3 ? argv[3 + i] : k_default_runs[i]);
        char *fields[4] = {spec, NULL, NULL, NULL};
        for (int k = 1; k < 4; k++) {
            char *c = fields[k - 1] ? strchr(fields[k - 1], ':') : NULL;
            if (c) *c = 0, fields[k] = c + 1;
        }
        const ql_method *m = ql_method_by_name(fields[0]);
        const ql_format *f = fields[1] ? ql_format_by_name(fields[1]) : NULL;
        const int64_t rows = fields[3] && atoll(fields[3]) > 0 && atoll(fields[3]) <= rows0 ? atoll(fields[3]) : rows0;
        ql_opt_values ov;
        if (!m || !f || ql_method_parse_opts(m, fields[2], &ov)) {
            printf("  %-8s %-26s skipped: %s\n", fields[0], fields[1] ? fields[1] : "?",
                   !m ? "unknown method" : !f ? "unknown format" : ql_last_error());
            continue;
        }
        ql_method_opts o = {.values = &ov, .n_threads = threads, .importance = imp};
        const double t0 = ql_time_s(), c0 = cpu_s();
        if (ql_method_roundtrip(m, w, rows, cols, f, &st, &o, out)) {
            printf("  %-8s %-26s failed: %s\n", m->name, f->name, ql_last_error());
            continue;
        }
        const double dt = ql_time_s() - t0, dc = cpu_s() - c0, mw = (double)(rows * cols) / 1e6;
        printf("  %-8s %-26s %-24s %6lld %10.3f %10.3f\n", m->name, f->name, fields[2] && *fields[2] ? fields[2] : "-",
               (long long)rows, dt / mw, dc / mw);
        fflush(stdout);
    }
    free(w), free(out), free(imp), free(X), free(xtx);
    return 0;
}
