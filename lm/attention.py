"""Attention kernels behind ``model.attention`` and the document (segment) mask.

``model.attention``:
- ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")`` (XLA's fused softmax).
- ``"cudnn"``: cuDNN flash attention (``implementation="cudnn"``); needs a GPU and bf16/fp16
  compute. Asked for anywhere else it is one ``ConfigError`` when the model is built
  (``check``), never a silent fallback.
- ``"auto"`` (default): cuDNN where it applies (GPU backend, bf16/fp16, head dim a multiple of
  8 and <= 128, even lengths when a mask is passed: the limits of
  ``jax._src.cudnn.fused_attention_stablehlo.check_is_flash_attention``), XLA otherwise. On a CPU
  this is exactly the call the model made before the switch existed (same numerics).

Segment ids (``lm.packing``): a query attends to key ``s`` only when ``s <= t`` and both carry the
same segment id, so packed documents never see each other. The mask is passed to the kernel as a
boolean [B, 1, T, S] array (cuDNN turns it into an additive bias). KV-cache decoding
(``cached``) always runs the XLA path: its queries are one or a few tokens, where a flash kernel
has nothing to tile, and its mask is built from absolute cache positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.sharding import ConfigError

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
_HALF = (jnp.bfloat16, jnp.float16)


def check(attention: str, dtype, backend: str | None = None) -> None:
    """Build-time check of ``model.attention`` against the backend; raises ``ConfigError``."""
    if attention not in IMPLEMENTATIONS:
        raise ConfigError(f"model.attention={attention!r} is not one of {list(IMPLEMENTATIONS)}")
    if attention != "cudnn":
        return
    backend = backend or jax.default_backend()
    if backend != "gpu":
        raise ConfigError(f"model.attention='cudnn' needs a GPU, but the JAX backend is "
                          f"{backend!r}; use model.attention=auto (XLA here) or xla")
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _HALF]:
        raise ConfigError(f"model.attention='cudnn' needs bf16/fp16 compute, got model.dtype="
                          f"{jnp.dtype(dtype).name}; set model.dtype=bfloat16 or use "
                          "model.attention=auto")


def cudnn_supported(dtype, head_dim: int, T: int, S: int, masked: bool,
                    backend: str | None = None) -> bool:
    """Whether cuDNN flash attention takes these shapes (conservative: pre-Hopper limits)."""
    if (backend or jax.default_backend()) != "gpu":
        return False
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _HALF]:
        return False
    if head_dim % 8 or head_dim > 128:
        return False
    return not (masked and (T % 2 or S % 2))


def implementation(attention: str, dtype, head_dim: int, T: int, S: int,
                   masked: bool) -> str | None:
    """The ``implementation=`` argument for ``jax.nn.dot_product_attention``."""
    if attention == "cudnn":
        return "cudnn"
    if attention == "auto" and cudnn_supported(dtype, head_dim, T, S, masked):
        return "cudnn"
    return None if attention == "auto" else "xla"  # None: XLA, the call made before the switch


def segment_mask(seg_q_BxT: jax.Array, seg_k_BxS: jax.Array) -> jax.Array:
    """[B, 1, T, S] boolean: query and key in the same segment."""
    return (seg_q_BxT[:, :, None] == seg_k_BxS[:, None, :])[:, None]


def _window_mask(q_pos, k_pos, window):
    """Key ``k`` visible to query ``q`` under a window: ``k > q - window`` (0 = all); ``window``
    may be traced (a per-layer window read in the scan over blocks)."""
    return (k_pos > q_pos - window) | (window == 0)


def softcapped(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS, scale, softcap):
    """Attention with ``softcap * tanh(s / softcap)`` on the scaled scores before the mask
    (Gemma 2), written out: fp32 scores and softmax; K may divide N (GQA)."""
    N, K = q_BxTxNxH.shape[2], k_BxSxKxH.shape[2]
    k_BxSxNxH = jnp.repeat(k_BxSxKxH, N // K, axis=2)
    v_BxSxNxH = jnp.repeat(v_BxSxKxH, N // K, axis=2)
    s_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxSxNxH,
                           preferred_element_type=jnp.float32) * scale
    s_BxNxTxS = softcap * jnp.tanh(s_BxNxTxS / softcap)
    s_BxNxTxS = jnp.where(mask_Bx1xTxS, s_BxNxTxS, jnp.finfo(jnp.float32).min)
    p_BxNxTxS = jax.nn.softmax(s_BxNxTxS, axis=-1).astype(v_BxSxNxH.dtype)
    return jnp.einsum("bnts,bsnh->btnh", p_BxNxTxS, v_BxSxNxH)


def self_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, *, attention: str = "auto",
                   segment_ids_BxT=None, window=0, scale: float | None = None,
                   softcap: float = 0.0):
    """Causal self-attention over a full sequence (training, scoring), optionally
    segment-masked and limited to the last ``window`` keys (0 = all; a traced window becomes
    an explicit mask). ``scale``: score scale (None = head_dim ** -0.5); ``softcap``: Gemma 2's
    score capping (the written-out path). K may divide N (GQA)."""
    mask = None if segment_ids_BxT is None else segment_mask(segment_ids_BxT, segment_ids_BxT)
    T, H = q_BxTxNxH.shape[1], q_BxTxNxH.shape[-1]
    if not isinstance(window, int) or softcap:
        i_T = jnp.arange(T)
        keep_TxS = (i_T[None, :] <= i_T[:, None]) & _window_mask(i_T[:, None], i_T[None, :],
                                                                   window)
        mask = keep_TxS[None, None] if mask is None else mask & keep_TxS[None, None]
        window = 0
    if softcap:
        return softcapped(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask, scale or H ** -0.5, softcap)
    impl = implementation(attention, q_BxTxNxH.dtype, H, T, T, mask is not None)
    kw = {"local_window_size": (window - 1, 0)} if window else {}
    if mask is not None:
        kw["mask"] = mask
    if impl is not None:
        kw["implementation"] = impl
    if scale is not None:
        kw["scale"] = scale
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True, **kw)


def cached(q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, pos_BxL, *, seg_q_BxL=None, seg_k_BxS=None,
           window=0, scale: float | None = None, softcap: float = 0.0):
    """Queries at absolute cache positions ``pos_BxL`` against a kv-head-major KV cache
    ``[B, K, S, H]`` (``GPT.init_cache``): key ``s`` is visible when ``s <= pos`` (``> pos -
    window`` with a window; with segments, when its segment is the query's).

    The math of ``jax.nn.dot_product_attention``'s XLA path (fp32 logits, scale after the dot,
    masked logits at -0.7 * f32 max, fp32 softmax, probabilities cast to the values' dtype), with
    the queries laid out [B, K, G*L, H] so both dots read the cache as it is stored: in the
    [B, S, K, H] layout this replaced, XLA:CPU copied every layer's cache into a dot layout at
    every decode step (SmolLM2-135M, 128 rows x 32 tokens: ~3.8 of 13 s of sampling)."""
    B, L, N, H = q_BxLxNxH.shape
    K, S = k_BxKxSxH.shape[1], k_BxKxSxH.shape[2]
    G = N // K
    key_11S = jnp.arange(S)[None, None, :]
    mask_BxLxS = key_11S <= pos_BxL[:, :, None]
    if not isinstance(window, int) or window:
        mask_BxLxS = mask_BxLxS & _window_mask(pos_BxL[:, :, None], key_11S, window)
    mask_Bx1xLxS = mask_BxLxS[:, None]
    if seg_q_BxL is not None:
        mask_Bx1xLxS = mask_Bx1xLxS & segment_mask(seg_q_BxL, seg_k_BxS)
    scale = scale or H ** -0.5
    if softcap:
        return softcapped(q_BxLxNxH, k_BxKxSxH.transpose(0, 2, 1, 3),
                          v_BxKxSxH.transpose(0, 2, 1, 3), mask_Bx1xLxS, scale, softcap)
    q_BxKxGLxH = q_BxLxNxH.reshape(B, L, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * L, H)
    s_BxKxGLxS = jnp.einsum("bkqh,bksh->bkqs", q_BxKxGLxH, k_BxKxSxH,
                            preferred_element_type=jnp.float32)
    s_BxKxGxLxS = s_BxKxGLxS.reshape(B, K, G, L, S) * jnp.float32(scale)
    s_BxKxGxLxS = jnp.where(mask_Bx1xLxS[:, :, None], s_BxKxGxLxS,
                            jnp.float32(-0.7 * float(jnp.finfo(jnp.float32).max)))
    p_BxKxGLxS = jax.nn.softmax(s_BxKxGxLxS, axis=-1).astype(v_BxKxSxH.dtype).reshape(
        B, K, G * L, S)
    o_BxKxGLxH = jnp.einsum("bkqs,bksh->bkqh", p_BxKxGLxS, v_BxKxSxH)
    return o_BxKxGLxH.reshape(B, K, G, L, H).transpose(0, 3, 1, 2, 4).reshape(B, L, N, H)
