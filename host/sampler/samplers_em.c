/*
 * Euler-Maruyama for the SDE family of MATH.md section 1.2, in generation
 * time tau (dtau = |dt|):
 *
 *     dx = [v_tau + eps S] dtau + sqrt(2 eps) dW,    v_tau dtau = v_t dt.
 *
 * One network evaluation per step gives the native prediction P; velocity
 * and score are both affine in (x, P), so the whole update is one lincomb:
 *
 *     x' = (1 + h A_v + e A_S) x + (h B_v + e B_S) P + sqrt(2 e) z
 *          + (h C_v + e C_S),          h = t1 - t0,  e = eps(t0) |h|.
 *
 * pc (score_sde's predictor-corrector) runs Langevin corrector steps at
 * each time before this predictor.
 */
#include "core/error.h"
#include "sampler/sampler.h"

#include <math.h>
#include <stdio.h>

/* One em step of grid interval i; P and z are scratch. */
static int em_step(dfx_sampler *s, int i, float *P, float *z, dfx_error *err)
{
    dfx_model *m = s->m;
    double t0 = s->grid[i], h = s->grid[i + 1] - t0;
    double e = dfx_noise_eps(&m->cfg.path, s->o.noise, s->o.eps0, t0) * fabs(h);
    double Av, Bv, Cv, As, Bs, Cs;
    if (dfx_s_conv(s, t0, m->native, DFX_PRED_VELOCITY, &Av, &Bv, &Cv, err) ||
        dfx_s_conv(s, t0, m->native, DFX_PRED_SCORE, &As, &Bs, &Cs, err))
        return -1;
    if (dfx_s_eval(s, t0, s->x, m->native, P, err)) return -1;
    /* draw i + 1 (draw 0 made the initial state) */
    dfx_s_noise(s, z, (uint32_t)(i + 1), DFX_STREAM_STEP);
    const float *xs[3] = {s->x, P, z};
    double cs[3] = {1.0 + h * Av + e * As, h * Bv + e * Bs, sqrt(2.0 * e)};
    dfx_s_lincomb(s, s->x, 3, xs, cs, h * Cv + e * Cs);
    if (dfx_s_check(s, i + 1, s->grid[i + 1], err)) return -1;
    dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    return 0;
}

int dfx_run_em(dfx_sampler *s, dfx_error *err)
{
    for (int i = 0; i < s->n; i++)
        if (em_step(s, i, s->buf[0], s->buf[1], err)) return -1;
    return dfx_s_diverged(s, err);
}

/*
 * Langevin corrector (Song et al. 2021, Algorithm 5): at time t, K times
 *     x <- x + e S + sqrt(2 e) z,   e = 2 (snr |z| / |S|)^2 per sample,
 * so the step keeps a fixed signal-to-noise ratio. z is draw `draw` of
 * streams stream .. stream + K - 1. P, z and S are scratch.
 */
static int langevin(dfx_sampler *s, double t, int K, double snr, uint32_t draw, uint32_t stream,
                    float *P, float *z, float *S, const char *what, int step, dfx_error *err)
{
    dfx_model *m = s->m;
    const int R = s->rows;
    double A, B, C;
    if (dfx_s_conv(s, t, m->native, DFX_PRED_SCORE, &A, &B, &C, err)) return -1;
    for (int j = 0; j < K; j++) {
        if (dfx_s_eval(s, t, s->x, m->native, P, err)) return -1;
        const float *xp[2] = {s->x, P};
        double cp[2] = {A, B};
        dfx_s_lincomb(s, S, 2, xp, cp, C);
        dfx_s_noise(s, z, draw, stream + (uint32_t)j);
        /* per-sample RMS norms: err_norm with atol 1, rtol 0 */
        double *gs = s->coef + (size_t)3 * R, *gz = s->coef + (size_t)4 * R;
        if (s->be->ops->err_norm(s->be, S, S, S, 0.0, 1.0, R, s->dim, gs, err) ||
            s->be->ops->err_norm(s->be, z, z, z, 0.0, 1.0, R, s->dim, gz, err))
            return -1;
        double *cf = s->coef;
        for (int r = 0; r < R; r++) {
            double q = gs[r] > 0.0 ? snr * gz[r] / gs[r] : 0.0;
            double e = 2.0 * q * q;
            cf[r] = 1.0;
            cf[R + r] = e;
            cf[2 * R + r] = sqrt(2.0 * e);
        }
        const float *xs[3] = {s->x, S, z};
        s->be->ops->lincomb(s->be, s->x, 3, xs, cf, NULL, R, s->dim);
        if (dfx_s_check(s, step, t, err)) return dfx_fail_prefix(err, "%s", what);
        if (stream == DFX_STREAM_START) dfx_s_progress_start(s, j + 1);
    }
    return 0;
}

static int correct(dfx_sampler *s, int i, float *P, float *z, float *S, dfx_error *err)
{
    return langevin(s, s->grid[i], s->o.corrector_steps, s->o.snr, (uint32_t)(i + 1),
                    DFX_STREAM_CORRECT, P, z, S, "pc corrector", i, err);
}

int dfx_start_langevin(dfx_sampler *s, dfx_error *err)
{
    if (s->start_langevin < 1) return 0;
    return langevin(s, s->t_noise, s->start_langevin, s->o.start_snr, 0, DFX_STREAM_START,
                    s->buf[0], s->buf[1], s->buf[2], "start Langevin", 0, err);
}

int dfx_check_pc(const dfx_sample_opts *o, dfx_error *err)
{
    if (!(o->snr > 0.0 && isfinite(o->snr)) || o->corrector_steps < 1 || o->corrector_steps > 64)
        return dfx_fail(err, "pc needs --snr > 0 and --corrector-steps in [1, 64]");
    return 0;
}

int dfx_run_pc(dfx_sampler *s, dfx_error *err)
{
    for (int i = 0; i < s->n; i++)
        if (correct(s, i, s->buf[0], s->buf[1], s->buf[2], err) ||
            em_step(s, i, s->buf[0], s->buf[1], err))
            return -1;
    return dfx_s_diverged(s, err);
}

long dfx_pc_nfe(const dfx_sampler *s)
{
    return (long)s->n * (1 + s->o.corrector_steps);
}

/* The explicit em step's stability on the grid (MATH.md section 1.2,
 * "Stability of the explicit step"): near the data the score's curvature is
 * up to 1/s^2, so an error along the stiffest direction is multiplied by
 * about |1 - r| per step, r = eps(t) |h| / s(t)^2: stable while r < 2.
 * Returns the largest r (0 for samplers without the em step), its time, and
 * the worst-case growth prod max(1, |1 - r|) over the grid. */
static double stability(const dfx_sampler *s, double *t_worst, double *growth)
{
    const dfx_path *p = &s->m->cfg.path;
    double rmax = 0.0, tmax = NAN, lg = 0.0;
    if (s->def->flags & DFX_SF_EPS)
        for (int i = 0; i < s->n; i++) {
            dfx_coef c;
            double t = s->grid[i], e = dfx_noise_eps(p, s->o.noise, s->o.eps0, t);
            dfx_path_eval(p, t, &c);
            double r = c.s > 0.0 ? e * fabs(s->grid[i + 1] - t) / (c.s * c.s) : 0.0;
            if (r > rmax) rmax = r, tmax = t;
            if (fabs(1.0 - r) > 1.0) lg += log(fabs(1.0 - r));
        }
    if (t_worst) *t_worst = tmax;
    if (growth) *growth = exp(lg);
    return rmax;
}

double dfx_sampler_stability(const dfx_sampler *s, double *t_worst, double *growth)
{
    return stability(s, t_worst, growth);
}

/* Refuse, before any work, an em step that the stability bound says will
 * blow an error up more than DFX_UNSTABLE_GROWTH times (warn-level cases,
 * 2 < r with less growth, are for the caller: dfx_sampler_stability). */
int dfx_check_stability(const dfx_sampler *s, dfx_error *err)
{
    double t, g, r = stability(s, &t, &g);
    if (!(g > DFX_UNSTABLE_GROWTH) || s->o.unstable) return 0;
    const dfx_model_config *mc = &s->m->cfg;
    /* r scales as 1/steps where the grid is refined evenly */
    double need = ceil(s->n * r / 2.0);
    return dfx_fail(err,
                    "sampler %s with --noise %s is unstable on this grid: eps h / s^2 reaches "
                    "%.3g at t = %g (the explicit step is stable below 2), so an error near the "
                    "data can grow %.3g-fold; the samples would leave the data range [%g, %g]. "
                    "Use --noise s (it vanishes at the data end), about %.0f --steps, a smaller "
                    "--eps0 or a --t-data further from the data end (--allow-unstable runs it "
                    "anyway)",
                    s->def->d.name, dfx_noise_name(s->o.noise), r, t, g, mc->range_lo,
                    mc->range_hi, need);
}

/* em and pc: a state far outside the data range (RMS over 100 times the
 * range's largest magnitude) on a grid where the explicit scheme is
 * unstable (stability() above 2 at some step) has diverged; the message
 * names the worst step. (A run gets here past dfx_check_stability only with
 * --allow-unstable or a growth bound below DFX_UNSTABLE_GROWTH.) */
int dfx_s_diverged(dfx_sampler *s, dfx_error *err)
{
    const dfx_model_config *mc = &s->m->cfg;
    double *rms = s->coef;
    if (s->be->ops->err_norm(s->be, s->x, s->x, s->x, 0.0, 1.0, s->rows, s->dim, rms, err))
        return -1;
    double lim = 100.0 * fmax(1.0, fmax(fabs(mc->range_lo), fabs(mc->range_hi))), worst = 0.0;
    for (int r = 0; r < s->rows; r++) worst = fmax(worst, rms[r]);
    if (!(worst > lim)) return 0;
    double tmax, rmax = stability(s, &tmax, NULL);
    if (!(rmax > 2.0)) return 0; /* a stable scheme: what the model gives */
    return dfx_fail(err,
                    "%s diverged: the samples' RMS reached %.3g, against data within [%g, %g]. "
                    "The explicit step is stable while eps h / s^2 < 2; with --noise %s it "
                    "reaches %.3g at t = %g. Use --noise s, more --steps, a smaller --eps0 or a "
                    "--t-data further from the data end",
                    s->def->d.name, worst, mc->range_lo, mc->range_hi,
                    dfx_noise_name(s->o.noise), rmax, tmax);
}
