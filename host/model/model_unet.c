/*
 * The U-Net (models/UNET.md). At load time the network becomes a static
 * list of backend operations over numbered buffers; for a batch size the
 * buffers get offsets in one arena (planned once, reused while they do not
 * overlap in time), so evaluation allocates nothing. The same list gives
 * the FLOP count, per-op timing and the tangents of unet_jvp: forward-mode
 * derivatives pushed through the same list, each op's tangent next to the
 * op, in a second arena laid out like the first.
 *
 * On a backend with graphs (CUDA), one evaluation — both passes of
 * classifier-free guidance and their combination included — is recorded
 * once per (batch size, guidance on/off, matrix precision) and replayed
 * with one graph launch; see predict_graph. DIFFLUX_CUDA_GRAPHS=0 in the
 * environment when a model is loaded turns that off for the model (every
 * evaluation then runs op by op, "eagerly"); results are the same bit for
 * bit either way.
 */
#include "core/error.h"
#include "model/model.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 8

typedef struct unet_cfg {
    int ch0, levels, mult[MAX_LEVELS], nres, attn[MAX_LEVELS], heads, groups, T, classes;
    double time_scale;
    float eps;
    /* classifiers (kind "classifier"): channels per level and feature width */
    int ch[MAX_LEVELS], features;
} unet_cfg;

typedef enum {
    U_CONV, U_GN, U_LINEAR, U_ADDCH, U_ADD, U_CONCAT, U_UP, U_ATTN, U_TEMB, U_CLASS,
    U_GNCONV, /* profile only: a GroupNorm run inside the next convolution */
    U_KINDS
} ukind;

static const char *const ukind_names[U_KINDS] = {
    "conv2d", "group_norm", "linear", "add_channel", "add", "concat",
    "upsample", "attention", "time_embed", "class_embed", "gn+conv2d"};

enum { BUF_X = -2, BUF_OUT = -3 };

/* Graphs kept per model, and shapes remembered as evaluated once eagerly. */
#define UNET_GRAPHS 4

/* A recorded evaluation and what it was recorded for. */
typedef struct ugraph {
    dfx_graph *g;  /* NULL: unused */
    int rows, guided, precision;
    unsigned long used; /* last launch, for least-recently-used eviction */
} ugraph;

typedef struct ushape {
    int rows, guided, precision; /* rows 0: none */
} ushape;

typedef struct uop {
    ukind kind;
    int out, in0, in1;     /* buffer ids */
    const float *w, *b;    /* weights on the backend */
    int cin, cout, h, w_, k, stride, pad, groups, silu, heads, c1;
    double flops; /* per sample */
    unsigned char tan0, tan1; /* in0, in1 have nonzero tangents here (mark_tangents) */
} uop;

typedef struct ubuf {
    size_t size; /* floats per sample */
    int first, last;
    size_t off;  /* per-sample offset in the arena */
} ubuf;

typedef struct unet_impl {
    unet_cfg c;
    uop *ops;
    int nops, capops;
    /* fuse[i]: op i is a GroupNorm whose output only op i + 1, a 3x3
     * convolution, reads; the backend runs the pair as one (gn_conv3) */
    unsigned char *fuse;
    ubuf *bufs;
    int nbufs, capbufs;
    float **weights;
    int nweights, capweights;
    double flops;
    size_t params;
    /* plan for batches of up to plan_B */
    int plan_B;
    float *arena, *scratch, *uncond;
    size_t arena_per_sample, scratch_n;
    int *labels;
    const int *forced; /* per-row labels set by dfx_unet_force_labels, or NULL */
    /* conditioning */
    int cls;
    double guidance;
    /* profiling: time per op kind (dfx_model_profile) */
    int prof;
    dfx_profile_entry prof_e[U_KINDS];
    /* tangents (unet_jvp): dep[i] = buffer i depends on x; the others (the
     * time and class embeddings) have zero tangents, never computed */
    unsigned char *dep;
    /* jvp plan for batches of up to jplan_B: the tangent arena has the
     * activation arena's layout (buffer i's tangent lives exactly as long
     * as buffer i), so the offsets are reused as they are */
    int jplan_B;
    float *tarena, *jscratch, *duncond;
    double *jcoef; /* host [2 jplan_B]: the guidance weights */
    /* graphs (predict_graph): allowed (the backend has them, DIFFLUX_CUDA_GRAPHS
     * is not 0, no capture has failed); their fixed input and output
     * [plan_B, dim] on the backend, allocated at the first capture; the
     * graphs of this plan; shapes evaluated eagerly once; counts */
    int graphs;
    float *gx, *gout;
    ugraph graph[UNET_GRAPHS];
    ushape warm[UNET_GRAPHS];
    int nwarm, wnext;
    unsigned long gclock;
    long gcaptures, glaunches, gfailed;
    char gwhy[256]; /* why the last capture failed (dfx_unet_graph_stats) */
} unet_impl;

/* ----------------------------------------------------------- config */

/* The config section a value belongs to ("unet", "classifier"). */
static const char *sect(const cJSON *s)
{
    return s && s->string ? s->string : "unet";
}

static int cfg_int(const cJSON *s, const char *key, int lo, int hi, int dflt, int *out,
                   const char *file, dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!j) {
        if (dflt < lo) return dfx_fail(err, "%s: config: missing %s.%s", file, sect(s), key);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < lo ||
        j->valuedouble > hi)
        return dfx_fail(err, "%s: config: %s.%s must be an integer in [%d, %d]", file, sect(s), key, lo,
                        hi);
    *out = (int)j->valuedouble;
    return 0;
}

static int cfg_list(const cJSON *s, const char *key, int maxn, int lo, int hi, int *vals, int *n,
                    const char *file, dfx_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) > maxn)
        return dfx_fail(err, "%s: config: %s.%s must be a list of at most %d integers", file,
                        sect(s), key, maxn);
    *n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, j)
    {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            it->valuedouble < lo || it->valuedouble > hi)
            return dfx_fail(err, "%s: config: %s.%s entries must be integers in [%d, %d]",
                            file, sect(s), key, lo, hi);
        vals[(*n)++] = (int)it->valuedouble;
    }
    return 0;
}

static int parse_unet(unet_cfg *c, const dfx_model_config *mc, const char *file, dfx_error *err)
{
    memset(c, 0, sizeof *c);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(mc->root, "unet");
    if (!cJSON_IsObject(s)) return dfx_fail(err, "%s: config: missing object 'unet'", file);
    int nattn = 0, attn[MAX_LEVELS];
    if (cfg_int(s, "base_channels", 2, 4096, -1, &c->ch0, file, err) ||
        cfg_list(s, "channel_mult", MAX_LEVELS, 1, 64, c->mult, &c->levels, file, err) ||
        cfg_int(s, "num_res_blocks", 1, 16, -1, &c->nres, file, err) ||
        cfg_list(s, "attention_levels", MAX_LEVELS, 0, MAX_LEVELS - 1, attn, &nattn, file,
                 err) ||
        cfg_int(s, "heads", 1, 256, 1, &c->heads, file, err) ||
        cfg_int(s, "groups", 1, 1024, -1, &c->groups, file, err) ||
        cfg_int(s, "time_embed_dim", 1, 4096, -1, &c->T, file, err) ||
        cfg_int(s, "num_classes", 0, 100000, 0, &c->classes, file, err))
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

/* The classifier section: {"channels": [..], "features": F, "num_classes": K,
 * "groups": G, "norm_eps": e} (models/FORMAT.md). */
static int parse_classifier(unet_cfg *c, const dfx_model_config *mc, const char *file,
                            dfx_error *err)
{
    memset(c, 0, sizeof *c);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(mc->root, "classifier");
    if (!cJSON_IsObject(s)) return dfx_fail(err, "%s: config: missing object 'classifier'", file);
    if (cfg_list(s, "channels", MAX_LEVELS, 1, 4096, c->ch, &c->levels, file, err) ||
        cfg_int(s, "features", 1, 65536, -1, &c->features, file, err) ||
        cfg_int(s, "num_classes", 1, 100000, -1, &c->classes, file, err) ||
        cfg_int(s, "groups", 1, 1024, -1, &c->groups, file, err))
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

typedef struct builder {
    dfx_model *m;
    unet_impl *u;
    dfx_st_file *f;
    dfx_error *err;
    int failed;
} builder;

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int nc = *cap ? *cap * 2 : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

static int new_buf(builder *bd, size_t size)
{
    unet_impl *u = bd->u;
    if (grow((void **)&u->bufs, &u->capbufs, u->nbufs + 1, sizeof *u->bufs)) {
        bd->failed = 1;
        return 0;
    }
    ubuf *b = &u->bufs[u->nbufs];
    b->size = size;
    b->first = u->nops; /* defined by the next op */
    b->last = u->nops;
    return u->nbufs++;
}

static void add_op(builder *bd, uop op)
{
    unet_impl *u = bd->u;
    if (bd->failed) return;
    u->flops += op.flops;
    if (grow((void **)&u->ops, &u->capops, u->nops + 1, sizeof *u->ops)) {
        bd->failed = 1;
        return;
    }
    int idx = u->nops++;
    u->ops[idx] = op;
    if (op.in0 >= 0) u->bufs[op.in0].last = idx;
    if (op.in1 >= 0) u->bufs[op.in1].last = idx;
    if (op.out >= 0) u->bufs[op.out].last = idx > u->bufs[op.out].last ? idx : u->bufs[op.out].last;
}

/* A weight tensor with the expected shape, uploaded to the backend. */
static const float *weight(builder *bd, const char *name, int ndim, const int64_t *shape)
{
    if (bd->failed) return NULL;
    const dfx_st_tensor *t = dfx_st_get(bd->f, name, ndim, shape, bd->err);
    if (!t) {
        bd->failed = 1;
        return NULL;
    }
    unet_impl *u = bd->u;
    if (grow((void **)&u->weights, &u->capweights, u->nweights + 1, sizeof *u->weights)) {
        bd->failed = 1;
        dfx_fail(bd->err, "out of memory");
        return NULL;
    }
    float *host = dfx_alloc(t->numel, sizeof(float), name, bd->err);
    float *dev = host ? dfx_be_alloc(bd->m->be, t->numel * sizeof(float), name, bd->err) : NULL;
    if (!dev) {
        free(host);
        bd->failed = 1;
        return NULL;
    }
    u->weights[u->nweights++] = dev;
    dfx_st_to_f32(bd->f, t, host);
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(host[i])) {
            dfx_fail(bd->err, "%s: tensor '%s' holds a NaN or Inf at index %zu", bd->f->path,
                     name, i);
            bd->failed = 1;
            break;
        }
    if (!bd->failed && bd->m->be->ops->upload(bd->m->be, dev, host, t->numel * 4, bd->err))
        bd->failed = 1;
    free(host);
    u->params += t->numel;
    return dev;
}

static void wname(char *buf, size_t cap, const char *prefix, const char *leaf)
{
    snprintf(buf, cap, "%s.%s", prefix, leaf);
}

static int conv(builder *bd, int in, const char *prefix, int cin, int cout, int h, int w, int k,
                int stride)
{
    char n[160];
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
    wname(n, sizeof n, prefix, "weight");
    const float *W = weight(bd, n, 4, ws);
    wname(n, sizeof n, prefix, "bias");
    const float *B = weight(bd, n, 1, bs);
    int pad = k / 2, ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
    int out = new_buf(bd, (size_t)cout * ho * wo);
    add_op(bd, (uop){.kind = U_CONV, .out = out, .in0 = in, .in1 = -1, .w = W, .b = B,
                     .cin = cin, .cout = cout, .h = h, .w_ = w, .k = k, .stride = stride,
                     .pad = pad, .flops = 2.0 * cout * cin * k * k * ho * wo});
    return out;
}

static int norm(builder *bd, int in, const char *prefix, int C, int h, int w, int act)
{
    unet_impl *u = bd->u;
    if (C % u->c.groups) {
        if (!bd->failed)
            dfx_fail(bd->err, "%s: config: %s.groups = %d does not divide the %d channels of %s",
                     bd->f->path, bd->m->cfg.kind, u->c.groups, C, prefix);
        bd->failed = 1;
        return 0;
    }
    char n[160];
    int64_t s[1] = {C};
    wname(n, sizeof n, prefix, "weight");
    const float *G = weight(bd, n, 1, s);
    wname(n, sizeof n, prefix, "bias");
    const float *B = weight(bd, n, 1, s);
    int out = new_buf(bd, (size_t)C * h * w);
    add_op(bd, (uop){.kind = U_GN, .out = out, .in0 = in, .in1 = -1, .w = G, .b = B, .cin = C,
                     .h = h, .w_ = w, .groups = u->c.groups, .silu = act,
                     .flops = 8.0 * C * h * w});
    return out;
}

static int linear(builder *bd, int in, const char *prefix, int fin, int fout, int silu_in)
{
    char n[160];
    int64_t ws[2] = {fout, fin}, bs[1] = {fout};
    wname(n, sizeof n, prefix, "weight");
    const float *W = weight(bd, n, 2, ws);
    wname(n, sizeof n, prefix, "bias");
    const float *B = weight(bd, n, 1, bs);
    int out = new_buf(bd, (size_t)fout);
    add_op(bd, (uop){.kind = U_LINEAR, .out = out, .in0 = in, .in1 = -1, .w = W, .b = B,
                     .cin = fin, .cout = fout, .silu = silu_in, .flops = 2.0 * fin * fout});
    return out;
}

static int add(builder *bd, int a, int b, size_t size)
{
    int out = new_buf(bd, size);
    add_op(bd, (uop){.kind = U_ADD, .out = out, .in0 = a, .in1 = b, .cin = (int)size,
                     .flops = (double)size});
    return out;
}

static int resblock(builder *bd, int in, int temb, const char *p, int cin, int cout, int h, int w)
{
    char n[128];
    snprintf(n, sizeof n, "%s.norm1", p);
    int x = norm(bd, in, n, cin, h, w, 1);
    snprintf(n, sizeof n, "%s.conv1", p);
    x = conv(bd, x, n, cin, cout, h, w, 3, 1);
    snprintf(n, sizeof n, "%s.temb", p);
    int e = linear(bd, temb, n, bd->u->c.T, cout, 1);
    add_op(bd, (uop){.kind = U_ADDCH, .out = x, .in0 = e, .in1 = x, .cin = cout, .h = h, .w_ = w});
    snprintf(n, sizeof n, "%s.norm2", p);
    x = norm(bd, x, n, cout, h, w, 1);
    snprintf(n, sizeof n, "%s.conv2", p);
    x = conv(bd, x, n, cout, cout, h, w, 3, 1);
    int skip = in;
    if (cin != cout) {
        snprintf(n, sizeof n, "%s.skip", p);
        skip = conv(bd, in, n, cin, cout, h, w, 1, 1);
    }
    return add(bd, x, skip, (size_t)cout * h * w);
}

static int attention(builder *bd, int in, const char *p, int C, int h, int w)
{
    unet_impl *u = bd->u;
    if (C % u->c.heads) {
        if (!bd->failed)
            dfx_fail(bd->err, "%s: config: unet.heads = %d does not divide the %d channels of %s",
                     bd->f->path, u->c.heads, C, p);
        bd->failed = 1;
        return 0;
    }
    char n[128];
    snprintf(n, sizeof n, "%s.norm", p);
    int x = norm(bd, in, n, C, h, w, 0);
    snprintf(n, sizeof n, "%s.qkv", p);
    x = conv(bd, x, n, C, 3 * C, h, w, 1, 1);
    int o = new_buf(bd, (size_t)C * h * w);
    double hw = (double)h * w;
    add_op(bd, (uop){.kind = U_ATTN, .out = o, .in0 = x, .in1 = -1, .cin = C, .h = h, .w_ = w,
                     .heads = u->c.heads, .flops = 4.0 * hw * hw * C + 5.0 * hw * hw * u->c.heads});
    snprintf(n, sizeof n, "%s.proj", p);
    x = conv(bd, o, n, C, C, h, w, 1, 1);
    return add(bd, in, x, (size_t)C * h * w);
}

static int build(builder *bd)
{
    unet_impl *u = bd->u;
    const unet_cfg *c = &u->c;
    const int C = bd->m->cfg.channels;
    int h = bd->m->cfg.height, w = bd->m->cfg.width;
    char n[128];
    /* time (and class) embedding */
    int e0 = new_buf(bd, (size_t)c->ch0);
    add_op(bd, (uop){.kind = U_TEMB, .out = e0, .in0 = -1, .in1 = -1, .cin = c->ch0});
    int e1 = linear(bd, e0, "temb.lin1", c->ch0, c->T, 0);
    int temb = linear(bd, e1, "temb.lin2", c->T, c->T, 1);
    if (c->classes > 0) {
        int64_t s[2] = {c->classes + 1, c->T};
        const float *tab = weight(bd, "class_emb.weight", 2, s);
        add_op(bd, (uop){.kind = U_CLASS, .out = temb, .in0 = temb, .in1 = -1, .w = tab,
                         .cin = c->T});
    }
    int skips[64], ns = 0, sch[64];
    int x = conv(bd, BUF_X, "conv_in", C, c->ch0, h, w, 3, 1);
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
            x = conv(bd, x, n, ch, ch, h, w, 3, 2);
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
            int cat = new_buf(bd, (size_t)(ch + cs) * h * w);
            add_op(bd, (uop){.kind = U_CONCAT, .out = cat, .in0 = x, .in1 = s, .cin = ch,
                             .c1 = cs, .h = h, .w_ = w});
            snprintf(n, sizeof n, "up.%d.res.%d", l, r);
            x = resblock(bd, cat, temb, n, ch + cs, cl, h, w);
            ch = cl;
            if (c->attn[l]) {
                snprintf(n, sizeof n, "up.%d.attn.%d", l, r);
                x = attention(bd, x, n, ch, h, w);
            }
        }
        if (l > 0) {
            int up = new_buf(bd, (size_t)ch * 4 * h * w);
            add_op(bd, (uop){.kind = U_UP, .out = up, .in0 = x, .in1 = -1, .cin = ch, .h = h,
                             .w_ = w});
            h *= 2;
            w *= 2;
            snprintf(n, sizeof n, "up.%d.upsample", l);
            x = conv(bd, up, n, ch, ch, h, w, 3, 1);
        }
    }
    x = norm(bd, x, "out.norm", ch, h, w, 1);
    x = conv(bd, x, "out.conv", ch, C, h, w, 3, 1);
    /* the last op writes the caller's output */
    if (!bd->failed) u->ops[u->nops - 1].out = BUF_OUT;
    if (bd->failed && !bd->err->msg[0]) dfx_fail(bd->err, "%s: out of memory", bd->f->path);
    return bd->failed ? -1 : 0;
}

/* The classifier (models/difflux_ref/classifier.py): conv_in, then per
 * level GroupNorm+SiLU, a 3x3 conv and (but the last) a stride-2 3x3 conv;
 * GroupNorm+SiLU, flatten, `feat` (the features), `head` on SiLU(features)
 * (the logits). The output row is [features, logits]. */
static int build_classifier(builder *bd)
{
    unet_impl *u = bd->u;
    const unet_cfg *c = &u->c;
    int h = bd->m->cfg.height, w = bd->m->cfg.width;
    char n[128];
    int x = conv(bd, BUF_X, "conv_in", bd->m->cfg.channels, c->ch[0], h, w, 3, 1);
    int ch = c->ch[0];
    for (int l = 0; l < c->levels; l++) {
        snprintf(n, sizeof n, "blocks.%d.norm", l);
        x = norm(bd, x, n, ch, h, w, 1);
        snprintf(n, sizeof n, "blocks.%d.conv", l);
        x = conv(bd, x, n, ch, c->ch[l], h, w, 3, 1);
        ch = c->ch[l];
        if (l + 1 < c->levels) {
            snprintf(n, sizeof n, "blocks.%d.down", l);
            x = conv(bd, x, n, ch, ch, h, w, 3, 2);
            h = (h - 1) / 2 + 1;
            w = (w - 1) / 2 + 1;
        }
    }
    x = norm(bd, x, "out.norm", ch, h, w, 1);
    int f = linear(bd, x, "feat", ch * h * w, c->features, 0);
    int lg = linear(bd, f, "head", c->features, c->classes, 1);
    int cat = new_buf(bd, (size_t)c->features + (size_t)c->classes);
    add_op(bd, (uop){.kind = U_CONCAT, .out = cat, .in0 = f, .in1 = lg, .cin = c->features,
                     .c1 = c->classes, .h = 1, .w_ = 1});
    if (!bd->failed) u->ops[u->nops - 1].out = BUF_OUT;
    if (bd->failed && !bd->err->msg[0]) dfx_fail(bd->err, "%s: out of memory", bd->f->path);
    return bd->failed ? -1 : 0;
}

/* ---------------------------------------------------------- planning */

/* Offsets (per sample) for every buffer: greedy first fit among the
 * buffers alive at the same time. */
static size_t plan_offsets(unet_impl *u)
{
    size_t peak = 0;
    for (int i = 0; i < u->nbufs; i++) {
        ubuf *b = &u->bufs[i];
        size_t off = 0;
        int moved = 1;
        while (moved) {
            moved = 0;
            for (int j = 0; j < i; j++) {
                const ubuf *o = &u->bufs[j];
                int overlap_t = !(o->last < b->first || b->last < o->first);
                int overlap_m = off < o->off + o->size && o->off < off + b->size;
                if (overlap_t && overlap_m) {
                    off = o->off + o->size;
                    moved = 1;
                }
            }
        }
        b->off = off;
        if (off + b->size > peak) peak = off + b->size;
    }
    return peak;
}

/* The graphs bake in the plan's buffers: they go with it. */
static void free_graphs(dfx_model *m, unet_impl *u)
{
    dfx_backend *be = m->be;
    for (int i = 0; i < UNET_GRAPHS; i++) {
        if (u->graph[i].g) be->ops->graph_free(be, u->graph[i].g);
        u->graph[i].g = NULL;
    }
    if (u->gx) be->ops->free(be, u->gx);
    if (u->gout) be->ops->free(be, u->gout);
    u->gx = u->gout = NULL;
}

static void free_plan(dfx_model *m, unet_impl *u)
{
    dfx_backend *be = m->be;
    free_graphs(m, u);
    if (u->arena) be->ops->free(be, u->arena);
    if (u->scratch) be->ops->free(be, u->scratch);
    if (u->uncond) be->ops->free(be, u->uncond);
    free(u->labels);
    u->arena = u->scratch = u->uncond = NULL;
    u->labels = NULL;
    u->plan_B = 0;
}

/* The largest scratch (floats) any op of the graph needs for a batch of B. */
static size_t max_op_scratch(const unet_impl *u, dfx_backend *be, int B)
{
    size_t scratch = 0;
    for (int i = 0; i < u->nops; i++) {
        const uop *op = &u->ops[i];
        size_t s = 0;
        if (op->kind == U_CONV)
            s = be->ops->conv_scratch(be, B, op->cin, op->h, op->w_, op->k, op->stride, op->pad);
        if (op->kind == U_ATTN)
            s = be->ops->attention_scratch(be, B, op->cin, op->h * op->w_, op->heads);
        if (s > scratch) scratch = s;
    }
    return scratch;
}

static int plan(dfx_model *m, unet_impl *u, int B, dfx_error *err)
{
    if (B <= u->plan_B) return 0;
    free_plan(m, u);
    dfx_backend *be = m->be;
    size_t scratch = max_op_scratch(u, be, B);
    u->arena = dfx_be_alloc(be, u->arena_per_sample * B * sizeof(float), "U-Net activations",
                            err);
    u->scratch = dfx_be_alloc(be, (scratch ? scratch : 1) * sizeof(float), "U-Net scratch", err);
    u->uncond = dfx_be_alloc(be, m->dim * B * sizeof(float), "guidance buffer", err);
    u->labels = dfx_alloc((size_t)B, sizeof(int), "labels", err);
    if (!u->arena || !u->scratch || !u->uncond || !u->labels) {
        free_plan(m, u);
        return -1;
    }
    u->scratch_n = scratch;
    u->plan_B = B;
    return 0;
}

/* Which buffers depend on x: the op list is in execution order, so one
 * pass propagates it, noting for each op which inputs have a tangent at
 * that point (an in-place op may give its buffer one it did not have). */
static int mark_tangents(unet_impl *u, dfx_error *err)
{
    u->dep = dfx_alloc((size_t)(u->nbufs > 0 ? u->nbufs : 1), 1, "U-Net tangent map", err);
    if (!u->dep) return -1;
    for (int i = 0; i < u->nops; i++) {
        uop *op = &u->ops[i];
        op->tan0 = op->in0 == BUF_X || (op->in0 >= 0 && u->dep[op->in0]);
        op->tan1 = op->in1 == BUF_X || (op->in1 >= 0 && u->dep[op->in1]);
        if (op->out >= 0) u->dep[op->out] |= op->tan0 | op->tan1;
    }
    return 0;
}

static void free_jplan(dfx_model *m, unet_impl *u)
{
    dfx_backend *be = m->be;
    if (u->tarena) be->ops->free(be, u->tarena);
    if (u->jscratch) be->ops->free(be, u->jscratch);
    if (u->duncond) be->ops->free(be, u->duncond);
    free(u->jcoef);
    u->tarena = u->jscratch = u->duncond = NULL;
    u->jcoef = NULL;
    u->jplan_B = 0;
}

/* What unet_jvp needs beyond plan(): the tangent arena, scratch for the
 * attention tangents and the SiLU tangent of linear layers, and the
 * unconditional tangent for guidance. Planned once per batch size, like
 * plan(); the convolutions of tangents use plan()'s scratch. */
static int plan_jvp(dfx_model *m, unet_impl *u, int B, dfx_error *err)
{
    if (B <= u->jplan_B) return 0;
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    if (!o->group_norm_jvp || !o->attention_jvp || !o->attention_jvp_scratch || !o->silu_jvp)
        return dfx_fail(err, "%s: the %s backend has no U-Net tangent ops (group_norm_jvp, "
                        "attention_jvp, silu_jvp)", m->file, be->name);
    free_jplan(m, u);
    size_t scratch = 0;
    for (int i = 0; i < u->nops; i++) {
        const uop *op = &u->ops[i];
        size_t s = 0;
        if (!op->tan0 && !op->tan1) continue;
        if (op->kind == U_ATTN)
            s = o->attention_jvp_scratch(be, B, op->cin, op->h * op->w_, op->heads);
        if (op->kind == U_LINEAR && op->silu) s = (size_t)B * op->cin;
        if (s > scratch) scratch = s;
    }
    u->tarena = dfx_be_alloc(be, u->arena_per_sample * B * sizeof(float), "U-Net tangents", err);
    u->jscratch =
        dfx_be_alloc(be, (scratch ? scratch : 1) * sizeof(float), "U-Net tangent scratch", err);
    if (u->c.classes > 0)
        u->duncond = dfx_be_alloc(be, m->dim * B * sizeof(float), "guidance tangent", err);
    u->jcoef = dfx_alloc((size_t)B * 2, sizeof(double), "guidance weights", err);
    if (!u->tarena || !u->jscratch || (u->c.classes > 0 && !u->duncond) || !u->jcoef) {
        free_jplan(m, u);
        return -1;
    }
    u->jplan_B = B;
    return 0;
}

/* ---------------------------------------------------------- running */

static float *ptr(unet_impl *u, int id, int B, const float *x, float *out)
{
    if (id == BUF_X) return (float *)x;
    if (id == BUF_OUT) return out;
    return u->arena + u->bufs[id].off * (size_t)B;
}

/* Op `op` of the list on a batch of B. */
static void run_op(dfx_model *m, unet_impl *u, const uop *op, const double *t, const float *x,
                   float *out, int B)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    float *y = ptr(u, op->out, B, x, out);
    const float *a = op->in0 != -1 ? ptr(u, op->in0, B, x, out) : NULL;
    const float *b = op->in1 != -1 ? ptr(u, op->in1, B, x, out) : NULL;
    int hw = op->h * op->w_;
    switch (op->kind) {
    case U_CONV:
        o->conv2d(be, y, a, op->w, op->b, B, op->cin, op->h, op->w_, op->cout, op->k,
                  op->stride, op->pad, u->scratch);
        break;
    case U_GN:
        o->group_norm(be, y, a, op->w, op->b, B, op->cin, hw, op->groups, u->c.eps, op->silu);
        break;
    case U_LINEAR:
        o->linear(be, y, a, op->w, op->b, B, op->cin, op->cout, op->silu);
        break;
    case U_ADDCH:
        o->add_channel(be, y, a, B, op->cin, hw);
        break;
    case U_ADD:
        o->add(be, y, a, b, (size_t)B * op->cin);
        break;
    case U_CONCAT:
        o->concat(be, y, a, op->cin, b, op->c1, B, hw);
        break;
    case U_UP:
        o->upsample2x(be, y, a, B, op->cin, op->h, op->w_);
        break;
    case U_ATTN:
        o->attention(be, y, a, B, op->cin, hw, op->heads, u->scratch);
        break;
    case U_TEMB:
        o->time_embed(be, y, t, B, op->cin, u->c.time_scale);
        break;
    case U_CLASS:
        o->embed_add(be, y, op->w, u->labels, B, op->cin);
        break;
    default:
        break;
    }
}

static void forward(dfx_model *m, unet_impl *u, const double *t, const float *x, float *out,
                    int B)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    double t0 = 0.0;
    for (int i = 0; i < u->nops; i++) {
        const uop *op = &u->ops[i];
        const int fused = u->fuse && u->fuse[i] && B >= be->threads;
        if (u->prof) {
            o->sync(be, NULL);
            t0 = dfx_seconds();
        }
        if (fused) {
            const uop *cv = &u->ops[i + 1];
            o->gn_conv3(be, ptr(u, cv->out, B, x, out), ptr(u, op->in0, B, x, out), op->w, op->b,
                        op->groups, u->c.eps, op->silu, cv->w, cv->b, B, op->cin, op->h, op->w_,
                        cv->cout, u->scratch);
        } else {
            run_op(m, u, op, t, x, out, B);
        }
        if (u->prof) {
            o->sync(be, NULL);
            dfx_profile_entry *e = &u->prof_e[fused ? U_GNCONV : op->kind];
            e->calls++;
            e->seconds += dfx_seconds() - t0;
            e->flops += (op->flops + (fused ? u->ops[i + 1].flops : 0.0)) * B;
        }
        i += fused;
    }
}

/* ---------------------------------------------------------- tangents */

/* Floats per sample of buffer id. */
static size_t buf_size(const dfx_model *m, const unet_impl *u, int id)
{
    return id >= 0 ? u->bufs[id].size : m->dim;
}

/* The tangent of buffer id: v for x, dout for the output, else its slot in
 * the tangent arena. */
static float *tptr(unet_impl *u, int id, int B, const float *v, float *dout)
{
    if (id == BUF_X) return (float *)v;
    if (id == BUF_OUT) return dout;
    return u->tarena + u->bufs[id].off * (size_t)B;
}

/* Zeroes a tangent slot (lincomb of no terms, c0 = NULL, writes 0). */
static void tzero(dfx_model *m, float *p, int B, size_t per)
{
    m->be->ops->lincomb(m->be, p, 0, NULL, NULL, NULL, B, per);
}

/* The tangent of input id of an op that reads it whole (nonzero: has a
 * tangent there): one with a zero tangent gets its slot zeroed first (free
 * to write: the slot is the buffer's own while the buffer is alive, and it
 * is alive at this op). */
static const float *tin(dfx_model *m, unet_impl *u, int id, int nonzero, int B, const float *v,
                        float *dout)
{
    float *p = tptr(u, id, B, v, dout);
    if (!nonzero) tzero(m, p, B, buf_size(m, u, id));
    return p;
}

/* The tangent of op `op`, after the op has run (its inputs are still
 * alive: an op's output never shares memory with its inputs except in the
 * in-place add_channel and class_embed, which add a constant). */
static void tangent_op(dfx_model *m, unet_impl *u, const uop *op, const float *x,
                       const float *v, float *out, float *dout, int B)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    const int d0 = op->tan0, d1 = op->tan1;
    float *dy = tptr(u, op->out, B, v, dout);
    if (!d0 && !d1) { /* a constant: only the network's output needs writing */
        if (op->out == BUF_OUT) tzero(m, dy, B, m->dim);
        return;
    }
    const float *a = op->in0 != -1 ? ptr(u, op->in0, B, x, out) : NULL;
    int hw = op->h * op->w_;
    switch (op->kind) {
    case U_CONV: /* linear in x: the same convolution without the bias */
        o->conv2d(be, dy, tin(m, u, op->in0, d0, B, v, dout), op->w, NULL, B, op->cin, op->h,
                  op->w_, op->cout, op->k, op->stride, op->pad, u->scratch);
        break;
    case U_GN:
        o->group_norm_jvp(be, dy, a, tin(m, u, op->in0, d0, B, v, dout), op->w, op->b, B, op->cin,
                          hw, op->groups, u->c.eps, op->silu);
        break;
    case U_LINEAR:
        if (op->silu) { /* W (SiLU'(x) dx) */
            o->silu_jvp(be, u->jscratch, a, tin(m, u, op->in0, d0, B, v, dout),
                        (size_t)B * op->cin);
            o->linear(be, dy, u->jscratch, op->w, NULL, B, op->cin, op->cout, 0);
        } else {
            o->linear(be, dy, tin(m, u, op->in0, d0, B, v, dout), op->w, NULL, B, op->cin, op->cout,
                      0);
        }
        break;
    case U_ADDCH: /* in place on in1 (= out): its tangent plus the embedding's */
        if (!d1) tzero(m, dy, B, (size_t)op->cin * hw);
        if (d0) o->add_channel(be, dy, tptr(u, op->in0, B, v, dout), B, op->cin, hw);
        break;
    case U_ADD:
        o->add(be, dy, tin(m, u, op->in0, d0, B, v, dout), tin(m, u, op->in1, d1, B, v, dout),
               (size_t)B * op->cin);
        break;
    case U_CONCAT:
        o->concat(be, dy, tin(m, u, op->in0, d0, B, v, dout), op->cin,
                  tin(m, u, op->in1, d1, B, v, dout), op->c1, B, hw);
        break;
    case U_UP:
        o->upsample2x(be, dy, tin(m, u, op->in0, d0, B, v, dout), B, op->cin, op->h, op->w_);
        break;
    case U_ATTN:
        o->attention_jvp(be, dy, a, tin(m, u, op->in0, d0, B, v, dout), B, op->cin, hw, op->heads,
                         u->jscratch);
        break;
    case U_CLASS: /* in place, adds a constant: the tangent is unchanged */
    case U_TEMB:  /* no inputs */
    default:
        break;
    }
}

/* The network and its tangent along v: each op, then its tangent. The
 * forward ops are predict's, on the same buffers, so out is bit for bit
 * what forward() gives. Not profiled. */
static void forward_jvp(dfx_model *m, unet_impl *u, const double *t, const float *x,
                        const float *v, float *out, float *dout, int B)
{
    for (int i = 0; i < u->nops; i++) {
        run_op(m, u, &u->ops[i], t, x, out, B);
        tangent_op(m, u, &u->ops[i], x, v, out, dout, B);
    }
}

static int unet_profile(dfx_model *m, int enable, const dfx_profile_entry **list)
{
    unet_impl *u = m->impl;
    if (enable >= 0) u->prof = enable;
    if (enable == 1)
        for (int k = 0; k < U_KINDS; k++)
            u->prof_e[k] = (dfx_profile_entry){ukind_names[k], 0, 0.0, 0.0};
    if (list) *list = u->prof_e;
    return U_KINDS;
}

static void set_labels(dfx_model *m, unet_impl *u, int B, int cond)
{
    for (int r = 0; r < B; r++) {
        int y = u->c.classes; /* "no class" */
        if (u->forced) {
            u->labels[r] = u->forced[r];
            continue;
        }
        if (cond && u->cls >= 0) y = u->cls;
        if (cond && u->cls == DFX_CLASS_CYCLE) y = (int)((m->first_index + (uint64_t)r) % (uint64_t)u->c.classes);
        u->labels[r] = y;
    }
}

/* One evaluation as the backend sees it: the network with this call's
 * labels, and with guidance (classifier-free: P = P_u + w (P_c - P_u)) the
 * network again without class and out = w out + (1 - w) P_u, cf [2 rows]
 * holding the weights. Eager or as a graph pass, the same op calls. */
static void evaluate(dfx_model *m, unet_impl *u, const double *t, const float *x, float *out,
                     int rows, int conditional, int guided, const double *cf)
{
    set_labels(m, u, rows, conditional);
    forward(m, u, t, x, out, rows);
    if (guided) {
        set_labels(m, u, rows, 0);
        forward(m, u, t, x, u->uncond, rows);
        const float *xs[2] = {out, u->uncond};
        m->be->ops->lincomb(m->be, out, 2, xs, cf, NULL, rows, m->dim);
    }
}

static int same_shape(int r0, int g0, int p0, int r1, int g1, int p1)
{
    return r0 == r1 && g0 == g1 && p0 == p1;
}

/* Records the graph of one evaluation of this shape (a measure pass, then
 * the capture pass, on the graph's fixed buffers gx -> gout and this call's
 * host data) into the least recently used cache entry. Any failure turns
 * graphs off for this model and returns NULL, reporting nothing: the
 * caller evaluates eagerly, which reports whatever fails again. */
static ugraph *capture_graph(dfx_model *m, unet_impl *u, const double *t, int rows,
                             int conditional, int guided, const double *cf)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    dfx_error e; /* not the caller's: eager evaluation follows */
    e.msg[0] = 0;
    dfx_graph *g = NULL;
    ugraph *slot = NULL; /* an unused entry, else the least recently used */
    for (int i = 0; i < UNET_GRAPHS; i++) {
        ugraph *c = &u->graph[i];
        if (!c->g) {
            slot = c;
            break;
        }
        if (!slot || c->used < slot->used) slot = c;
    }
    if (slot->g) {
        o->graph_free(be, slot->g);
        slot->g = NULL;
    }
    const size_t bytes = (size_t)u->plan_B * m->dim * sizeof(float);
    if (!u->gx) u->gx = dfx_be_alloc(be, bytes, "graph input", &e);
    if (u->gx && !u->gout) u->gout = dfx_be_alloc(be, bytes, "graph output", &e);
    if (!u->gout) goto fail;
    g = o->graph_begin(be, &e);
    if (!g) goto fail;
    evaluate(m, u, t, u->gx, u->gout, rows, conditional, guided, cf); /* measure */
    if (o->graph_capture(be, g, &e)) goto fail;
    evaluate(m, u, t, u->gx, u->gout, rows, conditional, guided, cf); /* capture */
    if (o->graph_end(be, g, &e)) goto fail;
    *slot = (ugraph){g, rows, guided, be->precision, 0};
    u->gcaptures++;
    return slot;
fail:
    if (g) o->graph_free(be, g); /* also ends a pass or capture in progress */
    u->graphs = 0;
    u->gfailed++;
    snprintf(u->gwhy, sizeof u->gwhy, "%.255s", e.msg);
    return NULL;
}

/* An evaluation through a graph. The graph reads and writes fixed buffers
 * (the arena, scratch, the guidance buffer, gx, gout: pointers are baked
 * in), so x is copied into gx first and the result out of gout after
 * (device-to-device, outside the graph). The host data of the ops (times,
 * labels, guidance weights) is not baked in: a refill pass writes this
 * call's into the graph's staging memory before the launch. So class,
 * labels, first_index and the guidance weight may change between replays;
 * what changes the recorded ops — the batch size, guidance on or off (one
 * pass or two), the matrix precision — selects another graph, and a new
 * plan (a larger batch: another arena) frees them all. A shape is
 * evaluated eagerly the first time it is seen (a warm-up: lazy loading of
 * kernels, cuBLAS's first calls) and recorded the second time; up to
 * UNET_GRAPHS graphs are kept, least recently used evicted. So samplers,
 * whose every evaluation in a batch has the same number of rows (dopri5
 * included: finished rows are still evaluated), record once per batch size
 * and replay every step after the first two. */
static int predict_graph(dfx_model *m, unet_impl *u, const double *t, const float *x,
                         float *out, int rows, int conditional, int guided, const double *cf,
                         dfx_error *err)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    const int prec = be->precision;
    ugraph *gr = NULL;
    for (int i = 0; i < UNET_GRAPHS && !gr; i++)
        if (u->graph[i].g &&
            same_shape(u->graph[i].rows, u->graph[i].guided, u->graph[i].precision, rows, guided,
                       prec))
            gr = &u->graph[i];
    const size_t bytes = (size_t)rows * m->dim * sizeof(float);
    if (gr) {
        o->copy(be, u->gx, x, bytes);
        if (o->graph_refill(be, gr->g, err)) return -1;
        evaluate(m, u, t, u->gx, u->gout, rows, conditional, guided, cf); /* refill */
    } else {
        int seen = 0;
        for (int i = 0; i < u->nwarm && !seen; i++)
            seen = same_shape(u->warm[i].rows, u->warm[i].guided, u->warm[i].precision, rows,
                              guided, prec);
        if (!seen) {
            u->warm[u->wnext] = (ushape){rows, guided, prec};
            u->wnext = (u->wnext + 1) % UNET_GRAPHS;
            if (u->nwarm < UNET_GRAPHS) u->nwarm++;
            evaluate(m, u, t, x, out, rows, conditional, guided, cf);
            return 0;
        }
        gr = capture_graph(m, u, t, rows, conditional, guided, cf);
        if (!gr) {
            evaluate(m, u, t, x, out, rows, conditional, guided, cf);
            return 0;
        }
        o->copy(be, u->gx, x, bytes); /* the capture ran nothing */
    }
    gr->used = ++u->gclock;
    if (o->graph_launch(be, gr->g, err)) return -1;
    u->glaunches++;
    o->copy(be, out, u->gout, bytes);
    return 0;
}

static int unet_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                        dfx_error *err)
{
    unet_impl *u = m->impl;
    if (plan(m, u, rows, err)) return -1;
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
        rc = predict_graph(m, u, t, x, out, rows, conditional, guided, cf, err);
    else
        evaluate(m, u, t, x, out, rows, conditional, guided, cf);
    free(local);
    return rc;
}

/* Forward-mode derivative along v: the time and class embeddings do not
 * depend on x (zero tangents); guidance P_u + w (P_c - P_u) is a fixed
 * combination of two evaluations, so its tangent is the same combination
 * of theirs. */
static int unet_jvp(dfx_model *m, const double *t, const float *x, const float *v, float *out,
                    float *dout, int rows, dfx_error *err)
{
    unet_impl *u = m->impl;
    if (plan(m, u, rows, err) || plan_jvp(m, u, rows, err)) return -1;
    int conditional = u->c.classes > 0 && (u->cls != DFX_CLASS_NONE || u->forced);
    set_labels(m, u, rows, conditional);
    forward_jvp(m, u, t, x, v, out, dout, rows);
    if (conditional && u->guidance != 1.0) {
        set_labels(m, u, rows, 0);
        forward_jvp(m, u, t, x, v, u->uncond, u->duncond, rows);
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
    const unet_impl *u = m->impl;
    const unet_cfg *c = &u->c;
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

/* Marks the GroupNorms that gn_conv3 can run together with the 3x3
 * convolution after them (nothing else reads their output), before the
 * arena is planned. */
static int find_fusions(unet_impl *u, dfx_error *err)
{
    u->fuse = dfx_alloc((size_t)u->nops + 1, 1, "U-Net fusions", err);
    if (!u->fuse) return -1;
    for (int i = 0; i + 1 < u->nops; i++) {
        const uop *g = &u->ops[i], *c = &u->ops[i + 1];
        if (g->kind != U_GN || c->kind != U_CONV || g->out < 0 || c->in0 != g->out ||
            c->k != 3 || c->stride != 1 || c->pad != 1 || c->cin != g->cin || c->h != g->h ||
            c->w_ != g->w_)
            continue;
        int other = 0;
        for (int j = 0; j < u->nops; j++)
            if (j != i + 1 && (u->ops[j].in0 == g->out || u->ops[j].in1 == g->out)) other = 1;
        u->fuse[i] = !other;
        /* the pair reads the GroupNorm's input while it writes the
         * convolution's output: they must not share memory */
        if (u->fuse[i] && g->in0 >= 0 && u->bufs[g->in0].last < i + 1) u->bufs[g->in0].last = i + 1;
    }
    return 0;
}

static void unet_destroy(dfx_model *m)
{
    unet_impl *u = m->impl;
    if (!u) return;
    free_plan(m, u);
    free_jplan(m, u);
    free(u->dep);
    free(u->fuse);
    for (int i = 0; i < u->nweights; i++) m->be->ops->free(m->be, u->weights[i]);
    free(u->weights);
    free(u->ops);
    free(u->bufs);
    free(u);
    m->impl = NULL;
}

static int unet_reserve(dfx_model *m, int rows, dfx_error *err)
{
    return plan(m, m->impl, rows, err);
}

/* Common to the network kinds: the op list from the config section (parse,
 * build), planned; the model's counts. NULL on failure (m->impl freed by
 * the model's destroy). */
static unet_impl *load_graph(dfx_model *m, dfx_st_file *f, const dfx_model_vt *vt,
                             int (*parse)(unet_cfg *, const dfx_model_config *, const char *,
                                          dfx_error *),
                             int (*make)(builder *), dfx_error *err)
{
    unet_impl *u = dfx_alloc(1, sizeof *u, m->cfg.kind, err);
    if (!u) return NULL;
    m->impl = u;
    m->vt = vt;
    u->cls = DFX_CLASS_NONE;
    u->guidance = 1.0;
    if (parse(&u->c, &m->cfg, f->path, err)) return NULL;
    builder bd = {m, u, f, err, 0};
    if (make(&bd)) return NULL;
    if (m->be->ops->gn_conv3 && find_fusions(u, err)) return NULL;
    u->arena_per_sample = plan_offsets(u);
    m->info.n_params = u->params;
    m->info.flops = u->flops;
    m->info.num_classes = u->c.classes;
    return u;
}

static const dfx_model_vt unet_vt = {
    .predict = unet_predict,
    .jvp = unet_jvp,
    .reserve = unet_reserve,
    .describe = unet_describe,
    .profile = unet_profile,
    .destroy = unet_destroy,
};

int dfx_unet_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    const dfx_backend_ops *o = m->be->ops;
    if (!o->conv2d || !o->group_norm || !o->linear || !o->add_channel || !o->add || !o->concat ||
        !o->upsample2x || !o->attention || !o->time_embed || !o->embed_add)
        return dfx_fail(err, "%s: the %s backend cannot run U-Nets yet", f->path, m->be->name);
    unet_impl *u = load_graph(m, f, &unet_vt, parse_unet, build, err);
    if (!u || mark_tangents(u, err)) return -1;
    /* Graphs where the backend has them, unless DIFFLUX_CUDA_GRAPHS=0: the
     * switch for comparing against (or falling back to) op-by-op evaluation. */
    const char *env = getenv("DIFFLUX_CUDA_GRAPHS");
    u->graphs = o->graph_begin && o->graph_capture && o->graph_end && o->graph_refill &&
                o->graph_launch && o->graph_free && o->copy && !(env && strcmp(env, "0") == 0);
    return 0;
}

int dfx_unet_set_class(dfx_model *m, int cls, double guidance, dfx_error *err)
{
    unet_impl *u = m->impl;
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

int dfx_unet_force_labels(dfx_model *m, const int *labels)
{
    unet_impl *u = m->impl;
    u->forced = labels;
    return 0;
}

void dfx_unet_graph_stats(const dfx_model *m, long *captures, long *launches, long *failed,
                          const char **why)
{
    const unet_impl *u = m->impl;
    if (captures) *captures = u->gcaptures;
    if (launches) *launches = u->glaunches;
    if (failed) *failed = u->gfailed;
    if (why) *why = u->gwhy;
}

/* ------------------------------------------------------- classifiers */

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
    const unet_impl *u = m->impl;
    const unet_cfg *c = &u->c;
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
    .reserve = unet_reserve,
    .describe = classifier_describe,
    .profile = unet_profile,
    .destroy = unet_destroy,
};

int dfx_classifier_load(dfx_model *m, dfx_st_file *f, dfx_error *err)
{
    const dfx_backend_ops *o = m->be->ops;
    if (!o->conv2d || !o->group_norm || !o->linear || !o->concat)
        return dfx_fail(err, "%s: the %s backend cannot run classifiers", f->path, m->be->name);
    return load_graph(m, f, &classifier_vt, parse_classifier, build_classifier, err) ? 0 : -1;
}

int dfx_classifier_dims(const dfx_model *m, int *features, int *classes)
{
    if (!m || m->vt != &classifier_vt) return -1;
    const unet_impl *u = m->impl;
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
    unet_impl *u = m->impl;
    dfx_backend *be = m->be;
    const int F = u->c.features, K = u->c.classes, B = n < 256 ? (n > 0 ? n : 1) : 256;
    const size_t dim = m->dim, width = (size_t)F + (size_t)K;
    if (plan(m, u, B, err)) return -1;
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
        forward(m, u, NULL, dx, dy, rows);
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

size_t dfx_model_scratch_bytes(const dfx_model *m, int rows)
{
    const size_t R = rows > 1 ? (size_t)rows : 1, row = m->dim * sizeof(float);
    /* dfx_model_reserve: the prediction, the conversion coefficients, exp(y) */
    size_t bytes = R * row + R * 3 * sizeof(double) + (m->logspace ? R * row : 0);
    if (m->vt != &unet_vt && m->vt != &classifier_vt) return bytes; /* O(rows) host scratch */
    /* plan(): the activation arena, the largest op's scratch, the guidance
     * buffer and labels; predict_graph's fixed input and output */
    const unet_impl *u = m->impl;
    size_t scratch = max_op_scratch(u, m->be, (int)R);
    if (scratch < 1) scratch = 1;
    bytes += (u->arena_per_sample * R + scratch) * sizeof(float) + R * row + R * sizeof(int);
    if (u->graphs) bytes += 2 * R * row;
    return bytes;
}
