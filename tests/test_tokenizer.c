/* test_tokenizer.c — SPM and byte-level BPE tokenizers against llama.cpp's ids for stories260K
 * (../shared), hand-derived ids for the fixtures in tests/data/tok, the tokenizer.json / tokenizer.bin /
 * byte-vocabulary translators, and rejection of malformed inputs with an error naming the file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/gguf.h"
#include "tests/test_util.h"
#include "core/tokenizer.h"

#define FIX "tests/data/tok/"
static const char PROMPT[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

static void *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

static void expect_ids(const ql_tokenizer *t, const char *text, size_t len, bool special, const int32_t *want,
                       int64_t n_want) {
    int32_t *ids = NULL;
    int64_t n = -1;
    assert_int_equal(ql_tokenize(t, text, len, special, &ids, &n), QL_OK);
    if (n != n_want) {
        print_error("'%s': got %lld ids:", text, (long long)n);
        for (int64_t i = 0; i < n; i++) print_error(" %d", ids[i]);
        print_error("\n");
    }
    assert_int_equal(n, n_want);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] != want[i])
            print_error("'%s': id %lld is %d, want %d\n", text, (long long)i, ids[i], want[i]);
        assert_int_equal(ids[i], want[i]);
    }
    free(ids);
}
#define EXPECT(t, text, special, ...) do { \
    const int32_t want_[] = {__VA_ARGS__}; \
    expect_ids(t, text, strlen(text), special, want_, (int64_t)(sizeof want_ / sizeof want_[0])); \
} while (0)

/* Concatenated pieces of tokenize(text, add_special=false). Caller frees. */
static char *detok(const ql_tokenizer *t, const char *text, size_t len, size_t *out_len) {
    int32_t *ids;
    int64_t n;
    assert_int_equal(ql_tokenize(t, text, len, false, &ids, &n), QL_OK);
    size_t cap = 16 * (size_t)n + 16, k = 0;
    char *s = malloc(cap);
    for (int64_t i = 0; i < n; i++) {
        int l = ql_token_to_piece(t, ids[i], s + k, (int)(cap - k));
        assert_true(l >= 0 && (size_t)l < cap - k);
        k += (size_t)l;
    }
    free(ids);
    *out_len = k;
    return s;
}

static ql_tokenizer *load_stories(ql_gguf **gp) {
    char path[1024];
    if (!shared_path(path, sizeof path, "models/stories260K.gguf")) return NULL;
    ql_gguf *g;
    assert_int_equal(ql_gguf_open(path, &g), QL_OK);
    ql_tokenizer *t;
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    if (gp) *gp = g;
    else ql_gguf_free(g);
    return t;
}

/* ---------------------------------------------------------------- stories260K (llama.cpp reference) */

static void test_stories_prompt(void **state) {
    (void)state;
    char path[1024];
    ql_tokenizer *t = load_stories(NULL);
    if (!t) skip();
    if (!shared_path(path, sizeof path, "testdata/stories260K-logits/tokens.txt")) {
        ql_tokenizer_free(t);
        skip();
    }
    assert_int_equal(ql_tokenizer_kind(t), QL_TOK_SPM);
    assert_int_equal(ql_tokenizer_n_vocab(t), 512);
    assert_int_equal(ql_tokenizer_bos(t), 1);
    assert_int_equal(ql_tokenizer_eos(t), 2);
    assert_true(ql_tokenizer_add_bos(t));
    char *txt = slurp(path, NULL);
    assert_non_null(txt);
    int32_t want[64];
    int64_t nw = 0;
    for (char *p = txt, *e; nw < 64; p = e) {
        long v = strtol(p, &e, 10);
        if (e == p) break;
        want[nw++] = (int32_t)v;
    }
    free(txt);
    assert_int_equal(nw, 32);
    expect_ids(t, PROMPT, strlen(PROMPT), true, want, nw);
    /* without BOS: the same ids minus the first */
    expect_ids(t, PROMPT, strlen(PROMPT), false, want + 1, nw - 1);
    /* pieces as the README lists them */
    static const char *pieces[] = {
        " Once", " upon", " a", " time", ",", " there", " was", " a", " little", " g", "ir", "l", " named",
        " Lily", ".", " She", " lo", "ved", " to", " play", " ", "out", "s", "id", "e", " in", " the", " p",
        "ar", "k", "."};
    for (int i = 1; i < 32; i++) {
        char buf[64];
        int l = ql_token_to_piece(t, want[i], buf, sizeof buf);
        assert_int_equal(l, (int)strlen(pieces[i - 1]));
        assert_memory_equal(buf, pieces[i - 1], (size_t)l);
    }
    char buf[8];
    assert_int_equal(ql_token_to_piece(t, 1, buf, sizeof buf), 3); /* control: its text */
    assert_memory_equal(buf, "<s>", 3);
    assert_int_equal(ql_token_to_piece(t, 3 + 0x0A, buf, sizeof buf), 1); /* <0x0A> */
    assert_int_equal(buf[0], '\n');
    assert_int_equal(ql_token_to_piece(t, -1, buf, sizeof buf), -1);
    assert_int_equal(ql_token_to_piece(t, 512, buf, sizeof buf), -1);
    /* truncated output still reports the full length */
    assert_int_equal(ql_token_to_piece(t, want[9], buf, 2), (int)strlen(" little"));
    assert_memory_equal(buf, " l", 2);
    /* empty text: only BOS */
    EXPECT(t, "", true, 1);
    int32_t *ids;
    int64_t n;
    assert_int_equal(ql_tokenize(t, "", 0, false, &ids, &n), QL_OK);
    assert_int_equal(n, 0);
    free(ids);
    ql_tokenizer_free(t);
}

static void test_stories_round_trip(void **state) {
    (void)state;
    ql_tokenizer *t = load_stories(NULL);
    if (!t) skip();
    static const char *texts[] = {
        "Hello world",
        "  two leading spaces and trailing  ",
        "line one\nline two\n\n\ttab",
        "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 na\xc3\xafve",
        "bad \x80 bytes \xc3", /* (a bad lead byte like 0xFF would swallow the next "▁", as in llama.cpp) */
        "Once upon a time, there was a little girl named Lily.",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        size_t len = strlen(texts[i]), n;
        char *back = detok(t, texts[i], len, &n);
        /* SPM adds the leading space itself */
        assert_int_equal(n, len + 1);
        assert_int_equal(back[0], ' ');
        assert_memory_equal(back + 1, texts[i], len);
        free(back);
    }
    ql_tokenizer_free(t);
}

static void test_stories_corpus(void **state) {
    (void)state;
    char path[1024];
    ql_tokenizer *t = load_stories(NULL);
    if (!t) skip();
    if (!shared_path(path, sizeof path, "data/tinystories-valid.txt")) {
        ql_tokenizer_free(t);
        skip();
    }
    size_t len;
    char *text = slurp(path, &len);
    assert_non_null(text);
    int32_t *ids;
    int64_t n;
    double t0 = ql_time_s();
    assert_int_equal(ql_tokenize(t, text, len, true, &ids, &n), QL_OK);
    double dt = ql_time_s() - t0;
    printf("tinystories-valid.txt: %zu bytes -> %lld tokens (%lld chunks of 256) in %.3f s\n", len,
           (long long)n, (long long)(n / 256), dt);
    /* llama.cpp's perplexity tool gets 1535 chunks of 256 from this text */
    assert_int_equal(n / 256, 1535);
    assert_int_equal(ids[0], 1);
    for (int64_t i = 0; i < n; i++) assert_true(ids[i] >= 0 && ids[i] < 512);
    free(ids);
    free(text);
    ql_tokenizer_free(t);
}

/* llama2.c tokenizer.bin written from the GGUF vocabulary the way llama2.c's export.py does
 * (BOS/EOS as "\n<s>\n"/"\n</s>\n", U+2581 as ' '), translated back, tokenizes identically. */
static void write_llama2c(const char *path, const ql_gguf *g) {
    uint64_t n;
    const ql_gguf_value *tok = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n);
    const ql_gguf_value *sc = ql_gguf_get_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, NULL);
    assert_non_null(tok);
    assert_non_null(sc);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    int32_t maxlen = 0;
    for (uint64_t i = 0; i < n; i++)
        if ((int64_t)tok[i].v.str.len > maxlen) maxlen = (int32_t)tok[i].v.str.len;
    fwrite(&maxlen, 4, 1, f);
    for (uint64_t i = 0; i < n; i++) {
        char buf[256];
        size_t k = 0;
        const char *s = i == 1 ? "\n<s>\n" : i == 2 ? "\n</s>\n" : tok[i].v.str.s;
        for (size_t j = 0; s[j];) {
            if (strncmp(s + j, "\xe2\x96\x81", 3) == 0) { buf[k++] = ' '; j += 3; }
            else buf[k++] = s[j++];
        }
        float score = (float)sc[i].v.f;
        int32_t len = (int32_t)k;
        fwrite(&score, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(buf, 1, k, f);
    }
    fclose(f);
}

static void test_llama2c_round_trip(void **state) {
    (void)state;
    ql_gguf *g;
    ql_tokenizer *t = load_stories(&g);
    if (!t) skip();
    char path[] = "/tmp/ql_tok_l2c_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_llama2c(path, g);
    ql_gguf *g2 = ql_gguf_new();
    assert_int_equal(ql_tokenizer_llama2c_to_gguf(path, 512, g2), QL_OK);
    /* same tokens and types as llama.cpp's own conversion of this model */
    uint64_t n1, n2;
    const ql_gguf_value *a = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n1);
    const ql_gguf_value *b = ql_gguf_get_arr(g2, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n2);
    assert_int_equal(n1, n2);
    for (uint64_t i = 0; i < n1; i++) assert_string_equal(a[i].v.str.s, b[i].v.str.s);
    a = ql_gguf_get_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, &n1);
    b = ql_gguf_get_arr(g2, "tokenizer.ggml.token_type", QL_GGUF_I32, &n2);
    assert_int_equal(n1, n2);
    for (uint64_t i = 0; i < n1; i++) assert_int_equal(a[i].v.i, b[i].v.i);
    ql_tokenizer *t2;
    assert_int_equal(ql_tokenizer_from_gguf(g2, &t2), QL_OK);
    int32_t *x, *y;
    int64_t nx, ny;
    assert_int_equal(ql_tokenize(t, PROMPT, strlen(PROMPT), true, &x, &nx), QL_OK);
    assert_int_equal(ql_tokenize(t2, PROMPT, strlen(PROMPT), true, &y, &ny), QL_OK);
    assert_int_equal(nx, ny);
    assert_memory_equal(x, y, (size_t)nx * sizeof *x);
    free(x);
    free(y);
    /* a file with more tokens than asked for is read up to n_vocab, like llama2.c */
    ql_gguf *g3 = ql_gguf_new();
    assert_int_equal(ql_tokenizer_llama2c_to_gguf(path, 300, g3), QL_OK);
    ql_gguf_get_arr(g3, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n1);
    assert_int_equal(n1, 300);
    ql_gguf_free(g3);
    ql_tokenizer_free(t2);
    ql_gguf_free(g2);
    unlink(path);
    ql_gguf_free(g);
    ql_tokenizer_free(t);
}

/* ---------------------------------------------------------------- byte-level BPE fixture */

/* tests/data/tok/bpe-bytelevel.json: ids 0..255 are the GPT-2 byte-level characters in byte order
 * (id == byte value; ' ' is "Ġ" = 32, '\n' is "Ċ" = 10), then merges (rank r makes id 256 + r):
 *   0 Ġ t→Ġt 256   1 h e→he 257   2 Ġt he→Ġthe 258   3 l l→ll 259   4 e l→el 260   5 he ll→hell 261
 *   6 hell o→hello 262   7 Ġ w→Ġw 263   8 o r→or 264   9 Ġw or→Ġwor 265   10 1 2→12 266   11 3 4→34 267
 * added: 268 <|endoftext|> (special), 269 <sep> (not special: user-defined), 270 <|begin_of_text|>
 * (special, put in front by the TemplateProcessing). Split regex: Llama-3's → pre "llama-bpe". */
static ql_tokenizer *load_bpe_fixture(const char *pre) {
    ql_gguf *g = ql_gguf_new();
    ql_status s = ql_tokenizer_json_to_gguf(FIX "bpe-bytelevel.json", g);
    if (s) print_error("%s\n", ql_last_error());
    assert_int_equal(s, QL_OK);
    assert_string_equal(ql_gguf_get_str(g, "tokenizer.ggml.model"), "gpt2");
    if (!pre) assert_string_equal(ql_gguf_get_str(g, "tokenizer.ggml.pre"), "llama-bpe");
    else ql_gguf_set_str(g, "tokenizer.ggml.pre", pre);
    ql_tokenizer *t;
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    ql_gguf_free(g);
    return t;
}

static void test_bpe_llama3(void **state) {
    (void)state;
    ql_tokenizer *t = load_bpe_fixture(NULL);
    assert_int_equal(ql_tokenizer_kind(t), QL_TOK_BPE);
    assert_int_equal(ql_tokenizer_n_vocab(t), 271);
    assert_int_equal(ql_tokenizer_bos(t), 270);
    assert_true(ql_tokenizer_add_bos(t));
    /* words "hello" (a whole token: ignore_merges), " the" (Ġ t → Ġt, h e → he, Ġt he → Ġthe),
     * " world" (Ġ w and o r, then Ġw or; l, d stay) */
    EXPECT(t, "hello the world", false, 262, 258, 265, 108, 100);
    EXPECT(t, "hello the world", true, 270, 262, 258, 265, 108, 100);
    /* rank decides, not position: l l (3) before e l (4), after which "e ll" has no merge */
    EXPECT(t, "ell", false, 101, 259);
    /* Llama-3 splits digits in threes: "123" "45"; 1 2 merges, 3 4 cannot across the split */
    EXPECT(t, "12345", false, 266, 51, 52, 53);
    /* contractions are their own words; "'S" too (case-insensitive) */
    EXPECT(t, "it's IT'S", false, 105, 116, 39, 115, 32, 73, 84, 39, 83);
    /* newlines: "a" "\n\n" "b"; two spaces: " " then " b" */
    EXPECT(t, "a\n\nb", false, 97, 10, 10, 98);
    EXPECT(t, "a  b", false, 97, 32, 32, 98);
    /* user-defined added tokens are split out; special (control) ones are plain text */
    EXPECT(t, "a<sep>b", false, 97, 269, 98);
    EXPECT(t, "<|endoftext|>", false, 60, 124, 101, 110, 100, 111, 102, 116, 101, 120, 116, 124, 62);
    /* invalid UTF-8 becomes U+FFFD (EF BF BD), as in llama.cpp */
    EXPECT(t, "\xff", false, 0xEF, 0xBF, 0xBD);
    /* pieces: byte-level characters back to bytes */
    static const char *texts[] = {"hello the world", "a\n\tb  c ", "caf\xc3\xa9 12345 it's", "x<sep>y"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        size_t n, len = strlen(texts[i]);
        char *back = detok(t, texts[i], len, &n);
        assert_int_equal(n, len);
        assert_memory_equal(back, texts[i], len);
        free(back);
    }
    char buf[32];
    assert_int_equal(ql_token_to_piece(t, 258, buf, sizeof buf), 4);
    assert_string_equal(buf, " the");
    assert_int_equal(ql_token_to_piece(t, 268, buf, sizeof buf), 13);
    assert_string_equal(buf, "<|endoftext|>");
    ql_tokenizer_free(t);
}

static void test_bpe_other_pre(void **state) {
    (void)state;
    /* GPT-2 regex: "12345" is one word, so 1 2 (rank 10) and 3 4 (rank 11) both merge */
    ql_tokenizer *t = load_bpe_fixture("gpt2");
    EXPECT(t, "12345", false, 266, 267, 53);
    /* no ignore_merges, but the merges still build "hello"; BOS comes from the converted key */
    EXPECT(t, "hello the world", true, 270, 262, 258, 265, 108, 100);
    EXPECT(t, "it's", false, 105, 116, 39, 115);
    ql_tokenizer_free(t);
    /* Qwen2 regex: single digits */
    t = load_bpe_fixture("qwen2");
    EXPECT(t, "12345", false, 49, 50, 51, 52, 53);
    EXPECT(t, "hello the world", false, 262, 258, 265, 108, 100);
    ql_tokenizer_free(t);
    /* llama.cpp's "default" pre-tokenizer: punctuation runs, GPT-2, digit runs, then 3-digit groups */
    t = load_bpe_fixture("default");
    EXPECT(t, "12345", false, 266, 51, 52, 53);
    EXPECT(t, "a+=b", false, 97, 43, 61, 98);
    ql_tokenizer_free(t);
    /* GPT-2 keeps " 12" one word (Ġ 1 2 -> Ġ, 12); SmolLM and DeepSeek Coder split digits first */
    t = load_bpe_fixture("gpt2");
    EXPECT(t, "x 12", false, 120, 32, 266);
    ql_tokenizer_free(t);
    static const char *digit_first[] = {"smollm", "starcoder", "command-r", "deepseek-coder"};
    for (size_t i = 0; i < sizeof digit_first / sizeof digit_first[0]; i++) {
        t = load_bpe_fixture(digit_first[i]);
        EXPECT(t, "x 12", false, 120, 32, 49, 50);
        EXPECT(t, "hello the world", false, 262, 258, 265, 108, 100);
        ql_tokenizer_free(t);
    }
    /* Tekken (Mistral Nemo): single digits, whole-word tokens first (ignore_merges), camel case split */
    t = load_bpe_fixture("tekken");
    EXPECT(t, "12345", false, 49, 50, 51, 52, 53);
    EXPECT(t, "hello the world", false, 262, 258, 265, 108, 100);
    ql_tokenizer_free(t);
    /* GPT-4o / Llama 4: digits in threes, "'s" stays on its word */
    t = load_bpe_fixture("gpt-4o");
    EXPECT(t, "12345", false, 266, 51, 52, 53);
    EXPECT(t, "it's", false, 105, 116, 39, 115);
    ql_tokenizer_free(t);
    /* BLOOM / Poro: a space goes with the next word; . , ! ? split off */
    t = load_bpe_fixture("bloom");
    EXPECT(t, "a b.c", false, 97, 32, 98, 46, 99);
    EXPECT(t, "the world", false, 116, 257, 265, 108, 100);
    ql_tokenizer_free(t);
    /* Falcon: punctuation runs, GPT-2, then 3-digit groups */
    t = load_bpe_fixture("falcon");
    EXPECT(t, "a+=b", false, 97, 43, 61, 98);
    ql_tokenizer_free(t);
}

/* The pre-tokenizers with a tokenizer.json spelling survive GGUF -> tokenizer.json -> GGUF: SmolLM's
 * Digits + ByteLevel, Tekken's and GPT-4o's Split regexes. */
static void test_bpe_pre_json_round_trip(void **state) {
    (void)state;
    static const char *pres[] = {"smollm", "tekken", "gpt-4o", "llama-bpe", "qwen2"};
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++) {
        ql_gguf *g = ql_gguf_new();
        assert_int_equal(ql_tokenizer_json_to_gguf(FIX "bpe-bytelevel.json", g), QL_OK);
        ql_gguf_set_str(g, "tokenizer.ggml.pre", pres[i]);
        char *json = NULL;
        ql_status s = ql_tokenizer_gguf_to_json(g, &json);
        if (s) print_error("%s: %s\n", pres[i], ql_last_error());
        assert_int_equal(s, QL_OK);
        char path[] = "/tmp/qlab_tok_pre_XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
        close(fd);
        free(json);
        ql_gguf *g2 = ql_gguf_new();
        s = ql_tokenizer_json_to_gguf(path, g2);
        if (s) print_error("%s: %s\n", pres[i], ql_last_error());
        assert_int_equal(s, QL_OK);
        assert_string_equal(ql_gguf_get_str(g2, "tokenizer.ggml.pre"), pres[i]);
        ql_tokenizer *a, *b;
        assert_int_equal(ql_tokenizer_from_gguf(g, &a), QL_OK);
        assert_int_equal(ql_tokenizer_from_gguf(g2, &b), QL_OK);
        static const char text[] = "hello the world 12345 it's x 12 heLLo";
        int32_t *ia, *ib;
        int64_t na, nb;
        assert_int_equal(ql_tokenize(a, text, strlen(text), true, &ia, &na), QL_OK);
        assert_int_equal(ql_tokenize(b, text, strlen(text), true, &ib, &nb), QL_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(ia, ib, (size_t)na * sizeof *ia);
        free(ia);
        free(ib);
        ql_tokenizer_free(a);
        ql_tokenizer_free(b);
        ql_gguf_free(g2);
        ql_gguf_free(g);
        unlink(path);
    }
}

/* tests/data/tok/spm-bpe.json: a Llama-2 style (SentencePiece-converted, byte_fallback) BPE:
 * 0 <unk> 1 <s> 2 </s>, 3..258 <0x00>..<0xFF>, merges ▁ t→▁t 259, h e→he 260, ▁t he→▁the 261,
 * then single characters ▁ 262, t 263, h 264, e 265, a 266. Scores = -rank keep merge order. */
static void test_spm_from_json(void **state) {
    (void)state;
    ql_gguf *g = ql_gguf_new();
    ql_status s = ql_tokenizer_json_to_gguf(FIX "spm-bpe.json", g);
    if (s) print_error("%s\n", ql_last_error());
    assert_int_equal(s, QL_OK);
    assert_string_equal(ql_gguf_get_str(g, "tokenizer.ggml.model"), "llama");
    uint64_t n;
    const ql_gguf_value *sc = ql_gguf_get_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, &n);
    const ql_gguf_value *ty = ql_gguf_get_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, &n);
    assert_non_null(sc);
    assert_non_null(ty);
    assert_int_equal(n, 267);
    assert_true(sc[259].v.f == 0.0 && sc[260].v.f == -1.0 && sc[261].v.f == -2.0);
    assert_int_equal(ty[0].v.i, 2); /* model.unk_token, though also an added special token */
    assert_int_equal(ty[1].v.i, 3);
    assert_int_equal(ty[3 + 0x41].v.i, 6);
    assert_int_equal(ty[262].v.i, 1);
    ql_tokenizer *t;
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    ql_gguf_free(g);
    assert_int_equal(ql_tokenizer_kind(t), QL_TOK_SPM);
    assert_int_equal(ql_tokenizer_bos(t), 1);
    assert_int_equal(ql_tokenizer_eos(t), 2);
    /* "▁the▁a": ▁t (score 0) first, then he (-1), then ▁t he (-2); "▁a" is no token */
    EXPECT(t, "the a", false, 261, 262, 266);
    EXPECT(t, "the a", true, 1, 261, 262, 266);
    /* 'x' and '\n' are not in the vocabulary: byte fallback */
    EXPECT(t, "the x", false, 261, 262, 3 + 'x');
    EXPECT(t, "\n", false, 262, 3 + '\n');
    size_t len;
    char *back = detok(t, "the\nhat", 7, &len);
    assert_int_equal(len, 8);
    assert_memory_equal(back, " the\nhat", 8);
    free(back);
    ql_tokenizer_free(t);
}

/* tests/data/tok/gemma-spm.json: Gemma's layout (SentencePiece-converted BPE, byte_fallback; a Replace
 * normalizer without Prepend, so no dummy space prefix — llama.cpp's converter writes
 * add_space_prefix = false for Gemma): 0 <pad> 1 <eos> 2 <bos> 3 <unk>, 4..259 <0x00>..<0xFF>,
 * merges ▁ t→▁t 260, h e→he 261, ▁t he→▁the 262, single ▁ 263 t 264 h 265 e 266 a 267, added
 * 268 <start_of_turn> 269 <end_of_turn> (special) and 270 <img> (not special). */
static ql_tokenizer *load_gemma_fixture(void) {
    ql_gguf *g = ql_gguf_new();
    ql_status s = ql_tokenizer_json_to_gguf(FIX "gemma-spm.json", g);
    if (s) print_error("%s\n", ql_last_error());
    assert_int_equal(s, QL_OK);
    assert_string_equal(ql_gguf_get_str(g, "tokenizer.ggml.model"), "llama");
    bool b = true;
    assert_true(ql_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b));
    assert_false(b);
    int64_t id;
    assert_true(ql_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &id) && id == 2);
    assert_true(ql_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &id) && id == 1);
    assert_true(ql_gguf_get_int(g, "tokenizer.ggml.unknown_token_id", &id) && id == 3);
    uint64_t n;
    const ql_gguf_value *ty = ql_gguf_get_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, &n);
    assert_non_null(ty);
    assert_int_equal(ty[268].v.i, 3); /* control */
    assert_int_equal(ty[270].v.i, 4); /* user-defined */
    assert_int_equal(ty[4 + 'A'].v.i, 6);
    ql_tokenizer *t;
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    ql_gguf_free(g);
    return t;
}

static void test_gemma_spm(void **state) {
    (void)state;
    ql_tokenizer *t = load_gemma_fixture();
    assert_int_equal(ql_tokenizer_kind(t), QL_TOK_SPM);
    assert_int_equal(ql_tokenizer_bos(t), 2);
    assert_int_equal(ql_tokenizer_eos(t), 1);
    assert_true(ql_tokenizer_add_bos(t));
    /* no dummy prefix: "the▁a" — "▁t" cannot form, h e merges; the Llama-2 fixture gives ▁the here */
    EXPECT(t, "the a", false, 264, 261, 263, 267);
    EXPECT(t, "the a", true, 2, 264, 261, 263, 267);
    /* a leading space is the text's own: ▁ t (rank 0), h e (1), ▁t he (2) */
    EXPECT(t, " the a", false, 262, 263, 267);
    /* byte fallback for characters outside the vocabulary, per UTF-8 byte */
    EXPECT(t, "x\xc3\xa9", false, 4 + 'x', 4 + 0xc3, 4 + 0xa9);
    /* a user-defined token splits the text; no prefix after it either */
    EXPECT(t, "a<img>the", false, 267, 270, 264, 261);
    /* control tokens are plain text without parse_special: '<' etc. go to bytes */
    EXPECT(t, "<eos>", false, 4 + '<', 266, 4 + 'o', 4 + 's', 4 + '>');
    size_t len;
    char *back = detok(t, "the a", 5, &len);
    assert_int_equal(len, 5); /* nothing to strip: the pieces are the text */
    assert_memory_equal(back, "the a", 5);
    free(back);
    ql_tokenizer_free(t);
}

/* tests/data/tok/phi3-spm.json: Phi-3's layout — the Llama-2 vocabulary of spm-bpe.json with a Metaspace
 * pre-tokenizer (prepend_scheme "first") instead of Prepend/Replace normalizers, and chat tokens added
 * past the model's vocabulary: 267 <|endoftext|>, 268 <|assistant|>, 269 <|end|>, 270 <|user|> (special).
 * llama.cpp's converter writes it as a "llama" vocabulary with the dummy prefix (add_space_prefix). */
static void test_phi3_spm(void **state) {
    (void)state;
    ql_gguf *g = ql_gguf_new();
    ql_status s = ql_tokenizer_json_to_gguf(FIX "phi3-spm.json", g);
    if (s) print_error("%s\n", ql_last_error());
    assert_int_equal(s, QL_OK);
    assert_string_equal(ql_gguf_get_str(g, "tokenizer.ggml.model"), "llama");
    bool b = false;
    assert_true(ql_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) && b);
    uint64_t n;
    const ql_gguf_value *ty = ql_gguf_get_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, &n);
    assert_int_equal(n, 271);
    for (int i = 267; i < 271; i++) assert_int_equal(ty[i].v.i, 3); /* control */
    ql_tokenizer *t;
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    ql_gguf_free(g);
    assert_int_equal(ql_tokenizer_bos(t), 1);
    EXPECT(t, "the a", false, 261, 262, 266);
    EXPECT(t, "the a", true, 1, 261, 262, 266);
    EXPECT(t, "the x", false, 261, 262, 3 + 'x');
    char buf[32];
    assert_int_equal(ql_token_to_piece(t, 269, buf, sizeof buf), 7);
    assert_string_equal(buf, "<|end|>");
    ql_tokenizer_free(t);
}

/* decode(encode(s)) == s over real text for the byte-level fixtures (Llama 3's and Qwen2's
 * pre-tokenizers) and the Gemma one (byte fallback, no prefix): every byte must survive. */
static void test_corpus_round_trip(void **state) {
    (void)state;
    char path[1024];
    if (!shared_path(path, sizeof path, "data/wikitext-2-valid.raw")) skip();
    size_t len;
    char *text = slurp(path, &len);
    assert_non_null(text);
    size_t cut = len < 150000 ? len : 150000;
    while (cut > 0 && text[cut - 1] != '\n') cut--; /* whole lines: whole UTF-8 characters */
    char code[1024];
    size_t clen = 0;
    char *code_text = shared_path(code, sizeof code, "data/code-humaneval.jsonl") ? slurp(code, &clen) : NULL;
    if (clen > 60000) clen = 60000;
    while (clen > 0 && code_text[clen - 1] != '\n') clen--;
    ql_tokenizer *ts[3] = {load_bpe_fixture(NULL), load_bpe_fixture("qwen2"), load_gemma_fixture()};
    const char *names[3] = {"llama-bpe", "qwen2", "gemma"};
    for (int k = 0; k < 3; k++) {
        for (int which = 0; which < 2; which++) {
            const char *s = which ? code_text : text;
            size_t n = which ? clen : cut;
            if (!s || !n) continue;
            size_t got;
            char *back = detok(ts[k], s, n, &got);
            if (got != n || memcmp(back, s, n) != 0) {
                size_t i = 0;
                while (i < n && i < got && back[i] == s[i]) i++;
                fail_msg("%s: round trip differs at byte %zu of %zu", names[k], i, n);
            }
            free(back);
        }
        ql_tokenizer_free(ts[k]);
    }
    free(code_text);
    free(text);
}

/* ---------------------------------------------------------------- synthetic byte vocabulary */

static void test_bytes_vocab(void **state) {
    (void)state;
    ql_gguf *g = ql_gguf_new();
    ql_tokenizer_bytes_to_gguf(g, 300);
    ql_tokenizer *t;
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    ql_gguf_free(g);
    assert_int_equal(ql_tokenizer_n_vocab(t), 300);
    assert_int_equal(ql_tokenizer_kind(t), QL_TOK_SPM);
    /* "▁hi": U+2581 is token 259, h and i byte tokens (byte b is id 3 + b) */
    EXPECT(t, "hi", true, 1, 259, 3 + 'h', 3 + 'i');
    /* filler tokens never form from text */
    EXPECT(t, "<extra_0>", false, 259, 3 + '<', 3 + 'e', 3 + 'x', 3 + 't', 3 + 'r', 3 + 'a', 3 + '_', 3 + '0',
           3 + '>');
    const char *txt = "any text \xf0\x9f\x98\x80 at all\n";
    size_t len;
    char *back = detok(t, txt, strlen(txt), &len);
    assert_int_equal(len, strlen(txt) + 1);
    assert_memory_equal(back + 1, txt, strlen(txt));
    free(back);
    ql_tokenizer_free(t);
    /* too small a size is raised to the 259 tokens it needs; without "▁" a space is 3 byte tokens */
    g = ql_gguf_new();
    ql_tokenizer_bytes_to_gguf(g, 10);
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    assert_int_equal(ql_tokenizer_n_vocab(t), 259);
    EXPECT(t, "hi", false, 3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + 'h', 3 + 'i');
    ql_tokenizer_free(t);
    ql_gguf_free(g);
}

/* ---------------------------------------------------------------- malformed inputs */

static void expect_fail_naming(ql_status got, ql_status want, const char *path) {
    if (got != want) print_error("%s: got status %d (%s)\n", path, got, ql_last_error());
    assert_int_equal(got, want);
    if (!strstr(ql_last_error(), path)) print_error("error does not name %s: %s\n", path, ql_last_error());
    assert_non_null(strstr(ql_last_error(), path));
}

static void test_json_malformed(void **state) {
    (void)state;
    static const char *bad[] = {"bad-syntax.json", "bad-vocab-id.json", "bad-merges.json",
                                "bad-merge-oov.json", "bad-added.json", "bad-sparse.json",
                                "no-model.json", "bad-vocab-type.json"};
    char path[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, FIX "%s", bad[i]);
        ql_gguf *g = ql_gguf_new();
        expect_fail_naming(ql_tokenizer_json_to_gguf(path, g), QL_ERR_FORMAT, path);
        ql_gguf_free(g);
    }
    ql_gguf *g = ql_gguf_new();
    expect_fail_naming(ql_tokenizer_json_to_gguf(FIX "unigram.json", g), QL_ERR_UNSUPPORTED,
                       FIX "unigram.json");
    assert_non_null(strstr(ql_last_error(), "'Unigram' is not supported"));
    /* the same refusal from GGUF metadata: WordPiece (bert) and Unigram (t5) are named as such */
    static const char *models[] = {"bert", "t5"};
    for (int k = 0; k < 2; k++) {
        ql_gguf *w = ql_gguf_new();
        ql_gguf_set_str(w, "tokenizer.ggml.model", models[k]);
        ql_tokenizer *wt = NULL;
        assert_int_equal(ql_tokenizer_from_gguf(w, &wt), QL_ERR_UNSUPPORTED);
        assert_null(wt);
        assert_non_null(strstr(ql_last_error(), k ? "Unigram (t5)" : "WordPiece (bert)"));
        ql_gguf_free(w);
    }
    expect_fail_naming(ql_tokenizer_json_to_gguf(FIX "missing.json", g), QL_ERR_IO, FIX "missing.json");
    ql_gguf_free(g);
    /* every truncation of a valid file is rejected cleanly */
    size_t len;
    char *full = slurp(FIX "bpe-bytelevel.json", &len);
    assert_non_null(full);
    char tmp[] = "/tmp/ql_tok_json_XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    close(fd);
    for (size_t cut = 0; cut < len; cut += len / 37 + 1) {
        FILE *f = fopen(tmp, "wb");
        fwrite(full, 1, cut, f);
        fclose(f);
        g = ql_gguf_new();
        expect_fail_naming(ql_tokenizer_json_to_gguf(tmp, g), QL_ERR_FORMAT, tmp);
        ql_gguf_free(g);
    }
    unlink(tmp);
    free(full);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void store_i32(uint8_t *dst, size_t off, int32_t v) {
    uint32_t u = (uint32_t)v;
    for (int k = 0; k < 4; k++) dst[off + (size_t)k] = (uint8_t)(u >> (8 * k));
}

static void test_llama2c_malformed(void **state) {
    (void)state;
    char path[] = "/tmp/ql_tok_bin_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    uint8_t buf[256];
    size_t n = 0;
    int32_t i32;
    float f32 = 0;
#define PUT(v) (memcpy(buf + n, &(v), 4), n += 4)
    /* a valid 3-token file to mutate: max_len 5, then (score, len, bytes) x 3 */
    const size_t len_off = 34; /* where the last token's length is */
    i32 = 5; PUT(i32);
    for (int k = 0; k < 3; k++) {
        static const char *s[] = {"<unk>", "\n<s>\n", "a"};
        PUT(f32);
        i32 = (int32_t)strlen(s[k]);
        PUT(i32);
        memcpy(buf + n, s[k], strlen(s[k]));
        n += strlen(s[k]);
    }
#undef PUT
    assert_int_equal(n, 39);
    ql_gguf *g = ql_gguf_new();
    write_bytes(path, buf, n);
    assert_int_equal(ql_tokenizer_llama2c_to_gguf(path, 3, g), QL_OK);
    /* truncated anywhere */
    for (size_t cut = 0; cut < n; cut++) {
        write_bytes(path, buf, cut);
        expect_fail_naming(ql_tokenizer_llama2c_to_gguf(path, 3, g), QL_ERR_FORMAT, path);
    }
    /* more tokens asked for than the file has */
    write_bytes(path, buf, n);
    expect_fail_naming(ql_tokenizer_llama2c_to_gguf(path, 4, g), QL_ERR_FORMAT, path);
    /* negative and oversized lengths of the last token */
    uint8_t bad[256];
    memcpy(bad, buf, n);
    store_i32(bad, len_off, -1);
    write_bytes(path, bad, n);
    expect_fail_naming(ql_tokenizer_llama2c_to_gguf(path, 3, g), QL_ERR_FORMAT, path);
    store_i32(bad, len_off, 0x7fffffff);
    write_bytes(path, bad, n);
    expect_fail_naming(ql_tokenizer_llama2c_to_gguf(path, 3, g), QL_ERR_FORMAT, path);
    /* bad max_token_length */
    memcpy(bad, buf, n);
    i32 = -7;
    memcpy(bad, &i32, 4);
    write_bytes(path, bad, n);
    expect_fail_naming(ql_tokenizer_llama2c_to_gguf(path, 3, g), QL_ERR_FORMAT, path);
    unlink(path);
    expect_fail_naming(ql_tokenizer_llama2c_to_gguf(path, 3, g), QL_ERR_IO, path);
    ql_gguf_free(g);
}

static void test_gguf_malformed(void **state) {
    (void)state;
    ql_tokenizer *t = NULL;
    ql_gguf *g = ql_gguf_new();
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_FORMAT); /* no model key */
    ql_gguf_set_str(g, "tokenizer.ggml.model", "t5");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_UNSUPPORTED);
    ql_gguf_set_str(g, "tokenizer.ggml.model", "llama");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_FORMAT); /* no tokens */
    const char *toks[] = {"<unk>", "<s>", "</s>", "a", "a"};
    ql_gguf_set_arr_str(g, "tokenizer.ggml.tokens", toks, 5);
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_FORMAT); /* duplicate "a" */
    ql_gguf_set_arr_str(g, "tokenizer.ggml.tokens", toks, 4);
    float sc[3] = {0};
    ql_gguf_set_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, sc, 3);
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_FORMAT); /* scores too short */
    ql_gguf_remove(g, "tokenizer.ggml.scores");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK); /* scores and types are optional */
    /* text with a character outside the vocabulary and no byte tokens: <unk> */
    /* (no byte tokens either, so each byte of "▁" and the 'b' become <unk>) */
    EXPECT(t, "ab", false, 0, 0, 0, 3, 0);
    ql_tokenizer_free(t);
    ql_gguf_set_str(g, "tokenizer.ggml.model", "gpt2");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_FORMAT); /* BPE without merges */
    const char *merges[] = {"a a"};
    ql_gguf_set_arr_str(g, "tokenizer.ggml.merges", merges, 1);
    /* an unknown name, or one llama.cpp splits with code qlab does not carry: refused, naming it */
    ql_gguf_set_str(g, "tokenizer.ggml.pre", "no-such-pre");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_UNSUPPORTED);
    ql_gguf_set_str(g, "tokenizer.ggml.pre", "deepseek-llm");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_UNSUPPORTED);
    assert_non_null(strstr(ql_last_error(), "deepseek-llm"));
    ql_gguf_set_str(g, "tokenizer.ggml.pre", "llama-bpe");
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_ERR_FORMAT); /* add_bos without a bos id */
    ql_gguf_set_u32(g, "tokenizer.ggml.bos_token_id", 1);
    assert_int_equal(ql_tokenizer_from_gguf(g, &t), QL_OK);
    ql_tokenizer_free(t);
    ql_gguf_free(g);
}

/* ---------------------------------------------------------------- threads */

static const char THR_TEXT[] = "hello the world 12345 it's <sep> \xe2\x98\x83";

typedef struct {
    const ql_tokenizer *t;
    const int32_t *want;
    int64_t n_want;
    int ok;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    a->ok = 1;
    for (int r = 0; r < 200; r++) {
        int32_t *ids;
        int64_t n;
        if (ql_tokenize(a->t, THR_TEXT, strlen(THR_TEXT), true, &ids, &n) != QL_OK || n != a->n_want ||
            memcmp(ids, a->want, (size_t)n * sizeof *ids) != 0)
            a->ok = 0;
        free(ids);
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    ql_tokenizer *t = load_bpe_fixture(NULL);
    int32_t *want;
    int64_t n_want;
    assert_int_equal(ql_tokenize(t, THR_TEXT, strlen(THR_TEXT), true, &want, &n_want), QL_OK);
    pthread_t th[4];
    thr_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg){t, want, n_want, 0};
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].ok, 1);
    }
    free(want);
    ql_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_prompt),    cmocka_unit_test(test_stories_round_trip),
        cmocka_unit_test(test_stories_corpus),    cmocka_unit_test(test_llama2c_round_trip),
        cmocka_unit_test(test_bpe_llama3),        cmocka_unit_test(test_bpe_other_pre),
        cmocka_unit_test(test_bpe_pre_json_round_trip),
        cmocka_unit_test(test_spm_from_json),
        cmocka_unit_test(test_gemma_spm),
        cmocka_unit_test(test_phi3_spm),
        cmocka_unit_test(test_corpus_round_trip),     cmocka_unit_test(test_bytes_vocab),
        cmocka_unit_test(test_json_malformed),    cmocka_unit_test(test_llama2c_malformed),
        cmocka_unit_test(test_gguf_malformed),    cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
