"""Config -> training state: the builder every loop in the library and every experiment uses.

    setup = build(cfg)            # mesh, graphdef, sharded train state, optimizer, jitted steps

``build`` goes mesh -> abstract sharded init (``lm.sharding.init_params``) -> optimizer -> train
state with its shardings -> jitted train and eval steps for the configured loss. ``validate`` holds
the config checks that need the device count (one ``ConfigError``, never a traceback from inside
JAX). ``sample_text`` continues a prompt with the run's byte tokenizer (end-of-run samples).
The runner (``experiments.base.train``), ``rl.loop`` and ``lm.probe`` import from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lm import pretrained
from lm.config import Config
from lm.sharding import ConfigError


def validate(cfg: Config, n_devices: int):
    """Config checks that need the device count; raises ConfigError."""
    from lm import data as data_lib
    from lm.losses import get_loss
    d, f, t = cfg.mesh.shape(n_devices)
    dp, tr = d * f, cfg.train
    if tr.batch_size % tr.microbatches:
        raise ConfigError(f"train.batch_size={tr.batch_size} is not divisible by "
                          f"train.microbatches={tr.microbatches}")
    if (tr.batch_size // tr.microbatches) % dp:
        raise ConfigError(f"train.batch_size={tr.batch_size} (per microbatch "
                          f"{tr.batch_size // tr.microbatches}) is not divisible by the data axes "
                          f"data*fsdp={dp}; use a multiple of {dp * tr.microbatches}")
    if tr.seq_len > cfg.model.max_len:
        raise ConfigError(f"train.seq_len={tr.seq_len} exceeds the model context "
                          f"model.max_len={cfg.model.max_len}; allowed: 1..{cfg.model.max_len}")
    if tr.seq_len < 1 or tr.steps < 1 or tr.batch_size < 1:
        raise ConfigError("train.seq_len, train.steps and train.batch_size must be >= 1")
    if cfg.opt.warmup > tr.steps:
        raise ConfigError(f"opt.warmup={cfg.opt.warmup} exceeds train.steps={tr.steps}: the "
                          f"learning rate would never reach opt.lr; allowed: 0..{tr.steps}")
    get_loss(tr.loss)
    data_lib.validate(cfg.data)
    if getattr(cfg.data, "tokenizer", ""):  # byte data: checked as it always was (not at all)
        n = data_lib.vocab_size(cfg.data)
        if n > cfg.model.vocab_size:
            raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} has {n} ids but the model has "
                              f"model.vocab_size={cfg.model.vocab_size}; use a model (or "
                              f"model.init_from checkpoint) with model.vocab_size >= {n}")


@dataclasses.dataclass
class Setup:
    """Everything a loop needs, built once from a config (also handy in notebooks)."""

    cfg: Config
    mesh: object
    graphdef: object
    state: dict
    state_sharding: dict
    tx: object
    lr_fn: Callable
    train_step: Callable
    eval_step: Callable


def build(cfg: Config, mesh=None, loss_fn=None, loss_state=None) -> Setup:
    """With ``model.lora`` on (``lm.lora``) the state's params are the whole tree (frozen base +
    adapters) but the optimizer state covers the trainable leaves only, and a
    ``loss_state["ref_params"]`` copy is dropped: the train step hands the losses the base with
    adapters switched off as their reference (no second copy of the weights)."""
    import jax
    from flax import nnx

    from lm import lora
    from lm import sharding as sh
    from lm.losses import get_loss
    from lm.model import GPT
    from lm.optim import make_optimizer
    from lm.train import init_state, make_eval_step, make_train_step, state_shardings

    cfg = pretrained.resolve(cfg)  # model.init_from: the architecture is the checkpoint's
    mesh = mesh or sh.make_mesh(cfg.mesh)
    loss_fn = loss_fn or get_loss(cfg.train.loss)
    if loss_state is None and hasattr(loss_fn, "init_state"):  # stateful losses (lm.ib)
        loss_state = loss_fn.init_state(cfg)
    trainable = lora.trainable_fn(cfg.model)
    if trainable is not None and loss_state and "ref_params" in loss_state:
        loss_state = {k: v for k, v in loss_state.items() if k != "ref_params"}
    seed = cfg.train.seed
    model_fn = lambda: GPT(cfg.model, rngs=nnx.Rngs(seed))  # noqa: E731
    if cfg.model.init_from or cfg.model.lora.init_from:
        graphdef, params, p_shard = pretrained_params(cfg.model, model_fn, mesh)
    else:
        graphdef, params, p_shard = sh.init_params(model_fn, mesh)
    opt_params, opt_shard = params, None
    if trainable is not None:
        opt_params = lora.partition(params, trainable)[0]
        opt_shard = lora.partition(p_shard, trainable)[0]
    tx, lr_fn = make_optimizer(cfg.opt, opt_params, cfg.train.steps)
    init = lambda p: init_state(p, tx, seed, loss_state, trainable)  # noqa: E731
    shapes = jax.eval_shape(init, params)
    s_shard = state_shardings(shapes, p_shard, mesh, opt_shard)
    state = jax.jit(init, out_shardings=s_shard)(params)
    step = make_train_step(loss_fn, tx, model=graphdef, cfg=cfg, mesh=mesh,
                           state_sharding=s_shard, microbatches=cfg.train.microbatches,
                           lr_fn=lr_fn, trainable=trainable)
    eval_step = make_eval_step(loss_fn, model=graphdef, cfg=cfg, mesh=mesh, trainable=trainable)
    return Setup(cfg, mesh, graphdef, state, s_shard, tx, lr_fn, step, eval_step)


def pretrained_params(model, model_fn, mesh):
    """(graphdef, params, shardings) with the params read from ``model.init_from`` straight
    onto their shardings; params the checkpoint lacks (a fresh DLR router, LoRA adapters) are
    initialised, and ``model.lora.init_from`` (a PEFT adapter dir) fills the adapters.
    ``model`` must be resolved (``pretrained.resolve``); ``build`` and ``rl.iga.sft`` use it."""
    from lm import lora
    from lm import sharding as sh

    graphdef, shapes, p_shard = sh.abstract_params(model_fn, mesh)
    not_adapter = lambda p: not lora.is_adapter(p)  # noqa: E731
    base_shapes, base_shard = (lora.partition(t, not_adapter)[0] for t in (shapes, p_shard))
    if model.init_from and model.lora.base_dtype:  # QLoRA: load float, quantize on device
        params = _load_quantized(model, mesh, base_shard)
    elif model.init_from:
        params = pretrained.load_params(model, mesh, base_shapes, base_shard)
    else:
        params = {}
    flat_have = lora._flat(params)
    missing = sorted(p for p in lora._flat(shapes) if p not in flat_have)
    if missing:
        if model.init_from and any(p[0] != "dlr" and not lora.is_adapter(p) for p in missing):
            raise ConfigError(f"model.init_from={model.init_from} lacks the parameters "
                              f"{sorted({p[0] for p in missing})}; only a DLR router "
                              "(model.dlr) and LoRA adapters (model.lora) may start fresh")
        params = lora.combine(params, sh.init_subset(model_fn, mesh, set(missing)))
    if model.lora.init_from:
        from lm.hf import peft
        params = peft.load_into(model, params, p_shard, model.lora.init_from)
    return graphdef, params, p_shard


def _load_quantized(model, mesh, q_shard):
    """The checkpoint's base read in float on its float shardings, then quantized on device
    (``lm.quant``) onto ``q_shard`` (the float copy is donated)."""
    import jax
    from flax import nnx

    from lm import lora, quant
    from lm import sharding as sh
    from lm.model import GPT
    fcfg = dataclasses.replace(model, lora=lora.LoRACfg())
    _, f_shapes, f_shard = sh.abstract_params(lambda: GPT(fcfg, rngs=nnx.Rngs(0)), mesh)
    floats = pretrained.load_params(fcfg, mesh, f_shapes, f_shard)
    kind = model.lora.base_dtype
    q_shard = {k: v for k, v in q_shard.items() if k in floats}
    return jax.jit(lambda p: quant.quantize_params(p, kind), out_shardings=q_shard,
                   donate_argnums=0)(floats)


def sample_text(setup: Setup, params, prompt: str, n_tokens: int, seed: int = 0) -> str:
    """Greedy-free (temperature 0.8, top-k 40) continuation of ``prompt`` with the KV cache."""
    import jax
    import numpy as np

    from lm.sample import SampleCfg, generate
    from tokenization.bytes import ByteTokenizer

    tok = pretrained.run_tokenizer(setup.cfg.model, ByteTokenizer())
    ids = pretrained.prompt_ids(tok, prompt)
    max_len = setup.cfg.model.max_len
    n_tokens = min(n_tokens, max_len - len(ids))
    if n_tokens <= 0:
        return prompt
    out = generate(setup.graphdef, jax.device_get(params), ids[None].astype(np.int32),
                   np.array([len(ids)], np.int32),
                   SampleCfg(max_new_tokens=n_tokens, temperature=0.8, top_k=40,
                             eos_id=None), jax.random.key(seed))
    new = np.asarray(out["tokens_BxT"][0])[: int(out["lengths_B"][0])]
    return prompt + tok.decode(new)
