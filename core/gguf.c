/* gguf.c — GGUF v2/v3 reader (mmap + full validation) and writer (temp file + rename).
 * Every count and size in the file is checked against the bytes that remain before anything is
 * allocated from it, so a hostile header cannot make us allocate or read past the mapping. */
#include "core/gguf.h"
#include "kernels/ggml_types.h"
#include "base/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGN 32
#define GGUF_MAX_ARRAY_DEPTH 8

/* ---------------------------------------------------------------- reading */

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *label;
} cursor;

static size_t remaining(const cursor *c) { return c->size - c->pos; }

static ql_status rd(cursor *c, void *dst, size_t n, const char *what) {
    if (n > remaining(c))
        return ql_fail(QL_ERR_FORMAT, "%s: truncated while reading %s at offset %zu", c->label, what, c->pos);
    memcpy(dst, c->p + c->pos, n);
    c->pos += n;
    return QL_OK;
}

static const size_t g_scalar_size[QL_GGUF_NTYPES] = {
    [QL_GGUF_U8] = 1, [QL_GGUF_I8] = 1, [QL_GGUF_U16] = 2, [QL_GGUF_I16] = 2, [QL_GGUF_U32] = 4,
    [QL_GGUF_I32] = 4, [QL_GGUF_F32] = 4, [QL_GGUF_BOOL] = 1, [QL_GGUF_U64] = 8, [QL_GGUF_I64] = 8,
    [QL_GGUF_F64] = 8,
};

/* the least bytes one value of the type occupies in a file: bounds array counts before allocating */
static size_t min_value_size(uint32_t t) {
    if (t == QL_GGUF_STRING) return 8;
    if (t == QL_GGUF_ARRAY) return 12;
    return g_scalar_size[t];
}

static ql_status rd_string(cursor *c, char **out, uint64_t *len_out, const char *what) {
    uint64_t len = 0;
    ql_status s = rd(c, &len, 8, what);
    if (s) return s;
    if (len > remaining(c))
        return ql_fail(QL_ERR_FORMAT, "%s: %s length %llu exceeds the file (offset %zu)", c->label, what,
                       (unsigned long long)len, c->pos);
    char *str = ql_malloc((size_t)len + 1);
    memcpy(str, c->p + c->pos, (size_t)len);
    str[len] = 0;
    c->pos += (size_t)len;
    *out = str;
    if (len_out) *len_out = len;
    return QL_OK;
}

static ql_status rd_value(cursor *c, uint32_t type, ql_gguf_value *v, int depth, const char *key) {
    memset(v, 0, sizeof *v);
    v->type = type;
    if (type >= QL_GGUF_NTYPES)
        return ql_fail(QL_ERR_FORMAT, "%s: key '%s' has unknown value type %u", c->label, key, type);
    if (type == QL_GGUF_STRING) return rd_string(c, &v->v.str.s, &v->v.str.len, "string value");
    if (type == QL_GGUF_ARRAY) {
        if (depth >= GGUF_MAX_ARRAY_DEPTH)
            return ql_fail(QL_ERR_FORMAT, "%s: key '%s' nests arrays too deeply", c->label, key);
        uint32_t et = 0;
        uint64_t n = 0;
        ql_status s = rd(c, &et, 4, "array type");
        if (!s) s = rd(c, &n, 8, "array length");
        if (s) return s;
        if (et >= QL_GGUF_NTYPES)
            return ql_fail(QL_ERR_FORMAT, "%s: key '%s' has an array of unknown type %u", c->label, key, et);
        if (n > remaining(c) / min_value_size(et))
            return ql_fail(QL_ERR_FORMAT, "%s: key '%s' claims %llu array elements, more than the file holds",
                           c->label, key, (unsigned long long)n);
        v->v.arr.elem_type = et;
        v->v.arr.items = ql_calloc((size_t)n, sizeof(ql_gguf_value));
        for (uint64_t i = 0; i < n; i++) {
            s = rd_value(c, et, &v->v.arr.items[i], depth + 1, key);
            v->v.arr.n = i + 1; /* so a partial array is freed correctly */
            if (s) return s;
        }
        v->v.arr.n = n;
        return QL_OK;
    }
    uint8_t b[8] = {0};
    ql_status s = rd(c, b, g_scalar_size[type], "value");
    if (s) return s;
    switch (type) {
    case QL_GGUF_U8: v->v.u = b[0]; break;
    case QL_GGUF_I8: v->v.i = (int8_t)b[0]; break;
    case QL_GGUF_U16: { uint16_t x; memcpy(&x, b, 2); v->v.u = x; } break;
    case QL_GGUF_I16: { int16_t x; memcpy(&x, b, 2); v->v.i = x; } break;
    case QL_GGUF_U32: { uint32_t x; memcpy(&x, b, 4); v->v.u = x; } break;
    case QL_GGUF_I32: { int32_t x; memcpy(&x, b, 4); v->v.i = x; } break;
    case QL_GGUF_F32: { float x; memcpy(&x, b, 4); v->v.f = x; } break;
    case QL_GGUF_BOOL:
        if (b[0] > 1) return ql_fail(QL_ERR_FORMAT, "%s: key '%s' has bool value %u", c->label, key, b[0]);
        v->v.u = b[0];
        break;
    case QL_GGUF_U64: memcpy(&v->v.u, b, 8); break;
    case QL_GGUF_I64: memcpy(&v->v.i, b, 8); break;
    case QL_GGUF_F64: memcpy(&v->v.f, b, 8); break;
    }
    return QL_OK;
}

void ql_gguf_value_free(ql_gguf_value *v) {
    if (v->type == QL_GGUF_STRING) free(v->v.str.s);
    else if (v->type == QL_GGUF_ARRAY) {
        for (uint64_t i = 0; i < v->v.arr.n; i++) ql_gguf_value_free(&v->v.arr.items[i]);
        free(v->v.arr.items);
    }
    memset(v, 0, sizeof *v);
}

void ql_gguf_value_copy(ql_gguf_value *dst, const ql_gguf_value *src) {
    *dst = *src;
    if (src->type == QL_GGUF_STRING) {
        dst->v.str.s = ql_malloc(src->v.str.len + 1);
        memcpy(dst->v.str.s, src->v.str.s, src->v.str.len + 1);
    } else if (src->type == QL_GGUF_ARRAY) {
        dst->v.arr.items = ql_calloc(src->v.arr.n, sizeof(ql_gguf_value));
        for (uint64_t i = 0; i < src->v.arr.n; i++) ql_gguf_value_copy(&dst->v.arr.items[i], &src->v.arr.items[i]);
    }
}

ql_gguf *ql_gguf_new(void) {
    ql_gguf *g = ql_calloc(1, sizeof *g);
    g->version = 3;
    g->alignment = GGUF_DEFAULT_ALIGN;
    return g;
}

void ql_gguf_free(ql_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        ql_gguf_value_free(&g->kv[i].val);
    }
    free(g->kv);
    for (int64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->tensors);
    for (int i = 0; i < g->n_owned; i++) free(g->owned[i]);
    free(g->owned);
    for (int i = 0; i < g->n_maps; i++) ql_unmap_file(g->maps[i].addr, g->maps[i].len);
    free(g->maps);
    free(g->path);
    free(g);
}

static ql_gguf_kv *push_kv(ql_gguf *g) {
    if (g->n_kv == g->cap_kv) {
        g->cap_kv = g->cap_kv ? g->cap_kv * 2 : 16;
        g->kv = ql_realloc(g->kv, (size_t)g->cap_kv * sizeof *g->kv);
    }
    ql_gguf_kv *kv = &g->kv[g->n_kv++];
    memset(kv, 0, sizeof *kv);
    return kv;
}

static ql_gguf_tensor *push_tensor(ql_gguf *g) {
    if (g->n_tensors == g->cap_tensors) {
        g->cap_tensors = g->cap_tensors ? g->cap_tensors * 2 : 64;
        g->tensors = ql_realloc(g->tensors, (size_t)g->cap_tensors * sizeof *g->tensors);
    }
    ql_gguf_tensor *t = &g->tensors[g->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

/* bytes for a tensor of this type and shape, or -1 if the shape is invalid for the type */
static int64_t tensor_nbytes(uint32_t type, int n_dims, const int64_t *ne) {
    int64_t rows = 1;
    for (int d = 1; d < n_dims; d++) {
        if (ne[d] < 0) return -1;
        if (ne[d] && rows > INT64_MAX / ne[d]) return -1;
        rows *= ne[d];
    }
    return ql_type_tensor_bytes(type, ne[0], rows);
}

ql_status ql_gguf_parse(const void *buf, size_t size, const char *label, ql_gguf **out) {
    *out = NULL;
    cursor c = {buf, size, 0, label};
    ql_gguf *g = ql_gguf_new();
    g->path = ql_strdup(label);
    uint32_t magic = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    ql_status s = rd(&c, &magic, 4, "magic");
    if (s) goto fail;
    if (magic != GGUF_MAGIC) {
        s = ql_fail(QL_ERR_FORMAT, "%s: not a GGUF file (bad magic)", label);
        goto fail;
    }
    if ((s = rd(&c, &g->version, 4, "version"))) goto fail;
    if (g->version != 2 && g->version != 3) {
        s = ql_fail(QL_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are)", label, g->version);
        goto fail;
    }
    if ((s = rd(&c, &n_tensors, 8, "tensor count")) || (s = rd(&c, &n_kv, 8, "key count"))) goto fail;
    /* each KV needs >= 8 (key len) + 4 (type) + 1 bytes, each tensor info >= 8 + 4 + 8 + 4 + 8 */
    if (n_kv > remaining(&c) / 13 || n_tensors > remaining(&c) / 32) {
        s = ql_fail(QL_ERR_FORMAT, "%s: header claims %llu keys and %llu tensors, more than the file holds", label,
                    (unsigned long long)n_kv, (unsigned long long)n_tensors);
        goto fail;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        ql_gguf_kv *kv = push_kv(g);
        uint32_t type = 0;
        if ((s = rd_string(&c, &kv->key, NULL, "key name"))) goto fail;
        if ((s = rd(&c, &type, 4, "value type"))) goto fail;
        if ((s = rd_value(&c, type, &kv->val, 0, kv->key))) goto fail;
        for (int64_t j = 0; j + 1 < g->n_kv; j++)
            if (strcmp(g->kv[j].key, kv->key) == 0) {
                s = ql_fail(QL_ERR_FORMAT, "%s: duplicate key '%s'", label, kv->key);
                goto fail;
            }
    }
    const ql_gguf_value *al = ql_gguf_get(g, "general.alignment");
    if (al) {
        if (al->type != QL_GGUF_U32 || al->v.u == 0 || (al->v.u & (al->v.u - 1))) {
            s = ql_fail(QL_ERR_FORMAT, "%s: general.alignment must be a power-of-two u32", label);
            goto fail;
        }
        g->alignment = al->v.u;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        ql_gguf_tensor *t = push_tensor(g);
        uint32_t nd = 0;
        if ((s = rd_string(&c, &t->name, NULL, "tensor name"))) goto fail;
        if ((s = rd(&c, &nd, 4, "tensor dims"))) goto fail;
        if (nd < 1 || nd > QL_MAX_DIMS) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (1..4 allowed)", label, t->name, nd);
            goto fail;
        }
        t->n_dims = (int)nd;
        for (int d = 0; d < QL_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t x = 0;
            if ((s = rd(&c, &x, 8, "tensor shape"))) goto fail;
            if (x > (uint64_t)INT64_MAX) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has a negative dimension", label, t->name);
                goto fail;
            }
            t->ne[d] = (int64_t)x;
        }
        if ((s = rd(&c, &t->type, 4, "tensor type")) || (s = rd(&c, &t->offset, 8, "tensor offset"))) goto fail;
        if (!ql_type_get(t->type)) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has unknown type %u", label, t->name, t->type);
            goto fail;
        }
        int64_t nb = tensor_nbytes(t->type, t->n_dims, t->ne);
        if (nb < 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' shape does not fit type %s", label, t->name,
                        ql_type_get(t->type)->name);
            goto fail;
        }
        t->nbytes = (uint64_t)nb;
        if (t->offset % g->alignment) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' offset is not aligned to %llu", label, t->name,
                        (unsigned long long)g->alignment);
            goto fail;
        }
        for (int64_t j = 0; j + 1 < g->n_tensors; j++)
            if (strcmp(g->tensors[j].name, t->name) == 0) {
                s = ql_fail(QL_ERR_FORMAT, "%s: duplicate tensor '%s'", label, t->name);
                goto fail;
            }
    }
    uint64_t data_off = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors && data_off > size) {
        s = ql_fail(QL_ERR_FORMAT, "%s: truncated before the tensor data section", label);
        goto fail;
    }
    g->data_offset = data_off;
    uint64_t data_size = data_off <= size ? size - data_off : 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        ql_gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' data (%llu bytes at %llu) runs past the end of the file", label,
                        t->name, (unsigned long long)t->nbytes, (unsigned long long)(data_off + t->offset));
            goto fail;
        }
        t->data = (const uint8_t *)buf + data_off + t->offset;
    }
    *out = g;
    return QL_OK;
fail:
    ql_gguf_free(g);
    return s;
}

ql_status ql_map_file(const char *path, void **addr, size_t *len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ql_fail(QL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ql_fail(QL_ERR_IO, "%s: not a regular file", path);
    }
    *len = (size_t)st.st_size;
    if (st.st_size == 0) {
        close(fd);
        *addr = NULL;
        return QL_OK;
    }
    void *p = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        int e = errno;
        const char *what;
        double lim = ql_mem_limit_bytes(&what);
        if (e == ENOMEM)
            return ql_fail(QL_ERR_IO, "%s: cannot map its %.2f GiB: out of address space (%s leaves %.2f GiB for it); raise the "
                                      "limit or use a smaller model file", path, (double)*len / 1073741824.0, what,
                           lim / 1073741824.0);
        return ql_fail(QL_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
    }
    *addr = p;
    return QL_OK;
}

void ql_unmap_file(void *addr, size_t len) {
    if (addr && len) munmap(addr, len);
}

void ql_gguf_release(const ql_gguf *g, const void *p, uint64_t n) {
    /* only pages of g's own read-only file mappings: dropping them loses nothing (a later read faults them
     * back in from the file); an adopted heap buffer would be zeroed, so anything else is left alone */
    const uintptr_t a = (uintptr_t)p, page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; g && p && n && i < g->n_maps; i++) {
        uintptr_t m0 = (uintptr_t)g->maps[i].addr, m1 = m0 + g->maps[i].len;
        if (a < m0 || a + n > m1) continue;
        uintptr_t lo = a & ~(page - 1), hi = QL_MIN((a + n + page - 1) & ~(page - 1), m1);
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
        return;
    }
}

ql_status ql_gguf_open(const char *path, ql_gguf **out) {
    void *addr;
    size_t len;
    ql_status s = ql_map_file(path, &addr, &len);
    if (s) return s;
    s = ql_gguf_parse(addr ? addr : "", len, path, out);
    if (s) {
        ql_unmap_file(addr, len);
        return s;
    }
    ql_gguf_adopt_map(*out, addr, len);
    return QL_OK;
}

/* ---------------------------------------------------------------- lookups */

int64_t ql_gguf_find_kv(const ql_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return i;
    return -1;
}

const ql_gguf_value *ql_gguf_get(const ql_gguf *g, const char *key) {
    int64_t i = ql_gguf_find_kv(g, key);
    return i < 0 ? NULL : &g->kv[i].val;
}

bool ql_gguf_get_int(const ql_gguf *g, const char *key, int64_t *out) {
    const ql_gguf_value *v = ql_gguf_get(g, key);
    if (!v) return false;
    switch (v->type) {
    case QL_GGUF_U8: case QL_GGUF_U16: case QL_GGUF_U32: case QL_GGUF_U64: case QL_GGUF_BOOL:
        if (v->v.u > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v->v.u;
        return true;
    case QL_GGUF_I8: case QL_GGUF_I16: case QL_GGUF_I32: case QL_GGUF_I64:
        *out = v->v.i;
        return true;
    default: return false;
    }
}

bool ql_gguf_get_f64(const ql_gguf *g, const char *key, double *out) {
    const ql_gguf_value *v = ql_gguf_get(g, key);
    if (!v) return false;
    if (v->type == QL_GGUF_F32 || v->type == QL_GGUF_F64) { *out = v->v.f; return true; }
    int64_t i;
    if (ql_gguf_get_int(g, key, &i)) { *out = (double)i; return true; }
    return false;
}

bool ql_gguf_get_bool(const ql_gguf *g, const char *key, bool *out) {
    const ql_gguf_value *v = ql_gguf_get(g, key);
    if (!v || v->type != QL_GGUF_BOOL) return false;
    *out = v->v.u != 0;
    return true;
}

const char *ql_gguf_get_str(const ql_gguf *g, const char *key) {
    const ql_gguf_value *v = ql_gguf_get(g, key);
    return v && v->type == QL_GGUF_STRING ? v->v.str.s : NULL;
}

const ql_gguf_value *ql_gguf_get_arr(const ql_gguf *g, const char *key, uint32_t elem_type, uint64_t *n) {
    const ql_gguf_value *v = ql_gguf_get(g, key);
    if (!v || v->type != QL_GGUF_ARRAY || v->v.arr.elem_type != elem_type) return NULL;
    if (n) *n = v->v.arr.n;
    return v->v.arr.items;
}

int64_t ql_gguf_find_tensor(const ql_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return i;
    return -1;
}

const char *ql_gguf_type_name(uint32_t t) {
    static const char *names[QL_GGUF_NTYPES] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                "bool", "string", "array", "u64", "i64", "f64"};
    return t < QL_GGUF_NTYPES ? names[t] : "?";
}

/* ---------------------------------------------------------------- building */

static ql_gguf_value *slot(ql_gguf *g, const char *key) {
    int64_t i = ql_gguf_find_kv(g, key);
    if (i >= 0) {
        ql_gguf_value_free(&g->kv[i].val);
        return &g->kv[i].val;
    }
    ql_gguf_kv *kv = push_kv(g);
    kv->key = ql_strdup(key);
    return &kv->val;
}

void ql_gguf_set_u32(ql_gguf *g, const char *key, uint32_t x) { ql_gguf_value *v = slot(g, key); v->type = QL_GGUF_U32; v->v.u = x; }
void ql_gguf_set_i32(ql_gguf *g, const char *key, int32_t x) { ql_gguf_value *v = slot(g, key); v->type = QL_GGUF_I32; v->v.i = x; }
void ql_gguf_set_u64(ql_gguf *g, const char *key, uint64_t x) { ql_gguf_value *v = slot(g, key); v->type = QL_GGUF_U64; v->v.u = x; }
void ql_gguf_set_f32(ql_gguf *g, const char *key, float x) { ql_gguf_value *v = slot(g, key); v->type = QL_GGUF_F32; v->v.f = x; }
void ql_gguf_set_bool(ql_gguf *g, const char *key, bool x) { ql_gguf_value *v = slot(g, key); v->type = QL_GGUF_BOOL; v->v.u = x; }

static void make_str(ql_gguf_value *v, const char *s) {
    v->type = QL_GGUF_STRING;
    v->v.str.len = strlen(s);
    v->v.str.s = ql_strdup(s);
}

void ql_gguf_set_str(ql_gguf *g, const char *key, const char *s) { make_str(slot(g, key), s); }

void ql_gguf_set_arr(ql_gguf *g, const char *key, uint32_t et, const void *data, uint64_t n) {
    ql_gguf_value *v = slot(g, key);
    v->type = QL_GGUF_ARRAY;
    v->v.arr.elem_type = et;
    v->v.arr.n = n;
    v->v.arr.items = ql_calloc(n, sizeof(ql_gguf_value));
    const uint8_t *p = data;
    size_t sz = g_scalar_size[et < QL_GGUF_NTYPES ? et : 0];
    for (uint64_t i = 0; i < n; i++, p += sz) {
        ql_gguf_value *it = &v->v.arr.items[i];
        it->type = et;
        switch (et) {
        case QL_GGUF_U8: case QL_GGUF_BOOL: it->v.u = *p; break;
        case QL_GGUF_I8: it->v.i = (int8_t)*p; break;
        case QL_GGUF_U16: { uint16_t x; memcpy(&x, p, 2); it->v.u = x; } break;
        case QL_GGUF_I16: { int16_t x; memcpy(&x, p, 2); it->v.i = x; } break;
        case QL_GGUF_U32: { uint32_t x; memcpy(&x, p, 4); it->v.u = x; } break;
        case QL_GGUF_I32: { int32_t x; memcpy(&x, p, 4); it->v.i = x; } break;
        case QL_GGUF_F32: { float x; memcpy(&x, p, 4); it->v.f = x; } break;
        case QL_GGUF_U64: memcpy(&it->v.u, p, 8); break;
        case QL_GGUF_I64: memcpy(&it->v.i, p, 8); break;
        case QL_GGUF_F64: memcpy(&it->v.f, p, 8); break;
        default: ql_abort("ql_gguf_set_arr: element type must be a scalar");
        }
    }
}

void ql_gguf_set_arr_str(ql_gguf *g, const char *key, const char *const *strs, uint64_t n) {
    ql_gguf_value *v = slot(g, key);
    v->type = QL_GGUF_ARRAY;
    v->v.arr.elem_type = QL_GGUF_STRING;
    v->v.arr.n = n;
    v->v.arr.items = ql_calloc(n, sizeof(ql_gguf_value));
    for (uint64_t i = 0; i < n; i++) make_str(&v->v.arr.items[i], strs[i]);
}

void ql_gguf_set_value(ql_gguf *g, const char *key, const ql_gguf_value *val) {
    ql_gguf_value tmp;
    ql_gguf_value_copy(&tmp, val); /* copy first: val may live inside g */
    *slot(g, key) = tmp;
}

void ql_gguf_remove(ql_gguf *g, const char *key) {
    int64_t i = ql_gguf_find_kv(g, key);
    if (i < 0) return;
    free(g->kv[i].key);
    ql_gguf_value_free(&g->kv[i].val);
    memmove(&g->kv[i], &g->kv[i + 1], (size_t)(g->n_kv - i - 1) * sizeof *g->kv);
    g->n_kv--;
}

void ql_gguf_copy_kv(ql_gguf *dst, const ql_gguf *src) {
    for (int64_t i = 0; i < src->n_kv; i++) ql_gguf_set_value(dst, src->kv[i].key, &src->kv[i].val);
    dst->alignment = src->alignment;
}

int64_t ql_gguf_add_tensor(ql_gguf *g, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                           const void *data) {
    if (n_dims < 1 || n_dims > QL_MAX_DIMS) {
        ql_fail(QL_ERR_ARG, "tensor '%s': %d dimensions", name, n_dims);
        return -1;
    }
    if (ql_gguf_find_tensor(g, name) >= 0) {
        ql_fail(QL_ERR_ARG, "tensor '%s' added twice", name);
        return -1;
    }
    int64_t shape[QL_MAX_DIMS] = {1, 1, 1, 1};
    for (int d = 0; d < n_dims; d++) shape[d] = ne[d];
    int64_t nb = tensor_nbytes(type, n_dims, shape);
    if (nb < 0) {
        ql_fail(QL_ERR_ARG, "tensor '%s': row of %lld does not fit type %s", name, (long long)shape[0],
                ql_type_get(type) ? ql_type_get(type)->name : "?");
        return -1;
    }
    ql_gguf_tensor *t = push_tensor(g);
    t->name = ql_strdup(name);
    t->type = type;
    t->n_dims = n_dims;
    memcpy(t->ne, shape, sizeof shape);
    t->nbytes = (uint64_t)nb;
    t->data = data;
    return g->n_tensors - 1;
}

void ql_gguf_adopt(ql_gguf *g, void *buf) {
    if (g->n_owned == g->cap_owned) {
        g->cap_owned = g->cap_owned ? g->cap_owned * 2 : 16;
        g->owned = ql_realloc(g->owned, (size_t)g->cap_owned * sizeof *g->owned);
    }
    g->owned[g->n_owned++] = buf;
}

void ql_gguf_adopt_map(ql_gguf *g, void *addr, size_t len) {
    if (g->n_maps == g->cap_maps) {
        g->cap_maps = g->cap_maps ? g->cap_maps * 2 : 4;
        g->maps = ql_realloc(g->maps, (size_t)g->cap_maps * sizeof *g->maps);
    }
    g->maps[g->n_maps].addr = addr;
    g->maps[g->n_maps].len = len;
    g->n_maps++;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    FILE *f;
    bool err;
    uint64_t pos;
} writer;

static void w_bytes(writer *w, const void *p, size_t n) {
    if (w->err || n == 0) return;
    if (w->f && fwrite(p, 1, n, w->f) != n) w->err = true; /* no file: only counting (ql_gguf_header_bytes) */
    w->pos += n;
}
static void w_u32(writer *w, uint32_t x) { w_bytes(w, &x, 4); }
static void w_u64(writer *w, uint64_t x) { w_bytes(w, &x, 8); }
static void w_str(writer *w, const char *s, uint64_t len) { w_u64(w, len); w_bytes(w, s, (size_t)len); }
static void w_pad(writer *w, uint64_t align) {
    static const uint8_t zeros[256];
    uint64_t pad = (align - w->pos % align) % align;
    while (pad) {
        size_t n = pad > sizeof zeros ? sizeof zeros : (size_t)pad;
        w_bytes(w, zeros, n);
        pad -= n;
    }
}

static void w_value(writer *w, const ql_gguf_value *v) {
    switch (v->type) {
    case QL_GGUF_U8: case QL_GGUF_I8: case QL_GGUF_BOOL: { uint8_t x = (uint8_t)v->v.u; w_bytes(w, &x, 1); } break;
    case QL_GGUF_U16: case QL_GGUF_I16: { uint16_t x = (uint16_t)v->v.u; w_bytes(w, &x, 2); } break;
    case QL_GGUF_U32: case QL_GGUF_I32: w_u32(w, (uint32_t)v->v.u); break;
    case QL_GGUF_F32: { float x = (float)v->v.f; w_bytes(w, &x, 4); } break;
    case QL_GGUF_U64: case QL_GGUF_I64: w_u64(w, v->v.u); break;
    case QL_GGUF_F64: w_bytes(w, &v->v.f, 8); break;
    case QL_GGUF_STRING: w_str(w, v->v.str.s, v->v.str.len); break;
    case QL_GGUF_ARRAY:
        w_u32(w, v->v.arr.elem_type);
        w_u64(w, v->v.arr.n);
        for (uint64_t i = 0; i < v->v.arr.n; i++) w_value(w, &v->v.arr.items[i]);
        break;
    }
}

/* Magic, counts, key/values and tensor infos: what ql_gguf_write puts before the data section's padding. */
static uint64_t write_header(writer *w, const ql_gguf *g, uint64_t align) {
    w_u32(w, GGUF_MAGIC);
    w_u32(w, 3);
    w_u64(w, (uint64_t)g->n_tensors);
    w_u64(w, (uint64_t)g->n_kv);
    for (int64_t i = 0; i < g->n_kv; i++) {
        w_str(w, g->kv[i].key, strlen(g->kv[i].key));
        w_u32(w, g->kv[i].val.type);
        w_value(w, &g->kv[i].val);
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        w_str(w, t->name, strlen(t->name));
        w_u32(w, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) w_u64(w, (uint64_t)t->ne[d]);
        w_u32(w, t->type);
        w_u64(w, off);
        off += (t->nbytes + align - 1) / align * align;
    }
    return off;
}

uint64_t ql_gguf_header_bytes(const ql_gguf *g) {
    writer w = {NULL, false, 0};
    write_header(&w, g, g->alignment ? g->alignment : GGUF_DEFAULT_ALIGN);
    return w.pos;
}

ql_status ql_gguf_write(const ql_gguf *g, const char *path, const ql_progress *progress) {
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) return s;
    ql_atomic_set_bulk(af); /* GBs of tensors: staged, written by a thread while the next tensor is produced */
    writer w = {ql_atomic_stream(af), false, 0};
    /* one scratch of the largest produced tensor: reallocating per tensor gave large buffers' pages back to
     * the kernel and faulted them in again for the next tensor */
    uint64_t scratch_cap = 0;
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (!g->tensors[i].data && g->tensors[i].nbytes > scratch_cap) scratch_cap = g->tensors[i].nbytes;
    uint8_t *scratch = NULL;
    uint64_t align = g->alignment ? g->alignment : GGUF_DEFAULT_ALIGN;
    uint64_t off = write_header(&w, g, align);
    w_pad(&w, align);
    uint64_t total = off, done = 0;
    for (int64_t i = 0; i < g->n_tensors && !w.err; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        if (ql_progress_cancelled(progress)) {
            s = ql_fail(QL_ERR_CANCELLED, "%s: cancelled", path);
            goto out;
        }
        const void *src = t->data;
        if (!src) {
            if (!t->produce) {
                s = ql_fail(QL_ERR_ARG, "%s: tensor '%s' has no data", path, t->name);
                goto out;
            }
            if (!scratch) scratch = ql_malloc(scratch_cap ? (size_t)scratch_cap : 1);
            if ((s = t->produce(t->produce_user, i, scratch, t->nbytes))) goto out;
            src = scratch;
        }
        w_bytes(&w, src, (size_t)t->nbytes);
        w_pad(&w, align);
        done += t->nbytes;
        ql_progress_report(progress, (int64_t)done, (int64_t)total, "writing");
    }
    /* w.err is sticky in the stream's ferror: the commit reports it with its errno */
out:
    free(scratch);
    if (s) {
        ql_atomic_abort(af);
        return s;
    }
    return ql_atomic_commit(af);
}
