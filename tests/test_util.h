/* test_util.h — helpers shared by the cmocka tests: where ../shared is, temporary files, running cases
 * alone or in reverse (to prove no case depends on another's run order). */
#ifndef QL_TEST_UTIL_H
#define QL_TEST_UTIL_H
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Path of a file under the shared data folder ($QL_SHARED, else ../shared). When the folder is absent
 * altogether: false and a SKIP line, and the caller skips (skip(): reported as skipped, never as passed).
 * When the folder is there but the file is not, a reference has gone missing: the running test fails
 * here — a missing reference must never read as "nothing differed". */
static inline bool shared_path(char *buf, size_t cap, const char *rel) {
    const char *root = getenv("QL_SHARED");
    if (!root) root = "../shared";
    snprintf(buf, cap, "%s/%s", root, rel);
    struct stat st;
    if (stat(buf, &st) == 0) return true;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        printf("SKIP: %s not found (set QL_SHARED to the shared data folder)\n", root);
        return false;
    }
#ifdef fail_msg
    fail_msg("%s: missing from the shared folder %s (a reference file must exist)", buf, root);
#else
    fprintf(stderr, "FAIL: %s: missing from the shared folder %s (a reference file must exist)\n", buf, root);
    exit(1);
#endif
    return false;
}

#ifdef cmocka_unit_test
/* QL_TEST_FILTER=PATTERN runs only the matching cases (cmocka's filter, '*' and '?' wildcards);
 * QL_TEST_REVERSE=1 runs them last to first. Tests that keep a fixture call this before running a group. */
static inline void ql_test_order_from_env(struct CMUnitTest *t, size_t n) {
    const char *f = getenv("QL_TEST_FILTER");
    if (f && *f) cmocka_set_test_filter(f);
    const char *r = getenv("QL_TEST_REVERSE");
    if (r && *r == '1')
        for (size_t i = 0; i < n / 2; i++) {
            struct CMUnitTest x = t[i];
            t[i] = t[n - 1 - i];
            t[n - 1 - i] = x;
        }
}
#endif
#ifdef cmocka_unit_test
#include <dirent.h>
#include <unistd.h>
/* A fresh folder /tmp/qlab_test_TAG_XXXXXX (caller frees the name, or hands it to ql_test_rm_flat_dir). */
static inline char *ql_test_mkdtemp(const char *tag) {
    char buf[256];
    snprintf(buf, sizeof buf, "/tmp/qlab_test_%s_XXXXXX", tag);
    char *d = strdup(buf);
    assert_non_null(mkdtemp(d));
    return d;
}

/* Remove a fixture folder holding only files (fixtures are flat), and free its name. */
static inline void ql_test_rm_flat_dir(char *dir) {
    DIR *dd = opendir(dir);
    if (dd) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(dd))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(dd);
    }
    rmdir(dir);
    free(dir);
}
#endif
#endif
