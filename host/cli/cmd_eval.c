/* difflux eval: sample quality on a classifier's features (FID, KID,
 * confidence, class histogram, nearest training images). */
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

static void print_report(FILE *o, const cli_quality *q, const cli_ref *r, dfx_model *cls)
{
    fprintf(o, "FID          %.3f   (%ld samples vs %ld reference images; lower is better)\n",
            q->fid, q->n, r->count);
    fprintf(o, "KID          %.4g +- %.2g   (mean +- std over %d subsets of %d)\n", q->kid,
            q->kid_std, q->kid_subsets, q->kid_size);
    fprintf(o, "confidence   %.3f mean top-class probability; %.1f%% of samples below 0.5\n",
            q->confidence, 100.0 * q->low_conf);
    fprintf(o, "classes      %d of %d covered (>= 1/4 of a uniform share); entropy %.3f of %.3f "
               "bits\n",
            q->covered, q->K, q->entropy, log2((double)q->K));
    long top = 1;
    for (int k = 0; k < q->K; k++)
        if (q->hist[k] > top) top = q->hist[k];
    for (int k = 0; k < q->K && k < 100; k++) {
        char lab[64], bar[41];
        int w = (int)(40.0 * q->hist[k] / top + 0.5);
        for (int i = 0; i < 40; i++) bar[i] = i < w ? '#' : ' ';
        bar[40] = 0;
        fprintf(o, "  %-12s %6ld %5.1f%% %s\n", dfx_classifier_label(cls, k, lab, sizeof lab),
                q->hist[k], 100.0 * q->hist[k] / q->n, bar);
    }
    if (q->nn_done)
        fprintf(o,
                "memorisation nearest training image: median L2 %.3f, min %.3f (pixels in [0, 1]);"
                "\n             training images' own nearest other: median %.3f, 5%% %.3f; %.1f%% "
                "of samples closer than that 5%%\n",
                q->nn_median, q->nn_min, r->nn_median, r->nn_p05, 100.0 * q->nn_close);
}

static int write_json(const char *file, const cli_quality *q, const cli_draw *d, int from_file,
                      double nfe, double seconds, dfx_error *err)
{
    char buf[8192];
    size_t n = 0, cap = sizeof buf;
    n += (size_t)snprintf(buf + n, cap - n,
                          "{\"model\": \"%s\", \"sampler\": \"%s\", \"steps\": %d, \"seed\": %llu, "
                          "\"n\": %ld, \"nfe\": %.3f, \"start_langevin\": %d, "
                          "\"seconds\": %.3f, \"fid\": %.6g, "
                          "\"kid\": %.6g, \"kid_std\": %.6g, \"confidence\": %.6g, "
                          "\"low_confidence\": %.6g, \"classes_covered\": %d, "
                          "\"class_entropy_bits\": %.6g, \"histogram\": [",
                          from_file ? "" : d->model, from_file ? "" : d->sampler, d->steps,
                          (unsigned long long)d->seed, q->n, nfe,
                          from_file ? 0 : d->start_steps, seconds, q->fid, q->kid,
                          q->kid_std, q->confidence, q->low_conf, q->covered, q->entropy);
    for (int k = 0; k < q->K && n < cap; k++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%ld", k ? ", " : "", q->hist[k]);
    if (n < cap) n += (size_t)snprintf(buf + n, cap - n, "]");
    if (n < cap && q->nn_done)
        n += (size_t)snprintf(buf + n, cap - n,
                              ", \"nn_median\": %.6g, \"nn_min\": %.6g, \"nn_close\": %.6g",
                              q->nn_median, q->nn_min, q->nn_close);
    if (n < cap && !from_file && d->guide_model)
        n += (size_t)snprintf(buf + n, cap - n, ", \"guide_model\": \"%s\", \"guide_weight\": %g",
                              d->guide_model, d->guide_weight);
    if (n < cap) n += (size_t)snprintf(buf + n, cap - n, "}\n");
    if (n >= cap) return dfx_fail(err, "%s: report too long", file);
    return dfx_write_text(file, buf, err);
}

static const char about[] =
    "Draws --n samples (or reads --samples) and measures their quality on a classifier's\n"
    "features against the data set's reference statistics: FID, KID (mean +- std over\n"
    "subsets), classifier confidence, the predicted-class histogram (mode coverage) and\n"
    "the distance to the nearest training image (memorisation). Under\n"
    "`mpirun -np K difflux eval ...` the ranks draw blocks of the samples; rank 0\n"
    "gathers them and reports exactly what one process would.\n"
    "`--make-reference --classifier C --data IDX` computes a reference file once.\n"
    "Options, output paths and memory (--max-memory) are checked before any\n"
    "sampling; --save-samples and --json are renamed into place together at the\n"
    "end, and SIGINT/SIGTERM remove their temporaries.";

typedef struct eval_cmd {
    cli_draw d;
    const char *classifier, *reference, *samples, *json, *npy, *data, *train, *out;
    int n, make_ref, no_nn, kid_subsets, kid_size;
    cli_opt opts[CLI_DRAW_OPTS + 16];
    int nopts;
    /* the run */
    dfx_model *cls;
    cli_ref ref;
    cli_quality q;
    float *images; /* pixels in [0, 1] once measured */
    long count;
    double nfe, seconds;
} eval_cmd;

static int eval_parse(void *state, int argc, char **argv)
{
    eval_cmd *e = state;
    cli_draw_init(&e->d);
    e->n = 1000, e->kid_subsets = 10, e->kid_size = 1000;
    const cli_opt own[] = {
        {"n", OPT_INT, &e->n, "COUNT", "samples to draw (1000)", 0},
        {"classifier", OPT_STR, &e->classifier, "FILE",
         "feature network (models/mnist-classifier or fashion-classifier, by the model's data)",
         0},
        {"reference", OPT_STR, &e->reference, "FILE",
         "reference statistics (the classifier's FILE.ref.safetensors)", 0},
        {"samples", OPT_STR, &e->samples, "FILE",
         "evaluate these samples instead of drawing: .npy from difflux sample --npy (data "
         "range from --model), or IDX images (real data: the metrics' baseline; the first --n)",
         0},
        {"save-samples", OPT_STR, &e->npy, "FILE.npy", "also write the drawn samples", 0},
        {"json", OPT_STR, &e->json, "FILE", "also write the metrics as JSON", 0},
        cli_opt_kid_subsets(&e->kid_subsets),
        cli_opt_kid_size(&e->kid_size),
        {"no-nn", OPT_FLAG, &e->no_nn, NULL, "skip the nearest-training-image distances", 0},
        {"make-reference", OPT_FLAG, &e->make_ref, NULL,
         "compute the classifier's reference statistics from --data and write --out", 0},
        {"data", OPT_STR, &e->data, "IDX", "--make-reference: reference images", 0},
        {"train-data", OPT_STR, &e->train, "IDX",
         "--make-reference: the models' training images (default --data)", 0},
        {"out", OPT_STR, &e->out, "FILE", "--make-reference: output (the classifier's .ref file)",
         0},
    };
    memcpy(e->opts, own, sizeof own);
    e->nopts = cli_draw_options(&e->d, e->opts, (int)(sizeof own / sizeof own[0]), 1);
    return cli_options("eval", "difflux eval [options]", about, argc, argv, e->opts, e->nopts);
}

static int eval_check(void *state)
{
    eval_cmd *e = state;
    if (e->n < 2) return fprintf(stderr, "difflux eval: --n must be at least 2\n"), CLI_USAGE;
    if (e->kid_subsets < 1 || e->kid_size < 2)
        return fprintf(stderr, "difflux eval: need --kid-subsets >= 1 and --kid-size >= 2\n"),
               CLI_USAGE;
    if (e->make_ref && (!e->classifier || !e->data))
        return fprintf(stderr, "difflux eval: --make-reference needs --classifier and --data\n"),
               CLI_USAGE;
    if (!e->make_ref && (e->data || e->train || e->out))
        return fprintf(stderr, "difflux eval: --data, --train-data and --out belong to "
                               "--make-reference\n"),
               CLI_USAGE;
    if (e->samples && e->npy)
        return fprintf(stderr, "difflux eval: --samples and --save-samples contradict each "
                               "other\n"),
               CLI_USAGE;
    int rc = cli_draw_check("eval", &e->d, e->opts, e->nopts, e->n);
    if (rc) return rc;
    const cli_file outs[3] = {{"save-samples", e->npy}, {"json", e->json}, {"out", e->out}};
    const cli_file ins[7] = {{"model", e->d.model},       {"classifier", e->classifier},
                             {"reference", e->reference}, {"samples", e->samples},
                             {"data", e->data},           {"train-data", e->train},
                             {"model", cli_default_model()}};
    return cli_draw_outputs("eval", outs, 3, ins, 7);
}

/* --make-reference (rank 0 only). */
static int eval_make_reference(eval_cmd *e, dfx_error *err)
{
    char outbuf[1200];
    e->d.be = cli_backend_open(e->d.device, e->d.threads, NULL, err);
    e->cls = e->d.be ? dfx_model_load(e->classifier, e->d.be, err) : NULL;
    if (!e->cls) return -1;
    const char *out = e->out ? e->out : cli_ref_name(e->classifier, outbuf, sizeof outbuf);
    return cli_ref_make(e->cls, e->classifier, e->data, e->train ? e->train : e->data, out,
                        e->d.quiet, err);
}

/* --samples (rank 0 only): .npy samples or IDX images as pixels. */
static int eval_read_samples(eval_cmd *e, dfx_error *err)
{
    cli_draw *d = &e->d;
    d->be = cli_backend_open(d->device, d->threads, NULL, err);
    if (!d->be) return -1;
    /* the model (if given) only tells the data range and the data set */
    double lo = -1.0, hi = 1.0;
    const dfx_model_info *mi = NULL;
    if (cli_find(e->opts, e->nopts, "model")->set) {
        d->m = dfx_model_load(d->model, d->be, err);
        if (!d->m) return -1;
        mi = dfx_model_get_info(d->m);
        lo = mi->range_lo;
        hi = mi->range_hi;
    }
    if (cli_quality_open(d->be, mi, &e->classifier, &e->reference, &e->cls, &e->ref, err))
        return -1;
    const dfx_model_info *ci = dfx_model_get_info(e->cls);
    size_t dim = (size_t)ci->channels * ci->height * ci->width;
    size_t len = strlen(e->samples);
    if (len > 4 && strcmp(e->samples + len - 4, ".npy") == 0) {
        e->images = dfx_read_npy(e->samples, dim, &e->count, err);
        if (e->images) cli_to_pixels(e->images, (size_t)e->count * dim, lo, hi);
    } else { /* IDX images, e.g. real data: the baseline of a metric */
        int ni = 0;
        e->images = cli_read_pixels(e->samples, &ni, (int)dim, err);
        e->count = ni;
    }
    if (!e->images) return -1;
    if (cli_find(e->opts, e->nopts, "n")->set && e->n < e->count) e->count = e->n;
    if (e->count < 2) return dfx_fail(err, "%s: need at least 2 samples", e->samples);
    return 0;
}

/* Draws --n samples, gathered on rank 0; there --save-samples waits for
 * the report and the samples become pixels. */
static int eval_draw(eval_cmd *e, dfx_error *err)
{
    cli_draw *d = &e->d;
    const int n = e->n, root = cli_mpi_rank() == 0;
    double t0 = dfx_seconds();
    e->count = n;
    if (cli_mpi_fail(cli_draw_open(d, e->opts, e->nopts, err), err)) return -1;
    if (cli_mpi_fail(cli_draw_memory(d, n, 0, err), err)) return -1;
    int orc = root && (cli_draw_images(d, n, &e->images, err) ||
                       cli_quality_open(d->be, d->mi, &e->classifier, &e->reference, &e->cls,
                                        &e->ref, err));
    if (cli_mpi_fail(orc, err)) return -1;
    if (cli_draw_run(d, n, e->images, &e->nfe, "sampling", err)) return -1;
    e->seconds = dfx_seconds() - t0;
    if (!root) return 0;
    dfx_outputs_begin(); /* the samples wait for the report: renamed together */
    if (e->npy) {
        int64_t shape[4] = {n, d->mi->channels, d->mi->height, d->mi->width};
        if (dfx_write_npy(e->npy, e->images, 4, shape, err)) return -1;
    }
    cli_to_pixels(e->images, (size_t)n * d->dim, d->mi->range_lo, d->mi->range_hi);
    return 0;
}

static int eval_run(void *state, dfx_error *err)
{
    eval_cmd *e = state;
    if (cli_mpi_rank() != 0 && (e->make_ref || e->samples)) return 0; /* nothing to split */
    if (e->make_ref) return eval_make_reference(e, err);
    return e->samples ? eval_read_samples(e, err) : eval_draw(e, err);
}

/* Rank 0: the metrics, printed and in --json, and the outputs renamed. */
static int eval_report(void *state, dfx_error *err)
{
    eval_cmd *e = state;
    if (cli_mpi_rank() != 0 || e->make_ref) return 0;
    const cli_draw *d = &e->d;
    cli_quality_opts qo = {e->kid_subsets, e->kid_size, d->seed, !e->no_nn, d->quiet};
    if (cli_quality_measure(e->cls, &e->ref, e->images, e->count, &qo, &e->q, err)) return -1;
    if (e->samples)
        printf("samples      %ld from %s\n", e->count, e->samples);
    else
        printf("samples      %d from %s, sampler %s, %.1f evaluations/sample%s, %.1f s\n", e->n,
               d->model, d->sampler, e->nfe,
               d->start_steps > 0 ? " (with the start's Langevin steps)" : "", e->seconds);
    printf("classifier   %s (reference %s)\n", e->classifier, e->reference);
    print_report(stdout, &e->q, &e->ref, e->cls);
    if (e->json &&
        write_json(e->json, &e->q, d, e->samples != NULL, e->nfe, e->seconds, err))
        return -1;
    return dfx_outputs_commit(err);
}

static void eval_release(void *state)
{
    eval_cmd *e = state;
    cli_quality_free(&e->q);
    cli_ref_free(&e->ref);
    free(e->images);
    dfx_model_free(e->cls);
    cli_draw_close(&e->d);
}

const cli_steps cmd_eval = {sizeof(eval_cmd), eval_parse, eval_check, eval_run, eval_report,
                            eval_release};
