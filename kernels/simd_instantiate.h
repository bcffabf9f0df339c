/* simd_instantiate.h — compiles the vector body of a SIMD family file twice: W = 8 lanes for AVX2 and
 * W = 16 for AVX-512, each after the primitives of kernels/simd_prims.h for that width. The includer
 * defines QL_SIMD_BODY (its own file name, as an include string) and guards its body with
 * QL_SIMD_TEMPLATE. Kernels are named SFX(name): name_avx2 / name_avx512; TGT is the target attribute of
 * every vector function, TGTF that of the F16 conversions (AVX2 needs f16c besides). Off x86 nothing is
 * compiled and the entry points run the reference. */
#if !defined(QL_SIMD_BODY)
#error "define QL_SIMD_BODY before including kernels/simd_instantiate.h"
#endif

#if QL_SIMD_X86
#define QL_SIMD_TEMPLATE 1

#define W 8
#define TGT __attribute__((target("avx2")))
#define TGTF __attribute__((target("avx2,f16c")))
#define SFX(name) name##_avx2
#include "kernels/simd_prims.h"
#include QL_SIMD_BODY
#undef W
#undef TGT
#undef TGTF
#undef SFX

#define W 16
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define TGTF TGT
#define SFX(name) name##_avx512
#include "kernels/simd_prims.h"
#include QL_SIMD_BODY
#undef W
#undef TGT
#undef TGTF
#undef SFX

#undef QL_SIMD_TEMPLATE
#endif
