"""Export a training checkpoint to a difflux model file.

    python3 -m models.difflux_ref.export --checkpoint ckpt.pt --out model.safetensors \
        [--dtype F32|F16|BF16] [--weights auto|ema|model]

The checkpoint is a torch.save'd dict:
    {"config": <full difflux config, kind "unet">,
     "model": <UNet state_dict>,
     "ema":   <UNet state_dict>  (optional; exported in preference to "model"),
     "start": {"start.mean": [D], "start.scale": [D, D]}  (with config start.full)}

The config is validated (models/FORMAT.md, models/UNET.md), the state_dict's
names and shapes must match a UNet built from it exactly (common wrapper
prefixes "module." and "_orig_mod." and torch.optim.swa_utils's
"n_averaged" are tolerated), every value must be finite, and the model is
written with tensors in the UNet's canonical order. For F16/BF16 it reports
how much the rounding moves the output on a random batch.
"""

import argparse
import json
import sys

import torch

from .modelfile import DTYPES, load_model, quantize, save_model
from .unet import UNet, check_config, unet_section

PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k == "n_averaged":  # AveragedModel bookkeeping
            continue
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        if k in out:
            raise ValueError(f"state_dict: {k} appears twice after removing wrapper prefixes")
        out[k] = v
    return out


def build_and_check(config: dict, sd: dict) -> UNet:
    """A UNet from `config` holding `sd`; ValueError naming every mismatch."""
    net = UNet.from_config(config)
    want = net.state_dict()
    problems = []
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if extra:
        problems.append("unexpected: " + ", ".join(extra))
    for k, v in want.items():
        if k in sd:
            if not isinstance(sd[k], torch.Tensor):
                problems.append(f"{k}: not a tensor")
            elif tuple(sd[k].shape) != tuple(v.shape):
                problems.append(f"{k}: shape {list(sd[k].shape)}, config implies {list(v.shape)}")
            elif not bool(torch.isfinite(sd[k].float()).all()):
                problems.append(f"{k}: non-finite values")
    if problems:
        raise ValueError("state_dict does not match the config:\n  " + "\n  ".join(problems))
    net.load_state_dict({k: sd[k].detach().float() for k in want}, strict=True)
    return net.eval()


def start_tensors(ck: dict, config: dict, checkpoint: str) -> dict:
    """start.mean and start.scale of a full fitted start (train.fit_start),
    checked against the config's "start"."""
    full = bool(config.get("start", {}).get("full"))
    st = ck.get("start")
    if not full:
        return {}
    if not isinstance(st, dict) or set(st) != {"start.mean", "start.scale"}:
        raise ValueError(f"{checkpoint}: config start.full is set but the checkpoint has no "
                         "'start' tensors (start.mean, start.scale)")
    img = config["image"]
    D = img["channels"] * img["height"] * img["width"]
    if tuple(st["start.mean"].shape) != (D,) or tuple(st["start.scale"].shape) != (D, D):
        raise ValueError(f"{checkpoint}: start tensors must be [{D}] and [{D}, {D}]")
    for k, v in st.items():
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{checkpoint}: {k} has non-finite values")
    return {k: v.float() for k, v in st.items()}


def export(checkpoint: str, out: str, dtype: str = "F32", which: str = "auto", log=print):
    ck = torch.load(checkpoint, map_location="cpu")
    if not isinstance(ck, dict) or "config" not in ck:
        raise ValueError(f"{checkpoint}: expected a dict with 'config' and 'model' (or 'ema')")
    config = ck["config"]
    if isinstance(config, str):
        config = json.loads(config)
    config = dict(config)
    config["unet"] = unet_section(config.get("unet", {}))  # write every key explicitly
    st = ck.get("state")
    if isinstance(st, dict) and st.get("step"):  # written by train.py
        losses = [l for _, l in st.get("losses", [])][-10:]
        prov = dict(config.get("provenance", {}))
        prov["training"] = {
            "steps": int(st["step"]),
            "batch": int(ck.get("recipe", {}).get("train", {}).get("batch", 0)),
            "images": int(st.get("images", 0)),
            "minutes": round(float(st.get("elapsed", 0.0)) / 60, 1),
            "final_loss": round(sum(losses) / len(losses), 5) if losses else None,
            "hardware": st.get("hardware", ""),
        }
        config["provenance"] = prov
    check_config(config)
    if which == "auto":
        which = "ema" if ck.get("ema") is not None else "model"
    if ck.get(which) is None:
        raise ValueError(f"{checkpoint}: no '{which}' state_dict")
    sd = clean_state_dict(ck[which])
    net = build_and_check(config, sd)
    tensors = net.state_dict()
    extra = start_tensors(ck, config, checkpoint)
    tensors.update(extra)
    save_model(out, tensors, config, dtype)

    # Read back and compare with the checkpoint's float32 weights.
    back, cfg = load_model(out)
    if list(back) != list(tensors) or cfg != json.loads(json.dumps(config)):
        raise RuntimeError(f"{out}: read-back differs from what was written")
    werr = max(float((back[k] - quantize(v, dtype)).abs().max()) for k, v in tensors.items()
               if v.numel())
    if werr != 0.0:
        raise RuntimeError(f"{out}: stored weights differ from the {dtype} rounding")
    n = sum(v.numel() for k, v in tensors.items() if k not in extra)
    log(f"{out}: {len(tensors)} tensors, {n} parameters as {dtype} (weights: '{which}')"
        + (", with the fitted start" if extra else ""))
    if dtype != "F32":
        img, u = config["image"], config["unet"]
        g = torch.Generator().manual_seed(0)
        x = torch.randn((4, img["channels"], img["height"], img["width"]), generator=g)
        t = 0.02 + 0.96 * torch.rand((4,), generator=g)
        y = torch.full((4,), u["num_classes"], dtype=torch.long) if u["num_classes"] else None
        q = UNet.from_config(config)
        q.load_state_dict({k: v for k, v in back.items() if k not in extra})
        with torch.no_grad():
            a, b = net(x, t, y), q.eval()(x, t, y)
        log(f"  {dtype} rounding moves the output of a random batch by at most "
            f"{float((a - b).abs().max()):.3g} (outputs up to {float(a.abs().max()):.3g})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export a U-Net training checkpoint to a "
                                             "difflux model file.")
    ap.add_argument("--checkpoint", required=True, help="torch checkpoint (.pt)")
    ap.add_argument("--out", required=True, help="model file to write (.safetensors)")
    ap.add_argument("--dtype", default="F32", choices=DTYPES, help="stored dtype")
    ap.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                    help="which state_dict (auto: 'ema' when present)")
    a = ap.parse_args(argv)
    try:
        export(a.checkpoint, a.out, a.dtype, a.weights)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
