"""Byte-level tokenizer: ids 0..255 are the UTF-8 bytes, specials are appended after them.

Design choices:
- No vocabulary file and no training: every string round-trips exactly (``decode(encode(s)) == s``
  for any valid Unicode string), which makes byte models the offline default of this codebase.
- Specials live *after* the bytes (``<bos>``=256, ``<eos>``=257, ``<pad>``=258) so a byte keeps its
  own value as its id and raw ``bytes`` convert with ``np.frombuffer`` (``encode_bytes``).
- ``encode`` uses ``surrogatepass`` so a lone surrogate (possible in JSON input) never crashes a
  data pipeline; ``decode`` uses ``errors="replace"`` so any id sequence (e.g. a sampled one that
  cuts a multi-byte character) decodes to *some* text; specials are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

N_BYTES = 256
SPECIALS = ("<bos>", "<eos>", "<pad>")
BOS_ID, EOS_ID, PAD_ID = N_BYTES, N_BYTES + 1, N_BYTES + 2
VOCAB_SIZE = N_BYTES + len(SPECIALS)


class ByteTokenizer:
    """UTF-8 bytes plus ``<bos>``/``<eos>``/``<pad>`` (vocab 259)."""

    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def specials(self) -> dict[str, int]:
        return {name: N_BYTES + i for i, name in enumerate(SPECIALS)}

    def encode_bytes(self, data: bytes, add_bos: bool = False,
                     add_eos: bool = False) -> np.ndarray:
        """Token ids (int32) of raw bytes, optionally wrapped in ``<bos>``/``<eos>``."""
        ids_T = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        if add_bos or add_eos:
            parts = [np.array([BOS_ID], np.int32)] if add_bos else []
            parts.append(ids_T)
            if add_eos:
                parts.append(np.array([EOS_ID], np.int32))
            ids_T = np.concatenate(parts)
        return ids_T

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Token ids (int32) of ``text``'s UTF-8 bytes."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}; "
                            "use encode_bytes for bytes")
        return self.encode_bytes(text.encode("utf-8", errors="surrogatepass"), add_bos, add_eos)

    def decode_bytes(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """The bytes of ``ids`` with every special (and any id outside the vocab) dropped."""
        ids_T = np.asarray(ids).reshape(-1)
        if ids_T.size and not np.issubdtype(ids_T.dtype, np.integer):
            raise TypeError(f"decode expects integer ids, got dtype {ids_T.dtype}")
        keep_T = ids_T[(ids_T >= 0) & (ids_T < N_BYTES)]
        return keep_T.astype(np.uint8).tobytes()

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids``; specials are skipped, invalid UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_batch(self, ids_BxT: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids_BxT)]

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"
