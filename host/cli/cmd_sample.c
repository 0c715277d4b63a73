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

int cmd_sample(int argc, char **argv)
{
    cli_draw d;
    cli_draw_init(&d);
    const char *out = "grid.png", *npy = NULL;
    int n = 64, cols = 0, pad = 2, scale = 1, no_png = 0;
    double pad_value = 1.0;
    cli_opt opts[CLI_DRAW_OPTS + 10] = {
        {"n", OPT_INT, &n, "COUNT", "number of samples (64)", 0},
        {"out", OPT_STR, &out, "FILE", "PNG grid to write (grid.png)", 0},
        {"no-png", OPT_FLAG, &no_png, NULL, "do not write a PNG grid", 0},
        {"npy", OPT_STR, &npy, "FILE", "also write raw float32 samples [n, C, H, W]", 0},
        {"cols", OPT_INT, &cols, "C", "grid columns (ceil(sqrt(n)))", 0},
        {"pad", OPT_INT, &pad, "P", "pixels between tiles, 0 to 1000 (2)", 0},
        {"pad-value", OPT_DOUBLE, &pad_value, "V", "padding grey level, 0 black .. 1 white (1)",
         0},
        {"scale", OPT_INT, &scale, "K", "upscale each pixel to K x K, 1 to 64 (1)", 0},
    };
    int nopts = cli_draw_options(&d, opts, 1);
    int help;
    int rc = cli_parse("sample", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux sample [options]",
                  "Draws samples from a model file and writes them as a PNG grid (and, with "
                  "--npy,\nas raw float32 values in the model's data space). Sample i with seed "
                  "S is the\nsame whatever --batch, --device or --start-index split is used, and "
                  "under\n`mpirun -np K difflux sample ...` the ranks draw blocks of the indices "
                  "and\nrank 0 writes exactly what one process would.\n\n"
                  "Every option, the output paths and the PNG grid (1, 3 or 4 channels, at most\n"
                  "65535 pixels a side) are checked, and the memory the run needs is compared\n"
                  "with --max-memory, before the first network evaluation. The PNG and the .npy\n"
                  "are written to hidden temporaries and renamed into place together at the\n"
                  "end; SIGINT or SIGTERM removes them and exits with 128 + the signal.",
                  opts, nopts);
        return CLI_OK;
    }
    /* option checks that need no model */
    if (n < 1) return fprintf(stderr, "difflux sample: --n must be at least 1\n"), CLI_USAGE;
    if (no_png && cli_find(opts, nopts, "out")->set)
        return fprintf(stderr, "difflux sample: --out and --no-png contradict each other\n"),
               CLI_USAGE;
    if (no_png && !npy)
        return fprintf(stderr, "difflux sample: --no-png without --npy would write nothing\n"),
               CLI_USAGE;
    if (cols < 0) return fprintf(stderr, "difflux sample: --cols must be >= 0\n"), CLI_USAGE;
    if (pad < 0 || pad > 1000)
        return fprintf(stderr, "difflux sample: --pad must be in [0, 1000], got %d\n", pad),
               CLI_USAGE;
    if (scale < 1 || scale > 64)
        return fprintf(stderr, "difflux sample: --scale must be in [1, 64], got %d\n", scale),
               CLI_USAGE;
    if (!(pad_value >= 0 && pad_value <= 1))
        return fprintf(stderr, "difflux sample: --pad-value must be in [0, 1]\n"), CLI_USAGE;
    if ((rc = cli_draw_check("sample", &d, opts, nopts, n))) return rc;
    const int root = cli_mpi_rank() == 0;
    {
        const cli_file outs[2] = {{"out", no_png ? NULL : out}, {"npy", npy}};
        const cli_file ins[1] = {{"model", d.model}};
        int orc = root ? cli_check_outputs("sample", outs, 2, ins, 1) : CLI_OK;
        if (cli_mpi_any(orc)) return orc ? orc : CLI_FAIL;
    }

    dfx_error err = {{0}};
    float *images = NULL;
    rc = CLI_FAIL;
    double t0 = cli_now(), nfe = 0.0;
    if (cli_mpi_fail(cli_draw_open(&d, opts, nopts, &err), &err)) goto done;
    const dfx_model_info *mi = d.mi;
    /* one column per class when the grid cycles through them */
    if (mi->num_classes > 0 && d.class_id == DFX_CLASS_CYCLE && cols == 0 &&
        n >= mi->num_classes)
        cols = mi->num_classes;
    dfx_grid_layout L = {cols, pad, pad_value, scale};
    /* the grid and its memory before any sampling */
    if (cli_mpi_fail(!no_png && dfx_png_grid_check(out, n, mi->channels, mi->height, mi->width,
                                                   &L, &err),
                     &err))
        goto done;
    double png_bytes = 0;
    if (!no_png) {
        dfx_grid_layout G = L;
        if (G.cols <= 0) G.cols = (int)ceil(sqrt((double)n) - 1e-9);
        if (G.cols > n) G.cols = n;
        double rows = ceil((double)n / G.cols);
        png_bytes = (G.cols * ((double)mi->width * scale + pad) + pad) *
                    (rows * ((double)mi->height * scale + pad) + pad) * mi->channels;
    }
    if (cli_mpi_fail(cli_draw_memory(&d, n, png_bytes, &err), &err)) goto done;
    if (root) {
        images = malloc((size_t)n * d.dim * sizeof(float));
        if (!images) snprintf(err.msg, sizeof err.msg, "out of memory for %d samples", n);
    }
    if (cli_mpi_fail(root && !images, &err)) goto done;
    if (cli_draw_run(&d, n, images, &nfe, "sampling", &err)) goto done;
    double el = cli_now() - t0;
    if (root) {
        /* both to temporaries, then renamed together: never a new grid
         * beside an old .npy */
        dfx_outputs_begin();
        int64_t shape[4] = {n, mi->channels, mi->height, mi->width};
        if ((!no_png && dfx_write_png_grid(out, images, n, mi->channels, mi->height, mi->width,
                                           mi->range_lo, mi->range_hi, &L, &err)) ||
            (npy && dfx_write_npy(npy, images, 4, shape, &err))) {
            dfx_outputs_abort();
            goto done;
        }
        if (dfx_outputs_commit(&err)) goto done;
    }
    if (root && !d.quiet) {
        fprintf(stderr,
                "difflux: %d samples of %s from %s, %s on %s%s, %.1f evaluations/sample, %.2f s "
                "(%.1f samples/s)",
                n, mi->kind, d.model, d.sampler, dfx_backend_name(d.be),
                cli_mpi_size() > 1 ? " (MPI ranks)" : "", nfe, el, n / el);
        if (!no_png) fprintf(stderr, " -> %s", out);
        if (npy) fprintf(stderr, "%s%s", no_png ? " -> " : ", ", npy);
        fputc('\n', stderr);
    }
    rc = CLI_OK;
done:
    if (rc != CLI_OK && (root || !cli_mpi_other(&err)))
        fprintf(stderr, "difflux sample: %s\n", err.msg);
    free(images);
    cli_draw_close(&d);
    return rc;
}
