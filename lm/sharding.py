"""Mesh, logical-axis rules and abstract, sharded initialisation.

The mesh has axes ``("data", "fsdp", "tensor")``. Parameters carry logical names (``lm.layers``);
``RULES`` is the one table that maps them to mesh axes. Initialisation is abstract first:
``nnx.eval_shape`` gives shapes and names, the rules give ``NamedSharding``s, and
``jax.jit(init, out_shardings=...)`` materialises each shard on its own device.

GQA/MQA: the kv heads (logical "kv_heads") go on ``tensor`` when their count divides the
``tensor`` axis; otherwise (e.g. MQA's single kv head, or 2 kv heads over tensor=4) ``fit_spec``
drops the axis and the k/v projections are *replicated* over ``tensor`` (each tensor shard
computes all kv heads; the q heads stay split), as for any dimension a mesh axis does not divide.

Experts (``lm.moe``): the stacked expert weights' leading axis (logical "expert") goes on
``fsdp``, as Tunix does, rather than on a fourth ``expert`` mesh axis. Why: the mesh axes are
fixed everywhere (batch placement, checkpoints restored onto another mesh, ``--dry-run``,
activation constraints) and a new axis would change every mesh; ``fsdp`` already splits the
batch, so the devices that hold different experts are the ones holding different tokens,
the layout expert parallelism exchanges tokens over; and an fsdp shard then holds E/fsdp
*whole* experts (the same bytes as 1/fsdp of each, with no per-expert gather of weights). The
experts' model dim is therefore left unsharded (a spec may name ``fsdp`` once) and their hidden
dim goes on ``tensor`` like a dense MLP's. When E does not divide ``fsdp``, ``fit_spec`` drops
the axis (experts replicated over fsdp). The dispatch is plain jitted code: XLA's partitioner
inserts the collectives.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or None = replicated). One table for every model in the codebase.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",  # replicated when the kv-head count does not divide it (fit_spec)
    "kv": None,
    "norm": None,
    "codes": None,
    "expert": "fsdp",  # MoE experts (see the module docstring)
    # activations (``constrain``): the residual stream is batch-sharded and replicated over
    # ``tensor``; q/k/v and the MLP hidden are split by heads / mlp like their weights.
    "length": None,
    "act_embed": None,
}


class ConfigError(ValueError):
    """A user-facing configuration problem (reported without a traceback, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class MeshCfg:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    tensor: int = 1

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        dims = [self.data, self.fsdp, self.tensor]
        if sum(d == -1 for d in dims) > 1:
            raise ConfigError(f"mesh: at most one axis may be -1, got {dict(zip(AXES, dims))}")
        if any(d == 0 or d < -1 for d in dims):
            raise ConfigError("mesh: axis sizes must be positive or -1, got "
                              f"{dict(zip(AXES, dims))}")
        known = math.prod(d for d in dims if d != -1)
        if n_devices % known:
            raise ConfigError(f"mesh {dict(zip(AXES, dims))} does not divide the {n_devices} "
                              f"devices; choose sizes whose product divides {n_devices}")
        dims = [n_devices // known if d == -1 else d for d in dims]
        if math.prod(dims) != n_devices:
            raise ConfigError(f"mesh {dict(zip(AXES, dims))} uses {math.prod(dims)} devices but "
                              f"{n_devices} are present; set one axis to -1 or match the count")
        return tuple(dims)


def make_mesh(cfg: MeshCfg, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    shape = cfg.shape(len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def abstract_mesh(cfg: MeshCfg, n_devices: int) -> jax.sharding.AbstractMesh:
    """A device-free mesh for ahead-of-time lowering of a pod config (``--dry-run``)."""
    return jax.sharding.AbstractMesh(cfg.shape(n_devices), AXES,
                                     axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(names: tuple[str | None, ...], rules=None) -> P:
    rules = RULES if rules is None else rules
    out = []
    for n in names:
        if n is not None and n not in rules:
            raise KeyError(f"logical axis {n!r} has no rule; known: {sorted(rules)}")
        out.append(None if n is None else rules[n])
    return P(*out)


def param_specs(abs_state: nnx.State, rules=None):
    """PartitionSpec per Param from its logical ``out_sharding`` names, as a pure dict."""
    def spec(v):
        names = v.get_metadata().get("out_sharding") or (None,) * len(v.shape)
        return logical_to_spec(tuple(names), rules)
    specs = jax.tree.map(spec, abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(specs)


def fit_spec(spec: P, shape, mesh) -> P:
    """Drop mesh axes that do not divide a dimension (e.g. vocab 256 over tensor=3)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else (axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if size and dim % size == 0 else None)
    return P(*out)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Pin an activation's layout by logical ``names`` under the ambient mesh: a no-op outside
    one (notebooks, sampling, single-device code). ``lm.train`` traces its steps under
    ``jax.sharding.use_abstract_mesh(mesh)``; mesh axes that do not divide a dimension (a small
    microbatch, an odd vocab) are dropped, as for params."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or tuple(mesh.axis_names) != AXES:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(logical_to_spec(names), x.shape, mesh))


def abstract_params(model_fn, mesh, rules=None):
    """``(graphdef, shapes, shardings)`` of ``model_fn()``'s params, nothing allocated: the
    pure dicts of ``ShapeDtypeStruct``s and of ``NamedSharding``s by the rules."""
    abs_model = nnx.eval_shape(model_fn)
    graphdef, abs_state = nnx.split(abs_model, nnx.Param)
    specs = param_specs(abs_state, rules)
    shapes = nnx.to_pure_dict(abs_state)
    shardings = jax.tree.map(lambda s, a: NamedSharding(mesh, fit_spec(s, a.shape, mesh)),
                             specs, shapes, is_leaf=lambda x: isinstance(x, P))
    return graphdef, shapes, shardings


def init_params(model_fn, mesh, rules=None):
    """Build a model abstractly, then materialise its params sharded on ``mesh``.

    ``model_fn()`` builds an ``nnx.Module`` (e.g. ``lambda: GPT(cfg, rngs=nnx.Rngs(0))``).
    Returns ``(graphdef, params, shardings)`` with ``params`` a pure dict of sharded arrays.
    """
    graphdef, _, shardings = abstract_params(model_fn, mesh, rules)

    def init():
        return nnx.to_pure_dict(nnx.state(model_fn(), nnx.Param))

    params = jax.jit(init, out_shardings=shardings)()
    return graphdef, params, shardings


def init_subset(model_fn, mesh, paths: set, rules=None) -> dict:
    """Materialise only the params at ``paths`` (tuples of keys) of ``model_fn()``, sharded: a
    jitted init whose other outputs are dropped (XLA removes their random draws), so adding a
    fresh DLR router or LoRA adapters to a loaded base never builds a second full model."""
    _, _, shardings = abstract_params(model_fn, mesh, rules)

    def pick(tree, prefix=()):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                sub = pick(v, prefix + (k,))
                if sub:
                    out[k] = sub
            elif prefix + (k,) in paths:
                out[k] = v
        return out

    init = lambda: pick(nnx.to_pure_dict(nnx.state(model_fn(), nnx.Param)))  # noqa: E731
    return jax.jit(init, out_shardings=pick(shardings))()


def merge(graphdef, params):
    """Module from a graphdef and a pure params dict (call inside jitted functions)."""
    return nnx.merge(graphdef, nnx.State(params))


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *(None,) * (ndim - 1)))


def data_parallel_size(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch, mesh):
    """Place a host batch (dict of numpy arrays, global on one process) on the mesh.

    Multi-process: each process passes its own rows; the global array is assembled with
    ``jax.make_array_from_process_local_data``."""
    def put(x):
        x = np.asarray(x)
        s = batch_sharding(mesh, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, s)
        gshape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(s, x, gshape)
    return jax.tree.map(put, batch)
