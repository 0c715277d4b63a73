/* Errors as values: helpers that fill a dfx_error and return -1 / NULL. */
#ifndef DFX_ERROR_H
#define DFX_ERROR_H

#include "difflux.h"

#if defined(__GNUC__)
#define DFX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DFX_PRINTF(a, b)
#endif

/* Sets the message (if err is not NULL) and returns -1. */
int dfx_fail(dfx_error *err, const char *fmt, ...) DFX_PRINTF(2, 3);
/* Prefixes an existing message with more context, returns -1. */
int dfx_fail_prefix(dfx_error *err, const char *fmt, ...) DFX_PRINTF(2, 3);

/* calloc that reports the size and purpose on failure. */
void *dfx_alloc(size_t n, size_t size, const char *what, dfx_error *err);

#endif
