/* tokenizer.h — text to token ids and back, built from GGUF tokenizer metadata
 * (tokenizer.ggml.model = "llama" → SentencePiece-style; "gpt2" → byte-level BPE with a pre-tokenizer
 * chosen by tokenizer.ggml.pre). Other sources (tokenizer.json, llama2.c tokenizer.bin) are first
 * translated into those same GGUF keys, so there is one tokenizer implementation per algorithm.
 * A ql_tokenizer is immutable after creation and safe to use from several threads. */
#ifndef QL_TOKENIZER_H
#define QL_TOKENIZER_H

#include "core/gguf.h"

typedef struct ql_tokenizer ql_tokenizer;

typedef enum { QL_TOK_SPM = 1, QL_TOK_BPE = 2 } ql_tok_kind;

ql_status ql_tokenizer_from_gguf(const ql_gguf *g, ql_tokenizer **out);
void ql_tokenizer_free(ql_tokenizer *t);

/* Tokenizes `text` (len bytes, UTF-8). add_special: prepend BOS (and append EOS) the way llama.cpp's
 * llama_tokenize(add_special=true, parse_special=false) does for this vocabulary.
 * *ids is malloc'ed (caller frees). */
ql_status ql_tokenize(const ql_tokenizer *t, const char *text, size_t len, bool add_special,
                      int32_t **ids, int64_t *n_ids);
/* Writes the piece for `id` as text (byte tokens decoded, ▁ → space) into buf; returns its length
 * (may exceed cap, then the output is truncated) or -1 for an invalid id. */
int ql_token_to_piece(const ql_tokenizer *t, int32_t id, char *buf, int cap);

int32_t ql_tokenizer_n_vocab(const ql_tokenizer *t);
int32_t ql_tokenizer_bos(const ql_tokenizer *t); /* -1 if none */
int32_t ql_tokenizer_eos(const ql_tokenizer *t);
bool ql_tokenizer_add_bos(const ql_tokenizer *t);
ql_tok_kind ql_tokenizer_kind(const ql_tokenizer *t);

/* Translators into tokenizer.ggml.* keys of `g` (tokens, scores, token_type, merges, model, pre,
 * bos/eos/unk ids, add_bos_token). Errors name the file. */
ql_status ql_tokenizer_json_to_gguf(const char *tokenizer_json_path, ql_gguf *g);
/* The reverse, for exporters: tokenizer.json text (malloc'ed) for a llama (SentencePiece: BPE with
 * byte fallback, merges derived from the scores as transformers does) or gpt2 (byte-level BPE with the
 * pre-tokenizer regex of tokenizer.ggml.pre) vocabulary; other tokenizer models are refused. */
ql_status ql_tokenizer_gguf_to_json(const ql_gguf *g, char **out);
ql_status ql_tokenizer_llama2c_to_gguf(const char *tokenizer_bin_path, int32_t n_vocab, ql_gguf *g);
/* A byte-level SPM vocabulary (3 specials + 256 byte tokens + optional merges-free) for synthetic
 * models, so qlab ppl runs on them without any tokenizer file. */
void ql_tokenizer_bytes_to_gguf(ql_gguf *g, int32_t n_vocab);

#endif
