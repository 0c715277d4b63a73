/*
 * Models saved by diffusers (README "Models from diffusers"): where a
 * pipeline folder, a unet folder or a safetensors file keeps its parts,
 * the scheduler's config as a discrete path (MATH.md section 7), and the
 * native config of kind "diffusers" (models/FORMAT.md) that the model
 * loader reads together with the diffusers tensors, as they are.
 */
#include "core/error.h"
#include "io/fileio.h"
#include "io/safetensors.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JSON_MAX (64u << 20)

static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* The parts of a diffusers model at `path`: its weights, its unet config
 * and its scheduler config ("" if none). */
static int locate(const char *path, char *weights, char *ucfg, char *sched, size_t cap,
                  dfx_error *err)
{
    sched[0] = 0;
    if (dfx_is_dir(path)) {
        char p[2048];
        snprintf(p, sizeof p, "%s/unet/config.json", path);
        if (exists(p)) { /* a pipeline */
            snprintf(ucfg, cap, "%s", p);
            snprintf(weights, cap, "%s/unet/diffusion_pytorch_model.safetensors", path);
            snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", path);
            if (exists(p)) snprintf(sched, cap, "%s", p);
        } else {
            snprintf(p, sizeof p, "%s/config.json", path);
            if (!exists(p))
                return dfx_fail(err,
                                "%s: a folder, but not a diffusers model (no unet/config.json "
                                "and no config.json)",
                                path);
            snprintf(ucfg, cap, "%s", p);
            snprintf(weights, cap, "%s/diffusion_pytorch_model.safetensors", path);
        }
        if (!exists(weights))
            return dfx_fail(err, "%s: no weights at %s (diffusers writes safetensors with "
                                 "safe_serialization, the default)",
                            path, weights);
        return 0;
    }
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 1;
    snprintf(ucfg, cap, "%.*s/config.json", dl, slash ? path : ".");
    snprintf(weights, cap, "%s", path);
    if (!exists(ucfg))
        return dfx_fail(err, "%s: not a difflux model, and no diffusers config.json beside it",
                        path);
    return 0;
}

/* Python's json writes -Infinity, Infinity and NaN (diffusers' configs
 * hold lambda_min_clipped = -Infinity): outside strings they become null
 * (read as "absent") before the strict parse. */
static void python_json(char *t)
{
    static const char *const words[] = {"-Infinity", "Infinity", "NaN"};
    int in = 0;
    for (char *p = t; *p; p++) {
        if (in) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '"')
                in = 0;
            continue;
        }
        if (*p == '"') {
            in = 1;
            continue;
        }
        for (int w = 0; w < 3; w++) {
            size_t n = strlen(words[w]);
            if (strncmp(p, words[w], n) == 0) {
                memcpy(p, "null", 4);
                memset(p + 4, ' ', n - 4);
                p += n - 1;
                break;
            }
        }
    }
}

static cJSON *read_json(const char *file, const char *what, dfx_error *err)
{
    size_t len = 0;
    char *txt = dfx_read_text(file, what, JSON_MAX, &len, err);
    if (!txt) return NULL;
    python_json(txt);
    cJSON *j = dfx_json_parse_strict(txt, len, 1, file, err);
    free(txt);
    if (j && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        dfx_fail(err, "%s: not a JSON object", file);
        return NULL;
    }
    return j;
}

static const cJSON *key(const cJSON *o, const char *k)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNull(j) ? NULL : j;
}

static int sched_fail(const char *file, const char *k, const cJSON *v, const char *why,
                      dfx_error *err)
{
    char *txt = v ? cJSON_PrintUnformatted(v) : NULL;
    int rc = dfx_fail(err, "%s: scheduler config: %s = %s %s", file, k, txt ? txt : "?", why);
    cJSON_free(txt);
    return rc;
}

static int num(const cJSON *o, const char *k, double dflt, double *out, const char *file,
               dfx_error *err)
{
    const cJSON *j = key(o, k);
    *out = dflt;
    if (!j) return 0;
    if (!cJSON_IsNumber(j)) return sched_fail(file, k, j, "is not a number", err);
    *out = j->valuedouble;
    return 0;
}

static int flag(const cJSON *o, const char *k, int dflt, int *out, const char *file,
                dfx_error *err)
{
    const cJSON *j = key(o, k);
    *out = dflt;
    if (!j) return 0;
    if (!cJSON_IsBool(j)) return sched_fail(file, k, j, "is not true or false", err);
    *out = cJSON_IsTrue(j);
    return 0;
}

static const char *str(const cJSON *o, const char *k, const char *dflt)
{
    const cJSON *j = key(o, k);
    return cJSON_IsString(j) ? j->valuestring : dflt;
}

/* diffusers' betas_for_alpha_bar with the cosine transform (squaredcos_cap_v2). */
static double cos_abar(double t)
{
    double c = cos((t + 0.008) / 1.008 * 3.14159265358979323846 / 2.0);
    return c * c;
}

/* UniPC's or DEIS's solver_order and solver_type as the model's --order and
 * --variant; what difflux's unipc and deis do not run is refused. */
static int multistep_options(dfx_model_config *c, const cJSON *s, int unipc, const char *file,
                             dfx_error *err)
{
    double ord = 2;
    if (num(s, "solver_order", 2, &ord, file, err)) return -1;
    if (!(ord >= 1 && ord <= 3 && ord == floor(ord)))
        return sched_fail(file, "solver_order", key(s, "solver_order"), "is not 1, 2 or 3", err);
    c->sampler_order = (int)ord;
    const char *st = str(s, "solver_type", unipc ? "bh2" : "logrho");
    if (unipc ? strcmp(st, "bh1") != 0 && strcmp(st, "bh2") != 0 : strcmp(st, "logrho") != 0)
        return sched_fail(file, "solver_type", key(s, "solver_type"),
                          unipc ? "is not bh1 or bh2" : "is not logrho", err);
    snprintf(c->sampler_variant, sizeof c->sampler_variant, "%s", st);
    int lof = 1, x0 = 1;
    if (flag(s, "lower_order_final", 1, &lof, file, err) ||
        (unipc && flag(s, "predict_x0", 1, &x0, file, err)))
        return -1;
    if (!lof)
        return sched_fail(file, "lower_order_final", key(s, "lower_order_final"),
                          "false is not supported (difflux lowers the order below 15 steps)", err);
    if (!x0)
        return sched_fail(file, "predict_x0", key(s, "predict_x0"),
                          "false is not supported (difflux's unipc runs on x_hat)", err);
    const cJSON *dc = key(s, "disable_corrector"), *sp = key(s, "solver_p");
    if (dc && !(cJSON_IsArray(dc) && cJSON_GetArraySize(dc) == 0))
        return sched_fail(file, "disable_corrector", dc, "is not supported", err);
    if (sp && !cJSON_IsNull(sp))
        return sched_fail(file, "solver_p", sp, "is not supported", err);
    const char *alg = str(s, "algorithm_type", "deis");
    if (!unipc && strcmp(alg, "deis") != 0)
        return sched_fail(file, "algorithm_type", key(s, "algorithm_type"), "is not deis", err);
    return 0;
}

/* The scheduler's schedule and its sampling conventions into c (path,
 * prediction, x_hat post-processing, the sampler that matches it); sched
 * NULL: DDPMScheduler's defaults. Numbers as diffusers keeps them: betas
 * in float32. */
static int schedule(dfx_model_config *c, const cJSON *s, const char *file, dfx_error *err)
{
    const char *cls = str(s, "_class_name", "DDPMScheduler");
    const int ddpm = strcmp(cls, "DDPMScheduler") == 0,
              ddim = strcmp(cls, "DDIMScheduler") == 0,
              dpm = strcmp(cls, "DPMSolverMultistepScheduler") == 0,
              unipc = strcmp(cls, "UniPCMultistepScheduler") == 0,
              deis = strcmp(cls, "DEISMultistepScheduler") == 0;
    /* the multistep schedulers share DPM-Solver's timesteps and have no clip_sample */
    const int multi = dpm || unipc || deis;
    double N_ = 1000, b0, b1;
    if (num(s, "num_train_timesteps", 1000, &N_, file, err) ||
        num(s, "beta_start", 1e-4, &b0, file, err) || num(s, "beta_end", 0.02, &b1, file, err))
        return -1;
    if (!(N_ >= 2 && N_ <= 1000000 && N_ == floor(N_)))
        return sched_fail(file, "num_train_timesteps", key(s, "num_train_timesteps"),
                          "is not an integer in [2, 1000000]", err);
    const int N = (int)N_;
    double *betas = dfx_alloc((size_t)N, sizeof *betas, "betas", err);
    if (!betas) return -1;
    const cJSON *tb = key(s, "trained_betas");
    const char *bs = str(s, "beta_schedule", "linear");
    int rc = 0;
    if (tb) {
        if (!cJSON_IsArray(tb) || cJSON_GetArraySize(tb) != N)
            rc = dfx_fail(err, "%s: scheduler config: trained_betas must list %d numbers", file,
                          N);
        for (int i = 0; i < N && rc == 0; i++) {
            const cJSON *e = cJSON_GetArrayItem(tb, i);
            betas[i] = cJSON_IsNumber(e) ? (float)e->valuedouble : NAN;
        }
    } else if (strcmp(bs, "linear") == 0) {
        for (int i = 0; i < N; i++) betas[i] = (float)(b0 + (b1 - b0) * i / (N - 1));
    } else if (strcmp(bs, "scaled_linear") == 0) {
        for (int i = 0; i < N; i++) {
            float r = (float)(sqrt(b0) + (sqrt(b1) - sqrt(b0)) * i / (N - 1));
            betas[i] = r * r;
        }
    } else if (strcmp(bs, "squaredcos_cap_v2") == 0) {
        for (int i = 0; i < N; i++)
            betas[i] = (float)fmin(1.0 - cos_abar((i + 1.0) / N) / cos_abar((double)i / N), 0.999);
    } else {
        rc = sched_fail(file, "beta_schedule", key(s, "beta_schedule"),
                        "is not one of linear, scaled_linear, squaredcos_cap_v2 (or give "
                        "trained_betas)",
                        err);
    }
    if (rc == 0) rc = dfx_config_discrete(c, betas, N, file, err);
    free(betas);
    if (rc) return -1;
    int zsnr = 0, karras = 0, clip = 0, thr = 0, one = 1;
    if (flag(s, "rescale_betas_zero_snr", 0, &zsnr, file, err) ||
        flag(s, "use_karras_sigmas", 0, &karras, file, err) ||
        flag(s, "clip_sample", ddim || !multi, &clip, file, err) ||
        flag(s, "thresholding", 0, &thr, file, err) ||
        flag(s, "set_alpha_to_one", 1, &one, file, err))
        return -1;
    if (zsnr)
        return sched_fail(file, "rescale_betas_zero_snr", key(s, "rescale_betas_zero_snr"),
                          "is not supported", err);
    if (karras)
        return sched_fail(file, "use_karras_sigmas", key(s, "use_karras_sigmas"),
                          "is not supported: drop it and use difflux's --grid karras", err);
    const char *kinds[] = {"use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"};
    for (int k = 0; k < 3; k++) {
        int on = 0;
        if (flag(s, kinds[k], 0, &on, file, err)) return -1;
        if (on) return sched_fail(file, kinds[k], key(s, kinds[k]), "is not supported", err);
    }
    const char *vt = str(s, "variance_type", "fixed_small");
    if (!multi && strcmp(vt, "fixed_small") != 0)
        return sched_fail(file, "variance_type", key(s, "variance_type"),
                          "is not supported (difflux's ddpm uses fixed_small)", err);
    const char *pt = str(s, "prediction_type", "epsilon");
    if (strcmp(pt, "epsilon") == 0)
        c->prediction = DFX_PRED_EPS;
    else if (strcmp(pt, "v_prediction") == 0)
        c->prediction = DFX_PRED_V;
    else if (strcmp(pt, "sample") == 0)
        c->prediction = DFX_PRED_DATA;
    else
        return sched_fail(file, "prediction_type", key(s, "prediction_type"),
                          "is not one of epsilon, v_prediction, sample", err);
    const char *sp = str(s, "timestep_spacing", multi ? "linspace" : "leading");
    int spacing = dfx_spacing_parse(sp);
    if (spacing < 0)
        return sched_fail(file, "timestep_spacing", key(s, "timestep_spacing"),
                          "is not one of leading, trailing, linspace", err);
    double off = 0.0;
    if (num(s, "steps_offset", 0, &off, file, err)) return -1;
    if (!(off >= 0 && off < N && off == floor(off)))
        return sched_fail(file, "steps_offset", key(s, "steps_offset"), "is out of range", err);
    c->path.spacing = spacing;
    c->path.steps_offset = (int)off;
    c->path.dpm_timesteps = multi;
    c->path.final_one = ddim ? one : 1;
    if (dpm || unipc) c->path.final_one = strcmp(str(s, "final_sigmas_type", "zero"), "zero") == 0;
    if (deis) c->path.final_one = 0; /* DEIS ends at sigma of abar_0 */
    if (clip && !multi && num(s, "clip_sample_range", 1.0, &c->clip, file, err)) return -1;
    if (thr) {
        if (num(s, "dynamic_thresholding_ratio", 0.995, &c->thr_ratio, file, err) ||
            num(s, "sample_max_value", 1.0, &c->thr_max, file, err))
            return -1;
        c->clip = 0.0; /* thresholding replaces the clip, as in diffusers */
    }
    const char *alg = str(s, "algorithm_type", "dpmsolver++");
    /* another class (PNDM, Euler, Heun, LMS, ...): its beta schedule and
     * prediction only, with DDPMScheduler's defaults for the rest; no
     * sampler of difflux claims to be it (the default one samples) */
    snprintf(c->sampler, sizeof c->sampler, "%s",
             dpm     ? (strstr(alg, "sde") ? "dpmpp_2m_sde" : "dpmpp_2m")
             : unipc ? "unipc"
             : deis  ? "deis"
             : ddim  ? "ddim"
             : ddpm  ? "ddpm"
                     : "");
    if (unipc || deis) return multistep_options(c, s, unipc, file, err);
    return 0;
}

/* The native config (as JSON text) of the diffusers model at `path`, and
 * the file that holds its weights. */
static char *native_config(const char *path, const char *sched_file, char *weights, size_t cap,
                           dfx_error *err)
{
    char ucfg[2048], sfound[2048];
    if (cap < sizeof ucfg) {
        dfx_fail(err, "%s: internal: a weights path buffer of %zu bytes is too small", path, cap);
        return NULL;
    }
    if (locate(path, weights, ucfg, sfound, sizeof ucfg, err)) return NULL;
    const char *sf = sched_file ? sched_file : sfound[0] ? sfound : NULL;
    cJSON *unet = read_json(ucfg, "unet config", err);
    cJSON *sched = unet && sf ? read_json(sf, "scheduler config", err) : NULL;
    char *txt = NULL;
    dfx_model_config c;
    memset(&c, 0, sizeof c);
    if (!unet || (sf && !sched)) goto done;
    int C = 3, H = 0, W = 0;
    const cJSON *ic = key(unet, "in_channels"), *ss = key(unet, "sample_size");
    if (ic && cJSON_IsNumber(ic)) C = (int)ic->valuedouble;
    if (cJSON_IsNumber(ss)) {
        H = W = (int)ss->valuedouble;
    } else if (cJSON_IsArray(ss) && cJSON_GetArraySize(ss) == 2 &&
               cJSON_IsNumber(cJSON_GetArrayItem(ss, 0)) &&
               cJSON_IsNumber(cJSON_GetArrayItem(ss, 1))) {
        H = (int)cJSON_GetArrayItem(ss, 0)->valuedouble;
        W = (int)cJSON_GetArrayItem(ss, 1)->valuedouble;
    } else {
        dfx_fail(err, "%s: unet config: sample_size must be a size or [height, width] (difflux "
                      "samples at the size the model was trained for)",
                 ucfg);
        goto done;
    }
    c.channels = C;
    c.height = H;
    c.width = W;
    c.range_lo = -1.0;
    c.range_hi = 1.0;
    if (schedule(&c, sched, sf ? sf : ucfg, err)) goto done;
    cJSON *r = dfx_config_to_json(&c);
    cJSON_ReplaceItemInObjectCaseSensitive(r, "kind", cJSON_CreateString("diffusers"));
    cJSON_AddStringToObject(r, "sampler", c.sampler);
    if (c.sampler_order || c.sampler_variant[0]) {
        cJSON *so = cJSON_AddObjectToObject(r, "sampler_options");
        if (c.sampler_order) cJSON_AddNumberToObject(so, "order", c.sampler_order);
        if (c.sampler_variant[0]) cJSON_AddStringToObject(so, "variant", c.sampler_variant);
    }
    cJSON *prov = cJSON_GetObjectItemCaseSensitive(r, "provenance");
    char desc[8192];
    snprintf(desc, sizeof desc, "diffusers UNet2DModel (%s, diffusers %s); schedule %s from %s%s",
             ucfg, str(unet, "_diffusers_version", "?"),
             sched ? str(sched, "_class_name", "?") : "DDPMScheduler defaults",
             sf ? sf : "(no scheduler config: DDPMScheduler's defaults)",
             c.sampler[0] ? ""
                          : " (a scheduler difflux has no sampler for: only its beta schedule and "
                            "prediction type are used, sampled by heun unless --sampler)");
    cJSON_ReplaceItemInObjectCaseSensitive(prov, "description", cJSON_CreateString(desc));
    cJSON_AddItemToObject(r, "unet", cJSON_Duplicate(unet, 1));
    txt = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    if (!txt) dfx_fail(err, "out of memory");
done:
    dfx_config_free(&c);
    cJSON_Delete(unet);
    cJSON_Delete(sched);
    return txt;
}

int dfx_diffusers_looks(const char *path, int foreign)
{
    dfx_error e;
    char w[2048], u[2048], s[2048];
    return (dfx_is_dir(path) || foreign) && locate(path, w, u, s, sizeof w, &e) == 0;
}

int dfx_diffusers_config(const char *path, const char *scheduler, char **config, char *weights,
                         size_t cap, dfx_error *err)
{
    *config = native_config(path, scheduler, weights, cap, err);
    return *config ? 0 : -1;
}
