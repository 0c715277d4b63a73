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
 * double and rounded to float.
 */
#ifndef DFX_PHILOX_H
#define DFX_PHILOX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

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

/* Four standard normals for elements 4*group .. 4*group+3 of one sample. */
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
    const double two32inv = 2.3283064365386963e-10; /* 2^-32 */
    const double twopi = 6.283185307179586476925286766559;
    for (int i = 0; i < 4; i += 2) {
        double u1 = ((double)u[i] + 0.5) * two32inv;
        double u2 = ((double)u[i + 1] + 0.5) * two32inv;
        double r = sqrt(-2.0 * log(u1));
        out[i] = (float)(r * cos(twopi * u2));
        out[i + 1] = (float)(r * sin(twopi * u2));
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
