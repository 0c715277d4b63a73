/* Sample-quality metrics (host/analysis/metrics.h) against independent references:
 * feature statistics against a naive double loop, the Frechet distance
 * against closed forms (diagonal and 2x2 covariances) and against a
 * Denman-Beavers square root of S1 S2 (the scipy-sqrtm route of
 * pytorch-fid), KID against a brute-force double loop of the unbiased
 * MMD^2, nearest neighbours against brute force; and every function's
 * refusal of bad arguments. */
#include "check.h"
#include "difflux.h"
#include "analysis/metrics.h"

#include <stdlib.h>

static test_rng rng = {0x9E3779B97F4A7C15ull};

/* rows [n, F] of mean + scale N(0, 1), optionally mixed by a fixed matrix
 * so that the coordinates are correlated */
static float *random_rows(long n, int F, double mean, double scale, int correlated)
{
    float *x = malloc(sizeof(float) * (size_t)n * F);
    double *z = malloc(sizeof(double) * F);
    for (long i = 0; i < n; i++) {
        for (int f = 0; f < F; f++) z[f] = rng_normal(&rng);
        for (int f = 0; f < F; f++) {
            double v = z[f];
            if (correlated && f > 0) v = 0.6 * z[f] + 0.5 * z[f - 1] + 0.1 * f * z[0] / F;
            x[(size_t)i * F + f] = (float)(mean + scale * v);
        }
    }
    free(z);
    return x;
}

static double rel_err(double a, double b)
{
    return fabs(a - b) / fmax(fabs(b), 1e-300);
}

/* ------------------------------------------------------------ statistics */

static void naive_stats(const float *x, long n, int F, double *mu, double *cov_ij, int i, int j)
{
    for (int f = 0; f < F; f++) {
        mu[f] = 0;
        for (long r = 0; r < n; r++) mu[f] += x[(size_t)r * F + f];
        mu[f] /= (double)n;
    }
    double s = 0;
    for (long r = 0; r < n; r++)
        s += (x[(size_t)r * F + i] - mu[i]) * (x[(size_t)r * F + j] - mu[j]);
    *cov_ij = s / (double)(n - 1);
}

static void test_stats(void)
{
    dfx_error err = {{0}};
    /* small: every entry */
    {
        enum { N = 57, F = 7 };
        float *x = random_rows(N, F, 3.0, 2.0, 1);
        double mu[F], cov[F * F], ref_mu[F];
        CHECK_OK(dfx_feature_stats(x, N, F, mu, cov, &err), err);
        double worst = 0;
        for (int i = 0; i < F; i++)
            for (int j = 0; j < F; j++) {
                double c;
                naive_stats(x, N, F, ref_mu, &c, i, j);
                worst = fmax(worst, fabs(cov[i * F + j] - c));
                CHECK(cov[i * F + j] == cov[j * F + i], "cov not symmetric at %d,%d", i, j);
            }
        for (int f = 0; f < F; f++) CHECK_NEAR(mu[f], ref_mu[f], 1e-12, "mean");
        CHECK(worst < 1e-12, "covariance vs naive: max error %g", worst);
        printf("stats %dx%d: max |cov - naive| %.2e\n", N, F, worst);
        free(x);
    }
    /* several row blocks (2^20 / F = 3495 rows each): spot-checked entries */
    {
        const long N = 8000;
        const int F = 300;
        float *x = random_rows(N, F, -1.0, 0.5, 1);
        double *mu = malloc(sizeof(double) * F), *cov = malloc(sizeof(double) * F * F);
        double *ref_mu = malloc(sizeof(double) * F);
        CHECK_OK(dfx_feature_stats(x, N, F, mu, cov, &err), err);
        double worst = 0;
        for (int t = 0; t < 60; t++) {
            int i = (int)(rng_uniform(&rng) * F), j = t < 20 ? i : (int)(rng_uniform(&rng) * F);
            double c;
            naive_stats(x, N, F, ref_mu, &c, i, j);
            worst = fmax(worst, fabs(cov[i * F + j] - c));
        }
        double wm = 0;
        for (int f = 0; f < F; f++) wm = fmax(wm, fabs(mu[f] - ref_mu[f]));
        CHECK(wm < 1e-12, "blocked mean vs naive: max error %g", wm);
        CHECK(worst < 1e-12, "blocked covariance vs naive: max error %g", worst);
        printf("stats %ldx%d (3 blocks): max |cov - naive| %.2e\n", N, F, worst);
        free(x);
        free(mu);
        free(cov);
        free(ref_mu);
    }
}

/* ------------------------------------------------------ Frechet distance */

/* Gauss-Jordan inverse with partial pivoting of A [n, n] into out. */
static void invert(const double *A, int n, double *out)
{
    double *a = malloc(sizeof(double) * n * n);
    memcpy(a, A, sizeof(double) * n * n);
    for (int i = 0; i < n * n; i++) out[i] = (i / n == i % n);
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[p * n + c])) p = r;
        for (int k = 0; k < n; k++) {
            double t = a[c * n + k];
            a[c * n + k] = a[p * n + k];
            a[p * n + k] = t;
            t = out[c * n + k];
            out[c * n + k] = out[p * n + k];
            out[p * n + k] = t;
        }
        const double d = a[c * n + c];
        for (int k = 0; k < n; k++) {
            a[c * n + k] /= d;
            out[c * n + k] /= d;
        }
        for (int r = 0; r < n; r++) {
            if (r == c) continue;
            const double f = a[r * n + c];
            for (int k = 0; k < n; k++) {
                a[r * n + k] -= f * a[c * n + k];
                out[r * n + k] -= f * out[c * n + k];
            }
        }
    }
    free(a);
}

/* tr sqrt(S1 S2) by the Denman-Beavers iteration Y <- (Y + Z^-1) / 2,
 * Z <- (Z + Y^-1) / 2 from Y = S1 S2, Z = I (Y -> (S1 S2)^1/2, whose trace
 * is that of sqrt(S1^1/2 S2 S1^1/2): the matrices are similar). */
static double trace_sqrt_db(const double *S1, const double *S2, int n)
{
    const size_t nn = (size_t)n * n;
    double *Y = calloc(nn, sizeof(double)), *Z = calloc(nn, sizeof(double));
    double *Yi = malloc(sizeof(double) * nn), *Zi = malloc(sizeof(double) * nn);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            for (int k = 0; k < n; k++) Y[i * n + j] += S1[i * n + k] * S2[k * n + j];
            Z[i * n + j] = i == j;
        }
    for (int it = 0; it < 60; it++) {
        invert(Y, n, Yi);
        invert(Z, n, Zi);
        for (size_t k = 0; k < nn; k++) {
            Y[k] = 0.5 * (Y[k] + Zi[k]);
            Z[k] = 0.5 * (Z[k] + Yi[k]);
        }
    }
    double tr = 0;
    for (int i = 0; i < n; i++) tr += Y[i * n + i];
    free(Y);
    free(Z);
    free(Yi);
    free(Zi);
    return tr;
}

static double trace(const double *S, int n)
{
    double t = 0;
    for (int i = 0; i < n; i++) t += S[i * n + i];
    return t;
}

static void test_frechet(void)
{
    dfx_error err = {{0}};
    double fid = -1, fid2 = -1;
    /* diagonal: |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2 */
    {
        enum { F = 5 };
        double m1[F], m2[F], S1[F * F] = {0}, S2[F * F] = {0}, want = 0;
        for (int i = 0; i < F; i++) {
            m1[i] = rng_normal(&rng);
            m2[i] = rng_normal(&rng);
            const double a = 0.1 + 3 * rng_uniform(&rng), b = 0.1 + 3 * rng_uniform(&rng);
            S1[i * F + i] = a;
            S2[i * F + i] = b;
            want += (m1[i] - m2[i]) * (m1[i] - m2[i]) + (sqrt(a) - sqrt(b)) * (sqrt(a) - sqrt(b));
        }
        CHECK_OK(dfx_frechet_distance(m1, S1, m2, S2, F, &fid, &err), err);
        CHECK(rel_err(fid, want) < 1e-12, "diagonal FID %.17g vs closed form %.17g", fid, want);
        printf("FID diagonal: %.15f vs closed form %.15f\n", fid, want);
    }
    /* general 2x2, non-commuting: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
     * for M with the eigenvalues of S1 S2 */
    {
        const double m1[2] = {0.3, -1.2}, m2[2] = {-0.4, 0.5};
        const double S1[4] = {2.0, 0.7, 0.7, 1.0}, S2[4] = {0.5, -0.3, -0.3, 1.5};
        const double trS1S2 = S1[0] * S2[0] + S1[1] * S2[2] + S1[2] * S2[1] + S1[3] * S2[3];
        const double det1 = S1[0] * S1[3] - S1[1] * S1[2], det2 = S2[0] * S2[3] - S2[1] * S2[2];
        const double dmu = (m1[0] - m2[0]) * (m1[0] - m2[0]) + (m1[1] - m2[1]) * (m1[1] - m2[1]);
        const double want = dmu + trace(S1, 2) + trace(S2, 2) -
                            2 * sqrt(trS1S2 + 2 * sqrt(det1 * det2));
        CHECK_OK(dfx_frechet_distance(m1, S1, m2, S2, 2, &fid, &err), err);
        CHECK(rel_err(fid, want) < 1e-12, "2x2 FID %.17g vs closed form %.17g", fid, want);
        printf("FID 2x2: %.15f vs closed form %.15f\n", fid, want);
    }
    /* random 20-dimensional covariances from samples */
    {
        enum { F = 20, N = 200 };
        float *x1 = random_rows(N, F, 0.0, 1.0, 1), *x2 = random_rows(N, F, 0.2, 1.3, 0);
        double m1[F], m2[F], S1[F * F], S2[F * F];
        CHECK_OK(dfx_feature_stats(x1, N, F, m1, S1, &err), err);
        CHECK_OK(dfx_feature_stats(x2, N, F, m2, S2, &err), err);
        const double tr = trace(S1, F) + trace(S2, F);

        CHECK_OK(dfx_frechet_distance(m1, S1, m1, S1, F, &fid, &err), err);
        CHECK(fid >= 0 && fid <= 1e-9 * 2 * trace(S1, F), "FID(X, X) = %g (tr S %g)", fid,
              trace(S1, F));
        printf("FID(X, X) 20-dim: %.3g (tr S = %.3g)\n", fid, trace(S1, F));
        /* only the means differ: |dmu|^2, away from the clamp at 0 */
        double shifted[F], dmu2 = 0;
        for (int i = 0; i < F; i++) {
            shifted[i] = m1[i] + 0.01 * (i - 7);
            dmu2 += 0.0001 * (i - 7) * (i - 7);
        }
        CHECK_OK(dfx_frechet_distance(m1, S1, shifted, S1, F, &fid, &err), err);
        CHECK(fabs(fid - dmu2) <= 1e-9 * trace(S1, F), "FID of a mean shift %.17g vs %.17g", fid,
              dmu2);
        printf("FID mean shift 20-dim: error %.3g (|dmu|^2 = %.4g)\n", fid - dmu2, dmu2);

        CHECK_OK(dfx_frechet_distance(m1, S1, m2, S2, F, &fid, &err), err);
        CHECK_OK(dfx_frechet_distance(m2, S2, m1, S1, F, &fid2, &err), err);
        CHECK(fabs(fid - fid2) <= 1e-9 * tr, "FID not symmetric: %.17g vs %.17g", fid, fid2);

        double d2 = 0;
        for (int i = 0; i < F; i++) d2 += (m1[i] - m2[i]) * (m1[i] - m2[i]);
        const double want = d2 + tr - 2 * trace_sqrt_db(S1, S2, F);
        CHECK(fabs(fid - want) <= 1e-9 * tr, "FID %.17g vs Denman-Beavers %.17g", fid, want);
        printf("FID 20-dim: %.12f vs Denman-Beavers %.12f, reversed %.12f\n", fid, want, fid2);
        free(x1);
        free(x2);
    }
    /* rank-deficient covariances (n = 10 < F = 20) */
    {
        enum { F = 20, N = 10 };
        float *x1 = random_rows(N, F, 0.0, 1.0, 1), *x2 = random_rows(N, F, 0.5, 1.0, 0);
        double m1[F], m2[F], S1[F * F], S2[F * F], S3[F * F] = {0};
        CHECK_OK(dfx_feature_stats(x1, N, F, m1, S1, &err), err);
        CHECK_OK(dfx_feature_stats(x2, N, F, m2, S2, &err), err);
        for (int i = 0; i < F; i++) S3[i * F + i] = 1.0;
        CHECK_OK(dfx_frechet_distance(m1, S1, m1, S1, F, &fid, &err), err);
        CHECK(isfinite(fid) && fid <= 1e-9 * trace(S1, F), "rank-deficient FID(X, X) = %g",
              fid);
        printf("FID(X, X) rank 9 of 20: %.3g (tr S = %.3g)\n", fid, trace(S1, F));
        double shifted[F], dmu2 = 0;
        for (int i = 0; i < F; i++) {
            shifted[i] = m1[i] + 0.01 * (i - 7);
            dmu2 += 0.0001 * (i - 7) * (i - 7);
        }
        CHECK_OK(dfx_frechet_distance(m1, S1, shifted, S1, F, &fid, &err), err);
        CHECK(fabs(fid - dmu2) <= 1e-9 * trace(S1, F),
              "rank-deficient FID of a mean shift %.17g vs %.17g", fid, dmu2);
        printf("FID mean shift rank 9 of 20: error %.3g\n", fid - dmu2);
        CHECK_OK(dfx_frechet_distance(m1, S1, m2, S2, F, &fid, &err), err);
        CHECK_OK(dfx_frechet_distance(m2, S2, m1, S1, F, &fid2, &err), err);
        CHECK(isfinite(fid) && fid > 0, "rank-deficient FID = %g", fid);
        CHECK(fabs(fid - fid2) <= 1e-9 * (trace(S1, F) + trace(S2, F)),
              "rank-deficient FID not symmetric: %.17g vs %.17g", fid, fid2);
        printf("FID rank-deficient pair: %.6f, reversed %.6f\n", fid, fid2);
        /* against the identity: S^1/2 I^1/2 = S^1/2, so tr sqrt = tr S^1/2 */
        CHECK_OK(dfx_frechet_distance(m1, S1, m1, S3, F, &fid, &err), err);
        CHECK(isfinite(fid) && fid > 0, "rank-deficient vs identity FID = %g", fid);
        free(x1);
        free(x2);
    }
}

/* ------------------------------------------------------------------- KID */

static double kern(const float *x, const float *y, int F)
{
    double d = 0;
    for (int f = 0; f < F; f++) d += (double)x[f] * y[f];
    const double t = d / F + 1;
    return t * t * t;
}

/* the unbiased MMD^2 of all rows of a and b, na = nb = m */
static double brute_mmd(const float *a, const float *b, int m, int F)
{
    double xx = 0, yy = 0, xy = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++) {
            if (i != j) {
                xx += kern(a + i * F, a + j * F, F);
                yy += kern(b + i * F, b + j * F, F);
            }
            xy += kern(a + i * F, b + j * F, F);
        }
    return (xx + yy) / ((double)m * (m - 1)) - 2 * xy / ((double)m * m);
}

static void test_kid(void)
{
    dfx_error err = {{0}};
    double mean = 0, std = -1;
    /* no sampling ambiguity: one subset of every row */
    {
        enum { M = 40, F = 6 };
        float *a = random_rows(M, F, 0.0, 1.0, 1), *b = random_rows(M, F, 0.3, 1.2, 0);
        const double want = brute_mmd(a, b, M, F);
        CHECK_OK(dfx_kid(a, M, b, M, F, 1, M, 7, &mean, &std, &err), err);
        CHECK(rel_err(mean, want) < 1e-10, "KID %.17g vs brute force %.17g", mean, want);
        CHECK(std == 0, "std of one subset: %g", std);
        printf("KID all rows: %.15f vs brute force %.15f\n", mean, want);
        /* three subsets of every row: permutations of the same sets */
        CHECK_OK(dfx_kid(a, M, b, M, F, 3, 1000, 7, &mean, &std, &err), err);
        CHECK(rel_err(mean, want) < 1e-10 && std < 1e-12 * fabs(want) + 1e-15,
              "KID of 3 full subsets (m reduced to %d): %.17g +- %g vs %.17g", M, mean, std,
              want);
        CHECK_OK(dfx_kid(b, M, a, M, F, 1, M, 99, &mean, NULL, &err), err);
        CHECK(rel_err(mean, want) < 1e-10, "KID(b, a) %.17g vs KID(a, b) %.17g", mean, want);
        free(a);
        free(b);
    }
    /* sampling: deterministic, seed-dependent; shifted vs same distribution */
    {
        enum { N = 600, F = 16, S = 20, M = 200 };
        float *a = random_rows(N, F, 0.0, 1.0, 0), *b = random_rows(N, F, 0.0, 1.0, 0);
        float *c = random_rows(N, F, 0.5, 1.0, 0);
        double m1, s1, m2, s2, m3;
        CHECK_OK(dfx_kid(a, N, c, N, F, S, M, 1, &m1, &s1, &err), err);
        CHECK_OK(dfx_kid(a, N, c, N, F, S, M, 1, &m2, &s2, &err), err);
        CHECK(m1 == m2 && s1 == s2, "KID not deterministic: %.17g vs %.17g", m1, m2);
        CHECK_OK(dfx_kid(a, N, c, N, F, S, M, 2, &m3, NULL, &err), err);
        CHECK(m3 != m1, "KID the same with another seed: %.17g", m3);
        /* subset s does not depend on how many subsets there are */
        double first_one, first_two, sd2;
        CHECK_OK(dfx_kid(a, N, c, N, F, 1, M, 5, &first_one, NULL, &err), err);
        CHECK_OK(dfx_kid(a, N, c, N, F, 2, M, 5, &first_two, &sd2, &err), err);
        CHECK(sd2 > 0, "two different subsets gave the same estimate");
        CHECK(fabs(first_two - first_one) <= sd2 * (1 + 1e-9),
              "mean of 2 subsets %.17g is not within one std (%g) of subset 0 (%.17g)",
              first_two, sd2, first_one);
        CHECK(m1 > 5 * s1 && m1 > 0.05, "shifted distribution: KID %.5f +- %.5f", m1, s1);
        printf("KID shifted by 0.5: %.5f +- %.5f\n", m1, s1);
        CHECK_OK(dfx_kid(a, N, b, N, F, S, M, 1, &m2, &s2, &err), err);
        CHECK(fabs(m2) < 3 * s2 && fabs(m2) < 0.1 * m1, "same distribution: KID %.5f +- %.5f",
              m2, s2);
        printf("KID same distribution: %.5f +- %.5f\n", m2, s2);
        free(a);
        free(b);
        free(c);
    }
}

/* ----------------------------------------------------- nearest neighbour */

static void test_nearest(void)
{
    dfx_error err = {{0}};
    /* 2 query blocks x 3 reference blocks; the first 7 queries are copies
     * of reference rows */
    enum { N = 300, NREF = 9000, D = 13, COPIES = 7 };
    float *ref = random_rows(NREF, D, 0.0, 1.0, 1), *q = random_rows(N, D, 0.1, 1.0, 1);
    long copied[COPIES];
    for (int c = 0; c < COPIES; c++) {
        copied[c] = (long)(rng_uniform(&rng) * NREF);
        memcpy(q + c * D, ref + copied[c] * D, sizeof(float) * D);
    }
    double *dist = malloc(sizeof(double) * N);
    long *idx = malloc(sizeof(long) * N);
    CHECK_OK(dfx_nearest(q, N, ref, NREF, D, dist, idx, &err), err);
    int wrong = 0;
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double best = INFINITY;
        long bi = -1;
        for (long j = 0; j < NREF; j++) {
            double d2 = 0;
            for (int f = 0; f < D; f++) {
                const double d = (double)q[i * D + f] - ref[j * D + f];
                d2 += d * d;
            }
            if (d2 < best) {
                best = d2;
                bi = j;
            }
        }
        wrong += idx[i] != bi;
        worst = fmax(worst, fabs(dist[i] - sqrt(best)));
        if (i < COPIES)
            CHECK(dist[i] == 0 && idx[i] == copied[i], "copied query %d: index %ld (want %ld), "
                  "distance %g", i, idx[i], copied[i], dist[i]);
    }
    CHECK(wrong == 0, "%d of %d nearest indices differ from brute force", wrong, N);
    CHECK(worst < 1e-5, "nearest distance vs brute force: max error %g", worst);
    printf("nearest %d x %d (D %d): %d wrong indices, max distance error %.2e\n", N, NREF, D,
           wrong, worst);
    /* without indices, a single reference */
    double d1 = 0;
    CHECK_OK(dfx_nearest(q, N, ref, NREF, D, dist, NULL, &err), err);
    CHECK_OK(dfx_nearest(q + D, 1, ref, 1, D, &d1, NULL, &err), err);
    double want = 0;
    for (int f = 0; f < D; f++) {
        const double e = (double)q[D + f] - ref[f];
        want += e * e;
    }
    CHECK_NEAR(d1, sqrt(want), 1e-12, "distance to the single reference");
    free(ref);
    free(q);
    free(dist);
    free(idx);
}

/* ------------------------------------------------------- bad arguments */

#define CHECK_FAILS(call, want)                                                                \
    do {                                                                                       \
        dfx_error e_ = {{0}};                                                                  \
        int rc_ = (call);                                                                      \
        CHECK(rc_ == -1 && strstr(e_.msg, want), "%s: rc %d, message \"%s\" (want \"%s\")",   \
              #call, rc_, e_.msg, want);                                                       \
    } while (0)

static void test_bad_arguments(void)
{
    float x[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, nan_x[12];
    memcpy(nan_x, x, sizeof x);
    nan_x[7] = NAN;
    double mu[4] = {0}, cov[16] = {0}, out = 0, d[6];
    long ix[6];
    const double I2[4] = {1, 0, 0, 1}, indef[4] = {1, 0, 0, -1}, asym[4] = {1, 0.5, 0, 1};
    const double nan2[4] = {1, 0, 0, NAN}, m2[2] = {0, 0};

    CHECK_FAILS(dfx_feature_stats(x, 1, 4, mu, cov, &e_), "at least 2");
    CHECK_FAILS(dfx_feature_stats(x, 3, 0, mu, cov, &e_), "dimension 0");
    CHECK_FAILS(dfx_feature_stats(NULL, 3, 4, mu, cov, &e_), "NULL features");
    CHECK_FAILS(dfx_feature_stats(x, 3, 4, mu, NULL, &e_), "NULL covariance");
    CHECK_FAILS(dfx_feature_stats(nan_x, 3, 4, mu, cov, &e_), "row 1, column 3");

    CHECK_FAILS(dfx_frechet_distance(m2, I2, m2, I2, 0, &out, &e_), "dimension 0");
    CHECK_FAILS(dfx_frechet_distance(m2, NULL, m2, I2, 2, &out, &e_), "NULL S1");
    CHECK_FAILS(dfx_frechet_distance(m2, I2, m2, I2, 2, NULL, &e_), "NULL output");
    CHECK_FAILS(dfx_frechet_distance(m2, I2, m2, indef, 2, &out, &e_),
                "S2 is not positive semidefinite");
    CHECK_FAILS(dfx_frechet_distance(m2, asym, m2, I2, 2, &out, &e_), "S1 is not symmetric");
    CHECK_FAILS(dfx_frechet_distance(m2, I2, m2, nan2, 2, &out, &e_), "S2[1][1]");

    CHECK_FAILS(dfx_kid(x, 3, x, 3, 4, 1, 1, 0, &out, NULL, &e_), "at least 2");
    CHECK_FAILS(dfx_kid(x, 1, x, 3, 4, 1, 100, 0, &out, NULL, &e_), "na = 1");
    CHECK_FAILS(dfx_kid(x, 3, x, 3, 4, 0, 3, 0, &out, NULL, &e_), "0 subsets");
    CHECK_FAILS(dfx_kid(x, 3, x, 3, 0, 1, 3, 0, &out, NULL, &e_), "dimension 0");
    CHECK_FAILS(dfx_kid(x, 3, NULL, 3, 4, 1, 3, 0, &out, NULL, &e_), "NULL features b");
    CHECK_FAILS(dfx_kid(x, 3, nan_x, 3, 4, 1, 3, 0, &out, NULL, &e_), "features b row 1");

    CHECK_FAILS(dfx_nearest(x, 0, x, 3, 4, d, ix, &e_), "0 queries");
    CHECK_FAILS(dfx_nearest(x, 3, x, 0, 4, d, ix, &e_), "0 references");
    CHECK_FAILS(dfx_nearest(x, 3, x, 3, 0, d, ix, &e_), "dimension 0");
    CHECK_FAILS(dfx_nearest(x, 3, x, 3, 4, NULL, ix, &e_), "NULL distance");
    CHECK_FAILS(dfx_nearest(x, 3, nan_x, 3, 4, d, ix, &e_), "references row 1");
}

int main(void)
{
    test_stats();
    test_frechet();
    test_kid();
    test_nearest();
    test_bad_arguments();
    return check_report("test_metrics");
}
