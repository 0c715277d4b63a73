/*
 * Models: a kind (one row of the table of kinds in model.c) behind one
 * small table of functions, a path and the prediction the model
 * natively makes. dfx_model_eval turns the native prediction into whatever
 * a sampler asks for (path.c does the algebra, the backend's lincomb
 * applies it per row).
 */
#ifndef DFX_MODEL_H
#define DFX_MODEL_H

#include "core/backend.h"
#include "difflux.h"

#include <cjson/cJSON.h>

/* The model's JSON config (models/FORMAT.md), parsed. */
typedef struct dfx_model_config {
    char kind[16];
    dfx_path path;
    dfx_pred prediction;
    int channels, height, width;
    double range_lo, range_hi;
    int has_start;          /* "start": fitted N(mean, std^2) at the noise end, */
    double start_mean, start_std; /* per value, in the samplers' space       */
    int start_full;         /* "start".full: the file holds start.mean [dim] and
                               start.scale [dim, dim], N(mean, scale scale^T) */
    double *log_abar;       /* discrete path: its table [path.n_train] (owned; the
                               path points at it) */
    /* x_hat as the schedulers post-process it (diffusers' clip_sample and
     * thresholding), in ddim, ddpm and the DPM-Solver++ samplers: clip > 0
     * clamps to [-clip, clip]; thr_ratio > 0 clamps each sample to its
     * thr_ratio quantile of |x_hat| (at least 1, at most thr_max) and divides
     * by it */
    double clip, thr_ratio, thr_max;
    char sampler[32];       /* the sampler that matches the model's scheduler ("": none) */
    int sampler_order;      /* and its --order and --variant (0, "": the sampler's own) */
    char sampler_variant[16];
    char guide_file[1024];  /* "guide": the model that guides sampling by default, its
                               file beside this one's ("": none), and its weight */
    double guide_weight;
    char paper_recipe[32];  /* dale models: the data set whose tuning --recipe paper uses
                               ("": mnist) */
    char dataset[128];
    char training[256];     /* provenance.training, in words ("" if absent) */
    char description[512];
    cJSON *root; /* the whole config, for the kind's own section */
} dfx_model_config;

/* Parses and validates; `file` names the source in error messages. */
int dfx_config_parse(dfx_model_config *c, const char *json, const char *file, dfx_error *err);
void dfx_config_free(dfx_model_config *c);
/* The common part of a config as a JSON object (kind adds its section). */
cJSON *dfx_config_to_json(const dfx_model_config *c);
/* Path as its config object ({"family": ..., parameters}). */
cJSON *dfx_path_to_json(const dfx_path *p);
/* The discrete path of c from the N betas of a schedule (c->log_abar
 * allocated, c->path pointed at it; other path fields as they are). */
int dfx_config_discrete(dfx_model_config *c, const double *betas, int N, const char *file,
                        dfx_error *err);
/* The names of DFX_SPACING_*, and parsing one (-1 if unknown). */
const char *dfx_spacing_name(int spacing);
int dfx_spacing_parse(const char *name);

typedef struct dfx_model_vt {
    /* Native prediction at per-row times t[rows] (host) for x (backend) into
     * out (backend). */
    int (*predict)(dfx_model *m, const double *t, const float *x, float *out, int rows,
                   dfx_error *err);
    /* Plans buffers for batches of up to `rows` (may be NULL). */
    int (*reserve)(dfx_model *m, int rows, dfx_error *err);
    /* Analytic models: exact samples of p_t for samples first .. first +
     * rows - 1 into x (backend), from Philox stream `stream` (may be NULL). */
    int (*sample_marginal)(dfx_model *m, double t, uint64_t seed, uint64_t first, int rows,
                           uint32_t stream, float *x, dfx_error *err);
    /* Kind-specific lines for `difflux info`. */
    int (*describe)(const dfx_model *m, char *buf, size_t cap);
    /* Per-op-kind timing (may be NULL): see dfx_model_profile. */
    int (*profile)(dfx_model *m, int enable, const dfx_profile_entry **list);
    void (*destroy)(dfx_model *m);
    /* (last, so positional initialisers may leave it out)
     * Forward-mode derivative (may be NULL: dfx_model_jvp then refuses the
     * exact method): out = the native prediction at (t, x), exactly as
     * predict gives it, and dout = its derivative along v, d/de P(x + e v)
     * at e = 0, by tangent propagation through every layer (no finite
     * differences). x, v, out, dout are backend arrays [rows, dim]; for a
     * network on the dale path x is ambient (predict's input), as for
     * predict. */
    int (*jvp)(dfx_model *m, const double *t, const float *x, const float *v, float *out,
               float *dout, int rows, dfx_error *err);
    /* Backend memory (bytes) that reserve allocates for batches of up to
     * rows >= 1, for dfx_model_scratch_bytes (may be NULL: none). */
    size_t (*scratch_bytes)(const dfx_model *m, int rows);
    /* Class-conditional models: the class (or DFX_CLASS_NONE,
     * DFX_CLASS_CYCLE) and guidance weight of the next evaluations (may be
     * NULL: the kind takes no class). */
    int (*set_class)(dfx_model *m, int cls, double guidance, dfx_error *err);
    /* Analytic models: the exact log density log p_t of host points x
     * [rows, dim] in the samplers' space, into out [rows] (host; may be
     * NULL: the kind knows no density). */
    int (*log_marginal)(dfx_model *m, double t, const float *x, int rows, double *out,
                        dfx_error *err);
} dfx_model_vt;

struct dfx_model {
    const dfx_model_vt *vt;
    dfx_backend *be;
    dfx_model_config cfg;
    dfx_model_info info;
    int analytic;  /* exact for any path: dfx_model_set_path allowed */
    /* Multiplicative (dale path): the path acts on y = log x and samplers
     * work in y; networks take x = exp(y) and predict the ambient score
     * grad_x log p, which the model layer turns into the score in y,
     * x * grad_x log p + 1. Mixtures are defined in y directly. */
    int logspace;
    dfx_pred native; /* the native prediction in the samplers' space */
    uint64_t first_index; /* global index of row 0 of the batch being evaluated */
    size_t dim;    /* C * H * W */
    char file[1024];
    void *impl;
    /* scratch for conversions, sized by dfx_model_reserve */
    int cap_rows;
    float *pred;     /* backend [cap_rows, dim] */
    double *coef;    /* host [3 * cap_rows] */
    float *xbuf;     /* backend [cap_rows, dim]: exp(y) for log-space models */
    float *start_mean, *start_scale; /* backend: the full fitted start, or NULL */
    int jcap_rows;   /* tangents for dfx_model_jvp, sized on first use */
    float *jbuf;     /* backend [3, jcap_rows, dim] */
    dfx_perturb perturb; /* dfx_model_set_perturb, and its lambda */
    double perturb_lambda;
    float *perturb_host; /* host scratch [4, perturb_rows, dim] + [2, dim] (perturb.c) */
    int perturb_rows;
    dfx_model *guide; /* dfx_model_set_guide (owned), its weight w (guide.c) */
    double guide_w;
    float *gbuf;      /* backend [2, gcap_rows, dim]: the guide's prediction, tangent */
    double *gcoef;    /* host [2 gcap_rows]: the mixing weights */
    int gcap_rows;
};

/* 0 for a model that samplers can run; -1 with a message for a classifier. */
int dfx_model_generative(const dfx_model *m, dfx_error *err);
/* Applies the score perturbation (perturb.c) to a native prediction P in
 * the samplers' space at (t, x), and, when v and dP are not NULL, to its
 * tangent dP along v. A no-op without one. */
int dfx_perturb_apply(dfx_model *m, const double *t, const float *x, float *P, const float *v,
                      float *dP, int rows, dfx_error *err);
void dfx_perturb_free(dfx_model *m);
/* Guidance by a weaker model (guide.c): P = P_g + w (P - P_g) for a native
 * prediction P in the samplers' space at (t, x), and the same for its
 * tangent dP along v when v is not NULL; for the dale samplers' field h
 * (dfx_model_hyvarinen) likewise. No-ops without a guide. */
int dfx_guide_apply(dfx_model *m, const double *t, const float *x, float *P, const float *v,
                    float *dP, int rows, dfx_error *err);
int dfx_guide_hyvarinen(dfx_model *m, const double *t, const float *x, float *h, int rows,
                        dfx_error *err);
size_t dfx_guide_scratch_bytes(const dfx_model *m, int rows);
void dfx_guide_free(dfx_model *m);
/* Allocates what evaluation needs for batches of up to `rows`. */
int dfx_model_reserve(dfx_model *m, int rows, dfx_error *err);
/* h = x * grad_x log p(x) at ambient x (the multiplicative samplers'
 * "Hyvarinen" score), for log-space models. */
int dfx_model_hyvarinen(dfx_model *m, const double *t, const float *x, float *h, int rows,
                        dfx_error *err);
/* Native prediction in the samplers' space (y for log-space models). */
int dfx_model_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                      dfx_error *err);
/* out = conversion of prediction P (of type `from`) at (t, x) into `to`. */
int dfx_model_convert(dfx_model *m, const double *t, const float *x, const float *P,
                      dfx_pred from, dfx_pred to, float *out, int rows, dfx_error *err);
/* The prediction `want` at (t, x): one network evaluation plus a conversion. */
int dfx_model_eval(dfx_model *m, const double *t, const float *x, dfx_pred want, float *out,
                   int rows, dfx_error *err);
/* f = the prediction `want` at (t, x) and jv = its derivative along v
 * (backend arrays), exact: the kind's jvp plus the (linear) conversion. */
int dfx_model_jvp(dfx_model *m, const double *t, const float *x, const float *v, dfx_pred want,
                  float *f, float *jv, int rows, dfx_error *err);
/* Per-row conversion coefficients (to = A x + B P + C) into A, B, C [rows]. */
int dfx_model_convert_coefs(const dfx_model *m, const double *t, int rows, dfx_pred from,
                            dfx_pred to, double *A, double *B, double *C, dfx_error *err);

/* Euclidean norm of n floats, accumulated in double. */
double dfx_vec_norm(const float *x, size_t n);

/* Tensor `name` of f, of the given shape, as float32 on the model's backend
 * (*dev, freed by the caller with be->ops->free); refuses NaN and Inf. */
struct dfx_st_file;
int dfx_model_tensor(dfx_model *m, struct dfx_st_file *f, const char *name, int ndim,
                     const int64_t *shape, float **dev, dfx_error *err);

/* A model from the tensors of `weights` with the given config (JSON text)
 * instead of the file's own; `name` stands for the model in messages. */
dfx_model *dfx_model_load_as(const char *weights, const char *config, const char *name,
                             dfx_backend *be, dfx_error *err);
/* diffusers models (diffusers_load.c): 1 if path is a folder holding one,
 * or (foreign: a safetensors file without difflux metadata) has its
 * config.json beside it; the native config of one as JSON text (malloc'd)
 * and the file with its weights (scheduler: a scheduler_config.json to use
 * instead of the model's own, or NULL). */
int dfx_diffusers_looks(const char *path, int foreign);
int dfx_diffusers_config(const char *path, const char *scheduler, char **config, char *weights,
                         size_t cap, dfx_error *err);

/* Common construction: fills cfg-derived info, dim. */
dfx_model *dfx_model_new(dfx_backend *be, const dfx_model_config *cfg, dfx_error *err);

/* Kinds: each file's load reads the kind's tensors into m (its vt and
 * impl set), for the kind table in model.c. */
int dfx_gmm_load(dfx_model *m, struct dfx_st_file *f, dfx_error *err);
int dfx_unet_load(dfx_model *m, struct dfx_st_file *f, dfx_error *err);
int dfx_classifier_load(dfx_model *m, struct dfx_st_file *f, dfx_error *err);
int dfx_affine_load(dfx_model *m, struct dfx_st_file *f, dfx_error *err);
int dfx_diffusers_unet_load(dfx_model *m, struct dfx_st_file *f, dfx_error *err);
/* Tests: per-row labels (0..K, K = no class) for the next evaluations, NULL
 * to go back to dfx_model_set_class. The array must outlive them. */
int dfx_unet_force_labels(dfx_model *m, const int *labels);
/* Tests: a U-Net's use of backend graphs since it was loaded: graphs
 * captured, graph launches (the first after each capture included), failed
 * captures (each turns graphs off for the model: eager from then) and why
 * the last one failed ("" if none). Any pointer may be NULL. */
void dfx_unet_graph_stats(const dfx_model *m, long *captures, long *launches, long *failed,
                          const char **why);

#endif
