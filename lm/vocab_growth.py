"""Vocabulary growth of a GPT between curriculum stages, and a trainer that survives it.

Row initialisation (spec §2.6): a token created from the pair ``(prefix, r)`` gets copies of the
rows of ``r``, its right component: ``E[new] = E[r]`` (and ``W_out[:, new] = W_out[:, r]`` for an
untied unembedding). With tied embeddings the new token therefore starts with exactly the logit of
``r`` at every position. Truncation (scale-down) is LIFO: rows ``>= V`` are dropped, so truncating
right after a growth restores the params bit for bit.

Two ways to let the shapes change, both implemented, measured by
``benchmarks/bench_vocab_growth.py`` (tiny preset shapes, 5 stages, 1 CPU device):

- **recompile per stage** (``grow_params``/``truncate_params`` + a fresh ``StageTrainer``): the
  params have shape ``[V_k, D]``; each stage builds a new optimizer and train step, so XLA
  compiles once per stage (a few seconds on CPU for these models, ~6-30 stages a run), and every
  step pays only for the ``V_k`` logits it needs.
- **pre-allocated padded rows** (``pad_params``/``activate_rows`` + ``masked_xent``): the params
  have shape ``[V_max, D]`` from the start; the logits of ids ``>= n_active`` are set to ``-inf``
  so the softmax normalizer is exactly that of ``|V_k|``; ``n_active`` travels in the train
  state's ``loss_state`` so one compiled step serves every stage. It needs ``V_max`` in advance
  (the realized growth is random: a tuple adds up to len-1 ids) and pays the full ``V_max``
  unembedding at every step of every stage.

Measured (``benchmarks/bench_vocab_growth.py``, tiny-preset shapes, 5 stages x 150 steps,
V 64 -> 379, 2 shared CPU cores): recompile 200.8 s vs padded 70.4 s, ratio 2.85 -- **padded
is faster at this scale**, because a CPU compile (~10 s under load) costs more than a 150-step
stage's extra logits when V_max is only 379. The experiment module still uses recompile per stage
(written before the measurement; switching it is an open follow-up). At the paper's scale
(5000 steps a stage, V up to 18k) the padded variant would pay the full V_max unembedding at every
step, so the choice should be re-measured there; the FLOP accounting in the experiment assumes
recompiling (each stage pays for V_k only).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.losses import bind, xent_from_logits

EMBED, UNEMBED = "embed_VxD", "unembed_DxV"


def vocab_size_of(params) -> int:
    return int(params[EMBED].shape[0])


def grow_params(params, right_ids_N) -> dict:
    """Append one row per new token, copied from its right component's row (host arrays)."""
    right_ids_N = np.asarray(right_ids_N, np.int64)
    out = dict(params)
    emb_VxD = np.asarray(params[EMBED])
    out[EMBED] = np.concatenate([emb_VxD, emb_VxD[right_ids_N]], axis=0)
    if UNEMBED in params:
        un_DxV = np.asarray(params[UNEMBED])
        out[UNEMBED] = np.concatenate([un_DxV, un_DxV[:, right_ids_N]], axis=1)
    return out


def truncate_params(params, size: int) -> dict:
    """Keep the rows (and unembedding columns) of ids ``< size``."""
    out = dict(params)
    out[EMBED] = np.asarray(params[EMBED])[:size]
    if UNEMBED in params:
        out[UNEMBED] = np.asarray(params[UNEMBED])[:, :size]
    return out


def pad_params(params, v_max: int) -> dict:
    """Padded variant: zero rows up to ``v_max`` (inactive until ``activate_rows``)."""
    V = vocab_size_of(params)
    out = dict(params)
    out[EMBED] = np.pad(np.asarray(params[EMBED]), ((0, v_max - V), (0, 0)))
    if UNEMBED in params:
        out[UNEMBED] = np.pad(np.asarray(params[UNEMBED]), ((0, 0), (0, v_max - V)))
    return out


def activate_rows(params, n_active: int, right_ids_N) -> dict:
    """Padded variant of ``grow_params``: write the new rows at ``n_active, n_active+1, ...``."""
    right_ids_N = np.asarray(right_ids_N, np.int64)
    new_N = n_active + np.arange(len(right_ids_N))
    out = dict(params)
    emb = np.array(params[EMBED])
    emb[new_N] = emb[right_ids_N]
    out[EMBED] = emb
    if UNEMBED in params:
        un = np.array(params[UNEMBED])
        un[:, new_N] = un[:, right_ids_N]
        out[UNEMBED] = un
    return out


def masked_logits(logits_BxLxV, n_active):
    """``-inf`` at ids ``>= n_active`` so the softmax runs over the active vocabulary only."""
    active_V = jnp.arange(logits_BxLxV.shape[-1]) < n_active
    return jnp.where(active_V[None, None, :], logits_BxLxV, -jnp.inf)


def masked_xent(params, batch, *, model, rng, cfg):
    """Next-token xent over the first ``batch["loss_state"]["n_active"]`` ids (padded variant)."""
    ls = batch["loss_state"]
    logits_BxLxV = masked_logits(bind(model, params)(batch["inputs"], rng=rng), ls["n_active"])
    mask_BxL = batch.get("mask", jnp.ones(batch["targets"].shape, jnp.float32))
    loss, aux = xent_from_logits(logits_BxLxV, batch["targets"], mask_BxL, cfg.train.z_loss)
    aux["loss_state"] = ls
    return loss, aux


def make_nll_fn(model, n_active: int | None = None):
    """Jitted ``nll(params, inputs_BxL, targets_BxL) -> nll_BxL`` (eval mode, fp32)."""
    graphdef = nnx.graphdef(model) if isinstance(model, nnx.Module) else model

    @jax.jit
    def nll(params, inputs_BxL, targets_BxL):
        logits = bind(graphdef, params)(inputs_BxL).astype(jnp.float32)
        if n_active is not None:
            logits = masked_logits(logits, n_active)
        lse_BxL = jax.nn.logsumexp(logits, axis=-1)
        tgt_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
        return lse_BxL - tgt_BxL
    return nll


@dataclasses.dataclass
class StageTrainer:
    """One stage of training on a fixed vocabulary: sharded params, fresh optimizer, jitted step.

    Built from host params (or ``None`` for a fresh init) so a grown model continues training
    with a new optimizer and LR schedule, as the paper does at every stage."""

    cfg: object  # experiments.config.Config with model.vocab_size = this stage's V
    mesh: object
    graphdef: object
    state: dict
    train_step: object
    nll: object

    @classmethod
    def create(cls, cfg, mesh, params=None, *, total_steps: int, loss_fn=None,
               loss_state=None, n_active=None):
        from lm import sharding as sh
        from lm.losses import xent
        from lm.model import GPT
        from lm.optim import make_optimizer
        from lm.train import init_state, make_train_step, state_shardings

        seed = cfg.train.seed
        graphdef, fresh, p_shard = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(seed)),
                                                  mesh)
        if params is not None:
            dt = cfg.model.param_dtype_
            params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, dt), s), params,
                                  p_shard)
        else:
            params = fresh
        tx, lr_fn = make_optimizer(cfg.opt, params, total_steps)
        shapes = jax.eval_shape(lambda p: init_state(p, tx, seed, loss_state), params)
        s_shard = state_shardings(shapes, p_shard, mesh)
        state = jax.jit(lambda p: init_state(p, tx, seed, loss_state), out_shardings=s_shard)(
            params)
        step = make_train_step(loss_fn or xent, tx, model=graphdef, cfg=cfg, mesh=mesh,
                               state_sharding=s_shard, microbatches=cfg.train.microbatches,
                               lr_fn=lr_fn)
        return cls(cfg, mesh, graphdef, state, step, make_nll_fn(graphdef, n_active))

    def host_params(self) -> dict:
        return jax.device_get(self.state["params"])

