/* test_synth_logits.h — what the tests that compare a model's logits with llama.cpp's share (test_moe.c,
 * test_arch_synth.c, test_arch.c): the 32 token ids llama_logits.c was given, writing and loading a `qlab synth`
 * test model once per test process, reading a reference logits file, one forward pass, the largest difference,
 * a llama.cpp mix's plan. */
#ifndef QL_TEST_SYNTH_LOGITS_H
#define QL_TEST_SYNTH_LOGITS_H

#include "core/infer.h"
#include "core/model.h"
#include "core/synth.h"
#include "pipeline/plan.h"
#include "presets/preset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

enum { QL_TEST_N_TOK = 32, QL_TEST_N_VOCAB = 512 };
/* the token ids of ../shared/testdata/arch-variants/tokens.txt, which tests/data/moe/llama_logits.c was given */
static const int32_t QL_TEST_TOKENS[QL_TEST_N_TOK] = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                                      315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410,
                                                      408, 419, 292, 411, 322, 265, 282, 295, 433, 426};

/* /tmp/qlab_test_TAG_PID_SHAPE.gguf: one file per test process and shape */
static inline void ql_test_synth_path(char *buf, size_t cap, const char *tag, const char *shape) {
    snprintf(buf, cap, "/tmp/qlab_test_%s_%d_%s.gguf", tag, (int)getpid(), shape);
}

/* The synth shape's model (seed 1), written on first use. */
static inline ql_model *ql_test_synth_model(const char *tag, const char *shape) {
    char p[256];
    ql_test_synth_path(p, sizeof p, tag, shape);
    if (access(p, R_OK) != 0) assert_int_equal(ql_synth_write(ql_synth_find(shape), 1, p, 1, NULL), QL_OK);
    ql_model *m = NULL;
    assert_int_equal(ql_model_load(p, &m), QL_OK);
    return m;
}

/* DIR/logits-NAME.f32: QL_TEST_N_TOK x QL_TEST_N_VOCAB floats */
static inline void ql_test_read_logits(const char *dir, const char *name, float *ref) {
    char p[256];
    snprintf(p, sizeof p, "%s/logits-%s.f32", dir, name);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    assert_int_equal(fread(ref, sizeof(float), QL_TEST_N_TOK * QL_TEST_N_VOCAB, f), QL_TEST_N_TOK * QL_TEST_N_VOCAB);
    fclose(f);
}

/* The logits of every position for n tokens, one thread, in a scratch (the pass's context) of n_ctx >= n. */
static inline void ql_test_run_ctx(const ql_model *m, const int32_t *tok, int n, int n_ctx, float *logits) {
    ql_infer *inf;
    assert_int_equal(ql_infer_new(m, 1, &inf), QL_OK);
    ql_scratch *s = ql_scratch_new(inf, n_ctx);
    assert_non_null(s);
    assert_int_equal(ql_forward(inf, s, tok, n, 0, logits), QL_OK);
    ql_scratch_free(s);
    ql_infer_free(inf);
}

static inline void ql_test_run_tokens(const ql_model *m, const int32_t *tok, int n, float *logits) {
    ql_test_run_ctx(m, tok, n, n, logits);
}

/* ... for QL_TEST_TOKENS */
static inline void ql_test_run(const ql_model *m, float *logits) {
    ql_test_run_tokens(m, QL_TEST_TOKENS, QL_TEST_N_TOK, logits);
}

/* llama.cpp's mix `preset` resolved over m (a plan the caller frees) */
static inline ql_plan *ql_test_preset_plan(const ql_model *m, const char *preset) {
    ql_preset *p = NULL;
    assert_int_equal(ql_preset_load(preset, &p), QL_OK);
    ql_plan *plan = NULL;
    assert_int_equal(ql_preset_resolve(p, m, false, &plan), QL_OK);
    ql_preset_free(p);
    return plan;
}

static inline float ql_test_max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* m's logits for QL_TEST_TOKENS against DIR/logits-NAME.f32: the largest difference printed and within tol (on
 * failure every row's, to show where it starts). */
static inline void ql_test_expect_logits(const ql_model *m, const char *dir, const char *name, float tol) {
    const size_t n = (size_t)QL_TEST_N_TOK * QL_TEST_N_VOCAB;
    float *got = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    ql_test_read_logits(dir, name, ref);
    ql_test_run(m, got);
    const float d = ql_test_max_diff(got, ref, n);
    printf("  %-16s max |qlab - llama.cpp| = %.3g\n", name, d);
    for (int r = 0; r < QL_TEST_N_TOK && !(d <= tol); r++)
        printf("    row %d: %.3g\n", r,
               ql_test_max_diff(got + (size_t)r * QL_TEST_N_VOCAB, ref + (size_t)r * QL_TEST_N_VOCAB, QL_TEST_N_VOCAB));
    free(got);
    free(ref);
    if (!(d <= tol)) fail_msg("%s: logits differ from llama.cpp by %g", name, d);
}

#endif
