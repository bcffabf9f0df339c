/* calib.c — calibration sets: spec parsing, streaming readers (file, folder, libarchive archive) that
 * cut text into documents and tokenize them one at a time, and deterministic sampling of windows.
 * Only token ids are kept (one stream per source); text is held one line/paragraph at a time.
 * Returned sets belong to the caller (ql_calib_free). See calib.h for the grammar and the rules. */
#include "pipeline/calib.h"
#include "core/infer.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define PIECE_BYTES ((size_t)1 << 20) /* documents longer than this are tokenized in pieces */
#define CHUNK_BYTES ((size_t)64 << 10)
#define SNIFF_BYTES 4096              /* a NUL in the first SNIFF_BYTES marks a binary file */
#define MAX_DEPTH 64                  /* folder recursion */
#define MAX_SET_TOKENS ((int64_t)1 << 30)

/* ---------------------------------------------------------------- PRNG: splitmix64 + xoshiro256** */

typedef struct { uint64_t s[4]; } rng;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng *r) {
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

/* Uniform in [0, n), n > 0, without modulo bias. */
static uint64_t rng_below(rng *r, uint64_t n) {
    uint64_t lim = -n % n; /* 2^64 mod n */
    for (;;) {
        uint64_t x = rng_next(r);
        if (x >= lim) return x % n;
    }
}

/* ---------------------------------------------------------------- spec parsing */

enum { KIND_AUTO = 0, KIND_TEXT, KIND_JSONL };

typedef struct {
    char *path, *field;
    int kind;
    double weight;
} src_spec;

/* Splits `s` at unescaped `sep` characters; pieces keep their escapes. */
static char **split_unescaped(const char *s, char sep, int *n) {
    int cap = 4, k = 0;
    char **v = ql_malloc(sizeof(char *) * (size_t)cap);
    const char *start = s;
    for (const char *p = s;; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p == sep || !*p) {
            if (k == cap) v = ql_realloc(v, sizeof(char *) * (size_t)(cap *= 2));
            size_t len = (size_t)(p - start);
            v[k] = ql_malloc(len + 1);
            memcpy(v[k], start, len);
            v[k][len] = 0;
            k++;
            if (!*p) break;
            start = p + 1;
        }
    }
    *n = k;
    return v;
}

static char *unescape(const char *s, size_t len) {
    char *o = ql_malloc(len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' && i + 1 < len) i++;
        o[k++] = s[i];
    }
    o[k] = 0;
    return o;
}

/* Position of the first unescaped ':' followed by a known option key, or len. */
static size_t options_start(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\') {
            i++;
            continue;
        }
        if (s[i] == ':' && (!strncmp(s + i + 1, "field=", 6) || !strncmp(s + i + 1, "type=", 5))) return i;
    }
    return len;
}

static void free_specs(src_spec *v, int n) {
    for (int i = 0; i < n; i++) {
        free(v[i].path);
        free(v[i].field);
    }
    free(v);
}

static ql_status parse_spec(const char *spec, src_spec **out, int *n_out) {
    if (!spec || !*spec) return ql_fail(QL_ERR_ARG, "calib: empty source spec");
    int n;
    char **parts = split_unescaped(spec, '+', &n);
    src_spec *v = ql_calloc((size_t)n, sizeof *v);
    ql_status s = QL_OK;
    for (int i = 0; i < n && !s; i++) {
        char *p = parts[i];
        size_t len = strlen(p);
        v[i].weight = 1;
        /* trailing @WEIGHT: the last unescaped '@' when what follows is a whole number */
        size_t at = len;
        for (size_t j = 0; j < len; j++) {
            if (p[j] == '\\') j++;
            else if (p[j] == '@') at = j;
        }
        if (at < len) {
            char *end;
            errno = 0;
            double w = strtod(p + at + 1, &end);
            if (end != p + at + 1 && !*end && !errno) {
                if (!(w > 0) || !isfinite(w)) {
                    s = ql_fail(QL_ERR_ARG, "calib: source '%s': weight must be a number > 0", p);
                    break;
                }
                v[i].weight = w;
                len = at;
            } else {
                /* not a number: part of the name only if a file by the whole name exists; else the user
                 * meant a weight, and "no such file" would send them looking in the wrong place */
                char *whole = unescape(p, options_start(p, len));
                struct stat sb;
                bool exists = stat(whole, &sb) == 0;
                free(whole);
                if (!exists) {
                    s = ql_fail(QL_ERR_ARG, "calib: source '%s': weight '%s' after '@' is not a number > 0 (write \\@ "
                                            "if '@' is part of the file name)", p, p + at + 1);
                    break;
                }
            }
        }
        size_t o = options_start(p, len);
        if (o == 0) {
            s = ql_fail(QL_ERR_ARG, "calib: source %d of '%s' has no path", i + 1, spec);
            break;
        }
        v[i].path = unescape(p, o);
        while (o < len && !s) { /* ':key=value' options */
            size_t b = o + 1, e = b;
            while (e < len && !(p[e] == ':' && options_start(p + e, len - e) == 0)) {
                if (p[e] == '\\') e++;
                e++;
            }
            if (e > len) e = len;
            char *opt = unescape(p + b, e - b);
            if (!strncmp(opt, "field=", 6)) {
                if (!opt[6]) s = ql_fail(QL_ERR_ARG, "calib: source '%s': empty field name", v[i].path);
                else {
                    free(v[i].field);
                    v[i].field = ql_strdup(opt + 6);
                }
            } else if (!strcmp(opt, "type=text")) v[i].kind = KIND_TEXT;
            else if (!strcmp(opt, "type=jsonl")) v[i].kind = KIND_JSONL;
            else
                s = ql_fail(QL_ERR_ARG,
                            "calib: source '%s': unknown option '%s' (field=NAME, type=text|jsonl)",
                            v[i].path, opt);
            free(opt);
            o = e;
        }
        if (!v[i].field) v[i].field = ql_strdup("text");
    }
    for (int i = 0; i < n; i++) free(parts[i]);
    free(parts);
    if (s) {
        free_specs(v, n);
        return s;
    }
    *out = v;
    *n_out = n;
    return QL_OK;
}

/* ---------------------------------------------------------------- names */

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

static const char *const COMPRESSED[] = {".gz", ".xz", ".bz2", ".zst", ".lz4", ".lzma", ".z"};
static const char *const ARCHIVES[] = {".tar", ".tgz", ".txz", ".tbz", ".tbz2", ".tzst", ".zip", ".7z"};

/* 0: not an archive; 1: archive format (tar, zip, ...); 2: compressed stream (tar inside or raw text) */
static int archive_kind(const char *name) {
    for (size_t i = 0; i < QL_ARRAY_LEN(ARCHIVES); i++)
        if (ends_with(name, ARCHIVES[i])) return 1;
    for (size_t i = 0; i < QL_ARRAY_LEN(COMPRESSED); i++)
        if (ends_with(name, COMPRESSED[i])) return 2;
    return 0;
}

/* JSONL by name: ".jsonl", also under one compression suffix (".jsonl.zst"). */
static bool is_jsonl_name(const char *name) {
    if (ends_with(name, ".jsonl")) return true;
    size_t n = strlen(name);
    for (size_t i = 0; i < QL_ARRAY_LEN(COMPRESSED); i++)
        if (ends_with(name, COMPRESSED[i])) {
            size_t m = n - strlen(COMPRESSED[i]);
            return m >= 6 && !strncasecmp(name + m - 6, ".jsonl", 6);
        }
    return false;
}

/* ---------------------------------------------------------------- reader: bytes → documents → tokens */

typedef struct {
    const ql_tokenizer *tok;
    ql_calib_source *info;
    int kind;                /* the spec's KIND_* (AUTO: by file name) */
    int64_t max_bytes, max_archive, max_entry;
    const ql_progress *progress;
    int64_t progress_base, progress_total; /* bytes of the sources before this one; estimate of all */
    /* the source's token stream and document starts */
    int32_t *toks;
    int64_t n_toks, cap_toks;
    int64_t *docs;
    int64_t cap_docs;
    /* the file being read */
    char *name;              /* for messages: path, or "ARCHIVE: entry" */
    bool jsonl, binary, sniffed;
    int64_t file_bytes, line;
    char *buf;               /* JSONL: the current line; text: the current paragraph */
    size_t n, cap, line_start;
    bool para_cont;          /* text: the front of the current paragraph was already tokenized */
    bool done;               /* max_bytes reached: read nothing more */
    ql_status err;
} reader;

static void buf_append(reader *r, const char *p, size_t len) {
    if (r->n + len + 1 > r->cap) {
        size_t c = r->cap ? r->cap : 4096;
        while (c < r->n + len + 1) c *= 2;
        r->buf = ql_realloc(r->buf, c);
        r->cap = c;
    }
    memcpy(r->buf + r->n, p, len);
    r->n += len;
}

/* Where to cut `len` bytes so the first piece is at most `limit`: after the last newline or space,
 * else at a UTF-8 character boundary. */
static size_t cut_point(const char *s, size_t len, size_t limit) {
    if (len <= limit) return len;
    for (size_t i = limit; i > limit / 2; i--)
        if (s[i - 1] == '\n' || s[i - 1] == ' ') return i;
    size_t i = limit;
    while (i > 1 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

static ql_status emit(reader *r, const char *text, size_t len, bool new_doc) {
    while (len) {
        size_t k = cut_point(text, len, PIECE_BYTES);
        int32_t *ids = NULL;
        int64_t n = 0;
        ql_status s = ql_tokenize(r->tok, text, k, false, &ids, &n);
        if (s) return ql_fail(s, "%s: %s", r->name, ql_last_error());
        if (n > 0) {
            if (r->n_toks + n > r->cap_toks) {
                int64_t c = r->cap_toks ? r->cap_toks : 65536;
                while (c < r->n_toks + n) c *= 2;
                r->toks = ql_realloc(r->toks, (size_t)c * sizeof(int32_t));
                r->cap_toks = c;
            }
            if (new_doc) {
                if (r->info->n_docs == r->cap_docs) {
                    r->cap_docs = r->cap_docs ? 2 * r->cap_docs : 1024;
                    r->docs = ql_realloc(r->docs, (size_t)r->cap_docs * sizeof(int64_t));
                }
                r->docs[r->info->n_docs++] = r->n_toks;
                new_doc = false;
            }
            memcpy(r->toks + r->n_toks, ids, (size_t)n * sizeof(int32_t));
            r->n_toks += n;
        }
        free(ids);
        text += k;
        len -= k;
    }
    return QL_OK;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n\f\v", s[i]) || !s[i]) return false;
    return true;
}

static void note_skip(reader *r, int64_t line) {
    if (!r->info->n_skipped++) {
        r->info->first_skipped_line = line;
        r->info->first_skipped_file = ql_strdup(r->name);
    }
}

static ql_status jsonl_line(reader *r, const char *s, size_t n) {
    if (blank(s, n)) return QL_OK;
    json_error_t err;
    json_t *j = json_loadb(s, n, 0, &err);
    const json_t *f = j && json_is_object(j) ? json_object_get(j, r->info->field) : NULL;
    ql_status st = QL_OK;
    if (f && json_is_string(f)) st = emit(r, json_string_value(f), json_string_length(f), true);
    else note_skip(r, r->line);
    json_decref(j);
    return st;
}

/* Text: the paragraph in buf ends at the first blank line. */
static ql_status text_flush(reader *r, size_t upto) {
    ql_status s = QL_OK;
    if (!blank(r->buf, upto)) s = emit(r, r->buf, upto, !r->para_cont);
    memmove(r->buf, r->buf + upto, r->n - upto);
    r->n -= upto;
    r->line_start = 0;
    r->para_cont = false;
    return s;
}

static ql_status feed(reader *r, const char *p, size_t len) {
    while (len && !r->err) {
        const char *nl = memchr(p, '\n', len);
        size_t k = nl ? (size_t)(nl - p) + 1 : len;
        buf_append(r, p, k);
        p += k;
        len -= k;
        if (!nl) break;
        r->line++;
        if (r->jsonl) {
            r->err = jsonl_line(r, r->buf, r->n);
            r->n = 0;
        } else {
            if (blank(r->buf + r->line_start, r->n - r->line_start)) r->err = text_flush(r, r->n);
            else r->line_start = r->n;
        }
    }
    if (!r->err && !r->jsonl && r->n > PIECE_BYTES) { /* a huge paragraph: tokenize the front part */
        size_t k = cut_point(r->buf, r->n, PIECE_BYTES);
        ql_status s = emit(r, r->buf, k, !r->para_cont);
        r->para_cont = true;
        memmove(r->buf, r->buf + k, r->n - k);
        r->n -= k;
        r->line_start = r->line_start > k ? r->line_start - k : 0;
        r->err = s;
    }
    return r->err;
}

static void file_begin(reader *r, const char *name, const char *kind_name) {
    free(r->name);
    r->name = ql_strdup(name);
    r->jsonl = r->kind == KIND_JSONL || (r->kind == KIND_AUTO && is_jsonl_name(kind_name));
    r->binary = r->sniffed = false;
    r->file_bytes = 0;
    r->line = 0;
    r->n = r->line_start = 0;
    r->para_cont = false;
}

static ql_status file_end(reader *r, bool cut) {
    if (r->err || r->binary) return r->err;
    r->info->n_files++;
    if (r->jsonl) {
        if (r->n && !cut) {
            r->line++;
            r->err = jsonl_line(r, r->buf, r->n);
        }
    } else if (r->n) {
        r->err = text_flush(r, r->n);
    }
    r->n = 0;
    return r->err;
}

/* Feeds one block of the current file, applying the binary sniff and the max_bytes cap.
 * Returns false when the caller should stop reading this file (binary, capped or failed). */
static bool file_block(reader *r, const char *p, size_t len) {
    if (r->done || r->binary || r->err) return false;
    if (!r->sniffed) {
        r->sniffed = true;
        if (memchr(p, 0, QL_MIN(len, (size_t)SNIFF_BYTES))) {
            r->binary = true;
            note_skip(r, 0);
            return false;
        }
    }
    int64_t room = r->max_bytes - r->info->n_bytes;
    if ((int64_t)len >= room) {
        len = (size_t)room;
        r->done = r->info->truncated = true;
    }
    r->info->n_bytes += (int64_t)len;
    r->file_bytes += (int64_t)len;
    bool ok = feed(r, p, len) == QL_OK;
    if (ql_progress_cancelled(r->progress)) r->err = ql_fail(QL_ERR_CANCELLED, "calib: cancelled");
    int64_t done = r->progress_base + r->info->n_bytes;
    ql_progress_report(r->progress, done, QL_MAX(r->progress_total, done), r->info->path);
    return ok && !r->err && !r->done;
}

/* Reads into buf until it is full or the input ends (so the binary sniff sees a whole first block). */
static ssize_t fill(FILE *f, char *buf, size_t cap) {
    size_t n = fread(buf, 1, cap, f);
    return ferror(f) ? -1 : (ssize_t)n;
}

static ql_status read_plain(reader *r, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return ql_fail(QL_ERR_IO, "%s: %s", path, strerror(errno));
    file_begin(r, path, path);
    char *buf = ql_malloc(CHUNK_BYTES);
    for (;;) {
        ssize_t n = fill(f, buf, CHUNK_BYTES);
        if (n < 0) {
            r->err = ql_fail(QL_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
        if (n == 0 || !file_block(r, buf, (size_t)n)) break;
    }
    free(buf);
    fclose(f);
    return file_end(r, r->done);
}

static ql_status read_archive(reader *r, const char *path, int akind) {
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    if (akind == 2) archive_read_support_format_raw(a); /* .zst/.gz of plain text: one entry "data" */
    if (archive_read_open_filename(a, path, CHUNK_BYTES) != ARCHIVE_OK) {
        ql_status s =
            ql_fail(QL_ERR_FORMAT, "%s: cannot read as an archive: %s", path, archive_error_string(a));
        archive_read_free(a);
        return s;
    }
    char *buf = ql_malloc(CHUNK_BYTES);
    int64_t total = 0;
    struct archive_entry *e;
    int rc = ARCHIVE_EOF;
    while (!r->done && !r->err) {
        rc = archive_read_next_header(a, &e);
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) break; /* WARN: e.g. an unknown tar header field */
        if (archive_entry_filetype(e) != AE_IFREG) continue;
        bool raw = archive_format(a) == ARCHIVE_FORMAT_RAW;
        const char *ename = archive_entry_pathname(e);
        if (!ename) ename = "?";
        size_t nl = strlen(path) + strlen(ename) + 16;
        char *label = ql_malloc(nl);
        snprintf(label, nl, "%s: entry '%s'", path, ename);
        /* raw (single compressed file): the name that tells JSONL is the archive's own */
        file_begin(r, label, raw ? path : ename);
        free(label);
        if (archive_entry_size_is_set(e) && archive_entry_size(e) > r->max_entry) {
            r->err = ql_fail(QL_ERR_FORMAT,
                             "%s: entry '%s' is %lld bytes, over the %lld-byte limit per entry "
                             "(decompression bomb?)",
                             path, ename, (long long)archive_entry_size(e), (long long)r->max_entry);
            break;
        }
        int64_t entry = 0;
        size_t have = 0;
        for (;;) {
            la_ssize_t n = archive_read_data(a, buf + have, CHUNK_BYTES - have);
            if (n < 0) {
                r->err = ql_fail(QL_ERR_FORMAT, "%s: entry '%s': %s", path, ename, archive_error_string(a));
                break;
            }
            entry += n;
            total += n;
            if (entry > r->max_entry) {
                r->err = ql_fail(QL_ERR_FORMAT, "%s: entry '%s' expands past the %lld-byte limit per entry "
                                 "(decompression bomb?)", path, ename, (long long)r->max_entry);
                break;
            }
            if (total > r->max_archive) {
                r->err = ql_fail(QL_ERR_FORMAT, "%s: entries expand past the %lld-byte limit per archive at "
                                 "entry '%s' (decompression bomb?)", path, (long long)r->max_archive, ename);
                break;
            }
            have += (size_t)n;
            if (n > 0 && have < CHUNK_BYTES) continue; /* fill whole blocks */
            /* a binary entry is read on (and discarded) so the limits still see its size */
            if (have && !r->binary && !file_block(r, buf, have) && !r->binary) break;
            have = 0;
            if (n == 0) break;
        }
        if (!r->err) file_end(r, r->done);
    }
    if (!r->err && !r->done && rc != ARCHIVE_EOF)
        r->err = ql_fail(QL_ERR_FORMAT, "%s: %s", path, archive_error_string(a));
    free(buf);
    archive_read_free(a);
    return r->err;
}

static ql_status read_path(reader *r, const char *path, int depth);

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static ql_status read_dir(reader *r, const char *dir, int depth) {
    if (depth > MAX_DEPTH)
        return ql_fail(QL_ERR_FORMAT, "%s: folders nested more than %d deep", dir, MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) return ql_fail(QL_ERR_IO, "%s: %s", dir, strerror(errno));
    int n = 0, cap = 64;
    char **names = ql_malloc(sizeof(char *) * (size_t)cap);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue; /* ., .. and hidden files */
        if (n == cap) names = ql_realloc(names, sizeof(char *) * (size_t)(cap *= 2));
        names[n++] = ql_strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(char *), cmp_str); /* byte order: locale-independent */
    ql_status s = QL_OK;
    for (int i = 0; i < n; i++) {
        if (!s && !r->done) {
            size_t l = strlen(dir) + strlen(names[i]) + 2;
            char *p = ql_malloc(l);
            snprintf(p, l, "%s/%s", dir, names[i]);
            struct stat st;
            if (lstat(p, &st) == 0) { /* symlinked files are read, symlinked folders are not */
                bool link = S_ISLNK(st.st_mode);
                if (S_ISDIR(st.st_mode)) s = read_dir(r, p, depth + 1);
                else if (S_ISREG(st.st_mode) || (link && stat(p, &st) == 0 && S_ISREG(st.st_mode)))
                    s = read_path(r, p, depth);
            }
            free(p);
        }
        free(names[i]);
    }
    free(names);
    return s;
}

static ql_status read_path(reader *r, const char *path, int depth) {
    struct stat st;
    if (stat(path, &st) != 0) return ql_fail(QL_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return read_dir(r, path, depth);
    if (!S_ISREG(st.st_mode)) return ql_fail(QL_ERR_IO, "%s: not a regular file or folder", path);
    int ak = archive_kind(path);
    return ak ? read_archive(r, path, ak) : read_plain(r, path);
}

/* ---------------------------------------------------------------- sampling */

static void largest_remainder(const double *w, int n, int total, int *counts) {
    double *frac = ql_malloc(sizeof(double) * (size_t)n);
    int given = 0;
    for (int i = 0; i < n; i++) {
        double x = w[i] * total;
        counts[i] = (int)floor(x);
        frac[i] = x - counts[i];
        given += counts[i];
    }
    while (given < total) { /* ties go to the earlier source: deterministic */
        int best = 0;
        for (int i = 1; i < n; i++)
            if (frac[i] > frac[best]) best = i;
        counts[best]++;
        frac[best] = -1;
        given++;
    }
    free(frac);
}

typedef struct {
    int32_t *toks;
    int64_t n_toks;
    int64_t *docs;
    int64_t n_docs;
} stream;

/* Fills `count` rows of `body` tokens each (after the BOS column) from stream `st`. */
static ql_status draw(const stream *st, const ql_calib_source *info, int mode, int count, int body, rng *g,
                      int64_t *starts) {
    if (st->n_toks < body)
        return ql_fail(QL_ERR_ARG,
                       "%s: only %lld tokens, a sample needs %d (use a shorter length or more text)",
                       info->path, (long long)st->n_toks, body);
    if (mode == QL_CALIB_RANDOM) {
        uint64_t span = (uint64_t)(st->n_toks - body) + 1;
        for (int i = 0; i < count; i++) starts[i] = (int64_t)rng_below(g, span);
        return QL_OK;
    }
    /* docs: starts with at least `body` tokens after them (running into the next documents) */
    int64_t nc = 0;
    while (nc < st->n_docs && st->docs[nc] + body <= st->n_toks) nc++;
    if (nc == 0)
        return ql_fail(QL_ERR_ARG, "%s: no document starts %d tokens before the end of the text", info->path,
                       body);
    int64_t *cand = ql_malloc(sizeof(int64_t) * (size_t)nc);
    for (int i = 0; i < count;) { /* rounds of sampling without replacement */
        memcpy(cand, st->docs, sizeof(int64_t) * (size_t)nc);
        int64_t take = QL_MIN(nc, (int64_t)(count - i));
        for (int64_t j = 0; j < take; j++) { /* partial Fisher-Yates */
            int64_t k = j + (int64_t)rng_below(g, (uint64_t)(nc - j));
            int64_t t = cand[j];
            cand[j] = cand[k];
            cand[k] = t;
            starts[i++] = cand[j];
        }
    }
    free(cand);
    return QL_OK;
}

/* ---------------------------------------------------------------- build */

void ql_calib_free(ql_calib_set *set) {
    if (!set) return;
    for (int i = 0; i < set->n_sources; i++) {
        free(set->sources[i].path);
        free(set->sources[i].field);
        free(set->sources[i].first_skipped_file);
    }
    free(set->sources);
    free(set->tokens);
    free(set->sample_source);
    free(set);
}

ql_status ql_calib_build(const char *spec, const ql_tokenizer *tok, const ql_calib_opts *o,
                         ql_calib_set **out) {
    if (!out) return ql_fail(QL_ERR_ARG, "ql_calib_build: NULL output");
    *out = NULL;
    if (!tok) return ql_fail(QL_ERR_ARG, "ql_calib_build: no tokenizer");
    ql_calib_opts d = {0};
    if (o) d = *o;
    if (!d.n_samples) d.n_samples = QL_CALIB_DEFAULT_SAMPLES;
    if (!d.seq_len) d.seq_len = QL_CALIB_DEFAULT_SEQ_LEN;
    if (!d.max_bytes) d.max_bytes = QL_CALIB_DEFAULT_MAX_BYTES;
    if (!d.max_archive_bytes) d.max_archive_bytes = QL_CALIB_DEFAULT_MAX_ARCHIVE_BYTES;
    if (!d.max_entry_bytes) d.max_entry_bytes = d.max_archive_bytes;
    if (d.n_samples < 1 || d.seq_len < 2 || (int64_t)d.n_samples * d.seq_len > MAX_SET_TOKENS)
        return ql_fail(QL_ERR_ARG,
                       "calib: %d samples of %d tokens: need >= 1 sample of >= 2 tokens, at most %lld in all",
                       d.n_samples, d.seq_len, (long long)MAX_SET_TOKENS);
    /* the token table (and a little per sample) is allocated whole: checked before any source is read */
    char need_what[160];
    snprintf(need_what, sizeof need_what, "--samples %d x --len %d (the calibration token table)", d.n_samples, d.seq_len);
    ql_status ms = ql_mem_check(4.0 * d.n_samples * d.seq_len + 64.0 * d.n_samples, need_what,
                                "use fewer --samples or a shorter --len");
    if (ms) return ms;
    if (d.mode != QL_CALIB_RANDOM && d.mode != QL_CALIB_DOCS)
        return ql_fail(QL_ERR_ARG, "calib: unknown mode %d", d.mode);
    if (d.max_bytes < 0 || d.max_archive_bytes < 0 || d.max_entry_bytes < 0)
        return ql_fail(QL_ERR_ARG, "calib: negative byte limit");

    src_spec *specs = NULL;
    int ns = 0;
    ql_status s = parse_spec(spec, &specs, &ns);
    if (s) return s;
    ql_calib_set *set = ql_calloc(1, sizeof *set);
    set->n_samples = d.n_samples;
    set->seq_len = d.seq_len;
    set->mode = d.mode;
    set->seed = d.seed;
    set->n_sources = ns;
    set->sources = ql_calloc((size_t)ns, sizeof(ql_calib_source));
    stream *streams = ql_calloc((size_t)ns, sizeof(stream));
    double wsum = 0;
    int64_t estimate = 0, base = 0; /* progress: a file's size, or max_bytes for folders and archives */
    for (int i = 0; i < ns; i++) {
        wsum += specs[i].weight;
        struct stat st;
        estimate += stat(specs[i].path, &st) == 0 && S_ISREG(st.st_mode) && !archive_kind(specs[i].path)
                        ? QL_MIN((int64_t)st.st_size, d.max_bytes) : d.max_bytes;
    }
    for (int i = 0; i < ns && !s; i++) {
        ql_calib_source *info = &set->sources[i];
        info->path = specs[i].path;
        info->field = specs[i].field;
        specs[i].path = specs[i].field = NULL;
        info->weight = specs[i].weight / wsum;
        reader r = {.tok = tok, .info = info, .kind = specs[i].kind, .max_bytes = d.max_bytes,
                    .max_archive = d.max_archive_bytes, .max_entry = d.max_entry_bytes,
                    .progress = d.progress, .progress_base = base, .progress_total = estimate};
        s = read_path(&r, info->path, 0);
        if (!s && r.err) s = r.err;
        if (!s && r.n_toks == 0) {
            if (info->n_skipped) {
                char line[32] = "";
                if (info->first_skipped_line)
                    snprintf(line, sizeof line, " line %lld", (long long)info->first_skipped_line);
                s = ql_fail(QL_ERR_FORMAT, "%s: no text (%lld malformed JSONL lines or binary files skipped, "
                            "first: %s%s; JSONL field '%s')", info->path, (long long)info->n_skipped,
                            info->first_skipped_file ? info->first_skipped_file : "?", line, info->field);
            }
            else
                s = ql_fail(QL_ERR_FORMAT, "%s: no text", info->path);
        }
        info->n_tokens = r.n_toks;
        base += info->n_bytes;
        streams[i] = (stream){r.toks, r.n_toks, r.docs, info->n_docs};
        free(r.buf);
        free(r.name);
    }
    free_specs(specs, ns);

    if (!s) {
        int *counts = ql_malloc(sizeof(int) * (size_t)ns);
        double *w = ql_malloc(sizeof(double) * (size_t)ns);
        for (int i = 0; i < ns; i++) w[i] = set->sources[i].weight;
        largest_remainder(w, ns, d.n_samples, counts);
        int32_t bos = ql_tokenizer_bos(tok);
        bool add_bos = ql_tokenizer_add_bos(tok) && bos >= 0;
        set->bos = add_bos ? bos : -1;
        int L = d.seq_len, body = L - (add_bos ? 1 : 0);
        /* final order: a seeded permutation, so any prefix of the set mixes the sources */
        int *perm = ql_malloc(sizeof(int) * (size_t)d.n_samples);
        rng g;
        rng_seed(&g, d.seed, 0);
        for (int i = 0; i < d.n_samples; i++) perm[i] = i;
        for (int i = d.n_samples - 1; i > 0; i--) {
            int k = (int)rng_below(&g, (uint64_t)i + 1), t = perm[i];
            perm[i] = perm[k];
            perm[k] = t;
        }
        set->tokens = ql_malloc(sizeof(int32_t) * (size_t)d.n_samples * (size_t)L);
        set->sample_source = ql_malloc(sizeof(int) * (size_t)d.n_samples);
        int64_t *starts = ql_malloc(sizeof(int64_t) * (size_t)d.n_samples);
        int row = 0;
        for (int i = 0; i < ns && !s; i++) {
            set->sources[i].n_samples = counts[i];
            if (!counts[i]) continue;
            rng_seed(&g, d.seed, (uint64_t)i + 1); /* one stream per source */
            if ((s = draw(&streams[i], &set->sources[i], d.mode, counts[i], body, &g, starts))) break;
            for (int j = 0; j < counts[i]; j++, row++) {
                int32_t *dst = set->tokens + (size_t)perm[row] * (size_t)L;
                if (add_bos) *dst++ = bos;
                memcpy(dst, streams[i].toks + starts[j], sizeof(int32_t) * (size_t)body);
                set->sample_source[perm[row]] = i;
            }
        }
        free(starts);
        free(perm);
        free(counts);
        free(w);
    }
    for (int i = 0; i < ns; i++) {
        free(streams[i].toks);
        free(streams[i].docs);
    }
    free(streams);
    if (s) {
        ql_calib_free(set);
        return s;
    }
    *out = set;
    return QL_OK;
}

/* ---------------------------------------------------------------- statistics */

int64_t ql_calib_distinct_tokens(const ql_calib_set *set, int32_t n_vocab) {
    if (!set || n_vocab <= 0) return 0;
    uint8_t *seen = ql_calloc((size_t)n_vocab, 1);
    int64_t n = 0, total = (int64_t)set->n_samples * set->seq_len;
    for (int64_t i = 0; i < total; i++) {
        int32_t t = set->tokens[i];
        if (t >= 0 && t < n_vocab && !seen[t]) {
            seen[t] = 1;
            n++;
        }
    }
    free(seen);
    return n;
}

static uint64_t ngram_hash(const int32_t *t, int n) {
    uint64_t h = 0x243F6A8885A308D3ull;
    for (int i = 0; i < n; i++) {
        uint64_t x = h ^ (uint32_t)t[i];
        h = splitmix64(&x);
    }
    return h ? h : 1; /* 0 marks an empty slot */
}

double ql_calib_ngram_overlap(const ql_calib_set *set, const int32_t *ref, int64_t n_ref, int n,
                              int64_t *n_grams) {
    if (n_grams) *n_grams = 0;
    if (!set || !ref || n < 1 || n_ref < n) return 0;
    int64_t m = n_ref - n + 1;
    size_t cap = 16;
    while ((int64_t)cap < 2 * m) cap *= 2;
    uint64_t *tab = ql_calloc(cap, sizeof(uint64_t));
    for (int64_t i = 0; i < m; i++) {
        uint64_t h = ngram_hash(ref + i, n);
        size_t j = (size_t)h & (cap - 1);
        while (tab[j] && tab[j] != h) j = (j + 1) & (cap - 1);
        tab[j] = h;
    }
    int L = set->seq_len, first = set->bos >= 0 ? 1 : 0; /* BOS column excluded */
    int64_t count = 0, hit = 0;
    for (int s = 0; s < set->n_samples; s++) {
        const int32_t *row = set->tokens + (size_t)s * (size_t)L;
        for (int i = first; i + n <= L; i++) {
            uint64_t h = ngram_hash(row + i, n);
            size_t j = (size_t)h & (cap - 1);
            while (tab[j] && tab[j] != h) j = (j + 1) & (cap - 1);
            hit += tab[j] == h;
            count++;
        }
    }
    free(tab);
    if (n_grams) *n_grams = count;
    return count ? (double)hit / (double)count : 0;
}
