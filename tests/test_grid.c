/* Time grids: end points, monotonicity and the defining formula of each. */
#include "check.h"
#include "difflux.h"

int main(void)
{
    enum { N = 10 };
    double g[N + 1];
    dfx_error err = {{0}};
    dfx_path p;

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

    /* errors: karras needs a finite sigma; intervals run towards the data */
    dfx_path_default(&p, DFX_PATH_LINEAR);
    CHECK(dfx_time_grid(&p, DFX_GRID_KARRAS, 7, 3, 0.0, 0.999, N, g, &err) != 0,
          "karras at t = 0 on linear must fail");
    CHECK(strstr(err.msg, "--t-noise") != NULL, "message names the option: %s", err.msg);
    CHECK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.9, 0.1, N, g, &err) != 0,
          "backwards interval must fail");
    CHECK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.0, 1.5, N, g, &err) != 0,
          "t outside [0, 1] must fail");
    CHECK(dfx_time_grid(&p, DFX_GRID_UNIFORM, 7, 3, 0.0, 0.5, 0, g, &err) != 0,
          "zero steps must fail");
    return check_report("test_grid");
}
