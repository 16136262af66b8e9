import jax
import numpy as np
from flax import nnx

from lm import sharding as sh
from lm.checkpoint import Checkpointer, abstract_target
from lm.model import GPT
from lm.optim import OptCfg, make_optimizer
from lm.train import init_state, state_shardings
from tests.helpers import TINY, mesh


def sharded_state(mesh_shape):
    m = mesh(mesh_shape)
    _, params, p_shard = sh.init_params(lambda: GPT(TINY, rngs=nnx.Rngs(0)), m)
    tx, _ = make_optimizer(OptCfg(), params, 10)
    shapes = jax.eval_shape(lambda p: init_state(p, tx, 3), params)
    s_shard = state_shardings(shapes, p_shard, m)
    state = jax.jit(lambda p: init_state(p, tx, 3), out_shardings=s_shard)(params)
    return state, s_shard


def test_save_on_one_mesh_restore_on_another(tmp_path):
    state, _ = sharded_state((2, 2, 2))
    state = {**state, "step": state["step"] + 7}
    ck = Checkpointer(str(tmp_path / "ck"))
    ck.save(7, state, {"next_index": 123, "epoch": 1})
    ck.wait()
    assert ck.latest_step() == 7
    abs_state, shard_b = sharded_state((1, 4, 2))
    restored, data_state = ck.restore(7, abstract_target(abs_state, shard_b))
    ck.close()
    assert data_state == {"next_index": 123, "epoch": 1}
    assert int(restored["step"]) == 7
    for a, b, s in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(shard_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding == s  # lands in the new mesh's layout
    qkv = restored["params"]["block_0"]["attn"]["qkv_Dx3xNxH"]
    assert qkv.sharding.mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}


def test_max_to_keep_and_atomic_dirs(tmp_path):
    state, _ = sharded_state((1, 1, 1))
    ck = Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
    for s in (1, 2, 3):
        ck.save(s, state, {})
    ck.close()
    assert ck.all_steps() == [2, 3]
    # only finished steps are visible: no temporary folders left behind
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["2", "3"], names
