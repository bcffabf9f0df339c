/* fmt_aqlm.h — what the AQLM entries of the format registry (formats/fmt_aqlm.c) tell the rest of qlab:
 * the number of codebooks M and bits per code B of an entry, so the AQLM method and the catalogue read the
 * scheme from the entry instead of from its name. */
#ifndef QL_FMT_AQLM_H
#define QL_FMT_AQLM_H

#include "formats/format.h"

/* true (and *M, *B) when f is an AQLM entry; any out pointer may be NULL. */
bool ql_aqlm_format_params(const ql_format *f, int *M, int *B);

#endif
