# %% [markdown]
# # Loss zoo: clipped policy objectives and every registered RL / preference loss
#
# The per-token objective of each clipped loss as a function of the ratio
# `r = pi / pi_old`, and its gradient with respect to `log pi`, for A > 0 and A < 0; then every
# loss in `rl.losses.LOSSES` on one batch of a tiny GPT. Everything comes from the library.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from lm.model import GPT, ModelCfg
from rl import losses, policy

# %%
ratios = jnp.linspace(0.2, 3.0, 281)
old = jnp.full((1, 1), -1.0)
fns = {"ppo (dual clip 3)": policy.ppo_clip, "dapo (0.2/0.28)": policy.dapo,
       "cispo": policy.cispo, "dcpo (q=e^-1)": policy.dcpo}


def curve(fn, adv):
    def per_ratio(r):
        f = lambda lp: fn(lp, old, jnp.full((1, 1), adv), jnp.ones((1, 1)))[0]  # noqa: E731
        return jax.value_and_grad(f)(old + jnp.log(r))
    v, g = jax.vmap(per_ratio)(ratios)
    return -v, -g[:, 0, 0]  # objective = -loss


fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
for j, adv in enumerate((1.0, -1.0)):
    for name, fn in fns.items():
        obj, grad = curve(fn, adv)
        axes[0, j].plot(ratios, obj, label=name)
        axes[1, j].plot(ratios, grad, label=name)
    axes[0, j].set_title(f"objective, A = {adv:+.0f}")
    axes[1, j].set_title(f"d objective / d log pi, A = {adv:+.0f}")
    axes[1, j].set_xlabel("ratio pi / pi_old")
for ax in axes.flat:
    ax.grid(alpha=0.3)
axes[0, 0].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# CISPO's objective `-sg(clip(r)) * A * log pi` is not a function of `r` alone (it is plotted at
# `log pi_old = -1`); its gradient never vanishes, unlike the PPO family outside the clip range.
# DCPO's bounds widen as the behaviour probability `q` falls (`rl.policy.dcpo_bounds`):

# %%
q = jnp.logspace(-3, 0, 50)
lo, hi = policy.dcpo_bounds(jnp.log(q))
plt.figure(figsize=(5, 3.5))
plt.semilogx(q, lo, label="lower")
plt.semilogx(q, hi, label="upper")
plt.xlabel("behaviour probability q")
plt.ylabel("ratio bound")
plt.legend()
plt.grid(alpha=0.3)

# %% [markdown]
# ## Every registered loss on one batch

# %%
cfg = ModelCfg(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)
gd, state = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
params = nnx.to_pure_dict(state)
ref = nnx.to_pure_dict(nnx.split(GPT(cfg, rngs=nnx.Rngs(1)), nnx.Param)[1])
rng = np.random.default_rng(0)
B, S = 4, 12
mask = np.zeros((B, S), np.float32)
mask[:, 4:10] = 1
tokens = rng.integers(0, 64, (B, S)).astype(np.int32)
old_logp = -rng.random((B, S)).astype(np.float32) * 4 * mask
policy_batch = {"tokens": tokens, "mask": mask, "old_logp": old_logp,
                "ref_logp": old_logp - 0.1 * mask,
                "adv": np.repeat(rng.normal(size=(B, 1)), S, 1).astype(np.float32) * mask}
batches = {
    "policy": policy_batch,
    "value": {"tokens": tokens, "mask": mask, "old_values": np.zeros((B, S), np.float32),
              "returns": mask},
    "preference": {"chosen_tokens": tokens[:2], "rejected_tokens": tokens[2:],
                   "chosen_mask": mask[:2], "rejected_mask": mask[2:],
                   "loss_state": {"ref_params": ref}},
}
print(f"{'loss':12s} {'kind':11s} {'value':>9s}  metrics")
for name, fn in losses.LOSSES.items():
    loss, aux = fn(params, batches[fn.kind], model=gd, cfg=None)
    shown = {k: float(v[0] / v[1]) for k, v in aux.items() if k != "loss"}
    extra = ", ".join(f"{k}={v:.3f}" for k, v in list(shown.items())[:4])
    print(f"{name:12s} {fn.kind:11s} {float(loss):9.4f}  {extra}")
