/* export_gguf.c — the GGUF exporter: collects metadata and tensor descriptions in a ql_gguf and hands
 * it to core/gguf.c's writer at commit, which lays out the header, asks each tensor's producer for its
 * bytes in file order (one tensor in memory at a time) and writes atomically. The output starts with
 * every key of the source model, so a quantized file keeps its tokenizer and hyper-parameters. */
#include "pipeline/export.h"
#include "kernels/ggml_types.h"
#include "core/kv_settings.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    ql_export_produce_fn fn;
    void *user;
    int64_t tag;
} producer;

typedef struct {
    ql_gguf *g;
    producer *prod; /* [g->n_tensors]; fn NULL where the bytes were given */
    int64_t cap;
} gguf_state;

/* Every type GGUF can carry: ggml's and qlab's extension ids (docs/formats.md). */
static bool gguf_accepts(uint32_t type) { return ql_type_get(type) != NULL; }

static ql_status gguf_begin(ql_exporter *x, const char *out_path, const ql_gguf *source) {
    (void)out_path;
    gguf_state *st = ql_calloc(1, sizeof *st);
    st->g = ql_gguf_new();
    if (source) ql_gguf_copy_kv(st->g, source); /* keys and alignment */
    /* runtime settings (activation and KV schemes) are the image's to give: a plan without them must not inherit the
     * source's (pipeline/quantize.c writes the plan's into the image) */
    for (int64_t k = st->g->n_kv - 1; k >= 0; k--)
        if (!strncmp(st->g->kv[k].key, "qlab.act.", 9) || ql_kv_settings_is_key(st->g->kv[k].key))
            ql_gguf_remove(st->g, st->g->kv[k].key);
    x->state = st;
    return QL_OK;
}

static ql_status gguf_add_metadata(ql_exporter *x, const char *key, const ql_gguf_value *val) {
    gguf_state *st = x->state;
    ql_gguf_set_value(st->g, key, val);
    /* the writer pads to g->alignment; keep it in step with the key, as the reader does */
    if (!strcmp(key, "general.alignment") && (val->type == QL_GGUF_U32 || val->type == QL_GGUF_U64) && val->v.u &&
        (val->v.u & (val->v.u - 1)) == 0)
        st->g->alignment = val->v.u;
    return QL_OK;
}

/* The writer's callback: index is the output tensor's position; forward with the caller's tag. */
static ql_status gguf_produce(void *user, int64_t index, void *dst, uint64_t nbytes) {
    const gguf_state *st = user;
    const producer *p = &st->prod[index];
    return p->fn(p->user, p->tag, dst, nbytes);
}

static ql_status gguf_add_tensor(ql_exporter *x, const ql_export_tensor *t) {
    gguf_state *st = x->state;
    int64_t idx = ql_gguf_add_tensor(st->g, t->name, t->type, t->n_dims, t->ne, t->data);
    if (idx < 0) return ql_fail(QL_ERR_ARG, "%s: %s", x->out_path, ql_last_error());
    ql_gguf_tensor *gt = &st->g->tensors[idx];
    if (gt->nbytes != t->nbytes)
        return ql_fail(QL_ERR_ARG, "%s: tensor '%s' has %llu bytes; its type and shape need %llu", x->out_path, t->name,
                       (unsigned long long)t->nbytes, (unsigned long long)gt->nbytes);
    if (idx >= st->cap) {
        int64_t cap = st->cap ? st->cap * 2 : 64;
        while (cap <= idx) cap *= 2;
        st->prod = ql_realloc(st->prod, (size_t)cap * sizeof *st->prod);
        memset(st->prod + st->cap, 0, (size_t)(cap - st->cap) * sizeof *st->prod);
        st->cap = cap;
    }
    if (!t->data) {
        st->prod[idx] = (producer){t->produce, t->produce_user, t->produce_tag};
        gt->produce = gguf_produce;
        gt->produce_user = st;
    }
    return QL_OK;
}

static void gguf_free_state(ql_exporter *x) {
    gguf_state *st = x->state;
    ql_gguf_free(st->g);
    free(st->prod);
    free(st);
    x->state = NULL;
}

static ql_status gguf_commit(ql_exporter *x, const ql_progress *progress) {
    gguf_state *st = x->state;
    ql_status s = ql_gguf_write(st->g, x->out_path, progress);
    gguf_free_state(x);
    return s;
}

/* Nothing reached the disk before commit: dropping the description is the whole abort. */
static void gguf_abort(ql_exporter *x) { gguf_free_state(x); }

const ql_exporter_ops ql_export_gguf_ops = {
    .accepts_type = gguf_accepts,
    .begin = gguf_begin,
    .add_metadata = gguf_add_metadata,
    .add_tensor = gguf_add_tensor,
    .add_sidecar = NULL, /* one self-contained file: the tokenizer travels as metadata */
    .commit = gguf_commit,
    .abort = gguf_abort,
};
