/* model.h — a llama-family model as qlab sees it: hyper-parameters, tensors indexed by role, the
 * metadata (a ql_gguf, carried through to exports) and the tokenizer. Loaded from a GGUF file, a
 * Hugging Face folder or a llama2.c checkpoint; every loader first produces a ql_gguf with GGUF
 * names and GGUF (rope-interleaved) q/k row order, so the forward pass has one layout to handle.
 * Tensor data stays memory-mapped; nothing is copied whole unless a conversion requires it. */
#ifndef QL_MODEL_H
#define QL_MODEL_H

#include "core/gguf.h"
#include "core/tokenizer.h"

typedef struct {
    char arch[32];
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx_train;
    int head_dim;       /* n_embd / n_head unless the file says otherwise */
    int rope_dim;       /* dimensions rotated (llama: head_dim) */
    float rope_base;    /* default 10000 */
    float rope_scale;   /* linear scaling factor (positions divided by it); 1 = none */
    int rope_neox;      /* 1: rotate (i, i+half) pairs (qwen2 style); 0: adjacent pairs (llama) */
    float norm_eps;
    bool tied_output;   /* no output.weight: the embedding is the classifier */
} ql_config;

typedef struct {
    ql_gguf_tensor *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv;
    ql_gguf_tensor *ffn_norm, *w_gate, *w_up, *w_down;
} ql_layer_tensors;

typedef struct ql_model {
    char *path;
    ql_config cfg;
    ql_gguf *gguf;            /* metadata + tensors (owned) */
    ql_tokenizer *tok;        /* owned; NULL if the file has no tokenizer */
    ql_gguf_tensor *tok_embd, *output_norm, *output; /* output == tok_embd when tied */
    ql_layer_tensors *layers; /* n_layer entries */
} ql_model;

typedef enum { QL_SRC_GGUF, QL_SRC_HF, QL_SRC_LLAMA2C } ql_model_source;

/* Detects the source kind from `path` (a .gguf file, a folder with config.json, a llama2.c .bin). */
ql_status ql_model_load(const char *path, ql_model **out);
/* Builds the model view over an existing ql_gguf (takes ownership of g). */
ql_status ql_model_from_gguf(ql_gguf *g, const char *path, ql_model **out);
void ql_model_free(ql_model *m);
/* Fails (QL_ERR_FORMAT) with what to do about a model without a tokenizer: which files the loader
 * looks for (tokenizer.bin or tok<vocab>.bin beside a llama2.c .bin, tokenizer.json in a Hugging Face
 * folder) and where; `need` says what wanted one ("perplexity needs one"). */
ql_status ql_model_no_tokenizer(const ql_model *m, const char *need);
int64_t ql_model_n_params(const ql_model *m);

/* Loaders into the common representation (core/hf.c, core/llama2c.c). */
ql_status ql_hf_load(const char *dir, ql_gguf **out);
ql_status ql_llama2c_load(const char *bin_path, ql_gguf **out);
/* GGUF → Hugging Face folder (config.json, model.safetensors, tokenizer metadata). */
ql_status ql_hf_save(const ql_gguf *g, const char *dir);
/* For exporters that write Hugging Face folders (pipeline/export_st.c): the HF name of a GGUF tensor
 * (malloc'ed), with *rope_heads > 0 when its rows must be put back in HF's q/k order with
 * ql_rope_permute_rows(..., false) for that many heads; and config.json's text for model g. */
char *ql_hf_tensor_name(const ql_gguf *g, const char *gguf_name, int *rope_heads);
ql_status ql_hf_config_text(const ql_gguf *g, const char *torch_dtype, char **out);
/* True when the HF folder stores this tensor as its GGUF value minus 1 (Gemma's RMSNorm weights). */
bool ql_hf_norm_shift(const ql_gguf *g, const char *gguf_name);

/* Safetensors header parsing (exposed for fuzzing): fills `g` with tensors pointing into buf. */
ql_status ql_safetensors_parse(const void *buf, size_t size, const char *label, ql_gguf *g);

/* The rope permutation between HF (half-split) and GGUF (interleaved) q/k row order, on whole rows
 * of any element type: rows = n_head * head_dim, each row_bytes long; dst and src must not alias. */
void ql_rope_permute_rows(void *dst, const void *src, int n_head, int64_t rows, size_t row_bytes,
                          bool to_gguf);

#endif
