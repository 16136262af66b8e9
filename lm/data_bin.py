"""Reader for the modded-nanoGPT token shards (GPT-2-tokenised FineWeb ``.bin`` files).

File layout (``data/cached_fineweb10B.py`` of the modded-nanoGPT family): a header of 256 int32
(``header[0] = 20240520`` magic, ``header[1] = 1`` version, ``header[2]`` = number of tokens),
then that many uint16 GPT-2 token ids. Select with ``data.source=bin`` and
``data.paths=/d/fineweb_*.bin``: files whose name contains ``val`` form the validation split, the
others the training split (if no name contains ``val``, the last file is held out).

Shards are memory-mapped; each is exposed as fixed-size records (``RECORD_TOKENS``) so
``lm.data.PackedWindows`` packs them into windows exactly as for the byte-level corpora (windows
may cross shard boundaries; shard order is the sorted path order). Nothing is copied or prepared.
"""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np

from lm.sharding import ConfigError

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
EOT_ID = 50256  # GPT-2 <|endoftext|>, between documents (data.packing="document" cuts after it)
RECORD_TOKENS = 1 << 16


def read_header(path: str) -> int:
    """Number of tokens in a shard; raises ``ConfigError`` for a wrong magic/version/size."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header.size < 3 or header[0] != MAGIC:
        raise ConfigError(f"data.paths: {path} is not a token shard (magic "
                          f"{int(header[0]) if header.size else None}, expected {MAGIC})")
    if header[1] != VERSION:
        raise ConfigError(f"data.paths: {path} has version {int(header[1])}, expected {VERSION}")
    n = int(header[2])
    want = HEADER_INTS * 4 + 2 * n
    if os.path.getsize(path) < want:
        raise ConfigError(f"data.paths: {path} is truncated ({os.path.getsize(path)} bytes, "
                          f"header says {want})")
    return n


def write_shard(path: str, tokens) -> None:
    """Write ``tokens`` (ints < 65536) in the same format (for tests and small corpora)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 1 << 16):
        raise ValueError("token ids must fit in uint16")
    header = np.zeros(HEADER_INTS, np.int32)
    header[:3] = MAGIC, VERSION, tokens.size
    with open(path, "wb") as fh:
        fh.write(header.tobytes())
        fh.write(tokens.astype(np.uint16).tobytes())


def resolve(cfg) -> dict[str, list[str]]:
    """{"train": [...], "validation": [...]} shard paths of ``cfg.paths``."""
    if not cfg.paths:
        raise ConfigError("data.paths is empty: data.source='bin' needs the .bin shards, e.g. "
                          "data.paths=/data/fineweb10B/fineweb_*.bin")
    files = sorted({os.path.abspath(m) for p in cfg.paths
                    for m in glob.glob(os.path.expanduser(p)) if os.path.isfile(m)})
    if not files:
        raise ConfigError(f"data.paths: no file matches {list(cfg.paths)}")
    val = [f for f in files if "val" in os.path.basename(f)]
    train = [f for f in files if f not in val]
    if not val:
        if len(files) < 2:
            raise ConfigError("data.source='bin' needs a validation shard (a file name containing"
                              " 'val') or at least two shards (the last is held out)")
        train, val = files[:-1], files[-1:]
    if not train:
        raise ConfigError("data.paths: only validation shards matched; add training shards")
    return {"train": train, "validation": val}


def validate(cfg) -> None:
    for paths in resolve(cfg).values():
        for p in paths:
            read_header(p)


class ShardRecords:
    """Random access to ``{"tokens": int32[<=RECORD_TOKENS]}`` records over memmapped shards."""

    def __init__(self, paths: list[str]):
        self.maps = [np.memmap(p, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4,
                               shape=(read_header(p),)) for p in paths]
        self.index = [(s, o) for s, m in enumerate(self.maps)
                      for o in range(0, m.shape[0], RECORD_TOKENS)]
        self.src_lengths = np.array([min(RECORD_TOKENS, self.maps[s].shape[0] - o)
                                     for s, o in self.index], np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        s, o = self.index[int(i)]
        return {"tokens": np.asarray(self.maps[s][o: o + RECORD_TOKENS], np.int32)}


def bin_splits(cfg) -> dict:
    """The ``lm.data.split_sources`` contract for ``data.source='bin'``."""
    out, h = {}, hashlib.sha256()
    for split, paths in resolve(cfg).items():
        src = ShardRecords(paths)
        out[split] = (src, src.src_lengths)
        for p in paths:
            h.update(f"{p}:{os.path.getsize(p)}:{os.path.getmtime(p)}".encode())
    out["fingerprint"] = h.hexdigest()[:16]
    return out
