"""SFT a tiny byte GPT on integer arithmetic, then RL from a verifiable reward with 7 losses.

    python -m experiments.grpo_arithmetic --preset tiny     # CPU (2 cores), about 8-10 minutes
    python -m experiments.grpo_arithmetic --preset tiny --set exp.methods=grpo,dapo rl.group_size=4
    make smollm2 && python -m experiments.grpo_arithmetic --preset smollm2 --workdir runs/g_s0 \
        --set exp.methods=grpo train.seed=0 exp.results_dir=runs/g_s0/record   # ~25 min/method

``--preset smollm2``: SmolLM2-135M-Instruct (``make smollm2``) from the base model, no SFT
(``exp.sft_steps=0``), full fine-tuning (all 135M params, AdamW lr 1e-5; LoRA is not used here:
the runs compare losses, and full fine-tuning is what the GRPO-family papers report). Every prompt
goes through the checkpoint's chat template with the system message "You are a helpful
assistant." and the question "What is a + b? Answer with the number only." (``exp.prompt=chat``,
``rl.arithmetic``); the answer is the last integer of the assistant's text; sampling stops at
``<|im_end|>``; 16 new tokens fit "a + b = c" for 3-digit operands. Reward: exact match only
(``exp.format_weight=0``): with the 0.1 strict-format bonus of the byte-GPT preset, a first GRPO
run learned the bare-number format by step 5 and lost the "a + b = c" working its correct answers
came with (greedy held-out 0.125 -> 0.039 at step 15; results/grpo_arithmetic/smollm2/).
4 prompts x 8 samples per step, 20 steps, greedy held-out accuracy (128 problems in-distribution
1-2 digits, 128 with 3-digit operands) at steps 0/10/20 by the same evaluator as the base model.
Measured on a 2-core AMD EPYC shared with other jobs (load average ~2): about 60 s per step
(rollout of 32 samples + one full-parameter AdamW step on 32 x 56 tokens), ~1.5 min of loading
and compiling, ~1 min per greedy evaluation of 2 x 128 problems: about 25 minutes per method.
The 2-step CLI check in tests/test_smollm2_presets.py takes ~50 s.

Problems ``"a+b="`` / ``"a-b="`` are generated with a seed: 1-2 digit operands for training and
the in-distribution held-out set (disjoint problems), 3-digit operands for the longer-operand
held-out set. SFT (masked to the answer + EOS) on the training pool, then from the same SFT
checkpoint RL with each of ``exp.methods`` (grpo, dr_grpo, dapo, gspo, cispo, dcpo, ppo+GAE):
reward = exact answer match + 0.1 * strict format (+ DAPO's overlong shaping for dapo; dapo also
uses dynamic sampling). Greedy held-out accuracy vs RL step, mean response length, clip
fractions and k3 KL to the reference are logged. Writes checkpoints to ``--workdir`` and the
record (README.md, config.json, versions.json, metrics.jsonl, plot.png) to ``exp.results_dir``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from experiments.base import main, prepare_run_dir
from experiments.config import Config, RunCfg
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.pretrained import prompt_ids, run_tokenizer
from lm.sharding import ConfigError, MeshCfg
from lm.train import TrainCfg
from rl import rewards as RW
from rl.arithmetic import ArithmeticFormat, greedy_accuracy, problem_sets
from rl.loop import RLCfg, RLTask, train_rl
from rl.losses import LossCfg
from tokenization.bytes import ByteTokenizer

TOK = ByteTokenizer()
PROMPT_LEN = 8  # "999+999=" fits
PROMPTS = ("raw", "chat")


@dataclasses.dataclass(frozen=True)
class ExpCfg:
    methods: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "gspo", "cispo", "dcpo", "ppo")
    sft_steps: int = 600
    sft_batch: int = 64
    sft_lr: float = 3e-3
    train_pool: int = 4000
    eval_n: int = 256
    digits: tuple[int, ...] = (1, 2)
    long_digits: tuple[int, ...] = (3, 3)
    format_weight: float = 0.1
    overlong_cache: int = 2  # DAPO overlong shaping window (dapo only)
    results_dir: str = "results/grpo_arithmetic"
    # "raw": the problem text "a+b=" (answer = first integer); "chat": "What is a + b? Answer
    # with the number only." through the checkpoint's chat template (answer = last integer)
    prompt: str = "raw"
    system: str = ""  # chat: the system message ("" = none, the template's default)
    prompt_len: int = 0  # prompt width in tokens; 0 = 8 (raw; chat needs it set)

    def __post_init__(self):
        if self.prompt not in PROMPTS:
            raise ConfigError(f"exp.prompt={self.prompt!r} is not one of {list(PROMPTS)}")
        if self.prompt == "chat" and self.prompt_len < 1:
            raise ConfigError("exp.prompt=chat needs exp.prompt_len (the prompt width in tokens)")


@dataclasses.dataclass(frozen=True)
class GRPOConfig(Config):
    rl: RLCfg = RLCfg()
    loss: LossCfg = LossCfg()
    exp: ExpCfg = ExpCfg()


def tiny() -> GRPOConfig:
    return GRPOConfig(
        model=ModelCfg(vocab_size=264, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=32),
        opt=OptCfg(lr=2e-4, warmup=0, schedule="constant", weight_decay=0.0),
        mesh=MeshCfg(data=-1),
        train=TrainCfg(loss="grpo", steps=40, batch_size=128, seq_len=16, ckpt_every=20),
        rl=RLCfg(group_size=8, prompts_per_step=16, mu=2, max_new_tokens=6, eval_every=10),
        run=RunCfg(name="grpo_arithmetic_tiny", sample_tokens=0, progress=False))


SMOLLM2_DIR = "data_cache/smollm2-135m-instruct"  # `make smollm2`
SMOLLM2_SYSTEM = "You are a helpful assistant."


def smollm2() -> GRPOConfig:
    """SmolLM2-135M-Instruct (``make smollm2``), full fine-tuning from the base model (no SFT):
    chat prompts with a short system message, answer = last integer, EOS ``<|im_end|>``."""
    return GRPOConfig(
        model=ModelCfg(init_from=SMOLLM2_DIR, max_len=64),  # KV-cache bound: 40 + 16 tokens
        opt=OptCfg(lr=1e-5, warmup=0, schedule="constant", weight_decay=0.0),
        mesh=MeshCfg(data=-1),
        train=TrainCfg(loss="grpo", steps=20, batch_size=32, seq_len=56, ckpt_every=5),
        rl=RLCfg(group_size=8, prompts_per_step=4, mu=1, max_new_tokens=16, eval_every=10),
        exp=ExpCfg(methods=("grpo",), sft_steps=0, eval_n=128, prompt="chat", format_weight=0.0,
                   system=SMOLLM2_SYSTEM, prompt_len=40,  # 3-digit chat prompts are 38
                   results_dir="results/grpo_arithmetic/smollm2"),
        run=RunCfg(name="grpo_arithmetic_smollm2", sample_tokens=0, progress=False,
                   max_to_keep=1))


PRESETS = {"tiny": tiny, "smollm2": smollm2}


def prompt_format(e: ExpCfg, tok=TOK) -> ArithmeticFormat:
    """``exp.prompt``: the raw problem text, or the chat question (``rl.arithmetic``)."""
    if e.prompt == "chat":
        return ArithmeticFormat.chat(tok, width=e.prompt_len, system=e.system or None)
    return ArithmeticFormat.raw(tok, e.prompt_len or PROMPT_LEN)


def encode_prompts(prompts, tok=TOK):
    return ArithmeticFormat.raw(tok, PROMPT_LEN).encode(prompts)


def make_sets(e: ExpCfg, seed: int):
    return problem_sets(e.train_pool, e.eval_n, e.digits, e.long_digits, seed)


def sft(cfg: GRPOConfig, workdir: str, train, tok=TOK, fmt=None) -> dict:
    """Answer-masked next-token SFT with the shared train step; cached in workdir/sft.npz.
    ``exp.sft_steps=0``: the initial params (``model.init_from``'s), nothing cached."""
    from experiments.base import build
    from lm import sharding as sh
    from lm.checkpoint import load_params_npz, save_params_npz
    from lm.train import to_host
    path = os.path.join(workdir, "sft.npz")
    e = cfg.exp
    scfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, loss="xent", steps=e.sft_steps, batch_size=e.sft_batch),
        opt=OptCfg(lr=e.sft_lr, warmup=20))
    setup = build(scfg)
    if e.sft_steps == 0:
        return jax.device_get(setup.state["params"])
    if os.path.exists(path):
        return load_params_npz(path, jax.device_get(setup.state["params"]))
    fmt = fmt or prompt_format(e, tok)
    L = cfg.train.seq_len
    seqs = np.full((len(train), L + 1), tok.pad_id, np.int32)
    mask = np.zeros((len(train), L), np.float32)
    for i, (p, a) in enumerate(train):
        pi = prompt_ids(tok, p) if fmt.chat_render is None else fmt.ids(p)
        ai = tok.encode(str(a), add_eos=True)
        s = np.concatenate([pi, ai])[: L + 1]
        seqs[i, : len(s)] = s
        mask[i, len(pi) - 1: len(s) - 1] = 1.0
    rng = np.random.default_rng(cfg.train.seed)
    state = setup.state
    for step in range(e.sft_steps):
        idx = rng.integers(0, len(train), e.sft_batch)
        b = {"inputs": seqs[idx, :-1], "targets": seqs[idx, 1:], "mask": mask[idx]}
        state, met = setup.train_step(state, sh.shard_batch(b, setup.mesh))
        if (step + 1) % 100 == 0:
            print(f"sft step {step + 1}: loss {to_host(met)['loss']:.4f}", flush=True)
    params = jax.device_get(state["params"])
    save_params_npz(path, params)  # atomic: a killed run never leaves half a cache
    return params


def accuracy(graphdef, params, items, max_new: int, tok=TOK, fmt=None) -> tuple[float, float]:
    """Greedy exact-match accuracy and mean completion length (tokens incl. EOS)."""
    fmt = fmt or ArithmeticFormat.raw(tok, PROMPT_LEN)
    return greedy_accuracy(graphdef, params, items, max_new, fmt)


def make_task(cfg: GRPOConfig, train, held, long_, method: str, tok=TOK, fmt=None) -> RLTask:
    e, rc = cfg.exp, cfg.rl
    overlong = method == "dapo" and e.overlong_cache > 0
    fmt = fmt or prompt_format(e, tok)

    def prompts(i):
        rng = np.random.default_rng([cfg.train.seed, i])
        ids = rng.choice(len(train), rc.prompts_per_step, replace=False)
        x, lens = fmt.encode([train[j][0] for j in ids])
        return x, lens, [train[j][1] for j in ids], ids

    def reward(texts, answers, finished, lengths):
        acc = fmt.score(texts, answers)
        form = RW.format_reward(texts, finished)
        r = acc + e.format_weight * form
        if overlong:
            r = r + RW.overlong_penalty(lengths, rc.max_new_tokens, e.overlong_cache)
        return r, {"train_accuracy": float(acc.mean()), "format": float(form.mean())}

    def evaluate(graphdef, params):
        a_in, len_in = accuracy(graphdef, params, held, rc.max_new_tokens, tok, fmt)
        a_long, _ = accuracy(graphdef, params, long_, rc.max_new_tokens, tok, fmt)
        return {"acc_heldout": a_in, "acc_long": a_long, "greedy_length": len_in}

    return RLTask(prompts, reward, evaluate, lambda ids: tok.decode(ids), len(train),
                  tok.eos_id, tok.pad_id)


def table(records: dict, base: dict) -> tuple[str, list[str]]:
    """Markdown results table (final held-out accuracy etc. per method) and its rows."""
    head = ("| method | held-out acc (SFT -> RL) | long-operand acc | train reward (last 5) | "
            "resp. length | clipfrac | k3 KL to ref |\n|---|---|---|---|---|---|---|")
    rows = []
    for m, recs in records.items():
        ev = [r for r in recs if r["split"] == "eval"]
        trn = [r for r in recs if r["split"] == "train"][-5:]
        mean = lambda k, trn=trn: float(np.mean([r.get(k, np.nan) for r in trn]))  # noqa: E731
        rows.append(f"| {m} | {base['acc_heldout']:.3f} -> {ev[-1]['acc_heldout']:.3f} | "
                    f"{base['acc_long']:.3f} -> {ev[-1]['acc_long']:.3f} | "
                    f"{mean('reward'):.3f} | {mean('response_length'):.2f} | "
                    f"{mean('pg_clipfrac'):.3f} | {mean('kl_ref'):.4f} |")
    return head + "\n" + "\n".join(rows), rows


def plot(records: dict, base: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m, recs in records.items():
        ev = [r for r in recs if r["split"] == "eval"]
        trn = [r for r in recs if r["split"] == "train"]
        axes[0].plot([r["step"] for r in ev], [r["acc_heldout"] for r in ev], "o-", label=m)
        axes[1].plot([r["step"] for r in trn], [r.get("response_length", 0) for r in trn],
                     label=m)
        axes[2].plot([r["step"] for r in trn], [r.get("kl_ref", 0) for r in trn], label=m)
    axes[0].axhline(base["acc_heldout"], color="k", ls=":", label="SFT")
    for ax, t in zip(axes, ("greedy held-out accuracy", "mean response length (tokens)",
                            "k3 KL to reference (token mean)")):
        ax.set_title(t)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: GRPOConfig, workdir: str, argv=None) -> dict:
    from experiments.base import build
    from lm.losses import get_loss
    from lm.sharding import ConfigError
    from rl import report
    for m in cfg.exp.methods:
        if getattr(get_loss(m), "kind", None) != "policy":
            raise ConfigError(f"exp.methods: {m!r} is not a registered policy loss")
    prepare_run_dir(workdir, cfg)
    tok = run_tokenizer(cfg.model, TOK)  # the checkpoint's with model.init_from
    fmt = prompt_format(cfg.exp, tok)
    train, held, long_ = make_sets(cfg.exp, cfg.train.seed)
    sft_params = sft(cfg, workdir, train, tok, fmt)
    gd = build(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss="xent"))
               ).graphdef
    base = {"acc_heldout": accuracy(gd, sft_params, held, cfg.rl.max_new_tokens, tok, fmt)[0],
            "acc_long": accuracy(gd, sft_params, long_, cfg.rl.max_new_tokens, tok, fmt)[0]}
    print(f"SFT: held-out {base['acc_heldout']:.3f}, long {base['acc_long']:.3f}", flush=True)
    records = {}
    for m in cfg.exp.methods:
        mcfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, loss=m),
            rl=dataclasses.replace(cfg.rl, dynamic_sampling=cfg.rl.dynamic_sampling or
                                   m == "dapo"))
        task = make_task(mcfg, train, held, long_, m, tok, fmt)
        records[m] = train_rl(mcfg, os.path.join(workdir, m), task=task,
                              policy_params=sft_params, ref_params=sft_params)
    md, _ = table(records, base)
    print(md)
    out = cfg.exp.results_dir
    os.makedirs(out, exist_ok=True)
    plot(records, base, os.path.join(out, "plot.png"))
    report.write(out, cfg, argv, records, {"sft": base}, md)
    return {"records": records, "sft": base, "table": md}


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
