/* imatrix.h — llama.cpp importance matrices: per weight tensor W, the sum over calibration tokens of
 * the squared input activation of each input column (`sum2`, length = W's row length ne0) and the
 * number of tokens accumulated (`count`). Reads and writes both llama.cpp formats: GGUF
 * (`<W>.in_sum2` / `<W>.counts`, general.type = "imatrix") and the legacy `.dat`.
 * Ownership: a ql_imatrix owns its entries, names, vectors and dataset strings; free it with
 * ql_imatrix_free. Not thread-safe for mutation; concurrent lookups are fine. */
#ifndef QL_IMATRIX_H
#define QL_IMATRIX_H

#include "base/ql_common.h"

typedef struct {
    char *name;    /* weight tensor name, e.g. "blk.0.attn_q.weight" */
    int64_t n;     /* row length of the weight (ne0) */
    double *sum2;  /* [n_mat][n] sum of squared input activations, per expert */
    double count;  /* activation rows (tokens) accumulated; a MoE entry: the sum of counts */
    /* A MoE expert stack (llama.cpp's [n, n_expert] in_sum2 with one count per expert): n_mat experts, each
     * with the tokens routed to it; 1 and NULL for an ordinary weight. */
    int64_t n_mat;
    double *counts;
} ql_imatrix_entry;

typedef struct ql_imatrix {
    int n;
    ql_imatrix_entry *entries;
    char **datasets;            /* calibration files, oldest first */
    int n_datasets;
    int64_t chunk_count;        /* chunks processed (legacy .dat: last_chunk) */
    int64_t chunk_size;         /* tokens per chunk (0 when unknown) */
    int cap;                    /* allocated entries */
} ql_imatrix;

/* The legacy .dat does not store the chunk size; llama.cpp assumes its current -c (default 512). */
#define QL_IMATRIX_DAT_CHUNK_SIZE 512

/* Loads a GGUF imatrix (detected by its magic) or else a legacy .dat. For .dat the counts are
 * reconstructed as ncall * chunk size with QL_IMATRIX_DAT_CHUNK_SIZE (the importance is unaffected); a .dat
 * entry of an expert stack is one vector of n·n_expert values with one count, as llama.cpp reads it.
 * *out is owned by the caller (ql_imatrix_free). Errors: QL_ERR_IO, QL_ERR_FORMAT ("path: problem"). */
ql_status ql_imatrix_load(const char *path, ql_imatrix **out);
/* Same, with the chunk size to assume for a legacy .dat (<= 0: QL_IMATRIX_DAT_CHUNK_SIZE). */
ql_status ql_imatrix_load_ex(const char *path, int64_t dat_chunk_size, ql_imatrix **out);
/* Writes GGUF unless `path` ends in ".dat" (then the legacy format, byte-compatible with llama.cpp's
 * conversion; expert stacks need GGUF). Entries are written sorted by name. Temporary file + rename. */
ql_status ql_imatrix_save(const ql_imatrix *im, const char *path);
/* True when ql_imatrix_save would write `path` in the legacy .dat format (which holds no expert stacks). */
bool ql_imatrix_path_is_dat(const char *path);
void ql_imatrix_free(ql_imatrix *im);

/* Borrowed pointer into `im`, or NULL. */
const ql_imatrix_entry *ql_imatrix_find(const ql_imatrix *im, const char *tensor_name);
/* Importance weights for a tensor with row length n: dst[i] = sum2[i] / count. false when the
 * tensor is absent, its length differs from n or its count is not positive (then the caller
 * quantizes without an imatrix). */
bool ql_imatrix_importance(const ql_imatrix *im, const char *tensor_name, int64_t n, float *dst);
/* The same for expert `mat` of a tensor that stacks n_mat experts of rows n (a MoE 3-D tensor), as
 * llama-quantize does: a per-expert entry gives sum2[mat] / counts[mat], or all ones for an expert no token
 * reached; a legacy entry of n·n_mat values gives its slice over the one count. false when neither fits. */
bool ql_imatrix_importance_mat(const ql_imatrix *im, const char *tensor_name, int64_t n, int64_t n_mat, int64_t mat,
                               float *dst);

/* Accumulation API for calibration. ql_imatrix_new returns an empty imatrix (caller frees).
 * ql_imatrix_entry_get returns the entry for `name`, created with zeroed sum2[n] and count 0 when
 * absent; NULL when it exists with a different length or n <= 0. The pointer stays valid until
 * the next entry is created. */
ql_imatrix *ql_imatrix_new(void);
ql_imatrix_entry *ql_imatrix_entry_get(ql_imatrix *im, const char *name, int64_t n);
/* The same for an expert stack: n_mat experts of rows n, zeroed sums [n_mat][n] and counts [n_mat]; NULL when an
 * entry of another shape exists or the sizes are not positive. */
ql_imatrix_entry *ql_imatrix_entry_get_experts(ql_imatrix *im, const char *name, int64_t n, int64_t n_mat);
/* Appends a dataset name (copied). */
void ql_imatrix_add_dataset(ql_imatrix *im, const char *dataset);

#endif
