#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/ (small files; run.sh adds
the shipped models and tests/fixtures as seeds of the model target).
usage: python3 tests/fuzz/make_seeds.py   (from the repository root)"""
import glob, gzip, json, os, struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(ROOT))


def out(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(config, tensors, pad=0, raw_header=None):
    """tensors: list of (name, shape, list of floats) as F32."""
    header, data = {"__metadata__": {"format": "difflux", "config": json.dumps(config)}}, b""
    for name, shape, vals in tensors:
        raw = struct.pack("<%df" % len(vals), *vals)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = raw_header if raw_header is not None else json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + data


def base(kind, c=1, h=2, w=2, pred="data", family="linear"):
    return {"version": 1, "kind": kind, "image": {"channels": c, "height": h, "width": w},
            "data": {"range": [-1, 1]}, "path": {"family": family}, "prediction": pred}


# model: one valid file per analytic kind, and the malformed cases of #17
gmm = dict(base("gmm"), gmm={"components": 2})
gmm_t = [("gmm.means", [2, 1, 2, 2], [0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4]),
         ("gmm.stds", [2], [0.05, 0.1]), ("gmm.weights", [2], [1.0, 3.0])]
out("model", "gmm.safetensors", safetensors(gmm, gmm_t))
out("model", "gmm-padded.safetensors", safetensors(gmm, gmm_t, pad=5))
gmm_start = dict(gmm, start={"mean": 0, "std": 1, "full": True})
out("model", "gmm-start.safetensors", safetensors(gmm_start, gmm_t + [
    ("start.mean", [4], [0.0] * 4), ("start.scale", [4, 4], [1.0 if i % 5 == 0 else 0.0 for i in range(16)])]))
aff = base("affine", pred="velocity")
out("model", "affine.safetensors", safetensors(aff, [
    ("affine.A", [4, 4], [0.5 if i % 5 == 0 else 0.01 for i in range(16)]), ("affine.b", [4], [0.1] * 4)]))
dale = dict(base("gmm", family="dale"), data={"range": [1, 2]}, gmm={"components": 2})
out("model", "gmm-dale.safetensors", safetensors(dale, [
    ("gmm.means", [2, 1, 2, 2], [0.1] * 8), ("gmm.stds", [2], [0.05, 0.1]), ("gmm.weights", [2], [1.0, 1.0])]))
good = safetensors(gmm, gmm_t)
hl = struct.unpack("<Q", good[:8])[0]
hdr = good[8:8 + hl].decode()
for name, edited in [
        ("dup-format", hdr.replace('"format": "difflux"', '"format": "difflux", "format": "x"')),
        ("dup-tensor", hdr.replace('"gmm.stds"', '"gmm.means"')),
        ("nul-name", hdr.replace('"gmm.means"', '"gmm.means\\u0000junk"')),
        ("trailing", hdr + "xyz"), ("nul-pad", hdr + "\0\0\0")]:
    b = edited.encode()
    out("model", name + ".safetensors", struct.pack("<Q", len(b)) + b + good[8 + hl:])
out("model", "bom.safetensors", struct.pack("<Q", hl + 3) + b"\xef\xbb\xbf" + good[8:])

# config: every shipped and fixture config, and edge cases
for f in sorted(glob.glob(os.path.join(REPO, "models", "*.safetensors")) +
                glob.glob(os.path.join(REPO, "tests", "fixtures", "*.safetensors"))):
    with open(f, "rb") as fp:
        n = struct.unpack("<Q", fp.read(8))[0]
        h = json.loads(fp.read(n))
    cfg = h.get("__metadata__", {}).get("config")
    if cfg:
        out("config", os.path.basename(f).replace(".safetensors", ".json"), cfg.encode())
out("config", "gmm.json", json.dumps(gmm).encode())
out("config", "affine.json", json.dumps(aff).encode())
out("config", "inf.json", json.dumps(gmm).replace("[-1, 1]", "[-1e999, 1]").encode())
out("config", "float-overflow.json", json.dumps(gmm).replace("[-1, 1]", "[-1, 1e39]").encode())
out("config", "tiny.json", json.dumps(dict(gmm, note=1e-300)).encode())
out("config", "dup.json", b'{"version": 1, "version": 1}')


# npy
def npy(dict_text, payload, version=1):
    d = dict_text.encode()
    pad = (64 - (10 + len(d) + 1) % 64) % 64
    d = d + b" " * pad + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d + payload
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(d)) + d + payload


out("npy", "2x4.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
                          struct.pack("<8f", *range(8))))
out("npy", "1x1x28x28.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 28, 28), }",
                                struct.pack("<784f", *([0.5] * 784))))
out("npy", "v2.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                         struct.pack("<3f", 1, 2, 3), version=2))
out("npy", "huge.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4), }", b""))

# idx
imgs = struct.pack(">IIII", 2051, 3, 2, 2) + bytes(range(12))
labs = struct.pack(">II", 2049, 3) + bytes([1, 2, 3])
out("idx", "images.idx", imgs)
out("idx", "images.idx.gz", gzip.compress(imgs, mtime=0))
out("idx", "labels.idx", labs)
out("idx", "labels.idx.gz", gzip.compress(labs, mtime=0))
with gzip.open(os.path.join(REPO, "models", "data", "mnist10k-images-idx3-ubyte.gz")) as g:
    head = g.read(16 + 4 * 784)
out("idx", "mnist4.idx.gz", gzip.compress(struct.pack(">IIII", 2051, 4, 28, 28) + head[16:], mtime=0))
out("idx", "overflow.idx", struct.pack(">IIII", 2051, 1 << 24, 1 << 24, 1 << 24))
