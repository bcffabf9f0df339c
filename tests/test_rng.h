/* test_rng.h — the one random generator of the tests and benchmarks: splitmix64 over a global state
 * g_rng, uniform() in (0, 1) and normal() by Box–Muller. A file defines QL_TEST_RNG_SEED (its own fixed
 * seed, so its inputs stay what they were) before including this; reseed by assigning g_rng. */
#ifndef QL_TEST_RNG_H
#define QL_TEST_RNG_H

#include <math.h>
#include <stdint.h>

#ifndef QL_TEST_RNG_SEED
#error "define QL_TEST_RNG_SEED before including tests/test_rng.h"
#endif

static uint64_t g_rng = QL_TEST_RNG_SEED;

static inline double uniform(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

static inline double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

#endif
