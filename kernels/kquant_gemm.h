/* kquant_gemm.h — y[T,N] = a[T,K] · w[N,K]ᵀ for ggml-quantized weights (K-quants, i-quants, legacy) read as stored, against activations
 * rounded to Q8_K, as integer dot products per 256-value block: llama.cpp's own arithmetic (vec_dot_q4_K_q8_K,
 * vec_dot_q6_K_q8_K) laid out as a GEMM. Per block b of row n and token t:
 *   Q4_K, Q5_K  w = d·sc_s·q − dmin·m_s   →  y += da·(d·Σ q_a·(sc·q) − dmin·Σ_s m_s·bsum_s)
 *   Q2_K        the same with 16 sub-blocks of 16 (mins against the code sums per 16)
 *   Q3_K, Q6_K, IQ4_XS  w = d·sc_s·q      →  y += da·(d·Σ q_a·(sc·q))
 *   IQ1_S..IQ3_S, TQ1_0, TQ2_0  w = dw·c (ql_ggml_block_int_codes: scales folded into c)  →  y += da·(dw·Σ q_a·c)
 *   Q4_0, Q5_0, Q8_0, IQ4_NL (blocks of 32 against Q8_0)  w = d·c  →  y += da·(d·Σ q_a·c)
 *   Q4_1, Q5_1 (against Q8_1)            w = d·q + m  →  y += da·(d·Σ q_a·q + m·Σ q_a)
 * with every integer sum exact; the float steps (int → float, the products, the sum over blocks in order) are the
 * same in the scalar reference and the AVX-512 VNNI twin, so the two agree bit for bit. Compared with decoding the
 * weights to F32 and multiplying the rounded activations by sgemm, only float rounding differs (~1e-7 relative). */
#ifndef QL_KQUANT_GEMM_H
#define QL_KQUANT_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* Activations as Q8_K / Q8_0: codes (the values kernels/act_round.c rounds to, divided by the block scale, in
 * -127..127), block scales and the sums of the codes per 32. Rows are padded to a multiple of 8 tokens with zeros. */
typedef struct {
    int T, T8, K, bs; /* tokens, tokens rounded up to 8, row length, values per scale (256: Q8_K, 32: Q8_0) */
    float *d;         /* [T8][K/bs] */
    int32_t *bsum;    /* [T8][K/32] */
    int32_t *bsum16;  /* [T8][K/16] (Q8_K only: Q2_K's mins come per 16) */
    uint8_t *qu;      /* [T8][K] the codes plus 128 (vpdpbusd's unsigned operand; the reference subtracts 128) */
    uint32_t *mpair;  /* Q8_K only: bsum by pairs as int16 [T8][K/64], then bsum16 by pairs [T8][K/32] */
} ql_kq_act;

/* True when this CPU runs the VNNI twin and the weight type (a ggml type id) is supported under activations
 * rounded to `act`: Q2_K..Q6_K, IQ4_XS, the IQ1/IQ2/IQ3 lattice types, TQ1_0 and TQ2_0 under Q8_K; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL under Q8_0 / Q8_1. */
bool ql_kq_gemm_available(uint32_t type, uint32_t act);
/* Quantizes x[T][K] to `act` (QL_TYPE_Q8_K, or Q8_0 / Q8_1: the same codes) into a (allocated here;
 * ql_kq_act_free). false, with nothing allocated, when a value is not finite or K is not whole blocks: the caller
 * then takes the float path, which rounds such blocks as llama.cpp does. */
bool ql_kq_act_quantize_ref(const float *x, int T, int K, uint32_t act, ql_kq_act *a);
bool ql_kq_act_quantize(const float *x, int T, int K, uint32_t act, ql_kq_act *a);
void ql_kq_act_free(ql_kq_act *a);
/* Rows [0, nr) of the weight (stored rows of row_bytes each, the first at `rows`): y[t*ldy + j] = (or +=, when
 * accumulate) the product for token t < a->T and row j < nr. */
void ql_kq_gemm_ref(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, const ql_kq_act *a, float *y,
                    int64_t ldy, bool accumulate);
void ql_kq_gemm_vnni(uint32_t type, const uint8_t *rows, int64_t row_bytes, int nr, const ql_kq_act *a, float *y,
                     int64_t ldy, bool accumulate);

#endif
