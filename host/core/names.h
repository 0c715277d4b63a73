/* Enum <-> name tables: one lookup for paths, predictions, grids, noise. */
#ifndef DFX_NAMES_H
#define DFX_NAMES_H

#include <string.h>

static inline const char *dfx_enum_name(const char *const *names, int n, int v)
{
    return (v >= 0 && v < n) ? names[v] : "?";
}

/* The index of `name` in names[0..n), or -1. */
static inline int dfx_enum_parse(const char *const *names, int n, const char *name)
{
    for (int i = 0; name && i < n; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

#endif
