/* The sampler's ops (lincomb, normal, err_norm, count_nonfinite,
 * gmm_denoise, unary, mul_add) and the exact network layers (add_channel,
 * add, concat, upsample2x, time_embed, embed_add): how each builds its
 * inputs and runs on one backend (tests/backend_ops/bo.h). */
#include "backend_ops/bo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double urand(void)
{
    return rng_uniform(&bo_rng);
}

static void fill_normal(float *x, size_t n, float scale)
{
    rng_fill_normal(&bo_rng, x, n, scale);
}

static float *host_f(bo_data *d, size_t n)
{
    return bo_host(d, n * sizeof(float));
}

/* -------------------------------------------------------------- lincomb */

/* k inputs; a (term, row) coefficient is 0.0 with chance p_zero, and then
 * its input row is NaN/Inf (it must not be read); out is x[0] with alias. */
typedef struct lincomb_in {
    float *x[DFX_LINCOMB_MAX];
    double *coef, *c0;
} lincomb_in;

static void lincomb_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const int k = c->p.lincomb.k, rows = c->p.lincomb.rows;
    const size_t cols = c->p.lincomb.cols, n = (size_t)rows * cols;
    lincomb_in *in = d->in = bo_host(d, sizeof *in);
    in->coef = bo_host(d, (size_t)(k ? k : 1) * (size_t)rows * sizeof(double));
    in->c0 = c->p.lincomb.c0 ? bo_host(d, (size_t)rows * sizeof(double)) : NULL;
    for (int i = 0; i < k; i++) {
        in->x[i] = host_f(d, n);
        fill_normal(in->x[i], n, 1.0f);
        for (int r = 0; r < rows; r++) {
            double *cf = &in->coef[(size_t)i * rows + r];
            if (urand() < c->p.lincomb.p_zero) {
                *cf = 0.0; /* must not be read: poison the row */
                float bad = (r & 1) ? NAN : INFINITY;
                for (size_t j = 0; j < cols; j++) in->x[i][(size_t)r * cols + j] = bad;
            } else {
                *cf = 4.0 * urand() - 2.0;
            }
        }
    }
    for (int r = 0; in->c0 && r < rows; r++) in->c0[r] = urand() - 0.5;
    snprintf(d->name, sizeof d->name, "lincomb k=%d rows=%d cols=%zu%s%s%s", k, rows, cols,
             in->c0 ? " c0" : "", c->p.lincomb.alias ? " out=x0" : "",
             c->p.lincomb.p_zero > 0 ? " zeros" : "");
    d->n = n;
    d->flops = 2.0 * k * (double)n;
}

static void lincomb_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    const lincomb_in *in = d->in;
    const int k = c->p.lincomb.k, alias = c->p.lincomb.alias && k > 0;
    float *dx[DFX_LINCOMB_MAX + 1];
    for (int i = 0; i < k; i++) dx[i] = bo_up(be, in->x[i], d->n);
    float *o = alias ? dx[0] : bo_junk(be, d->n);
    BO_TIMED(r)
    be->ops->lincomb(be, o, k, (const float *const *)dx, in->coef, in->c0, c->p.lincomb.rows,
                     c->p.lincomb.cols);
    bo_down(be, out, o, d->n);
    for (int i = 0; i < k; i++) bo_free(be, dx[i]);
    if (!alias) bo_free(be, o);
}

const bo_family bo_lincomb = {"lincomb", lincomb_build, lincomb_run, NULL, NULL};

/* A chain of lincombs out <- 0.9 out + c_t x1 where the host coefficient
 * array is overwritten (with NaN) right after each call: the op must have
 * consumed it before returning. */
static void chain_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    d->n = (size_t)c->p.chain.rows * c->p.chain.cols;
    float **x = d->in = bo_host(d, 2 * sizeof *x);
    for (int i = 0; i < 2; i++) {
        x[i] = host_f(d, d->n);
        fill_normal(x[i], d->n, 1.0f);
    }
    snprintf(d->name, sizeof d->name, "lincomb chain x%d rows=%d (host coef reused)",
             c->p.chain.steps, c->p.chain.rows);
    d->flops = 3.0 * (double)d->n * c->p.chain.steps;
}

static void chain_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *const *hx = d->in;
    const int rows = c->p.chain.rows;
    float *x0 = bo_up(be, hx[0], d->n), *x1 = bo_up(be, hx[1], d->n);
    double *coef = bo_xmalloc(2 * (size_t)rows * sizeof(double));
    const float *xs[2] = {x0, x1};
    BO_TIMED(r)
    for (int t = 0; t < c->p.chain.steps; t++) {
        for (int i = 0; i < rows; i++) {
            coef[i] = 0.9;
            coef[rows + i] = 0.01 * (t + 1) + 0.001 * i;
        }
        be->ops->lincomb(be, x0, 2, xs, coef, NULL, rows, c->p.chain.cols);
        for (int i = 0; i < 2 * rows; i++) coef[i] = NAN;
    }
    bo_down(be, out, x0, d->n);
    BO_FREE(be, x0, x1);
    free(coef);
}

const bo_family bo_lincomb_chain = {"lincomb", chain_build, chain_run, NULL, NULL};

/* --------------------------------------------------------------- normal */

/* Must be the same numbers: the case's tolerance is BO_BITS. */
static void normal_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    d->n = (size_t)c->p.normal.rows * c->p.normal.cols;
    snprintf(d->name, sizeof d->name, "normal rows=%d cols=%zu first=%llu draw=%u stream=%u",
             c->p.normal.rows, c->p.normal.cols, (unsigned long long)c->p.normal.first,
             c->p.normal.draw, c->p.normal.stream);
}

static void normal_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *o = bo_dev_alloc(be, d->n * sizeof(float));
    BO_TIMED(r)
    be->ops->normal(be, o, c->p.normal.seed, c->p.normal.first, c->p.normal.rows,
                    c->p.normal.cols, c->p.normal.draw, c->p.normal.stream);
    bo_down(be, out, o, d->n);
    bo_free(be, o);
}

const bo_family bo_normal = {"normal", normal_build, normal_run, NULL, NULL};

/* ------------------------------------------------------------- err_norm */

/* The output is rows doubles (2 rows floats of the buffer). */
static void err_norm_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const size_t n = (size_t)c->p.err_norm.rows * c->p.err_norm.cols;
    float **v = d->in = bo_host(d, 3 * sizeof *v);
    static const float scale[3] = {1e-3f, 1.0f, 1.0f}; /* e, x0, x1 */
    for (int i = 0; i < 3; i++) {
        v[i] = host_f(d, n);
        fill_normal(v[i], n, scale[i]);
    }
    snprintf(d->name, sizeof d->name, "err_norm rows=%d cols=%zu rtol=%g atol=%g",
             c->p.err_norm.rows, c->p.err_norm.cols, c->p.err_norm.rtol, c->p.err_norm.atol);
    d->n = 2 * (size_t)c->p.err_norm.rows;
}

static void err_norm_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B,
                         float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *const *v = d->in;
    const int rows = c->p.err_norm.rows;
    const size_t n = (size_t)rows * c->p.err_norm.cols;
    float *e = bo_up(be, v[0], n), *x0 = bo_up(be, v[1], n), *x1 = bo_up(be, v[2], n);
    double *o = (double *)(void *)out;
    for (int i = 0; i < rows; i++) o[i] = NAN;
    BO_TIMED(r)
    if (be->ops->err_norm(be, e, x0, x1, c->p.err_norm.rtol, c->p.err_norm.atol, rows,
                          c->p.err_norm.cols, o, &bo_err))
        bo_die("err_norm", be);
    BO_FREE(be, e, x0, x1);
}

static void err_norm_check(const bo_pair *p, const bo_case *c, const bo_data *d,
                           const float *got, const float *ref)
{
    (void)p;
    bo_row(d->name, nerr_d((const double *)(const void *)got, (const double *)(const void *)ref,
                           (size_t)c->p.err_norm.rows), c->tol, "");
}

const bo_family bo_err_norm = {"err_norm", err_norm_build, err_norm_run, err_norm_check, NULL};

/* ------------------------------------------------------ count_nonfinite */

/* The output is the count, a size_t in the buffer. */
static void count_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const size_t n = c->p.count.n;
    float *x = d->in = host_f(d, n ? n : 1);
    fill_normal(x, n, 1.0f);
    for (int i = 0; i < c->p.count.bad && n; i++) {
        size_t at = (size_t)(urand() * (double)n);
        x[at] = (i % 3 == 0) ? NAN : (i % 3 == 1) ? INFINITY : -INFINITY;
    }
    if (n > 1) x[n - 1] = NAN; /* the tail element too */
    snprintf(d->name, sizeof d->name, "count_nonfinite n=%zu", n);
    d->n = sizeof(size_t) / sizeof(float);
}

static void count_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *x = bo_up(be, d->in, c->p.count.n);
    size_t n = (size_t)-1;
    BO_TIMED(r)
    if (be->ops->count_nonfinite(be, x, c->p.count.n, &n, &bo_err)) bo_die("count_nonfinite", be);
    memcpy(out, &n, sizeof n);
    bo_free(be, x);
}

static void count_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                        const float *ref)
{
    (void)c;
    size_t g, r;
    memcpy(&g, got, sizeof g);
    memcpy(&r, ref, sizeof r);
    char note[96];
    snprintf(note, sizeof note, "%s %zu, %s %zu", p->ref_name, r, p->test_name, g);
    bo_row(d->name, g == r ? 0.0 : 1.0, 0.0, note);
}

const bo_family bo_count = {"count_nonfinite", count_build, count_run, count_check, NULL};

/* ---------------------------------------------------------- gmm_denoise */

/* Rows cycle through path coefficients from near the data (s small) to pure
 * noise and a variance-exploding scale; x is drawn from the noised mixture. */
static const double gmm_sets[][3] = {
    {1.0, 1e-3, 0.0}, {0.999, 0.04, 0.0}, {0.7, 0.7, 0.0},
    {0.05, 1.0, 0.0}, {1.0, 80.0, 0.0},   {0.6, 0.8, 0.3},
};
#define GMM_NSETS ((int)(sizeof gmm_sets / sizeof gmm_sets[0]))

typedef struct gmm_in {
    float *means, *c2, *logw, *x;
    double *a, *s, *m;
} gmm_in;

static void gmm_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const int K = c->p.gmm.K, rows = c->p.gmm.rows;
    const size_t dim = c->p.gmm.dim;
    gmm_in *h = d->in = bo_host(d, sizeof *h);
    h->means = host_f(d, (size_t)K * dim);
    h->c2 = host_f(d, (size_t)K);
    h->logw = host_f(d, (size_t)K);
    fill_normal(h->means, (size_t)K * dim, 0.5f);
    double wsum = 0.0;
    double *w = bo_xmalloc((size_t)K * sizeof(double));
    for (int k = 0; k < K; k++) {
        double sd = 0.05 + 0.45 * urand();
        h->c2[k] = (float)(sd * sd);
        w[k] = 0.1 + urand();
        wsum += w[k];
    }
    for (int k = 0; k < K; k++) h->logw[k] = (float)log(w[k] / wsum);
    free(w);
    d->n = (size_t)rows * dim;
    h->a = bo_host(d, (size_t)rows * 3 * sizeof(double));
    h->s = h->a + rows;
    h->m = h->s + rows;
    h->x = host_f(d, d->n);
    for (int r = 0; r < rows; r++) {
        const double *cs = gmm_sets[r % GMM_NSETS];
        h->a[r] = cs[0];
        h->s[r] = cs[1];
        h->m[r] = cs[2];
        int k = (int)(urand() * K);
        double sd = sqrt((double)h->c2[k]);
        for (size_t j = 0; j < dim; j++)
            h->x[(size_t)r * dim + j] =
                (float)(h->a[r] * (h->means[(size_t)k * dim + j] + sd * rng_normal(&bo_rng)) +
                        h->s[r] * rng_normal(&bo_rng) + h->m[r]);
    }
    snprintf(d->name, sizeof d->name, "gmm_denoise K=%d dim=%zu rows=%d%s", K, dim, rows,
             c->p.gmm.alias ? " out=x" : "");
}

static void gmm_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    const gmm_in *h = d->in;
    dfx_gmm_dev g;
    g.K = c->p.gmm.K;
    g.dim = c->p.gmm.dim;
    g.means = bo_up(be, h->means, (size_t)g.K * g.dim);
    g.c2 = bo_up(be, h->c2, (size_t)g.K);
    g.logw = bo_up(be, h->logw, (size_t)g.K);
    float *x = bo_up(be, h->x, d->n);
    float *o = c->p.gmm.alias ? x : bo_dev_alloc(be, d->n * sizeof(float));
    BO_TIMED(r) be->ops->gmm_denoise(be, o, x, c->p.gmm.rows, &g, h->a, h->s, h->m);
    bo_down(be, out, o, d->n);
    bo_free(be, x);
    if (!c->p.gmm.alias) bo_free(be, o);
    BO_FREE(be, g.means, g.c2, g.logw);
}

/* All rows, then per setting, so one bad regime cannot hide in the average. */
static void gmm_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                      const float *ref)
{
    (void)p;
    const int rows = c->p.gmm.rows;
    const size_t dim = c->p.gmm.dim;
    bo_row(d->name, nerr(got, ref, d->n), c->tol, "");
    for (int s = 0; s < GMM_NSETS && s < rows; s++) {
        nerr_sum e = {0.0, 0.0};
        for (int r = s; r < rows; r += GMM_NSETS)
            for (size_t j = 0; j < dim; j++)
                nerr_add(&e, got[(size_t)r * dim + j], ref[(size_t)r * dim + j]);
        char name[128];
        snprintf(name, sizeof name, "  rows with a=%g s=%g m=%g", gmm_sets[s][0], gmm_sets[s][1],
                 gmm_sets[s][2]);
        bo_row(name, nerr_value(&e), c->tol, "");
    }
}

const bo_family bo_gmm = {"gmm_denoise", gmm_build, gmm_run, gmm_check, NULL};

/* -------------------------------------------------------- unary, mul_add */

/* exp then log in place, and y = a b + c out of place and in place (y = b):
 * the output is exp, log, then the two mul_adds, n values each. */
static void unary_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const size_t n = c->p.unary.n;
    float **v = d->in = bo_host(d, 3 * sizeof *v); /* x, pos, a */
    for (int i = 0; i < 3; i++) v[i] = host_f(d, n);
    fill_normal(v[0], n, 3.0f);
    fill_normal(v[2], n, 1.0f);
    for (size_t i = 0; i < n; i++) v[1][i] = fabsf(v[0][i]) * 10.0f + 1e-30f;
    snprintf(d->name, sizeof d->name, "unary exp n=%zu", n);
    d->n = 4 * n;
}

static void unary_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *const *v = d->in;
    const size_t n = c->p.unary.n;
    const double k = c->p.unary.c;
    float *dx = bo_up(be, v[0], n), *dp = bo_up(be, v[1], n), *da = bo_up(be, v[2], n);
    float *dy = bo_junk(be, n);
    BO_TIMED(r) be->ops->unary(be, dy, dx, n, DFX_FN_EXP);
    BO_TIMED(r) be->ops->unary(be, dp, dp, n, DFX_FN_LOG);
    bo_down(be, out, dy, n);
    bo_down(be, out + n, dp, n);
    BO_TIMED(r) be->ops->mul_add(be, dy, da, dx, k, n);
    BO_TIMED(r) be->ops->mul_add(be, dx, da, dx, k, n);
    bo_down(be, out + 2 * n, dy, n);
    bo_down(be, out + 3 * n, dx, n);
    BO_FREE(be, dx, dp, da, dy);
}

/* exp and log within c->tol, mul_add exactly */
static void unary_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                        const float *ref)
{
    (void)p;
    const size_t n = c->p.unary.n;
    char name[128];
    bo_compare(d->name, got, ref, n, c->tol, NULL);
    snprintf(name, sizeof name, "unary log n=%zu (in place)", n);
    bo_compare(name, got + n, ref + n, n, c->tol, NULL);
    snprintf(name, sizeof name, "mul_add n=%zu c=%g (then in place)", n, c->p.unary.c);
    bo_compare(name, got + 2 * n, ref + 2 * n, 2 * n, 0.0, NULL);
}

const bo_family bo_unary = {"unary", unary_build, unary_run, unary_check, NULL};

/* ------------------------------------------------- elementwise layers */

/* add_channel, add (in place and not), concat, upsample2x: exact ops,
 * compared bit for bit. The output: the four results one after another. */
static size_t ew_sizes(const bo_case *c, size_t sz[4])
{
    const size_t n = (size_t)c->p.ew.B * c->p.ew.C * c->p.ew.H * c->p.ew.W;
    const size_t nb = (size_t)c->p.ew.B * c->p.ew.Cb * c->p.ew.H * c->p.ew.W;
    sz[0] = n;
    sz[1] = 2 * n;
    sz[2] = n + nb;
    sz[3] = 4 * n;
    return nb;
}

static void ew_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    size_t sz[4];
    const size_t nb = ew_sizes(c, sz), n = sz[0], nbig = nb > n ? nb : n;
    const size_t ne = (size_t)c->p.ew.B * c->p.ew.C;
    float **v = d->in = bo_host(d, 3 * sizeof *v); /* a, b, e */
    v[0] = host_f(d, n);
    v[1] = host_f(d, nbig);
    v[2] = host_f(d, ne);
    fill_normal(v[0], n, 1.0f);
    fill_normal(v[1], nbig, 1.0f);
    fill_normal(v[2], ne, 1.0f);
    d->n = sz[0] + sz[1] + sz[2] + sz[3];
    snprintf(d->name, sizeof d->name, "elementwise B=%d C=%d+%d %dx%d", c->p.ew.B, c->p.ew.C,
             c->p.ew.Cb, c->p.ew.H, c->p.ew.W);
}

static void ew_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *const *v = d->in;
    const int Bn = c->p.ew.B, C = c->p.ew.C, Cb = c->p.ew.Cb, H = c->p.ew.H, W = c->p.ew.W;
    size_t sz[4];
    const size_t nb = ew_sizes(c, sz), n = sz[0];
    float *da = bo_up(be, v[0], n), *db = bo_up(be, v[1], nb),
          *de = bo_up(be, v[2], (size_t)Bn * C);
    float *y = bo_up(be, v[0], n);
    BO_TIMED(r) be->ops->add_channel(be, y, de, Bn, C, H * W);
    bo_down(be, out, y, n);
    out += sz[0];
    float *bb = bo_up(be, v[1], n); /* b's first n values */
    BO_TIMED(r) be->ops->add(be, y, y, bb, n); /* in place: y = y + b */
    float *z = bo_junk(be, n);
    BO_TIMED(r) be->ops->add(be, z, da, bb, n);
    bo_down(be, out, y, n);
    bo_down(be, out + n, z, n);
    out += sz[1];
    float *cat = bo_junk(be, n + nb);
    BO_TIMED(r) be->ops->concat(be, cat, da, C, db, Cb, Bn, H * W);
    bo_down(be, out, cat, n + nb);
    out += sz[2];
    float *upd = bo_junk(be, 4 * n);
    BO_TIMED(r) be->ops->upsample2x(be, upd, da, Bn, C, H, W);
    bo_down(be, out, upd, 4 * n);
    BO_FREE(be, da, db, de, y, bb, z, cat, upd);
}

static void ew_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                     const float *ref)
{
    (void)p, (void)d;
    static const char *what[4] = {"add_channel", "add (in place, then out of place)", "concat",
                                  "upsample2x"};
    size_t sz[4], off = 0;
    ew_sizes(c, sz);
    for (int i = 0; i < 4; i++) {
        char name[160];
        if (i == 2)
            snprintf(name, sizeof name, "%s B=%d C=%d+%d %dx%d", what[i], c->p.ew.B, c->p.ew.C,
                     c->p.ew.Cb, c->p.ew.H, c->p.ew.W);
        else
            snprintf(name, sizeof name, "%s B=%d C=%d %dx%d", what[i], c->p.ew.B, c->p.ew.C,
                     c->p.ew.H, c->p.ew.W);
        bo_compare_bits(name, got + off, ref + off, sz[i]);
        off += sz[i];
    }
}

const bo_family bo_elementwise = {"elementwise", ew_build, ew_run, ew_check, NULL};

/* ------------------------------------------------ time_embed, embed_add */

/* Two time embeddings in a row from one host array, overwritten with NaN
 * right after each call (the op must have consumed it), then a class
 * embedding added to the first with labels overwritten likewise. Odd dims
 * leave the last value alone: both backends start from the marker. */
#define EMBED_ROWS 11

typedef struct embed_in {
    double *t0, *t1;
    int *labels;
    float *table;
} embed_in;

static void embed_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const int B = c->p.embed.B, dim = c->p.embed.dim;
    embed_in *in = d->in = bo_host(d, sizeof *in);
    in->t0 = bo_host(d, (size_t)B * sizeof(double));
    in->t1 = bo_host(d, (size_t)B * sizeof(double));
    in->labels = bo_host(d, (size_t)B * sizeof(int));
    for (int i = 0; i < B; i++) {
        in->t0[i] = i == 0 ? 0.0 : i == 1 ? 1.0 : urand();
        in->t1[i] = urand();
        in->labels[i] = (int)(urand() * EMBED_ROWS);
    }
    in->table = host_f(d, (size_t)EMBED_ROWS * dim);
    fill_normal(in->table, (size_t)EMBED_ROWS * dim, 0.5f);
    snprintf(d->name, sizeof d->name,
             "time_embed + embed_add B=%d dim=%d scale=%g offset=%g shift=%d flip=%d", B, dim,
             c->p.embed.scale, c->p.embed.offset, c->p.embed.shift, c->p.embed.flip);
    d->n = 2 * (size_t)B * dim;
}

static void embed_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    const embed_in *in = d->in;
    const int Bn = c->p.embed.B, dim = c->p.embed.dim;
    const double scale = c->p.embed.scale, off = c->p.embed.offset;
    const int shift = c->p.embed.shift, flip = c->p.embed.flip;
    const size_t n = (size_t)Bn * dim;
    float *y0 = bo_junk(be, n), *y1 = bo_junk(be, n);
    double *t = bo_xmalloc((size_t)Bn * sizeof(double));
    int *idx = bo_xmalloc((size_t)Bn * sizeof(int));
    memcpy(t, in->t0, (size_t)Bn * sizeof(double));
    BO_TIMED(r) be->ops->time_embed(be, y0, t, Bn, dim, scale, off, shift, flip);
    memcpy(t, in->t1, (size_t)Bn * sizeof(double));
    BO_TIMED(r) be->ops->time_embed(be, y1, t, Bn, dim, scale, off, shift, flip);
    for (int i = 0; i < Bn; i++) t[i] = NAN;
    float *tab = bo_up(be, in->table, (size_t)EMBED_ROWS * dim);
    memcpy(idx, in->labels, (size_t)Bn * sizeof(int));
    BO_TIMED(r) be->ops->embed_add(be, y0, tab, idx, Bn, dim);
    for (int i = 0; i < Bn; i++) idx[i] = (in->labels[i] + 1) % EMBED_ROWS; /* valid, but wrong */
    bo_down(be, out, y0, n);
    bo_down(be, out + n, y1, n);
    BO_FREE(be, y0, y1, tab);
    free(t);
    free(idx);
}

static void embed_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                        const float *ref)
{
    (void)p;
    const size_t n = d->n / 2;
    char name[160];
    bo_compare(d->name, got, ref, n, c->tol, NULL);
    snprintf(name, sizeof name, "time_embed B=%d dim=%d (host t reused at once)", c->p.embed.B,
             c->p.embed.dim);
    bo_compare(name, got + n, ref + n, n, c->tol, NULL);
}

const bo_family bo_embed = {"time_embed", embed_build, embed_run, embed_check, NULL};
