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
                          "\"n\": %ld, \"nfe\": %.3f, \"seconds\": %.3f, \"fid\": %.6g, "
                          "\"kid\": %.6g, \"kid_std\": %.6g, \"confidence\": %.6g, "
                          "\"low_confidence\": %.6g, \"classes_covered\": %d, "
                          "\"class_entropy_bits\": %.6g, \"histogram\": [",
                          from_file ? "" : d->model, from_file ? "" : d->sampler, d->steps,
                          (unsigned long long)d->seed, q->n, nfe, seconds, q->fid, q->kid,
                          q->kid_std, q->confidence, q->low_conf, q->covered, q->entropy);
    for (int k = 0; k < q->K && n < cap; k++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%ld", k ? ", " : "", q->hist[k]);
    if (n < cap && q->nn_done)
        n += (size_t)snprintf(buf + n, cap - n,
                              "], \"nn_median\": %.6g, \"nn_min\": %.6g, \"nn_close\": %.6g}\n",
                              q->nn_median, q->nn_min, q->nn_close);
    else if (n < cap)
        n += (size_t)snprintf(buf + n, cap - n, "]}\n");
    if (n >= cap) return dfx_fail(err, "%s: report too long", file);
    return dfx_write_text(file, buf, err);
}

int cmd_eval(int argc, char **argv)
{
    cli_draw d;
    cli_draw_init(&d);
    const char *classifier = NULL, *reference = NULL, *samples = NULL, *json = NULL,
               *npy = NULL, *data = NULL, *train = NULL, *out = NULL;
    int n = 1000, make_ref = 0, no_nn = 0, kid_subsets = 10, kid_size = 1000;
    cli_opt opts[CLI_DRAW_OPTS + 16] = {
        {"n", OPT_INT, &n, "COUNT", "samples to draw (1000)", 0},
        {"classifier", OPT_STR, &classifier, "FILE",
         "feature network (models/mnist-classifier or fashion-classifier, by the model's data)",
         0},
        {"reference", OPT_STR, &reference, "FILE",
         "reference statistics (the classifier's FILE.ref.safetensors)", 0},
        {"samples", OPT_STR, &samples, "FILE",
         "evaluate these samples instead of drawing: .npy from difflux sample --npy (data "
         "range from --model), or IDX images (real data: the metrics' baseline; the first --n)",
         0},
        {"save-samples", OPT_STR, &npy, "FILE.npy", "also write the drawn samples", 0},
        {"json", OPT_STR, &json, "FILE", "also write the metrics as JSON", 0},
        {"kid-subsets", OPT_INT, &kid_subsets, "S", "KID: subsets averaged (10)", 0},
        {"kid-size", OPT_INT, &kid_size, "M", "KID: samples per subset (1000, at most n)", 0},
        {"no-nn", OPT_FLAG, &no_nn, NULL, "skip the nearest-training-image distances", 0},
        {"make-reference", OPT_FLAG, &make_ref, NULL,
         "compute the classifier's reference statistics from --data and write --out", 0},
        {"data", OPT_STR, &data, "IDX", "--make-reference: reference images", 0},
        {"train-data", OPT_STR, &train, "IDX",
         "--make-reference: the models' training images (default --data)", 0},
        {"out", OPT_STR, &out, "FILE", "--make-reference: output (the classifier's .ref file)", 0},
    };
    int nopts = cli_draw_options(&d, opts, 1);
    int help;
    int rc = cli_parse("eval", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux eval [options]",
                  "Draws --n samples (or reads --samples) and measures their quality on a "
                  "classifier's\nfeatures against the data set's reference statistics: FID, KID "
                  "(mean +- std over\nsubsets), classifier confidence, the predicted-class "
                  "histogram (mode coverage) and\nthe distance to the nearest training image "
                  "(memorisation). Under\n`mpirun -np K difflux eval ...` the ranks draw blocks of "
                  "the samples; rank 0\ngathers them and reports exactly what one process would.\n"
                  "`--make-reference --classifier C --data IDX` computes a reference file once.\n"
                  "Options, output paths and memory (--max-memory) are checked before any\n"
                  "sampling; --save-samples and --json are renamed into place together at the\n"
                  "end, and SIGINT/SIGTERM remove their temporaries.",
                  opts, nopts);
        return CLI_OK;
    }
    if (n < 2) return fprintf(stderr, "difflux eval: --n must be at least 2\n"), CLI_USAGE;
    if (kid_subsets < 1 || kid_size < 2)
        return fprintf(stderr, "difflux eval: need --kid-subsets >= 1 and --kid-size >= 2\n"),
               CLI_USAGE;
    if (make_ref && (!classifier || !data))
        return fprintf(stderr, "difflux eval: --make-reference needs --classifier and --data\n"),
               CLI_USAGE;
    if (!make_ref && (data || train || out))
        return fprintf(stderr, "difflux eval: --data, --train-data and --out belong to "
                               "--make-reference\n"),
               CLI_USAGE;
    if (samples && npy)
        return fprintf(stderr, "difflux eval: --samples and --save-samples contradict each "
                               "other\n"),
               CLI_USAGE;
    if ((rc = cli_draw_check("eval", &d, opts, nopts, n))) return rc;
    {
        const cli_file outs[3] = {{"save-samples", npy}, {"json", json}, {"out", out}};
        const cli_file ins[7] = {{"model", d.model},         {"classifier", classifier},
                                 {"reference", reference},   {"samples", samples},
                                 {"data", data},             {"train-data", train},
                                 {"model", cli_default_model()}};
        int orc = cli_mpi_rank() == 0 ? cli_check_outputs("eval", outs, 3, ins, 7) : CLI_OK;
        if (cli_mpi_any(orc)) return orc ? orc : CLI_FAIL;
    }

    dfx_error err = {{0}};
    const int root = cli_mpi_rank() == 0;
    dfx_model *cls = NULL;
    float *images = NULL;
    cli_ref ref = {0};
    cli_quality q = {0};
    char outbuf[1200];
    rc = CLI_FAIL;
    double t0 = cli_now(), nfe = 0.0, seconds = 0.0;
    long count = n;
    if (make_ref) {
        if (!root) return CLI_OK;
        d.be = dfx_backend_create(d.device, d.threads, &err);
        cls = d.be ? dfx_model_load(classifier, d.be, &err) : NULL;
        if (!cls) goto done;
        if (!out) out = cli_ref_name(classifier, outbuf, sizeof outbuf);
        if (cli_ref_make(cls, classifier, data, train ? train : data, out, d.quiet, &err))
            goto done;
        rc = CLI_OK;
        goto done;
    }
    if (samples) {
        if (!root) return CLI_OK; /* nothing to split */
        d.be = dfx_backend_create(d.device, d.threads, &err);
        if (!d.be) goto done;
        /* the model (if given) only tells the data range and the data set */
        double lo = -1.0, hi = 1.0;
        size_t dim = 0;
        const dfx_model_info *mi = NULL;
        if (cli_find(opts, nopts, "model")->set) {
            d.m = dfx_model_load(d.model, d.be, &err);
            if (!d.m) goto done;
            mi = dfx_model_get_info(d.m);
            lo = mi->range_lo;
            hi = mi->range_hi;
        }
        if (cli_quality_open(d.be, mi, &classifier, &reference, &cls, &ref, &err)) goto done;
        const dfx_model_info *ci = dfx_model_get_info(cls);
        dim = (size_t)ci->channels * ci->height * ci->width;
        size_t len = strlen(samples);
        if (len > 4 && strcmp(samples + len - 4, ".npy") == 0) {
            images = dfx_read_npy(samples, dim, &count, &err);
            if (images) cli_to_pixels(images, (size_t)count * dim, lo, hi);
        } else { /* IDX images, e.g. real data: the baseline of a metric */
            int ni = 0;
            images = cli_read_pixels(samples, &ni, (int)dim, &err);
            count = ni;
        }
        if (!images) goto done;
        if (cli_find(opts, nopts, "n")->set && n < count) count = n;
        if (count < 2) {
            dfx_fail(&err, "%s: need at least 2 samples", samples);
            goto done;
        }
    } else {
        if (cli_mpi_fail(cli_draw_open(&d, opts, nopts, &err), &err)) goto done;
        if (cli_mpi_fail(cli_draw_memory(&d, n, 0, &err), &err)) goto done;
        int orc = 0;
        if (root) {
            images = malloc((size_t)n * d.dim * sizeof(float));
            orc = images ? cli_quality_open(d.be, d.mi, &classifier, &reference, &cls, &ref, &err)
                         : dfx_fail(&err, "out of memory for %d samples", n);
        }
        if (cli_mpi_fail(orc, &err)) goto done;
        if (cli_draw_run(&d, n, images, &nfe, "sampling", &err)) goto done;
        seconds = cli_now() - t0;
        if (!root) {
            rc = CLI_OK;
            goto done;
        }
        dfx_outputs_begin(); /* the samples wait for the report: renamed together */
        if (npy) {
            int64_t shape[4] = {n, d.mi->channels, d.mi->height, d.mi->width};
            if (dfx_write_npy(npy, images, 4, shape, &err)) goto done;
        }
        cli_to_pixels(images, (size_t)n * d.dim, d.mi->range_lo, d.mi->range_hi);
    }
    cli_quality_opts qo = {kid_subsets, kid_size, d.seed, !no_nn, d.quiet};
    if (cli_quality_measure(cls, &ref, images, count, &qo, &q, &err)) goto done;
    if (samples)
        printf("samples      %ld from %s\n", count, samples);
    else
        printf("samples      %d from %s, sampler %s, %.1f evaluations/sample, %.1f s\n", n,
               d.model, d.sampler, nfe, seconds);
    printf("classifier   %s (reference %s)\n", classifier, reference);
    print_report(stdout, &q, &ref, cls);
    if (json && write_json(json, &q, &d, samples != NULL, nfe, seconds, &err)) goto done;
    if (dfx_outputs_commit(&err)) goto done;
    rc = CLI_OK;
done:
    if (rc != CLI_OK) dfx_outputs_abort();
    if (rc != CLI_OK && (root || !cli_mpi_other(&err)))
        fprintf(stderr, "difflux eval: %s\n", err.msg);
    cli_quality_free(&q);
    cli_ref_free(&ref);
    free(images);
    dfx_model_free(cls);
    cli_draw_close(&d);
    return rc;
}
