"""DLR train step (search with N candidates + the two graded passes) vs an SFT step, same model.

    .venv/bin/python benchmarks/bench_dlr.py [--repeats 5] [--steps 5] [--n-search 4]

Both steps are ``lm.train.make_train_step`` over the same GPT with the DLR hook (d=128, 4 layers,
injection layer 2, C=32 codes, K=4, batch 16 x 64 tokens, fp32): ``xent`` for SFT, ``dlr`` for
DLR. Compile is excluded; repeats interleave the two; the ratio is of medians. The shared-prefix
design predicts at most 2 + N (1 - l*/L) (one lower pass, two graded upper passes, N scored upper
passes; the greedy candidate adds one more upper pass). Last line: ``dlr/sft step_time ratio``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from experiments.config import Config  # noqa: E402
from lm.losses import get_loss  # noqa: E402
from lm.model import GPT, ModelCfg  # noqa: E402
from lm.optim import OptCfg, make_optimizer  # noqa: E402
from lm.routing import DLRCfg  # noqa: E402
from lm.train import init_state, make_train_step  # noqa: E402


def build(cfg: Config, loss: str):
    model = GPT(cfg.model, rngs=nnx.Rngs(0))
    gd, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    tx, _ = make_optimizer(cfg.opt, params, 1000)
    step = make_train_step(get_loss(loss), tx, model=gd, cfg=cfg, donate=False)
    return step, init_state(params, tx, 0)


def time_steps(step, state, batch, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        state, met = step(state, batch)
    jax.block_until_ready(met)
    return (time.perf_counter() - t) / n


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 5)
    ap.add_argument("--steps", type=int, default=1 if SMOKE else 5)
    ap.add_argument("--n-search", type=int, default=1 if SMOKE else 4)
    args = ap.parse_args(argv)
    print_machine("SFT (xent) train step on the same model")
    L, lstar = 4, 2
    d, B, S = (32, 2, 16) if SMOKE else (128, 16, 64)
    dl = DLRCfg(layer=lstar, codes=32, chunk=4, alpha=1.0, n_search=args.n_search)
    cfg = Config(model=ModelCfg(vocab_size=64, d_model=d, n_layers=L, n_heads=4, d_ff=4 * d,
                                max_len=S, dlr=dl), opt=OptCfg(lr=1e-3))
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 64, (B, S + 1)).astype(np.int32)
    batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": np.ones((B, S), np.float32)}
    sides = {name: build(cfg, name) for name in ("xent", "dlr")}
    for step, state in sides.values():  # compile + warm up
        time_steps(step, state, batch, 2)
    times = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, (step, state) in sides.items():
            times[name].append(time_steps(step, state, batch, args.steps))
    sft, dlr = statistics.median(times["xent"]), statistics.median(times["dlr"])
    target = 2 + args.n_search * (1 - lstar / L)
    print(f"device: {jax.devices()[0].platform}, model d={d} L={L} l*={lstar} C=32 K=4 "
          f"N={args.n_search} (+ greedy), batch {B}x{S}")
    print(f"sft step: {1e3 * sft:.1f} ms   dlr step: {1e3 * dlr:.1f} ms   "
          f"target ratio <= 2 + N(1 - l*/L) = {target:.2f}")
    print(f"dlr/sft step_time ratio: {dlr / sft:.2f}")


if __name__ == "__main__":
    main()
