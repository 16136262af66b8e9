"""Rematerialisation: activation memory and step time of ``model.remat=full`` vs ``none``.

    .venv/bin/python benchmarks/bench_remat.py [--repeats 5] [--steps 3]   # CPU, ~2 minutes

Both sides are the codebase's own train step (``lm.train.make_train_step`` with ``xent``, AdamW,
fp32) at bench_train_step's small shape (6 layers, d=384, 6 heads, seq 256, batch 16, vocab 264),
built identically except for ``model.remat``. Baseline: ``remat=none`` (every activation kept for
the backward pass). Activation memory is XLA's temp buffer size of the compiled step
(``compiled.memory_analysis().temp_size_in_bytes``, the same figure ``--dry-run`` prints); the
other policies' temp bytes are printed beside them. Step times are medians over repeats that
interleave the two sides (compile and warm-up excluded). ``BENCH_SMOKE=1``: tiny sizes, and
only the two timed policies are compiled.
Targets: step-time ratio <= 1.4, activation-memory ratio <= 0.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.common import SMOKE, jax_train_setup, print_machine  # noqa: E402
from lm.model import ModelCfg  # noqa: E402

# (n_layers, d_model, n_heads, seq_len, batch, vocab)
SHAPE = (2, 32, 2, 32, 4, 64) if SMOKE else (6, 384, 6, 256, 16, 264)
POLICIES = ("none", "full", "dots", "dots_no_batch", "attn_out")


def setup(remat: str, seed: int = 0) -> dict:
    n_layers, d, n_heads, seq, batch, vocab = SHAPE
    mcfg = ModelCfg(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads,
                    d_ff=4 * d, max_len=seq, remat=remat)
    _, state, step, b = jax_train_setup(mcfg, batch, seq, seed)
    compiled = step.lower(state, b).compile()
    return {"state": state, "step": compiled, "batch": b,
            "temp": compiled.memory_analysis().temp_size_in_bytes}


def run(ctx: dict, n: int) -> float:
    state = ctx["state"]
    t0 = time.perf_counter()
    for _ in range(n):
        state, m = ctx["step"](state, ctx["batch"])
    jax.block_until_ready((state, m))
    ctx["state"], ctx["loss"] = state, float(m["loss"][0] / m["loss"][1])
    return (time.perf_counter() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2 if SMOKE else 5)
    ap.add_argument("--steps", type=int, default=1 if SMOKE else 3)
    args = ap.parse_args(argv)
    print_machine(baseline="remat=none (the same train step, nothing recomputed)")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform})")
    n_layers, d, n_heads, seq, batch, vocab = SHAPE
    print(f"shape: layers={n_layers} d={d} heads={n_heads} seq={seq} batch={batch} vocab={vocab}"
          " fp32")
    temps = {}
    for policy in () if SMOKE else POLICIES[2:]:  # memory only (one compile each)
        temps[policy] = setup(policy)["temp"]
    sides = {p: setup(p) for p in ("none", "full")}
    temps.update({p: c["temp"] for p, c in sides.items()})
    for ctx in sides.values():
        run(ctx, 1)  # warm-up
    times = {p: [] for p in sides}
    for _ in range(args.repeats):  # interleaved
        for p, ctx in sides.items():
            times[p].append(run(ctx, args.steps))
    print(f"{'remat':<15}{'temp MiB':>10}{'ms/step':>10}{'loss':>9}")
    for p in POLICIES:
        ms = f"{statistics.median(times[p]) * 1e3:>10.1f}" if p in times else f"{'-':>10}"
        loss = f"{sides[p]['loss']:>9.4f}" if p in sides else f"{'-':>9}"
        mib = f"{temps[p] / 2**20:>10.2f}" if p in temps else f"{'-':>10}"
        print(f"{p:<15}{mib}{ms}{loss}")
    t_ratio = statistics.median(f / n for f, n in zip(times["full"], times["none"]))
    print(f"load average {os.getloadavg()[0]:.1f} (figures on a shared machine are provisional)")
    print(f"remat full/none step_time ratio: {t_ratio:.2f} (median of interleaved repeats; "
          "target <= 1.4)")
    print(f"remat full/none activation_memory ratio: {temps['full'] / temps['none']:.2f}")


if __name__ == "__main__":
    main()
