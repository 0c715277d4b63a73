/* The CPU convolution (gemm_cpu.c, nn_cpu.c) against a direct summation in
 * double precision, over shapes that exercise every path: 3x3 stride 1
 * read from padded planes, 1x1 on the input, other kernels and strides
 * through im2col; output channels that do not fill a tile (8 rows on
 * AVX-512, 4 on AVX2 and the baseline), columns that do not fill one (32,
 * 24, 8), planes narrower than a tile; with and without bias; 1 and 2
 * threads; one sample and a batch. A sample's values must be bit-identical
 * alone, in a batch and with either thread count, and GroupNorm fused into
 * the convolution must give exactly the two ops. ctest runs this on every
 * instruction-set path the CPU has (DIFFLUX_ISA, tests/isa.sh). */
#include "core/backend.h"
#include "check.h"
#include "cpu/cpu_isa.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int Cin, H, W, Cout, k, stride, pad;
} shape;

static const shape SHAPES[] = {
    {3, 5, 7, 5, 3, 1, 1},    /* tiny: rows and columns left over */
    {8, 28, 28, 16, 3, 1, 1}, /* full tiles, 840 padded columns */
    {32, 14, 14, 13, 3, 1, 1}, {24, 7, 7, 1, 3, 1, 1}, /* one output channel */
    {9, 6, 33, 7, 3, 1, 1},    /* a row of padded columns wider than every tile */
    {20, 9, 11, 24, 1, 1, 0},  /* 1x1, read in place */
    {300, 6, 6, 9, 1, 1, 0},   /* 1x1 with K large: columns copied first */
    {16, 14, 14, 16, 3, 2, 1}, /* strided, im2col */
    {4, 9, 9, 8, 5, 1, 2},     /* 5x5 "same", im2col */
};

static test_rng rng = {88172645463325252ull};
static float urand(void) /* [-1, 1) */
{
    return (float)rng_uniform(&rng) * 2.0f - 1.0f;
}

static int out_dim(int n, const shape *s)
{
    return (n + 2 * s->pad - s->k) / s->stride + 1;
}

static void conv(dfx_backend *be, const shape *s, int B, const float *x, const float *w,
                 const float *b, float *y)
{
    size_t ns = be->ops->conv_scratch(be, B, s->Cin, s->H, s->W, s->k, s->stride, s->pad);
    float *scr = malloc((ns ? ns : 1) * sizeof(float));
    be->ops->conv2d(be, y, x, w, b, B, s->Cin, s->H, s->W, s->Cout, s->k, s->stride, s->pad, scr);
    free(scr);
}

int main(void)
{
    dfx_error err;
    dfx_backend *be1 = dfx_backend_create("cpu", 1, &err), *be2 = dfx_backend_create("cpu", 2, &err);
    if (!be1 || !be2) return fprintf(stderr, "%s\n", err.msg), 1;
    /* the path asked for is the path that runs */
    const char *want = getenv("DIFFLUX_ISA");
    printf("CPU path %s (DIFFLUX_ISA %s)\n", dfx_cpu_path(), want ? want : "unset");
    if (want && *want && strcmp(want, "auto") != 0)
        CHECK(strcmp(want, dfx_cpu_path()) == 0, "DIFFLUX_ISA=%s ran the %s path", want,
              dfx_cpu_path());
    enum { B = 3 };
    for (size_t si = 0; si < sizeof SHAPES / sizeof *SHAPES; si++) {
        const shape *s = &SHAPES[si];
        const int Ho = out_dim(s->H, s), Wo = out_dim(s->W, s), K = s->Cin * s->k * s->k;
        const size_t nx = (size_t)s->Cin * s->H * s->W, ny = (size_t)s->Cout * Ho * Wo;
        float *x = malloc(B * nx * sizeof(float)), *w = malloc((size_t)s->Cout * K * sizeof(float));
        float *bias = malloc((size_t)s->Cout * sizeof(float));
        for (size_t i = 0; i < B * nx; i++) x[i] = urand();
        for (size_t i = 0; i < (size_t)s->Cout * K; i++) w[i] = urand() / sqrtf((float)K);
        for (int i = 0; i < s->Cout; i++) bias[i] = 0.5f * urand();
        float *y[4], *one = malloc(ny * sizeof(float));
        for (int v = 0; v < 4; v++) y[v] = malloc(B * ny * sizeof(float));
        conv(be1, s, B, x, w, bias, y[0]);
        conv(be2, s, B, x, w, bias, y[1]);
        conv(be2, s, B, x, w, NULL, y[2]);
        conv(be2, s, 1, x + 2 * nx, w, bias, one); /* the last sample alone, 2 threads */
        double worst = 0, worst_nb = 0;
        int same = 1;
        for (int bi = 0; bi < B; bi++)
            for (int o = 0; o < s->Cout; o++)
                for (int oy = 0; oy < Ho; oy++)
                    for (int ox = 0; ox < Wo; ox++) {
                        double acc = 0, mag = 0;
                        for (int c = 0; c < s->Cin; c++)
                            for (int ky = 0; ky < s->k; ky++)
                                for (int kx = 0; kx < s->k; kx++) {
                                    int iy = oy * s->stride - s->pad + ky,
                                        ix = ox * s->stride - s->pad + kx;
                                    if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) continue;
                                    double p = (double)w[((size_t)o * s->Cin + c) * s->k * s->k +
                                                         ky * s->k + kx] *
                                               x[bi * nx + ((size_t)c * s->H + iy) * s->W + ix];
                                    acc += p;
                                    mag += fabs(p);
                                }
                        size_t i = bi * ny + ((size_t)o * Ho + oy) * Wo + ox;
                        double tol = 1e-6 * (mag + 1.0);
                        worst = fmax(worst, fabs(y[0][i] - (acc + bias[o])) / tol);
                        worst_nb = fmax(worst_nb, fabs(y[2][i] - acc) / tol);
                        same &= y[0][i] == y[1][i];
                    }
        same &= memcmp(one, y[1] + 2 * ny, ny * sizeof(float)) == 0;
        printf("conv %3d x %2dx%-2d -> %2d k=%d s=%d p=%d: error %.3f, %.3f (no bias) of the "
               "tolerance; 1 vs 2 threads, alone vs in a batch: %s\n",
               s->Cin, s->H, s->W, s->Cout, s->k, s->stride, s->pad, worst, worst_nb,
               same ? "identical" : "DIFFERENT");
        CHECK(worst <= 1.0 && worst_nb <= 1.0, "shape %zu: off the direct sum (%.2f, %.2f)", si,
              worst, worst_nb);
        CHECK(same, "shape %zu: values depend on the thread count or the batch", si);
        free(x), free(w), free(bias), free(one);
        for (int v = 0; v < 4; v++) free(y[v]);
    }
    /* GroupNorm(+SiLU) and a 3x3 convolution as one op: exactly the two ops */
    for (int act = 0; act < 2; act++) {
        enum { GB = 4, GC = 12, GH = 9, GW = 13, GO = 11, GG = 3 };
        const size_t nx = (size_t)GB * GC * GH * GW, ny = (size_t)GB * GO * GH * GW;
        float *x = malloc(nx * sizeof(float)), *t = malloc(nx * sizeof(float));
        float *w = malloc((size_t)GO * GC * 9 * sizeof(float)), *bias = malloc(GO * sizeof(float));
        float gamma[GC], beta[GC], *y1 = malloc(ny * sizeof(float)), *y2 = malloc(ny * sizeof(float));
        for (size_t i = 0; i < nx; i++) x[i] = 3.0f * urand() + 1.0f;
        for (int i = 0; i < GO * GC * 9; i++) w[i] = urand() / 6.0f;
        for (int i = 0; i < GO; i++) bias[i] = urand();
        for (int i = 0; i < GC; i++) gamma[i] = 1.0f + 0.5f * urand(), beta[i] = 0.3f * urand();
        size_t ns = be2->ops->conv_scratch(be2, GB, GC, GH, GW, 3, 1, 1);
        float *scr = malloc(ns * sizeof(float));
        be2->ops->group_norm(be2, t, x, gamma, beta, GB, GC, GH * GW, GG, 1e-5f, act);
        be2->ops->conv2d(be2, y1, t, w, bias, GB, GC, GH, GW, GO, 3, 1, 1, scr);
        be2->ops->gn_conv3(be2, y2, x, gamma, beta, GG, 1e-5f, act, w, bias, GB, GC, GH, GW, GO,
                           scr);
        int same = memcmp(y1, y2, ny * sizeof(float)) == 0;
        printf("group_norm%s + conv2d as one op: %s\n", act ? "+silu" : "",
               same ? "identical" : "DIFFERENT");
        CHECK(same, "gn_conv3 (silu %d) differs from group_norm then conv2d", act);
        free(x), free(t), free(w), free(bias), free(y1), free(y2), free(scr);
    }
    /* GroupNorm statistics against two passes in long double, on values
     * whose mean is a million times their spread: E[x^2] - mean^2 in
     * double would be off by about 1e-3 here */
    {
        enum { GN = 3000 };
        float *x = malloc(GN * sizeof(float));
        for (int i = 0; i < GN; i++) x[i] = 3.0e6f + 2.0f * urand();
        long double m = 0, v = 0;
        for (int i = 0; i < GN; i++) m += x[i];
        m /= GN;
        for (int i = 0; i < GN; i++) v += (x[i] - m) * (x[i] - m);
        v /= GN;
        const double inv_ref = (double)(1.0L / sqrtl(v + 1e-5L));
        double mean, inv;
        dfx_cpu_kernels_get()->gn_stats(x, GN, 1e-5f, &mean, &inv);
        const double em = fabs(mean - (double)m) / (double)m, ei = fabs(inv / inv_ref - 1.0);
        printf("group_norm statistics, mean 3e6 spread 1.2: relative error %.1e (mean), "
               "%.1e (1/sd)\n", em, ei);
        CHECK(em < 1e-13 && ei < 1e-10, "GroupNorm statistics lose digits: %.1e, %.1e", em, ei);
        free(x);
    }
    /* a NaN activation gives NaN in its group (through SiLU's exp), and
     * leaves the other groups alone: no undefined conversion on the way */
    {
        enum { NC = 4, NHW = 37 };
        float x[NC * NHW], y[NC * NHW], gamma[NC], beta[NC];
        for (int i = 0; i < NC * NHW; i++) x[i] = urand();
        for (int i = 0; i < NC; i++) gamma[i] = 1.0f, beta[i] = 0.0f;
        x[5] = NAN;
        be2->ops->group_norm(be2, y, x, gamma, beta, 1, NC, NHW, 2, 1e-5f, 1);
        int nan_first = 1, finite_rest = 1;
        for (int i = 0; i < NC * NHW; i++) {
            if (i < NC / 2 * NHW) nan_first &= isnan(y[i]);
            else finite_rest &= isfinite(y[i]);
        }
        printf("group_norm+silu with a NaN input: %s\n",
               nan_first && finite_rest ? "NaN in its group only" : "WRONG");
        CHECK(nan_first && finite_rest, "a NaN input: NaN group %d, finite rest %d", nan_first,
              finite_rest);
    }
    dfx_backend_destroy(be1);
    dfx_backend_destroy(be2);
    return check_report("test_conv");
}
