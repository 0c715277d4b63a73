/*
 * The Gaussian-mixture denoiser (gmm_denoise): the exact denoiser of a
 * mixture model, in three kernels (logits, softmax, output).
 *
 * CPU reference: host/cpu/backend_cpu.c (cpu_gmm_denoise, gmm_row).
 */
#pragma once

#include "common.cuh"
#include "memory.cuh"

/* ---------------------------------------------------------- gmm_denoise */

/* Mixture denoiser (MATH.md section 6), in three kernels:
 *   1. k_gmm_logits:  one warp per (row, component) pair,
 *        L[r,k] = logw_k - dim/2 log var_k - ||x - m - a mu_k||^2 / (2 var_k),
 *        var_k = a^2 c2_k + s^2;
 *   2. k_gmm_softmax: one block per row, responsibilities r_k = softmax(L),
 *        overwritten in place by cm[r,k] = r_k s^2 / var_k (0 where
 *        r_k < 1e-300, as the CPU skips those), and cx[r] = sum r_k a c2_k / var_k;
 *   3. k_gmm_out:     out[r,j] = sum_k cm[r,k] mu_k[j] + cx[r] (x[r,j] - m).
 * All in double. x is only read by kernels 1 and 3 (in 3 by the thread that
 * writes the same element), so out may alias x as on the CPU. */
static __global__ void k_gmm_logits(const float *x, int rows, const float *means, const float *c2,
                             const float *logw, int K, size_t dim, const double *a,
                             const double *s, const double *m, double *L)
{
    const int lane = threadIdx.x & 31;
    const size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    const size_t pairs = (size_t)rows * (size_t)K;
    for (size_t p = warp; p < pairs; p += nwarps) { /* warp-uniform loop */
        const int r = (int)(p / (size_t)K), k = (int)(p % (size_t)K);
        const float *xr = x + (size_t)r * dim, *mu = means + (size_t)k * dim;
        const double ar = a[r], mr = m[r], sr = s[r];
        double d2 = 0.0;
        for (size_t j = lane; j < dim; j += 32) {
            double diff = ((double)xr[j] - mr) - ar * (double)mu[j];
            d2 += diff * diff;
        }
        d2 = warp_reduce<op_sum>(d2);
        if (lane == 0) {
            double var = ar * ar * (double)c2[k] + sr * sr;
            L[p] = (double)logw[k] - 0.5 * (double)dim * log(var) - 0.5 * d2 / var;
        }
    }
}

static __global__ void k_gmm_softmax(int rows, const float *c2, int K, const double *a,
                              const double *s, double *L, double *cx)
{
    __shared__ double sh[DFX_CUDA_BLOCK / 32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        double *l = L + (size_t)r * K;
        const double ar = a[r], sr = s[r];
        double best = -INFINITY;
        for (int k = threadIdx.x; k < K; k += blockDim.x) best = fmax(best, l[k]);
        best = block_reduce<op_max>(best, sh);
        double total = 0.0;
        for (int k = threadIdx.x; k < K; k += blockDim.x) total += exp(l[k] - best);
        total = block_reduce<op_sum>(total, sh); /* its barriers end all reads of l above */
        double cxp = 0.0;
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            double rk = exp(l[k] - best) / total;
            double cm = 0.0;
            if (!(rk < 1e-300)) {
                double var = ar * ar * (double)c2[k] + sr * sr;
                cxp += rk * ar * (double)c2[k] / var;
                cm = rk * sr * sr / var;
            }
            l[k] = cm; /* same thread read l[k] just above */
        }
        cxp = block_reduce<op_sum>(cxp, sh);
        if (threadIdx.x == 0) cx[r] = cxp;
    }
}

static __global__ void k_gmm_out(float *out, const float *x, int rows, const float *means, int K,
                          size_t dim, const double *m, const double *cm, const double *cx)
{
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const double *c = cm + (size_t)r * K;
        const double mr = m[r], cxr = cx[r];
        for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < dim;
             j += (size_t)gridDim.x * blockDim.x) {
            double acc = 0.0;
            for (int k = 0; k < K; k++)
                if (c[k] != 0.0) acc += c[k] * (double)means[(size_t)k * dim + j];
            const size_t o = (size_t)r * dim + j;
            out[o] = (float)(acc + cxr * ((double)x[o] - mr));
        }
    }
}

static int gmm_queue(cu_impl *cu, float *out, const float *x, int rows, const dfx_gmm_dev *g,
                     const double *a, const double *s, const double *m, dfx_error *err)
{
    const size_t R = (size_t)rows, K = (size_t)g->K;
    const double *src[3] = {a, s, m};
    const size_t n[3] = {R, R, R};
    const double *dev[3];
    if (stage(cu, 3, src, n, dev, "gmm_denoise", err)) return -1;
    if (cu_dry(cu)) return 0;
    if (work_reserve(cu, (R * K + R) * sizeof(double), "gmm_denoise", err)) return -1;
    double *L = (double *)cu->work, *cx = L + R * K;

    k_gmm_logits<<<blocks_for(R * K, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        x, rows, g->means, g->c2, g->logw, g->K, g->dim, dev[0], dev[1], dev[2], L);
    CU_LAUNCH_TRY("gmm_denoise", err, k_gmm_logits);
    k_gmm_softmax<<<blocks_for(R, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(rows, g->c2, g->K,
                                                                        dev[0], dev[1], L, cx);
    CU_LAUNCH_TRY("gmm_denoise", err, k_gmm_softmax);
    k_gmm_out<<<rows_grid(rows, g->dim), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        out, x, rows, g->means, g->K, g->dim, dev[2], L, cx);
    CU_LAUNCH_TRY("gmm_denoise", err, k_gmm_out);
    return 0;
}

/* CPU twin: cpu_gmm_denoise (gmm_row). */
static void cu_gmm_denoise(dfx_backend *be, float *out, const float *x, int rows,
                           const dfx_gmm_dev *g, const double *a, const double *s,
                           const double *m)
{
    cu_impl *cu = impl_of(be);
    if (rows <= 0 || g->dim == 0) return;
    dfx_error e;
    int rc = g->K > 0 ? gmm_queue(cu, out, x, rows, g, a, s, m, &e)
                      : dfx_fail(&e, "cuda gmm_denoise: mixture has no components");
    if (rc) {
        cu_failed(cu, &e, out, (size_t)rows * g->dim);
    }
}
