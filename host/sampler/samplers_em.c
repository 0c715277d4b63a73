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
 * Langevin corrector (Song et al. 2021, Algorithm 5): at time t,
 *     x <- x + e S + sqrt(2 e) z,   e = 2 (snr |z| / |S|)^2 per sample,
 * so the step keeps a fixed signal-to-noise ratio.
 */
static int correct(dfx_sampler *s, int i, float *P, float *z, float *S, dfx_error *err)
{
    dfx_model *m = s->m;
    const int R = s->rows;
    double t = s->grid[i], A, B, C;
    if (dfx_s_conv(s, t, m->native, DFX_PRED_SCORE, &A, &B, &C, err)) return -1;
    for (int j = 0; j < s->o.corrector_steps; j++) {
        if (dfx_s_eval(s, t, s->x, m->native, P, err)) return -1;
        const float *xp[2] = {s->x, P};
        double cp[2] = {A, B};
        dfx_s_lincomb(s, S, 2, xp, cp, C);
        dfx_s_noise(s, z, (uint32_t)(i + 1), (uint32_t)(DFX_STREAM_CORRECT + j));
        /* per-sample RMS norms: err_norm with atol 1, rtol 0 */
        double *gs = s->coef + (size_t)3 * R, *gz = s->coef + (size_t)4 * R;
        if (s->be->ops->err_norm(s->be, S, S, S, 0.0, 1.0, R, s->dim, gs, err) ||
            s->be->ops->err_norm(s->be, z, z, z, 0.0, 1.0, R, s->dim, gz, err))
            return -1;
        double *cf = s->coef;
        for (int r = 0; r < R; r++) {
            double q = gs[r] > 0.0 ? s->o.snr * gz[r] / gs[r] : 0.0;
            double e = 2.0 * q * q;
            cf[r] = 1.0;
            cf[R + r] = e;
            cf[2 * R + r] = sqrt(2.0 * e);
        }
        const float *xs[3] = {s->x, S, z};
        s->be->ops->lincomb(s->be, s->x, 3, xs, cf, NULL, R, s->dim);
        if (dfx_s_check(s, i, t, err)) return dfx_fail_prefix(err, "pc corrector");
    }
    return 0;
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
