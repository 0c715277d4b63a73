/*
 * Backend parity test, in the manner of ggml's test-backend-ops: every
 * operation of the backend table runs on the CPU backend (the reference,
 * host/backend_cpu.c) and on the CUDA backend (kernels/backend_cuda.cu)
 * with the same random inputs, and the results are compared by the
 * normalised error ||gpu - cpu|| / ||cpu||.
 *
 * Exit status: 0 all passed, 1 a comparison failed, 77 skipped (no CUDA in
 * this build, or no device).
 */
#include "backend.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SKIP 77

#ifdef DFX_HAVE_CUDA /* without the CUDA backend there is nothing to compare */

static dfx_backend *cpu, *gpu;
static int failures;
static dfx_error err;

/* ------------------------------------------------------------- helpers */

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next_u64(void) /* splitmix64 */
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double urand(void) /* [0, 1) */
{
    return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0);
}

static float nrand(void)
{
    double u1 = urand() + 1e-300, u2 = urand();
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill_normal(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * nrand();
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_backend_ops: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* Infrastructure failures (allocation, copies) end the test. */
static void die(const char *what, const dfx_backend *be)
{
    fprintf(stderr, "test_backend_ops: %s on %s: %s\n", what, be->name, err.msg);
    exit(1);
}

static void *dev_alloc(dfx_backend *be, size_t bytes)
{
    void *p = dfx_be_alloc(be, bytes, "test buffer", &err);
    if (!p) die("alloc", be);
    return p;
}

static void *dev_upload(dfx_backend *be, const void *src, size_t bytes)
{
    void *p = dev_alloc(be, bytes);
    if (be->ops->upload(be, p, src, bytes, &err)) die("upload", be);
    return p;
}

static void dev_download(dfx_backend *be, void *dst, const void *src, size_t bytes)
{
    if (be->ops->sync(be, &err)) die("sync", be);
    if (be->ops->download(be, dst, src, bytes, &err)) die("download", be);
}

/* ||a - b|| / ||b|| (||a - b|| when b = 0); NaN anywhere gives NaN. */
static double nerr_f(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static double nerr_d(const double *a, const double *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static size_t bits_differ(const float *a, const float *b, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return c;
}

/* One line of the table. A NaN error fails. */
static void row(const char *op, double nerr, double tol, const char *note)
{
    int ok = nerr <= tol;
    if (!ok) failures++;
    printf("%-58s %11.3e %9.0e  %s%s%s\n", op, nerr, tol, ok ? "ok" : "FAIL",
           note && *note ? "  " : "", note ? note : "");
}

/* -------------------------------------------------------------- lincomb */

typedef struct lincomb_case {
    int k, rows;
    size_t cols;
    int with_c0, alias; /* alias: out is x[0] */
    double p_zero;      /* chance a (term, row) coefficient is 0.0; its input row is NaN/Inf */
} lincomb_case;

static void lincomb_run(dfx_backend *be, const lincomb_case *c, float *const *hx,
                        const double *coef, const double *c0, float *hout)
{
    const size_t n = (size_t)c->rows * c->cols, bytes = n * sizeof(float);
    float *dx[DFX_LINCOMB_MAX + 1];
    for (int i = 0; i < c->k; i++) dx[i] = dev_upload(be, hx[i], bytes);
    float *out;
    if (c->alias && c->k > 0) {
        out = dx[0];
    } else {
        float *junk = xmalloc(bytes);
        for (size_t i = 0; i < n; i++) junk[i] = 12345.0f;
        out = dev_upload(be, junk, bytes);
        free(junk);
    }
    be->ops->lincomb(be, out, c->k, (const float *const *)dx, coef, c0, c->rows, c->cols);
    dev_download(be, hout, out, bytes);
    for (int i = 0; i < c->k; i++) be->ops->free(be, dx[i]);
    if (!(c->alias && c->k > 0)) be->ops->free(be, out);
}

static void test_lincomb(const lincomb_case *c)
{
    const size_t n = (size_t)c->rows * c->cols;
    float *hx[DFX_LINCOMB_MAX];
    double *coef = xmalloc((size_t)(c->k ? c->k : 1) * (size_t)c->rows * sizeof(double));
    double *c0 = c->with_c0 ? xmalloc((size_t)c->rows * sizeof(double)) : NULL;
    for (int i = 0; i < c->k; i++) {
        hx[i] = xmalloc(n * sizeof(float));
        fill_normal(hx[i], n, 1.0f);
        for (int r = 0; r < c->rows; r++) {
            double *cf = &coef[(size_t)i * c->rows + r];
            if (urand() < c->p_zero) {
                *cf = 0.0; /* must not be read: poison the row */
                float bad = (r & 1) ? NAN : INFINITY;
                for (size_t j = 0; j < c->cols; j++) hx[i][(size_t)r * c->cols + j] = bad;
            } else {
                *cf = 4.0 * urand() - 2.0;
            }
        }
    }
    for (int r = 0; c0 && r < c->rows; r++) c0[r] = urand() - 0.5;

    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    lincomb_run(cpu, c, hx, coef, c0, ref);
    lincomb_run(gpu, c, hx, coef, c0, got);

    char name[128], note[64];
    snprintf(name, sizeof name, "lincomb k=%d rows=%d cols=%zu%s%s%s", c->k, c->rows, c->cols,
             c->with_c0 ? " c0" : "", c->alias ? " out=x0" : "", c->p_zero > 0 ? " zeros" : "");
    size_t nb = bits_differ(got, ref, n);
    snprintf(note, sizeof note, nb ? "%zu values differ in bits" : "bitwise equal", nb);
    row(name, nerr_f(got, ref, n), 1e-6, note);

    for (int i = 0; i < c->k; i++) free(hx[i]);
    free(coef);
    free(c0);
    free(ref);
    free(got);
}

/* A chain of lincombs out <- 0.9 out + c_t x1 where the host coefficient
 * array is overwritten (with NaN) right after each call: the op must have
 * consumed it before returning. */
static void lincomb_chain_run(dfx_backend *be, const float *hx0, const float *hx1, int rows,
                              size_t cols, int steps, float *hout)
{
    const size_t bytes = (size_t)rows * cols * sizeof(float);
    float *x0 = dev_upload(be, hx0, bytes), *x1 = dev_upload(be, hx1, bytes);
    double *coef = xmalloc(2 * (size_t)rows * sizeof(double));
    const float *xs[2] = {x0, x1};
    for (int t = 0; t < steps; t++) {
        for (int r = 0; r < rows; r++) {
            coef[r] = 0.9;
            coef[rows + r] = 0.01 * (t + 1) + 0.001 * r;
        }
        be->ops->lincomb(be, x0, 2, xs, coef, NULL, rows, cols);
        for (int i = 0; i < 2 * rows; i++) coef[i] = NAN;
    }
    dev_download(be, hout, x0, bytes);
    be->ops->free(be, x0);
    be->ops->free(be, x1);
    free(coef);
}

static void test_lincomb_chain(int rows, size_t cols, int steps)
{
    const size_t n = (size_t)rows * cols;
    float *x0 = xmalloc(n * sizeof(float)), *x1 = xmalloc(n * sizeof(float));
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    fill_normal(x0, n, 1.0f);
    fill_normal(x1, n, 1.0f);
    lincomb_chain_run(cpu, x0, x1, rows, cols, steps, ref);
    lincomb_chain_run(gpu, x0, x1, rows, cols, steps, got);
    char name[128];
    snprintf(name, sizeof name, "lincomb chain x%d rows=%d (host coef reused)", steps, rows);
    row(name, nerr_f(got, ref, n), 1e-6, "");
    free(x0);
    free(x1);
    free(ref);
    free(got);
}

/* --------------------------------------------------------------- normal */

static void normal_run(dfx_backend *be, uint64_t seed, uint64_t first, int rows, size_t cols,
                       uint32_t draw, uint32_t stream, float *hout)
{
    const size_t bytes = (size_t)rows * cols * sizeof(float);
    float *out = dev_alloc(be, bytes);
    be->ops->normal(be, out, seed, first, rows, cols, draw, stream);
    dev_download(be, hout, out, bytes);
    be->ops->free(be, out);
}

static void test_normal(uint64_t seed, uint64_t first, int rows, size_t cols, uint32_t draw,
                        uint32_t stream)
{
    const size_t n = (size_t)rows * cols;
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    normal_run(cpu, seed, first, rows, cols, draw, stream, ref);
    normal_run(gpu, seed, first, rows, cols, draw, stream, got);
    size_t nb = bits_differ(got, ref, n);
    char name[128], note[96];
    snprintf(name, sizeof name, "normal rows=%d cols=%zu first=%llu draw=%u stream=%u", rows,
             cols, (unsigned long long)first, draw, stream);
    snprintf(note, sizeof note, nb ? "%zu of %zu values differ in bits" : "bitwise equal", nb,
             n);
    /* Must be the same numbers: any bit difference fails. */
    double e = nerr_f(got, ref, n);
    row(name, nb ? (e > 0 ? e : 1.0) : 0.0, 0.0, note);
    free(ref);
    free(got);
}

/* ------------------------------------------------------------- err_norm */

static void err_norm_run(dfx_backend *be, const float *he, const float *hx0, const float *hx1,
                         double rtol, double atol, int rows, size_t cols, double *out)
{
    const size_t bytes = (size_t)rows * cols * sizeof(float);
    float *e = dev_upload(be, he, bytes), *x0 = dev_upload(be, hx0, bytes),
          *x1 = dev_upload(be, hx1, bytes);
    if (be->ops->err_norm(be, e, x0, x1, rtol, atol, rows, cols, out, &err)) die("err_norm", be);
    be->ops->free(be, e);
    be->ops->free(be, x0);
    be->ops->free(be, x1);
}

static void test_err_norm(int rows, size_t cols, double rtol, double atol)
{
    const size_t n = (size_t)rows * cols;
    float *e = xmalloc(n * sizeof(float)), *x0 = xmalloc(n * sizeof(float)),
          *x1 = xmalloc(n * sizeof(float));
    fill_normal(e, n, 1e-3f);
    fill_normal(x0, n, 1.0f);
    fill_normal(x1, n, 1.0f);
    double *ref = xmalloc((size_t)rows * sizeof(double)), *got = xmalloc((size_t)rows * sizeof(double));
    for (int r = 0; r < rows; r++) got[r] = NAN;
    err_norm_run(cpu, e, x0, x1, rtol, atol, rows, cols, ref);
    err_norm_run(gpu, e, x0, x1, rtol, atol, rows, cols, got);
    char name[128];
    snprintf(name, sizeof name, "err_norm rows=%d cols=%zu rtol=%g atol=%g", rows, cols, rtol,
             atol);
    row(name, nerr_d(got, ref, (size_t)rows), 1e-9, "");
    free(e);
    free(x0);
    free(x1);
    free(ref);
    free(got);
}

/* ------------------------------------------------------ count_nonfinite */

static size_t count_run(dfx_backend *be, const float *hx, size_t n)
{
    float *x = dev_upload(be, hx, n * sizeof(float));
    size_t c = (size_t)-1;
    if (be->ops->count_nonfinite(be, x, n, &c, &err)) die("count_nonfinite", be);
    be->ops->free(be, x);
    return c;
}

static void test_count(size_t n, int bad)
{
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    fill_normal(x, n, 1.0f);
    for (int i = 0; i < bad && n; i++) {
        size_t at = (size_t)(urand() * (double)n);
        x[at] = (i % 3 == 0) ? NAN : (i % 3 == 1) ? INFINITY : -INFINITY;
    }
    if (n > 1) x[n - 1] = NAN; /* the tail element too */
    size_t ref = count_run(cpu, x, n), got = count_run(gpu, x, n);
    char name[128], note[64];
    snprintf(name, sizeof name, "count_nonfinite n=%zu", n);
    snprintf(note, sizeof note, "cpu %zu, cuda %zu", ref, got);
    row(name, got == ref ? 0.0 : 1.0, 0.0, note);
    free(x);
}

/* ---------------------------------------------------------- gmm_denoise */

typedef struct gmm_host {
    int K;
    size_t dim;
    float *means, *c2, *logw;
} gmm_host;

static void gmm_run(dfx_backend *be, const gmm_host *h, const float *hx, int rows,
                    const double *a, const double *s, const double *m, int alias, float *hout)
{
    const size_t bytes = (size_t)rows * h->dim * sizeof(float);
    dfx_gmm_dev g;
    g.K = h->K;
    g.dim = h->dim;
    g.means = dev_upload(be, h->means, (size_t)h->K * h->dim * sizeof(float));
    g.c2 = dev_upload(be, h->c2, (size_t)h->K * sizeof(float));
    g.logw = dev_upload(be, h->logw, (size_t)h->K * sizeof(float));
    float *x = dev_upload(be, hx, bytes);
    float *out = alias ? x : dev_alloc(be, bytes);
    be->ops->gmm_denoise(be, out, x, rows, &g, a, s, m);
    dev_download(be, hout, out, bytes);
    be->ops->free(be, x);
    if (!alias) be->ops->free(be, out);
    be->ops->free(be, (void *)g.means);
    be->ops->free(be, (void *)g.c2);
    be->ops->free(be, (void *)g.logw);
}

/* Rows cycle through path coefficients from near the data (s small) to pure
 * noise and a variance-exploding scale; x is drawn from the noised mixture. */
static void test_gmm(int K, size_t dim, int rows, int alias)
{
    static const double sets[][3] = {
        {1.0, 1e-3, 0.0}, {0.999, 0.04, 0.0}, {0.7, 0.7, 0.0},
        {0.05, 1.0, 0.0}, {1.0, 80.0, 0.0},   {0.6, 0.8, 0.3},
    };
    const int nsets = (int)(sizeof sets / sizeof sets[0]);
    gmm_host h;
    h.K = K;
    h.dim = dim;
    h.means = xmalloc((size_t)K * dim * sizeof(float));
    h.c2 = xmalloc((size_t)K * sizeof(float));
    h.logw = xmalloc((size_t)K * sizeof(float));
    fill_normal(h.means, (size_t)K * dim, 0.5f);
    double wsum = 0.0;
    double *w = xmalloc((size_t)K * sizeof(double));
    for (int k = 0; k < K; k++) {
        double sd = 0.05 + 0.45 * urand();
        h.c2[k] = (float)(sd * sd);
        w[k] = 0.1 + urand();
        wsum += w[k];
    }
    for (int k = 0; k < K; k++) h.logw[k] = (float)log(w[k] / wsum);
    free(w);

    const size_t n = (size_t)rows * dim;
    double *a = xmalloc((size_t)rows * 3 * sizeof(double)), *s = a + rows, *m = s + rows;
    float *x = xmalloc(n * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const double *c = sets[r % nsets];
        a[r] = c[0];
        s[r] = c[1];
        m[r] = c[2];
        int k = (int)(urand() * K);
        double sd = sqrt((double)h.c2[k]);
        for (size_t j = 0; j < dim; j++)
            x[(size_t)r * dim + j] = (float)(a[r] * (h.means[(size_t)k * dim + j] + sd * nrand()) +
                                             s[r] * nrand() + m[r]);
    }
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    gmm_run(cpu, &h, x, rows, a, s, m, alias, ref);
    gmm_run(gpu, &h, x, rows, a, s, m, alias, got);
    char name[128];
    snprintf(name, sizeof name, "gmm_denoise K=%d dim=%zu rows=%d%s", K, dim, rows,
             alias ? " out=x" : "");
    row(name, nerr_f(got, ref, n), 1e-6, "");

    /* Per setting, so one bad regime cannot hide in the average. */
    for (int c = 0; c < nsets && c < rows; c++) {
        double num = 0.0, den = 0.0;
        for (int r = c; r < rows; r += nsets)
            for (size_t j = 0; j < dim; j++) {
                double d = (double)got[(size_t)r * dim + j] - (double)ref[(size_t)r * dim + j];
                num += d * d;
                den += (double)ref[(size_t)r * dim + j] * ref[(size_t)r * dim + j];
            }
        snprintf(name, sizeof name, "  rows with a=%g s=%g m=%g", sets[c][0], sets[c][1],
                 sets[c][2]);
        row(name, den > 0 ? sqrt(num / den) : sqrt(num), 1e-6, "");
    }
    free(h.means);
    free(h.c2);
    free(h.logw);
    free(a);
    free(x);
    free(ref);
    free(got);
}

/* --------------------------------------------------------- error paths */

/* A void op that cannot run must surface at the next sync (on a backend of
 * its own: the error is sticky). */
static void test_error_path(void)
{
    dfx_backend *be = dfx_backend_cuda_create(&err);
    if (!be) die("create", gpu);
    float *x = dev_alloc(be, 16 * sizeof(float));
    const float *xs[DFX_LINCOMB_MAX + 1];
    double coef[DFX_LINCOMB_MAX + 1];
    for (int i = 0; i <= DFX_LINCOMB_MAX; i++) {
        xs[i] = x;
        coef[i] = 1.0;
    }
    be->ops->lincomb(be, x, DFX_LINCOMB_MAX + 1, xs, coef, NULL, 1, 16);
    dfx_error e;
    e.msg[0] = 0;
    int rc = be->ops->sync(be, &e);
    int ok = rc != 0 && strstr(e.msg, "lincomb") != NULL;
    row("error path: lincomb k > max reported by sync", ok ? 0.0 : 1.0, 0.0,
        rc ? e.msg : "sync returned 0");
    be->ops->free(be, x);
    dfx_backend_destroy(be);
}

#endif /* DFX_HAVE_CUDA */

/* ----------------------------------------------------------------- main */

int main(void)
{
#ifndef DFX_HAVE_CUDA
    printf("no CUDA device: skipping (this build has no CUDA backend)\n");
    return SKIP;
#else
    int ndev = dfx_cuda_device_count();
    if (ndev <= 0) {
        printf("no CUDA device: skipping\n");
        return SKIP;
    }
    cpu = dfx_backend_cpu_create(0, &err);
    if (!cpu) {
        fprintf(stderr, "test_backend_ops: cpu backend: %s\n", err.msg);
        return 1;
    }
    gpu = dfx_backend_cuda_create(&err);
    if (!gpu) {
        fprintf(stderr, "test_backend_ops: %s\n", err.msg);
        dfx_backend_destroy(cpu);
        return 1;
    }
    printf("backends: %s (reference) vs %s, %d CUDA device(s)\n\n", cpu->name, gpu->name, ndev);
    printf("%-58s %11s %9s  %s\n", "op", "nerr", "tol", "result");

    static const lincomb_case lc[] = {
        /* k rows cols  c0 alias p_zero */
        {0, 4, 100, 1, 0, 0.0},
        {1, 7, 1000, 1, 0, 0.0},
        {2, 37, 784, 1, 1, 0.0},   /* prediction conversion: out = A x + B P + C, in place */
        {2, 37, 784, 1, 1, 0.3},
        {3, 64, 3072, 0, 1, 0.3},
        {5, 5, 4097, 0, 0, 0.4},
        {7, 33, 784, 0, 1, 0.3},   /* dopri5 stages */
        {8, 3000, 64, 1, 0, 0.25}, /* more coefficients than a staging slot starts with */
        {2, 70000, 3, 1, 1, 0.2},  /* more rows than gridDim.y */
        {4, 9, 1, 1, 0, 0.5},
    };
    for (size_t i = 0; i < sizeof lc / sizeof lc[0]; i++) test_lincomb(&lc[i]);
    test_lincomb_chain(64, 784, 20);

    test_normal(1, 0, 5, 784, 0, 0);
    test_normal(0xDEADBEEFCAFEF00Dull, (1ull << 32) + 5, 3, 1001, 7, 3);
    test_normal(42, 1000, 70000, 3, 2, 1);
    test_normal(7, 123, 2, 1, 0, 0);

    test_err_norm(17, 784, 1e-4, 1e-4);
    test_err_norm(3, 5000, 1e-3, 1e-6);
    test_err_norm(70000, 2, 1e-4, 1e-4);

    test_count(0, 0);
    test_count(1, 1);
    test_count(1000, 0);
    test_count((1u << 20) + 7, 200);
    test_count(3000001, 50);

    test_gmm(10, 784, 24, 0);
    test_gmm(1, 100, 6, 0);
    test_gmm(300, 64, 12, 1); /* more components than threads in a block */
    test_gmm(3, 4, 70000, 0); /* more rows than gridDim.y */

    test_error_path();

    printf("\n%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    dfx_backend_destroy(gpu);
    dfx_backend_destroy(cpu);
    return failures ? 1 : 0;
#endif
}
