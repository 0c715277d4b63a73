/* Checks of a device backend on its own (solo cases, tests/backend_ops/bo.h):
 * errors of void ops surfacing at the next sync, the reduced precisions
 * switched on and off, and backend graphs, recorded lincombs and through
 * the U-Net and the samplers (graphs = op by op, bit for bit). */
#define _POSIX_C_SOURCE 200809L /* setenv, strdup */
#include "backend_ops/bo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reference, the backend under test, and how to make another of its kind. */
static dfx_backend *cpu, *gpu;
static dfx_backend *(*create)(dfx_error *err);

static void use(const bo_pair *p)
{
    cpu = p->ref;
    gpu = p->test;
    create = p->create;
}

/* --------------------------------------------------------- error paths */

/* The next sync of be must fail with a message naming op. */
static void sync_fails(dfx_backend *be, const char *op, const char *title)
{
    dfx_error e;
    e.msg[0] = 0;
    int rc = be->ops->sync(be, &e);
    int ok = rc != 0 && strstr(e.msg, op) != NULL;
    bo_row(title, ok ? 0.0 : 1.0, 0.0, rc ? e.msg : "sync returned 0");
}

/* A void op that cannot run must surface at the next sync (on a backend of
 * its own: the error is sticky). */
static void error_path(const bo_pair *p, const bo_case *c)
{
    (void)c;
    use(p);
    dfx_backend *be = create(&bo_err);
    if (!be) bo_die("create", gpu);
    float *x = bo_dev_alloc(be, 16 * sizeof(float));
    const float *xs[DFX_LINCOMB_MAX + 1];
    double coef[DFX_LINCOMB_MAX + 1];
    for (int i = 0; i <= DFX_LINCOMB_MAX; i++) {
        xs[i] = x;
        coef[i] = 1.0;
    }
    be->ops->lincomb(be, x, DFX_LINCOMB_MAX + 1, xs, coef, NULL, 1, 16);
    sync_fails(be, "lincomb", "error path: lincomb k > max reported by sync");
    be->ops->free(be, x);
    dfx_backend_destroy(be);
}

/* A network op that cannot run (conv2d without its scratch) must surface
 * at the next sync, naming the op. */
static void nn_error_path(const bo_pair *p, const bo_case *c)
{
    (void)c;
    use(p);
    dfx_backend *be = create(&bo_err);
    if (!be) bo_die("create", gpu);
    float *x = bo_dev_alloc(be, 64 * sizeof(float)), *w = bo_dev_alloc(be, 9 * sizeof(float));
    be->ops->conv2d(be, x, x, w, NULL, 1, 1, 8, 8, 1, 3, 1, 1, NULL);
    sync_fails(be, "conv2d", "error path: conv2d without scratch reported by sync");
    be->ops->free(be, x);
    be->ops->free(be, w);
    dfx_backend_destroy(be);
}

/* ------------------------------------------------------------- graphs */

/* A lincomb through a backend graph: measure, capture, end; the graph, or
 * NULL with the message in *e. */
static dfx_graph *lincomb_graph(float *out, const float *const *xs, const double *coef,
                                const double *c0, int rows, size_t cols, dfx_error *e)
{
    const dfx_backend_ops *o = gpu->ops;
    dfx_graph *g = o->graph_begin(gpu, e);
    if (!g) return NULL;
    o->lincomb(gpu, out, 2, xs, coef, c0, rows, cols);
    if (o->graph_capture(gpu, g, e) == 0) {
        o->lincomb(gpu, out, 2, xs, coef, c0, rows, cols);
        if (o->graph_end(gpu, g, e) == 0) return g;
    }
    o->graph_free(gpu, g);
    return NULL;
}

/* After a failed or abandoned graph: the backend runs ops eagerly as
 * before (no capture left on the stream, no sticky error) and they give
 * `want`, bit for bit. */
static void after_graph(const char *name, const char *why, float *out, const float *const *xs,
                        const double *coef, const double *c0, int rows, size_t cols,
                        const float *want, float *got)
{
    char title[160];
    dfx_error e;
    e.msg[0] = 0;
    gpu->ops->lincomb(gpu, out, 2, xs, coef, c0, rows, cols);
    int rc = gpu->ops->sync(gpu, &e);
    if (rc == 0) rc = gpu->ops->download(gpu, got, out, (size_t)rows * cols * sizeof(float), &e);
    snprintf(title, sizeof title, "graph: %s fails, then eager works", name);
    bo_row(title, rc == 0 ? 0.0 : 1.0, 0.0, rc == 0 ? why : e.msg);
    if (rc == 0) {
        snprintf(title, sizeof title, "  eager lincomb after it, bit for bit");
        bo_compare_bits(title, got, want, (size_t)rows * cols);
    }
}

/* Backend graphs on their own: a lincomb recorded once, launched, refilled
 * with new coefficients (the caller's arrays are consumed when the op
 * returns) and launched again before the first launch is waited for (each
 * launch's result copied out behind it), against the eager lincomb (bit for
 * bit) and the CPU; then captures that fail — staging that differs from the
 * measure pass, a call that synchronises the capturing stream, a wait
 * inside a pass — and passes abandoned, each followed by eager work that
 * must succeed. */
static void graphs(const bo_pair *p, const bo_case *c)
{
    (void)c;
    use(p);
    const dfx_backend_ops *o = gpu->ops;
    if (!o->graph_begin || !o->copy) {
        bo_row("graph: the cuda backend has graph ops", 1.0, 0.0, "");
        return;
    }
    const int R = 5;
    const size_t C = 1000, n = (size_t)R * C;
    float *hx0 = bo_xmalloc(n * sizeof(float)), *hx1 = bo_xmalloc(n * sizeof(float));
    rng_fill_normal(&bo_rng, hx0, n, 1.0f);
    rng_fill_normal(&bo_rng, hx1, n, 1.0f);
    double cA[2 * 5], c0A[5], cB[2 * 5], c0B[5], cT[2 * 5], c0T[5];
    for (int i = 0; i < 2 * R; i++) {
        cA[i] = 4.0 * rng_uniform(&bo_rng) - 2.0;
        cB[i] = 4.0 * rng_uniform(&bo_rng) - 2.0;
    }
    for (int r = 0; r < R; r++) {
        c0A[r] = rng_uniform(&bo_rng) - 0.5;
        c0B[r] = rng_uniform(&bo_rng) - 0.5;
    }
    cB[3] = 0.0; /* a skipped term */
    float *dx0 = bo_up(gpu, hx0, n), *dx1 = bo_up(gpu, hx1, n), *dout = bo_junk(gpu, n),
          *dA = bo_junk(gpu, n), *dB = bo_junk(gpu, n);
    const float *xs[2] = {dx0, dx1};
    const float *hxs[2] = {hx0, hx1};
    float *refA = bo_xmalloc(n * sizeof(float)), *refB = bo_xmalloc(n * sizeof(float)),
          *eagA = bo_xmalloc(n * sizeof(float)), *eagB = bo_xmalloc(n * sizeof(float)),
          *got = bo_xmalloc(n * sizeof(float));
    cpu->ops->lincomb(cpu, refA, 2, hxs, cA, c0A, R, C);
    cpu->ops->lincomb(cpu, refB, 2, hxs, cB, c0B, R, C);
    o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
    bo_down(gpu, eagA, dout, n);
    o->lincomb(gpu, dout, 2, xs, cB, c0B, R, C);
    bo_down(gpu, eagB, dout, n);

    dfx_error e;
    e.msg[0] = 0;
    dfx_graph *g = lincomb_graph(dout, xs, cA, c0A, R, C, &e);
    int ok = g != NULL;
    if (ok) ok = o->graph_launch(gpu, g, &e) == 0; /* on the capture pass's data */
    o->copy(gpu, dA, dout, n * sizeof(float));
    if (ok) ok = o->graph_refill(gpu, g, &e) == 0;
    if (ok) {
        memcpy(cT, cB, sizeof cT);
        memcpy(c0T, c0B, sizeof c0T);
        o->lincomb(gpu, dout, 2, xs, cT, c0T, R, C);
        for (int i = 0; i < 2 * R; i++) cT[i] = NAN; /* consumed already */
        for (int r = 0; r < R; r++) c0T[r] = NAN;
        ok = o->graph_launch(gpu, g, &e) == 0;
    }
    o->copy(gpu, dB, dout, n * sizeof(float));
    bo_row("graph: lincomb recorded, launched, refilled, launched", ok ? 0.0 : 1.0, 0.0,
        ok ? "" : e.msg);
    if (ok) {
        bo_down(gpu, got, dA, n);
        bo_compare_bits("  first launch (capture's data) = eager lincomb", got, eagA, n);
        bo_compare("  first launch vs cpu", got, refA, n, 1e-6, NULL);
        bo_down(gpu, got, dB, n);
        bo_compare_bits("  refilled launch = eager lincomb", got, eagB, n);
        bo_compare("  refilled launch vs cpu", got, refB, n, 1e-6, NULL);
    }
    if (g) o->graph_free(gpu, g);

    /* a capture pass that stages other data than its measure pass */
    e.msg[0] = 0;
    g = o->graph_begin(gpu, &e);
    int failed = 0;
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        if (o->graph_capture(gpu, g, &e) == 0) {
            o->lincomb(gpu, dout, 2, xs, cA, c0A, R - 1, C);
            failed = o->graph_end(gpu, g, &e) != 0 && strstr(e.msg, "differs") != NULL;
        }
        o->graph_free(gpu, g);
    }
    bo_row("graph: capture staging other data than measured fails", failed ? 0.0 : 1.0, 0.0,
        e.msg);
    after_graph("a mismatched capture", "", dout, xs, cA, c0A, R, C, eagA, got);

    /* a call that synchronises the capturing stream (free) invalidates the
     * capture: CUDA's own refusal */
    e.msg[0] = 0;
    float *victim = bo_junk(gpu, 16);
    g = o->graph_begin(gpu, &e);
    failed = 0;
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        if (o->graph_capture(gpu, g, &e) == 0) {
            o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
            o->free(gpu, victim); /* cudaStreamSynchronize while capturing */
            failed = o->graph_end(gpu, g, &e) != 0;
        }
        o->graph_free(gpu, g);
    }
    bo_row("graph: a capture invalidated by a stream sync fails", failed ? 0.0 : 1.0, 0.0, e.msg);
    after_graph("an invalidated capture", "", dout, xs, cB, c0B, R, C, eagB, got);

    /* waiting inside a pass */
    e.msg[0] = 0;
    g = o->graph_begin(gpu, &e);
    failed = 0;
    if (g) {
        dfx_error e2;
        failed = o->sync(gpu, &e2) != 0 && o->graph_capture(gpu, g, &e) != 0;
        o->graph_free(gpu, g);
    }
    bo_row("graph: sync inside a pass fails, and fails the graph", failed ? 0.0 : 1.0, 0.0, e.msg);
    after_graph("a sync in a pass", "", dout, xs, cA, c0A, R, C, eagA, got);

    /* passes abandoned: measure, capture, refill */
    g = o->graph_begin(gpu, &e);
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        o->graph_free(gpu, g);
    }
    after_graph("a measure pass abandoned (graph_free)", "", dout, xs, cB, c0B, R, C, eagB, got);
    g = o->graph_begin(gpu, &e);
    if (g) {
        o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        if (o->graph_capture(gpu, g, &e) == 0) o->lincomb(gpu, dout, 2, xs, cA, c0A, R, C);
        o->graph_free(gpu, g);
    }
    after_graph("a capture abandoned (graph_free)", "", dout, xs, cA, c0A, R, C, eagA, got);
    g = lincomb_graph(dout, xs, cA, c0A, R, C, &e);
    const int made = g != NULL;
    if (g) {
        if (o->graph_refill(gpu, g, &e) == 0) o->lincomb(gpu, dout, 2, xs, cB, c0B, R, C);
        o->graph_free(gpu, g);
    }
    after_graph("a refill abandoned (graph_free)", made ? "" : e.msg, dout, xs, cB, c0B, R, C,
                eagB, got);

    bo_free(gpu, dx0);
    bo_free(gpu, dx1);
    bo_free(gpu, dout);
    bo_free(gpu, dA);
    bo_free(gpu, dB);
    free(hx0);
    free(hx1);
    free(refA);
    free(refB);
    free(eagA);
    free(eagB);
    free(got);
}


/* A model (a path relative to tests/) loaded with DIFFLUX_CUDA_GRAPHS set
 * to `graphs` ("1": graphs where the backend has them, "0": op by op), the
 * variable restored after. */
static dfx_model *load_graphs(const char *path, dfx_backend *be, const char *graphs)
{
    const char *was = getenv("DIFFLUX_CUDA_GRAPHS");
    char *keep = was ? strdup(was) : NULL;
    setenv("DIFFLUX_CUDA_GRAPHS", graphs, 1);
    dfx_model *m = bo_load(path, be);
    if (keep) setenv("DIFFLUX_CUDA_GRAPHS", keep, 1);
    else unsetenv("DIFFLUX_CUDA_GRAPHS");
    free(keep);
    return m;
}

/* Evaluations of one phase of test_unet_graphs on the three models, the
 * inputs new for each: worst normalised error against the CPU, values that
 * differ in bits between graph and eager. */
typedef struct graph_phase {
    double worst;
    size_t bits, values;
} graph_phase;

static void graph_eval(dfx_model *mc, dfx_model *mg, dfx_model *me, int rows, int *labels,
                       graph_phase *ph)
{
    const size_t dim = mc->dim, n = (size_t)rows * dim;
    const int K = mc->info.num_classes;
    double *t = bo_xmalloc((size_t)rows * sizeof(double));
    float *x = bo_xmalloc(n * sizeof(float)), *ref = bo_xmalloc(n * sizeof(float)),
          *got = bo_xmalloc(n * sizeof(float)), *eag = bo_xmalloc(n * sizeof(float));
    for (int r = 0; r < rows; r++) {
        t[r] = 0.01 + 0.98 * rng_uniform(&bo_rng);
        if (labels) labels[r] = (int)(rng_u64(&bo_rng) % (uint64_t)(K + 1)); /* K: no class */
    }
    rng_fill_normal(&bo_rng, x, n, 1.0f);
    const dfx_pred p = mc->cfg.prediction;
    if (dfx_model_eval_host(mc, t, x, rows, p, ref, &bo_err)) bo_die("eval", cpu);
    if (dfx_model_eval_host(mg, t, x, rows, p, got, &bo_err)) bo_die("eval (graphs)", gpu);
    if (dfx_model_eval_host(me, t, x, rows, p, eag, &bo_err)) bo_die("eval (eager)", gpu);
    double e = nerr(got, ref, n);
    if (!(e <= ph->worst)) ph->worst = e;
    ph->bits += bo_bits_differ(got, eag, n);
    ph->values += n;
    free(t);
    free(x);
    free(ref);
    free(got);
    free(eag);
}

/* Prints a phase: graph = eager bit for bit, against the CPU within tol,
 * and the graph counts it added (captures, launches) against what
 * predict_graph's policy gives for the phase (a shape evaluated eagerly the
 * first time, captured the second; a larger batch replans, freeing the
 * graphs), with no failed capture. */
static void graph_report(const char *title, dfx_model *mg, const graph_phase *ph, double tol,
                         long *c0, long *l0, long want_c, long want_l)
{
    char name[200], note[400];
    long c, l, f;
    const char *why = "";
    dfx_unet_graph_stats(mg, &c, &l, &f, &why);
    snprintf(name, sizeof name, "%s: graphs = eager", title);
    snprintf(note, sizeof note, "%zu of %zu differ in bits", ph->bits, ph->values);
    bo_row(name, ph->bits ? 1.0 : 0.0, 0.0, note);
    snprintf(name, sizeof name, "  vs cpu (worst evaluation)");
    bo_row(name, ph->worst, tol, "");
    int ok = c - *c0 == want_c && l - *l0 == want_l && f == 0;
    snprintf(note, sizeof note, "%ld captures, %ld launches (want %ld, %ld), %ld failed%s%.250s",
             c - *c0, l - *l0, want_c, want_l, f, f ? ": " : "", why);
    bo_row("  graphs captured and replayed", ok ? 0.0 : 1.0, 0.0, note);
    *c0 = c;
    *l0 = l;
}

/* A U-Net through graphs (the default) against the same file loaded with
 * DIFFLUX_CUDA_GRAPHS=0 (op by op) and against the CPU, every evaluation on
 * new times, inputs and (conditional models) forced labels, which replays
 * refill: batch sizes 3, 3, 3, 5, 5, 5, 3, 3, 5 (5 replans the arena: the
 * graphs of 3 are freed and captured again; then both are kept); for
 * conditional models guidance (both passes and their combination in one
 * graph) with classes cycling from a changing first index and the weight
 * changing between replays; TF32 (another precision: other graphs, none
 * replayed from FP32; the cache evicts); and profiling, which runs eagerly. */
static void unet_graphs(const bo_pair *p, const bo_case *c)
{
    const char *name = c->p.unet.name;
    use(p);
    char mpath[300], title[160];
    snprintf(mpath, sizeof mpath, "fixtures/%s.safetensors", name);
    dfx_model *mc = bo_load(mpath, cpu);
    dfx_model *mg = load_graphs(mpath, gpu, "1"), *me = load_graphs(mpath, gpu, "0");
    const int K = mc->info.num_classes;
    int labels[8];
    long c0 = 0, l0 = 0;
    graph_phase ph = {0, 0, 0};
    if (K > 0) {
        dfx_unet_force_labels(mc, labels);
        dfx_unet_force_labels(mg, labels);
        dfx_unet_force_labels(me, labels);
    }
    static const int sizes[] = {3, 3, 3, 5, 5, 5, 3, 3, 5};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        graph_eval(mc, mg, me, sizes[i], K > 0 ? labels : NULL, &ph);
    snprintf(title, sizeof title, "U-Net %s graphs: 9 evaluations, 3 and 5 rows%s", name,
             K > 0 ? ", labels" : "");
    /* 3: eager, capture, replay; 5: eager, capture, replay; 3: capture,
     * replay; 5: replay */
    graph_report(title, mg, &ph, NN_TOL, &c0, &l0, 3, 7);
    if (K > 0) {
        dfx_unet_force_labels(mc, NULL);
        dfx_unet_force_labels(mg, NULL);
        dfx_unet_force_labels(me, NULL);
        ph = (graph_phase){0, 0, 0};
        static const int gsizes[] = {5, 5, 5, 5, 3, 3, 3};
        for (size_t i = 0; i < sizeof gsizes / sizeof gsizes[0]; i++) {
            double w = 2.0 + (double)(i % 2);
            if (dfx_model_set_class(mc, DFX_CLASS_CYCLE, w, &bo_err)) bo_die("set_class", cpu);
            if (dfx_model_set_class(mg, DFX_CLASS_CYCLE, w, &bo_err)) bo_die("set_class", gpu);
            if (dfx_model_set_class(me, DFX_CLASS_CYCLE, w, &bo_err)) bo_die("set_class", gpu);
            mc->first_index = mg->first_index = me->first_index = 7 * i + 1;
            graph_eval(mc, mg, me, gsizes[i], NULL, &ph);
        }
        snprintf(title, sizeof title, "U-Net %s graphs: guidance 2 and 3, classes cycling", name);
        /* w P_c + (1 - w) P_u: up to 2w + 1 evaluations' error */
        graph_report(title, mg, &ph, 7 * NN_TOL, &c0, &l0, 2, 5);
        if (dfx_model_set_class(mc, DFX_CLASS_NONE, 1.0, &bo_err)) bo_die("set_class", cpu);
        if (dfx_model_set_class(mg, DFX_CLASS_NONE, 1.0, &bo_err)) bo_die("set_class", gpu);
        if (dfx_model_set_class(me, DFX_CLASS_NONE, 1.0, &bo_err)) bo_die("set_class", gpu);
    }
    /* TF32: the FP32 graph of 3 rows must not be replayed */
    if (dfx_backend_set_precision(gpu, "tf32", &bo_err)) bo_die("set_precision", gpu);
    ph = (graph_phase){0, 0, 0};
    for (int i = 0; i < 3; i++) graph_eval(mc, mg, me, 3, NULL, &ph);
    if (dfx_backend_set_precision(gpu, "fp32", &bo_err)) bo_die("set_precision", gpu);
    snprintf(title, sizeof title, "U-Net %s graphs: tf32, 3 rows", name);
    graph_report(title, mg, &ph, TF32_NET_TOL, &c0, &l0, 1, 2);
    /* back in FP32: the graph of 3 rows is still there (unconditional
     * models: replays), or (conditional: a fifth shape) it was evicted, and
     * the shape forgotten: eager, then captured */
    ph = (graph_phase){0, 0, 0};
    for (int i = 0; i < 2; i++) graph_eval(mc, mg, me, 3, NULL, &ph);
    snprintf(title, sizeof title, "U-Net %s graphs: fp32 again, 3 rows", name);
    graph_report(title, mg, &ph, NN_TOL, &c0, &l0, K > 0 ? 1 : 0, K > 0 ? 1 : 2);
    /* profiling: op by op, timed */
    dfx_model_profile(mg, 1, NULL);
    ph = (graph_phase){0, 0, 0};
    for (int i = 0; i < 2; i++) graph_eval(mc, mg, me, 3, NULL, &ph);
    const dfx_profile_entry *pl = NULL;
    int np = dfx_model_profile(mg, -1, &pl);
    long calls = 0;
    for (int k = 0; k < np && pl; k++) calls += pl[k].calls;
    dfx_model_profile(mg, 0, NULL);
    snprintf(title, sizeof title, "U-Net %s graphs: profiling runs op by op", name);
    graph_report(title, mg, &ph, NN_TOL, &c0, &l0, 0, 0);
    char note[64];
    snprintf(note, sizeof note, "%ld ops timed", calls);
    bo_row("  per-op profile filled", calls > 0 ? 0.0 : 1.0, 0.0, note);
    dfx_model_free(mc);
    dfx_model_free(mg);
    dfx_model_free(me);
}

/* A sampler run with graphs against the same run op by op: bit for bit. */
static void sample_graphs(const bo_pair *p, const bo_case *sc)
{
    const char *file = sc->p.sample.file, *sampler = sc->p.sample.sampler;
    const int steps = sc->p.sample.steps, n = sc->p.sample.n;
    const double w = sc->p.sample.w;
    use(p);
    char title[160], note[400];
    dfx_model *mg = load_graphs(file, gpu, "1"), *me = load_graphs(file, gpu, "0");
    if (dfx_model_set_class(mg, sc->p.sample.cls, w, &bo_err)) bo_die("set_class", gpu);
    if (dfx_model_set_class(me, sc->p.sample.cls, w, &bo_err)) bo_die("set_class", gpu);
    dfx_sampler *sg = test_sampler(mg, sampler, steps, 99, n, &bo_err);
    if (!sg) bo_die("dfx_sampler_create", gpu);
    dfx_sampler *se = test_sampler(me, sampler, steps, 99, n, &bo_err);
    if (!se) bo_die("dfx_sampler_create", gpu);
    const size_t total = (size_t)n * mg->dim;
    float *got = bo_xmalloc(total * sizeof(float)), *eag = bo_xmalloc(total * sizeof(float));
    dfx_sample_stats st;
    if (dfx_sampler_run(sg, 0, n, got, &st, &bo_err)) bo_die("dfx_sampler_run (graphs)", gpu);
    long nfe = st.nfe;
    if (dfx_sampler_run(se, 0, n, eag, &st, &bo_err)) bo_die("dfx_sampler_run (eager)", gpu);
    snprintf(title, sizeof title, "sample %s, %s %d steps, %d samples%s: graphs = eager", file,
             sampler, steps, n, w != 1.0 ? ", guided" : "");
    bo_compare_bits(title, got, eag, total);
    long c, l, f;
    const char *why = "";
    dfx_unet_graph_stats(mg, &c, &l, &f, &why);
    /* every evaluation but the first (eager) and the second (captured,
     * then launched) is a replay */
    snprintf(note, sizeof note, "%ld evaluations: %ld captures, %ld launches, %ld failed%s%.250s",
             nfe, c, l, f, f ? ": " : "", why);
    bo_row("  evaluations through graphs", c == 1 && l == nfe - 1 && f == 0 ? 0.0 : 1.0, 0.0, note);
    free(got), free(eag);
    dfx_sampler_free(sg), dfx_sampler_free(se);
    dfx_model_free(mg), dfx_model_free(me);
}

/* ------------------------------------------------------------ precision */

/* No mode: fp16 is refused, and tf32 on the CPU backend; a mode: the
 * backend under test switches to it (the cases after it run there). */
static void set_precision(const bo_pair *p, const bo_case *c)
{
    const char *mode = c->p.precision.mode;
    if (!mode) {
        dfx_error e1, e2;
        int bad_mode = dfx_backend_set_precision(p->test, "fp16", &e1);
        int not_cuda = dfx_backend_set_precision(p->cpu, "tf32", &e2);
        bo_row("set_precision refuses fp16, and tf32 on the CPU backend",
               bad_mode == -1 && not_cuda == -1 && strstr(e1.msg, "fp16") && strstr(e2.msg, "cpu")
                   ? 0.0 : 1.0, 0.0, "");
    } else if (dfx_backend_set_precision(p->test, mode, &bo_err)) {
        char tag[32];
        snprintf(tag, sizeof tag, " %s", mode);
        bo_row(tag, 1.0, 0.0, bo_err.msg);
    }
}

const bo_family bo_error_path = {"error_path", NULL, NULL, NULL, error_path};
const bo_family bo_nn_error_path = {"error_path", NULL, NULL, NULL, nn_error_path};
const bo_family bo_set_precision = {"precision", NULL, NULL, NULL, set_precision};
const bo_family bo_graphs = {"graph", NULL, NULL, NULL, graphs};
const bo_family bo_unet_graphs = {"unet_graphs", NULL, NULL, NULL, unet_graphs};
const bo_family bo_sample_graphs = {"sample_graphs", NULL, NULL, NULL, sample_graphs};
