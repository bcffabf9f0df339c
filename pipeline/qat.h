/* qat.h — training in the loop over a plan: quantization-aware training (fake quantization of every planned
 * weight through its registry format, gradients passed straight through to the float master weights) and
 * tuning with the codes fixed (norms, one scale per format block, or a format's own continuous parameters such as
 * AQLM's codebooks), against the float model's logits (KL
 * distillation) and/or next-token cross-entropy. Checkpoints (atomic), resume, held-out evaluation, and the
 * trained weights handed back to the model so the PTQ exporters write them (codes re-chosen from the trained
 * weights). The backward pass is core/train.h's. */
#ifndef QL_QAT_H
#define QL_QAT_H

#include "core/model.h"
#include "core/train.h"
#include "pipeline/plan.h"

typedef enum {
    QL_QAT_FULL = 0,    /* fake-quantize the planned weights, train every tensor */
    QL_TUNE_NORMS = 1,  /* planned weights fixed at their quantized values; train the norm vectors (and biases) */
    QL_TUNE_SCALES = 2, /* planned weights' codes fixed; train one multiplier per format block, and the norms */
    QL_TUNE_CODEBOOKS = 3, /* codes fixed; train what the format's registry entry says stays continuous (its
                            * `tunable` hook: AQLM's codebooks and row scales), and the norms; the export
                            * writes those bytes as they are */
} ql_qat_mode;

typedef enum {
    QL_STE_IDENTITY = 0, /* the gradient at the quantized weight goes to the master weight unchanged */
    QL_STE_CLIPPED = 1,  /* ...except where the master weight lies outside its row's quantized range */
} ql_ste_kind;

/* What the run reports after each optimizer step (and after each evaluation). */
typedef struct {
    int step, steps;         /* updates done, of steps */
    double loss, ce, kl;     /* this step's, averaged over its micro-batches */
    double lr, grad_norm;
    double tokens_per_s, eta_s;
    bool evaluated;          /* eval_kld is fresh */
    double eval_kld;         /* mean KL(float ‖ quantized) on the held-out sequences, every position */
    bool checkpointed;       /* the checkpoint was written after this step */
} ql_qat_report;

typedef struct {
    const ql_plan *plan;
    const ql_model *teacher; /* the model the KL term and the held-out KLD compare with (NULL: m itself, the
                              * float model); another one (same geometry) lets a trained model, QAT's export,
                              * be tuned further against the float original */
    ql_qat_mode mode;
    ql_ste_kind ste;
    const int32_t *train; /* [n_train * seq_len] */
    int64_t n_train;
    const int32_t *eval;  /* [n_eval * seq_len]; n_eval 0: no evaluation */
    int64_t n_eval;
    int seq_len, steps, accum; /* micro-batches (sequences) per update: gradient accumulation */
    ql_adamw_opts adam;        /* total_steps is set to steps */
    double kl_weight, ce_weight;
    const ql_kv_scheme *kv;    /* K/V fake-quantized through this cache scheme (NULL: float); the plan's
                                * [activations] (per-token modes) fake-quantize the linears' inputs */
    bool lsq;                  /* QAT: learned step sizes (LSQ) for the planned tensors whose format is an INT grid */
    double lsq_lr;             /* peak learning rate of the step multipliers (0: 1e-3); same schedule as the weights */
    uint64_t seed;             /* which training sequence each micro-batch draws */
    int n_threads;             /* OpenBLAS threads; a run is deterministic for a seed and a thread count */
    int eval_every;            /* 0: only at the start and the end */
    const char *checkpoint;    /* file, or NULL */
    int checkpoint_every;      /* 0: only when the run stops */
    bool resume;               /* continue from checkpoint when it exists */
    bool keep_best;            /* hand back (and export) the weights of the best held-out evaluation, not the last */
    int recompute;             /* activations per layer recomputed in the backward: 1 yes, 0 no, -1 automatic
                                * (when keeping them all would exceed ql_mem_limit_bytes) */
    void (*report)(void *user, const ql_qat_report *r);
    void *user;
    volatile int *cancel;      /* non-zero: stop after the current step, checkpoint, QL_ERR_CANCELLED */
} ql_qat_opts;

typedef struct {
    int steps_done;
    int resumed_from;                    /* the checkpoint's step when the run resumed, else -1 */
    double eval_kld_start, eval_kld_end; /* NaN without eval sequences */
    double seconds, peak_train_bytes;    /* activations + weights + gradients + optimizer state */
    bool recomputed;                     /* the run recomputed activations (chosen or asked for) */
    int best_step;                       /* keep_best: the step whose weights were handed back (0: the start) */
    double best_kld;                     /* ...and its held-out KLD */
    int codes_from_model;                /* --tune codebooks: tensors whose codes (and starting codebooks) were
                                          * MODEL's own bytes, already in the planned format, not re-quantized */
} ql_qat_result;

/* Why format f has no straight-through path (decode-only, or it cannot quantize without importance data),
 * or NULL when it has one. A fact of the format's registry entry, not of its name. */
const char *ql_qat_no_ste(const struct ql_format *f);
/* Every planned tensor's format has a straight-through path and fits its rows; else one-line error naming
 * the tensor and the format. */
ql_status ql_qat_check_plan(const ql_model *m, const ql_plan *plan);

/* What a run over sequences of T tokens with n_eval held-out sequences allocates (double master weights,
 * gradients, two Adam moments and the fake-quantized copy; the kept activations, all or recomputed; the
 * teacher's scratch and logits): the figure ql_qat_run checks against ql_mem_limit_bytes. */
double ql_qat_memory_bytes(const ql_model *m, int T, int64_t n_eval, bool recompute);

/* Trains. *out (the trained model; free with ql_train_model_free) is set on success and on cancellation;
 * when the loss stops being finite the run stops with an error and the checkpoint on disk is the last good
 * one. */
ql_status ql_qat_run(const ql_model *m, const ql_qat_opts *o, ql_train_model **out, ql_qat_result *res);

/* LSQ (learned step size quantization, Esser et al. 2020) for an INT grid (the entry's grid: bits, group along
 * the row (0 = whole row), sym): each group has a step s and an integer zero z (sym: 2^(bits-1)); the forward is
 *     v = s · (clamp(round(w/s) + z, 0, 2^bits - 1) - z)
 * and the straight-through backward dv → dw = dv inside the range, 0 where clamped; dv → ds = dv · (k - z - w/s)
 * inside (round's derivative taken as 1), dv · (k - z) where clamped (k the stored code). s [rows · groups], z
 * likewise, groups per row = ceil(cols / group). ds is accumulated (+=). */
int64_t ql_lsq_groups(int64_t rows, int64_t cols, int group);
/* The format's own rule for the initial steps and zeros (fmt_int.c without the MSE search). */
void ql_lsq_init(double *s, double *z, const double *w, int64_t rows, int64_t cols, int group, int bits, bool sym);
void ql_lsq_forward(double *v, const double *w, const double *s, const double *z, int64_t rows, int64_t cols,
                    int group, int bits);
void ql_lsq_backward(double *dw, double *ds, const double *dv, const double *w, const double *s, const double *z,
                     int64_t rows, int64_t cols, int group, int bits);

/* Data-free training text (LLM-QAT): n sequences of len tokens sampled from m itself (the float model), each
 * from BOS, every token drawn from softmax(logits / temperature) at the previous position; an EOS is followed
 * by BOS (the next story). Deterministic for a seed whatever n_threads is (sequence i uses its own stream).
 * Runs the float model's trainable copy (core/train.h) through the KV-cached decoder, 16 sequences in step:
 * one token pass per token. progress may be NULL (cancellation: QL_ERR_CANCELLED). out: [n * len]. */
ql_status ql_qat_sample_text(const ql_model *m, int64_t n, int len, double temperature, uint64_t seed, int n_threads,
                             const ql_progress *progress, int32_t *out);

/* Puts the trained weights (tuned scales applied) back into m as F32 tensors (owned by m->gguf), found by
 * name (m may be a second copy of the trained model), so that ql_quantize_model with the plan writes them
 * through any exporter; tensors tuned with their codes fixed go in as those bytes, which the export copies. */
ql_status ql_qat_apply(ql_model *m, const ql_train_model *tm);

#endif
