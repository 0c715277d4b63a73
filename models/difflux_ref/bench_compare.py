"""Side-by-side throughput: difflux against the PyTorch reference module.

    python3 -m models.difflux_ref.bench_compare --model models/mnist-flow.safetensors \
        --sampler heun --steps 10 --batch 1,64 --threads 2 [--device cpu|cuda] [--compile]

Both run the same weights, the same sampler (Heun on the probability-flow
ODE, uniform time grid, final denoising step), batch sizes and step counts,
in the same invocation, one after the other: difflux through `difflux bench
--json`, PyTorch eager (and, with --compile, torch.compile; on CUDA also a
CUDA-graph replay of one network evaluation). It prints both throughputs and
their ratio. Timings are for whole sampler runs after a warm-up.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

from .modelfile import load_model
from .unet import UNet


# -------------------------------------------------------------- paths (host/model/path.c)

def path_coefs(p, t):
    """a, s, m and their t-derivatives of the path (host/MATH.md section 1)."""
    fam = p["family"]
    if fam == "linear":
        return t, 1 - t, 0.0, 1.0, -1.0, 0.0
    if fam == "trig":
        a, s = math.sin(math.pi * t / 2), math.cos(math.pi * t / 2)
        return a, s, 0.0, math.pi / 2 * s, -math.pi / 2 * a, 0.0
    if fam == "vp":
        b0, b1 = p.get("beta_min", 0.1), p.get("beta_max", 20.0)
        la = -(0.5 * b0 * t + 0.25 * (b1 - b0) * t * t)
        a = math.exp(la)
        da = a * -0.5 * (b0 + (b1 - b0) * t)
        s = math.sqrt(-math.expm1(2 * la))
        return a, s, 0.0, da, -a * da / s, 0.0
    if fam == "ve":
        lo, hi = p.get("sigma_min", 0.002), p.get("sigma_max", 80.0)
        s = lo * (hi / lo) ** t
        return 1.0, s, 0.0, 0.0, s * math.log(hi / lo), 0.0
    raise ValueError(f"bench_compare supports linear, trig, vp and ve paths, not {fam}")


def default_range(p):
    return (0.0, 1.0 - 1e-3) if p["family"] in ("linear", "trig") else \
        ((1.0, 1e-3) if p["family"] == "vp" else (1.0, 0.0))


def affine(c, pred):
    """P = cx x + cd x_hat + k (the model layer's pred_affine)."""
    a, s, m, da, ds, dm = c
    cx, cd = {"eps": (1 / s, -a / s), "data": (0.0, 1.0), "score": (-1 / s ** 2, a / s ** 2),
              "velocity": (ds / s, da - a * ds / s), "v": (a / s, -(a * a + s * s) / s)}[pred]
    return cx, cd, -cx * m + (dm if pred == "velocity" else 0.0)


def convert(c, frm, to):
    if frm == to:
        return 0.0, 1.0, 0.0
    xn, dn, kn = affine(c, frm)
    xw, dw, kw = affine(c, to)
    B = dw / dn
    return xw - B * xn, B, kw - B * kn


def heun_torch(net, cfg, x, steps, y=None):
    """The Heun sampler of host/sampler/samplers_ode.c in PyTorch."""
    p, pred = cfg["path"], cfg["prediction"]
    t0, t1 = default_range(p)
    grid = [t0 + (t1 - t0) * i / steps for i in range(steps + 1)]
    B = x.shape[0]

    def vel(t, z):
        A, Bc, C = convert(path_coefs(p, t), pred, "velocity")
        return A * z + Bc * net(z, torch.full((B,), t, device=z.device), y) + C

    for i in range(steps):
        h = grid[i + 1] - grid[i]
        k1 = vel(grid[i], x)
        k2 = vel(grid[i + 1], x + h * k1)
        x = x + 0.5 * h * (k1 + k2)
    A, Bc, C = convert(path_coefs(p, t1), pred, "data")
    return A * x + Bc * net(x, torch.full((B,), t1, device=x.device), y) + C


def time_torch(fn, warmup, repeat, sync):
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/mnist-flow.safetensors")
    ap.add_argument("--difflux", default="build/difflux", help="the difflux binary")
    ap.add_argument("--sampler", default="heun", choices=["heun"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--json", help="write both sides' results here")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    # difflux, through its own benchmark command
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [args.difflux, "bench", "--model", args.model, "--sampler", args.sampler,
               "--steps", str(args.steps), "--batch", args.batch, "--threads", str(args.threads),
               "--device", args.device, "--warmup", str(args.warmup), "--repeat",
               str(args.repeat), "--json", out]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as f:
            dfx = json.load(f)
    dfx_rate = {r["batch"]: r["images_per_s"] for r in dfx["results"]}

    # PyTorch, same weights
    tensors, cfg = load_model(args.model)
    net = UNet.from_config(cfg).to(dev).eval()
    net.load_state_dict(tensors)
    C, H, W = cfg["image"]["channels"], cfg["image"]["height"], cfg["image"]["width"]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    variants = [("eager", net)]
    if args.compile:
        variants.append(("compile", torch.compile(net)))
    rows = []
    print(f"\nPyTorch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}")
    print(f"{'batch':>6} {'difflux img/s':>14} " +
          " ".join(f"{'torch ' + n + ' img/s':>20} {'ratio':>6}" for n, _ in variants))
    for B in batches:
        x0 = torch.randn(B, C, H, W, device=dev)
        line = f"{B:>6} {dfx_rate[B]:>14.2f} "
        row = {"batch": B, "difflux_images_per_s": dfx_rate[B]}
        for name, f in variants:
            with torch.no_grad():
                T = time_torch(lambda: heun_torch(f, cfg, x0, args.steps), args.warmup,
                               args.repeat, sync)
            rate = B * args.repeat / T
            row[f"torch_{name}_images_per_s"] = rate
            line += f"{rate:>20.2f} {dfx_rate[B] / rate:>6.2f}"
        print(line, flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"difflux": dfx, "torch": {"version": torch.__version__,
                                                 "threads": torch.get_num_threads(),
                                                 "results": rows}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
