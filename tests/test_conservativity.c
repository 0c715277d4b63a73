/*
 * Conservativeness diagnostics (MATH.md section 4) against known answers:
 *   - an affine field f = A x + b: asymmetry ||A - A^T||_F / ||A||_F
 *     (probes: within a few standard errors, which shrink like 1/sqrt(K);
 *     patch: exactly), circulation of a circle pi r^2 (v.Au - u.Av), path
 *     dependence half of it;
 *   - the exact score of a Gaussian mixture (and of a log-normal mixture on
 *     the dale path) is conservative: every metric vanishes to rounding;
 *   - the exact JVPs of the mixture agree with central differences.
 */
#include "check.h"
#include "difflux.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#ifndef DFX_SOURCE_DIR
#define DFX_SOURCE_DIR "."
#endif

static dfx_backend *be;

enum { D = 12 }; /* affine: 1 x 3 x 4 images */
static float A[D * D], bvec[D];

static dfx_model *affine_model(char *dir)
{
    char path[600];
    snprintf(path, sizeof path, "%s/affine.safetensors", dir);
    /* a fixed, clearly non-symmetric A */
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++)
            A[i * D + j] = (float)(((i * 5 + j * 3) % 7) - 3) / 3.0f + (i == j ? 2.0f : 0.0f) +
                           (j > i ? 0.5f : 0.0f);
    for (int i = 0; i < D; i++) bvec[i] = 0.1f * i;
    const char *cfg = "{\"version\":1,\"kind\":\"affine\",\"image\":{\"channels\":1,\"height\":3,"
                      "\"width\":4},\"path\":{\"family\":\"linear\"},\"prediction\":\"score\"}";
    dfx_st_out t[2] = {{"affine.A", DFX_F32, 2, {D, D}, A}, {"affine.b", DFX_F32, 1, {D}, bvec}};
    dfx_error err = {{0}};
    CHECK_OK(dfx_st_write(path, cfg, t, 2, &err), err);
    dfx_model *m = dfx_model_load(path, be, &err);
    CHECK(m != NULL, "%s", err.msg);
    remove(path);
    return m;
}

static double exact_asym(const int *P, int p)
{
    double a = 0, s = 0;
    for (int i = 0; i < p; i++)
        for (int j = 0; j < p; j++) {
            double x = A[P[i] * D + P[j]], y = A[P[j] * D + P[i]];
            a += (x - y) * (x - y);
            s += x * x;
        }
    return sqrt(a / s);
}

static void affine_tests(dfx_model *m)
{
    dfx_error err = {{0}};
    dfx_cons_opts o;
    dfx_cons_opts_default(&o);
    o.field = DFX_PRED_SCORE; /* the native prediction: J = A */
    int all[D];
    for (int i = 0; i < D; i++) all[i] = i;
    const double want = exact_asym(all, D);
    float x[D];
    for (int i = 0; i < D; i++) x[i] = (float)sin(1.0 + i);

    /* probes: unbiased ratio estimate, standard error ~ 1/sqrt(K) */
    double est[2], se[2];
    const int Ks[2] = {256, 4096};
    for (int q = 0; q < 2; q++) {
        dfx_ratio acc = {0};
        CHECK_OK(dfx_asymmetry_probes(m, &o, 0.5, x, Ks[q], 0, &acc, &err), err);
        dfx_ratio_sqrt(&acc, &est[q], &se[q]);
        printf("asymmetry, %4d probe pairs: %.4f +- %.4f (exact %.4f)\n", Ks[q], est[q], se[q],
               want);
        CHECK(fabs(est[q] - want) <= 4 * se[q], "K = %d: %.5f +- %.5f vs exact %.5f", Ks[q],
              est[q], se[q], want);
    }
    const double shrink = se[1] / se[0];
    CHECK(shrink > 0.25 * 0.7 && shrink < 0.25 * 1.3,
          "standard error shrinks like 1/sqrt(K): ratio %.3f, expected ~0.25", shrink);

    /* exact patch ratio, both the whole matrix and a 2 x 2 pixel block */
    double ratio, jn;
    CHECK_OK(dfx_patch_asymmetry(m, &o, 0.5, x, all, D, &ratio, &jn, &err), err);
    CHECK_NEAR(ratio, want, 1e-6 * want, "exact asymmetry of the whole Jacobian");
    const int P[4] = {1, 2, 5, 6};
    CHECK_OK(dfx_patch_asymmetry(m, &o, 0.5, x, P, 4, &ratio, &jn, &err), err);
    CHECK_NEAR(ratio, exact_asym(P, 4), 1e-6, "exact asymmetry of a 2 x 2 patch");
    /* the same by finite differences (exact for an affine map up to rounding) */
    o.method = DFX_JVP_FD;
    CHECK_OK(dfx_patch_asymmetry(m, &o, 0.5, x, P, 4, &ratio, &jn, &err), err);
    CHECK_NEAR(ratio, exact_asym(P, 4), 1e-3, "patch asymmetry by finite differences");
    o.method = DFX_JVP_EXACT;

    /* circulation: pi r^2 (v.Au - u.Av) in the plane of orthonormal u, v */
    float u[D] = {0}, v[D] = {0};
    const double s2 = sqrt(0.5);
    u[0] = u[3] = (float)s2;
    v[4] = (float)s2;
    v[7] = (float)-s2;
    double vAu = 0, uAv = 0;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            vAu += v[i] * (double)A[i * D + j] * u[j];
            uAv += u[i] * (double)A[i * D + j] * v[j];
        }
    for (int k = 0; k < 3; k++) {
        const double r = 0.1 * pow(10, k);
        const double closed = M_PI * r * r * (vAu - uAv);
        double raw, scale;
        CHECK_OK(dfx_loop_circulation(m, DFX_PRED_SCORE, 0.5, x, u, v, r, 16, 64, &raw, &scale,
                                      &err),
                 err);
        CHECK_NEAR(raw, closed, 1e-5 * fabs(closed) + 1e-6 * scale, "circulation of a circle");
        CHECK(scale > 0 && fabs(raw) <= scale, "normaliser bounds the circulation");
        CHECK_OK(dfx_path_dependence(m, DFX_PRED_SCORE, 0.5, x, u, v, r, 16, 64, &raw, &scale,
                                     &err),
                 err);
        CHECK_NEAR(raw, 0.5 * closed, 1e-5 * fabs(closed) + 1e-6 * scale,
                   "path dependence: half the circle's circulation");
    }
}

/* Exact mixture scores: conservative to rounding, JVPs equal to central
 * differences. */
static void mixture_tests(const char *file, dfx_pred field)
{
    char path[700];
    snprintf(path, sizeof path, "%s/models/%s", DFX_SOURCE_DIR, file);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(path, be, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return;
    const size_t dim = m->dim;
    /* base points: exact samples of the data distribution (time t_data) */
    double tn, td;
    dfx_path_default_range(&m->cfg.path, &tn, &td);
    enum { NP = 3 };
    float *x0 = malloc(NP * dim * sizeof(float));
    float *dev = be->ops->alloc(be, NP * dim * sizeof(float));
    CHECK_OK(m->vt->sample_marginal(m, td, 7, 0, NP, 0, dev, &err), err);
    CHECK_OK(be->ops->download(be, x0, dev, NP * dim * sizeof(float), &err), err);
    be->ops->free(be, dev);
    dfx_cons_opts o;
    dfx_cons_opts_default(&o);
    o.field = field;
    o.probes = 8;
    o.patch = 3;
    o.loop_nodes = 32;
    const double ts[2] = {tn + 0.3 * (td - tn), tn + 0.8 * (td - tn)};
    for (int k = 0; k < 2; k++) {
        dfx_cons_result r;
        CHECK_OK(dfx_conservativity(m, &o, x0, NP, ts[k], &r, NULL, NULL, &err), err);
        printf("%s, %s at t = %.3f: asymmetry %.2e, patch %.2e, circulation %.2e %.2e %.2e, "
               "path %.2e %.2e %.2e\n",
               file, dfx_pred_name(field), ts[k], r.asym, r.patch, r.circ[0], r.circ[1],
               r.circ[2], r.pathdep[0], r.pathdep[1], r.pathdep[2]);
        CHECK(r.asym < 1e-5, "asymmetry of an exact score: %.3g", r.asym);
        CHECK(r.patch < 1e-5, "patch asymmetry of an exact score: %.3g", r.patch);
        for (int i = 0; i < r.nradii; i++) {
            CHECK(r.circ[i] < 1e-5, "circulation of an exact score at r = %g: %.3g",
                  r.radii[i], r.circ[i]);
            CHECK(r.pathdep[i] < 1e-5, "path dependence of an exact score at r = %g: %.3g",
                  r.radii[i], r.pathdep[i]);
        }
        CHECK(r.jnorm > 0, "a non-zero Jacobian");
    }
    /* exact JVP against central differences, in double where it matters */
    float *x = malloc(NP * dim * sizeof(float)), *v = malloc(NP * dim * sizeof(float));
    float *f1 = malloc(NP * dim * sizeof(float)), *j1 = malloc(NP * dim * sizeof(float));
    float *f2 = malloc(NP * dim * sizeof(float)), *j2 = malloc(NP * dim * sizeof(float));
    dfx_coef c;
    dfx_path_eval(&m->cfg.path, ts[0], &c);
    dfx_normal_host(3, 0, NP, dim, 0, 0, x);
    dfx_normal_host(3, 0, NP, dim, 1, 0, v);
    for (size_t i = 0; i < NP * dim; i++) x[i] = (float)(c.a * x0[i] + c.m + c.s * x[i]);
    double tt[NP] = {ts[0], ts[0], ts[0]};
    CHECK_OK(dfx_model_jvp_host(m, tt, x, v, NP, field, DFX_JVP_EXACT, 0, f1, j1, &err), err);
    CHECK_OK(dfx_model_jvp_host(m, tt, x, v, NP, field, DFX_JVP_FD, 1e-3, f2, j2, &err), err);
    double num = 0, den = 0, fe = 0;
    for (size_t i = 0; i < NP * dim; i++) {
        num += (j1[i] - (double)j2[i]) * (j1[i] - (double)j2[i]);
        den += (double)j1[i] * j1[i];
        fe = fmax(fe, fabs(f1[i] - (double)f2[i]));
    }
    printf("%s: exact JVP vs central differences: normalised difference %.2e\n", file,
           sqrt(num / den));
    CHECK(sqrt(num / den) < 2e-2, "JVP vs finite differences: %.3g", sqrt(num / den));
    CHECK(fe == 0.0, "the field beside the JVP equals the plain evaluation (%.3g)", fe);
    free(x);
    free(v);
    free(f1);
    free(j1);
    free(f2);
    free(j2);
    free(x0);
    dfx_model_free(m);
}

/* The estimator alone: sqrt of a ratio of means and its standard error. */
static void estimator_tests(void)
{
    dfx_ratio q = {0};
    dfx_ratio_add(&q, 4, 1);
    dfx_ratio_add(&q, 4, 1);
    double e, s;
    dfx_ratio_sqrt(&q, &e, &s);
    CHECK_NEAR(e, 2.0, 1e-15, "sqrt(mean 4 / mean 1)");
    CHECK_NEAR(s, 0.0, 1e-15, "no spread, no error");
    dfx_mean mm = {0};
    dfx_mean_add(&mm, 1);
    dfx_mean_add(&mm, 3);
    dfx_mean_get(&mm, &e, &s);
    CHECK_NEAR(e, 2.0, 1e-15, "mean");
    CHECK_NEAR(s, 1.0, 1e-15, "standard error of the mean of {1, 3}");
}

int main(void)
{
    dfx_error err = {{0}};
    be = dfx_backend_create("cpu", 1, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    estimator_tests();
    char dir[] = "/tmp/difflux-test-cons-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    dfx_model *m = affine_model(dir);
    if (m) {
        affine_tests(m);
        dfx_model_free(m);
    }
    rmdir(dir);
    mixture_tests("mnist-gmm.safetensors", DFX_PRED_SCORE);
    mixture_tests("mnist-gmm.safetensors", DFX_PRED_VELOCITY);
    mixture_tests("mnist-dale-gmm.safetensors", DFX_PRED_SCORE);
    dfx_backend_destroy(be);
    return check_report("test_conservativity");
}
