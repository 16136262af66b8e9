"""Chunked full-vocabulary TDPO statistics vs the naive full-logits version (V=32k, T=512).

    .venv/bin/python benchmarks/bench_tdpo.py [--batch 2] [--chunk 64] [--repeats 3]

Both compute value and gradient (w.r.t. the unembedding and the policy hidden states) of
``sum(kl_t) + sum(lr_t)`` for a policy and a reference sharing shapes [B, T, D] -> [B, T, V]:
- naive:   ``rl.preference.token_stats`` on full [B, T, V] logits of both models;
- chunked: ``rl.preference.chunked_token_stats`` (``lax.map`` over T/chunk rematerialised
           chunks; no [B, T, V] array in forward or backward).
Both sides take the reference hidden states, the reference unembedding and the labels as jit
arguments, as a training step would (closed-over constants would let XLA constant-fold the whole
reference forward out of the naive side). Peak memory is XLA's compiled ``memory_analysis()``
(temp + arguments + outputs), step time the median of interleaved repeats after a warm-up, both
jitted in one process. Baseline: the naive full-logits version. Last line:
``tdpo chunked/naive peak_memory ratio: X.XX``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from rl.preference import chunked_token_stats, token_stats  # noqa: E402


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1 if SMOKE else 2)
    ap.add_argument("--seq", type=int, default=32 if SMOKE else 512)
    ap.add_argument("--vocab", type=int, default=512 if SMOKE else 32768)
    ap.add_argument("--d-model", type=int, default=16 if SMOKE else 64)
    ap.add_argument("--chunk", type=int, default=8 if SMOKE else 64)
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 3)
    a = ap.parse_args()
    k = jax.random.split(jax.random.key(0), 5)
    B, T, D, V = a.batch, a.seq, a.d_model, a.vocab
    W = jax.random.normal(k[0], (D, V)) * 0.05
    Wr = jax.random.normal(k[1], (D, V)) * 0.05
    h = jax.random.normal(k[2], (B, T, D))
    hr = jax.random.normal(k[3], (B, T, D))
    lab = jax.random.randint(k[4], (B, T), 0, V)

    def naive(W, h, Wr, hr, lab):
        kl, lr, _ = token_stats(h @ W, hr @ Wr, lab)
        return kl.sum() + lr.sum()

    def chunked(W, h, Wr, hr, lab):
        kl, lr, _ = chunked_token_stats(lambda x: x @ W, lambda x: x @ Wr, h, hr, lab, a.chunk)
        return kl.sum() + lr.sum()

    print_machine("naive token_stats on full [B, T, V] logits (reference passed as arguments)")
    args = (W, h, Wr, hr, lab)
    compiled = {name: jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
                for name, f in (("naive", naive), ("chunked", chunked))}
    times = {name: [] for name in compiled}
    for c in compiled.values():  # warm up
        jax.block_until_ready(c(*args))
    for _ in range(a.repeats):  # interleaved so both sides see the same machine load
        for name, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[name].append(time.perf_counter() - t0)
    res = {}
    for name, c in compiled.items():
        res[name] = (peak_bytes(c), statistics.median(times[name]), float(c(*args)[0]))
        print(f"{name:8s} peak {res[name][0] / 2**20:8.1f} MiB  step {res[name][1] * 1e3:8.1f} ms"
              f"  value {res[name][2]:.4f}")
    print(f"B={B} T={T} V={V} D={D} chunk={a.chunk}; backend {jax.default_backend()}")
    print(f"tdpo chunked/naive step_time ratio: {res['chunked'][1] / res['naive'][1]:.2f}")
    print(f"tdpo chunked/naive peak_memory ratio: {res['chunked'][0] / res['naive'][0]:.2f}")


if __name__ == "__main__":
    main()
