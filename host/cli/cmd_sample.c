/* difflux sample: draw samples from a model and write a PNG grid / .npy. */
#define _POSIX_C_SOURCE 200809L
#include "args.h"
#include "cli.h"
#include "difflux.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct progress_bar {
    int enabled;
    long total, done, batch; /* samples */
    double start, last;
} progress_bar;

static void bar_draw(progress_bar *b, double frac, int final)
{
    double now = cli_now();
    if (!final && now - b->last < 0.1) return;
    b->last = now;
    int width = 30, fill = (int)(frac * width + 0.5);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    double el = now - b->start;
    double eta = frac > 0.01 ? el * (1.0 - frac) / frac : 0.0;
    fprintf(stderr, "\rsampling [%s] %3d%%  %ld/%ld samples  %.1fs elapsed, ~%.0fs left ", bar,
            (int)(frac * 100.0), b->done, b->total, el, eta);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static void on_progress(void *ctx, const dfx_progress *p)
{
    progress_bar *b = ctx;
    if (!b->enabled) return;
    double frac = (b->done + b->batch * (double)p->step / p->steps) / (double)b->total;
    bar_draw(b, frac, 0);
}

int cmd_sample(int argc, char **argv)
{
    const char *model = NULL, *sampler = "heun", *device = "auto", *precision = "fp32", *out = "grid.png",
               *npy = NULL, *grid = "auto", *noise = NULL, *path = NULL, *cls = NULL,
               *recipe = "principled";
    int steps = 0, n = 64, corrector_steps = 1, inner = 0, path_start = 0, batch = 0, threads = 0, cols = 0, pad = 2, scale = 1,
        no_denoise = 0, quiet = 0, progress = 0, no_png = 0;
    uint64_t seed = 0, start = 0, max_nfe = 100000;
    double rho = 7, shift = 3, t_noise = NAN, t_data = NAN, rtol = 1e-4, atol = 1e-4, eps0 = 1,
           pad_value = 1.0, guidance = 1.0, eta = NAN, snr = 0.16, delta = NAN, anneal = NAN;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "FILE", "model file (default: models/mnist-flow.safetensors)", 0},
        {"sampler", OPT_STR, &sampler, "NAME", "sampler (heun); `difflux samplers` lists them", 0},
        {"steps", OPT_INT, &steps, "N", "steps of the time grid (the sampler's default)", 0},
        {"n", OPT_INT, &n, "COUNT", "number of samples (64)", 0},
        {"batch", OPT_INT, &batch, "B", "samples per batch (min(n, 64))", 0},
        {"seed", OPT_U64, &seed, "S", "random seed (0)", 0},
        {"start-index", OPT_U64, &start, "I", "global index of the first sample (0)", 0},
        {"device", OPT_STR, &device, "D", "cpu, cuda or auto (auto)", 0},
        {"precision", OPT_STR, &precision, "P",
         "matrix products in fp32 (default), or tf32 / bf16 tensor-core math (cuda)", 0},
        {"threads", OPT_INT, &threads, "T", "CPU threads (0 = all cores)", 0},
        {"out", OPT_STR, &out, "FILE", "PNG grid to write (grid.png)", 0},
        {"no-png", OPT_FLAG, &no_png, NULL, "do not write a PNG grid", 0},
        {"npy", OPT_STR, &npy, "FILE", "also write raw float32 samples [n, C, H, W]", 0},
        {"cols", OPT_INT, &cols, "C", "grid columns (ceil(sqrt(n)))", 0},
        {"pad", OPT_INT, &pad, "P", "pixels between tiles (2)", 0},
        {"pad-value", OPT_DOUBLE, &pad_value, "V", "padding grey level, 0 black .. 1 white (1)",
         0},
        {"scale", OPT_INT, &scale, "K", "upscale each pixel to K x K (1)", 0},
        {"grid", OPT_STR, &grid, "NAME",
         "time grid: uniform karras logsnr shift, or auto (karras on ve and dale paths)", 0},
        {"rho", OPT_DOUBLE, &rho, "R", "karras grid exponent (7)", 0},
        {"shift", OPT_DOUBLE, &shift, "K", "shift grid factor, >1 = more steps at high noise (3)",
         0},
        {"t-noise", OPT_DOUBLE, &t_noise, "T", "start time at the noise end (path default)", 0},
        {"t-data", OPT_DOUBLE, &t_data, "T", "stop time near the data end (path default)", 0},
        {"no-denoise", OPT_FLAG, &no_denoise, NULL,
         "stop at --t-data instead of finishing with x <- x_hat", 0},
        {"rtol", OPT_DOUBLE, &rtol, "R", "dopri5 relative tolerance (1e-4)", 0},
        {"atol", OPT_DOUBLE, &atol, "A", "dopri5 absolute tolerance (1e-4)", 0},
        {"max-nfe", OPT_U64, &max_nfe, "N", "dopri5 evaluations per sample before giving up",
         0},
        {"noise", OPT_STR, &noise, "NAME",
         "em noise eps(t): diffusion const s s2 (s on interpolants, else diffusion)", 0},
        {"eps0", OPT_DOUBLE, &eps0, "E", "em noise scale (1)", 0},
        {"eta", OPT_DOUBLE, &eta, "E",
         "ddim/euler_ancestral/dpmpp_2m_sde: fresh-noise level (0, 1, 1)", 0},
        {"snr", OPT_DOUBLE, &snr, "R", "pc: corrector signal-to-noise ratio (0.16)", 0},
        {"corrector-steps", OPT_INT, &corrector_steps, "K", "pc: Langevin steps per time (1)",
         0},
        {"recipe", OPT_STR, &recipe, "NAME",
         "adls/aums: principled (delta = grid step) or paper (tuned delta, --inner, --anneal)",
         0},
        {"delta", OPT_DOUBLE, &delta, "D", "paper recipe: step (adls 6.16545e-4, aums 1.43845e-4)",
         0},
        {"inner", OPT_INT, &inner, "L", "paper recipe: updates per time index (adls 1, aums 4)",
         0},
        {"anneal", OPT_DOUBLE, &anneal, "F", "paper recipe: noise factor per index (0.995)", 0},
        {"path-start", OPT_FLAG, &path_start, NULL,
         "start from N(m, s^2) of the path even if the model has a fitted start", 0},
        {"class", OPT_STR, &cls, "K",
         "conditional models: label K, 'all' (sample i gets i mod classes; default) or 'none'",
         0},
        {"guidance", OPT_DOUBLE, &guidance, "W",
         "classifier-free guidance: P_u + W (P_c - P_u) (1 = plain conditional)", 0},
        {"path", OPT_STR, &path, "FAMILY",
         "analytic models only: sample on linear trig vp vp_cosine ve", 0},
        {"quiet", OPT_FLAG, &quiet, NULL, "print nothing but errors", 0},
        {"progress", OPT_FLAG, &progress, NULL, "show the progress bar even when not a terminal",
         0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    int help;
    int rc = cli_parse("sample", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux sample [options]",
                  "Draws samples from a model file and writes them as a PNG grid (and, with "
                  "--npy,\nas raw float32 values in the model's data space). Sample i with seed "
                  "S is the\nsame whatever --batch, --device or --start-index split is used.",
                  opts, nopts);
        return CLI_OK;
    }
    /* option checks that need no model */
    if (n < 1) return fprintf(stderr, "difflux sample: --n must be at least 1\n"), CLI_USAGE;
    if (cli_find(opts, nopts, "steps")->set && steps < 1)
        return fprintf(stderr, "difflux sample: --steps must be at least 1\n"), CLI_USAGE;
    if (batch < 0 || (cli_find(opts, nopts, "batch")->set && batch < 1))
        return fprintf(stderr, "difflux sample: --batch must be at least 1\n"), CLI_USAGE;
    if (batch == 0) batch = n < 64 ? n : 64;
    if (batch > n) batch = n;
    if (threads < 0) return fprintf(stderr, "difflux sample: --threads must be >= 0\n"), CLI_USAGE;
    if (no_png && cli_find(opts, nopts, "out")->set)
        return fprintf(stderr, "difflux sample: --out and --no-png contradict each other\n"),
               CLI_USAGE;
    if (no_png && !npy)
        return fprintf(stderr, "difflux sample: --no-png without --npy would write nothing\n"),
               CLI_USAGE;
    if (cols < 0 || pad < 0 || scale < 1 || !(pad_value >= 0 && pad_value <= 1))
        return fprintf(stderr, "difflux sample: need --cols >= 0, --pad >= 0, --scale >= 1, "
                               "--pad-value in [0, 1]\n"),
               CLI_USAGE;
    if (max_nfe < 1 || max_nfe > 100000000)
        return fprintf(stderr, "difflux sample: --max-nfe must be in [1, 1e8]\n"), CLI_USAGE;
    dfx_grid g = DFX_GRID_AUTO;
    if (strcmp(grid, "auto") != 0 && dfx_grid_parse(grid, &g))
        return fprintf(stderr, "difflux sample: unknown --grid '%s' (uniform, karras, logsnr, "
                               "shift)\n",
                       grid),
               CLI_USAGE;
    dfx_noise nz = DFX_NOISE_S;
    if (noise && dfx_noise_parse(noise, &nz))
        return fprintf(stderr, "difflux sample: unknown --noise '%s' (diffusion, const, s, s2)\n",
                       noise),
               CLI_USAGE;
    dfx_path_family fam = DFX_PATH_LINEAR;
    if (path && dfx_path_parse(path, &fam))
        return fprintf(stderr, "difflux sample: unknown --path '%s' (linear, trig, vp, "
                               "vp_cosine, ve)\n",
                       path),
               CLI_USAGE;
    const dfx_sampler_desc *descs;
    int nd = dfx_samplers(&descs), known = 0;
    for (int i = 0; i < nd; i++) known |= strcmp(descs[i].name, sampler) == 0;
    if (!known)
        return fprintf(stderr, "difflux sample: unknown --sampler '%s' (difflux samplers lists "
                               "them)\n",
                       sampler),
               CLI_USAGE;
    if (strcmp(recipe, "paper") != 0 && strcmp(recipe, "principled") != 0)
        return fprintf(stderr, "difflux sample: unknown --recipe '%s' (principled, paper)\n",
                       recipe),
               CLI_USAGE;
    if ((cli_find(opts, nopts, "delta")->set || cli_find(opts, nopts, "inner")->set ||
         cli_find(opts, nopts, "anneal")->set) &&
        strcmp(recipe, "paper") != 0)
        return fprintf(stderr, "difflux sample: --delta, --inner and --anneal belong to "
                               "--recipe paper\n"),
               CLI_USAGE;
    int class_id = DFX_CLASS_CYCLE;
    if (cls) {
        char *end;
        long v = strtol(cls, &end, 10);
        if (strcmp(cls, "all") == 0)
            class_id = DFX_CLASS_CYCLE;
        else if (strcmp(cls, "none") == 0)
            class_id = DFX_CLASS_NONE;
        else if (*cls && !*end && v >= 0 && v < 1000000)
            class_id = (int)v;
        else
            return fprintf(stderr, "difflux sample: --class expects a label, 'all' or 'none', "
                                   "got '%s'\n",
                           cls),
                   CLI_USAGE;
    }
    if (!model) model = cli_default_model();

    dfx_error err = {{0}};
    progress_bar bar = {(!quiet && (progress || isatty(2))), n, 0, batch, cli_now(), 0};
    dfx_backend *be = dfx_backend_create(device, threads, &err);
    if (!be) return fprintf(stderr, "difflux sample: %s\n", err.msg), CLI_FAIL;
    if (dfx_backend_set_precision(be, precision, &err)) {
        fprintf(stderr, "difflux sample: %s\n", err.msg);
        dfx_backend_destroy(be);
        return CLI_FAIL;
    }
    dfx_model *m = dfx_model_load(model, be, &err);
    dfx_sampler *s = NULL;
    float *images = NULL;
    rc = CLI_FAIL;
    if (!m) goto done;
    if (path) {
        dfx_path p;
        dfx_path_default(&p, fam);
        if (dfx_model_set_path(m, &p, &err)) goto done;
    }
    const dfx_model_info *mi = dfx_model_get_info(m);
    if (mi->num_classes > 0 || cls || cli_find(opts, nopts, "guidance")->set) {
        int c = (mi->num_classes == 0 && !cls) ? DFX_CLASS_NONE : class_id;
        if (dfx_model_set_class(m, c, guidance, &err)) goto done;
        /* one column per class when the grid cycles through them */
        if (mi->num_classes > 0 && c == DFX_CLASS_CYCLE && cols == 0 && n >= mi->num_classes)
            cols = mi->num_classes;
    }
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = sampler;
    o.steps = steps;
    o.seed = seed;
    o.grid = g;
    o.rho = rho;
    o.shift = shift;
    o.t_noise = t_noise;
    o.t_data = t_data;
    o.rtol = rtol;
    o.atol = atol;
    o.max_nfe = (long)max_nfe;
    if (noise) o.noise = nz;
    o.eta = eta;
    o.snr = snr;
    o.corrector_steps = corrector_steps;
    o.recipe = strcmp(recipe, "paper") == 0 ? DFX_RECIPE_PAPER : DFX_RECIPE_PRINCIPLED;
    o.delta = delta;
    o.inner = inner;
    o.anneal = anneal;
    o.path_start = path_start;
    o.eps0 = eps0;
    o.denoise = !no_denoise;
    o.progress = on_progress;
    o.progress_ctx = &bar;
    s = dfx_sampler_create(m, &o, batch, &err);
    if (!s) goto done;
    size_t dim = (size_t)mi->channels * mi->height * mi->width;
    images = malloc((size_t)n * dim * sizeof(float));
    if (!images) {
        snprintf(err.msg, sizeof err.msg, "out of memory for %d samples", n);
        goto done;
    }
    double nfe_sum = 0.0;
    long nfe_max = 0;
    for (long done_n = 0; done_n < n;) {
        int rows = (int)((n - done_n) < batch ? (n - done_n) : batch);
        bar.done = done_n;
        bar.batch = rows;
        dfx_sample_stats st;
        if (dfx_sampler_run(s, start + (uint64_t)done_n, rows, images + (size_t)done_n * dim, &st,
                            &err))
            goto done;
        nfe_sum += st.nfe_mean * rows;
        if (st.nfe > nfe_max) nfe_max = st.nfe;
        done_n += rows;
    }
    bar.done = n;
    if (bar.enabled) bar_draw(&bar, 1.0, 1);
    double el = cli_now() - bar.start;
    if (!no_png) {
        dfx_grid_layout L = {cols, pad, pad_value, scale};
        if (dfx_write_png_grid(out, images, n, mi->channels, mi->height, mi->width, mi->range_lo,
                               mi->range_hi, &L, &err))
            goto done;
    }
    if (npy) {
        int64_t shape[4] = {n, mi->channels, mi->height, mi->width};
        if (dfx_write_npy(npy, images, 4, shape, &err)) goto done;
    }
    if (!quiet) {
        fprintf(stderr,
                "difflux: %d samples of %s from %s, %s on %s, %.1f evaluations/sample, %.2f s "
                "(%.1f samples/s)",
                n, mi->kind, model, sampler, dfx_backend_name(be), nfe_sum / n, el, n / el);
        if (!no_png) fprintf(stderr, " -> %s", out);
        if (npy) fprintf(stderr, "%s%s", no_png ? " -> " : ", ", npy);
        fputc('\n', stderr);
    }
    rc = CLI_OK;
done:
    if (rc != CLI_OK) {
        if (bar.enabled && bar.last > 0) fputc('\n', stderr);
        fprintf(stderr, "difflux sample: %s\n", err.msg);
    }
    free(images);
    dfx_sampler_free(s);
    dfx_model_free(m);
    dfx_backend_destroy(be);
    return rc;
}
