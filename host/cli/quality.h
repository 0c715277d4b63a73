/* Sample quality on a classifier's features (difflux eval and sweep):
 * reference statistics of a data set, computed once by
 * `difflux eval --make-reference` and stored beside the classifier, and
 * the metrics of a set of samples against them. */
#ifndef DFX_CLI_QUALITY_H
#define DFX_CLI_QUALITY_H

#include "args.h"
#include "difflux.h"

typedef struct cli_ref {
    int F;              /* feature width */
    double *mu, *cov;   /* [F], [F, F] over all `count` reference images */
    double *scale;      /* [F]: 1 / reference std of each feature; every feature
                           (reference and samples) is measured in these units */
    float *feat;        /* [nfeat, F]: a spread-out subset, for KID */
    long nfeat, count;
    char data[1024];    /* the reference images (IDX) */
    char train[1024];   /* the model's training images (IDX), for memorisation */
    char classifier[256];
    double nn_median, nn_p05; /* distance of a training image to its nearest other */
} cli_ref;

int cli_ref_load(const char *file, cli_ref *r, dfx_error *err);
void cli_ref_free(cli_ref *r);
/* Features of every image of `data` (IDX) through the classifier; KID
 * subset; nearest-neighbour scale of `train` (IDX; may equal data). */
int cli_ref_make(dfx_model *cls, const char *cls_file, const char *data, const char *train,
                 const char *out, int quiet, dfx_error *err);

typedef struct cli_quality {
    long n;
    double fid, kid, kid_std;
    int kid_subsets, kid_size;
    double confidence, low_conf; /* mean max softmax; fraction below 0.5 */
    int K;
    long *hist;                  /* [K] predicted classes */
    int covered;                 /* classes with at least 1/(4K) of the samples */
    double entropy;              /* of the histogram, in bits */
    int nn_done;
    double nn_median, nn_min, nn_close; /* pixels in [0, 1]; fraction < nn_p05 of data */
} cli_quality;

/* The KID rows of eval and sweep: --kid-subsets S (10), --kid-size M (1000). */
cli_opt cli_opt_kid_subsets(int *subsets);
cli_opt cli_opt_kid_size(int *size);

typedef struct cli_quality_opts {
    int kid_subsets, kid_size;
    uint64_t seed;
    int nearest;   /* compute the memorisation distances */
    int quiet;
} cli_quality_opts;

/* The classifier *classifier (NULL: the one that suits the model mi, which
 * may be NULL) and its reference statistics *reference (NULL: beside the
 * classifier), loaded on be; the defaults are written back. With mi, the
 * classifier must take the model's image size. */
int cli_quality_open(dfx_backend *be, const dfx_model_info *mi, const char **classifier,
                     const char **reference, dfx_model **cls, cli_ref *ref, dfx_error *err);

/* Images as pixels in [0, 1] ([n, dim], host). */
int cli_quality_measure(dfx_model *cls, const cli_ref *r, const float *pixels, long n,
                        const cli_quality_opts *o, cli_quality *q, dfx_error *err);
void cli_quality_free(cli_quality *q);

/* IDX images as pixels in [0, 1] (float [*n, dim], malloc'd); dim must be
 * the images' height x width. */
float *cli_read_pixels(const char *file, int *n, int dim, dfx_error *err);
/* Samples in data range [lo, hi] to pixels in [0, 1], in place. */
void cli_to_pixels(float *x, size_t n, double lo, double hi);
/* The classifier that suits a model (Fashion-MNIST or MNIST by the model's
 * dataset), under the current directory or the source tree. */
const char *cli_default_classifier(const dfx_model_info *mi);
/* FILE.safetensors -> FILE.ref.safetensors in buf. */
const char *cli_ref_name(const char *classifier, char *buf, size_t cap);

#endif
