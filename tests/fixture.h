/* The PyTorch fixtures of tests/fixtures (models/difflux_ref/make_fixtures.py):
 * a model file NAME.safetensors and its inputs/outputs NAME.SUFFIX.safetensors. */
#ifndef DFX_TEST_FIXTURE_H
#define DFX_TEST_FIXTURE_H

#include "check.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <stdlib.h>

/* Tensor `name` of f as float32 (malloc'd), its element count in *n. */
static float *fixture_tensor(dfx_st_file *f, const char *name, size_t *n)
{
    dfx_error err;
    const dfx_st_tensor *t = dfx_st_get(f, name, -1, NULL, &err);
    if (!t) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    float *v = malloc(t->numel * sizeof *v);
    if (!v) return NULL;
    dfx_st_to_f32(f, t, v);
    *n = t->numel;
    return v;
}

/* Loads fixture `name` on be and opens its NAME.SUFFIX file into *f;
 * NULL (a failed check recorded) when either fails. */
static dfx_model *fixture_open(dfx_backend *be, const char *name, const char *suffix,
                               dfx_st_file *f)
{
    char mpath[512], iopath[512];
    snprintf(mpath, sizeof mpath, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    snprintf(iopath, sizeof iopath, "%s/fixtures/%s.%s.safetensors", DFX_TEST_DATA, name, suffix);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(mpath, be, &err);
    CHECK(m != NULL, "%s: %s", name, err.msg);
    if (!m || dfx_st_open(f, iopath, &err)) {
        CHECK(0, "%s: %s", name, err.msg);
        dfx_model_free(m);
        return NULL;
    }
    return m;
}

#endif
