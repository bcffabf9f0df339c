/* backend_cuda.h — what the CUDA backend (core/backend_cuda.c) shares beyond its ql_backend_ops table: how it
 * derives RoPE's angles from the model, lays out Σ xᵀx and describes a KV side to its kernels, so tests/test_cuda_forward.c checks the backend's own derivation
 * against the CPU backend. Only with nvcc (QL_HAVE_CUDA). */
#ifndef QL_BACKEND_CUDA_H
#define QL_BACKEND_CUDA_H

#ifdef QL_HAVE_CUDA
#include "core/model.h"
#include "kernels/forward_cuda.h"

/* RoPE parameters of m's global (swa = false) or sliding layers in a pass of context n_ctx (which picks LongRoPE's
 * long or short factors); freq receives rope_dim/2 floats that out->freq points to. */
void ql_cuda_rope_params(const ql_model *m, bool swa, int n_ctx, float *freq, ql_cudafwd_rope_params *out);
/* H[D, D] (row-major upper triangle, i <= j) += x[T, D]ᵀ·x in double, with the operation and layout of the
 * backend's cublasDsyrk call run by host BLAS: what the xtx ops compute, for the emulation test. */
void ql_cuda_xtx_emulated(const float *x, int T, int D, double *H);
/* The kernels' view of a qlab INT / FP8 KV side (core/kv_cache.h) of a model with n_head_kv heads of head_dim. */
struct ql_kv_side;
ql_cudafwd_kv_side ql_cuda_kv_sim_side(const struct ql_kv_side *s, int n_head_kv, int head_dim);
/* Opens cuBLAS the way the backend does (dlopen at first use, so qlab's start never loads it): NULL when every
 * function the backend calls was found, else the one-line reason. */
const char *ql_cuda_blas_open(void);
#endif

#endif
