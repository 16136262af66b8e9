"""Document-masked packing: segment ids, per-document positions and boundary masks (numpy).

Two ways rows get several documents, both producing the same batch keys
(``inputs``/``targets``/``mask`` plus ``segment_ids``/``positions``, all [.., L]):

- **Stream windows** (``document_layout``; pretraining, ``data.packing="document"``): a window of
  the concatenated token stream, where ``<eos>`` *ends* every document. Input ``t`` starts a new
  segment when input ``t-1`` is ``<eos>``; a window that starts mid-document starts a segment
  there (its earlier context is out of the window anyway). The target of an ``<eos>`` input is
  the first token of the *next* document, which the model cannot see under the document mask:
  that target is masked (``mask = 0``), so each document's first token is never a target, exactly
  as when the document is run alone.
- **Examples** (``pack_examples``; SFT): already shifted ``(inputs, targets, mask)`` triples are
  placed next to each other in rows (next-fit, in order); each triple is one segment, so no
  target crosses a boundary and nothing extra is masked.

``segment_ids`` are 1, 2, ... per row and 0 on padding; ``positions`` count from 0 within each
segment (padding counts on from its own start, so learned position tables stay in range). The
model attends where ``causal & same segment`` (``lm.layers``). ``concat`` packing adds none of
these keys (today's batches, unchanged).
"""

from __future__ import annotations

import numpy as np

PACKINGS = ("concat", "document")


def positions_from_segments(segment_ids_L: np.ndarray) -> np.ndarray:
    """0-based position of each entry within its run of equal segment ids (1-D, int32)."""
    seg = np.asarray(segment_ids_L)
    n = seg.shape[0]
    idx = np.arange(n)
    start = np.ones(n, bool)
    start[1:] = seg[1:] != seg[:-1]
    first = np.maximum.accumulate(np.where(start, idx, 0))
    return (idx - first).astype(np.int32)


def document_layout(inputs_L: np.ndarray, n_valid: int, eos_id: int):
    """``(segment_ids_L, positions_L, keep_L)`` of one stream window's inputs.

    ``n_valid``: inputs ``[0, n_valid)`` are real tokens, the rest padding (segment 0).
    ``keep_L`` is False where the target is the first token of the next document (the input is
    ``<eos>``); multiply it into the window's loss mask."""
    x = np.asarray(inputs_L)
    is_eos = x == eos_id
    seg = 1 + np.concatenate([[0], np.cumsum(is_eos[:-1], dtype=np.int64)])
    seg[n_valid:] = 0
    return seg.astype(np.int32), positions_from_segments(seg), ~is_eos


def pack_examples(examples, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pack shifted examples into rows of ``seq_len`` (next-fit, order kept).

    ``examples``: iterable of ``(inputs_T, targets_T, mask_T)`` with ``1 <= T <= seq_len``.
    Returns ``inputs``/``targets`` (int32), ``mask`` (float32), ``segment_ids``/``positions``
    (int32), each [R, seq_len]; padding has ``pad_id``, mask 0 and segment 0."""
    rows: list[list[tuple]] = []
    used = seq_len + 1  # forces a first row
    for i, (inp, tgt, msk) in enumerate(examples):
        n = len(inp)
        if not 1 <= n <= seq_len or len(tgt) != n or len(msk) != n:
            raise ValueError(f"example {i}: inputs/targets/mask lengths {len(inp)}/{len(tgt)}/"
                             f"{len(msk)} must be equal and in 1..seq_len={seq_len}")
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((inp, tgt, msk))
        used += n
    R = len(rows)
    out = {"inputs": np.full((R, seq_len), pad_id, np.int32),
           "targets": np.full((R, seq_len), pad_id, np.int32),
           "mask": np.zeros((R, seq_len), np.float32),
           "segment_ids": np.zeros((R, seq_len), np.int32)}
    for r, row in enumerate(rows):
        at = 0
        for s, (inp, tgt, msk) in enumerate(row, 1):
            n = len(inp)
            out["inputs"][r, at: at + n] = inp
            out["targets"][r, at: at + n] = tgt
            out["mask"][r, at: at + n] = msk
            out["segment_ids"][r, at: at + n] = s
            at += n
    out["positions"] = np.stack([positions_from_segments(s) for s in out["segment_ids"]]) \
        if R else np.zeros((0, seq_len), np.int32)
    return out


def check_packing(packing: str, key: str = "data.packing") -> None:
    from lm.sharding import ConfigError
    if packing not in PACKINGS:
        raise ConfigError(f"{key}={packing!r} is not one of {list(PACKINGS)}")
