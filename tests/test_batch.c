/* Sample i with seed S is the same whatever the batch size, the split of
 * the index range, or the thread count — bit for bit, for every sampler
 * (dopri5 steps each sample on its own, so it holds there too). Also: NaN
 * and Inf during sampling are reported, and bad options are refused. */
#include "check.h"
#include "difflux.h"

#include <stdlib.h>

/* big enough (rows x dim x K) for the CPU backend to use its threads */
enum { C = 1, H = 12, W = 12, DIM = C * H * W, K = 40, NS = 7 };

static int draw(dfx_model *m, const dfx_sample_opts *o, int batch, uint64_t first, int n,
                float *out)
{
    dfx_error err = {{0}};
    dfx_sampler *s = dfx_sampler_create(m, o, batch, &err);
    if (!s) {
        fprintf(stderr, "create: %s\n", err.msg);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i += batch) {
        int rows = n - i < batch ? n - i : batch;
        rc = dfx_sampler_run(s, first + (uint64_t)i, rows, out + (size_t)i * DIM, NULL, &err);
        if (rc) fprintf(stderr, "run: %s\n", err.msg);
    }
    dfx_sampler_free(s);
    return rc;
}

int main(void)
{
    dfx_error err = {{0}};
    float means[K * DIM], stds[K], w[K];
    srand(3);
    for (int i = 0; i < K * DIM; i++) means[i] = (float)rand() / RAND_MAX * 2 - 1;
    for (int k = 0; k < K; k++) {
        stds[k] = 0.05f + 0.01f * k;
        w[k] = 1.0f + k;
    }
    dfx_path p;
    dfx_path_default(&p, DFX_PATH_LINEAR);
    dfx_backend *be1 = dfx_backend_create("cpu", 1, &err);
    dfx_backend *be2 = dfx_backend_create("cpu", 2, &err);
    dfx_model *m1 = dfx_model_gmm_create(be1, &p, C, H, W, -1, 1, K, means, stds, w, &err);
    dfx_model *m2 = dfx_model_gmm_create(be2, &p, C, H, W, -1, 1, K, means, stds, w, &err);
    /* every sampler of the registry: those of all paths on the linear-path
     * mixture, the Dale samplers on the same mixture on the dale path */
    dfx_path pd;
    dfx_path_default(&pd, DFX_PATH_DALE);
    dfx_model *d1 = dfx_model_gmm_create(be1, &pd, C, H, W, -1, 1, K, means, stds, w, &err);
    dfx_model *d2 = dfx_model_gmm_create(be2, &pd, C, H, W, -1, 1, K, means, stds, w, &err);
    CHECK(m1 && m2 && d1 && d2, "mixtures: %s", err.msg);
    const dfx_sampler_desc *list;
    int nsamplers = dfx_samplers(&list);
    CHECK(nsamplers >= 13, "%d samplers", nsamplers);
    for (int si = 0; si < nsamplers && m1 && m2 && d1 && d2; si++) {
        const char *name = list[si].name;
        int dale = strcmp(list[si].families, "all paths") != 0;
        dfx_model *ma = dale ? d1 : m1, *mb = dale ? d2 : m2;
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, ma);
        o.sampler = name;
        o.steps = dale ? 100 : 12; /* aums diverges on a coarse grid */
        o.seed = 99;
        static float ref[NS * DIM], got[NS * DIM];
        CHECK(draw(ma, &o, NS, 0, NS, ref) == 0, "%s batch %d", name, NS);
        const int batches[] = {1, 2, 3, 5};
        for (size_t b = 0; b < 4; b++) {
            memset(got, 0, sizeof got);
            CHECK(draw(ma, &o, batches[b], 0, NS, got) == 0, "draw");
            CHECK(memcmp(got, ref, sizeof ref) == 0, "%s: batch %d differs from batch %d",
                  name, batches[b], NS);
        }
        /* samples 3..6 drawn on their own (another process's share) */
        CHECK(draw(ma, &o, 4, 3, 4, got) == 0, "draw");
        CHECK(memcmp(got, ref + 3 * DIM, 4 * DIM * sizeof(float)) == 0,
              "%s: samples 3..6 differ when drawn from --start-index 3", name);
        /* two threads */
        CHECK(draw(mb, &o, NS, 0, NS, got) == 0, "draw");
        CHECK(memcmp(got, ref, sizeof ref) == 0, "%s: 2 threads differ from 1", name);
        /* and the seed matters */
        o.seed = 100;
        CHECK(draw(ma, &o, NS, 0, NS, got) == 0, "draw");
        CHECK(memcmp(got, ref, sizeof ref) != 0, "%s: seed ignored", name);
    }

    /* dfx_sampler_nfe knows before the run what the run counts: every
     * sampler, with and without the final denoising step, plus the
     * options that change the count (pc's corrector steps, the paper
     * recipe's inner updates, restart's intervals) */
    for (int si = 0; si < nsamplers && m1 && d1; si++) {
        for (int v = 0; v < 3; v++) {
            int dale = strcmp(list[si].families, "all paths") != 0;
            dfx_model *ma = dale ? d1 : m1;
            dfx_sample_opts o;
            dfx_sample_opts_default(&o, ma);
            o.sampler = list[si].name;
            o.steps = dale ? 100 : 12;
            if (v == 1) o.denoise = 0;
            if (v == 2) {
                if (strcmp(o.sampler, "pc") == 0) o.corrector_steps = 3;
                else if (dale) o.recipe = DFX_RECIPE_PAPER;
                else if (strcmp(o.sampler, "restart") == 0) {
                    const double iv[2][4] = {{0.1, 0.5, 3, 2}, {0.5, 2.0, 1, 4}};
                    o.restart_n = 2;
                    memcpy(o.restart, iv, sizeof iv);
                } else
                    continue;
            }
            dfx_sampler *s = dfx_sampler_create(ma, &o, 2, &err);
            CHECK(s != NULL, "%s: %s", o.sampler, err.msg);
            if (!s) continue;
            float out[2 * DIM];
            dfx_sample_stats st;
            long plan = dfx_sampler_nfe(s);
            CHECK_OK(dfx_sampler_run(s, 0, 2, out, &st, &err), err);
            if (list[si].nfe_per_step == 0)
                CHECK(plan == -1, "%s: adaptive, planned %ld", o.sampler, plan);
            else
                CHECK(plan == st.nfe, "%s (case %d): planned %ld evaluations, ran %ld", o.sampler,
                      v, plan, st.nfe);
            dfx_sampler_free(s);
        }
    }

    /* NaN/Inf during sampling is detected and named. */
    {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m1);
        o.sampler = "em";
        o.eps0 = 1e38; /* the noise overflows float */
        /* the stability bound refuses it before any work (issue #23) ... */
        dfx_sampler *s = dfx_sampler_create(m1, &o, 2, &err);
        CHECK(s == NULL && strstr(err.msg, "unstable") && strstr(err.msg, "--allow-unstable"),
              "eps0 = 1e38 must be refused before sampling: %s", s ? "created" : err.msg);
        dfx_sampler_free(s);
        /* ... and, when run anyway, the overflow is caught */
        o.unstable = 1;
        s = dfx_sampler_create(m1, &o, 2, &err);
        CHECK(s != NULL, "%s", err.msg);
        float out[2 * DIM];
        err.msg[0] = 0;
        CHECK(s && dfx_sampler_run(s, 0, 2, out, NULL, &err) != 0, "overflow must be reported");
        CHECK(strstr(err.msg, "NaN/Inf") && strstr(err.msg, "step"), "message: %s", err.msg);
        dfx_sampler_free(s);
    }

    /* Options that cannot work are refused with a message. */
    {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m1);
        o.sampler = "nope";
        CHECK(!dfx_sampler_create(m1, &o, 2, &err) && strstr(err.msg, "unknown sampler"), "%s",
              err.msg);
        dfx_sample_opts_default(&o, m1);
        o.steps = -1;
        CHECK(!dfx_sampler_create(m1, &o, 2, &err) && strstr(err.msg, "--steps"), "%s", err.msg);
        dfx_sample_opts_default(&o, m1);
        o.sampler = "em";
        o.noise = DFX_NOISE_DIFFUSION; /* infinite at t = 0 on an interpolant */
        CHECK(!dfx_sampler_create(m1, &o, 2, &err) && strstr(err.msg, "--noise"), "%s", err.msg);
        dfx_sample_opts_default(&o, m1);
        o.t_data = 1.0; /* the data end itself: the final x_hat conversion is fine but the
                           velocity from x_hat is singular there for heun's last stage */
        o.grid = DFX_GRID_UNIFORM; /* logsnr (the default) refuses s = 0 at once */
        CHECK(!dfx_sampler_create(m1, &o, 2, &err) && strstr(err.msg, "singular"), "%s",
              err.msg);
        dfx_sample_opts_default(&o, m1);
        dfx_sampler *s = dfx_sampler_create(m1, &o, 2, &err);
        float out[3 * DIM];
        CHECK(s && dfx_sampler_run(s, 0, 3, out, NULL, &err) != 0, "batch above the plan");
        dfx_sampler_free(s);
    }
    dfx_model_free(m1);
    dfx_model_free(m2);
    dfx_model_free(d1);
    dfx_model_free(d2);
    dfx_backend_destroy(be1);
    dfx_backend_destroy(be2);
    return check_report("test_batch");
}
