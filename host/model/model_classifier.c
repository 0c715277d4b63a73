/*
 * The classifier (kind "classifier", models/FORMAT.md): the feature
 * network of difflux eval, an op list like the U-Net's (net.c). Its config
 * section and builder, dfx_classify (features and class logits of images)
 * and the model table entries; it is not a generative model.
 */
#include "core/error.h"
#include "model/net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------- config */

/* The classifier section: {"channels": [..], "features": F, "num_classes": K,
 * "groups": G, "norm_eps": e} (models/FORMAT.md). */
static int parse_classifier(net_cfg *c, const dfx_model_config *mc, const char *file,
                            dfx_error *err)
{
    memset(c, 0, sizeof *c);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(mc->root, "classifier");
    if (!cJSON_IsObject(s)) return dfx_fail(err, "%s: config: missing object 'classifier'", file);
    if (dfx_net_cfg_list(s, "channels", MAX_LEVELS, 1, 4096, c->ch, &c->levels, file, err) ||
        dfx_net_cfg_int(s, "features", 1, 65536, -1, &c->features, file, err) ||
        dfx_net_cfg_int(s, "num_classes", 1, 100000, -1, &c->classes, file, err) ||
        dfx_net_cfg_int(s, "groups", 1, 1024, -1, &c->groups, file, err))
        return -1;
    if (c->levels < 1) return dfx_fail(err, "%s: config: classifier.channels is empty", file);
    c->eps = 1e-5f;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, "norm_eps");
    if (j) {
        if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || j->valuedouble > 1)
            return dfx_fail(err, "%s: config: classifier.norm_eps must be in (0, 1]", file);
        c->eps = (float)j->valuedouble;
    }
    return 0;
}

/* ---------------------------------------------------------- building */

/* The classifier (models/difflux_ref/classifier.py): conv_in, then per
 * level GroupNorm+SiLU, a 3x3 conv and (but the last) a stride-2 3x3 conv;
 * GroupNorm+SiLU, flatten, `feat` (the features), `head` on SiLU(features)
 * (the logits). The output row is [features, logits]. */
static int build_classifier(net_builder *bd)
{
    net_impl *u = bd->u;
    const net_cfg *c = &u->c;
    int h = bd->m->cfg.height, w = bd->m->cfg.width;
    char n[128];
    int x = dfx_net_conv(bd, BUF_X, "conv_in", bd->m->cfg.channels, c->ch[0], h, w, 3, 1);
    int ch = c->ch[0];
    for (int l = 0; l < c->levels; l++) {
        snprintf(n, sizeof n, "blocks.%d.norm", l);
        x = dfx_net_norm(bd, x, n, ch, h, w, 1);
        snprintf(n, sizeof n, "blocks.%d.conv", l);
        x = dfx_net_conv(bd, x, n, ch, c->ch[l], h, w, 3, 1);
        ch = c->ch[l];
        if (l + 1 < c->levels) {
            snprintf(n, sizeof n, "blocks.%d.down", l);
            x = dfx_net_conv(bd, x, n, ch, ch, h, w, 3, 2);
            h = (h - 1) / 2 + 1;
            w = (w - 1) / 2 + 1;
        }
    }
    x = dfx_net_norm(bd, x, "out.norm", ch, h, w, 1);
    int f = dfx_net_linear(bd, x, "feat", ch * h * w, c->features, 0);
    int lg = dfx_net_linear(bd, f, "head", c->features, c->classes, 1);
    int cat = dfx_net_buf(bd, (size_t)c->features + (size_t)c->classes);
    dfx_net_add_op(bd, (net_op){.kind = OP_CONCAT, .out = cat, .in0 = f, .in1 = lg,
                                .cin = c->features, .c1 = c->classes, .h = 1, .w_ = 1});
    return dfx_net_finish(bd);
}

/* -------------------------------------------------------- the model */

static int classifier_predict(dfx_model *m, const double *t, const float *x, float *out,
                              int rows, dfx_error *err)
{
    (void)t;
    (void)x;
    (void)out;
    (void)rows;
    return dfx_fail(err, "%s is a classifier (features and class logits for difflux eval), "
                         "not a generative model",
                    m->file);
}

static int classifier_describe(const dfx_model *m, char *buf, size_t cap)
{
    const net_impl *u = m->impl;
    const net_cfg *c = &u->c;
    int n = snprintf(buf, cap, "architecture classifier, %d levels:", c->levels);
    int h = m->cfg.height, w = m->cfg.width;
    for (int l = 0; l < c->levels && n >= 0 && (size_t)n < cap; l++) {
        n += snprintf(buf + n, cap - (size_t)n, " %dx%d@%d", h, w, c->ch[l]);
        h = (h - 1) / 2 + 1;
        w = (w - 1) / 2 + 1;
    }
    if (n < 0 || (size_t)n >= cap) return n;
    n += snprintf(buf + n, cap - (size_t)n,
                  "\n             GroupNorm %d groups, %d features, %d classes\n"
                  "graph        %d ops, %.1f KiB activations per sample\n",
                  c->groups, c->features, c->classes, u->nops, u->arena_per_sample * 4.0 / 1024.0);
    return n;
}

static const dfx_model_vt classifier_vt = {
    .predict = classifier_predict,
    .reserve = dfx_net_reserve,
    .describe = classifier_describe,
    .profile = dfx_net_profile,
    .destroy = dfx_net_destroy,
    .scratch_bytes = dfx_net_scratch_bytes,
};

int dfx_classifier_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    const unsigned kinds = OP_BIT(OP_CONV) | OP_BIT(OP_GN) | OP_BIT(OP_LINEAR) | OP_BIT(OP_CONCAT);
    if (!dfx_net_backend_runs(m->be->ops, kinds))
        return dfx_fail(err, "%s: the %s backend cannot run classifiers", f->path, m->be->name);
    return dfx_net_load(m, f, &classifier_vt, parse_classifier, build_classifier, err) ? 0 : -1;
}

int dfx_classifier_dims(const dfx_model *m, int *features, int *classes)
{
    if (!m || m->vt != &classifier_vt) return -1;
    const net_impl *u = m->impl;
    if (features) *features = u->c.features;
    if (classes) *classes = u->c.classes;
    return 0;
}

int dfx_classify(dfx_model *m, const float *pixels, int n, float *features, float *logits,
                 dfx_error *err)
{
    if (!m || m->vt != &classifier_vt)
        return dfx_fail(err, "%s is not a classifier", m ? m->file : "(null)");
    if (n < 0) return dfx_fail(err, "dfx_classify: negative count");
    net_impl *u = m->impl;
    dfx_backend *be = m->be;
    const int F = u->c.features, K = u->c.classes, B = n < 256 ? (n > 0 ? n : 1) : 256;
    const size_t dim = m->dim, width = (size_t)F + (size_t)K;
    if (dfx_net_plan(m, u, B, err)) return -1;
    float *hx = dfx_alloc((size_t)B * dim, sizeof(float), "classifier input", err);
    float *hy = hx ? dfx_alloc((size_t)B * width, sizeof(float), "classifier output", err) : NULL;
    float *dx = hy ? dfx_be_alloc(be, (size_t)B * dim * sizeof(float), "classifier input", err)
                   : NULL;
    float *dy = dx ? dfx_be_alloc(be, (size_t)B * width * sizeof(float), "classifier output", err)
                   : NULL;
    int rc = dy ? 0 : -1;
    /* pixels in [0, 1] to the classifier's data range */
    const double lo = m->cfg.range_lo, span = m->cfg.range_hi - m->cfg.range_lo;
    for (int i = 0; i < n && rc == 0; i += B) {
        int rows = n - i < B ? n - i : B;
        const float *p = pixels + (size_t)i * dim;
        for (size_t k = 0; k < (size_t)rows * dim; k++) hx[k] = (float)(lo + span * p[k]);
        rc = be->ops->upload(be, dx, hx, (size_t)rows * dim * sizeof(float), err);
        if (rc) break;
        dfx_net_forward(m, u, NULL, dx, dy, rows);
        rc = be->ops->download(be, hy, dy, (size_t)rows * width * sizeof(float), err);
        for (int r = 0; r < rows && rc == 0; r++) {
            const float *row = hy + (size_t)r * width;
            if (features) memcpy(features + (size_t)(i + r) * F, row, (size_t)F * sizeof(float));
            if (logits) memcpy(logits + (size_t)(i + r) * K, row + F, (size_t)K * sizeof(float));
        }
    }
    if (dy) be->ops->free(be, dy);
    if (dx) be->ops->free(be, dx);
    free(hy);
    free(hx);
    return rc;
}

const char *dfx_classifier_label(const dfx_model *m, int k, char *buf, size_t cap)
{
    const cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m->cfg.root, "labels"), k);
    if (cJSON_IsString(l))
        snprintf(buf, cap, "%s", l->valuestring);
    else
        snprintf(buf, cap, "%d", k);
    return buf;
}

