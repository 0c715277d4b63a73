/*
 * UniPC (Zhao et al. 2023), data prediction, as diffusers'
 * UniPCMultistepScheduler runs it (predict_x0, lower_order_final): the
 * predictor UniP of order p and the corrector UniC, which reuses the next
 * step's network evaluation, so a step costs one evaluation. In path form
 * (MATH.md section 2), with lambda = log(a/s), h = lambda' - lambda_0,
 * x_hat_0 the current x_hat and x_hat_k, lambda_k the earlier ones:
 *   r_k = (lambda_k - lambda_0)/h, D_k = (x_hat_k - x_hat_0)/r_k,
 *   phi_1 = expm1(-h), B = -h (bh1) or expm1(-h) (bh2),
 *   b_i = g_i i!/B, g_1 = phi_1/(-h) - 1, g_{i+1} = g_i/(-h) - 1/(i+1)!,
 *   R[i][k] = r_k^(i-1) (r_p = 1 for the corrector's x_hat at the new time),
 *   predictor: rho = R^-1 b on the first p - 1 rows (p = 2: rho = 1/2),
 *   x' - m' = (s'/s)(x - m) - a' phi_1 x_hat_0 - a' B sum_k rho_k D_k;
 *   corrector (order p of the step it corrects): rho = R^-1 b on p rows
 *   (p = 1: 1/2), with x_hat' the evaluation at x' (uncorrected),
 *   x' - m' = (s'/s)(x - m) - a' phi_1 x_hat_0
 *             - a' B (sum_k rho_k D_k + rho_p (x_hat' - x_hat_0)).
 * The corrected x' is not evaluated again. Order: min(--order, steps so far
 * + 1, steps left), and 1 where h is infinite (from a = 0, to s = 0).
 */
#include "core/error.h"
#include "sampler/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define UPC_MAX 3

/* Solves the n x n system A y = b (n <= 3) by Gaussian elimination with
 * partial pivoting; 0, or -1 if singular. */
static int solve(int n, double A[UPC_MAX][UPC_MAX], double *b, double *y)
{
    for (int c = 0; c < n; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(A[r][c]) > fabs(A[piv][c])) piv = r;
        if (!(fabs(A[piv][c]) > 0.0)) return -1;
        for (int k = 0; k < n; k++) {
            double t = A[c][k];
            A[c][k] = A[piv][k];
            A[piv][k] = t;
        }
        double t = b[c];
        b[c] = b[piv];
        b[piv] = t;
        for (int r = c + 1; r < n; r++) {
            double f = A[r][c] / A[c][c];
            for (int k = c; k < n; k++) A[r][k] -= f * A[c][k];
            b[r] -= f * b[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double acc = b[r];
        for (int k = r + 1; k < n; k++) acc -= A[r][k] * y[k];
        y[r] = acc / A[r][r];
    }
    return 0;
}

/* The weights rho of UniP (corrector 0: p - 1 of them) or UniC (p of them)
 * for order p, the step's h and the earlier points' r_k; phi_1 and B. */
static int weights(int p, int corrector, int bh1, double h, const double *rk, double *rho,
                   double *phi1, double *Bh)
{
    double hh = -h;
    *phi1 = expm1(hh);
    *Bh = bh1 ? hh : expm1(hh);
    double R[UPC_MAX][UPC_MAX] = {{0}}, b[UPC_MAX] = {0};
    double r[UPC_MAX];
    for (int k = 0; k < p - 1; k++) r[k] = rk[k];
    r[p - 1] = 1.0;
    double g = *phi1 / hh - 1.0, fact = 1.0;
    for (int i = 0; i < p; i++) {
        for (int k = 0; k < p; k++) R[i][k] = pow(r[k], i);
        b[i] = g * fact / *Bh;
        fact *= i + 2;
        g = g / hh - 1.0 / fact;
    }
    if (!corrector) {
        if (p == 1) return 0;
        if (p == 2) {
            rho[0] = 0.5;
            return 0;
        }
        return solve(p - 1, R, b, rho);
    }
    if (p == 1) {
        rho[0] = 0.5;
        return 0;
    }
    return solve(p, R, b, rho);
}

/*
 * One update x_to = (s1/s0)(x_from - m0) + m1 - a1 phi1 X0 - a1 B (sum rho_k
 * (Xk - X0)/r_k [+ rho_p (Xt - X0)]), as one lincomb over x_from, X0, the
 * earlier Xk and Xt.
 */
static void update(dfx_sampler *s, float *out, const float *from, const dfx_coef *c0,
                   const dfx_coef *c1, float *const *Xs, const double *rk, const double *rho,
                   int nd, const float *Xt, double rho_t, double phi1, double Bh)
{
    const float *xs[UPC_MAX + 3] = {from, Xs[0]};
    double k = c1->s / c0->s, cs[UPC_MAX + 3] = {k, -c1->a * phi1};
    int n = 2;
    for (int j = 0; j < nd; j++) {
        double w = -c1->a * Bh * rho[j] / rk[j];
        xs[n] = Xs[j + 1];
        cs[n++] = w;
        cs[1] -= w;
    }
    if (Xt) {
        double w = -c1->a * Bh * rho_t;
        xs[n] = Xt;
        cs[n++] = w;
        cs[1] -= w;
    }
    dfx_s_lincomb(s, out, n, xs, cs, c1->m - k * c0->m);
}

int dfx_run_unipc(dfx_sampler *s, dfx_error *err)
{
    const dfx_path *p = &s->m->cfg.path;
    const int order = s->o.order ? s->o.order : 2, bh1 = s->variant == 1;
    /* buffers: P, the last UPC_MAX x_hat (newest first), the uncorrected state */
    float *P = s->buf[0], *X[UPC_MAX + 1] = {s->buf[1], s->buf[2], s->buf[3], s->buf[4]};
    float *xlast = s->buf[5];
    double lam[UPC_MAX + 1]; /* lambda of each X */
    int have = 0, prev_order = 0;
    for (int i = 0; i < s->n; i++) {
        double t0 = s->grid[i], t1 = s->grid[i + 1];
        /* this step's x_hat, at the (uncorrected) state */
        float *tmp = X[UPC_MAX]; /* the oldest slot takes the new x_hat */
        memmove(X + 1, X, UPC_MAX * sizeof *X);
        X[0] = tmp;
        memmove(lam + 1, lam, UPC_MAX * sizeof *lam);
        lam[0] = dfx_path_logsnr(p, t0);
        if (have < UPC_MAX + 1) have++;
        if (dfx_s_xhat(s, t0, P, X[0], err)) return -1;
        dfx_coef c0, c1;
        double hc = lam[0] - lam[1];
        if (i > 0 && isfinite(hc)) { /* UniC: correct this step's state with its own x_hat */
            double h = hc, rk[UPC_MAX], rho[UPC_MAX], phi1, Bh;
            int pc = prev_order;
            for (int k = 0; k < pc - 1; k++) rk[k] = (lam[k + 2] - lam[1]) / h;
            if (weights(pc, 1, bh1, h, rk, rho, &phi1, &Bh))
                return dfx_fail(err, "unipc: singular corrector system at step %d", i);
            dfx_path_eval(p, s->grid[i - 1], &c0);
            dfx_path_eval(p, t0, &c1);
            update(s, s->x, xlast, &c0, &c1, X + 1, rk, rho, pc - 1, X[0], rho[pc - 1], phi1,
                   Bh);
        }
        /* UniP from the corrected state */
        dfx_path_eval(p, t0, &c0);
        dfx_path_eval(p, t1, &c1);
        double h = dfx_path_logsnr(p, t1) - lam[0], rk[UPC_MAX], rho[UPC_MAX], phi1, Bh;
        int pp = order < have ? order : have;
        /* lower_order_final, as DPM-Solver in diffusers: below 15 steps only */
        if (pp > s->n - i && s->n < 15) pp = s->n - i;
        if (!isfinite(h)) pp = 1;
        for (int k = 0; k < pp - 1; k++) {
            rk[k] = (lam[k + 1] - lam[0]) / h;
            if (!isfinite(rk[k])) pp = k + 1;
        }
        if (weights(pp, 0, bh1, h, rk, rho, &phi1, &Bh))
            return dfx_fail(err, "unipc: singular predictor system at step %d", i);
        const float *keep[1] = {s->x};
        double one[1] = {1.0};
        dfx_s_lincomb(s, xlast, 1, keep, one, 0.0);
        if (!isfinite(h)) { /* to s = 0 or from a = 0: the first-order (DDIM) step */
            const float *xs[2] = {s->x, X[0]};
            double k = isfinite(c1.s / c0.s) ? c1.s / c0.s : 0.0;
            double cs[2] = {k, c1.a};
            dfx_s_lincomb(s, s->x, 2, xs, cs, c1.m - k * c0.m);
        } else {
            update(s, s->x, xlast, &c0, &c1, X, rk, rho, pp - 1, NULL, 0.0, phi1, Bh);
        }
        prev_order = pp;
        if (dfx_s_check(s, i + 1, t1, err)) return -1;
        dfx_s_progress(s, i + 1, s->n, t1);
    }
    return 0;
}
