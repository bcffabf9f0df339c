// cuda_common.cuh — what the CUDA files (kernels/codecs_cuda.cu, kernels/gptq_cuda.cu) share:
//  1. arithmetic that gives the same bits on the host and the device: IEEE round-to-nearest operations that
//     nvcc never contracts into FMA (the _rn intrinsics on the device, plain operators on the host, where the
//     build is x86-64 without FMA), bit casts, sign-bit operations;
//  2. the x86 behaviours the scalar reference gets from gcc and the device must imitate to be bit-exact:
//     SSE's NaN results (x86_nan), cvttss2si's out-of-range result (cvtt_x86), roundf (round_away);
//  3. error checking (QL_CUDA_TRY: a ql_status naming file:line and the CUDA error) and launch helpers.
// Everything in 1 and 2 is __host__ __device__, so tests/cuda_host_check.cu can run the device's own code on
// the host against the CPU reference (tests/test_cuda.c), where there is no GPU.
#ifndef QL_CUDA_COMMON_CUH
#define QL_CUDA_COMMON_CUH

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdbool.h> /* before extern "C": ql_common.h's system headers stay C++-clean */
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

extern "C" {
#include "base/ql_common.h"
}

#define QL_HD __host__ __device__ __forceinline__

namespace ql_cuda {

// ---- 1. exact arithmetic ----
QL_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
QL_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
QL_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
QL_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
QL_HD float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
    return __fsqrt_rn(a);
#else
    return sqrtf(a);
#endif
}
QL_HD double dadd_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
QL_HD double dsub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dsub_rn(a, b);
#else
    return a - b;
#endif
}
QL_HD double dmul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
QL_HD double ddiv_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __ddiv_rn(a, b);
#else
    return a / b;
#endif
}
QL_HD float u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}
QL_HD uint32_t f2u(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}
// sign-bit operations (PTX abs/neg may canonicalize a NaN; x86 andps/xorps never do)
QL_HD float fabs_bits(float x) { return u2f(f2u(x) & 0x7fffffffu); }
QL_HD bool is_nan(float v) { return (f2u(v) & 0x7fffffffu) > 0x7f800000u; }
QL_HD bool is_inf(float v) { return (f2u(v) & 0x7fffffffu) == 0x7f800000u; }
QL_HD float pow2(int e) { return u2f((uint32_t)(e + 127) << 23); } // 2^e, normal range only
// nearbyintf in the default mode: round half to even (the references' call)
QL_HD float rint_even(float v) {
#ifdef __CUDA_ARCH__
    return rintf(v);
#else
    return nearbyintf(v);
#endif
}
QL_HD float fneg(float x) { return u2f(f2u(x) ^ 0x80000000u); }
QL_HD bool finite_f(float x) { return (f2u(x) & 0x7f800000u) != 0x7f800000u; }
QL_HD bool finite_d(double x) { return x - x == 0.0; }

// ---- 2. x86 behaviours ----
// x86 SSE NaN results: a NaN operand comes back quieted (the first one if both are NaN), an invalid operation
// gives the default NaN 0xffc00000; the GPU gives 0x7fffffff. r is the device's result of an operation on
// a, b (unary: pass a twice). The bits matter where the reference feeds a NaN into nearest_int's integer
// trick or into an fp16 scale. Defined for the host too, so a test can check it against real SSE results.
QL_HD float x86_nan(float r, float a, float b) {
    if (r == r) return r;
    if (a != a) return u2f(f2u(a) | 0x400000u);
    if (b != b) return u2f(f2u(b) | 0x400000u);
    return u2f(0xffc00000u);
}
// r as x86 would have produced it: on the host r already is x86's result
QL_HD float as_x86(float r, float a, float b) {
#ifdef __CUDA_ARCH__
    return x86_nan(r, a, b);
#else
    (void)a, (void)b;
    return r;
#endif
}

// x86 cvttss2si: truncate, INT_MIN when NaN or out of int32 range (what (int)f compiles to in the reference)
QL_HD int cvtt_x86(float f) { return f >= -2147483648.0f && f < 2147483648.0f ? (int)f : INT_MIN; }

// roundf (half away from zero) written out, so host and device share one definition: a - trunc(a) is exact
QL_HD float round_away(float v) {
    const float a = fabs_bits(v);
    float t = truncf(a);
    if (sub_rn(a, t) >= 0.5f) t = add_rn(t, 1.0f);
    return (f2u(v) & 0x80000000u) ? fneg(t) : t;
}

// floorf(log2f(a)) as glibc gives it, for a > 0 (MXFP4's scale exponent): log2 in double rounded once to float.
// The floor can only differ from the exponent's just below a power of two, where glibc's log2f is correctly
// rounded; test_cuda holds this against log2f there.
QL_HD float floor_log2f(float a) {
#ifdef __CUDA_ARCH__
    return floorf(__double2float_rn(log2((double)a)));
#else
    return floorf((float)log2((double)a));
#endif
}

// ---- 3. errors and launches ----
inline ql_status cuda_fail(cudaError_t e, const char *what, const char *file, int line) {
    return ql_fail(e == cudaErrorMemoryAllocation ? QL_ERR_NOMEM : QL_ERR_IO, "%s:%d: %s: %s", file, line, what,
                   cudaGetErrorString(e));
}

// Blocks for n items of `threads` each, at least 1 and at most cap (grid-stride loops cover the rest).
inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535 * 16) {
    int64_t g = (n + threads - 1) / threads;
    return (unsigned)(g < 1 ? 1 : g > cap ? cap : g);
}

// op(i) for every i < count, grid-stride.
template <class Op> __global__ void k_each(Op op, int64_t count) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride)
        op(i);
}

// Owns a device allocation (freed on every return path).
struct DevBuf {
    void *p = nullptr;
    DevBuf() = default;
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
    ~DevBuf() {
        if (p) cudaFree(p);
    }
};

} // namespace ql_cuda

// Returns from the enclosing function with a ql_status (QL_ERR_NOMEM / QL_ERR_IO) naming file:line and the call.
#define QL_CUDA_TRY(call)                                                                                   \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess) return ql_cuda::cuda_fail(e_, #call, __FILE__, __LINE__);                    \
    } while (0)

#endif
