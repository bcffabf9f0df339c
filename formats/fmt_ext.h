/* fmt_ext.h — the scalar reference codecs behind qlab's extension storage formats (INTn groups,
 * NF4/FP4 as bitsandbytes, OCP FP8), exposed so fast twins (SIMD, CUDA) can be tested against them
 * and so format.c can list the INTn family without spelling it out. Layouts and type ids are in
 * docs/formats.md. Everything here is pure and thread-safe; callers own every buffer. */
#ifndef QL_FMT_EXT_H
#define QL_FMT_EXT_H

#include "formats/format.h"
#include "formats/fmt_int_family.h"
#include "kernels/int_quants.h"

/* ---- INTn: n-bit integer codes, fp16 scales, optional n-bit zero points ----
 * group <= 0 means one group per row (per-channel). Rows keep a shorter last group when ncols is not
 * a multiple of group. mse: search shrink factors 1.00, 0.99, ..., 0.21 of the range and keep the one
 * with the lowest (importance-weighted) squared error. importance: [ncols] or NULL. */
/* Parameters of a row-wise INTn entry (int{n}_g{g}[_sym][_mse], int{n}_channel); false for others.
 * group is 0 for per-channel entries. Any out pointer may be NULL. */
bool ql_int_format_params(const ql_format *f, int *bits, int *group, bool *sym, bool *mse);


/* ---- NF4 / FP4 (bitsandbytes) ----
 * Code tables indexed by the 4-bit code, values in [-1, 1]; the encoders are bitsandbytes' decision
 * trees (x already divided by the block absmax). */
extern const float ql_nf4_code[16];
extern const float ql_fp4_code[16];
uint8_t ql_nf4_encode(float x);
uint8_t ql_fp4_encode(float x);
/* nf4 / fp4 quantize_rows through the SIMD twin of the plain blocks (kernels/simd_bnb4.c): the registry's
 * simd entry, and what test_simd compares with the reference */
void ql_quantize_rows_nf4_fast(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp);
void ql_quantize_rows_fp4_fast(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp);
/* bnb_int8 (formats/fmt_bnb8.c) the same way, rows through kernels/simd_int.c's LLM.int8 row twin */
void ql_quantize_rows_bnb_int8_fast(const float *src, void *dst, int64_t nrows, int64_t ncols, const float *imp);
/* bitsandbytes' create_dynamic_map(signed=True): 256 sorted values in [-1, 1] (float32). */
const float *ql_bnb_dynamic_map(void);
/* Nearest code of the dynamic map by bitsandbytes' binary search (x already divided by absmax). */
uint8_t ql_bnb_dynamic_encode(float x);

/* ---- FP8 (OCP) ----
 * E4M3 "fn": bias 7, max 448, no infinities, NaN = S.1111.111. Encoding saturates (|x| > 448 and
 * ±inf become ±448), rounds to nearest even, keeps subnormals; NaN -> 0x7F (sign kept).
 * E5M2: bias 15, max 57344, ±inf. Finite values saturate to ±57344; ±inf stays inf; NaN -> 0x7E. */
float ql_fp8_e4m3_to_f32(uint8_t c);
uint8_t ql_f32_to_fp8_e4m3(float x);
float ql_fp8_e5m2_to_f32(uint8_t c);
uint8_t ql_f32_to_fp8_e5m2(float x);
/* n codes of x / scale (a tensor's, row's or block's scale; 0 gives zeros, NaN x gives 0): the branch-free,
 * vectorized E4M3 loop and the per-weight reference it must equal (E5M2: the reference both ways). */
void ql_fp8_encode_scaled(bool e5m2, const float *src, uint8_t *dst, int64_t n, float scale);
void ql_fp8_encode_scaled_ref(bool e5m2, const float *src, uint8_t *dst, int64_t n, float scale);

#endif
