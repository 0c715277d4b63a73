/*
 * The multiplicative (Dale) samplers of MATH.md section 3, for models on
 * the dale path (geometric Brownian motion dX = mu X dt + sigma X dW, a VE
 * path in y = log x). Time runs from t_noise (1) down the grid; at index i
 * the network sees t_i and the update uses a step delta:
 *
 *   adls  y <- y + delta sigma^2 grad_y log p - delta (mu - sigma^2/2)
 *                + f_i sigma sqrt(delta) Z
 *         which is the paper's x <- x exp(delta sigma^2 h - delta (mu - 1.5
 *         sigma^2) + sigma sqrt(delta) Z) with h = x grad_x log p =
 *         grad_y log p - 1, written in y: signs can never flip.
 *   aums  x <- x (1 + 2 delta sigma^2 - delta mu + delta sigma^2 h
 *                + f_i sigma sqrt(delta) Z)           (ambient state)
 *
 * Principled schedule: delta = the grid step (1/N on a uniform grid), one
 * update per index, f_i = 1 — Euler-Maruyama of the reverse SDE.
 * The paper's recipe: a constant tuned delta, L updates per index, and
 * f_i = anneal^i (MATH.md section 3 gives the published values).
 */
#include "core/error.h"
#include "sampler/sampler.h"

#include <math.h>
#include <string.h>

/* The authors' sampling configs (gbm_configs/NCSNDEEPER/mnist.py and
 * fmnist.py of Dale-Meets-Langevin; MATH.md section 3): the fitted
 * log-normal start and, for adls (their dls) and aums (ums), delta, the
 * annealing factor and L. */
static const dfx_dale_paper papers[] = {
    {"mnist", 0.15651744604110718, 0.8352777361869812, 6.165454545454547e-4, 0.995, 1,
     1.43844988828766e-4, 0.995, 4},
    {"fashion-mnist", 0.27712640166282654, 0.8428290486335754, 5.862727272727274e-4, 0.995, 1,
     1.467799267622069e-3, 0.9995, 3},
};

const dfx_dale_paper *dfx_dale_paper_find(const char *dataset)
{
    if (!dataset || !dataset[0]) return &papers[0];
    for (size_t i = 0; i < sizeof papers / sizeof papers[0]; i++)
        if (strcmp(papers[i].dataset, dataset) == 0) return &papers[i];
    return NULL;
}

const char *dfx_dale_paper_names(void)
{
    return "mnist, fashion-mnist";
}

typedef struct dale_step {
    double delta, f;
    int inner;
} dale_step;

static dale_step schedule(const dfx_sampler *s, int i)
{
    dale_step d = {fabs(s->grid[i + 1] - s->grid[i]), 1.0, 1};
    if (s->o.recipe == DFX_RECIPE_PAPER) {
        d.delta = s->o.delta;
        d.inner = s->o.inner;
        d.f = pow(s->o.anneal, (double)i);
    }
    return d;
}

int dfx_run_adls(dfx_sampler *s, dfx_error *err)
{
    dfx_model *m = s->m;
    const double sg2 = m->cfg.path.dale_sigma * m->cfg.path.dale_sigma;
    const double mu = m->cfg.path.dale_mu;
    float *P = s->buf[0], *z = s->buf[1];
    for (int i = 0; i < s->n; i++) {
        double t = s->grid[i], A, B, C;
        dale_step d = schedule(s, i);
        if (dfx_s_conv(s, t, m->native, DFX_PRED_SCORE, &A, &B, &C, err)) return -1;
        for (int l = 0; l < d.inner; l++) {
            if (dfx_s_eval(s, t, s->x, m->native, P, err)) return -1;
            dfx_s_noise(s, z, (uint32_t)(i * d.inner + l + 1), DFX_STREAM_STEP);
            const float *xs[3] = {s->x, P, z};
            double k = d.delta * sg2;
            double cs[3] = {1.0 + k * A, k * B, d.f * sqrt(sg2 * d.delta)};
            dfx_s_lincomb(s, s->x, 3, xs, cs, k * C - d.delta * (mu - 0.5 * sg2));
        }
        if (dfx_s_check(s, i + 1, s->grid[i + 1], err)) return -1;
        dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    }
    return 0;
}

/* The paper recipe's aums: the authors' network takes any x, difflux's
 * works in log x, so values the update took to <= 0 are set to the data
 * range's low end (where the paper's final clamp puts them) and counted. */
static int floor_nonpositive(dfx_sampler *s, dfx_error *err)
{
    const size_t n = (size_t)s->rows * s->dim;
    if (!s->hostx) {
        s->hostx = dfx_alloc((size_t)s->max_rows * s->dim * 2, sizeof(float), "aums floor", err);
        if (!s->hostx) return -1;
    }
    if (s->be->ops->download(s->be, s->hostx, s->x, n * sizeof(float), err)) return -1;
    long hit = 0;
    const float lo = (float)s->m->cfg.range_lo;
    for (size_t k = 0; k < n; k++)
        if (s->hostx[k] <= 0.0f) s->hostx[k] = lo, hit++;
    s->st->nonpositive += hit;
    return hit ? s->be->ops->upload(s->be, s->x, s->hostx, n * sizeof(float), err) : 0;
}

int dfx_run_aums(dfx_sampler *s, dfx_error *err)
{
    const int paper = s->o.recipe == DFX_RECIPE_PAPER;
    dfx_model *m = s->m;
    const double sg2 = m->cfg.path.dale_sigma * m->cfg.path.dale_sigma;
    const double mu = m->cfg.path.dale_mu;
    float *h = s->buf[0], *z = s->buf[1];
    const size_t n = (size_t)s->rows * s->dim;
    for (int i = 0; i < s->n; i++) {
        double t = s->grid[i];
        dale_step d = schedule(s, i);
        for (int r = 0; r < s->rows; r++) s->t[r] = t;
        for (int l = 0; l < d.inner; l++) {
            if (dfx_model_hyvarinen(m, s->t, s->x, h, s->rows, err)) return -1;
            for (int r = 0; r < s->rows; r++) s->nfe[r]++;
            dfx_s_noise(s, z, (uint32_t)(i * d.inner + l + 1), DFX_STREAM_STEP);
            /* h <- the factor (1 + 2 d sg2 - d mu + d sg2 h + f sg sqrt(d) z) */
            const float *xs[2] = {h, z};
            double cs[2] = {d.delta * sg2, d.f * sqrt(sg2 * d.delta)};
            dfx_s_lincomb(s, h, 2, xs, cs, 1.0 + 2.0 * d.delta * sg2 - d.delta * mu);
            s->be->ops->mul_add(s->be, s->x, s->x, h, 0.0, n);
            if (paper && floor_nonpositive(s, err)) return -1;
        }
        if (dfx_s_check(s, i + 1, s->grid[i + 1], err)) return -1;
        dfx_s_progress(s, i + 1, s->n, s->grid[i + 1]);
    }
    return 0;
}

long dfx_dale_nfe(const dfx_sampler *s)
{
    long n = 0;
    for (int i = 0; i < s->n; i++) n += schedule(s, i).inner;
    return n;
}
