/* difflux conservativity: is a model's field a gradient? (MATH.md section 4) */
#include "args.h"
#include "cli.h"
#include "difflux.h"
#include "draw.h"
#include "core/error.h"
#include "io/fileio.h"
#include "sampler/sampler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_TIMES 64

typedef struct progress {
    int on;
    int done, total;
    const char *what;
} progress;

static void on_progress(void *ctx, double frac)
{
    progress *p = ctx;
    if (!p->on) return;
    double f = (p->done + frac) / p->total;
    int w = 30, k = (int)(f * w + 0.5);
    fprintf(stderr, "\r%-10s [", p->what);
    for (int i = 0; i < w; i++) fputc(i < k ? '#' : '.', stderr);
    fprintf(stderr, "] %3.0f%%", 100 * f);
    fflush(stderr);
}

/* Base points x0 in the samplers' space: IDX images, or the model's own samples. */
static float *base_points(dfx_model *m, const char *data, int n, uint64_t seed,
                          const char *sampler, int steps, int quiet, dfx_error *err)
{
    const dfx_model_info *mi = dfx_model_get_info(m);
    const size_t D = (size_t)mi->channels * mi->height * mi->width;
    const int logspace = mi->path.family == DFX_PATH_DALE;
    float *x = malloc((size_t)n * D * sizeof(float));
    if (!x) {
        snprintf(err->msg, sizeof err->msg, "out of memory for %d points", n);
        return NULL;
    }
    if (data) {
        uint8_t *px = NULL;
        int cnt, h, w;
        if (dfx_read_idx_images(data, &px, &cnt, &h, &w, err)) goto fail;
        if (mi->channels != 1 || h != mi->height || w != mi->width) {
            snprintf(err->msg, sizeof err->msg,
                     "--data %s: %dx%d images, but the model takes %dx%dx%d", data, h, w,
                     mi->channels, mi->height, mi->width);
            free(px);
            goto fail;
        }
        if (cnt < n) {
            snprintf(err->msg, sizeof err->msg, "--data %s: %d images, fewer than --points %d",
                     data, cnt, n);
            free(px);
            goto fail;
        }
        /* evenly spread through the file */
        for (int i = 0; i < n; i++) {
            const uint8_t *img = px + (size_t)((long)i * cnt / n) * D;
            for (size_t j = 0; j < D; j++) {
                double v = mi->range_lo + (mi->range_hi - mi->range_lo) * img[j] / 255.0;
                x[(size_t)i * D + j] = (float)(logspace ? log(v) : v);
            }
        }
        free(px);
        return x;
    }
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = sampler;
    o.steps = steps;
    o.seed = seed;
    dfx_sampler *s = dfx_sampler_create(m, &o, n, err);
    if (!s) goto fail;
    dfx_sample_stats st;
    if (!quiet) fprintf(stderr, "drawing %d base points with %s...\n", n, sampler);
    int rc = dfx_sampler_run(s, 0, n, x, &st, err);
    dfx_sampler_free(s);
    if (rc) goto fail;
    if (logspace)
        for (size_t j = 0; j < (size_t)n * D; j++) x[j] = logf(x[j] > 1e-30f ? x[j] : 1e-30f);
    return x;
fail:
    free(x);
    return NULL;
}

static void print_table(const char *name, const dfx_cons_result *r, int nt)
{
    printf("\n%s\n", name);
    printf("%8s  %-19s %-19s", "t", "asymmetry +- se", "patch +- se");
    for (int k = 0; k < r[0].nradii; k++) printf(" circ r=%-5g", r[0].radii[k]);
    for (int k = 0; k < r[0].nradii; k++) printf(" path r=%-5g", r[0].radii[k]);
    printf("  %s\n", "||J||_F");
    for (int i = 0; i < nt; i++) {
        printf("%8.4f  %8.2e +- %-7.1e %8.2e +- %-7.1e", r[i].t, r[i].asym, r[i].asym_se,
               r[i].patch, r[i].patch_se);
        for (int k = 0; k < r[i].nradii; k++) printf(" %12.2e", r[i].circ[k]);
        for (int k = 0; k < r[i].nradii; k++) printf(" %12.2e", r[i].pathdep[k]);
        printf("  %.3e\n", r[i].jnorm);
    }
}

static int write_csv(const char *file, const char *const *names, dfx_cons_result *const *res,
                     int nmodels, int nt, dfx_error *err)
{
    dfx_atomic a;
    if (dfx_atomic_open(&a, file, err)) return -1;
    FILE *f = a.fp;
    const dfx_cons_result *r0 = res[0];
    fprintf(f, "model,t,asym,asym_se,jnorm,patch,patch_se");
    for (int k = 0; k < r0->nradii; k++)
        fprintf(f, ",circ_r%g,circ_se_r%g", r0->radii[k], r0->radii[k]);
    for (int k = 0; k < r0->nradii; k++)
        fprintf(f, ",pathdep_r%g,pathdep_se_r%g", r0->radii[k], r0->radii[k]);
    fprintf(f, "\n");
    for (int mdl = 0; mdl < nmodels; mdl++)
        for (int i = 0; i < nt; i++) {
            const dfx_cons_result *r = &res[mdl][i];
            fprintf(f, "%s,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g", names[mdl], r->t, r->asym, r->asym_se,
                    r->jnorm, r->patch, r->patch_se);
            for (int k = 0; k < r->nradii; k++) fprintf(f, ",%.9g,%.9g", r->circ[k], r->circ_se[k]);
            for (int k = 0; k < r->nradii; k++)
                fprintf(f, ",%.9g,%.9g", r->pathdep[k], r->pathdep_se[k]);
            fprintf(f, "\n");
        }
    return dfx_atomic_commit(&a, err);
}

static cJSON *json_result(const dfx_cons_result *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "t", r->t);
    cJSON_AddNumberToObject(o, "asymmetry", r->asym);
    cJSON_AddNumberToObject(o, "asymmetry_se", r->asym_se);
    cJSON_AddNumberToObject(o, "jacobian_norm", r->jnorm);
    cJSON_AddNumberToObject(o, "patch_asymmetry", r->patch);
    cJSON_AddNumberToObject(o, "patch_asymmetry_se", r->patch_se);
    cJSON *loops = cJSON_AddArrayToObject(o, "loops");
    for (int k = 0; k < r->nradii; k++) {
        cJSON *l = cJSON_CreateObject();
        cJSON_AddNumberToObject(l, "radius", r->radii[k]);
        cJSON_AddNumberToObject(l, "circulation", r->circ[k]);
        cJSON_AddNumberToObject(l, "circulation_se", r->circ_se[k]);
        cJSON_AddNumberToObject(l, "path_dependence", r->pathdep[k]);
        cJSON_AddNumberToObject(l, "path_dependence_se", r->pathdep_se[k]);
        cJSON_AddItemToArray(loops, l);
    }
    return o;
}

static int write_json(const char *file, const char *const *names, dfx_cons_result *const *res,
                      int nmodels, int nt, const char *field, dfx_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "field", field);
    cJSON *models = cJSON_AddArrayToObject(root, "models");
    for (int mdl = 0; mdl < nmodels; mdl++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "model", names[mdl]);
        cJSON *a = cJSON_AddArrayToObject(m, "results");
        for (int i = 0; i < nt; i++) cJSON_AddItemToArray(a, json_result(&res[mdl][i]));
        cJSON_AddItemToArray(models, m);
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    int rc = txt ? dfx_write_text(file, txt, err) : -1;
    free(txt);
    return rc;
}

/* Four panels against t: asymmetry, patch asymmetry, circulation and path
 * dependence per radius; the model solid, the baseline dashed. */
static int write_plot(const char *file, const char *const *names, dfx_cons_result *const *res,
                      int nmodels, int nt, const char *field, dfx_error *err)
{
    const int R = res[0][0].nradii;
    const int per = 2 + 2 * R; /* series per model */
    double *buf = calloc((size_t)nmodels * per * 2 * nt + nt, sizeof(double));
    dfx_plot_series *s = calloc((size_t)nmodels * per, sizeof *s);
    char(*labels)[96] = calloc((size_t)nmodels * per, sizeof *labels);
    if (!buf || !s || !labels) {
        free(buf);
        free(s);
        free(labels);
        return snprintf(err->msg, sizeof err->msg, "out of memory"), -1;
    }
    double *ts = buf + (size_t)nmodels * per * 2 * nt;
    for (int i = 0; i < nt; i++) ts[i] = res[0][i].t;
    dfx_plot_series *asym = s, *patch = s + nmodels, *circ = s + 2 * nmodels,
                    *path = s + 2 * nmodels + nmodels * R;
    for (int mdl = 0; mdl < nmodels; mdl++) {
        const dfx_cons_result *r = res[mdl];
        for (int q = 0; q < per; q++) {
            double *y = buf + ((size_t)mdl * per + q) * 2 * nt, *e = y + nt;
            for (int i = 0; i < nt; i++) {
                switch (q) {
                case 0: y[i] = r[i].asym; e[i] = r[i].asym_se; break;
                case 1: y[i] = r[i].patch; e[i] = r[i].patch_se; break;
                default:
                    if (q - 2 < R) {
                        y[i] = r[i].circ[q - 2];
                        e[i] = r[i].circ_se[q - 2];
                    } else {
                        y[i] = r[i].pathdep[q - 2 - R];
                        e[i] = r[i].pathdep_se[q - 2 - R];
                    }
                }
            }
            dfx_plot_series *se;
            char *lab = labels[mdl * per + q];
            if (q == 0) se = &asym[mdl], snprintf(lab, 96, "%s", names[mdl]);
            else if (q == 1) se = &patch[mdl], snprintf(lab, 96, "%s", names[mdl]);
            else if (q - 2 < R)
                se = &circ[mdl * R + q - 2],
                snprintf(lab, 96, "%s r=%g|x|", names[mdl], r[0].radii[q - 2]);
            else
                se = &path[mdl * R + q - 2 - R],
                snprintf(lab, 96, "%s r=%g|x|", names[mdl], r[0].radii[q - 2 - R]);
            *se = (dfx_plot_series){lab, nt, ts, y, e, mdl > 0, q < 2 ? 0 : (q - 2) % R};
        }
    }
    char t1[128], t2[128];
    snprintf(t1, sizeof t1, "Jacobian asymmetry of the %s", field);
    snprintf(t2, sizeof t2, "exact asymmetry of a pixel patch");
    dfx_plot_panel panels[4] = {
        {t1, "t", "||J - J#uT#d||#dF#u / ||J||#dF#u", 0, 1, nmodels, asym},
        {t2, "t", "||J#dPP#u - J#dPP#u#uT#d|| / ||J#dPP#u||", 0, 1, nmodels, patch},
        {"loop circulation (normalised)", "t", "|∮ f·dx| / ∮ |f| |dx|", 0, 1, nmodels * R, circ},
        {"path dependence (normalised)", "t", "|∫#dline#u f·dx - ∫#darc#u f·dx| / ∫ |f| |dx|", 0,
         1, nmodels * R, path},
    };
    char tmp[4200];
    int rc = dfx_outputs_adopt(file, tmp, sizeof tmp, err);
    if (rc == 0) {
        rc = dfx_plot_png(tmp, 2, 4, panels, 1400, 1000, err);
        if (dfx_outputs_adopt_done(tmp, rc == 0, rc == 0 ? err : NULL)) rc = -1;
    }
    free(buf);
    free(s);
    free(labels);
    return rc;
}

/* Results written by --csv, read back for --replot: one table per model
 * name, in file order. */
static int read_csv(const char *file, char names[2][256], dfx_cons_result *res[2], int *nmodels,
                    int *nt, dfx_error *err)
{
    FILE *f = fopen(file, "r");
    if (!f) return snprintf(err->msg, sizeof err->msg, "--replot %s: cannot open", file), -1;
    char line[4096];
    int R = 0, rc = -1;
    double radii[DFX_CONS_MAX_RADII];
    *nmodels = 0;
    int count[2] = {0, 0};
    if (!fgets(line, sizeof line, f) || strncmp(line, "model,t,asym,", 13) != 0) {
        snprintf(err->msg, sizeof err->msg, "--replot %s: not a conservativity CSV", file);
        goto done;
    }
    for (char *p = strstr(line, "circ_r"); p && R < DFX_CONS_MAX_RADII;
         p = strstr(p + 1, ",circ_r"))
        radii[R++] = atof(strstr(p, "circ_r") + 6);
    for (int i = 0; i < 2; i++) res[i] = calloc(MAX_TIMES, sizeof(dfx_cons_result));
    if (!res[0] || !res[1]) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        goto done;
    }
    int ln = 1;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *comma = strchr(line, ',');
        if (!comma) continue;
        *comma = 0;
        int mi = -1;
        for (int i = 0; i < *nmodels; i++)
            if (strcmp(names[i], line) == 0) mi = i;
        if (mi < 0) {
            if (*nmodels == 2) {
                snprintf(err->msg, sizeof err->msg, "--replot %s: more than two models", file);
                goto done;
            }
            mi = (*nmodels)++;
            snprintf(names[mi], 256, "%.255s", line);
        }
        if (count[mi] >= MAX_TIMES) continue;
        double v[6 + 4 * DFX_CONS_MAX_RADII];
        int nv = 0;
        for (char *q = comma + 1; *q && nv < 6 + 4 * R;) {
            char *end;
            v[nv++] = strtod(q, &end);
            if (end == q) break;
            q = *end == ',' ? end + 1 : end;
        }
        if (nv != 6 + 4 * R) {
            snprintf(err->msg, sizeof err->msg, "--replot %s: line %d has %d values, not %d", file,
                     ln, nv, 6 + 4 * R);
            goto done;
        }
        dfx_cons_result *r = &res[mi][count[mi]++];
        r->t = v[0], r->asym = v[1], r->asym_se = v[2], r->jnorm = v[3];
        r->patch = v[4], r->patch_se = v[5], r->nradii = R;
        for (int k = 0; k < R; k++) {
            r->radii[k] = radii[k];
            r->circ[k] = v[6 + 2 * k], r->circ_se[k] = v[7 + 2 * k];
            r->pathdep[k] = v[6 + 2 * R + 2 * k], r->pathdep_se[k] = v[7 + 2 * R + 2 * k];
        }
    }
    if (*nmodels == 0 || (*nmodels == 2 && count[0] != count[1])) {
        snprintf(err->msg, sizeof err->msg, "--replot %s: no rows, or models with different times",
                 file);
        goto done;
    }
    *nt = count[0];
    rc = 0;
done:
    fclose(f);
    return rc;
}

int cmd_conservativity(int argc, char **argv)
{
    const char *model = NULL, *baseline = NULL, *field_s = "score", *times = NULL,
               *radii_s = "0.01,0.1,0.5", *method_s = "exact", *data = NULL,
               *sampler = "heun", *device = "auto", *csv = NULL, *json = NULL, *plot = NULL,
               *replot = NULL, *max_memory = NULL;
    int points = 8, probes = 16, patch = 4, loop_nodes = 64, steps = 20, threads = 0,
        batch = 64, quiet = 0;
    uint64_t seed = 0;
    double fd_step = 1e-3;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "FILE", "model file (default: models/mnist-flow.safetensors)", 0},
        {"baseline", OPT_STR, &baseline, "FILE",
         "an exact Gaussian-mixture model of the same data, measured beside it", 0},
        {"field", OPT_STR, &field_s, "NAME", "score (default), velocity, eps, data or v", 0},
        {"t", OPT_STR, &times, "LIST",
         "comma-separated times (8 spread over the sampling interval)", 0},
        {"points", OPT_INT, &points, "N", "data-like points per time (8)", 0},
        {"data", OPT_STR, &data, "IDX",
         "take the points from these images (default: the model's own samples)", 0},
        {"sampler", OPT_STR, &sampler, "NAME", "sampler for the model's own samples (heun)", 0},
        {"steps", OPT_INT, &steps, "N", "its steps (20)", 0},
        {"probes", OPT_INT, &probes, "K", "random probe pairs per point (16; 0 = skip)", 0},
        {"patch", OPT_INT, &patch, "P",
         "side of the centred pixel patch for the exact sub-Jacobian (4; 0 = skip)", 0},
        {"loop-nodes", OPT_INT, &loop_nodes, "M", "trapezoid nodes per loop (64; 0 = skip)", 0},
        {"radii", OPT_STR, &radii_s, "LIST", "loop radii as fractions of |x_t| (0.01,0.1,0.5)",
         0},
        {"method", OPT_STR, &method_s, "M", "exact (forward-mode JVPs) or fd (central differences)",
         0},
        {"fd-step", OPT_DOUBLE, &fd_step, "H", "finite differences: relative step (1e-3)", 0},
        {"seed", OPT_U64, &seed, "S", "random seed for points, probes and planes (0)", 0},
        {"device", OPT_STR, &device, "D", "cpu, cuda or auto (auto)", 0},
        {"threads", OPT_INT, &threads, "T", "CPU threads, at most 1024 (0 = all cores)", 0},
        {"max-memory", OPT_STR, &max_memory, "SIZE",
         "refuse runs needing more, e.g. 8G (default: the memory available)", 0},
        {"batch", OPT_INT, &batch, "B", "rows per network evaluation (64)", 0},
        {"csv", OPT_STR, &csv, "FILE", "write the results as CSV", 0},
        {"json", OPT_STR, &json, "FILE", "write the results as JSON", 0},
        {"plot", OPT_STR, &plot, "FILE", "PNG plot of every metric against t", 0},
        {"replot", OPT_STR, &replot, "CSV",
         "measure nothing: plot (--plot) the results of an earlier --csv", 0},
        {"quiet", OPT_FLAG, &quiet, NULL, "no progress on stderr", 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    int help, rc = cli_parse("conservativity", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux conservativity [options]",
                  "Measures whether a model's field is a gradient (MATH.md section 4), at a\n"
                  "list of times, on data-like points x_t = a x0 + s z + m:\n"
                  "  asymmetry  ||J - J^T||_F / ||J||_F from random probe pairs, +- standard error\n"
                  "  patch      the same, exactly, on the block of a centred pixel patch\n"
                  "  circ       |loop integral of f.dx| / integral of |f||dx| on circles in\n"
                  "             random planes (periodic trapezoid rule)\n"
                  "  path       the same for a segment against a half circle between two points\n"
                  "All are 0 for a true score; --baseline measures an exact (conservative)\n"
                  "Gaussian-mixture model of the same data beside the model.\n"
                  "Options, output paths and memory are checked before any work; --csv,\n"
                  "--json and --plot are renamed into place together at the end.",
                  opts, nopts);
        return CLI_OK;
    }
    dfx_pred field;
    if (dfx_pred_parse(field_s, &field))
        return fprintf(stderr,
                       "difflux conservativity: unknown --field '%s' (score, velocity, eps, "
                       "data or v)\n",
                       field_s),
               CLI_USAGE;
    dfx_jvp_method method;
    if (strcmp(method_s, "exact") == 0) method = DFX_JVP_EXACT;
    else if (strcmp(method_s, "fd") == 0) method = DFX_JVP_FD;
    else
        return fprintf(stderr, "difflux conservativity: unknown --method '%s' (exact or fd)\n",
                       method_s),
               CLI_USAGE;
    dfx_cons_opts o;
    dfx_cons_opts_default(&o);
    if (cli_parse_list(radii_s, o.radii, DFX_CONS_MAX_RADII, &o.nradii))
        return fprintf(stderr,
                       "difflux conservativity: --radii expects up to %d numbers like "
                       "0.01,0.1, got '%s'\n",
                       DFX_CONS_MAX_RADII, radii_s),
               CLI_USAGE;
    for (int k = 0; k < o.nradii; k++)
        if (!(o.radii[k] > 0))
            return fprintf(stderr, "difflux conservativity: --radii must be positive\n"),
                   CLI_USAGE;
    if (points < 1 || probes < 0 || patch < 0 || batch < 1 || steps < 1 || steps > 1000000 ||
        (loop_nodes != 0 && loop_nodes < 4) || !(fd_step > 0))
        return fprintf(stderr, "difflux conservativity: need --points >= 1, --probes >= 0, "
                               "--patch >= 0, --batch >= 1, --steps >= 1 (at most 1000000), "
                               "--loop-nodes 0 or >= 4, --fd-step > 0\n"),
               CLI_USAGE;
    if (cli_check_threads("conservativity", threads)) return CLI_USAGE;
    double mem_limit = 0;
    if (cli_check_max_memory("conservativity", max_memory, &mem_limit)) return CLI_USAGE;
    if (!data && !cli_known_sampler(sampler))
        return fprintf(stderr, "difflux conservativity: unknown --sampler '%s' (difflux "
                               "samplers lists them)\n",
                       sampler),
               CLI_USAGE;
    if (times) {
        double tv[MAX_TIMES];
        int ntv = 0;
        if (cli_parse_list(times, tv, MAX_TIMES, &ntv))
            return fprintf(stderr, "difflux conservativity: --t expects up to %d times like "
                                   "0.1,0.5, got '%s'\n",
                           MAX_TIMES, times),
                   CLI_USAGE;
        for (int i = 0; i < ntv; i++)
            if (!(tv[i] >= 0 && tv[i] <= 1))
                return fprintf(stderr, "difflux conservativity: --t: %g is outside [0, 1]\n",
                               tv[i]),
                       CLI_USAGE;
    }
    {
        const cli_file outs[3] = {{"csv", csv}, {"json", json}, {"plot", plot}};
        const cli_file ins[4] = {{"model", model ? model : cli_default_model()},
                                 {"baseline", baseline},
                                 {"data", data},
                                 {"replot", replot}};
        if ((rc = cli_check_outputs("conservativity", outs, 3, ins, 4))) return rc;
    }
    if (probes == 0 && patch == 0 && loop_nodes == 0)
        return fprintf(stderr, "difflux conservativity: every metric is switched off\n"),
               CLI_USAGE;
    if (plot && !dfx_have_plots())
        return fprintf(stderr,
                       "difflux conservativity: --plot: this build has no plotting (install "
                       "libplplot-dev and plplot-driver-cairo, then reconfigure)\n"),
               CLI_FAIL;
    o.field = field;
    o.method = method;
    o.fd_step = fd_step;
    o.probes = probes;
    o.patch = patch;
    o.loop_nodes = loop_nodes;
    o.seed = seed;
    o.batch = batch;
    if (replot) {
        if (!plot)
            return fprintf(stderr, "difflux conservativity: --replot needs --plot FILE\n"),
                   CLI_USAGE;
        char rn[2][256];
        dfx_cons_result *rr[2] = {NULL, NULL};
        int nm = 0, ntr = 0;
        dfx_error e = {{0}};
        int r = read_csv(replot, rn, rr, &nm, &ntr, &e);
        const char *np[2] = {rn[0], rn[1]};
        for (int i = 0; i < nm && r == 0; i++) {
            const char *sl = strrchr(rn[i], '/');
            np[i] = sl ? sl + 1 : rn[i];
            ((char *)np[i])[strcspn(np[i], ".")] = 0;
        }
        if (r == 0) r = write_plot(plot, np, rr, nm, ntr, dfx_pred_name(field), &e);
        free(rr[0]);
        free(rr[1]);
        if (r) return fprintf(stderr, "difflux conservativity: %s\n", e.msg), CLI_FAIL;
        printf("wrote %s\n", plot);
        return CLI_OK;
    }
    if (!model) model = cli_default_model();

    dfx_error err = {{0}};
    dfx_backend *be = dfx_backend_create(device, threads, &err);
    if (!be) return fprintf(stderr, "difflux conservativity: %s\n", err.msg), CLI_FAIL;
    dfx_model *ms[2] = {NULL, NULL};
    dfx_cons_result *res[2] = {NULL, NULL};
    float *x0 = NULL;
    const char *names[2] = {model, baseline};
    const char *shortn[2] = {NULL, NULL};
    char shortbuf[2][128];
    int nmodels = baseline ? 2 : 1;
    double tl[MAX_TIMES];
    int nt = 0;
    rc = CLI_FAIL;
    for (int i = 0; i < nmodels; i++) {
        ms[i] = dfx_model_load(names[i], be, &err);
        if (!ms[i]) goto done;
    }
    const dfx_model_info *mi = dfx_model_get_info(ms[0]);
    if (baseline) {
        const dfx_model_info *bi = dfx_model_get_info(ms[1]);
        if (bi->channels != mi->channels || bi->height != mi->height || bi->width != mi->width) {
            snprintf(err.msg, sizeof err.msg,
                     "--baseline %s: %dx%dx%d images, but %s has %dx%dx%d", baseline,
                     bi->channels, bi->height, bi->width, model, mi->channels, mi->height,
                     mi->width);
            goto done;
        }
        if (memcmp(&bi->path, &mi->path, sizeof mi->path) != 0 &&
            dfx_model_set_path(ms[1], &mi->path, &err))
            goto done;
    }
    if (times) {
        if (cli_parse_list(times, tl, MAX_TIMES, &nt)) {
            snprintf(err.msg, sizeof err.msg, "--t expects up to %d times like 0.1,0.5, got '%s'",
                     MAX_TIMES, times);
            rc = CLI_USAGE;
            goto done;
        }
        for (int i = 0; i < nt; i++)
            if (!(tl[i] >= 0 && tl[i] <= 1)) {
                snprintf(err.msg, sizeof err.msg, "--t: %g is outside [0, 1]", tl[i]);
                rc = CLI_USAGE;
                goto done;
            }
    } else {
        static const double frac[] = {0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97};
        double tn, td;
        dfx_path_default_range(&mi->path, &tn, &td);
        nt = 8;
        for (int i = 0; i < nt; i++) tl[i] = tn + frac[i] * (td - tn);
    }
    {
        /* the base points' draw (one batch of --points), and per model the
         * network's scratch with its tangents for batches of --batch rows */
        dfx_sample_opts so;
        dfx_sample_opts_default(&so, ms[0]);
        so.sampler = sampler;
        const double row = (double)mi->channels * mi->height * mi->width * sizeof(float);
        double need = (data ? 0.0 : (double)dfx_sampler_bytes(ms[0], &so, points)) +
                      (double)points * row * (4.0 + 2.0 * (o.loop_nodes > 0));
        double weights = 0;
        for (int i = 0; i < nmodels; i++) {
            need += 2.0 * (double)dfx_model_scratch_bytes(ms[i], batch) + 6.0 * batch * row;
            weights += (double)dfx_model_get_info(ms[i])->n_params * sizeof(float);
        }
        char what[1200];
        snprintf(what, sizeof what, "measuring %s with %d points in batches of %d", model,
                 points, batch);
        if (cli_mem_check(need, need + weights, mem_limit, what,
                          "; fewer --points or a smaller --batch need less", &err))
            goto done;
    }
    x0 = base_points(ms[0], data, points, seed, sampler, steps, quiet, &err);
    if (!x0) goto done;
    for (int i = 0; i < nmodels; i++) {
        res[i] = calloc((size_t)nt, sizeof(dfx_cons_result));
        if (!res[i]) {
            snprintf(err.msg, sizeof err.msg, "out of memory");
            goto done;
        }
    }
    printf("model     %s (%s, %s path)%s%s\n", model, mi->kind, dfx_path_name(mi->path.family),
           baseline ? "; baseline " : "", baseline ? baseline : "");
    printf("field     %s, %s\n", dfx_pred_name(field),
           method == DFX_JVP_EXACT ? "exact JVPs (forward mode)" : "central differences");
    printf("points    %d per time: %s, noised along the path\n", points,
           data ? data : "the model's own samples");
    progress pr = {!quiet && isatty(2), 0, nmodels * nt, "measuring"};
    for (int i = 0; i < nmodels; i++)
        for (int k = 0; k < nt; k++, pr.done++)
            if (dfx_conservativity(ms[i], &o, x0, points, tl[k], &res[i][k], on_progress, &pr,
                                   &err)) {
                if (pr.on) fprintf(stderr, "\n");
                dfx_fail_prefix(&err, "%s at t = %g", names[i], tl[k]);
                goto done;
            }
    if (pr.on) fprintf(stderr, "\n");
    for (int i = 0; i < nmodels; i++) print_table(names[i], res[i], nt);
    dfx_outputs_begin(); /* CSV, JSON and plot renamed into place together */
    if (csv && write_csv(csv, names, res, nmodels, nt, &err)) goto done;
    if (json && write_json(json, names, res, nmodels, nt, dfx_pred_name(field), &err)) goto done;
    for (int i = 0; i < nmodels; i++) {
        const char *sl = strrchr(names[i], '/');
        shortn[i] = sl ? sl + 1 : names[i];
        snprintf(shortbuf[i], sizeof shortbuf[i], "%.*s", (int)strcspn(shortn[i], "."),
                 shortn[i]);
        shortn[i] = shortbuf[i];
    }
    if (plot && write_plot(plot, shortn, res, nmodels, nt, dfx_pred_name(field), &err)) goto done;
    if (dfx_outputs_commit(&err)) goto done;
    if (csv) printf("\nwrote %s\n", csv);
    if (json) printf("wrote %s\n", json);
    if (plot) printf("wrote %s\n", plot);
    rc = CLI_OK;
done:
    if (rc != CLI_OK) {
        dfx_outputs_abort();
        fprintf(stderr, "difflux conservativity: %s\n", err.msg);
    }
    free(x0);
    for (int i = 0; i < 2; i++) {
        free(res[i]);
        dfx_model_free(ms[i]);
    }
    dfx_backend_destroy(be);
    return rc;
}
