/*
 * diffusers UNet2DModel networks (kind "diffusers"; README "Models from
 * diffusers"): the config section "unet" is the UNet2DModel's own
 * config.json and the tensors keep diffusers' names. The op list is the
 * native U-Net's (net.c): ResnetBlock2D is net.c's residual block,
 * Attention's to_q, to_k, to_v become one 1x1 convolution, Downsample2D
 * with padding 0 (a pad of one row and column after the image, then a
 * stride-2 3x3 convolution) is the same 3x3 kernel shifted into a 4x4
 * kernel with padding 1, and the timestep the network sees is tau = N t -
 * 1 of the discrete path (MATH.md section 7).
 */
#include "core/error.h"
#include "model/net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------- config */

/* The UNet2DModel keys this loader knows; any other key with a value other
 * than null or false is refused. */
static const char *const known_keys[] = {
    "sample_size", "in_channels", "out_channels", "center_input_sample",
    "time_embedding_type", "time_embedding_dim", "freq_shift", "flip_sin_to_cos",
    "down_block_types", "mid_block_type", "up_block_types", "block_out_channels",
    "layers_per_block", "mid_block_scale_factor", "downsample_padding", "downsample_type",
    "upsample_type", "dropout", "act_fn", "attention_head_dim", "norm_num_groups",
    "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention",
    "class_embed_type", "num_class_embeds", "num_train_timesteps",
};

static int refuse(const char *file, const char *key, const cJSON *v, const char *what,
                  dfx_error *err)
{
    char *txt = v ? cJSON_PrintUnformatted(v) : NULL;
    int rc = dfx_fail(err, "%s: unet config: %s = %s is not supported (%s)", file, key,
                      txt ? txt : "?", what);
    cJSON_free(txt);
    return rc;
}

/* A string key that must hold one of the allowed values (absent: ok). */
static int want_str(const cJSON *s, const char *key, const char *allowed, const char *file,
                    dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsString(j) || strcmp(j->valuestring, allowed) != 0) {
        char why[96];
        snprintf(why, sizeof why, "difflux runs \"%s\"", allowed);
        return refuse(file, key, j, why, err);
    }
    return 0;
}

static int get_bool(const cJSON *s, const char *key, int dflt, int *out, const char *file,
                    dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!j || cJSON_IsNull(j)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(j)) return dfx_fail(err, "%s: unet config: %s must be true or false", file, key);
    *out = cJSON_IsTrue(j);
    return 0;
}

static int get_num(const cJSON *s, const char *key, double dflt, double *out, const char *file,
                   dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!j || cJSON_IsNull(j)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0.0))
        return dfx_fail(err, "%s: unet config: %s must be a positive number", file, key);
    *out = j->valuedouble;
    return 0;
}

/* down_block_types / up_block_types: each entry plain or with attention. */
static int block_types(const cJSON *s, const char *key, const char *plain, const char *attn,
                       int levels, int *has_attn, const char *file, dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != levels)
        return dfx_fail(err, "%s: unet config: %s must list %d block types (one per entry of "
                             "block_out_channels)",
                        file, key, levels);
    for (int i = 0; i < levels; i++) {
        const cJSON *e = cJSON_GetArrayItem(j, i);
        if (cJSON_IsString(e) && strcmp(e->valuestring, plain) == 0)
            has_attn[i] = 0;
        else if (cJSON_IsString(e) && strcmp(e->valuestring, attn) == 0)
            has_attn[i] = 1;
        else {
            char k[64], why[96];
            snprintf(k, sizeof k, "%s[%d]", key, i);
            snprintf(why, sizeof why, "difflux runs %s and %s", plain, attn);
            return refuse(file, k, e, why, err);
        }
    }
    return 0;
}

static int parse_diffusers(net_cfg *c, const dfx_model_config *mc, const char *file,
                           dfx_error *err)
{
    memset(c, 0, sizeof *c);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(mc->root, "unet");
    if (!cJSON_IsObject(s)) return dfx_fail(err, "%s: config: missing object 'unet'", file);
    const cJSON *it;
    cJSON_ArrayForEach(it, s)
    {
        if (it->string[0] == '_') continue; /* _class_name, _diffusers_version, ... */
        int known = 0;
        for (size_t k = 0; k < sizeof known_keys / sizeof known_keys[0]; k++)
            known |= strcmp(it->string, known_keys[k]) == 0;
        if (!known && !cJSON_IsNull(it) && !cJSON_IsFalse(it))
            return refuse(file, it->string, it, "not a UNet2DModel key this loader knows", err);
    }
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(s, "_class_name");
    if (cls && (!cJSON_IsString(cls) || strcmp(cls->valuestring, "UNet2DModel") != 0))
        return refuse(file, "_class_name", cls, "difflux runs UNet2DModel", err);
    if (want_str(s, "time_embedding_type", "positional", file, err) ||
        want_str(s, "act_fn", "silu", file, err) ||
        want_str(s, "resnet_time_scale_shift", "default", file, err) ||
        want_str(s, "downsample_type", "conv", file, err) ||
        want_str(s, "upsample_type", "conv", file, err))
        return -1;
    const cJSON *ce = cJSON_GetObjectItemCaseSensitive(s, "class_embed_type");
    if (ce && !cJSON_IsNull(ce))
        return refuse(file, "class_embed_type", ce, "difflux runs num_class_embeds only", err);
    const cJSON *an = cJSON_GetObjectItemCaseSensitive(s, "attn_norm_num_groups");
    int levels = 0, cin = 0, cout = 0;
    if (dfx_net_cfg_list(s, "block_out_channels", MAX_LEVELS, 1, 8192, c->ch, &levels, file, err) ||
        dfx_net_cfg_int(s, "in_channels", 1, 64, 3, &cin, file, err) ||
        dfx_net_cfg_int(s, "out_channels", 1, 128, 3, &cout, file, err) ||
        dfx_net_cfg_int(s, "layers_per_block", 1, 16, 2, &c->nres, file, err) ||
        dfx_net_cfg_int(s, "norm_num_groups", 1, 1024, 32, &c->groups, file, err) ||
        dfx_net_cfg_int(s, "freq_shift", 0, 1000, 0, &c->freq_shift, file, err) ||
        dfx_net_cfg_int(s, "downsample_padding", 0, 1, 1, &c->dd.down_pad, file, err) ||
        get_bool(s, "flip_sin_to_cos", 1, &c->flip_sin_cos, file, err) ||
        get_bool(s, "center_input_sample", 0, &c->dd.center, file, err) ||
        get_bool(s, "add_attention", 1, &c->dd.mid_attn, file, err) ||
        get_num(s, "mid_block_scale_factor", 1.0, &c->dd.mid_scale, file, err))
        return -1;
    if (levels < 1) return dfx_fail(err, "%s: unet config: block_out_channels is empty", file);
    c->levels = levels;
    if (an && !cJSON_IsNull(an) && !(cJSON_IsNumber(an) && an->valuedouble == c->groups))
        return refuse(file, "attn_norm_num_groups", an, "it must equal norm_num_groups", err);
    if (cin != mc->channels || cout != cin) {
        char v[32];
        snprintf(v, sizeof v, "%d", cout);
        cJSON *num = cJSON_CreateNumber(cout);
        int rc = refuse(file, "out_channels", num,
                        "it must equal in_channels: a learned variance is not supported", err);
        cJSON_Delete(num);
        return rc;
    }
    int T = 0;
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(s, "time_embedding_dim");
    if (td && !cJSON_IsNull(td)) {
        if (dfx_net_cfg_int(s, "time_embedding_dim", 1, 65536, -1, &T, file, err)) return -1;
    } else {
        T = 4 * c->ch[0];
    }
    c->T = T;
    const cJSON *nc = cJSON_GetObjectItemCaseSensitive(s, "num_class_embeds");
    if (nc && !cJSON_IsNull(nc) &&
        dfx_net_cfg_int(s, "num_class_embeds", 1, 100000, -1, &c->classes, file, err))
        return -1;
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(s, "attention_head_dim");
    if (!hd) {
        c->dd.head_dim = 8; /* UNet2DModel's default */
    } else if (!cJSON_IsNull(hd)) {
        if (dfx_net_cfg_int(s, "attention_head_dim", 1, 8192, -1, &c->dd.head_dim, file, err))
            return -1;
    }
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(s, "mid_block_type");
    c->dd.mid = 1;
    if (mid && cJSON_IsNull(mid))
        c->dd.mid = 0;
    else if (want_str(s, "mid_block_type", "UNetMidBlock2D", file, err))
        return -1;
    if (block_types(s, "down_block_types", "DownBlock2D", "AttnDownBlock2D", levels, c->attn, file,
                    err) ||
        block_types(s, "up_block_types", "UpBlock2D", "AttnUpBlock2D", levels, c->dd.up_attn, file,
                    err))
        return -1;
    c->eps = 1e-5f;
    double eps = 1e-5;
    if (get_num(s, "norm_eps", 1e-5, &eps, file, err)) return -1;
    c->eps = (float)eps;
    c->time_scale = mc->path.n_train;
    c->time_offset = -1.0;
    int div = 1 << (levels - 1);
    if (mc->height % div || mc->width % div)
        return dfx_fail(err, "%s: a %d x %d image cannot be halved %d times", file, mc->height,
                        mc->width, levels - 1);
    return 0;
}

/* ---------------------------------------------------------- building */

static const net_res_names res_names = {"norm1", "conv1", "time_emb_proj", "norm2", "conv2",
                                        "conv_shortcut"};

/* Attention (diffusers' Attention with residual_connection): GroupNorm,
 * q, k, v (to_q, to_k, to_v or the legacy query, key, value) as one 1x1
 * convolution, heads of head_dim channels (0: one head), to_out.0 (or
 * proj_attn), plus the input, divided by `rescale`. */
static int attention(net_builder *bd, int in, const char *p, int C, int h, int w, double rescale)
{
    net_impl *u = bd->u;
    const int hd = u->c.dd.head_dim ? u->c.dd.head_dim : C;
    char n[160];
    if (C % hd) {
        if (!bd->failed)
            dfx_fail(bd->err,
                     "%s: unet config: attention_head_dim = %d does not divide the %d channels "
                     "of %s",
                     bd->f->path, hd, C, p);
        bd->failed = 1;
        return 0;
    }
    snprintf(n, sizeof n, "%s.group_norm", p);
    int x = dfx_net_norm(bd, in, n, C, h, w, 0);
    snprintf(n, sizeof n, "%s.to_q.weight", p);
    const int legacy = !dfx_st_has(bd->f, n);
    static const char *const qkv[2][3] = {{"to_q", "to_k", "to_v"}, {"query", "key", "value"}};
    float *W = dfx_alloc((size_t)3 * C * C + (size_t)3 * C, sizeof(float), "attention", bd->err);
    if (!W) {
        bd->failed = 1;
        return 0;
    }
    float *Bv = W + (size_t)3 * C * C;
    for (int i = 0; i < 3 && !bd->failed; i++) {
        int64_t ws[2] = {C, C}, bs[1] = {C};
        size_t nw = 0, nb = 0;
        snprintf(n, sizeof n, "%s.%s.weight", p, qkv[legacy][i]);
        float *hw = dfx_net_weight_host(bd, n, 2, ws, &nw);
        snprintf(n, sizeof n, "%s.%s.bias", p, qkv[legacy][i]);
        float *hb = hw ? dfx_net_weight_host(bd, n, 1, bs, &nb) : NULL;
        if (hw && hb) {
            memcpy(W + (size_t)i * C * C, hw, nw * sizeof *W);
            memcpy(Bv + (size_t)i * C, hb, nb * sizeof *Bv);
        }
        free(hw);
        free(hb);
    }
    const float *dw = dfx_net_upload(bd, W, (size_t)3 * C * C, "attention q, k, v");
    const float *db = dfx_net_upload(bd, Bv, (size_t)3 * C, "attention q, k, v bias");
    free(W);
    x = dfx_net_conv_with(bd, x, dw, db, C, 3 * C, h, w, 1, 1, 0);
    int o = dfx_net_buf(bd, (size_t)C * h * w);
    double hw2 = (double)h * w;
    int heads = C / hd;
    dfx_net_add_op(bd, (net_op){.kind = OP_ATTN, .out = o, .in0 = x, .in1 = -1, .cin = C, .h = h,
                                .w_ = w, .heads = heads,
                                .flops = 4.0 * hw2 * hw2 * C + 5.0 * hw2 * hw2 * heads});
    int64_t ps[2] = {C, C}, pb[1] = {C};
    snprintf(n, sizeof n, "%s.%s.weight", p, legacy ? "proj_attn" : "to_out.0");
    const float *PW = dfx_net_weight(bd, n, 2, ps);
    snprintf(n, sizeof n, "%s.%s.bias", p, legacy ? "proj_attn" : "to_out.0");
    const float *PB = dfx_net_weight(bd, n, 1, pb);
    x = dfx_net_conv_with(bd, o, PW, PB, C, C, h, w, 1, 1, 0);
    return dfx_net_sum(bd, x, in, (size_t)C * h * w, 1.0 / rescale);
}

/* Downsample2D: a stride-2 3x3 convolution, padded by one on every side
 * (downsample_padding 1) or after the last row and column only (0: the 3x3
 * kernel placed in the lower right of a 4x4 kernel with padding 1 reads
 * exactly the same inputs). */
static int downsample(net_builder *bd, int in, const char *p, int C, int h, int w)
{
    if (bd->u->c.dd.down_pad == 1) return dfx_net_conv(bd, in, p, C, C, h, w, 3, 2);
    char n[192];
    int64_t ws[4] = {C, C, 3, 3}, bs[1] = {C};
    size_t nw = 0;
    snprintf(n, sizeof n, "%s.weight", p);
    float *w3 = dfx_net_weight_host(bd, n, 4, ws, &nw);
    snprintf(n, sizeof n, "%s.bias", p);
    const float *B = dfx_net_weight(bd, n, 1, bs);
    float *w4 = w3 ? dfx_alloc((size_t)C * C * 16, sizeof *w4, "downsample", bd->err) : NULL;
    if (!w4) {
        free(w3);
        bd->failed = 1;
        return 0;
    }
    for (size_t oi = 0; oi < (size_t)C * C; oi++)
        for (int r = 0; r < 3; r++)
            for (int q = 0; q < 3; q++) w4[oi * 16 + (r + 1) * 4 + q + 1] = w3[oi * 9 + r * 3 + q];
    const float *W = dfx_net_upload(bd, w4, (size_t)C * C * 16, n);
    free(w3);
    free(w4);
    int out = dfx_net_conv_with(bd, in, W, B, C, C, h, w, 4, 2, 1);
    /* the model's own numbers: the 3x3 kernel's parameters and FLOPs, not
     * the zeros around it */
    net_impl *u = bd->u;
    u->params -= (size_t)C * C * 7;
    if (!bd->failed) {
        net_op *op = &u->ops[u->nops - 1];
        double f3 = op->flops * 9.0 / 16.0;
        u->flops -= op->flops - f3;
        op->flops = f3;
    }
    return out;
}

static int build(net_builder *bd)
{
    net_impl *u = bd->u;
    const net_cfg *c = &u->c;
    const int C = bd->m->cfg.channels;
    int h = bd->m->cfg.height, w = bd->m->cfg.width;
    char n[160];
    /* time (and class) embedding */
    int e0 = dfx_net_buf(bd, (size_t)c->ch[0]);
    dfx_net_add_op(bd, (net_op){.kind = OP_TEMB, .out = e0, .in0 = -1, .in1 = -1, .cin = c->ch[0]});
    int e1 = dfx_net_linear(bd, e0, "time_embedding.linear_1", c->ch[0], c->T, 0);
    int temb = dfx_net_linear(bd, e1, "time_embedding.linear_2", c->T, c->T, 1);
    if (c->classes > 0) {
        /* diffusers has no "no class" row: label K adds nothing */
        int64_t s[2] = {c->classes, c->T};
        size_t nt = 0;
        float *tab = dfx_net_weight_host(bd, "class_embedding.weight", 2, s, &nt);
        float *full = tab ? dfx_alloc(nt + (size_t)c->T, sizeof *full, "classes", bd->err) : NULL;
        if (full) {
            memcpy(full, tab, nt * sizeof *full);
            const float *dt = dfx_net_upload(bd, full, nt + (size_t)c->T, "class_embedding");
            u->params -= (size_t)c->T; /* the "no class" row of zeros is not the model's */
            dfx_net_add_op(bd, (net_op){.kind = OP_CLASS, .out = temb, .in0 = temb, .in1 = -1,
                                        .w = dt, .cin = c->T});
        } else {
            bd->failed = 1;
        }
        free(tab);
        free(full);
    }
    int x = BUF_X;
    if (c->dd.center) { /* 2 x - 1 */
        x = dfx_net_buf(bd, (size_t)C * h * w);
        dfx_net_add_op(bd, (net_op){.kind = OP_AFFINE, .out = x, .in0 = BUF_X, .in1 = -1,
                                    .cin = C * h * w, .ka = 2.0, .kc = -1.0,
                                    .flops = 2.0 * C * h * w});
    }
    int skips[64], ns = 0, sch[64];
    x = dfx_net_conv(bd, x, "conv_in", C, c->ch[0], h, w, 3, 1);
    int ch = c->ch[0];
    skips[ns] = x;
    sch[ns++] = ch;
    for (int l = 0; l < c->levels; l++) {
        int cl = c->ch[l];
        for (int r = 0; r < c->nres; r++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", l, r);
            x = dfx_net_resblock(bd, x, temb, n, &res_names, ch, cl, h, w, 1.0);
            ch = cl;
            if (c->attn[l]) {
                snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", l, r);
                x = attention(bd, x, n, ch, h, w, 1.0);
            }
            if (ns < 64) {
                skips[ns] = x;
                sch[ns++] = ch;
            }
        }
        if (l < c->levels - 1) {
            snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", l);
            x = downsample(bd, x, n, ch, h, w);
            h /= 2;
            w /= 2;
            if (ns < 64) {
                skips[ns] = x;
                sch[ns++] = ch;
            }
        }
    }
    if (c->dd.mid) {
        double f = 1.0 / c->dd.mid_scale;
        x = dfx_net_resblock(bd, x, temb, "mid_block.resnets.0", &res_names, ch, ch, h, w, f);
        if (c->dd.mid_attn) x = attention(bd, x, "mid_block.attentions.0", ch, h, w, c->dd.mid_scale);
        x = dfx_net_resblock(bd, x, temb, "mid_block.resnets.1", &res_names, ch, ch, h, w, f);
    }
    for (int i = 0; i < c->levels; i++) {
        int l = c->levels - 1 - i, cl = c->ch[l];
        for (int r = 0; r <= c->nres; r++) {
            if (ns <= 0) break;
            int s = skips[--ns], cs = sch[ns];
            int cat = dfx_net_buf(bd, (size_t)(ch + cs) * h * w);
            dfx_net_add_op(bd, (net_op){.kind = OP_CONCAT, .out = cat, .in0 = x, .in1 = s,
                                        .cin = ch, .c1 = cs, .h = h, .w_ = w});
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", i, r);
            x = dfx_net_resblock(bd, cat, temb, n, &res_names, ch + cs, cl, h, w, 1.0);
            ch = cl;
            if (c->dd.up_attn[i]) {
                snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", i, r);
                x = attention(bd, x, n, ch, h, w, 1.0);
            }
        }
        if (l > 0) {
            int up = dfx_net_buf(bd, (size_t)ch * 4 * h * w);
            dfx_net_add_op(bd, (net_op){.kind = OP_UP, .out = up, .in0 = x, .in1 = -1, .cin = ch,
                                        .h = h, .w_ = w});
            h *= 2;
            w *= 2;
            snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i);
            x = dfx_net_conv(bd, up, n, ch, ch, h, w, 3, 1);
        }
    }
    x = dfx_net_norm(bd, x, "conv_norm_out", ch, h, w, 1);
    x = dfx_net_conv(bd, x, "conv_out", ch, C, h, w, 3, 1);
    return dfx_net_finish(bd);
}

/* -------------------------------------------------------- the model */

static int diffusers_describe(const dfx_model *m, char *buf, size_t cap)
{
    const net_impl *u = m->impl;
    const net_cfg *c = &u->c;
    int n = snprintf(buf, cap, "architecture diffusers UNet2DModel, %d levels:", c->levels);
    int h = m->cfg.height, w = m->cfg.width;
    for (int l = 0; l < c->levels && n >= 0 && (size_t)n < cap; l++, h /= 2, w /= 2)
        n += snprintf(buf + n, cap - (size_t)n, " %dx%d@%d%s", h, w, c->ch[l],
                      c->attn[l] ? "+attn" : "");
    if (n < 0 || (size_t)n >= cap) return n;
    char heads[48];
    if (c->dd.head_dim)
        snprintf(heads, sizeof heads, "heads of %d channels", c->dd.head_dim);
    else
        snprintf(heads, sizeof heads, "one head per attention");
    n += snprintf(buf + n, cap - (size_t)n,
                  "\n             %d resnets/block, GroupNorm %d groups, %s, time embedding %d "
                  "(timestep tau = %g t - 1, freq_shift %d, %s first)%s%s\n"
                  "classes      %d%s\n"
                  "graph        %d ops, %.1f KiB activations per sample\n",
                  c->nres, c->groups, heads, c->T, c->time_scale, c->freq_shift,
                  c->flip_sin_cos ? "cos" : "sin", c->dd.center ? ", input centred 2x - 1" : "",
                  c->dd.mid ? "" : ", no mid block", c->classes,
                  c->classes ? " (no \"no class\" row in diffusers: unconditional = no class "
                               "embedding)"
                             : "",
                  u->nops, u->arena_per_sample * 4.0 / 1024.0);
    return n;
}

static const dfx_model_vt diffusers_vt = {
    .predict = dfx_unet_predict,
    .jvp = dfx_unet_jvp,
    .reserve = dfx_net_reserve,
    .describe = diffusers_describe,
    .profile = dfx_net_profile,
    .destroy = dfx_net_destroy,
    .scratch_bytes = dfx_net_scratch_bytes,
    .set_class = dfx_unet_set_class,
};

int dfx_diffusers_unet_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    if (!dfx_net_backend_runs(m->be->ops, OP_ALL))
        return dfx_fail(err, "%s: the %s backend cannot run U-Nets yet", f->path, m->be->name);
    if (m->cfg.path.family != DFX_PATH_DISCRETE)
        return dfx_fail(err, "%s: a diffusers network needs a discrete schedule (path family "
                             "\"discrete\")",
                        f->path);
    net_impl *u = dfx_net_load(m, f, &diffusers_vt, parse_diffusers, build, err);
    if (!u || dfx_net_mark_tangents(u, err)) return -1;
    if (u->c.classes > 0) u->cls = DFX_CLASS_CYCLE; /* diffusers always takes a label */
    dfx_unet_enable_graphs(m);
    return 0;
}
