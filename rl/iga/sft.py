"""Supervised fine-tuning of the local student on completion-only loss, with the codebase's step.

``SFTTrainer`` builds the GPT graph, optimizer and jitted ``lm.train.make_train_step(xent)``
once; ``fit(params, examples, steps, seed)`` then starts a *fresh* optimizer state from any
params (base weights each SAIL iteration, or the last student with ``continue_training``), so
every fine-tune reuses the compiled step (one program per 16-token width bucket: each batch is cut
to its longest row, which matters on a 2-core CPU). Examples are ``(prompt_text, answer_text)``;
the loss mask covers the answer tokens and ``<eos>`` only (the official completion-only collator).
``packing="document"`` packs several examples per row (``lm.packing.pack_examples``: segment ids
and per-example positions, attention never crosses examples) instead of one padded example per
row (``"none"``, the default); a step then holds as many examples as fit in ``batch_size`` rows.

[INFERRED, spec §4.4] full fine-tuning of the tiny model (the official LoRA r=8/alpha=32 on an 8B
model is not reproduced); fixed optimizer steps per fit with shuffled epochs over the data, so
"equal optimizer steps" comparisons are exact.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm import lora, pretrained
from lm import sharding as sh
from lm.config import Config
from lm.losses import xent
from lm.model import GPT
from lm.optim import make_optimizer
from lm.packing import pack_examples
from lm.setup import pretrained_params
from lm.train import init_state, make_train_step, state_shardings

_LOSS_CFG = types.SimpleNamespace(train=types.SimpleNamespace(z_loss=0.0))


def encode_pair(tok, prompt: str, answer: str, add_bos: bool = True):
    """``(prompt_ids, answer_ids)``: ``[<bos>] prompt`` and ``answer <eos>``."""
    return tok.encode(prompt, add_bos=add_bos), tok.encode(answer, add_eos=True)


def encode_examples(tok, examples, seq_len: int, add_bos: bool = True) -> dict[str, np.ndarray]:
    """``inputs/targets/mask`` [N, seq_len]: ``<bos> prompt answer <eos>`` right-padded (no
    ``<bos>`` with ``add_bos=False``: a chat template's render writes its own), mask 1 on the
    targets that are answer tokens or the final ``<eos>``."""
    n = len(examples)
    seq = np.full((n, seq_len + 1), tok.pad_id, np.int32)
    mask = np.zeros((n, seq_len), np.float32)
    for i, (prompt, answer) in enumerate(examples):
        p, a = encode_pair(tok, prompt, answer, add_bos)
        if len(p) + len(a) > seq_len + 1:
            raise ValueError(f"example {i} has {len(p) + len(a)} tokens > seq_len+1="
                             f"{seq_len + 1}: {prompt!r} -> {answer!r}")
        seq[i, : len(p)] = p
        seq[i, len(p): len(p) + len(a)] = a
        mask[i, len(p) - 1: len(p) + len(a) - 1] = 1.0
    return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "mask": mask}


def example_rows(data: dict, idx, lengths_N: np.ndarray) -> list[tuple]:
    """Unpadded ``(inputs, targets, mask)`` of encoded examples ``idx`` (for ``pack_examples``)."""
    return [(data["inputs"][i, :lengths_N[i]], data["targets"][i, :lengths_N[i]],
             data["mask"][i, :lengths_N[i]]) for i in idx]


def next_fit(order, pos: int, lengths_N, rows: int, width: int):
    """Indices from ``order[pos:]`` (wrapping) that next-fit into ``rows`` rows of ``width``."""
    take, n_rows, used = [], 0, width + 1
    while True:
        n = int(lengths_N[order[pos % len(order)]])
        if used + n > width:
            if n_rows == rows:
                return take
            n_rows, used = n_rows + 1, 0
        take.append(int(order[pos % len(order)]))
        used, pos = used + n, pos + 1


def bucket(n: int, cap: int) -> int:
    """Smallest multiple of 16 >= ``n`` (at most ``cap``): a few compiled shapes, short rows."""
    return min(cap, -(-max(n, 1) // 16) * 16)


class SFTTrainer:
    """One compiled train step for the student; ``fit`` any params on any examples.

    With ``model_cfg.init_from`` the architecture is the checkpoint's (``lm.pretrained.resolve``)
    and ``init_params`` gives its weights. ``add_bos``: whether prompts get the tokenizer's BOS
    (the student's ``ChatFormat.add_bos``, so SFT pairs are framed as sampled prompts are)."""

    def __init__(self, model_cfg, opt_cfg, tok, *, batch_size: int, seq_len: int,
                 total_steps: int = 1000, mesh=None, seed: int = 0, packing: str = "none",
                 add_bos: bool = True):
        if packing not in ("none", "document"):
            raise ValueError(f"packing={packing!r} is not one of ['none', 'document']")
        self.tok, self.B, self.L, self.packing = tok, batch_size, seq_len, packing
        self.add_bos = add_bos
        self.model_cfg = (pretrained.resolve(Config(model=model_cfg)).model
                          if model_cfg.init_from else model_cfg)
        self.mesh = mesh or sh.make_mesh(sh.MeshCfg(data=-1))
        n_data = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if batch_size % n_data:
            raise ValueError(f"batch_size={batch_size} must divide by the data axes ({n_data})")
        # abstract: nothing is materialised here (init_params gives the weights)
        self.graphdef, p_shapes, self.p_shard = sh.abstract_params(self._model_fn(seed),
                                                                   self.mesh)
        # model.lora: the optimizer covers the adapters only (lm.lora)
        trainable, m = lora.trainable_fn(self.model_cfg), self.model_cfg
        tx, lr_fn = make_optimizer(opt_cfg, lora.trainable_subset(p_shapes, m), total_steps)
        shapes = jax.eval_shape(lambda p: init_state(p, tx, seed, None, trainable), p_shapes)
        s_shard = state_shardings(shapes, self.p_shard, self.mesh,
                                  None if trainable is None else
                                  lora.trainable_subset(self.p_shard, m))
        self._state = jax.jit(lambda p, s: init_state(jax.tree.map(lambda x: x + 0.0, p), tx, s,
                                                      None, trainable),
                              static_argnums=1, out_shardings=s_shard)
        self.step = make_train_step(xent, tx, model=self.graphdef, cfg=_LOSS_CFG, mesh=self.mesh,
                                    state_sharding=s_shard, lr_fn=lr_fn, trainable=trainable)

    def _model_fn(self, seed: int):
        return lambda: GPT(self.model_cfg, rngs=nnx.Rngs(seed))

    def init_params(self, seed: int):
        """Fresh random weights (a new base model per seed). With ``model.init_from``: the
        checkpoint's weights read straight onto the trainer's shardings (``lm.setup.
        pretrained_params``), the same for every seed, so seeds then vary only the data order
        and sampling (and a fresh DLR router, if one is configured)."""
        if self.model_cfg.init_from or self.model_cfg.lora.init_from:
            return pretrained_params(self.model_cfg, self._model_fn(seed), self.mesh)[1]
        return sh.init_params(self._model_fn(seed), self.mesh)[1]

    def fit(self, params, examples, steps: int, seed: int = 0) -> tuple[dict, list[float]]:
        """``steps`` optimizer steps from ``params`` (fresh optimizer state) over shuffled epochs
        of ``examples``. Returns the new params and the per-step losses."""
        if not examples:
            raise ValueError("fit got no examples")
        if steps == 0:  # nothing to train (a checkpoint used as it is): no encoding either
            return params, []
        data = encode_examples(self.tok, examples, self.L, self.add_bos)
        lengths = (data["inputs"] != self.tok.pad_id).sum(1)
        rng = np.random.default_rng(seed)
        order, pos = rng.permutation(len(examples)), 0
        state = self._state(params, seed)
        metrics = []
        for _ in range(steps):
            if self.packing == "document":
                take = next_fit(order, pos, lengths, self.B, self.L)
                pos += len(take)
                if pos >= len(order):  # epoch end: reshuffle (a wrapped step took the old start)
                    order, pos = rng.permutation(len(examples)), 0
                state, m = self.step(state, self._packed_batch(data, lengths, take))
                metrics.append(m["loss"])
                continue
            idx = []
            while len(idx) < self.B:
                take = order[pos: pos + self.B - len(idx)]
                idx += take.tolist()
                pos += len(take)
                if pos >= len(order):
                    order, pos = rng.permutation(len(examples)), 0
            width = bucket(int(lengths[idx].max()), self.L)
            batch = sh.shard_batch({k: v[idx, :width] for k, v in data.items()}, self.mesh)
            state, m = self.step(state, batch)
            metrics.append(m["loss"])
        losses = [float(s) / max(float(c), 1e-9) for s, c in jax.device_get(metrics)]
        return state["params"], losses

    def _packed_batch(self, data, lengths, take):
        out = pack_examples(example_rows(data, take, lengths), self.L, self.tok.pad_id)
        n_pad = self.B - len(out["inputs"])
        out = {k: np.concatenate([v, np.full((n_pad, self.L), self.tok.pad_id if k in (
            "inputs", "targets") else 0, v.dtype)]) for k, v in out.items()}
        width = bucket(int((out["segment_ids"] > 0).sum(1).max()), self.L)
        return sh.shard_batch({k: v[:, :width] for k, v in out.items()}, self.mesh)

    def mean_loss(self, params, examples) -> float:
        data = encode_examples(self.tok, examples, self.L, self.add_bos)
        _, aux = xent(params, {k: jnp.asarray(v) for k, v in data.items()},
                      model=self.graphdef, rng=None, cfg=_LOSS_CFG)
        return float(aux["loss"][0] / aux["loss"][1])
