/* atomic_file.c — temporary file + rename for every writer (see atomic_file.h).
 *
 * The temporary is an O_TMPFILE (no name at all) where the filesystem supports it: a process killed with
 * SIGKILL mid-write leaves nothing behind, since the kernel frees a nameless file with its last
 * descriptor. At commit it gets a name ("<path>.tmp.<pid>.XXXXXX", linkat through /proc/self/fd) and is
 * renamed over the target at once, so the only window for a leftover is between those two calls.
 * Filesystems without O_TMPFILE get a named temporary from the start; either way ql_atomic_sweep (called
 * on every open) removes temporaries of the same target whose writer process no longer exists.
 *
 * The stream writes through write(2) (fopencookie), not glibc's internal write: every byte of every
 * output passes a call that a fault-injection shim (tests/fault_shim.c, LD_PRELOAD) can fail.
 *
 * Bulk mode (ql_atomic_set_bulk, for the multi-GB model writers): the stream's bytes are staged in two
 * page-aligned chunks, and a writer thread writes each full chunk while the caller fills the other, with
 * O_DIRECT where the file system takes it. Measured on the 2.5 GB export (docs/results.md): copying into
 * the page cache (copy_folio_from_iter_atomic) was 35-45% of all CPU time of an RTN export, and the
 * final fsync then waited for the disk with nothing else running; direct chunks skip the copy, and the
 * disk works while the next tensor is quantized. */
#include "base/atomic_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bulk mode's staging (see the header comment). One chunk is filled by the stream's caller while the
 * writer thread writes the other; `pending` hands a full chunk over. */
#define BULK_CHUNK ((size_t)16 << 20) /* a multiple of any block size O_DIRECT asks for */
#define BULK_ALIGN 4096

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *chunk[2];
    int cur;          /* the chunk the caller fills */
    size_t fill;      /* bytes in chunk[cur] */
    bool pending;     /* chunk[!cur] (BULK_CHUNK bytes) waits for or is in the writer */
    bool stop;
    bool direct;      /* the descriptor has O_DIRECT */
    int err;          /* errno of the writer's first failure, 0 if none */
    int fd;
} bulk_state;

struct ql_atomic_file {
    FILE *f;
    int fd;
    char *path, *tmp; /* tmp: the temporary's name; "" while it is an unnamed O_TMPFILE */
    int err; /* errno of the first failed ql_atomic_write, 0 if none */
    bulk_state *bulk; /* NULL unless ql_atomic_set_bulk */
};

/* ---- the stream: buffered by stdio, flushed through write(2) and lseek(2) on af->fd ---- */

/* write(2) until n bytes are out or it fails; the bytes written. A direct write the file system refuses
 * (EINVAL: alignment it does not take) is repeated through the page cache, with O_DIRECT dropped. */
static size_t write_all(int fd, const void *p, size_t n, bool *direct) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)p + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EINVAL && direct && *direct) {
                int fl = fcntl(fd, F_GETFL);
                *direct = false;
                if (fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) continue;
                errno = EINVAL;
            }
            break;
        }
        if (w == 0) break;
        done += (size_t)w;
        if (direct && *direct && done < n) { /* a short direct write leaves an unaligned offset */
            int fl = fcntl(fd, F_GETFL);
            *direct = false;
            if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_DIRECT);
        }
    }
    return done;
}

static void *bulk_writer(void *arg) {
    bulk_state *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->pending && !b->stop) pthread_cond_wait(&b->cv, &b->mu);
        if (!b->pending) break;
        const uint8_t *p = b->chunk[!b->cur];
        bool direct = b->direct;
        bool skip = b->err != 0; /* after a failure nothing more is written: the commit fails anyway */
        pthread_mutex_unlock(&b->mu);
        int e = 0;
        if (!skip && write_all(b->fd, p, BULK_CHUNK, &direct) != BULK_CHUNK) e = errno ? errno : EIO;
        pthread_mutex_lock(&b->mu);
        b->direct = direct;
        if (e && !b->err) b->err = e;
        b->pending = false;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* Stages n bytes; a full chunk goes to the writer (waiting while it still writes the previous one). */
static size_t bulk_write(bulk_state *b, const char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        size_t k = QL_MIN(n - done, BULK_CHUNK - b->fill);
        memcpy(b->chunk[b->cur] + b->fill, buf + done, k);
        b->fill += k;
        done += k;
        if (b->fill < BULK_CHUNK) break;
        pthread_mutex_lock(&b->mu);
        while (b->pending) pthread_cond_wait(&b->cv, &b->mu);
        int e = b->err;
        if (!e) {
            b->pending = true;
            b->cur = !b->cur;
            b->fill = 0;
            pthread_cond_broadcast(&b->cv);
        }
        pthread_mutex_unlock(&b->mu);
        if (e) {
            errno = e;
            return done - k; /* short: the stream is in error, and ql_atomic_write reports errno */
        }
    }
    return done;
}

/* Waits for the writer, ends it, writes the partial last chunk through the page cache (its length need
 * not be a whole block) and frees the staging: the descriptor is an ordinary one again. The writer's or
 * this write's errno, 0 when every byte is out. */
static int bulk_finish(ql_atomic_file *af) {
    bulk_state *b = af->bulk;
    if (!b) return 0;
    pthread_mutex_lock(&b->mu);
    while (b->pending) pthread_cond_wait(&b->cv, &b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    int e = b->err;
    if (b->direct) {
        int fl = fcntl(b->fd, F_GETFL);
        if (fl >= 0) fcntl(b->fd, F_SETFL, fl & ~O_DIRECT);
    }
    if (!e && b->fill && write_all(b->fd, b->chunk[b->cur], b->fill, NULL) != b->fill) e = errno ? errno : EIO;
    free(b->chunk[0]);
    free(b->chunk[1]);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
    af->bulk = NULL;
    return e;
}

/* Returns the bytes written, never -1: glibc marks the stream in error on any short count, but it
 * subtracts the returned value from what is left to write, and -1 there overruns its buffer on the next
 * large fwrite (found by tests/fault_inject.sh: a segfault after an injected EIO). */
static ssize_t cookie_write(void *c, const char *buf, size_t n) {
    ql_atomic_file *af = c;
    if (af->bulk) return (ssize_t)bulk_write(af->bulk, buf, n);
    return (ssize_t)write_all(af->fd, buf, n, NULL);
}

/* A seek ends bulk mode first: the staged bytes go out, and later writes land where the caller asks. */
static int cookie_seek(void *c, off64_t *off, int whence) {
    ql_atomic_file *af = c;
    int e = bulk_finish(af);
    if (e) {
        if (!af->err) af->err = e;
        errno = e;
        return -1;
    }
    off64_t r = lseek(af->fd, *off, whence);
    if (r < 0) return -1;
    *off = r;
    return 0;
}

static int cookie_close(void *c) {
    ql_atomic_file *af = c;
    int e = bulk_finish(af);
    if (close(af->fd) != 0) return -1;
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

/* ---- temporaries: names, and the sweep of those whose writer is gone ---- */

/* "<path>.tmp.<pid>.XXXXXX" (the template for mkstemp/mkdtemp). */
char *ql_atomic_tmp_name(const char *path) {
    size_t l = strlen(path) + 48;
    char *t = ql_malloc(l);
    snprintf(t, l, "%s.tmp.%ld.XXXXXX", path, (long)getpid());
    return t;
}

void ql_remove_tree(const char *p) {
    struct stat st;
    if (lstat(p, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(p);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                size_t l = strlen(p) + strlen(e->d_name) + 2;
                char *c = ql_malloc(l);
                snprintf(c, l, "%s/%s", p, e->d_name);
                ql_remove_tree(c);
                free(c);
            }
            closedir(d);
        }
        rmdir(p);
    } else
        unlink(p);
}

int ql_atomic_sweep(const char *path) {
    char *copy = ql_strdup(path);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = 0; /* "out/" is the folder "out" */
    const char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy;
    char *dir = slash ? ql_strdup(copy) : ql_strdup(".");
    if (slash) dir[slash == copy ? 1 : slash - copy] = 0;
    int removed = 0;
    DIR *d = opendir(dir);
    if (d) {
        size_t bl = strlen(base);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp.", 5)) continue;
            char *end;
            long pid = strtol(e->d_name + bl + 5, &end, 10);
            if (end == e->d_name + bl + 5 || *end != '.' || pid <= 0) continue; /* not one of ours */
            if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive */
            size_t l = strlen(dir) + strlen(e->d_name) + 2;
            char *p = ql_malloc(l);
            snprintf(p, l, "%s/%s", dir, e->d_name);
            ql_remove_tree(p);
            free(p);
            removed++;
        }
        closedir(d);
    }
    free(dir);
    free(copy);
    return removed;
}

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

/* The directory part of path ("." when there is none). */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return ql_strdup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path); /* "/x" lives in "/" */
    char *d = ql_malloc(n + 1);
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

ql_status ql_atomic_open(const char *path, ql_atomic_file **out) {
    *out = NULL;
    ql_atomic_sweep(path);
    const mode_t mode = 0644 & ~current_umask();
    char *tmp = NULL;
    char *dir = dir_of(path);
    int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    int e = errno;
    free(dir);
    if (fd >= 0) tmp = ql_strdup("");
    else if (e == ENOENT || e == ENOTDIR || e == EACCES || e == EROFS || e == ENOSPC || e == EDQUOT || e == EIO) {
        return ql_fail(QL_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(e));
    } else { /* no O_TMPFILE here (EOPNOTSUPP, EISDIR, EINVAL): a named temporary */
        tmp = ql_atomic_tmp_name(path);
        fd = mkstemp(tmp);
        if (fd < 0) {
            ql_status s = ql_fail(QL_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
            free(tmp);
            return s;
        }
        /* mkstemp makes 0600; outputs are ordinary files, readable as the umask allows */
        if (fchmod(fd, mode) != 0) {
            int e2 = errno;
            close(fd);
            unlink(tmp);
            free(tmp);
            return ql_fail(QL_ERR_IO, "%s: cannot set the mode of the temporary file: %s", path, strerror(e2));
        }
    }
    ql_atomic_file *af = ql_calloc(1, sizeof *af);
    af->fd = fd;
    cookie_io_functions_t io = {.read = NULL, .write = cookie_write, .seek = cookie_seek, .close = cookie_close};
    af->f = fopencookie(af, "wb", io);
    if (!af->f) {
        int e2 = errno;
        close(fd);
        if (tmp[0]) unlink(tmp);
        free(tmp);
        free(af);
        return ql_fail(QL_ERR_IO, "%s: cannot open temporary file: %s", path, strerror(e2));
    }
    af->path = ql_strdup(path);
    af->tmp = tmp;
    *out = af;
    return QL_OK;
}

void ql_atomic_set_bulk(ql_atomic_file *af) {
    if (af->bulk || fflush(af->f) != 0) return;
    off_t pos = lseek(af->fd, 0, SEEK_CUR);
    if (pos < 0) return;
    bulk_state *b = ql_calloc(1, sizeof *b);
    b->fd = af->fd;
    if (posix_memalign((void **)&b->chunk[0], BULK_ALIGN, BULK_CHUNK) ||
        posix_memalign((void **)&b->chunk[1], BULK_ALIGN, BULK_CHUNK)) {
        free(b->chunk[0]);
        free(b);
        return; /* the stream stays as it was */
    }
    int fl = fcntl(af->fd, F_GETFL);
    /* direct only from an aligned offset; a file system without O_DIRECT (EINVAL) keeps the page cache */
    b->direct = pos % BULK_ALIGN == 0 && !getenv("QLAB_NO_DIRECT_IO") && fl >= 0 &&
                fcntl(af->fd, F_SETFL, fl | O_DIRECT) == 0;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    /* the writer takes no signals: Ctrl-C reaches the threads that poll the cancel flag */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&b->thread, NULL, bulk_writer, b);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        if (b->direct) fcntl(af->fd, F_SETFL, fl);
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        free(b->chunk[0]);
        free(b->chunk[1]);
        free(b);
        return;
    }
    af->bulk = b;
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
    if (af->tmp[0]) unlink(af->tmp);
    release(af);
}

/* Makes the rename itself durable. A directory that cannot be opened or synced for reasons other than
 * an I/O error (EACCES, EINVAL on filesystems without directory fsync) is not a failure: the file is
 * already complete and in place. */
static ql_status sync_dir(const char *path) {
    char *dir = dir_of(path);
    ql_status s = QL_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        /* after the rename the new file is complete and in place: a failed directory sync only means the
         * rename may not survive a power loss, so it is a warning, and the caller's output stands */
        if (fsync(fd) != 0 && errno == EIO)
            ql_log(1, "%s: warning: syncing directory %s failed (%s): the file is complete, but may not survive a "
                      "power loss", path, dir, strerror(errno));
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
    int be = bulk_finish(af); /* every staged byte out before the fsync */
    if (be) {
        ok = false;
        if (!err) err = be;
    }
    if (ferror(af->f)) ok = false; /* a failed fprintf earlier, whose errno is gone */
    if (ok && fsync(af->fd) != 0) {
        ok = false;
        err = errno;
    }
    ql_status s = QL_OK;
    if (ok && !af->tmp[0]) { /* name the O_TMPFILE now, right before the rename */
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", af->fd);
        int lerr = EEXIST;
        for (int attempt = 0; attempt < 16 && lerr == EEXIST; attempt++) {
            free(af->tmp);
            af->tmp = ql_atomic_tmp_name(af->path);
            int tfd = mkstemp(af->tmp); /* a unique name: take it, then free it for linkat */
            if (tfd < 0) {
                lerr = errno;
                break;
            }
            close(tfd);
            unlink(af->tmp);
            lerr = linkat(AT_FDCWD, proc, AT_FDCWD, af->tmp, AT_SYMLINK_FOLLOW) == 0 ? 0 : errno;
        }
        if (lerr) {
            ok = false;
            err = lerr;
            free(af->tmp);
            af->tmp = ql_strdup("");
        }
    }
    if (fclose(af->f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (!ok)
        s = ql_fail(QL_ERR_IO, "%s: write failed: %s", af->path, strerror(err ? err : EIO));
    else if (rename(af->tmp, af->path) != 0)
        s = ql_fail(QL_ERR_IO, "%s: cannot rename into place: %s", af->path, strerror(errno));
    if (s) {
        if (af->tmp[0]) unlink(af->tmp);
    } else
        s = sync_dir(af->path);
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

/* ---- whole folders ---- */

static char *strip_slashes(const char *path) {
    char *c = ql_strdup(path);
    size_t n = strlen(c);
    while (n > 1 && c[n - 1] == '/') c[--n] = 0;
    return c;
}

ql_status ql_atomic_dir_open(const char *path, char **tmpdir) {
    *tmpdir = NULL;
    char *p = strip_slashes(path);
    ql_atomic_sweep(p);
    char *t = ql_atomic_tmp_name(p);
    free(p);
    if (!mkdtemp(t)) {
        ql_status s = ql_fail(QL_ERR_IO, "%s: cannot create a temporary folder beside it: %s", path, strerror(errno));
        free(t);
        return s;
    }
    chmod(t, 0755 & ~current_umask()); /* mkdtemp makes it 0700; a model folder is as readable as any output */
    *tmpdir = t;
    return QL_OK;
}

ql_status ql_atomic_dir_commit(const char *path, char *tmpdir) {
    char *p = strip_slashes(path);
    ql_status s = QL_OK;
    if (rename(tmpdir, p) != 0)
        s = ql_fail(QL_ERR_IO, "%s: cannot move the finished folder into place: %s", path,
                    errno == ENOTEMPTY || errno == EEXIST ? "it exists and is not empty" : strerror(errno));
    if (s) ql_remove_tree(tmpdir);
    else {
        char *parent = dir_of(p);
        int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd); /* durability only: the folder is complete and in place either way */
            close(fd);
        }
        free(parent);
    }
    free(p);
    free(tmpdir);
    return s;
}

static bool dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return false;
    const struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
    closedir(d);
    return empty;
}

ql_status ql_atomic_dir_check(const char *path, bool replace) {
    struct stat st;
    if (stat(path, &st) != 0) return QL_OK; /* absent: created at commit */
    if (!S_ISDIR(st.st_mode)) return ql_fail(QL_ERR_IO, "%s: exists and is not a folder; choose another output", path);
    if (replace || dir_is_empty(path)) return QL_OK;
    return ql_fail(QL_ERR_IO, "%s: exists and is not an empty folder; remove it, choose another output, or --force to "
                              "replace it", path);
}

ql_status ql_atomic_dir_commit_replace(const char *path, char *tmpdir) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode) || dir_is_empty(path)) return ql_atomic_dir_commit(path, tmpdir);
    char *p = strip_slashes(path);
    ql_status s = QL_OK;
    if (renameat2(AT_FDCWD, tmpdir, AT_FDCWD, p, RENAME_EXCHANGE) == 0) {
        ql_remove_tree(tmpdir); /* it now holds the old folder */
    } else if (errno == EINVAL || errno == ENOSYS) {
        /* no exchange on this file system: the old folder goes aside, the new one in, the old one away */
        char *aside = ql_atomic_tmp_name(p);
        if (!mkdtemp(aside) || rename(p, aside) != 0) {
            s = ql_fail(QL_ERR_IO, "%s: cannot move the old folder aside: %s", path, strerror(errno));
            rmdir(aside);
        } else if (rename(tmpdir, p) != 0) {
            s = ql_fail(QL_ERR_IO, "%s: cannot move the finished folder into place: %s", path, strerror(errno));
            if (rename(aside, p) != 0) ql_log(1, "%s: the old folder is left at %s", path, aside);
        } else ql_remove_tree(aside);
        free(aside);
        if (s) ql_remove_tree(tmpdir);
    } else {
        s = ql_fail(QL_ERR_IO, "%s: cannot replace the folder: %s", path, strerror(errno));
        ql_remove_tree(tmpdir);
    }
    free(p);
    free(tmpdir);
    return s;
}

void ql_atomic_dir_abort(char *tmpdir) {
    if (!tmpdir) return;
    ql_remove_tree(tmpdir);
    free(tmpdir);
}
