/* layer_f32.h — scale migration between a layer's producer (RMSNorm weight, or the rows of the linear
 * that makes the input) and the linears that read it: SmoothQuant (methods/m_smoothquant.c) moves
 * activation outliers into the weights, AWQ (methods/m_awq.c) protects salient weight columns. Both edit
 * writable F32 copies of one decoder layer (ql_layer_f32) so the float model stays equivalent. Every
 * buffer returned or filled is owned by the caller (see each function). */
#ifndef QL_LAYER_F32_H
#define QL_LAYER_F32_H

#include "core/infer.h"
#include "core/stats.h"
#include "formats/format.h"

/* ---------------- 2. scale migration (SmoothQuant, AWQ) ---------------- */

/* The seven linears of a decoder layer. */
enum { QL_LIN_Q, QL_LIN_K, QL_LIN_V, QL_LIN_O, QL_LIN_GATE, QL_LIN_UP, QL_LIN_DOWN, QL_LIN_COUNT };

/* Writable F32 copies of one decoder layer. w[i] is [rows[i], cols[i]] row-major (GGUF ne = [cols, rows]).
 * fmt[i]: the target format of linear i (AWQ searches with it; NULL = left in float, not searched).
 * in_scale[i]: [cols[i]] or NULL — what the transforms did: linear i now reads x / in_scale (its columns
 * were multiplied by in_scale). The quantization driver uses it to adapt per-column importance
 * (imatrix: divide by in_scale²) or statistics of the original model (H' = D⁻¹ H D⁻¹, D = diag(in_scale)).
 * The error of a quantized Q(w') against the original w is diag(out_scale)·Q(w')·diag(in_scale)⁻¹ − w. */
typedef struct ql_layer_f32 {
    int layer;
    float *attn_norm, *ffn_norm; /* [n_embd] */
    float *bv;                   /* [rows[V]] or NULL (models with q/k/v bias) */
    float *w[QL_LIN_COUNT];
    int64_t rows[QL_LIN_COUNT], cols[QL_LIN_COUNT];
    const ql_format *fmt[QL_LIN_COUNT];
    float *in_scale[QL_LIN_COUNT];
    float *out_scale[QL_LIN_COUNT]; /* [rows[i]] or NULL: linear i's outputs are now divided by out_scale
                                       (its rows were, as producer of the next point: v, up) */
    int n_head, n_head_kv, head_dim;
} ql_layer_f32;

/* The GGUF tensor of linear `lin` in layer `layer`. */
const ql_gguf_tensor *ql_layer_linear(const ql_model *m, int layer, int lin);
/* Decodes layer `layer` of m into fresh F32 copies (fmt[], in_scale[], out_scale[] all NULL). Free with
 * ql_layer_f32_deinit. */
ql_status ql_layer_f32_init(ql_layer_f32 *L, const ql_model *m, int layer, int n_threads);
void ql_layer_f32_deinit(ql_layer_f32 *L);
/* Points inf at the copies (norms, bv and the seven linears), for previews; L must outlive its use. Unfused
 * layers only: the row views of a fused attn_qkv / ffn_up have no weight of their own in the infer. */
void ql_layer_f32_swap_into(ql_infer *inf, const ql_model *m, const ql_layer_f32 *L);

/* One input point of a layer, as the transforms see it: a producer (an RMSNorm weight, or the rows of
 * the linear whose output is the input) and the linears that read it. Scales live on producer entries
 * (n_src of them); reader channel c uses entry src_of(c) (identity unless tied, as for v→o with GQA). */
typedef struct {
    const char *point; /* "attn_in", "attn_out_in", "ffn_in", "ffn_down_in" */
    int n, n_src;      /* reader input channels, producer entries */
    float *norm;       /* [n_src] producer is this RMSNorm weight, or NULL */
    int prev_lin;      /* producer is linear prev_lin's rows (and bv for V), or -1 */
    int n_lin, lin[3]; /* readers */
} ql_scale_point;

/* The points of layer L, in the order AWQ processes them (q/k/v, v→o, gate/up, up→down), each only when
 * selected. Returns how many were written to out. */
int ql_layer_scale_points(const ql_layer_f32 *L, bool attn, bool vo, bool ffn, bool down,
                          ql_scale_point out[4]);
/* Producer entry of reader channel c. */
int ql_scale_point_src(const ql_layer_f32 *L, const ql_scale_point *p, int c);
/* Applies scales s [n_src]: producer entries divided by s, reader columns multiplied by s (and in_scale
 * updated). The float model computes the same function afterwards. */
void ql_scale_point_apply(ql_layer_f32 *L, const ql_scale_point *p, const float *s);
/* Statistics of a point ("blk.<layer>.<point>"); NULL if absent or of the wrong width. */
const ql_stat_entry *ql_layer_point_stats(const ql_stats *st, int layer, const ql_scale_point *p);

/* Output error of quantizing w [rows, cols] with f (its own quantizer, no importance), under the input
 * second moment H [cols, cols] (Σ x xᵀ, full symmetric): tr(ΔW H ΔWᵀ), ΔW = deq(Q(w)) − w. When
 * col_scale is given the weights are first multiplied by it and the error is measured after undoing
 * it: ΔW = (deq(Q(w·diag(s))) − w·diag(s))·diag(s)⁻¹ (ql_format_roundtrip, then ql_output_error of
 * core/output_error.h). Returns a negative value on failure (format does not fit). */
double ql_quant_output_error(const float *w, int64_t rows, int64_t cols, const ql_format *f,
                             const float *col_scale, const double *H, int n_threads);

/* Per input point, what a transform chose (for reports and tests). */
typedef struct {
    char point[16];    /* "attn_in", "attn_out_in", "ffn_in", "ffn_down_in" */
    double alpha;      /* migration strength chosen / used */
    bool duo;          /* AWQ: duo scaling (s_x^α / s_w^(1−α)) won */
    double loss_rtn;   /* AWQ: Σ over the searched linears of tr(ΔW H ΔWᵀ) with plain RTN */
    double loss_scale; /* AWQ: the same with the chosen scales */
    double loss_final; /* AWQ: with scales and clipping */
    double smin, smax; /* range of the scales applied */
} ql_scale_report;

typedef struct {
    int n;
    ql_scale_report pt[4];
} ql_transform_report;

/* SmoothQuant on one layer: for each smoothed input point, s_j = max|X_j|^α / max|W_:j|^(1−α) (max over
 * the linears reading the point), clamped to >= 1e-5; the producer is divided by s, the readers'
 * columns multiplied by s. Options ("k=v,...", checked against the method's schema in methods/
 * m_smoothquant.c; a bad one is refused): alpha=0.85, attn=1 (q/k/v via attn_norm),
 * ffn=1 (gate/up via ffn_norm), down=0 (ffn_down via ffn_up's rows), vo=0 (attn_output via attn_v's
 * rows, scales tied across the query heads sharing a kv head). rep may be NULL. */
ql_status ql_smoothquant_layer(ql_layer_f32 *L, const ql_stats *st, const char *opts,
                               ql_transform_report *rep);

/* AWQ on one layer (see docs/methods.md): per input point, grid search of s = s_x^α (and, duo=1, also
 * s_x^α / s_w^(1−α)), α = 0, 1/grid, ..., (grid−1)/grid, minimizing Σ tr(ΔW H ΔWᵀ) over the linears
 * with a target format; scales folded into the producer; then per (row, group) clipping search of the
 * scaled weights (shrink 1 − i/20, i < 10) by the same loss, kept only when it lowers the total.
 * Needs fmt[] set for the linears to search (points whose readers have no format are skipped) and Σxxᵀ
 * in st (else the diagonal mean x² is used). Options: grid=20, duo=1, clip=1, clip_qk=0, vo=1, down=1,
 * attn=1, ffn=1. With clip=0 the float model is unchanged; clipping edits the scaled weights. */
/* Where AWQ's scale and clip searches evaluate their output errors: QL_AWQ_AUTO (the GPU when the selected
 * backend, core/backend.h, is "cuda"), the CPU, the GPU (kernels/awq_cuda.h), or the GPU path emulated on the
 * host (tests). Process-wide; the choices are the same everywhere up to ties within float rounding. */
enum { QL_AWQ_AUTO, QL_AWQ_CPU, QL_AWQ_CUDA, QL_AWQ_CUDA_EMULATED };
void ql_awq_set_where(int where);
ql_status ql_awq_layer(ql_layer_f32 *L, const ql_stats *st, const char *opts, int n_threads,
                       const ql_progress *progress, ql_transform_report *rep);

#endif
