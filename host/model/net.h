/*
 * Networks as op lists (net.c), shared by the kinds built from backend
 * operations: the U-Net (model_unet.c) and the classifier
 * (model_classifier.c). A builder turns the config section and the
 * tensors into a static list of ops over numbered buffers; net.c plans the
 * buffers in one arena, runs the list op by op or as a recorded backend
 * graph, and pushes tangents through it. Internal to host/model.
 */
#ifndef DFX_NET_H
#define DFX_NET_H

#include "io/safetensors.h"
#include "model/model.h"
#include "model/net_ops.h"

#define MAX_LEVELS 8

/* A network's config section, parsed ("unet" or "classifier"). */
typedef struct net_cfg {
    int ch0, levels, mult[MAX_LEVELS], nres, attn[MAX_LEVELS], heads, groups, T, classes;
    double time_scale;
    float eps;
    /* classifiers (kind "classifier"): channels per level and feature width */
    int ch[MAX_LEVELS], features;
    /* diffusers UNet2DModel (kind "diffusers"; ch[] are block_out_channels,
     * attn[] the down blocks with attention): up blocks with attention,
     * attention_head_dim (0: one head of all channels), center_input_sample,
     * downsample_padding, a mid block, its attention, mid_block_scale_factor */
    struct {
        int up_attn[MAX_LEVELS], head_dim, center, down_pad, mid, mid_attn;
        double mid_scale;
    } dd;
    /* the time embedding of u = t time_scale + time_offset, frequencies
     * exp(-ln(10000) i / (half - freq_shift)), cos first if flip_sin_cos
     * (diffusers' conventions; 0 for the native U-Net) */
    double time_offset;
    int freq_shift, flip_sin_cos;
} net_cfg;

/* The op kinds (net_ops.h) and their count. */
typedef enum {
#define NET_KIND(id, name, slot) OP_##id,
    DFX_NET_OPS(NET_KIND)
#undef NET_KIND
} net_kind;

#define NET_COUNT(id, name, slot) +1
enum { OP_KINDS = 0 DFX_NET_OPS(NET_COUNT) };
#undef NET_COUNT

/* Profile entries: one per kind, then a GroupNorm run inside the next
 * convolution (gn_conv3). */
enum { OP_GNCONV = OP_KINDS, OP_PROFILES };

/* Sets of kinds (dfx_net_backend_runs). */
#define OP_BIT(k) (1u << (k))
#define OP_ALL ((1u << OP_KINDS) - 1u)

/* Buffer ids that are not arena buffers: the network's input and output. */
enum { BUF_X = -2, BUF_OUT = -3 };

/* Graphs kept per model, and shapes remembered as evaluated once eagerly. */
#define NET_GRAPHS 4

/* A recorded evaluation and what it was recorded for. */
typedef struct net_graph {
    dfx_graph *g;  /* NULL: unused */
    int rows, guided, precision;
    unsigned long used; /* last launch, for least-recently-used eviction */
} net_graph;

typedef struct net_shape {
    int rows, guided, precision; /* rows 0: none */
} net_shape;

typedef struct net_op {
    net_kind kind;
    int out, in0, in1;     /* buffer ids */
    const float *w, *b;    /* weights on the backend */
    int cin, cout, h, w_, k, stride, pad, groups, silu, heads, c1;
    double ka, kb, kc;     /* OP_AFFINE: out = ka in0 + kb in1 + kc (in1 -1: no term) */
    double flops; /* per sample */
    unsigned char tan0, tan1; /* in0, in1 have nonzero tangents here (mark_tangents) */
} net_op;

typedef struct net_buf {
    size_t size; /* floats per sample */
    int first, last;
    size_t off;  /* per-sample offset in the arena */
} net_buf;

typedef struct net_impl {
    net_cfg c;
    net_op *ops;
    int nops, capops;
    /* fuse[i]: op i is a GroupNorm whose output only op i + 1, a 3x3
     * convolution, reads; the backend runs the pair as one (gn_conv3) */
    unsigned char *fuse;
    net_buf *bufs;
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
    double *acoef; /* host [3 plan_B]: OP_AFFINE's coefficients */
    const int *forced; /* per-row labels set by dfx_unet_force_labels, or NULL */
    /* conditioning */
    int cls;
    double guidance;
    /* profiling: time per op kind (dfx_model_profile) */
    int prof;
    dfx_profile_entry prof_e[OP_PROFILES];
    /* tangents (unet_jvp): dep[i] = buffer i depends on x; the others (the
     * time and class embeddings) have zero tangents, never computed */
    unsigned char *dep;
    /* jvp plan for batches of up to jplan_B: the tangent arena has the
     * activation arena's layout (buffer i's tangent lives exactly as long
     * as buffer i), so the offsets are reused as they are */
    int jplan_B;
    float *tarena, *jscratch, *duncond;
    double *jcoef; /* host [2 jplan_B]: the guidance weights */
    /* graphs (dfx_net_predict_graph): allowed (the backend has them,
     * DIFFLUX_CUDA_GRAPHS is not 0, no capture has failed); their fixed
     * input and output [plan_B, dim] on the backend, allocated at the first
     * capture; the graphs of this plan; shapes evaluated eagerly once;
     * counts */
    int graphs;
    float *gx, *gout;
    net_graph graph[NET_GRAPHS];
    net_shape warm[NET_GRAPHS];
    int nwarm, wnext;
    unsigned long gclock;
    long gcaptures, glaunches, gfailed;
    char gwhy[256]; /* why the last capture failed (dfx_unet_graph_stats) */
} net_impl;

/* ----------------------------------------------------------- config */

/* Integer `key` of config section s in [lo, hi]; dflt < lo: required. */
int dfx_net_cfg_int(const cJSON *s, const char *key, int lo, int hi, int dflt, int *out,
                    const char *file, dfx_error *err);
/* A list of at most maxn integers in [lo, hi] into vals, *n of them. */
int dfx_net_cfg_list(const cJSON *s, const char *key, int maxn, int lo, int hi, int *vals,
                     int *n, const char *file, dfx_error *err);

/* ---------------------------------------------------------- building */

/* A builder's state: on the first failure `failed` is set (with a message
 * in err) and the calls after it do nothing. */
typedef struct net_builder {
    dfx_model *m;
    net_impl *u;
    dfx_st_file *f;
    dfx_error *err;
    int failed;
} net_builder;

/* A new buffer of `size` floats per sample, written by the next op. */
int dfx_net_buf(net_builder *bd, size_t size);
/* Appends op to the list. */
void dfx_net_add_op(net_builder *bd, net_op op);
/* A weight tensor with the expected shape, uploaded to the backend. */
const float *dfx_net_weight(net_builder *bd, const char *name, int ndim, const int64_t *shape);
/* The same as float32 on the host (malloc'd, numel values), for a builder
 * that rearranges it before dfx_net_upload. */
float *dfx_net_weight_host(net_builder *bd, const char *name, int ndim, const int64_t *shape,
                           size_t *numel);
/* n floats of host memory uploaded as a weight of the network. */
const float *dfx_net_upload(net_builder *bd, const float *host, size_t n, const char *what);
/* The layers of both networks, with weights prefix.weight and prefix.bias;
 * each returns its output buffer. A k x k convolution, padded k / 2. */
int dfx_net_conv(net_builder *bd, int in, const char *prefix, int cin, int cout, int h, int w,
                 int k, int stride);
/* The same with weights already on the backend and an explicit padding. */
int dfx_net_conv_with(net_builder *bd, int in, const float *W, const float *B, int cin, int cout,
                      int h, int w, int k, int stride, int pad);
/* (a + b) * scale, size floats per sample (an add where scale is 1). */
int dfx_net_sum(net_builder *bd, int a, int b, size_t size, double scale);
/* The names of a residual block's layers under its prefix. */
typedef struct net_res_names {
    const char *norm1, *conv1, *temb, *norm2, *conv2, *skip;
} net_res_names;
/* A residual block: GroupNorm, SiLU, 3x3 conv, plus the projected time
 * embedding (SiLU, linear) per channel, GroupNorm, SiLU, 3x3 conv, plus the
 * input (through a 1x1 conv where cin != cout), all times scale. */
int dfx_net_resblock(net_builder *bd, int in, int temb, const char *p, const net_res_names *nm,
                     int cin, int cout, int h, int w, double scale);
/* GroupNorm (the section's groups), then SiLU if act. */
int dfx_net_norm(net_builder *bd, int in, const char *prefix, int C, int h, int w, int act);
/* A fully connected layer, on SiLU(in) if silu_in. */
int dfx_net_linear(net_builder *bd, int in, const char *prefix, int fin, int fout, int silu_in);
/* The end of a builder: the last op writes the caller's output; 0, or -1
 * with a message. */
int dfx_net_finish(net_builder *bd);

/* 1 if the backend has the op of every kind in `kinds` (OP_BIT, OP_ALL). */
int dfx_net_backend_runs(const dfx_backend_ops *o, unsigned kinds);

/* A network kind's loading: the op list from the config section (parse,
 * make), planned; the model's counts. NULL on failure (m->impl freed by
 * the model's destroy, dfx_net_destroy). */
net_impl *dfx_net_load(dfx_model *m, dfx_st_file *f, const dfx_model_vt *vt,
                       int (*parse)(net_cfg *, const dfx_model_config *, const char *,
                                    dfx_error *),
                       int (*make)(net_builder *), dfx_error *err);
/* Which buffers have tangents (for dfx_net_forward_jvp). */
int dfx_net_mark_tangents(net_impl *u, dfx_error *err);

/* ------------------------------------------------- planning, running */

/* Buffers for batches of up to B (none if planned for as many). */
int dfx_net_plan(dfx_model *m, net_impl *u, int B, dfx_error *err);
/* The op list on a batch of B: out = the network at (t, x). */
void dfx_net_forward(dfx_model *m, net_impl *u, const double *t, const float *x, float *out,
                     int B);
/* Labels for a batch of B: the forced ones, else the model's class if
 * cond, else "no class". */
void dfx_net_set_labels(dfx_model *m, net_impl *u, int B, int cond);
/* One evaluation with this call's labels, and with guidance (cf [2 rows]:
 * the weights of the two passes) the unconditional pass combined in. */
void dfx_net_evaluate(dfx_model *m, net_impl *u, const double *t, const float *x, float *out,
                      int rows, int conditional, int guided, const double *cf);
/* dfx_net_evaluate through a recorded backend graph (u->graphs set). */
int dfx_net_predict_graph(dfx_model *m, net_impl *u, const double *t, const float *x,
                          float *out, int rows, int conditional, int guided, const double *cf,
                          dfx_error *err);
/* What dfx_net_forward_jvp needs beyond dfx_net_plan. */
int dfx_net_plan_jvp(dfx_model *m, net_impl *u, int B, dfx_error *err);
/* The network and its tangent along v: out as dfx_net_forward gives it,
 * dout its derivative. */
void dfx_net_forward_jvp(dfx_model *m, net_impl *u, const double *t, const float *x,
                         const float *v, float *out, float *dout, int B);

/* ------------------------------------------- the model table's entries */

/* The U-Net's entries (model_unet.c), shared with the diffusers kind:
 * prediction with classifier-free guidance, its tangent, the class, and
 * backend graphs where the backend has them. */
int dfx_unet_predict(dfx_model *m, const double *t, const float *x, float *out, int rows,
                     dfx_error *err);
int dfx_unet_jvp(dfx_model *m, const double *t, const float *x, const float *v, float *out,
                 float *dout, int rows, dfx_error *err);
int dfx_unet_set_class(dfx_model *m, int cls, double guidance, dfx_error *err);
void dfx_unet_enable_graphs(dfx_model *m);

int dfx_net_reserve(dfx_model *m, int rows, dfx_error *err);
int dfx_net_profile(dfx_model *m, int enable, const dfx_profile_entry **list);
size_t dfx_net_scratch_bytes(const dfx_model *m, int rows);
void dfx_net_destroy(dfx_model *m);

#endif
