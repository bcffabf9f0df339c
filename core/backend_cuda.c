/* backend_cuda.c — the CUDA backend of the forward pass (core/backend.h): plain C over the CUDA runtime, cuBLAS
 * and the device kernels of kernels/forward_cuda.h. Built only with nvcc (QL_HAVE_CUDA); without a device,
 * create() fails with one line.
 *
 * Numbers: the same F32 weights as the CPU backend (each layer decoded on the device by the format registry's
 * CUDA codecs, bit-exact with the scalar reference; formats without one are decoded on the host by the
 * registry and uploaded), cuBLAS sgemm where the CPU calls OpenBLAS (only summation order differs), llama.cpp's
 * activation rounding, RoPE from a cos/sin table the host fills with the CPU's formula, GeGLU from the CPU's
 * fp16 table; simulated activation quantization (INT8 / FP8 per token or tensor, LLM.int8()) rounded by a
 * kernel bit-exact with core/actquant.c; INT8 weights under dynamic INT8 activations as exact int32 products of
 * the stored rows (uploaded per use) and the per-token codes, bit-exact with core/wmatmul.c.
 *
 * Memory: activations are managed memory (the host reads them after sync(), as the seam says). Weights live on
 * the device as F32, one arena per layer: when every layer fits (with room for activations) each layer is
 * decoded at first use and kept; otherwise two arenas alternate, the layer in use and the next one in flight:
 * a worker thread packs the next layer's stored bytes into pinned memory and queues the copy and the decode
 * on a second stream, which the compute stream waits for by event ($QL_CUDA_STREAM=1|0 forces either way,
 * $QL_CUDA_MEM_MB caps the memory used, $QL_CUDA_DEVICE picks the GPU). $QL_CUDA_HALF_GEMM=1 keeps F16 matrices as
 * fp16 and multiplies them by fp16 activations on tensor cores (cublasGemmEx, F32 accumulation) when the layer's
 * input is rounded to F16 anyway (llama.cpp's rule for F16 weights): half the memory, another summation order. The embedding rows are decoded on the
 * host (ql_wmatmul_get_rows), so a 128k-vocabulary table never goes to the device unless the output shares it.
 *
 * Activation statistics: Σ xᵀx accumulated on the device in double (cublasDsyrk), folded into the host's at the
 * end (core/stats.c asks through the optional xtx_* ops).
 *
 * KV cache: F32, and llama.cpp's cache types f16 / bf16 (16-bit), q8_0 (llama.cpp's cache-write rounding) and
 * q4_0, q4_1, q5_0, q5_1 (the registry's CUDA codecs) stored as such on the device, the query rounded to the K
 * type's vec_dot type as ggml does; iq4_nl with ggml's quicker cache-write search (ql_cuda_quantize_iq4_nl_kv);
 * qlab's INT / FP8 sides (residual window, Hadamard K) as core/kv_cache.c simulates them, attended with their
 * float band like the CPU backend. All ops queue on one stream under one mutex, so passes from
 * several threads are serialized on the device. */
#include "core/backend.h"
#include "core/backend_cuda.h"

typedef int ql_backend_cuda_translation_unit; /* keeps the file a valid C unit when CUDA is absent */

#ifdef QL_HAVE_CUDA
#include "core/wmatmul.h"
#include "formats/format.h"
#include "kernels/cuda_api.h"
#include "kernels/cuda_libs.h"
#include "kernels/forward_cuda.h"
#include "kernels/ggml_types.h"

#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* one weight the forward pass may ask for */
typedef struct {
    const ql_gguf_tensor *t;
    int layer;        /* -1: embedding / output (kept on the device once loaded) */
    float *dev;       /* global: its device F32 copy (NULL until first use) */
    int64_t dev_off;  /* layer weight: offset (floats) in its layer's arena */
    int64_t stage_off; /* layer weight: offset (bytes) in the layer's staging and raw buffers */
    bool dev_decode;  /* decoded on the device from its stored bytes (else F32 uploaded) */
    bool keep_half;   /* F16 matrix kept as fp16 on the device (QL_CUDA_HALF_GEMM): multiplied by cublasGemmEx */
} cu_weight;

/* one layer's decoded F32 weights on the device */
typedef struct {
    float *dev;
    int layer;              /* the layer it holds or is being filled with; -1: none */
    uint64_t posted, done;  /* fill jobs: done == posted once the last one is queued on the copy stream */
    ql_status st;
    char err[256];
    cudaEvent_t ready;   /* recorded on the copy stream after the fill */
    cudaEvent_t free_ev; /* recorded on the compute stream when a fill is posted: all earlier uses are queued */
} cu_arena;

/* pinned staging of one layer's stored bytes and their device copy; two, alternating by layer parity */
typedef struct {
    void *host, *dev;
    cudaEvent_t staged; /* the copy out of host is done */
} cu_stage;

enum { JOBQ = 8 };

typedef struct {
    const ql_model *m;
    const ql_config *c;
    int device, n_threads;
    cudaStream_t compute, copy;
    const ql_cublas_api *cb; /* kernels/cuda_libs.h */
    cublasHandle_t blas;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t worker;
    bool worker_started, quit;
    struct { int arena, layer; uint64_t seq; } jobs[JOBQ];
    int jq_head, jq_len;

    cu_weight *w;
    int n_w;
    int64_t *layer_floats, *layer_stage; /* per layer: F32 floats, staging bytes */
    bool resident;      /* every layer kept (arena l = layer l), else two alternating arenas */
    bool half_gemm;     /* $QL_CUDA_HALF_GEMM=1: F16 matrices stay fp16, products on tensor cores */
    int n_arenas;
    cu_arena *arenas;
    cu_stage stage[2];
    int64_t stage_cap;  /* bytes of each staging buffer */
    int cur_layer;      /* the layer the compute stream last waited for */

    float *swap[2];     /* F32 rows of a probe's weight and bias (ql_backend_weight.f32), uploaded per use */
    size_t swap_cap[2];
    double *xd;         /* x converted to double for Σ xᵀx (xtx_add) */
    size_t xd_cap;
    float *ystage;      /* device y of a matmul whose y is host memory (the logits) */
    size_t ystage_cap;
    float *cs[4];       /* RoPE cos/sin [cs_len[k]][rope_dim]: k & 1 for sliding layers, k & 2 LongRoPE's long factors */
    int cs_len[4];
    float *freq[2];     /* host: base^(-2i/d) per pair, global / sliding */
    uint16_t *gelu;     /* device copy of the fp16 GELU table (GeGLU models) */
    void *cpu;          /* the CPU backend's context, for the paths with no device twin */
    uint8_t *aq_flags;  /* LLM.int8()'s outlier columns of one matmul's input */
    size_t aq_flags_cap;
    uint8_t *i8_rows;   /* an INT8 weight's stored rows, for the integer products under INT8 activations */
    size_t i8_rows_cap;
} cuda_backend;

typedef struct {
    int max_tokens, kv_dim;
    ql_kv_scheme scheme;
    int kind[2];              /* K, V: kv_store_kind */
    const ql_format *f[2];    /* K, V: the registry entry of a block type (Q8_0, codec), else NULL */
    int64_t row_bytes[2];     /* bytes of one token's row */
    void *buf[2];             /* K, V: [max_tokens] rows (KV_SIM: the float rows) */
    /* KV_SIM (qlab's INT / FP8 sides): the decoded rows of tokens [0, n_quant), the rotation's rows, and the
     * side as the kernels take it */
    float *deq[2], *rot[2];
    int n_quant[2];
    ql_cudafwd_kv_side sim[2];
    /* the float band's scratch (a side read in float near the diagonal): scores [T, T] and V - decode */
    float *band, *vdiff;
    size_t band_cap, vdiff_cap;
} cu_kv;

#define CU(call)                                                                                              \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) {                                                                              \
            cudaGetLastError(); /* a failed cudaMalloc must not fail this thread's next launch check too */   \
            return ql_fail(e_ == cudaErrorMemoryAllocation ? QL_ERR_NOMEM : QL_ERR_IO, "cuda: %s: %s", #call, \
                           cudaGetErrorString(e_));                                                           \
        }                                                                                                     \
    } while (0)

/* A device scratch buffer *p of at least `bytes` (capacity *cap), regrown when short; cudaFree synchronizes, so
 * work queued on the old buffer is done before it goes. */
static ql_status dev_reserve(void *p, size_t *cap, size_t bytes) {
    void **pp = p;
    if (bytes <= *cap) return QL_OK;
    if (*pp) CU(cudaFree(*pp));
    *pp = NULL;
    *cap = 0;
    CU(cudaMalloc(pp, bytes ? bytes : 1));
    *cap = bytes;
    return QL_OK;
}
#define BLAS(call)                                                                                            \
    do {                                                                                                      \
        cublasStatus_t b_ = (call);                                                                           \
        if (b_ != CUBLAS_STATUS_SUCCESS) return ql_fail(QL_ERR_IO, "cuda: %s: cuBLAS status %d", #call, (int)b_); \
    } while (0)

/* cuBLAS is opened when a backend is created, not linked (kernels/cuda_libs.h says why). */
#define CB (*be->cb)

const char *ql_cuda_blas_open(void) { return ql_cublas() ? NULL : ql_last_error(); }

static int64_t tensor_elems(const ql_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

static const ql_format_cuda_ops *cuda_codec(const ql_gguf_tensor *t) {
    const ql_format *f = ql_format_by_type(t->type);
    return f && f->cuda && f->cuda->dequantize_dev ? f->cuda : NULL;
}

static bool is_device_ptr(const void *p) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/* Host side of a fill: t's stored bytes (decoded on the device) or its F32 rows (stored F32, or decoded here by
 * the registry) into the staging buffer at dst. */
static ql_status stage_tensor(const cuda_backend *be, const cu_weight *w, uint8_t *dst) {
    const ql_gguf_tensor *t = w->t;
    if (!t->data) return ql_fail(QL_ERR_ARG, "tensor '%s' has no data", t->name);
    if (w->dev_decode) {
        memcpy(dst, t->data, t->nbytes);
        return QL_OK;
    }
    if (t->type == QL_TYPE_F32) {
        memcpy(dst, t->data, (size_t)tensor_elems(t) * sizeof(float));
        return QL_OK;
    }
    const ql_format *f = ql_format_by_type(t->type);
    if (!f || !f->dequantize_rows) {
        const ql_type_info *ti = ql_type_get(t->type);
        return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be decoded", t->name, ti ? ti->name : "?");
    }
    return ql_format_dequantize(f, t->data, (float *)dst, tensor_elems(t) / t->ne[0], t->ne[0], be->n_threads);
}

/* Device side: the staged bytes at raw become F32 at dst, queued on stream s. */
static ql_status decode_tensor(const cu_weight *w, const uint8_t *raw, float *dst, cudaStream_t s) {
    const ql_gguf_tensor *t = w->t;
    if (w->keep_half) {
        CU(cudaMemcpyAsync(dst, raw, (size_t)tensor_elems(t) * 2, cudaMemcpyDeviceToDevice, s));
        return QL_OK;
    }
    if (w->dev_decode) return cuda_codec(t)->dequantize_dev(raw, dst, tensor_elems(t) / t->ne[0], t->ne[0], s);
    CU(cudaMemcpyAsync(dst, raw, (size_t)tensor_elems(t) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    return QL_OK;
}

/* Fills arena a with layer l (the worker thread runs this; it touches only a, the staging of l's parity and
 * the copy stream). */
static ql_status fill_arena(cuda_backend *be, cu_arena *a, int l) {
    cu_stage *sg = &be->stage[l & 1];
    CU(cudaSetDevice(be->device));
    if (!a->dev) CU(cudaMalloc((void **)&a->dev, (size_t)QL_MAX(be->layer_floats[l], 1) * sizeof(float)));
    CU(cudaEventSynchronize(sg->staged)); /* the previous copy out of this staging buffer is done */
    ql_status st;
    for (int i = 0; i < be->n_w; i++)
        if (be->w[i].layer == l && (st = stage_tensor(be, &be->w[i], (uint8_t *)sg->host + be->w[i].stage_off)))
            return st;
    CU(cudaStreamWaitEvent(be->copy, a->free_ev, 0)); /* the compute stream is done with what a held */
    CU(cudaMemcpyAsync(sg->dev, sg->host, (size_t)be->layer_stage[l], cudaMemcpyHostToDevice, be->copy));
    CU(cudaEventRecord(sg->staged, be->copy));
    for (int i = 0; i < be->n_w; i++)
        if (be->w[i].layer == l &&
            (st = decode_tensor(&be->w[i], (const uint8_t *)sg->dev + be->w[i].stage_off, a->dev + be->w[i].dev_off,
                                be->copy)))
            return st;
    CU(cudaEventRecord(a->ready, be->copy));
    return QL_OK;
}

static void *worker_main(void *p) {
    cuda_backend *be = p;
    pthread_mutex_lock(&be->mu);
    for (;;) {
        while (!be->quit && be->jq_len == 0) pthread_cond_wait(&be->cv, &be->mu);
        if (be->quit) break;
        const int ai = be->jobs[be->jq_head].arena, l = be->jobs[be->jq_head].layer;
        const uint64_t seq = be->jobs[be->jq_head].seq;
        be->jq_head = (be->jq_head + 1) % JOBQ;
        be->jq_len--;
        pthread_mutex_unlock(&be->mu);
        cu_arena *a = &be->arenas[ai];
        ql_status st = fill_arena(be, a, l);
        pthread_mutex_lock(&be->mu);
        a->st = st;
        if (st) snprintf(a->err, sizeof a->err, "%s", ql_last_error());
        a->done = seq;
        pthread_cond_broadcast(&be->cv);
    }
    pthread_mutex_unlock(&be->mu);
    return NULL;
}

/* Queues a fill of arena ai with layer l (mutex held). Everything queued on the compute stream so far may
 * still read the arena: the fill waits for it. */
static ql_status post_fill(cuda_backend *be, int ai, int l) {
    cu_arena *a = &be->arenas[ai];
    while (be->jq_len == JOBQ) pthread_cond_wait(&be->cv, &be->mu);
    CU(cudaEventRecord(a->free_ev, be->compute));
    a->layer = l;
    a->st = QL_OK;
    const int slot = (be->jq_head + be->jq_len) % JOBQ;
    be->jobs[slot].arena = ai;
    be->jobs[slot].layer = l;
    be->jobs[slot].seq = ++a->posted;
    be->jq_len++;
    pthread_cond_broadcast(&be->cv);
    return QL_OK;
}

static int arena_of(const cuda_backend *be, int l) { return be->resident ? l : l & 1; }

/* Layer l's arena, ready for the compute stream (mutex held); the next layer is put in flight. */
static ql_status ensure_layer(cuda_backend *be, int l, cu_arena **out) {
    const int ai = arena_of(be, l);
    cu_arena *a = &be->arenas[ai];
    ql_status st;
    if (be->cur_layer == l && a->layer == l && a->done == a->posted && !a->st) {
        *out = a;
        return QL_OK;
    }
    /* The wait releases the mutex: another host thread's pass (stats workers, sense) may queue a different
     * layer into this arena meanwhile, so the arena must hold l once every fill posted to it is done. */
    for (;;) {
        if (a->layer != l && (st = post_fill(be, ai, l))) return st;
        while (a->done < a->posted) pthread_cond_wait(&be->cv, &be->mu);
        if (a->layer == l) break;
    }
    if (a->st) {
        st = a->st;
        a->layer = -1; /* a later request tries again */
        return ql_fail(st, "%s", a->err);
    }
    CU(cudaStreamWaitEvent(be->compute, a->ready, 0));
    be->cur_layer = l;
    *out = a;
    /* the next layer in flight: never into the arena in use (an odd layer count wraps onto it) */
    const int next = (l + 1) % be->c->n_layer, ni = arena_of(be, next);
    if (ni != ai && be->arenas[ni].layer != next && (st = post_fill(be, ni, next))) return st;
    return QL_OK;
}

/* A global weight's device copy, decoded once on the compute stream. */
static ql_status load_global(cuda_backend *be, cu_weight *w) {
    const ql_gguf_tensor *t = w->t;
    const int64_t n = tensor_elems(t);
    const size_t sbytes = w->dev_decode ? t->nbytes : (size_t)n * sizeof(float);
    uint8_t *host = malloc(sbytes ? sbytes : 1);
    if (!host) return ql_fail(QL_ERR_NOMEM, "out of memory staging '%s'", t->name);
    void *raw = NULL;
    float *dev = NULL;
    ql_status st = stage_tensor(be, w, host);
    cudaError_t e = cudaSuccess;
    if (!st && (e = cudaMalloc((void **)&dev, (size_t)n * sizeof(float))) == cudaSuccess &&
        (e = cudaMalloc(&raw, sbytes ? sbytes : 1)) == cudaSuccess &&
        (e = cudaMemcpyAsync(raw, host, sbytes, cudaMemcpyHostToDevice, be->compute)) == cudaSuccess)
        st = decode_tensor(w, raw, dev, be->compute);
    if (!st && e == cudaSuccess) e = cudaStreamSynchronize(be->compute);
    free(host);
    if (raw) cudaFree(raw);
    if (!st && e != cudaSuccess)
        st = ql_fail(e == cudaErrorMemoryAllocation ? QL_ERR_NOMEM : QL_ERR_IO, "cuda: loading '%s': %s", t->name,
                     cudaGetErrorString(e));
    if (st) {
        if (dev) cudaFree(dev);
        return st;
    }
    w->dev = dev;
    return QL_OK;
}

/* The device F32 rows of weight bw (mutex held): a probe's rows uploaded (into swap buffer `slot`: 0 for a weight,
 * 1 for its bias), a global's copy, or its layer's arena. */
static ql_status weight_dev(cuda_backend *be, const ql_backend_weight *bw, int slot, const float **out, bool *half) {
    const ql_gguf_tensor *t = bw->t;
    *half = false;
    if (bw->f32) {
        const size_t bytes = (size_t)tensor_elems(t) * sizeof(float);
        const ql_status st = dev_reserve(&be->swap[slot], &be->swap_cap[slot], bytes);
        if (st) return st;
        CU(cudaMemcpyAsync(be->swap[slot], bw->f32, bytes, cudaMemcpyHostToDevice, be->compute));
        *out = be->swap[slot];
        return QL_OK;
    }
    for (int i = 0; i < be->n_w; i++) {
        cu_weight *w = &be->w[i];
        if (w->t != t) continue;
        *half = w->keep_half;
        if (w->layer < 0) {
            ql_status st = w->dev ? QL_OK : load_global(be, w);
            *out = w->dev;
            return st;
        }
        cu_arena *a = NULL;
        ql_status st = ensure_layer(be, w->layer, &a);
        if (st) return st;
        *out = a->dev + w->dev_off;
        return QL_OK;
    }
    return ql_fail(QL_ERR_ARG, "cuda backend: tensor '%s' is not a weight of this model", t->name);
}

extern const ql_backend_ops ql_backend_cpu;

/* How many CUDA devices this machine has (--device and the automatic choice ask before any work); 0 with the
 * one-line reason when none. */
static int cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        cudaGetLastError();
        ql_fail(QL_ERR_UNSUPPORTED, "cuda backend: no CUDA device (%s)",
                e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
        return 0;
    }
    return n;
}

static void cuda_destroy(void *p);

static ql_status create_on(const ql_model *m, int n_threads, cuda_backend **out);

/* A failed create leaves nothing behind (the caller frees only what a successful create returned). */
static ql_status cuda_create(const ql_model *m, int n_threads, void **out) {
    cuda_backend *be = NULL;
    ql_status st = create_on(m, n_threads, &be);
    if (st) {
        cuda_destroy(be);
        be = NULL;
    }
    *out = be;
    return st;
}

static ql_status create_on(const ql_model *m, int n_threads, cuda_backend **out) {
    *out = NULL;
    if (m->cfg.n_expert > 0) /* the weight table holds each role tensor whole; experts are sliced per call */
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: the cuda backend has no mixture-of-experts layers yet (use --device cpu)",
                       m->path);
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        return ql_fail(QL_ERR_UNSUPPORTED, "cuda backend: no CUDA device (%s)",
                       e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
    }
    /* --device cuda:N (ql_backend_select, which also exports $QL_CUDA_DEVICE), else $QL_CUDA_DEVICE, else 0 */
    const char *dv = getenv("QL_CUDA_DEVICE");
    const int device = ql_backend_device() > 0 ? ql_backend_device() : dv && *dv ? atoi(dv) : 0;
    if (device < 0 || device >= n_dev)
        return ql_fail(QL_ERR_ARG, "cuda backend: device %d does not exist (%d found)", device, n_dev);
    const ql_config *c = &m->cfg;
    cuda_backend *be = ql_calloc(1, sizeof *be);
    be->m = m;
    be->c = c;
    be->device = device;
    be->n_threads = n_threads > 0 ? n_threads : 1;
    be->cur_layer = -1;
    pthread_mutex_init(&be->mu, NULL);
    pthread_cond_init(&be->cv, NULL);
    *out = be;
    CU(cudaSetDevice(device));
    CU(cudaStreamCreateWithFlags(&be->compute, cudaStreamNonBlocking));
    CU(cudaStreamCreateWithFlags(&be->copy, cudaStreamNonBlocking));
    if (!(be->cb = ql_cublas())) return QL_ERR_UNSUPPORTED;
    BLAS(CB.Create(&be->blas));
    BLAS(CB.SetStream(be->blas, be->compute));
    BLAS(CB.SetMathMode(be->blas, CUBLAS_DEFAULT_MATH)); /* full F32: no TF32 tensor cores */

    /* the weights: the output side, then every role tensor of every layer (a fused tensor's row views, which is
     * what the forward pass asks for, rather than the fused parent) */
    be->w = ql_calloc((size_t)c->n_layer * QL_ROLE_COUNT + 3, sizeof *be->w);
    be->layer_floats = ql_calloc((size_t)c->n_layer, sizeof(int64_t));
    be->layer_stage = ql_calloc((size_t)c->n_layer, sizeof(int64_t));
    const char *hg = getenv("QL_CUDA_HALF_GEMM");
    be->half_gemm = hg && *hg && strcmp(hg, "0") != 0;
    const ql_gguf_tensor *globals[] = {m->output_norm, m->output ? m->output : m->tok_embd};
    for (int g = 0; g < 2; g++)
        if (globals[g]) {
            cu_weight *w = &be->w[be->n_w++];
            w->t = globals[g];
            w->layer = -1;
            w->dev_decode = cuda_codec(globals[g]) != NULL;
            w->keep_half = be->half_gemm && globals[g]->type == QL_TYPE_F16 && globals[g]->ne[1] > 1;
        }
    int64_t total = 0, max_floats = 0;
    for (int l = 0; l < c->n_layer; l++) {
        for (int r = 0; r < QL_ROLE_COUNT; r++) {
            const ql_gguf_tensor *t = ql_layer_role_get(&m->layers[l], (ql_role)r);
            bool parent = false;
            for (int v = 0; t && v < m->n_views; v++) parent |= m->views[v].parent == t;
            if (!t || parent) continue;
            cu_weight *w = &be->w[be->n_w++];
            w->t = t;
            w->layer = l;
            w->dev_decode = cuda_codec(t) != NULL;
            w->keep_half = be->half_gemm && t->type == QL_TYPE_F16 && t->ne[1] > 1;
            w->dev_off = be->layer_floats[l];
            w->stage_off = be->layer_stage[l];
            const int64_t floats = w->keep_half ? (tensor_elems(t) + 1) / 2 : tensor_elems(t);
            be->layer_floats[l] += (floats + 3) & ~(int64_t)3; /* 16-byte aligned: the decoders' float4 path */
            be->layer_stage[l] += (int64_t)(((w->dev_decode ? t->nbytes : (uint64_t)tensor_elems(t) * 4) + 255) & ~255ull);
        }
        total += be->layer_floats[l] * 4;
        max_floats = QL_MAX(max_floats, be->layer_floats[l]);
        be->stage_cap = QL_MAX(be->stage_cap, be->layer_stage[l]);
    }
    /* resident when every layer fits beside the output matrix, two staging buffers and room for activations */
    size_t free_b = 0, total_b = 0;
    CU(cudaMemGetInfo(&free_b, &total_b));
    const char *mb = getenv("QL_CUDA_MEM_MB"), *stream_env = getenv("QL_CUDA_STREAM");
    const double budget = mb && *mb ? atof(mb) * 1048576.0 : 0.9 * (double)free_b;
    const double output_b = m->output || m->tok_embd ? (double)tensor_elems(globals[1]) * 4 : 0;
    const double need = (double)total + output_b + 2.0 * be->stage_cap + 2.0 * 1073741824.0;
    be->resident = stream_env && *stream_env ? strcmp(stream_env, "0") == 0 : need <= budget;
    if (!be->resident)
        ql_log(2, "%s: cuda: streaming layers (%.1f GiB of F32 weights; %.1f GiB budget)", m->path, total / 1073741824.0,
               budget / 1073741824.0);
    be->n_arenas = be->resident ? c->n_layer : QL_MIN(c->n_layer, 2);
    be->arenas = ql_calloc((size_t)QL_MAX(be->n_arenas, 1), sizeof *be->arenas);
    for (int i = 0; i < be->n_arenas; i++) {
        be->arenas[i].layer = -1;
        CU(cudaEventCreateWithFlags(&be->arenas[i].ready, cudaEventDisableTiming));
        CU(cudaEventCreateWithFlags(&be->arenas[i].free_ev, cudaEventDisableTiming));
        if (!be->resident) CU(cudaMalloc((void **)&be->arenas[i].dev, (size_t)QL_MAX(max_floats, 1) * sizeof(float)));
    }
    for (int i = 0; i < 2; i++) {
        CU(cudaHostAlloc(&be->stage[i].host, (size_t)QL_MAX(be->stage_cap, 1), cudaHostAllocDefault));
        CU(cudaMalloc(&be->stage[i].dev, (size_t)QL_MAX(be->stage_cap, 1)));
        CU(cudaEventCreateWithFlags(&be->stage[i].staged, cudaEventDisableTiming));
    }
    if (pthread_create(&be->worker, NULL, worker_main, be) != 0)
        return ql_fail(QL_ERR_IO, "cuda backend: cannot start the layer loader thread");
    be->worker_started = true;

    for (int k = 0; k < 2; k++) be->freq[k] = ql_malloc((size_t)QL_MAX(c->rope_dim / 2, 1) * sizeof(float));
    if (c->ffn_act == QL_FFN_GEGLU_TANH) {
        uint16_t *tab = ql_malloc(sizeof(uint16_t) << 16);
        ql_cudafwd_gelu_table(tab);
        e = cudaMalloc((void **)&be->gelu, sizeof(uint16_t) << 16);
        if (e == cudaSuccess) e = cudaMemcpy(be->gelu, tab, sizeof(uint16_t) << 16, cudaMemcpyHostToDevice);
        free(tab);
        if (e != cudaSuccess) return ql_fail(QL_ERR_IO, "cuda: GELU table: %s", cudaGetErrorString(e));
    }
    return ql_backend_cpu.create(m, n_threads, &be->cpu);
}

static void cuda_destroy(void *p) {
    cuda_backend *be = p;
    if (!be) return;
    cudaSetDevice(be->device);
    if (be->compute) cudaStreamSynchronize(be->compute);
    if (be->worker_started) {
        pthread_mutex_lock(&be->mu);
        while (be->jq_len > 0) pthread_cond_wait(&be->cv, &be->mu); /* a fill in progress finishes first */
        be->quit = true;
        pthread_cond_broadcast(&be->cv);
        pthread_mutex_unlock(&be->mu);
        pthread_join(be->worker, NULL);
    }
    if (be->copy) cudaStreamSynchronize(be->copy);
    for (int i = 0; i < be->n_w; i++)
        if (be->w[i].dev) cudaFree(be->w[i].dev);
    for (int i = 0; i < be->n_arenas; i++) {
        if (be->arenas[i].dev) cudaFree(be->arenas[i].dev);
        if (be->arenas[i].ready) cudaEventDestroy(be->arenas[i].ready);
        if (be->arenas[i].free_ev) cudaEventDestroy(be->arenas[i].free_ev);
    }
    for (int i = 0; i < 2; i++) {
        if (be->stage[i].host) cudaFreeHost(be->stage[i].host);
        if (be->stage[i].dev) cudaFree(be->stage[i].dev);
        if (be->stage[i].staged) cudaEventDestroy(be->stage[i].staged);
    }
    void *dev_bufs[] = {be->aq_flags, be->i8_rows, be->swap[0], be->swap[1], be->xd, be->ystage, be->cs[0], be->cs[1], be->cs[2], be->cs[3], be->gelu};
    for (size_t i = 0; i < QL_ARRAY_LEN(dev_bufs); i++)
        if (dev_bufs[i]) cudaFree(dev_bufs[i]);
    if (be->blas) CB.Destroy(be->blas);
    if (be->compute) cudaStreamDestroy(be->compute);
    if (be->copy) cudaStreamDestroy(be->copy);
    if (be->cpu) ql_backend_cpu.destroy(be->cpu);
    free(be->freq[0]);
    free(be->freq[1]);
    free(be->w);
    free(be->arenas);
    free(be->layer_floats);
    free(be->layer_stage);
    pthread_mutex_destroy(&be->mu);
    pthread_cond_destroy(&be->cv);
    free(be);
}

static void *cuda_alloc(void *p, size_t bytes) {
    cuda_backend *be = p;
    void *q = NULL;
    cudaSetDevice(be->device);
    if (cudaMallocManaged(&q, bytes ? bytes : 1, cudaMemAttachGlobal) != cudaSuccess) {
        cudaGetLastError();
        ql_fail(QL_ERR_NOMEM, "cuda: cannot allocate %zu bytes of managed memory", bytes);
        return NULL;
    }
    return q;
}

static void cuda_release(void *p, void *q) {
    cuda_backend *be = p;
    cudaStreamSynchronize(be->compute);
    cudaFree(q);
}

static ql_status sync_locked(cuda_backend *be) {
    CU(cudaStreamSynchronize(be->compute));
    return QL_OK;
}

static ql_status cuda_sync(void *p) {
    cuda_backend *be = p;
    pthread_mutex_lock(&be->mu);
    cudaSetDevice(be->device);
    ql_status st = sync_locked(be);
    pthread_mutex_unlock(&be->mu);
    return st;
}

static int cuda_set_threads(void *p, int n) {
    cuda_backend *be = p;
    pthread_mutex_lock(&be->mu);
    const int old = be->n_threads;
    be->n_threads = n > 0 ? n : 1;
    pthread_mutex_unlock(&be->mu);
    return old;
}

/* Each op below takes the mutex, queues its work on the compute stream and returns. */
#define LOCKED(body)                                                                                          \
    do {                                                                                                      \
        cuda_backend *be = p;                                                                                 \
        pthread_mutex_lock(&be->mu);                                                                          \
        cudaSetDevice(be->device); /* the calling thread may be new to the runtime (device 0 by default) */   \
        ql_status st_ = (body);                                                                               \
        pthread_mutex_unlock(&be->mu);                                                                        \
        return st_;                                                                                           \
    } while (0)

/* the embedding rows are decoded on the host straight into the managed buffer (nothing on the device reads it
 * once the stream is synchronized) */
static ql_status get_rows_locked(cuda_backend *be, const ql_backend_weight *w, const int32_t *ids, int n, int dim,
                                 float *y) {
    ql_status st = sync_locked(be);
    return st ? st : ql_wmatmul_get_rows(w, ids, n, dim, y);
}
static ql_status cuda_get_rows(void *p, const ql_backend_weight *w, const int32_t *ids, int n, int dim, float *y) {
    LOCKED(get_rows_locked(be, w, ids, n, dim, y));
}

_Static_assert(QL_CUDAFWD_ACT_INT8_TOKEN == QL_ACT_INT8_TOKEN && QL_CUDAFWD_ACT_INT8_TENSOR == QL_ACT_INT8_TENSOR &&
                   QL_CUDAFWD_ACT_FP8_TOKEN == QL_ACT_FP8_TOKEN && QL_CUDAFWD_ACT_FP8_TENSOR == QL_ACT_FP8_TENSOR &&
                   QL_CUDAFWD_ACT_LLM_INT8 == QL_ACT_LLM_INT8,
               "the activation kernels number the modes as core/actquant.h");

static ql_status matmul_locked(cuda_backend *be, const ql_backend_weight *w, const ql_backend_weight *bias,
                               const float *x, float *y, int T, int K, int N, float beta, float *xtmp) {
    ql_status st;
    if (ql_wmatmul_int8_applies(w, K)) {
        if (!is_device_ptr(y)) { /* an int8 output matrix writing the caller's logits: the CPU's op, rare */
            if ((st = sync_locked(be))) return st;
            return ql_backend_cpu.matmul(be->cpu, w, bias, x, y, T, K, N, beta, xtmp);
        }
        /* INT8 x INT8 integer products on the device: the stored rows (fp16 scale, K codes) uploaded per use */
        const size_t raw = (size_t)N * ((size_t)K + 2);
        if ((st = dev_reserve(&be->i8_rows, &be->i8_rows_cap, raw))) return st;
        CU(cudaMemcpyAsync(be->i8_rows, w->t->data, raw, cudaMemcpyHostToDevice, be->compute));
        int8_t *q = (int8_t *)xtmp;
        float *d = (float *)((uint8_t *)xtmp + (((size_t)T * K + 15) & ~(size_t)15));
        if ((st = ql_cudafwd_int8_matmul(x, q, d, be->i8_rows, (int64_t)K + 2, y, T, K, N, beta, be->compute))) return st;
        if (bias) {
            const float *B;
            bool bias_half;
            if ((st = weight_dev(be, bias, 1, &B, &bias_half))) return st;
            if ((st = ql_cudafwd_add_bias(y, B, T, N, be->compute))) return st;
        }
        return QL_OK;
    }
    /* simulated activation quantization wins over llama.cpp's rounding (as in the CPU backend) */
    const bool aq = w->aq && w->aq->mode != QL_ACT_NONE;
    const float *W, *B = NULL;
    bool half, bias_half = false;
    if ((st = weight_dev(be, w, 0, &W, &half))) return st;
    if (bias && (st = weight_dev(be, bias, 1, &B, &bias_half))) return st;
    /* an fp16 weight under fp16 activations (what llama.cpp does for F16 weights): the products of two halves
     * are exact in F32, so tensor cores with F32 accumulation compute the sgemm's sum in another order */
    const bool half_x = half && !aq && w->act_type == QL_TYPE_F16;
    if (half && !half_x) {
        /* other activations: the weight decoded to F32 for this product */
        const size_t bytes = (size_t)N * K * sizeof(float);
        if ((st = dev_reserve(&be->swap[0], &be->swap_cap[0], bytes))) return st;
        if ((st = ql_cuda_dequantize_f16_dev(W, be->swap[0], N, K, be->compute))) return st;
        W = be->swap[0];
    }
    if (half_x) {
        if ((st = ql_cudafwd_to_half(x, (uint16_t *)xtmp, (size_t)T * K, false, be->compute))) return st;
    } else if (aq) {
        if ((st = dev_reserve(&be->aq_flags, &be->aq_flags_cap, (size_t)K))) return st;
        const float thr = w->aq->threshold > 0 ? w->aq->threshold : QL_LLM_INT8_THRESHOLD;
        if ((st = ql_cudafwd_act_quant((int)w->aq->mode, w->aq->scale, thr, x, xtmp, T, K, be->aq_flags, be->compute)))
            return st;
        x = xtmp;
    } else if (w->act_type != QL_TYPE_F32) {
        if ((st = ql_cudafwd_round_act(w->act_type, x, xtmp, T, K, be->compute))) return st;
        x = xtmp;
    }
    float *yd = y;
    const bool host_y = !is_device_ptr(y); /* the caller's logits */
    const size_t ybytes = (size_t)T * N * sizeof(float);
    if (host_y) {
        if ((st = dev_reserve(&be->ystage, &be->ystage_cap, ybytes))) return st;
        yd = be->ystage;
        if (beta != 0.0f) CU(cudaMemcpyAsync(yd, y, ybytes, cudaMemcpyHostToDevice, be->compute));
    }
    const float one = 1.0f;
    /* row-major y[T,N] = x[T,K]·W[N,K]ᵀ is column-major yᵀ[N,T] = W[N,K] (stored as Kᵀ: op T) · xᵀ[K,T] */
    if (half_x)
        BLAS(CB.GemmEx(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, W, CUDA_R_16F, K, xtmp, CUDA_R_16F, K, &beta,
                          yd, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    else
        BLAS(CB.Sgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, W, K, x, K, &beta, yd, N));
    if (B && (st = ql_cudafwd_add_bias(yd, B, T, N, be->compute))) return st;
    if (host_y) {
        CU(cudaMemcpyAsync(y, yd, ybytes, cudaMemcpyDeviceToHost, be->compute));
        CU(cudaStreamSynchronize(be->compute));
    }
    return QL_OK;
}
static ql_status cuda_matmul(void *p, const ql_backend_weight *w, const ql_backend_weight *bias, const float *x,
                             float *y, int T, int K, int N, float beta, float *xtmp) {
    LOCKED(matmul_locked(be, w, bias, x, y, T, K, N, beta, xtmp));
}

static ql_status rmsnorm_locked(cuda_backend *be, const ql_backend_weight *w, const float *x, float *y, int T, int D,
                                float eps) {
    const float *W;
    bool half;
    ql_status st = weight_dev(be, w, 0, &W, &half);
    if (!st && half) st = ql_fail(QL_ERR_UNSUPPORTED, "cuda: norm '%s' kept as fp16", w->t->name);
    return st ? st : ql_cudafwd_rmsnorm(x, W, y, T, D, eps, be->compute);
}
static ql_status cuda_rmsnorm(void *p, const ql_backend_weight *w, const float *x, float *y, int T, int D, float eps) {
    LOCKED(rmsnorm_locked(be, w, x, y, T, D, eps));
}

void ql_cuda_rope_params(const ql_model *m, bool swa, int n_ctx, float *freq, ql_cudafwd_rope_params *out) {
    const ql_config *c = &m->cfg;
    const float base = swa && c->rope_base_swa > 0 ? c->rope_base_swa : c->rope_base;
    const bool plain = swa && c->desc->swa_rope_plain;
    const int half = c->rope_dim / 2;
    /* ggml multiplies theta by theta_scale = base^(-2/n_dims) once per pair, in float */
    float theta_scale = powf(base, -2.0f / (float)c->rope_dim), f = 1.0f;
    for (int i = 0; i < half; i++, f *= theta_scale) freq[i] = f;
    *out = (ql_cudafwd_rope_params){.freq = freq,
                                    /* rope_freqs, or LongRoPE's long / short factors by the context */
                                    .factors = ql_model_rope_factors(m, n_ctx),
                                    .freq_scale = 1.0f / (swa ? c->rope_scale_swa : c->rope_scale),
                                    .ext_factor = c->rope_yarn && !plain ? c->yarn_ext_factor : 0.0f,
                                    /* rope.scaling.attn_factor, times YaRN's */
                                    .mscale = plain ? 1.0f : (c->rope_yarn ? c->yarn_attn_factor : 1.0f) * c->rope_attn_factor,
                                    .half = half};
    if (out->ext_factor != 0.0f) {
        out->mscale *= 1.0f + 0.1f * logf(1.0f / out->freq_scale);
        /* ggml_rope_yarn_corr_dims, as the CPU backend computes it */
        const float nd = (float)c->rope_dim, lb = 2 * logf(c->rope_base), oc = (float)c->yarn_orig_ctx;
        const float start = floorf(nd * logf(oc / (c->yarn_beta_fast * 2 * (float)M_PI)) / lb);
        const float end = ceilf(nd * logf(oc / (c->yarn_beta_slow * 2 * (float)M_PI)) / lb);
        out->corr0 = start > 0 ? start : 0;
        out->corr1 = end < nd - 1 ? end : nd - 1;
    }
}

/* The cos/sin table of positions [0, T) for global (k = 0, 2) or sliding (k = 1, 3) layers, with LongRoPE's
 * long factors (k >= 2: the pass's context exceeds the original one) or not, grown on demand. */
static ql_status rope_table(cuda_backend *be, int k, int T, const float **out) {
    const ql_config *c = be->c;
    if (T > be->cs_len[k]) {
        const int len = QL_MAX(T, QL_MIN(2 * be->cs_len[k], c->n_ctx_train > 0 ? c->n_ctx_train : T));
        const int half = c->rope_dim / 2;
        ql_cudafwd_rope_params rp;
        ql_cuda_rope_params(be->m, k & 1, k >= 2 ? INT_MAX : 0, be->freq[k & 1], &rp);
        const size_t row = (size_t)2 * half, bytes = (size_t)len * row * sizeof(float);
        float *host = malloc(bytes ? bytes : 1);
        if (!host) return ql_fail(QL_ERR_NOMEM, "out of memory for the RoPE table");
        for (int t = 0; t < len; t++) ql_cudafwd_rope_cs_row(&rp, t, host + (size_t)t * row);
        float *dev = NULL;
        cudaError_t e = cudaMalloc((void **)&dev, bytes ? bytes : 1);
        if (e == cudaSuccess) e = cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
        free(host);
        if (e != cudaSuccess) {
            if (dev) cudaFree(dev);
            return ql_fail(QL_ERR_IO, "cuda: RoPE table: %s", cudaGetErrorString(e));
        }
        if (be->cs[k]) cudaFree(be->cs[k]); /* synchronizes: queued rotations have read it */
        be->cs[k] = dev;
        be->cs_len[k] = len;
    }
    *out = be->cs[k];
    return QL_OK;
}

static ql_status rope_locked(cuda_backend *be, float *x, int T, int n_heads, int layer, int n_ctx) {
    const ql_config *c = be->c;
    const float *cs = NULL;
    const int k = (ql_layer_is_swa(c, layer) ? 1 : 0) + (n_ctx > c->n_ctx_orig ? 2 : 0);
    ql_status st = rope_table(be, k, T, &cs);
    return st ? st : ql_cudafwd_rope(x, cs, T, n_heads, c->head_dim, c->rope_dim / 2, c->rope_neox != 0, be->compute);
}
static ql_status cuda_rope(void *p, float *x, int T, int n_heads, int layer, int n_ctx, float *tmp) {
    (void)tmp;
    LOCKED(rope_locked(be, x, T, n_heads, layer, n_ctx));
}

static ql_status cuda_ffn_act(void *p, float *gate, const float *up, size_t n) {
    LOCKED(ql_cudafwd_glu(gate, up, n, be->c->ffn_act == QL_FFN_GEGLU_TANH ? be->gelu : NULL, be->compute));
}

/* the logits are host memory (already copied back by the output matmul): capped on the host, same formula */
static ql_status softcap_locked(cuda_backend *be, float *x, size_t n, float cap) {
    if (is_device_ptr(x)) return ql_cudafwd_softcap(x, n, cap, be->compute);
    ql_status st = sync_locked(be);
    if (!st) ql_cudafwd_softcap_emulated(x, n, cap);
    return st;
}
static ql_status cuda_softcap(void *p, float *x, size_t n, float cap) { LOCKED(softcap_locked(be, x, n, cap)); }

static ql_status cuda_scale(void *p, float *x, size_t n, float s) { LOCKED(ql_cudafwd_scale(x, n, s, be->compute)); }

static ql_status cuda_add(void *p, float *y, const float *x, size_t n) { LOCKED(ql_cudafwd_add(y, x, n, be->compute)); }

/* ---- KV cache ---- */

/* How one side of a KV cache is kept on the device. */
typedef enum { KV_F32, KV_HALF, KV_BF16, KV_Q8_0, KV_IQ4_NL, KV_CODEC, KV_SIM } kv_store_kind;

/* F32, fp16 / bf16, Q8_0 with llama.cpp's cache-write rounding (as core/kv_cache.c stores it), a llama.cpp
 * type whose registry entry has CUDA kernels both ways (the file quantizer, which is what core/kv_cache.c uses
 * for the other types), or qlab's INT / FP8 sides simulated as core/kv_cache.c does (float rows plus their
 * decode; kernels/forward_cuda.h); -1 for a side with no device encoder. */
static int kv_side_kind(const ql_kv_side *s, const ql_format **f) {
    *f = NULL;
    if (s->kind == QL_KV_F32) return KV_F32;
    if (s->kind == QL_KV_INT || s->kind == QL_KV_FP8) return KV_SIM;
    if (s->kind != QL_KV_GGML || s->hadamard || s->residual) return -1;
    if (s->type == QL_TYPE_F16) return KV_HALF;
    if (s->type == QL_TYPE_BF16) return KV_BF16;
    *f = ql_format_by_type(s->type);
    if (!*f || !(*f)->cuda || !(*f)->cuda->dequantize_dev) return -1;
    if (s->type == QL_TYPE_Q8_0) return KV_Q8_0;
    /* core/kv_cache.c stores IQ4_NL with ggml's quicker cache-write search, not the file quantizer */
    if (s->type == QL_TYPE_IQ4_NL) return KV_IQ4_NL;
    if (!(*f)->cuda->quantize_dev) return -1;
    return KV_CODEC;
}

ql_cudafwd_kv_side ql_cuda_kv_sim_side(const ql_kv_side *s, int n_head_kv, int head_dim) {
    return (ql_cudafwd_kv_side){.fp8 = s->kind == QL_KV_FP8,
                                .bits = s->bits,
                                .per_channel = s->axis == QL_KV_PER_CHANNEL,
                                .group = s->group,
                                .e5m2 = s->e5m2,
                                .hadamard = s->hadamard,
                                .n_head_kv = n_head_kv,
                                .head_dim = head_dim};
}

/* Frees a cache and every device buffer it holds (a half-made one too). */
static void kv_release(cu_kv *kv) {
    for (int i = 0; i < 2; i++) {
        if (kv->buf[i]) cudaFree(kv->buf[i]);
        if (kv->deq[i]) cudaFree(kv->deq[i]);
        if (kv->rot[i]) cudaFree(kv->rot[i]);
    }
    if (kv->band) cudaFree(kv->band);
    if (kv->vdiff) cudaFree(kv->vdiff);
    free(kv);
}

static ql_status kv_make(cuda_backend *be, int max_tokens, int kv_dim, const ql_kv_scheme *sch, void **out) {
    cu_kv *kv = ql_calloc(1, sizeof *kv);
    kv->max_tokens = max_tokens;
    kv->kv_dim = kv_dim;
    kv->scheme = sch ? *sch : ql_kv_scheme_f32();
    const ql_kv_side *sides[2] = {&kv->scheme.k, &kv->scheme.v};
    for (int i = 0; i < 2; i++) {
        kv->kind[i] = kv_side_kind(sides[i], &kv->f[i]);
        if (kv->kind[i] < 0) {
            char nm[128];
            kv_release(kv);
            return ql_fail(QL_ERR_UNSUPPORTED,
                           "cuda backend: KV cache type %s has no device encoder yet (every other scheme runs on the "
                           "GPU; use --device cpu for it)",
                           ql_kv_side_name(sides[i], nm, sizeof nm));
        }
        kv->row_bytes[i] = kv->kind[i] == KV_F32 || kv->kind[i] == KV_SIM ? (int64_t)kv_dim * 4
                           : kv->f[i] == NULL                             ? (int64_t)kv_dim * 2
                                                                          : ql_format_tensor_bytes(kv->f[i], kv_dim, 1);
        const size_t bytes = (size_t)max_tokens * (size_t)kv->row_bytes[i];
        cudaError_t e = kv->row_bytes[i] > 0 ? cudaMalloc(&kv->buf[i], bytes ? bytes : 1) : cudaErrorInvalidValue;
        if (e == cudaSuccess && kv->kind[i] == KV_SIM) {
            kv->sim[i] = ql_cuda_kv_sim_side(sides[i], be->c->n_head_kv, be->c->head_dim);
            e = cudaMalloc((void **)&kv->deq[i], bytes ? bytes : 1);
            if (e == cudaSuccess && sides[i]->hadamard) e = cudaMalloc((void **)&kv->rot[i], bytes ? bytes : 1);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            kv_release(kv);
            return ql_fail(QL_ERR_NOMEM, "cuda: KV cache of %zu bytes: %s", bytes, cudaGetErrorString(e));
        }
    }
    *out = kv;
    return QL_OK;
}

static ql_status cuda_kv_new(void *p, int max_tokens, int kv_dim, void **kv) {
    LOCKED(kv_make(be, max_tokens, kv_dim, NULL, kv));
}

static ql_status cuda_kv_new_scheme(void *p, int max_tokens, int kv_dim, const ql_kv_scheme *sch, void **kv) {
    LOCKED(kv_make(be, max_tokens, kv_dim, sch, kv));
}

static void cuda_kv_free(void *p, void *q) {
    cuda_backend *be = p;
    cu_kv *kv = q;
    if (!kv) return;
    cudaStreamSynchronize(be->compute);
    kv_release(kv);
}

static ql_status kv_store_locked(cuda_backend *be, cu_kv *kv, int pos, int T, const float *k, const float *v) {
    if (pos < 0 || T < 0 || pos + T > kv->max_tokens)
        return ql_fail(QL_ERR_ARG, "kv cache: positions %d..%d past its %d", pos, pos + T, kv->max_tokens);
    const float *src[2] = {k, v};
    const size_t n = (size_t)T * kv->kv_dim;
    for (int i = 0; i < 2; i++) {
        uint8_t *dst = (uint8_t *)kv->buf[i] + (size_t)pos * (size_t)kv->row_bytes[i];
        ql_status st = QL_OK;
        switch (kv->kind[i]) {
        case KV_F32: CU(cudaMemcpyAsync(dst, src[i], n * sizeof(float), cudaMemcpyDefault, be->compute)); break;
        case KV_HALF:
        case KV_BF16: st = ql_cudafwd_to_half(src[i], (uint16_t *)dst, n, kv->kind[i] == KV_BF16, be->compute); break;
        case KV_Q8_0: st = ql_cudafwd_quantize_q8_0_kv(src[i], dst, (int64_t)n, be->compute); break;
        case KV_IQ4_NL: st = ql_cuda_quantize_iq4_nl_kv_dev(src[i], dst, T, kv->kv_dim, be->compute); break;
        case KV_SIM: { /* core/kv_cache.c's ql_kv_buf_store: the float rows, then every whole token group */
            CU(cudaMemcpyAsync(dst, src[i], n * sizeof(float), cudaMemcpyDefault, be->compute));
            const ql_kv_side *sd = i ? &kv->scheme.v : &kv->scheme.k;
            const int G = ql_kv_side_token_group(sd);
            if (pos < kv->n_quant[i]) kv->n_quant[i] = pos / G * G; /* rewritten tokens: quantized again */
            const int end = (pos + T) / G * G;
            if (end > kv->n_quant[i]) {
                st = ql_cudafwd_kv_round(&kv->sim[i], kv->buf[i], kv->deq[i], kv->rot[i], kv->n_quant[i], end,
                                         be->compute);
                kv->n_quant[i] = end;
            }
            break;
        }
        default: st = kv->f[i]->cuda->quantize_dev(src[i], dst, T, kv->kv_dim, be->compute); break;
        }
        if (st) return st;
    }
    return QL_OK;
}
static ql_status cuda_kv_store(void *p, void *kv, int pos, int T, const float *k, const float *v) {
    LOCKED(kv_store_locked(be, kv, pos, T, k, v));
}

/* F32 views of [pos, pos + T): the cache itself, or a 16-bit / block side decoded into tmp */
static ql_status kv_view(cuda_backend *be, cu_kv *kv, int i, int pos, int T, const float **out, float *tmp) {
    if (pos < 0 || T < 0 || pos + T > kv->max_tokens)
        return ql_fail(QL_ERR_ARG, "kv cache: positions %d..%d past its %d", pos, pos + T, kv->max_tokens);
    const uint8_t *src = (const uint8_t *)kv->buf[i] + (size_t)pos * (size_t)kv->row_bytes[i];
    if (kv->kind[i] == KV_F32) {
        *out = (const float *)src;
        return QL_OK;
    }
    *out = tmp;
    if (kv->kind[i] == KV_SIM) { /* the decode below n_quant, the float rows from there (ql_kv_buf_load) */
        const size_t D = (size_t)kv->kv_dim;
        const int q_end = kv->n_quant[i] < pos + T ? kv->n_quant[i] : pos + T, nq = q_end > pos ? q_end - pos : 0;
        if (nq) CU(cudaMemcpyAsync(tmp, kv->deq[i] + (size_t)pos * D, (size_t)nq * D * 4, cudaMemcpyDefault, be->compute));
        if (T > nq)
            CU(cudaMemcpyAsync(tmp + (size_t)nq * D, (const float *)kv->buf[i] + (size_t)(pos + nq) * D,
                               (size_t)(T - nq) * D * 4, cudaMemcpyDefault, be->compute));
        return QL_OK;
    }
    if (kv->kind[i] == KV_HALF || kv->kind[i] == KV_BF16)
        return ql_cudafwd_from_half((const uint16_t *)src, tmp, (size_t)T * kv->kv_dim, kv->kind[i] == KV_BF16,
                                    be->compute);
    return kv->f[i]->cuda->dequantize_dev(src, tmp, T, kv->kv_dim, be->compute);
}

static ql_status kv_load_locked(cuda_backend *be, cu_kv *kv, int pos, int T, const float **k, const float **v,
                                float *kt, float *vt) {
    ql_status st = kv_view(be, kv, 0, pos, T, k, kt);
    return st ? st : kv_view(be, kv, 1, pos, T, v, vt);
}
static ql_status cuda_kv_load(void *p, void *kv, int pos, int T, const float **k, const float **v, float *kt, float *vt) {
    LOCKED(kv_load_locked(be, kv, pos, T, k, v, kt, vt));
}

/* Per head: S = q·kᵀ·scale (cuBLAS), the causal softmax kernel, out = S·v (cuBLAS), as the CPU backend does. */
static ql_status attention_locked(cuda_backend *be, const float *q, const float *k, const float *v, float *S,
                                  float *out, int T, int layer) {
    const ql_config *c = be->c;
    const int hd = c->head_dim, H = c->n_head, HKV = c->n_head_kv, group = H / HKV;
    const int ldq = H * hd, ldkv = HKV * hd;
    const float scale = c->attn_scale, one = 1.0f, zero = 0.0f;
    const int window = ql_layer_is_swa(c, layer) ? c->n_swa : 0;
    ql_status st;
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        /* column-major S'[keys, queries] = Kᵀ·Q: row-major S[query][key] */
        BLAS(CB.Sgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, &scale, k + kvh * hd, ldkv, q + h * hd, ldq,
                         &zero, S, T));
        if ((st = ql_cudafwd_softmax(S, T, c->attn_softcap, window, be->compute))) return st;
        /* column-major out'[hd, T] = V'[hd, T]·S'[T, T] */
        BLAS(CB.Sgemm(be->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, &one, v + kvh * hd, ldkv, S, T, &zero,
                         out + h * hd, ldq));
    }
    return QL_OK;
}
static ql_status cuda_attention(void *p, const float *q, const float *k, const float *v, float *S, float *out, int T,
                                int layer) {
    LOCKED(attention_locked(be, q, k, v, S, out, T, layer));
}

/* Attention over a cache with float bands (the CPU backend's cpu_kv_attention): scores from the decoded keys,
 * those of each query's window [Nq(i + 1), i] from the float keys (a second GEMM over all keys, patched in), the
 * causal softmax, out = P·V_decoded, then out += P_window·(V_float - V_decoded). The CPU computes the windows
 * with smaller GEMMs: the same products, summed in another order. */
static ql_status band_attention_locked(cuda_backend *be, cu_kv *kv, const float *q, const float *k, const float *v,
                                       float *S, float *out, int T, int layer, bool kband, bool vband) {
    const ql_config *c = be->c;
    const int hd = c->head_dim, H = c->n_head, HKV = c->n_head_kv, group = H / HKV;
    const int ldq = H * hd, ldkv = HKV * hd;
    const float scale = c->attn_scale, one = 1.0f, zero = 0.0f;
    const int window = ql_layer_is_swa(c, layer) ? c->n_swa : 0;
    const ql_kv_side *ks = &kv->scheme.k, *vs = &kv->scheme.v;
    ql_status st;
    if ((st = dev_reserve(&kv->band, &kv->band_cap, (size_t)T * T * sizeof(float))) ||
        (vband && (st = dev_reserve(&kv->vdiff, &kv->vdiff_cap, (size_t)T * ldkv * sizeof(float)))))
        return st;
    const float *kf = kv->buf[0], *vf = kv->buf[1];
    if (vband && (st = ql_cudafwd_sub(vf, v, kv->vdiff, (size_t)T * ldkv, be->compute))) return st;
    for (int h = 0; h < H; h++) {
        const int kvh = h / group;
        BLAS(CB.Sgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, &scale, k + kvh * hd, ldkv, q + h * hd, ldq, &zero,
                      S, T));
        if (kband) {
            BLAS(CB.Sgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, &scale, kf + kvh * hd, ldkv, q + h * hd, ldq,
                          &zero, kv->band, T));
            if ((st = ql_cudafwd_kv_patch(S, kv->band, T, ks->residual, ql_kv_side_token_group(ks), be->compute)))
                return st;
        }
        if ((st = ql_cudafwd_softmax(S, T, c->attn_softcap, window, be->compute))) return st;
        BLAS(CB.Sgemm(be->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, &one, v + kvh * hd, ldkv, S, T, &zero, out + h * hd,
                      ldq));
        if (vband) {
            if ((st = ql_cudafwd_kv_band(S, kv->band, T, vs->residual, ql_kv_side_token_group(vs), be->compute)))
                return st;
            BLAS(CB.Sgemm(be->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, &one, kv->vdiff + kvh * hd, ldkv, kv->band, T,
                          &one, out + h * hd, ldq));
        }
    }
    return QL_OK;
}

static ql_status kv_attention_locked(cuda_backend *be, cu_kv *kv, float *q, float *S, float *out, int T, int layer,
                                     float *kt, float *vt) {
    const float *k, *v;
    ql_status st = kv_load_locked(be, kv, 0, T, &k, &v, kt, vt);
    if (st) return st;
    /* ggml rounds the query to the K type's vec_dot type (F16, BF16, Q8_0, Q8_1) */
    const uint32_t qr = ql_kv_q_round_type(&kv->scheme.k);
    const ql_config *c = be->c;
    if (qr != QL_TYPE_F32 && (st = ql_cudafwd_round_act(qr, q, q, T, c->n_head * c->head_dim, be->compute))) return st;
    const ql_kv_side *ks = &kv->scheme.k, *vs = &kv->scheme.v;
    /* a side has a float band when some query reads recent rows unquantized (KIVI's residual, per-channel groups) */
    const bool kband = kv->kind[0] == KV_SIM && (ks->residual || ql_kv_side_token_group(ks) > 1);
    const bool vband = kv->kind[1] == KV_SIM && (vs->residual || ql_kv_side_token_group(vs) > 1);
    if (!kband && !vband) return attention_locked(be, q, k, v, S, out, T, layer);
    return band_attention_locked(be, kv, q, k, v, S, out, T, layer, kband, vband);
}
static ql_status cuda_kv_attention(void *p, void *kv, float *q, float *S, float *out, int T, int layer, float *kt,
                                   float *vt) {
    LOCKED(kv_attention_locked(be, kv, q, S, out, T, layer, kt, vt));
}

/* ---- Σ xᵀx of activation statistics ---- */

/* The accumulator is column-major D×D filled in its lower triangle by dsyrk(LOWER, N) over x as a column-major
 * [D, T] matrix (row-major x [T, D] as stored): element (j, i), j >= i, sits at i·D + j, which is the row-major
 * upper triangle core/stats.c keeps (its cblas_dsyrk(RowMajor, Upper, Trans)). */
static void xtx_fold_upper(const double *acc, double *H, int D) {
    for (int64_t i = 0; i < D; i++)
        for (int64_t j = i; j < D; j++) H[i * D + j] += acc[i * D + j];
}

void ql_cuda_xtx_emulated(const float *x, int T, int D, double *H) {
    double *xd = ql_malloc((size_t)T * D * sizeof(double)), *acc = ql_calloc((size_t)D * D, sizeof(double));
    for (int64_t i = 0; i < (int64_t)T * D; i++) xd[i] = x[i];
    /* the parameters of the cublasDsyrk call in xtx_add_locked */
    cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, D, T, 1.0, xd, D, 1.0, acc, D);
    xtx_fold_upper(acc, H, D);
    free(xd);
    free(acc);
}

typedef struct {
    double *H;
    int D;
} cu_xtx;

/* Device bytes the backend will still allocate for weights (resident layers not yet filled, globals not yet
 * loaded: both are allocated at first use) plus the working room counted at create. An optional allocation (a
 * Σxxᵀ accumulator, which can live on the host instead) must leave them free: an 8B model's Hessians (2 GB per
 * layer) would otherwise take the memory of the layers after them and fail the pass. */
static double pending_weight_bytes(const cuda_backend *be) {
    double b = 2.0 * 1073741824.0;
    for (int i = 0; be->resident && i < be->n_arenas; i++)
        if (!be->arenas[i].dev) b += (double)be->layer_floats[i] * sizeof(float);
    for (int i = 0; i < be->n_w; i++)
        if (be->w[i].layer < 0 && !be->w[i].dev) b += 2.0 * (double)tensor_elems(be->w[i].t) * sizeof(float);
    return b;
}

static ql_status xtx_new_locked(cuda_backend *be, int D, void **out) {
    const size_t bytes = (size_t)D * D * sizeof(double);
    size_t free_b = 0, total_b = 0;
    const double pending = pending_weight_bytes(be);
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) cudaGetLastError();
    else if ((double)free_b < (double)bytes + pending)
        return ql_fail(QL_ERR_NOMEM, "cuda: Σxxᵀ accumulator %dx%d: %.2f GiB free, the weights still to load need "
                       "%.2f GiB", D, D, free_b / 1073741824.0, pending / 1073741824.0);
    cu_xtx *a = ql_calloc(1, sizeof *a);
    a->D = D;
    cudaError_t e = cudaMalloc((void **)&a->H, bytes ? bytes : 1);
    if (e == cudaSuccess) e = cudaMemsetAsync(a->H, 0, bytes, be->compute);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (a->H) cudaFree(a->H);
        free(a);
        return ql_fail(e == cudaErrorMemoryAllocation ? QL_ERR_NOMEM : QL_ERR_IO, "cuda: Σxxᵀ accumulator %dx%d: %s",
                       D, D, cudaGetErrorString(e));
    }
    *out = a;
    return QL_OK;
}
static ql_status cuda_xtx_new(void *p, int D, void **acc) { LOCKED(xtx_new_locked(be, D, acc)); }

static ql_status xtx_add_locked(cuda_backend *be, cu_xtx *a, const float *x, int T, int D) {
    if (D != a->D) return ql_fail(QL_ERR_ARG, "cuda: Σxxᵀ of %d columns into a %dx%d accumulator", D, a->D, a->D);
    const size_t n = (size_t)T * D;
    ql_status st = dev_reserve(&be->xd, &be->xd_cap, n * sizeof(double));
    if (!st) st = ql_cudafwd_to_double(x, be->xd, n, be->compute);
    if (st) return st;
    const double one = 1.0;
    BLAS(CB.Dsyrk(be->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, D, T, &one, be->xd, D, &one, a->H, D));
    return QL_OK;
}
static ql_status cuda_xtx_add(void *p, void *acc, const float *x, int T, int D) {
    LOCKED(xtx_add_locked(be, acc, x, T, D));
}

static ql_status xtx_get_locked(cuda_backend *be, cu_xtx *a, double *H) {
    const size_t bytes = (size_t)a->D * a->D * sizeof(double);
    double *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return ql_fail(QL_ERR_NOMEM, "out of memory reading a Σxxᵀ accumulator");
    cudaError_t e = cudaMemcpyAsync(tmp, a->H, bytes, cudaMemcpyDeviceToHost, be->compute);
    if (e == cudaSuccess) e = cudaStreamSynchronize(be->compute);
    if (e == cudaSuccess) e = cudaMemsetAsync(a->H, 0, bytes, be->compute);
    if (e == cudaSuccess) xtx_fold_upper(tmp, H, a->D);
    free(tmp);
    if (e != cudaSuccess) return ql_fail(QL_ERR_IO, "cuda: reading a Σxxᵀ accumulator: %s", cudaGetErrorString(e));
    return QL_OK;
}
static ql_status cuda_xtx_get(void *p, void *acc, double *H) { LOCKED(xtx_get_locked(be, acc, H)); }

static void cuda_xtx_free(void *p, void *q) {
    cuda_backend *be = p;
    cu_xtx *a = q;
    if (!a) return;
    cudaStreamSynchronize(be->compute);
    cudaFree(a->H);
    free(a);
}

/* RTN on the device with the format's CUDA quantizer (formats/format.h's cuda column), host buffers in and out. */
static ql_status cuda_quantize(const ql_format *f, const float *w, void *dst, int64_t nrows, int64_t ncols,
                               const float *importance) {
    if (!f->cuda || !f->cuda->quantize_dev || (importance && f->uses_importance))
        return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no device quantizer for %s%s", f->name,
                       importance && f->uses_importance ? " with importance weights" : "");
    const int64_t bytes = ql_format_tensor_bytes(f, ncols, nrows);
    if (bytes < 0)
        return ql_fail(QL_ERR_ARG, "format %s cannot store a %lld x %lld tensor", f->name, (long long)nrows,
                       (long long)ncols);
    if (!ql_cuda_available()) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no CUDA device");
    CU(cudaSetDevice(ql_backend_device())); /* the runtime's device is per host thread */
    return ql_cuda_run_quantize(f->cuda->quantize_dev, w, dst, bytes, nrows, ncols);
}

const ql_backend_ops ql_backend_cuda = {
    .name = "cuda",
    .about = "NVIDIA GPU: layers decoded on the device by the CUDA codecs (streamed when the model exceeds GPU "
             "memory), cuBLAS sgemm, every KV cache scheme",
    .wants_f32 = false,
    .serial = true,
    .device_count = cuda_device_count,
    .create = cuda_create,
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .sync = cuda_sync,
    .set_threads = cuda_set_threads,
    .get_rows = cuda_get_rows,
    .matmul = cuda_matmul,
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .ffn_act = cuda_ffn_act,
    .softcap = cuda_softcap,
    .scale = cuda_scale,
    .add = cuda_add,
    .kv_new = cuda_kv_new,
    .kv_free = cuda_kv_free,
    .kv_store = cuda_kv_store,
    .kv_load = cuda_kv_load,
    .attention = cuda_attention,
    .kv_new_scheme = cuda_kv_new_scheme,
    .kv_attention = cuda_kv_attention,
    .xtx_new = cuda_xtx_new,
    .xtx_add = cuda_xtx_add,
    .xtx_get = cuda_xtx_get,
    .xtx_free = cuda_xtx_free,
    .quantize = cuda_quantize,
};

#endif /* QL_HAVE_CUDA */
