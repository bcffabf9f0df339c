/* cuda_quant_bench.c — `make bench-cuda`: RTN quantize throughput of every registry format with a CUDA
 * quantizer (formats/format.h's cuda column) on a [rows, cols] N(0,1) tensor (default 4096x4096), beside the
 * CPU reference path (ql_format_quantize with every core, the SIMD twin where there is one) timed on the first
 * cpu_rows rows and scaled. Prints one line per format: GPU kernel ms and G weights/s, CPU G weights/s, the
 * speed-up, and whether the GPU's bytes for those rows equal the CPU's. A measurement, not a test (test_cuda
 * is): prints "GPU: not available on this machine" without a CUDA device. Usage: cuda_quant_bench [rows cols
 * iters cpu_rows [name-substring]]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/ql_common.h"
#include "formats/format.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#endif

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    const int iters = argc > 3 ? atoi(argv[3]) : 5;
    int64_t cpu_rows = argc > 4 ? atoll(argv[4]) : 256;
    const char *only = argc > 5 ? argv[5] : NULL;
#ifdef QL_HAVE_CUDA
    if (!ql_cuda_available()) {
        printf("GPU: not available on this machine\n");
        return 0;
    }
    if (rows <= 0 || cols <= 0 || cpu_rows <= 0) {
        fprintf(stderr, "cuda_quant_bench: bad shape\n");
        return 2;
    }
    if (cpu_rows > rows) cpu_rows = rows;
    const int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    float *x = malloc(sizeof(float) * (size_t)(rows * cols));
    uint64_t z = 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < rows * cols; i++) { /* sum of 4 uniforms, scaled to unit variance: close to N(0,1) */
        double u = 0;
        for (int k = 0; k < 4; k++) {
            z ^= z << 13, z ^= z >> 7, z ^= z << 17;
            u += (double)(z >> 11) / 9007199254740992.0;
        }
        x[i] = (float)((u - 2.0) * 1.7320508075688772);
    }
    printf("cuda quantize, %lldx%lld N(0,1), GPU kernel time vs CPU (%d threads, %lld rows, scaled):\n",
           (long long)rows, (long long)cols, threads, (long long)cpu_rows);
    printf("%-22s %10s %10s %10s %8s %s\n", "format", "gpu ms", "gpu Gw/s", "cpu Gw/s", "speedup", "bytes");
    int failed = 0;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        if (!f->cuda || !f->cuda->quantize_dev || (only && !strstr(f->name, only))) continue;
        const int64_t bytes = ql_format_tensor_bytes(f, cols, rows);
        /* a whole-tensor format's bytes for the first rows are not a prefix: the CPU side then runs every row */
        const int64_t crow = f->whole_tensor ? rows : cpu_rows, cbytes = ql_format_tensor_bytes(f, cols, crow);
        if (bytes <= 0 || cbytes <= 0) continue;
        uint8_t *g = malloc((size_t)bytes), *c = malloc((size_t)cbytes);
        double ms = 0;
        if (ql_cuda_bench_quantize(f->cuda->quantize_dev, x, g, bytes, rows, cols, iters, &ms) != QL_OK) {
            fprintf(stderr, "cuda_quant_bench: %s: %s\n", f->name, ql_last_error());
            failed = 1;
            free(g), free(c);
            continue;
        }
        const double t0 = now_s();
        ql_status st = ql_format_quantize(f, x, c, crow, cols, NULL, threads);
        const double cpu_s = (now_s() - t0) * (double)rows / (double)crow;
        const bool same = st == QL_OK && memcmp(g, c, (size_t)cbytes) == 0;
        failed |= !same;
        const double n = (double)rows * (double)cols;
        printf("%-22s %10.3f %10.2f %10.3f %7.0fx %s\n", f->name, ms, n / (ms * 1e-3) / 1e9, n / cpu_s / 1e9,
               cpu_s / (ms * 1e-3), same ? "identical" : "DIFFER");
        free(g), free(c);
    }
    free(x);
    return failed;
#else
    (void)rows, (void)cols, (void)iters, (void)cpu_rows, (void)only;
    printf("GPU: not available on this machine (this build has no CUDA: nvcc was not found)\n");
    return 0;
#endif
}
