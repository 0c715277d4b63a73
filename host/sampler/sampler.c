/*
 * The sampler driver: the registry, option checks, buffer planning, the
 * initial noise, the loop's shared helpers and the final denoising step.
 * Step rules live in samplers_ode.c (Runge-Kutta), samplers_em.c (em, pc),
 * samplers_ancestral.c (ddim, ddpm, DPM-Solver++) and samplers_dale.c.
 */
#include "sampler/sampler.h"
#include "core/error.h"
#include "core/names.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALL "all paths"
#define DALE "dale path only"
/* The registry, in the order `difflux samplers` lists it (d: the public
 * description, difflux.h; nfe_per_step and default_steps are 0 for an
 * adaptive sampler). */
static const sampler_def defs[] = {
    /* deterministic: the probability-flow ODE */
    {.d = {.name = "euler",
           .summary = "explicit Euler on the probability-flow ODE",
           .order = 1, .nfe_per_step = 1, .stochastic = 0, .families = ALL,
           .default_steps = 50},
     .nbuf = 2, .flags = DFX_SF_VEL, .run = dfx_run_euler},
    {.d = {.name = "heun",
           .summary = "Heun's method (explicit trapezoid, EDM Algorithm 1)",
           .order = 2, .nfe_per_step = 2, .stochastic = 0, .families = ALL,
           .default_steps = 16},
     .nbuf = 4, .flags = DFX_SF_VEL, .run = dfx_run_heun},
    {.d = {.name = "rk4",
           .summary = "classical fourth-order Runge-Kutta",
           .order = 4, .nfe_per_step = 4, .stochastic = 0, .families = ALL,
           .default_steps = 20},
     .nbuf = 6, .flags = DFX_SF_VEL, .run = dfx_run_rk4},
    {.d = {.name = "restart",
           .summary = "restart sampling: heun, re-noised K times on sigma intervals (--restart)",
           .order = 2, .nfe_per_step = 2, .stochastic = 1, .families = ALL,
           .default_steps = 18},
     .nbuf = 4, .flags = DFX_SF_VEL, .run = dfx_run_restart, .nfe = dfx_restart_nfe},
    {.d = {.name = "dopri5",
           .summary = "Dormand-Prince 5(4), adaptive per sample (--rtol/--atol)",
           .order = 5, .nfe_per_step = 0, .stochastic = 0, .families = ALL,
           .default_steps = 0},
     .nbuf = 9, .flags = DFX_SF_ADAPTIVE | DFX_SF_VEL, .run = dfx_run_dopri5},
    {.d = {.name = "ddim",
           .summary = "DDIM: exact step for a frozen x_hat; --eta > 0 adds fresh noise",
           .order = 1, .nfe_per_step = 1, .stochastic = 0, .families = ALL,
           .default_steps = 50},
     .nbuf = 3, .flags = DFX_SF_X0, .eta = 0.0, .run = dfx_run_ddim},
    {.d = {.name = "dpmpp_2m",
           .summary = "DPM-Solver++(2M): multistep in log-SNR on x_hat",
           .order = 2, .nfe_per_step = 1, .stochastic = 0, .families = ALL,
           .default_steps = 30},
     .nbuf = 4, .flags = DFX_SF_X0, .run = dfx_run_dpmpp_2m},
    {.d = {.name = "unipc",
           .summary = "UniPC: predictor-corrector multistep on x_hat (--order 1-3, --variant bh1|bh2)",
           .order = 3, .nfe_per_step = 1, .stochastic = 0, .families = ALL,
           .default_steps = 20},
     .nbuf = 6, .flags = DFX_SF_X0, .variants = {"bh2", "bh1"}, .run = dfx_run_unipc},
    {.d = {.name = "deis",
           .summary = "DEIS: multistep exponential integrator on z_hat (--order 1-3, --variant tab|logrho)",
           .order = 3, .nfe_per_step = 1, .stochastic = 0, .families = ALL,
           .default_steps = 20},
     .nbuf = 5, .flags = DFX_SF_X0, .variants = {"tab", "logrho"}, .run = dfx_run_deis},
    /* stochastic */
    {.d = {.name = "em",
           .summary = "Euler-Maruyama of dx = [v + eps S] dtau + sqrt(2 eps) dW (--noise, --eps0)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = ALL,
           .default_steps = 500},
     .nbuf = 2, .flags = DFX_SF_SCORE | DFX_SF_VEL | DFX_SF_EPS, .run = dfx_run_em},
    {.d = {.name = "ddpm",
           .summary = "ancestral sampling from the posterior q(x_t' | x_t, x_hat) (DDPM)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = ALL,
           .default_steps = 500},
     .nbuf = 3, .flags = DFX_SF_X0, .eta = 1.0, .run = dfx_run_ddpm},
    {.d = {.name = "euler_ancestral",
           .summary = "Euler step to sigma_down plus fresh noise sigma_up (--eta, 1)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = ALL,
           .default_steps = 100},
     .nbuf = 3, .flags = DFX_SF_X0, .eta = 1.0, .run = dfx_run_ddim},
    {.d = {.name = "dpmpp_2m_sde",
           .summary = "DPM-Solver++(2M) SDE, midpoint variant (--eta, 1)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = ALL,
           .default_steps = 50},
     .nbuf = 4, .flags = DFX_SF_X0, .eta = 1.0, .run = dfx_run_dpmpp_2m_sde},
    {.d = {.name = "dpmpp_3m_sde",
           .summary = "DPM-Solver++(3M) SDE, as k-diffusion's (--eta, 1; eta 0: 3M ODE)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = ALL,
           .default_steps = 50},
     .nbuf = 5, .flags = DFX_SF_X0, .eta = 1.0, .run = dfx_run_dpmpp_3m_sde},
    {.d = {.name = "pc",
           .summary = "predictor-corrector: em predictor + Langevin corrector at --snr",
           .order = 1, .nfe_per_step = 2, .stochastic = 1, .families = ALL,
           .default_steps = 500},
     .nbuf = 3, .flags = DFX_SF_SCORE | DFX_SF_VEL | DFX_SF_EPS, .check = dfx_check_pc,
     .run = dfx_run_pc, .nfe = dfx_pc_nfe},
    /* multiplicative (Dale) */
    {.d = {.name = "adls",
           .summary = "Dale: sign-preserving Euler-Maruyama in log space (--recipe)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = DALE,
           .default_steps = 1000},
     .nbuf = 2, .flags = DFX_SF_DALE | DFX_SF_SCORE, .run = dfx_run_adls, .nfe = dfx_dale_nfe},
    {.d = {.name = "aums",
           .summary = "Dale: ambient Euler-Maruyama, state-dependent diffusion (--recipe)",
           .order = 1, .nfe_per_step = 1, .stochastic = 1, .families = DALE,
           .default_steps = 1000},
     .nbuf = 2, .flags = DFX_SF_DALE | DFX_SF_AMBIENT | DFX_SF_SCORE, .run = dfx_run_aums,
     .nfe = dfx_dale_nfe},
};
#define N_DEFS ((int)(sizeof defs / sizeof defs[0]))

static dfx_sampler_desc descs[N_DEFS];

static const sampler_def *find_def(const char *name)
{
    for (int i = 0; i < N_DEFS; i++)
        if (name && strcmp(name, defs[i].d.name) == 0) return &defs[i];
    return NULL;
}

/* Buffers of a run: the sampler's own, at least the three of the start's
 * Langevin steps where there are any (start_langevin -1: there may be) */
static int sampler_nbuf(const sampler_def *def, int start_langevin)
{
    return start_langevin != 0 && def->nbuf < 3 ? 3 : def->nbuf;
}

int dfx_samplers(const dfx_sampler_desc **list)
{
    for (int i = 0; i < N_DEFS; i++) descs[i] = defs[i].d;
    *list = descs;
    return N_DEFS;
}

static const char *const noise_names[DFX_NOISE_COUNT] = {"diffusion", "const", "s", "s2"};

const char *dfx_noise_name(dfx_noise n)
{
    return dfx_enum_name(noise_names, DFX_NOISE_COUNT, (int)n);
}

int dfx_noise_parse(const char *name, dfx_noise *n)
{
    int i = dfx_enum_parse(noise_names, DFX_NOISE_COUNT, name);
    if (i >= 0) *n = (dfx_noise)i;
    return i >= 0 ? 0 : -1;
}

double dfx_noise_eps(const dfx_path *p, dfx_noise kind, double eps0, double t)
{
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    switch (kind) {
    case DFX_NOISE_CONST:
        return eps0;
    case DFX_NOISE_S:
        return eps0 * c.s;
    case DFX_NOISE_S2:
        return eps0 * c.s * c.s;
    case DFX_NOISE_DIFFUSION: {
        /* g^2 / 2 of the forward SDE = s^2 |d log(s/a)/dt| */
        double r = c.ds / c.s - c.da / c.a;
        return eps0 * c.s * c.s * fabs(r);
    }
    default:
        return NAN;
    }
}

void dfx_sample_opts_default(dfx_sample_opts *o, const dfx_model *m)
{
    memset(o, 0, sizeof *o);
    /* the sampler of a diffusers model's scheduler, else heun */
    o->sampler = (m && m->cfg.sampler[0]) ? m->cfg.sampler : "heun";
    o->steps = 0; /* the sampler's default */
    o->eta = NAN;
    o->churn = 0.0;
    o->s_tmin = 0.0;
    o->s_tmax = INFINITY;
    o->s_noise = 1.0;
    o->snr = DFX_SNR_DEFAULT;
    o->corrector_steps = 1;
    o->start_langevin = -1;
    o->start_snr = DFX_SNR_DEFAULT;
    o->recipe = DFX_RECIPE_PRINCIPLED;
    o->delta = NAN;
    o->anneal = NAN;
    o->seed = 0;
    o->grid = DFX_GRID_AUTO;
    o->rho = 7.0;
    o->shift = 3.0;
    o->t_noise = NAN;
    o->t_data = NAN;
    o->rtol = 1e-4;
    o->atol = 1e-4;
    o->max_nfe = 100000;
    o->eps0 = 1.0;
    o->denoise = 1;
    /* The score blows up at the data end of an interpolant, so its noise
     * must vanish there; diffusions get their own reverse SDE. */
    o->noise = (m && dfx_path_data_at_one(&m->cfg.path)) ? DFX_NOISE_S : DFX_NOISE_DIFFUSION;
    /* a diffusers schedule ends where its scheduler does, without a final
     * x_hat step (MATH.md section 7) */
    if (m && m->cfg.path.family == DFX_PATH_DISCRETE) o->denoise = -1; /* decided below */
}

dfx_grid dfx_default_grid(const dfx_model *m, const char *sampler)
{
    const sampler_def *def = find_def(sampler);
    return def && m ? dfx_family_grid(m->cfg.path.family, def->flags) : DFX_GRID_AUTO;
}

dfx_grid dfx_sampler_grid_kind(const dfx_sampler *s)
{
    return (s->def->flags & DFX_SF_ADAPTIVE) ? DFX_GRID_AUTO : s->o.grid;
}

const double *dfx_sampler_grid(const dfx_sampler *s, int *n)
{
    int adaptive = (s->def->flags & DFX_SF_ADAPTIVE) != 0;
    if (n) *n = adaptive ? 0 : s->n;
    return adaptive ? NULL : s->grid;
}

void dfx_sampler_free(dfx_sampler *s)
{
    if (!s) return;
    dfx_backend *be = s->be;
    if (s->x) be->ops->free(be, s->x);
    for (int i = 0; i < DFX_SAMPLER_MAX_BUFS; i++)
        if (s->buf[i]) be->ops->free(be, s->buf[i]);
    free(s->grid);
    free(s->t);
    free(s->coef);
    free(s->nfe);
    free(s->hostx);
    free(s);
}

static const char *model_name(const dfx_model *m)
{
    return m->file[0] ? m->file : "(in memory)";
}

/* Fail early, before any work, where a conversion the sampler needs is
 * singular on its grid. */
static int check_grid(dfx_sampler *s, dfx_error *err)
{
    const dfx_model *m = s->m;
    dfx_pred native = m->native;
    unsigned f = s->def->flags;
    /* one-evaluation rules never evaluate at the last grid point */
    int need_end = s->def->d.nfe_per_step != 1;
    for (int i = 0; i <= s->n; i++) {
        double t = s->grid[i], A, B, C;
        if (i == s->n && !need_end) break;
        if (((f & DFX_SF_VEL) &&
             dfx_model_convert_coefs(m, &t, 1, native, DFX_PRED_VELOCITY, &A, &B, &C, err)) ||
            ((f & DFX_SF_SCORE) &&
             dfx_model_convert_coefs(m, &t, 1, native, DFX_PRED_SCORE, &A, &B, &C, err)) ||
            ((f & DFX_SF_X0) &&
             (dfx_model_convert_coefs(m, &t, 1, native, DFX_PRED_DATA, &A, &B, &C, err) ||
              dfx_model_convert_coefs(m, &t, 1, native, DFX_PRED_EPS, &A, &B, &C, err))))
            return dfx_fail_prefix(err, "sampler %s", s->def->d.name);
        if (i < s->n && (f & DFX_SF_EPS)) {
            double e = dfx_noise_eps(&m->cfg.path, s->o.noise, s->o.eps0, t);
            if (!isfinite(e) || e < 0.0)
                return dfx_fail(err,
                                "--noise %s is %g at t = %g on the %s path; choose another "
                                "schedule (--noise s is safe everywhere) or move --t-noise",
                                dfx_noise_name(s->o.noise), e, t,
                                dfx_path_name(m->cfg.path.family));
        }
    }
    if (s->o.denoise) {
        double t = s->t_data, A, B, C;
        if (dfx_model_convert_coefs(m, &t, 1, native, DFX_PRED_DATA, &A, &B, &C, err))
            return dfx_fail_prefix(err, "final denoising step (--no-denoise skips it)");
    }
    return 0;
}

/* Evaluations per sample of the sampler's steps, without the start's
 * Langevin steps and the final denoising; -1 for adaptive samplers. */
static long run_nfe(const dfx_sampler *s)
{
    if (s->def->flags & DFX_SF_ADAPTIVE) return -1;
    return s->def->nfe ? s->def->nfe(s) : (long)s->n * s->def->d.nfe_per_step;
}

dfx_sampler *dfx_sampler_create(dfx_model *m, const dfx_sample_opts *o, int max_rows,
                                dfx_error *err)
{
    const sampler_def *def = find_def(o->sampler);
    if (!def) {
        dfx_fail(err, "unknown sampler '%s' (`difflux samplers` lists them)",
                 o->sampler ? o->sampler : "");
        return NULL;
    }
    if (max_rows < 1) {
        dfx_fail(err, "batch size must be at least 1");
        return NULL;
    }
    if (dfx_model_generative(m, err)) return NULL;
    const int adaptive = (def->flags & DFX_SF_ADAPTIVE) != 0;
    const int steps = o->steps ? o->steps : def->d.default_steps;
    if (!adaptive && (steps < 1 || steps > 1000000)) {
        dfx_fail(err, "--steps must be in [1, 1000000] (got %d)", o->steps);
        return NULL;
    }
    if (adaptive && !(o->rtol > 0.0 && o->atol > 0.0 && o->max_nfe > 0)) {
        dfx_fail(err, "--rtol, --atol and --max-nfe must be positive");
        return NULL;
    }
    if ((def->flags & DFX_SF_EPS) && !(o->eps0 >= 0.0 && isfinite(o->eps0))) {
        dfx_fail(err, "--eps0 must be a finite number >= 0");
        return NULL;
    }
    double eta = isnan(o->eta) ? def->eta : o->eta;
    if (!(eta >= 0.0 && eta <= 1e6)) {
        dfx_fail(err, "--eta must be a number >= 0 (got %g)", o->eta);
        return NULL;
    }
    if (def->check && def->check(o, err)) return NULL;
    if (!(o->churn >= 0.0 && isfinite(o->churn)) || !(o->s_noise >= 0.0 && isfinite(o->s_noise)) ||
        !(o->s_tmin >= 0.0) || !(o->s_tmax >= o->s_tmin)) {
        dfx_fail(err, "need --churn >= 0, --s-noise >= 0 and 0 <= --s-tmin <= --s-tmax");
        return NULL;
    }
    for (int r = 0; r < o->restart_n; r++) {
        const double *iv = o->restart[r];
        if (o->restart_n > DFX_RESTART_MAX || !(iv[0] > 0.0) || !(iv[1] > iv[0]) ||
            !isfinite(iv[1]) || !(iv[2] >= 1 && iv[2] <= 100) ||
            !(iv[3] >= 1 && iv[3] <= DFX_RESTART_STEPS)) {
            dfx_fail(err, "--restart interval %d: need 0 < sigma_min < sigma_max, 1 <= K <= 100, "
                          "1 <= N <= %d",
                     r + 1, DFX_RESTART_STEPS);
            return NULL;
        }
    }
    /* the model's own sampler takes the model's --order and --variant by default */
    const int own = m->cfg.sampler[0] && strcmp(m->cfg.sampler, def->d.name) == 0;
    const int order = o->order ? o->order : own ? m->cfg.sampler_order : 0;
    const char *vname = o->variant ? o->variant
                        : own && m->cfg.sampler_variant[0] ? m->cfg.sampler_variant
                                                          : NULL;
    const int multistep = def->run == dfx_run_unipc || def->run == dfx_run_deis;
    if (order < 0 || order > 3 || (order && !multistep)) {
        dfx_fail(err, "--order (1..3) belongs to unipc and deis, not %s", def->d.name);
        return NULL;
    }
    int variant = 0;
    if (vname) {
        if (!def->variants[0]) {
            dfx_fail(err, "--variant belongs to unipc and deis, not %s", def->d.name);
            return NULL;
        }
        while (variant < 3 && def->variants[variant] &&
               strcmp(def->variants[variant], vname) != 0)
            variant++;
        if (variant == 3 || !def->variants[variant]) {
            dfx_fail(err, "unknown --variant '%s' for %s (%s%s%s)", vname, def->d.name,
                     def->variants[0], def->variants[1] ? ", " : "",
                     def->variants[1] ? def->variants[1] : "");
            return NULL;
        }
    }
    if (o->restart_n > 0 && def->run != dfx_run_restart) {
        dfx_fail(err, "--restart belongs to the restart sampler, not %s", def->d.name);
        return NULL;
    }
    if (o->churn > 0.0 && def->run != dfx_run_euler && def->run != dfx_run_heun &&
        def->run != dfx_run_rk4) {
        dfx_fail(err, "--churn applies to euler, heun and rk4 (EDM's stochastic sampler), not %s",
                 def->d.name);
        return NULL;
    }
    if ((def->flags & DFX_SF_DALE) && m->cfg.path.family != DFX_PATH_DALE) {
        dfx_fail(err,
                 "sampler %s applies to multiplicative models on the dale path; this model is "
                 "on the %s path (see `difflux samplers`)",
                 def->d.name, dfx_path_name(m->cfg.path.family));
        return NULL;
    }
    if (o->recipe != DFX_RECIPE_PRINCIPLED && !(def->flags & DFX_SF_DALE)) {
        dfx_fail(err, "--recipe applies to the multiplicative samplers adls and aums only");
        return NULL;
    }
    dfx_sampler *s = dfx_alloc(1, sizeof *s, "sampler", err);
    if (!s) return NULL;
    s->m = m;
    s->be = m->be;
    s->o = *o;
    s->def = def;
    s->max_rows = max_rows;
    s->dim = m->dim;
    s->eta = eta;
    s->variant = variant;
    s->o.order = order;
    /* the Dale paper's tuning for the model's data set (MATH.md section 3):
     * the defaults of the dale samplers, and the start of --start paper */
    if (m->cfg.path.family == DFX_PATH_DALE) s->paper = dfx_dale_paper_find(m->cfg.paper_recipe);
    if (def->flags & DFX_SF_DALE) {
        if (!s->paper) {
            dfx_fail(err, "%s: paper_recipe '%s' is not one the paper tuned (%s)",
                     m->file[0] ? m->file : "model", m->cfg.paper_recipe, dfx_dale_paper_names());
            goto fail;
        }
        const int aums = (def->flags & DFX_SF_AMBIENT) != 0;
        if (isnan(o->delta)) s->o.delta = aums ? s->paper->aums_delta : s->paper->adls_delta;
        if (o->inner == 0) s->o.inner = aums ? s->paper->aums_inner : s->paper->adls_inner;
        if (isnan(o->anneal)) s->o.anneal = aums ? s->paper->aums_anneal : s->paper->adls_anneal;
        /* the paper stops at its last label: no final denoising step */
        if (o->recipe == DFX_RECIPE_PAPER) s->o.denoise = 0;
        if (!(s->o.delta > 0.0 && s->o.delta < 1.0) || s->o.inner < 1 || s->o.inner > 1000 ||
            !(s->o.anneal > 0.0 && s->o.anneal <= 1.0)) {
            dfx_fail(err, "need --delta in (0, 1), --inner in [1, 1000], --anneal in (0, 1]");
            goto fail;
        }
    }
    /* where sampling starts */
    s->start = o->path_start ? DFX_START_PATH : o->start;
    if (s->start == DFX_START_AUTO)
        s->start = s->paper && o->recipe == DFX_RECIPE_PAPER        ? DFX_START_PAPER
                   : m->cfg.has_start || m->vt->sample_marginal ? DFX_START_FITTED
                                                                : DFX_START_PATH;
    if (s->start < DFX_START_FITTED || s->start > DFX_START_PAPER) {
        dfx_fail(err, "unknown start %d", s->start);
        goto fail;
    }
    if (s->start == DFX_START_FITTED && !m->cfg.has_start && !m->vt->sample_marginal) {
        dfx_fail(err, "--start fitted: %s has no fitted start distribution (--start path)",
                 m->file[0] ? m->file : "the model");
        goto fail;
    }
    if (s->start == DFX_START_PAPER && !s->paper) {
        dfx_fail(err, "--start paper is the Dale paper's log-normal start, for models on the dale "
                      "path (%s)",
                 m->cfg.path.family == DFX_PATH_DALE ? "unknown paper_recipe" : "this one is not");
        goto fail;
    }
    /* Langevin steps at the start: by default only on the fitted Gaussian
     * of a dale model, whose noise end is far from Gaussian */
    s->start_langevin = o->start_langevin;
    if (s->start_langevin < 0)
        s->start_langevin = m->cfg.path.family == DFX_PATH_DALE && s->start == DFX_START_FITTED &&
                                    m->cfg.has_start && !m->vt->sample_marginal
                                ? DFX_START_LANGEVIN_DALE
                                : 0;
    if (s->start_langevin > DFX_START_LANGEVIN_MAX || o->start_langevin < -1 ||
        (s->start_langevin > 0 && !(o->start_snr > 0.0 && isfinite(o->start_snr)))) {
        dfx_fail(err, "--start-langevin takes 0..%d steps and --start-snr a number > 0",
                 DFX_START_LANGEVIN_MAX);
        goto fail;
    }
    double tn, td;
    dfx_path_default_range(&m->cfg.path, &tn, &td);
    const int discrete = m->cfg.path.family == DFX_PATH_DISCRETE;
    /* abar = 1 is singular for every prediction but x_hat: samplers of
     * other fields end at timestep 0 and take x_hat there */
    int at_tau0 = 0;
    if (discrete && td == 0.0 && !(def->flags & DFX_SF_X0)) {
        td = dfx_path_t_of_timestep(&m->cfg.path, 0.0);
        at_tau0 = isnan(o->t_data);
    }
    if (s->o.denoise < 0) s->o.denoise = at_tau0;
    s->t_noise = isnan(o->t_noise) ? tn : o->t_noise;
    s->t_data = isnan(o->t_data) ? td : o->t_data;
    if (s->start == DFX_START_FITTED && m->cfg.has_start && !m->vt->sample_marginal &&
        s->t_noise != tn) {
        dfx_fail(err,
                 "%s: the model's fitted start distribution is for t = %g, not --t-noise %g "
                 "(add --path-start to start from the path's N(m, s^2) there)",
                 m->file[0] ? m->file : "model", tn, s->t_noise);
        goto fail;
    }
    s->n = adaptive ? 1 : steps;
    if (s->o.grid == DFX_GRID_AUTO) s->o.grid = dfx_family_grid(m->cfg.path.family, def->flags);
    s->grid = dfx_alloc((size_t)s->n + 1, sizeof *s->grid, "time grid", err);
    if (!s->grid) goto fail;
    if (adaptive) {
        /* the uniform grid of one step only checks the interval */
        if (dfx_time_grid(&m->cfg.path, DFX_GRID_UNIFORM, 7, 1, s->t_noise, s->t_data, 1,
                          s->grid, err))
            goto fail;
    } else if (dfx_time_grid(&m->cfg.path, s->o.grid, o->rho, o->shift, s->t_noise, s->t_data,
                             s->n, s->grid, err)) {
        goto fail;
    }
    if (s->o.grid == DFX_GRID_SCHEDULE) s->t_noise = s->grid[0]; /* the first timestep */
    if (o->init && o->init_rows < 1) {
        dfx_fail(err, "--init: no start noise given");
        goto fail;
    }
    if (check_grid(s, err) || dfx_check_stability(s, err)) goto fail;
    size_t bytes = (size_t)max_rows * s->dim * sizeof(float);
    s->x = dfx_be_alloc(s->be, bytes, "sampler state", err);
    if (!s->x) goto oom;
    for (int i = 0; i < sampler_nbuf(def, s->start_langevin); i++)
        if (!(s->buf[i] = dfx_be_alloc(s->be, bytes, "sampler buffers", err))) goto oom;
    s->t = dfx_alloc((size_t)max_rows, sizeof *s->t, "sampler", err);
    s->coef = dfx_alloc((size_t)(DFX_LINCOMB_MAX + 1) * max_rows, sizeof *s->coef, "sampler",
                        err);
    s->nfe = dfx_alloc((size_t)max_rows, sizeof *s->nfe, "sampler", err);
    if (!s->t || !s->coef || !s->nfe) goto oom;
    if (dfx_model_reserve(m, max_rows, err)) goto oom;
    const long steps_nfe = run_nfe(s);
    s->main_nfe = steps_nfe < 0 ? 100.0 : (double)steps_nfe; /* adaptive: a guess */
    return s;
oom: /* name the model and the batch: a smaller --batch needs less */
    dfx_fail_prefix(err, "model %s, %s sampler, batch of %d (about %.3g MB)", model_name(m),
                    def->d.name, max_rows, (double)dfx_sampler_bytes(m, o, max_rows) / 1e6);
fail:
    dfx_sampler_free(s);
    return NULL;
}

/* NaN or Inf from the very first evaluation of a run, on the finite start
 * state, is the model's own fault, not the integration's. (Later
 * evaluations are not checked: dopri5 rejects a trial step whose
 * evaluation overflowed, and the state check after each step covers the
 * others.) */
static int first_eval_check(dfx_sampler *s, double t, const float *x, const float *out,
                            dfx_error *err)
{
    size_t bad = 0, badx = 0, n = (size_t)s->rows * s->dim;
    if (s->be->ops->count_nonfinite(s->be, out, n, &bad, err)) return -1;
    if (!bad) return 0;
    if (s->be->ops->count_nonfinite(s->be, x, n, &badx, err)) return -1;
    unsigned long long a = (unsigned long long)s->first, b = a + (unsigned long long)s->rows - 1;
    if (badx)
        return dfx_fail(err,
                        "model %s: the start state of samples %llu..%llu holds %zu NaN/Inf "
                        "values (the model's fitted start distribution is broken; --path-start "
                        "starts from the path's Gaussian instead)",
                        model_name(s->m), a, b, badx);
    return dfx_fail(err,
                    "model %s itself produces NaN/Inf: %zu non-finite values at its first "
                    "evaluation (t = %g, samples %llu..%llu, finite input); more steps will not "
                    "help: the file's weights or configuration are at fault",
                    model_name(s->m), bad, t, a, b);
}

int dfx_s_eval_rows(dfx_sampler *s, const double *t, const float *x, dfx_pred want, float *out,
                    const int *active, dfx_error *err)
{
    for (int r = 0; r < s->rows; r++) s->nfe[r] += active ? (active[r] != 0) : 1;
    if (dfx_model_eval(s->m, t, x, want, out, s->rows, err)) return -1;
    if (s->evals++ == 0) return first_eval_check(s, t[0], x, out, err);
    return 0;
}

int dfx_s_eval(dfx_sampler *s, double t, const float *x, dfx_pred want, float *out,
               dfx_error *err)
{
    for (int r = 0; r < s->rows; r++) s->t[r] = t;
    return dfx_s_eval_rows(s, s->t, x, want, out, NULL, err);
}

void dfx_s_lincomb(dfx_sampler *s, float *out, int k, const float *const *x, const double *c,
                   double c0)
{
    int R = s->rows;
    double *cf = s->coef, *b = s->coef + (size_t)DFX_LINCOMB_MAX * R;
    for (int i = 0; i < k; i++)
        for (int r = 0; r < R; r++) cf[(size_t)i * R + r] = c[i];
    for (int r = 0; r < R; r++) b[r] = c0;
    s->be->ops->lincomb(s->be, out, k, x, cf, c0 != 0.0 ? b : NULL, R, s->dim);
}

int dfx_s_check(dfx_sampler *s, int step, double t, dfx_error *err)
{
    size_t bad = 0;
    if (s->be->ops->count_nonfinite(s->be, s->x, (size_t)s->rows * s->dim, &bad, err)) return -1;
    if (!bad) return 0;
    char where[96];
    if (step < 0)
        snprintf(where, sizeof where, "at the end of the run");
    else if (s->def->flags & DFX_SF_ADAPTIVE)
        snprintf(where, sizeof where, "after adaptive step %d", step);
    else
        snprintf(where, sizeof where, "after step %d of %d", step, s->n);
    return dfx_fail(err,
                    "model %s, sampler %s: %zu NaN/Inf values in samples %llu..%llu %s (t = %g); "
                    "the model's first evaluation was finite, so the integration diverged: try "
                    "more steps, another grid or a shorter interval",
                    model_name(s->m), s->def->d.name, bad, (unsigned long long)s->first,
                    (unsigned long long)(s->first + (uint64_t)s->rows - 1), where, t);
}

static void report(dfx_sampler *s, int step, int steps, double t, double evals)
{
    double total = s->start_langevin + s->main_nfe;
    dfx_progress p = {step, steps, t, total > 0.0 ? fmin(1.0, evals / total) : 1.0};
    s->o.progress(s->o.progress_ctx, &p);
}

void dfx_s_progress(dfx_sampler *s, int step, int steps, double t)
{
    if (!s->o.progress) return;
    report(s, step, steps, t, s->start_langevin + s->main_nfe * step / (steps > 0 ? steps : 1));
}

void dfx_s_progress_start(dfx_sampler *s, int done)
{
    if (!s->o.progress) return;
    report(s, 0, s->n, s->t_noise, done);
}

int dfx_sampler_run(dfx_sampler *s, uint64_t first_index, int rows, float *out,
                    dfx_sample_stats *stats, dfx_error *err)
{
    if (rows < 1 || rows > s->max_rows)
        return dfx_fail(err, "batch of %d samples, but the sampler was planned for 1..%d", rows,
                        s->max_rows);
    if (first_index > UINT64_MAX - (uint64_t)(rows - 1))
        return dfx_fail(err,
                        "samples %llu + %d run past the last sample index 2^64 - 1 (the indices "
                        "would wrap around)",
                        (unsigned long long)first_index, rows);
    dfx_sample_stats local;
    memset(&local, 0, sizeof local);
    s->evals = 0;
    s->first = first_index;
    s->rows = rows;
    s->m->first_index = first_index;
    s->st = &local;
    memset(s->nfe, 0, (size_t)rows * sizeof *s->nfe);
    /* x at the noise end: m + s z (or the model's fitted start distribution,
     * per value or with full covariance), z from draw 0 of the initial stream */
    const dfx_model_config *mc = &s->m->cfg;
    dfx_coef c;
    dfx_path_eval(&mc->path, s->t_noise, &c);
    double mean = c.m, sd = c.s;
    if (mc->path.family == DFX_PATH_DISCRETE) { /* diffusers' init_noise_sigma */
        mean = 0.0;
        sd = 1.0;
    }
    const int fitted = s->start == DFX_START_FITTED;
    if (fitted && mc->has_start) {
        mean = mc->start_mean;
        sd = mc->start_std;
    }
    if (s->start == DFX_START_PAPER) { /* log x ~ N(mean, std^2) per value */
        mean = s->paper->start_mean;
        sd = s->paper->start_std;
    }
    dfx_backend *be = s->be;
    size_t n = (size_t)rows * s->dim;
    if (s->o.init) { /* the caller's start noise instead of the draws */
        if (first_index + (uint64_t)rows > (uint64_t)s->o.init_rows)
            return dfx_fail(err, "--init holds start noise for %ld samples, not for samples "
                                 "%llu..%llu",
                            s->o.init_rows, (unsigned long long)first_index,
                            (unsigned long long)(first_index + rows - 1));
        float *z = s->m->pred;
        if (be->ops->upload(be, z, s->o.init + first_index * s->dim, n * sizeof(float), err))
            return -1;
        if (fitted && s->m->start_scale) {
            be->ops->linear(be, s->x, z, s->m->start_scale, s->m->start_mean, rows,
                            (int)s->dim, (int)s->dim, 0);
        } else {
            const float *xs[1] = {z};
            double cs[1] = {sd};
            dfx_s_lincomb(s, s->x, 1, xs, cs, mean);
        }
    } else if (fitted && s->m->vt->sample_marginal) {
        /* analytic models know p_t exactly */
        if (s->m->vt->sample_marginal(s->m, s->t_noise, s->o.seed, first_index, rows,
                                      DFX_STREAM_INIT, s->x, err))
            return -1;
    } else if (fitted && s->m->start_scale) {
        /* the fitted Gaussian with full covariance: x = mean + scale z */
        float *z = s->m->pred;
        be->ops->normal(be, z, s->o.seed, first_index, rows, s->dim, 0, DFX_STREAM_INIT);
        be->ops->linear(be, s->x, z, s->m->start_scale, s->m->start_mean, rows, (int)s->dim,
                        (int)s->dim, 0);
    } else {
        be->ops->normal(be, s->x, s->o.seed, first_index, rows, s->dim, 0, DFX_STREAM_INIT);
        const float *xs[1] = {s->x};
        double cs[1] = {sd};
        dfx_s_lincomb(s, s->x, 1, xs, cs, mean);
    }
    const int ambient = (s->def->flags & DFX_SF_AMBIENT) != 0;
    if (dfx_start_langevin(s, err)) return -1;
    if (ambient) be->ops->unary(be, s->x, s->x, n, DFX_FN_EXP);
    if (s->def->run(s, err)) return -1;
    /* log-space models: the state is y = log x, except for ambient samplers */
    if (ambient && s->o.denoise) {
        be->ops->unary(be, s->x, s->x, n, DFX_FN_LOG);
        if (dfx_s_check(s, -1, s->t_data, err))
            return dfx_fail_prefix(err, "%s produced values <= 0 (adls keeps signs)",
                                   s->def->d.name);
    }
    if (s->o.denoise) {
        float *tmp = s->buf[0];
        if (dfx_s_eval(s, s->t_data, s->x, DFX_PRED_DATA, tmp, err)) return -1;
        const float *ts[1] = {tmp};
        double one[1] = {1.0};
        dfx_s_lincomb(s, s->x, 1, ts, one, 0.0);
        if (dfx_s_check(s, -1, s->t_data, err)) return dfx_fail_prefix(err, "denoising");
    }
    if (s->m->logspace && (s->o.denoise || !ambient)) {
        be->ops->unary(be, s->x, s->x, n, DFX_FN_EXP);
        if (dfx_s_check(s, -1, s->t_data, err)) return dfx_fail_prefix(err, "exp(y)");
    }
    if (s->be->ops->download(s->be, out, s->x, (size_t)rows * s->dim * sizeof(float), err))
        return -1;
    /* values far outside the data range (more than its width beyond
     * either end), before the paper recipe's clamp */
    {
        const double w = mc->range_hi - mc->range_lo;
        const double lo = mc->range_lo - w, hi = mc->range_hi + w;
        for (size_t k = 0; k < n; k++) {
            double v = out[k];
            if (!(v >= lo && v <= hi)) {
                double a = isfinite(v) ? fabs(v) : INFINITY;
                local.outside++;
                if (a > local.outside_max) local.outside_max = a;
            }
        }
    }
    if (s->paper && s->o.recipe == DFX_RECIPE_PAPER) {
        /* the paper's output: clamped to the data range (aums may leave the
         * positive reals; the count says how often) */
        const float lo = (float)mc->range_lo, hi = (float)mc->range_hi;
        for (size_t k = 0; k < n; k++) {
            float v = out[k];
            if (!(v >= lo && v <= hi)) {
                local.clamped++;
                out[k] = v > hi ? hi : lo;
            }
        }
    }
    long mx = 0;
    double sum = 0.0;
    for (int r = 0; r < rows; r++) {
        if (s->nfe[r] > mx) mx = s->nfe[r];
        sum += (double)s->nfe[r];
    }
    local.nfe = mx;
    local.nfe_mean = sum / rows;
    if (s->def->flags & DFX_SF_ADAPTIVE)
        s->main_nfe = fmax(1.0, local.nfe_mean - s->start_langevin - (s->o.denoise ? 1 : 0));
    if (stats) *stats = local;
    return 0;
}

long dfx_sampler_nfe(const dfx_sampler *s)
{
    long n = run_nfe(s);
    return n < 0 ? -1 : s->start_langevin + n + (s->o.denoise ? 1 : 0);
}

int dfx_sampler_start_langevin(const dfx_sampler *s)
{
    return s->start_langevin;
}

int dfx_s_conv(const dfx_sampler *s, double t, dfx_pred from, dfx_pred to, double *A,
               double *B, double *C, dfx_error *err)
{
    dfx_coef c;
    dfx_path_eval(&s->m->cfg.path, t, &c);
    if (dfx_convert_coefs(&c, from, to, A, B, C, err))
        return dfx_fail_prefix(err, "sampler %s at t = %g", s->def->d.name, t);
    return 0;
}

int dfx_s_xhat_post_on(const dfx_sampler *s)
{
    return s->m->cfg.clip > 0.0 || s->m->cfg.thr_ratio > 0.0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* diffusers' clip_sample (clamp to [-clip, clip]) and dynamic thresholding
 * (Saharia et al. 2022: q = the thr_ratio quantile of |x_hat| per sample,
 * linearly interpolated as torch.quantile, clamped to [1, thr_max]; x_hat =
 * clamp(x_hat, -q, q) / q), on the host. */
int dfx_s_xhat_post(dfx_sampler *s, float *X, dfx_error *err)
{
    const dfx_model_config *c = &s->m->cfg;
    size_t n = (size_t)s->rows * s->dim, D = s->dim;
    if (!s->hostx) {
        s->hostx = dfx_alloc((size_t)s->max_rows * D * 2, sizeof(float), "x_hat", err);
        if (!s->hostx) return -1;
    }
    float *h = s->hostx, *srt = s->hostx + (size_t)s->max_rows * D;
    if (s->be->ops->download(s->be, h, X, n * sizeof(float), err)) return -1;
    for (int r = 0; r < s->rows; r++) {
        float *x = h + (size_t)r * D;
        double lim = c->clip > 0.0 ? c->clip : INFINITY, div = 1.0;
        if (c->thr_ratio > 0.0) {
            for (size_t j = 0; j < D; j++) srt[j] = fabsf(x[j]);
            qsort(srt, D, sizeof *srt, cmp_float);
            double pos = c->thr_ratio * (double)(D - 1), lo = floor(pos);
            size_t k = (size_t)lo;
            double q = srt[k] + (k + 1 < D ? (pos - lo) * ((double)srt[k + 1] - srt[k]) : 0.0);
            q = fmin(fmax(q, 1.0), c->thr_max);
            lim = q;
            div = q;
        }
        for (size_t j = 0; j < D; j++)
            x[j] = (float)(fmin(fmax((double)x[j], -lim), lim) / div);
    }
    return s->be->ops->upload(s->be, X, h, n * sizeof(float), err);
}

int dfx_s_xhat(dfx_sampler *s, double t, float *P, float *X, dfx_error *err)
{
    double Ad, Bd, Cd;
    if (dfx_s_conv(s, t, s->m->native, DFX_PRED_DATA, &Ad, &Bd, &Cd, err) ||
        dfx_s_eval(s, t, s->x, s->m->native, P, err))
        return -1;
    const float *xp[2] = {s->x, P};
    double cp[2] = {Ad, Bd};
    dfx_s_lincomb(s, X, 2, xp, cp, Cd);
    return dfx_s_xhat_post_on(s) ? dfx_s_xhat_post(s, X, err) : 0;
}

void dfx_s_noise(dfx_sampler *s, float *z, uint32_t draw, uint32_t stream)
{
    s->be->ops->normal(s->be, z, s->o.seed, s->first, s->rows, s->dim, draw, stream);
}

size_t dfx_sampler_bytes(const dfx_model *m, const dfx_sample_opts *o, int rows)
{
    const sampler_def *def = o ? find_def(o->sampler) : NULL;
    /* unknown: the most any needs; the start's Langevin steps: at most */
    int nbuf = def ? sampler_nbuf(def, o->start_langevin) : DFX_SAMPLER_MAX_BUFS - 1;
    if (rows < 1) rows = 1;
    size_t state = (size_t)(1 + nbuf) * (size_t)rows * m->dim * sizeof(float);
    size_t host = (size_t)rows * (sizeof(double) * (DFX_LINCOMB_MAX + 2) + sizeof(long));
    return state + host + dfx_model_scratch_bytes(m, rows);
}
