/* The model config: JSON stored in the safetensors __metadata__ (models/FORMAT.md). */
#include "core/error.h"
#include "core/names.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int get_int(const cJSON *obj, const char *key, int lo, int hi, int *out,
                   const char *file, const char *where, dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j) return dfx_fail(err, "%s: config: missing %s.%s", file, where, key);
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < lo ||
        j->valuedouble > hi)
        return dfx_fail(err, "%s: config: %s.%s must be an integer in [%d, %d]", file, where,
                        key, lo, hi);
    *out = (int)j->valuedouble;
    return 0;
}

/* Optional positive number; keeps *out when absent. */
static int get_opt_pos(const cJSON *obj, const char *key, double *out, const char *file,
                       dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j) return 0;
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0.0) || !isfinite(j->valuedouble))
        return dfx_fail(err, "%s: config: path.%s must be a positive number", file, key);
    *out = j->valuedouble;
    return 0;
}

static void get_str(const cJSON *obj, const char *key, char *out, size_t cap)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsString(j)) snprintf(out, cap, "%s", j->valuestring);
}

static const char *const spacing_names[] = {"leading", "trailing", "linspace"};

const char *dfx_spacing_name(int spacing)
{
    return dfx_enum_name(spacing_names, 3, spacing);
}

int dfx_spacing_parse(const char *name)
{
    return dfx_enum_parse(spacing_names, 3, name);
}

int dfx_config_discrete(dfx_model_config *c, const double *betas, int N, const char *file,
                        dfx_error *err)
{
    if (N < 2 || N > 1000000)
        return dfx_fail(err, "%s: a discrete schedule needs 2 .. 1000000 timesteps (got %d)",
                        file, N);
    double *l = dfx_alloc((size_t)N, sizeof *l, "schedule", err);
    if (!l) return -1;
    double acc = 0.0;
    for (int i = 0; i < N; i++) {
        if (!(betas[i] >= 0.0 && betas[i] < 1.0)) {
            free(l);
            return dfx_fail(err, "%s: schedule: beta %d = %g is not in [0, 1)", file, i,
                            betas[i]);
        }
        acc += log1p(-betas[i]);
        l[i] = acc;
    }
    if (!(acc < 0.0)) {
        free(l);
        return dfx_fail(err, "%s: schedule: every beta is 0 (no noise is ever added)", file);
    }
    free(c->log_abar);
    c->log_abar = l;
    c->path.family = DFX_PATH_DISCRETE;
    c->path.n_train = N;
    c->path.log_abar = l;
    return 0;
}

/* The discrete family's fields: "betas" [N], "spacing", "steps_offset",
 * "dpm_timesteps", "final_one". */
static int parse_discrete(dfx_model_config *c, const cJSON *j, const char *file, dfx_error *err)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "betas");
    int N = cJSON_IsArray(b) ? cJSON_GetArraySize(b) : 0;
    if (N < 2) return dfx_fail(err, "%s: config: path.betas must be a list of betas", file);
    double *betas = dfx_alloc((size_t)N, sizeof *betas, "betas", err);
    if (!betas) return -1;
    int i = 0, rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, b) betas[i++] = cJSON_IsNumber(e) ? e->valuedouble : NAN;
    rc = dfx_config_discrete(c, betas, N, file, err);
    free(betas);
    if (rc) return -1;
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(j, "spacing");
    if (sp) {
        int k = cJSON_IsString(sp) ? dfx_spacing_parse(sp->valuestring) : -1;
        if (k < 0)
            return dfx_fail(err, "%s: config: path.spacing must be leading, trailing or linspace",
                            file);
        c->path.spacing = k;
    }
    if (cJSON_GetObjectItemCaseSensitive(j, "steps_offset") &&
        get_int(j, "steps_offset", 0, N - 1, &c->path.steps_offset, file, "path", err))
        return -1;
    const char *flags[2] = {"dpm_timesteps", "final_one"};
    int *dst[2] = {&c->path.dpm_timesteps, &c->path.final_one};
    c->path.final_one = 1;
    for (int k = 0; k < 2; k++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, flags[k]);
        if (!f) continue;
        if (!cJSON_IsBool(f))
            return dfx_fail(err, "%s: config: path.%s must be true or false", file, flags[k]);
        *dst[k] = cJSON_IsTrue(f);
    }
    return 0;
}

/* "xhat": {"clip": r, "threshold_ratio": q, "threshold_max": v}, all optional. */
static int parse_xhat(dfx_model_config *c, const cJSON *j, const char *file, dfx_error *err)
{
    if (!j) return 0;
    if (!cJSON_IsObject(j)) return dfx_fail(err, "%s: config: xhat must be an object", file);
    const char *keys[3] = {"clip", "threshold_ratio", "threshold_max"};
    double *dst[3] = {&c->clip, &c->thr_ratio, &c->thr_max};
    for (int k = 0; k < 3; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
        if (!v) continue;
        if (!cJSON_IsNumber(v) || !(v->valuedouble > 0.0) || !isfinite(v->valuedouble) ||
            (k == 1 && v->valuedouble > 1.0))
            return dfx_fail(err, "%s: config: xhat.%s must be a positive number%s", file,
                            keys[k], k == 1 ? " at most 1" : "");
        *dst[k] = v->valuedouble;
    }
    if (c->thr_ratio > 0.0 && !(c->thr_max >= 1.0))
        return dfx_fail(err, "%s: config: xhat.threshold_max must be at least 1", file);
    return 0;
}

static int parse_path(dfx_path *p, const cJSON *j, const char *file, dfx_error *err)
{
    if (!cJSON_IsObject(j)) return dfx_fail(err, "%s: config: missing object 'path'", file);
    const cJSON *fam = cJSON_GetObjectItemCaseSensitive(j, "family");
    dfx_path_family f;
    if (!cJSON_IsString(fam) || dfx_path_parse(fam->valuestring, &f) != 0)
        return dfx_fail(err,
                        "%s: config: path.family must be one of linear, trig, vp, vp_cosine, "
                        "ve, dale, discrete",
                        file);
    dfx_path_default(p, f);
    if (get_opt_pos(j, "beta_min", &p->beta_min, file, err) ||
        get_opt_pos(j, "beta_max", &p->beta_max, file, err) ||
        get_opt_pos(j, "cosine_s", &p->cosine_s, file, err) ||
        get_opt_pos(j, "sigma_min", &p->sigma_min, file, err) ||
        get_opt_pos(j, "sigma_max", &p->sigma_max, file, err) ||
        get_opt_pos(j, "sigma", &p->dale_sigma, file, err) ||
        get_opt_pos(j, "mu", &p->dale_mu, file, err))
        return -1;
    if (p->beta_max <= p->beta_min)
        return dfx_fail(err, "%s: config: path.beta_max must exceed beta_min", file);
    if (p->sigma_max <= p->sigma_min)
        return dfx_fail(err, "%s: config: path.sigma_max must exceed sigma_min", file);
    return 0;
}

int dfx_config_parse(dfx_model_config *c, const char *json, const char *file, dfx_error *err)
{
    memset(c, 0, sizeof *c);
    if (!json) return dfx_fail(err, "%s: no difflux config in the file's __metadata__", file);
    /* strict: no duplicate keys, nothing after the value, every number a
     * finite float32 (the walk names the key at fault) */
    c->root = dfx_json_parse_strict(json, strlen(json), 1, file, err);
    if (!c->root) return -1;
    const cJSON *r = c->root;
    if (!cJSON_IsObject(r)) goto bad;
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(r, "version");
    if (!cJSON_IsNumber(ver) || ver->valuedouble != 1.0) {
        dfx_fail(err, "%s: config: version must be 1", file);
        goto fail;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(r, "kind");
    if (!cJSON_IsString(kind) || strlen(kind->valuestring) >= sizeof c->kind) {
        dfx_fail(err, "%s: config: missing model kind", file);
        goto fail;
    }
    snprintf(c->kind, sizeof c->kind, "%s", kind->valuestring);
    const cJSON *img = cJSON_GetObjectItemCaseSensitive(r, "image");
    if (!cJSON_IsObject(img)) {
        dfx_fail(err, "%s: config: missing object 'image'", file);
        goto fail;
    }
    if (get_int(img, "channels", 1, 64, &c->channels, file, "image", err) ||
        get_int(img, "height", 1, 4096, &c->height, file, "image", err) ||
        get_int(img, "width", 1, 4096, &c->width, file, "image", err))
        goto fail;
    c->range_lo = -1.0;
    c->range_hi = 1.0;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(r, "data");
    if (data) {
        const cJSON *rg = cJSON_GetObjectItemCaseSensitive(data, "range");
        if (!cJSON_IsArray(rg) || cJSON_GetArraySize(rg) != 2 ||
            !cJSON_IsNumber(cJSON_GetArrayItem(rg, 0)) ||
            !cJSON_IsNumber(cJSON_GetArrayItem(rg, 1))) {
            dfx_fail(err, "%s: config: data.range must be [low, high]", file);
            goto fail;
        }
        c->range_lo = cJSON_GetArrayItem(rg, 0)->valuedouble;
        c->range_hi = cJSON_GetArrayItem(rg, 1)->valuedouble;
        if (!((float)c->range_hi > (float)c->range_lo)) { /* as float32, too */
            dfx_fail(err, "%s: config: data.range must have low < high", file);
            goto fail;
        }
    }
    /* a classifier (feature network for difflux eval) has no path and
     * predicts no field: it maps images to features and class logits */
    int classifier = strcmp(c->kind, "classifier") == 0;
    const cJSON *pj = cJSON_GetObjectItemCaseSensitive(r, "path");
    const cJSON *pred = cJSON_GetObjectItemCaseSensitive(r, "prediction");
    if (classifier && !pj && !pred) {
        dfx_path_default(&c->path, DFX_PATH_LINEAR);
        c->prediction = DFX_PRED_DATA;
    } else if (parse_path(&c->path, pj, file, err) ||
               (c->path.family == DFX_PATH_DISCRETE && parse_discrete(c, pj, file, err)) ||
               parse_xhat(c, cJSON_GetObjectItemCaseSensitive(r, "xhat"), file, err)) {
        goto fail;
    } else if (!cJSON_IsString(pred) || dfx_pred_parse(pred->valuestring, &c->prediction) != 0) {
        dfx_fail(err, "%s: config: prediction must be one of eps, data, score, velocity, v",
                 file);
        goto fail;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(r, "start");
    if (st) {
        const cJSON *mu = cJSON_GetObjectItemCaseSensitive(st, "mean");
        const cJSON *sd = cJSON_GetObjectItemCaseSensitive(st, "std");
        if (!cJSON_IsNumber(mu) || !cJSON_IsNumber(sd) || !isfinite(mu->valuedouble) ||
            !(sd->valuedouble > 0.0) || !isfinite(sd->valuedouble)) {
            dfx_fail(err,
                     "%s: config: start must be {\"mean\": number, \"std\": positive number[, "
                     "\"full\": bool]}",
                     file);
            goto fail;
        }
        const cJSON *full = cJSON_GetObjectItemCaseSensitive(st, "full");
        if (full && !cJSON_IsBool(full)) {
            dfx_fail(err, "%s: config: start.full must be true or false", file);
            goto fail;
        }
        c->has_start = 1;
        c->start_mean = mu->valuedouble;
        c->start_std = sd->valuedouble;
        c->start_full = cJSON_IsTrue(full);
    }
    get_str(r, "sampler", c->sampler, sizeof c->sampler);
    get_str(r, "paper_recipe", c->paper_recipe, sizeof c->paper_recipe);
    const cJSON *gd = cJSON_GetObjectItemCaseSensitive(r, "guide");
    if (gd) {
        /* the weaker model that guides sampling by default (autoguidance),
         * a file beside this one */
        const cJSON *gf = cJSON_GetObjectItemCaseSensitive(gd, "file");
        const cJSON *gw = cJSON_GetObjectItemCaseSensitive(gd, "weight");
        if (!cJSON_IsObject(gd) || !cJSON_IsString(gf) || !gf->valuestring[0] ||
            strchr(gf->valuestring, '/') || !cJSON_IsNumber(gw) ||
            !isfinite(gw->valuedouble)) {
            dfx_fail(err,
                     "%s: config: guide must be {\"file\": NAME of a file beside the model, "
                     "\"weight\": number}",
                     file);
            goto fail;
        }
        const char *slash = strrchr(file, '/');
        int dir = slash ? (int)(slash - file + 1) : 0;
        if (snprintf(c->guide_file, sizeof c->guide_file, "%.*s%s", dir, file,
                     gf->valuestring) >= (int)sizeof c->guide_file) {
            dfx_fail(err, "%s: config: guide.file: the path is too long", file);
            goto fail;
        }
        c->guide_weight = gw->valuedouble;
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(r, "sampler_options");
    if (so) {
        const cJSON *ord = cJSON_GetObjectItemCaseSensitive(so, "order");
        if (!cJSON_IsObject(so) || (ord && !(cJSON_IsNumber(ord) && ord->valuedouble >= 1 &&
                                             ord->valuedouble <= 3 &&
                                             ord->valuedouble == (int)ord->valuedouble))) {
            dfx_fail(err, "%s: config: sampler_options must be {\"order\": 1..3, \"variant\": NAME}",
                     file);
            goto fail;
        }
        if (ord) c->sampler_order = (int)ord->valuedouble;
        get_str(so, "variant", c->sampler_variant, sizeof c->sampler_variant);
    }
    const cJSON *prov = cJSON_GetObjectItemCaseSensitive(r, "provenance");
    if (cJSON_IsObject(prov)) {
        get_str(prov, "dataset", c->dataset, sizeof c->dataset);
        get_str(prov, "description", c->description, sizeof c->description);
        /* optional numbers written by the training recipes' exporter */
        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(prov, "training");
        const cJSON *steps_j = cJSON_GetObjectItemCaseSensitive(tr, "steps"),
                    *bs = cJSON_GetObjectItemCaseSensitive(tr, "batch"),
                    *mn = cJSON_GetObjectItemCaseSensitive(tr, "minutes"),
                    *ls = cJSON_GetObjectItemCaseSensitive(tr, "final_loss"),
                    *hw = cJSON_GetObjectItemCaseSensitive(tr, "hardware");
        if (cJSON_IsNumber(steps_j) && cJSON_IsNumber(bs)) {
            size_t n = 0, cap = sizeof c->training;
            char *o = c->training;
            n += (size_t)snprintf(o, cap, "%.0f steps of batch %.0f", steps_j->valuedouble,
                                  bs->valuedouble);
            if (cJSON_IsNumber(mn) && n < cap)
                n += (size_t)snprintf(o + n, cap - n, ", %.0f min", mn->valuedouble);
            if (cJSON_IsString(hw) && n < cap)
                n += (size_t)snprintf(o + n, cap - n, " on %s", hw->valuestring);
            if (cJSON_IsNumber(ls) && n < cap)
                snprintf(o + n, cap - n, ", final loss %.4g", ls->valuedouble);
        }
    }
    return 0;
bad:
    dfx_fail(err, "%s: config: not a JSON object", file);
fail:
    dfx_config_free(c);
    return -1;
}

void dfx_config_free(dfx_model_config *c)
{
    cJSON_Delete(c->root);
    c->root = NULL;
    free(c->log_abar);
    c->log_abar = NULL;
    c->path.log_abar = NULL;
}

cJSON *dfx_path_to_json(const dfx_path *p)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "family", dfx_path_name(p->family));
    switch (p->family) {
    case DFX_PATH_VP:
        cJSON_AddNumberToObject(j, "beta_min", p->beta_min);
        cJSON_AddNumberToObject(j, "beta_max", p->beta_max);
        break;
    case DFX_PATH_VP_COSINE:
        cJSON_AddNumberToObject(j, "cosine_s", p->cosine_s);
        break;
    case DFX_PATH_VE:
        cJSON_AddNumberToObject(j, "sigma_min", p->sigma_min);
        cJSON_AddNumberToObject(j, "sigma_max", p->sigma_max);
        break;
    case DFX_PATH_DALE:
        cJSON_AddNumberToObject(j, "sigma", p->dale_sigma);
        cJSON_AddNumberToObject(j, "mu", p->dale_mu);
        break;
    case DFX_PATH_DISCRETE: {
        cJSON *b = cJSON_AddArrayToObject(j, "betas");
        for (int i = 0; i < p->n_train && p->log_abar; i++)
            cJSON_AddItemToArray(b, cJSON_CreateNumber(-expm1(
                                        p->log_abar[i] - (i ? p->log_abar[i - 1] : 0.0))));
        cJSON_AddStringToObject(j, "spacing", dfx_spacing_name(p->spacing));
        cJSON_AddNumberToObject(j, "steps_offset", p->steps_offset);
        cJSON_AddBoolToObject(j, "dpm_timesteps", p->dpm_timesteps);
        cJSON_AddBoolToObject(j, "final_one", p->final_one);
        break;
    }
    default:
        break;
    }
    return j;
}

cJSON *dfx_config_to_json(const dfx_model_config *c)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "version", 1);
    cJSON_AddStringToObject(r, "kind", c->kind);
    cJSON *img = cJSON_AddObjectToObject(r, "image");
    cJSON_AddNumberToObject(img, "channels", c->channels);
    cJSON_AddNumberToObject(img, "height", c->height);
    cJSON_AddNumberToObject(img, "width", c->width);
    cJSON *data = cJSON_AddObjectToObject(r, "data");
    cJSON *rg = cJSON_AddArrayToObject(data, "range");
    cJSON_AddItemToArray(rg, cJSON_CreateNumber(c->range_lo));
    cJSON_AddItemToArray(rg, cJSON_CreateNumber(c->range_hi));
    cJSON_AddItemToObject(r, "path", dfx_path_to_json(&c->path));
    cJSON_AddStringToObject(r, "prediction", dfx_pred_name(c->prediction));
    if (c->clip > 0.0 || c->thr_ratio > 0.0) {
        cJSON *x = cJSON_AddObjectToObject(r, "xhat");
        if (c->clip > 0.0) cJSON_AddNumberToObject(x, "clip", c->clip);
        if (c->thr_ratio > 0.0) {
            cJSON_AddNumberToObject(x, "threshold_ratio", c->thr_ratio);
            cJSON_AddNumberToObject(x, "threshold_max", c->thr_max);
        }
    }
    cJSON *prov = cJSON_AddObjectToObject(r, "provenance");
    cJSON_AddStringToObject(prov, "dataset", c->dataset);
    cJSON_AddStringToObject(prov, "description", c->description);
    return r;
}
