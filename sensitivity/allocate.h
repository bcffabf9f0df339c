/* allocate.h — automatic bit allocation: one candidate per tensor so that the total predicted error
 * (the sum of per-tensor errors measured by sense.h: the additive assumption) is smallest within a
 * size budget. This is a multiple-choice knapsack:
 *   - exact by dynamic programming over the budget in units of the gcd of the cost differences, when
 *     items x states fit (always on small models);
 *   - otherwise Lagrangian relaxation (bisection on the price of a bit; each tensor then picks its own
 *     best error + λ·bits) followed by a greedy repair that spends the remaining budget on the best
 *     error-per-bit upgrades; a coarse DP is tried too and the better answer kept. The Lagrangian dual
 *     gives a lower bound on the optimum, so the result carries its own optimality gap.
 * Budgets: bits per weight over the quantized tensors (what `qlab info` calls bpw_quantized), over the
 * whole file (--whole-file), or a file size. Rules restrict the choices per tensor.
 * Everything here is pure computation: no I/O, thread-safe on distinct objects. */
#ifndef QL_ALLOCATE_H
#define QL_ALLOCATE_H

#include "sensitivity/sense.h"

struct ql_plan;

/* ---------------- the knapsack ---------------- */

typedef struct {
    int n; /* choices */
    const int64_t *cost; /* [n] >= 0, any unit (the allocator uses bytes) */
    const double *err; /* [n] finite */
} ql_mckp_item;

typedef enum { QL_MCKP_AUTO = 0, QL_MCKP_DP, QL_MCKP_LAGRANGE } ql_mckp_method;

typedef struct {
    int64_t cost; /* total cost of the choice */
    double err; /* total error */
    bool exact; /* proven optimal (DP at exact resolution) among the assignments costing between
                            fill_to and budget, or within budget when none does */
    double lower_bound; /* a lower bound on the least error within budget (that optimum when exact) */
} ql_mckp_result;

/* Chooses choice[i] for every item with total cost <= budget and the least total error. With fill_to > 0
 * the answer costs at least fill_to when some assignment can (a target BPW is hit, not undershot): the
 * DP searches that window exactly; otherwise upgrades of least added error fill it. max_cells bounds the
 * DP table (items x budget states; 0: 1<<25). QL_ERR_ARG when even the cheapest choices exceed the budget
 * (the message names the smallest feasible cost). */
ql_status ql_mckp_solve(const ql_mckp_item *items, int n_items, int64_t budget, int64_t fill_to,
                        ql_mckp_method method, int64_t max_cells, int *choice, ql_mckp_result *res);

/* The whole frontier at once: one DP up to max_budget, then a query per budget (a scan of the states). */
typedef struct ql_mckp_dp ql_mckp_dp;
ql_status ql_mckp_dp_new(const ql_mckp_item *items, int n_items, int64_t max_budget, int64_t max_cells,
                         ql_mckp_dp **out);
/* Least error within `budget` (choice filled, may be NULL); INFINITY when infeasible. */
double ql_mckp_dp_query(const ql_mckp_dp *dp, int64_t budget, int *choice);
bool ql_mckp_dp_exact(const ql_mckp_dp *dp);
void ql_mckp_dp_free(ql_mckp_dp *dp);

/* ---------------- allocation over a sensitivity file ---------------- */

/* Rules, applied in order, each "PATTERN OP FORMAT[+METHOD]":
 *   OP ">=" ">" "<=" "<"  compare the bits a candidate takes on the tensor with the bits FORMAT would take
 *                         on it (its nominal bpw when its blocks do not fit the rows);
 *   OP "="                pins the tensor to FORMAT[+METHOD] (measured or not);
 *   OP "!="               excludes that candidate.
 * PATTERN is a glob (fnmatch) over the tensor name with or without ".weight" ("blk.*.attn_v",
 * "token_embd"); a pattern without '.' matches the role in every layer ("attn_v" = "blk.*.attn_v"). */
typedef struct {
    double target_bpw; /* > 0: bits per weight over the quantized tensors (or the file, whole_file) */
    bool whole_file;
    int64_t target_bytes; /* > 0 instead: the size of the output GGUF */
    int metric; /* ql_sense_level whose error is minimised; -1: the highest measured */
    char *const *rules;
    int n_rules;
    double tolerance; /* achieved bpw within this of the target when possible; 0: 0.01 */
    int method; /* ql_mckp_method */
    int64_t max_cells; /* DP table limit (0: default) */
    int64_t kv_ctx; /* > 0: the KV cache at this context joins the budget (target_bytes = file + cache): every
                       layer chooses f32 or one of the sense file's KV schemes (--kv-candidates), with its
                       measured KLD (the kld metric is then required) */
    int kv_batch;   /* sequences the cache holds (0: 1) */
} ql_alloc_opts;

typedef struct {
    char *spec; /* "q4_0", "int4_g32_mse+gptq"; NULL: kept as loaded (no candidate fits) */
    int cand; /* index into the sense candidates; -1 for pins outside them and kept tensors */
    int64_t bytes;
    double err; /* predicted (0 when unknown: pinned to an unmeasured format, or kept) */
    char *note; /* why, when a rule or the rows decided it; may be NULL */
} ql_alloc_choice;

typedef struct {
    int n; /* = sense->n_tensors */
    ql_alloc_choice *c;
    int metric; /* level used */
    int64_t bytes, params; /* quantized tensors */
    double bpw; /* over the quantized tensors */
    double bpw_file; /* over every tensor */
    int64_t file_bytes; /* estimated output size (0 when the model size is unknown) */
    double err, lower_bound; /* predicted total error and a lower bound on the optimum */
    bool exact;
    int64_t budget_bytes; /* what the target allowed for the quantized tensors */
    bool target_hit; /* achieved within the tolerance */
    char *uniform; /* non-NULL: one candidate everywhere (this spec, with fallbacks where it does not fit) was
                      predicted better than the search's mix within the budget, and is the answer */
    int kv_n;       /* layers with a KV choice (0 without kv_ctx) */
    int *kv_choice; /* [kv_n] index into sense->kv, -1: the f32 cache */
    int64_t kv_bytes, kv_ctx; /* the cache's exact bytes at kv_ctx x kv_batch (not in bytes / file_bytes) */
    int kv_batch;
    double kv_err;  /* its share of err */
} ql_alloc_result;

/* Never returns a plan predicted worse than a one-candidate plan that fits the budget (r->uniform says when
 * that plan won). */
ql_status ql_allocate(const ql_sense *s, const ql_alloc_opts *o, ql_alloc_result *r);
/* QL_ERR_ARG naming the reachable range when a target BPW lies outside what the candidates (under the
 * rules) can reach, cheapest to dearest; QL_OK otherwise. ql_allocate itself gets as close as it can. */
ql_status ql_alloc_check_target(const ql_sense *s, const ql_alloc_opts *o);
void ql_alloc_result_free(ql_alloc_result *r);
/* Per-tensor plan (plan.h); source names the sense file and the target; with KV choices, the plan's [kv] (the
 * most common scheme for every layer, the others as layers' own, ctx and batch). *out: ql_plan_free. */
ql_status ql_alloc_plan(const ql_sense *s, const ql_alloc_result *r, const char *source,
                        struct ql_plan **out);

/* The activation side of a plan from the measured schemes (sense.h, --act-candidates): scheme `act` on the input
 * of every linear whose measured KLD is at most max_kld (max_kld <= 0: every linear); the others stay float.
 * Activations do not change the weights' bytes, so this is added to the weights' allocation: *kld is the
 * summed per-linear KLD the prediction grows by (the same additive model as the weights'). Writes the
 * [activations] entries into plan when not NULL. QL_ERR_ARG naming the measured schemes when act is not one. */
ql_status ql_alloc_act(const ql_sense *s, const char *act, double max_kld, struct ql_plan *plan, double *kld,
                       int *n_quant, int *n_float);

typedef struct {
    double bpw, bpw_file; /* achieved */
    int64_t bytes; /* quantized tensors */
    double err; /* predicted total error */
    int64_t kv_bytes; /* the KV cache's share of the budget (0 without kv_ctx) */
} ql_frontier_point;

/* The predicted error-vs-BPW frontier under the rules of o (targets ignored): n_points budgets evenly
 * spaced in bpw from the cheapest to the most expensive assignment. *pts: free(). */
ql_status ql_alloc_frontier(const ql_sense *s, const ql_alloc_opts *o, int n_points, ql_frontier_point **pts,
                            int *n_out);

#endif
