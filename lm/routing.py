"""Dynamic Latent Routing (DLR) hook of the GPT: a code book of steering vectors and a router.

Turned on by config, not a fork: ``--set dlr.layer=2 dlr.codes=32 dlr.chunk=4 dlr.alpha=1``
(``dlr.*`` is an alias of ``model.dlr.*``; the section lives in ``ModelCfg`` because the model
builds its parameters from it). With ``layer = -1`` (the default) the GPT has no DLR parameters.

Definitions (spec ``dlr_gds.md`` §3.1; ``l* = layer``, ``K = chunk``, ``C = codes``):
- The residual stream "at layer l*" is ``hiddens[l*]``: the embedding output for l* = 0, else the
  output of block l*-1 (the input of block l*). Allowed: ``0 <= l* < n_layers``.
- Chunks are on absolute positions: position p belongs to chunk ``p // K``; M = ceil(L / K).
- Route: ``z_m = W_rt · sg(h^{(l*)}_{mK})`` (no bias), read on each chunk's first position from the
  stream BEFORE steering, so routing never depends on codes (causal, factorised over chunks).
- Steer: every position p gets ``h_p += alpha * e[a_{p // K}]`` before block l* runs.
- The code book ``e`` [C, D] starts at zero, so at init the steered model IS the base model; the
  router ``W_rt`` [D, C] starts at normal(0.02) [choice: the paper gives no init] and is created
  after every base parameter, so a DLR model shares the base model's parameters for one seed.
The loss, the search and generation with codes live in ``rl/dlr*.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lm.layers import param


@dataclasses.dataclass(frozen=True)
class DLRCfg:
    """DLR architecture (layer, codes, chunk, alpha) and post-training hyper-parameters.

    ``n_search`` code sequences are drawn per example at ``temps`` (cycled), plus the router's
    argmax when ``greedy``; the best by steered log-likelihood is trained on. Loss weights follow
    the paper's defaults (alpha_policy 0.5 Qwen / 0.1 Llama; alpha_reg 0.1); the bigram-Zipf
    prior uses unigram q(k) ~ (k+1)^-zipf_s and a factor ``zipf_rho`` on repeated codes."""

    layer: int = -1  # injection layer l*; -1 = DLR off
    codes: int = 8  # C
    chunk: int = 4  # K (abstraction ratio)
    alpha: float = 1.0  # steering scale
    n_search: int = 4  # N sampled candidates
    greedy: bool = True  # also score the router's argmax (candidate 0)
    temps: tuple[float, ...] = (1.0,)
    alpha_policy: float = 0.5
    alpha_reg: float = 0.1
    zipf_s: float = 1.0
    zipf_rho: float = 0.1
    # the router reads the stream divided by its RMS (parameter-free): a pretrained model's
    # mid-depth stream has a large norm (SmolLM2-135M layer 15: ~780, a few massive dims), which
    # saturates normal(0.02) router logits (std ~16: one code everywhere, no search)
    router_norm: bool = False

    @property
    def on(self) -> bool:
        return self.layer >= 0

    def check(self, n_layers: int):
        """Raise ValueError naming the key and the allowed values."""
        if not self.on:
            return
        if self.layer >= n_layers:
            raise ValueError(f"dlr.layer={self.layer} must be in 0..{n_layers - 1} (or -1 = off) "
                             f"for a model with {n_layers} layers")
        for key, lo in (("codes", 1), ("chunk", 1), ("n_search", 1)):
            if getattr(self, key) < lo:
                raise ValueError(f"dlr.{key}={getattr(self, key)} must be >= {lo}")
        if not self.temps or any(t <= 0 for t in self.temps):
            raise ValueError(f"dlr.temps={self.temps} must be a non-empty list of values > 0")
        if self.alpha_policy < 0 or self.alpha_reg < 0 or self.zipf_rho <= 0:
            raise ValueError("dlr.alpha_policy and dlr.alpha_reg must be >= 0, dlr.zipf_rho > 0")


def chunk_index(pos_BxL: jax.Array, chunk: int) -> jax.Array:
    return pos_BxL // chunk


class LatentRouter(nnx.Module):
    """Code book [C, D] (zeros) and routing head [D, C] of one GPT."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        d, dc = cfg.d_model, cfg.dlr
        self.cfg = dc
        self.codebook_CxD = param(rngs, nnx.initializers.zeros, (dc.codes, d), ("codes", "embed"),
                                  cfg.param_dtype_)
        self.router_DxC = param(rngs, nnx.initializers.normal(0.02), (d, dc.codes),
                                ("embed", "codes"), cfg.param_dtype_)

    def route(self, h_BxLxD: jax.Array) -> jax.Array:
        """Router logits z [B, M, C] (fp32) from the stop-gradient stream at each chunk start."""
        first_BxMxD = jax.lax.stop_gradient(h_BxLxD[:, :: self.cfg.chunk])
        if self.cfg.router_norm:
            f32 = first_BxMxD.astype(jnp.float32)
            first_BxMxD = f32 * jax.lax.rsqrt(jnp.mean(f32 * f32, -1, keepdims=True) + 1e-6)
        w_DxC = self.router_DxC[...].astype(jnp.float32)
        return jnp.einsum("bmd,dc->bmc", first_BxMxD.astype(jnp.float32), w_DxC)

    def steer(self, h_BxLxD: jax.Array, pos_BxL: jax.Array, codes_BxM: jax.Array) -> jax.Array:
        """``h + alpha * e[codes[pos // K]]`` (codes of chunks past M are clipped to the last)."""
        idx_BxL = jnp.clip(chunk_index(pos_BxL, self.cfg.chunk), 0, codes_BxM.shape[1] - 1)
        code_BxL = jnp.take_along_axis(codes_BxM, idx_BxL, axis=1)
        e_BxLxD = self.codebook_CxD[...].astype(h_BxLxD.dtype)[code_BxL]
        return h_BxLxD + jnp.asarray(self.cfg.alpha, h_BxLxD.dtype) * e_BxLxD
