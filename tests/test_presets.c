/* test_presets.c — every llama.cpp mix, resolved by qlab's rule tables on stories260K, gives exactly
 * the per-tensor types llama.cpp's quantize tool chose (testdata/llamacpp-mixes/ TSV files), including its
 * fallbacks for rows that fit no block; plus plan INI round trips and rule-syntax errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "presets/preset.h"
#include "tests/test_util.h"

static const char *MIXES[] = {"Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M",
                              "Q5_0", "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_NL", "IQ4_XS", "F16", "BF16"};

static int compare_mix(ql_model *m, const char *mix, const char *tsv_suffix, bool imatrix) {
    char rel[256], path[512];
    snprintf(rel, sizeof rel, "testdata/llamacpp-mixes/stories260K-%s%s.tsv", mix, tsv_suffix);
    /* a missing reference table fails inside shared_path (it used to return -1: one mismatch fewer) */
    if (!shared_path(path, sizeof path, rel)) skip();
    ql_preset *p;
    assert_int_equal(ql_preset_load(mix, &p), QL_OK);
    ql_plan *plan;
    assert_int_equal(ql_preset_resolve(p, m, imatrix, &plan), QL_OK);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512], name[256], type[32];
    int mismatches = 0, rows = 0;
    assert_non_null(fgets(line, sizeof line, f)); /* header */
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%255s %31s", name, type) != 2) continue;
        rows++;
        const ql_plan_entry *e = ql_plan_find(plan, name);
        const char *got;
        if (e) got = e->format->name;
        else {
            int64_t i = ql_gguf_find_tensor(m->gguf, name);
            assert_true(i >= 0);
            got = ql_type_get(m->gguf->tensors[i].type)->name;
        }
        if (strcasecmp(got, type) != 0) {
            printf("%s%s: %s: qlab %s, llama.cpp %s\n", mix, tsv_suffix, name, got, type);
            mismatches++;
        }
    }
    fclose(f);
    assert_int_equal(rows, 48);
    ql_plan_free(plan);
    ql_preset_free(p);
    return mismatches;
}

static void test_mixes_match_llamacpp(void **state) {
    (void)state;
    char model[512];
    if (!shared_path(model, sizeof model, "models/stories260K.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    int bad = 0;
    for (size_t i = 0; i < sizeof MIXES / sizeof *MIXES; i++) bad += compare_mix(m, MIXES[i], "", false);
    const char *imat[] = {"Q2_K", "Q3_K_M", "Q4_K_M"};
    for (size_t i = 0; i < 3; i++) bad += compare_mix(m, imat[i], "-imat-ts", true);
    printf("%zu mixes (+3 with imatrix) compared, %d tensor types differ\n", sizeof MIXES / sizeof *MIXES, bad);
    assert_int_equal(bad, 0);
    ql_model_free(m);
}

/* The same rules on a model whose rows fit 256-blocks: no fallbacks, and the layer-position rules act. */
static void test_rules_on_wide_model(void **state) {
    (void)state;
    char model[512];
    if (!shared_path(model, sizeof model, "models/tinystories-d256.gguf")) skip();
    ql_model *m;
    assert_int_equal(ql_model_load(model, &m), QL_OK);
    ql_preset *p;
    assert_int_equal(ql_preset_load("q4_k_m", &p), QL_OK);
    ql_plan *plan;
    assert_int_equal(ql_preset_resolve(p, m, false, &plan), QL_OK);
    /* 4 layers: use_more_bits(i, 4) is true for i = 0 (i < n/8 = 0? no), 3 (>= 7*4/8 = 3), and (i-0)%3 == 2 → i = 2 */
    assert_string_equal(ql_plan_find(plan, "blk.0.attn_v.weight")->format->name, "q4_k");
    assert_string_equal(ql_plan_find(plan, "blk.2.attn_v.weight")->format->name, "q6_k");
    assert_string_equal(ql_plan_find(plan, "blk.3.ffn_down.weight")->format->name, "q6_k");
    assert_string_equal(ql_plan_find(plan, "blk.1.ffn_down.weight")->format->name, "q4_k");
    assert_string_equal(ql_plan_find(plan, "output.weight")->format->name, "q6_k");
    assert_string_equal(ql_plan_find(plan, "token_embd.weight")->format->name, "q4_k");
    for (int i = 0; i < plan->n; i++) assert_null(plan->e[i].note);
    /* llama.cpp's d256 table: Q4_K_M is 25 q4_K + 5 q6_K over the 30 matrices */
    int q6 = 0;
    for (int i = 0; i < plan->n; i++) q6 += !strcmp(plan->e[i].format->name, "q6_k");
    assert_int_equal(plan->n, 30);
    assert_int_equal(q6, 5);
    /* save, load back: the same plan */
    char tmp[] = "/tmp/qlab-plan-XXXXXX";
    int fd = mkstemp(tmp);
    close(fd);
    assert_int_equal(ql_plan_save(plan, model, tmp), QL_OK);
    ql_plan *back;
    assert_int_equal(ql_plan_load(tmp, &back), QL_OK);
    assert_int_equal(back->n, plan->n);
    for (int i = 0; i < plan->n; i++)
        assert_ptr_equal(ql_plan_find(back, plan->e[i].tensor)->format, plan->e[i].format);
    unlink(tmp);
    ql_plan_free(back);
    ql_plan_free(plan);
    ql_preset_free(p);
    /* negated conditions: IQ3_XS gives ffn_gate IQ3_XXS for n/8 <= layer < 7n/8 (layers 0-2 of 4), IQ3_S after */
    assert_int_equal(ql_preset_load("IQ3_XS", &p), QL_OK);
    assert_int_equal(ql_preset_resolve(p, m, true, &plan), QL_OK);
    assert_string_equal(ql_plan_find(plan, "blk.0.ffn_gate.weight")->format->name, "iq3_xxs");
    assert_string_equal(ql_plan_find(plan, "blk.2.ffn_up.weight")->format->name, "iq3_xxs");
    assert_string_equal(ql_plan_find(plan, "blk.3.ffn_gate.weight")->format->name, "iq3_s");
    assert_string_equal(ql_plan_find(plan, "blk.3.ffn_down.weight")->format->name, "iq3_s");
    assert_string_equal(ql_plan_find(plan, "blk.1.attn_q.weight")->format->name, "iq3_xxs");
    assert_string_equal(ql_plan_find(plan, "output.weight")->format->name, "q6_k");
    ql_plan_free(plan);
    ql_preset_free(p);
    /* IQ3_XXS reads the imatrix condition: attn_v IQ3_S and ffn_down Q4_K/Q3_K without one */
    assert_int_equal(ql_preset_load("IQ3_XXS", &p), QL_OK);
    assert_int_equal(ql_preset_resolve(p, m, false, &plan), QL_OK);
    assert_string_equal(ql_plan_find(plan, "blk.1.attn_v.weight")->format->name, "iq3_s");
    assert_string_equal(ql_plan_find(plan, "blk.1.ffn_down.weight")->format->name, "q3_k");
    assert_string_equal(ql_plan_find(plan, "output.weight")->format->name, "q5_k");
    ql_plan_free(plan);
    assert_int_equal(ql_preset_resolve(p, m, true, &plan), QL_OK);
    assert_string_equal(ql_plan_find(plan, "blk.1.attn_v.weight")->format->name, "iq3_xxs");
    assert_string_equal(ql_plan_find(plan, "blk.1.ffn_down.weight")->format->name, "iq3_xxs");
    ql_plan_free(plan);
    ql_preset_free(p);
    /* a zero or malformed divisor is a syntax error naming the rule, not a division by zero (fuzz_preset) */
    const char *bad[] = {"layer<n/0", "layer<7*n/0", "layer<n/", "layer<n/x", "layer>99999999999", "layer<-3*n/2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[160];
        snprintf(text, sizeof text, "[preset]\ndefault = q8_0\n[rules]\nffn_up@%s = q4_0\n", bad[i]);
        assert_int_equal(ql_preset_parse(text, "div.ini", &p), QL_OK);
        assert_int_equal(ql_preset_resolve(p, m, false, &plan), QL_ERR_FORMAT);
        assert_non_null(strstr(ql_last_error(), "unknown condition"));
        ql_preset_free(p);
    }
    ql_model_free(m);
}

static void test_bad_presets(void **state) {
    (void)state;
    ql_preset *p;
    assert_int_equal(ql_preset_parse("[preset]\nname = x\n", "nodefault.ini", &p), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "nodefault.ini"));
    assert_int_equal(ql_preset_parse("[preset]\ndefault = q9_x\n", "badfmt.ini", &p), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "q9_x"));
    assert_int_equal(ql_preset_parse("[preset]\ndefault = q4_0\n[rules]\nattn_v = nope\n", "badrule.ini", &p), QL_ERR_FORMAT);
    assert_int_equal(ql_preset_parse("[weird]\na = b\n", "section.ini", &p), QL_ERR_FORMAT);
    assert_int_equal(ql_preset_load("NOT_A_PRESET", &p), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "Q4_K_M")); /* the message lists what exists */
    /* a plan that is not a plan file is an error, not an empty plan (that would write an unquantized copy) */
    ql_plan *plan;
    char dir[] = "/tmp/qlab-plandir-XXXXXX", empty[64];
    assert_non_null(mkdtemp(dir));
    assert_int_equal(ql_plan_load(dir, &plan), QL_ERR_ARG);
    assert_non_null(strstr(ql_last_error(), "folder"));
    snprintf(empty, sizeof empty, "%s/empty.ini", dir);
    fclose(fopen(empty, "w"));
    assert_int_equal(ql_plan_load(empty, &plan), QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "empty.ini"));
    unlink(empty);
    rmdir(dir);
    /* every built-in preset parses */
    for (int i = 0; i < ql_preset_builtin_count(); i++) {
        assert_int_equal(ql_preset_load(ql_preset_builtin_name(i), &p), QL_OK);
        ql_preset_free(p);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixes_match_llamacpp),
        cmocka_unit_test(test_rules_on_wide_model),
        cmocka_unit_test(test_bad_presets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
