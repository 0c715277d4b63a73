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
 */
#include "error.h"
#include "sampler.h"

#include <math.h>

int dfx_run_em(dfx_sampler *s, dfx_error *err)
{
    dfx_model *m = s->m;
    const dfx_pred native = m->cfg.prediction;
    float *P = s->buf[0];
    for (int i = 0; i < s->n; i++) {
        double t0 = s->grid[i], h = s->grid[i + 1] - t0;
        double e = dfx_noise_eps(&m->cfg.path, s->o.noise, s->o.eps0, t0) * fabs(h);
        double Av, Bv, Cv, As, Bs, Cs;
        dfx_coef c;
        dfx_path_eval(&m->cfg.path, t0, &c);
        if (dfx_convert_coefs(&c, native, DFX_PRED_VELOCITY, &Av, &Bv, &Cv, err) ||
            dfx_convert_coefs(&c, native, DFX_PRED_SCORE, &As, &Bs, &Cs, err))
            return dfx_fail_prefix(err, "em at t = %g", t0);
        if (dfx_s_eval(s, t0, s->x, native, P, err)) return -1;
        /* the noise goes into the scratch after P: draw i + 1 (draw 0 made x) */
        float *z = s->buf[1];
        s->be->ops->normal(s->be, z, s->o.seed, s->first, s->rows, s->dim, (uint32_t)(i + 1),
                           DFX_STREAM_STEP);
        const float *xs[3] = {s->x, P, z};
        double cs[3] = {1.0 + h * Av + e * As, h * Bv + e * Bs, sqrt(2.0 * e)};
        dfx_s_lincomb(s, s->x, 3, xs, cs, h * Cv + e * Cs);
        if (dfx_s_check(s, i + 1, s->grid[i + 1], err)) return -1;
        dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    }
    return 0;
}
