/*
 * The affine model: f(x) = A x + b (tensors affine.A [D, D], affine.b [D],
 * D = C H W), read as the prediction the config declares. A tiny model with
 * known properties: its Jacobian is A, so the conservativeness diagnostics
 * have exact answers (MATH.md section 4), and the sampler tests get a field
 * that is not a gradient when A is not symmetric.
 */
#include "core/error.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct affine_impl {
    float *A, *b; /* backend */
} affine_impl;

static int affine_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                          dfx_error *err)
{
    (void)t;
    (void)err;
    affine_impl *a = m->impl;
    m->be->ops->linear(m->be, out, x, a->A, a->b, rows, (int)m->dim, (int)m->dim, 0);
    return 0;
}

/* The Jacobian is A: dout = A v. */
static int affine_jvp(dfx_model *m, const double *t, const float *x, const float *v, float *out,
                      float *dout, int rows, dfx_error *err)
{
    affine_impl *a = m->impl;
    if (affine_predict(m, t, x, out, rows, err)) return -1;
    m->be->ops->linear(m->be, dout, v, a->A, NULL, rows, (int)m->dim, (int)m->dim, 0);
    return 0;
}

static int affine_describe(const dfx_model *m, char *buf, size_t cap)
{
    return snprintf(buf, cap, "field        f(x) = A x + b, %zu x %zu, read as a %s prediction\n",
                    m->dim, m->dim, dfx_pred_name(m->cfg.prediction));
}

static void affine_destroy(dfx_model *m)
{
    affine_impl *a = m->impl;
    if (!a) return;
    if (a->A) m->be->ops->free(m->be, a->A);
    if (a->b) m->be->ops->free(m->be, a->b);
    free(a);
    m->impl = NULL;
}

static const dfx_model_vt affine_vt = {
    .predict = affine_predict,
    .describe = affine_describe,
    .destroy = affine_destroy,
    .jvp = affine_jvp,
};

int dfx_affine_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    if (m->dim > 8192)
        return dfx_fail(err, "%s: an affine model of dimension %zu is too large (at most 8192)",
                        f->path, m->dim);
    if (!m->be->ops->linear)
        return dfx_fail(err, "%s: the %s backend cannot run affine models yet", f->path,
                        m->be->name);
    affine_impl *a = dfx_alloc(1, sizeof *a, "affine", err);
    if (!a) return -1;
    m->impl = a;
    m->vt = &affine_vt;
    int64_t sa[2] = {(int64_t)m->dim, (int64_t)m->dim}, sb[1] = {(int64_t)m->dim};
    int rc = dfx_model_tensor(m, f, "affine.A", 2, sa, &a->A, err);
    if (rc == 0) rc = dfx_model_tensor(m, f, "affine.b", 1, sb, &a->b, err);
    m->info.n_params = m->dim * m->dim + m->dim;
    m->info.flops = 2.0 * (double)m->dim * (double)m->dim;
    return rc;
}
