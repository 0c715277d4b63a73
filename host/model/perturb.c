/*
 * The field perturbation of dfx_model_set_perturb (MATH.md 4.4): the
 * model's velocity v becomes v + lambda s(t) M eps, eps its noise
 * prediction; as eps = -s S, that is the score S + h(t) M S for a scalar
 * h(t) (-lambda s^2 over the velocity's coefficient of S), so for an
 * antisymmetric M no marginal moves. Scaled by s(t) eps rather than S
 * itself, the change of the velocity stays bounded at both ends (S + lambda
 * M S would turn an isotropic Gaussian infinitely fast at a = 0). In the
 * native prediction P (affine in eps and in the velocity at each t) the
 * change is Bv lambda s M eps, and along a tangent the same with the
 * tangent of eps. A diagnostic: it runs on the host (download, apply,
 * upload), whatever the backend.
 */
#include "core/error.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = {"none", "rot", "swap", "scale"};

const char *dfx_perturb_name(dfx_perturb kind)
{
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

int dfx_perturb_parse(const char *text, dfx_perturb *kind, double *lambda, dfx_error *err)
{
    const char *colon = strchr(text, ':');
    if (!colon) return dfx_fail(err, "expects KIND:LAMBDA (rot, swap or scale), got '%s'", text);
    size_t len = (size_t)(colon - text);
    int k = -1;
    for (int i = 1; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strlen(names[i]) == len && strncmp(text, names[i], len) == 0) k = i;
    if (k < 0)
        return dfx_fail(err, "unknown kind '%.*s' in '%s' (rot, swap or scale)", (int)len, text,
                        text);
    char *end;
    double v = strtod(colon + 1, &end);
    if (end == colon + 1 || *end || !isfinite(v))
        return dfx_fail(err, "expects a finite LAMBDA after the colon, got '%s'", text);
    *kind = (dfx_perturb)k;
    *lambda = v;
    return 0;
}

int dfx_model_set_perturb(dfx_model *m, dfx_perturb kind, double lambda, dfx_error *err)
{
    if (kind != DFX_PERTURB_NONE && m->logspace)
        return dfx_fail(err, "%s: the score perturbation is not offered on the dale path",
                        m->file[0] ? m->file : "model");
    if (kind != DFX_PERTURB_NONE && dfx_model_generative(m, err)) return -1;
    if ((unsigned)kind > DFX_PERTURB_SCALE || !isfinite(lambda))
        return dfx_fail(err, "score perturbation: bad kind or lambda");
    m->perturb = lambda == 0.0 ? DFX_PERTURB_NONE : kind;
    m->perturb_lambda = lambda;
    return 0;
}

void dfx_perturb_free(dfx_model *m)
{
    free(m->perturb_host);
    m->perturb_host = NULL;
    m->perturb_rows = 0;
}

/* out += c M s for one row of D values */
static void add_M(dfx_perturb kind, double c, const float *s, float *out, size_t D)
{
    if (kind == DFX_PERTURB_SCALE) {
        for (size_t j = 0; j < D; j++) out[j] += (float)(c * s[j]);
        return;
    }
    const double sign = kind == DFX_PERTURB_ROT ? -1.0 : 1.0;
    for (size_t j = 0; j + 1 < D; j += 2) {
        float a = s[j], b = s[j + 1];
        out[j] += (float)(c * sign * b);
        out[j + 1] += (float)(c * a);
    }
}

int dfx_perturb_apply(dfx_model *m, const double *t, const float *x, float *P, const float *v,
                      float *dP, int rows, dfx_error *err)
{
    if (m->perturb == DFX_PERTURB_NONE) return 0;
    const size_t D = m->dim, n = (size_t)rows * D, bytes = n * sizeof(float);
    if (rows > m->perturb_rows) {
        /* x, P, v, dP of the batch; eps and its change of one row */
        float *h = dfx_alloc(4 * n + 2 * D, sizeof(float), "perturbation", err);
        if (!h) return -1;
        free(m->perturb_host);
        m->perturb_host = h;
        m->perturb_rows = rows;
    }
    const size_t cap = (size_t)m->perturb_rows * D;
    float *hx = m->perturb_host, *hp = hx + cap, *hv = hp + cap, *hd = hv + cap,
          *e = hd + cap, *de = e + D;
    double *coef = malloc(6 * (size_t)rows * sizeof *coef);
    if (!coef) return dfx_fail(err, "out of memory for the perturbation's coefficients");
    double *Ae = coef, *Be = coef + rows, *Ce = coef + 2 * rows, *Av = coef + 3 * rows,
           *Bv = coef + 4 * rows, *Cv = coef + 5 * rows;
    dfx_backend *be = m->be;
    /* eps = Ae x + Be P + Ce; P = Av x + Bv velocity + Cv, so a change w
     * of the velocity is a change Bv w of P */
    int rc = dfx_model_convert_coefs(m, t, rows, m->native, DFX_PRED_EPS, Ae, Be, Ce, err);
    if (rc == 0)
        rc = dfx_model_convert_coefs(m, t, rows, DFX_PRED_VELOCITY, m->native, Av, Bv, Cv, err);
    if (rc) rc = dfx_fail_prefix(err, "--perturb");
    if (rc == 0) rc = be->ops->download(be, hx, x, bytes, err);
    if (rc == 0) rc = be->ops->download(be, hp, P, bytes, err);
    if (rc == 0 && dP) rc = be->ops->download(be, hv, v, bytes, err);
    if (rc == 0 && dP) rc = be->ops->download(be, hd, dP, bytes, err);
    for (int r = 0; rc == 0 && r < rows; r++) {
        dfx_coef pc;
        dfx_path_eval(&m->cfg.path, t[r], &pc);
        const size_t o = (size_t)r * D;
        const double c = m->perturb_lambda * pc.s * Bv[r];
        for (size_t j = 0; j < D; j++) e[j] = (float)(Ae[r] * hx[o + j] + Be[r] * hp[o + j] + Ce[r]);
        if (dP)
            for (size_t j = 0; j < D; j++) de[j] = (float)(Ae[r] * hv[o + j] + Be[r] * hd[o + j]);
        add_M(m->perturb, c, e, hp + o, D);
        if (dP) add_M(m->perturb, c, de, hd + o, D);
    }
    free(coef);
    if (rc == 0) rc = be->ops->upload(be, P, hp, bytes, err);
    if (rc == 0 && dP) rc = be->ops->upload(be, dP, hd, bytes, err);
    return rc;
}
