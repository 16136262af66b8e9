"""Building blocks of the GPT: params with logical axis names, norms, rotary, attention, MLPs.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis names
("embed", "mlp", "heads", "kv", "vocab", ...). ``lm.sharding.RULES`` maps them to mesh axes; the
model never mentions the mesh. Eager sharding is off so a model can be built without a mesh
(notebooks) and placed later by ``lm.sharding.init_params``.

Shapes: B batch, L query length, S key length, D d_model, N heads, H head dim, F d_ff, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lm.sharding import constrain

Array = jax.Array


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str | None, ...], dtype):
    """An ``nnx.Param`` initialised by ``init`` and annotated with logical axis ``names``."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {names} do not match shape {shape}")
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    """Inverted dropout; identity when ``rng`` is None or ``rate`` is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Norm(nnx.Module):
    """RMSNorm (``kind="rms"``) or LayerNorm without bias (``kind="layer"``), computed in fp32."""

    def __init__(self, d: int, kind: str, eps: float, param_dtype, rngs: nnx.Rngs):
        self.kind, self.eps = kind, eps
        self.scale = param(rngs, nnx.initializers.ones, (d,), ("norm",), param_dtype)

    def __call__(self, x_BxLxD: Array) -> Array:
        x = x_BxLxD.astype(jnp.float32)
        if self.kind == "layer":
            x = x - x.mean(-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps)
        scale_11D = self.scale[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (x * scale_11D).astype(x_BxLxD.dtype)


def rotary(x_BxLxNxH: Array, pos_BxL: Array, base: float) -> Array:
    """Rotary position embedding (half-split convention, as in GPT-NeoX / Llama)."""
    h = x_BxLxNxH.shape[-1]
    inv_freq_h2 = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    ang_BxLxH2 = pos_BxL[..., None].astype(jnp.float32) * inv_freq_h2[None, None, :]
    sin, cos = jnp.sin(ang_BxLxH2)[:, :, None, :], jnp.cos(ang_BxLxH2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


class Attention(nnx.Module):
    """Causal multi-head self-attention with a fused qkv projection and an optional KV cache."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        D, N = cfg.d_model, cfg.n_heads
        H = D // N
        pdt, std = cfg.param_dtype_, 0.02
        self.cfg = cfg
        self.qkv_Dx3xNxH = param(rngs, nnx.initializers.normal(std), (D, 3, N, H),
                                 ("embed", None, "heads", "kv"), pdt)
        out_std = std / (2 * cfg.n_layers) ** 0.5
        self.out_NxHxD = param(rngs, nnx.initializers.normal(out_std), (N, H, D),
                               ("heads", "kv", "embed"), pdt)

    def __call__(self, x_BxLxD: Array, pos_BxL: Array, kv_cache=None, index=None):
        """Returns (y_BxLxD, new_kv). With ``kv_cache`` = (k_BxSxNxH, v_BxSxNxH) the new keys are
        written at ``index`` and queries attend to cache positions ``<= their own position``."""
        cfg, dt = self.cfg, self.cfg.dtype_
        D, _, N, H = self.qkv_Dx3xNxH.shape
        B, L = x_BxLxD.shape[:2]
        # q, k, v as three 2-D matmuls: [D, N*H] keeps the tensor-sharded N the outer factor of
        # the merged dim (no resharding), and XLA:CPU runs 2-D dots much faster than the 4-D
        # einsum (train-step benchmark, tiny shape: jax/torch 0.73 -> 0.90).
        x_BLxD = x_BxLxD.reshape(B * L, D)
        w_Dx3xNxH = self.qkv_Dx3xNxH[...].astype(dt)
        q_BxLxNxH, k_BxLxNxH, v_BxLxNxH = (
            constrain((x_BLxD @ w_Dx3xNxH[:, c].reshape(D, N * H)).reshape(B, L, N, H),
                      ("batch", "length", "heads", None)) for c in range(3))
        if cfg.pos == "rope":
            q_BxLxNxH = rotary(q_BxLxNxH, pos_BxL, cfg.rope_base)
            k_BxLxNxH = rotary(k_BxLxNxH, pos_BxL, cfg.rope_base)
        if kv_cache is None:
            o_BxLxNxH = jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH,
                                                     is_causal=True)
            new_kv = None
        else:
            k_BxSxNxH, v_BxSxNxH = kv_cache
            k_BxSxNxH = jax.lax.dynamic_update_slice_in_dim(k_BxSxNxH, k_BxLxNxH, index, axis=1)
            v_BxSxNxH = jax.lax.dynamic_update_slice_in_dim(v_BxSxNxH, v_BxLxNxH, index, axis=1)
            S = k_BxSxNxH.shape[1]
            mask_BxLxS = jnp.arange(S)[None, None, :] <= pos_BxL[:, :, None]
            o_BxLxNxH = jax.nn.dot_product_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH,
                                                     mask=mask_BxLxS[:, None])
            new_kv = (k_BxSxNxH, v_BxSxNxH)
        w_NHxD = self.out_NxHxD[...].astype(dt).reshape(N * H, D)
        y_BxLxD = (o_BxLxNxH.reshape(B * L, N * H) @ w_NHxD).reshape(B, L, D)
        return y_BxLxD, new_kv


class MLP(nnx.Module):
    """GELU MLP (``kind="gelu"``) or SwiGLU (``kind="swiglu"``)."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        D, F, pdt = cfg.d_model, cfg.d_ff, cfg.param_dtype_
        self.cfg = cfg
        n_in = 2 if cfg.mlp == "swiglu" else 1
        self.up_DxCxF = param(rngs, nnx.initializers.normal(0.02), (D, n_in, F),
                              ("embed", None, "mlp"), pdt)
        out_std = 0.02 / (2 * cfg.n_layers) ** 0.5
        self.down_FxD = param(rngs, nnx.initializers.normal(out_std), (F, D), ("mlp", "embed"), pdt)

    def __call__(self, x_BxLxD: Array) -> Array:
        dt = self.cfg.dtype_
        D, C, F = self.up_DxCxF.shape
        B, L = x_BxLxD.shape[:2]
        x_BLxD, w_DxCxF = x_BxLxD.reshape(B * L, D), self.up_DxCxF[...].astype(dt)
        h_BLxF = [constrain(x_BLxD @ w_DxCxF[:, c], ("batch", "mlp"))  # 2-D dots (see Attention)
                  for c in range(C)]
        if self.cfg.mlp == "swiglu":
            h_BLxF = jax.nn.silu(h_BLxF[0]) * h_BLxF[1]
        else:
            h_BLxF = jax.nn.gelu(h_BLxF[0])
        return (h_BLxF @ self.down_FxD[...].astype(dt)).reshape(B, L, D)


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        self.cfg = cfg
        self.norm1 = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.param_dtype_, rngs)
        self.attn = Attention(cfg, rngs)
        self.norm2 = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.param_dtype_, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BxLxD, pos_BxL, rng=None, kv_cache=None, index=None):
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        a_BxLxD, new_kv = self.attn(self.norm1(x_BxLxD), pos_BxL, kv_cache, index)
        x_BxLxD = x_BxLxD + dropout(a_BxLxD, self.cfg.dropout, r1)
        x_BxLxD = x_BxLxD + dropout(self.mlp(self.norm2(x_BxLxD)), self.cfg.dropout, r2)
        return x_BxLxD, new_kv
