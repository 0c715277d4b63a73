/*
 * The matrix products of the CPU convolutions, y = w x + bias, written for
 * their shapes: few rows (output channels), a few hundred columns (pixels)
 * and K = Cin k k. OpenBLAS packs both operands on every call, which on
 * products this small costs about as much as the arithmetic; here tiles of
 * 8 rows x 32 columns are accumulated in registers, w's rows broadcast and
 * x's rows read as two 16-float vectors from wherever they are (row k at
 * x + off[k]):
 *   - a 3x3 stride-1 convolution reads its im2col rows straight out of a
 *     zero-bordered copy of the input (no im2col matrix at all);
 *   - other convolutions multiply an im2col matrix (or, 1x1, the input),
 *     copying each block of columns together first when K is large.
 *
 * Every output value is bias + w[o,0] x[0,n] + w[o,1] x[1,n] + ..., summed
 * in that order with fused multiply-adds (where the CPU has them), whether
 * it lies in a full tile, an edge tile or a leftover row: a value never
 * depends on where the columns were split, so a sample's result does not
 * depend on its batch or on the number of threads.
 *
 * Built with -ffp-contract=fast (CMakeLists.txt): a * b + c is one fused
 * operation in every clone that has FMA.
 */
#include "nn_cpu.h"

#include <string.h>

enum { MR = 8, NR = 32 };

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__ELF__)
#define DFX_GEMM_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define DFX_GEMM_CLONES
#endif

#if defined(__GNUC__)
typedef float v16 __attribute__((vector_size(64)));

/* unaligned loads and stores (macros: passing a 64-byte vector to a
 * function would depend on the clone's ABI) */
#define LOAD16(v, p) memcpy(&(v), (p), sizeof(v16))
#define STORE16(p, v) memcpy((p), &(v), sizeof(v16))

/* y[0..7][0..31] (row stride ldy) = bias + w[0..7][0..K) x[0..K)[0..31],
 * row k of x at x + off[k]. */
DFX_GEMM_CLONES static void tile(float *y, size_t ldy, const float *w, size_t K, const float *x,
                                 const int *off, const float *bias)
{
    v16 a0[MR], a1[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        const float b = bias ? bias[i] : 0.0f;
        a0[i] = (v16){0} + b;
        a1[i] = a0[i];
    }
    for (size_t k = 0; k < K; k++) {
        v16 x0, x1;
        LOAD16(x0, x + off[k]);
        LOAD16(x1, x + off[k] + 16);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            const float wv = w[i * K + k];
            a0[i] = wv * x0 + a0[i];
            a1[i] = wv * x1 + a1[i];
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        STORE16(y + i * ldy, a0[i]);
        STORE16(y + i * ldy + 16, a1[i]);
    }
}
#else
static void tile(float *y, size_t ldy, const float *w, size_t K, const float *x, const int *off,
                 const float *bias)
{
    for (int i = 0; i < MR; i++)
        for (int n = 0; n < NR; n++) {
            float a = bias ? bias[i] : 0.0f;
            for (size_t k = 0; k < K; k++) a = w[i * K + k] * x[off[k] + n] + a;
            y[i * ldy + n] = a;
        }
}
#endif

/* Rows that do not fill a tile, in the same order of summation. */
DFX_GEMM_CLONES static void rows_left(float *y, size_t ldy, const float *w, int M, size_t K,
                                      const float *x, const int *off, int n0, int n1,
                                      const float *bias)
{
    for (int i = 0; i < M; i++) {
        float *r = y + i * ldy;
        const float b = bias ? bias[i] : 0.0f;
        for (int n = n0; n < n1; n++) r[n] = b;
        for (size_t k = 0; k < K; k++) {
            const float wv = w[i * K + k];
            const float *xr = x + off[k];
            for (int n = n0; n < n1; n++) r[n] = wv * xr[n] + r[n];
        }
    }
}

size_t dfx_cpu_gemm_scratch(int K)
{
    return (size_t)K * NR + (size_t)MR * NR;
}

int dfx_cpu_gemm_block(void)
{
    return NR;
}

void dfx_cpu_gemm_bias(float *y, int ldy, const float *w, int M, int K, const float *x, int ldx,
                       int n0, int n1, const float *bias, float *scratch)
{
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
                tile(y + (size_t)o * ldy + n, (size_t)ldy, w + (size_t)o * K, (size_t)K, x + n,
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
                tile(y + (size_t)o * ldy + n, (size_t)ldy, wo, (size_t)K, panel, off, bo);
                continue;
            }
            tile(out, NR, wo, (size_t)K, panel, off, bo);
            for (int i = 0; i < MR; i++)
                memcpy(y + (size_t)(o + i) * ldy + n, out + (size_t)i * NR,
                       (size_t)nc * sizeof(float));
        }
    }
    if (Mt < M)
        rows_left(y + (size_t)Mt * ldy, (size_t)ldy, w + (size_t)Mt * K, M - Mt, (size_t)K, x,
                  xoff, n0, n1, bias ? bias + Mt : NULL);
}

/* ---- 3x3 "same" convolution straight from a zero-bordered copy of x ----
 * The padded planes are (H + 2) x (W + 2); output pixel (oy, ox) is column
 * n = oy (W + 2) + ox of a product whose row k = (c, ky, kx) starts at
 * c (H + 2)(W + 2) + ky (W + 2) + kx: every row of the im2col matrix is a
 * contiguous run of the padded input, so nothing is copied but the border.
 * The two columns per row that fall in the border are computed and
 * dropped. */

size_t dfx_cpu_conv3_padded(int Cin, int H, int W)
{
    return (size_t)Cin * (H + 2) * (W + 2) + 2 * NR;
}

size_t dfx_cpu_conv3_scratch(int Cin, int H, int W)
{
    return dfx_cpu_conv3_padded(Cin, H, W) + (size_t)MR * NR;
}

int dfx_cpu_conv3_columns(int H, int W)
{
    return H * (W + 2);
}

void dfx_cpu_conv3_pad(float *xp, const float *x, int c0, int c1, int H, int W)
{
    const int Wp = W + 2;
    const size_t plane = (size_t)(H + 2) * Wp;
    for (int c = c0; c < c1; c++) {
        float *p = xp + (size_t)c * plane;
        memset(p, 0, (size_t)(Wp + 1) * sizeof(float));
        for (int iy = 0; iy < H; iy++) {
            float *r = p + (size_t)(iy + 1) * Wp + 1;
            memcpy(r, x + ((size_t)c * H + iy) * W, (size_t)W * sizeof(float));
            r[W] = r[W + 1] = 0.0f; /* this row's right border, the next one's left */
        }
        memset(p + (size_t)(H + 1) * Wp + 1, 0, (size_t)(Wp - 1) * sizeof(float));
    }
}

void dfx_cpu_conv3_pad_tail(float *xp, int Cin, int H, int W)
{
    memset(xp + (size_t)Cin * (H + 2) * (W + 2), 0, 2 * NR * sizeof(float));
}

/* out [rows, NR] -> y [rows, H W] for padded-layout columns n .. n + NR - 1 */
static void scatter(float *y, const float *out, int rows, int n, int H, int W)
{
    const int Wp = W + 2, HW = H * W;
    for (int j = 0; j < NR;) {
        const int np = n + j, oy = np / Wp, ox = np % Wp;
        if (oy >= H) break;
        if (ox >= W) {
            j += Wp - ox;
            continue;
        }
        const int run = W - ox < NR - j ? W - ox : NR - j;
        for (int i = 0; i < rows; i++)
            memcpy(y + (size_t)i * HW + oy * W + ox, out + (size_t)i * NR + j,
                   (size_t)run * sizeof(float));
        j += run;
    }
}

void dfx_cpu_conv3(float *y, const float *w, int M, int Cin, int H, int W, const float *xp,
                   int n0, int n1, const float *bias, float *out)
{
    const int Wp = W + 2, K = Cin * 9, HW = H * W;
    const int plane = (H + 2) * Wp;
    int off[K];
    for (int c = 0; c < Cin; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) off[(c * 3 + ky) * 3 + kx] = c * plane + ky * Wp + kx;
    const int Mt = M - M % MR;
    for (int n = n0; n < n1; n += NR) {
        for (int o = 0; o < Mt; o += MR) {
            tile(out, NR, w + (size_t)o * K, (size_t)K, xp + n, off, bias ? bias + o : NULL);
            scatter(y + (size_t)o * HW, out, MR, n, H, W);
        }
        if (Mt < M) {
            rows_left(out, NR, w + (size_t)Mt * K, M - Mt, (size_t)K, xp + n, off, 0, NR,
                      bias ? bias + Mt : NULL);
            scatter(y + (size_t)Mt * HW, out, M - Mt, n, H, W);
        }
    }
}
