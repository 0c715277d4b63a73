/* difflux sample: draw samples from a model and write a PNG grid / .npy. */
#define _POSIX_C_SOURCE 200809L
#include "args.h"
#include "cli.h"
#include "draw.h"
#include "io/fileio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char about[] =
    "Draws samples from a model file and writes them as a PNG grid (and, with --npy,\n"
    "as raw float32 values in the model's data space). Sample i with seed S is the\n"
    "same whatever --batch, --device or --start-index split is used, and under\n"
    "`mpirun -np K difflux sample ...` the ranks draw blocks of the indices and\n"
    "rank 0 writes exactly what one process would.\n\n"
    "Every option, the output paths and the PNG grid (1, 3 or 4 channels, at most\n"
    "65535 pixels a side) are checked, and the memory the run needs is compared\n"
    "with --max-memory, before the first network evaluation. The PNG and the .npy\n"
    "are written to hidden temporaries and renamed into place together at the\n"
    "end; SIGINT or SIGTERM removes them and exits with 128 + the signal.";

typedef struct sample_cmd {
    cli_draw d;
    const char *out, *npy;
    int n, cols, pad, scale, no_png;
    double pad_value;
    cli_opt opts[CLI_DRAW_OPTS + 10];
    int nopts;
    /* the run */
    dfx_grid_layout layout;
    float *images;
    double nfe, seconds;
} sample_cmd;

static int sample_parse(void *state, int argc, char **argv)
{
    sample_cmd *s = state;
    cli_draw_init(&s->d);
    s->out = "grid.png";
    s->n = 64, s->pad = 2, s->scale = 1, s->pad_value = 1.0;
    const cli_opt own[] = {
        {"n", OPT_INT, &s->n, "COUNT", "number of samples (64)", 0},
        {"out", OPT_STR, &s->out, "FILE", "PNG grid to write (grid.png)", 0},
        {"no-png", OPT_FLAG, &s->no_png, NULL, "do not write a PNG grid", 0},
        {"npy", OPT_STR, &s->npy, "FILE", "also write raw float32 samples [n, C, H, W]", 0},
        {"cols", OPT_INT, &s->cols, "C", "grid columns (ceil(sqrt(n)))", 0},
        {"pad", OPT_INT, &s->pad, "P", "pixels between tiles, 0 to 1000 (2)", 0},
        {"pad-value", OPT_DOUBLE, &s->pad_value, "V", "padding grey level, 0 black .. 1 white (1)",
         0},
        {"scale", OPT_INT, &s->scale, "K", "upscale each pixel to K x K, 1 to 64 (1)", 0},
    };
    memcpy(s->opts, own, sizeof own);
    s->nopts = cli_draw_options(&s->d, s->opts, (int)(sizeof own / sizeof own[0]), 1);
    return cli_options("sample", "difflux sample [options]", about, argc, argv, s->opts,
                       s->nopts);
}

/* The checks that need no model, and the outputs. */
static int sample_check(void *state)
{
    sample_cmd *s = state;
    const int n = s->n, pad = s->pad, scale = s->scale;
    if (n < 1) return fprintf(stderr, "difflux sample: --n must be at least 1\n"), CLI_USAGE;
    if (s->no_png && cli_find(s->opts, s->nopts, "out")->set)
        return fprintf(stderr, "difflux sample: --out and --no-png contradict each other\n"),
               CLI_USAGE;
    if (s->no_png && !s->npy)
        return fprintf(stderr, "difflux sample: --no-png without --npy would write nothing\n"),
               CLI_USAGE;
    if (s->cols < 0) return fprintf(stderr, "difflux sample: --cols must be >= 0\n"), CLI_USAGE;
    if (pad < 0 || pad > 1000)
        return fprintf(stderr, "difflux sample: --pad must be in [0, 1000], got %d\n", pad),
               CLI_USAGE;
    if (scale < 1 || scale > 64)
        return fprintf(stderr, "difflux sample: --scale must be in [1, 64], got %d\n", scale),
               CLI_USAGE;
    if (!(s->pad_value >= 0 && s->pad_value <= 1))
        return fprintf(stderr, "difflux sample: --pad-value must be in [0, 1]\n"), CLI_USAGE;
    int rc = cli_draw_check("sample", &s->d, s->opts, s->nopts, n);
    if (rc) return rc;
    const cli_file outs[2] = {{"out", s->no_png ? NULL : s->out}, {"npy", s->npy}};
    const cli_file ins[1] = {{"model", s->d.model}};
    return cli_draw_outputs("sample", outs, 2, ins, 1);
}

/* The bytes of the PNG grid of n tiles. */
static double png_bytes(const dfx_model_info *mi, long n, dfx_grid_layout G)
{
    if (G.cols <= 0) G.cols = (int)ceil(sqrt((double)n) - 1e-9);
    if (G.cols > n) G.cols = (int)n;
    double rows = ceil((double)n / G.cols);
    return (G.cols * ((double)mi->width * G.scale + G.pad) + G.pad) *
           (rows * ((double)mi->height * G.scale + G.pad) + G.pad) * mi->channels;
}

/* Model, grid and memory checks, then the draw into s->images on rank 0. */
static int sample_run(void *state, dfx_error *err)
{
    sample_cmd *s = state;
    cli_draw *d = &s->d;
    const int n = s->n, root = cli_mpi_rank() == 0;
    double t0 = dfx_seconds();
    if (cli_mpi_fail(cli_draw_open(d, s->opts, s->nopts, err), err)) return -1;
    const dfx_model_info *mi = d->mi;
    /* one column per class when the grid cycles through them */
    if (mi->num_classes > 0 && d->class_id == DFX_CLASS_CYCLE && s->cols == 0 &&
        n >= mi->num_classes)
        s->cols = mi->num_classes;
    s->layout = (dfx_grid_layout){s->cols, s->pad, s->pad_value, s->scale};
    /* the grid and its memory before any sampling */
    if (cli_mpi_fail(!s->no_png && dfx_png_grid_check(s->out, n, mi->channels, mi->height,
                                                      mi->width, &s->layout, err),
                     err))
        return -1;
    double png = s->no_png ? 0 : png_bytes(mi, n, s->layout);
    if (cli_mpi_fail(cli_draw_memory(d, n, png, err), err)) return -1;
    if (cli_mpi_fail(root && cli_draw_images(d, n, &s->images, err), err)) return -1;
    if (cli_draw_run(d, n, s->images, &s->nfe, "sampling", err)) return -1;
    s->seconds = dfx_seconds() - t0;
    return 0;
}

/* Rank 0: the PNG and the .npy, and the summary line. */
static int sample_report(void *state, dfx_error *err)
{
    const sample_cmd *s = state;
    if (cli_mpi_rank() != 0) return 0;
    const cli_draw *d = &s->d;
    const dfx_model_info *mi = d->mi;
    const int n = s->n;
    /* both to temporaries, then renamed together: never a new grid beside
     * an old .npy */
    dfx_outputs_begin();
    int64_t shape[4] = {n, mi->channels, mi->height, mi->width};
    if ((!s->no_png && dfx_write_png_grid(s->out, s->images, n, mi->channels, mi->height,
                                          mi->width, mi->range_lo, mi->range_hi, &s->layout,
                                          err)) ||
        (s->npy && dfx_write_npy(s->npy, s->images, 4, shape, err))) {
        dfx_outputs_abort();
        return -1;
    }
    if (dfx_outputs_commit(err)) return -1;
    if (d->quiet) return 0;
    char lang[64] = "";
    if (d->start_steps > 0)
        snprintf(lang, sizeof lang, " (%d Langevin steps at the start)", d->start_steps);
    fprintf(stderr,
            "difflux: %d samples of %s from %s, %s on %s%s, %.1f evaluations/sample%s, %.2f s "
            "(%.1f samples/s)",
            n, mi->kind, d->model, d->sampler, dfx_backend_name(d->be),
            cli_mpi_size() > 1 ? " (MPI ranks)" : "", s->nfe, lang, s->seconds, n / s->seconds);
    if (!s->no_png) fprintf(stderr, " -> %s", s->out);
    if (s->npy) fprintf(stderr, "%s%s", s->no_png ? " -> " : ", ", s->npy);
    fputc('\n', stderr);
    return 0;
}

static void sample_release(void *state)
{
    sample_cmd *s = state;
    free(s->images);
    cli_draw_close(&s->d);
}

const cli_steps cmd_sample = {sizeof(sample_cmd), sample_parse, sample_check, sample_run,
                              sample_report, sample_release};
