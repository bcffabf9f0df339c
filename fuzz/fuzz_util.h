/* fuzz_util.h — shared by the file-based harnesses: the input as a file with a chosen extension (the
 * loaders take paths; /dev/shm keeps it in memory), and one tiny model built once per process for the
 * harnesses that check a file against a model or run it through the pipeline. */
#ifndef QL_FUZZ_UTIL_H
#define QL_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/model.h"
#include "core/synth.h"

/* Writes data to /dev/shm/qlab-fuzz-<pid><ext> (or /tmp when /dev/shm is absent); returns its path. */
static inline const char *fuzz_put(const uint8_t *data, size_t size, const char *ext) {
    static char path[128];
    snprintf(path, sizeof path, "%s/qlab-fuzz-%ld%s", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp",
             (long)getpid(), ext);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* A 2-layer llama of width 32 with a 300-token vocabulary, made once (seed 7) and kept. */
static inline const ql_model *fuzz_model(void) {
    static ql_model *m;
    if (m) return m;
    char path[128];
    snprintf(path, sizeof path, "/tmp/qlab-fuzz-model-%ld.gguf", (long)getpid());
    ql_synth_shape sh = *ql_synth_find("tiny");
    if (ql_synth_parse_dims("layers=2,embd=32,heads=4,kv=2,ff=64,vocab=300,ctx=64", &sh) ||
        ql_synth_write(&sh, 7, path, 1, NULL) || ql_model_load(path, &m))
        abort();
    unlink(path); /* the mapping stays valid */
    return m;
}

#endif
