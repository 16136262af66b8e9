"""RL and preference losses under the codebase's loss contract, and their registry.

    from rl import losses
    loss, aux = losses.LOSSES["grpo"](params, batch, model=graphdef, cfg=cfg)
    loss, aux = losses.LOSSES["tdpo2"](params, {**pairs, "loss_state": {"ref_params": ref}},
                                       model=graphdef, cfg=cfg)

``lm.losses.registry()`` merges ``LOSSES`` below, so ``--set train.loss=dapo`` runs any of them
through the unchanged ``lm.train`` step. The math lives in pure array functions
(``rl.policy``, ``rl.preference``); this module only runs the model and gathers log-probs.

Batches (all [B, S] row-aligned, so micro-batching and data sharding split them like any batch;
``mask`` entry t is 1 when token t is a scored completion token, as ``lm.sample.splice`` makes):
- policy (``kind="policy"``): ``tokens`` int32, ``mask``, ``old_logp`` (behaviour),
  ``adv`` (per-token advantage), optional ``ref_logp`` (KL-in-loss / logging).
- value (``kind="value"``): ``tokens``, ``mask``, ``old_values``, ``returns``; the critic is a GPT
  whose logit 0 at the position before token t is V_t.
- preference (``kind="preference"``): ``chosen_tokens``, ``chosen_mask``, ``rejected_tokens``,
  ``rejected_mask``; the frozen reference params travel in ``batch["loss_state"]["ref_params"]``
  (the train state's ``loss_state``, checkpointed with the run; SimPO ignores them).
  Document-packed pairs (``rl.pref_packing.pack_pairs``: K pairs per row, segment ids, a
  row-local gather index and ``pair_valid``) run the model once on the packed rows, gather the
  per-token scores back to one row per pair and average over the valid pairs only.

Hyper-parameters come from ``cfg.loss`` (a ``LossCfg``); a field left ``None`` keeps the loss's
own default (DAPO eps_high 0.28, GSPO 3e-4/4e-4, ...), so the loss body never branches on config.
Adding a policy loss: write ``fn(logp, old_logp, adv, mask, *, ref_logp=None, ...)`` returning
``(loss, aux)`` and add ``"name": policy_loss(fn)`` to ``LOSSES``.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp

from lm.losses import bind
from lm.sharding import ConfigError
from rl import policy, preference
from rl import pref_packing as PK
from rl.policy import aggregate, kl_estimate, pair  # noqa: F401  (building blocks re-exported)
from rl.preference import chunked_token_stats, full_kl, token_stats  # noqa: F401


@dataclasses.dataclass(frozen=True)
class LossCfg:
    """Loss hyper-parameters; ``None`` = the chosen loss's own default."""

    eps_low: float | None = None
    eps_high: float | None = None
    clip_c: float | None = None
    kl_coef: float | None = None
    kl_kind: str | None = None
    agg: str | None = None
    max_len: int | None = None
    eps_v: float | None = None
    beta: float | None = None
    alpha: float | None = None
    label_smoothing: float | None = None
    gamma: float | None = None
    chunk: int = 64  # TDPO sequence chunk for the full-vocabulary KL

    def __post_init__(self):
        if self.agg is not None and self.agg not in policy.MODES:
            raise ConfigError(f"loss.agg={self.agg!r} is not one of {policy.MODES}")
        if self.kl_kind is not None and self.kl_kind not in policy.KL_KINDS:
            raise ConfigError(f"loss.kl_kind={self.kl_kind!r} is not one of {policy.KL_KINDS}")
        if self.chunk < 1:
            raise ConfigError(f"loss.chunk={self.chunk} must be >= 1")


def token_logprobs(logits_BxLxV, labels_BxL):
    """``(logp_BxL, entropy_BxL)`` of the labels under ``log_softmax`` of fp32 logits."""
    lsm = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), -1)
    logp = jnp.take_along_axis(lsm, labels_BxL[..., None], -1)[..., 0]
    ent = -jnp.sum(jnp.exp(lsm) * lsm, -1)
    return logp, ent


def _shift(x_BxL):
    """Scores of tokens 1..S-1 -> aligned with tokens (entry 0 = 0, no context)."""
    return jnp.pad(x_BxL, ((0, 0), (1, 0)))


def hparams(fn, cfg) -> dict:
    """The non-None ``cfg.loss`` fields that ``fn`` takes as keyword-only arguments."""
    lc = getattr(cfg, "loss", None)
    if lc is None:
        return {}
    names = {p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {k: v for k, v in dataclasses.asdict(lc).items() if k in names and v is not None}


def _chunk(cfg) -> int:
    lc = getattr(cfg, "loss", None)
    return LossCfg.chunk if lc is None else lc.chunk


def policy_loss(fn):
    """Wrap a pure ``fn(logp, old_logp, adv, mask, ...)`` into ``loss_fn(params, batch, ...)``."""

    def loss_fn(params, batch, *, model, rng=None, cfg=None):
        m = bind(model, params)
        tokens = batch["tokens"]
        logits = m(tokens[:, :-1], rng=rng)
        logp, ent = token_logprobs(logits, tokens[:, 1:])
        logp, ent = _shift(logp), _shift(ent)
        loss, aux = fn(logp, batch["old_logp"], batch["adv"], batch["mask"],
                       ref_logp=batch.get("ref_logp"), **hparams(fn, cfg))
        aux["entropy"] = pair(jax.lax.stop_gradient(ent), batch["mask"])
        return loss, aux

    loss_fn.kind, loss_fn.pure = "policy", fn
    loss_fn.__name__ = getattr(fn, "__name__", "policy_loss")
    return loss_fn


def value_loss_fn(params, batch, *, model, rng=None, cfg=None):
    """Critic loss: V_t = logit 0 of the critic GPT at the position that predicts token t."""
    m = bind(model, params)
    v = _shift(m(batch["tokens"][:, :-1], rng=rng)[..., 0].astype(jnp.float32))
    return policy.value_loss(v, batch["old_values"], batch["returns"], batch["mask"],
                             **hparams(policy.value_loss, cfg))


value_loss_fn.kind = "value"


def values(model, params, tokens_BxS):
    """Critic values aligned with tokens (no grad needed; used by rollouts for GAE)."""
    m = bind(model, params)
    return _shift(m(tokens_BxS[:, :-1])[..., 0].astype(jnp.float32))


def _ref_params(batch):
    ls = batch.get("loss_state") or {}
    if "ref_params" not in ls:
        raise ConfigError("preference losses need the frozen reference params in "
                          "batch['loss_state']['ref_params'] (rl.loop.preference_state)")
    return ls["ref_params"]


def _pair_tokens(batch):
    toks = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], 0)
    return toks, batch["chosen_mask"], batch["rejected_mask"]


def _halves(x_2BxS):
    B = x_2BxS.shape[0] // 2
    return x_2BxS[:B], x_2BxS[B:]


def pref_logps(model, params, tokens_2BxS, rng=None, **model_kw):
    """Per-token log-probs aligned with tokens; ``model_kw``: packed rows' segment ids and
    positions (``rl.pref_packing.model_kwargs``)."""
    m = bind(model, params)
    return _shift(token_logprobs(m(tokens_2BxS[:, :-1], rng=rng, **model_kw),
                                 tokens_2BxS[:, 1:])[0])


def preference_loss(fn, reference: bool = True):
    """Wrap a pure sequence-level preference loss (DPO family, SimPO) into a ``loss_fn``."""

    def loss_fn(params, batch, *, model, rng=None, cfg=None):
        if PK.is_packed(batch):
            return _packed_preference(fn, reference, params, batch, model, rng, cfg)
        toks, mw, ml = _pair_tokens(batch)
        lw, ll = _halves(pref_logps(model, params, toks, rng))
        hp = hparams(fn, cfg)
        if not reference:
            return fn(lw, ll, mw, ml, **hp)
        rw, rl = _halves(jax.lax.stop_gradient(pref_logps(model, _ref_params(batch), toks)))
        return fn(lw, ll, rw, rl, mw, ml, **hp)

    loss_fn.kind, loss_fn.pure = "preference", fn
    loss_fn.__name__ = getattr(fn, "__name__", "preference_loss")
    return loss_fn


def _packed_preference(fn, reference, params, batch, model, rng, cfg):
    """``preference_loss`` on a packed batch (``rl.pref_packing``): one model run on the packed
    rows, per-token log-probs gathered back to one row per pair, mean over valid pairs."""
    toks = _pair_tokens(batch)[0]
    kw = PK.model_kwargs(batch, toks)
    mw, ml, valid = PK.pair_masks(batch)
    lw, ll = PK.gather_pairs(pref_logps(model, params, toks, rng, **kw), batch)
    hp = hparams(fn, cfg)
    if not reference:
        return PK.valid_pair_mean(fn, valid, lw, ll, mw, ml, **hp)
    ref = jax.lax.stop_gradient(pref_logps(model, _ref_params(batch), toks, **kw))
    rw, rl = PK.gather_pairs(ref, batch)
    return PK.valid_pair_mean(fn, valid, lw, ll, rw, rl, mw, ml, **hp)


def tdpo_loss(variant: str):
    """TDPO1/TDPO2 with the chunked full-vocabulary KL (policy and reference hidden states)."""

    def loss_fn(params, batch, *, model, rng=None, cfg=None):
        packed = PK.is_packed(batch)
        toks, mw, ml = _pair_tokens(batch)
        mkw = PK.model_kwargs(batch, toks) if packed else {}
        m, ref = bind(model, params), bind(model, _ref_params(batch))
        _, h_pol = m(toks[:, :-1], rng=rng, return_hidden=True, **mkw)
        _, h_ref = ref(toks[:, :-1], return_hidden=True, **mkw)
        kl, lr, logp = chunked_token_stats(m.logits, ref.logits, h_pol[-1],
                                           jax.lax.stop_gradient(h_ref[-1]), toks[:, 1:],
                                           _chunk(cfg))
        hp = hparams(preference.tdpo, cfg)
        hp.pop("variant", None)
        if packed:
            mw, ml, valid = PK.pair_masks(batch)
            (kw, kl_l), (rw, rl), (pw, pl) = (PK.gather_pairs(_shift(x), batch)
                                              for x in (kl, lr, logp))
            tdpo = lambda *a: preference.tdpo(*a[:6], variant=variant, logp_w=a[6],  # noqa
                                              logp_l=a[7], **hp)
            return PK.valid_pair_mean(tdpo, valid, rw, kw, rl, kl_l, mw, ml, pw, pl)
        (kw, kl_l), (rw, rl), (pw, pl) = (_halves(_shift(x)) for x in (kl, lr, logp))
        return preference.tdpo(rw, kw, rl, kl_l, mw, ml, variant=variant, logp_w=pw,
                               logp_l=pl, **hp)

    loss_fn.kind, loss_fn.pure = "preference", variant
    loss_fn.__name__ = variant
    return loss_fn


def _cdpo(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l, *, beta: float = 0.1,
          label_smoothing: float = 0.1):
    """cDPO: DPO with label smoothing 0.1 (Mitchell 2023)."""
    return preference.dpo(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l, beta=beta,
                          label_smoothing=label_smoothing)


LOSSES = {
    **{name: policy_loss(fn) for name, fn in policy.POLICY_LOSSES.items()},
    "value": value_loss_fn,
    "dpo": preference_loss(preference.dpo),
    "cdpo": preference_loss(_cdpo),
    "robust_dpo": preference_loss(preference.robust_dpo),
    "hinge": preference_loss(preference.hinge),
    "ipo": preference_loss(preference.ipo),
    "simpo": preference_loss(preference.simpo, reference=False),
    "tdpo1": tdpo_loss("tdpo1"),
    "tdpo2": tdpo_loss("tdpo2"),
}
