"""Bits per character across vocabularies, and the BPC-by-token-length statistic.

``BPC = sum_t NLL(y_t) / sum_t |str(y_t)| / ln 2`` over the *target* tokens (spec §4, the
estimator the paper uses from 2025-02-23 on). Two evaluation sets:

- ``full_windows``: deterministic, the whole held-out stream cut into windows of L+1 tokens with
  stride L (every token after the first is a target exactly once; the tail window is padded and
  masked). Since the targets tile the text, ``sum |str(y_t)|`` is the split's character count minus
  the first token's, so a model that is uniform over characters scores the same BPC under any
  tokenization of the same text (tested).
- ``random_windows``: the paper's variant, ``n`` random windows (10 batches of 256 x 256 there),
  seeded here (the reference is unseeded); BPC is the mean of the per-batch ratios, as in the code.

``token_length_curve`` implements §5 with the **target** token (the correct attribution); the
reference files the loss under the *input* token, available as ``by="input"`` for matching its
figure. Per-type BPC is the mean over occurrences; a length's value is the unweighted mean over the
types of that length, with the standard deviation across types.
"""

from __future__ import annotations

import math

import numpy as np


def full_windows(stream_T: np.ndarray, L: int, pad_id: int) -> dict[str, np.ndarray]:
    """Every target of ``stream_T`` exactly once: ``inputs/targets/mask`` of shape [N, L]."""
    stream_T = np.asarray(stream_T, np.int32)
    n_tgt = max(len(stream_T) - 1, 0)
    N = -(-n_tgt // L)
    padded = np.full(N * L + 1, pad_id, np.int32)
    padded[:len(stream_T)] = stream_T
    idx_NxL1 = np.arange(N)[:, None] * L + np.arange(L + 1)[None, :]
    w = padded[idx_NxL1]
    mask = (idx_NxL1[:, 1:] < len(stream_T)).astype(np.float32)
    return {"inputs": w[:, :-1], "targets": w[:, 1:], "mask": mask}


def random_windows(stream_T: np.ndarray, n: int, L: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` windows of L+1 tokens at seeded uniform random offsets (all targets counted)."""
    stream_T = np.asarray(stream_T, np.int32)
    if len(stream_T) < L + 1:
        raise ValueError(f"stream of {len(stream_T)} tokens is shorter than a window ({L + 1})")
    starts_N = np.random.default_rng(seed).integers(0, len(stream_T) - L, n)
    w = stream_T[starts_N[:, None] + np.arange(L + 1)[None, :]]
    return {"inputs": w[:, :-1], "targets": w[:, 1:], "mask": np.ones((n, L), np.float32)}


def token_nll(nll_fn, params, windows: dict, batch_size: int) -> np.ndarray:
    """``nll_NxL`` of every window, in batches of ``batch_size`` (the tail batch is padded so one
    compiled shape serves all batches)."""
    N = len(windows["inputs"])
    out = []
    for a in range(0, N, batch_size):
        x, y = windows["inputs"][a:a + batch_size], windows["targets"][a:a + batch_size]
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, 0)])
            y = np.concatenate([y, np.repeat(y[-1:], batch_size - n, 0)])
        out.append(np.asarray(nll_fn(params, x, y), np.float64)[:n])
    return np.concatenate(out) if out else np.zeros((0, windows["inputs"].shape[1]))


def bpc(nll_NxL: np.ndarray, targets_NxL: np.ndarray, mask_NxL: np.ndarray,
        len_V: np.ndarray) -> dict:
    """Sums and the ratio: ``{"bpc", "nll_sum", "chars", "tokens"}``."""
    m = np.asarray(mask_NxL, np.float64)
    nll_sum = float((np.asarray(nll_NxL, np.float64) * m).sum())
    chars = float((np.asarray(len_V)[targets_NxL] * m).sum())
    return {"bpc": nll_sum / max(chars, 1.0) / math.log(2), "nll_sum": nll_sum, "chars": chars,
            "tokens": float(m.sum())}


def bpc_batch_mean(nll_NxL, targets_NxL, len_V, batch_size: int) -> float:
    """The reference's estimator on random windows: mean over batches of per-batch BPC."""
    vals = []
    for a in range(0, len(nll_NxL), batch_size):
        sl = slice(a, a + batch_size)
        vals.append(bpc(nll_NxL[sl], targets_NxL[sl], np.ones(nll_NxL[sl].shape),
                        len_V)["bpc"])
    return float(np.mean(vals))


def token_length_curve(nll_N, inputs_N, targets_N, len_V, *, by: str = "target") -> dict:
    """Per character length: mean and sample std (``ddof=1``; 0.0 for a single type, where it is
    undefined) over token types of the per-type mean BPC.

    Returns ``{length: (mean, std, n_types)}``; tokens of length 0 (specials) are skipped."""
    if by not in ("target", "input"):
        raise ValueError(f"by={by!r} is not one of ('target', 'input')")
    tok_N = np.asarray(targets_N if by == "target" else inputs_N, np.int64).reshape(-1)
    len_V = np.asarray(len_V)
    nll_N = np.asarray(nll_N, np.float64).reshape(-1)
    keep = len_V[tok_N] > 0
    tok_N, nll_N = tok_N[keep], nll_N[keep]
    per_char_N = nll_N / len_V[tok_N] / math.log(2)
    V = len(len_V)
    cnt_V = np.bincount(tok_N, minlength=V)
    mean_V = np.bincount(tok_N, weights=per_char_N, minlength=V) / np.maximum(cnt_V, 1)
    out = {}
    for length in np.unique(len_V[cnt_V > 0]):
        sel = (cnt_V > 0) & (len_V == length)
        n = int(sel.sum())
        sd = float(mean_V[sel].std(ddof=1)) if n > 1 else 0.0
        out[int(length)] = (float(mean_V[sel].mean()), sd, n)
    return out
