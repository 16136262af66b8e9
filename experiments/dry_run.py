"""``--dry-run``: lower and compile a preset's train step for its mesh without the hardware.

The train state and batch are ``ShapeDtypeStruct``s carrying shardings, so nothing is allocated.
1. The step is lowered on a ``jax.sharding.AbstractMesh`` of the target size for the target
   platform (``run.dry_run_platform``, e.g. ``tpu``): this checks every sharding rule and shape.
2. Where this host can fake that many CPU devices (``jax_num_cpu_devices`` is set before the
   backend starts), it is also compiled and XLA's memory analysis gives the per-device temporary
   (activation) bytes. Parameter and optimizer bytes per device are computed from the shardings.
   ``model.remat`` and ``data.packing=document`` (the batch then carries segment ids and
   positions) change the compiled program, so the printed figures are those of the run's step.

The batch has the keys of the loss's kind (``train.loss``): LM losses ``inputs``/``targets``/
``mask``; preference losses (DPO family, TDPO) ``train.batch_size`` pairs of chosen and rejected
rows; policy losses (GRPO family, PPO) ``tokens``/``mask``/``old_logp``/``adv``/``ref_logp``.
With ``model.init_from`` only the checkpoint's ``config.json`` is read (a config alone is
enough: nothing is loaded). Per-device bytes are printed for the frozen params, the trainable
adapters (``model.lora``; 0 for a full fine-tune, whose params are all trainable), the
optimizer state and XLA's activations/temporaries; with LoRA the reference of the preference /
policy losses is the base with adapters off, so no reference copy is counted (without LoRA the
reference params of preference losses are a second params copy and are counted).
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


def _moe_line(mcfg, shapes, shardings, mesh_shape: dict) -> str:
    """Expert weights per device and how the expert axis is split (``lm.moe``)."""
    import jax

    from lm.perf import EXPERT_WEIGHTS
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    keep = [str(getattr(p[-1], "key", p[-1])) in EXPERT_WEIGHTS for p, _ in flat]
    pick = lambda t: [x for x, k in zip(jax.tree.leaves(t), keep) if k]  # noqa: E731
    eb = _per_device_bytes(pick(shapes), pick(shardings), mesh_shape)
    full = sum(x.size * x.dtype.itemsize for x in pick(shapes))
    axes = pick(shardings)[0].spec[0] if pick(shardings) else None
    names = (axes,) if isinstance(axes, str) else (axes or ())
    split = math.prod(mesh_shape[a] for a in names)
    n_moe = sum(mcfg.is_moe(i) for i in range(mcfg.n_layers))
    return (f"experts per device:   {_gib(eb)} ({eb:,} of {full:,} bytes: "
            f"{mcfg.moe_experts // split} of {mcfg.moe_experts} experts x {n_moe} MoE layers "
            f"per device, expert axis on {names or 'no mesh axis'}; top-{mcfg.moe_top_k})")


def _gib(n: int) -> str:
    return f"{n / 2**30:8.3f} GiB"


def batch_keys(loss_fn, packing: str):
    """(name, dtype, rows per batch row) of the step's batch for the loss's kind."""
    import jax.numpy as jnp
    kind = getattr(loss_fn, "kind", "lm")
    if kind == "preference":
        return (("chosen_tokens", jnp.int32), ("chosen_mask", jnp.float32),
                ("rejected_tokens", jnp.int32), ("rejected_mask", jnp.float32)), 2
    if kind == "policy":
        return (("tokens", jnp.int32), ("mask", jnp.float32), ("old_logp", jnp.float32),
                ("adv", jnp.float32), ("ref_logp", jnp.float32)), 1
    keys = (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    if packing == "document":
        keys += (("segment_ids", jnp.int32), ("positions", jnp.int32))
    return keys, 1


def dry_run(cfg: Config) -> str:
    import jax
    n = cfg.run.dry_run_devices or math.prod(d for d in (cfg.mesh.data, cfg.mesh.fsdp,
                                                         cfg.mesh.tensor) if d > 0)
    try:  # must run before the CPU backend starts; harmless if it already has n devices
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lm import lora, pretrained
    from lm import sharding as sh
    from lm.losses import get_loss
    from lm.model import GPT, count_params
    from lm.optim import make_optimizer
    from lm.setup import validate
    from lm.train import init_state, make_train_step, state_shardings

    cfg = pretrained.resolve(cfg)  # a config.json alone fixes the architecture
    validate(cfg, n)
    trainable = lora.trainable_fn(cfg.model)
    loss_fn = get_loss(cfg.train.loss)
    amesh = sh.abstract_mesh(cfg.mesh, n)
    abs_model = nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abs_model, nnx.Param)
    shapes = nnx.to_pure_dict(abs_state)
    specs = sh.param_specs(abs_state)
    tr = cfg.train
    keys, rows = batch_keys(loss_fn, cfg.data.packing)
    lc = cfg.model.lora
    lines = [f"dry run: preset mesh {dict(zip(sh.AXES, cfg.mesh.shape(n)))} on {n} devices, "
             f"{count_params(shapes) / 1e6:.1f}M params, batch {tr.batch_size}x{tr.seq_len}, "
             f"microbatches {tr.microbatches}, model.remat={cfg.model.remat}, "
             f"model.attention={cfg.model.attention}, data.packing={cfg.data.packing}",
             f"train.loss={tr.loss} ({tr.batch_size * rows} sequences of {tr.seq_len} tokens), "
             f"model.param_dtype={cfg.model.param_dtype}, " + (
                 f"LoRA rank {lc.rank} on {','.join(lc.targets)}"
                 + (f", base {lc.base_dtype}" if lc.base_dtype else "") if lc.on
                 else "full fine-tuning")]
    ref_copy = (getattr(loss_fn, "kind", "") == "preference" and trainable is None
                and tr.loss != "simpo")

    def lower(mesh, platform):
        p_shard = jax.tree.map(lambda s, a: NamedSharding(mesh, sh.fit_spec(s, a.shape, mesh)),
                               specs, shapes, is_leaf=lambda x: isinstance(x, P))
        tx, lr_fn = make_optimizer(cfg.opt, lora.trainable_subset(shapes, cfg.model), tr.steps)
        loss_state = {"ref_params": shapes} if ref_copy else None
        st_shapes = jax.eval_shape(lambda p: init_state(p, tx, 0, loss_state, trainable), shapes)
        s_shard = state_shardings(st_shapes, p_shard, mesh,
                                  None if trainable is None else
                                  lora.trainable_subset(p_shard, cfg.model))
        abs_st = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              st_shapes, s_shard)
        bs = sh.batch_sharding(mesh)
        batch = {k: jax.ShapeDtypeStruct((tr.batch_size, tr.seq_len), dt, sharding=bs)
                 for k, dt in keys}
        step = make_train_step(loss_fn, tx, model=graphdef, cfg=cfg, mesh=mesh,
                               state_sharding=s_shard, microbatches=tr.microbatches,
                               lr_fn=lr_fn, trainable=trainable)
        traced = step.trace(abs_st, batch)
        lowered = traced.lower(lowering_platforms=(platform,)) if platform else traced.lower()
        return lowered, st_shapes, s_shard

    platform = cfg.run.dry_run_platform or "cpu"
    lowered, st_shapes, s_shard = lower(amesh, platform)
    lines.append(f"lowered for {platform} on AbstractMesh: "
                 f"{len(lowered.as_text()) // 1024} KiB of StableHLO")
    mshape = dict(zip(sh.AXES, cfg.mesh.shape(n)))
    if trainable is None:
        fb, ab = _per_device_bytes(st_shapes["params"], s_shard["params"], mshape), 0
    else:
        parts = [lora.partition(t, trainable) for t in (st_shapes["params"], s_shard["params"])]
        ab = _per_device_bytes(parts[0][0], parts[1][0], mshape)
        fb = _per_device_bytes(parts[0][1], parts[1][1], mshape)
    rb = _per_device_bytes(st_shapes["loss_state"], s_shard["loss_state"], mshape)
    ob = _per_device_bytes(st_shapes["opt_state"], s_shard["opt_state"], mshape)
    pb = fb + ab + rb  # everything the step holds besides the optimizer and activations
    lines += [f"params per device:    {_gib(fb)}" + (" (frozen base)" if ab else ""),
              f"adapters per device:  {_gib(ab)}",
              f"optimizer per device: {_gib(ob)}"]
    if rb:
        lines.append(f"reference per device: {_gib(rb)} (a frozen copy of the params)")
    if cfg.model.moe_experts:
        lines.append(_moe_line(cfg.model, st_shapes["params"], s_shard["params"], mshape))
    if lc.base_dtype:  # QLoRA: the same base unquantized, for the saving
        import dataclasses
        fm = dataclasses.replace(cfg.model, lora=dataclasses.replace(lc, base_dtype=""))
        f_abs = nnx.split(nnx.eval_shape(lambda: GPT(fm, rngs=nnx.Rngs(0))), nnx.Param)[1]
        f_shapes = lora.partition(nnx.to_pure_dict(f_abs), lambda p: not lora.is_adapter(p))[0]
        f_specs = lora.partition(sh.param_specs(f_abs), lambda p: not lora.is_adapter(p))[0]
        f_shard = jax.tree.map(lambda s_, a: NamedSharding(amesh, sh.fit_spec(s_, a.shape, amesh)),
                               f_specs, f_shapes, is_leaf=lambda x: isinstance(x, P))
        ub = _per_device_bytes(f_shapes, f_shard, mshape)
        lines.append(f"QLoRA: base in {lc.base_dtype} {_gib(fb)} vs {_gib(ub)} in "
                     f"{cfg.model.param_dtype}: saves {_gib(ub - fb)} per device "
                     f"({1 - fb / ub:.0%})")
    if jax.device_count() >= n and jax.default_backend() == "cpu":
        mesh = sh.make_mesh(cfg.mesh, jax.devices()[:n])
        compiled = lower(mesh, "")[0].compile()
        mem = compiled.memory_analysis()
        if mem is not None:
            lines.append(f"activations/temp per device (XLA, compiled for {n} CPU devices): "
                         f"{_gib(mem.temp_size_in_bytes)}")
            lines.append(f"arguments per device (XLA): {_gib(mem.argument_size_in_bytes)}")
            lines.append(f"params + adapters + optimizer + activations per device: "
                         f"{_gib(pb + ob + mem.temp_size_in_bytes)}")
    else:
        lines.append(f"(not compiled: this host has {jax.device_count()} devices of "
                     f"{jax.default_backend()}, fewer than {n})")
    return "\n".join(lines)
