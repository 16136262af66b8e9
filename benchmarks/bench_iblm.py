"""IBLM step cost: the IBLM train step (β=1, all middle blocks) vs the plain CE step, one run.

    .venv/bin/python benchmarks/bench_iblm.py [--repeats 5] [--n-tokens 8192] [--eig-tokens 2048]

Both steps are built by ``experiments.base.build`` from the same config (6 layers, d=256,
seq 256, batch 32, fp32, one device) and differ only in ``train.loss``; repeats interleave the two
and the ratio is of the medians (compile and a warm-up step excluded). Then the cost of one
α=2 MBE of N tokens × d: through the d×d dual Gram (``lm.info.mbe2`` picks Zᵀ Z when N > d),
vs an ``eigvalsh`` of the N×N Gram (the eigen route a generic matrix-based entropy would take).
An N=8192 ``eigvalsh`` takes many minutes on a shared 2-core CPU, so by default both routes are
measured at ``--eig-tokens`` (2048, the measured ratio) and the eigvalsh time is also scaled by
(8192/2048)³ against the dual measured at 8192 — printed as "extrapolated as N³ from N=2048";
pass ``--eig-tokens 8192`` on an accelerator to measure it directly. Every MBE timing is the best
of the same number of interleaved runs on both sides. Baseline: the plain CE step (and, for the
MBE, the N×N eigvalsh).
The last line is ``iblm/xent step_time ratio: X.XX`` (target ≤ 1.15).
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
from experiments.base import build  # noqa: E402
from experiments.config import Config, override  # noqa: E402
from lm import info  # noqa: E402
from lm import sharding as sh  # noqa: E402
from lm.model import ModelCfg  # noqa: E402
from lm.train import TrainCfg  # noqa: E402

SHAPES = {"full": (6, 256, 256, 32), "small": (3, 32, 32, 4) if SMOKE else (6, 64, 64, 8)}


def config(loss: str, small: bool) -> Config:
    layers, d, seq, batch = SHAPES["small" if small else "full"]
    cfg = Config(model=ModelCfg(vocab_size=264, d_model=d, n_layers=layers, n_heads=4,
                                d_ff=4 * d, max_len=seq),
                 train=TrainCfg(loss=loss, batch_size=batch, seq_len=seq))
    return override(cfg, ["ib.beta=1.0", "ib.layers=all_middle"])


def timed(fn, *args):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=2 if SMOKE else 5)
    p.add_argument("--n-tokens", type=int, default=256 if SMOKE else 8192)
    p.add_argument("--eig-tokens", type=int, default=128 if SMOKE else 2048,
                   help="N of the measured N×N eigvalsh (scaled by N³ to --n-tokens)")
    p.add_argument("--mbe-repeats", type=int, default=3, help="timed runs of each MBE route")
    p.add_argument("--small", action="store_true", default=SMOKE, help="tiny shapes (smoke)")
    a = p.parse_args(argv)
    print_machine("plain CE (xent) train step; N×N eigvalsh for the MBE")
    mesh = sh.make_mesh(sh.MeshCfg(1, 1, 1), jax.devices()[:1])
    steps, states, batch = {}, {}, None
    for loss in ("xent", "iblm"):
        cfg = config(loss, a.small)
        s = build(cfg, mesh=mesh)
        rng = np.random.default_rng(0)
        toks = rng.integers(0, 264, (cfg.train.batch_size, cfg.train.seq_len + 1), np.int32)
        batch = sh.shard_batch({"inputs": toks[:, :-1], "targets": toks[:, 1:],
                                "mask": np.ones(toks[:, 1:].shape, np.float32)}, mesh)
        states[loss], _ = s.train_step(s.state, batch)  # compile + warm-up
        steps[loss] = s.train_step
    times = {"xent": [], "iblm": []}
    for _ in range(a.repeats):
        for loss in ("xent", "iblm"):
            t = time.perf_counter()
            states[loss], m = steps[loss](states[loss], batch)
            jax.block_until_ready(m)
            times[loss].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    shape = "{}L d={} seq {} batch {}".format(*SHAPES["small" if a.small else "full"])
    print(f"device: {jax.devices()[0].device_kind}; shape {shape}; {a.repeats} repeats")
    for k, v in med.items():
        print(f"{k:5s} step_time median {v * 1e3:9.1f} ms  (min {min(times[k]) * 1e3:.1f})")

    d = SHAPES["small" if a.small else "full"][1]
    Z = jnp.asarray(np.random.default_rng(1).normal(size=(a.n_tokens, d)), jnp.float32)
    dual = jax.jit(info.mbe2)
    eig = jax.jit(lambda z: -jnp.log(jnp.sum(jnp.linalg.eigvalsh(
        (z @ z.T) / jnp.sum(z * z)) ** 2)))
    n_eig = min(a.eig_tokens, a.n_tokens)
    Ze = Z[:n_eig]
    v_dual, v_eig, v_dual_e = float(dual(Z)), float(eig(Ze)), float(dual(Ze))  # compile
    best = {"dual": np.inf, "dual_e": np.inf, "eig": np.inf}
    for _ in range(a.mbe_repeats):  # interleaved, the same count for every route
        best["dual"] = min(best["dual"], timed(dual, Z))
        best["dual_e"] = min(best["dual_e"], timed(dual, Ze))
        best["eig"] = min(best["eig"], timed(eig, Ze))
    t_dual, t_eig = best["dual"], best["eig"] * (a.n_tokens / n_eig) ** 3
    print(f"MBE at N={n_eig} tokens x d={d} (measured, best of {a.mbe_repeats}): d×d dual "
          f"{best['dual_e'] * 1e3:.2f} ms (value {v_dual_e:.5f}), N×N eigvalsh "
          f"{best['eig'] * 1e3:.1f} ms (value {v_eig:.5f}); eigvalsh/dual "
          f"{best['eig'] / best['dual_e']:.0f}x")
    if n_eig != a.n_tokens:
        print(f"MBE at N={a.n_tokens}: d×d dual {t_dual * 1e3:.2f} ms (measured, value "
              f"{v_dual:.5f}); N×N eigvalsh {t_eig * 1e3:.0f} ms (extrapolated as N³ from "
              f"N={n_eig}); eigvalsh/dual {t_eig / t_dual:.0f}x (extrapolated)")
    print(f"iblm/xent step_time ratio: {med['iblm'] / med['xent']:.2f}")


if __name__ == "__main__":
    main()
