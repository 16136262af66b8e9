"""MoE block forward+backward: dropless grouped dispatch vs every expert on every token.

    .venv/bin/python benchmarks/bench_moe.py [--repeats 5] [--steps 1]   # CPU, ~2 minutes

One MoE MLP layer (``lm.moe``) at 16 experts, top-2, d_model 256, expert hidden 512, 4096
tokens, fp32: router, softmax, top-k, the three SwiGLU expert matmuls and the weighted combine,
forward and the gradient with respect to the input, the router and every expert weight (the
work of a training step through the block). Both sides share the router and the loss; only the
expert computation differs:

- ragged: ``lm.moe.experts_dropless`` (``model.moe_impl=auto``: ``jax.lax.ragged_dot`` on a
  GPU/TPU, the tiled grouped matmul on a CPU, where jax lowers ``ragged_dot`` to a dense
  expansion; that lowering is checked equal here but not timed: on a CPU it does ``k`` times
  the dense side's work, measured 1.3x its time).
- dense (baseline): ``lm.moe.dense_reference``: every expert on every token, masked by the
  combine weights (the one-hot formulation a dropless model needs without grouped matmuls).

Both jitted; times are medians of interleaved repeats after a warm-up (compile excluded); the
outputs and gradients are checked equal first. ``BENCH_SMOKE=1``: tiny sizes.
Target: ratio <= 0.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from lm import moe  # noqa: E402

# (experts, top_k, d_model, expert d_ff, tokens)
SHAPE = (4, 2, 16, 32, 64) if SMOKE else (16, 2, 256, 512, 4096)


def make_step(kind: str, E: int, K: int):
    def loss(x, r, g, u, d):
        _, _, w, ids = moe.route(x, r, K, True)
        if kind == "dense":
            y = moe.dense_reference(x, w, ids, g, u, d, "silu")
        else:
            y = moe.experts_dropless(x, w, ids, g, u, d, "silu", kind)
        return jnp.mean(y * y), y
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


def run(step, args, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        out = step(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2 if SMOKE else 5)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args(argv)
    print_machine(baseline="dense one-hot (every expert on every token, masked)")
    E, K, D, F, T = SHAPE
    impl = moe.resolve_impl("auto")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}); ragged side: {impl}")
    print(f"shape: experts={E} top_k={K} d={D} expert_d_ff={F} tokens={T} fp32, forward+backward"
          f"; tile {moe.tile_size(T * K, E)} rows")
    ks = jax.random.split(jax.random.key(0), 5)
    inputs = (jax.random.normal(ks[0], (T, D)), 0.5 * jax.random.normal(ks[1], (D, E)),
              0.05 * jax.random.normal(ks[2], (E, D, F)),
              0.05 * jax.random.normal(ks[3], (E, D, F)),
              0.05 * jax.random.normal(ks[4], (E, F, D)))
    sides = {"dense": make_step("dense", E, K), impl: make_step(impl, E, K)}
    if impl != "ragged_dot":
        sides["ragged_dot"] = make_step("ragged_dot", E, K)
    outs = {k: jax.block_until_ready(s(*inputs)) for k, s in sides.items()}  # compile, warm up
    ref = jax.tree.leaves(outs["dense"])
    for k, o in outs.items():
        err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                  for a, b in zip(jax.tree.leaves(o), ref))
        scale = max(float(np.abs(np.asarray(b)).max()) for b in ref)
        assert err <= 1e-4 * scale, f"{k} differs from the dense reference by {err}"
        print(f"{k}: max abs diff vs dense (values and grads) {err:.1e}")
    if impl != "ragged_dot":
        del sides["ragged_dot"]  # checked above, not timed (see the docstring)
    times = {k: [] for k in sides}
    for _ in range(args.repeats):  # interleaved
        for k, s in sides.items():
            times[k].append(run(s, inputs, args.steps))
    print(f"{'side':<12}{'ms/step':>10}")
    for k in sides:
        print(f"{k:<12}{statistics.median(times[k]) * 1e3:>10.1f}")
    ratio = statistics.median(a / b for a, b in zip(times[impl], times["dense"]))
    print(f"load average {os.getloadavg()[0]:.1f} (figures on a shared machine are provisional)")
    print(f"moe ragged/dense step_time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
