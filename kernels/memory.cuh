/*
 * Device memory and staging: the deferred frees and the scratch buffer,
 * the ring of pinned staging slots that carries host coefficient arrays to
 * the device (and, inside a graph pass, the regions of the graph's staging
 * block instead: graph_take), and the memory ops alloc, free, upload,
 * download, sync and copy.
 *
 * CPU reference: host/cpu/backend_cpu.c (cpu_alloc, cpu_free, cpu_copy,
 * cpu_copy_dev, cpu_sync).
 */
#pragma once

#include "common.cuh"

/* ------------------------------------------------------ staging, scratch */

/* cudaFree of the pointers cu_free held back (none of the stream's work
 * can still use them: called right after the stream has drained). Not in
 * a graph pass, where cudaFree would break a capture. */
static void release_deferred(cu_impl *cu)
{
    if (cu->gmode != GM_NONE) return;
    for (int i = 0; i < cu->ndefer; i++) CU_RECORD(cu, "free", cudaFree(cu->defer[i]), NULL, 0);
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
            if (!CU_RECORD(cu, "free", cudaStreamSynchronize(cu->stream), NULL, 0))
                CU_RECORD(cu, "free", cudaFree(p), NULL, 0);
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

/* CPU twin: cpu_copy_dev. */
static void cu_copy(dfx_backend *be, void *dst, const void *src, size_t bytes)
{
    cu_impl *cu = impl_of(be);
    if (bytes == 0 || dst == src || cu_dry(cu)) return;
    CU_RECORD(cu, "copy", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu->stream),
              bytes % sizeof(float) ? NULL : (float *)dst, bytes / sizeof(float));
}

