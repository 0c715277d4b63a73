/* Whole networks on both backends: U-Nets (tests/fixtures) with their
 * exact Jacobian-vector products and at the reduced precisions, samplers
 * end to end, classifiers (difflux eval's feature networks). Each run
 * loads the model on its backend (tests/backend_ops/bo.h). */
#include "backend_ops/bo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tensor `name` of a fixture file, owned by the case. */
static float *tensor(bo_data *d, dfx_st_file *f, const char *name, size_t *n)
{
    float *v = fixture_tensor(f, name, n);
    if (!v) {
        fprintf(stderr, "test_backend_ops: fixture tensor %s missing\n", name);
        exit(1);
    }
    float *kept = bo_host(d, *n * sizeof(float));
    memcpy(kept, v, *n * sizeof(float));
    free(v);
    return kept;
}

static void open_io(dfx_st_file *f, const char *name, const char *suffix)
{
    char path[600];
    snprintf(path, sizeof path, "%s/fixtures/%s.%s.safetensors", DFX_TEST_DATA, name, suffix);
    if (dfx_st_open(f, path, &bo_err)) {
        fprintf(stderr, "test_backend_ops: %s\n", bo_err.msg);
        exit(1);
    }
}

static dfx_model *load_fixture(const char *name, dfx_backend *be)
{
    char file[300];
    snprintf(file, sizeof file, "fixtures/%s.safetensors", name);
    return bo_load(file, be);
}

/* A model's sizes, read on the CPU backend. */
typedef struct net_in {
    size_t dim;
    int K, F;          /* classes; classifier features */
    dfx_pred pred;
    int Bf;            /* fixture rows */
    double *t;
    int *labels;
    float *x, *v;      /* inputs; the jvp's direction */
} net_in;

static net_in *net_in_new(bo_data *d, dfx_model *m)
{
    net_in *in = d->in = bo_host(d, sizeof *in);
    memset(in, 0, sizeof *in);
    in->dim = m->dim;
    in->K = m->info.num_classes;
    in->pred = m->cfg.prediction;
    return in;
}

/* Times, labels and inputs of the fixture's B rows from its x, t, y (and v). */
static void fixture_rows(bo_data *d, net_in *in, dfx_st_file *f, int B2, int with_v)
{
    size_t nx = 0, nt = 0, ny = 0, nv = 0;
    float *fx = tensor(d, f, "x", &nx), *ft = tensor(d, f, "t", &nt);
    float *fy = tensor(d, f, "y", &ny);
    if (with_v) in->v = tensor(d, f, "v", &nv);
    if (nx != nt * in->dim || ny != nt || (with_v && nv != nx)) {
        fprintf(stderr, "test_backend_ops: fixture tensors of the wrong sizes\n");
        exit(1);
    }
    in->Bf = (int)nt;
    if (B2 < in->Bf) B2 = in->Bf;
    in->t = bo_host(d, (size_t)B2 * sizeof(double));
    in->labels = bo_host(d, (size_t)B2 * sizeof(int));
    in->x = bo_host(d, (size_t)B2 * in->dim * sizeof(float));
    for (int r = 0; r < in->Bf; r++) {
        in->t[r] = ft[r];
        in->labels[r] = (int)fy[r];
    }
    memcpy(in->x, fx, nx * sizeof(float));
}

/* The model's sizes (read on the CPU backend) and the fixture rows of
 * tests/fixtures/NAME.SUFFIX.safetensors (the jvp's with its direction v),
 * room for B2 rows. */
static net_in *net_fixture(const bo_pair *p, const bo_case *c, bo_data *d, const char *suffix,
                           int B2)
{
    const int jvp = strcmp(suffix, "jvp") == 0;
    dfx_model *m = load_fixture(c->p.unet.name, p->cpu);
    net_in *in = net_in_new(d, m);
    const int has_jvp = m->vt->jvp != NULL;
    dfx_model_free(m);
    if (jvp && !has_jvp) {
        fprintf(stderr, "test_backend_ops: U-Net %s has no jvp\n", c->p.unet.name);
        exit(1);
    }
    dfx_st_file f;
    open_io(&f, c->p.unet.name, suffix);
    fixture_rows(d, in, &f, B2, jvp);
    dfx_st_close(&f);
    return in;
}

/* ------------------------------------------------------------------ U-Net */

/* The fixture's inputs (tests/fixtures/NAME.io.safetensors), a larger random
 * batch with every label, each sample of it alone on the backend under
 * test, and classifier-free guidance (conditional models). The output: the
 * fixture pass, the random batch, the guided batch. */
static void unet_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    net_in *in = net_fixture(p, c, d, "io", c->p.unet.B2);
    const int B2 = c->p.unet.B2 > in->Bf ? c->p.unet.B2 : in->Bf, K = in->K;
    /* rows Bf..B2-1: random inputs, labels cycling 0..K */
    for (int r = in->Bf; r < B2; r++) {
        in->t[r] = 0.01 + 0.98 * rng_uniform(&bo_rng);
        in->labels[r] = K > 0 ? r % (K + 1) : 0;
        rng_fill_normal(&bo_rng, in->x + (size_t)r * in->dim, in->dim, 1.0f);
    }
    d->B = B2;
    d->per = in->dim;
    d->batch_off = (size_t)in->Bf * in->dim;
    d->each = 1;
    d->n = (size_t)(in->Bf + B2 + (K > 0 ? B2 : 0)) * in->dim;
    snprintf(d->name, sizeof d->name, "U-Net %s: %d fixture inputs (%zu values per sample)",
             c->p.unet.name, in->Bf, in->dim);
}

static void unet_eval(bo_run *r, dfx_model *m, const net_in *in, int b0, int B, float *out)
{
    if (in->K > 0) dfx_unet_force_labels(m, in->labels + b0);
    BO_TIMED(r)
    if (dfx_model_eval_host(m, in->t + b0, in->x + (size_t)b0 * in->dim, B, in->pred, out,
                            &bo_err))
        bo_die("eval", r->be);
}

static void unet_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    const net_in *in = d->in;
    dfx_model *m = load_fixture(c->p.unet.name, r->be);
    if (b0 > 0 || B < d->B) {
        unet_eval(r, m, in, b0, B, out);
    } else {
        unet_eval(r, m, in, 0, in->Bf, out);
        unet_eval(r, m, in, 0, B, out + (size_t)in->Bf * in->dim);
    }
    if (b0 == 0 && B == d->B && in->K > 0) { /* guidance w = 2 with classes cycling from sample 5 */
        dfx_unet_force_labels(m, NULL);
        if (dfx_model_set_class(m, DFX_CLASS_CYCLE, 2.0, &bo_err)) bo_die("set_class", r->be);
        m->first_index = 5;
        BO_TIMED(r)
        if (dfx_model_eval_host(m, in->t, in->x, B, in->pred, out + (size_t)(in->Bf + B) * in->dim,
                                &bo_err))
            bo_die("eval", r->be);
    }
    dfx_model_free(m);
}

static void unet_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                       const float *ref)
{
    (void)p;
    const net_in *in = d->in;
    const size_t nf = (size_t)in->Bf * in->dim, nb = (size_t)d->B * in->dim;
    char title[160];
    bo_compare(d->name, got, ref, nf, c->tol, NULL);
    snprintf(title, sizeof title, "U-Net %s: %d random inputs (%zu values per sample)",
             c->p.unet.name, d->B, in->dim);
    bo_compare(title, got + nf, ref + nf, nb, c->tol, NULL);
    if (in->K > 0) {
        snprintf(title, sizeof title, "U-Net %s: guidance 2, classes cycling, %d samples",
                 c->p.unet.name, d->B);
        /* 2 P_c - P_u: twice one evaluation's error plus another's */
        bo_compare(title, got + nf + nb, ref + nf + nb, nb, 2 * c->tol, NULL);
    }
}

const bo_family bo_unet = {"unet", unet_build, unet_run, unet_check, NULL};

/* The fixture's inputs through a whole U-Net on a backend in the precision
 * it is set to (bo_set_precision), against the FP32 CPU reference. */
static void unet_precision_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    const net_in *in = net_fixture(p, c, d, "io", 0);
    d->n = (size_t)in->Bf * in->dim;
    snprintf(d->name, sizeof d->name, "U-Net %s, %s: fixture inputs", c->p.unet.name,
             c->p.unet.mode);
}

static void unet_precision_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B,
                               float *out)
{
    (void)b0, (void)B;
    dfx_model *m = load_fixture(c->p.unet.name, r->be);
    unet_eval(r, m, d->in, 0, ((const net_in *)d->in)->Bf, out);
    dfx_model_free(m);
}

const bo_family bo_unet_precision = {"unet", unet_precision_build, unet_precision_run, NULL,
                                     NULL};

/* ---------------------------------------------------------- U-Net jvp */

/* The U-Net's exact jvp (model_unet.c, over net.c's tangents) on the inputs
 * and direction of tests/fixtures/NAME.jvp.safetensors (conditional models:
 * per-row labels, then guidance 2 with class 1): out and the tangent are
 * compared, and on the backend under test jvp's out must be its predict's,
 * bit for bit. The output: out, tangent, predict's out, for each of the
 * (one or two) passes. */
static void unet_jvp_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    const net_in *in = net_fixture(p, c, d, "jvp", 0);
    d->n = (size_t)(in->K > 0 ? 2 : 1) * 3 * in->Bf * in->dim;
    snprintf(d->name, sizeof d->name, "U-Net %s jvp: out", c->p.unet.name);
}

static void unet_jvp_pass(bo_run *r, dfx_model *m, const net_in *in, float *out)
{
    dfx_backend *be = r->be;
    const int B = in->Bf;
    const size_t n = (size_t)B * in->dim;
    float *dx = bo_up(be, in->x, n), *dv = bo_up(be, in->v, n), *dout = bo_junk(be, n),
          *djv = bo_junk(be, n), *dp = bo_junk(be, n);
    if (dfx_model_reserve(m, B, &bo_err)) bo_die("dfx_model_reserve", be);
    BO_TIMED(r)
    if (m->vt->jvp(m, in->t, dx, dv, dout, djv, B, &bo_err)) bo_die("jvp", be);
    if (m->vt->predict(m, in->t, dx, dp, B, &bo_err)) bo_die("predict", be);
    bo_down(be, out, dout, n);
    bo_down(be, out + n, djv, n);
    bo_down(be, out + 2 * n, dp, n);
    BO_FREE(be, dx, dv, dout, djv, dp);
}

static void unet_jvp_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B,
                         float *out)
{
    (void)b0, (void)B;
    const net_in *in = d->in;
    dfx_model *m = load_fixture(c->p.unet.name, r->be);
    for (int guided = 0; guided <= (in->K > 0); guided++) {
        if (guided) {
            dfx_unet_force_labels(m, NULL);
            if (dfx_model_set_class(m, 1, 2.0, &bo_err)) bo_die("set_class", r->be);
        } else if (in->K > 0) {
            dfx_unet_force_labels(m, in->labels);
        }
        unet_jvp_pass(r, m, in, out + (size_t)guided * 3 * in->Bf * in->dim);
    }
    dfx_unet_force_labels(m, NULL);
    dfx_model_free(m);
}

static void unet_jvp_check(const bo_pair *p, const bo_case *c, const bo_data *d,
                           const float *got, const float *ref)
{
    const net_in *in = d->in;
    const size_t n = (size_t)in->Bf * in->dim;
    char title[160];
    for (int guided = 0; guided <= (in->K > 0); guided++) {
        const char *tag = guided ? ", guidance 2" : "";
        const float *g = got + (size_t)guided * 3 * n, *rf = ref + (size_t)guided * 3 * n;
        /* guided: 2 P_c - P_u, twice one evaluation's error plus another's */
        const double k = guided ? 3.0 : 1.0;
        snprintf(title, sizeof title, "U-Net %s jvp%s: out", c->p.unet.name, tag);
        bo_compare(title, g, rf, n, k * c->tol, NULL);
        snprintf(title, sizeof title, "U-Net %s jvp%s: tangent", c->p.unet.name, tag);
        bo_compare(title, g + n, rf + n, n, k * JVP_TOL, NULL);
        snprintf(title, sizeof title, "  jvp's out is predict's (%s)%s", p->test_name, tag);
        bo_compare(title, g, g + 2 * n, n, 0.0, NULL);
    }
}

const bo_family bo_unet_jvp = {"unet_jvp", unet_jvp_build, unet_jvp_run, unet_jvp_check, NULL};

/* ------------------------------------------------------------- sampling */

/* End to end: the same model, sampler and seed on both backends give the
 * same samples (the noise is the same numbers; the rest is rounding), and
 * samples 3.. drawn as a batch of their own on the backend under test equal
 * the same samples of the full batch. */
static void sample_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    dfx_model *m = bo_load(c->p.sample.file, p->cpu);
    d->per = m->dim;
    dfx_model_free(m);
    d->B = c->p.sample.n;
    d->n = (size_t)d->B * d->per;
    d->alone = 3;
    snprintf(d->name, sizeof d->name, "sample %s, %s %d steps, %d samples", c->p.sample.file,
             c->p.sample.sampler, c->p.sample.steps, d->B);
}

static void sample_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    dfx_model *m = bo_load(c->p.sample.file, r->be);
    dfx_sampler *s = test_sampler(m, c->p.sample.sampler, c->p.sample.steps, 1234, d->B, &bo_err);
    if (!s) bo_die("dfx_sampler_create", r->be);
    dfx_sample_stats st;
    BO_TIMED(r)
    if (dfx_sampler_run(s, b0, B, out, &st, &bo_err)) bo_die("dfx_sampler_run", r->be);
    dfx_sampler_free(s);
    dfx_model_free(m);
}

const bo_family bo_sample = {"sample", sample_build, sample_run, NULL, NULL};

/* ----------------------------------------------------------- classifier */

/* A classifier on the backend under test against the CPU, on random
 * pixels: the features, then the logits. */
static void classifier_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    dfx_model *m = bo_load(c->p.sample.file, p->cpu);
    net_in *in = net_in_new(d, m);
    dfx_classifier_dims(m, &in->F, &in->K);
    dfx_model_free(m);
    const size_t n = (size_t)c->p.sample.n * in->dim;
    in->x = bo_host(d, n * sizeof(float));
    for (size_t i = 0; i < n; i++) in->x[i] = (float)rng_uniform(&bo_rng);
    d->n = (size_t)c->p.sample.n * (size_t)(in->F + in->K);
    snprintf(d->name, sizeof d->name, "classifier %s: features, %d images", c->p.sample.file,
             c->p.sample.n);
}

static void classifier_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B,
                           float *out)
{
    (void)b0, (void)B;
    const net_in *in = d->in;
    const int n = c->p.sample.n;
    dfx_model *m = bo_load(c->p.sample.file, r->be);
    BO_TIMED(r)
    if (dfx_classify(m, in->x, n, out, out + (size_t)n * in->F, &bo_err))
        bo_die("dfx_classify", r->be);
    dfx_model_free(m);
}

static void classifier_check(const bo_pair *p, const bo_case *c, const bo_data *d,
                             const float *got, const float *ref)
{
    (void)p;
    const net_in *in = d->in;
    const size_t nf = (size_t)c->p.sample.n * in->F;
    char title[160];
    bo_compare(d->name, got, ref, nf, c->tol, NULL);
    snprintf(title, sizeof title, "classifier %s: logits", c->p.sample.file);
    bo_compare(title, got + nf, ref + nf, d->n - nf, c->tol, NULL);
}

const bo_family bo_classifier = {"classifier", classifier_build, classifier_run,
                                 classifier_check, NULL};
