/*
 * The CUDA backend: the same operation table as the CPU backend
 * (host/cpu/backend_cpu.c), which stays the reference. Each op below names its
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
 *  - free does not synchronise: queued kernels may still read the memory,
 *    so the pointer is held back and cudaFree'd the next time the stream
 *    drains anyway (cu_free).
 *  - Per-row work is done by one block (or warp) per row in a fixed order,
 *    so results do not depend on the batch size, like the CPU backend.
 *
 * Network layers (conv2d, group_norm, linear, attention, ...; see
 * models/UNET.md and their CPU twins in host/cpu/nn_cpu.c) and the tangents of
 * the nonlinear ones (group_norm_jvp, attention_jvp, silu_jvp: forward-mode
 * derivatives for the U-Net's jvp) follow the same model. Matrix products
 * go to cuBLAS (one handle per backend, bound to the
 * backend's stream, created on first use) in strict FP32 by default;
 * set_precision (dfx_backend_set_precision) switches them to TF32 or BF16
 * tensor-core math: inputs rounded to 10 or 7 mantissa bits, products
 * accumulated in FP32. cuBLAS and
 * the kernels compute every sample with the same shapes whatever the batch,
 * so a sample's result does not depend on the batch it is in beyond
 * floating-point rounding (cuBLAS may pick another kernel for another batch
 * count).
 *
 * The cuBLAS handle works in a workspace of its own (DFX_CUDA_BLAS_WORKSPACE,
 * cublasSetWorkspace), so that cuBLAS allocates nothing while a graph is
 * captured and picks the same algorithms eagerly and in a graph.
 *
 * CUDA graphs (graph_begin .. graph_free in backend.h): a fixed sequence of
 * ops (one U-Net evaluation, host/model/model_unet.c) is captured once with
 * cudaStreamBeginCapture and replayed with one cudaGraphLaunch. The kernels
 * of a graph read their host data (coefficients, times, labels) from one
 * device block of the graph's own: in the measure pass each op that stages
 * host data notes its region of the block (instead of taking a staging
 * slot), the capture pass writes the data into a host copy of the block and
 * records the kernels on the block's device half, and a refill pass writes
 * the next call's data into the same regions, in the same order. Nothing of
 * this is captured: graph_launch copies the host copy to the device block
 * through a staging slot (the same ring and events as above, so the host
 * copy may be rewritten as soon as graph_launch returns, and a launch never
 * overwrites the block before the previous launch, queued earlier on the
 * stream, has finished reading it), then launches the graph. All memory a
 * graph needs (its block, the cuBLAS workspace, staging slots as large as
 * its block) is allocated before the capture begins, so replays allocate
 * nothing. During a pass the compute ops report failures to the graph
 * (graph_capture / graph_end / graph_launch return them) instead of the
 * sticky error, and poison nothing; the caller then frees the graph and
 * runs the same ops eagerly. The environment variable DIFFLUX_CUDA_GRAPHS=0
 * turns graphs off: the U-Net reads it when a model is loaded and then
 * never calls graph_begin.
 *
 * Error handling follows llm.c's checked-call style, but as values: the
 * CU_TRY macro turns a failing cudaError_t into a dfx_error naming the op,
 * the CUDA call and cudaGetErrorString, and returns -1 (CB_TRY: the same
 * for cuBLAS calls).
 */
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

static int cb_fail(dfx_error *err, const char *op, const char *call, cublasStatus_t s, int line)
{
    int n = (int)strcspn(call, "(");
    (void)cudaGetLastError();
    return dfx_fail(err, "cuda %s: %.*s: %s (%s) [backend_cuda.cu:%d]", op, n, call,
                    cublasGetStatusString(s), cublasGetStatusName(s), line);
}

/* The same for a cuBLAS call. */
#define CB_TRY(op, err, call)                                                    \
    do {                                                                         \
        cublasStatus_t cb_s_ = (call);                                           \
        if (cb_s_ != CUBLAS_STATUS_SUCCESS)                                      \
            return cb_fail((err), (op), #call, cb_s_, __LINE__);                 \
    } while (0)

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

/* cudaFree of the pointers cu_free held back (none of the stream's work
 * can still use them: called right after the stream has drained). Not in
 * a graph pass, where cudaFree would break a capture. */
static void release_deferred(cu_impl *cu)
{
    if (cu->gmode != GM_NONE) return;
    for (int i = 0; i < cu->ndefer; i++) {
        cudaError_t ce = cudaFree(cu->defer[i]);
        if (ce != cudaSuccess) {
            dfx_error e;
            cu_fail(&e, "free", "cudaFree", ce, __LINE__);
            cu_record(cu, &e);
        }
    }
    cu->ndefer = 0;
}

/* Waits for the stream's queued work, then releases the held-back frees. */
static int drain(cu_impl *cu, const char *op, dfx_error *err)
{
    CU_TRY(op, err, cudaStreamSynchronize(cu->stream));
    release_deferred(cu);
    return 0;
}

/* Device scratch of at least `bytes`. Growing frees the old buffer, which
 * queued kernels may still use: synchronise first. */
static int work_reserve(cu_impl *cu, size_t bytes, const char *op, dfx_error *err)
{
    if (bytes <= cu->work_cap) return 0;
    size_t cap = cu->work_cap * 2 > bytes ? cu->work_cap * 2 : bytes;
    if (drain(cu, op, err)) return -1;
    if (cu->work) CU_TRY(op, err, cudaFree(cu->work));
    cu->work = NULL;
    cu->work_cap = 0;
    CU_TRY(op, err, cudaMalloc(&cu->work, cap));
    cu->work_cap = cap;
    return 0;
}

/* Grows slot sl to hold at least `doubles` values. */
static int slot_reserve(cu_impl *cu, stage_slot *sl, size_t doubles, const char *op,
                        dfx_error *err)
{
    if (sl->cap >= doubles) return 0;
    size_t cap = sl->cap * 2 > doubles ? sl->cap * 2 : doubles;
    if (cap < 1024) cap = 1024;
    /* The copy out of the pinned half, and queued kernels that may still
     * read the device half, must have finished. */
    CU_TRY(op, err, cudaEventSynchronize(sl->done));
    if (drain(cu, op, err)) return -1;
    if (sl->host) CU_TRY(op, err, cudaFreeHost(sl->host));
    if (sl->dev) CU_TRY(op, err, cudaFree(sl->dev));
    sl->host = NULL;
    sl->dev = NULL;
    sl->cap = 0;
    CU_TRY(op, err, cudaMallocHost((void **)&sl->host, cap * sizeof(double)));
    CU_TRY(op, err, cudaMalloc((void **)&sl->dev, cap * sizeof(double)));
    sl->cap = cap;
    return 0;
}

/* The next staging slot, holding at least `doubles` values and free to be
 * refilled (the copy out of it queued last time has completed). */
static int slot_acquire(cu_impl *cu, size_t doubles, stage_slot **out, const char *op,
                        dfx_error *err)
{
    stage_slot *sl = &cu->slot[cu->next_slot];
    cu->next_slot = (cu->next_slot + 1) % DFX_CUDA_SLOTS;
    /* The previous copy out of this pinned buffer must have finished. */
    CU_TRY(op, err, cudaEventSynchronize(sl->done));
    if (slot_reserve(cu, sl, doubles, op, err)) return -1;
    *out = sl;
    return 0;
}

/* Staging inside a graph pass: the next region of the graph's block, of
 * `bytes` bytes. The measure pass notes it (*host = *dev = NULL); the
 * capture and refill passes get the region noted at the same place in the
 * measure pass, which must be of the same size. */
static int graph_take(cu_impl *cu, size_t bytes, unsigned char **host, unsigned char **dev,
                        const char *op, dfx_error *err)
{
    dfx_graph *g = cu->graph;
    *host = *dev = NULL;
    if (cu->gmode == GM_MEASURE) {
        if (g->nreg == g->capreg) {
            int cap = g->capreg ? 2 * g->capreg : 16;
            graph_region *r = (graph_region *)realloc(g->reg, (size_t)cap * sizeof *r);
            if (!r) return dfx_fail(err, "cuda %s: graph: out of host memory", op);
            g->reg = r;
            g->capreg = cap;
        }
        const size_t off = (g->total + 15) & ~(size_t)15;
        g->reg[g->nreg].off = off;
        g->reg[g->nreg].bytes = bytes;
        g->nreg++;
        g->total = off + bytes;
        return 0;
    }
    if (g->next >= g->nreg || g->reg[g->next].bytes != bytes)
        return dfx_fail(err,
                        "cuda %s: graph: staging %d (%zu bytes) differs from the measured "
                        "pass (%d stagings)",
                        op, g->next + 1, bytes, g->nreg);
    const size_t off = g->reg[g->next++].off;
    *host = g->host + off;
    *dev = g->dev + off;
    return 0;
}

/* Sends the first `bytes` of a filled slot to its device half. */
static int slot_send(cu_impl *cu, stage_slot *sl, size_t bytes, const char *op, dfx_error *err)
{
    CU_TRY(op, err, cudaMemcpyAsync(sl->dev, sl->host, bytes, cudaMemcpyHostToDevice,
                                    cu->stream));
    CU_TRY(op, err, cudaEventRecord(sl->done, cu->stream));
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
    if (cu->gmode != GM_NONE) { /* into the graph's block */
        unsigned char *h, *d;
        if (graph_take(cu, total * sizeof(double), &h, &d, op, err)) return -1;
        size_t off = 0;
        for (int i = 0; i < nparts; i++) {
            if (!src[i]) continue;
            if (h) memcpy(h + off * sizeof(double), src[i], n[i] * sizeof(double));
            dev[i] = d ? (const double *)(d + off * sizeof(double)) : NULL;
            off += n[i];
        }
        return 0;
    }
    stage_slot *sl;
    if (slot_acquire(cu, total, &sl, op, err)) return -1;
    size_t off = 0;
    for (int i = 0; i < nparts; i++) {
        if (!src[i]) continue;
        memcpy(sl->host + off, src[i], n[i] * sizeof(double));
        dev[i] = sl->dev + off;
        off += n[i];
    }
    return slot_send(cu, sl, total * sizeof(double), op, err);
}

/* The same for one host int array (embedding labels). */
static int stage_ints(cu_impl *cu, const int *src, size_t n, const int **dev, const char *op,
                      dfx_error *err)
{
    *dev = NULL;
    if (n == 0) return 0;
    const size_t bytes = n * sizeof(int);
    if (cu->gmode != GM_NONE) { /* into the graph's block */
        unsigned char *h, *d;
        if (graph_take(cu, bytes, &h, &d, op, err)) return -1;
        if (h) memcpy(h, src, bytes);
        *dev = (const int *)d;
        return 0;
    }
    stage_slot *sl;
    if (slot_acquire(cu, (bytes + sizeof(double) - 1) / sizeof(double), &sl, op, err))
        return -1;
    memcpy(sl->host, src, bytes);
    *dev = (const int *)sl->dev;
    return slot_send(cu, sl, bytes, op, err);
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

/* CPU twin: cpu_alloc. NULL on failure (callers report out of memory).
 * When memory runs out while frees are held back (cu_free), the stream is
 * drained, they are released, and the allocation is tried again. */
static void *cu_alloc(dfx_backend *be, size_t bytes)
{
    cu_impl *cu = impl_of(be);
    for (int attempt = 0;; attempt++) {
        void *p = NULL;
        if (cudaMalloc(&p, bytes ? bytes : 256) == cudaSuccess) return p;
        (void)cudaGetLastError(); /* not sticky: clear it */
        dfx_error e;
        if (attempt > 0 || cu->ndefer == 0 || cu->gmode != GM_NONE || drain(cu, "alloc", &e))
            return NULL;
    }
}

/* CPU twin: cpu_free. Kernels queued before may still use p, and cudaFree
 * would wait for the whole device: p is held back instead and released
 * when the stream drains anyway (the next upload, download, sync, result
 * read-back, or scratch growth), or after DFX_CUDA_DEFER frees, so that
 * freeing costs no synchronisation of its own. A free inside a graph pass
 * is held back likewise (a synchronisation there would break a capture). */
static void cu_free(dfx_backend *be, void *p)
{
    cu_impl *cu = impl_of(be);
    if (!p) return;
    dfx_error e;
    if (cu->ndefer == cu->capdefer) {
        const int cap = cu->capdefer ? 2 * cu->capdefer : DFX_CUDA_DEFER;
        void **d = (void **)realloc(cu->defer, (size_t)cap * sizeof *d);
        if (!d) { /* no host memory for the list: the old way, at once */
            if (cu->gmode != GM_NONE) {
                dfx_fail(&e, "cuda free: out of host memory inside a graph pass");
                cu_record(cu, &e);
                return;
            }
            cudaError_t ce = cudaStreamSynchronize(cu->stream);
            if (ce == cudaSuccess) ce = cudaFree(p);
            if (ce != cudaSuccess) {
                cu_fail(&e, "free", "cudaFree", ce, __LINE__);
                cu_record(cu, &e);
            }
            return;
        }
        cu->defer = d;
        cu->capdefer = cap;
    }
    cu->defer[cu->ndefer++] = p;
    if (cu->ndefer >= DFX_CUDA_DEFER && cu->gmode == GM_NONE && drain(cu, "free", &e))
        cu_record(cu, &e);
}

/* CPU twin: cpu_copy. Synchronous: src may be reused on return. */
static int cu_upload(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_outside_graph(cu, "upload", err) || cu_check_pending(cu, err)) return -1;
    if (!bytes) return 0;
    CU_TRY("upload", err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu->stream));
    return drain(cu, "upload", err);
}

/* CPU twin: cpu_copy. Waits for queued work that writes src. */
static int cu_download(dfx_backend *be, void *dst, const void *src, size_t bytes,
                       dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_outside_graph(cu, "download", err) || cu_check_pending(cu, err)) return -1;
    if (!bytes) return 0;
    CU_TRY("download", err,
           cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu->stream));
    return drain(cu, "download", err);
}

/* CPU twin: cpu_sync. */
static int cu_sync(dfx_backend *be, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu_outside_graph(cu, "sync", err)) return -1;
    if (drain(cu, "sync", err)) return -1;
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
    if (rows <= 0 || cols == 0 || cu_dry(cu)) return;
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
    if (cu_outside_graph(cu, "err_norm", err) || cu_check_pending(cu, err)) return -1;
    if (rows <= 0) return 0;
    if (work_reserve(cu, (size_t)rows * sizeof(double), "err_norm", err)) return -1;
    double *dres = (double *)cu->work;
    k_err_norm<<<blocks_for((size_t)rows, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        e, x0, x1, rtol, atol, rows, cols, dres);
    CU_TRY("err_norm", err, cudaGetLastError());
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
    c = block_sum(c, sh);
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
    CU_TRY("count_nonfinite", err, cudaGetLastError());
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
        cu_record(cu, &e);
        cu_poison(cu, y, n);
        return;
    }
    k_unary<<<blocks_for(n, DFX_CUDA_BLOCK), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, x, n, fn);
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, "unary", "k_unary<<<>>>", ce, __LINE__);
        cu_record(cu, &e);
        cu_poison(cu, y, n);
    }
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
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, "mul_add", "k_mul_add<<<>>>", ce, __LINE__);
        cu_record(cu, &e);
        cu_poison(cu, y, n);
    }
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
    if (cu_dry(cu)) return 0;
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

/* ======================================================= network layers */

/* Reductions whose result every lane of the warp gets (butterfly). */
static __device__ __forceinline__ double warp_sum_all(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max_all(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
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

/* Grid for a grid-strided loop over n elements, one per thread. */
static unsigned elem_blocks(size_t n)
{
    return blocks_for(n, DFX_CUDA_BLOCK);
}

/* Records a void op's failure (sticky) and poisons its output. */
static void nn_failed(cu_impl *cu, const dfx_error *e, float *out, size_t n)
{
    cu_record(cu, e);
    cu_poison(cu, out, n);
}

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

/* The backend's cuBLAS handle, created on first use on the backend's
 * stream (so cuBLAS work is ordered with our kernels and copies). */
static int blas_handle(cu_impl *cu, cublasHandle_t *h, const char *op, dfx_error *err)
{
    if (!cu->blas) {
        cublasHandle_t b = NULL;
        CB_TRY(op, err, cublasCreate(&b));
        cublasStatus_t st = cublasSetStream(b, cu->stream);
        if (st != CUBLAS_STATUS_SUCCESS) {
            (void)cublasDestroy(b);
            return cb_fail(err, op, "cublasSetStream", st, __LINE__);
        }
        /* after cublasSetStream, which goes back to cuBLAS's own pool */
        if (!cu->blas_ws) {
            cudaError_t ce = cudaMalloc(&cu->blas_ws, DFX_CUDA_BLAS_WORKSPACE);
            if (ce != cudaSuccess) {
                cu->blas_ws = NULL;
                (void)cublasDestroy(b);
                return cu_fail(err, op, "cudaMalloc(cuBLAS workspace)", ce, __LINE__);
            }
        }
        st = cublasSetWorkspace(b, cu->blas_ws, DFX_CUDA_BLAS_WORKSPACE);
        if (st != CUBLAS_STATUS_SUCCESS) {
            (void)cublasDestroy(b);
            return cb_fail(err, op, "cublasSetWorkspace", st, __LINE__);
        }
        cu->blas = b;
    }
    *h = cu->blas;
    return 0;
}

static int fits_int(size_t v)
{
    return v <= (size_t)INT_MAX;
}

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

/* Samples per chunk: as many as fit DFX_CUDA_SCRATCH_MAX floats of
 * `per` each (at least one). */
static int chunk_of(size_t per, int B)
{
    if (B < 1) return 0;
    size_t n = per ? DFX_CUDA_SCRATCH_MAX / per : (size_t)B;
    if (n < 1) n = 1;
    return n < (size_t)B ? (int)n : B;
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
        CU_TRY(op, err, cudaGetLastError());
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
        CU_TRY(op, err, cudaGetLastError());
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
        nn_failed(cu, &e, y, (size_t)B * (Cout > 0 ? Cout : 0) * Ho * Wo);
    }
}

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
    const double m = block_sum(s, sh) / (double)n;
    double s2 = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = xs[i] - m;
        s2 += d * d;
    }
    s2 = block_sum(s2, sh);
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
    CU_TRY("group_norm", err, cudaGetLastError());
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
        nn_failed(cu, &e, y, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
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
        const double dmean = block_sum(sd, sh) / (double)n;
        const double cxd = block_sum(sxd, sh) * inv / (double)n;
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
        nn_failed(cu, &e, dy, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
        return;
    }
    if (HW < 1) return;
    k_group_norm_jvp<<<blocks_for((size_t)B * groups, 1), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        dy, x, dx, gamma, beta, B, C, HW, groups, eps, silu);
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        cu_fail(&e, "group_norm_jvp", "k_group_norm_jvp<<<>>>", ce, __LINE__);
        nn_failed(cu, &e, dy, (size_t)B * C * HW);
    }
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
        acc = warp_sum(acc);
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
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, "linear", "k_linear<<<>>>", ce, __LINE__);
        nn_failed(cu, &e, y, (size_t)B * out);
    }
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
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, "silu_jvp", "k_silu_jvp<<<>>>", ce, __LINE__);
        nn_failed(cu, &e, dy, n);
    }
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

/* Records a failed launch of an elementwise op. */
static void launch_check(cu_impl *cu, const char *op, const char *kernel, float *out, size_t n,
                         int line)
{
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, op, kernel, ce, line);
        nn_failed(cu, &e, out, n);
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
    launch_check(cu, "add_channel", "k_add_channel<<<>>>", y, n, __LINE__);
}

/* CPU twin: dfx_cpu_add. */
static void cu_add(dfx_backend *be, float *y, const float *a, const float *b, size_t n)
{
    cu_impl *cu = impl_of(be);
    if (n == 0 || cu_dry(cu)) return;
    k_add<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, a, b, n);
    launch_check(cu, "add", "k_add<<<>>>", y, n, __LINE__);
}

/* CPU twin: dfx_cpu_concat. */
static void cu_concat(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                      int B, int HW)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || HW <= 0 || Ca + Cb <= 0 || cu_dry(cu)) return;
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW, n = (size_t)B * (na + nb);
    k_concat<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, a, na, b, nb, B);
    launch_check(cu, "concat", "k_concat<<<>>>", y, n, __LINE__);
}

/* CPU twin: dfx_cpu_upsample2x. */
static void cu_upsample2x(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || cu_dry(cu)) return;
    const size_t n = (size_t)B * C * 4 * H * W;
    k_upsample2x<<<elem_blocks(n), DFX_CUDA_BLOCK, 0, cu->stream>>>(y, x, (size_t)B * C, H, W);
    launch_check(cu, "upsample2x", "k_upsample2x<<<>>>", y, n, __LINE__);
}

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
        mx = warp_max_all(mx);
        double sum = 0.0;
        for (int j = lane; j < n; j += 32) {
            const float e = expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        const float inv = (float)(1.0 / warp_sum_all(sum));
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
            CU_TRY(op, err, cudaGetLastError());
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
        nn_failed(cu, &e, o, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
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
        dot = warp_sum_all(dot);
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
            CU_TRY(op, err, cudaGetLastError());
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, d, &scale, k, HW, sQKV, dq,
                           HW, sQKV, &zero, D, HW, sS, n));
            CB_TRY(op, err,
                   gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, d, &scale, dk, HW, sQKV, q,
                           HW, sQKV, &one, D, HW, sS, n));
            k_softmax_jvp_rows<<<blocks_for(rows, DFX_CUDA_BLOCK / 32), DFX_CUDA_BLOCK, 0,
                                 cu->stream>>>(P, D, rows, HW);
            CU_TRY(op, err, cudaGetLastError());
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
        nn_failed(cu, &e, dout, (size_t)B * (C > 0 ? C : 0) * (HW > 0 ? HW : 0));
}

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

/* y[b, i] = sin(u f_i), y[b, half + i] = cos(u f_i), u = t[b] scale,
 * f_i = exp(-ln(10000) i / half): nn_cpu.c's expression, in double (the
 * sine and cosine through sincos_moderate). */
static __global__ void k_time_embed(float *y, const double *t, int B, int dim, double scale)
{
    const int half = dim / 2;
    const int total = B * half; /* time_embed_queue: fits an int */
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < total; p += gridDim.x * blockDim.x) {
        const int b = p / half, i = p % half;
        const double u = t[b] * scale;
        const double f = exp(-DFX_LN_10000 * (double)i / (double)half);
        double sn, cs;
        sincos_moderate(u * f, &sn, &cs);
        y[(size_t)b * dim + i] = (float)sn;
        y[(size_t)b * dim + half + i] = (float)cs;
    }
}

static int time_embed_queue(cu_impl *cu, float *y, const double *t, int B, int dim,
                            double scale, dfx_error *err)
{
    if ((size_t)B * (size_t)(dim / 2) > (size_t)INT_MAX)
        return dfx_fail(err, "cuda time_embed: %d x %d values", B, dim);
    const double *src[1] = {t};
    const size_t n[1] = {(size_t)B};
    const double *dev[1];
    if (stage(cu, 1, src, n, dev, "time_embed", err)) return -1;
    if (cu_dry(cu)) return 0;
    k_time_embed<<<elem_blocks((size_t)B * (dim / 2)), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        y, dev[0], B, dim, scale);
    CU_TRY("time_embed", err, cudaGetLastError());
    return 0;
}

/* CPU twin: dfx_cpu_time_embed. t is a host array, consumed before return. */
static void cu_time_embed(dfx_backend *be, float *y, const double *t, int B, int dim,
                          double scale)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || dim < 2) return;
    dfx_error e;
    if (time_embed_queue(cu, y, t, B, dim, scale, &e)) nn_failed(cu, &e, y, (size_t)B * dim);
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
    CU_TRY("embed_add", err, cudaGetLastError());
    return 0;
}

/* CPU twin: dfx_cpu_embed_add. idx is a host array, consumed before return. */
static void cu_embed_add(dfx_backend *be, float *y, const float *table, const int *idx, int B,
                         int dim)
{
    cu_impl *cu = impl_of(be);
    if (B <= 0 || dim <= 0) return;
    dfx_error e;
    if (embed_add_queue(cu, y, table, idx, B, dim, &e)) nn_failed(cu, &e, y, (size_t)B * dim);
}

/* ----------------------------------------------------------------- copy */

/* CPU twin: cpu_copy_dev. */
static void cu_copy(dfx_backend *be, void *dst, const void *src, size_t bytes)
{
    cu_impl *cu = impl_of(be);
    if (bytes == 0 || dst == src || cu_dry(cu)) return;
    cudaError_t ce = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu->stream);
    if (ce != cudaSuccess) {
        dfx_error e;
        cu_fail(&e, "copy", "cudaMemcpyAsync", ce, __LINE__);
        cu_record(cu, &e);
        if (bytes % sizeof(float) == 0) cu_poison(cu, (float *)dst, bytes / sizeof(float));
    }
}

/* --------------------------------------------------------------- graphs */

/* The first failure of a pass, as the pass's result. */
static int graph_failed(const dfx_graph *g, dfx_error *err)
{
    if (err) *err = g->err;
    return -1;
}

/* Starts the measure pass of a new graph. */
static dfx_graph *cu_graph_begin(dfx_backend *be, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu->gmode != GM_NONE) {
        dfx_fail(err, "cuda graph_begin: a graph pass is already in progress");
        return NULL;
    }
    dfx_graph *g = (dfx_graph *)dfx_alloc(1, sizeof *g, "CUDA graph", err);
    if (!g) return NULL;
    cu->graph = g;
    cu->gmode = GM_MEASURE;
    return g;
}

/* Ends the measure pass and begins the capture. Everything that allocates
 * or waits happens before cudaStreamBeginCapture: the cuBLAS handle and its
 * workspace, the graph's block, and staging slots as large as the block (so
 * that graph_launch never grows one). */
static int cu_graph_capture(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    const char *op = "graph_capture";
    if (!g || cu->gmode != GM_MEASURE || cu->graph != g)
        return dfx_fail(err, "cuda graph_capture: no measure pass of this graph in progress");
    if (g->failed) return graph_failed(g, err);
    cublasHandle_t h;
    if (blas_handle(cu, &h, op, err)) return -1;
    const size_t bytes = g->total ? g->total : 16;
    g->host = (unsigned char *)dfx_alloc(bytes, 1, "CUDA graph staging", err);
    if (!g->host) return -1;
    CU_TRY(op, err, cudaMalloc((void **)&g->dev, bytes));
    for (int i = 0; i < DFX_CUDA_SLOTS; i++)
        if (slot_reserve(cu, &cu->slot[i], (bytes + sizeof(double) - 1) / sizeof(double), op,
                         err))
            return -1;
    g->next = 0;
    /* thread-local: a call in this thread that is not allowed during a
     * capture fails (and so fails the capture) instead of corrupting it */
    CU_TRY(op, err, cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal));
    g->capturing = 1;
    cu->gmode = GM_CAPTURE;
    return 0;
}

/* Ends the capture and instantiates the graph. On failure the stream is
 * out of capture mode and the graph holds no executable (graph_free it). */
static int cu_graph_end(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    const char *op = "graph_end";
    if (!g || cu->gmode != GM_CAPTURE || cu->graph != g)
        return dfx_fail(err, "cuda graph_end: no capture of this graph in progress");
    cudaGraph_t graph = NULL;
    cudaError_t ce = cudaStreamEndCapture(cu->stream, &graph);
    g->capturing = 0;
    cu->gmode = GM_NONE;
    cu->graph = NULL;
    int rc = 0;
    if (ce != cudaSuccess)
        rc = cu_fail(err, op, "cudaStreamEndCapture", ce, __LINE__);
    else if (g->failed)
        rc = graph_failed(g, err);
    else if (!graph)
        rc = dfx_fail(err, "cuda graph_end: the capture was invalidated");
    else if (g->next != g->nreg)
        rc = dfx_fail(err, "cuda graph_end: the capture staged %d of the %d measured regions",
                      g->next, g->nreg);
    if (rc == 0) {
        ce = cudaGraphInstantiateWithFlags(&g->exec, graph, 0);
        if (ce != cudaSuccess) {
            g->exec = NULL;
            rc = cu_fail(err, op, "cudaGraphInstantiateWithFlags", ce, __LINE__);
        }
    }
    if (graph) (void)cudaGraphDestroy(graph); /* the executable does not need it */
    if (rc) (void)cudaGetLastError();
    return rc;
}

/* Starts a refill pass: nothing is waited for, the ops write g's host copy,
 * which only graph_launch reads (on the host). */
static int cu_graph_refill(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    if (cu->gmode != GM_NONE)
        return dfx_fail(err, "cuda graph_refill: a graph pass is already in progress");
    if (!g || !g->exec) return dfx_fail(err, "cuda graph_refill: the graph is not ready");
    g->next = 0;
    g->failed = 0;
    cu->graph = g;
    cu->gmode = GM_REFILL;
    return 0;
}

/* Ends a refill pass of g (if one is in progress), sends g's staged data to
 * its block through a staging slot, and launches g. */
static int cu_graph_launch(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    cu_impl *cu = impl_of(be);
    const char *op = "graph_launch";
    if (g && cu->gmode == GM_REFILL && cu->graph == g) {
        cu->gmode = GM_NONE;
        cu->graph = NULL;
        if (g->failed) return graph_failed(g, err);
        if (g->next != g->nreg)
            return dfx_fail(err, "cuda graph_launch: the refill staged %d of the graph's %d "
                            "regions", g->next, g->nreg);
    } else if (cu->gmode != GM_NONE) {
        return dfx_fail(err, "cuda graph_launch: another graph pass is in progress");
    }
    if (!g || !g->exec) return dfx_fail(err, "cuda graph_launch: the graph is not ready");
    if (g->total) {
        stage_slot *sl = NULL;
        if (slot_acquire(cu, (g->total + sizeof(double) - 1) / sizeof(double), &sl, op, err))
            return -1;
        memcpy(sl->host, g->host, g->total);
        CU_TRY(op, err, cudaMemcpyAsync(g->dev, sl->host, g->total, cudaMemcpyHostToDevice,
                                        cu->stream));
        CU_TRY(op, err, cudaEventRecord(sl->done, cu->stream));
    }
    CU_TRY(op, err, cudaGraphLaunch(g->exec, cu->stream));
    return 0;
}

/* Ends a pass of g in progress (a capture included) and frees g, once
 * launches of it queued on the stream have finished. */
static void cu_graph_free(dfx_backend *be, dfx_graph *g)
{
    cu_impl *cu = impl_of(be);
    if (!g) return;
    if (cu->graph == g) {
        if (g->capturing) {
            cudaGraph_t graph = NULL;
            if (cudaStreamEndCapture(cu->stream, &graph) == cudaSuccess && graph)
                (void)cudaGraphDestroy(graph);
            g->capturing = 0;
            (void)cudaGetLastError();
        }
        cu->gmode = GM_NONE;
        cu->graph = NULL;
    }
    dfx_error e;
    cudaError_t ce = cudaStreamSynchronize(cu->stream);
    if (ce != cudaSuccess) {
        cu_fail(&e, "graph_free", "cudaStreamSynchronize", ce, __LINE__);
        cu_record(cu, &e);
    } else {
        release_deferred(cu);
    }
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->dev) {
        ce = cudaFree(g->dev);
        if (ce != cudaSuccess) {
            cu_fail(&e, "graph_free", "cudaFree", ce, __LINE__);
            cu_record(cu, &e);
        }
    }
    free(g->host);
    free(g->reg);
    free(g);
}

/* --------------------------------------------------------- the backend */

/* CPU twin: cpu_destroy. */
static void cu_destroy(dfx_backend *be)
{
    cu_impl *cu = impl_of(be);
    if (cu) {
        if (cu->graph) { /* a pass left open: end a capture, free nothing else */
            if (cu->graph->capturing) {
                cudaGraph_t graph = NULL;
                if (cudaStreamEndCapture(cu->stream, &graph) == cudaSuccess && graph)
                    (void)cudaGraphDestroy(graph);
                cu->graph->capturing = 0;
            }
            cu->gmode = GM_NONE;
            cu->graph = NULL;
        }
        if (cu->stream) (void)cudaStreamSynchronize(cu->stream);
        for (int i = 0; i < cu->ndefer; i++) (void)cudaFree(cu->defer[i]);
        free(cu->defer);
        for (int i = 0; i < DFX_CUDA_SLOTS; i++) {
            stage_slot *sl = &cu->slot[i];
            if (sl->host) (void)cudaFreeHost(sl->host);
            if (sl->dev) (void)cudaFree(sl->dev);
            if (sl->done) (void)cudaEventDestroy(sl->done);
        }
        if (cu->blas) (void)cublasDestroy(cu->blas);
        if (cu->blas_ws) (void)cudaFree(cu->blas_ws);
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
static int cu_set_precision(dfx_backend *be, int mode, dfx_error *err);
static double cu_peak_gflops(dfx_backend *be);

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
    o->unary = cu_unary;
    o->mul_add = cu_mul_add;
    o->gmm_denoise = cu_gmm_denoise;
    o->conv2d = cu_conv2d;
    o->group_norm = cu_group_norm;
    o->linear = cu_linear;
    o->add_channel = cu_add_channel;
    o->add = cu_add;
    o->concat = cu_concat;
    o->upsample2x = cu_upsample2x;
    o->attention = cu_attention;
    o->time_embed = cu_time_embed;
    o->embed_add = cu_embed_add;
    o->group_norm_jvp = cu_group_norm_jvp;
    o->attention_jvp = cu_attention_jvp;
    o->silu_jvp = cu_silu_jvp;
    o->conv_scratch = cu_conv_scratch;
    o->attention_scratch = cu_attention_scratch;
    o->attention_jvp_scratch = cu_attention_jvp_scratch;
    o->set_precision = cu_set_precision;
    o->peak_gflops = cu_peak_gflops;
    o->destroy = cu_destroy;
    o->copy = cu_copy;
    o->graph_begin = cu_graph_begin;
    o->graph_capture = cu_graph_capture;
    o->graph_end = cu_graph_end;
    o->graph_refill = cu_graph_refill;
    o->graph_launch = cu_graph_launch;
    o->graph_free = cu_graph_free;
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

/* The compute type is read when a product is queued: work queued before
 * keeps its precision. */
static int cu_set_precision(dfx_backend *be, int mode, dfx_error *err)
{
    if (mode != DFX_PRECISION_FP32 && mode != DFX_PRECISION_TF32 && mode != DFX_PRECISION_BF16)
        return dfx_fail(err, "cuda: unknown precision mode %d", mode);
    impl_of(be)->precision = mode;
    return 0;
}

/* The rate of an n x n x n product in the backend's precision, best of a
 * few timed runs after a warm-up: the "peak" that bench compares with. */
static double cu_peak_gflops(dfx_backend *be)
{
    cu_impl *cu = impl_of(be);
    if (cu->peak[cu->precision] > 0) return cu->peak[cu->precision];
    const int n = 4096;
    const size_t bytes = (size_t)n * n * sizeof(float);
    float *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    cublasHandle_t h;
    dfx_error err;
    double best = 0.0;
    if (blas_handle(cu, &h, "peak", &err) || cudaMalloc((void **)&a, bytes) != cudaSuccess ||
        cudaMalloc((void **)&b, bytes) != cudaSuccess ||
        cudaMalloc((void **)&c, bytes) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
        goto done;
    if (cudaMemsetAsync(a, 0, bytes, cu->stream) != cudaSuccess ||
        cudaMemsetAsync(b, 0, bytes, cu->stream) != cudaSuccess)
        goto done;
    for (int rep = 0; rep < 6; rep++) {
        const float one = 1.0f, zero = 0.0f;
        if (cudaEventRecord(e0, cu->stream) != cudaSuccess) goto done;
        if (gemm_sb(cu, h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, 0, b, n, 0, &zero, c,
                    n, 0, 1) != CUBLAS_STATUS_SUCCESS)
            goto done;
        float ms = 0;
        if (cudaEventRecord(e1, cu->stream) != cudaSuccess ||
            cudaEventSynchronize(e1) != cudaSuccess ||
            cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
            goto done;
        const double g = 2.0 * n * (double)n * n / (ms * 1e-3) / 1e9;
        if (rep > 0 && g > best) best = g; /* the first run warms up */
    }
done:
    (void)cudaGetLastError();
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    cu->peak[cu->precision] = best;
    return best;
}

extern "C" int dfx_cuda_select(long idx, dfx_error *err)
{
    int n = dfx_cuda_device_count();
    if (idx >= n)
        return dfx_fail(err, "--device cuda:%ld: there are %d CUDA device(s)", idx, n);
    cudaError_t ce = cudaSetDevice((int)idx);
    if (ce != cudaSuccess) {
        (void)cudaGetLastError();
        return dfx_fail(err, "--device cuda:%ld: %s", idx, cudaGetErrorString(ce));
    }
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

/* The CUDA architectures this build carries (CMAKE_CUDA_ARCHITECTURES). */
#ifndef DFX_CUDA_ARCHS
#define DFX_CUDA_ARCHS "?"
#endif

/* "driver CUDA 12.4, runtime CUDA 13.0", or that there is no driver. */
static void driver_versions(char *buf, size_t n)
{
    int dv = 0, rv = 0;
    (void)cudaDriverGetVersion(&dv);
    (void)cudaRuntimeGetVersion(&rv);
    (void)cudaGetLastError();
    if (dv == 0)
        snprintf(buf, n, "no NVIDIA driver loaded; runtime CUDA %d.%d", rv / 1000, rv % 1000 / 10);
    else
        snprintf(buf, n, "driver CUDA %d.%d, runtime CUDA %d.%d%s", dv / 1000, dv % 1000 / 10,
                 rv / 1000, rv % 1000 / 10,
                 dv < rv ? ": the driver is too old for this build, update it" : "");
}

extern "C" dfx_backend *dfx_backend_cuda_create(dfx_error *err)
{
    int n = 0;
    char ver[160];
    cudaError_t ce = cudaGetDeviceCount(&n);
    if (ce != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        driver_versions(ver, sizeof ver);
        dfx_fail(err, "--device cuda: no CUDA device found (cudaGetDeviceCount: %s; %s)",
                 ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices", ver);
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
        driver_versions(ver, sizeof ver);
        if (ce == cudaErrorUnsupportedPtxVersion || ce == cudaErrorInsufficientDriver)
            dfx_fail(err,
                     "--device cuda: %s (compute capability %d.%d) has no machine code in this "
                     "build (CUDA architectures %s) and its driver cannot compile the build's "
                     "PTX: %s (%s); update the driver, or reconfigure with "
                     "-DCMAKE_CUDA_ARCHITECTURES=%d%d",
                     prop.name, prop.major, prop.minor, DFX_CUDA_ARCHS, cudaGetErrorString(ce),
                     ver, prop.major, prop.minor);
        else
            dfx_fail(err,
                     "--device cuda: this build has no code for %s (compute capability %d.%d; "
                     "built for CUDA architectures %s): %s; reconfigure with "
                     "-DCMAKE_CUDA_ARCHITECTURES=%d%d (or add %d%d to that list)",
                     prop.name, prop.major, prop.minor, DFX_CUDA_ARCHS, cudaGetErrorString(ce),
                     prop.major, prop.minor, prop.major, prop.minor);
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
    snprintf(be->device, sizeof be->device, "%.96s (sm_%d%d, %.0f GiB)", prop.name, prop.major,
             prop.minor, prop.totalGlobalMem / 1073741824.0);
    be->impl = cu;
    if (cu_init(cu, err)) {
        dfx_fail_prefix(err, "--device cuda: %s", prop.name);
        cu_destroy(be);
        return NULL;
    }
    return be;
}
