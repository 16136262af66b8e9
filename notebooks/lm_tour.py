# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of `lm`: build a tiny GPT, train a few steps, look at its hidden states, sample
#
# Everything here imports the same library the experiments use; the notebook holds no library code.
# It runs on a laptop CPU in well under a minute.

# %%
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.config import Config
from lm import sharding as sh
from lm.data import DataCfg, make_train_iter
from lm.losses import bind, get_loss
from lm.model import GPT, ModelCfg, count_params
from lm.optim import OptCfg, make_optimizer
from lm.sample import SampleCfg, generate
from lm.train import TrainCfg, init_state, make_train_step, state_shardings
from tokenization.bytes import ByteTokenizer

cfg = Config(
    model=ModelCfg(vocab_size=264, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=128),
    opt=OptCfg(lr=3e-3, warmup=5),
    data=DataCfg(source="synthetic"),
    train=TrainCfg(steps=30, batch_size=8, seq_len=64),
)
print(jax.devices())

# %% [markdown]
# ## Sharded, abstract-first initialisation
# `init_params` builds the model with `nnx.eval_shape`, maps each parameter's logical axis names
# through `lm.sharding.RULES` and materialises the params with `jax.jit(out_shardings=...)`.

# %%
mesh = sh.make_mesh(cfg.mesh)
graphdef, params, p_shard = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(0)), mesh)
print(f"{count_params(params):,} parameters")
print(jax.tree.map(lambda x: x.sharding.spec, params)["block_0"]["attn"])

# %% [markdown]
# ## Train a few steps with the registered `xent` loss

# %%
tx, lr_fn = make_optimizer(cfg.opt, params, cfg.train.steps)
shapes = jax.eval_shape(lambda p: init_state(p, tx, 0), params)
s_shard = state_shardings(shapes, p_shard, mesh)
state = jax.jit(lambda p: init_state(p, tx, 0), out_shardings=s_shard)(params)
step = make_train_step(get_loss("xent"), tx, model=graphdef, cfg=cfg, mesh=mesh,
                       state_sharding=s_shard, lr_fn=lr_fn)
it = make_train_iter(cfg.data, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, seed=0)
losses = []
for _ in range(cfg.train.steps):
    state, metrics = step(state, sh.shard_batch(next(it), mesh))
    losses.append(float(metrics["loss"][0] / metrics["loss"][1]))
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert losses[-1] < losses[0]

# %% [markdown]
# ## Per-layer hidden states
# The same forward returns the residual stream after the embedding and after each block
# (what the IBLM loss reads). Here: the norm and the effective rank of each layer's states.

# %%
model = bind(graphdef, state["params"])
batch = next(it)
logits, hiddens = model(jnp.asarray(batch["inputs"]), return_hidden=True)
for i, h in enumerate(hiddens):
    z = np.asarray(h.reshape(-1, h.shape[-1]), np.float64)
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s**2 / (s**2).sum()
    eff_rank = float(np.exp(-(p * np.log(p + 1e-12)).sum()))
    print(f"layer {i}: mean |h| = {np.linalg.norm(z, axis=-1).mean():6.2f}  "
          f"effective rank = {eff_rank:5.1f} / {z.shape[-1]}")

# %% [markdown]
# ## Sample with the KV cache

# %%
tok = ByteTokenizer()
prompt = tok.encode("abc")
out = generate(graphdef, jax.device_get(state["params"]), prompt[None], np.array([len(prompt)]),
               SampleCfg(max_new_tokens=40, temperature=0.8, top_k=20), jax.random.key(0))
print(repr(tok.decode(np.asarray(out["tokens_BxT"][0]))))
print("mean log-prob per token:", float(out["logp_BxT"].sum() / out["mask_BxT"].sum()))
