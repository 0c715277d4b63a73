/*
 * difflux — sampling from diffusion, flow-matching and multiplicative models.
 *
 * The public C API. The data path reads like the data flows (tests/test_api.c
 * runs this example, line for line):
 *
 *     dfx_error err;
 *     dfx_backend *be = dfx_backend_create("auto", 0, &err);
 *     dfx_model *m = dfx_model_load("models/mnist-gmm.safetensors", be, &err);
 *     const dfx_model_info *info = dfx_model_get_info(m);
 *     dfx_sample_opts o;
 *     dfx_sample_opts_default(&o, m);
 *     o.sampler = "heun"; o.steps = 30; o.seed = 1;
 *     dfx_sampler *s = dfx_sampler_create(m, &o, 64, &err);   // plans buffers once
 *     float *images = malloc(64 * sizeof(float) * info->channels * info->height * info->width);
 *     dfx_sample_stats stats;
 *     dfx_sampler_run(s, 0, 64, images, &stats, &err);          // samples 0..63
 *     dfx_grid_layout grid = {.cols = 8, .pad = 2, .pad_value = 1, .scale = 1};
 *     dfx_write_png_grid("grid.png", images, 64, info->channels, info->height, info->width,
 *                        info->range_lo, info->range_hi, &grid, &err);
 *     free(images); dfx_sampler_free(s); dfx_model_free(m); dfx_backend_destroy(be);
 *
 * (each call that can fail is checked in real code: see Conventions).
 *
 * Conventions
 *  - Every function that can fail returns 0 (or a non-NULL pointer) on success
 *    and -1 (or NULL) on failure, with a message naming the file, tensor or
 *    option at fault in *err. The library never prints and never exits.
 *  - Images are float32, row-major [N, C, H, W], in the model's data space
 *    (see dfx_model_info.range_lo/hi for the mapping to pixels).
 *  - Sample i drawn with seed S is the same whatever the batch size, the
 *    device, or how the index range is split across calls or processes:
 *    noise depends only on (seed, global sample index, draw, element).
 *
 * Mathematics and notation: MATH.md in the source tree (paths, predictions,
 * samplers). Model file format: models/FORMAT.md.
 */
#ifndef DIFFLUX_H
#define DIFFLUX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DFX_VERSION "0.1.0"

/* pi and log(2 pi), where <math.h> need not define M_PI (C11) */
#define DFX_PI 3.14159265358979323846
#define DFX_LOG_2PI 1.8378770664093454836

/* ---------------------------------------------------------------- errors */

typedef struct dfx_error {
    char msg[1024];
} dfx_error;

/* ------------------------------------------------------------- backends */

typedef struct dfx_backend dfx_backend;

/* name: "cpu", "cuda", "cuda:N" (device N) or "auto" (CUDA when built with
 * it and a GPU is present, else CPU). threads: CPU worker threads, 0 = all cores. */
dfx_backend *dfx_backend_create(const char *name, int threads, dfx_error *err);
void dfx_backend_destroy(dfx_backend *be);
const char *dfx_backend_name(const dfx_backend *be);
/* The processor, in words, and its measured FP32 GEMM rate (GFLOP/s; 0 if
 * the backend cannot measure it). */
const char *dfx_backend_device(const dfx_backend *be);
double dfx_backend_peak_gflops(dfx_backend *be);
/* Precision of the network's matrix products. FP32 is the default and
 * the reference; TF32 and BF16 (CUDA only) round the products' inputs to
 * 10 or 7 mantissa bits for tensor-core throughput, accumulating in FP32
 * (relative error about 1e-3 and 1e-2 per product; tests/test_backend_ops.c). */
enum { DFX_PRECISION_FP32 = 0, DFX_PRECISION_TF32 = 1, DFX_PRECISION_BF16 = 2 };
/* mode: "fp32", "tf32" or "bf16". Fails with a clear message for an
 * unknown mode or one the backend does not have. */
int dfx_backend_set_precision(dfx_backend *be, const char *mode, dfx_error *err);
/* "fp32", "tf32" or "bf16". */
const char *dfx_backend_precision(const dfx_backend *be);
/* The CPU backend's instruction-set path in use: "avx512", "avx2" or
 * "baseline", chosen by the CPU's features; the environment variable
 * DIFFLUX_ISA forces a lower one. dfx_cpu_path_error() is NULL, or why
 * DIFFLUX_ISA was refused (creating a CPU backend then fails with it). */
const char *dfx_cpu_path(void);
const char *dfx_cpu_path_error(void);
/* The OpenBLAS kernel set in use ("SkylakeX", "Haswell", ...), and a
 * faster one this CPU supports when OpenBLAS fell back to pre-AVX2
 * kernels on a CPU model it does not know (NULL otherwise). OpenBLAS reads
 * OPENBLAS_CORETYPE once, when it is loaded: set it to that name before
 * the program starts (the CLI re-executes itself with it). */
const char *dfx_blas_core(void);
const char *dfx_blas_better_core(void);
/* 1 when the library was built with the CUDA backend. */
int dfx_have_cuda(void);
/* Usable CUDA devices (0 without the CUDA backend or a GPU). */
int dfx_cuda_devices(void);

/* ----------------------------------------------------- paths, predictions */

/* The forward path x_t = a(t) x_data + s(t) z + m(t), t in [0, 1]. */
typedef enum {
    DFX_PATH_LINEAR = 0, /* one-sided linear interpolant: a = t, s = 1 - t     */
    DFX_PATH_TRIG,       /* one-sided trigonometric: a = sin(pi t/2), s = cos */
    DFX_PATH_VP,         /* variance preserving, linear beta (score_sde)       */
    DFX_PATH_VP_COSINE,  /* variance preserving, cosine schedule               */
    DFX_PATH_VE,         /* variance exploding: a = 1, s = geometric sigma(t)  */
    DFX_PATH_DALE,       /* multiplicative (Dale): VE in y = log x, s = sigma sqrt(t),
                            m = (mu - sigma^2/2) t                             */
    DFX_PATH_DISCRETE,   /* a discrete-time schedule (diffusers): VP with a = sqrt(abar_tau)
                            from a table, timestep tau = N t - 1 (MATH.md section 7) */
    DFX_PATH_COUNT
} dfx_path_family;

typedef struct dfx_path {
    dfx_path_family family;
    double beta_min, beta_max;   /* vp: 0.1, 20            */
    double cosine_s;             /* vp_cosine: 0.008       */
    double sigma_min, sigma_max; /* ve: 0.002, 80          */
    double dale_sigma, dale_mu;  /* dale: 0.8, 0.32        */
    /* discrete: N training timesteps and log abar_tau for tau = 0 .. N - 1
     * (the model's table: it lives as long as the model), the scheduler's
     * timestep spacing (DFX_SPACING_*) and steps_offset, dpm_timesteps (1:
     * DPM-Solver's rule, which divides into steps + 1 and drops the last)
     * and final_one (1: the last step goes to abar = 1, t = 0; 0: to abar_0,
     * tau = 0, as DDIM's set_alpha_to_one = false) */
    int n_train;
    const double *log_abar;
    int spacing, steps_offset, dpm_timesteps, final_one;
} dfx_path;

/* Timestep spacings of discrete schedules (diffusers' timestep_spacing). */
enum { DFX_SPACING_LEADING = 0, DFX_SPACING_TRAILING, DFX_SPACING_LINSPACE };

/* Path coefficients and their time derivatives at one t. */
typedef struct dfx_coef {
    double a, s, m, da, ds, dm;
} dfx_coef;

typedef enum {
    DFX_PRED_EPS = 0, /* noise z_hat                          */
    DFX_PRED_DATA,    /* denoised data x_hat                  */
    DFX_PRED_SCORE,   /* grad log p_t(x)                      */
    DFX_PRED_VELOCITY,/* dx_t/dt                              */
    DFX_PRED_V,       /* DDPM "v" = a z_hat - s x_hat         */
    DFX_PRED_COUNT
} dfx_pred;

void dfx_path_default(dfx_path *p, dfx_path_family family);
void dfx_path_eval(const dfx_path *p, double t, dfx_coef *c);
/* 1 when a and b are the same path: family, its parameters and, for a
 * discrete one, the whole schedule. */
int dfx_path_equal(const dfx_path *a, const dfx_path *b);
/* 1 when the data end of the path is t = 1 (interpolants), 0 when t = 0. */
int dfx_path_data_at_one(const dfx_path *p);
/* log-SNR lambda(t) = log(a / s); +-INFINITY at an end where s or a is 0. */
double dfx_path_logsnr(const dfx_path *p, double t);
/* Inverse of dfx_path_logsnr (lambda is monotone in t). */
double dfx_path_t_of_logsnr(const dfx_path *p, double lambda);
/* Default sampling interval: generation runs from t_noise to t_data, which
 * sit a small distance from any end where a conversion is singular. */
void dfx_path_default_range(const dfx_path *p, double *t_noise, double *t_data);
/* Discrete path: the training timestep tau = N t - 1 of time t, and back. */
double dfx_path_timestep(const dfx_path *p, double t);
double dfx_path_t_of_timestep(const dfx_path *p, double tau);

const char *dfx_path_name(dfx_path_family f);
int dfx_path_parse(const char *name, dfx_path_family *f); /* 0 ok, -1 unknown */
const char *dfx_pred_name(dfx_pred p);
int dfx_pred_parse(const char *name, dfx_pred *p);

/* Any prediction is affine in (x, P) for another prediction P at the same
 * (t, x): to = A * x + B * P + C. Fails (and says why) where the path makes
 * the conversion singular. */
int dfx_convert_coefs(const dfx_coef *c, dfx_pred from, dfx_pred to,
                      double *A, double *B, double *C, dfx_error *err);

/* ---------------------------------------------------------------- models */

typedef struct dfx_model dfx_model;

typedef struct dfx_model_info {
    const char *kind;        /* "gmm", ...                                   */
    dfx_path path;
    dfx_pred prediction;     /* what the model natively outputs               */
    int channels, height, width;
    double range_lo, range_hi; /* data-space values shown as black and white  */
    const char *dataset;     /* provenance, may be ""                         */
    const char *description;
    const char *training;    /* steps, batch, time, hardware, loss; may be "" */
    size_t n_params;         /* stored numbers                                */
    int num_classes;         /* class-conditional models: K (labels 0..K-1), else 0 */
    double flops;            /* floating-point operations per evaluation of one sample */
    const char *guide;       /* the guide its config names for sampling (a file beside
                                the model's, "" if none; dfx_model_set_guide) */
    double guide_weight;     /* and its weight */
} dfx_model_info;

/* A difflux model file, or a model saved by diffusers: a pipeline folder
 * (DDPMPipeline.save_pretrained), a unet folder, or its safetensors file
 * with config.json beside it (README "Models from diffusers"). */
dfx_model *dfx_model_load(const char *file, dfx_backend *be, dfx_error *err);
/* A diffusers model with the scheduler config `scheduler`
 * (scheduler_config.json) instead of its own (NULL: its own, or
 * DDPMScheduler's defaults where it has none). */
dfx_model *dfx_model_load_diffusers(const char *path, const char *scheduler, dfx_backend *be,
                                    dfx_error *err);
/* The same from a file image in memory (size bytes at buf, not kept after
 * the call); `name` stands for the file in messages. */
dfx_model *dfx_model_load_mem(const void *buf, size_t size, const char *name, dfx_backend *be,
                              dfx_error *err);
void dfx_model_free(dfx_model *m);
const dfx_model_info *dfx_model_get_info(const dfx_model *m);
/* Write a human-readable description (architecture, tensors, provenance). */
int dfx_model_describe(const dfx_model *m, char *buf, size_t cap);
/* Bytes of scratch that evaluating batches of up to `rows` allocates
 * (activations, convolution and attention scratch, conversion buffers),
 * without allocating them: what a run needs beyond the weights. */
size_t dfx_model_scratch_bytes(const dfx_model *m, int rows);
/* Class conditioning: a class 0..K-1, DFX_CLASS_NONE (unconditional) or
 * DFX_CLASS_CYCLE (sample i gets class i mod K); guidance w mixes the
 * conditional and unconditional predictions as P_u + w (P_c - P_u)
 * (classifier-free guidance; w = 1 is plain conditional sampling). */
#define DFX_CLASS_NONE (-1)
#define DFX_CLASS_CYCLE (-2)
int dfx_model_set_class(dfx_model *m, int cls, double guidance, dfx_error *err);

/* Guidance by a weaker model of the same data ("autoguidance"): every
 * prediction of m becomes P_g + w (P - P_g), P_g that of `guide` (a less
 * trained or smaller network on the same path and image shape); w = 1 is m
 * alone. Each evaluation then runs both networks. On success m owns guide
 * (freed with m; a later call replaces it, NULL removes it); on failure
 * the caller keeps it. */
int dfx_model_set_guide(dfx_model *m, dfx_model *guide, double w, dfx_error *err);
/* The CLI's --guide-weight when none is given. */
#define DFX_GUIDE_WEIGHT_DEFAULT 2

/* A diagnostic perturbation of the model's field (MATH.md 4.4): its
 * velocity v becomes v + lambda s(t) M eps, eps = -s S its noise
 * prediction, M fixed; the score becomes S + h(t) M S for a scalar h(t).
 * DFX_PERTURB_ROT pairs the flattened indices (2i, 2i+1) and turns each
 * pair by 90 degrees (antisymmetric, orthogonal: a field that is not a
 * gradient but moves no density), DFX_PERTURB_SWAP swaps them (symmetric,
 * traceless, orthogonal: not a gradient, and it moves the density),
 * DFX_PERTURB_SCALE is M = I (a gradient, and it moves the density). Every
 * prediction, sampler, JVP and diagnostic sees the perturbed field. Not on
 * the dale path. NONE (or lambda 0) turns it off. */
typedef enum { DFX_PERTURB_NONE, DFX_PERTURB_ROT, DFX_PERTURB_SWAP, DFX_PERTURB_SCALE } dfx_perturb;
int dfx_model_set_perturb(dfx_model *m, dfx_perturb kind, double lambda, dfx_error *err);
const char *dfx_perturb_name(dfx_perturb kind);
/* "KIND:LAMBDA" (rot, swap or scale; a finite lambda): 0, or -1 with a
 * message naming what is wrong. */
int dfx_perturb_parse(const char *text, dfx_perturb *kind, double *lambda, dfx_error *err);

/* Classifiers (kind "classifier": the feature networks of difflux eval).
 * dfx_classifier_dims gives the feature width F and class count K (-1 when
 * m is not a classifier). dfx_classify maps n images of pixels in [0, 1]
 * (host, [n, C, H, W]) to features [n, F] and logits [n, K] (host; either
 * may be NULL). dfx_classifier_label: the name of class k from the
 * config's "labels" (its number as text when absent), in buf. */
int dfx_classifier_dims(const dfx_model *m, int *features, int *classes);
int dfx_classify(dfx_model *m, const float *pixels, int n, float *features, float *logits,
                 dfx_error *err);
const char *dfx_classifier_label(const dfx_model *m, int k, char *buf, size_t cap);

/* Time spent per operation type of a network's evaluations. enable = 1
 * starts (and resets) collecting, 0 stops, -1 only reads. Collecting
 * synchronises after every op, so it slows evaluation down. Returns the
 * number of entries (0 for models that are not networks). */
typedef struct dfx_profile_entry {
    const char *name;
    long calls;
    double seconds;
    double flops;
} dfx_profile_entry;
int dfx_model_profile(dfx_model *m, int enable, const dfx_profile_entry **list);

/* Seconds from a monotonic clock. */
double dfx_seconds(void);

/* Analytic models hold for every path; networks were trained for one and
 * refuse another. */
int dfx_model_set_path(dfx_model *m, const dfx_path *p, dfx_error *err);

/* Build an exact Gaussian-mixture model in memory: K components with means
 * [K, C, H, W], standard deviations c_k and weights w_k (normalised here). */
dfx_model *dfx_model_gmm_create(dfx_backend *be, const dfx_path *path, int channels,
                                int height, int width, double range_lo, double range_hi,
                                int K, const float *means, const float *stds,
                                const float *weights, dfx_error *err);
/* Save a Gaussian-mixture model in the model format (models/FORMAT.md). */
int dfx_gmm_save(const char *file, const dfx_path *path, int channels, int height,
                 int width, double range_lo, double range_hi, int K, const float *means,
                 const float *stds, const float *weights, const char *dataset,
                 const char *description, dfx_error *err);

/* Evaluate the model at per-sample times t[rows] and host images x
 * [rows, C, H, W], returning the prediction `want` (host arrays). */
int dfx_model_eval_host(dfx_model *m, const double *t, const float *x, int rows,
                        dfx_pred want, float *out, dfx_error *err);

/* How dfx_model_jvp_host differentiates: forward-mode tangent propagation
 * through every layer (exact up to rounding), or central differences
 * (a cross-check). */
typedef enum { DFX_JVP_EXACT = 0, DFX_JVP_FD = 1 } dfx_jvp_method;

/* The field `want` at (t, x) into f and its Jacobian-vector product
 * J v = d/de f(x + e v) at e = 0 into jv (host arrays [rows, C, H, W]), in
 * the samplers' space (y = log x on the dale path). DFX_JVP_FD uses
 * (f(x + e v) - f(x - e v)) / 2e with e = fd_step ||x|| / ||v|| per row. */
int dfx_model_jvp_host(dfx_model *m, const double *t, const float *x, const float *v, int rows,
                       dfx_pred want, dfx_jvp_method method, double fd_step, float *f,
                       float *jv, dfx_error *err);

/* ------------------------------- conservativeness (MATH.md section 4) */

#define DFX_CONS_MAX_RADII 8

typedef struct dfx_cons_opts {
    dfx_pred field;        /* the field measured; DFX_PRED_COUNT (the default):
                              the model's native prediction (dfx_cons_field) */
    dfx_jvp_method method; /* exact JVPs (default) or finite differences   */
    double fd_step;        /* finite differences: relative step (1e-3)     */
    int probes;            /* probe pairs per point for the asymmetry (16); 0 = skip */
    int patch;             /* side of the centred pixel patch for the exact
                              sub-Jacobian (4); 0 = skip                  */
    int loop_nodes;        /* trapezoid nodes per loop (64; path dependence
                              uses half as many Gauss-Legendre nodes); 0 = skip */
    int nradii;            /* loop radii, relative to |x_t| (0.01 0.1 0.5) */
    double radii[DFX_CONS_MAX_RADII];
    uint64_t seed;         /* points' noise, probes and planes (0)           */
    int batch;             /* rows per network evaluation (64)             */
} dfx_cons_opts;

/* The probe estimates of one field, pooled over points (MATH.md 4.1-4.2);
 * every standard error is clustered by point (4.3), NaN with one point, and
 * every value NaN where the path makes the field's conversion singular. */
typedef struct dfx_field_asym {
    double asym, asym_se; /* ||J - J^T||_F / ||J||_F                      */
    double abs, abs_se;   /* ||J - J^T||_F (root mean square over points)  */
    double jnorm;         /* ||J||_F (root mean square over points)        */
} dfx_field_asym;

typedef struct dfx_cons_result {
    double t;
    dfx_pred field;         /* the field measured (the native one resolved)  */
    double asym, asym_se;   /* ||J - J^T||_F / ||J||_F of that field          */
    double iso, iso_se;     /* ||J - J^T||_F / ||J - (tr J / D) I||_F: the same
                               for every field of one model at one t         */
    double abs, abs_se;     /* ||J - J^T||_F of that field                    */
    double jnorm;           /* ||J||_F (root mean square over points)       */
    double dev;             /* ||J - (tr J / D) I||_F (root mean square)     */
    dfx_field_asym fields[DFX_PRED_COUNT]; /* every field, from the same JVPs */
    double patch, patch_se; /* exact patch ratio, mean over points          */
    int nradii;
    double radii[DFX_CONS_MAX_RADII];
    double circ[DFX_CONS_MAX_RADII], circ_se[DFX_CONS_MAX_RADII];       /* mean |C| */
    double pathdep[DFX_CONS_MAX_RADII], pathdep_se[DFX_CONS_MAX_RADII]; /* mean |P| */
} dfx_cons_result;

void dfx_cons_opts_default(dfx_cons_opts *o);

/* Every metric at time t on the points x0 [npoints, C, H, W] (samplers'
 * space: log x on the dale path) noised to t along the model's path. */
int dfx_conservativity(dfx_model *m, const dfx_cons_opts *o, const float *x0, int npoints,
                       double t, dfx_cons_result *res,
                       void (*progress)(void *ctx, double frac), void *ctx, dfx_error *err);

/* The pieces, for one point c (host arrays of C H W values):
 * the loop integral of f . dx around c + r (cos th u + sin th v) (u, v
 * orthonormal) with M trapezoid nodes, and the integral of |f| |dx|; */
int dfx_loop_circulation(dfx_model *m, dfx_pred field, double t, const float *c, const float *u,
                         const float *v, double r, int M, int batch, double *raw, double *scale,
                         dfx_error *err);
/* the integral from c - r u to c + r u along the segment minus along the
 * half circle through c + r v (G Gauss-Legendre nodes each), and the mean
 * of their integrals of |f| |dx|; */
int dfx_path_dependence(dfx_model *m, dfx_pred field, double t, const float *c, const float *u,
                        const float *v, double r, int G, int batch, double *raw, double *scale,
                        dfx_error *err);
/* ||J_PP - J_PP^T||_F / ||J_PP||_F for the coordinates P (p of them), and
 * ||J_PP||_F; */
int dfx_patch_asymmetry(dfx_model *m, const dfx_cons_opts *o, double t, const float *x,
                        const int *coords, int p, double *ratio, double *jnorm,
                        dfx_error *err);
/* K probe pairs (u_k, v_k) (Philox indices first .. first + 2K - 1) at x,
 * summarised for the field o->field as per-point unbiased estimates
 * (MATH.md 4.1-4.2), each the mean over the K pairs of
 *   num  (u.Jv - v.Ju)^2                         -> ||J - J^T||_F^2
 *   den  ((u.Jv)^2 + (v.Ju)^2) / 2                -> ||J||_F^2
 *   dev  as den with J - c_k I, c_k the Rayleigh quotients' mean of the
 *        other pairs, less the variance that c_k adds -> ||J - (tr J/D) I||_F^2
 *        (NaN when K < 2)
 *   uv2  (u.v)^2,  uvj  u.v (u.Jv + v.Ju)          (to convert to other fields) */
typedef struct dfx_probe_point {
    double num, den, dev, uv2, uvj;
} dfx_probe_point;
int dfx_asymmetry_probes(dfx_model *m, const dfx_cons_opts *o, double t, const float *x,
                         int K, uint64_t first, dfx_probe_point *out, dfx_error *err);
/* The same estimates for the field A x + B f: the probe moments of A I + B J. */
void dfx_probe_point_convert(const dfx_probe_point *p, double A, double B,
                             dfx_probe_point *out);
/* Ratio of means over points, sum num_i / sum den_i, with one (num_i, den_i)
 * per point: its square root and the delta-method standard error with the
 * point as the unit (clustered by point, MATH.md 4.3). */
typedef struct dfx_ratio {
    long n;
    double sn, sd, snn, sdd, snd;
} dfx_ratio;
void dfx_ratio_add(dfx_ratio *q, double num, double den);
void dfx_ratio_sqrt(const dfx_ratio *q, double *est, double *se);
/* The field a dfx_cons_opts measures on m: o->field, or m's native one. */
dfx_pred dfx_cons_field(const dfx_model *m, const dfx_cons_opts *o);
typedef struct dfx_mean {
    long n;
    double s, ss;
} dfx_mean;
void dfx_mean_add(dfx_mean *q, double x);
void dfx_mean_get(const dfx_mean *q, double *mean, double *se);

/* ------------------------------------------------------------------ plots */

typedef struct dfx_plot_series {
    const char *label; /* legend entry (NULL: none)                        */
    int n;
    const double *x, *y;
    const double *err; /* +- error bars (may be NULL)                       */
    int dashed;
    int color;         /* palette index (-1: by position)                   */
} dfx_plot_series;

typedef struct dfx_plot_panel {
    const char *title, *xlabel, *ylabel;
    int logx, logy;    /* non-positive values are left out on log axes     */
    int nseries;
    const dfx_plot_series *series;
} dfx_plot_panel;

/* 1 when this build can draw PNG plots (PLplot). */
int dfx_have_plots(void);
/* Panels in a grid of ncols columns, width x height pixels, written to a
 * temporary name and renamed into place. */
int dfx_plot_png(const char *file, int ncols, int npanels, const dfx_plot_panel *panels,
                 int width, int height, dfx_error *err);

/* -------------------------------------------------------------- samplers */

typedef enum {
    DFX_GRID_AUTO = -1,   /* the path family's default (dfx_default_grid):
                             logsnr on vp, vp_cosine, linear and trig; on
                             ve karras, but logsnr for the x_hat samplers;
                             karras on dale (adls, aums: uniform);
                             diffusers models: schedule for the x_hat
                             samplers, else karras                         */
    DFX_GRID_UNIFORM = 0, /* uniform in t                                  */
    DFX_GRID_KARRAS,      /* Karras et al. sigma^(1/rho) spacing          */
    DFX_GRID_LOGSNR,      /* uniform in log-SNR (karras, logsnr: from sigma =
                             80 after one step where sigma is infinite)    */
    DFX_GRID_SHIFT,       /* shifted uniform: u' = k u / (1 + (k - 1) u)  */
    DFX_GRID_SCHEDULE,    /* discrete path: the scheduler's own timesteps  */
    DFX_GRID_COUNT
} dfx_grid;

typedef enum {
    DFX_NOISE_DIFFUSION = 0, /* eps = g^2/2: the reverse SDE of the path      */
    DFX_NOISE_CONST,         /* eps = eps0                                    */
    DFX_NOISE_S,             /* eps = eps0 * s(t): vanishes at the data end  */
    DFX_NOISE_S2,            /* eps = eps0 * s(t)^2                          */
    DFX_NOISE_COUNT
} dfx_noise;

typedef struct dfx_progress {
    int step, steps;  /* steps done / planned in this batch (adaptive: % of time) */
    double t;         /* current time                                      */
    double frac;      /* fraction of the batch done, in model evaluations,
                         the start's Langevin steps included (adaptive: an
                         estimate from the previous batch)                 */
} dfx_progress;

enum { DFX_RECIPE_PRINCIPLED = 0, DFX_RECIPE_PAPER = 1 };
/* Where sampling starts (dfx_sample_opts.start). AUTO: the Dale paper's
 * start under the paper recipe, else the model's fitted start where it has
 * one, else the path's N(m, s^2). */
enum { DFX_START_AUTO = 0, DFX_START_FITTED, DFX_START_PATH, DFX_START_PAPER };

enum { DFX_RESTART_MAX = 8, DFX_RESTART_STEPS = 1000 };
/* Langevin steps at the start of a dale model's fitted Gaussian
 * (MATH.md, "The start of a dale sampler") */
#define DFX_START_LANGEVIN_DALE 200
enum { DFX_START_LANGEVIN_MAX = 1000 };
/* The Langevin steps' signal-to-noise ratio (pc's corrector and the start's) */
#define DFX_SNR_DEFAULT 0.16
/* A macro's value as a string literal, for help texts */
#define DFX_STR_(x) #x
#define DFX_STR(x) DFX_STR_(x)

typedef struct dfx_sample_opts {
    const char *sampler;   /* a name from dfx_samplers()                    */
    int steps;             /* grid intervals; 0 = the sampler's default      */
    uint64_t seed;
    dfx_grid grid;
    double rho;            /* karras: 7                                      */
    double shift;          /* shift grid: 3                                  */
    double t_noise, t_data;/* interval; NAN = the path's default            */
    double rtol, atol;     /* dopri5: 1e-4, 1e-4                             */
    long max_nfe;          /* dopri5: give up after this many evaluations per sample */
    dfx_noise noise;       /* em: noise schedule                             */
    double eps0;           /* em: scale of the schedule                      */
    int denoise;           /* 1: finish with x <- x_hat(t_data, x); -1: as the
                              model suggests (diffusers models: only where the
                              sampler stops short of abar = 1) */
    double eta;            /* ancestral samplers: noise level, NAN = default */
    double churn;          /* euler/heun/rk4: EDM's S_churn (0: deterministic)  */
    double s_tmin, s_tmax; /* churn only where S_tmin <= sigma = s/a <= S_tmax (0, inf) */
    double s_noise;        /* churn noise scale S_noise (1)                   */
    /* restart: intervals {sigma_min, sigma_max, K restarts, N Heun steps},
     * restart_n of them (0: Xu et al.'s EDM default {0.06, 0.30, 2, 3}) */
    int order;             /* unipc, deis: 1..3 (0: 2)                        */
    const char *variant;   /* unipc: bh2 or bh1, the B(h) of UniPC; deis: tab
                              (polynomial in t) or logrho (in log s/a); NULL:
                              the first                                    */
    int restart_n;
    double restart[DFX_RESTART_MAX][4];
    double snr;            /* pc: corrector target signal-to-noise (DFX_SNR_DEFAULT) */
    int corrector_steps;   /* pc: Langevin steps per time (1)                */
    int recipe;            /* adls/aums: DFX_RECIPE_PRINCIPLED (delta = step of the
                              grid) or DFX_RECIPE_PAPER (the paper's run for
                              the model's data set: constant delta, inner
                              updates, noise annealing, its start, no final
                              denoising, the output clamped to the data range) */
    double delta;          /* paper recipe: step; NAN = the paper's value    */
    int inner;             /* paper recipe: updates per time index; 0 = paper's */
    double anneal;         /* paper recipe: noise factor per index; NAN = paper's */
    int start;             /* DFX_START_*                                    */
    int path_start;        /* 1: as start = DFX_START_PATH                   */
    int start_langevin;    /* Langevin steps at t_noise before the sampler
                              runs (the pc corrector's rule at start_snr);
                              -1: the model's default (dale models with a
                              fitted Gaussian start: DFX_START_LANGEVIN_DALE,
                              else 0) */
    double start_snr;      /* their signal-to-noise ratio (DFX_SNR_DEFAULT) */
    void (*progress)(void *ctx, const dfx_progress *p); /* may be NULL       */
    void *progress_ctx;
    /* The start noise z of samples 0 .. init_rows - 1 (host, [init_rows, dim]),
     * used instead of the Philox draws (for comparing with other frameworks);
     * NULL: the draws. The array must outlive the sampler. */
    const float *init;
    long init_rows;
    /* em, pc: 1 runs a grid whose explicit step the stability bound says
     * will diverge (dfx_sampler_stability's growth over
     * DFX_UNSTABLE_GROWTH), which dfx_sampler_create otherwise refuses */
    int unstable;
} dfx_sample_opts;

/* The worst-case error growth past which em and pc refuse a grid. */
#define DFX_UNSTABLE_GROWTH 10.0

typedef struct dfx_sample_stats {
    long nfe;          /* network evaluations per sample (max over the batch) */
    double nfe_mean;   /* mean over the batch (adaptive samplers differ)   */
    long steps;        /* accepted steps (max over the batch)              */
    long rejected;     /* rejected steps, summed over the batch            */
    long clamped;      /* paper recipe: values the final clamp to the data
                          range moved, summed over the batch              */
    long nonpositive;  /* paper recipe, aums: values an update took to <= 0
                          (set to the range's low end), over all steps    */
    long outside;      /* values far outside the data range: more than its
                          width (range_hi - range_lo) beyond either end    */
    double outside_max;/* the largest |value| of those (Inf/NaN: Inf)     */
} dfx_sample_stats;

/* Fills the defaults that fit the model: heun at its default steps
 * (steps = 0: the sampler's own default, `difflux samplers`), a safe time
 * grid for its path, the path's interval. */
void dfx_sample_opts_default(dfx_sample_opts *o, const dfx_model *m);

typedef struct dfx_sampler dfx_sampler;

/* Validates the options against the model and plans every buffer for
 * batches of up to max_rows samples. */
dfx_sampler *dfx_sampler_create(dfx_model *m, const dfx_sample_opts *o, int max_rows,
                                dfx_error *err);
/* Draws samples first_index .. first_index + rows - 1 into out (host,
 * [rows, C, H, W]). Reports NaN/Inf as an error naming the step. */
int dfx_sampler_run(dfx_sampler *s, uint64_t first_index, int rows, float *out,
                    dfx_sample_stats *stats, dfx_error *err);
void dfx_sampler_free(dfx_sampler *s);
/* Network evaluations per sample that a run of s takes (its steps and the
 * final denoising step, as dfx_sample_stats.nfe counts them), known before
 * it runs; -1 for an adaptive sampler. */
long dfx_sampler_nfe(const dfx_sampler *s);
/* The Langevin steps it takes at the start (resolved --start-langevin,
 * counted in dfx_sampler_nfe). */
int dfx_sampler_start_langevin(const dfx_sampler *s);
/* The time grid the sampler uses (steps + 1 values), or NULL if adaptive. */
const double *dfx_sampler_grid(const dfx_sampler *s, int *n);
/* The explicit em step's stability on the sampler's grid (em and pc;
 * 0 for the others): the largest r = eps(t) |h| / s(t)^2 over the steps
 * (stable below 2), the time t_worst of it, and the worst-case growth
 * prod max(1, |1 - r|) of an error along the data's stiffest direction
 * (MATH.md section 1.2). Either pointer may be NULL. */
double dfx_sampler_stability(const dfx_sampler *s, double *t_worst, double *growth);
/* The kind of that grid (DFX_GRID_AUTO if adaptive). */
dfx_grid dfx_sampler_grid_kind(const dfx_sampler *s);
/* The grid --grid auto gives `sampler` on m's path family (DFX_GRID_AUTO
 * for an unknown sampler). */
dfx_grid dfx_default_grid(const dfx_model *m, const char *sampler);

typedef struct dfx_sampler_desc {
    const char *name;
    const char *summary;
    int order;        /* order of convergence (weak for SDEs); 0 if n/a      */
    int nfe_per_step; /* network evaluations per step; 0 = adaptive          */
    int stochastic;
    const char *families; /* which model families it applies to          */
    int default_steps;    /* steps when none are given (0: adaptive)       */
} dfx_sampler_desc;

/* The registry: returns the number of samplers; *list points at them. */
int dfx_samplers(const dfx_sampler_desc **list);

const char *dfx_grid_name(dfx_grid g);
int dfx_grid_parse(const char *name, dfx_grid *g);
const char *dfx_noise_name(dfx_noise n);
int dfx_noise_parse(const char *name, dfx_noise *n);

/* Time grid from t_noise to t_data with n intervals (n + 1 values). */
int dfx_time_grid(const dfx_path *p, dfx_grid g, double rho, double shift, double t_noise,
                  double t_data, int n, double *out, dfx_error *err);

/* ------------------------------------------- likelihood (MATH.md section 8) */

/* The divergence of the velocity: the trace of its Jacobian from one JVP
 * per basis vector, or Hutchinson's estimate u.Ju averaged over K probes u
 * (Rademacher or Gaussian), the same probes all along a point's trajectory. */
typedef enum { DFX_DIV_EXACT = 0, DFX_DIV_HUTCHINSON = 1 } dfx_div;
typedef enum { DFX_PROBE_RADEMACHER = 0, DFX_PROBE_GAUSSIAN = 1 } dfx_probe;
/* The integrator of the augmented ODE (x, log-density). */
typedef enum { DFX_ODE_DOPRI5 = 0, DFX_ODE_HEUN, DFX_ODE_RK4, DFX_ODE_EULER, DFX_ODE_COUNT } dfx_ode;

typedef struct dfx_lik_opts {
    dfx_div div;           /* hutchinson (default) or exact                 */
    int probes;            /* hutchinson: probes per point (1)              */
    dfx_probe probe;       /* rademacher (default) or gaussian              */
    dfx_ode solver;        /* dopri5 (default), heun, rk4, euler            */
    int steps;             /* fixed-step solvers: intervals (64)            */
    dfx_grid grid;         /* fixed-step solvers: the time grid (AUTO: the
                              sampler of that name's, dfx_default_grid)   */
    double rtol, atol;     /* dopri5: 1e-5, 1e-5                            */
    long max_nfe;          /* dopri5: give up after this many evaluations (100000) */
    double t_noise, t_data;/* interval; NAN = the path's default            */
    int start;             /* DFX_START_AUTO, _FITTED or _PATH: the density at
                              the noise end (AUTO: the model's fitted start, or
                              an analytic model's exact p_t, else the path's
                              N(m, s^2), as the samplers start)             */
    uint64_t seed;         /* probes (0)                                    */
    int batch;             /* rows per network evaluation (64)              */
    void (*progress)(void *ctx, double frac); /* may be NULL                */
    void *progress_ctx;
} dfx_lik_opts;

typedef struct dfx_lik_point {
    double logp;      /* log p(x) in the data space: log_start + div_int + log_jac */
    double log_start; /* log density of the noise end at x(t_noise)          */
    double div_int;   /* integral of div v dt from t_data to t_noise           */
    double log_jac;   /* change of variables to the data space: - sum log x on
                         the dale path (its samplers' space is y = log x), else 0 */
    long nfe;         /* evaluations of the augmented field (each one JVP per
                         probe, or per dimension for the exact divergence)    */
    long rejected;    /* dopri5: rejected steps                              */
} dfx_lik_point;

void dfx_lik_opts_default(dfx_lik_opts *o);
const char *dfx_ode_name(dfx_ode s);
int dfx_ode_parse(const char *name, dfx_ode *s); /* 0 ok, -1 unknown */

/* log p_{t_data}(x) by the probability-flow ODE from t_data to t_noise:
 * log p(x) = log p_start(x(t_noise)) + int_{t_data}^{t_noise} div v(x(t), t) dt,
 * for n points x [n, C, H, W] (host) in the model's data space (ambient
 * values on the dale path), points first .. first + n - 1 of a run (their
 * probes' Philox counters). Each point takes its own steps, so its result
 * does not depend on the batch. */
int dfx_log_likelihood(dfx_model *m, const dfx_lik_opts *o, const float *x, int n,
                       uint64_t first, dfx_lik_point *out, dfx_error *err);
/* The interval dfx_log_likelihood integrates over: the options' t_noise
 * and t_data, or the path's defaults (on a discrete schedule t_data is its
 * timestep 0); -1 with a message when they are not distinct times in [0, 1]. */
int dfx_lik_interval(dfx_model *m, const dfx_lik_opts *o, double *t_noise, double *t_data,
                     dfx_error *err);
/* The divergence of the velocity at one time for n points y (host, the
 * samplers' space) into div [n], with the options' method and probes. */
int dfx_velocity_divergence(dfx_model *m, const dfx_lik_opts *o, double t, const float *y,
                            int n, uint64_t first, double *div, dfx_error *err);
/* Analytic models (the Gaussian mixture): the exact log p_{t_data}(x) of n
 * points x in the data space (with the dale path's Jacobian), the
 * reference for dfx_log_likelihood at the same t_data (NAN: the path's
 * default, as there); -1 with a message for models without a closed form. */
int dfx_model_log_density(dfx_model *m, double t_data, const float *x, int n, double *out,
                          dfx_error *err);
/* Bits per dimension of 8-bit data from log p(x) of values x = lo + (hi -
 * lo) (k + u) / 256 (k the pixel, u uniform dequantisation noise): the
 * discrete model's log-likelihood bound is log p(x) + D log((hi - lo) / 256),
 * bpd = -(log p(x) + D log((hi - lo) / 256)) / (D log 2). */
double dfx_bits_per_dim(double logp, size_t D, double lo, double hi);

/* --------------------------------------------------------------- noise */

/* Philox4x32-10 (Random123): out = philox(counter, key). */
void dfx_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* Standard normals for samples first_index .. first_index + rows - 1,
 * `cols` values each, for one (draw, stream): the same numbers on every
 * backend and for every batch split. */
void dfx_normal_host(uint64_t seed, uint64_t first_index, int rows, size_t cols, uint32_t draw,
                     uint32_t stream, float *out);

/* ---------------------------------------------------------------- output */

typedef struct dfx_grid_layout {
    int cols;          /* 0 = ceil(sqrt(n))                                */
    int pad;           /* pixels between tiles and around the grid        */
    double pad_value;  /* 0 = black, 1 = white                             */
    int scale;         /* nearest-neighbour upscale factor, >= 1          */
} dfx_grid_layout;

/* n images [n, C, H, W] in data space; value v maps to pixel
 * 255 * clamp((v - lo) / (hi - lo), 0, 1). C must be 1, 3 or 4. Written to a
 * temporary name and renamed, so a failure never leaves a partial file. */
int dfx_write_png_grid(const char *file, const float *images, int n, int channels, int height,
                       int width, double lo, double hi, const dfx_grid_layout *layout,
                       dfx_error *err);
/* A text file, written to a temporary name and renamed into place. */
int dfx_write_text(const char *file, const char *text, dfx_error *err);
/* float32 .npy array of the given shape, written atomically. */
int dfx_write_npy(const char *file, const float *data, int ndim, const int64_t *shape,
                  dfx_error *err);
/* A little-endian float32 C-order .npy array [n, ...] whose rows hold `row`
 * values each (as dfx_write_npy writes): the values (malloc'd), n in *n;
 * NULL with a message naming the file for anything else. */
float *dfx_read_npy(const char *file, size_t row, long *n, dfx_error *err);

/* IDX (MNIST) image file, optionally gzip-compressed: n images of h x w
 * uint8 pixels, returned as a malloc'd array the caller frees. */
int dfx_read_idx_images(const char *file, uint8_t **pixels, int *n, int *h, int *w,
                        dfx_error *err);
int dfx_read_idx_labels(const char *file, uint8_t **labels, int *n, dfx_error *err);

#ifdef __cplusplus
}
#endif
#endif
