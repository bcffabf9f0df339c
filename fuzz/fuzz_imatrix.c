/* fuzz_imatrix.c — libFuzzer harness for llama.cpp importance matrices: the legacy .dat layout and the
 * GGUF one (first input byte picks which; the rest is the file). */
#include "fuzz/fuzz_util.h"
#include "pipeline/imatrix.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    ql_imatrix *im = NULL;
    if (ql_imatrix_load(fuzz_put(data + 1, size - 1, data[0] & 1 ? ".gguf" : ".dat"), &im) == QL_OK) ql_imatrix_free(im);
    return 0;
}
