/*
 * Network layers on the CPU: the reference for the CUDA kernels. The
 * convolutions' products are gemm_cpu.c's, the other matrix work goes to
 * OpenBLAS (single-threaded per call); samples of a batch run
 * in parallel with OpenMP, each computed the same way whatever the batch,
 * so a sample's result does not depend on the batch it is in.
 */
#include "cpu/nn_cpu.h"

#include "cpu/cpu_isa.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int tid(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Threads for a loop over B samples. */
static int nthreads(const dfx_backend *be, int B)
{
    return B < be->threads ? (B > 0 ? B : 1) : be->threads;
}

/* The same for a loop of `tasks` over `work` values in all: waking a thread
 * costs more than a few tens of thousands of values take. */
static int nthreads_work(const dfx_backend *be, int tasks, size_t work)
{
    return work < ((size_t)1 << 16) ? 1 : nthreads(be, tasks);
}

static size_t conv_col(int Cin, int H, int W, int k, int stride, int pad)
{
    if (k == 1 && stride == 1 && pad == 0) return 0;
    size_t Ho = (size_t)(H + 2 * pad - k) / stride + 1, Wo = (size_t)(W + 2 * pad - k) / stride + 1;
    return (size_t)Cin * k * k * Ho * Wo;
}

static int conv3_direct(int k, int stride, int pad)
{
    return k == 3 && stride == 1 && pad == 1;
}

/* per thread: the padded input of a 3x3 convolution and a tile, or the
 * im2col matrix and the product's packed columns */
static size_t conv_per_thread(int Cin, int H, int W, int k, int stride, int pad)
{
    if (conv3_direct(k, stride, pad)) return dfx_cpu_conv3_scratch(Cin, H, W);
    return conv_col(Cin, H, W, k, stride, pad) + dfx_cpu_gemm_scratch(Cin * k * k);
}

size_t dfx_cpu_conv_scratch(dfx_backend *be, int B, int Cin, int H, int W, int k, int stride,
                            int pad)
{
    int nt = nthreads(be, B);
    if (nt < be->threads) nt = be->threads; /* a lone sample splits its columns */
    return (size_t)nt * conv_per_thread(Cin, H, W, k, stride, pad);
}

/* Per thread: one head's transposed probabilities P^T [HW, HW] and the
 * products' scratch. */
static size_t attn_per_thread(int C, int HW, int heads)
{
    const int d = C / heads, K = d > HW ? d : HW;
    return (size_t)HW * HW + dfx_cpu_gemm_scratch(K);
}

size_t dfx_cpu_attention_scratch(dfx_backend *be, int B, int C, int HW, int heads)
{
    return (size_t)nthreads(be, B) * attn_per_thread(C, HW, heads);
}

/* P^T and dP^T of one head per thread, and the column sums of the tangent. */
size_t dfx_cpu_attention_jvp_scratch(dfx_backend *be, int B, int C, int HW, int heads)
{
    return (size_t)nthreads(be, B) * (attn_per_thread(C, HW, heads) + (size_t)HW * HW + 2 * HW);
}

/* col [Cin k k, Ho Wo]: the receptive fields of x [Cin, H, W] as columns,
 * the rows of channels c0 .. Cin - 1.
 * Each output row is a run of in-bounds input (a memcpy at stride 1)
 * between zero padding. */
static void im2col(float *col, const float *x, int c0, int Cin, int H, int W, int k, int stride,
                   int pad, int Ho, int Wo)
{
    if (stride == 1 && Ho == H && Wo == W) {
        /* "same" convolution: each row block is the plane shifted by (dy,
         * dx): one contiguous copy of the rows that exist, then zeros in
         * the dx columns that wrapped around from the neighbouring row */
        const size_t HW = (size_t)H * W;
        for (int c = c0; c < Cin; c++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    float *row = col + ((size_t)(c * k + ky) * k + kx) * HW;
                    const float *xc = x + (size_t)c * HW;
                    const int dy = ky - pad, dx = kx - pad;
                    int oy0 = dy < 0 ? -dy : 0, oy1 = dy > 0 ? H - dy : H;
                    if (oy0 > H) oy0 = H;
                    if (oy1 < oy0) oy1 = oy0;
                    memset(row, 0, (size_t)oy0 * W * sizeof(float));
                    memset(row + (size_t)oy1 * W, 0, (size_t)(H - oy1) * W * sizeof(float));
                    long d0 = (long)oy0 * W, d1 = (long)oy1 * W; /* destination span */
                    long s0 = d0 + (long)dy * W + dx;           /* its source */
                    if (s0 < 0) d0 -= s0, s0 = 0;
                    if (s0 + (d1 - d0) > (long)HW) d1 = d0 + ((long)HW - s0);
                    if (d1 > d0) memcpy(row + d0, xc + s0, (size_t)(d1 - d0) * sizeof(float));
                    for (int oy = oy0; oy < oy1; oy++) {
                        float *r = row + (size_t)oy * W;
                        if (dx > 0)
                            for (int ox = W - dx; ox < W; ox++) r[ox] = 0.0f;
                        else
                            for (int ox = 0; ox < -dx && ox < W; ox++) r[ox] = 0.0f;
                    }
                    /* positions the clipped copy did not reach are boundary
                     * columns, zeroed just above */
                }
        return;
    }
    for (int c = c0; c < Cin; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *row = col + ((size_t)(c * k + ky) * k + kx) * Ho * Wo;
                const float *xc = x + (size_t)c * H * W;
                /* ox in [ox0, ox1) reads ix = ox stride - pad + kx in [0, W) */
                int ox0 = pad - kx > 0 ? (pad - kx + stride - 1) / stride : 0;
                int ox1 = W - 1 + pad - kx >= 0 ? (W - 1 + pad - kx) / stride + 1 : 0;
                if (ox0 > Wo) ox0 = Wo;
                if (ox1 > Wo) ox1 = Wo;
                if (ox1 < ox0) ox1 = ox0;
                for (int oy = 0; oy < Ho; oy++) {
                    float *r = row + (size_t)oy * Wo;
                    const int iy = oy * stride - pad + ky;
                    if (iy < 0 || iy >= H) {
                        memset(r, 0, (size_t)Wo * sizeof(float));
                        continue;
                    }
                    for (int ox = 0; ox < ox0; ox++) r[ox] = 0.0f;
                    if (ox1 > ox0) {
                        const float *src = xc + (size_t)iy * W + (ox0 * stride - pad + kx);
                        if (stride == 1)
                            memcpy(r + ox0, src, (size_t)(ox1 - ox0) * sizeof(float));
                        else
                            for (int ox = ox0; ox < ox1; ox++)
                                r[ox] = src[(size_t)(ox - ox0) * stride];
                    }
                    for (int ox = ox1; ox < Wo; ox++) r[ox] = 0.0f;
                }
            }
}

/* The first column of thread j's share when `blocks` tiles of nb columns
 * are split over nt threads (tile boundaries only). */
static int tile_split(int blocks, int nb, int j, int nt)
{
    return (int)((long)blocks * j / nt) * nb;
}

static void conv3(dfx_backend *be, float *y, const float *x, const float *w, const float *bias,
                  int B, int Cin, int H, int W, int Cout, float *scratch)
{
    const size_t thr = conv_per_thread(Cin, H, W, 3, 1, 1), pad = dfx_cpu_conv3_padded(Cin, H, W);
    const int nb = dfx_cpu_gemm_block(), N = dfx_cpu_conv3_columns(H, W),
              blocks = (N + nb - 1) / nb;
    if (B < be->threads && blocks > 1) {
        /* one static piece of columns per thread: finer pieces taken as
         * threads come free were slower, idle and shared alike
         * (BENCHMARKS.md, "OpenMP waiting") */
        const int nt = be->threads < blocks ? be->threads : blocks;
        dfx_cpu_conv3_pad_tail(scratch, Cin, H, W);
        for (int b = 0; b < B; b++) {
#pragma omp parallel num_threads(nt)
            {
#pragma omp for schedule(static)
                for (int c = 0; c < Cin; c++)
                    dfx_cpu_conv3_pad(scratch, x + (size_t)b * Cin * H * W, c, c + 1, H, W);
                float *out = scratch + pad + (size_t)tid() * (thr - pad);
#pragma omp for schedule(static)
                for (int j = 0; j < nt; j++)
                    dfx_cpu_conv3(y + (size_t)b * Cout * H * W, w, Cout, Cin, H, W, scratch,
                                  tile_split(blocks, nb, j, nt), tile_split(blocks, nb, j + 1, nt),
                                  bias, out);
            }
        }
        return;
    }
    const int nt = nthreads(be, B);
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        float *xp = scratch + (size_t)tid() * thr;
        dfx_cpu_conv3_pad_tail(xp, Cin, H, W);
        dfx_cpu_conv3_pad(xp, x + (size_t)b * Cin * H * W, 0, Cin, H, W);
        dfx_cpu_conv3(y + (size_t)b * Cout * H * W, w, Cout, Cin, H, W, xp, 0, blocks * nb, bias,
                      xp + pad);
    }
}

/* y = w * im2col(x) + bias per sample (gemm_cpu.c). Samples run in
 * parallel; a batch smaller than the thread count goes one sample at a
 * time, its im2col split by channels and its columns by tiles over the
 * threads. Either way each value is computed the same way. */
void dfx_cpu_conv2d(dfx_backend *be, float *y, const float *x, const float *w, const float *bias,
                    int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                    float *scratch)
{
    if (conv3_direct(k, stride, pad)) {
        conv3(be, y, x, w, bias, B, Cin, H, W, Cout, scratch);
        return;
    }
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    const int N = Ho * Wo, K = Cin * k * k;
    const size_t per = conv_col(Cin, H, W, k, stride, pad),
                 thr = conv_per_thread(Cin, H, W, k, stride, pad);
    const int nb = dfx_cpu_gemm_block(), blocks = (N + nb - 1) / nb;
    if (B < be->threads && blocks > 1) {
        const int nt = be->threads < blocks ? be->threads : blocks;
        for (int b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * Cin * H * W;
            float *yb = y + (size_t)b * Cout * N;
            const float *col = per ? scratch : xb;
#pragma omp parallel num_threads(nt)
            {
                if (per) {
#pragma omp for schedule(static)
                    for (int c = 0; c < Cin; c++)
                        im2col(scratch, xb, c, c + 1, H, W, k, stride, pad, Ho, Wo);
                }
                float *gs = scratch + per + (size_t)tid() * dfx_cpu_gemm_scratch(K);
#pragma omp for schedule(static)
                for (int j = 0; j < nt; j++) {
                    const int n0 = tile_split(blocks, nb, j, nt),
                              n1 = j + 1 == nt ? N : tile_split(blocks, nb, j + 1, nt);
                    dfx_cpu_gemm_bias(yb, N, w, Cout, K, col, N, n0, n1, bias, gs);
                }
            }
        }
        return;
    }
    const int nt = nthreads(be, B);
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * Cin * H * W;
        float *yb = y + (size_t)b * Cout * N;
        float *c = scratch + (size_t)tid() * thr;
        if (per) im2col(c, xb, 0, Cin, H, W, k, stride, pad, Ho, Wo);
        dfx_cpu_gemm_bias(yb, N, w, Cout, K, per ? c : xb, N, 0, N, bias, c + per);
    }
}

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* SiLU'(v) = s (1 + v (1 - s)), s = sigmoid(v): 0 and 1 at the far ends
 * (expf(-v) = inf gives s = 0, no NaN). */
static inline float dsilu(float v)
{
    float s = 1.0f / (1.0f + expf(-v));
    return s * (1.0f + v * (1.0f - s));
}

/* The scale and shift of each channel of group g (channels g cg .. (g + 1)
 * cg - 1) of one sample x [C, HW]: GroupNorm is y = x sc[c] + sh[c]; the
 * group's mean and 1 / sqrt(var + eps) into *mean, *inv. */
static void gn_coefs(float *sc, float *sh, double *mean, double *inv, const float *x,
                     const float *gamma, const float *beta, int g, int cg, int HW, float eps)
{
    dfx_cpu_kernels_get()->gn_stats(x + (size_t)g * cg * HW, (size_t)cg * HW, eps, mean, inv);
    for (int c = 0; c < cg; c++) {
        const int ch = g * cg + c;
        sc[c] = (float)(*inv * gamma[ch]);
        sh[c] = (float)(beta[ch] - *mean * *inv * gamma[ch]);
    }
}

/* Group g of one sample x [C, HW] into y. */
static void gn_group(float *y, const float *x, const float *gamma, const float *beta, int g,
                     int cg, int HW, float eps, int act)
{
    const size_t off = (size_t)g * cg * HW;
    const dfx_cpu_kernels *kn = dfx_cpu_kernels_get();
    float sc[cg], sh[cg];
    double mean, inv;
    gn_coefs(sc, sh, &mean, &inv, x, gamma, beta, g, cg, HW, eps);
    for (int c = 0; c < cg; c++)
        kn->gn_apply(y + off + (size_t)c * HW, x + off + (size_t)c * HW, HW, sc[c], sh[c], act);
}

void dfx_cpu_group_norm(dfx_backend *be, float *y, const float *x, const float *gamma,
                        const float *beta, int B, int C, int HW, int groups, float eps, int act)
{
    int nt = nthreads_work(be, B * groups, (size_t)B * C * HW);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bg = 0; bg < B * groups; bg++) {
        const size_t off = (size_t)(bg / groups) * C * HW;
        gn_group(y + off, x + off, gamma, beta, bg % groups, C / groups, HW, eps, act);
    }
}

/* GroupNorm(+SiLU) of one sample applied in place to its zero-bordered
 * copy, then the 3x3 convolution of that: the normalised activations stay
 * in the cache instead of going through memory for the whole batch. The
 * statistics and the elementwise function are group_norm's own (gn_coefs,
 * gn_apply), so the values are bit for bit those of the two ops; the
 * border zeros that gn_apply passes over are zeroed again. */
void dfx_cpu_gn_conv3(dfx_backend *be, float *y, const float *x, const float *gamma,
                      const float *beta, int groups, float eps, int act, const float *w,
                      const float *bias, int B, int Cin, int H, int W, int Cout, float *scratch)
{
    const int HW = H * W, cg = Cin / groups, Wp = dfx_cpu_conv3_row_stride(W);
    const size_t thr = conv_per_thread(Cin, H, W, 3, 1, 1);
    const int nb = dfx_cpu_gemm_block(), N = dfx_cpu_conv3_columns(H, W),
              blocks = (N + nb - 1) / nb;
    const dfx_cpu_kernels *kn = dfx_cpu_kernels_get();
    const int nt = nthreads(be, B);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        float *xp = scratch + (size_t)tid() * thr;
        const float *xb = x + (size_t)b * Cin * HW;
        dfx_cpu_conv3_pad_tail(xp, Cin, H, W);
        dfx_cpu_conv3_pad(xp, xb, 0, Cin, H, W);
        for (int g = 0; g < groups; g++) {
            float sc[cg], sh[cg];
            double mean, inv;
            gn_coefs(sc, sh, &mean, &inv, xb, gamma, beta, g, cg, HW, eps);
            for (int c = 0; c < cg; c++) {
                float *p = dfx_cpu_conv3_plane(xp, g * cg + c, H, W);
                kn->gn_apply(p, p, (H - 1) * Wp + W, sc[c], sh[c], act);
                for (int iy = 0; iy + 1 < H; iy++) p[(size_t)iy * Wp + W] = 0.0f;
            }
        }
        dfx_cpu_conv3(y + (size_t)b * Cout * HW, w, Cout, Cin, H, W, xp, 0, blocks * nb, bias,
                      xp + dfx_cpu_conv3_padded(Cin, H, W));
    }
}

/* The tangent of dfx_cpu_group_norm, with the same statistics and
 * coefficients (gn_coefs) and the forward value v at which SiLU' is taken. */
void dfx_cpu_group_norm_jvp(dfx_backend *be, float *dy, const float *x, const float *dx,
                            const float *gamma, const float *beta, int B, int C, int HW,
                            int groups, float eps, int act)
{
    const int cg = C / groups;
    const size_t n = (size_t)cg * HW;
    int nt = nthreads_work(be, B * groups, (size_t)B * C * HW);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bg = 0; bg < B * groups; bg++) {
        int b = bg / groups, g = bg % groups;
        size_t off = ((size_t)b * C + (size_t)g * cg) * HW;
        const float *xs = x + off, *ds = dx + off;
        float sc[cg], sh[cg];
        double mean, inv;
        gn_coefs(sc, sh, &mean, &inv, x + (size_t)b * C * HW, gamma, beta, g, cg, HW, eps);
        /* mean(dx) and mean(xh dx), xh = (x - mean) inv */
        double sd = 0.0, sxd = 0.0;
        for (size_t i = 0; i < n; i++) {
            sd += ds[i];
            sxd += (xs[i] - mean) * ds[i];
        }
        const double dmean = sd / (double)n, cxd = sxd * inv / (double)n;
        for (int c = 0; c < cg; c++) {
            int ch = g * cg + c;
            const float *xc = xs + (size_t)c * HW, *dc = ds + (size_t)c * HW;
            float *yc = dy + off + (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                double xh = (xc[i] - mean) * inv;
                double dv = gamma[ch] * inv * (dc[i] - dmean - xh * cxd);
                /* the forward's v, to rounding (the kernels fuse its multiply-add) */
                if (act) dv *= dsilu(xc[i] * sc[c] + sh[c]);
                yc[i] = (float)dv;
            }
        }
    }
}

void dfx_cpu_silu_jvp(dfx_backend *be, float *dy, const float *x, const float *dx, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) dy[i] = dsilu(x[i]) * dx[i];
}

void dfx_cpu_linear(dfx_backend *be, float *y, const float *x, const float *w, const float *b,
                    int B, int in, int out, int silu_in)
{
    (void)be;
    /* one row at a time: a sample's result never depends on the batch */
    enum { CHUNK = 4096 };
    float tmp[CHUNK];
    for (int r = 0; r < B; r++) {
        const float *xr = x + (size_t)r * in;
        float *yr = y + (size_t)r * out;
        for (int o = 0; o < out; o++) yr[o] = b ? b[o] : 0.0f;
        if (!silu_in) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, xr, 1, 1.0f, yr, 1);
            continue;
        }
        /* SiLU(x) through a stack buffer, a chunk of inputs at a time */
        for (int i0 = 0; i0 < in; i0 += CHUNK) {
            const int m = in - i0 < CHUNK ? in - i0 : CHUNK;
            for (int i = 0; i < m; i++) tmp[i] = silu(xr[i0 + i]);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, out, m, 1.0f, w + i0, in, tmp, 1, 1.0f, yr,
                        1);
        }
    }
}

/* The memory-bound layers: one pass each, split over samples (channel
 * planes) when there is enough of it to wake the threads for. */
void dfx_cpu_add_channel(dfx_backend *be, float *y, const float *e, int B, int C, int HW)
{
    int nt = nthreads_work(be, B * C, (size_t)B * C * HW);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bc = 0; bc < B * C; bc++) {
        const float v = e[bc];
        float *yc = y + (size_t)bc * HW;
        for (int i = 0; i < HW; i++) yc[i] += v;
    }
}

void dfx_cpu_add(dfx_backend *be, float *y, const float *a, const float *b, size_t n)
{
    enum { CHUNK = 1 << 14 };
    const long chunks = (long)((n + CHUNK - 1) / CHUNK);
    int nt = nthreads_work(be, (int)(chunks < be->threads ? chunks : be->threads), n);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long c = 0; c < chunks; c++) {
        const size_t i0 = (size_t)c * CHUNK, i1 = i0 + CHUNK < n ? i0 + CHUNK : n;
        for (size_t i = i0; i < i1; i++) y[i] = a[i] + b[i];
    }
}

void dfx_cpu_concat(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                    int B, int HW)
{
    int nt = nthreads_work(be, B, (size_t)B * (Ca + Cb) * HW);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int s = 0; s < B; s++) {
        float *ys = y + (size_t)s * (Ca + Cb) * HW;
        memcpy(ys, a + (size_t)s * Ca * HW, sizeof(float) * (size_t)Ca * HW);
        memcpy(ys + (size_t)Ca * HW, b + (size_t)s * Cb * HW, sizeof(float) * (size_t)Cb * HW);
    }
}

void dfx_cpu_upsample2x(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W)
{
    int nt = nthreads_work(be, B * C, (size_t)B * C * 4 * H * W);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bc = 0; bc < B * C; bc++) {
        const float *xc = x + (size_t)bc * H * W;
        float *yc = y + (size_t)bc * 4 * H * W;
        for (int i = 0; i < H; i++) {
            float *r = yc + (size_t)2 * i * 2 * W;
            for (int j = 0; j < W; j++) r[2 * j] = r[2 * j + 1] = xc[(size_t)i * W + j];
            memcpy(r + 2 * W, r, (size_t)2 * W * sizeof(float));
        }
    }
}

/* PT [HW, HW]: PT[j, i] = softmax over j of scale sum_c q[c, i] k[c, j],
 * one head (q, k [d, HW]): the attention weights, transposed, computed the
 * same way by the forward and by its tangent. kt [HW, d] is work space
 * (the head's slice of the output, written only afterwards); gs the
 * products' scratch. */
static void attn_probs(float *PT, const float *q, const float *k, int HW, int d, float scale,
                       float *kt, float *gs)
{
    for (int c = 0; c < d; c++)
        for (int j = 0; j < HW; j++) kt[(size_t)j * d + c] = scale * k[(size_t)c * HW + j];
    dfx_cpu_gemm_bias(PT, HW, kt, HW, d, q, HW, 0, HW, NULL, gs);
    dfx_cpu_kernels_get()->softmax_cols(PT, HW, HW);
}

void dfx_cpu_attention(dfx_backend *be, float *o, const float *qkv, int B, int C, int HW,
                       int heads, float *scratch)
{
    const int d = C / heads;
    const float scale = 1.0f / sqrtf((float)d);
    const size_t thr = attn_per_thread(C, HW, heads);
    int nt = nthreads(be, B);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        float *PT = scratch + (size_t)tid() * thr, *gs = PT + (size_t)HW * HW;
        const float *base = qkv + (size_t)b * 3 * C * HW;
        for (int h = 0; h < heads; h++) {
            const float *q = base + (size_t)h * d * HW;
            const float *k = base + (size_t)(C + h * d) * HW;
            const float *v = base + (size_t)(2 * C + h * d) * HW;
            float *oh = o + ((size_t)b * C + (size_t)h * d) * HW;
            attn_probs(PT, q, k, HW, d, scale, oh, gs);
            /* o[c, i] = sum_j v[c, j] PT[j, i] */
            dfx_cpu_gemm_bias(oh, HW, v, d, HW, PT, HW, 0, HW, NULL, gs);
        }
    }
}

/* o = v P^T with P the softmax of S = scale q^T k, so
 * do = dv P^T + v dP^T, dP = P * (dS - rowsum(P * dS)) (the softmax's
 * Jacobian applied to each row of dS), dS = scale (dq^T k + q^T dk); here
 * with the transposes (PT[j, i] = P[i, j]), column by column. */
void dfx_cpu_attention_jvp(dfx_backend *be, float *dout, const float *qkv, const float *dqkv,
                           int B, int C, int HW, int heads, float *scratch)
{
    const int d = C / heads;
    const float scale = 1.0f / sqrtf((float)d);
    const size_t pt = attn_per_thread(C, HW, heads), thr = pt + (size_t)HW * HW + 2 * HW;
    int nt = nthreads(be, B);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        float *PT = scratch + (size_t)tid() * thr, *gs = PT + (size_t)HW * HW, *D = PT + pt;
        /* 2 HW floats hold HW doubles, aligned: the offsets before them (2 HW^2
         * + K nr + 256 floats per thread, nr even) are all even */
        double *dot = (double *)(void *)(D + (size_t)HW * HW);
        const float *base = qkv + (size_t)b * 3 * C * HW, *dbase = dqkv + (size_t)b * 3 * C * HW;
        for (int h = 0; h < heads; h++) {
            const size_t oq = (size_t)h * d * HW, ok = (size_t)(C + h * d) * HW,
                         ov = (size_t)(2 * C + h * d) * HW;
            float *o = dout + ((size_t)b * C + (size_t)h * d) * HW;
            attn_probs(PT, base + oq, base + ok, HW, d, scale, o, gs);
            /* D = dS^T = scale (dk^T q + k^T dq) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HW, HW, d, scale, dbase + ok, HW,
                        base + oq, HW, 0.0f, D, HW);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HW, HW, d, scale, base + ok, HW,
                        dbase + oq, HW, 1.0f, D, HW);
            /* D = dP^T, column by column (the column sum in double) */
            for (int i = 0; i < HW; i++) dot[i] = 0.0;
            for (int j = 0; j < HW; j++)
                for (int i = 0; i < HW; i++)
                    dot[i] += (double)PT[(size_t)j * HW + i] * D[(size_t)j * HW + i];
            for (int j = 0; j < HW; j++)
                for (int i = 0; i < HW; i++) {
                    const size_t ji = (size_t)j * HW + i;
                    D[ji] = (float)((double)PT[ji] * (D[ji] - dot[i]));
                }
            /* dout[c, i] = sum_j dv[c, j] PT[j, i] + v[c, j] dPT[j, i] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, HW, HW, 1.0f, dbase + ov, HW,
                        PT, HW, 0.0f, o, HW);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, HW, HW, 1.0f, base + ov, HW,
                        D, HW, 1.0f, o, HW);
        }
    }
}

void dfx_cpu_time_embed(dfx_backend *be, float *y, const double *t, int B, int dim, double scale,
                        double offset, int shift, int flip)
{
    (void)be;
    const int half = dim / 2;
    const size_t s0 = flip ? (size_t)half : 0, c0 = flip ? 0 : (size_t)half;
    for (int b = 0; b < B; b++) {
        double u = t[b] * scale;
        u = u + offset;
        for (int i = 0; i < half; i++) {
            double f = exp(-log(10000.0) * i / (double)(half - shift));
            y[(size_t)b * dim + s0 + i] = (float)sin(u * f);
            y[(size_t)b * dim + c0 + i] = (float)cos(u * f);
        }
    }
}

void dfx_cpu_embed_add(dfx_backend *be, float *y, const float *table, const int *idx, int B,
                       int dim)
{
    (void)be;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < dim; i++) y[(size_t)b * dim + i] += table[(size_t)idx[b] * dim + i];
}
