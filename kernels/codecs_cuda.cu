// codecs_cuda.cu — CUDA dequantize and quantize kernels for ggml's block formats (quantize: Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS on ggml's no-imatrix path; the same types with importance as GPTQ's
// block fix, ql_cuda_grid_fix_*), bit-exact with kernels/ggml_quants_ref.c. API: cuda_api.h.
// Exactness: the per-block code below is __host__ __device__ and mirrors the reference statement by
// statement; every float add/sub/mul/div goes through fa/fs/fm/fd (the _rn intrinsics on the device,
// which nvcc never contracts into FMA), fp16 conversions are the reference's bit code, and float->int
// casts reproduce x86's cvttss2si (out of range or NaN -> INT_MIN) as the reference gets it from gcc.
// Threads: dequantize = one thread per output element (grid-stride), quantize = one thread per block.
#include "kernels/cuda_api.h"
#include "kernels/blocks.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_half.cuh" /* h2f, f2h */
#include "kernels/iq_tables.h"

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>

#define GROUP_MAX_EPS 1e-15f

using namespace ql_cuda;

// ---------------------------------------------------------------------------------------------------
// Arithmetic: IEEE round-to-nearest, unfused, with x86's NaN results on the device (cuda_common.cuh)
// ---------------------------------------------------------------------------------------------------
static QL_HD float fa(float a, float b) { return as_x86(add_rn(a, b), a, b); }
static QL_HD float fs(float a, float b) { return as_x86(sub_rn(a, b), a, b); }
static QL_HD float fm(float a, float b) { return as_x86(mul_rn(a, b), a, b); }
static QL_HD float fd(float a, float b) { return as_x86(div_rn(a, b), a, b); }
static QL_HD float fsqrt(float a) { return as_x86(sqrt_rn(a), a, a); }

// The scale searches are called, not inlined (QL_HD forces inlining): inlined into every quantize kernel and
// again into GPTQ's block-fix kernels, they took qlab's fat binary from 4.3 to 8.7 MB (6.3 MB called), all of
// it mapped before main (cli_test's tight ulimit -v run). The arithmetic is the same either way (every
// operation is an _rn intrinsic).
#define QL_HD_SEARCH __host__ __device__ __noinline__

static QL_HD int nearest_int(float fval) {
    const float val = fa(fval, 12582912.f);
    const int32_t i = (int32_t)f2u(val);
    return (i & 0x007fffff) - 0x00400000;
}

static QL_HD uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static QL_HD void st16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static QL_HD int imin(int a, int b) { return a < b ? a : b; }
static QL_HD int imax(int a, int b) { return a > b ? a : b; }

__constant__ int8_t d_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                           1,    13,   25,  38,  53,  69,  89,  113};
static QL_HD int kvalue_iq4nl(int i) {
#ifdef __CUDA_ARCH__
    return d_kvalues_iq4nl[i];
#else
    static const int8_t h_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                               1,    13,   25,  38,  53,  69,  89,  113};
    return h_kvalues_iq4nl[i];
#endif
}

static QL_HD void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

// ---------------------------------------------------------------------------------------------------
// Dequantize: element j of one block. Fields are read at their offsets in kernels/blocks.h's structs,
// byte by byte (ld16), so a block needs no alignment.
// ---------------------------------------------------------------------------------------------------
struct F16 {
    static const int QK = 1, BYTES = 2;
    static QL_HD float elem(const uint8_t *b, int) { return h2f(ld16(b)); }
};
struct BF16 {
    static const int QK = 1, BYTES = 2;
    static QL_HD float elem(const uint8_t *b, int) { return u2f((uint32_t)ld16(b) << 16); }
};
struct Q4_0 {
    typedef blk_q4_0 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int j) {
        const uint8_t *qs = b + offsetof(B, qs);
        const int x = j < 16 ? (qs[j] & 0x0F) - 8 : (qs[j - 16] >> 4) - 8;
        return fm((float)x, h2f(ld16(b + offsetof(B, d))));
    }
};
struct Q4_1 {
    typedef blk_q4_1 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int j) {
        const uint8_t *qs = b + offsetof(B, qs);
        const int x = j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4;
        return fa(fm((float)x, h2f(ld16(b + offsetof(B, d)))), h2f(ld16(b + offsetof(B, m))));
    }
};
static QL_HD int q5_value(const uint8_t *qh4, const uint8_t *qs, int j) {
    const uint32_t qh =
        (uint32_t)qh4[0] | ((uint32_t)qh4[1] << 8) | ((uint32_t)qh4[2] << 16) | ((uint32_t)qh4[3] << 24);
    if (j < 16) return (qs[j] & 0x0F) | (int)(((qh >> j) << 4) & 0x10);
    return (qs[j - 16] >> 4) | (int)((qh >> (j - 16 + 12)) & 0x10);
}
struct Q5_0 {
    typedef blk_q5_0 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int j) {
        return fm((float)(q5_value(b + offsetof(B, qh), b + offsetof(B, qs), j) - 16), h2f(ld16(b + offsetof(B, d))));
    }
};
struct Q5_1 {
    typedef blk_q5_1 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int j) {
        return fa(fm((float)q5_value(b + offsetof(B, qh), b + offsetof(B, qs), j), h2f(ld16(b + offsetof(B, d)))),
                  h2f(ld16(b + offsetof(B, m))));
    }
};
struct Q8_0 {
    typedef blk_q8_0 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int j) {
        return fm((float)(int8_t)b[offsetof(B, qs) + j], h2f(ld16(b + offsetof(B, d))));
    }
};
struct Q2_K {
    typedef blk_q2_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int e) {
        const int half = e >> 7, r = e & 127, j = r >> 5, sub = (r >> 4) & 1, l = r & 15;
        const uint8_t sc = b[offsetof(B, scales) + half * 8 + j * 2 + sub];
        const float dl = fm(h2f(ld16(b + offsetof(B, d))), (float)(sc & 0xF)),
                    ml = fm(h2f(ld16(b + offsetof(B, dmin))), (float)(sc >> 4));
        const int q = (b[offsetof(B, qs) + half * 32 + sub * 16 + l] >> (2 * j)) & 3;
        return fs(fm(dl, (float)q), ml);
    }
};
struct Q3_K {
    typedef blk_q3_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int e) {
        const int half = e >> 7, r = e & 127, j = r >> 5, sub = (r >> 4) & 1, l = r & 15;
        const int is = half * 8 + j * 2 + sub;
        const uint8_t *s = b + offsetof(B, scales);
        const int lo = is < 8 ? s[is] & 0xF : s[is - 8] >> 4;
        const int hi = (s[8 + (is & 3)] >> (2 * (is >> 2))) & 3;
        const float dl = fm(h2f(ld16(b + offsetof(B, d))), (float)((lo | (hi << 4)) - 32));
        const int q = (b[offsetof(B, qs) + half * 32 + sub * 16 + l] >> (2 * j)) & 3;
        const int m = 1 << (half * 4 + j);
        return fm(dl, (float)(q - ((b[offsetof(B, hmask) + sub * 16 + l] & m) ? 0 : 4)));
    }
};
struct Q4_K {
    typedef blk_q4_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int e) {
        const int c = e >> 6, hi = (e >> 5) & 1, l = e & 31;
        uint8_t sc, m;
        get_scale_min_k4(2 * c + hi, b + offsetof(B, scales), &sc, &m);
        const float d1 = fm(h2f(ld16(b + offsetof(B, d))), (float)sc),
                    m1 = fm(h2f(ld16(b + offsetof(B, dmin))), (float)m);
        const uint8_t q = b[offsetof(B, qs) + 32 * c + l];
        return fs(fm(d1, (float)(hi ? q >> 4 : q & 0xF)), m1);
    }
};
struct Q5_K {
    typedef blk_q5_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int e) {
        const int c = e >> 6, hi = (e >> 5) & 1, l = e & 31;
        uint8_t sc, m;
        get_scale_min_k4(2 * c + hi, b + offsetof(B, scales), &sc, &m);
        const float d1 = fm(h2f(ld16(b + offsetof(B, d))), (float)sc),
                    m1 = fm(h2f(ld16(b + offsetof(B, dmin))), (float)m);
        const uint8_t q = b[offsetof(B, qs) + 32 * c + l];
        const int v = (hi ? q >> 4 : q & 0xF) + ((b[offsetof(B, qh) + l] & (1 << (2 * c + hi))) ? 16 : 0);
        return fs(fm(d1, (float)v), m1);
    }
};
struct Q6_K {
    typedef blk_q6_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int e) {
        const int half = e >> 7, quarter = (e >> 5) & 3, l = e & 31;
        const uint8_t *ql = b + offsetof(B, ql) + 64 * half;
        const uint8_t qh = b[offsetof(B, qh) + 32 * half + l];
        const int8_t sc = (int8_t)b[offsetof(B, scales) + 8 * half + (l >> 4) + 2 * quarter];
        const int lo = quarter & 1 ? ql[l + 32] : ql[l];
        const int q = ((quarter & 2 ? lo >> 4 : lo & 0xF) | (((qh >> (2 * quarter)) & 3) << 4)) - 32;
        return fm(fm(h2f(ld16(b + offsetof(B, d))), (float)sc), (float)q);
    }
};
struct IQ4_NL {
    typedef blk_iq4_nl B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int j) {
        const uint8_t *qs = b + offsetof(B, qs);
        const int v = j < 16 ? qs[j] & 0xf : qs[j - 16] >> 4;
        return fm(h2f(ld16(b + offsetof(B, d))), (float)kvalue_iq4nl(v));
    }
};
struct IQ4_XS {
    typedef blk_iq4_xs B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib = e >> 5, j = e & 31;
        const int ls = ((b[offsetof(B, scales_l) + ib / 2] >> 4 * (ib % 2)) & 0xf) |
                       (((ld16(b + offsetof(B, scales_h)) >> 2 * ib) & 3) << 4);
        const float dl = fm(h2f(ld16(b + offsetof(B, d))), (float)(ls - 32));
        const uint8_t q = b[offsetof(B, qs) + 16 * ib + (j & 15)];
        return fm(dl, (float)kvalue_iq4nl(j < 16 ? q & 0xf : q >> 4));
    }
};

// ---------------------------------------------------------------------------------------------------
// Quantize: one block (ggml's no-imatrix path)
// ---------------------------------------------------------------------------------------------------
struct Q8_0Q {
    typedef blk_q8_0 B;
    static const int QK = 32, BYTES = sizeof(B);
    // ggml's Q8_0 quantizer takes no importance: the fix is the plain quantizer
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        (void)qw;
        quant(x, y);
    }
    static QL_HD void quant(const float *x, uint8_t *y) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float a = fabs_bits(x[j]);
            amax = amax > a ? amax : a;
        }
        const float d = fd(amax, 127.f);
        const float id = d != 0.0f ? fd(1.0f, d) : 0.0f;
        st16(y + offsetof(B, d), f2h(d));
        for (int j = 0; j < 32; ++j) y[offsetof(B, qs) + j] = (uint8_t)(int8_t)cvtt_x86(round_away(fm(x[j], id)));
    }
};

struct Q4_0Q {
    typedef blk_q4_0 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = x[j];
            if (amax < fabs_bits(v)) {
                amax = fabs_bits(v);
                max = v;
            }
        }
        const float d = fd(max, -8.f);
        const float id = d != 0.0f ? fd(1.0f, d) : 0.0f;
        st16(y + offsetof(B, d), f2h(d));
        for (int j = 0; j < 16; ++j) {
            const int xi0 = imin(15, (int8_t)cvtt_x86(fa(fm(x[j], id), 8.5f)));
            const int xi1 = imin(15, (int8_t)cvtt_x86(fa(fm(x[16 + j], id), 8.5f)));
            y[offsetof(B, qs) + j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
};

// make_qkx2_quants (ggml-quants.c), the (scale, min) search of Q4_K without imatrix
static QL_HD_SEARCH float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                             float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                             bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = fm(sum_w, x[0]);
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w = fa(sum_w, w);
        sum_x = fa(sum_x, fm(w, x[i]));
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = fneg(min);
        return 0.f;
    }
    float iscale = fd((float)nmax, fs(max, min));
    float scale = fd(1.0f, iscale);
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(fm(iscale, fs(x[i], min)));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = fs(fa(fm(scale, (float)L[i]), min), x[i]);
        diff = use_mad ? fabs_bits(diff) : fm(diff, diff);
        best_error = fa(best_error, fm(weights[i], diff));
    }
    if (nstep < 1) {
        *the_min = fneg(min);
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = fd(fa(fa(rmin, fm(rdelta, (float)is)), (float)nmax), fs(max, min));
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(fm(iscale, fs(x[i], min)));
            l = imax(0, imin(nmax, l));
            Laux[i] = (uint8_t)l;
            const float wl = fm(weights[i], (float)l);
            sum_l = fa(sum_l, wl);
            sum_l2 = fa(sum_l2, fm(wl, (float)l));
            sum_xl = fa(sum_xl, fm(wl, x[i]));
        }
        const float D = fs(fm(sum_w, sum_l2), fm(sum_l, sum_l));
        if (D > 0) {
            float this_scale = fd(fs(fm(sum_w, sum_xl), fm(sum_x, sum_l)), D);
            float this_min = fd(fs(fm(sum_l2, sum_x), fm(sum_l, sum_xl)), D);
            if (this_min > 0) {
                this_min = 0;
                this_scale = fd(sum_xl, sum_l2);
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = fs(fa(fm(this_scale, (float)Laux[i]), this_min), x[i]);
                diff = use_mad ? fabs_bits(diff) : fm(diff, diff);
                cur_error = fa(cur_error, fm(weights[i], diff));
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = fneg(min);
    return scale;
}

static QL_HD void k4_put_scale_min(uint8_t *scales, int j, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

// make_qkx3_quants (ggml-quants.c): the (scale, min) search of the imatrix path (Q4_K/Q5_K with
// importance: GPTQ's block fix); weights never NULL here
static QL_HD_SEARCH float make_qkx3_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                                    float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = fm(sum_w, x[0]);
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w = fa(sum_w, w);
        sum_x = fa(sum_x, fm(w, x[i]));
    }
    if (min > 0) min = 0;
    if (max <= min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = fneg(min);
        return 0.f;
    }
    float iscale = fd((float)nmax, fs(max, min));
    float scale = fd(1.0f, iscale);
    float best_mad = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(fm(iscale, fs(x[i], min)));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = fs(fa(fm(scale, (float)L[i]), min), x[i]);
        diff = fm(diff, diff);
        best_mad = fa(best_mad, fm(weights[i], diff));
    }
    if (nstep < 1) {
        *the_min = fneg(min);
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = fd(fa(fa(rmin, fm(rdelta, (float)is)), (float)nmax), fs(max, min));
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            // min moves to the best fit so far, so v may be out of nearest_int's range: clamp first
            const float v = fm(iscale, fs(x[i], min));
            const int l = v > 0 ? nearest_int(v < (float)nmax ? v : (float)nmax) : 0;
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l = fa(sum_l, fm(w, (float)l));
            sum_l2 = fa(sum_l2, fm(fm(w, (float)l), (float)l));
            sum_xl = fa(sum_xl, fm(fm(w, (float)l), x[i]));
        }
        const float D = fs(fm(sum_w, sum_l2), fm(sum_l, sum_l));
        if (D > 0) {
            float this_scale = fd(fs(fm(sum_w, sum_xl), fm(sum_x, sum_l)), D);
            float this_min = fd(fs(fm(sum_l2, sum_x), fm(sum_l, sum_xl)), D);
            if (this_min > 0) {
                this_min = 0;
                this_scale = fd(sum_xl, sum_l2);
            }
            float mad = 0;
            for (int i = 0; i < n; ++i) {
                float diff = fs(fa(fm(this_scale, (float)Laux[i]), this_min), x[i]);
                diff = fm(diff, diff);
                mad = fa(mad, fm(weights[i], diff));
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = fneg(min);
    return scale;
}

// ql_ggml_make_qp_quants (ggml's make_qp_quants): non-negative sub-block scales or mins onto 0..nmax with
// weights, the imatrix K-quants' super-block step
static QL_HD_SEARCH float make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *quant_weights) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = fd((float)nmax, max);
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)nearest_int(fm(iscale, x[i]));
    const float scale = fd(1.0f, iscale);
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        const float diff = fs(x[i], fm(scale, (float)L[i]));
        best_mse = fa(best_mse, fm(fm(quant_weights[i], diff), diff));
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = fd(fa(fm(0.1f, (float)is), (float)nmax), max);
        const float scale_is = fd(1.0f, iscale_is);
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            const int l = imin(nmax, nearest_int(fm(iscale_is, x[i])));
            const float diff = fs(x[i], fm(scale_is, (float)l));
            mse = fa(mse, fm(fm(quant_weights[i], diff), diff));
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = imin(nmax, nearest_int(fm(iscale, x[i])));
        L[i] = (uint8_t)l;
        const float w = quant_weights[i];
        sumlx = fa(sumlx, fm(fm(w, x[i]), (float)l));
        suml2 = fa(suml2, fm(fm(w, (float)l), (float)l));
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = quant_weights[i];
            float slx = fs(sumlx, fm(fm(w, x[i]), (float)L[i]));
            float sl2 = fs(suml2, fm(fm(w, (float)L[i]), (float)L[i]));
            if (slx > 0 && sl2 > 0) {
                const int new_l = imin(nmax, nearest_int(fd(fm(x[i], sl2), slx)));
                if (new_l != L[i]) {
                    slx = fa(slx, fm(fm(w, x[i]), (float)new_l));
                    sl2 = fa(sl2, fm(fm(w, (float)new_l), (float)new_l));
                    if (fm(fm(slx, slx), suml2) > fm(fm(sumlx, sumlx), sl2)) {
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
    return suml2 > 0.0f ? fd(sumlx, suml2) : 0.0f;
}

// Q4_K and Q5_K share everything but their level range and the no-imatrix search's constants
// (ggml_quants_ref.c: k45_rtn_scales / k45_imat_scales / ql_ggml_k45_pack_scales / k45_requant): one
// (scale, min) search per 32-column sub-block, the 6-bit packing of the 8 pairs into the 12 scale bytes
// with the super-block's d / dmin, then every level against the stored scales. qw (the block's 256
// importance values) NULL: ggml's no-imatrix path (make_qkx2_quants, rmin / nstep per format, the pairs
// scaled by their maxima); else the imatrix path (make_qkx3_quants, the pairs by make_qp_quants).
// sc12 is cleared first: the packing ORs the high bits of pairs 4..7 into bytes 0..7, which pairs 0..3
// have assigned by then, so the clear changes no byte (the reference leaves it out) — it keeps a block
// written into uninitialized memory well defined whatever the order.
struct K45Kind {
    int nmax;    // 15 (Q4_K) or 31 (Q5_K)
    float rmin;  // no-imatrix search's start: -1 (Q4_K) or -0.5 (Q5_K)
    int nstep;   // no-imatrix search's steps: 20 (Q4_K) or 15 (Q5_K)
};
static QL_HD_SEARCH void k45_quant(K45Kind k, const float *x, const float *qw, uint8_t *sc12, uint8_t *d_out,
                            uint8_t *dmin_out, uint8_t *L) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32], sw[QK_K / 32];
    float sigma2 = 0;
    if (qw) {
        float sum_x2 = 0;
        for (int l = 0; l < QK_K; ++l) sum_x2 = fa(sum_x2, fm(x[l], x[l]));
        sigma2 = fd(fm(2.0f, sum_x2), (float)QK_K);
    }
    for (int j = 0; j < QK_K / 32; ++j) {
        const float *xj = x + 32 * j;
        if (qw) {
            float sumw = 0;
            for (int l = 0; l < 32; ++l) weights[l] = fm(qw[32 * j + l], fsqrt(fa(sigma2, fm(xj[l], xj[l]))));
            for (int l = 0; l < 32; ++l) sumw = fa(sumw, weights[l]);
            sw[j] = sumw;
            scales[j] = make_qkx3_quants(32, k.nmax, xj, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
        } else {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 = fa(sum_x2, fm(xj[l], xj[l]));
            const float av_x = fsqrt(fd(sum_x2, 32.f));
            for (int l = 0; l < 32; ++l) weights[l] = fa(av_x, fabs_bits(xj[l]));
            scales[j] = make_qkx2_quants(32, k.nmax, xj, weights, L + 32 * j, &mins[j], Laux, k.rmin, 0.1f,
                                         k.nstep, false);
        }
    }
    for (int j = 0; j < 12; ++j) sc12[j] = 0;
    uint16_t d16, dmin16;
    if (qw) {
        uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
        const float d_block = make_qp_quants(QK_K / 32, 63, scales, Ls, sw);
        const float m_block = make_qp_quants(QK_K / 32, 63, mins, Lm, sw);
        for (int j = 0; j < QK_K / 32; ++j)
            k4_put_scale_min(sc12, j, Ls[j] < 63 ? Ls[j] : 63, Lm[j] < 63 ? Lm[j] : 63);
        d16 = f2h(d_block);
        dmin16 = f2h(m_block);
    } else {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 32; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        const float inv_scale = max_scale > 0 ? fd(63.f, max_scale) : 0.f;
        const float inv_min = max_min > 0 ? fd(63.f, max_min) : 0.f;
        for (int j = 0; j < QK_K / 32; ++j) {
            uint8_t ls = (uint8_t)nearest_int(fm(inv_scale, scales[j]));
            uint8_t lm = (uint8_t)nearest_int(fm(inv_min, mins[j]));
            ls = ls < 63 ? ls : 63;
            lm = lm < 63 ? lm : 63;
            k4_put_scale_min(sc12, j, ls, lm);
        }
        d16 = f2h(fd(max_scale, 63.f));
        dmin16 = f2h(fd(max_min, 63.f));
    }
    st16(d_out, d16);
    st16(dmin_out, dmin16);
    for (int j = 0; j < QK_K / 32; ++j) { // k45_requant
        uint8_t sc, m;
        get_scale_min_k4(j, sc12, &sc, &m);
        const float d = fm(h2f(d16), (float)sc);
        if (d == 0.0f) continue;
        const float dm = fm(h2f(dmin16), (float)m);
        for (int ii = 0; ii < 32; ++ii) {
            const int l = nearest_int(fd(fa(x[32 * j + ii], dm), d));
            L[32 * j + ii] = (uint8_t)imax(0, imin(k.nmax, l));
        }
    }
}

static QL_HD void q4_k_pack_levels(const uint8_t *L, uint8_t *q) {
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}

static QL_HD void q5_k_pack_levels(const uint8_t *L, uint8_t *qh, uint8_t *ql) {
    for (int k = 0; k < QK_K / 8; ++k) qh[k] = 0;
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
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
        ql += 32;
    }
}

// qw: the block's 256 importance values, or NULL (ggml's no-imatrix path)
struct Q4_KQ {
    typedef blk_q4_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        uint8_t L[QK_K];
        k45_quant(K45Kind{15, -1.f, 20}, x, qw, y + offsetof(B, scales), y + offsetof(B, d), y + offsetof(B, dmin),
                  L);
        q4_k_pack_levels(L, y + offsetof(B, qs));
    }
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
};

// make_qx_quants with rmse_type 1: weights qw, or x^2 when qw is NULL (Q6_K without imatrix; the
// imatrix path passes the raw importance, no sigma2 term)
static QL_HD_SEARCH float make_qx_quants_rmse1(int n, int nmax, const float *x, int8_t *L, const float *qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabs_bits(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = fd((float)-nmax, max);
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(fm(iscale, x[i]));
        l = imax(-nmax, imin(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        const float w = qw ? qw[i] : fm(x[i], x[i]);
        sumlx = fa(sumlx, fm(fm(w, x[i]), (float)l));
        suml2 = fa(suml2, fm(fm(w, (float)l), (float)l));
    }
    float scale = suml2 != 0.0f ? fd(sumlx, suml2) : 0.0f;
    float best = fm(scale, sumlx);
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = fd(fneg(fa((float)nmax, fm(0.1f, (float)is))), max);
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(fm(iscale, x[i]));
            l = imax(-nmax, imin(nmax - 1, l));
            const float w = qw ? qw[i] : fm(x[i], x[i]);
            sumlx = fa(sumlx, fm(fm(w, x[i]), (float)l));
            suml2 = fa(suml2, fm(fm(w, (float)l), (float)l));
        }
        if (suml2 > 0 && fm(sumlx, sumlx) > fm(best, suml2)) {
            for (int i = 0; i < n; ++i) {
                const int l = nearest_int(fm(iscale, x[i]));
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
            }
            scale = fd(sumlx, suml2);
            best = fm(scale, sumlx);
        }
    }
    return scale;
}

struct Q6_KQ {
    typedef blk_q6_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
    // qw: the block's 256 importance values, or NULL (ggml's no-imatrix path)
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        int8_t L[QK_K];
        float scales[QK_K / 16];
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float scale = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + 16 * ib : nullptr);
            scales[ib] = scale;
            const float abs_scale = fabs_bits(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            for (int i = 0; i < BYTES; ++i) y[i] = 0;
            st16(y + offsetof(B, d), f2h(0.f));
            return;
        }
        const float iscale = fd(-128.f, max_scale);
        const uint16_t d16 = f2h(fd(1.0f, iscale));
        st16(y + offsetof(B, d), d16);
        int8_t *ysc = (int8_t *)(y + offsetof(B, scales));
        for (int ib = 0; ib < QK_K / 16; ++ib)
            ysc[ib] = (int8_t)imin(127, nearest_int(fm(iscale, scales[ib])));
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fm(h2f(d16), (float)ysc[j]);
            if (d == 0.0f) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(fd(x[16 * j + ii], d));
                l = imax(-32, imin(31, l));
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        uint8_t *ql = y + offsetof(B, ql), *qh = y + offsetof(B, qh);
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
            ql += 64;
            qh += 32;
        }
    }
};

// ---- the remaining ggml quantizers (issue 16): Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, each
// the reference's no-imatrix path statement by statement (kernels/ggml_quants_ref.c) ----
static QL_HD void pack_q5_dev(const uint8_t *L, uint8_t *qs, uint8_t *qh_out) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = L[j], xi1 = L[j + 16];
        qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; ++k) qh_out[k] = (uint8_t)(qh >> (8 * k));
}

// min and max of 32 values as the reference finds them (NaN never wins a comparison)
static QL_HD void minmax32(const float *x, float *mn, float *mx) {
    float min = 3.40282347e+38f, max = -3.40282347e+38f;
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    *mn = min;
    *mx = max;
}
// the value of largest magnitude, first one on ties
static QL_HD float absmax_signed(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (amax < fabs_bits(x[j])) {
            amax = fabs_bits(x[j]);
            max = x[j];
        }
    return max;
}

struct Q4_1Q {
    typedef blk_q4_1 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) {
        float min, max;
        minmax32(x, &min, &max);
        const float d = fd(fs(max, min), 15.f);
        const float id = d != 0.0f ? fd(1.0f, d) : 0.0f;
        st16(y + offsetof(B, d), f2h(d));
        st16(y + offsetof(B, m), f2h(min));
        for (int j = 0; j < 16; ++j) {
            const int xi0 = imin(15, (int8_t)cvtt_x86(fa(fm(fs(x[j], min), id), 0.5f)));
            const int xi1 = imin(15, (int8_t)cvtt_x86(fa(fm(fs(x[16 + j], min), id), 0.5f)));
            y[offsetof(B, qs) + j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
};

struct Q5_0Q {
    typedef blk_q5_0 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) {
        uint8_t L[32];
        const float d = fd(absmax_signed(x, 32), -16.f);
        const float id = d != 0.0f ? fd(1.0f, d) : 0.0f;
        st16(y + offsetof(B, d), f2h(d));
        for (int j = 0; j < 32; ++j) L[j] = (uint8_t)imin(31, (int8_t)cvtt_x86(fa(fm(x[j], id), 16.5f)));
        pack_q5_dev(L, y + offsetof(B, qs), y + offsetof(B, qh));
    }
};

struct Q5_1Q {
    typedef blk_q5_1 B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) {
        uint8_t L[32];
        float min, max;
        minmax32(x, &min, &max);
        const float d = fd(fs(max, min), 31.f);
        const float id = d != 0.0f ? fd(1.0f, d) : 0.0f;
        st16(y + offsetof(B, d), f2h(d));
        st16(y + offsetof(B, m), f2h(min));
        for (int j = 0; j < 32; ++j) L[j] = (uint8_t)cvtt_x86(fa(fm(fs(x[j], min), id), 0.5f));
        pack_q5_dev(L, y + offsetof(B, qs), y + offsetof(B, qh));
    }
};

static QL_HD void pack_2bit_dev(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] =
                (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// ---- the legacy 32-blocks with importance (ggml_quants_ref.c: quantize_row_q4_0 .. q5_1 with an imatrix),
// GPTQ's block fix: weights qw·sqrt(σ² + x²) with σ² = Σx²/n over what the quantizer is given (one block
// here, as ql_grid_fix gives the registry's quantizer); Q8_0 has no importance path ----
static QL_HD void legacy_weights(const float *x, const float *qw, float *weight) {
    float sum_x2 = 0;
    for (int j = 0; j < 32; ++j) sum_x2 = fa(sum_x2, fm(x[j], x[j]));
    const float sigma2 = fd(sum_x2, 32.f);
    for (int j = 0; j < 32; ++j) weight[j] = fm(qw[j], fsqrt(fa(sigma2, fm(x[j], x[j]))));
}

struct Q4_0QW : Q4_0Q {
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        if (!qw) return quant(x, y);
        float weight[32];
        int8_t L[32];
        legacy_weights(x, qw, weight);
        st16(y + offsetof(B, d), f2h(make_qx_quants_rmse1(32, 8, x, L, weight)));
        for (int j = 0; j < 16; ++j) y[offsetof(B, qs) + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
};

struct Q5_0QW : Q5_0Q {
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        if (!qw) return quant(x, y);
        float weight[32];
        int8_t L[32];
        legacy_weights(x, qw, weight);
        st16(y + offsetof(B, d), f2h(make_qx_quants_rmse1(32, 16, x, L, weight)));
        pack_q5_dev((const uint8_t *)L, y + offsetof(B, qs), y + offsetof(B, qh));
    }
};

struct Q4_1QW : Q4_1Q {
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        if (!qw) return quant(x, y);
        float weight[32], min;
        uint8_t L[32], Laux[32];
        legacy_weights(x, qw, weight);
        const float d = make_qkx3_quants(32, 15, x, weight, L, &min, Laux, -0.9f, 0.05f, 36);
        st16(y + offsetof(B, d), f2h(d));
        st16(y + offsetof(B, m), f2h(fneg(min)));
        for (int j = 0; j < 16; ++j) y[offsetof(B, qs) + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
};

struct Q5_1QW : Q5_1Q {
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        if (!qw) return quant(x, y);
        float weight[32], min;
        uint8_t L[32], Laux[32];
        legacy_weights(x, qw, weight);
        const float d = make_qkx3_quants(32, 31, x, weight, L, &min, Laux, -0.9f, 0.05f, 36);
        st16(y + offsetof(B, d), f2h(d));
        st16(y + offsetof(B, m), f2h(fneg(min)));
        pack_q5_dev(L, y + offsetof(B, qs), y + offsetof(B, qh));
    }
};

struct Q2_KQ {
    typedef blk_q2_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
    // qw: the block's 256 importance values (q2_K_imat), or NULL (ggml's no-imatrix path)
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        uint8_t L[QK_K], Laux[16];
        float weights[16], mins[QK_K / 16], scales[QK_K / 16];
        uint8_t *sc = y + offsetof(B, scales);
        if (qw) {
            float sw[QK_K / 16], sumx2 = 0;
            for (int j = 0; j < QK_K; ++j) sumx2 = fa(sumx2, fm(x[j], x[j]));
            const float sigma2 = fd(sumx2, (float)QK_K);
            for (int j = 0; j < QK_K / 16; ++j) {
                const float *xj = x + 16 * j;
                for (int l = 0; l < 16; ++l) weights[l] = fm(qw[16 * j + l], fsqrt(fa(sigma2, fm(xj[l], xj[l]))));
                sw[j] = 0;
                for (int l = 0; l < 16; ++l) sw[j] = fa(sw[j], weights[l]);
                scales[j] = make_qkx3_quants(16, 3, xj, weights, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
            }
            uint8_t Ls[QK_K / 16], Lm[QK_K / 16]; // ql_ggml_q2_K_pack_scales, imatrix
            const float dm = make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
            const float mm = make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
            st16(y + offsetof(B, d), f2h(dm));
            st16(y + offsetof(B, dmin), f2h(mm));
            for (int j = 0; j < QK_K / 16; ++j) sc[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
            q2_k_requant(x, y, L);
            return;
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabs_bits(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15,
                                         true);
        }
        // ql_ggml_q2_K_pack_scales, no imatrix
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = fd(15.f, max_scale);
            for (int j = 0; j < QK_K / 16; ++j) sc[j] = (uint8_t)nearest_int(fm(iscale, scales[j]));
            st16(y + offsetof(B, d), f2h(fd(max_scale, 15.f)));
        } else {
            for (int j = 0; j < QK_K / 16; ++j) sc[j] = 0;
            st16(y + offsetof(B, d), f2h(0.f));
        }
        if (max_min > 0) {
            const float iscale = fd(15.f, max_min);
            for (int j = 0; j < QK_K / 16; ++j) {
                const int l = nearest_int(fm(iscale, mins[j]));
                sc[j] |= (uint8_t)((unsigned)l << 4);
            }
            st16(y + offsetof(B, dmin), f2h(fd(max_min, 15.f)));
        } else {
            st16(y + offsetof(B, dmin), f2h(0.f));
        }
        q2_k_requant(x, y, L);
    }
    // the levels against the stored scales, then packed (both paths: the same statements in the reference)
    static QL_HD void q2_k_requant(const float *x, uint8_t *y, uint8_t *L) {
        const uint8_t *sc = y + offsetof(B, scales);
        const float d0 = h2f(ld16(y + offsetof(B, d))), dmin0 = h2f(ld16(y + offsetof(B, dmin)));
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fm(d0, (float)(sc[j] & 0xF));
            if (d == 0.0f) continue;
            const float dm = fm(dmin0, (float)(sc[j] >> 4));
            for (int ii = 0; ii < 16; ++ii) {
                const int l = nearest_int(fd(fa(x[16 * j + ii], dm), d));
                L[16 * j + ii] = (uint8_t)imax(0, imin(3, l));
            }
        }
        pack_2bit_dev(L, y + offsetof(B, qs));
    }
};

// make_q3_quants with do_rmse (Q3_K without imatrix)
static QL_HD_SEARCH float make_q3_quants_rmse(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabs_bits(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    const float iscale = fd((float)-nmax, max);
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(fm(iscale, x[i]));
        l = imax(-nmax, imin(nmax - 1, l));
        L[i] = (int8_t)l;
        const float w = fm(x[i], x[i]);
        sumlx = fa(sumlx, fm(fm(w, x[i]), (float)l));
        suml2 = fa(suml2, fm(fm(w, (float)l), (float)l));
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = fm(x[i], x[i]);
            float slx = fs(sumlx, fm(fm(w, x[i]), (float)L[i]));
            if (slx > 0) {
                float sl2 = fs(suml2, fm(fm(w, (float)L[i]), (float)L[i]));
                int new_l = nearest_int(fd(fm(x[i], sl2), slx));
                new_l = imax(-nmax, imin(nmax - 1, new_l));
                if (new_l != L[i]) {
                    slx = fa(slx, fm(fm(w, x[i]), (float)new_l));
                    sl2 = fa(sl2, fm(fm(w, (float)new_l), (float)new_l));
                    if (sl2 > 0 && fm(fm(slx, slx), suml2) > fm(fm(sumlx, sumlx), sl2)) {
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
    return suml2 > 0.0f ? fd(sumlx, suml2) : 0.0f;
}

static QL_HD void q3k_put_scale(uint8_t *scales, int j, int l) {
    if (j < 8)
        scales[j] = (uint8_t)(l & 0xF);
    else
        scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
    l >>= 4;
    scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
}

struct Q3_KQ {
    typedef blk_q3_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
    // qw: the block's 256 importance values (q3_K_imat), or NULL (ggml's no-imatrix path)
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        int8_t L[QK_K];
        float scales[QK_K / 16], sw[QK_K / 16];
        if (qw) {
            float weight[16], sumx2 = 0;
            for (int j = 0; j < QK_K; ++j) sumx2 = fa(sumx2, fm(x[j], x[j]));
            const float sigma2 = fd(fm(2.0f, sumx2), (float)QK_K);
            for (int j = 0; j < QK_K / 16; ++j) {
                const float *xj = x + 16 * j;
                for (int l = 0; l < 16; ++l) weight[l] = fm(qw[16 * j + l], fsqrt(fa(sigma2, fm(xj[l], xj[l]))));
                float sumw = 0;
                for (int l = 0; l < 16; ++l) sumw = fa(sumw, weight[l]);
                sw[j] = sumw;
                scales[j] = make_qx_quants_rmse1(16, 4, xj, L + 16 * j, weight);
            }
        } else {
            for (int j = 0; j < QK_K / 16; ++j) scales[j] = make_q3_quants_rmse(16, 4, x + 16 * j, L + 16 * j);
        }
        uint8_t *ys = y + offsetof(B, scales);
        for (int k = 0; k < 12; ++k) ys[k] = 0;
        if (qw) { // ql_ggml_q3_K_pack_scales, imatrix
            int8_t Ls[QK_K / 16];
            const float d_block = make_qx_quants_rmse1(QK_K / 16, 32, scales, Ls, sw);
            for (int j = 0; j < QK_K / 16; ++j) q3k_put_scale(ys, j, Ls[j]);
            st16(y + offsetof(B, d), f2h(d_block));
            q3_k_finish(x, y, L);
            return;
        }
        // ql_ggml_q3_K_pack_scales, no imatrix
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float scale = fabs_bits(scales[j]);
            if (scale > amax) {
                amax = scale;
                max_scale = scales[j];
            }
        }
        if (max_scale != 0.0f) {
            const float iscale = fd(-32.f, max_scale);
            for (int j = 0; j < QK_K / 16; ++j) {
                int8_t l = (int8_t)nearest_int(fm(iscale, scales[j]));
                l = (int8_t)(imax(-32, imin(31, l)) + 32);
                q3k_put_scale(ys, j, l);
            }
            st16(y + offsetof(B, d), f2h(fd(1.0f, iscale)));
        } else {
            st16(y + offsetof(B, d), f2h(0.f));
        }
        q3_k_finish(x, y, L);
    }
    // q3_K_finish: the levels against the stored 6-bit scales, then the high bits and packing
    static QL_HD void q3_k_finish(const float *x, uint8_t *y, int8_t *L) {
        const uint8_t *ys = y + offsetof(B, scales);
        const float d0 = h2f(ld16(y + offsetof(B, d)));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sc = j < 8 ? ys[j] & 0xF : ys[j - 8] >> 4;
            sc = (sc | (((ys[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
            const float d = fm(d0, (float)sc);
            if (d == 0.0f) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(fd(x[16 * j + ii], d));
                l = imax(-4, imin(3, l));
                L[16 * j + ii] = (int8_t)(l + 4);
            }
        }
        uint8_t *hmask = y + offsetof(B, hmask);
        for (int k = 0; k < QK_K / 8; ++k) hmask[k] = 0;
        int m = 0;
        uint8_t hm = 1;
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                hmask[m] |= hm;
                L[j] = (int8_t)(L[j] - 4);
            }
            if (++m == QK_K / 8) {
                m = 0;
                hm = (uint8_t)(hm << 1);
            }
        }
        pack_2bit_dev((const uint8_t *)L, y + offsetof(B, qs));
    }
};

struct Q5_KQ {
    typedef blk_q5_K B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        uint8_t L[QK_K];
        k45_quant(K45Kind{31, -0.5f, 15}, x, qw, y + offsetof(B, scales), y + offsetof(B, d), y + offsetof(B, dmin),
                  L);
        q5_k_pack_levels(L, y + offsetof(B, qh), y + offsetof(B, qs));
    }
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
};

// nearest of the 16 sorted IQ4_NL values (ties go up), as best_index_int8
static QL_HD int best_index_iq4nl(float x) {
    const float x2 = fa(x, x);
    int idx = 0;
    for (int step = 8; step > 0; step >>= 1) {
        const int j = idx + step;
        idx = (x2 >= (float)(kvalue_iq4nl(j - 1) + kvalue_iq4nl(j))) ? j : idx;
    }
    return idx;
}

// iq4_nl_impl: sbs = 32 (IQ4_NL) or 256 (IQ4_XS); qw the super-block's importance (weights qw·sqrt(σ² + x²),
// the imatrix path: GPTQ's fix) or NULL (weights x^2); NTRY 7 (the file quantizer) or -1 (ggml's cache write,
// quantize_row_iq4_nl_ref: the first scale of the other sign, no search)
template <int SBS, int NTRY = 7>
static QL_HD_SEARCH void iq4_quant_block(const float *x, const float *qw, uint8_t *dh, uint8_t *q4, uint8_t *scales_h,
                                  uint8_t *scales_l) {
    const int ntry = NTRY, v0 = kvalue_iq4nl(0);
    float scales[SBS / 32], weight[32];
    uint8_t L[SBS];
    float sigma2 = 0;
    if (qw) {
        for (int j = 0; j < SBS; ++j) sigma2 = fa(sigma2, fm(x[j], x[j]));
        sigma2 = fm(sigma2, fd(2.f, (float)SBS));
    }
    for (int k = 0; k < SBS / 2; ++k) q4[k] = 0;
    st16(dh, f2h(0.f));
    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < SBS / 32; ++ib) {
        const float *xb = x + ib * 32;
        uint8_t *Lb = L + ib * 32;
        if (qw) {
            for (int j = 0; j < 32; ++j) weight[j] = fm(qw[ib * 32 + j], fsqrt(fa(sigma2, fm(xb[j], xb[j]))));
        } else {
            for (int j = 0; j < 32; ++j) weight[j] = fm(xb[j], xb[j]);
        }
        float amax = 0, max = 0;
        for (int j = 0; j < 32; ++j) {
            const float ax = fabs_bits(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            scales[ib] = 0;
            for (int j = 0; j < 32; ++j) Lb[j] = 0;
            continue;
        }
        float d = ntry > 0 ? fd(fneg(max), (float)v0) : fd(max, (float)v0);
        float id = fd(1.0f, d);
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < 32; ++j) {
            const int l = best_index_iq4nl(fm(id, xb[j]));
            Lb[j] = (uint8_t)l;
            const float q = (float)kvalue_iq4nl(l), w = weight[j];
            sumqx = fa(sumqx, fm(fm(w, q), xb[j]));
            sumq2 = fa(sumq2, fm(fm(w, q), q));
        }
        d = sumq2 > 0 ? fd(sumqx, sumq2) : 0.f;
        float best = fm(d, sumqx);
        for (int itry = -ntry; itry <= ntry; ++itry) {
            id = fd((float)(itry + v0), max);
            sumqx = sumq2 = 0;
            for (int j = 0; j < 32; ++j) {
                const int l = best_index_iq4nl(fm(id, xb[j]));
                const float q = (float)kvalue_iq4nl(l), w = weight[j];
                sumqx = fa(sumqx, fm(fm(w, q), xb[j]));
                sumq2 = fa(sumq2, fm(fm(w, q), q));
            }
            if (sumq2 > 0 && fm(sumqx, sumqx) > fm(best, sumq2)) {
                d = fd(sumqx, sumq2);
                best = fm(d, sumqx);
            }
        }
        scales[ib] = d;
        const float abs_d = fabs_bits(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    if (SBS / 32 > 1) {
        uint16_t sh = 0;
        const float d = fd(fneg(max_scale), 32.f);
        st16(dh, f2h(d));
        const float id = d != 0.0f ? fd(1.0f, d) : 0.f;
        for (int ib = 0; ib < SBS / 32; ++ib) {
            int l = nearest_int(fm(id, scales[ib]));
            l = imax(-32, imin(31, l));
            const float dl = fm(d, (float)l);
            const float idl = dl != 0.0f ? fd(1.0f, dl) : 0.f;
            uint8_t *Lb = L + ib * 32;
            const float *xb = x + ib * 32;
            for (int j = 0; j < 32; ++j) Lb[j] = (uint8_t)best_index_iq4nl(fm(idl, xb[j]));
            l += 32;
            const uint8_t l_l = (uint8_t)(l & 0xf), l_h = (uint8_t)(l >> 4);
            if (ib % 2 == 0)
                scales_l[ib / 2] = l_l;
            else
                scales_l[ib / 2] |= (uint8_t)(l_l << 4);
            sh |= (uint16_t)(l_h << 2 * (ib % 8));
        }
        st16(scales_h, sh);
    } else {
        st16(dh, f2h(scales[0]));
        if (ntry > 0) { // the cache write keeps the first pass's levels
            const float id = scales[0] != 0.0f ? fd(1.0f, scales[0]) : 0;
            for (int j = 0; j < SBS; ++j) L[j] = (uint8_t)best_index_iq4nl(fm(id, x[j]));
        }
    }
    for (int i = 0; i < SBS / 32; ++i)
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

struct IQ4_NLQ {
    typedef blk_iq4_nl B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        iq4_quant_block<32>(x, qw, y + offsetof(B, d), y + offsetof(B, qs), nullptr, nullptr);
    }
};
// the KV cache's IQ4_NL (core/kv_cache.c: ql_quantize_row_iq4_nl_fast_ref, what llama.cpp's cache write calls)
struct IQ4_NL_KVQ {
    typedef blk_iq4_nl B;
    static const int QK = 32, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) {
        iq4_quant_block<32, -1>(x, nullptr, y + offsetof(B, d), y + offsetof(B, qs), nullptr, nullptr);
    }
};
struct IQ4_XSQ {
    typedef blk_iq4_xs B;
    static const int QK = QK_K, BYTES = sizeof(B);
    static QL_HD void quant(const float *x, uint8_t *y) { quant_w(x, nullptr, y); }
    static QL_HD void quant_w(const float *x, const float *qw, uint8_t *y) {
        iq4_quant_block<QK_K>(x, qw, y + offsetof(B, d), y + offsetof(B, qs), y + offsetof(B, scales_h),
                              y + offsetof(B, scales_l));
    }
};

// ---- E2M1 microscaling formats (formats/fmt_mxfp4.c, formats/fmt_nvfp4.c, kernels/e2m1.h) ----
static QL_HD int e2m1x2(int i) {
    const int v = i & 7;
    const int m = v < 4 ? v : v == 4 ? 4 : v == 5 ? 6 : v == 6 ? 8 : 12; // 0 1 2 3 4 6 8 12
    return i & 8 ? -m : m;
}
// the code whose value times d is nearest x, lower index on ties (ql_e2m1_nearest)
static QL_HD uint8_t e2m1_nearest(float x, float d) {
    int best = 0;
    float best_err = fabs_bits(fs(fm((float)e2m1x2(0), d), x));
    for (int i = 1; i < 16; i++) {
        const float err = fabs_bits(fs(fm((float)e2m1x2(i), d), x));
        if (err < best_err) best = i, best_err = err;
    }
    return (uint8_t)best;
}
// 2^(e-128) from float bits (subnormal for e < 2)
static QL_HD float e8m0_half(uint8_t e) { return u2f(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23); }
struct MXFP4 {
    static const int QK = 32, BYTES = 17;
    static QL_HD float elem(const uint8_t *b, int j) {
        const uint8_t q = b[1 + (j & 15)];
        return fm((float)e2m1x2(j < 16 ? q & 0x0F : q >> 4), e8m0_half(b[0]));
    }
};
struct MXFP4Q {
    static const int QK = 32, BYTES = 17;
    static QL_HD void quant(const float *x, uint8_t *y) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabs_bits(x[j])) amax = fabs_bits(x[j]);
        const uint8_t e = amax > 0.0f ? (uint8_t)cvtt_x86(fa(fs(floor_log2f(amax), 2.0f), 127.0f)) : 0;
        const float d = e8m0_half(e);
        y[0] = e;
        for (int j = 0; j < 16; j++) y[1 + j] = (uint8_t)(e2m1_nearest(x[j], d) | e2m1_nearest(x[j + 16], d) << 4);
    }
};

static QL_HD float ue4m3_half(uint8_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int exp = (x >> 3) & 0xF, man = x & 0x7;
    const float raw = exp == 0 ? fm((float)man, u2f(0x3b000000u) /* 2^-9 */)
                               : fm(fa(1.0f, fd((float)man, 8.0f)), u2f((uint32_t)(exp - 7 + 127) << 23));
    return fm(raw, 0.5f);
}
static QL_HD uint8_t f32_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    const uint32_t bits = f2u(x);
    int exp = (int)((bits >> 23) & 0xFF) - 127 + 7;
    if (exp <= 0) {
        const int man = cvtt_x86(fa(fm(x, 512.0f), 0.5f));
        return (uint8_t)(man > 7 ? 7 : man < 1 ? 0 : man);
    }
    if (exp >= 15) return 0x7E;
    int man = (int)((bits >> 20) & 0x7) + (int)((bits >> 19) & 1);
    if (man > 7) {
        man = 0;
        if (++exp >= 15) return 0x7E;
    }
    return (uint8_t)(exp << 3 | man);
}
struct NVFP4 {
    static const int QK = 64, BYTES = 36;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int s = e >> 4, j = e & 15;
        const uint8_t q = b[4 + s * 8 + (j & 7)];
        return fm((float)e2m1x2(j < 8 ? q & 0x0F : q >> 4), ue4m3_half(b[s]));
    }
};
struct NVFP4Q {
    static const int QK = 64, BYTES = 36;
    static QL_HD void quant(const float *x, uint8_t *y) {
        for (int s = 0; s < 4; s++) {
            const float *xb = x + s * 16;
            float amax = 0.0f;
            for (int j = 0; j < 16; j++)
                if (amax < fabs_bits(xb[j])) amax = fabs_bits(xb[j]);
            const uint8_t ue = f32_to_ue4m3(fd(amax, 6.0f));
            const float d = ue4m3_half(ue);
            y[s] = ue;
            for (int j = 0; j < 8; j++)
                y[4 + s * 8 + j] = (uint8_t)(e2m1_nearest(xb[j], d) | e2m1_nearest(xb[j + 8], d) << 4);
        }
    }
};

// ---- dequantize: ggml's lattice i-quants and ternary types (kernels/ggml_quants_ref.c). The lattice tables
// (kernels/iq_tables.h) live in device memory, uploaded once per device before the first launch. ----
__device__ uint64_t d_iq2xxs_grid[256];
__device__ uint64_t d_iq2xs_grid[512];
__device__ uint64_t d_iq2s_grid[1024];
__device__ uint32_t d_iq3xxs_grid[256];
__device__ uint32_t d_iq3s_grid[512];
__device__ uint64_t d_iq1s_grid[QL_NGRID_IQ1S];
#ifdef __CUDA_ARCH__
#define IQ_TABLE(name) d_##name
#else
#define IQ_TABLE(name) name
#endif

static ql_status upload_iq_tables() {
    static std::mutex mu;
    static bool done[256];
    int dev = 0;
    QL_CUDA_TRY(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(mu);
    if (dev < 0 || dev >= 256) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: device index %d", dev);
    if (done[dev]) return QL_OK;
    QL_CUDA_TRY(cudaMemcpyToSymbol(d_iq2xxs_grid, iq2xxs_grid, sizeof iq2xxs_grid));
    QL_CUDA_TRY(cudaMemcpyToSymbol(d_iq2xs_grid, iq2xs_grid, sizeof iq2xs_grid));
    QL_CUDA_TRY(cudaMemcpyToSymbol(d_iq2s_grid, iq2s_grid, sizeof iq2s_grid));
    QL_CUDA_TRY(cudaMemcpyToSymbol(d_iq3xxs_grid, iq3xxs_grid, sizeof iq3xxs_grid));
    QL_CUDA_TRY(cudaMemcpyToSymbol(d_iq3s_grid, iq3s_grid, sizeof iq3s_grid));
    QL_CUDA_TRY(cudaMemcpyToSymbol(d_iq1s_grid, iq1s_grid, sizeof iq1s_grid));
    // From pageable memory these copies return once staged, on the legacy stream; the decoders run on the
    // backend's non-blocking streams, which do not wait for it: the tables must have landed first.
    QL_CUDA_TRY(cudaDeviceSynchronize());
    done[dev] = true;
    return QL_OK;
}

static QL_HD uint32_t ld32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static QL_HD uint8_t grid_byte(uint64_t g, int j) { return (uint8_t)(g >> (8 * j)); }
static QL_HD uint8_t iq_ksigns(unsigned i) {
    unsigned p = i ^ (i >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    return (uint8_t)(i | ((p & 1) << 7));
}
static QL_HD float iq_sgn(uint8_t signs, int j) { return signs & (1u << j) ? -1.f : 1.f; }
// db * coordinate * sign, left to right as the reference
static QL_HD float iq_val(float db, uint8_t coord, float sign) { return fm(fm(db, (float)coord), sign); }

struct IQ2_XXS {
    static const int QK = QK_K, BYTES = 66;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib32 = e >> 5, l = (e >> 3) & 3, j = e & 7;
        const uint8_t *q = b + 2 + 8 * ib32;
        const uint32_t a1 = ld32(q + 4);
        const float db = fm(fm(h2f(ld16(b)), fa(0.5f, (float)(a1 >> 28))), 0.25f);
        return iq_val(db, grid_byte(IQ_TABLE(iq2xxs_grid)[q[l]], j), iq_sgn(iq_ksigns((a1 >> 7 * l) & 127), j));
    }
};
struct IQ2_XS {
    static const int QK = QK_K, BYTES = 74;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib32 = e >> 5, l = (e >> 3) & 3, j = e & 7;
        const uint8_t sc = b[66 + ib32];
        const float db = fm(fm(h2f(ld16(b)), fa(0.5f, (float)(l < 2 ? sc & 0xf : sc >> 4))), 0.25f);
        const uint16_t q = ld16(b + 2 + 2 * (4 * ib32 + l));
        return iq_val(db, grid_byte(IQ_TABLE(iq2xs_grid)[q & 511], j), iq_sgn(iq_ksigns(q >> 9), j));
    }
};
struct IQ2_S {
    static const int QK = QK_K, BYTES = 82;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib32 = e >> 5, l = (e >> 3) & 3, j = e & 7;
        const uint8_t *qs = b + 2, *qh = b + 66, sc = b[74 + ib32];
        const float db = fm(fm(h2f(ld16(b)), fa(0.5f, (float)(l < 2 ? sc & 0xf : sc >> 4))), 0.25f);
        const uint64_t grid = IQ_TABLE(iq2s_grid)[qs[4 * ib32 + l] | ((qh[ib32] << (8 - 2 * l)) & 0x300)];
        return iq_val(db, grid_byte(grid, j), iq_sgn(qs[32 + 4 * ib32 + l], j));
    }
};
struct IQ3_XXS {
    static const int QK = QK_K, BYTES = 98;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib32 = e >> 5, l = (e >> 3) & 3, j = e & 7;
        const uint8_t *qs = b + 2 + 8 * ib32;
        const uint32_t aux = ld32(b + 2 + 64 + 4 * ib32);
        const float db = fm(fm(h2f(ld16(b)), fa(0.5f, (float)(aux >> 28))), 0.5f);
        const uint32_t g = IQ_TABLE(iq3xxs_grid)[qs[2 * l + (j >> 2)]];
        return iq_val(db, grid_byte(g, j & 3), iq_sgn(iq_ksigns((aux >> 7 * l) & 127), j));
    }
};
struct IQ3_S {
    static const int QK = QK_K, BYTES = 110;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int sb = e >> 5, l = (e >> 3) & 3, j = e & 7;
        const uint8_t *qs = b + 2 + 8 * sb, qh = b[66 + sb], signs = b[74 + 4 * sb + l], sc = b[106 + sb / 2];
        const float db = fm(h2f(ld16(b)), (float)(1 + 2 * (sb % 2 ? sc >> 4 : sc & 0xf)));
        const uint32_t g = j < 4 ? IQ_TABLE(iq3s_grid)[qs[2 * l + 0] | ((qh << (8 - 2 * l)) & 256)]
                                 : IQ_TABLE(iq3s_grid)[qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256)];
        return iq_val(db, grid_byte(g, j & 3), iq_sgn(signs, j));
    }
};
struct IQ1_S {
    static const int QK = QK_K, BYTES = 50;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib = e >> 5, l = (e >> 3) & 3, j = e & 7;
        const uint16_t qh = ld16(b + 34 + 2 * ib);
        const float dl = fm(h2f(ld16(b)), (float)(2 * ((qh >> 12) & 7) + 1));
        const float delta = qh & 0x8000 ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
        const uint64_t grid = IQ_TABLE(iq1s_grid)[b[2 + 4 * ib + l] | (((qh >> 3 * l) & 7) << 8)];
        return fm(dl, fa((float)(int8_t)grid_byte(grid, j), delta));
    }
};
struct IQ1_M {
    static const int QK = QK_K, BYTES = 56;
    static const bool TABLES = true;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int ib = e >> 5, l = (e >> 3) & 3, j = e & 7;
        uint16_t sc[4];
        for (int k = 0; k < 4; k++) sc[k] = ld16(b + 48 + 2 * k);
        const uint16_t s16 =
            (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
        const float d = h2f(s16);
        const int shift = 6 * (ib % 2) + (l < 2 ? 0 : 3);
        const float dl = fm(d, (float)(2 * ((sc[ib / 2] >> shift) & 0x7) + 1));
        const uint8_t *qs = b + 4 * ib, *qh = b + 32 + 2 * ib;
        const uint8_t h = qh[l >> 1];
        const int idx = qs[l] | ((l & 1 ? h << 4 : h << 8) & 0x700);
        const float delta = h & (l & 1 ? 0x80 : 0x08) ? -QL_IQ1S_DELTA : QL_IQ1S_DELTA;
        return fm(dl, fa((float)(int8_t)grid_byte(IQ_TABLE(iq1s_grid)[idx], j), delta));
    }
};
static QL_HD float ternary(uint8_t byte, int nn, float d) {
    const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
    const uint8_t q = (uint8_t)(byte * pow3[nn]);
    const int16_t xi = (int16_t)(((uint16_t)q * 3) >> 8);
    return fm((float)(xi - 1), d);
}
struct TQ1_0 {
    static const int QK = QK_K, BYTES = 54;
    static QL_HD float elem(const uint8_t *b, int e) {
        const float d = h2f(ld16(b + 52));
        if (e < 160) return ternary(b[e % 32], e / 32, d);
        if (e < 240) return ternary(b[32 + (e - 160) % 16], (e - 160) / 16, d);
        return ternary(b[48 + (e - 240) % 4], (e - 240) / 4, d);
    }
};
struct TQ2_0 {
    static const int QK = QK_K, BYTES = 66;
    static QL_HD float elem(const uint8_t *b, int e) {
        const int j = e >> 7, l = (e >> 5) & 3, m = e & 31;
        const int q = (b[32 * j + m] >> (2 * l)) & 3;
        return fm((float)(q - 1), h2f(ld16(b + 64)));
    }
};
// formats whose decode reads the lattice tables upload them first
template <class F> struct NeedsTables {
    template <class G> static char test(decltype(G::TABLES) *);
    template <class G> static long test(...);
    static const bool value = sizeof(test<F>(nullptr)) == 1;
};
template <class F> static ql_status prepare_dequant() { return NeedsTables<F>::value ? upload_iq_tables() : QL_OK; }

// ---- quantize: ggml's ternary TQ1_0 / TQ2_0 (kernels/iq_quants_ref.c) ----
static QL_HD int trit(float v) { // lroundf clamped to a trit, NaN -> digit 0
    if (!(v > -1.5f && v < 1.5f)) return v > 0 ? 2 : 0;
    return (int)round_away(v) + 1;
}
static QL_HD uint8_t pack_trits(int q) { return (uint8_t)(((uint16_t)q * 256 + (243 - 1)) / 243); }
static QL_HD float tq_amax(const float *x) { // QMAX(amax, |x|): a NaN amax is replaced by the next value
    float amax = 0;
    for (int j = 0; j < QK_K; ++j) {
        const float a = fabs_bits(x[j]);
        amax = amax > a ? amax : a;
    }
    return amax;
}
struct TQ1_0Q {
    static const int QK = QK_K, BYTES = 54;
    static QL_HD void quant(const float *x, uint8_t *y) {
        const float amax = tq_amax(x);
        const float id = amax != 0.0f ? fd(1.0f, amax) : 0.0f;
        st16(y + 52, f2h(amax));
        for (int m = 0; m < 32; ++m) {
            int q = 0;
            for (int d = 0; d < 5; ++d) q = q * 3 + trit(fm(x[m + 32 * d], id));
            y[m] = pack_trits(q);
        }
        x += 160;
        for (int m = 0; m < 16; ++m) {
            int q = 0;
            for (int d = 0; d < 5; ++d) q = q * 3 + trit(fm(x[m + 16 * d], id));
            y[32 + m] = pack_trits(q);
        }
        x += 80;
        for (int m = 0; m < 4; ++m) {
            int q = 0;
            for (int d = 0; d < 4; ++d) q = q * 3 + trit(fm(x[m + 4 * d], id));
            y[48 + m] = pack_trits((uint8_t)q * 3);
        }
    }
};
struct TQ2_0Q {
    static const int QK = QK_K, BYTES = 66;
    static QL_HD void quant(const float *x, uint8_t *y) {
        const float amax = tq_amax(x);
        const float id = amax != 0.0f ? fd(1.0f, amax) : 0.0f;
        st16(y + 64, f2h(amax));
        for (int h = 0; h < 2; ++h) {
            for (int m = 0; m < 32; ++m) {
                int q = 0;
                for (int l = 0; l < 4; ++l) q |= trit(fm(x[m + 32 * l], id)) << 2 * l;
                y[32 * h + m] = (uint8_t)q;
            }
            x += 128;
        }
    }
};

// ---------------------------------------------------------------------------------------------------
// Kernels and launches
// ---------------------------------------------------------------------------------------------------
// Output element i of a tensor of F blocks.
template <class F> static QL_HD float dequant_at(const uint8_t *src, int64_t i) {
    return F::elem(src + (i / F::QK) * F::BYTES, (int)(i % F::QK));
}

// Output elements 8t .. 8t+7: the block header is decoded once for the 8 (the compiler shares the loads
// between the unrolled elem calls).
template <class F> static QL_HD void dequant8_at(const uint8_t *src, int64_t t, float v[8]) {
    const int64_t i0 = t * 8;
    if (F::QK % 8 == 0) {
        const uint8_t *b = src + (i0 / F::QK) * F::BYTES;
        const int j0 = (int)(i0 % F::QK);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = F::elem(b, j0 + k);
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = dequant_at<F>(src, i0 + k);
    }
}

template <class F>
__global__ void k_dequant(const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = dequant_at<F>(src, i);
}

// 8 consecutive outputs per thread, stored as two float4. Needs n % 8 == 0 and dst 16-byte aligned.
template <class F>
__global__ void k_dequant8(const uint8_t *__restrict__ src, float *__restrict__ dst, int64_t n8) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n8; t += stride) {
        const int64_t i0 = t * 8;
        float v[8];
        dequant8_at<F>(src, t, v);
        float4 *o = (float4 *)(dst + i0);
        o[0] = make_float4(v[0], v[1], v[2], v[3]);
        o[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

template <class F>
__global__ void k_quant(const float *__restrict__ src, uint8_t *__restrict__ dst, int64_t nb) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride)
        F::quant(src + b * F::QK, dst + b * F::BYTES);
}

template <class F> static ql_status launch_dequant(const void *src, float *dst, int64_t n, cudaStream_t s) {
    if (n == 0) return QL_OK;
    if (n % 8 == 0 && ((uintptr_t)dst & 15) == 0)
        k_dequant8<F><<<grid_for(n / 8, 256), 256, 0, s>>>((const uint8_t *)src, dst, n / 8);
    else
        k_dequant<F><<<grid_for(n, 256), 256, 0, s>>>((const uint8_t *)src, dst, n);
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}

template <class F> static ql_status launch_quant(const float *src, void *dst, int64_t nb, cudaStream_t s) {
    if (nb == 0) return QL_OK;
    k_quant<F><<<grid_for(nb, 64), 64, 0, s>>>(src, (uint8_t *)dst, nb); // heavy threads: small blocks
    QL_CUDA_TRY(cudaGetLastError());
    return QL_OK;
}

// The host runs what the device would: the 8-per-thread path when the launch would take it, else one element
// per thread.
template <class F> static void host_dequant(const void *src, float *dst, int64_t n) {
    const uint8_t *s = (const uint8_t *)src;
    if (n % 8 == 0 && ((uintptr_t)dst & 15) == 0) {
        for (int64_t t = 0; t < n / 8; ++t) dequant8_at<F>(s, t, dst + t * 8);
        return;
    }
    for (int64_t i = 0; i < n; ++i) dst[i] = dequant_at<F>(s, i);
}

template <class F> static void host_quant(const float *src, void *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b) F::quant(src + b * F::QK, (uint8_t *)dst + b * F::BYTES);
}

// Checks the shape against the kernel's block; *n = elements, *nblocks = blocks.
static ql_status check_shape(const char *name, int qk, int64_t nrows, int64_t ncols, int64_t *n, int64_t *nblocks) {
    if (nrows < 0 || ncols <= 0 || ncols % qk != 0)
        return ql_fail(QL_ERR_ARG, "cuda: %s needs rows that are a multiple of %d (got %lld x %lld)", name, qk,
                       (long long)nrows, (long long)ncols);
    if (nrows > INT64_MAX / ncols) return ql_fail(QL_ERR_ARG, "cuda: %s tensor too large", name);
    *n = nrows * ncols;
    *nblocks = *n / qk;
    return QL_OK;
}

// GPTQ's block fix on the device (gptq_cuda.h: ql_cuda_gptq_grid.fix_dev; the registry's
// ql_format_cuda_ops.grid_fix_*): row r of the gathered block G [rows, F::QK] quantized with the block's
// importance into blocks + r·row_bytes (the format's imatrix quantizer, bit-exact with the reference's),
// then its sub-blocks' grids parsed from the bytes as formats/fmt_ggml.c's parser does (value =
// a·(k + o) + b, the dequantizer's arithmetic): one thread per row.
struct FixK45 { // Q4_K, Q5_K: d·sc·k − dmin·m per 32-column sub-block (fmt_ggml.c: parse_q45_k)
    template <class F>
    static QL_HD void row(const float *g, const float *imp, uint8_t *blk, float *a, float *b, float *o,
                          int64_t ld) {
        typedef typename F::B B;
        F::quant_w(g, imp, blk);
        const float d = h2f(ld16(blk + offsetof(B, d))), dmin = h2f(ld16(blk + offsetof(B, dmin)));
        for (int s = 0; s < QK_K / 32; ++s) {
            uint8_t sc, m;
            get_scale_min_k4(s, blk + offsetof(B, scales), &sc, &m);
            a[s * ld] = fm(d, (float)sc);
            b[s * ld] = fneg(fm(dmin, (float)m));
            o[s * ld] = 0.0f;
        }
    }
};

struct FixQ6K { // Q6_K: d·sc·(k − 32) per 16-column sub-block (fmt_ggml.c: parse_q6_k)
    template <class F>
    static QL_HD void row(const float *g, const float *imp, uint8_t *blk, float *a, float *b, float *o,
                          int64_t ld) {
        typedef typename F::B B;
        F::quant_w(g, imp, blk);
        const float d = h2f(ld16(blk + offsetof(B, d)));
        for (int s = 0; s < QK_K / 16; ++s) {
            a[s * ld] = fm(d, (float)(int8_t)blk[offsetof(B, scales) + s]);
            b[s * ld] = 0.0f;
            o[s * ld] = -32.0f;
        }
    }
};

struct FixQ2K { // Q2_K: d·(sc & 15)·k − dmin·(sc >> 4) per 16 columns (fmt_ggml.c: parse_q2_k)
    template <class F>
    static QL_HD void row(const float *g, const float *imp, uint8_t *blk, float *a, float *b, float *o,
                          int64_t ld) {
        typedef typename F::B B;
        F::quant_w(g, imp, blk);
        const float d = h2f(ld16(blk + offsetof(B, d))), dmin = h2f(ld16(blk + offsetof(B, dmin)));
        for (int s = 0; s < QK_K / 16; ++s) {
            const uint8_t sc = blk[offsetof(B, scales) + s];
            a[s * ld] = fm(d, (float)(sc & 0xF));
            b[s * ld] = fneg(fm(dmin, (float)(sc >> 4)));
            o[s * ld] = 0.0f;
        }
    }
};

struct FixQ3K { // Q3_K: d·sc·(k − 4) per 16 columns, sc the 6-bit signed scale (fmt_ggml.c: parse_q3_k)
    template <class F>
    static QL_HD void row(const float *g, const float *imp, uint8_t *blk, float *a, float *b, float *o,
                          int64_t ld) {
        typedef typename F::B B;
        F::quant_w(g, imp, blk);
        const float d = h2f(ld16(blk + offsetof(B, d)));
        const uint8_t *ys = blk + offsetof(B, scales);
        for (int s = 0; s < QK_K / 16; ++s) {
            const int lo = s < 8 ? ys[s] & 0xF : ys[s - 8] >> 4;
            const int sc = (lo | (((ys[8 + s % 4] >> (2 * (s / 4))) & 3) << 4)) - 32;
            a[s * ld] = fm(d, (float)sc);
            b[s * ld] = 0.0f;
            o[s * ld] = -4.0f;
        }
    }
};

// One 32-block (legacy types): a = d, b from the block (0 or its min), o = the code offset.
template <int OFFSET, bool HAS_MIN> struct FixLegacy { // fmt_ggml.c: parse_q4_0/q4_1/q5_0/q8_0
    template <class F>
    static QL_HD void row(const float *g, const float *imp, uint8_t *blk, float *a, float *b, float *o,
                          int64_t ld) {
        (void)ld;
        F::quant_w(g, imp, blk);
        a[0] = h2f(ld16(blk));
        b[0] = HAS_MIN ? h2f(ld16(blk + 2)) : 0.0f;
        o[0] = (float)OFFSET;
    }
};

struct FixIQ4XS { // IQ4_XS: d·(ls − 32)·table[k] per 32 columns (fmt_ggml.c: parse_iq4_xs)
    template <class F>
    static QL_HD void row(const float *g, const float *imp, uint8_t *blk, float *a, float *b, float *o,
                          int64_t ld) {
        typedef typename F::B B;
        F::quant_w(g, imp, blk);
        const float d = h2f(ld16(blk + offsetof(B, d)));
        const unsigned sh = ld16(blk + offsetof(B, scales_h));
        const uint8_t *sl = blk + offsetof(B, scales_l);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const int ls = ((sl[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((sh >> 2 * ib) & 3) << 4);
            a[ib * ld] = fm(d, (float)(ls - 32));
            b[ib * ld] = 0.0f;
            o[ib * ld] = 0.0f;
        }
    }
};

typedef FixLegacy<0, false> FixIQ4NL; // a·table[k]: a = d
typedef FixLegacy<-8, false> FixQ4_0;
typedef FixLegacy<0, true> FixQ4_1; // value = d·k + m
typedef FixLegacy<-16, false> FixQ5_0;
typedef FixLegacy<0, true> FixQ5_1;
typedef FixLegacy<-128, false> FixQ8_0; // code = q + 128

template <class F, class P>
__global__ void k_grid_fix(const float *__restrict__ G, int64_t rows, const float *__restrict__ imp,
                           uint8_t *__restrict__ blocks, int64_t row_bytes, float *a, float *b, float *o,
                           int64_t ld) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride)
        P::template row<F>(G + r * F::QK, imp, blocks + r * row_bytes, a + r, b + r, o + r, ld);
}

static ql_status check_fix(const char *name, int qk, int64_t rows, int64_t len, int64_t row_bytes, int bytes,
                           int64_t ld) {
    if (rows < 0 || len != qk || row_bytes < bytes || ld < rows)
        return ql_fail(QL_ERR_ARG, "cuda: %s block fix: bad shape (%lld rows of %lld, row bytes %lld, ld %lld)",
                       name, (long long)rows, (long long)len, (long long)row_bytes, (long long)ld);
    return QL_OK;
}

#define QL_CUDA_FIX_ENTRY(lname, F, P)                                                                       \
    extern "C" ql_status ql_cuda_grid_fix_##lname##_dev(const float *G, int64_t rows, int64_t len,           \
                                                       const float *imp, void *blocks, int64_t row_bytes,    \
                                                       float *a, float *b, float *o, int64_t ld,             \
                                                       void *stream) {                                       \
        ql_status st = check_fix(#lname, F::QK, rows, len, row_bytes, F::BYTES, ld);                        \
        if (st != QL_OK || rows == 0) return st;                                                             \
        if (!ql_cuda_available()) return ql_cuda_no_device("cuda");               \
        k_grid_fix<F, P><<<grid_for(rows, 64), 64, 0, (cudaStream_t)stream>>>(                               \
            G, rows, imp, (uint8_t *)blocks, row_bytes, a, b, o, ld);                                        \
        QL_CUDA_TRY(cudaGetLastError());                                                                     \
        return QL_OK;                                                                                        \
    }                                                                                                        \
    extern "C" ql_status ql_cuda_grid_fix_##lname##_emulated(const float *G, int64_t rows, int64_t len,      \
                                                            const float *imp, void *blocks,                  \
                                                            int64_t row_bytes, float *a, float *b, float *o, \
                                                            int64_t ld, void *stream) {                      \
        (void)stream;                                                                                        \
        ql_status st = check_fix(#lname, F::QK, rows, len, row_bytes, F::BYTES, ld);                        \
        if (st != QL_OK) return st;                                                                          \
        for (int64_t r = 0; r < rows; ++r)                                                                   \
            P::template row<F>(G + r * F::QK, imp, (uint8_t *)blocks + r * row_bytes, a + r, b + r, o + r,  \
                               ld);                                                                          \
        return QL_OK;                                                                                        \
    }

static cudaError_t g_avail_err = cudaSuccess; // why ql_cuda_available said no (an old driver reads like no device)

extern "C" int ql_cuda_available(void) {
    static int cached = -1;
    if (cached < 0) {
        int n = 0;
        g_avail_err = cudaGetDeviceCount(&n);
        cached = g_avail_err == cudaSuccess && n > 0;
        if (!cached) cudaGetLastError(); // clear the sticky "no device" error
    }
    return cached;
}

extern "C" ql_status ql_cuda_no_device(const char *who) {
    return ql_fail(QL_ERR_UNSUPPORTED, "%s: no CUDA device (%s)", who,
                   g_avail_err != cudaSuccess ? cudaGetErrorString(g_avail_err) : "cudaGetDeviceCount found none");
}

// The entry points the format registry's CUDA column points at (formats/fmt_ggml.c): one set per
// kernel, named after the format. Kernels know block layouts, not formats: the list below is what this
// file implements, not a table of type ids.
#define QL_CUDA_DEQUANT_ENTRY(lname, F)                                                                      \
    extern "C" ql_status ql_cuda_dequantize_##lname##_dev(const void *src, float *dst, int64_t nrows,         \
                                                          int64_t ncols, void *stream) {                      \
        int64_t n, nb;                                                                                       \
        ql_status st = check_shape(#lname, F::QK, nrows, ncols, &n, &nb);                                    \
        if (st != QL_OK) return st;                                                                          \
        if (!ql_cuda_available()) return ql_cuda_no_device("cuda");               \
        if ((st = prepare_dequant<F>()) != QL_OK) return st;                                                  \
        return launch_dequant<F>(src, dst, n, (cudaStream_t)stream);                                         \
    }                                                                                                        \
    extern "C" ql_status ql_cuda_dequantize_##lname##_emulated(const void *src, float *dst, int64_t nrows,    \
                                                               int64_t ncols) {                              \
        int64_t n, nb;                                                                                       \
        ql_status st = check_shape(#lname, F::QK, nrows, ncols, &n, &nb);                                    \
        if (st != QL_OK) return st;                                                                          \
        host_dequant<F>(src, dst, n);                                                                        \
        return QL_OK;                                                                                        \
    }
#define QL_CUDA_QUANT_ENTRY(lname, F)                                                                        \
    extern "C" ql_status ql_cuda_quantize_##lname##_dev(const float *src, void *dst, int64_t nrows,           \
                                                        int64_t ncols, void *stream) {                        \
        int64_t n, nb;                                                                                       \
        ql_status st = check_shape(#lname, F::QK, nrows, ncols, &n, &nb);                                    \
        if (st != QL_OK) return st;                                                                          \
        if (!ql_cuda_available()) return ql_cuda_no_device("cuda");               \
        return launch_quant<F>(src, dst, nb, (cudaStream_t)stream);                                          \
    }                                                                                                        \
    extern "C" ql_status ql_cuda_quantize_##lname##_emulated(const float *src, void *dst, int64_t nrows,      \
                                                             int64_t ncols) {                                \
        int64_t n, nb;                                                                                       \
        ql_status st = check_shape(#lname, F::QK, nrows, ncols, &n, &nb);                                    \
        if (st != QL_OK) return st;                                                                          \
        host_quant<F>(src, dst, nb);                                                                         \
        return QL_OK;                                                                                        \
    }

QL_CUDA_DEQUANT_ENTRY(f16, F16)
QL_CUDA_DEQUANT_ENTRY(bf16, BF16)
QL_CUDA_DEQUANT_ENTRY(q4_0, Q4_0)
QL_CUDA_DEQUANT_ENTRY(q4_1, Q4_1)
QL_CUDA_DEQUANT_ENTRY(q5_0, Q5_0)
QL_CUDA_DEQUANT_ENTRY(q5_1, Q5_1)
QL_CUDA_DEQUANT_ENTRY(q8_0, Q8_0)
QL_CUDA_DEQUANT_ENTRY(q2_k, Q2_K)
QL_CUDA_DEQUANT_ENTRY(q3_k, Q3_K)
QL_CUDA_DEQUANT_ENTRY(q4_k, Q4_K)
QL_CUDA_DEQUANT_ENTRY(q5_k, Q5_K)
QL_CUDA_DEQUANT_ENTRY(q6_k, Q6_K)
QL_CUDA_DEQUANT_ENTRY(iq4_nl, IQ4_NL)
QL_CUDA_DEQUANT_ENTRY(iq4_xs, IQ4_XS)
QL_CUDA_QUANT_ENTRY(q4_0, Q4_0Q)
QL_CUDA_QUANT_ENTRY(q8_0, Q8_0Q)
QL_CUDA_QUANT_ENTRY(q4_k, Q4_KQ)
QL_CUDA_QUANT_ENTRY(q6_k, Q6_KQ)
QL_CUDA_QUANT_ENTRY(q4_1, Q4_1Q)
QL_CUDA_QUANT_ENTRY(q5_0, Q5_0Q)
QL_CUDA_QUANT_ENTRY(q5_1, Q5_1Q)
QL_CUDA_QUANT_ENTRY(q2_k, Q2_KQ)
QL_CUDA_QUANT_ENTRY(q3_k, Q3_KQ)
QL_CUDA_QUANT_ENTRY(q5_k, Q5_KQ)
QL_CUDA_QUANT_ENTRY(iq4_nl, IQ4_NLQ)
QL_CUDA_QUANT_ENTRY(iq4_nl_kv, IQ4_NL_KVQ)
QL_CUDA_QUANT_ENTRY(iq4_xs, IQ4_XSQ)
QL_CUDA_DEQUANT_ENTRY(mxfp4, MXFP4)
QL_CUDA_DEQUANT_ENTRY(iq2_xxs, IQ2_XXS)
QL_CUDA_DEQUANT_ENTRY(iq2_xs, IQ2_XS)
QL_CUDA_DEQUANT_ENTRY(iq2_s, IQ2_S)
QL_CUDA_DEQUANT_ENTRY(iq3_xxs, IQ3_XXS)
QL_CUDA_DEQUANT_ENTRY(iq3_s, IQ3_S)
QL_CUDA_DEQUANT_ENTRY(iq1_s, IQ1_S)
QL_CUDA_DEQUANT_ENTRY(iq1_m, IQ1_M)
QL_CUDA_DEQUANT_ENTRY(tq1_0, TQ1_0)
QL_CUDA_DEQUANT_ENTRY(tq2_0, TQ2_0)
QL_CUDA_QUANT_ENTRY(tq1_0, TQ1_0Q)
QL_CUDA_QUANT_ENTRY(tq2_0, TQ2_0Q)
QL_CUDA_QUANT_ENTRY(mxfp4, MXFP4Q)
QL_CUDA_DEQUANT_ENTRY(nvfp4, NVFP4)
QL_CUDA_QUANT_ENTRY(nvfp4, NVFP4Q)
QL_CUDA_FIX_ENTRY(q4_k, Q4_KQ, FixK45)
QL_CUDA_FIX_ENTRY(q5_k, Q5_KQ, FixK45)
QL_CUDA_FIX_ENTRY(q6_k, Q6_KQ, FixQ6K)
QL_CUDA_FIX_ENTRY(q3_k, Q3_KQ, FixQ3K)
QL_CUDA_FIX_ENTRY(q2_k, Q2_KQ, FixQ2K)
QL_CUDA_FIX_ENTRY(q8_0, Q8_0Q, FixQ8_0)
QL_CUDA_FIX_ENTRY(q4_0, Q4_0QW, FixQ4_0)
QL_CUDA_FIX_ENTRY(q4_1, Q4_1QW, FixQ4_1)
QL_CUDA_FIX_ENTRY(q5_0, Q5_0QW, FixQ5_0)
QL_CUDA_FIX_ENTRY(q5_1, Q5_1QW, FixQ5_1)
QL_CUDA_FIX_ENTRY(iq4_nl, IQ4_NLQ, FixIQ4NL)
QL_CUDA_FIX_ENTRY(iq4_xs, IQ4_XSQ, FixIQ4XS)

extern "C" ql_status ql_cuda_run_dequantize(ql_cuda_dequant_dev_fn fn, const void *host_src, int64_t src_bytes,
                                            float *host_dst, int64_t nrows, int64_t ncols) {
    if (!fn) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no dequantize kernel");
    if (nrows < 0 || ncols <= 0 || src_bytes < 0 || (nrows && ncols > INT64_MAX / nrows))
        return ql_fail(QL_ERR_ARG, "cuda: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    if (nrows == 0) return fn(nullptr, nullptr, 0, ncols, nullptr); // shape check only
    const size_t fbytes = (size_t)(nrows * ncols) * sizeof(float);
    DevBuf s, d;
    QL_CUDA_TRY(cudaMalloc(&s.p, (size_t)src_bytes));
    QL_CUDA_TRY(cudaMalloc(&d.p, fbytes));
    QL_CUDA_TRY(cudaMemcpy(s.p, host_src, (size_t)src_bytes, cudaMemcpyHostToDevice));
    ql_status st = fn(s.p, (float *)d.p, nrows, ncols, nullptr);
    if (st != QL_OK) return st;
    QL_CUDA_TRY(cudaDeviceSynchronize());
    QL_CUDA_TRY(cudaMemcpy(host_dst, d.p, fbytes, cudaMemcpyDeviceToHost));
    return QL_OK;
}

extern "C" ql_status ql_cuda_run_quantize(ql_cuda_quant_dev_fn fn, const float *host_src, void *host_dst,
                                          int64_t dst_bytes, int64_t nrows, int64_t ncols) {
    if (!fn) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no quantize kernel");
    if (nrows < 0 || ncols <= 0 || dst_bytes < 0 || (nrows && ncols > INT64_MAX / nrows))
        return ql_fail(QL_ERR_ARG, "cuda: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    if (nrows == 0) return fn(nullptr, nullptr, 0, ncols, nullptr);
    const size_t fbytes = (size_t)(nrows * ncols) * sizeof(float);
    DevBuf s, d;
    QL_CUDA_TRY(cudaMalloc(&s.p, fbytes));
    QL_CUDA_TRY(cudaMalloc(&d.p, (size_t)dst_bytes));
    QL_CUDA_TRY(cudaMemcpy(s.p, host_src, fbytes, cudaMemcpyHostToDevice));
    ql_status st = fn((const float *)s.p, d.p, nrows, ncols, nullptr);
    if (st != QL_OK) return st;
    QL_CUDA_TRY(cudaDeviceSynchronize());
    QL_CUDA_TRY(cudaMemcpy(host_dst, d.p, (size_t)dst_bytes, cudaMemcpyDeviceToHost));
    return QL_OK;
}

// random codes with finite fp16 scales in [0.5, 1): the kernels' cost does not depend on the values
__global__ void k_fill(uint8_t *p, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint32_t h = (uint32_t)i * 2654435761u;
        h ^= h >> 15;
        p[i] = (uint8_t)(h & 0xBF); // bit 6 clear: an fp16 high byte never has exponent 31
    }
}

extern "C" ql_status ql_cuda_bench_dequantize(ql_cuda_dequant_dev_fn fn, int64_t bytes, int64_t nrows,
                                              int64_t ncols, int iters, double *gbps) {
    if (!fn) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no dequantize kernel");
    if (nrows <= 0 || ncols <= 0 || bytes <= 0 || ncols > INT64_MAX / nrows)
        return ql_fail(QL_ERR_ARG, "cuda: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    ql_status st = QL_OK;
    if (iters < 1) iters = 1;
    const size_t fbytes = (size_t)(nrows * ncols) * sizeof(float);
    DevBuf s, d;
    QL_CUDA_TRY(cudaMalloc(&s.p, (size_t)bytes));
    QL_CUDA_TRY(cudaMalloc(&d.p, fbytes));
    k_fill<<<grid_for(bytes, 256), 256>>>((uint8_t *)s.p, bytes);
    QL_CUDA_TRY(cudaGetLastError());
    st = fn(s.p, (float *)d.p, nrows, ncols, nullptr); // warm-up
    if (st != QL_OK) return st;
    cudaEvent_t e0, e1;
    QL_CUDA_TRY(cudaEventCreate(&e0));
    cudaError_t ce = cudaEventCreate(&e1);
    if (ce != cudaSuccess) {
        cudaEventDestroy(e0);
        return cuda_fail(ce, "cudaEventCreate(&e1)", __FILE__, __LINE__);
    }
    cudaEventRecord(e0);
    for (int i = 0; i < iters && st == QL_OK; ++i)
        st = fn(s.p, (float *)d.p, nrows, ncols, nullptr);
    cudaEventRecord(e1);
    ce = cudaEventSynchronize(e1);
    float ms = 0;
    if (ce == cudaSuccess) ce = cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (st != QL_OK) return st;
    if (ce != cudaSuccess) return cuda_fail(ce, "cudaEventSynchronize/ElapsedTime", __FILE__, __LINE__);
    if (gbps) *gbps = ms > 0 ? (double)(bytes + (int64_t)fbytes) * iters / (ms * 1e-3) / 1e9 : 0.0;
    return QL_OK;
}

extern "C" ql_status ql_cuda_bench_quantize(ql_cuda_quant_dev_fn fn, const float *host_src, void *host_dst,
                                            int64_t dst_bytes, int64_t nrows, int64_t ncols, int iters, double *ms) {
    if (!fn) return ql_fail(QL_ERR_UNSUPPORTED, "cuda: no quantize kernel");
    if (nrows <= 0 || ncols <= 0 || dst_bytes <= 0 || ncols > INT64_MAX / nrows)
        return ql_fail(QL_ERR_ARG, "cuda: bad shape %lld x %lld", (long long)nrows, (long long)ncols);
    if (!ql_cuda_available()) return ql_cuda_no_device("cuda");
    if (iters < 1) iters = 1;
    const size_t fbytes = (size_t)(nrows * ncols) * sizeof(float);
    DevBuf s, d;
    QL_CUDA_TRY(cudaMalloc(&s.p, fbytes));
    QL_CUDA_TRY(cudaMalloc(&d.p, (size_t)dst_bytes));
    QL_CUDA_TRY(cudaMemcpy(s.p, host_src, fbytes, cudaMemcpyHostToDevice));
    ql_status st = fn((const float *)s.p, d.p, nrows, ncols, nullptr); // warm-up
    if (st != QL_OK) return st;
    cudaEvent_t e0, e1;
    QL_CUDA_TRY(cudaEventCreate(&e0));
    cudaError_t ce = cudaEventCreate(&e1);
    if (ce != cudaSuccess) {
        cudaEventDestroy(e0);
        return cuda_fail(ce, "cudaEventCreate(&e1)", __FILE__, __LINE__);
    }
    cudaEventRecord(e0);
    for (int i = 0; i < iters && st == QL_OK; ++i) st = fn((const float *)s.p, d.p, nrows, ncols, nullptr);
    cudaEventRecord(e1);
    ce = cudaEventSynchronize(e1);
    float t = 0;
    if (ce == cudaSuccess) ce = cudaEventElapsedTime(&t, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (st != QL_OK) return st;
    if (ce != cudaSuccess) return cuda_fail(ce, "cudaEventSynchronize/ElapsedTime", __FILE__, __LINE__);
    if (ms) *ms = (double)t / iters;
    if (host_dst) QL_CUDA_TRY(cudaMemcpy(host_dst, d.p, (size_t)dst_bytes, cudaMemcpyDeviceToHost));
    return QL_OK;
}
