/* parallel.c — fork-join helpers (see parallel.h). */
#include "base/parallel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    ql_range_fn fn;
    ql_item_fn item_fn;
    void *ctx;
    int worker;
    int64_t begin, end;
    atomic_llong *next;
    int64_t n;
} job;

static void *run_range(void *p) {
    job *j = p;
    j->fn(j->ctx, j->worker, j->begin, j->end);
    return NULL;
}

static void *run_items(void *p) {
    job *j = p;
    for (;;) {
        int64_t i = atomic_fetch_add(j->next, 1);
        if (i >= j->n) break;
        j->item_fn(j->ctx, j->worker, i);
    }
    return NULL;
}

static _Atomic int g_cap = 256;

void ql_parallel_cap(int n) { g_cap = n < 1 ? 1 : n > 256 ? 256 : n; }

int ql_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    n = n < 1 ? 1 : n > 256 ? 256 : n;
    return n > g_cap ? g_cap : (int)n;
}

void ql_parallel_for(int n_threads, int64_t n, ql_range_fn fn, void *ctx) {
    if (n_threads > g_cap) n_threads = g_cap;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > n) n_threads = (int)(n > 0 ? n : 1);
    if (n_threads == 1) {
        fn(ctx, 0, 0, n);
        return;
    }
    pthread_t th[256];
    job jobs[256];
    if (n_threads > 256) n_threads = 256;
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = (job){.fn = fn, .ctx = ctx, .worker = t, .begin = n * t / n_threads, .end = n * (t + 1) / n_threads};
        if (t > 0 && pthread_create(&th[t], NULL, run_range, &jobs[t]) != 0) {
            run_range(&jobs[t]); /* could not spawn: do it here */
            th[t] = 0;
        }
    }
    run_range(&jobs[0]);
    for (int t = 1; t < n_threads; t++)
        if (th[t]) pthread_join(th[t], NULL);
}

void ql_parallel_items(int n_threads, int64_t n, ql_item_fn fn, void *ctx) {
    if (n_threads > g_cap) n_threads = g_cap;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > n) n_threads = (int)(n > 0 ? n : 1);
    if (n_threads > 256) n_threads = 256;
    atomic_llong next = 0;
    pthread_t th[256];
    job jobs[256];
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = (job){.item_fn = fn, .ctx = ctx, .worker = t, .next = &next, .n = n};
        if (t > 0 && pthread_create(&th[t], NULL, run_items, &jobs[t]) != 0) th[t] = 0;
    }
    run_items(&jobs[0]);
    for (int t = 1; t < n_threads; t++)
        if (th[t]) pthread_join(th[t], NULL);
}
