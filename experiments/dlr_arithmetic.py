"""DLR vs SFT post-training at equal optimizer steps on generated arithmetic (spec §4.4 E0/E1).

    python -m experiments.dlr_arithmetic --preset tiny --workdir results/dlr_arithmetic/tiny

Expected CPU time (2 cores): pretraining 12k steps, about 20-25 minutes, then about 15 s per
post-training run (2 tasks x 6 arms x 3 seeds, about 9 minutes); the recorded run (with the K
and alpha sweeps, on a shared machine) took 40 minutes; its wall time is in
``summary.json``. The smoke preset (the test suite's) takes well under a minute.

1. Pretrain one tiny GPT (explicit-operator six-digit add/sub, answers reversed) with ``xent``.
2. Post-train it, low data, the same number of optimizer steps per method, on
   (a) ``addsub`` (E0, fresh examples) and (b) ``hidden`` (E1: the operator is hidden, decided by
   the parity of a's leading digit), for every method and seed:
   ``sft`` (xent), ``dlr`` (C = model.dlr.codes = 8), ``dlr_c1`` (one static steering vector),
   ``dlr_c32`` (C = 32), ``dlr_n1`` (one on-policy draw, no search), ``dlr_ap0``
   (alpha_policy = 0); optional sweeps ``dlr_k1``/``dlr_k2`` (chunk K) and
   ``dlr_alpha0.3``/``dlr_alpha3`` (steering scale) via ``--set exp.methods=...``.
3. Greedy exact-match on held-out examples with KV-cache decoding: routed codes, and the paper's
   global ablations (steering scale -> 0, uniformly random codes); 95% bootstrap CIs over test
   examples; code-vs-ground-truth mutual information (carry/borrow bit; hidden operator).
Writes config.json, versions.json, raw.jsonl (train curves + one record per evaluated run),
summary.json, table.md and plot.png into ``--workdir``. Every model is built with the DLR hook;
``sft`` never touches the code book, which stays zero, so it is exactly the base model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

from experiments.base import main, prepare_run_dir
from experiments.config import Config
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.routing import DLRCfg
from lm.train import TrainCfg

# method -> overrides of model.dlr (``sft`` trains with xent and never touches the code book).
# The first six are the arms (run by the tiny preset); the rest are the spec's K and
# alpha sweeps, selected with ``--set exp.methods=...``.
METHODS = {"sft": {}, "dlr": {}, "dlr_c1": {"codes": 1}, "dlr_c32": {"codes": 32},
           "dlr_n1": {"n_search": 1, "greedy": False}, "dlr_ap0": {"alpha_policy": 0.0},
           "dlr_k1": {"chunk": 1}, "dlr_k2": {"chunk": 2},
           "dlr_alpha0.3": {"alpha": 0.3}, "dlr_alpha3": {"alpha": 3.0}}
ARMS = ("sft", "dlr", "dlr_c1", "dlr_c32", "dlr_n1", "dlr_ap0")


@dataclasses.dataclass(frozen=True)
class ArithCfg:
    tasks: tuple[str, ...] = ("addsub", "hidden")
    methods: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_n: int = 100_000
    pretrain_steps: int = 12_000
    pretrain_batch: int = 128
    pretrain_lr: float = 1e-3
    pretrain_warmup: int = 200
    post_n: int = 1024  # low-data post-training set per seed
    post_steps: int = 300
    post_lr: float = 3e-4
    batch_size: int = 32
    test_n: int = 1024
    log_every: int = 20
    base_from: str = ""  # a base.npz of an earlier run: skip pretraining (sweeps reuse one base)


@dataclasses.dataclass(frozen=True)
class ArithConfig(Config):
    exp: ArithCfg = ArithCfg()


def tiny() -> ArithConfig:
    from rl.dlr_tasks import VOCAB
    dl = DLRCfg(layer=2, codes=8, chunk=4, alpha=1.0, n_search=4, alpha_policy=0.5, alpha_reg=0.1)
    # learned absolute positions: answer digit j must read operand digits whose distance to it
    # changes with j (operands are written most significant first), which RoPE learned slowly
    # and unreliably here (6k steps: 0.59 answer-token accuracy on CPU vs 0.90 on a GPU run)
    return ArithConfig(model=ModelCfg(vocab_size=VOCAB, d_model=128, n_layers=4, n_heads=4,
                                      d_ff=512, max_len=32, pos="learned", dlr=dl),
                       opt=OptCfg(lr=1e-3, warmup=10, schedule="constant", weight_decay=0.0),
                       train=TrainCfg(seed=0))


def smoke() -> ArithConfig:
    """A few steps of everything (the test suite's end-to-end run)."""
    cfg = tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=64, d_ff=256))
    return dataclasses.replace(cfg, exp=dataclasses.replace(
        cfg.exp, seeds=(0,), methods=("sft", "dlr"), pretrain_n=256, pretrain_steps=4,
        pretrain_batch=16, post_n=64, post_steps=3, batch_size=8, test_n=16, log_every=2))


PRESETS = {"tiny": tiny, "smoke": smoke}


def method_model(cfg: ArithConfig, method: str) -> ModelCfg:
    if method not in METHODS:
        from lm.sharding import ConfigError
        raise ConfigError(f"exp.methods: {method!r} is not one of {sorted(METHODS)}")
    return dataclasses.replace(cfg.model, dlr=dataclasses.replace(cfg.model.dlr,
                                                                  **METHODS[method]))


def graphdef(model_cfg):
    from flax import nnx

    from lm.model import GPT
    return nnx.split(nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)[0]


@functools.cache
def step_fn(model_cfg, opt, loss_name, steps):
    """One jitted train step per (model, optimizer, loss): seeds and tasks reuse its compile."""
    import jax
    from flax import nnx

    from lm import lora
    from lm.losses import get_loss
    from lm.model import GPT
    from lm.optim import make_optimizer
    from lm.train import make_train_step

    gd = graphdef(model_cfg)
    shapes = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(GPT(model_cfg,
                                                                 rngs=nnx.Rngs(0)), nnx.Param)))
    tx, _ = make_optimizer(opt, lora.trainable_subset(shapes, model_cfg), steps)
    cfg = Config(model=model_cfg, opt=opt)
    return gd, tx, make_train_step(get_loss(loss_name), tx, model=gd, cfg=cfg,
                                   trainable=lora.trainable_fn(model_cfg))


def train_params(model_cfg, opt, loss_name, init_params, batches, steps, seed, log):
    """``steps`` optimizer steps from ``init_params`` (a pure dict of this model's shape)."""
    import jax

    from lm import lora
    from lm.train import init_state, to_host

    gd, tx, step = step_fn(model_cfg, opt, loss_name, steps)
    state = init_state(init_params, tx, seed, None, lora.trainable_fn(model_cfg))
    for i, b in enumerate(batches):
        state, met = step(state, b)
        if (i + 1) % log["every"] == 0 or i + 1 == steps:
            log["fn"](i + 1, to_host(met))
    return gd, jax.device_get(state["params"])


def with_dlr_params(model_cfg, base_params, seed):
    """Fresh DLR params for ``seed`` (zero code book, random router) on top of base params."""
    from flax import nnx

    from lm.model import GPT
    fresh = nnx.to_pure_dict(nnx.state(GPT(model_cfg, rngs=nnx.Rngs(seed)), nnx.Param))
    return {**fresh, **{k: v for k, v in base_params.items() if k != "dlr"}}


def load_base(path: str, model_cfg) -> dict:
    """A ``base.npz`` of an earlier run, shaped like ``model_cfg``'s params (else ConfigError)."""
    import jax

    from lm.checkpoint import load_params_npz
    from lm.sharding import ConfigError
    try:
        return load_params_npz(path, jax.eval_shape(lambda: with_dlr_params(model_cfg, {}, 0)))
    except ValueError as e:
        raise ConfigError(f"exp.base_from: {e}") from None


def evaluate(gd, params, test, method, chunk):
    """Exact match per example for each decoding mode, and code-vs-truth MI (bits)."""
    import jax
    import numpy as np

    from rl import dlr_tasks as T
    from rl.dlr_generate import generate_routed
    prompt = test["tokens"][:, :T.PROMPT]
    answer = test["tokens"][:, T.PROMPT:]
    out = {}
    for mode in (("off",) if method == "sft" else ("route", "off", "random")):
        toks, codes = generate_routed(gd, params, prompt, T.ANS, mode=mode,
                                      rng=jax.random.key(7))
        out[mode] = (np.asarray(toks) == answer).all(1).astype(np.float32)
        out[f"digit_{mode}"] = float((np.asarray(toks) == answer).mean())
        if mode == "route":
            codes = np.asarray(codes)
            idx, carry = T.answer_chunk_labels(test, chunk)
            ans_chunks = [m for m in range(codes.shape[1]) if (m + 1) * chunk > T.PROMPT - 1
                          and m * chunk < T.SEQ - 1]
            c_ans = codes[:, ans_chunks]
            out["mi_carry"] = T.mutual_information(codes[:, idx], carry)
            out["mi_op"] = T.mutual_information(c_ans, np.repeat(test["op"][:, None],
                                                                 len(ans_chunks), 1))
            out["codes_used"] = int(len(np.unique(c_ans)))
    return out


def run(cfg: ArithConfig, workdir: str, argv=None) -> dict:
    import numpy as np

    from lm import metrics as M
    from lm.checkpoint import save_params_npz
    from rl import dlr_tasks as T
    from rl.dlr_plot import plot, table

    ex, t0 = cfg.exp, time.perf_counter()
    for method in ex.methods:
        method_model(cfg, method)  # ConfigError before any work
    if not set(ex.tasks) <= set(T.TASKS) or not ex.seeds:
        from lm.sharding import ConfigError
        raise ConfigError(f"exp.tasks={ex.tasks} must be a non-empty subset of {T.TASKS} "
                          "and exp.seeds non-empty")
    pre_cfg = dataclasses.replace(cfg.model, dlr=DLRCfg())
    base = load_base(ex.base_from, pre_cfg) if ex.base_from else None  # checked before writing
    if prepare_run_dir(workdir, cfg) and not cfg.run.overwrite:
        from lm.sharding import ConfigError
        raise ConfigError(f"--workdir {workdir} already holds this experiment (it does not "
                          "resume); choose another --workdir or pass --set run.overwrite=true")
    M.write_provenance(workdir, argv=argv, allow_dirty=cfg.run.allow_dirty)
    raw = open(os.path.join(workdir, "raw.jsonl"), "w")

    def logger(**tags):
        fn = lambda step, m: raw.write(json.dumps({**tags, "step": step, **m}) + "\n")
        return {"every": ex.log_every, "fn": fn}

    if base is None:
        pre_opt = dataclasses.replace(cfg.opt, lr=ex.pretrain_lr, warmup=ex.pretrain_warmup,
                                      schedule="cosine")
        pre = T.make("addsub", ex.pretrain_n, seed=10_000)
        base = with_dlr_params(pre_cfg, {}, cfg.train.seed)
        _, base = train_params(pre_cfg, pre_opt, "xent", base,
                               T.batches(pre, ex.pretrain_batch, ex.pretrain_steps, 0),
                               ex.pretrain_steps, cfg.train.seed, logger(phase="pretrain"))
        save_params_npz(os.path.join(workdir, "base.npz"), base)  # a reused base is not copied
    print(f"pretrained in {time.perf_counter() - t0:.0f}s")
    post_opt = dataclasses.replace(cfg.opt, lr=ex.post_lr)
    results = []
    for task in ex.tasks:
        test = T.make(task, ex.test_n, seed=20_000)
        for method in ex.methods:
            mcfg = method_model(cfg, method)
            for seed in ex.seeds:
                data = T.make(task, ex.post_n, seed=30_000 + seed)
                tags = {"phase": "post", "task": task, "method": method, "seed": seed}
                p0 = with_dlr_params(mcfg, base, seed)
                if seed == ex.seeds[0] and method == ex.methods[0]:  # the base, before post-train
                    ev = evaluate(graphdef(mcfg), p0, test, "sft", mcfg.dlr.chunk)
                    results.append({"task": task, "method": "base", "seed": seed,
                                    "correct": {"off": ev["off"].tolist()},
                                    "digit_off": ev["digit_off"]})
                loss = "xent" if method == "sft" else "dlr"
                gd, params = train_params(mcfg, post_opt, loss, p0,
                                          T.batches(data, ex.batch_size, ex.post_steps, seed),
                                          ex.post_steps, seed, logger(**tags))
                ev = evaluate(gd, params, test, method, mcfg.dlr.chunk)
                rec = {"task": task, "method": method, "seed": seed,
                       "correct": {k: v.tolist() for k, v in ev.items() if k in
                                   ("route", "off", "random")},
                       **{k: v for k, v in ev.items() if k in ("mi_carry", "mi_op",
                                                               "codes_used")},
                       **{k: v for k, v in ev.items() if k.startswith("digit_")}}
                results.append(rec)
                raw.write(json.dumps({"phase": "eval", **{k: v for k, v in rec.items()
                                                          if k != "correct"},
                                      **{f"acc_{k}": float(np.mean(v))
                                         for k, v in rec["correct"].items()}}) + "\n")
                raw.flush()
                print(f"{task:7s} {method:8s} seed {seed}: " + " ".join(
                    f"{k}={np.mean(v):.3f}" for k, v in rec["correct"].items()) +
                    f"  [{time.perf_counter() - t0:.0f}s]", flush=True)
    raw.close()
    summary = table(results, T.bootstrap_ci)
    summary["wall_s"] = time.perf_counter() - t0
    with open(os.path.join(workdir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(workdir, "table.md"), "w") as fh:
        fh.write(summary["markdown"])
    plot(summary, os.path.join(workdir, "plot.png"))
    print(summary["markdown"])
    return summary


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
