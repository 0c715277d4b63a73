/*
 * Likelihood through the probability-flow ODE (MATH.md section 8). Along
 * dx/dt = v(x, t) the density of the path obeys d log p_t(x(t)) / dt =
 * -div v, so for a point x at t_data
 *
 *   log p_{t_data}(x) = log p_start(x(t_noise)) + int_{t_data}^{t_noise} div v(x(t), t) dt,
 *
 * integrated from t_data to t_noise together with x, in the samplers'
 * space (y = log x on the dale path, whose data-space density gains the
 * Jacobian - sum y). div v is the trace of the velocity's Jacobian: one
 * exact JVP per basis vector, or Hutchinson's u.Ju over K probes u held
 * fixed along the trajectory (Philox: seed, point index, probe, stream).
 *
 * Every point takes its own steps (dopri5: its own step size), although
 * the points of a group are evaluated together, so a point's result does
 * not depend on which others share its batch.
 */
#include "core/error.h"
#include "model/model.h"
#include "sampler/tableau.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { STREAM_PROBE = 31 };

void dfx_lik_opts_default(dfx_lik_opts *o)
{
    memset(o, 0, sizeof *o);
    o->div = DFX_DIV_HUTCHINSON;
    o->probes = 1;
    o->probe = DFX_PROBE_RADEMACHER;
    o->solver = DFX_ODE_DOPRI5;
    o->steps = 64;
    o->grid = DFX_GRID_AUTO;
    o->rtol = 1e-5;
    o->atol = 1e-5;
    o->max_nfe = 100000;
    o->t_noise = NAN;
    o->t_data = NAN;
    o->start = DFX_START_AUTO;
    o->batch = 64;
}

static const char *const ode_names[DFX_ODE_COUNT] = {"dopri5", "heun", "rk4", "euler"};

const char *dfx_ode_name(dfx_ode s)
{
    return (unsigned)s < DFX_ODE_COUNT ? ode_names[s] : "?";
}

int dfx_ode_parse(const char *name, dfx_ode *s)
{
    for (int i = 0; i < DFX_ODE_COUNT; i++)
        if (strcmp(name, ode_names[i]) == 0) {
            *s = (dfx_ode)i;
            return 0;
        }
    return -1;
}

double dfx_bits_per_dim(double logp, size_t D, double lo, double hi)
{
    return -(logp + (double)D * log((hi - lo) / 256.0)) / ((double)D * log(2.0));
}

/* ------------------------------------------------------------ divergence */

typedef struct lik_run {
    dfx_model *m;
    const dfx_lik_opts *o;
    size_t D;
    int P;          /* JVP rows per point: probes, or D for the exact trace */
    int G;          /* points per group                                      */
    int cap;        /* rows per model call                                   */
    float *X, *V, *F, *JV; /* [cap, D] */
    double *T;      /* [cap] */
    int *own;       /* [2, cap]: each row's point and probe (or basis vector) */
    float *probes;  /* hutchinson: [G, P, D] for the group's points          */
    uint64_t first; /* global index of the group's point 0                   */
} lik_run;

static int run_init(lik_run *r, dfx_model *m, const dfx_lik_opts *o, int n, dfx_error *err)
{
    memset(r, 0, sizeof *r);
    r->m = m;
    r->o = o;
    r->D = m->dim;
    if (o->div == DFX_DIV_EXACT) {
        r->P = (int)r->D;
    } else if (o->div == DFX_DIV_HUTCHINSON) {
        if (o->probes < 1) return dfx_fail(err, "hutchinson divergence: need at least 1 probe");
        r->P = o->probes;
    } else {
        return dfx_fail(err, "unknown divergence method %d", (int)o->div);
    }
    if (o->batch < 1) return dfx_fail(err, "likelihood: batch must be at least 1");
    r->G = o->batch / r->P;
    if (r->G < 1) r->G = 1;
    if (r->G > n) r->G = n;
    r->cap = o->batch;
    const size_t D = r->D, cap = (size_t)r->cap;
    r->X = dfx_alloc(4 * cap * D, sizeof(float), "likelihood rows", err);
    r->T = r->X ? dfx_alloc(cap, sizeof(double), "likelihood rows", err) : NULL;
    r->own = r->T ? dfx_alloc(2 * cap, sizeof(int), "likelihood rows", err) : NULL;
    if (!r->own) return -1;
    r->V = r->X + cap * D;
    r->F = r->V + cap * D;
    r->JV = r->F + cap * D;
    if (o->div == DFX_DIV_HUTCHINSON) {
        r->probes = dfx_alloc((size_t)r->G * (size_t)r->P * D, sizeof(float), "probes", err);
        if (!r->probes) return -1;
    }
    return 0;
}

static void run_free(lik_run *r)
{
    free(r->X);
    free(r->T);
    free(r->own);
    free(r->probes);
}

/* The probes of points first .. first + g - 1: draw k of point i is its
 * probe k; Rademacher probes are the signs of those normals. */
static void make_probes(lik_run *r, uint64_t first, int g)
{
    const size_t D = r->D;
    for (int i = 0; i < g; i++)
        for (int k = 0; k < r->P; k++) {
            float *u = r->probes + ((size_t)i * r->P + k) * D;
            dfx_normal_host(r->o->seed, first + (uint64_t)i, 1, D, (uint32_t)k, STREAM_PROBE, u);
            if (r->o->probe == DFX_PROBE_RADEMACHER)
                for (size_t j = 0; j < D; j++) u[j] = u[j] < 0.0f ? -1.0f : 1.0f;
        }
}

/* The velocity v [g, D] and div v [g] at per-point times t and states x
 * (double, samplers' space) of the points with act[i] (others untouched):
 * rows in the order (point, probe), sent to the model cap rows at a time. */
static int flush(lik_run *r, int rows, double *v, double *div, dfx_error *err)
{
    const size_t D = r->D;
    if (dfx_model_jvp_host(r->m, r->T, r->X, r->V, rows, DFX_PRED_VELOCITY, DFX_JVP_EXACT, 0.0,
                           r->F, r->JV, err))
        return -1;
    for (int q = 0; q < rows; q++) {
        const int i = r->own[q], p = r->own[r->cap + q];
        const float *f = r->F + (size_t)q * D, *jv = r->JV + (size_t)q * D;
        if (p == 0)
            for (size_t j = 0; j < D; j++) v[(size_t)i * D + j] = f[j];
        if (r->o->div == DFX_DIV_EXACT) {
            div[i] += jv[p];
        } else {
            const float *u = r->V + (size_t)q * D;
            double d = 0.0;
            for (size_t j = 0; j < D; j++) d += (double)u[j] * jv[j];
            div[i] += d / r->P;
        }
    }
    return 0;
}

static int field(lik_run *r, int g, const int *act, const double *t, const double *x, double *v,
                 double *div, dfx_error *err)
{
    const size_t D = r->D;
    int rows = 0;
    for (int i = 0; i < g; i++) {
        if (!act[i]) continue;
        div[i] = 0.0;
        const double *xi = x + (size_t)i * D;
        for (int p = 0; p < r->P; p++) {
            float *xr = r->X + (size_t)rows * D, *vr = r->V + (size_t)rows * D;
            for (size_t j = 0; j < D; j++) xr[j] = (float)xi[j];
            if (r->o->div == DFX_DIV_EXACT) {
                memset(vr, 0, D * sizeof *vr);
                vr[p] = 1.0f;
            } else {
                memcpy(vr, r->probes + ((size_t)i * r->P + p) * D, D * sizeof *vr);
            }
            r->T[rows] = t[i];
            r->own[rows] = i;
            r->own[r->cap + rows] = p;
            if (++rows == r->cap) {
                if (flush(r, rows, v, div, err)) return -1;
                rows = 0;
            }
        }
    }
    return rows ? flush(r, rows, v, div, err) : 0;
}

/* ------------------------------------------------------------ integrators */

/* The augmented state of a group: x [G, D] and l [G] (the integral of div v
 * so far), with the stages' buffers. */
typedef struct lik_state {
    double *x, *l, *t;
    double *k, *kl;  /* stages: [7, G, D] and [7, G] */
    double *xs, *ls; /* stage input [G, D], [G] */
    double *h, *prev;
    int *act, *done, *last;
} lik_state;

static int state_init(lik_state *s, int G, size_t D, dfx_error *err)
{
    memset(s, 0, sizeof *s);
    const size_t n = (size_t)G * D;
    s->x = dfx_alloc(9 * n + 13 * (size_t)G, sizeof(double), "likelihood state", err);
    s->act = s->x ? dfx_alloc(3 * (size_t)G, sizeof(int), "likelihood state", err) : NULL;
    if (!s->act) return -1;
    s->k = s->x + n;
    s->xs = s->k + 7 * n;
    s->l = s->xs + n;
    s->t = s->l + G;
    s->kl = s->t + G;
    s->ls = s->kl + 7 * (size_t)G;
    s->h = s->ls + G;
    s->prev = s->h + G;
    s->done = s->act + G;
    s->last = s->done + G;
    return 0;
}

static void state_free(lik_state *s)
{
    free(s->x);
    free(s->act);
}

/* Refuses NaN or Inf in the state of an active point. */
static int check_finite(const lik_run *r, const lik_state *s, int g, dfx_error *err)
{
    for (int i = 0; i < g; i++) {
        if (!s->act[i]) continue;
        int bad = !isfinite(s->l[i]);
        for (size_t j = 0; j < r->D && !bad; j++) bad = !isfinite(s->x[(size_t)i * r->D + j]);
        if (bad)
            return dfx_fail(err, "likelihood: NaN or Inf in the ODE state of point %llu near t = %g",
                            (unsigned long long)(r->first + (uint64_t)i), s->t[i]);
    }
    return 0;
}

/* xs = x + h sum_l coef[l] k_l for the active points (stage input). */
static void combine(const lik_run *r, lik_state *s, int g, int nk, const double *coef,
                    double *xs, double *ls)
{
    const size_t D = r->D;
    for (int i = 0; i < g; i++) {
        if (!s->act[i]) continue;
        const double h = s->h[i];
        double *xo = xs + (size_t)i * D;
        const double *xi = s->x + (size_t)i * D;
        for (size_t j = 0; j < D; j++) {
            double acc = 0.0;
            for (int q = 0; q < nk; q++)
                if (coef[q] != 0.0) acc += coef[q] * s->k[((size_t)q * g + i) * D + j];
            xo[j] = xi[j] + h * acc;
        }
        double al = 0.0;
        for (int q = 0; q < nk; q++) al += coef[q] * s->kl[(size_t)q * g + i];
        ls[i] = s->l[i] + h * al;
    }
}

/* Stage q's field at per-point times into k_q. */
static int stage(lik_run *r, lik_state *s, int g, int q, const double *t, const double *x,
                 long *nfe, dfx_error *err)
{
    for (int i = 0; i < g; i++)
        if (s->act[i]) nfe[i]++;
    return field(r, g, s->act, t, x, s->k + (size_t)q * g * r->D, s->kl + (size_t)q * g, err);
}

/* A fixed-step rule over the grid (from t_data to t_noise). */
static int run_fixed(lik_run *r, lik_state *s, int g, const dfx_rk_tableau *tb,
                     const double *grid, int n, long *nfe, dfx_error *err)
{
    for (int i = 0; i < g; i++) s->act[i] = 1;
    for (int step = 0; step < n; step++) {
        const double t0 = grid[step], t1 = grid[step + 1];
        for (int i = 0; i < g; i++) s->h[i] = t1 - t0;
        for (int q = 0; q < tb->stages; q++) {
            const double *xin = s->x;
            if (q > 0) {
                combine(r, s, g, q, tb->a[q], s->xs, s->ls);
                xin = s->xs;
            }
            const double tq = tb->c[q] == 1.0 ? t1 : t0 + tb->c[q] * (t1 - t0);
            for (int i = 0; i < g; i++) s->t[i] = tq;
            if (stage(r, s, g, q, s->t, xin, nfe, err)) return -1;
        }
        combine(r, s, g, tb->stages, tb->b, s->x, s->l);
        for (int i = 0; i < g; i++) s->t[i] = t1;
        if (check_finite(r, s, g, err)) return -1;
        if (r->o->progress) r->o->progress(r->o->progress_ctx, (step + 1.0) / n);
    }
    return 0;
}

/* Dormand-Prince 5(4) with each point's own step size; the error norm is
 * the larger of the RMS over x and the log-density's own, each relative to
 * atol + rtol max(|old|, |new|). */
static int run_dopri5(lik_run *r, lik_state *s, int g, double T0, double T1, long *nfe,
                      long *rej, dfx_error *err)
{
    const size_t D = r->D;
    const double span = T1 - T0, rtol = r->o->rtol, atol = r->o->atol;
    for (int i = 0; i < g; i++) {
        s->t[i] = T0;
        s->h[i] = 0.01 * span;
        s->prev[i] = 1e-4;
        s->done[i] = 0;
        s->act[i] = 1;
    }
    if (stage(r, s, g, 0, s->t, s->x, nfe, err)) return -1;
    double *tq = dfx_alloc((size_t)g, sizeof *tq, "dopri5", err);
    if (!tq) return -1;
    int rc = -1;
    for (;;) {
        int active = 0;
        for (int i = 0; i < g; i++) {
            s->act[i] = !s->done[i];
            if (s->done[i]) continue;
            active++;
            s->last[i] = 0;
            if (fabs(T1 - s->t[i]) <= fabs(s->h[i]) * (1.0 + 1e-12)) {
                s->h[i] = T1 - s->t[i];
                s->last[i] = 1;
            }
            if (nfe[i] > r->o->max_nfe) {
                dfx_fail(err, "likelihood: point %llu needed more than %ld evaluations and "
                              "stopped at t = %g; loosen --rtol/--atol or raise --max-nfe",
                         (unsigned long long)(r->first + (uint64_t)i), r->o->max_nfe, s->t[i]);
                goto done;
            }
            if (fabs(s->h[i]) < 1e-14 * fabs(span)) {
                dfx_fail(err, "likelihood: dopri5 step size underflow for point %llu at t = %g",
                         (unsigned long long)(r->first + (uint64_t)i), s->t[i]);
                goto done;
            }
        }
        if (!active) break;
        /* stages 2..7; stage 7 is taken at the 5th-order solution */
        for (int q = 1; q < 7; q++) {
            combine(r, s, g, q, dfx_dp_a[q], s->xs, s->ls);
            for (int i = 0; i < g; i++)
                tq[i] = (q == 6 && s->last[i]) ? T1 : s->t[i] + dfx_dp_c[q] * s->h[i];
            if (q == 6) break; /* xs, ls hold the 5th-order solution */
            if (stage(r, s, g, q, tq, s->xs, nfe, err)) goto done;
        }
        if (stage(r, s, g, 6, tq, s->xs, nfe, err)) goto done;
        for (int i = 0; i < g; i++) {
            if (s->done[i]) continue;
            const double h = s->h[i];
            double sum = 0.0;
            for (size_t j = 0; j < D; j++) {
                double e = 0.0;
                for (int q = 0; q < 7; q++)
                    if (dfx_dp_e[q] != 0.0) e += dfx_dp_e[q] * s->k[((size_t)q * g + i) * D + j];
                e *= h;
                const double x0 = s->x[(size_t)i * D + j], x1 = s->xs[(size_t)i * D + j];
                const double sc = atol + rtol * fmax(fabs(x0), fabs(x1));
                sum += (e / sc) * (e / sc);
            }
            double el = 0.0;
            for (int q = 0; q < 7; q++) el += dfx_dp_e[q] * s->kl[(size_t)q * g + i];
            el *= h;
            const double scl = atol + rtol * fmax(fabs(s->l[i]), fabs(s->ls[i]));
            double qn = fmax(sqrt(sum / (double)D), fabs(el) / scl);
            if (qn <= 1.0) {
                s->t[i] = s->last[i] ? T1 : s->t[i] + h;
                if (s->last[i]) s->done[i] = 1;
                memcpy(s->x + (size_t)i * D, s->xs + (size_t)i * D, D * sizeof(double));
                s->l[i] = s->ls[i];
                /* FSAL: k1 <- k7 */
                memcpy(s->k + (size_t)i * D, s->k + ((size_t)6 * g + i) * D, D * sizeof(double));
                s->kl[i] = s->kl[(size_t)6 * g + i];
                /* PI controller (Gustafsson; Hairer & Wanner II.4), as the dopri5 sampler */
                double fac = 0.9 * pow(qn > 1e-10 ? qn : 1e-10, -0.17) * pow(s->prev[i], 0.04);
                s->h[i] *= fmin(10.0, fmax(0.2, fac));
                s->prev[i] = fmax(qn, 1e-4);
            } else {
                rej[i]++;
                s->h[i] *= isfinite(qn) ? fmax(0.2, 0.9 * pow(qn, -0.2)) : 0.2;
            }
        }
        for (int i = 0; i < g; i++) s->act[i] = !s->done[i];
        if (check_finite(r, s, g, err)) goto done;
        if (r->o->progress) {
            double f = 1.0;
            for (int i = 0; i < g; i++) f = fmin(f, (s->t[i] - T0) / span);
            r->o->progress(r->o->progress_ctx, f);
        }
    }
    rc = 0;
done:
    free(tq);
    return rc;
}

/* ------------------------------------------------------- the noise end */

/* The density the samplers start from, at t_noise. */
typedef struct start_density {
    enum { START_DIAG, START_FULL, START_EXACT } kind;
    double mean, sd;   /* diag: N(mean, sd^2) per value      */
    double *mu, *L;    /* full: mean [D], Cholesky factor [D, D] of the covariance */
    double logdet;     /* full: log det of the covariance     */
    double t;
} start_density;

/* L = the Cholesky factor of S S^T, or S itself where S is lower triangular. */
static int full_start(start_density *sd, dfx_model *m, dfx_error *err)
{
    const size_t D = m->dim;
    float *hs = dfx_alloc(D * D + D, sizeof(float), "start distribution", err);
    sd->mu = hs ? dfx_alloc(D * D + D, sizeof(double), "start distribution", err) : NULL;
    int rc = -1;
    if (!sd->mu) goto done;
    sd->L = sd->mu + D;
    if (m->be->ops->download(m->be, hs, m->start_mean, D * sizeof(float), err) ||
        m->be->ops->download(m->be, hs + D, m->start_scale, D * D * sizeof(float), err))
        goto done;
    for (size_t j = 0; j < D; j++) sd->mu[j] = hs[j];
    const float *S = hs + D;
    int lower = 1;
    for (size_t i = 0; i < D && lower; i++)
        for (size_t j = i + 1; j < D; j++)
            if (S[i * D + j] != 0.0f) {
                lower = 0;
                break;
            }
    double *L = sd->L;
    if (lower) {
        for (size_t i = 0; i < D * D; i++) L[i] = S[i];
    } else { /* covariance S S^T, then Cholesky in place */
        for (size_t i = 0; i < D; i++)
            for (size_t j = 0; j <= i; j++) {
                double acc = 0.0;
                for (size_t q = 0; q < D; q++) acc += (double)S[i * D + q] * S[j * D + q];
                L[i * D + j] = acc;
            }
        for (size_t j = 0; j < D; j++) {
            double d = L[j * D + j];
            for (size_t q = 0; q < j; q++) d -= L[j * D + q] * L[j * D + q];
            if (!(d > 0.0)) {
                dfx_fail(err, "%s: the fitted start's covariance start.scale start.scale^T is "
                              "singular",
                         m->file[0] ? m->file : "model");
                goto done;
            }
            L[j * D + j] = sqrt(d);
            for (size_t i = j + 1; i < D; i++) {
                double acc = L[i * D + j];
                for (size_t q = 0; q < j; q++) acc -= L[i * D + q] * L[j * D + q];
                L[i * D + j] = acc / L[j * D + j];
            }
        }
        for (size_t i = 0; i < D; i++)
            for (size_t j = i + 1; j < D; j++) L[i * D + j] = 0.0;
    }
    sd->logdet = 0.0;
    for (size_t i = 0; i < D; i++) {
        if (!(L[i * D + i] != 0.0)) {
            dfx_fail(err, "%s: the fitted start's scale start.scale is singular",
                     m->file[0] ? m->file : "model");
            goto done;
        }
        sd->logdet += 2.0 * log(fabs(L[i * D + i]));
    }
    rc = 0;
done:
    free(hs);
    return rc;
}

static int start_init(start_density *sd, dfx_model *m, const dfx_lik_opts *o, double t_noise,
                      double tn_default, dfx_error *err)
{
    memset(sd, 0, sizeof *sd);
    sd->t = t_noise;
    const char *file = m->file[0] ? m->file : "model";
    const int exact = m->vt->log_marginal != NULL, fitted_ok = exact || m->cfg.has_start;
    int start = o->start;
    if (start == DFX_START_AUTO) start = fitted_ok ? DFX_START_FITTED : DFX_START_PATH;
    if (start == DFX_START_FITTED) {
        if (!fitted_ok)
            return dfx_fail(err, "%s has no fitted start distribution (use the path's, "
                                 "--path-start)",
                            file);
        if (exact) {
            sd->kind = START_EXACT;
            return 0;
        }
        if (t_noise != tn_default)
            return dfx_fail(err, "%s: the model's fitted start distribution is for t = %g, not "
                                 "--t-noise %g (add --path-start for the path's N(m, s^2) there)",
                            file, tn_default, t_noise);
        if (m->cfg.start_full && m->start_scale) {
            sd->kind = START_FULL;
            return full_start(sd, m, err);
        }
        sd->kind = START_DIAG;
        sd->mean = m->cfg.start_mean;
        sd->sd = m->cfg.start_std;
        return 0;
    }
    if (start != DFX_START_PATH)
        return dfx_fail(err, "likelihood: the start must be the fitted one or the path's");
    sd->kind = START_DIAG;
    dfx_coef c;
    dfx_path_eval(&m->cfg.path, t_noise, &c);
    sd->mean = c.m;
    sd->sd = c.s;
    if (m->cfg.path.family == DFX_PATH_DISCRETE) { /* as the samplers: init_noise_sigma */
        sd->mean = 0.0;
        sd->sd = 1.0;
    }
    if (!(sd->sd > 0.0))
        return dfx_fail(err, "likelihood: the path has no noise at t_noise = %g (s = %g)",
                        t_noise, sd->sd);
    return 0;
}

static void start_free(start_density *sd) { free(sd->mu); }

/* log p_start of g points x [g, D] (double) into out. */
static int start_logp(const start_density *sd, dfx_model *m, const double *x, int g, double *out,
                      double *tmp, dfx_error *err)
{
    const size_t D = m->dim;
    if (sd->kind == START_EXACT) { /* tmp [g, D] as floats */
        float *xf = (float *)(void *)tmp;
        for (size_t j = 0; j < (size_t)g * D; j++) xf[j] = (float)x[j];
        return m->vt->log_marginal(m, sd->t, xf, g, out, err);
    }
    for (int i = 0; i < g; i++) {
        const double *xi = x + (size_t)i * D;
        double q = 0.0;
        if (sd->kind == START_DIAG) {
            for (size_t j = 0; j < D; j++) {
                const double z = (xi[j] - sd->mean) / sd->sd;
                q += z * z;
            }
            out[i] = -0.5 * q - (double)D * (log(sd->sd) + 0.5 * DFX_LOG_2PI);
            continue;
        }
        /* full: w = L^{-1} (x - mu) by forward substitution, w in tmp */
        double *w = tmp;
        for (size_t j = 0; j < D; j++) {
            double acc = xi[j] - sd->mu[j];
            const double *Lj = sd->L + j * D;
            for (size_t q2 = 0; q2 < j; q2++) acc -= Lj[q2] * w[q2];
            w[j] = acc / Lj[j];
            q += w[j] * w[j];
        }
        out[i] = -0.5 * q - 0.5 * sd->logdet - 0.5 * (double)D * DFX_LOG_2PI;
    }
    return 0;
}

/* ------------------------------------------------------------ the runs */

/* The interval of the model's path: the path's defaults or the options'. */
static int interval(dfx_model *m, const dfx_lik_opts *o, double *tn, double *td, double *tn0,
                    dfx_error *err)
{
    const dfx_path *p = &m->cfg.path;
    double n0, d0;
    dfx_path_default_range(p, &n0, &d0);
    /* abar = 1 (t = 0) is singular for the velocity: the last timestep instead */
    if (p->family == DFX_PATH_DISCRETE && d0 == 0.0) d0 = dfx_path_t_of_timestep(p, 0.0);
    *tn0 = n0;
    *tn = isnan(o->t_noise) ? n0 : o->t_noise;
    *td = isnan(o->t_data) ? d0 : o->t_data;
    if (!(*tn >= 0.0 && *tn <= 1.0 && *td >= 0.0 && *td <= 1.0) || *tn == *td)
        return dfx_fail(err, "likelihood: need distinct t_noise and t_data in [0, 1] (got %g, %g)",
                        *tn, *td);
    return 0;
}

int dfx_lik_interval(dfx_model *m, const dfx_lik_opts *o, double *t_noise, double *t_data,
                     dfx_error *err)
{
    double tn0;
    return interval(m, o, t_noise, t_data, &tn0, err);
}

static int check_model(dfx_model *m, dfx_error *err)
{
    if (dfx_model_generative(m, err)) return -1;
    if (!m->vt->jvp)
        return dfx_fail(err, "%s: the model kind %s has no exact JVP, which the divergence needs",
                        m->file[0] ? m->file : "model", m->cfg.kind);
    return 0;
}

int dfx_velocity_divergence(dfx_model *m, const dfx_lik_opts *o, double t, const float *y,
                            int n, uint64_t first, double *div, dfx_error *err)
{
    if (n < 1) return 0;
    if (check_model(m, err)) return -1;
    lik_run r;
    int rc = -1;
    if (run_init(&r, m, o, n, err)) goto done;
    const size_t D = r.D;
    double *x = dfx_alloc(2 * (size_t)r.G * D + (size_t)r.G, sizeof(double), "divergence", err);
    int *act = x ? dfx_alloc((size_t)r.G, sizeof(int), "divergence", err) : NULL;
    if (!act) {
        free(x);
        goto done;
    }
    double *v = x + (size_t)r.G * D, *tt = v + (size_t)r.G * D;
    for (int i0 = 0; i0 < n; i0 += r.G) {
        const int g = n - i0 < r.G ? n - i0 : r.G;
        r.first = first + (uint64_t)i0;
        if (r.probes) make_probes(&r, r.first, g);
        for (int i = 0; i < g; i++) {
            act[i] = 1;
            tt[i] = t;
        }
        for (size_t j = 0; j < (size_t)g * D; j++) x[j] = y[(size_t)i0 * D + j];
        if (field(&r, g, act, tt, x, v, div + i0, err)) break;
        if (i0 + g >= n) rc = 0;
    }
    free(x);
    free(act);
done:
    run_free(&r);
    return rc;
}

/* Forwards a group's progress as a fraction of the whole run. */
typedef struct lik_progress {
    const dfx_lik_opts *user;
    int done, n, g;
} lik_progress;

static void group_progress(void *ctx, double frac)
{
    const lik_progress *p = ctx;
    p->user->progress(p->user->progress_ctx, (p->done + frac * p->g) / p->n);
}

/* Point `index` (x [dim], the data space) in the samplers' space into y,
 * and the log-Jacobian of that change of variables: y = log x and - sum y
 * on the dale path, y = x and 0 elsewhere. Refuses non-finite values and,
 * on the dale path, non-positive ones. */
static int to_samplers_space(const dfx_model *m, const float *x, uint64_t index, double *y,
                             double *log_jac, dfx_error *err)
{
    double lj = 0.0;
    for (size_t j = 0; j < m->dim; j++) {
        if (!isfinite(x[j]) || (m->logspace && !(x[j] > 0.0f)))
            return dfx_fail(err, "likelihood: point %llu holds %s value %g (value %zu)",
                            (unsigned long long)index,
                            m->logspace ? "a non-positive or non-finite" : "a non-finite",
                            (double)x[j], j);
        y[j] = m->logspace ? log((double)x[j]) : x[j];
        lj -= m->logspace ? y[j] : 0.0;
    }
    *log_jac = lj;
    return 0;
}

int dfx_model_log_density(dfx_model *m, double t_data, const float *x, int n, double *out,
                          dfx_error *err)
{
    if (!m->vt->log_marginal)
        return dfx_fail(err, "%s: a %s model has no closed-form density",
                        m->file[0] ? m->file : "model", m->cfg.kind);
    dfx_lik_opts o;
    dfx_lik_opts_default(&o);
    o.t_data = t_data;
    double tn, td;
    if (dfx_lik_interval(m, &o, &tn, &td, err)) return -1;
    const size_t D = m->dim;
    double *y = dfx_alloc(D, sizeof(double) + sizeof(float), "density", err);
    if (!y) return -1;
    float *yf = (float *)(void *)(y + D);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        double jac = 0.0;
        rc = to_samplers_space(m, x + (size_t)i * D, (uint64_t)i, y, &jac, err);
        for (size_t j = 0; j < D && rc == 0; j++) yf[j] = (float)y[j];
        if (rc == 0) rc = m->vt->log_marginal(m, td, yf, 1, out + i, err);
        if (rc == 0) out[i] += jac;
    }
    free(y);
    return rc;
}

int dfx_log_likelihood(dfx_model *m, const dfx_lik_opts *o, const float *x, int n,
                       uint64_t first, dfx_lik_point *out, dfx_error *err)
{
    if (n < 1) return 0;
    if (check_model(m, err)) return -1;
    if ((unsigned)o->solver >= DFX_ODE_COUNT)
        return dfx_fail(err, "likelihood: unknown solver %d", (int)o->solver);
    if (o->solver == DFX_ODE_DOPRI5 && !(o->rtol > 0.0 && o->atol > 0.0))
        return dfx_fail(err, "likelihood: dopri5 needs rtol > 0 and atol > 0");
    if (o->solver != DFX_ODE_DOPRI5 && o->steps < 1)
        return dfx_fail(err, "likelihood: %s needs at least 1 step", dfx_ode_name(o->solver));
    double tn, td, tn0;
    if (interval(m, o, &tn, &td, &tn0, err)) return -1;
    const size_t D = m->dim;
    lik_run r;
    lik_state st;
    start_density sd;
    memset(&st, 0, sizeof st);
    memset(&sd, 0, sizeof sd);
    double *grid = NULL, *tmp = NULL, *ls = NULL;
    long *cnt = NULL;
    int rc = -1;
    if (run_init(&r, m, o, n, err)) goto done;
    const int G = r.G;
    if (state_init(&st, G, D, err)) goto done;
    /* every point is checked before any work (st.x as scratch) */
    for (int i = 0; i < n; i++) {
        double lj;
        if (to_samplers_space(m, x + (size_t)i * D, first + (uint64_t)i, st.x, &lj, err))
            goto done;
    }
    if (start_init(&sd, m, o, tn, tn0, err)) goto done;
    tmp = dfx_alloc((size_t)G * D, sizeof(double), "likelihood", err);
    ls = tmp ? dfx_alloc((size_t)G, sizeof(double), "likelihood", err) : NULL;
    cnt = ls ? dfx_alloc(2 * (size_t)G, sizeof(long), "likelihood", err) : NULL;
    if (!cnt) goto done;
    const dfx_rk_tableau *tab[DFX_ODE_COUNT] = {NULL, &dfx_heun_tab, &dfx_rk4_tab, &dfx_euler_tab};
    if (o->solver != DFX_ODE_DOPRI5) {
        /* the sampler's grid (noise to data), walked backwards */
        dfx_grid gk = o->grid == DFX_GRID_AUTO ? dfx_default_grid(m, dfx_ode_name(o->solver))
                                               : o->grid;
        grid = dfx_alloc((size_t)o->steps + 1, sizeof *grid, "likelihood grid", err);
        if (!grid || dfx_time_grid(&m->cfg.path, gk, 7.0, 3.0, tn, td, o->steps, grid, err))
            goto done;
        for (int i = 0; i < (o->steps + 1) / 2; i++) {
            double t = grid[i];
            grid[i] = grid[o->steps - i];
            grid[o->steps - i] = t;
        }
    }
    lik_progress pr = {o, 0, n, 0};
    dfx_lik_opts ro = *o;
    if (o->progress) {
        ro.progress = group_progress;
        ro.progress_ctx = &pr;
    }
    r.o = &ro;
    for (int i0 = 0; i0 < n; i0 += G) {
        const int g = n - i0 < G ? n - i0 : G;
        r.first = first + (uint64_t)i0;
        pr.done = i0;
        pr.g = g;
        if (r.probes) make_probes(&r, r.first, g);
        long *nfe = cnt, *rej = cnt + G;
        for (int i = 0; i < g; i++) {
            nfe[i] = rej[i] = 0;
            st.l[i] = 0.0;
            if (to_samplers_space(m, x + ((size_t)i0 + i) * D, first + (uint64_t)(i0 + i),
                                  st.x + (size_t)i * D, &out[i0 + i].log_jac, err))
                goto done;
        }
        if (o->solver == DFX_ODE_DOPRI5 ? run_dopri5(&r, &st, g, td, tn, nfe, rej, err)
                                        : run_fixed(&r, &st, g, tab[o->solver], grid, o->steps,
                                                    nfe, err))
            goto done;
        if (start_logp(&sd, m, st.x, g, ls, tmp, err)) goto done;
        for (int i = 0; i < g; i++) {
            dfx_lik_point *p = out + i0 + i;
            p->log_start = ls[i];
            p->div_int = st.l[i];
            p->logp = p->log_start + p->div_int + p->log_jac;
            p->nfe = nfe[i];
            p->rejected = rej[i];
            if (!isfinite(p->logp)) {
                dfx_fail(err, "likelihood: point %llu: log density %g (start %g, divergence "
                              "integral %g)",
                         (unsigned long long)(first + (uint64_t)(i0 + i)), p->logp,
                         p->log_start, p->div_int);
                goto done;
            }
        }
    }
    rc = 0;
done:
    run_free(&r);
    state_free(&st);
    start_free(&sd);
    free(grid);
    free(tmp);
    free(ls);
    free(cnt);
    return rc;
}
