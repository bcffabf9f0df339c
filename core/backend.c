/* backend.c — the registry of forward-pass backends (see backend.h): one line per backend below; which one a
 * command runs on (--device, $QL_BACKEND, the automatic choice). */
#include "core/backend.h"
#include "base/dist.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One line per backend: X(name) is `const ql_backend_ops ql_backend_<name>` in core/backend_<name>.c.
 * The first is the default. A backend that needs an optional toolkit wraps its line in that build's
 * #ifdef (e.g. QL_HAVE_CUDA). */
#ifdef QL_HAVE_CUDA
#define QL_BACKEND_IF_CUDA(X) X(cuda)
#else
#define QL_BACKEND_IF_CUDA(X)
#endif
#define QL_BACKEND_LIST(X) \
    X(cpu) QL_BACKEND_IF_CUDA(X)

#define QL_DECLARE_BACKEND(n) extern const ql_backend_ops ql_backend_##n;
QL_BACKEND_LIST(QL_DECLARE_BACKEND)
#undef QL_DECLARE_BACKEND

#define QL_BACKEND_ENTRY(n) &ql_backend_##n,
static const ql_backend_ops *const g_backends[] = {QL_BACKEND_LIST(QL_BACKEND_ENTRY)};
#undef QL_BACKEND_ENTRY

int ql_backend_count(void) { return (int)QL_ARRAY_LEN(g_backends); }

const ql_backend_ops *ql_backend_at(int i) {
    return i >= 0 && i < ql_backend_count() ? g_backends[i] : NULL;
}

const ql_backend_ops *ql_backend_find(const char *name) {
    char known[256] = "";
    size_t used = 0;
    for (int i = 0; i < ql_backend_count(); i++) {
        if (name && strcmp(g_backends[i]->name, name) == 0) return g_backends[i];
        int w = snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "", g_backends[i]->name);
        if (w > 0 && (size_t)w < sizeof known - used) used += (size_t)w;
    }
    ql_fail(QL_ERR_ARG, "unknown backend '%s' (known: %s)", name ? name : "", known);
    return NULL;
}

/* Backends a build may lack, and what brings them into it: the refusal of --device NAME says so. */
static const struct {
    const char *name, *needs;
} g_optional[] = {
#ifdef QL_HAVE_CUDA
    {"cuda", "this build has the CUDA kernels but no CUDA forward-pass backend (core/backend_cuda.c)"},
#else
    {"cuda", "this qlab was built without CUDA (no nvcc found when it was built)"},
#endif
};

static const ql_backend_ops *g_selected; /* --device */
static int g_device;
static bool g_auto;
static const ql_backend_ops *g_auto_choice;
static pthread_once_t g_auto_once = PTHREAD_ONCE_INIT;

static void choose_auto(void) {
    g_auto_choice = g_backends[0];
    for (int i = 0; i < ql_backend_count(); i++)
        if (g_backends[i]->device_count && g_backends[i]->device_count() > 0) {
            g_auto_choice = g_backends[i];
            g_device = ql_dist_local_rank() % g_backends[i]->device_count();
            break;
        }
}

const ql_backend_ops *ql_backend_default(void) {
    if (g_selected) return g_selected;
    const char *env = getenv("QL_BACKEND");
    if (env && *env) return ql_backend_find(env);
    if (!g_auto) return g_backends[0];
    pthread_once(&g_auto_once, choose_auto);
    return g_auto_choice;
}

void ql_backend_set_auto(bool on) { g_auto = on; }

bool ql_backend_is_auto(void) {
    const char *env = getenv("QL_BACKEND");
    return !g_selected && !(env && *env) && g_auto;
}
int ql_backend_device(void) { return g_device; }

ql_status ql_backend_select(const char *spec) {
    char name[64];
    const char *colon = strchr(spec, ':');
    size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
    if (!len || len >= sizeof name) return ql_fail(QL_ERR_ARG, "--device '%s': expected cpu, cuda or cuda:N", spec);
    memcpy(name, spec, len);
    name[len] = 0;
    int index = -1;
    if (colon) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (!isdigit((unsigned char)colon[1]) || *end || v > 4096)
            return ql_fail(QL_ERR_ARG, "--device '%s': the device index is a number (cuda:0, cuda:1, ...)", spec);
        index = (int)v;
    }
    const ql_backend_ops *b = NULL;
    for (int i = 0; i < ql_backend_count() && !b; i++)
        if (!strcmp(g_backends[i]->name, name)) b = g_backends[i];
    if (!b) {
        for (size_t i = 0; i < QL_ARRAY_LEN(g_optional); i++)
            if (!strcmp(g_optional[i].name, name))
                return ql_fail(QL_ERR_UNSUPPORTED, "--device %s: %s; --device cpu runs everywhere", spec,
                               g_optional[i].needs);
        ql_backend_find(name); /* the message naming the known backends */
        return ql_fail(QL_ERR_ARG, "--device %s: %s", spec, ql_last_error());
    }
    if (b->device_count) {
        int n = b->device_count();
        if (n <= 0) return ql_fail(QL_ERR_UNSUPPORTED, "--device %s: no %s device on this machine (%s)", spec, b->name,
                                   ql_last_error());
        if (index >= n)
            return ql_fail(QL_ERR_ARG, "--device %s: this machine has %d %s device%s (%s:0..%s:%d)", spec, n, b->name,
                           n == 1 ? "" : "s", b->name, b->name, n - 1);
        if (index < 0) index = ql_dist_local_rank() % n; /* one GPU per rank of a node when it has several */
        char var[96], val[16];
        snprintf(var, sizeof var, "QL_%s_DEVICE", b->name);
        for (char *p = var; *p; p++) *p = (char)toupper((unsigned char)*p);
        snprintf(val, sizeof val, "%d", index);
        setenv(var, val, 1); /* for a backend that reads its device from the environment */
    } else if (index > 0)
        return ql_fail(QL_ERR_ARG, "--device %s: the %s backend runs on the host; it has no device %d", spec, b->name,
                       index);
    g_selected = b;
    g_device = index < 0 ? 0 : index;
    return QL_OK;
}

const char *ql_backend_describe(char *buf, size_t cap) {
    const ql_backend_ops *b = ql_backend_default();
    if (!b) snprintf(buf, cap, "?");
    else if (b->device_count) snprintf(buf, cap, "%s:%d", b->name, g_device);
    else snprintf(buf, cap, "%s", b->name);
    return buf;
}
