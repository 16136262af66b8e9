"""Trie-greedy encoder (numba) vs HF ``tokenizers`` byte-level BPE, both at a 16k vocabulary,
encoding the same ~10 MB of the embedded corpus (KJV, whitespace-normalized, repeated to size).

The 16k curriculum vocabulary is grown without a model: each round encodes a 400k-character
sample and adds the prefix merges of random 2-4-token spans (the same ``add_groups`` path the
curriculum uses, random spans instead of low-surprisal ones). Each encoder runs once to warm up
(numba cache load, HF thread pool), then the best of 3 timed runs counts.

Last line: ``trie/hf_bpe encode throughput ratio: X.XX`` (>1 means the trie encoder is faster).
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm.data import DataCfg, prepare_corpus  # noqa: E402
from tokenization.bpe import BPETokenizer  # noqa: E402
from tokenization.curriculum import CurriculumTokenizer  # noqa: E402

V, MB = 16_000, 10


def best_of(fn, n=3):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    text = " ".join(open(prepare_corpus(DataCfg(source="kjv"))).read().split())
    text = (text * (MB * 1_000_000 // len(text) + 1))[:MB * 1_000_000]
    tok = CurriculumTokenizer.from_text(text)
    rng = np.random.default_rng(0)
    sample = tok.base.encode(text[:400_000])
    while tok.vocab_size < V:
        s = tok.encode_ids(sample)
        starts = rng.integers(0, len(s) - 5, 1000)
        spans = [tuple(s[a:a + int(n)].tolist()) for a, n in zip(starts, rng.integers(2, 5, 1000))]
        tok, _, _, _ = tok.add_groups(spans)
    tok, _ = tok.truncate(V)
    bpe = BPETokenizer.train(text[:4_000_000], V)
    char_ids = tok.base.encode(text)
    t_trie, ids = best_of(lambda: tok.encode_ids(char_ids, chunk_chars=2048))
    t_chars, _ = best_of(lambda: tok.base.encode(text))
    t_hf, bids = best_of(lambda: bpe.encode(text))
    assert tok.decode(ids) == text and bpe.decode(bids) == text
    mb = len(text) / 1e6
    print(f"text {mb:.1f} MB; trie V={tok.vocab_size} ({len(text) / len(ids):.2f} chars/token), "
          f"HF BPE V={bpe.vocab_size} ({len(text) / len(bids):.2f} chars/token), "
          f"cpus={os.cpu_count()}")
    print(f"trie encode: {t_trie:.3f}s + char ids {t_chars:.3f}s = {mb / (t_trie + t_chars):.1f} "
          f"MB/s; HF BPE encode_batch: {t_hf:.3f}s = {mb / t_hf:.1f} MB/s")
    print(f"trie/hf_bpe encode throughput ratio: {t_hf / (t_trie + t_chars):.2f}")


if __name__ == "__main__":
    main()
