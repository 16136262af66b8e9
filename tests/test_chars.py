"""Character-set tokenizer: exact round trip (fuzzed, FUZZ_EXAMPLES), specials, unknown chars."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.chars import SPECIALS, CharTokenizer

# round-trip cases per run (suite time budget); FUZZ_EXAMPLES=10000 gives the 10k
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))

ALPHABET = "\n \tabcdeé😀中\u0301"
TOK = CharTokenizer(ALPHABET)


def test_layout_sorted_chars_then_specials():
    tok = CharTokenizer("ba\n b")
    assert tok.chars == ["\n", " ", "a", "b"]
    assert tok.specials == {SPECIALS[0]: 4, SPECIALS[1]: 5} and tok.vocab_size == 6
    np.testing.assert_array_equal(tok.encode("ab\n", add_eos=True), [2, 3, 0, 4])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.text(alphabet=ALPHABET))
def test_round_trip_fuzzed(s):
    ids = TOK.encode(s)
    assert ids.dtype == np.int32 and len(ids) == len(s)
    assert TOK.decode(ids) == s


def test_specials_are_ids_only_and_skipped_on_decode():
    tok = CharTokenizer.from_text("<pad>|endoftx")
    ids = tok.encode("<pad>")
    assert len(ids) == 5 and tok.pad_id not in ids  # literal text is never a special
    assert tok.decode([tok.eos_id, *ids, tok.pad_id, 10**6, -1]) == "<pad>"


def test_empty_and_unknown():
    assert TOK.encode("").shape == (0,) and TOK.decode([]) == ""
    with pytest.raises(ValueError, match="not in the tokenizer's set"):
        TOK.encode("abz")


def test_save_load(tmp_path):
    TOK.save(tmp_path / "c.json")
    tok = CharTokenizer.load(tmp_path / "c.json")
    assert tok.chars == TOK.chars
    np.testing.assert_array_equal(tok.encode("中é😀"), TOK.encode("中é😀"))
