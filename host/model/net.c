/*
 * Networks as op lists (net.h): the machinery the U-Net and the classifier
 * share. Their builders (model_unet.c, model_classifier.c) turn a config
 * section and its tensors into a static list of backend operations over
 * numbered buffers, with the layers and the helpers here; for a batch size
 * the buffers get offsets in one arena (planned once, reused while they do
 * not overlap in time), so evaluation allocates nothing. The same list
 * gives the FLOP count, per-op timing and the tangents of unet_jvp:
 * forward-mode derivatives pushed through the same list, each op's tangent
 * next to the op, in a second arena laid out like the first.
 *
 * On a backend with graphs (CUDA), one U-Net evaluation — both passes of
 * classifier-free guidance and their combination included — is recorded
 * once per (batch size, guidance on/off, matrix precision) and replayed
 * with one graph launch; see dfx_net_predict_graph. DIFFLUX_CUDA_GRAPHS=0
 * in the environment when a model is loaded turns that off for the model
 * (every evaluation then runs op by op, "eagerly"); results are the same
 * bit for bit either way. The classifier always runs eagerly.
 *
 * The op kinds are listed once, in net_ops.h. Beyond its line there, a
 * kind appears in run_op and tangent_op below, and in max_op_scratch and
 * dfx_net_plan_jvp if the backend op or its tangent needs scratch.
 */
#include "model/net.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NET_NAME(id, name, slot) name,
static const char *const kind_names[OP_PROFILES] = {DFX_NET_OPS(NET_NAME) "gn+conv2d"};
#undef NET_NAME

/* ----------------------------------------------------------- config */

/* The config section a value belongs to ("unet", "classifier"). */
static const char *sect(const cJSON *s)
{
    return s && s->string ? s->string : "unet";
}

int dfx_net_cfg_int(const cJSON *s, const char *key, int lo, int hi, int dflt, int *out,
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
        return dfx_fail(err, "%s: config: %s.%s must be an integer in [%d, %d]", file, sect(s),
                        key, lo, hi);
    *out = (int)j->valuedouble;
    return 0;
}

int dfx_net_cfg_list(const cJSON *s, const char *key, int maxn, int lo, int hi, int *vals, int *n,
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

/* ---------------------------------------------------------- building */

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

int dfx_net_buf(net_builder *bd, size_t size)
{
    net_impl *u = bd->u;
    if (grow((void **)&u->bufs, &u->capbufs, u->nbufs + 1, sizeof *u->bufs)) {
        bd->failed = 1;
        return 0;
    }
    net_buf *b = &u->bufs[u->nbufs];
    b->size = size;
    b->first = u->nops; /* defined by the next op */
    b->last = u->nops;
    return u->nbufs++;
}

void dfx_net_add_op(net_builder *bd, net_op op)
{
    net_impl *u = bd->u;
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

float *dfx_net_weight_host(net_builder *bd, const char *name, int ndim, const int64_t *shape,
                          size_t *numel)
{
    if (bd->failed) return NULL;
    const dfx_st_tensor *t = dfx_st_get(bd->f, name, ndim, shape, bd->err);
    if (!t) {
        bd->failed = 1;
        return NULL;
    }
    float *host = dfx_alloc(t->numel, sizeof(float), name, bd->err);
    if (!host) {
        bd->failed = 1;
        return NULL;
    }
    dfx_st_to_f32(bd->f, t, host);
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(host[i])) {
            dfx_fail(bd->err, "%s: tensor '%s' holds a NaN or Inf at index %zu", bd->f->path,
                     name, i);
            bd->failed = 1;
            free(host);
            return NULL;
        }
    *numel = t->numel;
    return host;
}

const float *dfx_net_upload(net_builder *bd, const float *host, size_t n, const char *what)
{
    if (bd->failed) return NULL;
    net_impl *u = bd->u;
    if (grow((void **)&u->weights, &u->capweights, u->nweights + 1, sizeof *u->weights)) {
        bd->failed = 1;
        dfx_fail(bd->err, "out of memory");
        return NULL;
    }
    float *dev = dfx_be_alloc(bd->m->be, n * sizeof(float), what, bd->err);
    if (!dev) {
        bd->failed = 1;
        return NULL;
    }
    u->weights[u->nweights++] = dev;
    if (bd->m->be->ops->upload(bd->m->be, dev, host, n * sizeof(float), bd->err))
        bd->failed = 1;
    u->params += n;
    return dev;
}

/* A weight tensor with the expected shape, uploaded to the backend. */
const float *dfx_net_weight(net_builder *bd, const char *name, int ndim, const int64_t *shape)
{
    size_t n = 0;
    float *host = dfx_net_weight_host(bd, name, ndim, shape, &n);
    if (!host) return NULL;
    const float *dev = dfx_net_upload(bd, host, n, name);
    free(host);
    return dev;
}

static void wname(char *buf, size_t cap, const char *prefix, const char *leaf)
{
    snprintf(buf, cap, "%s.%s", prefix, leaf);
}

int dfx_net_conv_with(net_builder *bd, int in, const float *W, const float *B, int cin, int cout,
                      int h, int w, int k, int stride, int pad)
{
    int ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
    int out = dfx_net_buf(bd, (size_t)cout * ho * wo);
    dfx_net_add_op(bd, (net_op){.kind = OP_CONV, .out = out, .in0 = in, .in1 = -1, .w = W, .b = B,
                                .cin = cin, .cout = cout, .h = h, .w_ = w, .k = k, .stride = stride,
                                .pad = pad, .flops = 2.0 * cout * cin * k * k * ho * wo});
    return out;
}

int dfx_net_conv(net_builder *bd, int in, const char *prefix, int cin, int cout, int h, int w,
                 int k, int stride)
{
    char n[160];
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
    wname(n, sizeof n, prefix, "weight");
    const float *W = dfx_net_weight(bd, n, 4, ws);
    wname(n, sizeof n, prefix, "bias");
    const float *B = dfx_net_weight(bd, n, 1, bs);
    return dfx_net_conv_with(bd, in, W, B, cin, cout, h, w, k, stride, k / 2);
}

int dfx_net_sum(net_builder *bd, int a, int b, size_t size, double scale)
{
    int out = dfx_net_buf(bd, size);
    if (scale == 1.0)
        dfx_net_add_op(bd, (net_op){.kind = OP_ADD, .out = out, .in0 = a, .in1 = b,
                                    .cin = (int)size, .flops = (double)size});
    else
        dfx_net_add_op(bd, (net_op){.kind = OP_AFFINE, .out = out, .in0 = a, .in1 = b,
                                    .cin = (int)size, .ka = scale, .kb = scale,
                                    .flops = 3.0 * (double)size});
    return out;
}

int dfx_net_resblock(net_builder *bd, int in, int temb, const char *p, const net_res_names *nm,
                     int cin, int cout, int h, int w, double scale)
{
    char n[160];
    snprintf(n, sizeof n, "%s.%s", p, nm->norm1);
    int x = dfx_net_norm(bd, in, n, cin, h, w, 1);
    snprintf(n, sizeof n, "%s.%s", p, nm->conv1);
    x = dfx_net_conv(bd, x, n, cin, cout, h, w, 3, 1);
    snprintf(n, sizeof n, "%s.%s", p, nm->temb);
    int e = dfx_net_linear(bd, temb, n, bd->u->c.T, cout, 1);
    dfx_net_add_op(bd, (net_op){.kind = OP_ADDCH, .out = x, .in0 = e, .in1 = x, .cin = cout, .h = h,
                                .w_ = w});
    snprintf(n, sizeof n, "%s.%s", p, nm->norm2);
    x = dfx_net_norm(bd, x, n, cout, h, w, 1);
    snprintf(n, sizeof n, "%s.%s", p, nm->conv2);
    x = dfx_net_conv(bd, x, n, cout, cout, h, w, 3, 1);
    int skip = in;
    if (cin != cout) {
        snprintf(n, sizeof n, "%s.%s", p, nm->skip);
        skip = dfx_net_conv(bd, in, n, cin, cout, h, w, 1, 1);
    }
    return dfx_net_sum(bd, x, skip, (size_t)cout * h * w, scale);
}

int dfx_net_norm(net_builder *bd, int in, const char *prefix, int C, int h, int w, int act)
{
    net_impl *u = bd->u;
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
    const float *G = dfx_net_weight(bd, n, 1, s);
    wname(n, sizeof n, prefix, "bias");
    const float *B = dfx_net_weight(bd, n, 1, s);
    int out = dfx_net_buf(bd, (size_t)C * h * w);
    dfx_net_add_op(bd, (net_op){.kind = OP_GN, .out = out, .in0 = in, .in1 = -1, .w = G, .b = B,
                                .cin = C, .h = h, .w_ = w, .groups = u->c.groups, .silu = act,
                                .flops = 8.0 * C * h * w});
    return out;
}

int dfx_net_linear(net_builder *bd, int in, const char *prefix, int fin, int fout, int silu_in)
{
    char n[160];
    int64_t ws[2] = {fout, fin}, bs[1] = {fout};
    wname(n, sizeof n, prefix, "weight");
    const float *W = dfx_net_weight(bd, n, 2, ws);
    wname(n, sizeof n, prefix, "bias");
    const float *B = dfx_net_weight(bd, n, 1, bs);
    int out = dfx_net_buf(bd, (size_t)fout);
    dfx_net_add_op(bd, (net_op){.kind = OP_LINEAR, .out = out, .in0 = in, .in1 = -1, .w = W, .b = B,
                                .cin = fin, .cout = fout, .silu = silu_in,
                                .flops = 2.0 * fin * fout});
    return out;
}

int dfx_net_finish(net_builder *bd)
{
    if (!bd->failed) bd->u->ops[bd->u->nops - 1].out = BUF_OUT;
    if (bd->failed && !bd->err->msg[0]) dfx_fail(bd->err, "%s: out of memory", bd->f->path);
    return bd->failed ? -1 : 0;
}

int dfx_net_backend_runs(const dfx_backend_ops *o, unsigned kinds)
{
#define NET_SLOT(id, name, slot)                                                                   \
    if ((kinds & OP_BIT(OP_##id)) && !o->slot) return 0;
    DFX_NET_OPS(NET_SLOT)
#undef NET_SLOT
    return 1;
}

/* ---------------------------------------------------------- planning */

/* Offsets (per sample) for every buffer: greedy first fit among the
 * buffers alive at the same time. */
static size_t plan_offsets(net_impl *u)
{
    size_t peak = 0;
    for (int i = 0; i < u->nbufs; i++) {
        net_buf *b = &u->bufs[i];
        size_t off = 0;
        int moved = 1;
        while (moved) {
            moved = 0;
            for (int j = 0; j < i; j++) {
                const net_buf *o = &u->bufs[j];
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
static void free_graphs(dfx_model *m, net_impl *u)
{
    dfx_backend *be = m->be;
    for (int i = 0; i < NET_GRAPHS; i++) {
        if (u->graph[i].g) be->ops->graph_free(be, u->graph[i].g);
        u->graph[i].g = NULL;
    }
    if (u->gx) be->ops->free(be, u->gx);
    if (u->gout) be->ops->free(be, u->gout);
    u->gx = u->gout = NULL;
}

static void free_plan(dfx_model *m, net_impl *u)
{
    dfx_backend *be = m->be;
    free_graphs(m, u);
    if (u->arena) be->ops->free(be, u->arena);
    if (u->scratch) be->ops->free(be, u->scratch);
    if (u->uncond) be->ops->free(be, u->uncond);
    free(u->labels);
    free(u->acoef);
    u->arena = u->scratch = u->uncond = NULL;
    u->labels = NULL;
    u->acoef = NULL;
    u->plan_B = 0;
}

/* The largest scratch (floats) any op of the list needs for a batch of B. */
static size_t max_op_scratch(const net_impl *u, dfx_backend *be, int B)
{
    size_t scratch = 0;
    for (int i = 0; i < u->nops; i++) {
        const net_op *op = &u->ops[i];
        size_t s = 0;
        if (op->kind == OP_CONV)
            s = be->ops->conv_scratch(be, B, op->cin, op->h, op->w_, op->k, op->stride, op->pad);
        if (op->kind == OP_ATTN)
            s = be->ops->attention_scratch(be, B, op->cin, op->h * op->w_, op->heads);
        if (s > scratch) scratch = s;
    }
    return scratch;
}

int dfx_net_plan(dfx_model *m, net_impl *u, int B, dfx_error *err)
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
    u->acoef = dfx_alloc((size_t)B * 3, sizeof(double), "affine coefficients", err);
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
int dfx_net_mark_tangents(net_impl *u, dfx_error *err)
{
    u->dep = dfx_alloc((size_t)(u->nbufs > 0 ? u->nbufs : 1), 1, "U-Net tangent map", err);
    if (!u->dep) return -1;
    for (int i = 0; i < u->nops; i++) {
        net_op *op = &u->ops[i];
        op->tan0 = op->in0 == BUF_X || (op->in0 >= 0 && u->dep[op->in0]);
        op->tan1 = op->in1 == BUF_X || (op->in1 >= 0 && u->dep[op->in1]);
        if (op->out >= 0) u->dep[op->out] |= op->tan0 | op->tan1;
    }
    return 0;
}

static void free_jplan(dfx_model *m, net_impl *u)
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

/* What unet_jvp needs beyond dfx_net_plan: the tangent arena, scratch for
 * the attention tangents and the SiLU tangent of linear layers, and the
 * unconditional tangent for guidance. Planned once per batch size, like
 * dfx_net_plan; the convolutions of tangents use dfx_net_plan's scratch. */
int dfx_net_plan_jvp(dfx_model *m, net_impl *u, int B, dfx_error *err)
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
        const net_op *op = &u->ops[i];
        size_t s = 0;
        if (!op->tan0 && !op->tan1) continue;
        if (op->kind == OP_ATTN)
            s = o->attention_jvp_scratch(be, B, op->cin, op->h * op->w_, op->heads);
        if (op->kind == OP_LINEAR && op->silu) s = (size_t)B * op->cin;
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

static float *ptr(net_impl *u, int id, int B, const float *x, float *out)
{
    if (id == BUF_X) return (float *)x;
    if (id == BUF_OUT) return out;
    return u->arena + u->bufs[id].off * (size_t)B;
}

/* Op `op` of the list on a batch of B. */
/* y = ka a + kb b (+ kc if constant) per value, through lincomb with
 * host coefficients u->acoef (b NULL: ka a + kc). */
static void affine(dfx_backend *be, net_impl *u, float *y, const float *a, const float *b,
                   const net_op *op, int constant, int B)
{
    double *k = u->acoef, *c0 = u->acoef + 2 * (size_t)B;
    for (int r = 0; r < B; r++) {
        k[r] = op->ka;
        k[B + r] = op->kb;
        c0[r] = op->kc;
    }
    const float *xs[2] = {a, b};
    be->ops->lincomb(be, y, b ? 2 : 1, xs, k, constant && op->kc != 0.0 ? c0 : NULL, B,
                     (size_t)op->cin);
}

static void run_op(dfx_model *m, net_impl *u, const net_op *op, const double *t, const float *x,
                   float *out, int B)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    float *y = ptr(u, op->out, B, x, out);
    const float *a = op->in0 != -1 ? ptr(u, op->in0, B, x, out) : NULL;
    const float *b = op->in1 != -1 ? ptr(u, op->in1, B, x, out) : NULL;
    int hw = op->h * op->w_;
    switch (op->kind) {
    case OP_CONV:
        o->conv2d(be, y, a, op->w, op->b, B, op->cin, op->h, op->w_, op->cout, op->k,
                  op->stride, op->pad, u->scratch);
        break;
    case OP_GN:
        o->group_norm(be, y, a, op->w, op->b, B, op->cin, hw, op->groups, u->c.eps, op->silu);
        break;
    case OP_LINEAR:
        o->linear(be, y, a, op->w, op->b, B, op->cin, op->cout, op->silu);
        break;
    case OP_ADDCH:
        o->add_channel(be, y, a, B, op->cin, hw);
        break;
    case OP_ADD:
        o->add(be, y, a, b, (size_t)B * op->cin);
        break;
    case OP_CONCAT:
        o->concat(be, y, a, op->cin, b, op->c1, B, hw);
        break;
    case OP_UP:
        o->upsample2x(be, y, a, B, op->cin, op->h, op->w_);
        break;
    case OP_ATTN:
        o->attention(be, y, a, B, op->cin, hw, op->heads, u->scratch);
        break;
    case OP_TEMB:
        o->time_embed(be, y, t, B, op->cin, u->c.time_scale, u->c.time_offset, u->c.freq_shift,
                      u->c.flip_sin_cos);
        break;
    case OP_AFFINE:
        affine(be, u, y, a, b, op, 1, B);
        break;
    case OP_CLASS:
        o->embed_add(be, y, op->w, u->labels, B, op->cin);
        break;
    }
}

void dfx_net_forward(dfx_model *m, net_impl *u, const double *t, const float *x, float *out, int B)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    double t0 = 0.0;
    for (int i = 0; i < u->nops; i++) {
        const net_op *op = &u->ops[i];
        const int fused = u->fuse && u->fuse[i] && B >= be->threads;
        if (u->prof) {
            o->sync(be, NULL);
            t0 = dfx_seconds();
        }
        if (fused) {
            const net_op *cv = &u->ops[i + 1];
            o->gn_conv3(be, ptr(u, cv->out, B, x, out), ptr(u, op->in0, B, x, out), op->w, op->b,
                        op->groups, u->c.eps, op->silu, cv->w, cv->b, B, op->cin, op->h, op->w_,
                        cv->cout, u->scratch);
        } else {
            run_op(m, u, op, t, x, out, B);
        }
        if (u->prof) {
            o->sync(be, NULL);
            dfx_profile_entry *e = &u->prof_e[fused ? OP_GNCONV : op->kind];
            e->calls++;
            e->seconds += dfx_seconds() - t0;
            e->flops += (op->flops + (fused ? u->ops[i + 1].flops : 0.0)) * B;
        }
        i += fused;
    }
}

/* ---------------------------------------------------------- tangents */

/* Floats per sample of buffer id. */
static size_t buf_size(const dfx_model *m, const net_impl *u, int id)
{
    return id >= 0 ? u->bufs[id].size : m->dim;
}

/* The tangent of buffer id: v for x, dout for the output, else its slot in
 * the tangent arena. */
static float *tptr(net_impl *u, int id, int B, const float *v, float *dout)
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
static const float *tin(dfx_model *m, net_impl *u, int id, int nonzero, int B, const float *v,
                        float *dout)
{
    float *p = tptr(u, id, B, v, dout);
    if (!nonzero) tzero(m, p, B, buf_size(m, u, id));
    return p;
}

/* The tangent of op `op`, after the op has run (its inputs are still
 * alive: an op's output never shares memory with its inputs except in the
 * in-place add_channel and class_embed, which add a constant). */
static void tangent_op(dfx_model *m, net_impl *u, const net_op *op, const float *x, const float *v,
                       float *out, float *dout, int B)
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
    case OP_CONV: /* linear in x: the same convolution without the bias */
        o->conv2d(be, dy, tin(m, u, op->in0, d0, B, v, dout), op->w, NULL, B, op->cin, op->h,
                  op->w_, op->cout, op->k, op->stride, op->pad, u->scratch);
        break;
    case OP_GN:
        o->group_norm_jvp(be, dy, a, tin(m, u, op->in0, d0, B, v, dout), op->w, op->b, B, op->cin,
                          hw, op->groups, u->c.eps, op->silu);
        break;
    case OP_LINEAR:
        if (op->silu) { /* W (SiLU'(x) dx) */
            o->silu_jvp(be, u->jscratch, a, tin(m, u, op->in0, d0, B, v, dout),
                        (size_t)B * op->cin);
            o->linear(be, dy, u->jscratch, op->w, NULL, B, op->cin, op->cout, 0);
        } else {
            o->linear(be, dy, tin(m, u, op->in0, d0, B, v, dout), op->w, NULL, B, op->cin, op->cout,
                      0);
        }
        break;
    case OP_ADDCH: /* in place on in1 (= out): its tangent plus the embedding's */
        if (!d1) tzero(m, dy, B, (size_t)op->cin * hw);
        if (d0) o->add_channel(be, dy, tptr(u, op->in0, B, v, dout), B, op->cin, hw);
        break;
    case OP_ADD:
        o->add(be, dy, tin(m, u, op->in0, d0, B, v, dout), tin(m, u, op->in1, d1, B, v, dout),
               (size_t)B * op->cin);
        break;
    case OP_CONCAT:
        o->concat(be, dy, tin(m, u, op->in0, d0, B, v, dout), op->cin,
                  tin(m, u, op->in1, d1, B, v, dout), op->c1, B, hw);
        break;
    case OP_UP:
        o->upsample2x(be, dy, tin(m, u, op->in0, d0, B, v, dout), B, op->cin, op->h, op->w_);
        break;
    case OP_ATTN:
        o->attention_jvp(be, dy, a, tin(m, u, op->in0, d0, B, v, dout), B, op->cin, hw, op->heads,
                         u->jscratch);
        break;
    case OP_AFFINE: /* linear: the same combination of the tangents, no constant */
        affine(be, u, dy, tin(m, u, op->in0, d0, B, v, dout),
               op->in1 != -1 ? tin(m, u, op->in1, d1, B, v, dout) : NULL, op, 0, B);
        break;
    case OP_CLASS: /* in place, adds a constant: the tangent is unchanged */
    case OP_TEMB:  /* no inputs */
        break;
    }
}

/* The network and its tangent along v: each op, then its tangent. The
 * forward ops are predict's, on the same buffers, so out is bit for bit
 * what dfx_net_forward gives. Not profiled. */
void dfx_net_forward_jvp(dfx_model *m, net_impl *u, const double *t, const float *x, const float *v,
                         float *out, float *dout, int B)
{
    for (int i = 0; i < u->nops; i++) {
        run_op(m, u, &u->ops[i], t, x, out, B);
        tangent_op(m, u, &u->ops[i], x, v, out, dout, B);
    }
}

/* ------------------------------------------------------- evaluation */

void dfx_net_set_labels(dfx_model *m, net_impl *u, int B, int cond)
{
    for (int r = 0; r < B; r++) {
        int y = u->c.classes; /* "no class" */
        if (u->forced) {
            u->labels[r] = u->forced[r];
            continue;
        }
        if (cond && u->cls >= 0) y = u->cls;
        if (cond && u->cls == DFX_CLASS_CYCLE)
            y = (int)((m->first_index + (uint64_t)r) % (uint64_t)u->c.classes);
        u->labels[r] = y;
    }
}

/* One evaluation as the backend sees it: the network with this call's
 * labels, and with guidance (classifier-free: P = P_u + w (P_c - P_u)) the
 * network again without class and out = w out + (1 - w) P_u, cf [2 rows]
 * holding the weights. Eager or as a graph pass, the same op calls. */
void dfx_net_evaluate(dfx_model *m, net_impl *u, const double *t, const float *x, float *out,
                      int rows, int conditional, int guided, const double *cf)
{
    dfx_net_set_labels(m, u, rows, conditional);
    dfx_net_forward(m, u, t, x, out, rows);
    if (guided) {
        dfx_net_set_labels(m, u, rows, 0);
        dfx_net_forward(m, u, t, x, u->uncond, rows);
        const float *xs[2] = {out, u->uncond};
        m->be->ops->lincomb(m->be, out, 2, xs, cf, NULL, rows, m->dim);
    }
}

/* ------------------------------------------------------ graph cache */

static int same_shape(int r0, int g0, int p0, int r1, int g1, int p1)
{
    return r0 == r1 && g0 == g1 && p0 == p1;
}

/* Records the graph of one evaluation of this shape (a measure pass, then
 * the capture pass, on the graph's fixed buffers gx -> gout and this call's
 * host data) into the least recently used cache entry. Any failure turns
 * graphs off for this model and returns NULL, reporting nothing: the
 * caller evaluates eagerly, which reports whatever fails again. */
static net_graph *capture_graph(dfx_model *m, net_impl *u, const double *t, int rows,
                                int conditional, int guided, const double *cf)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    dfx_error e; /* not the caller's: eager evaluation follows */
    e.msg[0] = 0;
    dfx_graph *g = NULL;
    net_graph *slot = NULL; /* an unused entry, else the least recently used */
    for (int i = 0; i < NET_GRAPHS; i++) {
        net_graph *c = &u->graph[i];
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
    dfx_net_evaluate(m, u, t, u->gx, u->gout, rows, conditional, guided, cf); /* measure */
    if (o->graph_capture(be, g, &e)) goto fail;
    dfx_net_evaluate(m, u, t, u->gx, u->gout, rows, conditional, guided, cf); /* capture */
    if (o->graph_end(be, g, &e)) goto fail;
    *slot = (net_graph){g, rows, guided, be->precision, 0};
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
 * NET_GRAPHS graphs are kept, least recently used evicted. So samplers,
 * whose every evaluation in a batch has the same number of rows (dopri5
 * included: finished rows are still evaluated), record once per batch size
 * and replay every step after the first two. */
int dfx_net_predict_graph(dfx_model *m, net_impl *u, const double *t, const float *x, float *out,
                          int rows, int conditional, int guided, const double *cf, dfx_error *err)
{
    dfx_backend *be = m->be;
    const dfx_backend_ops *o = be->ops;
    const int prec = be->precision;
    net_graph *gr = NULL;
    for (int i = 0; i < NET_GRAPHS && !gr; i++)
        if (u->graph[i].g &&
            same_shape(u->graph[i].rows, u->graph[i].guided, u->graph[i].precision, rows, guided,
                       prec))
            gr = &u->graph[i];
    const size_t bytes = (size_t)rows * m->dim * sizeof(float);
    if (gr) {
        o->copy(be, u->gx, x, bytes);
        if (o->graph_refill(be, gr->g, err)) return -1;
        dfx_net_evaluate(m, u, t, u->gx, u->gout, rows, conditional, guided, cf); /* refill */
    } else {
        int seen = 0;
        for (int i = 0; i < u->nwarm && !seen; i++)
            seen = same_shape(u->warm[i].rows, u->warm[i].guided, u->warm[i].precision, rows,
                              guided, prec);
        if (!seen) {
            u->warm[u->wnext] = (net_shape){rows, guided, prec};
            u->wnext = (u->wnext + 1) % NET_GRAPHS;
            if (u->nwarm < NET_GRAPHS) u->nwarm++;
            dfx_net_evaluate(m, u, t, x, out, rows, conditional, guided, cf);
            return 0;
        }
        gr = capture_graph(m, u, t, rows, conditional, guided, cf);
        if (!gr) {
            dfx_net_evaluate(m, u, t, x, out, rows, conditional, guided, cf);
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

/* ---------------------------------------------------------- loading */

/* Marks the GroupNorms that gn_conv3 can run together with the 3x3
 * convolution after them (nothing else reads their output), before the
 * arena is planned. */
static int find_fusions(net_impl *u, dfx_error *err)
{
    u->fuse = dfx_alloc((size_t)u->nops + 1, 1, "U-Net fusions", err);
    if (!u->fuse) return -1;
    for (int i = 0; i + 1 < u->nops; i++) {
        const net_op *g = &u->ops[i], *c = &u->ops[i + 1];
        if (g->kind != OP_GN || c->kind != OP_CONV || g->out < 0 || c->in0 != g->out ||
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

net_impl *dfx_net_load(dfx_model *m, dfx_st_file *f, const dfx_model_vt *vt,
                       int (*parse)(net_cfg *, const dfx_model_config *, const char *, dfx_error *),
                       int (*make)(net_builder *), dfx_error *err)
{
    net_impl *u = dfx_alloc(1, sizeof *u, m->cfg.kind, err);
    if (!u) return NULL;
    m->impl = u;
    m->vt = vt;
    u->cls = DFX_CLASS_NONE;
    u->guidance = 1.0;
    if (parse(&u->c, &m->cfg, f->path, err)) return NULL;
    net_builder bd = {m, u, f, err, 0};
    if (make(&bd)) return NULL;
    if (m->be->ops->gn_conv3 && find_fusions(u, err)) return NULL;
    u->arena_per_sample = plan_offsets(u);
    m->info.n_params = u->params;
    m->info.flops = u->flops;
    m->info.num_classes = u->c.classes;
    return u;
}

/* ------------------------------------------- the model table's entries */

void dfx_net_destroy(dfx_model *m)
{
    net_impl *u = m->impl;
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

int dfx_net_profile(dfx_model *m, int enable, const dfx_profile_entry **list)
{
    net_impl *u = m->impl;
    if (enable >= 0) u->prof = enable;
    if (enable == 1)
        for (int k = 0; k < OP_PROFILES; k++)
            u->prof_e[k] = (dfx_profile_entry){kind_names[k], 0, 0.0, 0.0};
    if (list) *list = u->prof_e;
    return OP_PROFILES;
}

int dfx_net_reserve(dfx_model *m, int rows, dfx_error *err)
{
    return dfx_net_plan(m, m->impl, rows, err);
}

/* dfx_net_plan's buffers for rows >= 1: the activation arena, the largest
 * op's scratch, the guidance buffer and labels; dfx_net_predict_graph's
 * fixed input and output. */
size_t dfx_net_scratch_bytes(const dfx_model *m, int rows)
{
    const size_t R = (size_t)rows, row = m->dim * sizeof(float);
    const net_impl *u = m->impl;
    size_t scratch = max_op_scratch(u, m->be, rows);
    if (scratch < 1) scratch = 1;
    size_t bytes = (u->arena_per_sample * R + scratch) * sizeof(float) + R * row + R * sizeof(int);
    if (u->graphs) bytes += 2 * R * row;
    return bytes;
}
