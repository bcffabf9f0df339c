/* format.h — the one registry of storage formats: one traits entry per format holds every fact about it
 * (name, stable on-disk id, family, sizes, block geometry, reference codec, llama.cpp identity, the code
 * grid error-feedback methods use, the words the catalogue shows) plus pointers to its per-backend
 * operation tables. The CLI, TUI, presets, allocation, forward pass and exporters read these entries;
 * none of them keeps a side table keyed by format. Adding a format = one formats/fmt_*.c file with a
 * `const ql_format` definition + one line in formats/format.c (docs/architecture.md, "files touched").
 *
 * The split follows ggml's type_traits / type_traits_cpu: the entry itself holds the facts and the
 * scalar reference (the specification); `simd` and `cuda` point at separate operation tables of
 * kernels/ functions (kernels/ cannot include formats/, so formats point at kernel entry points). A
 * backend column is non-NULL only where the kernel exists and an equality test against the reference
 * covers it (tests/test_traits.c runs that check for every non-NULL operation it finds).
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

/* What kind of code a format stores; the catalogue groups by it and tests check every entry has one. */
typedef enum ql_format_family {
    QL_FAMILY_UNSET = 0, /* never valid: a forgotten field */
    QL_FAMILY_FLOAT,     /* f32, f16, bf16 */
    QL_FAMILY_GGML_LEGACY, /* ggml's 32-blocks with an fp16 scale: q4_0 .. q8_0 */
    QL_FAMILY_GGML_K,    /* ggml's 256-super-blocks: q2_k .. q6_k, q8_k */
    QL_FAMILY_GGML_IQ,   /* ggml's codebook / lattice types: iq1 .. iq4 */
    QL_FAMILY_GGML_TERNARY, /* tq1_0, tq2_0 */
    QL_FAMILY_FP4_MICRO, /* E2M1 codes with a per-block float scale: mxfp4, nvfp4 */
    QL_FAMILY_INT,       /* qlab's INTn groups, per-channel, per-tensor, 2-D tiles */
    QL_FAMILY_BNB4,      /* bitsandbytes NF4 / FP4 */
    QL_FAMILY_FP8,       /* OCP FP8 with float scales */
    QL_FAMILY_ROTATED,   /* codes in a randomized-Hadamard basis: QuIP#'s E8P lattice codes, rht_int* */
    QL_FAMILY_ADDITIVE,  /* learned additive codebooks per tensor (AQLM): codes address vectors, not a grid */
    QL_FAMILY_EXL2,      /* ExLlamaV2's mixed-bit matrices: permuted inputs, bits per group of inputs */
    QL_FAMILY_COUNT,
} ql_format_family;
const char *ql_format_family_name(ql_format_family f);

/* llama.cpp's view of a ggml type (NULL in an entry = a qlab extension type llama.cpp cannot load). */
#define QL_FTYPE_NONE (-1)
typedef struct ql_llama_identity {
    int file_type;     /* llama_ftype in general.file_type of a file mostly of this type; QL_FTYPE_NONE if none */
    uint32_t act_type; /* ggml's vec_dot_type: what llama.cpp's CPU backend rounds activations to before
                        * multiplying by a weight of this type (QL_TYPE_F32: no rounding) */
} ql_llama_identity;

/* A format seen as a grid of representable values per block, for error-feedback methods (GPTQ): see
 * formats/format_grid.h for how a grid is used. An entry points at QL_GRID_NONE when it has none. */
typedef void (*ql_grid_parse_fn)(const uint8_t *blk, float *a, float *b, float *o, int64_t ld);
typedef void (*ql_grid_pack_fn)(uint8_t *blk, const uint8_t *codes);
/* LATTICE: a vector grid (ggml's lattice i-quants, kernels/iq_lattice.h): after the entry's quantizer fixed a
 * block's scales, each group of vdim weights takes any codeword at its group's scale; GPTQ feeds the
 * error of whole groups forward (methods/m_gptq.c). ql_grid_init refuses it (no per-column codes). */
typedef enum { QL_GRID_KIND_NONE = 1, QL_GRID_KIND_BLOCK, QL_GRID_KIND_INT, QL_GRID_KIND_LATTICE } ql_grid_kind;
typedef struct ql_grid_spec {
    ql_grid_kind kind;
    /* BLOCK: the entry's block / block_bytes; scales fixed by the entry's quantizer, then parsed */
    int sub;                /* columns sharing one (a, b, o) inside a block; 0 = the whole block */
    int kmin, kmax;         /* stored codes */
    const float *table;     /* NULL for linear grids; else 16 sorted values (value = a * table[k]) */
    ql_grid_parse_fn parse; /* block bytes -> (a, b, o) of each sub-block, s-th at [s * ld] */
    ql_grid_pack_fn pack;   /* codes [block] -> the block's code fields (scales untouched) */
    /* or, for a block grid whose scale is not the quantizer's choice (NF4: the absmax of the block's
     * current, error-updated weights): fix writes the scale and provisional codes of block blk of each
     * of nrows rows (src [nrows, len]) and its grid into a/b/o[r]; set_codes writes len codes */
    void (*fix)(const float *src, int64_t nrows, int64_t len, int64_t blk, uint8_t *dst, int64_t row_bytes,
                float *a, float *b, float *o);
    void (*set_codes)(uint8_t *row, int64_t len, int64_t blk, const uint8_t *codes);
    /* INT: qlab's INTn row layout (fmt_int.c) */
    int bits, group; /* group 0 = one group per row */
    bool sym, mse;
    /* LATTICE: groups of vdim columns; scales of a block's groups, and one group rounded into the block */
    int vdim;
    void (*vscales)(uint32_t type, const void *blk, float *scale);
    void (*vround)(uint32_t type, void *blk, int g, float s, const float *x, const float *w, float *q);
} ql_grid_spec;
extern const ql_grid_spec ql_grid_none;
#define QL_GRID_NONE (&ql_grid_none)

/* A backend's operations on rows of host memory, same contract as the reference (NULL = not there). */
typedef struct ql_format_ops {
    ql_quantize_fn quantize_rows;
    ql_dequantize_fn dequantize_rows;
} ql_format_ops;

/* The CUDA column: kernels/codecs_cuda.cu entry points. *_dev take device buffers and queue on stream
 * (a cudaStream_t, NULL = default); *_emulated run the kernels' per-block code on the host, so a
 * machine without a GPU still checks the device arithmetic against the reference. */
typedef struct ql_format_cuda_ops {
    ql_status (*quantize_dev)(const float *src, void *dst, int64_t nrows, int64_t ncols, void *stream);
    ql_status (*dequantize_dev)(const void *src, float *dst, int64_t nrows, int64_t ncols, void *stream);
    ql_status (*quantize_emulated)(const float *src, void *dst, int64_t nrows, int64_t ncols);
    ql_status (*dequantize_emulated)(const void *src, float *dst, int64_t nrows, int64_t ncols);
    /* GPTQ's block fix on the device (kernels/gptq_cuda.h: ql_cuda_gptq_grid.fix_dev): the grid's scale search
     * with importance and its parser, for one block of every row; NULL where the search has no device twin
     * (the block's columns then come to the host for the registry's quantizer) */
    ql_status (*grid_fix_dev)(const float *G, int64_t rows, int64_t len, const float *imp, void *blocks,
                              int64_t row_bytes, float *a, float *b, float *o, int64_t ld, void *stream);
    ql_status (*grid_fix_emulated)(const float *G, int64_t rows, int64_t len, const float *imp, void *blocks,
                                   int64_t row_bytes, float *a, float *b, float *o, int64_t ld, void *stream);
} ql_format_cuda_ops;

/* What stays continuous once a tensor's codes are fixed, for end-to-end fine-tuning (`qlab qat --tune
 * codebooks`, pipeline/qat.c): a vector theta read from the stored bytes, the weights as a function of theta
 * (the codes held), its gradient, and theta written back into the bytes as stored. Entries without one have
 * nothing beyond what the format-independent tunings (norms, one scale per block) cover. */
typedef struct ql_format_tunable {
    const char *describes; /* "codebooks and row scales": for messages */
    int64_t (*len)(int64_t nrows, int64_t ncols);
    void (*get)(const void *bytes, int64_t nrows, int64_t ncols, double *theta);
    /* w [nrows, ncols]; as_stored: what the bytes with theta written in decode to (the training forward),
     * else the exact function the gradient is of (gradient checks) */
    void (*decode)(const void *bytes, const double *theta, int64_t nrows, int64_t ncols, bool as_stored, double *w);
    /* dtheta += d loss / d theta, dw = d loss / d w; straight through the storage rounding */
    void (*backward)(const void *bytes, const double *theta, int64_t nrows, int64_t ncols, const double *dw,
                     double *dtheta);
    void (*set)(void *bytes, const double *theta, int64_t nrows, int64_t ncols);
} ql_format_tunable;

typedef struct ql_format {
    /* ---- identity ---- */
    const char *name;     /* stable name used by plans and scripts: "q4_k", "int4_g128", "nf4_dq", "fp8_e4m3" */
    uint32_t type;        /* stable on-disk id: ggml type id, or QL_TYPE_EXT_BASE + n for qlab extension types */
    ql_format_family family;
    const ql_llama_identity *llama; /* required for ggml ids, NULL for extension ids */
    /* ---- geometry and sizes ---- */
    int block;            /* weights per block along a row (1 for plain floats) */
    int block_bytes;      /* bytes per block (for ggml types: exactly ggml's) */
    double bpw;           /* exact bits per weight on a 4096-wide row, everything stored counted */
    bool whole_tensor;    /* see the layout rules above */
    /* bytes of one row / of a whole tensor; NULL means ncols / block * block_bytes (must divide) */
    int64_t (*row_bytes)(int64_t ncols);
    int64_t (*tensor_bytes)(int64_t ncols, int64_t nrows);
    /* llama.cpp's quantize tool stores a row that is not a multiple of block in this format instead
     * (NULL: f16, the last resort). Only meaningful for block > 32. */
    const char *fallback;
    /* Formats that store a tensor in a rotated basis (QuIP#'s e8p*, rht_*: randomized Hadamard transforms
     * on both sides, formats/fmt_quip.c) accept only the shapes a Hadamard matrix serves: shape_ok says
     * why not (NULL: every shape that fits). ql_format_tensor_bytes is -1 for a refused shape, and the
     * drivers fail with the reason. rotated: a weight's error spreads over its whole row and column
     * (no per-position guarantees such as "NaN decodes to 0"); decode returns the weights rotated back. */
    bool (*shape_ok)(int64_t ncols, int64_t nrows, char *why, size_t cap);
    bool rotated;
    /* The catalogue's views of what the codes see (NULL = none): code_basis turns w [nrows, ncols] into
     * the basis the codes are chosen in (the rotated formats: both-side randomized Hadamard with the
     * default seed); code_usage counts how often each codeword of the stored bytes is used (additive
     * codebooks: counts[m * K + k]) and returns how many counts it wrote (at most cap). */
    void (*code_basis)(float *w, int64_t nrows, int64_t ncols);
    int (*code_usage)(const void *bytes, int64_t nrows, int64_t ncols, uint32_t *counts, int cap);
    /* ---- reference codec (the specification) ---- */
    ql_quantize_fn quantize_rows;     /* NULL for decode-only types */
    ql_dequantize_fn dequantize_rows; /* required */
    /* Optional, whole_tensor formats only: quantize_rows' exact bytes on n_threads threads (tensor-wide
     * statistics reduced exactly, then the codes split by range); ql_format_quantize uses it. NULL: one
     * thread (a per-tensor FP8 scale kept the 262M-weight token_embd of a 1B export on one core). */
    void (*quantize_whole_threads)(const float *src, void *dst, int64_t nrows, int64_t ncols, int n_threads);
    bool uses_importance; /* quantize_rows honours per-column importance weights */
    bool requires_importance; /* ...and cannot quantize without them (ggml_quantize_requires_imatrix):
                               * ql_format_quantize refuses NULL importance, callers check first */
    double tolerance;     /* test bound: RMSE / RMS after a round trip of N(0,1) rows of 4096 */
    const ql_format_tunable *tunable; /* NULL: no continuous parameters beside the codes (see above) */
    const ql_grid_spec *grid; /* required: the code grid, or QL_GRID_NONE */
    /* ---- words ---- */
    const char *summary; /* one line for the catalogue */
    const char *explain; /* plain-words paragraph for the catalogue's detail pane */
    const char *label;   /* at most 7 characters, for narrow columns (plan heat map) */
    /* ---- backend operation tables (NULL = none; see the header comment) ---- */
    const ql_format_ops *simd;      /* CPU SIMD twins, picked at run time, bit-identical to the reference */
    const ql_format_cuda_ops *cuda; /* only set when built with nvcc (QL_HAVE_CUDA) */
} ql_format;

/* Registry access (types are registered with kernels/ggml_types.h at program start, so the GGUF reader
 * can size tensors of every type the registry knows). */
int ql_format_count(void);
const ql_format *ql_format_at(int i); /* catalogue order; NULL out of range */
const ql_format *ql_format_by_name(const char *name); /* case-insensitive; NULL if unknown */
const ql_format *ql_format_by_type(uint32_t type);
/* What llama.cpp rounds the activations to before multiplying by a weight stored as `type` (the entry's
 * llama->act_type); QL_TYPE_F32 for types llama.cpp does not know. */
uint32_t ql_format_llama_act_type(uint32_t type);
/* llama.cpp's general.file_type for a file mostly in f; QL_FTYPE_NONE when there is none. */
int ql_format_llama_file_type(const ql_format *f);
/* The format f's rows fall back to when ncols does not fit its block (f->fallback, else f16). */
const ql_format *ql_format_fallback(const ql_format *f);

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

/* ---- quantize-then-dequantize ---- */
/* out [nrows, ncols] = dequantize(quantize(src)) with f's own quantizer (importance NULL or ncols weights),
 * through a temporary the size of the codes: what a weight becomes when stored in f. src and out may be
 * the same buffer. Fails (one-line error) when f cannot store rows of ncols or is decode-only. */
ql_status ql_format_roundtrip(const ql_format *f, const float *src, float *out, int64_t nrows, int64_t ncols,
                              const float *importance, int n_threads);

#endif
