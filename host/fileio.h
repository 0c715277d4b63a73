/* Files written atomically: to a temporary name beside the target, renamed
 * into place only when everything was written, removed on failure. */
#ifndef DFX_FILEIO_H
#define DFX_FILEIO_H

#include <stdio.h>

#include "difflux.h"

typedef struct dfx_atomic {
    FILE *fp;
    char tmp[4096];
    char path[4096];
} dfx_atomic;

int dfx_atomic_open(dfx_atomic *a, const char *path, dfx_error *err);
/* Flushes, closes and renames; on any error removes the temporary file. */
int dfx_atomic_commit(dfx_atomic *a, dfx_error *err);
void dfx_atomic_abort(dfx_atomic *a);

#endif
