/*
 * Network layers on the CPU: the reference for the CUDA kernels. Matrix
 * work goes to OpenBLAS (single-threaded per call); samples of a batch run
 * in parallel with OpenMP, each computed the same way whatever the batch,
 * so a sample's result does not depend on the batch it is in.
 */
#include "nn_cpu.h"

#include <cblas.h>
#include <math.h>
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

static size_t conv_col(int Cin, int H, int W, int k, int stride, int pad)
{
    if (k == 1 && stride == 1 && pad == 0) return 0;
    size_t Ho = (size_t)(H + 2 * pad - k) / stride + 1, Wo = (size_t)(W + 2 * pad - k) / stride + 1;
    return (size_t)Cin * k * k * Ho * Wo;
}

size_t dfx_cpu_conv_scratch(dfx_backend *be, int B, int Cin, int H, int W, int k, int stride,
                            int pad)
{
    return (size_t)nthreads(be, B) * conv_col(Cin, H, W, k, stride, pad);
}

size_t dfx_cpu_attention_scratch(dfx_backend *be, int B, int HW, int heads)
{
    (void)heads;
    return (size_t)nthreads(be, B) * (size_t)HW * HW;
}

/* P and dP of one head per thread. */
size_t dfx_cpu_attention_jvp_scratch(dfx_backend *be, int B, int HW, int heads)
{
    (void)heads;
    return (size_t)nthreads(be, B) * 2 * (size_t)HW * HW;
}

/* col [Cin k k, Ho Wo]: the receptive fields of x [Cin, H, W] as columns. */
static void im2col(float *col, const float *x, int Cin, int H, int W, int k, int stride, int pad,
                   int Ho, int Wo)
{
    for (int c = 0; c < Cin; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *row = col + ((size_t)(c * k + ky) * k + kx) * Ho * Wo;
                const float *xc = x + (size_t)c * H * W;
                for (int oy = 0; oy < Ho; oy++) {
                    int iy = oy * stride - pad + ky;
                    for (int ox = 0; ox < Wo; ox++) {
                        int ix = ox * stride - pad + kx;
                        row[oy * Wo + ox] =
                            (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix] : 0.0f;
                    }
                }
            }
}

void dfx_cpu_conv2d(dfx_backend *be, float *y, const float *x, const float *w, const float *bias,
                    int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                    float *scratch)
{
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    const int N = Ho * Wo, K = Cin * k * k;
    const size_t per = conv_col(Cin, H, W, k, stride, pad);
    int nt = nthreads(be, B);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * Cin * H * W;
        float *yb = y + (size_t)b * Cout * N;
        const float *col = xb;
        if (per) {
            float *c = scratch + (size_t)tid() * per;
            im2col(c, xb, Cin, H, W, k, stride, pad, Ho, Wo);
            col = c;
        }
        for (int o = 0; o < Cout; o++) {
            float bv = bias ? bias[o] : 0.0f;
            for (int i = 0; i < N; i++) yb[(size_t)o * N + i] = bv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, N, K, 1.0f, w, K, col, N,
                    1.0f, yb, N);
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

void dfx_cpu_group_norm(dfx_backend *be, float *y, const float *x, const float *gamma,
                        const float *beta, int B, int C, int HW, int groups, float eps, int act)
{
    const int cg = C / groups;
    const size_t n = (size_t)cg * HW;
    int nt = nthreads(be, B * groups);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bg = 0; bg < B * groups; bg++) {
        int b = bg / groups, g = bg % groups;
        size_t off = ((size_t)b * C + (size_t)g * cg) * HW;
        const float *xs = x + off;
        double s = 0.0, s2 = 0.0;
        for (size_t i = 0; i < n; i++) s += xs[i];
        double mean = s / (double)n;
        for (size_t i = 0; i < n; i++) {
            double d = xs[i] - mean;
            s2 += d * d;
        }
        double inv = 1.0 / sqrt(s2 / (double)n + (double)eps);
        for (int c = 0; c < cg; c++) {
            int ch = g * cg + c;
            float sc = (float)(inv * gamma[ch]), sh = (float)(beta[ch] - mean * inv * gamma[ch]);
            const float *xc = xs + (size_t)c * HW;
            float *yc = y + off + (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                float v = xc[i] * sc + sh;
                yc[i] = act ? silu(v) : v;
            }
        }
    }
}

/* The tangent of dfx_cpu_group_norm, with the same statistics (same sums
 * in the same order) and the same forward value v at which SiLU' is taken. */
void dfx_cpu_group_norm_jvp(dfx_backend *be, float *dy, const float *x, const float *dx,
                            const float *gamma, const float *beta, int B, int C, int HW,
                            int groups, float eps, int act)
{
    const int cg = C / groups;
    const size_t n = (size_t)cg * HW;
    int nt = nthreads(be, B * groups);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bg = 0; bg < B * groups; bg++) {
        int b = bg / groups, g = bg % groups;
        size_t off = ((size_t)b * C + (size_t)g * cg) * HW;
        const float *xs = x + off, *ds = dx + off;
        double s = 0.0, s2 = 0.0;
        for (size_t i = 0; i < n; i++) s += xs[i];
        double mean = s / (double)n;
        for (size_t i = 0; i < n; i++) {
            double d = xs[i] - mean;
            s2 += d * d;
        }
        double inv = 1.0 / sqrt(s2 / (double)n + (double)eps);
        /* mean(dx) and mean(xh dx), xh = (x - mean) inv */
        double sd = 0.0, sxd = 0.0;
        for (size_t i = 0; i < n; i++) {
            sd += ds[i];
            sxd += (xs[i] - mean) * ds[i];
        }
        const double dmean = sd / (double)n, cxd = sxd * inv / (double)n;
        for (int c = 0; c < cg; c++) {
            int ch = g * cg + c;
            float sc = (float)(inv * gamma[ch]), sh = (float)(beta[ch] - mean * inv * gamma[ch]);
            const float *xc = xs + (size_t)c * HW, *dc = ds + (size_t)c * HW;
            float *yc = dy + off + (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                double xh = (xc[i] - mean) * inv;
                double dv = gamma[ch] * inv * (dc[i] - dmean - xh * cxd);
                if (act) dv *= dsilu(xc[i] * sc + sh); /* the forward's v */
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
    float tmp[4096];
    for (int r = 0; r < B; r++) {
        const float *xr = x + (size_t)r * in;
        if (silu_in && in <= 4096) {
            for (int i = 0; i < in; i++) tmp[i] = silu(xr[i]);
            xr = tmp;
        }
        float *yr = y + (size_t)r * out;
        for (int o = 0; o < out; o++) yr[o] = b ? b[o] : 0.0f;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, xr, 1, 1.0f, yr, 1);
    }
}

void dfx_cpu_add_channel(dfx_backend *be, float *y, const float *e, int B, int C, int HW)
{
    (void)be;
    for (int bc = 0; bc < B * C; bc++) {
        float v = e[bc];
        float *yc = y + (size_t)bc * HW;
        for (int i = 0; i < HW; i++) yc[i] += v;
    }
}

void dfx_cpu_add(dfx_backend *be, float *y, const float *a, const float *b, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void dfx_cpu_concat(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                    int B, int HW)
{
    (void)be;
    for (int s = 0; s < B; s++) {
        float *ys = y + (size_t)s * (Ca + Cb) * HW;
        memcpy(ys, a + (size_t)s * Ca * HW, sizeof(float) * (size_t)Ca * HW);
        memcpy(ys + (size_t)Ca * HW, b + (size_t)s * Cb * HW, sizeof(float) * (size_t)Cb * HW);
    }
}

void dfx_cpu_upsample2x(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W)
{
    (void)be;
    for (int bc = 0; bc < B * C; bc++) {
        const float *xc = x + (size_t)bc * H * W;
        float *yc = y + (size_t)bc * 4 * H * W;
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++) yc[i * 2 * W + j] = xc[(i / 2) * W + j / 2];
    }
}

/* P [HW, HW] = softmax over j of scale sum_c q[c, i] k[c, j], one head
 * (q, k [d, HW]): the attention weights, computed the same way by the
 * forward and by its tangent. */
static void attn_probs(float *P, const float *q, const float *k, int HW, int d, float scale)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HW, HW, d, scale, q, HW, k, HW, 0.0f,
                P, HW);
    for (int i = 0; i < HW; i++) {
        float *row = P + (size_t)i * HW, mx = row[0];
        for (int j = 1; j < HW; j++) mx = row[j] > mx ? row[j] : mx;
        double sum = 0.0;
        for (int j = 0; j < HW; j++) sum += (row[j] = expf(row[j] - mx));
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < HW; j++) row[j] *= inv;
    }
}

void dfx_cpu_attention(dfx_backend *be, float *o, const float *qkv, int B, int C, int HW,
                       int heads, float *scratch)
{
    const int d = C / heads;
    const float scale = 1.0f / sqrtf((float)d);
    int nt = nthreads(be, B);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int b = 0; b < B; b++) {
        float *S = scratch + (size_t)tid() * HW * HW;
        const float *base = qkv + (size_t)b * 3 * C * HW;
        for (int h = 0; h < heads; h++) {
            const float *q = base + (size_t)h * d * HW;
            const float *k = base + (size_t)(C + h * d) * HW;
            const float *v = base + (size_t)(2 * C + h * d) * HW;
            attn_probs(S, q, k, HW, d, scale);
            /* o[c, i] = sum_j v[c, j] S[i, j] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, HW, HW, 1.0f, v, HW, S, HW,
                        0.0f, o + ((size_t)b * C + (size_t)h * d) * HW, HW);
        }
    }
}

/* o = v P^T with P the softmax of S = scale q^T k, so
 * do = dv P^T + v dP^T, dP = P * (dS - rowsum(P * dS)) (the softmax's
 * Jacobian applied to each row of dS), dS = scale (dq^T k + q^T dk). */
void dfx_cpu_attention_jvp(dfx_backend *be, float *dout, const float *qkv, const float *dqkv,
                           int B, int C, int HW, int heads, float *scratch)
{
    const int d = C / heads;
    const float scale = 1.0f / sqrtf((float)d);
    int nt = nthreads(be, B);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int b = 0; b < B; b++) {
        float *P = scratch + (size_t)tid() * 2 * HW * HW, *D = P + (size_t)HW * HW;
        const float *base = qkv + (size_t)b * 3 * C * HW, *dbase = dqkv + (size_t)b * 3 * C * HW;
        for (int h = 0; h < heads; h++) {
            const size_t oq = (size_t)h * d * HW, ok = (size_t)(C + h * d) * HW,
                         ov = (size_t)(2 * C + h * d) * HW;
            attn_probs(P, base + oq, base + ok, HW, d, scale);
            /* D = dS = scale (dq^T k + q^T dk) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HW, HW, d, scale, dbase + oq, HW,
                        base + ok, HW, 0.0f, D, HW);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HW, HW, d, scale, base + oq, HW,
                        dbase + ok, HW, 1.0f, D, HW);
            /* D = dP, row by row (the row sum in double) */
            for (int i = 0; i < HW; i++) {
                const float *p = P + (size_t)i * HW;
                float *r = D + (size_t)i * HW;
                double dot = 0.0;
                for (int j = 0; j < HW; j++) dot += (double)p[j] * r[j];
                for (int j = 0; j < HW; j++) r[j] = (float)((double)p[j] * (r[j] - dot));
            }
            /* dout[c, i] = sum_j dv[c, j] P[i, j] + v[c, j] dP[i, j] */
            float *o = dout + ((size_t)b * C + (size_t)h * d) * HW;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, HW, HW, 1.0f, dbase + ov, HW,
                        P, HW, 0.0f, o, HW);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, HW, HW, 1.0f, base + ov, HW,
                        D, HW, 1.0f, o, HW);
        }
    }
}

void dfx_cpu_time_embed(dfx_backend *be, float *y, const double *t, int B, int dim, double scale)
{
    (void)be;
    const int half = dim / 2;
    for (int b = 0; b < B; b++) {
        double u = t[b] * scale;
        for (int i = 0; i < half; i++) {
            double f = exp(-log(10000.0) * i / half);
            y[(size_t)b * dim + i] = (float)sin(u * f);
            y[(size_t)b * dim + half + i] = (float)cos(u * f);
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
