/* int_quants_ref.c — scalar reference of the INTn row codec (see kernels/int_quants.h). The rules
 * (rounding, symmetric/asymmetric ranges, NaN/Inf handling) are spelled out in formats/fmt_int.c. */
#include "kernels/int_quants.h"


static ql_int_group_param choose_group(const float *x, int64_t len, const float *w, int bits, bool sym, bool mse) {
    int maxq = (1 << bits) - 1;
    float lo = 0.0f, hi = 0.0f, m = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        float v = x[i];
        if (!isfinite(v)) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        if (fabsf(v) > fabsf(m)) m = v;
    }
    ql_int_group_param best = ql_int_params_for(1.0f, lo, hi, m, bits, sym);
    if (!mse) return best;
    double best_err = INFINITY;
    for (int k = 0; k < QL_INT_MSE_STEPS; k++) {
        float p = (float)(100 - k) / 100.0f;
        ql_int_group_param gp = k == 0 ? best : ql_int_params_for(p, lo, hi, m, bits, sym);
        float id = gp.scale != 0.0f ? 1.0f / gp.scale : 0.0f;
        double err = 0.0;
        for (int64_t i = 0; i < len; i++) {
            if (!isfinite(x[i])) continue;
            float y = (float)(ql_int_code(x[i], id, gp.zero, maxq) - gp.zero) * gp.scale;
            double d = (double)y - x[i];
            err += (w ? w[i] : 1.0) * d * d;
        }
        if (err < best_err) {
            best_err = err;
            best = gp;
        }
    }
    return best;
}

/* ---- rows ---- */

int64_t ql_int_row_bytes(int64_t ncols, int bits, int group, bool sym) {
    if (ncols <= 0 || bits < 1 || bits > 8 || ncols > INT64_MAX / 16) return -1;
    int64_t g = group > 0 ? group : ncols;
    int64_t ng = (ncols + g - 1) / g;
    return 2 * ng + (sym ? 0 : ql_bits_to_bytes(ng * bits)) + ql_bits_to_bytes(ncols * bits);
}

void ql_int_quantize_rows_ref(const float *src, void *dst, int64_t nrows, int64_t ncols,
                              const float *importance, int bits, int group, bool sym, bool mse) {
    int64_t rb = ql_int_row_bytes(ncols, bits, group, sym);
    if (rb < 0) return;
    int64_t g = group > 0 ? group : ncols;
    int64_t ng = (ncols + g - 1) / g;
    int maxq = (1 << bits) - 1;
    for (int64_t r = 0; r < nrows; r++) {
        const float *x = src + r * ncols;
        uint8_t *row = (uint8_t *)dst + r * rb;
        memset(row, 0, (size_t)rb);
        uint8_t *zeros = row + 2 * ng;
        uint8_t *codes = zeros + (sym ? 0 : ql_bits_to_bytes(ng * bits));
        for (int64_t k = 0; k < ng; k++) {
            int64_t c0 = k * g, len = QL_MIN(g, ncols - c0);
            ql_int_group_param gp = choose_group(x + c0, len, importance ? importance + c0 : NULL, bits, sym, mse);
            ql_put_f16le(row + 2 * k, gp.scale_h);
            if (!sym) ql_bits_or(zeros, k * bits, bits, (unsigned)gp.zero);
            float id = gp.scale != 0.0f ? 1.0f / gp.scale : 0.0f;
            if (bits == 8) /* whole bytes: no bit packing */
                for (int64_t i = 0; i < len; i++) codes[c0 + i] = (uint8_t)ql_int_code(x[c0 + i], id, gp.zero, maxq);
            else
                for (int64_t i = 0; i < len; i++)
                    ql_bits_or(codes, (c0 + i) * bits, bits, (unsigned)ql_int_code(x[c0 + i], id, gp.zero, maxq));
        }
    }
}

void ql_int_dequantize_rows_ref(const void *src, float *dst, int64_t nrows, int64_t ncols, int bits,
                                int group, bool sym) {
    int64_t rb = ql_int_row_bytes(ncols, bits, group, sym);
    if (rb < 0) return;
    int64_t g = group > 0 ? group : ncols;
    int64_t ng = (ncols + g - 1) / g;
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = (const uint8_t *)src + r * rb;
        const uint8_t *zeros = row + 2 * ng;
        const uint8_t *codes = zeros + (sym ? 0 : ql_bits_to_bytes(ng * bits));
        float *y = dst + r * ncols;
        for (int64_t k = 0; k < ng; k++) {
            int64_t c0 = k * g, len = QL_MIN(g, ncols - c0);
            float s = ql_fp16_to_fp32(ql_get_f16le(row + 2 * k));
            int zero = sym ? 1 << (bits - 1) : (int)ql_bits_get(zeros, k * bits, bits);
            for (int64_t i = 0; i < len; i++)
                y[c0 + i] = (float)((int)ql_bits_get(codes, (c0 + i) * bits, bits) - zero) * s;
        }
    }
}
