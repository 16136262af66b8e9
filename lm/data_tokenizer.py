"""The data pipeline's tokenizer: ``data.tokenizer`` ("" = bytes, else a ``tokenizer.json`` dir).

``""`` is the byte tokenizer of ``tokenization.bytes`` (a document's UTF-8 bytes + ``<eos>``;
vocabulary 259): today's records, fingerprints and batches, exactly. A directory holding a Hugging
Face ``tokenizer.json`` (typically the checkpoint of ``model.init_from``; ``lm.pretrained.resolve``
fills it in) is read with ``tokenization.hf.HFTokenizer`` and a document becomes:

- ``encode(text, add_special_tokens=True)``: the tokenizer's own post-processor decides the
  framing, as ``transformers``' ``tokenizer(text)`` and its pretraining scripts do. A BOS is
  therefore prepended exactly when the checkpoint's post-processor prepends one (Llama 3's
  ``<|begin_of_text|>``, Gemma's ``<bos>``), and never for GPT-2 / Qwen-style tokenizers;
- then the eos id, once (not again when the post-processor already appends it). The eos is the
  tokenizer's ``eos_token``, else the smallest ``eos_token_id`` of its generation config, the
  same rule as ``lm.pretrained.CheckpointTokenizer``; padding uses its ``pad_token``, else eos.

Document bytes are decoded as UTF-8 with ``errors="replace"`` (invalid bytes become U+FFFD; the
byte path keeps them). ``digest`` (sha256 of ``tokenizer.json`` and, when present,
``tokenizer_config.json``, plus the eos/framing choice) enters the prepared dataset's fingerprint,
so a changed tokenizer prepares a new dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np

from lm.sharding import ConfigError
from tokenization.bytes import EOS_ID, PAD_ID, VOCAB_SIZE

TOKENIZER_FILE = "tokenizer.json"
HASHED_FILES = (TOKENIZER_FILE, "tokenizer_config.json")  # what changes the ids of a text


def special_ids(tok) -> tuple[int, int]:
    """``(eos_id, pad_id)`` of an ``HFTokenizer``: its eos (else the smallest generation eos),
    its pad (else the eos). Raises ``ConfigError`` when it defines no eos at all."""
    eos = tok.eos_id if tok.eos_id is not None else min(tok.eos_ids, default=None)
    if eos is None:
        raise ConfigError(f"tokenizer in {tok.directory} defines no eos token (tokenizer_config."
                          "json eos_token or generation_config.json eos_token_id); documents "
                          "could not be separated and sampling could never stop")
    return int(eos), int(tok.pad_id if tok.pad_id is not None else eos)


@dataclasses.dataclass(frozen=True)
class DataTokenizer:
    """What preparation and packing need of a tokenizer (``hf`` is None for bytes)."""

    vocab_size: int
    eos_id: int
    pad_id: int
    digest: str = ""  # "" for bytes: fingerprints stay what they were
    hf: object = dataclasses.field(default=None, compare=False, repr=False)
    appends_eos: bool = False  # the post-processor already ends a document with eos

    def encode_docs(self, docs: list[bytes]) -> list[np.ndarray]:
        """int32 ids of each document, framed as the module docstring says, eos-ended."""
        if self.hf is None:
            return [np.append(np.frombuffer(d, np.uint8).astype(np.int32), np.int32(EOS_ID))
                    for d in docs]
        texts = [d.decode("utf-8", errors="replace") for d in docs]
        ids = self.hf.encode_batch(texts, add_special_tokens=True)
        if self.appends_eos:
            return [np.asarray(x, np.int32) for x in ids]
        return [np.append(np.asarray(x, np.int32), np.int32(self.eos_id)) for x in ids]


BYTES = DataTokenizer(vocab_size=VOCAB_SIZE, eos_id=EOS_ID, pad_id=PAD_ID)


def check_dir(path: str) -> str:
    """Absolute path of a tokenizer dir; one ``ConfigError`` when it holds no tokenizer.json."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(full, TOKENIZER_FILE)):
        raise ConfigError(f"data.tokenizer={path!r}: no {TOKENIZER_FILE} there; give a directory "
                          f"holding a Hugging Face {TOKENIZER_FILE} (a checkpoint directory) or "
                          "leave data.tokenizer empty for byte-level data")
    return full


def load(path: str) -> DataTokenizer:
    """The data tokenizer of ``data.tokenizer=path`` ("" = bytes); raises ``ConfigError``."""
    if not path:
        return BYTES
    full = check_dir(path)
    stamp = tuple((f, os.stat(p).st_size, os.stat(p).st_mtime_ns) for f in HASHED_FILES
                  if os.path.isfile(p := os.path.join(full, f)))
    return _load(full, stamp)


@functools.lru_cache(maxsize=8)
def _load(full: str, stamp: tuple) -> DataTokenizer:
    from tokenization.hf import HFTokenizer
    try:
        tok = HFTokenizer.load(full)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.tokenizer={full!r}: {e}") from None
    eos, pad = special_ids(tok)
    probe_ids = tok.encode("a", add_special_tokens=True)
    bare = tok.encode("a", add_special_tokens=False)
    appends = len(probe_ids) > len(bare) and int(probe_ids[-1]) == eos
    h = hashlib.sha256()
    for name, _, _ in stamp:
        with open(os.path.join(full, name), "rb") as fh:
            h.update(name.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    h.update(f"eos={eos}:appends={appends}:specials=post-processor".encode())
    return DataTokenizer(vocab_size=int(tok.vocab_size), eos_id=eos, pad_id=pad,
                         digest=h.hexdigest()[:16], hf=tok, appends_eos=appends)
