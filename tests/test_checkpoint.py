import glob
import os

import jax
import numpy as np
import pytest
from flax import nnx

from lm import sharding as sh
from lm.checkpoint import Checkpointer, UnreadableCheckpoint, abstract_target
from lm.model import GPT
from lm.optim import OptCfg, make_optimizer
from lm.sharding import ConfigError
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


# ----------------------------------------------------------------------------- corrupted steps

CORRUPTIONS = {  # what "random bytes over a few files" of one Orbax step hits
    "data files": "state/d/*",
    "_METADATA": "state/_METADATA",
    "iterator state": "data/metadata",
}


def corrupt(step_dir, kind: str, seed: int = 0) -> list[str]:
    """Overwrite the ``kind`` files of an Orbax step folder with random bytes (same length)."""
    rng = np.random.default_rng(seed)
    paths = sorted(glob.glob(os.path.join(str(step_dir), CORRUPTIONS[kind])))
    assert paths, f"no {kind} files under {step_dir}"
    for p in paths:
        n = max(os.path.getsize(p), 16)
        with open(p, "wb") as fh:
            fh.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    return paths


def _two_steps(directory):
    """Steps 2 and 4 of a small state (weights, step); returns the abstract target."""
    state = {"params": {"w_3x4": np.arange(12.0, dtype=np.float32).reshape(3, 4)},
             "step": np.int32(0)}
    ck = Checkpointer(directory, async_save=False)
    for s in (2, 4):
        ck.save(s, {**state, "step": np.int32(s)}, {"next_index": s})
    ck.close()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return abstract_target(state, jax.tree.map(lambda _: one, state))


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_restore_latest_skips_an_unreadable_step(tmp_path, kind):
    d = str(tmp_path / "ck")
    target = _two_steps(d)
    corrupt(os.path.join(d, "4"), kind)
    said = []
    ck = Checkpointer(d, async_save=False)
    step, state, data = ck.restore_latest(target, log=said.append)
    assert (step, int(state["step"]), data) == (2, 2, {"next_index": 2})
    assert len(said) == 2 and "step 4" in said[0] and "unreadable (" in said[0]
    assert "resuming from step 2" in said[1]
    # the damaged step is kept aside, out of the way: the resumed run saves step 4 again
    assert ck.all_steps() == [2] and os.listdir(d + ".unreadable")[0].startswith("4.")
    ck.save(4, state, {"next_index": 4})
    ck.wait()
    assert ck.restore_latest(target, log=said.append)[0] == 4 and len(said) == 2
    ck.close()


def test_restore_latest_none_readable_names_steps_and_the_way_out(tmp_path):
    d = str(tmp_path / "ck")
    target = _two_steps(d)
    corrupt(os.path.join(d, "4"), "_METADATA")
    corrupt(os.path.join(d, "2"), "data files")
    ck = Checkpointer(d, async_save=False)
    with pytest.raises(UnreadableCheckpoint) as e:
        ck.restore_latest(target, log=lambda m: None)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg
    assert "step 4: UnicodeDecodeError" in msg and "step 2: ValueError: DATA_LOSS" in msg
    assert "--set run.overwrite=true" in msg
    assert ck.all_steps() == [2, 4]  # nothing moved when nothing could be restored
    assert Checkpointer(str(tmp_path / "empty")).restore_latest(target) is None


def test_restore_latest_check_rejects_a_wrong_data_state(tmp_path):
    d = str(tmp_path / "ck")
    target = _two_steps(d)

    def check(data):
        if data["next_index"] == 4:
            raise KeyError("position")
    step, _, _ = Checkpointer(d, async_save=False).restore_latest(target, check=check,
                                                                  log=lambda m: None)
    assert step == 2
