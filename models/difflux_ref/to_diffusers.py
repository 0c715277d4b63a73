"""Convert a native difflux U-Net (kind "unet", VP path, eps prediction) into
a diffusers pipeline folder (UNet2DModel + DDPMScheduler).

    python3 -m models.difflux_ref.to_diffusers --model models/mnist-vp.safetensors --out /tmp/mnist-vp-diffusers

Needs the `diffusers` package (written with diffusers 0.42.1, torch 2.x, CPU).
The folder is written by `DDPMPipeline(unet, scheduler).save_pretrained(OUT)`
(safetensors, float32), the layout difflux's `--model DIR` reads.

Network (models/UNET.md -> diffusers UNet2DModel). The config is
sample_size = H, in/out_channels = C, block_out_channels = base_channels *
channel_mult, layers_per_block = num_res_blocks, down_block_types
AttnDownBlock2D at the attention levels and DownBlock2D elsewhere,
up_block_types the same read from the last level to the first,
norm_num_groups = groups, norm_eps, time_embedding_dim = time_embed_dim,
attention_head_dim = channels / heads (one value for every attended level
and the middle block, whose attention runs at the last level's width;
anything else is refused), downsample_padding 1, flip_sin_to_cos False,
freq_shift 0, act_fn silu. Tensors (L levels):

    temb.lin1 / lin2             time_embedding.linear_1 / linear_2 (lin1 rotated, below)
    conv_in                      conv_in
    down.l.res.r.{norm1, conv1, temb, norm2, conv2, skip}
                                 down_blocks.l.resnets.r.{norm1, conv1, time_emb_proj,
                                                           norm2, conv2, conv_shortcut}
    down.l.attn.r.norm           down_blocks.l.attentions.r.group_norm
    down.l.attn.r.qkv            ....to_q / to_k / to_v: the [3C, C, 1, 1] 1x1 conv split
                                 into thirds (q, k, v in that order), each a [C, C] linear
    down.l.attn.r.proj           ....to_out.0 ([C, C, 1, 1] -> [C, C])
    down.l.downsample            down_blocks.l.downsamplers.0.conv
    mid.res1 / attn / res2       mid_block.resnets.0 / attentions.0 / resnets.1
    up.l.res.r / up.l.attn.r     up_blocks.(L-1-l).resnets.r / attentions.r
    up.l.upsample                up_blocks.(L-1-l).upsamplers.0.conv
    out.norm / out.conv          conv_norm_out / conv_out

Both networks run the same blocks in the same order (conv_in's output is the
first skip; every res(+attn) output and every downsample output is a skip; the
up path concatenates h first, then the skip; nearest x2 then a 3x3 conv up;
a stride-2, padding-1 3x3 conv down; the attention scale is 1/sqrt(C/heads)),
so the mapping is a renaming except for the two reshapes above.

Time. The native net embeds u = time_scale t = 1000 t: e = [sin(u f_i)...,
cos(u f_i)...], f_i = exp(-ln(10000) i / half), half = base_channels / 2.
diffusers embeds its timestep tau the same way (flip_sin_to_cos False,
freq_shift 0), and difflux feeds a diffusers model tau = N t - 1 (N = 1000,
the discrete path of host/MATH.md section 7), so u = tau + 1. The shift is
folded into time_embedding.linear_1 exactly: per frequency f,

    [sin f(tau+1), cos f(tau+1)] = [[cos f, sin f], [-sin f, cos f]] [sin f tau, cos f tau],

i.e. e_native = R e_tau with R block-structured over (sin half, cos half),
and W_new = W_native R (the bias is unchanged). This needs time_scale = N.

Schedule. The network was trained on the VP SDE path with beta(t) = beta_min
+ t (beta_max - beta_min), abar(t) = exp(-(beta_min t + (beta_max - beta_min)
t^2 / 2)), for t in [0.001, 1] (train.t_min). DDPM's linear betas
beta_tau = beta_start + tau (beta_end - beta_start) / (N - 1),
beta_start = beta_min / N, beta_end = beta_max / N, are its discretisation
(beta_tau = beta(t) / N, Song et al. 2021, the score_sde VPSDE): with N = 1000
these are DDPM's 1e-4 .. 0.02, and abar_tau = prod_{i <= tau} (1 - beta_i)
agrees with abar((tau + 1) / N) to about a step of the grid: for this
model max |abar_discrete(tau) - abar_continuous((tau+1)/N)| = 8.1e-4 (at
tau 140), i.e. abar_tau is the continuous abar within -0.42 .. +1 steps of
t = (tau+1)/N wherever abar > 0.027 (tau < 595); the offset grows to 3.4
steps at tau 999 (abar 4.0e-5 against 4.3e-5, log(1 - beta) vs -beta: the
second-order term of the product), where the input is noise to 0.6% of its
amplitude. The figures are printed. Scheduler: DDPMScheduler(num_train_timesteps
= 1000, beta_schedule "linear", beta_start 1e-4, beta_end 0.02,
prediction_type "epsilon", clip_sample False).

Checks (printed; any failure stops before writing): every native tensor is
used exactly once and every UNet2DModel parameter is filled, with equal
shapes (load_state_dict strict); in float64, diffusers' UNet2DModel(x, tau)
(its sinusoidal projection also computed in float64: diffusers casts the
timesteps to float32 even in a float64 model) equals the reference network
of models/difflux_ref/unet.py at t = (tau + 1) / 1000, on noised MNIST
digits and on standard normal inputs, to --tol relative (max |diff| / max
|reference|); the saved folder is reloaded with diffusers and compared in
float32 as diffusers runs it.
"""

import argparse
import copy
import json
import math
import os
import sys

import numpy as np
import torch

from .modelfile import load_model
from .train import read_idx
from .unet import UNet, check_config

N_TRAIN = 1000
TAUS = [0.0, 1.5, 19.0, 99.0, 250.25, 411.5, 600.0, 738.75, 900.0, 999.0]
DATA = "models/data/mnist10k-images-idx3-ubyte.gz"


class ConversionError(ValueError):
    pass


def _diffusers():
    import diffusers
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    return diffusers


# ----------------------------------------------------------------------------
# config


def diffusers_config(cfg: dict) -> dict:
    """UNet2DModel kwargs for a native config (kind "unet"); refuses what
    UNet2DModel + DDPMScheduler cannot express."""
    u = check_config(cfg)
    img = cfg["image"]
    if img["height"] != img["width"]:
        raise ConversionError(f"image {img['height']}x{img['width']} is not square "
                              "(sample_size is one number here)")
    if u["num_classes"]:
        raise ConversionError("class-conditional models are not converted")
    if u["time_scale"] != N_TRAIN:
        raise ConversionError(f"time_scale {u['time_scale']} != {N_TRAIN}: diffusers sees "
                              f"tau = {N_TRAIN} t - 1, and a frequency scale cannot be folded")
    ch0, mult, L = u["base_channels"], u["channel_mult"], len(u["channel_mult"])
    chs = [ch0 * m for m in mult]
    att = sorted(set(u["attention_levels"]) | {L - 1})  # attended levels + the middle block
    dims = {chs[l] // u["heads"] for l in att}
    if len(dims) != 1:
        raise ConversionError(
            "attention_head_dim would differ between attention blocks: "
            + ", ".join(f"level {l} ({chs[l]} ch) {chs[l] // u['heads']}" for l in att)
            + " (the middle block attends at the last level); diffusers has one value")
    al = set(u["attention_levels"])
    down = ["AttnDownBlock2D" if l in al else "DownBlock2D" for l in range(L)]
    up = ["AttnUpBlock2D" if l in al else "UpBlock2D" for l in reversed(range(L))]
    return dict(
        sample_size=img["height"], in_channels=img["channels"], out_channels=img["channels"],
        center_input_sample=False, time_embedding_type="positional",
        time_embedding_dim=u["time_embed_dim"], freq_shift=0, flip_sin_to_cos=False,
        down_block_types=tuple(down), mid_block_type="UNetMidBlock2D",
        up_block_types=tuple(up), block_out_channels=tuple(chs),
        layers_per_block=u["num_res_blocks"], mid_block_scale_factor=1,
        downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0,
        act_fn="silu", attention_head_dim=dims.pop(), norm_num_groups=u["groups"],
        attn_norm_num_groups=None, norm_eps=u["norm_eps"], resnet_time_scale_shift="default",
        add_attention=True, class_embed_type=None, num_class_embeds=None)


def vp_betas(cfg: dict):
    """(beta_min, beta_max) of a native VP path; refuses other paths."""
    p = cfg["path"]
    if p.get("family") != "vp":
        raise ConversionError(f"path family {p.get('family')!r}: only \"vp\" maps onto DDPM's "
                              "linear betas")
    if cfg["prediction"] != "eps":
        raise ConversionError(f"prediction {cfg['prediction']!r}: only eps is converted "
                              "(prediction_type epsilon)")
    lo, hi = cfg.get("data", {}).get("range", [-1.0, 1.0])
    if (lo, hi) != (-1.0, 1.0):
        raise ConversionError(f"data range [{lo}, {hi}]: diffusers pipelines are [-1, 1]")
    return float(p.get("beta_min", 0.1)), float(p.get("beta_max", 20.0))


# ----------------------------------------------------------------------------
# tensors


def _res(src, dst):
    return [(f"{src}.{a}", f"{dst}.{b}") for a, b in (
        ("norm1", "norm1"), ("conv1", "conv1"), ("temb", "time_emb_proj"),
        ("norm2", "norm2"), ("conv2", "conv2"), ("skip", "conv_shortcut"))]


def module_map(u: dict):
    """[(native module, diffusers module, kind)], kind "plain", "qkv" or "proj"."""
    L, nrb, al = len(u["channel_mult"]), u["num_res_blocks"], set(u["attention_levels"])
    m = [("temb.lin1", "time_embedding.linear_1", "lin1"),
         ("temb.lin2", "time_embedding.linear_2", "plain"),
         ("conv_in", "conv_in", "plain")]

    def attn(src, dst):
        return [(f"{src}.norm", f"{dst}.group_norm", "plain"), (f"{src}.qkv", dst, "qkv"),
                (f"{src}.proj", f"{dst}.to_out.0", "proj")]

    for l in range(L):
        for r in range(nrb):
            m += [(a, b, "plain") for a, b in _res(f"down.{l}.res.{r}", f"down_blocks.{l}.resnets.{r}")]
            if l in al:
                m += attn(f"down.{l}.attn.{r}", f"down_blocks.{l}.attentions.{r}")
        if l < L - 1:
            m.append((f"down.{l}.downsample", f"down_blocks.{l}.downsamplers.0.conv", "plain"))
    m += [(a, b, "plain") for a, b in _res("mid.res1", "mid_block.resnets.0")]
    m += attn("mid.attn", "mid_block.attentions.0")
    m += [(a, b, "plain") for a, b in _res("mid.res2", "mid_block.resnets.1")]
    for l in reversed(range(L)):
        j = L - 1 - l
        for r in range(nrb + 1):
            m += [(a, b, "plain") for a, b in _res(f"up.{l}.res.{r}", f"up_blocks.{j}.resnets.{r}")]
            if l in al:
                m += attn(f"up.{l}.attn.{r}", f"up_blocks.{j}.attentions.{r}")
        if l > 0:
            m.append((f"up.{l}.upsample", f"up_blocks.{j}.upsamplers.0.conv", "plain"))
    m += [("out.norm", "conv_norm_out", "plain"), ("out.conv", "conv_out", "plain")]
    return m


def time_shift_rotation(ch0: int, shift: float = 1.0) -> torch.Tensor:
    """R [ch0, ch0] float64 with e(tau + shift) = R e(tau), e = [sin(tau f_i)..., cos(tau f_i)...]."""
    half = ch0 // 2
    i = torch.arange(half, dtype=torch.float64)
    f = torch.exp(-math.log(10000.0) * i / half) * shift
    c, s = torch.diag(torch.cos(f)), torch.diag(torch.sin(f))
    return torch.cat([torch.cat([c, s], 1), torch.cat([-s, c], 1)], 0)


def convert_tensors(tensors: dict, u: dict, log=print) -> dict:
    """Native state (name -> tensor) -> UNet2DModel state, float64."""
    out, used = {}, set()
    ch0 = u["base_channels"]
    R = time_shift_rotation(ch0)
    for src, dst, kind in module_map(u):
        for p in ("weight", "bias"):
            name = f"{src}.{p}"
            if name not in tensors:
                if src.endswith(".skip"):
                    continue  # in == out: no 1x1 shortcut on either side
                raise ConversionError(f"tensor {name} is missing")
            used.add(name)
            t = tensors[name].to(torch.float64)
            if kind == "qkv":
                C = t.shape[1] if p == "weight" else t.shape[0] // 3
                if t.shape[0] != 3 * C or (p == "weight" and tuple(t.shape[1:]) != (C, 1, 1)):
                    raise ConversionError(f"{name}: shape {tuple(t.shape)}, not [3C, C, 1, 1] / [3C]")
                t = t.reshape(3 * C, C) if p == "weight" else t
                for k, part in enumerate(("to_q", "to_k", "to_v")):
                    out[f"{dst}.{part}.{p}"] = t[k * C:(k + 1) * C].clone()
            elif kind == "proj" and p == "weight":
                out[f"{dst}.{p}"] = t.reshape(t.shape[0], t.shape[1])
            elif kind == "lin1" and p == "weight":
                out[f"{dst}.{p}"] = t @ R  # u = tau + 1, folded in
            else:
                out[f"{dst}.{p}"] = t.clone()
    extra = sorted(set(tensors) - used)
    if extra:
        raise ConversionError(f"tensors not mapped: {', '.join(extra)}")
    log(f"  {len(used)} native tensors -> {len(out)} diffusers tensors")
    return out


# ----------------------------------------------------------------------------
# schedule


def ddpm_scheduler(beta_min: float, beta_max: float):
    d = _diffusers()
    return d.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_start=beta_min / N_TRAIN,
                           beta_end=beta_max / N_TRAIN, beta_schedule="linear",
                           prediction_type="epsilon", clip_sample=False)


def abar_continuous(t, beta_min, beta_max):
    return np.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t * t))


def schedule_mismatch(sched, beta_min, beta_max):
    """Figures comparing DDPM's abar_tau with the VP path's abar((tau + 1)/N)."""
    tau = np.arange(N_TRAIN)
    t = (tau + 1) / N_TRAIN
    ac = abar_continuous(t, beta_min, beta_max)
    betas = sched.betas.double().numpy()                 # float32 betas, as diffusers
    ad = np.exp(np.cumsum(np.log1p(-betas)))             # difflux: log abar in double
    ad32 = sched.alphas_cumprod.double().numpy()         # diffusers: cumprod in float32
    diff = ad - ac
    k = int(np.argmax(np.abs(diff)))
    # time offset: the continuous t at which abar_c equals abar_d(tau), minus (tau+1)/N
    la = -np.log(ad)
    a2, b = 0.5 * (beta_max - beta_min), beta_min
    t_eq = (-b + np.sqrt(b * b + 4 * a2 * la)) / (2 * a2)
    dt = (t_eq - t) * N_TRAIN
    big = np.nonzero(np.abs(dt) > 1.0)[0]
    lsnr_d, lsnr_c = np.log(ad / (1 - ad)), np.log(ac / (1 - ac))
    return dict(max_abs_abar=float(np.abs(diff).max()), at_tau=k, abar_d=float(ad[k]),
                abar_c=float(ac[k]), max_rel_abar=float(np.abs(diff / ac).max()),
                max_abs_logsnr=float(np.abs(lsnr_d - lsnr_c).max()),
                offset_steps_min=float(dt.min()), offset_steps_max=float(dt.max()),
                offset_steps_min_tau=int(dt.argmin()), offset_steps_max_tau=int(dt.argmax()),
                first_tau_over_1_step=int(big[0]) if len(big) else None,
                abar_there=float(ad[big[0]]) if len(big) else None,
                abar_end_d=float(ad[-1]), abar_end_c=float(ac[-1]),
                cumprod32_vs64=float(np.abs(ad32 - ad).max()))


# ----------------------------------------------------------------------------
# checks


def exact_time_proj(unet):
    """A copy of `unet` whose sinusoidal projection is computed in float64."""
    u = copy.deepcopy(unet)
    tp = u.time_proj
    C, flip, shift, scale = tp.num_channels, tp.flip_sin_to_cos, tp.downscale_freq_shift, tp.scale
    assert C % 2 == 0

    def forward(timesteps):
        half = C // 2
        ex = -math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - shift)
        emb = scale * timesteps[:, None].double() * torch.exp(ex)[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return emb

    tp.forward = forward
    return u


def test_inputs(cfg, beta_min, beta_max, data):
    """(x, tau) batches: noised MNIST digits at each tau (if `data` exists) and
    standard normal x; fixed seed."""
    g = torch.Generator().manual_seed(1234)
    img = cfg["image"]
    B = len(TAUS)
    tau = torch.tensor(TAUS, dtype=torch.float64)
    z = torch.randn((B, img["channels"], img["height"], img["width"]), generator=g,
                    dtype=torch.float64)
    sets = [("normal", z, tau)]
    if data and os.path.exists(data) and img["channels"] == 1:
        x0 = torch.from_numpy(read_idx(data)[:B].astype(np.float64) / 127.5 - 1.0)[:, None]
        if tuple(x0.shape[2:]) == (img["height"], img["width"]):
            ab = torch.from_numpy(abar_continuous((tau.numpy() + 1) / N_TRAIN, beta_min, beta_max))
            ab = ab[:, None, None, None]
            e = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            sets.insert(0, ("digits", ab.sqrt() * x0 + (1 - ab).sqrt() * e, tau))
    return sets


def rel(a, b):
    """max |a - b| / max |b| per sample, the worst sample."""
    d = (a - b).flatten(1).abs().max(1).values / b.flatten(1).abs().max(1).values
    return float(d.max())


def verify64(tensors, cfg, unet64, sets, tol, log=print):
    ref = UNet.from_config(cfg).double().eval()
    ref.load_state_dict({k: v.double() for k, v in tensors.items()}, strict=True)
    ex = exact_time_proj(unet64).eval()
    worst = 0.0
    with torch.no_grad():
        for name, x, tau in sets:
            a = ex(x, tau).sample
            b = ref(x, (tau + 1) / N_TRAIN)
            r = rel(a, b)
            stock = rel(unet64(x, tau).sample, b)
            unshifted = rel(a, ref(x, tau / N_TRAIN))  # control: the fold is what matters
            worst = max(worst, r)
            log(f"  float64 {name:6s} x, tau {TAUS[0]:g}..{TAUS[-1]:g}: relative difference "
                f"{r:.3g} (diffusers' own float32 time projection: {stock:.3g}; "
                f"against the native net at t = tau/1000 instead: {unshifted:.3g})")
    if not worst <= tol:
        raise ConversionError(f"float64 check failed: relative difference {worst:.3g} > {tol:g}")
    return worst, ref


def verify_saved(out, tensors, cfg, sets, log=print):
    """Reload the folder with diffusers, float32 as diffusers runs it."""
    d = _diffusers()
    pipe = d.DDPMPipeline.from_pretrained(out)
    unet = pipe.unet.eval()
    ref = UNet.from_config(cfg).eval()
    ref.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    ref64 = UNet.from_config(cfg).double().eval()
    ref64.load_state_dict({k: v.double() for k, v in tensors.items()}, strict=True)
    u64 = exact_time_proj(unet).double()
    worst32 = worst64 = 0.0
    with torch.no_grad():
        for name, x, tau in sets:
            b64 = ref64(x, (tau + 1) / N_TRAIN)
            r32 = rel(unet(x.float(), tau.float()).sample.double(), b64)
            r64 = rel(u64(x, tau).sample, b64)
            worst32, worst64 = max(worst32, r32), max(worst64, r64)
            log(f"  reloaded {name:6s}: float32 diffusers vs float64 reference {r32:.3g}; "
                f"the float32 file's weights run in float64 {r64:.3g}")
    sc = pipe.scheduler
    log(f"  reloaded scheduler: {type(sc).__name__} {sc.config.beta_schedule} "
        f"{sc.config.beta_start:g}..{sc.config.beta_end:g}, {sc.config.prediction_type}, "
        f"clip_sample {sc.config.clip_sample}")
    return worst32, worst64


# ----------------------------------------------------------------------------


def convert(model, out, tol=1e-10, data=DATA, log=print):
    d = _diffusers()
    tensors, cfg = load_model(model)
    log(f"{model}: kind {cfg.get('kind')}, path {json.dumps(cfg.get('path'))}, "
        f"prediction {cfg.get('prediction')}")
    log(f"  native tensors ({len(tensors)}):")
    for k, v in tensors.items():
        log(f"    {k} {list(v.shape)}")
    beta_min, beta_max = vp_betas(cfg)
    dcfg = diffusers_config(cfg)
    log("  UNet2DModel config: " + json.dumps(dcfg))
    state = convert_tensors(tensors, cfg["unet"], log)

    unet = d.UNet2DModel(**dcfg).double().eval()
    want = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [f"{k} {have[k]} != {want[k]}" for k in sorted(set(want) & set(have))
              if want[k] != have[k]]
    if missing or extra or shapes:
        raise ConversionError("state does not match UNet2DModel: "
                              + "; ".join([f"missing {', '.join(missing)}"] * bool(missing)
                                          + [f"unexpected {', '.join(extra)}"] * bool(extra)
                                          + shapes))
    unet.load_state_dict(state, strict=True)
    log(f"  UNet2DModel: {len(want)} tensors, {sum(p.numel() for p in unet.parameters())} "
        f"parameters (native {sum(v.numel() for v in tensors.values())})")

    sets = test_inputs(cfg, beta_min, beta_max, data)
    worst, _ = verify64(tensors, cfg, unet, sets, tol, log)
    log(f"  float64 equality: worst relative difference {worst:.3g} (tolerance {tol:g})")

    sched = ddpm_scheduler(beta_min, beta_max)
    sm = schedule_mismatch(sched, beta_min, beta_max)
    log(f"  schedule: DDPM linear {beta_min / N_TRAIN:g}..{beta_max / N_TRAIN:g} over "
        f"{N_TRAIN} vs VP beta {beta_min:g}..{beta_max:g} at t = (tau+1)/{N_TRAIN}:")
    log(f"    max |abar_discrete(tau) - abar_continuous((tau+1)/N)| = {sm['max_abs_abar']:.3g} "
        f"at tau {sm['at_tau']} ({sm['abar_d']:.6f} vs {sm['abar_c']:.6f}); "
        f"max relative {sm['max_rel_abar']:.3g}; max |delta log SNR| {sm['max_abs_logsnr']:.3g}")
    log(f"    as a time offset: the discrete abar_tau is the continuous one at "
        f"(tau+1)/N + [{sm['offset_steps_min']:.3g} (tau {sm['offset_steps_min_tau']}), "
        f"{sm['offset_steps_max']:.3g} (tau {sm['offset_steps_max_tau']})] steps"
        + (f"; more than 1 step from tau {sm['first_tau_over_1_step']} on "
           f"(abar {sm['abar_there']:.3g})" if sm['first_tau_over_1_step'] is not None else ""))
    log(f"    abar at tau {N_TRAIN - 1}: {sm['abar_end_d']:.4g} vs {sm['abar_end_c']:.4g}; "
        f"diffusers' float32 cumprod vs double {sm['cumprod32_vs64']:.2g}")

    pipe = d.DDPMPipeline(unet=unet.float(), scheduler=sched)
    pipe.save_pretrained(out)
    log(f"  wrote {out}: {', '.join(sorted(os.listdir(out)))}")
    w32, w64 = verify_saved(out, tensors, cfg, sets, log)
    return dict(float64_rel=worst, reloaded_float32_rel=w32, reloaded_weights64_rel=w64,
                schedule=sm, config=dcfg)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="native model file (kind unet, vp, eps)")
    ap.add_argument("--out", required=True, help="pipeline folder to write")
    ap.add_argument("--tol", type=float, default=1e-10,
                    help="float64 check: largest relative difference allowed (1e-10)")
    ap.add_argument("--data", default=DATA, help="IDX images for the noised-digit check")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    try:
        convert(a.model, a.out, a.tol, a.data)
    except ConversionError as e:
        print(f"to_diffusers: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
