/* hf_quant.h — quantized Hugging Face folders (config.json with a `quantization_config`: GPTQ, AWQ GEMM,
 * compressed-tensors, bitsandbytes 4-bit and LLM.int8) read back into qlab tensors. core/hf.c collects
 * every safetensors tensor of the folder (any dtype, see ql_safetensors_parse_any) and hands the list to
 * ql_hfq_convert, which replaces each quantized module's parts (qweight/qzeros/scales/g_idx, ...) by one
 * `<module>.weight` in the registry format that holds it bit for bit, or F32 when none does (a note
 * says which and why). Layouts: docs/formats.md § Exporters and § Import. */
#ifndef QL_HF_QUANT_H
#define QL_HF_QUANT_H

#include "core/gguf.h"

#include <jansson.h>

/* safetensors dtypes as written in the file (the GGUF type a tensor gets only sizes its bytes: U8 and
 * FP8 tensors get I8, U16 I16, U32 I32). */
typedef enum {
    QL_STD_F32 = 0, QL_STD_F16, QL_STD_BF16, QL_STD_F64, QL_STD_I8, QL_STD_U8, QL_STD_I16, QL_STD_U16,
    QL_STD_I32, QL_STD_U32, QL_STD_I64, QL_STD_F8_E4M3, QL_STD_F8_E5M2, QL_STD_BOOL, QL_STD_COUNT
} ql_st_dtype;
const char *ql_st_dtype_name(int dtype);

/* Like ql_safetensors_parse, but also takes the integer, FP8 and bool dtypes of quantized checkpoints;
 * *dtypes (malloc'ed, one per tensor of g in order) receives each tensor's ql_st_dtype. */
ql_status ql_safetensors_parse_any(const void *buf, size_t size, const char *label, ql_gguf *g, uint8_t **dtypes);

/* One tensor of a folder, HF name (text-model prefix already stripped), shape in GGUF order. */
typedef struct {
    char *name;       /* owned */
    int dtype;        /* ql_st_dtype; for a converted module: -1 (type holds a registry format) */
    uint32_t type;    /* GGUF type id */
    int n_dims;
    int64_t ne[QL_MAX_DIMS];
    const uint8_t *data;
    uint64_t nbytes;
    const char *src;  /* shard path, for messages (borrowed) */
    bool gguf_order;  /* rows already in GGUF's q/k order: the loader must not permute them again */
} ql_hfq_tensor;

typedef struct ql_hfq ql_hfq;

/* What the loader tells the converter about the architecture. */
typedef struct {
    void *user;
    /* > 0: the module's weight rows are permuted HF -> GGUF for this many heads (llama q/k) */
    int (*rope_heads)(void *user, const char *hf_weight_name);
    /* the GGUF name of an HF tensor name (malloc'ed), for the qlab.act.* keys */
    char *(*gguf_name)(void *user, const char *hf_name);
} ql_hfq_arch;

/* config.json's quantization_config: *out = NULL when there is none; a method qlab cannot read, or a
 * malformed entry, fails naming `cfg_path`. */
ql_status ql_hfq_parse(const char *cfg_path, const json_t *root, ql_hfq **out);
void ql_hfq_free(ql_hfq *q);
const char *ql_hfq_method(const ql_hfq *q);

/* Replaces the quantized modules among ts[0..*n-1] (freeing the parts' names) by one tensor each;
 * new buffers are adopted by `g`, and static activation scales become qlab.act.* keys of g. Every
 * shape, dtype and packed value is checked; a failure names `dir` and the tensor. */
ql_status ql_hfq_convert(const ql_hfq *q, const char *dir, const ql_hfq_arch *arch, ql_hfq_tensor **ts,
                         int64_t *n, ql_gguf *g);

#endif
