/* difflux likelihood: negative log-likelihood and bits per dimension of data
 * under a model, through the probability-flow ODE (MATH.md section 8). */
#define _POSIX_C_SOURCE 200809L
#include "args.h"
#include "cli.h"
#include "core/error.h"
#include "draw.h"
#include "io/fileio.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { STREAM_DEQUANT = 33 };

static const char about[] =
    "Integrates the probability-flow ODE of the model from each data point (at\n"
    "t_data) to the noise end together with the divergence of its velocity:\n"
    "  log p(x) = log p_start(x(t_noise)) + integral of div v dt,\n"
    "p_start being the density the samplers start from (the model's fitted start,\n"
    "an analytic model's exact p_t, else the path's Gaussian). The divergence is\n"
    "exact (one JVP per dimension: slow for networks) or Hutchinson's u.Ju over\n"
    "--probes random vectors held fixed along each trajectory (unbiased).\n"
    "Reports the mean negative log-likelihood in nats +- its standard error over\n"
    "the points, and bits/dim by the usual convention for 8-bit images (as\n"
    "score_sde and k-diffusion): IDX pixels k become x = lo + (hi - lo)(k + u)/256\n"
    "with u uniform in [0, 1) (seeded), [lo, hi] the model's data range, and\n"
    "  bpd = -(log p(x) + D log((hi - lo)/256)) / (D log 2).\n"
    "--no-dequant takes x = lo + (hi - lo) k/255 instead: the continuous density of\n"
    "those values (the same bpd formula). .npy data are values in the model's range\n"
    "(difflux sample --npy) and are never dequantised. On the dale path the ODE runs\n"
    "in y = log x and the density in x includes the Jacobian -sum log x.\n"
    "Under `mpirun -np K difflux likelihood ...` the ranks take blocks of the points\n"
    "and rank 0 reports exactly what one process would. --json and --csv are\n"
    "renamed into place together at the end.";

typedef struct lik_cmd {
    const char *model, *scheduler, *data, *div_s, *probe_s, *solver_s, *grid_s, *cls, *device,
        *json, *csv, *path;
    dfx_path_family fam;
    int n, probes, steps, batch, threads, no_dequant, path_start, quiet, progress;
    uint64_t seed;
    double rtol, atol, t_noise, t_data;
    double tn_used, td_used; /* the interval, as the run takes it */
    int max_nfe_i;
    dfx_lik_opts o;
    int class_id;
    /* the run */
    dfx_backend *be;
    dfx_model *m;
    const dfx_model_info *mi;
    size_t dim;
    float *x;        /* the points in the data space [n, dim] */
    int dequant;
    dfx_lik_point *pts;
    double seconds;
} lik_cmd;

static int lik_parse(void *state, int argc, char **argv)
{
    lik_cmd *c = state;
    c->div_s = "hutchinson", c->probe_s = "rademacher", c->solver_s = "dopri5";
    c->grid_s = "auto", c->device = "auto";
    c->n = 100, c->probes = 1, c->steps = 64, c->batch = 64;
    c->rtol = 1e-5, c->atol = 1e-5, c->t_noise = NAN, c->t_data = NAN, c->max_nfe_i = 100000;
    cli_opt opts[] = {
        cli_opt_model(&c->model),
        cli_opt_scheduler(&c->scheduler),
        {"data", OPT_STR, &c->data, "IDX|NPY",
         "the points: IDX images (8-bit, dequantised) or .npy values in the model's range", 0},
        {"n", OPT_INT, &c->n, "N", "the first N points of --data (100)", 0},
        {"div", OPT_STR, &c->div_s, "M", "divergence: hutchinson (default) or exact", 0},
        {"probes", OPT_INT, &c->probes, "K", "hutchinson: probes per point (1)", 0},
        {"probe", OPT_STR, &c->probe_s, "P", "hutchinson: rademacher (default) or gaussian", 0},
        {"sampler", OPT_STR, &c->solver_s, "NAME",
         "the ODE solver: dopri5 (default, adaptive), heun, rk4 or euler", 0},
        {"steps", OPT_INT, &c->steps, "N", "heun, rk4, euler: steps (64)", 0},
        {"grid", OPT_STR, &c->grid_s, "NAME",
         "heun, rk4, euler: time grid, uniform, karras, logsnr or shift (auto: the sampler's "
         "default on the model's path)",
         0},
        {"rtol", OPT_DOUBLE, &c->rtol, "R", "dopri5: relative tolerance (1e-5)", 0},
        {"atol", OPT_DOUBLE, &c->atol, "A", "dopri5: absolute tolerance (1e-5)", 0},
        {"max-nfe", OPT_INT, &c->max_nfe_i, "N",
         "dopri5: give up on a point after N evaluations (100000)", 0},
        {"t-data", OPT_DOUBLE, &c->t_data, "T", "where the data sit on the path (the path's "
                                                 "default sampling end)", 0},
        {"t-noise", OPT_DOUBLE, &c->t_noise, "T", "the noise end (the path's default)", 0},
        {"path-start", OPT_FLAG, &c->path_start, NULL,
         "the path's N(m, s^2) at t_noise as p_start, not the model's fitted start", 0},
        {"no-dequant", OPT_FLAG, &c->no_dequant, NULL,
         "IDX data: the continuous density of lo + (hi - lo) k/255, no dequantisation", 0},
        {"path", OPT_STR, &c->path, "FAMILY",
         "analytic models: put the model on this path (linear, trig, vp, vp_cosine, ve, dale)",
         0},
        {"class", OPT_STR, &c->cls, "K",
         "conditional models: the likelihood given label K, or 'none' (unconditional, the "
         "default)",
         0},
        {"seed", OPT_U64, &c->seed, "S", "seed of the probes and the dequantisation (0)", 0},
        {"batch", OPT_INT, &c->batch, "B", "rows (JVPs) per network evaluation (64)", 0},
        cli_opt_device(&c->device),
        cli_opt_threads(&c->threads),
        {"json", OPT_STR, &c->json, "FILE", "write the results as JSON (per point and summary)",
         0},
        {"csv", OPT_STR, &c->csv, "FILE", "write one row per point as CSV", 0},
        {"quiet", OPT_FLAG, &c->quiet, NULL, "no progress on stderr", 0},
        {"progress", OPT_FLAG, &c->progress, NULL, "show the progress bar even when not a "
                                                    "terminal", 0},
    };
    return cli_options("likelihood", "difflux likelihood --data IDX|NPY [options]", about, argc,
                       argv, opts, (int)(sizeof opts / sizeof opts[0]));
}

#define FAIL_USAGE(...)                                                                    \
    return fprintf(stderr, "difflux likelihood: " __VA_ARGS__), fputc('\n', stderr), CLI_USAGE

static int lik_check(void *state)
{
    lik_cmd *c = state;
    dfx_lik_opts *o = &c->o;
    dfx_lik_opts_default(o);
    if (!c->data) FAIL_USAGE("--data IDX|NPY is required (the points whose likelihood is wanted)");
    if (c->n < 1) FAIL_USAGE("--n must be at least 1");
    if (strcmp(c->div_s, "exact") == 0) o->div = DFX_DIV_EXACT;
    else if (strcmp(c->div_s, "hutchinson") == 0) o->div = DFX_DIV_HUTCHINSON;
    else FAIL_USAGE("unknown --div '%s' (exact or hutchinson)", c->div_s);
    if (strcmp(c->probe_s, "rademacher") == 0) o->probe = DFX_PROBE_RADEMACHER;
    else if (strcmp(c->probe_s, "gaussian") == 0) o->probe = DFX_PROBE_GAUSSIAN;
    else FAIL_USAGE("unknown --probe '%s' (rademacher or gaussian)", c->probe_s);
    if (dfx_ode_parse(c->solver_s, &o->solver))
        FAIL_USAGE("--sampler '%s': the likelihood integrates with dopri5, heun, rk4 or euler",
                   c->solver_s);
    if (strcmp(c->grid_s, "auto") == 0) o->grid = DFX_GRID_AUTO;
    else if (dfx_grid_parse(c->grid_s, &o->grid) || o->grid == DFX_GRID_SCHEDULE)
        FAIL_USAGE("unknown --grid '%s' (uniform, karras, logsnr, shift or auto)", c->grid_s);
    if (c->probes < 1 || c->probes > 100000) FAIL_USAGE("--probes must be in 1..100000");
    if (c->steps < 1 || c->steps > 1000000) FAIL_USAGE("--steps must be in 1..1000000");
    if (c->batch < 1 || c->batch > 1000000) FAIL_USAGE("--batch must be in 1..1000000");
    if (!(c->rtol > 0 && c->rtol < 1) || !(c->atol > 0))
        FAIL_USAGE("--rtol must be in (0, 1) and --atol positive");
    if (c->max_nfe_i < 7) FAIL_USAGE("--max-nfe must be at least 7");
    if (!isnan(c->t_data) && !(c->t_data >= 0 && c->t_data <= 1))
        FAIL_USAGE("--t-data %g is outside [0, 1]", c->t_data);
    if (!isnan(c->t_noise) && !(c->t_noise >= 0 && c->t_noise <= 1))
        FAIL_USAGE("--t-noise %g is outside [0, 1]", c->t_noise);
    if (c->path && dfx_path_parse(c->path, &c->fam))
        FAIL_USAGE("unknown --path '%s' (linear, trig, vp, vp_cosine, ve, dale)", c->path);
    c->class_id = DFX_CLASS_NONE;
    if (c->cls && strcmp(c->cls, "none") != 0) {
        char *end;
        long v = strtol(c->cls, &end, 10);
        if (!*c->cls || *end || v < 0 || v >= 1000000)
            FAIL_USAGE("--class expects a label or 'none', got '%s'", c->cls);
        c->class_id = (int)v;
    }
    if (cli_check_threads("likelihood", c->threads)) return CLI_USAGE;
    if (!c->model) c->model = cli_default_model();
    o->probes = c->probes;
    o->steps = c->steps;
    o->rtol = c->rtol;
    o->atol = c->atol;
    o->max_nfe = c->max_nfe_i;
    o->t_noise = c->t_noise;
    o->t_data = c->t_data;
    o->start = c->path_start ? DFX_START_PATH : DFX_START_AUTO;
    o->seed = c->seed;
    o->batch = c->batch;
    const cli_file outs[2] = {{"json", c->json}, {"csv", c->csv}};
    const cli_file ins[3] = {{"model", c->model}, {"data", c->data}, {"scheduler", c->scheduler}};
    return cli_draw_outputs("likelihood", outs, 2, ins, 3);
}

/* The first n points of --data in the model's data space; IDX pixels
 * dequantised (or not), .npy values as they are. */
static int read_points(lik_cmd *c, dfx_error *err)
{
    const size_t D = c->dim;
    const double lo = c->mi->range_lo, hi = c->mi->range_hi;
    size_t len = strlen(c->data);
    if (len > 4 && strcmp(c->data + len - 4, ".npy") == 0) {
        long cnt = 0;
        c->x = dfx_read_npy(c->data, D, &cnt, err);
        if (!c->x) return -1;
        if (cnt < c->n)
            return dfx_fail(err, "--data %s holds %ld points, fewer than --n %d", c->data, cnt,
                            c->n);
        c->dequant = 0;
        return 0;
    }
    uint8_t *px = NULL;
    int cnt, h, w;
    if (dfx_read_idx_images(c->data, &px, &cnt, &h, &w, err)) return -1;
    int rc = -1;
    if (c->mi->channels != 1 || h != c->mi->height || w != c->mi->width) {
        dfx_fail(err, "--data %s: %dx%d images, but the model takes %dx%dx%d", c->data, h, w,
                 c->mi->channels, c->mi->height, c->mi->width);
        goto done;
    }
    if (cnt < c->n) {
        dfx_fail(err, "--data %s holds %d images, fewer than --n %d", c->data, cnt, c->n);
        goto done;
    }
    c->x = dfx_alloc((size_t)c->n * D, sizeof(float), "the points", err);
    if (!c->x) goto done;
    c->dequant = !c->no_dequant;
    for (int i = 0; i < c->n; i++) {
        float *xi = c->x + (size_t)i * D;
        const uint8_t *k = px + (size_t)i * D;
        if (c->dequant) { /* u = Phi(z) of the point's Philox normals: uniform in (0, 1) */
            dfx_normal_host(c->seed, (uint64_t)i, 1, D, 0, STREAM_DEQUANT, xi);
            for (size_t j = 0; j < D; j++) {
                double u = 0.5 * erfc(-xi[j] / sqrt(2.0));
                xi[j] = (float)(lo + (hi - lo) * (k[j] + u) / 256.0);
            }
        } else {
            for (size_t j = 0; j < D; j++) xi[j] = (float)(lo + (hi - lo) * k[j] / 255.0);
        }
    }
    rc = 0;
done:
    free(px);
    return rc;
}

typedef struct bar_ctx {
    cli_bar bar;
    long block;
} bar_ctx;

static void on_progress(void *ctx, double frac)
{
    bar_ctx *b = ctx;
    b->bar.done = (long)(frac * b->block);
    cli_bar_draw(&b->bar, frac, 0);
}

static int lik_run(void *state, dfx_error *err)
{
    lik_cmd *c = state;
    const int rank = cli_mpi_rank();
    c->be = cli_backend_open(c->device, c->threads, NULL, err);
    c->m = c->be ? cli_model_load(c->model, c->scheduler, c->be, err) : NULL;
    int rc = c->m ? 0 : -1;
    if (rc == 0 && c->path) {
        dfx_path p;
        dfx_path_default(&p, c->fam);
        rc = dfx_model_set_path(c->m, &p, err);
    }
    if (rc == 0) {
        c->mi = dfx_model_get_info(c->m);
        c->dim = (size_t)c->mi->channels * c->mi->height * c->mi->width;
        if (c->mi->num_classes > 0 || c->class_id != DFX_CLASS_NONE)
            rc = dfx_model_set_class(c->m, c->class_id, 1.0, err);
    }
    if (rc == 0) rc = dfx_lik_interval(c->m, &c->o, &c->tn_used, &c->td_used, err);
    if (rc == 0) rc = read_points(c, err);
    c->pts = rc == 0 ? dfx_alloc((size_t)c->n, sizeof *c->pts, "results", err) : NULL;
    if (rc == 0 && !c->pts) rc = -1;
    if (cli_mpi_fail(rc, err)) return -1;
    long lo, hi;
    cli_mpi_block(c->n, rank, cli_mpi_size(), &lo, &hi);
    bar_ctx bc = {{rank == 0 && !c->quiet && (c->progress || isatty(2)), "likelihood", "points",
                   hi - lo, 0, dfx_seconds(), 0},
                  hi - lo};
    if (bc.bar.enabled) {
        c->o.progress = on_progress;
        c->o.progress_ctx = &bc;
    }
    double t0 = dfx_seconds();
    rc = hi > lo ? dfx_log_likelihood(c->m, &c->o, c->x + (size_t)lo * c->dim, (int)(hi - lo),
                                      (uint64_t)lo, c->pts + lo, err)
                 : 0;
    c->seconds = dfx_seconds() - t0;
    if (bc.bar.enabled) {
        if (rc == 0) {
            bc.bar.done = bc.block;
            cli_bar_draw(&bc.bar, 1.0, 1);
        } else if (bc.bar.last > 0) {
            fputc('\n', stderr);
        }
    }
    if (cli_mpi_fail(rc, err)) return -1;
    /* every rank gets every point's figures: the others' slots sum in as zeros */
    if (cli_mpi_size() > 1) {
        enum { F = 6 };
        double *all = dfx_alloc((size_t)c->n * F, sizeof *all, "results", err);
        if (cli_mpi_fail(all ? 0 : -1, err)) {
            free(all);
            return -1;
        }
        for (long i = lo; i < hi; i++) {
            const dfx_lik_point *p = c->pts + i;
            const double v[F] = {p->logp,    p->log_start,    p->div_int,
                                 p->log_jac, (double)p->nfe, (double)p->rejected};
            memcpy(all + i * F, v, sizeof v);
        }
        rc = cli_mpi_sum_array(all, c->n * F, err);
        for (long i = 0; i < c->n && rc == 0; i++) {
            const double *v = all + i * F;
            c->pts[i] = (dfx_lik_point){.logp = v[0], .log_start = v[1], .div_int = v[2],
                                        .log_jac = v[3], .nfe = (long)v[4],
                                        .rejected = (long)v[5]};
        }
        free(all);
        if (rc) return -1;
    }
    return 0;
}

typedef struct summary {
    double nll, nll_se, bpd, bpd_se, nfe;
    double s_data, floor; /* the path's noise at t_data, and the bits/dim that no
                             density of the path there can go below */
    int exact;            /* an analytic model: its closed-form density too */
    double ex_nll, ex_bpd, diff, diff_se; /* and the ODE's error against it */
} summary;

static summary summarise(const lik_cmd *c)
{
    summary s = {0};
    const int n = c->n;
    double ss = 0;
    for (int i = 0; i < n; i++) s.nll -= c->pts[i].logp / n;
    for (int i = 0; i < n; i++) {
        double d = -c->pts[i].logp - s.nll;
        ss += d * d;
        s.nfe += (double)c->pts[i].nfe / n;
    }
    s.nll_se = n > 1 ? sqrt(ss / (n - 1) / n) : NAN;
    const double D = (double)c->dim;
    s.bpd = dfx_bits_per_dim(-s.nll, c->dim, c->mi->range_lo, c->mi->range_hi);
    s.bpd_se = s.nll_se / (D * log(2.0));
    /* p_t = E[N(x; a x0 + m, s^2 I)] <= (2 pi s^2)^(-D/2) (times the mean
     * Jacobian on the dale path): the blur of t_data bounds the figure */
    dfx_coef cf;
    dfx_path_eval(&c->mi->path, c->td_used, &cf);
    s.s_data = cf.s;
    double jac = 0;
    for (int i = 0; i < n; i++) jac += c->pts[i].log_jac / n;
    s.floor = cf.s > 0 ? dfx_bits_per_dim(-0.5 * D * log(2 * 3.14159265358979323846 * cf.s * cf.s) +
                                              jac,
                                          c->dim, c->mi->range_lo, c->mi->range_hi)
                       : -INFINITY;
    return s;
}

/* Analytic models: the closed-form log p_{t_data} of the same points. */
static int exact_reference(lik_cmd *c, summary *s, dfx_error *err)
{
    double *ex = dfx_alloc((size_t)c->n, sizeof *ex, "exact density", err);
    if (!ex) return -1;
    dfx_error e2 = {{0}};
    if (dfx_model_log_density(c->m, c->o.t_data, c->x, c->n, ex, &e2) == 0) {
        const int n = c->n;
        double ss = 0;
        s->exact = 1;
        for (int i = 0; i < n; i++) {
            s->ex_nll -= ex[i] / n;
            s->diff += (ex[i] - c->pts[i].logp) / n; /* ODE NLL - exact NLL */
        }
        for (int i = 0; i < n; i++) {
            double d = ex[i] - c->pts[i].logp - s->diff;
            ss += d * d;
        }
        s->diff_se = n > 1 ? sqrt(ss / (n - 1) / n) : NAN;
        s->ex_bpd = dfx_bits_per_dim(-s->ex_nll, c->dim, c->mi->range_lo, c->mi->range_hi);
    }
    free(ex);
    return 0;
}

static int write_json(const lik_cmd *c, const summary *s, dfx_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", c->model);
    cJSON_AddStringToObject(root, "path", dfx_path_name(c->mi->path.family));
    cJSON_AddNumberToObject(root, "t_data", c->td_used);
    cJSON_AddNumberToObject(root, "t_noise", c->tn_used);
    cJSON_AddStringToObject(root, "data", c->data);
    cJSON_AddNumberToObject(root, "n", c->n);
    cJSON_AddStringToObject(root, "div", c->o.div == DFX_DIV_EXACT ? "exact" : "hutchinson");
    if (c->o.div == DFX_DIV_HUTCHINSON) {
        cJSON_AddNumberToObject(root, "probes", c->o.probes);
        cJSON_AddStringToObject(root, "probe",
                                c->o.probe == DFX_PROBE_GAUSSIAN ? "gaussian" : "rademacher");
    }
    cJSON_AddStringToObject(root, "solver", dfx_ode_name(c->o.solver));
    if (c->o.solver == DFX_ODE_DOPRI5) {
        cJSON_AddNumberToObject(root, "rtol", c->o.rtol);
        cJSON_AddNumberToObject(root, "atol", c->o.atol);
    } else {
        cJSON_AddNumberToObject(root, "steps", c->o.steps);
    }
    cJSON_AddNumberToObject(root, "seed", (double)c->seed);
    cJSON_AddBoolToObject(root, "dequantized", c->dequant);
    cJSON_AddNumberToObject(root, "dim", (double)c->dim);
    cJSON *r = cJSON_AddArrayToObject(root, "range");
    cJSON_AddItemToArray(r, cJSON_CreateNumber(c->mi->range_lo));
    cJSON_AddItemToArray(r, cJSON_CreateNumber(c->mi->range_hi));
    cJSON_AddNumberToObject(root, "nll_mean", s->nll);
    cJSON_AddNumberToObject(root, "nll_se", s->nll_se);
    cJSON_AddNumberToObject(root, "bpd_mean", s->bpd);
    cJSON_AddNumberToObject(root, "bpd_se", s->bpd_se);
    cJSON_AddNumberToObject(root, "nfe_mean", s->nfe);
    cJSON_AddNumberToObject(root, "s_data", s->s_data);
    if (isfinite(s->floor)) cJSON_AddNumberToObject(root, "bpd_floor", s->floor);
    if (s->exact) {
        cJSON_AddNumberToObject(root, "exact_nll_mean", s->ex_nll);
        cJSON_AddNumberToObject(root, "exact_bpd_mean", s->ex_bpd);
        cJSON_AddNumberToObject(root, "ode_minus_exact_nll", s->diff);
        cJSON_AddNumberToObject(root, "ode_minus_exact_nll_se", s->diff_se);
    }
    cJSON_AddNumberToObject(root, "seconds", c->seconds);
    cJSON *a = cJSON_AddArrayToObject(root, "nll_nats");
    cJSON *b = cJSON_AddArrayToObject(root, "bpd");
    cJSON *f = cJSON_AddArrayToObject(root, "nfe");
    for (int i = 0; i < c->n; i++) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber(-c->pts[i].logp));
        cJSON_AddItemToArray(b, cJSON_CreateNumber(dfx_bits_per_dim(
                                    c->pts[i].logp, c->dim, c->mi->range_lo, c->mi->range_hi)));
        cJSON_AddItemToArray(f, cJSON_CreateNumber((double)c->pts[i].nfe));
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    int rc = txt ? dfx_write_text(c->json, txt, err) : dfx_fail(err, "%s: out of memory", c->json);
    free(txt);
    return rc;
}

static int write_csv(const lik_cmd *c, dfx_error *err)
{
    size_t cap = 160 * ((size_t)c->n + 1), len = 0;
    char *buf = dfx_alloc(cap, 1, "csv", err);
    if (!buf) return -1;
    len += (size_t)snprintf(buf, cap, "index,nll_nats,bpd,log_start,div_integral,log_jacobian,"
                                      "nfe,rejected\n");
    for (int i = 0; i < c->n && len < cap; i++) {
        const dfx_lik_point *p = c->pts + i;
        len += (size_t)snprintf(buf + len, cap - len, "%d,%.9g,%.9g,%.9g,%.9g,%.9g,%ld,%ld\n", i,
                                -p->logp,
                                dfx_bits_per_dim(p->logp, c->dim, c->mi->range_lo,
                                                 c->mi->range_hi),
                                p->log_start, p->div_int, p->log_jac, p->nfe, p->rejected);
    }
    int rc = len < cap ? dfx_write_text(c->csv, buf, err) : dfx_fail(err, "%s: too long", c->csv);
    free(buf);
    return rc;
}

static int lik_report(void *state, dfx_error *err)
{
    lik_cmd *c = state;
    if (cli_mpi_rank() != 0) return 0;
    summary s = summarise(c);
    if (exact_reference(c, &s, err)) return -1;
    printf("model        %s%s%s\n", c->model, c->path ? ", on the path " : "",
           c->path ? c->path : "");
    printf("data         the first %d points of %s, %s\n", c->n, c->data,
           c->dequant ? "dequantised: x = lo + (hi - lo)(k + u)/256, u uniform"
                      : "as given (continuous density, no dequantisation)");
    if (c->o.div == DFX_DIV_EXACT)
        printf("divergence   exact: %zu JVPs per evaluation\n", c->dim);
    else
        printf("divergence   hutchinson, %d %s probe%s per point, fixed along its trajectory\n",
               c->o.probes, c->o.probe == DFX_PROBE_GAUSSIAN ? "gaussian" : "rademacher",
               c->o.probes == 1 ? "" : "s");
    if (c->o.solver == DFX_ODE_DOPRI5)
        printf("solver       dopri5, rtol %g, atol %g", c->o.rtol, c->o.atol);
    else
        printf("solver       %s, %d steps", dfx_ode_name(c->o.solver), c->o.steps);
    printf(", from t_data %g to t_noise %g on the %s path\n", c->td_used, c->tn_used,
           dfx_path_name(c->mi->path.family));
    if (c->o.solver != DFX_ODE_DOPRI5)
        printf("             (a fixed-step figure carries the integrator's error, of either sign "
               "and often\n             large near the data end: check it against dopri5)\n");
    printf("NLL          %.3f +- %.3f nats per image (mean +- standard error over %d points)\n",
           s.nll, s.nll_se, c->n);
    printf("bits/dim     %.4f +- %.4f   (%zu dimensions, data range [%g, %g] as 256 bins)\n",
           s.bpd, s.bpd_se, c->dim, c->mi->range_lo, c->mi->range_hi);
    if (isfinite(s.floor) && s.floor > 0)
        printf("floor        %.4f bits/dim: at t_data the path's noise (s = %.3g) keeps "
               "p_{t_data} of any data\n             set at or above this%s\n",
               s.floor, s.s_data,
               s.bpd < s.floor + 0.25 ? "; the figure is near it: it measures that blur more than "
                                       "the model (a smaller --t-data resolves more, outside the "
                                       "times a network was trained on)"
                                     : "");
    if (s.exact)
        printf("exact        NLL %.3f, bits/dim %.4f: the mixture's closed-form density at "
               "t_data;\n             ODE - exact %.4f +- %.4f nats per image\n",
               s.ex_nll, s.ex_bpd, s.diff, s.diff_se);
    printf("evaluations  %.1f per point (each %s), %.1f s\n", s.nfe,
           c->o.div == DFX_DIV_EXACT ? "a JVP per dimension" : "a JVP per probe", c->seconds);
    dfx_outputs_begin();
    if (c->json && write_json(c, &s, err)) return -1;
    if (c->csv && write_csv(c, err)) return -1;
    return dfx_outputs_commit(err);
}

static void lik_release(void *state)
{
    lik_cmd *c = state;
    free(c->x);
    free(c->pts);
    dfx_model_free(c->m);
    if (c->be) dfx_backend_destroy(c->be);
}

const cli_steps cmd_likelihood = {sizeof(lik_cmd), lik_parse, lik_check, lik_run, lik_report,
                                  lik_release};
