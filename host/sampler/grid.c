/* Time grids shared by all fixed-step samplers (MATH.md section 2). */
#include "core/error.h"
#include "core/names.h"
#include "sampler/sampler.h"

#include <math.h>
#include <string.h>

/* The noise level where karras and logsnr grids start on a path whose
 * noise end has sigma = s/a infinite (EDM's sigma_max). */
#define DFX_GRID_SIGMA_MAX 80.0

static const char *const grid_names[DFX_GRID_COUNT] = {"uniform", "karras", "logsnr", "shift",
                                                       "schedule"};

const char *dfx_grid_name(dfx_grid g)
{
    if (g == DFX_GRID_AUTO) return "auto";
    return dfx_enum_name(grid_names, DFX_GRID_COUNT, (int)g);
}

int dfx_grid_parse(const char *name, dfx_grid *g)
{
    int i = dfx_enum_parse(grid_names, DFX_GRID_COUNT, name);
    if (i >= 0) *g = (dfx_grid)i;
    return i >= 0 ? 0 : -1;
}

/* The default grid of each path family (MATH.md section 2, "Default
 * grids"), chosen by the spread on the exact mixture (issue #23, samples/
 * grid-spread.csv): `grid` for the samplers on the velocity or score, `x0`
 * for those on x_hat (DFX_SF_X0). VP: log-SNR for both. VE: Karras for
 * heun and its kin, log-SNR (on VE the same as uniform in t) for the x_hat
 * samplers. Interpolants: log-SNR too, its first step from t = 0 (sigma
 * infinite) to sigma = DFX_GRID_SIGMA_MAX. Diffusers models: the scheduler's own timesteps for x_hat
 * samplers, as diffusers runs them. The Dale samplers' principled schedule
 * is uniform on their path whatever the table says. */
static const struct family_grid {
    dfx_path_family family;
    dfx_grid grid, x0;
} family_grids[] = {
    {DFX_PATH_LINEAR, DFX_GRID_LOGSNR, DFX_GRID_LOGSNR},
    {DFX_PATH_TRIG, DFX_GRID_LOGSNR, DFX_GRID_LOGSNR},
    {DFX_PATH_VP, DFX_GRID_LOGSNR, DFX_GRID_LOGSNR},
    {DFX_PATH_VP_COSINE, DFX_GRID_LOGSNR, DFX_GRID_LOGSNR},
    {DFX_PATH_VE, DFX_GRID_KARRAS, DFX_GRID_LOGSNR},
    {DFX_PATH_DALE, DFX_GRID_KARRAS, DFX_GRID_KARRAS},
    {DFX_PATH_DISCRETE, DFX_GRID_KARRAS, DFX_GRID_SCHEDULE},
};

dfx_grid dfx_family_grid(dfx_path_family f, unsigned flags)
{
    if (flags & DFX_SF_DALE) return DFX_GRID_UNIFORM;
    for (size_t i = 0; i < sizeof family_grids / sizeof family_grids[0]; i++)
        if (family_grids[i].family == f)
            return (flags & DFX_SF_X0) ? family_grids[i].x0 : family_grids[i].grid;
    return DFX_GRID_UNIFORM;
}

/* The timesteps a diffusers scheduler evaluates at for n steps (MATH.md
 * section 7): DDIM's and DDPM's rules, or DPM-Solver's (dpm_timesteps),
 * which divide into n + 1 and drop the last; numpy's round (half to
 * even: nearbyint). */
static double schedule_timestep(const dfx_path *p, int n, int i)
{
    int N = p->n_train, d = p->dpm_timesteps;
    switch (p->spacing) {
    case DFX_SPACING_TRAILING:
        return nearbyint(N - i * ((double)N / n)) - 1.0;
    case DFX_SPACING_LINSPACE:
        if (d) return nearbyint((N - 1.0) * (n - i) / n);
        return n == 1 ? 0.0 : nearbyint((N - 1.0) * (n - 1 - i) / (n - 1));
    default: /* leading */
        return d ? (double)((n - i) * (N / (n + 1)) + p->steps_offset)
                 : (double)((n - 1 - i) * (N / n) + p->steps_offset);
    }
}

static int schedule_grid(const dfx_path *p, double t_data, int n, double *out, dfx_error *err)
{
    if (p->family != DFX_PATH_DISCRETE)
        return dfx_fail(err, "the schedule grid is the timesteps of a diffusers scheduler: it "
                             "needs a model on the discrete path (diffusers models)");
    if (n > p->n_train)
        return dfx_fail(err, "the schedule has %d timesteps, fewer than --steps %d", p->n_train,
                        n);
    for (int i = 0; i < n; i++) {
        double tau = schedule_timestep(p, n, i);
        if (tau > p->n_train - 1) tau = p->n_train - 1;
        out[i] = dfx_path_t_of_timestep(p, tau);
    }
    out[n] = t_data;
    if (!(out[n - 1] > t_data))
        return dfx_fail(err,
                        "the schedule's last timestep %.0f is not above the end point (timestep "
                        "%g): use --t-data 0 (abar = 1) or a steps_offset",
                        dfx_path_timestep(p, out[n - 1]), dfx_path_timestep(p, t_data));
    return 0;
}

int dfx_time_grid(const dfx_path *p, dfx_grid g, double rho, double shift, double t_noise,
                  double t_data, int n, double *out, dfx_error *err)
{
    if (n < 1) return dfx_fail(err, "the time grid needs at least one step");
    if (!(t_noise >= 0.0 && t_noise <= 1.0 && t_data >= 0.0 && t_data <= 1.0))
        return dfx_fail(err, "--t-noise and --t-data must lie in [0, 1]");
    int up = dfx_path_data_at_one(p);
    if (up ? !(t_data > t_noise) : !(t_data < t_noise))
        return dfx_fail(err,
                        "on the %s path data sit at t = %d: need --t-data %s --t-noise (got "
                        "t_noise = %g, t_data = %g)",
                        dfx_path_name(p->family), up, up ? ">" : "<", t_noise, t_data);
    out[0] = t_noise;
    out[n] = t_data;
    switch (g) {
    case DFX_GRID_SCHEDULE:
        if (schedule_grid(p, t_data, n, out, err)) return -1;
        break;
    case DFX_GRID_UNIFORM:
        for (int i = 1; i < n; i++) out[i] = t_noise + (t_data - t_noise) * i / (double)n;
        break;
    case DFX_GRID_KARRAS:
    case DFX_GRID_LOGSNR: {
        double l0 = dfx_path_logsnr(p, t_noise), l1 = dfx_path_logsnr(p, t_data);
        /* an interpolant's noise end (a = 0, sigma infinite): one step to
         * EDM's sigma_max, then the grid over the other n - 1 intervals */
        int first = 1;
        if (l0 == -INFINITY && isfinite(l1) && n >= 2 && -log(DFX_GRID_SIGMA_MAX) < l1) {
            l0 = -log(DFX_GRID_SIGMA_MAX);
            out[1] = dfx_path_t_of_logsnr(p, l0);
            first = 2;
        }
        if (n == 1) break; /* one step: the interval itself, nothing to space */
        if (!isfinite(l0) || !isfinite(l1))
            return dfx_fail(err,
                            "the %s grid needs a finite noise level at both ends, but on the %s "
                            "path sigma = s/a is %s at t = %g; move the end with --t-noise or "
                            "--t-data",
                            dfx_grid_name(g), dfx_path_name(p->family),
                            isfinite(l0) ? "zero" : "infinite", isfinite(l0) ? t_data : t_noise);
        if (g == DFX_GRID_KARRAS && !(rho > 0.0))
            return dfx_fail(err, "--rho must be positive");
        for (int i = first; i < n; i++) {
            double f = first == 1 ? i / (double)n : (i - 1) / (double)(n - 1), lam;
            if (g == DFX_GRID_LOGSNR) {
                lam = l0 + f * (l1 - l0);
            } else { /* sigma = exp(-lambda) */
                double a = exp(-l0 / rho), b = exp(-l1 / rho);
                lam = -rho * log(a + f * (b - a));
            }
            out[i] = dfx_path_t_of_logsnr(p, lam);
        }
        break;
    }
    case DFX_GRID_SHIFT: {
        if (!(shift > 0.0)) return dfx_fail(err, "--shift must be positive");
        /* Noise coordinate u (1 = noise end), normalised to the interval,
         * shifted by u' = k u / (1 + (k - 1) u): k > 1 spends more steps at
         * high noise (as in SD3). */
        double u0 = up ? 1.0 - t_noise : t_noise, u1 = up ? 1.0 - t_data : t_data;
        for (int i = 1; i < n; i++) {
            double v = 1.0 - i / (double)n;
            double vs = shift * v / (1.0 + (shift - 1.0) * v);
            double u = u1 + (u0 - u1) * vs;
            out[i] = up ? 1.0 - u : u;
        }
        break;
    }
    default:
        return dfx_fail(err, "unknown time grid");
    }
    for (int i = 0; i < n; i++)
        if (up ? !(out[i + 1] > out[i]) : !(out[i + 1] < out[i]))
            return dfx_fail(err,
                            "the %s grid with %d steps is not strictly monotone at step %d "
                            "(t = %.17g, %.17g): use fewer steps or another grid",
                            dfx_grid_name(g), n, i, out[i], out[i + 1]);
    return 0;
}
