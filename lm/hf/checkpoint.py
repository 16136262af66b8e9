"""Load a Hugging Face checkpoint into the sharded GPT, save one, inspect one.

    cfg, params = load("dir", mesh=mesh, dtype="bfloat16")   # params as lm.losses.bind takes
    save(cfg, params, "out_dir", tokenizer_dir="dir")        # transformers-loadable directory
    info = inspect("dir")                                    # family, sizes, dtype, tensors

``load`` validates everything first (config, every tensor's presence and shape, no unmapped
weights) and only then builds each param with ``jax.make_array_from_callback``: the callback
of each device reads that device's slice of the memory-mapped tensor, so no device receives a
full copy of a sharded weight and host memory stays near one slice at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import NamedSharding, SingleDeviceSharding

from lm import sharding as sh
from lm.hf import families
from lm.hf import params as pmap
from lm.hf.safetensors_io import DTYPES, SafetensorsDir, write_sharded
from lm.model import DTYPES as MODEL_DTYPES
from lm.model import GPT, ModelCfg
from lm.sharding import ConfigError

NP_DTYPES = {"float32": np.float32, "bfloat16": DTYPES["BF16"], "float16": np.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                   "chat_template.json")


def read_config(path: str) -> dict:
    cp = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise ConfigError(f"{path} is not a directory")
    if not os.path.exists(cp):
        raise ConfigError(f"{path} has no config.json; is it a Hugging Face model directory?")
    with open(cp) as fh:
        try:
            return json.load(fh)
        except ValueError as e:
            raise ConfigError(f"{cp}: not valid JSON ({e})") from None


def abstract(cfg: ModelCfg):
    """(graphdef, {path: ShapeDtypeStruct}, {path: logical PartitionSpec}) of ``GPT(cfg)``."""
    abs_model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abs_model, nnx.Param)
    shapes = _flat(nnx.to_pure_dict(abs_state))
    specs = _flat(sh.param_specs(abs_state))
    return graphdef, shapes, specs


def param_layout(cfg: ModelCfg):
    """({path: ShapeDtypeStruct}, {path: logical PartitionSpec}) of ``GPT(cfg)`` without tracing
    every block: blocks are built identically, so one block's entries are repeated (tracing
    the initialisers of a 16-layer model costs ~0.4 s, more than reading 1 GB)."""
    kinds = {cfg.is_moe(i) for i in range(cfg.n_layers)}
    if cfg.dlr.on or cfg.n_layers == 1 or len(kinds) > 1:  # (MoE and dense layers: all)
        return abstract(cfg)[1:]
    one = dataclasses.replace(cfg, n_layers=1, window_layers=(), nope_layers=(),  # same params
                              moe_dense_layers=(), moe_sparse_step=1,
                              moe_experts=cfg.moe_experts if kinds == {True} else 0)
    _, shapes1, specs1 = abstract(one)
    shapes, specs = {}, {}
    for path in shapes1:
        for i in range(cfg.n_layers) if path[0] == "block_0" else [None]:
            p = path if i is None else (f"block_{i}",) + path[1:]
            shapes[p], specs[p] = shapes1[path], specs1[path]
    return shapes, specs


def graphdef(cfg: ModelCfg):
    """The ``nnx.GraphDef`` that ``lm.losses.bind(graphdef, params)`` needs for ``cfg``."""
    return abstract(cfg)[0]


_flat, _nest = flatten_dict, unflatten_dict  # {path tuple: leaf} <-> nested dicts


def _plan(path: str, dtype: str | None, max_len: int | None):
    """Everything ``load`` needs, checked: (cfg, family, files, {our path: (Src, names)})."""
    hf = read_config(path)
    family = families.model_type(hf)
    files = SafetensorsDir(path)
    if dtype is not None and dtype not in NP_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {list(NP_DTYPES)} (or None)")
    if dtype is None:
        floats = {files.dtype(n) for n in files.names if files.dtype(n).kind in "fV"}
        by_np = {np.dtype(v): k for k, v in NP_DTYPES.items()}
        stored = sorted(by_np.get(d, str(d)) for d in floats)
        if len(stored) != 1 or stored[0] not in NP_DTYPES:
            raise ConfigError(f"{path}: tensors are stored as {stored}; pass dtype= one of "
                              f"{list(NP_DTYPES)} to cast")
        dtype = stored[0]
    cfg = families.to_model_cfg(hf, param_dtype=dtype, max_len=max_len)
    shapes, specs = param_layout(cfg)
    plan, used, problems = {}, set(), []
    tower = family == "gemma3"  # the text tower only, mapped as gemma3_text
    for ours, src in pmap.mapping(cfg, "gemma3_text" if tower else family).items():
        if ours not in shapes:
            raise AssertionError(f"mapping names {ours}, which GPT({family}) lacks")
        names = [pmap.resolve(files, n) for n in src.names]
        for want, got in zip(src.names, names):
            if got is None:
                problems.append(f"missing tensor {want}")
            elif not pmap.shape_ok(src, shapes[ours].shape, files.shape(got)):
                problems.append(f"tensor {got} has shape {list(files.shape(got))}, expected "
                                f"{list(pmap.hf_shape(src, shapes[ours].shape))} for "
                                f"{'.'.join(ours)}")
        used.update(n for n in names if n)
        plan[ours] = (src, names)
    if set(plan) != set(shapes):
        raise AssertionError(f"unmapped params: {sorted(set(shapes) - set(plan))}")
    extra = [n for n in files.names if n not in used and not n.endswith(pmap.IGNORED_SUFFIXES)
             and not (n in ("lm_head.weight", "language_model.lm_head.weight")
                      and cfg.tie_embeddings)
             and not (tower and n.startswith(pmap.VISION_PREFIXES))]
    if extra:
        problems.append(f"{len(extra)} tensors this {family} mapping does not use (an "
                        f"unsupported variant?): {extra[:4]}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems[:6]) +
                          (f"; ... ({len(problems)} problems)" if len(problems) > 6 else ""))
    return cfg, family, files, plan, shapes, specs


def load(path: str, mesh=None, dtype: str | None = None, max_len: int | None = None,
         adapter: str | None = None):
    """``(ModelCfg, params)`` from a Hugging Face directory (``config.json`` + safetensors).

    ``mesh``: a ``("data", "fsdp", "tensor")`` mesh (``lm.sharding.make_mesh``); params are
    placed by ``lm.sharding.RULES`` (as ``init_params`` would). None: single-device arrays on
    the default device. ``dtype``: None keeps the stored dtype (bf16 loads as bf16), else
    "float32"/"bfloat16"/"float16" casts; the compute dtype follows the param dtype.
    ``max_len`` caps ``max_position_embeddings`` (the KV-cache bound). Raises ``ConfigError``
    (nothing loaded) on a missing config or tensor, a shape mismatch, a truncated file or an
    unsupported ``model_type``. ``adapter``: a PEFT LoRA adapter directory (``lm.hf.peft``) on
    top: the returned cfg has its ``model.lora`` and the params its adapters."""
    cfg, _, files, plan, shapes, specs = _plan(path, dtype, max_len)
    np_dt = NP_DTYPES[cfg.param_dtype]

    def place(item):
        ours, (src, names) = item
        shape = shapes[ours].shape
        if mesh is None:
            sharding = SingleDeviceSharding(jax.devices()[0])
        else:
            sharding = NamedSharding(mesh, sh.fit_spec(specs[ours], shape, mesh))
        views = dict(zip(src.names, names))
        cache: dict = {}

        def cb(idx):
            key = tuple((s.start, s.stop) for s in idx)
            if key not in cache:  # replicas of one slice are read once
                cache[key] = pmap.read_slice(src, lambda n: files.array(views[n]), shape, idx,
                                             np_dt)
            return cache[key]

        return ours, jax.make_array_from_callback(shape, sharding, cb)

    # 8 params at a time (the copies release the GIL): host memory holds at most 8 device
    # slices (stacked params' buffers), about one tensor on an 8-device mesh
    with ThreadPoolExecutor(max_workers=8) as pool:
        out = dict(pool.map(place, plan.items()))
    if adapter is not None:
        return _with_adapter(cfg, _nest(out), adapter, mesh)
    return cfg, _nest(out)


def _with_adapter(cfg: ModelCfg, params, adapter: str, mesh):
    from lm import lora
    from lm.hf import peft
    cfg = dataclasses.replace(cfg, lora=peft.adapter_lora_cfg(adapter, cfg.lora))
    shapes, specs = param_layout(cfg)
    zeros, shard = {}, {}
    for p, a in shapes.items():
        if not lora.is_adapter(p):
            continue
        shard[p] = (SingleDeviceSharding(jax.devices()[0]) if mesh is None
                    else NamedSharding(mesh, sh.fit_spec(specs[p], a.shape, mesh)))
        zeros[p] = np.zeros(a.shape, a.dtype)
    params = lora.combine(params, _nest(zeros))
    return cfg, peft.load_into(cfg, params, _nest(shard), adapter)


def _generation_config(tokenizer_dir: str | None, source: dict | None) -> dict:
    gen = {}
    for d in (source or {}, ):
        gen.update({k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                    if d.get(k) is not None})
    if tokenizer_dir and os.path.exists(os.path.join(tokenizer_dir, "generation_config.json")):
        with open(os.path.join(tokenizer_dir, "generation_config.json")) as fh:
            src = json.load(fh)
        gen.update({k: v for k, v in src.items() if k.endswith("token_id") and v is not None})
    return gen


def save(cfg: ModelCfg, params, out_dir: str, tokenizer_dir: str | None = None,
         max_shard_bytes: int = 2 << 30, token_ids: dict | None = None,
         family: str | None = None) -> str:
    """Write ``cfg``/``params`` as a Hugging Face directory that
    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` opens with the same logits.

    The ``model_type`` is chosen from ``cfg`` (``families.choose_family``; a combination no
    family represents is refused before anything is written). Safetensors are split into
    files of at most ``max_shard_bytes`` with an index past that size. ``tokenizer_dir``: its
    tokenizer files are copied (and its special-token ids go to generation_config.json);
    ``token_ids``: explicit ``{"bos_token_id": .., "eos_token_id": ..}``. ``family``: the
    ``model_type`` to write when the model has two layouts (``phi3`` for a Llama/Mistral-shaped
    model; ``families.choose_family``). Atomic: written to a
    temporary directory next to ``out_dir`` and renamed; a non-empty ``out_dir`` is refused."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not empty; choose a new directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not a directory")
    if tokenizer_dir is not None and not os.path.isdir(tokenizer_dir):
        raise ConfigError(f"tokenizer_dir={tokenizer_dir} is not a directory")
    family = families.choose_family(cfg, family)
    ecfg = families.export_cfg(cfg, family)
    shapes, _ = param_layout(ecfg)
    flat = _flat(params)
    ours = set(shapes)
    if not set(flat) <= ours or any(
            p not in flat and "bias" not in p[-1] for p in ours):
        raise ConfigError(f"params do not match the model config: missing "
                          f"{sorted(ours - set(flat))[:3]}, unexpected "
                          f"{sorted(set(flat) - ours)[:3]}")
    dtype = cfg.param_dtype
    tensors = {}
    for path, src in pmap.mapping(ecfg, family).items():
        value = flat.get(path)
        if value is None:  # a bias the family stores and this model lacks: exactly zero
            value = np.zeros(shapes[path].shape, NP_DTYPES[dtype])
        value = np.asarray(jax.device_get(value))
        if value.shape != shapes[path].shape:
            raise ConfigError(f"param {'.'.join(path)} has shape {value.shape}, the config "
                              f"implies {shapes[path].shape}")
        tensors.update(pmap.to_hf(src, value.astype(NP_DTYPES[dtype])))
    tensors = pmap.assemble(tensors)
    ids = _generation_config(tokenizer_dir, token_ids)
    hf = families.to_hf_config(ecfg, family, dtype, extra=ids)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".hf-save-", dir=parent)
    try:
        write_sharded(tmp, tensors, max_shard_bytes)
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(hf, fh, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as fh:
            json.dump({"_from_model_config": True, **ids}, fh, indent=2)
        if tokenizer_dir is not None:
            _copy_tokenizer(tokenizer_dir, tmp)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _copy_tokenizer(src: str, dst: str):
    try:
        from tokenization.hf import HFTokenizer
    except ImportError:
        HFTokenizer = None
    if HFTokenizer is not None and os.path.exists(os.path.join(src, "tokenizer.json")):
        HFTokenizer.load(src).save(dst)
        return
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, f)):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))


def layout_family(init_from: str) -> str | None:
    """``phi3`` when ``init_from`` is a Phi-3 checkpoint (export it in its fused layout
    again), else None (the family follows from the config)."""
    try:
        return "phi3" if init_from and read_config(init_from).get("model_type") == "phi3" \
            else None
    except ConfigError:
        return None


def layer_pattern(cfg: ModelCfg) -> str:
    """The layers in order, runs of alike ones counted: ``full`` or ``sliding:W``, with
    ``+norope`` / ``+localrope:BASE`` (Gemma 3 1B: "5 x sliding:512+localrope:10000, full,
    ...") and ``+moe:ExK`` for mixture-of-experts layers (E experts, top-K)."""
    runs: list[list] = []
    for i, (w, r) in enumerate(zip(cfg.layer_windows, cfg.layer_ropes)):
        word = (f"sliding:{w}" if w else "full") + {
            0: "", 1: f"+localrope:{cfg.local_rope_base:g}", 2: "+norope"}[r] + (
            f"+moe:{cfg.moe_experts}x{cfg.moe_top_k}" if cfg.is_moe(i) else "")
        if runs and runs[-1][1] == word:
            runs[-1][0] += 1
        else:
            runs.append([1, word])
    return ", ".join(word if n == 1 else f"{n} x {word}" for n, word in runs)


def inspect(path: str) -> dict:
    """Family and sizes of a checkpoint, every tensor checked (nothing loaded)."""
    cfg, family, files, plan, shapes, _ = _plan(path, None, None)
    used = {n for _, names in plan.values() for n in names}
    return {"family": family, "params": int(sum(np.prod(s.shape) for s in shapes.values())),
            "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads,
            "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim_, "d_ff": cfg.d_ff,
            "vocab": cfg.vocab_size, "max_len": cfg.max_len, "dtype": cfg.param_dtype,
            "tied": cfg.tie_embeddings, "layer_pattern": layer_pattern(cfg),
            "tensors": len(files.names), "tensors_mapped": len(used),
            "bytes": int(sum(files.nbytes(n) for n in files.names))}


assert set(NP_DTYPES) <= set(MODEL_DTYPES)
