/* difflux info: what a model file holds. */
#include "model/model.h"
#include "io/safetensors.h"
#include "sampler/sampler.h"
#include "args.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char about[] =
    "Describes a model file: kind, path, prediction, image shape, data range,\n"
    "parameter count, FLOPs per evaluation, provenance, and the memory that\n"
    "sampling needs (weights, and the default sampler's state with the network's\n"
    "scratch per batch size, on the CPU with all cores).";

typedef struct info_cmd {
    const char *model, *scheduler;
    int tensors;
    dfx_backend *be;
    dfx_model *m;
} info_cmd;

static int info_parse(void *state, int argc, char **argv)
{
    info_cmd *c = state;
    cli_opt opts[] = {
        cli_opt_model(&c->model),
        cli_opt_scheduler(&c->scheduler),
        {"tensors", OPT_FLAG, &c->tensors, NULL, "also list every stored tensor", 0},
    };
    return cli_options("info", "difflux info [--model FILE]", about, argc, argv, opts, 3);
}

/* The description, the memory line for generative models and --tensors. */
static int info_run(void *state, dfx_error *err)
{
    info_cmd *c = state;
    const char *model = c->model ? c->model : cli_default_model();
    /* all cores, as difflux sample: the convolutions' scratch is per thread */
    c->be = dfx_backend_create("cpu", 0, err);
    dfx_model *m = c->m = c->be ? cli_model_load(model, c->scheduler, c->be, err) : NULL;
    if (!m) return -1;
    char buf[8192];
    dfx_model_describe(m, buf, sizeof buf);
    fputs(buf, stdout);
    if (dfx_model_generative(m, NULL) == 0) {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        const dfx_model_info *mi = dfx_model_get_info(m);
        char w[32], b1[32], b64[32], s64[32];
        printf("memory       weights %s; %s sampling needs %s more at batch 1, %s at batch "
               "64 (of which network scratch %s)\n",
               cli_format_bytes((double)mi->n_params * sizeof(float), w, sizeof w), o.sampler,
               cli_format_bytes((double)dfx_sampler_bytes(m, &o, 1), b1, sizeof b1),
               cli_format_bytes((double)dfx_sampler_bytes(m, &o, 64), b64, sizeof b64),
               cli_format_bytes((double)dfx_model_scratch_bytes(m, 64), s64, sizeof s64));
    }
    dfx_st_file f;
    char weights[2048], *cfg = NULL;
    snprintf(weights, sizeof weights, "%s", model);
    if (c->tensors && dfx_diffusers_looks(model, 0) &&
        dfx_diffusers_config(model, c->scheduler, &cfg, weights, sizeof weights, err))
        return -1;
    free(cfg);
    if (c->tensors && dfx_st_open(&f, weights, err) == 0) {
        printf("tensors      %d\n", f.n);
        for (int i = 0; i < f.n; i++) {
            const dfx_st_tensor *t = &f.tensors[i];
            printf("  %-32s %-4s [", t->name, dfx_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++)
                printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
            printf("]\n");
        }
        dfx_st_close(&f);
    }
    return 0;
}

static void info_release(void *state)
{
    info_cmd *c = state;
    dfx_model_free(c->m);
    dfx_backend_destroy(c->be);
}

const cli_steps cmd_info = {sizeof(info_cmd), info_parse, NULL, info_run, NULL, info_release};
