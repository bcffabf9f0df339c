/* export_st.h — what the safetensors-folder exporters (gptq, awq, compressed-tensors) share: a Hugging
 * Face model folder written as one unit. pipeline/export_st.c owns the folder: HF tensor names and
 * q/k row order (core/hf.c), config.json with the target's `quantization_config`, generation_config.json
 * when bos/eos are known, shards of at most 5 GB (QLAB_MAX_SHARD_BYTES overrides it, for tests) with
 * model.safetensors.index.json, sidecar files, all in a temporary folder beside OUT that is renamed
 * to OUT only when every file is complete. A target (one pipeline/export_X.c) only says what each
 * quantized linear becomes (its output tensors) and how to fill their bytes from qlab's codes.
 *
 * Tensors a target does not handle are kept by the base: float tensors as they are; quantized tensors
 * outside the decoder blocks (token_embd, output) dequantized to F32, which is exact, and listed in the
 * target's "not converted" list. The source model passed to begin must outlive commit/abort. */
#ifndef QL_EXPORT_ST_H
#define QL_EXPORT_ST_H

#include "core/actquant.h"
#include "core/kv_settings.h"
#include "formats/format.h"
#include "pipeline/export.h"

#include <jansson.h>

#define QL_ST_MAX_OUT 6

typedef struct {
    char suffix[48];    /* appended to the module name: "qweight", "weight_scale", "weight" */
    const char *dtype;  /* safetensors dtype: "I32", "F16", "F32", "I64", "F8_E4M3" */
    int n_dims;
    int64_t shape[4];   /* safetensors order: shape[0] is the outermost dimension */
    uint64_t nbytes;
    bool permute_rows;  /* dim 0 runs over output rows: put q/k rows back in HF order after convert */
} ql_st_out;

enum { QL_ST_FLOAT = 0, QL_ST_DEQUANT = 1, QL_ST_TARGET = 2 };

typedef struct {
    char *gguf_name, *hf_name, *module; /* module: hf_name less ".weight" */
    const ql_format *format;            /* NULL for float types */
    uint32_t type;
    int n_dims;
    int64_t ne[4];   /* GGUF order: ne[0] = row length (input features), ne[1] = rows (outputs) */
    uint64_t nbytes; /* qlab's bytes */
    const void *data;
    ql_export_produce_fn produce;
    void *produce_user;
    int64_t produce_tag;
    int rope_heads;  /* > 0: rows are in GGUF's q/k order for this many heads */
    bool norm_shift; /* Gemma norm: HF stores the GGUF value minus 1 (ql_hf_norm_shift) */
    int kind;        /* QL_ST_FLOAT, QL_ST_DEQUANT or QL_ST_TARGET */
    int bits, group; /* target's: group = ncols for per-channel */
    bool sym;
    int scheme;      /* target's: which of its layouts */
    int n_out;
    ql_st_out out[QL_ST_MAX_OUT];
    ql_act_quant act; /* the linear's input scheme from the image's qlab.act.* keys (mode none: float) */
    const ql_gguf *quant_keys; /* the image's qlab.quant.* keys (the methods' options), NULL when none */
} ql_st_tensor;

typedef struct ql_st_target {
    const char *name;
    /* Decides what the quantized linear t (rows = ne[1], cols = ne[0], a qlab format) becomes: sets
     * kind = QL_ST_TARGET, bits/group/sym/scheme and the outputs, or refuses naming the tensor;
     * prev[0..n_prev-1] are the tensors added before it (a target that needs one scheme for the whole
     * model checks against them). */
    ql_status (*plan)(const char *out_path, ql_st_tensor *t, const ql_st_tensor *prev, int64_t n_prev);
    /* Fills the outputs, back to back in t->out order, from qlab's bytes (row-wise formats: rows
     * already in HF order); refuses codes the layout cannot hold, naming the tensor. */
    ql_status (*convert)(const ql_st_tensor *t, const uint8_t *src, uint8_t *dst);
    /* config.json's "quantization_config" for the whole model (a new reference). */
    json_t *(*quant_config)(const ql_st_tensor *ts, int64_t n);
    /* The target can describe activation schemes (t->act) of its quantized linears; when false, an image
     * with qlab.act.* keys is refused rather than exported without them. */
    bool activations;
} ql_st_target;

/* config.json's kv_cache_scheme for the image's KV settings (qlab.kv.*, not all float): a new reference, or
 * NULL with the reason in why when the target has no form for them. */
typedef json_t *(*ql_st_kv_scheme_fn)(const ql_kv_settings *kv, char *why, size_t n);

ql_status ql_st_begin(ql_exporter *x, const char *out_path, const ql_gguf *source, const ql_st_target *target);
/* After begin: the target can describe KV settings with fn. Without it, an image whose KV cache is quantized
 * is refused at commit rather than exported without it. */
void ql_st_set_kv_scheme(ql_exporter *x, ql_st_kv_scheme_fn fn);
ql_status ql_st_add_metadata(ql_exporter *x, const char *key, const ql_gguf_value *val);
ql_status ql_st_add_tensor(ql_exporter *x, const ql_export_tensor *t);
ql_status ql_st_add_sidecar(ql_exporter *x, const char *file_name, const void *bytes, size_t n);
ql_status ql_st_commit(ql_exporter *x, const ql_progress *progress);
void ql_st_abort(ql_exporter *x);
/* The last tensor added, in words: its Hugging Face tensors (name, dtype, shape), bits and group, or why it stays
 * float (for --dry-run --to). */
void ql_st_describe(ql_exporter *x, char *buf, size_t n);

/* Helpers for targets. */
void ql_st_set_out(ql_st_out *o, const char *suffix, const char *dtype, int n_dims, int64_t d0, int64_t d1,
                   bool permute_rows);
/* Every float type and every qlab format a target might take, for accepts_type. */
bool ql_st_is_float(uint32_t type);
/* The code, zero point and fp16 scale bits of row r's column c in a row-wise INTn row (docs/formats.md). */
typedef struct {
    const uint8_t *row;
    int64_t ncols, ng;
    int bits, group;
    bool sym;
} ql_st_int_row;
ql_st_int_row ql_st_int_row_at(const ql_st_tensor *t, const uint8_t *src, int64_t r);
unsigned ql_st_int_code(const ql_st_int_row *r, int64_t c);
unsigned ql_st_int_zero(const ql_st_int_row *r, int64_t g); /* 2^(n-1) when symmetric */
uint16_t ql_st_int_scale(const ql_st_int_row *r, int64_t g);
/* Stores a little-endian 32-bit word. */
void ql_st_put_u32(uint8_t *p, uint32_t v);

#endif
