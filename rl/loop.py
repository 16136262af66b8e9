"""The RL loop: rollout -> rewards -> advantages -> mu optimizer steps -> repeat. No trainer class.

    recs = train_rl(cfg, workdir, task=task, policy_params=sft, ref_params=sft)

``cfg`` is an experiment ``Config`` with ``rl: RLCfg`` and ``loss: LossCfg`` sections;
``cfg.train.loss`` names the policy loss (any ``kind="policy"`` entry of the registry) and the
policy update is the unchanged ``lm.train`` step built by ``experiments.base.build``. The
behaviour policy is the current params at rollout time (synced every step: the ``mu`` updates
on one batch see ratios != 1 from the second on); the reference is frozen. PPO (``gae``) trains a
separate critic GPT (``rl.losses.value_loss_fn``) with its own step. Advantages: ``rl.advantages``
chosen by ``rl.advantage`` ("auto": dr_grpo -> Dr.GRPO, dcpo -> SAS with explicit state,
ppo -> GAE, else GRPO). DAPO-style dynamic sampling with ``rl.dynamic_sampling``.
Checkpoints (policy + critic + SAS state + step) every ``train.ckpt_every`` steps; rerunning
resumes from the last one (a resumed run draws the same prompts and samples: both are keyed
by the step number).

``RLTask`` bundles the task's plain functions: ``prompts(step) -> (prompt_NxP, len_N, answers,
ids_N)``, ``reward(completions, answers, finished, lengths) -> (rewards_B, metrics)``,
``evaluate(graphdef, params) -> metrics`` and ``decode(ids) -> str``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm.sample import SampleCfg
from lm.sharding import ConfigError
from rl import advantages as ADV
from rl.losses import values
from rl.rollout import completions_text, dynamic_sample, rollout

ADVANTAGE_CHOICES = ("auto", "grpo", "dr_grpo", "rloo", "gae", "sas")
AUTO = {"dr_grpo": "dr_grpo", "dcpo": "sas", "ppo": "gae"}


@dataclasses.dataclass(frozen=True)
class RLCfg:
    group_size: int = 8
    prompts_per_step: int = 16
    mu: int = 1  # optimizer steps per rollout batch
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    advantage: str = "auto"
    dynamic_sampling: bool = False
    max_draws: int = 3
    reward_kl_coef: float = 0.0  # GAE: -coef * (old_logp - ref_logp) per token (k1 in reward)
    gamma: float = 1.0
    lam: float = 1.0
    critic_lr: float = 1e-3
    eval_every: int = 10
    # behaviour/reference log-probs of rollouts (rl.rollout): "forward" recomputes both with one
    # stacked training forward (first ratio exactly 1), "cached" takes the sampler's and scores
    # the reference through the shared prompt cache; "auto": forward, cached under model.lora
    scoring: str = "auto"

    def __post_init__(self):
        if self.advantage not in ADVANTAGE_CHOICES:
            raise ConfigError(f"rl.advantage={self.advantage!r} is not one of "
                              f"{ADVANTAGE_CHOICES}")
        if self.scoring not in ("auto", "forward", "cached"):
            raise ConfigError(f"rl.scoring={self.scoring!r} is not one of "
                              "('auto', 'forward', 'cached')")
        if self.group_size < 1 or self.prompts_per_step < 1 or self.mu < 1:
            raise ConfigError("rl.group_size, rl.prompts_per_step and rl.mu must be >= 1")


@dataclasses.dataclass(frozen=True)
class RLTask:
    prompts: Callable
    reward: Callable
    evaluate: Callable
    decode: Callable
    num_prompts: int
    eos_id: int
    pad_id: int


def advantage_kind(cfg) -> str:
    a = cfg.rl.advantage
    return AUTO.get(cfg.train.loss, "grpo") if a == "auto" else a


def _place(tree, shardings):
    return jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), tree, shardings)


def train_rl(cfg, workdir: str, *, task: RLTask, policy_params, ref_params, log=print) -> list:
    """Run ``cfg.train.steps`` RL steps from ``policy_params``; returns the metric records."""
    from lm import lora
    from lm import metrics as M
    from lm import sharding as sh
    from lm.checkpoint import Checkpointer, abstract_target
    from lm.losses import get_loss
    from lm.setup import build
    from lm.train import to_host

    rc, tr = cfg.rl, cfg.train
    if getattr(get_loss(tr.loss), "kind", None) != "policy":
        raise ConfigError(f"train.loss={tr.loss!r} is not a policy loss for the RL loop")
    kind = advantage_kind(cfg)
    os.makedirs(workdir, exist_ok=True)
    setup = build(cfg)
    mesh, rep = setup.mesh, NamedSharding(setup.mesh, P())
    state = dict(setup.state)
    if lora.trainable_fn(setup.cfg.model) is None:
        state["params"] = _place(policy_params, setup.state_sharding["params"])
        ref = _place(ref_params, setup.state_sharding["params"])
    else:  # LoRA: ``policy_params`` (adapters merged in, if it has any) is the frozen base under
        # fresh adapters; the reference is that base with adapters off (``lora.disabled``), no
        # second copy of the weights (``ref_params`` must be the same model: it is not read)
        state["params"] = lora.on_base(state["params"], policy_params,
                                       setup.state_sharding["params"], setup.cfg.model)
        ref = None
    critic = None
    if kind == "gae":
        ccfg = dataclasses.replace(cfg, train=dataclasses.replace(tr, loss="value"),
                                   opt=dataclasses.replace(cfg.opt, lr=rc.critic_lr))
        critic = build(ccfg, mesh=mesh)
    sas_state = ADV.sas_init(task.num_prompts)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.run.max_to_keep,
                        frozen=lora.frozen_state_fn(setup.cfg.model))  # LoRA: adapters only
    full = {"policy": state, "critic": critic.state if critic else {}, "sas": sas_state}
    start = 0
    shard = {"policy": setup.state_sharding, "critic": critic.state_sharding if critic else {},
             "sas": jax.tree.map(lambda _: rep, sas_state)}
    restored = ckpt.restore_latest(abstract_target(jax.eval_shape(lambda: full), shard),
                                   check=lambda data: int(data["step"]), log=log, fill=full)
    if restored is not None:  # the newest readable checkpoint (an unreadable one is logged)
        _, full, data = restored
        start = int(data["step"])
        log(f"resumed {workdir} at RL step {start}")
    state, sas_state = full["policy"], full["sas"]
    cstate = full["critic"] if critic else None
    writer = M.MetricsWriter(workdir)
    M.truncate_jsonl(writer.path, start)
    scfg = SampleCfg(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature,
                     top_p=rc.top_p, eos_id=task.eos_id, pad_id=task.pad_id)
    G, key = rc.group_size, jax.random.key(tr.seed + 17)
    scoring = rc.scoring if rc.scoring != "auto" else ("forward" if ref is not None
                                                       else "cached")

    def draw(step, i):
        prompt, plen, answers, ids = task.prompts(step * 1000 + i)
        ro = rollout(setup.graphdef, state["params"],
                     lora.disabled(state["params"]) if ref is None else ref, prompt, plen,
                     group_size=G, scoring=scoring,
                     sample_cfg=scfg, rng=jax.random.fold_in(key, step * 1000 + i))
        texts = completions_text(ro, task.decode)
        ans_B = [a for a in answers for _ in range(G)]
        r, rm = task.reward(texts, ans_B, np.asarray(ro["finished"]), np.asarray(ro["lengths"]))
        keep = {k: np.asarray(ro[k]) for k in ("tokens", "mask", "old_logp", "ref_logp",
                                               "lengths")}
        return keep, r, list(zip(ids, [rm] * len(ids)))

    if start == 0:
        writer.write(0, task.evaluate(setup.graphdef, jax.device_get(state["params"])), "eval")
    for step in range(start, tr.steps):
        if rc.dynamic_sampling:
            batch, rewards, extras, info = dynamic_sample(lambda i, s=step: draw(s, i),
                                                          rc.prompts_per_step, G, rc.max_draws)
            ids = [e[0] for e in extras]
            rmet = {"ds/kept_groups": info["kept_groups"], "ds/draws": info["draws"]}
        else:
            batch, rewards, extras = draw(step, 0)
            ids, rmet = [e[0] for e in extras], dict(extras[0][1]) if extras else {}
        r = jnp.asarray(rewards)
        mask = jnp.asarray(batch["mask"])
        if kind == "gae":
            v = values(critic.graphdef, cstate["params"], jnp.asarray(batch["tokens"]))
            kl = jnp.asarray(batch["old_logp"] - batch["ref_logp"])
            tok_r = ADV.outcome_rewards_to_tokens(r, mask, kl, rc.reward_kl_coef)
            adv, ret = ADV.gae(tok_r, v, mask, rc.gamma, rc.lam)
            cb = sh.shard_batch({"tokens": batch["tokens"], "mask": batch["mask"],
                                 "old_values": np.asarray(v), "returns": np.asarray(ret)},
                                mesh)
            for _ in range(rc.mu):
                cstate, cm = critic.train_step(cstate, cb)
        else:
            if kind == "sas":
                adv_B, sas_state = ADV.sas(r, G, jnp.asarray(ids), sas_state)
            else:
                adv_B = ADV.ADVANTAGES[kind](r, G)
            adv = adv_B[:, None] * mask
        tb = sh.shard_batch({"tokens": batch["tokens"], "mask": batch["mask"],
                             "old_logp": batch["old_logp"], "ref_logp": batch["ref_logp"],
                             "adv": np.asarray(adv, np.float32)}, mesh)
        for _ in range(rc.mu):
            state, met = setup.train_step(state, tb)
        host = to_host(met)
        if kind == "gae":
            host.update({f"critic/{k}": v for k, v in to_host(cm).items()
                         if k in ("vf_loss", "vf_clipfrac")})
        lengths = np.asarray(batch["lengths"])
        host.update(rmet, reward=float(np.mean(rewards)), response_length=float(lengths.mean()),
                    frac_zero_std=float(np.mean(np.asarray(
                        rewards).reshape(-1, G).std(-1) == 0)))
        if not np.isfinite(host["loss"]):
            raise FloatingPointError(f"RL loss is {host['loss']} at step {step + 1}")
        writer.write(step + 1, host, "train")
        s1 = step + 1
        if s1 % rc.eval_every == 0 or s1 == tr.steps:
            ev = task.evaluate(setup.graphdef, jax.device_get(state["params"]))
            writer.write(s1, ev, "eval")
            log(f"[{tr.loss}] step {s1}: reward {host['reward']:.3f} "
                + " ".join(f"{k} {v:.3f}" for k, v in ev.items()))
        if s1 % tr.ckpt_every == 0 or s1 == tr.steps:
            ckpt.save(s1, {"policy": state, "critic": cstate if critic else {},
                           "sas": sas_state}, {"step": s1})
    ckpt.close()
    writer.close()
    return M.read_jsonl(writer.path)
