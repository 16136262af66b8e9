"""HF byte-level BPE baseline: exact size, exact round trip (fuzzed), char lengths."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.bpe import BPETokenizer, _pieces

# round-trip cases per run (suite time budget); FUZZ_EXAMPLES=10000 gives the 10k
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))

CORPUS = ("In the beginning God created the heaven and the earth. And the earth was without "
          "form, and void; héllo wörld 😀 中文  tabs\tand\nnewlines. ") * 40
BPE = BPETokenizer.train(CORPUS, 300)


def test_vocab_size_and_specials():
    assert BPE.vocab_size == 300 and (BPE.eos_id, BPE.pad_id) == (298, 299)
    ids = BPE.encode("the earth", add_eos=True)
    assert ids[-1] == BPE.eos_id and BPE.decode(ids) == "the earth"
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        BPETokenizer.train(CORPUS, 100)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.text())
def test_round_trip_fuzzed(s):
    assert BPE.decode(BPE.encode(s)) == s


def test_lengths_count_characters_exactly():
    len_V = BPE.lengths()
    for s in [CORPUS, "", "中😀é", "a<pad>b", " x" * 3000]:
        ids = BPE.encode(s)
        assert int(len_V[ids].sum()) == len(s)
    assert len_V[BPE.pad_id] == 0


def test_pieces_concatenate_and_long_text_encodes_like_one_call():
    text = " ".join(["word"] * 5000)
    pieces = _pieces(text, 100)
    assert "".join(pieces) == text and len(pieces) > 10
    one = np.asarray(BPE.hf.encode(text, add_special_tokens=False).ids)
    np.testing.assert_array_equal(BPE.encode(text), one)


def test_save_load(tmp_path):
    BPE.save(str(tmp_path / "bpe.json"))
    b = BPETokenizer.load(str(tmp_path / "bpe.json"))
    np.testing.assert_array_equal(b.encode(CORPUS[:500]), BPE.encode(CORPUS[:500]))
