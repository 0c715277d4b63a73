/*
 * GroupNorm (with an optional SiLU after it) and its tangent
 * (group_norm_jvp), one block per (sample, group), statistics in double.
 *
 * CPU reference: host/cpu/nn_cpu.c (dfx_cpu_group_norm,
 * dfx_cpu_group_norm_jvp; the statistics are gn_stats in
 * host/cpu/cpu_kernels.c).
 */
#pragma once

#include "common.cuh"

/* ----------------------------------------------------------- group_norm */

/* The mean of a GroupNorm group and 1 / sqrt(var + eps), by the whole
 * block, in two passes over the group in double: the mean first, then the
 * sum of squared deviations from it, var = sum (x - mean)^2 / n (biased).
 * No E[x^2] - mean^2, which cancels when the mean is large against the
 * spread. The CPU (host/cpu/cpu_kernels.c) computes the same two
 * sums in double, in another order of summation: the statistics agree to
 * double rounding, not to the bit. The forward and its tangent share this. */
static __device__ void gn_block_stats(const float *xs, size_t n, float eps, double *sh,
                                      double *mean, double *inv)
{
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += xs[i];
    const double m = block_reduce<op_sum>(s, sh) / (double)n;
    double s2 = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = xs[i] - m;
        s2 += d * d;
    }
    s2 = block_reduce<op_sum>(s2, sh);
    *mean = m;
    *inv = 1.0 / sqrt(s2 / (double)n + (double)eps);
}

/* One block per (sample, group): the statistics (gn_block_stats: mean,
 * then the biased variance about it, two passes in double), then
 * y = x sc + sh per channel with sc, sh rounded to float exactly as the CPU
 * rounds them (no FMA anywhere). */
static __global__ void k_group_norm(float *y, const float *x, const float *gamma,
                                    const float *beta, int B, int C, int HW, int groups,
                                    float eps, int act)
{
    __shared__ double sh[DFX_CUDA_BLOCK / 32];
    const int cg = C / groups;
    const size_t n = (size_t)cg * HW;
    const size_t BG = (size_t)B * groups;
    for (size_t bg = blockIdx.x; bg < BG; bg += gridDim.x) {
        const size_t b = bg / groups, g = bg % groups;
        const size_t off = (b * C + g * cg) * HW;
        const float *xs = x + off;
        float *ys = y + off;
        double mean, inv;
        gn_block_stats(xs, n, eps, sh, &mean, &inv);
        const double mi = __dmul_rn(mean, inv);
        for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
            const size_t ch = g * cg + i / (size_t)HW;
            const double gm = (double)gamma[ch];
            const float sc = (float)__dmul_rn(inv, gm);
            const float sf = (float)__dsub_rn((double)beta[ch], __dmul_rn(mi, gm));
            const float v = __fadd_rn(__fmul_rn(xs[i], sc), sf);
            ys[i] = act ? silu_f(v) : v;
        }
    }
}

static int group_norm_queue(cu_impl *cu, float *y, const float *x, const float *gamma,
                            const float *beta, int B, int C, int HW, int groups, float eps,
                            int act, dfx_error *err)
{
    if (groups < 1 || C < 1 || C % groups)
        return dfx_fail(err, "cuda group_norm: %d groups do not divide %d channels", groups, C);
    if (HW < 1) return 0;
    k_group_norm<<<blocks_for((size_t)B * groups, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        y, x, gamma, beta, B, C, HW, groups, eps, act);
    CU_LAUNCH_TRY("group_norm", err, k_group_norm);
    return 0;
}

/* CPU twin: dfx_cpu_group_norm. */
static void cu_group_norm(dfx_backend *be, float *y, const float *x, const float *gamma,
                          const float *beta, int B, int C, int HW, int groups, float eps,
                          int silu)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || cu_dry(cu)) return;
    dfx_error e;
    if (group_norm_queue(cu, y, x, gamma, beta, B, C, HW, groups, eps, silu, &e))
        cu_failed(cu, &e, y, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
}

/* One block per (sample, group), like k_group_norm: the same statistics,
 * then mean(dx) and mean(xh dx) (block sums in double), then
 * dy = gamma inv (dx - mean(dx) - xh mean(xh dx)) per value, times SiLU' at
 * the forward's v (recomputed with the forward's roundings) if act. */
static __global__ void k_group_norm_jvp(float *dy, const float *x, const float *dx,
                                        const float *gamma, const float *beta, int B, int C,
                                        int HW, int groups, float eps, int act)
{
    __shared__ double sh[DFX_CUDA_BLOCK / 32];
    const int cg = C / groups;
    const size_t n = (size_t)cg * HW;
    const size_t BG = (size_t)B * groups;
    for (size_t bg = blockIdx.x; bg < BG; bg += gridDim.x) {
        const size_t b = bg / groups, g = bg % groups;
        const size_t off = (b * C + g * cg) * HW;
        const float *xs = x + off, *ds = dx + off;
        float *ys = dy + off;
        double mean, inv;
        gn_block_stats(xs, n, eps, sh, &mean, &inv);
        double sd = 0.0, sxd = 0.0;
        for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
            sd += ds[i];
            sxd += (xs[i] - mean) * (double)ds[i];
        }
        const double dmean = block_reduce<op_sum>(sd, sh) / (double)n;
        const double cxd = block_reduce<op_sum>(sxd, sh) * inv / (double)n;
        const double mi = __dmul_rn(mean, inv);
        for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
            const size_t ch = g * cg + i / (size_t)HW;
            const double gm = (double)gamma[ch];
            const double xh = (xs[i] - mean) * inv;
            double dv = gm * inv * ((double)ds[i] - dmean - xh * cxd);
            if (act) {
                const float sc = (float)__dmul_rn(inv, gm);
                const float sf = (float)__dsub_rn((double)beta[ch], __dmul_rn(mi, gm));
                dv *= dsilu_f(__fadd_rn(__fmul_rn(xs[i], sc), sf));
            }
            ys[i] = (float)dv;
        }
    }
}

/* CPU twin: dfx_cpu_group_norm_jvp. */
static void cu_group_norm_jvp(dfx_backend *be, float *dy, const float *x, const float *dx,
                              const float *gamma, const float *beta, int B, int C, int HW,
                              int groups, float eps, int silu)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || cu_dry(cu)) return;
    dfx_error e;
    if (groups < 1 || C < 1 || C % groups) {
        dfx_fail(&e, "cuda group_norm_jvp: %d groups do not divide %d channels", groups, C);
        cu_failed(cu, &e, dy, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
        return;
    }
    if (HW < 1) return;
    k_group_norm_jvp<<<blocks_for((size_t)B * groups, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        dy, x, dx, gamma, beta, B, C, HW, groups, eps, silu);
    CU_LAUNCH_RECORD(cu, "group_norm_jvp", k_group_norm_jvp, dy, (size_t)B * C * HW);
}
