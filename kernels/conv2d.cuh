/*
 * 2-D convolution: im2col of a chunk of samples into the scratch, then one
 * strided-batched cuBLAS product (a 1x1 convolution multiplies x itself),
 * the bias filled in first.
 *
 * CPU reference: host/cpu/nn_cpu.c (dfx_cpu_conv2d, dfx_cpu_conv_scratch;
 * the CPU's 3x3 path is dfx_cpu_conv3 in host/cpu/gemm_cpu.c).
 */
#pragma once

#include "common.cuh"
#include "linear.cuh"

/* --------------------------------------------------------------- conv2d */

/* Floats of im2col columns per sample; 0 for a 1x1, stride-1, unpadded
 * convolution, which multiplies x itself (as on the CPU). */
static size_t conv_col(int Cin, int H, int W, int k, int stride, int pad)
{
    if (k == 1 && stride == 1 && pad == 0) return 0;
    if (k < 1 || stride < 1 || pad < 0 || H + 2 * pad < k || W + 2 * pad < k) return 0;
    size_t Ho = (size_t)(H + 2 * pad - k) / stride + 1, Wo = (size_t)(W + 2 * pad - k) / stride + 1;
    return (size_t)Cin * k * k * Ho * Wo;
}

/* CPU twin: dfx_cpu_conv_scratch. */
static size_t cu_conv_scratch(dfx_backend *be, int B, int Cin, int H, int W, int k, int stride,
                              int pad)
{
    (void)be;
    size_t per = conv_col(Cin, H, W, k, stride, pad);
    return per ? (size_t)chunk_of(per, B) * per : 0;
}

/* col [nb, Cin k k, Ho Wo]: the receptive fields of nb samples x [Cin, H, W]
 * as columns (row (c k + ky) k + kx, column oy Wo + ox), 0 in the padding. */
static __global__ void k_im2col(float *__restrict__ col, const float *__restrict__ x, int nb,
                                int Cin, int H, int W, int k, int stride, int pad, int Ho,
                                int Wo)
{
    const size_t N = (size_t)Ho * Wo, K = (size_t)Cin * k * k, total = (size_t)nb * K * N;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < total;
         p += (size_t)gridDim.x * blockDim.x) {
        const size_t i = p % N, rest = p / N, kk = rest % K, b = rest / K;
        const int ox = (int)(i % (size_t)Wo), oy = (int)(i / (size_t)Wo);
        const int kx = (int)(kk % (size_t)k), ky = (int)((kk / (size_t)k) % (size_t)k);
        const size_t c = kk / ((size_t)k * k);
        const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
        col[p] = (iy >= 0 && iy < H && ix >= 0 && ix < W)
                     ? x[((b * Cin + c) * H + (size_t)iy) * W + (size_t)ix]
                     : 0.0f;
    }
}

/* y [B, C, HW] = bias[c] (the GEMM then adds the products, beta = 1). */
static __global__ void k_fill_bias(float *y, const float *bias, int B, int C, size_t HW)
{
    const size_t total = (size_t)B * C * HW;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < total;
         p += (size_t)gridDim.x * blockDim.x)
        y[p] = bias[(p / HW) % (size_t)C];
}

/* Row-major y_b [Cout, N] = W [Cout, K] col_b [K, N] (+ y_b) is, read
 * column-major, y_b^T (N x Cout, ld N) = col_b^T (N x K, ld N) W^T (K x Cout,
 * ld K): one strided-batched SGEMM over the samples with W shared. */
static int conv_queue(cu_impl *cu, float *y, const float *x, const float *w, const float *bias,
                      int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                      float *scratch, dfx_error *err)
{
    const char *op = "conv2d";
    if (Cin < 1 || Cout < 1 || k < 1 || stride < 1 || pad < 0 || H + 2 * pad < k ||
        W + 2 * pad < k)
        return dfx_fail(err, "cuda conv2d: bad shape (Cin %d, %dx%d, Cout %d, k %d, stride %d, "
                        "pad %d)", Cin, H, W, Cout, k, stride, pad);
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    const size_t N = (size_t)Ho * Wo, K = (size_t)Cin * k * k;
    const size_t per = conv_col(Cin, H, W, k, stride, pad);
    if (!fits_int(N) || !fits_int(K))
        return dfx_fail(err, "cuda conv2d: %zu x %zu is too large for cuBLAS", N, K);
    cublasHandle_t h;
    if (blas_handle(cu, &h, op, err)) return -1;
    if (per && !scratch)
        return dfx_fail(err, "cuda conv2d: no scratch (conv_scratch asks for %zu floats)",
                        cu_conv_scratch(NULL, B, Cin, H, W, k, stride, pad));
    const float one = 1.0f;
    float beta = 0.0f;
    if (bias) {
        k_fill_bias<<<elem_blocks((size_t)B * Cout * N), DFX_CUDA_BLOCK, 0, cu->stream>>>(
            y, bias, B, Cout, N);
        CU_LAUNCH_TRY(op, err, k_fill_bias);
        beta = 1.0f;
    }
    if (!per) { /* 1x1: x_b [Cin, HW] is the column matrix */
        CB_TRY(op, err,
               gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, Cout, Cin, &one, x,
                                         (int)N, (long long)Cin * (long long)N, w, Cin, 0, &beta,
                                         y, (int)N, (long long)Cout * (long long)N, B));
        return 0;
    }
    const int nb = chunk_of(per, B);
    for (int b0 = 0; b0 < B; b0 += nb) {
        const int n = B - b0 < nb ? B - b0 : nb;
        k_im2col<<<elem_blocks((size_t)n * per), DFX_CUDA_BLOCK, 0, cu->stream>>>(
            scratch, x + (size_t)b0 * Cin * H * W, n, Cin, H, W, k, stride, pad, Ho, Wo);
        CU_LAUNCH_TRY(op, err, k_im2col);
        CB_TRY(op, err,
               gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, Cout, (int)K, &one,
                                         scratch, (int)N, (long long)per, w, (int)K, 0, &beta,
                                         y + (size_t)b0 * Cout * N, (int)N,
                                         (long long)Cout * (long long)N, n));
    }
    return 0;
}

/* CPU twin: dfx_cpu_conv2d. */
static void cu_conv2d(dfx_backend *be, float *y, const float *x, const float *w,
                      const float *bias, int B, int Cin, int H, int W, int Cout, int k,
                      int stride, int pad, float *scratch)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || cu_dry(cu)) return;
    dfx_error e;
    if (conv_queue(cu, y, x, w, bias, B, Cin, H, W, Cout, k, stride, pad, scratch, &e)) {
        size_t Ho = k >= 1 && stride >= 1 && H + 2 * pad >= k ? (size_t)(H + 2 * pad - k) / stride + 1 : 0;
        size_t Wo = k >= 1 && stride >= 1 && W + 2 * pad >= k ? (size_t)(W + 2 * pad - k) / stride + 1 : 0;
        cu_failed(cu, &e, y, (size_t)B * (Cout > 0 ? Cout : 0) * Ho * Wo);
    }
}
