"""``--dry-run``: lower and compile a preset's train step for its mesh without the hardware.

The train state and batch are ``ShapeDtypeStruct``s carrying shardings, so nothing is allocated.
1. The step is lowered on a ``jax.sharding.AbstractMesh`` of the target size for the target
   platform (``run.dry_run_platform``, e.g. ``tpu``): this checks every sharding rule and shape.
2. Where this host can fake that many CPU devices (``jax_num_cpu_devices`` is set before the
   backend starts), it is also compiled and XLA's memory analysis gives the per-device temporary
   (activation) bytes. Parameter and optimizer bytes per device are computed from the shardings.
   ``model.remat`` and ``data.packing=document`` (the batch then carries segment ids and
   positions) change the compiled program, so the printed figures are those of the run's step.
"""

from __future__ import annotations

import math

from lm.config import Config


def _per_device_bytes(shapes, shardings, mesh_shape: dict) -> int:
    import jax
    total = 0
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        div = 1
        for axes in s.spec:
            names = (axes,) if isinstance(axes, str) else (axes or ())
            div *= math.prod(mesh_shape[a] for a in names)
        total += x.size * x.dtype.itemsize // div
    return total


def _gib(n: int) -> str:
    return f"{n / 2**30:8.3f} GiB"


def dry_run(cfg: Config) -> str:
    import jax
    n = cfg.run.dry_run_devices or math.prod(d for d in (cfg.mesh.data, cfg.mesh.fsdp,
                                                         cfg.mesh.tensor) if d > 0)
    try:  # must run before the CPU backend starts; harmless if it already has n devices
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lm import sharding as sh
    from lm.losses import get_loss
    from lm.model import GPT, count_params
    from lm.optim import make_optimizer
    from lm.setup import validate
    from lm.train import init_state, make_train_step, state_shardings

    validate(cfg, n)
    amesh = sh.abstract_mesh(cfg.mesh, n)
    abs_model = nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abs_model, nnx.Param)
    shapes = nnx.to_pure_dict(abs_state)
    specs = sh.param_specs(abs_state)
    tr = cfg.train
    lines = [f"dry run: preset mesh {dict(zip(sh.AXES, cfg.mesh.shape(n)))} on {n} devices, "
             f"{count_params(shapes) / 1e6:.1f}M params, batch {tr.batch_size}x{tr.seq_len}, "
             f"microbatches {tr.microbatches}, model.remat={cfg.model.remat}, "
             f"model.attention={cfg.model.attention}, data.packing={cfg.data.packing}"]
    keys = (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    if cfg.data.packing == "document":
        keys += (("segment_ids", jnp.int32), ("positions", jnp.int32))

    def lower(mesh, platform):
        p_shard = jax.tree.map(lambda s, a: NamedSharding(mesh, sh.fit_spec(s, a.shape, mesh)),
                               specs, shapes, is_leaf=lambda x: isinstance(x, P))
        tx, lr_fn = make_optimizer(cfg.opt, shapes, tr.steps)
        st_shapes = jax.eval_shape(lambda p: init_state(p, tx, 0), shapes)
        s_shard = state_shardings(st_shapes, p_shard, mesh)
        abs_st = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              st_shapes, s_shard)
        bs = sh.batch_sharding(mesh)
        batch = {k: jax.ShapeDtypeStruct((tr.batch_size, tr.seq_len), dt, sharding=bs)
                 for k, dt in keys}
        step = make_train_step(get_loss(tr.loss), tx, model=graphdef, cfg=cfg, mesh=mesh,
                               state_sharding=s_shard, microbatches=tr.microbatches,
                               lr_fn=lr_fn)
        traced = step.trace(abs_st, batch)
        lowered = traced.lower(lowering_platforms=(platform,)) if platform else traced.lower()
        return lowered, st_shapes, s_shard

    platform = cfg.run.dry_run_platform or "cpu"
    lowered, st_shapes, s_shard = lower(amesh, platform)
    lines.append(f"lowered for {platform} on AbstractMesh: "
                 f"{len(lowered.as_text()) // 1024} KiB of StableHLO")
    mshape = dict(zip(sh.AXES, cfg.mesh.shape(n)))
    pb = _per_device_bytes(st_shapes["params"], s_shard["params"], mshape)
    ob = _per_device_bytes(st_shapes["opt_state"], s_shard["opt_state"], mshape)
    lines += [f"params per device:    {_gib(pb)}", f"optimizer per device: {_gib(ob)}"]
    if jax.device_count() >= n and jax.default_backend() == "cpu":
        mesh = sh.make_mesh(cfg.mesh, jax.devices()[:n])
        compiled = lower(mesh, "")[0].compile()
        mem = compiled.memory_analysis()
        if mem is not None:
            lines.append(f"activations/temp per device (XLA, compiled for {n} CPU devices): "
                         f"{_gib(mem.temp_size_in_bytes)}")
            lines.append(f"arguments per device (XLA): {_gib(mem.argument_size_in_bytes)}")
            lines.append(f"params + optimizer + activations per device: "
                         f"{_gib(pb + ob + mem.temp_size_in_bytes)}")
    else:
        lines.append(f"(not compiled: this host has {jax.device_count()} devices of "
                     f"{jax.default_backend()}, fewer than {n})")
    return "\n".join(lines)
