/* Philox4x32-10 known-answer vectors (Random123 / MATH.md section 5), the
 * portable log / sin / cos of the Box-Muller transform against libm, and
 * the properties of the normals built on them. */
#include "check.h"
#include "difflux.h"
#include "core/philox.h"

#include <float.h>
#include <stdlib.h>

static void kat(const uint32_t c[4], const uint32_t k[2], const uint32_t want[4])
{
    uint32_t out[4];
    dfx_philox4x32(c, k, out);
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == want[i], "word %d: 0x%08x, expected 0x%08x", i, out[i], want[i]);
}

static test_rng rng = {0x2545F4914F6CDD1Dull};

static uint32_t next_u32(void) /* splitmix64, high word */
{
    return (uint32_t)(rng_u64(&rng) >> 32);
}

/* The uniform (k + 1/2) 2^-32 that Box-Muller sees. */
static double uniform_of(uint32_t k)
{
    return ((double)k + 0.5) / 4294967296.0;
}

/* Inputs worth checking by name: both ends, the binade edges of the log's
 * reduction, the quarter-turn edges of the sin/cos reduction. */
static uint32_t special_input(int i)
{
    static const uint32_t fixed[] = {0u,          1u,          2u,          0xffffffffu,
                                     0xfffffffeu, 0x7fffffffu, 0x80000000u, 0x3fffffffu,
                                     0x40000000u, 0xbfffffffu, 0xc0000000u, 0x1fffffffu,
                                     0x20000000u, 0xdfffffffu, 0xe0000000u, 0x6a09e667u,
                                     0xb504f333u, 0xb504f334u, 0x5f5e100u};
    const int nf = (int)(sizeof fixed / sizeof fixed[0]);
    if (i < nf) return fixed[i];
    /* then around every multiple of 2^27 (u near j / 32) */
    i -= nf;
    return (uint32_t)((uint32_t)(i / 5) << 27) + (uint32_t)(i % 5) - 2u;
}

/* The portable log and sin/cos (philox.h) agree with libm to 1e-14 (in
 * fact to about 1 ulp) on Box-Muller's inputs: log relative to its value,
 * sin/cos absolutely (libm rounds 2 pi u before reducing, so near a zero of
 * sin(2 pi u) its relative error is not small; ours is) and, where long
 * double has 64 bits, relative to sin/cos of the exactly reduced angle. */
static void portable_math(void)
{
    const int N = 1 << 21, NS = 19 + 5 * 32;
    const long double twopi_l = 6.283185307179586476925286766559005768L;
    double worst_log = 0, worst_sc = 0, worst_scl = 0;
    long bad = 0;
    for (int i = 0; i < N + NS; i++) {
        const uint32_t k = i < NS ? special_input(i) : next_u32();
        const double u = uniform_of(k);
        const double L = dfx_philox_log(u), Lref = log(u);
        const double el = fabs(L - Lref) / fabs(Lref);
        if (el > worst_log) worst_log = el;
        double sn, cs;
        dfx_philox_sincos2pi(u, &sn, &cs);
        const double es = fmax(fabs(sn - sin(2 * M_PI * u)), fabs(cs - cos(2 * M_PI * u)));
        if (es > worst_sc) worst_sc = es;
        if (!(el <= 1e-14) || !(es <= 1e-14)) {
            if (bad++ < 5)
                fprintf(stderr, "u = %a: log %.17g vs %.17g, sin %.17g vs %.17g, cos %.17g vs %.17g\n",
                        u, L, Lref, sn, sin(2 * M_PI * u), cs, cos(2 * M_PI * u));
        }
        if (LDBL_MANT_DIG >= 64) {
            /* u = n/4 + r exactly; sin/cos(2 pi u) from those of 2 pi r */
            const double n = floor(4 * u + 0.5), r = u - n / 4;
            const long double s0 = sinl(twopi_l * r), c0 = cosl(twopi_l * r);
            long double sref, cref;
            switch ((int)n & 3) {
            case 0: sref = s0; cref = c0; break;
            case 1: sref = c0; cref = -s0; break;
            case 2: sref = -s0; cref = -c0; break;
            default: sref = -c0; cref = s0; break;
            }
            double e1 = sref != 0 ? (double)fabsl((sn - sref) / sref) : fabs(sn);
            double e2 = (double)fabsl((cs - cref) / cref);
            double e = fmax(e1, e2);
            if (e > worst_scl) worst_scl = e;
            if (!(e <= 1e-14) && bad++ < 5)
                fprintf(stderr, "u = %a: sin %.17g vs %.20Lg, cos %.17g vs %.20Lg\n", u, sn,
                        sref, cs, cref);
        }
    }
    CHECK(bad == 0, "%ld inputs where the portable log/sin/cos are off by more than 1e-14", bad);
    printf("portable log: max relative error %.2e; sin/cos: max error %.2e vs libm, "
           "%.2e relative (long double, exact reduction)\n",
           worst_log, worst_sc, worst_scl);
    CHECK(worst_log < 1e-15 && worst_sc < 1e-15, "accuracy regressed: %.3g %.3g", worst_log,
          worst_sc);

    /* the extremes by value */
    {
        const double L = dfx_philox_log(uniform_of(0)); /* u = 2^-33 */
        CHECK(fabs(L - log(0x1p-33)) <= 1e-15 * fabs(L), "log(2^-33) = %.17g", L);
    }
    {
        const double u = uniform_of(0xffffffffu), L = dfx_philox_log(u);
        CHECK(fabs(L - log1p(-0x1p-33)) <= 1e-15 * fabs(L), "log(1 - 2^-33) = %.17g", L);
    }
}

/* The normals: Box-Muller through libm, to float rounding. Virtually all
 * are the very float libm would give. */
static void normals_vs_libm(void)
{
    enum { G = 1 << 18 };
    const uint64_t seed = 0xC0FFEE1234ull;
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    long differ = 0, bad = 0;
    for (uint32_t g = 0; g < G; g++) {
        float z[4];
        dfx_philox_normal4(seed, g, 2, 11, 1, z);
        const uint32_t c[4] = {g, 2, 11, 1};
        uint32_t u[4];
        dfx_philox4x32(c, key, u);
        for (int i = 0; i < 4; i += 2) {
            const double u1 = uniform_of(u[i]), u2 = uniform_of(u[i + 1]);
            const double r = sqrt(-2.0 * log(u1));
            const double ref[2] = {r * cos(2 * M_PI * u2), r * sin(2 * M_PI * u2)};
            for (int j = 0; j < 2; j++) {
                const double zz = z[i + j];
                differ += zz != (double)(float)ref[j];
                if (!(fabs(zz - ref[j]) <= 2e-7 * fmax(1.0, fabs(ref[j]))) && bad++ < 5)
                    fprintf(stderr, "group %u value %d: %.9g vs libm %.17g\n", g, i + j, zz,
                            ref[j]);
            }
        }
    }
    printf("normals: %ld of %d floats differ from libm-based Box-Muller (all within 2e-7)\n",
           differ, 4 * G);
    CHECK(bad == 0, "%ld normals further than 2e-7 from libm-based Box-Muller", bad);
    CHECK(differ <= 4 * G / 100000, "%ld floats differ from libm-based Box-Muller", differ);
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
        /* to float rounding of libm's Box-Muller (the portable log/sin/cos
         * are within about 1 ulp of libm's in double) */
        double u1 = (u[0] + 0.5) / 4294967296.0, u2 = (u[1] + 0.5) / 4294967296.0;
        double r = sqrt(-2.0 * log(u1)), w;
        w = r * cos(2 * M_PI * u2);
        CHECK(fabs(z[0] - w) <= 2e-7 * fmax(1.0, fabs(w)), "normal 0: %.9g vs %.17g", z[0], w);
        w = r * sin(2 * M_PI * u2);
        CHECK(fabs(z[1] - w) <= 2e-7 * fmax(1.0, fabs(w)), "normal 1: %.9g vs %.17g", z[1], w);
        /* exactly: the portable functions, in double */
        double sn, cs;
        dfx_philox_sincos2pi(u2, &sn, &cs);
        r = sqrt(-2.0 * dfx_philox_log(u1));
        CHECK(z[0] == (float)(r * cs) && z[1] == (float)(r * sn), "normals 0, 1: %.9g %.9g",
              z[0], z[1]);
        /* elements 4 and 5 come from counter word 0 = 1 */
        const uint32_t c1[4] = {1, 3, 7, 1};
        dfx_philox4x32(c1, k, u);
        u1 = (u[0] + 0.5) / 4294967296.0;
        u2 = (u[1] + 0.5) / 4294967296.0;
        r = sqrt(-2.0 * log(u1));
        w = r * cos(2 * M_PI * u2);
        CHECK(fabs(z[4] - w) <= 2e-7 * fmax(1.0, fabs(w)), "normal 4: %.9g vs %.17g", z[4], w);
        dfx_philox_sincos2pi(u2, &sn, &cs);
        r = sqrt(-2.0 * dfx_philox_log(u1));
        CHECK(z[4] == (float)(r * cs) && z[5] == (float)(r * sn), "normals 4, 5: %.9g %.9g",
              z[4], z[5]);
    }

    portable_math();
    normals_vs_libm();

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
