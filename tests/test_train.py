import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.config import Config
from lm import sharding as sh
from lm.losses import xent
from lm.model import GPT
from lm.optim import OptCfg, decay_mask, frozen_mask, make_optimizer
from lm.train import init_state, make_train_step, state_shardings
from tests.helpers import TINY, mesh, random_batch

# Adam divides by sqrt(v) + eps: with eps=1e-8 a gradient entry of ~1e-9 turns summation-order
# noise (different on 1 vs 8 devices) into a full-size update. eps=1e-4 keeps the step well
# conditioned so the comparisons below test the sharding, not Adam's amplification of roundoff.
CFG = Config(model=TINY, opt=OptCfg(lr=1e-2, warmup=0, eps=1e-4))


def setup(mesh_shape, microbatches=1, cfg=CFG):
    m = mesh(mesh_shape)
    gd, params, p_shard = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(0)), m)
    tx, lr = make_optimizer(cfg.opt, params, 10)
    shapes = jax.eval_shape(lambda p: init_state(p, tx, 0), params)
    s_shard = state_shardings(shapes, p_shard, m)
    state = jax.jit(lambda p: init_state(p, tx, 0), out_shardings=s_shard)(params)
    step = make_train_step(xent, tx, model=gd, cfg=cfg, mesh=m, state_sharding=s_shard,
                           microbatches=microbatches, lr_fn=lr)
    return m, state, step


def run_steps(mesh_shape, n=3, microbatches=1, mask_frac=0.0):
    m, state, step = setup(mesh_shape, microbatches)
    losses = []
    for i in range(n):
        b = sh.shard_batch(random_batch(8, 16, 64, seed=i, mask_frac=mask_frac), m)
        state, met = step(state, b)
        losses.append(float(met["loss"][0] / met["loss"][1]))
    return jax.device_get(state["params"]), losses


def test_sharded_step_equals_single_device():
    p1, l1 = run_steps((1, 1, 1))
    p8, l8 = run_steps((2, 2, 2))
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_activation_layouts_are_pinned_under_the_step_mesh_only():
    """The residual stream, q/k/v, MLP hidden and logits carry sharding constraints in the
    train step's program (batch over data+fsdp, heads/mlp/vocab over tensor); the same model
    called outside a mesh (notebooks, sampling) has none."""
    m, state, step = setup((2, 2, 2))
    b = sh.shard_batch(random_batch(8, 16, 64), m)
    text = step.lower(state, b).as_text()
    cons = [ln.split("<@mesh, ")[1].split(" :")[0] for ln in text.splitlines()
            if "sharding_constraint" in ln]
    stream = '[{"data", "fsdp"}, {}, {}]>'
    assert cons.count(stream) >= 1 + TINY.n_layers  # after the embedding and every block
    assert '[{"data", "fsdp"}, {}, {"tensor"}, {}]>' in cons  # q/k/v by heads
    assert '[{"data", "fsdp"}, {"tensor"}]>' in cons  # MLP hidden by mlp
    assert '[{"data", "fsdp"}, {}, {"tensor"}]>' in cons  # logits by vocab
    gd, params = nnx.split(GPT(TINY, rngs=nnx.Rngs(0)), nnx.Param)
    plain = jax.jit(lambda p, x: sh.merge(gd, p)(x)).lower(nnx.to_pure_dict(params),
                                                           b["inputs"]).as_text()
    assert "sharding_constraint" not in plain


def test_microbatches_equal_full_batch_with_ragged_masks():
    """Gradient accumulation weights each slice by its token count: exact token mean."""
    p1, l1 = run_steps((2, 1, 1), n=2, mask_frac=0.4)
    p4, l4 = run_steps((2, 1, 1), n=2, microbatches=4, mask_frac=0.4)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_every_param_sharded_as_rules_say():
    m, state, _ = setup((2, 2, 2))
    abs_state = nnx.split(nnx.eval_shape(lambda: GPT(TINY, rngs=nnx.Rngs(0))), nnx.Param)[1]
    names = nnx.to_pure_dict(jax.tree.map(lambda v: v.get_metadata()["out_sharding"], abs_state,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable)))
    flat_names = dict(jax.tree_util.tree_flatten_with_path(
        names, is_leaf=lambda x: isinstance(x, tuple))[0])
    checked = 0
    for path, arr in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
        want = tuple(sh.RULES[n] if n else None for n in flat_names[path])
        got = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
        assert got == want, (path, got, want)
        checked += 1
    assert checked == len(jax.tree.leaves(state["params"]))
    # adam moments follow their params
    mu = state["opt_state"][1][0].mu
    for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(state["params"])):
        assert a.sharding.spec == b.sharding.spec


def test_metrics_and_norms():
    _, state, step = setup((1, 1, 1))
    b = sh.shard_batch(random_batch(8, 16, 64), mesh((1, 1, 1)))
    state, met = step(state, b)
    assert int(state["step"]) == 1
    for k in ("grad_norm", "param_norm", "update_norm", "lr"):
        assert np.isfinite(float(met[k]))
    assert float(met["loss"][1]) == 8 * 16
    np.testing.assert_allclose(float(met["loss"][0] / met["loss"][1]), np.log(64), rtol=0.05)


def test_decay_and_frozen_masks():
    _, params = nnx.split(GPT(TINY, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(params)
    dm = decay_mask(params, OptCfg())
    assert dm["block_0"]["mlp"]["up_DxCxF"] and not dm["block_0"]["norm1"]["scale"]
    assert not dm["embed_VxD"]
    assert decay_mask(params, OptCfg(decay_embeddings=True))["embed_VxD"]
    fm = frozen_mask(params, r"^embed")
    assert fm["embed_VxD"] and not fm["block_1"]["attn"]["qkv_Dx3xNxH"]


def test_frozen_params_do_not_move():
    cfg = dataclasses.replace(CFG, opt=dataclasses.replace(CFG.opt, freeze=r"block_0/"))
    m, state, step = setup((1, 1, 1), cfg=cfg)
    before = jax.device_get(state["params"])
    state, _ = step(state, sh.shard_batch(random_batch(8, 16, 64), m))
    after = jax.device_get(state["params"])
    np.testing.assert_array_equal(after["block_0"]["attn"]["qkv_Dx3xNxH"],
                                  before["block_0"]["attn"]["qkv_Dx3xNxH"])
    assert not np.allclose(after["block_1"]["attn"]["qkv_Dx3xNxH"],
                           before["block_1"]["attn"]["qkv_Dx3xNxH"])


def test_schedule_warmup_then_cosine():
    _, lr = make_optimizer(OptCfg(lr=1.0, warmup=10, min_lr_ratio=0.1), {"w": np.ones(2)}, 110)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
    assert abs(float(lr(110)) - 0.1) < 1e-6
    assert float(lr(60)) == pytest.approx(0.55, rel=1e-4)


def test_tx_is_plain_optax():
    tx, _ = make_optimizer(OptCfg(), {"w": np.ones((2, 2))}, 10)
    assert isinstance(tx, optax.GradientTransformation)
