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
records.jsonl (the evaluated runs with per-example correctness), summary.json, table.md and
plot.png into ``--workdir``. Every model is built with the DLR hook; ``sft`` never touches the
code book, which stays zero, so it is exactly the base model.

``--preset smollm2`` (issue 20): the same comparison on SmolLM2-135M-Instruct (``make smollm2``),
one arm x seed per process, merged afterwards (``experiments.dlr_record``)::

    python -m experiments.dlr_arithmetic --preset smollm2 --workdir runs/dlr_smollm2/dlr_s0 \
        --set exp.methods=dlr exp.seeds=0 exp.tasks=hidden exp.eval_base=false
    python -m experiments.dlr_record --out results/dlr_arithmetic/smollm2 runs/dlr_smollm2/*/

What changes vs the byte-GPT presets: no pretraining stage (the checkpoint is the base; its
router is added fresh by ``lm.setup.pretrained_params`` as for any ``model.init_from``); the
tasks go through the checkpoint's chat template (``rl.dlr_chat``: system "You are a helpful
assistant.", "What is a ? b? Answer with the number only.", 2-digit operands, the answer in
natural digit order + ``<|im_end|>``, exact match up to that EOS); LoRA r 16 / alpha 32 on all
seven projections at lr 1e-3 (the router and code book train beside the adapters; at the
paper's full-fine-tuning lr 1e-5 a zero-initialised code book moves ~1e-5 per step under Adam,
nothing next to a stream of mean |h| ~6 in 64 steps); router on layer 15 of 30 (paper: ~0.5
depth) reading the RMS-normalised stream (``dlr.router_norm``: the raw stream's norm ~780
saturates normal(0.02) router logits, std ~16: the N draws would almost always agree); scale 10
(Adam moves the code book ~lr per step, so the scale sets how far steering can go in 64 steps);
alpha_policy 0.1 (the paper's Llama value); 512 examples, 64 steps of batch 8 (one epoch, the
paper's batch), 192 held-out problems; blocks under ``model.remat=dots`` (a scan: the unrolled
30-layer DLR step was still compiling after 7 minutes here). ``exp.resume``: a rerun of a run dir
skips the (task, method, seed) runs already in records.jsonl. ``mi_carry`` uses the carry into
the answer digit each answer chunk's first position predicts (most significant digit first).
Measured (AMD EPYC, 2 cores, shared with 3 other jobs, load average 6-9, nice 10): a 4-step
``sft`` run with 16 held-out problems (load, base eval, 4 steps, eval; mostly compiling) took
428 s. Full size, AMD EPYC 2 cores, one job at a time: sft 3 min (seed 0 with the base eval),
dlr 12-13 min, dlr_c1 17 min (beside a test run), dlr_ap0 11 min (results/dlr_arithmetic/smollm2).
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
    # "tokens": the byte-GPT token layout (rl.dlr_tasks); "chat": the same tasks asked through
    # model.init_from's chat template (rl.dlr_chat; no pretraining: the checkpoint is the base)
    prompt: str = "tokens"
    digits: int = 2  # chat: operand digits
    system: str = ""  # chat: the system message ("" = none)
    eval_base: bool = True  # evaluate the base model (first method, first seed) before post-train
    # resume a run dir with the same config: (task, method, seed) runs recorded in
    # records.jsonl are skipped (a killed run redoes only the run it was in)
    resume: bool = False


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


SMOLLM2_DIR = "data_cache/smollm2-135m-instruct"  # `make smollm2`
SMOLLM2_SYSTEM = "You are a helpful assistant."


def smollm2() -> ArithConfig:
    """SmolLM2-135M-Instruct as the base (no pretraining), LoRA r 16 / alpha 32 on q,k,v,o,gate,
    up,down (lr 1e-3; the router and code book train beside the adapters), chat prompts; the
    router on layer 15 of 30 (the paper's ~0.5 depth) reading the RMS-normalised stream, C 8,
    K 4, N 4, alpha_policy 0.1 (the paper's Llama value), steering scale 10 (module docstring)."""
    from lm.lora import LoRACfg
    dl = DLRCfg(layer=15, codes=8, chunk=4, alpha=10.0, n_search=4, alpha_policy=0.1,
                alpha_reg=0.1, router_norm=True)
    return ArithConfig(
        model=ModelCfg(init_from=SMOLLM2_DIR, n_layers=30, max_len=64, dlr=dl,  # (resolved)
                       lora=LoRACfg(rank=16, alpha=32.0), remat="dots"),
        opt=OptCfg(lr=1e-3, warmup=5, schedule="constant", weight_decay=0.0),
        train=TrainCfg(seed=0),
        exp=ArithCfg(tasks=("hidden",), methods=("sft", "dlr", "dlr_c1", "dlr_ap0"),
                     pretrain_steps=0, post_n=512, post_steps=64, post_lr=1e-3, batch_size=8,
                     test_n=192, log_every=8, prompt="chat", digits=2, system=SMOLLM2_SYSTEM,
                     resume=True))


PRESETS = {"tiny": tiny, "smoke": smoke, "smollm2": smollm2}


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


def evaluate_chat(gd, params, enc, task, method, chunk):
    """``evaluate`` for the chat tasks (``rl.dlr_chat``): exact match up to the EOS, digit
    accuracy, MI of the answer chunks' codes with the carry into the digit each predicts and
    with the hidden operator."""
    import jax
    import numpy as np

    from rl import dlr_chat as D
    from rl import dlr_tasks as T
    from rl.dlr_generate import generate_routed
    prompt = enc["tokens"][:, :enc["P"]]
    out = {}
    for mode in (("off",) if method == "sft" else ("route", "off", "random")):
        toks, codes = generate_routed(gd, params, prompt, task.n_new, mode=mode,
                                      rng=jax.random.key(7))
        out[mode] = task.exact(toks, enc)
        out[f"digit_{mode}"] = task.digit_acc(toks, enc)
        if mode == "route":
            codes = np.asarray(codes)
            chunks = D.answer_chunks(enc, chunk, codes.shape[1])
            c_ans, lab = codes[:, chunks], D.carry_labels(enc, chunk, chunks)
            out["mi_carry"] = T.mutual_information(c_ans[lab >= 0], lab[lab >= 0])
            out["mi_op"] = T.mutual_information(c_ans, np.repeat(enc["op"][:, None],
                                                                 len(chunks), 1))
            out["codes_used"] = int(len(np.unique(c_ans)))
    return out


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def summarize(results: list[dict], workdir: str, wall_s: float) -> dict:
    """summary.json, table.md and plot.png of ``results`` (one record per evaluated run)."""
    from rl import dlr_tasks as T
    from rl.dlr_plot import plot, table
    summary = table(results, T.bootstrap_ci)
    summary["wall_s"] = wall_s
    with open(os.path.join(workdir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(workdir, "table.md"), "w") as fh:
        fh.write(summary["markdown"])
    plot(summary, os.path.join(workdir, "plot.png"))
    return summary


def _run_key(r: dict) -> tuple:
    return r["task"], r["method"], r["seed"]


def run(cfg: ArithConfig, workdir: str, argv=None) -> dict:
    import numpy as np

    from lm import metrics as M
    from lm.checkpoint import save_params_npz
    from lm.sharding import ConfigError
    from rl import dlr_chat as D
    from rl import dlr_tasks as T

    ex, t0 = cfg.exp, time.perf_counter()
    for method in ex.methods:
        method_model(cfg, method)  # ConfigError before any work
    chat = ex.prompt == "chat"
    tasks = D.TASKS if chat else T.TASKS
    if ex.prompt not in ("tokens", "chat"):
        raise ConfigError(f"exp.prompt={ex.prompt!r} is not one of ['tokens', 'chat']")
    if not set(ex.tasks) <= set(tasks) or not ex.seeds:
        raise ConfigError(f"exp.tasks={ex.tasks} must be a non-empty subset of {tasks} "
                          "and exp.seeds non-empty")
    if chat != bool(cfg.model.init_from):
        raise ConfigError("exp.prompt=chat needs model.init_from=<a chat checkpoint> (and "
                          "exp.prompt=tokens a model trained here)")
    if chat and ex.digits < 1:
        raise ConfigError(f"exp.digits={ex.digits} must be >= 1")
    pre_cfg = dataclasses.replace(cfg.model, dlr=DLRCfg())
    base = load_base(ex.base_from, pre_cfg) if ex.base_from else None  # checked before writing
    task_fmt = None
    if chat:
        from lm.pretrained import tokenizer_for
        tok = tokenizer_for(cfg.model)
        if tok is None:
            raise ConfigError(f"model.init_from={cfg.model.init_from} has no tokenizer.json")
        try:
            task_fmt = D.ChatArith(tok, digits=ex.digits, system=ex.system or None)
        except ValueError as e:
            raise ConfigError(f"exp.prompt=chat: {e}") from None
        width = task_fmt.encode(D.make(ex.tasks[0], 1, 0, ex.digits))["tokens"].shape[1]
        if width > cfg.model.max_len:
            raise ConfigError(f"model.max_len={cfg.model.max_len} < {width} (prompt + answer)")
    resume = prepare_run_dir(workdir, cfg)
    if resume and not (ex.resume or cfg.run.overwrite):
        raise ConfigError(f"--workdir {workdir} already holds this experiment (it does not "
                          "resume); choose another --workdir or pass --set run.overwrite=true")
    M.write_provenance(workdir, argv=argv, allow_dirty=cfg.run.allow_dirty)
    rec_path, raw_path = os.path.join(workdir, "records.jsonl"), os.path.join(workdir, "raw.jsonl")
    results = read_jsonl(rec_path) if resume and ex.resume else []
    done = {_run_key(r) for r in results}
    if done:  # drop the curves of a run that was killed before its record was written
        keep = [r for r in read_jsonl(raw_path)
                if r.get("phase") != "post" or _run_key(r) in done]
        with open(raw_path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in keep)
        print(f"resuming {workdir}: {len(done)} run(s) recorded", flush=True)
    else:
        open(rec_path, "w").close()
    raw = open(raw_path, "a" if done else "w")
    records = open(rec_path, "a")

    def logger(**tags):
        fn = lambda step, m: raw.write(json.dumps(
            {**tags, "step": step, **m, "time_s": round(time.perf_counter() - t0, 2)}) + "\n")
        return {"every": ex.log_every, "fn": fn}

    def record(rec):
        results.append(rec)
        records.write(json.dumps(rec) + "\n")
        records.flush()

    if chat:
        pass  # the checkpoint is the base: loaded per run with its fresh router (start_params)
    elif base is None:
        pre_opt = dataclasses.replace(cfg.opt, lr=ex.pretrain_lr, warmup=ex.pretrain_warmup,
                                      schedule="cosine")
        pre = T.make("addsub", ex.pretrain_n, seed=10_000)
        base = with_dlr_params(pre_cfg, {}, cfg.train.seed)
        _, base = train_params(pre_cfg, pre_opt, "xent", base,
                               T.batches(pre, ex.pretrain_batch, ex.pretrain_steps, 0),
                               ex.pretrain_steps, cfg.train.seed, logger(phase="pretrain"))
        save_params_npz(os.path.join(workdir, "base.npz"), base)  # a reused base is not copied
    if not chat:
        print(f"pretrained in {time.perf_counter() - t0:.0f}s")
    post_opt = dataclasses.replace(cfg.opt, lr=ex.post_lr)
    for task in ex.tasks:
        if chat:
            test = task_fmt.encode(D.make(task, ex.test_n, 20_000, ex.digits))
        else:
            test = T.make(task, ex.test_n, seed=20_000)
        for method in ex.methods:
            mcfg = method_model(cfg, method)
            for seed in ex.seeds:
                t_run = time.perf_counter()
                if chat:
                    data = task_fmt.encode(D.make(task, ex.post_n, 30_000 + seed, ex.digits))
                    p0 = start_params(mcfg, seed)
                    batches = D.batches(data, ex.batch_size, ex.post_steps, seed)
                    ev_fn = functools.partial(evaluate_chat, enc=test, task=task_fmt)
                else:
                    data = T.make(task, ex.post_n, seed=30_000 + seed)
                    p0 = with_dlr_params(mcfg, base, seed)
                    batches = T.batches(data, ex.batch_size, ex.post_steps, seed)
                    ev_fn = functools.partial(evaluate, test=test)
                tags = {"phase": "post", "task": task, "method": method, "seed": seed}
                first = seed == ex.seeds[0] and method == ex.methods[0]
                if ex.eval_base and first and (task, "base", seed) not in done:
                    ev = ev_fn(graphdef(mcfg), p0, method="sft", chunk=mcfg.dlr.chunk)
                    record({"task": task, "method": "base", "seed": seed,
                            "correct": {"off": ev["off"].tolist()},
                            "digit_off": ev["digit_off"]})
                if (task, method, seed) in done:
                    continue
                loss = "xent" if method == "sft" else "dlr"
                gd, params = train_params(mcfg, post_opt, loss, p0, batches,
                                          ex.post_steps, seed, logger(**tags))
                ev = ev_fn(gd, params, method=method, chunk=mcfg.dlr.chunk)
                rec = {"task": task, "method": method, "seed": seed,
                       "correct": {k: v.tolist() for k, v in ev.items() if k in
                                   ("route", "off", "random")},
                       **{k: v for k, v in ev.items() if k in ("mi_carry", "mi_op",
                                                               "codes_used")},
                       **{k: v for k, v in ev.items() if k.startswith("digit_")},
                       "wall_s": time.perf_counter() - t_run}
                raw.write(json.dumps({"phase": "eval", **{k: v for k, v in rec.items()
                                                          if k != "correct"},
                                      **{f"acc_{k}": float(np.mean(v))
                                         for k, v in rec["correct"].items()}}) + "\n")
                raw.flush()
                record(rec)
                print(f"{task:7s} {method:8s} seed {seed}: " + " ".join(
                    f"{k}={np.mean(v):.3f}" for k, v in rec["correct"].items()) +
                    f"  [{time.perf_counter() - t0:.0f}s]", flush=True)
    raw.close()
    records.close()
    summary = summarize(results, workdir, time.perf_counter() - t0)
    print(summary["markdown"])
    return summary


def start_params(model_cfg, seed: int) -> dict:
    """``model.init_from``'s params with a fresh DLR router for ``seed`` (zero code book), read
    as ``lm.setup.build`` reads them (``lm.setup.pretrained_params``), on one device."""
    import jax
    from flax import nnx

    from lm import sharding as sh
    from lm.model import GPT
    from lm.setup import pretrained_params
    mesh = sh.make_mesh(sh.MeshCfg(data=1), devices=jax.devices()[:1])
    return pretrained_params(model_cfg, lambda: GPT(model_cfg, rngs=nnx.Rngs(seed)), mesh)[1]


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
