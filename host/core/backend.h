/*
 * The backend seam: one small table of operations that model and sampler
 * code call. The CPU backend (backend_cpu.c) is the plain-C reference; the
 * CUDA backend (kernels/) implements the same table. Pointers handed to the
 * compute ops live on the backend (host memory for CPU, device memory for
 * CUDA); small per-row coefficient arrays are host arrays.
 *
 * Shapes: rows = samples in the batch, cols = values per sample.
 * Host arrays passed to an op (coefficients, times, labels) are consumed
 * before the op returns; the caller may reuse them at once.
 */
#ifndef DFX_BACKEND_H
#define DFX_BACKEND_H

#include "difflux.h"

#define DFX_LINCOMB_MAX 8

enum { DFX_FN_EXP = 0, DFX_FN_LOG = 1 };

/* A recorded sequence of ops (see graph_begin below); the backend's own. */
typedef struct dfx_graph dfx_graph;

/* A Gaussian mixture resident on a backend (see model_gmm.c). */
typedef struct dfx_gmm_dev {
    int K;
    size_t dim;
    const float *means; /* [K, dim] */
    const float *c2;    /* [K] component variances c_k^2 */
    const float *logw;  /* [K] log weights */
} dfx_gmm_dev;

typedef struct dfx_backend_ops {
    /* Memory. alloc returns NULL when out of memory. */
    void *(*alloc)(dfx_backend *be, size_t bytes);
    void (*free)(dfx_backend *be, void *p);
    int (*upload)(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err);
    int (*download)(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err);
    /* Waits for queued work and reports any error it hit. */
    int (*sync)(dfx_backend *be, dfx_error *err);

    /* out[r, j] = c0[r] + sum_i coef[i * rows + r] * x_i[r, j], computed
     * in double. Terms whose coefficient is exactly 0 are not read (so a
     * NaN there cannot leak in). c0 may be NULL. out may alias any x_i. */
    void (*lincomb)(dfx_backend *be, float *out, int k, const float *const *x,
                    const double *coef, const double *c0, int rows, size_t cols);
    /* Standard normals, Philox counters (seed, first_index + r, draw, stream). */
    void (*normal)(dfx_backend *be, float *out, uint64_t seed, uint64_t first_index, int rows,
                   size_t cols, uint32_t draw, uint32_t stream);
    /* Per-row RMS of e / (atol + rtol * max(|x0|, |x1|)) into out_host[rows]. */
    int (*err_norm)(dfx_backend *be, const float *e, const float *x0, const float *x1,
                    double rtol, double atol, int rows, size_t cols, double *out_host,
                    dfx_error *err);
    /* Number of NaN or Inf values among x[0..n). */
    int (*count_nonfinite)(dfx_backend *be, const float *x, size_t n, size_t *count,
                           dfx_error *err);
    /* y = exp(x) (fn DFX_FN_EXP) or log(x) (DFX_FN_LOG) elementwise, n values;
     * y may alias x. */
    void (*unary)(dfx_backend *be, float *y, const float *x, size_t n, int fn);
    /* y = a * b + c elementwise (c a scalar); y may alias a or b. */
    void (*mul_add)(dfx_backend *be, float *y, const float *a, const float *b, double c,
                    size_t n);
    /* Exact denoiser of a Gaussian mixture under a path with per-row
     * coefficients a[r], s[r], m[r] (MATH.md section 6). */
    void (*gmm_denoise)(dfx_backend *be, float *out, const float *x, int rows,
                        const dfx_gmm_dev *g, const double *a, const double *s,
                        const double *m);

    /* ---- network layers (NCHW per sample, B samples; see models/UNET.md) ---- */
    /* y [B, Cout, Ho, Wo] = conv(x [B, Cin, H, W], w [Cout, Cin, k, k]) + bias,
     * Ho = (H + 2 pad - k) / stride + 1. scratch: conv_scratch() floats. */
    void (*conv2d)(dfx_backend *be, float *y, const float *x, const float *w,
                   const float *bias, int B, int Cin, int H, int W, int Cout, int k,
                   int stride, int pad, float *scratch);
    /* GroupNorm over (C / groups) x HW per group, affine; SiLU after if silu. */
    void (*group_norm)(dfx_backend *be, float *y, const float *x, const float *gamma,
                       const float *beta, int B, int C, int HW, int groups, float eps,
                       int silu);
    /* y [B, out] = x [B, in] W^T + b, W [out, in]; SiLU on x first if silu_in. */
    void (*linear)(dfx_backend *be, float *y, const float *x, const float *w, const float *b,
                   int B, int in, int out, int silu_in);
    /* y[b, c, :] += e[b, c] (per-channel bias, e [B, C]) */
    void (*add_channel)(dfx_backend *be, float *y, const float *e, int B, int C, int HW);
    /* y = a + b, n values (y may alias a or b) */
    void (*add)(dfx_backend *be, float *y, const float *a, const float *b, size_t n);
    /* y [B, Ca + Cb, HW] = channels of a [B, Ca, HW] then b [B, Cb, HW] */
    void (*concat)(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                   int B, int HW);
    /* nearest-neighbour x2: y [B, C, 2H, 2W] */
    void (*upsample2x)(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W);
    /* multi-head self-attention: qkv [B, 3C, HW] (q, k, v thirds), o [B, C, HW];
     * scratch: attention_scratch() floats. */
    void (*attention)(dfx_backend *be, float *o, const float *qkv, int B, int C, int HW,
                      int heads, float *scratch);
    /* sinusoidal embedding of u = t[b] * scale + offset (host array t):
     * [sin(u f_i)..., cos(u f_i)...] (cos first if flip), f_i = exp(-ln(10000)
     * i / (dim/2 - shift)) (diffusers' downscale_freq_shift); y [B, dim] */
    void (*time_embed)(dfx_backend *be, float *y, const double *t, int B, int dim,
                       double scale, double offset, int shift, int flip);
    /* y[b, :] += table[idx[b], :] (host idx), y [B, dim] */
    void (*embed_add)(dfx_backend *be, float *y, const float *table, const int *idx, int B,
                      int dim);

    /* ---- tangents (forward-mode derivatives) of the nonlinear layers ----
     * Each gives d/de layer(x + e dx) at e = 0 for the layer above with the
     * same arguments; the linear layers (conv2d and linear without bias,
     * add, concat, upsample2x) are their own tangents. */
    /* dy = tangent of group_norm(x) (SiLU after if silu) along dx, same
     * shapes; the group statistics of x are recomputed in double as
     * group_norm does: with xh = (x - mean) inv, inv = 1 / sqrt(var + eps),
     * dxh = inv (dx - mean(dx) - xh mean(xh dx)) and dy = gamma dxh, times
     * SiLU'(v) at the forward's v = gamma xh + beta if silu. */
    void (*group_norm_jvp)(dfx_backend *be, float *dy, const float *x, const float *dx,
                           const float *gamma, const float *beta, int B, int C, int HW,
                           int groups, float eps, int silu);
    /* dout [B, C, HW] = tangent of attention(qkv) along dqkv [B, 3C, HW]:
     * per head (q, k, v [d, HW]), with S = q^T k / sqrt(d), P =
     * softmax_rows(S) as attention computes it, dS = (dq^T k + q^T dk) /
     * sqrt(d), dP = P * (dS - rowsum(P * dS)) elementwise, and
     * dout = dv P^T + v dP^T. scratch: attention_jvp_scratch() floats. */
    void (*attention_jvp)(dfx_backend *be, float *dout, const float *qkv, const float *dqkv,
                          int B, int C, int HW, int heads, float *scratch);
    /* dy = SiLU'(x) dx elementwise, n values, SiLU'(x) = s (1 + x (1 - s)),
     * s = sigmoid(x): the tangent of linear's silu_in (dy may alias dx). */
    void (*silu_jvp)(dfx_backend *be, float *dy, const float *x, const float *dx, size_t n);

    /* Measured FP32 matrix-multiply rate of the device in GFLOP/s (a large
     * GEMM), the reference for "fraction of peak"; may be NULL. */
    double (*peak_gflops)(dfx_backend *be);
    /* Scratch (floats) conv2d, attention and attention_jvp need for a batch
     * of B. */
    size_t (*conv_scratch)(dfx_backend *be, int B, int Cin, int H, int W, int k, int stride,
                           int pad);
    size_t (*attention_scratch)(dfx_backend *be, int B, int C, int HW, int heads);
    size_t (*attention_jvp_scratch)(dfx_backend *be, int B, int C, int HW, int heads);
    /* Precision of the matrix products (DFX_PRECISION_*); NULL: FP32 only. */
    int (*set_precision)(dfx_backend *be, int mode, dfx_error *err);

    void (*destroy)(dfx_backend *be);

    /* (after destroy, so positional initialisers may leave these out) */
    /* dst = src, `bytes` bytes of backend memory, queued in order with the
     * compute ops (dst and src do not overlap). */
    void (*copy)(dfx_backend *be, void *dst, const void *src, size_t bytes);

    /* ---- graphs: a fixed sequence of compute ops recorded once and
     * replayed (CUDA graphs). Optional: all NULL where the backend has none
     * (the CPU backend). The recorded sequence must be the same calls with
     * the same pointers, shapes and scalars every time; only the contents of
     * the host arrays the ops take (lincomb's coefficients, time_embed's
     * times, embed_add's labels, gmm_denoise's a, s, m) may change between
     * replays. Recording takes three steps, each a pass of that sequence:
     *
     *   g = graph_begin(be)   measure pass: the ops run nothing and note the
     *                         host data they stage;
     *   graph_capture(be, g)  capture pass: the ops are recorded, not run;
     *                         their host data goes to g's own staging memory;
     *   graph_end(be, g)      g is ready (nothing has run yet);
     *
     * and each replay: graph_refill(be, g), a refill pass (the ops run
     * nothing and write their current host data into g's staging memory,
     * in the same order), then graph_launch(be, g), which queues the
     * recorded work on that data (if an op of the refill pass failed, it
     * launches nothing and reports that). graph_launch also runs g right
     * after graph_end, on the capture pass's data. Passes are made from one
     * thread, one at a time; ops that wait for the device (upload, download,
     * sync, err_norm, count_nonfinite) fail inside a pass, and compute ops
     * that fail there report to the pass, not to the sticky error: a failed
     * graph_begin, graph_capture or graph_end leaves the backend as it was
     * once the caller has called graph_free, so the caller may run the
     * same ops eagerly instead. graph_free also ends a pass in progress. */
    dfx_graph *(*graph_begin)(dfx_backend *be, dfx_error *err);
    int (*graph_capture)(dfx_backend *be, dfx_graph *g, dfx_error *err);
    int (*graph_end)(dfx_backend *be, dfx_graph *g, dfx_error *err);
    int (*graph_refill)(dfx_backend *be, dfx_graph *g, dfx_error *err);
    int (*graph_launch)(dfx_backend *be, dfx_graph *g, dfx_error *err);
    void (*graph_free)(dfx_backend *be, dfx_graph *g);

    /* Optional (NULL: the caller runs the two ops): group_norm (with SiLU
     * if silu) of x, then a 3x3 stride-1 "same" conv2d of the result, in
     * one pass, for a batch of B >= threads, without writing the
     * normalised activations anywhere; the values are exactly those of the
     * two ops. scratch: conv_scratch(be, B, Cin, H, W, 3, 1, 1) floats. */
    void (*gn_conv3)(dfx_backend *be, float *y, const float *x, const float *gamma,
                     const float *beta, int groups, float eps, int silu, const float *w,
                     const float *bias, int B, int Cin, int H, int W, int Cout, float *scratch);
} dfx_backend_ops;

struct dfx_backend {
    const dfx_backend_ops *ops;
    const char *name;
    int threads;
    int precision; /* DFX_PRECISION_* */
    void *impl;
    char device[128]; /* the processor, in words ("" if unknown) */
};

dfx_backend *dfx_backend_cpu_create(int threads, dfx_error *err);
#ifdef DFX_HAVE_CUDA
dfx_backend *dfx_backend_cuda_create(dfx_error *err);
/* Number of usable CUDA devices (0 when none or no driver). */
int dfx_cuda_device_count(void);
/* Makes device idx current for this thread (before dfx_backend_cuda_create). */
int dfx_cuda_select(long idx, dfx_error *err);
#endif

/* Allocation that reports what it was for. */
void *dfx_be_alloc(dfx_backend *be, size_t bytes, const char *what, dfx_error *err);

#endif
