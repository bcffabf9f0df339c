/* cuda_libs.c — the dlopen loaders of kernels/cuda_libs.h (why they are not linked: see there). */
#include "kernels/cuda_libs.h"

typedef int ql_cuda_libs_translation_unit; /* keeps the file a valid C unit when CUDA is absent */

#ifdef QL_HAVE_CUDA
#include "base/ql_common.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#define QL_STR2(x) #x
#define QL_STR(x) QL_STR2(x)

typedef struct {
    void **fn;
    const char *name;
} sym_slot;

/* Opens soname (then the build's library folder) and fills every slot; on failure writes the reason to err. */
static bool open_lib(const char *soname, sym_slot *slots, size_t n, char *err, size_t errlen) {
    void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
#ifdef QL_CUDA_LIBDIR
    if (!lib) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", QL_CUDA_LIBDIR, soname);
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
#endif
    if (!lib) {
        const char *why = dlerror();
        snprintf(err, errlen, "cuda: cannot load %s (%s)", soname, why ? why : "not found");
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (!(*slots[i].fn = dlsym(lib, slots[i].name))) {
            snprintf(err, errlen, "cuda: %s has no %s", soname, slots[i].name);
            return false; /* the library stays mapped: harmless, and another symbol may still be needed later */
        }
    return true;
}

static ql_cublas_api g_cublas;
static bool g_cublas_ok;
static char g_cublas_err[400];
static pthread_once_t g_cublas_once = PTHREAD_ONCE_INIT;

static void cublas_open(void) {
    sym_slot s[] = {
        {(void **)&g_cublas.Create, "cublasCreate_v2"},
        {(void **)&g_cublas.Destroy, "cublasDestroy_v2"},
        {(void **)&g_cublas.SetStream, "cublasSetStream_v2"},
        {(void **)&g_cublas.SetMathMode, "cublasSetMathMode"},
        {(void **)&g_cublas.Sgemm, "cublasSgemm_v2"},
        {(void **)&g_cublas.Dgemm, "cublasDgemm_v2"},
        {(void **)&g_cublas.DgemmStridedBatched, "cublasDgemmStridedBatched"},
        {(void **)&g_cublas.GemmEx, "cublasGemmEx"},
        {(void **)&g_cublas.Dsyrk, "cublasDsyrk_v2"},
        {(void **)&g_cublas.GetStatusString, "cublasGetStatusString"},
    };
    g_cublas_ok = open_lib("libcublas.so." QL_STR(CUBLAS_VER_MAJOR), s, sizeof s / sizeof s[0], g_cublas_err,
                           sizeof g_cublas_err);
}

const ql_cublas_api *ql_cublas(void) {
    pthread_once(&g_cublas_once, cublas_open);
    if (g_cublas_ok) return &g_cublas;
    ql_fail(QL_ERR_UNSUPPORTED, "%s", g_cublas_err);
    return NULL;
}

static ql_cusolver_api g_cusolver;
static bool g_cusolver_ok;
static char g_cusolver_err[400];
static pthread_once_t g_cusolver_once = PTHREAD_ONCE_INIT;

static void cusolver_open(void) {
    sym_slot s[] = {
        {(void **)&g_cusolver.Create, "cusolverDnCreate"},
        {(void **)&g_cusolver.CreateParams, "cusolverDnCreateParams"},
        {(void **)&g_cusolver.Xpotrf_bufferSize, "cusolverDnXpotrf_bufferSize"},
        {(void **)&g_cusolver.Xpotrf, "cusolverDnXpotrf"},
        {(void **)&g_cusolver.Xtrtri_bufferSize, "cusolverDnXtrtri_bufferSize"},
        {(void **)&g_cusolver.Xtrtri, "cusolverDnXtrtri"},
    };
    g_cusolver_ok = open_lib("libcusolver.so." QL_STR(CUSOLVER_VER_MAJOR), s, sizeof s / sizeof s[0],
                             g_cusolver_err, sizeof g_cusolver_err);
}

const ql_cusolver_api *ql_cusolver(void) {
    pthread_once(&g_cusolver_once, cusolver_open);
    if (g_cusolver_ok) return &g_cusolver;
    ql_fail(QL_ERR_UNSUPPORTED, "%s", g_cusolver_err);
    return NULL;
}
#endif /* QL_HAVE_CUDA */
