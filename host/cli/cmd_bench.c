/* difflux bench: sampler throughput for a list of batch sizes. */
#include "args.h"
#include "cli.h"
#include "difflux.h"
#include "draw.h"
#include "sampler/sampler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BATCHES 32

static int parse_batches(const char *s, int *b, int *n)
{
    double v[MAX_BATCHES];
    if (cli_parse_list(s, v, MAX_BATCHES, n)) return -1;
    for (int i = 0; i < *n; i++) {
        if (v[i] < 1 || v[i] > 1 << 20 || v[i] != floor(v[i])) return -1;
        b[i] = (int)v[i];
    }
    return 0;
}

typedef struct result {
    int batch;
    double seconds, images_s, evals_s, ms_eval, gflops, peak_frac, nfe;
} result;

int cmd_bench(int argc, char **argv)
{
    const char *model = NULL, *sampler = "heun", *device = "auto", *precision = "fp32", *batches = "1,8,64",
               *json = NULL, *max_memory = NULL;
    int steps = 10, threads = 0, warmup = 1, repeat = 3, profile = 0;
    double peak = 0.0;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "FILE", "model file (default: models/mnist-flow.safetensors)", 0},
        {"sampler", OPT_STR, &sampler, "NAME", "sampler (heun)", 0},
        {"steps", OPT_INT, &steps, "N", "sampler steps per run (10)", 0},
        {"batch", OPT_STR, &batches, "LIST", "comma-separated batch sizes (1,8,64)", 0},
        {"device", OPT_STR, &device, "D", "cpu, cuda or auto (auto)", 0},
        {"precision", OPT_STR, &precision, "P",
         "matrix products in fp32 (default), or tf32 / bf16 tensor-core math (cuda)", 0},
        {"threads", OPT_INT, &threads, "T", "CPU threads, at most 1024 (0 = all cores)", 0},
        {"max-memory", OPT_STR, &max_memory, "SIZE",
         "refuse batch sizes needing more, e.g. 8G (default: the memory available)", 0},
        {"warmup", OPT_INT, &warmup, "K", "untimed runs per batch size (1)", 0},
        {"repeat", OPT_INT, &repeat, "K", "timed runs per batch size (3)", 0},
        {"peak", OPT_DOUBLE, &peak, "GFLOPS",
         "the machine's peak for the % column (default: a measured large SGEMM)", 0},
        {"profile", OPT_FLAG, &profile, NULL, "split the network's time by operation type", 0},
        {"json", OPT_STR, &json, "FILE", "also write the results as JSON", 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    int help, rc = cli_parse("bench", argc, argv, opts, nopts, &help);
    if (rc) return rc;
    if (help) {
        cli_usage(stdout, "difflux bench [options]",
                  "Measures sampling throughput: for each batch size it warms up, then times\n"
                  "whole sampler runs and prints images/s, network evaluations/s, ms per\n"
                  "batched evaluation, achieved GFLOP/s (from the model's FLOP count) and the\n"
                  "fraction of the machine's peak. Timing comes from commands like this one,\n"
                  "never from unit tests.",
                  opts, nopts);
        return CLI_OK;
    }
    int bs[MAX_BATCHES], nb;
    if (parse_batches(batches, bs, &nb))
        return fprintf(stderr, "difflux bench: --batch expects sizes like 1,8,64, got '%s'\n",
                       batches),
               CLI_USAGE;
    if (steps < 1 || steps > 1000000 || warmup < 0 || repeat < 1 || !(peak >= 0))
        return fprintf(stderr, "difflux bench: need --steps >= 1 (at most 1000000), --warmup "
                               ">= 0, --repeat >= 1, --peak >= 0\n"),
               CLI_USAGE;
    if (cli_check_threads("bench", threads)) return CLI_USAGE;
    double mem_limit = 0;
    if (cli_check_max_memory("bench", max_memory, &mem_limit)) return CLI_USAGE;
    if (!cli_known_sampler(sampler))
        return fprintf(stderr, "difflux bench: unknown --sampler '%s' (difflux samplers lists "
                               "them)\n",
                       sampler),
               CLI_USAGE;
    if (!model) model = cli_default_model();
    {
        const cli_file outs[1] = {{"json", json}}, ins[1] = {{"model", model}};
        if ((rc = cli_check_outputs("bench", outs, 1, ins, 1))) return rc;
    }
    dfx_error err = {{0}};
    dfx_backend *be = dfx_backend_create(device, threads, &err);
    if (!be) return fprintf(stderr, "difflux bench: %s\n", err.msg), CLI_FAIL;
    if (dfx_backend_set_precision(be, precision, &err)) {
        fprintf(stderr, "difflux bench: %s\n", err.msg);
        dfx_backend_destroy(be);
        return CLI_FAIL;
    }
    dfx_model *m = dfx_model_load(model, be, &err);
    result res[MAX_BATCHES];
    int nres = 0;
    float *out = NULL;
    rc = CLI_FAIL;
    if (!m) goto done;
    const dfx_model_info *mi = dfx_model_get_info(m);
    size_t dim = (size_t)mi->channels * mi->height * mi->width;
    for (int bi = 0; bi < nb; bi++) { /* every batch size fits, before any timing */
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = sampler;
        double run = (double)dfx_sampler_bytes(m, &o, bs[bi]), out_b = (double)bs[bi] * dim * 4;
        double weights = (double)mi->n_params * sizeof(float);
        char what[1200];
        snprintf(what, sizeof what, "model %s, %s sampler, batch %d", model, sampler, bs[bi]);
        int gpu = strcmp(dfx_backend_name(be), "cpu") != 0;
        if (cli_mem_check(out_b + (gpu ? 0 : run), weights + run + out_b, mem_limit, what, "",
                          &err))
            goto done;
    }
    if (peak == 0.0) peak = dfx_backend_peak_gflops(be);
    printf("model     %s (%s, %.4g MFLOP per evaluation)\n", model, mi->kind, mi->flops / 1e6);
    printf("device    %s: %s, %s matrix products\n", dfx_backend_name(be),
           dfx_backend_device(be), dfx_backend_precision(be));
    printf("sampler   %s, %d steps; %d warm-up and %d timed runs per batch size\n", sampler, steps,
           warmup, repeat);
    printf("peak      %.1f GFLOP/s (%s)\n\n", peak,
           cli_find(opts, nopts, "peak")->set ? "given" : "measured: large GEMM at this precision");
    printf("%6s %10s %12s %12s %10s %8s %6s\n", "batch", "images/s", "evals/s", "ms/eval",
           "GFLOP/s", "%peak", "NFE");
    for (int bi = 0; bi < nb; bi++) {
        int B = bs[bi];
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, m);
        o.sampler = sampler;
        o.steps = steps;
        dfx_sampler *s = dfx_sampler_create(m, &o, B, &err);
        float *nb_out = s ? realloc(out, (size_t)B * dim * sizeof(float)) : NULL;
        if (!nb_out) {
            if (s) snprintf(err.msg, sizeof err.msg, "out of memory for batch %d", B);
            dfx_sampler_free(s);
            goto done;
        }
        out = nb_out;
        dfx_sample_stats st;
        int bad = 0;
        for (int w = 0; w < warmup && !bad; w++) bad = dfx_sampler_run(s, 0, B, out, &st, &err);
        if (profile && bi == nb - 1) dfx_model_profile(m, 1, NULL);
        double t0 = dfx_seconds();
        for (int r = 0; r < repeat && !bad; r++)
            bad = dfx_sampler_run(s, (uint64_t)r * B, B, out, &st, &err);
        double T = dfx_seconds() - t0;
        if (profile && bi == nb - 1) dfx_model_profile(m, 0, NULL);
        dfx_sampler_free(s);
        if (bad) goto done;
        result *q = &res[nres++];
        q->batch = B;
        q->seconds = T;
        q->nfe = st.nfe_mean;
        q->images_s = (double)B * repeat / T;
        q->evals_s = (double)B * st.nfe_mean * repeat / T;
        q->ms_eval = T * 1e3 / (st.nfe_mean * repeat);
        q->gflops = mi->flops * B * st.nfe_mean * repeat / T / 1e9;
        q->peak_frac = peak > 0 ? q->gflops / peak : 0.0;
        printf("%6d %10.2f %12.1f %12.3f %10.2f %7.1f%% %6.1f\n", B, q->images_s, q->evals_s,
               q->ms_eval, q->gflops, 100.0 * q->peak_frac, q->nfe);
        fflush(stdout);
    }
    cJSON *prof = NULL;
    if (profile) {
        const dfx_profile_entry *e;
        int ne = dfx_model_profile(m, -1, &e);
        double total = res[nres - 1].seconds, net = 0;
        for (int i = 0; i < ne; i++) net += e[i].seconds;
        printf("\nprofile of batch %d (%d timed runs; each op synchronised):\n", res[nres - 1].batch,
               repeat);
        printf("%-14s %8s %10s %7s %10s\n", "operation", "calls", "ms", "share", "GFLOP/s");
        prof = cJSON_CreateArray();
        for (int i = 0; i < ne; i++) {
            if (!e[i].calls) continue;
            printf("%-14s %8ld %10.2f %6.1f%% %10.2f\n", e[i].name, e[i].calls, e[i].seconds * 1e3,
                   100.0 * e[i].seconds / total, e[i].seconds > 0 ? e[i].flops / e[i].seconds / 1e9 : 0);
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "op", e[i].name);
            cJSON_AddNumberToObject(j, "calls", (double)e[i].calls);
            cJSON_AddNumberToObject(j, "seconds", e[i].seconds);
            cJSON_AddNumberToObject(j, "flops", e[i].flops);
            cJSON_AddItemToArray(prof, j);
        }
        printf("%-14s %8s %10.2f %6.1f%%\n", "sampler+other", "", (total - net) * 1e3,
               100.0 * (total - net) / total);
        if (ne == 0) printf("(the %s model has no network ops to profile)\n", mi->kind);
    }
    if (json) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "model", model);
        cJSON_AddStringToObject(r, "kind", mi->kind);
        cJSON_AddNumberToObject(r, "flops_per_eval", mi->flops);
        cJSON_AddStringToObject(r, "backend", dfx_backend_name(be));
        cJSON_AddStringToObject(r, "device", dfx_backend_device(be));
        cJSON_AddStringToObject(r, "precision", dfx_backend_precision(be));
        cJSON_AddStringToObject(r, "sampler", sampler);
        cJSON_AddNumberToObject(r, "steps", steps);
        cJSON_AddNumberToObject(r, "repeat", repeat);
        cJSON_AddNumberToObject(r, "peak_gflops", peak);
        cJSON *arr = cJSON_AddArrayToObject(r, "results");
        for (int i = 0; i < nres; i++) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddNumberToObject(j, "batch", res[i].batch);
            cJSON_AddNumberToObject(j, "seconds", res[i].seconds);
            cJSON_AddNumberToObject(j, "nfe", res[i].nfe);
            cJSON_AddNumberToObject(j, "images_per_s", res[i].images_s);
            cJSON_AddNumberToObject(j, "evals_per_s", res[i].evals_s);
            cJSON_AddNumberToObject(j, "ms_per_eval", res[i].ms_eval);
            cJSON_AddNumberToObject(j, "gflops", res[i].gflops);
            cJSON_AddNumberToObject(j, "peak_fraction", res[i].peak_frac);
            cJSON_AddItemToArray(arr, j);
        }
        if (prof) cJSON_AddItemToObject(r, "profile", prof);
        prof = NULL;
        char *text = cJSON_Print(r);
        cJSON_Delete(r);
        int wrc = text ? dfx_write_text(json, text, &err) : -1;
        if (!text) snprintf(err.msg, sizeof err.msg, "%s: out of memory", json);
        free(text);
        if (wrc) goto done;
    }
    cJSON_Delete(prof);
    rc = CLI_OK;
done:
    if (rc) fprintf(stderr, "difflux bench: %s\n", err.msg);
    free(out);
    dfx_model_free(m);
    dfx_backend_destroy(be);
    return rc;
}
