/* parallel.h — a minimal fork-join over pthreads: run fn(ctx, worker, begin, end) on n_threads
 * workers splitting [0, n) into contiguous ranges. No pool: each call spawns and joins, which costs
 * ~50 µs and keeps the code obviously correct; callers use it for coarse work only. */
#ifndef QL_PARALLEL_H
#define QL_PARALLEL_H
#include <stdint.h>

typedef void (*ql_range_fn)(void *ctx, int worker, int64_t begin, int64_t end);
void ql_parallel_for(int n_threads, int64_t n, ql_range_fn fn, void *ctx);
/* Dynamic scheduling: workers take items one at a time (for uneven items such as chunks). */
typedef void (*ql_item_fn)(void *ctx, int worker, int64_t item);
void ql_parallel_items(int n_threads, int64_t n, ql_item_fn fn, void *ctx);
int ql_default_threads(void);
/* At most n workers from now on (and ql_default_threads() ≤ n): set when an address-space limit leaves room
 * for only n of OpenBLAS's per-thread buffers, since every worker may call BLAS (base/ql_common.h). */
void ql_parallel_cap(int n);
#endif
