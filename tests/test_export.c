/* test_export.c — the exporter seam (pipeline/export.h): the registry is complete, the seam's checks
 * refuse what an exporter cannot take, a driver's calls reach an exporter in order with producers
 * called at commit, the GGUF exporter's output of stories260K at Q4_K_M is byte-identical to the
 * GGUF writer fed directly (the path qlab quant took before the seam), and a failure at commit leaves
 * an existing output untouched with no temporary behind. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/infer.h"
#include "core/model.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "pipeline/export.h"
#include "pipeline/quantize.h"
#include "presets/preset.h"
#include "tests/test_util.h"

static char *slurp(const char *p, size_t *n) {
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    b[*n] = 0;
    fclose(f);
    return b;
}

static int temporaries_in(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_registry_complete(void **state) {
    (void)state;
    assert_true(ql_exporter_count() >= 1);
    assert_non_null(ql_exporter_default());
    assert_ptr_equal(ql_exporter_default(), ql_exporter_by_name("gguf"));
    assert_ptr_equal(ql_exporter_by_name("GGUF"), ql_exporter_by_name("gguf"));
    assert_null(ql_exporter_at(ql_exporter_count()));
    for (int i = 0; i < ql_exporter_count(); i++) {
        const ql_exporter_info *x = ql_exporter_at(i);
        assert_true(x->name && *x->name && x->summary && *x->summary && x->accepts && *x->accepts);
        const ql_exporter_ops *o = x->ops;
        assert_true(o && o->accepts_type && o->begin && o->add_metadata && o->add_tensor && o->commit && o->abort);
        /* folder formats are the ones that take sidecar files */
        if (x->folder) assert_non_null(o->add_sidecar);
        assert_ptr_equal(ql_exporter_by_name(x->name), x);
        for (int j = 0; j < i; j++) assert_string_not_equal(ql_exporter_at(j)->name, x->name);
    }
    const ql_exporter_info *found = NULL;
    assert_int_equal(ql_exporter_find("onnx-nope", &found), QL_ERR_ARG);
    assert_null(found);
    assert_non_null(strstr(ql_last_error(), "onnx-nope"));
    for (int i = 0; i < ql_exporter_count(); i++) assert_non_null(strstr(ql_last_error(), ql_exporter_at(i)->name));
    /* GGUF takes every registered format, ggml's and qlab's extensions */
    for (int i = 0; i < ql_format_count(); i++) assert_true(ql_exporter_default()->ops->accepts_type(ql_format_at(i)->type));
    assert_false(ql_exporter_default()->ops->accepts_type(0x7fffffffu));
}

/* ---- a recording exporter: shows what a driver's calls look like from the implementation's side */

static char g_log[1024];
static void logf_(const char *fmt, const char *a) {
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, fmt, a);
}
typedef struct {
    ql_export_tensor t[4];
    int n;
} rec_state;
static bool rec_accepts(uint32_t type) { return type == QL_TYPE_F32 || type == QL_TYPE_Q8_0; }
static ql_status rec_begin(ql_exporter *x, const char *out, const ql_gguf *src) {
    x->state = calloc(1, sizeof(rec_state));
    logf_("begin(%s)", out);
    logf_(" src=%s", src && ql_gguf_get_str(src, "general.architecture") ? ql_gguf_get_str(src, "general.architecture") : "-");
    return QL_OK;
}
static ql_status rec_meta(ql_exporter *x, const char *key, const ql_gguf_value *v) {
    (void)x;
    (void)v;
    logf_(" m:%s", key);
    return QL_OK;
}
static ql_status rec_tensor(ql_exporter *x, const ql_export_tensor *t) {
    rec_state *st = x->state;
    assert_true(st->n < 4);
    st->t[st->n++] = *t;
    logf_(" t:%s", t->name);
    return QL_OK;
}
static ql_status rec_sidecar(ql_exporter *x, const char *name, const void *b, size_t n) {
    (void)x;
    (void)b;
    (void)n;
    logf_(" s:%s", name);
    return QL_OK;
}
static ql_status rec_commit(ql_exporter *x, const ql_progress *p) {
    (void)p;
    rec_state *st = x->state;
    ql_status s = QL_OK;
    for (int i = 0; i < st->n && !s; i++)
        if (!st->t[i].data) {
            uint8_t buf[64];
            assert_true(st->t[i].nbytes <= sizeof buf);
            s = st->t[i].produce(st->t[i].produce_user, st->t[i].produce_tag, buf, st->t[i].nbytes);
            logf_(" produced:%s", st->t[i].name);
        }
    logf_(" %s", s ? "commit-failed" : "commit");
    free(st);
    return s;
}
static void rec_abort(ql_exporter *x) {
    free(x->state);
    logf_(" %s", "abort");
}
static const ql_exporter_ops rec_ops = {rec_accepts, rec_begin, rec_meta, rec_tensor, rec_sidecar, rec_commit, rec_abort, NULL};
static const ql_exporter_info rec_info = {"rec", "records calls", "f32, q8_0", true, &rec_ops};

static int g_produced;
static ql_status fill_tag(void *user, int64_t tag, void *dst, uint64_t n) {
    (void)user;
    memset(dst, (int)tag, (size_t)n);
    g_produced++;
    return QL_OK;
}
static ql_status fail_produce(void *user, int64_t tag, void *dst, uint64_t n) {
    (void)user;
    (void)tag;
    (void)dst;
    (void)n;
    return ql_fail(QL_ERR_IO, "producer failed on purpose");
}

static void test_seam_calls_and_checks(void **state) {
    (void)state;
    ql_gguf *img = ql_gguf_new();
    ql_gguf_set_str(img, "general.architecture", "llama");
    ql_gguf_set_u32(img, "general.file_type", 7);
    static float w[8];
    int64_t ne[2] = {8, 1};
    ql_gguf_add_tensor(img, "a.weight", QL_TYPE_F32, 1, ne, w);
    int64_t q = ql_gguf_add_tensor(img, "b.weight", QL_TYPE_Q8_0, 2, (int64_t[]){32, 1}, NULL);
    img->tensors[q].produce = fill_tag;
    g_log[0] = 0;
    g_produced = 0;
    assert_int_equal(ql_export_image(&rec_info, "/x/out", img, img, NULL), QL_OK);
    assert_string_equal(g_log, "begin(/x/out) src=llama m:general.architecture m:general.file_type t:a.weight t:b.weight "
                               "produced:b.weight commit");
    assert_int_equal(g_produced, 1);

    /* a failing producer surfaces from commit */
    img->tensors[q].produce = fail_produce;
    g_log[0] = 0;
    assert_int_equal(ql_export_image(&rec_info, "/x/out", img, img, NULL), QL_ERR_IO);
    assert_non_null(strstr(g_log, "commit-failed"));

    /* the seam refuses a type the exporter does not take, and the driver aborts */
    int64_t k = ql_gguf_add_tensor(img, "c.weight", QL_TYPE_Q4_K, 2, (int64_t[]){256, 1}, NULL);
    img->tensors[k].produce = fill_tag;
    img->tensors[q].produce = fill_tag;
    g_log[0] = 0;
    assert_int_equal(ql_export_image(&rec_info, "/x/out", img, img, NULL), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "c.weight"));
    assert_non_null(strstr(ql_last_error(), ql_type_get(QL_TYPE_Q4_K)->name));
    assert_non_null(strstr(g_log, " abort"));
    assert_null(strstr(g_log, "t:c.weight"));

    /* direct use: sidecars, and a tensor with neither bytes nor producer */
    ql_exporter *x;
    g_log[0] = 0;
    assert_int_equal(ql_export_begin(&rec_info, "/x/dir", NULL, &x), QL_OK);
    assert_int_equal(ql_export_add_sidecar(x, "tokenizer.json", "{}", 2), QL_OK);
    assert_int_equal(ql_export_add_sidecar(x, "../escape.json", "{}", 2), QL_ERR_ARG);
    ql_export_tensor bare = {.name = "d", .type = QL_TYPE_F32, .n_dims = 1, .ne = ne, .nbytes = 32};
    assert_int_equal(ql_export_add_tensor(x, &bare), QL_ERR_ARG);
    ql_export_abort(x);
    assert_string_equal(g_log, "begin(/x/dir) src=- s:tokenizer.json abort");
    ql_export_abort(NULL);

    /* GGUF is one file: a sidecar has no place in it */
    assert_int_equal(ql_export_begin(ql_exporter_by_name("gguf"), "/tmp/never.gguf", img, &x), QL_OK);
    assert_int_equal(ql_export_add_sidecar(x, "tokenizer.json", "{}", 2), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "tokenizer.json"));
    ql_export_abort(x);
    assert_int_equal(access("/tmp/never.gguf", F_OK), -1);
    ql_gguf_free(img);
}

static void test_gguf_failure_keeps_target(void **state) {
    (void)state;
    char dir[] = "/tmp/ql_export_XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/out.gguf", dir);
    FILE *f = fopen(path, "wb");
    fputs("previous export", f);
    fclose(f);
    ql_gguf *img = ql_gguf_new();
    ql_gguf_set_str(img, "general.architecture", "llama");
    int64_t ne[2] = {32, 4};
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        int64_t k = ql_gguf_add_tensor(img, name, QL_TYPE_Q8_0, 2, ne, NULL);
        img->tensors[k].produce = i == 2 ? fail_produce : fill_tag;
    }
    assert_int_equal(ql_export_image(ql_exporter_default(), path, img, img, NULL), QL_ERR_IO);
    size_t n;
    char *b = slurp(path, &n);
    assert_string_equal(b, "previous export");
    free(b);
    assert_int_equal(temporaries_in(dir), 0);
    /* cancellation through the progress flag: the same */
    img->tensors[2].produce = fill_tag;
    volatile int cancel = 1;
    ql_progress p = {.cancel = &cancel};
    assert_int_equal(ql_export_image(ql_exporter_default(), path, img, img, &p), QL_ERR_CANCELLED);
    b = slurp(path, &n);
    assert_string_equal(b, "previous export");
    free(b);
    assert_int_equal(temporaries_in(dir), 0);
    /* and with nothing failing it is replaced by a GGUF that reads back */
    assert_int_equal(ql_export_image(ql_exporter_default(), path, img, img, NULL), QL_OK);
    ql_gguf *back;
    assert_int_equal(ql_gguf_open(path, &back), QL_OK);
    assert_int_equal(back->n_tensors, 3);
    assert_int_equal(((const uint8_t *)back->tensors[1].data)[5], 1); /* fill_tag wrote the tag */
    ql_gguf_free(back);
    ql_gguf_free(img);
    unlink(path);
    rmdir(dir);
}

/* The path qlab quant took before the seam: a ql_gguf with every key of the source, general.file_type
 * and general.quantization_version, each planned tensor rounded to nearest by its format's own packer,
 * handed to ql_gguf_write. */
static void write_without_seam(const ql_model *m, const ql_plan *plan, const char *path) {
    const ql_gguf *in = m->gguf;
    ql_gguf *g = ql_gguf_new();
    ql_gguf_copy_kv(g, in);
    for (int64_t i = 0; i < in->n_tensors; i++) {
        const ql_gguf_tensor *t = &in->tensors[i];
        const ql_plan_entry *e = ql_plan_find(plan, t->name);
        if (!e || e->format->type == t->type) {
            assert_true(ql_gguf_add_tensor(g, t->name, t->type, t->n_dims, t->ne, t->data) >= 0);
            continue;
        }
        int64_t ncols = t->ne[0], nrows = t->ne[1] * t->ne[2] * t->ne[3];
        float *w = malloc((size_t)(ncols * nrows) * sizeof(float));
        assert_true(ql_tensor_to_f32(t, w, 2));
        int64_t nb = ql_format_tensor_bytes(e->format, ncols, nrows);
        void *dst = malloc((size_t)nb);
        assert_int_equal(ql_format_quantize(e->format, w, dst, nrows, ncols, NULL, 2), QL_OK);
        free(w);
        ql_gguf_adopt(g, dst);
        assert_true(ql_gguf_add_tensor(g, t->name, e->format->type, t->n_dims, t->ne, dst) >= 0);
    }
    assert_true(plan->file_type >= 0);
    ql_gguf_set_u32(g, "general.file_type", (uint32_t)plan->file_type);
    ql_gguf_set_u32(g, "general.quantization_version", 2);
    assert_int_equal(ql_gguf_write(g, path, NULL), QL_OK);
    ql_gguf_free(g);
}

static void test_gguf_seam_byte_identical(void **state) {
    (void)state;
    char model_path[512];
    if (!shared_path(model_path, sizeof model_path, "models/stories260K.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model_path, &m), QL_OK);
    ql_preset *ps;
    ql_plan *plan;
    assert_int_equal(ql_preset_load("Q4_K_M", &ps), QL_OK);
    assert_int_equal(ql_preset_resolve(ps, m, false, &plan), QL_OK);
    char dir[] = "/tmp/ql_export_XXXXXX", a[64], b[64];
    assert_non_null(mkdtemp(dir));
    snprintf(a, sizeof a, "%s/seam.gguf", dir);
    snprintf(b, sizeof b, "%s/direct.gguf", dir);
    ql_quant_opts o = {.plan = plan, .n_threads = 2, .exporter = ql_exporter_by_name("gguf")};
    ql_quant_stats st;
    assert_int_equal(ql_quantize_model(m, &o, a, NULL, &st), QL_OK);
    assert_true(st.tensors_quantized > 0);
    write_without_seam(m, plan, b);
    size_t na, nb;
    char *ba = slurp(a, &na), *bb = slurp(b, &nb);
    assert_non_null(ba);
    assert_non_null(bb);
    assert_int_equal(na, nb);
    assert_memory_equal(ba, bb, na);
    printf("seam and direct writer: %zu bytes, identical; %lld tensors quantized\n", na, (long long)st.tensors_quantized);
    free(ba);
    free(bb);
    unlink(a);
    unlink(b);
    rmdir(dir);
    ql_plan_free(plan);
    ql_preset_free(ps);
    ql_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_complete),
        cmocka_unit_test(test_seam_calls_and_checks),
        cmocka_unit_test(test_gguf_failure_keeps_target),
        cmocka_unit_test(test_gguf_seam_byte_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
