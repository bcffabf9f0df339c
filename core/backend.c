/* backend.c — the registry of forward-pass backends (see backend.h): one line per backend below. */
#include "core/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One line per backend: X(name) is `const ql_backend_ops ql_backend_<name>` in core/backend_<name>.c.
 * The first is the default. A backend that needs an optional toolkit wraps its line in that build's
 * #ifdef (e.g. QL_HAVE_CUDA). */
#define QL_BACKEND_LIST(X) \
    X(cpu)

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

const ql_backend_ops *ql_backend_default(void) {
    const char *env = getenv("QL_BACKEND");
    return env && *env ? ql_backend_find(env) : g_backends[0];
}
