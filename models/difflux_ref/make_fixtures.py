"""Write the U-Net test fixtures the C engine is checked against.

    cd /work/main && python3 -m models.difflux_ref.make_fixtures --out tests/fixtures

For each case NAME it writes
    NAME.safetensors     a difflux model file (kind "unet", random weights)
    NAME.io.safetensors  F32 tensors x [B,C,H,W], t [B], y [B] (labels as
                         floats; 0 for unconditional models) and out [B,C,H,W]:
                         the network output evaluated in float64 from the
                         weights as stored in NAME.safetensors (after F16/BF16
                         rounding), then rounded to float32.
and then runs the self-check (selftest.py) on everything it wrote.
Output is deterministic: fixed seeds, explicit torch.Generator draws in a
fixed order, one CPU thread.
"""

import argparse
import os
import sys

import torch
import torch.nn as nn

from . import selftest
from .modelfile import load_model, save_model, save_tensors
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the U-Net test fixtures.")
    ap.add_argument("--out", default="tests/fixtures", help="output folder")
    ap.add_argument("--no-check", action="store_true", help="skip the self-check")
    ap.add_argument("cases", nargs="*", help=f"cases (default: all of {' '.join(CASES)})")
    a = ap.parse_args(argv)
    for c in a.cases:
        if c not in CASES:
            ap.error(f"unknown case {c} (have {', '.join(CASES)})")
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    names = a.cases or list(CASES)
    for name in names:
        make_case(a.out, name)
        for suffix in (".safetensors", ".io.safetensors"):
            p = os.path.join(a.out, name + suffix)
            print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    if a.no_check:
        return 0
    return selftest.main(["--dir", a.out] + names)


if __name__ == "__main__":
    sys.exit(main())
