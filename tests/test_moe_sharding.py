"""MoE train steps on meshes: the (2,2,2) mesh and experts split 8 ways over fsdp equal the
1-device step; expert weights are sharded as ``lm.sharding.RULES`` say (experts on fsdp, their
hidden on tensor)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.config import Config
from lm import sharding as sh
from lm.losses import xent
from lm.model import GPT
from lm.optim import OptCfg, make_optimizer
from lm.train import init_state, make_train_step, state_shardings
from tests.helpers import TINY, mesh, random_batch

# eps=1e-4: see tests/test_train.py (Adam's amplification of summation-order noise)
CFG = Config(model=dataclasses.replace(TINY, mlp="swiglu", moe_experts=8, moe_top_k=2,
                                       moe_d_ff=16, moe_router_z_coef=1e-3),
             opt=OptCfg(lr=1e-2, warmup=0, eps=1e-4))


def run_steps(mesh_shape, n=2):
    m = mesh(mesh_shape)
    gd, params, p_shard = sh.init_params(lambda: GPT(CFG.model, rngs=nnx.Rngs(0)), m)
    tx, lr = make_optimizer(CFG.opt, params, 10)
    shapes = jax.eval_shape(lambda p: init_state(p, tx, 0), params)
    s_shard = state_shardings(shapes, p_shard, m)
    state = jax.jit(lambda p: init_state(p, tx, 0), out_shardings=s_shard)(params)
    step = make_train_step(xent, tx, model=gd, cfg=CFG, mesh=m, state_sharding=s_shard,
                           lr_fn=lr)
    metrics = []
    for i in range(n):
        state, met = step(state, sh.shard_batch(random_batch(8, 16, 64, seed=i), m))
        metrics.append({k: float(v[0] / v[1]) for k, v in met.items()
                        if isinstance(v, tuple) and k in ("loss", "moe_aux", "moe_z")})
    return state["params"], metrics


@pytest.mark.slow  # three compiles of the step (1, 8 and 8 devices): ~100 s on 2 loaded cores
def test_moe_step_on_meshes_equals_single_device():
    p1, m1 = run_steps((1, 1, 1))
    for shape in ((2, 2, 2), (1, 8, 1)):
        p8, m8 = run_steps(shape)
        for a, b in zip(m1, m8):
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=f"{shape} {k}")
        for a, b in zip(jax.tree.leaves(jax.device_get(p1)), jax.tree.leaves(
                jax.device_get(p8))):
            np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)
        experts = p8["block_0"]["moe"]
        for name in ("gate_ExDxF", "up_ExDxF"):
            assert tuple(experts[name].sharding.spec) == ("fsdp", None, "tensor"), shape
        E = CFG.model.moe_experts
        assert experts["down_ExFxD"].sharding.shard_shape(experts["down_ExFxD"].shape)[0] == \
            E // shape[1]  # whole experts per fsdp shard
