"""Training recipes for the shipped models: one command per model, the
recipe in a JSON file under models/configs/, resumable.

    python3 -m models.difflux_ref.train --config models/configs/mnist-flow.json [--minutes 60]

Run it again and it resumes from models/checkpoints/NAME.pt (model, EMA,
optimiser, data order and random state), so a long training can be spread
over several sessions; --minutes bounds one run. Every checkpoint also
exports the EMA weights to models/NAME.safetensors, the file `difflux
sample --model` reads.

Losses (host/MATH.md):
  flow  one-sided linear interpolant x_t = t x + (1 - t) z, velocity target x - z
  vp    VP diffusion x_t = a(t) x + s(t) z, noise target z
  dale  multiplicative denoising score matching on data in [1, 2] (section 3)
"""

import argparse
import gzip
import json
import os
import signal
import struct
import sys
import time

import numpy as np
import torch

from .export import export
from .unet import UNet, config_json


# ---------------------------------------------------------------- data

def read_idx(path):
    """IDX file (plain or .gz) as a numpy array."""
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        raw = f.read()
    magic, = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def data_file(path, root=None):
    """A recipe's data file, or the file of the same name under root (for
    machines where the data set is not installed where the recipe says,
    e.g. a GPU machine that gets the files carried in a folder)."""
    if root and not os.path.exists(path):
        alt = os.path.join(root, os.path.basename(path))
        if os.path.exists(alt):
            return alt
    return path


def load_data(cfg, root=None):
    """Images in the model's data range [lo, hi], labels (or None)."""
    d = cfg["data"]
    x = read_idx(data_file(d["images"], root)).astype(np.float32) / 255.0
    if x.ndim == 3:
        x = x[:, None]
    if "count" in d:
        x = x[: d["count"]]
    lo, hi = d.get("range", [-1.0, 1.0])
    x = torch.from_numpy(lo + (hi - lo) * x)
    y = None
    if d.get("labels"):
        y = torch.from_numpy(read_idx(data_file(d["labels"], root)).astype(np.int64)[: len(x)])
    return x, y


# ---------------------------------------------------------------- paths and losses

def vp_coefs(t, beta_min=0.1, beta_max=20.0):
    log_a = -(0.5 * beta_min * t + 0.25 * (beta_max - beta_min) * t * t)
    a = torch.exp(log_a)
    s = torch.sqrt(-torch.expm1(2 * log_a))
    return a, s


def loss_fn(net, x, y, kind, g, cfg):
    """Per-batch loss; all randomness from generator g."""
    B = x.shape[0]
    z = torch.randn(x.shape, generator=g)
    view = (B,) + (1,) * (x.dim() - 1)
    if kind == "flow":
        t = torch.rand(B, generator=g)
        tt = t.view(view)
        xt = tt * x + (1 - tt) * z
        target = x - z
    elif kind == "vp":
        t_min = cfg.get("t_min", 1e-3)
        t = t_min + (1 - t_min) * torch.rand(B, generator=g)
        a, s = vp_coefs(t.double())
        a, s = a.float().view(view), s.float().view(view)
        xt = a * x + s * z
        target = z
    elif kind == "dale":
        # x in [1, 2]; log X_t = log X_0 + (mu - sigma^2/2) t + sigma sqrt(t) z
        sigma, mu = cfg.get("sigma", 0.8), cfg.get("mu", 0.32)
        t_min = cfg.get("t_min", 1e-3)
        t = t_min + (1 - t_min) * torch.rand(B, generator=g)
        tt = t.view(view)
        logr = (mu - 0.5 * sigma ** 2) * tt + sigma * torch.sqrt(tt) * z
        xt = x * torch.exp(logr)
        out = net(xt, t, y).float()
        if cfg.get("prediction", "score") == "eps":
            # the network predicts the noise of the VE path in y = log x:
            # grad_y log p = -eps / (sigma sqrt t), x s_theta = grad_y log p - 1,
            # and the residual below is sigma sqrt(t) (z - eps). Weighting
            # the loss by 1 / (sigma^2 t) ("weight": "eps") makes it plain
            # noise matching, which learns small t as well as large.
            xs = -out / (sigma * torch.sqrt(tt)) - 1.0
        else:
            xs = xt * out  # the ambient score grad_x log p
        r = sigma ** 2 * tt * xs + logr - mu * tt + 1.5 * sigma ** 2 * tt
        per = r.pow(2).flatten(1).sum(1) / x[0].numel()
        if cfg.get("weight") == "eps":
            per = per / (sigma ** 2 * t)
        return per.mean()
    else:
        raise ValueError(f"unknown loss {kind!r}")
    out = net(xt, t, y).float()  # float32 under bf16 autocast too
    return (out - target).pow(2).mean()


# ---------------------------------------------------------------- checkpoints

def hardware(dev):
    """The processor a run trains on, in words (for the model card)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    hw = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            hw = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return hw + f", {torch.get_num_threads()} thread(s)"


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit_start(cfg, x_all):
    """The Gaussian fitted to the dale path's noise end (t = 1), with full
    covariance: y_1 = log x_0 + (mu - sigma^2/2) + sigma z, so its mean is
    E[log x_0] + mu - sigma^2/2 and its covariance Cov(log x_0) + sigma^2 I
    (host/MATH.md, "The start of a dale sampler"). Returns the config's
    "start" object and the tensors start.mean [D], start.scale [D, D] (the
    Cholesky factor of the covariance)."""
    p = cfg["path"]
    if p.get("family") != "dale":
        raise ValueError(f"{cfg['name']}: start.full is defined for the dale path only")
    sigma, mu = p.get("sigma", 0.8), p.get("mu", 0.32)
    y = torch.log(x_all.double().flatten(1))
    mean = y.mean(0) + (mu - 0.5 * sigma ** 2)
    yc = y - y.mean(0)
    cov = yc.T @ yc / (len(y) - 1) + sigma ** 2 * torch.eye(y.shape[1], dtype=torch.float64)
    scale = torch.linalg.cholesky(cov)
    start = {"mean": round(float(mean.mean()), 6),
             "std": round(float(cov.diagonal().mean().sqrt()), 6), "full": True}
    return start, {"start.mean": mean.float(), "start.scale": scale.float()}


def model_config(cfg, start=None):
    prov = dict(cfg.get("provenance", {}))
    out = config_json(cfg["unet"], cfg["image"], cfg["path"], cfg["prediction"],
                      cfg["data"].get("range", [-1.0, 1.0]), prov)
    if start is not None:  # fitted with full covariance (fit_start)
        out["start"] = dict(start)
    elif "start" in cfg:  # fitted start distribution (dale: log x ~ N(mean, std^2))
        out["start"] = dict(cfg["start"])
    if "paper_recipe" in cfg:  # dale: the data set whose tuning --recipe paper uses
        out["paper_recipe"] = cfg["paper_recipe"]
    if "guide" in cfg:  # the weaker model that guides sampling by default (a file beside)
        out["guide"] = dict(cfg["guide"])
    return out


def lr_at(tr, step, warm):
    """Linear warm-up, then constant; with "lr_decay": {"start": f, "final": r}
    the rate falls linearly from step f * steps of the recipe to r times the
    rate at its last step (a recipe's steps, not --steps: resuming keeps it)."""
    lr = tr["lr"] * min(1.0, (step + 1) / warm)
    dec = tr.get("lr_decay")
    if dec:
        s0 = dec["start"] * tr["steps"]
        if step > s0:
            f = min(1.0, (step - s0) / max(tr["steps"] - s0, 1.0))
            lr *= 1.0 - (1.0 - dec["final"]) * f
    return lr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="recipe (models/configs/NAME.json)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="stop (with a checkpoint) after this many minutes of this run")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's total steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--checkpoint-dir", default="models/checkpoints")
    ap.add_argument("--out-dir", default="models")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: forward and backward passes under bfloat16 autocast "
                         "(weights, Adam state, EMA and loss stay float32); about 1.6x "
                         "faster on CPUs with AVX512_BF16 or AMX")
    ap.add_argument("--data-root", default=None,
                    help="look here for data files missing from the recipe's paths")
    args = ap.parse_args(argv)

    with open(args.config) as f:
        cfg = json.load(f)
    name, tr = cfg["name"], cfg["train"]
    total = args.steps or tr["steps"]
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path = os.path.join(args.checkpoint_dir, name + ".pt")
    out_path = os.path.join(args.out_dir, name + ".safetensors")

    x_all, y_all = load_data(cfg, args.data_root)
    start, start_tensors = None, None
    if cfg.get("start", {}).get("full"):
        start, start_tensors = fit_start(cfg, x_all)
    conditional = cfg["unet"].get("num_classes", 0) > 0
    K = cfg["unet"].get("num_classes", 0)
    N = len(x_all)

    torch.manual_seed(tr.get("seed", 0))
    net = UNet(cfg["unet"], cfg["image"]["channels"], cfg["image"]["height"],
               cfg["image"]["width"]).to(dev)
    ema = UNet(cfg["unet"], cfg["image"]["channels"], cfg["image"]["height"],
               cfg["image"]["width"]).to(dev)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=tr["lr"])
    g = torch.Generator().manual_seed(tr.get("seed", 0) + 1)
    state = {"step": 0, "elapsed": 0.0, "losses": [], "images": 0}
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=dev)
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["rng"])
        state = ck["state"]
        print(f"{name}: resuming at step {state['step']} "
              f"({state['elapsed'] / 60:.1f} min trained so far)", flush=True)
    # where the steps ran, accumulated over resumed runs (for the model card)
    amp = args.amp == "bf16"
    hw = hardware(dev) + (", bf16 autocast" if amp else "")
    seen = [h for h in state.get("hardware", "").split(" + ") if h]
    if hw not in seen:
        seen.append(hw)
    state["hardware"] = " + ".join(seen)
    nparams = sum(p.numel() for p in net.parameters())
    print(f"{name}: {nparams} parameters, {N} images, loss {tr['loss']}, batch {tr['batch']}, "
          f"{total} steps, {torch.get_num_threads()} threads", flush=True)

    def save():
        ck = {"config": model_config(cfg, start), "recipe": cfg, "model": net.state_dict(),
              "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(),
              "state": state}
        if start_tensors is not None:
            ck["start"] = start_tensors
        atomic_save(ck, ckpt_path)
        export(ckpt_path, out_path, tr.get("export_dtype", "F32"), "ema", log=lambda *_: None)

    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    B, warm = tr["batch"], tr.get("warmup", 500)
    loss_cfg = dict(tr, prediction=cfg["prediction"])
    ema_decay = tr.get("ema", 0.999)
    ckpt_every = tr.get("checkpoint_minutes", 10) * 60
    t_run, t_ckpt, t_log = time.time(), time.time(), time.time()
    run_loss, run_n, imgs_log = 0.0, 0, 0
    net.train()
    while state["step"] < total and not stop["now"]:
        step = state["step"]
        # data order: a permutation per epoch from (seed, epoch), so a resumed
        # run sees the same batches it would have seen
        epoch, off = divmod(step * B, N)
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(
            tr.get("seed", 0) * 100003 + epoch))
        idx = perm[off:off + B]
        if len(idx) < B:
            idx = torch.cat([idx, torch.randperm(N, generator=torch.Generator().manual_seed(
                tr.get("seed", 0) * 100003 + epoch + 1))[: B - len(idx)]])
        x = x_all[idx].to(dev)
        y = None
        if conditional:
            y = y_all[idx].clone()
            drop = torch.rand(B, generator=g) < tr.get("label_dropout", 0.1)
            y[drop] = K
            y = y.to(dev)
        lr = lr_at(tr, step, warm)
        for pg in opt.param_groups:
            pg["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net, x, y, tr["loss"], g, loss_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tr.get("clip", 1.0))
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        state["step"] += 1
        state["images"] += B
        run_loss += float(loss.detach())
        run_n += 1
        imgs_log += B
        now = time.time()
        if now - t_log >= 30 or state["step"] == total:
            state["elapsed"] += now - t_log
            rate = imgs_log / (now - t_log)
            mean = run_loss / run_n
            state["losses"].append([state["step"], mean])
            eta = (total - state["step"]) * B / max(rate, 1e-9)
            print(f"{name}: step {state['step']}/{total} loss {mean:.4f} lr {lr:.2e} "
                  f"{rate:.0f} img/s, trained {state['elapsed'] / 60:.1f} min, "
                  f"~{eta / 60:.0f} min left", flush=True)
            t_log, run_loss, run_n, imgs_log = now, 0.0, 0, 0
        if now - t_ckpt >= ckpt_every:
            save()
            t_ckpt = now
        if args.minutes and now - t_run >= args.minutes * 60:
            break
    state["elapsed"] += time.time() - t_log
    save()
    done = state["step"] >= total
    print(f"{name}: {'finished' if done else 'stopped'} at step {state['step']}; "
          f"checkpoint {ckpt_path}, model {out_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
