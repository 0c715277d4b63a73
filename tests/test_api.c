/* The example at the top of host/difflux.h, run as written (with every
 * failure checked), and checked to stand in the header line for line: the
 * public header alone is enough to sample a model and write a grid. */
#include "difflux.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

#define EXAMPLE_FAIL(call)                                                                  \
    do {                                                                                    \
        fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, err.msg);        \
        return 1;                                                                           \
    } while (0)

static int example(void)
{
    /* EXAMPLE BEGIN */
    dfx_error err;
    dfx_backend *be = dfx_backend_create("auto", 0, &err);
    dfx_model *m = dfx_model_load("models/mnist-gmm.safetensors", be, &err);
    const dfx_model_info *info = dfx_model_get_info(m);
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = "heun"; o.steps = 30; o.seed = 1;
    dfx_sampler *s = dfx_sampler_create(m, &o, 64, &err);   // plans buffers once
    float *images = malloc(64 * sizeof(float) * info->channels * info->height * info->width);
    dfx_sample_stats stats;
    dfx_sampler_run(s, 0, 64, images, &stats, &err);          // samples 0..63
    dfx_grid_layout grid = {.cols = 8, .pad = 2, .pad_value = 1, .scale = 1};
    dfx_write_png_grid("grid.png", images, 64, info->channels, info->height, info->width,
                       info->range_lo, info->range_hi, &grid, &err);
    free(images); dfx_sampler_free(s); dfx_model_free(m); dfx_backend_destroy(be);
    /* EXAMPLE END */
    return 0;
}

/* The same calls, each checked, with properties of the result asserted. */
static int checked(const char *grid_file)
{
    dfx_error err;
    dfx_backend *be = dfx_backend_create("auto", 0, &err);
    if (!be) EXAMPLE_FAIL(dfx_backend_create);
    dfx_model *m = dfx_model_load("models/mnist-gmm.safetensors", be, &err);
    if (!m) EXAMPLE_FAIL(dfx_model_load);
    const dfx_model_info *info = dfx_model_get_info(m);
    CHECK(info->channels == 1 && info->height == 28 && info->width == 28, "mnist shape");
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = "heun"; o.steps = 30; o.seed = 1;
    dfx_sampler *s = dfx_sampler_create(m, &o, 64, &err);
    if (!s) EXAMPLE_FAIL(dfx_sampler_create);
    size_t dim = (size_t)info->channels * info->height * info->width;
    float *images = malloc(64 * sizeof(float) * dim);
    dfx_sample_stats stats;
    if (dfx_sampler_run(s, 0, 64, images, &stats, &err)) EXAMPLE_FAIL(dfx_sampler_run);
    /* Heun: two evaluations a step, plus the final denoising step x <- x_hat */
    CHECK(stats.nfe == 2 * 30 + 1, "heun NFE %ld", stats.nfe);
    /* samples of an MNIST mixture: mostly inside the data range, not constant */
    size_t inside = 0;
    double lo = info->range_lo, hi = info->range_hi, mean = 0, var = 0;
    for (size_t i = 0; i < 64 * dim; i++) {
        double v = images[i];
        inside += v >= lo - 0.1 * (hi - lo) && v <= hi + 0.1 * (hi - lo);
        mean += v;
    }
    mean /= 64.0 * dim;
    for (size_t i = 0; i < 64 * dim; i++) var += (images[i] - mean) * (images[i] - mean);
    var /= 64.0 * dim;
    CHECK(inside > 0.99 * 64 * dim, "%zu of %zu values inside the data range", inside, 64 * dim);
    CHECK(var > 0.01 * (hi - lo) * (hi - lo), "variance %g", var);
    dfx_grid_layout grid = {.cols = 8, .pad = 2, .pad_value = 1, .scale = 1};
    if (dfx_write_png_grid(grid_file, images, 64, info->channels, info->height, info->width,
                           info->range_lo, info->range_hi, &grid, &err))
        EXAMPLE_FAIL(dfx_write_png_grid);
    free(images);
    dfx_sampler_free(s);
    dfx_model_free(m);
    dfx_backend_destroy(be);
    return 0;
}

/* The lines between `EXAMPLE BEGIN` and `EXAMPLE END` of this file against
 * the indented lines of the header's opening comment that follow "line for
 * line", with the comment's " *     " taken off. */
static int example_in_header(void)
{
    FILE *t = fopen(DFX_SOURCE_DIR "/tests/test_api.c", "r");
    FILE *h = fopen(DFX_SOURCE_DIR "/host/difflux.h", "r");
    if (!t || !h) {
        fprintf(stderr, "FAIL: cannot open tests/test_api.c or host/difflux.h\n");
        if (t) fclose(t);
        if (h) fclose(h);
        return 1;
    }
    char a[512], b[512];
    int in = 0, lines = 0, bad = 0;
    while (fgets(a, sizeof a, t)) {
        if (strstr(a, "EXAMPLE END")) break;
        if (strstr(a, "EXAMPLE BEGIN")) {
            in = 1;
            /* skip the header to its first example line */
            while (fgets(b, sizeof b, h) && strncmp(b, " *     ", 7) != 0) {}
            continue;
        }
        if (!in) continue;
        if (lines > 0 && !fgets(b, sizeof b, h)) b[0] = 0;
        lines++;
        const char *code = a + 4; /* the function body's indentation */
        const char *doc = strncmp(b, " *     ", 7) == 0 ? b + 7 : "";
        if (strcmp(code, doc) != 0) {
            fprintf(stderr, "FAIL: example line %d differs:\n  test:   %s  header: %s", lines,
                    code, doc[0] ? doc : "(missing)\n");
            bad = 1;
        }
    }
    fclose(t);
    fclose(h);
    CHECK(in && lines >= 10, "example block found (%d lines)", lines);
    return bad;
}

/* The example's relative paths, in a scratch folder of the build tree:
 * models/ is a link to the source tree's. */
static int enter_scratch(void)
{
    mkdir("api-example", 0755);
    if (chdir("api-example") != 0) return -1;
    unlink("models");
    return symlink(DFX_SOURCE_DIR "/models", "models");
}

int main(void)
{
    if (enter_scratch() != 0) {
        perror("test_api: api-example/models");
        return 1;
    }
    CHECK(example_in_header() == 0, "the header's example is this test's");
    CHECK(example() == 0, "example runs");
    FILE *f = fopen("grid.png", "rb");
    CHECK(f != NULL, "example wrote grid.png");
    if (f) fclose(f);
    CHECK(checked("grid-checked.png") == 0, "checked example");
    remove("grid.png");
    remove("grid-checked.png");
    return check_report("api");
}
