/*
 * What every other file of the CUDA backend builds on (kernels/backend_cuda.cu
 * includes them all, in one translation unit): the constants, the checked
 * calls, the backend's state (cu_impl, staging slots, graphs) with its
 * sticky errors, grid sizes, and the device helpers: the templated warp and
 * block reductions, SiLU and its derivative.
 *
 * CPU reference: host/cpu/backend_cpu.c (the backend's state and op table;
 * no op lives here), host/cpu/nn_cpu.c (silu, dsilu).
 */
#pragma once

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/philox.h" /* __host__ __device__: the CPU and the GPU share the code */

extern "C" {
#include "core/backend.h"
#include "core/error.h"
}

/* ------------------------------------------------------------ constants */

#define DFX_CUDA_BLOCK 256     /* threads per block; a multiple of 32       */
#define DFX_CUDA_SLOTS 4       /* coefficient staging slots in flight       */
#define DFX_CUDA_DEFER 64      /* frees held back before the backend drains the
                                * stream to release them (cu_free)        */
#define DFX_CUDA_BLAS_WORKSPACE ((size_t)32 << 20) /* cuBLAS workspace, bytes
                                    * (NVIDIA's recommendation for Hopper) */
#ifndef DFX_CUDA_MAX_GRID
#define DFX_CUDA_MAX_GRID 65535u /* grid-stride beyond this many blocks (a
                                    * smaller value tests the striding) */
#endif
#ifndef DFX_CUDA_SCRATCH_MAX
/* Floats of scratch a conv2d or attention call works in at most (256 MiB):
 * larger batches run in chunks of samples. A smaller value tests the
 * chunking. */
#define DFX_CUDA_SCRATCH_MAX ((size_t)64 << 20)
#endif

/* --------------------------------------------------------- checked calls */

/* Every CUDA and cuBLAS error site reports the same way, in llm.c's
 * checked-call style but as values: a dfx_error
 *   "cuda OP: CALL: reason (NAME) [file.cuh:line]"
 * naming the op, the call (the function name of a runtime or cuBLAS call,
 * or "k_kernel<<<>>>" for a launch) and the place. In functions that
 * return int:
 *   CU_TRY(op, err, call)          a CUDA runtime call,
 *   CB_TRY(op, err, call)          a cuBLAS call,
 *   CU_LAUNCH_TRY(op, err, k)      the launch of kernel k just queued,
 * each filling *err and returning -1 from the enclosing function. Ops that
 * return void record their failure instead (sticky, or the graph pass's:
 * cu_failed) and poison their output:
 *   CU_RECORD(cu, op, call, out, n)         a CUDA runtime call,
 *   CU_LAUNCH_RECORD(cu, op, k, out, n)     a launch
 * (0, or -1 when the failure was recorded); their cuBLAS work goes through
 * an int function (..._queue) and CB_TRY. */

/* "common.cuh" of "/path/to/kernels/common.cuh": the place in messages. */
static const char *cu_file(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int cu_fail(dfx_error *err, const char *op, const char *call, cudaError_t e,
                   const char *file, int line)
{
    int n = (int)strcspn(call, "("); /* the function name of the call */
    (void)cudaGetLastError(); /* handled here: keep it out of later launch checks */
    return dfx_fail(err, "cuda %s: %.*s: %s (%s) [%s:%d]", op, n, call, cudaGetErrorString(e),
                    cudaGetErrorName(e), cu_file(file), line);
}

static int cb_fail(dfx_error *err, const char *op, const char *call, cublasStatus_t s,
                   const char *file, int line)
{
    int n = (int)strcspn(call, "(");
    (void)cudaGetLastError();
    return dfx_fail(err, "cuda %s: %.*s: %s (%s) [%s:%d]", op, n, call,
                    cublasGetStatusString(s), cublasGetStatusName(s), cu_file(file), line);
}

#define CU_TRY(op, err, call)                                                    \
    do {                                                                         \
        cudaError_t cu_e_ = (call);                                              \
        if (cu_e_ != cudaSuccess)                                                \
            return cu_fail((err), (op), #call, cu_e_, __FILE__, __LINE__);       \
    } while (0)

#define CB_TRY(op, err, call)                                                    \
    do {                                                                         \
        cublasStatus_t cb_s_ = (call);                                           \
        if (cb_s_ != CUBLAS_STATUS_SUCCESS)                                      \
            return cb_fail((err), (op), #call, cb_s_, __FILE__, __LINE__);       \
    } while (0)

/* The launch just queued: a bad configuration, no code for this GPU, ... */
#define CU_LAUNCH_TRY(op, err, kernel)                                           \
    do {                                                                         \
        cudaError_t cu_e_ = cudaGetLastError();                                  \
        if (cu_e_ != cudaSuccess)                                                \
            return cu_fail((err), (op), #kernel "<<<>>>", cu_e_, __FILE__, __LINE__); \
    } while (0)

#define CU_RECORD(cu, op, call, out, n)                                          \
    record_fail((cu), (op), #call, (call), (out), (n), __FILE__, __LINE__)
#define CU_LAUNCH_RECORD(cu, op, kernel, out, n)                                 \
    record_fail((cu), (op), #kernel "<<<>>>", cudaGetLastError(), (out), (n), __FILE__, __LINE__)

/* ------------------------------------------------------------ the state */

typedef struct stage_slot {
    double *host;      /* pinned */
    double *dev;
    size_t cap;        /* doubles in each */
    cudaEvent_t done;  /* recorded behind the last copy out of `host` */
} stage_slot;

/* Graph passes (backend.h): none (eager), or which pass of cu->graph. */
enum { GM_NONE = 0, GM_MEASURE, GM_CAPTURE, GM_REFILL };

typedef struct graph_region {
    size_t off, bytes; /* in the graph's staging block */
} graph_region;

/* A captured graph and its staging block (the regions the ops of the
 * sequence stage their host data in, in order). */
struct dfx_graph {
    graph_region *reg;
    int nreg, capreg;
    int next;            /* regions staged so far in the current pass */
    size_t total;        /* bytes of the block */
    unsigned char *host; /* [total] plain host memory: the data for the next launch */
    unsigned char *dev;  /* [total] device: what the recorded kernels read */
    cudaGraphExec_t exec;
    int capturing;       /* between cudaStreamBeginCapture and cudaStreamEndCapture */
    int failed;          /* an op of the current pass failed */
    dfx_error err;       /* ... the first such failure */
};

typedef struct cu_impl {
    cudaStream_t stream;
    stage_slot slot[DFX_CUDA_SLOTS];
    int next_slot;
    void *work;        /* device scratch: gmm logits, err_norm results */
    size_t work_cap;   /* bytes */
    unsigned long long *counter; /* device: count_nonfinite */
    cublasHandle_t blas; /* created on first use, bound to `stream` */
    void *blas_ws;       /* its workspace, DFX_CUDA_BLAS_WORKSPACE bytes    */
    int gmode;           /* GM_*: the graph pass in progress                */
    dfx_graph *graph;    /* ... and its graph (NULL when GM_NONE)           */
    int precision;       /* DFX_PRECISION_* (set_precision)                 */
    double peak[3];      /* measured GEMM rate per precision, GFLOP/s       */
    dfx_backend_ops ops; /* this backend's table (be->ops points here) */
    void **defer;        /* cu_free'd, cudaFree'd once the stream drains    */
    int ndefer, capdefer;
    int failed;        /* a void op could not queue its work */
    dfx_error pending; /* ... and why (sticky) */
} cu_impl;

static cu_impl *impl_of(dfx_backend *be)
{
    return (cu_impl *)be->impl;
}

/* Keeps the first failure of an op of a graph pass for the pass to report. */
static void graph_note(dfx_graph *g, const dfx_error *e)
{
    if (g->failed) return;
    g->failed = 1;
    memcpy(&g->err, e, sizeof g->err);
    g->err.msg[sizeof g->err.msg - 1] = 0;
}

/* Ops queue no work in the measure and refill passes of a graph: they only
 * stage their host data (or nothing). */
static int cu_dry(const cu_impl *cu)
{
    return cu->gmode == GM_MEASURE || cu->gmode == GM_REFILL;
}

/* Keeps the first error of a void op for later ops to report (inside a
 * graph pass: for the pass to report). */
static void cu_record(cu_impl *cu, const dfx_error *e)
{
    if (cu->gmode != GM_NONE && cu->graph) {
        graph_note(cu->graph, e);
        return;
    }
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

/* Ops that wait for the device (or hand results to the host) cannot be
 * part of a graph: inside a pass they fail, and fail the pass. */
static int cu_outside_graph(cu_impl *cu, const char *op, dfx_error *err)
{
    if (cu->gmode == GM_NONE) return 0;
    dfx_error e;
    dfx_fail(&e, "cuda %s: not allowed while a graph is recorded or refilled", op);
    if (cu->graph) graph_note(cu->graph, &e);
    if (err) *err = e;
    return -1;
}

/* Best effort: mark a result as invalid after a failed launch (not inside
 * a graph pass: the graph is discarded, or nothing runs). */
static void cu_poison(cu_impl *cu, float *out, size_t n)
{
    if (cu->gmode != GM_NONE) return;
    if (out && n) (void)cudaMemsetAsync(out, 0xFF, n * sizeof(float), cu->stream); /* NaN */
}

/* Records a void op's failure (sticky, or the graph pass's) and poisons its
 * output (out may be NULL). */
static void cu_failed(cu_impl *cu, const dfx_error *e, float *out, size_t n)
{
    cu_record(cu, e);
    cu_poison(cu, out, n);
}

/* CU_RECORD and CU_LAUNCH_RECORD: e (of `call`) recorded as cu_fail words
 * it, out[0..n) poisoned. */
static int record_fail(cu_impl *cu, const char *op, const char *call, cudaError_t e, float *out,
                       size_t n, const char *file, int line)
{
    if (e == cudaSuccess) return 0;
    dfx_error err;
    cu_fail(&err, op, call, e, file, line);
    cu_failed(cu, &err, out, n);
    return -1;
}

/* ---------------------------------------------------------- grid sizes */

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

/* Grid for a grid-strided loop over n elements, one per thread. */
static unsigned elem_blocks(size_t n)
{
    return blocks_for(n, DFX_CUDA_BLOCK);
}

/* Samples per chunk: as many as fit DFX_CUDA_SCRATCH_MAX floats of
 * `per` each (at least one). */
static int chunk_of(size_t per, int B)
{
    if (B < 1) return 0;
    size_t n = per ? DFX_CUDA_SCRATCH_MAX / per : (size_t)B;
    if (n < 1) n = 1;
    return n < (size_t)B ? (int)n : B;
}

/* A count that cuBLAS (and an int loop) can take. */
static int fits_int(size_t v)
{
    return v <= (size_t)INT_MAX;
}

/* ------------------------------------------------------- device helpers */

/* The reductions' operators: op::apply(a, b), and op::identity() for the
 * lanes past the last warp of a block. */
struct op_sum {
    static __device__ __forceinline__ double identity() { return 0.0; }
    template <class T> static __device__ __forceinline__ T apply(T a, T b) { return a + b; }
};

struct op_max {
    static __device__ __forceinline__ double identity() { return -INFINITY; }
    static __device__ __forceinline__ double apply(double a, double b) { return fmax(a, b); }
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
};

/* Warp-wide reduction, complete in lane 0 (shuffles down). */
template <class Op, class T> static __device__ __forceinline__ T warp_reduce(T v)
{
    for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

/* Warp-wide reduction whose result every lane of the warp gets (butterfly). */
template <class Op, class T> static __device__ __forceinline__ T warp_reduce_all(T v)
{
    for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide reduction, returned to every thread. All threads of the block
 * must call it; sh holds DFX_CUDA_BLOCK / 32 values. The leading barrier
 * keeps a previous call's readers of sh[0] safe. Fixed order: deterministic. */
template <class Op, class T> static __device__ T block_reduce(T v, T *sh)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_reduce<Op>(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        T t = lane < nw ? sh[lane] : (T)Op::identity();
        t = warp_reduce<Op>(t);
        if (lane == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

/* x sigmoid(x), as nn_cpu.c writes it (expf: within 2 ulp of glibc's). */
static __device__ __forceinline__ float silu_f(float v)
{
    return v / (1.0f + expf(-v));
}

/* SiLU'(v) = s (1 + v (1 - s)), s = sigmoid(v), as nn_cpu.c's dsilu. */
static __device__ __forceinline__ float dsilu_f(float v)
{
    const float s = 1.0f / (1.0f + expf(-v));
    return s * (1.0f + v * (1.0f - s));
}
