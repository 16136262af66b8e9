"""Decoding without a KV cache, the baselines of ``bench_sample.py`` and ``bench_rollout.py``.

    out_BxT = prefix_recompute(graphdef, params, prompt_BxP, T, pick_greedy, rng)   # the baseline
    out_BxT = padded_recompute(graphdef, params, prompt_BxP, T, pick_greedy, rng)   # reported too

Both append one token per step from the logits at the last known position (causal, so tokens after
it never change those logits):
- ``prefix_recompute``: step t runs the forward over the prefix so far, rounded up to a power of
  two (capped at P+T) so the program compiles once per bucket (``buckets``: about log2(P+T)
  programs); this is the no-cache baseline a peer would write.
- ``padded_recompute``: every step runs the forward over the whole [B, P+T] buffer (one program,
  about twice the linear-layer work of the prefix version at T >> P).
``pick(logits_BxV, t, rng) -> tokens_B`` chooses the next token (``pick_greedy``, ``pick_sample``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lm.losses import bind


def pick_greedy(logits_BxV, t, rng):
    del t, rng
    return jnp.argmax(logits_BxV, -1).astype(jnp.int32)


def pick_sample(logits_BxV, t, rng):
    return jax.random.categorical(jax.random.fold_in(rng, t), logits_BxV).astype(jnp.int32)


def buckets(P: int, T: int) -> list[tuple[int, int, int]]:
    """``(S, t0, t1)``: steps ``t0 <= t < t1`` read the first S tokens (P + t <= S; S a power of
    two, or P + T for the last bucket). Covers 0..T-1 in order."""
    if P < 1 or T < 1:
        raise ValueError(f"prompt length and new tokens must be >= 1, got P={P} T={T}")
    out, t = [], 0
    while t < T:
        S = min(1 << (P + t - 1).bit_length(), P + T)
        t1 = min(T, S - P + 1)
        out.append((S, t, t1))
        t = t1
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "pick", "S", "t0", "t1", "P"))
def _segment(graphdef, params, buf_BxN, rng, *, pick, S, t0, t1, P):
    m = bind(graphdef, params)

    def step(t, buf_BxN):
        logits_BxV = m(buf_BxN[:, :S])[:, P + t - 1]
        nxt_B = pick(logits_BxV, t, rng)
        return jax.lax.dynamic_update_index_in_dim(buf_BxN, nxt_B, P + t, axis=1)

    return jax.lax.fori_loop(t0, t1, step, buf_BxN)


def _buffer(prompt_BxP, new_tokens):
    B, P = prompt_BxP.shape
    return jnp.zeros((B, P + new_tokens), jnp.int32).at[:, :P].set(prompt_BxP)


def prefix_recompute(graphdef, params, prompt_BxP, new_tokens: int, pick, rng) -> jax.Array:
    """[B, T] new tokens; one jitted ``fori_loop`` per power-of-two prefix bucket."""
    P = prompt_BxP.shape[1]
    buf_BxN = _buffer(prompt_BxP, new_tokens)
    for S, t0, t1 in buckets(P, new_tokens):
        buf_BxN = _segment(graphdef, params, buf_BxN, rng, pick=pick, S=S, t0=t0, t1=t1, P=P)
    return buf_BxN[:, P:]


def padded_recompute(graphdef, params, prompt_BxP, new_tokens: int, pick, rng) -> jax.Array:
    """[B, T] new tokens; every step a forward over the full [B, P+T] buffer."""
    P = prompt_BxP.shape[1]
    N = P + new_tokens
    buf_BxN = _segment(graphdef, params, _buffer(prompt_BxP, new_tokens), rng, pick=pick, S=N,
                       t0=0, t1=new_tokens, P=P)
    return buf_BxN[:, P:]
