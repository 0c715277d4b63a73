/*
 * The instruction-set path of the CPU backend, chosen in one place
 * (cpu_isa.c) from what the CPU supports, never from its model name:
 * AVX-512 where the CPU and the OS have it, else AVX2 with FMA, else the
 * x86-64 baseline (SSE2; on other architectures the only path). The
 * environment variable DIFFLUX_ISA=baseline|avx2|avx512 forces a path;
 * one the CPU lacks is refused when a CPU backend is created.
 *
 * Each path has its own kernels (cpu_kernels.c, compiled once per path):
 * on a given path a sample's values never depend on its batch, the thread
 * count or the index split.
 */
#ifndef DFX_CPU_ISA_H
#define DFX_CPU_ISA_H

#include <stddef.h>

typedef enum { DFX_ISA_BASELINE = 0, DFX_ISA_AVX2, DFX_ISA_AVX512, DFX_ISA_COUNT } dfx_isa;

/* The kernels of one path (cpu_kernels.c). */
typedef struct dfx_cpu_kernels {
    const char *name;
    int mr, nr, vw; /* the register tile: rows (output channels) x columns
                       (pixels), nr / vw vectors of vw floats */
    /* tile[v]: y[0..mr)[0..v vw) (row stride ldy) = bias + w[0..mr)[0..K) x[0..K)[0..v vw),
     * row k of x at x + off[k], w's rows K apart; v = nr / vw is the full tile. */
    void (*tile[4])(float *y, size_t ldy, const float *w, size_t K, const float *x,
                    const int *off, const float *bias);
    /* The same for M < mr rows and the columns n0 .. n1 - 1, summed in the same order. */
    void (*rows_left)(float *y, size_t ldy, const float *w, int M, size_t K, const float *x,
                      const int *off, int n0, int n1, const float *bias);
    /* GroupNorm: the mean and 1 / sqrt(var + eps) of n values, and
     * y = x sc + sh (then SiLU if act). */
    void (*gn_stats)(const float *x, size_t n, float eps, double *mean, double *inv);
    void (*gn_apply)(float *y, const float *x, int n, float sc, float sh, int act);
    /* softmax down each column of P [J, I] in place (sums in double) */
    void (*softmax_cols)(float *P, int J, int I);
} dfx_cpu_kernels;

/* The path in use (decided once; DIFFLUX_ISA read then). When DIFFLUX_ISA
 * names a path this CPU lacks, or no path at all, the best supported path
 * is returned and dfx_cpu_isa_error() says why. */
dfx_isa dfx_cpu_isa(void);
const dfx_cpu_kernels *dfx_cpu_kernels_get(void);
/* NULL, or the message about a refused DIFFLUX_ISA. */
const char *dfx_cpu_isa_error(void);
const char *dfx_isa_name(dfx_isa isa);
/* 1 when this build has the path's kernels and this CPU can run them. */
int dfx_isa_supported(dfx_isa isa);
/* The best path this CPU supports. */
dfx_isa dfx_isa_best(void);

#endif
