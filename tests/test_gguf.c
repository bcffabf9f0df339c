/* test_gguf.c — GGUF reader/writer: every metadata type (nested arrays too), alignment, v2 files,
 * byte-identical round trips of a real model, and hostile inputs (truncation at every header byte,
 * huge counts, out-of-range offsets) rejected with a message naming the file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/ggml_types.h"
#include "core/gguf.h"
#include "tests/test_util.h"

static char *tmpname(void) {
    char *p = strdup("/tmp/qlab-gguf-XXXXXX");
    int fd = mkstemp(p);
    close(fd);
    return p;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void test_all_value_types_round_trip(void **state) {
    (void)state;
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_u32(g, "a.u32", 4000000000u);
    ql_gguf_set_i32(g, "a.i32", -7);
    ql_gguf_set_u64(g, "a.u64", 1ull << 40);
    ql_gguf_set_f32(g, "a.f32", 0.25f);
    ql_gguf_set_bool(g, "a.bool", true);
    ql_gguf_set_str(g, "a.str", "héllo");
    int8_t i8[3] = {-1, 0, 1};
    ql_gguf_set_arr(g, "a.arr_i8", QL_GGUF_I8, i8, 3);
    double f64[2] = {1.5, -2.25};
    ql_gguf_set_arr(g, "a.arr_f64", QL_GGUF_F64, f64, 2);
    uint16_t u16[2] = {65535, 1};
    ql_gguf_set_arr(g, "a.arr_u16", QL_GGUF_U16, u16, 2);
    const char *strs[] = {"x", "", "yz"};
    ql_gguf_set_arr_str(g, "a.arr_str", strs, 3);
    /* a nested array: [[1,2],[3]] of i64 */
    ql_gguf_value nested = {.type = QL_GGUF_ARRAY};
    nested.v.arr.elem_type = QL_GGUF_ARRAY;
    nested.v.arr.n = 2;
    ql_gguf_value inner[2] = {{.type = QL_GGUF_ARRAY}, {.type = QL_GGUF_ARRAY}};
    ql_gguf_value a1[2] = {{.type = QL_GGUF_I64, .v.i = 1}, {.type = QL_GGUF_I64, .v.i = 2}};
    ql_gguf_value a2[1] = {{.type = QL_GGUF_I64, .v.i = 3}};
    inner[0].v.arr.elem_type = QL_GGUF_I64; inner[0].v.arr.n = 2; inner[0].v.arr.items = a1;
    inner[1].v.arr.elem_type = QL_GGUF_I64; inner[1].v.arr.n = 1; inner[1].v.arr.items = a2;
    nested.v.arr.items = inner;
    ql_gguf_set_value(g, "a.nested", &nested);
    g->alignment = 64;
    ql_gguf_set_u32(g, "general.alignment", 64);
    float w[3 * 5];
    for (int i = 0; i < 15; i++) w[i] = (float)i - 7.5f;
    int64_t ne[2] = {5, 3};
    assert_true(ql_gguf_add_tensor(g, "w", QL_TYPE_F32, 2, ne, w) >= 0);
    uint8_t q8[34 * 2] = {0};
    int64_t ne2[2] = {32, 2};
    assert_true(ql_gguf_add_tensor(g, "q", QL_TYPE_Q8_0, 2, ne2, q8) >= 0);
    int64_t bad[1] = {33};
    assert_int_equal(ql_gguf_add_tensor(g, "bad", QL_TYPE_Q8_0, 1, bad, q8), -1); /* 33 is no whole block */

    char *path = tmpname();
    assert_int_equal(ql_gguf_write(g, path, NULL), QL_OK);
    ql_gguf *r;
    assert_int_equal(ql_gguf_open(path, &r), QL_OK);
    int64_t iv;
    double dv;
    bool bv;
    assert_true(ql_gguf_get_int(r, "a.u32", &iv) && iv == 4000000000ll);
    assert_true(ql_gguf_get_int(r, "a.i32", &iv) && iv == -7);
    assert_true(ql_gguf_get_int(r, "a.u64", &iv) && iv == 1ll << 40);
    assert_true(ql_gguf_get_f64(r, "a.f32", &dv) && dv == 0.25);
    assert_true(ql_gguf_get_bool(r, "a.bool", &bv) && bv);
    assert_string_equal(ql_gguf_get_str(r, "a.str"), "héllo");
    uint64_t n;
    const ql_gguf_value *arr = ql_gguf_get_arr(r, "a.arr_str", QL_GGUF_STRING, &n);
    assert_non_null(arr);
    assert_int_equal(n, 3);
    assert_string_equal(arr[2].v.str.s, "yz");
    arr = ql_gguf_get_arr(r, "a.arr_f64", QL_GGUF_F64, &n);
    assert_true(arr && n == 2 && arr[1].v.f == -2.25);
    arr = ql_gguf_get_arr(r, "a.arr_i8", QL_GGUF_I8, &n);
    assert_true(arr && arr[0].v.i == -1);
    arr = ql_gguf_get_arr(r, "a.arr_u16", QL_GGUF_U16, &n);
    assert_true(arr && arr[0].v.u == 65535);
    arr = ql_gguf_get_arr(r, "a.nested", QL_GGUF_ARRAY, &n);
    assert_true(arr && n == 2 && arr[0].v.arr.n == 2 && arr[1].v.arr.items[0].v.i == 3);
    assert_int_equal(r->alignment, 64);
    assert_int_equal(r->n_tensors, 2);
    assert_int_equal(r->data_offset % 64, 0);
    assert_int_equal(r->tensors[1].offset % 64, 0);
    assert_memory_equal(r->tensors[0].data, w, sizeof w);
    /* writing what was read gives the same bytes */
    char *path2 = tmpname();
    assert_int_equal(ql_gguf_write(r, path2, NULL), QL_OK);
    size_t n1, n2;
    uint8_t *b1 = slurp(path, &n1), *b2 = slurp(path2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    /* the same bytes with version 2 read the same way */
    b1[4] = 2;
    ql_gguf *v2;
    assert_int_equal(ql_gguf_parse(b1, n1, "v2", &v2), QL_OK);
    assert_int_equal(v2->version, 2);
    assert_int_equal(v2->n_kv, r->n_kv);
    ql_gguf_free(v2);
    b1[4] = 1;
    assert_int_equal(ql_gguf_parse(b1, n1, "v1", &v2), QL_ERR_UNSUPPORTED);
    free(b1);
    free(b2);
    ql_gguf_free(r);
    ql_gguf_free(g);
    unlink(path);
    unlink(path2);
    free(path);
    free(path2);
}

static void test_real_model_round_trip_and_truncation(void **state) {
    (void)state;
    char model[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) skip();
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(model, &g), QL_OK);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_tensors, 48);
    assert_int_equal(g->n_kv, 19);
    assert_string_equal(ql_gguf_get_str(g, "general.architecture"), "llama");
    char *path = tmpname();
    assert_int_equal(ql_gguf_write(g, path, NULL), QL_OK);
    size_t n1, n2;
    uint8_t *orig = slurp(model, &n1), *copy = slurp(path, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(orig, copy, n1);
    /* every truncation inside the header and tensor table is an error, never a crash */
    for (size_t cut = 0; cut < g->data_offset + 64; cut++) {
        ql_gguf *t = NULL;
        ql_status s = ql_gguf_parse(orig, cut, "cut.gguf", &t);
        assert_int_not_equal(s, QL_OK);
        assert_null(t);
        assert_non_null(strstr(ql_last_error(), "cut.gguf"));
    }
    /* truncating inside the last tensor's data is caught too */
    ql_gguf *t = NULL;
    assert_int_equal(ql_gguf_parse(orig, n1 - 1, "short.gguf", &t), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "past the end"));
    free(orig);
    free(copy);
    unlink(path);
    free(path);
    ql_gguf_free(g);
}

static void test_hostile_headers(void **state) {
    (void)state;
    uint8_t buf[64];
    ql_gguf *g = NULL;
    /* huge tensor and key counts must not allocate */
    memset(buf, 0, sizeof buf);
    memcpy(buf, "GGUF", 4);
    buf[4] = 3;
    memset(buf + 8, 0xff, 16);
    assert_int_equal(ql_gguf_parse(buf, sizeof buf, "huge.gguf", &g), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "huge.gguf"));
    /* one key whose string length is 2^63 */
    memset(buf + 8, 0, 16);
    buf[16] = 1;             /* n_kv = 1 */
    memset(buf + 24, 0xff, 7); /* key length */
    buf[31] = 0x7f;
    assert_int_equal(ql_gguf_parse(buf, sizeof buf, "keylen.gguf", &g), QL_ERR_FORMAT);
    /* an array claiming 2^60 elements */
    memset(buf + 24, 0, 40);
    buf[24] = 1;   /* key length 1 */
    buf[32] = 'k';
    buf[33] = QL_GGUF_ARRAY;
    buf[37] = QL_GGUF_U8;
    buf[48] = 0x10; /* n = 1<<60 (byte 7 of the u64 at 41) */
    memset(buf + 41, 0, 8);
    buf[48] = 0x10;
    assert_int_equal(ql_gguf_parse(buf, sizeof buf, "arr.gguf", &g), QL_ERR_FORMAT);
    /* not GGUF at all */
    assert_int_equal(ql_gguf_parse("GGML....", 8, "magic.gguf", &g), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "not a GGUF"));
    /* a file that does not exist */
    assert_int_equal(ql_gguf_open("/nonexistent/x.gguf", &g), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), "/nonexistent/x.gguf"));
}

static void test_write_failure_leaves_nothing(void **state) {
    (void)state;
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.architecture", "llama");
    int64_t ne[1] = {4};
    assert_true(ql_gguf_add_tensor(g, "deferred", QL_TYPE_F32, 1, ne, NULL) >= 0); /* no data, no producer */
    char dir[] = "/tmp/qlab-gguf-dir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/out.gguf", dir);
    assert_int_not_equal(ql_gguf_write(g, path, NULL), QL_OK);
    assert_int_equal(rmdir(dir), 0); /* empty: neither the output nor a temporary file remains */
    ql_gguf_free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_value_types_round_trip),
        cmocka_unit_test(test_real_model_round_trip_and_truncation),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_write_failure_leaves_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
