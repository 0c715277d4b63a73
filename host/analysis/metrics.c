/*
 * Sample-quality metrics (metrics.h): feature statistics, Frechet distance,
 * KID and nearest neighbours. Matrix products by OpenBLAS, eigen- and
 * singular-value decompositions by the LAPACK bundled with it.
 */
#include "analysis/metrics.h"
#include "core/error.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* LAPACK's Fortran symbols (there is no lapacke.h). The trailing size_t are
 * gfortran's hidden lengths of the character arguments: passing them keeps
 * the call correct even where the Fortran code tail-calls with them. */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork, int *info,
             size_t jobz_len, size_t uplo_len);
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *iwork, int *info, size_t jobz_len);

/* Fails naming the first non-finite entry of x [rows, cols]. */
static int check_finite(const float *x, long rows, int cols, const char *who, const char *what,
                        dfx_error *err)
{
    for (long i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * (size_t)cols;
        for (int j = 0; j < cols; j++)
            if (!isfinite(r[j]))
                return dfx_fail(err, "%s: %s row %ld, column %d is %g (not finite)", who, what, i,
                                j, (double)r[j]);
    }
    return 0;
}

/* ------------------------------------------------------------ statistics */

int dfx_feature_stats(const float *feat, long n, int F, double *mu, double *cov, dfx_error *err)
{
    const char *who = "feature stats";
    if (!feat || !mu || !cov)
        return dfx_fail(err, "%s: NULL %s", who,
                        !feat ? "features" : !mu ? "mean output" : "covariance output");
    if (F < 1) return dfx_fail(err, "%s: feature dimension %d (must be >= 1)", who, F);
    if (n < 2)
        return dfx_fail(err, "%s: %ld sample(s): the covariance needs at least 2", who, n);
    if (check_finite(feat, n, F, who, "features", err)) return -1;
    const size_t Fs = (size_t)F;

    for (size_t j = 0; j < Fs; j++) mu[j] = 0;
    for (long i = 0; i < n; i++) {
        const float *x = feat + (size_t)i * Fs;
        for (size_t j = 0; j < Fs; j++) mu[j] += x[j];
    }
    for (size_t j = 0; j < Fs; j++) mu[j] /= (double)n;

    /* centred rows, 8 MB of them at a time, into cov += X^T X (upper) */
    long blk = (long)((1u << 20) / Fs);
    if (blk < 1) blk = 1;
    if (blk > n) blk = n;
    double *buf = dfx_alloc((size_t)blk * Fs, sizeof(double), "feature stats: row block", err);
    if (!buf) return -1;
    memset(cov, 0, sizeof(double) * Fs * Fs);
    for (long i0 = 0; i0 < n; i0 += blk) {
        const long rows = n - i0 < blk ? n - i0 : blk;
        for (long r = 0; r < rows; r++) {
            const float *x = feat + (size_t)(i0 + r) * Fs;
            double *c = buf + (size_t)r * Fs;
            for (size_t j = 0; j < Fs; j++) c[j] = (double)x[j] - mu[j];
        }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, F, (int)rows, 1.0, buf, F, 1.0, cov,
                    F);
    }
    free(buf);
    const double scale = 1.0 / (double)(n - 1);
    for (size_t i = 0; i < Fs; i++)
        for (size_t j = i; j < Fs; j++) {
            const double v = cov[i * Fs + j] * scale;
            cov[i * Fs + j] = v;
            cov[j * Fs + i] = v;
        }
    return 0;
}

/* ------------------------------------------------------ Frechet distance */

/* Checks that S [F, F] is finite and symmetric. */
static int check_cov(const double *S, int F, const char *name, dfx_error *err)
{
    const size_t Fs = (size_t)F;
    double dmax = 0;
    for (size_t i = 0; i < Fs * Fs; i++)
        if (!isfinite(S[i]))
            return dfx_fail(err, "Frechet distance: %s[%zu][%zu] is %g (not finite)", name,
                            i / Fs, i % Fs, S[i]);
    for (size_t i = 0; i < Fs; i++) dmax = fmax(dmax, fabs(S[i * Fs + i]));
    const double tol = 1e-4 * dmax;
    for (size_t i = 0; i < Fs; i++)
        for (size_t j = i + 1; j < Fs; j++)
            if (fabs(S[i * Fs + j] - S[j * Fs + i]) > tol)
                return dfx_fail(err,
                                "Frechet distance: %s is not symmetric: [%zu][%zu] = %g but "
                                "[%zu][%zu] = %g",
                                name, i, j, S[i * Fs + j], j, i, S[j * Fs + i]);
    return 0;
}

/* S = V diag(w) V^T for a symmetric positive semidefinite S [F, F], by
 * dsyevd: V column-major (eigenvector j in V + j F), w ascending. Negative
 * eigenvalues of rounding size become 0; clearly negative ones are an
 * error (not a covariance). */
static int eig_psd(const double *S, int F, double *V, double *w, const char *name,
                   dfx_error *err)
{
    const size_t Fs = (size_t)F;
    int rc = -1, info = 0, lwork = -1, liwork = -1, iwq = 0;
    double wq = 0;
    double *work = NULL;
    int *iwork = NULL;
    memcpy(V, S, sizeof(double) * Fs * Fs); /* symmetric: row- and column-major alike */
    dsyevd_("V", "U", &F, V, &F, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
    if (info != 0) {
        dfx_fail(err, "Frechet distance: dsyevd workspace query for %s failed (info %d)", name,
                 info);
        goto done;
    }
    lwork = (int)wq;
    liwork = iwq;
    work = dfx_alloc((size_t)lwork, sizeof(double), "Frechet distance: dsyevd workspace", err);
    iwork = dfx_alloc((size_t)liwork, sizeof(int), "Frechet distance: dsyevd workspace", err);
    if (!work || !iwork) goto done;
    dsyevd_("V", "U", &F, V, &F, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    if (info != 0) {
        dfx_fail(err, "Frechet distance: eigendecomposition of %s failed (dsyevd info %d)", name,
                 info);
        goto done;
    }
    const double lmax = fmax(fabs(w[0]), fabs(w[Fs - 1]));
    if (w[0] < -1e-4 * lmax) {
        dfx_fail(err,
                 "Frechet distance: %s is not positive semidefinite (eigenvalue %g, largest "
                 "%g): not a covariance",
                 name, w[0], w[Fs - 1]);
        goto done;
    }
    for (size_t j = 0; j < Fs; j++)
        if (w[j] < 0) w[j] = 0;
    rc = 0;
done:
    free(work);
    free(iwork);
    return rc;
}

/* Sum of the singular values of the r x c matrix A (column-major, leading
 * dimension lda; destroyed), by dgesdd. */
static int nuclear_norm(double *A, int r, int c, int lda, double *sum, dfx_error *err)
{
    const int k = r < c ? r : c;
    int rc = -1, info = 0, lwork = -1, one = 1;
    double wq = 0, dummy = 0;
    double *s = dfx_alloc((size_t)k, sizeof(double), "Frechet distance: singular values", err);
    int *iwork = dfx_alloc(8 * (size_t)k, sizeof(int), "Frechet distance: dgesdd workspace", err);
    double *work = NULL;
    if (!s || !iwork) goto done;
    dgesdd_("N", &r, &c, A, &lda, s, &dummy, &one, &dummy, &one, &wq, &lwork, iwork, &info, 1);
    if (info != 0) {
        dfx_fail(err, "Frechet distance: dgesdd workspace query failed (info %d)", info);
        goto done;
    }
    lwork = (int)wq;
    work = dfx_alloc((size_t)lwork, sizeof(double), "Frechet distance: dgesdd workspace", err);
    if (!work) goto done;
    dgesdd_("N", &r, &c, A, &lda, s, &dummy, &one, &dummy, &one, work, &lwork, iwork, &info, 1);
    if (info != 0) {
        dfx_fail(err, "Frechet distance: singular values of S1^1/2 S2^1/2 failed (dgesdd info %d)",
                 info);
        goto done;
    }
    *sum = 0;
    for (int j = 0; j < k; j++) *sum += s[j];
    rc = 0;
done:
    free(s);
    free(iwork);
    free(work);
    return rc;
}

int dfx_frechet_distance(const double *mu1, const double *S1, const double *mu2, const double *S2,
                         int F, double *fid, dfx_error *err)
{
    if (!mu1 || !S1 || !mu2 || !S2 || !fid)
        return dfx_fail(err, "Frechet distance: NULL %s",
                        !mu1   ? "mu1"
                        : !S1  ? "S1"
                        : !mu2 ? "mu2"
                        : !S2  ? "S2"
                               : "output");
    if (F < 1 || F > 16384)
        return dfx_fail(err, "Frechet distance: dimension %d (must be in 1..16384)", F);
    const size_t Fs = (size_t)F;
    for (size_t j = 0; j < Fs; j++)
        if (!isfinite(mu1[j]) || !isfinite(mu2[j]))
            return dfx_fail(err, "Frechet distance: %s[%zu] is %g (not finite)",
                            isfinite(mu1[j]) ? "mu2" : "mu1", j,
                            isfinite(mu1[j]) ? mu2[j] : mu1[j]);
    if (check_cov(S1, F, "S1", err) || check_cov(S2, F, "S2", err)) return -1;

    /* S1^1/2 S2 S1^1/2 = B B^T with B = S1^1/2 S2^1/2, so the trace of its
     * square root is the sum of B's singular values; and with Si = Vi Li Vi^T
     * those are the singular values of C = L1^1/2 (V1^T V2) L2^1/2. Zero
     * eigenvalues (sorted first) drop out of C: a rank-deficient
     * covariance makes the SVD smaller, not worse. */
    int rc = -1;
    double *V1 = dfx_alloc(Fs * Fs, sizeof(double), "Frechet distance: eigenvectors of S1", err);
    double *V2 = V1 ? dfx_alloc(Fs * Fs, sizeof(double), "Frechet distance: eigenvectors of S2",
                                err)
                    : NULL;
    double *C = V2 ? dfx_alloc(Fs * Fs, sizeof(double), "Frechet distance: product", err) : NULL;
    double *w1 = C ? dfx_alloc(Fs, sizeof(double), "Frechet distance: eigenvalues", err) : NULL;
    double *w2 = w1 ? dfx_alloc(Fs, sizeof(double), "Frechet distance: eigenvalues", err) : NULL;
    if (!w2) goto done;
    if (eig_psd(S1, F, V1, w1, "S1", err) || eig_psd(S2, F, V2, w2, "S2", err)) goto done;
    int k1 = 0, k2 = 0;
    while (k1 < F && w1[k1] == 0) k1++;
    while (k2 < F && w2[k2] == 0) k2++;
    double nuc = 0;
    if (k1 < F && k2 < F) {
        const int r1 = F - k1, r2 = F - k2;
        double *Cs = C + (size_t)k1 + (size_t)k2 * Fs; /* rows k1.., columns k2.. */
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, r1, r2, F, 1.0, V1 + (size_t)k1 * Fs,
                    F, V2 + (size_t)k2 * Fs, F, 0.0, Cs, F);
        for (int j = 0; j < r2; j++) {
            double *col = Cs + (size_t)j * Fs;
            const double sj = sqrt(w2[k2 + j]);
            for (int i = 0; i < r1; i++) col[i] *= sqrt(w1[k1 + i]) * sj;
        }
        if (nuclear_norm(Cs, r1, r2, F, &nuc, err)) goto done;
    }
    double d2 = 0, tr = 0;
    for (size_t j = 0; j < Fs; j++) {
        const double d = mu1[j] - mu2[j];
        d2 += d * d;
        tr += S1[j * Fs + j] + S2[j * Fs + j];
    }
    const double v = d2 + tr - 2.0 * nuc;
    *fid = v > 0 ? v : 0.0;
    rc = 0;
done:
    free(V1);
    free(V2);
    free(C);
    free(w1);
    free(w2);
    return rc;
}

/* ------------------------------------------------------------------- KID */

/* Philox4x32-10 words for one (subset, set): key = seed, counter =
 * (block low, block high, subset, tag | set). */
typedef struct kid_rng {
    uint32_t key[2], ctr[4], buf[4];
    int left;
} kid_rng;

static void kid_rng_init(kid_rng *r, uint64_t seed, uint32_t subset, uint32_t set)
{
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = 0;
    r->ctr[1] = 0;
    r->ctr[2] = subset;
    r->ctr[3] = 0x4b494400u | set; /* "KID" */
    r->left = 0;
}

static uint32_t kid_rng_u32(kid_rng *r)
{
    if (r->left == 0) {
        dfx_philox4x32(r->ctr, r->key, r->buf);
        if (++r->ctr[0] == 0) r->ctr[1]++;
        r->left = 4;
    }
    return r->buf[4 - r->left--];
}

/* Uniform in [0, k), k >= 1: rejection above the largest multiple of k. */
static uint64_t kid_rng_below(kid_rng *r, uint64_t k)
{
    const uint64_t lim = UINT64_MAX - UINT64_MAX % k;
    for (;;) {
        const uint64_t hi = kid_rng_u32(r);
        const uint64_t x = (hi << 32) | kid_rng_u32(r);
        if (x < lim) return x % k;
    }
}

/* m rows of src [n, F] drawn without replacement (partial Fisher-Yates over
 * perm [n]), as doubles into dst [m, F]. */
static void kid_draw(const float *src, long n, int F, int m, long *perm, kid_rng *r, double *dst)
{
    for (long i = 0; i < n; i++) perm[i] = i;
    for (int i = 0; i < m; i++) {
        const long j = i + (long)kid_rng_below(r, (uint64_t)(n - i));
        const long t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        const float *s = src + (size_t)perm[i] * (size_t)F;
        double *d = dst + (size_t)i * (size_t)F;
        for (int f = 0; f < F; f++) d[f] = s[f];
    }
}

enum { KID_BLOCK = 512 };

/* sum_{i != j} k(x_i, x_j) when Y is NULL (twice the upper triangle),
 * else sum_{i, j} k(x_i, y_j); X, Y [m, F], G [KID_BLOCK, m] scratch. */
static double kid_kernel_sum(const double *X, const double *Y, int m, int F, double *G)
{
    const size_t Fs = (size_t)F;
    const double invF = 1.0 / F;
    double total = 0;
    for (int i0 = 0; i0 < m; i0 += KID_BLOCK) {
        const int bi = m - i0 < KID_BLOCK ? m - i0 : KID_BLOCK;
        const int j0 = Y ? 0 : i0, cols = m - j0;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi, cols, F, 1.0, X + i0 * Fs, F,
                    (Y ? Y : X) + j0 * Fs, F, 0.0, G, cols);
        for (int r = 0; r < bi; r++) {
            const double *g = G + (size_t)r * cols;
            double s = 0;
            for (int c = Y ? 0 : r + 1; c < cols; c++) {
                const double t = g[c] * invF + 1.0;
                s += t * t * t;
            }
            total += s;
        }
    }
    return Y ? total : 2.0 * total;
}

int dfx_kid(const float *a, long na, const float *b, long nb, int F, int subsets, int m,
            uint64_t seed, double *mean, double *std, dfx_error *err)
{
    const char *who = "KID";
    if (!a || !b || !mean)
        return dfx_fail(err, "%s: NULL %s", who, !a ? "features a" : !b ? "features b" : "output");
    if (F < 1) return dfx_fail(err, "%s: feature dimension %d (must be >= 1)", who, F);
    if (subsets < 1) return dfx_fail(err, "%s: %d subsets (must be >= 1)", who, subsets);
    long mm = m;
    if (na < mm) mm = na;
    if (nb < mm) mm = nb;
    if (mm < 2)
        return dfx_fail(err,
                        "%s: subset size %ld (min of m = %d, na = %ld, nb = %ld): the unbiased "
                        "estimate needs at least 2",
                        who, mm, m, na, nb);
    if (check_finite(a, na, F, who, "features a", err) ||
        check_finite(b, nb, F, who, "features b", err))
        return -1;
    m = (int)mm;

    int rc = -1;
    const size_t ms = (size_t)m, Fs = (size_t)F;
    const int gb = m < KID_BLOCK ? m : KID_BLOCK;
    long *perm = dfx_alloc((size_t)(na > nb ? na : nb), sizeof(long), "KID: permutation", err);
    double *X = perm ? dfx_alloc(ms * Fs, sizeof(double), "KID: subset of a", err) : NULL;
    double *Y = X ? dfx_alloc(ms * Fs, sizeof(double), "KID: subset of b", err) : NULL;
    double *G = Y ? dfx_alloc((size_t)gb * ms, sizeof(double), "KID: kernel block", err) : NULL;
    double *est = G ? dfx_alloc((size_t)subsets, sizeof(double), "KID: estimates", err) : NULL;
    if (!est) goto done;

    const double pairs = (double)m * (double)(m - 1);
    double sum = 0;
    for (int s = 0; s < subsets; s++) {
        kid_rng r;
        kid_rng_init(&r, seed, (uint32_t)s, 0);
        kid_draw(a, na, F, m, perm, &r, X);
        kid_rng_init(&r, seed, (uint32_t)s, 1);
        kid_draw(b, nb, F, m, perm, &r, Y);
        const double kxx = kid_kernel_sum(X, NULL, m, F, G);
        const double kyy = kid_kernel_sum(Y, NULL, m, F, G);
        const double kxy = kid_kernel_sum(X, Y, m, F, G);
        est[s] = (kxx + kyy) / pairs - 2.0 * kxy / ((double)m * (double)m);
        sum += est[s];
    }
    *mean = sum / subsets;
    if (std) {
        double v = 0;
        for (int s = 0; s < subsets; s++) v += (est[s] - *mean) * (est[s] - *mean);
        *std = sqrt(v / subsets);
    }
    rc = 0;
done:
    free(perm);
    free(X);
    free(Y);
    free(G);
    free(est);
    return rc;
}

/* ----------------------------------------------------- nearest neighbour */

enum { NN_QB = 256, NN_RB = 4096, NN_K = 4 };

/* The nq <= NN_QB queries q [nq, D] against all of ref: the NN_K best
 * approximate scores |r|^2 - 2 q.r (float, sgemm per reference block into
 * G), then the exact double distance of each, the least winning. */
static void nearest_block(const float *q, int nq, const float *ref, long nref, const float *rn,
                          int D, float *G, float *cs, long *ci, double *dist, long *idx)
{
    const size_t Ds = (size_t)D;
    for (int i = 0; i < nq * NN_K; i++) {
        cs[i] = INFINITY;
        ci[i] = -1;
    }
    for (long r0 = 0; r0 < nref; r0 += NN_RB) {
        const int nr = nref - r0 < NN_RB ? (int)(nref - r0) : NN_RB;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nr, D, 1.0f, q, D,
                    ref + (size_t)r0 * Ds, D, 0.0f, G, nr);
        for (int i = 0; i < nq; i++) {
            const float *g = G + (size_t)i * nr;
            float *c = cs + i * NN_K;
            long *k = ci + i * NN_K;
            for (int j = 0; j < nr; j++) {
                const float s = rn[r0 + j] - 2.0f * g[j];
                if (!(s < c[NN_K - 1])) continue;
                int p = NN_K - 1;
                for (; p > 0 && s < c[p - 1]; p--) {
                    c[p] = c[p - 1];
                    k[p] = k[p - 1];
                }
                c[p] = s;
                k[p] = r0 + j;
            }
        }
    }
    for (int i = 0; i < nq; i++) {
        const float *x = q + (size_t)i * Ds;
        double best = INFINITY;
        long bi = -1;
        for (int p = 0; p < NN_K; p++) {
            const long j = ci[i * NN_K + p];
            if (j < 0) continue;
            const float *y = ref + (size_t)j * Ds;
            double d2 = 0;
            for (size_t f = 0; f < Ds; f++) {
                const double d = (double)x[f] - (double)y[f];
                d2 += d * d;
            }
            if (d2 < best || (d2 == best && j < bi)) {
                best = d2;
                bi = j;
            }
        }
        dist[i] = sqrt(best);
        if (idx) idx[i] = bi;
    }
}

int dfx_nearest(const float *q, long n, const float *ref, long nref, int D, double *dist,
                long *idx, dfx_error *err)
{
    const char *who = "nearest neighbour";
    if (!q || !ref || !dist)
        return dfx_fail(err, "%s: NULL %s", who,
                        !q ? "queries" : !ref ? "references" : "distance output");
    if (D < 1) return dfx_fail(err, "%s: dimension %d (must be >= 1)", who, D);
    if (n < 1) return dfx_fail(err, "%s: %ld queries (must be >= 1)", who, n);
    if (nref < 1) return dfx_fail(err, "%s: %ld references (must be >= 1)", who, nref);
    if (check_finite(q, n, D, who, "queries", err) ||
        check_finite(ref, nref, D, who, "references", err))
        return -1;

    const size_t Ds = (size_t)D;
    const long nblk = (n + NN_QB - 1) / NN_QB;
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
    if (nt > nblk) nt = (int)nblk;
    if (nt < 1) nt = 1;
#endif
    const size_t rbs = (size_t)(nref < NN_RB ? nref : NN_RB);
    int rc = -1;
    float *rn = dfx_alloc((size_t)nref, sizeof(float), "nearest neighbour: reference norms", err);
    float *G = rn ? dfx_alloc((size_t)nt * NN_QB * rbs, sizeof(float),
                              "nearest neighbour: product block", err)
                  : NULL;
    float *cs = G ? dfx_alloc((size_t)nt * NN_QB * NN_K, sizeof(float),
                              "nearest neighbour: candidates", err)
                  : NULL;
    long *ci = cs ? dfx_alloc((size_t)nt * NN_QB * NN_K, sizeof(long),
                              "nearest neighbour: candidates", err)
                  : NULL;
    if (!ci) goto done;
    for (long j = 0; j < nref; j++) {
        const float *y = ref + (size_t)j * Ds;
        double s = 0;
        for (size_t f = 0; f < Ds; f++) s += (double)y[f] * y[f];
        rn[j] = (float)s;
    }

    /* one sgemm per thread at a time: OpenBLAS's own threads would only
     * oversubscribe the cores */
    const int blas_threads = openblas_get_num_threads();
    if (nt > 1 && blas_threads > 1) openblas_set_num_threads(1);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(dynamic)
#endif
    for (long b = 0; b < nblk; b++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        const long q0 = b * NN_QB;
        const int nq = n - q0 < NN_QB ? (int)(n - q0) : NN_QB;
        nearest_block(q + (size_t)q0 * Ds, nq, ref, nref, rn, D, G + (size_t)t * NN_QB * rbs,
                      cs + (size_t)t * NN_QB * NN_K, ci + (size_t)t * NN_QB * NN_K, dist + q0,
                      idx ? idx + q0 : NULL);
    }
    if (nt > 1 && blas_threads > 1) openblas_set_num_threads(blas_threads);
    rc = 0;
done:
    free(rn);
    free(G);
    free(cs);
    free(ci);
    return rc;
}
