/* preset.c — preset INI parsing and the rule resolver (see preset.h). Rule syntax, in [rules]:
 *     ROLE_OR_GLOB[@COND[&COND...]] = FORMAT[+METHOD]
 * ROLE is a tensor name without "blk.N." and ".weight" (attn_v, ffn_down, output, token_embd), or the
 * category llama.cpp sorts it into by substring: ffn_up, ffn_gate, ffn_down also name the MoE experts
 * (ffn_down_exps) and shared experts (ffn_down_shexp); a pattern with '*' or '.' is matched against the full name
 * with fnmatch. Conditions: more_bits (llama.cpp's use_more_bits), layer<N, layer<n/K, layer>N, layer>K*n/M,
 * index<n/K (the tensor's position among the earlier ones of its category: llama.cpp's i_ffn_down counter, which
 * differs from the layer where a layer has two ffn_down), experts>N (ARCH.expert_count), gqa>N, imatrix,
 * default_fits (the row length is a multiple of the [preset] default's block: llama.cpp gives output Q8_0 when it
 * is not), and any of them negated with '!'. ('=' cannot appear in an INI key, hence strict comparisons only; "layer >= n/8" is
 * written !layer<n/8.)
 * The first matching rule wins; [preset] default applies to the rest of the 2-D weights. */
#include "presets/preset.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"

#include <ctype.h>
#include <fnmatch.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct { const char *name; const char *text; } ql_builtin_preset;
extern const ql_builtin_preset ql_builtin_presets[];

typedef struct {
    char *pattern;
    char *cond;   /* NULL: always */
    char *spec;   /* FORMAT[+METHOD] */
} rule;

struct ql_preset {
    char *name, *summary, *default_spec, *label;
    int64_t file_type;
    int n_rules;
    rule *rules;
    ql_status st;
};

int ql_preset_builtin_count(void) {
    int n = 0;
    while (ql_builtin_presets[n].name) n++;
    return n;
}
const char *ql_preset_builtin_name(int i) { return ql_builtin_presets[i].name; }

static int on_kv(void *user, const char *section, const char *name, const char *value) {
    ql_preset *p = user;
    if (strcmp(section, "preset") == 0) {
        if (!strcmp(name, "name")) { free(p->name); p->name = ql_strdup(value); }
        else if (!strcmp(name, "summary")) { free(p->summary); p->summary = ql_strdup(value); }
        else if (!strcmp(name, "default")) { free(p->default_spec); p->default_spec = ql_strdup(value); }
        else if (!strcmp(name, "file_type")) p->file_type = strtoll(value, NULL, 10);
        else {
            p->st = ql_fail(QL_ERR_FORMAT, "%s: unknown key '%s' in [preset]", p->label, name);
            return 0;
        }
        return 1;
    }
    if (strcmp(section, "rules") != 0) {
        p->st = ql_fail(QL_ERR_FORMAT, "%s: unknown section [%s] (expected [preset] and [rules])", p->label, section);
        return 0;
    }
    const ql_format *f;
    char method[64];
    if (ql_parse_format_method(value, &f, method, sizeof method)) {
        p->st = ql_fail(QL_ERR_FORMAT, "%s: rule '%s': %s", p->label, name, ql_last_error());
        return 0;
    }
    p->rules = ql_realloc(p->rules, (size_t)(p->n_rules + 1) * sizeof *p->rules);
    rule *r = &p->rules[p->n_rules++];
    r->pattern = ql_strdup(name);
    char *at = strchr(r->pattern, '@');
    r->cond = NULL;
    if (at) {
        *at = 0;
        r->cond = ql_strdup(at + 1);
    }
    r->spec = ql_strdup(value);
    return 1;
}

void ql_preset_free(ql_preset *p) {
    if (!p) return;
    for (int i = 0; i < p->n_rules; i++) {
        free(p->rules[i].pattern);
        free(p->rules[i].cond);
        free(p->rules[i].spec);
    }
    free(p->rules);
    free(p->name);
    free(p->summary);
    free(p->default_spec);
    free(p->label);
    free(p);
}

ql_status ql_preset_parse(const char *text, const char *label, ql_preset **out) {
    ql_preset *p = ql_calloc(1, sizeof *p);
    p->label = ql_strdup(label);
    p->file_type = -1;
    int r = ini_parse_string(text, on_kv, p);
    if (!p->st && r > 0) p->st = ql_fail(QL_ERR_FORMAT, "%s: line %d: not key = value", label, r);
    if (!p->st && !p->default_spec) p->st = ql_fail(QL_ERR_FORMAT, "%s: [preset] needs default = FORMAT", label);
    if (!p->st) {
        const ql_format *f;
        char m[64];
        if (ql_parse_format_method(p->default_spec, &f, m, sizeof m))
            p->st = ql_fail(QL_ERR_FORMAT, "%s: default: %s", label, ql_last_error());
    }
    if (p->st) {
        ql_status s = p->st;
        ql_preset_free(p);
        return s;
    }
    if (!p->name) p->name = ql_strdup(label);
    *out = p;
    return QL_OK;
}

ql_status ql_preset_load(const char *name, ql_preset **out) {
    for (int i = 0; ql_builtin_presets[i].name; i++)
        if (strcasecmp(ql_builtin_presets[i].name, name) == 0)
            return ql_preset_parse(ql_builtin_presets[i].text, ql_builtin_presets[i].name, out);
    FILE *f = fopen(name, "rb");
    if (!f) {
        char list[1024] = "";
        for (int i = 0; ql_builtin_presets[i].name; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, ql_builtin_presets[i].name, sizeof list - strlen(list) - 1);
        }
        return ql_fail(QL_ERR_ARG, "unknown preset '%s' (not a file; built-in: %s)", name, list);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0 || n > (1 << 20)) {
        fclose(f);
        return ql_fail(QL_ERR_FORMAT, "%s: not a preset file (too large)", name);
    }
    char *text = ql_malloc((size_t)n + 1);
    size_t got = fread(text, 1, (size_t)n, f);
    fclose(f);
    text[got] = 0;
    ql_status s = ql_preset_parse(text, name, out);
    free(text);
    return s;
}

const char *ql_preset_name(const ql_preset *p) { return p->name; }
const char *ql_preset_summary(const ql_preset *p) { return p->summary ? p->summary : ""; }

/* ---------------------------------------------------------------- resolution */

typedef struct {
    const char *name;
    char role[96];
    const char *category; /* llama.cpp's: ffn_up / ffn_gate / ffn_down for any name holding them, else role */
    int layer; /* -1 outside blocks */
    int index; /* how many earlier tensors share the category (llama.cpp's per-category counters) */
    int n_layer, gqa, n_expert;
    bool imatrix;
    bool default_fits; /* the row length is a multiple of the preset default's block */
} tensor_ctx;

static void role_of(const char *name, tensor_ctx *t) {
    const char *s = name;
    t->layer = -1;
    if (strncmp(s, "blk.", 4) == 0) {
        char *end;
        long l = strtol(s + 4, &end, 10);
        if (*end == '.') {
            t->layer = (int)l;
            s = end + 1;
        }
    }
    snprintf(t->role, sizeof t->role, "%s", s);
    size_t l = strlen(t->role);
    if (l > 7 && strcmp(t->role + l - 7, ".weight") == 0) t->role[l - 7] = 0;
    /* llama.cpp's tensor_get_category order: ffn_up, then ffn_gate, then ffn_down */
    static const char *cats[] = {"ffn_up", "ffn_gate", "ffn_down"};
    t->category = t->role;
    for (size_t i = 0; i < sizeof cats / sizeof *cats; i++)
        if (t->layer >= 0 && strstr(t->role, cats[i])) {
            t->category = cats[i];
            break;
        }
}

static bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/* one condition; unknown syntax is an error reported once by the caller */
static int cond_true(const char *c, const tensor_ctx *t) {
    if (c[0] == '!') {
        int r = cond_true(c + 1, t);
        return r < 0 ? r : !r;
    }
    if (!strcmp(c, "more_bits")) return t->layer >= 0 && use_more_bits(t->layer, t->n_layer);
    if (!strcmp(c, "imatrix")) return t->imatrix;
    if (!strcmp(c, "default_fits")) return t->default_fits;
    const char *v;
    int lhs;
    if (!strncmp(c, "layer", 5)) { lhs = t->layer; v = c + 5; if (lhs < 0) return 0; }
    else if (!strncmp(c, "index", 5)) { lhs = t->index; v = c + 5; if (t->layer < 0) return 0; }
    else if (!strncmp(c, "experts", 7)) { lhs = t->n_expert; v = c + 7; }
    else if (!strncmp(c, "gqa", 3)) { lhs = t->gqa; v = c + 3; }
    else return -1;
    bool gt = v[0] == '>', lt = v[0] == '<';
    if (!gt && !lt) return -1;
    v++;
    /* rhs: N | n/K | K*n/M  (n = number of layers, integer division as llama.cpp) */
    /* every number in 1..1e6 (or 0..1e6 for N): anything else — a zero divisor (found by fuzz_preset), an
     * overflowing product, trailing text — is a syntax error the caller reports */
    long rhs;
    char *end, *end2;
    long a = strtol(v, &end, 10);
    if (end != v && *end == 0 && a >= 0 && a <= 1000000) rhs = a;
    else if (end == v && v[0] == 'n' && v[1] == '/') {
        long k = strtol(v + 2, &end2, 10);
        if (end2 == v + 2 || *end2 || k < 1 || k > 1000000) return -1;
        rhs = t->n_layer / k;
    } else if (end != v && end[0] == '*' && end[1] == 'n' && end[2] == '/' && a >= 0 && a <= 1000000) {
        long k = strtol(end + 3, &end2, 10);
        if (end2 == end + 3 || *end2 || k < 1 || k > 1000000) return -1;
        rhs = a * t->n_layer / k;
    } else
        return -1;
    return gt ? lhs > rhs : lhs < rhs;
}

static int conds_true(const char *conds, const tensor_ctx *t) {
    if (!conds) return 1;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", conds);
    char *save = NULL;
    for (char *c = strtok_r(buf, "&", &save); c; c = strtok_r(NULL, "&", &save)) {
        while (isspace((unsigned char)*c)) c++;
        int r = cond_true(c, t);
        if (r != 1) return r;
    }
    return 1;
}

static bool pattern_matches(const char *pat, const tensor_ctx *t) {
    if (strchr(pat, '*') || strchr(pat, '.')) return fnmatch(pat, t->name, 0) == 0;
    return strcmp(pat, t->role) == 0 || strcmp(pat, t->category) == 0;
}

/* The format that fits rows of ncols, following the entries' fallbacks (llama.cpp's table), then F16. The
 * note says exactly what llama-quantize does with the same rows: the same fallback, or (for types its
 * table lacks: q4_0, q8_0 ...) refusing the model, so a user comparing the two tools is not misled. */
static const ql_format *fit(const ql_format *f, int64_t ncols, char *note, size_t cap) {
    const ql_format *orig = f;
    const bool llama_has = f->fallback != NULL; /* entries carry llama.cpp's fallbacks only */
    for (int guard = 0; guard < 4 && !ql_format_fits(f, ncols); guard++)
        f = ql_format_fallback(f);
    if (!ql_format_fits(f, ncols)) f = ql_format_by_name("f16");
    if (f != orig) {
        const char *what = llama_has                     ? "llama-quantize does the same"
                           : ql_type_is_ggml(orig->type) ? "llama-quantize refuses the model"
                                                         : "qlab's own fallback";
        snprintf(note, cap, "fallback from %s: rows of %lld are not a multiple of %d (%s)", orig->name,
                 (long long)ncols, orig->block, what);
    }
    return f;
}

static ql_status resolve(const ql_preset *p, const char *single_spec, const ql_model *m, bool has_imatrix,
                         ql_plan **out) {
    const ql_gguf *g = m->gguf;
    ql_plan *plan = ql_plan_new();
    char srcbuf[160];
    if (p) snprintf(srcbuf, sizeof srcbuf, "preset %s", p->name);
    else snprintf(srcbuf, sizeof srcbuf, "--type %s", single_spec);
    plan->source = ql_strdup(srcbuf);
    plan->file_type = p ? p->file_type : -1;
    ql_status st = QL_OK;
    int seen[3] = {0, 0, 0}; /* quantized tensors so far per FFN category (llama.cpp's i_ffn_up/gate/down) */
    for (int64_t i = 0; i < g->n_tensors && !st; i++) {
        const ql_gguf_tensor *gt = &g->tensors[i];
        if (!ql_tensor_is_quantizable(gt->name, gt->n_dims, gt->ne)) continue;
        tensor_ctx t = {.name = gt->name, .n_layer = m->cfg.n_layer, .gqa = m->cfg.n_head / m->cfg.n_head_kv,
                        .n_expert = m->cfg.n_expert, .imatrix = has_imatrix};
        role_of(gt->name, &t);
        const int ci = !strcmp(t.category, "ffn_up") ? 0 : !strcmp(t.category, "ffn_gate") ? 1
                       : !strcmp(t.category, "ffn_down") ? 2 : -1;
        t.index = ci >= 0 ? seen[ci]++ : t.layer;
        if (m->cfg.tied_output && !strcmp(t.role, "token_embd")) strcpy(t.role, "output"); /* as llama.cpp */
        const char *spec = single_spec;
        if (p) {
            spec = p->default_spec;
            const ql_format *df;
            char dm[64];
            if ((st = ql_parse_format_method(spec, &df, dm, sizeof dm))) break;
            t.default_fits = ql_format_fits(df, gt->ne[0]);
            for (int r = 0; r < p->n_rules; r++) {
                if (!pattern_matches(p->rules[r].pattern, &t)) continue;
                int c = conds_true(p->rules[r].cond, &t);
                if (c < 0) {
                    st = ql_fail(QL_ERR_FORMAT, "%s: rule '%s@%s': unknown condition", p->label, p->rules[r].pattern,
                                 p->rules[r].cond);
                    break;
                }
                if (c) {
                    spec = p->rules[r].spec;
                    break;
                }
            }
            if (st) break;
        }
        const ql_format *f;
        char method[64], note[160] = "";
        if ((st = ql_parse_format_method(spec, &f, method, sizeof method))) break;
        f = fit(f, gt->ne[0], note, sizeof note);
        ql_plan_set(plan, gt->name, f, method, note[0] ? note : NULL);
    }
    if (st) {
        ql_plan_free(plan);
        return st;
    }
    *out = plan;
    return QL_OK;
}

ql_status ql_preset_resolve(const ql_preset *p, const ql_model *m, bool has_imatrix, ql_plan **out) {
    return resolve(p, NULL, m, has_imatrix, out);
}

ql_status ql_plan_single_format(const char *spec, const ql_model *m, ql_plan **out) {
    const ql_format *f;
    char method[64];
    ql_status s = ql_parse_format_method(spec, &f, method, sizeof method);
    if (s) return s;
    return resolve(NULL, spec, m, false, out);
}
