"""Vocabulary growth in the model, truncation, the padded/masked variant, and BPC."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lm.bpc import bpc, full_windows, random_windows, token_length_curve, token_nll
from lm.losses import xent
from lm.vocab_growth import (
    activate_rows,
    expand,
    grow_params,
    make_nll_fn,
    masked_xent,
    pad_params,
    truncate,
    truncate_params,
)
from tests.helpers import TINY, tiny_model
from tokenization.bpe import BPETokenizer
from tokenization.curriculum import CurriculumTokenizer

TEXT = "the cat sat on the mat. the dog sat on the log. " * 30
TOK = CurriculumTokenizer.from_text(TEXT)


def model_for(V, seed=0):
    return tiny_model(dataclasses.replace(TINY, vocab_size=V), seed)


def windows(tok, n=8, L=24, seed=0):
    ids = tok.encode(TEXT)
    s = np.random.default_rng(seed).integers(0, len(ids) - L - 1, n)
    return ids[s[:, None] + np.arange(L + 1)[None, :]]


def expanded():
    g, p = model_for(TOK.vocab_size)
    tok2, p2, rep = expand(TOK, p, [windows(TOK)], model=g, M=20, tau=100.0, q=1.0, seed=0)
    return g, p, tok2, p2, rep


def test_new_token_gets_exactly_its_right_components_logit():
    g, p, tok2, p2, rep = expanded()
    assert rep["added"] > 0 and tok2.vocab_size == TOK.vocab_size + rep["added"]
    g2, _ = model_for(tok2.vocab_size)
    x = jnp.asarray(TOK.encode(TEXT[:30]))[None]
    logits1 = np.asarray(jax.jit(lambda p, x: __import__("lm.losses").losses.bind(g, p)(x))(p, x))
    logits2 = np.asarray(jax.jit(lambda p, x: __import__("lm.losses").losses.bind(g2, p)(x))(
        p2, x))
    # old ids keep their logits (a wider matmul may reorder fp32 sums: ulp-level only)
    np.testing.assert_allclose(logits2[..., :TOK.vocab_size], logits1, rtol=1e-5, atol=1e-7)
    for (_l, r), new in tok2.trie.merges.items():
        if new >= TOK.vocab_size and r < TOK.vocab_size:  # same forward pass: bit-identical
            np.testing.assert_array_equal(logits2[..., new], logits2[..., r])
            np.testing.assert_array_equal(p2["embed_VxD"][new], p["embed_VxD"][r])


def test_truncation_restores_tokenizer_and_params_exactly():
    g, p, tok2, p2, _ = expanded()
    tok1, p1 = truncate(tok2, TOK.vocab_size, p2)
    assert tok1 == TOK
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(tok1.encode(TEXT), TOK.encode(TEXT))


def test_untied_unembedding_columns_grow_and_truncate():
    cfg = dataclasses.replace(TINY, vocab_size=10, tie_embeddings=False)
    _, p = tiny_model(cfg)
    p2 = grow_params(p, [3, 7])
    un = np.asarray(p["unembed_DxV"])
    np.testing.assert_array_equal(p2["unembed_DxV"][:, 10:], un[:, [3, 7]])
    np.testing.assert_array_equal(truncate_params(p2, 10)["unembed_DxV"], p["unembed_DxV"])


def test_padded_masked_loss_equals_the_unpadded_loss():
    g, p = model_for(TINY.vocab_size)
    V_max = 96
    gp, _ = model_for(V_max)
    pp = activate_rows(pad_params(p, V_max), TINY.vocab_size, [1, 2])  # rows 64, 65 active
    pg = grow_params(p, [1, 2])
    gg, _ = model_for(TINY.vocab_size + 2)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, TINY.vocab_size + 2, (4, 17)).astype(np.int32)
    batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:]}
    cfg = type("C", (), {"train": type("T", (), {"z_loss": 0.0})})()
    ref, _ = xent(jax.tree.map(jnp.asarray, pg), batch, model=gg, rng=None, cfg=cfg)
    bl = {**batch, "loss_state": {"n_active": jnp.int32(TINY.vocab_size + 2)}}
    got, aux = masked_xent(jax.tree.map(jnp.asarray, pp), bl, model=gp, rng=None, cfg=cfg)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
    assert int(aux["loss_state"]["n_active"]) == TINY.vocab_size + 2
    nll = make_nll_fn(gp, TINY.vocab_size + 2)(pp, batch["inputs"], batch["targets"])
    nll_ref = make_nll_fn(gg)(pg, batch["inputs"], batch["targets"])
    np.testing.assert_allclose(np.asarray(nll), np.asarray(nll_ref), rtol=1e-5, atol=1e-6)


def test_bpc_equals_a_numpy_computation():
    g, p = model_for(TOK.vocab_size)
    ids = TOK.encode(TEXT[:400])
    w = full_windows(ids, 16, TOK.pad_id)
    nll = token_nll(make_nll_fn(g), p, w, batch_size=8)
    from lm.losses import bind
    logits = np.asarray(bind(g, p)(jnp.asarray(w["inputs"])), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref_nll = -np.take_along_axis(logp, w["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-5, atol=1e-5)
    m = w["mask"]
    len_V = TOK.lengths()
    expect = (ref_nll * m).sum() / (len_V[w["targets"]] * m).sum() / math.log(2)
    assert abs(bpc(nll, w["targets"], m, len_V)["bpc"] - expect) < 1e-6
    assert m.sum() == len(ids) - 1 and (w["inputs"][m > 0] >= 0).all()


def test_bpc_is_tokenization_invariant_for_a_character_uniform_model():
    """NLL(y) = |y| ln C (a model uniform over the C characters): log2 C under any tokenizer."""
    _, _, tok2, _, _ = expanded()
    bpe = BPETokenizer.train(TEXT, 300)
    C = TOK.base.n_chars
    for enc, len_V in [(TOK.encode, TOK.lengths()), (tok2.encode, tok2.lengths()),
                       (bpe.encode, bpe.lengths())]:
        ids = enc(TEXT)
        w = full_windows(ids, 16, 0)
        nll = len_V[w["targets"]] * math.log(C)
        r = bpc(nll, w["targets"], w["mask"], len_V)
        assert abs(r["bpc"] - math.log2(C)) < 1e-12
        assert r["chars"] == len(TEXT) - len_V[ids[0]]
    rw = random_windows(TOK.encode(TEXT), 5, 16, seed=0)
    assert rw["inputs"].shape == (5, 16)


def test_token_length_curve_hand_case():
    len_V = np.array([1, 1, 2, 3, 0])
    targets = np.array([0, 0, 1, 2, 3, 4])
    nll = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 9.0]) * math.log(2)
    c = token_length_curve(nll, targets, targets, len_V)
    # length 1: type 0 mean 2, type 1 mean 2 -> (2, 0); length 2: 4/2 = 2; length 3: 3/3 = 1
    assert c == {1: (2.0, 0.0, 2), 2: (2.0, 0.0, 1), 3: (1.0, 0.0, 1)}
    c_in = token_length_curve(nll, np.array([2, 2, 2, 2, 2, 2]), targets, len_V, by="input")
    assert list(c_in) == [2] and c_in[2][2] == 1
    c2 = token_length_curve(np.array([1.0, 3.0]) * math.log(2), None, np.array([0, 1]), len_V)
    assert c2 == {1: (2.0, math.sqrt(2.0), 2)}  # sample std (ddof=1) over the two types



def test_padded_trainer_masks_keeps_inactive_rows_zero_and_restarts():
    """The experiment's padded path: its train step's loss is the unpadded loss at exactly V,
    the padded rows stay exactly zero (zero gradient, no Adam drift), its eval nll is the
    unpadded one, and the same compiled step restarts at a larger V with a fresh state."""
    from experiments.vocab_curriculum import tiny
    from lm import sharding as sh
    from lm.vocab_growth import PaddedTrainer, pad_capacity
    from tests.helpers import mesh, random_batch

    V, V_pad = 40, pad_capacity(40, 32)
    assert V_pad == 64 and pad_capacity(64, 32) == 64
    base = tiny()
    cfg = dataclasses.replace(base, model=dataclasses.replace(TINY, vocab_size=V),
                              train=dataclasses.replace(base.train, batch_size=4, seq_len=16))
    m = mesh((1, 1, 1))
    pt = PaddedTrainer.create(cfg, m, V_pad, total_steps=3)
    # a fresh start is the init at exactly V (partitionable threefry: same rows, bit for bit)
    fresh = jax.device_get(pt.start(None, V)["params"])
    from flax import nnx

    from lm.model import GPT
    _, init_V, _ = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(cfg.train.seed)), m)
    for a, b in zip(jax.tree.leaves(pt.unpad(fresh, V)), jax.tree.leaves(init_V)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(fresh["embed_VxD"][V:], 0.0)
    g, p0 = model_for(V, seed=3)
    state = pt.start(p0, V)
    ccfg = type("C", (), {"train": type("T", (), {"z_loss": 0.0})})()
    for i in range(2):
        b = random_batch(4, 16, V, seed=i)
        b = {"inputs": b["inputs"], "targets": b["targets"]}
        p_i = pt.unpad(state["params"], V)
        ref, _ = xent(jax.tree.map(jnp.asarray, p_i), b, model=g, rng=None, cfg=ccfg)
        state, met = pt.train_step(state, sh.shard_batch(b, m))
        s_, c_ = met["loss"]
        np.testing.assert_allclose(float(s_) / float(c_), float(ref), rtol=1e-6)
    got = jax.device_get(state["params"])
    np.testing.assert_array_equal(got["embed_VxD"][V:], 0.0)
    assert np.abs(got["embed_VxD"][:V] - np.asarray(p0["embed_VxD"])).max() > 0
    x = random_batch(4, 16, V, seed=9)
    np.testing.assert_allclose(
        np.asarray(pt.nll(V)(got, x["inputs"], x["targets"])),
        np.asarray(make_nll_fn(g)(pt.unpad(got, V), x["inputs"], x["targets"])),
        rtol=1e-5, atol=1e-6)
    grown = grow_params(pt.unpad(got, V), [1, 2, 3])  # next stage: same compiled step
    s2 = pt.start(grown, V + 3)
    assert int(s2["loss_state"]["n_active"]) == V + 3 and int(s2["step"]) == 0
    s2, m2 = pt.train_step(s2, sh.shard_batch({k: x[k] for k in ("inputs", "targets")}, m))
    assert np.isfinite(float(m2["loss"][0]))
    assert pt.train_step._cache_size() == 1
