/*
 * The U-Net (models/UNET.md): its config section, its op list (net.c
 * plans, runs and differentiates it, and records it as a backend graph),
 * the prediction with classifier-free guidance and its tangent, and the
 * model table entries of kind "unet".
 */
#include "core/error.h"
#include "model/net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------- config */

static int parse_unet(net_cfg *c, const dfx_model_config *mc, const char *file, dfx_error *err)
{
    memset(c, 0, sizeof *c);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(mc->root, "unet");
    if (!cJSON_IsObject(s)) return dfx_fail(err, "%s: config: missing object 'unet'", file);
    int nattn = 0, attn[MAX_LEVELS];
    if (dfx_net_cfg_int(s, "base_channels", 2, 4096, -1, &c->ch0, file, err) ||
        dfx_net_cfg_list(s, "channel_mult", MAX_LEVELS, 1, 64, c->mult, &c->levels, file, err) ||
        dfx_net_cfg_int(s, "num_res_blocks", 1, 16, -1, &c->nres, file, err) ||
        dfx_net_cfg_list(s, "attention_levels", MAX_LEVELS, 0, MAX_LEVELS - 1, attn, &nattn, file,
                         err) ||
        dfx_net_cfg_int(s, "heads", 1, 256, 1, &c->heads, file, err) ||
        dfx_net_cfg_int(s, "groups", 1, 1024, -1, &c->groups, file, err) ||
        dfx_net_cfg_int(s, "time_embed_dim", 1, 4096, -1, &c->T, file, err) ||
        dfx_net_cfg_int(s, "num_classes", 0, 100000, 0, &c->classes, file, err))
        return -1;
    if (c->levels < 1) return dfx_fail(err, "%s: config: unet.channel_mult is empty", file);
    if (c->ch0 % 2) return dfx_fail(err, "%s: config: unet.base_channels must be even", file);
    for (int i = 0; i < nattn; i++) {
        if (attn[i] >= c->levels)
            return dfx_fail(err, "%s: config: unet.attention_levels names level %d of %d", file,
                            attn[i], c->levels);
        c->attn[attn[i]] = 1;
    }
    c->time_scale = 1000.0;
    c->eps = 1e-5f;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, "time_scale");
    if (j) {
        if (!cJSON_IsNumber(j) || !(j->valuedouble > 0))
            return dfx_fail(err, "%s: config: unet.time_scale must be positive", file);
        c->time_scale = j->valuedouble;
    }
    j = cJSON_GetObjectItemCaseSensitive(s, "norm_eps");
    if (j) {
        if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || j->valuedouble > 1)
            return dfx_fail(err, "%s: config: unet.norm_eps must be in (0, 1]", file);
        c->eps = (float)j->valuedouble;
    }
    int div = 1 << (c->levels - 1);
    if (mc->height % div || mc->width % div)
        return dfx_fail(err, "%s: config: a %d x %d image cannot be halved %d times", file,
                        mc->height, mc->width, c->levels - 1);
    return 0;
}

/* ---------------------------------------------------------- building */

static const net_res_names res_names = {"norm1", "conv1", "temb", "norm2", "conv2", "skip"};

static int resblock(net_builder *bd, int in, int temb, const char *p, int cin, int cout, int h,
                    int w)
{
    return dfx_net_resblock(bd, in, temb, p, &res_names, cin, cout, h, w, 1.0);
}

static int attention(net_builder *bd, int in, const char *p, int C, int h, int w)
{
    net_impl *u = bd->u;
    if (C % u->c.heads) {
        if (!bd->failed)
            dfx_fail(bd->err, "%s: config: unet.heads = %d does not divide the %d channels of %s",
                     bd->f->path, u->c.heads, C, p);
        bd->failed = 1;
        return 0;
    }
    char n[128];
    snprintf(n, sizeof n, "%s.norm", p);
    int x = dfx_net_norm(bd, in, n, C, h, w, 0);
    snprintf(n, sizeof n, "%s.qkv", p);
    x = dfx_net_conv(bd, x, n, C, 3 * C, h, w, 1, 1);
    int o = dfx_net_buf(bd, (size_t)C * h * w);
    double hw = (double)h * w;
    dfx_net_add_op(bd, (net_op){.kind = OP_ATTN, .out = o, .in0 = x, .in1 = -1, .cin = C, .h = h,
                                .w_ = w, .heads = u->c.heads,
                                .flops = 4.0 * hw * hw * C + 5.0 * hw * hw * u->c.heads});
    snprintf(n, sizeof n, "%s.proj", p);
    x = dfx_net_conv(bd, o, n, C, C, h, w, 1, 1);
    return dfx_net_sum(bd, in, x, (size_t)C * h * w, 1.0);
}

static int build(net_builder *bd)
{
    net_impl *u = bd->u;
    const net_cfg *c = &u->c;
    const int C = bd->m->cfg.channels;
    int h = bd->m->cfg.height, w = bd->m->cfg.width;
    char n[128];
    /* time (and class) embedding */
    int e0 = dfx_net_buf(bd, (size_t)c->ch0);
    dfx_net_add_op(bd, (net_op){.kind = OP_TEMB, .out = e0, .in0 = -1, .in1 = -1, .cin = c->ch0});
    int e1 = dfx_net_linear(bd, e0, "temb.lin1", c->ch0, c->T, 0);
    int temb = dfx_net_linear(bd, e1, "temb.lin2", c->T, c->T, 1);
    if (c->classes > 0) {
        int64_t s[2] = {c->classes + 1, c->T};
        const float *tab = dfx_net_weight(bd, "class_emb.weight", 2, s);
        dfx_net_add_op(bd, (net_op){.kind = OP_CLASS, .out = temb, .in0 = temb, .in1 = -1, .w = tab,
                                    .cin = c->T});
    }
    int skips[64], ns = 0, sch[64];
    int x = dfx_net_conv(bd, BUF_X, "conv_in", C, c->ch0, h, w, 3, 1);
    int ch = c->ch0;
    skips[ns] = x;
    sch[ns++] = ch;
    for (int l = 0; l < c->levels; l++) {
        int cl = c->ch0 * c->mult[l];
        for (int r = 0; r < c->nres; r++) {
            snprintf(n, sizeof n, "down.%d.res.%d", l, r);
            x = resblock(bd, x, temb, n, ch, cl, h, w);
            ch = cl;
            if (c->attn[l]) {
                snprintf(n, sizeof n, "down.%d.attn.%d", l, r);
                x = attention(bd, x, n, ch, h, w);
            }
            if (ns < 64) {
                skips[ns] = x;
                sch[ns++] = ch;
            }
        }
        if (l < c->levels - 1) {
            snprintf(n, sizeof n, "down.%d.downsample", l);
            x = dfx_net_conv(bd, x, n, ch, ch, h, w, 3, 2);
            h /= 2;
            w /= 2;
            if (ns < 64) {
                skips[ns] = x;
                sch[ns++] = ch;
            }
        }
    }
    x = resblock(bd, x, temb, "mid.res1", ch, ch, h, w);
    x = attention(bd, x, "mid.attn", ch, h, w);
    x = resblock(bd, x, temb, "mid.res2", ch, ch, h, w);
    for (int l = c->levels - 1; l >= 0; l--) {
        int cl = c->ch0 * c->mult[l];
        for (int r = 0; r <= c->nres; r++) {
            if (ns <= 0) break;
            int s = skips[--ns], cs = sch[ns];
            int cat = dfx_net_buf(bd, (size_t)(ch + cs) * h * w);
            dfx_net_add_op(bd, (net_op){.kind = OP_CONCAT, .out = cat, .in0 = x, .in1 = s,
                                        .cin = ch, .c1 = cs, .h = h, .w_ = w});
            snprintf(n, sizeof n, "up.%d.res.%d", l, r);
            x = resblock(bd, cat, temb, n, ch + cs, cl, h, w);
            ch = cl;
            if (c->attn[l]) {
                snprintf(n, sizeof n, "up.%d.attn.%d", l, r);
                x = attention(bd, x, n, ch, h, w);
            }
        }
        if (l > 0) {
            int up = dfx_net_buf(bd, (size_t)ch * 4 * h * w);
            dfx_net_add_op(bd, (net_op){.kind = OP_UP, .out = up, .in0 = x, .in1 = -1, .cin = ch,
                                        .h = h, .w_ = w});
            h *= 2;
            w *= 2;
            snprintf(n, sizeof n, "up.%d.upsample", l);
            x = dfx_net_conv(bd, up, n, ch, ch, h, w, 3, 1);
        }
    }
    x = dfx_net_norm(bd, x, "out.norm", ch, h, w, 1);
    x = dfx_net_conv(bd, x, "out.conv", ch, C, h, w, 3, 1);
    return dfx_net_finish(bd);
}

/* -------------------------------------------------------- the model */

int dfx_unet_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                        dfx_error *err)
{
    net_impl *u = m->impl;
    if (dfx_net_plan(m, u, rows, err)) return -1;
    int conditional = u->c.classes > 0 && (u->cls != DFX_CLASS_NONE || u->forced);
    int guided = conditional && u->guidance != 1.0;
    double *cf = NULL, *local = NULL;
    if (guided) {
        cf = m->coef; /* reserved by the caller's dfx_model_reserve */
        if (!cf || m->cap_rows < rows)
            cf = local = dfx_alloc((size_t)rows * 2, sizeof *cf, "cfg", err);
        if (!cf) return -1;
        for (int r = 0; r < rows; r++) {
            cf[r] = u->guidance;
            cf[rows + r] = 1.0 - u->guidance;
        }
    }
    int rc = 0;
    if (u->graphs && !u->prof) /* profiling times each op: eager */
        rc = dfx_net_predict_graph(m, u, t, x, out, rows, conditional, guided, cf, err);
    else
        dfx_net_evaluate(m, u, t, x, out, rows, conditional, guided, cf);
    free(local);
    return rc;
}

/* Forward-mode derivative along v: the time and class embeddings do not
 * depend on x (zero tangents); guidance P_u + w (P_c - P_u) is a fixed
 * combination of two evaluations, so its tangent is the same combination
 * of theirs. */
int dfx_unet_jvp(dfx_model *m, const double *t, const float *x, const float *v, float *out,
                    float *dout, int rows, dfx_error *err)
{
    net_impl *u = m->impl;
    if (dfx_net_plan(m, u, rows, err) || dfx_net_plan_jvp(m, u, rows, err)) return -1;
    int conditional = u->c.classes > 0 && (u->cls != DFX_CLASS_NONE || u->forced);
    dfx_net_set_labels(m, u, rows, conditional);
    dfx_net_forward_jvp(m, u, t, x, v, out, dout, rows);
    if (conditional && u->guidance != 1.0) {
        dfx_net_set_labels(m, u, rows, 0);
        dfx_net_forward_jvp(m, u, t, x, v, u->uncond, u->duncond, rows);
        double *cf = u->jcoef;
        for (int r = 0; r < rows; r++) {
            cf[r] = u->guidance;
            cf[rows + r] = 1.0 - u->guidance;
        }
        const float *xs[2] = {out, u->uncond}, *ts[2] = {dout, u->duncond};
        m->be->ops->lincomb(m->be, out, 2, xs, cf, NULL, rows, m->dim);
        m->be->ops->lincomb(m->be, dout, 2, ts, cf, NULL, rows, m->dim);
    }
    return 0;
}

static int unet_describe(const dfx_model *m, char *buf, size_t cap)
{
    const net_impl *u = m->impl;
    const net_cfg *c = &u->c;
    int n = snprintf(buf, cap, "architecture U-Net, %d levels:", c->levels);
    int h = m->cfg.height, w = m->cfg.width;
    for (int l = 0; l < c->levels && n >= 0 && (size_t)n < cap; l++, h /= 2, w /= 2)
        n += snprintf(buf + n, cap - (size_t)n, " %dx%d@%d%s", h, w, c->ch0 * c->mult[l],
                      c->attn[l] ? "+attn" : "");
    if (n < 0 || (size_t)n >= cap) return n;
    n += snprintf(buf + n, cap - (size_t)n,
                  "\n             %d res blocks/level, GroupNorm %d groups, %d heads, time "
                  "embedding %d (t x %g)\n"
                  "classes      %d%s\n"
                  "graph        %d ops, %.1f KiB activations per sample\n",
                  c->nres, c->groups, c->heads, c->T, c->time_scale, c->classes,
                  c->classes ? " (label K = no class; classifier-free guidance)" : "", u->nops,
                  u->arena_per_sample * 4.0 / 1024.0);
    return n;
}

int dfx_unet_set_class(dfx_model *m, int cls, double guidance, dfx_error *err)
{
    net_impl *u = m->impl;
    if (u->c.classes == 0) {
        if (cls == DFX_CLASS_NONE && guidance == 1.0) return 0;
        return dfx_fail(err, "%s: the model is unconditional (no --class or --guidance)", m->file);
    }
    if (cls >= u->c.classes || cls < DFX_CLASS_CYCLE)
        return dfx_fail(err, "%s: class %d out of range (the model has classes 0..%d)", m->file,
                        cls, u->c.classes - 1);
    if (!isfinite(guidance)) return dfx_fail(err, "guidance must be finite");
    u->cls = cls;
    u->guidance = guidance;
    return 0;
}

static const dfx_model_vt unet_vt = {
    .predict = dfx_unet_predict,
    .jvp = dfx_unet_jvp,
    .reserve = dfx_net_reserve,
    .describe = unet_describe,
    .profile = dfx_net_profile,
    .destroy = dfx_net_destroy,
    .scratch_bytes = dfx_net_scratch_bytes,
    .set_class = dfx_unet_set_class,
};

int dfx_unet_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    const dfx_backend_ops *o = m->be->ops;
    if (!dfx_net_backend_runs(o, OP_ALL)) /* the U-Net uses every kind of op */
        return dfx_fail(err, "%s: the %s backend cannot run U-Nets yet", f->path, m->be->name);
    net_impl *u = dfx_net_load(m, f, &unet_vt, parse_unet, build, err);
    if (!u || dfx_net_mark_tangents(u, err)) return -1;
    dfx_unet_enable_graphs(m);
    return 0;
}

void dfx_unet_enable_graphs(dfx_model *m)
{
    /* Graphs where the backend has them, unless DIFFLUX_CUDA_GRAPHS=0: the
     * switch for comparing against (or falling back to) op-by-op evaluation. */
    const dfx_backend_ops *o = m->be->ops;
    net_impl *u = m->impl;
    const char *env = getenv("DIFFLUX_CUDA_GRAPHS");
    u->graphs = o->graph_begin && o->graph_capture && o->graph_end && o->graph_refill &&
                o->graph_launch && o->graph_free && o->copy && !(env && strcmp(env, "0") == 0);
}

int dfx_unet_force_labels(dfx_model *m, const int *labels)
{
    net_impl *u = m->impl;
    u->forced = labels;
    return 0;
}

void dfx_unet_graph_stats(const dfx_model *m, long *captures, long *launches, long *failed,
                          const char **why)
{
    const net_impl *u = m->impl;
    if (captures) *captures = u->gcaptures;
    if (launches) *launches = u->glaunches;
    if (failed) *failed = u->gfailed;
    if (why) *why = u->gwhy;
}

