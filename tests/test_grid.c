/* Time grids: end points, monotonicity and the defining formula of each;
 * the per-family defaults; em's stability bound on a grid against its
 * closed form, and the count of samples far outside the data range
 * (issue #23). */
#include "check.h"
#include "difflux.h"

int main(void)
{
    enum { N = 10 };
    double g[N + 1];
    dfx_error err = {{0}};
    dfx_path p;
    dfx_backend *be = dfx_backend_create("cpu", 1, &err);

    dfx_path_default(&p, DFX_PATH_LINEAR);
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.0, 0.999, N, g, &err), err);
    for (int i = 0; i <= N; i++) CHECK_NEAR(g[i], 0.999 * i / N, 1e-15, "uniform");

    /* Karras: sigma_i = (smax^(1/rho) + i/N (smin^(1/rho) - smax^(1/rho)))^rho */
    dfx_path_default(&p, DFX_PATH_VE);
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_KARRAS, 7, 3, 1.0, 0.0, N, g, &err), err);
    for (int i = 0; i <= N; i++) {
        dfx_coef c;
        dfx_path_eval(&p, g[i], &c);
        double a = pow(80.0, 1 / 7.0), b = pow(0.002, 1 / 7.0);
        double want = pow(a + i / (double)N * (b - a), 7.0);
        CHECK(fabs(c.s - want) <= 1e-9 * want, "karras sigma %d: %g vs %g", i, c.s, want);
    }
    /* on VP, sigma = s / a */
    dfx_path_default(&p, DFX_PATH_VP);
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_KARRAS, 7, 3, 1.0, 1e-3, N, g, &err), err);
    {
        dfx_coef c0, c1;
        dfx_path_eval(&p, 1.0, &c0);
        dfx_path_eval(&p, 1e-3, &c1);
        double a = pow(c0.s / c0.a, 1 / 7.0), b = pow(c1.s / c1.a, 1 / 7.0);
        for (int i = 0; i <= N; i++) {
            dfx_coef c;
            dfx_path_eval(&p, g[i], &c);
            double want = pow(a + i / (double)N * (b - a), 7.0);
            CHECK(fabs(c.s / c.a - want) <= 1e-8 * want, "vp karras sigma %d", i);
        }
    }

    /* log-SNR: equal steps in lambda */
    dfx_path_default(&p, DFX_PATH_TRIG);
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_LOGSNR, 7, 3, 0.01, 0.99, N, g, &err), err);
    double l0 = dfx_path_logsnr(&p, 0.01), l1 = dfx_path_logsnr(&p, 0.99);
    for (int i = 0; i <= N; i++)
        CHECK_NEAR(dfx_path_logsnr(&p, g[i]), l0 + (l1 - l0) * i / N, 1e-9, "logsnr spacing");

    /* shift: noise coordinate u = 1 - t on an interpolant, u' = k u/(1+(k-1)u) */
    dfx_path_default(&p, DFX_PATH_LINEAR);
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_SHIFT, 7, 3, 0.0, 1.0, N, g, &err), err);
    for (int i = 0; i <= N; i++) {
        double u = 1.0 - i / (double)N, want = 1.0 - 3 * u / (1 + 2 * u);
        CHECK_NEAR(g[i], want, 1e-14, "shift");
    }
    /* k > 1 puts more steps at high noise: the first step is shorter in t */
    CHECK(g[1] - g[0] < 1.0 / N, "shift spends more steps near the noise end");

    /* the schedule grid: diffusers' timesteps for 10 of 1000 steps (DDIM's
     * set_timesteps, and DPM-Solver's, which divides into 11), then abar = 1 */
    {
        static const struct {
            int spacing, dpm, offset;
            double tau[10];
        } known[] = {
            {DFX_SPACING_LEADING, 0, 0, {900, 800, 700, 600, 500, 400, 300, 200, 100, 0}},
            {DFX_SPACING_LEADING, 0, 1, {901, 801, 701, 601, 501, 401, 301, 201, 101, 1}},
            {DFX_SPACING_TRAILING, 0, 0, {999, 899, 799, 699, 599, 499, 399, 299, 199, 99}},
            {DFX_SPACING_LINSPACE, 0, 0, {999, 888, 777, 666, 555, 444, 333, 222, 111, 0}},
            {DFX_SPACING_LINSPACE, 1, 0, {999, 899, 799, 699, 599, 500, 400, 300, 200, 100}},
            {DFX_SPACING_LEADING, 1, 0, {900, 810, 720, 630, 540, 450, 360, 270, 180, 90}},
        };
        double sg[11];
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
            dfx_path_default(&p, DFX_PATH_DISCRETE);
            p.spacing = known[k].spacing;
            p.dpm_timesteps = known[k].dpm;
            p.steps_offset = known[k].offset;
            CHECK_OK(dfx_time_grid(&p, DFX_GRID_SCHEDULE, 7, 3, 1.0, 0.0, 10, sg, &err), err);
            for (int i = 0; i < 10; i++)
                CHECK_NEAR(dfx_path_timestep(&p, sg[i]), known[k].tau[i], 1e-9,
                           "schedule timestep");
            CHECK(sg[10] == 0.0, "the schedule ends at abar = 1");
        }
    }

    /* monotone in the generation direction on every grid and path */
    for (int f = 0; f < DFX_PATH_COUNT; f++) {
        dfx_path_default(&p, (dfx_path_family)f);
        double tn, td;
        dfx_path_default_range(&p, &tn, &td);
        if (f == DFX_PATH_LINEAR || f == DFX_PATH_TRIG) tn = 1e-3; /* finite sigma for karras */
        if (f == DFX_PATH_DISCRETE) td = 1e-3;                      /* timestep 0 */
        for (int k = 0; k < DFX_GRID_COUNT; k++) {
            /* the scheduler's timesteps exist on the discrete path only */
            if ((k == DFX_GRID_SCHEDULE) != (f == DFX_PATH_DISCRETE) && k == DFX_GRID_SCHEDULE)
                continue;
            double te = k == DFX_GRID_SCHEDULE ? 0.0 : td;
            CHECK_OK(dfx_time_grid(&p, (dfx_grid)k, 7, 3, tn, te, N, g, &err), err);
            CHECK((g[0] == tn || k == DFX_GRID_SCHEDULE) && g[N] == te, "end points %s/%s",
                  dfx_path_name(p.family), dfx_grid_name((dfx_grid)k));
            for (int i = 0; i < N; i++)
                CHECK((te > tn) ? g[i + 1] > g[i] : g[i + 1] < g[i], "monotone %s/%s",
                      dfx_path_name(p.family), dfx_grid_name((dfx_grid)k));
        }
    }

    /* an interpolant's noise end (sigma = (1 - t)/t infinite at t = 0 on
     * linear): one step to sigma = 80 (t = 1/81), then Karras' spacing from
     * 80 to sigma(t_data) over the other N - 1 intervals */
    dfx_path_default(&p, DFX_PATH_LINEAR);
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_KARRAS, 7, 3, 0.0, 0.999, N, g, &err), err);
    CHECK(g[0] == 0.0 && fabs(g[1] - 1.0 / 81) < 1e-12 && g[N] == 0.999, "karras on linear: %g %g",
          g[0], g[1]);
    for (int i = 1; i <= N; i++) {
        double a = pow(80.0, 1 / 7.0), b = pow(0.001 / 0.999, 1 / 7.0);
        double want = pow(a + (i - 1) / (double)(N - 1) * (b - a), 7.0), sig = (1 - g[i]) / g[i];
        CHECK(fabs(sig - want) <= 1e-9 * want, "karras on linear sigma %d: %g vs %g", i, sig,
              want);
    }
    /* logsnr likewise: lambda = -log sigma uniform from -log 80 */
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_LOGSNR, 7, 3, 0.0, 0.999, N, g, &err), err);
    for (int i = 1; i <= N; i++) {
        double lo = -log(80.0), hi = log(0.999 / 0.001);
        double want = lo + (i - 1) / (double)(N - 1) * (hi - lo), lam = log(g[i] / (1 - g[i]));
        CHECK(fabs(lam - want) <= 1e-9, "logsnr on linear lambda %d: %g vs %g", i, lam, want);
    }
    /* errors: karras needs a finite sigma at the data end (s = 0 at t = 1);
     * intervals run towards the data */
    CHECK(dfx_time_grid(&p, DFX_GRID_KARRAS, 7, 3, 0.0, 1.0, N, g, &err) != 0,
          "karras to t = 1 on linear must fail");
    CHECK(strstr(err.msg, "--t-data") != NULL, "message names the option: %s", err.msg);
    /* one step is the interval itself: nothing to space, nothing to refuse */
    CHECK_OK(dfx_time_grid(&p, DFX_GRID_KARRAS, 7, 3, 0.0, 0.999, 1, g, &err), err);
    CHECK(g[0] == 0.0 && g[1] == 0.999, "one karras step: %g %g", g[0], g[1]);
    CHECK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.9, 0.1, N, g, &err) != 0,
          "backwards interval must fail");
    CHECK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.0, 1.5, N, g, &err) != 0,
          "t outside [0, 1] must fail");
    CHECK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.0, 0.5, 0, g, &err) != 0,
          "zero steps must fail");

    /* the per-family defaults of --grid auto (host/sampler/grid.c) */
    {
        static const struct {
            dfx_path_family f;
            const char *sampler;
            dfx_grid want;
        } def[] = {
            {DFX_PATH_VP, "heun", DFX_GRID_LOGSNR},      {DFX_PATH_VP, "ddpm", DFX_GRID_LOGSNR},
            {DFX_PATH_VP_COSINE, "em", DFX_GRID_LOGSNR}, {DFX_PATH_VE, "heun", DFX_GRID_KARRAS},
            {DFX_PATH_VE, "em", DFX_GRID_KARRAS},        {DFX_PATH_VE, "ddim", DFX_GRID_LOGSNR},
            {DFX_PATH_LINEAR, "heun", DFX_GRID_LOGSNR},  {DFX_PATH_TRIG, "ddim", DFX_GRID_LOGSNR},
        };
        const float mu[2] = {0.5f, -0.5f}, cs[2] = {0.1f, 0.1f}, w[2] = {0.5f, 0.5f};
        for (size_t i = 0; i < sizeof def / sizeof def[0]; i++) {
            dfx_path_default(&p, def[i].f);
            dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, 1, -1, 1, 2, mu, cs, w, &err);
            dfx_sample_opts o;
            dfx_sample_opts_default(&o, m);
            o.sampler = def[i].sampler;
            dfx_sampler *s = dfx_sampler_create(m, &o, 1, &err);
            CHECK(s && dfx_sampler_grid_kind(s) == def[i].want &&
                      dfx_default_grid(m, def[i].sampler) == def[i].want,
                  "%s on %s: default grid %s, want %s", def[i].sampler,
                  dfx_path_name(def[i].f), s ? dfx_grid_name(dfx_sampler_grid_kind(s)) : err.msg,
                  dfx_grid_name(def[i].want));
            dfx_sampler_free(s);
            dfx_model_free(m);
        }
    }

    /* em's stability bound r = eps |h| / s^2 (MATH.md section 1.2) against
     * its closed forms on the linear path (s = 1 - t) with n uniform steps */
    {
        const float mu[2] = {0.5f, -0.5f}, cs[2] = {0.02f, 0.02f}, w[2] = {0.5f, 0.5f};
        dfx_path_default(&p, DFX_PATH_LINEAR);
        dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, 1, -1, 1, 2, mu, cs, w, &err);
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = "em";
        o.denoise = 0;
        o.grid = DFX_GRID_UNIFORM; /* the closed forms below are for it */
        /* --noise s (the default): r_i = h / s_i, largest at the last step */
        int n = 20;
        o.steps = n;
        dfx_sampler *s = dfx_sampler_create(m, &o, 4, &err);
        double t, G, r = s ? dfx_sampler_stability(s, &t, &G) : NAN, h = 0.999 / n;
        double tl = 0.999 * (n - 1) / n;
        CHECK(s && fabs(r - h / (1 - tl)) < 1e-12 && fabs(t - tl) < 1e-12 && G == 1.0,
              "noise s: r %g at t %g (want %g at %g), growth %g", r, t, h / (1 - tl), tl, G);
        dfx_sampler_free(s);
        /* --noise const: r_i = eps0 h / s_i^2 and G = prod max(1, |1 - r_i|),
         * here between 1 and 10: it runs (the CLI warns) */
        o.noise = DFX_NOISE_CONST;
        o.eps0 = 1.0;
        o.t_data = 0.9;
        h = 0.9 / n;
        double want_r = 0, want_g = 1;
        for (int i = 0; i < n; i++) {
            double si = 1 - 0.9 * i / n, ri = h / (si * si);
            want_r = fmax(want_r, ri);
            want_g *= fmax(1.0, fabs(1 - ri));
        }
        s = dfx_sampler_create(m, &o, 4, &err);
        r = s ? dfx_sampler_stability(s, &t, &G) : NAN;
        CHECK(s && want_r > 2 && want_g > 1 && want_g <= DFX_UNSTABLE_GROWTH &&
                  fabs(r - want_r) < 1e-9 * want_r && fabs(G - want_g) < 1e-9 * want_g,
              "noise const: r %g (want %g), growth %g (want %g): %s", r, want_r, G, want_g,
              s ? "" : err.msg);
        dfx_sampler_free(s);
        /* at the default t_data 0.999 with 500 steps: refused before any work,
         * naming the way out; unstable = 1 runs it */
        o.t_data = NAN;
        o.steps = 0;
        s = dfx_sampler_create(m, &o, 4, &err);
        CHECK(!s && strstr(err.msg, "unstable") && strstr(err.msg, "--noise s") &&
                  strstr(err.msg, "--steps") && strstr(err.msg, "--allow-unstable"),
              "em --noise const at t_data 0.999 must be refused: %s", s ? "created" : err.msg);
        dfx_sampler_free(s);
        o.unstable = 1;
        s = dfx_sampler_create(m, &o, 4, &err);
        r = s ? dfx_sampler_stability(s, &t, &G) : NAN;
        tl = 0.999 * 499 / 500;
        CHECK(s && fabs(r - (0.999 / 500) / ((1 - tl) * (1 - tl))) < 1e-6 * r &&
                  G > DFX_UNSTABLE_GROWTH,
              "unstable = 1: created with r %g", r);
        dfx_sampler_free(s);
        /* ddim has no em step */
        o.sampler = "ddim";
        o.unstable = 0;
        s = dfx_sampler_create(m, &o, 4, &err);
        CHECK(s && dfx_sampler_stability(s, NULL, NULL) == 0.0, "ddim: no bound");
        dfx_sampler_free(s);

        /* outputs far outside the data range [-1, 1] (beyond [-3, 3]) are
         * counted for every sampler: one Euler step over VE's whole sigma
         * range stays at sigma ~ 80, a good run has none */
        dfx_path_default(&p, DFX_PATH_VE);
        CHECK_OK(dfx_model_set_path(m, &p, &err), err);
        dfx_sample_opts_default(&o, m);
        o.sampler = "euler";
        o.steps = 1;
        o.denoise = 0;
        float x[64];
        dfx_sample_stats st;
        s = dfx_sampler_create(m, &o, 64, &err);
        CHECK(s && dfx_sampler_run(s, 0, 64, x, &st, &err) == 0, "euler 1 step: %s", err.msg);
        long far = 0;
        double mx = 0;
        for (int i = 0; i < 64; i++)
            if (fabs(x[i]) > 3) far++, mx = fmax(mx, fabs(x[i]));
        CHECK(s && far > 32 && st.outside == far && st.outside_max == mx,
              "outside: %ld (want %ld), max %g (want %g)", st.outside, far, st.outside_max, mx);
        dfx_sampler_free(s);
        o.steps = 0;
        s = dfx_sampler_create(m, &o, 64, &err);
        CHECK(s && dfx_sampler_run(s, 0, 64, x, &st, &err) == 0 && st.outside == 0,
              "euler at its defaults: %ld values outside", s ? st.outside : -1L);
        dfx_sampler_free(s);
        dfx_model_free(m);
    }
    dfx_backend_destroy(be);
    return check_report("test_grid");
}
