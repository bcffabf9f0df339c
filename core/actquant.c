/* actquant.c — simulated activation quantization in the preview forward pass (see actquant.h). */
#include "core/actquant.h"
#include "core/gguf.h"
#include "formats/fmt_ext.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------- activation quantization ---------------- */

static const char *const MODE_NAMES[QL_ACT_MODE_COUNT] = {"none",      "int8_token", "int8_tensor",
                                                          "fp8_token", "fp8_tensor", "llm_int8"};

const char *ql_act_mode_name(ql_act_mode m) { return m >= 0 && m < QL_ACT_MODE_COUNT ? MODE_NAMES[m] : "?"; }

bool ql_act_mode_parse(const char *s, ql_act_mode *out) {
    if (!s) return false;
    for (int i = 0; i < QL_ACT_MODE_COUNT; i++)
        if (!strcasecmp(s, MODE_NAMES[i])) {
            *out = (ql_act_mode)i;
            return true;
        }
    if (!strcasecmp(s, "int8"))
        *out = QL_ACT_INT8_TOKEN;
    else if (!strcasecmp(s, "fp8"))
        *out = QL_ACT_FP8_TOKEN;
    else if (!strcasecmp(s, "llm.int8") || !strcasecmp(s, "llm.int8()"))
        *out = QL_ACT_LLM_INT8;
    else
        return false;
    return true;
}

ql_status ql_act_spec_parse(const char *s, ql_act_mode *mode, float *threshold) {
    char name[64];
    *threshold = 0;
    snprintf(name, sizeof name, "%s", s ? s : "");
    char *colon = strchr(name, ':');
    if (colon) *colon++ = 0;
    if (!ql_act_mode_parse(name, mode))
        return ql_fail(QL_ERR_ARG,
                       "unknown activation scheme '%s' (none, int8_token, int8_tensor, fp8_token, fp8_tensor, "
                       "llm_int8[:THRESHOLD])",
                       s ? s : "");
    if (colon) {
        char *end;
        double t = strtod(colon, &end);
        if (*mode != QL_ACT_LLM_INT8 || end == colon || *end || !(t > 0) || !isfinite(t))
            return ql_fail(QL_ERR_ARG, "activation scheme '%s': only llm_int8 takes ':THRESHOLD', a number > 0", s);
        *threshold = (float)t;
    }
    return QL_OK;
}

void ql_act_spec_format(ql_act_mode mode, float threshold, char *buf, size_t cap) {
    if (mode == QL_ACT_LLM_INT8 && threshold > 0 && threshold != QL_LLM_INT8_THRESHOLD)
        snprintf(buf, cap, "%s:%g", ql_act_mode_name(mode), threshold);
    else
        snprintf(buf, cap, "%s", ql_act_mode_name(mode));
}

static void act_key(char *buf, size_t cap, const char *prefix, const char *tensor) {
    snprintf(buf, cap, "%s%s", prefix, tensor);
}

void ql_act_quant_to_gguf(ql_gguf *g, const char *tensor, const ql_act_quant *aq) {
    char key[320];
    if (!aq || aq->mode == QL_ACT_NONE) return;
    act_key(key, sizeof key, QL_ACT_KEY_MODE, tensor);
    ql_gguf_set_str(g, key, ql_act_mode_name(aq->mode));
    if (ql_act_mode_is_static(aq->mode)) {
        act_key(key, sizeof key, QL_ACT_KEY_SCALE, tensor);
        ql_gguf_set_f32(g, key, aq->scale);
    }
    if (aq->mode == QL_ACT_LLM_INT8) {
        act_key(key, sizeof key, QL_ACT_KEY_THRESHOLD, tensor);
        ql_gguf_set_f32(g, key, aq->threshold > 0 ? aq->threshold : QL_LLM_INT8_THRESHOLD);
    }
}

ql_status ql_act_quant_from_gguf(const ql_gguf *g, const char *path, const char *tensor, ql_act_quant *aq,
                                 bool *found) {
    char key[320];
    memset(aq, 0, sizeof *aq);
    *found = false;
    act_key(key, sizeof key, QL_ACT_KEY_MODE, tensor);
    if (!ql_gguf_get(g, key)) return QL_OK;
    const char *name = ql_gguf_get_str(g, key);
    ql_act_mode mode;
    if (!name || !ql_act_mode_parse(name, &mode) || mode == QL_ACT_NONE)
        return ql_fail(QL_ERR_FORMAT, "%s: %s: unknown activation scheme '%s'", path, key, name ? name : "(not a string)");
    aq->mode = mode;
    aq->threshold = QL_LLM_INT8_THRESHOLD;
    double v;
    if (ql_act_mode_is_static(mode)) {
        act_key(key, sizeof key, QL_ACT_KEY_SCALE, tensor);
        if (!ql_gguf_get_f64(g, key, &v) || !(v > 0) || !isfinite(v) || v > FLT_MAX)
            return ql_fail(QL_ERR_FORMAT, "%s: %s: static activation scheme %s needs a positive scale in %s", path,
                           tensor, name, key);
        aq->scale = (float)v;
    }
    if (mode == QL_ACT_LLM_INT8) {
        act_key(key, sizeof key, QL_ACT_KEY_THRESHOLD, tensor);
        if (ql_gguf_get(g, key)) {
            if (!ql_gguf_get_f64(g, key, &v) || !(v > 0) || !isfinite(v) || v > FLT_MAX)
                return ql_fail(QL_ERR_FORMAT, "%s: %s: outlier threshold is not a number > 0", path, key);
            aq->threshold = (float)v;
        }
    }
    *found = true;
    return QL_OK;
}

bool ql_act_mode_is_static(ql_act_mode m) { return m == QL_ACT_INT8_TENSOR || m == QL_ACT_FP8_TENSOR; }

ql_status ql_act_quant_init(ql_act_quant *aq, ql_act_mode mode, const float *absmax, int64_t n, float threshold) {
    memset(aq, 0, sizeof *aq);
    if (mode < 0 || mode >= QL_ACT_MODE_COUNT)
        return ql_fail(QL_ERR_ARG, "activation quantization: bad mode %d", mode);
    aq->mode = mode;
    aq->threshold = threshold > 0 ? threshold : QL_LLM_INT8_THRESHOLD;
    if (ql_act_mode_is_static(mode)) {
        if (!absmax)
            return ql_fail(QL_ERR_ARG, "activation quantization %s needs calibration statistics (absmax)",
                           MODE_NAMES[mode]);
        float amax = 0;
        for (int64_t j = 0; j < n; j++) amax = fmaxf(amax, absmax[j]);
        aq->scale = amax / (mode == QL_ACT_INT8_TENSOR ? 127.0f : 448.0f);
    }
    return QL_OK;
}

static inline float int8_round(float x, float d, float id) {
    float q = nearbyintf(x * id);
    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
    return q * d;
}

static inline float fp8_round(float x, float d, float id) {
    return ql_fp8_e4m3_to_f32(ql_f32_to_fp8_e4m3(x * id)) * d;
}

int ql_act_quant_apply(const ql_act_quant *aq, const float *x, float *y, int T, int K) {
    const size_t n = (size_t)T * K;
    const ql_act_mode mode = aq ? aq->mode : QL_ACT_NONE;
    switch (mode) {
    case QL_ACT_INT8_TENSOR:
    case QL_ACT_FP8_TENSOR: {
        const float d = aq->scale, id = d > 0 ? 1.0f / d : 0.0f;
        if (mode == QL_ACT_INT8_TENSOR)
            for (size_t i = 0; i < n; i++) y[i] = int8_round(x[i], d, id);
        else
            for (size_t i = 0; i < n; i++) y[i] = fp8_round(x[i], d, id);
        return 0;
    }
    case QL_ACT_INT8_TOKEN:
    case QL_ACT_FP8_TOKEN: {
        const float qmax = mode == QL_ACT_INT8_TOKEN ? 127.0f : 448.0f;
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * K;
            float *yr = y + (size_t)t * K, amax = 0;
            for (int j = 0; j < K; j++) amax = fmaxf(amax, fabsf(xr[j]));
            const float d = amax / qmax, id = amax > 0 ? qmax / amax : 0.0f;
            if (mode == QL_ACT_INT8_TOKEN)
                for (int j = 0; j < K; j++) yr[j] = int8_round(xr[j], d, id);
            else
                for (int j = 0; j < K; j++) yr[j] = fp8_round(xr[j], d, id);
        }
        return 0;
    }
    case QL_ACT_LLM_INT8: {
        /* outlier columns: any |x| above the threshold anywhere in this batch (bitsandbytes' rule) */
        const float thr = aq->threshold > 0 ? aq->threshold : QL_LLM_INT8_THRESHOLD;
        unsigned char *out = ql_calloc((size_t)K, 1);
        int n_out = 0;
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * K;
            for (int j = 0; j < K; j++)
                if (!out[j] && fabsf(xr[j]) > thr) {
                    out[j] = 1;
                    n_out++;
                }
        }
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * K;
            float *yr = y + (size_t)t * K, amax = 0;
            for (int j = 0; j < K; j++)
                if (!out[j]) amax = fmaxf(amax, fabsf(xr[j]));
            const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
            for (int j = 0; j < K; j++) yr[j] = out[j] ? xr[j] : int8_round(xr[j], d, id);
        }
        free(out);
        return n_out;
    }
    default:
        if (y != x) memmove(y, x, n * sizeof(float));
        return 0;
    }
}

