"""Train a feature-network classifier (model kind "classifier") and export it.

    python3 -m models.difflux_ref.train_classifier --config models/configs/NAME.json \
        [--threads N] [--device cpu|cuda]

The recipe (models/configs/NAME.json) names the data, the network (its
"classifier" section, models/difflux_ref/classifier.py) and the training
("train": epochs, batch, lr, warmup, shift, seed). Training is Adam with a
linear warm-up and cosine decay, on images in the data range with random
shifts of up to `shift` pixels (the uncovered border filled with the
range's low value, the background); the test set is either the last
`data.holdout` images of the training file (not trained on) or the files
`data.test_images` / `data.test_labels`. At the end it measures accuracy on
the training set (no augmentation) and the test set, writes
models/NAME.safetensors (F32, provenance with both accuracies), reads it
back and checks it reproduces the test accuracy. Deterministic for a given
seed, thread count and device. Short enough (minutes) not to need
checkpoints: an interrupted run is simply rerun.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import Classifier, config_json
from .modelfile import load_model, save_model
from .train import hardware, read_idx


# ---------------------------------------------------------------- data

def _images(path, lo, hi):
    x = read_idx(path).astype(np.float32) / 255.0
    if x.ndim == 3:
        x = x[:, None]
    return torch.from_numpy(lo + (hi - lo) * x)


def _labels(path):
    return torch.from_numpy(read_idx(path).astype(np.int64))


def load_data(cfg):
    """(x_train, y_train, x_test, y_test, test_set description); images in
    the data range [lo, hi], labels int64."""
    d = cfg["data"]
    lo, hi = d.get("range", [-1.0, 1.0])
    x, y = _images(d["images"], lo, hi), _labels(d["labels"])
    if len(x) != len(y):
        raise ValueError(f"{d['images']}: {len(x)} images but {len(y)} labels")
    if d.get("holdout"):
        n = int(d["holdout"])
        if not 0 < n < len(x):
            raise ValueError(f"data.holdout {n} must be in [1, {len(x) - 1}]")
        desc = (f"the last {n:,} of the {len(x):,} images of {os.path.basename(d['images'])} "
                f"(not trained on; trained on the first {len(x) - n:,})")
        return x[:-n], y[:-n], x[-n:], y[-n:], desc
    xt, yt = _images(d["test_images"], lo, hi), _labels(d["test_labels"])
    if len(xt) != len(yt):
        raise ValueError(f"{d['test_images']}: {len(xt)} images but {len(yt)} labels")
    desc = f"{os.path.basename(d['test_images'])}, {len(xt):,} images (not trained on)"
    return x, y, xt, yt, desc


def shift(x, s, lo, g):
    """Each image moved by its own random (dy, dx) in [-s, s]^2; the
    uncovered border is `lo`. Randomness from generator g."""
    if s <= 0:
        return x
    B, C, H, W = x.shape
    xp = F.pad(x, (s, s, s, s), value=float(lo))
    d = torch.randint(0, 2 * s + 1, (2, B), generator=g)
    rows = (d[0][:, None] + torch.arange(H))[:, :, None]          # [B, H, 1]
    cols = (d[1][:, None] + torch.arange(W))[:, None, :]          # [B, 1, W]
    b = torch.arange(B)[:, None, None]
    return xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(net, x, y, dev, batch=500):
    net.eval()
    correct = 0
    for i in range(0, len(x), batch):
        _, logits = net(x[i:i + batch].to(dev))
        correct += int((logits.argmax(1).cpu() == y[i:i + batch]).sum())
    return correct / max(len(x), 1)


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="recipe (models/configs/NAME.json)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs")
    ap.add_argument("--out-dir", default="models")
    args = ap.parse_args(argv)

    with open(args.config) as f:
        cfg = json.load(f)
    name, tr = cfg["name"], cfg["train"]
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    out_path = os.path.join(args.out_dir, name + ".safetensors")
    lo, hi = cfg["data"].get("range", [-1.0, 1.0])
    img = cfg["image"]

    x_tr, y_tr, x_te, y_te, test_desc = load_data(cfg)
    if tuple(x_tr.shape[1:]) != (img["channels"], img["height"], img["width"]):
        raise ValueError(f"images are {list(x_tr.shape[1:])}, the recipe says {img}")
    K = cfg["classifier"]["num_classes"]
    if int(y_tr.max()) >= K or int(y_te.max()) >= K or int(min(y_tr.min(), y_te.min())) < 0:
        raise ValueError(f"labels outside [0, {K - 1}]")
    N, B = len(x_tr), tr["batch"]
    epochs = args.epochs if args.epochs is not None else tr["epochs"]
    steps_per_epoch = math.ceil(N / B)
    total = max(1, int(round(epochs * steps_per_epoch)))
    warm = tr.get("warmup", 100)
    seed = tr.get("seed", 0)

    torch.manual_seed(seed)
    net = Classifier(cfg["classifier"], img["channels"], img["height"], img["width"]).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=tr["lr"])
    g = torch.Generator().manual_seed(seed + 1)
    nparams = sum(p.numel() for p in net.parameters())
    print(f"{name}: {nparams} parameters, {N} training images, {len(x_te)} test images, "
          f"batch {B}, {epochs:g} epochs = {total} steps, {torch.get_num_threads()} threads",
          flush=True)

    t0 = time.time()
    t_log = t0
    run_loss, run_correct, run_n, imgs_log = 0.0, 0, 0, 0
    step = 0
    net.train()
    while step < total:
        epoch, off = divmod(step, steps_per_epoch)
        if off == 0:
            perm = torch.randperm(N, generator=g)
        idx = perm[off * B:(off + 1) * B]
        x = shift(x_tr[idx], tr.get("shift", 0), lo, g).to(dev)
        y = y_tr[idx].to(dev)
        # linear warm-up, then cosine decay to 0 at the last step
        if step < warm:
            lr = tr["lr"] * (step + 1) / warm
        else:
            lr = tr["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        _, logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run_loss += float(loss) * len(idx)
        run_correct += int((logits.detach().argmax(1) == y).sum())
        run_n += len(idx)
        imgs_log += len(idx)
        now = time.time()
        if now - t_log >= 30 or step == total:
            rate = imgs_log / max(now - t_log, 1e-9)
            eta = (total - step) * B / max(rate, 1e-9)
            print(f"{name}: epoch {epoch + 1} step {step}/{total} loss {run_loss / run_n:.4f} "
                  f"batch accuracy {100 * run_correct / run_n:.2f}% lr {lr:.2e} {rate:.0f} img/s, "
                  f"trained {(now - t0) / 60:.1f} min, ~{eta / 60:.0f} min left", flush=True)
            t_log, run_loss, run_correct, run_n, imgs_log = now, 0.0, 0, 0, 0
    minutes = (time.time() - t0) / 60

    print(f"{name}: evaluating ...", flush=True)
    train_acc = accuracy(net, x_tr, y_tr, dev)
    test_acc = accuracy(net, x_te, y_te, dev)
    print(f"{name}: train accuracy {100 * train_acc:.2f}% ({N} images), "
          f"test accuracy {100 * test_acc:.2f}% ({len(x_te)} images)", flush=True)

    prov = dict(cfg.get("provenance", {}))
    prov["training"] = {
        "epochs": epochs,
        "steps": step,
        "batch": B,
        "minutes": round(minutes, 1),
        "hardware": hardware(dev),
        "train_accuracy": round(train_acc, 4),
        "test_accuracy": round(test_acc, 4),
        "test_set": test_desc,
    }
    config = config_json(cfg["classifier"], img, cfg.get("labels"), (lo, hi), prov)
    tensors = {k: v.detach().cpu().float() for k, v in net.state_dict().items()}
    save_model(out_path, tensors, config, "F32")

    # Read back: same names, order, values and config; same test accuracy.
    back, cfg_back = load_model(out_path)
    if list(back) != list(tensors) or cfg_back != json.loads(json.dumps(config)):
        raise RuntimeError(f"{out_path}: read-back differs from what was written")
    if any(not torch.equal(back[k], v) for k, v in tensors.items()):
        raise RuntimeError(f"{out_path}: stored weights differ")
    net2 = Classifier.from_config(cfg_back).to(dev)
    net2.load_state_dict(back, strict=True)
    acc2 = accuracy(net2, x_te, y_te, dev)
    if acc2 != test_acc:
        raise RuntimeError(f"{out_path}: reloaded model has test accuracy {acc2}, not {test_acc}")
    size = os.path.getsize(out_path)
    print(f"{name}: wrote {out_path} ({len(tensors)} tensors, {nparams} parameters, "
          f"{size} bytes); {minutes:.1f} min of training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
