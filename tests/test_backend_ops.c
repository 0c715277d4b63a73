/*
 * Backend parity test, in the manner of ggml's test-backend-ops: every
 * operation of the backend table runs on the CPU backend (the reference,
 * host/cpu/backend_cpu.c, host/cpu/nn_cpu.c) and on the CUDA backend
 * (kernels/backend_cuda.cu) with the same random inputs, and the results
 * are compared by the normalised error ||gpu - cpu|| / ||cpu||. The
 * network layers are also checked for batch invariance on the GPU (a
 * sample alone against the same sample in a batch), and whole U-Nets
 * (tests/fixtures) are evaluated on both backends, with their exact
 * Jacobian-vector products (the tangent ops group_norm_jvp, attention_jvp,
 * silu_jvp are compared on their own too). CUDA graphs are checked on their
 * own (a recorded lincomb, refilled; failed captures) and through the U-Net,
 * which must give bit for bit what it gives op by op (DIFFLUX_CUDA_GRAPHS=0).
 *
 * Exit status: 0 all passed, 1 a comparison failed, 77 skipped (no CUDA in
 * this build, or no device).
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "core/backend.h"
#include "model/model.h"
#include "io/safetensors.h"

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

/* ------------------------------------------------------ network layers */

/* Network ops: the CPU reference computes in FP32 with OpenBLAS, the GPU
 * with cuBLAS in strict FP32, so they agree to float rounding. */
#define NN_TOL 1e-5
/* A sample alone and the same sample in a batch, on the GPU. */
#define BATCH_TOL 1e-6

static float *up_f(dfx_backend *be, const float *h, size_t n)
{
    return dev_upload(be, h, n * sizeof(float));
}

/* A device buffer of n floats filled with a marker value (so values an op
 * forgets to write show up). */
static float *junk_f(dfx_backend *be, size_t n)
{
    float *h = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = 777.0f;
    float *d = up_f(be, h, n);
    free(h);
    return d;
}

static void down_f(dfx_backend *be, float *h, const float *d, size_t n)
{
    dev_download(be, h, d, n * sizeof(float));
}

static void free_d(dfx_backend *be, const void *p)
{
    if (p) be->ops->free(be, (void *)p);
}

/* Compares got with ref and prints a row, with the count of values that
 * differ in bits as the note. */
static void compare(const char *name, const float *got, const float *ref, size_t n, double tol,
                    const char *extra)
{
    char note[160];
    size_t nb = bits_differ(got, ref, n);
    snprintf(note, sizeof note, "%s%s%zu of %zu differ in bits", extra ? extra : "",
             extra && *extra ? "; " : "", nb, n);
    row(name, nerr_f(got, ref, n), tol, note);
}

/* Bit for bit: fails when any value differs in bits (the column shows the
 * normalised error, or 1e-300 when only the sign of a zero differs). */
static void compare_bits(const char *name, const float *got, const float *ref, size_t n)
{
    char note[96];
    size_t nb = bits_differ(got, ref, n);
    double e = nerr_f(got, ref, n);
    if (nb && !(e > 0.0) && !isnan(e)) e = 1e-300;
    snprintf(note, sizeof note, "%zu of %zu differ in bits", nb, n);
    row(name, nb ? e : 0.0, 0.0, note);
}

/* -------------------------------------------------------- unary, mul_add */

/* exp then log in place, and y = a b + c out of place and in place (y = b). */
static void unary_run(dfx_backend *be, const float *x, const float *pos, const float *a,
                      size_t n, double c, float *out)
{
    float *dx = up_f(be, x, n), *dp = up_f(be, pos, n), *da = up_f(be, a, n);
    float *dy = junk_f(be, n);
    be->ops->unary(be, dy, dx, n, DFX_FN_EXP);
    be->ops->unary(be, dp, dp, n, DFX_FN_LOG);
    down_f(be, out, dy, n);
    down_f(be, out + n, dp, n);
    be->ops->mul_add(be, dy, da, dx, c, n);
    be->ops->mul_add(be, dx, da, dx, c, n);
    down_f(be, out + 2 * n, dy, n);
    down_f(be, out + 3 * n, dx, n);
    free_d(be, dx);
    free_d(be, dp);
    free_d(be, da);
    free_d(be, dy);
}

static void test_unary(size_t n, double c)
{
    float *x = xmalloc(n * sizeof(float)), *pos = xmalloc(n * sizeof(float)),
          *a = xmalloc(n * sizeof(float));
    fill_normal(x, n, 3.0f);
    fill_normal(a, n, 1.0f);
    for (size_t i = 0; i < n; i++) pos[i] = fabsf(x[i]) * 10.0f + 1e-30f;
    float *ref = xmalloc(4 * n * sizeof(float)), *got = xmalloc(4 * n * sizeof(float));
    unary_run(cpu, x, pos, a, n, c, ref);
    unary_run(gpu, x, pos, a, n, c, got);
    char name[128];
    snprintf(name, sizeof name, "unary exp n=%zu", n);
    compare(name, got, ref, n, 1e-7, NULL);
    snprintf(name, sizeof name, "unary log n=%zu (in place)", n);
    compare(name, got + n, ref + n, n, 1e-7, NULL);
    snprintf(name, sizeof name, "mul_add n=%zu c=%g (then in place)", n, c);
    compare(name, got + 2 * n, ref + 2 * n, 2 * n, 0.0, NULL);
    free(x);
    free(pos);
    free(a);
    free(ref);
    free(got);
}

/* --------------------------------------------------------------- conv2d */

typedef struct conv_case {
    int B, Cin, H, W, Cout, k, stride, pad, bias;
} conv_case;

static int conv_out(int n, const conv_case *c)
{
    return (n + 2 * c->pad - c->k) / c->stride + 1;
}

/* Runs conv2d for rows [b0, b0 + B) of x on be. */
static void conv_run(dfx_backend *be, const conv_case *c, int b0, int B, const float *x,
                     const float *w, const float *bias, float *out)
{
    const size_t in = (size_t)c->Cin * c->H * c->W;
    const size_t ny = (size_t)B * c->Cout * conv_out(c->H, c) * conv_out(c->W, c);
    float *dx = up_f(be, x + (size_t)b0 * in, (size_t)B * in);
    float *dw = up_f(be, w, (size_t)c->Cout * c->Cin * c->k * c->k);
    float *db = c->bias ? up_f(be, bias, (size_t)c->Cout) : NULL;
    float *dy = junk_f(be, ny);
    size_t ns = be->ops->conv_scratch(be, B, c->Cin, c->H, c->W, c->k, c->stride, c->pad);
    float *ds = ns ? dev_alloc(be, ns * sizeof(float)) : NULL;
    be->ops->conv2d(be, dy, dx, dw, db, B, c->Cin, c->H, c->W, c->Cout, c->k, c->stride, c->pad,
                    ds);
    down_f(be, out, dy, ny);
    free_d(be, dx);
    free_d(be, dw);
    free_d(be, db);
    free_d(be, dy);
    free_d(be, ds);
}

static void test_conv(const conv_case *c, double tol, const char *tag)
{
    const size_t in = (size_t)c->Cin * c->H * c->W;
    const size_t nw = (size_t)c->Cout * c->Cin * c->k * c->k;
    const size_t per = (size_t)c->Cout * conv_out(c->H, c) * conv_out(c->W, c);
    const size_t ny = (size_t)c->B * per;
    float *x = xmalloc((size_t)c->B * in * sizeof(float)), *w = xmalloc(nw * sizeof(float));
    float *b = xmalloc((size_t)c->Cout * sizeof(float));
    fill_normal(x, (size_t)c->B * in, 1.0f);
    fill_normal(w, nw, (float)(1.0 / sqrt((double)c->Cin * c->k * c->k)));
    fill_normal(b, (size_t)c->Cout, 0.2f);
    float *ref = xmalloc(ny * sizeof(float)), *got = xmalloc(ny * sizeof(float));
    conv_run(cpu, c, 0, c->B, x, w, b, ref);
    conv_run(gpu, c, 0, c->B, x, w, b, got);
    char name[160];
    size_t ns = gpu->ops->conv_scratch(gpu, c->B, c->Cin, c->H, c->W, c->k, c->stride, c->pad);
    snprintf(name, sizeof name, "conv2d B=%d %dx%dx%d -> %d k=%d s=%d p=%d%s%s", c->B, c->Cin,
             c->H, c->W, c->Cout, c->k, c->stride, c->pad, c->bias ? " bias" : "", tag ? tag : "");
    char extra[64];
    snprintf(extra, sizeof extra, "scratch %.1f MiB", (double)ns * 4.0 / 1048576.0);
    compare(name, got, ref, ny, tol, extra);
    if (c->B > 1 && !tag) { /* the last sample alone on the GPU */
        float *one = xmalloc(per * sizeof(float));
        conv_run(gpu, c, c->B - 1, 1, x, w, b, one);
        compare("  last sample alone vs in the batch (cuda)", one, got + (c->B - 1) * per, per,
                BATCH_TOL, NULL);
        free(one);
    }
    free(x);
    free(w);
    free(b);
    free(ref);
    free(got);
}

/* ----------------------------------------------------------- group_norm */

static void gn_run(dfx_backend *be, int B, int C, int HW, int groups, int silu, const float *x,
                   const float *g, const float *bt, float *out)
{
    const size_t n = (size_t)B * C * HW;
    float *dx = up_f(be, x, n), *dg = up_f(be, g, (size_t)C), *db = up_f(be, bt, (size_t)C);
    float *dy = junk_f(be, n);
    be->ops->group_norm(be, dy, dx, dg, db, B, C, HW, groups, 1e-5f, silu);
    down_f(be, out, dy, n);
    free_d(be, dx);
    free_d(be, dg);
    free_d(be, db);
    free_d(be, dy);
}

/* Inputs with a large common offset test the two-pass variance. */
static void test_group_norm(int B, int C, int HW, int groups, int silu, float offset)
{
    const size_t n = (size_t)B * C * HW, per = (size_t)C * HW;
    float *x = xmalloc(n * sizeof(float)), *g = xmalloc((size_t)C * sizeof(float)),
          *bt = xmalloc((size_t)C * sizeof(float));
    fill_normal(x, n, 2.0f);
    for (size_t i = 0; i < n; i++) x[i] += offset;
    fill_normal(g, (size_t)C, 0.25f);
    for (int i = 0; i < C; i++) g[i] += 1.0f;
    fill_normal(bt, (size_t)C, 0.2f);
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    gn_run(cpu, B, C, HW, groups, silu, x, g, bt, ref);
    gn_run(gpu, B, C, HW, groups, silu, x, g, bt, got);
    char name[160];
    snprintf(name, sizeof name, "group_norm B=%d C=%d HW=%d groups=%d%s offset=%g", B, C, HW,
             groups, silu ? " silu" : "", offset);
    compare(name, got, ref, n, NN_TOL, NULL);
    if (B > 1) {
        float *one = xmalloc(per * sizeof(float));
        gn_run(gpu, 1, C, HW, groups, silu, x + (B - 1) * per, g, bt, one);
        compare("  last sample alone vs in the batch (cuda)", one, got + (B - 1) * per, per, 0.0,
                NULL);
        free(one);
    }
    free(x);
    free(g);
    free(bt);
    free(ref);
    free(got);
}

/* --------------------------------------------------------------- linear */

static void linear_run(dfx_backend *be, int B, int in, int out, int silu, const float *x,
                       const float *w, const float *b, float *y)
{
    float *dx = up_f(be, x, (size_t)B * in), *dw = up_f(be, w, (size_t)out * in);
    float *db = b ? up_f(be, b, (size_t)out) : NULL;
    float *dy = junk_f(be, (size_t)B * out);
    be->ops->linear(be, dy, dx, dw, db, B, in, out, silu);
    down_f(be, y, dy, (size_t)B * out);
    free_d(be, dx);
    free_d(be, dw);
    free_d(be, db);
    free_d(be, dy);
}

static void test_linear(int B, int in, int out, int silu, int bias)
{
    float *x = xmalloc((size_t)B * in * sizeof(float)), *w = xmalloc((size_t)out * in * sizeof(float));
    float *b = xmalloc((size_t)out * sizeof(float));
    fill_normal(x, (size_t)B * in, 2.0f);
    fill_normal(w, (size_t)out * in, (float)(1.0 / sqrt((double)in)));
    fill_normal(b, (size_t)out, 0.2f);
    const size_t n = (size_t)B * out;
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    linear_run(cpu, B, in, out, silu, x, w, bias ? b : NULL, ref);
    linear_run(gpu, B, in, out, silu, x, w, bias ? b : NULL, got);
    char name[160];
    snprintf(name, sizeof name, "linear B=%d %d -> %d%s%s", B, in, out, silu ? " silu_in" : "",
             bias ? " bias" : "");
    compare(name, got, ref, n, NN_TOL, NULL);
    if (B > 1) {
        float *one = xmalloc((size_t)out * sizeof(float));
        linear_run(gpu, 1, in, out, silu, x + (size_t)(B - 1) * in, w, bias ? b : NULL, one);
        compare("  last sample alone vs in the batch (cuda)", one, got + (size_t)(B - 1) * out,
                (size_t)out, 0.0, NULL);
        free(one);
    }
    free(x);
    free(w);
    free(b);
    free(ref);
    free(got);
}

/* ------------------------------------------------- elementwise layers */

/* add_channel, add (in place and not), concat, upsample2x: exact ops,
 * compared bit for bit. */
static void elementwise_run(dfx_backend *be, int B, int C, int Cb, int H, int W, const float *a,
                            const float *b, const float *e, float *o_addch, float *o_add,
                            float *o_cat, float *o_up)
{
    const int HW = H * W;
    const size_t n = (size_t)B * C * HW, nb = (size_t)B * Cb * HW;
    float *da = up_f(be, a, n), *db = up_f(be, b, nb), *de = up_f(be, e, (size_t)B * C);
    float *y = up_f(be, a, n);
    be->ops->add_channel(be, y, de, B, C, HW);
    down_f(be, o_addch, y, n);
    float *bb = up_f(be, b, n); /* b's first n values */
    be->ops->add(be, y, y, bb, n); /* in place: y = y + b */
    float *z = junk_f(be, n);
    be->ops->add(be, z, da, bb, n);
    down_f(be, o_add, y, n);
    down_f(be, o_add + n, z, n);
    float *cat = junk_f(be, n + nb);
    be->ops->concat(be, cat, da, C, db, Cb, B, HW);
    down_f(be, o_cat, cat, n + nb);
    float *upd = junk_f(be, 4 * n);
    be->ops->upsample2x(be, upd, da, B, C, H, W);
    down_f(be, o_up, upd, 4 * n);
    free_d(be, da);
    free_d(be, db);
    free_d(be, de);
    free_d(be, y);
    free_d(be, bb);
    free_d(be, z);
    free_d(be, cat);
    free_d(be, upd);
}

static void test_elementwise(int B, int C, int Cb, int H, int W)
{
    const size_t n = (size_t)B * C * H * W, nb = (size_t)B * Cb * H * W;
    const size_t nbig = nb > n ? nb : n;
    float *a = xmalloc(n * sizeof(float)), *b = xmalloc(nbig * sizeof(float)),
          *e = xmalloc((size_t)B * C * sizeof(float));
    fill_normal(a, n, 1.0f);
    fill_normal(b, nbig, 1.0f);
    fill_normal(e, (size_t)B * C, 1.0f);
    float *r[4], *g[4];
    const size_t sz[4] = {n, 2 * n, n + nb, 4 * n};
    for (int i = 0; i < 4; i++) {
        r[i] = xmalloc(sz[i] * sizeof(float));
        g[i] = xmalloc(sz[i] * sizeof(float));
    }
    elementwise_run(cpu, B, C, Cb, H, W, a, b, e, r[0], r[1], r[2], r[3]);
    elementwise_run(gpu, B, C, Cb, H, W, a, b, e, g[0], g[1], g[2], g[3]);
    static const char *what[4] = {"add_channel", "add (in place, then out of place)",
                                  "concat", "upsample2x"};
    for (int i = 0; i < 4; i++) {
        char name[160];
        if (i == 2)
            snprintf(name, sizeof name, "%s B=%d C=%d+%d %dx%d", what[i], B, C, Cb, H, W);
        else
            snprintf(name, sizeof name, "%s B=%d C=%d %dx%d", what[i], B, C, H, W);
        size_t nbits = bits_differ(g[i], r[i], sz[i]);
        char note[64];
        snprintf(note, sizeof note, "%zu values differ in bits", nbits);
        row(name, nbits ? 1.0 : 0.0, 0.0, note);
        free(r[i]);
        free(g[i]);
    }
    free(a);
    free(b);
    free(e);
}

/* ------------------------------------------------------------ attention */

static void attention_run(dfx_backend *be, int B, int C, int HW, int heads, const float *qkv,
                          float *out)
{
    const size_t n = (size_t)B * C * HW;
    float *dq = up_f(be, qkv, 3 * n), *dy = junk_f(be, n);
    size_t ns = be->ops->attention_scratch(be, B, C, HW, heads);
    float *ds = ns ? dev_alloc(be, ns * sizeof(float)) : NULL;
    be->ops->attention(be, dy, dq, B, C, HW, heads, ds);
    down_f(be, out, dy, n);
    free_d(be, dq);
    free_d(be, dy);
    free_d(be, ds);
}

static void test_attention(int B, int C, int HW, int heads, float scale)
{
    const size_t n = (size_t)B * C * HW, per = (size_t)C * HW;
    float *qkv = xmalloc(3 * n * sizeof(float));
    fill_normal(qkv, 3 * n, scale);
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    attention_run(cpu, B, C, HW, heads, qkv, ref);
    attention_run(gpu, B, C, HW, heads, qkv, got);
    char name[160], extra[64];
    snprintf(name, sizeof name, "attention B=%d C=%d HW=%d heads=%d (qkv x%g)", B, C, HW, heads,
             scale);
    snprintf(extra, sizeof extra, "scratch %.1f MiB",
             (double)gpu->ops->attention_scratch(gpu, B, C, HW, heads) * 4.0 / 1048576.0);
    compare(name, got, ref, n, NN_TOL, extra);
    if (B > 1) {
        float *one = xmalloc(per * sizeof(float));
        attention_run(gpu, 1, C, HW, heads, qkv + (size_t)(B - 1) * 3 * per, one);
        compare("  last sample alone vs in the batch (cuda)", one, got + (B - 1) * per, per,
                BATCH_TOL, NULL);
        free(one);
    }
    free(qkv);
    free(ref);
    free(got);
}

/* ------------------------------------------------ time_embed, embed_add */

/* Two time embeddings in a row from one host array, overwritten with NaN
 * right after each call (the op must have consumed it), then a class
 * embedding added to the first with labels overwritten likewise. */
static void embed_run(dfx_backend *be, int B, int dim, double scale, const double *t0,
                      const double *t1, const float *table, int rows, const int *labels,
                      float *out)
{
    const size_t n = (size_t)B * dim;
    float *y0 = junk_f(be, n), *y1 = junk_f(be, n);
    double *t = xmalloc((size_t)B * sizeof(double));
    int *idx = xmalloc((size_t)B * sizeof(int));
    memcpy(t, t0, (size_t)B * sizeof(double));
    be->ops->time_embed(be, y0, t, B, dim, scale);
    memcpy(t, t1, (size_t)B * sizeof(double));
    be->ops->time_embed(be, y1, t, B, dim, scale);
    for (int i = 0; i < B; i++) t[i] = NAN;
    float *tab = up_f(be, table, (size_t)rows * dim);
    memcpy(idx, labels, (size_t)B * sizeof(int));
    be->ops->embed_add(be, y0, tab, idx, B, dim);
    for (int i = 0; i < B; i++) idx[i] = (labels[i] + 1) % rows; /* valid, but wrong */
    down_f(be, out, y0, n);
    down_f(be, out + n, y1, n);
    free_d(be, y0);
    free_d(be, y1);
    free_d(be, tab);
    free(t);
    free(idx);
}

static void test_embed(int B, int dim, double scale)
{
    const int rows = 11;
    const size_t n = (size_t)B * dim;
    double *t0 = xmalloc((size_t)B * sizeof(double)), *t1 = xmalloc((size_t)B * sizeof(double));
    int *labels = xmalloc((size_t)B * sizeof(int));
    for (int i = 0; i < B; i++) {
        t0[i] = i == 0 ? 0.0 : i == 1 ? 1.0 : urand();
        t1[i] = urand();
        labels[i] = (int)(urand() * rows);
    }
    float *table = xmalloc((size_t)rows * dim * sizeof(float));
    fill_normal(table, (size_t)rows * dim, 0.5f);
    float *ref = xmalloc(2 * n * sizeof(float)), *got = xmalloc(2 * n * sizeof(float));
    /* odd dims leave the last value alone: start both from the marker */
    embed_run(cpu, B, dim, scale, t0, t1, table, rows, labels, ref);
    embed_run(gpu, B, dim, scale, t0, t1, table, rows, labels, got);
    char name[160];
    snprintf(name, sizeof name, "time_embed + embed_add B=%d dim=%d scale=%g", B, dim, scale);
    compare(name, got, ref, n, NN_TOL, NULL);
    snprintf(name, sizeof name, "time_embed B=%d dim=%d (host t reused at once)", B, dim);
    compare(name, got + n, ref + n, n, NN_TOL, NULL);
    free(t0);
    free(t1);
    free(labels);
    free(table);
    free(ref);
    free(got);
}

/* ------------------------------------------------------------- tangents */

/* Tangents (group_norm_jvp, attention_jvp, silu_jvp): group_norm_jvp and
 * silu_jvp work in double / elementwise, so they agree to float rounding
 * like the forward ops. attention_jvp goes through the forward's products
 * (P) and then its own, with the difference dS - rowsum(P dS) cancelling
 * in between: allow ten times the forward's tolerance. A sample alone on
 * the GPU may take other cuBLAS kernels, likewise. */
#define JVP_TOL (10 * NN_TOL)
#define JVP_BATCH_TOL (10 * BATCH_TOL)

static void gn_jvp_run(dfx_backend *be, int B, int C, int HW, int groups, int silu,
                       const float *x, const float *dx, const float *g, const float *bt,
                       float *out)
{
    const size_t n = (size_t)B * C * HW;
    float *d_x = up_f(be, x, n), *d_dx = up_f(be, dx, n), *dg = up_f(be, g, (size_t)C),
          *db = up_f(be, bt, (size_t)C);
    float *dy = junk_f(be, n);
    be->ops->group_norm_jvp(be, dy, d_x, d_dx, dg, db, B, C, HW, groups, 1e-5f, silu);
    down_f(be, out, dy, n);
    free_d(be, d_x);
    free_d(be, d_dx);
    free_d(be, dg);
    free_d(be, db);
    free_d(be, dy);
}

static void test_group_norm_jvp(int B, int C, int HW, int groups, int silu, float offset)
{
    const size_t n = (size_t)B * C * HW, per = (size_t)C * HW;
    float *x = xmalloc(n * sizeof(float)), *dx = xmalloc(n * sizeof(float)),
          *g = xmalloc((size_t)C * sizeof(float)), *bt = xmalloc((size_t)C * sizeof(float));
    fill_normal(x, n, 2.0f);
    for (size_t i = 0; i < n; i++) x[i] += offset;
    fill_normal(dx, n, 1.0f);
    fill_normal(g, (size_t)C, 0.25f);
    for (int i = 0; i < C; i++) g[i] += 1.0f;
    fill_normal(bt, (size_t)C, 0.2f);
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    gn_jvp_run(cpu, B, C, HW, groups, silu, x, dx, g, bt, ref);
    gn_jvp_run(gpu, B, C, HW, groups, silu, x, dx, g, bt, got);
    char name[160];
    snprintf(name, sizeof name, "group_norm_jvp B=%d C=%d HW=%d groups=%d%s offset=%g", B, C,
             HW, groups, silu ? " silu" : "", offset);
    compare(name, got, ref, n, NN_TOL, NULL);
    if (B > 1) {
        float *one = xmalloc(per * sizeof(float));
        gn_jvp_run(gpu, 1, C, HW, groups, silu, x + (B - 1) * per, dx + (B - 1) * per, g, bt,
                   one);
        compare("  last sample alone vs in the batch (cuda)", one, got + (B - 1) * per, per, 0.0,
                NULL);
        free(one);
    }
    free(x);
    free(dx);
    free(g);
    free(bt);
    free(ref);
    free(got);
}

/* silu_jvp out of place, then in place (dy = dx). */
static void silu_jvp_run(dfx_backend *be, const float *x, const float *dx, size_t n, float *out)
{
    float *d_x = up_f(be, x, n), *d_dx = up_f(be, dx, n), *dy = junk_f(be, n);
    be->ops->silu_jvp(be, dy, d_x, d_dx, n);
    be->ops->silu_jvp(be, d_dx, d_x, d_dx, n);
    down_f(be, out, dy, n);
    down_f(be, out + n, d_dx, n);
    free_d(be, d_x);
    free_d(be, d_dx);
    free_d(be, dy);
}

static void test_silu_jvp(size_t n)
{
    float *x = xmalloc(n * sizeof(float)), *dx = xmalloc(n * sizeof(float));
    fill_normal(x, n, 4.0f);
    fill_normal(dx, n, 1.0f);
    if (n >= 4) { /* the far ends, where SiLU' is 0 and 1 */
        x[0] = -1e4f;
        x[1] = -100.0f;
        x[2] = 100.0f;
        x[3] = 1e4f;
    }
    float *ref = xmalloc(2 * n * sizeof(float)), *got = xmalloc(2 * n * sizeof(float));
    silu_jvp_run(cpu, x, dx, n, ref);
    silu_jvp_run(gpu, x, dx, n, got);
    char name[160];
    snprintf(name, sizeof name, "silu_jvp n=%zu (then in place)", n);
    compare(name, got, ref, 2 * n, 1e-6, NULL);
    free(x);
    free(dx);
    free(ref);
    free(got);
}

static void attention_jvp_run(dfx_backend *be, int B, int C, int HW, int heads,
                              const float *qkv, const float *dqkv, float *out)
{
    const size_t n = (size_t)B * C * HW;
    float *dq = up_f(be, qkv, 3 * n), *ddq = up_f(be, dqkv, 3 * n), *dy = junk_f(be, n);
    size_t ns = be->ops->attention_jvp_scratch(be, B, C, HW, heads);
    float *ds = ns ? dev_alloc(be, ns * sizeof(float)) : NULL;
    be->ops->attention_jvp(be, dy, dq, ddq, B, C, HW, heads, ds);
    down_f(be, out, dy, n);
    free_d(be, dq);
    free_d(be, ddq);
    free_d(be, dy);
    free_d(be, ds);
}

static void test_attention_jvp(int B, int C, int HW, int heads, float scale)
{
    const size_t n = (size_t)B * C * HW, per = (size_t)C * HW;
    float *qkv = xmalloc(3 * n * sizeof(float)), *dqkv = xmalloc(3 * n * sizeof(float));
    fill_normal(qkv, 3 * n, scale);
    fill_normal(dqkv, 3 * n, 1.0f);
    float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    attention_jvp_run(cpu, B, C, HW, heads, qkv, dqkv, ref);
    attention_jvp_run(gpu, B, C, HW, heads, qkv, dqkv, got);
    char name[160], extra[64];
    snprintf(name, sizeof name, "attention_jvp B=%d C=%d HW=%d heads=%d (qkv x%g)", B, C, HW,
             heads, scale);
    snprintf(extra, sizeof extra, "scratch %.1f MiB",
             (double)gpu->ops->attention_jvp_scratch(gpu, B, C, HW, heads) * 4.0 / 1048576.0);
    compare(name, got, ref, n, JVP_TOL, extra);
    if (B > 1) {
        float *one = xmalloc(per * sizeof(float));
        attention_jvp_run(gpu, 1, C, HW, heads, qkv + (size_t)(B - 1) * 3 * per,
                          dqkv + (size_t)(B - 1) * 3 * per, one);
        compare("  last sample alone vs in the batch (cuda)", one, got + (B - 1) * per, per,
                JVP_BATCH_TOL, NULL);
        free(one);
    }
    free(qkv);
    free(dqkv);
    free(ref);
    free(got);
}

/* ------------------------------------------------------------ precision */

/* Documented tolerances of the reduced precisions (normalised error against
 * the FP32 CPU reference): TF32 keeps 10 mantissa bits (unit roundoff
 * 2^-11 = 4.9e-4), BF16 7 (2^-8 = 3.9e-3); a product of length K
 * accumulates in FP32, so its normalised error stays near the unit
 * roundoff, and a whole network compounds a few dozen of them. */
#define TF32_OP_TOL 5e-3
#define BF16_OP_TOL 3e-2
#define TF32_NET_TOL 2e-2
#define BF16_NET_TOL 1e-1

#ifdef DFX_TEST_DATA
static void unet_precision(const char *name, const char *mode, double tol);
#endif

static void test_precision(void)
{
    dfx_error e1, e2;
    int bad_mode = dfx_backend_set_precision(gpu, "fp16", &e1);
    int not_cuda = dfx_backend_set_precision(cpu, "tf32", &e2);
    row("set_precision refuses fp16, and tf32 on the CPU backend",
        bad_mode == -1 && not_cuda == -1 && strstr(e1.msg, "fp16") && strstr(e2.msg, "cpu")
            ? 0.0 : 1.0, 0.0, "");
    static const struct { const char *mode; double op_tol, net_tol; } modes[] = {
        {"tf32", TF32_OP_TOL, TF32_NET_TOL},
        {"bf16", BF16_OP_TOL, BF16_NET_TOL},
        {"fp32", NN_TOL, NN_TOL},
    };
    const conv_case c = {3, 64, 14, 14, 64, 3, 1, 1, 1};
    for (int i = 0; i < 3; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, " %s", modes[i].mode);
        if (dfx_backend_set_precision(gpu, modes[i].mode, &err)) {
            row(tag, 1.0, 0.0, err.msg);
            continue;
        }
        test_conv(&c, modes[i].op_tol, tag);
        test_attention(3, 64, 49, 4, 2.0f); /* at the current precision */
#ifdef DFX_TEST_DATA
        unet_precision("unet_tiny", modes[i].mode, modes[i].net_tol);
#endif
    }
}

/* ------------------------------------------------------- whole network */

#ifdef DFX_TEST_DATA
static float *st_tensor(dfx_st_file *f, const char *name, size_t *n)
{
    const dfx_st_tensor *t = dfx_st_get(f, name, -1, NULL, &err);
    if (!t) return NULL;
    float *v = xmalloc(t->numel * sizeof *v);
    dfx_st_to_f32(f, t, v);
    *n = t->numel;
    return v;
}

/* Evaluates the model on both backends and compares: the fixture's inputs
 * (tests/fixtures/NAME.io.safetensors), a larger random batch with every
 * label, each sample of it alone on the GPU, and classifier-free guidance
 * (conditional models). */
static void test_unet(const char *name, int B2)
{
    char mpath[600], iopath[600], title[160];
    snprintf(mpath, sizeof mpath, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    snprintf(iopath, sizeof iopath, "%s/fixtures/%s.io.safetensors", DFX_TEST_DATA, name);
    dfx_model *mc = dfx_model_load(mpath, cpu, &err);
    if (!mc) die("dfx_model_load", cpu);
    dfx_model *mg = dfx_model_load(mpath, gpu, &err);
    if (!mg) {
        snprintf(title, sizeof title, "U-Net %s loads on cuda", name);
        row(title, 1.0, 0.0, err.msg);
        dfx_model_free(mc);
        return;
    }
    const size_t dim = mc->dim;
    const int K = mc->info.num_classes;
    dfx_st_file f;
    if (dfx_st_open(&f, iopath, &err)) die("dfx_st_open", cpu);
    size_t nx = 0, nt = 0, ny = 0;
    float *fx = st_tensor(&f, "x", &nx), *ft = st_tensor(&f, "t", &nt), *fy = st_tensor(&f, "y", &ny);
    if (!fx || !ft || !fy || nx != nt * dim || ny != nt) die("fixture tensors", cpu);
    int B = (int)nt;
    if (B2 < B) B2 = B;
    /* rows 0..B-1: the fixture; then random inputs, labels cycling 0..K */
    double *t = xmalloc((size_t)B2 * sizeof(double));
    int *labels = xmalloc((size_t)B2 * sizeof(int));
    float *x = xmalloc((size_t)B2 * dim * sizeof(float));
    for (int r = 0; r < B2; r++) {
        if (r < B) {
            t[r] = ft[r];
            labels[r] = (int)fy[r];
            memcpy(x + (size_t)r * dim, fx + (size_t)r * dim, dim * sizeof(float));
        } else {
            t[r] = 0.01 + 0.98 * urand();
            labels[r] = K > 0 ? r % (K + 1) : 0;
            fill_normal(x + (size_t)r * dim, dim, 1.0f);
        }
    }
    float *ref = xmalloc((size_t)B2 * dim * sizeof(float)), *got = xmalloc((size_t)B2 * dim * sizeof(float));
    const dfx_pred p = mc->cfg.prediction;
    for (int pass = 0; pass < 2; pass++) {
        int rows = pass == 0 ? B : B2;
        if (K > 0) {
            dfx_unet_force_labels(mc, labels);
            dfx_unet_force_labels(mg, labels);
        }
        if (dfx_model_eval_host(mc, t, x, rows, p, ref, &err)) die("eval", cpu);
        if (dfx_model_eval_host(mg, t, x, rows, p, got, &err)) die("eval", gpu);
        snprintf(title, sizeof title, "U-Net %s: %d %s (%zu values per sample)", name, rows,
                 pass == 0 ? "fixture inputs" : "random inputs", dim);
        compare(title, got, ref, (size_t)rows * dim, NN_TOL, NULL);
    }
    /* batch invariance on the GPU: each sample alone */
    double worst = 0.0;
    size_t nbits = 0;
    float *one = xmalloc(dim * sizeof(float));
    for (int r = 0; r < B2; r++) {
        if (K > 0) dfx_unet_force_labels(mg, labels + r);
        if (dfx_model_eval_host(mg, t + r, x + (size_t)r * dim, 1, p, one, &err)) die("eval", gpu);
        double e = nerr_f(one, got + (size_t)r * dim, dim);
        if (!(e <= worst)) worst = e;
        nbits += bits_differ(one, got + (size_t)r * dim, dim);
    }
    snprintf(title, sizeof title, "  each of the %d samples alone vs in the batch (cuda)", B2);
    char note[64];
    snprintf(note, sizeof note, "%zu values differ in bits", nbits);
    row(title, worst, BATCH_TOL, note);
    free(one);
    if (K > 0) { /* guidance w = 2 with classes cycling from sample 5 */
        dfx_unet_force_labels(mc, NULL);
        dfx_unet_force_labels(mg, NULL);
        if (dfx_model_set_class(mc, DFX_CLASS_CYCLE, 2.0, &err)) die("set_class", cpu);
        if (dfx_model_set_class(mg, DFX_CLASS_CYCLE, 2.0, &err)) die("set_class", gpu);
        mc->first_index = mg->first_index = 5;
        if (dfx_model_eval_host(mc, t, x, B2, p, ref, &err)) die("eval", cpu);
        if (dfx_model_eval_host(mg, t, x, B2, p, got, &err)) die("eval", gpu);
        snprintf(title, sizeof title, "U-Net %s: guidance 2, classes cycling, %d samples", name,
                 B2);
        /* 2 P_c - P_u: twice one evaluation's error plus another's */
        compare(title, got, ref, (size_t)B2 * dim, 2 * NN_TOL, NULL);
    }
    free(fx);
    free(ft);
    free(fy);
    free(t);
    free(labels);
    free(x);
    free(ref);
    free(got);
    dfx_st_close(&f);
    dfx_model_free(mc);
    dfx_model_free(mg);
}
#endif

#ifdef DFX_TEST_DATA
/* The U-Net's exact jvp (model_unet.c) on both backends, on the inputs and
 * direction of tests/fixtures/NAME.jvp.safetensors (conditional models:
 * per-row labels, then guidance 2 with class 1): out and the tangent are
 * compared, and on the GPU jvp's out must be its predict's, bit for bit. */
static void unet_jvp_run(dfx_model *m, const double *t, const float *x, const float *v, int B,
                         float *out, float *jv, float *pred)
{
    dfx_backend *be = m->be;
    const size_t n = (size_t)B * m->dim;
    float *dx = up_f(be, x, n), *dv = up_f(be, v, n), *dout = junk_f(be, n),
          *djv = junk_f(be, n), *dp = junk_f(be, n);
    if (dfx_model_reserve(m, B, &err)) die("dfx_model_reserve", be);
    if (m->vt->jvp(m, t, dx, dv, dout, djv, B, &err)) die("jvp", be);
    if (m->vt->predict(m, t, dx, dp, B, &err)) die("predict", be);
    down_f(be, out, dout, n);
    down_f(be, jv, djv, n);
    down_f(be, pred, dp, n);
    free_d(be, dx);
    free_d(be, dv);
    free_d(be, dout);
    free_d(be, djv);
    free_d(be, dp);
}

static void test_unet_jvp(const char *name)
{
    char mpath[600], jpath[600], title[160];
    snprintf(mpath, sizeof mpath, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    snprintf(jpath, sizeof jpath, "%s/fixtures/%s.jvp.safetensors", DFX_TEST_DATA, name);
    dfx_model *mc = dfx_model_load(mpath, cpu, &err);
    if (!mc) die("dfx_model_load", cpu);
    dfx_model *mg = dfx_model_load(mpath, gpu, &err);
    if (!mg) die("dfx_model_load", gpu);
    if (!mc->vt->jvp || !mg->vt->jvp) {
        snprintf(title, sizeof title, "U-Net %s has a jvp", name);
        row(title, 1.0, 0.0, "");
        dfx_model_free(mc);
        dfx_model_free(mg);
        return;
    }
    const size_t dim = mc->dim;
    const int K = mc->info.num_classes;
    dfx_st_file f;
    if (dfx_st_open(&f, jpath, &err)) die("dfx_st_open", cpu);
    size_t nx = 0, nt = 0, ny = 0, nv = 0;
    float *fx = st_tensor(&f, "x", &nx), *ft = st_tensor(&f, "t", &nt),
          *fy = st_tensor(&f, "y", &ny), *fv = st_tensor(&f, "v", &nv);
    if (!fx || !ft || !fy || !fv || nx != nt * dim || nv != nx || ny != nt)
        die("fixture tensors", cpu);
    const int B = (int)nt;
    const size_t n = (size_t)B * dim;
    double *t = xmalloc((size_t)B * sizeof(double));
    int *labels = xmalloc((size_t)B * sizeof(int));
    for (int r = 0; r < B; r++) {
        t[r] = ft[r];
        labels[r] = (int)fy[r];
    }
    float *ro = xmalloc(n * sizeof(float)), *rj = xmalloc(n * sizeof(float)),
          *rp = xmalloc(n * sizeof(float)), *go = xmalloc(n * sizeof(float)),
          *gj = xmalloc(n * sizeof(float)), *gp = xmalloc(n * sizeof(float));
    for (int guided = 0; guided <= (K > 0); guided++) {
        const char *tag = guided ? ", guidance 2" : "";
        if (guided) {
            dfx_unet_force_labels(mc, NULL);
            dfx_unet_force_labels(mg, NULL);
            if (dfx_model_set_class(mc, 1, 2.0, &err)) die("set_class", cpu);
            if (dfx_model_set_class(mg, 1, 2.0, &err)) die("set_class", gpu);
        } else if (K > 0) {
            dfx_unet_force_labels(mc, labels);
            dfx_unet_force_labels(mg, labels);
        }
        unet_jvp_run(mc, t, fx, fv, B, ro, rj, rp);
        unet_jvp_run(mg, t, fx, fv, B, go, gj, gp);
        /* guided: 2 P_c - P_u, twice one evaluation's error plus another's */
        const double k = guided ? 3.0 : 1.0;
        snprintf(title, sizeof title, "U-Net %s jvp%s: out", name, tag);
        compare(title, go, ro, n, k * NN_TOL, NULL);
        snprintf(title, sizeof title, "U-Net %s jvp%s: tangent", name, tag);
        compare(title, gj, rj, n, k * JVP_TOL, NULL);
        snprintf(title, sizeof title, "  jvp's out is predict's (cuda)%s", tag);
        compare(title, go, gp, n, 0.0, NULL);
    }
    dfx_unet_force_labels(mc, NULL);
    dfx_unet_force_labels(mg, NULL);
    free(fx);
    free(ft);
    free(fy);
    free(fv);
    free(t);
    free(labels);
    free(ro);
    free(rj);
    free(rp);
    free(go);
    free(gj);
    free(gp);
    dfx_st_close(&f);
    dfx_model_free(mc);
    dfx_model_free(mg);
}
#endif

#ifdef DFX_TEST_DATA
/* The fixture's inputs through a whole U-Net with the GPU in the given
 * precision, against the FP32 CPU reference. */
static void unet_precision(const char *name, const char *mode, double tol)
{
    char mpath[600], iopath[600], title[160];
    snprintf(mpath, sizeof mpath, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    snprintf(iopath, sizeof iopath, "%s/fixtures/%s.io.safetensors", DFX_TEST_DATA, name);
    dfx_model *mc = dfx_model_load(mpath, cpu, &err);
    if (!mc) die("dfx_model_load", cpu);
    dfx_model *mg = dfx_model_load(mpath, gpu, &err);
    if (!mg) die("dfx_model_load", gpu);
    dfx_st_file f;
    if (dfx_st_open(&f, iopath, &err)) die("dfx_st_open", cpu);
    size_t nx = 0, nt = 0;
    float *fx = st_tensor(&f, "x", &nx), *ft = st_tensor(&f, "t", &nt);
    if (!fx || !ft || nx != nt * mc->dim) die("fixture tensors", cpu);
    const int B = (int)nt;
    double *t = xmalloc((size_t)B * sizeof(double));
    for (int r = 0; r < B; r++) t[r] = ft[r];
    float *ref = xmalloc(nx * sizeof(float)), *got = xmalloc(nx * sizeof(float));
    const dfx_pred p = mc->cfg.prediction;
    if (dfx_model_eval_host(mc, t, fx, B, p, ref, &err)) die("eval", cpu);
    if (dfx_model_eval_host(mg, t, fx, B, p, got, &err)) die("eval", gpu);
    snprintf(title, sizeof title, "U-Net %s, %s: fixture inputs", name, mode);
    compare(title, got, ref, nx, tol, NULL);
    free(fx);
    free(ft);
    free(t);
    free(ref);
    free(got);
    dfx_st_close(&f);
    dfx_model_free(mc);
    dfx_model_free(mg);
}
#endif

#ifdef DFX_TEST_DATA
/* End to end: the same model, sampler and seed on both backends give the
 * same samples (the noise is the same numbers; the rest is rounding), and
 * samples 3.. drawn as a batch of their own on the GPU equal the same
 * samples of the full batch. */
/* A classifier (difflux eval's feature network) on cuda against the CPU,
 * on random pixels, and its features against the PyTorch fixture. */
static void classifier_parity(const char *file, int n, double tol)
{
    char path[600], title[160];
    snprintf(path, sizeof path, "%s/%s", DFX_TEST_DATA, file);
    dfx_model *mc = dfx_model_load(path, cpu, &err);
    if (!mc) die("dfx_model_load", cpu);
    dfx_model *mg = dfx_model_load(path, gpu, &err);
    if (!mg) die("dfx_model_load", gpu);
    int F = 0, K = 0;
    dfx_classifier_dims(mc, &F, &K);
    const size_t dim = mc->dim;
    float *px = xmalloc((size_t)n * dim * sizeof(float));
    for (size_t i = 0; i < (size_t)n * dim; i++) px[i] = (float)urand();
    float *fc = xmalloc((size_t)n * F * sizeof(float)), *fg = xmalloc((size_t)n * F * sizeof(float));
    float *lc = xmalloc((size_t)n * K * sizeof(float)), *lg = xmalloc((size_t)n * K * sizeof(float));
    if (dfx_classify(mc, px, n, fc, lc, &err)) die("dfx_classify", cpu);
    if (dfx_classify(mg, px, n, fg, lg, &err)) die("dfx_classify", gpu);
    snprintf(title, sizeof title, "classifier %s: features, %d images", file, n);
    compare(title, fg, fc, (size_t)n * F, tol, NULL);
    snprintf(title, sizeof title, "classifier %s: logits", file);
    compare(title, lg, lc, (size_t)n * K, tol, NULL);
    free(px), free(fc), free(fg), free(lc), free(lg);
    dfx_model_free(mc);
    dfx_model_free(mg);
}

static void sample_parity(const char *file, const char *sampler, int steps, int n, double tol)
{
    char path[600], title[160];
    snprintf(path, sizeof path, "%s/%s", DFX_TEST_DATA, file);
    dfx_model *mc = dfx_model_load(path, cpu, &err);
    if (!mc) die("dfx_model_load", cpu);
    dfx_model *mg = dfx_model_load(path, gpu, &err);
    if (!mg) die("dfx_model_load", gpu);
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, mc);
    o.sampler = sampler;
    o.steps = steps;
    o.seed = 1234;
    dfx_sampler *sc = dfx_sampler_create(mc, &o, n, &err);
    if (!sc) die("dfx_sampler_create", cpu);
    dfx_sampler *sg = dfx_sampler_create(mg, &o, n, &err);
    if (!sg) die("dfx_sampler_create", gpu);
    const size_t dim = mc->dim, total = (size_t)n * dim;
    float *ref = xmalloc(total * sizeof(float)), *got = xmalloc(total * sizeof(float));
    dfx_sample_stats st;
    if (dfx_sampler_run(sc, 0, n, ref, &st, &err)) die("dfx_sampler_run", cpu);
    if (dfx_sampler_run(sg, 0, n, got, &st, &err)) die("dfx_sampler_run", gpu);
    snprintf(title, sizeof title, "sample %s, %s %d steps, %d samples", file, sampler, steps, n);
    compare(title, got, ref, total, tol, NULL);
    if (dfx_sampler_run(sg, 3, n - 3, ref, &st, &err)) die("dfx_sampler_run", gpu);
    snprintf(title, sizeof title, "  samples 3..%d as their own batch (cuda)", n - 1);
    compare(title, ref, got + 3 * dim, (size_t)(n - 3) * dim, tol, NULL);
    free(ref);
    free(got);
    dfx_sampler_free(sc);
    dfx_sampler_free(sg);
    dfx_model_free(mc);
    dfx_model_free(mg);
}
#endif

/* ------------------------------------------------------------- graphs */

/* A lincomb through a backend graph: measure, capture, end; the graph, or
 * NULL with the message in *e. */
static dfx_graph *lincomb_graph(float *out, const float *const *xs, const double *coef,
                                const double *c0, int rows, size_t cols, dfx_error *e)
{
    const dfx_backend_ops *o = gpu->ops;
    dfx_graph *g = o->graph_begin(gpu, e);
    if (!g) return NULL;
    o->lincomb(gpu, out, 2, xs, coef, c0, rows, cols);
    if (o->graph_capture(gpu, g, e) == 0) {
        o->lincomb(gpu, out, 2, xs, coef, c0, rows, cols);
        if (o->graph_end(gpu, g, e) == 0) return g;
    }
    o->graph_free(gpu, g);
    return NULL;
}

/* After a failed or abandoned graph: the backend runs ops eagerly as
 * before (no capture left on the stream, no sticky error) and they give
 * `want`, bit for bit. */
static void after_graph(const char *name, const char *why, float *out, const float *const *xs,
                        const double *coef, const double *c0, int rows, size_t cols,
                        const float *want, float *got)
{
    char title[160];
    dfx_error e;
    e.msg[0] = 0;
    gpu->ops->lincomb(gpu, out, 2, xs, coef, c0, rows, cols);
    int rc = gpu->ops->sync(gpu, &e);
    if (rc == 0) rc = gpu->ops->download(gpu, got, out, (size_t)rows * cols * sizeof(float), &e);
    snprintf(title, sizeof title, "graph: %s fails, then eager works", name);
    row(title, rc == 0 ? 0.0 : 1.0, 0.0, rc == 0 ? why : e.msg);
    if (rc == 0) {
        snprintf(title, sizeof title, "  eager lincomb after it, bit for bit");
        compare_bits(title, got, want, (size_t)rows * cols);
    }
}

/* Backend graphs on their own: a lincomb recorded once, launched, refilled
 * with new coefficients (the caller's arrays are consumed when the op
 * returns) and launched again before the first launch is waited for (each
 * launch's result copied out behind it), against the eager lincomb (bit for
 * bit) and the CPU; then captures that fail — staging that differs from the
 * measure pass, a call that synchronises the capturing stream, a wait
 * inside a pass — and passes abandoned, each followed by eager work that
 * must succeed. */
static void test_graphs(void)
{
    const dfx_backend_ops *o = gpu->ops;
    if (!o->graph_begin || !o->copy) {
        row("graph: the cuda backend has graph ops", 1.0, 0.0, "");
        return;
    }
    const int R = 5;
    const size_t C = 1000, n = (size_t)R * C;
    float *hx0 = xmalloc(n * sizeof(float)), *hx1 = xmalloc(n * sizeof(float));
    fill_normal(hx0, n, 1.0f);
    fill_normal(hx1, n, 1.0f);
    double cA[2 * 5], c0A[5], cB[2 * 5], c0B[5], cT[2 * 5], c0T[5];
    for (int i = 0; i < 2 * R; i++) {
        cA[i] = 4.0 * urand() - 2.0;
        cB[i] = 4.0 * urand() - 2.0;
    }
    for (int r = 0; r < R; r++) {
        c0A[r] = urand() - 0.5;
        c0B[r] = urand() - 0.5;
    }
    cB[3] = 0.0; /* a skipped term */
    float *dx0 = up_f(gpu, hx0, n), *dx1 = up_f(gpu, hx1, n), *dout = junk_f(gpu, n),
          *dA = junk_f(gpu, n), *dB = junk_f(gpu, n);
    const float *xs[2] = {dx0, dx1};
    const float *hxs[2] = {hx0, hx1};
    float *refA = xmalloc(n * sizeof(float)), *refB = xmalloc(n * sizeof(float)),
          *eagA = xmalloc(n * sizeof(float)), *eagB = xmalloc(n * sizeof(float)),
          *got = xmalloc(n * sizeof(float));
    cpu->ops->lincomb(cpu, refA, 2, hxs, cA, c0A, R, C);
    cpu->ops->lincomb(cpu, refB, 2, hxs, cB, c0B, R, C);
    o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
    down_f(gpu, eagA, dout, n);
    o->lincomb(gpu, dout, 2, xs, cB, c0B, R, C);
    down_f(gpu, eagB, dout, n);

    dfx_error e;
    e.msg[0] = 0;
    dfx_graph *g = lincomb_graph(dout, xs, cA, c0A, R, C, &e);
    int ok = g != NULL;
    if (ok) ok = o->graph_launch(gpu, g, &e) == 0; /* on the capture pass's data */
    o->copy(gpu, dA, dout, n * sizeof(float));
    if (ok) ok = o->graph_refill(gpu, g, &e) == 0;
    if (ok) {
        memcpy(cT, cB, sizeof cT);
        memcpy(c0T, c0B, sizeof c0T);
        o->lincomb(gpu, dout, 2, xs, cT, c0T, R, C);
        for (int i = 0; i < 2 * R; i++) cT[i] = NAN; /* consumed already */
        for (int r = 0; r < R; r++) c0T[r] = NAN;
        ok = o->graph_launch(gpu, g, &e) == 0;
    }
    o->copy(gpu, dB, dout, n * sizeof(float));
    row("graph: lincomb recorded, launched, refilled, launched", ok ? 0.0 : 1.0, 0.0,
        ok ? "" : e.msg);
    if (ok) {
        down_f(gpu, got, dA, n);
        compare_bits("  first launch (capture's data) = eager lincomb", got, eagA, n);
        compare("  first launch vs cpu", got, refA, n, 1e-6, NULL);
        down_f(gpu, got, dB, n);
        compare_bits("  refilled launch = eager lincomb", got, eagB, n);
        compare("  refilled launch vs cpu", got, refB, n, 1e-6, NULL);
    }
    if (g) o->graph_free(gpu, g);

    /* a capture pass that stages other data than its measure pass */
    e.msg[0] = 0;
    g = o->graph_begin(gpu, &e);
    int failed = 0;
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        if (o->graph_capture(gpu, g, &e) == 0) {
            o->lincomb(gpu, dout, 2, xs, cA, c0A, R - 1, C);
            failed = o->graph_end(gpu, g, &e) != 0 && strstr(e.msg, "differs") != NULL;
        }
        o->graph_free(gpu, g);
    }
    row("graph: capture staging other data than measured fails", failed ? 0.0 : 1.0, 0.0,
        e.msg);
    after_graph("a mismatched capture", "", dout, xs, cA, c0A, R, C, eagA, got);

    /* a call that synchronises the capturing stream (free) invalidates the
     * capture: CUDA's own refusal */
    e.msg[0] = 0;
    float *victim = junk_f(gpu, 16);
    g = o->graph_begin(gpu, &e);
    failed = 0;
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        if (o->graph_capture(gpu, g, &e) == 0) {
            o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
            o->free(gpu, victim); /* cudaStreamSynchronize while capturing */
            failed = o->graph_end(gpu, g, &e) != 0;
        }
        o->graph_free(gpu, g);
    }
    row("graph: a capture invalidated by a stream sync fails", failed ? 0.0 : 1.0, 0.0, e.msg);
    after_graph("an invalidated capture", "", dout, xs, cB, c0B, R, C, eagB, got);

    /* waiting inside a pass */
    e.msg[0] = 0;
    g = o->graph_begin(gpu, &e);
    failed = 0;
    if (g) {
        dfx_error e2;
        failed = o->sync(gpu, &e2) != 0 && o->graph_capture(gpu, g, &e) != 0;
        o->graph_free(gpu, g);
    }
    row("graph: sync inside a pass fails, and fails the graph", failed ? 0.0 : 1.0, 0.0, e.msg);
    after_graph("a sync in a pass", "", dout, xs, cA, c0A, R, C, eagA, got);

    /* passes abandoned: measure, capture, refill */
    g = o->graph_begin(gpu, &e);
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        o->graph_free(gpu, g);
    }
    after_graph("a measure pass abandoned (graph_free)", "", dout, xs, cB, c0B, R, C, eagB, got);
    g = o->graph_begin(gpu, &e);
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        if (o->graph_capture(gpu, g, &e) == 0) o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        o->graph_free(gpu, g);
    }
    after_graph("a capture abandoned (graph_free)", "", dout, xs, cA, c0A, R, C, eagA, got);
    g = lincomb_graph(dout, xs, cA, c0A, R, C, &e);
    const int made = g != NULL;
    if (g) {
        if (o->graph_refill(gpu, g, &e) == 0) o->lincomb(gpu, dout, 2, xs, cB, c0B, R, C);
        o->graph_free(gpu, g);
    }
    after_graph("a refill abandoned (graph_free)", made ? "" : e.msg, dout, xs, cB, c0B, R, C,
                eagB, got);

    free_d(gpu, dx0);
    free_d(gpu, dx1);
    free_d(gpu, dout);
    free_d(gpu, dA);
    free_d(gpu, dB);
    free(hx0);
    free(hx1);
    free(refA);
    free(refB);
    free(eagA);
    free(eagB);
    free(got);
}

#ifdef DFX_TEST_DATA
/* A model loaded with DIFFLUX_CUDA_GRAPHS set to `graphs` ("1": graphs where
 * the backend has them, "0": op by op), the variable restored after. */
static dfx_model *load_graphs(const char *path, dfx_backend *be, const char *graphs)
{
    const char *old = getenv("DIFFLUX_CUDA_GRAPHS");
    char saved[64] = "";
    int had = old != NULL;
    if (had) snprintf(saved, sizeof saved, "%s", old);
    setenv("DIFFLUX_CUDA_GRAPHS", graphs, 1);
    dfx_model *m = dfx_model_load(path, be, &err);
    if (had)
        setenv("DIFFLUX_CUDA_GRAPHS", saved, 1);
    else
        unsetenv("DIFFLUX_CUDA_GRAPHS");
    if (!m) die("dfx_model_load", be);
    return m;
}

/* Evaluations of one phase of test_unet_graphs on the three models, the
 * inputs new for each: worst normalised error against the CPU, values that
 * differ in bits between graph and eager. */
typedef struct graph_phase {
    double worst;
    size_t bits, values;
} graph_phase;

static void graph_eval(dfx_model *mc, dfx_model *mg, dfx_model *me, int rows, int *labels,
                       graph_phase *ph)
{
    const size_t dim = mc->dim, n = (size_t)rows * dim;
    const int K = mc->info.num_classes;
    double *t = xmalloc((size_t)rows * sizeof(double));
    float *x = xmalloc(n * sizeof(float)), *ref = xmalloc(n * sizeof(float)),
          *got = xmalloc(n * sizeof(float)), *eag = xmalloc(n * sizeof(float));
    for (int r = 0; r < rows; r++) {
        t[r] = 0.01 + 0.98 * urand();
        if (labels) labels[r] = (int)(next_u64() % (uint64_t)(K + 1)); /* K: no class */
    }
    fill_normal(x, n, 1.0f);
    const dfx_pred p = mc->cfg.prediction;
    if (dfx_model_eval_host(mc, t, x, rows, p, ref, &err)) die("eval", cpu);
    if (dfx_model_eval_host(mg, t, x, rows, p, got, &err)) die("eval (graphs)", gpu);
    if (dfx_model_eval_host(me, t, x, rows, p, eag, &err)) die("eval (eager)", gpu);
    double e = nerr_f(got, ref, n);
    if (!(e <= ph->worst)) ph->worst = e;
    ph->bits += bits_differ(got, eag, n);
    ph->values += n;
    free(t);
    free(x);
    free(ref);
    free(got);
    free(eag);
}

/* Prints a phase: graph = eager bit for bit, against the CPU within tol,
 * and the graph counts it added (captures, launches) against what
 * predict_graph's policy gives for the phase (a shape evaluated eagerly the
 * first time, captured the second; a larger batch replans, freeing the
 * graphs), with no failed capture. */
static void graph_report(const char *title, dfx_model *mg, const graph_phase *ph, double tol,
                         long *c0, long *l0, long want_c, long want_l)
{
    char name[200], note[400];
    long c, l, f;
    const char *why = "";
    dfx_unet_graph_stats(mg, &c, &l, &f, &why);
    snprintf(name, sizeof name, "%s: graphs = eager", title);
    snprintf(note, sizeof note, "%zu of %zu differ in bits", ph->bits, ph->values);
    row(name, ph->bits ? 1.0 : 0.0, 0.0, note);
    snprintf(name, sizeof name, "  vs cpu (worst evaluation)");
    row(name, ph->worst, tol, "");
    int ok = c - *c0 == want_c && l - *l0 == want_l && f == 0;
    snprintf(note, sizeof note, "%ld captures, %ld launches (want %ld, %ld), %ld failed%s%.250s",
             c - *c0, l - *l0, want_c, want_l, f, f ? ": " : "", why);
    row("  graphs captured and replayed", ok ? 0.0 : 1.0, 0.0, note);
    *c0 = c;
    *l0 = l;
}

/* A U-Net through graphs (the default) against the same file loaded with
 * DIFFLUX_CUDA_GRAPHS=0 (op by op) and against the CPU, every evaluation on
 * new times, inputs and (conditional models) forced labels, which replays
 * refill: batch sizes 3, 3, 3, 5, 5, 5, 3, 3, 5 (5 replans the arena: the
 * graphs of 3 are freed and captured again; then both are kept); for
 * conditional models guidance (both passes and their combination in one
 * graph) with classes cycling from a changing first index and the weight
 * changing between replays; TF32 (another precision: other graphs, none
 * replayed from FP32; the cache evicts); and profiling, which runs eagerly. */
static void test_unet_graphs(const char *name)
{
    char mpath[600], title[160];
    snprintf(mpath, sizeof mpath, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    dfx_model *mc = dfx_model_load(mpath, cpu, &err);
    if (!mc) die("dfx_model_load", cpu);
    dfx_model *mg = load_graphs(mpath, gpu, "1"), *me = load_graphs(mpath, gpu, "0");
    const int K = mc->info.num_classes;
    int labels[8];
    long c0 = 0, l0 = 0;
    graph_phase ph = {0, 0, 0};
    if (K > 0) {
        dfx_unet_force_labels(mc, labels);
        dfx_unet_force_labels(mg, labels);
        dfx_unet_force_labels(me, labels);
    }
    static const int sizes[] = {3, 3, 3, 5, 5, 5, 3, 3, 5};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        graph_eval(mc, mg, me, sizes[i], K > 0 ? labels : NULL, &ph);
    snprintf(title, sizeof title, "U-Net %s graphs: 9 evaluations, 3 and 5 rows%s", name,
             K > 0 ? ", labels" : "");
    /* 3: eager, capture, replay; 5: eager, capture, replay; 3: capture,
     * replay; 5: replay */
    graph_report(title, mg, &ph, NN_TOL, &c0, &l0, 3, 7);
    if (K > 0) {
        dfx_unet_force_labels(mc, NULL);
        dfx_unet_force_labels(mg, NULL);
        dfx_unet_force_labels(me, NULL);
        ph = (graph_phase){0, 0, 0};
        static const int gsizes[] = {5, 5, 5, 5, 3, 3, 3};
        for (size_t i = 0; i < sizeof gsizes / sizeof gsizes[0]; i++) {
            double w = 2.0 + (double)(i % 2);
            if (dfx_model_set_class(mc, DFX_CLASS_CYCLE, w, &err)) die("set_class", cpu);
            if (dfx_model_set_class(mg, DFX_CLASS_CYCLE, w, &err)) die("set_class", gpu);
            if (dfx_model_set_class(me, DFX_CLASS_CYCLE, w, &err)) die("set_class", gpu);
            mc->first_index = mg->first_index = me->first_index = 7 * i + 1;
            graph_eval(mc, mg, me, gsizes[i], NULL, &ph);
        }
        snprintf(title, sizeof title, "U-Net %s graphs: guidance 2 and 3, classes cycling", name);
        /* w P_c + (1 - w) P_u: up to 2w + 1 evaluations' error */
        graph_report(title, mg, &ph, 7 * NN_TOL, &c0, &l0, 2, 5);
        if (dfx_model_set_class(mc, DFX_CLASS_NONE, 1.0, &err)) die("set_class", cpu);
        if (dfx_model_set_class(mg, DFX_CLASS_NONE, 1.0, &err)) die("set_class", gpu);
        if (dfx_model_set_class(me, DFX_CLASS_NONE, 1.0, &err)) die("set_class", gpu);
    }
    /* TF32: the FP32 graph of 3 rows must not be replayed */
    if (dfx_backend_set_precision(gpu, "tf32", &err)) die("set_precision", gpu);
    ph = (graph_phase){0, 0, 0};
    for (int i = 0; i < 3; i++) graph_eval(mc, mg, me, 3, NULL, &ph);
    if (dfx_backend_set_precision(gpu, "fp32", &err)) die("set_precision", gpu);
    snprintf(title, sizeof title, "U-Net %s graphs: tf32, 3 rows", name);
    graph_report(title, mg, &ph, TF32_NET_TOL, &c0, &l0, 1, 2);
    /* back in FP32: the graph of 3 rows is still there (unconditional
     * models: replays), or (conditional: a fifth shape) it was evicted, and
     * the shape forgotten: eager, then captured */
    ph = (graph_phase){0, 0, 0};
    for (int i = 0; i < 2; i++) graph_eval(mc, mg, me, 3, NULL, &ph);
    snprintf(title, sizeof title, "U-Net %s graphs: fp32 again, 3 rows", name);
    graph_report(title, mg, &ph, NN_TOL, &c0, &l0, K > 0 ? 1 : 0, K > 0 ? 1 : 2);
    /* profiling: op by op, timed */
    dfx_model_profile(mg, 1, NULL);
    ph = (graph_phase){0, 0, 0};
    for (int i = 0; i < 2; i++) graph_eval(mc, mg, me, 3, NULL, &ph);
    const dfx_profile_entry *pl = NULL;
    int np = dfx_model_profile(mg, -1, &pl);
    long calls = 0;
    for (int k = 0; k < np && pl; k++) calls += pl[k].calls;
    dfx_model_profile(mg, 0, NULL);
    snprintf(title, sizeof title, "U-Net %s graphs: profiling runs op by op", name);
    graph_report(title, mg, &ph, NN_TOL, &c0, &l0, 0, 0);
    char note[64];
    snprintf(note, sizeof note, "%ld ops timed", calls);
    row("  per-op profile filled", calls > 0 ? 0.0 : 1.0, 0.0, note);
    dfx_model_free(mc);
    dfx_model_free(mg);
    dfx_model_free(me);
}

/* A sampler run with graphs against the same run op by op: bit for bit. */
static void sample_graphs(const char *file, const char *sampler, int steps, int n, int cls,
                          double w)
{
    char path[600], title[160], note[400];
    snprintf(path, sizeof path, "%s/%s", DFX_TEST_DATA, file);
    dfx_model *mg = load_graphs(path, gpu, "1"), *me = load_graphs(path, gpu, "0");
    if (dfx_model_set_class(mg, cls, w, &err)) die("set_class", gpu);
    if (dfx_model_set_class(me, cls, w, &err)) die("set_class", gpu);
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, mg);
    o.sampler = sampler;
    o.steps = steps;
    o.seed = 99;
    dfx_sampler *sg = dfx_sampler_create(mg, &o, n, &err);
    if (!sg) die("dfx_sampler_create", gpu);
    dfx_sampler *se = dfx_sampler_create(me, &o, n, &err);
    if (!se) die("dfx_sampler_create", gpu);
    const size_t total = (size_t)n * mg->dim;
    float *got = xmalloc(total * sizeof(float)), *eag = xmalloc(total * sizeof(float));
    dfx_sample_stats st;
    if (dfx_sampler_run(sg, 0, n, got, &st, &err)) die("dfx_sampler_run (graphs)", gpu);
    long nfe = st.nfe;
    if (dfx_sampler_run(se, 0, n, eag, &st, &err)) die("dfx_sampler_run (eager)", gpu);
    snprintf(title, sizeof title, "sample %s, %s %d steps, %d samples%s: graphs = eager", file,
             sampler, steps, n, w != 1.0 ? ", guided" : "");
    compare_bits(title, got, eag, total);
    long c, l, f;
    const char *why = "";
    dfx_unet_graph_stats(mg, &c, &l, &f, &why);
    /* every evaluation but the first (eager) and the second (captured,
     * then launched) is a replay */
    snprintf(note, sizeof note, "%ld evaluations: %ld captures, %ld launches, %ld failed%s%.250s",
             nfe, c, l, f, f ? ": " : "", why);
    row("  evaluations through graphs", c == 1 && l == nfe - 1 && f == 0 ? 0.0 : 1.0, 0.0, note);
    free(got);
    free(eag);
    dfx_sampler_free(sg);
    dfx_sampler_free(se);
    dfx_model_free(mg);
    dfx_model_free(me);
}
#endif

/* A network op that cannot run (conv2d without its scratch) must surface
 * at the next sync, naming the op. */
static void test_nn_error_path(void)
{
    dfx_backend *be = dfx_backend_cuda_create(&err);
    if (!be) die("create", gpu);
    float *x = dev_alloc(be, 64 * sizeof(float)), *w = dev_alloc(be, 9 * sizeof(float));
    be->ops->conv2d(be, x, x, w, NULL, 1, 1, 8, 8, 1, 3, 1, 1, NULL);
    dfx_error e;
    e.msg[0] = 0;
    int rc = be->ops->sync(be, &e);
    int ok = rc != 0 && strstr(e.msg, "conv2d") != NULL;
    row("error path: conv2d without scratch reported by sync", ok ? 0.0 : 1.0, 0.0,
        rc ? e.msg : "sync returned 0");
    be->ops->free(be, x);
    be->ops->free(be, w);
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

    test_unary(100003, 1.0);
    test_unary(5, 0.0);

    static const conv_case cc[] = {
        /* B Cin  H   W Cout k s p bias */
        {3, 32, 28, 28, 32, 3, 1, 1, 1},  /* resblock conv */
        {3, 32, 28, 28, 32, 3, 2, 1, 1},  /* downsample */
        {3, 64, 7, 7, 64, 3, 1, 1, 1},
        {3, 64, 7, 7, 32, 1, 1, 0, 1},    /* skip: no im2col */
        {3, 32, 28, 28, 96, 1, 1, 0, 1},  /* qkv */
        {2, 1, 28, 28, 32, 3, 1, 1, 1},   /* conv_in */
        {3, 32, 28, 28, 1, 3, 1, 1, 1},   /* out.conv */
        {3, 5, 9, 11, 7, 3, 2, 1, 0},     /* odd sizes, no bias */
        {4, 3, 8, 8, 4, 5, 1, 2, 1},      /* k = 5 */
        {2, 4, 6, 6, 3, 1, 2, 0, 1},      /* 1x1 with stride: im2col */
        {80, 128, 28, 28, 8, 3, 1, 1, 1}, /* scratch in chunks of samples */
    };
    for (size_t i = 0; i < sizeof cc / sizeof cc[0]; i++) test_conv(&cc[i], NN_TOL, NULL);

    test_group_norm(3, 32, 784, 8, 1, 0.0f);
    test_group_norm(3, 64, 49, 8, 0, 0.0f);
    test_group_norm(3, 32, 784, 32, 1, 100.0f); /* one channel per group, large mean */
    test_group_norm(5, 256, 49, 1, 0, 3.0f);    /* one group of 12544 values */
    test_group_norm(2, 6, 5, 3, 1, 0.0f);

    test_linear(3, 32, 128, 0, 1);  /* temb.lin1 */
    test_linear(3, 128, 128, 1, 1); /* temb.lin2 */
    test_linear(17, 128, 64, 1, 1); /* a resblock's temb */
    test_linear(2, 4096, 33, 1, 1);
    test_linear(5, 7, 1, 0, 0);

    test_elementwise(3, 32, 16, 28, 28);
    test_elementwise(2, 3, 5, 5, 4);

    test_attention(3, 32, 196, 1, 2.0f);
    test_attention(3, 32, 196, 4, 2.0f);
    test_attention(3, 64, 49, 4, 2.0f);
    test_attention(2, 16, 144, 2, 1.0f);
    test_attention(2, 8, 1, 2, 1.0f);
    test_attention(110, 8, 784, 2, 1.0f); /* scratch in chunks of samples */

    test_embed(5, 32, 1000.0);
    test_embed(7, 128, 1000.0);
    test_embed(3, 33, 1.0);

    test_group_norm_jvp(3, 32, 784, 8, 1, 0.0f);
    test_group_norm_jvp(3, 64, 49, 8, 0, 0.0f);
    test_group_norm_jvp(3, 32, 784, 32, 1, 100.0f); /* one channel per group, large mean */
    test_group_norm_jvp(5, 256, 49, 1, 0, 3.0f);    /* one group of 12544 values */
    test_group_norm_jvp(2, 6, 5, 3, 1, 0.0f);
    test_silu_jvp(100003);
    test_silu_jvp(5);
    test_attention_jvp(3, 32, 196, 1, 2.0f);
    test_attention_jvp(3, 32, 196, 4, 2.0f);
    test_attention_jvp(3, 64, 49, 4, 2.0f);
    test_attention_jvp(2, 16, 144, 2, 1.0f);
    test_attention_jvp(2, 8, 1, 2, 1.0f);
    test_attention_jvp(110, 8, 784, 2, 1.0f); /* scratch in chunks of samples */

    test_precision();

#ifdef DFX_TEST_DATA
    test_unet("unet_tiny", 9);
    test_unet("unet_cond", 9);
    test_unet_jvp("unet_tiny");
    test_unet_jvp("unet_cond");
    test_unet_jvp("unet_rgb");
    /* sampling amplifies rounding a little over the steps */
    sample_parity("../models/mnist-gmm.safetensors", "heun", 20, 16, 1e-4);
    sample_parity("../models/mnist-gmm.safetensors", "em", 100, 16, 1e-4);
    sample_parity("../models/mnist-dale-gmm.safetensors", "adls", 100, 8, 1e-4);
    sample_parity("fixtures/unet_tiny.safetensors", "dpmpp_2m_sde", 20, 8, 1e-4);
    sample_parity("fixtures/unet_cond.safetensors", "euler", 20, 8, 1e-4);
    classifier_parity("fixtures/classifier_tiny.safetensors", 300, 1e-5); /* two batches */
    classifier_parity("fixtures/classifier_rgb.safetensors", 7, 1e-5);
    classifier_parity("../models/mnist-classifier.safetensors", 64, 1e-5);
#else
    printf("(no DFX_TEST_DATA: whole-network checks skipped)\n");
#endif

    test_nn_error_path();

    test_graphs();
#ifdef DFX_TEST_DATA
    test_unet_graphs("unet_tiny");
    test_unet_graphs("unet_cond");
    sample_graphs("fixtures/unet_tiny.safetensors", "heun", 10, 8, DFX_CLASS_NONE, 1.0);
    sample_graphs("fixtures/unet_cond.safetensors", "heun", 10, 8, DFX_CLASS_CYCLE, 2.0);
#endif

    printf("\n%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    dfx_backend_destroy(gpu);
    dfx_backend_destroy(cpu);
    return failures ? 1 : 0;
#endif
}
