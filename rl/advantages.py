"""Advantage estimators (no gradient): GRPO, Dr.GRPO, RLOO, GAE, and DCPO's SAS with explicit state.

    adv_B = grpo(rewards_B, group_size=8)                  # (R - mean_g) / (std_g + 1e-6)
    adv_B = dr_grpo(rewards_B, group_size=8)               # R - mean_g
    adv_B = rloo(rewards_B, group_size=8)                  # R - mean of the other members
    adv_BxT, ret_BxT = gae(rewards_BxT, values_BxT, mask_BxT, gamma=1.0, lam=1.0)
    adv_B, state = sas(rewards_B, group_size, prompt_ids_N, state)   # DCPO

Groups are contiguous: rows ``[g*G, (g+1)*G)`` answer the same prompt (as ``rl.rollout`` lays
them out). Std is the unbiased (N-1) one with eps 1e-6 outside the square root (verl); a
singleton group gets mean 0, std 1 (verl), and for RLOO A = R. A group whose rewards are all
equal gets A = 0 exactly (its std is 0 and its deviations are 0).

GAE is verl's ``compute_gae_advantage_return`` as a reverse ``lax.scan`` over time: positions with
mask 0 pass the carry through untouched, so prompt and padding are skipped; the advantage is then
whitened over the active tokens of the whole batch (``masked_whiten``, var + 1e-8).

SAS (lime-RL/DCPO ``compute_dcpo_outcome_advantage``): per prompt id the state holds
``times, mean, std`` of every reward seen so far for that prompt; at each visit the step's group
mean/std (unbiased) are merged by the pooled-variance update, and the advantage is whichever of
``A1 = w A_cum + (1-w) A_new`` and ``A2 = w A_new + (1-w) A_cum`` (``w = 1/(i+1)``, i the visit
count) has the smaller magnitude; a zero std gives that term 0 (no epsilon, as the reference).
The state is a plain pytree ``{"times", "mean", "std"}`` of [N_prompts] arrays, carried by the
caller (``rl.loop``) and checkpointed, never a hidden global.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _groups(rewards_B, group_size: int):
    B = rewards_B.shape[0]
    if group_size < 1 or B % group_size:
        raise ValueError(f"batch of {B} rewards is not a whole number of groups of "
                         f"{group_size}")
    return rewards_B.astype(jnp.float32).reshape(B // group_size, group_size)


def group_mean_std(rewards_B, group_size: int):
    """Per-row group mean and unbiased std ([B] each); singleton groups: mean 0, std 1."""
    r = _groups(rewards_B, group_size)
    if group_size == 1:
        return jnp.zeros_like(rewards_B, jnp.float32), jnp.ones_like(rewards_B, jnp.float32)
    mean = r.mean(-1, keepdims=True)
    std = jnp.sqrt(((r - mean) ** 2).sum(-1, keepdims=True) / (group_size - 1))
    G = group_size
    return jnp.repeat(mean, G, -1).reshape(-1), jnp.repeat(std, G, -1).reshape(-1)


def grpo(rewards_B, group_size: int, *, std_norm: bool = True, eps: float = 1e-6):
    """GRPO outcome advantage ``(R - mean_g) / (std_g + eps)``; Dr.GRPO with ``std_norm=False``."""
    mean, std = group_mean_std(rewards_B, group_size)
    adv = rewards_B.astype(jnp.float32) - mean
    return jax.lax.stop_gradient(adv / (std + eps) if std_norm else adv)


def dr_grpo(rewards_B, group_size: int):
    return grpo(rewards_B, group_size, std_norm=False)


def rloo(rewards_B, group_size: int):
    """``R_i - mean_{j != i} R_j = G/(G-1) (R_i - mean_g)``; singleton groups: ``A = R``."""
    r = rewards_B.astype(jnp.float32)
    if group_size == 1:
        return jax.lax.stop_gradient(r)
    mean, _ = group_mean_std(rewards_B, group_size)
    return jax.lax.stop_gradient(group_size / (group_size - 1) * (r - mean))


def masked_whiten(x_BxT, mask_BxT, eps: float = 1e-8):
    m = mask_BxT.astype(jnp.float32) > 0
    n = jnp.maximum(m.sum(), 1)
    mean = jnp.where(m, x_BxT, 0.0).sum() / n
    var = jnp.where(m, (x_BxT - mean) ** 2, 0.0).sum() / n
    return jnp.where(m, (x_BxT - mean) * jax.lax.rsqrt(var + eps), 0.0)


def gae(rewards_BxT, values_BxT, mask_BxT, gamma: float = 1.0, lam: float = 1.0,
        whiten: bool = True):
    """``(advantages_BxT, returns_BxT)``; returns = raw advantages + values (before whitening)."""
    m = (mask_BxT.astype(jnp.float32) > 0).astype(jnp.float32)
    r = jnp.where(m > 0, rewards_BxT, 0.0).astype(jnp.float32)
    v = jnp.where(m > 0, values_BxT, 0.0).astype(jnp.float32)

    def step(carry, xs):
        next_v, last_g = carry
        r_t, v_t, m_t = xs
        delta = r_t + gamma * next_v - v_t
        g = delta + gamma * lam * last_g
        next_v = v_t * m_t + (1.0 - m_t) * next_v
        last_g = g * m_t + (1.0 - m_t) * last_g
        return (next_v, last_g), last_g

    B = r.shape[0]
    zeros = jnp.zeros((B,), jnp.float32)
    _, adv_TxB = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
    adv = adv_TxB.T * m
    returns = adv + v
    if whiten:
        adv = masked_whiten(adv, m)
    return jax.lax.stop_gradient(adv), jax.lax.stop_gradient(returns)


def outcome_rewards_to_tokens(rewards_B, mask_BxT, kl_BxT=None, kl_coef: float = 0.0):
    """Token rewards for GAE: the task reward at each row's last active token, minus
    ``kl_coef * kl_t`` on every active token (verl ``compute_rewards``, k1 in the reward)."""
    m = mask_BxT.astype(jnp.float32) > 0
    T = m.shape[1]
    last_B = jnp.where(m.any(-1), T - 1 - jnp.argmax(m[:, ::-1], -1), 0)
    r = jax.nn.one_hot(last_B, T, dtype=jnp.float32) * rewards_B.astype(jnp.float32)[:, None]
    r = jnp.where(m, r, 0.0)
    if kl_BxT is not None and kl_coef:
        r = r - kl_coef * jnp.where(m, kl_BxT, 0.0)
    return r


# ----------------------------------------------------------------------------- DCPO SAS


def sas_init(num_prompts: int) -> dict:
    z = jnp.zeros((num_prompts,), jnp.float32)
    return {"times": jnp.zeros((num_prompts,), jnp.int32), "mean": z, "std": z}


def sas(rewards_B, group_size: int, prompt_ids_N, state: dict):
    """Smooth advantage standardization. ``prompt_ids_N``: the id of each group's prompt
    (distinct within a batch). Returns ``(adv_B, new_state)``."""
    if group_size < 2:
        raise ValueError("SAS needs group_size >= 2 (a group std)")
    r = _groups(rewards_B, group_size)  # [N, G]
    ids = jnp.asarray(prompt_ids_N, jnp.int32)
    new_mean = r.mean(-1)
    new_std = jnp.sqrt(((r - new_mean[:, None]) ** 2).sum(-1) / (group_size - 1))
    old_t = state["times"][ids]
    old_mean, old_std = state["mean"][ids], state["std"][ids]
    t = old_t + 1
    tf, otf = t.astype(jnp.float32), old_t.astype(jnp.float32)
    merged_mean = (old_mean * otf + new_mean) / tf
    merged_var = (otf * old_std**2 + new_std**2 + otf / tf * (new_mean - old_mean) ** 2) / tf
    first = old_t == 0
    cum_mean = jnp.where(first, new_mean, merged_mean)
    cum_std = jnp.where(first, new_std, jnp.sqrt(merged_var))

    def z(mean, std):
        s = std[:, None]
        return jnp.where(s > 0, (r - mean[:, None]) / jnp.where(s > 0, s, 1.0), 0.0)

    a_new, a_cum = z(new_mean, new_std), z(cum_mean, cum_std)
    w = 1.0 / (tf + 1.0)[:, None]
    a1 = w * a_cum + (1.0 - w) * a_new
    a2 = w * a_new + (1.0 - w) * a_cum
    adv = jnp.where(jnp.abs(a1) < jnp.abs(a2), a1, a2).reshape(-1)
    new_state = {"times": state["times"].at[ids].set(t),
                 "mean": state["mean"].at[ids].set(cum_mean),
                 "std": state["std"].at[ids].set(cum_std)}
    return jax.lax.stop_gradient(adv), new_state


ADVANTAGES = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}
