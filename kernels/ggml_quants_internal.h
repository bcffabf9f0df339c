/* ggml_quants_internal.h — scalar pieces shared by the ggml codecs: ggml_quants_ref.c (the specification)
 * and its SIMD twins kernels/simd_*.c, so the twins use the reference's very
 * arithmetic instead of copies of it. Block layouts (kernels/blocks.h), nearest_int and the scale packers are here (tiny,
 * static inline); the searches and super-block scale steps are defined once, in ggml_quants_ref.c.
 * Internal to kernels/ (not API): include only from the reference codecs (ggml_quants_ref.c,
 * iq_quants_ref.c) and the SIMD files (simd_*.c). Pure, thread-safe. */
#ifndef QL_GGML_QUANTS_INTERNAL_H
#define QL_GGML_QUANTS_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "kernels/blocks.h" /* blk_* layouts and QK_K, shared with the CUDA kernels */

#define GROUP_MAX_EPS 1e-15f
#define QMIN(a, b) ((a) < (b) ? (a) : (b))
#define QMAX(a, b) ((a) > (b) ? (a) : (b))

/* IQ4_NL / IQ4_XS code book (sorted). */
static const int8_t kvalues_iq4nl[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* Round to nearest, ties to even, for |fval| <= 2^22: adding 1.5*2^23 leaves the integer in the
 * low mantissa bits. Out-of-range inputs give garbage, never a trap (ggml only asserts). */
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int32_t i;
    memcpy(&i, &val, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

/* Q3_K: the 16 six-bit sub-block scales (biased by 32) out of the 12-byte scale field. */
static inline void q3_K_unpack_scales(const uint8_t sc12[12], int8_t scales[16]) {
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    memcpy(aux, sc12, 12);
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    memcpy(scales, aux, 16);
}

/* Q4_K/Q5_K: the 6-bit (scale, min) pair of sub-block j out of / into the 12-byte scale field. */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

static inline void k4_put_scale_min(uint8_t *scales, int j, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* 6-bit scale l (already offset by 32) for sub-block j into the 12-byte Q3_K scale field. */
static inline void q3_K_put_scale(uint8_t *scales, int j, int l) {
    if (j < 8)
        scales[j] = (uint8_t)(l & 0xF);
    else
        scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
    l >>= 4;
    scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
}

/* 5-bit packing shared by Q5_0/Q5_1: low nibbles in qs, 5th bits of element j in bit j of qh. */
static inline void pack_q5(const uint8_t *L, uint8_t *qs, uint8_t *qh_out) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = L[j], xi1 = L[j + 16];
        qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    memcpy(qh_out, &qh, 4);
}

/* ---- defined in ggml_quants_ref.c ---- */

/* Symmetric scale search: L[i] in [0, 2*nmax), x ~ scale*(L - nmax). rmse_type 1 with weights qw
 * (or x^2 when qw is NULL) is the only mode ggml's K-quants and legacy imatrix paths use. */
float ql_ggml_make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw);
/* Non-negative values (sub-block scales or mins) onto 0..nmax with weights: the imatrix K-quants. */
float ql_ggml_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *quant_weights);
/* Weighted row variance term shared by the legacy imatrix quantizers: sum(x^2)/n over the row. */
float ql_ggml_row_sigma2(const float *x, int64_t n);

/* Super-block scale steps, once the sub-block searches gave scales[] (and mins[]); imat selects the
 * weighted make_qp_quants / make_qx_quants path with per-sub-block weights sw (else sw is unused). */
void ql_ggml_q2_K_pack_scales(const float *scales, const float *mins, const float *sw, bool imat,
                              blk_q2_K *y);
void ql_ggml_q3_K_pack_scales(const float *scales, const float *sw, bool imat, blk_q3_K *y);
/* Q4_K and Q5_K: fills the 12-byte sc12 field and the fp16 d / dmin. */
void ql_ggml_k45_pack_scales(const float *scales, const float *mins, const float *sw, bool imat,
                             uint8_t *sc12, uint16_t *d, uint16_t *dmin);
/* Q6_K; false when the block is all (near) zero and was zeroed. */
bool ql_ggml_q6_K_pack_scales(const float *scales, blk_q6_K *y);

/* Level packing: L[QK_K] in 0..15 (Q4_K) / 0..63 (Q6_K) into the block's bit fields. */
void ql_ggml_q4_K_pack_levels(const uint8_t *L, blk_q4_K *y);
void ql_ggml_q6_K_pack_levels(const int8_t *L, blk_q6_K *y);

#endif /* QL_GGML_QUANTS_INTERNAL_H */
