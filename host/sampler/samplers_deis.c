/*
 * DEIS (Zhang & Chen 2023), the multistep exponential integrator on the
 * noise prediction z_hat. In path form (MATH.md section 2), y = (x - m)/a
 * and rho = s/a turn the probability-flow ODE into dy/drho = z_hat exactly,
 * so a step from rho_0 to rho_1 is
 *   y_1 = y_0 + sum_j C_j z_hat_j,  C_j = int_{rho_0}^{rho_1} L_j(u(rho)) drho,
 * with z_hat_0 this step's evaluation, z_hat_1, z_hat_2 the earlier ones
 * and L_j the Lagrange basis through their points in the variable u:
 *   tab    (the paper's tAB-DEIS): u = t, the path's own time; C_j by
 *          8-point Gauss-Legendre in log rho, or in rho on a last step to
 *          s = 0;
 *   logrho (diffusers' DEISMultistepScheduler): u = log rho; C_j in closed
 *          form, rho_0 int_0^h L_j(w) e^w dw with w = log(rho/rho_0) and
 *          h = log(rho_1/rho_0).
 * Order 1 is DDIM in both. The order of a step is min(--order, evaluations
 * so far), lowered on the last steps of runs below 15 steps as diffusers
 * does (lower_order_final), and 1 from a = 0 (rho infinite) where the step
 * is x' = m' + a' x_hat + s' z_hat. A point at a = 0 stays a node of tab's
 * polynomial, not of logrho's (its log rho is infinite), so from a = 0
 * logrho's first two steps are first order, and its order 3 runs at 2. Where the model post-processes x_hat
 * (clip, thresholding), z_hat comes from the post-processed x_hat, as in
 * diffusers. One network evaluation per step.
 */
#include "core/error.h"
#include "sampler/sampler.h"

#include <math.h>
#include <string.h>

#define DEIS_MAX 3

/* 8-point Gauss-Legendre on [-1, 1]: the positive nodes and their weights */
static const double gl_x[4] = {0.1834346424956498, 0.5255324099163290, 0.7966664774136267,
                               0.9602898564975363};
static const double gl_w[4] = {0.3626837833783620, 0.3137066458778873, 0.2223810344533745,
                               0.1012285362903763};

/* I_k(h) = int_0^h w^k e^w dw for h finite or -inf: a series for small |h|
 * (the closed form cancels there), e^h P_k(h) - P_k(0) otherwise, with
 * P_k(w) = sum_j (-1)^j k!/(k-j)! w^(k-j). */
static double expint(int k, double h)
{
    double fact = 1.0;
    for (int j = 2; j <= k; j++) fact *= j;
    if (h == -INFINITY) return (k % 2 ? 1.0 : -1.0) * fact;
    if (fabs(h) < 0.5) {
        double sum = 0.0, term = pow(h, k + 1); /* h^(n+k+1)/n! */
        for (int n = 0; n < 30; n++) {
            sum += term / (n + k + 1);
            term *= h / (n + 1);
        }
        return sum;
    }
    double P = 0.0, c = 1.0; /* c = k!/(k-j)! */
    for (int j = 0; j <= k; j++) {
        P += (j % 2 ? -c : c) * pow(h, k - j);
        c *= k - j;
    }
    return exp(h) * P - (k % 2 ? -fact : fact);
}

/* The Lagrange basis polynomial j through u[0..p-1]: at v ... */
static double lagrange(int p, const double *u, int j, double v)
{
    double l = 1.0;
    for (int k = 0; k < p; k++)
        if (k != j) l *= (v - u[k]) / (u[j] - u[k]);
    return l;
}

/* ... and its monomial coefficients c[0..p-1]. */
static void lagrange_poly(int p, const double *u, int j, double *c)
{
    double den = 1.0;
    int deg = 0;
    c[0] = 1.0;
    for (int i = 1; i < p; i++) c[i] = 0.0;
    for (int k = 0; k < p; k++) {
        if (k == j) continue;
        for (int i = deg + 1; i >= 1; i--) c[i] = c[i - 1] - u[k] * c[i];
        c[0] *= -u[k];
        deg++;
        den *= u[j] - u[k];
    }
    for (int i = 0; i < p; i++) c[i] /= den;
}

/* The step's C_j for order p from rho0 to rho1 >= 0 through the points
 * rho[k], t[k] (k = 0: this step's). */
static void coefs(const dfx_path *pa, int p, int tab, double rho1, const double *rho,
                  const double *t, double *C)
{
    const double rho0 = rho[0];
    if (p == 1) {
        C[0] = rho1 - rho0;
        return;
    }
    if (!tab) {
        double w[DEIS_MAX], c[DEIS_MAX], h = rho1 > 0.0 ? log(rho1 / rho0) : -INFINITY;
        for (int k = 0; k < p; k++) w[k] = log(rho[k] / rho0);
        for (int j = 0; j < p; j++) {
            lagrange_poly(p, w, j, c);
            double acc = 0.0;
            for (int i = 0; i < p; i++) acc += c[i] * expint(i, h);
            C[j] = rho0 * acc;
        }
        return;
    }
    for (int j = 0; j < p; j++) C[j] = 0.0;
    for (int q = 0; q < 8; q++) {
        double x = q < 4 ? -gl_x[3 - q] : gl_x[q - 4], wq = q < 4 ? gl_w[3 - q] : gl_w[q - 4];
        double r, jac; /* the node's rho and drho/dx */
        if (rho1 > 0.0) {
            double u0 = log(rho0), u1 = log(rho1);
            r = exp(0.5 * (u0 + u1) + 0.5 * (u1 - u0) * x);
            jac = 0.5 * (u1 - u0) * r;
        } else {
            r = 0.5 * rho0 * (1.0 - x);
            jac = -0.5 * rho0;
        }
        double tq = dfx_path_t_of_logsnr(pa, -log(r));
        for (int j = 0; j < p; j++) C[j] += wq * jac * lagrange(p, t, j, tq);
    }
}

int dfx_run_deis(dfx_sampler *s, dfx_error *err)
{
    const dfx_path *p = &s->m->cfg.path;
    const int order = s->o.order ? s->o.order : 2, tab = s->variant == 0;
    const int post = dfx_s_xhat_post_on(s);
    /* buffers: P, x_hat, the last DEIS_MAX z_hat (newest first) */
    float *P = s->buf[0], *X = s->buf[1], *Z[DEIS_MAX] = {s->buf[2], s->buf[3], s->buf[4]};
    double rho[DEIS_MAX], tk[DEIS_MAX];
    int have = 0;
    for (int i = 0; i < s->n; i++) {
        double t0 = s->grid[i], t1 = s->grid[i + 1];
        dfx_coef c0, c1;
        dfx_path_eval(p, t0, &c0);
        dfx_path_eval(p, t1, &c1);
        float *tmp = Z[DEIS_MAX - 1]; /* the oldest slot takes the new z_hat */
        memmove(Z + 1, Z, (DEIS_MAX - 1) * sizeof *Z);
        Z[0] = tmp;
        memmove(rho + 1, rho, (DEIS_MAX - 1) * sizeof *rho);
        memmove(tk + 1, tk, (DEIS_MAX - 1) * sizeof *tk);
        rho[0] = c0.a > 0.0 ? c0.s / c0.a : INFINITY;
        tk[0] = t0;
        if (have < DEIS_MAX) have++;
        const int from_a0 = !isfinite(rho[0]);
        if (post || from_a0) { /* z_hat = (x - m - a x_hat)/s */
            if (dfx_s_xhat(s, t0, P, X, err)) return -1;
            const float *xs[2] = {s->x, X};
            double cs[2] = {1.0 / c0.s, -c0.a / c0.s};
            dfx_s_lincomb(s, Z[0], 2, xs, cs, -c0.m / c0.s);
        } else if (dfx_s_eval(s, t0, s->x, DFX_PRED_EPS, Z[0], err)) {
            return -1;
        }
        if (from_a0) {
            const float *xs[2] = {X, Z[0]};
            double cs[2] = {c1.a, c1.s};
            dfx_s_lincomb(s, s->x, 2, xs, cs, c1.m);
        } else {
            int pp = order < have ? order : have;
            /* lower_order_final, as diffusers: below 15 steps only */
            if (pp > s->n - i && s->n < 15) pp = s->n - i;
            for (int k = 1; k < pp && !tab; k++) /* log rho is infinite at a = 0 */
                if (!isfinite(rho[k])) pp = k;
            double C[DEIS_MAX];
            coefs(p, pp, tab, c1.s / c1.a, rho, tk, C);
            /* x' = m' + a' ((x - m)/a + sum_j C_j z_hat_j) */
            const float *xs[DEIS_MAX + 1] = {s->x};
            double k = c1.a / c0.a, cs[DEIS_MAX + 1] = {k};
            for (int j = 0; j < pp; j++) {
                xs[j + 1] = Z[j];
                cs[j + 1] = c1.a * C[j];
            }
            dfx_s_lincomb(s, s->x, pp + 1, xs, cs, c1.m - k * c0.m);
        }
        if (dfx_s_check(s, i + 1, t1, err)) return -1;
        dfx_s_progress(s, i + 1, s->n, t1);
    }
    return 0;
}
