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
    int k = 0;
    for (int s = 0; s < ns; s++) {
        int first = k;
        for (int i = 0; i < nrows; i++) {
            if (rows[i].sampler != s) continue;
            fx[k] = rows[i].nfe;
            fy[k] = rows[i].fid;
            ky[k] = rows[i].kid;
            ke[k] = rows[i].kid_std;
            k++;
        }
        s1[s] = (dfx_plot_series){samplers[s], k - first, fx + first, fy + first, NULL, 0, -1};
        s2[s] = (dfx_plot_series){samplers[s], k - first, fx + first, ky + first, ke + first, 0,
                                  -1};
    }
    char t1[512], t2[512];
    const char *base = strrchr(model, '/');
    snprintf(t1, sizeof t1, "FID: %s", base ? base + 1 : model);
    snprintf(t2, sizeof t2, "KID (+- std over subsets)");
    dfx_plot_panel p[2] = {
        {t1, "network evaluations per sample", "FID", 1, 1, ns, s1},
        {t2, "network evaluations per sample", "KID", 1, 1, ns, s2},
    };
    char tmp[4200];
    int rc = dfx_outputs_adopt(file, tmp, sizeof tmp, err);
    if (rc == 0) {
        rc = dfx_plot_png(tmp, 2, 2, p, 1400, 560, err);
        if (dfx_outputs_adopt_done(tmp, rc == 0, rc == 0 ? err : NULL)) rc = -1;
    }
    free(x);
    free(s1);
    free(s2);
    return rc;
}

int cmd_sweep(int argc, char **argv)
{
    cli_draw d;
    cli_draw_init(&d);
    const char *classifier = NULL, *reference = NULL, *csv = "sweep.csv", *png = NULL;
    const char *samplers_arg = "euler,heun,dpmpp_2m", *steps_arg = "4,8,16,32";
    int n = 1000, kid_subsets = 10, kid_size = 1000;
    cli_opt opts[CLI_DRAW_OPTS + 12] = {
        {"samplers", OPT_STR, &samplers_arg, "A,B,..", "samplers (euler,heun,dpmpp_2m)", 0},
        {"steps", OPT_STR, &steps_arg, "N,M,..", "step counts (4,8,16,32)", 0},
        {"n", OPT_INT, &n, "COUNT", "samples per point (1000)", 0},
        {"classifier", OPT_STR, &classifier, "FILE", "feature network (as difflux eval)", 0},
        {"reference", OPT_STR, &reference, "FILE", "reference statistics (as difflux eval)", 0},
        {"csv", OPT_STR, &csv, "FILE", "table to write (sweep.csv)", 0},
        {"plot", OPT_STR, &png, "FILE.png", "plot FID and KID against evaluations", 0},
        {"kid-subsets", OPT_INT, &kid_subsets, "S", "KID: subsets averaged (10)", 0},
        {"kid-size", OPT_INT, &kid_size, "M", "KID: samples per subset (1000, at most n)", 0},
    };
    int nopts = cli_draw_options(&d, opts, 0);
    int help;
    int rc = cli_parse("sweep", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux sweep [options]",
                  "Runs every sampler of --samplers at every step count of --steps on one model,\n"
                  "draws --n samples each time (the same seeds: sample i starts from the same\n"
                  "noise) and measures them as difflux eval does. Writes a CSV table and, with\n"
                  "--plot, FID and KID against network evaluations per sample. Works under "
                  "mpirun.\nOptions, output paths and memory (--max-memory) are checked before "
                  "any sampling;\nthe CSV is rewritten (atomically) after every point.",
                  opts, nopts);
        return CLI_OK;
    }
    char sbuf[1024];
    const char *samplers[MAX_SAMPLERS];
    double stepv[MAX_STEPS];
    int ns, nsteps = 0;
    snprintf(sbuf, sizeof sbuf, "%s", samplers_arg);
    if ((ns = split_names(sbuf, samplers, MAX_SAMPLERS)) < 1)
        return fprintf(stderr, "difflux sweep: --samplers must list 1 to %d samplers\n",
                       MAX_SAMPLERS),
               CLI_USAGE;
    for (int i = 0; i < ns; i++)
        if (!cli_known_sampler(samplers[i]))
            return fprintf(stderr, "difflux sweep: unknown sampler '%s' in --samplers\n",
                           samplers[i]),
                   CLI_USAGE;
    if (cli_parse_list(steps_arg, stepv, MAX_STEPS, &nsteps))
        return fprintf(stderr, "difflux sweep: --steps must be a list of step counts\n"),
               CLI_USAGE;
    for (int i = 0; i < nsteps; i++)
        if (stepv[i] < 1 || stepv[i] > 100000 || stepv[i] != floor(stepv[i]))
            return fprintf(stderr, "difflux sweep: --steps entries must be integers >= 1\n"),
                   CLI_USAGE;
    if (n < 2 || kid_subsets < 1 || kid_size < 2)
        return fprintf(stderr, "difflux sweep: need --n >= 2, --kid-subsets >= 1, --kid-size >= "
                               "2\n"),
               CLI_USAGE;
    if (png && !dfx_have_plots())
        return fprintf(stderr, "difflux sweep: --plot: this build has no PLplot (apt-get "
                               "install libplplot-dev plplot-driver-cairo, then rebuild)\n"),
               CLI_FAIL;
    if ((rc = cli_draw_check("sweep", &d, opts, nopts, n))) return rc;
    {
        const cli_file outs[2] = {{"csv", csv}, {"plot", png}};
        const cli_file ins[3] = {
            {"model", d.model}, {"classifier", classifier}, {"reference", reference}};
        int orc = cli_mpi_rank() == 0 ? cli_check_outputs("sweep", outs, 2, ins, 3) : CLI_OK;
        if (cli_mpi_any(orc)) return orc ? orc : CLI_FAIL;
    }

    dfx_error err = {{0}};
    const int root = cli_mpi_rank() == 0;
    dfx_model *cls = NULL;
    float *images = NULL;
    cli_ref ref = {0};
    sweep_row *rows = calloc((size_t)ns * nsteps, sizeof *rows);
    int nrows = 0;
    rc = CLI_FAIL;
    if (!rows) {
        dfx_fail(&err, "out of memory");
        goto done;
    }
    if (cli_mpi_fail(cli_draw_open(&d, opts, nopts, &err), &err)) goto done;
    for (int s = 0; s < ns; s++) { /* the most demanding sampler of the list */
        d.o.sampler = samplers[s];
        if (cli_mpi_fail(cli_draw_memory(&d, n, 0, &err), &err)) goto done;
    }
    int orc = 0;
    if (root) {
        images = malloc((size_t)n * d.dim * sizeof(float));
        orc = images ? cli_quality_open(d.be, d.mi, &classifier, &reference, &cls, &ref, &err)
                     : dfx_fail(&err, "out of memory for %d samples", n);
    }
    if (cli_mpi_fail(orc, &err)) goto done;
    if (root && !d.quiet)
        printf("%-16s %6s %8s %10s %12s %8s %8s\n", "sampler", "steps", "nfe", "FID",
               "KID", "conf", "seconds");
    for (int s = 0; s < ns; s++)
        for (int k = 0; k < nsteps; k++) {
            d.o.sampler = samplers[s];
            d.o.steps = (int)stepv[k];
            char label[64];
            snprintf(label, sizeof label, "%s %d", samplers[s], d.o.steps);
            double t0 = cli_now(), nfe = 0.0;
            if (cli_draw_run(&d, n, images, &nfe, label, &err)) goto done;
            sweep_row *r = &rows[nrows++];
            r->sampler = s;
            r->steps = d.o.steps;
            r->nfe = nfe;
            r->seconds = cli_now() - t0;
            int qrc = 0;
            if (root) {
                cli_to_pixels(images, (size_t)n * d.dim, d.mi->range_lo, d.mi->range_hi);
                cli_quality q;
                cli_quality_opts qo = {kid_subsets, kid_size, d.seed, 0, 1};
                qrc = cli_quality_measure(cls, &ref, images, n, &qo, &q, &err);
                if (qrc == 0) {
                    r->fid = q.fid;
                    r->kid = q.kid;
                    r->kid_std = q.kid_std;
                    r->conf = q.confidence;
                    cli_quality_free(&q);
                    printf("%-16s %6d %8.1f %10.3f %12.4g %8.3f %8.1f\n", samplers[s], r->steps,
                           r->nfe, r->fid, r->kid, r->conf, r->seconds);
                    fflush(stdout);
                    /* the table so far survives an interrupted sweep */
                    qrc = write_csv(csv, rows, nrows, samplers, d.model, n, &err);
                }
            }
            if (cli_mpi_fail(qrc, &err)) goto done;
        }
    if (root && png && plot(png, rows, nrows, samplers, ns, d.model, &err)) goto done;
    if (root && !d.quiet)
        fprintf(stderr, "difflux sweep: %d points -> %s%s%s\n", nrows, csv, png ? ", " : "",
                png ? png : "");
    rc = CLI_OK;
done:
    if (rc != CLI_OK && (root || !cli_mpi_other(&err)))
        fprintf(stderr, "difflux sweep: %s\n", err.msg);
    free(rows);
    cli_ref_free(&ref);
    free(images);
    dfx_model_free(cls);
    cli_draw_close(&d);
    return rc;
}
