/* cuda_dequant_bench.c — `make bench-cuda`: dequantize bandwidth of the CUDA codecs (kernels/cuda_api.h)
 * on a 4096x4096 tensor of random codes, Q4_K and Q8_0, 50 runs each. A measurement, not a test (it used to
 * be a case of tests/test_cuda.c): prints "GPU: not available on this machine" without a CUDA device or
 * without CUDA in the build, and asserts nothing. Usage: cuda_dequant_bench [rows cols iters]. */
#include <stdio.h>
#include <stdlib.h>

#include "base/ql_common.h"
#include "formats/format.h"
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_api.h"
#endif

int main(int argc, char **argv) {
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    const int iters = argc > 3 ? atoi(argv[3]) : 50;
#ifdef QL_HAVE_CUDA
    if (!ql_cuda_available()) {
        printf("GPU: not available on this machine\n");
        return 0;
    }
    const char *names[] = {"q4_k", "q8_0"}; /* the registry's CUDA column points at the kernels */
    for (int i = 0; i < 2; ++i) {
        double gbps = 0;
        const ql_format *f = ql_format_by_name(names[i]);
        const int64_t bytes = ql_format_tensor_bytes(f, cols, rows);
        if (!f->cuda || bytes <= 0 ||
            ql_cuda_bench_dequantize(f->cuda->dequantize_dev, bytes, rows, cols, iters, &gbps) != QL_OK) {
            fprintf(stderr, "cuda_dequant_bench: %s: %s\n", names[i], ql_last_error());
            return 1;
        }
        printf("cuda dequantize %s %lldx%lld: %.1f GB/s (read + write)\n", names[i], (long long)rows,
               (long long)cols, gbps);
    }
#else
    (void)rows; (void)cols; (void)iters;
    printf("GPU: not available on this machine (this build has no CUDA: nvcc was not found)\n");
#endif
    return 0;
}
