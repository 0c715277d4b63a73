/* Philox4x32-10 known-answer vectors (Random123 / MATH.md section 5) and
 * the properties of the normals built on it. */
#include "check.h"
#include "difflux.h"

#include <stdlib.h>

static void kat(const uint32_t c[4], const uint32_t k[2], const uint32_t want[4])
{
    uint32_t out[4];
    dfx_philox4x32(c, k, out);
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == want[i], "word %d: 0x%08x, expected 0x%08x", i, out[i], want[i]);
}

int main(void)
{
    {
        const uint32_t c[4] = {0, 0, 0, 0}, k[2] = {0, 0};
        const uint32_t w[4] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8};
        kat(c, k, w);
    }
    {
        const uint32_t c[4] = {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff};
        const uint32_t k[2] = {0xffffffff, 0xffffffff};
        const uint32_t w[4] = {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd};
        kat(c, k, w);
    }
    {
        const uint32_t c[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
        const uint32_t k[2] = {0xa4093822, 0x299f31d0};
        const uint32_t w[4] = {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1};
        kat(c, k, w);
    }

    /* The first four normals of sample 7, draw 3, stream 1, seed S are
     * Box-Muller of philox((0, 3, 7, 1), (S lo, S hi)). */
    {
        uint64_t seed = 0x123456789abcdefULL;
        float z[6];
        dfx_normal_host(seed, 7, 1, 6, 3, 1, z);
        const uint32_t c[4] = {0, 3, 7, 1}, k[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t u[4];
        dfx_philox4x32(c, k, u);
        double u1 = (u[0] + 0.5) / 4294967296.0, u2 = (u[1] + 0.5) / 4294967296.0;
        double r = sqrt(-2.0 * log(u1));
        CHECK(z[0] == (float)(r * cos(2 * M_PI * u2)), "normal 0: %g", z[0]);
        CHECK(z[1] == (float)(r * sin(2 * M_PI * u2)), "normal 1: %g", z[1]);
        /* elements 4 and 5 come from counter word 0 = 1 */
        const uint32_t c1[4] = {1, 3, 7, 1};
        dfx_philox4x32(c1, k, u);
        u1 = (u[0] + 0.5) / 4294967296.0;
        u2 = (u[1] + 0.5) / 4294967296.0;
        r = sqrt(-2.0 * log(u1));
        CHECK(z[4] == (float)(r * cos(2 * M_PI * u2)), "normal 4: %g", z[4]);
    }

    /* Sample i's noise depends only on (seed, i, draw, stream, element). */
    {
        enum { R = 9, D = 13 };
        static float all[R * D], one[D];
        dfx_normal_host(42, 100, R, D, 5, 1, all);
        for (int r = 0; r < R; r++) {
            dfx_normal_host(42, 100 + (uint64_t)r, 1, D, 5, 1, one);
            CHECK(memcmp(one, all + r * D, sizeof one) == 0, "row %d differs when drawn alone", r);
        }
        /* a different draw, stream, seed or sample gives different numbers */
        static float other[D];
        dfx_normal_host(42, 100, 1, D, 6, 1, other);
        CHECK(memcmp(other, all, sizeof other) != 0, "draw index ignored");
        dfx_normal_host(42, 100, 1, D, 5, 0, other);
        CHECK(memcmp(other, all, sizeof other) != 0, "stream tag ignored");
        dfx_normal_host(43, 100, 1, D, 5, 1, other);
        CHECK(memcmp(other, all, sizeof other) != 0, "seed ignored");
        dfx_normal_host(42, 100 + (1ULL << 32), 1, D, 5, 1, other);
        CHECK(memcmp(other, all, sizeof other) != 0, "high word of the sample index ignored");
    }

    /* Moments of 2^20 normals: mean 0, variance 1, kurtosis 3, and the
     * correlation of the Box-Muller pair is 0. */
    {
        const size_t N = 1 << 20;
        float *z = malloc(N * sizeof *z);
        dfx_normal_host(7, 0, 1024, N / 1024, 0, 0, z);
        double m1 = 0, m2 = 0, m4 = 0, pair = 0;
        for (size_t i = 0; i < N; i++) {
            double v = z[i];
            m1 += v;
            m2 += v * v;
            m4 += v * v * v * v;
            if (i % 2 == 0) pair += v * z[i + 1];
        }
        m1 /= N;
        m2 /= N;
        m4 /= N;
        pair /= N / 2;
        double se = 1.0 / sqrt((double)N);
        CHECK_NEAR(m1, 0.0, 5 * se, "mean");
        CHECK_NEAR(m2, 1.0, 5 * sqrt(2.0) * se, "variance");
        CHECK_NEAR(m4, 3.0, 5 * sqrt(96.0) * se, "fourth moment");
        CHECK_NEAR(pair, 0.0, 5 * sqrt(2.0) * se, "pair correlation");
        free(z);
    }
    return check_report("test_philox");
}
