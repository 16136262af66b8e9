"""QLoRA's frozen base: block weights stored quantized on device, dequantized per matmul.

    --set model.lora.rank=16 model.lora.base_dtype=nf4      # or int8

With ``model.lora.base_dtype`` the projection weights of every block (``qkv_Dx3xNxH`` or
``q_DxNxH``/``kv_Dx2xKxH``, ``out_NxHxD``, ``up_DxCxF``, ``down_FxD``) are replaced by codes and
per-block absmax scales (``<name>_qscale``, fp32); embeddings, norms, biases and the adapters stay
in their float dtypes. Blocks are ``BLOCK`` consecutive values along the weight's last axis
(QLoRA uses 64 along the input dim of torch's ``[out, in]``; ours is the last axis because it is
the one that every weight here has even and divisible by 64 for real models, and the codes keep
that axis's logical name, so they shard like the float weight):

- ``int8``: ``round(127 · w / absmax)`` in int8 (8.5 bits per weight with the scales);
- ``nf4``: the index of the nearest of QLoRA's 16 NormalFloat levels (``NF4``, Dettmers et al.
  2023, appendix E / bitsandbytes) of ``w / absmax``, two 4-bit codes packed per uint8 along the
  last axis (4.5 bits per weight). Double quantization of the scales is not done (0.5 vs 0.127
  bits per weight).

``Layer`` code reads every weight through ``read(module, name, dtype)``, which dequantizes
(``levels[codes] · scale`` or ``codes · scale / 127``) inside the traced step, so XLA forms
each full-precision weight transiently next to its matmul. The quantized leaves are frozen (a
QLoRA run trains adapters only); ``quantize_params`` maps a loaded float params dict to this
layout (``lm.setup.pretrained_params``) and ``dequantize_params`` back (export ``--merge``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

BLOCK = 64
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
WEIGHTS = {"attn": ("qkv_Dx3xNxH", "q_DxNxH", "kv_Dx2xKxH", "out_NxHxD"),
           "mlp": ("up_DxCxF", "down_FxD")}
SCALE = "_qscale"


def block_size(last: int) -> int:
    b = min(BLOCK, last)
    if last % b:
        raise ValueError(f"model.lora.base_dtype: a quantized weight's last axis ({last}) "
                         f"must be divisible by {b}")
    return b


def quantize(w, kind: str):
    """(codes, scale) of a float weight; ``scale`` is ``w.shape[:-1] + (last / block,)``."""
    w = jnp.asarray(w, jnp.float32)
    b = block_size(w.shape[-1])
    blocks = w.reshape(w.shape[:-1] + (w.shape[-1] // b, b))
    absmax = jnp.max(jnp.abs(blocks), -1)
    scale = jnp.where(absmax > 0, absmax, 1.0)
    x = blocks / scale[..., None]
    if kind == "int8":
        codes = jnp.round(x * 127.0).astype(jnp.int8).reshape(w.shape)
        return codes, scale
    if kind != "nf4":
        raise ValueError(f"base_dtype={kind!r} is not one of ('int8', 'nf4')")
    if w.shape[-1] % 2:
        raise ValueError(f"nf4 packs two codes per byte: the last axis ({w.shape[-1]}) must "
                         "be even")
    levels = jnp.asarray(NF4, jnp.float32)  # nearest level: how many midpoints lie below x
    mids = (levels[1:] + levels[:-1]) / 2
    idx = jnp.searchsorted(mids, x.reshape(-1)).astype(jnp.uint8).reshape(w.shape)
    packed = (idx[..., 0::2] << 4) | idx[..., 1::2]
    return packed, scale


def dequantize(codes, scale, kind: str, dtype=jnp.float32):
    """The float weight of ``quantize``'s (codes, scale)."""
    if kind == "int8":
        x = codes.astype(jnp.float32) / 127.0
    else:
        hi, lo = codes >> 4, codes & 15
        idx = jnp.stack([hi, lo], -1).reshape(codes.shape[:-1] + (codes.shape[-1] * 2,))
        x = jnp.asarray(NF4, jnp.float32)[idx.astype(jnp.int32)]
    n = scale.shape[-1]
    blocks = x.reshape(x.shape[:-1] + (n, x.shape[-1] // n))
    return (blocks * scale[..., None]).reshape(x.shape).astype(dtype)


def read(module, name: str, dtype):
    """``module.<name>`` as a ``dtype`` array, dequantized when it is stored quantized."""
    w = getattr(module, name)[...]
    qs = getattr(module, name + SCALE, None)
    if qs is None:
        return w.astype(dtype)
    return dequantize(w, qs[...], module.cfg.lora.base_dtype, dtype)


def quantize_module(gpt, kind: str):
    """Replace every block weight of ``gpt`` by its codes (same logical names) and scales."""
    for block in gpt.blocks:
        for owner_name, names in WEIGHTS.items():
            owner = getattr(block, owner_name)
            for name in names:
                if not hasattr(owner, name):
                    continue
                var = getattr(owner, name)
                logical = var.get_metadata().get("out_sharding")
                codes, scale = quantize(var[...], kind)
                setattr(owner, name, nnx.Param(codes, out_sharding=logical,
                                               eager_sharding=False))
                setattr(owner, name + SCALE, nnx.Param(scale, out_sharding=logical,
                                                       eager_sharding=False))


def _weight_paths(flat: dict):
    for path in flat:
        if len(path) == 3 and path[1] in WEIGHTS and path[2] in WEIGHTS[path[1]]:
            yield path


def quantize_params(params: dict, kind: str) -> dict:
    """A float params dict in the quantized layout (jit it with the target shardings)."""
    flat = flatten_dict(params)
    for path in list(_weight_paths(flat)):
        codes, scale = quantize(flat[path], kind)
        flat[path], flat[path[:-1] + (path[-1] + SCALE,)] = codes, scale
    return unflatten_dict(flat)


def dequantize_params(params: dict, kind: str, dtype=jnp.float32) -> dict:
    """The float params dict of a quantized one (scales dropped)."""
    flat = flatten_dict(params)
    out = {}
    for path, v in flat.items():
        if path[-1].endswith(SCALE):
            continue
        scale = flat.get(path[:-1] + (path[-1] + SCALE,))
        out[path] = v if scale is None else dequantize(jnp.asarray(v), jnp.asarray(scale), kind,
                                                       dtype)
    return unflatten_dict(out)


def is_scale(path) -> bool:
    return str(path[-1]).endswith(SCALE)

