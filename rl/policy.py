"""Policy-gradient losses as pure functions over ``(logp, old_logp, adv, mask)`` arrays.

    loss, aux = ppo_clip(logp_BxT, old_logp_BxT, adv_BxT, mask_BxT, eps_low=0.2, eps_high=0.2)

Every function returns ``(loss, aux)`` with ``aux["loss"] = (num, den)`` and ``loss == num / den``
and other metrics as ``(sum, count)`` pairs (spec ``specs/rl_losses.md`` §3-§5).

Masking. Inputs at masked positions may hold junk (inf, nan): every function first replaces them
with ``jnp.where`` (never a multiply), so the loss is identical and the gradient with respect to
a masked ``logp`` is exactly zero.

Aggregation (``aggregate``). Returns ``(num, den)``. Without global counts ``den`` is this
batch's own normalizer and is additive over row splits for ``token-mean`` (tokens),
``seq-mean-token-mean`` / ``seq-mean-token-sum`` (sequences with >= 1 token; empty rows are not
counted) and Dr.GRPO (``rows * max_len``), so ``lm.train``'s count-weighted micro-batch
accumulation reproduces the full-batch gradient exactly. With explicit global counts
(``num_tokens``, ``num_seqs``) ``den`` is the whole batch's normalizer and the micro-batch losses
*sum* to the full-batch loss (verl ``batch_num_tokens``, TRL ``num_items_in_batch``).
``seq-mean-token-sum-norm`` divides by the constant ``scale`` exactly as verl does (no ``/B``);
it is a global normalizer by construction.

Choices (spec says "verify"/"inferred"):
- PPO keeps verl's dual clip (``clip_c=3``); the GRPO family follows TRL and has none.
- CISPO uses verl's weight ``sg(clip(ratio, 1-eps_low, 1+eps_high))`` with ``eps_low=1.0`` (no
  lower bound, as MiniMax-M1) and ``eps_high=0.28``.
- DCPO clip bounds are lime-RL/DCPO ``get_clip_low_high`` (read in its ``core_algos.py``):
  ``q = exp(old_logp)``, ``lo = (1 + sqrt(max(1 - 4 eps_low / q, 0))) / 2``,
  ``hi = min((1 + sqrt(1 + 4 eps_high / q)) / 2, max(clip_c, 10))``, plus the dual clip for A < 0
  (their ``clip_type="dynamic"``). eps_low=0.16, eps_high=0.2 are the paper's values (so at
  q = 1 the bounds are [0.8, 1.17]).
- DCPO aggregation ("only token mean", OTM) weights every token equally, which is its point: the
  default ``agg="token-mean"`` is their code's ``only-token-mean`` (lime-RL/DCPO ``agg_loss``: one
  masked mean over all tokens of the batch, ``sum_i sum_t L_it / sum_i |o_i|``). The paper writes
  OTM as ``(1/G) sum_i sum_t L_it``, which is ``agg="seq-mean-token-sum"`` (``--set
  loss.agg=seq-mean-token-sum``); the two differ by the constant mean length. Neither is
  ``seq-mean-token-mean``, whose ``1/|o_i|`` length weighting is what DCPO removes (the
  ``grpo_arithmetic`` run recorded before this fix used it).

Fully masked rows (no response token). The sequence-mean modes divide by the number of
*non-empty* rows, as verl's ``agg_loss`` does (its ``seq_mask = (sum(mask, -1) > 0)``); TRL's
``loss_type="grpo"`` (``((L * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()``) divides by
*all* rows of the micro-batch, so a batch with k empty rows out of B gives TRL's loss times
``B / (B - k)`` here. ``grpo`` and ``gspo`` follow verl on this point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "abs", "k2", "k3", "k1+", "k3+")
LOG_RATIO_CLAMP = 20.0


def _m(mask) -> jax.Array:
    return mask.astype(jnp.float32) > 0


def masked_sum(x, mask) -> jax.Array:
    return jnp.where(_m(mask), x, 0.0).sum()


def pair(x, mask):
    """A ``(sum, count)`` metric over active tokens."""
    return masked_sum(x.astype(jnp.float32), mask), _m(mask).sum().astype(jnp.float32)


def aggregate(x_BxT, mask_BxT, mode: str = "token-mean", *, num_tokens=None, num_seqs=None,
              scale=None):
    """``(num, den)`` of a per-token loss under one of the four verl modes (see module doc)."""
    if mode not in MODES:
        raise ValueError(f"loss aggregation mode {mode!r} is not one of {MODES}")
    m = _m(mask_BxT)
    s_B = jnp.where(m, x_BxT, 0.0).sum(-1)
    n_B = m.sum(-1).astype(jnp.float32)
    seqs = (n_B > 0).sum().astype(jnp.float32) if num_seqs is None else jnp.float32(num_seqs)
    if mode == "token-mean":
        return s_B.sum(), n_B.sum() if num_tokens is None else jnp.float32(num_tokens)
    if mode == "seq-mean-token-mean":
        return (s_B / jnp.maximum(n_B, 1.0)).sum(), seqs
    if mode == "seq-mean-token-sum":
        return s_B.sum(), seqs
    if scale is None:
        raise ValueError("seq-mean-token-sum-norm needs scale= (verl loss_scale_factor)")
    return s_B.sum(), jnp.float32(scale)


def kl_estimate(logp, ref_logp, kind: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3)."""
    if kind not in KL_KINDS:
        raise ValueError(f"kl kind {kind!r} is not one of {KL_KINDS}")
    d = logp - ref_logp
    k2 = 0.5 * d**2
    if kind in ("k1", "k1+"):
        k = d
    elif kind == "abs":
        k = jnp.abs(d)
    elif kind == "k2":
        return k2
    else:
        neg = jnp.clip(-d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        k = jnp.clip(jnp.exp(neg) - neg - 1.0, -10.0, 10.0)
    if kind.endswith("+"):  # straight-through: value of k, gradient of k2
        return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(k)
    return k


def _clean(logp, old_logp, adv, mask, ref_logp=None):
    """Replace junk at masked positions so nothing non-finite reaches a gradient."""
    m = _m(mask)
    logp = jnp.where(m, logp, 0.0)
    old = jnp.where(m, old_logp, 0.0)
    adv = jnp.where(m, adv, 0.0)
    ref = None if ref_logp is None else jnp.where(m, ref_logp, 0.0)
    return logp, old, adv, ref


def _finish(tok_loss, mask, agg, counts, aux, logp, ref_logp, kl_coef, kl_kind):
    """Add the optional KL-in-loss term (TRL: before aggregation), aggregate, fill aux."""
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, kl_kind)
        aux["kl_ref"] = pair(jax.lax.stop_gradient(kl), mask)
        if kl_coef:
            tok_loss = tok_loss + kl_coef * kl
    num, den = aggregate(tok_loss, mask, agg, **counts)
    aux["loss"] = (num, den)
    aux["pg_loss"] = (jax.lax.stop_gradient(num), den)
    aux["tokens"] = (_m(mask).sum().astype(jnp.float32), jnp.float32(1.0))
    return num / jnp.maximum(den, 1e-9), aux


def _clipped(ratio, adv, lo, hi, clip_c, mask):
    """PPO pessimistic clipped objective, absolute bounds ``[lo, hi]``, optional dual clip."""
    l1 = -adv * ratio
    l2 = -adv * jnp.clip(ratio, lo, hi)
    lclip = jnp.maximum(l1, l2)
    aux = {"pg_clipfrac": pair(l2 > l1, mask),
           "clip/low": pair((ratio < lo) & (adv < 0), mask),
           "clip/high": pair((ratio > hi) & (adv > 0), mask)}
    if clip_c is None:
        return lclip, aux
    l3 = -adv * clip_c
    aux["pg_clipfrac_lower"] = pair((lclip > l3) & (adv < 0), mask)
    return jnp.where(adv < 0, jnp.minimum(l3, lclip), lclip), aux


def _ratio_aux(log_ratio, ratio, adv, mask):
    sg = jax.lax.stop_gradient
    return {"ppo_kl": pair(sg(-log_ratio), mask), "ratio/mean": pair(sg(ratio), mask),
            "adv/mean": pair(adv, mask)}


def ppo_clip(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 0.2,
             eps_high: float = 0.2, clip_c: float | None = 3.0, kl_coef: float = 0.0,
             kl_kind: str = "k3", agg: str = "token-mean", num_tokens=None, num_seqs=None,
             scale=None):
    """PPO-clip (verl "vanilla"): asymmetric eps, dual clip ``clip_c`` for A < 0 (None = off)."""
    if clip_c is not None and clip_c <= 1.0:
        raise ValueError(f"dual-clip constant clip_c={clip_c} must be > 1 (or None)")
    logp, old, adv, ref = _clean(logp, old_logp, adv, mask, ref_logp)
    log_ratio = jnp.clip(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    tok, aux = _clipped(ratio, adv, 1.0 - eps_low, 1.0 + eps_high, clip_c, mask)
    aux.update(_ratio_aux(log_ratio, ratio, adv, mask))
    counts = {"num_tokens": num_tokens, "num_seqs": num_seqs, "scale": scale}
    return _finish(tok, mask, agg, counts, aux, logp, ref, kl_coef, kl_kind)


def grpo(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 0.2,
         eps_high: float = 0.2, kl_coef: float = 0.0, kl_kind: str = "k3",
         agg: str = "seq-mean-token-mean", **counts):
    """GRPO (DeepSeekMath, TRL ``loss_type="grpo"``): clipped ratio, seq mean of token means.

    The sequence mean is over rows with >= 1 active token (verl); TRL divides by all rows, so
    fully masked rows make TRL's loss smaller by ``(B - k) / B`` (module doc)."""
    return ppo_clip(logp, old_logp, adv, mask, ref_logp=ref_logp, eps_low=eps_low,
                    eps_high=eps_high, clip_c=None, kl_coef=kl_coef, kl_kind=kl_kind, agg=agg,
                    **counts)


def dr_grpo(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 0.2,
            eps_high: float = 0.2, kl_coef: float = 0.0, kl_kind: str = "k3",
            max_len: int | None = None, num_seqs=None, **_):
    """Dr.GRPO: token sums over the constant ``rows * max_len`` (TRL ``dr_grpo``).

    ``max_len`` defaults to the padded width ``T`` of the arrays (constant for a fixed config)."""
    max_len = mask.shape[-1] if max_len is None else max_len
    rows = mask.shape[0] if num_seqs is None else num_seqs
    return ppo_clip(logp, old_logp, adv, mask, ref_logp=ref_logp, eps_low=eps_low,
                    eps_high=eps_high, clip_c=None, kl_coef=kl_coef, kl_kind=kl_kind,
                    agg="seq-mean-token-sum-norm", scale=rows * max_len)


def dapo(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 0.2,
         eps_high: float = 0.28, kl_coef: float = 0.0, kl_kind: str = "k3", **counts):
    """DAPO: clip-higher (0.2/0.28), token-mean over all tokens, no KL by default."""
    return ppo_clip(logp, old_logp, adv, mask, ref_logp=ref_logp, eps_low=eps_low,
                    eps_high=eps_high, clip_c=None, kl_coef=kl_coef, kl_kind=kl_kind,
                    agg="token-mean", **counts)


def gspo(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 3e-4,
         eps_high: float = 4e-4, kl_coef: float = 0.0, kl_kind: str = "k3", **counts):
    """GSPO: geometric-mean sequence ratio ``s_b`` (verl token form), seq-mean-token-mean.

    As ``grpo``: the sequence mean counts only non-empty rows (verl), not all rows (TRL)."""
    sg = jax.lax.stop_gradient
    logp, old, adv, ref = _clean(logp, old_logp, adv, mask, ref_logp)
    m = _m(mask)
    n_B = jnp.maximum(m.sum(-1), 1).astype(jnp.float32)
    log_s_B = jnp.where(m, logp - old, 0.0).sum(-1) / n_B
    log_s_BxT = jnp.minimum(sg(log_s_B)[:, None] + logp - sg(logp), 10.0)
    s_BxT = jnp.exp(log_s_BxT)
    tok, aux = _clipped(s_BxT, adv, 1.0 - eps_low, 1.0 + eps_high, None, mask)
    aux.update(_ratio_aux(logp - old, s_BxT, adv, mask))
    counts.pop("scale", None)
    return _finish(tok, mask, "seq-mean-token-mean", counts, aux, logp, ref, kl_coef, kl_kind)


def cispo(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 1.0,
          eps_high: float = 0.28, kl_coef: float = 0.0, kl_kind: str = "k3", **counts):
    """CISPO: ``-sg(clip(ratio)) * A * logp``; every token keeps a gradient, token-mean."""
    logp, old, adv, ref = _clean(logp, old_logp, adv, mask, ref_logp)
    log_ratio = jnp.clip(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    w = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high))
    tok = -w * adv * logp
    aux = {"pg_clipfrac": pair(jax.lax.stop_gradient(ratio) != w, mask),
           "clip/high": pair((ratio > 1.0 + eps_high) & (adv > 0), mask)}
    aux.update(_ratio_aux(log_ratio, ratio, adv, mask))
    counts.pop("scale", None)
    return _finish(tok, mask, "token-mean", counts, aux, logp, ref, kl_coef, kl_kind)


def dcpo_bounds(old_logp, eps_low: float = 0.16, eps_high: float = 0.2, clip_c: float = 3.0):
    """DCPO's per-token absolute ratio bounds from the behaviour probability ``q``."""
    q = jnp.exp(old_logp)
    lo_arg = jnp.where(q > 0, 1.0 - 4.0 * eps_low / jnp.maximum(q, 1e-30), 0.0)
    lo = 0.5 * (1.0 + jnp.sqrt(jnp.maximum(lo_arg, 0.0)))
    hi = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * eps_high / jnp.maximum(q, 1e-30)))
    return lo, jnp.minimum(hi, max(clip_c, 10.0))


def dcpo(logp, old_logp, adv, mask, *, ref_logp=None, eps_low: float = 0.16,
         eps_high: float = 0.2, clip_c: float = 3.0, kl_coef: float = 0.0, kl_kind: str = "k3",
         agg: str = "token-mean", **counts):
    """DCPO: dynamic-adaptive clip bounds (``dcpo_bounds``) + dual clip; advantages come from
    ``rl.advantages.sas`` (smooth advantage standardization, explicit state).

    ``agg="token-mean"`` is their code's OTM (one masked mean over all tokens);
    ``agg="seq-mean-token-sum"`` is the paper's ``(1/G) sum_i sum_t`` (module doc)."""
    logp, old, adv, ref = _clean(logp, old_logp, adv, mask, ref_logp)
    log_ratio = jnp.clip(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    lo, hi = dcpo_bounds(old, eps_low, eps_high, clip_c)
    tok, aux = _clipped(ratio, adv, lo, hi, clip_c, mask)
    aux.update(_ratio_aux(log_ratio, ratio, adv, mask))
    return _finish(tok, mask, agg, counts, aux, logp, ref, kl_coef, kl_kind)


def value_loss(vpred, old_values, returns, mask, *, eps_v: float = 0.5, agg: str = "token-mean",
               **counts):
    """PPO critic loss with value clipping: ``0.5 * agg(max((v-R)^2, (v_clip-R)^2))``."""
    m = _m(mask)
    vpred = jnp.where(m, vpred, 0.0)
    old = jnp.where(m, old_values, 0.0)
    ret = jnp.where(m, returns, 0.0)
    v_clip = jnp.clip(vpred, old - eps_v, old + eps_v)
    a, b = (vpred - ret) ** 2, (v_clip - ret) ** 2
    num, den = aggregate(jnp.maximum(a, b), mask, agg, **counts)
    sg = jax.lax.stop_gradient
    aux = {"loss": (0.5 * num, den), "vf_loss": (sg(0.5 * num), den),
           "vf_clipfrac": pair(b > a, mask), "vpred/mean": pair(sg(vpred), mask)}
    return 0.5 * num / jnp.maximum(den, 1e-9), aux


POLICY_LOSSES = {"ppo": ppo_clip, "grpo": grpo, "dr_grpo": dr_grpo, "dapo": dapo,
                 "gspo": gspo, "cispo": cispo, "dcpo": dcpo}
