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

static const char about[] =
    "Measures sampling throughput: for each batch size it warms up, then times\n"
    "whole sampler runs and prints images/s, network evaluations/s, ms per\n"
    "batched evaluation, achieved GFLOP/s (from the model's FLOP count) and the\n"
    "fraction of the machine's peak. Timing comes from commands like this one,\n"
    "never from unit tests.";

typedef struct result {
    int batch;
    double seconds, images_s, evals_s, ms_eval, gflops, peak_frac, nfe;
} result;

typedef struct bench_cmd {
    const char *model, *sampler, *device, *precision, *batches, *json, *max_memory, *scheduler;
    int steps, threads, warmup, repeat, profile, peak_given;
    double peak, mem_limit;
    int bs[MAX_BATCHES], nb;
    /* the run */
    dfx_backend *be;
    dfx_model *m;
    const dfx_model_info *mi;
    size_t dim;
    result res[MAX_BATCHES];
    int nres;
    float *out;
    cJSON *prof; /* --profile, for --json */
} bench_cmd;

static int bench_parse(void *state, int argc, char **argv)
{
    bench_cmd *b = state;
    b->sampler = "heun", b->device = "auto", b->precision = "fp32", b->batches = "1,8,64";
    b->steps = 10, b->warmup = 1, b->repeat = 3;
    cli_opt opts[] = {
        cli_opt_model(&b->model),
        cli_opt_scheduler(&b->scheduler),
        cli_opt_sampler(&b->sampler),
        {"steps", OPT_INT, &b->steps, "N", "sampler steps per run (10)", 0},
        {"batch", OPT_STR, &b->batches, "LIST", "comma-separated batch sizes (1,8,64)", 0},
        cli_opt_device(&b->device),
        cli_opt_precision(&b->precision),
        cli_opt_threads(&b->threads),
        cli_opt_max_memory(&b->max_memory),
        {"warmup", OPT_INT, &b->warmup, "K", "untimed runs per batch size (1)", 0},
        {"repeat", OPT_INT, &b->repeat, "K", "timed runs per batch size (3)", 0},
        {"peak", OPT_DOUBLE, &b->peak, "GFLOPS",
         "the machine's peak for the % column (default: a measured large SGEMM)", 0},
        {"profile", OPT_FLAG, &b->profile, NULL, "split the network's time by operation type", 0},
        {"json", OPT_STR, &b->json, "FILE", "also write the results as JSON", 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    int rc = cli_options("bench", "difflux bench [options]", about, argc, argv, opts, nopts);
    b->peak_given = cli_find(opts, nopts, "peak")->set;
    return rc;
}

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

static int bench_check(void *state)
{
    bench_cmd *b = state;
    if (parse_batches(b->batches, b->bs, &b->nb))
        return fprintf(stderr, "difflux bench: --batch expects sizes like 1,8,64, got '%s'\n",
                       b->batches),
               CLI_USAGE;
    if (b->steps < 1 || b->steps > 1000000 || b->warmup < 0 || b->repeat < 1 || !(b->peak >= 0))
        return fprintf(stderr, "difflux bench: need --steps >= 1 (at most 1000000), --warmup "
                               ">= 0, --repeat >= 1, --peak >= 0\n"),
               CLI_USAGE;
    if (cli_check_threads("bench", b->threads)) return CLI_USAGE;
    if (cli_check_max_memory("bench", b->max_memory, &b->mem_limit)) return CLI_USAGE;
    if (cli_check_sampler("bench", b->sampler)) return CLI_USAGE;
    if (!b->model) b->model = cli_default_model();
    const cli_file outs[1] = {{"json", b->json}}, ins[1] = {{"model", b->model}};
    return cli_check_outputs("bench", outs, 1, ins, 1);
}

/* Backend and model, and every batch size fits, before any timing. */
static int bench_open(bench_cmd *b, dfx_error *err)
{
    b->be = cli_backend_open(b->device, b->threads, b->precision, err);
    b->m = b->be ? cli_model_load(b->model, b->scheduler, b->be, err) : NULL;
    if (!b->m) return -1;
    const dfx_model_info *mi = b->mi = dfx_model_get_info(b->m);
    b->dim = (size_t)mi->channels * mi->height * mi->width;
    for (int bi = 0; bi < b->nb; bi++) {
        dfx_sample_opts o;
        dfx_sample_opts_default(&o, b->m);
        o.sampler = b->sampler;
        double run = (double)dfx_sampler_bytes(b->m, &o, b->bs[bi]),
               out_b = (double)b->bs[bi] * b->dim * 4;
        double weights = (double)mi->n_params * sizeof(float);
        char what[1200];
        snprintf(what, sizeof what, "model %s, %s sampler, batch %d", b->model, b->sampler,
                 b->bs[bi]);
        int gpu = strcmp(dfx_backend_name(b->be), "cpu") != 0;
        if (cli_mem_check(out_b + (gpu ? 0 : run), weights + run + out_b, b->mem_limit, what, "",
                          err))
            return -1;
    }
    return 0;
}

/* Warm-up and timed runs at batch size b->bs[bi], and its table row. */
static int bench_batch(bench_cmd *b, int bi, dfx_error *err)
{
    const int B = b->bs[bi], repeat = b->repeat, last = bi == b->nb - 1;
    dfx_sample_opts o;
    dfx_sample_opts_default(&o, b->m);
    o.sampler = b->sampler;
    o.steps = b->steps;
    dfx_sampler *s = dfx_sampler_create(b->m, &o, B, err);
    float *nb_out = s ? realloc(b->out, (size_t)B * b->dim * sizeof(float)) : NULL;
    if (!nb_out) {
        if (s) snprintf(err->msg, sizeof err->msg, "out of memory for batch %d", B);
        dfx_sampler_free(s);
        return -1;
    }
    b->out = nb_out;
    dfx_sample_stats st;
    int bad = 0;
    for (int w = 0; w < b->warmup && !bad; w++) bad = dfx_sampler_run(s, 0, B, b->out, &st, err);
    if (b->profile && last) dfx_model_profile(b->m, 1, NULL);
    double t0 = dfx_seconds();
    for (int r = 0; r < repeat && !bad; r++)
        bad = dfx_sampler_run(s, (uint64_t)r * B, B, b->out, &st, err);
    double T = dfx_seconds() - t0;
    if (b->profile && last) dfx_model_profile(b->m, 0, NULL);
    dfx_sampler_free(s);
    if (bad) return -1;
    result *q = &b->res[b->nres++];
    q->batch = B;
    q->seconds = T;
    q->nfe = st.nfe_mean;
    q->images_s = (double)B * repeat / T;
    q->evals_s = (double)B * st.nfe_mean * repeat / T;
    q->ms_eval = T * 1e3 / (st.nfe_mean * repeat);
    q->gflops = b->mi->flops * B * st.nfe_mean * repeat / T / 1e9;
    q->peak_frac = b->peak > 0 ? q->gflops / b->peak : 0.0;
    printf("%6d %10.2f %12.1f %12.3f %10.2f %7.1f%% %6.1f\n", B, q->images_s, q->evals_s,
           q->ms_eval, q->gflops, 100.0 * q->peak_frac, q->nfe);
    fflush(stdout);
    return 0;
}

static int bench_run(void *state, dfx_error *err)
{
    bench_cmd *b = state;
    if (bench_open(b, err)) return -1;
    const dfx_model_info *mi = b->mi;
    if (b->peak == 0.0) b->peak = dfx_backend_peak_gflops(b->be);
    printf("model     %s (%s, %.4g MFLOP per evaluation)\n", b->model, mi->kind, mi->flops / 1e6);
    printf("device    %s: %s, %s matrix products\n", dfx_backend_name(b->be),
           dfx_backend_device(b->be), dfx_backend_precision(b->be));
    printf("sampler   %s, %d steps; %d warm-up and %d timed runs per batch size\n", b->sampler,
           b->steps, b->warmup, b->repeat);
    printf("peak      %.1f GFLOP/s (%s)\n\n", b->peak,
           b->peak_given ? "given" : "measured: large GEMM at this precision");
    printf("%6s %10s %12s %12s %10s %8s %6s\n", "batch", "images/s", "evals/s", "ms/eval",
           "GFLOP/s", "%peak", "NFE");
    for (int bi = 0; bi < b->nb; bi++)
        if (bench_batch(b, bi, err)) return -1;
    return 0;
}

/* --profile: the last batch size's time by operation, printed and kept
 * for --json in b->prof. */
static void bench_profile(bench_cmd *b)
{
    const dfx_profile_entry *e;
    int ne = dfx_model_profile(b->m, -1, &e);
    const result *last = &b->res[b->nres - 1];
    double total = last->seconds, net = 0;
    for (int i = 0; i < ne; i++) net += e[i].seconds;
    printf("\nprofile of batch %d (%d timed runs; each op synchronised):\n", last->batch,
           b->repeat);
    printf("%-14s %8s %10s %7s %10s\n", "operation", "calls", "ms", "share", "GFLOP/s");
    b->prof = cJSON_CreateArray();
    for (int i = 0; i < ne; i++) {
        if (!e[i].calls) continue;
        printf("%-14s %8ld %10.2f %6.1f%% %10.2f\n", e[i].name, e[i].calls, e[i].seconds * 1e3,
               100.0 * e[i].seconds / total,
               e[i].seconds > 0 ? e[i].flops / e[i].seconds / 1e9 : 0);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "op", e[i].name);
        cJSON_AddNumberToObject(j, "calls", (double)e[i].calls);
        cJSON_AddNumberToObject(j, "seconds", e[i].seconds);
        cJSON_AddNumberToObject(j, "flops", e[i].flops);
        cJSON_AddItemToArray(b->prof, j);
    }
    printf("%-14s %8s %10.2f %6.1f%%\n", "sampler+other", "", (total - net) * 1e3,
           100.0 * (total - net) / total);
    if (ne == 0) printf("(the %s model has no network ops to profile)\n", b->mi->kind);
}

static int bench_json(bench_cmd *b, dfx_error *err)
{
    const dfx_model_info *mi = b->mi;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "model", b->model);
    cJSON_AddStringToObject(r, "kind", mi->kind);
    cJSON_AddNumberToObject(r, "flops_per_eval", mi->flops);
    cJSON_AddStringToObject(r, "backend", dfx_backend_name(b->be));
    cJSON_AddStringToObject(r, "device", dfx_backend_device(b->be));
    cJSON_AddStringToObject(r, "precision", dfx_backend_precision(b->be));
    cJSON_AddStringToObject(r, "sampler", b->sampler);
    cJSON_AddNumberToObject(r, "steps", b->steps);
    cJSON_AddNumberToObject(r, "repeat", b->repeat);
    cJSON_AddNumberToObject(r, "peak_gflops", b->peak);
    cJSON *arr = cJSON_AddArrayToObject(r, "results");
    for (int i = 0; i < b->nres; i++) {
        const result *q = &b->res[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "batch", q->batch);
        cJSON_AddNumberToObject(j, "seconds", q->seconds);
        cJSON_AddNumberToObject(j, "nfe", q->nfe);
        cJSON_AddNumberToObject(j, "images_per_s", q->images_s);
        cJSON_AddNumberToObject(j, "evals_per_s", q->evals_s);
        cJSON_AddNumberToObject(j, "ms_per_eval", q->ms_eval);
        cJSON_AddNumberToObject(j, "gflops", q->gflops);
        cJSON_AddNumberToObject(j, "peak_fraction", q->peak_frac);
        cJSON_AddItemToArray(arr, j);
    }
    if (b->prof) cJSON_AddItemToObject(r, "profile", b->prof);
    b->prof = NULL;
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    int wrc = text ? dfx_write_text(b->json, text, err) : -1;
    if (!text) snprintf(err->msg, sizeof err->msg, "%s: out of memory", b->json);
    free(text);
    return wrc;
}

/* --profile, and --json. */
static int bench_report(void *state, dfx_error *err)
{
    bench_cmd *b = state;
    if (b->profile) bench_profile(b);
    return b->json ? bench_json(b, err) : 0;
}

static void bench_release(void *state)
{
    bench_cmd *b = state;
    cJSON_Delete(b->prof);
    free(b->out);
    dfx_model_free(b->m);
    dfx_backend_destroy(b->be);
}

const cli_steps cmd_bench = {sizeof(bench_cmd), bench_parse, bench_check, bench_run,
                             bench_report, bench_release};
