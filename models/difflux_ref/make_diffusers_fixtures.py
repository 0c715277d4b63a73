"""Write the diffusers interoperability fixtures the C engine is checked against.

    cd /work/main && python3 -m models.difflux_ref.make_diffusers_fixtures --out tests/fixtures/diffusers

Needs the `diffusers` package (written with diffusers 0.42.1 and torch 2.x,
CPU); the C build and its tests only read what this writes.

A. Pipeline folders with random weights (UNet2DModel + DDPMScheduler), written
   by `DDPMPipeline(unet, scheduler).save_pretrained(DIR)` (safetensors,
   float32): attn/, noattn_rgb/, legacy/ (attn's config, other weights, its
   attention tensors renamed to the legacy names query/key/value/proj_attn
   after saving), cond/ (class-conditional) and unet_only/ (a bare
   `UNet2DModel.save_pretrained` folder: config.json and weights, no
   model_index.json, no scheduler).
B. NAME.io.safetensors for each case: F32 tensors x [B,C,H,W] (standard
   normal), t [B] = [0, 411.5, 999] (one fractional timestep), labels [B]
   (class indices as floats; `cond` only), out = unet(x, t, labels).sample with
   `unet.double()` exactly as diffusers runs it (its sinusoidal time projection
   is computed in float32 even then), and out_exact64, the same with the
   sinusoidal projection computed in float64 too; both rounded to float32.
C. runs/: for the pipelines attn and noattn_rgb an init array runs/NAME.init.npy
   (float32 [4,C,H,W], standard normal) and, for each scheduler variant V,
   runs/V.npy (float32 [4,C,H,W]: the standard 10-step diffusers loop run in
   float64 from that init) and runs/V.scheduler.json (the scheduler's config
   as diffusers writes it); runs/manifest.json lists them. Plus
   runs/ddpm_moments.safetensors and runs/ddpm.scheduler.json: per-pixel mean
   and variance of N stochastic 10-step DDPMScheduler runs on `attn`.
D. A self-check that reloads everything from disk with diffusers and
   recomputes it (`--check-only` runs just that).

Random weights (every parameter, named_parameters order, one torch.Generator
per case): weights N(0, 1/fan_in) (attention to_q/to_k N(0, 4/fan_in) so the
softmax is far from uniform), biases N(0, 0.2^2), GroupNorm weight
1 + N(0, 0.25^2) and bias N(0, 0.2^2), class embedding N(0, 0.5^2).
Output is deterministic: fixed seeds, explicit torch.Generator draws in a
fixed order, one CPU thread.
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

from .modelfile import load_tensors, save_tensors

B = 3          # batch of the io fixtures
RUN_B = 4      # batch of the scheduler runs
STEPS = 10     # inference steps of every run
T_IO = [0.0, 411.5, 999.0]
LABELS_IO = [3.0, 0.0, 2.0]

DDPM_N = 2048        # samples for the DDPM moments
DDPM_CHUNK = 256
DDPM_SEED = 3000

GAIN, QK_GAIN, BIAS_STD, GN_STD, EMB_STD = 1.0, 2.0, 0.2, 0.25, 0.5

ATTN = dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
            layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
            attention_head_dim=4, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0)

NOATTN_RGB = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16),
                  layers_per_block=2, down_block_types=("DownBlock2D",) * 3,
                  up_block_types=("UpBlock2D",) * 3, downsample_padding=0,
                  flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
                  center_input_sample=True, norm_eps=1e-6, mid_block_scale_factor=1.5,
                  norm_num_groups=4)

COND = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
            layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
            attention_head_dim=8, num_class_embeds=4)

UNET_ONLY = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                 add_attention=False)

# name: (seed, UNet2DModel kwargs, DDPMScheduler kwargs or None (no pipeline), description)
CASES = {
    "attn": (11, ATTN, {},
             "1x16x16, 2 levels, attention at level 1 and in the middle (4 heads of 4)"),
    "noattn_rgb": (12, NOATTN_RGB,
                   dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
                   "3x8x8, 3 levels, 2 layers, no attention outside the middle block "
                   "(1 head of 16), downsample_padding 0, centred input, mid scale 1.5"),
    "legacy": (13, ATTN, {},
               "attn's config, other weights, attention tensors under the legacy names"),
    "cond": (14, COND, {},
             "1x8x8 class-conditional (4 classes), attention 2 heads of 8"),
    "unet_only": (15, UNET_ONLY, None,
                  "a bare UNet2DModel folder: 2x8x8, no attention, no scheduler"),
}

LEGACY_NAMES = (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn"))

# trained betas: smooth, not one of the named schedules (1e-4 .. 0.02 along
# a power 1.5 curve), 6 significant digits so the json stays short
TRAINED_BETAS = [float(f"{1e-4 + (0.02 - 1e-4) * (i / 999) ** 1.5:.6g}") for i in range(1000)]

DDIM, DPM = "DDIMScheduler", "DPMSolverMultistepScheduler"
UNIPC, DEIS = "UniPCMultistepScheduler", "DEISMultistepScheduler"
# the pipelines' DDPMScheduler config says timestep_spacing "leading" (DDPM's
# default), which from_config would carry over: linspace, DPM-Solver's own
# default, is asked for explicitly
DPMPP = dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="linspace")
# name: (pipeline, scheduler class, overrides of the pipeline's scheduler config)
VARIANTS = {
    "ddim_leading": ("attn", DDIM, dict(timestep_spacing="leading", clip_sample=False)),
    "ddim_leading_clip": ("attn", DDIM, dict(timestep_spacing="leading", clip_sample=True,
                                             clip_sample_range=1.0)),
    "ddim_trailing": ("attn", DDIM, dict(timestep_spacing="trailing", clip_sample=False)),
    "ddim_trailing_clip": ("attn", DDIM, dict(timestep_spacing="trailing", clip_sample=True,
                                              clip_sample_range=1.0)),
    "ddim_linspace": ("attn", DDIM, dict(timestep_spacing="linspace", clip_sample=False)),
    "ddim_offset": ("attn", DDIM, dict(timestep_spacing="leading", steps_offset=1,
                                       set_alpha_to_one=False, clip_sample=False)),
    "ddim_threshold": ("attn", DDIM, dict(thresholding=True, dynamic_thresholding_ratio=0.9,
                                          sample_max_value=1.5, clip_sample=False)),
    "ddim_scaled_linear": ("attn", DDIM, dict(beta_schedule="scaled_linear", beta_start=0.00085,
                                              beta_end=0.012, clip_sample=False)),
    "ddim_sample_pred": ("attn", DDIM, dict(prediction_type="sample", clip_sample=False)),
    "ddim_trained_betas": ("attn", DDIM, dict(trained_betas=TRAINED_BETAS, clip_sample=False)),
    "dpmpp_2m": ("attn", DPM, dict(DPMPP)),
    "dpmpp_2m_leading": ("attn", DPM, dict(DPMPP, timestep_spacing="leading")),
    "dpmpp_2m_trailing": ("attn", DPM, dict(DPMPP, timestep_spacing="trailing")),
    "dpmpp_2m_sigma_min": ("attn", DPM, dict(DPMPP, final_sigmas_type="sigma_min")),
    "dpmpp_2m_heun": ("attn", DPM, dict(DPMPP, solver_type="heun")),
    "ddim_vpred": ("noattn_rgb", DDIM, dict(timestep_spacing="leading", clip_sample=False)),
    "ddim_vpred_trailing": ("noattn_rgb", DDIM, dict(timestep_spacing="trailing",
                                                     clip_sample=False)),
    "ddim_vpred_clip": ("noattn_rgb", DDIM, dict(timestep_spacing="leading", clip_sample=True,
                                                 clip_sample_range=1.0)),
    "ddim_vpred_threshold": ("noattn_rgb", DDIM, dict(thresholding=True,
                                                      dynamic_thresholding_ratio=0.9,
                                                      sample_max_value=1.5, clip_sample=False)),
    "dpmpp_2m_vpred": ("noattn_rgb", DPM, dict(DPMPP)),
    "dpmpp_2m_vpred_trailing": ("noattn_rgb", DPM, dict(DPMPP, timestep_spacing="trailing")),
    "dpmpp_2m_vpred_threshold": ("noattn_rgb", DPM, dict(DPMPP, thresholding=True,
                                                         dynamic_thresholding_ratio=0.9,
                                                         sample_max_value=1.5)),
    # UniPC (bh2 and bh1, orders 2 and 3) and DEIS (logrho, orders 2 and 3)
    "unipc_bh2": ("attn", UNIPC, dict(timestep_spacing="linspace")),
    # bh1 ends in NaN with final_sigmas_type "zero" in diffusers 0.42 (B(h) = -h is
    # infinite on the last step and multiplies a zero correction), so sigma_min
    "unipc_bh1_order3": ("attn", UNIPC, dict(timestep_spacing="linspace", solver_type="bh1",
                                             solver_order=3, final_sigmas_type="sigma_min")),
    "unipc_sigma_min": ("attn", UNIPC, dict(timestep_spacing="linspace",
                                            final_sigmas_type="sigma_min")),
    "unipc_vpred": ("noattn_rgb", UNIPC, dict(timestep_spacing="linspace")),
    "unipc_vpred_threshold": ("noattn_rgb", UNIPC, dict(timestep_spacing="linspace",
                                                        thresholding=True,
                                                        dynamic_thresholding_ratio=0.9,
                                                        sample_max_value=1.5)),
    "deis_2": ("attn", DEIS, dict(timestep_spacing="linspace")),
    "deis_3_trailing": ("attn", DEIS, dict(timestep_spacing="trailing", solver_order=3)),
    "deis_vpred": ("noattn_rgb", DEIS, dict(timestep_spacing="linspace", solver_order=3)),
    "deis_vpred_threshold": ("noattn_rgb", DEIS, dict(timestep_spacing="linspace",
                                                      thresholding=True,
                                                      dynamic_thresholding_ratio=0.9,
                                                      sample_max_value=1.5)),
}
RUN_PIPELINES = {"attn": 1011, "noattn_rgb": 1012}  # pipeline: seed of its init array


def _diffusers():
    import diffusers
    return diffusers


def _quiet():
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()


# ----------------------------------------------------------------------------
# A. random pipelines


def randomise(unet: nn.Module, g: torch.Generator) -> None:
    """Every parameter, in named_parameters order, drawn from g."""
    owner = {}
    for mname, m in unet.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = (mname, m, pname)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            mname, m, pname = owner[name]
            if isinstance(m, nn.GroupNorm):
                if pname == "weight":
                    p.copy_(1.0 + GN_STD * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(GN_STD * torch.randn(p.shape, generator=g))
            elif isinstance(m, nn.Embedding):
                p.copy_(EMB_STD * torch.randn(p.shape, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                if pname == "weight":
                    fan_in = p[0].numel()
                    gain = QK_GAIN if mname.endswith((".to_q", ".to_k")) else GAIN
                    p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in)))
                else:
                    p.copy_(BIAS_STD * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"parameter {name} of an unexpected module {type(m).__name__}")


def build_unet(name):
    d = _diffusers()
    seed, cfg, _, _ = CASES[name]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    unet = d.UNet2DModel(**cfg)
    randomise(unet, g)
    unet.eval()
    return unet, g


def exact_time_proj(unet):
    """A copy of `unet` whose sinusoidal projection is computed in float64
    (diffusers' get_timestep_embedding casts the timesteps to float32)."""
    u = copy.deepcopy(unet)
    tp = u.time_proj
    C, flip, shift, scale = tp.num_channels, tp.flip_sin_to_cos, tp.downscale_freq_shift, tp.scale

    def forward(timesteps):
        half = C // 2
        ex = -math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - shift)
        emb = scale * timesteps[:, None].double() * torch.exp(ex)[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        assert C % 2 == 0
        return emb

    tp.forward = forward
    return u


def forward64(unet64, x, t, labels):
    with torch.no_grad():
        y = labels.round().long() if labels is not None else None
        return unet64(x.double(), t.double(), y).sample


def io_inputs(name, g, unet):
    C, H = unet.config.in_channels, unet.config.sample_size
    x = torch.randn((B, C, H, H), generator=g)
    t = torch.tensor(T_IO, dtype=torch.float32)
    labels = torch.tensor(LABELS_IO, dtype=torch.float32) if unet.config.num_class_embeds else None
    return x, t, labels


def rename_legacy(path):
    """Rename the attention tensors of a safetensors file to the legacy names."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out, n = {}, 0
    for k, v in tensors.items():
        nk = k
        if ".attentions." in k:
            for new, old in LEGACY_NAMES:
                if f".{new}." in k:
                    nk = k.replace(f".{new}.", f".{old}.")
                    n += 1
        out[nk] = v
    save_file(out, path, metadata=meta)
    return n


def make_case(folder, name):
    d = _diffusers()
    seed, cfg, sched_kw, desc = CASES[name]
    unet, g = build_unet(name)
    x, t, labels = io_inputs(name, g, unet)
    u64 = copy.deepcopy(unet).double()
    out = forward64(u64, x, t, labels)
    out_exact = forward64(exact_time_proj(u64), x, t, labels)
    with torch.no_grad():
        out32 = unet(x, t, labels.long() if labels is not None else None).sample
    dirp = os.path.join(folder, name)
    if os.path.isdir(dirp):
        shutil.rmtree(dirp)
    if sched_kw is None:
        unet.save_pretrained(dirp, safe_serialization=True)
    else:
        sched = d.DDPMScheduler(**sched_kw)
        d.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(dirp, safe_serialization=True)
    if name == "legacy":
        n = rename_legacy(os.path.join(dirp, "unet", "diffusion_pytorch_model.safetensors"))
        print(f"  legacy: renamed {n} attention tensors")
    tensors = {"x": x, "t": t}
    if labels is not None:
        tensors["labels"] = labels
    tensors["out"] = out.float()
    tensors["out_exact64"] = out_exact.float()
    where = name + ("/unet" if sched_kw is not None else "")
    save_tensors(os.path.join(folder, name + ".io.safetensors"), tensors,
                 {"model": where,
                  "description": f"{name}: {desc}; out = unet(x, t"
                                 f"{', labels' if labels is not None else ''}).sample, "
                                 "unet.double() (diffusers' sinusoidal projection in float32), "
                                 "out_exact64 the same with the projection in float64; "
                                 "rounded to float32"})
    print(f"  {name}: |out| max {float(out.abs().max()):.3g}, "
          f"float32 net vs out {float((out32.double() - out).abs().max()):.2g}, "
          f"out vs out_exact64 {float((out - out_exact).abs().max()):.2g}, "
          f"{sum(p.numel() for p in unet.parameters())} parameters")


# ----------------------------------------------------------------------------
# C. scheduler runs


def scheduler_json(sched):
    with tempfile.TemporaryDirectory() as tmp:
        sched.save_config(tmp)
        with open(os.path.join(tmp, "scheduler_config.json")) as f:
            return f.read()


def run_loop(unet, sched, init, steps=STEPS):
    """The standard diffusers loop (deterministic schedulers, DDIM eta 0).
    In float64, the multistep schedulers' sigma table too: diffusers keeps it
    in float32, and DEIS's coefficients (differences of log sigma terms) lose
    up to 5e-3 there on the v-prediction pipeline."""
    sched.set_timesteps(steps)
    if init.dtype == torch.float64 and hasattr(sched, "sigmas"):
        sched.sigmas = sched.sigmas.double()
        sched.alphas_cumprod = sched.alphas_cumprod.double()
    x = init * sched.init_noise_sigma
    is_ddim = type(sched).__name__ == DDIM
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(sched.scale_model_input(x, t), t).sample
            if is_ddim:
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            else:
                x = sched.step(eps, t, x).prev_sample
    return x


def make_init(name, unet_cfg):
    C, H = unet_cfg["in_channels"], unet_cfg["sample_size"]
    g = torch.Generator().manual_seed(RUN_PIPELINES[name])
    return torch.randn((RUN_B, C, H, H), generator=g)


def load_unet64(folder, pipeline):
    d = _diffusers()
    return d.UNet2DModel.from_pretrained(os.path.join(folder, pipeline, "unet")).double().eval()


def make_runs(folder):
    d = _diffusers()
    runs = os.path.join(folder, "runs")
    os.makedirs(runs, exist_ok=True)
    unets, inits, bases = {}, {}, {}
    for p in RUN_PIPELINES:
        unets[p] = load_unet64(folder, p)
        bases[p] = d.DDPMScheduler.from_pretrained(os.path.join(folder, p, "scheduler")).config
        inits[p] = make_init(p, CASES[p][1])
        np.save(os.path.join(runs, p + ".init.npy"), inits[p].numpy().astype(np.float32))
    manifest = []
    for v, (p, cls, over) in VARIANTS.items():
        sched = getattr(d, cls).from_config(bases[p], **over)
        x = run_loop(unets[p], sched, inits[p].double())
        ts = [int(t) for t in sched.timesteps]
        np.save(os.path.join(runs, v + ".npy"), x.numpy().astype(np.float32))
        with open(os.path.join(runs, v + ".scheduler.json"), "w") as f:
            f.write(scheduler_json(sched))
        # the same loop in float32, to size the tolerance a float32 engine needs
        u32 = copy.deepcopy(unets[p]).float()
        x32 = run_loop(u32, getattr(d, cls).from_config(bases[p], **over), inits[p])
        err = float((x32.double() - x).abs().max())
        xmax = float(x.abs().max())
        print(f"  {v}: timesteps {ts}, |x| max {xmax:.3g}, float32 loop vs float64 {err:.2g}")
        manifest.append({"name": v, "pipeline": p, "scheduler_class": cls, "steps": STEPS,
                         "init": p + ".init.npy", "out": v + ".npy",
                         "scheduler": v + ".scheduler.json", "timesteps": ts,
                         "out_abs_max": float(f"{xmax:.4g}"),
                         "f32_loop_max_abs_diff": float(f"{err:.2g}"),
                         "overrides": {k: ("<1000 values>" if k == "trained_betas" else val)
                                       for k, val in over.items()}})
    with open(os.path.join(runs, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def ddpm_moments(unet64, sched, n, seed, chunk=DDPM_CHUNK):
    """Mean and variance of n stochastic DDPM runs, init and step noise from
    one generator, in chunks."""
    C, H = unet64.config.in_channels, unet64.config.sample_size
    g = torch.Generator().manual_seed(seed)
    s1 = torch.zeros((C, H, H), dtype=torch.float64)
    s2, s4 = s1.clone(), s1.clone()
    xs = []
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        sched.set_timesteps(STEPS)
        x = torch.randn((m, C, H, H), generator=g, dtype=torch.float64) * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                eps = unet64(sched.scale_model_input(x, t), t).sample
                x = sched.step(eps, t, x, generator=g).prev_sample
        xs.append(x)
    x = torch.cat(xs)
    mean = x.mean(0)
    dev = x - mean
    var = (dev ** 2).sum(0) / (n - 1)
    m4 = (dev ** 4).mean(0)
    return dict(mean=mean, var=var, mean_se=(var / n).sqrt(),
                var_se=((m4 - var ** 2).clamp(min=0) / n).sqrt())


def make_ddpm(folder):
    d = _diffusers()
    runs = os.path.join(folder, "runs")
    unet64 = load_unet64(folder, "attn")
    sched = d.DDPMScheduler.from_pretrained(os.path.join(folder, "attn", "scheduler"))
    t0 = time.time()
    mom = ddpm_moments(unet64, sched, DDPM_N, DDPM_SEED)
    ts = [int(t) for t in sched.timesteps]
    save_tensors(os.path.join(runs, "ddpm_moments.safetensors"),
                 {k: v.float() for k, v in mom.items()},
                 {"N": str(DDPM_N), "steps": str(STEPS), "pipeline": "attn",
                  "scheduler": "ddpm.scheduler.json", "timesteps": json.dumps(ts),
                  "description": f"per-pixel mean, unbiased variance and their standard errors "
                                 f"over N = {DDPM_N} DDPMScheduler runs ({STEPS} steps, "
                                 "x_T standard normal) of the attn pipeline, float64"})
    with open(os.path.join(runs, "ddpm.scheduler.json"), "w") as f:
        f.write(scheduler_json(sched))
    print(f"  ddpm: N {DDPM_N}, timesteps {ts}, mean range [{float(mom['mean'].min()):.3g}, "
          f"{float(mom['mean'].max()):.3g}], var range [{float(mom['var'].min()):.3g}, "
          f"{float(mom['var'].max()):.3g}], {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------
# D. self-check


def check(folder):
    d = _diffusers()
    from safetensors import safe_open
    bad = []

    def fail(msg):
        bad.append(msg)
        print("  FAIL " + msg)

    for name, (seed, cfg, sched_kw, _) in CASES.items():
        dirp = os.path.join(folder, name)
        io, meta = load_tensors(os.path.join(folder, name + ".io.safetensors"))
        if meta.get("format") != "difflux-fixture":
            fail(f"{name}: io metadata format {meta.get('format')!r}")
        if sched_kw is None:
            unet = d.UNet2DModel.from_pretrained(dirp)
            if os.path.exists(os.path.join(dirp, "model_index.json")):
                fail(f"{name}: has a model_index.json")
        else:
            pipe = d.DDPMPipeline.from_pretrained(dirp)
            unet = pipe.unet
            if type(pipe.scheduler).__name__ != "DDPMScheduler":
                fail(f"{name}: scheduler {type(pipe.scheduler).__name__}")
            for k, v in sched_kw.items():
                if pipe.scheduler.config[k] != v:
                    fail(f"{name}: scheduler {k} = {pipe.scheduler.config[k]!r}")
        for k, v in cfg.items():
            got = unet.config[k]
            if (list(got) if isinstance(got, (list, tuple)) else got) != \
                    (list(v) if isinstance(v, tuple) else v):
                fail(f"{name}: config {k} = {got!r}, expected {v!r}")
        # the weights as stored = the weights the generator drew
        ref, _ = build_unet(name)
        sd, rsd = unet.state_dict(), ref.state_dict()
        if sd.keys() != rsd.keys() or any(not torch.equal(sd[k], rsd[k]) for k in sd):
            fail(f"{name}: reloaded weights differ from the generated ones")
        for p in unet.parameters():
            if p.dtype != torch.float32:
                fail(f"{name}: parameter dtype {p.dtype}")
                break
        wfile = os.path.join(dirp, "unet" if sched_kw is not None else "",
                             "diffusion_pytorch_model.safetensors")
        with safe_open(wfile, framework="pt") as f:
            keys = list(f.keys())
        legacy_keys = [k for k in keys if any(f".{o}." in k for _, o in LEGACY_NAMES)]
        new_keys = [k for k in keys if ".attentions." in k and
                    any(f".{n}." in k for n, _ in LEGACY_NAMES)]
        if name == "legacy":
            if not legacy_keys or new_keys:
                fail(f"legacy: {len(legacy_keys)} legacy and {len(new_keys)} new attention names")
        elif legacy_keys:
            fail(f"{name}: legacy attention names in the file")
        u64 = copy.deepcopy(unet).double()
        labels = io.get("labels")
        out = forward64(u64, io["x"], io["t"], labels).float()
        oute = forward64(exact_time_proj(u64), io["x"], io["t"], labels).float()
        e1 = float((out - io["out"]).abs().max())
        e2 = float((oute - io["out_exact64"]).abs().max())
        if e1 > 0 or e2 > 0:
            fail(f"{name}: recomputed out differs by {e1:.3g} / out_exact64 by {e2:.3g}")
        print(f"  {name}: reloaded from disk, out recomputed (max diff {e1:.3g}, "
              f"exact64 {e2:.3g}); {len(keys)} tensors{', legacy names' if legacy_keys else ''}")

    runs = os.path.join(folder, "runs")
    with open(os.path.join(runs, "manifest.json")) as f:
        manifest = json.load(f)
    if [e["name"] for e in manifest] != list(VARIANTS):
        fail("runs: manifest names differ from the variants")
    unets, inits = {}, {}
    for p in RUN_PIPELINES:
        unets[p] = load_unet64(folder, p)
        inits[p] = torch.from_numpy(np.load(os.path.join(runs, p + ".init.npy")))
        if not torch.equal(inits[p], make_init(p, CASES[p][1])):
            fail(f"runs: {p}.init.npy differs from its seed's draw")
    for e in manifest:
        # rebuild the scheduler from the json alone
        with open(os.path.join(runs, e["scheduler"])) as f:
            cfg = json.load(f)
        if cfg["_class_name"] != e["scheduler_class"]:
            fail(f"{e['name']}: _class_name {cfg['_class_name']}")
        sched = getattr(d, cfg["_class_name"]).from_config(cfg)
        init = torch.from_numpy(np.load(os.path.join(runs, e["init"]))).double()
        x = run_loop(unets[e["pipeline"]], sched, init, e["steps"]).float()
        want = torch.from_numpy(np.load(os.path.join(runs, e["out"])))
        err = float((x - want).abs().max())
        if err > 0 or [int(t) for t in sched.timesteps] != e["timesteps"]:
            fail(f"{e['name']}: recomputed run differs by {err:.3g}")
    print(f"  runs: {len(manifest)} runs recomputed from their scheduler json")
    mom, meta = load_tensors(os.path.join(runs, "ddpm_moments.safetensors"))
    if int(meta["N"]) != DDPM_N or list(mom["mean"].shape) != [1, 16, 16]:
        fail("ddpm: moments file metadata/shape")
    # a small recomputation with the same seed: the first chunk alone must give
    # moments close to the stored ones (a statistical check, not equality)
    d_sched = d.DDPMScheduler.from_pretrained(os.path.join(folder, "attn", "scheduler"))
    with open(os.path.join(runs, "ddpm.scheduler.json")) as f:
        if json.load(f) != json.loads(scheduler_json(d_sched)):
            fail("ddpm: scheduler json differs from the attn pipeline's")
    small = ddpm_moments(unets["attn"], d_sched, DDPM_CHUNK, DDPM_SEED)
    z = ((small["mean"] - mom["mean"].double()) / (small["var"] / DDPM_CHUNK).sqrt()).abs()
    if float(z.max()) > 4.0 + 1.0:
        fail(f"ddpm: first-chunk mean off by {float(z.max()):.2f} standard errors")
    print(f"  ddpm: first chunk of {DDPM_CHUNK} within {float(z.max()):.2f} standard errors of "
          "the stored mean")
    return bad


def report_sizes(folder):
    total = 0
    for root, _, files in sorted(os.walk(folder)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            s = os.path.getsize(p)
            total += s
            print(f"  {s:9d}  {os.path.relpath(p, folder)}")
    print(f"  {total:9d}  total")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/diffusers")
    ap.add_argument("--check-only", action="store_true",
                    help="write nothing; run the self-check on the files there")
    ap.add_argument("--runs-only", action="store_true",
                    help="remake only the scheduler runs (C) from the pipelines there")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    _quiet()
    d = _diffusers()
    print(f"diffusers {d.__version__}, torch {torch.__version__}")
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    if a.runs_only:
        print("scheduler runs:")
        make_runs(a.out)
    elif not a.check_only:
        print("pipelines and io fixtures:")
        for name in CASES:
            make_case(a.out, name)
        print("scheduler runs:")
        make_runs(a.out)
        make_ddpm(a.out)
    print("self-check:")
    bad = check(a.out)
    print("sizes:")
    report_sizes(a.out)
    print(f"{time.time() - t0:.0f} s")
    if bad:
        print(f"{len(bad)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
