"""Byte-level BPE trained with HF ``tokenizers``: the conventional baseline at equal vocab sizes.

``BPETokenizer.train(text, vocab_size)`` trains GPT-2-style byte-level BPE (ByteLevel
pre-tokenizer with its regex split, no prefix space, the 256-byte initial alphabet) to
``vocab_size - 2`` entries and appends ``<|endoftext|>`` and ``<pad>`` as the last two ids, so the
total matches a curriculum vocabulary of the same size.

Design choices:
- The specials are *not* registered with HF: HF would then parse their literal text inside the
  input and the round trip ``decode(encode(s)) == s`` would fail for such strings. They are
  plain ids managed here, skipped by ``decode``, as in the other tokenizers.
- ``lengths()`` counts, per token, the UTF-8 bytes that *start* a character (not 10xxxxxx
  continuation bytes). Summed over any tokenization of a text this is exactly its character
  count, so BPC normalizes by characters for BPE too, even where a token splits a character.
- Long texts are cut before a space that follows a non-space (where the GPT-2 regex splits
  anyway, so the pre-tokens are unchanged) into ~4k-character pieces and encoded with
  ``encode_batch`` (Rust, parallel).
"""

from __future__ import annotations

import re

import numpy as np

SPECIALS = ("<|endoftext|>", "<pad>")


def _pieces(text: str, size: int = 4096) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters just before a space that follows a
    non-space character (the concatenation is ``text``)."""
    if len(text) <= size:
        return [text] if text else []
    cuts = [0]
    for m in re.finditer(r"(?<=\S) ", text):
        if m.start() - cuts[-1] >= size:
            cuts.append(m.start())
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class BPETokenizer:
    """HF byte-level BPE plus two trailing specials; exact round trip for every string."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.n_bpe = hf_tokenizer.get_vocab_size()
        self.eos_id, self.pad_id = self.n_bpe, self.n_bpe + 1

    @classmethod
    def train(cls, text: str | list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(SPECIALS):
            raise ValueError(f"byte-level BPE needs vocab_size >= {256 + len(SPECIALS)}, "
                             f"got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False, min_frequency=2)
        texts = _pieces(text) if isinstance(text, str) else list(text)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.n_bpe + len(SPECIALS)

    def encode(self, text: str, add_eos: bool = False) -> np.ndarray:
        pieces = _pieces(text)
        encs = self.hf.encode_batch(pieces, add_special_tokens=False) if pieces else []
        ids = [np.asarray(e.ids, np.int32) for e in encs]
        if add_eos:
            ids.append(np.array([self.eos_id], np.int32))
        return np.concatenate(ids) if ids else np.zeros(0, np.int32)

    def decode(self, ids) -> str:
        ids_T = np.asarray(ids, np.int64).reshape(-1)
        keep = ids_T[(ids_T >= 0) & (ids_T < self.n_bpe)]
        return self.hf.decode(keep.tolist(), skip_special_tokens=False)

    def lengths(self) -> np.ndarray:
        """Characters per token (UTF-8 lead bytes); specials count 0."""
        byte_of = {c: i for i, c in enumerate(_byte_alphabet())}
        out = np.zeros(self.vocab_size, np.int32)
        for s, i in self.hf.get_vocab().items():
            out[i] = sum((byte_of[c] & 0xC0) != 0x80 for c in s)
        return out

    def save(self, path: str) -> None:
        self.hf.save(path)

    @classmethod
    def load(cls, path: str) -> BPETokenizer:
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_file(path))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _byte_alphabet() -> list[str]:
    """The GPT-2 byte -> printable-character table, in byte order (as ``bytes_to_unicode``)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]
