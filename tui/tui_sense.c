/* tui_sense.c — sensitivity module <-> the Plan/Auto table (see tui_sense.h). */
#include "tui/tui_sense.h"
#include "sensitivity/allocate.h"
#include "kernels/ggml_types.h"
#include "sensitivity/sense.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

bool ql_tui_eval_text_usable(const ql_tui_app *a) {
    struct stat st;
    return a->preview.text[0] && stat(a->preview.text, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

int ql_tui_sense_level(const ql_tui_app *a) {
    if (a->sense_level >= 0) return a->sense_level;
    /* Without a calibration set, the evaluation text's tokens stand in at the KLD level: a plan solved on
     * weight error alone lost to one format everywhere at the same size (issue 9: stories260K, 4.50 bpw,
     * KLD 0.204 vs int4_g32's 0.115 at 4.64). Weight error only when there is no text at all. */
    if (!a->calib.set) return ql_tui_eval_text_usable(a) ? QL_SENSE_KLD : QL_SENSE_WEIGHT;
    /* a forward pass per (tensor, candidate) is cheap up to ~1B parameters; above, the output error */
    return a->model && ql_model_n_params(a->model) > 1000000000 ? QL_SENSE_OUTPUT : QL_SENSE_KLD;
}

const char *ql_tui_level_label(int level) {
    switch (level) {
    case QL_SENSE_WEIGHT: return "weight err";
    case QL_SENSE_OUTPUT: return "output err";
    case QL_SENSE_KLD: return "KLD";
    default: return "auto";
    }
}

void ql_tui_cand_spec(const ql_tui_app *a, int k, char *buf, size_t cap) {
    const char *m = a->plan.cand_method[k];
    if (!m[0] || !strcmp(m, "rtn")) snprintf(buf, cap, "%s", a->plan.cand[k]->name);
    else snprintf(buf, cap, "%s+%s", a->plan.cand[k]->name, m);
}

void ql_tui_sense_refresh(ql_tui_app *a) {
    ql_tui_sense_free(a->sense);
    a->sense = NULL;
    const ql_sense *q = a->qsense;
    if (!q || !a->model) return;
    /* the measured candidates become the plan's columns */
    const ql_format *f[QL_TUI_MAX_CAND];
    char meth[QL_TUI_MAX_CAND][16];
    int n = 0;
    for (int c = 0; c < q->n_cand && n < QL_TUI_MAX_CAND; c++) {
        char mbuf[64];
        if (ql_parse_format_method(q->cand[c], &f[n], mbuf, sizeof mbuf)) continue;
        ql_tui_copy(meth[n], sizeof meth[n], mbuf);
        n++;
    }
    ql_tui_set_candidates(a, f, meth, n);
    int level = a->sense_level >= 0 ? a->sense_level : ql_sense_complete_level(q);
    if (level < 0) level = q->level;
    ql_tui_sense *s = ql_calloc(1, sizeof *s);
    s->n_rows = a->plan.n_rows;
    s->n_cand = a->plan.n_cand;
    memcpy(s->cand, a->plan.cand, sizeof s->cand);
    memcpy(s->cand_method, a->plan.cand_method, sizeof s->cand_method);
    s->level = level;
    s->additive_kld = level == QL_SENSE_KLD;
    snprintf(s->metric, sizeof s->metric, "%s", ql_tui_level_label(level));
    s->err = ql_malloc(((size_t)s->n_rows * s->n_cand + 1) * sizeof(double));
    int col[QL_TUI_MAX_CAND];
    for (int k = 0; k < s->n_cand; k++) {
        char spec[96];
        ql_tui_cand_spec(a, k, spec, sizeof spec);
        col[k] = ql_sense_find_cand(q, spec);
    }
    for (int i = 0; i < s->n_rows; i++) {
        int t = ql_sense_find_tensor(q, a->model->gguf->tensors[a->plan.rows[i].tensor].name);
        for (int k = 0; k < s->n_cand; k++)
            s->err[(size_t)i * s->n_cand + k] = t >= 0 && col[k] >= 0 ? ql_sense_error(q, t, col[k], level) : NAN;
    }
    a->sense = s;
}

static char *dup_rule(const char *fmt, const char *a, const char *b) {
    char buf[256];
    snprintf(buf, sizeof buf, fmt, a, b);
    return ql_strdup(buf);
}

int ql_tui_rules(const ql_tui_app *a, char ***rules) {
    int cap = a->plan.n_rows + a->plan.n_cand + 4, n = 0;
    char **r = ql_calloc((size_t)cap, sizeof *r);
    const ql_gguf *g = a->model->gguf;
    for (int i = 0; i < a->plan.n_rows; i++) {
        const ql_tui_row *rw = &a->plan.rows[i];
        const ql_format *f = ql_tui_row_format(rw);
        if (!rw->pinned || !f) continue;
        char spec[64];
        if (strcmp(rw->method, "rtn")) snprintf(spec, sizeof spec, "%s+%s", f->name, rw->method);
        else snprintf(spec, sizeof spec, "%s", f->name);
        r[n++] = dup_rule("%s = %s", g->tensors[rw->tensor].name, spec);
    }
    if (a->autos.ggml_only)
        for (int k = 0; k < a->plan.n_cand; k++)
            if (!ql_type_is_ggml(a->plan.cand[k]->type)) {
                char spec[96];
                ql_tui_cand_spec(a, k, spec, sizeof spec);
                r[n++] = dup_rule("%s != %s", "*.*", spec);
            }
    if (a->autos.min_io) {
        r[n++] = dup_rule("%s >= %s", "token_embd.weight", a->autos.min_io->name);
        r[n++] = dup_rule("%s >= %s", "output.weight", a->autos.min_io->name);
    }
    *rules = r;
    return n;
}

void ql_tui_rules_free(char **rules, int n) {
    for (int i = 0; i < n; i++) free(rules[i]);
    free(rules);
}
