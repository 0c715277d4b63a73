/*
 * The U-Net's conditioning inputs: the sinusoidal time embedding
 * (time_embed, with a moderate-range sin / cos of its own) and the class
 * embedding lookup (embed_add).
 *
 * CPU reference: host/cpu/nn_cpu.c (dfx_cpu_time_embed, dfx_cpu_embed_add).
 */
#pragma once

#include "common.cuh"
#include "memory.cuh"

/* ------------------------------------------------ time_embed, embed_add */

/* ln(10000), correctly rounded: what glibc's log(10000.0) (or gcc's constant
 * folding of it) gives the CPU. */
#define DFX_LN_10000 0x1.26bb1bbb55516p+3

/* pi / 2 in three parts (the first two exact in double, their sum within
 * 2^-160 of pi / 2), 2 / pi and 1 / pi, correctly rounded. */
#define DFX_PIO2_1 0x1.921fb54442d18p+0
#define DFX_PIO2_2 0x1.1a62633145c07p-54
#define DFX_PIO2_3 -0x1.f1976b7ed8fbcp-110
#define DFX_2_PI 0x1.45f306dc9c883p-1
#define DFX_1_PI 0x1.45f306dc9c883p-2

/* sin and cos of a in double, for |a| < 2^30. The library's sin / cos carry
 * a Payne-Hanek reduction for huge arguments (a 40-byte local stack frame
 * in every kernel that calls them, and a long branch); time embeddings
 * never need it (|a| <= t scale). Here a = k pi/2 + r by Cody-Waite: a - k
 * P1 is exact (a and k P1 are multiples of 2^-52 within 2 of each other,
 * or k = 0), the P2 and P3 terms round once each, so r carries a relative
 * error near 2^-53, as a correctly reduced argument would; sincospi(r / pi)
 * on |r| <= pi/4 needs no reduction of its own; k mod 4 picks the signs. */
static __device__ __forceinline__ void sincos_moderate(double a, double *sn, double *cs)
{
    const double k = rint(a * DFX_2_PI);
    double r = fma(-k, DFX_PIO2_1, a);
    r = fma(-k, DFX_PIO2_2, r);
    r = fma(-k, DFX_PIO2_3, r);
    double s, c;
    sincospi(r * DFX_1_PI, &s, &c);
    switch ((int)((long long)k & 3)) {
    case 0: *sn = s; *cs = c; break;
    case 1: *sn = c; *cs = -s; break;
    case 2: *sn = -s; *cs = -c; break;
    default: *sn = -c; *cs = s; break;
    }
}

/* y[b, i] = sin(u f_i), y[b, half + i] = cos(u f_i) (swapped if flip),
 * u = t[b] scale + offset (rounded twice, no fma: the CPU's expression),
 * f_i = exp(-ln(10000) i / (half - shift)): nn_cpu.c's expression, in
 * double (the sine and cosine through sincos_moderate). */
static __global__ void k_time_embed(float *y, const double *t, int B, int dim, double scale,
                                    double offset, int shift, int flip)
{
    const int half = dim / 2;
    const int total = B * half; /* time_embed_queue: fits an int */
    const size_t s0 = flip ? (size_t)half : 0, c0 = flip ? 0 : (size_t)half;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < total; p += gridDim.x * blockDim.x) {
        const int b = p / half, i = p % half;
        const double u = __dadd_rn(__dmul_rn(t[b], scale), offset);
        const double f = exp(-DFX_LN_10000 * (double)i / (double)(half - shift));
        double sn, cs;
        sincos_moderate(u * f, &sn, &cs);
        y[(size_t)b * dim + s0 + i] = (float)sn;
        y[(size_t)b * dim + c0 + i] = (float)cs;
    }
}

static int time_embed_queue(cu_impl *cu, float *y, const double *t, int B, int dim,
                            double scale, double offset, int shift, int flip, dfx_error *err)
{
    if ((size_t)B * (size_t)(dim / 2) > (size_t)INT_MAX)
        return dfx_fail(err, "cuda time_embed: %d x %d values", B, dim);
    const double *src[1] = {t};
    const size_t n[1] = {(size_t)B};
    const double *dev[1];
    if (stage(cu, 1, src, n, dev, "time_embed", err)) return -1;
    if (cu_dry(cu)) return 0;
    k_time_embed<<<elem_blocks((size_t)B * (dim / 2)), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        y, dev[0], B, dim, scale, offset, shift, flip);
    CU_LAUNCH_TRY("time_embed", err, k_time_embed);
    return 0;
}

/* CPU twin: dfx_cpu_time_embed. t is a host array, consumed before return. */
static void cu_time_embed(dfx_backend *be, float *y, const double *t, int B, int dim,
                          double scale, double offset, int shift, int flip)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || dim < 2) return;
    dfx_error e;
    if (time_embed_queue(cu, y, t, B, dim, scale, offset, shift, flip, &e))
        cu_failed(cu, &e, y, (size_t)B * dim);
}

static __global__ void k_embed_add(float *y, const float *table, const int *idx, int B, int dim)
{
    const size_t total = (size_t)B * dim;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < total;
         p += (size_t)gridDim.x * blockDim.x) {
        const size_t b = p / dim, i = p % dim;
        y[p] += table[(size_t)idx[b] * dim + i];
    }
}

static int embed_add_queue(cu_impl *cu, float *y, const float *table, const int *idx, int B,
                           int dim, dfx_error *err)
{
    for (int b = 0; b < B; b++)
        if (idx[b] < 0)
            return dfx_fail(err, "cuda embed_add: label %d of row %d is negative", idx[b], b);
    const int *didx;
    if (stage_ints(cu, idx, (size_t)B, &didx, "embed_add", err)) return -1;
    if (cu_dry(cu)) return 0;
    k_embed_add<<<elem_blocks((size_t)B * dim), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, table, didx,
                                                                                B, dim);
    CU_LAUNCH_TRY("embed_add", err, k_embed_add);
    return 0;
}

/* CPU twin: dfx_cpu_embed_add. idx is a host array, consumed before return. */
static void cu_embed_add(dfx_backend *be, float *y, const float *table, const int *idx, int B,
                         int dim)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || dim <= 0) return;
    dfx_error e;
    if (embed_add_queue(cu, y, table, idx, B, dim, &e)) cu_failed(cu, &e, y, (size_t)B * dim);
}
