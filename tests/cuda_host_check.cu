// cuda_host_check.cu — host build of the CUDA files' shared device math, exported to C for tests/test_cuda.c
// (see tests/cuda_host_check.h). Linked into test_cuda only; nothing here is product code.
#include "tests/cuda_host_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh"

using namespace ql_cuda;

extern "C" float ql_cudachk_h2f(uint16_t h) { return h2f(h); }
extern "C" uint16_t ql_cudachk_f2h(float f) { return f2h(f); }
extern "C" float ql_cudachk_x86_nan(float r, float a, float b) { return x86_nan(r, a, b); }
extern "C" int ql_cudachk_cvtt_x86(float f) { return cvtt_x86(f); }
extern "C" float ql_cudachk_round_away(float f) { return round_away(f); }
extern "C" float ql_cudachk_fabs_bits(float f) { return fabs_bits(f); }
extern "C" float ql_cudachk_fneg(float f) { return fneg(f); }
extern "C" bool ql_cudachk_finite_f(float f) { return finite_f(f); }
extern "C" float ql_cudachk_floor_log2f(float f) { return floor_log2f(f); }
