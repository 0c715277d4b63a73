"""Self-check of the U-Net fixtures (and of the reference itself).

    python3 -m models.difflux_ref.selftest [--dir tests/fixtures] [CASE ...]

For each fixture NAME (NAME.safetensors + NAME.io.safetensors) it
1. reloads the model file with load_model and checks that its tensor names
   and shapes are exactly those UNET.md's table lists for its config
   (expected_tensors below, written from the table independently of unet.py),
   and that the rebuilt UNet's state_dict has the same names and shapes;
2. recomputes the output in float64 with the UNet module and checks it
   against the stored "out";
3. recomputes it again with `reference_forward`, a second, functional
   implementation written directly from UNET.md's pseudocode (hand-written
   GroupNorm, per-head attention loops, index-based nearest upsampling), and
   checks that too;
4. checks that every parameter influences the output (non-zero gradient);
5. reports how far a float32 evaluation lands from "out" (a guide for the C
   engine's test tolerances);
6. where NAME.jvp.safetensors exists: checks that its x, t, y are those of
   the io file and recomputes its `out` and `jvp` (and `out_guided`,
   `jvp_guided`) in float64 with torch.func.jvp.
Exit status 0 when every check passes.
"""

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

try:  # PyTorch >= 2.0
    from torch.func import jvp as func_jvp
except ImportError:  # PyTorch 1.13 ships the same function in functorch
    from functorch import jvp as func_jvp

from .modelfile import file_dtypes, load_model, load_tensors
from .unet import UNet, check_config

CASES = ("unet_tiny", "unet_cond", "unet_rgb", "unet_f16", "unet_bf16")


# ----------------------------------------------------------------------------
# UNET.md "Tensor names", enumerated from the config


def expected_tensors(config: dict) -> dict:
    """name -> shape, exactly the tensors UNET.md's table requires."""
    u, img = config["unet"], config["image"]
    C = img["channels"]
    ch0 = u["base_channels"]
    mult = u["channel_mult"]
    nrb = u["num_res_blocks"]
    T = u["time_embed_dim"]
    K = u.get("num_classes", 0)
    att = set(u["attention_levels"])
    L = len(mult)
    ch = [ch0 * m for m in mult]
    names = {}

    def pair(prefix, wshape, n):
        names[prefix + ".weight"] = list(wshape)
        names[prefix + ".bias"] = [n]

    def resblock(blk, cin, cout):
        pair(blk + ".norm1", [cin], cin)
        pair(blk + ".conv1", [cout, cin, 3, 3], cout)
        pair(blk + ".temb", [cout, T], cout)
        pair(blk + ".norm2", [cout], cout)
        pair(blk + ".conv2", [cout, cout, 3, 3], cout)
        if cin != cout:
            pair(blk + ".skip", [cout, cin, 1, 1], cout)

    def attention(a, c):
        pair(a + ".norm", [c], c)
        pair(a + ".qkv", [3 * c, c, 1, 1], 3 * c)
        pair(a + ".proj", [c, c, 1, 1], c)

    pair("temb.lin1", [T, ch0], T)
    pair("temb.lin2", [T, T], T)
    if K > 0:
        names["class_emb.weight"] = [K + 1, T]
    pair("conv_in", [ch0, C, 3, 3], ch0)

    # Channel bookkeeping of the pseudocode: the skip stack holds channel counts.
    stack = [ch0]
    h = ch0
    for l in range(L):
        for r in range(nrb):
            resblock(f"down.{l}.res.{r}", h, ch[l])
            h = ch[l]
            if l in att:
                attention(f"down.{l}.attn.{r}", h)
            stack.append(h)
        if l < L - 1:
            pair(f"down.{l}.downsample", [ch[l], ch[l], 3, 3], ch[l])
            stack.append(ch[l])
    resblock("mid.res1", h, h)
    attention("mid.attn", h)
    resblock("mid.res2", h, h)
    for l in range(L - 1, -1, -1):
        for r in range(nrb + 1):
            resblock(f"up.{l}.res.{r}", h + stack.pop(), ch[l])
            h = ch[l]
            if l in att:
                attention(f"up.{l}.attn.{r}", h)
        if l > 0:
            pair(f"up.{l}.upsample", [ch[l], ch[l], 3, 3], ch[l])
    assert not stack
    pair("out.norm", [ch0], ch0)
    pair("out.conv", [C, ch0, 3, 3], C)
    return names


# ----------------------------------------------------------------------------
# A second implementation of the network, functional, from UNET.md


def reference_forward(P: dict, config: dict, x, t, y):
    """out = net(x, t, y) from the tensor dict P, in float64. y: [B] labels
    (ignored by unconditional models)."""
    u, dt = config["unet"], torch.float64
    P = {k: v.to(dt) for k, v in P.items()}
    x = x.to(dt)
    B = x.shape[0]
    G, eps = u["groups"], u["norm_eps"]
    ch0, mult, nrb = u["base_channels"], u["channel_mult"], u["num_res_blocks"]
    L, att = len(mult), set(u["attention_levels"])

    def silu(v):
        return v * torch.sigmoid(v)

    def gn(v, name):
        b, c, hh, ww = v.shape
        g = v.reshape(b, G, (c // G) * hh * ww)
        mean = g.mean(dim=2, keepdim=True)
        var = ((g - mean) ** 2).mean(dim=2, keepdim=True)  # biased
        g = (g - mean) / torch.sqrt(var + eps)
        g = g.reshape(b, c, hh, ww)
        return g * P[name + ".weight"][None, :, None, None] + P[name + ".bias"][None, :, None, None]

    def conv(v, name, stride=1):
        w = P[name + ".weight"]
        return F.conv2d(v, w, P[name + ".bias"], stride=stride, padding=w.shape[-1] // 2)

    def linear(v, name):
        return v @ P[name + ".weight"].T + P[name + ".bias"]

    # time embedding, element by element
    half = ch0 // 2
    e = torch.zeros(B, ch0, dtype=dt)
    for b in range(B):
        uu = float(t[b]) * float(u["time_scale"])
        for i in range(half):
            f = math.exp(-math.log(10000.0) * i / half)
            e[b, i] = math.sin(uu * f)
            e[b, half + i] = math.cos(uu * f)
    temb = linear(silu(linear(e, "temb.lin1")), "temb.lin2")
    if u.get("num_classes", 0) > 0:
        temb = temb + P["class_emb.weight"][y.long()]

    def res(v, blk):
        h = conv(silu(gn(v, blk + ".norm1")), blk + ".conv1")
        h = h + linear(silu(temb), blk + ".temb")[:, :, None, None]
        h = conv(silu(gn(h, blk + ".norm2")), blk + ".conv2")
        return h + (conv(v, blk + ".skip") if blk + ".skip.weight" in P else v)

    def attn(v, a):
        b, c, hh, ww = v.shape
        n = hh * ww
        qkv = conv(gn(v, a + ".norm"), a + ".qkv").reshape(b, 3 * c, n)
        q, k, vv = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        d = c // u["heads"]
        o = torch.zeros(b, c, n, dtype=dt)
        for s in range(b):
            for head in range(u["heads"]):
                sl = slice(head * d, head * d + d)
                logits = q[s, sl].T @ k[s, sl] / math.sqrt(d)  # [i, j]
                logits = logits - logits.max(dim=1, keepdim=True).values
                A = torch.exp(logits)
                A = A / A.sum(dim=1, keepdim=True)
                o[s, sl] = vv[s, sl] @ A.T  # o[c, i] = sum_j A[i, j] v[c, j]
        return v + conv(o.reshape(b, c, hh, ww), a + ".proj")

    def up2(v):
        hh, ww = v.shape[2], v.shape[3]
        ri = torch.arange(2 * hh) // 2
        ci = torch.arange(2 * ww) // 2
        return v[:, :, ri][:, :, :, ci]

    h = conv(x, "conv_in")
    skips = [h]
    for l in range(L):
        for r in range(nrb):
            h = res(h, f"down.{l}.res.{r}")
            if l in att:
                h = attn(h, f"down.{l}.attn.{r}")
            skips.append(h)
        if l < L - 1:
            h = conv(h, f"down.{l}.downsample", stride=2)
            skips.append(h)
    h = res(h, "mid.res1")
    h = attn(h, "mid.attn")
    h = res(h, "mid.res2")
    for l in range(L - 1, -1, -1):
        for r in range(nrb + 1):
            h = res(torch.cat([h, skips.pop()], dim=1), f"up.{l}.res.{r}")
            if l in att:
                h = attn(h, f"up.{l}.attn.{r}")
        if l > 0:
            h = conv(up2(h), f"up.{l}.upsample")
    return conv(silu(gn(h, "out.norm")), "out.conv")


# ----------------------------------------------------------------------------


def _labels(io, config):
    y = io["y"]
    if config["unet"].get("num_classes", 0) > 0:
        return y.round().long()
    return None


def check_case(folder: str, name: str, log=print) -> bool:
    mpath = os.path.join(folder, name + ".safetensors")
    ipath = os.path.join(folder, name + ".io.safetensors")
    tensors, config = load_model(mpath)
    io, meta = load_tensors(ipath)
    ok = True

    def check(cond, msg):
        nonlocal ok
        if not cond:
            ok = False
            log(f"  FAIL {name}: {msg}")

    check_config(config)
    check(meta.get("format") == "difflux-fixture", "io file format is not difflux-fixture")
    exp = expected_tensors(config)
    got = {k: list(v.shape) for k, v in tensors.items()}
    check(set(got) == set(exp),
          f"names differ from UNET.md: missing {sorted(set(exp) - set(got))}, "
          f"extra {sorted(set(got) - set(exp))}")
    check(all(got.get(k) == s for k, s in exp.items()), "shapes differ from UNET.md")

    net = UNet.from_config(config)
    sd = {k: list(v.shape) for k, v in net.state_dict().items()}
    check(sd == exp, "UNet.state_dict() names/shapes differ from UNET.md")
    net.load_state_dict(tensors, strict=True)

    x, t, out = io["x"], io["t"], io["out"]
    y = _labels(io, config)
    if y is None:
        check(bool((io["y"] == 0).all()), "unconditional model with non-zero y")
    img = config["image"]
    check(list(x.shape) == [x.shape[0], img["channels"], img["height"], img["width"]],
          "x has the wrong shape")
    check(out.shape == x.shape and t.shape == (x.shape[0],) and io["y"].shape == t.shape,
          "io shapes inconsistent")

    with torch.no_grad():
        net64 = UNet.from_config(config).double()
        net64.load_state_dict({k: v.double() for k, v in tensors.items()})
        o64 = net64(x.double(), t.double(), y)
        ref = reference_forward(tensors, config, x.double(), t.double(), y)
        net.float()
        o32 = net(x, t, y).double()
    # Every parameter matters: each one's gradient of a random projection of
    # the output is non-zero (so a C engine that ignored any tensor would fail).
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net64.zero_grad()
    (net64(x.double(), t.double(), y) * w).sum().backward()
    dead = [k for k, p in net64.named_parameters()
            if p.grad is None or float(p.grad.abs().max()) == 0.0]
    check(not dead, f"parameters without influence on the output: {', '.join(dead)}")
    scale = float(out.abs().max())
    e_mod = float((o64 - out.double()).abs().max())
    e_ref = float((ref - out.double()).abs().max())
    e_two = float((ref - o64).abs().max())
    e_32 = float((o32 - out.double()).abs().max())
    # "out" is the float64 result rounded to float32: at most half an ulp.
    tol = 2.0 ** -23 * scale + 1e-12
    check(e_mod <= tol, f"UNet (float64) differs from out by {e_mod:.3g} (tol {tol:.3g})")
    check(e_ref <= tol, f"reference_forward differs from out by {e_ref:.3g} (tol {tol:.3g})")
    check(e_two <= 1e-12 * max(scale, 1.0), f"UNet and reference_forward differ by {e_two:.3g}")
    dts = sorted(set(file_dtypes(mpath).values()))
    log(f"  {name:10s} {'ok  ' if ok else 'FAIL'} dtype {'/'.join(dts):4s} "
        f"tensors {len(tensors):3d} params {sum(v.numel() for v in tensors.values()):7d} "
        f"max|out| {scale:6.3f} |out-f64| {e_mod:.1e} |out-ref| {e_ref:.1e} "
        f"|f64-ref| {e_two:.1e} |out-f32| {e_32:.1e}")
    return ok


def check_jvp_case(folder: str, name: str, log=print) -> bool:
    """NAME.jvp.safetensors against a float64 recomputation."""
    tensors, config = load_model(os.path.join(folder, name + ".safetensors"))
    io, _ = load_tensors(os.path.join(folder, name + ".io.safetensors"))
    jf, meta = load_tensors(os.path.join(folder, name + ".jvp.safetensors"))
    ok = True

    def check(cond, msg):
        nonlocal ok
        if not cond:
            ok = False
            log(f"  FAIL {name}.jvp: {msg}")

    check(meta.get("format") == "difflux-fixture", "jvp file format is not difflux-fixture")
    for k in ("x", "t", "y"):
        check(torch.equal(jf[k], io[k]), f"{k} differs from the io file")
    check(jf["v"].shape == jf["x"].shape, "v has the wrong shape")
    net64 = UNet.from_config(config).double()
    net64.load_state_dict({k: v.double() for k, v in tensors.items()})
    x, t, v = jf["x"].double(), jf["t"].double(), jf["v"].double()
    y = _labels(jf, config)
    pairs = [("out", "jvp", lambda z: net64(z, t, y))]
    if "out_guided" in jf:
        K, w, c = config["unet"]["num_classes"], float(meta["guidance"]), int(meta["guided_class"])
        yc = torch.full(y.shape, c, dtype=torch.long)
        yu = torch.full(y.shape, K, dtype=torch.long)
        pairs.append(("out_guided", "jvp_guided",
                      lambda z: net64(z, t, yu) + w * (net64(z, t, yc) - net64(z, t, yu))))
    worst = []
    for ko, kj, f in pairs:
        out, jv = func_jvp(f, (x,), (v,))
        for key, val in ((ko, out), (kj, jv)):
            scale = float(val.abs().max())
            e = float((val - jf[key].double()).abs().max())
            check(e <= 2.0 ** -23 * scale + 1e-12, f"{key} differs by {e:.3g} (scale {scale:.3g})")
            worst.append(f"{key} {e:.1e}/{scale:.2f}")
    log(f"  {name + '.jvp':14s} {'ok  ' if ok else 'FAIL'} " + ", ".join(worst))
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="tests/fixtures", help="fixture folder")
    ap.add_argument("cases", nargs="*", help=f"cases (default: {' '.join(CASES)})")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ok = True
    for name in a.cases or CASES:
        try:
            ok &= check_case(a.dir, name)
            if os.path.exists(os.path.join(a.dir, name + ".jvp.safetensors")):
                ok &= check_jvp_case(a.dir, name)
        except Exception as e:  # report and carry on with the other cases
            print(f"  FAIL {name}: {type(e).__name__}: {e}")
            ok = False
    print("selftest:", "all passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
