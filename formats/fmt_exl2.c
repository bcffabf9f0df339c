/* fmt_exl2.c — EXL2 (ExLlamaV2) mixed-bit matrices as registry entries: one entry per parameter set
 * ExLlamaV2's converter offers (conversion/qparams.py: qparams_attn, qparams_mlp, qparams_headoptions,
 * scale_bits 4), from "0.05:3b_64g/0.95:2b_64g" (2.13 bpw) to "1:8b_32g" (8.13 bpw). Whole-tensor
 * formats: the permutation of K and each group's maximum scale are shared by every output row.
 *
 * The numerics are ExLlamaV2's (adaptivegptq.py AdaptiveQuantizer, cuda/quantize.cu, q_matrix.cu,
 * quant/qdq_*.cuh), written here from their description:
 *   fit (per group, per output n): m_n = max|w| + 1e-12, base_n = m_n / (maxq/2), M = max_n base_n,
 *     qs_n = clamp(round(16·sqrt(base_n / M)), 1, 16); then one shrink p for the whole group from 97
 *     points in [0.70, 1.20], the least Σ|q(w) - w|^3.5; q_scale_max = fp16(M·p).
 *   scale_n = fp16(fp16(qs_n²) · fp16(q_scale_max / 256))       (dq_scale, max_scale pre-divided)
 *   code = clamp(rint(w / scale_n) + 2^(bits-1), 0, 2^bits - 1)
 *   value = fp16((code - 2^(bits-1)) · scale_n)                  (every product rounded to fp16)
 * qlab's own rounding (the entry's quantize_rows) is that fit and rounding group by group without error
 * feedback, inputs ordered by decreasing importance when an importance vector is given (else in order);
 * methods/m_exl2.c adds the Hessian permutation and GPTQ's error feedback. Bad values: the fit sees
 * finite weights only, NaN rounds to code 2^(bits-1) (value 0), ±inf to the extreme codes, a zero
 * scale (an all-zero group) gives code 2^(bits-1). Pure and thread-safe. */
#include "formats/fmt_exl2.h"
#include "kernels/ggml_types.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* ---- layout ---- */

int64_t ql_exl2_layout(const ql_exl2_mix *m, int64_t K, ql_exl2_group *g) {
    /* AdaptiveGPTQ.configure: g_i = ceil(min(K·p_i, remaining) / group_i), remaining -= g_i·group_i;
     * every group holds group_i rows except where K ends. */
    int64_t G = 0, row = 0, qrow = 0;
    double remaining = (double)K;
    for (int i = 0; i < m->n; i++) {
        double want = fmin((double)K * m->prop[i], remaining);
        int64_t ng = (int64_t)ceil(want / m->group[i]);
        if (i == m->n - 1 && row + ng * m->group[i] < K) ng = (K - row + m->group[i] - 1) / m->group[i];
        if (ng < 0) ng = 0;
        remaining -= (double)(ng * m->group[i]);
        for (int64_t j = 0; j < ng && row < K; j++) {
            int64_t rows = QL_MIN((int64_t)m->group[i], K - row);
            if (g) g[G] = (ql_exl2_group){.bits = m->bits[i], .row = row, .rows = rows, .qrow = qrow};
            qrow += (rows * m->bits[i] + 31) / 32;
            row += rows;
            G++;
        }
    }
    return G;
}

bool ql_exl2_offsets_of(const ql_exl2_mix *m, int64_t K, int64_t N, ql_exl2_offsets *o) {
    if (K <= 0 || N <= 0 || K % 32 || K > 65535) return false;
    int64_t G = ql_exl2_layout(m, K, NULL);
    ql_exl2_group *g = malloc((size_t)G * sizeof *g);
    if (!g) return false;
    ql_exl2_layout(m, K, g);
    o->G = G;
    o->qrows = g[G - 1].qrow + (g[G - 1].rows * g[G - 1].bits + 31) / 32;
    free(g);
    if (o->qrows > 32767) return false; /* q_groups holds the first q_weight row in an int16 */
    o->invperm = 0;
    o->scale_max = 4 * K;
    o->groups = o->scale_max + 2 * G;
    o->scale = o->groups + 4 * G;
    o->weight = o->scale + G * ((N + 7) / 8) * 4;
    o->total = o->weight + o->qrows * N * 4;
    return true;
}

/* ---- numerics ---- */

float ql_exl2_scale(int qs, uint16_t smax_h) {
    /* the loader's q_scale_max *= 1/256 (a float product rounded to fp16), then __hmul(half(qs²), it) */
    float ms = ql_fp16_to_fp32(ql_fp32_to_fp16(ql_fp16_to_fp32(smax_h) * (1.0f / 256.0f)));
    return ql_fp16_to_fp32(ql_fp32_to_fp16((float)(qs * qs) * ms));
}

float ql_exl2_value(int code, int bits, float scale) {
    return ql_fp16_to_fp32(ql_fp32_to_fp16((float)(code - (1 << (bits - 1))) * scale));
}

static int round_code(float w, float scale, int bits) {
    const int qzero = 1 << (bits - 1), maxq = (1 << bits) - 1;
    if (isnan(w) || scale == 0.0f) return qzero;
    float x = nearbyintf(w / scale) + (float)qzero;
    return x < 0.0f ? 0 : x > (float)maxq ? maxq : (int)x;
}

void ql_exl2_round_row(const float *w, const float *scale, int bits, int64_t N, uint8_t *code, float *q) {
    for (int64_t n = 0; n < N; n++) {
        int c = round_code(w[n], scale[n], bits);
        code[n] = (uint8_t)c;
        if (q) q[n] = ql_exl2_value(c, bits, scale[n]);
    }
}

void ql_exl2_fit_group(const float *w, int64_t rows, int64_t N, int bits, uint8_t *qs, uint16_t *smax_h,
                       float *scale) {
    const float maxq = (float)((1 << bits) - 1), qzero = (float)(1 << (bits - 1));
    /* scale holds base_n while fitting */
    float M = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        float m = 0.0f;
        for (int64_t r = 0; r < rows; r++) {
            float a = fabsf(w[r * N + n]);
            if (isfinite(a) && a > m) m = a;
        }
        scale[n] = (m + 1e-12f) / (maxq / 2.0f);
        if (scale[n] > M) M = scale[n];
    }
    /* saturation (qlab's, for outliers ExLlamaV2's fp16 would turn into inf): the largest code magnitude
     * 2^(bits-1) times the largest scale, qs 16 under M·p at p <= 1.2, must stay a finite fp16 */
    const float cap = 65504.0f / qzero / 1.2f;
    if (M > cap) M = cap;
    for (int64_t n = 0; n < N; n++) {
        float t = sqrtf(scale[n] / M) * 16.0f;
        float r = nearbyintf(t); /* torch.round: half to even */
        qs[n] = (uint8_t)(r < 1.0f ? 1 : r > 16.0f ? 16 : r);
        float f = (float)qs[n] / 16.0f;
        scale[n] = f * f * M; /* qscale_tw before the shrink */
    }
    /* the shrink p minimising Σ|err|^3.5 over the group (quantize_err, norm 3.5, grid of 96 steps) */
    const int p_grid = 96;
    const float min_p = 0.70f, max_p = 1.20f;
    int best = 0;
    double best_err = INFINITY;
    for (int i = 0; i <= p_grid; i++) {
        float pi = (float)i / (float)p_grid, p = min_p * (1.0f - pi) + max_p * pi;
        double err = 0.0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t n = 0; n < N; n++) {
                float x = w[r * N + n];
                if (!isfinite(x)) continue;
                float s = scale[n] * p;
                float c = nearbyintf(x / s);
                c = c < -qzero ? -qzero : c > maxq - qzero ? maxq - qzero : c;
                float d = fabsf(c * s - x);
                err += (double)(d * d * d * sqrtf(d));
            }
        if (err < best_err) best_err = err, best = i;
    }
    float bf = (float)best / (float)p_grid;
    float p = max_p * bf + min_p * (1.0f - bf);
    *smax_h = ql_fp32_to_fp16(M * p);
    for (int64_t n = 0; n < N; n++) scale[n] = ql_exl2_scale(qs[n], *smax_h);
}

/* ---- packing ---- */

void ql_exl2_pack(const ql_exl2_mix *m, int64_t K, int64_t N, const int64_t *perm, const uint8_t *qs,
                  const uint16_t *smax_h, const uint8_t *codes, void *dst) {
    ql_exl2_offsets o;
    if (!ql_exl2_offsets_of(m, K, N, &o)) return;
    uint8_t *d = dst;
    memset(d, 0, (size_t)o.total);
    ql_exl2_group *g = malloc((size_t)o.G * sizeof *g);
    if (!g) return;
    ql_exl2_layout(m, K, g);
    for (int64_t p = 0; p < K; p++) wr32(d + o.invperm + 4 * perm[p], (uint32_t)p); /* invperm = argsort(perm) */
    for (int64_t i = 0; i < o.G; i++) {
        wr16(d + o.scale_max + 2 * i, smax_h[i]);
        wr16(d + o.groups + 4 * i, (uint16_t)g[i].bits);
        wr16(d + o.groups + 4 * i + 2, (uint16_t)g[i].qrow);
        for (int64_t n = 0; n < N; n++) { /* pack_rows_4: qs - 1, 8 per word, LSB first along N */
            uint8_t *wp = d + o.scale + (i * ((N + 7) / 8) + n / 8) * 4;
            wr32(wp, rd32(wp) | (uint32_t)(qs[i * N + n] - 1) << (4 * (n % 8)));
        }
        /* pack_columns: each output's codes down the group as one LSB-first stream of 32-bit words */
        const int b = g[i].bits;
        for (int64_t r = 0; r < g[i].rows; r++) {
            int64_t pos = r * b, word = g[i].qrow + pos / 32;
            int sh = (int)(pos % 32);
            const uint8_t *c = codes + (g[i].row + r) * N;
            for (int64_t n = 0; n < N; n++) {
                uint8_t *wp = d + o.weight + (word * N + n) * 4;
                wr32(wp, rd32(wp) | (uint32_t)c[n] << sh);
                if (sh + b > 32) {
                    uint8_t *wq = wp + N * 4;
                    wr32(wq, rd32(wq) | (uint32_t)c[n] >> (32 - sh));
                }
            }
        }
    }
    free(g);
}

/* ---- the reference codec ---- */

/* Processing order: decreasing key, ties by index. Merge sort, so it is reentrant (qsort with a global key
 * is not). Shared with --method exl2, which orders by the Hessian's diagonal. */
void ql_exl2_order_desc(int64_t *perm, int64_t n, const double *key, int64_t *tmp) {
    if (n < 2) return;
    int64_t h = n / 2;
    ql_exl2_order_desc(perm, h, key, tmp);
    ql_exl2_order_desc(perm + h, n - h, key, tmp);
    int64_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int64_t a = perm[i], b = perm[j];
        bool first = key[a] != key[b] ? key[a] > key[b] : a < b;
        tmp[k++] = first ? perm[i++] : perm[j++];
    }
    while (i < h) tmp[k++] = perm[i++];
    while (j < n) tmp[k++] = perm[j++];
    memcpy(perm, tmp, (size_t)n * sizeof *perm);
}

static void exl2_quantize(const ql_exl2_mix *m, const float *src, void *dst, int64_t nrows, int64_t ncols,
                          const float *imp) {
    const int64_t K = ncols, N = nrows;
    ql_exl2_offsets o;
    if (!ql_exl2_offsets_of(m, K, N, &o)) return;
    int64_t *perm = malloc((size_t)K * 2 * sizeof *perm);
    ql_exl2_group *g = malloc((size_t)o.G * sizeof *g);
    float *wt = malloc((size_t)(K * N) * sizeof(float)), *scale = malloc((size_t)N * sizeof(float));
    uint8_t *codes = malloc((size_t)(K * N)), *qs = malloc((size_t)(o.G * N));
    uint16_t *smax = malloc((size_t)o.G * sizeof *smax);
    if (perm && g && wt && scale && codes && qs && smax) {
        for (int64_t k = 0; k < K; k++) perm[k] = k;
        double *key = imp ? ql_malloc((size_t)K * sizeof *key) : NULL; /* float -> double keeps order and ties */
        if (key) {
            for (int64_t k = 0; k < K; k++) key[k] = imp[k];
            ql_exl2_order_desc(perm, K, key, perm + K);
        }
        free(key);
        for (int64_t p = 0; p < K; p++)
            for (int64_t n = 0; n < N; n++) wt[p * N + n] = src[n * K + perm[p]];
        ql_exl2_layout(m, K, g);
        for (int64_t i = 0; i < o.G; i++) {
            const float *w = wt + g[i].row * N;
            ql_exl2_fit_group(w, g[i].rows, N, g[i].bits, qs + i * N, &smax[i], scale);
            for (int64_t r = 0; r < g[i].rows; r++)
                ql_exl2_round_row(w + r * N, scale, g[i].bits, N, codes + (g[i].row + r) * N, NULL);
        }
        ql_exl2_pack(m, K, N, perm, qs, smax, codes, dst);
    }
    free(perm), free(g), free(wt), free(scale), free(codes), free(qs), free(smax);
}

static void exl2_dequantize(const ql_exl2_mix *m, const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t K = ncols, N = nrows;
    ql_exl2_offsets o;
    if (!ql_exl2_offsets_of(m, K, N, &o)) return;
    const uint8_t *s = src;
    ql_exl2_group *g = malloc((size_t)o.G * sizeof *g);
    int64_t *perm = malloc((size_t)K * sizeof *perm);
    float *scale = malloc((size_t)N * sizeof(float));
    if (g && perm && scale) {
        ql_exl2_layout(m, K, g);
        /* the stored q_invperm, trusted only as far as it is a permutation: anything else decodes to 0 */
        for (int64_t p = 0; p < K; p++) perm[p] = -1;
        bool ok = true;
        for (int64_t k = 0; k < K && ok; k++) {
            uint32_t p = rd32(s + o.invperm + 4 * k);
            if (p >= (uint32_t)K || perm[p] >= 0) ok = false;
            else perm[p] = k;
        }
        if (!ok) memset(dst, 0, (size_t)(K * N) * sizeof(float));
        for (int64_t i = 0; i < o.G && ok; i++) {
            const uint16_t smax = rd16(s + o.scale_max + 2 * i);
            for (int64_t n = 0; n < N; n++) {
                int qs = (int)(rd32(s + o.scale + (i * ((N + 7) / 8) + n / 8) * 4) >> (4 * (n % 8)) & 15) + 1;
                scale[n] = ql_exl2_scale(qs, smax);
            }
            const int b = g[i].bits;
            const uint32_t mask = (1u << b) - 1;
            for (int64_t r = 0; r < g[i].rows; r++) {
                int64_t pos = r * b, word = g[i].qrow + pos / 32, col = perm[g[i].row + r];
                int sh = (int)(pos % 32);
                for (int64_t n = 0; n < N; n++) {
                    const uint8_t *wp = s + o.weight + (word * N + n) * 4;
                    uint64_t v = rd32(wp);
                    if (sh + b > 32) v |= (uint64_t)rd32(wp + N * 4) << 32;
                    int c = (int)((v >> sh) & mask);
                    dst[n * K + col] = ql_exl2_value(c, b, scale[n]);
                }
            }
        }
    }
    free(g), free(perm), free(scale);
}

/* ---- the entries ---- */

typedef struct {
    const char *name, *label, *desc;
    ql_exl2_mix mix;
} exl2_entry;

#define P1(b, g) {1, {b}, {g}, {1.0}}
#define P2(b0, g0, p0, b1, g1, p1) {2, {b0, b1}, {g0, g1}, {p0, p1}}
#define P3(b0, g0, p0, b1, g1, p1, b2, g2, p2) {3, {b0, b1, b2}, {g0, g1, g2}, {p0, p1, p2}}

/* X(index, name, label, ExLlamaV2's description, bpw at 4096 x 4096 (ExLlamaV2's QParams.bpw), test tolerance, mix) */
#define EXL2_TABLE(X)                                                                                        \
    X(0, "exl2_5x3b64_95x2b64", "x2.13", "0.05:3b_64g/0.95:2b_64g", 2.13299560546875, 0.45, P2(3, 64, 0.05, 2, 64, 0.95))             \
    X(1, "exl2_10x3b64_90x2b64", "x2.18", "0.1:3b_64g/0.9:2b_64g", 2.17987060546875, 0.45, P2(3, 64, 0.1, 2, 64, 0.9))                \
    X(2, "exl2_25x3b64_75x2b64", "x2.32", "0.25:3b_64g/0.75:2b_64g", 2.32049560546875, 0.45, P2(3, 64, 0.25, 2, 64, 0.75))            \
    X(3, "exl2_30x3b64_70x2b64", "x2.38", "0.3:3b_64g/0.7:2b_64g", 2.38299560546875, 0.45, P2(3, 64, 0.3, 2, 64, 0.7))                \
    X(4, "exl2_5x6b32_20x3b64_75x2b64", "x2.50", "0.05:6b_32g/0.2:3b_64g/0.75:2b_64g", 2.496288299560547, 0.45,                        \
      P3(6, 32, 0.05, 3, 64, 0.2, 2, 64, 0.75))                                                              \
    X(5, "exl2_30x4b32_70x2b32", "x2.74", "0.3:4b_32g/0.7:2b_32g", 2.7425537109375, 0.45, P2(4, 32, 0.3, 2, 32, 0.7))                \
    X(6, "exl2_10x4b128_90x3b128", "x3.16", "0.1:4b_128g/0.9:3b_128g", 3.164154052734375, 0.22, P2(4, 128, 0.1, 3, 128, 0.9))          \
    X(7, "exl2_10x4b64_90x3b64", "x3.18", "0.1:4b_64g/0.9:3b_64g", 3.17987060546875, 0.22, P2(4, 64, 0.1, 3, 64, 0.9))                \
    X(8, "exl2_10x4b32_90x3b32", "x3.23", "0.1:4b_32g/0.9:3b_32g", 3.2347412109375, 0.22, P2(4, 32, 0.1, 3, 32, 0.9))                \
    X(9, "exl2_5x5b32_95x3b32", "x3.24", "0.05:5b_32g/0.95:3b_32g", 3.2425537109375, 0.22, P2(5, 32, 0.05, 3, 32, 0.95))             \
    X(10, "exl2_25x4b128_75x3b128", "x3.29", "0.25:4b_128g/0.75:3b_128g", 3.289154052734375, 0.22, P2(4, 128, 0.25, 3, 128, 0.75))     \
    X(11, "exl2_15x4b32_85x3b32", "x3.29", "0.15:4b_32g/0.85:3b_32g", 3.2894287109375, 0.22, P2(4, 32, 0.15, 3, 32, 0.85))           \
    X(12, "exl2_25x4b32_75x3b32", "x3.38", "0.25:4b_32g/0.75:3b_32g", 3.3831787109375, 0.22, P2(4, 32, 0.25, 3, 32, 0.75))           \
    X(13, "exl2_5x8b32_10x4b128_85x3b128", "x3.44", "0.05:8b_32g/0.1:4b_128g/0.85:3b_128g", 3.4434680938720703, 0.22,                   \
      P3(8, 32, 0.05, 4, 128, 0.1, 3, 128, 0.85))                                                            \
    X(14, "exl2_5x8b32_10x4b32_85x3b32", "x3.51", "0.05:8b_32g/0.1:4b_32g/0.85:3b_32g", 3.5081787109375, 0.22,                       \
      P3(8, 32, 0.05, 4, 32, 0.1, 3, 32, 0.85))                                                              \
    X(15, "exl2_4b128", "x4.04", "1:4b_128g", 4.039154052734375, 0.12, P1(4, 128))                                                     \
    X(16, "exl2_4b64", "x4.07", "1:4b_64g", 4.07049560546875, 0.12, P1(4, 64))                                                        \
    X(17, "exl2_4b32", "x4.13", "1:4b_32g", 4.1331787109375, 0.12, P1(4, 32))                                                        \
    X(18, "exl2_10x5b128_90x4b128", "x4.16", "0.1:5b_128g/0.9:4b_128g", 4.164154052734375, 0.12, P2(5, 128, 0.1, 4, 128, 0.9))         \
    X(19, "exl2_10x5b64_90x4b64", "x4.18", "0.1:5b_64g/0.9:4b_64g", 4.17987060546875, 0.12, P2(5, 64, 0.1, 4, 64, 0.9))               \
    X(20, "exl2_5x5b32_95x4b32", "x4.19", "0.05:5b_32g/0.95:4b_32g", 4.1878662109375, 0.12, P2(5, 32, 0.05, 4, 32, 0.95))            \
    X(21, "exl2_10x5b32_90x4b32", "x4.23", "0.1:5b_32g/0.9:4b_32g", 4.2347412109375, 0.12, P2(5, 32, 0.1, 4, 32, 0.9))               \
    X(22, "exl2_5x8b32_95x4b128", "x4.26", "0.05:8b_32g/0.95:4b_128g", 4.26378059387207, 0.12, P2(8, 32, 0.05, 4, 128, 0.95))         \
    X(23, "exl2_25x5b128_75x4b128", "x4.29", "0.25:5b_128g/0.75:4b_128g", 4.289154052734375, 0.12, P2(5, 128, 0.25, 4, 128, 0.75))     \
    X(24, "exl2_5x8b32_95x4b32", "x4.35", "0.05:8b_32g/0.95:4b_32g", 4.3519287109375, 0.12, P2(8, 32, 0.05, 4, 32, 0.95))            \
    X(25, "exl2_25x5b32_75x4b32", "x4.38", "0.25:5b_32g/0.75:4b_32g", 4.3831787109375, 0.12, P2(5, 32, 0.25, 4, 32, 0.75))           \
    X(26, "exl2_5x8b32_10x5b128_85x4b128", "x4.39", "0.05:8b_32g/0.1:5b_128g/0.85:4b_128g", 4.38878059387207, 0.12,                   \
      P3(8, 32, 0.05, 5, 128, 0.1, 4, 128, 0.85))                                                            \
    X(27, "exl2_15x6b32_85x4b32", "x4.45", "0.15:6b_32g/0.85:4b_32g", 4.4456787109375, 0.12, P2(6, 32, 0.15, 4, 32, 0.85))           \
    X(28, "exl2_5x8b32_10x5b32_85x4b32", "x4.45", "0.05:8b_32g/0.1:5b_32g/0.85:4b_32g", 4.4534912109375, 0.12,                       \
      P3(8, 32, 0.05, 5, 32, 0.1, 4, 32, 0.85))                                                              \
    X(29, "exl2_5b64", "x5.07", "1:5b_64g", 5.07049560546875, 0.055, P1(5, 64))                                                        \
    X(30, "exl2_5b32", "x5.13", "1:5b_32g", 5.1331787109375, 0.055, P1(5, 32))                                                        \
    X(31, "exl2_10x6b128_90x5b128", "x5.16", "0.1:6b_128g/0.9:5b_128g", 5.164154052734375, 0.055, P2(6, 128, 0.1, 5, 128, 0.9))         \
    X(32, "exl2_15x6b128_85x5b128", "x5.20", "0.15:6b_128g/0.85:5b_128g", 5.195404052734375, 0.055, P2(6, 128, 0.15, 5, 128, 0.85))     \
    X(33, "exl2_10x6b32_90x5b32", "x5.23", "0.1:6b_32g/0.9:5b_32g", 5.2347412109375, 0.055, P2(6, 32, 0.1, 5, 32, 0.9))               \
    X(34, "exl2_25x6b128_75x5b128", "x5.29", "0.25:6b_128g/0.75:5b_128g", 5.289154052734375, 0.055, P2(6, 128, 0.25, 5, 128, 0.75))     \
    X(35, "exl2_5x8b32_10x6b128_85x5b128", "x5.33", "0.05:8b_32g/0.1:6b_128g/0.85:5b_128g", 5.33409309387207, 0.055,                   \
      P3(8, 32, 0.05, 6, 128, 0.1, 5, 128, 0.85))                                                            \
    X(36, "exl2_25x6b32_75x5b32", "x5.38", "0.25:6b_32g/0.75:5b_32g", 5.3831787109375, 0.055, P2(6, 32, 0.25, 5, 32, 0.75))           \
    X(37, "exl2_5x8b32_10x6b32_85x5b32", "x5.40", "0.05:8b_32g/0.1:6b_32g/0.85:5b_32g", 5.3988037109375, 0.055,                       \
      P3(8, 32, 0.05, 6, 32, 0.1, 5, 32, 0.85))                                                              \
    X(38, "exl2_6b128", "x6.04", "1:6b_128g", 6.039154052734375, 0.028, P1(6, 128))                                                     \
    X(39, "exl2_6b32", "x6.13", "1:6b_32g", 6.1331787109375, 0.028, P1(6, 32))                                                        \
    X(40, "exl2_5x8b32_95x6b128", "x6.15", "0.05:8b_32g/0.95:6b_128g", 6.15440559387207, 0.028, P2(8, 32, 0.05, 6, 128, 0.95))         \
    X(41, "exl2_10x8b128_90x6b128", "x6.29", "0.1:8b_128g/0.9:6b_128g", 6.289154052734375, 0.028, P2(8, 128, 0.1, 6, 128, 0.9))         \
    X(42, "exl2_15x8b128_85x6b128", "x6.35", "0.15:8b_128g/0.85:6b_128g", 6.351654052734375, 0.028, P2(8, 128, 0.15, 6, 128, 0.85))     \
    X(43, "exl2_8b128", "x8.04", "1:8b_128g", 8.039154052734375, 0.007, P1(8, 128))                                                     \
    X(44, "exl2_8b32", "x8.13", "1:8b_32g", 8.1331787109375, 0.007, P1(8, 32))

#define EXL2_MIX(i, name, label, desc, bpw, tol, mix) [i] = mix,
static const ql_exl2_mix g_mix[] = {EXL2_TABLE(EXL2_MIX)};

static int64_t exl2_bytes_of(const ql_exl2_mix *m, int64_t ncols, int64_t nrows) {
    ql_exl2_offsets o;
    return ql_exl2_offsets_of(m, ncols, nrows, &o) ? o.total : -1;
}

static bool exl2_shape(int64_t ncols, int64_t nrows, char *why, size_t cap) {
    (void)nrows;
    if (ncols % 32 == 0 && ncols <= 65535) return true;
    if (why)
        snprintf(why, cap, "EXL2 needs rows (inputs) that are a multiple of 32 and at most 65535 (ExLlamaV2's "
                           "kernels read whole 32-row words and 16-bit permutations)");
    return false;
}

/* The CUDA column: the decoder only (kernels/exl2_cuda.cu) with this entry's layout; the quantizer fits groups
 * against the weights (ExLlamaV2's search) and stays on the CPU. */
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_exl2_api.h"
static ql_status exl2_cuda_decode(const ql_exl2_mix *m, const void *src, float *dst, int64_t nrows, int64_t ncols,
                                  void *stream, bool on_device) {
    ql_exl2_offsets o;
    if (!ql_exl2_offsets_of(m, ncols, nrows, &o))
        return ql_fail(QL_ERR_ARG, "exl2: a %lld x %lld tensor does not fit the layout", (long long)nrows,
                       (long long)ncols);
    ql_exl2_group *eg = malloc((size_t)o.G * sizeof *eg);
    ql_cuda_exl2_group *g = malloc((size_t)o.G * sizeof *g);
    ql_status st = QL_ERR_NOMEM;
    if (eg && g) {
        ql_exl2_layout(m, ncols, eg);
        for (int64_t i = 0; i < o.G; i++) g[i] = (ql_cuda_exl2_group){eg[i].bits, eg[i].row, eg[i].rows, eg[i].qrow};
        const ql_cuda_exl2_layout L = {g, o.G, o.invperm, o.scale_max, o.scale, o.weight};
        st = on_device ? ql_cuda_exl2_dequantize_dev(&L, src, dst, nrows, ncols, stream)
                       : ql_cuda_exl2_dequantize_emulated(&L, src, dst, nrows, ncols);
    } else {
        ql_fail(QL_ERR_NOMEM, "exl2: out of memory");
    }
    free(eg), free(g);
    return st;
}
#define EXL2_CUDA(i)                                                                                         \
    static ql_status exl2_cd##i(const void *s, float *d, int64_t r, int64_t c, void *st) {                   \
        return exl2_cuda_decode(&g_mix[i], s, d, r, c, st, true);                                            \
    }                                                                                                        \
    static ql_status exl2_cde##i(const void *s, float *d, int64_t r, int64_t c) {                            \
        return exl2_cuda_decode(&g_mix[i], s, d, r, c, NULL, false);                                         \
    }                                                                                                        \
    static const ql_format_cuda_ops exl2_cuda##i = {.dequantize_dev = exl2_cd##i, .dequantize_emulated = exl2_cde##i};
#define EXL2_CUDA_OPS(i) (&exl2_cuda##i)
#else
#define EXL2_CUDA(i)
#define EXL2_CUDA_OPS(i) NULL
#endif

#define EXL2_WORDS                                                                                           \
    "ExLlamaV2's EXL2: the inputs of a matrix are sorted by importance and the most important share "        \
    "gets more bits (for example 5% at 3 bits and 95% at 2 bits), in groups of 32 to 128 inputs with a "     \
    "4-bit scale per output and group. --method exl2 quantizes them with GPTQ's error feedback."

#define EXL2_ENTRY(i, name_, label_, desc, bpw_, tol_, mix)                                                              \
    EXL2_CUDA(i)                                                                                             \
    static void exl2_q##i(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp) {     \
        exl2_quantize(&g_mix[i], src, dst, nrows, ncols, imp);                                               \
    }                                                                                                        \
    static void exl2_d##i(const void *src, float *dst, int64_t nrows, int64_t ncols) {                       \
        exl2_dequantize(&g_mix[i], src, dst, nrows, ncols);                                                  \
    }                                                                                                        \
    static int64_t exl2_b##i(int64_t ncols, int64_t nrows) { return exl2_bytes_of(&g_mix[i], ncols, nrows); } \
    const ql_format ql_fmt_exl2_##i = {                                                                      \
        .name = name_,                                                                                       \
        .summary = "EXL2 " desc " s4: ExLlamaV2's mixed bits per matrix",                                    \
        .type = QL_TYPE_EXT_BASE + 0xC0 + (i),                                                               \
        .family = QL_FAMILY_EXL2,                                                                            \
        .grid = QL_GRID_NONE, /* one permutation and max scale per group across rows: m_exl2 instead */   \
        .label = label_,                                                                                     \
        .explain = EXL2_WORDS,                                                                               \
        .block = 32,                                                                                         \
        .block_bytes = 1, /* sizes come from tensor_bytes */                                                 \
        .bpw = bpw_,                                                                                         \
        .whole_tensor = true,                                                                                \
        .uses_importance = true,                                                                             \
        .tolerance = tol_,                                                                                   \
        .tensor_bytes = exl2_b##i,                                                                           \
        .shape_ok = exl2_shape,                                                                              \
        .quantize_rows = exl2_q##i,                                                                          \
        .dequantize_rows = exl2_d##i,                                                                        \
        .cuda = EXL2_CUDA_OPS(i),                                                                            \
    };
EXL2_TABLE(EXL2_ENTRY)

bool ql_exl2_format_mix(const ql_format *f, ql_exl2_mix *m) {
    if (!f || f->family != QL_FAMILY_EXL2) return false;
    uint32_t i = f->type - (QL_TYPE_EXT_BASE + 0xC0);
    if (i >= QL_ARRAY_LEN(g_mix)) return false;
    if (m) *m = g_mix[i];
    return true;
}
