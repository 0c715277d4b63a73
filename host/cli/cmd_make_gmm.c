/* difflux make-gmm: the exact ("memorising") Gaussian-mixture model of a
 * set of images, one component per image. */
#include "args.h"
#include "cli.h"
#include "difflux.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fam_check(const char *name)
{
    dfx_path_family f;
    return dfx_path_parse(name, &f) ? -1 : (int)f;
}

#ifndef DFX_SOURCE_DIR
#define DFX_SOURCE_DIR "."
#endif

int cmd_make_gmm(int argc, char **argv)
{
    const char *images = DFX_SOURCE_DIR "/models/data/mnist10k-images-idx3-ubyte.gz",
               *labels = NULL, *out = NULL, *path = "linear", *dataset = NULL;
    int count = 300, offset = 0, cls = -1;
    double std = 0.02, lo = -1.0, hi = 1.0;
    cli_opt opts[] = {
        {"images", OPT_STR, &images, "FILE", "IDX image file, may be .gz (the shipped MNIST)", 0},
        {"labels", OPT_STR, &labels, "FILE", "IDX label file (needed by --class)", 0},
        {"class", OPT_INT, &cls, "K", "keep only images of this label", 0},
        {"count", OPT_INT, &count, "K", "number of components = images used (300)", 0},
        {"offset", OPT_INT, &offset, "I", "skip the first I (kept) images (0)", 0},
        {"std", OPT_DOUBLE, &std, "C", "standard deviation of every component (0.02)", 0},
        {"path", OPT_STR, &path, "FAMILY", "path stored in the file (linear)", 0},
        {"range-lo", OPT_DOUBLE, &lo, "V", "data value of pixel 0 (-1)", 0},
        {"range-hi", OPT_DOUBLE, &hi, "V", "data value of pixel 255 (1)", 0},
        {"dataset", OPT_STR, &dataset, "TEXT", "provenance note (the image file name)", 0},
        {"out", OPT_STR, &out, "FILE", "model file to write (required)", 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    int help, rc = cli_parse("make-gmm", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux make-gmm --out FILE [options]",
                  "Builds the exact Gaussian-mixture model p = (1/K) sum_k N(image_k, C^2 I)\n"
                  "of K images: its predictions are the optimal denoiser of that set, on any "
                  "path.\nWith --path dale the mixture lives in log space (means log x, x in "
                  "the range).",
                  opts, nopts);
        return CLI_OK;
    }
    if (!out) return fprintf(stderr, "difflux make-gmm: --out FILE is required\n"), CLI_USAGE;
    {
        const cli_file outs[1] = {{"out", out}}, ins[2] = {{"images", images}, {"labels", labels}};
        if ((rc = cli_check_outputs("make-gmm", outs, 1, ins, 2))) return rc;
    }
    if (count < 1 || offset < 0 || !(std > 0) || !(hi > lo))
        return fprintf(stderr, "difflux make-gmm: need --count >= 1, --offset >= 0, --std > 0, "
                               "--range-lo < --range-hi\n"),
               CLI_USAGE;
    if (fam_check(path) == DFX_PATH_DALE && !(lo > 0))
        return fprintf(stderr, "difflux make-gmm: the dale path needs positive data "
                               "(e.g. --range-lo 1 --range-hi 2)\n"),
               CLI_USAGE;
    if (cls >= 0 && !labels)
        return fprintf(stderr, "difflux make-gmm: --class needs --labels\n"), CLI_USAGE;
    dfx_path p;
    dfx_path_family fam;
    if (dfx_path_parse(path, &fam))
        return fprintf(stderr, "difflux make-gmm: unknown --path '%s'\n", path), CLI_USAGE;
    dfx_path_default(&p, fam);

    dfx_error err = {{0}};
    uint8_t *px = NULL, *lab = NULL;
    float *means = NULL, *stds = NULL, *w = NULL;
    int n, h, wd, nl;
    rc = CLI_FAIL;
    if (dfx_read_idx_images(images, &px, &n, &h, &wd, &err)) goto done;
    if (labels) {
        if (dfx_read_idx_labels(labels, &lab, &nl, &err)) goto done;
        if (nl != n) {
            snprintf(err.msg, sizeof err.msg, "%s has %d labels for %d images", labels, nl, n);
            goto done;
        }
    }
    size_t dim = (size_t)h * wd;
    means = malloc((size_t)count * dim * sizeof *means);
    stds = malloc((size_t)count * sizeof *stds);
    w = malloc((size_t)count * sizeof *w);
    if (!means || !stds || !w) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        goto done;
    }
    int k = 0, seen = 0;
    for (int i = 0; i < n && k < count; i++) {
        if (cls >= 0 && lab[i] != cls) continue;
        if (seen++ < offset) continue;
        for (size_t j = 0; j < dim; j++) {
            double v = lo + (hi - lo) * px[(size_t)i * dim + j] / 255.0;
            /* the dale path works in y = log x */
            means[(size_t)k * dim + j] = (float)(fam == DFX_PATH_DALE ? log(v) : v);
        }
        stds[k] = (float)std;
        w[k] = 1.0f;
        k++;
    }
    if (k < count) {
        snprintf(err.msg, sizeof err.msg, "%s: only %d matching images after the offset, %d asked",
                 images, k, count);
        goto done;
    }
    char desc[256];
    snprintf(desc, sizeof desc,
             "exact memorising Gaussian mixture of %d images (offset %d%s), c = %g", count,
             offset, cls >= 0 ? ", one class" : "", std);
    const char *base = strrchr(images, '/');
    if (dfx_gmm_save(out, &p, 1, h, wd, lo, hi, count, means, stds, w,
                     dataset ? dataset : (base ? base + 1 : images), desc, &err))
        goto done;
    printf("wrote %s: %d components of %d x %d, path %s\n", out, count, h, wd, path);
    rc = CLI_OK;
done:
    if (rc) fprintf(stderr, "difflux make-gmm: %s\n", err.msg);
    free(px);
    free(lab);
    free(means);
    free(stds);
    free(w);
    return rc;
}
