"""Start any run from a pretrained model: ``--set model.init_from=DIR``.

``DIR`` is either a Hugging Face checkpoint directory (``config.json`` + safetensors, read by
``lm.hf``) or a run directory of this codebase (``config.json`` + ``checkpoints/``: its latest
checkpoint's params). What that means for the config:

- The **architecture** comes from the checkpoint: every ``ModelCfg`` field except the runtime ones
  below is replaced by the checkpoint's value (``resolve``). A ``--set model.<key>=...`` that
  contradicts the checkpoint is refused with one error naming the keys (``conflicts``).
- The **runtime** fields stay the run's own: ``dtype`` (compute), ``param_dtype`` (the stored
  weights are cast to it: a bf16 checkpoint trains with fp32 master weights under a preset whose
  ``param_dtype`` is float32; set ``model.param_dtype=bfloat16`` to keep bf16), ``dropout``,
  ``remat``, ``attention``, ``dlr`` (a DLR router is initialised fresh on top of the loaded base,
  as the DLR papers do), ``lora`` (adapters start fresh, or from ``model.lora.init_from``)
  and, with rotary positions, ``max_len`` (the KV-cache bound; learned position tables are
  architecture).

- The **data tokenizer** (``data.tokenizer``, when the config has a ``data`` section with that
  field): left empty (bytes), it becomes the checkpoint's directory when that holds a
  ``tokenizer.json`` (for a run directory: the tokenizer that run trained on), so continued
  pretraining (``experiments.lm_pretrain``, ``experiments.gapt_lm``: xent, IBLM, GAPT unchanged)
  reads its documents in the checkpoint's tokens (``lm.data_tokenizer``). A different tokenizer
  is allowed only when given explicitly (``--set data.tokenizer=DIR`` beside
  ``model.init_from``, or in a config passed to ``lm.setup.build`` directly); one inherited
  from a preset is refused. ``data.source=bin`` shards are pre-tokenized and keep bytes' "".

``lm.setup.build`` calls ``resolve`` and ``load_params``, so every experiment and loss that builds
its state from a config starts from the checkpoint (the RL experiments use it as policy and
reference). ``tokenizer_for`` gives the checkpoint's tokenizer (``tokenization.hf``) with the
``encode``/``decode``/``eos_id``/``pad_id`` interface of ``tokenization.bytes.ByteTokenizer``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from lm.model import ModelCfg
from lm.sharding import ConfigError

RUNTIME = ("init_from", "dtype", "param_dtype", "dropout", "remat", "attention", "dlr", "lora",
           "moe_impl", "moe_aux_coef", "moe_router_z_coef")  # MoE training knobs, not shape


def source_kind(path: str) -> str:
    """``"hf"`` for a Hugging Face checkpoint dir, ``"run"`` for a run dir of this codebase."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.exists(cfg_path):
        raise ConfigError(f"model.init_from={path!r}: no config.json there; expected a Hugging "
                          "Face checkpoint directory (config.json + *.safetensors) or a run "
                          "directory of this codebase (config.json + checkpoints/)")
    with open(cfg_path) as fh:
        raw = json.load(fh)
    if isinstance(raw.get("model"), dict) and os.path.isdir(os.path.join(path, "checkpoints")):
        return "run"
    if "model_type" in raw or "architectures" in raw:
        return "hf"
    raise ConfigError(f"model.init_from={path!r}: config.json is neither a Hugging Face model "
                      "config (no model_type) nor a run config with a checkpoints/ folder")


def checkpoint_model_cfg(path: str) -> ModelCfg:
    """The checkpoint's model config, read without touching its tensors."""
    if source_kind(path) == "hf":
        from lm.hf.checkpoint import read_config
        from lm.hf.families import to_model_cfg
        return to_model_cfg(read_config(path))
    from lm.probe import load_run_config
    run = load_run_config(path)
    if run.model.init_from:  # a run that started from a checkpoint has that architecture
        run = resolve(run)
    return dataclasses.replace(run.model, init_from="")


def _runtime(cfg: ModelCfg) -> tuple[str, ...]:
    return RUNTIME + (("max_len",) if cfg.pos == "rope" else ())


def conflicts(model: ModelCfg, ckpt: ModelCfg, set_keys) -> list[str]:
    """``model.<key>=value`` overrides in ``set_keys`` that contradict the checkpoint."""
    out = []
    for key in set_keys:
        name = key.split(".", 2)[1] if key.startswith("model.") else None
        if name is None or name in _runtime(ckpt) or not hasattr(ckpt, name):
            continue
        if getattr(model, name) != getattr(ckpt, name):
            out.append(f"model.{name}={getattr(model, name)!r} (checkpoint: "
                       f"{getattr(ckpt, name)!r})")
    return out


def resolve(cfg, set_keys=()):
    """``cfg`` with the model architecture taken from ``cfg.model.init_from`` (idempotent).

    ``set_keys``: the ``--set`` keys the user gave; an architecture key among them that differs
    from the checkpoint raises ``ConfigError`` naming every such key."""
    m = cfg.model
    if m.lora.init_from:
        cfg = dataclasses.replace(cfg, model=_resolve_lora(m, set_keys))
        m = cfg.model
    if not m.init_from:
        return cfg
    ckpt = checkpoint_model_cfg(m.init_from)
    bad = conflicts(m, ckpt, set_keys)
    if bad:
        raise ConfigError(f"model.init_from={m.init_from} fixes the architecture; these "
                          f"overrides contradict the checkpoint: {', '.join(bad)}. Drop them "
                          f"(runtime keys you may set: {', '.join(_runtime(ckpt))})")
    keep = {f: getattr(m, f) for f in _runtime(ckpt) if hasattr(m, f)}
    if ckpt.pos == "rope" and "model.max_len" not in set_keys:
        keep["max_len"] = m.max_len
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(ckpt, **keep))
    return _resolve_data_tokenizer(cfg, set_keys)


LORA_FROM_ADAPTER = ("rank", "alpha", "targets", "dropout", "rslora")


def _resolve_lora(m: ModelCfg, set_keys) -> ModelCfg:
    """``model.lora`` with the adapter's r/alpha/targets/dropout/rsLoRA when
    ``model.lora.init_from`` names a PEFT adapter dir (idempotent); a ``--set`` of one of those
    keys that differs from the adapter is refused, as is an adapter without a base."""
    from lm.hf import peft
    if not m.init_from:
        raise ConfigError(f"model.lora.init_from={m.lora.init_from} needs model.init_from=<the "
                          "adapter's base checkpoint dir>")
    want = peft.adapter_lora_cfg(m.lora.init_from, m.lora)
    bad = [f"model.lora.{k}={getattr(m.lora, k)!r} (adapter: {getattr(want, k)!r})"
           for k in LORA_FROM_ADAPTER if f"model.lora.{k}" in set_keys
           and getattr(m.lora, k) != getattr(want, k)]
    if bad:
        raise ConfigError(f"model.lora.init_from={m.lora.init_from} fixes the adapter's shape; "
                          f"these overrides contradict it: {', '.join(bad)}")
    return dataclasses.replace(m, lora=want)


def tokenizer_dir(path: str) -> str:
    """The directory of the tokenizer a checkpoint was trained in ("" = bytes / none known): an
    HF dir with a ``tokenizer.json`` itself; a run dir its ``data.tokenizer``, else its own
    ``model.init_from``'s."""
    if source_kind(path) == "hf":
        return path if os.path.exists(os.path.join(path, "tokenizer.json")) else ""
    from lm.probe import load_run_config
    run = load_run_config(path)
    tok = getattr(getattr(run, "data", None), "tokenizer", "")
    return tok or (tokenizer_dir(run.model.init_from) if run.model.init_from else "")


def _resolve_data_tokenizer(cfg, set_keys):
    data = getattr(cfg, "data", None)
    if not dataclasses.is_dataclass(data) or not hasattr(data, "tokenizer"):
        return cfg
    if getattr(data, "source", None) == "bin":  # pre-tokenized shards
        return cfg
    ckpt_tok = tokenizer_dir(cfg.model.init_from)
    if not data.tokenizer:
        if not ckpt_tok:
            return cfg
        return dataclasses.replace(cfg, data=dataclasses.replace(data, tokenizer=ckpt_tok))
    same = ckpt_tok and os.path.realpath(ckpt_tok) == os.path.realpath(data.tokenizer)
    if not same and "model.init_from" in set_keys and "data.tokenizer" not in set_keys:
        raise ConfigError(f"data.tokenizer={data.tokenizer!r} (from the preset) differs from the "
                          f"tokenizer of model.init_from={cfg.model.init_from} "
                          f"({ckpt_tok or 'none: byte-level'}); set --set data.tokenizer=... "
                          "explicitly to train the checkpoint on other ids, or leave it empty to "
                          "use the checkpoint's")
    return cfg


def load_params(model: ModelCfg, mesh, like_shapes, shardings):
    """The checkpoint's params cast to ``model.param_dtype`` and placed on ``shardings`` (a pure
    dict like ``like_shapes``). Params the checkpoint lacks (a fresh DLR router) must be supplied
    by the caller: they are returned as missing keys of the dict."""
    import jax

    path = model.init_from
    if source_kind(path) == "hf":
        from lm import hf
        _, params = hf.load(path, mesh=mesh, dtype=model.param_dtype, max_len=model.max_len)
    else:
        from lm.probe import load_run_config, restore_params
        run_cfg = load_run_config(path)  # its own init_from is spent: restore, don't reload
        if not run_cfg.model.lora.on:  # (a LoRA run's checkpoints hold adapters: its base
            run_cfg = dataclasses.replace(run_cfg, model=dataclasses.replace(  # is reloaded)
                run_cfg.model, init_from=""))
        setup, params, _ = restore_params(path, run_cfg)
        if run_cfg.model.lora.on:  # the run's function: its adapters merged into its base
            from lm import lora
            params = lora.merged(params, setup.cfg.model)
    want = {k: v for k, v in like_shapes.items() if k in params}
    got = {k: params[k] for k in want}
    bad = [f"{'/'.join(map(str, p))}: checkpoint {a.shape}, model {b.shape}"
           for p, a, b in _leaves_with_path(got, want) if a.shape != b.shape]
    if bad:
        raise ConfigError(f"model.init_from={path}: shapes differ from the model: "
                          f"{'; '.join(bad[:4])}")
    dt = model.param_dtype_
    cast = lambda x: x if x.dtype == dt else x.astype(dt)  # noqa: E731
    return jax.tree.map(lambda x, s: jax.device_put(cast(x), s), got,
                        {k: shardings[k] for k in got})


def _leaves_with_path(a, b):
    import jax
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    return [(tuple(getattr(k, "key", k) for k in p), x, y) for (p, x), y in zip(flat_a, flat_b)]


class CheckpointTokenizer:
    """A checkpoint's ``HFTokenizer`` behind ``ByteTokenizer``'s interface (what the experiments
    call): ``encode(text, add_bos=False, add_eos=False)``, ``decode(ids)`` without specials,
    ``eos_id``, ``eos_ids``, ``pad_id`` (the pad token, else the eos), ``vocab_size``."""

    def __init__(self, tok):
        from lm.data_tokenizer import special_ids  # the data pipeline's eos/pad, same rule
        self.hf = tok
        self.eos_id, self.pad_id = special_ids(tok)
        self.eos_ids = tuple(sorted(tok.eos_ids | {self.eos_id}))
        self.bos_id = tok.bos_id
        self.vocab_size = tok.vocab_size
        first = tok.encode("a", add_special_tokens=True)
        self.prompt_bos = bool(len(first)) and self.bos_id is not None and first[0] == self.bos_id

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False):
        import numpy as np
        ids = [int(i) for i in self.hf.encode(text, add_special_tokens=False)]
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return np.asarray(ids + ([self.eos_id] if add_eos else []), np.int32)

    def decode(self, ids) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)


def tokenizer_for(model: ModelCfg):
    """The tokenizer a run of ``model`` should use: the one its checkpoint was trained in
    (``tokenizer_dir``, the same rule that picks the data tokenizer) as a
    ``CheckpointTokenizer``, else None (the experiment's own)."""
    path = model.init_from and tokenizer_dir(model.init_from)
    if not path:
        return None
    from tokenization.hf import HFTokenizer
    return CheckpointTokenizer(HFTokenizer.load(path))


def run_tokenizer(model: ModelCfg, default):
    """The checkpoint's tokenizer when ``model.init_from`` has one, else ``default`` (the
    experiment's own), refused when its ids do not fit the model's vocabulary."""
    tok = tokenizer_for(model)
    if tok is not None:
        return tok
    if default.vocab_size > model.vocab_size:
        raise ConfigError(f"the experiment's tokenizer has {default.vocab_size} ids but the model "
                          f"has model.vocab_size={model.vocab_size}; a checkpoint loaded with "
                          "model.init_from needs its tokenizer.json beside config.json")
    return default


def prompt_ids(tok, text: str):
    """Prompt ids as the checkpoint's tokenizer frames them (its BOS when its post-processor
    prepends one, as transformers' ``encode`` does); the byte tokenizer adds nothing."""
    return tok.encode(text, add_bos=getattr(tok, "prompt_bos", False))
