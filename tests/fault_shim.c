/* fault_shim.c — an LD_PRELOAD library for tests/fault_inject.sh: fails the Nth call of one kind of
 * system call a writer makes, the way a full disk, a failing device or a quota would, so the test can walk
 * N over every call a qlab command makes and check that each failure leaves the previous output intact.
 *
 *   QL_FAULT=KIND:N[:ERRNO]   KIND: write (write/pwrite/writev to a regular file), fsync (fsync, fdatasync),
 *                             rename (rename, renameat, renameat2), mkdir (mkdir, mkdirat, mkdtemp),
 *                             link (linkat: naming an O_TMPFILE); ERRNO: ENOSPC (default), EIO or EDQUOT
 *   QL_FAULT_COUNT=FILE       at exit, append "KIND COUNT" lines: how many calls of each kind the run made
 *
 * Only calls made through the PLT are seen: qlab's output streams flush through write(2) on purpose
 * (base/atomic_file.c uses fopencookie), so every output byte passes here. Test-side only; not linked into
 * qlab. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum { K_WRITE, K_FSYNC, K_RENAME, K_MKDIR, K_LINK, K_COUNT };
static const char *const kind_names[K_COUNT] = {"write", "fsync", "rename", "mkdir", "link"};
static atomic_long calls[K_COUNT];
static int fault_kind = -1, fault_errno = ENOSPC;
static long fault_n;

__attribute__((constructor)) static void shim_init(void) {
    const char *f = getenv("QL_FAULT");
    if (!f || !*f) return;
    char kind[16] = "", err[16] = "";
    long n = 0;
    if (sscanf(f, "%15[a-z]:%ld:%15[A-Z]", kind, &n, err) < 2 || n < 1) {
        fprintf(stderr, "fault_shim: bad QL_FAULT '%s' (KIND:N[:ERRNO])\n", f);
        _exit(99);
    }
    for (int k = 0; k < K_COUNT; k++)
        if (!strcmp(kind, kind_names[k])) fault_kind = k;
    if (fault_kind < 0) {
        fprintf(stderr, "fault_shim: unknown kind '%s'\n", kind);
        _exit(99);
    }
    fault_n = n;
    if (!strcmp(err, "EIO")) fault_errno = EIO;
    else if (!strcmp(err, "EDQUOT")) fault_errno = EDQUOT;
    else if (err[0] && strcmp(err, "ENOSPC")) {
        fprintf(stderr, "fault_shim: unknown errno '%s'\n", err);
        _exit(99);
    }
}

__attribute__((destructor)) static void shim_report(void) {
    const char *path = getenv("QL_FAULT_COUNT");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    for (int k = 0; k < K_COUNT; k++) fprintf(f, "%s %ld\n", kind_names[k], atomic_load(&calls[k]));
    fclose(f);
}

/* Counts the call; true when this one must fail (errno is then set). */
static int should_fail(int kind) {
    long n = atomic_fetch_add(&calls[kind], 1) + 1;
    if (kind == fault_kind && n == fault_n) {
        errno = fault_errno;
        return 1;
    }
    return 0;
}

static int is_regular(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    if (is_regular(fd) && should_fail(K_WRITE)) return -1;
    return real_write(fd, buf, n);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite);
    if (is_regular(fd) && should_fail(K_WRITE)) return -1;
    return real_pwrite(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    REAL(pwrite64);
    if (is_regular(fd) && should_fail(K_WRITE)) return -1;
    return real_pwrite64(fd, buf, n, off);
}
ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev);
    if (is_regular(fd) && should_fail(K_WRITE)) return -1;
    return real_writev(fd, iov, cnt);
}
int fsync(int fd) {
    REAL(fsync);
    if (should_fail(K_FSYNC)) return -1;
    return real_fsync(fd);
}
int fdatasync(int fd) {
    REAL(fdatasync);
    if (should_fail(K_FSYNC)) return -1;
    return real_fdatasync(fd);
}
int rename(const char *a, const char *b) {
    REAL(rename);
    if (should_fail(K_RENAME)) return -1;
    return real_rename(a, b);
}
int renameat(int da, const char *a, int db, const char *b) {
    REAL(renameat);
    if (should_fail(K_RENAME)) return -1;
    return real_renameat(da, a, db, b);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned fl) {
    REAL(renameat2);
    if (should_fail(K_RENAME)) return -1;
    return real_renameat2(da, a, db, b, fl);
}
int mkdir(const char *p, mode_t m) {
    REAL(mkdir);
    if (should_fail(K_MKDIR)) return -1;
    return real_mkdir(p, m);
}
int mkdirat(int d, const char *p, mode_t m) {
    REAL(mkdirat);
    if (should_fail(K_MKDIR)) return -1;
    return real_mkdirat(d, p, m);
}
char *mkdtemp(char *t) {
    REAL(mkdtemp);
    if (should_fail(K_MKDIR)) return NULL;
    return real_mkdtemp(t);
}
int linkat(int da, const char *a, int db, const char *b, int fl) {
    REAL(linkat);
    if (should_fail(K_LINK)) return -1;
    return real_linkat(da, a, db, b, fl);
}
