/* The network layers with arithmetic (conv2d, group_norm, linear,
 * attention) and their tangents (group_norm_jvp, attention_jvp,
 * silu_jvp): how each builds its inputs and runs samples [b0, b0 + B) on
 * one backend (tests/backend_ops/bo.h). */
#include "backend_ops/bo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static float *normals(bo_data *d, size_t n, float scale)
{
    float *x = bo_host(d, n * sizeof(float));
    rng_fill_normal(&bo_rng, x, n, scale);
    return x;
}

/* --------------------------------------------------------------- conv2d */

static int conv_out(int n, const bo_case *c)
{
    return (n + 2 * c->p.conv.pad - c->p.conv.k) / c->p.conv.stride + 1;
}

typedef struct conv_in {
    float *x, *w, *b;
    size_t in; /* floats per input sample */
} conv_in;

static void conv_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    const int B = c->p.conv.B, Cin = c->p.conv.Cin, Cout = c->p.conv.Cout, k = c->p.conv.k;
    conv_in *in = d->in = bo_host(d, sizeof *in);
    in->in = (size_t)Cin * c->p.conv.H * c->p.conv.W;
    in->x = normals(d, (size_t)B * in->in, 1.0f);
    in->w = normals(d, (size_t)Cout * Cin * k * k, (float)(1.0 / sqrt((double)Cin * k * k)));
    in->b = normals(d, (size_t)Cout, 0.2f);
    d->B = B;
    d->per = (size_t)Cout * conv_out(c->p.conv.H, c) * conv_out(c->p.conv.W, c);
    d->n = (size_t)B * d->per;
    d->flops = 2.0 * (double)d->n * Cin * k * k;
    snprintf(d->name, sizeof d->name, "conv2d B=%d %dx%dx%d -> %d k=%d s=%d p=%d%s%s", B, Cin,
             c->p.conv.H, c->p.conv.W, Cout, k, c->p.conv.stride, c->p.conv.pad,
             c->p.conv.bias ? " bias" : "", c->p.conv.tag ? c->p.conv.tag : "");
    size_t ns = p->test->ops->conv_scratch(p->test, B, Cin, c->p.conv.H, c->p.conv.W, k,
                                           c->p.conv.stride, c->p.conv.pad);
    snprintf(d->note, sizeof d->note, "scratch %.1f MiB", (double)ns * 4.0 / 1048576.0);
}

static void conv_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    dfx_backend *be = r->be;
    const conv_in *in = d->in;
    const int Cin = c->p.conv.Cin, H = c->p.conv.H, W = c->p.conv.W, k = c->p.conv.k;
    const int s = c->p.conv.stride, pad = c->p.conv.pad;
    const size_t ny = (size_t)B * d->per;
    float *dx = bo_up(be, in->x + (size_t)b0 * in->in, (size_t)B * in->in);
    float *dw = bo_up(be, in->w, (size_t)c->p.conv.Cout * Cin * k * k);
    float *db = c->p.conv.bias ? bo_up(be, in->b, (size_t)c->p.conv.Cout) : NULL;
    float *dy = bo_junk(be, ny);
    size_t ns = be->ops->conv_scratch(be, B, Cin, H, W, k, s, pad);
    float *ds = ns ? bo_dev_alloc(be, ns * sizeof(float)) : NULL;
    BO_TIMED(r)
    be->ops->conv2d(be, dy, dx, dw, db, B, Cin, H, W, c->p.conv.Cout, k, s, pad, ds);
    bo_down(be, out, dy, ny);
    BO_FREE(be, dx, dw, db, dy, ds);
}

const bo_family bo_conv = {"conv2d", conv_build, conv_run, NULL, NULL};

/* ---------------------------------------- group_norm, group_norm_jvp */

/* Inputs with a large common offset test the two-pass variance; the
 * tangent's direction dx is drawn after x. */
typedef struct gn_in {
    float *x, *dx, *g, *bt;
} gn_in;

static void gn_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const int jvp = c->f == &bo_group_norm_jvp, C = c->p.gn.C;
    const size_t n = (size_t)c->p.gn.B * C * c->p.gn.HW;
    gn_in *in = d->in = bo_host(d, sizeof *in);
    in->x = normals(d, n, 2.0f);
    for (size_t i = 0; i < n; i++) in->x[i] += c->p.gn.offset;
    in->dx = jvp ? normals(d, n, 1.0f) : NULL;
    in->g = normals(d, (size_t)C, 0.25f);
    for (int i = 0; i < C; i++) in->g[i] += 1.0f;
    in->bt = normals(d, (size_t)C, 0.2f);
    d->B = c->p.gn.B;
    d->per = (size_t)C * c->p.gn.HW;
    d->n = n;
    snprintf(d->name, sizeof d->name, "%s B=%d C=%d HW=%d groups=%d%s offset=%g", c->f->name,
             c->p.gn.B, C, c->p.gn.HW, c->p.gn.groups, c->p.gn.silu ? " silu" : "",
             c->p.gn.offset);
}

static void gn_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    dfx_backend *be = r->be;
    const gn_in *in = d->in;
    const int C = c->p.gn.C, HW = c->p.gn.HW, groups = c->p.gn.groups, silu = c->p.gn.silu;
    const size_t n = (size_t)B * d->per, at = (size_t)b0 * d->per;
    float *dx = bo_up(be, in->x + at, n), *dg = bo_up(be, in->g, (size_t)C),
          *db = bo_up(be, in->bt, (size_t)C);
    float *ddx = in->dx ? bo_up(be, in->dx + at, n) : NULL;
    float *dy = bo_junk(be, n);
    if (ddx) {
        BO_TIMED(r)
        be->ops->group_norm_jvp(be, dy, dx, ddx, dg, db, B, C, HW, groups, 1e-5f, silu);
    } else {
        BO_TIMED(r) be->ops->group_norm(be, dy, dx, dg, db, B, C, HW, groups, 1e-5f, silu);
    }
    bo_down(be, out, dy, n);
    BO_FREE(be, dx, ddx, dg, db, dy);
}

const bo_family bo_group_norm = {"group_norm", gn_build, gn_run, NULL, NULL};
const bo_family bo_group_norm_jvp = {"group_norm_jvp", gn_build, gn_run, NULL, NULL};

/* --------------------------------------------------------------- linear */

typedef struct linear_in {
    float *x, *w, *b;
} linear_in;

static void linear_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const int B = c->p.linear.B, nin = c->p.linear.in, nout = c->p.linear.out;
    linear_in *in = d->in = bo_host(d, sizeof *in);
    in->x = normals(d, (size_t)B * nin, 2.0f);
    in->w = normals(d, (size_t)nout * nin, (float)(1.0 / sqrt((double)nin)));
    in->b = normals(d, (size_t)nout, 0.2f);
    d->B = B;
    d->per = (size_t)nout;
    d->n = (size_t)B * nout;
    d->flops = 2.0 * (double)d->n * nin;
    snprintf(d->name, sizeof d->name, "linear B=%d %d -> %d%s%s", B, nin, nout,
             c->p.linear.silu ? " silu_in" : "", c->p.linear.bias ? " bias" : "");
}

static void linear_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    dfx_backend *be = r->be;
    const linear_in *in = d->in;
    const int nin = c->p.linear.in, nout = c->p.linear.out;
    float *dx = bo_up(be, in->x + (size_t)b0 * nin, (size_t)B * nin);
    float *dw = bo_up(be, in->w, (size_t)nout * nin);
    float *db = c->p.linear.bias ? bo_up(be, in->b, (size_t)nout) : NULL;
    float *dy = bo_junk(be, (size_t)B * nout);
    BO_TIMED(r) be->ops->linear(be, dy, dx, dw, db, B, nin, nout, c->p.linear.silu);
    bo_down(be, out, dy, (size_t)B * nout);
    BO_FREE(be, dx, dw, db, dy);
}

const bo_family bo_linear = {"linear", linear_build, linear_run, NULL, NULL};

/* ------------------------------------------ attention, attention_jvp */

/* qkv [B, 3C, HW] and, for the tangent, its direction dqkv (drawn after). */
typedef struct attn_in {
    float *qkv, *dqkv;
} attn_in;

static size_t attn_scratch(dfx_backend *be, int jvp, int B, const bo_case *c)
{
    return jvp ? be->ops->attention_jvp_scratch(be, B, c->p.attn.C, c->p.attn.HW, c->p.attn.heads)
               : be->ops->attention_scratch(be, B, c->p.attn.C, c->p.attn.HW, c->p.attn.heads);
}

static void attn_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    const int jvp = c->f == &bo_attention_jvp, B = c->p.attn.B;
    const size_t n = (size_t)B * c->p.attn.C * c->p.attn.HW;
    attn_in *in = d->in = bo_host(d, sizeof *in);
    in->qkv = normals(d, 3 * n, c->p.attn.scale);
    in->dqkv = jvp ? normals(d, 3 * n, 1.0f) : NULL;
    d->B = B;
    d->per = (size_t)c->p.attn.C * c->p.attn.HW;
    d->n = n;
    /* per head: q^T k and v P^T, HW x HW x C / heads multiply-adds each */
    d->flops = jvp ? 0.0 : 4.0 * (double)n * c->p.attn.HW;
    snprintf(d->name, sizeof d->name, "%s B=%d C=%d HW=%d heads=%d (qkv x%g)", c->f->name, B,
             c->p.attn.C, c->p.attn.HW, c->p.attn.heads, c->p.attn.scale);
    snprintf(d->note, sizeof d->note, "scratch %.1f MiB",
             (double)attn_scratch(p->test, jvp, B, c) * 4.0 / 1048576.0);
}

static void attn_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B, float *out)
{
    dfx_backend *be = r->be;
    const attn_in *in = d->in;
    const int C = c->p.attn.C, HW = c->p.attn.HW, heads = c->p.attn.heads;
    const size_t n = (size_t)B * d->per, at = 3 * (size_t)b0 * d->per;
    float *dq = bo_up(be, in->qkv + at, 3 * n), *dy = bo_junk(be, n);
    float *ddq = in->dqkv ? bo_up(be, in->dqkv + at, 3 * n) : NULL;
    size_t ns = attn_scratch(be, ddq != NULL, B, c);
    float *ds = ns ? bo_dev_alloc(be, ns * sizeof(float)) : NULL;
    if (ddq) {
        BO_TIMED(r) be->ops->attention_jvp(be, dy, dq, ddq, B, C, HW, heads, ds);
    } else {
        BO_TIMED(r) be->ops->attention(be, dy, dq, B, C, HW, heads, ds);
    }
    bo_down(be, out, dy, n);
    BO_FREE(be, dq, ddq, dy, ds);
}

const bo_family bo_attention = {"attention", attn_build, attn_run, NULL, NULL};
const bo_family bo_attention_jvp = {"attention_jvp", attn_build, attn_run, NULL, NULL};

/* ------------------------------------------------------------- silu_jvp */

/* silu_jvp out of place, then in place (dy = dx); the far ends, where
 * SiLU' is 0 and 1, among the inputs. */
static void silu_jvp_build(const bo_pair *p, const bo_case *c, bo_data *d)
{
    (void)p;
    const size_t n = c->p.unary.n;
    float **v = d->in = bo_host(d, 2 * sizeof *v);
    v[0] = normals(d, n, 4.0f);
    v[1] = normals(d, n, 1.0f);
    if (n >= 4) {
        v[0][0] = -1e4f;
        v[0][1] = -100.0f;
        v[0][2] = 100.0f;
        v[0][3] = 1e4f;
    }
    d->n = 2 * n;
    snprintf(d->name, sizeof d->name, "silu_jvp n=%zu (then in place)", n);
}

static void silu_jvp_run(bo_run *r, const bo_case *c, const bo_data *d, int b0, int B,
                         float *out)
{
    (void)b0, (void)B;
    dfx_backend *be = r->be;
    float *const *v = d->in;
    const size_t n = c->p.unary.n;
    float *d_x = bo_up(be, v[0], n), *d_dx = bo_up(be, v[1], n), *dy = bo_junk(be, n);
    BO_TIMED(r) be->ops->silu_jvp(be, dy, d_x, d_dx, n);
    BO_TIMED(r) be->ops->silu_jvp(be, d_dx, d_x, d_dx, n);
    bo_down(be, out, dy, n);
    bo_down(be, out + n, d_dx, n);
    BO_FREE(be, d_x, d_dx, dy);
}

const bo_family bo_silu_jvp = {"silu_jvp", silu_jvp_build, silu_jvp_run, NULL, NULL};
