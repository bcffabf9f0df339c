/* explain.c — the Catalogue's plain-words paragraphs: a format's comes from its traits entry
 * (ql_format.explain), a method's from its method registry entry (ql_method.explain). Text only; the
 * facts shown beside them (bits, block, needs) are read from the registries. */
#include "tui/jobs.h"
#include "methods/method.h"

#include <string.h>

/* The paragraph is a fact of the format's traits entry (formats/format.h); the summary stands in. */
const char *ql_tui_explain_format(const ql_format *f) {
    if (!f) return "";
    return f->explain ? f->explain : f->summary;
}

/* a method's plain words live in its registry entry (methods/m_*.c) */
const char *ql_tui_explain_method(const char *name) {
    const ql_method *m = ql_method_by_name(name);
    return m ? m->explain : NULL;
}
