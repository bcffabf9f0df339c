/* train.h — the backward pass of qlab's llama forward pass, for training in the loop (QAT, tuning).
 * Written like llm.c: a trainable copy of the model in double (master weights, gradients), every
 * activation of a forward pass kept in a ql_train_acts for the backward, and each op's backward
 * beside its forward in core/train.c. The ops are exported so tests can check each one against
 * finite differences. Double throughout: the same code gives the gradient checks (relative error
 * below 1e-4 needs double) and the training, at half float's BLAS speed; logits agree with
 * core/infer.c's F32 forward to float rounding (tests/test_train.c).
 *
 * Shapes are row-major [tokens, features]; a weight of N rows of K (GGUF ne = [K, N]) maps x[T, K]
 * to y[T, N] = x Wᵀ. */
#ifndef QL_TRAIN_H
#define QL_TRAIN_H

#include "core/actquant.h"
#include "core/kv_cache.h"
#include "core/model.h"

/* One trainable tensor: master weights w, gradient g (same shape), and the weights the forward pass
 * uses — `eff` when a caller set one (fake-quantized weights for QAT: the straight-through estimator
 * sends g, computed at eff, to w unchanged), else w. */
typedef struct {
    const char *name;          /* the GGUF tensor name (borrowed from the model, or static) */
    const ql_gguf_tensor *src; /* the model tensor it came from; NULL for a random model */
    int rows, cols;            /* N rows of K; vectors are 1 row */
    double *w, *g, *eff;       /* eff: NULL = use w */
    bool is_matrix;            /* a 2-D weight (decayed by AdamW, quantizable); vectors: norms, biases */
    bool frozen;               /* not updated by the optimizer (tuning trains only some tensors) */
    /* a run that tuned a format's continuous parameters with the codes fixed leaves the tensor's bytes here
     * (codes_type's layout, codes_bytes long; freed with the model): exported as they are, w their decode */
    void *codes;
    uint32_t codes_type;
    uint64_t codes_bytes;
} ql_train_param;

typedef struct {
    int attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down; /* -1: absent */
} ql_train_layer;

typedef struct ql_train_model {
    ql_config cfg;
    int n_params;          /* tensors */
    ql_train_param *p;     /* n_params entries */
    int tok_embd, output_norm, output; /* output == tok_embd when tied */
    ql_train_layer *layers;
    int64_t n_weights;     /* scalars over all tensors */
    double *w_all, *g_all; /* one block each, every tensor's w / g inside, in p order */
    double *rope_freq;     /* rope_dim/2 frequencies, ggml's float recurrence */
    float *rope_ff;        /* the model's rope_freqs factors (Llama 3.x: pair i's angle divided by it), or NULL */
    /* Fake quantization in the forward pass (QAT), straight-through in the backward: act_in[i] (NULL: float)
     * rounds the input of linear i as core/actquant.h does at run time; kv (NULL: float) rounds the K and V rows
     * after RoPE through the cache scheme (core/kv_cache.h; no residual window). The kept activations hold the
     * rounded values, so each weight's gradient sees what the quantized model computes, and the input's gradient
     * passes through unchanged. q, k and v read one input: their act_in must agree (ql_train_check_fake_quant). */
    const ql_act_quant **act_in; /* [n_params] or NULL; owned by the caller */
    const ql_kv_scheme *kv;
} ql_train_model;

/* act_in / kv as set can be trained through: q/k/v inputs share one scheme, the KV scheme has no residual
 * window and fits the head dimension. One-line error otherwise. */
ql_status ql_train_check_fake_quant(const ql_train_model *tm);

/* A trainable copy of m: every tensor decoded to F32 (any registered type), then widened to double. */
ql_status ql_train_model_from(const ql_model *m, ql_train_model **out);
/* A random model of the given geometry (tests): weights N(0, scale), norms 1 + N(0, 0.1); with_bias adds
 * q/k/v biases. */
ql_train_model *ql_train_model_random(const ql_config *cfg, bool with_bias, uint64_t seed, double scale);
void ql_train_model_free(ql_train_model *tm);
void ql_train_zero_grad(ql_train_model *tm);
/* Index of the tensor called name, or -1. */
int ql_train_find(const ql_train_model *tm, const char *name);

/* Activations of one forward pass over up to max_tokens tokens, kept for the backward, plus the
 * backward's scratch. Bytes it needs: ql_train_acts_bytes. */
typedef struct ql_train_acts ql_train_acts;
ql_train_acts *ql_train_acts_new(const ql_config *c, int max_tokens);
void ql_train_acts_free(ql_train_acts *a);
double ql_train_acts_bytes(const ql_config *c, int max_tokens);
/* Recompute (activation checkpointing per layer): every layer keeps only its input; one set of a layer's
 * intermediates is shared, and the backward recomputes each layer's from its input before walking it back —
 * one more forward per step for activations of ~1 layer instead of n_layer. The gradients are bit-identical
 * (tests/test_train.c). */
ql_train_acts *ql_train_acts_new_opt(const ql_config *c, int max_tokens, bool recompute);
double ql_train_acts_bytes_opt(const ql_config *c, int max_tokens, bool recompute);
bool ql_train_acts_recompute(const ql_train_acts *a);
/* The automatic choice: recompute when the kept activations plus other_bytes (weights, optimizer state,
 * teacher) would exceed limit_bytes (ql_mem_limit_bytes). */
bool ql_train_choose_recompute(const ql_config *c, int T, double other_bytes, double limit_bytes);

/* Forward over tokens[0..T): logits [T, n_vocab] for every position stay inside acts (returned pointer). */
ql_status ql_train_forward(const ql_train_model *tm, ql_train_acts *a, const int32_t *tokens, int T,
                           const double **logits);

/* The loss over positions score_from..T-2 (each predicting the next token), averaged over them, and
 * d loss / d logits into acts for ql_train_backward:
 *   ce_weight · cross-entropy of tokens[t+1]  +  kl_weight · KL(teacher ‖ model) at position t,
 * teacher [T, n_vocab] F32 logits (NULL when kl_weight is 0). Positions of T-1 are scored for KL too
 * when kl_all is set (the teacher defines a target there as well). *ce / *kl (may be NULL) receive the
 * two terms separately. */
double ql_train_loss(const ql_train_model *tm, ql_train_acts *a, const int32_t *tokens, int T, int score_from,
                     const float *teacher, double ce_weight, double kl_weight, double *ce, double *kl);

/* Accumulates d loss / d weights into every tensor's g (call ql_train_zero_grad first; accumulation over
 * micro-batches is repeated calls). Uses the activations of the last forward and the d logits of the
 * last ql_train_loss. */
ql_status ql_train_backward(ql_train_model *tm, ql_train_acts *a, const int32_t *tokens, int T);

/* ---- the ops, forward and backward (exported for the gradient checks) ---- */
/* y[T,N] = x[T,K] · Wᵀ (+ b) (+ beta·y) */
void ql_tr_linear_fwd(double *y, const double *x, const double *W, const double *b, int T, int K, int N, double beta);
/* dx (+)= dy · W (dx_beta 0 or 1; dx NULL: skip), dW += dyᵀ x (dW NULL: skip), db += Σ_t dy */
void ql_tr_linear_bwd(double *dx, double dx_beta, double *dW, double *db, const double *dy, const double *x,
                      const double *W, int T, int K, int N);
/* y = x · r · w per row, r = 1/sqrt(mean(x²) + eps) saved into rinv[T] */
void ql_tr_rmsnorm_fwd(double *y, double *rinv, const double *x, const double *w, int T, int D, double eps);
/* dx += d/dx, dw += d/dw */
void ql_tr_rmsnorm_bwd(double *dx, double *dw, const double *dy, const double *x, const double *rinv,
                       const double *w, int T, int D);
/* Rotates each head of x[T, n_heads·head_dim] in place (row t at position t); inverse = the backward. */
void ql_tr_rope(const ql_train_model *tm, double *x, int T, int n_heads, bool inverse);
/* One row of n_heads heads at position pos (ql_tr_rope is this for rows 0..T-1; the KV-cached decoder's
 * rows all sit at one position). */
void ql_tr_rope_row(const ql_train_model *tm, double *x, int n_heads, int pos, bool inverse);
/* Causal grouped-query attention: out[T, H·hd] from q [T, H·hd], k, v [T, HKV·hd]; P [H, T, T] keeps the
 * probabilities. */
void ql_tr_attention_fwd(const ql_config *c, double *out, double *P, const double *q, const double *k,
                         const double *v, int T);
/* dq = ∂/∂q (overwritten), dk, dv overwritten; dP [T, T] is scratch */
void ql_tr_attention_bwd(const ql_config *c, double *dq, double *dk, double *dv, double *dP, const double *dout,
                         const double *P, const double *q, const double *k, const double *v, int T);
/* h = silu(g)·u; backward: dg, du overwritten */
void ql_tr_swiglu_fwd(double *h, const double *g, const double *u, size_t n);
void ql_tr_swiglu_bwd(double *dg, double *du, const double *dh, const double *g, const double *u, size_t n);

/* ---- KV-cached decoding (core/train_decode.c) ---- */
/* Token-by-token forward of up to `batch` sequences in step, each with its own K/V cache of max_tokens
 * positions: what sampling training text from the float model needs (one pass per token instead of one
 * per prefix). It runs the same ops as ql_train_forward on the weights the forward would use (eff when
 * set), without the activation / KV fake quantization; its logits equal ql_train_forward's to rounding
 * (tests/test_train.c). tm must outlive the decoder and may be shared by decoders on other threads. */
typedef struct ql_train_decoder ql_train_decoder;
ql_train_decoder *ql_train_decoder_new(const ql_train_model *tm, int batch, int max_tokens);
void ql_train_decoder_free(ql_train_decoder *d);
/* Runs position pos of n_seq (<= batch) sequences: tokens[b] is sequence b's token at pos; positions
 * 0..pos-1 must have been run by earlier calls (pos 0 starts new sequences). *logits: [n_seq, n_vocab], the
 * next token's, valid until the next call. */
ql_status ql_train_decode_step(ql_train_decoder *d, const int32_t *tokens, int n_seq, int pos, const double **logits);
/* Sets OpenBLAS's thread count (callers parallel over sequences want 1); returns the previous one. */
int ql_train_blas_threads(int n);

/* ---- optimizer ---- */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int warmup, total_steps; /* linear warm-up, then cosine decay to lr·min_lr_ratio at total_steps */
    double min_lr_ratio;
    double clip; /* global gradient norm limit; 0: none */
} ql_adamw_opts;

typedef struct {
    ql_adamw_opts o;
    int64_t step; /* updates done */
    double *m, *v; /* [n_weights] */
    int64_t n;
} ql_adamw;

ql_adamw *ql_adamw_new(const ql_train_model *tm, const ql_adamw_opts *o);
void ql_adamw_free(ql_adamw *opt);
double ql_adamw_lr(const ql_adamw_opts *o, int64_t step); /* learning rate of update number step (0-based) */
/* One update of every unfrozen tensor from g scaled by grad_scale (1/micro-batches for accumulation);
 * returns the gradient norm before clipping. Matrices decay, vectors do not. */
double ql_adamw_step(ql_adamw *opt, ql_train_model *tm, double grad_scale);

#endif
