/*
 * Deterministic samplers: explicit Runge-Kutta rules on the probability-flow
 * ODE dx/dt = v(t, x), where v is the velocity of the path (MATH.md 1.2).
 * The ODE is integrated in t in whichever direction generation runs, so
 * the step h = t_{i+1} - t_i is negative for diffusions.
 */
#include "core/error.h"
#include "sampler/sampler.h"
#include "sampler/tableau.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * EDM's churn (Karras et al. 2022, Algorithm 2) before step i: where
 * S_tmin <= sigma_i <= S_tmax (sigma = s/a), raise the noise level to
 * sigma^ = sigma_i (1 + gamma), gamma = min(S_churn / n, sqrt(2) - 1), at
 * the time t^ of that level (within [0, 1]), adding fresh noise in the
 * data's scale: (x - m)/a gains sqrt(sigma^2 - sigma_i^2) S_noise z. The
 * step then runs from t^. z is the step's per-sample Philox draw.
 */
static double churn(dfx_sampler *s, int i, float *z)
{
    const dfx_path *p = &s->m->cfg.path;
    double t = s->grid[i];
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    double sg = c.s / c.a;
    if (!(c.a > 0.0) || !isfinite(sg) || sg < s->o.s_tmin || sg > s->o.s_tmax) return t;
    double gamma = fmin(s->o.churn / s->n, sqrt(2.0) - 1.0);
    double th = dfx_path_t_of_logsnr(p, -log(sg * (1.0 + gamma)));
    dfx_coef ch;
    dfx_path_eval(p, th, &ch);
    double sh = ch.s / ch.a;
    if (!(sh > sg) || !isfinite(sh)) return t;
    dfx_s_noise(s, z, (uint32_t)(i + 1), DFX_STREAM_STEP);
    const float *xs[2] = {s->x, z};
    double k = ch.a / c.a;
    double cs[2] = {k, ch.a * sqrt(sh * sh - sg * sg) * s->o.s_noise};
    dfx_s_lincomb(s, s->x, 2, xs, cs, ch.m - k * c.m);
    return th;
}

/* One explicit RK step of x from t0 to t1 (buffers k_0..k_{S-1} =
 * buf[0..S-1], stage input buf[S], none for one stage). */
static int rk_step(dfx_sampler *s, const dfx_rk_tableau *tb, double t0, double t1, dfx_error *err)
{
    const int S = tb->stages;
    float **k = s->buf;
    float *xin = S > 1 ? s->buf[S] : s->x;
    double h = t1 - t0;
    {
        for (int j = 0; j < S; j++) {
            const float *in = s->x;
            if (j > 0) {
                const float *xs[8] = {s->x};
                double cs[8] = {1.0};
                for (int l = 0; l < j; l++) {
                    xs[l + 1] = k[l];
                    cs[l + 1] = h * tb->a[j][l];
                }
                dfx_s_lincomb(s, xin, j + 1, xs, cs, 0.0);
                in = xin;
            }
            /* the last stage of a step that ends on the grid uses that exact time */
            double tj = tb->c[j] == 1.0 ? t1 : t0 + tb->c[j] * h;
            if (dfx_s_eval(s, tj, in, DFX_PRED_VELOCITY, k[j], err)) return -1;
        }
        const float *xs[8] = {s->x};
        double cs[8] = {1.0};
        for (int j = 0; j < S; j++) {
            xs[j + 1] = k[j];
            cs[j + 1] = h * tb->b[j];
        }
        dfx_s_lincomb(s, s->x, S + 1, xs, cs, 0.0);
    }
    return 0;
}

/* Fixed-grid explicit RK, with the churn noise in the buffer after rk_step's. */
static int run_rk(dfx_sampler *s, const dfx_rk_tableau *tb, dfx_error *err)
{
    const int S = tb->stages;
    for (int i = 0; i < s->n; i++) {
        double t0 = s->o.churn > 0.0 ? churn(s, i, s->buf[S > 1 ? S + 1 : S]) : s->grid[i];
        if (rk_step(s, tb, t0, s->grid[i + 1], err)) return -1;
        if (dfx_s_check(s, i + 1, s->grid[i + 1], err)) return -1;
        dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    }
    return 0;
}

/* Restart interval r: its {sigma_min, sigma_max, K, N} (Xu et al.'s EDM
 * interval without --restart), and the main-grid point closest to sigma_min
 * in log sigma that it follows, or -1 where it does not apply (sigma_max
 * not above that point's sigma, or a = 0 there). */
static const double *restart_iv(const dfx_sampler *s, int r)
{
    static const double def[4] = {0.06, 0.30, 2, 3};
    return s->o.restart_n ? s->o.restart[r] : def;
}

static int restart_at(const dfx_sampler *s, int r, dfx_coef *cj, dfx_coef *ch, double *th)
{
    const dfx_path *p = &s->m->cfg.path;
    const double *iv = restart_iv(s, r);
    double best = INFINITY;
    int at = -1;
    for (int i = 1; i <= s->n; i++) {
        double d = fabs(dfx_path_logsnr(p, s->grid[i]) + log(iv[0]));
        if (d < best) best = d, at = i;
    }
    if (at < 0) return -1;
    *th = dfx_path_t_of_logsnr(p, -log(iv[1]));
    dfx_path_eval(p, s->grid[at], cj);
    dfx_path_eval(p, *th, ch);
    double sj = cj->s / cj->a, sh = ch->s / ch->a;
    return sh > sj && isfinite(sh) && cj->a > 0.0 ? at : -1;
}

long dfx_restart_nfe(const dfx_sampler *s)
{
    long extra = 2L * s->n; /* the Heun steps of the main grid, then the restarts' */
    for (int r = 0; r < (s->o.restart_n ? s->o.restart_n : 1); r++) {
        dfx_coef cj, ch;
        double th;
        const double *iv = restart_iv(s, r);
        if (restart_at(s, r, &cj, &ch, &th) >= 0) extra += (long)iv[2] * (long)iv[3] * 2;
    }
    return extra;
}

/*
 * Restart sampling (Xu et al. 2023): Heun steps on the main grid; on
 * reaching the grid time t_j closest to an interval's sigma_min (sigma =
 * s/a), K times: move to t^ with sigma(t^) = sigma_max, adding fresh noise
 * (x - m)/a += sqrt(sigma_max^2 - sigma_j^2) z, and integrate back to t_j
 * with N Heun steps on a Karras grid between the two. Restart k of
 * interval r draws stream DFX_STREAM_RESTART + r, draw k + 1.
 */
int dfx_run_restart(dfx_sampler *s, dfx_error *err)
{
    const int R = s->o.restart_n ? s->o.restart_n : 1;
    int at[DFX_RESTART_MAX];
    dfx_coef cjs[DFX_RESTART_MAX], chs[DFX_RESTART_MAX];
    double ths[DFX_RESTART_MAX];
    for (int r = 0; r < R; r++) at[r] = restart_at(s, r, &cjs[r], &chs[r], &ths[r]);
    double *g = dfx_alloc(DFX_RESTART_STEPS + 1, sizeof *g, "restart grid", err);
    if (!g) return -1;
    int rc = 0;
    float *z = s->buf[3];
    for (int i = 0; i < s->n && rc == 0; i++) {
        rc = rk_step(s, &dfx_heun_tab, s->grid[i], s->grid[i + 1], err);
        for (int r = 0; r < R && rc == 0; r++) {
            if (at[r] != i + 1) continue;
            const double *iv = restart_iv(s, r);
            const dfx_coef cj = cjs[r], ch = chs[r];
            double sj = cj.s / cj.a, sh = ch.s / ch.a;
            int N = (int)iv[3];
            rc = dfx_time_grid(&s->m->cfg.path, DFX_GRID_KARRAS, s->o.rho, 3, ths[r],
                               s->grid[i + 1], N, g, err);
            for (int k = 0; k < (int)iv[2] && rc == 0; k++) {
                s->be->ops->normal(s->be, z, s->o.seed, s->first, s->rows, s->dim,
                                   (uint32_t)(k + 1), (uint32_t)(DFX_STREAM_RESTART + r));
                const float *xs[2] = {s->x, z};
                double kk = ch.a / cj.a, cs[2] = {kk, ch.a * sqrt(sh * sh - sj * sj)};
                dfx_s_lincomb(s, s->x, 2, xs, cs, ch.m - kk * cj.m);
                for (int q = 0; q < N && rc == 0; q++) rc = rk_step(s, &dfx_heun_tab, g[q], g[q + 1], err);
            }
        }
        if (rc == 0) rc = dfx_s_check(s, i + 1, s->grid[i + 1], err);
        if (rc == 0) dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    }
    free(g);
    return rc;
}

int dfx_run_euler(dfx_sampler *s, dfx_error *err)
{
    return run_rk(s, &dfx_euler_tab, err);
}

int dfx_run_heun(dfx_sampler *s, dfx_error *err)
{
    return run_rk(s, &dfx_heun_tab, err);
}

int dfx_run_rk4(dfx_sampler *s, dfx_error *err)
{
    return run_rk(s, &dfx_rk4_tab, err);
}

/* ------------------------------------------------------------- dopri5 */

/*
 * Each sample takes its own steps (per-row t and h) while the batch is
 * evaluated together, so a sample's trajectory — and its result — does not
 * depend on which other samples share its batch.
 */
static int dopri5_loop(dfx_sampler *s, double *tr, double *h, double *tstage, double *enorm,
                       double *prev, int *done, int *last, int *acc, int *act, int *nstep,
                       dfx_error *err);

int dfx_run_dopri5(dfx_sampler *s, dfx_error *err)
{
    const int R = s->rows;
    /* per-row controller state */
    double *dbl = dfx_alloc((size_t)R * 5, sizeof *dbl, "dopri5", err);
    int *ints = dfx_alloc((size_t)R * 5, sizeof *ints, "dopri5", err);
    if (!dbl || !ints) {
        free(dbl);
        free(ints);
        return -1;
    }
    double *tr = dbl, *h = dbl + R, *tstage = dbl + 2 * R, *enorm = dbl + 3 * R,
           *prev = dbl + 4 * R;
    int *done = ints, *last = ints + R, *acc = ints + 2 * R, *act = ints + 3 * R,
        *nstep = ints + 4 * R;
    int rc = dopri5_loop(s, tr, h, tstage, enorm, prev, done, last, acc, act, nstep, err);
    free(dbl);
    free(ints);
    return rc;
}

static int dopri5_loop(dfx_sampler *s, double *tr, double *h, double *tstage, double *enorm,
                       double *prev, int *done, int *last, int *acc, int *act, int *nstep,
                       dfx_error *err)
{
    const int R = s->rows;
    const double T0 = s->t_noise, T1 = s->t_data, span = T1 - T0;
    float **k = s->buf; /* k[0..6] */
    float *xin = s->buf[7], *e = s->buf[8];
    for (int r = 0; r < R; r++) {
        tr[r] = T0;
        h[r] = 0.05 * span; /* the controller adapts within a few steps */
        prev[r] = 1e-4;
        done[r] = 0;
        nstep[r] = 0;
    }
    double *cf = s->coef;
    if (dfx_s_eval(s, T0, s->x, DFX_PRED_VELOCITY, k[0], err)) return -1;
    long rejected = 0;
    int progress = 0;
    for (;;) {
        int active = 0;
        for (int r = 0; r < R; r++) {
            if (done[r]) {
                h[r] = 0.0;
                continue;
            }
            active++;
            last[r] = 0;
            if (fabs(T1 - tr[r]) <= fabs(h[r]) * (1.0 + 1e-12)) {
                h[r] = T1 - tr[r];
                last[r] = 1;
            }
            if (s->nfe[r] > s->o.max_nfe)
                return dfx_fail(err,
                                "dopri5: sample %llu needed more than %ld evaluations "
                                "(--max-nfe) and stopped at t = %g; loosen --rtol/--atol",
                                (unsigned long long)(s->first + (uint64_t)r), s->o.max_nfe,
                                tr[r]);
            if (fabs(h[r]) < 1e-14 * fabs(span))
                return dfx_fail(err, "dopri5: step size underflow for sample %llu at t = %g",
                                (unsigned long long)(s->first + (uint64_t)r), tr[r]);
        }
        if (!active) break;
        for (int r = 0; r < R; r++) act[r] = !done[r];
        /* stages 2..7; stage 7's input is the 5th-order solution */
        for (int j = 1; j < 7; j++) {
            const float *xs[8] = {s->x};
            for (int r = 0; r < R; r++) cf[r] = 1.0;
            for (int l = 0; l < j; l++) {
                xs[l + 1] = k[l];
                for (int r = 0; r < R; r++) cf[(size_t)(l + 1) * R + r] = h[r] * dfx_dp_a[j][l];
            }
            s->be->ops->lincomb(s->be, j == 6 ? e : xin, j + 1, xs, cf, NULL, R, s->dim);
            for (int r = 0; r < R; r++)
                tstage[r] = (j == 6 && last[r]) ? T1 : tr[r] + dfx_dp_c[j] * h[r];
            if (dfx_s_eval_rows(s, tstage, j == 6 ? e : xin, DFX_PRED_VELOCITY, k[j], act, err))
                return -1;
        }
        /* e holds x5 now; the error estimate goes to xin */
        {
            const float *xs[7];
            for (int l = 0; l < 7; l++) {
                xs[l] = k[l];
                for (int r = 0; r < R; r++) cf[(size_t)l * R + r] = h[r] * dfx_dp_e[l];
            }
            s->be->ops->lincomb(s->be, xin, 7, xs, cf, NULL, R, s->dim);
        }
        if (s->be->ops->err_norm(s->be, xin, s->x, e, s->o.rtol, s->o.atol, R, s->dim, enorm,
                                 err))
            return -1;
        for (int r = 0; r < R; r++) {
            acc[r] = 0;
            if (done[r]) continue;
            double q = enorm[r];
            if (q <= 1.0) {
                acc[r] = 1;
                tr[r] = last[r] ? T1 : tr[r] + h[r];
                if (last[r]) done[r] = 1;
                nstep[r]++;
                /* PI controller (Gustafsson; Hairer & Wanner II.4) */
                double fac = 0.9 * pow(q > 1e-10 ? q : 1e-10, -0.17) * pow(prev[r], 0.04);
                fac = fmin(10.0, fmax(0.2, fac));
                prev[r] = fmax(q, 1e-4);
                h[r] *= fac;
            } else {
                rejected++;
                double fac = isfinite(q) ? fmax(0.2, 0.9 * pow(q, -0.2)) : 0.2;
                h[r] *= fac;
            }
        }
        /* x <- x5 and k1 <- k7 (FSAL) where accepted */
        for (int r = 0; r < R; r++) {
            cf[r] = acc[r] ? 0.0 : 1.0;
            cf[R + r] = acc[r] ? 1.0 : 0.0;
        }
        const float *xs1[2] = {s->x, e};
        s->be->ops->lincomb(s->be, s->x, 2, xs1, cf, NULL, R, s->dim);
        const float *xs2[2] = {k[0], k[6]};
        s->be->ops->lincomb(s->be, k[0], 2, xs2, cf, NULL, R, s->dim);
        double tmin = 1.0;
        for (int r = 0; r < R; r++) tmin = fmin(tmin, (tr[r] - T0) / span);
        if (dfx_s_check(s, nstep[0], T0 + tmin * span, err)) return -1;
        int pct = (int)(tmin * 1000.0);
        if (pct > progress) {
            progress = pct;
            dfx_s_progress(s, pct, 1000, T0 + tmin * span);
        }
    }
    for (int r = 0; r < R; r++)
        if (nstep[r] > s->st->steps) s->st->steps = nstep[r];
    s->st->rejected = rejected;
    return 0;
}
