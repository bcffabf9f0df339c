// cuda_half.cuh — fp16 <-> fp32 conversions for CUDA code, bit for bit the same as ql_fp16_to_fp32 /
// ql_fp32_to_fp16 (base/ql_common.c) on the host and the device. The float operations here never see a NaN
// (NaN and Inf are handled on the bits), so the plain round-to-nearest operations of cuda_common.cuh give
// the reference's bits whichever NaN convention the including file uses elsewhere.
#ifndef QL_CUDA_HALF_CUH
#define QL_CUDA_HALF_CUH

#include "kernels/cuda_common.cuh"

namespace ql_cuda {

QL_HD float h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        const float v = mul_rn((float)man, 5.9604644775390625e-8f);
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

QL_HD uint16_t f2h(float f) {
    const uint32_t x = f2u(f);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {
        const float scaled = mul_rn(u2f(ax), 16777216.0f);
        uint32_t m = (uint32_t)scaled;
        const float rem = sub_rn(scaled, (float)m);
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    const uint32_t e = (ax >> 23) - 112, man = ax & 0x7fffff;
    uint32_t h = (e << 10) | (man >> 13);
    const uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

} // namespace ql_cuda

#endif
