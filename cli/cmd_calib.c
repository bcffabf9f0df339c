/* cmd_calib.c — `qlab calib inspect`: builds a calibration set (core/calib.h) and reports what it holds:
 * tokens per source, vocabulary coverage, n-gram overlap with an evaluation text, decoded samples. */
#include "cli/cli.h"
#include "pipeline/calib.h"
#include "core/model.h"
#include "core/ppl.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *CALIB_USAGE =
    "usage: qlab calib inspect MODEL SPEC [--samples 128] [--len 512] [--seed 0] [--mode random|docs]\n"
    "                  [--eval FILE] [--ngram 8] [--warn-overlap 0.3] [--max-bytes MIB] [--max-archive MIB]\n"
    "                  [--max-entry MIB] [--json]\n"
    "Builds the calibration set that qlab imatrix / stats / GPTQ use -- N samples of L tokens, tokenized\n"
    "with MODEL's tokenizer -- and prints the tokens of each source and in total, the vocabulary coverage\n"
    "(distinct tokens / vocabulary size), the n-gram overlap with --eval FILE (share of the set's token\n"
    "n-grams, BOS left out, that also occur in FILE; above --warn-overlap it warns of contamination) and\n"
    "the start of 3 decoded samples.\n"
    "\n"
    "SPEC (several weighted sources; '\\' escapes + : @ in paths):\n"
    "  SPEC   := SOURCE ('+' SOURCE)*\n"
    "  SOURCE := PATH (':field=NAME' | ':type=text' | ':type=jsonl')* ('@' WEIGHT)?\n"
    "  PATH   a text file; a .jsonl file (one JSON object a line, text in field NAME, default \"text\");\n"
    "         a folder (every file below it, sorted by path; hidden files skipped);\n"
    "         an archive read in place: .tar .tar.gz .tgz .tar.xz .tar.bz2 .tar.zst .zip .7z, or one\n"
    "         compressed file .gz .xz .bz2 .zst (entries ending in .jsonl are JSONL, the others text;\n"
    "         files with a NUL byte in their first 4 KiB are skipped as binary)\n"
    "  WEIGHT share of the samples (default 1; normalized over the sources)\n"
    "  e.g. ../shared/data/c4-sample.jsonl:field=text@0.7+../shared/data/wikitext-2-valid.raw@0.3\n"
    "\n"
    "Sampling: every sample starts with BOS (when the vocabulary uses one), then L-1 tokens from\n"
    "  --mode random  a random position in the source's token stream (documents concatenated)\n"
    "  --mode docs    the start of a random document: a JSONL line, a file, a paragraph of plain text\n"
    "The same SPEC, model, options and --seed always give the same samples.\n"
    "Malformed JSONL lines (bad JSON, no such field) are skipped and counted; a source with no text is an\n"
    "error.\n"
    "Limits: at most --max-bytes MiB of text are read from each source (default 64; the rest is ignored);\n"
    "an archive entry larger than --max-entry MiB, or entries adding up to more than --max-archive MiB\n"
    "(default 256 for both), are refused as decompression bombs.\n"
    "  --ngram N          n-gram length for the overlap (default 8: with a small vocabulary the 4-grams\n"
    "                     of unrelated texts overlap by over 50%, e.g. wikitext-2 valid vs test with\n"
    "                     stories260K: 71% for 4-grams, 13% for 8-grams; a copy of the evaluation text\n"
    "                     gives over 90%)\n"
    "  --warn-overlap F   warn when the overlap exceeds F (default 0.3)\n"
    "  --json             one JSON object on stdout\n";

/* The first ~max bytes of sample `i` (BOS skipped), as printable one-line text: newlines become \n,
 * other control bytes '?', and a UTF-8 character is never cut. Caller frees. */
static char *decode_sample(const ql_calib_set *set, const ql_tokenizer *tok, int i, size_t max) {
    size_t cap = max + 64, n = 0;
    char *raw = ql_malloc(cap);
    const int32_t *row = set->tokens + (size_t)i * set->seq_len;
    for (int j = set->bos >= 0 ? 1 : 0; j < set->seq_len && n < max; j++) {
        char piece[64];
        int l = ql_token_to_piece(tok, row[j], piece, sizeof piece);
        if (l <= 0) continue;
        if (l > (int)sizeof piece) l = sizeof piece;
        if (n + (size_t)l > cap) break;
        memcpy(raw + n, piece, (size_t)l);
        n += (size_t)l;
    }
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)raw[n] & 0xC0) == 0x80) n--; /* back to a character start */
    }
    char *out = ql_malloc(2 * n + 1);
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        unsigned char c = (unsigned char)raw[j];
        if (c == '\n') {
            out[k++] = '\\';
            out[k++] = 'n';
        } else if (c < 0x20 || c == 0x7f) out[k++] = c == '\t' ? ' ' : '?';
        else out[k++] = (char)c;
    }
    out[k] = 0;
    free(raw);
    /* invalid UTF-8 (a character split over byte tokens at the window's edge) becomes '?' */
    for (size_t j = 0; j < k;) {
        unsigned char c = (unsigned char)out[j];
        size_t l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = l && j + l <= k;
        for (size_t t = 1; ok && t < l; t++) ok = ((unsigned char)out[j + t] & 0xC0) == 0x80;
        if (!ok) {
            out[j++] = '?';
            continue;
        }
        j += l;
    }
    return out;
}

static bool parse_u64(const char *v, uint64_t *x) {
    if (!v || !*v || *v == '-') return false;
    char *end;
    errno = 0;
    unsigned long long r = strtoull(v, &end, 0);
    if (*end || errno) return false;
    *x = r;
    return true;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s && s[1] ? s + 1 : p;
}

static int64_t mib(cli_args *a, const char *flag) { return (int64_t)cli_int(a, flag, 1, 1 << 20) << 20; }

static int inspect(int argc, char **argv) {
    cli_args a;
    cli_args_init(&a, argc, argv, CALIB_USAGE);
    a.cmd = "calib";
    const char *flag, *pos, *model = NULL, *spec = NULL, *eval = NULL;
    ql_calib_opts o = {.n_samples = QL_CALIB_DEFAULT_SAMPLES, .seq_len = QL_CALIB_DEFAULT_SEQ_LEN};
    int ngram = 8;
    double warn_overlap = 0.3;
    bool json = false;
    while (cli_next(&a, &flag, &pos)) {
        if (pos) {
            if (!model) model = pos;
            else if (!spec) spec = pos;
            else return cli_usage_error("calib", CALIB_USAGE, "unexpected argument '%s'", pos);
        } else if (!strcmp(flag, "--samples") || !strcmp(flag, "-n"))
            o.n_samples = cli_int(&a, flag, 1, 1 << 20);
        else if (!strcmp(flag, "--len") || !strcmp(flag, "-l")) o.seq_len = cli_int(&a, flag, 2, 1 << 20);
        else if (!strcmp(flag, "--seed")) {
            const char *v = cli_value(&a, flag);
            if (v && !parse_u64(v, &o.seed))
                return cli_usage_error("calib", CALIB_USAGE, "--seed must be an integer >= 0, got '%s'", v);
        } else if (!strcmp(flag, "--mode")) {
            const char *v = cli_value(&a, flag);
            if (v && !strcmp(v, "random")) o.mode = QL_CALIB_RANDOM;
            else if (v && !strcmp(v, "docs")) o.mode = QL_CALIB_DOCS;
            else if (v)
                return cli_usage_error("calib", CALIB_USAGE, "--mode must be random or docs, got '%s'", v);
        } else if (!strcmp(flag, "--eval")) eval = cli_value(&a, flag);
        else if (!strcmp(flag, "--ngram")) ngram = cli_int(&a, flag, 1, 64);
        else if (!strcmp(flag, "--warn-overlap")) warn_overlap = cli_double(&a, flag);
        else if (!strcmp(flag, "--max-bytes")) o.max_bytes = mib(&a, flag);
        else if (!strcmp(flag, "--max-archive")) o.max_archive_bytes = mib(&a, flag);
        else if (!strcmp(flag, "--max-entry")) o.max_entry_bytes = mib(&a, flag);
        else if (!strcmp(flag, "--json")) json = true;
        else return cli_unknown(&a, flag);
    }
    if (a.error) return 2;
    if (!model || !spec) return cli_usage_error("calib", CALIB_USAGE, "inspect needs MODEL and SPEC");
    if ((int64_t)o.n_samples * o.seq_len > ((int64_t)1 << 30))
        return cli_usage_error("calib", CALIB_USAGE, "--samples x --len is more than 2^30 tokens");

    ql_model *m = NULL;
    ql_calib_set *set = NULL;
    int32_t *ref = NULL;
    int64_t n_ref = 0;
    char *text = NULL;
    int rc = 0;
    double t0 = ql_time_s();
    if (ql_model_load(model, &m)) {
        rc = cli_fail("calib");
        goto out;
    }
    if (!m->tok) {
        ql_model_no_tokenizer(m, NULL);
        rc = cli_fail("calib");
        goto out;
    }
    ql_progress *bar = json ? NULL : cli_progress_bar("calib");
    o.progress = bar;
    ql_status s = ql_calib_build(spec, m->tok, &o, &set);
    if (bar) cli_progress_done(bar);
    if (s) {
        rc = cli_fail("calib");
        goto out;
    }
    size_t len = 0;
    if (eval && (ql_read_file(eval, &text, &len) || ql_tokenize(m->tok, text, len, false, &ref, &n_ref))) {
        rc = cli_fail("calib");
        goto out;
    }
    double seconds = ql_time_s() - t0;
    int32_t n_vocab = ql_tokenizer_n_vocab(m->tok);
    int64_t distinct = ql_calib_distinct_tokens(set, n_vocab), total_tokens = 0, n_grams = 0;
    for (int i = 0; i < set->n_sources; i++) total_tokens += set->sources[i].n_tokens;
    double overlap = eval ? ql_calib_ngram_overlap(set, ref, n_ref, ngram, &n_grams) : 0;
    bool contaminated = eval && n_grams > 0 && overlap > warn_overlap;
    int n_show = set->n_samples < 3 ? set->n_samples : 3;
    const char *mode = set->mode == QL_CALIB_DOCS ? "docs" : "random";

    if (json) {
        json_t *root = json_object(), *srcs = json_array(), *samples = json_array();
        json_object_set_new(root, "model", json_string(model));
        json_object_set_new(root, "spec", json_string(spec));
        json_object_set_new(root, "mode", json_string(mode));
        json_object_set_new(root, "seed", json_integer((json_int_t)set->seed));
        json_object_set_new(root, "samples", json_integer(set->n_samples));
        json_object_set_new(root, "seq_len", json_integer(set->seq_len));
        for (int i = 0; i < set->n_sources; i++) {
            const ql_calib_source *c = &set->sources[i];
            json_t *j = json_object();
            json_object_set_new(j, "path", json_string(c->path));
            json_object_set_new(j, "field", json_string(c->field));
            json_object_set_new(j, "weight", json_real(c->weight));
            json_object_set_new(j, "samples", json_integer(c->n_samples));
            json_object_set_new(j, "tokens", json_integer(c->n_tokens));
            json_object_set_new(j, "bytes", json_integer(c->n_bytes));
            json_object_set_new(j, "docs", json_integer(c->n_docs));
            json_object_set_new(j, "files", json_integer(c->n_files));
            json_object_set_new(j, "skipped", json_integer(c->n_skipped));
            json_object_set_new(j, "truncated", json_boolean(c->truncated));
            json_array_append_new(srcs, j);
        }
        json_object_set_new(root, "sources", srcs);
        json_object_set_new(root, "tokens_total", json_integer(total_tokens));
        json_object_set_new(root, "distinct_tokens", json_integer(distinct));
        json_object_set_new(root, "n_vocab", json_integer(n_vocab));
        json_object_set_new(root, "vocab_coverage", json_real(n_vocab > 0 ? (double)distinct / n_vocab : 0));
        if (eval) {
            json_object_set_new(root, "eval", json_string(eval));
            json_object_set_new(root, "ngram", json_integer(ngram));
            json_object_set_new(root, "ngrams", json_integer(n_grams));
            json_object_set_new(root, "ngram_overlap", json_real(overlap));
            json_object_set_new(root, "contamination_warning", json_boolean(contaminated));
        }
        for (int i = 0; i < n_show; i++) {
            char *d = decode_sample(set, m->tok, i, 200);
            json_t *j = json_object();
            json_object_set_new(j, "index", json_integer(i));
            json_object_set_new(j, "source", json_integer(set->sample_source[i]));
            json_object_set_new(j, "text", json_string(d));
            json_array_append_new(samples, j);
            free(d);
        }
        json_object_set_new(root, "decoded", samples);
        json_object_set_new(root, "seconds", json_real(seconds));
        char *js = json_dumps(root, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
        printf("%s\n", js ? js : "{}");
        free(js);
        json_decref(root);
        goto out;
    }

    printf("calibration set: %d samples x %d tokens, mode %s, seed %llu (%.2fs)\n", set->n_samples,
           set->seq_len, mode, (unsigned long long)set->seed, seconds);
    printf("  %-3s %7s %8s %9s %11s %11s  %s\n", "#", "weight", "samples", "docs", "tokens", "bytes",
           "source");
    for (int i = 0; i < set->n_sources; i++) {
        const ql_calib_source *c = &set->sources[i];
        printf("  %-3d %7.3f %8d %9lld %11lld %11lld  %s", i, c->weight, c->n_samples, (long long)c->n_docs,
               (long long)c->n_tokens, (long long)c->n_bytes, c->path);
        if (c->n_files > 1) printf(" (%lld files)", (long long)c->n_files);
        printf("\n");
    }
    printf("  %-3s %7s %8d %9s %11lld\n", "all", "", set->n_samples, "", (long long)total_tokens);
    for (int i = 0; i < set->n_sources; i++) {
        const ql_calib_source *c = &set->sources[i];
        if (c->n_skipped) {
            printf("warning: %s: skipped %lld malformed JSONL line(s) or binary file(s), first: %s", c->path,
                   (long long)c->n_skipped, c->first_skipped_file ? c->first_skipped_file : "?");
            if (c->first_skipped_line) printf(" line %lld", (long long)c->first_skipped_line);
            printf(" (JSONL field '%s')\n", c->field);
        }
        if (c->truncated)
            printf("note: %s: read only the first %lld bytes (--max-bytes)\n", c->path,
                   (long long)c->n_bytes);
    }
    printf("vocabulary coverage: %lld / %d distinct tokens (%.1f%%)\n", (long long)distinct, n_vocab,
           n_vocab > 0 ? 100.0 * distinct / n_vocab : 0);
    if (eval) {
        printf("%d-gram overlap with %s: %.1f%% of %lld calibration %d-grams occur in it\n", ngram, eval,
               100 * overlap, (long long)n_grams, ngram);
        if (contaminated)
            printf("warning: %.0f%% of the calibration %d-grams occur in %s (over %.0f%%): the calibration "
                   "text may contain the evaluation text (contamination)\n", 100 * overlap, ngram, eval,
                   100 * warn_overlap);
    }
    for (int i = 0; i < n_show; i++) {
        char *d = decode_sample(set, m->tok, i, 200);
        printf("sample %d [%s]: \"%s\"\n", i, base_name(set->sources[set->sample_source[i]].path), d);
        free(d);
    }
out:
    free(text);
    free(ref);
    ql_calib_free(set);
    ql_model_free(m);
    return rc;
}

int cmd_calib(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "inspect")) return inspect(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("%s", CALIB_USAGE);
        return 0;
    }
    if (argc < 2) return cli_usage_error("calib", CALIB_USAGE, "needs a subcommand: inspect");
    return cli_usage_error("calib", CALIB_USAGE, "unknown subcommand '%s' (inspect)", argv[1]);
}
