/* fmt_exl2.h — ExLlamaV2's EXL2 storage (formats/fmt_exl2.c): one matrix mixes bit widths. The input
 * dimension K is reordered (a permutation, most important inputs first) and cut into groups of 32, 64
 * or 128 rows; the first proportions of K get more bits than the rest ("0.05:3b_64g/0.95:2b_64g"). Each
 * group has an fp16 maximum scale and, per output, a 4-bit scale code qs (1..16): the output's scale
 * is qs²/256 of the maximum; codes are symmetric around 2^(bits-1). These helpers are shared by the
 * registry entries (their own round-to-nearest quantizer and the reference decoder), the GPTQ-style
 * method (methods/m_exl2.c) and the exporter (pipeline/export_exl2.c). Layout: docs/formats.md. */
#ifndef QL_FMT_EXL2_H
#define QL_FMT_EXL2_H

#include "formats/format.h"
#include "formats/fmt_exl2_list.h"

#define QL_EXL2_MAX_PARTS 3


/* One parameter set (ExLlamaV2's QParams with scale_bits 4): parts in decreasing bits. */
typedef struct {
    int n;
    int bits[QL_EXL2_MAX_PARTS];
    int group[QL_EXL2_MAX_PARTS];
    double prop[QL_EXL2_MAX_PARTS];
} ql_exl2_mix;

/* One group of rows of K, in processing (permuted) order. */
typedef struct {
    int bits;
    int64_t row, rows; /* first row and count */
    int64_t qrow;      /* first 32-bit row of q_weight */
} ql_exl2_group;

/* The parameter set of an exl2 registry entry; false for other formats. */
bool ql_exl2_format_mix(const ql_format *f, ql_exl2_mix *m);
/* Groups of K rows as ExLlamaV2's AdaptiveGPTQ.configure cuts them; g may be NULL. Returns G. */
int64_t ql_exl2_layout(const ql_exl2_mix *m, int64_t K, ql_exl2_group *g);

/* Byte offsets of the parts of one tensor (K inputs, N outputs) in qlab's storage:
 *   q_invperm I32[K] | q_scale_max F16[G] | q_groups I16[G][2] | q_scale I32[G][ceil(N/8)] | q_weight I32[qrows][N]
 * (K a multiple of 32; the exporter also needs N a multiple of 32, ExLlamaV2's column tiles). */
typedef struct {
    int64_t G, qrows;
    int64_t invperm, scale_max, groups, scale, weight, total;
} ql_exl2_offsets;
bool ql_exl2_offsets_of(const ql_exl2_mix *m, int64_t K, int64_t N, ql_exl2_offsets *o);

/* Fit one group (ExLlamaV2's AdaptiveQuantizer.find_params): w [rows][N] (current weights, row stride
 * N), writes qs[N] in 1..16, the group's fp16 maximum scale, and scale[N] (the exact fp16 value each
 * output's codes are multiplied by). */
void ql_exl2_fit_group(const float *w, int64_t rows, int64_t N, int bits, uint8_t *qs, uint16_t *smax_h,
                       float *scale);
/* Round one row of N weights with the group's scales: code[N] (0..2^bits-1) and the value q[N] each
 * code decodes to (q may be NULL). */
void ql_exl2_round_row(const float *w, const float *scale, int bits, int64_t N, uint8_t *code, float *q);
/* The value of code c under scale (what the decoder computes). */
float ql_exl2_value(int code, int bits, float scale);
/* Writes a whole tensor: perm[p] = the input column at processing position p; qs [G][N], smax_h [G],
 * codes [K][N] in processing order. */
void ql_exl2_pack(const ql_exl2_mix *m, int64_t K, int64_t N, const int64_t *perm, const uint8_t *qs,
                  const uint16_t *smax_h, const uint8_t *codes, void *dst);
/* The fp16 scale of output n in group g: fp16(qs² · fp16(smax / 256)) as ExLlamaV2 computes it. */
float ql_exl2_scale(int qs, uint16_t smax_h);
/* perm (identity on entry) sorted by decreasing key, ties by index; tmp holds n entries. */
void ql_exl2_order_desc(int64_t *perm, int64_t n, const double *key, int64_t *tmp);

#endif
