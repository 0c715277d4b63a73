"""Print the factual part of a model card (markdown) for a trained model.

    python3 -m models.difflux_ref.card --model models/NAME.safetensors \
        [--config models/configs/NAME.json] [--sample-command "..."] [--eval FILE.json]

Everything comes from the model file (config, provenance.training written
by the exporter, tensor sizes), the recipe, and optionally the JSON that
`difflux eval --json` wrote; nothing is typed in by hand.
"""

import argparse
import json
import os
import struct
import sys

LOSSES = {
    "flow": "flow matching: |v(t, x_t) - (x_data - z)|^2 with x_t = t x_data + (1 - t) z, "
            "t uniform (one-sided linear interpolant, velocity prediction)",
    "vp": "VP diffusion noise prediction: |eps(t, x_t) - z|^2 with x_t = a(t) x_data + s(t) z, "
          "t uniform in [t_min, 1] (linear beta schedule)",
    "dale": "multiplicative denoising score matching (MATH.md section 3) on x_t = x_0 "
            "exp((mu - sigma^2/2) t + sigma sqrt(t) z), t uniform in [t_min, 1]",
}


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    meta = h.pop("__metadata__", {})
    numel = 0
    for name, t in h.items():
        if name.startswith("start."):  # the fitted start, not network weights
            continue
        k = 1
        for d in t["shape"]:
            k *= d
        numel += k
    return json.loads(meta["config"]), numel, os.path.getsize(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", help="the recipe (default models/configs/NAME.json)")
    ap.add_argument("--sample-command", help="the command that made the sample grid")
    ap.add_argument("--eval", help="JSON written by difflux eval --json")
    args = ap.parse_args(argv)
    cfg, numel, size = header(args.model)
    name = os.path.basename(args.model).rsplit(".safetensors", 1)[0]
    recipe_path = args.config or os.path.join("models", "configs", name + ".json")
    with open(recipe_path) as f:
        recipe = json.load(f)
    tr, u, prov = recipe["train"], cfg["unet"], cfg.get("provenance", {})
    run = prov.get("training", {})
    img = cfg["image"]
    res = [f"{img['height'] >> l}x{img['width'] >> l}@{u['base_channels'] * m}"
           + ("+attn" if l in u["attention_levels"] else "")
           for l, m in enumerate(u["channel_mult"])]
    out = [f"## {name}", ""]
    out.append(f"* Data: {prov.get('dataset', '?')}, scaled to {cfg['data']['range']}.")
    arch = (f"U-Net (models/UNET.md), {' '.join(res)}, {u['num_res_blocks']} residual block(s) "
            f"per level, {u['heads']} attention heads, GroupNorm {u['groups']} groups, time "
            f"embedding {u['time_embed_dim']}")
    if u.get("num_classes", 0):
        arch += f", {u['num_classes']} classes + a null label (classifier-free guidance)"
    path = dict(cfg["path"])
    fam = path.pop("family")
    if path:
        fam += " (" + ", ".join(f"{k} {v}" for k, v in path.items()) + ")"
    out.append(f"* Architecture: {arch}; path {fam}, prediction `{cfg['prediction']}`.")
    st = cfg.get("start", {})
    start = (", plus the fitted start distribution (start.mean, start.scale: a Gaussian with "
             "full covariance, host/MATH.md)" if st.get("full") else "")
    out.append(f"* Parameters: {numel:,} (F32, {size / 1e6:.1f} MB{start}).")
    loss = LOSSES.get(tr["loss"], tr["loss"])
    if tr["loss"] == "dale" and cfg["prediction"] == "eps":
        loss += ("; the network predicts the noise in y = log x and the loss is weighted by "
                 "1/(sigma^2 t), i.e. |eps - z|^2")
    if u.get("num_classes", 0):
        loss += f"; labels replaced by the null label with probability {tr.get('label_dropout', 0.1)}"
    out.append(f"* Loss: {loss}.")
    out.append(f"* Training: {run.get('steps', '?'):,} of the recipe's {tr['steps']:,} steps of "
               f"batch {tr['batch']} ({run.get('images', 0):,} images), Adam lr {tr['lr']} after "
               f"{tr.get('warmup', 0)} warm-up steps"
               + (f" (from step {tr['lr_decay']['start'] * tr['steps']:,.0f} falling linearly to "
                  f"{tr['lr_decay']['final']} of it at step {tr['steps']:,})"
                  if tr.get("lr_decay") else "")
               + f", gradient clipping {tr.get('clip', 1.0)}, "
               f"EMA {tr.get('ema')} (the EMA weights are shipped), seed {tr.get('seed', 0)}.")
    out.append(f"* Wall time and hardware: {run.get('minutes', '?')} minutes on "
               f"{run.get('hardware', '?')}.")
    out.append(f"* Final loss (mean of the last logged window): {run.get('final_loss', '?')}.")
    out.append(f"* Command (resumes from `models/checkpoints/{name}.pt`, which "
               f"`models/checkpoints/restore.sh` brings back in a fresh checkout): "
               f"`python3 -m models.difflux_ref.train --config {recipe_path} --threads 2` "
               f"(`--device cuda` on a GPU).")
    if args.sample_command:
        out.append(f"* Samples: `{args.sample_command}`.")
    if args.eval:
        with open(args.eval) as f:
            ev = json.load(f)
        steps = f" --steps {ev['steps']}" if ev.get("steps") else ""
        out.append(f"* Quality (`./build/difflux eval --model {ev['model']} --sampler "
                   f"{ev['sampler']}{steps} --n {ev['n']}`, {ev['nfe']:.0f} evaluations per "
                   f"sample"
                   + (f", {ev['start_langevin']} of them Langevin steps at the start"
                      if ev.get("start_langevin") else "")
                   + f"): FID {ev['fid']:.2f}, KID "
                   f"{ev['kid']:.3f} ± {ev['kid_std']:.3f}, classifier confidence "
                   f"{ev['confidence']:.3f}, {ev['classes_covered']} of "
                   f"{len(ev['histogram'])} classes covered"
                   + (f", nearest training image at median L2 {ev['nn_median']:.2f}"
                      if "nn_median" in ev else "") + ".")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
