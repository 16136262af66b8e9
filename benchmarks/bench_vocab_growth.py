"""Recompile per stage vs pre-allocated padded rows with masked logits (``lm.vocab_growth``).

Tiny-preset model (2L/64, batch 16 x 64) on one CPU device, the tiny run's realized vocabulary
trajectory 64 -> 146 -> 184 -> 265 -> 379, ``STEPS`` steps a stage. "recompile": a fresh
``StageTrainer`` (init, optimizer, jitted step) per stage at V_k. "padded": one trainer at V_max
with ``masked_xent``; each stage only re-initialises the train state (fresh optimizer and schedule)
with ``n_active = V_k`` in ``loss_state``, so the compiled step is reused.

Last line: ``recompile/padded wall-time ratio: X.XX`` (<1 means recompiling is faster).
"""

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from experiments.vocab_curriculum import tiny  # noqa: E402
from lm import sharding as sh  # noqa: E402
from lm.train import init_state  # noqa: E402
from lm.vocab_growth import StageTrainer, grow_params, masked_xent, pad_params  # noqa: E402

SIZES, STEPS = ((64, 146), 2) if SMOKE else ((64, 146, 184, 265, 379), 150)


def batches(V, cfg, mesh, rng):
    B, L = cfg.train.batch_size, cfg.train.seq_len
    while True:
        w = rng.integers(0, V, (B, L + 1)).astype(np.int32)
        yield sh.shard_batch({"inputs": w[:, :-1], "targets": w[:, 1:]}, mesh)


def run_steps(step, state, it, n):
    for _ in range(n):
        state, m = step(state, next(it))
    jax.block_until_ready(m["loss"])
    return state


def main():
    print_machine("a fresh trainer (recompiled step) per vocabulary stage")
    cfg = tiny()
    mesh = sh.make_mesh(cfg.mesh, jax.devices()[:1])
    with_v = lambda V: dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=V))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    params = None
    for k, V in enumerate(SIZES):
        if params is not None:
            params = grow_params(params, rng.integers(0, SIZES[k - 1], V - SIZES[k - 1]))
        st = StageTrainer.create(with_v(V), mesh, params, total_steps=STEPS)
        state = run_steps(st.train_step, st.state, batches(V, cfg, mesh, rng), STEPS)
        params = jax.device_get(state["params"])
    t_re = time.perf_counter() - t0

    t0 = time.perf_counter()
    vmax = SIZES[-1]
    st = StageTrainer.create(with_v(vmax), mesh, None, total_steps=STEPS, loss_fn=masked_xent,
                             loss_state={"n_active": jnp.int32(SIZES[0])})
    tx = st.train_step  # one compiled step for every stage
    from lm.optim import make_optimizer
    opt, _ = make_optimizer(cfg.opt, st.state["params"], STEPS)
    params = pad_params(jax.device_get(st.state["params"]), vmax)
    for V in SIZES:
        state = init_state(jax.device_put(params), opt, cfg.train.seed,
                           {"n_active": jnp.int32(V)})
        state = jax.device_put(state, jax.tree.map(lambda x: x.sharding, st.state))
        state = run_steps(tx, state, batches(V, cfg, mesh, rng), STEPS)
        params = jax.device_get(state["params"])
    t_pad = time.perf_counter() - t0
    print(f"{len(SIZES)} stages x {STEPS} steps, V {SIZES[0]}->{SIZES[-1]}, 1 CPU device")
    print(f"recompile per stage: {t_re:.1f}s; padded to V_max={vmax} with masked logits: "
          f"{t_pad:.1f}s")
    print(f"recompile/padded wall-time ratio: {t_re / t_pad:.2f}")


if __name__ == "__main__":
    main()
