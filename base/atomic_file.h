/* atomic_file.h — the one way qlab writes an output file: a temporary file in the destination's own
 * directory (so the final rename cannot cross a filesystem), checked fdopen, mode set only after the
 * descriptor is known good, then fflush + fsync, rename over the target and fsync of the directory.
 * Any failure, and ql_atomic_abort, removes the temporary: a reader sees either the old target,
 * untouched, or the complete new file, never a half-written one.
 *
 *     ql_atomic_file *af;
 *     if ((s = ql_atomic_open(path, &af))) return s;
 *     fprintf(ql_atomic_stream(af), ...);          // or ql_atomic_write / pwrite on ql_atomic_fd
 *     return ql_atomic_commit(af);                  // consumes af whatever happens
 *
 * Stream writes are buffered; a failed fprintf/fwrite is sticky in ferror() and makes the commit fail,
 * so callers need not check each call. Callers that pwrite on the descriptor must not mix that with
 * unflushed stream writes. Not shared between threads except for pwrite on the descriptor. */
#ifndef QL_ATOMIC_FILE_H
#define QL_ATOMIC_FILE_H

#include "base/ql_common.h"

#include <stdbool.h>

#include <stdio.h>

typedef struct ql_atomic_file ql_atomic_file;

/* Creates the temporary beside `path` (an unnamed O_TMPFILE where the filesystem has it, else
 * "<path>.tmp.<pid>.XXXXXX"), mode 0644 minus the umask, after sweeping away temporaries of `path` left
 * by writers that were killed. On failure *out is NULL and the error names `path`. */
ql_status ql_atomic_open(const char *path, ql_atomic_file **out);
FILE *ql_atomic_stream(ql_atomic_file *af);
int ql_atomic_fd(const ql_atomic_file *af);
const char *ql_atomic_path(const ql_atomic_file *af);     /* the destination */
const char *ql_atomic_tmp_path(const ql_atomic_file *af); /* the temporary's name; "" while unnamed */

/* "<path>.tmp.<pid>.XXXXXX": the name template of a temporary file or folder for path (malloc'ed). */
char *ql_atomic_tmp_name(const char *path);
/* Removes temporaries of path ("<path>.tmp.<pid>.*", files or folders) whose process is gone, e.g. after
 * a SIGKILL; returns how many. A live writer's temporary is never touched. */
int ql_atomic_sweep(const char *path);

/* The same for a folder written as a whole (a Hugging Face model folder): ql_atomic_dir_open sweeps, then
 * creates "<path>.tmp.<pid>.XXXXXX" (mode 0755 minus the umask) and returns its name in *tmpdir; write
 * everything into it, then ql_atomic_dir_commit renames it to path (refused, naming path, when path exists
 * and is not empty) or ql_atomic_dir_abort removes it. Both free *tmpdir. A trailing '/' on path is fine. */
ql_status ql_atomic_dir_open(const char *path, char **tmpdir);
ql_status ql_atomic_dir_commit(const char *path, char *tmpdir);
void ql_atomic_dir_abort(char *tmpdir);
/* Before any work: QL_OK when path is absent or an empty folder, or when replace is set and path is a folder;
 * otherwise a one-line refusal naming path (a non-empty folder without replace: "--force replaces it"). */
ql_status ql_atomic_dir_check(const char *path, bool replace);
/* Like ql_atomic_dir_commit, but an existing folder at path is replaced: the two are swapped in one
 * renameat2(RENAME_EXCHANGE) — a reader sees the old folder or the new one, never a mix or neither — and
 * the old one is then removed. Where the file system cannot exchange, the old folder is first renamed
 * aside (path is absent for that instant), and put back if the second rename fails. */
ql_status ql_atomic_dir_commit_replace(const char *path, char *tmpdir);
/* rm -r: a file, or a folder and everything below it (symbolic links are removed, not followed). */
void ql_remove_tree(const char *path);

/* For multi-GB sequential outputs (model writers), right after open: the stream's bytes are staged in two
 * 16 MB page-aligned chunks and a writer thread writes each full one while the caller fills the other, with
 * O_DIRECT where the file system takes it (not through the page cache: no copy there, and the disk works
 * while the caller computes). Errors surface on a later write or at the commit. A seek, the commit or the
 * abort ends it. Does nothing (the stream stays buffered as before) if the thread or buffers cannot be had;
 * QLAB_NO_DIRECT_IO=1 keeps the thread but writes through the page cache. */
void ql_atomic_set_bulk(ql_atomic_file *af);

/* Writes n bytes through the stream; on failure records the error (the commit will fail too). */
ql_status ql_atomic_write(ql_atomic_file *af, const void *p, size_t n);

/* Flush, fsync, close, rename over the destination, fsync the directory. On any failure the temporary
 * is removed and the destination is left as it was. Always frees af. */
ql_status ql_atomic_commit(ql_atomic_file *af);
/* Removes the temporary and frees af; NULL is a no-op. The destination is not touched. */
void ql_atomic_abort(ql_atomic_file *af);

/* The whole file at once: open, write `n` bytes, commit. */
ql_status ql_atomic_write_file(const char *path, const void *data, size_t n);

#endif
