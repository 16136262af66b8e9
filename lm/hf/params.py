"""Tensor-name mapping between Hugging Face checkpoints and this codebase's params tree.

``mapping(cfg, family)`` gives, for every param path of ``GPT(cfg)`` (a tuple of dict keys),
a ``Src``: which HF tensors make it and how. A param is the stack (along ``stack``) of one or
more HF tensors; each HF tensor is optionally transposed (torch ``nn.Linear`` stores
``[out, in]``; GPT-2's ``Conv1D`` already stores ``[in, out]``) and then each of its axes is
split into a group of our axes (``q_proj`` ``[N*H, D]`` -> transposed ``[D, N*H]`` -> our
``[D, N, H]``: groups ``((0,), (1, 2))``).

``read_slice`` reads the part of a param that one device holds, straight from the
memory-mapped HF tensor: a slice of our group axes is a contiguous row range of the HF axis
(the inner axes of a group, e.g. the head dim, are never sharded; if they were, the covering
range is read and cut), so a device reads only its shard. ``to_hf`` is the inverse, on host
arrays, for saving.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lm.model import ModelCfg


@dataclasses.dataclass(frozen=True)
class Src:
    names: tuple[str, ...]  # HF tensors, stacked along ``stack`` of our param
    stack: int | None  # our axis indexing ``names`` (None: one tensor)
    transpose: bool  # HF 2-D tensor stored [out, in]
    groups: tuple[tuple[int, ...], ...]  # per HF axis (after transpose): our axes (sans stack)
    crop: bool = False  # our axis 0 may be shorter than HF's (GPT-2 positions, max_len cap)
    # fused HF tensors (Phi-3 qkv_proj, gate_up_proj): per name its row range [r0, r1) of the
    # HF tensor (axis 0, the out dim) and the tensor's total rows; () = whole tensors
    rows: tuple[tuple[int, int], ...] = ()
    total_rows: int = 0


def _w(name, t=True):
    return Src((name,), None, t, ((0,), (1,)))


def _vec(name):
    return Src((name,), None, False, ((0,),))


def mapping(cfg: ModelCfg, family: str) -> dict[tuple[str, ...], Src]:
    """Our param path -> ``Src`` for every param of ``GPT(cfg)`` (cfg as ``families`` builds
    it for ``family``)."""
    fused, gpt2 = cfg.kv_heads == cfg.n_heads, family == "gpt2"
    out: dict[tuple[str, ...], Src] = {}
    if gpt2:
        pre, L = "transformer.", "transformer.h"
        out[("embed_VxD",)] = _w(pre + "wte.weight", False)
        out[("pos_LxD",)] = Src((pre + "wpe.weight",), None, False, ((0,), (1,)), crop=True)
        out[("norm_f", "scale")] = _vec(pre + "ln_f.weight")
        out[("norm_f", "bias")] = _vec(pre + "ln_f.bias")
    else:
        pre, L = "model.", "model.layers"
        out[("embed_VxD",)] = _w(pre + "embed_tokens.weight", False)
        out[("norm_f", "scale")] = _vec(pre + "norm.weight")
    if not cfg.tie_embeddings:
        out[("unembed_DxV",)] = _w("lm_head.weight")
    for i in range(cfg.n_layers):
        b, p = f"block_{i}", f"{L}.{i}."
        if gpt2:
            for n, h in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[(b, n, "scale")] = _vec(p + h + ".weight")
                out[(b, n, "bias")] = _vec(p + h + ".bias")
            a = p + "attn."
            out[(b, "attn", "qkv_Dx3xNxH")] = Src((a + "c_attn.weight",), None, False,
                                                  ((0,), (1, 2, 3)))
            out[(b, "attn", "qkv_bias_3xNxH")] = Src((a + "c_attn.bias",), None, False,
                                                     ((0, 1, 2),))
            out[(b, "attn", "out_NxHxD")] = Src((a + "c_proj.weight",), None, False,
                                                ((0, 1), (2,)))
            out[(b, "attn", "out_bias_D")] = _vec(a + "c_proj.bias")
            m = p + "mlp."
            out[(b, "mlp", "up_DxCxF")] = Src((m + "c_fc.weight",), None, False,
                                              ((0,), (1, 2)))
            out[(b, "mlp", "up_bias_CxF")] = Src((m + "c_fc.bias",), None, False, ((0, 1),))
            out[(b, "mlp", "down_FxD")] = _w(m + "c_proj.weight", False)
            out[(b, "mlp", "down_bias_D")] = _vec(m + "c_proj.bias")
            continue
        norms = {"pre": {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"},
                 "sandwich": {"norm1": "input_layernorm", "norm2": "pre_feedforward_layernorm",
                              "post_attn_norm": "post_attention_layernorm",
                              "post_mlp_norm": "post_feedforward_layernorm"},
                 "post": {"post_attn_norm": "post_attention_layernorm",
                          "post_mlp_norm": "post_feedforward_layernorm"}}[cfg.block_norm]
        for n, h in norms.items():
            out[(b, n, "scale")] = _vec(p + h + ".weight")
        a = p + "self_attn."
        qkv = [a + f"{c}_proj" for c in "qkv"]
        if fused:
            out[(b, "attn", "qkv_Dx3xNxH")] = Src(tuple(n + ".weight" for n in qkv), 1, True,
                                                  ((0,), (1, 2)))
        else:
            out[(b, "attn", "q_DxNxH")] = Src((qkv[0] + ".weight",), None, True,
                                              ((0,), (1, 2)))
            out[(b, "attn", "kv_Dx2xKxH")] = Src(tuple(n + ".weight" for n in qkv[1:]), 1, True,
                                                 ((0,), (1, 2)))
        if cfg.qkv_bias and fused:
            out[(b, "attn", "qkv_bias_3xNxH")] = Src(tuple(n + ".bias" for n in qkv), 0, False,
                                                     ((0, 1),))
        elif cfg.qkv_bias:
            out[(b, "attn", "q_bias_NxH")] = Src((qkv[0] + ".bias",), None, False, ((0, 1),))
            out[(b, "attn", "kv_bias_2xKxH")] = Src(tuple(n + ".bias" for n in qkv[1:]), 0,
                                                    False, ((0, 1),))
        out[(b, "attn", "out_NxHxD")] = Src((a + "o_proj.weight",), None, True, ((0, 1), (2,)))
        if cfg.out_bias:
            out[(b, "attn", "out_bias_D")] = _vec(a + "o_proj.bias")
        if cfg.qk_norm:
            out[(b, "attn", "q_norm", "scale")] = _vec(a + "q_norm.weight")
            out[(b, "attn", "k_norm", "scale")] = _vec(a + "k_norm.weight")
        if family == "phi3":  # fused tensors (no biases, no q/k norm): q, k, v rows of
            # qkv_proj and gate, up rows of gate_up_proj replace the separate projections
            NH, KH, F = cfg.n_heads * cfg.head_dim_, cfg.kv_heads * cfg.head_dim_, cfg.d_ff
            qkv_t, tot = a + "qkv_proj.weight", NH + 2 * KH
            spans = ((0, NH), (NH, NH + KH), (NH + KH, tot))
            if fused:
                out[(b, "attn", "qkv_Dx3xNxH")] = Src((qkv_t,) * 3, 1, True, ((0,), (1, 2)),
                                                      rows=spans, total_rows=tot)
            else:
                out[(b, "attn", "q_DxNxH")] = Src((qkv_t,), None, True, ((0,), (1, 2)),
                                                  rows=spans[:1], total_rows=tot)
                out[(b, "attn", "kv_Dx2xKxH")] = Src((qkv_t,) * 2, 1, True, ((0,), (1, 2)),
                                                     rows=spans[1:], total_rows=tot)
            out[(b, "mlp", "up_DxCxF")] = Src((p + "mlp.gate_up_proj.weight",) * 2, 1, True,
                                              ((0,), (1,)), rows=((0, F), (F, 2 * F)),
                                              total_rows=2 * F)
            out[(b, "mlp", "down_FxD")] = _w(p + "mlp.down_proj.weight")
            continue
        if cfg.is_moe(i):  # per-expert tensors stacked on our expert axis
            out.update(_moe(cfg, family, b, p))
            continue
        m = p + "mlp."
        ups = ("gate_proj", "up_proj") if cfg.mlp == "swiglu" else ("up_proj",)
        out[(b, "mlp", "up_DxCxF")] = Src(tuple(m + u + ".weight" for u in ups), 1, True,
                                          ((0,), (1,)))
        out[(b, "mlp", "down_FxD")] = _w(m + "down_proj.weight")
        if cfg.mlp_bias:
            out[(b, "mlp", "up_bias_CxF")] = Src(tuple(m + u + ".bias" for u in ups), 0, False,
                                                 ((0,),))
            out[(b, "mlp", "down_bias_D")] = _vec(m + "down_proj.bias")
    return out


def _moe(cfg: ModelCfg, family: str, b: str, p: str) -> dict:
    """An MoE block's router and experts: Qwen3-MoE ``mlp.gate`` and
    ``mlp.experts.{e}.{gate,up,down}_proj``; Mixtral ``block_sparse_moe.gate`` and
    ``block_sparse_moe.experts.{e}.w1`` (gate) / ``w3`` (up) / ``w2`` (down), each [out, in]."""
    m, names = ((p + "block_sparse_moe.", ("w1", "w3", "w2")) if family == "mixtral"
                else (p + "mlp.", ("gate_proj", "up_proj", "down_proj")))
    E = range(cfg.moe_experts)
    out = {(b, "moe", "router_DxE"): _w(m + "gate.weight")}
    for ours, n in zip(("gate_ExDxF", "up_ExDxF", "down_ExFxD"), names):
        out[(b, "moe", ours)] = Src(tuple(f"{m}experts.{e}.{n}.weight" for e in E), 0, True,
                                    ((0,), (1,)))
    return out


def _drop(shape, axis):
    return shape if axis is None else shape[:axis] + shape[axis + 1:]


def hf_shape(src: Src, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape each HF tensor of ``src`` must have for our param of ``shape``."""
    sub = _drop(tuple(shape), src.stack)
    post = tuple(math.prod(sub[a] for a in g) for g in src.groups)
    return post[::-1] if src.transpose else post


def shape_ok(src: Src, shape, stored) -> bool:
    want = hf_shape(src, shape)
    if src.rows:  # a row range of a fused tensor
        r0, r1 = src.rows[0]
        return (tuple(stored) == (src.total_rows,) + tuple(want[1:]) and r1 - r0 == want[0])
    if src.crop:
        return len(stored) == len(want) and stored[0] >= want[0] and stored[1:] == want[1:]
    return tuple(stored) == want


def _bounds(idx, shape):
    return [(s.start or 0, shape[a] if s.stop is None else s.stop)
            for a, s in enumerate(tuple(idx) + (slice(None),) * (len(shape) - len(idx)))]


def read_slice(src: Src, array_of, shape, idx, dtype) -> np.ndarray:
    """``param[idx]`` (``idx``: a tuple of slices, as ``jax.make_array_from_callback`` gives)
    read from the HF tensors; ``array_of(name)`` is a memory-mapped numpy view.

    The result is a (possibly transposed) *view*: only stacking copies, and it stacks the
    slices in the HF orientation (row-chunk memcpy), leaving the transpose to the device put,
    which does strided copies several times faster than numpy's transposing copy."""
    bounds = _bounds(idx, shape)
    if src.stack is None:
        x = _transform(src, _hf_slice(src, _view(src, array_of, 0), shape, bounds, None),
                       tuple(shape), bounds, lead=0)
    else:
        s0, s1 = bounds[src.stack]
        sub, sub_bounds = _drop(tuple(shape), src.stack), _drop(bounds, src.stack)
        buf = np.stack([_hf_slice(src, _view(src, array_of, j), sub, sub_bounds, None)
                        for j in range(s0, s1)])
        x = np.moveaxis(_transform(src, buf, sub, sub_bounds, lead=1), 0, src.stack)
    return x if x.dtype == dtype else x.astype(dtype)


def _view(src: Src, array_of, j: int):
    """HF tensor ``j`` of ``src`` (its row range of a fused tensor): a memory-mapped view."""
    x = array_of(src.names[j])
    return x[slice(*src.rows[j])] if src.rows else x


def _hf_slice(src, view, sub_shape, bounds, _):
    """The covering slice of the HF tensor, in the HF orientation (a view)."""
    hf_sl = []
    for g in src.groups:
        a0, b0 = bounds[g[0]]
        rest = math.prod(sub_shape[a] for a in g[1:])
        hf_sl.append(slice(a0 * rest, b0 * rest))
    return view[hf_sl[1], hf_sl[0]] if src.transpose else view[tuple(hf_sl)]


def _transform(src, x, sub_shape, bounds, lead: int):
    """HF-oriented slice (with ``lead`` stacked axes in front) -> our layout, as views."""
    new_shape, inner = [], []
    for g in src.groups:
        a0, b0 = bounds[g[0]]
        new_shape += [b0 - a0] + [sub_shape[a] for a in g[1:]]
        inner += [slice(None)] + [slice(*bounds[a]) for a in g[1:]]
    if src.transpose:
        x = np.swapaxes(x, lead, lead + 1)
    x = x.reshape(tuple(x.shape[:lead]) + tuple(new_shape))
    return x[(slice(None),) * lead + tuple(inner)]


def to_hf(src: Src, value: np.ndarray) -> dict[str, np.ndarray]:
    """The HF tensors of one param (host array), C-contiguous."""
    parts = [value] if src.stack is None else [np.take(value, j, axis=src.stack)
                                               for j in range(value.shape[src.stack])]
    out = {}
    for j, (name, part) in enumerate(zip(src.names, parts)):
        post = tuple(math.prod(part.shape[a] for a in g) for g in src.groups)
        x = part.reshape(post)
        x = np.ascontiguousarray(x.T if src.transpose else x)
        out[(name, src.rows[j][0]) if src.rows else name] = x
    return out


def assemble(pieces: dict) -> dict[str, np.ndarray]:
    """``to_hf`` outputs merged: fused tensors' row pieces ``(name, r0)`` concatenated in row
    order (Phi-3's qkv_proj from q and kv params)."""
    out, fused = {}, {}
    for k, x in pieces.items():
        if isinstance(k, tuple):
            fused.setdefault(k[0], []).append((k[1], x))
        else:
            out[k] = x
    for name, parts in fused.items():
        out[name] = np.concatenate([x for _, x in sorted(parts, key=lambda t: t[0])], axis=0)
    return out


# tensors a checkpoint may hold that carry no weights of ours (buffers of older versions)
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
# a gemma3 (multimodal) checkpoint's tensors outside its text tower
VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.",
                   "multi_modal_projector.")


def resolve(names_present, wanted: str) -> str | None:
    """``wanted`` or its variant without the ``transformer.``/``model.`` prefix (the original
    GPT-2 checkpoints store ``h.0.attn...``); None if absent."""
    if wanted in names_present:
        return wanted
    # the text tower of a gemma3 checkpoint: transformers 5 writes model.language_model.X and
    # lm_head, 4.x wrote language_model.model.X and language_model.lm_head
    tower = ([f"model.language_model.{wanted[6:]}", f"language_model.{wanted}"]
             if wanted.startswith("model.") else [f"language_model.{wanted}"])
    for name in tower:
        if name in names_present:
            return name
    for pre in ("transformer.", "model."):
        if wanted.startswith(pre) and wanted[len(pre):] in names_present:
            return wanted[len(pre):]
    return None
