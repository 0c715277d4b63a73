/* Exact marginals: samples drawn from a Gaussian-mixture model by every
 * sampler, ODE and SDE, on several paths, match the analytic mean and
 * covariance of p_t at the end of the interval (MATH.md sections 2 and 6)
 * within statistical tolerance (5 standard errors, estimated from the
 * samples themselves). */
#include "check.h"
#include "difflux.h"

#include <stdlib.h>
#include <string.h>

enum { D = 2, K = 3, N = 20000 };
static const float MU[K * D] = {1.0f, 0.5f, -0.8f, 0.9f, 0.2f, -1.0f};
static const float CS[K] = {0.3f, 0.2f, 0.4f};
static const float W[K] = {0.5f, 0.3f, 0.2f};

static void analytic(const dfx_path *p, double t, double mean[D], double cov[D][D])
{
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    double m2[D][D] = {{0}};
    for (int j = 0; j < D; j++) mean[j] = 0;
    for (int k = 0; k < K; k++) {
        double v = c.a * c.a * CS[k] * CS[k] + c.s * c.s, mk[D];
        for (int j = 0; j < D; j++) {
            mk[j] = c.a * MU[k * D + j] + c.m;
            mean[j] += W[k] * mk[j];
        }
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) m2[i][j] += W[k] * ((i == j) * v + mk[i] * mk[j]);
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) cov[i][j] = m2[i][j] - mean[i] * mean[j];
}

static void compare(const char *what, const float *x, const double mean[D],
                    const double cov[D][D])
{
    double em[D] = {0}, ec[D][D] = {{0}}, se_c[D][D] = {{0}};
    for (int n = 0; n < N; n++)
        for (int j = 0; j < D; j++) em[j] += x[n * D + j] / N;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s1 = 0, s2 = 0;
            for (int n = 0; n < N; n++) {
                double q = (x[n * D + i] - em[i]) * (x[n * D + j] - em[j]);
                s1 += q;
                s2 += q * q;
            }
            ec[i][j] = s1 / N;
            se_c[i][j] = sqrt((s2 / N - ec[i][j] * ec[i][j]) / N);
        }
    double worst = 0;
    for (int j = 0; j < D; j++) {
        double se = sqrt(ec[j][j] / N), z = fabs(em[j] - mean[j]) / se;
        if (z > worst) worst = z;
        CHECK(z < 5, "%s: mean[%d] %.4f vs %.4f (%.1f standard errors)", what, j, em[j], mean[j],
              z);
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double z = fabs(ec[i][j] - cov[i][j]) / se_c[i][j];
            if (z > worst) worst = z;
            CHECK(z < 5, "%s: cov[%d][%d] %.4f vs %.4f (%.1f standard errors)", what, i, j,
                  ec[i][j], cov[i][j], z);
        }
    printf("%-22s mean (%.3f, %.3f) vs (%.3f, %.3f), var (%.3f, %.3f) vs (%.3f, %.3f), worst "
           "%.1f SE\n",
           what, em[0], em[1], mean[0], mean[1], ec[0][0], ec[1][1], cov[0][0], cov[1][1], worst);
}

int main(void)
{
    dfx_error err = {{0}};
    dfx_backend *be = dfx_backend_create("cpu", 0, &err);
    float *x = malloc(sizeof(float) * N * D);
    struct {
        const char *sampler;
        int steps;
        dfx_path_family fam;
        double churn; /* EDM's S_churn (euler, heun, rk4) */
    } runs[] = {
        {"euler", 200, DFX_PATH_LINEAR, 0}, {"heun", 40, DFX_PATH_LINEAR, 0},
        {"rk4", 20, DFX_PATH_LINEAR, 0},    {"dopri5", 0, DFX_PATH_LINEAR, 0},
        {"em", 1000, DFX_PATH_LINEAR, 0},   {"euler", 200, DFX_PATH_VP, 0},
        {"heun", 40, DFX_PATH_VP, 0},       {"rk4", 20, DFX_PATH_VP, 0},
        {"dopri5", 0, DFX_PATH_VP, 0},      {"em", 1000, DFX_PATH_VP, 0},
        {"heun", 40, DFX_PATH_TRIG, 0},     {"em", 1000, DFX_PATH_TRIG, 0},
        {"heun", 80, DFX_PATH_VE, 0},       {"em", 1000, DFX_PATH_VE, 0},
        {"heun", 40, DFX_PATH_VP_COSINE, 0},
        /* the denoiser-based samplers, deterministic and ancestral */
        {"ddim", 200, DFX_PATH_LINEAR, 0},  {"ddim", 200, DFX_PATH_VP, 0},
        {"dpmpp_2m", 40, DFX_PATH_LINEAR, 0}, {"dpmpp_2m", 40, DFX_PATH_VP_COSINE, 0},
        {"ddpm", 500, DFX_PATH_LINEAR, 0},  {"ddpm", 500, DFX_PATH_VP, 0},
        {"euler_ancestral", 500, DFX_PATH_LINEAR, 0}, {"euler_ancestral", 500, DFX_PATH_VP, 0},
        {"dpmpp_2m_sde", 200, DFX_PATH_LINEAR, 0}, {"dpmpp_2m_sde", 200, DFX_PATH_VP, 0},
        {"dpmpp_3m_sde", 200, DFX_PATH_LINEAR, 0}, {"dpmpp_3m_sde", 200, DFX_PATH_VP, 0},
        {"dpmpp_3m_sde", 200, DFX_PATH_VE, 0},
        {"unipc", 40, DFX_PATH_LINEAR, 0}, {"unipc", 40, DFX_PATH_VP_COSINE, 0},
        {"deis", 40, DFX_PATH_LINEAR, 0},  {"deis", 40, DFX_PATH_VP, 0},
        {"deis", 40, DFX_PATH_VE, 0},
        /* restart sampling (its default interval) */
        {"restart", 30, DFX_PATH_LINEAR, 0}, {"restart", 30, DFX_PATH_VP, 0},
        /* EDM's stochastic sampler (Algorithm 2) */
        {"heun", 40, DFX_PATH_LINEAR, 20.0}, {"heun", 40, DFX_PATH_VP, 20.0},
        {"heun", 80, DFX_PATH_VE, 10.0},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        dfx_path p;
        dfx_path_default(&p, runs[i].fam);
        dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, -2, 2, K, MU, CS, W, &err);
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = runs[i].sampler;
        o.steps = runs[i].steps;
        o.seed = 2024 + i;
        o.churn = runs[i].churn;
        o.denoise = 0;
        if (runs[i].fam == DFX_PATH_VE) o.grid = DFX_GRID_KARRAS;
        dfx_sampler *s = dfx_sampler_create(m, &o, N, &err);
        CHECK(s != NULL, "%s: %s", runs[i].sampler, err.msg);
        if (!s) continue;
        CHECK_OK(dfx_sampler_run(s, 0, N, x, NULL, &err), err);
        double mean[D], cov[D][D], tn, td;
        dfx_path_default_range(&p, &tn, &td);
        analytic(&p, td, mean, cov);
        char what[64];
        snprintf(what, sizeof what, "%s/%s%s", dfx_path_name(p.family), runs[i].sampler,
                 runs[i].churn > 0 ? " churn" : "");
        compare(what, x, mean, cov);
        dfx_sampler_free(s);
        dfx_model_free(m);
    }
    /* "every sampler": each one of the registry for all paths is in runs[],
     * but pc, whose moments test_samplers.c checks on its own mixture (its
     * Langevin corrector needs more steps than this test affords); the
     * Dale samplers' are checked there too, on the dale path. */
    const dfx_sampler_desc *list;
    int n = dfx_samplers(&list);
    for (int j = 0; j < n; j++) {
        int found = strcmp(list[j].families, "all paths") != 0 || strcmp(list[j].name, "pc") == 0;
        for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++)
            found |= strcmp(runs[i].sampler, list[j].name) == 0;
        CHECK(found, "sampler %s has no run here: add it to runs[]", list[j].name);
    }
    free(x);
    dfx_backend_destroy(be);
    return check_report("test_moments");
}
