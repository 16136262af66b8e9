"""Shared by every ``benchmarks/bench_*.py``: the CPU model line and the ``BENCH_SMOKE`` switch.

    from benchmarks.common import SMOKE, print_machine
    n = 16 if SMOKE else 4096
    print_machine(baseline="padded full recompute")

``BENCH_SMOKE=1`` (environment) shrinks every size so a benchmark finishes in seconds; the suite
(``tests/test_benchmarks.py``) runs each one that way so none rots. Smoke figures mean nothing.
"""

from __future__ import annotations

import os
import platform

SMOKE = os.environ.get("BENCH_SMOKE", "") == "1"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first ``model name`` of ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def print_machine(baseline: str) -> None:
    """One line: CPU model, core count, the baseline's name, and whether this is a smoke run."""
    smoke = "  [BENCH_SMOKE=1: tiny sizes, figures meaningless]" if SMOKE else ""
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores); baseline: {baseline}{smoke}")


def jax_train_setup(mcfg, batch: int, seq: int, seed: int = 0, loaded=None, tokens=None):
    """``(graphdef, state, step, batch)``: the library's jitted xent train step for ``mcfg`` on
    one device (AdamW at a constant 3e-4, as the torch sides), its sharded train state and one
    ``[batch, seq]`` batch -- what the step benchmarks time (bench_train_step, bench_remat,
    gpu_check, bench_real_model). ``loaded=(graphdef, params)`` starts from those params (placed
    on the 1-device mesh, e.g. by ``lm.hf.load``) instead of a fresh init; ``tokens`` an int
    ``[batch, seq + 1]`` array to train on instead of random ids."""
    import types

    import jax
    import numpy as np
    from flax import nnx

    from lm import lora
    from lm import sharding as sh
    from lm.losses import xent
    from lm.model import GPT
    from lm.optim import OptCfg, make_optimizer
    from lm.train import TrainCfg, init_state, make_train_step, state_shardings

    ocfg = OptCfg(lr=3e-4, warmup=0, schedule="constant")
    cfg = types.SimpleNamespace(model=mcfg, opt=ocfg,
                                train=TrainCfg(batch_size=batch, seq_len=seq))
    mesh = one_device_mesh()
    if loaded is None:
        graphdef, params, p_shard = sh.init_params(lambda: GPT(mcfg, rngs=nnx.Rngs(seed)), mesh)
    else:
        graphdef, params = loaded
        p_shard = jax.tree.map(lambda x: x.sharding, params)
    trainable = lora.trainable_fn(mcfg)  # model.lora: adapters train, the base is frozen
    tx, lr_fn = make_optimizer(ocfg, lora.trainable_subset(params, mcfg), 1000)
    init = lambda p: init_state(p, tx, seed, None, trainable)  # noqa: E731
    shapes = jax.eval_shape(init, params)
    s_shard = state_shardings(shapes, p_shard, mesh, None if trainable is None else
                              lora.trainable_subset(p_shard, mcfg))
    state = jax.jit(init, out_shardings=s_shard)(params)
    step = make_train_step(xent, tx, model=graphdef, cfg=cfg, mesh=mesh, state_sharding=s_shard,
                           microbatches=1, lr_fn=lr_fn, trainable=trainable)
    if tokens is None:
        tokens = np.random.default_rng(seed).integers(0, mcfg.vocab_size, (batch, seq + 1))
    toks = np.asarray(tokens).astype(np.int32)
    b = sh.shard_batch({"inputs": toks[:, :-1], "targets": toks[:, 1:],
                        "mask": np.ones((batch, seq), np.float32)}, mesh)
    return graphdef, state, step, b


def one_device_mesh():
    """The ``("data", "fsdp", "tensor")`` mesh over the first device (benchmarks time one)."""
    import jax

    from lm import sharding as sh
    return sh.make_mesh(sh.MeshCfg(data=-1), devices=jax.devices()[:1])
