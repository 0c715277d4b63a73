"""A CIFAR-10-shaped diffusers UNet2DModel: diffusers' forward pass against difflux's.

    cd /work/main && python3 -m models.difflux_ref.bench_diffusers \
        --difflux build/difflux --out /tmp/difflux-cifar --batch 1,8 --threads 2 --rounds 2

Builds a UNet2DModel with the architecture of google/ddpm-cifar10-32 (3x32x32,
block_out_channels (128, 256, 256, 256), 2 resnets per block, attention in the
second down block, the second-to-last up block and the middle block;
its unet/config.json values below) with random weights (fixed seed; weights
N(0, 1/fan_in) as in make_diffusers_fixtures), saves it as
`DDPMPipeline(unet, DDPMScheduler()).save_pretrained(OUT)` (DDPMScheduler's
defaults, which are google/ddpm-cifar10-32's scheduler: linear betas 1e-4 ..
0.02, 1000 steps), then, in the same invocation, for --rounds rounds:

1. times diffusers' own forward pass, `unet(x, t).sample`, on the CPU in
   float32 under torch.inference_mode() with torch.set_num_threads(--threads),
   at each batch size: --warmup untimed calls, then the median (and mean) of
   --repeat timed calls, each one batched evaluation;
2. runs `difflux bench --model OUT --sampler ddim --steps S --batch LIST
   --threads T --json FILE` (whole DDIM runs of S evaluations, after its own
   warm-up; its ms/eval is the mean over --repeat runs).

It prints ms per batched evaluation and images x evaluations per second of
both and their ratio, PyTorch ms / difflux ms (above 1: difflux is faster).
The VM this was written on drifts by tens of percent between minutes, so the
ratio within one round is the figure to read.

Forward parity is not checked here: the CLI has no command that evaluates
the network on given inputs. tests/test_diffusers.c checks difflux's forward
pass against diffusers' to 1e-4 on the small fixture configs
(tests/fixtures/diffusers).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .make_diffusers_fixtures import randomise

SEED = 32

# google/ddpm-cifar10-32's unet/config.json (diffusers 0.0.4 era); every value
# whose UNet2DModel default differs is given explicitly
CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3,
               block_out_channels=(128, 256, 256, 256), layers_per_block=2,
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
               attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6,
               downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
               center_input_sample=False, mid_block_scale_factor=1, act_fn="silu",
               time_embedding_type="positional")


def cpu_name():
    """/proc/cpuinfo's model name and vector extensions (Linux), else platform's."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = info.split("model name")[1].split(":", 1)[1].split("\n")[0].strip()
        flags = info.split("flags")[1].split(":", 1)[1].split("\n")[0].split()
        ext = [x for x in ("avx2", "fma", "avx512f") if x in flags]
        return f"{name} ({', '.join(ext) or 'no avx2'})"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def build(out):
    import diffusers
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    unet = diffusers.UNet2DModel(**CIFAR10)
    randomise(unet, g)
    unet.eval()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in unet.parameters())
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}; "
          f"UNet2DModel {n} parameters; pipeline saved to {out}")
    return unet


def time_torch(unet, B, warmup, repeat):
    g = torch.Generator().manual_seed(SEED + B)
    x = torch.randn((B, 3, 32, 32), generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    with torch.inference_mode():
        for _ in range(warmup):
            unet(x, t).sample
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            y = unet(x, t).sample
            ts.append(time.perf_counter() - t0)
    assert torch.isfinite(y).all(), "non-finite output"
    return statistics.median(ts) * 1e3, statistics.fmean(ts) * 1e3


def run_difflux(args, out_dir):
    with tempfile.TemporaryDirectory() as tmp:
        js = os.path.join(tmp, "bench.json")
        cmd = [args.difflux, "bench", "--model", out_dir, "--sampler", "ddim",
               "--steps", str(args.steps), "--batch", args.batch, "--threads", str(args.threads),
               "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--json", js]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        with open(js) as f:
            return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--difflux", default="build/difflux", help="the difflux binary")
    ap.add_argument("--out", default="/tmp/difflux-cifar", help="pipeline folder to write")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and --threads")
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps of each difflux run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="PyTorch-then-difflux rounds")
    ap.add_argument("--json", help="write every round's figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch.split(",")]
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; "
          f"{args.threads} threads each side")
    unet = build(args.out)
    rounds = []
    for r in range(args.rounds):
        print(f"\nround {r + 1}, {time.strftime('%H:%M:%S', time.gmtime())} UTC: "
              "PyTorch (diffusers' forward)")
        tor = {}
        for B in batches:
            med, mean = time_torch(unet, B, max(args.warmup, 1), args.repeat)
            tor[B] = med
            print(f"  batch {B:3d}: {med:9.2f} ms/eval (median of {args.repeat}; mean "
                  f"{mean:.2f}), {B * 1e3 / med:8.2f} images x evals/s", flush=True)
        dfx = run_difflux(args, args.out)
        res = {q["batch"]: q for q in dfx["results"]}
        print(f"\n round {r + 1}  batch   PyTorch ms/eval   difflux ms/eval   PyTorch evals/s"
              f"   difflux evals/s   ratio")
        rows = []
        for B in batches:
            d = res[B]["ms_per_eval"]
            rows.append({"batch": B, "torch_ms_per_eval": tor[B], "difflux_ms_per_eval": d,
                         "torch_evals_per_s": B * 1e3 / tor[B],
                         "difflux_evals_per_s": res[B]["evals_per_s"], "ratio": tor[B] / d})
            print(f"          {B:5d}   {tor[B]:15.2f}   {d:15.2f}   {B * 1e3 / tor[B]:15.2f}   "
                  f"{res[B]['evals_per_s']:15.2f}   {tor[B] / d:5.2f}")
        rounds.append({"rows": rows, "difflux": dfx})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "config": CIFAR10, "threads": args.threads,
                       "rounds": rounds}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
