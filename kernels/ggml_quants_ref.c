/* ggml_quants_ref.c — scalar reference quantizers/dequantizers for ggml block formats.
 * Written to reproduce ggml-quants.c (llama.cpp 34af94cd) bit for bit: the same float (not double)
 * arithmetic in the same order, nearest_int via the 1.5*2^23 trick, fp16 rounding to nearest even.
 * Keep it that way: any reordering of a sum or product here breaks bit-exactness with ggml files.
 * Needs -ffp-contract=off (implied by -std=c11 with gcc) and a little-endian host. Pure, thread-safe. */
#include "kernels/ggml_quants.h"

#include <math.h>
#include <float.h>
#include <string.h>

#include "base/ql_common.h"
#include "kernels/ggml_types.h"
#include "kernels/ggml_quants_internal.h"
#include "kernels/iq_tables.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif

#define FP16_TO_FP32(h) ql_fp16_to_fp32(h)
#define FP32_TO_FP16(f) ql_fp32_to_fp16(f)

/* ------------------------------------------------------------------------------------------------
 * Helpers shared by the searches (same arithmetic as ggml's static helpers).
 * ---------------------------------------------------------------------------------------------- */

/* Index of the table value nearest to x in the sorted table val[n] (n a power of two); ties go up. */
static inline int best_index_int8(int n, const int8_t *val, float x) {
    const float x2 = x + x;
    int idx = 0;
    for (int step = n >> 1; step > 0; step >>= 1) {
        const int j = idx + step;
        idx = (x2 >= (float)(val[j - 1] + val[j])) ? j : idx;
    }
    return idx;
}

/* Symmetric scale search: L[i] in [0, 2*nmax), x ~ scale*(L - nmax). rmse_type 1 with weights qw
 * (or x^2 when qw is NULL) is the only mode ggml's K-quants and legacy imatrix paths use. */
float ql_ggml_make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            L[i] = (int8_t)(nmax + QMAX(-nmax, QMIN(nmax - 1, l)));
        }
        return 1 / iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = true;
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = QMAX(-nmax, QMIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = qw               ? qw[i]
                  : rmse_type == 1 ? x[i] * x[i]
                  : rmse_type == 2 ? 1
                  : rmse_type == 3 ? fabsf(x[i])
                                   : sqrtf(fabsf(x[i]));
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = QMAX(-nmax, QMIN(nmax - 1, l));
            float w = qw               ? qw[i]
                      : rmse_type == 1 ? x[i] * x[i]
                      : rmse_type == 2 ? 1
                      : rmse_type == 3 ? fabsf(x[i])
                                       : sqrtf(fabsf(x[i]));
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + QMAX(-nmax, QMIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's no-imatrix search: x^2-weighted RMSE with coordinate-descent refinement of single levels. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L, bool do_rmse) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (do_rmse) {
        float sumlx = 0;
        float suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = QMAX(-nmax, QMIN(nmax - 1, l));
            L[i] = (int8_t)l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; ++itry) {
            int n_changed = 0;
            for (int i = 0; i < n; ++i) {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int new_l = nearest_int(x[i] * sl2 / slx);
                    new_l = QMAX(-nmax, QMIN(nmax - 1, new_l));
                    if (new_l != L[i]) {
                        slx += w * x[i] * new_l;
                        sl2 += w * new_l * new_l;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = (int8_t)new_l;
                            sumlx = slx;
                            suml2 = sl2;
                            ++n_changed;
                        }
                    }
                }
            }
            if (!n_changed) break;
        }
        for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = QMAX(-nmax, QMIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
    }
    return 1 / iscale;
}

/* Asymmetric (scale, min) search used by Q2_K/Q4_K/Q5_K without imatrix: x ~ scale*L - the_min. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                              bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)QMAX(0, QMIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = QMAX(0, QMIN(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* The imatrix variant (weights NULL means x^2); also used by Q4_1/Q5_1 with imatrix. */
static float make_qkx3_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                              bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights ? weights[0] : x[0] * x[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights ? weights[i] : x[i] * x[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max <= min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_mad = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)QMAX(0, QMIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights ? weights[i] : x[i] * x[i];
        best_mad += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            /* min moves to the best fit so far, so v may be out of nearest_int's range: clamp first */
            const float v = iscale * (x[i] - min);
            const int l = v > 0 ? nearest_int(QMIN(v, (float)nmax)) : 0;
            Laux[i] = (uint8_t)l;
            float w = weights ? weights[i] : x[i] * x[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights ? weights[i] : x[i] * x[i];
                mad += w * diff;
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Non-negative values (sub-block scales or mins) onto 0..nmax with weights: the imatrix K-quants. */
float ql_ggml_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *quant_weights) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = QMAX(max, x[i]);
    if (max < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)nearest_int(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        float w = quant_weights[i];
        best_mse += w * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale_is * x[i]);
            l = QMIN(nmax, l);
            float diff = x[i] - scale_is * l;
            float w = quant_weights[i];
            mse += w * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = QMIN(nmax, l);
        L[i] = (uint8_t)l;
        float w = quant_weights[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = quant_weights[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = nearest_int(x[i] * sl2 / slx);
                new_l = QMIN(nmax, new_l);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Weighted row variance term shared by the legacy imatrix quantizers: sum(x^2)/n over the row. */
float ql_ggml_row_sigma2(const float *x, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

/* ------------------------------------------------------------------------------------------------
 * F16 / BF16
 * ---------------------------------------------------------------------------------------------- */
void ql_quantize_row_f16_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; ++i) y[i] = FP32_TO_FP16(x[i]);
}

void ql_quantize_row_bf16_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; ++i) y[i] = ql_fp32_to_bf16(x[i]);
}

void ql_dequantize_row_f16_ref(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; ++i) y[i] = FP16_TO_FP32(x[i]);
}

void ql_dequantize_row_bf16_ref(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; ++i) y[i] = ql_bf16_to_fp32(x[i]);
}

/* ------------------------------------------------------------------------------------------------
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32)
 * ---------------------------------------------------------------------------------------------- */
static void q4_0_rtn(const float *x, blk_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = xb[j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = FP32_TO_FP16(d);
        for (int j = 0; j < 16; ++j) {
            const float x0 = xb[j] * id;
            const float x1 = xb[16 + j] * id;
            const int xi0 = QMIN(15, (int8_t)(int)(x0 + 8.5f));
            const int xi1 = QMIN(15, (int8_t)(int)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

void ql_quantize_row_q4_0_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q4_0 *y = vy;
    const int64_t nb = n / 32;
    if (!imatrix) {
        q4_0_rtn(x, y, nb);
        return;
    }
    const float sigma2 = ql_ggml_row_sigma2(x, n);
    float weight[32];
    int8_t L[32];
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + 32 * ib, *qw = imatrix + 32 * ib;
        for (int j = 0; j < 32; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
        float d = ql_ggml_make_qx_quants(32, 8, xb, L, 1, weight);
        y[ib].d = FP32_TO_FP16(d);
        for (int j = 0; j < 16; ++j) y[ib].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

static void q4_1_rtn(const float *x, blk_q4_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = FP32_TO_FP16(d);
        y[i].m = FP32_TO_FP16(min);
        for (int j = 0; j < 16; ++j) {
            const float x0 = (xb[j] - min) * id;
            const float x1 = (xb[16 + j] - min) * id;
            const int xi0 = QMIN(15, (int8_t)(int)(x0 + 0.5f));
            const int xi1 = QMIN(15, (int8_t)(int)(x1 + 0.5f));
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

void ql_quantize_row_q4_1_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q4_1 *y = vy;
    const int64_t nb = n / 32;
    if (!imatrix) {
        q4_1_rtn(x, y, nb);
        return;
    }
    const float sigma2 = ql_ggml_row_sigma2(x, n);
    float weight[32];
    uint8_t L[32], Laux[32];
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + 32 * ib, *qw = imatrix + 32 * ib;
        for (int j = 0; j < 32; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
        float min;
        float d = make_qkx3_quants(32, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
        y[ib].d = FP32_TO_FP16(d);
        y[ib].m = FP32_TO_FP16(-min);
        for (int j = 0; j < 16; ++j) y[ib].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

static void q5_0_rtn(const float *x, blk_q5_0 *y, int64_t nb) {
    uint8_t L[32];
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = xb[j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = FP32_TO_FP16(d);
        for (int j = 0; j < 32; ++j) L[j] = (uint8_t)QMIN(31, (int8_t)(int)(xb[j] * id + 16.5f));
        pack_q5(L, y[i].qs, y[i].qh);
    }
}

void ql_quantize_row_q5_0_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q5_0 *y = vy;
    const int64_t nb = n / 32;
    if (!imatrix) {
        q5_0_rtn(x, y, nb);
        return;
    }
    const float sigma2 = ql_ggml_row_sigma2(x, n);
    float weight[32];
    int8_t L[32];
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + 32 * ib, *qw = imatrix + 32 * ib;
        for (int j = 0; j < 32; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
        float d = ql_ggml_make_qx_quants(32, 16, xb, L, 1, weight);
        y[ib].d = FP32_TO_FP16(d);
        pack_q5((const uint8_t *)L, y[ib].qs, y[ib].qh);
    }
}

static void q5_1_rtn(const float *x, blk_q5_1 *y, int64_t nb) {
    uint8_t L[32];
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = FP32_TO_FP16(d);
        y[i].m = FP32_TO_FP16(min);
        for (int j = 0; j < 32; ++j) L[j] = (uint8_t)(int)((xb[j] - min) * id + 0.5f);
        pack_q5(L, y[i].qs, y[i].qh);
    }
}

void ql_quantize_row_q5_1_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q5_1 *y = vy;
    const int64_t nb = n / 32;
    if (!imatrix) {
        q5_1_rtn(x, y, nb);
        return;
    }
    const float sigma2 = ql_ggml_row_sigma2(x, n);
    float weight[32];
    uint8_t L[32], Laux[32];
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + 32 * ib, *qw = imatrix + 32 * ib;
        for (int j = 0; j < 32; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
        float min;
        float d = make_qkx3_quants(32, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
        y[ib].d = FP32_TO_FP16(d);
        y[ib].m = FP32_TO_FP16(-min);
        pack_q5(L, y[ib].qs, y[ib].qh);
    }
}

void ql_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    blk_q8_0 *y = vy;
    const int64_t nb = n / 32;
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = QMAX(amax, fabsf(xb[j]));
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = FP32_TO_FP16(d);
        for (int j = 0; j < 32; ++j) y[i].qs[j] = (int8_t)roundf(xb[j] * id);
    }
}

void ql_dequantize_row_q4_0_ref(const void *vx, float *y, int64_t n) {
    const blk_q4_0 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        for (int j = 0; j < 16; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[i * 32 + j] = x0 * d;
            y[i * 32 + j + 16] = x1 * d;
        }
    }
}

void ql_dequantize_row_q4_1_ref(const void *vx, float *y, int64_t n) {
    const blk_q4_1 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = FP16_TO_FP32(x[i].d), m = FP16_TO_FP32(x[i].m);
        for (int j = 0; j < 16; ++j) {
            const int x0 = x[i].qs[j] & 0x0F;
            const int x1 = x[i].qs[j] >> 4;
            y[i * 32 + j] = x0 * d + m;
            y[i * 32 + j + 16] = x1 * d + m;
        }
    }
}

void ql_dequantize_row_q5_0_ref(const void *vx, float *y, int64_t n) {
    const blk_q5_0 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
            const int xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
            const int xh_1 = ((qh >> (j + 12))) & 0x10;
            const int32_t x0 = ((x[i].qs[j] & 0x0F) | xh_0) - 16;
            const int32_t x1 = ((x[i].qs[j] >> 4) | xh_1) - 16;
            y[i * 32 + j] = x0 * d;
            y[i * 32 + j + 16] = x1 * d;
        }
    }
}

void ql_dequantize_row_q5_1_ref(const void *vx, float *y, int64_t n) {
    const blk_q5_1 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = FP16_TO_FP32(x[i].d), m = FP16_TO_FP32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
            const int xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
            const int xh_1 = ((qh >> (j + 12))) & 0x10;
            const int x0 = (x[i].qs[j] & 0x0F) | xh_0;
            const int x1 = (x[i].qs[j] >> 4) | xh_1;
            y[i * 32 + j] = x0 * d + m;
            y[i * 32 + j + 16] = x1 * d + m;
        }
    }
}

void ql_dequantize_row_q8_0_ref(const void *vx, float *y, int64_t n) {
    const blk_q8_0 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        for (int j = 0; j < 32; ++j) y[i * 32 + j] = x[i].qs[j] * d;
    }
}

void ql_dequantize_row_q8_1_ref(const void *vx, float *y, int64_t n) {
    const blk_q8_1 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        for (int j = 0; j < 32; ++j) y[i * 32 + j] = x[i].qs[j] * d;
    }
}

/* ------------------------------------------------------------------------------------------------
 * K-quants (super-blocks of 256)
 * ---------------------------------------------------------------------------------------------- */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] =
                (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

/* Q2_K: 4-bit scale and min per 16 from the 16 sub-block searches (q2_K_rtn / q2_K_imat). */
void ql_ggml_q2_K_pack_scales(const float *scales, const float *mins, const float *sw, bool imat,
                              blk_q2_K *y) {
    if (imat) {
        uint8_t Ls[QK_K / 16], Lm[QK_K / 16];
        float dm = ql_ggml_make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
        float mm = ql_ggml_make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
        y->d = FP32_TO_FP16(dm);
        y->dmin = FP32_TO_FP16(mm);
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
        return;
    }
    const float q4scale = 15.f;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
        float iscale = q4scale / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
        y->d = FP32_TO_FP16(max_scale / q4scale);
    } else {
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = 0;
        y->d = FP32_TO_FP16(0.f);
    }
    if (max_min > 0) {
        float iscale = q4scale / max_min;
        for (int j = 0; j < QK_K / 16; ++j) {
            int l = nearest_int(iscale * mins[j]);
            y->scales[j] |= (uint8_t)((unsigned)l << 4); /* same bits as ggml, no UB for NaN input */
        }
        y->dmin = FP32_TO_FP16(max_min / q4scale);
    } else {
        y->dmin = FP32_TO_FP16(0.f);
    }
}

static void q2_K_rtn(const float *x, blk_q2_K *y, int64_t nb) {
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++) {
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f,
                                         15, true);
        }
        ql_ggml_q2_K_pack_scales(scales, mins, NULL, false, &y[i]);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = FP16_TO_FP32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = FP16_TO_FP32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)QMAX(0, QMIN(3, l));
            }
        }
        pack_2bit(L, y[i].qs);
        x += QK_K;
    }
}

static void q2_K_imat(const float *x, blk_q2_K *y, int64_t nb, const float *quant_weights) {
    uint8_t L[QK_K], Laux[16];
    float mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16], weight[16];
    for (int64_t i = 0; i < nb; i++) {
        memset(sw, 0, sizeof(sw));
        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
        float sigma2 = sumx2 / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float *qw = quant_weights + QK_K * i + 16 * j;
            for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
            for (int l = 0; l < 16; ++l) sw[j] += weight[l];
            scales[j] = make_qkx3_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f,
                                         36, false);
        }
        ql_ggml_q2_K_pack_scales(scales, mins, sw, true, &y[i]);
        const float dm = FP16_TO_FP32(y[i].d);
        const float mm = FP16_TO_FP32(y[i].dmin);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = dm * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float m = mm * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int((x[16 * j + ii] + m) / d);
                L[16 * j + ii] = (uint8_t)QMAX(0, QMIN(3, l));
            }
        }
        pack_2bit(L, y[i].qs);
        x += QK_K;
    }
}

void ql_quantize_row_q2_K_ref(const float *x, void *y, int64_t n, const float *imatrix) {
    if (imatrix)
        q2_K_imat(x, y, n / QK_K, imatrix);
    else
        q2_K_rtn(x, y, n / QK_K);
}

void ql_dequantize_row_q2_K_ref(const void *vx, float *y, int64_t n) {
    const blk_q2_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        const float min = FP16_TO_FP32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                uint8_t sc = x[i].scales[is++];
                float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l] >> shift) & 3)) - ml;
                sc = x[i].scales[is++];
                dl = d * (sc & 0xF);
                ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3)) - ml;
                shift += 2;
            }
            q += 32;
        }
    }
}

/* Shared tail of both Q3_K quantizers: re-quantize against the stored 6-bit scales, then pack. */
static void q3_K_finish(const float *x, blk_q3_K *y, int8_t *L) {
    for (int j = 0; j < QK_K / 16; ++j) {
        int sc = j < 8 ? y->scales[j] & 0xF : y->scales[j - 8] >> 4;
        sc = (sc | (((y->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        float d = FP16_TO_FP32(y->d) * sc;
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            int l = nearest_int(x[16 * j + ii] / d);
            l = QMAX(-4, QMIN(3, l));
            L[16 * j + ii] = (int8_t)(l + 4);
        }
    }
    memset(y->hmask, 0, QK_K / 8);
    int m = 0;
    uint8_t hm = 1;
    for (int j = 0; j < QK_K; ++j) {
        if (L[j] > 3) {
            y->hmask[m] |= hm;
            L[j] -= 4;
        }
        if (++m == QK_K / 8) {
            m = 0;
            hm <<= 1;
        }
    }
    pack_2bit((const uint8_t *)L, y->qs);
}

/* Q3_K: 6-bit scales from the 16 sub-block scales (q3_K_rtn, or q3_K_imat's weighted search). */
void ql_ggml_q3_K_pack_scales(const float *scales, const float *sw, bool imat, blk_q3_K *y) {
    memset(y->scales, 0, 12);
    if (imat) {
        int8_t Ls[QK_K / 16];
        float d_block = ql_ggml_make_qx_quants(QK_K / 16, 32, scales, Ls, 1, sw);
        for (int j = 0; j < QK_K / 16; ++j) q3_K_put_scale(y->scales, j, Ls[j]);
        y->d = FP32_TO_FP16(d_block);
        return;
    }
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        float scale = fabsf(scales[j]);
        if (scale > amax) {
            amax = scale;
            max_scale = scales[j];
        }
    }
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) {
            int8_t l = (int8_t)nearest_int(iscale * scales[j]);
            l = (int8_t)(QMAX(-32, QMIN(31, l)) + 32);
            q3_K_put_scale(y->scales, j, l);
        }
        y->d = FP32_TO_FP16(1 / iscale);
    } else {
        y->d = FP32_TO_FP16(0.f);
    }
}

static void q3_K_rtn(const float *x, blk_q3_K *y, int64_t nb) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++) {
        for (int j = 0; j < QK_K / 16; ++j) scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
        ql_ggml_q3_K_pack_scales(scales, NULL, false, &y[i]);
        q3_K_finish(x, &y[i], L);
        x += QK_K;
    }
}

static void q3_K_imat(const float *x, blk_q3_K *y, int64_t nb, const float *quant_weights) {
    int8_t L[QK_K];
    float scales[QK_K / 16], weight[16], sw[QK_K / 16];
    for (int64_t i = 0; i < nb; i++) {
        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
        float sigma2 = 2 * sumx2 / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float *qw = quant_weights + QK_K * i + 16 * j;
            for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
            float sumw = 0;
            for (int l = 0; l < 16; ++l) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = ql_ggml_make_qx_quants(16, 4, x + 16 * j, L + 16 * j, 1, weight);
        }
        ql_ggml_q3_K_pack_scales(scales, sw, true, &y[i]);
        q3_K_finish(x, &y[i], L);
        x += QK_K;
    }
}

void ql_quantize_row_q3_K_ref(const float *x, void *y, int64_t n, const float *imatrix) {
    if (imatrix)
        q3_K_imat(x, y, n / QK_K, imatrix);
    else
        q3_K_rtn(x, y, n / QK_K);
}

void ql_dequantize_row_q3_K_ref(const void *vx, float *y, int64_t n) {
    const blk_q3_K *x = vx;
    int8_t scales[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d_all = FP16_TO_FP32(x[i].d);
        const uint8_t *q = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        uint8_t m = 1;
        q3_K_unpack_scales(x[i].scales, scales);
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                float dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * ((int8_t)((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4));
                dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
                shift += 2;
                m <<= 1;
            }
            q += 32;
        }
    }
}

/* Q4_K/Q5_K super-block scale/min quantization once the 8 sub-block searches are done (both paths). */
void ql_ggml_k45_pack_scales(const float *scales, const float *mins, const float *sw, bool imat,
                             uint8_t *sc12, uint16_t *d, uint16_t *dmin) {
    if (imat) {
        uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
        float d_block = ql_ggml_make_qp_quants(QK_K / 32, 63, scales, Ls, sw);
        float m_block = ql_ggml_make_qp_quants(QK_K / 32, 63, mins, Lm, sw);
        for (int j = 0; j < QK_K / 32; ++j) k4_put_scale_min(sc12, j, QMIN(63, Ls[j]), QMIN(63, Lm[j]));
        *d = FP32_TO_FP16(d_block);
        *dmin = FP32_TO_FP16(m_block);
        return;
    }
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = QMIN(63, ls);
        lm = QMIN(63, lm);
        k4_put_scale_min(sc12, j, ls, lm);
    }
    *d = FP32_TO_FP16(max_scale / 63.f);
    *dmin = FP32_TO_FP16(max_min / 63.f);
}

/* No-imatrix (scale, min) search for Q4_K (nmax 15) and Q5_K (nmax 31); fills scales/d/dmin. */
static void k45_rtn_scales(const float *x, int nmax, float rmin, int nstep, uint8_t *L, uint8_t *sc12,
                           uint16_t *d, uint16_t *dmin) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f,
                                     nstep, false);
    }
    ql_ggml_k45_pack_scales(scales, mins, NULL, false, sc12, d, dmin);
}

/* imatrix (scale, min) search for Q4_K/Q5_K. */
static void k45_imat_scales(const float *x, int nmax, const float *qwb, uint8_t *L, uint8_t *sc12,
                            uint16_t *d, uint16_t *dmin) {
    uint8_t Laux[32];
    float weights[32], sw[QK_K / 32], mins[QK_K / 32], scales[QK_K / 32];
    float sum_x2 = 0;
    for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
    float sigma2 = 2 * sum_x2 / QK_K;
    for (int j = 0; j < QK_K / 32; ++j) {
        const float *qw = qwb + 32 * j;
        for (int l = 0; l < 32; ++l) weights[l] = qw[l] * sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l]);
        float sumw = 0;
        for (int l = 0; l < 32; ++l) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = make_qkx3_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f,
                                     36, false);
    }
    ql_ggml_k45_pack_scales(scales, mins, sw, true, sc12, d, dmin);
}

/* Final levels against the stored scales (both Q4_K and Q5_K paths). */
static void k45_requant(const float *x, int nmax, const uint8_t *sc12, uint16_t d16, uint16_t dmin16,
                        uint8_t *L) {
    uint8_t sc, m;
    for (int j = 0; j < QK_K / 32; ++j) {
        get_scale_min_k4(j, sc12, &sc, &m);
        const float d = FP16_TO_FP32(d16) * sc;
        if (!d) continue;
        const float dm = FP16_TO_FP32(dmin16) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)QMAX(0, QMIN(nmax, l));
        }
    }
}

void ql_ggml_q4_K_pack_levels(const uint8_t *L, blk_q4_K *y) {
    uint8_t *q = y->qs;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}

void ql_quantize_row_q4_K_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q4_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        if (imatrix)
            k45_imat_scales(x, 15, imatrix + QK_K * i, L, y[i].scales, &y[i].d, &y[i].dmin);
        else
            k45_rtn_scales(x, 15, -1.f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        k45_requant(x, 15, y[i].scales, y[i].d, y[i].dmin, L);
        ql_ggml_q4_K_pack_levels(L, &y[i]);
        x += QK_K;
    }
}

void ql_dequantize_row_q4_K_ref(const void *vx, float *y, int64_t n) {
    const blk_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q = x[i].qs;
        const float d = FP16_TO_FP32(x[i].d);
        const float min = FP16_TO_FP32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

void ql_quantize_row_q5_K_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q5_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        if (imatrix)
            k45_imat_scales(x, 31, imatrix + QK_K * i, L, y[i].scales, &y[i].d, &y[i].dmin);
        else
            k45_rtn_scales(x, 31, -0.5f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        k45_requant(x, 31, y[i].scales, y[i].d, y[i].dmin, L);
        uint8_t *qh = y[i].qh, *ql = y[i].qs;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int nn = 0; nn < QK_K; nn += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[nn + j];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                int l2 = L[nn + j + 32];
                if (l2 > 15) {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
            ql += 32;
        }
        x += QK_K;
    }
}

void ql_dequantize_row_q5_K_ref(const void *vx, float *y, int64_t n) {
    const blk_q5_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = FP16_TO_FP32(x[i].d);
        const float min = FP16_TO_FP32(x[i].dmin);
        int is = 0;
        uint8_t sc, m, u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/* Q6_K super-block scale quantization; false when the block is all (near) zero and was zeroed. */
bool ql_ggml_q6_K_pack_scales(const float *scales, blk_q6_K *y) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) {
            max_abs_scale = abs_scale;
            max_scale = scales[ib];
        }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, sizeof(*y));
        y->d = FP32_TO_FP16(0.f);
        return false;
    }
    float iscale = -128.f / max_scale;
    y->d = FP32_TO_FP16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib)
        y->scales[ib] = (int8_t)QMIN(127, nearest_int(iscale * scales[ib]));
    return true;
}

void ql_ggml_q6_K_pack_levels(const int8_t *L, blk_q6_K *y) {
    uint8_t *ql = y->ql, *qh = y->qh;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l + 0] & 0xF;
            const uint8_t q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF;
            const uint8_t q4 = L[j + l + 96] & 0xF;
            ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                              ((L[j + l + 96] >> 4) << 6));
        }
        ql += 64;
        qh += 32;
    }
}

void ql_quantize_row_q6_K_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_q6_K *y = vy;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            /* ggml passes the raw imatrix here (no sigma2 term) */
            const float *qw = imatrix ? imatrix + QK_K * i + 16 * ib : NULL;
            scales[ib] = ql_ggml_make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, qw);
        }
        if (!ql_ggml_q6_K_pack_scales(scales, &y[i])) {
            x += QK_K;
            continue;
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            float d = FP16_TO_FP32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = QMAX(-32, QMIN(31, l));
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        ql_ggml_q6_K_pack_levels(L, &y[i]);
        x += QK_K;
    }
}

void ql_dequantize_row_q6_K_ref(const void *vx, float *y, int64_t n) {
    const blk_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l / 16;
                const int8_t q1 = (int8_t)(((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                const int8_t q2 = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                const int8_t q3 = (int8_t)(((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                const int8_t q4 = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void ql_dequantize_row_q8_K_ref(const void *vx, float *y, int64_t n) {
    /* block_q8_K: float d; int8 qs[256]; int16 bsums[16] (292 bytes) */
    const uint8_t *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *b = x + i * 292;
        float d;
        memcpy(&d, b, 4);
        const int8_t *qs = (const int8_t *)(b + 4);
        for (int j = 0; j < QK_K; ++j) *y++ = d * qs[j];
    }
}

/* ------------------------------------------------------------------------------------------------
 * IQ4_NL / IQ4_XS (non-linear 4-bit table)
 * ---------------------------------------------------------------------------------------------- */

/* One super-block of sbs values (32 for IQ4_NL, 256 for IQ4_XS) in sub-blocks of 32. quant_weights
 * points at this super-block's weights or is NULL (then x^2). ntry 7 is what ggml_quantize_chunk uses;
 * ntry -1 is ggml's quantize_row_iq4_nl_ref (the CPU from_float a KV-cache write calls): the first scale
 * from +max instead of -max, no scale search, no final re-rounding. */
static void iq4_nl_impl(int sbs, const float *x, uint16_t *dh, uint8_t *q4, uint16_t *scales_h,
                        uint8_t *scales_l, const float *quant_weights, int ntry) {
    const int bs = 32;
    const int8_t *values = kvalues_iq4nl;
    float scales[QK_K / 32], weight[32];
    uint8_t L[QK_K];

    float sigma2 = 0;
    for (int j = 0; j < sbs; ++j) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / sbs;

    memset(q4, 0, (size_t)sbs / 2);
    dh[0] = FP32_TO_FP16(0.f);

    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < sbs / bs; ++ib) {
        const float *xb = x + ib * bs;
        uint8_t *Lb = L + ib * bs;
        if (quant_weights) {
            const float *qw = quant_weights + ib * bs;
            for (int j = 0; j < bs; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
        } else {
            for (int j = 0; j < bs; ++j) weight[j] = xb[j] * xb[j];
        }
        float amax = 0, max = 0;
        for (int j = 0; j < bs; ++j) {
            float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            scales[ib] = 0;
            memset(Lb, 0, (size_t)bs);
            continue;
        }
        float d = ntry > 0 ? -max / values[0] : max / values[0];
        float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < bs; ++j) {
            float al = id * xb[j];
            int l = best_index_int8(16, values, al);
            Lb[j] = (uint8_t)l;
            float q = values[l];
            float w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int itry = -ntry; itry <= ntry; ++itry) {
            id = (itry + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < bs; ++j) {
                float al = id * xb[j];
                int l = best_index_int8(16, values, al);
                float q = values[l];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        float abs_d = fabsf(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if (sbs / bs > 1) {
        int nb = sbs / bs;
        memset(scales_h, 0, ((size_t)(nb + 7) / 8) * sizeof(uint16_t));
        float d = -max_scale / 32;
        dh[0] = FP32_TO_FP16(d);
        float id = d ? 1 / d : 0.f;
        for (int ib = 0; ib < nb; ++ib) {
            int l = nearest_int(id * scales[ib]);
            l = QMAX(-32, QMIN(31, l));
            float dl = d * l;
            float idl = dl ? 1 / dl : 0.f;
            uint8_t *Lb = L + ib * bs;
            const float *xb = x + ib * bs;
            for (int j = 0; j < bs; ++j) Lb[j] = (uint8_t)best_index_int8(16, values, idl * xb[j]);
            l += 32;
            uint8_t l_l = (uint8_t)(l & 0xf), l_h = (uint8_t)(l >> 4);
            if (ib % 2 == 0)
                scales_l[ib / 2] = l_l;
            else
                scales_l[ib / 2] |= (uint8_t)(l_l << 4);
            scales_h[ib / 8] |= (uint16_t)(l_h << 2 * (ib % 8));
        }
    } else {
        dh[0] = FP32_TO_FP16(scales[0]);
        if (ntry > 0) {
            float id = scales[0] ? 1 / scales[0] : 0;
            for (int j = 0; j < sbs; ++j) L[j] = (uint8_t)best_index_int8(16, values, id * x[j]);
        }
    }

    for (int i = 0; i < sbs / 32; ++i)
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

void ql_quantize_row_iq4_nl_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_iq4_nl *y = vy;
    uint16_t unused_h;
    for (int64_t ib = 0; ib < n / 32; ++ib)
        iq4_nl_impl(32, x + 32 * ib, &y[ib].d, y[ib].qs, &unused_h, NULL, imatrix ? imatrix + 32 * ib : NULL, 7);
}

void ql_quantize_row_iq4_nl_fast_ref(const float *x, void *vy, int64_t n) {
    blk_iq4_nl *y = vy;
    uint16_t unused_h;
    for (int64_t ib = 0; ib < n / 32; ++ib) iq4_nl_impl(32, x + 32 * ib, &y[ib].d, y[ib].qs, &unused_h, NULL, NULL, -1);
}

void ql_quantize_row_iq4_xs_ref(const float *x, void *vy, int64_t n, const float *imatrix) {
    blk_iq4_xs *y = vy;
    for (int64_t ib = 0; ib < n / QK_K; ++ib)
        iq4_nl_impl(QK_K, x + QK_K * ib, &y[ib].d, y[ib].qs, &y[ib].scales_h, y[ib].scales_l,
                    imatrix ? imatrix + QK_K * ib : NULL, 7);
}

void ql_dequantize_row_iq4_nl_ref(const void *vx, float *y, int64_t n) {
    const blk_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const uint8_t *qs = x[i].qs;
        const float d = FP16_TO_FP32(x[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j + 0] = d * kvalues_iq4nl[qs[j] & 0xf];
            y[j + 16] = d * kvalues_iq4nl[qs[j] >> 4];
        }
        y += 32;
    }
}

void ql_dequantize_row_iq4_xs_ref(const void *vx, float *y, int64_t n) {
    const blk_iq4_xs *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *qs = x[i].qs;
        const float d = FP16_TO_FP32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const int ls =
                ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((x[i].scales_h >> 2 * ib) & 3) << 4);
            const float dl = d * (ls - 32);
            for (int j = 0; j < 16; ++j) {
                y[j + 0] = dl * kvalues_iq4nl[qs[j] & 0xf];
                y[j + 16] = dl * kvalues_iq4nl[qs[j] >> 4];
            }
            y += 32;
            qs += 16;
        }
    }
}

/* ------------------------------------------------------------------------------------------------
 * Ternary and MXFP4 (dequantize only)
 * ---------------------------------------------------------------------------------------------- */
void ql_dequantize_row_tq1_0_ref(const void *vx, float *y, int64_t n) {
    const blk_tq1_0 *x = vx;
    static const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = FP16_TO_FP32(x[i].d);
        /* first 32 bytes of qs: 5 trits each, most significant first; then 16 bytes; then qh */
        for (size_t j = 0; j < 32; j += 32)
            for (size_t nn = 0; nn < 5; ++nn)
                for (size_t m = 0; m < 32; ++m) {
                    uint8_t q = (uint8_t)(x[i].qs[j + m] * pow3[nn]);
                    int16_t xi = (int16_t)(((uint16_t)q * 3) >> 8);
                    *y++ = (float)(xi - 1) * d;
                }
        for (size_t j = 32; j < 48; j += 16)
            for (size_t nn = 0; nn < 5; ++nn)
                for (size_t m = 0; m < 16; ++m) {
                    uint8_t q = (uint8_t)(x[i].qs[j + m] * pow3[nn]);
                    int16_t xi = (int16_t)(((uint16_t)q * 3) >> 8);
                    *y++ = (float)(xi - 1) * d;
                }
        for (size_t nn = 0; nn < 4; ++nn)
            for (size_t j = 0; j < 4; ++j) {
                uint8_t q = (uint8_t)(x[i].qh[j] * pow3[nn]);
                int16_t xi = (int16_t)(((uint16_t)q * 3) >> 8);
                *y++ = (float)(xi - 1) * d;
            }
    }
}

void ql_dequantize_row_tq2_0_ref(const void *vx, float *y, int64_t n) {
    const blk_tq2_0 *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = FP16_TO_FP32(x[i].d);
        for (size_t j = 0; j < 64; j += 32)
            for (size_t l = 0; l < 4; ++l)
                for (size_t m = 0; m < 32; ++m) {
                    int8_t q = (int8_t)((x[i].qs[j + m] >> (l * 2)) & 3);
                    *y++ = (float)(q - 1) * d;
                }
    }
}

/* ------------------------------------------------------------------------------------------------
 * IQ2/IQ3/IQ1 lattice formats (dequantize only). Grid entries hold one coordinate per byte.
 * ---------------------------------------------------------------------------------------------- */
static inline uint8_t grid_u8(uint64_t g, int j) { return (uint8_t)(g >> (8 * j)); }
/* 7 stored sign bits plus an implied 8th that makes the count of negatives even */
static inline uint8_t ksigns(unsigned i) {
    unsigned p = i ^ (i >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    return (uint8_t)(i | ((p & 1) << 7));
}
static inline float sgn(uint8_t signs, int j) { return signs & (1u << j) ? -1.f : 1.f; }

void ql_dequantize_row_iq2_xxs_ref(const void *vx, float *y, int64_t n) {
    const blk_iq2_xxs *x = vx;
    uint32_t aux32[2];
    uint8_t aux8[8];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
            memcpy(aux32, x[i].qs + 4 * ib32, 8);
            memcpy(aux8, aux32, 8);
            const float db = d * (0.5f + (aux32[1] >> 28)) * 0.25f;
            for (int l = 0; l < 4; ++l) {
                const uint64_t grid = iq2xxs_grid[aux8[l]];
                const uint8_t signs = ksigns((aux32[1] >> 7 * l) & 127);
                for (int j = 0; j < 8; ++j) y[j] = db * grid_u8(grid, j) * sgn(signs, j);
                y += 8;
            }
        }
    }
}

void ql_dequantize_row_iq2_xs_ref(const void *vx, float *y, int64_t n) {
    const blk_iq2_xs *x = vx;
    float db[2];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
            db[0] = d * (0.5f + (x[i].scales[ib32] & 0xf)) * 0.25f;
            db[1] = d * (0.5f + (x[i].scales[ib32] >> 4)) * 0.25f;
            for (int l = 0; l < 4; ++l) {
                const uint16_t q = x[i].qs[4 * ib32 + l];
                const uint64_t grid = iq2xs_grid[q & 511];
                const uint8_t signs = ksigns(q >> 9);
                for (int j = 0; j < 8; ++j) y[j] = db[l / 2] * grid_u8(grid, j) * sgn(signs, j);
                y += 8;
            }
        }
    }
}

void ql_dequantize_row_iq2_s_ref(const void *vx, float *y, int64_t n) {
    const blk_iq2_s *x = vx;
    float db[2];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        const uint8_t *qs = x[i].qs, *qh = x[i].qh;
        const uint8_t *signs = qs + QK_K / 8;
        for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
            db[0] = d * (0.5f + (x[i].scales[ib32] & 0xf)) * 0.25f;
            db[1] = d * (0.5f + (x[i].scales[ib32] >> 4)) * 0.25f;
            for (int l = 0; l < 4; ++l) {
                const float dl = db[l / 2];
                const uint64_t grid = iq2s_grid[qs[l] | ((qh[ib32] << (8 - 2 * l)) & 0x300)];
                for (int j = 0; j < 8; ++j) y[j] = dl * grid_u8(grid, j) * sgn(signs[l], j);
                y += 8;
            }
            qs += 4;
            signs += 4;
        }
    }
}

void ql_dequantize_row_iq3_xxs_ref(const void *vx, float *y, int64_t n) {
    const blk_iq3_xxs *x = vx;
    uint32_t aux32;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        const uint8_t *qs = x[i].qs;
        const uint8_t *scales_and_signs = qs + QK_K / 4;
        for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
            memcpy(&aux32, scales_and_signs + 4 * ib32, 4);
            const float db = d * (0.5f + (aux32 >> 28)) * 0.5f;
            for (int l = 0; l < 4; ++l) {
                const uint8_t signs = ksigns((aux32 >> 7 * l) & 127);
                const uint32_t g1 = iq3xxs_grid[qs[2 * l + 0]], g2 = iq3xxs_grid[qs[2 * l + 1]];
                for (int j = 0; j < 4; ++j) {
                    y[j + 0] = db * grid_u8(g1, j) * sgn(signs, j);
                    y[j + 4] = db * grid_u8(g2, j) * sgn(signs, j + 4);
                }
                y += 8;
            }
            qs += 8;
        }
    }
}

void ql_dequantize_row_iq3_s_ref(const void *vx, float *y, int64_t n) {
    const blk_iq3_s *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        const uint8_t *qs = x[i].qs, *qh = x[i].qh, *signs = x[i].signs;
        for (int ib32 = 0; ib32 < QK_K / 32; ib32 += 2) {
            const float db[2] = {d * (1 + 2 * (x[i].scales[ib32 / 2] & 0xf)),
                                 d * (1 + 2 * (x[i].scales[ib32 / 2] >> 4))};
            for (int h = 0; h < 2; ++h) { /* two sub-blocks of 32 share one scale byte */
                for (int l = 0; l < 4; ++l) {
                    const uint32_t g1 = iq3s_grid[qs[2 * l + 0] | ((qh[h] << (8 - 2 * l)) & 256)];
                    const uint32_t g2 = iq3s_grid[qs[2 * l + 1] | ((qh[h] << (7 - 2 * l)) & 256)];
                    for (int j = 0; j < 4; ++j) {
                        y[j + 0] = db[h] * grid_u8(g1, j) * sgn(signs[l], j);
                        y[j + 4] = db[h] * grid_u8(g2, j) * sgn(signs[l], j + 4);
                    }
                    y += 8;
                }
                qs += 8;
                signs += 4;
            }
            qh += 2;
        }
    }
}

void ql_dequantize_row_iq1_s_ref(const void *vx, float *y, int64_t n) {
    const blk_iq1_s *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = FP16_TO_FP32(x[i].d);
        const uint8_t *qs = x[i].qs;
        const uint16_t *qh = x[i].qh;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float dl = d * (2 * ((qh[ib] >> 12) & 7) + 1);
            const float delta = qh[ib] & 0x8000 ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
            for (int l = 0; l < 4; ++l) {
                const uint64_t grid = iq1s_grid[qs[l] | (((qh[ib] >> 3 * l) & 7) << 8)];
                for (int j = 0; j < 8; ++j) y[j] = dl * ((int8_t)grid_u8(grid, j) + delta);
                y += 8;
            }
            qs += 4;
        }
    }
}

void ql_dequantize_row_iq1_m_ref(const void *vx, float *y, int64_t n) {
    const blk_iq1_m *x = vx;
    float delta[4];
    uint16_t idx[4], sc[4];
    for (int64_t i = 0; i < n / QK_K; i++) {
        memcpy(sc, x[i].scales, 8);
        /* the fp16 super-block scale is spread over the top nibbles of the four scale words */
        const uint16_t s16 =
            (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
        const float d = FP16_TO_FP32(s16);
        const uint8_t *qs = x[i].qs, *qh = x[i].qh;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float dl1 = d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1);
            const float dl2 = d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1);
            idx[0] = (uint16_t)(qs[0] | ((qh[0] << 8) & 0x700));
            idx[1] = (uint16_t)(qs[1] | ((qh[0] << 4) & 0x700));
            idx[2] = (uint16_t)(qs[2] | ((qh[1] << 8) & 0x700));
            idx[3] = (uint16_t)(qs[3] | ((qh[1] << 4) & 0x700));
            delta[0] = qh[0] & 0x08 ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
            delta[1] = qh[0] & 0x80 ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
            delta[2] = qh[1] & 0x08 ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
            delta[3] = qh[1] & 0x80 ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
            for (int l = 0; l < 4; ++l) {
                const float dl = l < 2 ? dl1 : dl2;
                const uint64_t grid = iq1s_grid[idx[l]];
                for (int j = 0; j < 8; ++j) y[j] = dl * ((int8_t)grid_u8(grid, j) + delta[l]);
                y += 8;
            }
            qs += 4;
            qh += 2;
        }
    }
}

/* Integer forms of the lattice and ternary blocks (ggml_quants.h): the decoders above with the float scale
 * pulled out. Kept beside them so a layout is read in one file. */
/* Eight grid bytes (each 0..127) with sign bit j of `signs` applied to byte j, as eight int8 codes in one word: no
 * branch (the signs are random: a branch per value mispredicted half the time) and no loop. The sign bits spread
 * to one byte each, become 0x00/0xFF masks, and negate by x ^ m + 1 added bytewise without carries. */
static inline uint64_t signed_grid8(uint64_t g, uint8_t signs) {
    const uint64_t lo7 = 0x7f7f7f7f7f7f7f7full, hi = 0x8080808080808080ull, ones = 0x0101010101010101ull;
    const uint64_t bit = (signs * ones) & 0x8040201008040201ull;   /* byte j: bit j of signs, in place */
    const uint64_t neg = ((bit | ((bit & lo7) + lo7)) & hi) >> 7;  /* byte j: 1 when negative */
    const uint64_t x = g ^ (neg * 0xff);
    return ((x & lo7) + neg) ^ (x & hi);                           /* x + neg per byte: neg < 0x80, no carry out */
}
static inline void put8(int8_t *c, uint64_t v) { memcpy(c, &v, 8); } /* little-endian: byte j = value j */
static int tq_codes(uint32_t type, const void *blk, int8_t c[QK_K], int16_t sc[16], float *dw) {
    static const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
    int p = 0;
    sc[0] = 1;
    if (type == QL_TYPE_TQ2_0) {
        const blk_tq2_0 *x = blk;
        *dw = FP16_TO_FP32(x->d);
        for (int j = 0; j < 64; j += 32)
            for (int l = 0; l < 4; ++l)
                for (int m = 0; m < 32; ++m) c[p++] = (int8_t)(((x->qs[j + m] >> (l * 2)) & 3) - 1);
        return QK_K;
    }
    const blk_tq1_0 *x = blk;
    *dw = FP16_TO_FP32(x->d);
    for (int nn = 0; nn < 5; ++nn) /* 32 bytes, 5 trits each, most significant first */
        for (int m = 0; m < 32; ++m) c[p++] = (int8_t)((((uint8_t)(x->qs[m] * pow3[nn])) * 3 >> 8) - 1);
    for (int nn = 0; nn < 5; ++nn)
        for (int m = 0; m < 16; ++m) c[p++] = (int8_t)((((uint8_t)(x->qs[32 + m] * pow3[nn])) * 3 >> 8) - 1);
    for (int nn = 0; nn < 4; ++nn)
        for (int j = 0; j < 4; ++j) c[p++] = (int8_t)((((uint8_t)(x->qh[j] * pow3[nn])) * 3 >> 8) - 1);
    return QK_K;
}

int ql_ggml_block_int_codes(uint32_t type, const void *blk, int8_t c[QK_K], int16_t sc[16], float *dw) {
    switch (type) {
    case QL_TYPE_TQ1_0: case QL_TYPE_TQ2_0: return tq_codes(type, blk, c, sc, dw);
    case QL_TYPE_IQ2_XXS: { /* d·(1/2 + s)/4·g = d/8 · (2s+1)·g */
        const blk_iq2_xxs *x = blk;
        uint32_t aux32[2];
        uint8_t aux8[8];
        *dw = FP16_TO_FP32(x->d) * 0.125f;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            memcpy(aux32, x->qs + 4 * ib, 8);
            memcpy(aux8, aux32, 8);
            sc[ib] = (int16_t)(2 * (aux32[1] >> 28) + 1);
            for (int l = 0; l < 4; ++l) {
                put8(c + 32 * ib + 8 * l, signed_grid8(iq2xxs_grid[aux8[l]], ksigns((aux32[1] >> 7 * l) & 127)));
            }
        }
        return 32;
    }
    case QL_TYPE_IQ2_XS: { /* a scale per 16 */
        const blk_iq2_xs *x = blk;
        *dw = FP16_TO_FP32(x->d) * 0.125f;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            sc[2 * ib] = (int16_t)(2 * (x->scales[ib] & 0xf) + 1), sc[2 * ib + 1] = (int16_t)(2 * (x->scales[ib] >> 4) + 1);
            for (int l = 0; l < 4; ++l) {
                const uint16_t q = x->qs[4 * ib + l];
                put8(c + 32 * ib + 8 * l, signed_grid8(iq2xs_grid[q & 511], ksigns(q >> 9)));
            }
        }
        return 16;
    }
    case QL_TYPE_IQ2_S: { /* a scale per 16 */
        const blk_iq2_s *x = blk;
        const uint8_t *qs = x->qs, *qh = x->qh, *signs = x->qs + QK_K / 8;
        *dw = FP16_TO_FP32(x->d) * 0.125f;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, signs += 4) {
            sc[2 * ib] = (int16_t)(2 * (x->scales[ib] & 0xf) + 1), sc[2 * ib + 1] = (int16_t)(2 * (x->scales[ib] >> 4) + 1);
            for (int l = 0; l < 4; ++l) {
                put8(c + 32 * ib + 8 * l, signed_grid8(iq2s_grid[qs[l] | ((qh[ib] << (8 - 2 * l)) & 0x300)], signs[l]));
            }
        }
        return 16;
    }
    case QL_TYPE_IQ3_XXS: { /* d·(1/2 + s)/2·g = d/4 · (2s+1)·g */
        const blk_iq3_xxs *x = blk;
        const uint8_t *qs = x->qs, *scales_and_signs = x->qs + QK_K / 4;
        *dw = FP16_TO_FP32(x->d) * 0.25f;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 8) {
            uint32_t aux32;
            memcpy(&aux32, scales_and_signs + 4 * ib, 4);
            sc[ib] = (int16_t)(2 * (aux32 >> 28) + 1);
            for (int l = 0; l < 4; ++l) {
                const uint64_t g = iq3xxs_grid[qs[2 * l + 0]] | (uint64_t)iq3xxs_grid[qs[2 * l + 1]] << 32;
                put8(c + 32 * ib + 8 * l, signed_grid8(g, ksigns((aux32 >> 7 * l) & 127)));
            }
        }
        return 32;
    }
    case QL_TYPE_IQ3_S: { /* d·(1 + 2s)·g */
        const blk_iq3_s *x = blk;
        const uint8_t *qs = x->qs, *qh = x->qh, *signs = x->signs;
        int p = 0;
        *dw = FP16_TO_FP32(x->d);
        for (int ib = 0; ib < QK_K / 32; ib += 2, qh += 2)
            for (int h = 0; h < 2; ++h, qs += 8, signs += 4) {
                sc[ib + h] = (int16_t)(1 + 2 * ((x->scales[ib / 2] >> 4 * h) & 0xf));
                for (int l = 0; l < 4; ++l, p += 8) {
                    const uint64_t g = iq3s_grid[qs[2 * l + 0] | ((qh[h] << (8 - 2 * l)) & 256)] |
                                       (uint64_t)iq3s_grid[qs[2 * l + 1] | ((qh[h] << (7 - 2 * l)) & 256)] << 32;
                    put8(c + p, signed_grid8(g, signs[l]));
                }
            }
        return 32;
    }
    case QL_TYPE_IQ1_S: { /* d·(2s+1)·(g ± 1/8) = d/8 · (2s+1)·(8g ± 1) */
        const blk_iq1_s *x = blk;
        const uint8_t *qs = x->qs;
        *dw = FP16_TO_FP32(x->d) * 0.125f;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4) {
            const int delta = x->qh[ib] & 0x8000 ? -1 : 1;
            sc[ib] = (int16_t)(2 * ((x->qh[ib] >> 12) & 7) + 1);
            for (int l = 0; l < 4; ++l) {
                const uint64_t grid = iq1s_grid[qs[l] | (((x->qh[ib] >> 3 * l) & 7) << 8)];
                for (int j = 0; j < 8; ++j) c[32 * ib + 8 * l + j] = (int8_t)(8 * (int8_t)grid_u8(grid, j) + delta);
            }
        }
        return 32;
    }
    case QL_TYPE_IQ1_M: { /* a scale per 16, the shift's sign per 8 */
        const blk_iq1_m *x = blk;
        uint16_t s4[4];
        memcpy(s4, x->scales, 8);
        const uint16_t s16 =
            (uint16_t)((s4[0] >> 12) | ((s4[1] >> 8) & 0x00f0) | ((s4[2] >> 4) & 0x0f00) | (s4[3] & 0xf000));
        *dw = FP16_TO_FP32(s16) * 0.125f;
        const uint8_t *qs = x->qs, *qh = x->qh;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, qh += 2) {
            sc[2 * ib] = (int16_t)(2 * ((s4[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1);
            sc[2 * ib + 1] = (int16_t)(2 * ((s4[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1);
            const int idx[4] = {qs[0] | ((qh[0] << 8) & 0x700), qs[1] | ((qh[0] << 4) & 0x700),
                                qs[2] | ((qh[1] << 8) & 0x700), qs[3] | ((qh[1] << 4) & 0x700)};
            const int delta[4] = {qh[0] & 0x08 ? -1 : 1, qh[0] & 0x80 ? -1 : 1, qh[1] & 0x08 ? -1 : 1,
                                  qh[1] & 0x80 ? -1 : 1};
            for (int l = 0; l < 4; ++l) {
                const uint64_t grid = iq1s_grid[idx[l]];
                for (int j = 0; j < 8; ++j) c[32 * ib + 8 * l + j] = (int8_t)(8 * (int8_t)grid_u8(grid, j) + delta[l]);
            }
        }
        return 16;
    }
    default: return 0;
    }
}

/* ------------------------------------------------------------------------------------------------
 * Whole matrices: the row codecs above applied to each row. These are the entry points the format
 * registry (formats/fmt_ggml.c) points at; kernels know block layouts, not formats.
 * ---------------------------------------------------------------------------------------------- */
#define QL_GGML_ROWS_CODEC(lname, rname, blk_t, QK)                                                      \
    void ql_quantize_rows_##lname##_ref(const float *src, void *dst, int64_t nrows, int64_t ncols,       \
                                        const float *imatrix) {                                          \
        if (nrows <= 0 || ncols <= 0 || ncols % (QK)) return;                                            \
        const int64_t rb = ncols / (QK) * (int64_t)sizeof(blk_t);                                        \
        for (int64_t r = 0; r < nrows; ++r)                                                              \
            ql_quantize_row_##rname##_ref(src + r * ncols, (char *)dst + r * rb, ncols, imatrix);        \
    }
#define QL_GGML_ROWS_DECODER(lname, rname, blk_t, QK)                                                    \
    void ql_dequantize_rows_##lname##_ref(const void *src, float *dst, int64_t nrows, int64_t ncols) {   \
        if (nrows <= 0 || ncols <= 0 || ncols % (QK)) return;                                            \
        const int64_t rb = ncols / (QK) * (int64_t)sizeof(blk_t);                                        \
        for (int64_t r = 0; r < nrows; ++r)                                                              \
            ql_dequantize_row_##rname##_ref((const char *)src + r * rb, dst + r * ncols, ncols);         \
    }
#define QL_GGML_ROWS(lname, rname, blk_t, QK)                                                            \
    QL_GGML_ROWS_CODEC(lname, rname, blk_t, QK) QL_GGML_ROWS_DECODER(lname, rname, blk_t, QK)

typedef struct { uint8_t b[4]; } blk_f32;
typedef struct { uint8_t b[2]; } blk_f16;
static void ql_quantize_row_f32_ref(const float *x, void *y, int64_t n, const float *imatrix) {
    (void)imatrix;
    memcpy(y, x, (size_t)n * sizeof(float));
}
static void ql_dequantize_row_f32_ref(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

QL_GGML_ROWS(f32, f32, blk_f32, 1)
QL_GGML_ROWS(f16, f16, blk_f16, 1)
QL_GGML_ROWS(bf16, bf16, blk_f16, 1)
QL_GGML_ROWS(q4_0, q4_0, blk_q4_0, 32)
QL_GGML_ROWS(q4_1, q4_1, blk_q4_1, 32)
QL_GGML_ROWS(q5_0, q5_0, blk_q5_0, 32)
QL_GGML_ROWS(q5_1, q5_1, blk_q5_1, 32)
QL_GGML_ROWS(q8_0, q8_0, blk_q8_0, 32)
QL_GGML_ROWS(q2_k, q2_K, blk_q2_K, QK_K)
QL_GGML_ROWS(q3_k, q3_K, blk_q3_K, QK_K)
QL_GGML_ROWS(q4_k, q4_K, blk_q4_K, QK_K)
QL_GGML_ROWS(q5_k, q5_K, blk_q5_K, QK_K)
QL_GGML_ROWS(q6_k, q6_K, blk_q6_K, QK_K)
QL_GGML_ROWS(iq4_nl, iq4_nl, blk_iq4_nl, 32)
QL_GGML_ROWS(iq4_xs, iq4_xs, blk_iq4_xs, QK_K)
typedef struct { uint8_t b[292]; } blk_q8_K; /* float d; int8 qs[256]; int16 bsums[16] */
QL_GGML_ROWS_DECODER(q8_k, q8_K, blk_q8_K, QK_K)
QL_GGML_ROWS_DECODER(tq1_0, tq1_0, blk_tq1_0, QK_K)
QL_GGML_ROWS_DECODER(tq2_0, tq2_0, blk_tq2_0, QK_K)
QL_GGML_ROWS_DECODER(iq2_xxs, iq2_xxs, blk_iq2_xxs, QK_K)
QL_GGML_ROWS_DECODER(iq2_xs, iq2_xs, blk_iq2_xs, QK_K)
QL_GGML_ROWS_DECODER(iq2_s, iq2_s, blk_iq2_s, QK_K)
QL_GGML_ROWS_DECODER(iq3_xxs, iq3_xxs, blk_iq3_xxs, QK_K)
QL_GGML_ROWS_DECODER(iq3_s, iq3_s, blk_iq3_s, QK_K)
QL_GGML_ROWS_DECODER(iq1_s, iq1_s, blk_iq1_s, QK_K)
QL_GGML_ROWS_DECODER(iq1_m, iq1_m, blk_iq1_m, QK_K)
