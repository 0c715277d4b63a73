/* Exact Jacobian-vector products of the U-Net (the kind's jvp: tangents
 * pushed forward through every layer) on the CPU backend:
 *  - against PyTorch: tests/fixtures/NAME.jvp.safetensors holds a direction
 *    v and the float64 torch.func.jvp of the reference module (written by
 *    models/difflux_ref/make_fixtures.py), plain and, for the conditional
 *    model, with classifier-free guidance;
 *  - jvp's `out` is predict's output bit for bit, and a sample alone gives
 *    the same tangent as in a batch;
 *  - the tangent is linear in v: J (2 v + w) = 2 J v + J w;
 *  - central finite differences of predict in float agree;
 *  - the new backend ops on their own (silu_jvp, group_norm_jvp,
 *    attention_jvp) against central differences of their forward ops.
 *
 * Tolerances (normalised errors ||a - b|| / ||b||):
 *  REF_TOL 1e-4: the C engine evaluates in float32 and the reference is
 *    float64 rounded to float32; a float32 forward lands within ~1e-6 of it
 *    (tests/fixtures/README.md), and a tangent goes through the same
 *    products once more, so errors of 1e-6..1e-5 are expected.
 *  LIN_TOL 1e-5: J (2 v + w) and 2 J v + J w differ only by float32
 *    rounding in the order of the operations.
 *  Finite differences, central in float with h = FD_STEP ||x|| / ||v|| = 1e-2
 *    relative per row, and h / 2: these networks are strongly nonlinear
 *    (sharp attention), so the truncation error h^2 P''' / 6 is 1e-3..6e-2
 *    at h (measured; the float rounding floor is ~1e-4). It must fall
 *    4-fold at h / 2 (FD_RATIO_LO..HI around the measured 0.25..0.26: a
 *    wrong Jv would leave a floor), and Richardson's (4 D(h/2) - D(h)) / 3,
 *    which cancels the h^2 term, must be within FD_TOL 1e-2 (measured
 *    7e-5..3e-3, the rest being the h^4 term).
 *  The ops alone: OP_FD_TOL 1e-3 for float differences with h = 1e-2 of
 *    O(1) inputs (h^2 + 1e-7 / h ~ 1e-4; measured up to 4e-4).
 */
#include "check.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <stdlib.h>

#define REF_TOL 1e-4
#define LIN_TOL 1e-5
#define FD_TOL 1e-2
#define FD_STEP 1e-2
#define FD_RATIO_LO 0.15
#define FD_RATIO_HI 0.35

static dfx_backend *be;

static double norm(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* The kind's jvp and predict on host arrays (the CPU backend's arrays are
 * host memory), after the model layer's reserve as dfx_model_eval does. */
static int jvp(dfx_model *m, const double *t, const float *x, const float *v, float *out,
               float *dout, int rows, dfx_error *err)
{
    if (dfx_model_reserve(m, rows, err)) return -1;
    return m->vt->jvp(m, t, x, v, out, dout, rows, err);
}

static int predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                   dfx_error *err)
{
    if (dfx_model_reserve(m, rows, err)) return -1;
    return m->vt->predict(m, t, x, out, rows, err);
}

/* Central differences of predict along v in float into fd [B, dim]:
 * (P(x + h v) - P(x - h v)) / 2h, h = step ||x_r|| / ||v_r|| per row (one
 * batch of 2 B rows). labels: forced labels (NULL: the model's class
 * setting), repeated for both halves. */
static int central_diff(dfx_model *m, const double *t, const int *labels, const float *x,
                        const float *v, int B, double step, double *fd)
{
    const size_t D = m->dim, n = (size_t)B * D;
    float *xp = malloc(2 * n * sizeof *xp), *fp = malloc(2 * n * sizeof *fp);
    double *t2 = malloc(2 * (size_t)B * sizeof *t2), *h = malloc((size_t)B * sizeof *h);
    int l2[32];
    dfx_error err = {{0}};
    for (int r = 0; r < B; r++) {
        const float *xr = x + (size_t)r * D, *vr = v + (size_t)r * D;
        h[r] = step * norm(xr, D) / norm(vr, D);
        for (size_t j = 0; j < D; j++) {
            xp[(size_t)r * D + j] = (float)(xr[j] + h[r] * vr[j]);
            xp[n + (size_t)r * D + j] = (float)(xr[j] - h[r] * vr[j]);
        }
        t2[r] = t2[B + r] = t[r];
        if (labels && B <= 16) l2[r] = l2[B + r] = labels[r];
    }
    if (labels) dfx_unet_force_labels(m, l2);
    int rc = predict(m, t2, xp, fp, 2 * B, &err);
    CHECK(rc == 0, "finite differences: %s", err.msg);
    if (labels) dfx_unet_force_labels(m, labels);
    for (int r = 0; r < B; r++)
        for (size_t j = 0; j < D; j++) {
            size_t i = (size_t)r * D + j;
            fd[i] = ((double)fp[i] - fp[n + i]) / (2.0 * h[r]);
        }
    free(xp);
    free(fp);
    free(t2);
    free(h);
    return rc;
}

/* One fixture: PyTorch parity, out == predict, batch invariance, linearity,
 * finite differences; then, for the conditional model, all of it again
 * with guidance w = 2. */
static void fixture(const char *name)
{
    dfx_error err = {{0}};
    dfx_st_file f;
    dfx_model *m = fixture_open(be, name, "jvp", &f);
    if (!m) return;
    CHECK(m->vt->jvp != NULL, "%s: the U-Net has no jvp", name);
    size_t nx = 0, nt = 0, ny = 0, nv = 0, no = 0, nj = 0;
    float *x = fixture_tensor(&f, "x", &nx), *tf = fixture_tensor(&f, "t", &nt);
    float *yf = fixture_tensor(&f, "y", &ny), *v = fixture_tensor(&f, "v", &nv);
    float *want_out = fixture_tensor(&f, "out", &no), *want_jv = fixture_tensor(&f, "jvp", &nj);
    const int B = (int)nt, K = m->info.num_classes;
    const size_t D = m->dim, n = (size_t)B * D;
    if (!m->vt->jvp || !x || !tf || !yf || !v || !want_out || !want_jv || B > 16 || nx != n ||
        nv != n || no != n || nj != n || ny != nt) {
        CHECK(0, "%s: fixture tensors missing or inconsistent", name);
        goto done;
    }
    double t[16];
    int labels[16];
    for (int r = 0; r < B; r++) {
        t[r] = tf[r];
        labels[r] = (int)yf[r];
    }
    float *out = malloc(n * sizeof *out), *jv = malloc(n * sizeof *jv),
          *pred = malloc(n * sizeof *pred), *w = malloc(n * sizeof *w),
          *jw = malloc(n * sizeof *jw), *vw = malloc(n * sizeof *vw),
          *jvw = malloc(n * sizeof *jvw), *lin = malloc(n * sizeof *lin);
    dfx_normal_host(11, 0, B, D, 0, 0, w);
    for (size_t i = 0; i < n; i++) vw[i] = 2.0f * v[i] + w[i];

    for (int guided = 0; guided <= (K > 0); guided++) {
        const char *tag = guided ? " guided w=2" : "";
        const float *ref_out = want_out, *ref_jv = want_jv;
        float *g_out = NULL, *g_jv = NULL;
        if (guided) {
            size_t a = 0, b = 0;
            g_out = fixture_tensor(&f, "out_guided", &a);
            g_jv = fixture_tensor(&f, "jvp_guided", &b);
            if (!g_out || !g_jv || a != n || b != n) {
                CHECK(0, "%s: guided fixture tensors missing", name);
                free(g_out);
                free(g_jv);
                break;
            }
            ref_out = g_out;
            ref_jv = g_jv;
            /* the fixture's guided reference: class 1 for every row, w = 2 */
            dfx_unet_force_labels(m, NULL);
            CHECK_OK(dfx_model_set_class(m, 1, 2.0, &err), err);
        } else if (K > 0) {
            dfx_unet_force_labels(m, labels);
        }
        CHECK_OK(jvp(m, t, x, v, out, jv, B, &err), err);
        double e_jv = nerr(jv, ref_jv, n), e_out = nerr(out, ref_out, n);
        CHECK(e_jv <= REF_TOL, "%s%s: jvp vs PyTorch %.3g", name, tag, e_jv);
        CHECK(e_out <= REF_TOL, "%s%s: out vs PyTorch %.3g", name, tag, e_out);

        /* out is predict's, bit for bit */
        CHECK_OK(predict(m, t, x, pred, B, &err), err);
        const int bitwise = memcmp(pred, out, n * sizeof *out) == 0;
        CHECK(bitwise, "%s%s: jvp's out differs from predict", name, tag);

        /* each sample alone: the same bits */
        int alone_ok = 1;
        for (int r = 0; r < B && !guided; r++) {
            float o1[4096], j1[4096];
            if (D > 4096) break;
            if (K > 0) dfx_unet_force_labels(m, labels + r);
            CHECK_OK(jvp(m, t + r, x + r * D, v + r * D, o1, j1, 1, &err), err);
            alone_ok &= memcmp(o1, out + r * D, D * sizeof *o1) == 0 &&
                        memcmp(j1, jv + r * D, D * sizeof *j1) == 0;
        }
        if (!guided && K > 0) dfx_unet_force_labels(m, labels);
        CHECK(alone_ok, "%s%s: a sample alone differs from the batch", name, tag);

        /* linearity in v */
        CHECK_OK(jvp(m, t, x, w, out, jw, B, &err), err);
        CHECK_OK(jvp(m, t, x, vw, out, jvw, B, &err), err);
        for (size_t i = 0; i < n; i++) lin[i] = (float)(2.0 * jv[i] + (double)jw[i]);
        double e_lin = nerr(jvw, lin, n);
        CHECK(e_lin <= LIN_TOL, "%s%s: J(2v + w) vs 2Jv + Jw %.3g", name, tag, e_lin);

        /* central differences in float at h and h / 2: their errors are
         * the truncation h^2 P''' / 6 about the true derivative, so they
         * shrink 4-fold (a wrong Jv would leave a floor), and Richardson's
         * (4 D(h/2) - D(h)) / 3 cancels that term */
        double *d1 = malloc(n * sizeof *d1), *d2 = malloc(n * sizeof *d2);
        const int *forced = K > 0 && !guided ? labels : NULL;
        double e_fd = INFINITY, e_h = INFINITY, ratio = INFINITY;
        if (central_diff(m, t, forced, x, v, B, FD_STEP, d1) == 0 &&
            central_diff(m, t, forced, x, v, B, FD_STEP / 2, d2) == 0) {
            e_h = nerr_df(d1, jv, n);
            ratio = nerr_df(d2, jv, n) / e_h;
            for (size_t i = 0; i < n; i++) d1[i] = (4.0 * d2[i] - d1[i]) / 3.0;
            e_fd = nerr_df(d1, jv, n);
        }
        CHECK(e_fd <= FD_TOL, "%s%s: finite differences (Richardson) %.3g", name, tag, e_fd);
        CHECK(ratio >= FD_RATIO_LO && ratio <= FD_RATIO_HI,
              "%s%s: finite-difference error at h/2 over h = %.3g, not ~1/4", name, tag, ratio);
        free(d1);
        free(d2);

        printf("%-9s%-12s %d x %zu: |jvp - PyTorch| %.2e, |out - PyTorch| %.2e, out == predict "
               "%s, linearity %.2e, finite differences %.2e at h, ratio %.3f at h/2, %.2e "
               "extrapolated (||Jv|| %.3g)\n",
               name, tag, B, D, e_jv, e_out, bitwise ? "bitwise" : "NO", e_lin, e_h, ratio, e_fd,
               norm(jv, n));
        free(g_out);
        free(g_jv);
    }
    dfx_unet_force_labels(m, NULL);
    free(out);
    free(jv);
    free(pred);
    free(w);
    free(jw);
    free(vw);
    free(jvw);
    free(lin);
done:
    free(x);
    free(tf);
    free(yf);
    free(v);
    free(want_out);
    free(want_jv);
    dfx_st_close(&f);
    dfx_model_free(m);
}

/* ------------------------------------------------ the backend ops alone */

static void fill(float *x, size_t n, uint64_t seed, float scale, float offset)
{
    dfx_normal_host(seed, 0, 1, n, 0, 0, x);
    for (size_t i = 0; i < n; i++) x[i] = x[i] * scale + offset;
}

/* Central difference of a float op y = F(x) along dx, step h (absolute),
 * given F at x + h dx and x - h dx. */
static void central(double *fd, const float *yp, const float *ym, double h, size_t n)
{
    for (size_t i = 0; i < n; i++) fd[i] = ((double)yp[i] - (double)ym[i]) / (2.0 * h);
}

static void ops_silu(void)
{
    enum { N = 1000 };
    static float x[N + 6], dx[N + 6], dy[N + 6], d2[N + 6];
    static double fd[N + 6];
    fill(x, N, 1, 3.0f, 0.0f);
    fill(dx, N + 6, 2, 1.0f, 0.0f);
    /* the far ends: SiLU' is 0 and 1 there, never NaN */
    const float ends[6] = {-1e4f, -100.0f, -88.0f, 88.0f, 100.0f, 1e4f};
    for (int i = 0; i < 6; i++) x[N + i] = ends[i];
    be->ops->silu_jvp(be, dy, x, dx, N + 6);
    /* SiLU in double, differenced with a small step: exact to ~1e-10 */
    for (size_t i = 0; i < N + 6; i++) {
        double h = 1e-5, a = x[i] + h * dx[i], b = x[i] - h * dx[i];
        fd[i] = (a / (1.0 + exp(-a)) - b / (1.0 + exp(-b))) / (2.0 * h);
    }
    double e = nerr_df(fd, dy, N + 6);
    int finite = 1;
    for (size_t i = 0; i < N + 6; i++) finite &= isfinite(dy[i]) != 0;
    CHECK(e <= 1e-6 && finite, "silu_jvp vs differences of SiLU in double: %.3g", e);
    CHECK(dy[N] == 0.0f && fabsf(dy[N + 5] - dx[N + 5]) <= 1e-6f * fabsf(dx[N + 5]),
          "silu_jvp at -1e4 / 1e4: %g, %g (dx %g)", dy[N], dy[N + 5], dx[N + 5]);
    /* in place: dy may alias dx */
    memcpy(d2, dx, sizeof d2);
    be->ops->silu_jvp(be, d2, x, d2, N + 6);
    CHECK(memcmp(d2, dy, sizeof d2) == 0, "silu_jvp in place differs");
    printf("silu_jvp: %d values, error %.2e against differences of SiLU in double\n", N + 6, e);
}

/* Float differences of group_norm and attention (see the top). */
#define OP_FD_TOL 1e-3

static void ops_group_norm(int B, int C, int HW, int groups, int act, float offset)
{
    const size_t n = (size_t)B * C * HW;
    float *x = malloc(n * sizeof *x), *dx = malloc(n * sizeof *dx), *xp = malloc(n * sizeof *xp),
          *yp = malloc(n * sizeof *yp), *ym = malloc(n * sizeof *ym), *dy = malloc(n * sizeof *dy);
    float *g = malloc((size_t)C * sizeof *g), *bt = malloc((size_t)C * sizeof *bt);
    double *fd = malloc(n * sizeof *fd);
    fill(x, n, 3, 2.0f, offset);
    fill(dx, n, 4, 1.0f, 0.3f); /* a mean along dx too */
    fill(g, (size_t)C, 5, 0.25f, 1.0f);
    fill(bt, (size_t)C, 6, 0.2f, 0.0f);
    const double h = 1e-2;
    const float eps = 1e-5f;
    for (size_t i = 0; i < n; i++) xp[i] = (float)(x[i] + h * dx[i]);
    be->ops->group_norm(be, yp, xp, g, bt, B, C, HW, groups, eps, act);
    for (size_t i = 0; i < n; i++) xp[i] = (float)(x[i] - h * dx[i]);
    be->ops->group_norm(be, ym, xp, g, bt, B, C, HW, groups, eps, act);
    central(fd, yp, ym, h, n);
    be->ops->group_norm_jvp(be, dy, x, dx, g, bt, B, C, HW, groups, eps, act);
    double e = nerr_df(fd, dy, n);
    CHECK(e <= OP_FD_TOL, "group_norm_jvp B=%d C=%d HW=%d groups=%d silu=%d: %.3g", B, C, HW,
          groups, act, e);
    printf("group_norm_jvp B=%d C=%d HW=%d groups=%d%s offset %g: error %.2e against "
           "differences\n",
           B, C, HW, groups, act ? " silu" : "", offset, e);
    free(x);
    free(dx);
    free(xp);
    free(yp);
    free(ym);
    free(dy);
    free(g);
    free(bt);
    free(fd);
}

static void ops_attention(int B, int C, int HW, int heads)
{
    const size_t n = (size_t)B * C * HW, n3 = 3 * n;
    float *q = malloc(n3 * sizeof *q), *dq = malloc(n3 * sizeof *dq), *qp = malloc(n3 * sizeof *qp);
    float *yp = malloc(n * sizeof *yp), *ym = malloc(n * sizeof *ym), *dy = malloc(n * sizeof *dy);
    double *fd = malloc(n * sizeof *fd);
    size_t ns = be->ops->attention_scratch(be, B, C, HW, heads),
           nj = be->ops->attention_jvp_scratch(be, B, C, HW, heads);
    float *s = malloc((ns > nj ? ns : nj) * sizeof *s + 4);
    fill(q, n3, 7, 1.5f, 0.0f); /* logits of a few units: far from uniform */
    fill(dq, n3, 8, 1.0f, 0.0f);
    const double h = 1e-2;
    for (size_t i = 0; i < n3; i++) qp[i] = (float)(q[i] + h * dq[i]);
    be->ops->attention(be, yp, qp, B, C, HW, heads, s);
    for (size_t i = 0; i < n3; i++) qp[i] = (float)(q[i] - h * dq[i]);
    be->ops->attention(be, ym, qp, B, C, HW, heads, s);
    central(fd, yp, ym, h, n);
    be->ops->attention_jvp(be, dy, q, dq, B, C, HW, heads, s);
    double e = nerr_df(fd, dy, n);
    CHECK(e <= OP_FD_TOL, "attention_jvp B=%d C=%d HW=%d heads=%d: %.3g", B, C, HW, heads, e);
    printf("attention_jvp B=%d C=%d HW=%d heads=%d: error %.2e against differences\n", B, C, HW,
           heads, e);
    free(q);
    free(dq);
    free(qp);
    free(yp);
    free(ym);
    free(dy);
    free(fd);
    free(s);
}

int main(void)
{
    dfx_error err;
    be = dfx_backend_create("cpu", 2, &err);
    if (!be) {
        fprintf(stderr, "test_unet_jvp: %s\n", err.msg);
        return 1;
    }
    ops_silu();
    ops_group_norm(3, 8, 16, 4, 1, 0.0f);
    ops_group_norm(2, 6, 9, 3, 0, 0.0f);
    ops_group_norm(2, 4, 25, 1, 1, 5.0f); /* one group, a large mean */
    ops_attention(2, 8, 16, 2);
    ops_attention(3, 6, 9, 1);
    ops_attention(1, 4, 1, 4); /* one position: the output is v, its tangent dv */
    const char *cases[] = {"unet_tiny", "unet_cond", "unet_rgb"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) fixture(cases[i]);
    dfx_backend_destroy(be);
    return check_report("test_unet_jvp");
}
