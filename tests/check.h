/* Minimal test helpers: count failures, print where they happened. */
#ifndef DFX_TEST_CHECK_H
#define DFX_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_failures = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            check_failures++;                                                              \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

/* |a - b| <= tol */
#define CHECK_NEAR(a, b, tol, what)                                                        \
    CHECK(fabs((double)(a) - (double)(b)) <= (tol), "%s: %.10g vs %.10g (tol %.3g)", what, \
          (double)(a), (double)(b), (double)(tol))

#define CHECK_OK(call, err)                                                                \
    do {                                                                                   \
        if ((call) != 0) {                                                                 \
            check_failures++;                                                              \
            fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, (err).msg); \
        }                                                                                  \
    } while (0)

static inline int check_report(const char *name)
{
    if (check_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
