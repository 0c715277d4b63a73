/* The helpers every test shares: checks that count failures and print where
 * they happened, a seeded random-number generator, the normalised error,
 * and the PyTorch fixtures of tests/fixtures. */
#ifndef DFX_TEST_CHECK_H
#define DFX_TEST_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            check_failures++;                                                              \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

/* |a - b| <= tol */
#define CHECK_NEAR(a, b, tol, what)                                                        \
    CHECK(fabs((double)(a) - (double)(b)) <= (tol), "%s: %.10g vs %.10g (tol %.3g)", what, \
          (double)(a), (double)(b), (double)(tol))

#define CHECK_OK(call, err)                                                                \
    do {                                                                                   \
        if ((call) != 0) {                                                                 \
            check_failures++;                                                              \
            fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, (err).msg); \
        }                                                                                  \
    } while (0)

static inline int check_report(const char *name)
{
    if (check_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

/* ------------------------------------------------------ random numbers */

/* A seeded generator (splitmix64); each test keeps its own, so its inputs
 * are the same however the others draw: `test_rng r = {SEED};`. */
typedef struct test_rng {
    uint64_t state;
} test_rng;

static inline uint64_t rng_u64(test_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* [0, 1), 53 bits */
static inline double rng_uniform(test_rng *r)
{
    return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* A standard normal (Box-Muller, the cosine half). */
static inline float rng_normal(test_rng *r)
{
    double u1 = rng_uniform(r) + 1e-300, u2 = rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static inline void rng_fill_normal(test_rng *r, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(r);
}

/* --------------------------------------------------- normalised error */

/* ||a - b|| / ||b|| (||a - b|| when b = 0), summed in double; NaN anywhere
 * gives NaN. nerr_add one pair at a time, or the whole-array forms. */
typedef struct nerr_sum {
    double num, den;
} nerr_sum;

static inline void nerr_add(nerr_sum *s, double a, double b)
{
    double d = a - b;
    s->num += d * d;
    s->den += b * b;
}

static inline double nerr_value(const nerr_sum *s)
{
    return s->den > 0.0 ? sqrt(s->num / s->den) : sqrt(s->num);
}

static inline double nerr(const float *a, const float *b, size_t n)
{
    nerr_sum s = {0.0, 0.0};
    for (size_t i = 0; i < n; i++) nerr_add(&s, a[i], b[i]);
    return nerr_value(&s);
}

static inline double nerr_d(const double *a, const double *b, size_t n)
{
    nerr_sum s = {0.0, 0.0};
    for (size_t i = 0; i < n; i++) nerr_add(&s, a[i], b[i]);
    return nerr_value(&s);
}

/* a in double against a float b */
static inline double nerr_df(const double *a, const float *b, size_t n)
{
    nerr_sum s = {0.0, 0.0};
    for (size_t i = 0; i < n; i++) nerr_add(&s, a[i], b[i]);
    return nerr_value(&s);
}

/* ------------------------------------------------------------ fixtures */

#ifdef DFX_TEST_DATA
/* The PyTorch fixtures of tests/fixtures (models/difflux_ref/make_fixtures.py):
 * a model file NAME.safetensors and its inputs/outputs NAME.SUFFIX.safetensors. */
#include "model/model.h"
#include "io/safetensors.h"

/* Tensor `name` of f as float32 (malloc'd), its element count in *n. */
static inline float *fixture_tensor(dfx_st_file *f, const char *name, size_t *n)
{
    dfx_error err;
    const dfx_st_tensor *t = dfx_st_get(f, name, -1, NULL, &err);
    if (!t) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    float *v = malloc(t->numel * sizeof *v);
    if (!v) return NULL;
    dfx_st_to_f32(f, t, v);
    *n = t->numel;
    return v;
}

/* Loads fixture `name` on be and opens its NAME.SUFFIX file into *f;
 * NULL (a failed check recorded) when either fails. */
static inline dfx_model *fixture_open(dfx_backend *be, const char *name, const char *suffix,
                                      dfx_st_file *f)
{
    char mpath[512], iopath[512];
    snprintf(mpath, sizeof mpath, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    snprintf(iopath, sizeof iopath, "%s/fixtures/%s.%s.safetensors", DFX_TEST_DATA, name, suffix);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(mpath, be, &err);
    CHECK(m != NULL, "%s: %s", name, err.msg);
    if (!m || dfx_st_open(f, iopath, &err)) {
        CHECK(0, "%s: %s", name, err.msg);
        dfx_model_free(m);
        return NULL;
    }
    return m;
}

/* A sampler for n samples of m: `sampler` with `steps` steps from `seed`,
 * the rest m's defaults; NULL with the message in *err. */
static inline dfx_sampler *test_sampler(dfx_model *m, const char *sampler, int steps,
                                        uint64_t seed, int n, dfx_error *err)
{
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    o.sampler = sampler, o.steps = steps, o.seed = seed;
    return dfx_sampler_create(m, &o, n, err);
}
#endif

#endif
