/*
 * Paths and predictions (MATH.md section 1): the one place that knows
 * a(t), s(t), m(t) and their derivatives, and converts any prediction into
 * any other. Samplers ask for what they integrate; they never branch on how
 * a model was trained.
 */
#include "core/error.h"
#include "core/names.h"

#include <math.h>
#include <string.h>

#define PI 3.14159265358979323846

static const char *const path_names[DFX_PATH_COUNT] = {"linear", "trig", "vp",      "vp_cosine",
                                                       "ve",     "dale", "discrete"};
static const char *const pred_names[DFX_PRED_COUNT] = {"eps", "data", "score", "velocity", "v"};

const char *dfx_path_name(dfx_path_family f)
{
    return dfx_enum_name(path_names, DFX_PATH_COUNT, (int)f);
}

int dfx_path_parse(const char *name, dfx_path_family *f)
{
    int i = dfx_enum_parse(path_names, DFX_PATH_COUNT, name);
    if (i >= 0) *f = (dfx_path_family)i;
    return i >= 0 ? 0 : -1;
}

const char *dfx_pred_name(dfx_pred p)
{
    return dfx_enum_name(pred_names, DFX_PRED_COUNT, (int)p);
}

int dfx_pred_parse(const char *name, dfx_pred *p)
{
    int i = dfx_enum_parse(pred_names, DFX_PRED_COUNT, name);
    if (i >= 0) *p = (dfx_pred)i;
    return i >= 0 ? 0 : -1;
}

/* DDPMScheduler's default schedule (linear betas 1e-4 .. 0.02 in float32,
 * 1000 steps): the discrete path without a model's own table. */
static double ddpm_log_abar[1000];

static const double *ddpm_table(void)
{
    static int done = 0;
    if (!done) {
        double acc = 0.0;
        for (int i = 0; i < 1000; i++) {
            acc += log1p(-(double)(float)(1e-4 + (0.02 - 1e-4) * i / 999.0));
            ddpm_log_abar[i] = acc;
        }
        done = 1;
    }
    return ddpm_log_abar;
}

void dfx_path_default(dfx_path *p, dfx_path_family family)
{
    memset(p, 0, sizeof *p);
    if (family == DFX_PATH_DISCRETE) {
        p->n_train = 1000;
        p->log_abar = ddpm_table();
        p->final_one = 1;
    }
    p->family = family;
    p->beta_min = 0.1;
    p->beta_max = 20.0;
    p->cosine_s = 0.008;
    p->sigma_min = 0.002;
    p->sigma_max = 80.0;
    p->dale_sigma = 0.8;
    p->dale_mu = 0.32;
}

int dfx_path_equal(const dfx_path *a, const dfx_path *b)
{
    if (a->family != b->family) return 0;
    switch (a->family) {
    case DFX_PATH_VP:
        return a->beta_min == b->beta_min && a->beta_max == b->beta_max;
    case DFX_PATH_VP_COSINE:
        return a->cosine_s == b->cosine_s;
    case DFX_PATH_VE:
        return a->sigma_min == b->sigma_min && a->sigma_max == b->sigma_max;
    case DFX_PATH_DALE:
        return a->dale_sigma == b->dale_sigma && a->dale_mu == b->dale_mu;
    case DFX_PATH_DISCRETE:
        if (a->n_train != b->n_train || a->spacing != b->spacing ||
            a->steps_offset != b->steps_offset || a->dpm_timesteps != b->dpm_timesteps ||
            a->final_one != b->final_one)
            return 0;
        for (int i = 0; i < a->n_train; i++)
            if (a->log_abar[i] != b->log_abar[i]) return 0;
        return 1;
    default:
        return 1;
    }
}

int dfx_path_data_at_one(const dfx_path *p)
{
    return p->family == DFX_PATH_LINEAR || p->family == DFX_PATH_TRIG;
}

/* Variance-preserving paths: s = sqrt(1 - a^2), computed without
 * cancellation from log a; ds = -a da / s. */
static void vp_from_log_a(double log_a, double dlog_a, dfx_coef *c)
{
    c->a = exp(log_a);
    c->da = c->a * dlog_a;
    double s2 = -expm1(2.0 * log_a);
    c->s = sqrt(s2 > 0.0 ? s2 : 0.0);
    c->ds = (c->s > 0.0) ? -c->a * c->da / c->s : INFINITY;
}

void dfx_path_eval(const dfx_path *p, double t, dfx_coef *c)
{
    memset(c, 0, sizeof *c);
    switch (p->family) {
    case DFX_PATH_LINEAR:
        c->a = t;
        c->s = 1.0 - t;
        c->da = 1.0;
        c->ds = -1.0;
        break;
    case DFX_PATH_TRIG:
        c->a = sin(0.5 * PI * t);
        c->s = cos(0.5 * PI * t);
        c->da = 0.5 * PI * c->s;
        c->ds = -0.5 * PI * c->a;
        break;
    case DFX_PATH_VP: {
        double b0 = p->beta_min, b1 = p->beta_max;
        double log_a = -(0.5 * b0 * t + 0.25 * (b1 - b0) * t * t);
        double dlog_a = -0.5 * (b0 + (b1 - b0) * t); /* -beta(t)/2 */
        vp_from_log_a(log_a, dlog_a, c);
        break;
    }
    case DFX_PATH_VP_COSINE: {
        /* a = f(t)/f(0), f(t) = cos((t + s0)/(1 + s0) * pi/2) (Nichol & Dhariwal) */
        double s0 = p->cosine_s, w = 0.5 * PI / (1.0 + s0);
        double f0 = cos(w * s0), f = cos(w * (t + s0));
        if (f < 0.0) f = 0.0;
        double log_a = (f > 0.0) ? log(f / f0) : -INFINITY;
        double dlog_a = (f > 0.0) ? -w * tan(w * (t + s0)) : -INFINITY;
        if (f > 0.0) {
            vp_from_log_a(log_a, dlog_a, c);
        } else {
            c->a = 0.0;
            c->da = -w * sin(w * (t + s0)) / f0;
            c->s = 1.0;
            c->ds = 0.0;
        }
        break;
    }
    case DFX_PATH_VE: {
        double lr = log(p->sigma_max / p->sigma_min);
        c->a = 1.0;
        c->s = p->sigma_min * exp(lr * t);
        c->ds = c->s * lr;
        break;
    }
    case DFX_PATH_DISCRETE: {
        /* log abar linear between the timesteps tau = N t - 1 of the table,
         * with abar = 1 at tau = -1 (t = 0); flat beyond tau = N - 1 */
        int N = p->n_train;
        if (N < 1 || !p->log_abar || isnan(t)) {
            c->a = c->s = NAN;
            break;
        }
        double tau = N * t - 1.0, l, dl;
        if (tau >= N - 1) {
            l = p->log_abar[N - 1];
            dl = 0.0;
        } else {
            double f = tau <= -1.0 ? -1.0 : floor(tau);
            int j = (int)f; /* -1 .. N - 2 */
            double l0 = j < 0 ? 0.0 : p->log_abar[j], l1 = p->log_abar[j + 1];
            dl = (l1 - l0) * N;
            l = tau <= -1.0 ? 0.0 : l0 + (tau - f) * (l1 - l0);
        }
        vp_from_log_a(0.5 * l, 0.5 * dl, c);
        break;
    }
    case DFX_PATH_DALE: {
        /* log X_t = log X_0 + (mu - sigma^2/2) t + sigma W_t (MATH.md section 3) */
        double sg = p->dale_sigma;
        c->a = 1.0;
        c->s = sg * sqrt(t);
        c->ds = t > 0.0 ? 0.5 * sg / sqrt(t) : INFINITY;
        c->m = (p->dale_mu - 0.5 * sg * sg) * t;
        c->dm = p->dale_mu - 0.5 * sg * sg;
        break;
    }
    default:
        c->a = c->s = NAN;
        break;
    }
}

double dfx_path_logsnr(const dfx_path *p, double t)
{
    dfx_coef c;
    dfx_path_eval(p, t, &c);
    if (c.s <= 0.0) return INFINITY;
    if (c.a <= 0.0) return -INFINITY;
    return log(c.a) - log(c.s);
}

double dfx_path_t_of_logsnr(const dfx_path *p, double lambda)
{
    /* lambda(t) is increasing when data sit at t = 1, decreasing otherwise. */
    int up = dfx_path_data_at_one(p);
    double lo = 0.0, hi = 1.0;
    for (int i = 0; i < 200 && hi - lo > 1e-16; i++) {
        double mid = 0.5 * (lo + hi);
        double l = dfx_path_logsnr(p, mid);
        if ((l < lambda) == up)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

void dfx_path_default_range(const dfx_path *p, double *t_noise, double *t_data)
{
    switch (p->family) {
    case DFX_PATH_LINEAR:
    case DFX_PATH_TRIG:
        *t_noise = 0.0;
        *t_data = 1.0 - 1e-3;
        break;
    case DFX_PATH_VP:
        *t_noise = 1.0;
        *t_data = 1e-3;
        break;
    case DFX_PATH_VP_COSINE:
        *t_noise = 1.0 - 1e-3;
        *t_data = 1e-3;
        break;
    case DFX_PATH_DALE: /* s = 0 at t = 0 */
        *t_noise = 1.0;
        *t_data = 1e-3;
        break;
    case DFX_PATH_DISCRETE: /* tau = N - 1 down to the scheduler's final point */
        *t_noise = 1.0;
        *t_data = (p->final_one || p->n_train < 1) ? 0.0 : 1.0 / p->n_train;
        break;
    default: /* ve: sigma_min > 0 and sigma_max finite, nothing is singular */
        *t_noise = 1.0;
        *t_data = 0.0;
        break;
    }
}

double dfx_path_timestep(const dfx_path *p, double t)
{
    return p->n_train * t - 1.0;
}

double dfx_path_t_of_timestep(const dfx_path *p, double tau)
{
    return (tau + 1.0) / p->n_train;
}

/* Every prediction P is affine in (x, x_hat) at fixed t:
 * P = cx * x + cd * x_hat + k  (MATH.md section 1, with x - m for x). */
static void pred_affine(const dfx_coef *c, dfx_pred p, double *cx, double *cd, double *k)
{
    double a = c->a, s = c->s;
    switch (p) {
    case DFX_PRED_EPS: /* (x - m - a x_hat) / s */
        *cx = 1.0 / s;
        *cd = -a / s;
        break;
    case DFX_PRED_DATA:
        *cx = 0.0;
        *cd = 1.0;
        break;
    case DFX_PRED_SCORE: /* -(x - m - a x_hat) / s^2 */
        *cx = -1.0 / (s * s);
        *cd = a / (s * s);
        break;
    case DFX_PRED_VELOCITY: /* a' x_hat + s' z_hat + m' */
        *cx = c->ds / s;
        *cd = c->da - a * c->ds / s;
        break;
    case DFX_PRED_V: /* a z_hat - s x_hat */
        *cx = a / s;
        *cd = -(a * a + s * s) / s;
        break;
    default:
        *cx = *cd = NAN;
        break;
    }
    *k = -(*cx) * c->m + (p == DFX_PRED_VELOCITY ? c->dm : 0.0);
}

int dfx_convert_coefs(const dfx_coef *c, dfx_pred from, dfx_pred to, double *A, double *B,
                      double *C, dfx_error *err)
{
    if (from < 0 || from >= DFX_PRED_COUNT || to < 0 || to >= DFX_PRED_COUNT)
        return dfx_fail(err, "unknown prediction type");
    if (from == to) {
        *A = 0.0;
        *B = 1.0;
        *C = 0.0;
        return 0;
    }
    if (to == DFX_PRED_DATA && c->s == 0.0 && c->a > 0.0) {
        /* noise-free: the state itself says x_hat = (x - m) / a */
        *A = 1.0 / c->a;
        *B = 0.0;
        *C = -c->m / c->a;
        return 0;
    }
    if (c->s > 0.0 && ((from == DFX_PRED_EPS && to == DFX_PRED_SCORE) ||
                       (from == DFX_PRED_SCORE && to == DFX_PRED_EPS))) {
        /* S = -z_hat / s (Tweedie), defined at a = 0 too, where x_hat is not */
        *A = 0.0;
        *B = from == DFX_PRED_EPS ? -1.0 / c->s : -c->s;
        *C = 0.0;
        return 0;
    }
    double xn, dn, kn, xw, dw, kw;
    pred_affine(c, from, &xn, &dn, &kn);
    pred_affine(c, to, &xw, &dw, &kw);
    /* x_hat = (P_from - xn x - kn) / dn, then P_to = xw x + dw x_hat + kw. */
    *B = dw / dn;
    *A = xw - (*B) * xn;
    *C = kw - (*B) * kn;
    if (dn == 0.0 || !isfinite(*A) || !isfinite(*B) || !isfinite(*C))
        return dfx_fail(err,
                        "cannot convert a %s prediction to %s where a = %g, s = %g: the "
                        "conversion is singular there; sample on a shorter interval "
                        "(--t-noise / --t-data)",
                        dfx_pred_name(from), dfx_pred_name(to), c->a, c->s);
    return 0;
}
