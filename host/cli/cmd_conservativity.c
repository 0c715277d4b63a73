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

/* One model's table; with `exact` (the baseline at the same t, points and
 * field) its ||J||_F beside the model's ||J - J^T||_F. */
static void print_table(const char *name, const dfx_cons_result *r, const dfx_cons_result *exact,
                        int nt)
{
    printf("\n%s (field: %s)\n", name, dfx_pred_name(r[0].field));
    printf("%8s  %-19s %-19s %-19s %-10s", "t", "asymmetry +- se", "iso-removed +- se",
           "||J - J^T||_F +- se", "||J||_F");
    if (exact) printf(" %-10s %-9s", "exact ||J||", "ratio");
    printf(" %-19s", "patch +- se");
    for (int k = 0; k < r[0].nradii; k++) printf(" circ r=%-5g", r[0].radii[k]);
    for (int k = 0; k < r[0].nradii; k++) printf(" path r=%-5g", r[0].radii[k]);
    printf("\n");
    for (int i = 0; i < nt; i++) {
        char iso[40];
        /* J = c I to rounding (the memorising mixture): rounding over rounding */
        if (r[i].dev < 1e-4 * r[i].jnorm) snprintf(iso, sizeof iso, "0/0 (J = c I)");
        else snprintf(iso, sizeof iso, "%8.2e +- %-7.1e", r[i].iso, r[i].iso_se);
        printf("%8.4f  %8.2e +- %-7.1e %-19s %8.2e +- %-7.1e %-10.3e", r[i].t, r[i].asym,
               r[i].asym_se, iso, r[i].abs, r[i].abs_se, r[i].jnorm);
        if (exact) printf(" %-11.3e %-9.2e", exact[i].jnorm, r[i].abs / exact[i].jnorm);
        printf(" %8.2e +- %-7.1e", r[i].patch, r[i].patch_se);
        for (int k = 0; k < r[i].nradii; k++) printf(" %12.2e", r[i].circ[k]);
        for (int k = 0; k < r[i].nradii; k++) printf(" %12.2e", r[i].pathdep[k]);
        printf("\n");
    }
    printf("every field from the same JVPs: ||J - J^T||_F / ||J||_F +- se (* native)\n%8s",
           "t");
    for (int w = 0; w < DFX_PRED_COUNT; w++) {
        char h[40];
        snprintf(h, sizeof h, "%s%s", dfx_pred_name((dfx_pred)w), w == (int)r[0].field ? "*" : "");
        printf("  %-19s", h);
    }
    printf("\n");
    for (int i = 0; i < nt; i++) {
        printf("%8.4f", r[i].t);
        for (int w = 0; w < DFX_PRED_COUNT; w++)
            printf("  %8.2e +- %-7.1e", r[i].fields[w].asym, r[i].fields[w].asym_se);
        printf("\n");
    }
}

/* The CSV's columns: model, field, then CSV_FIXED numbers, CSV_PER for
 * each prediction type, and 4 per loop radius. */
enum { CSV_FIXED = 11, CSV_PER = 5 };

static int write_csv(const char *file, const char *const *names, dfx_cons_result *const *res,
                     int nmodels, int nt, dfx_error *err)
{
    dfx_atomic a;
    if (dfx_atomic_open(&a, file, err)) return -1;
    FILE *f = a.fp;
    const dfx_cons_result *r0 = res[0];
    fprintf(f, "model,field,t,asym,asym_se,iso,iso_se,abs,abs_se,jnorm,dev,patch,patch_se");
    for (int w = 0; w < DFX_PRED_COUNT; w++) {
        const char *n = dfx_pred_name((dfx_pred)w);
        fprintf(f, ",asym_%s,asym_se_%s,abs_%s,abs_se_%s,jnorm_%s", n, n, n, n, n);
    }
    for (int k = 0; k < r0->nradii; k++)
        fprintf(f, ",circ_r%g,circ_se_r%g", r0->radii[k], r0->radii[k]);
    for (int k = 0; k < r0->nradii; k++)
        fprintf(f, ",pathdep_r%g,pathdep_se_r%g", r0->radii[k], r0->radii[k]);
    fprintf(f, "\n");
    for (int mdl = 0; mdl < nmodels; mdl++)
        for (int i = 0; i < nt; i++) {
            const dfx_cons_result *r = &res[mdl][i];
            fprintf(f, "%s,%s,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g", names[mdl],
                    dfx_pred_name(r->field), r->t, r->asym, r->asym_se, r->iso, r->iso_se, r->abs,
                    r->abs_se, r->jnorm, r->dev, r->patch, r->patch_se);
            for (int w = 0; w < DFX_PRED_COUNT; w++) {
                const dfx_field_asym *fa = &r->fields[w];
                fprintf(f, ",%.9g,%.9g,%.9g,%.9g,%.9g", fa->asym, fa->asym_se, fa->abs,
                        fa->abs_se, fa->jnorm);
            }
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
    cJSON_AddStringToObject(o, "field", dfx_pred_name(r->field));
    cJSON_AddNumberToObject(o, "asymmetry", r->asym);
    cJSON_AddNumberToObject(o, "asymmetry_se", r->asym_se);
    cJSON_AddNumberToObject(o, "asymmetry_isotropic_removed", r->iso);
    cJSON_AddNumberToObject(o, "asymmetry_isotropic_removed_se", r->iso_se);
    cJSON_AddNumberToObject(o, "antisymmetric_norm", r->abs);
    cJSON_AddNumberToObject(o, "antisymmetric_norm_se", r->abs_se);
    cJSON_AddNumberToObject(o, "jacobian_norm", r->jnorm);
    cJSON_AddNumberToObject(o, "deviatoric_norm", r->dev);
    cJSON_AddNumberToObject(o, "patch_asymmetry", r->patch);
    cJSON_AddNumberToObject(o, "patch_asymmetry_se", r->patch_se);
    cJSON *fl = cJSON_AddObjectToObject(o, "fields");
    for (int w = 0; w < DFX_PRED_COUNT; w++) {
        cJSON *e = cJSON_AddObjectToObject(fl, dfx_pred_name((dfx_pred)w));
        cJSON_AddNumberToObject(e, "asymmetry", r->fields[w].asym);
        cJSON_AddNumberToObject(e, "asymmetry_se", r->fields[w].asym_se);
        cJSON_AddNumberToObject(e, "antisymmetric_norm", r->fields[w].abs);
        cJSON_AddNumberToObject(e, "antisymmetric_norm_se", r->fields[w].abs_se);
        cJSON_AddNumberToObject(e, "jacobian_norm", r->fields[w].jnorm);
    }
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
                      int nmodels, int nt, dfx_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "field", dfx_pred_name(res[0][0].field));
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

/* One series of a plot, its values and errors picked from the results. */
typedef double (*pick_fn)(const dfx_cons_result *r, int arg, int se);

static double pick_field(const dfx_cons_result *r, int w, int se)
{
    return se ? r->fields[w].asym_se : r->fields[w].asym;
}
static double pick_iso(const dfx_cons_result *r, int k, int se)
{
    (void)k;
    return se ? r->iso_se : r->iso;
}
static double pick_abs(const dfx_cons_result *r, int k, int se)
{
    (void)k;
    return se ? r->abs_se : r->abs;
}
static double pick_jnorm(const dfx_cons_result *r, int k, int se)
{
    (void)k;
    return se ? NAN : r->jnorm;
}
static double pick_patch(const dfx_cons_result *r, int k, int se)
{
    (void)k;
    return se ? r->patch_se : r->patch;
}
static double pick_circ(const dfx_cons_result *r, int k, int se)
{
    return se ? r->circ_se[k] : r->circ[k];
}
static double pick_path(const dfx_cons_result *r, int k, int se)
{
    return se ? r->pathdep_se[k] : r->pathdep[k];
}

typedef struct plot_buf {
    dfx_plot_series *s;
    double *v;
    char (*labels)[96];
    int n, cap, nt;
    const double *ts;
} plot_buf;

static void add_series(plot_buf *b, const dfx_cons_result *r, pick_fn pick, int arg, int dashed,
                       int color, const char *label)
{
    if (b->n >= b->cap) return;
    double *y = b->v + (size_t)b->n * 2 * b->nt, *e = y + b->nt;
    for (int i = 0; i < b->nt; i++) y[i] = pick(&r[i], arg, 0), e[i] = pick(&r[i], arg, 1);
    snprintf(b->labels[b->n], 96, "%s", label);
    b->s[b->n] = (dfx_plot_series){b->labels[b->n], b->nt, b->ts, y, e, dashed, color};
    b->n++;
}

/* Six panels against t: the plain ratio of every field; the ratio with the
 * isotropic part removed; ||J - J^T||_F against the baseline's ||J||_F;
 * the patch; circulation and path dependence per radius. The model solid,
 * the baseline (the exact mixture) dashed. */
static int write_plot(const char *file, const char *const *names, dfx_cons_result *const *res,
                      int nmodels, int nt, dfx_error *err)
{
    const int R = res[0][0].nradii, cap = DFX_PRED_COUNT + 8 + 2 * R * 2 + 8;
    plot_buf b = {calloc((size_t)cap, sizeof(dfx_plot_series)),
                  calloc((size_t)cap * 2 * nt + nt, sizeof(double)),
                  calloc((size_t)cap, sizeof *b.labels), 0, cap, nt, NULL};
    if (!b.s || !b.v || !b.labels) {
        free(b.s);
        free(b.v);
        free(b.labels);
        return snprintf(err->msg, sizeof err->msg, "out of memory"), -1;
    }
    double *ts = b.v + (size_t)cap * 2 * nt;
    for (int i = 0; i < nt; i++) ts[i] = res[0][i].t;
    b.ts = ts;
    const int field = (int)res[0][0].field;
    char lab[96];
    int start[7];
    start[0] = b.n; /* plain ratio: every field of the model, the baseline's measured one */
    for (int w = 0; w < DFX_PRED_COUNT; w++) {
        snprintf(lab, sizeof lab, "%s%s", dfx_pred_name((dfx_pred)w),
                 w == field ? " (measured)" : "");
        add_series(&b, res[0], pick_field, w, 0, w, lab);
    }
    for (int m = 1; m < nmodels; m++) {
        snprintf(lab, sizeof lab, "%s %s", names[m], dfx_pred_name((dfx_pred)field));
        add_series(&b, res[m], pick_field, field, 1, field, lab);
    }
    start[1] = b.n;
    /* the model alone: the memorising mixture's J is isotropic to rounding
     * (one component dominates), so its ratio is 0 / 0 */
    add_series(&b, res[0], pick_iso, 0, 0, 0, names[0]);
    start[2] = b.n;
    for (int m = 0; m < nmodels; m++) {
        snprintf(lab, sizeof lab, "%s ||J - J#uT#d||", names[m]);
        add_series(&b, res[m], pick_abs, 0, m > 0, 0, lab);
        snprintf(lab, sizeof lab, "%s ||J||", names[m]);
        add_series(&b, res[m], pick_jnorm, 0, m > 0, 1, lab);
    }
    start[3] = b.n;
    for (int m = 0; m < nmodels; m++) add_series(&b, res[m], pick_patch, 0, m > 0, 0, names[m]);
    start[4] = b.n;
    for (int m = 0; m < nmodels; m++)
        for (int k = 0; k < R; k++) {
            snprintf(lab, sizeof lab, "%s r=%g|x|", names[m], res[m][0].radii[k]);
            add_series(&b, res[m], pick_circ, k, m > 0, k, lab);
        }
    start[5] = b.n;
    for (int m = 0; m < nmodels; m++)
        for (int k = 0; k < R; k++) {
            snprintf(lab, sizeof lab, "%s r=%g|x|", names[m], res[m][0].radii[k]);
            add_series(&b, res[m], pick_path, k, m > 0, k, lab);
        }
    start[6] = b.n;
    char t3[128];
    snprintf(t3, sizeof t3, "size of the %s's asymmetry", dfx_pred_name((dfx_pred)field));
    dfx_plot_panel panels[6] = {
        {"asymmetry of each field of the model", "t", "||J - J#uT#d||#dF#u / ||J||#dF#u", 0, 1,
         start[1] - start[0], b.s + start[0]},
        {"asymmetry, isotropic part removed", "t",
         "||J - J#uT#d||#dF#u / ||J - (tr J / D) I||#dF#u", 0, 1, start[2] - start[1],
         b.s + start[1]},
        {t3, "t", "Frobenius norm", 0, 1, start[3] - start[2], b.s + start[2]},
        {"exact asymmetry of a pixel patch", "t", "||J#dPP#u - J#dPP#u#uT#d|| / ||J#dPP#u||", 0,
         1, start[4] - start[3], b.s + start[3]},
        {"loop circulation (normalised)", "t", "|∮ f·dx| / ∮ |f| |dx|", 0, 1,
         start[5] - start[4], b.s + start[4]},
        {"path dependence (normalised)", "t", "|∫#dline#u f·dx - ∫#darc#u f·dx| / ∫ |f| |dx|", 0,
         1, start[6] - start[5], b.s + start[5]},
    };
    int rc = cli_write_plot(file, 3, 6, panels, 1800, 1300, err);
    free(b.s);
    free(b.v);
    free(b.labels);
    return rc;
}

/* Results written by --csv, read back for --replot: one table per model
 * name, in file order. */
static int read_csv(const char *file, char names[2][256], dfx_cons_result *res[2], int *nmodels,
                    int *nt, dfx_error *err)
{
    FILE *f = fopen(file, "r");
    if (!f) return snprintf(err->msg, sizeof err->msg, "--replot %s: cannot open", file), -1;
    char line[8192];
    int R = 0, rc = -1;
    double radii[DFX_CONS_MAX_RADII];
    *nmodels = 0;
    int count[2] = {0, 0};
    if (!fgets(line, sizeof line, f) || strncmp(line, "model,field,t,asym,", 19) != 0) {
        if (strncmp(line, "model,t,asym,", 13) == 0)
            snprintf(err->msg, sizeof err->msg,
                     "--replot %s: a conservativity CSV of an older difflux (no fields, errors "
                     "not clustered by point); measure again",
                     file);
        else
            snprintf(err->msg, sizeof err->msg, "--replot %s: not a conservativity CSV", file);
        goto done;
    }
    for (char *p = strstr(line, ",circ_r"); p && R < DFX_CONS_MAX_RADII;
         p = strstr(p + 1, ",circ_r"))
        radii[R++] = atof(p + 7);
    for (int i = 0; i < 2; i++) res[i] = calloc(MAX_TIMES, sizeof(dfx_cons_result));
    if (!res[0] || !res[1]) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        goto done;
    }
    const int want = CSV_FIXED + CSV_PER * DFX_PRED_COUNT + 4 * R;
    int ln = 1;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *comma = strchr(line, ',');
        char *comma2 = comma ? strchr(comma + 1, ',') : NULL;
        if (!comma2) continue;
        *comma = *comma2 = 0;
        dfx_pred field;
        if (dfx_pred_parse(comma + 1, &field)) {
            snprintf(err->msg, sizeof err->msg, "--replot %s: line %d: unknown field '%.40s'",
                     file, ln, comma + 1);
            goto done;
        }
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
        double v[CSV_FIXED + CSV_PER * DFX_PRED_COUNT + 4 * DFX_CONS_MAX_RADII];
        int nv = 0;
        for (char *q = comma2 + 1; *q && nv < want;) {
            char *end;
            v[nv++] = strtod(q, &end);
            if (end == q) break;
            q = *end == ',' ? end + 1 : end;
        }
        if (nv != want) {
            snprintf(err->msg, sizeof err->msg, "--replot %s: line %d has %d values, not %d", file,
                     ln, nv, want);
            goto done;
        }
        dfx_cons_result *r = &res[mi][count[mi]++];
        r->field = field;
        r->t = v[0], r->asym = v[1], r->asym_se = v[2], r->iso = v[3], r->iso_se = v[4];
        r->abs = v[5], r->abs_se = v[6], r->jnorm = v[7], r->dev = v[8];
        r->patch = v[9], r->patch_se = v[10], r->nradii = R;
        for (int w = 0; w < DFX_PRED_COUNT; w++) {
            const double *fv = v + CSV_FIXED + CSV_PER * w;
            r->fields[w] = (dfx_field_asym){fv[0], fv[1], fv[2], fv[3], fv[4]};
        }
        const double *lv = v + CSV_FIXED + CSV_PER * DFX_PRED_COUNT;
        for (int k = 0; k < R; k++) {
            r->radii[k] = radii[k];
            r->circ[k] = lv[2 * k], r->circ_se[k] = lv[2 * k + 1];
            r->pathdep[k] = lv[2 * R + 2 * k], r->pathdep_se[k] = lv[2 * R + 2 * k + 1];
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

static const char about[] =
    "Measures whether a model's field is a gradient (MATH.md section 4), at a\n"
    "list of times, on data-like points x_t = a x0 + s z + m. The field is the\n"
    "one the network predicts (--field native, the default) unless --field\n"
    "names another; every prediction type is A x + B f at one t, so the plain\n"
    "ratio of each is reported too, from the same probes:\n"
    "  asymmetry    ||J - J^T||_F / ||J||_F from random probe pairs: shrinks when\n"
    "               a field carries a large c I (the score near the noise end)\n"
    "  iso-removed  ||J - J^T||_F / ||J - (tr J / D) I||_F: the same for every\n"
    "               field of one model at one t\n"
    "  ||J - J^T||  the antisymmetric part's size; --baseline prints the exact\n"
    "               mixture's ||J||_F of the same field at the same points beside it\n"
    "  patch        ||J - J^T|| / ||J||, exactly, on the block of a centred pixel patch\n"
    "  circ         |loop integral of f.dx| / integral of |f||dx| on circles in\n"
    "               random planes (periodic trapezoid rule)\n"
    "  path         the same for a segment against a half circle between two points\n"
    "All are 0 for a true score. Standard errors treat the points as the sample\n"
    "(clustered by point: no error with one point; few points understate it).\n"
    "Options, output paths and memory are checked before any work; --csv,\n"
    "--json and --plot are renamed into place together at the end.";

typedef struct cons_cmd {
    const char *model, *baseline, *field_s, *times, *radii_s, *method_s, *data, *sampler,
        *device, *csv, *json, *plot, *replot, *max_memory, *perturb;
    int points, probes, patch, loop_nodes, steps, threads, batch, quiet;
    uint64_t seed;
    double fd_step, mem_limit;
    /* parsed */
    dfx_cons_opts o;
    dfx_perturb perturb_kind; /* --perturb */
    double perturb_lambda;
    double tl[MAX_TIMES]; /* --t, or 8 over the model's sampling interval */
    int nt;
    /* the run */
    dfx_backend *be;
    dfx_model *ms[2];
    const char *names[2];
    int nmodels;
    float *x0;
    dfx_cons_result *res[2];
} cons_cmd;

static int cons_parse(void *state, int argc, char **argv)
{
    cons_cmd *c = state;
    c->field_s = "native", c->radii_s = "0.01,0.1,0.5", c->method_s = "exact";
    c->sampler = "heun", c->device = "auto";
    c->points = 8, c->probes = 16, c->patch = 4, c->loop_nodes = 64, c->steps = 20;
    c->batch = 64, c->fd_step = 1e-3;
    cli_opt opts[] = {
        cli_opt_model(&c->model),
        {"baseline", OPT_STR, &c->baseline, "FILE",
         "an exact Gaussian-mixture model of the same data, measured beside it", 0},
        {"perturb", OPT_STR, &c->perturb, "KIND:L",
         "measure --model with its velocity v + L s M eps, M = rot, swap or scale (MATH.md 4.4)", 0},
        {"field", OPT_STR, &c->field_s, "NAME",
         "native (default: the model's own prediction), score, velocity, eps, data or v", 0},
        {"t", OPT_STR, &c->times, "LIST",
         "comma-separated times (8 spread over the sampling interval)", 0},
        {"points", OPT_INT, &c->points, "N", "data-like points per time (8)", 0},
        {"data", OPT_STR, &c->data, "IDX",
         "take the points from these images (default: the model's own samples)", 0},
        {"sampler", OPT_STR, &c->sampler, "NAME", "sampler for the model's own samples (heun)",
         0},
        {"steps", OPT_INT, &c->steps, "N", "its steps (20)", 0},
        {"probes", OPT_INT, &c->probes, "K",
         "random probe pairs per point (16; 0 = skip; the isotropic-removed ratio needs 2)", 0},
        {"patch", OPT_INT, &c->patch, "P",
         "side of the centred pixel patch for the exact sub-Jacobian (4; 0 = skip)", 0},
        {"loop-nodes", OPT_INT, &c->loop_nodes, "M", "trapezoid nodes per loop (64; 0 = skip)",
         0},
        {"radii", OPT_STR, &c->radii_s, "LIST",
         "loop radii as fractions of |x_t| (0.01,0.1,0.5)", 0},
        {"method", OPT_STR, &c->method_s, "M",
         "exact (forward-mode JVPs) or fd (central differences)", 0},
        {"fd-step", OPT_DOUBLE, &c->fd_step, "H", "finite differences: relative step (1e-3)", 0},
        {"seed", OPT_U64, &c->seed, "S", "random seed for points, probes and planes (0)", 0},
        cli_opt_device(&c->device),
        cli_opt_threads(&c->threads),
        cli_opt_max_memory(&c->max_memory),
        {"batch", OPT_INT, &c->batch, "B", "rows per network evaluation (64)", 0},
        {"csv", OPT_STR, &c->csv, "FILE", "write the results as CSV", 0},
        {"json", OPT_STR, &c->json, "FILE", "write the results as JSON", 0},
        {"plot", OPT_STR, &c->plot, "FILE", "PNG plot of every metric against t", 0},
        {"replot", OPT_STR, &c->replot, "CSV",
         "measure nothing: plot (--plot) the results of an earlier --csv", 0},
        {"quiet", OPT_FLAG, &c->quiet, NULL, "no progress on stderr", 0},
    };
    return cli_options("conservativity", "difflux conservativity [options]", about, argc, argv,
                       opts, (int)(sizeof opts / sizeof opts[0]));
}

/* Field, method, radii and times into c->o and c->tl, the other checks
 * that need no model, and the outputs. */
static int cons_check(void *state)
{
    cons_cmd *c = state;
    dfx_cons_opts *o = &c->o;
    dfx_pred field = DFX_PRED_COUNT; /* native */
    if (strcmp(c->field_s, "native") != 0 && dfx_pred_parse(c->field_s, &field))
        return fprintf(stderr,
                       "difflux conservativity: unknown --field '%s' (native, score, velocity, "
                       "eps, data or v)\n",
                       c->field_s),
               CLI_USAGE;
    dfx_jvp_method method;
    if (strcmp(c->method_s, "exact") == 0) method = DFX_JVP_EXACT;
    else if (strcmp(c->method_s, "fd") == 0) method = DFX_JVP_FD;
    else
        return fprintf(stderr, "difflux conservativity: unknown --method '%s' (exact or fd)\n",
                       c->method_s),
               CLI_USAGE;
    dfx_cons_opts_default(o);
    if (cli_parse_list(c->radii_s, o->radii, DFX_CONS_MAX_RADII, &o->nradii))
        return fprintf(stderr,
                       "difflux conservativity: --radii expects up to %d numbers like "
                       "0.01,0.1, got '%s'\n",
                       DFX_CONS_MAX_RADII, c->radii_s),
               CLI_USAGE;
    for (int k = 0; k < o->nradii; k++)
        if (!(o->radii[k] > 0))
            return fprintf(stderr, "difflux conservativity: --radii must be positive\n"),
                   CLI_USAGE;
    if (c->points < 1 || c->probes < 0 || c->patch < 0 || c->batch < 1 || c->steps < 1 ||
        c->steps > 1000000 || (c->loop_nodes != 0 && c->loop_nodes < 4) || !(c->fd_step > 0))
        return fprintf(stderr, "difflux conservativity: need --points >= 1, --probes >= 0, "
                               "--patch >= 0, --batch >= 1, --steps >= 1 (at most 1000000), "
                               "--loop-nodes 0 or >= 4, --fd-step > 0\n"),
               CLI_USAGE;
    if (c->perturb) {
        dfx_error e = {0};
        if (dfx_perturb_parse(c->perturb, &c->perturb_kind, &c->perturb_lambda, &e))
            return fprintf(stderr, "difflux conservativity: --perturb %s\n", e.msg), CLI_USAGE;
    }
    if (cli_check_threads("conservativity", c->threads)) return CLI_USAGE;
    if (cli_check_max_memory("conservativity", c->max_memory, &c->mem_limit)) return CLI_USAGE;
    if (!c->data && cli_check_sampler("conservativity", c->sampler)) return CLI_USAGE;
    if (c->times) {
        if (cli_parse_list(c->times, c->tl, MAX_TIMES, &c->nt))
            return fprintf(stderr, "difflux conservativity: --t expects up to %d times like "
                                   "0.1,0.5, got '%s'\n",
                           MAX_TIMES, c->times),
                   CLI_USAGE;
        for (int i = 0; i < c->nt; i++)
            if (!(c->tl[i] >= 0 && c->tl[i] <= 1))
                return fprintf(stderr, "difflux conservativity: --t: %g is outside [0, 1]\n",
                               c->tl[i]),
                       CLI_USAGE;
    }
    const cli_file outs[3] = {{"csv", c->csv}, {"json", c->json}, {"plot", c->plot}};
    const cli_file ins[4] = {{"model", c->model ? c->model : cli_default_model()},
                             {"baseline", c->baseline},
                             {"data", c->data},
                             {"replot", c->replot}};
    int rc = cli_check_outputs("conservativity", outs, 3, ins, 4);
    if (rc) return rc;
    if (c->probes == 0 && c->patch == 0 && c->loop_nodes == 0)
        return fprintf(stderr, "difflux conservativity: every metric is switched off\n"),
               CLI_USAGE;
    if (c->plot && !dfx_have_plots())
        return fprintf(stderr,
                       "difflux conservativity: --plot: this build has no plotting (install "
                       "libplplot-dev and plplot-driver-cairo, then reconfigure)\n"),
               CLI_FAIL;
    o->field = field;
    o->method = method;
    o->fd_step = c->fd_step;
    o->probes = c->probes;
    o->patch = c->patch;
    o->loop_nodes = c->loop_nodes;
    o->seed = c->seed;
    o->batch = c->batch;
    if (c->replot && !c->plot)
        return fprintf(stderr, "difflux conservativity: --replot needs --plot FILE\n"),
               CLI_USAGE;
    return CLI_OK;
}

/* A model's name in the plot: its file name up to the first dot. */
static const char *short_name(const char *name, char *buf, size_t cap)
{
    const char *sl = strrchr(name, '/');
    const char *base = sl ? sl + 1 : name;
    snprintf(buf, cap, "%.*s", (int)strcspn(base, "."), base);
    return buf;
}

/* --replot: the plot of an earlier --csv, nothing measured. */
static int cons_replot(const cons_cmd *c, dfx_error *err)
{
    char rn[2][256], sn[2][256];
    dfx_cons_result *rr[2] = {NULL, NULL};
    int nm = 0, ntr = 0;
    int r = read_csv(c->replot, rn, rr, &nm, &ntr, err);
    const char *np[2] = {rn[0], rn[1]};
    for (int i = 0; i < nm && r == 0; i++) np[i] = short_name(rn[i], sn[i], sizeof sn[i]);
    if (r == 0) r = write_plot(c->plot, np, rr, nm, ntr, err);
    free(rr[0]);
    free(rr[1]);
    if (r == 0) printf("wrote %s\n", c->plot);
    return r;
}

/* Backend, the model and --baseline (on the model's path), and the times. */
static int cons_open(cons_cmd *c, dfx_error *err)
{
    c->be = cli_backend_open(c->device, c->threads, NULL, err);
    if (!c->be) return -1;
    c->names[0] = c->model, c->names[1] = c->baseline;
    c->nmodels = c->baseline ? 2 : 1;
    for (int i = 0; i < c->nmodels; i++) {
        c->ms[i] = dfx_model_load(c->names[i], c->be, err);
        if (!c->ms[i]) return -1;
    }
    if (c->perturb && dfx_model_set_perturb(c->ms[0], c->perturb_kind, c->perturb_lambda, err))
        return dfx_fail_prefix(err, "--perturb %s", c->perturb);
    const dfx_model_info *mi = dfx_model_get_info(c->ms[0]);
    /* the baseline is measured in the model's field, native or not */
    c->o.field = dfx_cons_field(c->ms[0], &c->o);
    if (c->baseline) {
        const dfx_model_info *bi = dfx_model_get_info(c->ms[1]);
        if (bi->channels != mi->channels || bi->height != mi->height || bi->width != mi->width)
            return dfx_fail(err, "--baseline %s: %dx%dx%d images, but %s has %dx%dx%d",
                            c->baseline, bi->channels, bi->height, bi->width, c->model,
                            mi->channels, mi->height, mi->width);
        if (memcmp(&bi->path, &mi->path, sizeof mi->path) != 0 &&
            dfx_model_set_path(c->ms[1], &mi->path, err))
            return -1;
    }
    if (!c->times) {
        static const double frac[] = {0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97};
        double tn, td;
        dfx_path_default_range(&mi->path, &tn, &td);
        c->nt = 8;
        for (int i = 0; i < c->nt; i++) c->tl[i] = tn + frac[i] * (td - tn);
    }
    return 0;
}

/* The base points' draw (one batch of --points), and per model the
 * network's scratch with its tangents for batches of --batch rows. */
static int cons_fits(const cons_cmd *c, dfx_error *err)
{
    const dfx_model_info *mi = dfx_model_get_info(c->ms[0]);
    dfx_sample_opts so;
    dfx_sample_opts_default(&so, c->ms[0]);
    so.sampler = c->sampler;
    const double row = (double)mi->channels * mi->height * mi->width * sizeof(float);
    double need = (c->data ? 0.0 : (double)dfx_sampler_bytes(c->ms[0], &so, c->points)) +
                  (double)c->points * row * (4.0 + 2.0 * (c->o.loop_nodes > 0));
    double weights = 0;
    for (int i = 0; i < c->nmodels; i++) {
        need += 2.0 * (double)dfx_model_scratch_bytes(c->ms[i], c->batch) + 6.0 * c->batch * row;
        weights += (double)dfx_model_get_info(c->ms[i])->n_params * sizeof(float);
    }
    char what[1200];
    snprintf(what, sizeof what, "measuring %s with %d points in batches of %d", c->model,
             c->points, c->batch);
    return cli_mem_check(need, need + weights, c->mem_limit, what,
                         "; fewer --points or a smaller --batch need less", err);
}

/* Base points, then every model at every time into c->res. */
static int cons_measure(cons_cmd *c, dfx_error *err)
{
    const dfx_model_info *mi = dfx_model_get_info(c->ms[0]);
    c->x0 = base_points(c->ms[0], c->data, c->points, c->seed, c->sampler, c->steps, c->quiet,
                        err);
    if (!c->x0) return -1;
    for (int i = 0; i < c->nmodels; i++) {
        c->res[i] = calloc((size_t)c->nt, sizeof(dfx_cons_result));
        if (!c->res[i]) return dfx_fail(err, "out of memory");
    }
    printf("model     %s (%s, %s path)%s%s\n", c->model, mi->kind,
           dfx_path_name(mi->path.family), c->baseline ? "; baseline " : "",
           c->baseline ? c->baseline : "");
    printf("field     %s%s, %s\n", dfx_pred_name(c->o.field),
           c->o.field == mi->prediction ? " (the model's native prediction)" : "",
           c->o.method == DFX_JVP_EXACT ? "exact JVPs (forward mode)" : "central differences");
    printf("points    %d per time: %s, noised along the path\n", c->points,
           c->data ? c->data : "the model's own samples");
    progress pr = {!c->quiet && isatty(2), 0, c->nmodels * c->nt, "measuring"};
    for (int i = 0; i < c->nmodels; i++)
        for (int k = 0; k < c->nt; k++, pr.done++)
            if (dfx_conservativity(c->ms[i], &c->o, c->x0, c->points, c->tl[k], &c->res[i][k],
                                   on_progress, &pr, err)) {
                if (pr.on) fprintf(stderr, "\n");
                dfx_fail_prefix(err, "%s at t = %g", c->names[i], c->tl[k]);
                return -1;
            }
    if (pr.on) fprintf(stderr, "\n");
    return 0;
}

static int cons_run(void *state, dfx_error *err)
{
    cons_cmd *c = state;
    if (c->replot) return cons_replot(c, err);
    if (!c->model) c->model = cli_default_model();
    return cons_open(c, err) || cons_fits(c, err) || cons_measure(c, err) ? -1 : 0;
}

/* The tables, and --csv, --json and --plot renamed into place together. */
static int cons_report(void *state, dfx_error *err)
{
    const cons_cmd *c = state;
    if (c->replot) return 0;
    const int nm = c->nmodels, nt = c->nt;
    for (int i = 0; i < nm; i++)
        print_table(c->names[i], c->res[i], i == 0 && nm > 1 ? c->res[1] : NULL, nt);
    if (c->points < 2)
        printf("\n(one point: no standard errors, they are over points)\n");
    dfx_outputs_begin();
    if (c->csv && write_csv(c->csv, c->names, c->res, nm, nt, err)) return -1;
    if (c->json && write_json(c->json, c->names, c->res, nm, nt, err)) return -1;
    char sb[2][128];
    const char *shortn[2] = {NULL, NULL};
    for (int i = 0; i < nm; i++) shortn[i] = short_name(c->names[i], sb[i], sizeof sb[i]);
    if (c->plot && write_plot(c->plot, shortn, c->res, nm, nt, err)) return -1;
    if (dfx_outputs_commit(err)) return -1;
    if (c->csv) printf("\nwrote %s\n", c->csv);
    if (c->json) printf("wrote %s\n", c->json);
    if (c->plot) printf("wrote %s\n", c->plot);
    return 0;
}

static void cons_release(void *state)
{
    cons_cmd *c = state;
    free(c->x0);
    for (int i = 0; i < 2; i++) {
        free(c->res[i]);
        dfx_model_free(c->ms[i]);
    }
    dfx_backend_destroy(c->be);
}

const cli_steps cmd_conservativity = {sizeof(cons_cmd), cons_parse, cons_check, cons_run,
                                      cons_report, cons_release};
