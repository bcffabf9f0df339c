/* actquant.h — activation-aware quantization, two parts:
 * 1. simulated activation quantization in the preview forward pass: per linear layer, the input x is
 *    rounded to INT8 or FP8 E4M3 (per-token dynamic or per-tensor static scales) or split LLM.int8()
 *    style (outlier columns kept in float, the rest INT8 per token) before the matmul;
 * 2. scale migration between a layer's producer (RMSNorm weight, or the rows of the linear that makes
 *    the input) and the linears that read it: SmoothQuant (methods/m_smoothquant.c) moves activation
 *    outliers into the weights, AWQ (methods/m_awq.c) protects salient weight columns. Both edit
 *    writable F32 copies of one decoder layer (ql_layer_f32) so the float model stays equivalent.
 * ql_act_quant_apply is pure and thread-safe; the setters edit a ql_infer and must not run during a
 * forward pass. Every buffer returned or filled is owned by the caller (see each function). */
#ifndef QL_ACTQUANT_H
#define QL_ACTQUANT_H

#include "base/ql_common.h"

/* ---------------- 1. activation quantization ---------------- */

typedef enum {
    QL_ACT_NONE = 0,
    QL_ACT_INT8_TOKEN,  /* INT8 symmetric, one scale per token (row): absmax / 127, computed at run time */
    QL_ACT_INT8_TENSOR, /* INT8 symmetric, one static scale per layer: calibration absmax / 127, saturating */
    QL_ACT_FP8_TOKEN,   /* FP8 E4M3, one scale per token: absmax / 448 */
    QL_ACT_FP8_TENSOR,  /* FP8 E4M3, one static scale per layer: calibration absmax / 448, saturating */
    QL_ACT_LLM_INT8,    /* LLM.int8(): columns with any |x| > threshold in the batch stay float, the rest
                           INT8 with one scale per token (absmax over the non-outlier columns / 127) */
    QL_ACT_MODE_COUNT
} ql_act_mode;

typedef struct ql_act_quant {
    ql_act_mode mode;
    float scale;     /* static modes: the quantization step (calibration absmax / 127 or / 448) */
    float threshold; /* QL_ACT_LLM_INT8: outlier threshold on |x| (0 means the default, 6.0) */
} ql_act_quant;

#define QL_LLM_INT8_THRESHOLD 6.0f

/* "none", "int8_token", "int8_tensor", "fp8_token", "fp8_tensor", "llm_int8" (parse is case-insensitive
 * and also takes "int8" / "fp8" for the per-token modes). */
const char *ql_act_mode_name(ql_act_mode m);
bool ql_act_mode_parse(const char *s, ql_act_mode *out);
bool ql_act_mode_is_static(ql_act_mode m);

/* Fills *aq for `mode`. Static modes take their scale from the calibration statistics of the layer's
 * input: absmax [n], the per-channel max|x| (QL_ERR_ARG when missing). threshold is used by
 * QL_ACT_LLM_INT8 only (<= 0: QL_LLM_INT8_THRESHOLD). */
ql_status ql_act_quant_init(ql_act_quant *aq, ql_act_mode mode, const float *absmax, int64_t n, float threshold);

/* A scheme as a plan or a command line writes it: a mode name (ql_act_mode_parse), or "llm_int8:T" with
 * an outlier threshold T > 0 (*threshold = 0 when none is given). Unknown names fail with a message
 * listing the valid ones. */
ql_status ql_act_spec_parse(const char *s, ql_act_mode *mode, float *threshold);
/* The inverse: "int8_tensor", "llm_int8:4" (the threshold only when it differs from the default). */
void ql_act_spec_format(ql_act_mode mode, float threshold, char *buf, size_t cap);

/* ---------------- runtime settings in a GGUF ----------------
 * A quantized file carries the activation scheme of each linear input it was planned with, so `qlab ppl`
 * applies it without flags. One key per setting, named after the linear's weight tensor
 * (docs/formats.md § qlab metadata keys):
 *     qlab.act.mode.<tensor>       string  ql_act_mode_name (never "none": absent means float)
 *     qlab.act.scale.<tensor>      f32     static modes: the quantization step (absmax / 127 or / 448)
 *     qlab.act.threshold.<tensor>  f32     llm_int8: the outlier threshold on |x| */
#define QL_ACT_KEY_MODE "qlab.act.mode."
#define QL_ACT_KEY_SCALE "qlab.act.scale."
#define QL_ACT_KEY_THRESHOLD "qlab.act.threshold."

struct ql_gguf;
/* Writes aq's keys for `tensor` into g (nothing for QL_ACT_NONE). */
void ql_act_quant_to_gguf(struct ql_gguf *g, const char *tensor, const ql_act_quant *aq);
/* Reads the setting of `tensor` from g: *found false (aq zeroed) when g has none. A malformed setting (unknown
 * mode, static mode without a positive finite scale, bad threshold) fails with a message naming `path`. */
ql_status ql_act_quant_from_gguf(const struct ql_gguf *g, const char *path, const char *tensor, ql_act_quant *aq,
                                 bool *found);

/* y[T, K] = x[T, K] as the quantized activations would be, back in float (y may be x). Returns the
 * number of outlier columns kept in float (QL_ACT_LLM_INT8), else 0. */
int ql_act_quant_apply(const ql_act_quant *aq, const float *x, float *y, int T, int K);

#endif
