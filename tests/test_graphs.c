/* Backend graphs, checked on the CPU. A record-and-replay backend — the
 * CPU backend with the graph ops of backend.h: the capture pass records
 * each op's arguments, a launch calls the CPU ops again with them, the
 * host arrays (times, labels, coefficients) read from the graph's staging
 * block that the capture and refill passes write — runs the U-Net's graph
 * path (host/model/net.c, dfx_net_predict_graph), which must give what the
 * same model gives op by op (DIFFLUX_CUDA_GRAPHS=0), bit for bit: with new
 * times, inputs and labels every evaluation (refilled), batch sizes that
 * change (and replan), guidance, another precision, profiling, a sampler
 * run, the tangents (unet_jvp stays op by op) and a capture that fails
 * (eager from then on). It also checks the protocol: no pass left open,
 * nothing that waits, allocates or draws noise inside a pass, the staging
 * of every refill the same as the capture's. The CUDA graphs themselves
 * are checked against CUDA op-by-op execution by test_backend_ops, on a
 * GPU. */
#include "check.h"
#include "core/error.h"
#include "model/model.h"
#include "model/net_ops.h"

#include <stdint.h>
#include <stdlib.h>

enum { M_NONE, M_MEASURE, M_CAPTURE, M_REFILL };

/* The backend calls recorded: one per op kind of a network's list
 * (model/net_ops.h), and those of an evaluation around the list. */
typedef enum {
#define R_KIND(id, name, slot) R_##id,
    DFX_NET_OPS(R_KIND)
#undef R_KIND
    R_LINCOMB, R_COPY
} rkind;

/* One recorded op: its arguments, host arrays as staging regions. */
typedef struct rec {
    rkind k;
    void *y;
    const void *a, *b;
    const float *w, *bias;
    float *scratch;
    const float *xs[DFX_LINCOMB_MAX];
    int i[10];
    size_t n;
    double d, d2;
    float f;
    int s0, s1; /* regions, -1: none */
} rec;

#define MAX_REGIONS 64

struct dfx_graph {
    rec *ops;
    int nops, capops;
    size_t off[MAX_REGIONS], bytes[MAX_REGIONS];
    int nreg, next;
    size_t total;
    unsigned char *host;
    int ready, failed;
};

static struct {
    const dfx_backend_ops *cpu; /* the CPU backend's own table */
    dfx_backend_ops ops;        /* the mock's */
    int mode;
    dfx_graph *g;
    int fail_capture; /* graph_capture fails (the fallback) */
    long begins, launches, misuse;
} mk;

static int dry(void)
{
    return mk.mode == M_MEASURE || mk.mode == M_REFILL;
}

/* Something not allowed inside a pass (or out of protocol). */
static void misuse(const char *what)
{
    mk.misuse++;
    if (mk.g) mk.g->failed = 1;
    fprintf(stderr, "graph mock: %s (pass %d)\n", what, mk.mode);
}

/* The next staging region of `bytes`: noted (measure), or the noted one of
 * the same size, filled with src (capture, refill). */
static int take(const void *src, size_t bytes)
{
    dfx_graph *g = mk.g;
    if (mk.mode == M_MEASURE) {
        if (g->nreg == MAX_REGIONS) {
            g->failed = 1;
            return -1;
        }
        size_t off = (g->total + 15) & ~(size_t)15;
        g->off[g->nreg] = off;
        g->bytes[g->nreg] = bytes;
        g->total = off + bytes;
        return g->nreg++;
    }
    if (g->next >= g->nreg || g->bytes[g->next] != bytes) {
        misuse("staging differs from the measure pass");
        return -1;
    }
    memcpy(g->host + g->off[g->next], src, bytes);
    return g->next++;
}

static void record(rec r)
{
    dfx_graph *g = mk.g;
    if (g->nops == g->capops) {
        g->capops = g->capops ? 2 * g->capops : 64;
        g->ops = realloc(g->ops, (size_t)g->capops * sizeof *g->ops);
        if (!g->ops) abort();
    }
    g->ops[g->nops++] = r;
}

static const void *staged(const dfx_graph *g, int s)
{
    return s >= 0 ? (const void *)(g->host + g->off[s]) : NULL;
}

/* ---------------------------------------------------------- wrapped ops */

static void w_conv2d(dfx_backend *be, float *y, const float *x, const float *w, const float *bias,
                     int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                     float *scratch)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_CONV, .y = y, .a = x, .w = w, .bias = bias, .scratch = scratch,
                     .i = {B, Cin, H, W, Cout, k, stride, pad}, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->conv2d(be, y, x, w, bias, B, Cin, H, W, Cout, k, stride, pad, scratch);
}

static void w_group_norm(dfx_backend *be, float *y, const float *x, const float *gamma,
                         const float *beta, int B, int C, int HW, int groups, float eps, int silu)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_GN, .y = y, .a = x, .w = gamma, .bias = beta,
                     .i = {B, C, HW, groups, silu}, .f = eps, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->group_norm(be, y, x, gamma, beta, B, C, HW, groups, eps, silu);
}

static void w_linear(dfx_backend *be, float *y, const float *x, const float *w, const float *b,
                     int B, int in, int out, int silu_in)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_LINEAR, .y = y, .a = x, .w = w, .bias = b,
                     .i = {B, in, out, silu_in}, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->linear(be, y, x, w, b, B, in, out, silu_in);
}

static void w_add_channel(dfx_backend *be, float *y, const float *e, int B, int C, int HW)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_ADDCH, .y = y, .a = e, .i = {B, C, HW}, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->add_channel(be, y, e, B, C, HW);
}

static void w_add(dfx_backend *be, float *y, const float *a, const float *b, size_t n)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_ADD, .y = y, .a = a, .b = b, .n = n, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->add(be, y, a, b, n);
}

static void w_concat(dfx_backend *be, float *y, const float *a, int Ca, const float *b, int Cb,
                     int B, int HW)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_CONCAT, .y = y, .a = a, .b = b, .i = {Ca, Cb, B, HW}, .s0 = -1,
                     .s1 = -1});
        return;
    }
    mk.cpu->concat(be, y, a, Ca, b, Cb, B, HW);
}

static void w_upsample2x(dfx_backend *be, float *y, const float *x, int B, int C, int H, int W)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_UP, .y = y, .a = x, .i = {B, C, H, W}, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->upsample2x(be, y, x, B, C, H, W);
}

static void w_attention(dfx_backend *be, float *o, const float *qkv, int B, int C, int HW,
                        int heads, float *scratch)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_ATTN, .y = o, .a = qkv, .scratch = scratch, .i = {B, C, HW, heads},
                     .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->attention(be, o, qkv, B, C, HW, heads, scratch);
}

static void w_time_embed(dfx_backend *be, float *y, const double *t, int B, int dim,
                         double scale, double offset, int shift, int flip)
{
    if (mk.mode != M_NONE) {
        int s = take(t, (size_t)B * sizeof *t);
        if (mk.mode == M_CAPTURE)
            record((rec){.k = R_TEMB, .y = y, .i = {B, dim, shift, flip}, .d = scale,
                         .d2 = offset, .s0 = s, .s1 = -1});
        return;
    }
    mk.cpu->time_embed(be, y, t, B, dim, scale, offset, shift, flip);
}

static void w_embed_add(dfx_backend *be, float *y, const float *table, const int *idx, int B,
                        int dim)
{
    if (mk.mode != M_NONE) {
        int s = take(idx, (size_t)B * sizeof *idx);
        if (mk.mode == M_CAPTURE)
            record((rec){.k = R_CLASS, .y = y, .w = table, .i = {B, dim}, .s0 = s, .s1 = -1});
        return;
    }
    mk.cpu->embed_add(be, y, table, idx, B, dim);
}

static void w_lincomb(dfx_backend *be, float *out, int k, const float *const *x,
                      const double *coef, const double *c0, int rows, size_t cols)
{
    if (mk.mode != M_NONE) {
        int s0 = k > 0 ? take(coef, (size_t)k * rows * sizeof *coef) : -1;
        int s1 = c0 ? take(c0, (size_t)rows * sizeof *c0) : -1;
        if (mk.mode == M_CAPTURE) {
            rec r = {.k = R_LINCOMB, .y = out, .i = {k, rows}, .n = cols, .s0 = s0, .s1 = s1};
            for (int i = 0; i < k; i++) r.xs[i] = x[i];
            record(r);
        }
        return;
    }
    mk.cpu->lincomb(be, out, k, x, coef, c0, rows, cols);
}

static void w_copy(dfx_backend *be, void *dst, const void *src, size_t bytes)
{
    if (dry()) return;
    if (mk.mode == M_CAPTURE) {
        record((rec){.k = R_COPY, .y = dst, .a = src, .n = bytes, .s0 = -1, .s1 = -1});
        return;
    }
    mk.cpu->copy(be, dst, src, bytes);
}

/* Not allowed inside a pass: flagged, then done as on the CPU. */
static void *w_alloc(dfx_backend *be, size_t bytes)
{
    if (mk.mode != M_NONE) misuse("alloc in a pass");
    return mk.cpu->alloc(be, bytes);
}

static void w_free(dfx_backend *be, void *p)
{
    if (mk.mode != M_NONE) misuse("free in a pass");
    mk.cpu->free(be, p);
}

static int w_sync(dfx_backend *be, dfx_error *err)
{
    if (mk.mode != M_NONE) misuse("sync in a pass");
    return mk.cpu->sync(be, err);
}

static int w_upload(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err)
{
    if (mk.mode != M_NONE) misuse("upload in a pass");
    return mk.cpu->upload(be, dst, src, bytes, err);
}

static int w_download(dfx_backend *be, void *dst, const void *src, size_t bytes, dfx_error *err)
{
    if (mk.mode != M_NONE) misuse("download in a pass");
    return mk.cpu->download(be, dst, src, bytes, err);
}

static void w_normal(dfx_backend *be, float *out, uint64_t seed, uint64_t first, int rows,
                     size_t cols, uint32_t draw, uint32_t stream)
{
    if (mk.mode != M_NONE) misuse("normal in a pass");
    mk.cpu->normal(be, out, seed, first, rows, cols, draw, stream);
}

static void w_unary(dfx_backend *be, float *y, const float *x, size_t n, int fn)
{
    if (mk.mode != M_NONE) misuse("unary in a pass");
    mk.cpu->unary(be, y, x, n, fn);
}

static int w_err_norm(dfx_backend *be, const float *e, const float *x0, const float *x1,
                      double rtol, double atol, int rows, size_t cols, double *out, dfx_error *err)
{
    if (mk.mode != M_NONE) misuse("err_norm in a pass");
    return mk.cpu->err_norm(be, e, x0, x1, rtol, atol, rows, cols, out, err);
}

static int w_count_nonfinite(dfx_backend *be, const float *x, size_t n, size_t *count,
                             dfx_error *err)
{
    if (mk.mode != M_NONE) misuse("count_nonfinite in a pass");
    return mk.cpu->count_nonfinite(be, x, n, count, err);
}

static void w_silu_jvp(dfx_backend *be, float *dy, const float *x, const float *dx, size_t n)
{
    if (mk.mode != M_NONE) misuse("silu_jvp in a pass");
    mk.cpu->silu_jvp(be, dy, x, dx, n);
}

static int w_set_precision(dfx_backend *be, int mode, dfx_error *err)
{
    (void)be;
    (void)mode;
    (void)err;
    if (mk.mode != M_NONE) misuse("set_precision in a pass");
    return 0; /* the CPU computes in FP32 anyway: only the key changes */
}

/* --------------------------------------------------------- graph ops */

static dfx_graph *m_graph_begin(dfx_backend *be, dfx_error *err)
{
    (void)be;
    mk.begins++;
    if (mk.mode != M_NONE) {
        misuse("graph_begin inside a pass");
        dfx_fail(err, "pass in progress");
        return NULL;
    }
    dfx_graph *g = calloc(1, sizeof *g);
    if (!g) abort();
    mk.g = g;
    mk.mode = M_MEASURE;
    return g;
}

static int m_graph_capture(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    (void)be;
    if (mk.mode != M_MEASURE || mk.g != g) {
        misuse("graph_capture out of order");
        return dfx_fail(err, "graph_capture out of order");
    }
    if (g->failed) return dfx_fail(err, "measure pass failed");
    if (mk.fail_capture) return dfx_fail(err, "mock: capture refused");
    g->host = calloc(1, g->total ? g->total : 16);
    if (!g->host) abort();
    g->next = 0;
    mk.mode = M_CAPTURE;
    return 0;
}

static int m_graph_end(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    (void)be;
    if (mk.mode != M_CAPTURE || mk.g != g) {
        misuse("graph_end out of order");
        return dfx_fail(err, "graph_end out of order");
    }
    mk.mode = M_NONE;
    mk.g = NULL;
    if (g->failed || g->next != g->nreg) return dfx_fail(err, "capture failed");
    g->ready = 1;
    return 0;
}

static int m_graph_refill(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    (void)be;
    if (mk.mode != M_NONE || !g->ready) {
        misuse("graph_refill out of order");
        return dfx_fail(err, "graph_refill out of order");
    }
    g->next = 0;
    g->failed = 0;
    mk.g = g;
    mk.mode = M_REFILL;
    return 0;
}

static void replay(dfx_backend *be, const dfx_graph *g)
{
    const dfx_backend_ops *o = mk.cpu;
    for (int j = 0; j < g->nops; j++) {
        const rec *r = &g->ops[j];
        const int *i = r->i;
        switch (r->k) {
        case R_CONV:
            o->conv2d(be, r->y, r->a, r->w, r->bias, i[0], i[1], i[2], i[3], i[4], i[5], i[6],
                      i[7], r->scratch);
            break;
        case R_GN:
            o->group_norm(be, r->y, r->a, r->w, r->bias, i[0], i[1], i[2], i[3], r->f, i[4]);
            break;
        case R_LINEAR: o->linear(be, r->y, r->a, r->w, r->bias, i[0], i[1], i[2], i[3]); break;
        case R_ADDCH: o->add_channel(be, r->y, r->a, i[0], i[1], i[2]); break;
        case R_ADD: o->add(be, r->y, r->a, r->b, r->n); break;
        case R_CONCAT: o->concat(be, r->y, r->a, i[0], r->b, i[1], i[2], i[3]); break;
        case R_UP: o->upsample2x(be, r->y, r->a, i[0], i[1], i[2], i[3]); break;
        case R_ATTN: o->attention(be, r->y, r->a, i[0], i[1], i[2], i[3], r->scratch); break;
        case R_TEMB:
            o->time_embed(be, r->y, staged(g, r->s0), i[0], i[1], r->d, r->d2, i[2], i[3]);
            break;
        case R_CLASS: o->embed_add(be, r->y, r->w, staged(g, r->s0), i[0], i[1]); break;
        case R_LINCOMB:
            o->lincomb(be, r->y, i[0], r->xs, staged(g, r->s0), staged(g, r->s1), i[1], r->n);
            break;
        case R_COPY: o->copy(be, r->y, r->a, r->n); break;
        case R_AFFINE: break; /* its calls are recorded as R_LINCOMB (its slot) */
        }
    }
}

static int m_graph_launch(dfx_backend *be, dfx_graph *g, dfx_error *err)
{
    if (mk.mode == M_REFILL && mk.g == g) {
        mk.mode = M_NONE;
        mk.g = NULL;
        if (g->failed || g->next != g->nreg) return dfx_fail(err, "refill failed");
    } else if (mk.mode != M_NONE) {
        misuse("graph_launch inside another pass");
        return dfx_fail(err, "graph_launch inside another pass");
    }
    if (!g->ready) {
        misuse("graph_launch of a graph not ready");
        return dfx_fail(err, "not ready");
    }
    replay(be, g);
    mk.launches++;
    return 0;
}

static void m_graph_free(dfx_backend *be, dfx_graph *g)
{
    (void)be;
    if (!g) return;
    if (mk.g == g) {
        mk.mode = M_NONE;
        mk.g = NULL;
    }
    free(g->ops);
    free(g->host);
    free(g);
}

static dfx_backend *mock_create(void)
{
    dfx_error err;
    /* one thread: results do not depend on it, and idle OpenMP threads
     * spinning on a busy machine cost more than they save here */
    dfx_backend *be = dfx_backend_cpu_create(1, &err);
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        exit(1);
    }
    mk.cpu = be->ops;
    mk.ops = *be->ops;
    dfx_backend_ops *o = &mk.ops;
    o->conv2d = w_conv2d;
    o->group_norm = w_group_norm;
    o->linear = w_linear;
    o->add_channel = w_add_channel;
    o->add = w_add;
    o->concat = w_concat;
    o->upsample2x = w_upsample2x;
    o->attention = w_attention;
    o->time_embed = w_time_embed;
    o->embed_add = w_embed_add;
    o->lincomb = w_lincomb;
    o->copy = w_copy;
    o->alloc = w_alloc;
    o->free = w_free;
    o->sync = w_sync;
    o->upload = w_upload;
    o->download = w_download;
    o->normal = w_normal;
    o->unary = w_unary;
    o->err_norm = w_err_norm;
    o->count_nonfinite = w_count_nonfinite;
    o->silu_jvp = w_silu_jvp;
    o->set_precision = w_set_precision;
    o->graph_begin = m_graph_begin;
    o->graph_capture = m_graph_capture;
    o->graph_end = m_graph_end;
    o->graph_refill = m_graph_refill;
    o->graph_launch = m_graph_launch;
    o->graph_free = m_graph_free;
    o->gn_conv3 = NULL; /* like the CUDA backend: GroupNorm and convolution apart */
    be->ops = o;
    return be;
}

/* ------------------------------------------------------------- checks */

static dfx_backend *be;
static test_rng rng = {0x243F6A8885A308D3ull};

static double urand(void)
{
    return rng_uniform(&rng);
}

/* A model loaded with DIFFLUX_CUDA_GRAPHS set to `graphs`, restored after. */
static dfx_model *load_graphs(const char *name, const char *graphs)
{
    char path[600], saved[64] = "";
    snprintf(path, sizeof path, "%s/fixtures/%s.safetensors", DFX_TEST_DATA, name);
    const char *old = getenv("DIFFLUX_CUDA_GRAPHS");
    int had = old != NULL;
    if (had) snprintf(saved, sizeof saved, "%s", old);
    setenv("DIFFLUX_CUDA_GRAPHS", graphs, 1);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(path, be, &err);
    if (had)
        setenv("DIFFLUX_CUDA_GRAPHS", saved, 1);
    else
        unsetenv("DIFFLUX_CUDA_GRAPHS");
    CHECK(m != NULL, "%s: %s", name, err.msg);
    if (!m) exit(1);
    return m;
}

/* Inputs and outputs rotate through these, so a graph that kept the
 * caller's pointers would read and write the wrong ones. */
#define NBUF 3
static float *bx[NBUF], *by[NBUF];
static int turn;

static size_t bits_differ(const float *a, const float *b, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return c;
}

/* One evaluation of mg (graphs) and me (op by op) on new times, inputs and
 * (labels != NULL) forced labels; returns the values that differ in bits. */
static size_t eval_pair(dfx_model *mg, dfx_model *me, int rows, int *labels)
{
    const size_t n = (size_t)rows * mg->dim;
    const int K = mg->info.num_classes;
    double t[16];
    for (int r = 0; r < rows; r++) {
        t[r] = 0.01 + 0.98 * urand();
        if (labels) labels[r] = (int)(urand() * (K + 1)); /* K: no class */
    }
    float *x = bx[turn], *yg = by[turn], *ye = by[(turn + 1) % NBUF];
    turn = (turn + 1) % NBUF;
    for (size_t i = 0; i < n; i++) x[i] = (float)(2.0 * urand() - 1.0);
    dfx_error err = {{0}};
    CHECK_OK(dfx_model_eval(mg, t, x, mg->cfg.prediction, yg, rows, &err), err);
    CHECK_OK(dfx_model_eval(me, t, x, me->cfg.prediction, ye, rows, &err), err);
    return bits_differ(yg, ye, n);
}

/* The graph counts a phase added, against what the policy of
 * dfx_net_predict_graph gives (a shape eager the first time, captured the
 * second; a larger batch replans and frees the graphs; four graphs kept). */
static void counts(const char *what, dfx_model *mg, long *c0, long *l0, long want_c, long want_l)
{
    long c, l, f;
    dfx_unet_graph_stats(mg, &c, &l, &f, NULL);
    CHECK(c - *c0 == want_c && l - *l0 == want_l && f == 0,
          "%s: %ld captures, %ld launches (want %ld, %ld), %ld failed", what, c - *c0, l - *l0,
          want_c, want_l, f);
    *c0 = c;
    *l0 = l;
}

/* The phases of test_backend_ops's test_unet_graphs, bit for bit. */
static void unet_phases(const char *name)
{
    dfx_model *mg = load_graphs(name, "1"), *me = load_graphs(name, "0");
    const int K = mg->info.num_classes;
    dfx_error err = {{0}};
    int labels[16];
    long c0 = 0, l0 = 0;
    size_t bad = 0;
    if (K > 0) {
        dfx_unet_force_labels(mg, labels);
        dfx_unet_force_labels(me, labels);
    }
    static const int sizes[] = {3, 3, 3, 5, 5, 5, 3, 3, 5};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        bad += eval_pair(mg, me, sizes[i], K > 0 ? labels : NULL);
    CHECK(bad == 0, "%s: batch sizes 3, 5: %zu values differ from op by op", name, bad);
    counts(name, mg, &c0, &l0, 3, 7);
    if (K > 0) {
        dfx_unet_force_labels(mg, NULL);
        dfx_unet_force_labels(me, NULL);
        static const int gsizes[] = {5, 5, 5, 5, 3, 3, 3};
        bad = 0;
        for (size_t i = 0; i < sizeof gsizes / sizeof gsizes[0]; i++) {
            double w = 2.0 + (double)(i % 2);
            CHECK_OK(dfx_model_set_class(mg, DFX_CLASS_CYCLE, w, &err), err);
            CHECK_OK(dfx_model_set_class(me, DFX_CLASS_CYCLE, w, &err), err);
            mg->first_index = me->first_index = 7 * i + 1;
            bad += eval_pair(mg, me, gsizes[i], NULL);
        }
        CHECK(bad == 0, "%s: guided: %zu values differ from op by op", name, bad);
        counts(name, mg, &c0, &l0, 2, 5);
        /* one class, guidance changed between replays of the same graph */
        bad = 0;
        for (int i = 0; i < 3; i++) {
            CHECK_OK(dfx_model_set_class(mg, 1, 1.5 + i, &err), err);
            CHECK_OK(dfx_model_set_class(me, 1, 1.5 + i, &err), err);
            bad += eval_pair(mg, me, 5, NULL);
        }
        CHECK(bad == 0, "%s: class 1, guidance 1.5 .. 3.5: %zu values differ", name, bad);
        counts(name, mg, &c0, &l0, 0, 3);
        CHECK_OK(dfx_model_set_class(mg, DFX_CLASS_NONE, 1.0, &err), err);
        CHECK_OK(dfx_model_set_class(me, DFX_CLASS_NONE, 1.0, &err), err);
    }
    /* another precision: other graphs */
    CHECK_OK(dfx_backend_set_precision(be, "tf32", &err), err);
    bad = 0;
    for (int i = 0; i < 3; i++) bad += eval_pair(mg, me, 3, NULL);
    CHECK_OK(dfx_backend_set_precision(be, "fp32", &err), err);
    CHECK(bad == 0, "%s: tf32: %zu values differ", name, bad);
    counts(name, mg, &c0, &l0, 1, 2);
    bad = 0;
    for (int i = 0; i < 2; i++) bad += eval_pair(mg, me, 3, NULL);
    CHECK(bad == 0, "%s: fp32 again: %zu values differ", name, bad);
    counts(name, mg, &c0, &l0, K > 0 ? 1 : 0, K > 0 ? 1 : 2);
    /* profiling: op by op */
    dfx_model_profile(mg, 1, NULL);
    bad = 0;
    for (int i = 0; i < 2; i++) bad += eval_pair(mg, me, 3, NULL);
    const dfx_profile_entry *pl = NULL;
    int np = dfx_model_profile(mg, -1, &pl);
    long calls = 0;
    for (int k = 0; k < np && pl; k++) calls += pl[k].calls;
    dfx_model_profile(mg, 0, NULL);
    CHECK(bad == 0 && calls > 0, "%s: profiled: %zu values differ, %ld ops timed", name, bad,
          calls);
    counts(name, mg, &c0, &l0, 0, 0);
    /* tangents: op by op, between replays, on the same buffers */
    if (mg->vt->jvp) {
        const int rows = 3;
        const size_t n = (size_t)rows * mg->dim;
        float *v = malloc(n * sizeof *v), *fg = malloc(n * sizeof *fg),
              *jg = malloc(n * sizeof *jg), *fe = malloc(n * sizeof *fe),
              *je = malloc(n * sizeof *je);
        double t[3] = {0.2, 0.5, 0.9};
        for (size_t i = 0; i < n; i++) {
            bx[0][i] = (float)(2.0 * urand() - 1.0);
            v[i] = (float)(2.0 * urand() - 1.0);
        }
        CHECK_OK(dfx_model_jvp(mg, t, bx[0], v, DFX_PRED_VELOCITY, fg, jg, rows, &err), err);
        CHECK_OK(dfx_model_jvp(me, t, bx[0], v, DFX_PRED_VELOCITY, fe, je, rows, &err), err);
        bad = bits_differ(fg, fe, n) + bits_differ(jg, je, n);
        for (int i = 0; i < 2; i++) bad += eval_pair(mg, me, 3, NULL);
        CHECK(bad == 0, "%s: jvp between replays: %zu values differ", name, bad);
        counts(name, mg, &c0, &l0, 0, 2);
        free(v);
        free(fg);
        free(jg);
        free(fe);
        free(je);
    }
    CHECK(mk.mode == M_NONE && mk.misuse == 0, "%s: pass left open (%d) or %ld misuses", name,
          mk.mode, mk.misuse);
    dfx_model_free(mg);
    dfx_model_free(me);
}

/* A sampler with graphs against the same sampler op by op. */
static void sampler_pair(const char *name, const char *sampler, int steps, int n, int cls,
                         double w, int exact_counts)
{
    dfx_model *mg = load_graphs(name, "1"), *me = load_graphs(name, "0");
    dfx_error err = {{0}};
    CHECK_OK(dfx_model_set_class(mg, cls, w, &err), err);
    CHECK_OK(dfx_model_set_class(me, cls, w, &err), err);
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, mg);
    o.sampler = sampler;
    o.steps = steps;
    o.seed = 99;
    dfx_sampler *sg = dfx_sampler_create(mg, &o, n, &err);
    CHECK(sg != NULL, "%s", err.msg);
    dfx_sampler *se = dfx_sampler_create(me, &o, n, &err);
    CHECK(se != NULL, "%s", err.msg);
    if (!sg || !se) exit(1);
    const size_t total = (size_t)n * mg->dim;
    float *got = malloc(total * sizeof *got), *eag = malloc(total * sizeof *eag);
    dfx_sample_stats st;
    CHECK_OK(dfx_sampler_run(sg, 0, n, got, &st, &err), err);
    long nfe = st.nfe;
    CHECK_OK(dfx_sampler_run(se, 0, n, eag, &st, &err), err);
    size_t bad = bits_differ(got, eag, total);
    CHECK(bad == 0, "%s %s: %zu of %zu values differ from op by op", name, sampler, bad, total);
    long c, l, f;
    dfx_unet_graph_stats(mg, &c, &l, &f, NULL);
    CHECK(f == 0 && c >= 1 && (exact_counts ? (c == 1 && l == nfe - 1) : l > 0),
          "%s %s: %ld evaluations, %ld captures, %ld launches, %ld failed", name, sampler, nfe,
          c, l, f);
    /* samples 3.. as a batch of their own: another shape */
    if (n > 3) {
        CHECK_OK(dfx_sampler_run(sg, 3, n - 3, got, &st, &err), err);
        CHECK_OK(dfx_sampler_run(se, 3, n - 3, eag, &st, &err), err);
        bad = bits_differ(got, eag, (size_t)(n - 3) * mg->dim);
        CHECK(bad == 0, "%s %s, smaller batch: %zu values differ", name, sampler, bad);
    }
    CHECK(mk.mode == M_NONE && mk.misuse == 0, "%s %s: pass left open or %ld misuses", name,
          sampler, mk.misuse);
    free(got);
    free(eag);
    dfx_sampler_free(sg);
    dfx_sampler_free(se);
    dfx_model_free(mg);
    dfx_model_free(me);
}

/* A capture that fails: eager evaluation, nothing reported, graphs off for
 * the model from then on. */
static void failed_capture(void)
{
    dfx_model *mg = load_graphs("unet_tiny", "1"), *me = load_graphs("unet_tiny", "0");
    mk.fail_capture = 1;
    long begins = mk.begins;
    size_t bad = 0;
    for (int i = 0; i < 5; i++) bad += eval_pair(mg, me, 3, NULL);
    mk.fail_capture = 0;
    for (int i = 0; i < 3; i++) bad += eval_pair(mg, me, 3, NULL);
    long c, l, f;
    const char *why = NULL;
    dfx_unet_graph_stats(mg, &c, &l, &f, &why);
    CHECK(bad == 0 && c == 0 && l == 0 && f == 1 && mk.begins == begins + 1 && why &&
              strstr(why, "capture refused"),
          "failed capture: %zu values differ, %ld captures, %ld launches, %ld failed (%s), %ld "
          "graph_begin calls",
          bad, c, l, f, why ? why : "?", mk.begins - begins);
    CHECK(mk.mode == M_NONE && mk.misuse == 0, "failed capture: pass left open or misuse");
    dfx_model_free(mg);
    dfx_model_free(me);
}

/* DIFFLUX_CUDA_GRAPHS=0: never a graph. */
static void switched_off(void)
{
    dfx_model *me = load_graphs("unet_tiny", "0"), *m2 = load_graphs("unet_tiny", "0");
    long begins = mk.begins;
    size_t bad = 0;
    for (int i = 0; i < 4; i++) bad += eval_pair(me, m2, 3, NULL);
    CHECK(bad == 0 && mk.begins == begins, "DIFFLUX_CUDA_GRAPHS=0 used graphs");
    dfx_model_free(me);
    dfx_model_free(m2);
}

int main(void)
{
    be = mock_create();
    for (int i = 0; i < NBUF; i++) {
        bx[i] = calloc(16 * 3 * 32 * 32, sizeof(float));
        by[i] = calloc(16 * 3 * 32 * 32, sizeof(float));
        if (!bx[i] || !by[i]) return 1;
    }
    dfx_model *probe = load_graphs("unet_tiny", "1");
    CHECK(probe->dim * 16 <= 16 * 3 * 32 * 32, "fixture larger than the test buffers");
    dfx_model_free(probe);
    unet_phases("unet_tiny");
    unet_phases("unet_cond");
    sampler_pair("unet_tiny", "heun", 10, 8, DFX_CLASS_NONE, 1.0, 1);
    sampler_pair("unet_cond", "heun", 10, 8, DFX_CLASS_CYCLE, 2.0, 1);
    sampler_pair("unet_tiny", "dopri5", 0, 4, DFX_CLASS_NONE, 1.0, 0);
    sampler_pair("unet_cond", "em", 12, 5, 2, 1.0, 1);
    failed_capture();
    switched_off();
    for (int i = 0; i < NBUF; i++) {
        free(bx[i]);
        free(by[i]);
    }
    dfx_backend_destroy(be);
    return check_report("test_graphs");
}
