/* difflux sweep: sample quality against network evaluations for several
 * samplers and step counts on one model (CSV and a PNG plot). */
#define _POSIX_C_SOURCE 200809L
#include "args.h"
#include "core/error.h"
#include "cli.h"
#include "draw.h"
#include "io/fileio.h"
#include "quality.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_SAMPLERS = 16, MAX_STEPS = 32 };

typedef struct sweep_row {
    int sampler, steps;
    double nfe, fid, kid, kid_std, conf, seconds;
} sweep_row;

static int split_names(char *s, const char **names, int cap)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == cap) return -1;
        names[n++] = tok;
    }
    return n;
}

static int write_csv(const char *file, const sweep_row *rows, int nrows,
                     const char *const *samplers, const char *model, long n, dfx_error *err)
{
    size_t cap = 256 + (size_t)nrows * 200, len = 0;
    char *buf = malloc(cap);
    if (!buf) return dfx_fail(err, "out of memory");
    len += (size_t)snprintf(buf, cap,
                            "# difflux sweep of %s, %ld samples per point\n"
                            "sampler,steps,nfe,fid,kid,kid_std,confidence,seconds\n",
                            model, n);
    for (int i = 0; i < nrows && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s,%d,%.3f,%.6g,%.6g,%.6g,%.6g,%.3f\n",
                                samplers[rows[i].sampler], rows[i].steps, rows[i].nfe,
                                rows[i].fid, rows[i].kid, rows[i].kid_std, rows[i].conf,
                                rows[i].seconds);
    int rc = dfx_write_text(file, buf, err);
    free(buf);
    return rc;
}

static int plot(const char *file, const sweep_row *rows, int nrows, const char *const *samplers,
                int ns, const char *model, dfx_error *err)
{
    double *x = malloc((size_t)nrows * 4 * sizeof(double));
    dfx_plot_series *s1 = calloc((size_t)ns, sizeof *s1), *s2 = calloc((size_t)ns, sizeof *s2);
    if (!x || !s1 || !s2) {
        free(x);
        free(s1);
        free(s2);
        return dfx_fail(err, "out of memory");
    }
    double *fx = x, *fy = x + nrows, *ky = x + 2 * nrows, *ke = x + 3 * nrows;
    int k = 0, group[2] = {0, 0};
    for (int s = 0; s < ns; s++) {
        /* stochastic samplers dashed, colours counted per kind */
        const dfx_sampler_desc *sd = cli_sampler_desc(samplers[s]);
        int first = k, sto = sd && sd->stochastic, col = group[sto]++;
        for (int i = 0; i < nrows; i++) {
            if (rows[i].sampler != s) continue;
            fx[k] = rows[i].nfe;
            fy[k] = rows[i].fid;
            ky[k] = rows[i].kid;
            ke[k] = rows[i].kid_std;
            k++;
        }
        s1[s] = (dfx_plot_series){samplers[s], k - first, fx + first, fy + first, NULL, sto, col};
        s2[s] = (dfx_plot_series){samplers[s], k - first, fx + first, ky + first, ke + first, sto,
                                  col};
    }
    char t1[512], t2[512];
    const char *base = strrchr(model, '/');
    snprintf(t1, sizeof t1, "FID: %s", base ? base + 1 : model);
    snprintf(t2, sizeof t2, "KID (+- std over subsets)");
    dfx_plot_panel p[2] = {
        {t1, "network evaluations per sample", "FID", 1, 1, ns, s1},
        {t2, "network evaluations per sample", "KID", 1, 1, ns, s2},
    };
    int rc = cli_write_plot(file, 2, 2, p, 1400, 560, err);
    free(x);
    free(s1);
    free(s2);
    return rc;
}

static const char about[] =
    "Runs every sampler of --samplers at every step count of --steps on one model,\n"
    "draws --n samples each time (the same seeds: sample i starts from the same\n"
    "noise) and measures them as difflux eval does. Writes a CSV table and, with\n"
    "--plot, FID and KID against network evaluations per sample. Works under mpirun.\n"
    "With --nfe instead of --steps, each sampler runs the most steps whose network\n"
    "evaluations per sample (the final denoising step's included) fit each budget.\n"
    "--from-csv redraws the --plot of a table written before, without sampling\n"
    "(stochastic samplers dashed).\n"
    "Options, output paths and memory (--max-memory) are checked before any sampling;\n"
    "the CSV is rewritten (atomically) after every point.";

typedef struct sweep_cmd {
    cli_draw d;
    const char *classifier, *reference, *csv, *png, *samplers_arg, *steps_arg, *nfe_arg,
        *from_csv;
    char names[MAX_SAMPLERS][40], model_name[1024];
    int n, kid_subsets, kid_size;
    cli_opt opts[CLI_DRAW_OPTS + 12];
    int nopts;
    /* parsed */
    char sbuf[1024];
    const char *samplers[MAX_SAMPLERS];
    double stepv[MAX_STEPS];
    int ns, nsteps;
    /* the run */
    dfx_model *cls;
    cli_ref ref;
    float *images;
    sweep_row *rows;
    int nrows;
} sweep_cmd;

static int sweep_parse(void *state, int argc, char **argv)
{
    sweep_cmd *w = state;
    cli_draw_init(&w->d);
    w->csv = "sweep.csv";
    w->samplers_arg = "euler,heun,dpmpp_2m", w->steps_arg = "4,8,16,32";
    w->n = 1000, w->kid_subsets = 10, w->kid_size = 1000;
    const cli_opt own[] = {
        {"samplers", OPT_STR, &w->samplers_arg, "A,B,..", "samplers (euler,heun,dpmpp_2m)", 0},
        {"steps", OPT_STR, &w->steps_arg, "N,M,..", "step counts (4,8,16,32)", 0},
        {"nfe", OPT_STR, &w->nfe_arg, "B,C,..",
         "evaluation budgets per sample instead of --steps (e.g. 4,6,8,12,16,32)", 0},
        {"n", OPT_INT, &w->n, "COUNT", "samples per point (1000)", 0},
        {"classifier", OPT_STR, &w->classifier, "FILE", "feature network (as difflux eval)", 0},
        {"reference", OPT_STR, &w->reference, "FILE", "reference statistics (as difflux eval)",
         0},
        {"csv", OPT_STR, &w->csv, "FILE", "table to write (sweep.csv)", 0},
        {"plot", OPT_STR, &w->png, "FILE.png", "plot FID and KID against evaluations", 0},
        {"from-csv", OPT_STR, &w->from_csv, "FILE",
         "draw --plot from this sweep table instead of sampling", 0},
        cli_opt_kid_subsets(&w->kid_subsets),
        cli_opt_kid_size(&w->kid_size),
    };
    memcpy(w->opts, own, sizeof own);
    w->nopts = cli_draw_options(&w->d, w->opts, (int)(sizeof own / sizeof own[0]), 0);
    return cli_options("sweep", "difflux sweep [options]", about, argc, argv, w->opts, w->nopts);
}

/* --nfe: the most steps of sampler s whose evaluations per sample fit
 * `budget` (dfx_sampler_nfe, which counts before running); 0 if one step
 * does not, -1 with err set. */
static int budget_steps(sweep_cmd *w, int s, int budget, long *one_step, dfx_error *err)
{
    dfx_sample_opts o = w->d.o;
    o.sampler = w->samplers[s];
    for (int steps = budget / cli_sampler_desc(o.sampler)->nfe_per_step; steps >= 1; steps--) {
        o.steps = steps;
        dfx_sampler *smp = dfx_sampler_create(w->d.m, &o, 1, err);
        if (!smp) return -1;
        long nfe = dfx_sampler_nfe(smp);
        dfx_sampler_free(smp);
        if (nfe <= budget) return steps;
        *one_step = nfe;
    }
    return 0;
}

/* The sampler and step lists, the other checks that need no model, and
 * the outputs. */
static int sweep_check(void *state)
{
    sweep_cmd *w = state;
    snprintf(w->sbuf, sizeof w->sbuf, "%s", w->samplers_arg);
    if ((w->ns = split_names(w->sbuf, w->samplers, MAX_SAMPLERS)) < 1)
        return fprintf(stderr, "difflux sweep: --samplers must list 1 to %d samplers\n",
                       MAX_SAMPLERS),
               CLI_USAGE;
    for (int i = 0; i < w->ns; i++)
        if (!cli_known_sampler(w->samplers[i]))
            return fprintf(stderr, "difflux sweep: unknown sampler '%s' in --samplers\n",
                           w->samplers[i]),
                   CLI_USAGE;
    if (w->nfe_arg && cli_find(w->opts, w->nopts, "steps")->set)
        return fprintf(stderr, "difflux sweep: give --steps or --nfe, not both\n"), CLI_USAGE;
    const char *what = w->nfe_arg ? "--nfe" : "--steps";
    if (cli_parse_list(w->nfe_arg ? w->nfe_arg : w->steps_arg, w->stepv, MAX_STEPS, &w->nsteps))
        return fprintf(stderr, "difflux sweep: %s must be a list of integers\n", what),
               CLI_USAGE;
    for (int i = 0; i < w->nsteps; i++)
        if (w->stepv[i] < 1 || w->stepv[i] > 100000 || w->stepv[i] != floor(w->stepv[i]))
            return fprintf(stderr, "difflux sweep: %s entries must be integers >= 1\n", what),
                   CLI_USAGE;
    for (int i = 0; i < w->ns && w->nfe_arg; i++)
        if (cli_sampler_desc(w->samplers[i])->nfe_per_step < 1)
            return fprintf(stderr,
                           "difflux sweep: %s is adaptive: it has no step count to fit to --nfe "
                           "(sweep it with --steps, where its --rtol sets the cost)\n",
                           w->samplers[i]),
                   CLI_USAGE;
    if (w->n < 2 || w->kid_subsets < 1 || w->kid_size < 2)
        return fprintf(stderr, "difflux sweep: need --n >= 2, --kid-subsets >= 1, --kid-size >= "
                               "2\n"),
               CLI_USAGE;
    if (w->from_csv && !w->png)
        return fprintf(stderr, "difflux sweep: --from-csv needs --plot FILE.png\n"), CLI_USAGE;
    if (w->png && !dfx_have_plots())
        return fprintf(stderr, "difflux sweep: --plot: this build has no PLplot (apt-get "
                               "install libplplot-dev plplot-driver-cairo, then rebuild)\n"),
               CLI_FAIL;
    int rc = cli_draw_check("sweep", &w->d, w->opts, w->nopts, w->n);
    if (rc) return rc;
    const cli_file outs[2] = {{"csv", w->csv}, {"plot", w->png}};
    const cli_file ins[3] = {
        {"model", w->d.model}, {"classifier", w->classifier}, {"reference", w->reference}};
    return cli_draw_outputs("sweep", outs, 2, ins, 3);
}

/* Model, memory for the most demanding sampler of the list, and on rank 0
 * the samples' room and the classifier. */
static int sweep_open(sweep_cmd *w, dfx_error *err)
{
    cli_draw *d = &w->d;
    w->rows = calloc((size_t)w->ns * w->nsteps, sizeof *w->rows);
    if (!w->rows) return dfx_fail(err, "out of memory");
    if (cli_mpi_fail(cli_draw_open(d, w->opts, w->nopts, err), err)) return -1;
    for (int s = 0; s < w->ns; s++) {
        d->o.sampler = w->samplers[s];
        if (cli_mpi_fail(cli_draw_memory(d, w->n, 0, err), err)) return -1;
    }
    int orc = cli_mpi_rank() == 0 &&
              (cli_draw_images(d, w->n, &w->images, err) ||
               cli_quality_open(d->be, d->mi, &w->classifier, &w->reference, &w->cls, &w->ref,
                                err));
    return cli_mpi_fail(orc, err) ? -1 : 0;
}

/* One point: sampler s at steps; rank 0 measures it, prints its row and
 * rewrites the CSV. */
static int sweep_point(sweep_cmd *w, int s, int steps, dfx_error *err)
{
    cli_draw *d = &w->d;
    const int n = w->n;
    d->o.sampler = w->samplers[s];
    d->o.steps = steps;
    char label[64];
    snprintf(label, sizeof label, "%s %d", w->samplers[s], steps);
    double t0 = dfx_seconds(), nfe = 0.0;
    if (cli_draw_run(d, n, w->images, &nfe, label, err)) return -1;
    sweep_row *r = &w->rows[w->nrows++];
    r->sampler = s;
    r->steps = steps;
    r->nfe = nfe;
    r->seconds = dfx_seconds() - t0;
    int qrc = 0;
    if (cli_mpi_rank() == 0) {
        cli_to_pixels(w->images, (size_t)n * d->dim, d->mi->range_lo, d->mi->range_hi);
        cli_quality q;
        cli_quality_opts qo = {w->kid_subsets, w->kid_size, d->seed, 0, 1};
        qrc = cli_quality_measure(w->cls, &w->ref, w->images, n, &qo, &q, err);
        if (qrc == 0) {
            r->fid = q.fid;
            r->kid = q.kid;
            r->kid_std = q.kid_std;
            r->conf = q.confidence;
            cli_quality_free(&q);
            printf("%-16s %6d %8.1f %10.3f %12.4g %8.3f %8.1f\n", w->samplers[s], r->steps,
                   r->nfe, r->fid, r->kid, r->conf, r->seconds);
            fflush(stdout);
            /* the table so far survives an interrupted sweep */
            qrc = write_csv(w->csv, w->rows, w->nrows, w->samplers, d->model, n, err);
        }
    }
    return cli_mpi_fail(qrc, err) ? -1 : 0;
}

/* --from-csv: the rows, samplers and model of a table that write_csv wrote. */
static int read_csv(sweep_cmd *w, dfx_error *err)
{
    size_t len = 0;
    char *txt = dfx_read_text(w->from_csv, "sweep table", 1 << 24, &len, err);
    if (!txt) return -1;
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += txt[i] == '\n';
    w->rows = calloc((size_t)lines + 1, sizeof *w->rows);
    int rc = w->rows ? 0 : dfx_fail(err, "out of memory");
    int ln = 0;
    w->ns = 0;
    snprintf(w->model_name, sizeof w->model_name, "%s", w->from_csv);
    for (char *line = strtok(txt, "\n"); line && rc == 0; line = strtok(NULL, "\n")) {
        ln++;
        char name[40];
        sweep_row r = {0};
        if (sscanf(line, "# difflux sweep of %1000[^,],", w->model_name) == 1) continue;
        if (line[0] == '#' || strncmp(line, "sampler,", 8) == 0) continue;
        if (sscanf(line, "%39[^,],%d,%lf,%lf,%lf,%lf,%lf,%lf", name, &r.steps, &r.nfe, &r.fid,
                   &r.kid, &r.kid_std, &r.conf, &r.seconds) != 8) {
            rc = dfx_fail(err, "%s: line %d is not a sweep row (sampler,steps,nfe,fid,kid,kid_std,"
                               "confidence,seconds)",
                          w->from_csv, ln);
            break;
        }
        int s = 0;
        while (s < w->ns && strcmp(w->names[s], name) != 0) s++;
        if (s == w->ns) {
            if (w->ns == MAX_SAMPLERS) {
                rc = dfx_fail(err, "%s: more than %d samplers", w->from_csv, MAX_SAMPLERS);
                break;
            }
            snprintf(w->names[w->ns], sizeof w->names[0], "%s", name);
            w->samplers[w->ns] = w->names[w->ns];
            w->ns++;
        }
        r.sampler = s;
        w->rows[w->nrows++] = r;
    }
    free(txt);
    if (rc == 0 && w->nrows == 0) rc = dfx_fail(err, "%s: no sweep rows", w->from_csv);
    w->d.model = w->model_name;
    return rc;
}

static int sweep_run(void *state, dfx_error *err)
{
    sweep_cmd *w = state;
    const int root = cli_mpi_rank() == 0;
    if (w->from_csv) return root ? read_csv(w, err) : 0;
    if (sweep_open(w, err)) return -1;
    if (root && !w->d.quiet)
        printf("%-16s %6s %8s %10s %12s %8s %8s\n", "sampler", "steps", "nfe", "FID", "KID",
               "conf", "seconds");
    for (int s = 0; s < w->ns; s++)
        for (int k = 0, last = 0; k < w->nsteps; k++) {
            int steps = (int)w->stepv[k];
            long one = 0;
            if (w->nfe_arg && (steps = budget_steps(w, s, steps, &one, err)) < 0) return -1;
            if (steps == 0 || (w->nfe_arg && steps == last)) {
                if (root && !w->d.quiet && steps == 0)
                    printf("%-16s  (skipped: one step takes %ld evaluations, over the budget of "
                           "%d)\n",
                           w->samplers[s], one, (int)w->stepv[k]);
                else if (root && !w->d.quiet)
                    printf("%-16s  (budget %d: no more steps fit than at the budget before, "
                           "%d)\n",
                           w->samplers[s], (int)w->stepv[k], steps);
                continue;
            }
            if (sweep_point(w, s, steps, err)) return -1;
            last = steps;
        }
    return 0;
}

/* Rank 0: the plot and the closing line. */
static int sweep_report(void *state, dfx_error *err)
{
    const sweep_cmd *w = state;
    if (cli_mpi_rank() != 0) return 0;
    if (w->png && plot(w->png, w->rows, w->nrows, w->samplers, w->ns, w->d.model, err))
        return -1;
    if (!w->d.quiet)
        fprintf(stderr, "difflux sweep: %d points -> %s%s%s\n", w->nrows,
                w->from_csv ? "" : w->csv, w->png && !w->from_csv ? ", " : "",
                w->png ? w->png : "");
    return 0;
}

static void sweep_release(void *state)
{
    sweep_cmd *w = state;
    free(w->rows);
    cli_ref_free(&w->ref);
    free(w->images);
    dfx_model_free(w->cls);
    cli_draw_close(&w->d);
}

const cli_steps cmd_sweep = {sizeof(sweep_cmd), sweep_parse, sweep_check, sweep_run,
                             sweep_report, sweep_release};
