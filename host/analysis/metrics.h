/*
 * Sample-quality metrics on feature vectors: mean and covariance, the
 * Frechet distance between Gaussians (FID when the features are Inception
 * activations), the kernel inception distance (KID) and nearest-neighbour
 * distances (memorisation checks). The features come from elsewhere; these
 * functions do the statistics, accumulating in double, with OpenBLAS and
 * its LAPACK doing the matrix work.
 *
 * Shapes: feature matrices are float32, row-major [n, F] (one sample a
 * row); covariances are double, row-major [F, F].
 * Every function returns 0, or -1 with a message in *err for a bad
 * argument (NULL pointer, too few samples, a non-finite input, a matrix
 * that is not a covariance) or a failed allocation.
 */
#ifndef DFX_METRICS_H
#define DFX_METRICS_H

#include <stdint.h>

#include "difflux.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Mean mu [F] and unbiased covariance cov [F, F] (divided by n - 1) of the
 * n >= 2 rows of feat. Two passes: the mean, then the centred rows in
 * blocks through dsyrk, all in double. */
int dfx_feature_stats(const float *feat, long n, int F, double *mu, double *cov, dfx_error *err);

/* Frechet distance between N(mu1, S1) and N(mu2, S2):
 *   |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1^1/2 S2 S1^1/2).
 * From symmetric eigendecompositions Si = Vi Li Vi^T (dsyevd), negative
 * eigenvalues of rounding size clamped to 0: the last trace is the sum of
 * the singular values of S1^1/2 S2^1/2, i.e. of L1^1/2 (V1^T V2) L2^1/2
 * (dgesdd). That is the same number as the eigenvalue route, but each small
 * term is accurate to rounding of the largest rather than to its square
 * root, and zero eigenvalues drop out, so rank-deficient covariances
 * (fewer samples than features) are fine. S1 and S2 must be symmetric (to
 * 1e-4 of their largest diagonal entry) and positive semidefinite (no
 * eigenvalue below -1e-4 times the largest in magnitude); F <= 16384.
 * The result is clamped at >= 0. */
int dfx_frechet_distance(const double *mu1, const double *S1, const double *mu2, const double *S2,
                         int F, double *fid, dfx_error *err);

/* Kernel inception distance: the unbiased estimate of MMD^2 with the
 * kernel k(x, y) = (x.y / F + 1)^3,
 *   sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (m (m-1))
 *   - 2 sum_{i,j} k(x_i, y_j) / m^2,
 * averaged over `subsets` >= 1 subsets of m rows of a and m rows of b, each
 * drawn without replacement. m is reduced to min(m, na, nb) and must then
 * be >= 2 (m = na = nb uses every row: no sampling). The draws use
 * Philox4x32-10 keyed by seed, counter (draw, subset, set): subset s is the
 * same whatever `subsets` is. *mean: the average; *std (may be NULL): the
 * population standard deviation of the per-subset estimates (as in
 * Binkowski et al.'s reference code and clean-fid), 0 for one subset.
 * Kernel matrices by dgemm in row blocks: memory O(m F + 512 m) doubles. */
int dfx_kid(const float *a, long na, const float *b, long nb, int F, int subsets, int m,
            uint64_t seed, double *mean, double *std, dfx_error *err);

/* For each of the n query rows of q [n, D]: the Euclidean distance dist[i]
 * to the nearest of the nref rows of ref [nref, D], and its index idx[i]
 * (idx may be NULL; ties go to the lower index). Candidates come from
 * |r|^2 - 2 q.r by sgemm over blocks of 256 queries x 4096 references
 * (memory bounded by the blocks), the best 4 per query are re-measured
 * exactly in double, and the winner's distance is that exact one. Near-ties
 * closer than float rounding of |r|^2 may still pick a neighbour that is as
 * near to within that rounding. Query blocks run in parallel with OpenMP
 * (OpenBLAS single-threaded meanwhile). */
int dfx_nearest(const float *q, long n, const float *ref, long nref, int D, double *dist,
                long *idx, dfx_error *err);

#ifdef __cplusplus
}
#endif

#endif
