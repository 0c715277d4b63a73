/* Guidance by a weaker model (dfx_model_set_guide, host/model/guide.c):
 * every prediction, tangent and dale field of the guided model is
 * w P + (1 - w) P_g of the two models evaluated on their own; the
 * probability-flow ODE of two guided Gaussians ends at the closed-form
 * standard deviation v1^(w/2) v2^((1-w)/2); w = 1 is the model alone, bit
 * for bit; mismatched guides are refused. */
#include "check.h"
#include "model/model.h"

#include <stdlib.h>

enum { D = 4, K = 2, ROWS = 5 };
static const float MU1[K * D] = {0.3f, -0.2f, 0.5f, 0.1f, -0.4f, 0.2f, 0.0f, 0.6f};
static const float MU2[K * D] = {-0.1f, 0.4f, 0.2f, -0.3f, 0.5f, 0.0f, -0.2f, 0.1f};
static const float CS1[K] = {0.3f, 0.5f}, CS2[K] = {0.6f, 0.4f};
static const float W1[K] = {0.7f, 0.3f}, W2[K] = {0.4f, 0.6f};

static dfx_backend *be;

/* Mixture 1 or 2 (which = 0, 1) of D values on the default path of fam. */
static dfx_model *gmm(dfx_path_family fam, int which)
{
    dfx_error err = {{0}};
    dfx_path p;
    dfx_path_default(&p, fam);
    dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, -2, 2, K, which ? MU2 : MU1,
                                        which ? CS2 : CS1, which ? W2 : W1, &err);
    CHECK(m != NULL, "gmm: %s", err.msg);
    return m;
}

static void check_mix(const char *what, const float *got, const float *a, const float *b,
                      double w, size_t n)
{
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double want = w * a[i] + (1.0 - w) * b[i];
        worst = fmax(worst, fabs(got[i] - want));
        scale = fmax(scale, fabs(want));
    }
    CHECK(worst <= 1e-5 * (1.0 + scale), "%s: guided differs from w P + (1 - w) P_g by %g", what,
          worst);
}

/* Predictions and tangents in every parametrisation, on two paths. */
static void test_identity(void)
{
    dfx_error err = {{0}};
    const double w = 1.7;
    static const dfx_path_family fams[] = {DFX_PATH_LINEAR, DFX_PATH_VP};
    test_rng r = {11};
    float x[ROWS * D], v[ROWS * D], f[3][ROWS * D], j[3][ROWS * D];
    double t[ROWS];
    for (size_t k = 0; k < sizeof fams / sizeof fams[0]; k++) {
        dfx_model *m = gmm(fams[k], 0), *a = gmm(fams[k], 0), *g = gmm(fams[k], 1);
        if (!m || !a || !g) return;
        CHECK_OK(dfx_model_set_guide(m, gmm(fams[k], 1), w, &err), err);
        for (int p = 0; p < DFX_PRED_COUNT; p++) {
            rng_fill_normal(&r, x, ROWS * D, 1.0f);
            rng_fill_normal(&r, v, ROWS * D, 1.0f);
            for (int i = 0; i < ROWS; i++) t[i] = 0.1 + 0.8 * rng_uniform(&r);
            dfx_model *ms[3] = {m, a, g};
            for (int q = 0; q < 3; q++)
                CHECK_OK(dfx_model_jvp_host(ms[q], t, x, v, ROWS, (dfx_pred)p, DFX_JVP_EXACT, 0,
                                            f[q], j[q], &err),
                         err);
            char what[64];
            snprintf(what, sizeof what, "%s %s", dfx_path_name(fams[k]),
                     dfx_pred_name((dfx_pred)p));
            check_mix(what, f[0], f[1], f[2], w, ROWS * D);
            strcat(what, " tangent");
            check_mix(what, j[0], j[1], j[2], w, ROWS * D);
            CHECK_OK(dfx_model_eval_host(m, t, x, ROWS, (dfx_pred)p, f[0], &err), err);
            strcat(what, " (eval)");
            check_mix(what, f[0], f[1], f[2], w, ROWS * D);
        }
        dfx_model_free(m);
        dfx_model_free(a);
        dfx_model_free(g);
    }
    /* the dale samplers' field h = grad_y log p - 1, at positive x */
    dfx_model *m = gmm(DFX_PATH_DALE, 0), *a = gmm(DFX_PATH_DALE, 0),
              *g = gmm(DFX_PATH_DALE, 1);
    if (!m || !a || !g) return;
    CHECK_OK(dfx_model_set_guide(m, gmm(DFX_PATH_DALE, 1), w, &err), err);
    for (int i = 0; i < ROWS * D; i++) x[i] = 1.0f + (float)rng_uniform(&r);
    for (int i = 0; i < ROWS; i++) t[i] = 0.1 + 0.8 * rng_uniform(&r);
    dfx_model *ms[3] = {m, a, g};
    for (int q = 0; q < 3; q++) {
        CHECK_OK(dfx_model_reserve(ms[q], ROWS, &err), err);
        CHECK_OK(dfx_model_hyvarinen(ms[q], t, x, f[q], ROWS, &err), err);
    }
    check_mix("dale h", f[0], f[1], f[2], w, ROWS * D);
    dfx_model_free(m);
    dfx_model_free(a);
    dfx_model_free(g);
}

/* One zero-mean Gaussian of variance v per model, on the linear path from
 * t = 1 (pure noise): the flow's velocity is c_v(t) x with
 * c_v = d/dt log sqrt(a^2 v + s^2), so the guided ODE ends at x(1) times
 * prod sqrt(a_d^2 v + s_d^2)^(weight) at the last time t_d. */
static void test_closed_form(void)
{
    enum { N = 4000, DD = 4 };
    static const float zero[DD] = {0};
    static const float one[1] = {1.0f};
    const double sd1 = 1.0, sd2 = 2.0;
    const float c1[1] = {(float)sd1}, c2[1] = {(float)sd2};
    dfx_error err = {{0}};
    dfx_path p;
    dfx_path_default(&p, DFX_PATH_LINEAR);
    float *x = malloc(sizeof(float) * N * DD), *y = malloc(sizeof(float) * N * DD);
    static const double ws[] = {1.0, 1.5, 2.0};
    for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++) {
        dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, DD, -8, 8, 1, zero, c1, one, &err);
        dfx_model *g = dfx_model_gmm_create(be, &p, 1, 1, DD, -8, 8, 1, zero, c2, one, &err);
        CHECK(m && g, "gaussians: %s", err.msg);
        if (!m || !g) continue;
        CHECK_OK(dfx_model_set_guide(m, g, ws[k], &err), err);
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = "heun";
        o.steps = 40;
        o.seed = 5;
        o.denoise = 0;
        dfx_sampler *s = dfx_sampler_create(m, &o, N, &err);
        CHECK(s != NULL, "heun: %s", err.msg);
        if (!s) continue;
        CHECK_OK(dfx_sampler_run(s, 0, N, x, NULL, &err), err);
        dfx_sampler_free(s);
        double ss = 0;
        for (int i = 0; i < N * DD; i++) ss += (double)x[i] * x[i];
        double sd = sqrt(ss / (N * DD)), tn, td;
        dfx_path_default_range(&p, &tn, &td);
        dfx_coef cd, cn;
        dfx_path_eval(&p, td, &cd);
        dfx_path_eval(&p, tn, &cn);
        double w = ws[k];
        double want = pow(sqrt(cd.a * cd.a * sd1 * sd1 + cd.s * cd.s), w) *
                      pow(sqrt(cd.a * cd.a * sd2 * sd2 + cd.s * cd.s), 1.0 - w) /
                      (pow(sqrt(cn.a * cn.a * sd1 * sd1 + cn.s * cn.s), w) *
                       pow(sqrt(cn.a * cn.a * sd2 * sd2 + cn.s * cn.s), 1.0 - w)) *
                      cn.s;
        char what[64];
        snprintf(what, sizeof what, "guided std, w = %g", w);
        /* sampling error of the std of 16,000 values: 0.6 % */
        CHECK_NEAR(sd / want, 1.0, 0.025, what);
        if (w == 1.0) {
            /* w = 1: the model alone, bit for bit */
            dfx_model *a = dfx_model_gmm_create(be, &p, 1, 1, DD, -8, 8, 1, zero, c1, one, &err);
            dfx_sampler *s1 = a ? dfx_sampler_create(a, &o, N, &err) : NULL;
            CHECK(s1 != NULL, "unguided: %s", err.msg);
            if (s1) {
                CHECK_OK(dfx_sampler_run(s1, 0, N, y, NULL, &err), err);
                CHECK(memcmp(x, y, sizeof(float) * N * DD) == 0,
                      "w = 1 differs from the model alone");
                dfx_sampler_free(s1);
            }
            dfx_model_free(a);
        }
        dfx_model_free(m);
    }
    free(x);
    free(y);
}

static void test_refusals(void)
{
    dfx_error err = {{0}};
    dfx_model *m = gmm(DFX_PATH_LINEAR, 0);
    static const float wide_mu[K * 2 * D] = {0};
    dfx_path lin;
    dfx_path_default(&lin, DFX_PATH_LINEAR);
    dfx_model *vp = gmm(DFX_PATH_VP, 1),
              *wide = dfx_model_gmm_create(be, &lin, 1, 1, 2 * D, -2, 2, K, wide_mu, CS2, W2, &err);
    if (!m || !vp || !wide) return;
    CHECK(dfx_model_set_guide(m, vp, 2.0, &err) != 0 && strstr(err.msg, "path"),
          "a guide on another path: %s", err.msg);
    /* the same family with other parameters, and discrete schedules that
     * differ only in their last step (past any printed summary of them) */
    dfx_path pa, pb;
    dfx_path_default(&pa, DFX_PATH_VP);
    pb = pa;
    pb.beta_max = 10.0;
    CHECK(!dfx_path_equal(&pa, &pb) && dfx_path_equal(&pa, &pa), "vp paths compared wrongly");
    static double tab[1000];
    dfx_path_default(&pa, DFX_PATH_DISCRETE);
    memcpy(tab, pa.log_abar, sizeof tab);
    tab[999] *= 1.0 + 1e-12;
    pb = pa;
    CHECK(dfx_path_equal(&pa, &pb), "a discrete path differs from its copy");
    pb.log_abar = tab;
    CHECK(!dfx_path_equal(&pa, &pb), "discrete schedules differing in the last step compared equal");
    dfx_path_default(&pb, DFX_PATH_VP);
    pb.beta_max = 10.0;
    dfx_model *vp10 = dfx_model_gmm_create(be, &pb, 1, 1, D, -2, 2, K, MU2, CS2, W2, &err);
    dfx_model *vp20 = gmm(DFX_PATH_VP, 0);
    CHECK(vp10 && vp20 && dfx_model_set_guide(vp20, vp10, 2.0, &err) != 0 &&
              strstr(err.msg, "beta_max"),
          "a guide on the same family with other parameters: %s", err.msg);
    dfx_model_free(vp10);
    dfx_model_free(vp20);
    CHECK(dfx_model_set_guide(m, wide, 2.0, &err) != 0 && strstr(err.msg, "images"),
          "a guide of another shape: %s", err.msg);
    CHECK(dfx_model_set_guide(m, m, 2.0, &err) != 0, "the model as its own guide");
    dfx_model *g = gmm(DFX_PATH_LINEAR, 1);
    CHECK(dfx_model_set_guide(m, g, NAN, &err) != 0 && strstr(err.msg, "finite"),
          "a NaN weight: %s", err.msg);
    CHECK_OK(dfx_model_set_guide(m, g, 2.0, &err), err);
    dfx_path vpp;
    dfx_path_default(&vpp, DFX_PATH_VP);
    CHECK(dfx_model_set_path(m, &vpp, &err) != 0 && strstr(err.msg, "guide"),
          "a guided model moved to another path: %s", err.msg);
    dfx_model *h = gmm(DFX_PATH_LINEAR, 1);
    CHECK(dfx_model_set_guide(h, m, 2.0, &err) != 0 && strstr(err.msg, "guided"),
          "a guided guide: %s", err.msg);
    CHECK(dfx_model_scratch_bytes(m, 8) > dfx_model_scratch_bytes(h, 8),
          "the guide's scratch is not counted");
    dfx_model_free(h);
    dfx_model_free(m); /* frees g */
    dfx_model_free(vp);
    dfx_model_free(wide);
}

int main(void)
{
    dfx_error err = {{0}};
    be = dfx_backend_create("cpu", 1, &err);
    if (!be) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    test_identity();
    test_closed_form();
    test_refusals();
    dfx_backend_destroy(be);
    return check_report("test_guide");
}
