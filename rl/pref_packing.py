"""Document-packed preference batches: K pairs per row, gathered back to one row per pair.

    pb = pack_pairs(ct_NxS, cm_NxS, clen_N, rt_NxS, rm_NxS, rlen_N, row_len=32, slots=4,
                    pad_id=0, row_multiple=2)
    loss, aux = rl.losses.LOSSES["dpo"](params, {**pb, "loss_state": ...}, model=gd, cfg=cfg)

Layout (R packed rows, K slots, S = the unpacked width; all row-aligned on axis 0, so
micro-batching and data sharding split them like any batch):

- ``chosen_tokens``/``rejected_tokens`` [R, L] int32: row r of the chosen side holds the chosen
  sequences of the pairs in slots 0..K-1 back to back; the rejected row the corresponding
  rejected sequences (each side packed with its own lengths, so the offsets differ).
- ``{side}_segment_ids``/``{side}_positions`` [R, L] int32 (``lm.packing`` convention: segments
  1, 2, ... per row, 0 on padding; positions restart at 0 per sequence).
- ``{side}_index`` [R, K, S] int32: the *row-local* packed position of unpacked position s of
  slot k (0 where s is past the sequence; the mask is 0 there), so splitting rows keeps every
  index valid.
- ``{side}_mask`` [R, K, S] float32: the completion mask in the unpacked layout (entry s is 1
  when token s is scored), exactly the mask of the unpacked batch.
- ``pair_valid`` [R, K] float32: 1 for a filled slot, 0 for an empty one.

Position 0 of a sequence is never scored (it has no context), so the per-token score gathered
there, which in the packed row was predicted across the boundary, is always masked. Every other
scored token is predicted inside its own segment with restarted positions: the same
computation as the unpacked row. ``rl.losses`` detects the layout by ``pair_valid``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm.packing import positions_from_segments

SIDES = ("chosen", "rejected")


def is_packed(batch) -> bool:
    return "pair_valid" in batch


def _check(i, side, n, row_len, width):
    if not 1 <= n <= min(row_len, width):
        raise ValueError(f"pair {i}: {side} length {n} must be in 1..min(row_len={row_len}, "
                         f"width={width})")


def pack_pairs(chosen_tokens_NxS, chosen_mask_NxS, chosen_len_N, rejected_tokens_NxS,
               rejected_mask_NxS, rejected_len_N, *, row_len: int, slots: int, pad_id: int,
               row_multiple: int = 1) -> dict[str, np.ndarray]:
    """Pack N right-padded pairs into rows of ``row_len`` tokens, at most ``slots`` pairs a row.

    Next-fit in order: a pair joins the current row when both its chosen and its rejected
    sequence still fit their side of the row and a slot is free; otherwise it opens a new row.
    ``*_len_N``: the real length of each sequence (tokens past it are padding and ignored; a
    mask entry past it must be 0). The row count is padded with empty rows (all slots invalid)
    up to a multiple of ``row_multiple`` (data devices x micro-batches)."""
    if slots < 1 or row_len < 2 or row_multiple < 1:
        raise ValueError(f"slots={slots} must be >= 1, row_len={row_len} >= 2, "
                         f"row_multiple={row_multiple} >= 1")
    toks = {"chosen": np.asarray(chosen_tokens_NxS), "rejected": np.asarray(rejected_tokens_NxS)}
    masks = {"chosen": np.asarray(chosen_mask_NxS, np.float32),
             "rejected": np.asarray(rejected_mask_NxS, np.float32)}
    lens = {"chosen": np.asarray(chosen_len_N, np.int64),
            "rejected": np.asarray(rejected_len_N, np.int64)}
    N, S = toks["chosen"].shape
    for side in SIDES:
        if toks[side].shape != (N, S) or masks[side].shape != (N, S) or lens[side].shape != (N,):
            raise ValueError(f"{side}: tokens {toks[side].shape}, mask {masks[side].shape}, "
                             f"lengths {lens[side].shape} must be [N, S], [N, S], [N] with "
                             f"N, S = {N}, {S}")
        for i, n in enumerate(lens[side]):
            _check(i, side, int(n), row_len, S)
            if masks[side][i, 0] != 0 or masks[side][i, n:].any():
                raise ValueError(f"pair {i}: {side} mask must be 0 at position 0 (no context) "
                                 f"and past the sequence length {n}")
    rows: list[list[int]] = []
    used = {s: row_len + 1 for s in SIDES}  # forces a first row
    for i in range(N):
        fits = all(used[s] + lens[s][i] <= row_len for s in SIDES)
        if not fits or len(rows[-1]) == slots:
            rows.append([])
            used = {s: 0 for s in SIDES}
        rows[-1].append(i)
        for s in SIDES:
            used[s] += int(lens[s][i])
    R = -(-len(rows) // row_multiple) * row_multiple
    rows += [[] for _ in range(R - len(rows))]
    out = {"pair_valid": np.zeros((R, slots), np.float32)}
    for side in SIDES:
        t = np.full((R, row_len), pad_id, np.int32)
        seg = np.zeros((R, row_len), np.int32)
        idx = np.zeros((R, slots, S), np.int32)
        msk = np.zeros((R, slots, S), np.float32)
        for r, row in enumerate(rows):
            at = 0
            for k, i in enumerate(row):
                n = int(lens[side][i])
                t[r, at: at + n] = toks[side][i, :n]
                seg[r, at: at + n] = k + 1
                idx[r, k, :n] = at + np.arange(n)
                msk[r, k] = masks[side][i]
                out["pair_valid"][r, k] = 1.0
                at += n
        out[f"{side}_tokens"], out[f"{side}_segment_ids"] = t, seg
        out[f"{side}_positions"] = (np.stack([positions_from_segments(s) for s in seg]) if R
                                    else np.zeros((0, row_len), np.int32))
        out[f"{side}_index"], out[f"{side}_mask"] = idx, msk
    return out


def model_kwargs(batch, tokens_2RxL) -> dict:
    """Segment ids / positions of the concatenated (chosen; rejected) model inputs [2R, L-1]."""
    cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], 0)  # noqa
    return {"segment_ids_BxL": cat("segment_ids")[:, :-1],
            "positions_BxL": cat("positions")[:, :-1]}


def gather_pairs(x_2RxL, batch):
    """Per-token scores of the packed (chosen; rejected) rows -> ``(x_w, x_l)`` [R*K, S]."""
    R = x_2RxL.shape[0] // 2
    out = []
    for h, side in enumerate(SIDES):
        idx_RxKxS = batch[f"{side}_index"]
        _, K, S = idx_RxKxS.shape
        g = jnp.take_along_axis(x_2RxL[h * R:(h + 1) * R], idx_RxKxS.reshape(R, K * S), 1)
        out.append(g.reshape(R * K, S))
    return tuple(out)


def pair_masks(batch):
    """``(mask_w, mask_l, valid)``: [R*K, S], [R*K, S], [R*K]."""
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    return flat(batch["chosen_mask"]), flat(batch["rejected_mask"]), flat(batch["pair_valid"])


def valid_pair_mean(fn, valid_N, *arrays_N, **kw):
    """``fn``'s ``(loss, aux)`` averaged over the valid pairs only.

    ``fn`` is a pure preference loss (mean over its pairs, ``aux`` of ``(sum, count)``); it is
    run per pair (``vmap`` over a batch of one), then each pair's loss and aux sums and counts
    are weighted by ``valid_N``, so an empty slot adds nothing to any sum or count. The loss is
    ``aux["loss"][0] / aux["loss"][1]`` (0 when no pair is valid), as the train step's
    micro-batch weighting expects."""
    one = lambda *a: fn(*(x[None] for x in a), **kw)  # noqa: E731
    loss_N, aux_N = jax.vmap(one)(*arrays_N)
    v = valid_N.astype(jnp.float32)
    aux = {k: ((s * v).sum(), (c * v).sum()) for k, (s, c) in aux_N.items()}
    n = v.sum()
    aux["loss"] = ((loss_N * v).sum(), n)
    return aux["loss"][0] / jnp.maximum(n, 1.0), aux
