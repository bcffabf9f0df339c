/* simd_kquants.c — AVX2 / AVX-512 twins of ggml's K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K
 * (kernels/simd.h); ncols a multiple of 256. The sub-block scale searches run one sub-block per lane
 * (kernels/simd_prims.h; make_q3_quants here, as only Q3_K has it); the super-block scale steps and level
 * packers are the reference's own (ggml_quants_internal.h), so only the searches and the final levels are
 * vector code. A super-block with a non-finite value or imatrix goes to the reference.
 * Exactness rules and the two-width build: kernels/simd_internal.h. */
#ifndef QL_SIMD_TEMPLATE
#include "kernels/simd_internal.h"

/* 32 bytes at a time for the bit packing (both instantiations have 256-bit registers). */
typedef uint8_t u8x32 __attribute__((vector_size(32)));
typedef int8_t i8x32 __attribute__((vector_size(32)));

#define QL_SIMD_BODY "kernels/simd_kquants.c"
#include "kernels/simd_instantiate.h"

QL_SIMD_QUANT_ENTRY(q2_k, q2_K_quant, QK_K)
QL_SIMD_QUANT_ENTRY(q3_k, q3_K_quant, QK_K)
QL_SIMD_QUANT_ENTRY(q4_k, q4_K_quant, QK_K)
QL_SIMD_QUANT_ENTRY(q5_k, q5_K_quant, QK_K)
QL_SIMD_QUANT_ENTRY(q6_k, q6_K_quant, QK_K)
QL_SIMD_DEQUANT_ENTRY(q2_k, q2_K_dequant, QK_K)
QL_SIMD_DEQUANT_ENTRY(q3_k, q3_K_dequant, QK_K)
QL_SIMD_DEQUANT_ENTRY(q4_k, q4_K_dequant, QK_K)
QL_SIMD_DEQUANT_ENTRY(q5_k, q5_K_dequant, QK_K)
QL_SIMD_DEQUANT_ENTRY(q6_k, q6_K_dequant, QK_K)

#else /* ================= the vector body, W lanes (kernels/simd_instantiate.h) ================= */

/* Q5_K's levels (0..31) into its nibbles qs and fifth bits qh. */
static TGT void SFX(q5_K_pack_levels)(const uint8_t *L, blk_q5_K *y) {
    u8x32 qh = (u8x32){0};
    for (int nn = 0; nn < 4; ++nn) {
        u8x32 l1, l2;
        memcpy(&l1, L + 64 * nn, 32);
        memcpy(&l2, L + 64 * nn + 32, 32);
        const u8x32 h1 = (u8x32)(l1 > 15), h2 = (u8x32)(l2 > 15);
        qh |= (h1 & (uint8_t)(1u << (2 * nn))) | (h2 & (uint8_t)(2u << (2 * nn)));
        const u8x32 ql = (l1 & 0xF) | ((l2 & 0xF) << 4);
        memcpy(y->qs + 32 * nn, &ql, 32);
    }
    memcpy(y->qh, &qh, 32);
}

/* qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6 (levels 0..3) */
static TGT void SFX(pack_2bit)(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128) {
        u8x32 a, b, c, d;
        memcpy(&a, L + j, 32);
        memcpy(&b, L + j + 32, 32);
        memcpy(&c, L + j + 64, 32);
        memcpy(&d, L + j + 96, 32);
        const u8x32 q = a | (b << 2) | (c << 4) | (d << 6);
        memcpy(qs + j / 4, &q, 32);
    }
}

/* Sub-blocks p..p+W-1 of 16 of one super-block, transposed: X[i] lane s = xb[16 * (p + s) + i]; Wq the
 * same of qw (zeros when qw is NULL). */
static inline TGT void SFX(load16)(const float *xb, const float *qw, int p, VF *X, VF *Wq) {
    float xt[16 * W], wt[16 * W];
    for (int s = 0; s < W; ++s)
        for (int i = 0; i < 16; ++i) {
            xt[i * W + s] = xb[16 * (p + s) + i];
            wt[i * W + s] = qw ? qw[16 * (p + s) + i] : 0.f;
        }
    for (int i = 0; i < 16; ++i) {
        X[i] = SFX(load)(xt + i * W);
        Wq[i] = SFX(load)(wt + i * W);
    }
}

/* 2 * sum(x^2) / QK_K over a super-block, in the reference's order */
static inline float SFX(sigma2)(const float *xb) {
    float sum_x2 = 0;
    for (int l = 0; l < QK_K; ++l) sum_x2 += xb[l] * xb[l];
    return 2 * sum_x2 / QK_K;
}

/* ---------------- Q2_K ---------------- */
static TGT void SFX(q2_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    blk_q2_K *y = vy;
    for (int64_t b = 0; b < nb; ++b) {
        const float *xb = x + QK_K * b;
        const float *qw = imatrix ? imatrix + QK_K * (b % nb_row) : NULL;
        if (!SFX(finite)(xb, QK_K) || (qw && !SFX(finite)(qw, QK_K))) {
            ql_quantize_row_q2_K_ref(xb, &y[b], QK_K, qw);
            continue;
        }
        float sigma2 = 0;
        if (qw) {
            float sumx2 = 0;
            for (int j = 0; j < QK_K; ++j) sumx2 += xb[j] * xb[j];
            sigma2 = sumx2 / QK_K;
        }
        float scales[QK_K / 16], mins[QK_K / 16], sw[QK_K / 16];
        uint8_t L[QK_K];
        for (int p = 0; p < QK_K / 16; p += W) {
            VF X[16], Wt[16], swv = SFX(splat)(0.f), mn;
            VI Lv[16];
            SFX(load16)(xb, qw, p, X, Wt);
            VF sc;
            if (qw) {
                for (int i = 0; i < 16; ++i) {
                    Wt[i] = Wt[i] * SFX(vsqrt)(sigma2 + X[i] * X[i]);
                    swv += Wt[i];
                }
                sc = SFX(qkx_lanes)(16, X, Wt, 3, -0.9f, 0.05f, 36, true, false, Lv, &mn);
            } else {
                for (int i = 0; i < 16; ++i) Wt[i] = SFX(vabs)(X[i]);
                sc = SFX(qkx_lanes)(16, X, Wt, 3, -0.5f, 0.1f, 15, false, true, Lv, &mn);
            }
            SFX(store)(scales + p, sc);
            SFX(store)(mins + p, mn);
            SFX(store)(sw + p, swv);
            for (int s = 0; s < W; ++s) SFX(untranspose)(Lv, 16, s, L + 16 * (p + s));
        }
        ql_ggml_q2_K_pack_scales(scales, mins, sw, qw != NULL, &y[b]);
        const float dd = ql_simd_fp16_to_fp32(y[b].d), dmm = ql_simd_fp16_to_fp32(y[b].dmin);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = dd * (y[b].scales[j] & 0xF);
            if (!d) continue;
            const float dm = dmm * (y[b].scales[j] >> 4);
            SFX(requant)(xb + 16 * j, dm, d, 0, 3, 0, 16, L + 16 * j);
        }
        SFX(pack_2bit)(L, y[b].qs);
    }
}

static TGT void SFX(q2_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q2_K *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = ql_simd_fp16_to_fp32(x[i].d);
        const float min = ql_simd_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int h = 0; h < 2; ++h) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; l += W) {
                        const VI v = (SFX(load_u8)(q + 16 * h + l) >> shift) & 3;
                        SFX(store)(y + l, dl * SFX(cvt)(v) - ml);
                    }
                    y += 16;
                }
            }
            q += 32;
        }
    }
}

/* ---------------- Q3_K ---------------- */

/* make_q3_quants(16, 4, x, L, true) for 16-element sub-blocks, one per lane, in two independent vectors
 * (xt[g][i]: element i, group g) so that one group's long dependency chain overlaps the other's. The
 * coordinate descent is sequential inside a lane; a pass that changes nothing leaves the state as it was,
 * so lanes the reference would have stopped simply repeat a no-op pass. L gets level + 4. */
static TGT void SFX(q3_lanes)(VF xt[2][16], VI L[2][16], VF *scale) {
    enum { n = 16, nmax = 4, NG = 2 };
    VF sumlx[NG], suml2[NG];
    VI small[NG];
    for (int g = 0; g < NG; ++g) {
        VF max;
        small[g] = SFX(absmax_lanes)(n, xt[g], &max) < GROUP_MAX_EPS;
        const VF iscale = (float)-nmax / max;
        sumlx[g] = suml2[g] = SFX(splat)(0.f);
        for (int i = 0; i < n; ++i) {
            L[g][i] = SFX(clampi)(SFX(nearest)(iscale * xt[g][i]), -nmax, nmax - 1);
            const VF w = xt[g][i] * xt[g][i];
            const VF lf = SFX(cvt)(L[g][i]);
            sumlx[g] += w * xt[g][i] * lf;
            suml2[g] += w * lf * lf;
        }
    }
    for (int itry = 0; itry < 5; ++itry) {
        VI changed = (VI){0};
        for (int i = 0; i < n; ++i)
            for (int g = 0; g < NG; ++g) {
                const VF x = xt[g][i], w = x * x;
                const VF lf = SFX(cvt)(L[g][i]);
                VF slx = sumlx[g] - w * x * lf;
                const VI pos = slx > 0.f;
                VF sl2 = suml2[g] - w * lf * lf;
                const VI new_l = SFX(clampi)(SFX(nearest)(x * sl2 / slx), -nmax, nmax - 1);
                const VF nf = SFX(cvt)(new_l);
                slx += w * x * nf;
                sl2 += w * nf * nf;
                const VI acc = pos & (new_l != L[g][i]) & (sl2 > 0.f) &
                               (slx * slx * suml2[g] > sumlx[g] * sumlx[g] * sl2);
                L[g][i] = SFX(seli)(acc, new_l, L[g][i]);
                sumlx[g] = SFX(sel)(acc, slx, sumlx[g]);
                suml2[g] = SFX(sel)(acc, sl2, suml2[g]);
                changed |= acc;
            }
        if (!SFX(mask)(changed)) break;
    }
    for (int g = 0; g < NG; ++g) {
        for (int i = 0; i < n; ++i) L[g][i] = SFX(seli)(small[g], (VI){0}, L[g][i] + nmax);
        const VF sc = SFX(sel)(suml2[g] > 0.f, sumlx[g] / suml2[g], SFX(splat)(0.f));
        scale[g] = SFX(sel)(small[g], SFX(splat)(0.f), sc);
    }
}

/* Q3_K's tail (q3_K_finish): levels against the stored scales, the high bits into hmask, the rest packed. */
static TGT void SFX(q3_K_finish)(const float *x, blk_q3_K *y, int8_t *L) {
    const float d_all = ql_simd_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        int sc = j < 8 ? y->scales[j] & 0xF : y->scales[j - 8] >> 4;
        sc = (sc | (((y->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float d = d_all * sc;
        if (!d) continue;
        SFX(requant)(x + 16 * j, 0.0f, d, -4, 3, 4, 16, (uint8_t *)L + 16 * j);
    }
    u8x32 hm = (u8x32){0};
    for (int c = 0; c < QK_K / 32; ++c) {
        i8x32 v;
        memcpy(&v, L + 32 * c, 32);
        const i8x32 gt = v > 3;
        hm |= (u8x32)gt & (uint8_t)(1u << c);
        v -= gt & 4;
        memcpy(L + 32 * c, &v, 32);
    }
    memcpy(y->hmask, &hm, 32);
    SFX(pack_2bit)((const uint8_t *)L, y->qs);
}

/* SB = W / 8 super-blocks per pass: their 16 * SB sub-blocks fill two vectors (t = g * W + lane). */
static TGT void SFX(q3_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    enum { SB = W / 8, NG = 2 };
    blk_q3_K *y = vy;
    for (int64_t ib = 0; ib < nb; ib += SB) {
        bool use[SB];
        const float *qw[SB];
        float sigma2[SB];
        for (int sb = 0; sb < SB; ++sb) {
            const int64_t b = ib + sb;
            const float *xb = x + QK_K * b;
            use[sb] = SFX(block_usable)(x, imatrix, b, nb, nb_row, QK_K, &qw[sb]);
            sigma2[sb] = use[sb] && qw[sb] ? SFX(sigma2)(xb) : 0;
        }
        VF X[NG][16], Wt[NG][16], sc[NG], swv[NG];
        VI Lv[NG][16];
        for (int g = 0; g < NG; ++g) {
            float xt[16 * W], wt[16 * W], sg[W];
            for (int s = 0; s < W; ++s) {
                const int t = g * W + s, sb = t / 16, j = t % 16;
                const float *xs = x + QK_K * (ib + sb) + 16 * j;
                sg[s] = sigma2[sb];
                for (int i = 0; i < 16; ++i) {
                    xt[i * W + s] = use[sb] ? xs[i] : 0.f;
                    wt[i * W + s] = use[sb] && qw[sb] ? qw[sb][16 * j + i] : 0.f;
                }
            }
            swv[g] = SFX(splat)(0.f);
            const VF sig = SFX(load)(sg);
            for (int i = 0; i < 16; ++i) {
                X[g][i] = SFX(load)(xt + i * W);
                if (imatrix) {
                    Wt[g][i] = SFX(load)(wt + i * W) * SFX(vsqrt)(sig + X[g][i] * X[g][i]);
                    swv[g] += Wt[g][i];
                }
            }
        }
        if (imatrix)
            for (int g = 0; g < NG; ++g) sc[g] = SFX(qx_lanes)(16, X[g], Wt[g], true, 4, Lv[g]);
        else
            SFX(q3_lanes)(X, Lv, sc);
        float scales[NG * W], sws[NG * W];
        for (int g = 0; g < NG; ++g) {
            SFX(store)(scales + g * W, sc[g]);
            SFX(store)(sws + g * W, swv[g]);
        }
        for (int sb = 0; sb < SB; ++sb) {
            const int64_t b = ib + sb;
            if (b >= nb) break;
            if (!use[sb]) {
                ql_quantize_row_q3_K_ref(x + QK_K * b, &y[b], QK_K, qw[sb]);
                continue;
            }
            int8_t L[QK_K];
            for (int j = 0; j < 16; ++j) {
                const int t = 16 * sb + j;
                SFX(untranspose)(Lv[t / W], 16, t % W, (uint8_t *)L + 16 * j);
            }
            ql_ggml_q3_K_pack_scales(scales + 16 * sb, sws + 16 * sb, imatrix != NULL, &y[b]);
            SFX(q3_K_finish)(x + QK_K * b, &y[b], L);
        }
    }
}

static TGT void SFX(q3_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q3_K *x = vx;
    int8_t scales[16];
    for (int64_t i = 0; i < nb; i++) {
        const float d_all = ql_simd_fp16_to_fp32(x[i].d);
        const uint8_t *q = x[i].qs;
        q3_K_unpack_scales(x[i].scales, scales);
        int is = 0, bit = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int shift = 0; shift < 8; shift += 2, ++bit) {
                for (int h = 0; h < 2; ++h) {
                    const float dl = d_all * (scales[is++] - 32);
                    for (int l = 0; l < 16; l += W) {
                        const VI v = (SFX(load_u8)(q + 16 * h + l) >> shift) & 3;
                        const VI hi = (SFX(load_u8)(x[i].hmask + 16 * h + l) >> bit) & 1;
                        SFX(store)(y + l, dl * SFX(cvt)(v - ((hi ^ 1) << 2)));
                    }
                    y += 16;
                }
            }
            q += 32;
        }
    }
}

/* ---------------- Q4_K / Q5_K ---------------- */

/* Q4_K (nmax 15) and Q5_K (nmax 31) share everything but the level packing: G = W / 8 super-blocks per
 * pass, one 32-element sub-block per lane; make_qkx2_quants (rmin, rdelta, nstep) without imatrix,
 * make_qkx3_quants with it; then the reference's scale packing and levels against the stored scales. */
static inline TGT __attribute__((always_inline)) void SFX(k45_quant)(int nmax, float rmin, float rdelta,
                                                                     int nstep, const float *x, void *vy,
                                                                     int64_t nb, int64_t nb_row,
                                                                     const float *imatrix) {
    enum { G = W / 8 };
    const size_t bsize = nmax == 15 ? sizeof(blk_q4_K) : sizeof(blk_q5_K);
    for (int64_t ib = 0; ib < nb; ib += G) {
        float xt[32 * W], wt[32 * W];
        bool use[G];
        const float *qw[G];
        for (int g = 0; g < G; ++g) {
            const int64_t b = ib + g;
            use[g] = SFX(block_usable)(x, imatrix, b, nb, nb_row, QK_K, &qw[g]);
            for (int s = 0; s < 8; ++s)
                for (int i = 0; i < 32; ++i) {
                    xt[i * W + 8 * g + s] = use[g] ? x[QK_K * b + 32 * s + i] : 0.f;
                    wt[i * W + 8 * g + s] = use[g] && qw[g] ? qw[g][32 * s + i] : 1.f;
                }
        }
        VF X[32], Wt[32];
        for (int i = 0; i < 32; ++i) X[i] = SFX(load)(xt + i * W);
        VF sw = SFX(splat)(0.f);
        if (imatrix) {
            float sig[W];
            for (int g = 0; g < G; ++g) {
                const float sigma2 = use[g] ? SFX(sigma2)(x + QK_K * (ib + g)) : 0;
                for (int s = 0; s < 8; ++s) sig[8 * g + s] = sigma2;
            }
            const VF sigma2 = SFX(load)(sig);
            for (int i = 0; i < 32; ++i) {
                Wt[i] = SFX(load)(wt + i * W) * SFX(vsqrt)(sigma2 + X[i] * X[i]);
                sw += Wt[i];
            }
        } else {
            VF sum_x2 = SFX(splat)(0.f);
            for (int i = 0; i < 32; ++i) sum_x2 += X[i] * X[i];
            const VF av_x = SFX(vsqrt)(sum_x2 / 32);
            for (int i = 0; i < 32; ++i) Wt[i] = av_x + SFX(vabs)(X[i]);
        }
        VI Lv[32];
        VF the_min;
        const VF scale = imatrix ? SFX(qkx_lanes)(32, X, Wt, nmax, -0.9f, 0.05f, 36, true, false, Lv, &the_min)
                                 : SFX(qkx_lanes)(32, X, Wt, nmax, rmin, rdelta, nstep, false, false, Lv, &the_min);
        float scales[W], mins[W], sws[W];
        SFX(store)(scales, scale);
        SFX(store)(mins, the_min);
        SFX(store)(sws, sw);
        for (int g = 0; g < G; ++g) {
            const int64_t b = ib + g;
            if (b >= nb) break;
            /* Q4_K and Q5_K begin alike: d, dmin, scales[12] */
            blk_q4_K *yb = (blk_q4_K *)((uint8_t *)vy + bsize * b);
            if (!use[g]) {
                (nmax == 15 ? ql_quantize_row_q4_K_ref : ql_quantize_row_q5_K_ref)(x + QK_K * b, yb, QK_K, qw[g]);
                continue;
            }
            uint8_t L[QK_K];
            for (int s = 0; s < 8; ++s) SFX(untranspose)(Lv, 32, 8 * g + s, L + 32 * s);
            ql_ggml_k45_pack_scales(scales + 8 * g, mins + 8 * g, sws + 8 * g, imatrix != NULL, yb->scales,
                                    &yb->d, &yb->dmin);
            const float dd = ql_simd_fp16_to_fp32(yb->d), dmm = ql_simd_fp16_to_fp32(yb->dmin);
            for (int j = 0; j < QK_K / 32; ++j) {
                uint8_t sc, m;
                get_scale_min_k4(j, yb->scales, &sc, &m);
                const float d = dd * sc;
                if (!d) continue;
                SFX(requant)(x + QK_K * b + 32 * j, dmm * m, d, 0, nmax, 0, 32, L + 32 * j);
            }
            if (nmax == 15)
                ql_ggml_q4_K_pack_levels(L, yb);
            else
                SFX(q5_K_pack_levels)(L, (blk_q5_K *)yb);
        }
    }
}

static TGT void SFX(q4_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    SFX(k45_quant)(15, -1.f, 0.1f, 20, x, vy, nb, nb_row, imatrix);
}

static TGT void SFX(q5_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    SFX(k45_quant)(31, -0.5f, 0.1f, 15, x, vy, nb, nb_row, imatrix);
}

/* y = d * scale * level - dmin * min over pairs of 32-element sub-blocks; `bits` 4 (Q4_K) or 5 (Q5_K,
 * whose fifth bits are bit 2j / 2j+1 of qh for the pair j). */
static inline TGT __attribute__((always_inline)) void SFX(k45_dequant)(int bits, const uint8_t *scales,
                                                                       uint16_t dh, uint16_t dminh,
                                                                       const uint8_t *ql, const uint8_t *qh,
                                                                       float *y) {
    const float d = ql_simd_fp16_to_fp32(dh);
    const float min = ql_simd_fp16_to_fp32(dminh);
    uint8_t sc, m;
    for (int j = 0; j < QK_K / 64; ++j) {
        get_scale_min_k4(2 * j, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        get_scale_min_k4(2 * j + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; l += W) {
            const VI A = SFX(load_u8)(ql + l);
            VI v1 = A & 0xF, v2 = A >> 4;
            if (bits == 5) {
                const VI H = SFX(load_u8)(qh + l);
                v1 += ((H >> (2 * j)) & 1) << 4;
                v2 += ((H >> (2 * j + 1)) & 1) << 4;
            }
            SFX(store)(y + l, d1 * SFX(cvt)(v1) - m1);
            SFX(store)(y + 32 + l, d2 * SFX(cvt)(v2) - m2);
        }
        y += 64;
        ql += 32;
    }
}

static TGT void SFX(q4_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q4_K *x = vx;
    for (int64_t i = 0; i < nb; i++) SFX(k45_dequant)(4, x[i].scales, x[i].d, x[i].dmin, x[i].qs, NULL, y + QK_K * i);
}

static TGT void SFX(q5_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q5_K *x = vx;
    for (int64_t i = 0; i < nb; i++)
        SFX(k45_dequant)(5, x[i].scales, x[i].d, x[i].dmin, x[i].qs, x[i].qh, y + QK_K * i);
}

/* ---------------- Q6_K ---------------- */

static TGT void SFX(q6_K_quant)(const float *x, void *vy, int64_t nb, int64_t nb_row, const float *imatrix) {
    blk_q6_K *y = vy;
    for (int64_t b = 0; b < nb; ++b) {
        const float *xb = x + QK_K * b;
        const float *qw = imatrix ? imatrix + QK_K * (b % nb_row) : NULL;
        if (!SFX(finite)(xb, QK_K) || (qw && !SFX(finite)(qw, QK_K))) {
            ql_quantize_row_q6_K_ref(xb, &y[b], QK_K, qw);
            continue;
        }
        float scales[QK_K / 16];
        int8_t L[QK_K];
        for (int p = 0; p < QK_K / 16; p += W) { /* W sub-blocks of 16 per pass */
            VF X[16], Wt[16];
            VI Lv[16];
            SFX(load16)(xb, qw, p, X, Wt);
            SFX(store)(scales + p, SFX(qx_lanes)(16, X, Wt, qw != NULL, 32, Lv));
            for (int s = 0; s < W; ++s) SFX(untranspose)(Lv, 16, s, (uint8_t *)L + 16 * (p + s));
        }
        if (!ql_ggml_q6_K_pack_scales(scales, &y[b])) continue;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = ql_simd_fp16_to_fp32(y[b].d) * y[b].scales[j];
            if (!d) continue;
            SFX(requant)(xb + 16 * j, 0.0f, d, -32, 31, 32, 16, (uint8_t *)L + 16 * j);
        }
        ql_ggml_q6_K_pack_levels(L, &y[b]);
    }
}

static TGT void SFX(q6_K_dequant)(const void *vx, float *y, int64_t nb) {
    const blk_q6_K *x = vx;
    for (int64_t i = 0; i < nb; i++) {
        const float d = ql_simd_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int l = 0; l < 32; l += W) {
                const int is = l / 16;
                const VI A = SFX(load_u8)(ql + l), B = SFX(load_u8)(ql + l + 32), H = SFX(load_u8)(qh + l);
                const VI q1 = ((A & 0xF) | (((H >> 0) & 3) << 4)) - 32;
                const VI q2 = ((B & 0xF) | (((H >> 2) & 3) << 4)) - 32;
                const VI q3 = ((A >> 4) | (((H >> 4) & 3) << 4)) - 32;
                const VI q4 = ((B >> 4) | (((H >> 6) & 3) << 4)) - 32;
                SFX(store)(y + l + 0, (d * sc[is + 0]) * SFX(cvt)(q1));
                SFX(store)(y + l + 32, (d * sc[is + 2]) * SFX(cvt)(q2));
                SFX(store)(y + l + 64, (d * sc[is + 4]) * SFX(cvt)(q3));
                SFX(store)(y + l + 96, (d * sc[is + 6]) * SFX(cvt)(q4));
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

#endif /* QL_SIMD_TEMPLATE */
