/* fmt_exl2_list.h — the indices of the EXL2 registry entries (formats/fmt_exl2.c) as an X-macro, so
 * format.c can declare and list them without depending on fmt_exl2.h (as fmt_int_family.h does for INTn). */
#ifndef QL_FMT_EXL2_LIST_H
#define QL_FMT_EXL2_LIST_H

/* The registry entries ql_fmt_exl2_0 .. _44 (fmt_exl2.c's table), for format.c's list. */
#define QL_FMT_EXL2_LIST(X) \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) \
    X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24) X(25) X(26) X(27) X(28) X(29) \
    X(30) X(31) X(32) X(33) X(34) X(35) X(36) X(37) X(38) X(39) X(40) X(41) X(42) X(43) X(44)

#endif
