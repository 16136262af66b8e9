"""Trie-greedy encoder with step-back: hand-computed cases, equality with a slow literal port of
spec §1 on random vocabularies and texts, chunking, exact round trips, truncation."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.chars import CharTokenizer
from tokenization.trie import TokenTrie

# round-trip cases per run (suite time budget); FUZZ_EXAMPLES=10000 gives the 10k
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))


def reference_encode(tokens, special, ids):
    """The spec §1 loop on a Python list, string concatenation and all (slow, independent)."""
    vocab = {s: i for i, s in enumerate(tokens) if i not in special}
    ids, pos = list(ids), 0
    while pos < len(ids):
        if pos + 1 >= len(ids) or ids[pos] in special or ids[pos + 1] in special:
            pos += 1
            continue
        s = tokens[ids[pos]] + tokens[ids[pos + 1]]
        if s not in vocab:
            pos += 1
            continue
        best, span = s, 2
        for i in range(pos + 2, len(ids)):
            if ids[i] in special:
                break
            s += tokens[ids[i]]
            if s not in vocab:
                break
            best, span = s, i - pos + 1
        ids = ids[:pos] + [vocab[best]] + ids[pos + span:]
        pos = max(0, pos - 1)
    return ids


def make_trie(chars, pairs):
    trie = TokenTrie(CharTokenizer(chars))
    for l, r in pairs:
        trie.add_merge(trie.token2id[l], trie.token2id[r])
    return trie


def enc(trie, text, **kw):
    return [trie.tokens[i] for i in trie.encode(text, **kw)]


def test_step_back_fuses_with_left_neighbour():
    trie = make_trie("abc", [("b", "c"), ("a", "bc")])  # "ab" is not a token
    assert enc(trie, "abc") == ["abc"]
    assert enc(trie, "aabc") == ["a", "abc"]


def test_extension_stops_at_first_non_token_not_longest_match():
    trie = make_trie("abcd", [("a", "b"), ("c", "d"), ("ab", "cd")])  # "abc" is not a token
    assert enc(trie, "abcd") == ["abcd"]  # ab | c d -> ab cd -> step back: abcd
    # "abcd" is a token but neither "abc" nor "cd" is: the greedy scan never reaches it
    trie = make_trie("abcd", [("a", "b"), ("b", "c"), ("bc", "d"), ("a", "bcd")])
    assert enc(trie, "abcd") == ["ab", "c", "d"]


def test_specials_never_merge():
    trie = make_trie("ab", [("a", "b")])
    eos = trie.base.eos_id
    out = trie.encode_ids(np.array([0, eos, 1, 0, 1], np.int32)).tolist()
    assert out == [0, eos, 1, trie.token2id["ab"]]


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_vocabularies(seed):
    rng = np.random.default_rng(seed)
    chars = "ab c" if seed % 2 else "abcdefgh ."
    for _ in range(150):
        trie = TokenTrie(CharTokenizer(chars))
        special = set(trie.special_ids)
        normal = [i for i in range(len(trie)) if i not in special]
        for _ in range(int(rng.integers(0, 40))):
            l, r = rng.choice(normal, 2)
            trie.add_merge(int(l), int(r))
            normal = [i for i in range(len(trie)) if i not in special]
        ids = rng.integers(0, trie.base.vocab_size, int(rng.integers(0, 80)))
        if rng.random() < 0.7:
            ids = ids[ids < trie.base.n_chars]
        got = trie.encode_ids(ids).tolist()
        assert got == reference_encode(trie.tokens, special, ids.tolist())
        assert trie.decode(got) == trie.base.decode(ids)


def test_chunked_encoding_keeps_every_character_and_cuts_after_spaces():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abc"), int(rng.integers(1, 9)))) for _ in range(400)]
    text = " ".join(words)
    trie = TokenTrie(CharTokenizer("abc "))
    for _ in range(3):  # grow a vocabulary that crosses word boundaries
        ids = trie.encode(text)
        for a in rng.integers(0, len(ids) - 3, 60):
            t = ids[a:a + 3].tolist()
            if trie.base.eos_id not in t:
                p = trie.add_merge(t[0], t[1])[0]
                trie.add_merge(p, t[2])
    out = trie.encode(text, chunk_chars=32)
    assert trie.decode(out) == text
    ref = []
    pieces = text.split(" ")
    chunk = ""
    for i, w in enumerate(pieces):  # independent greedy packing of space-terminated words
        w = w + (" " if i < len(pieces) - 1 else "")
        if chunk and len(chunk) + len(w) > 32:
            ref += reference_encode(trie.tokens, set(trie.special_ids),
                                    trie.base.encode(chunk).tolist())
            chunk = ""
        chunk += w
    ref += reference_encode(trie.tokens, set(trie.special_ids), trie.base.encode(chunk).tolist())
    assert out.tolist() == ref


TRIE = make_trie("ab é😀\n", [("a", "b"), ("ab", " "), ("é", "😀"), ("\n", "\n"), ("ab ", "é😀"),
                              ("b", "a")])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.text(alphabet="ab é😀\n"), st.sampled_from([0, 3, 16]))
def test_round_trip_fuzzed(s, chunk):
    ids = TRIE.encode(s, chunk_chars=chunk)
    assert ids.dtype == np.int32 and TRIE.decode(ids) == s


def test_empty_and_lengths_and_truncate():
    assert TRIE.encode("").shape == (0,) and TRIE.decode([]) == ""
    lens = TRIE.lengths()
    assert lens[TRIE.token2id["ab é😀"]] == 5 and lens[TRIE.base.pad_id] == 0
    trie = make_trie("ab", [("a", "b"), ("ab", "a"), ("b", "b")])
    n0 = len(trie)
    trie.add_merge(trie.token2id["ab"], trie.token2id["ab"])
    trie.truncate(n0)
    assert "abab" not in trie.token2id and len(trie.merges) == 3 and len(trie) == n0
    assert enc(trie, "abab") == ["aba", "b"]
    with pytest.raises(ValueError):
        trie.truncate(2)


def test_add_merge_reuses_existing_string():
    trie = make_trie("abc", [("a", "b"), ("b", "c"), ("ab", "c")])
    n = len(trie)
    new, is_new = trie.add_merge(trie.token2id["a"], trie.token2id["bc"])
    assert (new, is_new) == (trie.token2id["abc"], False) and len(trie) == n
    with pytest.raises(ValueError):
        trie.add_merge(trie.base.eos_id, 0)
