/*
 * The likelihood by the probability-flow ODE (host/analysis/likelihood.c,
 * MATH.md section 8) against closed forms:
 *   - divergence of an affine field A x + b: exactly trace(A); Hutchinson's
 *     estimate has mean trace(A) and the closed-form variance of u.Au
 *     (Rademacher: sum_{i<j} (A_ij + A_ji)^2; Gaussian: ||A + A^T||_F^2 / 2),
 *     divided by K for K probes;
 *   - the whole likelihood of an affine (diagonal) velocity field, whose
 *     flow and divergence integral are closed forms: dopri5 to 1e-7, and
 *     heun's and rk4's observed orders;
 *   - the exact Gaussian mixture on the linear, VP and trig paths: the ODE
 *     result equals the mixture's density at t_data within 1e-3 nats per
 *     dimension (exact divergence), from either start (exact marginal or,
 *     on the linear path, the path's N(0, I) at t = 0), and Hutchinson's
 *     result is unbiased;
 *   - the dale path: the log-normal mixture's density in x, which includes
 *     the Jacobian of y = log x;
 *   - batch invariance, and the bits/dim convention.
 */
#include "check.h"
#include "difflux.h"
#include "io/safetensors.h"

#include <unistd.h>

static dfx_backend *be;

enum { AD = 6 }; /* affine fields: 1 x 2 x 3 images */

/* start: "" or the config's "start" object; S (with it): start.mean, start.scale */
static dfx_model *affine_model_start(const float *A, const float *b, const char *family,
                                     const char *start, const float *mean, const float *S)
{
    char dir[] = "/tmp/difflux-test-lik-XXXXXX", path[600], cfg[512];
    if (!mkdtemp(dir)) return NULL;
    snprintf(path, sizeof path, "%s/affine.safetensors", dir);
    snprintf(cfg, sizeof cfg,
             "{\"version\":1,\"kind\":\"affine\",\"image\":{\"channels\":1,\"height\":2,"
             "\"width\":3},\"path\":{\"family\":\"%s\"},\"prediction\":\"velocity\"%s%s}",
             family, start[0] ? ",\"start\":" : "", start);
    dfx_st_out t[4] = {{"affine.A", DFX_F32, 2, {AD, AD}, A},
                       {"affine.b", DFX_F32, 1, {AD}, b},
                       {"start.mean", DFX_F32, 1, {AD}, mean},
                       {"start.scale", DFX_F32, 2, {AD, AD}, S}};
    dfx_error err = {{0}};
    dfx_model *m = NULL;
    CHECK_OK(dfx_st_write(path, cfg, t, S ? 4 : 2, &err), err);
    m = dfx_model_load(path, be, &err);
    CHECK(m != NULL, "%s", err.msg);
    remove(path);
    rmdir(dir);
    return m;
}

static dfx_model *affine_model(const float *A, const float *b, const char *family)
{
    return affine_model_start(A, b, family, "", NULL, NULL);
}

/* The fitted start's density, per value and with a full covariance S S^T
 * (S not triangular): with v = 0 the likelihood is that density at x,
 * here by Gauss-Jordan inversion and elimination's determinant. */
static void fitted_start(void)
{
    float A[AD * AD] = {0}, b[AD] = {0}, mean[AD], S[AD * AD];
    test_rng rng = {3};
    for (int j = 0; j < AD; j++) mean[j] = (float)(0.3 * j - 0.5);
    for (int i = 0; i < AD * AD; i++) S[i] = (float)(0.4 * rng_uniform(&rng) - 0.2);
    for (int j = 0; j < AD; j++) S[j * AD + j] += 1.0f;
    const float x[AD] = {0.2f, -0.3f, 1.1f, 0.4f, -0.9f, 0.6f};
    dfx_error err = {{0}};
    dfx_lik_opts o;
    dfx_lik_opts_default(&o);
    o.div = DFX_DIV_EXACT;
    dfx_lik_point p;
    dfx_model *m = affine_model_start(A, b, "vp", "{\"mean\":0.1,\"std\":0.7}", NULL, NULL);
    if (m) {
        CHECK_OK(dfx_log_likelihood(m, &o, x, 1, 0, &p, &err), err);
        double q = 0;
        for (int j = 0; j < AD; j++) q += (x[j] - 0.1) * (x[j] - 0.1) / 0.49;
        CHECK_NEAR(p.logp, -0.5 * q - AD * log(0.7 * sqrt(2 * M_PI)), 1e-9, "per-value start");
        dfx_model_free(m);
    }
    m = affine_model_start(A, b, "vp", "{\"mean\":0,\"std\":1,\"full\":true}", mean, S);
    if (!m) return;
    CHECK_OK(dfx_log_likelihood(m, &o, x, 1, 0, &p, &err), err);
    double C[AD][2 * AD], det = 1;
    for (int i = 0; i < AD; i++)
        for (int j = 0; j < AD; j++) {
            double acc = 0;
            for (int k = 0; k < AD; k++) acc += (double)S[i * AD + k] * S[j * AD + k];
            C[i][j] = acc;
            C[i][AD + j] = i == j;
        }
    for (int c = 0; c < AD; c++) { /* no pivoting: C is positive definite */
        det *= C[c][c];
        double d = C[c][c];
        for (int j = 0; j < 2 * AD; j++) C[c][j] /= d;
        for (int i = 0; i < AD; i++) {
            if (i == c) continue;
            double f = C[i][c];
            for (int j = 0; j < 2 * AD; j++) C[i][j] -= f * C[c][j];
        }
    }
    double q = 0;
    for (int i = 0; i < AD; i++)
        for (int j = 0; j < AD; j++) q += (x[i] - mean[i]) * C[i][AD + j] * (x[j] - mean[j]);
    CHECK_NEAR(p.logp, -0.5 * q - 0.5 * log(det) - 0.5 * AD * log(2 * M_PI), 1e-6,
               "full-covariance start");
    CHECK(dfx_log_likelihood(m, &(dfx_lik_opts){.div = DFX_DIV_EXACT, .batch = 8, .rtol = 1e-5,
                                                .atol = 1e-5, .max_nfe = 1000, .t_noise = 0.5,
                                                .t_data = NAN, .start = DFX_START_FITTED},
                              x, 1, 0, &p, &err) != 0 &&
              strstr(err.msg, "--t-noise"),
          "a fitted start at another t_noise must be refused (%s)", err.msg);
    dfx_model_free(m);
}

/* Divergence of f = A x + b: exact, and Hutchinson's mean and variance. */
static void affine_divergence(void)
{
    float A[AD * AD], b[AD] = {0};
    test_rng rng = {11};
    for (int i = 0; i < AD * AD; i++) A[i] = (float)(2.0 * rng_uniform(&rng) - 1.0);
    double tr = 0, var_r = 0, var_g = 0;
    for (int i = 0; i < AD; i++) {
        tr += A[i * AD + i];
        var_g += 2.0 * A[i * AD + i] * A[i * AD + i];
        for (int j = i + 1; j < AD; j++) {
            double s = A[i * AD + j] + A[j * AD + i];
            var_r += s * s;
            var_g += s * s;
        }
    }
    dfx_model *m = affine_model(A, b, "linear");
    if (!m) return;
    enum { N = 4000 };
    float *x = malloc(sizeof(float) * N * AD);
    double *div = malloc(sizeof(double) * N);
    for (int i = 0; i < N * AD; i++) x[i] = rng_normal(&rng);
    dfx_error err = {{0}};
    dfx_lik_opts o;
    dfx_lik_opts_default(&o);
    o.div = DFX_DIV_EXACT;
    CHECK_OK(dfx_velocity_divergence(m, &o, 0.3, x, 8, 0, div, &err), err);
    for (int i = 0; i < 8; i++) CHECK_NEAR(div[i], tr, 1e-5 * (1 + fabs(tr)), "exact div = tr A");
    for (int probe = 0; probe < 2; probe++)
        for (int K = 1; K <= 16; K += 15) {
            o.div = DFX_DIV_HUTCHINSON;
            o.probe = probe ? DFX_PROBE_GAUSSIAN : DFX_PROBE_RADEMACHER;
            o.probes = K;
            o.seed = 5;
            CHECK_OK(dfx_velocity_divergence(m, &o, 0.3, x, N, 0, div, &err), err);
            double s = 0, ss = 0;
            for (int i = 0; i < N; i++) s += div[i];
            double mean = s / N;
            for (int i = 0; i < N; i++) ss += (div[i] - mean) * (div[i] - mean);
            double var = ss / (N - 1), want = (probe ? var_g : var_r) / K;
            CHECK(fabs(mean - tr) < 4.0 * sqrt(want / N), "hutchinson (%s, K %d): mean %.5f vs "
                  "tr A %.5f (SE %.5f)", probe ? "gaussian" : "rademacher", K, mean, tr,
                  sqrt(want / N));
            /* the sample variance of N draws is within ~3% (1 SE) of its
             * expectation for these distributions */
            CHECK(fabs(var / want - 1.0) < 0.15, "hutchinson (%s, K %d): variance %.5f vs "
                  "closed form %.5f", probe ? "gaussian" : "rademacher", K, var, want);
        }
    /* reproducible: the probes are Philox draws of (seed, point, probe) */
    double d1[3], d2[3];
    o.probes = 3;
    CHECK_OK(dfx_velocity_divergence(m, &o, 0.3, x + 5 * AD, 3, 5, d1, &err), err);
    o.batch = 1;
    CHECK_OK(dfx_velocity_divergence(m, &o, 0.3, x + 5 * AD, 3, 5, d2, &err), err);
    for (int i = 0; i < 3; i++) CHECK(d1[i] == d2[i], "divergence depends on the batch");
    free(x);
    free(div);
    dfx_model_free(m);
}

/* v = diag(lam) x + b on the linear path: x_j(t) = (x_j + b_j/lam_j)
 * e^{lam_j (t - t_data)} - b_j / lam_j, and the divergence integral is
 * tr(A) (t_noise - t_data); the start is N(0, I) at t_noise = 0. */
static double affine_closed(const double *lam, const float *b, const float *x, double td,
                            double tn)
{
    double q = 0, tr = 0;
    for (int j = 0; j < AD; j++) {
        double c = b[j] / lam[j], xj = (x[j] + c) * exp(lam[j] * (tn - td)) - c;
        q += xj * xj;
        tr += lam[j];
    }
    return -0.5 * q - 0.5 * AD * log(2 * M_PI) + tr * (tn - td);
}

static void affine_likelihood(void)
{
    const double lam[AD] = {-1.5, -0.5, 0.3, 1.0, 2.0, -3.0};
    float A[AD * AD] = {0}, b[AD] = {0.2f, -0.1f, 0.4f, 0.0f, -0.3f, 0.25f};
    for (int j = 0; j < AD; j++) A[j * AD + j] = (float)lam[j];
    dfx_model *m = affine_model(A, b, "linear");
    if (!m) return;
    float x[2 * AD] = {0.5f, -0.2f, 0.9f, -1.0f, 0.1f, 0.3f, -0.4f, 0.8f, 0.0f, 0.6f, -0.7f, 1.2f};
    dfx_error err = {{0}};
    dfx_lik_opts o;
    dfx_lik_opts_default(&o);
    o.div = DFX_DIV_EXACT;
    o.rtol = o.atol = 1e-9;
    dfx_lik_point p[2];
    CHECK_OK(dfx_log_likelihood(m, &o, x, 2, 0, p, &err), err);
    const double td = 0.999, tn = 0.0;
    for (int i = 0; i < 2; i++) {
        double want = affine_closed(lam, b, x + i * AD, td, tn);
        CHECK_NEAR(p[i].logp, want, 1e-7 * (1 + fabs(want)), "affine likelihood, dopri5");
        CHECK_NEAR(p[i].div_int, (lam[0] + lam[1] + lam[2] + lam[3] + lam[4] + lam[5]) * (tn - td),
                   1e-6, "affine divergence integral");
        CHECK(p[i].log_jac == 0.0, "no Jacobian off the dale path");
        CHECK(p[i].nfe > 6, "dopri5 evaluations %ld", p[i].nfe);
    }
    /* fixed-step rules: observed orders from n and 2n uniform steps */
    o.grid = DFX_GRID_UNIFORM;
    const struct {
        dfx_ode s;
        int n, order;
    } rules[] = {{DFX_ODE_EULER, 32, 1}, {DFX_ODE_HEUN, 16, 2}, {DFX_ODE_RK4, 8, 4}};
    const double want = affine_closed(lam, b, x, td, tn);
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        double e[2];
        for (int k = 0; k < 2; k++) {
            o.solver = rules[r].s;
            o.steps = rules[r].n << k;
            CHECK_OK(dfx_log_likelihood(m, &o, x, 1, 0, p, &err), err);
            e[k] = fabs(p[0].logp - want);
            CHECK(p[0].nfe == (long)o.steps * (rules[r].order == 4 ? 4 : rules[r].order),
                  "%s: %ld evaluations for %d steps", dfx_ode_name(rules[r].s), p[0].nfe,
                  o.steps);
        }
        double order = log2(e[0] / e[1]);
        CHECK(fabs(order - rules[r].order) < 0.35, "%s: observed order %.2f (errors %.3g, %.3g)",
              dfx_ode_name(rules[r].s), order, e[0], e[1]);
    }
    dfx_model_free(m);
}

/* ------------------------------------------------------ Gaussian mixtures */

enum { GK = 3, GD = 4 }; /* 3 components, 1 x 2 x 2 images */
static const float gmeans[GK * GD] = {0.6f,  -0.4f, 0.2f, 0.8f, -0.7f, 0.5f,
                                      -0.1f, -0.6f, 0.1f, 0.0f, 0.9f,  -0.3f};
static const float gstds[GK] = {0.35f, 0.5f, 0.25f};
static const float gweights[GK] = {0.5f, 0.3f, 0.2f};

/* log of sum_k w_k N(y; a mu_k + m, (a^2 c_k^2 + s^2) I) at the path's t. */
static double mixture_logp(const dfx_path *p, double t, const float *y)
{
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    double acc = 0;
    for (int k = 0; k < GK; k++) {
        double v = c.a * c.a * gstds[k] * gstds[k] + c.s * c.s, q = 0;
        for (int j = 0; j < GD; j++) {
            double r = y[j] - c.a * gmeans[k * GD + j] - c.m;
            q += r * r;
        }
        acc += gweights[k] * exp(-0.5 * q / v) / pow(2 * M_PI * v, GD / 2.0);
    }
    return log(acc);
}

static dfx_model *mixture(dfx_path_family f, dfx_path *p)
{
    dfx_path_default(p, f);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_gmm_create(be, p, 1, 2, 2, f == DFX_PATH_DALE ? 1.0 : -1.0,
                                        f == DFX_PATH_DALE ? 2.0 : 1.0, GK, gmeans, gstds,
                                        gweights, &err);
    CHECK(m != NULL, "%s", err.msg);
    return m;
}

/* Points of the mixture's data distribution (in y on the dale path). */
static void mixture_points(test_rng *rng, float *y, int n)
{
    for (int i = 0; i < n; i++) {
        double u = rng_uniform(rng);
        int k = u < gweights[0] ? 0 : u < gweights[0] + gweights[1] ? 1 : 2;
        for (int j = 0; j < GD; j++)
            y[i * GD + j] = gmeans[k * GD + j] + gstds[k] * rng_normal(rng);
    }
}

/* Exact divergence, dopri5 at rtol = atol = 1e-7: the closed-form checks. */
static dfx_lik_opts tight_exact(void)
{
    dfx_lik_opts o;
    dfx_lik_opts_default(&o);
    o.div = DFX_DIV_EXACT;
    o.rtol = o.atol = 1e-7;
    return o;
}

static void mixture_likelihood(dfx_path_family f)
{
    dfx_path path;
    dfx_model *m = mixture(f, &path);
    if (!m) return;
    enum { N = 6 };
    test_rng rng = {100 + f};
    float y[N * GD];
    mixture_points(&rng, y, N);
    double tn, td;
    dfx_path_default_range(&path, &tn, &td);
    dfx_error err = {{0}};
    dfx_lik_opts o = tight_exact();
    dfx_lik_point p[N];
    for (int start = 0; start < (f == DFX_PATH_LINEAR ? 2 : 1); start++) {
        o.start = start ? DFX_START_PATH : DFX_START_AUTO;
        CHECK_OK(dfx_log_likelihood(m, &o, y, N, 0, p, &err), err);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double want = mixture_logp(&path, td, y + i * GD);
            worst = fmax(worst, fabs(p[i].logp - want) / GD);
        }
        printf("mixture on %s (start %s): worst |error| %.2e nats/dim, %ld evaluations\n",
               dfx_path_name(f), start ? "path" : "exact", worst, p[0].nfe);
        CHECK(worst < 1e-3, "%s: ODE log-likelihood off the closed form by %.3g nats/dim",
              dfx_path_name(f), worst);
    }
    /* Hutchinson is unbiased: the mean over points of (estimate - exact) */
    enum { NH = 96 };
    float *yh = malloc(sizeof(float) * NH * GD);
    dfx_lik_point *ph = malloc(sizeof *ph * NH), *pe = malloc(sizeof *pe * NH);
    mixture_points(&rng, yh, NH);
    o.start = DFX_START_AUTO;
    o.rtol = o.atol = 1e-5;
    CHECK_OK(dfx_log_likelihood(m, &o, yh, NH, 0, pe, &err), err);
    o.div = DFX_DIV_HUTCHINSON;
    o.probes = 2;
    CHECK_OK(dfx_log_likelihood(m, &o, yh, NH, 0, ph, &err), err);
    double s = 0, ss = 0;
    for (int i = 0; i < NH; i++) s += ph[i].logp - pe[i].logp;
    for (int i = 0; i < NH; i++) {
        double d = ph[i].logp - pe[i].logp - s / NH;
        ss += d * d;
    }
    double se = sqrt(ss / (NH - 1) / NH);
    CHECK(fabs(s / NH) < 4 * se + 1e-4, "%s: hutchinson bias %.4g (SE %.3g)", dfx_path_name(f),
          s / NH, se);
    CHECK(se > 0, "%s: hutchinson estimates equal the exact ones", dfx_path_name(f));
    /* a point's result does not depend on its batch */
    dfx_lik_point one;
    o.batch = 1;
    CHECK_OK(dfx_log_likelihood(m, &o, yh + 7 * GD, 1, 7, &one, &err), err);
    CHECK(one.logp == ph[7].logp, "%s: batch 1 gives %.17g, batch 64 %.17g", dfx_path_name(f),
          one.logp, ph[7].logp);
    free(yh);
    free(ph);
    free(pe);
    dfx_model_free(m);
}

/* The dale path: a mixture in y = log x is a log-normal mixture in x, whose
 * density p_x(x) = p_y(log x) / prod x_j the data-space result must give. */
static void dale_likelihood(void)
{
    dfx_path path;
    dfx_model *m = mixture(DFX_PATH_DALE, &path);
    if (!m) return;
    enum { N = 4 };
    test_rng rng = {77};
    float y[N * GD], x[N * GD];
    mixture_points(&rng, y, N);
    for (int i = 0; i < N * GD; i++) x[i] = expf(0.3f * y[i]); /* x > 0, near [0.7, 1.4] */
    double tn, td;
    dfx_path_default_range(&path, &tn, &td);
    dfx_error err = {{0}};
    dfx_lik_opts o = tight_exact();
    dfx_lik_point p[N];
    CHECK_OK(dfx_log_likelihood(m, &o, x, N, 0, p, &err), err);
    for (int i = 0; i < N; i++) {
        float ly[GD];
        double jac = 0;
        for (int j = 0; j < GD; j++) {
            ly[j] = logf(x[i * GD + j]);
            jac -= log(x[i * GD + j]);
        }
        double want = mixture_logp(&path, td, ly) + jac;
        CHECK_NEAR(p[i].log_jac, jac, 1e-6, "dale: Jacobian of y = log x");
        double ex;
        CHECK_OK(dfx_model_log_density(m, NAN, x + i * GD, 1, &ex, &err), err);
        CHECK_NEAR(ex, want, 1e-6 * (1 + fabs(want)), "dale: dfx_model_log_density");
        CHECK(fabs(p[i].logp - want) / GD < 1e-3, "dale: %.6f vs log-normal mixture %.6f",
              p[i].logp, want);
    }
    float bad[GD] = {1.0f, -0.5f, 1.0f, 1.0f};
    CHECK(dfx_log_likelihood(m, &o, bad, 1, 0, p, &err) != 0 && strstr(err.msg, "non-positive"),
          "dale: a negative value must be refused (%s)", err.msg);
    dfx_model_free(m);
}

static void bits_per_dim(void)
{
    /* 8-bit data in [-1, 1]: a bin of width 2/256 under a density of 1/2
     * per dimension is 7 + 1 = 8 bits */
    CHECK_NEAR(dfx_bits_per_dim(-log(2.0) * 10, 10, -1, 1), 8.0, 1e-12, "bpd on [-1, 1]");
    /* the density uniform on [1, 2]: 8 bits */
    CHECK_NEAR(dfx_bits_per_dim(0.0, 784, 1, 2), 8.0, 1e-12, "bpd on [1, 2]");
    dfx_ode s;
    CHECK(dfx_ode_parse("rk4", &s) == 0 && s == DFX_ODE_RK4, "parse rk4");
    CHECK(dfx_ode_parse("rk5", &s) != 0, "rk5 is no solver");
}

int main(void)
{
    dfx_error err = {{0}};
    be = dfx_backend_create("cpu", 1, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    bits_per_dim();
    affine_divergence();
    affine_likelihood();
    fitted_start();
    mixture_likelihood(DFX_PATH_LINEAR);
    mixture_likelihood(DFX_PATH_VP);
    mixture_likelihood(DFX_PATH_TRIG);
    dale_likelihood();
    dfx_backend_destroy(be);
    return check_report("test_likelihood");
}
