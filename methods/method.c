/* method.c — the method registry table and option parsing; one entry per methods/m_*.c file. */
#include "methods/method.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern const ql_method ql_method_rtn;
extern const ql_method ql_method_smoothquant;
extern const ql_method ql_method_awq;
extern const ql_method ql_method_gptq;

static const ql_method *const g_methods[] = {
    &ql_method_rtn,
    &ql_method_smoothquant,
    &ql_method_awq,
    &ql_method_gptq,
};

int ql_method_count(void) { return (int)QL_ARRAY_LEN(g_methods); }
const ql_method *ql_method_at(int i) { return i >= 0 && i < ql_method_count() ? g_methods[i] : NULL; }

const ql_method *ql_method_by_name(const char *name) {
    for (int i = 0; i < ql_method_count(); i++)
        if (strcasecmp(g_methods[i]->name, name) == 0) return g_methods[i];
    return NULL;
}

double ql_opt_double(const char *spec, const char *key, double def) {
    if (!spec) return def;
    size_t kl = strlen(key);
    for (const char *p = spec; *p;) {
        while (*p == ',' || *p == ' ') p++;
        if (!strncmp(p, key, kl) && p[kl] == '=') return strtod(p + kl + 1, NULL);
        p = strchr(p, ',');
        if (!p) break;
    }
    return def;
}

/* ---- RTN: round to nearest with the format's own quantizer (the baseline every method beats) ---- */
static ql_status rtn_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f, const ql_input_stats *st,
                              const ql_method_opts *o, void *dst) {
    (void)st;
    return ql_format_quantize(f, w, dst, nrows, ncols, o ? o->importance : NULL, o ? o->n_threads : 1);
}

const ql_method ql_method_rtn = {
    .name = "rtn",
    .summary = "round to nearest with the format's own quantizer (uses importance weights when given)",
    .help = "(no options)",
    .needs = QL_NEEDS_NOTHING,
    .quantize_tensor = rtn_quantize,
};
