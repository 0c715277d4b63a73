/* Sampling options, set-up and split draws shared by sample, eval and sweep. */
#define _POSIX_C_SOURCE 200809L
#include "draw.h"
#include "core/error.h"
#include "core/names.h"
#include "cli.h"
#include "sampler/sampler.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cli_draw_init(cli_draw *d)
{
    memset(d, 0, sizeof *d);
    d->sampler = "heun";
    d->device = "auto";
    d->precision = "fp32";
    d->grid = "auto";
    d->recipe = "principled";
    d->corrector_steps = 1;
    d->max_nfe = 100000;
    d->rho = 7;
    d->shift = 3;
    d->t_noise = d->t_data = NAN;
    d->rtol = d->atol = 1e-4;
    d->eps0 = 1;
    d->guidance = 1.0;
    d->guide_weight = DFX_GUIDE_WEIGHT_DEFAULT;
    d->eta = NAN;
    d->snr = DFX_SNR_DEFAULT;
    d->start_langevin = -1;
    d->start_snr = DFX_SNR_DEFAULT;
    d->delta = d->anneal = NAN;
    d->s_tmax = INFINITY;
    d->s_noise = 1.0;
    d->class_id = DFX_CLASS_CYCLE;
}

int cli_draw_options(cli_draw *d, cli_opt *opts, int n, int with_sampler)
{
    const cli_opt common[] = {
        cli_opt_model(&d->model),
        cli_opt_scheduler(&d->scheduler),
        cli_opt_sampler(&d->sampler),
        {"steps", OPT_INT, &d->steps, "N", "steps of the time grid (the sampler's default)", 0},
        {"batch", OPT_INT, &d->batch, "B", "samples per batch (min(n, 64))", 0},
        {"seed", OPT_U64, &d->seed, "S", "random seed (0)", 0},
        {"start-index", OPT_U64, &d->start, "I", "global index of the first sample (0)", 0},
        {"device", OPT_STR, &d->device, "D",
         "cpu, cuda, cuda:N or auto (auto; under mpirun one GPU per rank)", 0},
        cli_opt_precision(&d->precision),
        cli_opt_threads(&d->threads),
        cli_opt_max_memory(&d->max_memory),
        {"grid", OPT_STR, &d->grid, "NAME",
         "time grid: uniform karras logsnr shift schedule, or auto (the path's default: logsnr "
         "on vp and interpolants; karras on ve, logsnr there for x_hat samplers; karras on "
         "dale; diffusers models: their scheduler's timesteps)",
         0},
        {"rho", OPT_DOUBLE, &d->rho, "R", "karras grid exponent (7)", 0},
        {"shift", OPT_DOUBLE, &d->shift, "K",
         "shift grid factor, >1 = more steps at high noise (3)", 0},
        {"t-noise", OPT_DOUBLE, &d->t_noise, "T", "start time at the noise end (path default)", 0},
        {"t-data", OPT_DOUBLE, &d->t_data, "T", "stop time near the data end (path default)", 0},
        {"no-denoise", OPT_FLAG, &d->no_denoise, NULL,
         "stop at --t-data instead of finishing with x <- x_hat", 0},
        {"rtol", OPT_DOUBLE, &d->rtol, "R", "dopri5 relative tolerance (1e-4)", 0},
        {"atol", OPT_DOUBLE, &d->atol, "A", "dopri5 absolute tolerance (1e-4)", 0},
        {"max-nfe", OPT_U64, &d->max_nfe, "N", "dopri5 evaluations per sample before giving up",
         0},
        {"noise", OPT_STR, &d->noise, "NAME",
         "em noise eps(t): diffusion const s s2 (s on interpolants, else diffusion)", 0},
        {"eps0", OPT_DOUBLE, &d->eps0, "E", "em noise scale (1)", 0},
        {"allow-unstable", OPT_FLAG, &d->allow_unstable, NULL,
         "em, pc: run even where eps h / s^2 says the explicit step diverges", 0},
        {"eta", OPT_DOUBLE, &d->eta, "E",
         "ddim/euler_ancestral/dpmpp_2m_sde: fresh-noise level (0, 1, 1)", 0},
        {"churn", OPT_DOUBLE, &d->churn, "S",
         "euler/heun/rk4: EDM's S_churn, fresh noise before each step (0)", 0},
        {"s-tmin", OPT_DOUBLE, &d->s_tmin, "SIGMA", "churn only at sigma = s/a >= this (0)", 0},
        {"s-tmax", OPT_DOUBLE, &d->s_tmax, "SIGMA", "churn only at sigma = s/a <= this (inf)", 0},
        {"s-noise", OPT_DOUBLE, &d->s_noise, "K", "churn noise scale S_noise (1)", 0},
        {"order", OPT_INT, &d->order, "P", "unipc, deis: order 1..3 of the multistep rule (2)", 0},
        {"variant", OPT_STR, &d->variant, "NAME", "unipc: bh2 or bh1, UniPC's B(h); deis: tab or logrho (first: default)", 0},
        {"restart", OPT_STR, &d->restart, "LIST",
         "restart: SMIN:SMAX:K:N[,...] intervals in sigma = s/a, K restarts of N heun steps "
         "(0.06:0.30:2:3)",
         0},
        {"snr", OPT_DOUBLE, &d->snr, "R", "pc: corrector signal-to-noise ratio (" DFX_STR(DFX_SNR_DEFAULT) ")", 0},
        {"corrector-steps", OPT_INT, &d->corrector_steps, "K", "pc: Langevin steps per time (1)",
         0},
        {"recipe", OPT_STR, &d->recipe, "NAME",
         "adls/aums: principled (delta = grid step, final x_hat) or paper (the Dale paper's run "
         "for the model's data set: its delta, --inner, --anneal and start, no final "
         "denoising, output clamped to the data range)",
         0},
        {"delta", OPT_DOUBLE, &d->delta, "D",
         "paper recipe: step (MNIST: adls 6.16545e-4, aums 1.43845e-4)", 0},
        {"inner", OPT_INT, &d->inner, "L",
         "paper recipe: updates per time index (MNIST: adls 1, aums 4)", 0},
        {"anneal", OPT_DOUBLE, &d->anneal, "F", "paper recipe: noise factor per index (0.995)", 0},
        {"start", OPT_STR, &d->start_name, "NAME",
         "fitted (the model's start distribution), path (N(m, s^2) of the path) or paper (the "
         "Dale paper's log-normal; the default under --recipe paper)",
         0},
        {"start-langevin", OPT_INT, &d->start_langevin, "K",
         "Langevin steps at the noise end before sampling (default: the model's: dale models "
         "with a fitted start " DFX_STR(DFX_START_LANGEVIN_DALE) ", others 0)",
         0},
        {"start-snr", OPT_DOUBLE, &d->start_snr, "R",
         "their signal-to-noise ratio, as pc's --snr (" DFX_STR(DFX_SNR_DEFAULT) ")", 0},
        {"init", OPT_STR, &d->init, "NPY",
         "start from this noise (float32 [n, C, H, W], row i for sample i) instead of the draws",
         0},
        {"path-start", OPT_FLAG, &d->path_start, NULL, "the same as --start path", 0},
        {"class", OPT_STR, &d->cls, "K",
         "conditional models: label K, 'all' (sample i gets i mod classes; default) or 'none'",
         0},
        {"guidance", OPT_DOUBLE, &d->guidance, "W",
         "classifier-free guidance: P_u + W (P_c - P_u) (1 = plain conditional)", 0},
        {"guide-model", OPT_STR, &d->guide_model, "FILE",
         "autoguidance: P_g + W (P - P_g), P_g this weaker model's prediction (the same data "
         "and path, trained less or smaller; every evaluation runs both). Default: the guide "
         "the model's config names, if any; none: without",
         0},
        {"guide-weight", OPT_DOUBLE, &d->guide_weight, "W",
         "its weight W (the model's, else " DFX_STR(DFX_GUIDE_WEIGHT_DEFAULT)
         "; 1 = the model alone)",
         0},
        {"path", OPT_STR, &d->path, "FAMILY",
         "analytic models only: sample on linear trig vp vp_cosine ve", 0},
        {"perturb", OPT_STR, &d->perturb, "KIND:L",
         "diagnostic: the velocity v + L s M eps, M = rot (pairs of pixels turned by 90 degrees: "
         "not a gradient, moves no density), swap or scale (MATH.md 4.4)",
         0},
        {"quiet", OPT_FLAG, &d->quiet, NULL, "print nothing but errors", 0},
        {"verbose", OPT_FLAG, &d->verbose, NULL, "also print the memory the run needs", 0},
        {"progress", OPT_FLAG, &d->progress, NULL,
         "show the progress bar even when not a terminal", 0},
    };
    _Static_assert(sizeof common / sizeof common[0] <= CLI_DRAW_OPTS,
                   "the shared options outgrew CLI_DRAW_OPTS");
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++) {
        if (!with_sampler &&
            (strcmp(common[i].name, "sampler") == 0 || strcmp(common[i].name, "steps") == 0))
            continue;
        opts[n++] = common[i];
    }
    return n;
}

static int usage_fail(const char *cmd, const char *msg, const char *arg)
{
    fprintf(stderr, "difflux %s: ", cmd);
    fprintf(stderr, msg, arg);
    fputc('\n', stderr);
    return CLI_USAGE;
}

int cli_draw_check(const char *cmd, cli_draw *d, const cli_opt *opts, int nopts, long n)
{
    const cli_opt *o;
    if ((o = cli_find(opts, nopts, "steps")) && o->ptr == &d->steps && o->set && d->steps < 1)
        return usage_fail(cmd, "--steps must be at least 1%s", "");
    if ((o = cli_find(opts, nopts, "steps")) && o->ptr == &d->steps && d->steps > 1000000)
        return usage_fail(cmd, "--steps must be at most 1000000%s", "");
    if (d->batch < 0 || (cli_find(opts, nopts, "batch")->set && d->batch < 1))
        return usage_fail(cmd, "--batch must be at least 1%s", "");
    if (cli_check_threads(cmd, d->threads)) return CLI_USAGE;
    if (n > 0 && d->start > UINT64_MAX - (uint64_t)(n - 1)) {
        fprintf(stderr,
                "difflux %s: --start-index %llu with --n %ld runs past the last sample index "
                "2^64 - 1 (the indices would wrap around and repeat samples); at most %llu\n",
                cmd, (unsigned long long)d->start, n,
                (unsigned long long)(UINT64_MAX - (uint64_t)(n - 1)));
        return CLI_USAGE;
    }
    if (cli_check_max_memory(cmd, d->max_memory, &d->mem_limit)) return CLI_USAGE;
    if (d->max_nfe < 1 || d->max_nfe > 100000000)
        return usage_fail(cmd, "--max-nfe must be in [1, 1e8]%s", "");
    d->g = DFX_GRID_AUTO;
    if (strcmp(d->grid, "auto") != 0 && dfx_grid_parse(d->grid, &d->g))
        return usage_fail(cmd, "unknown --grid '%s' (uniform, karras, logsnr, shift, schedule)",
                          d->grid);
    d->nz = DFX_NOISE_S;
    if (d->noise && dfx_noise_parse(d->noise, &d->nz))
        return usage_fail(cmd, "unknown --noise '%s' (diffusion, const, s, s2)", d->noise);
    d->fam = DFX_PATH_LINEAR;
    if (d->path && dfx_path_parse(d->path, &d->fam))
        return usage_fail(cmd, "unknown --path '%s' (linear, trig, vp, vp_cosine, ve)", d->path);
    if ((o = cli_find(opts, nopts, "sampler")) && o->ptr == &d->sampler &&
        cli_check_sampler(cmd, d->sampler))
        return CLI_USAGE;
    d->start_mode = DFX_START_AUTO;
    if (d->start_name) {
        static const char *const names[] = {"fitted", "path", "paper"};
        static const int starts[] = {DFX_START_FITTED, DFX_START_PATH, DFX_START_PAPER};
        int i = dfx_enum_parse(names, 3, d->start_name);
        if (i < 0)
            return usage_fail(cmd, "unknown --start '%s' (fitted, path, paper)", d->start_name);
        d->start_mode = starts[i];
        if (d->path_start && d->start_mode != DFX_START_PATH)
            return usage_fail(cmd, "--path-start contradicts --start %s", d->start_name);
    }
    if (strcmp(d->recipe, "paper") != 0 && strcmp(d->recipe, "principled") != 0)
        return usage_fail(cmd, "unknown --recipe '%s' (principled, paper)", d->recipe);
    if ((cli_find(opts, nopts, "delta")->set || cli_find(opts, nopts, "inner")->set ||
         cli_find(opts, nopts, "anneal")->set) &&
        strcmp(d->recipe, "paper") != 0)
        return usage_fail(cmd, "--delta, --inner and --anneal belong to --recipe paper%s", "");
    if (d->restart) {
        const char *p = d->restart;
        d->restart_n = 0;
        while (*p) {
            double *iv = d->restart_iv[d->restart_n];
            int used = 0;
            if (d->restart_n >= DFX_RESTART_MAX ||
                sscanf(p, "%lf:%lf:%lf:%lf%n", &iv[0], &iv[1], &iv[2], &iv[3], &used) != 4)
                return usage_fail(cmd,
                                  "--restart expects SMIN:SMAX:K:N[,SMIN:SMAX:K:N...] (at most 8), "
                                  "got '%s'",
                                  d->restart);
            d->restart_n++;
            p += used;
            if (*p == ',') p++;
            else if (*p)
                return usage_fail(cmd, "--restart expects SMIN:SMAX:K:N[,...], got '%s'",
                                  d->restart);
        }
    }
    d->class_id = DFX_CLASS_CYCLE;
    if (d->cls) {
        char *end;
        long v = strtol(d->cls, &end, 10);
        if (strcmp(d->cls, "all") == 0)
            d->class_id = DFX_CLASS_CYCLE;
        else if (strcmp(d->cls, "none") == 0)
            d->class_id = DFX_CLASS_NONE;
        else if (*d->cls && !*end && v >= 0 && v < 1000000)
            d->class_id = (int)v;
        else
            return usage_fail(cmd, "--class expects a label, 'all' or 'none', got '%s'", d->cls);
    }
    if (d->perturb) {
        dfx_error e = {0};
        if (dfx_perturb_parse(d->perturb, &d->perturb_kind, &d->perturb_lambda, &e))
            return usage_fail(cmd, "--perturb %s", e.msg);
    }
    if (cli_find(opts, nopts, "guide-weight")->set && d->guide_model &&
        strcmp(d->guide_model, "none") == 0)
        return usage_fail(cmd, "--guide-weight contradicts --guide-model none%s", "");
    if (!d->model) d->model = cli_default_model();
    if (d->batch == 0) d->batch = n < 64 ? (int)n : 64;
    if (d->batch > n) d->batch = (int)n;
    return CLI_OK;
}

int cli_draw_outputs(const char *cmd, const cli_file *outs, int nout, const cli_file *ins,
                     int nin)
{
    int rc = cli_mpi_rank() == 0 ? cli_check_outputs(cmd, outs, nout, ins, nin) : CLI_OK;
    if (cli_mpi_any(rc)) return rc ? rc : CLI_FAIL;
    return CLI_OK;
}

dfx_backend *cli_backend_open(const char *device, int threads, const char *precision,
                              dfx_error *err)
{
    dfx_backend *be = dfx_backend_create(device, threads, err);
    if (be && precision && dfx_backend_set_precision(be, precision, err)) {
        dfx_backend_destroy(be);
        return NULL;
    }
    return be;
}

/* --guide-model FILE, or the guide the model's config names (--guide-model
 * none: without it); --guide-weight, or the config's weight. */
static int open_guide(cli_draw *d, const cli_opt *opts, int nopts, dfx_error *err)
{
    const dfx_model_info *mi = dfx_model_get_info(d->m);
    int weight_set = cli_find(opts, nopts, "guide-weight")->set, own = 0;
    if (d->guide_model && strcmp(d->guide_model, "none") == 0) {
        d->guide_model = NULL;
        return 0;
    }
    if (!d->guide_model && mi->guide[0]) {
        d->guide_model = mi->guide;
        if (!weight_set) d->guide_weight = mi->guide_weight;
        own = 1;
    }
    if (!d->guide_model)
        return weight_set ? dfx_fail(err, "--guide-weight needs --guide-model FILE (%s names "
                                          "no guide of its own)",
                                     d->model)
                          : 0;
    dfx_model *g = dfx_model_load(d->guide_model, d->be, err);
    if (g && dfx_model_set_guide(d->m, g, d->guide_weight, err)) {
        dfx_model_free(g);
        g = NULL;
    }
    if (!g)
        return own ? dfx_fail_prefix(err, "%s: the guide its config names (--guide-model none "
                                          "samples without it)",
                                     d->model)
                   : dfx_fail_prefix(err, "--guide-model");
    if (!d->quiet && cli_mpi_rank() == 0)
        fprintf(stderr, "difflux: guided by %s with weight %g%s (each evaluation runs both "
                        "networks)\n",
                d->guide_model, d->guide_weight,
                own ? ", the model's own guide (--guide-model none: without)" : "");
    return 0;
}

int cli_draw_open(cli_draw *d, const cli_opt *opts, int nopts, dfx_error *err)
{
    /* one GPU per rank of a node when several processes share it */
    char dev[32];
    const char *device = d->device;
    int ngpu = (strcmp(device, "cuda") == 0 || strcmp(device, "auto") == 0) ? dfx_cuda_devices()
                                                                             : 0;
    if (cli_mpi_size() > 1 && ngpu > 0) {
        snprintf(dev, sizeof dev, "cuda:%d", cli_mpi_local_rank() % ngpu);
        device = dev;
    }
    d->be = cli_backend_open(device, d->threads, d->precision, err);
    if (!d->be) return -1;
    d->m = cli_model_load(d->model, d->scheduler, d->be, err);
    if (!d->m) return -1;
    if (d->path) {
        dfx_path p;
        dfx_path_default(&p, d->fam);
        if (dfx_model_set_path(d->m, &p, err)) return -1;
    }
    if (open_guide(d, opts, nopts, err)) return -1;
    if (d->perturb &&
        dfx_model_set_perturb(d->m, d->perturb_kind, d->perturb_lambda, err))
        return dfx_fail_prefix(err, "--perturb %s", d->perturb);
    if (d->perturb && !d->quiet && cli_mpi_rank() == 0)
        fprintf(stderr, "difflux: diagnostic run: the model's velocity v is replaced by v + %g s M eps, "
                "M = %s (MATH.md 4.4)\n", d->perturb_lambda, dfx_perturb_name(d->perturb_kind));
    d->mi = dfx_model_get_info(d->m);
    const cli_opt *go = cli_find(opts, nopts, "guidance");
    if (d->mi->num_classes > 0 || d->cls || (go && go->set)) {
        int c = (d->mi->num_classes == 0 && !d->cls) ? DFX_CLASS_NONE : d->class_id;
        if (dfx_model_set_class(d->m, c, d->guidance, err)) return -1;
        d->class_id = c;
    }
    dfx_sample_opts *o = &d->o;
    dfx_sample_opts_default(o, d->m);
    const cli_opt *so = cli_find(opts, nopts, "sampler");
    if (so && so->set)
        o->sampler = d->sampler;
    else
        d->sampler = o->sampler; /* the model's own (diffusers: its scheduler's), else heun */
    o->steps = d->steps;
    o->seed = d->seed;
    o->grid = d->g;
    o->rho = d->rho;
    o->shift = d->shift;
    o->t_noise = d->t_noise;
    o->t_data = d->t_data;
    o->rtol = d->rtol;
    o->atol = d->atol;
    o->max_nfe = (long)d->max_nfe;
    if (d->noise) o->noise = d->nz;
    o->eta = d->eta;
    o->churn = d->churn;
    o->s_tmin = d->s_tmin;
    o->s_tmax = d->s_tmax;
    o->s_noise = d->s_noise;
    o->order = d->order;
    o->variant = d->variant;
    o->restart_n = d->restart_n;
    memcpy(o->restart, d->restart_iv, sizeof o->restart);
    o->snr = d->snr;
    o->corrector_steps = d->corrector_steps;
    o->start_langevin = d->start_langevin;
    o->start_snr = d->start_snr;
    o->recipe = strcmp(d->recipe, "paper") == 0 ? DFX_RECIPE_PAPER : DFX_RECIPE_PRINCIPLED;
    o->delta = d->delta;
    o->inner = d->inner;
    o->anneal = d->anneal;
    o->path_start = d->path_start;
    o->start = d->start_mode;
    o->eps0 = d->eps0;
    o->unstable = d->allow_unstable;
    if (d->no_denoise) o->denoise = 0;
    d->dim = (size_t)d->mi->channels * d->mi->height * d->mi->width;
    if (d->init) {
        long rows = 0;
        d->init_z = dfx_read_npy(d->init, d->dim, &rows, err);
        if (!d->init_z) return dfx_fail_prefix(err, "--init");
        o->init = d->init_z;
        o->init_rows = rows;
    }
    return 0;
}

int cli_draw_images(const cli_draw *d, long n, float **images, dfx_error *err)
{
    *images = NULL;
    if (cli_mpi_rank() != 0) return 0;
    *images = malloc((size_t)n * d->dim * sizeof(float));
    return *images ? 0 : dfx_fail(err, "out of memory for %ld samples", n);
}

/* ------------------------------------------------------------ progress */

void cli_bar_draw(cli_bar *b, double frac, int final)
{
    double now = dfx_seconds();
    if (!final && now - b->last < 0.1) return;
    b->last = now;
    int width = 30, fill = (int)(frac * width + 0.5);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    double el = now - b->start;
    double eta = frac > 0.01 ? el * (1.0 - frac) / frac : 0.0;
    fprintf(stderr, "\r%s [%s] %3d%%  %ld/%ld %s  %.1fs elapsed, ~%.0fs left ", b->label, bar,
            (int)(frac * 100.0), b->done, b->total, b->unit, el, eta);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

typedef struct progress_bar {
    cli_bar bar;
    long batch; /* samples */
} progress_bar;

static void on_progress(void *ctx, const dfx_progress *p)
{
    progress_bar *b = ctx;
    if (!b->bar.enabled) return;
    double frac = (b->bar.done + b->batch * p->frac) / (double)b->bar.total;
    cli_bar_draw(&b->bar, frac, 0);
}

/* This rank's block [lo, hi) of n samples, and the batch it runs them in. */
static int rank_block(const cli_draw *d, long n, long *lo, long *hi)
{
    cli_mpi_block(n, cli_mpi_rank(), cli_mpi_size(), lo, hi);
    long mine = *hi - *lo;
    int batch = d->batch ? d->batch : 64;
    return batch > mine ? (mine > 0 ? (int)mine : 1) : batch;
}

/* Before sampling: the explicit em step's stability bound exceeded on a
 * grid the sampler did not refuse (the growth is below the refusal limit,
 * or --allow-unstable). */
static void stability_warning(const dfx_sampler *s, const char *sampler)
{
    double t, g, r = dfx_sampler_stability(s, &t, &g);
    if (!(r > 2.0)) return;
    fprintf(stderr,
            "difflux: warning: %s: eps h / s^2 reaches %.3g at t = %g (the explicit step is "
            "stable below 2; an error near the data can grow up to %.3g-fold); more --steps, "
            "--noise s or a smaller --eps0 keep it stable\n",
            sampler, r, t, g);
}

int cli_draw_run(cli_draw *d, long n, float *images, double *nfe, const char *label,
                 dfx_error *err)
{
    int rank = cli_mpi_rank();
    long lo, hi;
    int batch = rank_block(d, n, &lo, &hi);
    long mine = hi - lo;
    /* rank 0 shows its own block's progress: the ranks run side by side */
    progress_bar bar = {{rank == 0 && !d->quiet && (d->progress || isatty(2)),
                         label ? label : "sampling", "samples", mine, 0, dfx_seconds(), 0},
                        batch};
    d->o.progress = on_progress;
    d->o.progress_ctx = &bar;
    float *buf = images;
    if (rank != 0) {
        buf = malloc((size_t)(mine > 0 ? mine : 1) * d->dim * sizeof(float));
        if (!buf) dfx_fail(err, "out of memory for %ld samples", mine);
    }
    dfx_sampler *s = buf ? dfx_sampler_create(d->m, &d->o, batch, err) : NULL;
    int rc = s ? 0 : -1;
    if (s && rank == 0 && !d->quiet) stability_warning(s, d->o.sampler);
    if (s) d->start_steps = dfx_sampler_start_langevin(s);
    double nfe_sum = 0.0, outside_max = 0.0;
    long clamped = 0, nonpos = 0, outside = 0;
    for (long k = 0; k < mine && rc == 0;) {
        int rows = (int)(mine - k < batch ? mine - k : batch);
        bar.bar.done = k;
        bar.batch = rows;
        dfx_sample_stats st;
        rc = dfx_sampler_run(s, d->start + (uint64_t)(lo + k), rows, buf + (size_t)k * d->dim,
                             &st, err);
        if (rc == 0) {
            nfe_sum += st.nfe_mean * rows;
            clamped += st.clamped;
            nonpos += st.nonpositive;
            outside += st.outside;
            outside_max = fmax(outside_max, st.outside_max);
        }
        k += rows;
    }
    dfx_sampler_free(s);
    if (rc == 0 && bar.bar.enabled) {
        bar.bar.done = mine;
        cli_bar_draw(&bar.bar, 1.0, 1);
    } else if (rc != 0 && bar.bar.enabled && bar.bar.last > 0) {
        fputc('\n', stderr);
    }
    if (cli_mpi_fail(rc, err)) {
        if (rank != 0) free(buf);
        return -1;
    }
    rc = cli_mpi_gather_rows(buf, n, d->dim, err);
    if (rank != 0) free(buf);
    nfe_sum = cli_mpi_sum(nfe_sum);
    double cl = cli_mpi_sum((double)clamped), np = cli_mpi_sum((double)nonpos);
    if (rank == 0 && !d->quiet && d->o.recipe == DFX_RECIPE_PAPER) {
        char more[128] = "";
        if (np > 0)
            snprintf(more, sizeof more, "; %.0f values an aums update took to <= 0 were set to %g",
                     np, d->mi->range_lo);
        fprintf(stderr, "difflux: paper recipe: %.0f of %.0f values clamped into [%g, %g] at the "
                        "end (%.3f%%)%s\n",
                cl, (double)n * (double)d->dim, d->mi->range_lo, d->mi->range_hi,
                100.0 * cl / ((double)n * (double)d->dim), more);
    }
    double out_n = cli_mpi_sum((double)outside), out_max = cli_mpi_max(outside_max);
    if (rank == 0 && !d->quiet && out_n > 0) {
        double rlo = d->mi->range_lo, rhi = d->mi->range_hi, w = rhi - rlo;
        fprintf(stderr,
                "difflux: warning: %.0f of %.0f values (%.3g%%) lie far outside the data range "
                "[%g, %g], beyond [%g, %g] (largest |x| %.3g): the %s sampler may have "
                "diverged or the model extrapolates; try more --steps, another --grid or "
                "--noise\n",
                out_n, (double)n * (double)d->dim, 100.0 * out_n / ((double)n * (double)d->dim),
                rlo, rhi, rlo - w, rhi + w, out_max, d->o.sampler);
    }
    if (nfe) *nfe = n > 0 ? nfe_sum / (double)n : 0.0;
    return rc;
}

double cli_mem_available(const char **what)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb > 0) {
        if (what) *what = "available (MemAvailable in /proc/meminfo)";
        return kb * 1024.0;
    }
    if (what) *what = "of physical memory";
    return (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
}

int cli_mem_check(double need, double total, double limit, const char *what,
                  const char *hint, dfx_error *err)
{
    char a[32], b[32];
    if (limit > 0) {
        if (total <= limit) return 0;
        return dfx_fail(err, "%s needs about %s, more than --max-memory %s%s", what,
                        cli_format_bytes(total, a, sizeof a), cli_format_bytes(limit, b, sizeof b),
                        hint);
    }
    const char *src;
    double avail = cli_mem_available(&src);
    if (!(avail > 0) || need <= avail) return 0;
    return dfx_fail(err,
                    "%s needs about %s more, but the machine has %s %s%s (--max-memory "
                    "overrides the limit)",
                    what, cli_format_bytes(need, a, sizeof a),
                    cli_format_bytes(avail, b, sizeof b), src, hint);
}

int cli_draw_memory(cli_draw *d, long n, double extra, dfx_error *err)
{
    const int rank = cli_mpi_rank();
    long lo, hi;
    int batch = rank_block(d, n, &lo, &hi);
    long mine = hi - lo;
    const double row = (double)d->dim * sizeof(float);
    const int gpu = strcmp(dfx_backend_name(d->be), "cpu") != 0;
    double weights = (double)d->mi->n_params * sizeof(float);
    if (d->m->guide) weights += (double)dfx_model_get_info(d->m->guide)->n_params * sizeof(float);
    double run = (double)dfx_sampler_bytes(d->m, &d->o, batch);
    double samples = (rank == 0 ? (double)n : (double)mine) * row;
    double host = samples + (rank == 0 ? extra : 0.0) + (gpu ? 0.0 : run);
    double total = weights + run + samples + (rank == 0 ? extra : 0.0);
    char w[32], r[32], s[32], e[32], t[32];
    if (d->verbose && rank == 0)
        fprintf(stderr,
                "difflux: memory: about %s (weights %s, %s sampler state and network scratch "
                "for batches of %d %s, %ld samples %s%s%s)\n",
                cli_format_bytes(total, t, sizeof t), cli_format_bytes(weights, w, sizeof w),
                d->o.sampler, batch, cli_format_bytes(run, r, sizeof r), n,
                cli_format_bytes(samples, s, sizeof s), extra > 0 ? ", output " : "",
                extra > 0 ? cli_format_bytes(extra, e, sizeof e) : "");
    char what[1400];
    snprintf(what, sizeof what, "model %s with the %s sampler in batches of %d (%s of %s)",
             d->model, d->o.sampler, batch, cli_format_bytes(run, r, sizeof r),
             gpu ? "GPU memory" : "sampler state and network scratch");
    /* the machine's limit: what the run adds on the host (the weights are
     * loaded already); GPU memory only against an explicit --max-memory */
    return cli_mem_check(host, total, d->mem_limit, what,
                         batch > 1 ? "; a smaller --batch needs less" : "", err);
}

void cli_draw_close(cli_draw *d)
{
    free(d->init_z);
    d->init_z = NULL;
    dfx_model_free(d->m);
    dfx_backend_destroy(d->be);
    d->m = NULL;
    d->be = NULL;
}
