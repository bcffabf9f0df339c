/* cuda_host_check.h — the CUDA kernels' scalar device math (kernels/cuda_common.cuh, kernels/cuda_half.cuh)
 * compiled by nvcc for the host (tests/cuda_host_check.cu) and exported to C, so tests/test_cuda.c can hold
 * the device's own code against the CPU reference and real x86 results on a machine without a GPU. */
#ifndef QL_CUDA_HOST_CHECK_H
#define QL_CUDA_HOST_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

float ql_cudachk_h2f(uint16_t h);
uint16_t ql_cudachk_f2h(float f);
/* x86_nan(r, a, b): the x86 result given the device result r of an operation on a and b */
float ql_cudachk_x86_nan(float r, float a, float b);
int ql_cudachk_cvtt_x86(float f);
float ql_cudachk_round_away(float f);
float ql_cudachk_fabs_bits(float f);
float ql_cudachk_fneg(float f);
bool ql_cudachk_finite_f(float f);
float ql_cudachk_floor_log2f(float f);

#ifdef __cplusplus
}
#endif

#endif
