"""Dynamic Latent Routing post-training: search -> select -> update, as one pure loss.

    --set train.loss=dlr dlr.layer=2 dlr.codes=32 dlr.chunk=4 dlr.alpha=1 dlr.n_search=4

The model hook (code book, router, steering) is ``lm/routing.py``; this module is the loss of spec
``dlr_gds.md`` §3.2 with the search of §3.3, per example x and selected code sequence a*:

    L = -log p(x)                               generalist (unsteered NLL)
        - (log p^(x|a*) - sg log p(x))          information gain (steered LL - detached unsteered)
        - alpha_policy * log p^(a*|x)           router CE on the selected codes
        + alpha_reg * KL(P_emp || P_bizipf)     code-bigram regulariser

Search (no gradient, batched, one jit): the lower trunk (blocks < l*) runs ONCE; the router reads
it (it never depends on codes), so the router distribution factorises over chunks and the
candidates are independent categorical draws per chunk. Candidates: the router's argmax (index 0,
when ``dlr.greedy``) and ``n_search`` draws at ``temps[i % len(temps)]``; all share the lower-trunk
activations and only re-run blocks >= l* (vmapped). a* = the candidate with the largest steered
log-likelihood of the scored (masked) tokens; ties go to the lowest index, i.e. the greedy one.

Choices where the spec says "not found" (each tested in tests/test_dlr.py):
- Likelihoods are of the masked (answer) tokens; the generalist and information-gain terms are
  token means over them, the policy term a mean over the valid chunks, so the paper's weights
  (0.1-0.5) act on per-token / per-chunk scales. Selection uses the per-example sum (same ranking).
- Valid chunks: those starting at or before the row's last scored input position (their codes
  can reach a scored prediction; later chunks' codes change nothing scored).
- P_emp(i, j) = mean over valid consecutive chunk pairs of softmax(z_m)[i] softmax(z_{m+1})[j]
  (router probabilities, so the term has a gradient, into the router only); P_bizipf(i, j) ~
  q(i) q(j) (rho if i == j else 1) with q(k) ~ (k+1)^-s; KL uses log max(P_emp, 1e-12).
- ``rng=None`` (eval): no dropout and candidate draws from ``key(0)``.
- ``aux["loss"] = (loss * n_tokens, n_tokens)``: microbatches are weighted by scored tokens; the
  KL term is a per-(micro)batch statistic, so microbatching changes it (not exactly invariant).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm.losses import bind

KL_EPS = 1e-12


def bizipf_prior(codes: int, s: float = 1.0, rho: float = 0.1) -> np.ndarray:
    """[C, C] bigram prior: Zipf unigram q(k) ~ (k+1)^-s, repeats down-weighted by ``rho``."""
    q_C = (np.arange(codes) + 1.0) ** -s
    p_CxC = np.outer(q_C, q_C) * np.where(np.eye(codes, dtype=bool), rho, 1.0)
    return (p_CxC / p_CxC.sum()).astype(np.float32)


def chunk_mask(mask_BxL: jax.Array, chunk: int) -> jax.Array:
    """[B, M] 1.0 for chunks starting at or before the row's last scored position."""
    L = mask_BxL.shape[1]
    pos_L = jnp.arange(L)
    last_B = jnp.max(jnp.where(mask_BxL > 0, pos_L[None, :], -1), axis=1)
    start_M = jnp.arange(0, L, chunk)
    return (start_M[None, :] <= last_B[:, None]).astype(jnp.float32)


def bigram_kl(probs_BxMxC: jax.Array, cmask_BxM: jax.Array, prior_CxC: jax.Array):
    """KL(P_emp || prior) of the batch's soft code-bigram table; returns (kl, P_emp [C, C])."""
    pair_BxM1 = cmask_BxM[:, :-1] * cmask_BxM[:, 1:]
    p_BxM1xCxC = probs_BxMxC[:, :-1, :, None] * probs_BxMxC[:, 1:, None, :]
    n_pairs = jnp.maximum(pair_BxM1.sum(), 1.0)
    emp_CxC = (p_BxM1xCxC * pair_BxM1[:, :, None, None]).sum((0, 1)) / n_pairs
    kl = jnp.sum(emp_CxC * (jnp.log(jnp.maximum(emp_CxC, KL_EPS)) - jnp.log(prior_CxC)))
    return kl, emp_CxC


def seq_logprob(logits_BxLxV: jax.Array, targets_BxL: jax.Array, mask_BxL: jax.Array):
    """Per-example sum of masked target log-probs [B] (fp32)."""
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), -1)
    tgt_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], -1)[..., 0]
    return (tgt_BxL * mask_BxL.astype(jnp.float32)).sum(-1)


def lower(m, inputs_BxL, rng=None):
    """Stream at layer l* (pre-steer, what the router reads), positions, per-block dropout keys."""
    B, L = inputs_BxL.shape
    pos_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
    x_BxLxD, rngs = m.embed(inputs_BxL, pos_BxL, rng)
    hs, _ = m.run_blocks(x_BxLxD, pos_BxL, rngs, lo=0, hi=m.cfg.dlr.layer)
    return (hs[-1] if hs else x_BxLxD), pos_BxL, rngs


def upper(m, h_BxLxD, pos_BxL, rngs, codes_BxM=None):
    """Logits from the layer-l* stream through blocks >= l* (steered when codes are given)."""
    hs, _ = m.run_blocks(h_BxLxD, pos_BxL, rngs, codes_BxM=codes_BxM, lo=m.cfg.dlr.layer)
    return m.logits(hs[-1])


def candidates(z_BxMxC: jax.Array, rng: jax.Array, dcfg) -> jax.Array:
    """[N', B, M] int32 code sequences: argmax first (if ``greedy``), then ``n_search`` draws."""
    out = [jnp.argmax(z_BxMxC, -1)] if dcfg.greedy else []
    for i in range(dcfg.n_search):
        t = dcfg.temps[i % len(dcfg.temps)]
        out.append(jax.random.categorical(jax.random.fold_in(rng, i), z_BxMxC / t, axis=-1))
    return jnp.stack(out).astype(jnp.int32)


def search(m, h_BxLxD, pos_BxL, targets_BxL, mask_BxL, cands_NxBxM):
    """Select per example the candidate with the largest steered log-likelihood (no gradient).

    Returns (a*_BxM, scores_NxB, best_B)."""
    h_sg = jax.lax.stop_gradient(h_BxLxD)
    none = [None] * m.cfg.n_layers

    def score(codes_BxM):
        return seq_logprob(upper(m, h_sg, pos_BxL, none, codes_BxM), targets_BxL, mask_BxL)

    scores_NxB = jax.lax.stop_gradient(jax.vmap(score)(cands_NxBxM))
    best_B = jnp.argmax(scores_NxB, axis=0)
    a_BxM = jnp.take_along_axis(cands_NxBxM, best_B[None, :, None], axis=0)[0]
    return a_BxM, scores_NxB, best_B


def dlr_terms(params, batch, *, model, rng, cfg) -> dict:
    """Every term and statistic of the DLR loss (a dict of arrays; see ``dlr_loss``)."""
    m = bind(model, params)
    dcfg = cfg.model.dlr  # the architecture fields equal the model's own (it was built from it)
    inputs, targets = batch["inputs"], batch["targets"]
    mask_BxL = batch.get("mask", jnp.ones(targets.shape, jnp.float32)).astype(jnp.float32)
    drop_rng, sample_rng = (None, jax.random.key(0)) if rng is None else jax.random.split(rng)
    h_BxLxD, pos_BxL, rngs = lower(m, inputs, drop_rng)
    z_BxMxC = m.dlr.route(h_BxLxD)
    cands_NxBxM = candidates(jax.lax.stop_gradient(z_BxMxC), sample_rng, dcfg)
    a_BxM, scores_NxB, best_B = search(m, h_BxLxD, pos_BxL, targets, mask_BxL, cands_NxBxM)
    lp0_B = seq_logprob(upper(m, h_BxLxD, pos_BxL, rngs), targets, mask_BxL)
    lpa_B = seq_logprob(upper(m, h_BxLxD, pos_BxL, rngs, a_BxM), targets, mask_BxL)
    cmask_BxM = chunk_mask(mask_BxL, dcfg.chunk)
    logq_BxMxC = jax.nn.log_softmax(z_BxMxC, -1)
    lpr_BxM = jnp.take_along_axis(logq_BxMxC, a_BxM[..., None], -1)[..., 0]
    prior = jnp.asarray(bizipf_prior(dcfg.codes, dcfg.zipf_s, dcfg.zipf_rho))
    kl, emp_CxC = bigram_kl(jnp.exp(logq_BxMxC), cmask_BxM, prior)
    n_tok = mask_BxL.sum()
    n_chunk = cmask_BxM.sum()
    used_C = jnp.zeros((dcfg.codes,), jnp.float32).at[a_BxM].max(cmask_BxM)
    return {"lp0_B": lp0_B, "lpa_B": lpa_B, "lpr_BxM": lpr_BxM, "cmask_BxM": cmask_BxM,
            "kl": kl, "emp_CxC": emp_CxC, "a_BxM": a_BxM, "scores_NxB": scores_NxB,
            "best_B": best_B, "n_tok": n_tok, "n_chunk": n_chunk, "z_BxMxC": z_BxMxC,
            "codes_used": used_C.sum(), "greedy_BxM": jnp.argmax(z_BxMxC, -1)}


def dlr_loss(params, batch, *, model, rng, cfg):
    """The registered DLR loss (``train.loss=dlr``); reads ``cfg.model.dlr`` for its weights."""
    dcfg = cfg.model.dlr
    t = dlr_terms(params, batch, model=model, rng=rng, cfg=cfg)
    n_tok, n_chunk = t["n_tok"], t["n_chunk"]
    denom, cden = jnp.maximum(n_tok, 1.0), jnp.maximum(n_chunk, 1.0)
    lp0, lpa = t["lp0_B"].sum(), t["lpa_B"].sum()
    generalist = -lp0 / denom
    info_gain = (lpa - jax.lax.stop_gradient(lp0)) / denom
    policy_ce = -(t["lpr_BxM"] * t["cmask_BxM"]).sum() / cden
    loss = generalist - info_gain + dcfg.alpha_policy * policy_ce + dcfg.alpha_reg * t["kl"]
    agree = ((t["a_BxM"] == t["greedy_BxM"]) * t["cmask_BxM"]).sum()
    B = jnp.float32(t["best_B"].shape[0])
    aux = {"loss": (loss * n_tok, n_tok), "xent": (-lp0, n_tok), "xent_steered": (-lpa, n_tok),
           "info_gain": (lpa - lp0, n_tok), "policy_ce": (policy_ce * n_chunk, n_chunk),
           "router_agree": (agree, n_chunk), "kl_prior": (t["kl"], jnp.float32(1.0)),
           "switch": ((t["best_B"] != 0).sum().astype(jnp.float32), B),
           "codes_used": (t["codes_used"], jnp.float32(1.0))}
    return loss, aux


LOSSES = {"dlr": dlr_loss}
