/* export.c — the exporter registry and the seam's checks (see export.h). */
#include "pipeline/export.h"

#include "base/atomic_file.h"
#include "kernels/ggml_types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------- registry: one line per exporter */

extern const ql_exporter_ops ql_export_gguf_ops;
extern const ql_exporter_ops ql_export_gptq_ops;
extern const ql_exporter_ops ql_export_awq_ops;
extern const ql_exporter_ops ql_export_ct_ops;
extern const ql_exporter_ops ql_export_bnb_ops;
extern const ql_exporter_ops ql_export_exl2_ops;

static const ql_exporter_info g_exporters[] = {
    /* name    summary                                                    formats accepted                                    folder  ops */
    {"gguf", "one GGUF file: llama.cpp loads it when every type is ggml's", "every format (qlab extension types load in qlab only)", false, &ql_export_gguf_ops},
    {"gptq", "GPTQModel/AutoGPTQ folder (checkpoint_format gptq): transformers, vLLM, TGI", "int{2,3,4,8}_g*[_sym], int{4,8}_channel, one scheme per model", true, &ql_export_gptq_ops},
    {"awq", "AutoAWQ GEMM folder: transformers, vLLM, TGI", "int4_g*[_sym], one group size per model", true, &ql_export_awq_ops},
    {"compressed-tensors", "llm-compressor folder (pack-quantized / float-quantized): vLLM, transformers", "int{4,8}_g*[_sym], int{4,8}_channel, int8_tensor, fp8_e4m3[_channel|_block]", true, &ql_export_ct_ops},
    {"bnb", "bitsandbytes 4-bit folder as transformers saves load_in_4bit", "nf4, fp4, nf4_dq, fp4_dq (one of them per model)", true, &ql_export_bnb_ops},
    {"exl2", "ExLlamaV2 folder (EXL2: mixed bits per matrix, q_weight/q_scale/q_groups/q_perm)", "exl2_* formats (--method exl2 or rtn)", true, &ql_export_exl2_ops},
};

int ql_exporter_count(void) { return (int)QL_ARRAY_LEN(g_exporters); }

const ql_exporter_info *ql_exporter_at(int i) {
    return i >= 0 && i < ql_exporter_count() ? &g_exporters[i] : NULL;
}

const ql_exporter_info *ql_exporter_by_name(const char *name) {
    for (int i = 0; i < ql_exporter_count(); i++)
        if (strcasecmp(g_exporters[i].name, name) == 0) return &g_exporters[i];
    return NULL;
}

const ql_exporter_info *ql_exporter_default(void) { return &g_exporters[0]; }

ql_status ql_exporter_find(const char *name, const ql_exporter_info **out) {
    if ((*out = ql_exporter_by_name(name))) return QL_OK;
    char list[512] = "";
    size_t n = 0;
    for (int i = 0; i < ql_exporter_count() && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s (%s)", i ? ", " : "", g_exporters[i].name,
                              g_exporters[i].folder ? "folder" : "file");
    return ql_fail(QL_ERR_ARG, "unknown exporter '%s'; registered: %s", name, list);
}

/* ---------------------------------------------------------------- the seam */

ql_status ql_export_begin(const ql_exporter_info *info, const char *out_path, const ql_gguf *source, ql_exporter **out) {
    return ql_export_begin_replace(info, out_path, source, false, out);
}

ql_status ql_export_begin_replace(const ql_exporter_info *info, const char *out_path, const ql_gguf *source,
                                  bool replace, ql_exporter **out) {
    *out = NULL;
    if (info->folder) {
        ql_status s = ql_atomic_dir_check(out_path, replace);
        if (s) return s;
    }
    ql_exporter *x = ql_calloc(1, sizeof *x);
    x->info = info;
    x->replace = replace;
    x->out_path = ql_strdup(out_path);
    ql_status s = info->ops->begin(x, out_path, source);
    if (s) {
        free(x->out_path);
        free(x);
        return s;
    }
    *out = x;
    return QL_OK;
}

ql_status ql_export_add_metadata(ql_exporter *x, const char *key, const ql_gguf_value *val) {
    return x->info->ops->add_metadata(x, key, val);
}

ql_status ql_export_add_tensor(ql_exporter *x, const ql_export_tensor *t) {
    if (!x->info->ops->accepts_type(t->type)) {
        const ql_type_info *ti = ql_type_get(t->type);
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: the %s exporter cannot store tensor '%s' of type %s (it takes %s)",
                       x->out_path, x->info->name, t->name, ti ? ti->name : "unknown", x->info->accepts);
    }
    if (!t->data && !t->produce)
        return ql_fail(QL_ERR_ARG, "%s: tensor '%s' has neither bytes nor a producer", x->out_path, t->name);
    return x->info->ops->add_tensor(x, t);
}

ql_status ql_export_add_sidecar(ql_exporter *x, const char *file_name, const void *bytes, size_t n) {
    if (!x->info->ops->add_sidecar)
        return ql_fail(QL_ERR_UNSUPPORTED, "%s: the %s exporter writes one file; it has no place for '%s'", x->out_path,
                       x->info->name, file_name);
    if (!*file_name || strchr(file_name, '/') || !strcmp(file_name, ".") || !strcmp(file_name, ".."))
        return ql_fail(QL_ERR_ARG, "%s: sidecar name '%s' is not a plain file name", x->out_path, file_name);
    return x->info->ops->add_sidecar(x, file_name, bytes, n);
}

void ql_export_describe(ql_exporter *x, uint32_t type, char *buf, size_t n) {
    if (x->info->ops->describe) {
        x->info->ops->describe(x, buf, n);
        return;
    }
    const ql_type_info *ti = ql_type_get(type);
    snprintf(buf, n, "stored as %s", ti ? ti->name : "?");
}

static void release(ql_exporter *x) {
    free(x->out_path);
    free(x);
}

ql_status ql_export_commit(ql_exporter *x, const ql_progress *progress) {
    ql_status s = x->info->ops->commit(x, progress);
    release(x);
    return s;
}

void ql_export_abort(ql_exporter *x) {
    if (!x) return;
    x->info->ops->abort(x);
    release(x);
}

ql_status ql_export_image(const ql_exporter_info *info, const char *out_path, const ql_gguf *source,
                          const ql_gguf *image, const ql_progress *progress) {
    return ql_export_image_replace(info, out_path, source, image, false, progress);
}

ql_status ql_export_image_replace(const ql_exporter_info *info, const char *out_path, const ql_gguf *source,
                                  const ql_gguf *image, bool replace, const ql_progress *progress) {
    ql_exporter *x;
    ql_status s = ql_export_begin_replace(info, out_path, source, replace, &x);
    if (s) return s;
    for (int64_t i = 0; i < image->n_kv && !s; i++) s = ql_export_add_metadata(x, image->kv[i].key, &image->kv[i].val);
    for (int64_t i = 0; i < image->n_tensors && !s; i++) {
        const ql_gguf_tensor *t = &image->tensors[i];
        ql_export_tensor et = {.name = t->name, .type = t->type, .n_dims = t->n_dims, .ne = t->ne, .nbytes = t->nbytes,
                               .data = t->data, .produce = t->produce, .produce_user = t->produce_user, .produce_tag = i};
        s = ql_export_add_tensor(x, &et);
    }
    if (s) {
        ql_export_abort(x);
        return s;
    }
    return ql_export_commit(x, progress);
}
