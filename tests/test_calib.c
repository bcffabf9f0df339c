/* test_calib.c — calibration sets (core/calib.h): spec grammar, text/JSONL/folder/archive readers
 * (tar.gz, zip and .zst fixtures written at run time with libarchive into a temporary folder),
 * decompression-bomb limits, malformed JSONL, sampling modes, weights and determinism. The fixture
 * tests use a byte-level tokenizer (no files needed); the ../shared tests use stories260K. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/calib.h"
#include "core/gguf.h"
#include "core/model.h"
#include "tests/test_util.h"
#include "core/tokenizer.h"

static char g_dir[256];          /* temporary fixture folder */
static ql_tokenizer *g_bytes;    /* byte-level tokenizer: every byte is one token */

/* ---------------------------------------------------------------- fixture helpers */

static const char *fx(const char *name) { /* path of a fixture; rotating static buffers */
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", g_dir, name);
    return b;
}

static void write_file(const char *name, const char *text) {
    const char *p = fx(name);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", p);
    for (char *s = dir + strlen(g_dir) + 1; (s = strchr(s, '/')); s++) { /* mkdir -p */
        *s = 0;
        mkdir(dir, 0755);
        *s = '/';
    }
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

typedef struct { const char *name, *text; size_t len; } entry;

/* Writes an archive with libarchive: format "tar"/"zip"/"raw", filter "gzip"/"zstd"/NULL. */
static void write_archive(const char *name, const char *format, const char *filter, const entry *e, int n) {
    struct archive *a = archive_write_new();
    if (!strcmp(format, "tar")) archive_write_set_format_pax_restricted(a);
    else if (!strcmp(format, "zip")) archive_write_set_format_zip(a);
    else archive_write_set_format_raw(a);
    if (filter && !strcmp(filter, "gzip")) archive_write_add_filter_gzip(a);
    if (filter && !strcmp(filter, "zstd")) archive_write_add_filter_zstd(a);
    assert_int_equal(archive_write_open_filename(a, fx(name)), ARCHIVE_OK);
    for (int i = 0; i < n; i++) {
        struct archive_entry *ae = archive_entry_new();
        size_t len = e[i].len ? e[i].len : strlen(e[i].text);
        archive_entry_set_pathname(ae, e[i].name);
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_perm(ae, 0644);
        archive_entry_set_size(ae, (la_int64_t)len);
        assert_int_equal(archive_write_header(a, ae), ARCHIVE_OK);
        assert_int_equal(archive_write_data(a, e[i].text, len), (la_ssize_t)len);
        archive_entry_free(ae);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

/* The bytes of sample i (BOS left out), NUL-terminated; caller frees. */
static char *sample_text(const ql_calib_set *s, const ql_tokenizer *t, int i) {
    size_t cap = (size_t)s->seq_len * 64 + 1, n = 0;
    char *o = malloc(cap);
    for (int j = s->bos >= 0 ? 1 : 0; j < s->seq_len; j++) {
        int l = ql_token_to_piece(t, s->tokens[(size_t)i * s->seq_len + j], o + n, (int)(cap - n));
        assert_true(l >= 0 && (size_t)l < cap - n);
        n += (size_t)l;
    }
    o[n] = 0;
    return o;
}

static ql_calib_set *build_ok(const char *spec, const ql_tokenizer *t, const ql_calib_opts *o) {
    ql_calib_set *s = NULL;
    ql_status st = ql_calib_build(spec, t, o, &s);
    if (st) print_error("ql_calib_build(%s): %s\n", spec, ql_last_error());
    assert_int_equal(st, QL_OK);
    assert_non_null(s);
    return s;
}

static void expect_error(const char *spec, const ql_calib_opts *o, const char *want1, const char *want2) {
    ql_calib_set *s = NULL;
    ql_status st = ql_calib_build(spec, g_bytes, o, &s);
    assert_int_not_equal(st, QL_OK);
    assert_null(s);
    const char *msg = ql_last_error();
    if ((want1 && !strstr(msg, want1)) || (want2 && !strstr(msg, want2)))
        print_error("error '%s' lacks '%s' / '%s'\n", msg, want1 ? want1 : "", want2 ? want2 : "");
    assert_true(!want1 || strstr(msg, want1));
    assert_true(!want2 || strstr(msg, want2));
    assert_null(strchr(msg, '\n')); /* one line */
}

static bool same_tokens(const ql_calib_set *a, const ql_calib_set *b) {
    return a->n_samples == b->n_samples && a->seq_len == b->seq_len &&
           !memcmp(a->tokens, b->tokens, sizeof(int32_t) * (size_t)a->n_samples * a->seq_len) &&
           !memcmp(a->sample_source, b->sample_source, sizeof(int) * (size_t)a->n_samples);
}

/* ---------------------------------------------------------------- setup */

static void rm_rf(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static char *repeat(const char *unit, int n) {
    size_t l = strlen(unit);
    char *s = malloc(l * (size_t)n + 1);
    for (int i = 0; i < n; i++) memcpy(s + l * (size_t)i, unit, l);
    s[l * (size_t)n] = 0;
    return s;
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/qlab-calib-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    ql_gguf *g = ql_gguf_new();
    ql_tokenizer_bytes_to_gguf(g, 260);
    ql_status s = ql_tokenizer_from_gguf(g, &g_bytes);
    ql_gguf_free(g);
    return s == QL_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    ql_tokenizer_free(g_bytes);
    rm_rf(g_dir);
    return 0;
}

/* ---------------------------------------------------------------- spec grammar and errors */

static void test_spec_errors(void **state) {
    (void)state;
    write_file("plain.txt", "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu\n");
    ql_calib_opts o = {.n_samples = 4, .seq_len = 16};
    expect_error("", &o, "empty", NULL);
    expect_error(fx("missing.txt"), &o, "missing.txt", NULL);
    char spec[600];
    snprintf(spec, sizeof spec, "%s@abc", fx("plain.txt")); /* a bad weight, not a missing file */
    expect_error(spec, &o, "weight 'abc'", NULL);
    snprintf(spec, sizeof spec, "%s@0", fx("plain.txt"));
    expect_error(spec, &o, "weight", NULL);
    snprintf(spec, sizeof spec, "%s:type=xml", fx("plain.txt"));
    expect_error(spec, &o, "unknown option", "type=xml");
    snprintf(spec, sizeof spec, "%s+", fx("plain.txt"));
    expect_error(spec, &o, "no path", NULL);
    /* more tokens asked for than the source holds */
    ql_calib_opts big = {.n_samples = 2, .seq_len = 4096};
    expect_error(fx("plain.txt"), &big, "plain.txt", "only");
    ql_calib_opts bad = {.n_samples = 2, .seq_len = 1};
    expect_error(fx("plain.txt"), &bad, "tokens", NULL);

    /* escapes: a file whose name holds the separators */
    write_file("a+b@2:c.txt", "escaped name text, long enough for a few sixteen-byte samples.\n");
    snprintf(spec, sizeof spec, "%s/a\\+b\\@2:c.txt@3", g_dir);
    ql_calib_set *s = build_ok(spec, g_bytes, &o);
    assert_int_equal(s->n_sources, 1);
    assert_true(strstr(s->sources[0].path, "a+b@2:c.txt") != NULL);
    assert_true(s->sources[0].weight > 0.999);
    ql_calib_free(s);
}

/* ---------------------------------------------------------------- JSONL */

static void test_jsonl_field(void **state) {
    (void)state;
    write_file("docs.jsonl",
               "{\"text\": \"TTTT text field one\", \"body\": \"BBBB body field one\"}\n"
               "{\"text\": \"TTTT text field two\", \"body\": \"BBBB body field two\"}\n"
               "{\"text\": \"TTTT text field three\", \"body\": \"BBBB body field three\"}\n");
    ql_calib_opts o = {.n_samples = 20, .seq_len = 12, .seed = 5};
    char spec[600];
    snprintf(spec, sizeof spec, "%s:field=body", fx("docs.jsonl"));
    ql_calib_set *s = build_ok(spec, g_bytes, &o);
    assert_string_equal(s->sources[0].field, "body");
    assert_int_equal(s->sources[0].n_docs, 3);
    assert_int_equal(s->sources[0].n_skipped, 0);
    bool saw_body = false;
    for (int i = 0; i < s->n_samples; i++) {
        char *t = sample_text(s, g_bytes, i);
        assert_null(strstr(t, "TTTT"));
        assert_null(strstr(t, "text field"));
        saw_body |= strstr(t, "body") != NULL;
        free(t);
    }
    assert_true(saw_body);
    ql_calib_free(s);
    /* default field "text" */
    s = build_ok(fx("docs.jsonl"), g_bytes, &o);
    for (int i = 0; i < s->n_samples; i++) {
        char *t = sample_text(s, g_bytes, i);
        assert_null(strstr(t, "BBBB"));
        free(t);
    }
    ql_calib_free(s);
    /* type=jsonl on a file not named .jsonl; type=text reads the JSON as text */
    write_file("docs.data", "{\"text\": \"from a .data file read as JSONL\"}\n");
    snprintf(spec, sizeof spec, "%s:type=jsonl", fx("docs.data"));
    s = build_ok(spec, g_bytes, &o);
    char *t = sample_text(s, g_bytes, 0);
    assert_null(strchr(t, '{'));
    free(t);
    ql_calib_free(s);
    snprintf(spec, sizeof spec, "%s:type=text", fx("docs.jsonl"));
    s = build_ok(spec, g_bytes, &o);
    assert_int_equal(s->sources[0].n_docs, 1); /* one paragraph */
    ql_calib_free(s);
}

/* Malformed lines are skipped and counted; a source with nothing valid is an error naming it. */
static void test_jsonl_malformed(void **state) {
    (void)state;
    write_file("bad.jsonl",
               "{\"text\": \"good line number one, with enough bytes\"}\n"
               "{\"text\": \"broken json\n"
               "\n"
               "{\"other\": \"no text field here\"}\n"
               "{\"text\": 42}\n"
               "[\"an array\"]\n"
               "{\"text\": \"good line number two, also long enough\"}");  /* no final newline */
    ql_calib_opts o = {.n_samples = 8, .seq_len = 16};
    ql_calib_set *s = build_ok(fx("bad.jsonl"), g_bytes, &o);
    assert_int_equal(s->sources[0].n_docs, 2);
    assert_int_equal(s->sources[0].n_skipped, 4); /* the blank line is not counted */
    assert_int_equal(s->sources[0].first_skipped_line, 2);
    assert_non_null(strstr(s->sources[0].first_skipped_file, "bad.jsonl"));
    ql_calib_free(s);

    write_file("allbad.jsonl", "not json\n{\"body\": \"x\"}\n");
    expect_error(fx("allbad.jsonl"), &o, "allbad.jsonl", "2 malformed");
    char spec[600];
    snprintf(spec, sizeof spec, "%s:field=missing", fx("docs.jsonl"));
    write_file("docs.jsonl", "{\"text\": \"abc\"}\n");
    expect_error(spec, &o, "field 'missing'", "line 1");
}

/* ---------------------------------------------------------------- folders and archives */

static const char *const DOC_A = "Apples are red and green. Apple trees grow in orchards.\n";
static const char *const DOC_B =
    "Bananas are long and yellow. They grow in bunches.\n\nBanana bread is tasty.\n";
static const char *const DOC_C =
    "{\"text\": \"Cherries are small and dark red.\"}\n{\"text\": \"Cherry pie.\"}\n";

static void test_folder(void **state) {
    (void)state;
    write_file("tree/b/b.txt", DOC_B);
    write_file("tree/a.txt", DOC_A);
    write_file("tree/c/d/c.jsonl", DOC_C);
    write_file("tree/.hidden.txt", "HIDDEN HIDDEN HIDDEN HIDDEN\n");
    char bin[64] = "binary\0file with a NUL byte early on";
    FILE *f = fopen(fx("tree/blob.bin"), "wb");
    fwrite(bin, 1, sizeof bin, f);
    fclose(f);
    ql_calib_opts o = {.n_samples = 32, .seq_len = 20, .seed = 1, .mode = QL_CALIB_DOCS};
    ql_calib_set *s = build_ok(fx("tree"), g_bytes, &o);
    const ql_calib_source *c = &s->sources[0];
    assert_int_equal(c->n_files, 3);
    assert_int_equal(c->n_skipped, 1); /* blob.bin */
    assert_int_equal(c->n_docs, 1 + 2 + 2); /* a.txt; b.txt two paragraphs; two JSONL lines */
    assert_int_equal(c->n_bytes, (int64_t)(strlen(DOC_A) + strlen(DOC_B) + strlen(DOC_C)));
    for (int i = 0; i < s->n_samples; i++) {
        char *t = sample_text(s, g_bytes, i);
        assert_null(strstr(t, "HIDDEN"));
        assert_null(strstr(t, "{\"text\""));
        /* docs mode: every sample starts at a document (the byte vocabulary adds a leading space) */
        bool at_doc = !strncmp(t, " Apples", 7) || !strncmp(t, " Bananas", 8) ||
                      !strncmp(t, " Banana bread", 13) || !strncmp(t, " Cherries", 9) ||
                      !strncmp(t, " Cherry pie", 11);
        if (!at_doc) print_error("sample %d does not start at a document: '%s'\n", i, t);
        assert_true(at_doc);
        free(t);
    }
    ql_calib_free(s);
}

/* The same files in a folder, a tar.gz and a zip give the same token streams, so the same samples. */
static void test_archives(void **state) {
    (void)state;
    write_file("same/a.txt", DOC_A);
    write_file("same/b.txt", DOC_B);
    write_file("same/c.jsonl", DOC_C);
    const entry files[] = {{"a.txt", DOC_A, 0}, {"b.txt", DOC_B, 0}, {"c.jsonl", DOC_C, 0}};
    write_archive("same.tar.gz", "tar", "gzip", files, 3);
    write_archive("same.zip", "zip", NULL, files, 3);
    write_archive("same.tar.zst", "tar", "zstd", files, 3);
    ql_calib_opts o = {.n_samples = 16, .seq_len = 24, .seed = 9};
    for (int mode = 0; mode < 2; mode++) {
        o.mode = mode;
        ql_calib_set *ref = build_ok(fx("same"), g_bytes, &o);
        const char *names[] = {"same.tar.gz", "same.zip", "same.tar.zst"};
        for (int k = 0; k < 3; k++) {
            ql_calib_set *s = build_ok(fx(names[k]), g_bytes, &o);
            assert_int_equal(s->sources[0].n_files, 3);
            assert_int_equal(s->sources[0].n_docs, ref->sources[0].n_docs);
            assert_int_equal(s->sources[0].n_tokens, ref->sources[0].n_tokens);
            if (!same_tokens(s, ref)) print_error("%s differs from the folder (mode %d)\n", names[k], mode);
            assert_true(same_tokens(s, ref));
            ql_calib_free(s);
        }
        ql_calib_free(ref);
    }
    /* one compressed file (raw format): a .jsonl.zst is JSONL, a .txt.gz plain text */
    const entry raw_c = {"data", DOC_C, 0}, raw_a = {"data", DOC_A, 0};
    write_archive("one.jsonl.zst", "raw", "zstd", &raw_c, 1);
    write_archive("one.txt.gz", "raw", "gzip", &raw_a, 1);
    o.seq_len = 8;
    ql_calib_set *s = build_ok(fx("one.jsonl.zst"), g_bytes, &o);
    assert_int_equal(s->sources[0].n_docs, 2);
    ql_calib_free(s);
    s = build_ok(fx("one.txt.gz"), g_bytes, &o);
    assert_int_equal(s->sources[0].n_bytes, (int64_t)strlen(DOC_A));
    ql_calib_free(s);
    /* not an archive at all */
    write_file("fake.zip", "this is plain text in a file named .zip\n");
    expect_error(fx("fake.zip"), &o, "fake.zip", NULL);
}

/* Entries past the per-entry or per-archive limits are refused, naming the archive and the entry. */
static void test_bomb_guard(void **state) {
    (void)state;
    char *big = repeat("all work and no play makes a dull bomb\n", 2000); /* ~78 KB, compresses to ~1 KB */
    char *mid = repeat("forty kilobytes of text, give or take.\n", 1000);  /* ~39 KB */
    const entry one[] = {{"small.txt", DOC_A, 0}, {"inner/bomb.txt", big, 0}};
    const entry many[] = {{"part1.txt", mid, 0}, {"part2.txt", mid, 0}, {"part3.txt", mid, 0}};
    write_archive("bomb.zip", "zip", NULL, one, 2);
    write_archive("bomb.tar.gz", "tar", "gzip", one, 2);
    write_archive("many.tar.gz", "tar", "gzip", many, 3);
    ql_calib_opts o = {.n_samples = 4, .seq_len = 16, .max_entry_bytes = 64 << 10,
                       .max_archive_bytes = 100 << 10};
    expect_error(fx("bomb.zip"), &o, "bomb.zip", "inner/bomb.txt");
    expect_error(fx("bomb.tar.gz"), &o, "bomb.tar.gz", "inner/bomb.txt");
    assert_non_null(strstr(ql_last_error(), "limit"));
    expect_error(fx("many.tar.gz"), &o, "many.tar.gz", "part3.txt");
    assert_non_null(strstr(ql_last_error(), "per archive"));
    /* a raw .gz has no declared size: the limit is met while expanding */
    const entry raw = {"data", big, 0};
    write_archive("bomb.txt.gz", "raw", "gzip", &raw, 1);
    expect_error(fx("bomb.txt.gz"), &o, "bomb.txt.gz", "expands past");
    /* with the limits raised the same archives are read */
    ql_calib_opts ok = {.n_samples = 4, .seq_len = 16, .max_entry_bytes = 1 << 20};
    ql_calib_set *s = build_ok(fx("bomb.zip"), g_bytes, &ok);
    assert_int_equal(s->sources[0].n_bytes, (int64_t)(strlen(DOC_A) + strlen(big)));
    ql_calib_free(s);
    /* max_bytes stops reading (no error), marking the source truncated */
    ql_calib_opts cap = {.n_samples = 4, .seq_len = 16, .max_bytes = 1000};
    s = build_ok(fx("many.tar.gz"), g_bytes, &cap);
    assert_true(s->sources[0].truncated);
    assert_int_equal(s->sources[0].n_bytes, 1000);
    ql_calib_free(s);
    free(big);
    free(mid);
}

/* ---------------------------------------------------------------- sampling */

static void test_weights_and_determinism(void **state) {
    (void)state;
    char *a = repeat("aaaa aaa aa a aaaaa\n", 300), *b = repeat("bbb bbbb b bb bbbbbb\n", 300);
    char *c = repeat("cc c cccc ccc cc\n", 300);
    write_file("wa.txt", a);
    write_file("wb.txt", b);
    write_file("wc.txt", c);
    char spec[1600];
    snprintf(spec, sizeof spec, "%s@0.7+%s@0.2+%s@0.1", fx("wa.txt"), fx("wb.txt"), fx("wc.txt"));
    ql_calib_opts o = {.n_samples = 200, .seq_len = 32, .seed = 42};
    ql_calib_set *s = build_ok(spec, g_bytes, &o);
    assert_int_equal(s->n_sources, 3);
    int count[3] = {0};
    for (int i = 0; i < s->n_samples; i++) {
        int src = s->sample_source[i];
        assert_true(src >= 0 && src < 3);
        count[src]++;
        assert_int_equal(s->tokens[(size_t)i * s->seq_len], ql_tokenizer_bos(g_bytes)); /* BOS first */
        char *t = sample_text(s, g_bytes, i);
        char letter = "abc"[src], other1 = "bca"[src], other2 = "cab"[src];
        assert_non_null(strchr(t, letter));
        assert_null(strchr(t, other1));
        assert_null(strchr(t, other2));
        free(t);
    }
    assert_int_equal(count[0], 140);
    assert_int_equal(count[1], 40);
    assert_int_equal(count[2], 20);
    for (int i = 0; i < 3; i++) assert_int_equal(s->sources[i].n_samples, count[i]);
    assert_true(s->sources[0].weight > 0.699 && s->sources[0].weight < 0.701);
    /* the set is shuffled: the first 20 samples are not all from one source */
    int first_src = s->sample_source[0];
    bool mixed = false;
    for (int i = 1; i < 20; i++) mixed |= s->sample_source[i] != first_src;
    assert_true(mixed);

    ql_calib_set *again = build_ok(spec, g_bytes, &o);
    assert_true(same_tokens(s, again));
    ql_calib_free(again);
    o.seed = 43;
    ql_calib_set *other = build_ok(spec, g_bytes, &o);
    assert_false(same_tokens(s, other));
    ql_calib_free(other);
    ql_calib_free(s);
    free(a);
    free(b);
    free(c);
}

/* Docs mode on plain text: samples start at paragraph starts; random mode mostly does not. */
static void test_docs_mode_paragraphs(void **state) {
    (void)state;
    char text[8192] = "";
    for (int i = 0; i < 40; i++) {
        char p[200];
        snprintf(p, sizeof p, "Para%02d starts here and goes on for a while with words.\nSecond line.\n%s", i,
                 i % 3 ? "\n" : " \n\t\n\n"); /* blank lines may hold spaces */
        strcat(text, p);
    }
    write_file("paras.txt", text);
    ql_calib_opts o = {.n_samples = 30, .seq_len = 40, .seed = 7, .mode = QL_CALIB_DOCS};
    ql_calib_set *s = build_ok(fx("paras.txt"), g_bytes, &o);
    assert_int_equal(s->sources[0].n_docs, 40);
    bool seen[40] = {false};
    for (int i = 0; i < s->n_samples; i++) {
        char *t = sample_text(s, g_bytes, i);
        int k = -1;
        assert_int_equal(sscanf(t, " Para%d", &k), 1);
        assert_true(k >= 0 && k < 40);
        assert_false(seen[k]); /* without replacement while there are documents enough */
        seen[k] = true;
        free(t);
    }
    ql_calib_free(s);
    o.mode = QL_CALIB_RANDOM;
    s = build_ok(fx("paras.txt"), g_bytes, &o);
    int at_start = 0;
    for (int i = 0; i < s->n_samples; i++) {
        char *t = sample_text(s, g_bytes, i);
        at_start += !strncmp(t, " Para", 5);
        free(t);
    }
    assert_true(at_start < s->n_samples / 2);
    ql_calib_free(s);
}

static void test_ngram_overlap(void **state) {
    (void)state;
    int32_t toks[2 * 6] = {1, 10, 11, 12, 13, 14, 1, 20, 21, 22, 23, 24};
    ql_calib_set set = {.n_samples = 2, .seq_len = 6, .tokens = toks, .bos = 1};
    const int32_t ref_all[] = {10, 11, 12, 13, 14, 99, 20, 21, 22, 23, 24};
    const int32_t ref_half[] = {10, 11, 12, 13, 14};
    const int32_t ref_none[] = {14, 13, 12, 11, 10};
    int64_t n = 0;
    assert_true(ql_calib_ngram_overlap(&set, ref_all, 11, 3, &n) == 1.0);
    assert_int_equal(n, 6); /* 3 three-grams per sample, BOS left out */
    assert_true(ql_calib_ngram_overlap(&set, ref_half, 5, 3, &n) == 0.5);
    assert_true(ql_calib_ngram_overlap(&set, ref_none, 5, 3, &n) == 0.0);
    assert_true(ql_calib_ngram_overlap(&set, ref_none, 5, 9, &n) == 0.0);
    assert_int_equal(n, 0);
    assert_int_equal(ql_calib_distinct_tokens(&set, 100), 11);
    assert_int_equal(ql_calib_distinct_tokens(&set, 15), 6); /* ids >= n_vocab not counted */
}

/* ---------------------------------------------------------------- ../shared: stories260K */

static ql_model *load_stories(void) {
    char path[512];
    if (!shared_path(path, sizeof path, "models/stories260K.gguf")) return NULL;
    ql_model *m = NULL;
    assert_int_equal(ql_model_load(path, &m), QL_OK);
    assert_non_null(m->tok);
    return m;
}

static void test_shared_mix(void **state) {
    (void)state;
    char c4[512], wiki[512];
    ql_model *m = load_stories();
    if (!m) skip();
    if (!shared_path(c4, sizeof c4, "data/c4-sample.jsonl") ||
        !shared_path(wiki, sizeof wiki, "data/wikitext-2-valid.raw")) {
        ql_model_free(m);
        skip();
    }
    char spec[1200];
    snprintf(spec, sizeof spec, "%s:field=text@0.7+%s@0.3", c4, wiki);
    ql_calib_opts o = {.n_samples = 64, .seq_len = 128, .seed = 1234};
    ql_calib_set *a = build_ok(spec, m->tok, &o), *b = build_ok(spec, m->tok, &o);
    assert_true(same_tokens(a, b));
    assert_int_equal(a->sources[0].n_samples, 45); /* 44.8 -> 45, 19.2 -> 19 */
    assert_int_equal(a->sources[1].n_samples, 19);
    assert_int_equal(a->sources[0].n_docs, 1000);  /* c4-sample holds 1000 documents */
    assert_int_equal(a->sources[0].n_skipped, 0);
    assert_true(a->sources[0].n_tokens > 100000 && a->sources[1].n_tokens > 100000);
    int64_t distinct = ql_calib_distinct_tokens(a, ql_tokenizer_n_vocab(m->tok));
    assert_true(distinct > 100 && distinct <= 512);
    o.seed = 1235;
    ql_calib_set *c = build_ok(spec, m->tok, &o);
    assert_false(same_tokens(a, c));
    ql_calib_free(a);
    ql_calib_free(b);
    ql_calib_free(c);
    ql_model_free(m);
}

/* Docs mode on c4-sample.jsonl: every sample is BOS + the start of one of the JSONL documents. */
static void test_shared_docs(void **state) {
    (void)state;
    char c4[512];
    ql_model *m = load_stories();
    if (!m) skip();
    if (!shared_path(c4, sizeof c4, "data/c4-sample.jsonl")) {
        ql_model_free(m);
        skip();
    }
    enum { K = 8 };
    FILE *f = fopen(c4, "rb");
    assert_non_null(f);
    int32_t (*heads)[K] = calloc(2000, sizeof *heads);
    int nd = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0 && nd < 2000) {
        json_t *j = json_loadb(line, (size_t)len, 0, NULL);
        json_t *t = j ? json_object_get(j, "text") : NULL;
        if (t && json_is_string(t)) {
            size_t tl = json_string_length(t);
            int32_t *ids;
            int64_t n;
            /* a long prefix tokenizes its first K tokens as the whole document does */
            ql_status st = ql_tokenize(m->tok, json_string_value(t), tl < 400 ? tl : 400, false, &ids, &n);
            assert_int_equal(st, QL_OK);
            if (n >= K) memcpy(heads[nd++], ids, sizeof heads[0]);
            free(ids);
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    assert_true(nd > 900);
    ql_calib_opts o = {.n_samples = 50, .seq_len = 64, .seed = 3, .mode = QL_CALIB_DOCS};
    ql_calib_set *s = build_ok(c4, m->tok, &o);
    int32_t bos = ql_tokenizer_bos(m->tok);
    for (int i = 0; i < s->n_samples; i++) {
        const int32_t *row = s->tokens + (size_t)i * s->seq_len;
        assert_int_equal(row[0], bos);
        bool found = false;
        for (int d = 0; d < nd && !found; d++) found = !memcmp(row + 1, heads[d], sizeof heads[0]);
        if (!found) print_error("sample %d does not start a c4 document\n", i);
        assert_true(found);
    }
    ql_calib_free(s);
    free(heads);
    ql_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_jsonl_field),
        cmocka_unit_test(test_jsonl_malformed),
        cmocka_unit_test(test_folder),
        cmocka_unit_test(test_archives),
        cmocka_unit_test(test_bomb_guard),
        cmocka_unit_test(test_weights_and_determinism),
        cmocka_unit_test(test_docs_mode_paragraphs),
        cmocka_unit_test(test_ngram_overlap),
        cmocka_unit_test(test_shared_mix),
        cmocka_unit_test(test_shared_docs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
