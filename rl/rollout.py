"""Rollouts on the KV-cache sampler: prompts -> G completions each, masks, behaviour/ref log-probs.

    ro = rollout(graphdef, params, ref_params, prompt_NxP, prompt_len_N, group_size=8,
                 sample_cfg=SampleCfg(max_new_tokens=8, eos_id=EOS), rng=key)
    ro["tokens"], ro["mask"], ro["old_logp"], ro["ref_logp"]   # [N*G, P+T], the policy-loss batch

Rows ``[n*G, (n+1)*G)`` answer prompt n (contiguous groups, as ``rl.advantages`` expects). The
completions come from ``lm.sample.generate(..., group_size=G)`` (jitted, batched; each prompt is
prefilled once and its KV cache shared by its G rows, then cached decode steps; temperature /
top-k / top-p, stop at EOS). ``lm.sample.splice`` packs prompt + completion into
right-padded rows with the completion mask (EOS included and scored; pads after it masked).
Behaviour and reference log-probs (``scoring``): with ``"cached"`` the behaviour log-probs
are the sampler's own (the policy's temperature-1 log-probs of each drawn token, computed while
sampling) and the reference's come from ``lm.sample.completion_logprobs``, which prefills each
prompt once and scores the G completions through the shared cache: for SmolLM2-135M, 16 chat
prompts x 8 x 32 tokens, the two full forwards over [128, P+T] took longer than sampling itself.
Both agree with the training forward to fp32 round-off (tested). ``scoring="forward"`` (the
default, as before) runs ONE batched training-kind forward over the spliced rows with the two
parameter trees stacked and ``vmap``-ped (verl's recompute), so the first step's ratio is
exactly 1. ``rl.loop`` picks with ``rl.scoring`` ("auto": forward, or cached under LoRA, where
stacking policy and reference would copy the shared base).

``dynamic_sample`` is DAPO's dynamic sampling: keep drawing prompt batches, drop every group whose
rewards are all equal (no signal for group-relative advantages), until ``want`` groups are
collected (or ``max_draws`` batches were drawn; then it returns what it has and says so).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.sample import (
    SampleCfg,
    completion_logprobs,
    generate,
    place,
    sequence_logprobs,
    splice,
)


def stacked_logprobs(model, params_list, tokens_BxS, mask_BxS):
    """[K, B, S] log-probs of ``tokens`` under each of K same-shaped param trees, one vmapped
    forward."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)
    return jax.vmap(lambda p: sequence_logprobs(model, p, tokens_BxS, mask_BxS))(stacked)


SCORING = ("cached", "forward")


@functools.partial(jax.jit, static_argnames=("model", "group_size", "sample_cfg", "scoring"))
def _rollout(model, params, ref_params, prompt_NxP, prompt_len_N, group_size, sample_cfg, rng,
             scoring="forward"):
    out = generate(model, params, prompt_NxP, prompt_len_N, sample_cfg, rng, jit=False,
                   group_size=group_size)  # each prompt prefilled once, its cache shared by G rows
    prompt_BxP = jnp.repeat(prompt_NxP, group_size, axis=0)
    len_B = jnp.repeat(prompt_len_N, group_size, axis=0)
    tokens_BxS, mask_BxS = splice(prompt_BxP, len_B, out["tokens_BxT"], out["mask_BxT"],
                                  sample_cfg.pad_id)
    if scoring == "forward":
        old_BxS, ref_BxS = stacked_logprobs(model, [params, ref_params], tokens_BxS, mask_BxS)
    else:  # the sampler's own log-probs, and the reference's through the shared prefill
        S = tokens_BxS.shape[1]
        ref_BxT = completion_logprobs(model, ref_params, prompt_NxP, prompt_len_N,
                                      out["tokens_BxT"], out["mask_BxT"], group_size)
        mask_f = mask_BxS.astype(jnp.float32)
        old_BxS = place(out["logp_BxT"], len_B, S) * mask_f
        ref_BxS = place(ref_BxT, len_B, S) * mask_f
    last_B = jnp.take_along_axis(out["tokens_BxT"],
                                 jnp.maximum(out["lengths_B"] - 1, 0)[:, None], 1)[:, 0]
    eos = -1 if sample_cfg.eos_id is None else sample_cfg.eos_id
    return {"tokens": tokens_BxS, "mask": mask_BxS.astype(jnp.float32), "old_logp": old_BxS,
            "ref_logp": ref_BxS, "completion_BxT": out["tokens_BxT"],
            "sampler_logp_BxT": out["logp_BxT"], "lengths": out["lengths_B"],
            "finished": (out["lengths_B"] > 0) & (last_B == eos)}


def rollout(model, params, ref_params, prompt_NxP, prompt_len_N, *, group_size: int,
            sample_cfg: SampleCfg, rng, scoring: str = "forward") -> dict:
    """G sampled completions per prompt with masks and behaviour/reference log-probs (jitted).

    Returns [B = N*G] arrays: ``tokens``/``mask``/``old_logp``/``ref_logp`` [B, P+T] (the
    policy-loss batch, minus ``adv``), ``completion_BxT``, ``sampler_logp_BxT``, ``lengths``
    and ``finished`` (ended with EOS, not truncated).

    ``scoring``: ``"cached"`` takes ``old_logp`` from the sampler (the policy's
    temperature-1 log-probs it computed anyway) and ``ref_logp`` from
    ``lm.sample.completion_logprobs`` (each prompt prefilled once): one forward of
    ``N*P + B*(T-1)`` positions instead of two of ``B*(P+T)``; both equal the training forward's
    log-probs up to fp32 round-off (tested), so the first step's ratio is 1 to ~1e-6.
    ``"forward"`` (default): both from one full forward of the training kind over the spliced
    rows (ratio exactly 1 at the first step; about 3x the scoring cost for SmolLM2-135M's chat
    prompts)."""
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    if scoring not in SCORING:
        raise ValueError(f"scoring={scoring!r}; allowed: {', '.join(SCORING)}")
    return _rollout(model, params, ref_params, jnp.asarray(prompt_NxP, jnp.int32),
                    jnp.asarray(prompt_len_N, jnp.int32), group_size, sample_cfg, rng, scoring)


def completions_text(ro: dict, decode) -> list[str]:
    """Decoded completions (EOS and padding dropped) with ``decode(ids) -> str``."""
    toks, lens = np.asarray(ro["completion_BxT"]), np.asarray(ro["lengths"])
    out = []
    for t, n, fin in zip(toks, lens, np.asarray(ro["finished"])):
        out.append(decode(t[: int(n) - int(bool(fin))]))
    return out


def zero_variance_groups(rewards_B, group_size: int) -> np.ndarray:
    """[N] bool: groups whose rewards are all equal."""
    r = np.asarray(rewards_B).reshape(-1, group_size)
    return np.all(r == r[:, :1], axis=1)


def dynamic_sample(draw, want: int, group_size: int, max_draws: int = 4):
    """DAPO dynamic sampling. ``draw(i) -> (batch dict of [N*G, ...] arrays, rewards [N*G],
    extras: list of per-group items)``. Returns ``(batch, rewards, extras, info)`` with exactly
    ``want`` groups: groups with non-zero reward variance first; if ``max_draws`` draws did not
    find enough, the batch is topped up with dropped (zero-advantage) groups so its shape stays
    fixed, and ``info["short"]`` says so."""
    kept, dropped, drawn = [], [], 0
    for i in range(max_draws):
        batch, rewards, extras = draw(i)
        drawn += 1
        zero = zero_variance_groups(rewards, group_size)
        for g, z in enumerate(zero):
            rows = slice(g * group_size, (g + 1) * group_size)
            item = (jax.tree.map(lambda x, r=rows: np.asarray(x)[r], batch),
                    np.asarray(rewards)[rows], extras[g])
            (dropped if z else kept).append(item)
        if len(kept) >= want:
            break
    n_kept = min(len(kept), want)
    chosen = kept[:want] + dropped[: want - n_kept]
    batch = jax.tree.map(lambda *xs: np.concatenate(xs), *[c[0] for c in chosen])
    rewards = np.concatenate([c[1] for c in chosen])
    info = {"draws": drawn, "dropped_groups": len(dropped), "kept_groups": n_kept,
            "short": n_kept < want}
    return batch, rewards, [c[2] for c in chosen], info
