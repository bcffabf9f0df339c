/* atomic_file.c — temporary file + rename for every writer (see atomic_file.h). */
#include "base/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ql_atomic_file {
    FILE *f;
    int fd;
    char *path, *tmp;
    int err; /* errno of the first failed ql_atomic_write, 0 if none */
};

/* The process umask without changing it: umask() can only be read by setting it, which would race
 * with another thread creating a file, so read /proc first and fall back to the set-and-restore. */
static mode_t current_umask(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[128];
        unsigned int m;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Umask: %o", &m) == 1) {
                fclose(f);
                return (mode_t)m;
            }
        fclose(f);
    }
    mode_t m = umask(022);
    umask(m);
    return m;
}

ql_status ql_atomic_open(const char *path, ql_atomic_file **out) {
    *out = NULL;
    size_t l = strlen(path) + 16;
    char *tmp = ql_malloc(l);
    snprintf(tmp, l, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        ql_status s = ql_fail(QL_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
        free(tmp);
        return s;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(tmp);
        return ql_fail(QL_ERR_IO, "%s: cannot open temporary file: %s", path, strerror(e));
    }
    /* mkstemp makes 0600; outputs are ordinary files, readable as the umask allows */
    if (fchmod(fd, 0644 & ~current_umask()) != 0) {
        int e = errno;
        fclose(f);
        unlink(tmp);
        free(tmp);
        return ql_fail(QL_ERR_IO, "%s: cannot set the mode of the temporary file: %s", path, strerror(e));
    }
    ql_atomic_file *af = ql_calloc(1, sizeof *af);
    af->f = f;
    af->fd = fd;
    af->path = ql_strdup(path);
    af->tmp = tmp;
    *out = af;
    return QL_OK;
}

FILE *ql_atomic_stream(ql_atomic_file *af) { return af->f; }
int ql_atomic_fd(const ql_atomic_file *af) { return af->fd; }
const char *ql_atomic_path(const ql_atomic_file *af) { return af->path; }
const char *ql_atomic_tmp_path(const ql_atomic_file *af) { return af->tmp; }

ql_status ql_atomic_write(ql_atomic_file *af, const void *p, size_t n) {
    if (n == 0) return QL_OK;
    if (fwrite(p, 1, n, af->f) != n) {
        if (!af->err) af->err = errno ? errno : EIO;
        return ql_fail(QL_ERR_IO, "%s: write failed: %s", af->path, strerror(af->err));
    }
    return QL_OK;
}

static void release(ql_atomic_file *af) {
    free(af->path);
    free(af->tmp);
    free(af);
}

void ql_atomic_abort(ql_atomic_file *af) {
    if (!af) return;
    fclose(af->f);
    unlink(af->tmp);
    release(af);
}

/* Makes the rename itself durable. A directory that cannot be opened or synced for reasons other than
 * an I/O error (EACCES, EINVAL on filesystems without directory fsync) is not a failure: the file is
 * already complete and in place. */
static ql_status sync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? ql_malloc((size_t)(slash - path) + 2) : ql_strdup(".");
    if (slash) {
        size_t n = slash == path ? 1 : (size_t)(slash - path); /* "/x" lives in "/" */
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    ql_status s = QL_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        if (fsync(fd) != 0 && errno == EIO)
            s = ql_fail(QL_ERR_IO, "%s: syncing directory %s failed: %s", path, dir, strerror(errno));
        close(fd);
    }
    free(dir);
    return s;
}

ql_status ql_atomic_commit(ql_atomic_file *af) {
    int err = af->err;
    bool ok = err == 0;
    if (fflush(af->f) != 0) {
        ok = false;
        if (!err) err = errno;
    }
    if (ferror(af->f)) ok = false; /* a failed fprintf earlier, whose errno is gone */
    if (ok && fsync(af->fd) != 0) {
        ok = false;
        err = errno;
    }
    if (fclose(af->f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    ql_status s = QL_OK;
    if (!ok)
        s = ql_fail(QL_ERR_IO, "%s: write failed: %s", af->path, strerror(err ? err : EIO));
    else if (rename(af->tmp, af->path) != 0)
        s = ql_fail(QL_ERR_IO, "%s: cannot rename into place: %s", af->path, strerror(errno));
    if (s) unlink(af->tmp);
    else s = sync_dir(af->path);
    release(af);
    return s;
}

ql_status ql_atomic_write_file(const char *path, const void *data, size_t n) {
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) return s;
    if ((s = ql_atomic_write(af, data, n))) {
        ql_atomic_abort(af);
        return s;
    }
    return ql_atomic_commit(af);
}
