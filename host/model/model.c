/* Model loading (the table of kinds), description and evaluation: the
 * native prediction of any kind, converted into what the sampler asks
 * for. */
#include "model/model.h"
#include "core/error.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

dfx_model *dfx_model_new(dfx_backend *be, const dfx_model_config *cfg, dfx_error *err)
{
    dfx_model *m = dfx_alloc(1, sizeof *m, "model", err);
    if (!m) return NULL;
    m->be = be;
    m->cfg = *cfg;
    m->dim = (size_t)cfg->channels * (size_t)cfg->height * (size_t)cfg->width;
    dfx_model_info *i = &m->info;
    i->kind = m->cfg.kind;
    i->path = cfg->path;
    i->prediction = cfg->prediction;
    m->native = cfg->prediction;
    m->logspace = cfg->path.family == DFX_PATH_DALE;
    i->channels = cfg->channels;
    i->height = cfg->height;
    i->width = cfg->width;
    i->range_lo = cfg->range_lo;
    i->range_hi = cfg->range_hi;
    i->dataset = m->cfg.dataset;
    i->description = m->cfg.description;
    i->training = m->cfg.training;
    i->guide = m->cfg.guide_file;
    i->guide_weight = m->cfg.guide_weight;
    return m;
}

/* The model kinds: config "kind" and the function that loads one. A new
 * kind is a file with its load function and table of functions
 * (dfx_model_vt), and a line here. */
static const struct {
    const char *name;
    int (*load)(dfx_model *m, dfx_st_file *f, dfx_error *err);
} kinds[] = {
    {"gmm", dfx_gmm_load},
    {"unet", dfx_unet_load},
    {"affine", dfx_affine_load},
    {"classifier", dfx_classifier_load},
    {"diffusers", dfx_diffusers_unet_load},
};
#define NKINDS ((int)(sizeof kinds / sizeof kinds[0]))

/* Loads m as the kind its config names. */
static int load_kind(dfx_model *m, dfx_st_file *f, const char *file, dfx_error *err)
{
    for (int i = 0; i < NKINDS; i++)
        if (strcmp(m->cfg.kind, kinds[i].name) == 0) return kinds[i].load(m, f, err);
    char known[256] = "";
    size_t n = 0;
    for (int i = 0; i < NKINDS && n < sizeof known; i++)
        n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", i ? ", " : "", kinds[i].name);
    return dfx_fail(err, "%s: unknown model kind '%s' (this build knows: %s)", file, m->cfg.kind,
                    known);
}

/* The model of an opened file (a path or a buffer), which it closes; with
 * its own config, or with `config` (JSON text) where given. */
static dfx_model *load_opened(dfx_st_file *f, const char *file, const char *config,
                              dfx_backend *be, dfx_error *err)
{
    dfx_model *m = NULL;
    dfx_model_config cfg;
    if (!config && (!f->format || strcmp(f->format, "difflux") != 0)) {
        dfx_fail(err, "%s: not a difflux model (__metadata__.format is not \"difflux\")", file);
        goto done;
    }
    if (dfx_config_parse(&cfg, config ? config : f->config, file, err) != 0) goto done;
    m = dfx_model_new(be, &cfg, err);
    if (!m) {
        dfx_config_free(&cfg);
        goto done;
    }
    snprintf(m->file, sizeof m->file, "%s", file);
    int rc = load_kind(m, f, file, err);
    if (rc == 0 && cfg.start_full) {
        /* the Gaussian fitted to the path's noise end, full covariance */
        int64_t sm[1] = {(int64_t)m->dim}, ss[2] = {(int64_t)m->dim, (int64_t)m->dim};
        rc = dfx_model_tensor(m, f, "start.mean", 1, sm, &m->start_mean, err);
        if (rc == 0) rc = dfx_model_tensor(m, f, "start.scale", 2, ss, &m->start_scale, err);
        if (rc == 0 && !be->ops->linear)
            rc = dfx_fail(err, "%s: the %s backend cannot draw a full-covariance start", file,
                          be->name);
    }
    if (rc == 0) rc = dfx_st_check_all_used(f, err);
    if (rc == 0 && m->logspace && !m->analytic) {
        /* a network on the dale path sees x = exp(y) and predicts either the
         * ambient score grad_x log p ("score"; x grad_x log p + 1 is the
         * score in y) or the noise of the VE path in y ("eps") */
        if (cfg.prediction != DFX_PRED_SCORE && cfg.prediction != DFX_PRED_EPS)
            rc = dfx_fail(err,
                          "%s: a network on the dale path must predict \"score\" (grad_x log "
                          "p) or \"eps\" (the noise in log space)",
                          file);
        m->native = cfg.prediction;
    }
    if (rc != 0) {
        dfx_model_free(m);
        m = NULL;
    }
done:
    dfx_st_close(f);
    return m;
}

dfx_model *dfx_model_load(const char *file, dfx_backend *be, dfx_error *err)
{
    if (dfx_diffusers_looks(file, 0)) return dfx_model_load_diffusers(file, NULL, be, err);
    dfx_st_file f;
    if (dfx_st_open(&f, file, err) != 0) return NULL;
    if ((!f.format || strcmp(f.format, "difflux") != 0) && dfx_diffusers_looks(file, 1)) {
        dfx_st_close(&f);
        return dfx_model_load_diffusers(file, NULL, be, err);
    }
    return load_opened(&f, file, NULL, be, err);
}

dfx_model *dfx_model_load_as(const char *weights, const char *config, const char *name,
                             dfx_backend *be, dfx_error *err)
{
    dfx_st_file f;
    if (dfx_st_open(&f, weights, err) != 0) return NULL;
    return load_opened(&f, name, config, be, err);
}

dfx_model *dfx_model_load_diffusers(const char *path, const char *scheduler, dfx_backend *be,
                                    dfx_error *err)
{
    char weights[2048], *cfg = NULL;
    if (dfx_diffusers_config(path, scheduler, &cfg, weights, sizeof weights, err)) return NULL;
    dfx_model *m = dfx_model_load_as(weights, cfg, path, be, err);
    free(cfg);
    return m;
}

dfx_model *dfx_model_load_mem(const void *buf, size_t size, const char *name, dfx_backend *be,
                              dfx_error *err)
{
    dfx_st_file f;
    if (dfx_st_open_mem(&f, buf, size, name, err) != 0) return NULL;
    return load_opened(&f, name, NULL, be, err);
}

int dfx_model_tensor(dfx_model *m, dfx_st_file *f, const char *name, int ndim,
                     const int64_t *shape, float **dev, dfx_error *err)
{
    const dfx_st_tensor *t = dfx_st_get(f, name, ndim, shape, err);
    if (!t) return -1;
    float *h = dfx_alloc(t->numel, sizeof(float), name, err);
    if (!h) return -1;
    dfx_st_to_f32(f, t, h);
    int rc = 0;
    for (size_t i = 0; i < t->numel && rc == 0; i++)
        if (!isfinite(h[i]))
            rc = dfx_fail(err, "%s: tensor '%s' holds a NaN or Inf at element %zu", f->path, name,
                          i);
    if (rc == 0) {
        *dev = dfx_be_alloc(m->be, t->numel * sizeof(float), name, err);
        rc = *dev ? m->be->ops->upload(m->be, *dev, h, t->numel * sizeof(float), err) : -1;
    }
    free(h);
    return rc;
}

void dfx_model_free(dfx_model *m)
{
    if (!m) return;
    if (m->vt && m->vt->destroy) m->vt->destroy(m);
    if (m->pred) m->be->ops->free(m->be, m->pred);
    if (m->xbuf) m->be->ops->free(m->be, m->xbuf);
    if (m->jbuf) m->be->ops->free(m->be, m->jbuf);
    if (m->start_mean) m->be->ops->free(m->be, m->start_mean);
    if (m->start_scale) m->be->ops->free(m->be, m->start_scale);
    free(m->coef);
    dfx_perturb_free(m);
    dfx_guide_free(m);
    dfx_config_free(&m->cfg);
    free(m);
}

const dfx_model_info *dfx_model_get_info(const dfx_model *m)
{
    return &m->info;
}

int dfx_model_profile(dfx_model *m, int enable, const dfx_profile_entry **list)
{
    if (!m->vt->profile) {
        if (list) *list = NULL;
        return 0;
    }
    return m->vt->profile(m, enable, list);
}

int dfx_model_generative(const dfx_model *m, dfx_error *err)
{
    if (dfx_classifier_dims(m, NULL, NULL) != 0) return 0;
    return dfx_fail(err, "%s is a classifier (the feature network of difflux eval), not a "
                         "generative model: give --model a model to sample",
                    m->file);
}

int dfx_model_set_class(dfx_model *m, int cls, double guidance, dfx_error *err)
{
    if (dfx_model_generative(m, err)) return -1;
    /* a conditional guide follows the model's class */
    if (m->guide && m->guide->vt->set_class &&
        m->guide->vt->set_class(m->guide, cls, guidance, err))
        return dfx_fail_prefix(err, "guide");
    if (m->vt->set_class) return m->vt->set_class(m, cls, guidance, err);
    if (cls == DFX_CLASS_NONE && guidance == 1.0) return 0;
    return dfx_fail(err, "%s: a %s model takes no class (--class/--guidance)",
                    m->file[0] ? m->file : "model", m->cfg.kind);
}

int dfx_model_set_path(dfx_model *m, const dfx_path *p, dfx_error *err)
{
    if (!m->analytic)
        return dfx_fail(err,
                        "%s: a %s model was trained on the %s path and cannot be sampled on "
                        "another one",
                        m->file, m->cfg.kind, dfx_path_name(m->cfg.path.family));
    if (m->guide)
        return dfx_fail(err, "%s: the path of a guided model is the guide's too: choose it "
                             "before dfx_model_set_guide",
                        m->file[0] ? m->file : "model");
    if ((p->family == DFX_PATH_DISCRETE) != (m->cfg.path.family == DFX_PATH_DISCRETE))
        return dfx_fail(err,
                        "%s: the discrete path comes with a diffusers schedule; it cannot be "
                        "chosen for or taken from a model by name",
                        m->file[0] ? m->file : "model");
    if ((p->family == DFX_PATH_DALE) != (m->cfg.path.family == DFX_PATH_DALE))
        return dfx_fail(err,
                        "%s: the dale path works in log space, so a mixture defined for the "
                        "%s path cannot move to %s (build one for it with make-gmm --path)",
                        m->file[0] ? m->file : "model", dfx_path_name(m->cfg.path.family),
                        dfx_path_name(p->family));
    m->cfg.path = *p;
    m->info.path = *p;
    return 0;
}

static size_t path_desc(char *buf, size_t cap, const dfx_path *p)
{
    switch (p->family) {
    case DFX_PATH_VP:
        return (size_t)snprintf(buf, cap, "vp (beta_min %g, beta_max %g)", p->beta_min,
                                p->beta_max);
    case DFX_PATH_VP_COSINE:
        return (size_t)snprintf(buf, cap, "vp_cosine (s %g)", p->cosine_s);
    case DFX_PATH_VE:
        return (size_t)snprintf(buf, cap, "ve (sigma %g .. %g)", p->sigma_min, p->sigma_max);
    case DFX_PATH_DALE:
        return (size_t)snprintf(buf, cap, "dale (multiplicative, sigma %g, mu %g)",
                                p->dale_sigma, p->dale_mu);
    case DFX_PATH_DISCRETE:
        return (size_t)snprintf(buf, cap,
                                "discrete (%d timesteps, abar %.3g .. %.3g, %s spacing%s, "
                                "offset %d, final abar %s)",
                                p->n_train, exp(p->log_abar[0]), exp(p->log_abar[p->n_train - 1]),
                                dfx_spacing_name(p->spacing),
                                p->dpm_timesteps ? " as DPM-Solver" : "", p->steps_offset,
                                p->final_one ? "1" : "abar_0");
    default:
        return (size_t)snprintf(buf, cap, "%s", dfx_path_name(p->family));
    }
}

int dfx_model_describe(const dfx_model *m, char *buf, size_t cap)
{
    const dfx_model_info *i = &m->info;
    char pd[256], field[448], start[1536] = "";
    path_desc(pd, sizeof pd, &i->path);
    double tn, td;
    dfx_path_default_range(&i->path, &tn, &td);
    if (dfx_classifier_dims(m, NULL, NULL) == 0)
        snprintf(field, sizeof field, "output       features and class logits (no path)\n");
    else
        snprintf(field, sizeof field,
                 "path         %s, data at t = %d, sampled from t = %g to %g\n"
                 "prediction   %s\n",
                 pd, dfx_path_data_at_one(&i->path), tn, td, dfx_pred_name(i->prediction));
    if (m->cfg.has_start && m->cfg.start_full)
        snprintf(start, sizeof start,
                 "start        fitted Gaussian, full %zu x %zu covariance (per value: mean %g, "
                 "std %g)\n",
                 m->dim, m->dim, m->cfg.start_mean, m->cfg.start_std);
    else if (m->cfg.has_start)
        snprintf(start, sizeof start, "start        fitted N(%g, %g^2) per value\n",
                 m->cfg.start_mean, m->cfg.start_std);
    if (m->cfg.guide_file[0]) {
        size_t l = strlen(start);
        snprintf(start + l, sizeof start - l,
                 "guide        %s, weight %g (sampling's default; --guide-model none: without)\n",
                 m->cfg.guide_file, m->cfg.guide_weight);
    }
    if (i->path.family == DFX_PATH_DALE) {
        size_t l = strlen(start);
        snprintf(start + l, sizeof start - l,
                 "paper recipe the Dale paper's %s tuning (--recipe paper: its start, delta, L "
                 "and annealing)\n",
                 m->cfg.paper_recipe[0] ? m->cfg.paper_recipe : "mnist");
    }
    int n = snprintf(buf, cap,
                     "file         %s\n"
                     "kind         %s\n"
                     "image        %d x %d x %d (channels x height x width)\n"
                     "data range   [%g, %g] (shown as black .. white)\n"
                     "%s%s"
                     "parameters   %zu\n"
                     "FLOPs/eval   %.4g per sample\n"
                     "dataset      %s\n"
                     "description  %s\n"
                     "training     %s\n",
                     m->file[0] ? m->file : "(in memory)", i->kind, i->channels, i->height,
                     i->width, i->range_lo, i->range_hi, field, start, i->n_params, i->flops,
                     i->dataset[0] ? i->dataset : "-",
                     i->description[0] ? i->description : "-",
                     i->training[0] ? i->training : "-");
    if (n < 0 || (size_t)n >= cap) return n;
    if (m->vt && m->vt->describe) n += m->vt->describe(m, buf + n, cap - (size_t)n);
    return n;
}

size_t dfx_model_scratch_bytes(const dfx_model *m, int rows)
{
    const size_t R = rows > 1 ? (size_t)rows : 1, row = m->dim * sizeof(float);
    /* dfx_model_reserve: the prediction, the conversion coefficients, exp(y) */
    size_t bytes = R * row + R * 3 * sizeof(double) + (m->logspace ? R * row : 0);
    /* the kind's reserve (the networks' plans; the other kinds' scratch is
     * O(rows) on the host) */
    if (m->vt->scratch_bytes) bytes += m->vt->scratch_bytes(m, (int)R);
    return bytes + dfx_guide_scratch_bytes(m, (int)R);
}

int dfx_model_reserve(dfx_model *m, int rows, dfx_error *err)
{
    if (m->vt->reserve && m->vt->reserve(m, rows, err)) return -1;
    if (m->guide && dfx_model_reserve(m->guide, rows, err)) return -1;
    if (rows <= m->cap_rows) return 0;
    float *p = dfx_be_alloc(m->be, (size_t)rows * m->dim * sizeof(float), "prediction buffer",
                            err);
    if (!p) return -1;
    double *c = dfx_alloc((size_t)rows * 3, sizeof(double), "conversion coefficients", err);
    float *xb = NULL;
    if (c && m->logspace)
        xb = dfx_be_alloc(m->be, (size_t)rows * m->dim * sizeof(float), "log-space buffer", err);
    if (!c || (m->logspace && !xb)) {
        m->be->ops->free(m->be, p);
        free(c);
        return -1;
    }
    if (m->pred) m->be->ops->free(m->be, m->pred);
    if (m->xbuf) m->be->ops->free(m->be, m->xbuf);
    free(m->coef);
    m->pred = p;
    m->coef = c;
    m->xbuf = xb;
    m->cap_rows = rows;
    return 0;
}

static int predict_native(dfx_model *m, const double *t, const float *x, float *out, int rows,
                          dfx_error *err)
{
    if (!m->logspace || m->analytic) return m->vt->predict(m, t, x, out, rows, err);
    /* network on x = exp(y); an ambient score becomes grad_y log p =
     * x grad_x log p + 1, an eps prediction is already in y */
    if (dfx_model_reserve(m, rows, err)) return -1;
    size_t n = (size_t)rows * m->dim;
    m->be->ops->unary(m->be, m->xbuf, x, n, DFX_FN_EXP);
    if (m->vt->predict(m, t, m->xbuf, out, rows, err)) return -1;
    if (m->native == DFX_PRED_SCORE) m->be->ops->mul_add(m->be, out, m->xbuf, out, 1.0, n);
    return 0;
}

int dfx_model_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                      dfx_error *err)
{
    if (predict_native(m, t, x, out, rows, err)) return -1;
    if (dfx_guide_apply(m, t, x, out, NULL, NULL, rows, err)) return -1;
    return dfx_perturb_apply(m, t, x, out, NULL, NULL, rows, err);
}

int dfx_model_hyvarinen(dfx_model *m, const double *t, const float *x, float *h, int rows,
                        dfx_error *err)
{
    if (!m->logspace)
        return dfx_fail(err, "multiplicative samplers need a model on the dale path");
    if (dfx_model_reserve(m, rows, err)) return -1;
    size_t n = (size_t)rows * m->dim;
    dfx_backend *be = m->be;
    if (!m->analytic && m->native == DFX_PRED_SCORE) {
        if (m->vt->predict(m, t, x, h, rows, err)) return -1;
        be->ops->mul_add(be, h, x, h, 0.0, n);
        return dfx_guide_hyvarinen(m, t, x, h, rows, err);
    }
    /* analytic models live in y = log x, eps networks predict in y (from
     * x): h = grad_y log p - 1 */
    be->ops->unary(be, m->xbuf, x, n, DFX_FN_LOG);
    if (m->vt->predict(m, t, m->analytic ? m->xbuf : x, m->pred, rows, err)) return -1;
    if (dfx_model_convert(m, t, m->xbuf, m->pred, m->native, DFX_PRED_SCORE, h, rows, err))
        return -1;
    const float *xs[1] = {h};
    for (int r = 0; r < rows; r++) {
        m->coef[r] = 1.0;
        m->coef[rows + r] = -1.0;
    }
    be->ops->lincomb(be, h, 1, xs, m->coef, m->coef + rows, rows, m->dim);
    return dfx_guide_hyvarinen(m, t, x, h, rows, err);
}

int dfx_model_convert_coefs(const dfx_model *m, const double *t, int rows, dfx_pred from,
                            dfx_pred to, double *A, double *B, double *C, dfx_error *err)
{
    for (int r = 0; r < rows; r++) {
        dfx_coef c;
        dfx_path_eval(&m->cfg.path, t[r], &c);
        if (dfx_convert_coefs(&c, from, to, &A[r], &B[r], &C[r], err) != 0)
            return dfx_fail_prefix(err, "t = %g on the %s path", t[r],
                                   dfx_path_name(m->cfg.path.family));
    }
    return 0;
}

int dfx_model_convert(dfx_model *m, const double *t, const float *x, const float *P,
                      dfx_pred from, dfx_pred to, float *out, int rows, dfx_error *err)
{
    if (dfx_model_reserve(m, rows, err) != 0) return -1;
    double *A = m->coef, *B = m->coef + rows, *C = m->coef + 2 * rows;
    if (dfx_model_convert_coefs(m, t, rows, from, to, A, B, C, err) != 0) return -1;
    const float *xs[2] = {x, P};
    m->be->ops->lincomb(m->be, out, 2, xs, m->coef, C, rows, m->dim);
    return 0;
}

int dfx_model_eval(dfx_model *m, const double *t, const float *x, dfx_pred want, float *out,
                   int rows, dfx_error *err)
{
    dfx_pred native = m->native;
    if (want == native) return dfx_model_predict(m, t, x, out, rows, err);
    if (dfx_model_reserve(m, rows, err) != 0) return -1;
    if (dfx_model_predict(m, t, x, m->pred, rows, err) != 0) return -1;
    return dfx_model_convert(m, t, x, m->pred, native, want, out, rows, err);
}

int dfx_model_eval_host(dfx_model *m, const double *t, const float *x, int rows, dfx_pred want,
                        float *out, dfx_error *err)
{
    dfx_backend *be = m->be;
    size_t bytes = (size_t)rows * m->dim * sizeof(float);
    float *dx = dfx_be_alloc(be, bytes, "model input", err);
    float *dy = dx ? dfx_be_alloc(be, bytes, "model output", err) : NULL;
    int rc = -1;
    if (dy && be->ops->upload(be, dx, x, bytes, err) == 0 &&
        dfx_model_eval(m, t, dx, want, dy, rows, err) == 0)
        rc = be->ops->download(be, out, dy, bytes, err);
    if (dx) be->ops->free(be, dx);
    if (dy) be->ops->free(be, dy);
    return rc;
}

/* ------------------------------------------------------------ derivatives */

static int jvp_reserve(dfx_model *m, int rows, dfx_error *err)
{
    if (dfx_model_reserve(m, rows, err)) return -1;
    if (rows <= m->jcap_rows) return 0;
    float *b = dfx_be_alloc(m->be, 3 * (size_t)rows * m->dim * sizeof(float), "tangent buffers",
                            err);
    if (!b) return -1;
    if (m->jbuf) m->be->ops->free(m->be, m->jbuf);
    m->jbuf = b;
    m->jcap_rows = rows;
    return 0;
}

int dfx_model_jvp(dfx_model *m, const double *t, const float *x, const float *v, dfx_pred want,
                  float *f, float *jv, int rows, dfx_error *err)
{
    if (!m->vt->jvp)
        return dfx_fail(err, "%s: the %s model has no exact Jacobian-vector product (use finite "
                        "differences)", m->file[0] ? m->file : "model", m->cfg.kind);
    if (jvp_reserve(m, rows, err)) return -1;
    dfx_backend *be = m->be;
    const size_t n = (size_t)rows * m->dim;
    float *P = m->pred, *dP = m->jbuf;
    if (!m->logspace || m->analytic) {
        if (m->vt->jvp(m, t, x, v, P, dP, rows, err)) return -1;
    } else {
        /* the network sees xb = exp(y), tangent xv = xb v; an ambient score
         * s becomes the score in y, xb s + 1, whose tangent is xv s + xb ds;
         * an eps prediction is in y already */
        float *xb = m->xbuf, *xv = m->jbuf + n, *tmp = m->jbuf + 2 * n;
        be->ops->unary(be, xb, x, n, DFX_FN_EXP);
        be->ops->mul_add(be, xv, xb, v, 0.0, n);
        if (m->vt->jvp(m, t, xb, xv, P, dP, rows, err)) return -1;
        if (m->native == DFX_PRED_SCORE) {
            be->ops->mul_add(be, tmp, xv, P, 0.0, n);
            be->ops->mul_add(be, dP, xb, dP, 0.0, n);
            be->ops->add(be, dP, dP, tmp, n);
            be->ops->mul_add(be, P, xb, P, 1.0, n);
        }
    }
    if (dfx_guide_apply(m, t, x, P, v, dP, rows, err)) return -1;
    if (dfx_perturb_apply(m, t, x, P, v, dP, rows, err)) return -1;
    double *A = m->coef, *B = m->coef + rows, *C = m->coef + 2 * rows;
    if (dfx_model_convert_coefs(m, t, rows, m->native, want, A, B, C, err)) return -1;
    const float *xs[2] = {x, P}, *vs[2] = {v, dP};
    be->ops->lincomb(be, f, 2, xs, m->coef, C, rows, m->dim);
    be->ops->lincomb(be, jv, 2, vs, m->coef, NULL, rows, m->dim);
    return 0;
}

double dfx_vec_norm(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

int dfx_model_jvp_host(dfx_model *m, const double *t, const float *x, const float *v, int rows,
                       dfx_pred want, dfx_jvp_method method, double fd_step, float *f,
                       float *jv, dfx_error *err)
{
    dfx_backend *be = m->be;
    const size_t D = m->dim, n = (size_t)rows * D;
    if (method == DFX_JVP_EXACT) {
        const size_t bytes = n * sizeof(float);
        float *buf = dfx_be_alloc(be, 4 * bytes, "jvp buffers", err);
        if (!buf) return -1;
        float *dx = buf, *dv = buf + n, *df = buf + 2 * n, *dj = buf + 3 * n;
        int rc = -1;
        if (be->ops->upload(be, dx, x, bytes, err) == 0 &&
            be->ops->upload(be, dv, v, bytes, err) == 0 &&
            dfx_model_jvp(m, t, dx, dv, want, df, dj, rows, err) == 0 &&
            be->ops->download(be, f, df, bytes, err) == 0)
            rc = be->ops->download(be, jv, dj, bytes, err);
        be->ops->free(be, buf);
        return rc;
    }
    if (!(fd_step > 0.0) || !isfinite(fd_step))
        return dfx_fail(err, "finite differences need a positive step, got %g", fd_step);
    /* rows 0..rows-1: x + e v, then x - e v, one batch */
    float *xp = dfx_alloc(2 * n, sizeof(float), "finite differences", err);
    float *fp = xp ? dfx_alloc(2 * n, sizeof(float), "finite differences", err) : NULL;
    double *t2 = fp ? dfx_alloc(2 * (size_t)rows, sizeof(double), "finite differences", err)
                    : NULL;
    double *e = t2 ? dfx_alloc((size_t)rows, sizeof(double), "finite differences", err) : NULL;
    int rc = -1;
    if (!e) goto done;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * D, *vr = v + (size_t)r * D;
        double nx = dfx_vec_norm(xr, D), nv = dfx_vec_norm(vr, D);
        e[r] = nv > 0 ? fd_step * (nx > 0 ? nx : 1.0) / nv : 0.0;
        for (size_t j = 0; j < D; j++) {
            xp[(size_t)r * D + j] = (float)(xr[j] + e[r] * vr[j]);
            xp[n + (size_t)r * D + j] = (float)(xr[j] - e[r] * vr[j]);
        }
        t2[r] = t2[rows + r] = t[r];
    }
    if (dfx_model_eval_host(m, t2, xp, 2 * rows, want, fp, err)) goto done;
    if (dfx_model_eval_host(m, t, x, rows, want, f, err)) goto done;
    for (int r = 0; r < rows; r++)
        for (size_t j = 0; j < D; j++) {
            const size_t i = (size_t)r * D + j;
            jv[i] = e[r] > 0 ? (float)(((double)fp[i] - fp[n + i]) / (2.0 * e[r])) : 0.0f;
        }
    rc = 0;
done:
    free(xp);
    free(fp);
    free(t2);
    free(e);
    return rc;
}
