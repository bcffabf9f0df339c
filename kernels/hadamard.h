/* hadamard.h — orthogonal Hadamard transforms for incoherence processing (QuIP#, QuaRot-style
 * rotations): sizes n = 2^k · m, transformed as the Kronecker product H_m ⊗ H_{2^k} / sqrt(n), where
 * H_{2^k} is Sylvester's matrix (fast Walsh–Hadamard butterflies) and H_m, m > 1, is a Paley-I matrix
 * of order m = p + 1 for a prime p ≡ 3 (mod 4) (12, 20, 24, 32, 44, 48, 60, ...). A size with no such
 * factorization (172 = 4·43: 42, 85, 171 are not primes ≡ 3 mod 4) is refused with the reason.
 * Also the randomized Hadamard transform (RHT) of a weight matrix on both sides with ±1 signs drawn
 * from a 64-bit seed (splitmix64), the rotation QuIP# and the rht_* formats store.
 * ql_had_dense_ref builds the whole n×n matrix: the reference the fast transform is tested against.
 * Pure, thread-safe once a plan is built; callers own every buffer. */
#ifndef QL_HADAMARD_H
#define QL_HADAMARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QL_HAD_MAX_M 1024 /* largest Paley factor built (its dense part costs m per element) */

typedef struct ql_had {
    int64_t n;    /* size = m · pow2 */
    int64_t pow2; /* Sylvester part, a power of two (1 allowed) */
    int m;        /* Paley part: 1 or p + 1 */
    int8_t *hm;   /* [m, m] ±1 entries, row-major; NULL when m == 1 */
} ql_had;

/* Plan a transform of size n. false (nothing allocated) with the reason in why when n cannot be served. */
bool ql_had_init(ql_had *h, int64_t n, char *why, size_t cap);
void ql_had_free(ql_had *h);
/* true when ql_had_init would succeed (no allocation); why may be NULL */
bool ql_had_supported(int64_t n, char *why, size_t cap);

/* x is [n, width] row-major (width = 1: one vector). Replaces x by (H/sqrt(n))·x, or by (H/sqrt(n))ᵀ·x
 * when transpose. Both are orthogonal; the transpose is the inverse. */
void ql_had_apply(const ql_had *h, float *x, int64_t width, bool transpose);
void ql_had_apply_d(const ql_had *h, double *x, int64_t width, bool transpose); /* the same in double */

/* The reference: M [n, n] row-major = H/sqrt(n), built entry by entry from the definition. */
void ql_had_dense_ref(const ql_had *h, float *M);

/* ±1 signs of the RHT: element i of stream `which` (0: input side, 1: output side) for seed. */
float ql_rht_sign(uint64_t seed, int which, int64_t i);

/* The RHT of a weight matrix W [nrows (out), ncols (in)]: W̃ = H_out·S_out·W·S_in·H_inᵀ (inverse=false),
 * or back: W = S_out·H_outᵀ·W̃·H_in·S_in (inverse=true). Fails (false, why) when a side cannot be served.
 * Then y = W·x = S_out·H_outᵀ·(W̃·(H_in·S_in·x)): a runtime rotates the activations instead. */
bool ql_rht_matrix(float *w, int64_t nrows, int64_t ncols, uint64_t seed, bool inverse, char *why, size_t cap);
/* H̃ = H_in·S_in·H·S_in·H_inᵀ for a symmetric [n, n] Hessian in double (the input side of W̃). */
bool ql_rht_hessian(double *H, int64_t n, uint64_t seed, char *why, size_t cap);

#endif
