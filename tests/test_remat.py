"""model.remat: every policy gives the loss and gradients of ``none`` (fp32, 1 device and the
(2,2,2) mesh); ``full`` shrinks the compiled program's temp (activation) bytes."""

import dataclasses
import types

import jax
import numpy as np
import pytest
from flax import nnx

from lm import sharding as sh
from lm.losses import xent
from lm.model import GPT, ModelCfg
from lm.remat import POLICIES
from lm.train import mesh_context
from tests.helpers import TINY, mesh, random_batch

CFG = types.SimpleNamespace(train=types.SimpleNamespace(z_loss=0.0))
BASE = dataclasses.replace(TINY, dropout=0.0)


def all_losses_and_grads(batch, on_mesh=None):
    """{policy: (loss, grads)} from one jitted function (one compile for all five policies)."""
    m = on_mesh or sh.make_mesh(sh.MeshCfg(data=-1), jax.devices()[:1])
    graphdef, params, _ = sh.init_params(lambda: GPT(BASE, rngs=nnx.Rngs(0)), m)
    gds = {p: nnx.graphdef(nnx.eval_shape(lambda p=p: GPT(dataclasses.replace(BASE, remat=p),
                                                          rngs=nnx.Rngs(0))))
           for p in POLICIES}
    b = sh.shard_batch(batch, m)

    def f(params, b):
        with mesh_context(m):
            return {p: jax.value_and_grad(lambda q, gd=gd: xent(q, b, model=gd, rng=None,
                                                                 cfg=CFG)[0])(params)
                    for p, gd in gds.items()}
    return jax.tree.map(np.asarray, jax.jit(f)(params, b))


@pytest.fixture(scope="module", params=["one", "mesh"])
def results(request):
    batch = random_batch(8, 16, TINY.vocab_size, seed=3, mask_frac=0.2)
    return all_losses_and_grads(batch, mesh() if request.param == "mesh" else None)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_policy_matches_none(policy, results):
    (loss, grads), (ref_loss, ref_grads) = results[policy], results["none"]
    assert abs(float(loss) - float(ref_loss)) <= 1e-6
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-6)


def temp_bytes(model_cfg, B=8, L=64):
    """Temp bytes of the compiled loss gradient (lowered from abstract params: no init)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(0))),
                                nnx.Param)
    params = nnx.to_pure_dict(state)
    b = random_batch(B, L, model_cfg.vocab_size)
    f = jax.jit(jax.grad(lambda p, b: xent(p, b, model=graphdef, rng=None, cfg=CFG)[0]))
    return f.lower(params, b).compile().memory_analysis().temp_size_in_bytes


def test_full_remat_lowers_temp_bytes():
    cfg = ModelCfg(vocab_size=64, d_model=64, n_layers=3, n_heads=4, d_ff=256, max_len=64)
    none, full = temp_bytes(cfg), temp_bytes(dataclasses.replace(cfg, remat="full"))
    assert full < 0.6 * none, (full, none)


def test_bad_remat_is_one_clear_error():
    with pytest.raises(ValueError, match=r"model.remat='some' is not one of \('none', 'full'"):
        dataclasses.replace(BASE, remat="some")


def test_remat_keeps_dlr_steering_hiddens_and_dropout():
    """The scanned path cuts at the DLR layer and draws the same dropout masks per block."""
    from lm.routing import DLRCfg
    cfg = dataclasses.replace(TINY, n_layers=3, dropout=0.1, dlr=DLRCfg(layer=1, codes=4,
                                                                         chunk=4))
    toks = jax.numpy.asarray(random_batch(2, 16, TINY.vocab_size)["inputs"])
    codes = jax.numpy.asarray(np.random.default_rng(0).integers(0, 4, (2, 4)), jax.numpy.int32)
    outs = {}
    for policy in ("none", "full"):
        model = GPT(dataclasses.replace(cfg, remat=policy), rngs=nnx.Rngs(0))
        gd, p = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model, nnx.Param))
        f = jax.jit(lambda p, t, c, gd=gd: nnx.merge(gd, nnx.State(p))(
            t, rng=jax.random.key(5), codes_BxM=c, return_hidden=True))
        outs[policy] = jax.tree.map(np.asarray, f(p, toks, codes))
    (lg, hs), (lg_ref, hs_ref) = outs["full"], outs["none"]
    assert len(hs) == len(hs_ref) == 4
    np.testing.assert_allclose(lg, lg_ref, atol=1e-6, rtol=1e-6)
    for h, r in zip(hs, hs_ref):
        np.testing.assert_allclose(h, r, atol=1e-6, rtol=1e-6)
