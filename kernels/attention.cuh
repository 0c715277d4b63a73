/*
 * Self-attention over the positions of a feature map and its tangent
 * (attention_jvp): per head and chunk of samples, cuBLAS products for the
 * scores and the weighted sum, a row softmax (and its Jacobian) between
 * them.
 *
 * CPU reference: host/cpu/nn_cpu.c (dfx_cpu_attention, dfx_cpu_attention_jvp,
 * dfx_cpu_attention_scratch, dfx_cpu_attention_jvp_scratch).
 */
#pragma once

#include "common.cuh"
#include "linear.cuh"

/* ------------------------------------------------------------ attention */

/* CPU twin: dfx_cpu_attention_scratch. One HW x HW score matrix per sample
 * of a chunk (the heads take turns in it). */
static size_t cu_attention_scratch(dfx_backend *be, int B, int C, int HW, int heads)
{
    (void)be;
    (void)C;
    (void)heads;
    if (HW <= 0) return 0;
    const size_t per = (size_t)HW * HW;
    return (size_t)chunk_of(per, B) * per;
}

/* Row softmax of S [rows, n] in place, one warp per row: max-subtracted
 * expf, the sum in double, then scaled by (float)(1 / sum) as on the CPU. */
static __global__ void k_softmax_rows(float *S, size_t rows, int n)
{
    const int lane = threadIdx.x & 31;
    const size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t r = warp; r < rows; r += nwarps) { /* warp-uniform loop */
        float *row = S + r * (size_t)n;
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32) mx = fmaxf(mx, row[j]);
        mx = warp_reduce_all<op_max>(mx);
        double sum = 0.0;
        for (int j = lane; j < n; j += 32) {
            const float e = expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        const float inv = (float)(1.0 / warp_reduce_all<op_sum>(sum));
        for (int j = lane; j < n; j += 32) row[j] *= inv; /* this lane's own writes */
    }
}

/* Per head h (channels h d .. h d + d - 1) and sample b, with q, k, v
 * row-major [d, HW] (ld HW) inside qkv [B, 3C, HW]:
 *   S [HW, HW] (row i = query) = scale q^T k: column-major, S^T = K' Q'^T
 *     where K' = k read column-major (HW x d), Q' likewise: gemm(N, T);
 *   o [d, HW] = v S^T: column-major o^T (HW x d) = S'^T V' with S' = S read
 *     column-major: gemm(T, N).
 * Batched over the samples of a chunk (strides 3C HW, HW HW, C HW). */
static int attention_queue(cu_impl *cu, float *o, const float *qkv, int B, int C, int HW,
                           int heads, float *scratch, dfx_error *err)
{
    const char *op = "attention";
    if (heads < 1 || C < 1 || C % heads)
        return dfx_fail(err, "cuda attention: %d heads do not divide %d channels", heads, C);
    if (HW < 1) return 0;
    if (!fits_int(HW)) return dfx_fail(err, "cuda attention: %d positions", HW);
    if (!scratch)
        return dfx_fail(err, "cuda attention: no scratch (attention_scratch asks for %zu floats)",
                        cu_attention_scratch(NULL, B, C, HW, heads));
    cublasHandle_t h;
    if (blas_handle(cu, &h, op, err)) return -1;
    const int d = C / heads;
    const float scale = 1.0f / sqrtf((float)d), one = 1.0f, zero = 0.0f;
    const long long sQKV = 3LL * C * HW, sS = (long long)HW * HW, sO = (long long)C * HW;
    const int nb = chunk_of((size_t)HW * HW, B);
    for (int b0 = 0; b0 < B; b0 += nb) {
        const int n = B - b0 < nb ? B - b0 : nb;
        for (int hd = 0; hd < heads; hd++) {
            const float *q = qkv + (size_t)b0 * 3 * C * HW + (size_t)hd * d * HW;
            const float *k = q + (size_t)C * HW, *v = q + 2 * (size_t)C * HW;
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, d, &scale, k,
                                             HW, sQKV, q, HW, sQKV, &zero, scratch, HW, sS, n));
            const size_t rows = (size_t)n * HW;
            k_softmax_rows<<<blocks_for(rows, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0,
                             cu->stream>>>(scratch, rows, HW);
            CU_LAUNCH_TRY(op, err, k_softmax_rows);
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_T, CUBLAS_OP_N, HW, d, HW, &one,
                                             scratch, HW, sS, v, HW, sQKV, &zero,
                                             o + ((size_t)b0 * C + (size_t)hd * d) * HW, HW, sO,
                                             n));
        }
    }
    return 0;
}

/* CPU twin: dfx_cpu_attention. */
static void cu_attention(dfx_backend *be, float *o, const float *qkv, int B, int C, int HW,
                         int heads, float *scratch)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || cu_dry(cu)) return;
    dfx_error e;
    if (attention_queue(cu, o, qkv, B, C, HW, heads, scratch, &e))
        cu_failed(cu, &e, o, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
}

/* CPU twin: dfx_cpu_attention_jvp_scratch. P and dP of one head per sample
 * of a chunk: the chunk's P matrices, then its dP matrices. */
static size_t cu_attention_jvp_scratch(dfx_backend *be, int B, int C, int HW, int heads)
{
    (void)be;
    (void)C;
    (void)heads;
    if (HW <= 0) return 0;
    const size_t per = 2 * (size_t)HW * HW;
    return (size_t)chunk_of(per, B) * per;
}

/* D [rows, n] <- P (D - rowsum(P D)) in place, one warp per row, the row
 * sum in double (the softmax's Jacobian applied to each row of dS). */
static __global__ void k_softmax_jvp_rows(const float *P, float *D, size_t rows, int n)
{
    const int lane = threadIdx.x & 31;
    const size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t r = warp; r < rows; r += nwarps) { /* warp-uniform loop */
        const float *p = P + r * (size_t)n;
        float *d = D + r * (size_t)n;
        double dot = 0.0;
        for (int j = lane; j < n; j += 32) dot += (double)p[j] * (double)d[j];
        dot = warp_reduce_all<op_sum>(dot);
        for (int j = lane; j < n; j += 32) /* this lane's own elements */
            d[j] = (float)((double)p[j] * ((double)d[j] - dot));
    }
}

/* The tangent of attention_queue's computation, per head and chunk of
 * samples, with the same column-major reading of the row-major matrices:
 *   P = softmax(scale q^T k) exactly as attention_queue computes S;
 *   D = scale dq^T k + scale q^T dk: two gemm(N, T) into D (the second
 *     with beta = 1), as S is formed;
 *   D <- P (D - rowsum(P D)) (k_softmax_jvp_rows);
 *   dout = dv P^T + v D^T: two gemm(T, N), as o is formed. */
static int attention_jvp_queue(cu_impl *cu, float *dout, const float *qkv, const float *dqkv,
                               int B, int C, int HW, int heads, float *scratch, dfx_error *err)
{
    const char *op = "attention_jvp";
    if (heads < 1 || C < 1 || C % heads)
        return dfx_fail(err, "cuda attention_jvp: %d heads do not divide %d channels", heads, C);
    if (HW < 1) return 0;
    if (!fits_int(HW)) return dfx_fail(err, "cuda attention_jvp: %d positions", HW);
    if (!scratch)
        return dfx_fail(err,
                        "cuda attention_jvp: no scratch (attention_jvp_scratch asks for %zu "
                        "floats)",
                        cu_attention_jvp_scratch(NULL, B, C, HW, heads));
    cublasHandle_t h;
    if (blas_handle(cu, &h, op, err)) return -1;
    const int d = C / heads;
    const float scale = 1.0f / sqrtf((float)d), one = 1.0f, zero = 0.0f;
    const long long sQKV = 3LL * C * HW, sS = (long long)HW * HW, sO = (long long)C * HW;
    const int nb = chunk_of(2 * (size_t)HW * HW, B);
    float *P = scratch, *D = scratch + (size_t)nb * HW * HW;
    for (int b0 = 0; b0 < B; b0 += nb) {
        const int n = B - b0 < nb ? B - b0 : nb;
        for (int hd = 0; hd < heads; hd++) {
            const size_t o0 = (size_t)b0 * 3 * C * HW + (size_t)hd * d * HW;
            const float *q = qkv + o0, *k = q + (size_t)C * HW, *v = q + 2 * (size_t)C * HW;
            const float *dq = dqkv + o0, *dk = dq + (size_t)C * HW,
                        *dv = dq + 2 * (size_t)C * HW;
            float *o = dout + ((size_t)b0 * C + (size_t)hd * d) * HW;
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, d, &scale, k, HW, sQKV, q, HW,
                           sQKV, &zero, P, HW, sS, n));
            const size_t rows = (size_t)n * HW;
            k_softmax_rows<<<blocks_for(rows, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0,
                             cu->stream>>>(P, rows, HW);
            CU_LAUNCH_TRY(op, err, k_softmax_rows);
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, d, &scale, k, HW, sQKV, dq,
                           HW, sQKV, &zero, D, HW, sS, n));
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, d, &scale, dk, HW, sQKV, q,
                           HW, sQKV, &one, D, HW, sS, n));
            k_softmax_jvp_rows<<<blocks_for(rows, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0,
                                 cu->stream>>>(P, D, rows, HW);
            CU_LAUNCH_TRY(op, err, k_softmax_jvp_rows);
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_T, CUBLAS_OP_N, HW, d, HW, &one, P, HW, sS, dv, HW,
                           sQKV, &zero, o, HW, sO, n));
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_T, CUBLAS_OP_N, HW, d, HW, &one, D, HW, sS, v, HW,
                           sQKV, &one, o, HW, sO, n));
        }
    }
    return 0;
}

/* CPU twin: dfx_cpu_attention_jvp. */
static void cu_attention_jvp(dfx_backend *be, float *dout, const float *qkv, const float *dqkv,
                             int B, int C, int HW, int heads, float *scratch)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || cu_dry(cu)) return;
    dfx_error e;
    if (attention_jvp_queue(cu, dout, qkv, dqkv, B, C, HW, heads, scratch, &e))
        cu_failed(cu, &e, dout, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
}
