/* method.h — the registry of quantization methods: how codes are chosen (RTN, GPTQ, AWQ, ...), as
 * opposed to how they are stored (methods/format.h). A method quantizes one weight matrix into any
 * compatible format, using what it declares it needs (nothing, activation statistics, the Hessian
 * XᵀX). Model-level transforms that move scale between layers (AWQ, SmoothQuant) use `transform`,
 * which edits the F32 weights of a whole block before the per-tensor step. Entries are immutable. */
#ifndef QL_METHOD_H
#define QL_METHOD_H

#include "formats/format.h"
#include "core/stats.h" /* ql_input_stats */

enum {
    QL_NEEDS_NOTHING = 0,
    QL_NEEDS_ACT_STATS = 1, /* per-input-channel max|x|, mean|x|, mean x² */
    QL_NEEDS_HESSIAN = 2,   /* XᵀX of the layer input */
    QL_NEEDS_GRADIENTS = 4,
};


/* Free-form options ("damp=0.01,act_order=1,group_static=0,block=128"), parsed by each method. */
typedef struct {
    const char *spec;
    int n_threads;
    const float *importance; /* optional per-column weights (imatrix) for the format's own quantizer */
    const ql_progress *progress;
} ql_method_opts;

struct ql_layer_f32; /* methods/layer_f32.h: writable F32 copies of one decoder layer */
struct ql_stats;     /* core/stats.h */

typedef struct ql_method {
    const char *name;    /* "rtn", "gptq", "awq", ... */
    const char *summary; /* one line for the catalogue */
    const char *help;    /* options, one per line: "damp=0.01  Hessian dampening, fraction of mean diagonal" */
    unsigned needs;      /* QL_NEEDS_* */
    /* w: [nrows, ncols] F32 (may be modified in place as scratch); dst: the format's bytes for the tensor */
    ql_status (*quantize_tensor)(float *w, int64_t nrows, int64_t ncols, const ql_format *f, const ql_input_stats *st,
                                 const ql_method_opts *o, void *dst);
    /* Optional model transform (AWQ, SmoothQuant): edits the F32 copies of one decoder layer in place
     * (layer->fmt[] names each linear's target format); the driver runs it on every layer, writes the
     * edited norms/weights back, and then quantizes those linears with quantize_tensor and st = NULL
     * (the transform has already used the statistics). NULL for per-tensor methods. */
    ql_status (*transform_layer)(struct ql_layer_f32 *layer, const struct ql_stats *st, const ql_method_opts *o);
} ql_method;

int ql_method_count(void);
const ql_method *ql_method_at(int i);
const ql_method *ql_method_by_name(const char *name);

/* Option helpers for methods: value of key in "a=1,b=2" or the default. */
double ql_opt_double(const char *spec, const char *key, double def);

#endif
