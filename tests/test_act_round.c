/* test_act_round.c — kernels/act_round.c: the AVX2 twin of llama.cpp's activation rounding equals the scalar
 * reference bit for bit (F16, BF16, Q8_0, Q8_1, Q8_K) on random blocks and on adversarial ones: zeros, -0,
 * NaN, infinities, huge and subnormal values, exact ties of the rounding, the largest |x| twice with opposite
 * signs; out of place and in place. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/act_round.h"
#include "kernels/ggml_types.h"
#include "kernels/simd.h"

enum { N = 256 * 24 };

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float rnd_gauss(void) {
    double s = 0;
    for (int k = 0; k < 4; k++) {
        g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
        s += (double)(g_rng >> 11) / 9007199254740992.0 - 0.5;
    }
    return (float)s;
}

/* block k (of 256 values) gets kind k % 12 */
static void fill(float *x) {
    for (int b = 0; b < N / 256; b++) {
        float *v = x + 256 * b;
        for (int j = 0; j < 256; j++) v[j] = rnd_gauss();
        switch (b % 12) {
        case 0: break;
        case 1: for (int j = 0; j < 256; j++) v[j] = 0.0f; break;
        case 2: for (int j = 0; j < 256; j++) v[j] = -0.0f; break;
        case 3: for (int j = 0; j < 256; j += 7) v[j] = NAN; break;
        case 4: v[5] = INFINITY; v[40] = -INFINITY; break;
        case 5: for (int j = 0; j < 256; j++) v[j] *= 1e38f; break;
        case 6: for (int j = 0; j < 256; j++) v[j] *= 1e-40f; break;
        case 7: /* the largest |x| twice, the negative first: its sign is the scale's */
            for (int j = 0; j < 256; j++) v[j] *= 0.5f;
            v[3] = -4.0f, v[5] = 4.0f, v[200] = 4.0f; /* two in one 8-lane vector, one in another */
            break;
        case 8: /* ties of x * 127/amax: half-integers of the code grid */
            v[0] = 127.0f;
            for (int j = 1; j < 256; j++) v[j] = (float)((int)(rnd_gauss() * 200) % 127) + 0.5f;
            break;
        case 9: for (int j = 0; j < 256; j++) v[j] = NAN; break;
        case 10: for (int j = 0; j < 256; j++) v[j] = (j % 32 == 0) ? 3.0f : 0.0f; break;
        case 11: v[255] = -1e30f; v[17] = NAN; break;
        }
    }
}

static void test_twin(void **state) {
    (void)state;
    static const uint32_t acts[] = {QL_TYPE_Q8_K, QL_TYPE_Q8_0, QL_TYPE_Q8_1, QL_TYPE_F16, QL_TYPE_BF16};
    float *x = malloc(N * sizeof *x), *want = malloc(N * sizeof *want), *got = malloc(N * sizeof *got);
    fill(x);
    const ql_simd_level saved = ql_simd_level_get();
    for (int lv = QL_SIMD_REF; lv <= (int)ql_simd_detect(); lv++) {
        ql_simd_set_level((ql_simd_level)lv);
        for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
            ql_act_round_ref(acts[a], x, want, N);
            ql_act_round(acts[a], x, got, N);
            for (int i = 0; i < N; i++)
                if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
                    fail_msg("level %s, act type %u, value %d (block kind %d): x %a, ref %a, twin %a",
                             ql_simd_level_name((ql_simd_level)lv), acts[a], i, (i / 256) % 12, (double)x[i],
                             (double)want[i], (double)got[i]);
            memcpy(got, x, N * sizeof *got); /* in place, as the CPU backend rounds attention queries */
            ql_act_round(acts[a], got, got, N);
            assert_memory_equal(got, want, N * sizeof *got);
        }
    }
    ql_simd_set_level(saved);
    /* the reference itself: a Q8_K block whose largest |x| comes first as -4 rounds with a negative scale
     * (codes of +4 cap at 127: d * 127 = -4 * 127/127 ... the value -4 maps back to -4 exactly) */
    float b[256] = {0}, y[256];
    b[0] = -4.0f, b[1] = 4.0f, b[2] = 1.0f;
    ql_act_round_ref(QL_TYPE_Q8_K, b, y, 256);
    assert_true(y[0] == -4.0f && y[1] == 4.0f && y[3] == 0.0f);
    free(x), free(want), free(got);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_twin)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
