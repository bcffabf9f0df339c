/* gguf.h — GGUF v2/v3 files: a memory-mapped reader that validates every offset and size against
 * the file length, and an in-memory builder/writer (temporary file + rename, never half-written).
 * Every model source (GGUF, Hugging Face folder, llama2.c) is turned into a ql_gguf, so the rest of
 * qlab sees one representation: metadata key/values plus named tensors.
 * Ownership: a ql_gguf owns its keys, values, tensor names and any buffers/maps it adopted; tensor
 * data pointers are borrowed from those. Not thread-safe for mutation; concurrent reads are fine. */
#ifndef QL_GGUF_H
#define QL_GGUF_H

#include "base/ql_common.h"

enum {
    QL_GGUF_U8 = 0, QL_GGUF_I8 = 1, QL_GGUF_U16 = 2, QL_GGUF_I16 = 3, QL_GGUF_U32 = 4,
    QL_GGUF_I32 = 5, QL_GGUF_F32 = 6, QL_GGUF_BOOL = 7, QL_GGUF_STRING = 8, QL_GGUF_ARRAY = 9,
    QL_GGUF_U64 = 10, QL_GGUF_I64 = 11, QL_GGUF_F64 = 12, QL_GGUF_NTYPES = 13,
};

typedef struct ql_gguf_value {
    uint32_t type; /* QL_GGUF_* */
    union {
        uint64_t u;   /* U8/U16/U32/U64 and BOOL (0/1) */
        int64_t i;    /* I8/I16/I32/I64 */
        double f;     /* F32/F64 (F32 values are exact in double) */
        struct { char *s; uint64_t len; } str;                       /* owned, NUL-terminated */
        struct { uint32_t elem_type; uint64_t n; struct ql_gguf_value *items; } arr; /* owned */
    } v;
} ql_gguf_value;

typedef struct {
    char *key;
    ql_gguf_value val;
} ql_gguf_kv;

#define QL_MAX_DIMS 4
typedef struct {
    char *name;
    uint32_t type;          /* ggml type id (core/ggml_types.h) */
    int n_dims;
    int64_t ne[QL_MAX_DIMS]; /* ne[0] is the row length (contiguous dimension) */
    uint64_t offset;        /* reader: offset inside the data section */
    uint64_t nbytes;
    const void *data;       /* borrowed: into the mapping or an adopted buffer; NULL if deferred */
    /* writer only: when data is NULL, called to produce the bytes (streaming export) */
    ql_status (*produce)(void *user, int64_t index, void *dst, uint64_t nbytes);
    void *produce_user;
} ql_gguf_tensor;

typedef struct ql_gguf {
    uint32_t version;    /* 2 or 3 when read; the writer writes 3 */
    uint64_t alignment;  /* general.alignment or 32 */
    int64_t n_kv;
    ql_gguf_kv *kv;
    int64_t n_tensors;
    ql_gguf_tensor *tensors;
    uint64_t data_offset; /* reader: file offset of the data section */
    char *path;           /* file it was read from, or NULL */
    /* resources released by ql_gguf_free */
    void **owned; int n_owned, cap_owned;
    struct { void *addr; size_t len; } *maps; int n_maps, cap_maps;
    int64_t cap_kv, cap_tensors;
} ql_gguf;

/* Reader. `path` is used in error messages ("FILE: problem"). */
ql_status ql_gguf_open(const char *path, ql_gguf **out);
/* Parse a buffer the caller keeps alive (fuzzing, tests). */
ql_status ql_gguf_parse(const void *buf, size_t size, const char *label, ql_gguf **out);
void ql_gguf_free(ql_gguf *g);

const ql_gguf_value *ql_gguf_get(const ql_gguf *g, const char *key);
int64_t ql_gguf_find_kv(const ql_gguf *g, const char *key);
/* Typed getters: true when present and convertible (any integer type for int; int or float for f64). */
bool ql_gguf_get_int(const ql_gguf *g, const char *key, int64_t *out);
bool ql_gguf_get_f64(const ql_gguf *g, const char *key, double *out);
bool ql_gguf_get_bool(const ql_gguf *g, const char *key, bool *out);
const char *ql_gguf_get_str(const ql_gguf *g, const char *key); /* NULL if absent or not a string */
/* Array of the given element type or NULL; *n receives its length. */
const ql_gguf_value *ql_gguf_get_arr(const ql_gguf *g, const char *key, uint32_t elem_type, uint64_t *n);
int64_t ql_gguf_find_tensor(const ql_gguf *g, const char *name);
const char *ql_gguf_type_name(uint32_t vtype); /* "u32", "string", "array", ... */

/* Builder. Setters replace an existing key in place (order kept) or append. */
ql_gguf *ql_gguf_new(void);
void ql_gguf_set_u32(ql_gguf *g, const char *key, uint32_t v);
void ql_gguf_set_i32(ql_gguf *g, const char *key, int32_t v);
void ql_gguf_set_u64(ql_gguf *g, const char *key, uint64_t v);
void ql_gguf_set_f32(ql_gguf *g, const char *key, float v);
void ql_gguf_set_bool(ql_gguf *g, const char *key, bool v);
void ql_gguf_set_str(ql_gguf *g, const char *key, const char *s);
/* Arrays of scalars from a C array (elem_type says how to read `data`), or of strings. */
void ql_gguf_set_arr(ql_gguf *g, const char *key, uint32_t elem_type, const void *data, uint64_t n);
void ql_gguf_set_arr_str(ql_gguf *g, const char *key, const char *const *strs, uint64_t n);
/* Deep-copies `val`. */
void ql_gguf_set_value(ql_gguf *g, const char *key, const ql_gguf_value *val);
void ql_gguf_remove(ql_gguf *g, const char *key);
void ql_gguf_copy_kv(ql_gguf *dst, const ql_gguf *src); /* all keys of src into dst */

/* Adds a tensor whose bytes (nbytes, must equal what type and shape imply) are borrowed from
 * `data` until the ql_gguf is written or freed. Returns its index, or -1 (and sets the error). */
int64_t ql_gguf_add_tensor(ql_gguf *g, const char *name, uint32_t type, int n_dims,
                           const int64_t *ne, const void *data);
/* Ownership transfer: the buffer/mapping is released by ql_gguf_free. */
void ql_gguf_adopt(ql_gguf *g, void *buf);
void ql_gguf_adopt_map(ql_gguf *g, void *addr, size_t len);

/* Writes version 3 with g->alignment through base/atomic_file (temporary beside `path`, fsync, rename);
 * on any failure (or cancellation through `progress`) the temporary file is removed. Tensors without
 * data are produced one at a time, in file order. */
ql_status ql_gguf_write(const ql_gguf *g, const char *path, const ql_progress *progress);
/* Bytes ql_gguf_write puts before the data section's padding (magic, counts, key/values, tensor infos):
 * with the tensors' padded sizes, the exact size of the file, known before writing it. */
uint64_t ql_gguf_header_bytes(const ql_gguf *g);

void ql_gguf_value_free(ql_gguf_value *v);
void ql_gguf_value_copy(ql_gguf_value *dst, const ql_gguf_value *src);

/* mmap a whole file read-only (shared helper for every loader). */
ql_status ql_map_file(const char *path, void **addr, size_t *len);
void ql_unmap_file(void *addr, size_t len);
/* Streaming passes over large models: drops the resident pages of [p, p + n) when they lie in one of g's
 * read-only file mappings (a later read faults them back in), so RSS holds about one tensor's pages. */
void ql_gguf_release(const ql_gguf *g, const void *p, uint64_t n);

#endif
