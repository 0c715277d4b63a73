/* Paths and predictions (MATH.md section 1): path derivatives, log-SNR
 * inversion, and every conversion between predictions checked against an
 * independent double-precision evaluation of the Gaussian-mixture model
 * (MATH.md section 6). */
#include "check.h"
#include "difflux.h"

#include <stdlib.h>

enum { D = 3, K = 3 };
static const double MU[K][D] = {{0.8, -0.3, 0.1}, {-0.6, 0.5, 0.9}, {0.1, 0.2, -0.7}};
static const double C[K] = {0.3, 0.15, 0.5};
static const double W[K] = {0.5, 0.3, 0.2};

/* Exact data prediction and score of the mixture at (t, x) per MATH.md 6. */
static void gmm_exact(const dfx_coef *c, const double *x, double *xhat, double *score)
{
    double lp[K], best = -1e300, tot = 0;
    for (int k = 0; k < K; k++) {
        double var = c->a * c->a * C[k] * C[k] + c->s * c->s, d2 = 0;
        for (int j = 0; j < D; j++) {
            double d = x[j] - c->a * MU[k][j] - c->m;
            d2 += d * d;
        }
        lp[k] = log(W[k]) - 0.5 * D * log(var) - 0.5 * d2 / var;
        if (lp[k] > best) best = lp[k];
    }
    for (int k = 0; k < K; k++) tot += (lp[k] = exp(lp[k] - best));
    for (int j = 0; j < D; j++) xhat[j] = score[j] = 0;
    for (int k = 0; k < K; k++) {
        double r = lp[k] / tot, var = c->a * c->a * C[k] * C[k] + c->s * c->s;
        for (int j = 0; j < D; j++) {
            double dev = x[j] - c->a * MU[k][j] - c->m;
            score[j] += r * (-dev) / var;
            xhat[j] += r * (MU[k][j] + c->a * C[k] * C[k] * dev / var);
        }
    }
}

/* All five predictions from the definitions of section 1's table. */
static void all_preds(const dfx_coef *c, const double *x, double P[DFX_PRED_COUNT][D])
{
    double xh[D], sc[D];
    gmm_exact(c, x, xh, sc);
    for (int j = 0; j < D; j++) {
        double z = (x[j] - c->m - c->a * xh[j]) / c->s;
        P[DFX_PRED_DATA][j] = xh[j];
        P[DFX_PRED_SCORE][j] = sc[j];
        P[DFX_PRED_EPS][j] = z;
        P[DFX_PRED_VELOCITY][j] = c->da * xh[j] + c->ds * z + c->dm;
        P[DFX_PRED_V][j] = c->a * z - c->s * xh[j];
    }
}

static void check_derivatives(const dfx_path *p)
{
    const double ts[] = {0.05, 0.2, 0.5, 0.8, 0.95};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        /* discrete: between the table's timesteps, where a and s are smooth */
        double t = ts[i] + (p->family == DFX_PATH_DISCRETE ? 0.4 / p->n_train : 0.0), h = 1e-6;
        dfx_coef c, cp, cm;
        dfx_path_eval(p, t, &c);
        dfx_path_eval(p, t + h, &cp);
        dfx_path_eval(p, t - h, &cm);
        double fa = (cp.a - cm.a) / (2 * h), fs = (cp.s - cm.s) / (2 * h);
        char what[96];
        snprintf(what, sizeof what, "%s: da at t=%g", dfx_path_name(p->family), t);
        CHECK_NEAR(c.da, fa, 1e-6 * (1 + fabs(fa)), what);
        snprintf(what, sizeof what, "%s: ds at t=%g", dfx_path_name(p->family), t);
        CHECK_NEAR(c.ds, fs, 1e-6 * (1 + fabs(fs)), what);
        if (p->family == DFX_PATH_VP || p->family == DFX_PATH_VP_COSINE ||
            p->family == DFX_PATH_DISCRETE)
            CHECK_NEAR(c.a * c.a + c.s * c.s, 1.0, 1e-12, "variance preserving");
        double lam = dfx_path_logsnr(p, t);
        CHECK_NEAR(dfx_path_t_of_logsnr(p, lam), t, 1e-9, "t(logsnr(t))");
    }
}

int main(void)
{
    /* Closed forms of the path coefficients. */
    dfx_path p;
    dfx_coef c;
    dfx_path_default(&p, DFX_PATH_LINEAR);
    dfx_path_eval(&p, 0.3, &c);
    CHECK(c.a == 0.3 && c.s == 0.7 && c.da == 1 && c.ds == -1, "linear path");
    dfx_path_default(&p, DFX_PATH_TRIG);
    dfx_path_eval(&p, 1.0 / 3, &c);
    CHECK_NEAR(c.a, 0.5, 1e-15, "trig a(1/3) = sin(pi/6)");
    dfx_path_default(&p, DFX_PATH_VP);
    dfx_path_eval(&p, 1.0, &c);
    CHECK_NEAR(log(c.a), -(0.1 / 2 + 19.9 / 4), 1e-12, "vp log a(1)");
    dfx_path_default(&p, DFX_PATH_VE);
    dfx_path_eval(&p, 0.0, &c);
    CHECK_NEAR(c.s, 0.002, 1e-15, "ve sigma(0)");
    dfx_path_eval(&p, 1.0, &c);
    CHECK_NEAR(c.s, 80.0, 1e-12, "ve sigma(1)");
    CHECK(dfx_path_data_at_one(&(dfx_path){.family = DFX_PATH_LINEAR}) == 1, "linear data end");
    CHECK(dfx_path_data_at_one(&(dfx_path){.family = DFX_PATH_VP}) == 0, "vp data end");
    /* discrete: abar at the table's timesteps, 1 at tau = -1 (t = 0) */
    dfx_path_default(&p, DFX_PATH_DISCRETE);
    for (int tau = -1; tau < 1000; tau += 111) {
        dfx_path_eval(&p, dfx_path_t_of_timestep(&p, tau), &c);
        double abar = 1.0;
        for (int i = 0; i <= tau; i++) abar *= 1.0 - (double)(float)(1e-4 + 0.0199 * i / 999.0);
        CHECK(fabs(c.a * c.a - abar) <= 1e-12 + 1e-9 * abar, "discrete abar at tau %d: %.12g vs %.12g",
              tau, c.a * c.a, abar);
    }
    CHECK_NEAR(dfx_path_timestep(&p, 0.5), 499.0, 1e-12, "discrete tau(1/2)");

    for (int f = 0; f < DFX_PATH_COUNT; f++) {
        dfx_path_default(&p, (dfx_path_family)f);
        check_derivatives(&p);
    }

    /* Every conversion, on every path, at several times and points, against
     * the independent evaluation above. */
    double x[D] = {0.4, -0.2, 0.7};
    const double ts[] = {0.1, 0.35, 0.6, 0.9};
    int pairs = 0;
    for (int f = 0; f < DFX_PATH_COUNT; f++) {
        dfx_path_default(&p, (dfx_path_family)f);
        for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
            dfx_path_eval(&p, ts[ti], &c);
            double P[DFX_PRED_COUNT][D];
            all_preds(&c, x, P);
            for (int from = 0; from < DFX_PRED_COUNT; from++)
                for (int to = 0; to < DFX_PRED_COUNT; to++) {
                    double A, B, Cc;
                    dfx_error err;
                    CHECK_OK(dfx_convert_coefs(&c, (dfx_pred)from, (dfx_pred)to, &A, &B, &Cc,
                                               &err),
                             err);
                    for (int j = 0; j < D; j++) {
                        double got = A * x[j] + B * P[from][j] + Cc, want = P[to][j];
                        CHECK(fabs(got - want) <= 1e-9 * (1 + fabs(want)),
                              "%s t=%g %s->%s: %.12g vs %.12g", dfx_path_name(p.family), ts[ti],
                              dfx_pred_name((dfx_pred)from), dfx_pred_name((dfx_pred)to), got,
                              want);
                    }
                    pairs++;
                }
        }
    }
    CHECK(pairs == DFX_PATH_COUNT * 4 * 25, "pairs checked: %d", pairs);

    /* The model layer (float32, CPU backend) gives the same predictions. */
    dfx_error err = {{0}};
    dfx_backend *be = dfx_backend_create("cpu", 2, &err);
    float means[K * D], stds[K], w[K];
    for (int k = 0; k < K; k++) {
        for (int j = 0; j < D; j++) means[k * D + j] = (float)MU[k][j];
        stds[k] = (float)C[k];
        w[k] = (float)W[k];
    }
    for (int f = 0; f < DFX_PATH_COUNT; f++) {
        dfx_path_default(&p, (dfx_path_family)f);
        dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, -1, 1, K, means, stds, w, &err);
        CHECK(m != NULL, "gmm create: %s", err.msg);
        if (!m) continue;
        double t[2] = {0.3, 0.7};
        float xf[2 * D] = {0.4f, -0.2f, 0.7f, -0.5f, 0.9f, 0.1f};
        for (int want = 0; want < DFX_PRED_COUNT; want++) {
            float out[2 * D];
            CHECK_OK(dfx_model_eval_host(m, t, xf, 2, (dfx_pred)want, out, &err), err);
            for (int r = 0; r < 2; r++) {
                double xd[D], P[DFX_PRED_COUNT][D];
                for (int j = 0; j < D; j++) xd[j] = xf[r * D + j];
                dfx_path_eval(&p, t[r], &c);
                all_preds(&c, xd, P);
                for (int j = 0; j < D; j++)
                    CHECK(fabs(out[r * D + j] - P[want][j]) <= 2e-5 * (1 + fabs(P[want][j])),
                          "model %s %s: %g vs %g", dfx_path_name(p.family),
                          dfx_pred_name((dfx_pred)want), out[r * D + j], P[want][j]);
            }
        }
        dfx_model_free(m);
    }

    /* Single Gaussian: the probability-flow velocity is known in closed form,
     * v = a' mu + (sigma'/sigma) (x - a mu) with sigma^2 = a^2 c^2 + s^2. */
    {
        float mu1[D] = {0.5f, -1.0f, 0.25f}, s1[1] = {0.3f}, w1[1] = {1.0f};
        dfx_path_default(&p, DFX_PATH_TRIG);
        dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, -1, 1, 1, mu1, s1, w1, &err);
        double t[1] = {0.4};
        float xf[D] = {0.1f, 0.3f, -0.8f}, v[D];
        CHECK_OK(dfx_model_eval_host(m, t, xf, 1, DFX_PRED_VELOCITY, v, &err), err);
        dfx_path_eval(&p, t[0], &c);
        double cc = 0.3 * 0.3, sg = sqrt(c.a * c.a * cc + c.s * c.s);
        double dsg = (c.a * c.da * cc + c.s * c.ds) / sg;
        for (int j = 0; j < D; j++) {
            double want = c.da * mu1[j] + dsg / sg * (xf[j] - c.a * mu1[j]);
            CHECK_NEAR(v[j], want, 1e-5, "single-Gaussian velocity");
        }
        dfx_model_free(m);
    }

    /* Singular conversions fail with a message instead of dividing by zero. */
    {
        dfx_path_default(&p, DFX_PATH_LINEAR);
        dfx_path_eval(&p, 1.0, &c); /* s = 0 */
        double A, B, Cc;
        err.msg[0] = 0;
        CHECK(dfx_convert_coefs(&c, DFX_PRED_DATA, DFX_PRED_EPS, &A, &B, &Cc, &err) != 0,
              "data -> eps at s = 0 must fail");
        CHECK(strstr(err.msg, "singular") != NULL, "message: %s", err.msg);
        dfx_path_eval(&p, 0.0, &c); /* a = 0: data cannot be recovered from a score */
        CHECK(dfx_convert_coefs(&c, DFX_PRED_SCORE, DFX_PRED_DATA, &A, &B, &Cc, &err) != 0,
              "score -> data at a = 0 must fail");
        /* ... but eps and score convert there: S = -z_hat / s (here s = 1) */
        CHECK_OK(dfx_convert_coefs(&c, DFX_PRED_EPS, DFX_PRED_SCORE, &A, &B, &Cc, &err), err);
        CHECK(A == 0.0 && B == -1.0 / c.s && Cc == 0.0, "eps -> score at a = 0: %g %g %g", A, B,
              Cc);
        CHECK_OK(dfx_convert_coefs(&c, DFX_PRED_SCORE, DFX_PRED_EPS, &A, &B, &Cc, &err), err);
        CHECK(A == 0.0 && B == -c.s && Cc == 0.0, "score -> eps at a = 0: %g %g %g", A, B, Cc);
    }
    dfx_backend_destroy(be);
    return check_report("test_paths");
}
