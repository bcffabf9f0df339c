/* ggml_types.c — sizes and names of ggml storage types (so any GGUF file can be carried), plus the
 * types the format registry registers at start-up (ggml types added after this table, extensions). */
#include "kernels/ggml_types.h"

#include <string.h>
#include <strings.h>
#include <pthread.h>

static ql_type_info g_ggml[QL_TYPE_GGML_COUNT] = {
    [QL_TYPE_F32] = {"f32", 1, 4},        [QL_TYPE_F16] = {"f16", 1, 2},
    [QL_TYPE_Q4_0] = {"q4_0", 32, 18},    [QL_TYPE_Q4_1] = {"q4_1", 32, 20},
    [QL_TYPE_Q5_0] = {"q5_0", 32, 22},    [QL_TYPE_Q5_1] = {"q5_1", 32, 24},
    [QL_TYPE_Q8_0] = {"q8_0", 32, 34},    [QL_TYPE_Q8_1] = {"q8_1", 32, 36},
    [QL_TYPE_Q2_K] = {"q2_k", 256, 84},   [QL_TYPE_Q3_K] = {"q3_k", 256, 110},
    [QL_TYPE_Q4_K] = {"q4_k", 256, 144},  [QL_TYPE_Q5_K] = {"q5_k", 256, 176},
    [QL_TYPE_Q6_K] = {"q6_k", 256, 210},  [QL_TYPE_Q8_K] = {"q8_k", 256, 292},
    [QL_TYPE_IQ2_XXS] = {"iq2_xxs", 256, 66}, [QL_TYPE_IQ2_XS] = {"iq2_xs", 256, 74},
    [QL_TYPE_IQ3_XXS] = {"iq3_xxs", 256, 98}, [QL_TYPE_IQ1_S] = {"iq1_s", 256, 50},
    [QL_TYPE_IQ4_NL] = {"iq4_nl", 32, 18},    [QL_TYPE_IQ3_S] = {"iq3_s", 256, 110},
    [QL_TYPE_IQ2_S] = {"iq2_s", 256, 82},     [QL_TYPE_IQ4_XS] = {"iq4_xs", 256, 136},
    [QL_TYPE_I8] = {"i8", 1, 1},   [QL_TYPE_I16] = {"i16", 1, 2}, [QL_TYPE_I32] = {"i32", 1, 4},
    [QL_TYPE_I64] = {"i64", 1, 8}, [QL_TYPE_F64] = {"f64", 1, 8},
    [QL_TYPE_IQ1_M] = {"iq1_m", 256, 56},  [QL_TYPE_BF16] = {"bf16", 1, 2},
    [QL_TYPE_TQ1_0] = {"tq1_0", 256, 54},  [QL_TYPE_TQ2_0] = {"tq2_0", 256, 66},
    [QL_TYPE_MXFP4] = {"mxfp4", 32, 17},
};

#define QL_MAX_EXT 256
static ql_type_info g_ext[QL_MAX_EXT];
static pthread_mutex_t g_ext_lock = PTHREAD_MUTEX_INITIALIZER;

bool ql_type_is_ggml(uint32_t type) { return type < QL_TYPE_GGML_COUNT && g_ggml[type].name; }

const ql_type_info *ql_type_get(uint32_t type) {
    if (ql_type_is_ggml(type)) return &g_ggml[type];
    if (type >= QL_TYPE_EXT_BASE && type < QL_TYPE_EXT_BASE + QL_MAX_EXT && g_ext[type - QL_TYPE_EXT_BASE].name)
        return &g_ext[type - QL_TYPE_EXT_BASE];
    return NULL;
}

void ql_type_register(uint32_t type, const char *name, int block, int block_bytes) {
    if (!name || block <= 0 || block_bytes <= 0 || ql_type_get(type)) return;
    pthread_mutex_lock(&g_ext_lock);
    if (type < QL_TYPE_GGML_COUNT)
        g_ggml[type] = (ql_type_info){name, block, block_bytes};
    else if (type >= QL_TYPE_EXT_BASE && type < QL_TYPE_EXT_BASE + QL_MAX_EXT)
        g_ext[type - QL_TYPE_EXT_BASE] = (ql_type_info){name, block, block_bytes};
    pthread_mutex_unlock(&g_ext_lock);
}

int64_t ql_type_by_name(const char *name) {
    for (uint32_t t = 0; t < QL_TYPE_GGML_COUNT; t++)
        if (g_ggml[t].name && strcasecmp(g_ggml[t].name, name) == 0) return t;
    for (uint32_t i = 0; i < QL_MAX_EXT; i++)
        if (g_ext[i].name && strcasecmp(g_ext[i].name, name) == 0) return QL_TYPE_EXT_BASE + i;
    return -1;
}

int64_t ql_type_row_bytes(uint32_t type, int64_t n) {
    const ql_type_info *ti = ql_type_get(type);
    if (!ti || n < 0 || n % ti->block || n / ti->block > INT64_MAX / ti->block_bytes) return -1;
    return n / ti->block * ti->block_bytes;
}

static ql_type_sizer g_sizer;
void ql_type_set_ext_sizer(ql_type_sizer fn) { g_sizer = fn; }

int64_t ql_type_tensor_bytes(uint32_t type, int64_t ne0, int64_t nrows) {
    if (ne0 < 0 || nrows < 0) return -1;
    if (type >= QL_TYPE_EXT_BASE && g_sizer) return g_sizer(type, ne0, nrows);
    int64_t row = ql_type_row_bytes(type, ne0);
    if (row < 0) return -1;
    if (nrows && row > INT64_MAX / nrows) return -1;
    return row * nrows;
}
