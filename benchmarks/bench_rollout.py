"""Batched KV-cache rollout (``rl.rollout``'s sampler) vs recomputing the prefix forward per step.

    .venv/bin/python benchmarks/bench_rollout.py [--prompts 16] [--group 8] [--new-tokens 128]

G=8 samples x 16 prompts = 128 rows, 128 new tokens, temperature 1 (no EOS, so every side
produces every token). kvcache: ``lm.sample.generate`` (one prefill + cached one-token decode
steps); recompute (the baseline): ``benchmarks.recompute.prefix_recompute``, a full forward over
the prefix so far rounded up to a power of two (one compiled program per bucket), sampling from
the last real position; padded: the full forward over the fixed [B, P+T] buffer every step,
printed for comparison. All jitted and warmed up (compile excluded); median of interleaved
repeats in one process. Model: 2 layers, d=128, vocab 264.
Last line: ``rollout kvcache/recompute speedup: X.X`` (recompute = prefix recompute).
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
from flax import nnx  # noqa: E402

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from benchmarks.recompute import (  # noqa: E402
    buckets,
    padded_recompute,
    pick_sample,
    prefix_recompute,
)
from lm.model import GPT, ModelCfg  # noqa: E402
from lm.sample import SampleCfg, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2 if SMOKE else 16)
    ap.add_argument("--group", type=int, default=2 if SMOKE else 8)
    ap.add_argument("--prompt-len", type=int, default=4 if SMOKE else 16)
    ap.add_argument("--new-tokens", type=int, default=4 if SMOKE else 128)
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 3)
    a = ap.parse_args()
    B, P, T = a.prompts * a.group, a.prompt_len, a.new_tokens
    d = 32 if SMOKE else 128
    cfg = ModelCfg(vocab_size=264, d_model=d, n_layers=1 if SMOKE else 2, n_heads=4, d_ff=4 * d,
                   max_len=P + T)
    gd, state = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(state)
    prompt = jax.random.randint(jax.random.key(1), (a.prompts, P), 0, 256, jnp.int32)
    prompt_BxP = jnp.repeat(prompt, a.group, axis=0)  # G samples per prompt, as rl.rollout
    lens = jnp.full((B,), P, jnp.int32)
    scfg = SampleCfg(max_new_tokens=T, temperature=1.0)
    rng = jax.random.key(2)
    fns = {"kvcache": lambda: generate(gd, params, prompt_BxP, lens, scfg, rng)["tokens_BxT"],
           "recompute": lambda: prefix_recompute(gd, params, prompt_BxP, T, pick_sample, rng),
           "padded": lambda: padded_recompute(gd, params, prompt_BxP, T, pick_sample, rng)}
    print_machine("prefix recompute (no KV cache), power-of-two prefix buckets")
    times = {k: [] for k in fns}
    for f in fns.values():  # compile + warm up
        jax.block_until_ready(f())
    for _ in range(a.repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:9s} {B * T / v:10.0f} tokens/s  ({v:.3f} s per rollout of {B}x{T})")
    print(f"backend {jax.default_backend()}; {B} rows = {a.prompts} prompts x G={a.group}; "
          f"prefix buckets {[S for S, _, _ in buckets(P, T)]}")
    print(f"rollout kvcache/padded-recompute speedup: {med['padded'] / med['kvcache']:.1f}")
    print(f"rollout kvcache/recompute speedup: {med['recompute'] / med['kvcache']:.1f}")


if __name__ == "__main__":
    main()
