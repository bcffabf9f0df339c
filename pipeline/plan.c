/* plan.c — plan entries, INI save/load (inih), and the format+method spec parser. */
#include "pipeline/plan.h"
#include "base/atomic_file.h"
#include "formats/format.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

ql_plan *ql_plan_new(void) {
    ql_plan *p = ql_calloc(1, sizeof *p);
    p->file_type = -1;
    ql_kv_settings_init(&p->kv);
    return p;
}

void ql_plan_free(ql_plan *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        free(p->e[i].tensor);
        free(p->e[i].method);
        free(p->e[i].note);
    }
    free(p->e);
    for (int i = 0; i < p->n_act; i++) free(p->act[i].tensor);
    free(p->act);
    ql_kv_settings_free(&p->kv);
    free(p->method_opts);
    free(p->source);
    free(p);
}

const ql_plan_entry *ql_plan_find(const ql_plan *p, const char *tensor) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].tensor, tensor) == 0) return &p->e[i];
    return NULL;
}

void ql_plan_set(ql_plan *p, const char *tensor, const ql_format *f, const char *method, const char *note) {
    ql_plan_entry *e = (ql_plan_entry *)ql_plan_find(p, tensor);
    if (!e) {
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 64;
            p->e = ql_realloc(p->e, (size_t)p->cap * sizeof *p->e);
        }
        e = &p->e[p->n++];
        memset(e, 0, sizeof *e);
        e->tensor = ql_strdup(tensor);
    }
    free(e->method);
    free(e->note);
    e->format = f;
    e->method = ql_strdup(method && *method ? method : "rtn");
    e->note = note ? ql_strdup(note) : NULL;
}

void ql_plan_set_act(ql_plan *p, const char *tensor, ql_act_mode mode, float threshold) {
    ql_plan_act *a = NULL;
    for (int i = 0; i < p->n_act && !a; i++)
        if (!strcmp(p->act[i].tensor, tensor)) a = &p->act[i];
    if (!a) {
        if (p->n_act == p->cap_act) {
            p->cap_act = p->cap_act ? 2 * p->cap_act : 16;
            p->act = ql_realloc(p->act, (size_t)p->cap_act * sizeof *p->act);
        }
        a = &p->act[p->n_act++];
        a->tensor = ql_strdup(tensor);
    }
    a->mode = mode;
    a->threshold = threshold;
}

const ql_plan_act *ql_plan_find_act(const ql_plan *p, const char *tensor, bool block_linear) {
    const ql_plan_act *def = NULL;
    for (int i = 0; i < p->n_act; i++) {
        if (!strcmp(p->act[i].tensor, tensor)) return &p->act[i];
        if (!strcmp(p->act[i].tensor, QL_PLAN_ACT_DEFAULT)) def = &p->act[i];
    }
    return block_linear ? def : NULL;
}

bool ql_plan_act_needs_stats(const ql_plan *p) {
    for (int i = 0; i < p->n_act; i++)
        if (ql_act_mode_is_static(p->act[i].mode)) return true;
    return false;
}

bool ql_tensor_is_quantizable(const char *name, int n_dims, const int64_t *ne) {
    size_t l = strlen(name);
    /* a MoE router stays F32, as llama-quantize keeps it: it decides which experts run */
    return n_dims >= 2 && ne[1] > 1 && l > 7 && strcmp(name + l - 7, ".weight") == 0 && !strstr(name, "ffn_gate_inp.weight");
}

ql_status ql_parse_format_method(const char *spec, const ql_format **f, char *method, size_t cap) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", spec);
    char *plus = strchr(buf, '+');
    if (plus) *plus++ = 0;
    /* trim spaces */
    char *s = buf;
    while (*s == ' ') s++;
    for (char *e = s + strlen(s); e > s && e[-1] == ' ';) *--e = 0;
    *f = ql_format_by_name(s);
    if (!*f) return ql_fail(QL_ERR_ARG, "unknown format '%s' (qlab formats lists them)", s);
    snprintf(method, cap, "%s", plus && *plus ? plus : "rtn");
    return QL_OK;
}

ql_status ql_plan_save(const ql_plan *p, const char *model_path, const char *path) {
    ql_atomic_file *af;
    ql_status s = ql_atomic_open(path, &af);
    if (s) return s;
    FILE *f = ql_atomic_stream(af); /* write errors are sticky in ferror: the commit reports them */
    fprintf(f, "; qlab quantization plan: one line per tensor, FORMAT or FORMAT+METHOD.\n"
               "; Edit freely; apply with: qlab quant MODEL --plan %s -o OUT.gguf\n[plan]\n", path);
    if (model_path) fprintf(f, "model = %s\n", model_path);
    if (p->source) fprintf(f, "source = %s\n", p->source);
    if (p->file_type >= 0) fprintf(f, "file_type = %lld\n", (long long)p->file_type);
    if (p->method_opts) fprintf(f, "method_opts = %s\n", p->method_opts);
    fprintf(f, "\n[tensors]\n");
    for (int i = 0; i < p->n; i++) {
        const ql_plan_entry *e = &p->e[i];
        char spec[160];
        if (strcmp(e->method, "rtn") == 0) snprintf(spec, sizeof spec, "%s", e->format->name);
        else snprintf(spec, sizeof spec, "%s+%s", e->format->name, e->method);
        fprintf(f, "%s = %s%s%s\n", e->tensor, spec, e->note ? "  ; " : "", e->note ? e->note : "");
    }
    if (p->n_act) {
        fprintf(f, "\n; how each linear's input is quantized at run time (qlab ppl on the output applies it)\n"
                   "[activations]\n");
        for (int i = 0; i < p->n_act; i++) {
            char spec[64];
            ql_act_spec_format(p->act[i].mode, p->act[i].threshold, spec, sizeof spec);
            fprintf(f, "%s = %s\n", p->act[i].tensor, spec);
        }
    }
    if (p->kv.set) {
        char nm[160];
        fprintf(f, "\n; the KV cache at run time (qlab ppl on the output applies it; qlab info prints llama.cpp's flags)\n"
                   "[kv]\nscheme = %s\n", ql_kv_scheme_name(&p->kv.scheme, nm, sizeof nm));
        if (p->kv.ctx > 0) fprintf(f, "ctx = %lld\n", (long long)p->kv.ctx);
        if (p->kv.batch > 0) fprintf(f, "batch = %d\n", p->kv.batch);
        for (int i = 0; i < p->kv.n_layer_own; i++)
            fprintf(f, "blk.%d = %s\n", p->kv.layer_idx[i], ql_kv_scheme_name(&p->kv.layer_scheme[i], nm, sizeof nm));
    }
    return ql_atomic_commit(af);
}

/* One line of [kv]: scheme, ctx, batch or blk.N (see plan.h). */
static ql_status load_kv_line(ql_kv_settings *kv, const char *path, const char *name, const char *value) {
    ql_kv_scheme sc;
    char *end;
    kv->set = true;
    if (!strcmp(name, "scheme")) {
        if (!ql_kv_scheme_parse(value, &sc)) return ql_fail(QL_ERR_FORMAT, "%s: [kv] scheme: %s", path, ql_last_error());
        kv->scheme = sc;
    } else if (!strcmp(name, "ctx") || !strcmp(name, "batch")) {
        long long v = strtoll(value, &end, 10);
        if (end == value || *end || v < 1 || v > (1 << 24))
            return ql_fail(QL_ERR_FORMAT, "%s: [kv] %s = '%s': not a whole number in 1..%d", path, name, value, 1 << 24);
        if (!strcmp(name, "ctx")) kv->ctx = v;
        else kv->batch = (int)v;
    } else if (!strncmp(name, "blk.", 4)) {
        long l = strtol(name + 4, &end, 10);
        if (end == name + 4 || *end || l < 0 || l > 100000)
            return ql_fail(QL_ERR_FORMAT, "%s: [kv] %s: expected blk.N with N a layer number", path, name);
        if (!ql_kv_scheme_parse(value, &sc)) return ql_fail(QL_ERR_FORMAT, "%s: [kv] %s: %s", path, name, ql_last_error());
        ql_kv_settings_set_layer(kv, (int)l, &sc);
    } else
        return ql_fail(QL_ERR_FORMAT, "%s: [kv] unknown key '%s' (scheme, ctx, batch, blk.N)", path, name);
    return QL_OK;
}

typedef struct {
    ql_plan *p;
    const char *path;
    ql_status st;
} load_ctx;

static int on_kv(void *user, const char *section, const char *name, const char *value) {
    load_ctx *c = user;
    if (c->st) return 0;
    if (strcmp(section, "plan") == 0) {
        if (strcmp(name, "source") == 0) {
            free(c->p->source);
            c->p->source = ql_strdup(value);
        } else if (strcmp(name, "file_type") == 0)
            c->p->file_type = strtoll(value, NULL, 10);
        else if (strcmp(name, "method_opts") == 0) {
            free(c->p->method_opts);
            c->p->method_opts = *value ? ql_strdup(value) : NULL;
        }
        return 1;
    }
    if (strcmp(section, "activations") == 0) {
        ql_act_mode mode;
        float thr;
        if (ql_act_spec_parse(value, &mode, &thr)) {
            c->st = ql_fail(QL_ERR_FORMAT, "%s: [activations] %s: %s", c->path, name, ql_last_error());
            return 0;
        }
        ql_plan_set_act(c->p, name, mode, thr);
        return 1;
    }
    if (strcmp(section, "kv") == 0) {
        c->st = load_kv_line(&c->p->kv, c->path, name, value);
        return c->st ? 0 : 1;
    }
    if (strcmp(section, "tensors") != 0) {
        c->st = ql_fail(QL_ERR_FORMAT, "%s: unknown section [%s] (expected [plan], [tensors], [activations], [kv])", c->path, section);
        return 0;
    }
    const ql_format *f;
    char method[64];
    if (ql_parse_format_method(value, &f, method, sizeof method)) {
        c->st = ql_fail(QL_ERR_FORMAT, "%s: %s: %s", c->path, name, ql_last_error());
        return 0;
    }
    ql_plan_set(c->p, name, f, method, NULL);
    return 1;
}

ql_status ql_plan_load(const char *path, ql_plan **out) {
    /* a folder opens and reads as empty, and an empty plan would quietly write an unquantized copy */
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return ql_fail(QL_ERR_ARG, "%s: is a folder, not a plan file (INI with a [tensors] section)", path);
    load_ctx c = {ql_plan_new(), path, QL_OK};
    c.p->source = ql_strdup(path);
    int r = ini_parse(path, on_kv, &c);
    if (r < 0 && !c.st) c.st = ql_fail(QL_ERR_IO, "%s: cannot open", path);
    else if (r > 0 && !c.st) c.st = ql_fail(QL_ERR_FORMAT, "%s: line %d: not key = value", path, r);
    else if (!c.st && c.p->n == 0)
        c.st = ql_fail(QL_ERR_FORMAT, "%s: no [tensors] entries: not a plan file (qlab quant --save-plan writes one)",
                       path);
    if (c.st) {
        ql_plan_free(c.p);
        return c.st;
    }
    *out = c.p;
    return QL_OK;
}
