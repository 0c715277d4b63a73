/* Classifiers (the feature networks of difflux eval) on the CPU backend
 * equal the PyTorch reference on the fixtures of tests/fixtures (written by
 * models/difflux_ref/make_fixtures.py from float64 PyTorch); each sample's
 * features do not depend on the batch; a classifier is refused where a
 * generative model is needed, and malformed classifier configs are refused
 * with a message. */
#include "check.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

static dfx_backend *be;

static void parity(const char *name)
{
    dfx_error err = {{0}};
    dfx_st_file f;
    dfx_model *m = fixture_open(be, name, "io", &f);
    if (!m) return;
    int F = 0, K = 0;
    CHECK(dfx_classifier_dims(m, &F, &K) == 0, "%s: not a classifier", name);
    size_t nx = 0, nf = 0, nl = 0;
    float *x = fixture_tensor(&f, "x", &nx), *wf = fixture_tensor(&f, "features", &nf),
          *wl = fixture_tensor(&f, "logits", &nl);
    int B = (int)(nx / m->dim);
    CHECK(x && wf && wl && nf == (size_t)B * F && nl == (size_t)B * K, "%s: fixture shapes",
          name);
    if (x && wf && wl && nf == (size_t)B * F && nl == (size_t)B * K) {
        /* dfx_classify takes pixels in [0, 1]; the fixture's x is in the data range */
        const double lo = m->cfg.range_lo, span = m->cfg.range_hi - lo;
        float *px = malloc(nx * sizeof *px), *gf = malloc(nf * sizeof *gf),
              *gl = malloc(nl * sizeof *gl);
        for (size_t i = 0; i < nx; i++) px[i] = (float)((x[i] - lo) / span);
        CHECK_OK(dfx_classify(m, px, B, gf, gl, &err), err);
        double ef = 0, el = 0, sf = 0;
        for (size_t i = 0; i < nf; i++) {
            ef = fmax(ef, fabs((double)gf[i] - wf[i]));
            sf = fmax(sf, fabs(wf[i]));
        }
        for (size_t i = 0; i < nl; i++) el = fmax(el, fabs((double)gl[i] - wl[i]));
        printf("%-16s %d images of %dx%dx%d, %zu parameters: max |C - PyTorch| features %.2e "
               "(up to %.2f), logits %.2e\n",
               name, B, m->cfg.channels, m->cfg.height, m->cfg.width, m->info.n_params, ef, sf,
               el);
        CHECK(ef <= 1e-4 * fmax(1.0, sf), "%s: features differ by %.3g", name, ef);
        CHECK(el <= 1e-4 * fmax(1.0, sf), "%s: logits differ by %.3g", name, el);
        /* batch invariance and NULL outputs: each image alone, logits only */
        for (int r = 0; r < B; r++) {
            float one[64];
            if (K > 64) break;
            CHECK_OK(dfx_classify(m, px + (size_t)r * m->dim, 1, NULL, one, &err), err);
            CHECK(memcmp(one, gl + (size_t)r * K, (size_t)K * sizeof(float)) == 0,
                  "%s: image %d alone differs from the batch", name, r);
        }
        free(px);
        free(gf);
        free(gl);
    }
    free(x);
    free(wf);
    free(wl);
    dfx_st_close(&f);
    /* a classifier samples nothing */
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, m);
    dfx_sampler *s = dfx_sampler_create(m, &o, 4, &err);
    CHECK(s == NULL && strstr(err.msg, "classifier"), "%s: sampler on a classifier: %s", name,
          err.msg);
    dfx_sampler_free(s);
    char buf[2048];
    CHECK(dfx_model_describe(m, buf, sizeof buf) > 0 && strstr(buf, "classifier"),
          "%s: describe: %s", name, buf);
    char lab[32];
    CHECK(strcmp(dfx_classifier_label(m, 0, lab, sizeof lab), "class 0") == 0 ||
              strcmp(lab, "0") == 0,
          "%s: label 0 is '%s'", name, lab);
    dfx_model_free(m);
}

/* The fixture with its config edited: the loader must refuse it naming
 * what is wrong. */
static void refuse(const char *from, const char *to, const char *want)
{
    char mpath[512], tmp[] = "/tmp/difflux-test-classifier-XXXXXX";
    snprintf(mpath, sizeof mpath, "%s/fixtures/classifier_tiny.safetensors", DFX_TEST_DATA);
    dfx_error err = {{0}};
    dfx_st_file f;
    if (dfx_st_open(&f, mpath, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    /* rebuild: same tensors, edited config */
    char cfg[4096];
    const char *p = strstr(f.config, from);
    CHECK(p != NULL, "fixture config lacks '%s'", from);
    if (!p) {
        dfx_st_close(&f);
        return;
    }
    snprintf(cfg, sizeof cfg, "%.*s%s%s", (int)(p - f.config), f.config, to, p + strlen(from));
    dfx_st_out outs[64];
    float *bufs[64];
    int n = f.n < 64 ? f.n : 64;
    for (int i = 0; i < n; i++) {
        const dfx_st_tensor *t = &f.tensors[i];
        bufs[i] = malloc(t->numel * sizeof(float));
        dfx_st_to_f32(&f, t, bufs[i]);
        outs[i] = (dfx_st_out){t->name, DFX_F32, t->ndim, {0}, bufs[i]};
        memcpy(outs[i].shape, t->shape, sizeof t->shape);
    }
    int fd = mkstemp(tmp);
    if (fd >= 0) close(fd);
    CHECK_OK(dfx_st_write(tmp, cfg, outs, n, &err), err);
    for (int i = 0; i < n; i++) free(bufs[i]);
    dfx_st_close(&f);
    dfx_model *m = dfx_model_load(tmp, be, &err);
    CHECK(m == NULL && strstr(err.msg, want), "edit '%s' -> '%s': expected /%s/, got '%s'", from,
          to, want, m ? "(loaded)" : err.msg);
    dfx_model_free(m);
    unlink(tmp);
}

int main(void)
{
    dfx_error err = {{0}};
    be = dfx_backend_create("cpu", 2, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    parity("classifier_tiny");
    parity("classifier_rgb");
    refuse("\"groups\":4", "\"groups\":3", "groups = 3 does not divide");
    refuse("\"features\":12", "\"features\":13", "feat.weight");
    refuse("\"channels\":[8,16]", "\"channels\":[]", "classifier.channels is empty");
    refuse("\"num_classes\":5,", "", "classifier.num_classes");
    refuse("\"classifier\":{", "\"classifer\":{", "missing object 'classifier'");
    dfx_backend_destroy(be);
    return check_report("test_classifier");
}
