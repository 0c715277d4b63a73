#define _POSIX_C_SOURCE 200809L
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int dfx_fail(dfx_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int dfx_fail_prefix(dfx_error *err, const char *fmt, ...)
{
    if (err) {
        const size_t cap = sizeof err->msg;
        char old[sizeof err->msg];
        memcpy(old, err->msg, cap);
        old[cap - 1] = 0;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->msg, cap, fmt, ap);
        va_end(ap);
        size_t used = n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
        size_t len = strlen(old);
        if (used + 2 + len >= cap) len = cap > used + 3 ? cap - used - 3 : 0;
        if (used + 2 < cap) {
            memcpy(err->msg + used, ": ", 2);
            memcpy(err->msg + used + 2, old, len);
            err->msg[used + 2 + len] = 0;
        }
    }
    return -1;
}

double dfx_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *dfx_alloc(size_t n, size_t size, const char *what, dfx_error *err)
{
    if (n == 0) n = 1;
    if (size && n > (size_t)-1 / size) {
        dfx_fail(err, "%s: size overflow (%zu x %zu bytes)", what, n, size);
        return NULL;
    }
    void *p = calloc(n, size);
    if (!p) dfx_fail(err, "%s: out of memory (%zu bytes)", what, n * size);
    return p;
}
