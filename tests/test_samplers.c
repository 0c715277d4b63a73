/* The sampler family beyond the basic integrators (MATH.md sections 2, 3):
 * samplers that reduce to each other agree, the multiplicative (Dale)
 * samplers reproduce a log-normal mixture and keep signs, a fitted start
 * with full covariance is drawn with that covariance, Langevin steps at the
 * start correct a wrong one (and count in the progress fraction), and
 * samplers refuse models they do not fit. */
#include "check.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

enum { D = 2, K = 2, N = 10000 };
static const float MU[K * D] = {0.45f, 0.1f, 0.15f, 0.55f}; /* log-space means */
static const float CS[K] = {0.08f, 0.12f};
static const float W[K] = {0.6f, 0.4f};

static dfx_backend *be;

static float *draw(dfx_model *m, const char *name, int steps, int rows, uint64_t seed,
                   void (*tweak)(dfx_sample_opts *))
{
    dfx_error err = {{0}};
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = name;
    o.steps = steps;
    o.seed = seed;
    o.denoise = 0;
    if (tweak) tweak(&o);
    dfx_sampler *s = dfx_sampler_create(m, &o, rows, &err);
    CHECK(s != NULL, "%s: %s", name, err.msg);
    if (!s) return NULL;
    float *x = malloc(sizeof(float) * (size_t)rows * m->dim);
    CHECK_OK(dfx_sampler_run(s, 0, rows, x, NULL, &err), err);
    dfx_sampler_free(s);
    return x;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double w = 0;
    for (size_t i = 0; i < n; i++) w = fmax(w, fabs((double)a[i] - b[i]));
    return w;
}

static void eta1(dfx_sample_opts *o)
{
    o->eta = 1.0;
}

static void path_start(dfx_sample_opts *o)
{
    o->path_start = 1;
}

static void diffusion_noise(dfx_sample_opts *o)
{
    o->noise = DFX_NOISE_DIFFUSION;
    o->path_start = 1;
}

static void ddpm_path_start(dfx_sample_opts *o)
{
    o->path_start = 1;
}

/* Samplers that are the same method written differently agree. */
static void reductions(void)
{
    dfx_error err = {{0}};
    float means[2 * 16], sd[2] = {0.3f, 0.2f}, w[2] = {1, 1};
    for (int i = 0; i < 32; i++) means[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;
    dfx_path p;
    /* ddim (eta = 0) on the linear path is Euler in t: x' = x + h (x_hat - z_hat) */
    dfx_path_default(&p, DFX_PATH_LINEAR);
    dfx_model *m = dfx_model_gmm_create(be, &p, 1, 4, 4, -1, 1, 2, means, sd, w, &err);
    float *a = draw(m, "ddim", 40, 8, 5, NULL), *b = draw(m, "euler", 40, 8, 5, NULL);
    double d = max_diff(a, b, 8 * 16);
    printf("ddim(eta 0) vs euler on the linear path: max difference %.2e\n", d);
    CHECK(d < 1e-4, "ddim and euler differ by %g", d);
    free(a);
    free(b);
    /* ddpm's posterior is ddim with eta = 1 (the same noise draws) */
    for (int f = 0; f < 2; f++) {
        dfx_path_default(&p, f ? DFX_PATH_VP : DFX_PATH_LINEAR);
        dfx_model_set_path(m, &p, &err);
        a = draw(m, "ddpm", 50, 8, 6, NULL);
        b = draw(m, "ddim", 50, 8, 6, eta1);
        d = max_diff(a, b, 8 * 16);
        printf("ddpm vs ddim(eta 1) on %s: max difference %.2e\n", dfx_path_name(p.family), d);
        CHECK(d < 1e-4, "ddpm and ddim(eta 1) differ by %g on %s", d, dfx_path_name(p.family));
        free(a);
        free(b);
        a = draw(m, "euler_ancestral", 50, 8, 6, NULL);
        b = draw(m, "ddim", 50, 8, 6, eta1);
        CHECK(max_diff(a, b, 8 * 16) == 0.0, "euler_ancestral is ddim with eta 1");
        free(a);
        free(b);
    }
    /* ddpm and em with the diffusion-matched noise discretise the same reverse
     * SDE with the same Brownian increments: paths converge as steps grow */
    dfx_path_default(&p, DFX_PATH_VP);
    dfx_model_set_path(m, &p, &err);
    double prev = INFINITY;
    for (int steps = 100; steps <= 1600; steps *= 4) {
        a = draw(m, "ddpm", steps, 8, 7, ddpm_path_start);
        b = draw(m, "em", steps, 8, 7, diffusion_noise);
        double mean = 0;
        for (int i = 0; i < 8 * 16; i++) mean += fabs((double)a[i] - b[i]) / (8 * 16);
        printf("ddpm vs em(diffusion) on vp, %4d steps: mean |difference| %.2e\n", steps, mean);
        CHECK(mean < 0.6 * prev, "ddpm and em do not converge together (%g after %g)", mean,
              prev);
        prev = mean;
        free(a);
        free(b);
    }
    CHECK(prev < 0.02, "ddpm and em still differ by %g at 1600 steps", prev);
    dfx_model_free(m);
}

/* Mean and covariance of log x against the log-normal mixture at t. */
static void lognormal_moments(const char *what, const dfx_path *p, double t, const float *x)
{
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    double mean[D] = {0}, m2[D][D] = {{0}};
    for (int k = 0; k < K; k++) {
        double v = CS[k] * CS[k] + c.s * c.s, mk[D];
        for (int j = 0; j < D; j++) mean[j] += W[k] * (mk[j] = MU[k * D + j] + c.m);
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) m2[i][j] += W[k] * ((i == j) * v + mk[i] * mk[j]);
    }
    double em[D] = {0}, ec[D][D] = {{0}}, se[D][D] = {{0}};
    int positive = 1;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < D; j++) {
            positive &= x[n * D + j] > 0.0f;
            em[j] += log(x[n * D + j]) / N;
        }
    CHECK(positive, "%s: a sample is not positive", what);
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s1 = 0, s2 = 0;
            for (int n = 0; n < N; n++) {
                double q = (log(x[n * D + i]) - em[i]) * (log(x[n * D + j]) - em[j]);
                s1 += q;
                s2 += q * q;
            }
            ec[i][j] = s1 / N;
            se[i][j] = sqrt((s2 / N - ec[i][j] * ec[i][j]) / N);
        }
    double worst = 0;
    for (int j = 0; j < D; j++) {
        double z = fabs(em[j] - mean[j]) / sqrt(ec[j][j] / N);
        worst = fmax(worst, z);
        CHECK(z < 5, "%s: E[log x_%d] %.4f vs %.4f (%.1f SE)", what, j, em[j], mean[j], z);
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double cv = m2[i][j] - mean[i] * mean[j], z = fabs(ec[i][j] - cv) / se[i][j];
            worst = fmax(worst, z);
            CHECK(z < 5, "%s: cov[%d][%d] of log x %.4f vs %.4f (%.1f SE)", what, i, j,
                  ec[i][j], cv, z);
        }
    printf("%-24s E[log x] (%.3f, %.3f) vs (%.3f, %.3f), worst %.1f SE\n", what, em[0], em[1],
           mean[0], mean[1], worst);
}

static void dale(void)
{
    dfx_error err = {{0}};
    dfx_path p;
    dfx_path_default(&p, DFX_PATH_DALE);
    dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, 1, 2, K, MU, CS, W, &err);
    CHECK(m && m->logspace, "a mixture on the dale path lives in log space");
    if (!m) return;
    struct {
        const char *name;
        int steps;
    } runs[] = {{"adls", 500}, {"aums", 500}, {"heun", 40}, {"dopri5", 0},
                {"ddim", 200},  {"dpmpp_2m", 40}, {"em", 500}, {"ddpm", 500}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        float *x = draw(m, runs[i].name, runs[i].steps, N, 40 + i, NULL);
        if (!x) continue;
        char what[64];
        snprintf(what, sizeof what, "dale/%s", runs[i].name);
        lognormal_moments(what, &p, 1e-3, x);
        free(x);
    }
    /* adls keeps signs even with a handful of huge steps and the paper's
     * recipe; outputs are exp(y) */
    for (int recipe = 0; recipe < 2; recipe++) {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = "adls";
        o.steps = recipe ? 1000 : 4;
        o.recipe = recipe ? DFX_RECIPE_PAPER : DFX_RECIPE_PRINCIPLED;
        dfx_sampler *s = dfx_sampler_create(m, &o, 256, &err);
        CHECK(s != NULL, "%s", err.msg);
        float *x = malloc(sizeof(float) * 256 * D);
        CHECK_OK(dfx_sampler_run(s, 0, 256, x, NULL, &err), err);
        int pos = 1;
        for (int i = 0; i < 256 * D; i++) pos &= x[i] > 0.0f;
        CHECK(pos, "adls produced a non-positive value (%s)", recipe ? "paper" : "4 steps");
        free(x);
        dfx_sampler_free(s);
    }
    /* the paper recipe's options only apply to the multiplicative samplers */
    {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = "heun";
        o.recipe = DFX_RECIPE_PAPER;
        CHECK(!dfx_sampler_create(m, &o, 2, &err) && strstr(err.msg, "--recipe"), "%s",
              err.msg);
    }
    /* a dale model cannot be moved to another path, nor the other way */
    dfx_path q;
    dfx_path_default(&q, DFX_PATH_VP);
    CHECK(dfx_model_set_path(m, &q, &err) != 0 && strstr(err.msg, "log space"), "%s", err.msg);
    dfx_model_free(m);
    /* the multiplicative samplers refuse other paths */
    dfx_path_default(&p, DFX_PATH_VP);
    m = dfx_model_gmm_create(be, &p, 1, 1, D, -1, 1, K, MU, CS, W, &err);
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = "aums";
    CHECK(!dfx_sampler_create(m, &o, 2, &err) && strstr(err.msg, "dale path"), "%s", err.msg);
    dfx_model_free(m);
    (void)path_start;
}

/* pc's corrector measures each sample's score and noise norms (the step
 * keeps a target signal-to-noise ratio), which presumes the high dimension
 * of images: here a 2-component mixture in 64 dimensions. The first two
 * coordinates' moments must match the analytic marginal. */
static void pc(void)
{
    enum { DD = 64, NN = 4000 };
    dfx_error err = {{0}};
    static float mu[2 * DD];
    for (int j = 0; j < DD; j++) {
        mu[j] = 0.8f * (j % 2 ? 1.0f : -1.0f);
        mu[DD + j] = -0.5f * (j % 3 ? 1.0f : -1.0f);
    }
    float cs[2] = {0.3f, 0.2f}, w[2] = {0.5f, 0.5f};
    const dfx_path_family fams[2] = {DFX_PATH_VP, DFX_PATH_LINEAR};
    for (int f = 0; f < 2; f++) {
        dfx_path p;
        dfx_path_default(&p, fams[f]);
        dfx_model *m = dfx_model_gmm_create(be, &p, 1, 8, 8, -1, 1, 2, mu, cs, w, &err);
        float *x = draw(m, "pc", 300, NN, 77, NULL);
        double tn, td;
        dfx_path_default_range(&p, &tn, &td);
        dfx_coef c;
        dfx_path_eval(&p, td, &c);
        for (int j = 0; j < 2; j++) {
            double mean = 0.5 * c.a * (mu[j] + mu[DD + j]), m2 = 0;
            for (int k = 0; k < 2; k++) {
                double mk = c.a * mu[k * DD + j];
                m2 += 0.5 * (c.a * c.a * cs[k] * cs[k] + c.s * c.s + mk * mk);
            }
            double var = m2 - mean * mean, em = 0, ev = 0;
            for (int n = 0; n < NN; n++) em += x[n * DD + j] / NN;
            for (int n = 0; n < NN; n++) ev += pow(x[n * DD + j] - em, 2) / NN;
            double zm = fabs(em - mean) / sqrt(var / NN), zv = fabs(ev - var) / (var * sqrt(2.0 / NN) * 1.5);
            printf("pc on %-6s coordinate %d: mean %.3f vs %.3f, var %.3f vs %.3f\n",
                   dfx_path_name(p.family), j, em, mean, ev, var);
            CHECK(zm < 5 && zv < 5, "pc on %s: coordinate %d moments off (%.1f, %.1f SE)",
                  dfx_path_name(p.family), j, zm, zv);
        }
        free(x);
        dfx_model_free(m);
    }
}

/* A fitted start with full covariance (models/FORMAT.md "start"): on the
 * dale path, a field that predicts eps = 0 leaves y = log x where it started,
 * so the samples' logs must have exactly the file's mean and scale scale^T
 * (to sampling error); --path-start falls back to the path's N(m, s^2).
 * A file that claims the start but lacks or spoils a tensor is refused. */
enum { SD = 4, SN = 20000 };
static const float S_MEAN[SD] = {0.3f, -0.2f, 0.1f, 0.5f};
static const float S_SCALE[SD * SD] = {0.5f, 0,    0,    0,    /* lower triangular */
                                       0.4f, 0.3f, 0,    0,    /* strong correlations */
                                       -0.2f, 0.1f, 0.6f, 0,
                                       0.1f, -0.3f, 0.2f, 0.4f};

static dfx_model *start_model(const char *path, int with_scale, float poison)
{
    static float zeroA[SD * SD], zerob[SD], scale[SD * SD];
    memcpy(scale, S_SCALE, sizeof scale);
    scale[5] = poison != 0.0f ? poison : scale[5];
    const char *cfg =
        "{\"version\":1,\"kind\":\"affine\",\"image\":{\"channels\":1,\"height\":2,"
        "\"width\":2},\"data\":{\"range\":[1,2]},\"path\":{\"family\":\"dale\",\"sigma\":0.8,"
        "\"mu\":0.32},\"prediction\":\"eps\",\"start\":{\"mean\":0.175,\"std\":0.6,"
        "\"full\":true}}";
    dfx_st_out t[4] = {{"affine.A", DFX_F32, 2, {SD, SD}, zeroA},
                       {"affine.b", DFX_F32, 1, {SD}, zerob},
                       {"start.mean", DFX_F32, 1, {SD}, S_MEAN},
                       {"start.scale", DFX_F32, 2, {SD, SD}, scale}};
    dfx_error err = {{0}};
    CHECK_OK(dfx_st_write(path, cfg, t, with_scale ? 4 : 3, &err), err);
    dfx_model *m = dfx_model_load(path, be, &err);
    if (!m) printf("refused as expected? %s\n", err.msg);
    if (!m && with_scale && poison == 0.0f) CHECK(0, "%s", err.msg);
    if (!with_scale || poison != 0.0f) {
        CHECK(m == NULL, "a start without a valid start.scale was accepted");
        CHECK(strstr(err.msg, "start.scale") != NULL, "the error does not name start.scale: %s",
              err.msg);
    }
    remove(path);
    return m;
}

static void start_moments(const char *what, const float *x, const float *mean,
                          const double *cov)
{
    double m[SD] = {0}, c[SD * SD] = {0};
    for (int r = 0; r < SN; r++)
        for (int i = 0; i < SD; i++) m[i] += log((double)x[r * SD + i]) / SN;
    for (int r = 0; r < SN; r++)
        for (int i = 0; i < SD; i++)
            for (int j = 0; j < SD; j++)
                c[i * SD + j] += (log((double)x[r * SD + i]) - m[i]) *
                                 (log((double)x[r * SD + j]) - m[j]) / (SN - 1);
    double worst = 0;
    for (int i = 0; i < SD; i++) {
        worst = fmax(worst, fabs(m[i] - mean[i]) / sqrt(cov[i * SD + i] / SN));
        for (int j = 0; j < SD; j++) {
            double se = sqrt((cov[i * SD + i] * cov[j * SD + j] + cov[i * SD + j] * cov[i * SD + j]) /
                             SN);
            worst = fmax(worst, fabs(c[i * SD + j] - cov[i * SD + j]) / se);
        }
    }
    printf("fitted start, %s: worst mean/covariance deviation %.2f SE\n", what, worst);
    CHECK(worst < 5, "fitted start, %s: moments off by %.1f standard errors", what, worst);
}

static void fitted_start(void)
{
    char path[64];
    snprintf(path, sizeof path, "test_samplers_start_%d.safetensors", (int)getpid());
    dfx_model *m = start_model(path, 1, 0.0f);
    if (!m) return;
    double cov[SD * SD];
    for (int i = 0; i < SD; i++)
        for (int j = 0; j < SD; j++) {
            cov[i * SD + j] = 0;
            for (int k = 0; k < SD; k++) cov[i * SD + j] += S_SCALE[i * SD + k] * S_SCALE[j * SD + k];
        }
    float *x = draw(m, "euler", 3, SN, 5, NULL);
    if (x) start_moments("file's start", x, S_MEAN, cov);
    free(x);
    /* the path's own start: m(1) = (mu - sigma^2/2) = 0, s(1)^2 = 0.64, independent */
    const float zero[SD] = {0};
    double iso[SD * SD];
    for (int i = 0; i < SD * SD; i++) iso[i] = (i % (SD + 1) == 0) ? 0.64 : 0.0;
    x = draw(m, "heun", 3, SN, 5, path_start);
    if (x) start_moments("--path-start", x, zero, iso);
    free(x);
    dfx_model_free(m);
    start_model(path, 0, 0.0f);
    start_model(path, 1, NAN);
}

typedef struct progress_log {
    int n;
    double frac[64];
} progress_log;

static void log_progress(void *ctx, const dfx_progress *p)
{
    progress_log *l = ctx;
    if (l->n < 64) l->frac[l->n] = p->frac;
    l->n++;
}

static dfx_sample_opts heun_from_path(dfx_model *m, int steps, int start_langevin)
{
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = "heun";
    o.steps = steps;
    o.denoise = 0;
    o.path_start = 1;
    o.start_langevin = start_langevin;
    return o;
}

/* The progress fraction counts evaluations, the start's Langevin steps
 * first: 10 of them and heun's 5 steps of 2 evaluations report 1/20 ..
 * 10/20, then (10 + 2 i)/20. */
static void progress_fraction(dfx_model *m)
{
    dfx_error err = {{0}};
    progress_log l = {0, {0}};
    dfx_sample_opts o = heun_from_path(m, 5, 10);
    o.progress = log_progress;
    o.progress_ctx = &l;
    dfx_sampler *s = dfx_sampler_create(m, &o, 2, &err);
    CHECK(s != NULL, "%s", err.msg);
    if (!s) return;
    float x[2 * 64];
    CHECK_OK(dfx_sampler_run(s, 0, 2, x, NULL, &err), err);
    CHECK(l.n == 15, "%d progress reports, not 10 Langevin steps + 5 heun steps", l.n);
    for (int i = 0; i < l.n && i < 15; i++) {
        double want = i < 10 ? (i + 1) / 20.0 : (10 + 2 * (i - 9)) / 20.0;
        CHECK(fabs(l.frac[i] - want) < 1e-12, "progress report %d: fraction %g, not %g", i,
              l.frac[i], want);
    }
    dfx_sampler_free(s);
}

/* Langevin steps at the noise end (--start-langevin, MATH.md "The start
 * of a dale sampler") turn a wrong start into p_1. One Gaussian in 64
 * dimensions on the dale path, log x ~ N(MU_L, C_L^2 I): the probability
 * flow maps y_1 to y_0 = MU_L + c/sqrt(c^2 + s^2) (y_1 - MU_L - m(1)), so from
 * the path's start N(m(1), s(1)^2), which ignores MU_L, the samples' mean
 * lands at MU_L (1 - c/sqrt(c^2 + s^2)), far off; after the Langevin steps
 * it must be MU_L within sampling error. Its variance comes out a few per
 * cent high, as the corrector's rule makes it: the unadjusted step's bias
 * e / 2v (e = 2 snr^2 v) and, from a step that shrinks as |S| grows, a
 * density tilted by |S|^2 (1 + 2 / dim). The runs are also batch-split
 * invariant, count the steps as evaluations, and by default only dale
 * models with a fitted Gaussian start take them. */
static void start_langevin(void)
{
    enum { LD = 64, LN = 4000, LK = 200 };
    const float MU_L = 0.3f, C_L = 0.1f;
    static float mu[LD];
    for (int j = 0; j < LD; j++) mu[j] = MU_L;
    float cs[1] = {C_L}, w[1] = {1.0f};
    dfx_error err = {{0}};
    dfx_path p;
    dfx_path_default(&p, DFX_PATH_DALE);
    dfx_model *m = dfx_model_gmm_create(be, &p, 1, 8, 8, 1, 2, 1, mu, cs, w, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return;
    double tn, td;
    dfx_path_default_range(&p, &tn, &td);
    dfx_coef c1, c0;
    dfx_path_eval(&p, tn, &c1);
    dfx_path_eval(&p, td, &c0);
    double v0 = C_L * C_L + c0.s * c0.s; /* variance of y at t_data */
    for (int k = 0; k <= LK; k += LK) {
        dfx_sample_opts o = heun_from_path(m, 30, k);
        o.seed = 11;
        dfx_sampler *s = dfx_sampler_create(m, &o, LN, &err);
        CHECK(s != NULL, "%s", err.msg);
        if (!s) continue;
        CHECK(dfx_sampler_nfe(s) == k + 60, "nfe %ld, not %d Langevin steps + 60",
              dfx_sampler_nfe(s), k);
        float *x = malloc(sizeof(float) * (size_t)LN * LD), *x8 = malloc(sizeof(float) * 8 * LD);
        CHECK_OK(dfx_sampler_run(s, 0, LN, x, NULL, &err), err);
        CHECK_OK(dfx_sampler_run(s, 0, 8, x8, NULL, &err), err);
        CHECK(memcmp(x, x8, sizeof(float) * 8 * LD) == 0,
              "start Langevin %d: the first 8 samples depend on the batch", k);
        double em = 0, ev = 0;
        for (size_t i = 0; i < (size_t)LN * LD; i++) em += log((double)x[i]) / ((double)LN * LD);
        for (size_t i = 0; i < (size_t)LN * LD; i++)
            ev += pow(log((double)x[i]) - em, 2) / ((double)LN * LD);
        /* the flow's map of the wrong start: the mean it lands on */
        double want = MU_L + c0.m, off = MU_L * C_L / sqrt(C_L * C_L + c1.s * c1.s);
        double z = fabs(em - want) / sqrt(v0 / ((double)LN * LD));
        printf("start Langevin %3d: E[log x] %.4f vs %.4f (%.1f SE), var %.4f vs %.4f\n", k, em,
               want, z, ev, v0);
        if (k == 0)
            CHECK(fabs(em - (want - off)) < 0.01 && z > 10,
                  "without Langevin steps the mean should land at %.4f, got %.4f", want - off, em);
        else
            CHECK(z < 5 && fabs(ev / v0 - 1.0) < 0.1,
                  "after %d Langevin steps: mean %.4f vs %.4f (%.1f SE), var %.4f vs %.4f", k, em,
                  want, z, ev, v0);
        free(x);
        free(x8);
        dfx_sampler_free(s);
    }
    /* defaults: the analytic model samples its exact p_1, no steps */
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.steps = 3;
    dfx_sampler *s = dfx_sampler_create(m, &o, 2, &err);
    CHECK(s && dfx_sampler_nfe(s) == 7, "an exact start takes no Langevin steps (nfe %ld)",
          s ? dfx_sampler_nfe(s) : -1L);
    dfx_sampler_free(s);
    o.start_langevin = DFX_START_LANGEVIN_MAX + 1;
    CHECK(!dfx_sampler_create(m, &o, 2, &err) && strstr(err.msg, "--start-langevin"), "%s",
          err.msg);
    o.start_langevin = 5;
    o.start_snr = 0.0;
    CHECK(!dfx_sampler_create(m, &o, 2, &err) && strstr(err.msg, "--start-snr"), "%s", err.msg);
    progress_fraction(m);
    dfx_model_free(m);
    /* a dale network with a fitted Gaussian start takes DFX_START_LANGEVIN_DALE
     * by default, and none from the path's start */
    char path[64];
    snprintf(path, sizeof path, "test_samplers_langevin_%d.safetensors", (int)getpid());
    m = start_model(path, 1, 0.0f);
    if (!m) return;
    for (int ps = 0; ps < 2; ps++) {
        dfx_sample_opts_default(&o, m);
        o.sampler = "euler";
        o.steps = 3;
        o.denoise = 0;
        o.path_start = ps;
        s = dfx_sampler_create(m, &o, 2, &err);
        long want = 3 + (ps ? 0 : DFX_START_LANGEVIN_DALE);
        CHECK(s && dfx_sampler_nfe(s) == want, "dale network, %s start: nfe %ld, not %ld",
              ps ? "path" : "fitted", s ? dfx_sampler_nfe(s) : -1L, want);
        dfx_sampler_free(s);
    }
    dfx_model_free(m);
}

int main(void)
{
    dfx_error err;
    be = dfx_backend_create("cpu", 0, &err);
    reductions();
    dale();
    pc();
    fitted_start();
    start_langevin();
    dfx_backend_destroy(be);
    return check_report("test_samplers");
}
