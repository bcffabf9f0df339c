/* test_methods.c — methods as handles (methods/method.h): the option schema (defaults; unknown,
 * misspelled, repeated, mistyped and out-of-range options refused with the valid names and the nearest
 * one; enums; one spec shared by several methods), the registry's declarations (capabilities match the
 * hooks, every default is valid), and capability refusal: a method that cannot write a format says so
 * (GPTQ into f16 / nf4_dq) in the method, the quantize driver and sensitivity candidates, while GPTQ into
 * NF4 is a real error-feedback quantization (different bytes from RTN, lower output error, bytes that
 * decode to the values it chose). With ../shared: what --dry-run reports for each tensor of stories260K. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "formats/format.h"
#include "methods/gptq.h"
#include "methods/method.h"
#include "pipeline/plan.h"
#include "pipeline/quantize.h"
#include "presets/preset.h"
#include "sensitivity/sense.h"
#include "tests/test_util.h"

static const ql_method *meth(const char *name) {
    const ql_method *m = ql_method_by_name(name);
    assert_non_null(m);
    return m;
}

static const ql_format *fmt(const char *name) {
    const ql_format *f = ql_format_by_name(name);
    assert_non_null(f);
    return f;
}

/* parse must fail with QL_ERR_ARG and a message containing every one of want[] */
static void refused(const ql_method *m, const char *spec, const char *const *want, int n_want) {
    ql_opt_values v;
    ql_status s = ql_method_parse_opts(m, spec, &v);
    if (s != QL_ERR_ARG) fprintf(stderr, "'%s' was not refused\n", spec);
    assert_int_equal(s, QL_ERR_ARG);
    for (int i = 0; i < n_want; i++) {
        if (!strstr(ql_last_error(), want[i]))
            fprintf(stderr, "'%s': message '%s' lacks '%s'\n", spec, ql_last_error(), want[i]);
        assert_non_null(strstr(ql_last_error(), want[i]));
    }
}

static void test_defaults_and_values(void **state) {
    (void)state;
    const ql_method *g = meth("gptq");
    ql_opt_values v;
    assert_int_equal(ql_method_parse_opts(g, NULL, &v), QL_OK);
    assert_true(ql_opt_float(&v, g, "damp") == 0.01);
    assert_false(ql_opt_bool(&v, g, "act_order"));
    assert_int_equal(ql_opt_int(&v, g, "block"), 128);
    assert_false(v.given[0]);
    /* NULL values = the defaults too */
    assert_int_equal(ql_opt_int(NULL, g, "block"), 128);
    assert_int_equal(ql_method_parse_opts(g, " damp = 0.1 , act_order=true,block=64,,", &v), QL_OK);
    assert_true(ql_opt_float(&v, g, "damp") == 0.1);
    assert_true(ql_opt_bool(&v, g, "act_order"));
    assert_int_equal(ql_opt_int(&v, g, "block"), 64);
    assert_false(ql_opt_bool(&v, g, "static_groups"));
    int given = 0;
    for (int i = 0; i < g->n_opts; i++) given += v.given[i];
    assert_int_equal(given, 3);
    /* names are case-insensitive; bools take 0/1, true/false, yes/no, on/off */
    assert_int_equal(ql_method_parse_opts(g, "ACT_ORDER=off,Static_Groups=yes", &v), QL_OK);
    assert_false(ql_opt_bool(&v, g, "act_order"));
    assert_true(ql_opt_bool(&v, g, "static_groups"));
    /* bounds are inclusive */
    assert_int_equal(ql_method_parse_opts(g, "damp=0,block=1", &v), QL_OK);
    assert_int_equal(ql_method_parse_opts(g, "damp=10,block=65536", &v), QL_OK);
    const ql_method *sq = meth("smoothquant");
    assert_int_equal(ql_method_parse_opts(sq, "alpha=0.5,down=1", &v), QL_OK);
    assert_true(ql_opt_float(&v, sq, "alpha") == 0.5);
    assert_true(ql_opt_bool(&v, sq, "down"));
    assert_false(ql_opt_bool(&v, sq, "vo"));
}

static void test_unknown_and_misspelled(void **state) {
    (void)state;
    const ql_method *g = meth("gptq");
    /* the check: actorder=1 is refused, listing act_order */
    refused(g, "actorder=1", (const char *[]){"unknown option 'actorder'", "did you mean 'act_order'", "damp",
                                              "block", "static_groups"}, 5);
    refused(g, "dmap=0.1", (const char *[]){"did you mean 'damp'"}, 1);
    refused(g, "static_group=1", (const char *[]){"did you mean 'static_groups'"}, 1);
    /* far from every name: no suggestion, still the list */
    ql_opt_values v;
    assert_int_equal(ql_method_parse_opts(g, "temperature=3", &v), QL_ERR_ARG);
    assert_null(strstr(ql_last_error(), "did you mean"));
    assert_non_null(strstr(ql_last_error(), "act_order"));
    /* a key of another method is unknown here */
    refused(g, "alpha=0.5", (const char *[]){"unknown option 'alpha'"}, 1);
    /* rtn takes nothing */
    refused(meth("rtn"), "damp=0.1", (const char *[]){"rtn takes no options"}, 1);
    assert_int_equal(ql_method_parse_opts(meth("rtn"), "", &v), QL_OK);
    /* malformed items */
    refused(g, "damp", (const char *[]){"not KEY=VALUE"}, 1);
    refused(g, "=1", (const char *[]){"not KEY=VALUE"}, 1);
    refused(g, "damp=0.1,damp=0.2", (const char *[]){"given twice"}, 1);
    /* method names: the nearest one suggested */
    assert_null(ql_method_find("gtpq"));
    assert_non_null(strstr(ql_last_error(), "did you mean 'gptq'"));
    assert_null(ql_method_find("zzz"));
    assert_null(strstr(ql_last_error(), "did you mean"));
    assert_ptr_equal(ql_method_find("GPTQ"), meth("gptq"));
}

static void test_types_and_ranges(void **state) {
    (void)state;
    const ql_method *g = meth("gptq");
    refused(g, "damp=11", (const char *[]){"damp=11", "outside"}, 2);
    refused(g, "damp=-1", (const char *[]){"outside"}, 1);
    refused(g, "block=0", (const char *[]){"outside 1..65536"}, 1);
    refused(g, "block=70000", (const char *[]){"outside"}, 1);
    refused(g, "damp=abc", (const char *[]){"not a number"}, 1);
    refused(g, "damp=nan", (const char *[]){"not a number"}, 1);
    refused(g, "damp=", (const char *[]){"not a number"}, 1);
    refused(g, "block=1.5", (const char *[]){"not an integer"}, 1);
    refused(g, "block=12abc", (const char *[]){"not an integer"}, 1);
    refused(g, "act_order=2", (const char *[]){"takes 0 or 1"}, 1);
    refused(g, "static_groups=0.5", (const char *[]){"takes 0 or 1"}, 1);
    refused(meth("smoothquant"), "alpha=1.5", (const char *[]){"smoothquant", "outside [0, 1]"}, 2);
    refused(meth("awq"), "grid=0", (const char *[]){"awq", "outside 1..1000"}, 2);
}

/* an enum option, on a method made here: the schema type exists for methods to come */
static const char *const k_modes[] = {"sym", "asym", "mse", NULL};
static const ql_opt_def k_enum_opts[] = {
    {"mode", QL_OPT_ENUM, 1, 0, 0, k_modes, "rounding mode"},
    {"bits", QL_OPT_INT, 4, 2, 8, NULL, "code width"},
};
static const ql_method k_enum_method = {.name = "toy", .summary = "", .caps = QL_CAP_PER_TENSOR,
                                        .opts = k_enum_opts, .n_opts = 2};

static void test_enum(void **state) {
    (void)state;
    ql_opt_values v;
    assert_int_equal(ql_method_parse_opts(&k_enum_method, NULL, &v), QL_OK);
    assert_int_equal(ql_opt_enum(&v, &k_enum_method, "mode"), 1);
    assert_int_equal(ql_method_parse_opts(&k_enum_method, "mode=MSE,bits=3", &v), QL_OK);
    assert_int_equal(ql_opt_enum(&v, &k_enum_method, "mode"), 2);
    assert_int_equal(ql_opt_int(&v, &k_enum_method, "bits"), 3);
    refused(&k_enum_method, "mode=round", (const char *[]){"not one of sym, asym, mse"}, 1);
    char line[256];
    ql_opt_describe(&k_enum_opts[0], line, sizeof line);
    assert_non_null(strstr(line, "mode=asym (sym|asym|mse)"));
}

static void test_shared_spec(void **state) {
    (void)state;
    const ql_method *ms[] = {meth("gptq"), meth("awq")};
    assert_int_equal(ql_method_check_opts(ms, 2, "damp=0.05,grid=10"), QL_OK);
    assert_int_equal(ql_method_check_opts(ms, 2, NULL), QL_OK);
    /* a key neither declares: refused, the names of both listed */
    assert_int_equal(ql_method_check_opts(ms, 2, "actorder=1"), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "did you mean 'act_order'"));
    assert_non_null(strstr(ql_last_error(), "grid"));
    assert_non_null(strstr(ql_last_error(), "damp"));
    /* a bad value for the method that declares it */
    assert_int_equal(ql_method_check_opts(ms, 2, "clip=2"), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "awq"));
    /* each method gets its own keys */
    ql_opt_values v;
    assert_int_equal(ql_method_parse_shared_opts(ms[0], "damp=0.05,grid=10", &v), QL_OK);
    assert_true(ql_opt_float(&v, ms[0], "damp") == 0.05);
    assert_int_equal(ql_method_parse_shared_opts(ms[1], "damp=0.05,grid=10", &v), QL_OK);
    assert_int_equal(ql_opt_int(&v, ms[1], "grid"), 10);
    /* a key both declare ("clip" is awq's only; "down" is awq's and smoothquant's) is checked by each */
    const ql_method *ms2[] = {meth("awq"), meth("smoothquant")};
    assert_int_equal(ql_method_check_opts(ms2, 2, "down=0,alpha=0.5"), QL_OK);
    assert_int_equal(ql_method_check_opts(ms2, 2, "down=3"), QL_ERR_ARG);
}

/* Every registry entry: capabilities agree with its hooks; option names unique; every default valid,
 * and "name=default" written back parses to the same value. */
static void test_registry_declarations(void **state) {
    (void)state;
    assert_true(ql_method_count() >= 4);
    for (int i = 0; i < ql_method_count(); i++) {
        const ql_method *m = ql_method_at(i);
        assert_non_null(m->name);
        assert_non_null(m->summary);
        assert_non_null(m->explain);
        assert_ptr_equal(ql_method_by_name(m->name), m);
        assert_int_equal(!!(m->caps & QL_CAP_PER_TENSOR), m->quantize_tensor != NULL);
        assert_int_equal(!!(m->caps & QL_CAP_LAYER_TRANSFORM), m->transform_layer != NULL);
        assert_true(m->n_opts >= 0 && m->n_opts <= QL_METHOD_MAX_OPTS);
        assert_true(m->n_opts == 0 || m->opts);
        char caps[128];
        ql_method_caps_str(m->caps, caps, sizeof caps);
        assert_true(caps[0]);
        for (int k = 0; k < m->n_opts; k++) {
            const ql_opt_def *d = &m->opts[k];
            assert_non_null(d->help);
            for (int k2 = 0; k2 < k; k2++) assert_string_not_equal(d->name, m->opts[k2].name);
            char spec[96];
            if (d->type == QL_OPT_ENUM) snprintf(spec, sizeof spec, "%s=%s", d->name, d->choices[(int)d->def]);
            else snprintf(spec, sizeof spec, "%s=%.17g", d->name, d->def);
            ql_opt_values v;
            if (ql_method_parse_opts(m, spec, &v))
                fprintf(stderr, "%s: default %s: %s\n", m->name, spec, ql_last_error());
            assert_int_equal(ql_method_parse_opts(m, spec, &v), QL_OK);
            assert_true(v.v[k] == d->def);
        }
    }
}

static void test_serves(void **state) {
    (void)state;
    const ql_method *g = meth("gptq"), *r = meth("rtn");
    char why[256];
    assert_true(ql_method_serves(g, fmt("q4_k"), why, sizeof why));
    assert_true(ql_method_serves(g, fmt("int4_g128"), why, sizeof why));
    assert_true(ql_method_serves(g, fmt("nf4"), why, sizeof why));
    assert_false(ql_method_serves(g, fmt("f16"), why, sizeof why));
    assert_non_null(strstr(why, "f16 has no code grid"));
    assert_false(ql_method_serves(g, fmt("nf4_dq"), why, sizeof why));
    assert_false(ql_method_serves(g, fmt("fp8_e4m3"), why, sizeof why));
    int n_rtn = 0, n_quant = 0, n_gptq = 0;
    for (int i = 0; i < ql_format_count(); i++) {
        const ql_format *f = ql_format_at(i);
        n_quant += f->quantize_rows != NULL;
        n_rtn += ql_method_serves(r, f, NULL, 0);
        n_gptq += ql_method_serves(g, f, NULL, 0);
        if (!f->quantize_rows) { /* decode-only formats: nobody writes them */
            assert_false(ql_method_serves(r, f, why, sizeof why));
            assert_non_null(strstr(why, "not encode"));
        }
    }
    assert_int_equal(n_rtn, n_quant);
    assert_true(n_gptq > 10 && n_gptq < n_quant);
}

/* Output error tr(ΔW H ΔWᵀ) of deq against w, H = XᵀX. */
static double out_err(const float *w, const float *deq, int64_t nr, int64_t nc, const double *H) {
    double e = 0;
    double *d = malloc((size_t)nc * sizeof(double));
    for (int64_t r = 0; r < nr; r++) {
        for (int64_t c = 0; c < nc; c++) d[c] = (double)w[r * nc + c] - deq[r * nc + c];
        for (int64_t i = 0; i < nc; i++)
            for (int64_t j = 0; j < nc; j++) e += d[i] * H[i * nc + j] * d[j];
    }
    free(d);
    return e;
}

static uint64_t g_rng = 88172645463325252ull;
static double uniform(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
static double normal(void) { return sqrt(-2.0 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform()); }

/* GPTQ into NF4 is real error feedback: not RTN's bytes, lower output error, bytes that decode to exactly
 * the values GPTQ chose; through the registry entry the same; a format without a grid is refused. Rows
 * of 160 leave a short last NF4 block (64 + 64 + 32). */
static void test_gptq_nf4(void **state) {
    (void)state;
    const int64_t nr = 48, nc = 160, nt = 1024;
    float *w = malloc((size_t)(nr * nc) * sizeof(float)), *wc = malloc((size_t)(nr * nc) * sizeof(float));
    double *X = malloc((size_t)(nt * nc) * sizeof(double)), *H = calloc((size_t)(nc * nc), sizeof(double));
    for (int64_t i = 0; i < nr * nc; i++) w[i] = (float)(0.02 * normal());
    for (int64_t t = 0; t < nt; t++) { /* correlated inputs with a few loud channels */
        double common = normal();
        for (int64_t c = 0; c < nc; c++) X[t * nc + c] = (normal() + 0.8 * common) * (c % 23 == 3 ? 6.0 : 1.0);
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)nc, (int)nt, 1.0, X, (int)nc, X, (int)nc, 0.0,
                H, (int)nc);
    ql_input_stats st = {.n = nc, .n_tokens = nt, .xtx = H};
    const ql_format *f = fmt("nf4");
    int64_t bytes = ql_format_tensor_bytes(f, nc, nr);
    uint8_t *qg = malloc((size_t)bytes), *qr = malloc((size_t)bytes), *qm = malloc((size_t)bytes);
    float *chosen = malloc((size_t)(nr * nc) * sizeof(float)), *dg = malloc((size_t)(nr * nc) * sizeof(float)),
          *dr = malloc((size_t)(nr * nc) * sizeof(float));
    ql_method_opts o = {.n_threads = 2};
    memcpy(wc, w, (size_t)(nr * nc) * sizeof(float));
    assert_int_equal(ql_gptq_quantize(wc, nr, nc, f, &st, &o, qg, chosen), QL_OK);
    assert_int_equal(ql_format_quantize(f, w, qr, nr, nc, NULL, 1), QL_OK);
    assert_int_equal(ql_format_dequantize(f, qg, dg, nr, nc, 1), QL_OK);
    assert_int_equal(ql_format_dequantize(f, qr, dr, nr, nc, 1), QL_OK);
    assert_memory_not_equal(qg, qr, (size_t)bytes);
    for (int64_t i = 0; i < nr * nc; i++) assert_true(dg[i] == chosen[i]);
    double eg = out_err(w, dg, nr, nc, H), er = out_err(w, dr, nr, nc, H);
    printf("  nf4 %lldx%lld: output error gptq %.4e, rtn %.4e (ratio %.3f)\n", (long long)nr, (long long)nc, eg, er,
           eg / er);
    assert_true(eg < 0.8 * er);
    /* the registry entry writes the same bytes */
    memcpy(wc, w, (size_t)(nr * nc) * sizeof(float));
    assert_int_equal(meth("gptq")->quantize_tensor(wc, nr, nc, f, &st, &o, qm), QL_OK);
    assert_memory_equal(qm, qg, (size_t)bytes);
    /* nf4_dq has no grid: refused, not rounded to nearest */
    const ql_format *fdq = fmt("nf4_dq");
    uint8_t *qd = malloc((size_t)ql_format_tensor_bytes(fdq, nc, nr));
    memcpy(wc, w, (size_t)(nr * nc) * sizeof(float));
    assert_int_equal(meth("gptq")->quantize_tensor(wc, nr, nc, fdq, &st, &o, qd), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "no code grid"));
    free(w), free(wc), free(X), free(H), free(qg), free(qr), free(qm), free(qd), free(chosen), free(dg), free(dr);
}

/* Sensitivity candidates go through the same check. */
static void test_sense_candidates(void **state) {
    (void)state;
    char **v = NULL;
    int n = 0;
    assert_int_equal(ql_sense_parse_candidates("nf4+gptq,q4_k+gptq", &v, &n), QL_OK);
    assert_int_equal(n, 2);
    ql_sense_free_strings(v, n);
    assert_int_not_equal(ql_sense_parse_candidates("nf4_dq+gptq", &v, &n), QL_OK);
    assert_non_null(strstr(ql_last_error(), "gptq cannot write nf4_dq"));
    assert_int_not_equal(ql_sense_parse_candidates("f16+gptq", &v, &n), QL_OK);
    assert_int_not_equal(ql_sense_parse_candidates("q4_0+awq", &v, &n), QL_OK);
    assert_non_null(strstr(ql_last_error(), "whole layers"));
    assert_int_not_equal(ql_sense_parse_candidates("q4_0+gtpq", &v, &n), QL_OK);
    assert_non_null(strstr(ql_last_error(), "did you mean 'gptq'"));
    /* a glob with +method keeps the formats the method can write: "*f16" (f16, bf16) has none */
    assert_int_not_equal(ql_sense_parse_candidates("*f16+gptq,q8_0+gptq", &v, &n), QL_OK);
    assert_non_null(strstr(ql_last_error(), "matches no format that gptq can write"));
    assert_int_equal(ql_sense_parse_candidates("nf4*+gptq", &v, &n), QL_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0], "nf4+gptq");
    ql_sense_free_strings(v, n);
    assert_int_equal(ql_sense_check_candidate("x", fmt("q4_k"), "gptq"), QL_OK);
    assert_int_equal(ql_sense_check_candidate("x", fmt("f16"), "gptq"), QL_ERR_ARG);
}

/* What --dry-run says each tensor really gets (ql_quant_method_for), and the driver refusing a plan
 * entry whose method cannot write its format. */
static void test_dry_run_truth(void **state) {
    (void)state;
    char path[512];
    if (!shared_path(path, sizeof path, "models/stories260K.gguf")) skip(); /* reported skipped, not passed */
    ql_model *m = NULL;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    ql_plan *p = NULL;
    assert_int_equal(ql_plan_single_format("nf4", m, &p), QL_OK);
    for (int i = 0; i < p->n; i++) {
        free(p->e[i].method);
        p->e[i].method = strdup("gptq");
    }
    char why[256];
    const ql_plan_entry *emb = ql_plan_find(p, "token_embd.weight"), *q = ql_plan_find(p, "blk.0.attn_q.weight");
    assert_non_null(emb);
    assert_non_null(q);
    /* statistics to be measured from calibration text: every linear, never the embedding */
    assert_ptr_equal(ql_quant_method_for(m, p, emb, NULL, true, why, sizeof why), meth("rtn"));
    assert_non_null(strstr(why, "looked up"));
    assert_ptr_equal(ql_quant_method_for(m, p, q, NULL, true, why, sizeof why), meth("gptq"));
    assert_string_equal(why, "");
    /* no statistics at all */
    assert_ptr_equal(ql_quant_method_for(m, p, q, NULL, false, why, sizeof why), meth("rtn"));
    assert_non_null(strstr(why, "--stats"));
    /* AWQ on the layer: gptq on a rescaled layer cannot use the old statistics */
    ql_plan_set(p, "blk.0.attn_k.weight", fmt("nf4"), "awq", NULL);
    assert_ptr_equal(ql_quant_method_for(m, p, q, NULL, true, why, sizeof why), meth("rtn"));
    assert_non_null(strstr(why, "awq rescales this layer"));
    /* the driver refuses a planned pair the method cannot write, before doing anything */
    ql_plan_set(p, "blk.0.attn_k.weight", fmt("nf4_dq"), "gptq", NULL);
    ql_quant_opts o = {.plan = p, .n_threads = 1};
    ql_quant_stats qs;
    assert_int_equal(ql_quantize_model(m, &o, "/nonexistent/dir/x.gguf", NULL, &qs), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "gptq cannot write nf4_dq"));
    /* and options no planned method declares */
    ql_plan_set(p, "blk.0.attn_k.weight", fmt("nf4"), "gptq", NULL);
    o.method_opts = "actorder=1";
    assert_int_equal(ql_quantize_model(m, &o, "/nonexistent/dir/x.gguf", NULL, &qs), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "act_order"));
    ql_plan_free(p);
    ql_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_values),
        cmocka_unit_test(test_unknown_and_misspelled),
        cmocka_unit_test(test_types_and_ranges),
        cmocka_unit_test(test_enum),
        cmocka_unit_test(test_shared_spec),
        cmocka_unit_test(test_registry_declarations),
        cmocka_unit_test(test_serves),
        cmocka_unit_test(test_gptq_nf4),
        cmocka_unit_test(test_sense_candidates),
        cmocka_unit_test(test_dry_run_truth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
