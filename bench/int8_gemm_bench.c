/* int8_gemm_bench.c — `make bench` (issue 12, deliverable 5): one linear layer of T tokens × K inputs × N
 * outputs with int8_channel weights and dynamic per-token INT8 activations, computed two ways: the float
 * emulation (activations rounded to INT8 and back, then F32 sgemm over the decoded weights: what every
 * preview did before) and the INT8×INT8→INT32 path of core/wmatmul.c (kernels/int8_gemm.c, the fastest
 * kernel this CPU has). Usage: int8_gemm_bench [T K N threads]. Prints seconds and the ratio; asserts
 * nothing (tests/test_wmatmul.c checks the numbers agree). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/actquant.h"
#include "core/wmatmul.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/int8_gemm.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const int T = argc > 1 ? atoi(argv[1]) : 512, K = argc > 2 ? atoi(argv[2]) : 2048;
    const int N = argc > 3 ? atoi(argv[3]) : 2048, threads = argc > 4 ? atoi(argv[4]) : 2;
    const ql_format *f = ql_format_by_name("int8_channel");
    if (T <= 0 || K <= 0 || N <= 0 || threads <= 0 || !f) {
        fprintf(stderr, "usage: int8_gemm_bench [T K N threads]\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    float *x = malloc(sizeof(float) * (size_t)T * K), *xq = malloc(sizeof(float) * (size_t)T * K);
    float *w = malloc(sizeof(float) * (size_t)N * K), *y = malloc(sizeof(float) * (size_t)T * N);
    void *codes = malloc((size_t)ql_format_tensor_bytes(f, K, N));
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)T * K; i++) s ^= s << 13, s ^= s >> 7, s ^= s << 17, x[i] = (float)(s % 2001) / 1000.0f - 1;
    for (size_t i = 0; i < (size_t)N * K; i++) s ^= s << 13, s ^= s >> 7, s ^= s << 17, w[i] = (float)(s % 2001) / 1000.0f - 1;
    ql_format_quantize(f, w, codes, N, K, NULL, threads);
    ql_format_dequantize(f, codes, w, N, K, threads);
    ql_gguf_tensor t = {.name = "bench", .type = f->type, .n_dims = 2, .ne = {K, N, 1, 1}, .data = codes};
    ql_act_quant aq;
    ql_act_quant_init(&aq, QL_ACT_INT8_TOKEN, NULL, 0, 0);
    ql_backend_weight bw = {.t = &t, .act_type = QL_TYPE_F32, .aq = &aq};
    const int reps = 5;
    double best_f = 1e30, best_i = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        ql_act_quant_apply(&aq, x, xq, T, K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, xq, K, w, K, 0.0f, y, N);
        double t1 = now_s();
        ql_wmatmul_int8(&bw, NULL, x, y, T, K, N, 0.0f, xq, threads);
        double t2 = now_s();
        best_f = fmin(best_f, t1 - t0);
        best_i = fmin(best_i, t2 - t1);
    }
    const double gop = 2.0 * T * K * (double)N / 1e9;
    printf("int8 W8A8 %dx%dx%d, %d threads: F32 sgemm (emulation) %.1f ms (%.0f GFLOP/s), INT8xINT8->INT32 [%s] "
           "%.1f ms (%.0f GOP/s): %.2fx\n",
           T, K, N, threads, best_f * 1e3, gop / best_f, ql_i8gemm_kernel_name(ql_gemm_s8u8_best()), best_i * 1e3,
           gop / best_i, best_f / best_i);
    free(x), free(xq), free(w), free(y), free(codes);
    return 0;
}
