/* format.h — the one registry of storage formats: how codes are stored (GGUF block types, INTn
 * groups, NF4/FP4, FP8, floats). The CLI, TUI, presets, allocation and exporters all iterate this
 * table; none of them special-cases a format. Adding a format = one methods/fmt_*.c file with a
 * `const ql_format` definition + one line in methods/format.c. Methods that choose codes more cleverly
 * than rounding (GPTQ, AWQ, ...) live in a separate registry and write into these formats.
 *
 * Layout rules. A format either encodes rows independently (row_bytes(ncols) per row; rows may be
 * quantized in any split, in parallel) or, with whole_tensor set, needs the whole matrix at once
 * (per-tensor scale, 2-D blocks): then tensor_bytes(ncols, nrows) sizes it and the functions are
 * always called with every row. Entries are immutable and thread-safe. */
#ifndef QL_FORMAT_H
#define QL_FORMAT_H

#include "base/ql_common.h"

typedef void (*ql_quantize_fn)(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *importance);
typedef void (*ql_dequantize_fn)(const void *src, float *dst, int64_t nrows, int64_t ncols);

typedef struct ql_format {
    const char *name;     /* stable name used by plans and scripts: "q4_k", "int4_g128", "nf4_dq", "fp8_e4m3" */
    const char *summary;  /* one line for the catalogue */
    uint32_t type;        /* ggml type id, or QL_TYPE_EXT_BASE + n for qlab extension types */
    int block;            /* weights per block along a row (1 for plain floats) */
    int block_bytes;      /* bytes per block (for ggml types: exactly ggml's) */
    double bpw;           /* exact bits per weight on a 4096-wide row, everything stored counted */
    bool whole_tensor;    /* see the layout rules above */
    bool uses_importance; /* quantize_rows honours per-column importance weights */
    double tolerance;     /* test bound: RMSE / RMS after a round trip of N(0,1) rows of 4096 */
    /* bytes of one row / of a whole tensor; NULL means ncols / block * block_bytes (must divide) */
    int64_t (*row_bytes)(int64_t ncols);
    int64_t (*tensor_bytes)(int64_t ncols, int64_t nrows);
    ql_quantize_fn quantize_rows;     /* scalar reference: the specification */
    ql_dequantize_fn dequantize_rows; /* scalar reference */
    ql_quantize_fn quantize_rows_fast;     /* optional SIMD twin (picked at run time), NULL if none */
    ql_dequantize_fn dequantize_rows_fast; /* optional SIMD twin */
    bool has_cuda;                         /* kernels/<format>.cu provides ql_cuda_{quantize,dequantize} */
} ql_format;

/* Registry access (extension types are registered with ggml_types.h at program start). */
int ql_format_count(void);
const ql_format *ql_format_at(int i); /* catalogue order; NULL out of range */
const ql_format *ql_format_by_name(const char *name); /* case-insensitive; NULL if unknown */
const ql_format *ql_format_by_type(uint32_t type);

/* Bytes needed for a [nrows, ncols] tensor in format f; -1 if the shape does not fit. */
int64_t ql_format_tensor_bytes(const ql_format *f, int64_t ncols, int64_t nrows);
/* true when f can store rows of ncols (block formats need ncols % block == 0). */
bool ql_format_fits(const ql_format *f, int64_t ncols);

/* Quantize / dequantize a whole [nrows, ncols] tensor with n_threads (rows split across threads for
 * row-wise formats). use_fast=false forces the scalar reference (QL_FORCE_REF=1 does it globally). */
ql_status ql_format_quantize(const ql_format *f, const float *src, void *dst, int64_t nrows, int64_t ncols,
                             const float *importance, int n_threads);
ql_status ql_format_dequantize(const ql_format *f, const void *src, float *dst, int64_t nrows, int64_t ncols,
                               int n_threads);

#endif
