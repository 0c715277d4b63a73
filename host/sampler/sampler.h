/*
 * The sampler seam: a time grid plus a step rule over backend vectors.
 * Every update runs on the backend that holds x (lincomb, normal), so a GPU
 * run never copies the batch to the host between steps.
 */
#ifndef DFX_SAMPLER_H
#define DFX_SAMPLER_H

#include "model/model.h"

/* Philox stream tags: which kind of draw a normal belongs to. Corrector
 * step j of pc uses DFX_STREAM_CORRECT + j, Langevin step j at the start
 * DFX_STREAM_START + j. */
enum { DFX_STREAM_INIT = 0, DFX_STREAM_STEP = 1, DFX_STREAM_CORRECT = 2,
       DFX_STREAM_RESTART = 1 << 20, DFX_STREAM_START = 1 << 21 };

/* sampler_def.flags */
enum {
    DFX_SF_ADAPTIVE = 1, /* ignores the grid */
    DFX_SF_DALE = 2,     /* needs the dale (multiplicative) path */
    DFX_SF_AMBIENT = 4,  /* the state is x = exp(y), not y (log-space models) */
    DFX_SF_SCORE = 8,    /* needs the score */
    DFX_SF_VEL = 16,     /* needs the velocity */
    DFX_SF_X0 = 32,      /* needs x_hat and z_hat */
    DFX_SF_EPS = 64,     /* uses the em noise schedule eps(t) */
};

#define DFX_SAMPLER_MAX_BUFS 10

/* The Dale paper's sampling constants for one data set (samplers_dale.c):
 * its start, log x ~ N(start_mean, start_std^2) per value, and per sampler
 * the step delta, updates per time index and noise annealing factor. */
typedef struct dfx_dale_paper {
    const char *dataset;
    double start_mean, start_std;
    double adls_delta, adls_anneal;
    int adls_inner;
    double aums_delta, aums_anneal;
    int aums_inner;
} dfx_dale_paper;

/* The tuning of `dataset` ("" or NULL: mnist); NULL if the paper has none. */
const dfx_dale_paper *dfx_dale_paper_find(const char *dataset);
/* The data sets it has, "a, b" */
const char *dfx_dale_paper_names(void);

/* One row of the registry (sampler.c). */
typedef struct sampler_def {
    dfx_sampler_desc d;
    int nbuf;       /* backend vectors of [rows, dim] it needs besides x */
    unsigned flags; /* DFX_SF_* */
    double eta;     /* default eta of ancestral samplers */
    /* names of --variant, the first the default; NULL: none */
    const char *variants[3];
    /* Checks the options only this sampler reads, before anything is
     * planned; NULL when it has none. */
    int (*check)(const dfx_sample_opts *o, dfx_error *err);
    int (*run)(dfx_sampler *s, dfx_error *err);
    /* Network evaluations per sample of the steps where they are not
     * nfe_per_step per grid interval; NULL: they are. */
    long (*nfe)(const dfx_sampler *s);
} sampler_def;

struct dfx_sampler {
    dfx_model *m;
    dfx_backend *be;
    dfx_sample_opts o;
    const sampler_def *def;
    int max_rows;
    size_t dim;
    double t_noise, t_data;
    double eta;    /* resolved ancestral eta */
    int variant;   /* index into def->variants */
    int start;     /* resolved DFX_START_* (never AUTO) */
    int start_langevin; /* resolved Langevin steps at t_noise (never -1) */
    const dfx_dale_paper *paper; /* dale path: the paper's tuning for the model's data set */
    int n;         /* grid intervals */
    double *grid;  /* n + 1 times */
    float *x;      /* backend [max_rows, dim]: the state */
    float *buf[DFX_SAMPLER_MAX_BUFS];
    double *t;     /* host [max_rows]: per-row times */
    double *coef;  /* host [(DFX_LINCOMB_MAX + 1) * max_rows] */
    long *nfe;     /* host [max_rows]: evaluations per row */
    float *hostx;  /* host [max_rows, dim] for x_hat's post-processing, on first use */
    /* the batch being run */
    uint64_t first;
    int rows;
    long evals;    /* network evaluations of this batch so far */
    double main_nfe; /* evaluations per sample after the start's Langevin
                        steps, for the progress fraction: planned, or
                        (adaptive) the previous batch's mean */
    dfx_sample_stats *st;
};

/* Bytes that dfx_sampler_create(m, o, rows) allocates: the state and the
 * sampler's buffers plus the model's scratch (dfx_model_scratch_bytes). */
size_t dfx_sampler_bytes(const dfx_model *m, const dfx_sample_opts *o, int rows);

/* Helpers for the step rules (sampler.c). */
/* Evaluate the model prediction `want` at the same time for all rows. */
int dfx_s_eval(dfx_sampler *s, double t, const float *x, dfx_pred want, float *out,
               dfx_error *err);
/* Per-row times version; active[r] == 0 rows are not counted as evaluated. */
int dfx_s_eval_rows(dfx_sampler *s, const double *t, const float *x, dfx_pred want, float *out,
                    const int *active, dfx_error *err);
/* out = c0 + sum_i c[i] x_i with the same coefficients for every row. */
void dfx_s_lincomb(dfx_sampler *s, float *out, int k, const float *const *x, const double *c,
                   double c0);
/* Fails if x holds NaN or Inf, naming the step. */
int dfx_s_check(dfx_sampler *s, int step, double t, dfx_error *err);
/* Progress of the run: step of steps done (after the start's Langevin
 * steps); dfx_s_progress_start: `done` of those Langevin steps. */
void dfx_s_progress(dfx_sampler *s, int step, int steps, double t);
void dfx_s_progress_start(dfx_sampler *s, int done);
/* em, pc: fails, explaining the stability limit, if the state diverged. */
int dfx_s_diverged(dfx_sampler *s, dfx_error *err);
/* em, pc: refuses a grid on which the explicit step will diverge
 * (samplers_em.c; 0 for the other samplers). */
int dfx_check_stability(const dfx_sampler *s, dfx_error *err);

/* Step rules (samplers_*.c) and the option checks of those that have one */
int dfx_run_euler(dfx_sampler *s, dfx_error *err);
int dfx_run_heun(dfx_sampler *s, dfx_error *err);
int dfx_run_rk4(dfx_sampler *s, dfx_error *err);
int dfx_run_restart(dfx_sampler *s, dfx_error *err);
long dfx_restart_nfe(const dfx_sampler *s);
long dfx_pc_nfe(const dfx_sampler *s);
long dfx_dale_nfe(const dfx_sampler *s);
int dfx_run_dopri5(dfx_sampler *s, dfx_error *err);
int dfx_run_em(dfx_sampler *s, dfx_error *err);
int dfx_run_ddim(dfx_sampler *s, dfx_error *err);
int dfx_run_ddpm(dfx_sampler *s, dfx_error *err);
int dfx_run_dpmpp_2m(dfx_sampler *s, dfx_error *err);
int dfx_run_dpmpp_2m_sde(dfx_sampler *s, dfx_error *err);
int dfx_run_dpmpp_3m_sde(dfx_sampler *s, dfx_error *err);
int dfx_run_unipc(dfx_sampler *s, dfx_error *err);
int dfx_run_deis(dfx_sampler *s, dfx_error *err);
int dfx_run_pc(dfx_sampler *s, dfx_error *err);
/* The start_langevin Langevin steps at t_noise on s->x (samplers_em.c);
 * uses buf[0..2]. */
int dfx_start_langevin(dfx_sampler *s, dfx_error *err);
int dfx_check_pc(const dfx_sample_opts *o, dfx_error *err);
int dfx_run_adls(dfx_sampler *s, dfx_error *err);
int dfx_run_aums(dfx_sampler *s, dfx_error *err);

/* Conversion coefficients at one time for all rows: to = A x + B P + C,
 * with a message naming the sampler and time when singular. */
int dfx_s_conv(const dfx_sampler *s, double t, dfx_pred from, dfx_pred to, double *A,
               double *B, double *C, dfx_error *err);
/* 1 if the model post-processes x_hat (clip, thresholding); then X, an
 * x_hat of the batch, is post-processed in place. */
int dfx_s_xhat_post_on(const dfx_sampler *s);
int dfx_s_xhat_post(dfx_sampler *s, float *X, dfx_error *err);
/* One network evaluation at (t, x) into P, and x_hat of it
 * (post-processed as the model's scheduler does) into X. */
int dfx_s_xhat(dfx_sampler *s, double t, float *P, float *X, dfx_error *err);
/* Standard normals of draw `draw`, stream `stream` into z. */
void dfx_s_noise(dfx_sampler *s, float *z, uint32_t draw, uint32_t stream);

/* The default time grid on family f for a sampler with flags (grid.c). */
dfx_grid dfx_family_grid(dfx_path_family f, unsigned flags);

/* The em noise level eps(t) >= 0 of MATH.md section 1.2 (may be Inf). */
double dfx_noise_eps(const dfx_path *p, dfx_noise kind, double eps0, double t);

#endif
