/*
 * The CPU backend's hot loops, one source compiled once per instruction-set
 * path (CMakeLists.txt: DFX_KERNEL_ISA = baseline, avx2 or avx512, each
 * with its own -m flags); cpu_isa.c picks the table at run time.
 *
 * The convolutions' register tile is sized to each path's register file:
 *   avx512  8 rows x 32 columns: 16 accumulators of the 32 zmm registers
 *   avx2    4 rows x 24 columns: 12 accumulators of the 16 ymm registers
 *           (8 x 32 would spill on every multiply-add)
 *   baseline 4 rows x 8 columns of 4-float vectors (SSE2, or NEON elsewhere)
 * Every output value is bias + w[o,0] x[0,n] + w[o,1] x[1,n] + ..., summed
 * in that order (with fused multiply-adds where the path has them: the
 * file is built with -ffp-contract=fast), whether it lies in a full tile,
 * an edge tile or a leftover row: a value never depends on where the
 * columns were split. The GroupNorm sums run in eight fixed lanes, whatever
 * the vector width, and the SiLU and the attention's softmax are
 * elementwise vector code. So the avx2 and avx512 paths give the same
 * samples bit for bit (tests/test_isa_paths.sh); only the baseline, without
 * FMA, rounds differently. Built with -fno-trapping-math.
 */
#include "cpu/cpu_isa.h"

#include <stdint.h>
#include <string.h>

#if defined(DFX_KERNEL_ISA_avx512)
enum { VW = 16, MR = 8, NV = 2 };
#define NV_MAX3 0
#elif defined(DFX_KERNEL_ISA_avx2)
enum { VW = 8, MR = 4, NV = 3 };
#define NV_MAX3 1
#else
enum { VW = 4, MR = 4, NV = 2 };
#define NV_MAX3 0
#endif
enum { NR = VW * NV };

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define TABLE CAT(dfx_cpu_kernels_, DFX_KERNEL_ISA)
#define STR2(a) #a
#define STR(a) STR2(a)

#if !defined(__GNUC__)
#error "host/cpu/cpu_kernels.c needs the GNU C vector extensions (GCC or Clang)"
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

/* unaligned loads and stores (macros: no vector crosses a call) */
#define LOADV(v, p) memcpy(&(v), (p), sizeof(vf))
#define STOREV(p, v) memcpy((p), &(v), sizeof(vf))

/* The tile NVV vectors wide (NVV <= NV): the full tile, and the narrower
 * ones that finish a row of columns without computing a whole tile of
 * padding. */
#define DEFINE_TILE(NVV)                                                                      \
    static void tile##NVV(float *y, size_t ldy, const float *w, size_t K, const float *x,     \
                          const int *off, const float *bias)                                  \
    {                                                                                         \
        vf acc[MR][NVV];                                                                      \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                  \
        {                                                                                     \
            const float b = bias ? bias[i] : 0.0f;                                            \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) acc[i][v] = (vf){0} + b;    \
        }                                                                                     \
        for (size_t k = 0; k < K; k++) {                                                      \
            vf xv[NVV];                                                                       \
            const float *xk = x + off[k];                                                     \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) LOADV(xv[v], xk + v * VW);  \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                              \
            {                                                                                 \
                const float wv = w[i * K + k];                                                \
                _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) acc[i][v] =             \
                    wv * xv[v] + acc[i][v];                                                   \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)                             \
                STOREV(y + i * ldy + v * VW, acc[i][v]);                                      \
    }
DEFINE_TILE(1)
DEFINE_TILE(2)
#if NV_MAX3
DEFINE_TILE(3)
#endif

static void rows_left(float *y, size_t ldy, const float *w, int M, size_t K, const float *x,
                      const int *off, int n0, int n1, const float *bias)
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

/* Sum of n values (or of their squared deviations from c, if sq) in double
 * in eight lanes (value i into lane i mod 8, the lanes added in a fixed
 * tree): the same sum on every vector width. */
static double lane_sum(const float *xs, size_t n, double c, int sq)
{
    double s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const double v = xs[i + j] - c;
            s[j] += sq ? v * v : v;
        }
    for (int j = 0; i < n; i++, j++) {
        const double v = xs[i] - c;
        s[j] += sq ? v * v : v;
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* GroupNorm statistics of n values in two passes, as the CUDA backend
 * computes them: the mean, then the mean squared deviation from it (no
 * cancellation, whatever the mean; E[x^2] - mean^2 would lose digits when
 * the mean is large against the spread). */
static void gn_stats(const float *xs, size_t n, float eps, double *mean, double *inv)
{
    const double m = lane_sum(xs, n, 0.0, 0) / (double)n;
    const double var = lane_sum(xs, n, m, 1) / (double)n;
    *mean = m;
    *inv = 1.0 / __builtin_sqrt(var + (double)eps);
}

typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(VW * sizeof(uint32_t))));

/* exp(x) on a vector, in a form without calls or branches: x = k ln2 + r
 * with |r| <= ln2 / 2 (k by the round-to-nearest trick of adding 1.5 *
 * 2^23), exp(r) by its Taylor polynomial to degree 7 (truncation below
 * 6e-9 relative), times 2^k built in the exponent bits: within 2 ulp of
 * expf. x is clamped to [-87, 88], where 2^k stays a normal float, by masks
 * (a select would let the compiler split the whole computation into one
 * copy per case); NaN stays NaN. Elementwise: a value depends neither on the vector width
 * nor on its place in the vector. */
static inline vf exp_vec(vf x)
{
    const vf lo = (vf){0} - 87.0f, hi = (vf){0} + 88.0f;
    const vi below = x < lo, above = x > hi;
    x = (vf)(((vi)x & ~(below | above)) | ((vi)lo & below) | ((vi)hi & above));
    const vf kf = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    const vf r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f; /* ln2 in two parts */
    vf p = 1.0f / 5040.0f + r * (1.0f / 40320.0f);
    p = 1.0f / 720.0f + r * p;
    p = 1.0f / 120.0f + r * p;
    p = 1.0f / 24.0f + r * p;
    p = 1.0f / 6.0f + r * p;
    p = 0.5f + r * p;
    p = 1.0f + r * p;
    p = 1.0f + r * p;
    /* a NaN x gives a NaN p; its k becomes 0 before the conversion, which
     * would be undefined for NaN (and the shift for the negative result) */
    const vi finite = kf == kf;
    const vi k = __builtin_convertvector((vf)((vi)kf & finite), vi);
    return p * (vf)((vu)(k + 127) << 23);
}

/* SiLU(v) = v / (1 + exp(-v)) */
static inline vf silu_vec(vf v)
{
    return v / (1.0f + exp_vec(-v));
}

/* Softmax down each column of P [J, I] in place: the column's maximum
 * subtracted, exp, the sum over j in double in the order of j. VW columns
 * at a time; the last I mod VW through zero-padded vectors. */
static void softmax_cols(float *P, int J, int I)
{
    typedef double vd __attribute__((vector_size(VW * sizeof(double))));
    for (int i0 = 0; i0 < I; i0 += VW) {
        const int nc = I - i0 < VW ? I - i0 : VW;
        vf mx, v;
        vd sum = {0};
#define LOADC(v, j)                                                                           \
    do {                                                                                      \
        if (nc == VW) {                                                                       \
            LOADV(v, P + (size_t)(j) * I + i0);                                               \
            break;                                                                            \
        }                                                                                     \
        float b_[VW] = {0};                                                                   \
        memcpy(b_, P + (size_t)(j) * I + i0, (size_t)nc * sizeof(float));                     \
        LOADV(v, b_);                                                                         \
    } while (0)
#define STOREC(j, v)                                                                          \
    do {                                                                                      \
        if (nc == VW) {                                                                       \
            STOREV(P + (size_t)(j) * I + i0, v);                                              \
            break;                                                                            \
        }                                                                                     \
        float b_[VW];                                                                         \
        STOREV(b_, v);                                                                        \
        memcpy(P + (size_t)(j) * I + i0, b_, (size_t)nc * sizeof(float));                     \
    } while (0)
        LOADC(mx, 0);
        for (int j = 1; j < J; j++) {
            LOADC(v, j);
            const vi gt = v > mx;
            mx = (vf)(((vi)v & gt) | ((vi)mx & ~gt));
        }
        for (int j = 0; j < J; j++) {
            LOADC(v, j);
            v = exp_vec(v - mx);
            sum += __builtin_convertvector(v, vd);
            STOREC(j, v);
        }
        const vf inv = __builtin_convertvector(1.0 / sum, vf);
        for (int j = 0; j < J; j++) {
            LOADC(v, j);
            v *= inv;
            STOREC(j, v);
        }
#undef LOADC
#undef STOREC
    }
}

/* y = x sc + sh, then SiLU if act; the last n mod VW values through a
 * zero-padded vector, so that they are computed exactly as the others. */
static void gn_apply(float *y, const float *x, int n, float sc, float sh, int act)
{
    int i = 0;
    for (; i + VW <= n; i += VW) {
        vf v;
        LOADV(v, x + i);
        v = v * sc + sh;
        if (act) v = silu_vec(v);
        STOREV(y + i, v);
    }
    if (i < n) {
        float buf[VW] = {0};
        memcpy(buf, x + i, (size_t)(n - i) * sizeof(float));
        vf v;
        LOADV(v, buf);
        v = v * sc + sh;
        if (act) v = silu_vec(v);
        STOREV(buf, v);
        memcpy(y + i, buf, (size_t)(n - i) * sizeof(float));
    }
}


const dfx_cpu_kernels TABLE = {
    .name = STR(DFX_KERNEL_ISA),
    .mr = MR,
    .nr = NR,
    .vw = VW,
#if NV_MAX3
    .tile = {NULL, tile1, tile2, tile3},
#else
    .tile = {NULL, tile1, tile2},
#endif
    .rows_left = rows_left,
    .gn_stats = gn_stats,
    .gn_apply = gn_apply,
    .softmax_cols = softmax_cols,
};
