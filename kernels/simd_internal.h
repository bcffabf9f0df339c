/* simd_internal.h — what the SIMD family files (kernels/simd_legacy.c, simd_kquants.c, simd_int.c,
 * simd_float.c) share outside their vector bodies: includes, the x86 switch, the FP-contraction rule,
 * the level dispatch and the registry entry points that only walk blocks. Internal to kernels/ (not API).
 *
 * How exactness is kept, for every family:
 *  - every float operation is the reference's, in the reference's order, without FMA (the targets name
 *    no "fma"; -std=c11 / the pragma below keep contraction off);
 *  - the scale searches are sequential sums, so lanes run INDEPENDENT blocks or sub-blocks (one per lane,
 *    each summing in the reference's order) instead of splitting one sum;
 *  - blocks with NaN/Inf input, or whose products fall outside the range where C's float->int cast is
 *    defined, go to the scalar reference, whose result there depends on that cast as the compiler emits it.
 * A family file is compiled once per width: it includes kernels/simd_instantiate.h, which includes the
 * file back twice (QL_SIMD_TEMPLATE defined) with W = 8 (AVX2) and W = 16 (AVX-512) after the vector
 * primitives of kernels/simd_prims.h. No AMX, no VNNI: only avx2(+f16c) / avx512f,bw,vl,dq. */
#ifndef QL_SIMD_INTERNAL_H
#define QL_SIMD_INTERNAL_H

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"

#if defined(__x86_64__) || defined(__i386__)
#define QL_SIMD_X86 1
#include <immintrin.h>
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif

/* The kernel for the level in effect: fn_avx512, fn_avx2, or NULL at the reference level (and off x86,
 * where the kernels do not exist and the names are not evaluated). */
#if QL_SIMD_X86
#define QL_SIMD_PICK(fn_avx512, fn_avx2)                                                                    \
    (ql_simd_level_get() == QL_SIMD_AVX512 ? (fn_avx512) : ql_simd_level_get() == QL_SIMD_AVX2 ? (fn_avx2) : NULL)
#else
#define QL_SIMD_PICK(fn_avx512, fn_avx2) NULL
#endif

/* The registry entry points of a block codec whose kernels take whole blocks: `kern`_avx512/_avx2
 * (x, y, nb) for dequantize, (x, y, nb, nb_row, importance) for quantize (importance restarts every
 * nb_row blocks); the reference ql_{de}quantize_rows_<lname>_ref runs at the reference level. A matrix is one long row of blocks. */
#define QL_SIMD_DEQUANT_ENTRY(lname, kern, block)                                                           \
    void ql_dequantize_rows_##lname##_fast(const void *src, float *dst, int64_t nrows, int64_t ncols) {     \
        void (*k)(const void *, float *, int64_t) = QL_SIMD_PICK(kern##_avx512, kern##_avx2);                \
        if (k)                                                                                               \
            k(src, dst, nrows * (ncols / (block)));                                                          \
        else                                                                                                 \
            ql_dequantize_rows_##lname##_ref(src, dst, nrows, ncols);                                        \
    }
#define QL_SIMD_QUANT_ENTRY(lname, kern, block)                                                             \
    void ql_quantize_rows_##lname##_fast(const float *src, void *dst, int64_t nrows, int64_t ncols,         \
                                         const float *importance) {                                          \
        void (*k)(const float *, void *, int64_t, int64_t, const float *) =                                  \
            QL_SIMD_PICK(kern##_avx512, kern##_avx2);                                                        \
        if (k)                                                                                               \
            k(src, dst, nrows * (ncols / (block)), ncols / (block), importance);                             \
        else                                                                                                 \
            ql_quantize_rows_##lname##_ref(src, dst, nrows, ncols, importance);                               \
    }

/* ql_fp16_to_fp32, inlined: the dequantizers call it once per block. */
static inline float ql_simd_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    float f;
    if (exp == 0) {
        const float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    u = exp == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((exp + 112) << 23) | (man << 13);
    memcpy(&f, &u, 4);
    return f;
}

#endif /* QL_SIMD_INTERNAL_H */
