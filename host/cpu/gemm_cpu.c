/*
 * The matrix products of the CPU convolutions, y = w x + bias, written for
 * their shapes: few rows (output channels), a few hundred columns (pixels)
 * and K = Cin k k. OpenBLAS packs both operands on every call, which on
 * products this small costs about as much as the arithmetic; here tiles of
 * MR rows x NR columns are accumulated in registers by the kernels of the
 * CPU's instruction-set path (cpu_kernels.c: 8 x 32 on AVX-512, 4 x 24 on
 * AVX2), w's rows broadcast and x's rows read as vectors from wherever
 * they are (row k at x + off[k]):
 *   - a 3x3 stride-1 convolution reads its im2col rows straight out of a
 *     zero-bordered copy of the input (no im2col matrix at all);
 *   - other convolutions multiply an im2col matrix (or, 1x1, the input),
 *     copying each block of columns together first when K is large.
 *
 * Every output value is bias + w[o,0] x[0,n] + w[o,1] x[1,n] + ..., summed
 * in that order, whether it lies in a full tile, an edge tile or a
 * leftover row: a value never depends on where the columns were split, so
 * a sample's result does not depend on its batch or on the number of
 * threads.
 */
#include "cpu/nn_cpu.h"

#include "cpu/cpu_isa.h"

#include <string.h>

enum { TILE_MAX = 8 * 32 }; /* floats of the largest path's tile */

size_t dfx_cpu_gemm_scratch(int K)
{
    return (size_t)K * dfx_cpu_kernels_get()->nr + TILE_MAX;
}

int dfx_cpu_gemm_block(void)
{
    return dfx_cpu_kernels_get()->nr;
}

void dfx_cpu_gemm_bias(float *y, int ldy, const float *w, int M, int K, const float *x, int ldx,
                       int n0, int n1, const float *bias, float *scratch)
{
    const dfx_cpu_kernels *kn = dfx_cpu_kernels_get();
    const int MR = kn->mr, NR = kn->nr;
    void (*const full)(float *, size_t, const float *, size_t, const float *, const int *,
                       const float *) = kn->tile[NR / kn->vw];
    const int Mt = M - M % MR;
    float *panel = scratch, *out = scratch + (size_t)K * NR;
    int off[K > 0 ? K : 1], xoff[K > 0 ? K : 1];
    for (int k = 0; k < K; k++) off[k] = k * NR, xoff[k] = k * ldx;
    /* few rows of x (a 1x1 convolution) are read where they are; many far
     * apart would cost a TLB miss per row: their block's columns are
     * copied together first (zero-padded at the end) */
    const int direct = K <= 256;
    for (int n = n0; Mt > 0 && n < n1; n += NR) {
        const int nc = n1 - n < NR ? n1 - n : NR;
        if (direct && nc == NR) {
            for (int o = 0; o < Mt; o += MR)
                full(y + (size_t)o * ldy + n, (size_t)ldy, w + (size_t)o * K, (size_t)K, x + n,
                     xoff, bias ? bias + o : NULL);
            continue;
        }
        if (nc == NR)
            for (int k = 0; k < K; k++)
                memcpy(panel + (size_t)k * NR, x + (size_t)k * ldx + n, NR * sizeof(float));
        else
            for (int k = 0; k < K; k++) {
                memcpy(panel + (size_t)k * NR, x + (size_t)k * ldx + n, (size_t)nc * sizeof(float));
                memset(panel + (size_t)k * NR + nc, 0, (size_t)(NR - nc) * sizeof(float));
            }
        for (int o = 0; o < Mt; o += MR) {
            const float *wo = w + (size_t)o * K, *bo = bias ? bias + o : NULL;
            if (nc == NR) {
                full(y + (size_t)o * ldy + n, (size_t)ldy, wo, (size_t)K, panel, off, bo);
                continue;
            }
            full(out, NR, wo, (size_t)K, panel, off, bo);
            for (int i = 0; i < MR; i++)
                memcpy(y + (size_t)(o + i) * ldy + n, out + (size_t)i * NR,
                       (size_t)nc * sizeof(float));
        }
    }
    if (Mt < M)
        kn->rows_left(y + (size_t)Mt * ldy, (size_t)ldy, w + (size_t)Mt * K, M - Mt, (size_t)K, x,
                      xoff, n0, n1, bias ? bias + Mt : NULL);
}

/* ---- 3x3 "same" convolution straight from a zero-bordered copy of x ----
 * Each padded plane is a zero, then H + 2 rows of Wp = W + 1 values: a
 * zero row, the H rows of x each followed by a zero (the right border of
 * its row and the left border of the next), and a zero row. Output pixel
 * (oy, ox) is column n = oy Wp + ox of a product whose row k = (c, ky, kx)
 * starts at c plane + ky Wp + kx: every row of the im2col matrix is a
 * contiguous run of the padded input, so nothing is copied but the input.
 * The one column per row that falls on the border is computed and dropped;
 * the last tile reads past the planes into a zeroed tail. */

static int plane_of(int H, int W)
{
    return (H + 2) * (W + 1) + 1;
}

size_t dfx_cpu_conv3_padded(int Cin, int H, int W)
{
    return (size_t)Cin * plane_of(H, W) + 2 * TILE_MAX;
}

size_t dfx_cpu_conv3_scratch(int Cin, int H, int W)
{
    return dfx_cpu_conv3_padded(Cin, H, W) + TILE_MAX;
}

int dfx_cpu_conv3_columns(int H, int W)
{
    return H * (W + 1);
}

void dfx_cpu_conv3_pad(float *xp, const float *x, int c0, int c1, int H, int W)
{
    const int Wp = W + 1;
    const size_t plane = (size_t)plane_of(H, W);
    for (int c = c0; c < c1; c++) {
        float *p = xp + (size_t)c * plane;
        memset(p, 0, (size_t)(Wp + 1) * sizeof(float));
        for (int iy = 0; iy < H; iy++) {
            float *r = p + 1 + (size_t)(iy + 1) * Wp;
            memcpy(r, x + ((size_t)c * H + iy) * W, (size_t)W * sizeof(float));
            r[W] = 0.0f;
        }
        memset(p + 1 + (size_t)(H + 1) * Wp, 0, (size_t)Wp * sizeof(float));
    }
}

int dfx_cpu_conv3_row_stride(int W)
{
    return W + 1;
}

float *dfx_cpu_conv3_plane(float *xp, int c, int H, int W)
{
    return xp + (size_t)c * plane_of(H, W) + 1 + (W + 1);
}

void dfx_cpu_conv3_pad_tail(float *xp, int Cin, int H, int W)
{
    memset(xp + (size_t)Cin * plane_of(H, W), 0, 2 * TILE_MAX * sizeof(float));
}

/* out [rows, ldo] -> y [rows, H W] for padded-layout columns n .. n + nc - 1 */
static void scatter(float *y, const float *out, int ldo, int rows, int nc, int n, int H, int W)
{
    const int Wp = W + 1, HW = H * W;
    for (int j = 0; j < nc;) {
        const int np = n + j, oy = np / Wp, ox = np % Wp;
        if (oy >= H) break;
        if (ox >= W) {
            j += Wp - ox;
            continue;
        }
        const int run = W - ox < nc - j ? W - ox : nc - j;
        for (int i = 0; i < rows; i++)
            memcpy(y + (size_t)i * HW + oy * W + ox, out + (size_t)i * ldo + j,
                   (size_t)run * sizeof(float));
        j += run;
    }
}

void dfx_cpu_conv3(float *y, const float *w, int M, int Cin, int H, int W, const float *xp,
                   int n0, int n1, const float *bias, float *out)
{
    const dfx_cpu_kernels *kn = dfx_cpu_kernels_get();
    const int MR = kn->mr, NR = kn->nr;
    const int Wp = W + 1, K = Cin * 9, HW = H * W;
    const int plane = plane_of(H, W);
    int off[K];
    for (int c = 0; c < Cin; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) off[(c * 3 + ky) * 3 + kx] = c * plane + ky * Wp + kx;
    const int Mt = M - M % MR, N = dfx_cpu_conv3_columns(H, W);
    for (int n = n0; n < n1; n += NR) {
        /* the last tile only as many vectors wide as the columns need */
        const int nv = N - n >= NR ? NR / kn->vw : (N - n + kn->vw - 1) / kn->vw;
        for (int o = 0; o < Mt; o += MR) {
            kn->tile[nv](out, NR, w + (size_t)o * K, (size_t)K, xp + n, off,
                         bias ? bias + o : NULL);
            scatter(y + (size_t)o * HW, out, NR, MR, nv * kn->vw, n, H, W);
        }
        if (Mt < M) {
            kn->rows_left(out, NR, w + (size_t)Mt * K, M - Mt, (size_t)K, xp + n, off, 0, NR,
                          bias ? bias + Mt : NULL);
            scatter(y + (size_t)Mt * HW, out, NR, M - Mt, NR, n, H, W);
        }
    }
}
