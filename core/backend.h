/* backend.h — the operations the forward pass (core/infer.c) runs on, as one table per backend, and the
 * registry that names them. core/infer.c never computes on its own: it picks a table when the infer is
 * created (ql_infer_new: $QL_BACKEND, default "cpu") and calls the table for every matmul, norm, rope,
 * activation, KV-cache store/load and attention. The CPU backend (core/backend_cpu.c) is the reference:
 * weights read in their stored format (row tiles decoded before OpenBLAS sgemm, core/wmatmul.c), numerics
 * fixed by the llama.cpp comparisons in tests/test_infer.c.
 *
 * Adding a backend = one core/backend_X.c defining `const ql_backend_ops ql_backend_X` + one line in the
 * list in core/backend.c. The contract below is what lets a device backend (CUDA) slot in without a change
 * to infer.c or anything above it:
 *  - every activation buffer the pipeline hands to an op comes from the backend's alloc() (a CUDA backend
 *    returns managed memory, so the host may also read it after sync()), with two exceptions that are plain
 *    host memory: the weights' F32 rows (ql_backend_weight.f32) and the y of the output matmul (the caller's
 *    logits buffer), which a device backend stages;
 *  - sync() runs before the host reads a buffer (activation hooks, logits) and before a forward pass returns;
 *  - a weight arrives as its tensor (stored bytes, format id in t->type) plus, when the backend asked for it
 *    (wants_f32) or a probe replaced the weight, F32 rows: when f32 is non-NULL it is the truth;
 *  - ops may run concurrently from several threads, each forward pass with its own scratch and KV cache;
 *    the backend context is read-only after create().
 * Every op returns QL_OK or a ql_status with ql_fail()'s message (a device backend reports launch errors;
 * the CPU ops cannot fail). */
#ifndef QL_BACKEND_H
#define QL_BACKEND_H

#include "core/actquant.h"
#include "core/kv_cache.h"
#include "core/model.h"

struct ql_format; /* formats/format.h */

/* One weight as an op sees it. */
typedef struct ql_backend_weight {
    const ql_gguf_tensor *t; /* the tensor as stored: t->type is its format (ggml type or qlab extension id) */
    const float *f32;        /* F32 rows [ne[1]][ne[0]] to use instead of decoding t (host memory), or NULL */
    uint32_t act_type;       /* llama.cpp's rounding of this layer's input (core/infer.c), QL_TYPE_F32: none */
    const ql_act_quant *aq;  /* simulated activation quantization (mode none: off); wins over act_type */
} ql_backend_weight;

typedef struct ql_backend_ops {
    const char *name;  /* what $QL_BACKEND selects */
    const char *about; /* one line for listings */
    /* true: the pipeline decodes every weight to F32 once (or one layer at a time when the model exceeds
     * the memory budget) and passes it as .f32; false: the backend reads the stored bytes itself. */
    bool wants_f32;
    /* true: one queue runs every op (a device backend), so passes from several threads only wait on each other;
     * callers that would run passes in parallel (ql_perplexity) run one at a time with all threads inside. */
    bool serial;

    /* The backend context for one model (geometry, rope tables, device handles); read-only afterwards. */
    ql_status (*create)(const ql_model *m, int n_threads, void **be);
    void (*destroy)(void *be);

    /* Activation buffers (NULL on failure) and the point after which the host may read them. */
    void *(*alloc)(void *be, size_t bytes);
    void (*release)(void *be, void *p);
    ql_status (*sync)(void *be);
    /* Threads one op may use inside (CPU: OpenBLAS's process-wide count); returns the previous count. Callers
     * that run passes in parallel set 1. */
    int (*set_threads)(void *be, int n);

    /* y[i, 0..dim) = row ids[i] of w (the token embedding); ids are checked by the caller. */
    ql_status (*get_rows)(void *be, const ql_backend_weight *w, const int32_t *ids, int n, int dim, float *y);
    /* y[T, N] = x[T, K] · Wᵀ + beta·y (+ bias[N]), W = w with N rows of K; the input is first rounded as
     * w->aq / w->act_type say, into xtmp [T, K]. beta is 0 or 1 (1: residual add). */
    ql_status (*matmul)(void *be, const ql_backend_weight *w, const ql_backend_weight *bias, const float *x,
                        float *y, int T, int K, int N, float beta, float *xtmp);
    /* y[T, D] = x / rms(x) · w, per row; y may be x (in place). Per-head norms (q/k norm) pass T·n_heads
     * rows of head_dim. */
    ql_status (*rmsnorm)(void *be, const ql_backend_weight *w, const float *x, float *y, int T, int D, float eps);
    /* y[T, D] = (x - mean) / sqrt(var + eps) · w, per row (ggml_norm, then the weight); NULL where the backend has
     * none (the forward pass then refuses an architecture that needs it) */
    ql_status (*layernorm)(void *be, const ql_backend_weight *w, const float *x, float *y, int T, int D, float eps);
    /* Rotates every head of x[T, n_heads·head_dim] in place, row t at position t, with layer `layer`'s
     * RoPE (model config: NEOX or adjacent pairs, base and scaling of global or sliding layers, rope_freqs
     * factors, YaRN, the attention factor); n_ctx is the pass's context (its KV cache's size), which picks
     * LongRoPE's long or short factors (ql_model_rope_factors); tmp holds rope_dim floats. */
    ql_status (*rope)(void *be, float *x, int T, int n_heads, int layer, int n_ctx, float *tmp);
    /* The FFN activation, by the model's cfg.ffn_act: gate[i] = silu(gate[i]) · up[i] (SwiGLU) or
     * gelu_tanh(gate[i]) · up[i] (GeGLU; the CPU backend reads llama.cpp's fp16 GELU table). */
    ql_status (*ffn_act)(void *be, float *gate, const float *up, size_t n);
    /* x[i] = cap · tanh(x[i] / cap) (logit soft-capping); x may be the caller's logits (host memory). */
    ql_status (*softcap)(void *be, float *x, size_t n, float cap);
    /* x[i] *= s (the embedding scale). */
    ql_status (*scale)(void *be, float *x, size_t n, float s);
    /* y[i] += x[i] (a residual add after a post-norm). */
    ql_status (*add)(void *be, float *y, const float *x, size_t n);

    /* KV cache of one layer for up to max_tokens positions of kv_dim (= n_head_kv·head_dim) keys and values.
     * The CPU cache is F32; a quantized cache rounds in kv_store and decodes in kv_load. */
    ql_status (*kv_new)(void *be, int max_tokens, int kv_dim, void **kv);
    void (*kv_free)(void *be, void *kv);
    /* Positions [pos, pos + T) from k, v [T, kv_dim]. */
    ql_status (*kv_store)(void *be, void *kv, int pos, int T, const float *k, const float *v);
    /* F32 views [T, kv_dim] of positions [pos, pos + T): into the cache itself when it is F32, else decoded
     * into ktmp / vtmp ([T, kv_dim] each). */
    ql_status (*kv_load)(void *be, void *kv, int pos, int T, const float **k, const float **v, float *ktmp,
                         float *vtmp);
    /* Causal grouped-query attention of layer `layer` over positions 0..T-1: out[T, n_head·head_dim] from
     * q [T, n_head·head_dim] and k, v [T, n_head_kv·head_dim] (model geometry); scores [T, T] is scratch.
     * Scores are q·k·cfg.attn_scale, soft-capped when cfg.attn_softcap > 0, and a sliding layer
     * (ql_layer_is_swa) sees only the cfg.n_swa most recent positions. */
    ql_status (*attention)(void *be, const float *q, const float *k, const float *v, float *scores, float *out,
                           int T, int layer);

    /* Optional (NULL: the backend has only the F32 cache above, and a quantized KV scheme is refused). A cache
     * in a KV scheme (core/kv_cache.h), freed by kv_free and written by kv_store like the F32 one; then
     * kv_attention replaces kv_load + attention: causal attention over positions 0..T-1 read from the cache as
     * the scheme says (quantized store, float residual window, q rounded to the K type's vec_dot type as
     * ggml-cpu's flash attention does; q may be overwritten). ktmp / vtmp hold [T, kv_dim] each. */
    ql_status (*kv_new_scheme)(void *be, int max_tokens, int kv_dim, const ql_kv_scheme *scheme, void **kv);
    ql_status (*kv_attention)(void *be, void *kv, float *q, float *scores, float *out, int T, int layer,
                              float *ktmp, float *vtmp);

    /* Optional (NULL: the backend runs on the host, which is always there). How many devices of this backend
     * the machine has; 0 or less with ql_fail's message saying why (a CUDA backend: cudaGetDeviceCount's
     * answer, "no CUDA device" or the driver's error). --device NAME[:N] asks it before any work starts, and
     * the automatic choice takes the first registered backend with a device present. create() runs on device
     * ql_backend_device(). */
    int (*device_count)(void);

    /* Optional (NULL: the caller accumulates on the host). Σ xᵀx of activations kept on the device, in double
     * (activation statistics, core/stats.c): xtx_new makes a zeroed D×D accumulator, xtx_add adds x[T, D]ᵀ·x for
     * x from alloc() (queued: x may be overwritten by later ops, not by the host before sync), xtx_get adds the
     * accumulator's upper triangle (row-major, i <= j) into the host's H[D, D], xtx_free frees it. */
    ql_status (*xtx_new)(void *be, int D, void **acc);
    ql_status (*xtx_add)(void *be, void *acc, const float *x, int T, int D);
    ql_status (*xtx_get)(void *be, void *acc, double *H);
    void (*xtx_free)(void *be, void *acc);

    /* Optional (NULL: the host quantizes). Round-to-nearest of host w [nrows, ncols] into host dst in format f on
     * device ql_backend_device(), with no backend context (quantizing needs no model): byte for byte what f's
     * reference writes. QL_ERR_UNSUPPORTED when this backend has no kernel for f, or importance is given and f
     * uses it (the device kernels are the no-importance path): the caller then quantizes on the host. */
    ql_status (*quantize)(const struct ql_format *f, const float *w, void *dst, int64_t nrows, int64_t ncols,
                          const float *importance);
} ql_backend_ops;

/* The registered backends (core/backend.c), in listing order; the first is the default. */
int ql_backend_count(void);
const ql_backend_ops *ql_backend_at(int i);
/* By name; NULL and ql_fail(QL_ERR_ARG) naming the known backends when there is none. */
const ql_backend_ops *ql_backend_find(const char *name);
/* What ql_infer_new runs on: the backend chosen with ql_backend_select (--device), else $QL_BACKEND when set,
 * else the automatic choice when ql_backend_set_auto(true) (the CLI), else the first registered ("cpu");
 * NULL (with the error) for an unknown $QL_BACKEND. */
const ql_backend_ops *ql_backend_default(void);

/* --device SPEC: "cpu", "cuda", "cuda:1" (a registered backend's name, optionally a device index). Refused
 * with one line when this build has no such backend (saying what the build lacks), when the machine has none
 * of its devices (the backend's device_count says why) or the index is past the last device. Without an index
 * a device backend takes device (local MPI rank mod count), so the ranks of one node share out the GPUs.
 * Process-wide: called once, before any ql_infer_new; the index is also exported as $QL_<NAME>_DEVICE. */
ql_status ql_backend_select(const char *spec);
/* On: with nothing selected and no $QL_BACKEND, the default is the first registered backend with a device
 * present (asked once), else cpu. Off (the library's default, so tests run where they say): cpu. */
void ql_backend_set_auto(bool on);
/* True when ql_backend_default() is the automatic choice (nothing selected, no $QL_BACKEND): a model that choice
 * cannot run (a mixture of experts on CUDA) may then fall back to cpu. */
bool ql_backend_is_auto(void);
int ql_backend_device(void); /* the device index create() uses (0 unless selected) */
/* "cpu" or "cuda:0": what ql_backend_default() resolves to, for headers and messages. */
const char *ql_backend_describe(char *buf, size_t cap);

#endif
