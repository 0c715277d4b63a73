/* The spread statistic of issue #23 on an exact Gaussian mixture: the
 * normalised squared distance of a sample to its nearest component at the
 * end of the interval, d = min_k |x - (a mu_k + m)|^2 / (D (a^2 c_k^2 +
 * s^2)). The components sit so far apart (at least 140 and 28 standard deviations)
 * that the nearest is the one a sample came from, so d ~ chi^2_D / D and
 * E d = 1 up to a negligible term; a grid that steps too coarsely near the data end shows
 * as d far from 1 (too wide above, over-contracted below).
 *
 * Run without arguments (ctest): every sampler of the registry, at its
 * default grid and default steps, lands within 5 % of 1 on the vp, linear
 * and ve paths (MATH.md section 2, "Default grids").
 *
 * `test_moments_spread --sweep FILE.csv [N [PATHS [WIDTHS]]]` measures every
 * sampler x grid x path x component width instead (N samples, 2,500;
 * paths "vp,vp_cosine,linear,trig,ve"; widths c "0.02,0.1") and appends
 * the table to FILE (samples/grid-spread.csv was made so); the per-family
 * defaults were chosen from it. `test_moments_spread --converge N [PATHS
 * [WIDTH]]` doubles each sampler's steps at its default grid until the
 * spread is within 3 % of 1 (the exclusions below were sized so). */
#include "check.h"
#include "difflux.h"

#include <stdlib.h>
#include <string.h>

/* Sixteen dimensions: d has variance 2 / D per sample, so 2,500 samples
 * give a standard error of 0.007 at a fraction of the cost of two
 * dimensions. The means are the corners (+-0.5, +-0.5) repeated, |mu_j -
 * mu_k| >= 2 sqrt(2). */
enum { D = 16, K = 4 };
static float MU[K * D];
static const float W[K] = {0.4f, 0.3f, 0.2f, 0.1f};

static void make_means(void)
{
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) MU[k * D + j] = ((k >> (j % 2)) & 1) ? 0.5f : -0.5f;
}

typedef struct spread {
    double d, se; /* the mean of d and its standard error */
    long nfe;
    int steps;
    dfx_grid grid; /* the grid it ran on (resolved from auto) */
} spread;

/* One run of `sampler` (steps 0: its default; grid DFX_GRID_AUTO: the
 * family's default) with N samples of the mixture of width c on family
 * fam. Returns 0, or -1 with err set. */
static int measure(dfx_backend *be, dfx_path_family fam, const char *sampler, dfx_grid grid,
                   int steps, double c, int N, uint64_t seed, float *x, spread *out,
                   dfx_error *err)
{
    float cs[K];
    for (int k = 0; k < K; k++) cs[k] = (float)c;
    dfx_path p;
    dfx_path_default(&p, fam);
    dfx_model *m = dfx_model_gmm_create(be, &p, 1, 1, D, -1, 1, K, MU, cs, W, err);
    if (!m) return -1;
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = sampler;
    o.steps = steps;
    o.grid = grid;
    o.seed = seed;
    o.denoise = 0; /* compare with p_t at t_data itself */
    int rc = -1;
    dfx_sampler *s = dfx_sampler_create(m, &o, N, err);
    dfx_sample_stats st;
    if (s && dfx_sampler_run(s, 0, N, x, &st, err) == 0) {
        int n = 0;
        const double *g = dfx_sampler_grid(s, &n);
        double td = g ? g[n] : NAN, tn, tdd;
        if (!g) { /* adaptive: the default interval */
            dfx_path_default_range(&p, &tn, &tdd);
            td = tdd;
        }
        dfx_coef cf;
        dfx_path_eval(&p, td, &cf);
        double var = cf.a * cf.a * c * c + cf.s * cf.s, s1 = 0, s2 = 0;
        for (int r = 0; r < N; r++) {
            double best = INFINITY;
            for (int k = 0; k < K; k++) {
                double q = 0;
                for (int j = 0; j < D; j++) {
                    double e = x[r * D + j] - (cf.a * MU[k * D + j] + cf.m);
                    q += e * e;
                }
                best = fmin(best, q / (D * var));
            }
            s1 += best;
            s2 += best * best;
        }
        out->d = s1 / N;
        out->se = sqrt(fmax(s2 / N - out->d * out->d, 0.0) / N);
        out->nfe = st.nfe;
        out->steps = n;
        out->grid = dfx_sampler_grid_kind(s);
        rc = 0;
    }
    dfx_sampler_free(s);
    dfx_model_free(m);
    return rc;
}

/* The sweep over the families and widths named ("vp,linear", "0.02,0.1"),
 * appended to file (a header first when it is new). */
static int sweep(dfx_backend *be, const char *file, int N, const char *fams, const char *ws)
{
    FILE *f = fopen(file, "r");
    int fresh = f == NULL;
    if (f) fclose(f);
    f = fopen(file, "a");
    if (!f) return fprintf(stderr, "cannot write %s\n", file), 1;
    if (fresh) fprintf(f, "path,component_std,n,sampler,grid,steps,nfe,spread,se,is_default\n");
    float *x = malloc(sizeof(float) * (size_t)N * D);
    const dfx_sampler_desc *list;
    int ns = dfx_samplers(&list);
    char fbuf[256];
    snprintf(fbuf, sizeof fbuf, "%s", fams);
    for (char *fn = strtok(fbuf, ","); fn; fn = strtok(NULL, ",")) {
        dfx_path_family fam;
        if (dfx_path_parse(fn, &fam)) return fprintf(stderr, "unknown path %s\n", fn), 1;
        for (const char *w = ws; *w; w += strcspn(w, ","), w += *w == ',') {
            double c = atof(w);
            for (int j = 0; j < ns; j++) {
                if (strcmp(list[j].families, "all paths") != 0) continue;
                dfx_error err = {{0}};
                /* the grid the family gives this sampler by default */
                spread def;
                dfx_grid dg = measure(be, fam, list[j].name, DFX_GRID_AUTO, 1, c, 1, 1, x, &def,
                                      &err)
                                  ? DFX_GRID_AUTO
                                  : def.grid;
                int adaptive = list[j].nfe_per_step == 0;
                for (int g = DFX_GRID_UNIFORM; g < (adaptive ? 1 : DFX_GRID_SCHEDULE); g++) {
                    spread r;
                    int rc = measure(be, fam, list[j].name, (dfx_grid)g, 0, c, N,
                                     (uint64_t)(1000 * fam + 10 * j + g), x, &r, &err);
                    const char *gname = adaptive ? "adaptive" : dfx_grid_name((dfx_grid)g);
                    int isdef = adaptive || g == (int)dg;
                    if (rc) {
                        fprintf(f, "%s,%g,%d,%s,%s,%d,,,,%d\n", fn, c, N, list[j].name, gname,
                                list[j].default_steps, isdef);
                        printf("%-10s c=%-4g %-16s %-8s %s\n", fn, c, list[j].name, gname,
                               err.msg);
                    } else {
                        fprintf(f, "%s,%g,%d,%s,%s,%d,%ld,%.4f,%.4f,%d\n", fn, c, N,
                                list[j].name, gname, r.steps, r.nfe, r.d, r.se, isdef);
                        printf("%-10s c=%-4g %-16s %-8s %.4f +- %.4f\n", fn, c, list[j].name,
                               gname, r.d, r.se);
                    }
                    fflush(f);
                    fflush(stdout);
                }
            }
        }
    }
    free(x);
    fclose(f);
    return 0;
}

/* For each sampler on each family named, at its default grid: the spread at
 * its default steps, then doubling the steps (at most 16 times the default)
 * until it is within 3 % of 1; one line per run. */
static int converge(dfx_backend *be, int N, const char *fams, double c)
{
    float *x = malloc(sizeof(float) * (size_t)N * D);
    const dfx_sampler_desc *list;
    int ns = dfx_samplers(&list);
    char fbuf[256];
    snprintf(fbuf, sizeof fbuf, "%s", fams);
    for (char *fn = strtok(fbuf, ","); fn; fn = strtok(NULL, ",")) {
        dfx_path_family fam;
        if (dfx_path_parse(fn, &fam)) return fprintf(stderr, "unknown path %s\n", fn), 1;
        for (int j = 0; j < ns; j++) {
            int st = list[j].default_steps;
            if (strcmp(list[j].families, "all paths") != 0 || st == 0) continue;
            for (int k = st; k <= 16 * st; k *= 2) {
                dfx_error err = {{0}};
                spread r;
                if (measure(be, fam, list[j].name, DFX_GRID_AUTO, k, c, N, (uint64_t)(7 + k),
                            x, &r, &err)) {
                    printf("%s,%g,%s,%d,error,%s\n", fn, c, list[j].name, k, err.msg);
                    break;
                }
                printf("%s,%g,%s,%s,%d,%.4f,%.4f\n", fn, c, list[j].name, dfx_grid_name(r.grid),
                       k, r.d, r.se);
                fflush(stdout);
                if (fabs(r.d - 1.0) < 0.03) break;
            }
        }
    }
    free(x);
    return 0;
}

/* The exceptions to "every sampler at its default grid and steps is within
 * 5 % of 1": the combinations that miss it on this narrow mixture, with
 * what they give at their defaults (625 samples, samples/grid-spread.csv)
 * and, where it is cheap enough to check here, the steps at which they
 * meet it (`--converge`). Each is run at its defaults too and must still
 * miss, so an entry that is no longer needed fails the test. */
static const struct slow {
    const char *path, *sampler;
    int steps; /* meets 5 % at these steps on the same grid; 0: not checked
                  here; -1: not run here at all */
    int borderline; /* 1: its true spread lies within a standard error or two of
                       the bound, so it may land on either side at the
                       defaults (checked at `steps` only) */
    const char *why;
} slow[] = {
    /* pc: the Langevin corrector at --snr 0.16 widens the samples by 13-30 %
     * on every grid and at any step count (1.26 at 500 steps on vp,
     * logsnr; 1.15 on linear, 1.29 on ve at their defaults); test_samplers
     * checks pc's moments on its own, wider mixture. Run on vp only (it
     * costs 1,000 evaluations a run) */
    {"vp", "pc", 0, 0, "corrector bias"},
    {"linear", "pc", -1, 0, "corrector bias"},
    {"ve", "pc", -1, 0, "corrector bias"},
    /* vp, logsnr: the first-order ODE steps and deis stay biased at their
     * default steps (euler 1.18; euler_ancestral 0.94, 0.98 at 800) */
    {"vp", "euler", 0, 0, "1.18 at 50 steps, 1.01 at 800"},
    {"vp", "heun", 32, 0, "0.91 at 16 steps, 0.99 at 32"},
    {"vp", "ddim", 100, 1, "0.947-0.958 at 50 steps, 0.97 at 100"},
    {"vp", "deis", 40, 0, "0.94 at 20 steps, 0.97 at 40"},
    {"vp", "euler_ancestral", 0, 0, "0.94 at 100 steps, 0.98 at 800"},
    /* linear, logsnr from sigma = 80 (uniform, the old default, was far
     * worse: heun 3.3, ddim 0.46, dpmpp_2m_sde 2.4; samples/grid-spread.csv) */
    {"linear", "euler", 0, 0, "0.93 at 50 steps (0.46 on uniform)"},
    {"linear", "heun", 0, 0, "1.15-1.18 at 16 steps (3.3 on uniform)"},
    {"linear", "restart", 0, 0, "1.11-1.12 at 18 steps (2.8 on uniform)"},
    {"linear", "ddim", 0, 0, "0.92-0.94 at 50 steps (0.46 on uniform)"},
    {"linear", "deis", 0, 0, "0.88-0.90 at 20 steps (0.22 on uniform)"},
    {"linear", "euler_ancestral", 0, 0, "0.88-0.89 at 100 steps (0.55 on uniform)"},
    /* ve (karras for these, logsnr for the x_hat samplers) */
    {"ve", "euler", 0, 0, "0.12 at 50 steps"},
    {"ve", "heun", 0, 0, "4.0 at 16 steps (5.3 on logsnr)"},
    {"ve", "restart", 0, 0, "1.29 at 18 steps"},
    {"ve", "ddim", 0, 0, "0.91 at 50 steps"},
    {"ve", "euler_ancestral", 0, 0, "0.90 at 100 steps"},
};

static const struct slow *find_slow(const char *path, const char *sampler)
{
    for (size_t i = 0; i < sizeof slow / sizeof slow[0]; i++)
        if (strcmp(slow[i].path, path) == 0 && strcmp(slow[i].sampler, sampler) == 0)
            return &slow[i];
    return NULL;
}

int main(int argc, char **argv)
{
    dfx_error err = {{0}};
    dfx_backend *be = dfx_backend_create("cpu", 0, &err);
    make_means();
    if (!be) return fprintf(stderr, "%s\n", err.msg), 1;
    if (argc >= 3 && strcmp(argv[1], "--converge") == 0) {
        int rc = converge(be, atoi(argv[2]), argc > 3 ? argv[3] : "vp,linear,ve",
                          argc > 4 ? atof(argv[4]) : 0.02);
        dfx_backend_destroy(be);
        return rc;
    }
    if (argc >= 3 && strcmp(argv[1], "--sweep") == 0) {
        int rc = sweep(be, argv[2], argc > 3 ? atoi(argv[3]) : 2500,
                       argc > 4 ? argv[4] : "vp,vp_cosine,linear,trig,ve",
                       argc > 5 ? argv[5] : "0.02,0.1");
        dfx_backend_destroy(be);
        return rc;
    }
    /* SE = sqrt(2 / (D N)) = 0.01: the 5 % bound is 5 standard errors wide */
    enum { N = 1250 };
    float *x = malloc(sizeof(float) * N * D);
    const dfx_path_family fams[] = {DFX_PATH_VP, DFX_PATH_LINEAR, DFX_PATH_VE};
    const dfx_sampler_desc *list;
    int ns = dfx_samplers(&list);
    for (size_t fi = 0; fi < sizeof fams / sizeof fams[0]; fi++)
        for (int j = 0; j < ns; j++) {
            if (strcmp(list[j].families, "all paths") != 0) continue; /* dale: test_samplers */
            const char *pn = dfx_path_name(fams[fi]), *sn = list[j].name;
            const struct slow *ex = find_slow(pn, sn);
            if (ex && ex->steps < 0) continue;
            spread r;
            int rc = measure(be, fams[fi], sn, DFX_GRID_AUTO, 0, 0.02, N,
                             (uint64_t)(77 + 31 * fi + j), x, &r, &err);
            CHECK(rc == 0, "%s on %s: %s", sn, pn, err.msg);
            if (rc) continue;
            const char *gn = r.grid == DFX_GRID_AUTO ? "adaptive" : dfx_grid_name(r.grid);
            printf("%-8s %-16s %-8s %3d steps: spread %.4f +- %.4f%s%s%s\n", pn, sn, gn,
                   r.steps, r.d, r.se, ex ? " (excluded: " : "", ex ? ex->why : "",
                   ex ? ")" : "");
            if (!ex) {
                CHECK(fabs(r.d - 1.0) < 0.05,
                      "%s on %s at its default grid (%s) and steps: spread %.4f +- %.4f, not "
                      "within 5 %% of 1",
                      sn, pn, gn, r.d, r.se);
                continue;
            }
            /* an exclusion must still be needed: else delete it from slow[] */
            CHECK(ex->borderline || fabs(r.d - 1.0) >= 0.05,
                  "%s on %s now meets the 5 %% bound at its defaults (spread %.4f): remove its "
                  "entry from slow[]",
                  sn, pn, r.d);
            if (!ex->steps) continue;
            /* and where the table says how many steps it takes, it does */
            rc = measure(be, fams[fi], sn, DFX_GRID_AUTO, ex->steps, 0.02, N,
                         (uint64_t)(177 + 31 * fi + j), x, &r, &err);
            CHECK(rc == 0, "%s on %s at %d steps: %s", sn, pn, ex->steps, err.msg);
            if (rc) continue;
            printf("%-8s %-16s %-8s %3d steps: spread %.4f +- %.4f\n", pn, sn, gn, r.steps, r.d,
                   r.se);
            CHECK(fabs(r.d - 1.0) < 0.05,
                  "%s on %s at %d steps (slow[]): spread %.4f +- %.4f, not within 5 %% of 1", sn,
                  pn, ex->steps, r.d, r.se);
        }
    free(x);
    dfx_backend_destroy(be);
    return check_report("test_moments_spread");
}
