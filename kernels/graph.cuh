/*
 * CUDA graphs (graph_begin .. graph_free in backend.h): a fixed sequence of
 * ops (one network evaluation, dfx_net_predict_graph in host/model/net.c)
 * is captured once with cudaStreamBeginCapture and replayed with one
 * cudaGraphLaunch. The kernels
 * of a graph read their host data (coefficients, times, labels) from one
 * device block of the graph's own: in the measure pass each op that stages
 * host data notes its region of the block (graph_take in memory.cuh,
 * instead of taking a staging slot), the capture pass writes the data into
 * a host copy of the block and records the kernels on the block's device
 * half, and a refill pass writes the next call's data into the same
 * regions, in the same order. Nothing of this is captured: graph_launch
 * copies the host copy to the device block through a staging slot (the
 * same ring and events as eager staging, so the host copy may be
 * rewritten as soon as graph_launch returns, and a launch never
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
 * CPU reference: none: the CPU backend has no graphs (host/cpu/backend_cpu.c
 * leaves graph_begin .. graph_free NULL); host/model/net.c is the
 * caller.
 */
#pragma once

#include "common.cuh"
#include "memory.cuh"
#include "linear.cuh"

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
        rc = cu_fail(err, op, "cudaStreamEndCapture", ce, __FILE__, __LINE__);
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
            rc = cu_fail(err, op, "cudaGraphInstantiateWithFlags", ce, __FILE__, __LINE__);
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
    if (!CU_RECORD(cu, "graph_free", cudaStreamSynchronize(cu->stream), NULL, 0))
        release_deferred(cu);
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->dev) CU_RECORD(cu, "graph_free", cudaFree(g->dev), NULL, 0);
    free(g->host);
    free(g->reg);
    free(g);
}
