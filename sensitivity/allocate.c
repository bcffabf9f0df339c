/* allocate.c — multiple-choice knapsack (DP / Lagrangian + repair) and the allocation of sensitivity
 * measurements to a budget (see allocate.h). */
#include "sensitivity/allocate.h"
#include "core/kv_cache.h"
#include "formats/format.h"
#include "methods/method.h"
#include "pipeline/plan.h"
#include "core/actquant.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_CELLS ((int64_t)1 << 25)

/* ---------------- knapsack ---------------- */

/* An item reduced to its undominated choices, sorted by cost (then error). */
typedef struct {
    int n;
    int64_t *cost;
    double *err;
    int *orig;
    int64_t *x; /* DP: extra cost over the cheapest, in DP units (rounded up) */
} pitem;

typedef struct {
    int64_t cost;
    double err;
    int idx;
} sorted_choice;

static int cmp_choice(const void *a, const void *b) {
    const sorted_choice *x = a, *y = b;
    if (x->cost != y->cost) return x->cost < y->cost ? -1 : 1;
    if (x->err != y->err) return x->err < y->err ? -1 : 1;
    return x->idx - y->idx;
}

/* keep_all: only sort (the DP keeps dominated choices: they can fill a window [fill_to, budget]) */
static ql_status prune(const ql_mckp_item *items, int n_items, bool keep_all, pitem **out) {
    pitem *p = ql_calloc((size_t)(n_items ? n_items : 1), sizeof *p);
    for (int i = 0; i < n_items; i++) {
        const ql_mckp_item *it = &items[i];
        if (it->n <= 0) {
            for (int k = 0; k < i; k++) {
                free(p[k].cost);
                free(p[k].err);
                free(p[k].orig);
            }
            free(p);
            return ql_fail(QL_ERR_ARG, "knapsack item %d has no choice", i);
        }
        sorted_choice *sc = ql_malloc((size_t)it->n * sizeof *sc);
        for (int j = 0; j < it->n; j++) sc[j] = (sorted_choice){it->cost[j], it->err[j], j};
        qsort(sc, (size_t)it->n, sizeof *sc, cmp_choice);
        p[i].cost = ql_malloc((size_t)it->n * sizeof(int64_t));
        p[i].err = ql_malloc((size_t)it->n * sizeof(double));
        p[i].orig = ql_malloc((size_t)it->n * sizeof(int));
        double best = INFINITY;
        for (int k = 0; k < it->n; k++) {
            if (!keep_all && !(sc[k].err < best)) continue; /* dominated: costs and errs at least as much */
            best = sc[k].err;
            p[i].cost[p[i].n] = sc[k].cost;
            p[i].err[p[i].n] = sc[k].err;
            p[i].orig[p[i].n] = sc[k].idx;
            p[i].n++;
        }
        free(sc);
    }
    *out = p;
    return QL_OK;
}

static void pitems_free(pitem *p, int n) {
    if (!p) return;
    for (int i = 0; i < n; i++) {
        free(p[i].cost);
        free(p[i].err);
        free(p[i].orig);
        free(p[i].x);
    }
    free(p);
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

struct ql_mckp_dp {
    int n_items;
    pitem *p;
    int64_t base, unit, U;
    uint16_t *ch; /* [n_items][U+1]: kept-choice index */
    double *f; /* [U+1]: least error with exactly s extra units (INFINITY: no assignment costs that) */
    bool exact;
};

void ql_mckp_dp_free(ql_mckp_dp *dp) {
    if (!dp) return;
    pitems_free(dp->p, dp->n_items);
    free(dp->ch);
    free(dp->f);
    free(dp);
}

bool ql_mckp_dp_exact(const ql_mckp_dp *dp) { return dp->exact; }

static ql_status dp_build(pitem *p, int n_items, int64_t max_budget, int64_t max_cells, ql_mckp_dp **out) {
    *out = NULL;
    if (max_cells <= 0) max_cells = DEFAULT_MAX_CELLS;
    int64_t base = 0, span = 0, g = 0;
    for (int i = 0; i < n_items; i++) {
        if (p[i].n > 65535) return ql_fail(QL_ERR_UNSUPPORTED, "knapsack item with %d choices", p[i].n);
        base += p[i].cost[0];
        span += p[i].cost[p[i].n - 1] - p[i].cost[0];
        for (int j = 1; j < p[i].n; j++) g = gcd64(g, p[i].cost[j] - p[i].cost[0]);
    }
    if (max_budget < base)
        return ql_fail(QL_ERR_ARG, "budget %lld below the cheapest assignment %lld", (long long)max_budget,
                       (long long)base);
    if (g == 0) g = 1;
    int64_t extra = QL_MIN(max_budget - base, span);
    int64_t unit = g, U = extra / unit;
    bool exact = true;
    if ((U + 1) > max_cells / QL_MAX(n_items, 1)) {
        /* coarse: costs rounded up to a unit that makes the table fit (feasible, maybe not optimal) */
        int64_t states = QL_MAX(max_cells / QL_MAX(n_items, 1) - 1, 1);
        unit = (extra + states - 1) / states;
        unit = ((unit + g - 1) / g) * g;
        U = extra / unit;
        exact = false;
    }
    ql_mckp_dp *dp = ql_calloc(1, sizeof *dp);
    dp->n_items = n_items;
    dp->p = p;
    dp->base = base;
    dp->unit = unit;
    dp->U = U;
    dp->exact = exact;
    size_t S = (size_t)U + 1;
    dp->ch = malloc((size_t)QL_MAX(n_items, 1) * S * sizeof(uint16_t));
    dp->f = malloc(S * sizeof(double));
    double *prev = dp->f, *cur = malloc(S * sizeof(double));
    if (!dp->ch || !dp->f || !cur) {
        free(cur);
        dp->p = NULL;
        ql_mckp_dp_free(dp);
        return ql_fail(QL_ERR_NOMEM, "knapsack table of %zu states too large", S * (size_t)n_items);
    }
    for (int i = 0; i < n_items; i++) {
        p[i].x = ql_malloc((size_t)p[i].n * sizeof(int64_t));
        for (int j = 0; j < p[i].n; j++) p[i].x[j] = (p[i].cost[j] - p[i].cost[0] + unit - 1) / unit;
    }
    /* exact-cost states, so that a window [fill_to, budget] can be searched for the best assignment */
    for (size_t s = 0; s < S; s++) prev[s] = s ? INFINITY : 0;
    for (int i = 0; i < n_items; i++) {
        uint16_t *ch = dp->ch + (size_t)i * S;
        for (size_t s = 0; s < S; s++) {
            cur[s] = INFINITY;
            ch[s] = 0;
        }
        for (int j = 0; j < p[i].n; j++) {
            const int64_t x = p[i].x[j];
            const double e = p[i].err[j];
            for (size_t s = (size_t)x; s < S; s++) {
                double v = prev[s - (size_t)x] + e;
                if (v < cur[s]) {
                    cur[s] = v;
                    ch[s] = (uint16_t)j;
                }
            }
        }
        double *t = prev;
        prev = cur;
        cur = t;
    }
    if (prev != dp->f) {
        memcpy(dp->f, prev, S * sizeof(double));
        free(prev);
    } else free(cur);
    *out = dp;
    return QL_OK;
}

ql_status ql_mckp_dp_new(const ql_mckp_item *items, int n_items, int64_t max_budget, int64_t max_cells,
                         ql_mckp_dp **out) {
    pitem *p;
    ql_status s = prune(items, n_items, true, &p);
    if (s) return s;
    s = dp_build(p, n_items, max_budget, max_cells, out);
    if (s) pitems_free(p, n_items);
    return s;
}

static void dp_backtrack(const ql_mckp_dp *dp, int64_t s, int *choice) {
    size_t S = (size_t)dp->U + 1;
    for (int i = dp->n_items - 1; i >= 0; i--) {
        int j = dp->ch[(size_t)i * S + (size_t)s];
        choice[i] = dp->p[i].orig[j];
        s -= dp->p[i].x[j];
    }
}

/* Least error over states [lo, hi] (ties: the larger state, i.e. closer to the budget). */
static int64_t dp_best(const ql_mckp_dp *dp, int64_t lo, int64_t hi) {
    int64_t best = -1;
    for (int64_t s = QL_MAX(lo, 0); s <= hi; s++)
        if (isfinite(dp->f[s]) && (best < 0 || dp->f[s] <= dp->f[best])) best = s;
    return best;
}

/* Best assignment with cost in [lo_budget, budget] when one exists, else the best within budget. */
static double dp_query_window(const ql_mckp_dp *dp, int64_t lo_budget, int64_t budget, int *choice) {
    if (budget < dp->base) return INFINITY;
    int64_t hi = QL_MIN((budget - dp->base) / dp->unit, dp->U);
    int64_t lo = lo_budget > dp->base ? (lo_budget - dp->base + dp->unit - 1) / dp->unit : 0;
    int64_t s = lo <= hi ? dp_best(dp, lo, hi) : -1;
    if (s < 0) s = dp_best(dp, 0, hi);
    if (s < 0) return INFINITY;
    if (choice) dp_backtrack(dp, s, choice);
    return dp->f[s];
}

double ql_mckp_dp_query(const ql_mckp_dp *dp, int64_t budget, int *choice) {
    return dp_query_window(dp, 0, budget, choice);
}

/* Lagrangian pick at price lam: every item minimises err + lam*cost (ties: cheaper). */
static double lagr_pick(const pitem *p, int n, double lam, int *kch, int64_t *cost) {
    double val = 0;
    int64_t c = 0;
    for (int i = 0; i < n; i++) {
        int best = 0;
        double bv = p[i].err[0] + lam * (double)p[i].cost[0];
        for (int j = 1; j < p[i].n; j++) {
            double v = p[i].err[j] + lam * (double)p[i].cost[j];
            if (v < bv) {
                bv = v;
                best = j;
            }
        }
        kch[i] = best;
        val += bv;
        c += p[i].cost[best];
    }
    *cost = c;
    return val;
}

/* Lagrangian relaxation: the cheapest-price feasible pick, and the best dual bound seen. */
static void lagrange(const pitem *p, int n, int64_t budget, int *kch, double *bound) {
    int *tmp = ql_malloc((size_t)(n ? n : 1) * sizeof *tmp);
    int64_t c;
    double v = lagr_pick(p, n, 0, kch, &c);
    *bound = v;
    if (c <= budget) {
        free(tmp);
        return;
    }
    double hi = 1e-30, lo = 0;
    for (int it = 0; it < 400; it++, hi *= 2) {
        v = lagr_pick(p, n, hi, tmp, &c);
        *bound = fmax(*bound, v - hi * (double)budget);
        if (c <= budget) break;
        lo = hi;
    }
    if (c > budget) { /* prices beyond double range: the cheapest choices */
        for (int i = 0; i < n; i++) tmp[i] = 0;
    }
    memcpy(kch, tmp, (size_t)n * sizeof *kch);
    for (int it = 0; it < 200 && hi - lo > 1e-12 * hi; it++) {
        double mid = 0.5 * (lo + hi);
        v = lagr_pick(p, n, mid, tmp, &c);
        *bound = fmax(*bound, v - mid * (double)budget);
        if (c <= budget) {
            hi = mid;
            memcpy(kch, tmp, (size_t)n * sizeof *kch);
        } else lo = mid;
    }
    free(tmp);
}

static void totals(const ql_mckp_item *items, int n, const int *ch, int64_t *cost, double *err) {
    *cost = 0;
    *err = 0;
    for (int i = 0; i < n; i++) {
        *cost += items[i].cost[ch[i]];
        *err += items[i].err[ch[i]];
    }
}

/* Greedy repair: spend the slack on the upgrade with the best error reduction per unit of cost. */
static void repair(const ql_mckp_item *items, int n, int64_t budget, int *ch) {
    int64_t cost;
    double err;
    totals(items, n, ch, &cost, &err);
    for (;;) {
        int bi = -1, bj = -1;
        double bratio = 0;
        for (int i = 0; i < n; i++) {
            const ql_mckp_item *it = &items[i];
            int64_t c0 = it->cost[ch[i]];
            double e0 = it->err[ch[i]];
            for (int j = 0; j < it->n; j++) {
                int64_t dc = it->cost[j] - c0;
                double de = e0 - it->err[j];
                if (de <= 0 || dc > budget - cost) continue;
                double ratio = dc <= 0 ? INFINITY : de / (double)dc;
                if (bi < 0 || ratio > bratio) {
                    bi = i;
                    bj = j;
                    bratio = ratio;
                }
            }
        }
        if (bi < 0) break;
        cost += items[bi].cost[bj] - items[bi].cost[ch[bi]];
        ch[bi] = bj;
    }
}

/* Raise the cost to at least fill_to with the upgrades that cost the least error. */
static void fill(const ql_mckp_item *items, int n, int64_t budget, int64_t fill_to, int *ch) {
    int64_t cost;
    double err;
    totals(items, n, ch, &cost, &err);
    while (cost < fill_to) {
        int bi = -1, bj = -1;
        double bde = 0;
        int64_t bdc = 0;
        for (int i = 0; i < n; i++) {
            const ql_mckp_item *it = &items[i];
            for (int j = 0; j < it->n; j++) {
                int64_t dc = it->cost[j] - it->cost[ch[i]];
                if (dc <= 0 || dc > budget - cost) continue;
                double de = it->err[j] - it->err[ch[i]];
                /* least error added; among equals the larger step (fewer steps to the target) */
                if (bi < 0 || de < bde || (de == bde && dc > bdc)) {
                    bi = i;
                    bj = j;
                    bde = de;
                    bdc = dc;
                }
            }
        }
        if (bi < 0) break;
        cost += bdc;
        ch[bi] = bj;
    }
}

/* When single upgrades cannot reach fill_to: the pair (one tensor changed up or down, another up) that
 * lands the cost in [fill_to, budget] with the least added error. O((choices in all)^2), once. */
static void fill_pairs(const ql_mckp_item *items, int n, int64_t budget, int64_t fill_to, int *ch) {
    int64_t cost;
    double err;
    totals(items, n, ch, &cost, &err);
    if (cost >= fill_to) return;
    int bi = -1, bj = -1, bk = -1, bl = -1;
    double bde = INFINITY;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < items[i].n; j++) {
            if (j == ch[i]) continue;
            int64_t c1 = cost + items[i].cost[j] - items[i].cost[ch[i]];
            double e1 = items[i].err[j] - items[i].err[ch[i]];
            for (int k = i + 1; k < n; k++)
                for (int l = 0; l < items[k].n; l++) {
                    if (l == ch[k]) continue;
                    int64_t c2 = c1 + items[k].cost[l] - items[k].cost[ch[k]];
                    if (c2 < fill_to || c2 > budget) continue;
                    double de = e1 + items[k].err[l] - items[k].err[ch[k]];
                    if (de < bde) {
                        bde = de;
                        bi = i, bj = j, bk = k, bl = l;
                    }
                }
        }
    if (bi >= 0) {
        ch[bi] = bj;
        ch[bk] = bl;
    }
}

ql_status ql_mckp_solve(const ql_mckp_item *items, int n_items, int64_t budget, int64_t fill_to,
                        ql_mckp_method method, int64_t max_cells, int *choice, ql_mckp_result *res) {
    memset(res, 0, sizeof *res);
    pitem *p, *pa;
    ql_status s = prune(items, n_items, false, &p);
    if (s) return s;
    prune(items, n_items, true, &pa);
    int64_t base = 0;
    for (int i = 0; i < n_items; i++) base += p[i].cost[0];
    if (budget < base) {
        pitems_free(p, n_items);
        pitems_free(pa, n_items);
        return ql_fail(QL_ERR_ARG, "budget %lld is below the cheapest assignment (%lld)", (long long)budget,
                       (long long)base);
    }
    if (max_cells <= 0) max_cells = DEFAULT_MAX_CELLS;
    int *kch = ql_malloc((size_t)(n_items ? n_items : 1) * sizeof *kch);
    double bound = -INFINITY;
    bool exact = false;
    if (method != QL_MCKP_DP) {
        lagrange(p, n_items, budget, kch, &bound);
        for (int i = 0; i < n_items; i++) choice[i] = p[i].orig[kch[i]];
        repair(items, n_items, budget, choice);
    }
    if (method != QL_MCKP_LAGRANGE) {
        /* DP: exact when the table fits at full resolution; AUTO also runs a coarse one otherwise */
        ql_mckp_dp *dp = NULL;
        s = dp_build(pa, n_items, budget, max_cells, &dp);
        if (s) {
            free(kch);
            pitems_free(p, n_items);
            pitems_free(pa, n_items);
            return s;
        }
        int *dch = ql_malloc((size_t)(n_items ? n_items : 1) * sizeof *dch);
        if (dp->exact) bound = dp_query_window(dp, 0, budget, NULL); /* the optimum without the window */
        dp_query_window(dp, fill_to, budget, dch);
        if (!dp->exact) repair(items, n_items, budget, dch);
        int64_t c1, c2;
        double e1, e2;
        totals(items, n_items, dch, &c1, &e1);
        if (method == QL_MCKP_DP || dp->exact) {
            memcpy(choice, dch, (size_t)n_items * sizeof *choice);
        } else {
            totals(items, n_items, choice, &c2, &e2);
            if (e1 < e2) memcpy(choice, dch, (size_t)n_items * sizeof *choice);
        }
        exact = dp->exact;
        dp->p = NULL; /* owned here */
        ql_mckp_dp_free(dp);
        free(dch);
    }
    if (fill_to > budget) fill_to = budget;
    fill(items, n_items, budget, fill_to, choice);
    fill_pairs(items, n_items, budget, fill_to, choice);
    totals(items, n_items, choice, &res->cost, &res->err);
    res->exact = exact;
    res->lower_bound = fmin(bound, res->err);
    if (!exact && method == QL_MCKP_DP) res->lower_bound = -INFINITY;
    free(kch);
    pitems_free(p, n_items);
    pitems_free(pa, n_items);
    return QL_OK;
}

/* ---------------- rules ---------------- */

typedef enum { OP_GE, OP_GT, OP_LE, OP_LT, OP_PIN, OP_NOT } rule_op;

typedef struct {
    char pattern[128];
    rule_op op;
    const ql_format *f;
    char method[64];
    char spec[160]; /* canonical FORMAT[+METHOD] */
    const char *text;
    int hits;
} rule;

static ql_status parse_rule(const char *text, rule *r) {
    memset(r, 0, sizeof *r);
    r->text = text;
    const char *op = strpbrk(text, "<>!=");
    if (!op) return ql_fail(QL_ERR_ARG, "rule '%s': expected PATTERN>=FORMAT, <=, >, <, = or !=", text);
    size_t pl = (size_t)(op - text);
    while (pl && text[pl - 1] == ' ') pl--;
    const char *pat = text;
    while (*pat == ' ' && pat < op) pat++, pl--;
    if (!pl || pl >= sizeof r->pattern) return ql_fail(QL_ERR_ARG, "rule '%s': bad tensor pattern", text);
    memcpy(r->pattern, pat, pl);
    const char *rest;
    if (!strncmp(op, ">=", 2)) r->op = OP_GE, rest = op + 2;
    else if (!strncmp(op, "<=", 2)) r->op = OP_LE, rest = op + 2;
    else if (!strncmp(op, "!=", 2)) r->op = OP_NOT, rest = op + 2;
    else if (!strncmp(op, "==", 2)) r->op = OP_PIN, rest = op + 2;
    else if (*op == '>') r->op = OP_GT, rest = op + 1;
    else if (*op == '<') r->op = OP_LT, rest = op + 1;
    else if (*op == '=') r->op = OP_PIN, rest = op + 1;
    else return ql_fail(QL_ERR_ARG, "rule '%s': unknown operator", text);
    if (ql_parse_format_method(rest, &r->f, r->method, sizeof r->method))
        return ql_fail(QL_ERR_ARG, "rule '%s': %s", text, ql_last_error());
    if (!ql_method_by_name(r->method))
        return ql_fail(QL_ERR_ARG, "rule '%s': unknown method '%s'", text, r->method);
    if (strcmp(r->method, "rtn") == 0) snprintf(r->spec, sizeof r->spec, "%s", r->f->name);
    else snprintf(r->spec, sizeof r->spec, "%s+%s", r->f->name, ql_method_by_name(r->method)->name);
    return QL_OK;
}

static bool rule_matches(const rule *r, const char *name) {
    char base[256], role[256];
    snprintf(base, sizeof base, "%s", name);
    size_t l = strlen(base);
    if (l > 7 && strcmp(base + l - 7, ".weight") == 0) base[l - 7] = 0;
    if (strchr(r->pattern, '.'))
        return fnmatch(r->pattern, name, 0) == 0 || fnmatch(r->pattern, base, 0) == 0;
    /* a bare role: strip "blk.N." */
    const char *q = base;
    if (!strncmp(q, "blk.", 4)) {
        const char *d = strchr(q + 4, '.');
        if (d) q = d + 1;
    }
    snprintf(role, sizeof role, "%s", q);
    return fnmatch(r->pattern, role, 0) == 0;
}

/* bits FORMAT takes on a [nrows, ncols] tensor (nominal bpw when its blocks do not fit) */
static double ref_bits(const ql_format *f, int64_t ncols, int64_t nrows) {
    int64_t b = ql_format_fits(f, ncols) ? ql_format_tensor_bytes(f, ncols, nrows) : -1;
    return b >= 0 ? 8.0 * (double)b : f->bpw * (double)ncols * (double)nrows;
}

static bool rule_allows(const rule *r, const char *spec, int64_t bytes, double rbits) {
    double bits = 8.0 * (double)bytes;
    switch (r->op) {
    case OP_GE:
        return bits >= rbits;
    case OP_GT:
        return bits > rbits;
    case OP_LE:
        return bits <= rbits;
    case OP_LT:
        return bits < rbits;
    case OP_NOT:
        return strcmp(spec, r->spec) != 0;
    case OP_PIN:
        return strcmp(spec, r->spec) == 0;
    }
    return true;
}

/* ---------------- allocation ---------------- */

typedef struct {
    int n;
    int64_t *cost;
    double *err;
    int *cand; /* sense candidate, -1: synthetic (pin to an unmeasured format, or kept) */
    char **spec; /* borrowed from the sense file or the rules; NULL: kept */
    const char *note;
    char notebuf[256];
} alloc_item;

static void alloc_items_free(alloc_item *a, int n) {
    if (!a) return;
    for (int i = 0; i < n; i++) {
        free(a[i].cost);
        free(a[i].err);
        free(a[i].cand);
        free(a[i].spec);
    }
    free(a);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Candidate choices per tensor after the rules. rules_buf holds the parsed rules (for the pins' specs). */
static ql_status build_items(const ql_sense *s, const ql_alloc_opts *o, int metric, rule *rules,
                             alloc_item **out) {
    *out = NULL;
    /* a tensor without a measurement at the metric (e.g. no statistics for the output level) falls back to
     * its weight error scaled by the median metric/weight ratio of the cells that have both */
    double ratio = 1;
    if (metric != QL_SENSE_WEIGHT) {
        double *r = ql_malloc(((size_t)s->n_tensors * (size_t)s->n_cand + 1) * sizeof(double));
        size_t nr = 0;
        for (int t = 0; t < s->n_tensors; t++)
            for (int c = 0; c < s->n_cand; c++) {
                double e = ql_sense_error(s, t, c, metric), w = ql_sense_error(s, t, c, QL_SENSE_WEIGHT);
                if (isfinite(e) && isfinite(w) && w > 0 && e > 0) r[nr++] = e / w;
            }
        if (nr) {
            qsort(r, nr, sizeof *r, cmp_double);
            ratio = r[nr / 2];
        }
        free(r);
    }
    alloc_item *a = ql_calloc((size_t)(s->n_tensors ? s->n_tensors : 1), sizeof *a);
    ql_status st = QL_OK;
    for (int t = 0; t < s->n_tensors && !st; t++) {
        const ql_sense_tensor *te = &s->tensors[t];
        alloc_item *it = &a[t];
        int cap = s->n_cand + 1;
        it->cost = ql_malloc((size_t)cap * sizeof(int64_t));
        it->err = ql_malloc((size_t)cap * sizeof(double));
        it->cand = ql_malloc((size_t)cap * sizeof(int));
        it->spec = ql_calloc((size_t)cap, sizeof(char *));
        bool fallback = false;
        for (int c = 0; c < s->n_cand; c++) {
            const ql_sense_cell *e = ql_sense_cell_at(s, t, c);
            if (e->bytes < 0) continue;
            double v = ql_sense_error(s, t, c, metric);
            if (!isfinite(v)) {
                double w = ql_sense_error(s, t, c, QL_SENSE_WEIGHT);
                if (!isfinite(w)) continue;
                v = w * ratio;
                fallback = true;
            }
            it->cost[it->n] = e->bytes;
            it->err[it->n] = v;
            it->cand[it->n] = c;
            it->spec[it->n] = s->cand[c];
            it->n++;
        }
        if (fallback) {
            snprintf(it->notebuf, sizeof it->notebuf, "no %s measurement: weight error scaled",
                     ql_sense_level_name(metric));
            it->note = it->notebuf;
        }
        bool had = it->n > 0;
        for (int k = 0; k < o->n_rules; k++) {
            rule *r = &rules[k];
            if (!rule_matches(r, te->name)) continue;
            r->hits++;
            if (r->op == OP_PIN) {
                int keep = -1;
                for (int j = 0; j < it->n; j++)
                    if (strcmp(it->spec[j], r->spec) == 0) keep = j;
                if (keep >= 0) {
                    it->cost[0] = it->cost[keep];
                    it->err[0] = it->err[keep];
                    it->cand[0] = it->cand[keep];
                    it->spec[0] = it->spec[keep];
                    it->n = 1;
                } else {
                    int64_t b = ql_format_fits(r->f, te->ncols)
                                    ? ql_format_tensor_bytes(r->f, te->ncols, te->nrows)
                                    : -1;
                    if (b < 0) {
                        st = ql_fail(QL_ERR_ARG, "rule '%s': %s does not fit %s (rows of %lld)", r->text,
                                     r->f->name, te->name, (long long)te->ncols);
                        break;
                    }
                    it->cost[0] = b;
                    it->err[0] = 0;
                    it->cand[0] = -1;
                    it->spec[0] = r->spec;
                    it->n = 1;
                }
                snprintf(it->notebuf, sizeof it->notebuf, "pinned by '%s'%s", r->text,
                         keep >= 0 ? "" : " (not measured)");
                it->note = it->notebuf;
                continue;
            }
            double rb = ref_bits(r->f, te->ncols, te->nrows);
            int m = 0;
            for (int j = 0; j < it->n; j++)
                if (rule_allows(r, it->spec[j], it->cost[j], rb)) {
                    it->cost[m] = it->cost[j];
                    it->err[m] = it->err[j];
                    it->cand[m] = it->cand[j];
                    it->spec[m] = it->spec[j];
                    m++;
                }
            it->n = m;
            if (!m && had) {
                st = ql_fail(QL_ERR_ARG, "rule '%s' leaves no candidate for %s", r->text, te->name);
                break;
            }
            snprintf(it->notebuf, sizeof it->notebuf, "rule '%s'", r->text);
            it->note = it->notebuf;
        }
        if (st) break;
        if (it->n == 0) {
            /* nothing fits (and nothing was pinned): the tensor keeps its type */
            it->cost[0] = te->orig_bytes;
            it->err[0] = 0;
            it->cand[0] = -1;
            it->spec[0] = NULL;
            it->n = 1;
            snprintf(it->notebuf, sizeof it->notebuf, "%s: kept as loaded",
                     had ? "no usable measurement" : "no candidate fits its rows");
            it->note = it->notebuf;
        }
    }
    for (int k = 0; k < o->n_rules && !st; k++)
        if (!rules[k].hits) st = ql_fail(QL_ERR_ARG, "rule '%s' matches no quantized tensor", rules[k].text);
    if (st) {
        alloc_items_free(a, s->n_tensors);
        return st;
    }
    *out = a;
    return QL_OK;
}

static int64_t quantized_params(const ql_sense *s) {
    int64_t n = 0;
    for (int t = 0; t < s->n_tensors; t++) n += s->tensors[t].ncols * s->tensors[t].nrows;
    return n;
}

static int64_t orig_quantized_bytes(const ql_sense *s) {
    int64_t n = 0;
    for (int t = 0; t < s->n_tensors; t++) n += s->tensors[t].orig_bytes;
    return n;
}

static ql_status choose_metric(const ql_sense *s, int want, int *metric) {
    int have = ql_sense_complete_level(s);
    if (have < 0)
        return ql_fail(QL_ERR_ARG,
                       "the sensitivity file is incomplete (run the same qlab sense command to finish it)");
    if (want > have)
        return ql_fail(QL_ERR_ARG, "the file is measured at the %s level; %s was asked for",
                       ql_sense_level_name(have), ql_sense_level_name(want));
    *metric = want >= 0 ? want : have;
    return QL_OK;
}

static ql_status prepare(const ql_sense *s, const ql_alloc_opts *o, int *metric, rule **rules,
                         alloc_item **items, ql_mckp_item **mk) {
    *rules = NULL;
    *items = NULL;
    *mk = NULL;
    ql_status st = choose_metric(s, o->metric, metric);
    if (st) return st;
    if (s->n_tensors == 0) return ql_fail(QL_ERR_ARG, "the model has no quantizable tensor");
    *rules = ql_calloc((size_t)(o->n_rules + 1), sizeof **rules);
    for (int k = 0; k < o->n_rules && !st; k++) st = parse_rule(o->rules[k], &(*rules)[k]);
    if (!st) st = build_items(s, o, *metric, *rules, items);
    if (st) {
        free(*rules);
        *rules = NULL;
        return st;
    }
    *mk = ql_calloc((size_t)s->n_tensors, sizeof **mk);
    for (int t = 0; t < s->n_tensors; t++) {
        (*mk)[t].n = (*items)[t].n;
        (*mk)[t].cost = (*items)[t].cost;
        (*mk)[t].err = (*items)[t].err;
    }
    return QL_OK;
}

void ql_alloc_result_free(ql_alloc_result *r) {
    if (!r || !r->c) return;
    for (int i = 0; i < r->n; i++) {
        free(r->c[i].spec);
        free(r->c[i].note);
    }
    free(r->c);
    r->c = NULL;
    free(r->uniform);
    r->uniform = NULL;
    free(r->kv_choice);
    r->kv_choice = NULL;
}

/* The plan "candidate c everywhere" in the items' terms: c on every tensor that has it; elsewhere (its rows
 * do not fit c, or a rule took it away) the cheapest choice with at least the bits c would take there, else
 * the dearest — the fallback a one-format plan takes. Pinned and kept tensors keep their one choice. False
 * when no tensor has c (nothing uniform about it). */
static bool uniform_choice(const ql_sense *s, const alloc_item *items, int c, int *ch) {
    const ql_format *f;
    char method[64];
    if (ql_parse_format_method(s->cand[c], &f, method, sizeof method)) return false;
    int have = 0;
    for (int t = 0; t < s->n_tensors; t++) {
        const alloc_item *it = &items[t];
        int j = -1;
        for (int k = 0; k < it->n && j < 0; k++)
            if (it->cand[k] == c) j = k;
        if (j >= 0) {
            have++;
            ch[t] = j;
            continue;
        }
        const double want = ref_bits(f, s->tensors[t].ncols, s->tensors[t].nrows);
        int up = -1, dear = 0;
        for (int k = 0; k < it->n; k++) {
            if (8.0 * (double)it->cost[k] >= want && (up < 0 || it->cost[k] < it->cost[up])) up = k;
            if (it->cost[k] > it->cost[dear]) dear = k;
        }
        ch[t] = up >= 0 ? up : dear;
    }
    return have > 0;
}

/* The guard: an automatic plan must not be predicted worse than one candidate everywhere within the same
 * budget. The exact DP already covers those plans inside its fill window; this catches the ones below the
 * window, the Lagrangian answers, and any rounding of the search. Returns the winning candidate or -1; ch
 * then holds its assignment. */
static int uniform_guard(const ql_sense *s, const alloc_item *items, const ql_mckp_item *mk, int n_items,
                         int64_t budget, ql_mckp_result *mr, int *ch) {
    int *u = ql_malloc((size_t)n_items * sizeof *u);
    /* items past the tensors (the KV cache's layers) keep the search's choices */
    for (int i = s->n_tensors; i < n_items; i++) u[i] = ch[i];
    int best = -1;
    for (int c = 0; c < s->n_cand; c++) {
        if (!uniform_choice(s, items, c, u)) continue;
        int64_t cost;
        double err;
        totals(mk, n_items, u, &cost, &err);
        if (cost > budget || !(err < mr->err - 1e-12 * fabs(mr->err))) continue;
        best = c;
        mr->cost = cost;
        mr->err = err;
        mr->exact = false;
        memcpy(ch, u, (size_t)n_items * sizeof *u);
    }
    free(u);
    return best;
}

/* The smallest and largest total cost any choice of candidates can have. */
static void cost_range(const ql_mckp_item *mk, int n, int64_t *cheapest, int64_t *dearest) {
    *cheapest = *dearest = 0;
    for (int t = 0; t < n; t++) {
        int64_t lo = INT64_MAX, hi = 0;
        for (int j = 0; j < mk[t].n; j++) {
            lo = QL_MIN(lo, mk[t].cost[j]);
            hi = QL_MAX(hi, mk[t].cost[j]);
        }
        *cheapest += lo;
        *dearest += hi;
    }
}

/* The KV cache's items: one per layer, choices f32 (no error) and every measured KV scheme of the sense file,
 * costed in bytes at (kv_ctx, kv_batch). Appended to the tensors' items in mk (reallocated to n_items). */
typedef struct {
    int n;        /* layers; 0 without kv_ctx */
    int *n_ch;    /* [n] */
    int64_t *cost; /* [n * (n_kv + 1)] */
    double *err;
    int *scheme;  /* sense KV index, -1: f32 */
} kv_items;

static void kv_items_free(kv_items *kv) {
    free(kv->n_ch), free(kv->cost), free(kv->err), free(kv->scheme);
    memset(kv, 0, sizeof *kv);
}

static ql_status kv_items_add(const ql_sense *s, const ql_alloc_opts *o, int metric, kv_items *kv, ql_mckp_item **mk,
                              int *n_items) {
    memset(kv, 0, sizeof *kv);
    *n_items = s->n_tensors;
    if (o->kv_ctx <= 0) return QL_OK;
    if (!s->n_kv)
        return ql_fail(QL_ERR_ARG, "%s has no KV-cache schemes: measure them with qlab sense --kv-candidates", s->model);
    if (metric != QL_SENSE_KLD)
        return ql_fail(QL_ERR_ARG, "KV schemes are measured as KLD: the weights must be too (--metric kld)");
    const int w = s->n_kv + 1, batch = o->kv_batch > 0 ? o->kv_batch : 1;
    kv->n = s->kv_layers;
    kv->n_ch = ql_calloc((size_t)kv->n, sizeof *kv->n_ch);
    kv->cost = ql_calloc((size_t)kv->n * (size_t)w, sizeof *kv->cost);
    kv->err = ql_calloc((size_t)kv->n * (size_t)w, sizeof *kv->err);
    kv->scheme = ql_calloc((size_t)kv->n * (size_t)w, sizeof *kv->scheme);
    ql_kv_side f32 = {0};
    const int64_t f32_bytes = 2 * ql_kv_side_bytes(&f32, s->kv_heads, s->kv_head_dim, o->kv_ctx) * batch;
    *mk = ql_realloc(*mk, (size_t)(s->n_tensors + kv->n) * sizeof **mk);
    for (int l = 0; l < kv->n; l++) {
        int64_t *c = &kv->cost[(size_t)l * w];
        double *e = &kv->err[(size_t)l * w];
        int *sc = &kv->scheme[(size_t)l * w], n = 0;
        c[n] = f32_bytes, e[n] = 0, sc[n++] = -1;
        for (int k = 0; k < s->n_kv; k++) {
            const ql_sense_act_cell *cell = ql_sense_kv_cell_at(s, l, k);
            const int64_t b = ql_sense_kv_layer_bytes(s, k, o->kv_ctx, batch);
            if (cell->level < QL_SENSE_KLD || !isfinite(cell->kld) || b < 0) continue;
            c[n] = b, e[n] = fmax(cell->kld, 0), sc[n++] = k; /* a KLD below 0 is measurement noise */
        }
        kv->n_ch[l] = n;
        (*mk)[s->n_tensors + l] = (ql_mckp_item){n, c, e};
    }
    *n_items = s->n_tensors + kv->n;
    return QL_OK;
}

ql_status ql_allocate(const ql_sense *s, const ql_alloc_opts *o, ql_alloc_result *r) {
    memset(r, 0, sizeof *r);
    const double tol = o->tolerance > 0 ? o->tolerance : 0.01;
    const int64_t nq = quantized_params(s), nall = nq + s->other_params;
    int64_t budget, fill_to;
    if (o->target_bytes > 0) {
        /* the output GGUF = the input's metadata and unquantized tensors + the planned tensors + padding */
        if (!s->file_bytes)
            return ql_fail(QL_ERR_ARG, "%s: model file size unknown; use --target-bpw", s->model);
        int64_t fixed = s->file_bytes - orig_quantized_bytes(s) + 32 * s->n_tensors_file;
        budget = o->target_bytes - fixed;
        /* a file size is a target to hit; memory with a KV cache is a ceiling: filling it would buy float caches
         * and weight bits that cost error elsewhere just to spend the bytes */
        fill_to = o->kv_ctx > 0 ? 0 : budget - (int64_t)(tol * (double)nq / 8);
    } else if (o->target_bpw > 0) {
        if (o->whole_file) {
            budget = (int64_t)floor(o->target_bpw * (double)nall / 8) - s->other_bytes;
            fill_to = (int64_t)ceil((o->target_bpw - tol) * (double)nall / 8) - s->other_bytes;
        } else {
            budget = (int64_t)floor(o->target_bpw * (double)nq / 8);
            fill_to = (int64_t)ceil((o->target_bpw - tol) * (double)nq / 8);
        }
    } else return ql_fail(QL_ERR_ARG, "no target (give a bits-per-weight or a size)");
    int metric;
    rule *rules;
    alloc_item *items;
    ql_mckp_item *mk;
    kv_items kv;
    int n_items = s->n_tensors;
    ql_status st = prepare(s, o, &metric, &rules, &items, &mk);
    if (st) return st;
    if (o->kv_ctx > 0 && !(o->target_bytes > 0)) {
        st = ql_fail(QL_ERR_ARG, "with a KV cache in the budget, the target is memory (weights file + cache), not bpw");
        memset(&kv, 0, sizeof kv);
        goto out;
    }
    if ((st = kv_items_add(s, o, metric, &kv, &mk, &n_items))) goto out;
    int64_t cheapest, dearest;
    cost_range(mk, n_items, &cheapest, &dearest);
    if (budget < cheapest) {
        double bmin = o->whole_file ? 8.0 * (double)(cheapest + s->other_bytes) / (double)nall
                                    : 8.0 * (double)cheapest / (double)nq;
        st = ql_fail(
            QL_ERR_ARG,
            "target below the smallest assignment the candidates and rules allow (%.4f bpw%s, %lld bytes)",
            bmin, o->whole_file ? " over the file" : "", (long long)cheapest);
        goto out;
    }
    int *ch = ql_malloc((size_t)n_items * sizeof *ch);
    ql_mckp_result mr;
    st = ql_mckp_solve(mk, n_items, QL_MIN(budget, dearest), fill_to, (ql_mckp_method)o->method,
                       o->max_cells, ch, &mr);
    if (st) {
        free(ch);
        goto out;
    }
    const int uni = uniform_guard(s, items, mk, n_items, budget, &mr, ch);
    r->uniform = uni >= 0 ? ql_strdup(s->cand[uni]) : NULL;
    r->n = s->n_tensors;
    r->c = ql_calloc((size_t)r->n, sizeof *r->c);
    r->metric = metric;
    for (int t = 0; t < r->n; t++) {
        const alloc_item *it = &items[t];
        int j = ch[t];
        r->c[t].spec = it->spec[j] ? ql_strdup(it->spec[j]) : NULL;
        r->c[t].cand = it->cand[j];
        r->c[t].bytes = it->cost[j];
        r->c[t].err = it->err[j];
        r->c[t].note = it->note ? ql_strdup(it->note) : NULL;
    }
    if (kv.n) {
        r->kv_n = kv.n;
        r->kv_choice = ql_malloc((size_t)kv.n * sizeof *r->kv_choice);
        r->kv_ctx = o->kv_ctx;
        r->kv_batch = o->kv_batch > 0 ? o->kv_batch : 1;
        for (int l = 0; l < kv.n; l++) {
            const size_t at = (size_t)l * (size_t)(s->n_kv + 1) + (size_t)ch[s->n_tensors + l];
            r->kv_choice[l] = kv.scheme[at];
            r->kv_bytes += kv.cost[at];
            r->kv_err += kv.err[at];
        }
        mr.cost -= r->kv_bytes; /* bytes, bpw and file size are the weights' */
    }
    free(ch);
    r->bytes = mr.cost;
    r->params = nq;
    r->bpw = 8.0 * (double)mr.cost / (double)nq;
    r->bpw_file = 8.0 * (double)(mr.cost + s->other_bytes) / (double)nall;
    r->file_bytes = s->file_bytes ? s->file_bytes - orig_quantized_bytes(s) + mr.cost : 0;
    r->err = mr.err;
    r->lower_bound = mr.lower_bound;
    r->exact = mr.exact;
    r->budget_bytes = budget;
    if (o->target_bytes > 0) r->target_hit = mr.cost + r->kv_bytes <= budget && mr.cost + r->kv_bytes >= fill_to;
    else r->target_hit = fabs((o->whole_file ? r->bpw_file : r->bpw) - o->target_bpw) <= tol;
out:
    free(rules);
    free(mk);
    kv_items_free(&kv);
    alloc_items_free(items, s->n_tensors);
    return st;
}

ql_status ql_alloc_plan(const ql_sense *s, const ql_alloc_result *r, const char *source, ql_plan **out) {
    *out = NULL;
    if (r->n != s->n_tensors) return ql_fail(QL_ERR_ARG, "allocation does not match the sensitivity file");
    ql_plan *p = ql_plan_new();
    for (int t = 0; t < r->n; t++) {
        if (!r->c[t].spec) continue; /* kept as loaded: not listed */
        const ql_format *f;
        char method[64];
        if (ql_parse_format_method(r->c[t].spec, &f, method, sizeof method)) {
            ql_plan_free(p);
            return QL_ERR_ARG;
        }
        /* notes in a plan mean fallbacks to qlab quant; the allocation's reasons stay in its report */
        ql_plan_set(p, s->tensors[t].name, f, method, NULL);
    }
    if (r->kv_n) { /* the most common choice for every layer, the others as layers' own */
        int best = -1, best_n = 0;
        for (int k = -1; k < s->n_kv; k++) {
            int n = 0;
            for (int l = 0; l < r->kv_n; l++) n += r->kv_choice[l] == k;
            if (n > best_n) best = k, best_n = n;
        }
        ql_kv_scheme sc = ql_kv_scheme_f32();
        if (best >= 0 && !ql_kv_scheme_parse(s->kv[best], &sc)) {
            ql_plan_free(p);
            return QL_ERR_ARG;
        }
        p->kv.set = true;
        p->kv.scheme = sc;
        p->kv.ctx = r->kv_ctx;
        p->kv.batch = r->kv_batch;
        for (int l = 0; l < r->kv_n; l++) {
            if (r->kv_choice[l] == best) continue;
            ql_kv_scheme ls = ql_kv_scheme_f32();
            if (r->kv_choice[l] >= 0 && !ql_kv_scheme_parse(s->kv[r->kv_choice[l]], &ls)) {
                ql_plan_free(p);
                return QL_ERR_ARG;
            }
            ql_kv_settings_set_layer(&p->kv, l, &ls);
        }
    }
    p->source = ql_strdup(source ? source : "qlab plan");
    *out = p;
    return QL_OK;
}

ql_status ql_alloc_frontier(const ql_sense *s, const ql_alloc_opts *o, int n_points, ql_frontier_point **pts,
                            int *n_out) {
    *pts = NULL;
    *n_out = 0;
    if (n_points < 2) n_points = 2;
    int metric;
    rule *rules;
    alloc_item *items;
    ql_mckp_item *mk;
    kv_items kv;
    int n_items = s->n_tensors;
    ql_status st = prepare(s, o, &metric, &rules, &items, &mk);
    if (st) return st;
    if ((st = kv_items_add(s, o, metric, &kv, &mk, &n_items))) {
        free(rules);
        free(mk);
        alloc_items_free(items, s->n_tensors);
        return st;
    }
    const int64_t nq = quantized_params(s), nall = nq + s->other_params;
    int64_t cheapest, dearest;
    cost_range(mk, n_items, &cheapest, &dearest);
    ql_mckp_dp *dp = NULL;
    st = ql_mckp_dp_new(mk, n_items, dearest, o->max_cells, &dp);
    if (!st) {
        ql_frontier_point *p = ql_calloc((size_t)n_points, sizeof *p);
        int *ch = ql_malloc((size_t)n_items * sizeof *ch);
        int n = 0;
        for (int k = 0; k < n_points; k++) {
            int64_t budget = cheapest + (int64_t)((double)(dearest - cheapest) * k / (n_points - 1));
            double err = ql_mckp_dp_query(dp, budget, ch);
            if (!isfinite(err)) continue;
            int64_t cost = 0, kv_cost = 0;
            for (int t = 0; t < s->n_tensors; t++) cost += mk[t].cost[ch[t]];
            for (int t = s->n_tensors; t < n_items; t++) kv_cost += mk[t].cost[ch[t]];
            if (n && cost == p[n - 1].bytes && kv_cost == p[n - 1].kv_bytes) continue;
            p[n].bytes = cost;
            p[n].kv_bytes = kv_cost;
            p[n].err = err;
            p[n].bpw = 8.0 * (double)cost / (double)nq;
            p[n].bpw_file = 8.0 * (double)(cost + s->other_bytes) / (double)nall;
            n++;
        }
        free(ch);
        *pts = p;
        *n_out = n;
        ql_mckp_dp_free(dp);
    }
    free(rules);
    free(mk);
    kv_items_free(&kv);
    alloc_items_free(items, s->n_tensors);
    return st;
}

ql_status ql_alloc_check_target(const ql_sense *s, const ql_alloc_opts *o) {
    if (!(o->target_bpw > 0)) return QL_OK;
    int metric;
    rule *rules;
    alloc_item *items;
    ql_mckp_item *mk;
    ql_status st = prepare(s, o, &metric, &rules, &items, &mk);
    if (st) return st;
    const int64_t nq = quantized_params(s), nall = nq + s->other_params;
    int64_t cheapest, dearest;
    cost_range(mk, s->n_tensors, &cheapest, &dearest);
    free(rules);
    free(mk);
    alloc_items_free(items, s->n_tensors);
    double lo = o->whole_file ? 8.0 * (double)(cheapest + s->other_bytes) / (double)nall : 8.0 * (double)cheapest / (double)nq;
    double hi = o->whole_file ? 8.0 * (double)(dearest + s->other_bytes) / (double)nall : 8.0 * (double)dearest / (double)nq;
    double tol = o->tolerance > 0 ? o->tolerance : 0.01;
    if (o->target_bpw < lo - tol || o->target_bpw > hi + tol)
        return ql_fail(QL_ERR_ARG, "target %g bpw is outside what the candidates reach: %.3f to %.3f bpw%s", o->target_bpw,
                       lo, hi, o->whole_file ? " over the file" : "");
    return QL_OK;
}

ql_status ql_alloc_act(const ql_sense *s, const char *act, double max_kld, ql_plan *plan, double *kld, int *n_quant,
                       int *n_float) {
    *kld = 0;
    *n_quant = *n_float = 0;
    ql_act_mode mode;
    float thr;
    if (ql_act_spec_parse(act, &mode, &thr)) return QL_ERR_ARG;
    char spec[64];
    ql_act_spec_format(mode, thr, spec, sizeof spec);
    int a = -1;
    for (int k = 0; k < s->n_act && a < 0; k++)
        if (!strcmp(s->act[k], spec)) a = k;
    if (a < 0) {
        char have[256] = "";
        for (int k = 0; k < s->n_act; k++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", k ? ", " : "", s->act[k]);
        return ql_fail(QL_ERR_ARG, "activation scheme %s was not measured (%s; qlab sense --act-candidates %s)", spec,
                       s->n_act ? have : "the file has no activation schemes", spec);
    }
    for (int t = 0; t < s->n_tensors; t++) {
        const ql_sense_act_cell *e = ql_sense_act_cell_at(s, t, a);
        if (!isfinite(e->kld)) continue; /* not a linear's weight (embeddings), or not measured */
        if (max_kld > 0 && e->kld > max_kld) {
            (*n_float)++;
            if (plan) ql_plan_set_act(plan, s->tensors[t].name, QL_ACT_NONE, 0);
            continue;
        }
        *kld += e->kld;
        (*n_quant)++;
        if (plan) ql_plan_set_act(plan, s->tensors[t].name, mode, thr);
    }
    return QL_OK;
}
