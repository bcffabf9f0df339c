/* e8p_internal.h — the pattern scan under the E8P nearest-codeword search (kernels/e8p.c) and its AVX2
 * twin (kernels/e8p_avx2.c), exposed for the equality test (tests/test_quip.c). */
#ifndef QL_E8P_INTERNAL_H
#define QL_E8P_INTERNAL_H

#include <stdint.h>

/* The tables, pattern-major (pat[k][i], patf[k][i] = pat/2, norm[k] = Σ patf²) and coordinate-major for
 * the AVX2 twin (patf_t[i][k], pat_t[i][k] as int32), built once by ql_e8p_tables(). */
typedef struct {
    uint8_t pat[256][8];
    float patf[256][8];
    float norm[256];
    float patf_t[8][256];
    int32_t pat_t[8][256];
} ql_e8p_tables_t;

const ql_e8p_tables_t *ql_e8p_tables(void);

/* Over patterns [0, npat) for |z| = az, sign bits neg (bit i set: z_i < 0) and zz = Σ z_i² summed in i
 * order: score(k) = Σ_i patf[k][i]·az_i in i order; when the signed pattern breaks the parity rule the
 * cheapest coordinate (first i on ties) is flipped: score −= 2·min_i c_i. d(k) = (zz + norm[k]) − 2·score.
 * Returns the least d (first k on ties, compared with <, so NaN never wins; 1e30 and code 0 when no d is
 * below 1e30) and its code k << 8 | signs of coordinates 0..6. */
float ql_e8p_scan_ref(const float az[8], unsigned neg, float zz, int npat, unsigned *code);
#if defined(__x86_64__) || defined(__i386__)
#define QL_E8P_AVX2 1
float ql_e8p_scan_avx2(const float az[8], unsigned neg, float zz, int npat, unsigned *code); /* npat % 8 == 0 */
#endif

#endif
