/* infer.c — forward pass (see infer.h): the order of the layer's steps, the weights' F32 cache, hooks and
 * llama.cpp's activation-rounding choice. Every computation runs through the backend table chosen at
 * ql_infer_new (core/backend.h; "cpu" = core/backend_cpu.c), so this file calls no BLAS and no device code.
 * Shapes are row-major [tokens, features]; a weight with GGUF shape ne = [K, N] is N rows of K. */
#include "core/infer.h"
#include "core/actquant.h"
#include "core/backend.h"
#include "kernels/ggml_types.h"
#include "base/parallel.h"
#include "formats/format.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the role table's inputs are the hook points (core/arch.h) */
_Static_assert((int)QL_IN_ATTN == (int)QL_HOOK_ATTN_IN && (int)QL_IN_ATTN_OUT == (int)QL_HOOK_ATTN_OUT_IN &&
                   (int)QL_IN_FFN == (int)QL_HOOK_FFN_IN && (int)QL_IN_FFN_DOWN == (int)QL_HOOK_FFN_DOWN_IN,
               "ql_role_input follows ql_hook_point");

typedef struct {
    const ql_gguf_tensor *t;
    const float *w;  /* current F32 weights (borrowed or owned) */
    float *owned;    /* dequantized copy, freed with the infer */
    uint32_t act_type; /* what llama.cpp's CPU backend converts this layer's input to (F32: nothing) */
    int layer;         /* -1 for embedding / output tensors */
    bool deferred;     /* streaming: decoded per layer into the scratch, w is NULL */
    ql_act_quant aq;   /* simulated activation quantization (core/actquant.h); mode none: off */
} wslot;

struct ql_infer {
    const ql_model *m;
    int n_threads;
    bool emulate_llamacpp;
    bool streaming;       /* layer weights are decoded per forward pass into the scratch (model > memory budget) */
    int64_t layer_floats; /* largest sum of deferred floats over one layer */
    int n_slots;
    wslot *slots;
    const ql_backend_ops *ops; /* the backend every computation runs on */
    void *be;                  /* its context for this model */
    ql_kv_scheme *kv_layer;    /* the KV scheme of each layer (core/kv_cache.h); NULL: all F32 */
};

struct ql_scratch {
    const ql_backend_ops *ops; /* the infer's backend, which owns the buffers below */
    void *be;
    int max_tokens; /* positions of one sequence: the KV cache, attention scores, RoPE's context */
    int max_rows;   /* rows of the activation buffers: sequences x variants x positions of one batched pass */
    /* a batched pass (ql_forward_variants): the slot whose rows each variant replaces, and the variant the
     * op being issued is for (-1: none) */
    const ql_weight_variants *var;
    const void *var_slot;
    int var_cur;
    int seq_rows; /* rows of one sequence in the pass running (0: one sequence) */
    /* streaming: the current layer's decoded weights, and where each deferred slot points into them */
    float *layer_w;
    const float **slot_ptr;
    int layer_loaded;
    /* activations, from the backend's alloc(); rope_cs holds one position's cos/sin (rope_dim floats) */
    float *x, *xn, *q, *k, *v, *att, *scores, *gate, *up, *xq, *rope_cs;
    /* a MoE model's: router logits [rows, n_expert]; the routed rows [rows·n_expert_used, ·] sorted by expert:
     * their input, gate, up, output and rounding scratch; host-side routing (expert, weight, row order) */
    float *router, *moe_x, *moe_g, *moe_u, *moe_y, *moe_xq;
    float *sh_g, *sh_u, *sh_y, *sh_gate; /* a shared expert's gate, up, output [rows, ·] and gate logit [rows] */
    int32_t *route_e, *route_row, *expert_off, *route_fill;
    float *route_w, *route_p;
    void *kv; /* the backend's KV cache for one layer (the pass runs whole sequences, layer by layer) */
    ql_kv_scheme kv_scheme; /* what kv holds; remade when a layer's scheme differs */
    ql_hook_fn hook;
    void *hook_user;
};

bool ql_tensor_to_f32(const ql_gguf_tensor *t, float *dst, int n_threads) {
    const ql_format *f = ql_format_by_type(t->type);
    if (!f || !f->dequantize_rows) return false;
    return ql_format_dequantize(f, t->data, dst, t->ne[1] * t->ne[2] * t->ne[3], t->ne[0], n_threads) == QL_OK;
}

static const wslot *find_slot(const ql_infer *inf, const ql_gguf_tensor *t) {
    if (!t) return NULL;
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) return &inf->slots[i];
    return NULL;
}

/* Streaming: decode layer l's deferred tensors into the scratch (once per layer per forward pass). */
static ql_status load_layer(const ql_infer *inf, ql_scratch *sc, int l) {
    if (!inf->streaming || sc->layer_loaded == l) return QL_OK;
    if (!sc->layer_w) {
        sc->layer_w = malloc((size_t)inf->layer_floats * sizeof(float));
        sc->slot_ptr = ql_calloc((size_t)inf->n_slots, sizeof *sc->slot_ptr);
        if (!sc->layer_w) return ql_fail(QL_ERR_NOMEM, "out of memory for one layer's weights");
    }
    float *p = sc->layer_w;
    for (int i = 0; i < inf->n_slots; i++) {
        const wslot *ws = &inf->slots[i];
        if (!ws->deferred || ws->layer != l || ws->w) continue;
        const ql_gguf_tensor *t = ws->t;
        if (!ql_tensor_to_f32(t, p, inf->n_threads))
            return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s' cannot be decoded", t->name);
        sc->slot_ptr[i] = p;
        p += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    sc->layer_loaded = l;
    return QL_OK;
}

bool ql_infer_streaming(const ql_infer *inf) { return inf->streaming; }

/* ggml's vec_dot_type: llama.cpp multiplies a quantized weight by activations that it first rounds to
 * this type (a fact of the format's traits entry). Emulating it makes qlab's perplexity of a GGUF file
 * agree with llama.cpp's to the digit. */
static uint32_t llamacpp_act_type(uint32_t wtype) { return ql_format_llama_act_type(wtype); }

static ql_status add_slot(ql_infer *inf, const ql_gguf_tensor *t, int layer) {
    if (!t) return QL_OK;
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) return QL_OK; /* tied output shares the embedding */
    wslot *s = &inf->slots[inf->n_slots++];
    s->t = t;
    s->act_type = inf->emulate_llamacpp ? llamacpp_act_type(t->type) : QL_TYPE_F32;
    s->layer = layer;
    if (!inf->ops->wants_f32) return QL_OK; /* the backend reads the stored bytes itself */
    if (t->type == QL_TYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        s->w = t->data;
        return QL_OK;
    }
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (inf->streaming && layer >= 0) {
        if (!ql_format_by_type(t->type) || !ql_format_by_type(t->type)->dequantize_rows) {
            const ql_type_info *ti = ql_type_get(t->type);
            return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be decoded yet", t->name, ti ? ti->name : "?");
        }
        s->deferred = true;
        return QL_OK;
    }
    s->owned = malloc((size_t)n * sizeof(float));
    if (!s->owned) return ql_fail(QL_ERR_NOMEM, "out of memory dequantizing '%s'", t->name);
    if (!ql_tensor_to_f32(t, s->owned, inf->n_threads)) {
        const ql_type_info *ti = ql_type_get(t->type);
        return ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be decoded yet", t->name, ti ? ti->name : "?");
    }
    s->w = s->owned;
    return QL_OK;
}

/* The tensors layer l stores (fused ones once; their row views share the parent's slot, see bweight). */
static int stored_layer_tensors(const ql_model *m, int l, const ql_gguf_tensor **ts) {
    int n = 0;
    for (int r = 0; r < QL_ROLE_COUNT; r++) {
        const ql_gguf_tensor *t = ql_layer_role_get(&m->layers[l], (ql_role)r);
        if (t && !ql_model_view_parent(m, t, NULL)) ts[n++] = t;
    }
    return n;
}

ql_status ql_infer_new(const ql_model *m, int n_threads, ql_infer **out) {
    *out = NULL;
    const ql_backend_ops *ops = ql_backend_default();
    if (!ops) return QL_ERR_ARG; /* unknown $QL_BACKEND: the message names the known ones */
    ql_status s = ql_infer_new_on(m, n_threads, ops, out);
    if (s == QL_ERR_UNSUPPORTED && m->cfg.n_expert > 0 && ql_backend_is_auto() && ops != ql_backend_at(0)) {
        /* chosen automatically, not asked for: run the experts where they run */
        ql_log(1, "%s: %s; running on %s", m->path, ql_last_error(), ql_backend_at(0)->name);
        s = ql_infer_new_on(m, n_threads, ql_backend_at(0), out);
    }
    return s;
}

ql_status ql_infer_new_on(const ql_model *m, int n_threads, const ql_backend_ops *ops, ql_infer **out) {
    *out = NULL;
    if (m->weights_only) {
        char known[256];
        ql_arch_list(known, sizeof known);
        return ql_fail(QL_ERR_UNSUPPORTED,
                       "%s: architecture '%s' has no forward pass in qlab (known: %s); it can only be quantized by "
                       "tensor names (--type or a preset, rtn)", m->path, m->cfg.arch, known);
    }
    ql_infer *inf = ql_calloc(1, sizeof *inf);
    inf->m = m;
    inf->n_threads = n_threads > 0 ? n_threads : 1;
    inf->ops = ops;
    ql_status s = ops->create(m, inf->n_threads, &inf->be);
    if (s) {
        free(inf);
        return s;
    }
    const char *emu = getenv("QL_NO_LLAMACPP_ACT");
    inf->emulate_llamacpp = !(emu && *emu && strcmp(emu, "0") != 0);
    const ql_config *c = &m->cfg;
    inf->slots = ql_calloc((size_t)c->n_layer * QL_ROLE_COUNT + 3, sizeof(wslot));
    /* Stream layer weights when decoding them all to F32 would not fit the memory budget: then each
     * forward pass decodes one layer at a time into its scratch (models larger than RAM still run). */
    int64_t decode_bytes = 0, layer_max = 0;
    for (int l = 0; l < c->n_layer; l++) {
        const ql_gguf_tensor *ts[QL_ROLE_COUNT];
        const int nt = stored_layer_tensors(m, l, ts);
        int64_t lf = 0;
        for (int i = 0; i < nt; i++)
            if (ts[i]->type != QL_TYPE_F32) lf += ts[i]->ne[0] * ts[i]->ne[1] * ts[i]->ne[2] * ts[i]->ne[3];
        decode_bytes += lf * 4;
        layer_max = lf > layer_max ? lf : layer_max;
    }
    const char *st = getenv("QL_STREAM");
    double budget = ql_mem_budget_bytes();
    inf->streaming = ops->wants_f32 && (st && *st ? strcmp(st, "0") != 0 : (double)decode_bytes > budget);
    inf->layer_floats = layer_max;
    if (inf->streaming)
        ql_log(2, "%s: decoding layers on the fly (%.1f GiB of F32 weights exceed the memory budget)", m->path,
               decode_bytes / 1073741824.0);
    const ql_gguf_tensor *globals[] = {m->tok_embd, m->output_norm, m->output};
    for (size_t i = 0; i < 3 && !s; i++) s = add_slot(inf, globals[i], -1);
    for (int l = 0; l < c->n_layer && !s; l++) {
        const ql_gguf_tensor *ts[QL_ROLE_COUNT];
        const int nt = stored_layer_tensors(m, l, ts);
        for (int i = 0; i < nt && !s; i++) s = add_slot(inf, ts[i], l);
    }
    if (s) {
        ql_infer_free(inf);
        return s;
    }
    *out = inf;
    return QL_OK;
}

void ql_infer_free(ql_infer *inf) {
    if (!inf) return;
    for (int i = 0; i < inf->n_slots; i++) free(inf->slots[i].owned);
    free(inf->slots);
    free(inf->kv_layer);
    inf->ops->destroy(inf->be);
    free(inf);
}

const ql_model *ql_infer_model(const ql_infer *inf) { return inf->m; }

const ql_backend_ops *ql_infer_backend(const ql_infer *inf) { return inf->ops; }

void *ql_infer_backend_context(const ql_infer *inf) { return inf->be; }

int ql_infer_set_op_threads(const ql_infer *inf, int n) { return inf->ops->set_threads(inf->be, n); }

const float *ql_infer_swap_weight(ql_infer *inf, const ql_gguf_tensor *t, const float *data) {
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) {
            const float *old = inf->slots[i].w;
            inf->slots[i].w = data;
            return old;
        }
    return NULL;
}

const float *ql_infer_swap_weight_typed(ql_infer *inf, const ql_gguf_tensor *t, const float *data, uint32_t type) {
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == t) {
            const float *old = inf->slots[i].w;
            inf->slots[i].w = data;
            inf->slots[i].act_type = inf->emulate_llamacpp ? llamacpp_act_type(type) : QL_TYPE_F32;
            return old;
        }
    return NULL;
}

bool ql_infer_set_act_quant(ql_infer *inf, const ql_gguf_tensor *w, const ql_act_quant *aq) {
    for (int i = 0; i < inf->n_slots; i++)
        if (inf->slots[i].t == w) {
            if (aq) inf->slots[i].aq = *aq;
            else memset(&inf->slots[i].aq, 0, sizeof inf->slots[i].aq);
            return true;
        }
    return false;
}

ql_status ql_infer_set_kv_layer(ql_infer *inf, int layer, const ql_kv_scheme *scheme) {
    const ql_config *c = &inf->m->cfg;
    if (layer < -1 || layer >= c->n_layer) return ql_fail(QL_ERR_ARG, "kv scheme: no layer %d", layer);
    ql_kv_scheme f32 = ql_kv_scheme_f32();
    if (!scheme) scheme = &f32;
    ql_status st = ql_kv_scheme_check(scheme, c, inf->m->path);
    if (st) return st;
    if (!ql_kv_scheme_is_f32(scheme) && (!inf->ops->kv_new_scheme || !inf->ops->kv_attention))
        return ql_fail(QL_ERR_UNSUPPORTED, "backend %s has no quantized KV cache", inf->ops->name);
    if (!inf->kv_layer) {
        inf->kv_layer = ql_malloc((size_t)c->n_layer * sizeof *inf->kv_layer);
        for (int l = 0; l < c->n_layer; l++) inf->kv_layer[l] = f32;
    }
    for (int l = 0; l < c->n_layer; l++)
        if (layer < 0 || l == layer) inf->kv_layer[l] = *scheme;
    return QL_OK;
}

ql_status ql_infer_set_kv(ql_infer *inf, const ql_kv_scheme *scheme) { return ql_infer_set_kv_layer(inf, -1, scheme); }

ql_kv_scheme ql_infer_kv_layer(const ql_infer *inf, int layer) {
    return inf->kv_layer && layer >= 0 && layer < inf->m->cfg.n_layer ? inf->kv_layer[layer] : ql_kv_scheme_f32();
}

ql_scratch *ql_scratch_new(const ql_infer *inf, int max_tokens) { return ql_scratch_new_rows(inf, max_tokens, max_tokens); }

ql_scratch *ql_scratch_new_rows(const ql_infer *inf, int max_tokens, int max_rows) {
    const ql_config *c = &inf->m->cfg;
    const ql_backend_ops *ops = inf->ops;
    if (max_rows < max_tokens) max_rows = max_tokens;
    ql_scratch *s = ql_calloc(1, sizeof *s);
    size_t T = (size_t)max_rows, S = (size_t)max_tokens, D = (size_t)c->n_embd;
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_head_kv * c->head_dim;
    s->ops = ops;
    s->be = inf->be;
    s->max_tokens = max_tokens;
    s->max_rows = max_rows;
    s->var_cur = -1;
    s->layer_loaded = -1;
    s->kv_scheme = ql_kv_scheme_f32();
    /* xq rounds the input of any linear(): a shared expert's down projection may be wider than n_ff */
    size_t widest = QL_MAX(QL_MAX(D, Q), (size_t)QL_MAX(c->n_ff, c->n_ff_shexp));
    struct { float **p; size_t floats; } bufs[] = {
        {&s->x, T * D},  {&s->xn, T * QL_MAX(D, Q)}, {&s->q, T * Q},      {&s->k, T * KV},
        {&s->v, T * KV}, {&s->att, T * Q},           {&s->scores, S * S}, {&s->gate, T * (size_t)c->n_ff},
        {&s->up, T * (size_t)c->n_ff}, {&s->xq, T * widest}, {&s->rope_cs, (size_t)c->rope_dim},
    };
    bool ok = true;
    for (size_t i = 0; i < QL_ARRAY_LEN(bufs) && ok; i++)
        ok = (*bufs[i].p = ops->alloc(s->be, bufs[i].floats * sizeof(float))) != NULL;
    if (c->n_expert > 0) {
        const size_t R = T * (size_t)c->n_expert_used, F = (size_t)c->n_ff_exp;
        struct { float **p; size_t floats; } moe[] = {
            {&s->router, T * (size_t)c->n_expert}, {&s->moe_x, R * D}, {&s->moe_g, R * F}, {&s->moe_u, R * F},
            {&s->moe_y, R * D}, {&s->moe_xq, R * QL_MAX(D, F)},
        };
        for (size_t i = 0; i < QL_ARRAY_LEN(moe) && ok; i++)
            ok = (*moe[i].p = ops->alloc(s->be, moe[i].floats * sizeof(float))) != NULL;
        struct { float **p; size_t floats; } sh[] = {
            {&s->sh_g, T * (size_t)c->n_ff_shexp}, {&s->sh_u, T * (size_t)c->n_ff_shexp}, {&s->sh_y, T * D}, {&s->sh_gate, T},
        };
        for (size_t i = 0; c->n_ff_shexp > 0 && i < QL_ARRAY_LEN(sh) && ok; i++)
            ok = (*sh[i].p = ops->alloc(s->be, sh[i].floats * sizeof(float))) != NULL;
        s->route_e = ql_malloc(R * sizeof *s->route_e);
        s->route_row = ql_malloc(R * sizeof *s->route_row);
        s->route_w = ql_malloc(R * sizeof *s->route_w);
        s->expert_off = ql_malloc(((size_t)c->n_expert + 1) * sizeof *s->expert_off);
        s->route_fill = ql_malloc((size_t)c->n_expert * sizeof *s->route_fill);
        s->route_p = ql_malloc((size_t)c->n_expert * 2 * sizeof *s->route_p); /* probabilities, selection scores */
    }
    if (!ok || ops->kv_new(s->be, max_tokens, (int)KV, &s->kv) != QL_OK) {
        ql_scratch_free(s);
        return NULL;
    }
    return s;
}

/* Mirrors ql_scratch_new's allocations: keep the two together. */
double ql_scratch_bytes(const ql_config *c, int max_tokens) { return ql_scratch_bytes_rows(c, max_tokens, max_tokens); }

double ql_scratch_bytes_rows(const ql_config *c, int max_tokens, int max_rows) {
    double S = max_tokens, T = QL_MAX(max_rows, max_tokens), D = c->n_embd, Q = (double)c->n_head * c->head_dim, KV = (double)c->n_head_kv * c->head_dim;
    double F = c->n_ff, widest = QL_MAX(QL_MAX(D, Q), (double)QL_MAX(c->n_ff, c->n_ff_shexp));
    /* the activations, then the one-layer KV cache (the CPU backend's: F32 keys and values) and rope_cs */
    double moe = 0;
    if (c->n_expert > 0) {
        const double R = T * c->n_expert_used, FE = c->n_ff_exp;
        moe = 4.0 * (T * c->n_expert + R * (2 * D + 2 * FE + QL_MAX(D, FE))) + 16.0 * R + 12.0 * c->n_expert +
              (c->n_ff_shexp > 0 ? 4.0 * T * (2.0 * c->n_ff_shexp + D + 1) : 0); /* a shared expert's */
    }
    return 4.0 * T * (D + QL_MAX(D, Q) + Q + 2 * KV + Q + 2 * F + widest) + 4.0 * S * S +
           4.0 * (S * 2 * KV + c->rope_dim) + moe;
}

double ql_mem_budget_bytes(void) {
    const char *budget_env = getenv("QL_MEM_BUDGET_MB");
    if (budget_env && *budget_env) return atof(budget_env) * 1048576.0;
    return 0.6 * ql_mem_limit_bytes(NULL); /* RAM, or less under a cgroup limit or ulimit -v */
}

ql_status ql_mem_check(double bytes, const char *what, const char *how) {
    const double budget = ql_mem_budget_bytes();
    if (isfinite(bytes) && bytes >= 0 && bytes <= budget) return QL_OK;
    const char *limit;
    ql_mem_limit_bytes(&limit);
    const bool gib = budget >= 1073741824.0; /* small budgets (tests, QL_MEM_BUDGET_MB) read better in MiB */
    const double unit = gib ? 1073741824.0 : 1048576.0;
    return ql_fail(QL_ERR_NOMEM, "%s needs %.2f %s, more than the memory budget of %.2f %s (60%% of %s, or "
                                 "QL_MEM_BUDGET_MB); %s",
                   what, bytes / unit, gib ? "GiB" : "MiB", budget / unit, gib ? "GiB" : "MiB", limit, how);
}

void ql_scratch_free(ql_scratch *s) {
    if (!s) return;
    float *bufs[] = {s->x,  s->xn,     s->q,     s->k,     s->v,     s->att,   s->scores, s->gate,
                     s->up, s->xq,     s->rope_cs, s->router, s->moe_x, s->moe_g, s->moe_u,  s->moe_y, s->moe_xq,
                     s->sh_g, s->sh_u, s->sh_y, s->sh_gate};
    for (size_t i = 0; i < QL_ARRAY_LEN(bufs); i++)
        if (bufs[i]) s->ops->release(s->be, bufs[i]);
    free(s->route_e); free(s->route_row); free(s->route_w); free(s->expert_off); free(s->route_fill); free(s->route_p);
    if (s->kv) s->ops->kv_free(s->be, s->kv);
    free(s->layer_w); free(s->slot_ptr);
    free(s);
}

void ql_scratch_set_hook(ql_scratch *s, ql_hook_fn fn, void *user) {
    s->hook = fn;
    s->hook_user = user;
}

/* What an op gets for tensor t: the tensor and its F32 rows (own, borrowed, swapped in, or this pass's
 * per-layer decode when streaming), and how the layer's input is to be rounded. */
static ql_backend_weight bweight(const ql_infer *inf, const ql_scratch *sc, const ql_gguf_tensor *t) {
    const wslot *s = find_slot(inf, t);
    ql_backend_weight w = {.t = t, .act_type = QL_TYPE_F32};
    int64_t row0 = 0;
    if (!s) {
        /* a row view of a fused tensor (attn_qkv, gate+up ffn_up): the parent's rows from row0 */
        const ql_gguf_tensor *parent = ql_model_view_parent(inf->m, t, &row0);
        if (!(s = find_slot(inf, parent))) return w;
    }
    w.f32 = s->w ? s->w : sc->slot_ptr ? sc->slot_ptr[s - inf->slots] : NULL;
    w.act_type = s->act_type;
    if (sc->var && sc->var_slot == (const void *)s && sc->var_cur >= 0) {
        w.f32 = sc->var->w[sc->var_cur];
        w.act_type = inf->emulate_llamacpp ? llamacpp_act_type(sc->var->type[sc->var_cur]) : QL_TYPE_F32;
    }
    if (w.f32) w.f32 += row0 * t->ne[0];
    w.aq = &s->aq;
    return w;
}

static _Thread_local int g_hook_expert = -1;
int ql_hook_expert(void) { return g_hook_expert; }

/* The host may read the activations once the backend is synchronized. */
static ql_status run_hook(const ql_infer *inf, ql_scratch *s, int layer, ql_hook_point where, const float *x,
                          int n, int dim) {
    if (!s->hook) return QL_OK;
    ql_status st = inf->ops->sync(inf->be);
    if (st) return st;
    s->hook(s->hook_user, layer, where, x, n, dim);
    return QL_OK;
}

/* Whether t's rows (its own, or its fused parent's) are the ones a batched pass varies. */
static bool is_varied(const ql_infer *inf, const ql_scratch *sc, const ql_gguf_tensor *t) {
    if (!sc->var || !t) return false;
    const wslot *s = find_slot(inf, t);
    if (!s) s = find_slot(inf, ql_model_view_parent(inf->m, t, NULL));
    return s && (const void *)s == sc->var_slot;
}

/* One matmul over T rows; LLM.int8()'s outlier columns are a property of the batch it sees, so under that
 * activation scheme each sequence of a batched pass is its own batch, as in a pass of its own. */
static ql_status matmul_rows(const ql_infer *inf, ql_scratch *sc, const ql_backend_weight *w, const ql_backend_weight *b,
                             const float *x, float *y, int T, int K, int N, float beta, float *xq) {
    const int S = sc->seq_rows;
    if (!(w->aq && w->aq->mode == QL_ACT_LLM_INT8) || S <= 0 || S >= T)
        return inf->ops->matmul(inf->be, w, b, x, y, T, K, N, beta, xq);
    ql_status st = QL_OK;
    for (int r = 0; r < T && !st; r += S)
        st = inf->ops->matmul(inf->be, w, b, x + (size_t)r * K, y + (size_t)r * N, S, K, N, beta, xq + (size_t)r * K);
    return st;
}

/* y[T,N] (+)= x[T,K] · W[N,K]ᵀ (+ bias); beta = 1 accumulates into y (residual adds). In a batched pass the
 * varied weight multiplies each variant's block of rows (variant-major) with that variant's rows; every other
 * weight multiplies all rows at once, which is what batching buys. */
static ql_status linear(const ql_infer *inf, ql_scratch *sc, float *y, const float *x, const ql_gguf_tensor *wt,
                        const ql_gguf_tensor *bt, int T, int K, int N, float beta) {
    if (is_varied(inf, sc, wt)) {
        const int nv = sc->var->n, rows = T / nv;
        ql_status st = QL_OK;
        for (int v = 0; v < nv && !st; v++) {
            sc->var_cur = v;
            const ql_backend_weight w = bweight(inf, sc, wt), b = bweight(inf, sc, bt);
            st = matmul_rows(inf, sc, &w, bt ? &b : NULL, x + (size_t)v * rows * K, y + (size_t)v * rows * N, rows, K, N,
                             beta, sc->xq + (size_t)v * rows * K);
        }
        sc->var_cur = -1;
        return st;
    }
    const ql_backend_weight w = bweight(inf, sc, wt), b = bweight(inf, sc, bt);
    return matmul_rows(inf, sc, &w, bt ? &b : NULL, x, y, T, K, N, beta, sc->xq);
}

/* The model's norm of rows of the residual stream: RMSNorm, or LayerNorm where the description says (Cohere). */
static ql_status rmsnorm(const ql_infer *inf, ql_scratch *sc, float *y, const float *x, const ql_gguf_tensor *wt,
                         int T) {
    const ql_backend_weight w = bweight(inf, sc, wt);
    const ql_config *c = &inf->m->cfg;
    if (!c->desc->layer_norm) return inf->ops->rmsnorm(inf->be, &w, x, y, T, c->n_embd, c->norm_eps);
    if (!inf->ops->layernorm)
        return ql_fail(QL_ERR_UNSUPPORTED, "the %s backend has no LayerNorm, which %s needs", inf->ops->name, c->arch);
    return inf->ops->layernorm(inf->be, &w, x, y, T, c->n_embd, c->norm_eps);
}

/* Store this layer's K/V (s->k, s->v after rope) in its cache and attend: the F32 cache through kv_load +
 * attention (views of itself), a KV scheme's through kv_attention, which decodes into s->k / s->v. The
 * scratch's one cache is remade when this layer's scheme differs from the last layer's. */
static ql_status kv_attend(const ql_infer *inf, ql_scratch *s, int l, int T, size_t slice) {
    const ql_backend_ops *ops = inf->ops;
    void *be = inf->be;
    ql_kv_scheme want = ql_infer_kv_layer(inf, l);
    ql_status st;
    if (!ql_kv_scheme_equal(&want, &s->kv_scheme)) {
        const ql_config *c = &inf->m->cfg;
        void *kv = NULL;
        const int KV = c->n_head_kv * c->head_dim;
        st = ql_kv_scheme_is_f32(&want) ? ops->kv_new(be, s->max_tokens, KV, &kv)
                                        : ops->kv_new_scheme(be, s->max_tokens, KV, &want, &kv);
        if (st) return st;
        ops->kv_free(be, s->kv);
        s->kv = kv;
        s->kv_scheme = want;
    }
    /* one sequence of a batched pass: its rows of q, k, v and att (the cache holds one sequence) */
    const ql_config *c = &inf->m->cfg;
    const size_t qo = slice * T * (size_t)(c->n_head * c->head_dim), ko = slice * T * (size_t)(c->n_head_kv * c->head_dim);
    float *q = s->q + qo, *att = s->att + qo, *sk = s->k + ko, *sv = s->v + ko;
    if ((st = ops->kv_store(be, s->kv, 0, T, sk, sv))) return st;
    if (!ql_kv_scheme_is_f32(&want)) return ops->kv_attention(be, s->kv, q, s->scores, att, T, l, sk, sv);
    const float *k, *v;
    if ((st = ops->kv_load(be, s->kv, 0, T, &k, &v, sk, sv))) return st;
    return ops->attention(be, q, k, v, s->scores, att, T, l);
}

/* One decoder layer on s->x [T, n_embd] (the residual stream, updated in place). */

/* Per-head RMSNorm of x[T, n_heads·head_dim] in place (q/k norm): T·n_heads rows of head_dim. */
static ql_status head_norm(const ql_infer *inf, ql_scratch *sc, float *x, const ql_gguf_tensor *wt, int T, int n_heads) {
    if (!wt) return QL_OK;
    const ql_backend_weight w = bweight(inf, sc, wt);
    if (inf->m->cfg.desc->qk_norm_full) /* OLMoE: one norm over all heads of a row */
        return inf->ops->rmsnorm(inf->be, &w, x, x, T, n_heads * inf->m->cfg.head_dim, inf->m->cfg.norm_eps);
    return inf->ops->rmsnorm(inf->be, &w, x, x, T * n_heads, inf->m->cfg.head_dim, inf->m->cfg.norm_eps);
}

/* x += out(in) with out = in · Wᵀ (+ bias: gpt-oss's attention output), through the post-norm when the layer has
 * one (Gemma, OLMo-2: x += norm(out)) and times the residual scale (Granite: x += out·s, in ggml's order: product,
 * bias, scale, add). Without any of them the product accumulates straight into x. */
static ql_status residual_linear(const ql_infer *inf, ql_scratch *s, const float *in, const ql_gguf_tensor *wt,
                                 const ql_gguf_tensor *bias, const ql_gguf_tensor *post_norm, int T, int K) {
    const int D = inf->m->cfg.n_embd;
    const float rs = inf->m->cfg.residual_scale;
    if (!post_norm && !bias && rs == 1.0f) return linear(inf, s, s->x, in, wt, NULL, T, K, D, 1.0f);
    ql_status st;
    if ((st = linear(inf, s, s->xn, in, wt, bias, T, K, D, 0.0f)) ||
        (post_norm && (st = rmsnorm(inf, s, s->xn, s->xn, post_norm, T))) ||
        (rs != 1.0f && (st = inf->ops->scale(inf->be, s->xn, (size_t)T * D, rs))))
        return st;
    return inf->ops->add(inf->be, s->x, s->xn, (size_t)T * D);
}

/* A block's input: its pre-norm of the stream, in xn, or the stream itself where the architecture has no
 * pre-norms (OLMo-2 normalises block outputs instead). */
static ql_status block_input(const ql_infer *inf, ql_scratch *s, const ql_gguf_tensor *norm, int T, const float **in) {
    *in = norm ? s->xn : s->x;
    return norm ? rmsnorm(inf, s, s->xn, s->x, norm, T) : QL_OK;
}

/* Ministral-3's temperature tuning of q [S, n_head·head_dim] at positions 0..S-1, as llama.cpp's attn_temp input
 * computes the factor (float position and floor, the log in double). */
static ql_status scale_q_by_position(const ql_infer *inf, float *q, int S) {
    const ql_config *c = &inf->m->cfg;
    const size_t Q = (size_t)c->n_head * c->head_dim;
    ql_status st = QL_OK;
    for (int t = 0; t < S && !st; t++) {
        const float f = (float)(log((double)floorf((float)t / (float)c->attn_temp_floor) + 1.0) * c->attn_temp_scale + 1.0);
        if (f != 1.0f) st = inf->ops->scale(inf->be, q + (size_t)t * Q, Q, f);
    }
    return st;
}

/* RoPE and attention of every sequence of the pass: rows [b·S, (b+1)·S) are one sequence at positions 0..S-1. */
static ql_status rope_attend(const ql_infer *inf, ql_scratch *s, int l, int S, int n_slices) {
    const ql_config *c = &inf->m->cfg;
    const size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_head_kv * c->head_dim;
    const bool rope = ql_layer_has_rope(c, l);
    ql_status st = QL_OK;
    for (int b = 0; b < n_slices && !st; b++) {
        float *q = s->q + (size_t)b * S * Q;
        if (rope && ((st = inf->ops->rope(inf->be, q, S, c->n_head, l, s->max_tokens, s->rope_cs)) ||
                     (st = inf->ops->rope(inf->be, s->k + (size_t)b * S * KV, S, c->n_head_kv, l, s->max_tokens, s->rope_cs))))
            break;
        if (c->attn_temp_scale > 0 && (st = scale_q_by_position(inf, q, S))) break;
        st = kv_attend(inf, s, l, S, (size_t)b);
    }
    return st;
}

/* Expert e's slice of a per-expert tensor as an op sees it, along dimension `dim`: a 2-D view of its rows for an
 * expert stack ([row length, rows, expert]: dim 2, whatever n_dims a one-expert file stores), a vector for a
 * [width, expert] bias (dim 1) (view is the caller's storage). */
static ql_backend_weight expert_weight(const ql_infer *inf, const ql_scratch *sc, const ql_gguf_tensor *exps, int e,
                                       int dim, ql_gguf_tensor *view) {
    ql_backend_weight w = bweight(inf, sc, exps);
    int64_t per = 1; /* values in one expert's slice */
    for (int d = 0; d < dim; d++) per *= exps->ne[d];
    const uint64_t bytes = exps->nbytes / (uint64_t)exps->ne[dim];
    *view = *exps;
    view->n_dims = dim;
    view->ne[dim] = 1;
    view->nbytes = bytes;
    view->data = exps->data ? (const uint8_t *)exps->data + bytes * (uint64_t)e : NULL;
    w.t = view;
    if (w.f32) w.f32 += (int64_t)e * per;
    return w;
}

/* Routing of rows [0, T) of router logits lg [T, E]: each row's k = n_expert_used experts with the highest
 * probability (softmax, or sigmoid per expert; plus sel_bias when the layer has a selection bias) or logit
 * (top-k softmax) — ggml_argsort_top_k: descending, the lower index first among equals — weighted by that
 * unbiased probability (by the softmax of the k logits), renormalised over the k (with ggml's clamp of the sum)
 * and scaled when the configuration says. Fills
 * route_e/route_w [T·k] and the rows sorted by expert: expert e's pairs are route_row[expert_off[e] ..
 * expert_off[e+1]) (pair p = t·k + j). */
static void moe_route(const ql_config *c, ql_scratch *s, const float *lg, const float *sel_bias, int T) {
    const int E = c->n_expert, K = c->n_expert_used;
    float *p = s->route_p, *q = s->route_p + E; /* q: what the experts are chosen by (p, plus a selection bias) */
    for (int e = 0; e <= E; e++) s->expert_off[e] = 0;
    for (int t = 0; t < T; t++) {
        const float *x = lg + (size_t)t * E;
        if (c->moe_gating == QL_GATING_TOPK_SOFTMAX) { /* gpt-oss: the top k of the logits themselves */
            memcpy(p, x, (size_t)E * sizeof(float));
        } else if (c->moe_gating == QL_GATING_SIGMOID) { /* GLM-4.5: each expert's own sigmoid (ggml_sigmoid) */
            for (int e = 0; e < E; e++) p[e] = 1.0f / (1.0f + expf(-x[e]));
        } else {
            float mx = -INFINITY;
            for (int e = 0; e < E; e++) mx = x[e] > mx ? x[e] : mx;
            double sum = 0; /* ggml's soft_max: exp in float, the sum in double */
            for (int e = 0; e < E; e++) sum += (p[e] = expf(x[e] - mx));
            const float inv = (float)(1.0 / sum);
            for (int e = 0; e < E; e++) p[e] *= inv;
        }
        for (int e = 0; e < E; e++) q[e] = sel_bias ? p[e] + sel_bias[e] : p[e];
        int32_t *sel = s->route_e + (size_t)t * K;
        float *w = s->route_w + (size_t)t * K;
        for (int j = 0; j < K; j++) { /* k is small: selection by repeated scans; a chosen one drops out at -inf */
            int best = 0;
            for (int e = 1; e < E; e++)
                if (q[e] > q[best]) best = e;
            sel[j] = best;
            w[j] = p[best];
            q[best] = -INFINITY;
            s->expert_off[best + 1]++;
        }
        if (c->moe_gating == QL_GATING_TOPK_SOFTMAX) { /* ggml_soft_max over the k chosen logits */
            float mx = -INFINITY;
            for (int j = 0; j < K; j++) mx = w[j] > mx ? w[j] : mx;
            double sum = 0;
            for (int j = 0; j < K; j++) sum += (w[j] = expf(w[j] - mx));
            const float inv = (float)(1.0 / sum);
            for (int j = 0; j < K; j++) w[j] *= inv;
        }
        if (c->moe_norm_weights) {
            float ws = 0;
            for (int j = 0; j < K; j++) ws += w[j];
            ws = ws < 6.103515625e-5f ? 6.103515625e-5f : ws;
            for (int j = 0; j < K; j++) w[j] /= ws;
        }
        if (c->moe_weights_scale != 0.0f && c->moe_weights_scale != 1.0f) /* GLM-4.5's routed scaling factor */
            for (int j = 0; j < K; j++) w[j] *= c->moe_weights_scale;
    }
    for (int e = 0; e < E; e++) s->expert_off[e + 1] += s->expert_off[e];
    for (int e = 0; e < E; e++) s->route_fill[e] = s->expert_off[e];
    for (int pr = 0; pr < T * K; pr++) s->route_row[s->route_fill[s->route_e[pr]]++] = pr;
}

/* The MoE FFN of layer l on rows [r0, r0 + T) of s->xn, added into the same rows of s->x: route, gather each
 * expert's rows, gate/up/act/down per expert, then x += Σ_j w_j·y_j in the router's order (ggml's sum of the
 * weighted views). `variant` >= 0: a batched pass's variant whose expert rows these are. Hooks see the pooled
 * rows of all experts (QL_HOOK_FFN_DOWN_IN: [T·k, n_ff_exp]), so statistics of an expert tensor are one
 * Hessian shared by its experts. */
static ql_status moe_rows(const ql_infer *inf, ql_scratch *s, int l, int r0, int T, int variant) {
    const ql_backend_ops *ops = inf->ops;
    const ql_config *c = &inf->m->cfg;
    const ql_layer_tensors *L = &inf->m->layers[l];
    const int D = c->n_embd, E = c->n_expert, K = c->n_expert_used, F = c->n_ff_exp, R = T * K;
    const float *xn = s->xn + (size_t)r0 * D;
    ql_status st;
    const ql_backend_weight wr = bweight(inf, s, L->ffn_gate_inp), wrb = bweight(inf, s, L->gate_inp_b);
    if ((st = ops->matmul(inf->be, &wr, L->gate_inp_b ? &wrb : NULL, xn, s->router, T, D, E, 0.0f, s->moe_xq)) ||
        (st = ops->sync(inf->be)))
        return st;
    moe_route(c, s, s->router, L->exp_probs_b ? (const float *)L->exp_probs_b->data : NULL, T);
    for (int i = 0; i < R; i++)
        memcpy(s->moe_x + (size_t)i * D, xn + (size_t)(s->route_row[i] / K) * D, (size_t)D * sizeof(float));
    s->var_cur = variant;
    ql_gguf_tensor vg, vu, vd, vgb, vub, vdb;
    for (int e = 0; e < E && !st; e++) { /* gate, up, act and down of each expert that got rows */
        const int o = s->expert_off[e], n = s->expert_off[e + 1] - o;
        if (!n) continue;
        const ql_backend_weight wg = expert_weight(inf, s, L->gate_exps, e, 2, &vg),
                                wu = expert_weight(inf, s, L->up_exps, e, 2, &vu),
                                wd = expert_weight(inf, s, L->down_exps, e, 2, &vd);
        /* gpt-oss: each expert's own biases, added after its products as ggml_add_id does */
        const ql_backend_weight bg = L->gate_exps_b ? expert_weight(inf, s, L->gate_exps_b, e, 1, &vgb) : wg,
                                bu = L->up_exps_b ? expert_weight(inf, s, L->up_exps_b, e, 1, &vub) : wu,
                                bd = L->down_exps_b ? expert_weight(inf, s, L->down_exps_b, e, 1, &vdb) : wd;
        float *xe = s->moe_x + (size_t)o * D, *ge = s->moe_g + (size_t)o * F;
        if ((st = ops->matmul(inf->be, &wg, L->gate_exps_b ? &bg : NULL, xe, ge, n, D, F, 0.0f, s->moe_xq)) ||
            (st = ops->matmul(inf->be, &wu, L->up_exps_b ? &bu : NULL, xe, s->moe_u + (size_t)o * F, n, D, F, 0.0f,
                              s->moe_xq)) ||
            (st = ops->ffn_act(inf->be, ge, s->moe_u + (size_t)o * F, (size_t)n * F)))
            break;
        if (s->hook) { /* per expert: what llama.cpp's imatrix collects */
            g_hook_expert = e;
            if (!(st = run_hook(inf, s, l, QL_HOOK_EXPERT_IN, xe, n, D)))
                st = run_hook(inf, s, l, QL_HOOK_EXPERT_DOWN_IN, ge, n, F);
            g_hook_expert = -1;
        }
        if (!st)
            st = ops->matmul(inf->be, &wd, L->down_exps_b ? &bd : NULL, ge, s->moe_y + (size_t)o * D, n, F, D, 0.0f,
                             s->moe_xq);
    }
    /* the down projections read moe_g without changing it: the pooled hook sees every expert's input */
    if (!st) st = run_hook(inf, s, l, QL_HOOK_FFN_DOWN_IN, s->moe_g, R, F);
    s->var_cur = -1;
    /* the shared expert (qwen2moe): a dense SwiGLU FFN on every row, scaled by sigmoid(x · gate_inp_shexp); its
     * ffn_down input is not hooked (narrower than the experts' pooled one the statistics expect) */
    const int FS = c->n_ff_shexp;
    if (!st && L->gate_shexp && (!L->gate_inp_shexp || !(st = linear(inf, s, s->sh_gate, xn, L->gate_inp_shexp, NULL, T, D, 1, 0.0f))) &&
        !(st = linear(inf, s, s->sh_g, xn, L->gate_shexp, NULL, T, D, FS, 0.0f)) &&
        !(st = linear(inf, s, s->sh_u, xn, L->up_shexp, NULL, T, D, FS, 0.0f)) &&
        !(st = ops->ffn_act(inf->be, s->sh_g, s->sh_u, (size_t)T * FS)))
        st = linear(inf, s, s->sh_y, s->sh_g, L->down_shexp, NULL, T, FS, D, 0.0f);
    if (st || (st = ops->sync(inf->be))) return st;
    /* pair p's output sits at its place in the expert order: invert route_row into moe_x's first R ints */
    int32_t *slot_of = (int32_t *)s->moe_x;
    for (int i = 0; i < R; i++) slot_of[s->route_row[i]] = i;
    float *acc = s->moe_xq;
    const float rs = c->residual_scale; /* Granite: the FFN's output times it before the residual add */
    for (int t = 0; t < T; t++) {
        float *x = s->x + (size_t)(r0 + t) * D;
        for (int d = 0; d < D; d++) acc[d] = 0; /* 0 + y·w is y·w exactly: ggml's order of sums */
        for (int j = 0; j < K; j++) {
            const float w = s->route_w[t * K + j], *y = s->moe_y + (size_t)slot_of[t * K + j] * D;
            for (int d = 0; d < D; d++) acc[d] += y[d] * w;
        }
        if (L->gate_shexp && L->gate_inp_shexp) { /* ggml: sigmoid as silu(g) / g, then moe_out + shared · gate */
            const float g = s->sh_gate[t], gate = g / (1.0f + expf(-g)) / g, *y = s->sh_y + (size_t)t * D;
            for (int d = 0; d < D; d++) acc[d] += y[d] * gate;
        } else if (L->gate_shexp) { /* granitemoe: moe_out + shared */
            const float *y = s->sh_y + (size_t)t * D;
            for (int d = 0; d < D; d++) acc[d] += y[d];
        }
        if (rs != 1.0f)
            for (int d = 0; d < D; d++) x[d] += acc[d] * rs;
        else
            for (int d = 0; d < D; d++) x[d] += acc[d];
    }
    return QL_OK;
}

/* A MoE layer's FFN on all rows of the pass: one routing per variant block when a batched pass varies one of the
 * layer's expert tensors (an expert's rows would otherwise mix variants), else all rows at once. */
static ql_status moe_ffn(const ql_infer *inf, ql_scratch *s, int l, int T) {
    const ql_layer_tensors *L = &inf->m->layers[l];
    if (is_varied(inf, s, L->gate_exps) || is_varied(inf, s, L->up_exps) || is_varied(inf, s, L->down_exps)) {
        const int nv = s->var->n, rows = T / nv;
        ql_status st = QL_OK;
        for (int v = 0; v < nv && !st; v++) st = moe_rows(inf, s, l, v * rows, rows, v);
        return st;
    }
    return moe_rows(inf, s, l, 0, T, -1);
}

/* A dense SwiGLU/GeGLU FFN of layer l on its input fin [T, n_embd], added into s->x (through the post-norm when
 * the layer has one). */
static ql_status dense_ffn(const ql_infer *inf, ql_scratch *s, int l, const float *fin, int T) {
    const ql_config *c = &inf->m->cfg;
    const ql_layer_tensors *L = &inf->m->layers[l];
    const int D = c->n_embd, F = c->n_ff;
    ql_status st;
    if ((st = linear(inf, s, s->gate, fin, L->w_gate, NULL, T, D, F, 0.0f)) ||
        (st = linear(inf, s, s->up, fin, L->w_up, NULL, T, D, F, 0.0f)) ||
        (st = inf->ops->ffn_act(inf->be, s->gate, s->up, (size_t)T * F)) ||
        (st = run_hook(inf, s, l, QL_HOOK_FFN_DOWN_IN, s->gate, T, F)))
        return st;
    return residual_linear(inf, s, s->gate, L->w_down, NULL, L->post_ffn_norm, T, F);
}

/* One decoder layer on s->x [n_slices·S, n_embd] (the residual stream, updated in place): n_slices sequences of
 * S positions, stacked. Which optional steps run follows the tensors the architecture description gave the
 * layer (q/k norm, post norms, biases). */
static ql_status layer_forward(const ql_infer *inf, ql_scratch *s, int l, int S, int n_slices) {
    const ql_config *c = &inf->m->cfg;
    const ql_layer_tensors *L = &inf->m->layers[l];
    const int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim;
    const int T = S * n_slices;
    const float *ain, *fin; /* the attention's and the FFN's input: s->xn, or s->x without pre-norms */
    ql_status st;
    if ((st = load_layer(inf, s, l)) || (st = run_hook(inf, s, l, QL_HOOK_RESIDUAL, s->x, T, D)) ||
        (st = block_input(inf, s, L->attn_norm, T, &ain)) || (st = run_hook(inf, s, l, QL_HOOK_ATTN_IN, ain, T, D)) ||
        (st = linear(inf, s, s->q, ain, L->wq, L->bq, T, D, Q, 0.0f)) ||
        (st = linear(inf, s, s->k, ain, L->wk, L->bk, T, D, KV, 0.0f)) ||
        (st = linear(inf, s, s->v, ain, L->wv, L->bv, T, D, KV, 0.0f)) ||
        (st = head_norm(inf, s, s->q, L->q_norm, T, c->n_head)) || (st = head_norm(inf, s, s->k, L->k_norm, T, c->n_head_kv)) ||
        (st = rope_attend(inf, s, l, S, n_slices)) ||
        (st = run_hook(inf, s, l, QL_HOOK_ATTN_OUT_IN, s->att, T, Q)))
        return st;
    if (c->desc->parallel_block) /* Cohere: the FFN reads the attention's norm; ggml adds ffn + x, then attention */
        return (st = run_hook(inf, s, l, QL_HOOK_FFN_IN, ain, T, D)) || (st = dense_ffn(inf, s, l, ain, T))
                   ? st
                   : residual_linear(inf, s, s->att, L->wo, L->bo, L->post_attn_norm, T, Q);
    if ((st = residual_linear(inf, s, s->att, L->wo, L->bo, L->post_attn_norm, T, Q)) ||
        (st = block_input(inf, s, L->ffn_norm, T, &fin)) || (st = run_hook(inf, s, l, QL_HOOK_FFN_IN, fin, T, D)))
        return st;
    if (L->ffn_gate_inp) return moe_ffn(inf, s, l, T); /* every MoE description has ffn_norm: it reads s->xn */
    return dense_ffn(inf, s, l, fin, T);
}

ql_status ql_forward(const ql_infer *inf, ql_scratch *s, const int32_t *tokens, int T, int logit_from,
                     float *logits) {
    return ql_forward_from(inf, s, tokens, NULL, 0, T, logit_from, logits);
}

/* The pass behind ql_forward_from and ql_forward_variants: n_slices = n_var·n_seq sequences of T positions,
 * slice b = v·n_seq + q being sequence q (tokens[q] or x_in[q]) under variant v. */
static ql_status forward_slices(const ql_infer *inf, ql_scratch *s, const int32_t *const *tokens,
                                const float *const *x_in, int n_seq, int layer_from, int T, int logit_from,
                                float *logits) {
    const ql_model *m = inf->m;
    const ql_config *c = &m->cfg;
    const int D = c->n_embd, n_var = s->var ? s->var->n : 1, n_slices = n_var * n_seq;
    if (T <= 0 || T > s->max_tokens || (int64_t)T * n_slices > s->max_rows)
        return ql_fail(QL_ERR_ARG, "forward: %d x %d tokens (scratch holds %d x %d)", n_slices, T,
                       s->max_rows / s->max_tokens, s->max_tokens);
    if (logit_from < 0 || logit_from > T || (logit_from && n_slices > 1))
        return ql_fail(QL_ERR_ARG, "forward: bad logit_from %d", logit_from);
    if (layer_from < 0 || layer_from > c->n_layer || (layer_from > 0 && !x_in))
        return ql_fail(QL_ERR_ARG, "forward: bad start layer %d", layer_from);
    ql_status st;
    for (int b = 0; b < n_slices; b++) {
        const int q = b % n_seq;
        float *xb = s->x + (size_t)b * T * D;
        if (x_in) {
            memcpy(xb, x_in[q], (size_t)T * D * sizeof(float));
            continue;
        }
        for (int t = 0; t < T; t++)
            if (tokens[q][t] < 0 || tokens[q][t] >= c->n_vocab)
                return ql_fail(QL_ERR_ARG, "forward: token id %d out of range (vocab %d)", tokens[q][t], c->n_vocab);
        s->var_cur = s->var ? b / n_seq : -1; /* a varied embedding: this slice's variant */
        const ql_backend_weight emb = bweight(inf, s, m->tok_embd);
        s->var_cur = -1;
        if ((st = inf->ops->get_rows(inf->be, &emb, tokens[q], T, D, xb))) return st;
    }
    const int R = T * n_slices;
    s->seq_rows = n_slices > 1 ? T : 0;
    if (!x_in && c->embd_scale != 1.0f && (st = inf->ops->scale(inf->be, s->x, (size_t)R * D, c->embd_scale)))
        return st;
    for (int l = layer_from; l < c->n_layer; l++)
        if ((st = layer_forward(inf, s, l, T, n_slices))) return st;
    /* the stream leaving the last layer: ql_forward_from(layer_from = n_layer) restarts at output_norm */
    if ((st = run_hook(inf, s, c->n_layer, QL_HOOK_RESIDUAL, s->x, R, D))) return st;
    const int RL = R - logit_from;
    if (RL > 0 && ((st = rmsnorm(inf, s, s->xn, s->x + (size_t)logit_from * D, m->output_norm, RL)) ||
                   (st = run_hook(inf, s, c->n_layer, QL_HOOK_OUTPUT_IN, s->xn, RL, D)) ||
                   (st = linear(inf, s, logits, s->xn, m->output, NULL, RL, D, c->n_vocab, 0.0f)) ||
                   (c->final_softcap > 0 &&
                    (st = inf->ops->softcap(inf->be, logits, (size_t)RL * c->n_vocab, c->final_softcap))) ||
                   (c->logit_mult != 1.0f &&
                    (st = inf->ops->scale(inf->be, logits, (size_t)RL * c->n_vocab, c->logit_mult)))))
        return st;
    return inf->ops->sync(inf->be);
}

ql_status ql_forward_from(const ql_infer *inf, ql_scratch *s, const int32_t *tokens, const float *x_in, int layer_from,
                          int T, int logit_from, float *logits) {
    s->var = NULL;
    s->var_slot = NULL;
    return forward_slices(inf, s, &tokens, x_in ? &x_in : NULL, 1, layer_from, T, logit_from, logits);
}

ql_status ql_forward_variants(const ql_infer *inf, ql_scratch *s, const ql_weight_variants *var,
                              const int32_t *const *tokens, const float *const *x_in, int n_seq, int layer_from, int T,
                              float *logits) {
    if (!var || var->n < 1 || !var->w || !var->type || n_seq < 1)
        return ql_fail(QL_ERR_ARG, "forward: no variants or no sequences");
    const wslot *slot = find_slot(inf, var->t);
    if (!slot) return ql_fail(QL_ERR_ARG, "forward: '%s' is not a stored weight of the model", var->t ? var->t->name : "?");
    if (!x_in && !tokens) return ql_fail(QL_ERR_ARG, "forward: neither tokens nor residual streams");
    s->var = var;
    s->var_slot = slot;
    s->var_cur = -1;
    ql_status st = forward_slices(inf, s, tokens, x_in, n_seq, layer_from, T, 0, logits);
    s->var = NULL;
    s->var_slot = NULL;
    return st;
}

double ql_log_softmax_at(const float *logits, int n_vocab, int tok) {
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)(logits[i] - mx));
    return (double)(logits[tok] - mx) - log(sum);
}
