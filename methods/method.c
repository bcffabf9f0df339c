/* method.c — the method registry table, the option-schema parser every method shares, and RTN. One
 * table line per methods/m_*.c file. */
#include "methods/method.h"

#include "core/backend.h" /* RTN on a device backend */

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern const ql_method ql_method_rtn;
extern const ql_method ql_method_smoothquant;
extern const ql_method ql_method_awq;
extern const ql_method ql_method_gptq;
extern const ql_method ql_method_quip;
extern const ql_method ql_method_aqlm;
extern const ql_method ql_method_exl2;

static const ql_method *const g_methods[] = {
    &ql_method_rtn,
    &ql_method_smoothquant,
    &ql_method_awq,
    &ql_method_gptq,
    &ql_method_quip,
    &ql_method_aqlm,
    &ql_method_exl2,
};

int ql_method_count(void) { return (int)QL_ARRAY_LEN(g_methods); }
const ql_method *ql_method_at(int i) { return i >= 0 && i < ql_method_count() ? g_methods[i] : NULL; }

const ql_method *ql_method_by_name(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < ql_method_count(); i++)
        if (strcasecmp(g_methods[i]->name, name) == 0) return g_methods[i];
    return NULL;
}

/* ---- nearest-name suggestions ---- */

/* Edit distance between a and b (insert, delete, substitute, swap two neighbours: "gtpq" is 1 from
 * "gptq"), case and '_' / '-' ignored (so "actorder" is 0 away from "act_order"). */
static int name_distance(const char *a, const char *b) {
    char x[64], y[64];
    int n = 0, m = 0;
    for (; *a && n < 63; a++)
        if (*a != '_' && *a != '-') x[n++] = (char)tolower((unsigned char)*a);
    for (; *b && m < 63; b++)
        if (*b != '_' && *b != '-') y[m++] = (char)tolower((unsigned char)*b);
    static _Thread_local int d[64][64];
    for (int i = 0; i <= n; i++) d[i][0] = i;
    for (int j = 0; j <= m; j++) d[0][j] = j;
    for (int i = 1; i <= n; i++)
        for (int j = 1; j <= m; j++) {
            int best = d[i - 1][j - 1] + (x[i - 1] != y[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

/* The closest of names[0..n) to s when it is close enough to be a slip (at most 2 edits, fewer than
 * half the name), else NULL. */
static const char *nearest(const char *s, const char *const *names, int n) {
    const char *best = NULL;
    int bd = 3;
    for (int i = 0; i < n; i++) {
        int d = name_distance(s, names[i]);
        if (d < bd && 2 * d < (int)strlen(names[i])) best = names[i], bd = d;
    }
    return best;
}

const ql_method *ql_method_find(const char *name) {
    const ql_method *m = ql_method_by_name(name);
    if (m) return m;
    const char *names[32] = {0};
    char list[256] = "";
    int n = 0;
    for (int i = 0; i < ql_method_count() && n < 32; i++) {
        names[n++] = g_methods[i]->name;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", g_methods[i]->name);
    }
    const char *near = name ? nearest(name, names, n) : NULL;
    char hint[96] = "";
    if (near) snprintf(hint, sizeof hint, " (did you mean '%s'?)", near);
    ql_fail(QL_ERR_ARG, "unknown method '%s'%s; methods: %s", name ? name : "", hint, list);
    return NULL;
}

bool ql_method_serves(const ql_method *m, const ql_format *f, char *why, size_t cap) {
    char dummy[8];
    if (!why || !cap) why = dummy, cap = sizeof dummy;
    why[0] = 0;
    if (!f->quantize_rows) {
        snprintf(why, cap, "qlab can decode %s but not encode it", f->name);
        return false;
    }
    return !m->serves || m->serves(f, why, cap);
}

/* ---- option schema ---- */

static int opt_index(const ql_method *m, const char *name) {
    for (int i = 0; i < m->n_opts; i++)
        if (strcasecmp(m->opts[i].name, name) == 0) return i;
    return -1;
}

void ql_opt_describe(const ql_opt_def *d, char *buf, size_t cap) {
    char val[160];
    switch (d->type) {
    case QL_OPT_INT:
        snprintf(val, sizeof val, "%s=%lld (int %lld..%lld)", d->name, (long long)d->def, (long long)d->min,
                 (long long)d->max);
        break;
    case QL_OPT_FLOAT: snprintf(val, sizeof val, "%s=%g (float %g..%g)", d->name, d->def, d->min, d->max); break;
    case QL_OPT_BOOL: snprintf(val, sizeof val, "%s=%d (0|1)", d->name, d->def != 0); break;
    case QL_OPT_ENUM: {
        int k = snprintf(val, sizeof val, "%s=%s (", d->name, d->choices[(int)d->def]);
        for (int i = 0; d->choices[i] && k < (int)sizeof val; i++)
            k += snprintf(val + k, sizeof val - (size_t)k, "%s%s", i ? "|" : "", d->choices[i]);
        if (k < (int)sizeof val) snprintf(val + k, sizeof val - (size_t)k, ")");
        break;
    }
    }
    snprintf(buf, cap, "%-34s %s", val, d->help);
}

void ql_method_caps_str(unsigned caps, char *buf, size_t cap) {
    static const char *const names[] = {"per-tensor", "layer transform", "runtime transform", "needs gradients",
                                        "learns codebooks"};
    buf[0] = 0;
    for (int i = 0; i < 5; i++)
        if (caps & (1u << i))
            snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", buf[0] ? ", " : "", names[i]);
}

/* "damp, act_order, block" */
static void list_names(const ql_method *const *ms, int n, char *buf, size_t cap) {
    buf[0] = 0;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < ms[k]->n_opts; i++) {
            bool dup = false; /* a name two methods share is listed once */
            for (int k2 = 0; k2 < k && !dup; k2++) dup = opt_index(ms[k2], ms[k]->opts[i].name) >= 0;
            if (!dup) snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", buf[0] ? ", " : "", ms[k]->opts[i].name);
        }
}

/* Checks and converts one value; false with ql_last_error set. */
static bool parse_value(const ql_method *m, const ql_opt_def *d, const char *s, double *out) {
    char *end = NULL;
    switch (d->type) {
    case QL_OPT_INT: {
        long long v = strtoll(s, &end, 10);
        if (!*s || *end) return ql_fail(QL_ERR_ARG, "%s: %s=%s is not an integer", m->name, d->name, s), false;
        if ((double)v < d->min || (double)v > d->max)
            return ql_fail(QL_ERR_ARG, "%s: %s=%s is outside %lld..%lld", m->name, d->name, s, (long long)d->min,
                           (long long)d->max),
                   false;
        *out = (double)v;
        return true;
    }
    case QL_OPT_FLOAT: {
        double v = strtod(s, &end);
        if (!*s || *end || !isfinite(v))
            return ql_fail(QL_ERR_ARG, "%s: %s=%s is not a number", m->name, d->name, s), false;
        if (v < d->min || v > d->max)
            return ql_fail(QL_ERR_ARG, "%s: %s=%s is outside [%g, %g]", m->name, d->name, s, d->min, d->max), false;
        *out = v;
        return true;
    }
    case QL_OPT_BOOL: {
        static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
        for (int i = 0; i < 4; i++) {
            if (!strcasecmp(s, yes[i])) return *out = 1, true;
            if (!strcasecmp(s, no[i])) return *out = 0, true;
        }
        return ql_fail(QL_ERR_ARG, "%s: %s=%s: %s takes 0 or 1", m->name, d->name, s, d->name), false;
    }
    case QL_OPT_ENUM: {
        char list[160] = "";
        for (int i = 0; d->choices[i]; i++) {
            if (!strcasecmp(s, d->choices[i])) return *out = i, true;
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", d->choices[i]);
        }
        return ql_fail(QL_ERR_ARG, "%s: %s=%s is not one of %s", m->name, d->name, s, list), false;
    }
    }
    return false;
}

/* Walks "k=v,k=v": calls item(ctx, key, value) for each; malformed items refused here. who: the name
 * errors start with. */
typedef ql_status (*item_fn)(void *ctx, const char *key, const char *value);

static ql_status each_item(const char *who, const char *spec, item_fn item, void *ctx) {
    if (!spec) return QL_OK;
    char *copy = ql_strdup(spec), *save = NULL;
    ql_status s = QL_OK;
    for (char *it = strtok_r(copy, ",", &save); it && !s; it = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*it)) it++;
        for (char *e = it + strlen(it); e > it && isspace((unsigned char)e[-1]);) *--e = 0;
        if (!*it) continue;
        char *eq = strchr(it, '=');
        if (!eq || eq == it) {
            s = ql_fail(QL_ERR_ARG, "%s: option '%s' is not KEY=VALUE", who, it);
            break;
        }
        char *k = it, *v = eq + 1;
        for (char *e = eq; e > k && isspace((unsigned char)e[-1]);) *--e = 0;
        *eq = 0;
        while (isspace((unsigned char)*v)) v++;
        s = item(ctx, k, v);
    }
    free(copy);
    return s;
}

/* "unknown option 'k' (did you mean 'x'?); gptq options: a, b" */
static ql_status unknown_key(const char *who, const ql_method *const *ms, int n, const char *key) {
    const char *names[64] = {0};
    int nn = 0;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < ms[k]->n_opts && nn < 64; i++) names[nn++] = ms[k]->opts[i].name;
    char list[512], hint[96] = "";
    list_names(ms, n, list, sizeof list);
    const char *near = nearest(key, names, nn);
    if (near) snprintf(hint, sizeof hint, " (did you mean '%s'?)", near);
    if (!nn) return ql_fail(QL_ERR_ARG, "%s: unknown option '%s'; %s takes no options", who, key, who);
    return ql_fail(QL_ERR_ARG, "%s: unknown option '%s'%s; valid options: %s", who, key, hint, list);
}

typedef struct {
    const ql_method *m;
    ql_opt_values *out;
    bool shared; /* skip keys m does not declare (ql_method_check_opts vouched for them) */
} parse_ctx;

static ql_status parse_item(void *ctx, const char *key, const char *value) {
    parse_ctx *c = ctx;
    int i = opt_index(c->m, key);
    if (i < 0) return c->shared ? QL_OK : unknown_key(c->m->name, &c->m, 1, key);
    if (c->out->given[i]) return ql_fail(QL_ERR_ARG, "%s: option '%s' given twice", c->m->name, c->m->opts[i].name);
    if (!parse_value(c->m, &c->m->opts[i], value, &c->out->v[i])) return QL_ERR_ARG;
    c->out->given[i] = true;
    return QL_OK;
}

static ql_status parse_opts(const ql_method *m, const char *spec, bool shared, ql_opt_values *out) {
    memset(out, 0, sizeof *out);
    out->method = m;
    if (m->n_opts > QL_METHOD_MAX_OPTS)
        return ql_fail(QL_ERR_ARG, "%s: %d options (at most %d)", m->name, m->n_opts, QL_METHOD_MAX_OPTS);
    for (int i = 0; i < m->n_opts; i++) out->v[i] = m->opts[i].def;
    parse_ctx c = {m, out, shared};
    return each_item(m->name, spec, parse_item, &c);
}

ql_status ql_method_parse_opts(const ql_method *m, const char *spec, ql_opt_values *out) {
    return parse_opts(m, spec, false, out);
}

ql_status ql_method_parse_shared_opts(const ql_method *m, const char *spec, ql_opt_values *out) {
    return parse_opts(m, spec, true, out);
}

typedef struct {
    const ql_method *const *ms;
    int n;
    char who[128];
} check_ctx;

static ql_status check_item(void *ctx, const char *key, const char *value) {
    check_ctx *c = ctx;
    (void)value;
    for (int k = 0; k < c->n; k++)
        if (opt_index(c->ms[k], key) >= 0) return QL_OK;
    return unknown_key(c->who, c->ms, c->n, key);
}

ql_status ql_method_check_opts(const ql_method *const *ms, int n, const char *spec) {
    check_ctx c = {ms, n, ""};
    for (int k = 0; k < n; k++)
        snprintf(c.who + strlen(c.who), sizeof c.who - strlen(c.who), "%s%s", k ? "/" : "", ms[k]->name);
    if (!n) snprintf(c.who, sizeof c.who, "method options");
    ql_status s = each_item(c.who, spec, check_item, &c);
    for (int k = 0; k < n && !s; k++) { /* values and repeats, against each method that declares the key */
        ql_opt_values v;
        s = parse_opts(ms[k], spec, true, &v);
    }
    return s;
}

static double opt_get(const ql_opt_values *v, const ql_method *m, const char *name) {
    int i = opt_index(m, name);
    if (i < 0) {
        fprintf(stderr, "qlab: internal error: method %s has no option '%s'\n", m->name, name);
        abort();
    }
    return v && v->method == m ? v->v[i] : m->opts[i].def;
}

double ql_opt_float(const ql_opt_values *v, const ql_method *m, const char *name) { return opt_get(v, m, name); }
int64_t ql_opt_int(const ql_opt_values *v, const ql_method *m, const char *name) {
    return (int64_t)opt_get(v, m, name);
}
bool ql_opt_bool(const ql_opt_values *v, const ql_method *m, const char *name) { return opt_get(v, m, name) != 0; }
int ql_opt_enum(const ql_opt_values *v, const ql_method *m, const char *name) { return (int)opt_get(v, m, name); }

/* ---- RTN: round to nearest with the format's own quantizer (the baseline every method beats) ---- */
static ql_status rtn_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f, const ql_input_stats *st,
                              const ql_method_opts *o, void *dst) {
    (void)st;
    const float *imp = o ? o->importance : NULL;
    /* on a device backend (--device cuda), its kernels when it has one for f: the bytes are the reference's, so
     * the choice changes no result, only where the work runs */
    const ql_backend_ops *be = ql_backend_default();
    if (be && be->quantize) {
        ql_status s = be->quantize(f, w, dst, nrows, ncols, imp);
        if (s != QL_ERR_UNSUPPORTED) return s;
    }
    return ql_format_quantize(f, w, dst, nrows, ncols, imp, o ? o->n_threads : 1);
}

const ql_method ql_method_rtn = {
    .name = "rtn",
    .summary = "round to nearest with the format's own quantizer (uses importance weights when given)",
    .explain =
        "Round to nearest: each weight goes to the closest code of its format, with the format's own "
        "scale choice (and importance weights when an imatrix is given). Fast, needs no data, and the "
        "baseline every cleverer method is measured against.",
    .caps = QL_CAP_PER_TENSOR,
    .needs = QL_NEEDS_NOTHING,
    .quantize_tensor = rtn_quantize,
};

/* ---- quantize-then-dequantize through a method ---- */

ql_status ql_method_roundtrip(const ql_method *me, const float *w, int64_t nrows, int64_t ncols, const ql_format *f,
                              const ql_input_stats *st, const ql_method_opts *o, float *out) {
    const int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    /* RTN on the host is the format's own round trip; on a device backend with a quantizer (sensitivity probes
     * under --device cuda) it goes through rtn_quantize below, whose device kernels write the same bytes */
    const ql_backend_ops *be = ql_backend_default();
    if (!me || (me->quantize_tensor == rtn_quantize && !(be && be->quantize)))
        return ql_format_roundtrip(f, w, out, nrows, ncols, o ? o->importance : NULL, nt);
    const int64_t bytes = ql_format_fits(f, ncols) ? ql_format_tensor_bytes(f, ncols, nrows) : -1;
    char why[256];
    if (bytes < 0 && f->shape_ok && !f->shape_ok(ncols, nrows, why, sizeof why))
        return ql_fail(QL_ERR_ARG, "format %s cannot store a %lld x %lld tensor: %s", f->name, (long long)nrows,
                       (long long)ncols, why);
    if (bytes < 0)
        return ql_fail(QL_ERR_ARG, "format %s cannot store rows of %lld (blocks of %d)", f->name, (long long)ncols,
                       f->block);
    void *codes = malloc((size_t)bytes + 1);
    if (!codes) return ql_fail(QL_ERR_NOMEM, "out of memory for %lld bytes of %s codes", (long long)bytes, f->name);
    if (out != w) memcpy(out, w, (size_t)(nrows * ncols) * sizeof(float)); /* methods use their input as scratch */
    ql_status s = me->quantize_tensor(out, nrows, ncols, f, st, o, codes);
    if (!s) s = ql_format_dequantize(f, codes, out, nrows, ncols, nt);
    free(codes);
    return s;
}
