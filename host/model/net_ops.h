/*
 * The kinds of op in a network's op list (model/net.h), declared once:
 * X(ID, name, slot) for each, in the order of the net_kind enum. ID makes
 * the enum constant OP_ID; name is the kind's name in profiles
 * (dfx_model_profile, difflux bench --profile); slot is the backend op
 * (core/backend.h) that runs it, which a backend must have to load a
 * network with ops of the kind (dfx_net_backend_runs: the U-Net asks for
 * every kind of this list, the classifier for the kinds it uses).
 * tests/test_graphs.c builds its mirror of the recorded backend calls from
 * the same list.
 *
 * A new kind gets a line here, a case in run_op and in tangent_op
 * (model/net.c: the compiler asks for them, those switches have no
 * default) and a builder that adds it (model_unet.c, model_classifier.c).
 */
#ifndef DFX_NET_OPS_H
#define DFX_NET_OPS_H

#define DFX_NET_OPS(X)                                                                             \
    X(CONV, "conv2d", conv2d)                                                                      \
    X(GN, "group_norm", group_norm)                                                                \
    X(LINEAR, "linear", linear)                                                                    \
    X(ADDCH, "add_channel", add_channel)                                                           \
    X(ADD, "add", add)                                                                             \
    X(CONCAT, "concat", concat)                                                                    \
    X(UP, "upsample", upsample2x)                                                                  \
    X(ATTN, "attention", attention)                                                                \
    X(TEMB, "time_embed", time_embed)                                                              \
    X(CLASS, "class_embed", embed_add)                                                             \
    X(AFFINE, "affine", lincomb)

#endif
