/* fmt_int_family.h — the list of INTn group formats, one X-macro, so format.c can declare and list
 * them and fmt_int.c define them without either spelling the family out. Expands where ql_format is
 * declared (formats/format.h). */
#ifndef QL_FMT_INT_FAMILY_H
#define QL_FMT_INT_FAMILY_H

/* The INTn group family as an X-macro: X(bits, group, suffix, sym, mse, description). format.c
 * uses it to declare and list ql_fmt_int{bits}_g{group}{suffix}; fmt_int.c to define them. */
#define QL_FMT_INT_VARIANTS(X, n, g)                                                                         \
    X(n, g, , 0, 0, "fp16 scale + " #n "-bit zero point")                                                    \
    X(n, g, _sym, 1, 0, "fp16 scale, symmetric")                                                             \
    X(n, g, _mse, 0, 1, "fp16 scale + " #n "-bit zero, MSE-searched clipping")                               \
    X(n, g, _sym_mse, 1, 1, "fp16 scale, symmetric, MSE-searched clipping")
#define QL_FMT_INT_GROUPS(X, n)                                                                              \
    QL_FMT_INT_VARIANTS(X, n, 32) QL_FMT_INT_VARIANTS(X, n, 64) QL_FMT_INT_VARIANTS(X, n, 128)               \
    QL_FMT_INT_VARIANTS(X, n, 256)
#define QL_FMT_INT_FAMILY(X)                                                                                 \
    QL_FMT_INT_GROUPS(X, 2) QL_FMT_INT_GROUPS(X, 3) QL_FMT_INT_GROUPS(X, 4) QL_FMT_INT_GROUPS(X, 5)          \
    QL_FMT_INT_GROUPS(X, 6) QL_FMT_INT_GROUPS(X, 8)
#define QL_FMT_INT_EXTERN(n, g, sfx, sym, mse, desc) extern const ql_format ql_fmt_int##n##_g##g##sfx;
#define QL_FMT_INT_REF(n, g, sfx, sym, mse, desc) &ql_fmt_int##n##_g##g##sfx,

#endif
