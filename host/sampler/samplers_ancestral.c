/*
 * Samplers built on the denoiser: DDIM (and its stochastic forms, which
 * include k-diffusion's euler_ancestral), DDPM ancestral sampling, and
 * DPM-Solver++ (2M, and 2M SDE). All are written for the general path
 * x_t = a x_hat + s z_hat + m of MATH.md section 1, without dividing by a,
 * so they also start from pure noise (a = 0) on interpolants.
 *
 * Each step makes one network evaluation P (the native prediction); x_hat
 * and z_hat are affine in (x, P), so every update is one lincomb:
 *     x' = k_x x + k_P P + k_z z + k_0.
 */
#include "core/error.h"
#include "sampler/sampler.h"

#include <math.h>

/* x_hat = Ad x + Bd P + Cd and z_hat = Ae x + Be P + Ce at time t. */
typedef struct x0eps {
    double Ad, Bd, Cd, Ae, Be, Ce;
} x0eps;

static int x0eps_at(const dfx_sampler *s, double t, x0eps *q, dfx_error *err)
{
    return dfx_s_conv(s, t, s->m->native, DFX_PRED_DATA, &q->Ad, &q->Bd, &q->Cd, err) ||
           dfx_s_conv(s, t, s->m->native, DFX_PRED_EPS, &q->Ae, &q->Be, &q->Ce, err);
}

/* X = x_hat post-processed as the model's scheduler does (clip,
 * thresholding); only where the model asks for it. */
static int xhat_post(dfx_sampler *s, double Ad, double Bd, double Cd, const float *P, float *X,
                     dfx_error *err)
{
    const float *xs[2] = {s->x, P};
    double cs[2] = {Ad, Bd};
    dfx_s_lincomb(s, X, 2, xs, cs, Cd);
    return dfx_s_xhat_post(s, X, err);
}

/* x' = kd x_hat + ke z_hat + kz z + k0, as a lincomb over (x, P, z), or
 * over (x, P, X, z) with the post-processed x_hat X (whose z_hat stays the
 * network's, as in diffusers' DDIM). */
static int apply(dfx_sampler *s, const x0eps *q, const float *P, const float *z, double kd,
                 double ke, double kz, double k0, dfx_error *err)
{
    if (dfx_s_xhat_post_on(s)) {
        float *X = s->buf[2];
        if (xhat_post(s, q->Ad, q->Bd, q->Cd, P, X, err)) return -1;
        const float *xs[4] = {s->x, P, X, z};
        double cs[4] = {ke * q->Ae, ke * q->Be, kd, kz};
        dfx_s_lincomb(s, s->x, z ? 4 : 3, xs, cs, k0 + ke * q->Ce);
        return 0;
    }
    const float *xs[3] = {s->x, P, z};
    double cs[3] = {kd * q->Ad + ke * q->Ae, kd * q->Bd + ke * q->Be, kz};
    dfx_s_lincomb(s, s->x, z ? 3 : 2, xs, cs, k0 + kd * q->Cd + ke * q->Ce);
    return 0;
}

static int step_done(dfx_sampler *s, int i, dfx_error *err)
{
    if (dfx_s_check(s, i + 1, s->grid[i + 1], err)) return -1;
    dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    return 0;
}

/* One network evaluation per grid step, then an update rule. */
typedef int (*step_rule)(dfx_sampler *s, int i, const dfx_coef *c0, const dfx_coef *c1,
                         const float *P, float *z, dfx_error *err);

static int run_rule(dfx_sampler *s, step_rule rule, dfx_error *err)
{
    float *P = s->buf[0], *z = s->buf[1];
    for (int i = 0; i < s->n; i++) {
        dfx_coef c0, c1;
        dfx_path_eval(&s->m->cfg.path, s->grid[i], &c0);
        dfx_path_eval(&s->m->cfg.path, s->grid[i + 1], &c1);
        if (dfx_s_eval(s, s->grid[i], s->x, s->m->native, P, err) ||
            rule(s, i, &c0, &c1, P, z, err) || step_done(s, i, err))
            return -1;
    }
    return 0;
}

/*
 * DDIM with eta (Song et al. 2021), in path form. With rho = sigma'/sigma
 * the ratio of noise-to-signal levels (sigma = s/a) and
 * r = min(1, eta sqrt(1 - rho^2)):
 *     x' = a' x_hat + s' (sqrt(1 - r^2) z_hat + r z) + m'.
 * eta = 0 is deterministic DDIM; eta = 1 is DDPM's posterior variance and
 * k-diffusion's euler_ancestral (sigma_up = r sigma', sigma_down =
 * sqrt(1 - r^2) sigma').
 */
static int ddim_rule(dfx_sampler *s, int i, const dfx_coef *c0, const dfx_coef *c1,
                     const float *P, float *z, dfx_error *err)
{
    x0eps q;
    if (x0eps_at(s, s->grid[i], &q, err)) return -1;
    double r = 0.0;
    if (s->eta > 0.0) {
        double rho = (c0->a * c1->s) / (c1->a * c0->s); /* 0 where a = 0 */
        r = fmin(1.0, s->eta * sqrt(fmax(0.0, 1.0 - rho * rho)));
        dfx_s_noise(s, z, (uint32_t)(i + 1), DFX_STREAM_STEP);
    }
    return apply(s, &q, P, r > 0.0 ? z : NULL, c1->a, c1->s * sqrt(1.0 - r * r), c1->s * r,
                 c1->m, err);
}

int dfx_run_ddim(dfx_sampler *s, dfx_error *err)
{
    return run_rule(s, ddim_rule, err);
}

/*
 * DDPM ancestral sampling (Ho et al. 2020): draw x_{t'} from the posterior
 * q(x_{t'} | x_t, x_0 = x_hat) of the path. With u = x_{t'} - m', the
 * transition x_t - m = alpha u + beta e, alpha = a/a', beta^2 = s^2 -
 * alpha^2 s'^2, and the prior u ~ N(a' x_hat, s'^2):
 *     mean = (beta^2 / s^2) a' x_hat + (alpha s'^2 / s^2)(x_t - m)
 *     var  = s'^2 beta^2 / s^2.
 */
static int ddpm_rule(dfx_sampler *s, int i, const dfx_coef *c0, const dfx_coef *c1,
                     const float *P, float *z, dfx_error *err)
{
    double alpha = c0->a / c1->a, s2 = c0->s * c0->s;
    double beta2 = fmax(0.0, s2 - alpha * alpha * c1->s * c1->s);
    double kd = beta2 / s2 * c1->a, kx = alpha * c1->s * c1->s / s2;
    double kz = c1->s * sqrt(beta2 / s2);
    double Ad, Bd, Cd;
    if (dfx_s_conv(s, s->grid[i], s->m->native, DFX_PRED_DATA, &Ad, &Bd, &Cd, err)) return -1;
    dfx_s_noise(s, z, (uint32_t)(i + 1), DFX_STREAM_STEP);
    if (dfx_s_xhat_post_on(s)) {
        float *X = s->buf[2];
        if (xhat_post(s, Ad, Bd, Cd, P, X, err)) return -1;
        const float *xs[3] = {s->x, X, z};
        double cs[3] = {kx, kd, kz};
        dfx_s_lincomb(s, s->x, 3, xs, cs, c1->m - kx * c0->m);
        return 0;
    }
    const float *xs[3] = {s->x, P, z};
    double cs[3] = {kx + kd * Ad, kd * Bd, kz};
    dfx_s_lincomb(s, s->x, 3, xs, cs, c1->m - kx * c0->m + kd * Cd);
    return 0;
}

int dfx_run_ddpm(dfx_sampler *s, dfx_error *err)
{
    return run_rule(s, ddpm_rule, err);
}

/*
 * DPM-Solver++ (Lu et al. 2022), data prediction, multistep in
 * lambda = log(a/s), h = lambda' - lambda, r = h_prev / h:
 *   2M:      x' - m' = (s'/s)(x - m) + a' (1 - e^-h) D,
 *            D = (1 + 1/(2r)) x_hat - (1/(2r)) x_hat_prev
 *   2M SDE:  x' - m' = (s'/s) e^(-h eta) (x - m) + a' (1 - e^(-h (1 + eta))) D
 *                      + s' sqrt(1 - e^(-2 h eta)) z,
 *            D = (1 + 1/(2r)) x_hat - (1/(2r)) x_hat_prev   (midpoint form)
 * D = x_hat on the first step, and after an infinite h (from a = 0).
 * Buffers: P (prediction), X (this x_hat), Y (previous x_hat).
 */
static int run_dpmpp(dfx_sampler *s, double eta, dfx_error *err)
{
    float *P = s->buf[0], *X = s->buf[1], *Y = s->buf[2], *z = s->buf[3];
    const dfx_path *p = &s->m->cfg.path;
    double h_prev = INFINITY;
    for (int i = 0; i < s->n; i++) {
        double t0 = s->grid[i], t1 = s->grid[i + 1];
        dfx_coef c0, c1;
        dfx_path_eval(p, t0, &c0);
        dfx_path_eval(p, t1, &c1);
        double h = dfx_path_logsnr(p, t1) - dfx_path_logsnr(p, t0);
        if (dfx_s_xhat(s, t0, P, X, err)) return -1;
        double half_r = (isfinite(h_prev) && isfinite(h)) ? 0.5 * h / h_prev : 0.0;
        /* eta > 0 from a = 0 (h infinite): the state's weight is exp(-inf) = 0 */
        double kx = c1.s / c0.s * (eta > 0.0 ? exp(-h * eta) : 1.0);
        double kD = -c1.a * expm1(-h * (1.0 + eta));
        double kz = eta > 0.0 ? c1.s * sqrt(-expm1(-2.0 * h * eta)) : 0.0;
        const float *xs[4] = {s->x, X, Y, z};
        double cs[4] = {kx, kD * (1.0 + half_r), -kD * half_r, kz};
        if (kz > 0.0) dfx_s_noise(s, z, (uint32_t)(i + 1), DFX_STREAM_STEP);
        dfx_s_lincomb(s, s->x, kz > 0.0 ? 4 : 3, xs, cs, c1.m - kx * c0.m);
        float *tmp = X; /* this x_hat is the next step's previous one */
        X = Y;
        Y = tmp;
        h_prev = h;
        if (step_done(s, i, err)) return -1;
    }
    return 0;
}

int dfx_run_dpmpp_2m(dfx_sampler *s, dfx_error *err)
{
    return run_dpmpp(s, 0.0, err);
}

int dfx_run_dpmpp_2m_sde(dfx_sampler *s, dfx_error *err)
{
    return run_dpmpp(s, s->eta, err);
}

/*
 * DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde), in path form:
 * with g = h (1 + eta), phi2 = (1 - e^-g)/g ... as k-diffusion's
 * phi_2 = expm1(-g)/g + 1, phi_3 = phi_2/g - 1/2,
 *   x' - m' = (s'/s) e^(-h eta) (x - m) + a' (1 - e^-g) x_hat
 *             + a' (phi_2 d1 - phi_3 d2) + s' sqrt(1 - e^(-2 h eta)) z,
 * d1, d2 the first and second divided differences of the last three x_hat
 * in lambda (d2 = 0 on the second step, both 0 on the first and after an
 * infinite h), r0 = h_1/h, r1 = h_2/h:
 *   d1_0 = (X - X_1)/r0, d1_1 = (X_1 - X_2)/r1,
 *   d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1), d2 = (d1_0 - d1_1)/(r0 + r1).
 * The last step to a = 1, s = 0 (h infinite) is x' = x_hat. The noise is
 * the per-sample Philox draw of the step (batch-invariant).
 * Buffers: P, X (this x_hat), X1, X2 (the two before), z.
 */
int dfx_run_dpmpp_3m_sde(dfx_sampler *s, dfx_error *err)
{
    float *P = s->buf[0], *X = s->buf[1], *X1 = s->buf[2], *X2 = s->buf[3], *z = s->buf[4];
    const dfx_path *p = &s->m->cfg.path;
    const double eta = s->eta;
    double h1 = INFINITY, h2 = INFINITY; /* the last two steps' h (inf: none) */
    for (int i = 0; i < s->n; i++) {
        double t0 = s->grid[i], t1 = s->grid[i + 1];
        dfx_coef c0, c1;
        dfx_path_eval(p, t0, &c0);
        dfx_path_eval(p, t1, &c1);
        double h = dfx_path_logsnr(p, t1) - dfx_path_logsnr(p, t0);
        if (dfx_s_xhat(s, t0, P, X, err)) return -1;
        double g = h * (1.0 + eta);
        double kx = c1.s / c0.s * (eta > 0.0 ? exp(-h * eta) : 1.0);
        double kD = -c1.a * expm1(-g);
        /* from a = 0 (h infinite) the state's weight is 0 and the noise s' z */
        double kz = eta > 0.0 ? c1.s * sqrt(-expm1(-2.0 * h * eta)) : 0.0;
        /* coefficients of X, X1, X2 from the divided differences */
        double cX = kD, c1X = 0.0, c2X = 0.0;
        if (isfinite(h) && isfinite(h1)) {
            double phi2 = expm1(-g) / g + 1.0, phi3 = phi2 / g - 0.5;
            double r0 = h1 / h;
            if (isfinite(h2)) {
                double r1 = h2 / h, w = r0 / (r0 + r1), v = 1.0 / (r0 + r1);
                /* d1_0 = (X - X1)/r0, d1_1 = (X1 - X2)/r1 */
                double a0 = 1.0 / r0, a1 = -1.0 / r0 - 1.0 / r1, a2 = 1.0 / r1; /* d1_0 - d1_1 */
                double d1X = 1.0 / r0 + w * a0, d1X1 = -1.0 / r0 + w * a1, d1X2 = w * a2;
                double d2X = v * a0, d2X1 = v * a1, d2X2 = v * a2;
                cX += c1.a * (phi2 * d1X - phi3 * d2X);
                c1X += c1.a * (phi2 * d1X1 - phi3 * d2X1);
                c2X += c1.a * (phi2 * d1X2 - phi3 * d2X2);
            } else { /* second step: 2M with phi_2 */
                cX += c1.a * phi2 / r0;
                c1X -= c1.a * phi2 / r0;
            }
        }
        const float *xs[5] = {s->x, X, X1, X2, z};
        double cs[5] = {kx, cX, c1X, c2X, kz};
        if (kz > 0.0) dfx_s_noise(s, z, (uint32_t)(i + 1), DFX_STREAM_STEP);
        if (!isfinite(h)) { /* to s = 0, or from a = 0 */
            cs[0] = isfinite(kx) ? kx : 0.0;
            cs[1] = kD;
            cs[2] = cs[3] = 0.0;
        }
        dfx_s_lincomb(s, s->x, kz > 0.0 ? 5 : 4, xs, cs, c1.m - cs[0] * c0.m);
        float *tmp = X2; /* rotate: X becomes X1, X1 becomes X2 */
        X2 = X1;
        X1 = X;
        X = tmp;
        h2 = h1;
        h1 = h;
        if (step_done(s, i, err)) return -1;
    }
    return 0;
}
