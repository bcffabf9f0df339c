/* kv_settings.h — a model's KV-cache settings as a plan and a quantized file carry them: one scheme for every
 * layer, optional per-layer schemes (what `qlab sense --kv-candidates` and the allocator choose), and the
 * context and batch the memory figures are given at. Stored in a GGUF as qlab metadata (docs/formats.md §
 * qlab metadata keys):
 *     qlab.kv.scheme           string  ql_kv_scheme_name of every layer without its own
 *     qlab.kv.layer.<N>        string  layer N's own scheme
 *     qlab.kv.ctx              u32     context the memory figures are for (optional)
 *     qlab.kv.batch            u32     sequences (optional, 1)
 * `qlab ppl FILE` runs the file's scheme without flags, `qlab info FILE` shows it with the llama.cpp flags
 * that reproduce it (llama.cpp takes cache types on its command line, one type for all layers). */
#ifndef QL_KV_SETTINGS_H
#define QL_KV_SETTINGS_H

#include "core/infer.h"
#include "core/kv_cache.h"

#define QL_KV_KEY_SCHEME "qlab.kv.scheme"
#define QL_KV_KEY_LAYER "qlab.kv.layer."
#define QL_KV_KEY_CTX "qlab.kv.ctx"
#define QL_KV_KEY_BATCH "qlab.kv.batch"

typedef struct ql_kv_settings {
    bool set;            /* false: nothing was given (the float cache, no figures) */
    ql_kv_scheme scheme; /* every layer without its own */
    int n_layer_own;     /* per-layer schemes: layer_idx[i] runs layer_scheme[i] */
    int *layer_idx;
    ql_kv_scheme *layer_scheme;
    int64_t ctx; /* memory figures at this context (0: not given) */
    int batch;   /* and this many sequences (0: not given, 1) */
} ql_kv_settings;

void ql_kv_settings_init(ql_kv_settings *s);
void ql_kv_settings_free(ql_kv_settings *s);
void ql_kv_settings_copy(ql_kv_settings *dst, const ql_kv_settings *src);
/* Layer `layer`'s own scheme (replaces an earlier one); marks the settings as set. */
void ql_kv_settings_set_layer(ql_kv_settings *s, int layer, const ql_kv_scheme *scheme);
/* The scheme layer `layer` runs. */
ql_kv_scheme ql_kv_settings_layer(const ql_kv_settings *s, int layer);
/* Exact bytes of the whole cache (every layer its own scheme) at ctx tokens for batch sequences. */
int64_t ql_kv_settings_bytes(const ql_kv_settings *s, const ql_config *c, int64_t ctx, int batch);
/* Every scheme fits the model's head dimension and every named layer exists; one-line error naming
 * `model_name` otherwise. */
ql_status ql_kv_settings_check(const ql_kv_settings *s, const ql_config *c, const char *model_name);
/* "q8_0:q4_0" or "q8_0:q4_0, layer 3 f16, layer 7 q4_0"; buf of 512 is enough for a few layers. */
const char *ql_kv_settings_describe(const ql_kv_settings *s, char *buf, size_t n);

/* The llama.cpp command-line flags that run the same cache ("-ctk q8_0 -ctv q4_0 -fa on"): true and the flags
 * in buf when every layer runs one llama.cpp cache type per side; false and the reason in buf otherwise
 * (a qlab-only scheme, or per-layer schemes llama.cpp cannot express). */
bool ql_kv_settings_llama_flags(const ql_kv_settings *s, char *buf, size_t n);

struct ql_gguf;
/* Writes the qlab.kv.* keys (none when !s->set) after removing any g has. */
void ql_kv_settings_to_gguf(const ql_kv_settings *s, struct ql_gguf *g);
/* Reads them: s->set false when g has none. An unknown scheme, a layer beyond n_layer or a malformed value
 * fails with a message naming `path` and the key. */
ql_status ql_kv_settings_from_gguf(const struct ql_gguf *g, const char *path, int n_layer, ql_kv_settings *s);
/* Is `key` one of the qlab.kv.* keys? */
bool ql_kv_settings_is_key(const char *key);

/* Sets the settings' scheme on every layer of inf (checked against the model). */
ql_status ql_infer_set_kv_settings(ql_infer *inf, const ql_kv_settings *s);

#endif
