"""Preference losses as pure functions: DPO, cDPO, robust DPO, hinge, IPO, SimPO, TDPO1/2.

    loss, aux = dpo(logp_w_BxT, logp_l_BxT, ref_w_BxT, ref_l_BxT, mask_w_BxT, mask_l_BxT, beta=0.1)
    kl_BxT, lr_BxT, logp_BxT = chunked_token_stats(unembed, h_pol_BxTxD, h_ref_BxTxD, labels_BxT)
    loss, aux = tdpo(lr_w, kl_w, lr_l, kl_l, mask_w, mask_l, beta=0.1, alpha=0.5, variant="tdpo2")

Inputs are per-token log-probs of the labelled tokens (chosen ``w``, rejected ``l``), masks of
the completion tokens; sequence scores are SUMS over the completion (DPO default), IPO and SimPO
use per-token averages (TRL convention; ``n`` clamped to >= 1). The batch loss is the plain mean
over pairs; ``aux["loss"] = (sum over pairs, pairs)`` so micro-batches combine exactly.

TDPO (Zeng et al. 2024, authors' ``trainers.py``): per-token forward KL over the full vocabulary
``kl_t = sum_v p_ref (log p_ref - log p_pol)`` in fp32. ``chunked_token_stats`` runs the
unembedding, both log-softmaxes and the KL over ``chunk`` positions at a time inside a
``jax.checkpoint``-ed ``lax.map``: neither forward nor backward ever holds a full [B, T, V]
array (the backward recomputes one chunk's logits at a time). ``token_stats`` is the naive
full-logits reference the tests and ``benchmarks/bench_tdpo.py`` compare against.
TDPO's logged "rewards" add the sequence KL (``beta * (margin + seq_kl)``), unlike DPO's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient
log_sigmoid = jax.nn.log_sigmoid


def _seq(x, mask):
    m = mask.astype(jnp.float32) > 0
    return jnp.where(m, x, 0.0).sum(-1), jnp.maximum(m.sum(-1), 1).astype(jnp.float32)


def _pairs(per_pair_loss, chosen_r, rejected_r, logps_w, logps_l, extra=None):
    """(mean loss, aux) from per-pair losses and detached per-pair rewards."""
    B = jnp.float32(per_pair_loss.shape[0])
    cr, rr = sg(chosen_r), sg(rejected_r)
    aux = {"loss": (per_pair_loss.sum(), B),
           "rewards/chosen": (cr.sum(), B), "rewards/rejected": (rr.sum(), B),
           "rewards/margins": ((cr - rr).sum(), B),
           "rewards/accuracies": ((cr > rr).astype(jnp.float32).sum(), B),
           "logps/chosen": (sg(logps_w).sum(), B), "logps/rejected": (sg(logps_l).sum(), B)}
    aux.update(extra or {})
    return per_pair_loss.mean(), aux


def _ratios(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l):
    lw, nw = _seq(logp_w, mask_w)
    ll, nl = _seq(logp_l, mask_l)
    rw, _ = _seq(ref_w, mask_w)
    rl, _ = _seq(ref_l, mask_l)
    return lw - rw, ll - rl, nw, nl, lw, ll


def smoothed_sigmoid_loss(z, eps: float):
    """cDPO / label-smoothed logistic loss ``-(1-eps) log s(z) - eps log s(-z)``."""
    return -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def dpo(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l, *, beta: float = 0.1,
        label_smoothing: float = 0.0):
    """DPO ``-log s(beta d)``, d = (logp_w - ref_w) - (logp_l - ref_l); cDPO for eps > 0."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    r_w, r_l, _, _, lw, ll = _ratios(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l)
    loss = smoothed_sigmoid_loss(beta * (r_w - r_l), label_smoothing)
    return _pairs(loss, beta * r_w, beta * r_l, lw, ll)


def robust_dpo(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l, *, beta: float = 0.1,
               label_smoothing: float = 0.1):
    """Robust DPO (Chowdhury 2024): unbiased under label-flip rate eps."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    r_w, r_l, _, _, lw, ll = _ratios(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l)
    z, eps = beta * (r_w - r_l), label_smoothing
    loss = (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1.0 - 2.0 * eps)
    return _pairs(loss, beta * r_w, beta * r_l, lw, ll)


def hinge(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l, *, beta: float = 0.1):
    """SLiC hinge ``relu(1 - beta d)``."""
    r_w, r_l, _, _, lw, ll = _ratios(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l)
    loss = jax.nn.relu(1.0 - beta * (r_w - r_l))
    return _pairs(loss, beta * r_w, beta * r_l, lw, ll)


def ipo(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l, *, beta: float = 0.1):
    """IPO ``(d_avg - 1/(2 beta))^2`` on per-token-averaged log-ratios (TRL, IPO authors)."""
    r_w, r_l, nw, nl, lw, ll = _ratios(logp_w, logp_l, ref_w, ref_l, mask_w, mask_l)
    loss = (r_w / nw - r_l / nl - 1.0 / (2.0 * beta)) ** 2
    return _pairs(loss, beta * r_w, beta * r_l, lw, ll)


def simpo(logp_w, logp_l, mask_w, mask_l, *, beta: float = 2.0, gamma: float = 1.0,
          label_smoothing: float = 0.0):
    """SimPO (reference-free): ``-log s(beta (s_w - s_l) - gamma)`` with length-averaged s."""
    lw, nw = _seq(logp_w, mask_w)
    ll, nl = _seq(logp_l, mask_l)
    s_w, s_l = lw / nw, ll / nl
    loss = smoothed_sigmoid_loss(beta * (s_w - s_l) - gamma, label_smoothing)
    return _pairs(loss, beta * s_w, beta * s_l, lw, ll)


# ----------------------------------------------------------------------------- TDPO


def token_stats(pol_logits_BxTxV, ref_logits_BxTxV, labels_BxT):
    """Naive per-token ``(kl_t, lr_t, logp_t)``: forward KL(ref || pol) over the vocab, the
    labelled token's log-ratio and its policy log-prob. fp32; holds full [B, T, V] arrays."""
    pol = jax.nn.log_softmax(pol_logits_BxTxV.astype(jnp.float32), -1)
    ref = jax.nn.log_softmax(sg(ref_logits_BxTxV).astype(jnp.float32), -1)
    kl_BxT = jnp.sum(jnp.exp(ref) * (ref - pol), -1)
    idx = labels_BxT[..., None]
    logp_BxT = jnp.take_along_axis(pol, idx, -1)[..., 0]
    lr_BxT = logp_BxT - jnp.take_along_axis(ref, idx, -1)[..., 0]
    return kl_BxT, lr_BxT, logp_BxT


def full_kl(pol_logits_BxTxV, ref_logits_BxTxV):
    """``sum_v p_ref (log p_ref - log p_pol)`` per position (fp32)."""
    labels = jnp.zeros(pol_logits_BxTxV.shape[:-1], jnp.int32)
    return token_stats(pol_logits_BxTxV, ref_logits_BxTxV, labels)[0]


def chunked_token_stats(unembed_pol, unembed_ref, h_pol_BxTxD, h_ref_BxTxD, labels_BxT,
                        chunk: int = 64):
    """``token_stats`` from hidden states, ``chunk`` positions at a time.

    ``unembed_*(h_BxCxD) -> logits_BxCxV`` (e.g. ``GPT.logits``). The body is rematerialised in
    the backward pass, so peak memory is O(B * chunk * V) instead of O(B * T * V)."""
    B, T, _ = h_pol_BxTxD.shape
    c = max(1, min(chunk, T))
    pad = (-T) % c
    if pad:
        h_pol_BxTxD = jnp.pad(h_pol_BxTxD, ((0, 0), (0, pad), (0, 0)))
        h_ref_BxTxD = jnp.pad(h_ref_BxTxD, ((0, 0), (0, pad), (0, 0)))
        labels_BxT = jnp.pad(labels_BxT, ((0, 0), (0, pad)))
    n = (T + pad) // c

    def split(x):  # [B, n*c, ...] -> [n, B, c, ...]
        return jnp.swapaxes(x.reshape((B, n, c) + x.shape[2:]), 0, 1)

    @jax.checkpoint
    def body(args):
        hp, hr, lab = args
        return token_stats(unembed_pol(hp), unembed_ref(hr), lab)

    outs = jax.lax.map(body, (split(h_pol_BxTxD), split(sg(h_ref_BxTxD)), split(labels_BxT)))
    return tuple(jnp.swapaxes(o, 0, 1).reshape(B, n * c)[:, :T] for o in outs)


TDPO_VARIANTS = ("tdpo1", "tdpo2")


def tdpo(lr_w, kl_w, lr_l, kl_l, mask_w, mask_l, *, beta: float = 0.1, alpha: float = 0.5,
         variant: str = "tdpo2", logp_w=None, logp_l=None):
    """TDPO from per-token log-ratios ``lr`` and full-vocab KLs ``kl`` of chosen/rejected.

    tdpo1: ``z = u - (seq_kl_l - seq_kl_w)``; tdpo2: ``z = u - alpha (seq_kl_l - sg(seq_kl_w))``;
    loss = ``-log s(beta z)`` averaged over pairs."""
    if variant not in TDPO_VARIANTS:
        raise ValueError(f"tdpo variant {variant!r} is not one of {TDPO_VARIANTS}")
    margin_w, _ = _seq(lr_w, mask_w)
    margin_l, _ = _seq(lr_l, mask_l)
    seq_kl_w, _ = _seq(kl_w, mask_w)
    seq_kl_l, _ = _seq(kl_l, mask_l)
    z = tdpo_logits(margin_w, margin_l, seq_kl_w, seq_kl_l, alpha, variant)
    loss = -log_sigmoid(beta * z)
    B = jnp.float32(z.shape[0])
    extra = {"kl/chosen": (sg(seq_kl_w).sum(), B), "kl/rejected": (sg(seq_kl_l).sum(), B),
             "kl/margin": (sg(seq_kl_w - seq_kl_l).sum(), B)}
    lw = _seq(logp_w, mask_w)[0] if logp_w is not None else margin_w
    ll = _seq(logp_l, mask_l)[0] if logp_l is not None else margin_l
    return _pairs(loss, beta * (margin_w + seq_kl_w), beta * (margin_l + seq_kl_l), lw, ll,
                  extra)


def tdpo_logits(margin_w, margin_l, seq_kl_w, seq_kl_l, alpha: float, variant: str):
    """The argument of TDPO's sigmoid (before ``beta``)."""
    u = margin_w - margin_l
    if variant == "tdpo1":
        return u - (seq_kl_l - seq_kl_w)
    return u - alpha * (seq_kl_l - sg(seq_kl_w))


PREFERENCE_LOSSES = {"dpo": dpo, "robust_dpo": robust_dpo, "hinge": hinge, "ipo": ipo,
                     "simpo": simpo}
