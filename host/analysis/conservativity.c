/*
 * Conservativeness diagnostics (MATH.md section 4): is a model's field the
 * gradient of something? A true score is, so its Jacobian is symmetric and
 * its integral around any closed loop vanishes. Four measurements, each at
 * one time t on points x_t = a x0 + s z + m of the path:
 *
 *   asymmetry   ||J - J^T||_F / ||J||_F from K Gaussian probe pairs (u, v):
 *               E[(u.Jv - v.Ju)^2] = ||J - J^T||^2, E[(u.Jv)^2] = ||J||^2;
 *               beside it the same over ||J - (tr J / D) I||_F (the
 *               isotropic part removed, the same for every field) and
 *               ||J - J^T||_F itself, for the measured field and, from the
 *               same JVPs, every other (they are A I + B J at one t);
 *               pooled over points as ratios of means, standard errors by
 *               the delta method with the point as the unit;
 *   patch       the same ratio, exactly, for the block J_PP of a p x p pixel
 *               patch P (all channels), from |P| JVPs along basis vectors;
 *   circulation the loop integral of f . dx around x(theta) = c + r (cos theta
 *               u + sin theta v) (u, v random orthonormal) by the periodic
 *               trapezoid rule, over the integral of |f| |dx|;
 *   path dep.   the integral from c - r u to c + r u along the segment minus
 *               along the half circle through c + r v (Gauss-Legendre), over
 *               the mean of the two integrals of |f| |dx|.
 *
 * Radii are relative to the point: r = rho ||c||. Every random number comes
 * from Philox (seed, point index, stream), so a run is reproducible and the
 * baseline model sees the very same points, probes and planes.
 */
#include "core/error.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STREAM_NOISE = 21, STREAM_PROBE = 22, STREAM_PLANE = 23 };

void dfx_cons_opts_default(dfx_cons_opts *o)
{
    memset(o, 0, sizeof *o);
    o->field = DFX_PRED_COUNT; /* the model's native prediction */
    o->method = DFX_JVP_EXACT;
    o->fd_step = 1e-3;
    o->probes = 16;
    o->patch = 4;
    o->loop_nodes = 64;
    o->nradii = 3;
    o->radii[0] = 0.01;
    o->radii[1] = 0.1;
    o->radii[2] = 0.5;
    o->seed = 0;
    o->batch = 64;
}

/* ------------------------------------------------------------ estimators */

void dfx_ratio_add(dfx_ratio *q, double num, double den)
{
    q->n++;
    q->sn += num;
    q->sd += den;
    q->snn += num * num;
    q->sdd += den * den;
    q->snd += num * den;
}

/* sqrt(mean(num) / mean(den)) and its delta-method standard error, one
 * (num, den) per unit: the units' spread is the estimator's (MATH.md 4.3). */
void dfx_ratio_sqrt(const dfx_ratio *q, double *est, double *se)
{
    *est = *se = NAN;
    if (q->n < 1 || !(q->sd > 0)) return;
    const double n = (double)q->n, N = q->sn / n, D = q->sd / n, r = N / D;
    *est = sqrt(r > 0 ? r : 0);
    if (q->n < 2) return;
    const double vn = (q->snn / n - N * N) * n / (n - 1), vd = (q->sdd / n - D * D) * n / (n - 1);
    const double c = (q->snd / n - N * D) * n / (n - 1);
    double vr = (vn / (D * D) - 2 * N * c / (D * D * D) + N * N * vd / (D * D * D * D)) / n;
    if (vr < 0) vr = 0;
    *se = *est > 0 ? sqrt(vr) / (2 * *est) : sqrt(sqrt(vr));
}

void dfx_mean_add(dfx_mean *q, double x)
{
    q->n++;
    q->s += x;
    q->ss += x * x;
}

void dfx_mean_get(const dfx_mean *q, double *mean, double *se)
{
    *mean = *se = NAN;
    if (q->n < 1) return;
    const double n = (double)q->n, m = q->s / n;
    *mean = m;
    if (q->n < 2) return;
    double v = (q->ss / n - m * m) * n / (n - 1);
    *se = sqrt((v > 0 ? v : 0) / n);
}

dfx_pred dfx_cons_field(const dfx_model *m, const dfx_cons_opts *o)
{
    return (unsigned)o->field < DFX_PRED_COUNT ? o->field : m->native;
}

/* ------------------------------------------------------------- helpers */

/* sqrt of a mean and its delta-method standard error (NaN: no data). */
static void mean_sqrt(const dfx_mean *q, double *est, double *se)
{
    double mu, s;
    dfx_mean_get(q, &mu, &s);
    *est = q->n > 0 ? sqrt(mu > 0 ? mu : 0) : NAN;
    *se = *est > 0 ? s / (2 * *est) : NAN;
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* The field at rows points (host), evaluated in batches of at most `batch`. */
static int field_at(dfx_model *m, dfx_pred field, const double *t, const float *x, int rows,
                    int batch, float *f, dfx_error *err)
{
    for (int r0 = 0; r0 < rows; r0 += batch) {
        int nr = rows - r0 < batch ? rows - r0 : batch;
        if (dfx_model_eval_host(m, t + r0, x + (size_t)r0 * m->dim, nr, field,
                                f + (size_t)r0 * m->dim, err))
            return -1;
    }
    return 0;
}

static int jvp_at(dfx_model *m, const dfx_cons_opts *o, const double *t, const float *x,
                  const float *v, int rows, float *f, float *jv, dfx_error *err)
{
    const int batch = o->batch > 0 ? o->batch : 64;
    for (int r0 = 0; r0 < rows; r0 += batch) {
        int nr = rows - r0 < batch ? rows - r0 : batch;
        size_t off = (size_t)r0 * m->dim;
        if (dfx_model_jvp_host(m, t + r0, x + off, v + off, nr, dfx_cons_field(m, o), o->method,
                               o->fd_step, f + off, jv + off, err))
            return -1;
    }
    return 0;
}

/* Nodes and weights of the G-point Gauss-Legendre rule on [0, 1]. */
static void gauss_legendre01(int G, double *x, double *w)
{
    for (int i = 0; i < G; i++) {
        double z = cos(DFX_PI * (i + 0.75) / (G + 0.5)), dp = 1;
        for (int it = 0; it < 100; it++) {
            double p0 = 1, p1 = z;
            for (int k = 2; k <= G; k++) {
                double p2 = ((2.0 * k - 1) * z * p1 - (k - 1.0) * p0) / k;
                p0 = p1;
                p1 = p2;
            }
            dp = G * (z * p1 - p0) / (z * z - 1);
            double dz = p1 / dp;
            z -= dz;
            if (fabs(dz) < 1e-16) break;
        }
        x[i] = 0.5 * (1 - z);
        w[i] = 1.0 / ((1 - z * z) * dp * dp);
    }
}

/* ------------------------------------------------------ single measurements */

int dfx_loop_circulation(dfx_model *m, dfx_pred field, double t, const float *c, const float *u,
                         const float *v, double r, int M, int batch, double *raw, double *scale,
                         dfx_error *err)
{
    const size_t D = m->dim;
    if (M < 3) return dfx_fail(err, "loop circulation needs at least 3 nodes, got %d", M);
    float *x = dfx_alloc(2 * (size_t)M * D, sizeof(float), "loop", err);
    double *tt = x ? dfx_alloc((size_t)M, sizeof(double), "loop", err) : NULL;
    if (!tt) {
        free(x);
        return -1;
    }
    float *f = x + (size_t)M * D;
    for (int k = 0; k < M; k++) {
        const double th = 2 * DFX_PI * k / M, cs = cos(th), sn = sin(th);
        for (size_t j = 0; j < D; j++) x[(size_t)k * D + j] = (float)(c[j] + r * (cs * u[j] + sn * v[j]));
        tt[k] = t;
    }
    int rc = field_at(m, field, tt, x, M, batch > 0 ? batch : 64, f, err);
    if (rc == 0) {
        double I = 0, S = 0;
        for (int k = 0; k < M; k++) {
            const double th = 2 * DFX_PI * k / M, cs = cos(th), sn = sin(th);
            const float *fk = f + (size_t)k * D;
            double fu = dot(fk, u, D), fv = dot(fk, v, D);
            /* dx/dtheta = r (-sin u + cos v), |dx/dtheta| = r (u, v orthonormal) */
            I += r * (-sn * fu + cs * fv);
            S += r * dfx_vec_norm(fk, D);
        }
        *raw = I * 2 * DFX_PI / M;
        *scale = S * 2 * DFX_PI / M;
    }
    free(x);
    free(tt);
    return rc;
}

int dfx_path_dependence(dfx_model *m, dfx_pred field, double t, const float *c, const float *u,
                        const float *v, double r, int G, int batch, double *raw, double *scale,
                        dfx_error *err)
{
    const size_t D = m->dim;
    if (G < 2) return dfx_fail(err, "path dependence needs at least 2 nodes, got %d", G);
    const int rows = 2 * G;
    float *x = dfx_alloc(2 * (size_t)rows * D, sizeof(float), "path", err);
    double *tt = x ? dfx_alloc((size_t)rows + 2 * (size_t)G, sizeof(double), "path", err) : NULL;
    if (!tt) {
        free(x);
        return -1;
    }
    float *f = x + (size_t)rows * D;
    double *gx = tt + rows, *gw = gx + G;
    gauss_legendre01(G, gx, gw);
    for (int k = 0; k < G; k++) {
        /* straight: c + r (2 s - 1) u; bent: c + r (cos th u + sin th v), th = pi (1 - s) */
        const double s = gx[k], th = DFX_PI * (1 - s);
        for (size_t j = 0; j < D; j++) {
            x[(size_t)k * D + j] = (float)(c[j] + r * (2 * s - 1) * u[j]);
            x[(size_t)(G + k) * D + j] = (float)(c[j] + r * (cos(th) * u[j] + sin(th) * v[j]));
        }
        tt[k] = tt[G + k] = t;
    }
    int rc = field_at(m, field, tt, x, rows, batch > 0 ? batch : 64, f, err);
    if (rc == 0) {
        double I1 = 0, I2 = 0, S1 = 0, S2 = 0;
        for (int k = 0; k < G; k++) {
            const double th = DFX_PI * (1 - gx[k]);
            const float *f1 = f + (size_t)k * D, *f2 = f + (size_t)(G + k) * D;
            /* ds-derivatives: 2 r u and pi r (sin th u - cos th v) */
            I1 += gw[k] * 2 * r * dot(f1, u, D);
            S1 += gw[k] * 2 * r * dfx_vec_norm(f1, D);
            I2 += gw[k] * DFX_PI * r * (sin(th) * dot(f2, u, D) - cos(th) * dot(f2, v, D));
            S2 += gw[k] * DFX_PI * r * dfx_vec_norm(f2, D);
        }
        *raw = I1 - I2;
        *scale = 0.5 * (S1 + S2);
    }
    free(x);
    free(tt);
    return rc;
}

int dfx_patch_asymmetry(dfx_model *m, const dfx_cons_opts *o, double t, const float *x,
                        const int *coords, int p, double *ratio, double *jnorm, dfx_error *err)
{
    const size_t D = m->dim;
    float *X = dfx_alloc(4 * (size_t)p * D, sizeof(float), "patch", err);
    double *tt = X ? dfx_alloc((size_t)p, sizeof(double), "patch", err) : NULL;
    if (!tt) {
        free(X);
        return -1;
    }
    float *V = X + (size_t)p * D, *F = V + (size_t)p * D, *JV = F + (size_t)p * D;
    memset(V, 0, (size_t)p * D * sizeof(float));
    for (int k = 0; k < p; k++) {
        memcpy(X + (size_t)k * D, x, D * sizeof(float));
        V[(size_t)k * D + (size_t)coords[k]] = 1.0f;
        tt[k] = t;
    }
    /* row k of the result is J e_{P_k}: column P_k of J; we keep its P rows */
    int rc = jvp_at(m, o, tt, X, V, p, F, JV, err);
    if (rc == 0) {
        double a = 0, s = 0;
        for (int i = 0; i < p; i++)
            for (int j = 0; j < p; j++) {
                double jij = JV[(size_t)j * D + (size_t)coords[i]]; /* J[P_i, P_j] */
                double jji = JV[(size_t)i * D + (size_t)coords[j]];
                a += (jij - jji) * (jij - jji);
                s += jij * jij;
            }
        *ratio = s > 0 ? sqrt(a / s) : NAN;
        if (jnorm) *jnorm = sqrt(s);
    }
    free(X);
    free(tt);
    return rc;
}

/* MATH.md 4.1-4.2. For the pair k, u = w_2k and v = w_2k+1: a = u.Jv,
 * b = v.Ju. The Rayleigh quotients r_j = w_j.J w_j / |w_j|^2 of all 2K
 * probes are unbiased for tr J / D (w / |w| is uniform on the sphere);
 * c_k, their mean without the pair's own, is independent of the pair, so
 * (u.Jv - c_k u.v)^2 is unbiased for ||J - c_k I||^2 = ||J - tau I||^2 +
 * D (c_k - tau)^2, and D var(r) / (2K - 2) with the sample variance of the
 * r_j takes the second term out on average. An isotropic part c I cancels
 * from every term exactly, however large c is. */
int dfx_asymmetry_probes(dfx_model *m, const dfx_cons_opts *o, double t, const float *x,
                         int K, uint64_t first, dfx_probe_point *out, dfx_error *err)
{
    const size_t D = m->dim;
    const int rows = 2 * K;
    memset(out, 0, sizeof *out);
    if (K < 1) return dfx_fail(err, "asymmetry probes: need at least one pair, got %d", K);
    float *X = dfx_alloc(3 * (size_t)rows * D, sizeof(float), "probes", err);
    double *tt = X ? dfx_alloc(2 * (size_t)rows, sizeof(double), "probes", err) : NULL;
    if (!tt) {
        free(X);
        return -1;
    }
    double *rq = tt + rows; /* Rayleigh quotients */
    float *U = X + (size_t)rows * D, *F = U + (size_t)rows * D;
    /* rows 2k, 2k + 1: the pair (u_k, v_k) */
    dfx_normal_host(o->seed, first, rows, D, 0, STREAM_PROBE, U);
    for (int k = 0; k < rows; k++) {
        memcpy(X + (size_t)k * D, x, D * sizeof(float));
        tt[k] = t;
    }
    float *JU = dfx_alloc((size_t)rows * D, sizeof(float), "probes", err);
    int rc = JU ? jvp_at(m, o, tt, X, U, rows, F, JU, err) : -1;
    if (rc == 0) {
        double rs = 0, rss = 0;
        for (int j = 0; j < rows; j++) {
            const float *w = U + (size_t)j * D;
            rq[j] = dot(w, JU + (size_t)j * D, D) / dot(w, w, D);
            rs += rq[j];
        }
        const double rm = rs / rows;
        for (int j = 0; j < rows; j++) rss += (rq[j] - rm) * (rq[j] - rm);
        for (int k = 0; k < K; k++) {
            const float *u = U + (size_t)(2 * k) * D, *v = U + (size_t)(2 * k + 1) * D;
            const float *Ju = JU + (size_t)(2 * k) * D, *Jv = JU + (size_t)(2 * k + 1) * D;
            const double a = dot(u, Jv, D), b = dot(v, Ju, D), uv = dot(u, v, D);
            out->num += (a - b) * (a - b);
            out->den += 0.5 * (a * a + b * b);
            out->uv2 += uv * uv;
            out->uvj += uv * (a + b);
            if (K > 1) {
                const double c = (rs - rq[2 * k] - rq[2 * k + 1]) / (rows - 2);
                const double d = a - c * uv, e = b - c * uv;
                out->dev += 0.5 * (d * d + e * e);
            }
        }
        out->num /= K, out->den /= K, out->uv2 /= K, out->uvj /= K;
        out->dev = K > 1 ? out->dev / K - (double)D * (rss / (rows - 1)) / (rows - 2) : NAN;
    }
    free(JU);
    free(X);
    free(tt);
    return rc;
}

/* A x + B f has Jacobian A I + B J: u.(A I + B J) v = A u.v + B u.Jv. */
void dfx_probe_point_convert(const dfx_probe_point *p, double A, double B, dfx_probe_point *out)
{
    dfx_probe_point q;
    q.num = B * B * p->num;
    q.den = A * A * p->uv2 + A * B * p->uvj + B * B * p->den;
    q.dev = B * B * p->dev;
    q.uv2 = p->uv2;
    q.uvj = 2 * A * p->uv2 + B * p->uvj;
    *out = q;
}

/* --------------------------------------------------------- the full report */

/* A random orthonormal pair (Gram-Schmidt of two Philox normals). */
static void plane(uint64_t seed, uint64_t index, size_t D, float *u, float *v)
{
    dfx_normal_host(seed, 2 * index, 1, D, 0, STREAM_PLANE, u);
    dfx_normal_host(seed, 2 * index + 1, 1, D, 0, STREAM_PLANE, v);
    double nu = dfx_vec_norm(u, D);
    for (size_t j = 0; j < D; j++) u[j] = (float)(u[j] / nu);
    double uv = dot(u, v, D);
    for (size_t j = 0; j < D; j++) v[j] = (float)(v[j] - uv * u[j]);
    double nv = dfx_vec_norm(v, D);
    for (size_t j = 0; j < D; j++) v[j] = (float)(v[j] / nv);
}

/* The coordinates of the centred p x p patch, every channel. */
static int patch_coords(const dfx_model *m, int p, int *coords)
{
    const int C = m->info.channels, H = m->info.height, W = m->info.width;
    if (p > H) p = H;
    if (p > W) p = W;
    const int y0 = (H - p) / 2, x0 = (W - p) / 2;
    int n = 0;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < p; y++)
            for (int x = 0; x < p; x++) coords[n++] = (c * H + y0 + y) * W + x0 + x;
    return n;
}

int dfx_conservativity(dfx_model *m, const dfx_cons_opts *o, const float *x0, int npoints,
                       double t, dfx_cons_result *res,
                       void (*progress)(void *ctx, double frac), void *ctx, dfx_error *err)
{
    const size_t D = m->dim;
    memset(res, 0, sizeof *res);
    res->t = t;
    if (npoints < 1) return dfx_fail(err, "conservativity: no points");
    if (o->nradii < 0 || o->nradii > DFX_CONS_MAX_RADII)
        return dfx_fail(err, "conservativity: %d radii (at most %d)", o->nradii,
                        DFX_CONS_MAX_RADII);
    dfx_coef pc;
    dfx_path_eval(&m->cfg.path, t, &pc);
    const int pmax = m->info.channels * o->patch * o->patch;
    float *xt = dfx_alloc(3 * D, sizeof(float), "points", err);
    int *coords = xt ? dfx_alloc(pmax > 0 ? (size_t)pmax : 1, sizeof(int), "patch", err) : NULL;
    if (!coords) {
        free(xt);
        return -1;
    }
    float *u = xt + D, *v = u + D;
    /* the measured field, then every field w = A x + B f at this t (ok[w] = 0
     * where the path makes the conversion singular) */
    const dfx_pred field = dfx_cons_field(m, o);
    res->field = field;
    double cA[DFX_PRED_COUNT], cB[DFX_PRED_COUNT];
    int ok[DFX_PRED_COUNT];
    for (int w = 0; w < DFX_PRED_COUNT; w++) {
        dfx_error scratch;
        double C;
        ok[w] = dfx_convert_coefs(&pc, field, (dfx_pred)w, &cA[w], &cB[w], &C, &scratch) == 0;
    }
    dfx_ratio asym = {0}, iso = {0}, fasym[DFX_PRED_COUNT];
    dfx_mean num = {0}, den = {0}, dev = {0}, fnum[DFX_PRED_COUNT], fden[DFX_PRED_COUNT];
    memset(fasym, 0, sizeof fasym);
    memset(fnum, 0, sizeof fnum);
    memset(fden, 0, sizeof fden);
    dfx_mean patch = {0}, circ[DFX_CONS_MAX_RADII], pathd[DFX_CONS_MAX_RADII];
    memset(circ, 0, sizeof circ);
    memset(pathd, 0, sizeof pathd);
    const int np = o->patch > 0 ? patch_coords(m, o->patch, coords) : 0;
    int rc = 0;
    for (int i = 0; i < npoints && rc == 0; i++) {
        /* the point: x0 noised to time t */
        dfx_normal_host(o->seed, (uint64_t)i, 1, D, 0, STREAM_NOISE, xt);
        for (size_t j = 0; j < D; j++)
            xt[j] = (float)(pc.a * x0[(size_t)i * D + j] + pc.m + pc.s * xt[j]);
        if (o->probes > 0) {
            dfx_probe_point pp, pw;
            rc = dfx_asymmetry_probes(m, o, t, xt, o->probes, (uint64_t)i * 2 * o->probes, &pp,
                                      err);
            if (rc == 0) {
                dfx_ratio_add(&asym, pp.num, pp.den);
                dfx_ratio_add(&iso, pp.num, pp.dev);
                dfx_mean_add(&num, pp.num);
                dfx_mean_add(&den, pp.den);
                dfx_mean_add(&dev, pp.dev);
                for (int w = 0; w < DFX_PRED_COUNT; w++) {
                    if (!ok[w]) continue;
                    dfx_probe_point_convert(&pp, cA[w], cB[w], &pw);
                    dfx_ratio_add(&fasym[w], pw.num, pw.den);
                    dfx_mean_add(&fnum[w], pw.num);
                    dfx_mean_add(&fden[w], pw.den);
                }
            }
        }
        if (rc == 0 && np > 0) {
            double ratio, jn;
            rc = dfx_patch_asymmetry(m, o, t, xt, coords, np, &ratio, &jn, err);
            if (rc == 0 && isfinite(ratio)) dfx_mean_add(&patch, ratio);
        }
        if (o->nradii > 0) plane(o->seed, (uint64_t)i, D, u, v);
        const double cn = dfx_vec_norm(xt, D);
        for (int k = 0; k < o->nradii && rc == 0; k++) {
            double raw, scale, r = o->radii[k] * cn;
            if (o->loop_nodes > 0) {
                rc = dfx_loop_circulation(m, field, t, xt, u, v, r, o->loop_nodes, o->batch,
                                          &raw, &scale, err);
                if (rc == 0 && scale > 0) dfx_mean_add(&circ[k], fabs(raw) / scale);
            }
            if (rc == 0 && o->loop_nodes > 0) {
                rc = dfx_path_dependence(m, field, t, xt, u, v, r, (o->loop_nodes + 1) / 2,
                                         o->batch, &raw, &scale, err);
                if (rc == 0 && scale > 0) dfx_mean_add(&pathd[k], fabs(raw) / scale);
            }
        }
        if (progress) progress(ctx, (i + 1.0) / npoints);
    }
    if (rc == 0) {
        dfx_ratio_sqrt(&asym, &res->asym, &res->asym_se);
        dfx_ratio_sqrt(&iso, &res->iso, &res->iso_se);
        mean_sqrt(&num, &res->abs, &res->abs_se);
        double e;
        mean_sqrt(&den, &res->jnorm, &e);
        mean_sqrt(&dev, &res->dev, &e);
        for (int w = 0; w < DFX_PRED_COUNT; w++) {
            dfx_field_asym *fa = &res->fields[w];
            dfx_ratio_sqrt(&fasym[w], &fa->asym, &fa->asym_se);
            mean_sqrt(&fnum[w], &fa->abs, &fa->abs_se);
            mean_sqrt(&fden[w], &fa->jnorm, &e);
        }
        dfx_mean_get(&patch, &res->patch, &res->patch_se);
        res->nradii = o->nradii;
        for (int k = 0; k < o->nradii; k++) {
            res->radii[k] = o->radii[k];
            dfx_mean_get(&circ[k], &res->circ[k], &res->circ_se[k]);
            dfx_mean_get(&pathd[k], &res->pathdep[k], &res->pathdep_se[k]);
        }
    }
    free(xt);
    free(coords);
    return rc;
}
