/*
 * The CUDA backend: the same operation table as the CPU backend
 * (host/backend_cpu.c), which stays the reference. Each op below names its
 * CPU twin; tests/test_backend_ops.c checks the two against each other.
 *
 * Execution model
 *  - One cudaStream_t owned by the backend; every copy and kernel goes on
 *    it, so stream order is the only ordering we rely on.
 *  - Compute ops that return void (lincomb, normal, gmm_denoise) queue work
 *    and return. If one of them cannot queue its work (allocation failure,
 *    bad launch) it fills its output with NaN where it can and records the
 *    error in the backend; the error is sticky and is reported by every
 *    later op that returns one (upload, download, sync, err_norm,
 *    count_nonfinite). Asynchronous kernel faults surface the same way via
 *    the CUDA runtime.
 *  - Host coefficient arrays (lincomb coef/c0, gmm a/s/m) must be consumed
 *    before the op returns: the caller reuses them at once. They are copied
 *    into a pinned staging slot and sent with cudaMemcpyAsync; a slot is
 *    reused only after the event recorded behind its copy has completed
 *    (a ring of DFX_CUDA_SLOTS slots, so the host can run that many ops
 *    ahead of the GPU).
 *  - Results handed to the host (err_norm, count_nonfinite, download) are
 *    copied and the stream is synchronised before returning.
 *  - Per-row work is done by one block (or warp) per row in a fixed order,
 *    so results do not depend on the batch size, like the CPU backend.
 *
 * Error handling follows llm.c's checked-call style, but as values: the
 * CU_TRY macro turns a failing cudaError_t into a dfx_error naming the op,
 * the CUDA call and cudaGetErrorString, and returns -1.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "philox.h" /* __host__ __device__: the CPU and the GPU share the code */

extern "C" {
#include "backend.h"
#include "error.h"
}

/* ------------------------------------------------------------ constants */

#define DFX_CUDA_BLOCK 256     /* threads per block; a multiple of 32       */
#define DFX_CUDA_SLOTS 4       /* coefficient staging slots in flight       */
#ifndef DFX_CUDA_MAX_GRID
#define DFX_CUDA_MAX_GRID 65535u /* grid-stride beyond this many blocks (a
                                    * smaller value tests the striding) */
#endif

/* ------------------------------------------------------ checked wrappers */

static int cu_fail(dfx_error *err, const char *op, const char *call, cudaError_t e, int line)
{
    int n = (int)strcspn(call, "("); /* the function name of the call */
    (void)cudaGetLastError(); /* handled here: keep it out of later launch checks */
    return dfx_fail(err, "cuda %s: %.*s: %s (%s) [backend_cuda.cu:%d]", op, n, call,
                    cudaGetErrorString(e), cudaGetErrorName(e), line);
}

/* Runs a CUDA runtime call; on failure fills *err and returns -1 from the
 * enclosing function. */
#define CU_TRY(op, err, call)                                                    \
    do {                                                                         \
        cudaError_t cu_e_ = (call);                                              \
        if (cu_e_ != cudaSuccess) return cu_fail((err), (op), #call, cu_e_, __LINE__); \
    } while (0)

/* ------------------------------------------------------------ the state */

typedef struct stage_slot {
    double *host;      /* pinned */
    double *dev;
    size_t cap;        /* doubles in each */
    cudaEvent_t done;  /* recorded behind the last copy out of `host` */
} stage_slot;

typedef struct cu_impl {
    cudaStream_t stream;
    stage_slot slot[DFX_CUDA_SLOTS];
    int next_slot;
    void *work;        /* device scratch: gmm logits, err_norm results */
    size_t work_cap;   /* bytes */
    unsigned long long *counter; /* device: count_nonfinite */
    dfx_backend_ops ops; /* this backend's table (be->ops points here) */
    int failed;        /* a void op could not queue its work */
    dfx_error pending; /* ... and why (sticky) */
} cu_impl;

static cu_impl *impl_of(dfx_backend *be)
{
    return (cu_impl *)be->impl;
}

/* Keeps the first error of a void op for later ops to report. */
static void cu_record(cu_impl *cu, const dfx_error *e)
{
    if (cu->failed) return;
    cu->failed = 1;
    memcpy(&cu->pending, e, sizeof cu->pending);
    cu->pending.msg[sizeof cu->pending.msg - 1] = 0;
}

/* Reports a sticky error recorded by an earlier void op. */
static int cu_check_pending(cu_impl *cu, dfx_error *err)
{
    if (!cu->failed) return 0;
    if (err) *err = cu->pending;
    return dfx_fail_prefix(err, "an earlier CUDA operation failed");
}

/* Best effort: mark a result as invalid after a failed launch. */
static void cu_poison(cu_impl *cu, float *out, size_t n)
{
    if (out && n) (void)cudaMemsetAsync(out, 0xFF, n * sizeof(float), cu->stream); /* NaN */
}

/* Grid for per-row work: y runs over rows, x over `width` items of a row,
 * both grid-strided by the kernels. */
static dim3 rows_grid(int rows, size_t width)
{
    size_t gx = (width + DFX_CUDA_BLOCK - 1) / DFX_CUDA_BLOCK;
    if (gx < 1) gx = 1;
    if (gx > DFX_CUDA_MAX_GRID) gx = DFX_CUDA_MAX_GRID;
    unsigned gy = (unsigned)rows < DFX_CUDA_MAX_GRID ? (unsigned)rows : DFX_CUDA_MAX_GRID;
    return dim3((unsigned)gx, gy, 1);
}

/* Blocks for a grid-strided 1-D loop over n items, `per_block` per block. */
static unsigned blocks_for(size_t n, size_t per_block)
{
    size_t b = (n + per_block - 1) / per_block;
    if (b < 1) b = 1;
    if (b > DFX_CUDA_MAX_GRID) b = DFX_CUDA_MAX_GRID;
    return (unsigned)b;
}

/* Device scratch of at least `bytes`. Growing frees the old buffer, which
 * queued kernels may still use: synchronise first. */
static int work_reserve(cu_impl *cu, size_t bytes, const char *op, dfx_error *err)
{
    if (bytes <= cu->work_cap) return 0;
    size_t cap = cu->work_cap * 2 > bytes ? cu->work_cap * 2 : bytes;
    CU_TRY(op, err, cudaStreamSynchronize(cu->stream));
    if (cu->work) CU_TRY(op, err, cudaFree(cu->work));
    cu->work = NULL;
    cu->work_cap = 0;
    CU_TRY(op, err, cudaMalloc(&cu->work, cap));
    cu->work_cap = cap;
    return 0;
}

/* Copies host double arrays src[i] (n[i] values; NULL = absent) to the
 * device, returning device pointers in dev[i] (NULL for absent parts).
 * The host arrays may be reused as soon as this returns. */
static int stage(cu_impl *cu, int nparts, const double *const *src, const size_t *n,
                 const double **dev, const char *op, dfx_error *err)
{
    size_t total = 0;
    for (int i = 0; i < nparts; i++) {
        dev[i] = NULL;
        if (src[i]) total += n[i];
    }
    if (total == 0) return 0;

    stage_slot *sl = &cu->slot[cu->next_slot];
    cu->next_slot = (cu->next_slot + 1) % DFX_CUDA_SLOTS;
    /* The previous copy out of this pinned buffer must have finished. */
    CU_TRY(op, err, cudaEventSynchronize(sl->done));
    if (sl->cap < total) {
        size_t cap = sl->cap * 2 > total ? sl->cap * 2 : total;
        if (cap < 1024) cap = 1024;
        /* A queued kernel may still read the device half. */
        CU_TRY(op, err, cudaStreamSynchronize(cu->stream));
        if (sl->host) CU_TRY(op, err, cudaFreeHost(sl->host));
        if (sl->dev) CU_TRY(op, err, cudaFree(sl->dev));
        sl->host = NULL;
        sl->dev = NULL;
        sl->cap = 0;
        CU_TRY(op, err, cudaMallocHost((void **)&sl->host, cap * sizeof(double)));
        CU_TRY(op, err, cudaMalloc((void **)&sl->dev, cap * sizeof(double)));
        sl->cap = cap;
    }
    size_t off = 0;
    for (int i = 0; i < nparts; i++) {
        if (!src[i]) continue;
        memcpy(sl->host + off, src[i], n[i] * sizeof(double));
        dev[i] = sl->dev + off;
        off += n[i];
    }
    CU_TRY(op, err, cudaMemcpyAsync(sl->dev, sl->host, total * sizeof(double),
                                    cudaMemcpyHostToDevice, cu->stream));
    CU_TRY(op, err, cudaEventRecord(sl->done, cu->stream));
    return 0;
}

/* ------------------------------------------------------ device helpers */

static __device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v; /* complete in lane 0 */
}

static __device__ __forceinline__ double warp_max(double v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum / max, returned to every thread. All threads of the block
 * must call it; sh holds DFX_CUDA_BLOCK / 32 doubles. The leading barrier
 * keeps a previous call's readers of sh[0] safe. Fixed order: deterministic. */
static __device__ double block_sum(double v, double *sh)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum(t);
        if (lane == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

static __device__ double block_max(double v, double *sh)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? sh[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

/* --------------------------------------------------------------- memory */

/* CPU twin: cpu_alloc. NULL on failure (callers report out of memory). */
static void *cu_alloc(dfx_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: clear it */
        return NULL;
    }
    return p;
}

/* CPU twin: cpu_free. Queued kernels may still use p: synchronise first. */
static void cu_free(dfx_backend *be, void *p)
{
    cu_impl *cu = impl_of(be);
    if (!p) return;
    dfx_error e;
    cudaError_t ce = cudaStreamSynchronize(cu->stream);
    if (ce != cudaSuccess) {
        cu_fail(&e, "free", "cudaStreamSynchronize", ce, __LINE__);
        cu_record(cu, &e);
    }
    ce = cudaFree(p);
    if (ce != cudaSuccess) {
        cu_fail(&e, "free", "cudaFree", ce, __LINE__);
        cu_record(cu, &e);
    }
}

/* CPU twin: cpu_copy. Synchronous: src may be reused on return. */
static int cu_upload(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_check_pending(cu, err)) return -1;
    if (!bytes) return 0;
    CU_TRY("upload", err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu->stream));
    CU_TRY("upload", err, cudaStreamSynchronize(cu->stream));
    return 0;
}

/* CPU twin: cpu_copy. Waits for queued work that writes src. */
static int cu_download(dfx_backend *be, void *dst, const void *src, size_t bytes,
                       dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_check_pending(cu, err)) return -1;
    if (!bytes) return 0;
    CU_TRY("download", err,
           cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu->stream));
    CU_TRY("download", err, cudaStreamSynchronize(cu->stream));
    return 0;
}

/* CPU twin: cpu_sync. */
static int cu_sync(dfx_backend *be, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    CU_TRY("sync", err, cudaStreamSynchronize(cu->stream));
    CU_TRY("sync", err, cudaGetLastError());
    return cu_check_pending(cu, err);
}

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
 * same thread, so out may alias any x_i (no __restrict__). */
static __global__ void k_lincomb(lincomb_args p)
{
    for (int r = blockIdx.y; r < p.rows; r += gridDim.y) {
        const size_t row = (size_t)r * p.cols;
        const double b = p.c0 ? p.c0[r] : 0.0;
        for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < p.cols;
             j += (size_t)gridDim.x * blockDim.x) {
            double acc = b;
            for (int i = 0; i < p.k; i++) {
                const double c = p.coef[(size_t)i * p.rows + r];
                if (c != 0.0) acc = __dadd_rn(acc, __dmul_rn(c, (double)p.x[i][row + j]));
            }
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
    p.out = out;
    for (int i = 0; i < k; i++) p.x[i] = x[i];
    p.coef = dev[0];
    p.c0 = dev[1];
    p.k = k;
    p.rows = rows;
    p.cols = cols;
    k_lincomb<<<rows_grid(rows, cols), DFX_CUDA_BLOCK, 0, cu->stream>>>(p);
    CU_TRY("lincomb", err, cudaGetLastError());
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
        cu_record(cu, &e);
        cu_poison(cu, out, (size_t)rows * cols);
    }
}

/* --------------------------------------------------------------- normal */

/* One thread per group of 4 values of a row: the very Philox call the CPU
 * makes (dfx_philox_normal_row loops over the same groups). */
static __global__ void k_normal(float *out, uint64_t seed, uint64_t first_index, int rows, size_t cols,
                         uint32_t draw, uint32_t stream)
{
    const size_t groups = (cols + 3) / 4;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        float *o = out + (size_t)r * cols;
        for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
             g += (size_t)gridDim.x * blockDim.x) {
            float z[4];
            dfx_philox_normal4(seed, (uint32_t)g, draw, first_index + (uint64_t)r, stream, z);
            for (size_t j = 0; j < 4 && g * 4 + j < cols; j++) o[g * 4 + j] = z[j];
        }
    }
}

/* CPU twin: cpu_normal. */
static void cu_normal(dfx_backend *be, float *out, uint64_t seed, uint64_t first_index,
                      int rows, size_t cols, uint32_t draw, uint32_t stream)
{
    cu_impl *cu = impl_of(be);
    if (rows <= 0 || cols == 0) return;
    k_normal<<<rows_grid(rows, (cols + 3) / 4), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        out, seed, first_index, rows, cols, draw, stream);
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, "normal", "k_normal<<<>>>", ce, __LINE__);
        cu_record(cu, &e);
        cu_poison(cu, out, (size_t)rows * cols);
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
        acc = block_sum(acc, sh);
        if (threadIdx.x == 0) out[r] = sqrt(acc / (double)(cols ? cols : 1));
    }
}

/* CPU twin: cpu_err_norm. Waits for the result. */
static int cu_err_norm(dfx_backend *be, const float *e, const float *x0, const float *x1,
                       double rtol, double atol, int rows, size_t cols, double *out_host,
                       dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_check_pending(cu, err)) return -1;
    if (rows <= 0) return 0;
    if (work_reserve(cu, (size_t)rows * sizeof(double), "err_norm", err)) return -1;
    double *dres = (double *)cu->work;
    k_err_norm<<<blocks_for((size_t)rows, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        e, x0, x1, rtol, atol, rows, cols, dres);
    CU_TRY("err_norm", err, cudaGetLastError());
    CU_TRY("err_norm", err,
           cudaMemcpyAsync(out_host, dres, (size_t)rows * sizeof(double),
                           cudaMemcpyDeviceToHost, cu->stream));
    CU_TRY("err_norm", err, cudaStreamSynchronize(cu->stream));
    return 0;
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
    c = block_sum(c, sh);
    if (threadIdx.x == 0 && c > 0.0) atomicAdd(count, (unsigned long long)c);
}

/* CPU twin: cpu_count_nonfinite. Waits for the result. */
static int cu_count_nonfinite(dfx_backend *be, const float *x, size_t n, size_t *count,
                              dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_check_pending(cu, err)) return -1;
    *count = 0;
    if (n == 0) return 0;
    unsigned long long host = 0;
    CU_TRY("count_nonfinite", err,
           cudaMemsetAsync(cu->counter, 0, sizeof *cu->counter, cu->stream));
    k_count_nonfinite<<<blocks_for(n, (size_t)DFX_CUDA_BLOCK * 8), DFX_CUDA_BLOCK, 0,
                        cu->stream>>>(x, n, cu->counter);
    CU_TRY("count_nonfinite", err, cudaGetLastError());
    CU_TRY("count_nonfinite", err,
           cudaMemcpyAsync(&host, cu->counter, sizeof host, cudaMemcpyDeviceToHost,
                           cu->stream));
    CU_TRY("count_nonfinite", err, cudaStreamSynchronize(cu->stream));
    *count = (size_t)host;
    return 0;
}

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
        d2 = warp_sum(d2);
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
        best = block_max(best, sh);
        double total = 0.0;
        for (int k = threadIdx.x; k < K; k += blockDim.x) total += exp(l[k] - best);
        total = block_sum(total, sh); /* its barriers end all reads of l above */
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
        cxp = block_sum(cxp, sh);
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
    if (work_reserve(cu, (R * K + R) * sizeof(double), "gmm_denoise", err)) return -1;
    double *L = (double *)cu->work, *cx = L + R * K;

    k_gmm_logits<<<blocks_for(R * K, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        x, rows, g->means, g->c2, g->logw, g->K, g->dim, dev[0], dev[1], dev[2], L);
    CU_TRY("gmm_denoise", err, cudaGetLastError());
    k_gmm_softmax<<<blocks_for(R, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(rows, g->c2, g->K,
                                                                        dev[0], dev[1], L, cx);
    CU_TRY("gmm_denoise", err, cudaGetLastError());
    k_gmm_out<<<rows_grid(rows, g->dim), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        out, x, rows, g->means, g->K, g->dim, dev[2], L, cx);
    CU_TRY("gmm_denoise", err, cudaGetLastError());
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
        cu_record(cu, &e);
        cu_poison(cu, out, (size_t)rows * g->dim);
    }
}

/* --------------------------------------------------------- the backend */

/* CPU twin: cpu_destroy. */
static void cu_destroy(dfx_backend *be)
{
    cu_impl *cu = impl_of(be);
    if (cu) {
        if (cu->stream) (void)cudaStreamSynchronize(cu->stream);
        for (int i = 0; i < DFX_CUDA_SLOTS; i++) {
            stage_slot *sl = &cu->slot[i];
            if (sl->host) (void)cudaFreeHost(sl->host);
            if (sl->dev) (void)cudaFree(sl->dev);
            if (sl->done) (void)cudaEventDestroy(sl->done);
        }
        if (cu->work) (void)cudaFree(cu->work);
        if (cu->counter) (void)cudaFree(cu->counter);
        if (cu->stream) (void)cudaStreamDestroy(cu->stream);
        (void)cudaGetLastError();
        free(cu);
    }
    free(be);
}

/* The op table, filled by name (C++17 has no designated initialisers, and
 * a positional list would silently shift when backend.h grows). Ops this
 * backend does not implement stay NULL. */
static void cu_fill_ops(dfx_backend_ops *o)
{
    memset(o, 0, sizeof *o);
    o->alloc = cu_alloc;
    o->free = cu_free;
    o->upload = cu_upload;
    o->download = cu_download;
    o->sync = cu_sync;
    o->lincomb = cu_lincomb;
    o->normal = cu_normal;
    o->err_norm = cu_err_norm;
    o->count_nonfinite = cu_count_nonfinite;
    o->gmm_denoise = cu_gmm_denoise;
    o->destroy = cu_destroy;
}

static int cu_init(cu_impl *cu, dfx_error *err)
{
    const char *op = "create";
    CU_TRY(op, err, cudaStreamCreateWithFlags(&cu->stream, cudaStreamDefault));
    for (int i = 0; i < DFX_CUDA_SLOTS; i++)
        CU_TRY(op, err, cudaEventCreateWithFlags(&cu->slot[i].done, cudaEventDisableTiming));
    CU_TRY(op, err, cudaMalloc((void **)&cu->counter, sizeof *cu->counter));
    return 0;
}

extern "C" int dfx_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

extern "C" dfx_backend *dfx_backend_cuda_create(dfx_error *err)
{
    int n = 0;
    cudaError_t ce = cudaGetDeviceCount(&n);
    if (ce != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        dfx_fail(err, "--device cuda: no CUDA device found (cudaGetDeviceCount: %s)",
                 ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
        return NULL;
    }
    /* The current device (0 unless the caller chose one). Check that this
     * build carries code it can run before promising anything. */
    int dev = 0;
    cudaDeviceProp prop;
    if ((ce = cudaGetDevice(&dev)) != cudaSuccess ||
        (ce = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess) {
        (void)cudaGetLastError();
        dfx_fail(err, "--device cuda: cannot query CUDA device: %s", cudaGetErrorString(ce));
        return NULL;
    }
    cudaFuncAttributes fa;
    if ((ce = cudaFuncGetAttributes(&fa, k_lincomb)) != cudaSuccess) {
        (void)cudaGetLastError();
        dfx_fail(err,
                 "--device cuda: this build has no code for %s (compute capability %d.%d): "
                 "%s; reconfigure with -DCMAKE_CUDA_ARCHITECTURES=%d%d",
                 prop.name, prop.major, prop.minor, cudaGetErrorString(ce), prop.major,
                 prop.minor);
        return NULL;
    }

    dfx_backend *be = (dfx_backend *)dfx_alloc(1, sizeof *be, "CUDA backend", err);
    cu_impl *cu = be ? (cu_impl *)dfx_alloc(1, sizeof *cu, "CUDA backend", err) : NULL;
    if (!cu) {
        free(be);
        return NULL;
    }
    cu_fill_ops(&cu->ops);
    be->ops = &cu->ops;
    be->name = "cuda";
    be->threads = 1;
    be->impl = cu;
    if (cu_init(cu, err)) {
        dfx_fail_prefix(err, "--device cuda: %s", prop.name);
        cu_destroy(be);
        return NULL;
    }
    return be;
}
