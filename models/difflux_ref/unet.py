"""The difflux U-Net (model kind "unet"), exactly as models/UNET.md defines it.

The module's state_dict() keys are the tensor names of UNET.md, so a
state_dict can be written to a model file as it is (modelfile.save_model).

    net = UNet(unet_section_dict, channels=1, height=28, width=28)
    out = net(x, t, y)        # x [B, C, H, W], t [B] float in [0, 1], y [B] long

Conventions (the C engine follows them):
* GroupNorm: per sample and group, mean and biased variance over
  (C / groups) x H x W, y = (x - mean) / sqrt(var + eps) * gamma + beta.
* time embedding: u = t * time_scale, half = ch0 / 2,
  f_i = exp(-ln(10000) * i / half), i = 0..half-1,
  e = [sin(u f_0) .. sin(u f_{half-1}), cos(u f_0) .. cos(u f_{half-1})],
  computed in float64 and then cast to the module's dtype.
* temb = lin2(SiLU(lin1(e))), then += class_emb[y] (conditional models).
* attention: logits = q.k / sqrt(d), d = C / heads, softmax over keys.
* skip concatenation: h's channels first, then the skip's.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Values used for keys a hand-written unet section may leave out; files
# written by this package always carry every key.
UNET_DEFAULTS = {
    "heads": 1,
    "time_scale": 1000.0,
    "num_classes": 0,
    "norm_eps": 1e-5,
}
UNET_REQUIRED = ("base_channels", "channel_mult", "num_res_blocks", "attention_levels",
                 "groups", "time_embed_dim")
PATH_FAMILIES = ("linear", "trig", "vp", "vp_cosine", "ve", "dale")
PREDICTIONS = ("eps", "data", "score", "velocity", "v")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def unet_section(cfg: dict) -> dict:
    """A complete, normalised copy of a "unet" config section (defaults
    filled in, key order fixed). Raises ValueError on missing keys."""
    if not isinstance(cfg, dict):
        raise ValueError("unet config must be an object")
    missing = [k for k in UNET_REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"unet config: missing {', '.join(missing)}")
    out = {
        "base_channels": cfg["base_channels"],
        "channel_mult": list(cfg["channel_mult"]),
        "num_res_blocks": cfg["num_res_blocks"],
        "attention_levels": list(cfg["attention_levels"]),
        "heads": cfg.get("heads", UNET_DEFAULTS["heads"]),
        "groups": cfg["groups"],
        "time_embed_dim": cfg["time_embed_dim"],
        "time_scale": float(cfg.get("time_scale", UNET_DEFAULTS["time_scale"])),
        "num_classes": cfg.get("num_classes", UNET_DEFAULTS["num_classes"]),
        "norm_eps": float(cfg.get("norm_eps", UNET_DEFAULTS["norm_eps"])),
    }
    return out


def check_unet_config(cfg: dict, channels: int, height: int = None, width: int = None) -> dict:
    """Validate a unet section against UNET.md; returns the normalised section."""
    u = unet_section(cfg)
    ch0, mult = u["base_channels"], u["channel_mult"]

    def bad(msg):
        raise ValueError(f"unet config: {msg}")

    if not _is_int(channels) or not 1 <= channels <= 64:
        bad("image channels must be an integer in [1, 64]")
    if not _is_int(ch0) or ch0 < 2 or ch0 % 2:
        bad("base_channels must be a positive even integer")
    if not mult or not all(_is_int(m) and m >= 1 for m in mult):
        bad("channel_mult must be a non-empty list of positive integers")
    L = len(mult)
    if not _is_int(u["num_res_blocks"]) or u["num_res_blocks"] < 1:
        bad("num_res_blocks must be an integer >= 1")
    al = u["attention_levels"]
    if not all(_is_int(a) and 0 <= a < L for a in al) or len(set(al)) != len(al):
        bad(f"attention_levels must be distinct levels in [0, {L - 1}]")
    for key in ("heads", "groups", "time_embed_dim"):
        if not _is_int(u[key]) or u[key] < 1:
            bad(f"{key} must be a positive integer")
    if not _is_int(u["num_classes"]) or u["num_classes"] < 0:
        bad("num_classes must be a non-negative integer")
    for key in ("time_scale", "norm_eps"):
        if not (math.isfinite(u[key]) and u[key] > 0):
            bad(f"{key} must be a positive number")
    chs = [ch0 * m for m in mult]
    for l in sorted(set(al) | {L - 1}):  # attended levels and the middle block
        if chs[l] % u["heads"]:
            bad(f"heads ({u['heads']}) must divide the {chs[l]} channels of level {l}")
    for c in sorted(set(normalised_channels(u))):
        if c % u["groups"]:
            bad(f"groups ({u['groups']}) must divide every normalised channel count ({c})")
    f = 2 ** (L - 1)
    for name, v in (("height", height), ("width", width)):
        if v is not None and (not _is_int(v) or v < 1 or v % f):
            bad(f"image {name} {v} must be divisible by 2^(levels-1) = {f}")
    return u


def resblock_channels(u: dict):
    """[(name, in, out)] of every ResBlock, in the order of UNET.md's network."""
    ch0, mult, nrb = u["base_channels"], u["channel_mult"], u["num_res_blocks"]
    L = len(mult)
    blocks, skips, cur = [], [ch0], ch0
    for l in range(L):
        for r in range(nrb):
            blocks.append((f"down.{l}.res.{r}", cur, ch0 * mult[l]))
            cur = ch0 * mult[l]
            skips.append(cur)
        if l < L - 1:
            skips.append(cur)
    blocks.append(("mid.res1", cur, cur))
    blocks.append(("mid.res2", cur, cur))
    for l in reversed(range(L)):
        for r in range(nrb + 1):
            blocks.append((f"up.{l}.res.{r}", cur + skips.pop(), ch0 * mult[l]))
            cur = ch0 * mult[l]
    assert not skips
    return blocks


def normalised_channels(u: dict):
    """Channel counts of every GroupNorm in the network."""
    ch0, mult = u["base_channels"], u["channel_mult"]
    out = [ch0]
    for _, cin, cout in resblock_channels(u):
        out += [cin, cout]
    out += [ch0 * mult[l] for l in u["attention_levels"]] + [ch0 * mult[-1]]
    return out


def config_json(unet_cfg: dict, image: dict, path="linear", prediction="velocity",
                data_range=(-1.0, 1.0), provenance: dict = None) -> dict:
    """The full difflux config object (models/FORMAT.md) of a U-Net model.

    image: {"channels", "height", "width"}; path: a family name or a path
    object ({"family": ..., optional parameters}); provenance: optional
    {"dataset", "description"} strings. The result is what save_model stores
    (JSON-encoded) in __metadata__.config."""
    img = {"channels": int(image["channels"]), "height": int(image["height"]),
           "width": int(image["width"])}
    u = check_unet_config(unet_cfg, img["channels"], img["height"], img["width"])
    p = {"family": path} if isinstance(path, str) else dict(path)
    if p.get("family") not in PATH_FAMILIES:
        raise ValueError(f"path family must be one of {', '.join(PATH_FAMILIES)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}")
    lo, hi = float(data_range[0]), float(data_range[1])
    if not hi > lo:
        raise ValueError("data range must have low < high")
    cfg = {
        "version": 1,
        "kind": "unet",
        "image": img,
        "data": {"range": [lo, hi]},
        "path": p,
        "prediction": prediction,
        "unet": u,
    }
    if provenance:
        cfg["provenance"] = {k: str(v) for k, v in provenance.items()}
    return cfg


def check_config(cfg: dict) -> dict:
    """Validate a full config of kind "unet"; returns the normalised unet section."""
    if cfg.get("version") != 1:
        raise ValueError("config: version must be 1")
    if cfg.get("kind") != "unet":
        raise ValueError(f"config: kind is {cfg.get('kind')!r}, not \"unet\"")
    img = cfg.get("image")
    if not isinstance(img, dict):
        raise ValueError("config: missing object 'image'")
    if (cfg.get("path") or {}).get("family") not in PATH_FAMILIES:
        raise ValueError(f"config: path.family must be one of {', '.join(PATH_FAMILIES)}")
    if cfg.get("prediction") not in PREDICTIONS:
        raise ValueError(f"config: prediction must be one of {', '.join(PREDICTIONS)}")
    if "unet" not in cfg:
        raise ValueError("config: missing object 'unet'")
    return check_unet_config(cfg["unet"], img.get("channels"), img.get("height"),
                             img.get("width"))


# ----------------------------------------------------------------------------
# layers


def _gn(ch, u):
    return nn.GroupNorm(u["groups"], ch, eps=u["norm_eps"], affine=True)


def _conv3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True)


def _conv1(cin, cout):
    return nn.Conv2d(cin, cout, 1, bias=True)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, u):
        super().__init__()
        T = u["time_embed_dim"]
        self.norm1 = _gn(cin, u)
        self.conv1 = _conv3(cin, cout)
        self.temb = nn.Linear(T, cout)
        self.norm2 = _gn(cout, u)
        self.conv2 = _conv3(cout, cout)
        self.skip = _conv1(cin, cout) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class Attention(nn.Module):
    def __init__(self, ch, u):
        super().__init__()
        self.heads = u["heads"]
        self.norm = _gn(ch, u)
        self.qkv = _conv1(ch, 3 * ch)
        self.proj = _conv1(ch, ch)

    def forward(self, x):
        B, C, H, W = x.shape
        nh, d = self.heads, C // self.heads
        qkv = self.qkv(self.norm(x)).reshape(B, 3 * C, H * W)
        q = qkv[:, 0 * C:1 * C].reshape(B, nh, d, H * W)
        k = qkv[:, 1 * C:2 * C].reshape(B, nh, d, H * W)
        v = qkv[:, 2 * C:3 * C].reshape(B, nh, d, H * W)
        logits = torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(d)
        a = torch.softmax(logits, dim=-1)
        o = torch.einsum("bhij,bhcj->bhci", a, v).reshape(B, C, H, W)
        return x + self.proj(o)


class TimeEmbed(nn.Module):
    def __init__(self, ch0, T):
        super().__init__()
        self.lin1 = nn.Linear(ch0, T)
        self.lin2 = nn.Linear(T, T)

    def forward(self, e):
        return self.lin2(F.silu(self.lin1(e)))


class Level(nn.Module):
    """Holds down.{l}.res / attn / downsample, or up.{l}.res / attn / upsample."""


class Mid(nn.Module):
    def __init__(self, ch, u):
        super().__init__()
        self.res1 = ResBlock(ch, ch, u)
        self.attn = Attention(ch, u)
        self.res2 = ResBlock(ch, ch, u)


class Out(nn.Module):
    def __init__(self, ch0, C, u):
        super().__init__()
        self.norm = _gn(ch0, u)
        self.conv = _conv3(ch0, C)


def timestep_embedding(t: torch.Tensor, dim: int, time_scale: float) -> torch.Tensor:
    """[sin(u f_i)..., cos(u f_i)...], u = t * time_scale,
    f_i = exp(-ln(10000) i / (dim/2)); computed in float64, returned [B, dim]."""
    half = dim // 2
    u = t.to(torch.float64) * float(time_scale)
    i = torch.arange(half, dtype=torch.float64, device=t.device)
    f = torch.exp(-math.log(10000.0) * i / half)
    arg = u[:, None] * f[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class UNet(nn.Module):
    def __init__(self, unet: dict, channels: int, height: int = None, width: int = None):
        super().__init__()
        u = check_unet_config(unet, channels, height, width)
        self.cfg = u
        self.channels = channels
        ch0, mult, nrb = u["base_channels"], u["channel_mult"], u["num_res_blocks"]
        T, L = u["time_embed_dim"], len(mult)
        self.levels = L
        self.attn_levels = set(u["attention_levels"])

        # Registration order = state_dict order = the order files list tensors.
        self.temb = TimeEmbed(ch0, T)
        self.class_emb = nn.Embedding(u["num_classes"] + 1, T) if u["num_classes"] > 0 else None
        self.conv_in = _conv3(channels, ch0)

        blocks = dict((name, (cin, cout)) for name, cin, cout in resblock_channels(u))
        self.down = nn.ModuleList()
        for l in range(L):
            lev = Level()
            lev.res = nn.ModuleList(ResBlock(*blocks[f"down.{l}.res.{r}"], u) for r in range(nrb))
            if l in self.attn_levels:
                lev.attn = nn.ModuleList(Attention(ch0 * mult[l], u) for _ in range(nrb))
            if l < L - 1:
                lev.downsample = _conv3(ch0 * mult[l], ch0 * mult[l], stride=2)
            self.down.append(lev)
        self.mid = Mid(ch0 * mult[-1], u)
        self.up = nn.ModuleList()
        for l in range(L):
            lev = Level()
            lev.res = nn.ModuleList(ResBlock(*blocks[f"up.{l}.res.{r}"], u)
                                    for r in range(nrb + 1))
            if l in self.attn_levels:
                lev.attn = nn.ModuleList(Attention(ch0 * mult[l], u) for _ in range(nrb + 1))
            if l > 0:
                lev.upsample = _conv3(ch0 * mult[l], ch0 * mult[l])
            self.up.append(lev)
        self.out = Out(ch0, channels, u)

    @classmethod
    def from_config(cls, config: dict) -> "UNet":
        """Build from a full difflux config (kind "unet")."""
        check_config(config)
        img = config["image"]
        return cls(config["unet"], img["channels"], img["height"], img["width"])

    def forward(self, x, t, y=None):
        u = self.cfg
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        e = timestep_embedding(t.reshape(B), u["base_channels"], u["time_scale"]).to(x.dtype)
        temb = self.temb(e)
        if self.class_emb is not None:
            K = u["num_classes"]
            if y is None:
                y = torch.full((B,), K, dtype=torch.long, device=x.device)
            y = torch.as_tensor(y, device=x.device).reshape(B).long()
            if bool(((y < 0) | (y > K)).any()):
                raise ValueError(f"class labels must be in [0, {K}] ({K} = no class)")
            temb = temb + self.class_emb(y)

        h = self.conv_in(x)
        skips = [h]
        for l, lev in enumerate(self.down):
            for r, res in enumerate(lev.res):
                h = res(h, temb)
                if l in self.attn_levels:
                    h = lev.attn[r](h)
                skips.append(h)
            if l < self.levels - 1:
                h = lev.downsample(h)
                skips.append(h)
        h = self.mid.res1(h, temb)
        h = self.mid.attn(h)
        h = self.mid.res2(h, temb)
        for l in reversed(range(self.levels)):
            lev = self.up[l]
            for r, res in enumerate(lev.res):
                h = res(torch.cat([h, skips.pop()], dim=1), temb)
                if l in self.attn_levels:
                    h = lev.attn[r](h)
            if l > 0:
                h = lev.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out.conv(F.silu(self.out.norm(h)))
