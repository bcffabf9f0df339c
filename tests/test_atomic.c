/* test_atomic.c — base/atomic_file with fault injection: a write that runs into RLIMIT_FSIZE (SIGXFSZ
 * ignored, so write() returns EFBIG as on a full disk), abort, a destination in a missing directory, a
 * rename that cannot happen, the file mode under several umasks, a writer killed with SIGKILL, and the
 * sweep of temporaries left by dead writers, and bulk mode (a writer thread, O_DIRECT). In every failure case the existing target keeps its bytes and
 * no temporary file is left in the directory. (tests/fault_inject.sh fails each system call of every
 * qlab writer in turn, through tests/fault_shim.c.) */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/atomic_file.h"

static char dir[64];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ql_atomic_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (unlink(p) != 0) rmdir(p);
        }
    if (d) closedir(d);
    rmdir(dir);
    return 0;
}

/* Entries of the test directory whose name has ".tmp." (the helper's temporaries). */
static int temporaries(void) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    b[*n] = 0;
    fclose(f);
    return b;
}

static void assert_file_is(const char *path, const char *want) {
    size_t n;
    char *b = slurp(path, &n);
    assert_non_null(b);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(b, want, n);
    free(b);
}

/* Runs `fn` with a file-size limit of `limit` bytes; SIGXFSZ is ignored so write() fails with EFBIG. */
typedef void (*limited_fn)(const char *path);
static void with_fsize_limit(rlim_t limit, limited_fn fn, const char *path) {
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = limit;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fn(path);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
}

static void test_commit_writes_and_replaces(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    put(path, "old contents");
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    /* the temporary lives beside the destination, so rename never crosses a filesystem; on a filesystem
     * with O_TMPFILE (tmpfs, ext4, xfs, btrfs) it has no name until the commit */
    if (ql_atomic_tmp_path(af)[0]) {
        assert_int_equal(strncmp(ql_atomic_tmp_path(af), path, strlen(path)), 0);
        assert_int_equal(temporaries(), 1);
    } else
        assert_int_equal(temporaries(), 0);
    fprintf(ql_atomic_stream(af), "hello %d\n", 42);
    assert_int_equal(ql_atomic_write(af, "tail", 4), QL_OK);
    assert_file_is(path, "old contents"); /* nothing visible before the commit */
    assert_int_equal(ql_atomic_commit(af), QL_OK);
    assert_file_is(path, "hello 42\ntail");
    assert_int_equal(temporaries(), 0);

    /* pwrite on the descriptor (the log-probability file writes chunks from worker threads) */
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    assert_int_equal(pwrite(ql_atomic_fd(af), "world", 5, 5), 5);
    assert_int_equal(pwrite(ql_atomic_fd(af), "hello", 5, 0), 5);
    assert_int_equal(ql_atomic_commit(af), QL_OK);
    assert_file_is(path, "helloworld");

    assert_int_equal(ql_atomic_write_file(path, "whole", 5), QL_OK);
    assert_file_is(path, "whole");
    assert_int_equal(temporaries(), 0);
}

static void test_mode_follows_umask(void **state) {
    (void)state;
    const mode_t masks[] = {022, 027, 077, 0};
    const mode_t want[] = {0644, 0640, 0600, 0644};
    char path[128];
    snprintf(path, sizeof path, "%s/mode.bin", dir);
    for (size_t i = 0; i < sizeof masks / sizeof masks[0]; i++) {
        mode_t old = umask(masks[i]);
        ql_status s = ql_atomic_write_file(path, "x", 1);
        umask(old);
        assert_int_equal(s, QL_OK);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, want[i]);
    }
}

static void big_stream_write(const char *path) {
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    /* through fprintf: errors are sticky in ferror and only the commit reports them */
    for (int i = 0; i < 20000; i++) fprintf(ql_atomic_stream(af), "line %d of a file too big for the limit\n", i);
    assert_int_equal(ql_atomic_commit(af), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), path));
    assert_non_null(strstr(ql_last_error(), "write failed"));
}

static void big_checked_write(const char *path) {
    size_t n = 1 << 20;
    char *buf = calloc(n, 1);
    assert_int_equal(ql_atomic_write_file(path, buf, n), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), path));
    /* the same through ql_atomic_write, then a commit that must refuse */
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    assert_int_equal(ql_atomic_write(af, buf, n), QL_ERR_IO);
    assert_int_equal(ql_atomic_commit(af), QL_ERR_IO);
    free(buf);
}

static void small_write_then_flush_fails(const char *path) {
    /* fits the stdio buffer, so the failure shows only at fflush inside the commit */
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    fputs("0123456789abcdef0123456789abcdef", ql_atomic_stream(af));
    assert_int_equal(ql_atomic_commit(af), QL_ERR_IO);
}

static void test_write_failure_keeps_target(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/target.txt", dir);
    put(path, "precious");
    with_fsize_limit(64 * 1024, big_stream_write, path);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), 0);
    with_fsize_limit(64 * 1024, big_checked_write, path);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), 0);
    with_fsize_limit(8, small_write_then_flush_fails, path);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), 0);
    /* and a target that did not exist is not created */
    snprintf(path, sizeof path, "%s/new.txt", dir);
    with_fsize_limit(64 * 1024, big_stream_write, path);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(temporaries(), 0);
}

/* Bulk mode (ql_atomic_set_bulk: 16 MB chunks written by a thread, O_DIRECT where the file system takes it):
 * pieces of odd sizes through ql_atomic_write and fprintf cross two chunk boundaries at unaligned offsets and
 * the file is byte for byte what was written; then the same through the page cache (QLAB_NO_DIRECT_IO); a seek
 * ends bulk mode and lands where asked; a write past RLIMIT_FSIZE fails the commit naming the file and keeps
 * the target; an abort leaves no temporary. */
static unsigned char *bulk_expected;
static size_t bulk_n;

static void bulk_write_pieces(const char *path) {
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    ql_atomic_set_bulk(af);
    size_t off = 0, piece = 1;
    while (off < bulk_n) {
        size_t k = piece < bulk_n - off ? piece : bulk_n - off;
        if (k < 64 && k >= 8) { /* small ones through the stream's own buffer */
            fwrite(bulk_expected + off, 1, k, ql_atomic_stream(af));
        } else {
            if (ql_atomic_write(af, bulk_expected + off, k) != QL_OK) break;
        }
        off += k;
        piece = piece * 7 + 3; /* 1, 10, 73, ... 5.6 MB, 39 MB: odd sizes and offsets */
    }
    assert_int_equal(ql_atomic_commit(af), QL_OK);
}

static void bulk_over_limit(const char *path) {
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    ql_atomic_set_bulk(af);
    ql_status s = QL_OK;
    for (size_t off = 0; off < bulk_n && !s; off += 1 << 20) s = ql_atomic_write(af, bulk_expected + off, 1 << 20);
    if (!s) s = ql_atomic_commit(af);
    else ql_atomic_abort(af);
    assert_int_equal(s, QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), path));
}

static void test_bulk_mode(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/bulk.bin", dir);
    bulk_n = (size_t)37 * 1000 * 1000 + 123; /* two full 16 MB chunks and a partial one */
    bulk_expected = malloc(bulk_n);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < bulk_n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        bulk_expected[i] = (unsigned char)x;
    }
    for (int pass = 0; pass < 2; pass++) {
        if (pass) setenv("QLAB_NO_DIRECT_IO", "1", 1);
        bulk_write_pieces(path);
        size_t n;
        char *b = slurp(path, &n);
        assert_non_null(b);
        assert_int_equal(n, bulk_n);
        assert_memory_equal(b, bulk_expected, bulk_n);
        free(b);
        assert_int_equal(temporaries(), 0);
    }
    unsetenv("QLAB_NO_DIRECT_IO");
    /* a seek ends bulk mode: the staged bytes go out first, then the write lands at the offset */
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    ql_atomic_set_bulk(af);
    assert_int_equal(ql_atomic_write(af, bulk_expected, 20 << 20), QL_OK);
    assert_int_equal(fseek(ql_atomic_stream(af), 5, SEEK_SET), 0);
    assert_int_equal(ql_atomic_write(af, "XY", 2), QL_OK);
    assert_int_equal(ql_atomic_commit(af), QL_OK);
    size_t n;
    unsigned char *b = (unsigned char *)slurp(path, &n);
    assert_int_equal(n, (size_t)20 << 20);
    assert_memory_equal(b, bulk_expected, 5);
    assert_memory_equal(b + 5, "XY", 2);
    assert_memory_equal(b + 7, bulk_expected + 7, (20 << 20) - 7);
    free(b);
    /* the disk "fills" (RLIMIT_FSIZE) under the writer thread: the commit fails, the target stays */
    put(path, "precious");
    with_fsize_limit(4 << 20, bulk_over_limit, path);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), 0);
    /* an abort in bulk mode */
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    ql_atomic_set_bulk(af);
    assert_int_equal(ql_atomic_write(af, bulk_expected, 17 << 20), QL_OK);
    ql_atomic_abort(af);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), 0);
    free(bulk_expected);
}

static void test_abort_keeps_target(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/target.txt", dir);
    put(path, "precious");
    ql_atomic_file *af;
    assert_int_equal(ql_atomic_open(path, &af), QL_OK);
    fputs("half of a new file", ql_atomic_stream(af));
    fflush(ql_atomic_stream(af));
    assert_int_equal(temporaries(), ql_atomic_tmp_path(af)[0] ? 1 : 0);
    ql_atomic_abort(af);
    ql_atomic_abort(NULL);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), 0);
}

static void test_missing_directory(void **state) {
    (void)state;
    char path[160];
    snprintf(path, sizeof path, "%s/no/such/dir/out.gguf", dir);
    ql_atomic_file *af = (ql_atomic_file *)1;
    assert_int_equal(ql_atomic_open(path, &af), QL_ERR_IO);
    assert_null(af);
    assert_non_null(strstr(ql_last_error(), path));
    assert_int_equal(ql_atomic_write_file(path, "x", 1), QL_ERR_IO);
    assert_int_equal(temporaries(), 0);
}

static void test_rename_failure_keeps_target(void **state) {
    (void)state;
    /* the destination is a non-empty directory: rename(2) refuses, after the data was written */
    char path[128], inner[160];
    snprintf(path, sizeof path, "%s/occupied", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(inner, sizeof inner, "%s/keep.txt", path);
    put(inner, "inside");
    assert_int_equal(ql_atomic_write_file(path, "data", 4), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), "rename"));
    assert_file_is(inner, "inside");
    assert_int_equal(temporaries(), 0);
    unlink(inner);
    rmdir(path);
}

/* A writer killed with SIGKILL in the middle of its output: the target keeps its bytes and, with O_TMPFILE,
 * nothing at all is left; a named temporary (no O_TMPFILE) is swept by the next writer of that path. */
static void test_sigkill_mid_write(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/killed.bin", dir);
    put(path, "precious");
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ql_atomic_file *af;
        if (ql_atomic_open(path, &af)) _exit(3);
        for (int i = 0; i < 1000; i++) fputs("partial output that must never be seen\n", ql_atomic_stream(af));
        fflush(ql_atomic_stream(af));
        char named = ql_atomic_tmp_path(af)[0] ? 'n' : 'u';
        if (write(fds[1], &named, 1) != 1) _exit(4);
        pause(); /* killed here, mid-write */
        _exit(5);
    }
    close(fds[1]);
    char named = 0;
    assert_int_equal(read(fds[0], &named, 1), 1);
    close(fds[0]);
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_file_is(path, "precious");
    assert_int_equal(temporaries(), named == 'n' ? 1 : 0);
    assert_int_equal(ql_atomic_write_file(path, "next", 4), QL_OK); /* sweeps a named leftover */
    assert_file_is(path, "next");
    assert_int_equal(temporaries(), 0);
}

/* The sweep removes files and folders "<path>.tmp.<pid>.*" of dead processes only: never a live writer's,
 * never a look-alike without a pid, never another target's. */
static void test_sweep_dead_writers_only(void **state) {
    (void)state;
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char path[128], p[256];
    snprintf(path, sizeof path, "%s/model", dir);
    snprintf(p, sizeof p, "%s.tmp.%ld.abc123", path, (long)dead);
    put(p, "left by a killed writer");
    snprintf(p, sizeof p, "%s.tmp.%ld.dir456", path, (long)dead);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s.tmp.%ld.dir456/shard.safetensors", path, (long)dead);
    put(p, "x");
    snprintf(p, sizeof p, "%s.tmp.%ld.live99", path, (long)getppid());
    put(p, "a live writer's");
    snprintf(p, sizeof p, "%s.tmp.XYZ", path);
    put(p, "not ours");
    snprintf(p, sizeof p, "%s/other.tmp.%ld.abc", dir, (long)dead);
    put(p, "another target's");
    assert_int_equal(ql_atomic_sweep(path), 2);
    assert_int_equal(temporaries(), 3);
    snprintf(p, sizeof p, "%s.tmp.%ld.live99", path, (long)getppid());
    assert_file_is(p, "a live writer's");
    assert_int_equal(ql_atomic_sweep(path), 0);
}

/* --force: a non-empty folder is refused by the check unless replace is set; the replacing commit swaps the
 * whole new folder in (the old files are gone, the new ones there) and leaves no temporary; a plain commit
 * onto the same non-empty folder is refused and keeps it. */
static void test_dir_replace(void **state) {
    (void)state;
    char out[128], p[256];
    snprintf(out, sizeof out, "%s/model", dir);
    assert_int_equal(ql_atomic_dir_check(out, false), QL_OK); /* absent */
    assert_int_equal(mkdir(out, 0755), 0);
    assert_int_equal(ql_atomic_dir_check(out, false), QL_OK); /* empty */
    snprintf(p, sizeof p, "%s/old.safetensors", out);
    put(p, "old");
    assert_int_equal(ql_atomic_dir_check(out, false), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), "--force"));
    assert_int_equal(ql_atomic_dir_check(out, true), QL_OK);
    char *tmp;
    assert_int_equal(ql_atomic_dir_open(out, &tmp), QL_OK);
    snprintf(p, sizeof p, "%s/new.safetensors", tmp);
    put(p, "new");
    assert_int_equal(ql_atomic_dir_commit(out, tmp), QL_ERR_IO); /* refused, old kept, temporary removed */
    snprintf(p, sizeof p, "%s/old.safetensors", out);
    assert_file_is(p, "old");
    assert_int_equal(temporaries(), 0);
    assert_int_equal(ql_atomic_dir_open(out, &tmp), QL_OK);
    snprintf(p, sizeof p, "%s/new.safetensors", tmp);
    put(p, "new");
    assert_int_equal(ql_atomic_dir_commit_replace(out, tmp), QL_OK);
    snprintf(p, sizeof p, "%s/new.safetensors", out);
    assert_file_is(p, "new");
    snprintf(p, sizeof p, "%s/old.safetensors", out);
    assert_int_equal(access(p, F_OK), -1);
    assert_int_equal(temporaries(), 0);
    snprintf(p, sizeof p, "%s/new.safetensors", out);
    unlink(p);
    rmdir(out);
    put(out, "a file"); /* a file at OUT is refused even with --force */
    assert_int_equal(ql_atomic_dir_check(out, true), QL_ERR_IO);
    assert_non_null(strstr(ql_last_error(), "not a folder"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_writes_and_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_follows_umask, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure_keeps_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_keeps_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bulk_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rename_failure_keeps_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigkill_mid_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_dead_writers_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_replace, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
