/* method.h — the registry of quantization methods: how codes are chosen (RTN, GPTQ, AWQ, ...), as
 * opposed to how they are stored (formats/format.h). A method is a handle: it declares what it does
 * (capabilities), what data it needs, which formats it can write (a hook), and a typed option schema.
 * Options are parsed ONCE against that schema into a ql_opt_values (unknown, misspelled, mistyped or
 * out-of-range options are refused with the valid ones listed); the method reads typed values from it.
 * Per-tensor methods quantize one weight matrix; model-level transforms that move scale between
 * layers (AWQ, SmoothQuant) use `transform_layer`, which edits the F32 weights of a whole block before
 * the per-tensor step. Adding a method = one methods/m_X.c defining a `const ql_method` + one line in
 * the table of methods/method.c. Entries are immutable. */
#ifndef QL_METHOD_H
#define QL_METHOD_H

#include "formats/format.h"
#include "core/stats.h" /* ql_input_stats */

/* Data a method needs before it can run (calibration statistics). */
enum {
    QL_NEEDS_NOTHING = 0,
    QL_NEEDS_ACT_STATS = 1, /* per-input-channel max|x|, mean|x|, mean x² */
    QL_NEEDS_HESSIAN = 2,   /* XᵀX of the layer input */
};

/* What a method does, so drivers route it without knowing its name. */
enum {
    QL_CAP_PER_TENSOR = 1,        /* quantize_tensor chooses the codes of one matrix at a time */
    QL_CAP_LAYER_TRANSFORM = 2,   /* transform_layer edits a decoder layer's F32 weights first */
    QL_CAP_RUNTIME_TRANSFORM = 4, /* the quantized model needs an extra operation at run time (rotations) */
    QL_CAP_NEEDS_GRADIENTS = 8,   /* back-propagates through the model (needs tokens and a backward pass) */
    QL_CAP_LEARNS_CODEBOOKS = 16, /* writes codebooks it learned, not only codes into a fixed format */
};

/* ---- typed option schema ---- */

typedef enum { QL_OPT_INT, QL_OPT_FLOAT, QL_OPT_BOOL, QL_OPT_ENUM } ql_opt_type;

typedef struct {
    const char *name;           /* "damp" */
    ql_opt_type type;
    double def;                 /* default; bool: 0 or 1; enum: index into choices */
    double min, max;            /* int and float: inclusive range */
    const char *const *choices; /* enum: the names, NULL-terminated */
    const char *help;           /* one line */
} ql_opt_def;

#define QL_METHOD_MAX_OPTS 16

/* Options parsed against one method's schema: v[i] is the value of opts[i] (enum: the index). */
typedef struct ql_opt_values {
    const struct ql_method *method;
    double v[QL_METHOD_MAX_OPTS];
    bool given[QL_METHOD_MAX_OPTS]; /* set explicitly, not the default */
} ql_opt_values;

typedef struct {
    const ql_opt_values *values; /* parsed options; NULL = every default */
    int n_threads;
    const float *importance; /* optional per-column weights (imatrix) for the format's own quantizer */
    const ql_progress *progress;
} ql_method_opts;

struct ql_layer_f32; /* methods/layer_f32.h: writable F32 copies of one decoder layer */
struct ql_stats;     /* core/stats.h */

typedef struct ql_method {
    const char *name;    /* "rtn", "gptq", "awq", ... */
    const char *summary; /* one line for the catalogue */
    const char *explain; /* a paragraph in plain words (the TUI catalogue) */
    unsigned caps;       /* QL_CAP_* */
    unsigned needs;      /* QL_NEEDS_* */
    const ql_opt_def *opts; /* the option schema (n_opts entries) */
    int n_opts;
    /* Can the method write codes of format f? NULL: every format that can quantize. On false, writes
     * the reason into why (a clause: "nf4 has no code grid for error-feedback methods"). */
    bool (*serves)(const ql_format *f, char *why, size_t cap);
    /* w: [nrows, ncols] F32 (may be modified in place as scratch); dst: the format's bytes for the tensor */
    ql_status (*quantize_tensor)(float *w, int64_t nrows, int64_t ncols, const ql_format *f, const ql_input_stats *st,
                                 const ql_method_opts *o, void *dst);
    /* Optional model transform (AWQ, SmoothQuant): edits the F32 copies of one decoder layer in place
     * (layer->fmt[] names each linear's target format); the driver runs it on every layer, writes the
     * edited norms/weights back, and then quantizes those linears with quantize_tensor and st = NULL
     * (the transform has already used the statistics). NULL for per-tensor methods. */
    ql_status (*transform_layer)(struct ql_layer_f32 *layer, const struct ql_stats *st, const ql_method_opts *o);
    /* Optional: the bytes quantize_tensor allocates for an [nrows, ncols] tensor of format f with options o
     * (o->n_threads workers), beyond the driver's F32 copy of the weights; `what` gets the main terms and
     * `how` the options that shrink it, for the driver's check against the memory budget before anything runs.
     * NULL: the method allocates little beyond the weights (rtn). */
    double (*work_bytes)(int64_t nrows, int64_t ncols, const ql_format *f, const ql_method_opts *o, char *what,
                         size_t what_cap, char *how, size_t how_cap);
} ql_method;

int ql_method_count(void);
const ql_method *ql_method_at(int i);
const ql_method *ql_method_by_name(const char *name);
/* ql_method_by_name, or NULL with ql_last_error "unknown method 'x' (did you mean 'gptq'?); methods: ..." */
const ql_method *ql_method_find(const char *name);

/* true when m can write f (f can quantize and m's serves hook accepts it); else why says why. */
bool ql_method_serves(const ql_method *m, const ql_format *f, char *why, size_t cap);

/* Parse "k=v,k=v" (NULL or "" = all defaults) against m's schema. Refused (QL_ERR_ARG, one line in
 * ql_last_error naming the method and listing its options): an unknown key (with the nearest name),
 * a repeated key, a missing '=', a value of the wrong type or outside [min, max]. */
ql_status ql_method_parse_opts(const ql_method *m, const char *spec, ql_opt_values *out);
/* The same spec shared by several methods (a plan that mixes them): every key must be declared by at
 * least one of ms[0..n); each method then gets the keys it declares. ok for NULL / empty spec. */
ql_status ql_method_check_opts(const ql_method *const *ms, int n, const char *spec);
ql_status ql_method_parse_shared_opts(const ql_method *m, const char *spec, ql_opt_values *out);

/* Typed reads for the method itself; v NULL = the defaults. name must be in m's schema (a programming
 * error otherwise: aborts). */
double ql_opt_float(const ql_opt_values *v, const ql_method *m, const char *name);
int64_t ql_opt_int(const ql_opt_values *v, const ql_method *m, const char *name);
bool ql_opt_bool(const ql_opt_values *v, const ql_method *m, const char *name);
int ql_opt_enum(const ql_opt_values *v, const ql_method *m, const char *name);

/* "damp=0.01 (float 0..10) Hessian dampening ..." for option i; "act_order=0|1" etc. */
void ql_opt_describe(const ql_opt_def *d, char *buf, size_t cap);
/* "per-tensor, layer transform" */
void ql_method_caps_str(unsigned caps, char *buf, size_t cap);

/* ---- quantize-then-dequantize through a method ---- */
/* out [nrows, ncols] = what w becomes when method me (NULL: the format's own rounding) stores it in f:
 * dequantize(me->quantize_tensor(w)). w is not modified (out serves as the method's scratch copy); st and
 * o as for quantize_tensor. RTN / NULL is ql_format_roundtrip (formats/format.h). */
ql_status ql_method_roundtrip(const ql_method *me, const float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                              const ql_input_stats *st, const ql_method_opts *o, float *out);

#endif
