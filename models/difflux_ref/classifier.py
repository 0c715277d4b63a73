"""The difflux feature-network classifier (model kind "classifier").

A small convolutional classifier whose penultimate activations are the
features `difflux eval` compares between generated and real images
(Frechet distance and kernel distance, FID/KID style). The module's
state_dict() keys are the tensor names the C engine reads, so a
state_dict can be written to a model file as it is (modelfile.save_model).

    net = Classifier(classifier_section_dict, channels=1, height=28, width=28)
    features, logits = net(x)      # x [B, C, H, W] in the config's data range

Network (L = len(channels), ch = channels, cin_l = ch[0] for l = 0, else
ch[l-1]):

    h = conv_in(x)                                   3x3, C -> ch[0], padding 1
    for l in 0..L-1:
        h = blocks.{l}.conv(SiLU(blocks.{l}.norm(h)))  GroupNorm(cin_l), 3x3 cin_l -> ch[l]
        if l < L-1: h = blocks.{l}.down(h)           3x3, stride 2, padding 1 (H -> H/2)
    h = SiLU(out.norm(h))                            GroupNorm(ch[L-1])
    features = feat(flatten(h))                      NCHW order: index c*h*w + y*w + x
    logits = head(SiLU(features))

Tensors (in this order, the state_dict order; all F32 in shipped files):

    conv_in.weight [ch0, C, 3, 3], conv_in.bias [ch0]
    blocks.{l}.norm.weight [cin_l], blocks.{l}.norm.bias [cin_l]
    blocks.{l}.conv.weight [ch_l, cin_l, 3, 3], blocks.{l}.conv.bias [ch_l]
    blocks.{l}.down.weight [ch_l, ch_l, 3, 3], blocks.{l}.down.bias [ch_l]   (l < L-1)
    out.norm.weight [ch_{L-1}], out.norm.bias [ch_{L-1}]
    feat.weight [F, ch_{L-1} h w], feat.bias [F]    h = H / 2^(L-1), w = W / 2^(L-1)
    head.weight [K, F], head.bias [K]

GroupNorm as in the U-Net: per sample and group, mean and biased variance
over (C / groups) x H x W, y = (x - mean) / sqrt(var + eps) * gamma + beta.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSIFIER_DEFAULTS = {"norm_eps": 1e-5}
CLASSIFIER_REQUIRED = ("channels", "features", "num_classes", "groups")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def classifier_section(cfg: dict) -> dict:
    """A complete, normalised copy of a "classifier" config section (defaults
    filled in, key order fixed). Raises ValueError on missing keys."""
    if not isinstance(cfg, dict):
        raise ValueError("classifier config must be an object")
    missing = [k for k in CLASSIFIER_REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"classifier config: missing {', '.join(missing)}")
    if not isinstance(cfg["channels"], (list, tuple)):
        raise ValueError("classifier config: channels must be a list of integers")
    eps = cfg.get("norm_eps", CLASSIFIER_DEFAULTS["norm_eps"])
    return {
        "channels": list(cfg["channels"]),
        "features": cfg["features"],
        "num_classes": cfg["num_classes"],
        "groups": cfg["groups"],
        "norm_eps": float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool)
        else eps,
    }


def check_classifier_config(cfg: dict, channels: int, height: int = None,
                            width: int = None) -> dict:
    """Validate a classifier section (and the image size it is used with);
    returns the normalised section."""
    c = classifier_section(cfg)
    ch = c["channels"]

    def bad(msg):
        raise ValueError(f"classifier config: {msg}")

    if not _is_int(channels) or not 1 <= channels <= 64:
        bad("image channels must be an integer in [1, 64]")
    if not ch or not all(_is_int(v) and v >= 1 for v in ch):
        bad("channels must be a non-empty list of positive integers")
    for key in ("features", "num_classes", "groups"):
        if not _is_int(c[key]) or c[key] < 1:
            bad(f"{key} must be a positive integer")
    if not (isinstance(c["norm_eps"], float) and math.isfinite(c["norm_eps"])
            and c["norm_eps"] > 0):
        bad("norm_eps must be a positive number")
    for v in sorted(set(normalised_channels(c))):
        if v % c["groups"]:
            bad(f"groups ({c['groups']}) must divide every normalised channel count ({v})")
    f = 2 ** (len(ch) - 1)
    for name, v in (("height", height), ("width", width)):
        if v is not None and (not _is_int(v) or v < 1 or v % f):
            bad(f"image {name} {v} must be divisible by 2^(levels-1) = {f}")
    return c


def normalised_channels(c: dict):
    """Channel counts of every GroupNorm in the network, in order."""
    ch = c["channels"]
    return [ch[0]] + list(ch[:-1]) + [ch[-1]]


def feature_input_size(c: dict, height: int, width: int) -> int:
    """Length of the flattened activation `feat` reads: ch[L-1] * h * w."""
    f = 2 ** (len(c["channels"]) - 1)
    return c["channels"][-1] * (height // f) * (width // f)


def config_json(classifier_cfg: dict, image: dict, labels=None, data_range=(-1.0, 1.0),
                provenance: dict = None) -> dict:
    """The full difflux config object of a classifier model (kind "classifier").

    image: {"channels", "height", "width"}; labels: the class names (default
    "0", "1", ...); provenance: optional dict ({"dataset", "description",
    "training": {...}}), stored as given (strings stay strings, the training
    dict keeps its numbers)."""
    img = {"channels": int(image["channels"]), "height": int(image["height"]),
           "width": int(image["width"])}
    c = check_classifier_config(classifier_cfg, img["channels"], img["height"], img["width"])
    if labels is None:
        labels = [str(k) for k in range(c["num_classes"])]
    lo, hi = float(data_range[0]), float(data_range[1])
    cfg = {
        "version": 1,
        "kind": "classifier",
        "image": img,
        "data": {"range": [lo, hi]},
        "classifier": c,
        "labels": [str(s) for s in labels],
    }
    if provenance:
        cfg["provenance"] = dict(provenance)
    check_config(cfg)
    return cfg


def check_config(cfg: dict) -> dict:
    """Validate a full config of kind "classifier"; returns the normalised
    classifier section."""
    if not isinstance(cfg, dict):
        raise ValueError("config: not an object")
    if cfg.get("version") != 1:
        raise ValueError("config: version must be 1")
    if cfg.get("kind") != "classifier":
        raise ValueError(f"config: kind is {cfg.get('kind')!r}, not \"classifier\"")
    img = cfg.get("image")
    if not isinstance(img, dict):
        raise ValueError("config: missing object 'image'")
    for key in ("height", "width"):
        v = img.get(key)
        if not _is_int(v) or not 1 <= v <= 4096:
            raise ValueError(f"config: image.{key} must be an integer in [1, 4096]")
    rng = (cfg.get("data") or {}).get("range", [-1.0, 1.0])
    if (not isinstance(rng, list) or len(rng) != 2 or
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in rng) or not rng[1] > rng[0]):
        raise ValueError("config: data.range must be [low, high] with low < high")
    if "classifier" not in cfg:
        raise ValueError("config: missing object 'classifier'")
    c = check_classifier_config(cfg["classifier"], img.get("channels"), img.get("height"),
                                img.get("width"))
    labels = cfg.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != c["num_classes"]
                               or not all(isinstance(s, str) for s in labels)):
        raise ValueError(f"config: labels must be a list of {c['num_classes']} strings "
                         "(num_classes)")
    return c


# ----------------------------------------------------------------------------
# the network


class Block(nn.Module):
    """blocks.{l}: norm, conv and (all but the last) down."""

    def __init__(self, cin, cout, c, down):
        super().__init__()
        self.norm = nn.GroupNorm(c["groups"], cin, eps=c["norm_eps"], affine=True)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
        self.down = nn.Conv2d(cout, cout, 3, stride=2, padding=1, bias=True) if down else None

    def forward(self, h):
        h = self.conv(F.silu(self.norm(h)))
        return h if self.down is None else self.down(h)


class Out(nn.Module):
    def __init__(self, ch, c):
        super().__init__()
        self.norm = nn.GroupNorm(c["groups"], ch, eps=c["norm_eps"], affine=True)


class Classifier(nn.Module):
    def __init__(self, classifier: dict, channels: int, height: int, width: int):
        super().__init__()
        c = check_classifier_config(classifier, channels, height, width)
        self.cfg = c
        self.channels, self.height, self.width = channels, height, width
        ch, L = c["channels"], len(c["channels"])
        # Registration order = state_dict order = the order files list tensors.
        self.conv_in = nn.Conv2d(channels, ch[0], 3, padding=1, bias=True)
        self.blocks = nn.ModuleList(
            Block(ch[0] if l == 0 else ch[l - 1], ch[l], c, down=l < L - 1) for l in range(L))
        self.out = Out(ch[-1], c)
        self.feat = nn.Linear(feature_input_size(c, height, width), c["features"])
        self.head = nn.Linear(c["features"], c["num_classes"])

    @classmethod
    def from_config(cls, config: dict) -> "Classifier":
        """Build from a full difflux config (kind "classifier")."""
        check_config(config)
        img = config["image"]
        return cls(config["classifier"], img["channels"], img["height"], img["width"])

    def features(self, x):
        h = self.conv_in(x)
        for blk in self.blocks:
            h = blk(h)
        h = F.silu(self.out.norm(h))
        return self.feat(h.flatten(1))

    def forward(self, x):
        """(features [B, F], logits [B, K]) of images x [B, C, H, W]."""
        f = self.features(x)
        return f, self.head(F.silu(f))


def reference_forward(P: dict, config: dict, x: torch.Tensor):
    """A second, functional implementation of the network straight from the
    description above (hand-written GroupNorm and SiLU, explicit NCHW
    flattening), for checking fixtures: P maps tensor names to tensors.
    Returns (features, logits)."""
    c = config["classifier"]
    ch, G, eps = c["channels"], c["groups"], c["norm_eps"]

    def gn(h, name):
        B, C, H, W = h.shape
        g = h.reshape(B, G, (C // G) * H * W)
        mean = g.mean(dim=2, keepdim=True)
        var = ((g - mean) ** 2).mean(dim=2, keepdim=True)
        g = (g - mean) / torch.sqrt(var + eps)
        h = g.reshape(B, C, H, W)
        return h * P[name + ".weight"][None, :, None, None] + P[name + ".bias"][None, :, None, None]

    def silu(h):
        return h / (1 + torch.exp(-h))

    def conv(h, name, stride=1):
        return F.conv2d(h, P[name + ".weight"], P[name + ".bias"], stride=stride, padding=1)

    h = conv(x, "conv_in")
    for l in range(len(ch)):
        h = conv(silu(gn(h, f"blocks.{l}.norm")), f"blocks.{l}.conv")
        if l < len(ch) - 1:
            h = conv(h, f"blocks.{l}.down", stride=2)
    h = silu(gn(h, "out.norm"))
    B, C, H, W = h.shape
    flat = torch.stack([h[:, ci, yi, xi] for ci in range(C) for yi in range(H)
                        for xi in range(W)], dim=1)
    feats = flat @ P["feat.weight"].T + P["feat.bias"]
    logits = silu(feats) @ P["head.weight"].T + P["head.bias"]
    return feats, logits


def expected_tensors(config: dict) -> dict:
    """name -> shape, enumerated from the description above (independently
    of the module)."""
    c, img = config["classifier"], config["image"]
    ch, L = c["channels"], len(c["channels"])
    names = {}

    def pair(prefix, wshape, n):
        names[prefix + ".weight"] = list(wshape)
        names[prefix + ".bias"] = [n]

    pair("conv_in", [ch[0], img["channels"], 3, 3], ch[0])
    for l in range(L):
        cin = ch[0] if l == 0 else ch[l - 1]
        pair(f"blocks.{l}.norm", [cin], cin)
        pair(f"blocks.{l}.conv", [ch[l], cin, 3, 3], ch[l])
        if l < L - 1:
            pair(f"blocks.{l}.down", [ch[l], ch[l], 3, 3], ch[l])
    pair("out.norm", [ch[-1]], ch[-1])
    h, w = img["height"] >> (L - 1), img["width"] >> (L - 1)
    pair("feat", [c["features"], ch[-1] * h * w], c["features"])
    pair("head", [c["num_classes"], c["features"]], c["num_classes"])
    return names
