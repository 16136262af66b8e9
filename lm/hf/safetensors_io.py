"""Memory-mapped safetensors reading (single file or sharded with an index) and writing.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and the raw
little-endian bytes. ``SafetensorsDir`` maps every file read-only (``np.memmap``) and hands out
zero-copy numpy views, so slicing a tensor touches only the pages of that slice: a device's
shard of a weight is read without reading the weight. (``safetensors.safe_open(...,
framework="numpy")`` would do the same for fp32/fp16 but cannot represent bfloat16 in numpy —
it raises "data type 'bfloat16' not understood" — so the reader parses the header itself and
views bf16 through ``ml_dtypes``, which jax ships.) Truncated files, overlapping or
out-of-range offsets and unknown dtypes are reported as one ``ConfigError`` naming the file.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from lm.sharding import ConfigError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_header(path: str) -> tuple[dict, int]:
    """(header without ``__metadata__``, offset of the data section); validated against the
    file size so a truncated download is caught before anything is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ConfigError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise ConfigError(f"{path}: truncated safetensors file (header of {n} bytes, file "
                              f"of {size})")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise ConfigError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data = size - 8 - n
    for name, h in header.items():
        if h.get("dtype") not in DTYPES:
            raise ConfigError(f"{path}: tensor {name!r} has dtype {h.get('dtype')!r}; "
                              f"supported: {sorted(DTYPES)}")
        b, e = h["data_offsets"]
        want = int(np.prod(h["shape"], dtype=np.int64)) * np.dtype(DTYPES[h["dtype"]]).itemsize
        if e > data or e - b != want or b < 0:
            raise ConfigError(f"{path}: truncated or corrupt safetensors file: tensor {name!r} "
                              f"needs bytes [{b}, {e}) of a {data}-byte data section")
    return header, 8 + n


class SafetensorsDir:
    """Every tensor of a checkpoint directory, memory-mapped.

    ``shape(name)``, ``dtype(name)``, ``array(name)`` (a read-only zero-copy view) and
    ``names`` (sorted). Files are those of ``model.safetensors.index.json`` when present, else
    ``model.safetensors`` (or the only ``*.safetensors`` file)."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, INDEX)
        if os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh).get("weight_map", {})
            files = sorted(set(weight_map.values()))
        else:
            cands = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            files = [SINGLE] if SINGLE in cands else cands
            if len(files) != 1:
                raise ConfigError(f"{path}: expected {SINGLE} or {INDEX} (found "
                                  f"{cands or 'no .safetensors files'})")
            weight_map = None
        self._where: dict[str, tuple[str, dict, int]] = {}
        for f in files:
            fp = os.path.join(path, f)
            if not os.path.exists(fp):
                raise ConfigError(f"{path}: {INDEX} names {f}, which is missing")
            header, data_at = read_header(fp)
            for name, h in header.items():
                self._where[name] = (fp, h, data_at)
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self._where))
            if missing:
                raise ConfigError(f"{path}: tensors listed in {INDEX} are absent from their "
                                  f"files: {missing[:5]}")
        self._maps: dict[str, np.memmap] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][1]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(DTYPES[self._where[name][1]["dtype"]])

    def nbytes(self, name: str) -> int:
        b, e = self._where[name][1]["data_offsets"]
        return e - b

    def array(self, name: str) -> np.ndarray:
        """Zero-copy read-only view of ``name`` (pages are read when touched)."""
        fp, h, data_at = self._where[name]
        if fp not in self._maps:
            self._maps[fp] = np.memmap(fp, dtype=np.uint8, mode="r")
        b, e = h["data_offsets"]
        buf = self._maps[fp][data_at + b: data_at + e]
        return buf.view(DTYPES[h["dtype"]]).reshape(h["shape"])


def write_file(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None):
    """One safetensors file (C-order, little-endian), names sorted, header padded to 8 bytes."""
    header, off = {}, 0
    for name in sorted(tensors):
        a = tensors[name]
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in sorted(tensors):
            fh.write(np.ascontiguousarray(tensors[name]).astype(
                tensors[name].dtype.newbyteorder("<"), copy=False).tobytes())


def write_sharded(out_dir: str, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list:
    """``model.safetensors`` if everything fits in ``max_shard_bytes``, else
    ``model-0000i-of-0000n.safetensors`` files (in name order, each at most ``max_shard_bytes``
    unless one tensor is larger) and ``model.safetensors.index.json``. Returns the file names."""
    total = sum(a.nbytes for a in tensors.values())
    if total <= max_shard_bytes:
        write_file(os.path.join(out_dir, SINGLE), tensors)
        return [SINGLE]
    shards, cur, cur_bytes = [], {}, 0
    for name in sorted(tensors):
        a = tensors[name]
        if cur and cur_bytes + a.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[name] = a
        cur_bytes += a.nbytes
    shards.append(cur)
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        f = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_file(os.path.join(out_dir, f), shard)
        files.append(f)
        weight_map.update({n: f for n in shard})
    with open(os.path.join(out_dir, INDEX), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return files + [INDEX]
