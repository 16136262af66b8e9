"""Character-set tokenizer: the sorted characters of a corpus, then the specials.

This is the base vocabulary V0 of the vocabulary curriculum (spec §1): ids ``0..C-1`` are the
sorted distinct characters of the corpus (so "\\n" < " " < ... as in the paper's 90-character
enwik8 set), ``C`` is ``<|endoftext|>`` and ``C+1`` is ``<pad>``; |V0| = C + 2 (92 on enwik8).

Design choices:
- ``encode`` never parses special-token *text*: a literal "<pad>" in the input is five characters.
  Specials enter only as ids (``add_eos``) and ``decode`` skips them, so
  ``decode(encode(s)) == s`` exactly for every ``s`` over the character set (the original parses
  special literals out of the text, which breaks that round trip for such strings).
- A character outside the set raises ``ValueError`` naming it (there is no ``<unk>``: an unknown
  character means the set was built from the wrong corpus, and silently mapping it would change
  BPC). Build the set from the whole corpus, as the paper does.
- Vectorized: encoding is one ``np.searchsorted`` over the code points (no Python loop per char).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

SPECIALS = ("<|endoftext|>", "<pad>")


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as int32 (vectorized through UTF-32)."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), np.uint32).astype(
        np.int64)


class CharTokenizer:
    """Sorted character set + ``<|endoftext|>`` + ``<pad>``."""

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer chars must be single characters")
        self.chars: list[str] = chars
        self.cp_C = np.array([ord(c) for c in chars], np.int64)  # sorted code points
        self.eos_id = len(chars)
        self.pad_id = len(chars) + 1

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(set(text))

    @property
    def n_chars(self) -> int:
        return len(self.chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(SPECIALS)

    @property
    def specials(self) -> dict[str, int]:
        return {s: self.n_chars + i for i, s in enumerate(SPECIALS)}

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(self.specials.values())

    def id_to_str(self, i: int) -> str:
        return self.chars[i] if i < self.n_chars else SPECIALS[i - self.n_chars]

    def encode(self, text: str, add_eos: bool = False) -> np.ndarray:
        """Character ids (int32) of ``text``; raises ValueError on a character outside the set."""
        cp_T = codepoints(text)
        idx_T = np.searchsorted(self.cp_C, cp_T)
        bad = (idx_T >= len(self.cp_C)) | (self.cp_C[np.minimum(idx_T, len(self.cp_C) - 1)]
                                           != cp_T)
        if bad.any():
            unknown = sorted({chr(c) for c in cp_T[bad]})[:10]
            raise ValueError(f"characters not in the tokenizer's set: {unknown!r}")
        ids_T = idx_T.astype(np.int32)
        return np.append(ids_T, np.int32(self.eos_id)) if add_eos else ids_T

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids``; specials (and ids outside the vocabulary) are skipped."""
        ids_T = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep_T = ids_T[(ids_T >= 0) & (ids_T < self.n_chars)]
        return self.cp_C[keep_T].astype(np.uint32).tobytes().decode("utf-32-le",
                                                                    errors="surrogatepass")

    def to_json(self) -> dict:
        return {"chars": "".join(self.chars), "specials": list(SPECIALS)}

    @classmethod
    def from_json(cls, d: dict) -> CharTokenizer:
        return cls(list(d["chars"]))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str) -> CharTokenizer:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))

    def __repr__(self) -> str:
        return f"CharTokenizer(n_chars={self.n_chars}, vocab_size={self.vocab_size})"
