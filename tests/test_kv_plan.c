/* test_kv_plan.c — KV settings in the plan and the quantized file (core/kv_settings.h, pipeline/plan.c [kv],
 * pipeline/quantize.c qlab.kv.* keys): the [kv] section saves and loads back equal, malformed lines are refused
 * naming the plan; the GGUF keys round-trip and malformed ones are refused naming the file; llama.cpp's flags
 * are printed for llama.cpp cache types and refused (with the reason) for qlab-only and per-layer schemes;
 * exact bytes with per-layer schemes equal the sum of uniform caches' layers; a scheme the head dimension cannot
 * hold is refused; a plan quantized to a file carries the settings (the predicted file size still exact), and
 * the file's settings applied to the forward pass give the same logits as setting each layer by hand, and other
 * logits than the float cache; the allocator trades per-layer KV schemes against weight bits under one memory
 * budget (weights file + cache), never over it, picking the cheap cache where its measured KLD is small, and
 * writes the choice as the plan's [kv]; the .qss keeps the KV cells through save and load. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/gguf.h"
#include "core/infer.h"
#include "core/kv_settings.h"
#include "core/synth.h"
#include "formats/format.h"
#include "pipeline/plan.h"
#include "pipeline/quantize.h"
#include "sensitivity/allocate.h"
#include "sensitivity/sense.h"
#include "tests/test_util.h"

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static ql_kv_scheme scheme(const char *name) {
    ql_kv_scheme s;
    if (!ql_kv_scheme_parse(name, &s)) fail_msg("%s: %s", name, ql_last_error());
    return s;
}

static void test_plan_ini(void **state) {
    (void)state;
    char path[] = "/tmp/qlab-test-kvplan-XXXXXX.ini";
    int fd = mkstemps(path, 4);
    assert_true(fd >= 0);
    close(fd);
    ql_plan *p = ql_plan_new();
    ql_plan_set(p, "blk.0.attn_q.weight", ql_format_by_name("q8_0"), "rtn", NULL);
    p->kv.set = true;
    p->kv.scheme = scheme("q8_0:q4_0");
    p->kv.ctx = 4096;
    p->kv.batch = 2;
    ql_kv_scheme f16 = scheme("f16"), kivi = scheme("kivi4");
    ql_kv_settings_set_layer(&p->kv, 1, &f16);
    ql_kv_settings_set_layer(&p->kv, 3, &kivi);
    assert_int_equal(ql_plan_save(p, "m.gguf", path), QL_OK);
    ql_plan *q;
    assert_int_equal(ql_plan_load(path, &q), QL_OK);
    assert_true(q->kv.set);
    assert_true(ql_kv_scheme_equal(&q->kv.scheme, &p->kv.scheme));
    assert_int_equal(q->kv.ctx, 4096);
    assert_int_equal(q->kv.batch, 2);
    assert_int_equal(q->kv.n_layer_own, 2);
    for (int l = 0; l < 5; l++) {
        ql_kv_scheme a = ql_kv_settings_layer(&p->kv, l), b = ql_kv_settings_layer(&q->kv, l);
        assert_true(ql_kv_scheme_equal(&a, &b));
    }
    ql_kv_scheme l3 = ql_kv_settings_layer(&q->kv, 3);
    assert_true(ql_kv_scheme_equal(&l3, &kivi));
    ql_plan_free(q);
    ql_plan_free(p);
    /* a plan without [kv] has none */
    write_text(path, "[tensors]\nblk.0.attn_q.weight = q8_0\n");
    assert_int_equal(ql_plan_load(path, &q), QL_OK);
    assert_false(q->kv.set);
    ql_plan_free(q);
    /* malformed lines: one-line errors naming the plan */
    const char *bad[][2] = {
        {"[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\nscheme = q3_k\n", "q3_k"},
        {"[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\nctx = -4\n", "ctx"},
        {"[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\nctx = 12abc\n", "12abc"},
        {"[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\nblk.x = q8_0\n", "blk.x"},
        {"[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\nblk.2 = int3_token_g32\n", "blk.2"},
        {"[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\ncache = q8_0\n", "cache"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(path, bad[i][0]);
        q = NULL;
        assert_int_equal(ql_plan_load(path, &q), QL_ERR_FORMAT);
        assert_null(q);
        const char *e = ql_last_error();
        if (!strstr(e, path) || !strstr(e, bad[i][1]) || strchr(e, '\n')) fail_msg("case %zu: '%s'", i, e);
    }
    unlink(path);
}

static void test_gguf_keys_and_flags(void **state) {
    (void)state;
    ql_kv_settings s, back;
    ql_kv_settings_init(&s);
    s.set = true;
    s.scheme = scheme("q8_0:q4_0");
    s.ctx = 4096;
    char buf[256];
    assert_true(ql_kv_settings_llama_flags(&s, buf, sizeof buf));
    assert_string_equal(buf, "-ctk q8_0 -ctv q4_0 -fa on");
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "qlab.kv.layer.7", "f16"); /* a stale key the writer must drop */
    ql_kv_settings_to_gguf(&s, g);
    assert_null(ql_gguf_get(g, "qlab.kv.layer.7"));
    assert_int_equal(ql_kv_settings_from_gguf(g, "x.gguf", 4, &back), QL_OK);
    assert_true(back.set);
    assert_true(ql_kv_scheme_equal(&back.scheme, &s.scheme));
    assert_int_equal(back.ctx, 4096);
    assert_int_equal(back.batch, 0);
    ql_kv_settings_free(&back);
    /* a layer of its own: still round-trips, but llama.cpp has one type for all layers */
    ql_kv_scheme f16 = scheme("f16");
    ql_kv_settings_set_layer(&s, 2, &f16);
    assert_false(ql_kv_settings_llama_flags(&s, buf, sizeof buf));
    assert_non_null(strstr(buf, "per-layer"));
    ql_kv_settings_to_gguf(&s, g);
    assert_int_equal(ql_kv_settings_from_gguf(g, "x.gguf", 4, &back), QL_OK);
    ql_kv_scheme l2 = ql_kv_settings_layer(&back, 2), l1 = ql_kv_settings_layer(&back, 1);
    assert_true(ql_kv_scheme_equal(&l2, &f16));
    assert_true(ql_kv_scheme_equal(&l1, &s.scheme));
    ql_kv_settings_free(&back);
    /* the same layer twice is one entry, the later scheme */
    ql_kv_scheme q4 = scheme("q4_0");
    ql_kv_settings_set_layer(&s, 2, &q4);
    assert_int_equal(s.n_layer_own, 1);
    ql_kv_settings_free(&s);
    /* qlab-only: no flags, and the reason says so */
    ql_kv_settings_init(&s);
    s.set = true;
    s.scheme = scheme("kivi4");
    assert_false(ql_kv_settings_llama_flags(&s, buf, sizeof buf));
    assert_non_null(strstr(buf, "qlab-only"));
    s.scheme = scheme("q8_0:int8_token_g32");
    assert_false(ql_kv_settings_llama_flags(&s, buf, sizeof buf));
    s.scheme = scheme("f16");
    assert_true(ql_kv_settings_llama_flags(&s, buf, sizeof buf));
    assert_string_equal(buf, "-ctk f16 -ctv f16 -fa on");
    /* malformed keys: refused naming the file and the key */
    const struct { const char *key, *val; } bad[] = {
        {"qlab.kv.scheme", "q3_k"}, {"qlab.kv.layer.9", "q8_0"}, {"qlab.kv.layer.x", "q8_0"}, {"qlab.kv.mode", "q8_0"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ql_gguf *b = ql_gguf_new();
        ql_gguf_set_str(b, bad[i].key, bad[i].val);
        assert_int_equal(ql_kv_settings_from_gguf(b, "bad.gguf", 4, &back), QL_ERR_FORMAT);
        const char *e = ql_last_error();
        if (!strstr(e, "bad.gguf") || !strstr(e, bad[i].key)) fail_msg("case %zu: '%s'", i, e);
        ql_gguf_free(b);
    }
    ql_gguf *b = ql_gguf_new();
    ql_gguf_set_u32(b, "qlab.kv.ctx", 0);
    assert_int_equal(ql_kv_settings_from_gguf(b, "bad.gguf", 4, &back), QL_ERR_FORMAT);
    ql_gguf_free(b);
    ql_gguf_free(g);
}

static void test_bytes_and_check(void **state) {
    (void)state;
    ql_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 4, c.n_head = 8, c.n_head_kv = 4, c.head_dim = 32;
    ql_kv_settings s;
    ql_kv_settings_init(&s);
    s.set = true;
    s.scheme = scheme("q8_0");
    ql_kv_scheme f16 = scheme("f16"), q8 = s.scheme;
    assert_int_equal(ql_kv_settings_bytes(&s, &c, 4096, 1), ql_kv_cache_bytes(&c, &q8, 4096, 1));
    ql_kv_settings_set_layer(&s, 0, &f16);
    /* 3 layers of q8_0 and one of f16, at 4096 tokens: 2 sides x kv_dim 128 x 4096 tokens */
    const int64_t q8_layer = 2 * 4096 * (128 / 32) * 34, f16_layer = 2 * 4096 * 128 * 2;
    assert_int_equal(ql_kv_settings_bytes(&s, &c, 4096, 1), 3 * q8_layer + f16_layer);
    assert_int_equal(ql_kv_settings_bytes(&s, &c, 4096, 3), 3 * (3 * q8_layer + f16_layer));
    assert_int_equal(ql_kv_settings_check(&s, &c, "m.gguf"), QL_OK);
    /* a head of 8 cannot hold q8_0's blocks of 32: refused naming the model */
    c.head_dim = 8;
    assert_int_not_equal(ql_kv_settings_check(&s, &c, "tiny.gguf"), QL_OK);
    assert_non_null(strstr(ql_last_error(), "tiny.gguf"));
    c.head_dim = 32;
    ql_kv_settings_set_layer(&s, 9, &f16);
    assert_int_equal(ql_kv_settings_check(&s, &c, "m.gguf"), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "layer 9"));
    ql_kv_settings_free(&s);
}

static void test_quantized_file(void **state) {
    (void)state;
    char src[] = "/tmp/qlab-test-kvplan-src-XXXXXX.gguf", out[] = "/tmp/qlab-test-kvplan-out-XXXXXX.gguf";
    int fd = mkstemps(src, 5);
    assert_true(fd >= 0);
    close(fd);
    fd = mkstemps(out, 5);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    assert_int_equal(ql_synth_parse_dims("layers=3,embd=128,heads=4,kv=2,ff=192,vocab=300,ctx=64", &sh), QL_OK);
    assert_int_equal(ql_synth_write(&sh, 7, src, 1, NULL), QL_OK);
    ql_model *m, *qm;
    assert_int_equal(ql_model_load(src, &m), QL_OK);
    ql_plan *p = ql_plan_new();
    ql_plan_set(p, "blk.0.ffn_up.weight", ql_format_by_name("q8_0"), "rtn", NULL);
    p->kv.set = true;
    p->kv.scheme = scheme("q8_0:q4_0");
    p->kv.ctx = 1024;
    ql_kv_scheme f16 = scheme("f16");
    ql_kv_settings_set_layer(&p->kv, 1, &f16);
    int64_t *tb = calloc((size_t)m->gguf->n_tensors, sizeof *tb);
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const ql_gguf_tensor *t = &m->gguf->tensors[i];
        tb[i] = !strcmp(t->name, "blk.0.ffn_up.weight") ? ql_format_tensor_bytes(ql_format_by_name("q8_0"), t->ne[0], t->ne[1])
                                                        : (int64_t)t->nbytes;
    }
    const int64_t predicted = ql_quantize_file_bytes(m, tb, p);
    ql_quant_opts o = {.plan = p, .n_threads = 1};
    ql_quant_stats st;
    assert_int_equal(ql_quantize_model(m, &o, out, NULL, &st), QL_OK);
    struct stat sb;
    assert_int_equal(stat(out, &sb), 0);
    assert_int_equal((int64_t)sb.st_size, predicted); /* the qlab.kv.* keys are counted */
    assert_int_equal(ql_model_load(out, &qm), QL_OK);
    ql_kv_settings fk;
    assert_int_equal(ql_kv_settings_from_gguf(qm->gguf, out, qm->cfg.n_layer, &fk), QL_OK);
    assert_true(fk.set);
    assert_int_equal(fk.ctx, 1024);
    for (int l = 0; l < 3; l++) {
        ql_kv_scheme a = ql_kv_settings_layer(&fk, l), b = ql_kv_settings_layer(&p->kv, l);
        assert_true(ql_kv_scheme_equal(&a, &b));
    }
    /* the file's settings in the forward pass = each layer set by hand; and not the float cache */
    ql_infer *x, *y;
    assert_int_equal(ql_infer_new(qm, 1, &x), QL_OK);
    assert_int_equal(ql_infer_new(qm, 1, &y), QL_OK);
    const int T = 40, V = qm->cfg.n_vocab;
    int32_t tok[40];
    for (int i = 0; i < T; i++) tok[i] = (i * 53 + 7) % V;
    float *a = malloc((size_t)T * V * 4), *b = malloc((size_t)T * V * 4), *c = malloc((size_t)T * V * 4);
    ql_scratch *sa = ql_scratch_new(x, T), *sb2 = ql_scratch_new(y, T);
    assert_int_equal(ql_forward(x, sa, tok, T, 0, c), QL_OK); /* float cache */
    assert_int_equal(ql_infer_set_kv_settings(x, &fk), QL_OK);
    assert_int_equal(ql_forward(x, sa, tok, T, 0, a), QL_OK);
    ql_kv_scheme main_s = scheme("q8_0:q4_0");
    assert_int_equal(ql_infer_set_kv(y, &main_s), QL_OK);
    assert_int_equal(ql_infer_set_kv_layer(y, 1, &f16), QL_OK);
    assert_int_equal(ql_forward(y, sb2, tok, T, 0, b), QL_OK);
    assert_memory_equal(a, b, (size_t)T * V * 4);
    assert_memory_not_equal(a, c, (size_t)T * V * 4);
    ql_scratch_free(sa);
    ql_scratch_free(sb2);
    ql_infer_free(x);
    ql_infer_free(y);
    free(a), free(b), free(c);
    ql_kv_settings_free(&fk);
    ql_model_free(qm);
    /* a scheme the head dimension (32) cannot hold is refused when quantizing, naming the model */
    p->kv.scheme = scheme("int8_token_g64");
    assert_int_not_equal(ql_quantize_model(m, &o, out, NULL, &st), QL_OK);
    if (!strstr(ql_last_error(), "[kv]") || !strstr(ql_last_error(), src)) fail_msg("'%s'", ql_last_error());
    ql_plan_free(p);
    free(tb);
    ql_model_free(m);
    unlink(src);
    unlink(out);
}

static void test_allocator_kv(void **state) {
    (void)state;
    char src[] = "/tmp/qlab-test-kvalloc-XXXXXX.gguf", qss[] = "/tmp/qlab-test-kvalloc-XXXXXX.qss";
    int fd = mkstemps(src, 5);
    assert_true(fd >= 0);
    close(fd);
    fd = mkstemps(qss, 4);
    assert_true(fd >= 0);
    close(fd);
    ql_synth_shape sh = *ql_synth_find("tiny");
    assert_int_equal(ql_synth_parse_dims("layers=3,embd=128,heads=4,kv=2,ff=192,vocab=300,ctx=64", &sh), QL_OK);
    assert_int_equal(ql_synth_write(&sh, 9, src, 1, NULL), QL_OK);
    ql_model *m;
    assert_int_equal(ql_model_load(src, &m), QL_OK);
    char *cands[] = {"q4_0", "q8_0"};
    ql_sense *s;
    assert_int_equal(ql_sense_new(m, cands, 2, &s), QL_OK);
    s->level = QL_SENSE_KLD;
    for (int t = 0; t < s->n_tensors; t++)
        for (int c = 0; c < 2; c++) {
            ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            e->level = QL_SENSE_KLD;
            e->werr = e->oerr = 1e-3;
            e->kld = c == 0 ? 1e-3 : 1e-5;
            e->dppl = 0;
        }
    char *kvs[] = {"q8_0", "q4_0"};
    ql_sense_set_kv(s, kvs, 2, m->cfg.n_layer, m->cfg.n_head_kv, m->cfg.head_dim);
    /* layer 1's cache is sensitive to q4_0, the others are not */
    for (int l = 0; l < 3; l++) {
        ql_sense_kv_cell_at(s, l, 0)->level = ql_sense_kv_cell_at(s, l, 1)->level = QL_SENSE_KLD;
        ql_sense_kv_cell_at(s, l, 0)->kld = 1e-6;
        ql_sense_kv_cell_at(s, l, 1)->kld = l == 1 ? 5e-2 : 2e-6;
        ql_sense_kv_cell_at(s, l, 0)->dppl = ql_sense_kv_cell_at(s, l, 1)->dppl = 0;
    }
    assert_int_equal(ql_sense_save(s, qss), QL_OK);
    ql_sense *back;
    assert_int_equal(ql_sense_load(qss, &back), QL_OK);
    assert_int_equal(back->n_kv, 2);
    assert_int_equal(back->kv_layers, 3);
    assert_string_equal(back->kv[1], "q4_0");
    assert_true(ql_sense_kv_cell_at(back, 1, 1)->kld == ql_sense_kv_cell_at(s, 1, 1)->kld);
    /* q4_0 = 18 bytes per 32 values, q8_0 34: one layer at ctx 4096 holds 2 x 4096 x 64 values */
    const int64_t ctx = 4096, q4 = 2 * ctx * 64 / 32 * 18, q8 = 2 * ctx * 64 / 32 * 34;
    assert_int_equal(ql_sense_kv_layer_bytes(back, 1, ctx, 1), q4);
    assert_int_equal(ql_sense_kv_layer_bytes(back, 0, ctx, 2), 2 * q8);
    /* a budget of the file in q8_0 + the cache in q4_0 but for one layer in q8_0: the weights stay q8_0
     * (each q4_0 tensor costs 1e-3) and layer 1, the sensitive one, gets q8_0 */
    int64_t w8 = 0, orig = 0;
    for (int t = 0; t < s->n_tensors; t++) w8 += ql_sense_cell_at(s, t, 1)->bytes, orig += s->tensors[t].orig_bytes;
    const int64_t file8 = s->file_bytes - orig + w8 + 32 * s->n_tensors_file;
    ql_alloc_opts o = {.target_bytes = file8 + 2 * q4 + q8, .metric = QL_SENSE_KLD, .kv_ctx = ctx, .kv_batch = 1};
    ql_alloc_result r;
    assert_int_equal(ql_allocate(back, &o, &r), QL_OK);
    assert_int_equal(r.kv_n, 3);
    assert_int_equal(r.kv_choice[0], 1);
    assert_int_equal(r.kv_choice[1], 0);
    assert_int_equal(r.kv_choice[2], 1);
    assert_int_equal(r.kv_bytes, 2 * q4 + q8);
    assert_true(r.bytes + r.kv_bytes <= r.budget_bytes);
    for (int t = 0; t < r.n; t++) assert_string_equal(r.c[t].spec, "q8_0");
    ql_plan *p;
    assert_int_equal(ql_alloc_plan(back, &r, "test", &p), QL_OK);
    assert_true(p->kv.set);
    assert_int_equal(p->kv.ctx, ctx);
    ql_kv_scheme l0 = ql_kv_settings_layer(&p->kv, 0), l1 = ql_kv_settings_layer(&p->kv, 1);
    ql_kv_scheme q4s = scheme("q4_0"), q8s = scheme("q8_0");
    assert_true(ql_kv_scheme_equal(&l0, &q4s));
    assert_true(ql_kv_scheme_equal(&l1, &q8s));
    assert_int_equal(ql_kv_settings_bytes(&p->kv, &m->cfg, ctx, 1), r.kv_bytes); /* the plan's memory is the allocator's */
    ql_plan_free(p);
    /* more memory never predicts worse (a ceiling, not a size to fill with float caches) */
    const double err_at = r.err;
    ql_alloc_result_free(&r);
    o.target_bytes *= 3;
    assert_int_equal(ql_allocate(back, &o, &r), QL_OK);
    assert_true(r.err <= err_at);
    assert_true(r.bytes + r.kv_bytes <= r.budget_bytes);
    ql_alloc_result_free(&r);
    o.target_bytes /= 3;
    /* less memory: the weights give way before layer 1's cache goes to q4_0 (0.05 KLD) */
    o.target_bytes -= w8 / 4;
    assert_int_equal(ql_allocate(back, &o, &r), QL_OK);
    assert_int_equal(r.kv_choice[1], 0);
    assert_true(r.bytes + r.kv_bytes <= r.budget_bytes);
    int n_q4 = 0;
    for (int t = 0; t < r.n; t++) n_q4 += !strcmp(r.c[t].spec, "q4_0");
    assert_true(n_q4 > 0);
    ql_alloc_result_free(&r);
    /* a bpw target cannot hold a cache; a file without KV schemes cannot either */
    ql_alloc_opts ob = {.target_bpw = 6, .metric = QL_SENSE_KLD, .kv_ctx = ctx};
    assert_int_equal(ql_allocate(back, &ob, &r), QL_ERR_ARG);
    ql_sense_set_kv(back, NULL, 0, 3, 2, 32);
    assert_int_equal(ql_allocate(back, &o, &r), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "--kv-candidates"));
    ql_sense_free(back);
    ql_sense_free(s);
    ql_model_free(m);
    unlink(src);
    unlink(qss);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_ini),
        cmocka_unit_test(test_gguf_keys_and_flags),
        cmocka_unit_test(test_bytes_and_check),
        cmocka_unit_test(test_quantized_file),
        cmocka_unit_test(test_allocator_kv),
    };
    ql_test_order_from_env(tests, sizeof tests / sizeof tests[0]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
