/* infer.h — the decoder forward pass over whole sequences (RMSNorm, RoPE, grouped-query attention,
 * SwiGLU/GeGLU, and what the architecture description enables: q/k/v bias, q/k norm, post norms,
 * embedding scale, soft-capping, sliding-window layers; core/arch.h), computed by a backend's
 * operations table (core/backend.h; the default "cpu" reads weights in their stored format,
 * core/wmatmul.c). For a backend that wants F32 rows, ql_infer holds F32 views of every weight:
 * borrowed from the mapping for F32 tensors, dequantized once (exact numerics of the format) for
 * everything else. A ql_infer is read-only during forward passes and may be shared by threads; each
 * thread needs its own ql_scratch. */
#ifndef QL_INFER_H
#define QL_INFER_H

#include "core/actquant.h"
#include "core/backend.h"
#include "core/model.h"

typedef struct ql_infer ql_infer;
typedef struct ql_scratch ql_scratch;

/* Which activation a hook sees: the input of each linear layer (what quantization statistics need). */
typedef enum {
    QL_HOOK_ATTN_IN = 0, /* input of attn_q/k/v: [n, n_embd] */
    QL_HOOK_ATTN_OUT_IN, /* input of attn_output: [n, n_head*head_dim] */
    QL_HOOK_FFN_IN,      /* input of ffn_gate/up: [n, n_embd] */
    QL_HOOK_FFN_DOWN_IN, /* input of ffn_down: [n, n_ff] */
    QL_HOOK_OUTPUT_IN,   /* input of output: [n, n_embd] */
    QL_HOOK_RESIDUAL,    /* the residual stream entering a layer (before attn_norm): [n, n_embd]; layer
                            n_layer is the stream leaving the last layer (before output_norm) */
    /* MoE layers, once per expert that got tokens (ql_hook_expert() says which): the rows routed to it */
    QL_HOOK_EXPERT_IN,      /* input of its gate/up rows: [n, n_embd] */
    QL_HOOK_EXPERT_DOWN_IN, /* input of its down rows: [n, n_ff_exp] */
} ql_hook_point;
/* The expert whose rows a QL_HOOK_EXPERT_* hook sees (the calling thread's current one); -1 elsewhere. */
int ql_hook_expert(void);
typedef void (*ql_hook_fn)(void *user, int layer, ql_hook_point where, const float *x, int n, int dim);

/* For a backend that wants F32 rows (wants_f32): decodes every non-F32 weight once, unless that would exceed
 * the memory budget (60% of RAM, or QL_MEM_BUDGET_MB; QL_STREAM=1/0 forces the choice): then layers are
 * decoded one at a time during each forward pass, into that pass's scratch, so memory stays at one layer per
 * worker. The CPU backend reads stored weights itself and needs neither. */
ql_status ql_infer_new(const ql_model *m, int n_threads, ql_infer **out);
/* The backend is $QL_BACKEND's (default "cpu"; an unknown name fails listing the known ones), or `ops`. */
ql_status ql_infer_new_on(const ql_model *m, int n_threads, const ql_backend_ops *ops, ql_infer **out);
const ql_backend_ops *ql_infer_backend(const ql_infer *inf);
/* The backend's context for this model (what its ops take as `be`). */
void *ql_infer_backend_context(const ql_infer *inf);
/* Threads inside one backend op (CPU: OpenBLAS's count, process-wide); returns the previous count. */
int ql_infer_set_op_threads(const ql_infer *inf, int n);
bool ql_infer_streaming(const ql_infer *inf);
void ql_infer_free(ql_infer *inf);
const ql_model *ql_infer_model(const ql_infer *inf);

/* Replace the F32 weights used for one tensor (e.g. a dequantized candidate); `data` is borrowed
 * and must hold the tensor's ne[0]*ne[1] floats. Returns the previous pointer (NULL if unknown). */
const float *ql_infer_swap_weight(ql_infer *inf, const ql_gguf_tensor *t, const float *data);

/* The same, and the layer's input is then rounded as llama.cpp rounds it for a weight stored as ggml type
 * `type` (Q8_0 for q4_0, Q8_K for k-quants, none for F32 and qlab extension types), so a sensitivity
 * probe sees what `qlab ppl` of the quantized file will. Restore with the tensor's own type. */
const float *ql_infer_swap_weight_typed(ql_infer *inf, const ql_gguf_tensor *t, const float *data, uint32_t type);

/* The KV cache scheme (core/kv_cache.h) of every layer (ql_infer_set_kv) or of one (layer >= 0); NULL = the
 * F32 cache. Checked against the model's head dimension and the backend: a one-line error when it cannot
 * hold it. Set before forward passes (scratches pick it up at the next pass). */
ql_status ql_infer_set_kv(ql_infer *inf, const ql_kv_scheme *scheme);
ql_status ql_infer_set_kv_layer(ql_infer *inf, int layer, const ql_kv_scheme *scheme);
ql_kv_scheme ql_infer_kv_layer(const ql_infer *inf, int layer);

/* Activation buffers and KV cache for passes of up to max_tokens tokens, from the infer's backend
 * (NULL when the backend cannot allocate them; the CPU backend aborts on exhausted memory instead). */
ql_scratch *ql_scratch_new(const ql_infer *inf, int max_tokens);
/* The same with activation buffers of max_rows rows (>= max_tokens) for batched passes (ql_forward_variants):
 * the KV cache and attention scores stay at one sequence of max_tokens. */
ql_scratch *ql_scratch_new_rows(const ql_infer *inf, int max_tokens, int max_rows);
/* What ql_scratch_new allocates for max_tokens (attention scores grow with its square), so a caller can
 * refuse a context that will not fit before allocating; and the memory budget (60% of RAM, or
 * QL_MEM_BUDGET_MB) that ql_infer_new also decides layer streaming by. */
double ql_scratch_bytes(const ql_config *c, int max_tokens);
double ql_scratch_bytes_rows(const ql_config *c, int max_tokens, int max_rows);
double ql_mem_budget_bytes(void);
/* Checks an allocation whose size comes from a file or a flag before it is made: QL_OK when `bytes` fit the
 * budget above, else QL_ERR_NOMEM with one line "WHAT needs X GiB, more than the memory budget of Y GiB (60%
 * of RAM / the cgroup limit / ulimit -v, or QL_MEM_BUDGET_MB); HOW" (how: what to reduce). A size that is
 * not finite or negative (an overflowed product, computed in double) is refused the same way. */
ql_status ql_mem_check(double bytes, const char *what, const char *how);
void ql_scratch_free(ql_scratch *s);
void ql_scratch_set_hook(ql_scratch *s, ql_hook_fn fn, void *user);

/* Runs tokens[0..n) (positions 0..n-1, causal) and writes logits for positions logit_from..n-1 into
 * logits[(n - logit_from) * n_vocab]. CPU backend: the calling thread plus OpenBLAS's current thread count. */
ql_status ql_forward(const ql_infer *inf, ql_scratch *s, const int32_t *tokens, int n, int logit_from,
                     float *logits);

/* The same, starting at layer `layer_from` from a saved residual stream x_in [n, n_embd] (as the
 * QL_HOOK_RESIDUAL hook saw it); x_in NULL and layer_from 0 is ql_forward. Sensitivity probes use it
 * to re-run only the layers after a perturbed one. */
ql_status ql_forward_from(const ql_infer *inf, ql_scratch *s, const int32_t *tokens, const float *x_in, int layer_from,
                          int n, int logit_from, float *logits);

/* Several versions of one stored weight in one batched pass (sensitivity candidates): variant v's F32 rows
 * w[v] (ne[0]*ne[1] floats, borrowed) replace t's, and the layer's input is rounded as llama.cpp rounds it
 * for ggml type type[v] (as ql_infer_swap_weight_typed). */
typedef struct ql_weight_variants {
    const ql_gguf_tensor *t;
    int n;
    const float *const *w;
    const uint32_t *type;
} ql_weight_variants;

/* One pass over n_seq sequences of T positions under each of var->n variants: the rows of every weight but
 * the varied one are multiplied together (one GEMM for n·n_seq·T rows, which is what fills a GPU), the varied
 * one per variant. Sequence q starts from x_in[q] at layer layer_from (as ql_forward_from) or, x_in NULL,
 * from tokens[q] at layer 0. Logits of every position: logits[((v·n_seq + q)·T + t)·n_vocab]. The scratch
 * must hold n·n_seq·T rows of T positions (ql_scratch_new_rows). Per row, the same operations as
 * ql_forward_from with that variant swapped in: equal to it up to the float sums of GEMMs of another row count
 * (tests/test_infer.c: logits within 1e-4 on stories260K); LLM.int8() activation quantization takes its outlier
 * columns per sequence, as in a pass of its own. Hooks see all rows of the pass. */
ql_status ql_forward_variants(const ql_infer *inf, ql_scratch *s, const ql_weight_variants *var,
                              const int32_t *const *tokens, const float *const *x_in, int n_seq, int layer_from, int T,
                              float *logits);

/* Dequantize any tensor the format code knows into F32 (rows of ne[0]); false if the type can't be decoded. */
bool ql_tensor_to_f32(const ql_gguf_tensor *t, float *dst, int n_threads);

/* log-softmax helpers shared by ppl and kld: returns log p(tok) for one row of logits. */
double ql_log_softmax_at(const float *logits, int n_vocab, int tok);

/* Sets (aq != NULL) or clears (aq == NULL or mode none) the activation quantization of the linear layer
 * whose weight is `w` in the preview forward pass. It takes precedence over the llama.cpp activation
 * rounding of ggml weight types. false when the infer has no such tensor. Defined in core/infer.c. */
bool ql_infer_set_act_quant(ql_infer *inf, const ql_gguf_tensor *w, const ql_act_quant *aq);

#endif
