/*
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
 * 3", 2011) and the normal variates built on it. Header-only and written so
 * that the CPU backend and the CUDA kernels compile the very same code:
 * that is what makes the noise the same numbers on every device.
 *
 * Counter layout (MATH.md section 5):
 *   ctr = (element / 4, draw index, global sample index, stream tag)
 *   key = the 64-bit seed (low word, high word)
 * One Philox call gives 4 uniforms u = (k + 0.5) 2^-32, turned into 4
 * normals by Box-Muller on the pairs (u0, u1) and (u2, u3), computed in
 * double with portable log / sin / cos (below: the same bits on CPU and
 * GPU) and rounded to float.
 */
#ifndef DFX_PHILOX_H
#define DFX_PHILOX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define DFX_HD __host__ __device__ __forceinline__
#else
#define DFX_HD static inline
#endif

#define DFX_PHILOX_M0 0xD2511F53u
#define DFX_PHILOX_M1 0xCD9E8D57u
#define DFX_PHILOX_W0 0x9E3779B9u
#define DFX_PHILOX_W1 0xBB67AE85u

DFX_HD void dfx_philox_mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

DFX_HD void dfx_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2],
                              uint32_t out[4])
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        dfx_philox_mulhilo(DFX_PHILOX_M0, c0, &hi0, &lo0);
        dfx_philox_mulhilo(DFX_PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n1 = lo1;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        uint32_t n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += DFX_PHILOX_W0;
        k1 += DFX_PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* ---- portable double-precision log and sin/cos -------------------------
 *
 * The normals must be the same bits on the CPU and the GPU, but libm's log,
 * sin and cos and CUDA's are different implementations that can differ in
 * the last bit. So Box-Muller uses its own, built only from IEEE-754 basic
 * operations (+, -, *, / and sqrt, correctly rounded everywhere) in a fixed
 * order, and bit manipulation. On the device every operation goes through
 * the __d*_rn intrinsics, which nvcc never contracts into an FMA; on the
 * host, plain operators (C compilers in ISO mode, like gcc -std=c11, do not
 * contract either). Both are accurate to about 1 ulp (tests/test_philox.c
 * checks < 1e-14 against libm).
 */
#if defined(__CUDA_ARCH__)
#define DFX_PX_ADD(a, b) __dadd_rn((a), (b))
#define DFX_PX_SUB(a, b) __dsub_rn((a), (b))
#define DFX_PX_MUL(a, b) __dmul_rn((a), (b))
#define DFX_PX_DIV(a, b) __ddiv_rn((a), (b))
#define DFX_PX_SQRT(a) __dsqrt_rn(a)
#else
#define DFX_PX_ADD(a, b) ((a) + (b))
#define DFX_PX_SUB(a, b) ((a) - (b))
#define DFX_PX_MUL(a, b) ((a) * (b))
#define DFX_PX_DIV(a, b) ((a) / (b))
#define DFX_PX_SQRT(a) sqrt(a)
#endif

DFX_HD uint64_t dfx_px_bits(double x)
{
#if defined(__CUDA_ARCH__)
    return (uint64_t)__double_as_longlong(x);
#else
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

DFX_HD double dfx_px_double(uint64_t u)
{
#if defined(__CUDA_ARCH__)
    return __longlong_as_double((long long)u);
#else
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

/* Natural log of a positive normal double (the uniforms of dfx_philox_normal4
 * lie in [2^-33, 1 - 2^-33]; zero, subnormals, Inf and NaN are not handled).
 * x = 2^k m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f):
 * log(m) = 2 atanh(s) = f - s (f - R), R = sum_{j>=1} 2 s^(2j) / (2j + 1)
 * (|s| <= 0.1716: ten terms leave < 1e-18), and k ln 2 with ln 2 split in a
 * 32-bit head (k * head is exact) and a tail, as in fdlibm's e_log.c. */
DFX_HD double dfx_philox_log(double x)
{
    const double ln2_hi = 0x1.62e42feep-1, ln2_lo = 0x1.a39ef35793c76p-33;
    const uint64_t frac_mask = 0x000fffffffffffffull;
    uint64_t bits = dfx_px_bits(x);
    int k = (int)(bits >> 52) - 1023;
    uint64_t frac = bits & frac_mask;
    double m;
    if ((frac >> 32) >= 0x6a09eu) { /* m >= ~sqrt(2): use m / 2 */
        m = dfx_px_double(frac | 0x3fe0000000000000ull);
        k += 1;
    } else {
        m = dfx_px_double(frac | 0x3ff0000000000000ull);
    }
    const double f = DFX_PX_SUB(m, 1.0);
    const double s = DFX_PX_DIV(f, DFX_PX_ADD(2.0, f));
    const double z = DFX_PX_MUL(s, s);
    double p = 0x1.8618618618618p-4;                    /* 2/21 */
    p = DFX_PX_ADD(0x1.af286bca1af28p-4, DFX_PX_MUL(z, p)); /* 2/19 */
    p = DFX_PX_ADD(0x1.e1e1e1e1e1e1ep-4, DFX_PX_MUL(z, p)); /* 2/17 */
    p = DFX_PX_ADD(0x1.1111111111111p-3, DFX_PX_MUL(z, p)); /* 2/15 */
    p = DFX_PX_ADD(0x1.3b13b13b13b14p-3, DFX_PX_MUL(z, p)); /* 2/13 */
    p = DFX_PX_ADD(0x1.745d1745d1746p-3, DFX_PX_MUL(z, p)); /* 2/11 */
    p = DFX_PX_ADD(0x1.c71c71c71c71cp-3, DFX_PX_MUL(z, p)); /* 2/9 */
    p = DFX_PX_ADD(0x1.2492492492492p-2, DFX_PX_MUL(z, p)); /* 2/7 */
    p = DFX_PX_ADD(0x1.999999999999ap-2, DFX_PX_MUL(z, p)); /* 2/5 */
    p = DFX_PX_ADD(0x1.5555555555555p-1, DFX_PX_MUL(z, p)); /* 2/3 */
    const double R = DFX_PX_MUL(z, p);
    const double t = DFX_PX_MUL(s, DFX_PX_SUB(f, R)); /* log(m) = f - t */
    if (k == 0) return DFX_PX_SUB(f, t);
    const double dk = (double)k;
    /* k ln2_hi - ((t - k ln2_lo) - f) */
    return DFX_PX_SUB(DFX_PX_MUL(dk, ln2_hi),
                      DFX_PX_SUB(DFX_PX_SUB(t, DFX_PX_MUL(dk, ln2_lo)), f));
}

/* sin(2 pi u) and cos(2 pi u) for u in [0, 1] a multiple of 2^-33 (as the
 * uniforms are). u = n/4 + r with n = round(4u) and |r| <= 1/8, exact;
 * with theta = 2 pi r in [-pi/4, pi/4], Taylor series in r (through
 * theta^17 and theta^18: the first omitted terms are < 1e-19), then the
 * quadrant n mod 4 picks and signs them. Reducing u, not 2 pi u, keeps the
 * relative accuracy near the zeros too. */
DFX_HD void dfx_philox_sincos2pi(double u, double *sin_out, double *cos_out)
{
    const double n = (double)(int64_t)DFX_PX_ADD(DFX_PX_MUL(u, 4.0), 0.5); /* u >= 0 */
    const double r = DFX_PX_SUB(u, DFX_PX_MUL(n, 0.25));
    const double r2 = DFX_PX_MUL(r, r);
    /* sin(2 pi r) = r (S0 + r2 (S1 + ... + r2 S8)), S_j = (-1)^j (2 pi)^(2j+1) / (2j+1)! */
    double ps = 0x1.aaec32af93359p-4;
    ps = DFX_PX_ADD(-0x1.6fadb9f155744p-1, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(0x1.e8f434d018d63p+1, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(-0x1.e3074fde8871fp+3, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(0x1.50783487ee782p+5, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(-0x1.32d2cce62bd86p+6, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(0x1.466bc6775aae2p+6, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(-0x1.4abbce625be53p+5, DFX_PX_MUL(r2, ps));
    ps = DFX_PX_ADD(0x1.921fb54442d18p+2, DFX_PX_MUL(r2, ps));
    const double sn = DFX_PX_MUL(r, ps);
    /* cos(2 pi r) = 1 + r2 (C1 + r2 (C2 + ... + r2 C9)), C_j = (-1)^j (2 pi)^(2j) / (2j)! */
    double pc = -0x1.2a0c591af8314p-5;
    pc = DFX_PX_ADD(0x1.20c62c2f2d7f5p-2, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(-0x1.b6e24f44b128fp+0, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(0x1.f9d38a3763cc3p+2, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(-0x1.a6d1f2a204a8cp+4, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(0x1.e1f506891babbp+5, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(-0x1.55d3c7e3cbffap+6, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(0x1.03c1f081b5ac4p+6, DFX_PX_MUL(r2, pc));
    pc = DFX_PX_ADD(-0x1.3bd3cc9be45dep+4, DFX_PX_MUL(r2, pc));
    const double cs = DFX_PX_ADD(1.0, DFX_PX_MUL(r2, pc));
    switch ((int)((int64_t)n & 3)) {
    case 0: *sin_out = sn; *cos_out = cs; break;
    case 1: *sin_out = cs; *cos_out = -sn; break;
    case 2: *sin_out = -sn; *cos_out = -cs; break;
    default: *sin_out = -cs; *cos_out = sn; break;
    }
}

/* Four standard normals for elements 4*group .. 4*group+3 of one sample:
 * Box-Muller r = sqrt(-2 log u1), (r cos 2 pi u2, r sin 2 pi u2) in double
 * with the portable functions above, rounded to float. */
DFX_HD void dfx_philox_normal4(uint64_t seed, uint32_t group, uint32_t draw,
                               uint64_t sample, uint32_t stream, float out[4])
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    /* Sample indices above 2^32 fold their high word into the stream tag's
     * upper half, so the counter stays unique for any realistic run. */
    const uint32_t ctr[4] = {group, draw, (uint32_t)sample,
                             stream ^ ((uint32_t)(sample >> 32) << 16)};
    uint32_t u[4];
    dfx_philox4x32_10(ctr, key, u);
    const double two32inv = 0x1p-32;
    for (int i = 0; i < 4; i += 2) {
        /* (k + 1/2) 2^-32: exact, in [2^-33, 1 - 2^-33] */
        const double u1 = DFX_PX_MUL(DFX_PX_ADD((double)u[i], 0.5), two32inv);
        const double u2 = DFX_PX_MUL(DFX_PX_ADD((double)u[i + 1], 0.5), two32inv);
        const double r = DFX_PX_SQRT(DFX_PX_MUL(-2.0, dfx_philox_log(u1)));
        double sn, cs;
        dfx_philox_sincos2pi(u2, &sn, &cs);
        out[i] = (float)DFX_PX_MUL(r, cs);
        out[i + 1] = (float)DFX_PX_MUL(r, sn);
    }
}

/* The first `cols` normals of one sample for one (draw, stream). */
DFX_HD void dfx_philox_normal_row(uint64_t seed, uint64_t sample, uint32_t draw, uint32_t stream,
                                  size_t cols, float *out)
{
    for (size_t g = 0; g * 4 < cols; g++) {
        float z[4];
        dfx_philox_normal4(seed, (uint32_t)g, draw, sample, stream, z);
        for (size_t j = 0; j < 4 && g * 4 + j < cols; j++) out[g * 4 + j] = z[j];
    }
}

#endif
