"""Every registered RL/preference loss, picked up by iterating the registry: junk in masked
slots changes nothing, micro-batches combine exactly, (2,2,2) mesh == 1 device, jit == no-jit.

jit == no-jit runs the model-level loss eagerly for one loss of each kind (an eager NNX
value_and_grad takes ~10 s per loss on a loaded 2-core box); test_rl_policy/_preference check
jit == no-jit for every pure loss function. A 1-layer model keeps the compiles short."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.config import Config
from lm import sharding as sh
from lm.losses import get_loss, registry
from lm.model import GPT, ModelCfg
from lm.sharding import ConfigError
from rl import losses as RL
from tests.helpers import mesh
from tests.helpers import tiny_model as _tiny_model

TINY = ModelCfg(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16)


def tiny_model(seed=0):
    return _tiny_model(TINY, seed)

NAMES = sorted(RL.LOSSES)
S = 12


def _mask(rng, B, start):
    lens = rng.integers(1, S - start + 1, B)
    j = np.arange(S)[None]
    return ((j >= start) & (j < start + lens[:, None])).astype(np.float32)


def make_batch(kind, seed=0, B=8, V=TINY.vocab_size):
    """A random batch of the layout ``kind`` expects (completion starts at position 4)."""
    rng = np.random.default_rng(seed)
    if kind == "preference":
        Bp = B // 2
        return {"chosen_tokens": rng.integers(0, V, (Bp, S)).astype(np.int32),
                "rejected_tokens": rng.integers(0, V, (Bp, S)).astype(np.int32),
                "chosen_mask": _mask(rng, Bp, 4), "rejected_mask": _mask(rng, Bp, 4)}
    mask = _mask(rng, B, 4)
    b = {"tokens": rng.integers(0, V, (B, S)).astype(np.int32), "mask": mask}
    if kind == "value":
        b.update(old_values=rng.normal(size=(B, S)).astype(np.float32) * mask,
                 returns=rng.normal(size=(B, S)).astype(np.float32) * mask)
        return b
    old = -rng.random((B, S)).astype(np.float32) * 3 * mask
    b.update(old_logp=old, ref_logp=old - 0.1 * mask,
             adv=np.repeat(rng.normal(size=(B, 1)), S, 1).astype(np.float32) * mask)
    return b


def junk(kind, batch, seed=1):
    """The same batch with junk wherever the mask is 0 (nan in float inputs, random tokens)."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    if kind == "preference":
        for side in ("chosen", "rejected"):
            m = batch[f"{side}_mask"]
            after = np.cumsum(m[:, ::-1], 1)[:, ::-1] == 0  # padding after the completion
            rnd = rng.integers(0, TINY.vocab_size, m.shape)
            out[f"{side}_tokens"] = np.where(after, rnd, batch[f"{side}_tokens"]).astype(
                np.int32)
        return out
    for k in ("old_logp", "ref_logp", "adv", "old_values", "returns"):
        if k in batch:
            out[k] = np.where(batch["mask"] > 0, batch[k], np.nan).astype(np.float32)
    return out


def _fn(name, cfg):
    fn = RL.LOSSES[name]
    gd = tiny_model()[0]

    def f(p, b, r):
        if fn.kind == "preference":
            b = {**b, "loss_state": {"ref_params": r}}
        return fn(p, b, model=gd, cfg=cfg)
    return jax.value_and_grad(f, has_aux=True)


@functools.cache
def _jitted(name, cfg):
    return jax.jit(_fn(name, cfg))


def call(name, params, batch, ref, jit=True, cfg=None):
    return (_jitted(name, cfg) if jit else _fn(name, cfg))(params, batch, ref)


@pytest.fixture(scope="module")
def models():
    _, params = tiny_model(seed=0)
    _, ref = tiny_model(seed=1)
    return params, ref


def test_registry_merges_rl_losses():
    reg = registry()
    for name in ("ppo", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "dcpo", "value", "dpo",
                 "cdpo", "robust_dpo", "hinge", "ipo", "simpo", "tdpo1", "tdpo2"):
        assert reg[name] is RL.LOSSES[name]
    with pytest.raises(ConfigError, match="tdpo2"):
        get_loss("tdpo3")


@functools.cache
def _all_checks(name):
    """One jit computing the full batch, the junk batch and both strided micro-batches."""
    f = _fn(name, None)

    def run(params, batch, junk_batch, ref):
        halves = [jax.tree.map(lambda v, i=i: v[i::2], batch) for i in range(2)]
        return f(params, batch, ref), f(params, junk_batch, ref), [f(params, h, ref)
                                                                   for h in halves]
    return jax.jit(run)


@pytest.mark.parametrize("name", NAMES)
def test_masked_junk_and_microbatches(name, models):
    params, ref = models
    kind = RL.LOSSES[name].kind
    batch = make_batch(kind)
    ((loss, aux), g), ((loss_j, _), g_j), parts = _all_checks(name)(params, batch,
                                                                     junk(kind, batch), ref)
    assert np.isfinite(float(loss)) and float(aux["loss"][1]) > 0
    # junk in masked slots: identical loss and gradient
    assert float(loss_j) == float(loss)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_j)):
        np.testing.assert_array_equal(a, b)
    # micro-batches (strided rows, as lm.train splits): count-weighted grads == full batch
    w = [float(a_i["loss"][1]) for (_, a_i), _ in parts]
    num = sum(float(a_i["loss"][0]) for (_, a_i), _ in parts)
    np.testing.assert_allclose(num / sum(w), float(loss), rtol=1e-5)
    g_acc = jax.tree.map(lambda a, b: (a * w[0] + b * w[1]) / sum(w), parts[0][1], parts[1][1])
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_acc)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["dapo", "tdpo2"])
def test_jit_equals_no_jit(name, models):
    params, ref = models
    batch = make_batch(RL.LOSSES[name].kind)
    (loss, _), g = call(name, params, batch, ref)
    (loss_e, _), g_e = call(name, params, batch, ref, jit=False)
    np.testing.assert_allclose(loss_e, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_e)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_sharded_mesh_equals_one_device():
    """All registered losses on a (2,2,2) mesh (params sharded by the rules, batch over
    data x fsdp) give the one-device values (one jit per mesh computes every loss)."""
    out = {}
    for shape in ((1, 1, 1), (2, 2, 2)):
        m = mesh(shape)
        gd, params, _ = sh.init_params(lambda: GPT(TINY, rngs=nnx.Rngs(0)), m)
        _, ref, _ = sh.init_params(lambda: GPT(TINY, rngs=nnx.Rngs(1)), m)
        batches = {n: sh.shard_batch(make_batch(RL.LOSSES[n].kind), m) for n in NAMES}

        @jax.jit
        def f(p, bs, r):
            vals = {}
            for name in NAMES:
                fn, b = RL.LOSSES[name], bs[name]
                if fn.kind == "preference":
                    b = {**b, "loss_state": {"ref_params": r}}
                loss, aux = fn(p, b, model=gd, cfg=None)  # noqa: B023 (jitted in-loop)
                vals[name] = (loss, {k: v[0] / v[1] for k, v in aux.items()})
            return vals
        with jax.set_mesh(m):
            out[shape] = jax.device_get(f(params, batches, ref))
    for name in NAMES:
        a, b = out[(1, 1, 1)][name], out[(2, 2, 2)][name]
        np.testing.assert_allclose(b[0], a[0], rtol=2e-5, atol=1e-6, err_msg=name)
        for k in a[1]:
            np.testing.assert_allclose(b[1][k], a[1][k], rtol=2e-5, atol=1e-6,
                                       err_msg=f"{name} {k}")


@dataclasses.dataclass(frozen=True)
class _Cfg(Config):
    loss: RL.LossCfg = RL.LossCfg()


def test_cfg_loss_overrides_and_errors(models):
    params, ref = models
    batch = make_batch("policy")
    base = call("dapo", params, batch, ref)[0][0]
    same = call("dapo", params, batch, ref, cfg=_Cfg())[0][0]
    tight = call("dapo", params, batch, ref, cfg=_Cfg(loss=RL.LossCfg(eps_low=0.01)))[0][0]
    assert float(base) == float(same) and float(tight) != float(base)
    with pytest.raises(ConfigError, match="loss.agg"):
        RL.LossCfg(agg="mean")
    with pytest.raises(ConfigError, match="ref_params"):
        RL.LOSSES["dpo"](params, make_batch("preference"), model=tiny_model()[0])


def test_tdpo_model_loss_equals_naive_full_logits(models):
    """The chunked model-level TDPO equals the naive full-logits formula."""
    params, ref = models
    gd = tiny_model()[0]
    b = make_batch("preference", B=4)
    cfg = _Cfg(loss=RL.LossCfg(chunk=5))
    got, _ = RL.LOSSES["tdpo2"](params, {**b, "loss_state": {"ref_params": ref}}, model=gd,
                               cfg=cfg)
    toks = jnp.concatenate([b["chosen_tokens"], b["rejected_tokens"]])
    lg = nnx.merge(gd, nnx.State(params))(toks[:, :-1])
    lr_ = nnx.merge(gd, nnx.State(ref))(toks[:, :-1])
    from rl import preference as PF
    kl, lr, _ = (jnp.pad(x, ((0, 0), (1, 0))) for x in PF.token_stats(lg, lr_, toks[:, 1:]))
    want, _ = PF.tdpo(lr[:2], kl[:2], lr[2:], kl[2:], b["chosen_mask"], b["rejected_mask"])
    np.testing.assert_allclose(got, want, rtol=1e-5)
