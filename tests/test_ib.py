"""lm.ib: layer schedules, the GAPT state machine, the IBLM/GAPT losses in the train step."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.base import build
from experiments.config import Config, override
from lm import ib, info
from lm import sharding as sh
from lm.checkpoint import Checkpointer, abstract_target
from lm.losses import bind, get_loss, xent
from lm.model import ModelCfg
from lm.sharding import ConfigError
from lm.train import TrainCfg
from tests.helpers import mesh, random_batch, tiny_model

M4 = ModelCfg(vocab_size=64, d_model=32, n_layers=4, n_heads=4, d_ff=64, max_len=32)
CFG = Config(model=M4, train=TrainCfg(batch_size=8, seq_len=16))


def mask(step, mode, n=6, accum=0, n_accum=1):
    return np.asarray(ib.layer_mask(step, accum, n_accum, n, mode)).tolist()


def test_layer_masks_hand_values():
    assert [mask(s, "rotate") for s in range(5)] == [
        [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0],
        [0, 1, 0, 0, 0, 0]]
    assert mask(7, "all_middle") == [0, 1, 1, 1, 1, 0]
    assert mask(0, "all") == [1] * 6
    assert mask(1, "rotate_accum", accum=1, n_accum=2) == [0, 0, 0, 0, 1, 0]  # 1*2+1 = 3
    assert mask(0, "progressive") == [0, 0, 0, 1, 0, 0]
    assert mask(1, "progressive") == [0, 0, 1, 1, 1, 0]
    assert mask(2, "progressive") == [0, 1, 1, 1, 1, 0]
    assert mask(1, "alternating") == [0, 1, 0, 1, 0, 0]
    assert mask(2, "block", n=8) == [0, 0, 0, 0, 0, 1, 1, 0]
    # active 1..4, centre 3.0, max distance 2: distances 1, .5, 0, .5
    np.testing.assert_allclose(mask(0, "weighted_valley"), [0, .3, .825, 1, .825, 0], rtol=1e-6)
    np.testing.assert_allclose(mask(0, "weighted_mountain"), [0, 1, .475, .3, .475, 0],
                               rtol=1e-6)
    np.testing.assert_allclose(mask(0, "slope"), [0, 1, .7, .4, .1, 0], rtol=1e-6)
    with pytest.raises(ConfigError, match="no layer"):
        ib.layer_mask(0, 0, 1, 2, "rotate")


def ref_gapt(seq, c):
    """Plain-Python transcription of the spec §3 pseudo-code."""
    phi, s_m, s_a, min_m, min_a = 1, 0, 0, math.inf, math.inf
    gain = lambda cur, best: 0.0 if best == math.inf or abs(best) < 1e-9 else (
        (best - cur) / max(abs(best), 1e-6))
    out = []
    for ce, aux in seq:
        if math.isfinite(ce) and math.isfinite(aux):
            g_m, g_a = gain(ce, min_m), gain(aux, min_a)
            min_m, min_a = min(min_m, ce), min(min_a, aux)
            if phi == 1:
                s_m = 0 if g_m > c.tau_m else s_m + 1
                if s_m >= c.p_m:
                    s_m, phi = 0, 2
            elif g_m < -c.tau_spike:
                s_a, phi = 0, 1
            else:
                s_a = 0 if g_a > c.tau_a else s_a + 1
                if s_a >= c.p_a:
                    s_a, phi = 0, 1
        out.append((phi, s_m, s_a))
    return out


def run_gapt(seq, c, jit=True):
    def body(st, x):
        st = ib.gapt_update(st, x[0], x[1], c)
        return st, (st["phase"], st["s_m"], st["s_a"])
    f = jax.jit(lambda xs: jax.lax.scan(body, ib.gapt_init(), xs)[1]) if jit else (
        lambda xs: jax.lax.scan(body, ib.gapt_init(), xs)[1])
    with jax.disable_jit(not jit):
        ph, sm, sa = f(jnp.asarray(seq, jnp.float32))
    return list(zip(np.asarray(ph).tolist(), np.asarray(sm).tolist(), np.asarray(sa).tolist(),
                    strict=True))


def test_gapt_scripted_phase_trajectory():
    c = ib.IBCfg(p_m=3, p_a=2)
    seq = [(4.0, 1.0), (3.0, 1.0),               # CE improves: stays in memorisation
           (3.0, 1.0), (2.99, 1.0), (3.0, 1.0),  # 3 stalls (< 1% gain) -> compression
           (3.0, 0.5), (3.0, 0.49),              # MBE gain 50% resets s_a, then 2% resets
           (3.0, 0.4), (3.4, 0.3),               # CE +13% above best 3.0: spike -> memorisation
           (3.0, 0.3), (3.0, 0.3), (3.0, 0.3),   # plateau again -> compression
           (3.0, 0.3), (3.0, 0.3)]               # MBE plateau for p_a=2 -> memorisation
    want = [1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 2, 2, 1]
    got = run_gapt(seq, c)
    assert [g[0] for g in got] == want
    assert got == [tuple(r) for r in ref_gapt(seq, c)]


def test_gapt_matches_reference_on_random_walks_jit_and_nojit():
    c = ib.IBCfg(p_m=4, p_a=3)
    rng = np.random.default_rng(0)
    ce = 3.0 + np.cumsum(rng.normal(0, 0.03, 300)) + 0.25 * (rng.random(300) < 0.03)
    aux = np.abs(1.0 + np.cumsum(rng.normal(0, 0.02, 300)))
    seq = list(zip(ce.tolist(), aux.tolist(), strict=True))
    want = [tuple(r) for r in ref_gapt(seq, c)]
    assert len({r[0] for r in want}) == 2  # the walk visits both phases
    assert run_gapt(seq, c) == want
    assert run_gapt(seq[:60], c, jit=False) == want[:60]


def test_gapt_nonfinite_keeps_state_and_loss_is_ce():
    c = ib.IBCfg(p_m=1, p_a=1)
    st = ib.gapt_update(ib.gapt_init(), 3.0, 1.0, c)  # one stall with p_m=1 -> phase 2
    assert int(st["phase"]) == 2
    for bad in [(jnp.nan, 1.0), (3.0, jnp.inf)]:
        st2 = ib.gapt_update(st, *bad, c)
        assert jax.tree.map(float, st2) == jax.tree.map(float, st)
    assert np.isnan(float(ib.gapt_loss(2, jnp.float32(jnp.nan), jnp.float32(1.0), c)))  # the CE
    assert float(ib.gapt_loss(2, jnp.float32(3.0), jnp.float32(jnp.inf), c)) == 3.0
    assert float(ib.gapt_loss(1, 3.0, 0.5, c)) == 3.0
    assert float(ib.gapt_loss(2, 3.0, 0.5, c)) == 3.5
    assert float(ib.gapt_loss(2, 3.0, 0.0, c)) == np.float32(3.0 + 1e-5)
    soft = ib.IBCfg(softplus=True)
    want = 3.0 + 1e-5 + 0.1 * np.log1p(np.exp((0.5 - 1e-5) / 0.1))
    np.testing.assert_allclose(ib.gapt_loss(2, 3.0, 0.5, soft), want, rtol=1e-6)


def test_iblm_beta0_equals_xent_bit_for_bit():
    g, p = tiny_model()
    b = random_batch(4, 16, 64, mask_frac=0.3)
    cfg = override(Config(model=dataclasses.replace(M4, n_layers=2)), ["ib.beta=0",
                                                                       "ib.layers=all"])
    f = lambda loss: jax.jit(jax.value_and_grad(
        lambda q: loss(q, b, model=g, rng=None, cfg=cfg), has_aux=True))
    (l1, a1), g1 = f(ib.iblm)(p)
    (l2, a2), g2 = f(xent)(p)
    assert np.asarray(l1).tobytes() == np.asarray(l2).tobytes()
    assert np.asarray(a1["loss"][0]).tobytes() == np.asarray(a2["loss"][0]).tobytes()
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    eager = ib.iblm(p, b, model=g, rng=None, cfg=cfg)[0]  # no jit: same value
    assert np.asarray(eager).tobytes() == np.asarray(xent(p, b, model=g, rng=None,
                                                          cfg=cfg)[0]).tobytes()


@pytest.mark.parametrize("denom", ["active", "all"])
def test_iblm_value_is_ce_plus_masked_layer_mean(denom):
    g, p = tiny_model(M4)
    b = random_batch(4, 16, 64)
    cfg = override(CFG, ["ib.beta=0.7", "ib.layers=weighted_valley", f"ib.denom={denom}"])
    loss, aux = ib.iblm(p, b, model=g, rng=None, cfg=cfg)
    _, hid = bind(g, p)(b["inputs"], return_hidden=True)
    mbe = np.array([float(info.patch_mbe(h, 8)) for h in hid[1:]])
    w = np.array([0.0, 0.3, 1.0, 0.0])  # 4 blocks: active 1..2, centre 2.0, max distance 1
    ce = float(xent(p, b, model=g, rng=None, cfg=cfg)[0])
    reg = (w * mbe).sum() / (w.sum() if denom == "active" else 4)
    np.testing.assert_allclose(loss, ce + 0.7 * reg, rtol=1e-5)
    np.testing.assert_allclose([float(aux[f"mbe_{i}"][0]) for i in range(4)], mbe, rtol=1e-5)


def test_bad_ib_config_is_one_clear_error():
    for kv, msg in [("ib.layers=diagonal", "ib.layers"), ("ib.denom=some", "ib.denom"),
                    ("ib.counters=epoch", "ib.counters"), ("ib.variant=max", "ib.variant"),
                    ("ib.p_m=0", "ib.p_m")]:
        with pytest.raises(ConfigError, match=msg):
            override(CFG, [kv])
    assert set(ib.LOSSES) <= set(get_loss.__globals__["registry"]())


def _setup(loss, extra=(), mesh_=None, microbatches=1):
    cfg = override(dataclasses.replace(CFG, train=TrainCfg(
        loss=loss, batch_size=8, seq_len=16, microbatches=microbatches)), list(extra))
    return build(cfg, mesh=mesh_ or mesh((1, 1, 1)))


def _steps(s, state, n, seed0=0):
    out = []
    for i in range(n):
        state, m = s.train_step(state, sh.shard_batch(random_batch(8, 16, 64, seed=seed0 + i),
                                                      s.mesh))
        out.append(jax.device_get(m))
    return state, out


def test_iblm_on_222_mesh_equals_one_device():
    s1 = _setup("iblm", ["ib.beta=0.5"])
    s8 = _setup("iblm", ["ib.beta=0.5"], mesh_=mesh((2, 2, 2)))
    st1, m1 = _steps(s1, s1.state, 2)
    st8, m8 = _steps(s8, s8.state, 2)
    for a, c in zip(m1, m8, strict=True):
        np.testing.assert_allclose(a["loss"][0] / a["loss"][1], c["loss"][0] / c["loss"][1],
                                   rtol=2e-5)
        np.testing.assert_allclose(a["mbe_1"][0], c["mbe_1"][0], rtol=2e-5)
    for x, y in zip(jax.tree.leaves(st1["params"]), jax.tree.leaves(st8["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert int(st8["loss_state"]["micro"]) == 2


@pytest.mark.parametrize("counters,want_micro", [("micro", 6), ("step", 6)])
def test_gapt_counters_per_micro_or_per_step(counters, want_micro):
    s = _setup("gapt", [f"ib.counters={counters}", "ib.p_m=2", "ib.tau_m=10"], microbatches=2)
    st, ms = _steps(s, s.state, 3)
    # tau_m=10: nothing counts as progress, so every update is a CE stall; p_m=2
    phases = [float(m["gapt_phase"][0]) / float(m["gapt_phase"][1]) for m in ms]
    assert int(st["loss_state"]["micro"]) == want_micro
    if counters == "micro":  # 2 updates per step: stall, stall -> phase 2 on micro 2
        assert phases[0] == 1.5
    else:  # one update per step: step 1 stall 1, step 2 stall 2 -> phase 2
        assert phases[:2] == [1.0, 2.0]


def test_gapt_state_survives_checkpoint_resume(tmp_path):
    s = _setup("gapt", ["ib.p_m=1", "ib.p_a=2"])
    fresh = lambda: jax.tree.map(jnp.copy, s.state)  # the step donates its input state
    straight, ms = _steps(s, fresh(), 4)
    half, _ = _steps(s, fresh(), 2)
    ck = Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(2, half)
    target = abstract_target(jax.eval_shape(lambda: s.state), s.state_sharding)
    restored, _ = ck.restore(2, target)
    ck.close()
    host = lambda st: jax.tree.map(float, jax.device_get(st["loss_state"]))
    assert host(restored) == host(half)
    resumed, _ = _steps(s, restored, 2, seed0=2)
    assert host(resumed) == host(straight)
    assert {float(m["gapt_phase"][0]) for m in ms} == {1.0, 2.0}  # it really switched phases
    for x, y in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(straight["params"]),
                    strict=True):
        np.testing.assert_array_equal(x, y)


def test_grad_cosine_matches_separate_gradients():
    g, p = tiny_model(M4)
    b = random_batch(4, 16, 64)
    out = jax.jit(lambda q: ib.grad_cosine(q, b, model=g, cfg=CFG))(p)
    g_ce = jax.jit(jax.grad(lambda q: xent(q, b, model=g, rng=None, cfg=CFG)[0]))(p)

    def mbe_mid(q):
        _, hid = bind(g, q)(b["inputs"], return_hidden=True)
        return (info.patch_mbe(hid[2], 8) + info.patch_mbe(hid[3], 8)) / 2
    g_m = jax.jit(jax.grad(mbe_mid))(p)
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_ce)])
    c = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_m)])
    np.testing.assert_allclose(out["grad_cos"], a @ c / np.linalg.norm(a) / np.linalg.norm(c),
                               rtol=1e-4, atol=1e-6)
