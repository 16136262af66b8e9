"""Greedy generation with DLR codes, with a KV cache, and the full-recompute reference.

    out = generate_routed(graphdef, params, prompt_BxP, n_new, mode="route")

At every chunk boundary (absolute position p with p % K == 0) the router reads the unsteered
stream at layer l* of that token and its argmax becomes the chunk's code; the code steers that
token and the next K-1. The lower trunk (blocks < l*) never sees codes, so decoding one token at a
time with a KV cache gives the same codes and tokens as recomputing the whole sequence
(``generate_reference``; tested). Modes (the paper's global code ablations):
``"route"`` router argmax; ``"off"`` no steering (steering scale -> 0); ``"random"`` codes drawn
uniformly per chunk from ``rng``. Prompts all have the same length P (the arithmetic tasks use
fixed-width operands); greedy decoding, no eos (exact-match answers have a fixed length).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lm.losses import bind
from rl.dlr import lower

MODES = ("route", "off", "random")


def _check(mode: str):
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")


def routed_codes(m, tokens_BxL) -> jax.Array:
    """Router argmax code of every chunk of ``tokens_BxL`` [B, M]."""
    h_BxLxD, _, _ = lower(m, tokens_BxL)
    return jnp.argmax(m.dlr.route(h_BxLxD), -1).astype(jnp.int32)


def _init_codes(m, B: int, S: int, mode: str, rng):
    M = -(-S // m.cfg.dlr.chunk)
    if mode == "random":
        return jax.random.randint(rng, (B, M), 0, m.cfg.dlr.codes, jnp.int32)
    return jnp.zeros((B, M), jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "n_new", "mode"))
def generate_routed(model, params, prompt_BxP, n_new: int, mode: str = "route", rng=None):
    """KV-cache greedy decoding of ``n_new`` tokens. Returns (tokens_BxT, codes_BxM)."""
    _check(mode)
    m = bind(model, params)
    cfg, lstar, K = m.cfg, m.cfg.dlr.layer, m.cfg.dlr.chunk
    B, P = prompt_BxP.shape
    S = P + n_new
    rng = jax.random.key(0) if rng is None else rng
    codes_BxM = _init_codes(m, B, S, mode, rng)
    steer = None if mode == "off" else True
    none = [None] * cfg.n_layers

    def step(tokens_BxL, cache, index, codes_BxM):
        L = tokens_BxL.shape[1]
        pos_BxL = jnp.broadcast_to(index + jnp.arange(L), (B, L))
        x_BxLxD, _ = m.embed(tokens_BxL, pos_BxL)
        hs, c_lo = m.run_blocks(x_BxLxD, pos_BxL, none, cache[:lstar], index, lo=0, hi=lstar)
        h_BxLxD = hs[-1] if hs else x_BxLxD
        if mode == "route":  # codes of the chunks that start inside this slice
            starts_L = (index + jnp.arange(L)) % K == 0
            code_BxL = jnp.argmax(m.dlr.route(h_BxLxD.reshape(B * L, 1, -1)), -1)
            code_BxL = code_BxL.reshape(B, L).astype(jnp.int32)
            chunk_L = (index + jnp.arange(L)) // K
            tgt_L = jnp.where(starts_L, chunk_L, codes_BxM.shape[1])  # out of range -> dropped
            codes_BxM = codes_BxM.at[:, tgt_L].set(code_BxL, mode="drop")
        hs, c_hi = m.run_blocks(h_BxLxD, pos_BxL, none, cache[lstar:], index,
                                codes_BxM=codes_BxM if steer else None, lo=lstar)
        return m.logits(hs[-1]), c_lo + c_hi, codes_BxM

    cache = m.init_cache(B, S)
    logits_BxPxV, cache, codes_BxM = step(prompt_BxP.astype(jnp.int32), cache, 0, codes_BxM)
    tok_B = jnp.argmax(logits_BxPxV[:, -1], -1).astype(jnp.int32)
    out_BxT = jnp.zeros((B, n_new), jnp.int32).at[:, 0].set(tok_B)

    def body(t, carry):
        tok_B, cache, codes_BxM, out_BxT = carry
        logits_Bx1xV, cache, codes_BxM = step(tok_B[:, None], cache, P + t - 1, codes_BxM)
        tok_B = jnp.argmax(logits_Bx1xV[:, 0], -1).astype(jnp.int32)
        return tok_B, cache, codes_BxM, out_BxT.at[:, t].set(tok_B)

    _, _, codes_BxM, out_BxT = jax.lax.fori_loop(1, n_new, body,
                                                 (tok_B, cache, codes_BxM, out_BxT))
    return out_BxT, codes_BxM


def generate_reference(model, params, prompt_BxP, n_new: int, mode: str = "route", rng=None):
    """Full recompute of the whole sequence for every new token (slow; the oracle in tests)."""
    _check(mode)
    m = bind(model, params)
    B, P = prompt_BxP.shape
    rng = jax.random.key(0) if rng is None else rng
    fixed_BxM = _init_codes(m, B, P + n_new, mode, rng)
    seq_BxS = jnp.asarray(prompt_BxP, jnp.int32)
    codes_BxM = fixed_BxM
    for _ in range(n_new):
        M = -(-seq_BxS.shape[1] // m.cfg.dlr.chunk)
        codes_BxM = routed_codes(m, seq_BxS) if mode == "route" else fixed_BxM[:, :M]
        logits_BxSxV = m(seq_BxS, codes_BxM=None if mode == "off" else codes_BxM)
        nxt_B = jnp.argmax(logits_BxSxV[:, -1], -1).astype(jnp.int32)
        seq_BxS = jnp.concatenate([seq_BxS, nxt_B[:, None]], axis=1)
    return seq_BxS[:, P:], codes_BxM
