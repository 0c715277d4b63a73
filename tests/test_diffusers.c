/* diffusers models (tests/fixtures/diffusers, written by
 * models/difflux_ref/make_diffusers_fixtures.py with diffusers from PyPI):
 * the UNet2DModel forward pass equals diffusers' (float64) to 1e-4 on
 * every config; ddim and dpmpp_2m from the same noise reproduce
 * DDIMScheduler and DPMSolverMultistepScheduler after 10 steps to 1e-3
 * (relative to the output's scale where it exceeds 1); ddpm matches
 * DDPMScheduler's per-pixel moments; unsupported configs are refused,
 * naming the key. */
#include "check.h"
#include "io/fileio.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

#define DIR DFX_TEST_DATA "/fixtures/diffusers"

static dfx_backend *be;

static float *tensor(dfx_st_file *f, const char *name, size_t *n)
{
    dfx_error err;
    const dfx_st_tensor *t = dfx_st_get(f, name, -1, NULL, &err);
    if (!t) return NULL;
    float *v = malloc(t->numel * sizeof *v);
    if (v) dfx_st_to_f32(f, t, v);
    *n = t->numel;
    return v;
}

/* Max |difflux - diffusers| of the network on NAME.io.safetensors. */
static void forward(const char *name, const char *model, size_t params)
{
    dfx_error err = {{0}};
    char p[512], io[512];
    snprintf(p, sizeof p, "%s/%s", DIR, model);
    snprintf(io, sizeof io, "%s/%s.io.safetensors", DIR, name);
    dfx_model *m = dfx_model_load(p, be, &err);
    CHECK(m, "%s: %s", name, err.msg);
    /* diffusers' own count (the fixtures' README): no padding zeros counted */
    CHECK(!m || m->info.n_params == params, "%s: %zu parameters, diffusers has %zu", name,
          m ? m->info.n_params : 0, params);
    dfx_st_file f;
    if (!m || dfx_st_open(&f, io, &err)) {
        CHECK(0, "%s: %s", io, err.msg);
        dfx_model_free(m);
        return;
    }
    size_t nx = 0, nt = 0, nl = 0, no = 0;
    float *x = tensor(&f, "x", &nx), *t = tensor(&f, "t", &nt), *want = tensor(&f, "out", &no);
    float *lab = tensor(&f, "labels", &nl);
    CHECK(x && t && want && nx == no && nx == nt * m->dim, "%s: fixture shapes", name);
    if (x && t && want && nx == no && nx == nt * m->dim) {
        int B = (int)nt, labels[16];
        double td[16];
        for (int r = 0; r < B && r < 16; r++) {
            td[r] = dfx_path_t_of_timestep(&m->cfg.path, t[r]);
            labels[r] = lab ? (int)lab[r] : 0;
        }
        if (lab) dfx_unet_force_labels(m, labels);
        float *got = malloc(nx * sizeof *got);
        CHECK_OK(dfx_model_eval_host(m, td, x, B, m->cfg.prediction, got, &err), err);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < nx; i++) {
            worst = fmax(worst, fabs((double)got[i] - want[i]));
            scale = fmax(scale, fabs(want[i]));
        }
        printf("forward %-10s max |diff| %.3g (outputs up to %.3g)\n", name, worst, scale);
        CHECK(worst <= 1e-4, "%s: forward differs from diffusers by %g", name, worst);
        CHECK(scale > 0.1, "%s: the fixture's outputs are all near 0", name);
        free(got);
    }
    free(x);
    free(t);
    free(want);
    free(lab);
    dfx_st_close(&f);
    dfx_model_free(m);
}

/* difflux `sampler` from the run's init through its scheduler config. */
static float *sample(const char *pipeline, const char *sched, const char *sampler, int steps,
                     const char *init, long *n, dfx_model **mp)
{
    dfx_error err = {{0}};
    char p[512], s[512], i[512];
    snprintf(p, sizeof p, "%s/%s", DIR, pipeline);
    snprintf(s, sizeof s, "%s/runs/%s", DIR, sched);
    snprintf(i, sizeof i, "%s/runs/%s", DIR, init);
    dfx_model *m = dfx_model_load_diffusers(p, s, be, &err);
    CHECK(m, "%s: %s", sched, err.msg);
    if (!m) return NULL;
    float *z = dfx_read_npy(i, m->dim, n, &err);
    CHECK(z, "%s: %s", init, err.msg);
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = sampler;
    o.steps = steps;
    o.init = z;
    o.init_rows = *n;
    float *out = z ? malloc((size_t)*n * m->dim * sizeof *out) : NULL;
    dfx_sampler *smp = out ? dfx_sampler_create(m, &o, (int)*n, &err) : NULL;
    dfx_sample_stats st;
    int rc = smp ? dfx_sampler_run(smp, 0, (int)*n, out, &st, &err) : -1;
    CHECK(rc == 0, "%s with %s: %s", sampler, sched, err.msg);
    dfx_sampler_free(smp);
    free(z);
    if (rc) {
        free(out);
        out = NULL;
    }
    *mp = m;
    return out;
}

static void scheduler_runs(void)
{
    dfx_error err = {{0}};
    size_t len = 0;
    char *txt = dfx_read_text(DIR "/runs/manifest.json", NULL, 1 << 20, &len, &err);
    cJSON *list = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    CHECK(cJSON_IsArray(list), "runs/manifest.json: %s", err.msg);
    int runs = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
        const char *cls = cJSON_GetStringValue(cJSON_GetObjectItem(e, "scheduler_class"));
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(e, "out"));
        if (!name || !cls || !want) continue;
        /* unipc and deis take their order and variant from the scheduler config */
        const char *sampler = strcmp(cls, "DDIMScheduler") == 0                 ? "ddim"
                              : strcmp(cls, "DPMSolverMultistepScheduler") == 0 ? "dpmpp_2m"
                              : strcmp(cls, "UniPCMultistepScheduler") == 0     ? "unipc"
                              : strcmp(cls, "DEISMultistepScheduler") == 0      ? "deis"
                                                                                : NULL;
        if (!sampler) continue;
        /* diffusers' DDIM with linspace spacing steps to t - N / steps, not to its
         * next timestep: difflux steps between its grid's points (MATH.md 7) */
        if (strstr(name, "ddim_linspace")) continue;
        /* solver_type heun is another 2M rule; difflux's dpmpp_2m is the midpoint one */
        if (strstr(name, "_heun")) continue;
        long n = 0;
        dfx_model *m = NULL;
        float *got = sample(cJSON_GetStringValue(cJSON_GetObjectItem(e, "pipeline")),
                            cJSON_GetStringValue(cJSON_GetObjectItem(e, "scheduler")), sampler,
                            cJSON_GetObjectItem(e, "steps")->valueint,
                            cJSON_GetStringValue(cJSON_GetObjectItem(e, "init")), &n, &m);
        char wp[512];
        snprintf(wp, sizeof wp, "%s/runs/%s", DIR, want);
        long nw = 0;
        float *ref = m ? dfx_read_npy(wp, m->dim, &nw, &err) : NULL;
        /* A clipped 10-step run of the random epsilon network of `attn` is
         * chaotic: diffusers itself in float32 lands up to 2.7e-2 from its
         * float64 run (the manifest's f32_loop_max_abs_diff), and any other
         * float32 arithmetic (another instruction-set path, a -O0 sanitizer
         * build) lands as far again. There the bound is five times that gap
         * (a clip left out would miss by 100x); the same code paths are held
         * to 1e-3 on the v-prediction pipeline, where float32 stays within
         * 1e-6. */
        const cJSON *gap = cJSON_GetObjectItem(e, "f32_loop_max_abs_diff");
        double f32gap = cJSON_IsNumber(gap) ? gap->valuedouble : 0.0;
        if (got && ref && nw == n) {
            double worst = 0, scale = 1;
            for (size_t i = 0; i < (size_t)n * m->dim; i++) {
                worst = fmax(worst, fabs((double)got[i] - ref[i]));
                scale = fmax(scale, fabs(ref[i]));
            }
            double tol = fmax(1e-3 * scale, 5.0 * f32gap);
            printf("%-26s %-9s max |diff| %.3g (outputs up to %.3g; float32 diffusers %.2g)\n",
                   name, sampler, worst, scale, f32gap);
            CHECK(worst <= tol, "%s: %s differs from diffusers by %g (bound %g)", name, sampler,
                  worst, tol);
            runs++;
        } else {
            CHECK(0, "%s: no comparison (%s)", name, err.msg);
        }
        free(got);
        free(ref);
        dfx_model_free(m);
    }
    CHECK(runs >= 28, "only %d scheduler runs compared", runs);
    cJSON_Delete(list);
}

/* The exact JVP through a diffusers network (input centring and the mid
 * block's scaled residuals included: noattn_rgb has both) against central
 * differences of the network itself. */
static void jvp(const char *model)
{
    dfx_error err = {{0}};
    char p[512];
    snprintf(p, sizeof p, "%s/%s", DIR, model);
    dfx_model *m = dfx_model_load(p, be, &err);
    CHECK(m, "%s", err.msg);
    if (!m) return;
    const int B = 2;
    size_t n = (size_t)B * m->dim;
    float *x = malloc(n * sizeof *x), *v = malloc(n * sizeof *v), *f = malloc(n * sizeof *f);
    float *jv = malloc(n * sizeof *jv), *fp = malloc(n * sizeof *fp), *fm = malloc(n * sizeof *fm);
    test_rng r = {42};
    rng_fill_normal(&r, x, n, 1.0f);
    rng_fill_normal(&r, v, n, 1.0f);
    double t[2] = {0.3, 0.7};
    CHECK_OK(dfx_model_jvp(m, t, x, v, m->cfg.prediction, f, jv, B, &err), err);
    const double h = 2e-3;
    float *xp = malloc(n * sizeof *xp);
    for (size_t i = 0; i < n; i++) xp[i] = (float)(x[i] + h * v[i]);
    CHECK_OK(dfx_model_eval_host(m, t, xp, B, m->cfg.prediction, fp, &err), err);
    for (size_t i = 0; i < n; i++) xp[i] = (float)(x[i] - h * v[i]);
    CHECK_OK(dfx_model_eval_host(m, t, xp, B, m->cfg.prediction, fm, &err), err);
    double *fd = malloc(n * sizeof *fd);
    for (size_t i = 0; i < n; i++) fd[i] = ((double)fp[i] - fm[i]) / (2 * h);
    double e = nerr_df(fd, jv, n);
    printf("jvp %-10s exact vs central differences: relative %.2g\n", model, e);
    CHECK(e < 1e-3, "%s: the exact JVP differs from finite differences by %g", model, e);
    free(x), free(v), free(f), free(jv), free(fp), free(fm), free(xp), free(fd);
    dfx_model_free(m);
}

/* ddpm against DDPMScheduler in distribution: per-pixel means and
 * variances of N runs each, as z-scores with both standard errors. */
static void ddpm_moments(void)
{
    dfx_error err = {{0}};
    dfx_st_file f;
    if (dfx_st_open(&f, DIR "/runs/ddpm_moments.safetensors", &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    size_t n1 = 0, n2 = 0, n3 = 0, n4 = 0;
    float *mu = tensor(&f, "mean", &n1), *var = tensor(&f, "var", &n2);
    float *mse = tensor(&f, "mean_se", &n3), *vse = tensor(&f, "var_se", &n4);
    dfx_model *m = dfx_model_load_diffusers(DIR "/attn", DIR "/runs/ddpm.scheduler.json", be, &err);
    CHECK(m && mu && var && mse && vse, "ddpm fixture: %s", err.msg);
    if (m && mu && var && mse && vse && n1 == m->dim) {
#ifdef __SANITIZE_ADDRESS__
        const int N = 256; /* the sanitizer build checks the memory, at -O0 */
#else
        const int N = 1024;
#endif
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = "ddpm";
        o.steps = 10;
        o.seed = 7;
        float *x = malloc((size_t)N * m->dim * sizeof *x);
        dfx_sampler *s = dfx_sampler_create(m, &o, 256, &err);
        dfx_sample_stats st;
        int rc = s ? 0 : -1;
        for (int b = 0; b < N && rc == 0; b += 256)
            rc = dfx_sampler_run(s, (uint64_t)b, 256, x + (size_t)b * m->dim, &st, &err);
        CHECK(rc == 0, "ddpm: %s", err.msg);
        double zm2 = 0, zv2 = 0;
        int far = 0;
        for (size_t j = 0; rc == 0 && j < m->dim; j++) {
            double a = 0, q = 0, q4 = 0;
            for (int r = 0; r < N; r++) a += x[(size_t)r * m->dim + j];
            a /= N;
            for (int r = 0; r < N; r++) {
                double d = x[(size_t)r * m->dim + j] - a;
                q += d * d;
                q4 += d * d * d * d;
            }
            double v = q / (N - 1), sem = sqrt(v / N);
            double sev = sqrt(fmax(q4 / N - v * v, 0.0) / N);
            double zm = (a - mu[j]) / sqrt(sem * sem + mse[j] * mse[j]);
            double zv = (v - var[j]) / sqrt(sev * sev + vse[j] * vse[j]);
            zm2 += zm * zm;
            zv2 += zv * zv;
            far += fabs(zm) > 4 || fabs(zv) > 4;
        }
        zm2 /= m->dim;
        zv2 /= m->dim;
        printf("ddpm vs DDPMScheduler: mean z^2 of means %.3f, of variances %.3f (1 expected), "
               "%d of %zu pixels beyond 4 sigma\n",
               zm2, zv2, far, m->dim);
        CHECK(zm2 < 1.5 && zv2 < 1.5 && far <= 1, "ddpm's moments differ from DDPMScheduler's");
        dfx_sampler_free(s);
        free(x);
    }
    dfx_model_free(m);
    free(mu);
    free(var);
    free(mse);
    free(vse);
    dfx_st_close(&f);
}

int main(void)
{
    dfx_error err = {{0}};
    be = dfx_backend_create("cpu", 0, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    forward("attn", "attn", 44969);
    forward("noattn_rgb", "noattn_rgb", 98275);
    forward("legacy", "legacy", 44969);
    forward("cond", "cond", 45097);
    forward("unet_only", "unet_only", 40634);
    jvp("noattn_rgb");
    jvp("attn");
    scheduler_runs();
    ddpm_moments();
    dfx_backend_destroy(be);
    return check_report("test_diffusers");
}
