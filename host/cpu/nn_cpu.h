/* Network layer operations of the CPU backend (nn_cpu.c). */
#ifndef DFX_NN_CPU_H
#define DFX_NN_CPU_H

#include "core/backend.h"

void dfx_cpu_conv2d(dfx_backend *be, float *y, const float *x, const float *w, const float *bias,
                    int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                    float *scratch);
void dfx_cpu_gn_conv3(dfx_backend *be, float *y, const float *x, const float *gamma,
                      const float *beta, int groups, float eps, int silu, const float *w,
                      const float *bias, int B, int Cin, int H, int W, int Cout, float *scratch);
void dfx_cpu_group_norm(dfx_backend *be, float *y, const float *x, const float *gamma,
                        const float *beta, int B, int C, int HW, int groups, float eps, int silu);
void dfx_cpu_linear(dfx_backend *be, float *y, const float *x, const float *w, const float *b,
                    int B, int in, int out, int silu_in);
void dfx_cpu_add_channel(dfx_backend *be, float *y, const float *e, int B, int C, int HW);
void dfx_cpu_add(dfx_backend *be, float *y, const float *a, const float *b, size_t n);
void dfx_cpu_concat(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                    int B, int HW);
void dfx_cpu_upsample2x(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W);
void dfx_cpu_attention(dfx_backend *be, float *o, const float *qkv, int B, int C, int HW,
                       int heads, float *scratch);
void dfx_cpu_time_embed(dfx_backend *be, float *y, const double *t, int B, int dim,
                        double scale, double offset, int shift, int flip);
void dfx_cpu_embed_add(dfx_backend *be, float *y, const float *table, const int *idx, int B,
                       int dim);
void dfx_cpu_group_norm_jvp(dfx_backend *be, float *dy, const float *x, const float *dx,
                            const float *gamma, const float *beta, int B, int C, int HW,
                            int groups, float eps, int silu);
void dfx_cpu_attention_jvp(dfx_backend *be, float *dout, const float *qkv, const float *dqkv,
                           int B, int C, int HW, int heads, float *scratch);
void dfx_cpu_silu_jvp(dfx_backend *be, float *dy, const float *x, const float *dx, size_t n);
/* y[o, n] (row stride ldy) = bias[o] + sum_k w[o, k] x[k, n] (row stride
 * ldx) for rows o < M and columns n0 <= n < n1 (gemm_cpu.c); scratch:
 * dfx_cpu_gemm_scratch(K) floats. Values do not depend on n0, n1. */
void dfx_cpu_gemm_bias(float *y, int ldy, const float *w, int M, int K, const float *x, int ldx,
                       int n0, int n1, const float *bias, float *scratch);
size_t dfx_cpu_gemm_scratch(int K);
/* 3x3 stride-1 "same" convolution read straight from zero-bordered planes
 * (gemm_cpu.c): conv3_pad fills channels c0 .. c1 - 1 of xp (conv3_padded
 * floats; conv3_pad_tail zeroes its end once), conv3 computes the
 * padded-layout columns n0 .. n1 - 1 (multiples of gemm_block, at most
 * conv3_columns) of y [M, H W] using out (conv3_scratch - conv3_padded floats). */
size_t dfx_cpu_conv3_padded(int Cin, int H, int W);
size_t dfx_cpu_conv3_scratch(int Cin, int H, int W);
int dfx_cpu_conv3_columns(int H, int W);
void dfx_cpu_conv3_pad(float *xp, const float *x, int c0, int c1, int H, int W);
void dfx_cpu_conv3_pad_tail(float *xp, int Cin, int H, int W);
/* Where channel c's H rows of W values lie in xp (row_stride apart, each
 * followed by a border zero). */
float *dfx_cpu_conv3_plane(float *xp, int c, int H, int W);
int dfx_cpu_conv3_row_stride(int W);
void dfx_cpu_conv3(float *y, const float *w, int M, int Cin, int H, int W, const float *xp,
                   int n0, int n1, const float *bias, float *out);
int dfx_cpu_gemm_block(void); /* columns per tile: split column ranges at its multiples */
size_t dfx_cpu_conv_scratch(dfx_backend *be, int B, int Cin, int H, int W, int k, int stride,
                            int pad);
size_t dfx_cpu_attention_scratch(dfx_backend *be, int B, int C, int HW, int heads);
size_t dfx_cpu_attention_jvp_scratch(dfx_backend *be, int B, int C, int HW, int heads);

#endif
