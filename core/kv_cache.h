/* kv_cache.h — KV-cache schemes: what the forward pass stores keys and values as, parsed from a name, sized
 * exactly, and the per-layer buffer that rounds what is stored the way the scheme stores it.
 *
 * Two families:
 *  - llama.cpp's cache types (f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl): rows of n_head_kv·head_dim
 *    stored with the format registry's codecs (q8_0 with the ties-to-even rounding of ggml's CPU
 *    quantize_row_q8_0, and iq4_nl with ggml's quicker quantize_row_iq4_nl_ref: what ggml_set_rows/ggml_cpy
 *    call when llama.cpp writes its cache), and the
 *    query rounded to the K type's vec_dot type before the dot products (ql_kv_q_round_type), as ggml-cpu's
 *    flash attention does;
 *  - qlab's own: INT8/INT4/INT2 with an fp16 scale and minimum per group, per token (groups of 32/64/128
 *    channels inside a head) or per channel (groups of 32/64/128 tokens: KIVI's K), an optional window of
 *    recent tokens read in float (KIVI's residual), FP8 E4M3/E5M2 with an f32 scale per head and token, and
 *    an optional Hadamard rotation of each K head before quantizing (QuaRot; Q·K is unchanged by it, the
 *    quantization error is spread over the head).
 *
 * Names (ql_kv_scheme_parse): "K" or "K:V" where each side is f32 | f16 | bf16 | q8_0 | q5_1 | q5_0 | q4_1 |
 * q4_0 | iq4_nl | int{8,4,2}_{token,channel}_g{32,64,128}[_r{N}][_had] | fp8_e4m3[_r{N}][_had] |
 * fp8_e5m2[_r{N}][_had]; "kivi4" / "kivi2" = int{4,2}_channel_g32_r128:int{4,2}_token_g32_r128 (the paper's
 * group 32 and residual 128). _had is for K only.
 *
 * Which tokens a query reads quantized: the forward pass runs whole sequences, so the cache is simulated as
 * if filled token by token. A query at position t (n = t + 1 tokens stored) reads tokens [0, Nq(n)) from the
 * quantized store and [Nq(n), n) in float, Nq(n) = floor(max(n - residual, 0) / G) · G with G the tokens
 * one scale covers (the group for per-channel, 1 otherwise). Memory at n tokens counts Nq(n) quantized
 * tokens and n - Nq(n) fp16 tokens. */
#ifndef QL_KV_CACHE_H
#define QL_KV_CACHE_H

#include "core/model.h"

typedef enum { QL_KV_F32 = 0, QL_KV_GGML, QL_KV_INT, QL_KV_FP8 } ql_kv_kind;
typedef enum { QL_KV_PER_TOKEN = 0, QL_KV_PER_CHANNEL } ql_kv_axis;

/* One side (K or V) of a scheme. Plain data: compare with ql_kv_scheme_equal. */
typedef struct ql_kv_side {
    ql_kv_kind kind;
    uint32_t type;   /* QL_KV_GGML: the registry format's type id */
    int bits;        /* QL_KV_INT: 8, 4 or 2 */
    ql_kv_axis axis; /* QL_KV_INT: groups of channels per token, or groups of tokens per channel */
    int group;       /* QL_KV_INT: 32, 64 or 128 */
    bool e5m2;       /* QL_KV_FP8: E5M2 instead of E4M3 */
    int residual;    /* recent tokens read in float (0: none); QL_KV_INT / QL_KV_FP8 */
    bool hadamard;   /* K only: rotate each head by the normalized Hadamard matrix before quantizing */
} ql_kv_side;

typedef struct ql_kv_scheme {
    ql_kv_side k, v;
} ql_kv_scheme;

/* The F32 cache (what the forward pass used before schemes existed; bit-identical). */
ql_kv_scheme ql_kv_scheme_f32(void);
/* Parses a scheme name; false with ql_fail()'s one-line message naming the text and the known names. */
bool ql_kv_scheme_parse(const char *text, ql_kv_scheme *out);
/* The canonical name ("q8_0", "q8_0:q4_0", "int4_channel_g32_r128:int4_token_g32_r128"); buf of 128 is enough. */
const char *ql_kv_scheme_name(const ql_kv_scheme *s, char *buf, size_t n);
const char *ql_kv_side_name(const ql_kv_side *s, char *buf, size_t n);
bool ql_kv_scheme_is_f32(const ql_kv_scheme *s);
bool ql_kv_scheme_equal(const ql_kv_scheme *a, const ql_kv_scheme *b);
/* The schemes listings show (qlab info --ctx, tables): llama.cpp's cache types, then qlab's. */
const char *const *ql_kv_scheme_examples(int *n);
/* Whether the model's head dimension can hold the scheme: a ggml block type needs head_dim % block == 0 (llama.cpp
 * refuses otherwise), a per-token INT group must divide head_dim, Hadamard needs a power of two. QL_OK or a
 * one-line error naming the model, the scheme and what would fit. */
ql_status ql_kv_scheme_check(const ql_kv_scheme *s, const ql_config *c, const char *model_name);

/* Exact bytes of one side of one layer's cache holding n tokens (scales and float residual counted). */
int64_t ql_kv_side_bytes(const ql_kv_side *s, int n_head_kv, int head_dim, int64_t n);
/* The whole model's cache (K and V of every layer) at ctx tokens for batch sequences. */
int64_t ql_kv_cache_bytes(const ql_config *c, const ql_kv_scheme *s, int64_t ctx, int batch);
/* Nq(n): how many of n stored tokens a query reads from the quantized store (see the header comment). */
int ql_kv_side_quantized_prefix(const ql_kv_side *s, int n);
/* Tokens one stored scale spans (the per-channel group, else 1). */
int ql_kv_side_token_group(const ql_kv_side *s);
/* llama.cpp's rounding of the query before Q·K for this K side (ggml's vec_dot_type of the K type: F16,
 * BF16, Q8_0, Q8_1), QL_TYPE_F32 for no rounding (F32 and qlab's schemes). */
uint32_t ql_kv_q_round_type(const ql_kv_side *k);

/* One side of one layer's cache: up to max_tokens rows of n_head_kv·head_dim. Keeps the float rows as well
 * (the residual window reads them) and quantizes each group of tokens once it is complete. */
typedef struct ql_kv_buf ql_kv_buf;
ql_kv_buf *ql_kv_buf_new(const ql_kv_side *s, int max_tokens, int n_head_kv, int head_dim);
void ql_kv_buf_free(ql_kv_buf *b);
/* Rows [pos, pos + T) from x [T, kv_dim]. */
ql_status ql_kv_buf_store(ql_kv_buf *b, int pos, int T, const float *x);
/* Rows [pos, pos + T) as the cache returns them: decoded for tokens in complete groups, float otherwise. */
ql_status ql_kv_buf_load(const ql_kv_buf *b, int pos, int T, float *out);
/* The float rows as stored (for the residual window); [max_tokens, kv_dim]. */
const float *ql_kv_buf_float(const ql_kv_buf *b);
/* The encoded bytes of a llama.cpp-type side (row r at r · row bytes), NULL for the other kinds. */
const uint8_t *ql_kv_buf_bytes(const ql_kv_buf *b, int64_t *row_bytes);

#endif
