/* test_util.h — helpers shared by the cmocka tests: where ../shared is, temporary files. */
#ifndef QL_TEST_UTIL_H
#define QL_TEST_UTIL_H
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Path of a file under the shared data folder ($QL_SHARED, else ../shared); false (and a SKIP line)
 * when it is absent, so tests say they skipped instead of passing silently. */
static inline bool shared_path(char *buf, size_t cap, const char *rel) {
    const char *root = getenv("QL_SHARED");
    snprintf(buf, cap, "%s/%s", root ? root : "../shared", rel);
    struct stat st;
    if (stat(buf, &st) != 0) {
        printf("SKIP: %s not found (set QL_SHARED to the shared data folder)\n", buf);
        return false;
    }
    return true;
}
#endif
