/* fuzz_calib.c — libFuzzer harness for calibration sources read through libarchive and the JSONL reader
 * (qlab calib/stats/sense --calib): the first input byte picks the file name's extension — tar, tar.gz,
 * tar.xz, tar.zst, zip, jsonl, txt, 7z — the rest is the file; zip bombs and path tricks are bounded by
 * the byte limits set here as a user would. */
#include "fuzz/fuzz_util.h"
#include "pipeline/calib.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const ext[] = {".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".zip", ".jsonl", ".txt", ".7z"};
    if (size < 1) return 0;
    const ql_model *m = fuzz_model();
    const char *path = fuzz_put(data + 1, size - 1, ext[data[0] & 7]);
    char spec[160];
    snprintf(spec, sizeof spec, "%s", path);
    ql_calib_opts o = {.n_samples = 2, .seq_len = 8, .seed = 1, .max_bytes = 1 << 20, .max_archive_bytes = 4 << 20};
    ql_calib_set *set = NULL;
    if (ql_calib_build(spec, m->tok, &o, &set) == QL_OK) ql_calib_free(set);
    return 0;
}
