"""Orbax checkpoints of the whole train state plus the data iterator's state.

``Checkpointer(dir)`` wraps an async ``ocp.CheckpointManager`` saving a Composite of
``state`` (params, optimizer state, step, rng, loss state; ``StandardSave``) and ``data`` (the grain
iterator state; ``JsonSave``). Orbax writes each step into a temporary folder and renames it when
complete, so a checkpoint is either whole or absent. ``restore`` takes an *abstract* target whose
leaves are ``jax.ShapeDtypeStruct``s carrying shardings, so a run saved on one mesh resumes on
another.

``restore_latest(target)`` is the resume path: it tries the steps newest first and skips one that
cannot be read (bytes overwritten in its array data, ``_METADATA``, ``array_metadatas`` or the
iterator-state JSON: Orbax and TensorStore raise ``UnicodeDecodeError``, ``ValueError: DATA_LOSS``,
``JSONDecodeError``, ...), logging its step and cause; the skipped steps are moved aside to
``<dir>.unreadable/`` (kept for inspection, out of the manager's way, so the resumed run can save
those steps again). When no step is readable it raises ``UnreadableCheckpoint`` (a
``ConfigError``: the CLI prints one ``error:`` line and exits 2) naming each step, its cause and
``--set run.overwrite=true``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import orbax.checkpoint as ocp

from lm.sharding import ConfigError


class UnreadableCheckpoint(ConfigError):
    """No checkpoint of the run directory could be restored (each step's cause in the message)."""


def _cause(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160] + '...' if len(msg) > 160 else msg}"


@contextlib.contextmanager
def _quiet_unraisable():
    """A failed TensorStore read leaves coroutines that Python reports as "Exception ignored"
    tracebacks on stderr; the cause is reported once by ``restore_latest`` instead."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook


def abstract_target(state, shardings):
    """ShapeDtypeStructs of ``state`` (arrays or shapes) with the given shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)



def prune(tree, frozen, prefix=()):
    """``tree`` without the dict entries whose path ``frozen(path)`` holds (dicts emptied by it
    are dropped); other containers are kept whole (the frozen leaves live in params dicts)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        path = prefix + (str(k),)
        if isinstance(v, dict):
            sub = prune(v, frozen, path)
            if sub or not v:
                out[k] = sub
        elif not frozen(path):
            out[k] = v
    return out


def graft(pruned, full):
    """``full`` with every entry present in ``pruned`` taken from ``pruned``."""
    if not isinstance(full, dict):
        return pruned
    return {k: (graft(pruned[k], v) if k in pruned else v) for k, v in full.items()}


class Checkpointer:
    """``frozen(path)`` (paths of dict keys, e.g. ``lm.lora.frozen_state_fn``): leaves that are
    not saved (a LoRA run's frozen base, rebuilt from ``model.init_from`` or the seed); a
    restore takes them from ``fill``, the freshly built state."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
                 frozen=None):
        self.frozen = frozen
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
        if self.frozen is not None:
            state = prune(state, self.frozen)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, target, fill=None):
        """Restore ``step`` into ``target`` (abstract state with shardings); with ``frozen``
        the unsaved leaves come from ``fill`` (a concrete state shaped like ``target``)."""
        if self.frozen is not None:
            if fill is None:
                raise ValueError("a Checkpointer with frozen leaves restores with fill=state")
            target = prune(target, self.frozen)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                  data=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        state = out["state"] if self.frozen is None else graft(out["state"], fill)
        return state, dict(out["data"] or {})

    def restore_latest(self, target, *, check=None, log=print, fill=None):
        """``(step, state, data_state)`` of the newest readable checkpoint; None when there is no
        checkpoint. ``check(data_state)`` (e.g. the iterator's ``set_state``) runs inside the
        attempt, so a parseable but wrong iterator state counts as unreadable too. Raises
        ``UnreadableCheckpoint`` when every step fails."""
        steps = sorted(self.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        for step in steps:
            try:
                with _quiet_unraisable():
                    state, data_state = self.restore(step, target, fill)
                if check is not None:
                    check(data_state)
            except Exception as e:  # noqa: BLE001 - any read failure of a damaged checkpoint
                failed.append((step, _cause(e)))
                log(f"checkpoint step {step} in {self.directory} is unreadable ({failed[-1][1]})")
                continue
            if failed:
                aside = self._set_aside([s for s, _ in failed])
                log(f"resuming from step {step}, the newest readable checkpoint; unreadable "
                    f"step(s) {[s for s, _ in failed]} moved to {aside}")
            return step, state, data_state
        if not failed:
            return None
        causes = "; ".join(f"step {s}: {c}" for s, c in failed)
        raise UnreadableCheckpoint(
            f"no checkpoint in {self.directory} can be restored ({causes}); pass --set "
            f"run.overwrite=true to start the run afresh (this deletes the run directory), or "
            f"move {self.directory} away")

    def _set_aside(self, steps: list[int]) -> str:
        """Move unreadable step folders to ``<dir>.unreadable/<step>.<unix time>``."""
        aside = self.directory + ".unreadable"
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                os.replace(os.path.join(self.directory, str(step)),
                           os.path.join(aside, f"{step}.{int(time.time())}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("lm.checkpoint.set_aside")
        self.manager.reload()
        return aside

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
