/*
 * The analytic Gaussian-mixture model (MATH.md section 6): data
 * p = sum_k w_k N(mu_k, c_k^2 I) give exact predictions under any path.
 * With the means set to training images and small c_k it is the exact
 * ("memorising") optimal denoiser of that data set.
 *
 * Tensors: gmm.means [K, C, H, W], gmm.stds [K] (c_k > 0), gmm.weights [K].
 */
#include "core/error.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gmm_impl {
    dfx_gmm_dev dev; /* backend copies */
    float *means;    /* host copies for exact sampling */
    double *c2, *cum; /* variances and cumulative weights */
    double *asm_;    /* host scratch: a, s, m per row */
    double *logw;    /* host log weights */
    int cap;
} gmm_impl;

static int gmm_coefs(dfx_model *m, gmm_impl *g, const double *t, int rows, dfx_error *err)
{
    if (rows > g->cap) {
        double *p = dfx_alloc((size_t)rows * 3, sizeof *p, "gmm scratch", err);
        if (!p) return -1;
        free(g->asm_);
        g->asm_ = p;
        g->cap = rows;
    }
    double *a = g->asm_, *s = a + rows, *mm = s + rows;
    for (int r = 0; r < rows; r++) {
        dfx_coef c;
        dfx_path_eval(&m->cfg.path, t[r], &c);
        if (!(c.a >= 0.0) || !(c.s >= 0.0) || (c.s == 0.0 && c.a == 0.0))
            return dfx_fail(err, "gmm: no density at t = %g (a = %g, s = %g)", t[r], c.a, c.s);
        a[r] = c.a;
        s[r] = c.s;
        mm[r] = c.m;
    }
    return 0;
}

static int gmm_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                       dfx_error *err)
{
    gmm_impl *g = m->impl;
    if (gmm_coefs(m, g, t, rows, err)) return -1;
    const double *a = g->asm_, *s = a + rows, *mm = s + rows;
    m->be->ops->gmm_denoise(m->be, out, x, rows, &g->dev, a, s, mm);
    return 0;
}

/* The exact derivative of the denoiser along v, on the host in double.
 * With sigma_k^2 = a^2 c_k^2 + s^2, r_k = x - a mu_k - m, g_k = a c_k^2 /
 * sigma_k^2 and responsibilities w_k(x) = softmax(log pi_k - |r_k|^2 /
 * (2 sigma_k^2) - D/2 log sigma_k^2), x_hat = sum_k w_k (mu_k + g_k r_k), so
 *   d x_hat . v = (sum_k w_k g_k) v + sum_k w_k (l_k - sum_j w_j l_j) x_hat_k,
 * l_k = -r_k . v / sigma_k^2 (the derivative of w_k's logit). */
static int gmm_jvp(dfx_model *m, const double *t, const float *x, const float *v, float *out,
                   float *dout, int rows, dfx_error *err)
{
    gmm_impl *g = m->impl;
    if (gmm_predict(m, t, x, out, rows, err)) return -1;
    const size_t D = m->dim, n = (size_t)rows * D;
    const int K = g->dev.K;
    float *hx = dfx_alloc(3 * n, sizeof(float), "gmm jvp", err);
    double *lg = hx ? dfx_alloc(3 * (size_t)K + D, sizeof(double), "gmm jvp", err) : NULL;
    int rc = -1;
    if (!lg) goto done;
    float *hv = hx + n, *hd = hv + n;
    if (m->be->ops->download(m->be, hx, x, n * sizeof(float), err) ||
        m->be->ops->download(m->be, hv, v, n * sizeof(float), err))
        goto done;
    double *w = lg, *l = lg + K, *sig2 = l + K, *acc = sig2 + K;
    const double *a = g->asm_, *s = a + rows, *mm = s + rows;
    for (int r = 0; r < rows; r++) {
        const float *xr = hx + (size_t)r * D, *vr = hv + (size_t)r * D;
        double wmax = -INFINITY;
        for (int k = 0; k < K; k++) {
            sig2[k] = a[r] * a[r] * g->c2[k] + s[r] * s[r];
            const float *mu = g->means + (size_t)k * D;
            double rr = 0, rv = 0;
            for (size_t j = 0; j < D; j++) {
                double rj = xr[j] - a[r] * mu[j] - mm[r];
                rr += rj * rj;
                rv += rj * vr[j];
            }
            w[k] = g->logw[k] - 0.5 * rr / sig2[k] - 0.5 * (double)D * log(sig2[k]);
            l[k] = -rv / sig2[k];
            if (w[k] > wmax) wmax = w[k];
        }
        double z = 0, lbar = 0, gbar = 0;
        for (int k = 0; k < K; k++) z += (w[k] = exp(w[k] - wmax));
        for (int k = 0; k < K; k++) {
            w[k] /= z;
            lbar += w[k] * l[k];
            gbar += w[k] * a[r] * g->c2[k] / sig2[k];
        }
        for (size_t j = 0; j < D; j++) acc[j] = gbar * vr[j];
        for (int k = 0; k < K; k++) {
            const double c = w[k] * (l[k] - lbar);
            if (c == 0.0) continue;
            const double gk = a[r] * g->c2[k] / sig2[k];
            const float *mu = g->means + (size_t)k * D;
            for (size_t j = 0; j < D; j++)
                acc[j] += c * (mu[j] + gk * (xr[j] - a[r] * mu[j] - mm[r]));
        }
        for (size_t j = 0; j < D; j++) hd[(size_t)r * D + j] = (float)acc[j];
    }
    rc = m->be->ops->upload(m->be, dout, hd, n * sizeof(float), err);
done:
    free(hx);
    free(lg);
    return rc;
}

/* Exact samples of p_t = sum_k w_k N(a mu_k + m, (a^2 c_k^2 + s^2) I): the
 * component from a Philox uniform (draw 1), the normal from draw 0. */
static int gmm_sample_marginal(dfx_model *m, double t, uint64_t seed, uint64_t first, int rows,
                               uint32_t stream, float *x, dfx_error *err)
{
    gmm_impl *g = m->impl;
    const size_t d = m->dim;
    float *host = dfx_alloc((size_t)rows * d, sizeof(float), "gmm sample", err);
    if (!host) return -1;
    dfx_coef c;
    dfx_path_eval(&m->cfg.path, t, &c);
    dfx_normal_host(seed, first, rows, d, 0, stream, host);
    for (int r = 0; r < rows; r++) {
        const uint32_t ctr[4] = {0, 1, (uint32_t)(first + (uint64_t)r), stream};
        const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t u4[4];
        dfx_philox4x32(ctr, key, u4);
        double u = ((double)u4[0] + 0.5) * 2.3283064365386963e-10;
        int k = 0;
        while (k < g->dev.K - 1 && g->cum[k] <= u) k++;
        double sd = sqrt(c.a * c.a * g->c2[k] + c.s * c.s);
        float *xr = host + (size_t)r * d;
        const float *mu = g->means + (size_t)k * d;
        for (size_t j = 0; j < d; j++) xr[j] = (float)(c.a * mu[j] + c.m + sd * xr[j]);
    }
    int rc = m->be->ops->upload(m->be, x, host, (size_t)rows * d * sizeof(float), err);
    free(host);
    return rc;
}

/* log p_t(x) = logsumexp_k (log w_k - |x - a mu_k - m|^2 / (2 sigma_k^2)
 *              - D/2 log(2 pi sigma_k^2)),  sigma_k^2 = a^2 c_k^2 + s^2. */
static int gmm_log_marginal(dfx_model *m, double t, const float *x, int rows, double *out,
                            dfx_error *err)
{
    gmm_impl *g = m->impl;
    const size_t D = m->dim;
    const int K = g->dev.K;
    if (gmm_coefs(m, g, &t, 1, err)) return -1;
    const double a = g->asm_[0], s = g->asm_[1], mm = g->asm_[2];
    double *lk = dfx_alloc((size_t)K, sizeof *lk, "gmm density", err);
    if (!lk) return -1;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * D;
        double top = -INFINITY;
        for (int k = 0; k < K; k++) {
            const double sig2 = a * a * g->c2[k] + s * s;
            const float *mu = g->means + (size_t)k * D;
            double rr = 0;
            for (size_t j = 0; j < D; j++) {
                const double rj = xr[j] - a * mu[j] - mm;
                rr += rj * rj;
            }
            lk[k] = g->logw[k] - 0.5 * rr / sig2 - 0.5 * (double)D * (DFX_LOG_2PI + log(sig2));
            if (lk[k] > top) top = lk[k];
        }
        double z = 0;
        for (int k = 0; k < K; k++) z += exp(lk[k] - top);
        out[r] = top + log(z);
    }
    free(lk);
    return 0;
}

static int gmm_describe(const dfx_model *m, char *buf, size_t cap)
{
    const gmm_impl *g = m->impl;
    return snprintf(buf, cap,
                    "components   %d Gaussians N(mu_k, c_k^2 I): exact predictions on any "
                    "path\n",
                    g->dev.K);
}

static void gmm_destroy(dfx_model *m)
{
    gmm_impl *g = m->impl;
    if (!g) return;
    dfx_backend *be = m->be;
    if (g->dev.means) be->ops->free(be, (void *)g->dev.means);
    if (g->dev.c2) be->ops->free(be, (void *)g->dev.c2);
    if (g->dev.logw) be->ops->free(be, (void *)g->dev.logw);
    free(g->asm_);
    free(g->logw);
    free(g->means);
    free(g->c2);
    free(g->cum);
    free(g);
    m->impl = NULL;
}

static const dfx_model_vt gmm_vt = {
    .predict = gmm_predict,
    .sample_marginal = gmm_sample_marginal,
    .describe = gmm_describe,
    .destroy = gmm_destroy,
    .jvp = gmm_jvp,
    .log_marginal = gmm_log_marginal,
};

static int upload_floats(dfx_backend *be, const float *src, size_t n, const float **dst,
                         const char *what, dfx_error *err)
{
    float *p = dfx_be_alloc(be, n * sizeof(float), what, err);
    if (!p) return -1;
    *dst = p;
    return be->ops->upload(be, p, src, n * sizeof(float), err);
}

/* Validates the parameters and puts them on the backend. */
static int gmm_init(dfx_model *m, int K, const float *means, const float *stds,
                    const float *weights, const char *src, dfx_error *err)
{
    gmm_impl *g = dfx_alloc(1, sizeof *g, "gmm", err);
    if (!g) return -1;
    m->impl = g;
    m->vt = &gmm_vt;
    m->analytic = 1;
    g->dev.K = K;
    g->dev.dim = m->dim;
    double wsum = 0.0;
    for (int k = 0; k < K; k++) {
        if (!(stds[k] > 0.0f) || !isfinite(stds[k]))
            return dfx_fail(err, "%s: tensor 'gmm.stds': entry %d is %g (must be positive)",
                            src, k, stds[k]);
        if (!(weights[k] >= 0.0f) || !isfinite(weights[k]))
            return dfx_fail(err, "%s: tensor 'gmm.weights': entry %d is %g (must be >= 0)", src,
                            k, weights[k]);
        wsum += weights[k];
    }
    if (!(wsum > 0.0)) return dfx_fail(err, "%s: tensor 'gmm.weights' sums to zero", src);
    for (size_t i = 0; i < (size_t)K * m->dim; i++)
        if (!isfinite(means[i]))
            return dfx_fail(err, "%s: tensor 'gmm.means' holds a NaN or Inf at index %zu", src,
                            i);
    float *c2 = dfx_alloc((size_t)K, sizeof *c2, "gmm", err);
    float *logw = dfx_alloc((size_t)K, sizeof *logw, "gmm", err);
    int rc = -1;
    if (c2 && logw) {
        for (int k = 0; k < K; k++) {
            c2[k] = stds[k] * stds[k];
            logw[k] = weights[k] > 0.0f ? (float)log(weights[k] / wsum) : -INFINITY;
        }
        rc = upload_floats(m->be, means, (size_t)K * m->dim, &g->dev.means, "gmm.means", err);
        if (rc == 0) rc = upload_floats(m->be, c2, (size_t)K, &g->dev.c2, "gmm.stds", err);
        if (rc == 0) rc = upload_floats(m->be, logw, (size_t)K, &g->dev.logw, "gmm.weights", err);
    }
    free(c2);
    free(logw);
    /* host copies for exact sampling of the marginals */
    g->means = rc ? NULL : dfx_alloc((size_t)K * m->dim, sizeof(float), "gmm", err);
    g->c2 = g->means ? dfx_alloc((size_t)K, sizeof(double), "gmm", err) : NULL;
    g->cum = g->c2 ? dfx_alloc((size_t)K, sizeof(double), "gmm", err) : NULL;
    g->logw = g->cum ? dfx_alloc((size_t)K, sizeof(double), "gmm", err) : NULL;
    if (!rc && !g->logw) rc = -1;
    if (!rc) {
        memcpy(g->means, means, (size_t)K * m->dim * sizeof(float));
        double acc = 0.0;
        for (int k = 0; k < K; k++) {
            g->c2[k] = (double)stds[k] * stds[k];
            acc += weights[k] / wsum;
            g->cum[k] = acc;
            g->logw[k] = weights[k] > 0.0f ? log(weights[k] / wsum) : -INFINITY;
        }
    }
    m->info.n_params = (size_t)K * (m->dim + 2);
    m->info.flops = 5.0 * (double)K * (double)m->dim;
    return rc;
}

int dfx_gmm_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(m->cfg.root, "gmm");
    const cJSON *kj = sec ? cJSON_GetObjectItemCaseSensitive(sec, "components") : NULL;
    if (!cJSON_IsNumber(kj) || kj->valuedouble < 1 || kj->valuedouble > 1e6 ||
        kj->valuedouble != floor(kj->valuedouble))
        return dfx_fail(err, "%s: config: gmm.components must be an integer in [1, 1000000]",
                        f->path);
    if (m->cfg.prediction != DFX_PRED_DATA)
        return dfx_fail(err, "%s: config: a gmm model predicts data (prediction \"data\")",
                        f->path);
    int K = (int)kj->valuedouble;
    int64_t ms[4] = {K, m->cfg.channels, m->cfg.height, m->cfg.width}, ks[1] = {K};
    const dfx_st_tensor *tm = dfx_st_get(f, "gmm.means", 4, ms, err);
    const dfx_st_tensor *ts = tm ? dfx_st_get(f, "gmm.stds", 1, ks, err) : NULL;
    const dfx_st_tensor *tw = ts ? dfx_st_get(f, "gmm.weights", 1, ks, err) : NULL;
    if (!tw) return -1;
    float *means = dfx_alloc(tm->numel, sizeof(float), "gmm.means", err);
    float *stds = dfx_alloc((size_t)K, sizeof(float), "gmm.stds", err);
    float *weights = dfx_alloc((size_t)K, sizeof(float), "gmm.weights", err);
    int rc = -1;
    if (means && stds && weights) {
        dfx_st_to_f32(f, tm, means);
        dfx_st_to_f32(f, ts, stds);
        dfx_st_to_f32(f, tw, weights);
        rc = gmm_init(m, K, means, stds, weights, f->path, err);
    }
    free(means);
    free(stds);
    free(weights);
    return rc;
}

static void gmm_config(dfx_model_config *c, const dfx_path *path, int channels, int height,
                       int width, double lo, double hi)
{
    memset(c, 0, sizeof *c);
    snprintf(c->kind, sizeof c->kind, "gmm");
    c->path = *path;
    c->prediction = DFX_PRED_DATA;
    c->channels = channels;
    c->height = height;
    c->width = width;
    c->range_lo = lo;
    c->range_hi = hi;
}

dfx_model *dfx_model_gmm_create(dfx_backend *be, const dfx_path *path, int channels,
                                int height, int width, double range_lo, double range_hi,
                                int K, const float *means, const float *stds,
                                const float *weights, dfx_error *err)
{
    if (K < 1 || channels < 1 || height < 1 || width < 1) {
        dfx_fail(err, "gmm: invalid sizes");
        return NULL;
    }
    dfx_model_config cfg;
    gmm_config(&cfg, path, channels, height, width, range_lo, range_hi);
    dfx_model *m = dfx_model_new(be, &cfg, err);
    if (!m) return NULL;
    if (gmm_init(m, K, means, stds, weights, "gmm", err) != 0) {
        dfx_model_free(m);
        return NULL;
    }
    return m;
}

int dfx_gmm_save(const char *file, const dfx_path *path, int channels, int height, int width,
                 double range_lo, double range_hi, int K, const float *means,
                 const float *stds, const float *weights, const char *dataset,
                 const char *description, dfx_error *err)
{
    dfx_model_config cfg;
    gmm_config(&cfg, path, channels, height, width, range_lo, range_hi);
    snprintf(cfg.dataset, sizeof cfg.dataset, "%s", dataset ? dataset : "");
    snprintf(cfg.description, sizeof cfg.description, "%s", description ? description : "");
    cJSON *root = dfx_config_to_json(&cfg);
    cJSON *sec = cJSON_AddObjectToObject(root, "gmm");
    cJSON_AddNumberToObject(sec, "components", K);
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return dfx_fail(err, "%s: out of memory", file);
    dfx_st_out t[3] = {
        {"gmm.means", DFX_F32, 4, {K, channels, height, width}, means},
        {"gmm.stds", DFX_F32, 1, {K}, stds},
        {"gmm.weights", DFX_F32, 1, {K}, weights},
    };
    int rc = dfx_st_write(file, json, t, 3, err);
    free(json);
    return rc;
}
