/*
 * Matrix products: every cuBLAS product of the backend (gemm_sb) in the
 * backend's precision (set_precision: strict FP32, TF32 or BF16 tensor-core
 * math), the cuBLAS handle and its workspace, the GEMM rate that bench
 * reports (peak_gflops), and the dense layer (linear), one warp per output.
 *
 * CPU reference: host/cpu/nn_cpu.c (dfx_cpu_linear), host/cpu/gemm_cpu.c
 * (the CPU's products), host/cpu/backend_cpu.c (cpu_peak_gflops).
 */
#pragma once

#include "common.cuh"

/* ------------------------------------------------------ cuBLAS products */

/* The products go to cuBLAS (one handle per backend, bound to the
 * backend's stream, created on first use) in strict FP32 by default;
 * set_precision (dfx_backend_set_precision) switches them to TF32 or BF16
 * tensor-core math: inputs rounded to 10 or 7 mantissa bits, products
 * accumulated in FP32. cuBLAS computes every sample with the same shapes
 * whatever the batch, so a sample's result does not depend on the batch it
 * is in beyond floating-point rounding (cuBLAS may pick another kernel for
 * another batch count).
 *
 * The handle works in a workspace of its own (DFX_CUDA_BLAS_WORKSPACE,
 * cublasSetWorkspace), so that cuBLAS allocates nothing while a graph is
 * captured and picks the same algorithms eagerly and in a graph. */

static cublasComputeType_t compute_type(int precision)
{
    switch (precision) {
    case DFX_PRECISION_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case DFX_PRECISION_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CUBLAS_COMPUTE_32F;
    }
}

/* Every matrix product of the backend: FP32 in and out (column-major,
 * strided batches), computed in the backend's precision. */
static cublasStatus_t gemm_sb(cu_impl *cu, cublasHandle_t h, cublasOperation_t ta,
                              cublasOperation_t tb, int m, int n, int k, const float *alpha,
                              const float *A, int lda, long long sA, const float *B, int ldb,
                              long long sB, const float *beta, float *C, int ldc, long long sC,
                              int batch)
{
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, sA, B,
                                      CUDA_R_32F, ldb, sB, beta, C, CUDA_R_32F, ldc, sC, batch,
                                      compute_type(cu->precision), CUBLAS_GEMM_DEFAULT);
}

/* Binds a new handle b to the backend's stream and workspace. */
static int blas_setup(cu_impl *cu, cublasHandle_t b, const char *op, dfx_error *err)
{
    CB_TRY(op, err, cublasSetStream(b, cu->stream));
    /* after cublasSetStream, which goes back to cuBLAS's own pool */
    if (!cu->blas_ws) {
        void *ws = NULL;
        CU_TRY(op, err, cudaMalloc(&ws, DFX_CUDA_BLAS_WORKSPACE));
        cu->blas_ws = ws;
    }
    CB_TRY(op, err, cublasSetWorkspace(b, cu->blas_ws, DFX_CUDA_BLAS_WORKSPACE));
    return 0;
}

/* The backend's cuBLAS handle, created on first use on the backend's
 * stream (so cuBLAS work is ordered with our kernels and copies). */
static int blas_handle(cu_impl *cu, cublasHandle_t *h, const char *op, dfx_error *err)
{
    if (!cu->blas) {
        cublasHandle_t b = NULL;
        CB_TRY(op, err, cublasCreate(&b));
        if (blas_setup(cu, b, op, err)) {
            (void)cublasDestroy(b);
            return -1;
        }
        cu->blas = b;
    }
    *h = cu->blas;
    return 0;
}

/* --------------------------------------------------------------- linear */

/* One warp per output y[r, o] = b[o] + sum_i W[o, i] act(x[r, i]), summed in
 * double in a fixed order: a row's result never depends on the batch. */
static __global__ void k_linear(float *__restrict__ y, const float *__restrict__ x,
                                const float *__restrict__ w, const float *__restrict__ b, int B,
                                int in, int out, int silu_in)
{
    const int lane = threadIdx.x & 31;
    const size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    const size_t total = (size_t)B * out;
    for (size_t p = warp; p < total; p += nwarps) { /* warp-uniform loop */
        const size_t r = p / (size_t)out, o = p % (size_t)out;
        const float *xr = x + r * in, *wo = w + o * in;
        double acc = 0.0;
        for (int i = lane; i < in; i += 32) {
            const float xv = silu_in ? silu_f(xr[i]) : xr[i];
            acc += (double)wo[i] * (double)xv;
        }
        acc = warp_reduce<op_sum>(acc);
        if (lane == 0) y[p] = (float)((b ? (double)b[o] : 0.0) + acc);
    }
}

/* CPU twin: dfx_cpu_linear. */
static void cu_linear(dfx_backend *be, float *y, const float *x, const float *w, const float *b,
                      int B, int in, int out, int silu_in)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || out <= 0 || cu_dry(cu)) return;
    k_linear<<<blocks_for((size_t)B * out, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0,
               cu->stream>>>(y, x, w, b, B, in > 0 ? in : 0, out, silu_in);
    CU_LAUNCH_RECORD(cu, "linear", k_linear, y, (size_t)B * out);
}

/* ------------------------------------------- precision, the GEMM rate */

/* The compute type is read when a product is queued: work queued before
 * keeps its precision. */
static int cu_set_precision(dfx_backend *be, int mode, dfx_error *err)
{
    if (mode != DFX_PRECISION_FP32 && mode != DFX_PRECISION_TF32 && mode != DFX_PRECISION_BF16)
        return dfx_fail(err, "cuda: unknown precision mode %d", mode);
    impl_of(be)->precision = mode;
    return 0;
}

/* Times an n x n x n product on a, b, c (allocated here; the caller frees
 * them and the events): the best rate of the runs after a warm-up, in
 * *best (GFLOP/s; what it holds when a run fails). */
static int peak_run(cu_impl *cu, int n, float **abc, cudaEvent_t *ev, double *best,
                    dfx_error *err)
{
    const char *op = "peak_gflops";
    const size_t bytes = (size_t)n * n * sizeof(float);
    cublasHandle_t h;
    if (blas_handle(cu, &h, op, err)) return -1;
    for (int i = 0; i < 3; i++) CU_TRY(op, err, cudaMalloc((void **)&abc[i], bytes));
    for (int i = 0; i < 2; i++) CU_TRY(op, err, cudaEventCreate(&ev[i]));
    CU_TRY(op, err, cudaMemsetAsync(abc[0], 0, bytes, cu->stream));
    CU_TRY(op, err, cudaMemsetAsync(abc[1], 0, bytes, cu->stream));
    for (int rep = 0; rep < 6; rep++) {
        const float one = 1.0f, zero = 0.0f;
        float ms = 0;
        CU_TRY(op, err, cudaEventRecord(ev[0], cu->stream));
        CB_TRY(op, err, gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, abc[0], n, 0,
                                abc[1], n, 0, &zero, abc[2], n, 0, 1));
        CU_TRY(op, err, cudaEventRecord(ev[1], cu->stream));
        CU_TRY(op, err, cudaEventSynchronize(ev[1]));
        CU_TRY(op, err, cudaEventElapsedTime(&ms, ev[0], ev[1]));
        const double g = 2.0 * n * (double)n * n / (ms * 1e-3) / 1e9;
        if (rep > 0 && g > *best) *best = g; /* the first run warms up */
    }
    return 0;
}

/* The rate of a 4096^3 product in the backend's precision, best of a few
 * timed runs after a warm-up: the "peak" that bench compares with (0 when
 * it cannot be measured; peak_gflops has no error to report). */
static double cu_peak_gflops(dfx_backend *be)
{
    cu_impl *cu = impl_of(be);
    if (cu->peak[cu->precision] > 0) return cu->peak[cu->precision];
    float *abc[3] = {NULL, NULL, NULL};
    cudaEvent_t ev[2] = {NULL, NULL};
    double best = 0.0;
    dfx_error err;
    (void)peak_run(cu, 4096, abc, ev, &best, &err);
    for (int i = 0; i < 2; i++)
        if (ev[i]) (void)cudaEventDestroy(ev[i]);
    for (int i = 0; i < 3; i++) (void)cudaFree(abc[i]);
    (void)cudaGetLastError();
    cu->peak[cu->precision] = best;
    return best;
}
