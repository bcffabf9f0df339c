/* e8p.c — the E8P codebook (kernels/e8p.h): the pattern table, decoding and exact nearest-codeword
 * encoding for the 16-bit E8P codes and the one-byte e8p1 restriction. */
#include "kernels/e8p.h"
#include "kernels/e8p_internal.h"
#include "kernels/simd.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

static ql_e8p_tables_t g_tab; /* patf = a = 2a / 2, norm = ‖a‖² */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void build(void) {
    int n = 0;
    /* 2a over {1,3,5,7}^8 in lexicographic order; keep ‖2a‖² ≤ 40 (‖a‖² ≤ 10) */
    for (int pass = 0; pass < 2; pass++)
        for (int idx = 0; idx < 65536; idx++) {
            uint8_t v[8];
            int s2 = 0, n3 = 0, n1 = 0;
            for (int i = 0; i < 8; i++) {
                v[i] = (uint8_t)(1 + 2 * ((idx >> (2 * (7 - i))) & 3));
                s2 += v[i] * v[i];
                n3 += v[i] == 3;
                n1 += v[i] == 1;
            }
            bool take = pass == 0 ? s2 <= 40 : (s2 == 48 && n3 == 5 && n1 == 3 && n < QL_E8P_PATTERNS);
            if (take) memcpy(g_tab.pat[n++], v, 8);
        }
    for (int k = 0; k < QL_E8P_PATTERNS; k++) {
        g_tab.norm[k] = 0;
        for (int i = 0; i < 8; i++) {
            g_tab.patf[k][i] = 0.5f * g_tab.pat[k][i];
            g_tab.norm[k] += g_tab.patf[k][i] * g_tab.patf[k][i];
            g_tab.patf_t[i][k] = g_tab.patf[k][i];
            g_tab.pat_t[i][k] = g_tab.pat[k][i];
        }
    }
}

const ql_e8p_tables_t *ql_e8p_tables(void) {
    pthread_once(&g_once, build);
    return &g_tab;
}

const uint8_t *ql_e8p_patterns(void) {
    pthread_once(&g_once, build);
    return &g_tab.pat[0][0];
}

/* signs of coordinates 0..6 from the code, coordinate 7's from the parity rule: Σ ±2a_i ≡ 0 (mod 4) */
static void decode_pattern(int k, unsigned signs, unsigned shift, float out[8]) {
    int sum = 0;
    for (int i = 0; i < 7; i++)
        sum += (signs >> i & 1) ? -g_tab.pat[k][i] : g_tab.pat[k][i];
    sum += g_tab.pat[k][7];
    const bool neg7 = (sum & 3) != 0;
    const float sh = shift ? -0.25f : 0.25f;
    for (int i = 0; i < 7; i++)
        out[i] = ((signs >> i & 1) ? -g_tab.patf[k][i] : g_tab.patf[k][i]) + sh;
    out[7] = (neg7 ? -g_tab.patf[k][7] : g_tab.patf[k][7]) + sh;
}

void ql_e8p_decode(uint16_t code, float out[8]) {
    pthread_once(&g_once, build);
    decode_pattern(code >> 8, code & 127u, code >> 7 & 1u, out);
}

void ql_e8p1_decode(uint8_t code, float out[8]) {
    pthread_once(&g_once, build);
    decode_pattern(0, code & 127u, code >> 7 & 1u, out);
}

float ql_e8p_scan_ref(const float az[8], unsigned neg, float zz, int npat, unsigned *code) {
    pthread_once(&g_once, build);
    float best = 1e30f;
    unsigned bestc = 0;
    for (int k = 0; k < npat; k++) {
        const uint8_t *p = g_tab.pat[k];
        float score = 0, mincost = 1e30f;
        int imin = 0, sum = 0;
        for (int i = 0; i < 8; i++) {
            float c = g_tab.patf[k][i] * az[i];
            score += c;
            if (c < mincost) mincost = c, imin = i;
            sum += (neg >> i & 1) ? -p[i] : p[i];
        }
        unsigned s = neg;
        if (sum & 3) { /* parity broken: flip the cheapest coordinate */
            score -= 2 * mincost;
            s ^= 1u << imin;
        }
        float d = zz + g_tab.norm[k] - 2 * score;
        if (d < best) best = d, bestc = (unsigned)k << 8 | (s & 127u);
    }
    *code = bestc;
    return best;
}

/* the best (pattern, signs) for z over patterns [0, npat): returns the squared distance, code in *code.
 * The scan over the 256 patterns is the hot loop of every e8p encoder (RTN, LDLQ, the scale search), so
 * it has an AVX2 twin, bit-identical (e8p_avx2.c). */
static float search(const float z[8], int npat, unsigned *code) {
    float az[8], zz = 0;
    unsigned neg = 0;
    for (int i = 0; i < 8; i++) {
        az[i] = z[i] < 0 ? -z[i] : z[i];
        zz += z[i] * z[i];
        if (z[i] < 0) neg |= 1u << i;
    }
#ifdef QL_E8P_AVX2
    if (npat % 8 == 0 && ql_simd_level_get() >= QL_SIMD_AVX2) return ql_e8p_scan_avx2(az, neg, zz, npat, code);
#endif
    return ql_e8p_scan_ref(az, neg, zz, npat, code);
}

static unsigned encode(const float x[8], int npat) {
    pthread_once(&g_once, build);
    float zp[8], zm[8];
    for (int i = 0; i < 8; i++)
        zp[i] = x[i] - 0.25f, zm[i] = x[i] + 0.25f;
    unsigned cp, cm;
    float dp = search(zp, npat, &cp), dm = search(zm, npat, &cm);
    return dm < dp ? (cm & ~0x80u) | 0x80u : cp;
}

uint16_t ql_e8p_encode(const float x[8]) { return (uint16_t)encode(x, QL_E8P_PATTERNS); }

uint8_t ql_e8p1_encode(const float x[8]) {
    unsigned c = encode(x, 1);
    return (uint8_t)(c & 0xFFu);
}
