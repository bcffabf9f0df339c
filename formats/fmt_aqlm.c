/* fmt_aqlm.c — the AQLM storage formats (qlab extension types 0x51B0..0x51B3): aqlm_MxB = each group of 8
 * inputs of a row is the sum of M codewords from M codebooks of 2^B f16 vectors learned for the tensor, times
 * an f16 scale per row. Layout, decoder and encoder live in kernels/aqlm.{h,c}; docs/formats.md has the
 * byte layout. Whole-tensor formats: the codebooks are shared by every row, so bits per weight depend on the
 * shape; `bpw` is the exact figure of a 4096×4096 tensor and the size hooks give every other shape exactly.
 *
 * The entry's own quantizer (what `--method rtn` and the sensitivity pass get) learns the codebooks for the
 * plain weight error, weighted per input column by the importance (imatrix) when given: residual k-means,
 * then three alternations of greedy code search, least-squares codebooks and optimal scales. The
 * Hessian-weighted search with beam, iterations and checkpoints is the `aqlm` method (methods/m_aqlm.c).
 * The `tunable` hook hands the codebooks and scales to end-to-end fine-tuning (`qlab qat --tune codebooks`). */
#include "formats/fmt_aqlm.h"

#include "base/parallel.h"
#include "kernels/aqlm.h"

#define AQLM_TYPE_BASE 0x51B0

static void aqlm_quantize(int M, int B, const float *src, void *dst, int64_t nrows, int64_t ncols,
                          const float *imp) {
    ql_aqlm_params p = {.M = M, .B = B, .beam = 1, .init_iters = 10, .update = QL_AQLM_UPDATE_LS,
                        .adam_steps = 20, .lr = 1e-3, .seed = 1, .n_threads = ql_default_threads()};
    ql_aqlm_solver *s = ql_aqlm_solver_new(src, nrows, ncols, NULL, imp, &p);
    if (!s) return; /* out of memory: the bytes stay as the caller left them */
    if (ql_aqlm_init(s) == QL_OK)
        for (int it = 0; it < 3; it++) {
            double before = ql_aqlm_loss(s);
            if (ql_aqlm_alternate(s) != QL_OK || !(ql_aqlm_loss(s) < before * 0.999)) break;
        }
    ql_aqlm_pack(ql_aqlm_solver_state(s), dst);
    ql_aqlm_solver_free(s);
}

/* The CUDA column: the decoder only (kernels/codecs_ext_cuda.cu); the encoder is a search that stays on the CPU. */
#ifdef QL_HAVE_CUDA
#include "kernels/cuda_ext_api.h"
#define AQLM_CUDA(Mv, Bv)                                                                                     \
    static ql_status aqlm_##Mv##x##Bv##_cd(const void *s, float *d, int64_t r, int64_t c, void *st) {          \
        return ql_cuda_aqlm_dequantize_dev(Mv, Bv, s, d, r, c, st);                                           \
    }                                                                                                         \
    static ql_status aqlm_##Mv##x##Bv##_cde(const void *s, float *d, int64_t r, int64_t c) {                   \
        return ql_cuda_aqlm_dequantize_emulated(Mv, Bv, s, d, r, c);                                          \
    }                                                                                                         \
    static const ql_format_cuda_ops aqlm_##Mv##x##Bv##_cuda = {.dequantize_dev = aqlm_##Mv##x##Bv##_cd,       \
                                                               .dequantize_emulated = aqlm_##Mv##x##Bv##_cde};
#define AQLM_CUDA_OPS(Mv, Bv) (&aqlm_##Mv##x##Bv##_cuda)
#else
#define AQLM_CUDA(Mv, Bv)
#define AQLM_CUDA_OPS(Mv, Bv) NULL
#endif

#define AQLM_ENTRY(Mv, Bv, idx, tol, lbl, what)                                                                  \
    AQLM_CUDA(Mv, Bv)                                                                                         \
    static void aqlm_##Mv##x##Bv##_quantize(const float *src, void *dst, int64_t nr, int64_t nc,              \
                                           const float *imp) {                                               \
        aqlm_quantize(Mv, Bv, src, dst, nr, nc, imp);                                                         \
    }                                                                                                         \
    static void aqlm_##Mv##x##Bv##_dequantize(const void *src, float *dst, int64_t nr, int64_t nc) {          \
        ql_aqlm_dequantize_ref(Mv, Bv, src, dst, nr, nc);                                                     \
    }                                                                                                         \
    static int64_t aqlm_##Mv##x##Bv##_bytes(int64_t nc, int64_t nr) { return ql_aqlm_tensor_bytes(Mv, Bv, nc, nr); } \
    static int aqlm_##Mv##x##Bv##_usage(const void *src, int64_t nr, int64_t nc, uint32_t *counts, int cap) {   \
        if (cap < Mv * (1 << Bv)) return 0;                                                                   \
        ql_aqlm_code_usage(Mv, Bv, src, nr, nc, counts);                                                      \
        return Mv * (1 << Bv);                                                                                \
    }                                                                                                         \
    static int64_t aqlm_##Mv##x##Bv##_tlen(int64_t nr, int64_t nc) {                                        \
        (void)nc;                                                                                             \
        return ql_aqlm_theta_len(Mv, Bv, nr);                                                                 \
    }                                                                                                         \
    static void aqlm_##Mv##x##Bv##_tget(const void *b, int64_t nr, int64_t nc, double *th) {                  \
        (void)nc;                                                                                             \
        ql_aqlm_theta_get(Mv, Bv, b, nr, th);                                                                 \
    }                                                                                                         \
    static void aqlm_##Mv##x##Bv##_tdec(const void *b, const double *th, int64_t nr, int64_t nc, bool st,    \
                                        double *w) {                                                          \
        ql_aqlm_theta_decode(Mv, Bv, b, th, nr, nc, st, w);                                                   \
    }                                                                                                         \
    static void aqlm_##Mv##x##Bv##_tbwd(const void *b, const double *th, int64_t nr, int64_t nc,             \
                                        const double *dw, double *dth) {                                      \
        ql_aqlm_theta_backward(Mv, Bv, b, th, nr, nc, dw, dth);                                               \
    }                                                                                                         \
    static void aqlm_##Mv##x##Bv##_tset(void *b, const double *th, int64_t nr, int64_t nc) {                  \
        (void)nc;                                                                                             \
        ql_aqlm_theta_set(Mv, Bv, b, th, nr);                                                                 \
    }                                                                                                         \
    static const ql_format_tunable aqlm_##Mv##x##Bv##_tunable = {                                            \
        .describes = "codebooks and row scales", .len = aqlm_##Mv##x##Bv##_tlen, .get = aqlm_##Mv##x##Bv##_tget,     \
        .decode = aqlm_##Mv##x##Bv##_tdec, .backward = aqlm_##Mv##x##Bv##_tbwd, .set = aqlm_##Mv##x##Bv##_tset, \
    };                                                                                                        \
    const ql_format ql_fmt_aqlm_##Mv##x##Bv = {                                                               \
        .name = "aqlm_" #Mv "x" #Bv,                                                                          \
        .type = AQLM_TYPE_BASE + idx,                                                                         \
        .family = QL_FAMILY_ADDITIVE,                                                                         \
        .block = QL_AQLM_GROUP,                                                                               \
        .block_bytes = (Mv * Bv + 7) / 8,                                                                     \
        /* codes + codebooks + scales of a 4096x4096 tensor, per weight */                                   \
        .bpw = (double)Mv * Bv / 8 + (double)Mv * (1 << Bv) * 8 * 16 / (4096.0 * 4096.0) + 16.0 / 4096,     \
        .whole_tensor = true,                                                                                 \
        .tensor_bytes = aqlm_##Mv##x##Bv##_bytes,                                                             \
        .quantize_rows = aqlm_##Mv##x##Bv##_quantize,                                                         \
        .dequantize_rows = aqlm_##Mv##x##Bv##_dequantize,                                                     \
        .uses_importance = true,                                                                              \
        .code_usage = aqlm_##Mv##x##Bv##_usage,                                                               \
        .cuda = AQLM_CUDA_OPS(Mv, Bv),                                                                        \
        .tolerance = tol,                                                                                     \
        .tunable = &aqlm_##Mv##x##Bv##_tunable, /* the codebooks and scales train with the codes fixed */       \
        .grid = QL_GRID_NONE, /* codes address learned vectors: no per-weight grid for GPTQ */              \
        .summary = "AQLM " #Mv "x" #Bv ": " what,                                                             \
        .explain = "Additive quantization (AQLM): each group of 8 weights of a row is the sum of " #Mv        \
                   " codeword(s) picked from " #Mv " codebook(s) of 2^" #Bv " learned 8-vectors, times one "   \
                   "scale per output row. The codebooks are learned for each tensor (k-means, then "          \
                   "alternating code search and least squares); stored in f16 and counted in the size, "     \
                   "so small tensors pay a lot for them. --method aqlm learns them against the "              \
                   "calibration Hessian. llama.cpp cannot load it.",                                          \
        .label = lbl,                                                                                         \
    };

/* tolerances: N(0,1) rows of 4096 (8 rows: 4096 groups), measured by tests/test_formats.c; 1x16 has more
 * codewords than groups there, so it stores them nearly exactly */
AQLM_ENTRY(1, 16, 0, 0.01, "aq1x16", "one 2^16 codebook, 2 bits + 1 MiB of codebook per tensor")
AQLM_ENTRY(2, 8, 1, 0.55, "aq2x8", "two 256-entry codebooks, 2 bits + 8 KiB per tensor")
AQLM_ENTRY(1, 8, 2, 0.80, "aq1x8", "one 256-entry codebook, 1 bit + 4 KiB per tensor (teaching)")
AQLM_ENTRY(4, 8, 3, 0.30, "aq4x8", "four 256-entry codebooks, 4 bits + 16 KiB per tensor (teaching)")

bool ql_aqlm_format_params(const ql_format *f, int *M, int *B) {
    static const ql_format *const all[] = {&ql_fmt_aqlm_1x16, &ql_fmt_aqlm_2x8, &ql_fmt_aqlm_1x8, &ql_fmt_aqlm_4x8};
    static const int mb[][2] = {{1, 16}, {2, 8}, {1, 8}, {4, 8}};
    for (size_t i = 0; i < QL_ARRAY_LEN(all); i++)
        if (f == all[i]) {
            if (M) *M = mb[i][0];
            if (B) *B = mb[i][1];
            return true;
        }
    return false;
}
