/* The Dale paper's recipe (--recipe paper) as the authors' sampling runs it
 * (MATH.md section 3), on the exact log-normal mixture:
 *  - its start, log x ~ N(mu_fit, sigma_fit^2) per value for the model's data
 *    set, seen through the final clamp to [1, 2] whose fractions at 1 and 2
 *    are Gaussian tail probabilities;
 *  - its per-data-set constants (F-MNIST's L differs from MNIST's) and no
 *    final denoising, seen in the evaluation count;
 *  - its update rules, against an independent reimplementation of the
 *    paper's x-space equations (double precision, its own random numbers,
 *    the mixture's score in closed form), by the statistics of the outputs
 *    within their standard errors. */
#include "check.h"
#include "model/model.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { D = 2, K = 2 };
static const float MU[K * D] = {0.45f, 0.1f, 0.15f, 0.55f}; /* log-space means */
static const float CS[K] = {0.08f, 0.12f};
static const float W[K] = {0.6f, 0.4f};

/* the authors' constants, written out again here (gbm_configs/NCSNDEEPER) */
static const struct {
    const char *name;
    double mu_fit, sigma_fit;
    double adls_delta, adls_f;
    int adls_L;
    double aums_delta, aums_f;
    int aums_L;
} PAPER[2] = {{"mnist", 0.15651744604110718, 0.8352777361869812, 0.0006165454545454547, 0.995, 1,
               0.000143844988828766, 0.995, 4},
              {"fashion-mnist", 0.27712640166282654, 0.8428290486335754, 0.0005862727272727274,
               0.995, 1, 0.001467799267622069, 0.9995, 3}};

static dfx_backend *be;

static double Phi(double z)
{
    return 0.5 * erfc(-z / sqrt(2.0));
}

static dfx_sampler *make(dfx_model *m, const char *sampler, int steps, double delta,
                         int rows)
{
    dfx_error err = {{0}};
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = sampler;
    o.steps = steps;
    o.recipe = DFX_RECIPE_PAPER;
    o.seed = 5;
    if (delta > 0) o.delta = delta, o.inner = 1, o.anneal = 1.0;
    dfx_sampler *s = dfx_sampler_create(m, &o, rows, &err);
    CHECK(s != NULL, "%s: %s", sampler, err.msg);
    return s;
}

/* The start through the clamp: with a negligible step the output is the
 * start exp(y), y ~ N(mu_fit, sigma_fit^2), clamped to [1, 2]. */
static void start(dfx_model *m, int p)
{
    enum { R = 4096 };
    dfx_error err = {{0}};
    dfx_sampler *s = make(m, "adls", 1, 1e-12, R);
    if (!s) return;
    float *x = malloc(sizeof(float) * R * D);
    dfx_sample_stats st;
    CHECK_OK(dfx_sampler_run(s, 0, R, x, &st, &err), err);
    long lo = 0, hi = 0;
    for (int i = 0; i < R * D; i++) lo += x[i] == 1.0f, hi += x[i] == 2.0f;
    const double n = (double)R * D, plo = Phi(-PAPER[p].mu_fit / PAPER[p].sigma_fit),
                 phi = 1.0 - Phi((log(2.0) - PAPER[p].mu_fit) / PAPER[p].sigma_fit);
    double zlo = (lo / n - plo) / sqrt(plo * (1 - plo) / n),
           zhi = (hi / n - phi) / sqrt(phi * (1 - phi) / n);
    printf("%-14s start: at 1 %.4f (exact %.4f, %.1f SE), at 2 %.4f (exact %.4f, %.1f SE), "
           "clamped %ld\n",
           PAPER[p].name, lo / n, plo, zlo, hi / n, phi, zhi, st.clamped);
    CHECK(fabs(zlo) < 4 && fabs(zhi) < 4, "%s: the paper's start is off (%.1f, %.1f SE)",
          PAPER[p].name, zlo, zhi);
    CHECK(st.clamped == lo + hi, "stats.clamped %ld, counted %ld", st.clamped, lo + hi);
    CHECK(st.nfe == 1, "no final denoising under the paper recipe: %ld evaluations", st.nfe);
    free(x);
    dfx_sampler_free(s);
}

/* xorshift64* and Box-Muller: the reference's own normals */
static uint64_t rs = 88172645463325252ull;
static double unif(void)
{
    rs ^= rs >> 12, rs ^= rs << 25, rs ^= rs >> 27;
    return ((rs * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double gauss(void)
{
    double u = unif(), v = unif();
    return sqrt(-2.0 * log(u > 0 ? u : 1e-300)) * cos(2.0 * 3.14159265358979323846 * v);
}

/* x * grad_x log p_X(x, t) of the mixture: with y = log x, p_Y is the
 * Gaussian mixture N(a mu_k + m, a^2 c_k^2 + s^2), and x d/dx log p_X =
 * d/dy log p_Y - 1. */
static void xscore(const dfx_path *p, double t, const double *x, double *h)
{
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    double lw[K], num[K][D], mx = -INFINITY;
    for (int k = 0; k < K; k++) {
        double v = c.a * c.a * CS[k] * CS[k] + c.s * c.s;
        lw[k] = log(W[k]);
        for (int j = 0; j < D; j++) {
            double d = log(x[j]) - (c.a * MU[k * D + j] + c.m);
            lw[k] += -0.5 * d * d / v - 0.5 * log(v);
            num[k][j] = -d / v;
        }
        if (lw[k] > mx) mx = lw[k];
    }
    double z = 0, g[D] = {0};
    for (int k = 0; k < K; k++) {
        double e = exp(lw[k] - mx);
        z += e;
        for (int j = 0; j < D; j++) g[j] += e * num[k][j];
    }
    for (int j = 0; j < D; j++) h[j] = g[j] / z - 1.0;
}

/* The paper's x-space updates, L per label, the noise factor f annealed per
 * label, at difflux's grid times; the output clamped to [1, 2]. */
static void reference(const dfx_path *p, const double *grid, int n, int aums, int pi, int R,
                      double *out)
{
    const double sg = p->dale_sigma, sg2 = sg * sg, mu = p->dale_mu;
    const double delta = aums ? PAPER[pi].aums_delta : PAPER[pi].adls_delta;
    const double factor = aums ? PAPER[pi].aums_f : PAPER[pi].adls_f;
    const int L = aums ? PAPER[pi].aums_L : PAPER[pi].adls_L;
    for (int r = 0; r < R; r++) {
        double x[D], h[D], f = 1.0;
        for (int j = 0; j < D; j++) x[j] = exp(PAPER[pi].mu_fit + PAPER[pi].sigma_fit * gauss());
        for (int i = 0; i < n; i++) {
            for (int l = 0; l < L; l++) {
                xscore(p, grid[i], x, h);
                for (int j = 0; j < D; j++) {
                    double z = gauss();
                    if (aums)
                        x[j] *= 1.0 + 2.0 * delta * sg2 - delta * mu + delta * sg2 * h[j] +
                                f * sqrt(delta) * sg * z;
                    else
                        x[j] *= exp(delta * sg2 * h[j] - delta * (mu - 1.5 * sg2) +
                                    f * sqrt(delta) * sg * z);
                    if (x[j] <= 0.0) x[j] = 1.0;
                }
            }
            f *= factor;
        }
        for (int j = 0; j < D; j++) out[r * D + j] = fmin(fmax(x[j], 1.0), 2.0);
    }
}

static void moments(const double *x, int R, double *mean, double *se)
{
    for (int j = 0; j < D; j++) {
        double s1 = 0, s2 = 0;
        for (int r = 0; r < R; r++) s1 += x[r * D + j], s2 += x[r * D + j] * x[r * D + j];
        mean[j] = s1 / R;
        se[j] = sqrt(fmax(s2 / R - mean[j] * mean[j], 0.0) / R);
    }
}

static void rule(dfx_model *m, const char *sampler, int pi)
{
    enum { R = 3000, STEPS = 1000 };
    dfx_error err = {{0}};
    const int aums = strcmp(sampler, "aums") == 0;
    dfx_sampler *s = make(m, sampler, STEPS, 0, R);
    if (!s) return;
    float *xf = malloc(sizeof(float) * R * D);
    double *x = malloc(sizeof(double) * R * D), *y = malloc(sizeof(double) * R * D);
    dfx_sample_stats st;
    CHECK_OK(dfx_sampler_run(s, 0, R, xf, &st, &err), err);
    const int L = aums ? PAPER[pi].aums_L : PAPER[pi].adls_L;
    CHECK(st.nfe == (long)STEPS * L, "%s %s: %ld evaluations, the paper's L = %d gives %d",
          PAPER[pi].name, sampler, st.nfe, L, STEPS * L);
    int n = 0;
    const double *grid = dfx_sampler_grid(s, &n);
    for (int i = 0; i < R * D; i++) x[i] = xf[i];
    reference(&m->cfg.path, grid, n, aums, pi, R, y);
    double m1[D], s1[D], m2[D], s2[D];
    moments(x, R, m1, s1);
    moments(y, R, m2, s2);
    double worst = 0;
    for (int j = 0; j < D; j++)
        worst = fmax(worst, fabs(m1[j] - m2[j]) / sqrt(s1[j] * s1[j] + s2[j] * s2[j]));
    /* the spread too: mean of (x - mean)^2 by the delta method's rough SE */
    double v1 = 0, v2 = 0;
    for (int r = 0; r < R; r++)
        v1 += (x[r * D] - m1[0]) * (x[r * D] - m1[0]), v2 += (y[r * D] - m2[0]) * (y[r * D] - m2[0]);
    v1 /= R, v2 /= R;
    double zv = fabs(v1 - v2) / sqrt(2.0 * (v1 * v1 + v2 * v2) / R);
    printf("%-14s %s: mean (%.4f, %.4f) vs the paper's rule (%.4f, %.4f), %.1f SE; var %.4f vs "
           "%.4f, %.1f SE\n",
           PAPER[pi].name, sampler, m1[0], m1[1], m2[0], m2[1], worst, v1, v2, zv);
    CHECK(worst < 4 && zv < 4, "%s %s differs from the paper's update rule", PAPER[pi].name,
          sampler);
    free(xf);
    free(x);
    free(y);
    dfx_sampler_free(s);
}

int main(void)
{
    dfx_error err = {{0}};
    be = dfx_backend_create("cpu", 1, &err);
    dfx_path p;
    dfx_path_default(&p, DFX_PATH_DALE);
    dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, 1, 2, K, MU, CS, W, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return check_report("test_dale_paper");
    for (int pi = 0; pi < 2; pi++) {
        snprintf(m->cfg.paper_recipe, sizeof m->cfg.paper_recipe, "%s", pi ? PAPER[pi].name : "");
        start(m, pi);
        rule(m, "adls", pi);
        rule(m, "aums", pi);
    }
    /* a data set the paper did not tune is refused by name */
    snprintf(m->cfg.paper_recipe, sizeof m->cfg.paper_recipe, "cifar10");
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = "adls";
    o.recipe = DFX_RECIPE_PAPER;
    CHECK(!dfx_sampler_create(m, &o, 2, &err) && strstr(err.msg, "cifar10") &&
              strstr(err.msg, "fashion-mnist"),
          "%s", err.msg);
    dfx_model_free(m);
    /* the paper's start belongs to the dale path */
    dfx_path_default(&p, DFX_PATH_VP);
    m = dfx_model_gmm_create(be, &p, 1, 1, D, -1, 1, K, MU, CS, W, &err);
    dfx_sample_opts_default(&o, m);
    o.start = DFX_START_PAPER;
    CHECK(!dfx_sampler_create(m, &o, 2, &err) && strstr(err.msg, "dale path"), "%s", err.msg);
    dfx_model_free(m);
    dfx_backend_destroy(be);
    return check_report("test_dale_paper");
}
