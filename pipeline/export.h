/* export.h — the exporter seam: how a quantized model leaves qlab. An exporter is a writer for one
 * ecosystem's files behind a small interface, and the registry (pipeline/export.c) lists them, one
 * table line each. `qlab quant --to NAME`, `qlab convert` (GGUF output) and the TUI's Export screen
 * all write through it; GGUF (pipeline/export_gguf.c) is the first implementation.
 *
 * The calls, in order:
 *     begin(out path, source model)   the source's metadata (architecture, tokenizer, ...) is context:
 *                                     an exporter carries what its format has room for
 *     add_metadata(key, value)*       the output's own keys (general.file_type, ...), GGUF-typed
 *     add_tensor(tensor)*             name, GGUF shape, storage type (whose format's packer made the
 *                                     bytes), and either the bytes (borrowed until commit/abort) or a
 *                                     produce callback that fills them when the exporter writes that
 *                                     tensor, so a writer streams with one tensor in memory at a time
 *     add_sidecar(file name, bytes)*  extra files of folder formats (tokenizer.json, config.json)
 *     commit(progress)                writes atomically (base/atomic_file): all of it, or nothing
 *   or abort()                        nothing is written; an existing output is untouched
 * commit and abort release the exporter; any other failing call leaves it open for abort.
 *
 * Adding an exporter: one pipeline/export_<name>.c defining its ql_exporter_ops, plus its line in the
 * table in pipeline/export.c (and the extern naming the ops above it); see docs/architecture.md. */
#ifndef QL_EXPORT_H
#define QL_EXPORT_H

#include "core/gguf.h"

/* Fills dst (nbytes) with a tensor's stored bytes; `tag` is what the caller put in the tensor. */
typedef ql_status (*ql_export_produce_fn)(void *user, int64_t tag, void *dst, uint64_t nbytes);

typedef struct {
    const char *name;         /* GGUF name ("blk.0.attn_q.weight") */
    uint32_t type;            /* storage type id: ggml or qlab extension (kernels/ggml_types.h) */
    int n_dims;
    const int64_t *ne;        /* GGUF order: ne[0] is the row length */
    uint64_t nbytes;          /* must equal what type and shape imply */
    const void *data;         /* borrowed until commit/abort; NULL: produce is called instead */
    ql_export_produce_fn produce;
    void *produce_user;
    int64_t produce_tag;
} ql_export_tensor;

typedef struct ql_exporter ql_exporter;

/* One implementation. `state` in ql_exporter is the implementation's; begin sets it, commit and abort
 * free it. add_sidecar may be NULL: a single-file format refuses sidecar files. */
typedef struct {
    bool (*accepts_type)(uint32_t type); /* checked by the seam before add_tensor */
    ql_status (*begin)(ql_exporter *x, const char *out_path, const ql_gguf *source);
    ql_status (*add_metadata)(ql_exporter *x, const char *key, const ql_gguf_value *val);
    ql_status (*add_tensor)(ql_exporter *x, const ql_export_tensor *t);
    ql_status (*add_sidecar)(ql_exporter *x, const char *file_name, const void *bytes, size_t n);
    ql_status (*commit)(ql_exporter *x, const ql_progress *progress);
    void (*abort)(ql_exporter *x);
    /* Optional (--dry-run --to): what the tensor just added becomes in the output, one line of words
     * (names, dtypes, shapes, bits, group, or why it stays float). NULL: the stored type says it. */
    void (*describe)(ql_exporter *x, char *buf, size_t n);
} ql_exporter_ops;

/* One registry line. */
typedef struct ql_exporter_info {
    const char *name;     /* what --to takes */
    const char *summary;  /* one line for listings */
    const char *accepts;  /* the formats it can store, in words */
    bool folder;          /* the output is a folder (else one file) */
    const ql_exporter_ops *ops;
} ql_exporter_info;

struct ql_exporter {
    const ql_exporter_info *info;
    char *out_path;
    void *state;
    bool replace; /* a folder exporter may replace a non-empty folder at out_path (--force) */
};

int ql_exporter_count(void);
const ql_exporter_info *ql_exporter_at(int i); /* NULL out of range */
const ql_exporter_info *ql_exporter_by_name(const char *name); /* case-insensitive; NULL if unknown */
/* Like by_name, but an unknown name fails with a message listing every registered exporter. */
ql_status ql_exporter_find(const char *name, const ql_exporter_info **out);
/* The default (GGUF). */
const ql_exporter_info *ql_exporter_default(void);

/* The seam: these check their arguments (a type the exporter does not accept, a sidecar for a
 * single-file format) and call the implementation. */
ql_status ql_export_begin(const ql_exporter_info *info, const char *out_path, const ql_gguf *source, ql_exporter **out);
/* The same; a folder exporter checks out_path first (absent or empty, or any folder when replace is set),
 * so a refusal comes before any work, and with replace the commit swaps the new folder in. */
ql_status ql_export_begin_replace(const ql_exporter_info *info, const char *out_path, const ql_gguf *source,
                                  bool replace, ql_exporter **out);
ql_status ql_export_add_metadata(ql_exporter *x, const char *key, const ql_gguf_value *val);
ql_status ql_export_add_tensor(ql_exporter *x, const ql_export_tensor *t);
ql_status ql_export_add_sidecar(ql_exporter *x, const char *file_name, const void *bytes, size_t n);
ql_status ql_export_commit(ql_exporter *x, const ql_progress *progress); /* releases x */
void ql_export_abort(ql_exporter *x);                                    /* releases x; NULL is a no-op */
/* After a successful add_tensor: the implementation's describe, else "stored as TYPE". */
void ql_export_describe(ql_exporter *x, uint32_t type, char *buf, size_t n);

/* For drivers that assemble their output as a ql_gguf (quantize, convert): begin with `source`, every
 * key of `image` as metadata, every tensor of `image` (its data, or its produce callback with the
 * tensor's index as the tag), commit. Aborts on any failure. */
ql_status ql_export_image(const ql_exporter_info *info, const char *out_path, const ql_gguf *source,
                          const ql_gguf *image, const ql_progress *progress);
ql_status ql_export_image_replace(const ql_exporter_info *info, const char *out_path, const ql_gguf *source,
                                  const ql_gguf *image, bool replace, const ql_progress *progress);

#endif
