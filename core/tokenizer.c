/* tokenizer.c — the two tokenizers llama.cpp uses for llama-family models, rebuilt from GGUF
 * tokenizer.ggml.* metadata: SentencePiece-style bigram merging by score ("llama", llm_tokenizer_spm)
 * and byte-level BPE by merge rank after a PCRE2 pre-tokenizer ("gpt2", llm_tokenizer_bpe); plus
 * translators from tokenizer.json, llama2.c tokenizer.bin and a synthetic byte vocabulary into those keys.
 * A ql_tokenizer owns copies of everything it uses (the ql_gguf may be freed afterwards) and is never
 * mutated after creation, so ql_tokenize may run on several threads at once (scratch is per call). */
#include "core/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp token types (tokenizer.ggml.token_type) */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define MAX_TEXT ((size_t)1 << 29)      /* ql_tokenize input limit: symbol indices (x3 for ▁) are int32 */
#define MAX_VOCAB ((int64_t)1 << 24)    /* sanity cap for vocabularies read from files */
#define MAX_REGEX 6

/* ---------------------------------------------------------------- strings and a hash map */

typedef struct {
    const char *s;
    uint32_t len;
} qstr;

/* Open addressing map from a key array (qstr) to the key's index; keys are owned elsewhere. */
typedef struct {
    uint64_t mask;
    int32_t *idx;   /* -1 empty, else index into keys */
    uint32_t *hash;
    const qstr *keys;
} strmap;

static uint64_t str_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static void strmap_init(strmap *m, const qstr *keys, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap <<= 1;
    m->mask = cap - 1;
    m->idx = ql_malloc(cap * sizeof *m->idx);
    m->hash = ql_malloc(cap * sizeof *m->hash);
    memset(m->idx, 0xff, cap * sizeof *m->idx);
    m->keys = keys;
}

static void strmap_free(strmap *m) {
    free(m->idx);
    free(m->hash);
    memset(m, 0, sizeof *m);
}

static int32_t strmap_get(const strmap *m, const char *s, size_t n) {
    if (!m->idx) return -1;
    uint64_t h = str_hash(s, n);
    for (uint64_t p = h & m->mask;; p = (p + 1) & m->mask) {
        int32_t i = m->idx[p];
        if (i < 0) return -1;
        if (m->hash[p] == (uint32_t)h && m->keys[i].len == n && memcmp(m->keys[i].s, s, n) == 0) return i;
    }
}

/* Inserts keys[i]; returns -1 when inserted, or the index already holding the same key. */
static int32_t strmap_put(strmap *m, int32_t i) {
    const qstr *k = &m->keys[i];
    uint64_t h = str_hash(k->s, k->len);
    for (uint64_t p = h & m->mask;; p = (p + 1) & m->mask) {
        int32_t j = m->idx[p];
        if (j < 0) {
            m->idx[p] = i;
            m->hash[p] = (uint32_t)h;
            return -1;
        }
        if (m->hash[p] == (uint32_t)h && m->keys[j].len == k->len && memcmp(m->keys[j].s, k->s, k->len) == 0)
            return j;
    }
}

/* ---------------------------------------------------------------- UTF-8 and GPT-2 byte mapping */

/* Length of the UTF-8 sequence a lead byte announces, as llama.cpp's unicode_len_utf8 (continuation
 * bytes count as 1). */
static size_t utf8_len(uint8_t c) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

/* Decodes one code point the way llama.cpp's unicode_cpt_from_utf8 does (structure only);
 * returns its length, or 0 for an invalid sequence. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t c = s[0];
    if (!(c & 0x80)) { *cp = c; return 1; }
    if (!(c & 0x40)) return 0;
    size_t len = !(c & 0x20) ? 2 : !(c & 0x10) ? 3 : !(c & 0x08) ? 4 : 0;
    if (len == 0 || len > n) return 0;
    uint32_t v = c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100.. in byte order. */
static uint32_t byte_to_cp(uint8_t b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) n++;
    return 256 + n;
}

typedef struct {
    char s[2];
    uint8_t n;
} byte_enc;

static byte_enc g_byte_enc[256];
static int16_t g_cp_to_byte[324]; /* code points 0..323 → byte, -1 if not a mapped code point */
static pthread_once_t g_byte_once = PTHREAD_ONCE_INIT;

static void byte_tables_build(void) {
    for (int i = 0; i < 324; i++) g_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp((uint8_t)b);
        char tmp[4];
        size_t n = utf8_encode(cp, tmp);
        memcpy(g_byte_enc[b].s, tmp, n);
        g_byte_enc[b].n = (uint8_t)n;
        g_cp_to_byte[cp] = (int16_t)b;
    }
}

static void byte_tables_init(void) { pthread_once(&g_byte_once, byte_tables_build); }

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xXX>" (either case), the SentencePiece byte-fallback spelling. */
static bool is_byte_token_text(const char *s, size_t n, uint8_t *val) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return false;
    int a = hex_digit(s[3]), b = hex_digit(s[4]);
    if (a < 0 || b < 0) return false;
    if (val) *val = (uint8_t)(a << 4 | b);
    return true;
}

/* ---------------------------------------------------------------- growable arrays */

typedef struct {
    int32_t *v;
    int64_t n, cap;
} idvec;

static void idvec_push(idvec *a, int32_t id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 256;
        a->v = ql_realloc(a->v, (size_t)a->cap * sizeof *a->v);
    }
    a->v[a->n++] = id;
}

typedef struct {
    size_t off, len;
    int32_t tok; /* -1: raw text, else a token split out before tokenizing */
} frag;

typedef struct {
    frag *v;
    size_t n, cap;
} fragvec;

static void fragvec_push(fragvec *a, size_t off, size_t len, int32_t tok) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = ql_realloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = (frag){off, len, tok};
}

typedef struct {
    const char *text;
    int32_t n; /* bytes; 0 once merged into its left neighbour */
    int32_t prev, next;
} sym;

/* A candidate merge. prio: lower first (SPM: -score, BPE: rank); ties: leftmost first, which is
 * the order llama.cpp's std::priority_queue comparators produce. */
typedef struct {
    double prio;
    int32_t left, right;
    uint32_t size;
} bigram;

typedef struct {
    bigram *v;
    size_t n, cap;
} bheap;

static bool bg_before(const bigram *a, const bigram *b) {
    return a->prio < b->prio || (a->prio == b->prio && a->left < b->left);
}

static void bheap_push(bheap *h, bigram x) {
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 256;
        h->v = ql_realloc(h->v, h->cap * sizeof *h->v);
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(&x, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = x;
}

static bigram bheap_pop(bheap *h) {
    bigram top = h->v[0], x = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bg_before(&h->v[c + 1], &h->v[c])) c++;
        if (!bg_before(&h->v[c], &x)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = x;
    return top;
}

/* Per-call scratch. */
typedef struct {
    sym *syms;
    size_t n_syms, cap_syms;
    bheap heap;
    char *buf;  /* SPM: escaped text; BPE: byte-encoded word */
    size_t cap_buf;
    char *key;  /* BPE merge key "left right" */
    size_t cap_key;
} scratch;

static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    *cap = c;
    return ql_realloc(p, c * elem);
}

static void scratch_free(scratch *s) {
    free(s->syms);
    free(s->heap.v);
    free(s->buf);
    free(s->key);
}

/* ---------------------------------------------------------------- the tokenizer object */

struct ql_tokenizer {
    ql_tok_kind kind;
    int32_t n_vocab;
    qstr *tok;       /* [n_vocab] token text, into arena */
    char *arena;
    float *score;    /* [n_vocab] */
    int32_t *type;   /* [n_vocab] TT_* */
    strmap tok_map;
    int32_t bos, eos, unk;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;
    int32_t byte_id[256]; /* SPM byte fallback: "<0xXX>", else the 1-byte token, else -1 */
    /* BPE */
    qstr *merge;     /* [n_merges] "left right" */
    char *merge_arena;
    int64_t n_merges;
    strmap merge_map;
    pcre2_code *re[MAX_REGEX];
    int n_re;
    /* user-defined tokens, longest first: split out of raw text before tokenizing */
    int32_t *user_ids;
    int32_t n_user;
};

/* Pre-tokenizer regexes, as llama.cpp writes them (case-insensitive groups spelled out). */
static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
static const char RE_LLAMA3[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* The same two as Hugging Face tokenizer.json files spell them. */
static const char RE_LLAMA3_HF[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2_HF[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_GPT2_HF[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* Mistral's Tekken and GPT-4o's as tokenizer.json spells them (llama.cpp's RE_TEKKEN / RE_GPT4O are their
 * std::regex adaptations: an uppercase-or-other letter is a letter outside a-z, a lowercase-or-other one outside A-Z). */
static const char RE_TEKKEN_HF[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?"
    "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+";
static const char RE_GPT4O_HF[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* tokenizer.json Split regex <-> tokenizer.ggml.pre, both ways */
static const struct {
    const char *re_hf, *pre;
} g_split_pre[] = {
    {RE_LLAMA3_HF, "llama-bpe"}, {RE_QWEN2_HF, "qwen2"}, {RE_TEKKEN_HF, "tekken"}, {RE_GPT4O_HF, "gpt-4o"},
};

/* Llama.cpp's other pre-tokenizer regexes (src/llama-vocab.cpp, llm_tokenizer_bpe). */
static const char RE_DIGIT[] = "\\p{N}";
static const char RE_TEKKEN[] =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+"
    "((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_GPT4O[] =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]"
    "|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]"
    "|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_BLOOM[] = " ?[^(\\s|.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C)]+";
static const char RE_SEED_CODER[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}"
    "| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_BAILING[] =
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";
/* DeepSeek Coder: CJK ideographs, U+0800.., Hangul as in llama.cpp ("[一-龥ࠀ-一가-퟿]+") */
static const char RE_CJK_HANGUL[] = "[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+";

#define PRE_NAMES 12
typedef struct {
    const char *names[PRE_NAMES];
    const char *re[MAX_REGEX];
    bool ignore_merges, add_bos;
} pre_def;

/* tokenizer.ggml.pre values → regex list, as in llama.cpp's llm_tokenizer_bpe and llama_vocab::impl::load
 * (add_bos here is llama.cpp's default; tokenizer.ggml.add_bos_token overrides it). */
static const pre_def g_pre[] = {
    {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", NULL}, {RE_LLAMA3}, true, true},
    {{"dbrx", "smaug-bpe", NULL}, {RE_LLAMA3}, false, false},
    {{"qwen2", "qwen2.5", "qwen-2.5", "deepseek-r1-qwen", "megrez", "stablelm2", "kormo", "hunyuan", "grok-2", NULL},
     {RE_QWEN2}, false, false},
    {{"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "gigachat", "a.x-4.0", "mellum",
      "exaone4"},
     {RE_GPT2}, false, false},
    /* single digits first, then GPT-2 (SmolLM, StarCoder, Command-R, EXAONE, ...) */
    {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", NULL}, {RE_DIGIT, RE_GPT2}, false,
     false},
    {{"falcon", NULL}, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, false, false},
    {{"deepseek-coder", NULL}, {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK_HANGUL, RE_DIGIT}, false, false},
    {{"tekken", NULL}, {RE_TEKKEN}, true, true},
    {{"gpt-4o", "llama4", "minimax-m2", NULL}, {RE_GPT4O}, false, false},
    {{"poro-chat", "bloom", "gpt3-finnish", NULL}, {RE_BLOOM}, false, false},
    {{"viking", NULL}, {RE_BLOOM, RE_DIGIT}, false, false},
    {{"seed-coder", NULL}, {RE_SEED_CODER}, false, false},
    {{"bailingmoe", "bailingmoe2", "llada-moe", NULL}, {RE_BAILING}, false, false},
    {{"default", "", NULL},
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false},
};


/* PCRE2's \s (UCP) is tab..CR plus \p{Z}; llama.cpp and Hugging Face also count U+0085 as white
 * space. Spell \s and \S out so the three agree. Returns a malloc'ed pattern. */
static char *whitespace_exact(const char *re) {
    static const char WS[] = "\\t-\\r\\x{85}\\p{Z}";
    char *out = ql_malloc(strlen(re) * 12 + 1); /* "\\S" (2 bytes) becomes at most 21 */
    size_t n = 0;
    bool in_class = false;
    for (const char *p = re; *p; p++) {
        if (p[0] == '\\' && (p[1] == 's' || p[1] == 'S')) {
            const char *fmt = in_class ? (p[1] == 's' ? "%s" : NULL) : (p[1] == 's' ? "[%s]" : "[^%s]");
            if (!fmt) ql_abort("tokenizer: \\S inside a character class");
            n += (size_t)sprintf(out + n, fmt, WS);
            p++;
        } else if (p[0] == '\\' && p[1]) {
            out[n++] = *p++;
            out[n++] = *p;
        } else {
            if (*p == '[') in_class = true;
            else if (*p == ']') in_class = false;
            out[n++] = *p;
        }
    }
    out[n] = 0;
    return out;
}

void ql_tokenizer_free(ql_tokenizer *t) {
    if (!t) return;
    free(t->tok);
    free(t->arena);
    free(t->score);
    free(t->type);
    strmap_free(&t->tok_map);
    free(t->merge);
    free(t->merge_arena);
    strmap_free(&t->merge_map);
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    free(t->user_ids);
    free(t);
}

int32_t ql_tokenizer_n_vocab(const ql_tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t ql_tokenizer_bos(const ql_tokenizer *t) { return t ? t->bos : -1; }
int32_t ql_tokenizer_eos(const ql_tokenizer *t) { return t ? t->eos : -1; }
bool ql_tokenizer_add_bos(const ql_tokenizer *t) { return t && t->add_bos && t->bos >= 0; }
ql_tok_kind ql_tokenizer_kind(const ql_tokenizer *t) { return t ? t->kind : QL_TOK_SPM; }

/* Reads element i of a numeric GGUF array as double / int64. */
static double arr_f64(const ql_gguf_value *it) {
    switch (it->type) {
    case QL_GGUF_F32: case QL_GGUF_F64: return it->v.f;
    case QL_GGUF_I8: case QL_GGUF_I16: case QL_GGUF_I32: case QL_GGUF_I64: return (double)it->v.i;
    default: return (double)it->v.u;
    }
}
static int64_t arr_i64(const ql_gguf_value *it) {
    switch (it->type) {
    case QL_GGUF_I8: case QL_GGUF_I16: case QL_GGUF_I32: case QL_GGUF_I64: return it->v.i;
    case QL_GGUF_F32: case QL_GGUF_F64: /* hostile files: NaN or out-of-range floats are not ids */
        return it->v.f >= -9.0e18 && it->v.f <= 9.0e18 ? (int64_t)it->v.f : -1;
    default: return it->v.u > (uint64_t)INT64_MAX ? -1 : (int64_t)it->v.u;
    }
}

static bool numeric_type(uint32_t t) {
    return t != QL_GGUF_STRING && t != QL_GGUF_ARRAY && t != QL_GGUF_BOOL && t < QL_GGUF_NTYPES;
}

static int cmp_user(const void *a, const void *b, void *ctx) {
    const ql_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->tok[x].len != t->tok[y].len) return t->tok[x].len > t->tok[y].len ? -1 : 1;
    return (x > y) - (x < y);
}

static void special_id(const ql_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    int64_t v;
    /* out-of-range ids keep the default, as llama.cpp does ("bad special token") */
    if (ql_gguf_get_int(g, key, &v) && v >= 0 && v < n_vocab) *id = (int32_t)v;
}

ql_status ql_tokenizer_from_gguf(const ql_gguf *g, ql_tokenizer **out) {
    if (!g || !out) return ql_fail(QL_ERR_ARG, "ql_tokenizer_from_gguf: NULL argument");
    *out = NULL;
    const char *lbl = g->path ? g->path : "gguf";
    const char *model = ql_gguf_get_str(g, "tokenizer.ggml.model");
    if (!model) return ql_fail(QL_ERR_FORMAT, "%s: no tokenizer.ggml.model", lbl);
    ql_tok_kind kind;
    if (strcmp(model, "llama") == 0) kind = QL_TOK_SPM;
    else if (strcmp(model, "gpt2") == 0) kind = QL_TOK_BPE;
    else
        return ql_fail(QL_ERR_UNSUPPORTED,
                       "%s: tokenizer model '%s' is not supported (llama = SentencePiece, gpt2 = byte-level BPE; "
                       "Unigram (t5) and WordPiece (bert) vocabularies are not implemented)",
                       lbl, model);

    uint64_t n = 0;
    const ql_gguf_value *toks = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n);
    if (!toks) return ql_fail(QL_ERR_FORMAT, "%s: tokenizer.ggml.tokens missing or not a string array", lbl);
    if (n == 0 || n > (uint64_t)MAX_VOCAB)
        return ql_fail(QL_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries", lbl,
                       (unsigned long long)n);

    const ql_gguf_value *sv = ql_gguf_get(g, "tokenizer.ggml.scores");
    if (sv && (sv->type != QL_GGUF_ARRAY || !numeric_type(sv->v.arr.elem_type) || sv->v.arr.n < n))
        return ql_fail(QL_ERR_FORMAT, "%s: tokenizer.ggml.scores is not a numeric array of %llu", lbl,
                       (unsigned long long)n);
    const ql_gguf_value *tv = ql_gguf_get(g, "tokenizer.ggml.token_type");
    if (tv && (tv->type != QL_GGUF_ARRAY || !numeric_type(tv->v.arr.elem_type) || tv->v.arr.n < n))
        return ql_fail(QL_ERR_FORMAT, "%s: tokenizer.ggml.token_type is not an integer array of %llu", lbl,
                       (unsigned long long)n);

    ql_tokenizer *t = ql_calloc(1, sizeof *t);
    ql_status s = QL_OK;
    t->kind = kind;
    t->n_vocab = (int32_t)n;
    t->tok = ql_calloc(n, sizeof *t->tok);
    t->score = ql_calloc(n, sizeof *t->score);
    t->type = ql_calloc(n, sizeof *t->type);
    /* texts: total size is bounded by what the ql_gguf already holds in memory */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) total += (toks[i].v.str.len ? toks[i].v.str.len : 24) + 1;
    t->arena = ql_malloc(total);
    char *p = t->arena;
    for (uint64_t i = 0; i < n; i++) {
        const char *src = toks[i].v.str.s;
        size_t len = toks[i].v.str.len;
        if (len > UINT32_MAX / 2) {
            s = ql_fail(QL_ERR_FORMAT, "%s: token %llu is too long", lbl, (unsigned long long)i);
            goto fail;
        }
        if (len == 0) { /* llama.cpp renames empty tokens */
            len = (size_t)snprintf(p, 24, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(p, src, len);
        }
        p[len] = 0;
        t->tok[i] = (qstr){p, (uint32_t)len};
        p += len + 1;
        t->score[i] = sv ? (float)arr_f64(&sv->v.arr.items[i]) : 0.0f;
        t->type[i] = tv ? (int32_t)arr_i64(&tv->v.arr.items[i]) : TT_NORMAL;
    }
    strmap_init(&t->tok_map, t->tok, (int64_t)n);
    for (uint64_t i = 0; i < n; i++) {
        int32_t dup = strmap_put(&t->tok_map, (int32_t)i);
        if (dup >= 0) {
            s = ql_fail(QL_ERR_FORMAT, "%s: duplicate token '%.40s' (ids %d and %llu)", lbl, t->tok[i].s, dup,
                        (unsigned long long)i);
            goto fail;
        }
    }

    /* defaults as llama.cpp's llama_vocab::load */
    if (kind == QL_TOK_SPM) {
        t->bos = n > 1 ? 1 : -1;
        t->eos = n > 2 ? 2 : -1;
        t->unk = 0;
        t->add_bos = true;
        t->add_space_prefix = true;
    } else {
        t->bos = t->eos = t->unk = -1;
    }
    special_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos);
    special_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos);
    special_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk);

    if (kind == QL_TOK_BPE) {
        byte_tables_init();
        const char *pre = ql_gguf_get_str(g, "tokenizer.ggml.pre");
        if (!pre) pre = "default";
        const pre_def *pd = NULL;
        for (size_t k = 0; k < QL_ARRAY_LEN(g_pre) && !pd; k++)
            for (int j = 0; j < PRE_NAMES && g_pre[k].names[j]; j++)
                if (strcmp(g_pre[k].names[j], pre) == 0) pd = &g_pre[k];
        if (!pd) {
            /* as llama.cpp does since it learned most of these (older versions split an unknown name as
             * "default"): refused, rather than tokens that differ from llama.cpp's */
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: pre-tokenizer '%s' is not supported (qlab has llama.cpp's llama-bpe, "
                        "qwen2, gpt-2, smollm, starcoder, command-r, falcon, deepseek-coder, tekken, gpt-4o, bloom, "
                        "viking, seed-coder, bailingmoe, default and their aliases)", lbl, pre);
            goto fail;
        }
        t->ignore_merges = pd->ignore_merges;
        t->add_bos = pd->add_bos;
        for (int k = 0; k < MAX_REGEX && pd->re[k]; k++) {
            int err;
            PCRE2_SIZE eoff;
            char *rx = whitespace_exact(pd->re[k]);
            pcre2_code *re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                           &err, &eoff, NULL);
            free(rx);
            if (!re) {
                PCRE2_UCHAR msg[128];
                pcre2_get_error_message(err, msg, sizeof msg);
                s = ql_fail(QL_ERR_UNSUPPORTED, "%s: pre-tokenizer regex: %s", lbl, (char *)msg);
                goto fail;
            }
            pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
            t->re[t->n_re++] = re;
        }

        uint64_t nm = 0;
        const ql_gguf_value *mv = ql_gguf_get(g, "tokenizer.ggml.merges");
        const ql_gguf_value *merges = ql_gguf_get_arr(g, "tokenizer.ggml.merges", QL_GGUF_STRING, &nm);
        if (!merges && mv) {
            s = ql_fail(QL_ERR_FORMAT, "%s: tokenizer.ggml.merges is not a string array", lbl);
            goto fail;
        }
        if (!merges) {
            s = ql_fail(QL_ERR_FORMAT, "%s: BPE tokenizer without tokenizer.ggml.merges", lbl);
            goto fail;
        }
        if (nm > (uint64_t)INT32_MAX) {
            s = ql_fail(QL_ERR_FORMAT, "%s: too many merges", lbl);
            goto fail;
        }
        size_t mt = 0;
        for (uint64_t i = 0; i < nm; i++) mt += merges[i].v.str.len + 1;
        t->merge = ql_calloc(nm ? nm : 1, sizeof *t->merge);
        t->merge_arena = ql_malloc(mt ? mt : 1);
        t->n_merges = (int64_t)nm;
        strmap_init(&t->merge_map, t->merge, (int64_t)nm);
        char *q = t->merge_arena;
        for (uint64_t i = 0; i < nm; i++) {
            size_t len = merges[i].v.str.len;
            memcpy(q, merges[i].v.str.s, len);
            q[len] = 0;
            t->merge[i] = (qstr){q, (uint32_t)len};
            q += len + 1;
            /* llama.cpp splits at the first space after position 0; a merge without one is ignored.
             * The key is the string itself, looked up as left + ' ' + right; the first rank wins. */
            const char *sp = len > 1 ? memchr(t->merge[i].s + 1, ' ', len - 1) : NULL;
            if (sp) strmap_put(&t->merge_map, (int32_t)i);
        }
    }

    bool b;
    if (ql_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b)) t->add_bos = b;
    if (ql_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b)) t->add_eos = b;
    if (ql_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b)) t->add_space_prefix = b;
    if (t->add_bos && t->bos < 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: add_bos_token is true but bos_token_id is not set", lbl);
        goto fail;
    }
    if (t->add_eos && t->eos < 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: add_eos_token is true but eos_token_id is not set", lbl);
        goto fail;
    }

    for (int c = 0; c < 256; c++) {
        char hx[8];
        snprintf(hx, sizeof hx, "<0x%02X>", c);
        int32_t id = strmap_get(&t->tok_map, hx, 6);
        if (id < 0) {
            char one = (char)c;
            id = strmap_get(&t->tok_map, &one, 1);
        }
        t->byte_id[c] = id;
    }

    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->type[i] == TT_USER) t->n_user++;
    if (t->n_user) {
        t->user_ids = ql_malloc((size_t)t->n_user * sizeof *t->user_ids);
        int32_t k = 0;
        for (int32_t i = 0; i < t->n_vocab; i++)
            if (t->type[i] == TT_USER) t->user_ids[k++] = i;
        qsort_r(t->user_ids, (size_t)t->n_user, sizeof *t->user_ids, cmp_user, t);
    }
    *out = t;
    return QL_OK;
fail:
    ql_tokenizer_free(t);
    return s;
}

/* ---------------------------------------------------------------- SPM (llm_tokenizer_spm) */

typedef void (*pair_scorer)(const ql_tokenizer *t, scratch *sc, int32_t left, int32_t right);

/* Split s into UTF-8 characters and merge neighbours best-first from the heap: the loop llama.cpp's SPM and
 * BPE tokenizers share; they differ only in how a pair is queued (token score vs merge rank). A queued pair
 * is stale when either side has been merged away since; same start and equal total length means the same
 * text as when it was queued. Returns the number of symbols (merged ones have n == 0). */
static int32_t merge_utf8_symbols(const ql_tokenizer *t, scratch *sc, char *s, size_t n, pair_scorer queue_pair) {
    sc->syms = grow(sc->syms, &sc->cap_syms, n, sizeof *sc->syms);
    int32_t ns = 0;
    for (size_t off = 0; off < n;) {
        size_t cl = QL_MIN(utf8_len((uint8_t)s[off]), n - off);
        sc->syms[ns] = (sym){s + off, (int32_t)cl, ns - 1, off + cl == n ? -1 : ns + 1};
        off += cl;
        ns++;
    }
    sc->heap.n = 0;
    for (int32_t i = 1; i < ns; i++) queue_pair(t, sc, i - 1, i);
    while (sc->heap.n) {
        bigram bg = bheap_pop(&sc->heap);
        sym *l = &sc->syms[bg.left], *r = &sc->syms[bg.right];
        if (l->n == 0 || r->n == 0 || (uint32_t)(l->n + r->n) != bg.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sc->syms[r->next].prev = bg.left;
        queue_pair(t, sc, l->prev, bg.left);
        queue_pair(t, sc, bg.left, l->next);
    }
    return ns;
}

static void spm_try_bigram(const ql_tokenizer *t, scratch *sc, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const sym *l = &sc->syms[left], *r = &sc->syms[right];
    size_t n = (size_t)l->n + (size_t)r->n; /* right follows left in the text */
    int32_t id = strmap_get(&t->tok_map, l->text, n);
    if (id < 0) return;
    bheap_push(&sc->heap, (bigram){-(double)t->score[id], left, right, (uint32_t)n});
}

static void spm_emit_bytes(const ql_tokenizer *t, const char *s, size_t n, idvec *out) {
    for (size_t j = 0; j < n; j++) {
        int32_t id = t->byte_id[(uint8_t)s[j]];
        if (id < 0) id = t->unk; /* llama.cpp would throw here */
        if (id >= 0) idvec_push(out, id);
    }
}

/* Tokenizes one raw fragment: space → U+2581 (plus the prefix), UTF-8 characters, merge the best
 * scoring adjacent pair whose concatenation is a token until none is left. */
static void spm_fragment(const ql_tokenizer *t, scratch *sc, const char *raw, size_t len, bool prefix,
                         idvec *out) {
    size_t need = 3 * (len + 1);
    sc->buf = grow(sc->buf, &sc->cap_buf, need, 1);
    char *s = sc->buf;
    size_t n = 0;
    if (prefix) { memcpy(s, "\xe2\x96\x81", 3); n = 3; }
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == ' ') { memcpy(s + n, "\xe2\x96\x81", 3); n += 3; }
        else s[n++] = raw[i];
    }
    if (n == 0) return;
    merge_utf8_symbols(t, sc, s, n, spm_try_bigram);
    for (int32_t i = 0; i != -1; i = sc->syms[i].next) {
        const sym *y = &sc->syms[i];
        int32_t id = strmap_get(&t->tok_map, y->text, (size_t)y->n);
        /* A merged symbol is always a token; only single characters can miss (→ byte tokens). */
        if (id >= 0) idvec_push(out, id);
        else spm_emit_bytes(t, y->text, (size_t)y->n, out);
    }
}

/* ---------------------------------------------------------------- BPE (llm_tokenizer_bpe) */

static void bpe_add_bigram(const ql_tokenizer *t, scratch *sc, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const sym *l = &sc->syms[left], *r = &sc->syms[right];
    size_t n = (size_t)l->n + 1 + (size_t)r->n;
    sc->key = grow(sc->key, &sc->cap_key, n, 1);
    memcpy(sc->key, l->text, (size_t)l->n);
    sc->key[l->n] = ' ';
    memcpy(sc->key + l->n + 1, r->text, (size_t)r->n);
    int32_t rank = strmap_get(&t->merge_map, sc->key, n);
    if (rank < 0) return;
    bheap_push(&sc->heap, (bigram){(double)rank, left, right, (uint32_t)(n - 1)});
}

/* One pre-tokenized word (raw bytes): byte-encode, then merge by rank. */
static void bpe_word(const ql_tokenizer *t, scratch *sc, const char *raw, size_t len, idvec *out) {
    sc->buf = grow(sc->buf, &sc->cap_buf, 2 * len + 1, 1);
    char *w = sc->buf;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        const byte_enc *e = &g_byte_enc[(uint8_t)raw[i]];
        memcpy(w + n, e->s, e->n);
        n += e->n;
    }
    if (n == 0) return;
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->tok_map, w, n);
        if (id >= 0) { idvec_push(out, id); return; }
    }
    int32_t ns = merge_utf8_symbols(t, sc, w, n, bpe_add_bigram);
    for (int32_t i = 0; i < ns; i++) {
        const sym *y = &sc->syms[i];
        if (y->n == 0) continue;
        int32_t id = strmap_get(&t->tok_map, y->text, (size_t)y->n);
        if (id >= 0) {
            idvec_push(out, id);
            continue;
        }
        for (int32_t j = 0; j < y->n; j++) { /* llama.cpp: single-byte tokens, else dropped */
            int32_t bid = strmap_get(&t->tok_map, y->text + j, 1);
            if (bid >= 0) idvec_push(out, bid);
        }
    }
}

typedef struct {
    size_t off, len;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanvec;

static void spanvec_push(spanvec *a, size_t off, size_t len) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 256;
        a->v = ql_realloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = (span){off, len};
}

/* llama.cpp's unicode_regex_split for one regex: every piece is split into matches and the
 * unmatched text between them; each piece is its own subject (lookarounds stop at its ends). */
static ql_status regex_split(const pcre2_code *re, pcre2_match_data *md, const char *text, const spanvec *in,
                             spanvec *out) {
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        const char *subj = text + in->v[k].off;
        size_t len = in->v[k].len, pos = 0, last = 0;
        while (pos < len) {
            int rc = pcre2_match(re, (PCRE2_SPTR)subj, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) return ql_fail(QL_ERR_UNSUPPORTED, "tokenize: pre-tokenizer regex failed (%d)", rc);
            /* rc == 0: ovector too small for the groups, the whole match is still there */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t a = ov[0], e = ov[1];
            if (e <= a) { /* empty match: step over one character */
                if (a >= len) break;
                pos = a + QL_MIN(utf8_len((uint8_t)subj[a]), len - a);
                continue;
            }
            if (a > last) spanvec_push(out, in->v[k].off + last, a - last);
            spanvec_push(out, in->v[k].off + a, e - a);
            last = pos = e;
        }
        if (last < len) spanvec_push(out, in->v[k].off + last, len - last);
    }
    return QL_OK;
}

static ql_status bpe_fragment(const ql_tokenizer *t, scratch *sc, const char *raw, size_t len, idvec *out) {
    /* llama.cpp decodes the text to code points first, turning each invalid byte into U+FFFD;
     * do the same and re-encode, so PCRE2 always sees valid UTF-8. */
    char *text = ql_malloc(3 * len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t cl = utf8_decode((const uint8_t *)raw + i, len - i, &cp);
        if (cl == 0) { cp = 0xFFFD; cl = 1; }
        if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = 0xFFFD; /* PCRE2 rejects these */
        n += utf8_encode(cp, text + n);
        i += cl;
    }
    spanvec a = {0}, b = {0};
    spanvec_push(&a, 0, n);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) ql_abort("out of memory");
    ql_status s = QL_OK;
    for (int r = 0; r < t->n_re && s == QL_OK; r++) {
        s = regex_split(t->re[r], md, text, &a, &b);
        spanvec tmp = a;
        a = b;
        b = tmp;
    }
    for (size_t k = 0; s == QL_OK && k < a.n; k++) bpe_word(t, sc, text + a.v[k].off, a.v[k].len, out);
    pcre2_match_data_free(md);
    free(a.v);
    free(b.v);
    free(text);
    return s;
}

/* ---------------------------------------------------------------- tokenize */

/* tokenizer_st_partition with parse_special = false: only user-defined tokens are split out,
 * longest first, each at its leftmost non-overlapping occurrences. */
static void partition(const ql_tokenizer *t, const char *text, size_t len, fragvec *fr) {
    fr->n = 0;
    if (len) fragvec_push(fr, 0, len, -1);
    fragvec nx = {0};
    for (int32_t u = 0; u < t->n_user; u++) {
        int32_t id = t->user_ids[u];
        const qstr *k = &t->tok[id];
        nx.n = 0;
        for (size_t i = 0; i < fr->n; i++) {
            frag f = fr->v[i];
            if (f.tok >= 0) { fragvec_push(&nx, f.off, f.len, f.tok); continue; }
            size_t pos = f.off, end = f.off + f.len;
            while (pos < end) {
                const char *m = memmem(text + pos, end - pos, k->s, k->len);
                if (!m) break;
                size_t at = (size_t)(m - text);
                if (at > pos) fragvec_push(&nx, pos, at - pos, -1);
                fragvec_push(&nx, at, k->len, id);
                pos = at + k->len;
            }
            if (pos < end) fragvec_push(&nx, pos, end - pos, -1);
        }
        fragvec tmp = *fr;
        *fr = nx;
        nx = tmp;
    }
    free(nx.v);
}

ql_status ql_tokenize(const ql_tokenizer *t, const char *text, size_t len, bool add_special,
                      int32_t **ids, int64_t *n_ids) {
    if (!ids || !n_ids) return ql_fail(QL_ERR_ARG, "ql_tokenize: NULL output");
    *ids = NULL;
    *n_ids = 0;
    if (!t || (!text && len)) return ql_fail(QL_ERR_ARG, "ql_tokenize: NULL argument");
    if (len > MAX_TEXT) return ql_fail(QL_ERR_ARG, "ql_tokenize: text of %zu bytes is too long", len);
    idvec out = {0};
    fragvec fr = {0};
    scratch sc = {0};
    ql_status s = QL_OK;
    partition(t, text, len, &fr);
    bool bos = add_special && t->add_bos && t->bos >= 0;
    if (bos) idvec_push(&out, t->bos);
    bool prev_special = true; /* SPM: a space prefix before the first fragment and after tokens */
    for (size_t i = 0; i < fr.n && s == QL_OK; i++) {
        const frag *f = &fr.v[i];
        if (f->tok >= 0) {
            idvec_push(&out, f->tok);
            prev_special = true;
        } else if (t->kind == QL_TOK_SPM) {
            spm_fragment(t, &sc, text + f->off, f->len, t->add_space_prefix && prev_special, &out);
            prev_special = false;
        } else {
            s = bpe_fragment(t, &sc, text + f->off, f->len, &out);
        }
    }
    if (s == QL_OK && add_special && t->add_eos && t->eos >= 0) idvec_push(&out, t->eos);
    free(fr.v);
    scratch_free(&sc);
    if (s) {
        free(out.v);
        return s;
    }
    if (!out.v) out.v = ql_malloc(sizeof(int32_t));
    *ids = out.v;
    *n_ids = out.n;
    return QL_OK;
}

/* ---------------------------------------------------------------- token → piece */

static void put(char *buf, int cap, int *n, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++, (*n)++)
        if (*n < cap) buf[*n] = s[i];
}

/* Piece as llama.cpp's token_to_piece(special = true): control, unknown and user-defined tokens
 * give their text, normal tokens are unescaped (▁ → space; BPE: byte-level code points → bytes),
 * byte tokens give their byte, unused/undefined tokens nothing. A NUL is added when it fits. */
int ql_token_to_piece(const ql_tokenizer *t, int32_t id, char *buf, int cap) {
    if (!t || id < 0 || id >= t->n_vocab) return -1;
    if (!buf) cap = 0;
    const qstr *k = &t->tok[id];
    int n = 0;
    uint8_t bv;
    switch (t->type[id]) {
    case TT_CONTROL: case TT_UNKNOWN: case TT_USER:
        put(buf, cap, &n, k->s, k->len);
        break;
    case TT_BYTE:
        if (is_byte_token_text(k->s, k->len, &bv)) put(buf, cap, &n, (const char *)&bv, 1);
        else put(buf, cap, &n, k->s, k->len);
        break;
    case TT_NORMAL:
        if (t->kind == QL_TOK_SPM) {
            for (uint32_t i = 0; i < k->len;) {
                if (i + 3 <= k->len && memcmp(k->s + i, "\xe2\x96\x81", 3) == 0) {
                    put(buf, cap, &n, " ", 1);
                    i += 3;
                } else {
                    put(buf, cap, &n, k->s + i, 1);
                    i++;
                }
            }
        } else {
            for (uint32_t i = 0; i < k->len;) {
                uint32_t cp;
                size_t cl = utf8_decode((const uint8_t *)k->s + i, k->len - i, &cp);
                if (cl == 0) cl = 1, cp = UINT32_MAX;
                if (cp < 324 && g_cp_to_byte[cp] >= 0) {
                    char c = (char)g_cp_to_byte[cp];
                    put(buf, cap, &n, &c, 1);
                } else {
                    put(buf, cap, &n, k->s + i, cl); /* not a byte-level code point: as is */
                }
                i += (uint32_t)cl;
            }
        }
        break;
    default:
        break;
    }
    if (n < cap) buf[n] = 0;
    return n;
}

/* ---------------------------------------------------------------- synthetic byte vocabulary */

/* Sets the SPM keys shared by the translators. */
static void set_vocab(ql_gguf *g, const char *model, char **texts, const float *scores, const int32_t *types,
                      int64_t n) {
    ql_gguf_set_str(g, "tokenizer.ggml.model", model);
    ql_gguf_set_arr_str(g, "tokenizer.ggml.tokens", (const char *const *)texts, (uint64_t)n);
    if (scores) ql_gguf_set_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, scores, (uint64_t)n);
    ql_gguf_set_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, types, (uint64_t)n);
}

void ql_tokenizer_bytes_to_gguf(ql_gguf *g, int32_t n_vocab) {
    if (n_vocab < 259) n_vocab = 259; /* 3 specials + 256 bytes are the minimum */
    char **texts = ql_malloc((size_t)n_vocab * sizeof *texts);
    float *scores = ql_malloc((size_t)n_vocab * sizeof *scores);
    int32_t *types = ql_malloc((size_t)n_vocab * sizeof *types);
    for (int32_t i = 0; i < n_vocab; i++) {
        char buf[32];
        if (i == 0) snprintf(buf, sizeof buf, "<unk>");
        else if (i == 1) snprintf(buf, sizeof buf, "<s>");
        else if (i == 2) snprintf(buf, sizeof buf, "</s>");
        else if (i < 259) snprintf(buf, sizeof buf, "<0x%02X>", i - 3);
        else if (i == 259) snprintf(buf, sizeof buf, "\xe2\x96\x81"); /* spaces: one token, piece " " */
        else snprintf(buf, sizeof buf, "<extra_%d>", i - 260);
        texts[i] = ql_strdup(buf);
        /* fillers are normal tokens that no merge can form (no prefix of them is a token) */
        scores[i] = i < 260 ? 0.0f : -1e9f;
        types[i] = i == 0 ? TT_UNKNOWN : i < 3 ? TT_CONTROL : i < 259 ? TT_BYTE : TT_NORMAL;
    }
    set_vocab(g, "llama", texts, scores, types, n_vocab);
    ql_gguf_set_u32(g, "tokenizer.ggml.bos_token_id", 1);
    ql_gguf_set_u32(g, "tokenizer.ggml.eos_token_id", 2);
    ql_gguf_set_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    ql_gguf_set_bool(g, "tokenizer.ggml.add_bos_token", true);
    ql_gguf_set_bool(g, "tokenizer.ggml.add_eos_token", false);
    for (int32_t i = 0; i < n_vocab; i++) free(texts[i]);
    free(texts);
    free(scores);
    free(types);
}

/* ---------------------------------------------------------------- llama2.c tokenizer.bin */

static ql_status read_whole(const char *path, uint8_t **data, size_t *size) {
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ql_fail(QL_ERR_IO, "%s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return ql_fail(QL_ERR_IO, "%s: cannot seek", path);
    }
    long sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return ql_fail(QL_ERR_IO, "%s: cannot tell size", path);
    }
    uint8_t *buf = malloc((size_t)sz + 1);
    if (!buf) {
        fclose(f);
        return ql_fail(QL_ERR_NOMEM, "%s: %ld bytes", path, sz);
    }
    if (sz && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        fclose(f);
        return ql_fail(QL_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    *data = buf;
    *size = (size_t)sz;
    return QL_OK;
}

ql_status ql_tokenizer_llama2c_to_gguf(const char *path, int32_t n_vocab, ql_gguf *g) {
    if (!path || !g) return ql_fail(QL_ERR_ARG, "ql_tokenizer_llama2c_to_gguf: NULL argument");
    if (n_vocab < 3 || n_vocab > MAX_VOCAB)
        return ql_fail(QL_ERR_ARG, "%s: vocabulary size %d is out of range", path, n_vocab);
    uint8_t *d;
    size_t size;
    ql_status s = read_whole(path, &d, &size);
    if (s) return s;
    if (size < 4) {
        free(d);
        return ql_fail(QL_ERR_FORMAT, "%s: too short for a llama2.c tokenizer", path);
    }
    int32_t max_len;
    memcpy(&max_len, d, 4);
    if (max_len <= 0 || (size_t)max_len > size) {
        free(d);
        return ql_fail(QL_ERR_FORMAT, "%s: bad max_token_length %d", path, max_len);
    }
    char **texts = ql_calloc((size_t)n_vocab, sizeof *texts);
    float *scores = ql_malloc((size_t)n_vocab * sizeof *scores);
    int32_t *types = ql_malloc((size_t)n_vocab * sizeof *types);
    size_t off = 4;
    for (int32_t i = 0; i < n_vocab; i++) {
        int32_t len;
        if (size - off < 8) {
            s = ql_fail(QL_ERR_FORMAT, "%s: truncated at token %d of %d", path, i, n_vocab);
            goto done;
        }
        memcpy(&scores[i], d + off, 4);
        memcpy(&len, d + off + 4, 4);
        off += 8;
        if (len < 0 || (size_t)len > size - off) {
            s = ql_fail(QL_ERR_FORMAT, "%s: token %d has length %d but %zu bytes remain", path, i, len,
                        size - off);
            goto done;
        }
        const char *src = (const char *)d + off;
        if (memchr(src, 0, (size_t)len)) {
            s = ql_fail(QL_ERR_FORMAT, "%s: token %d contains a NUL byte", path, i);
            goto done;
        }
        off += (size_t)len;
        if (i < 3) { /* export.py writes "\n<s>\n" / "\n</s>\n" for BOS/EOS */
            static const char *names[3] = {"<unk>", "<s>", "</s>"};
            texts[i] = ql_strdup(names[i]);
            types[i] = i == 0 ? TT_UNKNOWN : TT_CONTROL;
            continue;
        }
        /* export.py replaced U+2581 by ' '; put it back */
        size_t n_sp = 0;
        for (int32_t j = 0; j < len; j++) n_sp += src[j] == ' ';
        char *txt = ql_malloc((size_t)len + 2 * n_sp + 1);
        size_t n = 0;
        for (int32_t j = 0; j < len; j++) {
            if (src[j] == ' ') { memcpy(txt + n, "\xe2\x96\x81", 3); n += 3; }
            else txt[n++] = src[j];
        }
        txt[n] = 0;
        texts[i] = txt;
        types[i] = is_byte_token_text(txt, n, NULL) ? TT_BYTE : TT_NORMAL;
    }
    set_vocab(g, "llama", texts, scores, types, n_vocab);
    ql_gguf_set_u32(g, "tokenizer.ggml.bos_token_id", 1);
    ql_gguf_set_u32(g, "tokenizer.ggml.eos_token_id", 2);
    ql_gguf_set_u32(g, "tokenizer.ggml.unknown_token_id", 0);
done:
    for (int32_t i = 0; i < n_vocab; i++) free(texts[i]);
    free(texts);
    free(scores);
    free(types);
    free(d);
    return s;
}

/* ---------------------------------------------------------------- tokenizer.json */

/* Finds the first object with "type" == type inside v (objects and arrays, any depth). */
static json_t *find_typed(json_t *v, const char *type, int depth) {
    if (!v || depth > 16) return NULL;
    if (json_is_object(v)) {
        const char *ty = json_string_value(json_object_get(v, "type"));
        if (ty && strcmp(ty, type) == 0) return v;
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            json_t *r = find_typed(x, type, depth + 1);
            if (r) return r;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            json_t *r = find_typed(x, type, depth + 1);
            if (r) return r;
        }
    }
    return NULL;
}

static int count_typed(json_t *v, const char *type, int depth) {
    if (!v || depth > 16) return 0;
    int c = 0;
    if (json_is_object(v)) {
        const char *ty = json_string_value(json_object_get(v, "type"));
        if (ty && strcmp(ty, type) == 0) c++;
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) c += count_typed(x, type, depth + 1);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) c += count_typed(x, type, depth + 1);
    }
    return c;
}

static int64_t vocab_lookup(json_t *vocab, json_t *added, const char *content) {
    json_t *v = json_object_get(vocab, content);
    if (json_is_integer(v)) return json_integer_value(v);
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        const char *c = json_string_value(json_object_get(a, "content"));
        if (c && strcmp(c, content) == 0 && json_is_integer(json_object_get(a, "id")))
            return json_integer_value(json_object_get(a, "id"));
    }
    return -1;
}

typedef struct {
    const char *path;
    json_t *root, *model, *vocab, *merges, *added;
    int64_t n;        /* vocabulary size */
    char **texts;     /* [n] borrowed from the JSON, NULL for gaps */
    int32_t *types;
    bool byte_level;
} hf_tok;

static ql_status hf_read_vocab(hf_tok *h) {
    const char *path = h->path;
    int64_t max_id = -1, count = 0;
    const char *key;
    json_t *v;
    json_object_foreach(h->vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_VOCAB)
            return ql_fail(QL_ERR_FORMAT, "%s: vocab entry '%.40s' has no valid id", path, key);
        max_id = QL_MAX(max_id, json_integer_value(v));
        count++;
    }
    size_t i;
    json_t *a;
    json_array_foreach(h->added, i, a) {
        json_t *id = json_object_get(a, "id");
        const char *c = json_string_value(json_object_get(a, "content"));
        if (!json_is_object(a) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= MAX_VOCAB || !c || !c[0])
            return ql_fail(QL_ERR_FORMAT, "%s: added_tokens[%zu] needs an id and a content", path, i);
        max_id = QL_MAX(max_id, json_integer_value(id));
        count++;
    }
    if (max_id < 0) return ql_fail(QL_ERR_FORMAT, "%s: empty vocabulary", path);
    /* ids come from the file: refuse vocabularies far sparser than their entries */
    if (max_id + 1 > count + 65536)
        return ql_fail(QL_ERR_FORMAT, "%s: token id %lld is far beyond the %lld entries", path,
                       (long long)max_id, (long long)count);
    h->n = max_id + 1;
    h->texts = calloc((size_t)h->n, sizeof *h->texts);
    h->types = calloc((size_t)h->n, sizeof *h->types);
    if (!h->texts || !h->types) return ql_fail(QL_ERR_NOMEM, "%s: vocabulary of %lld", path, (long long)h->n);
    json_object_foreach(h->vocab, key, v) {
        int64_t id = json_integer_value(v);
        if (h->texts[id])
            return ql_fail(QL_ERR_FORMAT, "%s: two vocab entries have id %lld", path, (long long)id);
        if (!key[0]) return ql_fail(QL_ERR_FORMAT, "%s: empty token text for id %lld", path, (long long)id);
        h->texts[id] = (char *)key;
        h->types[id] = TT_NORMAL;
    }
    json_array_foreach(h->added, i, a) {
        int64_t id = json_integer_value(json_object_get(a, "id"));
        const char *c = json_string_value(json_object_get(a, "content"));
        if (h->texts[id] && strcmp(h->texts[id], c) != 0)
            return ql_fail(QL_ERR_FORMAT, "%s: added token '%.40s' reuses id %lld of '%.40s'", path, c,
                           (long long)id, h->texts[id]);
        h->texts[id] = (char *)c;
        h->types[id] = json_is_true(json_object_get(a, "special")) ? TT_CONTROL : TT_USER;
    }
    return QL_OK;
}

/* Merge i as "left right" (malloc'ed) with both halves and their concatenation checked against the
 * vocabulary; *made: the id of the concatenation. */
static ql_status hf_merge(const hf_tok *h, size_t i, char **out, int64_t *made) {
    json_t *m = json_array_get(h->merges, i);
    const char *l = NULL, *r = NULL;
    char *tmp = NULL;
    *out = NULL;
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        const char *sp = s[0] ? strchr(s + 1, ' ') : NULL;
        if (!sp || !sp[1] || strchr(sp + 1, ' '))
            return ql_fail(QL_ERR_FORMAT, "%s: merges[%zu] is not \"left right\"", h->path, i);
        tmp = ql_strdup(s);
        tmp[sp - s] = 0;
        l = tmp;
        r = tmp + (sp - s) + 1;
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
        l = json_string_value(json_array_get(m, 0));
        r = json_string_value(json_array_get(m, 1));
        if (!l[0] || !r[0]) return ql_fail(QL_ERR_FORMAT, "%s: merges[%zu] has an empty half", h->path, i);
    } else {
        return ql_fail(QL_ERR_FORMAT, "%s: merges[%zu] is neither a string nor a pair of strings", h->path,
                       i);
    }
    size_t ll = strlen(l), rl = strlen(r);
    char *res = ql_malloc(ll + rl + 2);
    memcpy(res, l, ll);
    res[ll] = ' ';
    memcpy(res + ll + 1, r, rl + 1);
    ql_status s = QL_OK;
    if (!json_object_get(h->vocab, l) || !json_object_get(h->vocab, r)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: merges[%zu] '%.60s' uses a token not in the vocab", h->path, i, res);
    } else {
        char *cat = ql_malloc(ll + rl + 1);
        memcpy(cat, l, ll);
        memcpy(cat + ll, r, rl + 1);
        json_t *id = json_object_get(h->vocab, cat);
        if (!id)
            s = ql_fail(QL_ERR_FORMAT, "%s: merges[%zu] '%.60s' makes a token not in the vocab", h->path, i,
                        res);
        else
            *made = json_integer_value(id);
        free(cat);
    }
    free(tmp);
    if (s) {
        free(res);
        return s;
    }
    *out = res;
    return QL_OK;
}

/* TemplateProcessing "single" (e.g. [<s>, $A]): whether the post-processor adds a special token in
 * front / at the end, and which. *has: a template exists at all. */
static void hf_template(json_t *post, const char **first, const char **last, bool *has) {
    *first = *last = NULL;
    *has = false;
    json_t *tp = find_typed(post, "TemplateProcessing", 0);
    json_t *single = tp ? json_object_get(tp, "single") : NULL;
    size_t n = json_array_size(single);
    if (!json_is_array(single) || n == 0) return;
    *has = true;
    json_t *a = json_object_get(json_array_get(single, 0), "SpecialToken");
    json_t *z = n > 1 ? json_object_get(json_array_get(single, n - 1), "SpecialToken") : NULL;
    if (a) *first = json_string_value(json_object_get(a, "id"));
    if (z) *last = json_string_value(json_object_get(z, "id"));
}

ql_status ql_tokenizer_json_to_gguf(const char *path, ql_gguf *g) {
    if (!path || !g) return ql_fail(QL_ERR_ARG, "ql_tokenizer_json_to_gguf: NULL argument");
    json_error_t jerr;
    hf_tok h = {.path = path};
    ql_status s = QL_OK;
    char **merge_strs = NULL;
    int64_t *merge_ids = NULL;
    size_t n_merges = 0;
    float *scores = NULL;
    char **texts = NULL;
    char **pads = NULL;
    h.root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!h.root) {
        if (json_error_code(&jerr) == json_error_cannot_open_file)
            return ql_fail(QL_ERR_IO, "%s: cannot open", path);
        return ql_fail(QL_ERR_FORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    }
    if (!json_is_object(h.root)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: not a JSON object", path);
        goto done;
    }
    h.model = json_object_get(h.root, "model");
    if (!json_is_object(h.model)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: no \"model\" object", path);
        goto done;
    }
    json_t *mt = json_object_get(h.model, "type");
    if (mt && !json_is_string(mt)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: model.type is not a string", path);
        goto done;
    }
    if (mt && strcmp(json_string_value(mt), "BPE") != 0) {
        s = ql_fail(QL_ERR_UNSUPPORTED,
                    "%s: model type '%.30s' is not supported (BPE only: Unigram and WordPiece are not implemented)", path,
                    json_string_value(mt));
        goto done;
    }
    h.vocab = json_object_get(h.model, "vocab");
    if (!json_is_object(h.vocab) || json_object_size(h.vocab) == 0) {
        s = ql_fail(QL_ERR_FORMAT, "%s: model.vocab is missing or not an object", path);
        goto done;
    }
    h.merges = json_object_get(h.model, "merges");
    if (h.merges && !json_is_array(h.merges)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: model.merges is not an array", path);
        goto done;
    }
    h.added = json_object_get(h.root, "added_tokens");
    if (h.added && !json_is_array(h.added) && !json_is_null(h.added)) {
        s = ql_fail(QL_ERR_FORMAT, "%s: added_tokens is not an array", path);
        goto done;
    }
    if (!json_is_array(h.added)) h.added = NULL;

    json_t *pre = json_object_get(h.root, "pre_tokenizer");
    json_t *dec = json_object_get(h.root, "decoder");
    json_t *norm = json_object_get(h.root, "normalizer");
    bool byte_fallback = json_is_true(json_object_get(h.model, "byte_fallback"));
    json_t *bl = find_typed(pre, "ByteLevel", 0);
    json_t *meta = find_typed(pre, "Metaspace", 0);
    if (!meta) meta = find_typed(dec, "Metaspace", 0);
    bool spm_like = byte_fallback || meta || find_typed(norm, "Prepend", 0);
    if (bl || (!spm_like && find_typed(dec, "ByteLevel", 0))) h.byte_level = true;
    else if (!spm_like) {
        s = ql_fail(QL_ERR_UNSUPPORTED, "%s: BPE model is neither byte-level nor SentencePiece-style", path);
        goto done;
    }

    if ((s = hf_read_vocab(&h))) goto done;
    n_merges = h.merges ? json_array_size(h.merges) : 0;
    merge_strs = ql_calloc(n_merges ? n_merges : 1, sizeof *merge_strs);
    merge_ids = ql_calloc(n_merges ? n_merges : 1, sizeof *merge_ids);
    for (size_t i = 0; i < n_merges; i++)
        if ((s = hf_merge(&h, i, &merge_strs[i], &merge_ids[i]))) goto done;

    /* gaps become "[PADn]" unused tokens, as llama.cpp's converter writes them */
    texts = ql_malloc((size_t)h.n * sizeof *texts);
    pads = ql_calloc((size_t)h.n, sizeof *pads);
    for (int64_t i = 0; i < h.n; i++) {
        if (h.texts[i]) {
            texts[i] = h.texts[i];
            continue;
        }
        char buf[32];
        snprintf(buf, sizeof buf, "[PAD%lld]", (long long)i);
        texts[i] = pads[i] = ql_strdup(buf);
        h.types[i] = TT_UNUSED;
    }

    const char *tfirst, *tlast;
    bool has_template;
    hf_template(json_object_get(h.root, "post_processor"), &tfirst, &tlast, &has_template);
    bool add_bos, add_eos = tlast != NULL;
    const char *unk_text = json_string_value(json_object_get(h.model, "unk_token"));

    if (h.byte_level) {
        /* pre-tokenizer: the Split regex decides; a bare ByteLevel uses the GPT-2 regex */
        const char *pre_name = NULL;
        int n_split = count_typed(pre, "Split", 0);
        json_t *split = find_typed(pre, "Split", 0);
        if (n_split > 1) {
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: pre-tokenizer with %d Split steps is not supported", path,
                        n_split);
            goto done;
        }
        /* SmolLM: Digits(individual) then a ByteLevel with the GPT-2 regex = llama.cpp's "smollm" */
        json_t *digits = find_typed(pre, "Digits", 0);
        if (digits && (split || !json_is_true(json_object_get(digits, "individual_digits")))) {
            s = ql_fail(QL_ERR_UNSUPPORTED, "%s: Digits pre-tokenizer other than SmolLM's (individual digits, then "
                        "ByteLevel) is not supported", path);
            goto done;
        }
        if (split) {
            const char *rx = json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex"));
            for (size_t k = 0; rx && k < QL_ARRAY_LEN(g_split_pre) && !pre_name; k++)
                if (strcmp(rx, g_split_pre[k].re_hf) == 0) pre_name = g_split_pre[k].pre;
            if (!pre_name && rx && (strcmp(rx, RE_GPT2_HF) == 0 || strcmp(rx, RE_GPT2) == 0)) pre_name = "gpt-2";
            if (!pre_name) {
                s = ql_fail(QL_ERR_UNSUPPORTED, "%s: pre-tokenizer regex '%.60s' is not supported", path,
                            rx ? rx : "(not a regex)");
                goto done;
            }
        } else {
            json_t *ur = bl ? json_object_get(bl, "use_regex") : NULL;
            if (ur && json_is_false(ur)) {
                s = ql_fail(QL_ERR_UNSUPPORTED, "%s: ByteLevel pre-tokenizer without a regex", path);
                goto done;
            }
            pre_name = digits ? "smollm" : "gpt-2";
        }
        add_bos = has_template ? tfirst != NULL : strcmp(pre_name, "llama-bpe") == 0 || strcmp(pre_name, "tekken") == 0;
        ql_gguf_set_str(g, "tokenizer.ggml.model", "gpt2");
        ql_gguf_set_str(g, "tokenizer.ggml.pre", pre_name);
        ql_gguf_set_arr_str(g, "tokenizer.ggml.tokens", (const char *const *)texts, (uint64_t)h.n);
        ql_gguf_set_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, h.types, (uint64_t)h.n);
        ql_gguf_set_arr_str(g, "tokenizer.ggml.merges", (const char *const *)merge_strs, n_merges);
    } else {
        /* SentencePiece-converted BPE: SPM merging by score reproduces merge order when a token's
         * score is minus the rank of the merge that makes it. */
        scores = ql_malloc((size_t)h.n * sizeof *scores);
        bool *ranked = ql_calloc((size_t)h.n, sizeof *ranked);
        for (int64_t i = 0; i < h.n; i++) scores[i] = h.types[i] == TT_NORMAL ? -1e9f : 0.0f;
        for (size_t i = 0; i < n_merges; i++) {
            int64_t id = merge_ids[i];
            if (!ranked[id]) scores[id] = -(float)i; /* the first (best) merge making it */
            ranked[id] = true;
        }
        free(ranked);
        for (int64_t i = 0; i < h.n; i++) {
            if (unk_text && strcmp(texts[i], unk_text) == 0) h.types[i] = TT_UNKNOWN;
            else if (h.types[i] == TT_NORMAL && byte_fallback &&
                     is_byte_token_text(texts[i], strlen(texts[i]), NULL))
                h.types[i] = TT_BYTE;
        }
        bool space_prefix = true;
        if (meta) {
            const char *scheme = json_string_value(json_object_get(meta, "prepend_scheme"));
            if ((scheme && strcmp(scheme, "never") == 0) ||
                json_is_false(json_object_get(meta, "add_prefix_space")))
                space_prefix = false;
        } else if (norm && !find_typed(norm, "Prepend", 0)) {
            space_prefix = false;
        }
        add_bos = has_template ? tfirst != NULL : true;
        set_vocab(g, "llama", texts, scores, h.types, h.n);
        ql_gguf_set_str(g, "tokenizer.ggml.pre", "default");
        ql_gguf_set_bool(g, "tokenizer.ggml.add_space_prefix", space_prefix);
    }

    /* special ids: the template's token, else well-known texts; keys already set are kept */
    int64_t bos = tfirst ? vocab_lookup(h.vocab, h.added, tfirst) : -1;
    static const char *bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"};
    static const char *eos_names[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"}; /* <bos>/<eos>: Gemma */
    for (size_t k = 0; bos < 0 && k < QL_ARRAY_LEN(bos_names); k++)
        bos = vocab_lookup(h.vocab, h.added, bos_names[k]);
    int64_t eos = add_eos && tlast ? vocab_lookup(h.vocab, h.added, tlast) : -1;
    for (size_t k = 0; eos < 0 && k < QL_ARRAY_LEN(eos_names); k++)
        eos = vocab_lookup(h.vocab, h.added, eos_names[k]);
    int64_t unk = unk_text ? vocab_lookup(h.vocab, h.added, unk_text) : -1;
    if (bos >= 0 && !ql_gguf_get(g, "tokenizer.ggml.bos_token_id"))
        ql_gguf_set_u32(g, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (eos >= 0 && !ql_gguf_get(g, "tokenizer.ggml.eos_token_id"))
        ql_gguf_set_u32(g, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    if (unk >= 0 && !ql_gguf_get(g, "tokenizer.ggml.unknown_token_id"))
        ql_gguf_set_u32(g, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    if (!ql_gguf_get(g, "tokenizer.ggml.add_bos_token"))
        ql_gguf_set_bool(g, "tokenizer.ggml.add_bos_token", add_bos);
    if (!ql_gguf_get(g, "tokenizer.ggml.add_eos_token"))
        ql_gguf_set_bool(g, "tokenizer.ggml.add_eos_token", add_eos);

done:
    for (size_t i = 0; merge_strs && i < n_merges; i++) free(merge_strs[i]);
    free(merge_strs);
    free(merge_ids);
    for (int64_t i = 0; pads && i < h.n; i++) free(pads[i]);
    free(pads);
    free(texts);
    free(scores);
    free(h.texts);
    free(h.types);
    json_decref(h.root);
    return s;
}

/* ---------------------------------------------------------------- GGUF -> tokenizer.json */

typedef struct {
    double score;
    int64_t seq; /* position before the sort: ties keep it (Python's stable sort) */
    int64_t l, r;
} spm_merge;

static int spm_merge_cmp(const void *pa, const void *pb) {
    const spm_merge *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static json_t *special_token_json(const char *text, int64_t id, bool special) {
    return json_pack("{s:I,s:s,s:b,s:b,s:b,s:b,s:b}", "id", (json_int_t)id, "content", text, "single_word", 0, "lstrip", 0,
                     "rstrip", 0, "normalized", !special, "special", special);
}

/* A SentencePiece vocabulary's merges, as transformers' SentencePieceExtractor derives them: every split
 * of a token into two vocabulary pieces is a merge ranked by the token's score (best first); the splits
 * of one token in order of (left id, right id). Splits fall on UTF-8 character boundaries. */
static json_t *spm_merges(char *const *texts, const ql_gguf_value *scores, const int32_t *types, int64_t n, json_t *vocab) {
    spm_merge *m = NULL;
    int64_t nm = 0, cap = 0;
    for (int64_t i = 0; i < n; i++) {
        if (types[i] != TT_NORMAL) continue;
        const char *t = texts[i];
        size_t len = strlen(t);
        int64_t first = nm;
        for (size_t k = 1; k < len; k++) {
            if (((unsigned char)t[k] & 0xC0) == 0x80) continue; /* inside a character */
            char *left = ql_malloc(k + 1);
            memcpy(left, t, k);
            left[k] = 0;
            json_t *lj = json_object_get(vocab, left), *rj = json_object_get(vocab, t + k);
            free(left);
            if (!lj || !rj) continue;
            if (nm == cap) m = ql_realloc(m, (size_t)(cap = cap ? cap * 2 : 1024) * sizeof *m);
            m[nm++] = (spm_merge){scores ? scores[i].v.f : -(double)i, 0, json_integer_value(lj), json_integer_value(rj)};
        }
        for (int64_t a = first + 1; a < nm; a++) /* (left id, right id) order within the token: insertion sort */
            for (int64_t b = a; b > first && (m[b - 1].l > m[b].l || (m[b - 1].l == m[b].l && m[b - 1].r > m[b].r)); b--) {
                spm_merge tmp = m[b];
                m[b] = m[b - 1];
                m[b - 1] = tmp;
            }
    }
    for (int64_t i = 0; i < nm; i++) m[i].seq = i;
    if (nm) qsort(m, (size_t)nm, sizeof *m, spm_merge_cmp);
    json_t *arr = json_array();
    for (int64_t i = 0; i < nm; i++) json_array_append_new(arr, json_pack("[s,s]", texts[m[i].l], texts[m[i].r]));
    free(m);
    return arr;
}

ql_status ql_tokenizer_gguf_to_json(const ql_gguf *g, char **out) {
    *out = NULL;
    const char *model = ql_gguf_get_str(g, "tokenizer.ggml.model");
    uint64_t n = 0, nt = 0, ns = 0;
    const ql_gguf_value *tok = ql_gguf_get_arr(g, "tokenizer.ggml.tokens", QL_GGUF_STRING, &n);
    const ql_gguf_value *typ = ql_gguf_get_arr(g, "tokenizer.ggml.token_type", QL_GGUF_I32, &nt);
    const ql_gguf_value *sc = ql_gguf_get_arr(g, "tokenizer.ggml.scores", QL_GGUF_F32, &ns);
    if (!model || !tok || !n)
        return ql_fail(QL_ERR_FORMAT, "%s: no tokenizer.ggml.model / tokens to convert", g->path ? g->path : "model");
    bool spm = !strcmp(model, "llama"), bpe = !strcmp(model, "gpt2");
    const char *pre = ql_gguf_get_str(g, "tokenizer.ggml.pre");
    const char *split_re = NULL;
    for (size_t k = 0; bpe && pre && k < QL_ARRAY_LEN(g_split_pre) && !split_re; k++)
        if (strcmp(pre, g_split_pre[k].pre) == 0) split_re = g_split_pre[k].re_hf;
    bool smollm = bpe && pre && !strcmp(pre, "smollm");
    if (!spm && !bpe)
        return ql_fail(QL_ERR_UNSUPPORTED, "tokenizer model '%s' has no tokenizer.json conversion (llama and gpt2 do)", model);
    if (bpe && pre && !split_re && !smollm && strcmp(pre, "gpt-2") && strcmp(pre, "default"))
        return ql_fail(QL_ERR_UNSUPPORTED, "gpt2 tokenizer with pre-tokenizer '%s' has no tokenizer.json conversion", pre);
    char **texts = ql_malloc((size_t)n * sizeof *texts);
    int32_t *types = ql_malloc((size_t)n * sizeof *types);
    for (uint64_t i = 0; i < n; i++) {
        texts[i] = tok[i].v.str.s;
        types[i] = typ && nt == n ? (int32_t)typ[i].v.i : TT_NORMAL;
    }
    int64_t bos = -1, eos = -1, unk = -1, v;
    if (ql_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v) && v >= 0 && (uint64_t)v < n) bos = v;
    if (ql_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &v) && v >= 0 && (uint64_t)v < n) eos = v;
    if (ql_gguf_get_int(g, "tokenizer.ggml.unknown_token_id", &v) && v >= 0 && (uint64_t)v < n) unk = v;
    const ql_gguf_value *ab = ql_gguf_get(g, "tokenizer.ggml.add_bos_token"), *ae = ql_gguf_get(g, "tokenizer.ggml.add_eos_token");
    bool add_bos = ab ? ab->v.u != 0 : spm, add_eos = ae ? ae->v.u != 0 : false;
    const ql_gguf_value *asp = ql_gguf_get(g, "tokenizer.ggml.add_space_prefix");
    bool space_prefix = asp ? asp->v.u != 0 : true;

    json_t *vocab = json_object(), *added = json_array();
    for (uint64_t i = 0; i < n; i++) {
        if (types[i] == TT_UNUSED && json_object_get(vocab, texts[i])) continue;
        json_object_set_new(vocab, texts[i], json_integer((json_int_t)i));
        if (types[i] == TT_CONTROL || types[i] == TT_UNKNOWN || types[i] == TT_USER)
            json_array_append_new(added, special_token_json(texts[i], (int64_t)i, types[i] != TT_USER));
    }
    json_t *single = json_array(), *specials = json_object();
    if (add_bos && bos >= 0) {
        json_array_append_new(single, json_pack("{s:{s:s,s:i}}", "SpecialToken", "id", texts[bos], "type_id", 0));
        json_object_set_new(specials, texts[bos], json_pack("{s:s,s:[I],s:[s]}", "id", texts[bos], "ids", (json_int_t)bos, "tokens", texts[bos]));
    }
    json_array_append_new(single, json_pack("{s:{s:s,s:i}}", "Sequence", "id", "A", "type_id", 0));
    if (add_eos && eos >= 0) {
        json_array_append_new(single, json_pack("{s:{s:s,s:i}}", "SpecialToken", "id", texts[eos], "type_id", 0));
        json_object_set_new(specials, texts[eos], json_pack("{s:s,s:[I],s:[s]}", "id", texts[eos], "ids", (json_int_t)eos, "tokens", texts[eos]));
    }
    json_t *post = json_pack("{s:s,s:o,s:o,s:o}", "type", "TemplateProcessing", "single", single, "pair", json_deep_copy(single),
                             "special_tokens", specials);
    json_t *root = json_object(), *mdl;
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens", added);
    if (spm) {
        json_t *norms = json_array();
        if (space_prefix) json_array_append_new(norms, json_pack("{s:s,s:s}", "type", "Prepend", "prepend", "\xE2\x96\x81"));
        json_array_append_new(norms, json_pack("{s:s,s:{s:s},s:s}", "type", "Replace", "pattern", "String", " ", "content", "\xE2\x96\x81"));
        json_object_set_new(root, "normalizer", json_pack("{s:s,s:o}", "type", "Sequence", "normalizers", norms));
        json_object_set_new(root, "pre_tokenizer", json_null());
        json_object_set_new(root, "post_processor", post);
        json_object_set_new(root, "decoder",
                            json_pack("{s:s,s:[{s:s,s:{s:s},s:s},{s:s},{s:s},{s:s,s:s,s:i,s:i}]}", "type", "Sequence", "decoders",
                                      "type", "Replace", "pattern", "String", "\xE2\x96\x81", "content", " ", "type", "ByteFallback",
                                      "type", "Fuse", "type", "Strip", "content", " ", "start", space_prefix ? 1 : 0, "stop", 0));
        mdl = json_pack("{s:s,s:n,s:o,s:n,s:n,s:b,s:b,s:b}", "type", "BPE", "dropout", "unk_token",
                        unk >= 0 ? json_string(texts[unk]) : json_null(), "continuing_subword_prefix", "end_of_word_suffix",
                        "fuse_unk", 1, "byte_fallback", 1, "ignore_merges", 0);
        json_object_set_new(mdl, "vocab", vocab);
        json_object_set_new(mdl, "merges", spm_merges(texts, sc && ns == n ? sc : NULL, types, (int64_t)n, vocab));
    } else {
        json_t *bl = json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", split_re == NULL);
        if (split_re)
            json_object_set_new(root, "pre_tokenizer",
                                json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},o]}", "type", "Sequence", "pretokenizers", "type", "Split",
                                          "pattern", "Regex", split_re, "behavior", "Isolated", "invert", 0, bl));
        else if (smollm)
            json_object_set_new(root, "pre_tokenizer", json_pack("{s:s,s:[{s:s,s:b},o]}", "type", "Sequence", "pretokenizers", "type",
                                                                 "Digits", "individual_digits", 1, bl));
        else json_object_set_new(root, "pre_tokenizer", bl);
        json_object_set_new(root, "post_processor", post);
        json_object_set_new(root, "decoder", json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1));
        uint64_t nmg = 0;
        const ql_gguf_value *mg = ql_gguf_get_arr(g, "tokenizer.ggml.merges", QL_GGUF_STRING, &nmg);
        json_t *merges = json_array();
        for (uint64_t i = 0; mg && i < nmg; i++) json_array_append_new(merges, json_string(mg[i].v.str.s));
        mdl = json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b}", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix",
                        "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", pre && (!strcmp(pre, "llama-bpe") || !strcmp(pre, "tekken")));
        json_object_set_new(mdl, "vocab", vocab);
        json_object_set_new(mdl, "merges", merges);
    }
    json_object_set_new(root, "model", mdl);
    *out = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    free(texts);
    free(types);
    return *out ? QL_OK : ql_fail(QL_ERR_FORMAT, "tokenizer.json could not be encoded (a token is not valid UTF-8?)");
}
