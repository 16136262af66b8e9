"""Expansion rule of spec §2 on hand-made arrays, against a literal loop, prefix merges with reuse,
seeded selection, the schedule, save/load, and truncation."""

import numpy as np
import pytest

from tokenization.chars import CharTokenizer
from tokenization.curriculum import (
    CurriculumTokenizer,
    group_spans,
    group_tuples,
    log_spaced_sizes,
    pool_tuples,
    prefix_merges,
    row_thresholds,
    select_tuples,
    surprisal_BxT1,
)
from tokenization.trie import TokenTrie


def reference_groups(loss_T, special_T, thr):
    """Spec §2.3 as a scan (independent of the vectorized version)."""
    out, group = [], []
    for t in range(len(loss_T)):
        if special_T[t]:
            if len(group) >= 2:
                out.append((group[0], len(group)))
            group = []
        elif t == 0:
            group = [0]
        elif loss_T[t] < thr and loss_T[t] <= loss_T[t - 1]:
            group.append(t)
        else:
            if len(group) >= 2:
                out.append((group[0], len(group)))
            group = [t]
    if len(group) >= 2:
        out.append((group[0], len(group)))
    return out


def spans(loss, special, thr):
    loss = np.asarray([loss], float)
    r, s, n = group_spans(loss, np.asarray([special], bool), np.array([thr]))
    return list(zip(s.tolist(), n.tolist()))


def test_hand_made_groups():
    #        t: 0    1    2    3    4    5    6    7
    loss = [0.0, 2.0, 0.2, 0.1, 0.1, 0.25, 1.5, 0.05]
    none = [False] * 8
    # t=0 head, t=1 breaks (2.0 >= thr); 1..4 is a group (0.2, 0.1, 0.1 non-increasing, < thr);
    # t=5 rises (0.25 > 0.1): new head; t=6 high: new head; 6..7 group
    assert spans(loss, none, 0.3) == [(1, 4), (6, 2)]
    # a special at t=3 closes 1..2 and starts nothing; 4 becomes a head, 4..4 alone is dropped
    special = [False, False, False, True, False, False, False, False]
    assert spans(loss, special, 0.3) == [(1, 2), (6, 2)]
    # length-1 groups vanish; equal losses continue a group
    assert spans([0.0, 1.0, 1.0], [False] * 3, 0.3) == []
    # t = 1 rises above l_0 = 0, so it heads the group; equal losses continue it
    assert spans([0.0, 0.1, 0.1, 0.1], [False] * 4, 0.3) == [(1, 3)]
    # position 0 can head a group; a special at t = 0 cannot
    assert spans([0.0, 0.0, 0.0], [False] * 3, 0.3) == [(0, 3)]
    assert spans([0.0, 0.0], [True, False], 0.3) == []
    assert spans([], [], 0.3) == []


def test_threshold_is_min_of_row_quantile_and_tau():
    loss = np.array([[0.0, 0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(row_thresholds(loss, 0.6, 0.3), [0.24, 0.3])
    np.testing.assert_allclose(surprisal_BxT1(np.ones((2, 3)))[:, 0], 0.0)
    assert surprisal_BxT1(np.ones((2, 3))).shape == (2, 4)


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_groups_match_the_scan(seed):
    rng = np.random.default_rng(seed)
    B, T = 16, 40
    loss = np.round(rng.exponential(0.3, (B, T)), 1)  # rounding makes ties common
    special = rng.random((B, T)) < 0.05
    thr = row_thresholds(loss, 0.6, 0.3)
    r, s, n = group_spans(loss, special, thr)
    got = list(zip(r.tolist(), s.tolist(), n.tolist()))
    ref = [(b, a, m) for b in range(B) for a, m in reference_groups(loss[b], special[b], thr[b])]
    assert got == ref and len(ref) > 10


def test_group_tuples_and_pool():
    ids = np.array([[5, 6, 7, 8, 9, 1]])
    loss = np.array([[0.0, 0.0, 0.0, 2.0, 0.1, 0.1]])  # q_0.9 = 1.05, so thr = tau = 0.3
    special_V = np.zeros(10, bool)
    special_V[1] = True
    tuples = group_tuples(ids, loss, special_V, q=0.9, tau=0.3)
    assert tuples == [(5, 6, 7), (8, 9)]
    pool = pool_tuples(pool_tuples({}, tuples), [(8, 9)])
    assert pool == {(5, 6, 7): 1, (8, 9): 2}


def test_selection_is_seeded_uniform_and_capped():
    pool = {(i, i + 1): i for i in range(100)}
    a, b = select_tuples(pool, 10, seed=3), select_tuples(dict(reversed(pool.items())), 10, 3)
    assert a == b and len(set(a)) == 10
    assert select_tuples(pool, 10, 4) != a
    assert sorted(select_tuples(pool, 1000, 0)) == sorted(pool)


def test_prefix_merges_add_exactly_the_prefixes_and_reuse_existing():
    trie = TokenTrie(CharTokenizer("abcd"))
    a, b, c, d = (trie.token2id[x] for x in "abcd")
    n0 = len(trie)
    new, right, reused = prefix_merges(trie, [(a, b, c)])
    assert [trie.tokens[i] for i in new] == ["ab", "abc"] and right.tolist() == [b, c]
    assert new.tolist() == [n0, n0 + 1] and reused == 0
    bc = trie.add_merge(b, c)[0]
    # (a, bc): "abc" exists via (ab, c): reused, no KeyError (reference bug §7.3); then "abcd"
    new, right, reused = prefix_merges(trie, [(a, bc, d), (a, b)])
    assert [trie.tokens[i] for i in new] == ["abcd"] and right.tolist() == [d] and reused == 2
    assert trie.merges[(trie.token2id["abc"], d)] == trie.token2id["abcd"]


def test_log_spaced_sizes():
    assert log_spaced_sizes(14000, 92, 8)[0] == 14000 and log_spaced_sizes(14000, 92, 8)[-1] == 92
    s = np.array(log_spaced_sizes(10000, 100, 3))
    np.testing.assert_array_equal(s, [10000, 1000, 100])
    with pytest.raises(ValueError):
        log_spaced_sizes(10, 5, 1)


def test_tokenizer_stage_bookkeeping_save_load_truncate(tmp_path):
    tok = CurriculumTokenizer.from_text("the cat sat on the mat")
    tr = tok.base.encode
    t1, new, _, _ = tok.add_groups([tuple(tr("the")), tuple(tr("at "))])
    t2, _, _, _ = t1.add_groups([tuple(t1.encode("the cat"))])
    assert t2.stage == 2 and t2.stage_V[-1] == 2 and tok.vocab_size == tok.base.vocab_size
    assert [t1.trie.tokens[i] for i in new] == ["th", "the", "at", "at "]
    t2.save(str(tmp_path / "t.json"))
    back = CurriculumTokenizer.load(str(tmp_path / "t.json"))
    assert back == t2
    np.testing.assert_array_equal(back.encode("the cat sat"), t2.encode("the cat sat"))
    assert t2.decode(t2.encode("the mat the cat")) == "the mat the cat"
    assert t2.truncate(t1.vocab_size) == t1
    with pytest.raises(ValueError, match="format"):
        CurriculumTokenizer.from_json({"format": "other"})
