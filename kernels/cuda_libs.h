/* cuda_libs.h — cuBLAS and cuSOLVER opened with dlopen on first use, not linked. Their libraries (cuBLASLt,
 * cuSPARSE, nvJitLink: ~1.5 GB of address space) would otherwise be mapped by ld.so at the start of every qlab
 * command, CPU-only ones included, and a process under `ulimit -v 500000` could not even start (ld.so exits 127
 * before main, so no memory check of qlab's can speak). Only the CUDA runtime stays linked.
 *
 * One table per library with the entry points qlab calls (add a line to the table and to cuda_libs.c to call a
 * new one). Both loaders are thread-safe and run once; they return NULL and set ql_last_error() to one line
 * naming the library and the reason when it cannot be opened. The soname is the toolkit's the build used; the
 * build's CUDA library folder (QL_CUDA_LIBDIR, from the Makefile) is the fallback. Only with QL_HAVE_CUDA. */
#ifndef QL_CUDA_LIBS_H
#define QL_CUDA_LIBS_H

#if defined(QL_HAVE_CUDA) || defined(__CUDACC__)
#include <cublas_v2.h>
#include <cusolverDn.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    __typeof__(cublasCreate_v2) *Create;
    __typeof__(cublasDestroy_v2) *Destroy;
    __typeof__(cublasSetStream_v2) *SetStream;
    __typeof__(cublasSetMathMode) *SetMathMode;
    __typeof__(cublasSgemm_v2) *Sgemm;
    __typeof__(cublasDgemm_v2) *Dgemm;
    __typeof__(cublasDgemmStridedBatched) *DgemmStridedBatched;
    /* spelled out: C++ overloads cublasGemmEx (a cudaDataType compute-type shim), so __typeof__ is ambiguous there */
    cublasStatus_t (*GemmEx)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                             const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                             cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    __typeof__(cublasDsyrk_v2) *Dsyrk;
    __typeof__(cublasGetStatusString) *GetStatusString;
} ql_cublas_api;

typedef struct {
    __typeof__(cusolverDnCreate) *Create;
    __typeof__(cusolverDnCreateParams) *CreateParams;
    __typeof__(cusolverDnXpotrf_bufferSize) *Xpotrf_bufferSize;
    __typeof__(cusolverDnXpotrf) *Xpotrf;
    __typeof__(cusolverDnXtrtri_bufferSize) *Xtrtri_bufferSize;
    __typeof__(cusolverDnXtrtri) *Xtrtri;
} ql_cusolver_api;

/* The opened library's table, or NULL (ql_last_error() says why; later calls return the same NULL). */
const ql_cublas_api *ql_cublas(void);
const ql_cusolver_api *ql_cusolver(void);

#ifdef __cplusplus
}
#endif
#endif /* QL_HAVE_CUDA || __CUDACC__ */
#endif
