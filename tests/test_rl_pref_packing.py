"""Packed preference batches (rl.pref_packing): K pairs per row give the loss, aux and gradients
of the same pairs unpacked (ragged lengths, empty slots and an all-empty row), and a micro-
batched train step on the packed rows equals the full batch (fp32, 1e-5)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.model import ModelCfg
from lm.train import make_train_step
from rl import losses as RL
from rl import pref_packing as PK
from tests.helpers import tiny_model

TINY = ModelCfg(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16)
S, P = 10, 3  # unpacked width, prompt length
C_LEN, R_LEN = [7, 4, 9, 5, 6], [5, 8, 3, 6, 9]


def unpacked(seed=0):
    rng = np.random.default_rng(seed)
    b, lens = {}, {}
    for side, ln in (("chosen", C_LEN), ("rejected", R_LEN)):
        t = rng.integers(1, TINY.vocab_size, (len(ln), S)).astype(np.int32)
        j = np.arange(S)[None]
        ln = np.array(ln)
        t[j >= ln[:, None]] = 0
        b[f"{side}_tokens"] = t
        b[f"{side}_mask"] = ((j >= P) & (j < ln[:, None])).astype(np.float32)
        lens[side] = ln
    return b, lens


def packed(b, lens, row_multiple=2):
    return PK.pack_pairs(b["chosen_tokens"], b["chosen_mask"], lens["chosen"],
                         b["rejected_tokens"], b["rejected_mask"], lens["rejected"],
                         row_len=16, slots=3, pad_id=0, row_multiple=row_multiple)


@pytest.fixture(scope="module")
def setup():
    gd, params = tiny_model(TINY, 0)
    _, ref = tiny_model(TINY, 1)
    b, lens = unpacked()
    return gd, params, ref, b, packed(b, lens)


def test_layout_gathers_back_the_pairs(setup):
    *_, b, pb = setup
    # rows [0, 1], [2, 3], [4], [] -> every row has an empty slot, the last row none filled
    np.testing.assert_array_equal(pb["pair_valid"], [[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    for side, ln in (("chosen", C_LEN), ("rejected", R_LEN)):
        tw, tl = PK.gather_pairs(jnp.concatenate([pb["chosen_tokens"],
                                                  pb["rejected_tokens"]]), pb)
        got = np.asarray(tw if side == "chosen" else tl)[pb["pair_valid"].ravel() > 0]
        for i, n in enumerate(ln):
            np.testing.assert_array_equal(got[i, :n], b[f"{side}_tokens"][i, :n])
        m = pb[f"{side}_mask"].reshape(-1, S)[pb["pair_valid"].ravel() > 0]
        np.testing.assert_array_equal(m, b[f"{side}_mask"])
        assert pb[f"{side}_positions"][0, 7 if side == "chosen" else 5] == 0  # restart


def test_bad_input_is_one_clear_error(setup):
    *_, b, _ = setup
    lens = {"chosen": np.array(C_LEN), "rejected": np.array(R_LEN)}
    with pytest.raises(ValueError, match=r"pair 2: chosen length 9 must be in 1..min\(row_len=8"):
        PK.pack_pairs(b["chosen_tokens"], b["chosen_mask"], lens["chosen"],
                      b["rejected_tokens"], b["rejected_mask"], lens["rejected"],
                      row_len=8, slots=2, pad_id=0)
    bad = b["chosen_mask"].copy()
    bad[0, 0] = 1
    with pytest.raises(ValueError, match="mask must be 0 at position 0"):
        PK.pack_pairs(b["chosen_tokens"], bad, lens["chosen"], b["rejected_tokens"],
                      b["rejected_mask"], lens["rejected"], row_len=16, slots=2, pad_id=0)


@functools.cache
def _vg(name, gd):
    fn = RL.LOSSES[name]

    def f(p, b, r):
        return fn(p, {**b, "loss_state": {"ref_params": r}}, model=gd, cfg=None)
    return jax.jit(jax.value_and_grad(f, has_aux=True))


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo", "tdpo2"])
def test_packed_equals_unpacked(name, setup):
    gd, params, ref, b, pb = setup
    (loss, aux), g = _vg(name, gd)(params, b, ref)
    (loss_p, aux_p), g_p = _vg(name, gd)(params, pb, ref)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-5, atol=1e-6)
    assert set(aux_p) == set(aux)
    for k in aux:
        assert float(aux_p[k][1]) == float(aux[k][1]) == len(C_LEN), k  # valid pairs only
        np.testing.assert_allclose(aux_p[k][0], aux[k][0], rtol=1e-5, atol=1e-5, err_msg=k)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g)) > 1e-3
    for a, c in zip(jax.tree.leaves(g_p), jax.tree.leaves(g)):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_microbatched_step_on_packed_rows_equals_full_batch(setup):
    gd, params, ref, b, pb = setup
    tx = optax.sgd(0.5)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0),
             "rng": jax.random.key_data(jax.random.key(0)), "loss_state": {"ref_params": ref}}

    def step(m, batch):
        f = make_train_step(RL.LOSSES["dpo"], tx, model=gd, cfg=None, microbatches=m,
                            donate=False)
        return f(state, batch)

    full, met = step(1, b)  # unpacked full batch
    # strided micro-batches of the packed rows hold 3 and 2 valid pairs
    assert [pb["pair_valid"][i::2].sum() for i in range(2)] == [3, 2]
    new, met_p = step(2, pb)
    np.testing.assert_allclose(met_p["loss"][0] / met_p["loss"][1],
                               met["loss"][0] / met["loss"][1], rtol=1e-5)
    np.testing.assert_allclose(met_p["grad_norm"], met["grad_norm"], rtol=1e-5)
    for a, c in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(full["params"])):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_tdpo_pairs_packing_option():
    from experiments import tdpo_pairs as E
    from lm.sharding import ConfigError
    prompts = [np.array([1, 2, 3]), np.array([4, 5])]
    chosen, rejected = [np.array([7, 8]), np.array([9])], [np.array([6]), np.array([5, 4, 3])]
    plain = E.pair_batch(prompts, chosen, rejected, 8, E.PairExpCfg())
    assert set(plain) == {"chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask"}
    e = E.PairExpCfg(packing="document", pack_slots=2, pack_len=12)
    pb = E.pair_batch(prompts, chosen, rejected, 8, e, row_multiple=2)
    assert pb["chosen_tokens"].shape == (2, 12) and pb["chosen_index"].shape == (2, 2, 8)
    np.testing.assert_array_equal(pb["pair_valid"], [[1, 1], [0, 0]])
    for side in ("chosen", "rejected"):
        np.testing.assert_array_equal(pb[f"{side}_mask"][0], plain[f"{side}_mask"])
        got = np.take_along_axis(pb[f"{side}_tokens"][0], pb[f"{side}_index"][0].ravel(), 0)
        np.testing.assert_array_equal(np.where(plain[f"{side}_tokens"] == E.TOK.pad_id,
                                               E.TOK.pad_id, got.reshape(2, 8)),
                                      plain[f"{side}_tokens"])
    with pytest.raises(ConfigError, match="exp.packing='doc' is not one of"):
        E.PairExpCfg(packing="doc")
