/* Reference statistics and sample-quality metrics on classifier features. */
#define _POSIX_C_SOURCE 200809L
#include "quality.h"
#include "cli.h"
#include "core/error.h"
#include "analysis/metrics.h"
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef DFX_SOURCE_DIR
#define DFX_SOURCE_DIR "."
#endif

enum { KID_FEATURES = 2000, NN_QUERIES = 1000 };

void cli_to_pixels(float *x, size_t n, double lo, double hi)
{
    const double s = 1.0 / (hi - lo);
    for (size_t i = 0; i < n; i++) {
        double p = (x[i] - lo) * s;
        x[i] = (float)(p < 0.0 ? 0.0 : p > 1.0 ? 1.0 : p);
    }
}

const char *cli_ref_name(const char *classifier, char *buf, size_t cap)
{
    size_t n = strlen(classifier);
    const char *ext = ".safetensors";
    size_t e = strlen(ext);
    if (n > e && strcmp(classifier + n - e, ext) == 0)
        snprintf(buf, cap, "%.*s.ref%s", (int)(n - e), classifier, ext);
    else
        snprintf(buf, cap, "%s.ref.safetensors", classifier);
    return buf;
}

const char *cli_default_classifier(const dfx_model_info *mi)
{
    static char buf[1200];
    const char *name = mi && mi->dataset && strstr(mi->dataset, "Fashion")
                           ? "fashion-classifier.safetensors"
                           : "mnist-classifier.safetensors";
    snprintf(buf, sizeof buf, "models/%s", name);
    if (access(buf, R_OK) == 0) return buf;
    snprintf(buf, sizeof buf, "%s/models/%s", DFX_SOURCE_DIR, name);
    return buf;
}

/* A path stored in a reference file, relative to the current directory,
 * else to the source tree. */
static void resolve(char *path, size_t cap)
{
    if (path[0] == '/' || access(path, R_OK) == 0) return;
    char alt[2048];
    snprintf(alt, sizeof alt, "%s/%s", DFX_SOURCE_DIR, path);
    size_t n = strlen(alt);
    if (n < cap && access(alt, R_OK) == 0) memcpy(path, alt, n + 1);
}

/* IDX images as pixels in [0, 1]. */
float *cli_read_pixels(const char *file, int *n, int dim, dfx_error *err)
{
    uint8_t *px = NULL;
    int h, w;
    if (dfx_read_idx_images(file, &px, n, &h, &w, err)) return NULL;
    if (h * w != dim) {
        free(px);
        dfx_fail(err, "%s: %d x %d images, the classifier takes %d values per image", file, h, w,
                 dim);
        return NULL;
    }
    float *x = malloc((size_t)*n * dim * sizeof(float));
    if (!x) {
        free(px);
        dfx_fail(err, "%s: out of memory for %d images", file, *n);
        return NULL;
    }
    for (size_t i = 0; i < (size_t)*n * dim; i++) x[i] = px[i] / 255.0f;
    free(px);
    return x;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(double *v, long n, double q)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double pos = q * (double)(n - 1);
    long i = (long)pos;
    double f = pos - (double)i;
    return i + 1 < n ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

int cli_ref_make(dfx_model *cls, const char *cls_file, const char *data, const char *train,
                 const char *out, int quiet, dfx_error *err)
{
    int F, K;
    if (dfx_classifier_dims(cls, &F, &K)) return dfx_fail(err, "%s is not a classifier", cls_file);
    const dfx_model_info *ci = dfx_model_get_info(cls);
    const int dim = ci->channels * ci->height * ci->width;
    if (ci->channels != 1) return dfx_fail(err, "%s: IDX reference data are greyscale", cls_file);
    int n = 0, nt = 0, rc = -1;
    float *x = cli_read_pixels(data, &n, dim, err), *feat = NULL, *t = NULL, *sub = NULL;
    double *mu = NULL, *cov = NULL, *dist = NULL;
    float *mu32 = NULL, *cov32 = NULL;
    long *idx = NULL;
    cJSON *cfg = NULL;
    char *json = NULL;
    if (!x) goto done;
    if (n < 2) {
        dfx_fail(err, "%s: need at least 2 images", data);
        goto done;
    }
    if (!quiet) fprintf(stderr, "features of %d images of %s ...\n", n, data);
    feat = malloc((size_t)n * F * sizeof(float));
    mu = malloc((size_t)F * sizeof(double));
    cov = malloc((size_t)F * F * sizeof(double));
    mu32 = malloc((size_t)F * sizeof(float));
    cov32 = malloc((size_t)F * F * sizeof(float));
    if (!feat || !mu || !cov || !mu32 || !cov32) {
        dfx_fail(err, "out of memory");
        goto done;
    }
    if (dfx_classify(cls, x, n, feat, NULL, err) || dfx_feature_stats(feat, n, F, mu, cov, err))
        goto done;
    for (int i = 0; i < F; i++) mu32[i] = (float)mu[i];
    for (long i = 0; i < (long)F * F; i++) cov32[i] = (float)cov[i];
    /* KID subset: evenly spread over the file */
    long nk = n < KID_FEATURES ? n : KID_FEATURES;
    sub = malloc((size_t)nk * F * sizeof(float));
    if (!sub) {
        dfx_fail(err, "out of memory");
        goto done;
    }
    for (long i = 0; i < nk; i++)
        memcpy(sub + i * F, feat + (long)((double)i * n / nk) * F, (size_t)F * sizeof(float));
    /* memorisation scale: the last NN_QUERIES training images against the rest */
    t = cli_read_pixels(train, &nt, dim, err);
    if (!t) goto done;
    long q = nt / 10 < NN_QUERIES ? nt / 10 : NN_QUERIES;
    if (q < 1) {
        dfx_fail(err, "%s: too few training images for the nearest-neighbour scale", train);
        goto done;
    }
    if (!quiet) fprintf(stderr, "nearest-neighbour scale: %ld of %d training images ...\n", q, nt);
    dist = malloc((size_t)q * sizeof(double));
    idx = malloc((size_t)q * sizeof(long));
    if (!dist || !idx) {
        dfx_fail(err, "out of memory");
        goto done;
    }
    if (dfx_nearest(t + (size_t)(nt - q) * dim, q, t, nt - q, dim, dist, idx, err)) goto done;
    double p05 = quantile(dist, q, 0.05), med = quantile(dist, q, 0.5);
    cfg = cJSON_CreateObject();
    cJSON_AddNumberToObject(cfg, "version", 1);
    cJSON_AddStringToObject(cfg, "kind", "reference");
    const char *base = strrchr(cls_file, '/');
    cJSON_AddStringToObject(cfg, "classifier", base ? base + 1 : cls_file);
    cJSON_AddStringToObject(cfg, "data", data);
    cJSON_AddNumberToObject(cfg, "count", n);
    cJSON_AddStringToObject(cfg, "train_data", train);
    cJSON_AddNumberToObject(cfg, "nn_queries", (double)q);
    cJSON_AddNumberToObject(cfg, "nn_median", med);
    cJSON_AddNumberToObject(cfg, "nn_p05", p05);
    json = cJSON_PrintUnformatted(cfg);
    dfx_st_out ts[3] = {
        {"mu", DFX_F32, 1, {F}, mu32},
        {"cov", DFX_F32, 2, {F, F}, cov32},
        {"features", DFX_F32, 2, {nk, F}, sub},
    };
    if (!json || dfx_st_write(out, json, ts, 3, err)) goto done;
    if (!quiet)
        fprintf(stderr,
                "wrote %s: %d images, %d features; training images' nearest other image: median "
                "%.3f, 5%% %.3f\n",
                out, n, F, med, p05);
    rc = 0;
done:
    free(x);
    free(t);
    free(feat);
    free(sub);
    free(mu);
    free(cov);
    free(mu32);
    free(cov32);
    free(dist);
    free(idx);
    cJSON_Delete(cfg);
    free(json);
    return rc;
}

static int get_num(const cJSON *c, const char *key, double *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!cJSON_IsNumber(j)) return -1;
    *v = j->valuedouble;
    return 0;
}

static int get_str(const cJSON *c, const char *key, char *buf, size_t cap)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!cJSON_IsString(j)) return -1;
    snprintf(buf, cap, "%s", j->valuestring);
    return 0;
}

int cli_ref_load(const char *file, cli_ref *r, dfx_error *err)
{
    memset(r, 0, sizeof *r);
    dfx_st_file f;
    if (dfx_st_open(&f, file, err)) return -1;
    int rc = -1;
    cJSON *cfg = f.config ? cJSON_Parse(f.config) : NULL;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(cfg, "kind");
    double count, med, p05;
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "reference") != 0 ||
        get_str(cfg, "data", r->data, sizeof r->data) ||
        get_str(cfg, "train_data", r->train, sizeof r->train) ||
        get_str(cfg, "classifier", r->classifier, sizeof r->classifier) ||
        get_num(cfg, "count", &count) || get_num(cfg, "nn_median", &med) ||
        get_num(cfg, "nn_p05", &p05)) {
        dfx_fail(err, "%s: not a difflux reference file (make one with difflux eval "
                      "--make-reference)",
                 file);
        goto done;
    }
    resolve(r->data, sizeof r->data);
    resolve(r->train, sizeof r->train);
    r->count = (long)count;
    r->nn_median = med;
    r->nn_p05 = p05;
    const dfx_st_tensor *tm = dfx_st_get(&f, "mu", -1, NULL, err);
    if (!tm) goto done;
    if (tm->ndim != 1 || tm->shape[0] < 1) {
        dfx_fail(err, "%s: mu must be a vector", file);
        goto done;
    }
    r->F = (int)tm->shape[0];
    int64_t cs[2] = {r->F, r->F};
    const dfx_st_tensor *tc = dfx_st_get(&f, "cov", 2, cs, err);
    const dfx_st_tensor *tf = tc ? dfx_st_get(&f, "features", -1, NULL, err) : NULL;
    if (!tf) goto done;
    if (tf->ndim != 2 || tf->shape[1] != r->F || tf->shape[0] < 2) {
        dfx_fail(err, "%s: features must be [n >= 2, %d]", file, r->F);
        goto done;
    }
    r->nfeat = (long)tf->shape[0];
    float *mu = malloc((size_t)r->F * sizeof(float));
    float *cov = malloc((size_t)r->F * r->F * sizeof(float));
    r->mu = malloc((size_t)r->F * sizeof(double));
    r->cov = malloc((size_t)r->F * r->F * sizeof(double));
    r->feat = malloc((size_t)r->nfeat * r->F * sizeof(float));
    r->scale = malloc((size_t)r->F * sizeof(double));
    if (mu && cov && r->mu && r->cov && r->feat && r->scale) {
        dfx_st_to_f32(&f, tm, mu);
        dfx_st_to_f32(&f, tc, cov);
        dfx_st_to_f32(&f, tf, r->feat);
        /* unit variance per feature over the reference data: FID and KID in
         * the same units whatever the network's scale (KID's cubic kernel
         * assumes features of order one) */
        const int F = r->F;
        for (int i = 0; i < F; i++) {
            double v = cov[(size_t)i * F + i];
            r->scale[i] = v > 0 ? 1.0 / sqrt(v) : 1.0;
        }
        for (int i = 0; i < F; i++) r->mu[i] = mu[i] * r->scale[i];
        for (int i = 0; i < F; i++)
            for (int j = 0; j < F; j++)
                r->cov[(size_t)i * F + j] = cov[(size_t)i * F + j] * r->scale[i] * r->scale[j];
        for (long k = 0; k < r->nfeat; k++)
            for (int i = 0; i < F; i++) r->feat[k * F + i] *= (float)r->scale[i];
        rc = dfx_st_check_all_used(&f, err);
    } else {
        dfx_fail(err, "%s: out of memory", file);
    }
    free(mu);
    free(cov);
done:
    cJSON_Delete(cfg);
    dfx_st_close(&f);
    if (rc) cli_ref_free(r);
    return rc;
}

void cli_ref_free(cli_ref *r)
{
    free(r->mu);
    free(r->cov);
    free(r->feat);
    free(r->scale);
    r->mu = r->cov = r->scale = NULL;
    r->feat = NULL;
}

int cli_quality_measure(dfx_model *cls, const cli_ref *r, const float *pixels, long n,
                        const cli_quality_opts *o, cli_quality *q, dfx_error *err)
{
    memset(q, 0, sizeof *q);
    int F, K;
    if (dfx_classifier_dims(cls, &F, &K)) return dfx_fail(err, "not a classifier");
    if (F != r->F)
        return dfx_fail(err, "the classifier has %d features, its reference file %d: make the "
                             "reference again",
                        F, r->F);
    if (n < 2) return dfx_fail(err, "need at least 2 samples for FID (got %ld)", n);
    if (n > 2147483647L) return dfx_fail(err, "too many samples");
    const dfx_model_info *ci = dfx_model_get_info(cls);
    const int dim = ci->channels * ci->height * ci->width;
    q->n = n;
    q->K = K;
    int rc = -1;
    float *feat = malloc((size_t)n * F * sizeof(float)), *logit = malloc((size_t)n * K * sizeof(float));
    double *mu = malloc((size_t)F * sizeof(double)), *cov = malloc((size_t)F * F * sizeof(double));
    double *dist = NULL;
    long *idx = NULL;
    float *train = NULL;
    q->hist = calloc((size_t)K, sizeof(long));
    if (!feat || !logit || !mu || !cov || !q->hist) {
        dfx_fail(err, "out of memory for %ld samples' features", n);
        goto done;
    }
    if (dfx_classify(cls, pixels, (int)n, feat, logit, err)) goto done;
    for (long i = 0; i < n; i++)
        for (int k = 0; k < F; k++) feat[i * F + k] *= (float)r->scale[k];
    if (dfx_feature_stats(feat, n, F, mu, cov, err) ||
        dfx_frechet_distance(mu, cov, r->mu, r->cov, F, &q->fid, err))
        goto done;
    q->kid_subsets = o->kid_subsets;
    q->kid_size = (int)(o->kid_size < n ? o->kid_size : n);
    if (q->kid_size > r->nfeat) q->kid_size = (int)r->nfeat;
    if (dfx_kid(feat, n, r->feat, r->nfeat, F, o->kid_subsets, q->kid_size, o->seed, &q->kid,
                &q->kid_std, err))
        goto done;
    /* confidence and predicted classes */
    double conf = 0.0;
    long low = 0;
    for (long i = 0; i < n; i++) {
        const float *l = logit + i * K;
        int best = 0;
        for (int k = 1; k < K; k++)
            if (l[k] > l[best]) best = k;
        double s = 0.0;
        for (int k = 0; k < K; k++) s += exp((double)l[k] - l[best]);
        double p = 1.0 / s;
        conf += p;
        low += p < 0.5;
        q->hist[best]++;
    }
    q->confidence = conf / n;
    q->low_conf = (double)low / n;
    q->entropy = 0.0;
    for (int k = 0; k < K; k++) {
        double p = (double)q->hist[k] / n;
        if (p > 0) q->entropy -= p * log2(p);
        q->covered += q->hist[k] * 4L * K >= n;
    }
    if (o->nearest && access(r->train, R_OK) != 0) {
        fprintf(stderr, "difflux: %s (the training images) is not here: no memorisation figures "
                        "(for Fashion-MNIST: apt-get install dataset-fashion-mnist)\n",
                r->train);
    } else if (o->nearest) {
        int nt = 0;
        train = cli_read_pixels(r->train, &nt, dim, err);
        if (!train) goto done;
        dist = malloc((size_t)n * sizeof(double));
        idx = malloc((size_t)n * sizeof(long));
        if (!dist || !idx) {
            dfx_fail(err, "out of memory");
            goto done;
        }
        if (!o->quiet) fprintf(stderr, "nearest training images (%d) ...\n", nt);
        if (dfx_nearest(pixels, n, train, nt, dim, dist, idx, err)) goto done;
        long close = 0;
        q->nn_min = INFINITY;
        for (long i = 0; i < n; i++) {
            close += dist[i] < r->nn_p05;
            if (dist[i] < q->nn_min) q->nn_min = dist[i];
        }
        q->nn_close = (double)close / n;
        q->nn_median = quantile(dist, n, 0.5);
        q->nn_done = 1;
    }
    rc = 0;
done:
    free(feat);
    free(logit);
    free(mu);
    free(cov);
    free(dist);
    free(idx);
    free(train);
    if (rc) cli_quality_free(q);
    return rc;
}

void cli_quality_free(cli_quality *q)
{
    free(q->hist);
    q->hist = NULL;
}

int cli_quality_open(dfx_backend *be, const dfx_model_info *mi, const char **classifier,
                     const char **reference, dfx_model **cls, cli_ref *ref, dfx_error *err)
{
    static char refbuf[1200];
    if (!*classifier) *classifier = cli_default_classifier(mi);
    if (!*reference) *reference = cli_ref_name(*classifier, refbuf, sizeof refbuf);
    *cls = dfx_model_load(*classifier, be, err);
    if (!*cls) return -1;
    const dfx_model_info *ci = dfx_model_get_info(*cls);
    if (dfx_classifier_dims(*cls, NULL, NULL) != 0)
        return dfx_fail(err, "%s is not a classifier (kind %s)", *classifier, ci->kind);
    if (mi && (ci->channels != mi->channels || ci->height != mi->height ||
               ci->width != mi->width))
        return dfx_fail(err, "%s takes %dx%dx%d images, the model makes %dx%dx%d", *classifier,
                        ci->channels, ci->height, ci->width, mi->channels, mi->height,
                        mi->width);
    return cli_ref_load(*reference, ref, err);
}

cli_opt cli_opt_kid_subsets(int *subsets)
{
    return (cli_opt){"kid-subsets", OPT_INT, subsets, "S", "KID: subsets averaged (10)", 0};
}

cli_opt cli_opt_kid_size(int *size)
{
    return (cli_opt){"kid-size", OPT_INT, size, "M", "KID: samples per subset (1000, at most n)",
                     0};
}
