"""Word-level tokenizer over a closed vocabulary, for the tiny offline student.

[INFERRED, spec §4.1] A byte model would need ~4x longer sequences for the same chats; on a
2-core CPU the whole-loop budget forces a word tokenizer built from the scenario texts. Text is
lower-cased and split on whitespace, with ``, . ? ! : ; ' -`` as their own tokens. Specials:
``<pad>`` (0), ``<bos>``, ``<eos>``, ``<unk>``, and the chat markers ``<sys> <hint> <prev> <q>
<a>``. Unknown words map to ``<unk>`` (the tests assert none occur in the scenario texts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<sys>", "<hint>", "<prev>", "<q>", "<a>")
_SPLIT = re.compile(r"<[a-z]+>|[a-z0-9]+|[,.?!:;'\-]")


def split_words(text: str) -> list[str]:
    return _SPLIT.findall(text.lower())


class WordTokenizer:
    """Closed-vocabulary word tokenizer; ``decode(encode(t)) == " ".join(split_words(t))``."""

    def __init__(self, words: Iterable[str]):
        vocab = list(SPECIALS)
        seen = set(vocab)
        for w in words:
            if w not in seen:
                seen.add(w)
                vocab.append(w)
        self.vocab = tuple(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordTokenizer:
        return cls(sorted({w for t in texts for w in split_words(t)} - set(SPECIALS)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unknown(self, text: str) -> list[str]:
        return [w for w in split_words(text) if w not in self.index]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        ids = [self.index.get(w, self.unk_id) for w in split_words(text)]
        ids = ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])
        return np.asarray(ids, np.int32)

    def decode(self, ids) -> str:
        """Text of ``ids`` up to the first ``<eos>``; pads and ``<bos>`` are skipped."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id) or not 0 <= i < len(self.vocab):
                continue
            out.append(self.vocab[i])
        return " ".join(out)
