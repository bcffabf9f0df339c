// cuda_fp8.cuh — OCP FP8 (E4M3 "fn", E5M2) codes of one value, bit for bit formats/fmt_fp8.c's
// ql_f32_to_fp8_* / ql_fp8_*_to_f32 on the host and the device: the FP8 tensor codecs (codecs_ext_cuda.cu) and
// the FP8 KV cache (kv_cuda.cu) share them. Saturating: finite values past the largest code take it, E4M3 has
// no infinities (±inf saturates), NaN keeps its sign.
#ifndef QL_CUDA_FP8_CUH
#define QL_CUDA_FP8_CUH

#include "kernels/cuda_common.cuh"

namespace ql_cuda {

QL_HD uint8_t encode_magnitude(float a, int mbits, int bias) {
    if (a < pow2(1 - bias)) return (uint8_t)(int)rint_even(mul_rn(a, pow2(bias - 1 + mbits)));
    uint32_t u = f2u(a);
    const int shift = 23 - mbits;
    u += ((1u << (shift - 1)) - 1) + ((u >> shift) & 1);
    u >>= shift;
    return (uint8_t)(u - ((uint32_t)(127 - bias) << mbits));
}
QL_HD uint8_t fp8_encode(bool e5m2, float x) {
    const uint8_t sign = (f2u(x) & 0x80000000u) ? 0x80 : 0;
    if (is_nan(x)) return sign | (e5m2 ? 0x7E : 0x7F);
    if (e5m2 && is_inf(x)) return sign | 0x7C;
    float a = fabs_bits(x);
    const float mx = e5m2 ? 57344.0f : 448.0f;
    if (a > mx) a = mx;
    return sign | (e5m2 ? encode_magnitude(a, 2, 15) : encode_magnitude(a, 3, 7));
}
QL_HD float fp8_decode(bool e5m2, uint8_t c) {
    float v;
    if (e5m2) {
        const int e = (c >> 2) & 31, m = c & 3;
        if (e == 31) v = m == 0 ? u2f(0x7f800000u) : u2f(0x7fc00000u);
        else if (e == 0) v = mul_rn((float)m, pow2(-16));
        else v = mul_rn(add_rn(1.0f, div_rn((float)m, 4.0f)), pow2(e - 15));
    } else {
        const int e = (c >> 3) & 15, m = c & 7;
        if (e == 15 && m == 7) v = u2f(0x7fc00000u);
        else if (e == 0) v = mul_rn((float)m, pow2(-9));
        else v = mul_rn(add_rn(1.0f, div_rn((float)m, 8.0f)), pow2(e - 7));
    }
    return c & 0x80 ? fneg(v) : v;
}

} // namespace ql_cuda

#endif
