"""LoRA adapters in PEFT's format, out and in (``lm.lora`` adapters <-> an adapter directory).

    save_adapter(cfg, params, "out_dir", base="ckpt/base")    # adapter_config.json + safetensors
    lcfg = adapter_lora_cfg("adapter_dir")                      # its r / alpha / targets
    params = load_into(cfg, params, shardings, "adapter_dir")  # --set model.lora.init_from=DIR

A PEFT LoRA directory (``peft.PeftModel.save_pretrained``) holds ``adapter_config.json``
(``peft_type: LORA``, ``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ...) and
``adapter_model.safetensors`` with tensors
``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` ``[r, in]`` and
``....lora_B.weight`` ``[out, r]`` (torch ``nn.Linear`` orientation). Ours are ``a`` =
``in_shape + (r,)`` and ``b`` = ``(r,) + out_shape`` (``x @ a @ b``), so a PEFT tensor is ours
transposed and reshaped; the flattening order of q/k/v's ``(heads, head_dim)`` and o's input is
the one ``lm.hf.params`` uses for the base weights. Supported: the families with Llama module
names (llama, mistral, qwen2, qwen3, gemma, arcee); GPT-2's fused ``c_attn`` is refused.
Only plain LoRA on the seven projections (no ``modules_to_save``, DoRA, bias or embedding
adapters): anything else is one ``ConfigError`` naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from lm import lora
from lm.sharding import ConfigError

PEFT_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}
MODULE_TO_TARGET = {v.split(".")[-1]: k for k, v in PEFT_NAMES.items()}
PREFIX = "base_model.model.model.layers."


def _check_family(cfg):
    from lm.hf import families
    family = families.choose_family(cfg)
    if family == "gpt2":
        raise ConfigError("PEFT adapters: GPT-2's fused c_attn/c_fc modules are not supported; "
                          "adapters export for llama, mistral, qwen2, qwen3, gemma and arcee")
    return family


def _tensor_names(i: int, t: str) -> tuple[str, str]:
    base = f"{PREFIX}{i}.{PEFT_NAMES[t]}"
    return base + ".lora_A.weight", base + ".lora_B.weight"


def save_adapter(cfg, params, out_dir: str, base: str = "") -> str:
    """Write the adapters of ``params`` (a ``model.lora`` model of ``cfg``) as a PEFT adapter
    directory; ``base``: ``base_model_name_or_path`` (the ``model.init_from`` dir). Atomic."""
    import jax
    from safetensors.numpy import save_file
    if not cfg.lora.on:
        raise ConfigError("--adapter: the run has no LoRA adapters (model.lora.rank=0)")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not empty; choose a new directory")
    _check_family(cfg)
    flat = lora._flat(jax.device_get(lora.adapters(params)))
    tensors, targets = {}, []
    for i in range(cfg.n_layers):
        for t in cfg.lora.targets:
            owner = ("attn",) if t in lora.ATTN_TARGETS else ("mlp",)
            key = (f"block_{i}",) + owner + (lora.PREFIX + t,)
            if key + ("a",) not in flat:
                continue  # a target this architecture lacks (gate of a plain MLP)
            a, b = (np.asarray(flat[key + (n,)], np.float32) for n in ("a", "b"))
            r = cfg.lora.rank
            na, nb = _tensor_names(i, t)
            tensors[na] = np.ascontiguousarray(a.reshape(-1, r).T)
            tensors[nb] = np.ascontiguousarray(b.reshape(r, -1).T)
            if PEFT_NAMES[t].split(".")[-1] not in targets:
                targets.append(PEFT_NAMES[t].split(".")[-1])
    lc = cfg.lora
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lc.rank,
            "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "use_rslora": lc.rslora,
            "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "base_model_name_or_path": base, "inference_mode": True, "init_lora_weights": True,
            "modules_to_save": None, "use_dora": False, "layers_to_transform": None,
            "rank_pattern": {}, "alpha_pattern": {}, "revision": None}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".peft-save-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(tmp, "adapter_config.json"), "w") as fh:
            json.dump(conf, fh, indent=2)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_config(adapter_dir: str) -> dict:
    path = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.exists(path):
        raise ConfigError(f"model.lora.init_from={adapter_dir}: no adapter_config.json there "
                          "(a PEFT LoRA adapter directory is expected)")
    with open(path) as fh:
        conf = json.load(fh)
    bad = []
    if conf.get("peft_type", "LORA") != "LORA":
        bad.append(f"peft_type={conf.get('peft_type')!r} (only LORA)")
    for key, ok in (("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False)):
        if conf.get(key, ok) != ok:
            bad.append(f"{key}={conf.get(key)!r} (only {ok!r})")
    for key in ("modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"):
        if conf.get(key):
            bad.append(f"{key}={conf.get(key)!r} (not supported)")
    if bad:
        raise ConfigError(f"model.lora.init_from={adapter_dir}: {'; '.join(bad)}")
    return conf


def adapter_targets(conf: dict, adapter_dir: str) -> tuple[str, ...]:
    mods = conf.get("target_modules") or []
    if isinstance(mods, str):
        raise ConfigError(f"model.lora.init_from={adapter_dir}: target_modules is a regex "
                          f"({mods!r}); give a list of module names")
    bad = [m for m in mods if m not in MODULE_TO_TARGET]
    if bad:
        raise ConfigError(f"model.lora.init_from={adapter_dir}: target_modules {bad} are not "
                          f"among {sorted(MODULE_TO_TARGET)}")
    return tuple(t for t in lora.TARGETS if PEFT_NAMES[t].split(".")[-1] in mods)


def adapter_lora_cfg(adapter_dir: str, base: lora.LoRACfg) -> lora.LoRACfg:
    """``base`` (the run's ``model.lora``) with the adapter's r, alpha, targets, dropout and
    rsLoRA flag."""
    import dataclasses
    conf = read_config(adapter_dir)
    return dataclasses.replace(
        base, rank=int(conf["r"]), alpha=float(conf["lora_alpha"]),
        targets=adapter_targets(conf, adapter_dir),
        dropout=float(conf.get("lora_dropout") or 0.0),
        rslora=bool(conf.get("use_rslora", False)), init_from=adapter_dir)


def load_into(cfg, params: dict, shardings: dict, adapter_dir: str) -> dict:
    """``params`` with its adapters replaced by the PEFT adapter's tensors (checked: every
    tensor present with the shape the model needs, none left over), placed on ``shardings``."""
    import jax
    from safetensors.numpy import load_file
    _check_family(cfg)
    conf = read_config(adapter_dir)
    if int(conf["r"]) != cfg.lora.rank or adapter_targets(conf, adapter_dir) != tuple(
            t for t in lora.TARGETS if t in cfg.lora.targets):
        raise ConfigError(f"model.lora.init_from={adapter_dir}: the adapter has r={conf['r']}, "
                          f"targets {conf.get('target_modules')}; the run has "
                          f"model.lora.rank={cfg.lora.rank}, targets "
                          f"{','.join(cfg.lora.targets)} (leave those keys unset to take the "
                          "adapter's)")
    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.exists(path):
        raise ConfigError(f"model.lora.init_from={adapter_dir}: no adapter_model.safetensors")
    tensors = load_file(path)
    flat = lora._flat(params)
    flat_sh = lora._flat(shardings)
    used, problems = set(), []
    for key in [k for k in flat if lora.is_adapter(k) and k[-1] == "a"]:
        i = int(key[0].split("_")[1])
        t = key[-2][len(lora.PREFIX):]
        na, nb = _tensor_names(i, t)
        for name, ours, to_ours in ((na, key, lambda x, s: x.T.reshape(s)),
                                    (nb, key[:-1] + ("b",), lambda x, s: x.T.reshape(s))):
            shape = tuple(flat[ours].shape)
            want = ((shape[-1], int(np.prod(shape[:-1]))) if ours[-1] == "a"
                    else (int(np.prod(shape[1:])), shape[0]))
            if name not in tensors:
                problems.append(f"missing {name}")
                continue
            if tuple(tensors[name].shape) != want:
                problems.append(f"{name} has shape {tuple(tensors[name].shape)}, the base "
                                f"model needs {want}")
                continue
            used.add(name)
            value = to_ours(np.asarray(tensors[name]), shape).astype(flat[ours].dtype)
            flat[ours] = jax.device_put(value, flat_sh[ours])
    extra = sorted(set(tensors) - used)
    if extra:
        problems.append(f"tensors the model has no place for: {extra[:3]}")
    if problems:
        raise ConfigError(f"model.lora.init_from={adapter_dir} does not match the base model: "
                          + "; ".join(problems[:4]))
    return lora._nest(flat)
