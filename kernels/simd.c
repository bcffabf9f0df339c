/* simd.c — the SIMD level the fast codecs (kernels/simd_*.c) use: detected once at start-up (AVX-512 >
 * AVX2 > ref; QL_FORCE_REF=1 forces ref), changeable by tests, read with one relaxed atomic load per call.
 * Also whether the CPU has F16C, which the AVX2 F16 kernels need besides AVX2. */
#include "kernels/simd.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define QL_SIMD_X86 1
#include <cpuid.h>
#endif

static atomic_int g_level = QL_SIMD_REF;
static bool g_f16c;

ql_simd_level ql_simd_detect(void) {
#if QL_SIMD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return QL_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2")) return QL_SIMD_AVX2;
#endif
    return QL_SIMD_REF;
}

__attribute__((constructor)) static void simd_init(void) {
    const char *e = getenv("QL_FORCE_REF");
    bool force_ref = e && *e && strcmp(e, "0") != 0;
    atomic_store(&g_level, force_ref ? QL_SIMD_REF : ql_simd_detect());
#if QL_SIMD_X86
    unsigned a, b, c, d;
    g_f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
#endif
}

bool ql_simd_has_f16c(void) { return g_f16c; }

ql_simd_level ql_simd_level_get(void) {
    return (ql_simd_level)atomic_load_explicit(&g_level, memory_order_relaxed);
}

ql_simd_level ql_simd_set_level(ql_simd_level level) {
    ql_simd_level best = ql_simd_detect();
    if (level > best) level = best;
    if (level < QL_SIMD_REF) level = QL_SIMD_REF;
    atomic_store(&g_level, level);
    return level;
}

const char *ql_simd_level_name(ql_simd_level level) {
    switch (level) {
    case QL_SIMD_AVX512: return "avx512";
    case QL_SIMD_AVX2: return "avx2";
    default: return "ref";
    }
}
