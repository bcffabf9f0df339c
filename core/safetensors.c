/* safetensors.c — parses a safetensors file (8-byte little-endian header length, JSON header, data)
 * into tensors of a ql_gguf that point into the caller's buffer, validating every dtype, shape and
 * offset first. GGUF metadata that qlab stored in "__metadata__" (keys "qlab.gguf.<key>", written by
 * ql_hf_save) is decoded back into keys of the same ql_gguf. Names and shapes are converted to GGUF
 * order (ne[0] = last safetensors dimension) but names are kept as in the file (see core/hf.c).
 * Plain folders hold F32/F16/BF16 only; ql_safetensors_parse_any also takes the integer, FP8 and bool
 * dtypes of quantized checkpoints and reports each tensor's dtype (core/hf_quant.c reads them).
 * The buffer must outlive the ql_gguf; nothing here is global, so threads may parse concurrently. */
#include "core/model.h"
#include "core/hf_quant.h"
#include "kernels/ggml_types.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define QLAB_META_PREFIX "qlab.gguf."
#define MAX_VALUE_DEPTH 4

typedef struct {
    const char *name; /* safetensors dtype string */
    uint32_t type;    /* ggml type (sizes the bytes; U8/FP8/BOOL have none of their own) */
    size_t size;      /* bytes per element */
} st_dtype;

/* Indexed by ql_st_dtype; the first three are the float dtypes a plain folder may hold. */
static const st_dtype g_dtypes[QL_STD_COUNT] = {
    [QL_STD_F32] = {"F32", QL_TYPE_F32, 4},        [QL_STD_F16] = {"F16", QL_TYPE_F16, 2},
    [QL_STD_BF16] = {"BF16", QL_TYPE_BF16, 2},     [QL_STD_F64] = {"F64", QL_TYPE_F64, 8},
    [QL_STD_I8] = {"I8", QL_TYPE_I8, 1},           [QL_STD_U8] = {"U8", QL_TYPE_I8, 1},
    [QL_STD_I16] = {"I16", QL_TYPE_I16, 2},        [QL_STD_U16] = {"U16", QL_TYPE_I16, 2},
    [QL_STD_I32] = {"I32", QL_TYPE_I32, 4},        [QL_STD_U32] = {"U32", QL_TYPE_I32, 4},
    [QL_STD_I64] = {"I64", QL_TYPE_I64, 8},        [QL_STD_F8_E4M3] = {"F8_E4M3", QL_TYPE_I8, 1},
    [QL_STD_F8_E5M2] = {"F8_E5M2", QL_TYPE_I8, 1}, [QL_STD_BOOL] = {"BOOL", QL_TYPE_I8, 1},
};

const char *ql_st_dtype_name(int dtype) {
    return dtype >= 0 && dtype < QL_STD_COUNT ? g_dtypes[dtype].name : "?";
}

/* any: every dtype of the table, else the float ones */
static int dtype_find(const char *s, bool any) {
    for (int i = 0; i < (any ? QL_STD_COUNT : 3); i++)
        if (strcmp(g_dtypes[i].name, s) == 0) return i;
    return -1;
}

/* ---------------------------------------------------------------- qlab GGUF metadata */

/* Inverse of the encoder in core/hf.c. A value is [type, payload]; an array payload is
 * [elem_type, [items...]] whose items are payloads of elem_type. Strings that are not valid UTF-8
 * (or hold NUL) are {"hex": "..."}; non-finite floats are the strings "nan", "inf", "-inf". */
static void value_clear(ql_gguf_value *v) { ql_gguf_value_free(v); }

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool decode_payload(uint32_t type, const json_t *j, ql_gguf_value *v, int depth) {
    memset(v, 0, sizeof *v);
    v->type = type;
    switch (type) {
    case QL_GGUF_U8:
    case QL_GGUF_U16:
    case QL_GGUF_U32:
    case QL_GGUF_U64: {
        if (!json_is_integer(j)) return false;
        json_int_t x = json_integer_value(j);
        uint64_t u = (uint64_t)x;
        if (type != QL_GGUF_U64 && x < 0) return false;
        if ((type == QL_GGUF_U8 && u > UINT8_MAX) || (type == QL_GGUF_U16 && u > UINT16_MAX) ||
            (type == QL_GGUF_U32 && u > UINT32_MAX))
            return false;
        v->v.u = u;
        return true;
    }
    case QL_GGUF_I8:
    case QL_GGUF_I16:
    case QL_GGUF_I32:
    case QL_GGUF_I64: {
        if (!json_is_integer(j)) return false;
        json_int_t x = json_integer_value(j);
        if ((type == QL_GGUF_I8 && (x < INT8_MIN || x > INT8_MAX)) ||
            (type == QL_GGUF_I16 && (x < INT16_MIN || x > INT16_MAX)) ||
            (type == QL_GGUF_I32 && (x < INT32_MIN || x > INT32_MAX)))
            return false;
        v->v.i = x;
        return true;
    }
    case QL_GGUF_F32:
    case QL_GGUF_F64: {
        double d;
        if (json_is_number(j))
            d = json_number_value(j);
        else if (json_is_string(j) && strcmp(json_string_value(j), "nan") == 0)
            d = NAN;
        else if (json_is_string(j) && strcmp(json_string_value(j), "inf") == 0)
            d = INFINITY;
        else if (json_is_string(j) && strcmp(json_string_value(j), "-inf") == 0)
            d = -INFINITY;
        else
            return false;
        if (type == QL_GGUF_F32) d = (double)(float)d;
        v->v.f = d;
        return true;
    }
    case QL_GGUF_BOOL:
        if (!json_is_boolean(j)) return false;
        v->v.u = json_is_true(j) ? 1 : 0;
        return true;
    case QL_GGUF_STRING: {
        if (json_is_string(j)) {
            size_t n = json_string_length(j);
            v->v.str.s = ql_malloc(n + 1);
            memcpy(v->v.str.s, json_string_value(j), n + 1);
            v->v.str.len = n;
            return true;
        }
        const json_t *h = json_is_object(j) ? json_object_get(j, "hex") : NULL;
        if (!json_is_string(h) || json_string_length(h) % 2) return false;
        size_t n = json_string_length(h) / 2;
        const char *s = json_string_value(h);
        v->v.str.s = ql_malloc(n + 1);
        v->v.str.len = n;
        for (size_t i = 0; i < n; i++) {
            int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
            if (a < 0 || b < 0) return false; /* caller frees the partial string */
            v->v.str.s[i] = (char)(a << 4 | b);
        }
        v->v.str.s[n] = 0;
        return true;
    }
    case QL_GGUF_ARRAY: {
        if (depth >= MAX_VALUE_DEPTH || !json_is_array(j) || json_array_size(j) != 2) return false;
        const json_t *et = json_array_get(j, 0), *items = json_array_get(j, 1);
        if (!json_is_integer(et) || !json_is_array(items)) return false;
        json_int_t e = json_integer_value(et);
        if (e < 0 || e >= QL_GGUF_NTYPES) return false;
        size_t n = json_array_size(items);
        v->v.arr.elem_type = (uint32_t)e;
        v->v.arr.items = ql_calloc(n ? n : 1, sizeof(ql_gguf_value));
        for (size_t i = 0; i < n; i++) {
            v->v.arr.n = i + 1; /* so a failure frees exactly what was filled */
            if (!decode_payload((uint32_t)e, json_array_get(items, i), &v->v.arr.items[i], depth + 1))
                return false;
        }
        v->v.arr.n = n;
        return true;
    }
    }
    return false;
}

static ql_status decode_meta(const char *label, const char *key, const char *text, ql_gguf *g) {
    json_error_t err;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &err);
    ql_gguf_value v;
    memset(&v, 0, sizeof v);
    bool ok = false;
    if (j && json_is_array(j) && json_array_size(j) == 2 && json_is_integer(json_array_get(j, 0))) {
        json_int_t t = json_integer_value(json_array_get(j, 0));
        if (t >= 0 && t < QL_GGUF_NTYPES) ok = decode_payload((uint32_t)t, json_array_get(j, 1), &v, 0);
    }
    json_decref(j);
    if (!ok) {
        value_clear(&v);
        return ql_fail(QL_ERR_FORMAT, "%s: __metadata__ entry '%s%s' is not a valid encoded GGUF value",
                       label, QLAB_META_PREFIX, key);
    }
    ql_gguf_set_value(g, key, &v);
    value_clear(&v);
    return QL_OK;
}

/* ---------------------------------------------------------------- tensors */

static ql_status parse_tensor(const char *label, const char *name, const json_t *info, const uint8_t *data,
                              uint64_t data_size, ql_gguf *g, bool any, int *dtype_out) {
    if (!json_is_object(info))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': entry is not an object", label, name);
    if (!name[0]) return ql_fail(QL_ERR_FORMAT, "%s: tensor with an empty name", label);
    const json_t *jd = json_object_get(info, "dtype");
    const json_t *js = json_object_get(info, "shape");
    const json_t *jo = json_object_get(info, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
        return ql_fail(QL_ERR_FORMAT,
                       "%s: tensor '%s': needs dtype (string), shape (array) and data_offsets [begin, end]",
                       label, name);
    int di = dtype_find(json_string_value(jd), any);
    if (di < 0)
        return ql_fail(QL_ERR_UNSUPPORTED,
                       any ? "%s: tensor '%s' has dtype '%.32s', which no quantized checkpoint qlab reads uses"
                           : "%s: tensor '%s' has dtype '%.32s'; only F32, F16 and BF16 are supported (integer "
                             "tensors need a quantization_config in config.json)",
                       label, name, json_string_value(jd));
    const st_dtype *dt = &g_dtypes[di];
    *dtype_out = di;
    size_t nd = json_array_size(js);
    if (nd > QL_MAX_DIMS)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions (at most %d)", label, name, nd,
                       QL_MAX_DIMS);
    int64_t ne[QL_MAX_DIMS] = {1, 1, 1, 1};
    uint64_t count = 1;
    for (size_t d = 0; d < nd; d++) {
        const json_t *x = json_array_get(js, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", label,
                           name, d);
        uint64_t dim = (uint64_t)json_integer_value(x);
        if (dim > INT64_MAX || __builtin_mul_overflow(count, dim, &count) || count > (uint64_t)INT64_MAX / 8)
            return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': shape overflows", label, name);
        ne[nd - 1 - d] = (int64_t)dim; /* GGUF order: the contiguous dimension first */
    }
    if (count == 0) return ql_fail(QL_ERR_UNSUPPORTED, "%s: tensor '%s' has no elements", label, name);
    const json_t *ja = json_array_get(jo, 0), *jb = json_array_get(jo, 1);
    if (!json_is_integer(ja) || !json_is_integer(jb) || json_integer_value(ja) < 0 ||
        json_integer_value(jb) < json_integer_value(ja))
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s': data_offsets must be integers 0 <= begin <= end",
                       label, name);
    uint64_t a = (uint64_t)json_integer_value(ja), b = (uint64_t)json_integer_value(jb);
    if (b > data_size)
        return ql_fail(
            QL_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] past the end of the data (%llu bytes)",
            label, name, (unsigned long long)a, (unsigned long long)b, (unsigned long long)data_size);
    uint64_t want = count * dt->size;
    if (b - a != want)
        return ql_fail(
            QL_ERR_FORMAT, "%s: tensor '%s': %llu bytes of data, but %s with %llu elements needs %llu", label,
            name, (unsigned long long)(b - a), dt->name, (unsigned long long)count, (unsigned long long)want);
    if (ql_gguf_find_tensor(g, name) >= 0)
        return ql_fail(QL_ERR_FORMAT, "%s: tensor '%s' appears twice", label, name);
    if (ql_gguf_add_tensor(g, name, dt->type, nd ? (int)nd : 1, ne, data + a) < 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", ql_last_error()); /* ql_fail reuses the buffer it points to */
        return ql_fail(QL_ERR_FORMAT, "%s: %s", label, why);
    }
    return QL_OK;
}

static ql_status parse(const void *buf, size_t size, const char *label, ql_gguf *g, bool any, uint8_t **dtypes) {
    const uint8_t *p = buf;
    if (size < 8)
        return ql_fail(QL_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", label, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | p[i];
    if (n > size - 8)
        return ql_fail(QL_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                       label, (unsigned long long)n, size);
    if (n < 2)
        return ql_fail(QL_ERR_FORMAT, "%s: header length %llu is too short for JSON", label,
                       (unsigned long long)n);
    json_error_t err;
    json_t *root = json_loadb((const char *)p + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!root) return ql_fail(QL_ERR_FORMAT, "%s: header JSON, byte %d: %s", label, err.position, err.text);
    ql_status s = QL_OK;
    if (!json_is_object(root)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: header JSON is not an object", label);
        goto done;
    }
    const uint8_t *data = p + 8 + n;
    uint64_t data_size = size - 8 - n;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                s = ql_fail(QL_ERR_FORMAT, "%s: __metadata__ is not an object", label);
                goto done;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    s = ql_fail(QL_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string", label, mk);
                    goto done;
                }
                size_t pl = strlen(QLAB_META_PREFIX);
                if (strncmp(mk, QLAB_META_PREFIX, pl) == 0 && mk[pl])
                    if ((s = decode_meta(label, mk + pl, json_string_value(mv), g))) goto done;
            }
            continue;
        }
        int dt = 0;
        if ((s = parse_tensor(label, key, val, data, data_size, g, any, &dt))) goto done;
        if (dtypes) {
            *dtypes = ql_realloc(*dtypes, (size_t)g->n_tensors);
            (*dtypes)[g->n_tensors - 1] = (uint8_t)dt;
        }
    }
done:
    json_decref(root);
    return s;
}

ql_status ql_safetensors_parse(const void *buf, size_t size, const char *label, ql_gguf *g) {
    return parse(buf, size, label, g, false, NULL);
}

ql_status ql_safetensors_parse_any(const void *buf, size_t size, const char *label, ql_gguf *g, uint8_t **dtypes) {
    *dtypes = ql_malloc(1);
    return parse(buf, size, label, g, true, dtypes);
}
