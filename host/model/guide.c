/*
 * Guidance by a weaker model of the same data (dfx_model_set_guide;
 * "autoguidance", Karras et al. 2024, "Guiding a diffusion model with a bad
 * version of itself"): the model's native prediction P becomes
 * P_g + w (P - P_g), P_g the guide's prediction at the same (t, x) in the
 * same parametrisation on the same path. A less trained or smaller network
 * errs the way the model still does, only more, so w > 1 steps away from
 * those errors; w = 1 is the model alone. Every conversion between
 * predictions is affine in P with coefficients of the path alone, so the
 * mix is the same whichever prediction a sampler asks for (MATH.md
 * "Guidance by a weaker model"). Applied before the diagnostic
 * perturbation, to predictions, tangents and the dale samplers' field.
 */
#include "core/error.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *file_of(const dfx_model *m)
{
    return m->file[0] ? m->file : "model";
}

/* The path as text, for messages (buf "" on failure). */
static void path_text(const dfx_path *p, char *buf, size_t cap)
{
    buf[0] = 0;
    cJSON *j = dfx_path_to_json(p);
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    if (s) snprintf(buf, cap, "%s", s);
    free(s);
    cJSON_Delete(j);
}

int dfx_model_set_guide(dfx_model *m, dfx_model *guide, double w, dfx_error *err)
{
    if (dfx_model_generative(m, err)) return -1;
    if (!guide) {
        dfx_model_free(m->guide);
        m->guide = NULL;
        return 0;
    }
    if (guide == m || guide->guide)
        return dfx_fail(err, "%s: a guide must be another model, and not guided itself",
                        file_of(guide));
    if (dfx_model_generative(guide, err)) return dfx_fail_prefix(err, "guide");
    if (!isfinite(w)) return dfx_fail(err, "the guidance weight must be finite");
    const dfx_model_info *a = &m->info, *b = &guide->info;
    if (a->channels != b->channels || a->height != b->height || a->width != b->width)
        return dfx_fail(err, "guide %s makes %d x %d x %d images, the model %s %d x %d x %d",
                        file_of(guide), b->channels, b->height, b->width, file_of(m),
                        a->channels, a->height, a->width);
    if (!dfx_path_equal(&m->cfg.path, &guide->cfg.path)) {
        char pa[512], pb[512];
        path_text(&m->cfg.path, pa, sizeof pa);
        path_text(&guide->cfg.path, pb, sizeof pb);
        int same = m->cfg.path.family == guide->cfg.path.family;
        return dfx_fail(err,
                        "guide %s is on the path %s, the model %s on %s: guidance mixes "
                        "predictions of one path",
                        file_of(guide), same ? pb : dfx_path_name(guide->cfg.path.family),
                        file_of(m), same ? pa : dfx_path_name(m->cfg.path.family));
    }
    if (a->range_lo != b->range_lo || a->range_hi != b->range_hi)
        return dfx_fail(err, "guide %s has the data range [%g, %g], the model %s [%g, %g]",
                        file_of(guide), b->range_lo, b->range_hi, file_of(m), a->range_lo,
                        a->range_hi);
    dfx_model_free(m->guide);
    m->guide = guide;
    m->guide_w = w;
    return 0;
}

void dfx_guide_free(dfx_model *m)
{
    if (m->gbuf) m->be->ops->free(m->be, m->gbuf);
    free(m->gcoef);
    dfx_model_free(m->guide);
    m->gbuf = NULL;
    m->gcoef = NULL;
    m->guide = NULL;
    m->gcap_rows = 0;
}

/* The guide's buffers [2, rows, dim] and mixing weights, for up to rows. */
static int guide_reserve(dfx_model *m, int rows, dfx_error *err)
{
    if (rows <= m->gcap_rows) return 0;
    float *b = dfx_be_alloc(m->be, 2 * (size_t)rows * m->dim * sizeof(float),
                            "guide prediction buffers", err);
    double *c = b ? dfx_alloc(2 * (size_t)rows, sizeof(double), "guidance weights", err) : NULL;
    if (!c) {
        if (b) m->be->ops->free(m->be, b);
        return -1;
    }
    if (m->gbuf) m->be->ops->free(m->be, m->gbuf);
    free(m->gcoef);
    m->gbuf = b;
    m->gcoef = c;
    m->gcap_rows = rows;
    return 0;
}

size_t dfx_guide_scratch_bytes(const dfx_model *m, int rows)
{
    if (!m->guide) return 0;
    const size_t R = rows > 1 ? (size_t)rows : 1;
    return 2 * R * m->dim * sizeof(float) + 2 * R * sizeof(double) +
           dfx_model_scratch_bytes(m->guide, rows);
}

/* P = w P + (1 - w) G, row by row. */
static void mix(dfx_model *m, float *P, const float *G, int rows)
{
    for (int r = 0; r < rows; r++) {
        m->gcoef[r] = m->guide_w;
        m->gcoef[rows + r] = 1.0 - m->guide_w;
    }
    const float *xs[2] = {P, G};
    m->be->ops->lincomb(m->be, P, 2, xs, m->gcoef, NULL, rows, m->dim);
}

int dfx_guide_apply(dfx_model *m, const double *t, const float *x, float *P, const float *v,
                    float *dP, int rows, dfx_error *err)
{
    if (!m->guide) return 0;
    if (guide_reserve(m, rows, err)) return -1;
    dfx_model *g = m->guide;
    g->first_index = m->first_index;
    float *G = m->gbuf, *dG = m->gbuf + (size_t)rows * m->dim;
    int rc = v ? dfx_model_jvp(g, t, x, v, m->native, G, dG, rows, err)
               : dfx_model_eval(g, t, x, m->native, G, rows, err);
    if (rc) return dfx_fail_prefix(err, "guide");
    mix(m, P, G, rows);
    if (v) mix(m, dP, dG, rows);
    return 0;
}

int dfx_guide_hyvarinen(dfx_model *m, const double *t, const float *x, float *h, int rows,
                        dfx_error *err)
{
    if (!m->guide) return 0;
    if (guide_reserve(m, rows, err)) return -1;
    m->guide->first_index = m->first_index;
    /* h = grad_y log p - 1 is affine in the score with the offset -1 on both
     * sides, so the mix of the two h is the h of the mixed score */
    if (dfx_model_hyvarinen(m->guide, t, x, m->gbuf, rows, err))
        return dfx_fail_prefix(err, "guide");
    mix(m, h, m->gbuf, rows);
    return 0;
}
