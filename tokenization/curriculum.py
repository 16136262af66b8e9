"""Entropy-guided vocabulary curriculum (Yu, arXiv 2502.17910): the expansion rule of spec §2 as
pure functions over arrays, LIFO truncation, the log-spaced schedule, and ``CurriculumTokenizer``.

Expansion from a model and windows of the current token stream (spec §2.1-2.6):

1. ``surprisal_BxT1``: the realized-token NLL in nats, ``l_0 = 0`` and ``l_t = -ln p(s_t|s_<t)``
   (not the entropy of the predictive distribution; the paper says "entropy", the code uses this).
2. ``row_thresholds``: ``thr_b = min(quantile_q(l_b), tau)`` over the row including ``l_0``
   (linear interpolation, as ``torch.quantile``).
3. ``group_spans``: a group is a head position followed by positions with ``l_t < thr`` and
   ``l_t <= l_{t-1}``; a special closes the group and starts none; groups shorter than 2 are
   dropped. Vectorized: a group starts wherever that continuation test fails, at t = 0, at a
   special and right after one; a cumulative sum then labels the runs.
4. ``pool_tuples``: distinct id tuples with counts, pooled over batches until >= M distinct.
5. ``select_tuples``: M tuples drawn uniformly without replacement, ignoring counts and losses as
   the reference does, but **seeded** (the reference shuffles with unseeded ``random``, §7.6) and
   from a canonical (sorted) order so a seed fixes the result.
6. ``prefix_merges``: tuple ``(g0..gk)`` adds ``g0g1, (g0g1)g2, ...``; a prefix whose string is
   already a token **reuses that id** (the reference's bug §7.3 turned the prefix into None).
   For every new id it returns the right component, whose embedding/unembedding row the new row
   copies (``lm.vocab_growth.grow_params``), so the new token starts with exactly its logit.
   ``CurriculumTokenizer.propose`` is this tokenizer side; the model side (the surprisal pass and
   the row growth) is ``lm.vocab_growth.expand(tok, params, ...)``: tokenization imports no model.

Truncation is LIFO (ids, rows, merges with id >= V go); ``log_spaced_sizes`` gives the scale-down
targets. Choices the spec leaves open: a tuple is sorted into the pool once per occurrence; the
windows are drawn by the caller (the experiment: seeded random windows of T+1 tokens).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable

import numpy as np

from tokenization.chars import CharTokenizer
from tokenization.trie import TokenTrie

# ----------------------------------------------------------------------------- pure functions


def surprisal_BxT1(nll_BxT: np.ndarray) -> np.ndarray:
    """Per-position surprisal of a window of T+1 tokens: 0 at t=0, then the NLL of token t."""
    nll_BxT = np.asarray(nll_BxT, np.float64)
    return np.concatenate([np.zeros((nll_BxT.shape[0], 1)), nll_BxT], axis=1)


def row_thresholds(loss_BxT: np.ndarray, q: float = 0.6, tau: float = 0.3) -> np.ndarray:
    """``thr_b = min(quantile_q(loss_b), tau)``."""
    return np.minimum(np.quantile(np.asarray(loss_BxT, np.float64), q, axis=1), tau)


def group_spans(loss_BxT: np.ndarray, special_BxT: np.ndarray, thr_B: np.ndarray):
    """Groups of spec §2.3 as ``(row_G, start_G, length_G)`` (length >= 2, row-major order)."""
    loss_BxT = np.asarray(loss_BxT, np.float64)
    special_BxT = np.asarray(special_BxT, bool)
    B, T = loss_BxT.shape
    if T == 0:
        return (np.zeros(0, np.int64),) * 3
    prev_BxT = np.concatenate([np.full((B, 1), np.inf), loss_BxT[:, :-1]], axis=1)
    cont_BxT = (loss_BxT < thr_B[:, None]) & (loss_BxT <= prev_BxT)
    prev_special = np.concatenate([np.ones((B, 1), bool), special_BxT[:, :-1]], axis=1)
    start_BxT = ~cont_BxT | special_BxT | prev_special  # t = 0 is covered by prev_special
    label = np.cumsum(start_BxT.reshape(-1)) - 1  # run id of every flat position
    n_runs = int(label[-1]) + 1
    length = np.bincount(label, minlength=n_runs)
    has_special = np.bincount(label, weights=special_BxT.reshape(-1), minlength=n_runs) > 0
    first = np.flatnonzero(start_BxT.reshape(-1))
    keep = (length >= 2) & ~has_special
    return first[keep] // T, first[keep] % T, length[keep]


def group_tuples(ids_BxT, loss_BxT, is_special_V, q: float = 0.6, tau: float = 0.3):
    """The id tuple of every group in every row (spec §2.2-2.3), in row-major order."""
    ids_BxT = np.asarray(ids_BxT)
    special_BxT = np.asarray(is_special_V)[ids_BxT]
    row, start, length = group_spans(loss_BxT, special_BxT, row_thresholds(loss_BxT, q, tau))
    return [tuple(ids_BxT[r, s:s + n].tolist()) for r, s, n in zip(row, start, length)]


def pool_tuples(pool: dict, tuples: Iterable[tuple]) -> dict:
    """Add occurrence counts of ``tuples`` to a copy of ``pool``."""
    out = dict(pool)
    for t in tuples:
        out[t] = out.get(t, 0) + 1
    return out


def select_tuples(pool: dict, M: int, seed: int) -> list[tuple]:
    """``M`` distinct tuples uniformly without replacement (all of them if fewer), seeded."""
    keys = sorted(pool)
    order = np.random.default_rng(seed).permutation(len(keys))[:M]
    return [keys[i] for i in order]


def prefix_merges(trie: TokenTrie, tuples: Iterable[tuple]):
    """Add the left-branching prefixes of every tuple to ``trie`` (in place).

    Returns ``(new_ids, right_ids, n_reused)``: the ids created, in order, the right component of
    each, and how many prefixes were already tokens (reused by string lookup)."""
    new_ids, right_ids, reused = [], [], 0
    for tup in tuples:
        prefix = tup[0]
        for r in tup[1:]:
            prefix, is_new = trie.add_merge(prefix, r)
            if is_new:
                new_ids.append(prefix)
                right_ids.append(r)
            else:
                reused += 1
    return np.array(new_ids, np.int64), np.array(right_ids, np.int64), reused


def log_spaced_sizes(v_from: int, v_to: int, n: int) -> list[int]:
    """``n`` vocabulary sizes from ``v_from`` to ``v_to`` (both included), evenly spaced in log V,
    rounded and de-duplicated (the scale-down schedule)."""
    if n < 2 or v_from < 1 or v_to < 1:
        raise ValueError("log_spaced_sizes needs n >= 2 and positive sizes")
    sizes = np.rint(np.geomspace(v_from, v_to, n)).astype(int).tolist()
    return list(dict.fromkeys(sizes))


# ----------------------------------------------------------------------------- tokenizer


class CurriculumTokenizer:
    """A growing character-level vocabulary: encode/decode, expand, truncate, save/load JSON.

    ``stage_V`` records the stage at which each id entered (0 for the base vocabulary)."""

    def __init__(self, trie: TokenTrie, stage_V: list[int] | None = None):
        self.trie = trie
        self.stage_V = list(stage_V) if stage_V is not None else [0] * len(trie)

    @classmethod
    def from_text(cls, text: str) -> CurriculumTokenizer:
        return cls(TokenTrie(CharTokenizer.from_text(text)))

    # --------------------------------------------------------------- basics

    @property
    def vocab_size(self) -> int:
        return len(self.trie)

    @property
    def base(self) -> CharTokenizer:
        return self.trie.base

    @property
    def eos_id(self) -> int:
        return self.base.eos_id

    @property
    def pad_id(self) -> int:
        return self.base.pad_id

    @property
    def stage(self) -> int:
        return max(self.stage_V)

    def is_special_V(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, bool)
        out[list(self.trie.special_ids)] = True
        return out

    def lengths(self) -> np.ndarray:
        return self.trie.lengths()

    def encode(self, text: str, chunk_chars: int = 0) -> np.ndarray:
        return self.trie.encode(text, chunk_chars)

    def encode_ids(self, char_ids_T: np.ndarray, chunk_chars: int = 0) -> np.ndarray:
        return self.trie.encode_ids(char_ids_T, chunk_chars)

    def decode(self, ids) -> str:
        return self.trie.decode(ids)

    def copy(self) -> CurriculumTokenizer:
        trie = copy.copy(self.trie)
        trie.tokens, trie.token2id = list(trie.tokens), dict(trie.token2id)
        trie.merges, trie._arrays = dict(trie.merges), None
        return CurriculumTokenizer(trie, self.stage_V)

    # --------------------------------------------------------------- curriculum

    def add_groups(self, tuples: Iterable[tuple]):
        """A new tokenizer with the prefix merges of ``tuples`` (one stage later)."""
        tok = self.copy()
        new_ids, right_ids, reused = prefix_merges(tok.trie, tuples)
        tok.stage_V += [self.stage + 1] * len(new_ids)
        return tok, new_ids, right_ids, reused

    def propose(self, params, batches, *, nll_fn, M: int = 3000, tau: float = 0.3,
                q: float = 0.6, seed: int = 0):
        """The tokenizer side of one curriculum step: ``(tok2, right_ids, report)``.

        ``batches`` yields int windows ``[B, T+1]`` of this tokenizer's stream; ``nll_fn(params,
        inputs_BxT, targets_BxT) -> nll_BxT`` is the model side (``lm.vocab_growth.make_nll_fn``);
        tuples are pooled over batches until >= ``M`` distinct. ``right_ids`` says which row each
        new id copies; ``lm.vocab_growth.expand`` grows the parameters from it."""
        special_V, pool, n_batches = self.is_special_V(), {}, 0
        for w_BxT1 in batches:
            w_BxT1 = np.asarray(w_BxT1)
            nll_BxT = np.asarray(nll_fn(params, w_BxT1[:, :-1], w_BxT1[:, 1:]))
            pool = pool_tuples(pool, group_tuples(w_BxT1, surprisal_BxT1(nll_BxT), special_V,
                                                  q, tau))
            n_batches += 1
            if len(pool) >= M:
                break
        chosen = select_tuples(pool, M, seed)
        tok, new_ids, right_ids, reused = self.add_groups(chosen)
        report = {"stage": tok.stage, "batches": n_batches, "candidates": len(pool),
                  "selected": len(chosen), "added": len(new_ids), "reused": reused,
                  "vocab_size": tok.vocab_size, "mean_token_len": tok.mean_token_len()}
        return tok, right_ids, report

    def truncate(self, size: int) -> CurriculumTokenizer:
        """LIFO scale-down to ``size`` ids (``lm.vocab_growth.truncate`` also cuts the params).
        Truncating right after an expansion restores the earlier tokenizer exactly."""
        tok = self.copy()
        tok.trie.truncate(size)
        tok.stage_V = tok.stage_V[:size]
        return tok

    def mean_token_len(self) -> float:
        """Mean characters per non-special token of the vocabulary."""
        len_V = self.lengths()
        return float(len_V[~self.is_special_V()].mean())

    # --------------------------------------------------------------- persistence

    def to_json(self) -> dict:
        n0 = self.trie.n_base
        return {"format": "vocab_curriculum/1", "base": self.base.to_json(),
                "merges": [[l, r, v] for (l, r), v in sorted(self.trie.merges.items(),
                                                             key=lambda kv: kv[1])],
                "tokens": self.trie.tokens[n0:], "stage": self.stage_V[n0:]}

    @classmethod
    def from_json(cls, d: dict) -> CurriculumTokenizer:
        if d.get("format") != "vocab_curriculum/1":
            raise ValueError(f"not a vocab_curriculum tokenizer file (format={d.get('format')})")
        tok = cls(TokenTrie(CharTokenizer.from_json(d["base"])))
        for l, r, v in d["merges"]:
            new, is_new = tok.trie.add_merge(l, r)
            if new != v or not is_new:
                raise ValueError(f"merge ({l}, {r}) -> {v} does not replay (got {new})")
        if tok.trie.tokens[tok.trie.n_base:] != d["tokens"]:
            raise ValueError("token strings do not match the replayed merges")
        tok.stage_V = tok.stage_V[:tok.trie.n_base] + list(d["stage"])
        return tok

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str) -> CurriculumTokenizer:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))

    def __eq__(self, other) -> bool:
        return isinstance(other, CurriculumTokenizer) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"CurriculumTokenizer(vocab_size={self.vocab_size}, stage={self.stage})"
