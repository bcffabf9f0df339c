/* aqlm.c — AQLM's layout, reference decoder and encoder (see kernels/aqlm.h for the layout and the
 * algorithm). The error gradient is kept as two products with H: WH = W·H once, VH = V·H of the current
 * unscaled reconstruction V after every change of codes or codebooks (one sgemm; elementwise for a diagonal
 * H). With them, row r's loss is  W_r H W_rᵀ − 2 s_r (W_r·VH_r) + s_r² (V_r·VH_r)  and its gradient slice
 * is G_r = WH_r − s_r VH_r, so scales, losses and gradients never need a second product.
 *
 * Beam search for one group. Replacing the group's reconstruction y by y + δ changes the loss by
 * −2 δ·g + δᵀ H_jj δ (g = the group's slice of G_r, H_jj its 8×8 block). Replacing codebook m's code of a
 * hypothesis whose change so far is δ_h, with u = δ_h − s·C_m[old], gives for each candidate k
 *     ΔL(k) = (−2 u·g + uᵀH_jj u) + C_m[k]·(2s(H_jj u − g)) + s² C_m[k]ᵀ H_jj C_m[k],
 * 8 multiply-adds per candidate with the last term tabulated per group. The beam keeps the `beam` best
 * hypotheses after each codebook; the greedy answer (beam 1) is computed too and the better one kept, so a
 * wider beam is never worse for a group than greedy, and a group only changes when the loss falls.
 *
 * Least squares for codebook m (others, codes and scales fixed): the loss is quadratic in the K·8 values
 * of C_m with Hessian 2A, A = Σ_r s_r² S_rᵀ H S_r (S_r selects the codewords row r uses), and gradient
 * −2 Σ_r s_r S_rᵀ G_rᵀ; one Newton step (A + λI)Δ = Σ s_r S_rᵀ G_rᵀ (dposv) is the exact minimiser. A is
 * assembled (ql_aqlm_ls_assemble, rows·n²/2 multiply-adds) with each work item owning a band of codewords,
 * so every entry is summed in the same order whatever the thread count. */
#include "kernels/aqlm.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/parallel.h"
#include "kernels/simd.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define G QL_AQLM_GROUP
#define F16_MAX 65504.0f
#define W_CLAMP 3.8e9f /* about 65504²: the largest a stored scale times a stored codeword reaches */
#define LS_MAX_K 1024  /* least squares solves a K·8 system: 8192 unknowns at most (512 MiB); else Adam */

/* GCC 12 at -O2 leaves the 8-wide inner loops scalar; vectorizing them changes no result (no reassociation). */
#if defined(__GNUC__) && !defined(__clang__)
#define VECTORIZE __attribute__((optimize("-ftree-vectorize", "-fvect-cost-model=dynamic")))
#else
#define VECTORIZE
#endif

/* The search and k-means loops also get an AVX2 clone, picked at load time by the CPU: the same C, no FMA
 * (ISO C mode: no contraction) and no reassociation, so both clones give the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

static inline float f16r(float x) {
    if (!(x == x)) return 0.0f;
    if (x > F16_MAX) x = F16_MAX;
    if (x < -F16_MAX) x = -F16_MAX;
    return ql_fp16_to_fp32(ql_fp32_to_fp16(x));
}

/* ---------------- layout ---------------- */

int64_t ql_aqlm_tensor_bytes(int M, int B, int64_t ncols, int64_t nrows) {
    if (M < 1 || M > 8 || B < 1 || B > 16 || ncols <= 0 || nrows <= 0) return -1;
    if (ncols > ((int64_t)1 << 40) || nrows > ((int64_t)1 << 40)) return -1;
    const int64_t ng = (ncols + G - 1) / G, K = (int64_t)1 << B, cb = (int64_t)M * K * G * 2;
    const int64_t code_bytes = B <= 8 ? 1 : 2;
    if (ng > INT64_MAX / nrows / M / code_bytes) return -1;
    const int64_t codes = nrows * ng * M * code_bytes;
    if (codes > INT64_MAX - cb - 2 * nrows) return -1;
    return cb + 2 * nrows + codes;
}

static inline uint16_t code_at(const uint8_t *codes, int B, int64_t i) {
    if (B <= 8) return codes[i];
    return (uint16_t)(codes[2 * i] | codes[2 * i + 1] << 8);
}

void ql_aqlm_dequantize_ref(int M, int B, const void *src, float *dst, int64_t nrows, int64_t ncols) {
    const int64_t K = (int64_t)1 << B, ng = (ncols + G - 1) / G;
    const uint8_t *p = src;
    float *cb = malloc((size_t)(M * K * G) * sizeof(float));
    if (!cb) return;
    for (int64_t i = 0; i < M * K * G; i++) cb[i] = ql_fp16_to_fp32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    const uint8_t *sc = p + M * K * G * 2, *codes = sc + 2 * nrows;
    for (int64_t r = 0; r < nrows; r++) {
        const float s = ql_fp16_to_fp32((uint16_t)(sc[2 * r] | sc[2 * r + 1] << 8));
        for (int64_t j = 0; j < ng; j++) {
            float acc[G] = {0};
            for (int m = 0; m < M; m++) {
                const float *c = cb + ((int64_t)m * K + code_at(codes, B, (r * ng + j) * M + m)) * G;
                for (int d = 0; d < G; d++) acc[d] += c[d];
            }
            const int64_t n = QL_MIN(G, ncols - j * G);
            for (int64_t d = 0; d < n; d++) dst[r * ncols + j * G + d] = acc[d] * s;
        }
    }
    free(cb);
}

void ql_aqlm_code_usage(int M, int B, const void *src, int64_t nrows, int64_t ncols, uint32_t *counts) {
    const int64_t K = (int64_t)1 << B, ng = (ncols + G - 1) / G;
    const uint8_t *codes = (const uint8_t *)src + M * K * G * 2 + 2 * nrows;
    memset(counts, 0, (size_t)(M * K) * sizeof(uint32_t));
    for (int64_t i = 0; i < nrows * ng; i++)
        for (int m = 0; m < M; m++) counts[m * K + code_at(codes, B, i * M + m)]++;
}

/* ---------------- continuous parameters with the codes fixed ---------------- */

int64_t ql_aqlm_theta_len(int M, int B, int64_t nrows) { return (int64_t)M * ((int64_t)1 << B) * G + nrows; }

void ql_aqlm_theta_get(int M, int B, const void *src, int64_t nrows, double *theta) {
    const uint8_t *p = src;
    const int64_t n = ql_aqlm_theta_len(M, B, nrows);
    for (int64_t i = 0; i < n; i++) theta[i] = ql_fp16_to_fp32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}

void ql_aqlm_theta_decode(int M, int B, const void *src, const double *theta, int64_t nrows, int64_t ncols,
                          bool as_stored, double *w) {
    const int64_t K = (int64_t)1 << B, ng = (ncols + G - 1) / G, ncb = M * K * G;
    const uint8_t *codes = (const uint8_t *)src + 2 * (ncb + nrows);
    for (int64_t r = 0; r < nrows; r++) {
        const double s = theta[ncb + r];
        const float sf = ql_fp16_to_fp32(ql_fp32_to_fp16((float)s));
        for (int64_t j = 0; j < ng; j++) {
            double acc[G] = {0};
            float accf[G] = {0};
            for (int m = 0; m < M; m++) {
                const double *c = theta + ((int64_t)m * K + code_at(codes, B, (r * ng + j) * M + m)) * G;
                for (int d = 0; d < G; d++) {
                    if (as_stored) accf[d] += ql_fp16_to_fp32(ql_fp32_to_fp16((float)c[d]));
                    else acc[d] += c[d];
                }
            }
            const int64_t n = QL_MIN(G, ncols - j * G);
            for (int64_t d = 0; d < n; d++) w[r * ncols + j * G + d] = as_stored ? (double)(accf[d] * sf) : acc[d] * s;
        }
    }
}

void ql_aqlm_theta_backward(int M, int B, const void *src, const double *theta, int64_t nrows, int64_t ncols,
                            const double *dw, double *dtheta) {
    const int64_t K = (int64_t)1 << B, ng = (ncols + G - 1) / G, ncb = M * K * G;
    const uint8_t *codes = (const uint8_t *)src + 2 * (ncb + nrows);
    for (int64_t r = 0; r < nrows; r++) {
        const double s = theta[ncb + r];
        double ds = 0;
        for (int64_t j = 0; j < ng; j++) {
            const int64_t n = QL_MIN(G, ncols - j * G);
            const double *g = dw + r * ncols + j * G;
            double acc[G] = {0};
            for (int m = 0; m < M; m++) {
                const int64_t off = ((int64_t)m * K + code_at(codes, B, (r * ng + j) * M + m)) * G;
                for (int64_t d = 0; d < n; d++) {
                    acc[d] += theta[off + d];
                    dtheta[off + d] += s * g[d]; /* w = s · Σ_m C_m[code]: d w / d C = s */
                }
            }
            for (int64_t d = 0; d < n; d++) ds += g[d] * acc[d];
        }
        dtheta[ncb + r] += ds;
    }
}

void ql_aqlm_theta_set(int M, int B, void *dst, const double *theta, int64_t nrows) {
    uint8_t *p = dst;
    const int64_t n = ql_aqlm_theta_len(M, B, nrows);
    for (int64_t i = 0; i < n; i++) {
        const uint16_t h = ql_fp32_to_fp16((float)theta[i]);
        p[2 * i] = (uint8_t)h, p[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

/* ---------------- state ---------------- */

ql_status ql_aqlm_state_alloc(ql_aqlm_state *st, int M, int B, int64_t nrows, int64_t ncols) {
    memset(st, 0, sizeof *st);
    if (ql_aqlm_tensor_bytes(M, B, ncols, nrows) < 0) return ql_fail(QL_ERR_ARG, "aqlm: bad shape");
    st->M = M, st->B = B, st->K = 1 << B, st->nrows = nrows, st->ncols = ncols, st->ngroups = (ncols + G - 1) / G;
    st->codebooks = calloc((size_t)(M * st->K * G), sizeof(float));
    st->scales = calloc((size_t)nrows, sizeof(float));
    st->codes = calloc((size_t)(nrows * st->ngroups * M), sizeof(uint16_t));
    if (!st->codebooks || !st->scales || !st->codes) {
        ql_aqlm_state_free(st);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory");
    }
    return QL_OK;
}

void ql_aqlm_state_free(ql_aqlm_state *st) {
    free(st->codebooks);
    free(st->scales);
    free(st->codes);
    st->codebooks = st->scales = NULL;
    st->codes = NULL;
}

void ql_aqlm_pack(const ql_aqlm_state *st, void *dst) {
    uint8_t *p = dst;
    const int64_t ncb = (int64_t)st->M * st->K * G, nc = st->nrows * st->ngroups * st->M;
    for (int64_t i = 0; i < ncb; i++) {
        uint16_t h = ql_fp32_to_fp16(st->codebooks[i]);
        *p++ = (uint8_t)h, *p++ = (uint8_t)(h >> 8);
    }
    for (int64_t r = 0; r < st->nrows; r++) {
        uint16_t h = ql_fp32_to_fp16(st->scales[r]);
        *p++ = (uint8_t)h, *p++ = (uint8_t)(h >> 8);
    }
    for (int64_t i = 0; i < nc; i++) {
        *p++ = (uint8_t)st->codes[i];
        if (st->B > 8) *p++ = (uint8_t)(st->codes[i] >> 8);
    }
}

void ql_aqlm_unpack(const void *src, ql_aqlm_state *st) {
    const uint8_t *p = src;
    const int64_t ncb = (int64_t)st->M * st->K * G, nc = st->nrows * st->ngroups * st->M;
    for (int64_t i = 0; i < ncb; i++, p += 2) st->codebooks[i] = ql_fp16_to_fp32((uint16_t)(p[0] | p[1] << 8));
    for (int64_t r = 0; r < st->nrows; r++, p += 2) st->scales[r] = ql_fp16_to_fp32((uint16_t)(p[0] | p[1] << 8));
    for (int64_t i = 0; i < nc; i++) st->codes[i] = code_at(p, st->B, i);
}

/* ---------------- solver ---------------- */

struct ql_aqlm_solver {
    ql_aqlm_params p;
    ql_aqlm_state st;
    int64_t ncp;    /* ngroups · 8: rows padded with zero-weight columns */
    bool full;      /* h is a full matrix (else diagonal hd) */
    float *w;       /* [nrows][ncp] */
    float *h;       /* [ncp][ncp] or NULL */
    float *hd;      /* [ncp] diagonal of H (0 on padding) */
    float *wh, *v, *vh; /* [nrows][ncp] */
    double *whw, *a, *b; /* per row: W·WH, W·VH, V·VH */
    double loss;
};

/* dst = src · H for [nrows][ncp] */
static void mul_h(const ql_aqlm_solver *s, const float *src, float *dst) {
    const int64_t n = s->ncp, nr = s->st.nrows;
    if (s->full) {
        int saved = ql_blas_get_threads();
        ql_blas_set_threads(s->p.n_threads);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)n, (int)n, 1.0f, src, (int)n, s->h,
                    (int)n, 0.0f, dst, (int)n);
        ql_blas_set_threads(saved);
    } else
        for (int64_t r = 0; r < nr; r++)
            for (int64_t c = 0; c < n; c++) dst[r * n + c] = src[r * n + c] * s->hd[c];
}

static double row_loss(const ql_aqlm_solver *s, int64_t r, double sc) {
    return s->whw[r] - 2.0 * sc * s->a[r] + sc * sc * s->b[r];
}

/* V from the codes and codebooks, VH, the row dot products and the loss */
VECTORIZE static void refresh_range(void *ctx, int worker, int64_t r0, int64_t r1) {
    (void)worker;
    ql_aqlm_solver *s = ctx;
    const ql_aqlm_state *st = &s->st;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < st->ngroups; j++) {
            float acc[G] = {0};
            for (int m = 0; m < st->M; m++) {
                const float *c = st->codebooks + ((int64_t)m * st->K + st->codes[(r * st->ngroups + j) * st->M + m]) * G;
                for (int d = 0; d < G; d++) acc[d] += c[d];
            }
            memcpy(s->v + r * s->ncp + j * G, acc, sizeof acc);
        }
}

ql_status ql_aqlm_refresh(ql_aqlm_solver *s) {
    const int64_t nr = s->st.nrows, n = s->ncp;
    ql_parallel_for(s->p.n_threads, nr, refresh_range, s);
    mul_h(s, s->v, s->vh);
    double loss = 0;
    for (int64_t r = 0; r < nr; r++) {
        double a = 0, b = 0;
        const float *wr = s->w + r * n, *vr = s->v + r * n, *vhr = s->vh + r * n;
        for (int64_t c = 0; c < n; c++) a += (double)wr[c] * vhr[c], b += (double)vr[c] * vhr[c];
        s->a[r] = a, s->b[r] = b;
        loss += row_loss(s, r, s->st.scales[r]);
    }
    s->loss = loss;
    return QL_OK;
}

double ql_aqlm_loss(const ql_aqlm_solver *s) { return s->loss; }
ql_aqlm_state *ql_aqlm_solver_state(ql_aqlm_solver *s) { return &s->st; }

void ql_aqlm_solver_free(ql_aqlm_solver *s) {
    if (!s) return;
    ql_aqlm_state_free(&s->st);
    free(s->w), free(s->h), free(s->hd), free(s->wh), free(s->v), free(s->vh);
    free(s->whw), free(s->a), free(s->b);
    free(s);
}

ql_aqlm_solver *ql_aqlm_solver_new(const float *w, int64_t nrows, int64_t ncols, const float *h, const float *hdiag,
                                   const ql_aqlm_params *p) {
    if (!p || p->M < 1 || p->M > 8 || p->B < 1 || p->B > 16 || p->beam < 1) {
        ql_fail(QL_ERR_ARG, "aqlm: bad parameters");
        return NULL;
    }
    ql_aqlm_solver *s = calloc(1, sizeof *s);
    if (!s || ql_aqlm_state_alloc(&s->st, p->M, p->B, nrows, ncols)) {
        free(s);
        ql_fail(QL_ERR_NOMEM, "aqlm: out of memory for a [%lld, %lld] tensor", (long long)nrows, (long long)ncols);
        return NULL;
    }
    s->p = *p;
    if (s->p.n_threads < 1) s->p.n_threads = 1;
    const int64_t n = s->st.ngroups * G;
    s->ncp = n;
    s->full = h != NULL;
    const size_t rn = (size_t)(nrows * n);
    s->w = calloc(rn, sizeof(float));
    s->wh = malloc(rn * sizeof(float));
    s->v = calloc(rn, sizeof(float));
    s->vh = malloc(rn * sizeof(float));
    s->hd = calloc((size_t)n, sizeof(float));
    s->whw = calloc((size_t)nrows, sizeof(double));
    s->a = calloc((size_t)nrows, sizeof(double));
    s->b = calloc((size_t)nrows, sizeof(double));
    if (s->full) s->h = calloc((size_t)(n * n), sizeof(float));
    if (!s->w || !s->wh || !s->v || !s->vh || !s->hd || !s->whw || !s->a || !s->b || (s->full && !s->h)) {
        ql_aqlm_solver_free(s);
        ql_fail(QL_ERR_NOMEM, "aqlm: out of memory for a [%lld, %lld] tensor", (long long)nrows, (long long)ncols);
        return NULL;
    }
    for (int64_t r = 0; r < nrows; r++) {
        /* NaN reads as 0, ±inf as the row's largest finite magnitude, and nothing beyond W_CLAMP */
        float amax = 0;
        for (int64_t c = 0; c < ncols; c++) {
            float x = w[r * ncols + c];
            if (isfinite(x) && fabsf(x) > amax) amax = fabsf(x);
        }
        if (amax > W_CLAMP) amax = W_CLAMP;
        for (int64_t c = 0; c < ncols; c++) {
            float x = w[r * ncols + c];
            if (x != x) x = 0;
            else if (isinf(x)) x = x > 0 ? amax : -amax;
            else if (x > W_CLAMP) x = W_CLAMP;
            else if (x < -W_CLAMP) x = -W_CLAMP;
            s->w[r * n + c] = x;
        }
    }
    for (int64_t c = 0; c < n; c++) {
        float d = c >= ncols ? 0.0f : h ? h[c * ncols + c] : hdiag ? hdiag[c] : 1.0f;
        s->hd[c] = isfinite(d) && d > 0 ? d : 0.0f;
    }
    if (s->full)
        for (int64_t i = 0; i < ncols; i++)
            for (int64_t j = 0; j < ncols; j++) {
                float x = h[i * ncols + j];
                s->h[i * n + j] = isfinite(x) ? x : 0.0f;
            }
    mul_h(s, s->w, s->wh);
    for (int64_t r = 0; r < nrows; r++) {
        double acc = 0;
        for (int64_t c = 0; c < n; c++) acc += (double)s->w[r * n + c] * s->wh[r * n + c];
        s->whw[r] = acc;
    }
    if (s->p.update == QL_AQLM_UPDATE_LS && s->st.K > LS_MAX_K) s->p.update = QL_AQLM_UPDATE_ADAM;
    if (s->p.adam_steps < 1) s->p.adam_steps = 1;
    if (!(s->p.lr > 0)) s->p.lr = 1e-3;
    return s;
}

/* ---------------- scales ---------------- */

static void update_scales(ql_aqlm_solver *s) {
    double loss = 0;
    for (int64_t r = 0; r < s->st.nrows; r++) {
        const float old = s->st.scales[r];
        const float cand = s->b[r] > 0 ? f16r((float)(s->a[r] / s->b[r])) : 0.0f;
        if (row_loss(s, r, cand) < row_loss(s, r, old)) s->st.scales[r] = cand;
        loss += row_loss(s, r, s->st.scales[r]);
    }
    s->loss = loss;
}

/* ---------------- k-means start ---------------- */

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    const float *pts; /* [n][8] */
    const int64_t *idx; /* NULL: point i is pts[i] */
    const float *cent;  /* [K][8] */
    const float *centt; /* the same, transposed [8][K] */
    int K;
    uint16_t *out;
    float *dist; /* optional: squared distance of each point to its centroid */
} assign_job;

#define ASSIGN_CHUNK 256 /* candidates scored together */

/* The nearest centroid of each point, by squared distance summed over d = 0..7 for each centroid (first one on
 * a tie). The centroids are read transposed ([8][K]) so that the distances of ASSIGN_CHUNK centroids are
 * computed side by side, each still summed in d order. */
HOT VECTORIZE static void assign_range(void *ctx, int worker, int64_t i0, int64_t i1) {
    (void)worker;
    assign_job *j = ctx;
    float d2[ASSIGN_CHUNK];
    for (int64_t i = i0; i < i1; i++) {
        const float *x = j->pts + (j->idx ? j->idx[i] : i) * G;
        float best = INFINITY;
        int bk = 0;
        for (int k0 = 0; k0 < j->K; k0 += ASSIGN_CHUNK) {
            const int kn = QL_MIN(ASSIGN_CHUNK, j->K - k0);
            for (int k = 0; k < kn; k++) d2[k] = 0;
            for (int d = 0; d < G; d++) {
                const float xd = x[d], *c = j->centt + (int64_t)d * j->K + k0;
                for (int k = 0; k < kn; k++) {
                    const float t = xd - c[k];
                    d2[k] += t * t;
                }
            }
            /* the smallest distance, as the bits of a float >= 0 (finite: points and centroids are f16-bounded)
             * compare as integers, a reduction that vectorizes; then its first index, as a strict < scan
             * would find it */
            int32_t mbits = INT32_MAX;
            for (int k = 0; k < kn; k++) {
                int32_t b;
                memcpy(&b, &d2[k], sizeof b);
                mbits = b < mbits ? b : mbits;
            }
            float mn;
            memcpy(&mn, &mbits, sizeof mn);
            if (mn < best) {
                int k = 0;
                while (d2[k] != mn) k++;
                best = mn, bk = k0 + k;
            }
        }
        j->out[i] = (uint16_t)bk;
        if (j->dist) j->dist[i] = best;
    }
}

/* assign_range over n points on the solver's threads; centt: scratch for K·8 floats */
static void assign_all(const ql_aqlm_solver *s, assign_job *aj, int64_t n, float *centt) {
    for (int64_t k = 0; k < aj->K; k++)
        for (int d = 0; d < G; d++) centt[(int64_t)d * aj->K + k] = aj->cent[k * G + d];
    aj->centt = centt;
    ql_parallel_for(s->p.n_threads, n, assign_range, aj);
}

/* k-means of the points (rows of 8) into K centroids, started from K sample points */
static ql_status kmeans(ql_aqlm_solver *s, const float *pts, int64_t npts, float *cent, uint64_t *rng) {
    const int K = s->st.K;
    const int64_t cap = QL_MAX((int64_t)64 * K, 16384);
    const int64_t ns = QL_MIN(npts, cap);
    int64_t *idx = malloc((size_t)npts * sizeof(int64_t));
    uint16_t *lab = malloc((size_t)ns * sizeof(uint16_t));
    double *sum = malloc((size_t)K * (G + 1) * sizeof(double));
    float *centt = malloc((size_t)K * G * sizeof(float));
    if (!idx || !lab || !sum || !centt) {
        free(idx), free(lab), free(sum), free(centt);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (k-means)");
    }
    for (int64_t i = 0; i < npts; i++) idx[i] = i;
    /* a seeded sample of ns points in random order; with no more points than codewords, each point in
     * order becomes its own codeword */
    for (int64_t i = 0; npts > K && i < ns; i++) {
        int64_t j = i + (int64_t)(splitmix(rng) % (uint64_t)(npts - i));
        int64_t t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
    for (int k = 0; k < K; k++)
        for (int d = 0; d < G; d++) cent[k * G + d] = k < ns ? pts[idx[k] * G + d] : 0.0f;
    ql_status st = QL_OK;
    for (int it = 0; ns > K && it < s->p.init_iters; it++) {
        if (ql_progress_cancelled(s->p.progress)) {
            st = ql_fail(QL_ERR_CANCELLED, "cancelled");
            break;
        }
        assign_job aj = {.pts = pts, .idx = idx, .cent = cent, .K = K, .out = lab};
        assign_all(s, &aj, ns, centt);
        memset(sum, 0, (size_t)K * (G + 1) * sizeof(double));
        for (int64_t i = 0; i < ns; i++) {
            double *t = sum + (int64_t)lab[i] * (G + 1);
            const float *x = pts + idx[i] * G;
            for (int d = 0; d < G; d++) t[d] += x[d];
            t[G] += 1;
        }
        for (int k = 0; k < K; k++) {
            const double *t = sum + (int64_t)k * (G + 1);
            if (t[G] > 0)
                for (int d = 0; d < G; d++) cent[k * G + d] = (float)(t[d] / t[G]);
            else { /* an empty cluster restarts at a random sample point */
                const float *x = pts + idx[splitmix(rng) % (uint64_t)ns] * G;
                memcpy(cent + k * G, x, G * sizeof(float));
            }
        }
    }
    free(idx), free(lab), free(sum), free(centt);
    return st;
}

ql_status ql_aqlm_init(ql_aqlm_solver *s) {
    ql_aqlm_state *st = &s->st;
    const int64_t nr = st->nrows, ng = st->ngroups, n = s->ncp, npts = nr * ng;
    /* start from the row RMS as scale; the codebooks learn the normalised groups */
    for (int64_t r = 0; r < nr; r++) {
        double acc = 0;
        for (int64_t c = 0; c < st->ncols; c++) acc += (double)s->w[r * n + c] * s->w[r * n + c];
        float rms = (float)sqrt(acc / (double)st->ncols);
        st->scales[r] = f16r(rms);
    }
    float *res = malloc((size_t)npts * G * sizeof(float)), *centt = malloc((size_t)st->K * G * sizeof(float));
    uint16_t *lab = malloc((size_t)npts * sizeof(uint16_t));
    if (!res || !lab || !centt) {
        free(res), free(lab), free(centt);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (k-means)");
    }
    for (int64_t r = 0; r < nr; r++) {
        const float sc = st->scales[r];
        for (int64_t c = 0; c < n; c++) res[r * n + c] = sc > 0 ? f16r(s->w[r * n + c] / sc) : 0.0f;
    }
    uint64_t rng = s->p.seed ^ 0xA9C1u;
    ql_status rc = QL_OK;
    for (int m = 0; m < st->M && !rc; m++) {
        float *cent = st->codebooks + (int64_t)m * st->K * G;
        rc = kmeans(s, res, npts, cent, &rng);
        if (rc) break;
        for (int64_t i = 0; i < (int64_t)st->K * G; i++) cent[i] = f16r(cent[i]);
        if (npts <= st->K) /* every group has its own codeword (kmeans kept the points in order) */
            for (int64_t i = 0; i < npts; i++) lab[i] = (uint16_t)i;
        else {
            assign_job aj = {.pts = res, .cent = cent, .K = st->K, .out = lab};
            assign_all(s, &aj, npts, centt);
        }
        for (int64_t i = 0; i < npts; i++) {
            st->codes[i * st->M + m] = lab[i];
            for (int d = 0; d < G; d++) res[i * G + d] -= cent[(int64_t)lab[i] * G + d];
        }
    }
    free(res), free(lab), free(centt);
    if (rc) return rc;
    ql_aqlm_refresh(s);
    update_scales(s);
    return QL_OK;
}

/* ---------------- beam search ---------------- */

typedef struct {
    uint16_t codes[8];
    double delta[G];
    double dl;
} hyp;

/* a worker's scratch: two hypothesis lists and the scores of one codebook's K candidates */
typedef struct {
    hyp *h0, *h1;
    double *score;
} search_ws;

static bool search_ws_alloc(search_ws *w, int beam, int K) {
    w->h0 = malloc((size_t)beam * 2 * sizeof(hyp));
    w->h1 = malloc((size_t)beam * 2 * sizeof(hyp));
    w->score = malloc((size_t)K * sizeof(double));
    return w->h0 && w->h1 && w->score;
}

static void search_ws_free(search_ws *w) { free(w->h0), free(w->h1), free(w->score); }

/* the codebooks transposed, cbt [M][8][K], so that the candidates' scores are computed K-wide */
static void transpose_codebooks(const float *cb, int M, int K, float *cbt) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++)
            for (int d = 0; d < G; d++) cbt[(m * G + d) * K + k] = cb[(m * K + k) * G + d];
}

/* ΔL of every candidate k of one codebook: base + s2·q[k] + Σ_d C[k][d]·v[d], summed in that order for each k
 * (the loop runs over k innermost so it vectorizes across candidates without reordering any sum) */
HOT VECTORIZE static void score_candidates(const float *ct, const float *q, int K, double base, double s2,
                                       const double *v, double *score) {
    for (int k = 0; k < K; k++) score[k] = base + s2 * q[k];
    for (int d = 0; d < G; d++) {
        const double vd = v[d];
        const float *c = ct + (int64_t)d * K;
        for (int k = 0; k < K; k++) score[k] += c[k] * vd;
    }
}

/* qtab [M][K]: C_m[k]ᵀ H_jj C_m[k]; cbt: transpose_codebooks(cb) */
static double search(const float *cb, const float *cbt, int M, int K, const float *hjj, const float *g, float s,
                     int beam, uint16_t *codes, const float *qtab, search_ws *w) {
    hyp *h0 = w->h0, *h1 = w->h1;
    int nh = 1;
    memcpy(h0[0].codes, codes, (size_t)M * sizeof(uint16_t));
    memset(h0[0].delta, 0, sizeof h0[0].delta);
    h0[0].dl = 0;
    const double s2 = (double)s * s;
    for (int m = 0; m < M; m++) {
        int nn = 0;
        const float *C = cb + (int64_t)m * K * G;
        for (int hi = 0; hi < nh; hi++) {
            const hyp *H = &h0[hi];
            double u[G], v[G], base = 0;
            const float *co = C + (int64_t)H->codes[m] * G;
            for (int d = 0; d < G; d++) u[d] = H->delta[d] - (double)s * co[d];
            for (int d = 0; d < G; d++) {
                double t = 0;
                for (int e = 0; e < G; e++) t += (double)hjj[d * G + e] * u[e];
                base += -2.0 * u[d] * g[d] + u[d] * t;
                v[d] = 2.0 * s * (t - g[d]);
            }
            score_candidates(cbt + (int64_t)m * G * K, qtab + (int64_t)m * K, K, base, s2, v, w->score);
            for (int k = 0; k < K; k++) {
                const double sc = w->score[k];
                if (nn == beam && !(sc < h1[nn - 1].dl)) continue;
                const float *c = C + (int64_t)k * G;
                int pos = nn < beam ? nn++ : nn - 1; /* insert sorted (stable: earlier wins ties) */
                while (pos > 0 && h1[pos - 1].dl > sc) {
                    h1[pos] = h1[pos - 1];
                    pos--;
                }
                hyp *o = &h1[pos];
                memcpy(o->codes, H->codes, (size_t)M * sizeof(uint16_t));
                o->codes[m] = (uint16_t)k;
                for (int d = 0; d < G; d++) o->delta[d] = u[d] + (double)s * c[d];
                o->dl = sc;
            }
        }
        memcpy(h0, h1, (size_t)nn * sizeof(hyp));
        nh = nn;
    }
    if (h0[0].dl < 0) {
        memcpy(codes, h0[0].codes, (size_t)M * sizeof(uint16_t));
        return h0[0].dl;
    }
    return 0;
}

static double search_best(const float *cb, const float *cbt, int M, int K, const float *hjj, const float *g, float s,
                          int beam, uint16_t *codes, const float *qtab, search_ws *w) {
    if (beam > 1 && M == 2) /* greedy's two steps are the beam's steps for its first hypothesis, and on a tie
                               that hypothesis's candidate is kept: the beam alone gives greedy-or-better codes */
        return search(cb, cbt, M, K, hjj, g, s, beam, codes, qtab, w);
    uint16_t gc[8];
    memcpy(gc, codes, (size_t)M * sizeof(uint16_t));
    double dg = search(cb, cbt, M, K, hjj, g, s, 1, gc, qtab, w);
    if (beam <= 1 || M == 1) {
        memcpy(codes, gc, (size_t)M * sizeof(uint16_t));
        return dg;
    }
    uint16_t bc[8];
    memcpy(bc, codes, (size_t)M * sizeof(uint16_t));
    double db = search(cb, cbt, M, K, hjj, g, s, beam, bc, qtab, w);
    memcpy(codes, db <= dg ? bc : gc, (size_t)M * sizeof(uint16_t));
    return db <= dg ? db : dg;
}

static void group_q(const float *cb, int M, int K, const float *hjj, float *q) {
    for (int64_t i = 0; i < (int64_t)M * K; i++) {
        const float *c = cb + i * G;
        double t = 0;
        for (int d = 0; d < G; d++) {
            double hc = 0;
            for (int e = 0; e < G; e++) hc += (double)hjj[d * G + e] * c[e];
            t += c[d] * hc;
        }
        q[i] = (float)t;
    }
}

double ql_aqlm_search_group(const float *codebooks, int M, int K, const float *hjj, const float *g, float s,
                            int beam, uint16_t *codes) {
    if (M < 1 || M > 8 || beam < 1) return 0;
    float *q = malloc((size_t)(M * K) * sizeof(float)), *cbt = malloc((size_t)(M * K * G) * sizeof(float));
    search_ws w;
    double r = 0;
    if (search_ws_alloc(&w, beam, K) && q && cbt) {
        group_q(codebooks, M, K, hjj, q);
        transpose_codebooks(codebooks, M, K, cbt);
        r = search_best(codebooks, cbt, M, K, hjj, g, s, beam, codes, q, &w);
    }
    free(q), free(cbt);
    search_ws_free(&w);
    return r;
}

static void group_block(const ql_aqlm_solver *s, int64_t j, float *hjj) {
    for (int d = 0; d < G; d++)
        for (int e = 0; e < G; e++)
            hjj[d * G + e] = s->full ? s->h[(j * G + d) * s->ncp + j * G + e] : d == e ? s->hd[j * G + d] : 0.0f;
}

typedef struct {
    ql_aqlm_solver *s;
    const float *q;   /* [ngroups][M][K] */
    const float *cbt; /* transpose_codebooks */
    int beam;
    volatile int stop;
} encode_job;

#define ENCODE_TILE 4 /* rows searched side by side, so each 8-row block of H is read once for all of them */

/* Gauss–Seidel over a row's groups: after group j changes by dy, the gradient of the groups after it falls
 * by dy·H[j block, later columns] (the earlier groups are done, so their slice is not updated). The rows of
 * a tile advance group by group together; each row's arithmetic is exactly what it would be alone. */
HOT VECTORIZE static void encode_range(void *ctx, int worker, int64_t r0, int64_t r1) {
    (void)worker;
    encode_job *e = ctx;
    ql_aqlm_solver *s = e->s;
    ql_aqlm_state *st = &s->st;
    const int64_t n = s->ncp, M = st->M, K = st->K, ng = st->ngroups;
    float *gr = malloc((size_t)(ENCODE_TILE * n) * sizeof(float));
    search_ws w;
    if (!search_ws_alloc(&w, e->beam, (int)K) || !gr) {
        e->stop = 1;
        free(gr);
        search_ws_free(&w);
        return;
    }
    float hjj[G * G];
    for (int64_t t0 = r0; t0 < r1 && !e->stop; t0 += ENCODE_TILE) {
        if (ql_progress_cancelled(s->p.progress)) {
            e->stop = 1;
            break;
        }
        int64_t rows[ENCODE_TILE];
        int nt = 0;
        for (int64_t r = t0; r < QL_MIN(t0 + ENCODE_TILE, r1); r++) {
            const float sc = st->scales[r];
            if (sc == 0.0f) continue; /* every code gives the same (zero) row */
            float *g = gr + nt * n;
            for (int64_t c = 0; c < n; c++) g[c] = s->wh[r * n + c] - sc * s->vh[r * n + c];
            rows[nt++] = r;
        }
        for (int64_t j = 0; j < ng; j++) {
            group_block(s, j, hjj);
            for (int t = 0; t < nt; t++) {
                const int64_t r = rows[t];
                const float sc = st->scales[r];
                float *g = gr + t * n;
                uint16_t *codes = st->codes + (r * ng + j) * M;
                uint16_t old[8];
                memcpy(old, codes, (size_t)M * sizeof(uint16_t));
                double dl = search_best(st->codebooks, e->cbt, (int)M, (int)K, hjj, g + j * G, sc, e->beam, codes,
                                        e->q + j * M * K, &w);
                if (!(dl < 0)) continue;
                /* the change of the decoded group, computed as the decoder computes it */
                float yn[G] = {0}, yo[G] = {0}, dy[G];
                for (int m = 0; m < M; m++)
                    for (int d = 0; d < G; d++) {
                        yn[d] += st->codebooks[(m * K + codes[m]) * G + d];
                        yo[d] += st->codebooks[(m * K + old[m]) * G + d];
                    }
                for (int d = 0; d < G; d++) dy[d] = yn[d] * sc - yo[d] * sc;
                if (s->full) {
                    /* g[c] -= dy[d]·H[8j+d][c] for d = 0..7 in turn, for the columns after this group */
                    const float *h0 = s->h + j * G * n, *h1 = h0 + n, *h2 = h1 + n, *h3 = h2 + n, *h4 = h3 + n,
                                *h5 = h4 + n, *h6 = h5 + n, *h7 = h6 + n; /* written out so it vectorizes over c */
                    for (int64_t c = (j + 1) * G; c < n; c++)
                        g[c] = g[c] - dy[0] * h0[c] - dy[1] * h1[c] - dy[2] * h2[c] - dy[3] * h3[c] - dy[4] * h4[c] -
                               dy[5] * h5[c] - dy[6] * h6[c] - dy[7] * h7[c];
                } else
                    for (int d = 0; d < G; d++) g[j * G + d] -= dy[d] * s->hd[j * G + d];
            }
        }
    }
    free(gr);
    search_ws_free(&w);
}

typedef struct {
    ql_aqlm_solver *s;
    float *q;
} q_job;

static void q_range(void *ctx, int worker, int64_t j0, int64_t j1) {
    (void)worker;
    q_job *qj = ctx;
    const ql_aqlm_state *st = &qj->s->st;
    float hjj[G * G];
    for (int64_t j = j0; j < j1; j++) {
        group_block(qj->s, j, hjj);
        group_q(st->codebooks, st->M, st->K, hjj, qj->q + j * st->M * st->K);
    }
}

ql_status ql_aqlm_encode_pass(ql_aqlm_solver *s, int beam) {
    ql_aqlm_state *st = &s->st;
    const size_t ncodes = (size_t)(st->nrows * st->ngroups * st->M);
    float *q = malloc((size_t)(st->ngroups * st->M * st->K) * sizeof(float));
    float *cbt = malloc((size_t)(st->M * st->K * G) * sizeof(float));
    uint16_t *backup = malloc(ncodes * sizeof(uint16_t));
    if (!q || !cbt || !backup) {
        free(q), free(cbt), free(backup);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (code search)");
    }
    memcpy(backup, st->codes, ncodes * sizeof(uint16_t));
    q_job qj = {s, q};
    ql_parallel_for(s->p.n_threads, st->ngroups, q_range, &qj);
    const double before = s->loss;
    transpose_codebooks(st->codebooks, st->M, st->K, cbt);
    encode_job e = {.s = s, .q = q, .cbt = cbt, .beam = beam < 1 ? 1 : beam};
    ql_parallel_for(s->p.n_threads, st->nrows, encode_range, &e);
    free(q), free(cbt);
    if (e.stop) {
        memcpy(st->codes, backup, ncodes * sizeof(uint16_t));
        free(backup);
        ql_aqlm_refresh(s);
        return ql_progress_cancelled(s->p.progress) ? ql_fail(QL_ERR_CANCELLED, "cancelled")
                                                     : ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (code search)");
    }
    ql_aqlm_refresh(s);
    if (s->loss > before) { /* rounding noise of the incremental gradient: keep the old codes */
        memcpy(st->codes, backup, ncodes * sizeof(uint16_t));
        ql_aqlm_refresh(s);
    }
    free(backup);
    return QL_OK;
}

/* ---------------- codebook updates ---------------- */

void ql_aqlm_ls_assemble_ref(const float *h, const float *hd, int64_t ngroups, const uint16_t *codes, int M, int K,
                             int m, int64_t nrows, const float *scales, double *A) {
    const int64_t ng = ngroups, n = ng * G, P = (int64_t)K * G;
    for (int64_t r = 0; r < nrows; r++) {
        const double s2 = (double)scales[r] * scales[r];
        if (s2 == 0) continue;
        const uint16_t *cr = codes + r * ng * M + m;
        for (int64_t j = 0; j < ng; j++) {
            const int64_t k = cr[j * M];
            if (!h) {
                for (int d = 0; d < G; d++) A[(k * G + d) * P + k * G + d] += s2 * hd[j * G + d];
                continue;
            }
            for (int64_t j2 = 0; j2 < ng; j2++) {
                const int64_t k2 = cr[j2 * M];
                if (k2 < k) continue; /* dposv('U') reads only the upper triangle */
                for (int d = 0; d < G; d++) {
                    double *ar = A + (k * G + d) * P + k2 * G;
                    const float *hr = h + (j * G + d) * n + j2 * G;
                    for (int e = 0; e < G; e++) ar[e] += s2 * hr[e];
                }
            }
        }
    }
}

/* the plain twin of ql_aqlm_ls_scatter_avx2: blocks are 64 contiguous values ([d][e]) on both sides */
VECTORIZE static void ls_scatter(double *ab, const float *hb, double s2, const int32_t *j2, const uint16_t *k2,
                                 int64_t cnt) {
    for (int64_t i = 0; i < cnt; i++) {
        double *ar = ab + (int64_t)k2[i] * G * G;
        const float *hr = hb + (int64_t)j2[i] * G * G;
        for (int e = 0; e < G * G; e++) ar[e] += s2 * hr[e];
    }
}

typedef struct {
    const float *h;
    const float *scales;
    int64_t ng, n, P, nrows, band; /* band: codewords per work item */
    int K;
    const int32_t *off;   /* [ng][K+1]: rows with code k at group j are rows[j][off[j][k] .. off[j][k+1]) */
    const int32_t *rows;  /* [ng][nrows] (rows with a zero scale left out) */
    const int32_t *order; /* [nrows][ng]: the row's groups by code, largest first (stable) */
    const uint16_t *key;  /* [nrows][ng]: their codes */
    bool avx2;
    volatile int nomem;
    double *A;
} ls_job;

/* codewords [band·item, band·(item+1)): every A entry of theirs summed over j, then rows, then j2. The band's
 * rows of A and H's block row j are first repacked block by block ([k2][d][e], [j2][d][e]): the 8 rows of a
 * block are 16 KiB apart in the row-major matrices, which maps them all to the same L1 sets. */
static void ls_band(void *ctx, int worker, int64_t item) {
    (void)worker;
    ls_job *L = ctx;
    const int64_t k0 = item * L->band, k1 = QL_MIN(k0 + L->band, (int64_t)L->K), ng = L->ng, P = L->P, K = L->K;
    double *ap = calloc((size_t)((k1 - k0) * K * G * G), sizeof(double)); /* [k - k0][k2][d][e] */
    float *hp = malloc((size_t)(ng * G * G) * sizeof(float));               /* [j2][d][e] */
    if (!ap || !hp) {
        L->nomem = 1;
        free(ap), free(hp);
        return;
    }
    for (int64_t j = 0; j < ng; j++) {
        const float *hb = L->h + j * G * L->n;
        for (int64_t j2 = 0; j2 < ng; j2++)
            for (int d = 0; d < G; d++) memcpy(hp + (j2 * G + d) * G, hb + d * L->n + j2 * G, G * sizeof(float));
        const int32_t *off = L->off + j * (K + 1), *rows = L->rows + j * L->nrows;
        for (int64_t k = k0; k < k1; k++) {
            double *ab = ap + (k - k0) * K * G * G;
            for (int32_t i = off[k]; i < off[k + 1]; i++) {
                const int64_t r = rows[i];
                const uint16_t *key = L->key + r * ng;
                int64_t lo = 0, hi = ng; /* how many of the row's groups have a code >= k */
                while (lo < hi) {
                    const int64_t mid = (lo + hi) / 2;
                    if (key[mid] >= k) lo = mid + 1;
                    else hi = mid;
                }
                const double s2 = (double)L->scales[r] * L->scales[r];
                if (L->avx2) ql_aqlm_ls_scatter_avx2(ab, hp, s2, L->order + r * ng, key, lo);
                else ls_scatter(ab, hp, s2, L->order + r * ng, key, lo);
            }
        }
    }
    for (int64_t k = k0; k < k1; k++) /* back into A's rows, upper blocks only */
        for (int64_t k2 = k; k2 < K; k2++)
            for (int d = 0; d < G; d++) {
                double *ar = L->A + (k * G + d) * P + k2 * G;
                const double *src = ap + (((k - k0) * K + k2) * G + d) * G;
                for (int e = 0; e < G; e++) ar[e] += src[e];
            }
    free(ap), free(hp);
}

ql_status ql_aqlm_ls_assemble(const float *h, const float *hd, int64_t ngroups, const uint16_t *codes, int M, int K,
                              int m, int64_t nrows, const float *scales, int n_threads, double *A) {
    const int64_t ng = ngroups, P = (int64_t)K * G;
    if (!h) { /* diagonal H: one term per group, nothing to reorder */
        ql_aqlm_ls_assemble_ref(h, hd, ngroups, codes, M, K, m, nrows, scales, A);
        return QL_OK;
    }
    if (nrows > INT32_MAX || ng > INT32_MAX) return ql_fail(QL_ERR_NOMEM, "aqlm: tensor too large for least squares");
    int32_t *off = malloc((size_t)(ng * (K + 1)) * sizeof(int32_t)), *rows = malloc((size_t)(ng * nrows) * sizeof(int32_t));
    int32_t *order = malloc((size_t)(nrows * ng) * sizeof(int32_t)), *cnt = malloc((size_t)(K + 1) * sizeof(int32_t));
    uint16_t *key = malloc((size_t)(nrows * ng) * sizeof(uint16_t));
    if (!off || !rows || !order || !cnt || !key) {
        free(off), free(rows), free(order), free(cnt), free(key);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (least-squares index, %lld rows)", (long long)nrows);
    }
    /* each row's groups sorted by code, largest first, by counting sort (ties keep group order) */
    for (int64_t r = 0; r < nrows; r++) {
        const uint16_t *cr = codes + r * ng * M + m;
        memset(cnt, 0, (size_t)(K + 1) * sizeof(int32_t));
        for (int64_t j = 0; j < ng; j++) cnt[cr[j * M]]++;
        int32_t pos = 0;
        for (int k = K - 1; k >= 0; k--) {
            const int32_t c = cnt[k];
            cnt[k] = pos, pos += c;
        }
        for (int64_t j = 0; j < ng; j++) {
            const int32_t p = cnt[cr[j * M]]++;
            order[r * ng + p] = (int32_t)j, key[r * ng + p] = cr[j * M];
        }
    }
    /* for each group, the rows by their code there (ascending rows within a code); zero scales add nothing */
    for (int64_t j = 0; j < ng; j++) {
        int32_t *o = off + j * (K + 1);
        memset(o, 0, (size_t)(K + 1) * sizeof(int32_t));
        for (int64_t r = 0; r < nrows; r++)
            if (scales[r] != 0.0f) o[codes[(r * ng + j) * M + m] + 1]++;
        for (int k = 0; k < K; k++) o[k + 1] += o[k];
        memcpy(cnt, o, (size_t)K * sizeof(int32_t));
        for (int64_t r = 0; r < nrows; r++)
            if (scales[r] != 0.0f) rows[j * nrows + cnt[codes[(r * ng + j) * M + m]]++] = (int32_t)r;
    }
    /* a band of codewords owns 8·band rows of A: about 1 MiB of them, which stay in L2 with H's 8-row block
     * (a band's rows of A are copied out once at its end, so more bands cost little) */
    const int64_t band = QL_MAX((int64_t)1, ((int64_t)1 << 20) / (G * P * (int64_t)sizeof(double)));
    ls_job L = {.h = h, .scales = scales, .ng = ng, .n = ng * G, .P = P, .nrows = nrows, .band = band, .K = K,
                .off = off, .rows = rows, .order = order, .key = key,
                .avx2 = ql_simd_level_get() >= QL_SIMD_AVX2, .A = A};
    ql_parallel_items(n_threads, (K + band - 1) / band, ls_band, &L);
    free(off), free(rows), free(order), free(cnt), free(key);
    return L.nomem ? ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (least-squares band)") : QL_OK;
}

/* Σ_r s_r S_rᵀ G_rᵀ for codebook m (or all codebooks when m < 0) into out [(M or 1)·K·8] */
static void gather_gradient(const ql_aqlm_solver *s, int m, double *out) {
    const ql_aqlm_state *st = &s->st;
    const int64_t ng = st->ngroups, M = st->M, n = s->ncp, K = st->K;
    memset(out, 0, (size_t)((m < 0 ? M : 1) * K * G) * sizeof(double));
    for (int64_t r = 0; r < st->nrows; r++) {
        const double sc = st->scales[r];
        if (sc == 0) continue;
        for (int64_t j = 0; j < ng; j++)
            for (int64_t mm = (m < 0 ? 0 : m); mm < (m < 0 ? M : m + 1); mm++) {
                const int64_t k = st->codes[(r * ng + j) * M + mm];
                double *o = out + ((m < 0 ? mm : 0) * K + k) * G;
                for (int d = 0; d < G; d++)
                    o[d] += sc * ((double)s->wh[r * n + j * G + d] - (double)st->scales[r] * s->vh[r * n + j * G + d]);
            }
    }
}

static ql_status update_ls(ql_aqlm_solver *s) {
    ql_aqlm_state *st = &s->st;
    const int64_t K = st->K, P = K * G;
    double *A = malloc((size_t)(P * P) * sizeof(double)), *rhs = malloc((size_t)P * sizeof(double));
    float *old = malloc((size_t)P * sizeof(float));
    if (!A || !rhs || !old) {
        free(A), free(rhs), free(old);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (least squares, %lld unknowns)", (long long)P);
    }
    for (int m = 0; m < st->M; m++) {
        if (ql_progress_cancelled(s->p.progress)) break;
        memset(A, 0, (size_t)(P * P) * sizeof(double));
        ql_status rc = ql_aqlm_ls_assemble(s->full ? s->h : NULL, s->hd, st->ngroups, st->codes, st->M, (int)K, m,
                                           st->nrows, st->scales, s->p.n_threads, A);
        if (rc) {
            free(A), free(rhs), free(old);
            return rc;
        }
        gather_gradient(s, m, rhs);
        double tr = 0;
        for (int64_t i = 0; i < P; i++) tr += A[i * P + i];
        if (!(tr > 0)) continue;
        const double lam = 1e-7 * tr / (double)P;
        for (int64_t i = 0; i < P; i++) A[i * P + i] += lam;
        int saved = ql_blas_get_threads();
        ql_blas_set_threads(s->p.n_threads);
        lapack_int info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', (lapack_int)P, 1, A, (lapack_int)P, rhs, 1);
        ql_blas_set_threads(saved);
        if (info != 0) continue;
        float *C = st->codebooks + (int64_t)m * P;
        memcpy(old, C, (size_t)P * sizeof(float));
        const double before = s->loss;
        for (int64_t i = 0; i < P; i++) C[i] = f16r((float)((double)C[i] + rhs[i]));
        ql_aqlm_refresh(s);
        if (!(s->loss <= before)) {
            memcpy(C, old, (size_t)P * sizeof(float));
            ql_aqlm_refresh(s);
        }
    }
    free(A), free(rhs), free(old);
    return QL_OK;
}

static ql_status update_adam(ql_aqlm_solver *s) {
    ql_aqlm_state *st = &s->st;
    const int64_t N = (int64_t)st->M * st->K * G;
    float *master = malloc((size_t)N * sizeof(float)), *best = malloc((size_t)N * sizeof(float));
    double *m1 = calloc((size_t)N, sizeof(double)), *m2 = calloc((size_t)N, sizeof(double));
    double *grad = malloc((size_t)N * sizeof(double));
    if (!master || !best || !m1 || !m2 || !grad) {
        free(master), free(best), free(m1), free(m2), free(grad);
        return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory (Adam)");
    }
    memcpy(master, st->codebooks, (size_t)N * sizeof(float));
    memcpy(best, st->codebooks, (size_t)N * sizeof(float));
    double best_loss = s->loss;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int t = 1; t <= s->p.adam_steps; t++) {
        if (ql_progress_cancelled(s->p.progress)) break;
        gather_gradient(s, -1, grad); /* = −½ ∂L/∂C */
        const double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
        for (int64_t i = 0; i < N; i++) {
            const double gi = -2.0 * grad[i];
            m1[i] = b1 * m1[i] + (1 - b1) * gi;
            m2[i] = b2 * m2[i] + (1 - b2) * gi * gi;
            master[i] -= (float)(s->p.lr * (m1[i] / c1) / (sqrt(m2[i] / c2) + eps));
            st->codebooks[i] = f16r(master[i]);
        }
        ql_aqlm_refresh(s);
        if (s->loss < best_loss) {
            best_loss = s->loss;
            memcpy(best, st->codebooks, (size_t)N * sizeof(float));
        }
    }
    memcpy(st->codebooks, best, (size_t)N * sizeof(float));
    ql_aqlm_refresh(s);
    free(master), free(best), free(m1), free(m2), free(grad);
    return QL_OK;
}

ql_status ql_aqlm_alternate(ql_aqlm_solver *s) {
    ql_aqlm_state *st = &s->st;
    ql_aqlm_state saved;
    ql_status rc = ql_aqlm_state_alloc(&saved, st->M, st->B, st->nrows, st->ncols);
    if (rc) return rc;
    memcpy(saved.codebooks, st->codebooks, (size_t)(st->M * st->K * G) * sizeof(float));
    memcpy(saved.scales, st->scales, (size_t)st->nrows * sizeof(float));
    memcpy(saved.codes, st->codes, (size_t)(st->nrows * st->ngroups * st->M) * sizeof(uint16_t));
    rc = ql_aqlm_encode_pass(s, s->p.beam);
    if (!rc) rc = s->p.update == QL_AQLM_UPDATE_LS ? update_ls(s) : update_adam(s);
    if (!rc) update_scales(s);
    if (!rc && ql_progress_cancelled(s->p.progress)) rc = ql_fail(QL_ERR_CANCELLED, "cancelled");
    if (rc) { /* leave the state of the last whole alternation */
        ql_aqlm_state_free(st);
        *st = saved;
        ql_aqlm_refresh(s);
        return rc;
    }
    ql_aqlm_state_free(&saved);
    return QL_OK;
}
