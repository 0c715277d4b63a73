/* The U-Net on the CPU backend equals the PyTorch reference on the
 * fixtures of tests/fixtures (written by models/difflux_ref/make_fixtures.py
 * from float64 PyTorch); every sampler runs on a U-Net; the loader refuses
 * malformed U-Net files; the affine model is A x + b. */
#include "check.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

static dfx_backend *be;

/* Max |C - PyTorch| over the fixture's outputs. */
static double parity(const char *name)
{
    dfx_error err = {{0}};
    dfx_st_file f;
    dfx_model *m = fixture_open(be, name, "io", &f);
    if (!m) return INFINITY;
    size_t nx = 0, nt = 0, ny = 0, no = 0;
    float *x = fixture_tensor(&f, "x", &nx), *t = fixture_tensor(&f, "t", &nt);
    float *y = fixture_tensor(&f, "y", &ny), *want = fixture_tensor(&f, "out", &no);
    int B = (int)nt;
    double worst = INFINITY;
    if (x && t && y && want && nx == no && nx == (size_t)B * m->dim) {
        double td[64];
        int labels[64];
        for (int r = 0; r < B; r++) {
            td[r] = t[r];
            labels[r] = (int)y[r];
        }
        if (m->info.num_classes > 0) dfx_unet_force_labels(m, labels);
        float *got = malloc(nx * sizeof *got);
        CHECK_OK(dfx_model_eval_host(m, td, x, B, m->cfg.prediction, got, &err), err);
        worst = 0;
        double scale = 0;
        for (size_t i = 0; i < nx; i++) {
            double e = fabs((double)got[i] - want[i]);
            if (!(e <= worst)) worst = e;
            if (fabs(want[i]) > scale) scale = fabs(want[i]);
        }
        printf("%-10s %d samples of %dx%dx%d, %zu parameters, %.3g FLOPs: max |C - PyTorch| = "
               "%.2e (outputs up to %.2f)\n",
               name, B, m->cfg.channels, m->cfg.height, m->cfg.width, m->info.n_params,
               m->info.flops, worst, scale);
        /* batch invariance: each sample alone gives the same numbers */
        for (int r = 0; r < B; r++) {
            float one[4096];
            if (m->dim > 4096) break;
            if (m->info.num_classes > 0) dfx_unet_force_labels(m, labels + r);
            CHECK_OK(dfx_model_eval_host(m, td + r, x + r * m->dim, 1, m->cfg.prediction, one,
                                         &err),
                     err);
            CHECK(memcmp(one, got + r * m->dim, m->dim * sizeof(float)) == 0,
                  "%s: sample %d alone differs from the batch", name, r);
        }
        free(got);
    } else {
        CHECK(0, "%s: fixture tensors missing or inconsistent", name);
    }
    free(x);
    free(t);
    free(y);
    free(want);
    dfx_st_close(&f);
    dfx_model_free(m);
    return worst;
}

/* Classifier-free guidance is P_u + w (P_c - P_u) of the two evaluations. */
static void guidance(void)
{
    char mpath[512];
    snprintf(mpath, sizeof mpath, "%s/fixtures/unet_cond.safetensors", DFX_TEST_DATA);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(mpath, be, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return;
    enum { B = 2 };
    size_t n = B * m->dim;
    float *x = malloc(n * sizeof *x), *g = malloc(n * sizeof *g), *c = malloc(n * sizeof *c),
          *u = malloc(n * sizeof *u);
    dfx_normal_host(3, 0, B, m->dim, 0, 0, x);
    double t[B] = {0.3, 0.7};
    CHECK_OK(dfx_model_set_class(m, 1, 2.5, &err), err);
    CHECK_OK(dfx_model_eval_host(m, t, x, B, DFX_PRED_EPS, g, &err), err);
    CHECK_OK(dfx_model_set_class(m, 1, 1.0, &err), err);
    CHECK_OK(dfx_model_eval_host(m, t, x, B, DFX_PRED_EPS, c, &err), err);
    CHECK_OK(dfx_model_set_class(m, DFX_CLASS_NONE, 1.0, &err), err);
    CHECK_OK(dfx_model_eval_host(m, t, x, B, DFX_PRED_EPS, u, &err), err);
    double worst = 0, spread = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs(g[i] - (u[i] + 2.5 * (c[i] - u[i]))));
        spread = fmax(spread, fabs(c[i] - u[i]));
    }
    CHECK(worst < 1e-5 && spread > 1e-2, "guided %g off P_u + w (P_c - P_u) (class effect %g)",
          worst, spread);
    /* guidance also holds after conversion: the velocity of the guided
     * prediction is the guided velocity (conversions are affine) */
    CHECK_OK(dfx_model_set_class(m, 2, 0.0, &err), err); /* w = 0: unconditional */
    CHECK_OK(dfx_model_eval_host(m, t, x, B, DFX_PRED_EPS, g, &err), err);
    worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(g[i] - u[i]));
    CHECK(worst < 1e-5, "guidance 0 should give the unconditional prediction (%g)", worst);
    free(x);
    free(g);
    free(c);
    free(u);
    dfx_model_free(m);
}

static void samplers_run(void)
{
    char mpath[512];
    snprintf(mpath, sizeof mpath, "%s/fixtures/unet_tiny.safetensors", DFX_TEST_DATA);
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(mpath, be, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return;
    const dfx_sampler_desc *d;
    int n = dfx_samplers(&d);
    for (int i = 0; i < n; i++) {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = d[i].name;
        o.steps = 4;
        o.rtol = o.atol = 1e-2;
        if (strstr(d[i].families, "dale")) { /* a flow model: refused, with the reason */
            CHECK(!dfx_sampler_create(m, &o, 3, &err) && strstr(err.msg, "dale path"),
                  "%s on a flow model: %s", d[i].name, err.msg);
            continue;
        }
        dfx_sampler *s = dfx_sampler_create(m, &o, 3, &err);
        CHECK(s != NULL, "%s on a U-Net: %s", d[i].name, err.msg);
        if (!s) continue;
        float out[3 * 64];
        dfx_sample_stats st;
        CHECK_OK(dfx_sampler_run(s, 0, 3, out, &st, &err), err);
        int finite = 1;
        for (int j = 0; j < 3 * 64; j++) finite &= isfinite(out[j]) != 0;
        CHECK(finite && st.nfe > 0, "%s on a U-Net: finite output", d[i].name);
        dfx_sampler_free(s);
    }
    /* an unconditional model refuses a class */
    CHECK(dfx_model_set_class(m, 3, 2.0, &err) != 0 && strstr(err.msg, "unconditional"), "%s",
          err.msg);
    dfx_model_free(m);
}

/* Rewrites a fixture with one change and expects the loader to refuse it. */
static void malformed(void)
{
    char mpath[512], out[] = "/tmp/difflux-test-unet-XXXXXX";
    snprintf(mpath, sizeof mpath, "%s/fixtures/unet_tiny.safetensors", DFX_TEST_DATA);
    CHECK(mkdtemp(out) != NULL, "mkdtemp");
    char bad[600];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", out);
    dfx_error err = {{0}};
    dfx_st_file f;
    if (dfx_st_open(&f, mpath, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    enum { DROP, EXTRA, RESHAPE, BADCFG, NCASES };
    const char *want[NCASES] = {"missing tensor 'mid.attn.proj.bias'", "unknown tensor 'bogus'",
                                "tensor 'conv_in.weight' has shape",
                                "unet.groups = 3 does not divide"};
    for (int c = 0; c < NCASES; c++) {
        dfx_st_out *t = calloc((size_t)f.n + 1, sizeof *t);
        float **vals = calloc((size_t)f.n + 1, sizeof *vals);
        int n = 0;
        for (int i = 0; i < f.n; i++) {
            const dfx_st_tensor *s = &f.tensors[i];
            if (c == DROP && strcmp(s->name, "mid.attn.proj.bias") == 0) continue;
            vals[n] = malloc(s->numel * sizeof(float) + 4);
            dfx_st_to_f32(&f, s, vals[n]);
            t[n] = (dfx_st_out){s->name, DFX_F32, s->ndim, {0}, vals[n]};
            memcpy(t[n].shape, s->shape, sizeof s->shape);
            if (c == RESHAPE && strcmp(s->name, "conv_in.weight") == 0) {
                /* same numbers, transposed kernel layout [3, 3, Cout, Cin] is refused */
                int64_t sh[4] = {s->shape[2], s->shape[3], s->shape[0], s->shape[1]};
                memcpy(t[n].shape, sh, sizeof sh);
            }
            n++;
        }
        if (c == EXTRA) {
            vals[n] = calloc(1, sizeof(float));
            t[n] = (dfx_st_out){"bogus", DFX_F32, 1, {1}, vals[n]};
            n++;
        }
        char *cfg = NULL;
        cJSON *root = cJSON_Parse(f.config);
        if (c == BADCFG)
            cJSON_ReplaceItemInObject(cJSON_GetObjectItem(root, "unet"), "groups",
                                      cJSON_CreateNumber(3));
        cfg = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        CHECK_OK(dfx_st_write(bad, cfg, t, n, &err), err);
        dfx_model *m = dfx_model_load(bad, be, &err);
        CHECK(m == NULL && strstr(err.msg, want[c]) && strstr(err.msg, bad),
              "case %d: message '%s', expected '%s'", c, err.msg, want[c]);
        dfx_model_free(m);
        for (int i = 0; i < n; i++) free(vals[i]);
        free(vals);
        free(t);
        free(cfg);
    }
    dfx_st_close(&f);
    unlink(bad);
    rmdir(out);
}

/* A U-Net on the dale path predicting "eps" (the noise in y = log x): the
 * network sees x = exp(y), its output is the eps prediction as it is, the
 * score in y is -eps / s(t), the multiplicative score x grad_x log p is
 * that minus 1, and the exact JVP in y matches finite differences. */
static void dale_eps(void)
{
    char mpath[512], out[] = "/tmp/difflux-test-unet-XXXXXX", file[600];
    snprintf(mpath, sizeof mpath, "%s/fixtures/unet_tiny.safetensors", DFX_TEST_DATA);
    CHECK(mkdtemp(out) != NULL, "mkdtemp");
    snprintf(file, sizeof file, "%s/dale.safetensors", out);
    dfx_error err = {{0}};
    dfx_st_file f;
    if (dfx_st_open(&f, mpath, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    dfx_st_out *t = calloc((size_t)f.n, sizeof *t);
    float **vals = calloc((size_t)f.n, sizeof *vals);
    for (int i = 0; i < f.n; i++) {
        const dfx_st_tensor *s = &f.tensors[i];
        vals[i] = malloc(s->numel * sizeof(float));
        dfx_st_to_f32(&f, s, vals[i]);
        t[i] = (dfx_st_out){s->name, DFX_F32, s->ndim, {0}, vals[i]};
        memcpy(t[i].shape, s->shape, sizeof s->shape);
    }
    cJSON *root = cJSON_Parse(f.config);
    cJSON *path = cJSON_CreateObject();
    cJSON_AddStringToObject(path, "family", "dale");
    cJSON_AddNumberToObject(path, "sigma", 0.8);
    cJSON_AddNumberToObject(path, "mu", 0.32);
    cJSON_ReplaceItemInObject(root, "path", path);
    cJSON_ReplaceItemInObject(root, "prediction", cJSON_CreateString("eps"));
    char *cfg = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    CHECK_OK(dfx_st_write(file, cfg, t, f.n, &err), err);
    for (int i = 0; i < f.n; i++) free(vals[i]);
    free(vals);
    free(t);
    free(cfg);
    dfx_st_close(&f);
    dfx_model *m0 = dfx_model_load(mpath, be, &err), *m1 = dfx_model_load(file, be, &err);
    CHECK(m0 && m1, "%s", err.msg);
    if (m0 && m1) {
        enum { B = 2 };
        const size_t D = m1->dim, n = B * D;
        double tt[B] = {0.3, 0.8};
        float *y = malloc(n * 4), *x = malloc(n * 4), *raw = malloc(n * 4), *e = malloc(n * 4),
              *sc = malloc(n * 4), *h = malloc(n * 4), *v = malloc(n * 4), *f0 = malloc(n * 4),
              *jv = malloc(n * 4), *fd = malloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            y[i] = (float)(0.35 + 0.3 * sin(0.37 * (double)i));
            x[i] = expf(y[i]);
            v[i] = (float)cos(0.11 * (double)i);
        }
        CHECK_OK(dfx_model_eval_host(m0, tt, x, B, m0->cfg.prediction, raw, &err), err);
        CHECK_OK(dfx_model_eval_host(m1, tt, y, B, DFX_PRED_EPS, e, &err), err);
        CHECK_OK(dfx_model_eval_host(m1, tt, y, B, DFX_PRED_SCORE, sc, &err), err);
        CHECK_OK(dfx_model_hyvarinen(m1, tt, x, h, B, &err), err);
        double de = 0, ds = 0, dh = 0;
        for (int r = 0; r < B; r++)
            for (size_t i = 0; i < D; i++) {
                size_t k = r * D + i;
                double s = -raw[k] / (0.8 * sqrt(tt[r]));
                de = fmax(de, fabs((double)e[k] - raw[k]));
                ds = fmax(ds, fabs(sc[k] - s) / (1 + fabs(s)));
                dh = fmax(dh, fabs(h[k] - (s - 1)) / (1 + fabs(s)));
            }
        CHECK(de == 0, "dale eps: the eps prediction is not the network's output (%.3g)", de);
        CHECK(ds < 1e-5, "dale eps: score in y is not -eps / s(t) (%.3g)", ds);
        CHECK(dh < 1e-5, "dale eps: x grad_x log p is not score - 1 (%.3g)", dh);
        /* exact JVP in y against central differences */
        CHECK_OK(dfx_model_jvp_host(m1, tt, y, v, B, DFX_PRED_EPS, DFX_JVP_EXACT, 0, f0, jv, &err),
                 err);
        CHECK_OK(dfx_model_jvp_host(m1, tt, y, v, B, DFX_PRED_EPS, DFX_JVP_FD, 1e-3, f0, fd, &err),
                 err);
        double dj = 0, sj = 0;
        for (size_t i = 0; i < n; i++) {
            dj = fmax(dj, fabs((double)jv[i] - fd[i]));
            sj = fmax(sj, fabs(jv[i]));
        }
        CHECK(dj < 2e-2 * fmax(1, sj), "dale eps: JVP vs finite differences %.3g (scale %.3g)", dj,
              sj);
        printf("dale eps network: eps = network(exp y) exactly, score and x grad log p to %.1e, "
               "JVP vs FD %.1e (scale %.2f)\n",
               fmax(ds, dh), dj, sj);
        free(y), free(x), free(raw), free(e), free(sc), free(h), free(v), free(f0), free(jv),
            free(fd);
    }
    dfx_model_free(m0);
    dfx_model_free(m1);
    unlink(file);
    rmdir(out);
}

static void affine(void)
{
    char dir[] = "/tmp/difflux-test-affine-XXXXXX", path[600];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/affine.safetensors", dir);
    enum { D = 6 };
    float A[D * D], b[D];
    for (int i = 0; i < D * D; i++) A[i] = (float)((i * 7) % 11 - 5) / 4.0f;
    for (int i = 0; i < D; i++) b[i] = 0.5f * i - 1.0f;
    const char *cfg = "{\"version\":1,\"kind\":\"affine\",\"image\":{\"channels\":1,\"height\":2,"
                      "\"width\":3},\"path\":{\"family\":\"vp\"},\"prediction\":\"score\"}";
    dfx_st_out t[2] = {{"affine.A", DFX_F32, 2, {D, D}, A}, {"affine.b", DFX_F32, 1, {D}, b}};
    dfx_error err = {{0}};
    CHECK_OK(dfx_st_write(path, cfg, t, 2, &err), err);
    dfx_model *m = dfx_model_load(path, be, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (m) {
        float x[2 * D], out[2 * D];
        double tt[2] = {0.3, 0.8};
        for (int i = 0; i < 2 * D; i++) x[i] = (float)(i % 5) - 2.0f;
        CHECK_OK(dfx_model_eval_host(m, tt, x, 2, DFX_PRED_SCORE, out, &err), err);
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < D; i++) {
                double want = b[i];
                for (int j = 0; j < D; j++) want += (double)A[i * D + j] * x[r * D + j];
                CHECK_NEAR(out[r * D + i], want, 1e-5, "A x + b");
            }
        /* and it converts like any score model: eps = -s S */
        CHECK_OK(dfx_model_eval_host(m, tt, x, 2, DFX_PRED_EPS, x, &err), err);
        dfx_coef c;
        dfx_path_eval(&m->cfg.path, 0.3, &c);
        CHECK_NEAR(x[0], -c.s * out[0], 1e-5, "eps from the affine score");
        CHECK(!m->analytic, "an affine model is not path-free");
        dfx_model_free(m);
    }
    unlink(path);
    rmdir(dir);
}

/* The CPU convolution (im2col + GEMM) against the definition, summed in
 * double, over the shapes whose edges im2col treats specially: strides,
 * paddings wider or narrower than the kernel, odd sizes, 1x1. */
static void conv_direct(void)
{
    static const int cases[][7] = {
        /* Cin H  W  Cout k stride pad */
        {3, 7, 9, 4, 3, 1, 1}, {2, 8, 8, 3, 3, 2, 1}, {2, 9, 7, 2, 3, 2, 1},
        {1, 6, 5, 2, 5, 1, 2}, {2, 6, 6, 2, 5, 3, 3}, {3, 5, 5, 2, 1, 1, 0},
        {2, 6, 7, 3, 1, 2, 0}, {1, 4, 4, 1, 3, 1, 0}, {2, 3, 3, 2, 3, 1, 2},
        /* "same" convolutions, also narrower than the kernel */
        {2, 28, 28, 3, 3, 1, 1}, {1, 2, 2, 2, 5, 1, 2}, {1, 1, 3, 1, 5, 1, 2},
        {2, 3, 1, 2, 7, 1, 3}, {1, 5, 4, 1, 3, 1, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int Cin = cases[c][0], H = cases[c][1], W = cases[c][2], Cout = cases[c][3],
                  k = cases[c][4], st = cases[c][5], pad = cases[c][6], B = 3;
        const int Ho = (H + 2 * pad - k) / st + 1, Wo = (W + 2 * pad - k) / st + 1;
        const size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * k * k,
                     ny = (size_t)B * Cout * Ho * Wo;
        float *x = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float));
        float *bias = malloc((size_t)Cout * sizeof(float)), *y = malloc(ny * sizeof(float));
        float *scratch = malloc((be->ops->conv_scratch(be, B, Cin, H, W, k, st, pad) + 1) *
                                sizeof(float));
        for (size_t i = 0; i < nx; i++) x[i] = (float)sin(0.7 * i + c);
        for (size_t i = 0; i < nw; i++) w[i] = (float)cos(1.3 * i);
        for (int o = 0; o < Cout; o++) bias[o] = 0.1f * o;
        be->ops->conv2d(be, y, x, w, bias, B, Cin, H, W, Cout, k, st, pad, scratch);
        double worst = 0;
        for (int b = 0; b < B; b++)
            for (int o = 0; o < Cout; o++)
                for (int oy = 0; oy < Ho; oy++)
                    for (int ox = 0; ox < Wo; ox++) {
                        double acc = bias[o];
                        for (int ci = 0; ci < Cin; ci++)
                            for (int ky = 0; ky < k; ky++)
                                for (int kx = 0; kx < k; kx++) {
                                    int iy = oy * st - pad + ky, ix = ox * st - pad + kx;
                                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                    acc += (double)w[((o * Cin + ci) * k + ky) * k + kx] *
                                           x[(((size_t)b * Cin + ci) * H + iy) * W + ix];
                                }
                        double e = fabs(acc - y[(((size_t)b * Cout + o) * Ho + oy) * Wo + ox]);
                        if (e > worst) worst = e;
                    }
        CHECK(worst < 1e-5, "conv %dx%d k%d stride %d pad %d: max error %.3g", H, W, k, st, pad,
              worst);
        free(x);
        free(w);
        free(bias);
        free(y);
        free(scratch);
    }
}

int main(void)
{
    dfx_error err;
    be = dfx_backend_create("cpu", 2, &err);
    const char *cases[] = {"unet_tiny", "unet_cond", "unet_rgb", "unet_f16", "unet_bf16"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double e = parity(cases[i]);
        CHECK(e <= 1e-4, "%s: max error %.3g exceeds 1e-4", cases[i], e);
    }
    conv_direct();
    guidance();
    samplers_run();
    malformed();
    dale_eps();
    affine();
    dfx_backend_destroy(be);
    return check_report("test_unet");
}
