"""Losses as pure functions, and the registry the train step picks them from.

Contract (every loss in this codebase):

    loss, aux = loss_fn(params, batch, *, model, rng, cfg)

- ``params``: pure dict of arrays; ``model``: the ``nnx.GraphDef`` (``bind(model, params)``
  rebuilds the module inside the trace); ``rng``: a PRNG key or None;
  ``cfg``: the experiment config.
- ``aux`` maps metric names to ``(sum, count)`` pairs so microbatch accumulation and cross-device
  means stay exact. If ``aux["loss"] = (s, c)`` then ``loss == s / c`` and the train step weights
  each microbatch's gradient by ``c`` (the full-batch token mean, exactly).
- A stateful loss (GAPT) reads ``batch["loss_state"]`` and returns the new state as
  ``aux["loss_state"]`` (not a pair); the train step keeps it in the train state.

Variants are other functions or ``functools.partial``s; no config branching inside a loss.
Batches for LM losses: ``inputs`` [B, L] int32, ``targets`` [B, L] int32, ``mask`` [B, L] float;
document-packed batches (``data.packing="document"``, ``lm.packing``) also carry ``segment_ids``
and ``positions`` [B, L] int32, which ``packed_kwargs`` hands to the model.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
from flax import nnx

from lm import moe
from lm.sharding import ConfigError

# modules that add their own LOSSES dicts to the registry when importable
PLUGIN_MODULES = ("lm.ib", "rl.losses", "rl.dlr")


def bind(model, params):
    """An ``nnx.Module`` from ``model`` (a GraphDef or a Module) and a pure params dict."""
    if isinstance(model, nnx.Module):
        model = nnx.graphdef(model)
    return nnx.merge(model, nnx.State(params))


def packed_kwargs(batch) -> dict:
    """``positions_BxL`` / ``segment_ids_BxL`` model arguments of a packed batch ({} if none)."""
    return {f"{k}_BxL": batch[k] for k in ("positions", "segment_ids") if k in batch}


def token_nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array):
    """Per-token negative log-likelihood and log-partition (fp32)."""
    logits = logits_BxLxV.astype(jnp.float32)
    lse_BxL = jax.nn.logsumexp(logits, axis=-1)
    tgt_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return lse_BxL - tgt_BxL, lse_BxL


def xent_from_logits(logits_BxLxV, targets_BxL, mask_BxL, z_loss: float = 0.0):
    """Masked token-mean cross-entropy (+ optional z-loss ``z * lse**2``) and its aux pairs."""
    nll_BxL, lse_BxL = token_nll(logits_BxLxV, targets_BxL)
    mask_BxL = mask_BxL.astype(jnp.float32)
    count = mask_BxL.sum()
    denom = jnp.maximum(count, 1.0)
    nll_sum = (nll_BxL * mask_BxL).sum()
    z_sum = (lse_BxL**2 * mask_BxL).sum()
    correct = ((logits_BxLxV.argmax(-1) == targets_BxL) * mask_BxL).sum()
    loss = (nll_sum + z_loss * z_sum) / denom
    aux = {"loss": (nll_sum + z_loss * z_sum, count), "xent": (nll_sum, count),
           "z_loss": (z_sum, count), "accuracy": (correct, count)}
    return loss, aux


def xent(params, batch, *, model, rng, cfg):
    """Next-token cross-entropy with label mask and ``cfg.train.z_loss``; an MoE model's
    load-balancing and router z terms are added (``with_moe_aux``)."""
    m = bind(model, params)
    logits_BxLxV = m(batch["inputs"], rng=rng, **packed_kwargs(batch))
    mask_BxL = batch.get("mask", jnp.ones(batch["targets"].shape, jnp.float32))
    loss, aux = xent_from_logits(logits_BxLxV, batch["targets"], mask_BxL, cfg.train.z_loss)
    return with_moe_aux(m, loss, aux)


def with_moe_aux(m, loss, aux):
    """``(loss, aux)`` plus the MoE aux losses of module ``m``'s last forward
    (``lm.moe.aux_terms``: ``moe_aux_coef * load_balancing + moe_router_z_coef * z`` with the
    coefficients of ``m.cfg``, and their metrics, per-expert load included); unchanged for a
    dense model."""
    stats = moe.collect(m)
    if not stats:
        return loss, aux
    s, c = aux["loss"]
    extra, moe_aux = moe.aux_terms(stats, m.cfg.moe_aux_coef, m.cfg.moe_router_z_coef, c)
    return (s + extra) / jnp.maximum(c, 1.0), {**aux, "loss": (s + extra, c), **moe_aux}


LOSSES = {"xent": xent}


def registry() -> dict:
    """All registered losses: this module's plus those of every importable plugin module."""
    out = dict(LOSSES)
    for name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the plugin exists but a dependency of it is missing
                raise
            continue
        out.update(getattr(mod, "LOSSES", {}))
    return out


def get_loss(name: str):
    losses = registry()
    if name not in losses:
        raise ConfigError(f"train.loss={name!r} is not a registered loss; "
                          f"choose one of {sorted(losses)}")
    return losses[name]


def reduce_aux(aux) -> dict:
    """(sum, count) pairs -> means; other entries are passed through."""
    out = {}
    for k, v in aux.items():
        if isinstance(v, tuple) and len(v) == 2:
            out[k] = v[0] / jnp.maximum(v[1], 1e-9)
        else:
            out[k] = v
    return out
