/* hadamard.c — Hadamard plans (Sylvester ⊗ Paley-I), the fast transform on [n, width] arrays in float
 * and double, the dense reference matrix, and the randomized Hadamard transform (RHT) of weight
 * matrices and Hessians. See kernels/hadamard.h. */
#include "kernels/hadamard.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ql_common.h"

static bool is_prime(int64_t p) {
    if (p < 2) return false;
    for (int64_t d = 2; d * d <= p; d++)
        if (p % d == 0) return false;
    return true;
}

/* m can be the Paley part: 1, or p + 1 with p prime, p ≡ 3 (mod 4) (Paley's construction I) */
static bool paley_order(int64_t m) { return m == 1 || (m <= QL_HAD_MAX_M && is_prime(m - 1) && (m - 1) % 4 == 3); }

/* the largest power of two P with n = P·m and m a Paley order; 0 if none */
static int64_t pick_pow2(int64_t n) {
    if (n <= 0) return 0;
    int64_t p = 1;
    while (p <= n / 2 && n % (p * 2) == 0) p *= 2;
    for (; p >= 1; p /= 2)
        if (paley_order(n / p)) return p;
    return 0;
}

bool ql_had_supported(int64_t n, char *why, size_t cap) {
    if (pick_pow2(n) > 0) return true;
    if (why && cap) {
        int64_t odd = n, p2 = 1;
        while (odd > 0 && odd % 2 == 0) odd /= 2, p2 *= 2;
        snprintf(why, cap,
                 "no Hadamard matrix of order %lld: it is %lld·%lld, and no factor 2^j·%lld is 1 or p+1 for a prime "
                 "p ≡ 3 (mod 4) up to %d (Paley I)",
                 (long long)n, (long long)p2, (long long)odd, (long long)odd, QL_HAD_MAX_M);
    }
    return false;
}

/* quadratic character of a mod p (p odd prime): 0, 1 or -1 */
static int chi(int64_t a, int64_t p) {
    a %= p;
    if (a < 0) a += p;
    if (a == 0) return 0;
    int64_t r = 1, b = a, e = (p - 1) / 2; /* Euler's criterion: a^((p-1)/2) mod p */
    while (e) {
        if (e & 1) r = r * b % p;
        b = b * b % p;
        e >>= 1;
    }
    return r == 1 ? 1 : -1;
}

bool ql_had_init(ql_had *h, int64_t n, char *why, size_t cap) {
    memset(h, 0, sizeof *h);
    if (!ql_had_supported(n, why, cap)) return false;
    h->n = n;
    h->pow2 = pick_pow2(n);
    h->m = (int)(n / h->pow2);
    if (h->m > 1) {
        /* Paley I: H = I + S, S = [[0, 1ᵀ], [-1, Q]], Q[i][j] = χ(j - i) (skew for p ≡ 3 mod 4) */
        const int m = h->m, p = m - 1;
        h->hm = ql_malloc((size_t)m * (size_t)m);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
                int v;
                if (i == 0) v = 1;
                else if (j == 0) v = -1;
                else if (i == j) v = 1;
                else v = chi(j - i, p);
                h->hm[i * m + j] = (int8_t)v;
            }
    }
    return true;
}

void ql_had_free(ql_had *h) {
    if (!h) return;
    free(h->hm);
    memset(h, 0, sizeof *h);
}

/* The transform, written once for float and double. Rows i = a·pow2 + b: butterflies over b inside each
 * a (Sylvester, symmetric), then the Paley matrix across a for each b, then 1/sqrt(n). */
#define HAD_APPLY(NAME, T)                                                                                     \
    void NAME(const ql_had *h, T *x, int64_t width, bool transpose) {                                          \
        const int64_t P = h->pow2, n = h->n;                                                                   \
        for (int64_t a = 0; a < h->m; a++) {                                                                   \
            T *base = x + a * P * width;                                                                       \
            for (int64_t len = 1; len < P; len *= 2)                                                           \
                for (int64_t i = 0; i < P; i += 2 * len)                                                       \
                    for (int64_t j = i; j < i + len; j++) {                                                    \
                        T *u = base + j * width, *v = base + (j + len) * width;                                \
                        for (int64_t c = 0; c < width; c++) {                                                  \
                            T s = u[c] + v[c], d = u[c] - v[c];                                                \
                            u[c] = s, v[c] = d;                                                                \
                        }                                                                                      \
                    }                                                                                          \
        }                                                                                                      \
        if (h->m > 1) {                                                                                        \
            const int m = h->m;                                                                                \
            T *tmp = ql_malloc((size_t)m * (size_t)width * sizeof(T));                                         \
            for (int64_t b = 0; b < P; b++) {                                                                  \
                for (int a = 0; a < m; a++)                                                                    \
                    memcpy(tmp + a * width, x + (a * P + b) * width, (size_t)width * sizeof(T));               \
                for (int a = 0; a < m; a++) {                                                                  \
                    T *out = x + (a * P + b) * width;                                                          \
                    memset(out, 0, (size_t)width * sizeof(T));                                                 \
                    for (int k = 0; k < m; k++) {                                                              \
                        int s = transpose ? h->hm[k * m + a] : h->hm[a * m + k];                               \
                        const T *in = tmp + k * width;                                                         \
                        if (s > 0)                                                                             \
                            for (int64_t c = 0; c < width; c++) out[c] += in[c];                               \
                        else                                                                                   \
                            for (int64_t c = 0; c < width; c++) out[c] -= in[c];                               \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
            free(tmp);                                                                                         \
        }                                                                                                      \
        const T norm = (T)(1.0 / sqrt((double)n));                                                             \
        for (int64_t i = 0; i < n * width; i++)                                                                \
            x[i] *= norm;                                                                                      \
    }

HAD_APPLY(ql_had_apply, float)
HAD_APPLY(ql_had_apply_d, double)

void ql_had_dense_ref(const ql_had *h, float *M) {
    const int64_t n = h->n, P = h->pow2;
    const double norm = 1.0 / sqrt((double)n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            int64_t a = i / P, b = i % P, a2 = j / P, b2 = j % P;
            int s = __builtin_popcountll((unsigned long long)(b & b2)) & 1 ? -1 : 1; /* Sylvester */
            if (h->m > 1) s *= h->hm[a * h->m + a2];
            M[i * n + j] = (float)(s * norm);
        }
}

static uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float ql_rht_sign(uint64_t seed, int which, int64_t i) {
    uint64_t z = splitmix64(seed ^ (which ? 0xD1B54A32D192ED03ull : 0)) + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    return splitmix64(z) >> 63 ? -1.0f : 1.0f;
}

bool ql_rht_matrix(float *w, int64_t nrows, int64_t ncols, uint64_t seed, bool inverse, char *why, size_t cap) {
    ql_had hin, hout;
    if (!ql_had_init(&hin, ncols, why, cap)) return false;
    if (!ql_had_init(&hout, nrows, why, cap)) {
        ql_had_free(&hin);
        return false;
    }
    float *sin_ = ql_malloc((size_t)ncols * sizeof(float));
    for (int64_t c = 0; c < ncols; c++)
        sin_[c] = ql_rht_sign(seed, 0, c);
    if (!inverse) {
        for (int64_t r = 0; r < nrows; r++) {
            float *row = w + r * ncols;
            const float so = ql_rht_sign(seed, 1, r);
            for (int64_t c = 0; c < ncols; c++)
                row[c] *= sin_[c] * so;
            ql_had_apply(&hin, row, 1, false);
        }
        ql_had_apply(&hout, w, ncols, false);
    } else {
        ql_had_apply(&hout, w, ncols, true);
        for (int64_t r = 0; r < nrows; r++) {
            float *row = w + r * ncols;
            ql_had_apply(&hin, row, 1, true);
            const float so = ql_rht_sign(seed, 1, r);
            for (int64_t c = 0; c < ncols; c++)
                row[c] *= sin_[c] * so;
        }
    }
    free(sin_);
    ql_had_free(&hin);
    ql_had_free(&hout);
    return true;
}

bool ql_rht_hessian(double *H, int64_t n, uint64_t seed, char *why, size_t cap) {
    ql_had h;
    if (!ql_had_init(&h, n, why, cap)) return false;
    double *s = ql_malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        s[i] = ql_rht_sign(seed, 0, i);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            H[i * n + j] *= s[i] * s[j];
    ql_had_apply_d(&h, H, n, false); /* H_in·(S H S) */
    for (int64_t i = 0; i < n; i++)  /* ...·H_inᵀ, one row at a time */
        ql_had_apply_d(&h, H + i * n, 1, false);
    free(s);
    ql_had_free(&h);
    return true;
}
