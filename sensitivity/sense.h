/* sense.h — per-tensor sensitivity: for every quantizable tensor of a model and every candidate
 * ("format" or "format+method"), the exact bytes the tensor takes in that candidate and its error at
 * three levels, cheapest first:
 *   weight  ‖W − Q(W)‖² / ‖W‖²
 *   output  tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), H = Σ x xᵀ of the layer's input over the calibration tokens
 *           (token_embd: H = diag(token counts), i.e. the rows the calibration text looks up)
 *   kld     mean KL(base ‖ probe) per token of the whole model on the calibration tokens, with only
 *           that tensor quantized (and ΔPPL); the base log-probabilities and every layer's residual
 *           stream are computed once, each probe re-runs only from the perturbed layer onward.
 * A ql_sense is measured once and saved as a versioned text file (.qss, docs/sensitivity.md) that the
 * allocator (allocate.h) reads for any number of targets. Measuring checkpoints the file, so an
 * interrupted run resumes: cells already measured with the same model and calibration are kept.
 * Objects are owned by the caller (ql_sense_free); a ql_sense is not thread-safe while measured. */
#ifndef QL_SENSE_H
#define QL_SENSE_H

#include "core/infer.h"
struct ql_format;

struct ql_stats;
struct ql_imatrix;
struct ql_plan;

#define QL_SENSE_VERSION 1

typedef enum { QL_SENSE_WEIGHT = 0, QL_SENSE_OUTPUT = 1, QL_SENSE_KLD = 2 } ql_sense_level;
const char *ql_sense_level_name(int level); /* "weight", "output", "kld" */
bool ql_sense_level_parse(const char *s, int *level);

typedef struct {
    char *name;
    int64_t ncols, nrows; /* ne[0]; ne[1]*ne[2]*ne[3] */
    int64_t orig_bytes; /* bytes in the model as loaded */
    uint32_t orig_type;
} ql_sense_tensor;

typedef struct {
    int64_t bytes; /* exact bytes of the tensor in this candidate (overhead included); -1: rows don't fit */
    int level; /* highest level measured; -1: not measured yet */
    double werr, oerr, kld, dppl; /* NaN when not measured or not available (oerr without statistics) */
} ql_sense_cell;

/* Runtime-side sensitivity: a linear's KLD with only its input activations quantized (weights in float). */
typedef struct {
    int level;          /* QL_SENSE_KLD when measured, -1 not yet; NaN kld for tensors that are no linear's weight */
    double kld, dppl;
} ql_sense_act_cell;

typedef struct ql_sense {
    char *model; /* path as given (informational) */
    int64_t file_bytes; /* size of the model file (0 when it is a folder) */
    int64_t other_params, other_bytes; /* tensors that are not quantized (norms, biases) */
    int64_t n_tensors_file; /* tensors in the model file (GGUF alignment slack for size targets) */
    char *calib; /* calibration description (spec or text file) */
    int64_t n_seq, seq_len; /* calibration tokens: n_seq sequences of seq_len */
    uint64_t tokens_hash; /* FNV-1a of the tokens (what "same calibration" means) */
    char *stats, *imatrix; /* sources used ("" when none) */
    int level; /* level asked for */
    double base_ppl; /* perplexity of the unquantized model on the calibration tokens (kld level) */
    double seconds; /* measuring time, summed over resumed runs */
    int n_tensors, n_cand;
    ql_sense_tensor *tensors; /* [n_tensors] */
    char **cand; /* [n_cand] "q4_0", "int4_g128+gptq" */
    ql_sense_cell *cells; /* [n_tensors * n_cand], row = tensor */
    int n_act;            /* activation schemes measured (--act-candidates): "int8_token", "llm_int8:4" */
    char **act;           /* [n_act] */
    ql_sense_act_cell *act_cells; /* [n_tensors * n_act], row = tensor */
    int n_kv;             /* KV-cache schemes measured (--kv-candidates): "q8_0", "q8_0:q4_0" */
    char **kv;            /* [n_kv] */
    int kv_layers, kv_heads, kv_head_dim; /* the model's layers and cache geometry: bytes at any context */
    ql_sense_act_cell *kv_cells; /* [kv_layers * n_kv], row = layer: KLD with only that layer's cache quantized */
} ql_sense;

/* Comma-separated KV-cache schemes (core/kv_cache.h names; "f32" is the base and refused, duplicates dropped),
 * canonical spellings. */
ql_status ql_sense_parse_kv_candidates(const char *list, char ***out, int *n);
/* Sets s's KV schemes for a model of n_layer layers with n_head_kv heads of head_dim (cells of schemes s already
 * has are kept when the geometry is the same). */
void ql_sense_set_kv(ql_sense *s, char *const *kv, int n_kv, int n_layer, int n_head_kv, int head_dim);
static inline ql_sense_act_cell *ql_sense_kv_cell_at(const ql_sense *s, int layer, int k) {
    return &s->kv_cells[(size_t)layer * (size_t)s->n_kv + (size_t)k];
}
/* Exact bytes of one layer's cache in scheme k at ctx tokens for batch sequences (-1: unknown scheme). */
int64_t ql_sense_kv_layer_bytes(const ql_sense *s, int k, int64_t ctx, int batch);

/* Comma-separated activation schemes (core/actquant.h: int8_token, int8_tensor, fp8_token, fp8_tensor,
 * llm_int8[:T]; "none" is refused, duplicates dropped), canonical spellings. */
ql_status ql_sense_parse_act_candidates(const char *list, char ***out, int *n);
/* Sets s's activation schemes (cells not measured; cells of schemes s already has are kept). */
void ql_sense_set_act(ql_sense *s, char *const *acts, int n_act);
static inline ql_sense_act_cell *ql_sense_act_cell_at(const ql_sense *s, int t, int a) {
    return &s->act_cells[(size_t)t * (size_t)s->n_act + (size_t)a];
}

/* Comma-separated candidates; each item is FORMAT[+METHOD] where FORMAT may be a glob over the format
 * registry ("int?_g32_mse", "q5_*"; with +METHOD, over the formats the method can write). Unknown
 * names, formats that cannot quantize, unknown methods (the nearest name suggested), layer-transform
 * methods and a method that cannot write the format (ql_method_serves) are errors; duplicates are
 * dropped. *out (n strings) is freed with ql_sense_free_strings. */
ql_status ql_sense_parse_candidates(const char *list, char ***out, int *n);
/* The check every candidate passes (parsing, loading a file, measuring): the method exists, measures
 * per tensor, and can write f. QL_ERR_ARG with one line naming spec otherwise. */
ql_status ql_sense_check_candidate(const char *spec, const struct ql_format *f, const char *method);
void ql_sense_free_strings(char **v, int n);

/* A skeleton for model m: one row per quantizable tensor (ql_tensor_is_quantizable), one column per
 * candidate, bytes filled in, nothing measured. Context fields (calib, tokens, ...) are set with
 * ql_sense_set_context before measuring. */
ql_status ql_sense_new(const ql_model *m, char *const *cands, int n_cand, ql_sense **out);
void ql_sense_free(ql_sense *s);
/* tokens [n_seq * seq_len] (may be NULL for the weight level: then only the description is kept). */
void ql_sense_set_context(ql_sense *s, const char *calib, const int32_t *tokens, int64_t n_seq,
                          int64_t seq_len, const char *stats, const char *imatrix, int level);
uint64_t ql_sense_hash_tokens(const int32_t *tokens, int64_t n);

static inline ql_sense_cell *ql_sense_cell_at(const ql_sense *s, int t, int c) {
    return &s->cells[(size_t)t * (size_t)s->n_cand + (size_t)c];
}
int ql_sense_find_tensor(const ql_sense *s, const char *name); /* -1 if absent */
int ql_sense_find_cand(const ql_sense *s, const char *spec); /* -1 if absent */

/* Copies into `dst` every cell `old` has measured for the same (tensor, candidate), when both describe
 * the same model (tensor names, shapes, types) and the same calibration (tokens hash, statistics,
 * imatrix). QL_ERR_ARG with the difference named otherwise. *n_adopted: cells taken (may be NULL). */
ql_status ql_sense_adopt(ql_sense *dst, const ql_sense *old, int *n_adopted);

/* Sharing the cells of one measurement between processes (sensitivity/sense_dist.c over MPI): each process
 * measures the cells `mine` says, `measured` hands each finished one on, and `collect` (called between cells
 * and before every checkpoint, on the thread that called ql_sense_measure*) fills in cells other processes
 * finished, returning how many. kind: 0 a weight cell (t, candidate c), 1 an activation cell (t, scheme c). */
typedef struct ql_sense_share {
    bool (*mine)(void *user, int kind, int t, int c);
    ql_status (*measured)(void *user, const ql_sense *s, int kind, int t, int c);
    int (*collect)(void *user, ql_sense *s);
    void *user;
} ql_sense_share;

typedef struct {
    int level; /* ql_sense_level to measure up to */
    int n_threads;
    const int32_t *tokens; /* [n_seq * seq_len], each sequence starting with BOS; output/kld levels */
    int64_t n_seq;
    int seq_len;
    const struct ql_stats *stats; /* Hessians for the output level and data-aware methods; may be NULL */
    const struct ql_imatrix
        *imatrix; /* importance for formats that use it, as qlab quant --imatrix; may be NULL */
    const char *checkpoint; /* save the file here every checkpoint_s seconds, at the end and on cancel */
    double checkpoint_s; /* 0: 20 s */
    const ql_sense_share *share; /* NULL: every cell is measured here */
    /* kld level: candidates of one tensor per forward pass (ql_forward_variants); 0: automatic (8 on a device
     * backend, whose GEMMs want rows, with as many sequences as fill 8192 rows and 1 GiB of logits; 4 on the CPU, one sequence per
     * thread: the weights of the layers after the tensor are read once for 4 candidates), in groups of equal
     * size, within half the memory budget */
    int cand_batch;
    int seq_batch; /* sequences per batched pass; 0: automatic (as above) */
} ql_sense_opts;

/* The batch ql_sense_measure will use: candidates per pass (groups of that many by candidate index, so that a
 * pass's shape, and with it every float sum, is the same whichever process measures it) and sequences per pass. */
void ql_sense_batch_shape(const ql_model *m, const ql_sense_opts *o, int n_cand, int *cand_batch, int *seq_per_item);

/* Measures every cell whose level is below o->level. Progress counts cells (phase: "TENSOR CANDIDATE").
 * Cancelled (QL_ERR_CANCELLED) or failed runs leave a checkpoint with everything measured so far. */
/* Where ql_sense_measure computes output-level errors tr(ΔW H ΔWᵀ): AUTO (the GPU when the selected backend,
 * core/backend.h, is "cuda"), the CPU, the GPU (kernels/awq_cuda.h), or that path emulated on the host (tests).
 * Process-wide. The forward-pass probes (KLD) run on the selected backend either way. */
enum { QL_SENSE_QERR_AUTO, QL_SENSE_QERR_CPU, QL_SENSE_QERR_CUDA, QL_SENSE_QERR_EMULATED };
void ql_sense_set_qerr_where(int where);

ql_status ql_sense_measure(ql_sense *s, const ql_model *m, const ql_sense_opts *o,
                           const ql_progress *progress);
/* Measures every activation cell not measured yet: mean KLD per token against the float model on o's tokens,
 * with only tensor t's input quantized by scheme a (static schemes take their scale from o->stats, required). */
ql_status ql_sense_measure_act(ql_sense *s, const ql_model *m, const ql_sense_opts *o, const ql_progress *progress);
/* Measures every KV cell not measured yet: mean KLD per token against the float model on o's tokens with only
 * layer l's cache in scheme k (the forward pass re-runs from layer l). A scheme the head dimension cannot hold
 * is refused before anything runs. */
ql_status ql_sense_measure_kv(ql_sense *s, const ql_model *m, const ql_sense_opts *o, const ql_progress *progress);

/* The honesty check of the additive model: every tensor of `plan` quantized at once (as qlab quant would),
 * mean KLD per token against the unquantized model on o's calibration tokens, and both perplexities.
 * Compare with the per-tensor sum that the allocator predicted. */
typedef struct {
    double kld, ppl, base_ppl;
    int tensors; /* quantized (entries whose format is the tensor's type are kept as they are) */
} ql_sense_joint;
ql_status ql_sense_plan_kld(const ql_model *m, const struct ql_plan *plan, const ql_sense_opts *o,
                            const ql_progress *progress, ql_sense_joint *out);

/* Error of a cell at a level (NaN when not measured there or the rows don't fit). */
double ql_sense_error(const ql_sense *s, int t, int c, int level);
/* Highest level every fitting cell has been measured at; -1 when some cell was not measured at all. */
int ql_sense_complete_level(const ql_sense *s);

/* Text file, written atomically (PATH.tmp.XXXXXX then rename). Loading validates every field. */
ql_status ql_sense_save(const ql_sense *s, const char *path);
ql_status ql_sense_load(const char *path, ql_sense **out);

/* Sensitivity score of each tensor for ranking (sense-diff): the geometric mean over the given
 * candidates of the error at `level` (candidates a tensor cannot use, or unmeasured, are skipped;
 * NaN when none is left). cands NULL: all candidates. score: [s->n_tensors]. */
void ql_sense_scores(const ql_sense *s, int level, char *const *cands, int n_cands, double *score);

#endif
