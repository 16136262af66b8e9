"""The curriculum vocabulary as a trie of left-branching merges, and its fast greedy encoder.

Vocabulary (spec §1): ids ``0..C-1`` are the characters of a ``CharTokenizer``, then its two
specials, then merged tokens in creation order (a new token's id is the current size). Every
merged token records the pair ``(left, right)`` it was made from with ``str(new) = str(left) +
str(right)``; ``merges`` is bookkeeping only, encoding never reads it.

Encoder (spec §1, the reference's default ``mode="trie"``), on a working list of ids that starts
as the character ids::

    pos = 0
    while pos + 1 < len(ids):
        s = str(ids[pos]) + str(ids[pos+1]); if s is not a token: pos += 1; continue
        extend s by str(ids[pos+2]), str(ids[pos+3]), ... while every extension is a token
        replace the matched span by the longest (last) match; pos = max(0, pos - 1)

Implementation (numba, measured in ``benchmarks/bench_tokenize.py``):
- The character trie is flattened into arrays: an open-addressing hash ``(node, char) -> child``
  (int64 keys, power-of-two table at most half full), ``node_token`` (token ending at a node, or
  -1) and ``token_node`` (the node of every token). Checking ``str(a) + str(b)`` starts at
  ``token_node[a]`` and walks only the characters of ``b``.
- The working list is a doubly linked list over the input positions, so a merge is O(1) and the
  step back is ``prev[pos]`` (the reference slices a Python list, O(n) per merge).
- Specials are barriers: they never merge. (The reference concatenates their display strings;
  that differs only if a merged token's text contains a special's literal, which the expansion
  rule never creates because groups reset at specials.)
- Long texts are cut into chunks at spaces, with every space kept at the end of its chunk, so the
  chunks concatenate back to the text exactly; chunks are encoded in parallel (``prange``). The
  reference drops the last token of every chunk and the space between chunks (spec §7.4); this
  port does not. ``chunk_chars=0`` encodes the whole text as one sequence.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba as nb
import numpy as np

from tokenization.chars import CharTokenizer

_HASH_MUL = np.int64(0x9E3779B97F4A7C15 - (1 << 64))  # Fibonacci hashing constant, as int64


@nb.njit(cache=True, inline="always")
def _child(node, c, n_chars, keys, vals, mask):
    key = node * n_chars + c
    h = (key * _HASH_MUL) >> 20 & mask
    while True:
        k = keys[h]
        if k == key:
            return vals[h]
        if k == -1:
            return -1
        h = (h + 1) & mask


@nb.njit(cache=True)
def _encode_span(ids_T, out_T, is_special_V, tok_off_V1, tok_chr, token_node_V, node_token_N,
                 n_chars, keys, vals, mask):
    """Greedy trie encoding of ``ids_T`` into ``out_T``; returns the number of output ids."""
    n = ids_T.shape[0]
    if n == 0:
        return 0
    val = ids_T.copy()
    nxt = np.arange(1, n + 1).astype(np.int64)
    nxt[n - 1] = -1
    prv = np.arange(-1, n - 1).astype(np.int64)
    cur = 0
    while cur != -1:
        b = nxt[cur]
        if b == -1:
            break
        va = val[cur]
        if is_special_V[va] or is_special_V[val[b]]:
            cur = b
            continue
        node = token_node_V[va]
        best, end, e = -1, -1, b
        while e != -1:
            ve = val[e]
            if is_special_V[ve]:
                break
            for j in range(tok_off_V1[ve], tok_off_V1[ve + 1]):
                node = _child(node, tok_chr[j], n_chars, keys, vals, mask)
                if node < 0:
                    break
            if node < 0 or node_token_N[node] < 0:
                break
            best, end = node_token_N[node], e
            e = nxt[e]
        if best < 0:
            cur = b
            continue
        val[cur] = best
        after = nxt[end]
        nxt[cur] = after
        if after != -1:
            prv[after] = cur
        if prv[cur] != -1:
            cur = prv[cur]
    k, i = 0, 0
    while i != -1:
        out_T[k] = val[i]
        k += 1
        i = nxt[i]
    return k


def _encode_chunks_py(ids_T, starts_K1, is_special_V, tok_off_V1, tok_chr, token_node_V,
                   node_token_N, n_chars, keys, vals, mask):
    out_T = np.empty_like(ids_T)
    n_K = np.zeros(starts_K1.shape[0] - 1, np.int64)
    for k in nb.prange(starts_K1.shape[0] - 1):
        a, b = starts_K1[k], starts_K1[k + 1]
        n_K[k] = _encode_span(ids_T[a:b], out_T[a:b], is_special_V, tok_off_V1, tok_chr,
                              token_node_V, node_token_N, n_chars, keys, vals, mask)
    total = 0
    for k in range(n_K.shape[0]):  # compact in place, chunk by chunk, left to right
        a = starts_K1[k]
        for j in range(n_K[k]):
            out_T[total + j] = out_T[a + j]
        total += n_K[k]
    return out_T[:total].copy()


_encode_chunks_parallel = nb.njit(cache=True, parallel=True)(_encode_chunks_py)
_encode_chunks_serial = nb.njit(cache=True)(_encode_chunks_py)
PARALLEL_MIN_CHARS = 1 << 16  # below this, thread start-up costs more than it saves


@nb.njit(cache=True)
def _chunk_starts(is_space_T, chunk_chars):
    """Chunk boundaries: greedy packing of space-terminated words into <= chunk_chars chars
    (a single longer word becomes its own chunk)."""
    n = is_space_T.shape[0]
    starts = [0]
    start, last_cut = 0, -1
    for i in range(n):
        if is_space_T[i]:
            if i + 1 - start > chunk_chars and last_cut > start:
                starts.append(last_cut)
                start = last_cut
            last_cut = i + 1
    if n - start > chunk_chars and start < last_cut < n:
        starts.append(last_cut)
    starts.append(n)
    return np.array(starts, np.int64)


class TokenTrie:
    """Token strings by id (creation order), a character trie, merges, and the fast encoder."""

    def __init__(self, base: CharTokenizer):
        self.base = base
        self.tokens: list[str] = [base.id_to_str(i) for i in range(base.vocab_size)]
        self.token2id: dict[str, int] = {s: i for i, s in enumerate(self.tokens[:base.n_chars])}
        self.merges: dict[tuple[int, int], int] = {}  # (left, right) -> new, creation order
        self._arrays = None

    # ------------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_base(self) -> int:
        return self.base.vocab_size

    @property
    def special_ids(self) -> tuple[int, ...]:
        return self.base.special_ids

    def add_merge(self, left: int, right: int) -> tuple[int, bool]:
        """Id of ``str(left) + str(right)``: the existing one if that string is already a token
        (whatever pair made it; the reference's bug §7.3), else a new id. Returns (id, is_new)."""
        left, right = int(left), int(right)
        for i in (left, right):
            if not 0 <= i < len(self.tokens) or i in self.special_ids:
                raise ValueError(f"cannot merge id {i}: not a non-special token of this vocab")
        s = self.tokens[left] + self.tokens[right]
        if s in self.token2id:
            return self.token2id[s], False
        new = len(self.tokens)
        self.tokens.append(s)
        self.token2id[s] = new
        self.merges[(left, right)] = new
        self._arrays = None
        return new, True

    def truncate(self, size: int) -> None:
        """Keep ids < ``size`` (LIFO): later tokens and the merges that made them go."""
        if not self.n_base <= size <= len(self.tokens):
            raise ValueError(f"truncate size {size} must be in [{self.n_base}, {len(self.tokens)}]")
        for s in self.tokens[size:]:
            del self.token2id[s]
        del self.tokens[size:]
        self.merges = {p: v for p, v in self.merges.items() if v < size}
        self._arrays = None

    def lengths(self) -> np.ndarray:
        """Characters per token ``len_V`` (int32; specials count 0)."""
        out = np.array([len(s) for s in self.tokens], np.int32)
        out[list(self.special_ids)] = 0
        return out

    # ------------------------------------------------------------------ flat arrays

    def arrays(self):
        """Flattened trie for the numba encoder (rebuilt lazily after a change)."""
        if self._arrays is None:
            self._arrays = self._build_arrays()
        return self._arrays

    def _build_arrays(self):
        C = self.base.n_chars
        V = len(self.tokens)
        special_V = np.zeros(V, np.bool_)
        special_V[list(self.special_ids)] = True
        chr_lists = [[] if special_V[v] else self.base.encode(s).tolist()
                     for v, s in enumerate(self.tokens)]
        tok_off_V1 = np.zeros(V + 1, np.int64)
        tok_off_V1[1:] = np.cumsum([len(c) for c in chr_lists])
        tok_chr = np.array([c for cs in chr_lists for c in cs], np.int64)
        edges: dict[tuple[int, int], int] = {}
        node_token = [-1]
        token_node_V = np.zeros(V, np.int64)
        for v, cs in enumerate(chr_lists):
            node = 0
            for c in cs:
                child = edges.get((node, c))
                if child is None:
                    child = edges[(node, c)] = len(node_token)
                    node_token.append(-1)
                node = child
            if cs:
                node_token[node] = v
            token_node_V[v] = node
        cap = 1 << max(4, (2 * len(edges) + 1).bit_length())
        keys = np.full(cap, -1, np.int64)
        vals = np.full(cap, -1, np.int64)
        if edges:
            k_E = np.array([n * C + c for n, c in edges], np.int64)
            v_E = np.array(list(edges.values()), np.int64)
            _fill_hash(k_E, v_E, keys, vals, cap - 1)
        return (special_V, tok_off_V1, tok_chr, token_node_V, np.array(node_token, np.int64),
                np.int64(C), keys, vals, np.int64(cap - 1))

    # ------------------------------------------------------------------ encode / decode

    def encode_ids(self, char_ids_T: np.ndarray, chunk_chars: int = 0) -> np.ndarray:
        """Greedy trie encoding of character ids (int32 in, int32 out)."""
        ids_T = np.ascontiguousarray(char_ids_T, dtype=np.int64)
        if chunk_chars > 0:
            space = self.token2id.get(" ", -1)
            starts = _chunk_starts(ids_T == space, int(chunk_chars))
        else:
            starts = np.array([0, len(ids_T)], np.int64)
        fn = (_encode_chunks_parallel if len(starts) > 2 and len(ids_T) >= PARALLEL_MIN_CHARS
              else _encode_chunks_serial)
        return fn(ids_T, starts, *self.arrays()).astype(np.int32)

    def encode(self, text: str, chunk_chars: int = 0) -> np.ndarray:
        return self.encode_ids(self.base.encode(text), chunk_chars)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids`` (specials and out-of-range ids skipped), vectorized CSR gather."""
        ids_T = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids_T = ids_T[(ids_T >= 0) & (ids_T < len(self.tokens))]
        _, tok_off_V1, tok_chr, *_ = self.arrays()
        n_T = tok_off_V1[ids_T + 1] - tok_off_V1[ids_T]
        starts_T = tok_off_V1[ids_T]
        seg_T = np.repeat(np.cumsum(n_T) - n_T, n_T)
        pos = np.repeat(starts_T, n_T) + (np.arange(int(n_T.sum())) - seg_T)
        return self.base.decode(tok_chr[pos])


@nb.njit(cache=True)
def _fill_hash(k_E, v_E, keys, vals, mask):
    for i in range(k_E.shape[0]):
        h = (k_E[i] * _HASH_MUL) >> 20 & mask
        while keys[h] != -1:
            h = (h + 1) & mask
        keys[h] = k_E[i]
        vals[h] = v_E[i]
