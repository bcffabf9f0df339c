/* gptq_8b_cuda.c — part of `make bench-cuda` (bench/cuda_8b.sh): seconds for GPTQ of every linear of the
 * llama-3.1-8b shape (32 layers of q/k/v/o 4096x4096 / 1024x4096, gate/up 14336x4096, down 4096x14336) on the
 * GPU through the method (ql_gptq_quantize_on, what `qlab quant --method gptq --device cuda` runs per tensor),
 * into int4_g128 by default. Weights are random normals and the Hessians XᵀX of 1024 random tokens with
 * per-channel scales and outlier channels, made once per input width and shared by the layers (the
 * time of GPTQ does not depend on the values; generating 8 G random weights would take longer than GPTQ).
 * The one-time CUDA setup is timed apart. Usage: gptq_8b_cuda [layers [format [method-opts]]].
 * Prints "GPU: not available on this machine" without a CUDA device. Asserts nothing (a benchmark). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/format.h"
#include "kernels/gptq_cuda.h"
#include "methods/gptq.h"
#include "methods/method.h"

#define QL_TEST_RNG_SEED 777
#include "tests/test_rng.h"

enum { NTOK = 1024 };

/* XᵀX [n, n] of NTOK random tokens, channel scales log-normal, every 501st channel 30x */
static double *hessian(int64_t n) {
    double *X = malloc(sizeof(double) * NTOK * (size_t)n), *H = malloc(sizeof(double) * (size_t)(n * n));
    if (!X || !H) return NULL;
    for (int64_t c = 0; c < n; c++) {
        double s = exp(0.5 * normal()) * (c % 501 == 7 ? 30.0 : 1.0);
        for (int64_t t = 0; t < NTOK; t++) X[t * n + c] = s * normal();
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)n, NTOK, 1.0, X, (int)n, 0.0, H, (int)n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++) H[i * n + j] = H[j * n + i];
    free(X);
    return H;
}

int main(int argc, char **argv) {
    const int layers = argc > 1 ? atoi(argv[1]) : 32;
    const char *fname = argc > 2 ? argv[2] : "int4_g128";
    const char *spec = argc > 3 ? argv[3] : "damp=0.01,block=128";
    const ql_format *f = ql_format_by_name(fname);
    const ql_method *m = ql_method_by_name("gptq");
    ql_opt_values ov;
    if (!f || layers < 1 || !m || ql_method_parse_opts(m, spec, &ov)) {
        fprintf(stderr, "usage: gptq_8b_cuda [layers [format [method-opts]]] (%s)\n", f ? ql_last_error() : "format?");
        return 2;
    }
    if (!ql_cuda_gptq_available()) {
        printf("GPU: not available on this machine\n");
        return 0;
    }
    double t_init = 0;
    if (ql_cuda_gptq_init(&t_init)) {
        fprintf(stderr, "gptq_8b_cuda: %s\n", ql_last_error());
        return 1;
    }
    const int64_t E = 4096, KV = 1024, FF = 14336;
    struct {
        const char *name;
        int64_t rows, cols;
    } mats[] = {{"attn_q", E, E}, {"attn_k", KV, E}, {"attn_v", KV, E}, {"attn_output", E, E},
                {"ffn_gate", FF, E}, {"ffn_up", FF, E}, {"ffn_down", E, FF}};
    double t0 = ql_time_s();
    double *hE = hessian(E), *hF = hessian(FF);
    float *w0 = malloc(sizeof(float) * (size_t)(FF * E)), *w = malloc(sizeof(float) * (size_t)(FF * E));
    void *dst = malloc((size_t)ql_format_tensor_bytes(f, FF, E) + (size_t)ql_format_tensor_bytes(f, E, FF));
    if (!hE || !hF || !w0 || !w || !dst) {
        fprintf(stderr, "gptq_8b_cuda: out of host memory\n");
        return 1;
    }
    for (int64_t i = 0; i < FF * E; i++) w0[i] = (float)(0.02 * normal());
    printf("GPU: CUDA setup %.2f s, inputs %.1f s (not counted)\n", t_init, ql_time_s() - t0);
    ql_method_opts o = {.values = &ov, .n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN)};
    double per[7] = {0}, total = 0;
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < 7; k++) {
            const int64_t rows = mats[k].rows, cols = mats[k].cols;
            ql_input_stats st = {.n = cols, .n_tokens = NTOK, .xtx = cols == FF ? hF : hE};
            memcpy(w, w0, sizeof(float) * (size_t)(rows * cols));
            const double t = ql_time_s();
            if (ql_gptq_quantize_on(QL_GPTQ_ON_CUDA, w, rows, cols, f, &st, &o, dst, NULL)) {
                fprintf(stderr, "gptq_8b_cuda: %s: %s\n", mats[k].name, ql_last_error());
                return 1;
            }
            const double dt = ql_time_s() - t;
            per[k] += dt, total += dt;
        }
    printf("GPU: gptq %s of the llama-3.1-8b shape, %d layers: %.1f s (goal < 300 s for 32 layers on one H100)\n",
           f->name, layers, total);
    for (int k = 0; k < 7; k++)
        printf("       %-12s %5lldx%-5lld %.3f s per layer\n", mats[k].name, (long long)mats[k].rows,
               (long long)mats[k].cols, per[k] / layers);
    free(hE), free(hF), free(w0), free(w), free(dst);
    return 0;
}
