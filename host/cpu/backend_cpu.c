#define _POSIX_C_SOURCE 200809L
/*
 * The CPU backend: the plain-C reference for every backend operation.
 * Threaded with OpenMP over rows (samples), so each row is computed by one
 * thread in a fixed order: results do not depend on the batch size or the
 * thread count.
 */
#include "core/backend.h"
#include "cpu/nn_cpu.h"
#include "cpu/cpu_isa.h"
#include "core/error.h"
#include "core/philox.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Parallelise only when there is enough work to pay for the threads. */
#define DFX_PAR_MIN 32768

static void *cpu_alloc(dfx_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

static void cpu_free(dfx_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_copy(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err)
{
    (void)be;
    (void)err;
    if (bytes && dst != src) memmove(dst, src, bytes);
    return 0;
}

static void cpu_copy_dev(dfx_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static int cpu_sync(dfx_backend *be, dfx_error *err)
{
    (void)be;
    (void)err;
    return 0;
}

static void cpu_lincomb(dfx_backend *be, float *out, int k, const float *const *x,
                        const double *coef, const double *c0, int rows, size_t cols)
{
    int nt = ((size_t)rows * cols >= DFX_PAR_MIN) ? be->threads : 1;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *xs[DFX_LINCOMB_MAX];
        double cs[DFX_LINCOMB_MAX];
        int n = 0;
        for (int i = 0; i < k; i++) {
            double c = coef[(size_t)i * rows + r];
            if (c != 0.0) {
                xs[n] = x[i] + (size_t)r * cols;
                cs[n] = c;
                n++;
            }
        }
        double b = c0 ? c0[r] : 0.0;
        float *o = out + (size_t)r * cols;
        for (size_t j = 0; j < cols; j++) {
            double acc = b;
            for (int i = 0; i < n; i++) acc += cs[i] * (double)xs[i][j];
            o[j] = (float)acc;
        }
    }
}

static void cpu_normal(dfx_backend *be, float *out, uint64_t seed, uint64_t first_index,
                       int rows, size_t cols, uint32_t draw, uint32_t stream)
{
    int nt = ((size_t)rows * cols >= DFX_PAR_MIN / 8) ? be->threads : 1;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int r = 0; r < rows; r++)
        dfx_philox_normal_row(seed, first_index + (uint64_t)r, draw, stream, cols,
                              out + (size_t)r * cols);
}

static void cpu_unary(dfx_backend *be, float *y, const float *x, size_t n, int fn)
{
    int nt = n >= DFX_PAR_MIN ? be->threads : 1;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = (float)(fn == DFX_FN_EXP ? exp((double)x[i]) : log((double)x[i]));
}

static void cpu_mul_add(dfx_backend *be, float *y, const float *a, const float *b, double c,
                        size_t n)
{
    int nt = n >= DFX_PAR_MIN ? be->threads : 1;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = (float)((double)a[i] * (double)b[i] + c);
}

static int cpu_err_norm(dfx_backend *be, const float *e, const float *x0, const float *x1,
                        double rtol, double atol, int rows, size_t cols, double *out,
                        dfx_error *err)
{
    (void)err;
    int nt = ((size_t)rows * cols >= DFX_PAR_MIN) ? be->threads : 1;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int r = 0; r < rows; r++) {
        size_t o = (size_t)r * cols;
        double acc = 0.0;
        for (size_t j = 0; j < cols; j++) {
            double sc = atol + rtol * fmax(fabs((double)x0[o + j]), fabs((double)x1[o + j]));
            double q = (double)e[o + j] / sc;
            acc += q * q;
        }
        out[r] = sqrt(acc / (double)(cols ? cols : 1));
    }
    return 0;
}

static int cpu_count_nonfinite(dfx_backend *be, const float *x, size_t n, size_t *count,
                               dfx_error *err)
{
    (void)be;
    (void)err;
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += !isfinite(x[i]);
    *count = c;
    return 0;
}

/* One row of the Gaussian-mixture denoiser (MATH.md section 6), in double.
 * resp is scratch of K doubles. */
static void gmm_row(float *out, const float *x, const dfx_gmm_dev *g, double a, double s,
                    double m, double *resp)
{
    const size_t d = g->dim;
    const int K = g->K;
    double best = -INFINITY;
    for (int k = 0; k < K; k++) {
        const float *mu = g->means + (size_t)k * d;
        double d2 = 0.0;
        for (size_t j = 0; j < d; j++) {
            double diff = ((double)x[j] - m) - a * (double)mu[j];
            d2 += diff * diff;
        }
        double var = a * a * (double)g->c2[k] + s * s;
        resp[k] = (double)g->logw[k] - 0.5 * (double)d * log(var) - 0.5 * d2 / var;
        if (resp[k] > best) best = resp[k];
    }
    double total = 0.0;
    for (int k = 0; k < K; k++) {
        resp[k] = exp(resp[k] - best);
        total += resp[k];
    }
    /* x_hat = sum_k r_k (mu_k + a c_k^2 (x - a mu_k - m) / var_k)
     *       = cx (x - m) + sum_k r_k (s^2 / var_k) mu_k                       */
    double cx = 0.0;
    double *acc = resp + K; /* d doubles of scratch after the K responsibilities */
    for (size_t j = 0; j < d; j++) acc[j] = 0.0;
    for (int k = 0; k < K; k++) {
        double r = resp[k] / total;
        if (r < 1e-300) continue;
        double var = a * a * (double)g->c2[k] + s * s;
        cx += r * a * (double)g->c2[k] / var;
        double cm = r * s * s / var;
        const float *mu = g->means + (size_t)k * d;
        for (size_t j = 0; j < d; j++) acc[j] += cm * (double)mu[j];
    }
    for (size_t j = 0; j < d; j++) out[j] = (float)(acc[j] + cx * ((double)x[j] - m));
}

static void cpu_gmm_denoise(dfx_backend *be, float *out, const float *x, int rows,
                            const dfx_gmm_dev *g, const double *a, const double *s,
                            const double *m)
{
    int nt = ((size_t)rows * g->dim * (size_t)g->K >= DFX_PAR_MIN) ? be->threads : 1;
    size_t scratch = (size_t)g->K + g->dim;
    (void)nt;
#pragma omp parallel num_threads(nt)
    {
        double *buf = malloc(scratch * sizeof *buf);
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            if (buf) gmm_row(out + (size_t)r * g->dim, x + (size_t)r * g->dim, g, a[r], s[r],
                             m[r], buf);
            else
                for (size_t j = 0; j < g->dim; j++) out[(size_t)r * g->dim + j] = NAN;
        }
        free(buf);
    }
}

/* A 1024^3 SGEMM on all the backend's threads, best of three. */
static double cpu_peak_gflops(dfx_backend *be)
{
    const int n = 1024;
    float *a = malloc(sizeof(float) * n * n * 3);
    if (!a) return 0.0;
    for (long i = 0; i < 3L * n * n; i++) a[i] = (float)(i % 7) * 0.01f;
    openblas_set_num_threads(be->threads);
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = dfx_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, a + n * n, n,
                    0.0f, a + 2L * n * n, n);
        double dt = dfx_seconds() - t0;
        if (dt < best) best = dt;
    }
    openblas_set_num_threads(1);
    free(a);
    return 2.0 * n * n * (double)n / best / 1e9;
}

static void cpu_destroy(dfx_backend *be)
{
    free(be);
}

static const dfx_backend_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .lincomb = cpu_lincomb,
    .normal = cpu_normal,
    .err_norm = cpu_err_norm,
    .count_nonfinite = cpu_count_nonfinite,
    .gmm_denoise = cpu_gmm_denoise,
    .unary = cpu_unary,
    .mul_add = cpu_mul_add,
    .conv2d = dfx_cpu_conv2d,
    .group_norm = dfx_cpu_group_norm,
    .linear = dfx_cpu_linear,
    .add_channel = dfx_cpu_add_channel,
    .add = dfx_cpu_add,
    .concat = dfx_cpu_concat,
    .upsample2x = dfx_cpu_upsample2x,
    .attention = dfx_cpu_attention,
    .time_embed = dfx_cpu_time_embed,
    .embed_add = dfx_cpu_embed_add,
    .group_norm_jvp = dfx_cpu_group_norm_jvp,
    .attention_jvp = dfx_cpu_attention_jvp,
    .silu_jvp = dfx_cpu_silu_jvp,
    .peak_gflops = cpu_peak_gflops,
    .conv_scratch = dfx_cpu_conv_scratch,
    .gn_conv3 = dfx_cpu_gn_conv3,
    .attention_scratch = dfx_cpu_attention_scratch,
    .attention_jvp_scratch = dfx_cpu_attention_jvp_scratch,
    .destroy = cpu_destroy,
    .copy = cpu_copy_dev,
    /* no graphs: graph_begin .. graph_free stay NULL */
};

const char *dfx_cpu_path(void)
{
    return dfx_isa_name(dfx_cpu_isa());
}

const char *dfx_cpu_path_error(void)
{
    return dfx_cpu_isa_error();
}

const char *dfx_blas_core(void)
{
    return openblas_get_corename();
}

/* OpenBLAS picks its kernels from the CPU model at load time; versions that
 * do not know a model (0.3.21, Debian bookworm, and Sapphire/Emerald Rapids)
 * fall back to SSE3 "Prescott" kernels, an order of magnitude slower than
 * the CPU can go. Its OPENBLAS_CORETYPE variable, read at load, overrides
 * the choice: this names the best kernel set the CPU's features allow when
 * OpenBLAS chose a pre-AVX2 one, else NULL. */
const char *dfx_blas_better_core(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static const char *const old[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                      "Atom", "Sandybridge", "Katmai", "Northwood", "Banias"};
    const char *cur = openblas_get_corename();
    int is_old = 0;
    for (size_t i = 0; cur && i < sizeof old / sizeof old[0]; i++)
        if (strcmp(cur, old[i]) == 0) is_old = 1;
    if (!is_old) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

dfx_backend *dfx_backend_cpu_create(int threads, dfx_error *err)
{
    if (dfx_cpu_isa_error()) {
        dfx_fail(err, "%s", dfx_cpu_isa_error());
        return NULL;
    }
    dfx_backend *be = dfx_alloc(1, sizeof *be, "CPU backend", err);
    if (!be) return NULL;
    if (threads <= 0) {
#ifdef _OPENMP
        threads = omp_get_num_procs();
#else
        threads = 1;
#endif
    }
    /* BLAS runs single-threaded inside our own per-sample threads */
    openblas_set_num_threads(1);
    be->ops = &cpu_ops;
    be->name = "cpu";
    /* the processor's name, for benchmark reports */
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0 && strchr(line, ':')) {
            const char *v = strchr(line, ':') + 1;
            while (*v == ' ') v++;
            snprintf(be->device, sizeof be->device,
                     "%.*s, %d threads, %s path, OpenBLAS %s kernels", (int)strcspn(v, "\n"),
                     v, threads, dfx_cpu_path(), dfx_blas_core());
            break;
        }
    if (f) fclose(f);
    be->threads = threads;
    return be;
}
