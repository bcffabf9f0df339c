/* quantize.h — applies a plan to a model and writes the result through an exporter (GGUF unless
 * opts say otherwise; pipeline/export.h): each tensor is decoded to F32 (any registered type),
 * re-encoded in its planned format with importance weights when an imatrix has them, and streamed to
 * disk one tensor at a time (memory ≈ the largest tensor, not the model). The output carries every
 * metadata key of the input, general.file_type and general.quantization_version, and is written
 * atomically (temporary file, then rename; cancellation or a full disk leaves nothing). */
#ifndef QL_QUANTIZE_H
#define QL_QUANTIZE_H

#include "core/model.h"
#include "pipeline/plan.h"
#include "pipeline/export.h"

struct ql_imatrix;
struct ql_stats;

typedef struct {
    const ql_plan *plan;
    const struct ql_imatrix *imatrix; /* may be NULL */
    const struct ql_stats *stats;     /* activation statistics for data-aware methods; may be NULL */
    const char *method_opts;          /* "damp=0.01,act_order=1": each planned method gets the keys its schema
                                         declares; a key none declares, or a bad value, is refused */
    bool sequential;                  /* true-sequential: re-measure each layer's input after quantizing earlier ones */
    const int32_t *calib_tokens;      /* [n_seq * seq_len], needed by sequential */
    int64_t n_seq;
    int seq_len;
    int n_threads;
    const ql_exporter_info *exporter; /* where the output goes; NULL: GGUF */
    bool replace;                     /* a folder target may replace a non-empty folder (--force) */
} ql_quant_opts;

typedef struct {
    int64_t tensors_quantized, tensors_copied, tensors_fallback;
    int64_t tensors_rounded; /* planned with a data-aware method but rounded to nearest (ql_quant_method_for says why) */
    int64_t bytes_in, bytes_out, weights_quantized;
    double seconds;
    bool llama_cpp_compatible; /* every tensor type is one ggml knows */
} ql_quant_stats;

/* The exact size of the GGUF ql_quantize_model writes for m when tensor i is stored in tensor_bytes[i]
 * bytes: m's header plus the keys the quantizer adds (plan's activation schemes included; plan may be NULL),
 * and every tensor padded to the alignment. The TUI's footer, Preview and Export figures all come from here,
 * so they equal the exported file. */
int64_t ql_quantize_file_bytes(const ql_model *m, const int64_t *tensor_bytes, const ql_plan *plan);

/* --dry-run --to: every tensor of m as the plan would store it, offered to the exporter `info` (begun on
 * out_path, never committed: nothing is written) with the plan's activation schemes; `line` gets each
 * tensor's name, its qlab format (or type), and what the target makes of it (ql_export_describe) or its
 * refusal. Returns the number of tensors the target refuses (or -1 when the exporter cannot begin). */
int ql_quantize_describe(const ql_model *m, const ql_plan *plan, const ql_exporter_info *info, const char *out_path,
                         void (*line)(void *user, const char *tensor, const char *format, bool refused, const char *what),
                         void *user);
ql_status ql_quantize_model(const ql_model *m, const ql_quant_opts *o, const char *out_path, const ql_progress *progress,
                            ql_quant_stats *stats);

/* The method plan entry e really gets, and why when it is not the planned one (then rtn, with why =
 * "embeddings are looked up, not multiplied: no input statistics"). stats: the statistics the run will
 * use, or NULL with stats_planned when they will be measured from calibration text first (every
 * linear's input and output.weight's; never token_embd). why may be NULL. NULL for an unknown method. */
struct ql_method;
const struct ql_method *ql_quant_method_for(const ql_model *m, const ql_plan *plan, const ql_plan_entry *e,
                                            const struct ql_stats *stats, bool stats_planned, char *why, size_t cap);

/* general.file_type llama.cpp would write for a plan made of one ggml format (-1 if none fits). */
int64_t ql_file_type_for_format(const char *format_name);

#endif
