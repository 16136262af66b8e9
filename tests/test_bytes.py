import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.bytes import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer

tok = ByteTokenizer()


def test_vocab_and_specials():
    assert tok.vocab_size == 259
    assert (BOS_ID, EOS_ID, PAD_ID) == (256, 257, 258)
    assert tok.specials == {"<bos>": 256, "<eos>": 257, "<pad>": 258}


def test_encode_is_utf8_bytes():
    ids = tok.encode("hé€")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, list("hé€".encode()))
    np.testing.assert_array_equal(ids, [104, 195, 169, 226, 130, 172])
    assert tok.encode("").shape == (0,)


def test_bos_eos_wrap():
    ids = tok.encode("ab", add_bos=True, add_eos=True)
    np.testing.assert_array_equal(ids, [256, 97, 98, 257])
    np.testing.assert_array_equal(tok.encode("ab", add_eos=True), [97, 98, 257])
    np.testing.assert_array_equal(tok.encode_bytes(b"\xff", add_bos=True), [256, 255])


def test_decode_skips_specials_and_replaces_invalid_utf8():
    assert tok.decode([256, 104, 105, 258, 258, 257]) == "hi"
    assert tok.decode(np.array([0xE2, 0x82], np.int32)) == "\ufffd"  # a cut multi-byte char
    assert tok.decode([]) == ""
    assert tok.decode_batch(np.array([[104, 257], [256, 105]])) == ["h", "i"]


def test_encode_rejects_bytes():
    with pytest.raises(TypeError, match="encode_bytes"):
        tok.encode(b"abc")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(s):
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(s, add_bos=True, add_eos=True)) == s
    assert len(tok.encode(s)) == len(s.encode("utf-8"))


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_round_trip_any_bytes(b):
    ids = tok.encode_bytes(b)
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) < 256
    assert tok.decode_bytes(ids) == b
