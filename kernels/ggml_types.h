/* ggml_types.h — the storage types a GGUF file can hold, by numeric id: name, elements per block,
 * bytes per block. This is what the GGUF reader needs to size and carry any tensor. The static table
 * holds the ggml types that exist before any format is registered (so a program that links the GGUF
 * reader without the format registry still carries every file llama.cpp wrote before this table was
 * frozen); every format of formats/ registers its own type at start-up, so a ggml type added later
 * (NVFP4) or a qlab extension type (QL_TYPE_EXT_BASE and above) needs no line here. */
#ifndef QL_GGML_TYPES_H
#define QL_GGML_TYPES_H

#include <stdint.h>
#include <stdbool.h>

enum {
    QL_TYPE_F32 = 0, QL_TYPE_F16 = 1, QL_TYPE_Q4_0 = 2, QL_TYPE_Q4_1 = 3,
    QL_TYPE_Q5_0 = 6, QL_TYPE_Q5_1 = 7, QL_TYPE_Q8_0 = 8, QL_TYPE_Q8_1 = 9,
    QL_TYPE_Q2_K = 10, QL_TYPE_Q3_K = 11, QL_TYPE_Q4_K = 12, QL_TYPE_Q5_K = 13,
    QL_TYPE_Q6_K = 14, QL_TYPE_Q8_K = 15, QL_TYPE_IQ2_XXS = 16, QL_TYPE_IQ2_XS = 17,
    QL_TYPE_IQ3_XXS = 18, QL_TYPE_IQ1_S = 19, QL_TYPE_IQ4_NL = 20, QL_TYPE_IQ3_S = 21,
    QL_TYPE_IQ2_S = 22, QL_TYPE_IQ4_XS = 23, QL_TYPE_I8 = 24, QL_TYPE_I16 = 25,
    QL_TYPE_I32 = 26, QL_TYPE_I64 = 27, QL_TYPE_F64 = 28, QL_TYPE_IQ1_M = 29,
    QL_TYPE_BF16 = 30, QL_TYPE_TQ1_0 = 34, QL_TYPE_TQ2_0 = 35, QL_TYPE_MXFP4 = 39,
    QL_TYPE_GGML_COUNT = 64, /* ids below this are ggml's (present or future); the table sizes by it */
    QL_TYPE_EXT_BASE = 0x5100, /* qlab extension ids start here */
};

typedef struct {
    const char *name; /* ggml's lower-case name: "f32", "q4_k", "iq4_xs" */
    int block;        /* elements per block */
    int block_bytes;  /* bytes per block */
} ql_type_info;

/* NULL for an id that is neither a ggml type nor a registered extension. */
const ql_type_info *ql_type_get(uint32_t type);
/* Register a type not in the static table: a ggml id (< QL_TYPE_GGML_COUNT) or an extension id
 * (called by the format registry at start-up; ignored for ids already known or out of range). */
void ql_type_register(uint32_t type, const char *name, int block, int block_bytes);
/* Lookup by name; returns -1 when unknown. */
int64_t ql_type_by_name(const char *name);
/* Bytes for a row of n elements; -1 if n is not a multiple of the block. Extension types whose rows
 * are not whole blocks (short last group, per-tensor scales) are sized by the registry's sizer. */
int64_t ql_type_row_bytes(uint32_t type, int64_t n);
/* Bytes of a tensor [nrows, ne0]; -1 if the shape does not fit the type or overflows. */
int64_t ql_type_tensor_bytes(uint32_t type, int64_t ne0, int64_t nrows);
typedef int64_t (*ql_type_sizer)(uint32_t type, int64_t ne0, int64_t nrows);
void ql_type_set_ext_sizer(ql_type_sizer fn);
bool ql_type_is_ggml(uint32_t type);

#endif
