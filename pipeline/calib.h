/* calib.h — calibration sets for post-training quantization (imatrix, stats, GPTQ): N sequences of
 * L token ids drawn from one or several weighted text sources (plain text, JSONL, folders, archives
 * read in place with libarchive). Deterministic: the same spec, tokenizer, options and seed always
 * give the same tokens (self-contained xoshiro256** PRNG). A ql_calib_set is owned by the caller
 * (ql_calib_free); building one is single-threaded, a built set is read-only and thread-safe.
 *
 * SPEC grammar (whitespace is part of paths; '\' escapes the next character, e.g. "a\+b.txt"):
 *   SPEC   := SOURCE ( '+' SOURCE )*
 *   SOURCE := PATH ( ':' OPTION )* ( '@' WEIGHT )?
 *   OPTION := 'field=' NAME          JSONL field holding the text (default "text")
 *           | 'type=' ('text' | 'jsonl')   override the kind guessed from the name
 *   WEIGHT := a number > 0 (default 1); weights are normalized over the sources
 * A ':' starts options only when followed by a known key ("field=", "type="), so paths may contain
 * ':'. Example: ../shared/data/c4-sample.jsonl:field=text@0.7+../shared/data/wikitext-2-valid.raw@0.3
 *
 * PATH kinds: a folder (all regular files below it, recursively, in byte-wise sorted path order,
 * hidden names skipped); an archive (.tar .tgz .tar.gz .tar.xz .txz .tar.bz2 .tar.zst .zip .7z, or
 * a single compressed file .gz .xz .bz2 .zst), read entry by entry without unpacking, in archive
 * order; anything else is one file. Files and entries ending in .jsonl (also .jsonl.gz etc.) are
 * JSONL, the rest plain text. Files whose first 4 KiB contain a NUL byte are skipped as binary.
 *
 * Documents: a JSONL line, a file/entry, or in plain text a paragraph (lines up to a blank line).
 * Documents are tokenized one by one without special tokens and concatenated into one token stream
 * per source. Malformed JSONL lines (bad JSON, no such field, field not a string) are SKIPPED and
 * counted (n_skipped, first_skipped_line); a source that yields no tokens at all is an error.
 * Documents longer than 1 MiB are tokenized in pieces cut at a newline or space.
 *
 * Sampling: the n_samples are split over the sources by weight (largest remainder, so counts match
 * the weights to within one sample), then shuffled. Each sample is BOS (when the vocabulary adds one,
 * as llama.cpp's imatrix/perplexity chunks do) followed by seq_len-1 stream tokens starting at:
 *   QL_CALIB_RANDOM  a uniformly random position of the source's stream;
 *   QL_CALIB_DOCS    the first token of a randomly chosen document (without replacement while enough
 *                    documents are long enough; a sample runs on into the following documents).
 *
 * Limits: at most max_bytes of text are read from each source (the rest is ignored: reading stops,
 * `truncated` is set). Archives are guarded against decompression bombs: an entry that declares or
 * expands past max_entry_bytes, or an archive whose entries together expand past max_archive_bytes,
 * is refused with an error naming the archive and the entry. */
#ifndef QL_CALIB_H
#define QL_CALIB_H

#include "base/ql_common.h"
#include "core/tokenizer.h"

typedef enum { QL_CALIB_RANDOM = 0, QL_CALIB_DOCS = 1 } ql_calib_mode;

#define QL_CALIB_DEFAULT_SAMPLES 128
#define QL_CALIB_DEFAULT_SEQ_LEN 512
#define QL_CALIB_DEFAULT_MAX_BYTES ((int64_t)64 << 20)          /* text read per source */
#define QL_CALIB_DEFAULT_MAX_ARCHIVE_BYTES ((int64_t)256 << 20) /* expanded bytes per archive */

typedef struct {
    int n_samples;             /* 0: QL_CALIB_DEFAULT_SAMPLES */
    int seq_len;               /* tokens per sample including BOS, >= 2; 0: QL_CALIB_DEFAULT_SEQ_LEN */
    uint64_t seed;
    int mode;                  /* ql_calib_mode */
    int64_t max_bytes;         /* 0: QL_CALIB_DEFAULT_MAX_BYTES */
    int64_t max_archive_bytes; /* 0: QL_CALIB_DEFAULT_MAX_ARCHIVE_BYTES */
    int64_t max_entry_bytes;   /* 0: same as max_archive_bytes */
    const ql_progress *progress; /* optional: reading/tokenizing progress (bytes) and cancellation */
} ql_calib_opts;

typedef struct {
    char *path;                /* as written in the spec (unescaped) */
    char *field;               /* JSONL field */
    double weight;             /* normalized: the weights of a set sum to 1 */
    int n_samples;             /* samples drawn from this source */
    int64_t n_bytes;           /* text bytes read */
    int64_t n_tokens;          /* tokens in the source's stream */
    int64_t n_docs;            /* documents */
    int64_t n_files;           /* files or archive entries read */
    int64_t n_skipped;         /* malformed JSONL lines and binary files skipped */
    int64_t first_skipped_line; /* 1-based line of the first malformed JSONL line, 0 if none */
    char *first_skipped_file;  /* file/entry holding it (or the first binary file), NULL if none */
    bool truncated;            /* reading stopped at max_bytes */
} ql_calib_source;

typedef struct ql_calib_set {
    int n_samples, seq_len;
    int mode;
    uint64_t seed;
    int32_t bos;               /* the token every sample starts with, or -1 (vocabulary without BOS) */
    int32_t *tokens;           /* [n_samples * seq_len]: sample i is tokens[i*seq_len .. (i+1)*seq_len) */
    int *sample_source;        /* [n_samples]: index into sources */
    int n_sources;
    ql_calib_source *sources;  /* [n_sources] */
} ql_calib_set;

/* Reads the sources of `spec`, tokenizes them with `tok` and draws the samples. `o` may be NULL
 * (defaults). Errors name the source (and the archive entry or line). *out: free with ql_calib_free. */
ql_status ql_calib_build(const char *spec, const ql_tokenizer *tok, const ql_calib_opts *o,
                         ql_calib_set **out);
void ql_calib_free(ql_calib_set *set);

/* Distinct token ids used by the set (the coverage numerator; n_vocab bounds the ids counted). */
int64_t ql_calib_distinct_tokens(const ql_calib_set *set, int32_t n_vocab);

/* Contamination check: the fraction of the set's n-grams (every window of n tokens inside a sample,
 * BOS excluded, counted with multiplicity) that also occur in `ref` [n_ref]. *n_grams gets how many
 * n-grams of the set were counted (may be NULL). Returns 0 when there are none. */
double ql_calib_ngram_overlap(const ql_calib_set *set, const int32_t *ref, int64_t n_ref, int n,
                              int64_t *n_grams);

#endif
