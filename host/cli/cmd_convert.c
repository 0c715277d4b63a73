/* difflux convert: a diffusers model as one native difflux file. */
#include "core/error.h"
#include "args.h"
#include "cli.h"
#include "io/safetensors.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char about[] =
    "Writes a diffusers model (a pipeline folder, a unet folder or its safetensors\n"
    "file; README \"Models from diffusers\") as one difflux model file: the UNet2DModel\n"
    "config, the scheduler's schedule as the discrete path, and every tensor under\n"
    "its diffusers name in its own precision. The file records where it came from\n"
    "(provenance.converted_from). It is checked by loading it back before it is kept.";

typedef struct convert_cmd {
    const char *model, *scheduler, *out;
    char *config;
    dfx_backend *be;
} convert_cmd;

static int convert_parse(void *state, int argc, char **argv)
{
    convert_cmd *c = state;
    cli_opt opts[] = {
        {"model", OPT_STR, &c->model, "DIR", "diffusers model: pipeline folder, unet folder or "
                                             "safetensors file (required)", 0},
        cli_opt_scheduler(&c->scheduler),
        {"out", OPT_STR, &c->out, "FILE", "difflux model file to write (required)", 0},
    };
    return cli_options("convert", "difflux convert --model DIR --out FILE", about, argc, argv,
                       opts, 3);
}

static int convert_check(void *state)
{
    convert_cmd *c = state;
    if (!c->model || !c->out) {
        fprintf(stderr, "difflux convert: --model DIR and --out FILE are required\n");
        return CLI_USAGE;
    }
    const cli_file outs[1] = {{"out", c->out}}, ins[1] = {{"model", c->model}};
    return cli_check_outputs("convert", outs, 1, ins, 1);
}

static int convert_run(void *state, dfx_error *err)
{
    convert_cmd *c = state;
    char weights[2048];
    /* the whole model loads (every tensor named and checked) before anything is written */
    c->be = dfx_backend_create("cpu", 1, err);
    if (!c->be) return -1;
    dfx_model *m = cli_model_load(c->model, c->scheduler, c->be, err);
    if (!m) return -1;
    dfx_model_free(m);
    if (dfx_diffusers_config(c->model, c->scheduler, &c->config, weights, sizeof weights, err))
        return -1;
    cJSON *cfg = cJSON_Parse(c->config);
    cJSON *prov = cJSON_GetObjectItemCaseSensitive(cfg, "provenance");
    if (prov) cJSON_AddStringToObject(prov, "converted_from", c->model);
    char *txt = cfg ? cJSON_PrintUnformatted(cfg) : NULL;
    cJSON_Delete(cfg);
    dfx_st_file f;
    if (!txt || dfx_st_open(&f, weights, err)) {
        free(txt);
        return txt ? -1 : dfx_fail(err, "out of memory");
    }
    dfx_st_out *t = calloc((size_t)f.n, sizeof *t);
    float **data = calloc((size_t)f.n, sizeof *data);
    int rc = t && data ? 0 : dfx_fail(err, "out of memory");
    for (int i = 0; i < f.n && rc == 0; i++) {
        const dfx_st_tensor *s = &f.tensors[i];
        data[i] = malloc((s->numel ? s->numel : 1) * sizeof(float));
        if (!data[i]) {
            rc = dfx_fail(err, "out of memory for tensor '%s'", s->name);
            break;
        }
        dfx_st_to_f32(&f, s, data[i]);
        t[i].name = s->name;
        t[i].dtype = s->dtype == DFX_F16 || s->dtype == DFX_BF16 ? s->dtype : DFX_F32;
        t[i].ndim = s->ndim;
        memcpy(t[i].shape, s->shape, sizeof t[i].shape);
        t[i].data = data[i];
    }
    if (rc == 0) rc = dfx_st_write(c->out, txt, t, f.n, err);
    for (int i = 0; data && i < f.n; i++) free(data[i]);
    free(data);
    free(t);
    dfx_st_close(&f);
    free(txt);
    if (rc == 0) { /* the written file loads as a native model */
        m = dfx_model_load(c->out, c->be, err);
        if (!m) return dfx_fail_prefix(err, "the converted file does not load back");
        printf("wrote %s (%zu parameters, kind diffusers, path discrete)\n", c->out,
               dfx_model_get_info(m)->n_params);
        dfx_model_free(m);
    }
    return rc;
}

static void convert_release(void *state)
{
    convert_cmd *c = state;
    free(c->config);
    dfx_backend_destroy(c->be);
}

const cli_steps cmd_convert = {sizeof(convert_cmd), convert_parse, convert_check, convert_run,
                               NULL, convert_release};
