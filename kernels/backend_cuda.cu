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
 * derivatives for the U-Net's jvp) follow the same model; their matrix
 * products go to cuBLAS (linear.cuh).
 *
 * This file is the one translation unit of the backend (llm.c's layout):
 * it includes one header per group of ops, each of which names its CPU
 * reference at its top (kernels/README.md has the table):
 *   common.cuh       constants, checked calls (CU_TRY, CB_TRY,
 *                    CU_LAUNCH_TRY, ...), the state, sticky errors, grid
 *                    sizes, the templated warp / block reductions
 *   memory.cuh       staging slots, deferred frees; alloc .. sync, copy
 *   elementwise.cuh  lincomb, err_norm, count_nonfinite, unary, mul_add,
 *                    silu_jvp, add_channel, add, concat, upsample2x
 *   noise.cuh        normal (Philox)
 *   gmm.cuh          gmm_denoise
 *   linear.cuh       cuBLAS products, set_precision, peak_gflops; linear
 *   conv2d.cuh       conv2d, conv_scratch
 *   group_norm.cuh   group_norm, group_norm_jvp
 *   attention.cuh    attention, attention_jvp and their scratch sizes
 *   embed.cuh        time_embed, embed_add
 *   graph.cuh        graph_begin .. graph_free
 * and holds the op table, device selection and backend creation itself.
 */
#include "common.cuh"
#include "memory.cuh"
#include "elementwise.cuh"
#include "noise.cuh"
#include "gmm.cuh"
#include "linear.cuh"
#include "conv2d.cuh"
#include "group_norm.cuh"
#include "attention.cuh"
#include "embed.cuh"
#include "graph.cuh"

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

/* ------------------------------------------------- devices, creation */

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
