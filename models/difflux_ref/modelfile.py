"""Reading and writing difflux model files and fixture tensor files.

Both are safetensors files (models/FORMAT.md):

    bytes 0..7     N, the header length, unsigned 64-bit little-endian
    bytes 8..8+N   UTF-8 JSON header, padded with spaces to a multiple of 8
    rest           the tensors' bytes, little-endian, densely packed

Model files carry ``__metadata__ = {"format": "difflux", "config": "<JSON>"}``;
fixture files (inputs and reference outputs for tests) carry
``{"format": "difflux-fixture", ...}``.

Tensors are written in the order of the dict given (deterministic), the
header lists them in that same order after ``__metadata__``, and files are
written atomically (a temporary file in the same folder, then os.replace).
"""

import json
import os
import struct

import numpy as np
import torch

DTYPES = ("F32", "F16", "BF16")
_SIZE = {"F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER = 64 << 20  # the C loader refuses larger headers
MAX_DIMS = 8


class FormatError(ValueError):
    """A file that is not a valid difflux/safetensors file."""


# ----------------------------------------------------------------------------
# dtype conversion


def quantize(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """Round a float tensor to `dtype` and back to float32 (what a reader of a
    file written with that dtype gets). Round-to-nearest-even throughout."""
    t = t.detach().to(torch.float32)
    if dtype == "F32":
        return t.clone()
    if dtype == "F16":
        return t.to(torch.float16).to(torch.float32)
    if dtype == "BF16":
        return t.to(torch.bfloat16).to(torch.float32)
    raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")


def _to_bytes(name: str, t: torch.Tensor, dtype: str) -> bytes:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor {name!r}: expected a torch.Tensor, got {type(t).__name__}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                  torch.int64, torch.uint8, torch.bool)):
        raise TypeError(f"tensor {name!r}: unsupported torch dtype {t.dtype}")
    f = t.detach().to("cpu", torch.float32).contiguous()
    if dtype == "F32":
        return f.numpy().astype("<f4", copy=False).tobytes()
    if dtype == "F16":
        h = f.to(torch.float16)
        overflow = torch.isinf(h) & torch.isfinite(f)
        if bool(overflow.any()):
            raise ValueError(f"tensor {name!r}: values beyond the F16 range (|x| >= 65520)")
        return h.numpy().astype("<f2", copy=False).tobytes()
    if dtype == "BF16":
        b = f.to(torch.bfloat16).view(torch.int16)  # bit pattern, round-to-nearest-even
        return b.numpy().astype("<i2", copy=False).tobytes()
    raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")


def _from_bytes(raw: bytes, dtype: str, shape) -> torch.Tensor:
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
        a = u.view(np.float32)
    else:  # pragma: no cover - checked by the caller
        raise FormatError(f"unknown dtype {dtype}")
    return torch.from_numpy(a.reshape(shape).copy())


# ----------------------------------------------------------------------------
# writing


def _atomic_write(path: str, chunks) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write(path, tensors: dict, metadata: dict, dtype) -> None:
    """dtype: one of DTYPES, or a dict name -> dtype."""
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("__metadata__ keys and values must be strings")
    header = {"__metadata__": dict(metadata)}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        dt = dtype[name] if isinstance(dtype, dict) else dtype
        if dt not in DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dt!r}")
        shape = [int(d) for d in t.shape]
        if len(shape) > MAX_DIMS:
            raise ValueError(f"tensor {name!r}: more than {MAX_DIMS} dimensions")
        raw = _to_bytes(name, t, dt)
        assert len(raw) == _SIZE[dt] * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    if len(h) > MAX_HEADER:
        raise ValueError(f"header of {len(h)} bytes exceeds {MAX_HEADER}")
    _atomic_write(path, [struct.pack("<Q", len(h)), h] + blobs)


def save_model(path, tensors: dict, config: dict, dtype: str = "F32") -> None:
    """Write a difflux model: `tensors` (name -> torch.Tensor, written in
    dict order) stored as `dtype` ("F32", "F16" or "BF16", rounded to nearest
    even), with `config` (a dict, models/FORMAT.md) JSON-encoded in
    __metadata__."""
    if not isinstance(config, dict):
        raise TypeError("config must be a dict")
    meta = {"format": "difflux", "config": json.dumps(config, separators=(",", ":"))}
    _write(path, tensors, meta, dtype)


def save_tensors(path, tensors: dict, metadata: dict = None, dtype: str = "F32") -> None:
    """Write a fixture file: tensors (dict order) plus string metadata;
    "format" is set to "difflux-fixture"."""
    meta = {"format": "difflux-fixture"}
    for k, v in (metadata or {}).items():
        if k != "format":
            meta[k] = v
    _write(path, tensors, meta, dtype)


# ----------------------------------------------------------------------------
# reading


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise FormatError(f"header: key {k!r} appears twice")
        d[k] = v
    return d


def read_file(path):
    """Parse a safetensors file with the checks of models/FORMAT.md.
    Returns (tensors: dict name -> float32 tensor in data order,
    dtypes: dict name -> dtype string, metadata: dict)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()

    def fail(msg):
        raise FormatError(f"{path}: {msg}")

    if len(blob) < 8:
        fail("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n < 2 or n > MAX_HEADER or 8 + n > len(blob):
        fail(f"bad header length {n}")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except FormatError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"header is not valid JSON: {e}")
    if not isinstance(header, dict):
        fail("header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        fail("__metadata__ must map strings to strings")
    entries = []
    for name, e in header.items():
        if not isinstance(e, dict):
            fail(f"tensor {name}: entry is not an object")
        dt, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if dt not in DTYPES:
            fail(f"tensor {name}: dtype {dt!r} not supported (F32, F16, BF16)")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS or
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            fail(f"tensor {name}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            fail(f"tensor {name}: bad data_offsets {offs!r}")
        b, end = offs
        if not (0 <= b <= end <= len(data)):
            fail(f"tensor {name}: data_offsets {offs} outside the data buffer ({len(data)} bytes)")
        count = int(np.prod(shape, dtype=np.int64))
        if end - b != count * _SIZE[dt]:
            fail(f"tensor {name}: {end - b} bytes for {count} {dt} values")
        entries.append((b, end, name, dt, shape))
    entries.sort()
    for (b0, e0, n0, _, _), (b1, _, n1, _, _) in zip(entries, entries[1:]):
        if b1 < e0:
            fail(f"tensors {n0} and {n1} overlap")
    tensors, dtypes = {}, {}
    for b, end, name, dt, shape in entries:
        tensors[name] = _from_bytes(bytes(data[b:end]), dt, shape)
        dtypes[name] = dt
    return tensors, dtypes, meta


def load_model(path):
    """Read a difflux model file. Returns (tensors as float32 torch tensors,
    config dict)."""
    tensors, _, meta = read_file(path)
    if meta.get("format") != "difflux":
        raise FormatError(f"{path}: __metadata__.format is not \"difflux\"")
    if "config" not in meta:
        raise FormatError(f"{path}: no config in __metadata__")
    try:
        config = json.loads(meta["config"])
    except ValueError as e:
        raise FormatError(f"{path}: the config in __metadata__ is not valid JSON: {e}")
    if not isinstance(config, dict):
        raise FormatError(f"{path}: the config is not a JSON object")
    return tensors, config


def load_tensors(path):
    """Read a fixture (or any safetensors) file. Returns (tensors as float32
    torch tensors, metadata dict)."""
    tensors, _, meta = read_file(path)
    return tensors, meta


def file_dtypes(path) -> dict:
    """name -> stored dtype string."""
    return read_file(path)[1]
