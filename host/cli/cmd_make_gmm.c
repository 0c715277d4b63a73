/* difflux make-gmm: the exact ("memorising") Gaussian-mixture model of a
 * set of images, one component per image. */
#include "args.h"
#include "cli.h"
#include "difflux.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef DFX_SOURCE_DIR
#define DFX_SOURCE_DIR "."
#endif

static const char about[] =
    "Builds the exact Gaussian-mixture model p = (1/K) sum_k N(image_k, C^2 I)\n"
    "of K images: its predictions are the optimal denoiser of that set, on any path.\n"
    "With --path dale the mixture lives in log space (means log x, x in the range).";

typedef struct gmm_cmd {
    const char *images, *labels, *out, *path, *dataset;
    int count, offset, cls;
    double std, lo, hi;
    dfx_path_family fam;
    /* the mixture */
    int h, w;
    float *means, *stds, *weights;
} gmm_cmd;

static int gmm_parse(void *state, int argc, char **argv)
{
    gmm_cmd *g = state;
    g->images = DFX_SOURCE_DIR "/models/data/mnist10k-images-idx3-ubyte.gz";
    g->path = "linear";
    g->count = 300, g->cls = -1;
    g->std = 0.02, g->lo = -1.0, g->hi = 1.0;
    cli_opt opts[] = {
        {"images", OPT_STR, &g->images, "FILE", "IDX image file, may be .gz (the shipped MNIST)",
         0},
        {"labels", OPT_STR, &g->labels, "FILE", "IDX label file (needed by --class)", 0},
        {"class", OPT_INT, &g->cls, "K", "keep only images of this label", 0},
        {"count", OPT_INT, &g->count, "K", "number of components = images used (300)", 0},
        {"offset", OPT_INT, &g->offset, "I", "skip the first I (kept) images (0)", 0},
        {"std", OPT_DOUBLE, &g->std, "C", "standard deviation of every component (0.02)", 0},
        {"path", OPT_STR, &g->path, "FAMILY", "path stored in the file (linear)", 0},
        {"range-lo", OPT_DOUBLE, &g->lo, "V", "data value of pixel 0 (-1)", 0},
        {"range-hi", OPT_DOUBLE, &g->hi, "V", "data value of pixel 255 (1)", 0},
        {"dataset", OPT_STR, &g->dataset, "TEXT", "provenance note (the image file name)", 0},
        {"out", OPT_STR, &g->out, "FILE", "model file to write (required)", 0},
    };
    return cli_options("make-gmm", "difflux make-gmm --out FILE [options]", about, argc, argv,
                       opts, (int)(sizeof opts / sizeof opts[0]));
}

static int gmm_check(void *state)
{
    gmm_cmd *g = state;
    if (!g->out) return fprintf(stderr, "difflux make-gmm: --out FILE is required\n"), CLI_USAGE;
    const cli_file outs[1] = {{"out", g->out}},
                   ins[2] = {{"images", g->images}, {"labels", g->labels}};
    int rc = cli_check_outputs("make-gmm", outs, 1, ins, 2);
    if (rc) return rc;
    if (g->count < 1 || g->offset < 0 || !(g->std > 0) || !(g->hi > g->lo))
        return fprintf(stderr, "difflux make-gmm: need --count >= 1, --offset >= 0, --std > 0, "
                               "--range-lo < --range-hi\n"),
               CLI_USAGE;
    int known = dfx_path_parse(g->path, &g->fam) == 0;
    if (known && g->fam == DFX_PATH_DALE && !(g->lo > 0))
        return fprintf(stderr, "difflux make-gmm: the dale path needs positive data "
                               "(e.g. --range-lo 1 --range-hi 2)\n"),
               CLI_USAGE;
    if (g->cls >= 0 && !g->labels)
        return fprintf(stderr, "difflux make-gmm: --class needs --labels\n"), CLI_USAGE;
    if (!known)
        return fprintf(stderr, "difflux make-gmm: unknown --path '%s'\n", g->path), CLI_USAGE;
    return CLI_OK;
}

/* One component per kept image after --offset: means (log x on the dale
 * path), stds and weights. */
static int gmm_build(void *state, dfx_error *err)
{
    gmm_cmd *g = state;
    uint8_t *px = NULL, *lab = NULL;
    int n, nl, rc = -1;
    if (dfx_read_idx_images(g->images, &px, &n, &g->h, &g->w, err)) goto done;
    if (g->labels) {
        if (dfx_read_idx_labels(g->labels, &lab, &nl, err)) goto done;
        if (nl != n) {
            snprintf(err->msg, sizeof err->msg, "%s has %d labels for %d images", g->labels, nl,
                     n);
            goto done;
        }
    }
    const size_t dim = (size_t)g->h * g->w;
    const int count = g->count;
    g->means = malloc((size_t)count * dim * sizeof *g->means);
    g->stds = malloc((size_t)count * sizeof *g->stds);
    g->weights = malloc((size_t)count * sizeof *g->weights);
    if (!g->means || !g->stds || !g->weights) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        goto done;
    }
    int k = 0, seen = 0;
    for (int i = 0; i < n && k < count; i++) {
        if (g->cls >= 0 && lab[i] != g->cls) continue;
        if (seen++ < g->offset) continue;
        for (size_t j = 0; j < dim; j++) {
            double v = g->lo + (g->hi - g->lo) * px[(size_t)i * dim + j] / 255.0;
            /* the dale path works in y = log x */
            g->means[(size_t)k * dim + j] = (float)(g->fam == DFX_PATH_DALE ? log(v) : v);
        }
        g->stds[k] = (float)g->std;
        g->weights[k] = 1.0f;
        k++;
    }
    if (k < count) {
        snprintf(err->msg, sizeof err->msg, "%s: only %d matching images after the offset, %d asked",
                 g->images, k, count);
        goto done;
    }
    rc = 0;
done:
    free(px);
    free(lab);
    return rc;
}

static int gmm_save(void *state, dfx_error *err)
{
    const gmm_cmd *g = state;
    dfx_path p;
    dfx_path_default(&p, g->fam);
    char desc[256];
    snprintf(desc, sizeof desc,
             "exact memorising Gaussian mixture of %d images (offset %d%s), c = %g", g->count,
             g->offset, g->cls >= 0 ? ", one class" : "", g->std);
    const char *base = strrchr(g->images, '/');
    if (dfx_gmm_save(g->out, &p, 1, g->h, g->w, g->lo, g->hi, g->count, g->means, g->stds,
                     g->weights, g->dataset ? g->dataset : (base ? base + 1 : g->images), desc,
                     err))
        return -1;
    printf("wrote %s: %d components of %d x %d, path %s\n", g->out, g->count, g->h, g->w,
           g->path);
    return 0;
}

static void gmm_release(void *state)
{
    gmm_cmd *g = state;
    free(g->means);
    free(g->stds);
    free(g->weights);
}

const cli_steps cmd_make_gmm = {sizeof(gmm_cmd), gmm_parse, gmm_check, gmm_build, gmm_save,
                                gmm_release};
