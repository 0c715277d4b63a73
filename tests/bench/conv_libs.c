/*
 * Side-by-side benchmark of 2D convolutions: difflux's own CPU convolution
 * (host/cpu/backend_cpu.c, gemm_cpu.c) against oneDNN's (C API, CPU engine, a
 * forward_inference direct convolution with plain NCHW source and
 * destination). oneDNN is run twice per shape, with the weights in plain
 * OIHW and with the weight format left to oneDNN ("any", the weights
 * reordered once, outside the timed loop); the faster of the two is
 * oneDNN's figure.
 *
 * Shapes: the 3x3 stride-1 pad-1 convolutions of the shipped U-Net at a
 * 28x28 input, plus one 3x3 stride-2 and one 1x1 convolution.
 *
 * Per shape and batch size: GFLOP/s of both (2 B Cout Cin k k Ho Wo flops a
 * call, each timed over >= 0.3 s after a warm-up), the ratio difflux /
 * oneDNN (> 1: difflux faster), the oneDNN implementation, the largest
 * relative difference of the outputs, max |dfx - dnnl| / (max |dnnl| +
 * 1e-6), and whether sample 0 is bit-identical computed alone (batch 1) and
 * inside the batch, for oneDNN and for difflux. Last: the geometric mean of
 * the ratio per batch size.
 *
 *   conv_libs [--batch 1,64] [--threads 2] [--min-time 0.3] [--isa]
 *
 * Instruction sets: difflux follows DIFFLUX_ISA (baseline|avx2|avx512),
 * oneDNN follows ONEDNN_MAX_CPU_ISA (e.g. AVX2, SSE41); both are printed.
 */
#define _POSIX_C_SOURCE 200809L

#include "core/backend.h"

#include <dnnl.h>
#include <dnnl_debug.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int Cin, Cout, H, W, k, stride, pad;
} shape;

static const shape SHAPES[] = {
    {32, 32, 28, 28, 3, 1, 1},  {64, 32, 28, 28, 3, 1, 1},  {32, 64, 14, 14, 3, 1, 1},
    {64, 64, 14, 14, 3, 1, 1},  {128, 64, 14, 14, 3, 1, 1}, {64, 64, 7, 7, 3, 1, 1},
    {128, 64, 7, 7, 3, 1, 1},   {32, 32, 28, 28, 3, 2, 1},  {64, 32, 28, 28, 1, 1, 0},
};
enum { NSHAPES = sizeof SHAPES / sizeof SHAPES[0], MAX_BATCHES = 16 };

static double min_time = 0.3;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float urand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * 0x1.0p-53) * 2.0f - 1.0f;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "conv_libs: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* ------------------------------------------------------------ timing */

typedef void (*run_fn)(void *ctx);

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Seconds per call: a warm-up (>= 2 calls and >= 0.05 s), then calls until
 * >= min_time seconds have passed (and >= 5 calls); the median call, which
 * a preemption by another process now and then does not move (the mean
 * over the same window goes to *mean). */
static double time_calls(run_fn fn, void *ctx, double *mean)
{
    double t0 = now();
    for (int i = 0; i < 2 || now() - t0 < 0.05; i++) fn(ctx);
    size_t n = 0, cap = 1024;
    double *t = xmalloc(cap * sizeof(double));
    double start = now(), prev = start, end;
    do {
        fn(ctx);
        end = now();
        if (n == cap) {
            double *g = realloc(t, (cap *= 2) * sizeof(double));
            if (!g) {
                fprintf(stderr, "conv_libs: out of memory\n");
                exit(1);
            }
            t = g;
        }
        t[n++] = end - prev;
        prev = end;
    } while (end - start < min_time || n < 5);
    qsort(t, n, sizeof(double), cmp_double);
    const double med = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    if (mean) *mean = (end - start) / (double)n;
    free(t);
    return med;
}

/* The share of `threads` cores this process gets now: each of `threads`
 * OpenMP threads spins for 0.2 s of wall time; their CPU time over the wall
 * time. Below 1 when other processes compete (under the kernel's autogroup
 * scheduling a niced job in another session still gets an equal share). */
static double cpu_share(int threads)
{
    double cpu = 0;
#pragma omp parallel num_threads(threads) reduction(+ : cpu)
    {
        struct timespec a, b;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        const double t0 = now();
        while (now() - t0 < 0.2) {
        }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
        cpu += (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    }
    return cpu / (0.2 * threads);
}

/* ------------------------------------------------------------ difflux */

typedef struct {
    dfx_backend *be;
    const shape *s;
    int B;
    float *y;
    const float *x, *w, *bias;
    float *scratch;
} dfx_run;

static void dfx_call(void *p)
{
    dfx_run *r = p;
    const shape *s = r->s;
    r->be->ops->conv2d(r->be, r->y, r->x, r->w, r->bias, r->B, s->Cin, s->H, s->W, s->Cout, s->k,
                       s->stride, s->pad, r->scratch);
}

static float *dfx_scratch(dfx_backend *be, const shape *s, int B)
{
    size_t n = be->ops->conv_scratch(be, B, s->Cin, s->H, s->W, s->k, s->stride, s->pad);
    return xmalloc(n * sizeof(float));
}

/* ------------------------------------------------------------ oneDNN */

static dnnl_engine_t eng;
static dnnl_stream_t strm;

#define DNNL_CHECK(call)                                                                       \
    do {                                                                                       \
        dnnl_status_t st_ = (call);                                                            \
        if (st_ != dnnl_success) {                                                             \
            fprintf(stderr, "conv_libs: %s failed: %s (line %d)\n", #call,                     \
                    dnnl_status2str(st_), __LINE__);                                           \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

typedef struct {
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, bias, dst;
    dnnl_memory_t wei_user; /* the OIHW weights, when reordered into wei */
    char impl[64];
    char wfmt[48]; /* weight format chosen, e.g. "OIhw8i8o" */
} dnnl_conv;

/* A memory descriptor's layout in oneDNN's tag style ("oihw", "OIhw8i8o"). */
static void fmt_name(char *out, size_t len, const dnnl_memory_desc_t *md)
{
    static const char L[] = "oihw";
    if (md->format_kind != dnnl_blocked || md->ndims != 4) {
        snprintf(out, len, "%s", dnnl_fmt_kind2str(md->format_kind));
        return;
    }
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    int order[4] = {0, 1, 2, 3}, blocked[4] = {0};
    for (int i = 0; i < b->inner_nblks; i++) blocked[b->inner_idxs[i]] = 1;
    for (int i = 1; i < 4; i++) /* outer dimensions by stride, largest first */
        for (int j = i; j > 0 && b->strides[order[j]] > b->strides[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    size_t n = 0;
    for (int i = 0; i < 4 && n + 1 < len; i++)
        out[n++] = blocked[order[i]] ? (char)(L[order[i]] - 'a' + 'A') : L[order[i]];
    out[n] = 0;
    for (int i = 0; i < b->inner_nblks && n + 1 < len; i++) {
        int m = snprintf(out + n, len - n, "%d%c", (int)b->inner_blks[i], L[b->inner_idxs[i]]);
        if (m < 0) break;
        n += (size_t)m < len - n ? (size_t)m : len - n - 1;
    }
}

/* A convolution primitive for batch B on user buffers x, w (OIHW), bias,
 * y. any_weights: let oneDNN choose the weight layout and reorder w into
 * it once, here. */
static void dnnl_conv_make(dnnl_conv *c, const shape *s, int B, const float *x, const float *w,
                           const float *bias, float *y, int any_weights)
{
    const int Ho = (s->H + 2 * s->pad - s->k) / s->stride + 1;
    const int Wo = (s->W + 2 * s->pad - s->k) / s->stride + 1;
    dnnl_dims_t sd = {B, s->Cin, s->H, s->W}, wd = {s->Cout, s->Cin, s->k, s->k},
                bd = {s->Cout}, dd = {B, s->Cout, Ho, Wo};
    dnnl_dims_t strides = {s->stride, s->stride}, pl = {s->pad, s->pad};
    /* the high-side padding the output size actually reads */
    dnnl_dims_t pr = {(Ho - 1) * s->stride + s->k - s->H - s->pad,
                      (Wo - 1) * s->stride + s->k - s->W - s->pad};
    dnnl_memory_desc_t smd, wmd, wuser, bmd, dmd;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&smd, 4, sd, dnnl_f32, dnnl_nchw));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&wuser, 4, wd, dnnl_f32, dnnl_oihw));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&wmd, 4, wd, dnnl_f32,
                                            any_weights ? dnnl_format_tag_any : dnnl_oihw));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&bmd, 1, bd, dnnl_f32, dnnl_x));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dmd, 4, dd, dnnl_f32, dnnl_nchw));
    dnnl_convolution_desc_t cd;
    DNNL_CHECK(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                                                  dnnl_convolution_direct, &smd, &wmd, &bmd,
                                                  &dmd, strides, pl, pr));
    DNNL_CHECK(dnnl_primitive_desc_create(&c->pd, &cd, NULL, eng, NULL));
    DNNL_CHECK(dnnl_primitive_create(&c->prim, c->pd));
    const char *impl = NULL;
    DNNL_CHECK(dnnl_primitive_desc_query(c->pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(c->impl, sizeof c->impl, "%s", impl ? impl : "?");

    const dnnl_memory_desc_t *wchosen = dnnl_primitive_desc_query_md(c->pd, dnnl_query_weights_md, 0);
    fmt_name(c->wfmt, sizeof c->wfmt, wchosen);
    DNNL_CHECK(dnnl_memory_create(&c->src, &smd, eng, (void *)x));
    DNNL_CHECK(dnnl_memory_create(&c->bias, &bmd, eng, (void *)bias));
    DNNL_CHECK(dnnl_memory_create(&c->dst, &dmd, eng, y));
    c->wei_user = NULL;
    if (dnnl_memory_desc_equal(wchosen, &wuser)) {
        DNNL_CHECK(dnnl_memory_create(&c->wei, &wuser, eng, (void *)w));
    } else { /* reorder the weights once into the layout oneDNN chose */
        DNNL_CHECK(dnnl_memory_create(&c->wei_user, &wuser, eng, (void *)w));
        DNNL_CHECK(dnnl_memory_create(&c->wei, wchosen, eng, DNNL_MEMORY_ALLOCATE));
        dnnl_primitive_desc_t rpd;
        dnnl_primitive_t rp;
        DNNL_CHECK(dnnl_reorder_primitive_desc_create(&rpd, &wuser, eng, wchosen, eng, NULL));
        DNNL_CHECK(dnnl_primitive_create(&rp, rpd));
        dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, c->wei_user}, {DNNL_ARG_TO, c->wei}};
        DNNL_CHECK(dnnl_primitive_execute(rp, strm, 2, a));
        DNNL_CHECK(dnnl_stream_wait(strm));
        dnnl_primitive_destroy(rp);
        dnnl_primitive_desc_destroy(rpd);
    }
}

static void dnnl_conv_free(dnnl_conv *c)
{
    dnnl_memory_destroy(c->src), dnnl_memory_destroy(c->wei), dnnl_memory_destroy(c->bias);
    dnnl_memory_destroy(c->dst);
    if (c->wei_user) dnnl_memory_destroy(c->wei_user);
    dnnl_primitive_destroy(c->prim);
    dnnl_primitive_desc_destroy(c->pd);
}

static void dnnl_call(void *p)
{
    dnnl_conv *c = p;
    dnnl_exec_arg_t a[4] = {{DNNL_ARG_SRC, c->src},
                            {DNNL_ARG_WEIGHTS, c->wei},
                            {DNNL_ARG_BIAS, c->bias},
                            {DNNL_ARG_DST, c->dst}};
    DNNL_CHECK(dnnl_primitive_execute(c->prim, strm, 4, a));
    DNNL_CHECK(dnnl_stream_wait(strm));
}

/* ------------------------------------------------------------ main */

static void isa_note(void)
{
    const char *di = getenv("DIFFLUX_ISA"), *oi = getenv("ONEDNN_MAX_CPU_ISA");
    const char *oi2 = getenv("DNNL_MAX_CPU_ISA");
    printf("difflux CPU path: %s (DIFFLUX_ISA=%s; baseline|avx2|avx512 forces a lower one)\n",
           dfx_cpu_path(), di ? di : "unset");
    if (dfx_cpu_path_error()) printf("  DIFFLUX_ISA refused: %s\n", dfx_cpu_path_error());
    printf("oneDNN effective ISA: %s (ONEDNN_MAX_CPU_ISA=%s%s%s; e.g. AVX2, AVX, SSE41 caps it)\n",
           dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa()), oi ? oi : "unset",
           oi2 ? ", DNNL_MAX_CPU_ISA=" : "", oi2 ? oi2 : "");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: conv_libs [--batch LIST] [--threads T] [--min-time S] [--isa]\n"
               "  --batch LIST   comma-separated batch sizes (default 1,64)\n"
               "  --threads T    threads for both libraries (default 2)\n"
               "  --min-time S   seconds timed per measurement (default 0.3)\n"
               "  --isa          print the instruction-set paths and exit\n"
               "  env: DIFFLUX_ISA=baseline|avx2|avx512, ONEDNN_MAX_CPU_ISA=AVX2|AVX|SSE41|...\n");
}

int main(int argc, char **argv)
{
    int batches[MAX_BATCHES] = {1, 64}, nb = 2, threads = 2, isa_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
            nb = 0;
            for (char *t = strtok(argv[++i], ","); t; t = strtok(NULL, ",")) {
                int b = atoi(t);
                if (b <= 0 || nb == MAX_BATCHES) {
                    fprintf(stderr, "conv_libs: bad --batch list\n");
                    return 2;
                }
                batches[nb++] = b;
            }
            if (nb == 0) return fprintf(stderr, "conv_libs: empty --batch list\n"), 2;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
            if (threads <= 0) return fprintf(stderr, "conv_libs: bad --threads\n"), 2;
        } else if (strcmp(argv[i], "--min-time") == 0 && i + 1 < argc) {
            min_time = atof(argv[++i]);
            if (!(min_time > 0)) return fprintf(stderr, "conv_libs: bad --min-time\n"), 2;
        } else if (strcmp(argv[i], "--isa") == 0) {
            isa_only = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }

    omp_set_num_threads(threads); /* oneDNN (OpenMP runtime) */
    const dnnl_version_t *v = dnnl_version();
    printf("difflux CPU convolution vs oneDNN %d.%d.%d (CPU engine, %s threading)\n", v->major,
           v->minor, v->patch, dnnl_runtime2str(v->cpu_runtime));
    isa_note();
    if (isa_only) return 0;

    dfx_error err;
    dfx_backend *be = dfx_backend_create("cpu", threads, &err);
    if (!be) return fprintf(stderr, "conv_libs: difflux CPU backend: %s\n", err.msg), 1;
    DNNL_CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    DNNL_CHECK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));

    printf("device: %s\n", be->device[0] ? be->device : "?");
    double load = -1;
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        if (fscanf(lf, "%lf", &load) != 1) load = -1;
        fclose(lf);
    }
    printf("threads %d (difflux backend; omp_set_num_threads for oneDNN); %d cores, load "
           "average %.2f at start\n",
           threads, omp_get_num_procs(), load);
    const char *wp = getenv("OMP_WAIT_POLICY");
    const double share = cpu_share(threads);
    printf("CPU share: %.0f%% of %d threads' time (OMP_WAIT_POLICY=%s)\n", 100 * share, threads,
           wp ? wp : "unset");
    if (share < 0.9 && threads > 1)
        printf("WARNING: other processes take %.0f%% of the cores this run uses; threads that "
               "wait at OpenMP barriers then lose whole scheduler slices and the figures mean "
               "little. Run on an idle machine, or try OMP_WAIT_POLICY=passive or --threads 1.\n",
               100 * (1 - share));
    printf("GFLOP/s = 2 B Cout Cin k k Ho Wo / median time of a call, calls timed over >= %.2f s "
           "after a warm-up\n",
           min_time);
    printf("ratio = difflux / oneDNN GFLOP/s (> 1: difflux faster); mean: the same from the mean "
           "call time\n");
    printf("oneDNN = forward_inference direct conv, src/dst nchw; the faster of weights oihw "
           "and any (reordered once, untimed): best\n");
    printf("any-w = the weight layout oneDNN chose for any; impl = dnnl_query_impl_info_str of "
           "best\n");
    printf("maxrel = max|dfx - dnnl| / (max|dnnl| + 1e-6); s0 dnnl / s0 dfx: sample 0 alone "
           "(B=1) bit-identical to sample 0 in the batch\n\n");
    printf("%-20s %3s %8s %8s %6s %6s %5s %8s %8s %-9s %-14s %8s %4s %4s\n",
           "Cin->Cout HxW k/s/p", "B", "difflux", "oneDNN", "ratio", "mean", "best", "oihw",
           "any", "any-w", "impl", "maxrel", "s0", "s0");
    printf("%-20s %3s %8s %8s %6s %6s %5s %8s %8s %-9s %-14s %8s %4s %4s\n", "", "", "GFLOP/s",
           "GFLOP/s", "", "ratio", "", "GFLOP/s", "GFLOP/s", "", "", "", "dnnl", "dfx");

    double logsum[MAX_BATCHES] = {0}, logmean[MAX_BATCHES] = {0};
    int nlog[MAX_BATCHES] = {0};
    double worst_rel = 0;
    for (int bi = 0; bi < nb; bi++) {
        const int B = batches[bi];
        for (int si = 0; si < NSHAPES; si++) {
            const shape *s = &SHAPES[si];
            const int Ho = (s->H + 2 * s->pad - s->k) / s->stride + 1;
            const int Wo = (s->W + 2 * s->pad - s->k) / s->stride + 1;
            const size_t nx = (size_t)s->Cin * s->H * s->W, ny = (size_t)s->Cout * Ho * Wo;
            const size_t nw = (size_t)s->Cout * s->Cin * s->k * s->k;
            float *x = xmalloc(B * nx * sizeof(float)), *w = xmalloc(nw * sizeof(float));
            float *bias = xmalloc((size_t)s->Cout * sizeof(float));
            float *ydx = xmalloc(B * ny * sizeof(float)), *ydn[2], *one = xmalloc(ny * sizeof(float));
            ydn[0] = xmalloc(B * ny * sizeof(float)), ydn[1] = xmalloc(B * ny * sizeof(float));
            for (size_t i = 0; i < B * nx; i++) x[i] = urand();
            const float ws = 1.0f / sqrtf((float)(s->Cin * s->k * s->k));
            for (size_t i = 0; i < nw; i++) w[i] = ws * urand();
            for (int i = 0; i < s->Cout; i++) bias[i] = 0.1f * urand();
            const double flops = 2.0 * B * s->Cout * s->Cin * s->k * s->k * Ho * Wo;

            /* difflux */
            dfx_run dr = {be, s, B, ydx, x, w, bias, dfx_scratch(be, s, B)};
            double mdx, mdn[2];
            const double tdx = time_calls(dfx_call, &dr, &mdx);
            dfx_run d1 = {be, s, 1, one, x, w, bias, dfx_scratch(be, s, 1)};
            dfx_call(&d1);
            const int s0dx = memcmp(one, ydx, ny * sizeof(float)) == 0;
            free(dr.scratch), free(d1.scratch);

            /* oneDNN, plain OIHW weights and weights in its own layout */
            dnnl_conv c[2];
            double tdn[2];
            for (int a = 0; a < 2; a++) {
                dnnl_conv_make(&c[a], s, B, x, w, bias, ydn[a], a);
                tdn[a] = time_calls(dnnl_call, &c[a], &mdn[a]);
            }
            const int best = tdn[1] < tdn[0];
            dnnl_conv c1;
            dnnl_conv_make(&c1, s, 1, x, w, bias, one, best);
            dnnl_call(&c1);
            const int s0dn = memcmp(one, ydn[best], ny * sizeof(float)) == 0;
            dnnl_conv_free(&c1);

            double dmax = 0, bmax = 0;
            for (size_t i = 0; i < B * ny; i++) {
                dmax = fmax(dmax, fabs((double)ydx[i] - ydn[best][i]));
                bmax = fmax(bmax, fabs((double)ydn[best][i]));
            }
            const double rel = dmax / (bmax + 1e-6);
            worst_rel = fmax(worst_rel, rel);

            const double gdx = flops / tdx * 1e-9, gdn = flops / tdn[best] * 1e-9;
            const double ratio = gdx / gdn, mratio = fmin(mdn[0], mdn[1]) / mdx;
            logsum[bi] += log(ratio), logmean[bi] += log(mratio), nlog[bi]++;
            char name[40];
            snprintf(name, sizeof name, "%d->%d %dx%d %d/%d/%d", s->Cin, s->Cout, s->H, s->W,
                     s->k, s->stride, s->pad);
            printf("%-20s %3d %8.2f %8.2f %6.3f %6.3f %5s %8.2f %8.2f %-9s %-14s %8.1e %4s %4s\n",
                   name, B, gdx, gdn, ratio, mratio, best ? "any" : "oihw", flops / tdn[0] * 1e-9,
                   flops / tdn[1] * 1e-9, c[1].wfmt, c[best].impl, rel, s0dn ? "yes" : "no",
                   s0dx ? "yes" : "no");
            fflush(stdout);
            dnnl_conv_free(&c[0]), dnnl_conv_free(&c[1]);
            free(x), free(w), free(bias), free(ydx), free(ydn[0]), free(ydn[1]), free(one);
        }
    }
    printf("\ngeometric mean of ratio (difflux / oneDNN):");
    for (int bi = 0; bi < nb; bi++)
        printf("%s B=%d %.3f", bi ? "," : "", batches[bi], exp(logsum[bi] / nlog[bi]));
    printf("  (from mean times:");
    for (int bi = 0; bi < nb; bi++)
        printf("%s B=%d %.3f", bi ? "," : "", batches[bi], exp(logmean[bi] / nlog[bi]));
    printf("; largest maxrel %.1e)\n", worst_rel);
    dnnl_stream_destroy(strm);
    dnnl_engine_destroy(eng);
    dfx_backend_destroy(be);
    return 0;
}
