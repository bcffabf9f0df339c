/* imatrix.c — llama.cpp importance matrices: GGUF and legacy .dat readers (every size read from a
 * file is checked against the bytes that remain before it is used) and writers (temporary file +
 * rename). The .dat writer reproduces llama.cpp's GGUF→dat conversion bit for bit: float arithmetic
 * values = in_sum2 / counts * ncall with ncall = ceil(counts / chunk_size), entries sorted by name.
 * Ownership: see imatrix.h. */
#include "pipeline/imatrix.h"
#include "base/atomic_file.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/ggml_types.h"
#include "core/gguf.h"

#define DAT_MAX_NAME 4096 /* longer tensor names are not plausible; refuse them */

static const char SUFFIX_SUM2[] = ".in_sum2";
static const char SUFFIX_COUNTS[] = ".counts";

/* ---------------------------------------------------------------- building */

ql_imatrix *ql_imatrix_new(void) {
    return ql_calloc(1, sizeof(ql_imatrix));
}

void ql_imatrix_free(ql_imatrix *im) {
    if (!im) return;
    for (int i = 0; i < im->n; i++) {
        free(im->entries[i].name);
        free(im->entries[i].sum2);
        free(im->entries[i].counts);
    }
    free(im->entries);
    for (int i = 0; i < im->n_datasets; i++) free(im->datasets[i]);
    free(im->datasets);
    free(im);
}

void ql_imatrix_add_dataset(ql_imatrix *im, const char *dataset) {
    im->datasets = ql_realloc(im->datasets, sizeof(char *) * (size_t)(im->n_datasets + 1));
    im->datasets[im->n_datasets++] = ql_strdup(dataset);
}

const ql_imatrix_entry *ql_imatrix_find(const ql_imatrix *im, const char *tensor_name) {
    if (!im || !tensor_name) return NULL;
    for (int i = 0; i < im->n; i++)
        if (strcmp(im->entries[i].name, tensor_name) == 0) return &im->entries[i];
    return NULL;
}

/* Appends a zeroed entry; the name is copied (len bytes, need not be NUL-terminated). */
static ql_imatrix_entry *entry_append(ql_imatrix *im, const char *name, size_t len, int64_t n) {
    if (im->n == im->cap) {
        im->cap = im->cap ? im->cap * 2 : 64;
        im->entries = ql_realloc(im->entries, sizeof(ql_imatrix_entry) * (size_t)im->cap);
    }
    ql_imatrix_entry *e = &im->entries[im->n++];
    e->name = ql_malloc(len + 1);
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    e->n = n;
    e->sum2 = ql_calloc((size_t)n, sizeof(double));
    e->count = 0.0;
    e->n_mat = 1;
    e->counts = NULL;
    return e;
}

ql_imatrix_entry *ql_imatrix_entry_get(ql_imatrix *im, const char *name, int64_t n) {
    if (!im || !name || n <= 0 || (uint64_t)n > SIZE_MAX / sizeof(double)) return NULL;
    ql_imatrix_entry *e = (ql_imatrix_entry *)ql_imatrix_find(im, name);
    if (e) return e->n == n && e->n_mat == 1 ? e : NULL;
    if (im->n == INT32_MAX) return NULL;
    return entry_append(im, name, strlen(name), n);
}

/* Gives a fresh entry n_mat experts of n (one count each); a dense one keeps n_mat 1 and no counts array. */
static void entry_make_stack(ql_imatrix_entry *e, int64_t n, int64_t n_mat) {
    e->n = n;
    if (n_mat <= 1) return;
    e->n_mat = n_mat;
    e->counts = ql_calloc((size_t)n_mat, sizeof(double));
}

ql_imatrix_entry *ql_imatrix_entry_get_experts(ql_imatrix *im, const char *name, int64_t n, int64_t n_mat) {
    if (n_mat <= 1) return ql_imatrix_entry_get(im, name, n);
    if (!im || !name || n <= 0 || n_mat > INT64_MAX / n || (uint64_t)(n * n_mat) > SIZE_MAX / sizeof(double)) return NULL;
    ql_imatrix_entry *e = (ql_imatrix_entry *)ql_imatrix_find(im, name);
    if (e) return e->n == n && e->n_mat == n_mat ? e : NULL;
    if (im->n == INT32_MAX) return NULL;
    e = entry_append(im, name, strlen(name), n * n_mat);
    entry_make_stack(e, n, n_mat);
    return e;
}

bool ql_imatrix_importance(const ql_imatrix *im, const char *tensor_name, int64_t n, float *dst) {
    return ql_imatrix_importance_mat(im, tensor_name, n, 1, 0, dst);
}

bool ql_imatrix_importance_mat(const ql_imatrix *im, const char *tensor_name, int64_t n, int64_t n_mat, int64_t mat,
                               float *dst) {
    const ql_imatrix_entry *e = ql_imatrix_find(im, tensor_name);
    if (!e || mat < 0 || mat >= n_mat) return false;
    if (e->n_mat > 1) {
        if (e->n_mat != n_mat || e->n != n) return false;
        const double c = e->counts[mat], *s2 = e->sum2 + mat * n;
        for (int64_t i = 0; i < n; i++) dst[i] = c > 0.0 ? (float)(s2[i] / c) : 1.0f; /* llama.cpp's fill */
        return true;
    }
    if (e->n != n * n_mat || !(e->count > 0.0) || !isfinite(e->count)) return false;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)(e->sum2[mat * n + i] / e->count);
    return true;
}

/* ---------------------------------------------------------------- GGUF */

static bool ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && memcmp(s + ls - lx, suffix, lx) == 0;
}

static int64_t n_elements(const ql_gguf_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->ne[d]; /* the reader bounded these by the file size */
    return n;
}

static float read_f32(const void *base, int64_t i) {
    float v;
    memcpy(&v, (const uint8_t *)base + (size_t)i * sizeof(float), sizeof v);
    return v;
}

static ql_status load_gguf(const char *path, ql_imatrix **out) {
    ql_gguf *g;
    ql_status s = ql_gguf_open(path, &g);
    if (s) return s;
    ql_imatrix *im = ql_imatrix_new();
    const char *type = ql_gguf_get_str(g, "general.type");
    if (ql_gguf_find_kv(g, "general.type") >= 0 && (!type || strcmp(type, "imatrix") != 0)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: general.type is '%s', not 'imatrix'", path,
                    type ? type : "(not a string)");
        goto fail;
    }
    uint64_t n_ds = 0;
    const ql_gguf_value *ds = ql_gguf_get_arr(g, "imatrix.datasets", QL_GGUF_STRING, &n_ds);
    if (!ds && ql_gguf_find_kv(g, "imatrix.datasets") >= 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: imatrix.datasets is not an array of strings", path);
        goto fail;
    }
    if (n_ds > INT32_MAX) {
        s = ql_fail(QL_ERR_FORMAT, "%s: too many imatrix.datasets", path);
        goto fail;
    }
    for (uint64_t i = 0; i < n_ds; i++) ql_imatrix_add_dataset(im, ds[i].v.str.s);
    int64_t v;
    if (ql_gguf_get_int(g, "imatrix.chunk_count", &v)) {
        if (v < 0) { s = ql_fail(QL_ERR_FORMAT, "%s: negative imatrix.chunk_count", path); goto fail; }
        im->chunk_count = v;
    }
    if (ql_gguf_get_int(g, "imatrix.chunk_size", &v)) {
        if (v < 0) { s = ql_fail(QL_ERR_FORMAT, "%s: negative imatrix.chunk_size", path); goto fail; }
        im->chunk_size = v;
    }

    for (int64_t ti = 0; ti < g->n_tensors; ti++) {
        const ql_gguf_tensor *t = &g->tensors[ti];
        if (ends_with(t->name, SUFFIX_COUNTS)) {
            /* every counts tensor must belong to an in_sum2 */
            size_t wl = strlen(t->name) - strlen(SUFFIX_COUNTS);
            char *want = ql_malloc(wl + sizeof SUFFIX_SUM2);
            memcpy(want, t->name, wl);
            memcpy(want + wl, SUFFIX_SUM2, sizeof SUFFIX_SUM2);
            bool ok = ql_gguf_find_tensor(g, want) >= 0;
            free(want);
            if (!ok) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has no matching %s tensor", path, t->name,
                            SUFFIX_SUM2);
                goto fail;
            }
            continue;
        }
        if (!ends_with(t->name, SUFFIX_SUM2)) continue; /* .in_sum (mean activations) etc.: not needed */
        size_t wl = strlen(t->name) - strlen(SUFFIX_SUM2);
        if (wl == 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has an empty weight name", path, t->name);
            goto fail;
        }
        if (t->type != QL_TYPE_F32) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is not F32", path, t->name);
            goto fail;
        }
        int64_t n = t->n_dims > 0 ? t->ne[0] : 1;
        int64_t nmat = n > 0 ? n_elements(t) / n : 0;
        if (n <= 0 || nmat <= 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' is empty", path, t->name);
            goto fail;
        }
        if (nmat > 1 << 16) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' holds %lld experts", path, t->name, (long long)nmat);
            goto fail;
        }
        char *cname = ql_malloc(wl + sizeof SUFFIX_COUNTS);
        memcpy(cname, t->name, wl);
        memcpy(cname + wl, SUFFIX_COUNTS, sizeof SUFFIX_COUNTS);
        int64_t ci = ql_gguf_find_tensor(g, cname);
        free(cname);
        if (ci < 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has no matching %s tensor", path, t->name,
                        SUFFIX_COUNTS);
            goto fail;
        }
        const ql_gguf_tensor *c = &g->tensors[ci];
        if (c->type != QL_TYPE_F32 || n_elements(c) != nmat) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' must be F32 with %lld element(s)", path, c->name,
                        (long long)nmat);
            goto fail;
        }
        if (!t->data || !c->data) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' has no data", path, t->name);
            goto fail;
        }
        double count = 0;
        for (int64_t j = 0; j < nmat; j++) {
            const float cj = read_f32(c->data, j);
            if (!isfinite(cj) || cj < 0.0f) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' holds an invalid count %g", path, c->name, (double)cj);
                goto fail;
            }
            count += cj;
        }
        char *wname = ql_malloc(wl + 1);
        memcpy(wname, t->name, wl);
        wname[wl] = '\0';
        bool dup = ql_imatrix_find(im, wname) != NULL;
        free(wname);
        if (dup) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' appears twice", path, t->name);
            goto fail;
        }
        if (im->n == INT32_MAX) {
            s = ql_fail(QL_ERR_FORMAT, "%s: too many entries", path);
            goto fail;
        }
        ql_imatrix_entry *e = entry_append(im, t->name, wl, n * nmat);
        entry_make_stack(e, n, nmat);
        e->count = count;
        for (int64_t j = 0; e->counts && j < nmat; j++) e->counts[j] = read_f32(c->data, j);
        for (int64_t i = 0; i < n * nmat; i++) {
            float x = read_f32(t->data, i);
            if (!isfinite(x) || x < 0.0f) {
                s = ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' value %lld is negative or not finite", path,
                            t->name, (long long)i);
                goto fail;
            }
            e->sum2[i] = x;
        }
    }
    if (im->n == 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: no '<weight>%s' tensors: not an importance matrix", path,
                    SUFFIX_SUM2);
        goto fail;
    }
    ql_gguf_free(g);
    *out = im;
    return QL_OK;
fail:
    ql_imatrix_free(im);
    ql_gguf_free(g);
    return s;
}

static int cmp_entry_name(const void *a, const void *b) {
    const ql_imatrix_entry *x = *(const ql_imatrix_entry *const *)a, *y = *(const ql_imatrix_entry *const *)b;
    return strcmp(x->name, y->name);
}

/* Entries sorted by name (llama.cpp's deterministic order); caller frees the array. */
static const ql_imatrix_entry **sorted_entries(const ql_imatrix *im) {
    const ql_imatrix_entry **v = ql_malloc(sizeof(*v) * (size_t)(im->n ? im->n : 1));
    for (int i = 0; i < im->n; i++) v[i] = &im->entries[i];
    qsort(v, (size_t)im->n, sizeof(*v), cmp_entry_name);
    return v;
}

static ql_status check_for_save(const ql_imatrix *im, const char *path) {
    if (!im || !path) return ql_fail(QL_ERR_ARG, "imatrix save: no imatrix or path");
    if (im->n <= 0) return ql_fail(QL_ERR_ARG, "%s: the imatrix has no entries", path);
    if (im->chunk_count < 0 || im->chunk_count > INT32_MAX || im->chunk_size < 0 ||
        im->chunk_size > INT32_MAX)
        return ql_fail(QL_ERR_ARG, "%s: chunk count/size out of range", path);
    for (int i = 0; i < im->n; i++) {
        const ql_imatrix_entry *e = &im->entries[i];
        if (!e->name || !e->name[0] || strlen(e->name) > DAT_MAX_NAME)
            return ql_fail(QL_ERR_ARG, "%s: entry %d has an empty or too long name", path, i);
        if (e->n <= 0 || e->n > INT32_MAX)
            return ql_fail(QL_ERR_ARG, "%s: entry '%s' has length %lld", path, e->name, (long long)e->n);
        if (!isfinite(e->count) || e->count < 0.0 || e->count > (double)INT64_MAX / 2)
            return ql_fail(QL_ERR_ARG, "%s: entry '%s' has an invalid count", path, e->name);
        if (e->n_mat > 1 && ends_with(path, ".dat"))
            return ql_fail(QL_ERR_ARG, "%s: entry '%s' holds %lld experts, which only the GGUF format keeps (write a "
                                       ".gguf)", path, e->name, (long long)e->n_mat);
    }
    return QL_OK;
}

bool ql_imatrix_path_is_dat(const char *path) { return path && ends_with(path, ".dat"); }

static ql_status save_gguf(const ql_imatrix *im, const char *path) {
    const ql_imatrix_entry **v = sorted_entries(im);
    size_t total = 0;
    for (int i = 0; i < im->n; i++) total += (size_t)((v[i]->n + 1) * v[i]->n_mat);
    float *buf = ql_malloc(total * sizeof(float));
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.type", "imatrix");
    ql_gguf_set_arr_str(g, "imatrix.datasets", (const char *const *)im->datasets, (uint64_t)im->n_datasets);
    ql_gguf_set_u32(g, "imatrix.chunk_count", (uint32_t)im->chunk_count);
    ql_gguf_set_u32(g, "imatrix.chunk_size", (uint32_t)im->chunk_size);
    ql_status s = QL_OK;
    float *p = buf;
    for (int i = 0; i < im->n && !s; i++) {
        const ql_imatrix_entry *e = v[i];
        size_t nl = strlen(e->name);
        char *tn = ql_malloc(nl + sizeof SUFFIX_SUM2);
        const int64_t nm = e->n_mat, nv = e->n * nm;
        for (int64_t j = 0; j < nv; j++) p[j] = (float)e->sum2[j];
        for (int64_t j = 0; j < nm; j++) p[nv + j] = (float)(nm > 1 ? e->counts[j] : e->count);
        /* llama.cpp makes [n, n_mat] and [1, n_mat] tensors, and gguf stores them without trailing 1s */
        int64_t ne_sum[2] = {e->n, nm}, ne_cnt[2] = {1, nm};
        const int nd = nm > 1 ? 2 : 1;
        snprintf(tn, nl + sizeof SUFFIX_SUM2, "%s%s", e->name, SUFFIX_SUM2);
        if (ql_gguf_add_tensor(g, tn, QL_TYPE_F32, nd, ne_sum, p) < 0) s = QL_ERR_ARG;
        snprintf(tn, nl + sizeof SUFFIX_SUM2, "%s%s", e->name, SUFFIX_COUNTS);
        if (!s && ql_gguf_add_tensor(g, tn, QL_TYPE_F32, nd, ne_cnt, p + nv) < 0) s = QL_ERR_ARG;
        free(tn);
        p += nv + nm;
    }
    if (!s) s = ql_gguf_write(g, path, NULL);
    ql_gguf_free(g);
    free(buf);
    free(v);
    return s;
}

/* ---------------------------------------------------------------- legacy .dat */

typedef struct {
    const uint8_t *p;
    size_t len, pos;
} reader;

static bool rd_i32(reader *r, int32_t *v) {
    if (r->len - r->pos < 4) return false;
    uint32_t u = (uint32_t)r->p[r->pos] | (uint32_t)r->p[r->pos + 1] << 8 | (uint32_t)r->p[r->pos + 2] << 16 |
                 (uint32_t)r->p[r->pos + 3] << 24;
    memcpy(v, &u, 4);
    r->pos += 4;
    return true;
}

static float rd_f32_at(const reader *r, size_t off) {
    uint32_t u = (uint32_t)r->p[off] | (uint32_t)r->p[off + 1] << 8 | (uint32_t)r->p[off + 2] << 16 |
                 (uint32_t)r->p[off + 3] << 24;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static ql_status parse_dat(const uint8_t *data, size_t len, const char *path, int64_t cs, ql_imatrix **out) {
    reader r = {data, len, 0};
    int32_t n_entries;
    if (!rd_i32(&r, &n_entries)) return ql_fail(QL_ERR_FORMAT, "%s: too short for an imatrix", path);
    /* the smallest entry is 4 (len) + 1 (name) + 4 (ncall) + 4 (nval) + 4 (one value) bytes */
    if (n_entries < 1 || (uint64_t)n_entries > (len - r.pos) / 17)
        return ql_fail(QL_ERR_FORMAT, "%s: entry count %d does not fit the file size", path, n_entries);
    ql_imatrix *im = ql_imatrix_new();
    ql_status s = QL_OK;
    int64_t max_ncall = 0;
    for (int32_t k = 0; k < n_entries; k++) {
        int32_t nlen, ncall, nval;
        if (!rd_i32(&r, &nlen)) {
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated at entry %d", path, k);
            goto fail;
        }
        if (nlen < 1 || nlen > DAT_MAX_NAME || (size_t)nlen > r.len - r.pos) {
            s = ql_fail(QL_ERR_FORMAT, "%s: entry %d has a bad name length %d", path, k, nlen);
            goto fail;
        }
        const char *name = (const char *)r.p + r.pos;
        if (memchr(name, '\0', (size_t)nlen)) {
            s = ql_fail(QL_ERR_FORMAT, "%s: entry %d has a NUL byte in its name", path, k);
            goto fail;
        }
        r.pos += (size_t)nlen;
        if (!rd_i32(&r, &ncall) || !rd_i32(&r, &nval)) {
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated at entry %d", path, k);
            goto fail;
        }
        if (ncall < 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: entry '%.*s' has a negative call count %d", path, nlen, name,
                        ncall);
            goto fail;
        }
        if (nval < 1 || (uint64_t)nval > (r.len - r.pos) / 4) {
            s = ql_fail(QL_ERR_FORMAT, "%s: entry '%.*s' has %d values, more than the file holds", path, nlen,
                        name, nval);
            goto fail;
        }
        bool dup = false;
        for (int i = 0; i < im->n && !dup; i++)
            dup = strlen(im->entries[i].name) == (size_t)nlen &&
                  memcmp(im->entries[i].name, name, (size_t)nlen) == 0;
        if (dup) {
            s = ql_fail(QL_ERR_FORMAT, "%s: entry '%.*s' appears twice", path, nlen, name);
            goto fail;
        }
        ql_imatrix_entry *e = entry_append(im, name, (size_t)nlen, nval);
        /* llama.cpp reconstructs counts = ncall * chunk_size and sums = values * chunk_size, so that
         * sums / counts = values / ncall, the importance llama-quantize uses */
        e->count = (double)ncall * (double)cs;
        for (int32_t i = 0; i < nval; i++) {
            float x = rd_f32_at(&r, r.pos + 4 * (size_t)i);
            if (!isfinite(x) || x < 0.0f) {
                s = ql_fail(QL_ERR_FORMAT, "%s: entry '%s' value %d is negative or not finite", path,
                            e->name, i);
                goto fail;
            }
            e->sum2[i] = (double)x * (double)cs;
        }
        r.pos += 4 * (size_t)nval;
        if (ncall > max_ncall) max_ncall = ncall;
    }
    /* optional tail (older files end here): int32 last_chunk, then int32 len + dataset name */
    im->chunk_size = cs;
    im->chunk_count = max_ncall;
    if (r.pos < r.len) {
        int32_t last_chunk, dlen;
        if (!rd_i32(&r, &last_chunk) || last_chunk < 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: bad or truncated chunk count after the entries", path);
            goto fail;
        }
        im->chunk_count = last_chunk;
        if (r.pos < r.len) {
            if (!rd_i32(&r, &dlen) || dlen < 0 || (size_t)dlen > r.len - r.pos) {
                s = ql_fail(QL_ERR_FORMAT, "%s: bad or truncated dataset name", path);
                goto fail;
            }
            const char *d = (const char *)r.p + r.pos;
            if (memchr(d, '\0', (size_t)dlen)) {
                s = ql_fail(QL_ERR_FORMAT, "%s: NUL byte in the dataset name", path);
                goto fail;
            }
            if (dlen > 0) {
                char *tmp = ql_malloc((size_t)dlen + 1);
                memcpy(tmp, d, (size_t)dlen);
                tmp[dlen] = '\0';
                ql_imatrix_add_dataset(im, tmp);
                free(tmp);
            }
            r.pos += (size_t)dlen;
        }
    }
    if (r.pos != r.len) {
        s = ql_fail(QL_ERR_FORMAT, "%s: %zu unexpected bytes after the dataset name", path, r.len - r.pos);
        goto fail;
    }
    *out = im;
    return QL_OK;
fail:
    ql_imatrix_free(im);
    return s;
}

/* Little-endian byte buffer the .dat is assembled in (sizes chosen by the program). */
typedef struct {
    uint8_t *b;
    size_t n, cap;
} wbuf;

static void wb_bytes(wbuf *w, const void *src, size_t n) {
    if (w->cap - w->n < n) {
        while (w->cap - w->n < n) w->cap = w->cap ? w->cap * 2 : 4096;
        w->b = ql_realloc(w->b, w->cap);
    }
    memcpy(w->b + w->n, src, n);
    w->n += n;
}

static void wb_i32(wbuf *w, int32_t v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    wb_bytes(w, b, 4);
}

static void wb_f32(wbuf *w, float f) {
    int32_t v;
    memcpy(&v, &f, 4);
    wb_i32(w, v);
}

static ql_status save_dat(const ql_imatrix *im, const char *path) {
    /* the chunk size the counts are divided by; llama.cpp uses its -c (default 512) */
    const int64_t cs = im->chunk_size > 0 ? im->chunk_size : QL_IMATRIX_DAT_CHUNK_SIZE;
    const ql_imatrix_entry **v = sorted_entries(im);
    wbuf w = {0};
    ql_status s = QL_OK;
    int64_t max_count = 0;
    wb_i32(&w, im->n);
    for (int i = 0; i < im->n; i++) {
        const ql_imatrix_entry *e = v[i];
        int64_t count = llround(e->count); /* llama.cpp holds counts as integers */
        int64_t ncall = (count + cs - 1) / cs; /* ceiling, so a partial chunk is no zero */
        if (ncall > INT32_MAX) {
            s = ql_fail(QL_ERR_ARG, "%s: entry '%s' has too large a count for the .dat format", path,
                        e->name);
            break;
        }
        if (count > max_count) max_count = count;
        size_t nl = strlen(e->name);
        wb_i32(&w, (int32_t)nl);
        wb_bytes(&w, e->name, nl);
        wb_i32(&w, (int32_t)ncall);
        wb_i32(&w, (int32_t)e->n);
        /* float arithmetic on purpose: this is what makes the file identical to llama.cpp's */
        const float fcall = (float)ncall;
        for (int64_t j = 0; j < e->n; j++) {
            float c = (float)count, x = (float)e->sum2[j];
            if (c == 0.0f) { x = 1.0f; c = 1.0f; } /* llama.cpp stores 1 for entries without data */
            float q = x / c;
            wb_f32(&w, q * fcall);
        }
    }
    if (!s) {
        int64_t last = im->chunk_count > 0 ? im->chunk_count : max_count / cs;
        wb_i32(&w, (int32_t)QL_MIN(last, (int64_t)INT32_MAX));
        /* llama.cpp writes its prompt file, or without one the last dataset it loaded */
        const char *ds = im->n_datasets > 0 ? im->datasets[im->n_datasets - 1] : "";
        size_t dl = strlen(ds);
        if (dl > INT32_MAX) dl = 0;
        wb_i32(&w, (int32_t)dl);
        wb_bytes(&w, ds, dl);
        s = ql_atomic_write_file(path, w.b, w.n);
    }
    free(w.b);
    free(v);
    return s;
}

/* ---------------------------------------------------------------- entry points */

ql_status ql_imatrix_load_ex(const char *path, int64_t dat_chunk_size, ql_imatrix **out) {
    if (!path || !out) return ql_fail(QL_ERR_ARG, "imatrix load: no path or output");
    *out = NULL;
    if (dat_chunk_size <= 0) dat_chunk_size = QL_IMATRIX_DAT_CHUNK_SIZE;
    if (dat_chunk_size > INT32_MAX) return ql_fail(QL_ERR_ARG, "%s: chunk size out of range", path);
    void *addr;
    size_t len;
    ql_status s = ql_map_file(path, &addr, &len);
    if (s) return s;
    bool is_gguf = len >= 4 && memcmp(addr, "GGUF", 4) == 0;
    if (is_gguf) {
        ql_unmap_file(addr, len);
        return load_gguf(path, out);
    }
    s = parse_dat(addr ? addr : (const void *)"", len, path, dat_chunk_size, out);
    ql_unmap_file(addr, len);
    return s;
}

ql_status ql_imatrix_load(const char *path, ql_imatrix **out) {
    return ql_imatrix_load_ex(path, 0, out);
}

ql_status ql_imatrix_save(const ql_imatrix *im, const char *path) {
    ql_status s = check_for_save(im, path);
    if (s) return s;
    return ends_with(path, ".dat") ? save_dat(im, path) : save_gguf(im, path);
}
