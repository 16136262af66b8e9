"""Orbax checkpoints of the whole train state plus the data iterator's state.

``Checkpointer(dir)`` wraps an async ``ocp.CheckpointManager`` saving a Composite of
``state`` (params, optimizer state, step, rng, loss state; ``StandardSave``) and ``data`` (the grain
iterator state; ``JsonSave``). Orbax writes each step into a temporary folder and renames it when
complete, so a checkpoint is either whole or absent. ``restore`` takes an *abstract* target whose
leaves are ``jax.ShapeDtypeStruct``s carrying shardings, so a run saved on one mesh resumes on
another.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def abstract_target(state, shardings):
    """ShapeDtypeStructs of ``state`` (arrays or shapes) with the given shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=opts,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None = None, *, force: bool = False):
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, target):
        """Restore ``step`` into ``target`` (abstract state with shardings)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                  data=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out["state"], dict(out["data"] or {})

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def save_params_npz(path: str, params) -> str:
    """A small param tree (a pretrained base, an SFT reference) as one ``.npz`` keyed by tree
    path, written atomically: a killed run leaves the old file or none, never half of one."""
    import numpy as np
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)
    return path


def load_params_npz(path: str, like):
    """``save_params_npz``'s file as a tree shaped like ``like`` (arrays or ShapeDtypeStructs);
    a missing file or another tree/shape is one ValueError naming what differs."""
    import numpy as np
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist; give a .npz written by save_params_npz")
    with np.load(path) as f:
        got = dict(f)
    paths = jax.tree_util.tree_leaves_with_path(like)
    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in paths}
    have = {k: tuple(v.shape) for k, v in got.items()}
    if want != have:
        diff = sorted(set(have.items()) ^ set(want.items()))[:4]
        raise ValueError(f"{path!r} holds params of another model shape: {diff} differ")
    leaves = [got[jax.tree_util.keystr(k)] for k, _ in paths]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
