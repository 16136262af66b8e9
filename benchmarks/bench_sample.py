"""KV-cache sampling (``lm.sample.generate``) vs recomputing the prefix forward at every step.

    .venv/bin/python benchmarks/bench_sample.py [--repeats 3] [--new-tokens 256]

All sides are jitted, warmed up (compile excluded), greedy, and timed alternately in one process
(median of repeats):

- kvcache:   ``generate``: one prefill over the prompt, then a ``while_loop`` of one-token decode
             steps against a [B, P+T] KV cache.
- recompute: the baseline, ``benchmarks.recompute.prefix_recompute``: at each step a full forward
             over the prefix so far, rounded up to a power of two (one compiled program per
             bucket), then the argmax at the last real position.
- padded:    ``padded_recompute``: the full forward over the fixed [B, P+T] buffer every step
             (about twice the prefix version's linear-layer work); printed for comparison.

Model: 4 layers, d=256, 4 heads, vocab 256, max_len 320; batch 8, prompt 32, 256 new tokens.
The last line is ``sample kvcache/recompute speedup: X.X`` (recompute = prefix recompute).
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
from flax import nnx  # noqa: E402

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from benchmarks.recompute import (  # noqa: E402
    buckets,
    padded_recompute,
    pick_greedy,
    prefix_recompute,
)
from lm.model import GPT, ModelCfg, count_params  # noqa: E402
from lm.sample import SampleCfg, generate  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2 if SMOKE else 8)
    ap.add_argument("--prompt", type=int, default=4 if SMOKE else 32)
    ap.add_argument("--new-tokens", type=int, default=4 if SMOKE else 256)
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 3)
    ap.add_argument("--layers", type=int, default=1 if SMOKE else 4)
    ap.add_argument("--d-model", type=int, default=32 if SMOKE else 256)
    args = ap.parse_args()

    B, P, T = args.batch, args.prompt, args.new_tokens
    cfg = ModelCfg(vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                   d_ff=4 * args.d_model, max_len=max(320, P + T))
    graphdef, state = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    # scale weights up from the tiny init so greedy paths are not decided by near-ties
    params = jax.tree.map(lambda x: x * 10.0 if x.ndim >= 2 else x, nnx.to_pure_dict(state))
    prompt_BxP = jax.random.randint(jax.random.key(1), (B, P), 0, cfg.vocab_size, jnp.int32)
    prompt_len_B = jnp.full((B,), P, jnp.int32)
    scfg = SampleCfg(max_new_tokens=T, temperature=0.0)
    rng = jax.random.key(0)  # unused by greedy picks
    fns = {
        "kvcache": lambda: generate(graphdef, params, prompt_BxP, prompt_len_B, scfg)["tokens_BxT"],
        "recompute": lambda: prefix_recompute(graphdef, params, prompt_BxP, T, pick_greedy, rng),
        "padded": lambda: padded_recompute(graphdef, params, prompt_BxP, T, pick_greedy, rng),
    }

    print_machine("prefix recompute (no KV cache), power-of-two prefix buckets")
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
          f"params={count_params(params):,} layers={cfg.n_layers} d={cfg.d_model} "
          f"heads={cfg.n_heads} vocab={cfg.vocab_size} dtype={cfg.dtype}")
    print(f"batch={B} prompt={P} new_tokens={T} cache_len={P + T} repeats={args.repeats}; "
          f"prefix buckets {[S for S, _, _ in buckets(P, T)]}")
    first = {k: timed(f) for k, f in fns.items()}  # compile + first run, excluded below
    print("first call (compile+run): " + "  ".join(f"{k} {v:.2f}s" for k, v in first.items()))
    out = {k: np.asarray(f()) for k, f in fns.items()}
    print(f"greedy tokens identical to kvcache in {np.mean(out['kvcache'] == out['recompute']):.1%}"
          f" (recompute), {np.mean(out['kvcache'] == out['padded']):.1%} (padded) of positions "
          f"(fp32 reductions differ)")

    times = {k: [] for k in fns}
    for r in range(args.repeats):  # alternate so all sides see the same machine load
        for k, f in fns.items():
            times[k].append(timed(f))
        print(f"  repeat {r}: " + "   ".join(f"{k} {v[-1] * 1e3:9.1f} ms"
                                             for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, m in med.items():
        print(f"{k + ':':10s} median {m * 1e3:9.1f} ms  {m / T * 1e3:7.3f} ms/step  "
              f"{B * T / m:10.0f} tok/s")
    print(f"sample kvcache/padded-recompute speedup: {med['padded'] / med['kvcache']:.1f}")
    print(f"sample kvcache/recompute speedup: {med['recompute'] / med['kvcache']:.1f}")


if __name__ == "__main__":
    main()
