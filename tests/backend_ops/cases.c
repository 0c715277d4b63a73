/* The cases of test_backend_ops, in the order they run: an op family
 * (cases_*.c), its shape and parameters, the tolerance against the
 * reference and, for ops with a batch, the tolerance of a sample alone
 * against the same sample in the batch (tests/backend_ops/bo.h). */
#include "backend_ops/bo.h"

/* shorthands: family, tolerance, batch tolerance, parameters */
#define CASE(fam, tol_, btol_, member, ...) \
    {.f = &bo_##fam, .tol = tol_, .batch_tol = btol_, .p.member = {__VA_ARGS__}}
#define SOLO(fam) {.f = &bo_##fam, .batch_tol = BO_NO_BATCH}
/* the reduced precisions: on a device backend only, -o precision */
#define PRECISION(mode, op_tol, net_tol)                                                     \
    {.f = &bo_set_precision, .op = "precision", .batch_tol = BO_NO_BATCH, .device = 1,        \
     .p.precision = {mode}},                                                                \
    {.f = &bo_conv, .op = "precision", .tol = op_tol, .batch_tol = BO_NO_BATCH, .device = 1,  \
     .p.conv = {3, 64, 14, 14, 64, 3, 1, 1, 1, " " mode}},                                  \
    /* at the current precision */                                                          \
    {.f = &bo_attention, .op = "precision", .tol = NN_TOL, .batch_tol = BATCH_TOL,            \
     .device = 1, .p.attn = {3, 64, 49, 4, 2.0f}},                                          \
    {.f = &bo_unet_precision, .op = "precision", .tol = net_tol, .batch_tol = BO_NO_BATCH,    \
     .device = 1, .p.unet = {"unet_tiny", 0, mode}}

#define LINCOMB(...) CASE(lincomb, 1e-6, BO_NO_BATCH, lincomb, __VA_ARGS__)
#define NORMAL(...) CASE(normal, BO_BITS, BO_NO_BATCH, normal, __VA_ARGS__)
#define ERR_NORM(...) CASE(err_norm, 1e-9, BO_NO_BATCH, err_norm, __VA_ARGS__)
#define COUNT(...) CASE(count, 0.0, BO_NO_BATCH, count, __VA_ARGS__)
#define GMM(...) CASE(gmm, 1e-6, BO_NO_BATCH, gmm, __VA_ARGS__)
#define CONV(...) CASE(conv, NN_TOL, BATCH_TOL, conv, __VA_ARGS__)
#define GROUP_NORM(...) CASE(group_norm, NN_TOL, 0.0, gn, __VA_ARGS__)
#define GROUP_NORM_JVP(...) CASE(group_norm_jvp, NN_TOL, 0.0, gn, __VA_ARGS__)
#define LINEAR(...) CASE(linear, NN_TOL, 0.0, linear, __VA_ARGS__)
#define ATTENTION(...) CASE(attention, NN_TOL, BATCH_TOL, attn, __VA_ARGS__)
#define ATTENTION_JVP(...) CASE(attention_jvp, JVP_TOL, JVP_BATCH_TOL, attn, __VA_ARGS__)
#define EMBED(...) CASE(embed, NN_TOL, BO_NO_BATCH, embed, __VA_ARGS__)
/* sampling amplifies rounding a little over the steps */
#define SAMPLE(...) CASE(sample, 1e-4, 1e-4, sample, __VA_ARGS__)
#define CLASSIFIER(file, n) CASE(classifier, 1e-5, BO_NO_BATCH, sample, file, NULL, 0, n)

/* The shapes of group_norm and attention, for their tangents too. */
#define GN_SHAPES(X)                                                                        \
    /* B   C   HW groups silu offset */                                                    \
    X(3, 32, 784, 8, 1, 0.0f),                                                              \
    X(3, 64, 49, 8, 0, 0.0f),                                                               \
    X(3, 32, 784, 32, 1, 100.0f), /* one channel per group, large mean */                   \
    X(5, 256, 49, 1, 0, 3.0f),    /* one group of 12544 values */                           \
    X(2, 6, 5, 3, 1, 0.0f),
#define ATTENTION_SHAPES(X)                                                                 \
    /* B   C   HW heads qkv scale */                                                       \
    X(3, 32, 196, 1, 2.0f),                                                                 \
    X(3, 32, 196, 4, 2.0f),                                                                 \
    X(3, 64, 49, 4, 2.0f),                                                                  \
    X(2, 16, 144, 2, 1.0f),                                                                 \
    X(2, 8, 1, 2, 1.0f),                                                                    \
    X(110, 8, 784, 2, 1.0f), /* scratch in chunks of samples */

const bo_case bo_cases[] = {
    /*      k  rows  cols c0 alias p_zero */
    LINCOMB(0, 4, 100, 1, 0, 0.0),
    LINCOMB(1, 7, 1000, 1, 0, 0.0),
    LINCOMB(2, 37, 784, 1, 1, 0.0),   /* prediction conversion: out = A x + B P + C, in place */
    LINCOMB(2, 37, 784, 1, 1, 0.3),
    LINCOMB(3, 64, 3072, 0, 1, 0.3),
    LINCOMB(5, 5, 4097, 0, 0, 0.4),
    LINCOMB(7, 33, 784, 0, 1, 0.3),   /* dopri5 stages */
    LINCOMB(8, 3000, 64, 1, 0, 0.25), /* more coefficients than a staging slot starts with */
    LINCOMB(2, 70000, 3, 1, 1, 0.2),  /* more rows than gridDim.y */
    LINCOMB(4, 9, 1, 1, 0, 0.5),
    CASE(lincomb_chain, 1e-6, BO_NO_BATCH, chain, 64, 784, 20),

    /*     seed first rows cols draw stream */
    NORMAL(1, 0, 5, 784, 0, 0),
    NORMAL(0xDEADBEEFCAFEF00Dull, (1ull << 32) + 5, 3, 1001, 7, 3),
    NORMAL(42, 1000, 70000, 3, 2, 1),
    NORMAL(7, 123, 2, 1, 0, 0),

    ERR_NORM(17, 784, 1e-4, 1e-4),
    ERR_NORM(3, 5000, 1e-3, 1e-6),
    ERR_NORM(70000, 2, 1e-4, 1e-4),

    /*    n  bad */
    COUNT(0, 0),
    COUNT(1, 1),
    COUNT(1000, 0),
    COUNT((1u << 20) + 7, 200),
    COUNT(3000001, 50),

    /*  K  dim rows alias */
    GMM(10, 784, 24, 0),
    GMM(1, 100, 6, 0),
    GMM(300, 64, 12, 1), /* more components than threads in a block */
    GMM(3, 4, 70000, 0), /* more rows than gridDim.y */

    SOLO(error_path),

    /* exp and log within 1e-7, mul_add exactly */
    CASE(unary, 1e-7, BO_NO_BATCH, unary, 100003, 1.0),
    CASE(unary, 1e-7, BO_NO_BATCH, unary, 5, 0.0),

    /*   B Cin  H   W Cout k s p bias */
    CONV(3, 32, 28, 28, 32, 3, 1, 1, 1),  /* resblock conv */
    CONV(3, 32, 28, 28, 32, 3, 2, 1, 1),  /* downsample */
    CONV(3, 64, 7, 7, 64, 3, 1, 1, 1),
    CONV(3, 64, 7, 7, 32, 1, 1, 0, 1),    /* skip: no im2col */
    CONV(3, 32, 28, 28, 96, 1, 1, 0, 1),  /* qkv */
    CONV(2, 1, 28, 28, 32, 3, 1, 1, 1),   /* conv_in */
    CONV(3, 32, 28, 28, 1, 3, 1, 1, 1),   /* out.conv */
    CONV(3, 5, 9, 11, 7, 3, 2, 1, 0),     /* odd sizes, no bias */
    CONV(4, 3, 8, 8, 4, 5, 1, 2, 1),      /* k = 5 */
    CONV(2, 4, 6, 6, 3, 1, 2, 0, 1),      /* 1x1 with stride: im2col */
    CONV(80, 128, 28, 28, 8, 3, 1, 1, 1), /* scratch in chunks of samples */

    GN_SHAPES(GROUP_NORM)

    /*     B   in  out silu bias */
    LINEAR(3, 32, 128, 0, 1),  /* temb.lin1 */
    LINEAR(3, 128, 128, 1, 1), /* temb.lin2 */
    LINEAR(17, 128, 64, 1, 1), /* a resblock's temb */
    LINEAR(2, 4096, 33, 1, 1),
    LINEAR(5, 7, 1, 0, 0),

    /* B  C Cb  H  W; bit for bit */
    CASE(elementwise, BO_BITS, BO_NO_BATCH, ew, 3, 32, 16, 28, 28),
    CASE(elementwise, BO_BITS, BO_NO_BATCH, ew, 2, 3, 5, 5, 4),

    ATTENTION_SHAPES(ATTENTION)

    /*    B  dim  scale */
    EMBED(5, 32, 1000.0, 0.0, 0, 0),
    EMBED(7, 128, 1000.0, 0.0, 0, 0),
    EMBED(3, 33, 1.0, 0.0, 0, 0),
    EMBED(4, 64, 1000.0, -1.0, 1, 1), /* diffusers: tau = N t - 1, freq_shift 1, flip */

    GN_SHAPES(GROUP_NORM_JVP)
    CASE(silu_jvp, 1e-6, BO_NO_BATCH, unary, 100003),
    CASE(silu_jvp, 1e-6, BO_NO_BATCH, unary, 5),
    ATTENTION_SHAPES(ATTENTION_JVP)

    {.f = &bo_set_precision, .op = "precision", .batch_tol = BO_NO_BATCH, .device = 1},
    PRECISION("tf32", TF32_OP_TOL, TF32_NET_TOL),
    PRECISION("bf16", BF16_OP_TOL, BF16_NET_TOL),
    PRECISION("fp32", NN_TOL, NN_TOL),

    /* U-Nets: fixture inputs, then 9 samples */
    CASE(unet, NN_TOL, BATCH_TOL, unet, "unet_tiny", 9),
    CASE(unet, NN_TOL, BATCH_TOL, unet, "unet_cond", 9),
    CASE(unet_jvp, NN_TOL, BO_NO_BATCH, unet, "unet_tiny"),
    CASE(unet_jvp, NN_TOL, BO_NO_BATCH, unet, "unet_cond"),
    CASE(unet_jvp, NN_TOL, BO_NO_BATCH, unet, "unet_rgb"),
    /*     file                                  sampler      steps n */
    SAMPLE("../models/mnist-gmm.safetensors", "heun", 20, 16),
    SAMPLE("../models/mnist-gmm.safetensors", "em", 100, 16),
    SAMPLE("../models/mnist-dale-gmm.safetensors", "adls", 100, 8),
    SAMPLE("fixtures/unet_tiny.safetensors", "dpmpp_2m_sde", 20, 8),
    SAMPLE("fixtures/unet_cond.safetensors", "euler", 20, 8),
    /* a diffusers UNet2DModel pipeline (tests/fixtures/diffusers; v prediction: the
     * random epsilon networks there amplify rounding by 1/a through x_hat) */
    SAMPLE("fixtures/diffusers/noattn_rgb", "ddim", 10, 8),
    SAMPLE("fixtures/diffusers/noattn_rgb", "dpmpp_2m", 10, 8),
    CLASSIFIER("fixtures/classifier_tiny.safetensors", 300), /* two batches */
    CLASSIFIER("fixtures/classifier_rgb.safetensors", 7),
    CLASSIFIER("../models/mnist-classifier.safetensors", 64),

    SOLO(nn_error_path),

    SOLO(graphs),
    {.f = &bo_unet_graphs, .batch_tol = BO_NO_BATCH, .p.unet = {"unet_tiny", 0, NULL}},
    {.f = &bo_unet_graphs, .batch_tol = BO_NO_BATCH, .p.unet = {"unet_cond", 0, NULL}},
    {.f = &bo_sample_graphs, .batch_tol = BO_NO_BATCH,
     .p.sample = {"fixtures/unet_tiny.safetensors", "heun", 10, 8, DFX_CLASS_NONE, 1.0}},
    {.f = &bo_sample_graphs, .batch_tol = BO_NO_BATCH,
     .p.sample = {"fixtures/unet_cond.safetensors", "heun", 10, 8, DFX_CLASS_CYCLE, 2.0}},
};

const size_t bo_ncases = sizeof bo_cases / sizeof bo_cases[0];
