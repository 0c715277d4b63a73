/*
 * The parts of test_backend_ops (tests/test_backend_ops.c, the runner):
 * a case is one row of the table in cases.c, an op family (cases_*.c)
 * with its shape and tolerances; the family builds the case's inputs,
 * runs it on one backend into a host array, and names the rows that
 * compare the backend under test with the reference. The runner does the
 * rest for every case alike: both runs, the comparison, the batch check
 * (a sample alone against the same sample in the batch, on the backend
 * under test), the timing of perf mode.
 */
#ifndef DFX_TEST_BACKEND_OPS_H
#define DFX_TEST_BACKEND_OPS_H

#include "core/backend.h"
#include "model/model.h"
#include "check.h"

#include <stddef.h>
#include <stdint.h>

#ifndef DFX_TEST_DATA
#error "test_backend_ops needs DFX_TEST_DATA, the tests folder (tests/cuda.cmake sets it)"
#endif

/* Network ops: the CPU reference computes in FP32 with OpenBLAS, the GPU
 * with cuBLAS in strict FP32, so they agree to float rounding. */
#define NN_TOL 1e-5
/* A sample alone and the same sample in a batch, on the backend under test. */
#define BATCH_TOL 1e-6
/* Tangents (group_norm_jvp, attention_jvp, silu_jvp): group_norm_jvp and
 * silu_jvp work in double / elementwise, so they agree to float rounding
 * like the forward ops. attention_jvp goes through the forward's products
 * (P) and then its own, with the difference dS - rowsum(P dS) cancelling
 * in between: allow ten times the forward's tolerance. A sample alone on
 * the GPU may take other cuBLAS kernels, likewise. */
#define JVP_TOL (10 * NN_TOL)
#define JVP_BATCH_TOL (10 * BATCH_TOL)
/* Documented tolerances of the reduced precisions (normalised error against
 * the FP32 CPU reference): TF32 keeps 10 mantissa bits (unit roundoff
 * 2^-11 = 4.9e-4), BF16 7 (2^-8 = 3.9e-3); a product of length K
 * accumulates in FP32, so its normalised error stays near the unit
 * roundoff, and a whole network compounds a few dozen of them. */
#define TF32_OP_TOL 5e-3
#define BF16_OP_TOL 3e-2
#define TF32_NET_TOL 2e-2
#define BF16_NET_TOL 1e-1

/* tol: the outputs must be equal bit for bit */
#define BO_BITS (-1.0)
/* batch_tol: no batch check */
#define BO_NO_BATCH (-2.0)

/* The two sides of a comparison. */
typedef struct bo_pair {
    dfx_backend *cpu;  /* the CPU backend of this process */
    dfx_backend *ref;  /* the reference; NULL where its outputs come from a child */
    dfx_backend *test; /* the backend under test */
    const char *ref_name, *test_name; /* as the rows name them */
    int device;        /* test is a device backend (not the CPU) */
    /* another backend of test's kind (the error paths' own) */
    dfx_backend *(*create)(dfx_error *err);
} bo_pair;

/* One run of a case on one backend. In perf mode the op calls inside
 * BO_TIMED repeat: one warm-up call, then `reps` timed ones; a run may
 * have several BO_TIMED blocks (uploads and downloads between them are
 * not timed), whose times add up. */
typedef struct bo_run {
    dfx_backend *be;
    int reps, iter; /* reps 0: once, untimed */
    double t0, ms;  /* ms: per timed call of all blocks */
} bo_run;

int bo_time_next(bo_run *r);
#define BO_TIMED(r) for ((r)->iter = 0; bo_time_next(r);)

/* What a family's build makes of a case. */
typedef struct bo_data {
    char name[160], note[64]; /* the row; note: after it (scratch sizes) */
    size_t n;                 /* floats a run of all B samples writes */
    int B;                    /* samples; the batch check wants B > 1 */
    size_t per, batch_off;    /* floats per sample, from batch_off of the output on */
    int alone;                /* the batch check runs samples alone.. on their own
                                 (default B - 1: the last alone) */
    int each;                 /* or every sample alone, one at a time */
    double flops;             /* per timed call (perf); 0: not meaningful */
    void *in;                 /* the family's inputs */
    void *mem;                /* host memory of the case (bo_host) */
} bo_data;

typedef struct bo_case bo_case;

typedef struct bo_family {
    const char *name; /* the op, as -o names it */
    /* Draws the inputs (from bo_rng, in a fixed order) and fills d. */
    void (*build)(const bo_pair *p, const bo_case *c, bo_data *d);
    /* Runs samples [b0, b0 + B) on r->be into out (d->n floats when B is
     * all of them, else B d->per). */
    void (*run)(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out);
    /* The rows comparing got (under test) with ref; NULL: one row over
     * all of the output with c->tol and d->note. */
    void (*check)(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got,
                  const float *ref);
    /* Instead of all the above: checks of a device backend on its own. */
    void (*solo)(const bo_pair *p, const bo_case *c);
} bo_family;

struct bo_case {
    const bo_family *f;
    const char *op;   /* what -o matches; NULL: the family's name */
    double tol;       /* against the reference (BO_BITS: bit for bit) */
    double batch_tol; /* a sample alone vs in the batch (BO_NO_BATCH: none) */
    int device;       /* on a device backend only (its reduced precisions) */
    union {
        struct { int k, rows; size_t cols; int c0, alias; double p_zero; } lincomb;
        struct { int rows; size_t cols; int steps; } chain;
        struct { uint64_t seed, first; int rows; size_t cols; uint32_t draw, stream; } normal;
        struct { int rows; size_t cols; double rtol, atol; } err_norm;
        struct { size_t n; int bad; } count;
        struct { int K; size_t dim; int rows, alias; } gmm;
        struct { size_t n; double c; } unary; /* unary, silu_jvp */
        struct { int B, Cin, H, W, Cout, k, stride, pad, bias; const char *tag; } conv;
        struct { int B, C, HW, groups, silu; float offset; } gn; /* and group_norm_jvp */
        struct { int B, in, out, silu, bias; } linear;
        struct { int B, C, Cb, H, W; } ew;
        struct { int B, C, HW, heads; float scale; } attn; /* and attention_jvp */
        struct { int B, dim; double scale, offset; int shift, flip; } embed;
        /* unet, unet_jvp, unet_precision (mode), unet_graphs */
        struct { const char *name; int B2; const char *mode; } unet;
        /* sample parity, sample_graphs (cls, w), classifier (n images) */
        struct { const char *file, *sampler; int steps, n, cls; double w; } sample;
        struct { const char *mode; } precision;
    } p;
};

extern const bo_case bo_cases[];
extern const size_t bo_ncases;

/* The families (cases_core.c, cases_nn.c, cases_net.c, cases_device.c). */
extern const bo_family bo_lincomb, bo_lincomb_chain, bo_normal, bo_err_norm, bo_count,
    bo_gmm, bo_unary, bo_elementwise, bo_embed;
extern const bo_family bo_conv, bo_group_norm, bo_group_norm_jvp, bo_linear, bo_attention,
    bo_attention_jvp, bo_silu_jvp;
extern const bo_family bo_unet, bo_unet_jvp, bo_unet_precision, bo_sample, bo_classifier;
extern const bo_family bo_error_path, bo_nn_error_path, bo_set_precision, bo_graphs,
    bo_unet_graphs, bo_sample_graphs;

/* ------------------------------------------- the runner's helpers */

/* The inputs' generator: every pass starts it from the same seed and the
 * cases draw from it in table order (so under -o a case's inputs may
 * differ from a full run's, never between the two sides). */
extern test_rng bo_rng;
/* The last backend error (bo_die prints it). */
extern dfx_error bo_err;

/* Infrastructure failures (allocation, copies) end the test. */
void bo_die(const char *what, const dfx_backend *be);
void *bo_xmalloc(size_t bytes);
/* Host memory that lives as long as the case (freed by the runner). */
void *bo_host(bo_data *d, size_t bytes);
void *bo_dev_alloc(dfx_backend *be, size_t bytes);
float *bo_up(dfx_backend *be, const float *h, size_t n);
/* A device buffer of n floats filled with a marker value (so values an op
 * forgets to write show up). */
float *bo_junk(dfx_backend *be, size_t n);
/* Waits for the backend, then copies n floats back. */
void bo_down(dfx_backend *be, float *h, const float *d, size_t n);
void bo_free(dfx_backend *be, const void *p);
/* bo_free of each (NULLs skipped) */
void bo_free_list(dfx_backend *be, const void *const *p, size_t n);
#define BO_FREE(be, ...)                                                                   \
    bo_free_list(be, (const void *const[]){__VA_ARGS__},                                   \
                 sizeof((const void *const[]){__VA_ARGS__}) / sizeof(const void *))
size_t bo_bits_differ(const float *a, const float *b, size_t n);

/* One line of the table; a NaN error fails. */
void bo_row(const char *name, double nerr, double tol, const char *note);
/* got against ref with the count of values that differ in bits as the note
 * (after extra); tol BO_BITS: bo_compare_bits. */
void bo_compare(const char *name, const float *got, const float *ref, size_t n, double tol,
                const char *extra);
/* Bit for bit: fails when any value differs in bits (the column shows the
 * normalised error, or 1e-300 when only the sign of a zero differs). */
void bo_compare_bits(const char *name, const float *got, const float *ref, size_t n);

/* A model file of DFX_TEST_DATA (a path relative to tests/) on be. */
dfx_model *bo_load(const char *file, dfx_backend *be);

#endif
