/* e2m1.h — the FP4 E2M1 code table and its nearest-code search, shared by the two microscaling
 * formats that store E2M1 codes (formats/fmt_mxfp4.c, formats/fmt_nvfp4.c). */
#ifndef QL_E2M1_H
#define QL_E2M1_H

#include <math.h>
#include <stdint.h>

/* E2M1 values doubled (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6 times 2), as ggml's kvalues_mxfp4: each
 * format's scale decode carries the matching factor 1/2, so products are the same floats ggml computes. */
static const int8_t ql_e2m1x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* The code whose value times d is nearest x; ties keep the lower index (ggml's best_index_mxfp4). */
static inline uint8_t ql_e2m1_nearest(float x, float d) {
    int best = 0;
    float best_err = fabsf(ql_e2m1x2[0] * d - x);
    for (int i = 1; i < 16; i++) {
        float err = fabsf(ql_e2m1x2[i] * d - x);
        if (err < best_err) best = i, best_err = err;
    }
    return (uint8_t)best;
}

#endif
