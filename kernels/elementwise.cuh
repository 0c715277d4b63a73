/*
 * The vector ops of the sampler and the U-Net's elementwise layers:
 * lincomb (the solvers' linear combinations, bit for bit the CPU's),
 * err_norm and count_nonfinite (block reductions, results to the host),
 * unary (exp / log), mul_add, silu_jvp, add_channel, add, concat and
 * upsample2x.
 *
 * CPU reference: host/cpu/backend_cpu.c (cpu_lincomb, cpu_err_norm,
 * cpu_count_nonfinite, cpu_unary, cpu_mul_add) and host/cpu/nn_cpu.c
 * (dfx_cpu_silu_jvp, dfx_cpu_add_channel, dfx_cpu_add, dfx_cpu_concat,
 * dfx_cpu_upsample2x).
 */
#pragma once

#include "common.cuh"
#include "memory.cuh"

/* -------------------------------------------------------------- lincomb */

typedef struct lincomb_args {
    float *out;
    const float *x[DFX_LINCOMB_MAX];
    const double *coef; /* device [k * rows] */
    const double *c0;   /* device [rows] or NULL */
    int k, rows;
    size_t cols;
} lincomb_args;

/* out[r, j] = c0[r] + sum_i coef[i * rows + r] x_i[r, j]: the terms in the
 * CPU's order with the CPU's roundings (__dmul_rn / __dadd_rn are never
 * fused into an FMA), so the result is the CPU's to the bit. A zero
 * coefficient skips its load. Each element is read and then written by the
 * same thread, so out may alias any x_i (no __restrict__).
 *
 * The loops over the terms are unrolled to DFX_LINCOMB_MAX with constant
 * indices: p.x[i] is then read straight from the parameter bank and a row's
 * coefficients stay in registers. (A run-time index into the by-value
 * array would copy p into a local-memory stack frame, 104 bytes, and
 * reload the pointers from it for every element.) */
static __global__ void k_lincomb(lincomb_args p)
{
    for (int r = blockIdx.y; r < p.rows; r += gridDim.y) {
        const size_t row = (size_t)r * p.cols;
        const double b = p.c0 ? p.c0[r] : 0.0;
        double c[DFX_LINCOMB_MAX];
#pragma unroll
        for (int i = 0; i < DFX_LINCOMB_MAX; i++)
            c[i] = i < p.k ? p.coef[(size_t)i * p.rows + r] : 0.0;
        for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < p.cols;
             j += (size_t)gridDim.x * blockDim.x) {
            double acc = b;
#pragma unroll
            for (int i = 0; i < DFX_LINCOMB_MAX; i++)
                if (c[i] != 0.0) acc = __dadd_rn(acc, __dmul_rn(c[i], (double)p.x[i][row + j]));
            p.out[row + j] = (float)acc;
        }
    }
}

static int lincomb_queue(cu_impl *cu, float *out, int k, const float *const *x,
                         const double *coef, const double *c0, int rows, size_t cols,
                         dfx_error *err)
{
    if (k < 0 || k > DFX_LINCOMB_MAX)
        return dfx_fail(err, "cuda lincomb: %d terms (at most %d)", k, DFX_LINCOMB_MAX);
    lincomb_args p;
    memset(&p, 0, sizeof p);
    const double *src[2] = {k > 0 ? coef : NULL, c0};
    const size_t n[2] = {(size_t)k * (size_t)rows, (size_t)rows};
    const double *dev[2];
    if (stage(cu, 2, src, n, dev, "lincomb", err)) return -1;
    if (cu_dry(cu)) return 0;
    p.out = out;
    for (int i = 0; i < k; i++) p.x[i] = x[i];
    p.coef = dev[0];
    p.c0 = dev[1];
    p.k = k;
    p.rows = rows;
    p.cols = cols;
    k_lincomb<<<rows_grid(rows, cols), DFX_CUDA_BLOCK, 0, cu->stream>>>(p);
    CU_LAUNCH_TRY("lincomb", err, k_lincomb);
    return 0;
}

/* CPU twin: cpu_lincomb. */
static void cu_lincomb(dfx_backend *be, float *out, int k, const float *const *x,
                       const double *coef, const double *c0, int rows, size_t cols)
{
    cu_impl *cu = impl_of(be);
    if (rows <= 0 || cols == 0) return;
    dfx_error e;
    if (lincomb_queue(cu, out, k, x, coef, c0, rows, cols, &e)) {
        cu_failed(cu, &e, out, (size_t)rows * cols);
    }
}

/* ------------------------------------------------------------- err_norm */

/* One block per row: RMS of e / (atol + rtol max(|x0|, |x1|)) in double. */
static __global__ void k_err_norm(const float *e, const float *x0, const float *x1, double rtol,
                           double atol, int rows, size_t cols, double *out)
{
    __shared__ double sh[DFX_CUDA_BLOCK / 32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t o = (size_t)r * cols;
        double acc = 0.0;
        for (size_t j = threadIdx.x; j < cols; j += blockDim.x) {
            double sc = atol + rtol * fmax(fabs((double)x0[o + j]), fabs((double)x1[o + j]));
            double q = (double)e[o + j] / sc;
            acc += q * q;
        }
        acc = block_reduce<op_sum>(acc, sh);
        if (threadIdx.x == 0) out[r] = sqrt(acc / (double)(cols ? cols : 1));
    }
}

/* CPU twin: cpu_err_norm. Waits for the result. */
static int cu_err_norm(dfx_backend *be, const float *e, const float *x0, const float *x1,
                       double rtol, double atol, int rows, size_t cols, double *out_host,
                       dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_outside_graph(cu, "err_norm", err) || cu_check_pending(cu, err)) return -1;
    if (rows <= 0) return 0;
    if (work_reserve(cu, (size_t)rows * sizeof(double), "err_norm", err)) return -1;
    double *dres = (double *)cu->work;
    k_err_norm<<<blocks_for((size_t)rows, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        e, x0, x1, rtol, atol, rows, cols, dres);
    CU_LAUNCH_TRY("err_norm", err, k_err_norm);
    CU_TRY("err_norm", err,
           cudaMemcpyAsync(out_host, dres, (size_t)rows * sizeof(double),
                           cudaMemcpyDeviceToHost, cu->stream));
    return drain(cu, "err_norm", err);
}

/* ------------------------------------------------------ count_nonfinite */

/* NaN or Inf: exponent bits all ones (what isfinite tests, and immune to
 * any fast-math assumption). */
static __global__ void k_count_nonfinite(const float *x, size_t n, unsigned long long *count)
{
    __shared__ double sh[DFX_CUDA_BLOCK / 32];
    double c = 0.0; /* counts < 2^53 are exact in double */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        c += (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u ? 1.0 : 0.0;
    c = block_reduce<op_sum>(c, sh);
    if (threadIdx.x == 0 && c > 0.0) atomicAdd(count, (unsigned long long)c);
}

/* CPU twin: cpu_count_nonfinite. Waits for the result. */
static int cu_count_nonfinite(dfx_backend *be, const float *x, size_t n, size_t *count,
                              dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    *count = 0;
    if (cu_outside_graph(cu, "count_nonfinite", err) || cu_check_pending(cu, err)) return -1;
    if (n == 0) return 0;
    unsigned long long host = 0;
    CU_TRY("count_nonfinite", err,
           cudaMemsetAsync(cu->counter, 0, sizeof *cu->counter, cu->stream));
    k_count_nonfinite<<<blocks_for(n, (size_t)DFX_CUDA_BLOCK * 8), DFX_CUDA_BLOCK, 0,
                        cu->stream>>>(x, n, cu->counter);
    CU_LAUNCH_TRY("count_nonfinite", err, k_count_nonfinite);
    CU_TRY("count_nonfinite", err,
           cudaMemcpyAsync(&host, cu->counter, sizeof host, cudaMemcpyDeviceToHost,
                           cu->stream));
    if (drain(cu, "count_nonfinite", err)) return -1;
    *count = (size_t)host;
    return 0;
}

/* -------------------------------------------------------- unary, mul_add */

/* y = exp(x) or log(x) in double, rounded to float (CUDA's exp/log are
 * within an ulp of glibc's in double, so the floats virtually always agree).
 * Each element is read and written by one thread: y may alias x. */
static __global__ void k_unary(float *y, const float *x, size_t n, int fn)
{
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (size_t)gridDim.x * blockDim.x)
        y[p] = (float)(fn == DFX_FN_EXP ? exp((double)x[p]) : log((double)x[p]));
}

/* CPU twin: cpu_unary. */
static void cu_unary(dfx_backend *be, float *y, const float *x, size_t n, int fn)
{
    cu_impl *cu = impl_of(be);
    if (n == 0 || cu_dry(cu)) return;
    if (fn != DFX_FN_EXP && fn != DFX_FN_LOG) {
        dfx_error e;
        dfx_fail(&e, "cuda unary: unknown function %d", fn);
        cu_failed(cu, &e, y, n);
        return;
    }
    k_unary<<<blocks_for(n, DFX_CUDA_BLOCK), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, x, n, fn);
    CU_LAUNCH_RECORD(cu, "unary", k_unary, y, n);
}

/* y = a b + c in double without FMA (the CPU's roundings: bitwise equal). */
static __global__ void k_mul_add(float *y, const float *a, const float *b, double c, size_t n)
{
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (size_t)gridDim.x * blockDim.x)
        y[p] = (float)__dadd_rn(__dmul_rn((double)a[p], (double)b[p]), c);
}

/* CPU twin: cpu_mul_add. */
static void cu_mul_add(dfx_backend *be, float *y, const float *a, const float *b, double c,
                       size_t n)
{
    cu_impl *cu = impl_of(be);
    if (n == 0 || cu_dry(cu)) return;
    k_mul_add<<<blocks_for(n, DFX_CUDA_BLOCK), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, a, b, c, n);
    CU_LAUNCH_RECORD(cu, "mul_add", k_mul_add, y, n);
}

/* dy = SiLU'(x) dx; each element read and written by one thread (dy may
 * alias dx). */
static __global__ void k_silu_jvp(float *dy, const float *x, const float *dx, size_t n)
{
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (size_t)gridDim.x * blockDim.x)
        dy[p] = dsilu_f(x[p]) * dx[p];
}

/* CPU twin: dfx_cpu_silu_jvp. */
static void cu_silu_jvp(dfx_backend *be, float *dy, const float *x, const float *dx, size_t n)
{
    cu_impl *cu = impl_of(be);
    if (n == 0 || cu_dry(cu)) return;
    k_silu_jvp<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(dy, x, dx, n);
    CU_LAUNCH_RECORD(cu, "silu_jvp", k_silu_jvp, dy, n);
}

/* ------------------------------------------- add_channel, add, concat, up */

static __global__ void k_add_channel(float *y, const float *e, size_t BC, size_t HW)
{
    const size_t total = BC * HW;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < total;
         p += (size_t)gridDim.x * blockDim.x)
        y[p] += e[p / HW];
}

static __global__ void k_add(float *y, const float *a, const float *b, size_t n)
{
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (size_t)gridDim.x * blockDim.x)
        y[p] = a[p] + b[p];
}

/* y [B, Ca + Cb, HW]: a's channels, then b's. */
static __global__ void k_concat(float *__restrict__ y, const float *__restrict__ a, size_t na,
                                const float *__restrict__ b, size_t nb, int B)
{
    const size_t per = na + nb, total = (size_t)B * per;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < total;
         p += (size_t)gridDim.x * blockDim.x) {
        const size_t s = p / per, j = p % per;
        y[p] = j < na ? a[s * na + j] : b[s * nb + (j - na)];
    }
}

static __global__ void k_upsample2x(float *__restrict__ y, const float *__restrict__ x,
                                    size_t BC, int H, int W)
{
    const size_t W2 = 2 * (size_t)W, per = 4 * (size_t)H * W, total = BC * per;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < total;
         p += (size_t)gridDim.x * blockDim.x) {
        const size_t bc = p / per, q = p % per, i = q / W2, j = q % W2;
        y[p] = x[(bc * H + i / 2) * W + j / 2];
    }
}

/* CPU twin: dfx_cpu_add_channel. */
static void cu_add_channel(dfx_backend *be, float *y, const float *e, int B, int C, int HW)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || C <= 0 || HW <= 0 || cu_dry(cu)) return;
    const size_t n = (size_t)B * C * HW;
    k_add_channel<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, e, (size_t)B * C,
                                                                     (size_t)HW);
    CU_LAUNCH_RECORD(cu, "add_channel", k_add_channel, y, n);
}

/* CPU twin: dfx_cpu_add. */
static void cu_add(dfx_backend *be, float *y, const float *a, const float *b, size_t n)
{
    cu_impl *cu = impl_of(be);
    if (n == 0 || cu_dry(cu)) return;
    k_add<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, a, b, n);
    CU_LAUNCH_RECORD(cu, "add", k_add, y, n);
}

/* CPU twin: dfx_cpu_concat. */
static void cu_concat(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                      int B, int HW)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || HW <= 0 || Ca + Cb <= 0 || cu_dry(cu)) return;
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW, n = (size_t)B * (na + nb);
    k_concat<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, a, na, b, nb, B);
    CU_LAUNCH_RECORD(cu, "concat", k_concat, y, n);
}

/* CPU twin: dfx_cpu_upsample2x. */
static void cu_upsample2x(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || cu_dry(cu)) return;
    const size_t n = (size_t)B * C * 4 * H * W;
    k_upsample2x<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, x, (size_t)B * C, H, W);
    CU_LAUNCH_RECORD(cu, "upsample2x", k_upsample2x, y, n);
}
