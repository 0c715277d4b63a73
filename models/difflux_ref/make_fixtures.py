"""Write the U-Net and classifier test fixtures the C engine is checked against.

    cd /work/main && python3 -m models.difflux_ref.make_fixtures --out tests/fixtures

For each case NAME it writes
    NAME.safetensors     a difflux model file (kind "unet", random weights)
    NAME.io.safetensors  F32 tensors x [B,C,H,W], t [B], y [B] (labels as
                         floats; 0 for unconditional models) and out [B,C,H,W]:
                         the network output evaluated in float64 from the
                         weights as stored in NAME.safetensors (after F16/BF16
                         rounding), then rounded to float32.
and, for the cases of JVP_CASES,
    NAME.jvp.safetensors F32 tensors x, t, y (those of NAME.io.safetensors), a
                         direction v [B,C,H,W] and the output `out` and its
                         Jacobian-vector product `jvp` = d/de net(x + e v, t, y)
                         at e = 0, both in float64 (torch.func.jvp of the
                         UNet module, checked against double-backward
                         autograd of selftest.reference_forward), rounded to
                         float32; conditional cases add the same for
                         classifier-free guidance (`out_guided`, `jvp_guided`).
For each classifier case NAME (CLASSIFIER_CASES) it writes
    NAME.safetensors     a difflux model file (kind "classifier", random
                         weights; models/difflux_ref/classifier.py)
    NAME.io.safetensors  F32 tensors x [B,C,H,W] (uniform in [-1, 1]),
                         features [B,F] and logits [B,K]: the network
                         evaluated in float64 from the stored weights and x,
                         rounded to float32.
and then runs the self-check (selftest.py for the U-Net cases,
check_classifier_case below for the classifier cases) on everything it wrote.
`--jvp-only` writes just the .jvp files, from the model and io files already
in the folder (so those are left exactly as they are); `--check-only` writes
nothing and runs the self-check on the files already there.
Output is deterministic: fixed seeds, explicit torch.Generator draws in a
fixed order, one CPU thread.
"""

import argparse
import os
import sys

import torch
import torch.nn as nn

from . import selftest
from .selftest import func_jvp
from . import classifier as clf
from .modelfile import load_model, load_tensors, save_model, save_tensors
from .unet import UNet, config_json

B = 3

TINY = dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1],
            heads=2, groups=4, time_embed_dim=32, time_scale=1000.0, num_classes=0,
            norm_eps=1e-5)

# name: (seed, image (C, H, W), unet section, path, prediction, dtype, description)
CASES = {
    "unet_tiny": (1, (1, 8, 8), TINY, "linear", "velocity", "F32",
                  "2 levels, 1 res block, attention at level 1, unconditional"),
    "unet_cond": (2, (1, 12, 12),
                  dict(base_channels=16, channel_mult=[1, 2, 2], num_res_blocks=2,
                       attention_levels=[0, 2], heads=2, groups=4, time_embed_dim=32,
                       time_scale=1000.0, num_classes=3, norm_eps=1e-5),
                  "vp", "eps", "F32",
                  "3 levels (12, 6, 3), 2 res blocks, attention at levels 0 and 2, "
                  "3 classes + no-class label 3"),
    "unet_rgb": (3, (3, 8, 8),
                 dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                      attention_levels=[], heads=1, groups=2, time_embed_dim=16,
                      time_scale=1000.0, num_classes=0, norm_eps=1e-5),
                 "trig", "data", "F32",
                 "3 channels, no attention outside the middle block"),
    "unet_f16": (4, (1, 8, 8), TINY, "linear", "velocity", "F16",
                 "unet_tiny's architecture, other weights, stored as F16"),
    "unet_bf16": (5, (1, 8, 8), TINY, "linear", "velocity", "BF16",
                  "unet_tiny's architecture, other weights, stored as BF16"),
}

# Cases that also get NAME.jvp.safetensors: attention at several heads
# (unet_tiny, unet_cond: 2 heads), a conditional model, 3 channels.
JVP_CASES = ("unet_tiny", "unet_cond", "unet_rgb")
# Conditional cases: the guided prediction P_u + w (P_c - P_u) with every
# row given class JVP_CLASS (what dfx_model_set_class(m, 1, 2.0) asks for).
JVP_GUIDANCE, JVP_CLASS = 2.0, 1

# Random weights with O(1) activations where every parameter matters:
# weights N(0, gain^2 / fan_in), biases N(0, 0.2^2), GroupNorm gamma
# 1 + N(0, 0.25^2) and beta N(0, 0.2^2), class embeddings N(0, 0.5^2); the
# attention qkv weights get gain 2 so the softmax is far from uniform.
GAIN, QKV_GAIN, BIAS_STD, GN_STD, EMB_STD = 1.0, 2.0, 0.2, 0.25, 0.5


def randomise(net: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1.0 + GN_STD * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(GN_STD * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = QKV_GAIN if name.endswith(".qkv") else GAIN
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (gain / fan_in ** 0.5))
                m.bias.copy_(BIAS_STD * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(EMB_STD * torch.randn(m.weight.shape, generator=g))


def make_case(folder: str, name: str) -> None:
    seed, (C, H, W), u, path, pred, dtype, desc = CASES[name]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = UNet(u, C, H, W)
    randomise(net, g)
    config = config_json(
        u, {"channels": C, "height": H, "width": W}, path=path, prediction=pred,
        provenance={"dataset": "none (random weights)",
                    "description": f"test fixture {name}: {desc}; "
                                   "models/difflux_ref/make_fixtures.py"})
    mpath = os.path.join(folder, name + ".safetensors")
    save_model(mpath, net.state_dict(), config, dtype)

    # Inputs (stored as F32) and the float64 output from the weights as stored.
    x = torch.randn((B, C, H, W), generator=g)
    t = 0.02 + 0.96 * torch.rand((B,), generator=g)
    K = u["num_classes"]
    if K > 0:
        y = torch.randint(0, K, (B,), generator=g)
        y[1] = K  # row 1 is "no class", the others real classes
    else:
        y = torch.zeros(B, dtype=torch.long)
    tensors, cfg = load_model(mpath)
    net64 = UNet.from_config(cfg).double()
    net64.load_state_dict({k: v.double() for k, v in tensors.items()}, strict=True)
    with torch.no_grad():
        out = net64(x.double(), t.double(), y if K > 0 else None).float()
    save_tensors(os.path.join(folder, name + ".io.safetensors"),
                 {"x": x, "t": t, "y": y.float(), "out": out},
                 {"model": name + ".safetensors",
                  "description": f"{name}: out = network(x, t, y) of {name}.safetensors, "
                                 "float64 from the stored weights, rounded to float32"})


def make_jvp_case(folder: str, name: str) -> None:
    """NAME.jvp.safetensors from NAME.safetensors and NAME.io.safetensors."""
    seed = CASES[name][0]
    mpath = os.path.join(folder, name + ".safetensors")
    tensors, cfg = load_model(mpath)
    io, _ = load_tensors(os.path.join(folder, name + ".io.safetensors"))
    x, t, yf = io["x"], io["t"], io["y"]
    K = cfg["unet"]["num_classes"]
    y = yf.round().long() if K > 0 else None
    # the direction: its own generator, so the other files do not move
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1000 + seed))
    net64 = UNet.from_config(cfg).double()
    net64.load_state_dict({k: w.double() for k, w in tensors.items()}, strict=True)
    x64, t64, v64 = x.double(), t.double(), v.double()

    def check(f, f_ref, what):
        """Forward-mode jvp of f, and the same by double-backward autograd of
        f_ref (an independent implementation and method): they must agree."""
        out, jv = func_jvp(f, (x64,), (v64,))
        out2, jv2 = torch.autograd.functional.jvp(f_ref, x64, v64)
        e_out = float((out - out2).abs().max())
        e_jv = float((jv - jv2).abs().max()) / max(float(jv.abs().max()), 1.0)
        if e_out > 1e-10 or e_jv > 1e-10:
            raise RuntimeError(f"{name} {what}: torch.func.jvp and autograd disagree "
                               f"(out {e_out:.3g}, jvp {e_jv:.3g})")
        return out.detach(), jv.detach()

    P = {k: w.double() for k, w in tensors.items()}
    out, jv = check(lambda z: net64(z, t64, y),
                    lambda z: selftest.reference_forward(P, cfg, z, t64, y), "jvp")
    if not torch.equal(out.float(), io["out"]):
        raise RuntimeError(f"{name}: out differs from {name}.io.safetensors")
    res = {"x": x, "t": t, "y": yf, "v": v, "out": out.float(), "jvp": jv.float()}
    meta = {"model": name + ".safetensors",
            "description": f"{name}: out = network(x, t, y) and jvp = d/de network(x + e v, t, y) "
                           "at e = 0, float64 (torch.func.jvp), rounded to float32"}
    if K > 0:
        B = x.shape[0]
        yc = torch.full((B,), JVP_CLASS, dtype=torch.long)
        yu = torch.full((B,), K, dtype=torch.long)
        w = JVP_GUIDANCE

        def guided(f):
            return lambda z: f(z, yu) + w * (f(z, yc) - f(z, yu))
        og, jg = check(guided(lambda z, yy: net64(z, t64, yy)),
                       guided(lambda z, yy: selftest.reference_forward(P, cfg, z, t64, yy)),
                       "guided jvp")
        res.update(out_guided=og.float(), jvp_guided=jg.float())
        meta.update(guidance=repr(w), guided_class=str(JVP_CLASS),
                    guided=f"out_guided = P_u + {w} (P_c - P_u), P_c with class {JVP_CLASS} "
                           f"for every row, P_u with label {K} (no class); jvp_guided its jvp")
    save_tensors(os.path.join(folder, name + ".jvp.safetensors"), res, meta)


# ----------------------------------------------------------------------------
# classifier fixtures (model kind "classifier", models/difflux_ref/classifier.py)

# name: (seed, image (C, H, W), classifier section, description)
CLASSIFIER_CASES = {
    "classifier_tiny": (11, (1, 12, 12),
                        dict(channels=[8, 16], features=12, num_classes=5, groups=4,
                             norm_eps=1e-5),
                        "2 levels (12x12, 6x6), 1 channel, 12 features, 5 classes"),
    "classifier_rgb": (12, (3, 16, 8),
                       dict(channels=[8, 8, 16], features=10, num_classes=3, groups=4,
                            norm_eps=1e-5),
                       "3 channels, non-square 16x8 image, 3 levels (16x8, 8x4, 4x2), "
                       "10 features, 3 classes"),
}


def make_classifier_case(folder: str, name: str) -> None:
    seed, (C, H, W), c, desc = CLASSIFIER_CASES[name]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = clf.Classifier(c, C, H, W)
    randomise(net, g)
    config = clf.config_json(
        c, {"channels": C, "height": H, "width": W},
        labels=[f"class {k}" for k in range(c["num_classes"])],
        provenance={"dataset": "none (random weights)",
                    "description": f"test fixture {name}: {desc}; "
                                   "models/difflux_ref/make_fixtures.py"})
    mpath = os.path.join(folder, name + ".safetensors")
    save_model(mpath, net.state_dict(), config, "F32")

    x = 2.0 * torch.rand((B, C, H, W), generator=g) - 1.0
    tensors, cfg = load_model(mpath)
    net64 = clf.Classifier.from_config(cfg).double()
    net64.load_state_dict({k: v.double() for k, v in tensors.items()}, strict=True)
    with torch.no_grad():
        feats, logits = net64(x.double())
    save_tensors(os.path.join(folder, name + ".io.safetensors"),
                 {"x": x, "features": feats.float(), "logits": logits.float()},
                 {"model": name + ".safetensors",
                  "description": f"{name}: (features, logits) = network(x) of "
                                 f"{name}.safetensors, float64 from the stored weights, "
                                 "rounded to float32"})


def check_classifier_case(folder: str, name: str, log=print) -> bool:
    """Reload NAME.safetensors / NAME.io.safetensors and check: config valid;
    tensor names, order and shapes as enumerated by clf.expected_tensors;
    features and logits recomputed in float64 by the module and by
    clf.reference_forward (a functional implementation) equal the stored
    ones to float32 rounding; every parameter influences the output."""
    tensors, config = load_model(os.path.join(folder, name + ".safetensors"))
    io, meta = load_tensors(os.path.join(folder, name + ".io.safetensors"))
    ok = True

    def check(cond, msg):
        nonlocal ok
        if not cond:
            ok = False
            log(f"  FAIL {name}: {msg}")

    c = clf.check_config(config)
    img = config["image"]
    check(meta.get("format") == "difflux-fixture", "io file format is not difflux-fixture")
    exp = clf.expected_tensors(config)
    got = {k: list(v.shape) for k, v in tensors.items()}
    check(list(got) == list(exp) and got == exp, "tensor names/order/shapes differ")
    net64 = clf.Classifier.from_config(config).double()
    check({k: list(v.shape) for k, v in net64.state_dict().items()} == exp,
          "Classifier.state_dict() names/shapes differ")
    net64.load_state_dict({k: v.double() for k, v in tensors.items()}, strict=True)
    x, feats, logits = io["x"], io["features"], io["logits"]
    Bx = x.shape[0]
    check(list(x.shape) == [Bx, img["channels"], img["height"], img["width"]],
          "x has the wrong shape")
    check(list(feats.shape) == [Bx, c["features"]] and
          list(logits.shape) == [Bx, c["num_classes"]], "features/logits shapes wrong")
    check(float(x.abs().max()) <= 1.0, "x outside [-1, 1]")
    x64 = x.double()
    with torch.no_grad():
        f64, l64 = net64(x64)
        P = {k: v.double() for k, v in tensors.items()}
        fr, lr = clf.reference_forward(P, config, x64)
        net32 = clf.Classifier.from_config(config)
        net32.load_state_dict(tensors, strict=True)
        f32, l32 = net32(x)
    w1 = torch.randn(f64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w2 = torch.randn(l64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net64.zero_grad()
    fo, lo_ = net64(x64)
    ((fo * w1).sum() + (lo_ * w2).sum()).backward()
    dead = [k for k, p in net64.named_parameters()
            if p.grad is None or float(p.grad.abs().max()) == 0.0]
    check(not dead, f"parameters without influence on the output: {', '.join(dead)}")
    report = []
    for key, stored, mod, ref, f32v in (("features", feats, f64, fr, f32),
                                        ("logits", logits, l64, lr, l32)):
        scale = float(stored.abs().max())
        tol = 2.0 ** -23 * scale + 1e-12
        e_mod = float((mod - stored.double()).abs().max())
        e_ref = float((ref - stored.double()).abs().max())
        e_two = float((ref - mod).abs().max())
        e_32 = float((f32v.double() - stored.double()).abs().max())
        check(e_mod <= tol, f"{key}: module (float64) differs by {e_mod:.3g} (tol {tol:.3g})")
        check(e_ref <= tol, f"{key}: reference_forward differs by {e_ref:.3g} (tol {tol:.3g})")
        check(e_two <= 1e-12 * max(scale, 1.0), f"{key}: module and reference differ by {e_two:.3g}")
        report.append(f"max|{key}| {scale:6.3f} |f32-stored| {e_32:.1e}")
    log(f"  {name:16s} {'ok  ' if ok else 'FAIL'} tensors {len(tensors):3d} "
        f"params {sum(v.numel() for v in tensors.values()):6d} " + ", ".join(report))
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the U-Net and classifier test fixtures.")
    ap.add_argument("--out", default="tests/fixtures", help="output folder")
    ap.add_argument("--no-check", action="store_true", help="skip the self-check")
    ap.add_argument("--jvp-only", action="store_true",
                    help="write only NAME.jvp.safetensors, from the files already there")
    ap.add_argument("--check-only", action="store_true",
                    help="write nothing; run the self-check on the files already there")
    all_cases = list(CASES) + list(CLASSIFIER_CASES)
    ap.add_argument("cases", nargs="*", help=f"cases (default: all of {' '.join(all_cases)})")
    a = ap.parse_args(argv)
    for c in a.cases:
        if c not in all_cases:
            ap.error(f"unknown case {c} (have {', '.join(all_cases)})")
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    names = a.cases or all_cases
    for name in ([] if a.check_only else names):
        suffixes = []
        if name in CLASSIFIER_CASES:
            if not a.jvp_only:
                make_classifier_case(a.out, name)
                suffixes += [".safetensors", ".io.safetensors"]
        elif not a.jvp_only:
            make_case(a.out, name)
            suffixes += [".safetensors", ".io.safetensors"]
        if name in JVP_CASES:
            make_jvp_case(a.out, name)
            suffixes.append(".jvp.safetensors")
        for suffix in suffixes:
            p = os.path.join(a.out, name + suffix)
            print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    if a.no_check:
        return 0
    unets = [n for n in names if n in CASES]
    classifiers = [n for n in names if n in CLASSIFIER_CASES]
    rc = selftest.main(["--dir", a.out] + unets) if unets else 0
    if classifiers:
        ok = True
        for name in classifiers:
            try:
                ok &= check_classifier_case(a.out, name)
            except Exception as e:  # report and carry on with the other cases
                print(f"  FAIL {name}: {type(e).__name__}: {e}")
                ok = False
        print("classifier check:", "all passed" if ok else "FAILED")
        rc = rc or (0 if ok else 1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
