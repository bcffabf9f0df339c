/* ql_common.c — error slot, logging, checked allocation, time, fp16/bf16 conversion, the memory limit and
 * OpenBLAS under an address-space limit. */
#include "base/ql_common.h"
#include "base/parallel.h"

#include <cblas.h>

#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

static _Thread_local char g_err[1024];

const char *ql_status_str(ql_status s) {
    switch (s) {
    case QL_OK: return "ok";
    case QL_ERR_IO: return "I/O error";
    case QL_ERR_FORMAT: return "bad format";
    case QL_ERR_UNSUPPORTED: return "unsupported";
    case QL_ERR_NOMEM: return "out of memory";
    case QL_ERR_ARG: return "invalid argument";
    case QL_ERR_CANCELLED: return "cancelled";
    }
    return "unknown error";
}

ql_status ql_fail(ql_status s, const char *fmt, ...) {
    /* format into a local first: callers often pass ql_last_error() itself as an argument */
    char buf[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(g_err, buf, sizeof buf);
    return s;
}

const char *ql_last_error(void) { return g_err[0] ? g_err : "no error recorded"; }

static void log_stderr(int level, const char *msg, void *user) {
    (void)user;
    static const char *tag[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "qlab: %s: %s\n", tag[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}
static ql_log_fn g_log = log_stderr;
static void *g_log_user;
static int g_log_level = 2;

void ql_log_set(ql_log_fn fn, void *user) { g_log = fn ? fn : log_stderr; g_log_user = user; }

void ql_log(int level, const char *fmt, ...) {
    if (level > g_log_level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log(level, buf, g_log_user);
}

static ql_abort_fn g_abort_hook;
void ql_abort_set(ql_abort_fn fn) { g_abort_hook = fn; }
void ql_abort(const char *msg) {
    if (g_abort_hook) g_abort_hook(msg);
    fprintf(stderr, "qlab: fatal: %s\n", msg);
    abort();
}

void *ql_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) ql_abort("out of memory");
    return p;
}
void *ql_calloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) ql_abort("out of memory");
    return p;
}
void *ql_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) ql_abort("out of memory");
    return q;
}
char *ql_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = ql_malloc(n);
    memcpy(d, s, n);
    return d;
}

double ql_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float ql_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: value = man * 2^-24, exact in float */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t ql_fp32_to_fp16(float f) {
    /* round-to-nearest-even, as the F16C instruction and ggml's fallback do */
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow (incl. rounding up) -> inf */
    if (ax < 0x38800000u) {
        /* subnormal half or zero: scale into integer units of 2^-24 with RNE */
        float a = bits_f32(ax);
        float scaled = a * 16777216.0f; /* a / 2^-24, exact (power of two) */
        uint32_t m = (uint32_t)scaled;
        float rem = scaled - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t e = (ax >> 23) - 112, man = ax & 0x7fffff;
    uint32_t h = (e << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float ql_bf16_to_fp32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ql_fp32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN, as ggml */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

bool ql_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* A number from the first line of a file ("max" and unreadable files give -1). */
static double read_limit_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[64];
    double v = -1;
    if (fgets(line, sizeof line, f) && line[0] >= '0' && line[0] <= '9') v = strtod(line, NULL);
    fclose(f);
    return v;
}

/* OpenBLAS's own thread control (not in cblas.h). */
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);

/* OpenBLAS's per-thread work buffer: BUFFER_SIZE (128 MiB on x86-64) plus its page of bookkeeping, as its
 * allocator asks malloc for it. */
#define QL_BLAS_BUFFER_BYTES (128.0 * 1048576.0 + 8192.0)
static int g_blas_cap = 1 << 20;   /* threads OpenBLAS may use (no address-space limit: no cap) */
static double g_blas_reserved = 0; /* bytes of the address-space limit set aside for OpenBLAS's buffers */

static double address_space_used(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return (double)pages * (double)sysconf(_SC_PAGESIZE);
}

ql_status ql_blas_fit_address_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return QL_OK;
    const double used = address_space_used(), left = (double)rl.rlim_cur - used;
    const int want = openblas_get_num_threads();
    /* what start-up used may or may not already hold the buffers OpenBLAS's worker threads take as the library
     * loads (they race with main: 111 or 239 MiB measured for the same command), so the margin left for qlab's
     * own work beside the buffers is a modest 64 MiB; commands check their working memory against what remains
     * (ql_mem_limit_bytes) */
    const double margin = 64.0 * 1048576.0;
    int fit = left > margin ? (int)((left - margin) / QL_BLAS_BUFFER_BYTES) : 0;
    if (fit < 1) {
        const double need = used + margin + QL_BLAS_BUFFER_BYTES;
        return ql_fail(QL_ERR_NOMEM,
                       "ulimit -v allows %.0f MiB of address space and start-up already uses %.0f MiB; the linear "
                       "algebra needs %.0f MiB more per thread: raise the limit to at least %.0f MiB (ulimit -v %.0f)",
                       (double)rl.rlim_cur / 1048576.0, used / 1048576.0, QL_BLAS_BUFFER_BYTES / 1048576.0,
                       need / 1048576.0, ceil(need / 1024.0));
    }
    /* Under a tight limit qlab runs one thread and takes OpenBLAS's one buffer now, while there is room: OpenBLAS
     * keeps it and reuses it for every later call, so the limit can only ever be hit by qlab's own allocations,
     * which fail with a message. With room for several buffers, threads are capped to the buffers that fit. */
    if (left < 1024.0 * 1048576.0) fit = 1;
    g_blas_cap = fit < want ? fit : want;
    if (fit < 256) ql_parallel_cap(fit); /* each of qlab's workers may call BLAS and take a buffer of its own */
    g_blas_reserved = used + g_blas_cap * QL_BLAS_BUFFER_BYTES;
    if (g_blas_cap < want) openblas_set_num_threads(g_blas_cap);
    if (fit == 1) {
        /* large enough for OpenBLAS's blocked path (small products skip the buffer) */
        static float a[160 * 160], c[160 * 160];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 160, 160, 160, 1.0f, a, 160, a, 160, 0.0f, c, 160);
    }
    return QL_OK;
}

void ql_blas_set_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n > g_blas_cap ? g_blas_cap : n); }
int ql_blas_get_threads(void) { return openblas_get_num_threads(); }

double ql_mem_limit_bytes(const char **what) {
    double lim = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    const char *w = "RAM";
    const char *cg[] = {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (int i = 0; i < 2; i++) {
        double v = read_limit_file(cg[i]);
        if (v > 0 && v < lim) { /* v1 reports "no limit" as a huge number, which this skips */
            lim = v;
            w = "the cgroup limit";
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (double)rl.rlim_cur - g_blas_reserved < lim) {
        lim = (double)rl.rlim_cur - g_blas_reserved;
        w = "ulimit -v";
    }
    if (what) *what = w;
    return lim;
}
