/* ql_common.h — status codes, the per-thread error message, logging and checked allocation.
 * Library code (core, methods, kernels, sensitivity, presets) never prints or exits: it returns a
 * ql_status and leaves a one-line reason in ql_last_error(). Only cli/ and tui/ talk to the user. */
#ifndef QL_COMMON_H
#define QL_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef enum {
    QL_OK = 0,
    QL_ERR_IO,        /* open/read/write/mmap failed */
    QL_ERR_FORMAT,    /* file is malformed, truncated or hostile */
    QL_ERR_UNSUPPORTED,
    QL_ERR_NOMEM,
    QL_ERR_ARG,       /* caller passed something invalid */
    QL_ERR_CANCELLED,
} ql_status;

const char *ql_status_str(ql_status s);

/* Sets the thread's last error (printf-style) and returns `s`, so callers can write
 * `return ql_fail(QL_ERR_FORMAT, "%s: tensor data past end of file", path);` */
ql_status ql_fail(ql_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ql_last_error(void);

/* Log sink; defaults to stderr. level: 0 error, 1 warn, 2 info, 3 debug. */
typedef void (*ql_log_fn)(int level, const char *msg, void *user);
void ql_log_set(ql_log_fn fn, void *user);
void ql_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation that aborts through ql_abort on exhaustion: used only for sizes the program chose,
 * never for sizes read from a file (those go through checked paths that return QL_ERR_FORMAT). */
void *ql_malloc(size_t n);
void *ql_calloc(size_t n, size_t sz);
void *ql_realloc(void *p, size_t n);
char *ql_strdup(const char *s);
void ql_abort(const char *msg) __attribute__((noreturn));
typedef void (*ql_abort_fn)(const char *msg);
void ql_abort_set(ql_abort_fn fn);

/* Progress and cancellation for long jobs (the CLI draws a bar, the TUI a gauge). */
typedef struct ql_progress {
    void (*fn)(void *user, int64_t done, int64_t total, const char *phase);
    void *user;
    volatile int *cancel; /* non-NULL and non-zero: stop at the next check, return QL_ERR_CANCELLED */
} ql_progress;

static inline void ql_progress_report(const ql_progress *p, int64_t done, int64_t total, const char *phase) {
    if (p && p->fn) p->fn(p->user, done, total, phase);
}
static inline bool ql_progress_cancelled(const ql_progress *p) {
    return p && p->cancel && *p->cancel;
}

double ql_time_s(void); /* monotonic seconds */

/* The memory this process can use, in bytes: the least of physical RAM, the cgroup's limit (v2 memory.max,
 * v1 memory.limit_in_bytes) and the address-space limit (ulimit -v / RLIMIT_AS). `what` (may be NULL) gets
 * which of them it is, for messages ("RAM", "the cgroup limit", "ulimit -v"). Under ulimit -v, what start-up
 * mapped and OpenBLAS's buffers (ql_blas_fit_address_limit) are taken off. */
double ql_mem_limit_bytes(const char **what);

/* OpenBLAS under an address-space limit. Each thread OpenBLAS runs a call on takes a ~128 MiB buffer; when
 * ulimit -v leaves no room for one, OpenBLAS retries the allocation forever and the call never returns.
 * ql_blas_fit_address_limit() (run once at start) caps OpenBLAS's threads to the buffers that fit in half of the
 * address space left after start-up, and the cap is reserved out of ql_mem_limit_bytes()'s "ulimit -v"; it
 * fails (one line in ql_last_error(), naming the limit needed) when not even one buffer fits. No limit: no cap.
 * ql_blas_set_threads() is openblas_set_num_threads() under that cap: every caller sets threads through it. */
ql_status ql_blas_fit_address_limit(void);
void ql_blas_set_threads(int n);
int ql_blas_get_threads(void);

/* Both paths exist and are one file (same device and inode): a symlink or hard link to b counts. Every
 * writer's caller asks this before writing over what it reads. */
bool ql_same_file(const char *a, const char *b);

/* fp16 / bf16 conversions (scalar reference, round-to-nearest-even like ggml). */
float ql_fp16_to_fp32(uint16_t h);
uint16_t ql_fp32_to_fp16(float f);
float ql_bf16_to_fp32(uint16_t h);
uint16_t ql_fp32_to_bf16(float f);

#define QL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define QL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define QL_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
