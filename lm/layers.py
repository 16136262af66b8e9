"""Building blocks of the GPT: params with logical axis names, norms, rotary, attention, MLPs.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis names
("embed", "mlp", "heads", "kv", "vocab", ...). ``lm.sharding.RULES`` maps them to mesh axes; the
model never mentions the mesh. Eager sharding is off so a model can be built without a mesh
(notebooks) and placed later by ``lm.sharding.init_params``.

Shapes: B batch, L query length, S key length, D d_model, N heads, K kv heads, H head dim,
F d_ff, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lm import attention as attn_lib
from lm import lora
from lm.quant import read
from lm.remat import ATTN_OUT
from lm.sharding import constrain

Array = jax.Array


def next_keys(rngs: nnx.Rngs, n: int) -> Array:
    """``[n]`` keys: those of ``n`` calls of ``rngs.params()``, in order, with the same counter
    increment, the counter written once by ``set_raw_value``. ``nnx.RngStream.__call__`` writes
    it through ``Variable.set_value``, whose sharding comparison on a tracer makes jax build an
    error message that walks the whole jaxpr traced so far: quadratic in a model's parameter
    count under ``eval_shape``/``jit`` (~11 s of a 30-layer model's build)."""
    stream = rngs.params
    count = stream.count.get_raw_value()
    keys = jax.vmap(jax.random.fold_in, (None, 0))(
        stream.key.get_raw_value(), count + jnp.arange(n, dtype=count.dtype))
    stream.count.set_raw_value(count + n)
    return keys


def next_key(rngs: nnx.Rngs) -> Array:
    """``rngs.params()`` (``next_keys`` for one key, without the vmap)."""
    stream = rngs.params
    count = stream.count.get_raw_value()
    key = jax.random.fold_in(stream.key.get_raw_value(), count)
    stream.count.set_raw_value(count + 1)
    return key


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str | None, ...], dtype):
    """An ``nnx.Param`` initialised by ``init`` and annotated with logical axis ``names``."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {names} do not match shape {shape}")
    return nnx.Param(init(next_key(rngs), shape, dtype), out_sharding=names, eager_sharding=False)


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    """Inverted dropout; identity when ``rng`` is None or ``rate`` is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Norm(nnx.Module):
    """RMSNorm (``kind="rms"``) or LayerNorm (``kind="layer"``), computed in fp32.

    ``bias``: a learned LayerNorm bias (GPT-2). ``offset``: the scale is ``offset + w`` (Gemma's
    ``1 + w``; ``w`` then starts at ``1 - offset`` so a fresh norm is the identity)."""

    def __init__(self, d: int, kind: str, eps: float, param_dtype, rngs: nnx.Rngs, *,
                 bias: bool = False, offset: float = 0.0):
        self.kind, self.eps, self.offset = kind, eps, offset
        init = nnx.initializers.ones if offset == 0.0 else nnx.initializers.constant(1.0 - offset)
        self.scale = param(rngs, init, (d,), ("norm",), param_dtype)
        if bias:
            self.bias = param(rngs, nnx.initializers.zeros, (d,), ("norm",), param_dtype)

    def __call__(self, x_BxLxD: Array) -> Array:
        x = x_BxLxD.astype(jnp.float32)
        if self.kind == "layer":
            x = x - x.mean(-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps)
        bshape = (1,) * (x.ndim - 1) + (-1,)
        scale_11D = self.scale[...].astype(jnp.float32).reshape(bshape)
        if self.offset != 0.0:
            scale_11D = scale_11D + self.offset
        x = x * scale_11D
        if hasattr(self, "bias"):
            x = x + self.bias[...].astype(jnp.float32).reshape(bshape)
        return x.astype(x_BxLxD.dtype)


def parse_rope_scaling(spec: str) -> tuple[str, tuple[float, ...]]:
    """``""`` -> ("", ()); ``"linear:F"``; ``"llama3:F,LOW,HIGH,ORIG"`` (factor, low/high freq
    factors, original context length, as in HF ``rope_parameters``)."""
    if not spec:
        return "", ()
    kind, _, args = spec.partition(":")
    want = {"linear": 1, "llama3": 4}
    try:
        vals = tuple(float(a) for a in args.split(",")) if args else ()
    except ValueError:
        vals = None
    if kind not in want or vals is None or len(vals) != want[kind] or min(vals) <= 0:
        raise ValueError(f"model.rope_scaling={spec!r}: expected '' (none), 'linear:FACTOR' or "
                         "'llama3:FACTOR,LOW_FREQ_FACTOR,HIGH_FREQ_FACTOR,ORIGINAL_MAX_LEN' "
                         "with positive numbers")
    if kind == "llama3" and vals[1] >= vals[2]:
        raise ValueError(f"model.rope_scaling={spec!r}: low_freq_factor must be < "
                         "high_freq_factor")
    return kind, vals


def rope_inv_freq(h: int, base: float, scaling: str = "") -> Array:
    """Inverse frequencies [H/2] (fp32), rescaled as HF ``modeling_rope_utils`` does."""
    inv_freq_h2 = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    kind, vals = parse_rope_scaling(scaling)
    if kind == "linear":
        inv_freq_h2 = inv_freq_h2 / vals[0]
    elif kind == "llama3":
        factor, low, high, orig = vals
        wavelen_h2 = 2 * jnp.pi / inv_freq_h2
        scaled_h2 = jnp.where(wavelen_h2 > orig / low, inv_freq_h2 / factor, inv_freq_h2)
        smooth_h2 = (orig / wavelen_h2 - low) / (high - low)
        smoothed_h2 = (1 - smooth_h2) * scaled_h2 / factor + smooth_h2 * scaled_h2
        medium_h2 = ~(wavelen_h2 < orig / high) & ~(wavelen_h2 > orig / low)
        inv_freq_h2 = jnp.where(medium_h2, smoothed_h2, scaled_h2)
    return inv_freq_h2


def rotary(x_BxLxNxH: Array, pos_BxL: Array, base: float, scaling: str = "",
           inv_freq_h2: Array | None = None) -> Array:
    """Rotary position embedding (half-split convention, as in GPT-NeoX / Llama);
    ``inv_freq_h2`` given: that table instead of ``base``/``scaling`` (zeros: the identity)."""
    h = x_BxLxNxH.shape[-1]
    if inv_freq_h2 is None:
        inv_freq_h2 = rope_inv_freq(h, base, scaling)
    ang_BxLxH2 = pos_BxL[..., None].astype(jnp.float32) * inv_freq_h2[None, None, :]
    sin, cos = jnp.sin(ang_BxLxH2)[:, :, None, :], jnp.cos(ang_BxLxH2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


ACTS = {"gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False), "silu": jax.nn.silu,
        "relu": jax.nn.relu}


def slice_dots(x_MxD: Array, w_DxCx___: Array, whole: bool = False) -> list[Array]:
    """``[x @ w[:, c] for c]``, each flattened to [M, prod(rest)]: the C projections of a fused
    weight that share one input. By default C 2-D dots of the weight's slices (training: the
    backward is faster here than the einsum's). ``whole`` (forward-only KV-cache calls): ONE dot
    against the whole weight, sliced after: slicing the weight copies each strided slice, and
    under a decode loop XLA:CPU re-made those copies at every sampled token (SmolLM2-135M, 128
    rows x 32 tokens: ~1.2 of 11 s)."""
    D, C = w_DxCx___.shape[:2]
    if not whole:
        return [x_MxD @ w_DxCx___[:, c].reshape(D, -1) for c in range(C)]
    y_MxCxR = jnp.einsum("md,dcr->mcr", x_MxD, w_DxCx___.reshape(D, C, -1))
    return [y_MxCxR[:, c] for c in range(C)]


class Attention(nnx.Module):
    """Causal self-attention (MHA, GQA or MQA) with an optional KV cache and sliding window.

    With ``n_kv_heads == n_heads`` the projection is the fused ``qkv_Dx3xNxH`` (the layout of
    every checkpoint before GQA); otherwise ``q_DxNxH`` and ``kv_Dx2xKxH`` (K kv heads, logical
    axis "kv_heads"). Optional biases (``qkv_bias``, ``out_bias``) and per-head q/k RMSNorm
    (``qk_norm``, Qwen3) are extra params created after the base ones."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim_
        pdt, std = cfg.param_dtype_, 0.02
        self.cfg = cfg
        init = nnx.initializers.normal(std)
        if K == N:
            self.qkv_Dx3xNxH = param(rngs, init, (D, 3, N, H), ("embed", None, "heads", "kv"), pdt)
        else:
            self.q_DxNxH = param(rngs, init, (D, N, H), ("embed", "heads", "kv"), pdt)
            self.kv_Dx2xKxH = param(rngs, init, (D, 2, K, H), ("embed", None, "kv_heads", "kv"),
                                    pdt)
        out_std = std / (2 * cfg.n_layers) ** 0.5
        self.out_NxHxD = param(rngs, nnx.initializers.normal(out_std), (N, H, D),
                               ("heads", "kv", "embed"), pdt)
        zeros = nnx.initializers.zeros
        if cfg.qkv_bias and K == N:
            self.qkv_bias_3xNxH = param(rngs, zeros, (3, N, H), (None, "heads", "kv"), pdt)
        elif cfg.qkv_bias:
            self.q_bias_NxH = param(rngs, zeros, (N, H), ("heads", "kv"), pdt)
            self.kv_bias_2xKxH = param(rngs, zeros, (2, K, H), (None, "kv_heads", "kv"), pdt)
        if cfg.out_bias:
            self.out_bias_D = param(rngs, zeros, (D,), ("embed",), pdt)
        if cfg.qk_norm:  # per head, or over the whole projection (qk_norm_full, OLMo 2)
            nq, nk = (N * H, K * H) if cfg.qk_norm_full else (H, H)
            self.q_norm = Norm(nq, "rms", cfg.norm_eps, pdt, rngs, offset=cfg.norm_offset)
            self.k_norm = Norm(nk, "rms", cfg.norm_eps, pdt, rngs, offset=cfg.norm_offset)

    def layer_data(self, layer):
        """(sliding window, rotary table) of the block at index ``layer``: Python ints when the
        layers are alike or ``layer`` is static, traced scalars read from the per-layer tables
        when ``layer`` is traced (the ``lax.scan`` over blocks, ``lm.remat``)."""
        cfg = self.cfg
        if not cfg.per_layer:
            return cfg.layer_windows[0], cfg.layer_ropes[0]
        if layer is None:
            raise ValueError("this model's layers differ (model.window_layers/nope_layers/"
                             "local_rope_base): pass the block's layer index")
        if isinstance(layer, int):
            return cfg.layer_windows[layer], cfg.layer_ropes[layer]
        return (jnp.asarray(cfg.layer_windows, jnp.int32)[layer],
                jnp.asarray(cfg.layer_ropes, jnp.int32)[layer])

    def _rotary(self, x_BxLxNxH: Array, pos_BxL: Array, table) -> Array:
        cfg, h = self.cfg, self.cfg.head_dim_
        local = cfg.local_rope_base or cfg.rope_base
        if isinstance(table, int):  # 0: the model's rotary, 1: the local base, 2: none
            if table == 2:
                return x_BxLxNxH
            return rotary(x_BxLxNxH, pos_BxL, *((cfg.rope_base, cfg.rope_scaling) if table == 0
                                                else (local, "")))
        tables_3xH2 = jnp.stack([rope_inv_freq(h, cfg.rope_base, cfg.rope_scaling),
                                 rope_inv_freq(h, local), jnp.zeros((h // 2,), jnp.float32)])
        return rotary(x_BxLxNxH, pos_BxL, 0.0, inv_freq_h2=tables_3xH2[table])

    def _project(self, x_BLxD: Array, B: int, L: int, lora_rng=None, decode: bool = False):
        """q [B, L, N, H], k and v [B, L, K, H] as 2-D matmuls: [D, N*H] keeps the
        tensor-sharded N the outer factor of the merged dim (no resharding), and XLA:CPU runs
        2-D dots much faster than the 4-D einsum (train-step benchmark: 0.73 -> 0.90).
        ``decode`` (a KV-cache call: no gradient, run once per sampled token): the fused weight
        is contracted whole (``slice_dots``) instead of sliced per projection."""
        cfg, dt = self.cfg, self.cfg.dtype_
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim_
        if K == N:
            ys = slice_dots(x_BLxD, read(self, "qkv_Dx3xNxH", dt), decode)
            bs = ([self.qkv_bias_3xNxH[...].astype(dt)[c].reshape(N * H) for c in range(3)]
                  if cfg.qkv_bias else [None] * 3)
        else:
            ys = [x_BLxD @ read(self, "q_DxNxH", dt).reshape(D, N * H)] + slice_dots(
                x_BLxD, read(self, "kv_Dx2xKxH", dt), decode)
            bs = ([self.q_bias_NxH[...].astype(dt).reshape(N * H)] + [
                self.kv_bias_2xKxH[...].astype(dt)[c].reshape(K * H) for c in range(2)]
                if cfg.qkv_bias else [None] * 3)
        out = []
        ds = lora.deltas(self, "qkv", x_BLxD, lora_rng)  # model.lora: None without adapters
        for y, n, b, kv, d in zip(ys, (N, K, K), bs, (False, True, True), ds):
            y = y if b is None else y + b[None]
            if d is not None:
                y = y + d
            name = "kv_heads" if kv and K != N else "heads"
            out.append(constrain(y.reshape(B, L, n, H), ("batch", "length", name, None)))
        return out

    def __call__(self, x_BxLxD: Array, pos_BxL: Array, kv_cache=None, index=None,
                 segment_ids_BxL: Array | None = None, lora_rng: Array | None = None,
                 layer=None):
        """Returns (y_BxLxD, new_kv). With ``kv_cache`` = (k_BxKxSxH, v_BxKxSxH) the new keys are
        written at ``index`` and queries attend to cache slots ``<= index + their offset`` (and
        ``> ... - sliding_window`` when a window is set). ``segment_ids_BxL`` (packing): keys of
        other segments are masked; with a cache, it needs the segment slot of
        ``GPT.init_cache(..., segments=True)`` = (k, v, seg_BxS). ``pos_BxL`` only feeds rotary
        (per-document positions when packed). Kernels: ``lm.attention``
        (``model.attention``). ``lora_rng``: dropout key of the LoRA adapters (``lm.lora``).
        ``layer``: this block's index (an int, or traced in the scan), for per-layer windows
        and rotary tables (``ModelCfg.layer_windows`` / ``layer_ropes``)."""
        cfg, dt = self.cfg, self.cfg.dtype_
        D, N, H = cfg.d_model, cfg.n_heads, cfg.head_dim_
        W, table = self.layer_data(layer)
        B, L = x_BxLxD.shape[:2]
        q_BxLxNxH, k_BxLxKxH, v_BxLxKxH = self._project(x_BxLxD.reshape(B * L, D), B, L,
                                                              lora_rng, kv_cache is not None)
        if cfg.qk_norm and cfg.qk_norm_full:  # over the whole projection, then split (OLMo 2)
            q_BxLxNxH = self.q_norm(q_BxLxNxH.reshape(B, L, -1)).reshape(q_BxLxNxH.shape)
            k_BxLxKxH = self.k_norm(k_BxLxKxH.reshape(B, L, -1)).reshape(k_BxLxKxH.shape)
        elif cfg.qk_norm:
            q_BxLxNxH, k_BxLxKxH = self.q_norm(q_BxLxNxH), self.k_norm(k_BxLxKxH)
        if cfg.pos == "rope":
            q_BxLxNxH = self._rotary(q_BxLxNxH, pos_BxL, table)
            k_BxLxKxH = self._rotary(k_BxLxKxH, pos_BxL, table)
        score = {"scale": cfg.attn_scale or None, "softcap": cfg.attn_softcap}
        if kv_cache is None:
            o_BxLxNxH = attn_lib.self_attention(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH,
                                                attention=cfg.attention,
                                                segment_ids_BxT=segment_ids_BxL, window=W,
                                                **score)
            new_kv = None
        else:
            k_BxKxSxH, v_BxKxSxH, *seg = kv_cache  # kv-head-major (GPT.init_cache)
            if (segment_ids_BxL is None) != (not seg):
                raise ValueError("segment ids and a KV cache go together: pass segment_ids_BxL "
                                 "with a GPT.init_cache(..., segments=True) cache, or neither")
            k_BxKxSxH = jax.lax.dynamic_update_slice_in_dim(
                k_BxKxSxH, k_BxLxKxH.transpose(0, 2, 1, 3).astype(k_BxKxSxH.dtype), index, axis=2)
            v_BxKxSxH = jax.lax.dynamic_update_slice_in_dim(
                v_BxKxSxH, v_BxLxKxH.transpose(0, 2, 1, 3).astype(v_BxKxSxH.dtype), index, axis=2)
            slot_BxL = jnp.broadcast_to(index + jnp.arange(L), (B, L))
            seg_k = {}
            if seg:
                seg_BxS = jax.lax.dynamic_update_slice_in_dim(
                    seg[0], segment_ids_BxL.astype(seg[0].dtype), index, axis=1)
                seg_k = {"seg_q_BxL": segment_ids_BxL, "seg_k_BxS": seg_BxS}
            o_BxLxNxH = attn_lib.cached(q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, slot_BxL, window=W,
                                        **seg_k, **score)
            new_kv = (k_BxKxSxH, v_BxKxSxH) + ((seg_k["seg_k_BxS"],) if seg else ())
        o_BxLxNxH = checkpoint_name(o_BxLxNxH, ATTN_OUT)  # kept by model.remat=attn_out
        w_NHxD = read(self, "out_NxHxD", dt).reshape(N * H, D)
        o_BLxNH = o_BxLxNxH.reshape(B * L, N * H)
        y_BLxD = o_BLxNH @ w_NHxD
        if (d := lora.delta(self, "o", o_BLxNH, lora_rng)) is not None:
            y_BLxD = y_BLxD + d
        if cfg.out_bias:
            y_BLxD = y_BLxD + self.out_bias_D[...].astype(dt)[None]
        return y_BLxD.reshape(B, L, D), new_kv


class MLP(nnx.Module):
    """Plain MLP (``mlp="gelu"``: down(act(up x))) or gated (``mlp="swiglu"``:
    down(act(gate x) * up x)); ``act`` "" is GELU-tanh for plain and SiLU for gated."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        D, F, pdt = cfg.d_model, cfg.d_ff, cfg.param_dtype_
        self.cfg = cfg
        n_in = 2 if cfg.mlp == "swiglu" else 1
        self.up_DxCxF = param(rngs, nnx.initializers.normal(0.02), (D, n_in, F),
                              ("embed", None, "mlp"), pdt)
        out_std = 0.02 / (2 * cfg.n_layers) ** 0.5
        self.down_FxD = param(rngs, nnx.initializers.normal(out_std), (F, D), ("mlp", "embed"), pdt)
        if cfg.mlp_bias:
            self.up_bias_CxF = param(rngs, nnx.initializers.zeros, (n_in, F), (None, "mlp"), pdt)
            self.down_bias_D = param(rngs, nnx.initializers.zeros, (D,), ("embed",), pdt)

    def __call__(self, x_BxLxD: Array, lora_rng: Array | None = None,
                 decode: bool = False) -> Array:
        """``decode``: a KV-cache call (``Attention._project``'s ``decode``)."""
        cfg, dt = self.cfg, self.cfg.dtype_
        D, C = cfg.d_model, 2 if cfg.mlp == "swiglu" else 1
        B, L = x_BxLxD.shape[:2]
        x_BLxD, w_DxCxF = x_BxLxD.reshape(B * L, D), read(self, "up_DxCxF", dt)
        h_BLxF = slice_dots(x_BLxD, w_DxCxF, decode and C > 1)
        ds = lora.deltas(self, ("gate", "up") if C == 2 else ("up",), x_BLxD, lora_rng)
        for c, d in enumerate(ds):  # model.lora
            if d is not None:
                h_BLxF[c] = h_BLxF[c] + d
        if cfg.mlp_bias:
            b_CxF = self.up_bias_CxF[...].astype(dt)
            h_BLxF = [h + b_CxF[c][None] for c, h in enumerate(h_BLxF)]
        h_BLxF = [constrain(h, ("batch", "mlp")) for h in h_BLxF]
        act = ACTS[cfg.act_]
        if cfg.mlp == "swiglu":
            h_BLxF = act(h_BLxF[0]) * h_BLxF[1]
        else:
            h_BLxF = act(h_BLxF[0])
        y_BLxD = h_BLxF @ read(self, "down_FxD", dt)
        if (d := lora.delta(self, "down", h_BLxF, lora_rng)) is not None:
            y_BLxD = y_BLxD + d
        if cfg.mlp_bias:
            y_BLxD = y_BLxD + self.down_bias_D[...].astype(dt)[None]
        return y_BLxD.reshape(B, L, D)


class Block(nnx.Module):
    """Transformer block. ``block_norm="pre"``: x + attn(norm1(x)); x + mlp(norm2(x)).
    ``"sandwich"`` (Gemma 2/3): x + post_attn_norm(attn(norm1(x))); x +
    post_mlp_norm(mlp(norm2(x))). ``"post"`` (OLMo 2): no pre-norms, x + post_attn_norm(attn(x));
    x + post_mlp_norm(mlp(x)). The post-norms are created after the pre-norm params.
    ``moe``: a mixture-of-experts MLP (``lm.moe.MoE``, attribute ``moe``) replaces ``mlp``."""

    def __init__(self, cfg, rngs: nnx.Rngs, moe: bool = False):
        self.cfg = cfg
        kw = {"bias": cfg.norm_bias, "offset": cfg.norm_offset}

        def norm():
            return Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.param_dtype_, rngs, **kw)
        if cfg.block_norm != "post":
            self.norm1 = norm()
        self.attn = Attention(cfg, rngs)
        if cfg.block_norm != "post":
            self.norm2 = norm()
        if moe:
            from lm.moe import MoE  # lm.moe builds on this module
            self.moe = MoE(cfg, rngs)
        else:
            self.mlp = MLP(cfg, rngs)
        if cfg.block_norm != "pre":
            self.post_attn_norm, self.post_mlp_norm = norm(), norm()

    def __call__(self, x_BxLxD, pos_BxL, rng=None, kv_cache=None, index=None,
                 segment_ids_BxL=None, layer=None):
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        lc = self.cfg.lora  # adapter dropout keys, independent of the residual dropout's
        lk = jax.random.fold_in(rng, 7) if rng is not None and lc.on and lc.dropout else None
        pre, post = self.cfg.block_norm != "post", self.cfg.block_norm != "pre"
        a_BxLxD, new_kv = self.attn(self.norm1(x_BxLxD) if pre else x_BxLxD, pos_BxL, kv_cache,
                                    index, segment_ids_BxL, lora_rng=lk, layer=layer)
        if post:
            a_BxLxD = self.post_attn_norm(a_BxLxD)
        x_BxLxD = x_BxLxD + dropout(a_BxLxD, self.cfg.dropout, r1)
        mk = None if lk is None else jax.random.fold_in(lk, 1)
        h_BxLxD = self.norm2(x_BxLxD) if pre else x_BxLxD
        if hasattr(self, "moe"):
            m_BxLxD = self.moe(h_BxLxD, segment_ids_BxL, record=kv_cache is None)
        else:
            m_BxLxD = self.mlp(h_BxLxD, lora_rng=mk, decode=kv_cache is not None)
        if post:
            m_BxLxD = self.post_mlp_norm(m_BxLxD)
        x_BxLxD = x_BxLxD + dropout(m_BxLxD, self.cfg.dropout, r2)
        return x_BxLxD, new_kv
