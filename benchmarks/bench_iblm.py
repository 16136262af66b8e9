"""IBLM step cost: the IBLM train step (β=1, all middle blocks) vs the plain CE step, one run.

    .venv/bin/python benchmarks/bench_iblm.py [--repeats 5] [--n-tokens 8192] [--eig-tokens 2048]

Both steps are built by ``experiments.base.build`` from the same config (6 layers, d=256,
seq 256, batch 32, fp32, one device) and differ only in ``train.loss``; repeats interleave the two
and the ratio is of the medians (compile and a warm-up step excluded). Then the cost of one
α=2 MBE of N tokens × d: through the d×d dual Gram (``lm.info.mbe2`` picks Zᵀ Z when N > d),
vs an ``eigvalsh`` of the N×N Gram (the eigen route a generic matrix-based entropy would take).
An N=8192 ``eigvalsh`` takes many minutes on a shared 2-core CPU, so by default it is measured at
``--eig-tokens`` (2048) and scaled by (8192/2048)³ — printed as "extrapolated"; pass
``--eig-tokens 8192`` on an accelerator to measure it directly.
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

from experiments.base import build  # noqa: E402
from experiments.config import Config, override  # noqa: E402
from lm import info  # noqa: E402
from lm import sharding as sh  # noqa: E402
from lm.model import ModelCfg  # noqa: E402
from lm.train import TrainCfg  # noqa: E402


def config(loss: str, small: bool) -> Config:
    layers, d, seq, batch = (6, 256, 256, 32) if not small else (6, 64, 64, 8)
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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-tokens", type=int, default=8192)
    p.add_argument("--eig-tokens", type=int, default=2048,
                   help="N of the measured N×N eigvalsh (scaled by N³ to --n-tokens)")
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke test)")
    a = p.parse_args(argv)
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
    shape = "6L d=64 seq 64 batch 8" if a.small else "6L d=256 seq 256 batch 32"
    print(f"device: {jax.devices()[0].device_kind}; shape {shape}; {a.repeats} repeats")
    for k, v in med.items():
        print(f"{k:5s} step_time median {v * 1e3:9.1f} ms  (min {min(times[k]) * 1e3:.1f})")

    d = 64 if a.small else 256
    Z = jnp.asarray(np.random.default_rng(1).normal(size=(a.n_tokens, d)), jnp.float32)
    dual = jax.jit(info.mbe2)
    eig = jax.jit(lambda z: -jnp.log(jnp.sum(jnp.linalg.eigvalsh(
        (z @ z.T) / jnp.sum(z * z)) ** 2)))
    v_dual = float(dual(Z))  # compile
    t_dual = min(timed(dual, Z) for _ in range(3))
    n_eig = min(a.eig_tokens, a.n_tokens)
    Ze = Z[:n_eig]
    v_eig, v_dual_e = float(eig(Ze)), float(dual(Ze))  # compile; same value both ways
    t_eig = timed(eig, Ze) * (a.n_tokens / n_eig) ** 3
    how = "measured" if n_eig == a.n_tokens else f"extrapolated as N³ from N={n_eig}"
    print(f"MBE of N={a.n_tokens} tokens x d={d}: d×d dual {t_dual * 1e3:.2f} ms "
          f"(value {v_dual:.5f}); N×N eigvalsh {t_eig * 1e3:.0f} ms ({how}; at N={n_eig} "
          f"eigvalsh {v_eig:.5f} vs dual {v_dual_e:.5f}); eigvalsh/dual {t_eig / t_dual:.0f}x")
    print(f"iblm/xent step_time ratio: {med['iblm'] / med['xent']:.2f}")


if __name__ == "__main__":
    main()
