/* fuzz_hf_quant.c — libFuzzer harness for quantized Hugging Face folders (core/hf_quant.c behind
 * core/hf.c): the input is split into config.json and model.safetensors (the first two bytes, little
 * endian, give the length of config.json; the rest after it is the safetensors file), written to a
 * temporary folder and loaded; when the load succeeds, the model view is built and every tensor whose
 * type is a registry format is dequantized, so a size the converter got wrong shows up as an overflow.
 * Seeds (tests/corpus/hf_quant/) are small exports of every layout, made by fuzz/hf_quant_seeds.py. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/model.h"
#include "formats/format.h"

static void put(const char *dir, const char *name, const uint8_t *data, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

static void quiet(int level, const char *msg, void *user) { (void)level, (void)msg, (void)user; } /* notes */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_log_set(quiet, NULL);
    if (size < 2) return 0;
    size_t cl = (size_t)data[0] | (size_t)data[1] << 8;
    if (cl > size - 2) cl = size - 2;
    char dir[128], cfg[160], st[160];
    snprintf(dir, sizeof dir, "%s/qlab-fuzz-hfq-%ld", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (long)getpid());
    mkdir(dir, 0700);
    put(dir, "config.json", data + 2, cl);
    put(dir, "model.safetensors", data + 2 + cl, size - 2 - cl);
    ql_gguf *g = NULL;
    ql_status s = ql_hf_load(dir, &g); /* the shard stays mapped after its file is gone */
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    unlink(cfg), unlink(st), rmdir(dir); /* nothing left behind, run by run */
    if (s != QL_OK) return 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ql_gguf_tensor *t = &g->tensors[i];
        const ql_format *f = ql_format_by_type(t->type);
        int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        if (!f || t->n_dims > 2 || rows <= 0 || t->ne[0] * rows > (1 << 22)) continue;
        if (ql_format_tensor_bytes(f, t->ne[0], rows) != (int64_t)t->nbytes) abort(); /* the converter sized it */
        float *out = malloc((size_t)(t->ne[0] * rows) * sizeof *out);
        if (out) ql_format_dequantize(f, t->data, out, rows, t->ne[0], 1);
        free(out);
    }
    ql_model *m = NULL;
    if (ql_model_from_gguf(g, dir, &m) == QL_OK) ql_model_free(m); /* took ownership of g */
    return 0;
}
