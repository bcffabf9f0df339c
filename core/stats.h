/* stats.h — activation statistics of every linear layer's input, captured by hooks in the forward
 * pass over calibration token sequences: Σ x xᵀ (the GPTQ Hessian, accumulated in double), per-channel
 * max|x|, Σ|x|, Σx². One entry per input point (q/k/v share one input, gate/up another), looked up by
 * weight tensor name. Saved as a versioned file (docs/formats.md) that later commands reuse.
 * Collection runs sequences on n_threads workers with a static assignment and sums worker results in
 * worker order, so the same inputs and thread count give byte-identical files. */
#ifndef QL_STATS_H
#define QL_STATS_H

#include "core/infer.h"

/* Statistics of one linear layer's input x ∈ R^n over the calibration tokens. Owned by whoever
 * computed them (core/stats.c); methods only read. Any pointer may be NULL when not collected. */
typedef struct ql_input_stats {
    int64_t n;          /* input features (the weight's row length, ne[0]) */
    int64_t n_tokens;   /* rows accumulated */
    const double *xtx;  /* [n, n] row-major Σ x xᵀ (symmetric) */
    const float *absmax, *mean_abs, *mean_sq; /* [n] */
} ql_input_stats;

typedef struct {
    char *name;       /* input point: "blk.3.attn_in", "blk.3.attn_out_in", "blk.3.ffn_in", "blk.3.ffn_down_in", "output_in" */
    int64_t n;        /* features */
    int64_t n_tokens;
    double *xtx;      /* [n, n] upper triangle filled, mirrored on finish; NULL when not collected */
    double *sum_abs, *sum_sq;
    float *absmax;
    float *mean_abs_f, *mean_sq_f; /* derived on finish, for ql_input_stats */
} ql_stat_entry;

/* What the statistics were collected on. Two hashes, because weight-only quantization of a model keeps its
 * activations (nearly) the same while a layer transform (SmoothQuant, AWQ) rescales them:
 *   shape_norms: architecture, dimensions, every tensor's name and shape, and the exact bytes of every 1-D
 *                tensor (norm weights, biases) — the tensors SmoothQuant/AWQ divide their scales into;
 *   weights:     every 2-D tensor's type and a sample of its bytes (all of it up to 4 KiB, else 64 evenly
 *                spaced 64-byte windows): a column rescaling changes every window. */
typedef struct {
    uint64_t shape_norms, weights;
} ql_model_fp;

void ql_model_fingerprint(const ql_model *m, ql_model_fp *out);

typedef struct ql_stats {
    int n;
    ql_stat_entry *e;
    bool has_hessian;
    int64_t n_sequences, seq_len;
    char *source; /* calibration spec or text file, informational */
    ql_model_fp fp; /* of the model collected on (ql_stats_collect sets it) */
    char *model;    /* that model's path, for messages */
    /* collected per_expert: n_layer·n_expert·2 entries from expert_base (ql_stats_expert_entry); n_expert 0: none */
    int expert_base, n_expert, n_layer;
} ql_stats;

typedef struct {
    bool hessian;     /* collect Σ x xᵀ (n² doubles per input point) */
    bool output;      /* also the input of output.weight */
    int n_threads;
    const char *only; /* Hessian for this input point only ("blk.3.ffn_in"); NULL: all (sequential GPTQ uses it) */
    /* Under mpirun (base/dist.h): the n_threads sequence workers (worker w takes sequences w, w + n_threads, ...)
     * are shared out over the ranks, worker w on rank w mod N, each rank running its own in parallel; rank 0
     * receives the others' sums and adds every worker's in worker order, as one process does, so its *out
     * equals one process's with the same n_threads bit for bit. Ranks other than 0 get *out = NULL, or with
     * all_ranks a copy of rank 0's (broadcast), for commands where every rank needs them (sense). */
    bool distribute, all_ranks;
    /* Also per expert of every MoE layer, over the rows routed to it (what llama.cpp's imatrix keeps): entries
     * "blk.L.expert_in.E" (n_embd: gate/up's input) and "blk.L.expert_down_in.E" (the expert width), sums only,
     * after the others (ql_stats_expert_entry) */
    bool per_expert;
} ql_stats_opts;

/* tokens: n_seq sequences of seq_len ids (BOS first, as the caller prepared them). */
ql_status ql_stats_collect(const ql_infer *inf, const int32_t *tokens, int64_t n_seq, int seq_len,
                           const ql_stats_opts *o, const ql_progress *progress, ql_stats **out);
void ql_stats_free(ql_stats *s);
/* Expert e's entry of MoE layer l in statistics collected with per_expert (down: its down projection's input), or
 * NULL. */
const ql_stat_entry *ql_stats_expert_entry(const ql_stats *s, int layer, int e, bool down);
ql_status ql_stats_save(const ql_stats *s, const char *path);
/* Reads a file without checking whom it belongs to (tests, inspection). Version 1 files (no fingerprint)
 * are refused with a message saying to collect them again. */
ql_status ql_stats_load(const char *path, ql_stats **out);

typedef enum {
    QL_STATS_SAME_MODEL,      /* both hashes must match: quant --stats, sense --stats, the workbench */
    QL_STATS_SAME_ACTIVATIONS /* shape_norms must match, weights may differ (a weight-quantized copy of the model
                               * the statistics came from): ppl --act-stats */
} ql_stats_match;
/* QL_ERR_ARG with one line naming the statistics file, the model they were collected on and m when the
 * fingerprint does not allow using s for m. *weights_differ (may be NULL): accepted with other weights. */
ql_status ql_stats_check_model(const ql_stats *s, const char *stats_path, const ql_model *m, ql_stats_match match,
                               bool *weights_differ);
/* ql_stats_load + ql_stats_check_model. */
ql_status ql_stats_load_for_model(const char *path, const ql_model *m, ql_stats_match match, ql_stats **out);

/* Entry whose input feeds `tensor_name` (e.g. blk.0.attn_k.weight → blk.0.attn_in); NULL if none. */
const ql_stat_entry *ql_stats_for_tensor(const ql_stats *s, const char *tensor_name);
/* A read-only view for methods. */
void ql_stats_view(const ql_stat_entry *e, ql_input_stats *out);
/* The input-point name for a weight tensor; false for tensors that are not linear layers. */
bool ql_stats_input_name(const char *tensor_name, char *buf, size_t cap);

#endif
