"""DPO, cDPO, IPO, SimPO, TDPO1, TDPO2 from one SFT reference on programmatic preference pairs.

    python -m experiments.tdpo_pairs --preset tiny           # CPU (2 cores), about 6-8 minutes
    python -m experiments.tdpo_pairs --preset tiny --set data.paths=pairs.jsonl   # real pairs
    python -m experiments.tdpo_pairs --preset tiny --set exp.packing=document  # packed pairs
    make smollm2 && python -m experiments.tdpo_pairs --preset smollm2 --workdir runs/tdpo_smollm2

``--preset smollm2`` (``exp.task=arithmetic``): SmolLM2-135M-Instruct (``make smollm2``) is its
own reference (no SFT), full fine-tuning (all 135M params, AdamW lr 5e-6, 40 steps of 8 pairs;
LoRA is not used here yet). Prompts: "What is a + b? Answer with the number only." (1-2 digit
operands) through the checkpoint's chat template with the system message "You are a helpful
assistant."; EOS ``<|im_end|>``; 16 new tokens. Pairs (``arith_pairs``): 4 samples of the
reference at T=0.7 per problem (192 problems); chosen = a correct sample, or the rendered
correct answer ("19") when none of the 4 is correct; rejected = an incorrect sample (problems
without one are dropped); the answer is the last integer of the text. DPO vs TDPO2 (same pairs,
same reference); logged: sequence KL to the reference and T=1 sample accuracy (``reward``) on
held-out pair prompts, preference accuracy on held-out pairs, and greedy accuracy on 128
held-out 1-2 digit problems (``acc_heldout``) and 128 with 3-digit operands (``acc_long``), the
same evaluator (``rl.arithmetic.greedy_accuracy``) as grpo_arithmetic, for the reference too.
Measured on a 2-core AMD EPYC shared with other jobs (load 5-9): a 2-step run with 16 problems
took 13 min wall (3 min of CPU: mostly compiling the 30-layer model, waiting for the cores); the
2-step CLI check in tests/test_smollm2.py ~4 min. The full preset's time was not measured yet
(its run is queued behind the grpo_arithmetic ones, results/tdpo_pairs/smollm2/); by the step
costs measured for grpo_arithmetic there, expect roughly 1 hour for both methods. The pairs are
sampled once and cached in ``pairs.json``.

Rerunning a killed run with the same ``--workdir`` resumes it: the SFT reference is cached in
``reference.npz`` and each method checkpoints (state + its records) every ``train.ckpt_every``.

Task: prompt ``"S123:"``, completion 6 digits + EOS; reward = fraction of adjacent digit pairs
that are non-decreasing (``rl.rewards.sorted_fraction``). The reference is SFT-ed on uniformly
random digit completions; preference pairs are two samples of the reference per prompt, the
higher-reward one chosen (ties dropped). Each method trains from the reference for
``train.steps`` steps; every ``exp.eval_every`` steps we sample held-out completions (T=1) and
log mean reward, sequence KL(policy || reference) (exact full-vocabulary KL at each sampled
position, summed over the completion), distinct-2 and policy entropy (diversity), and the
preference accuracy of the implicit reward (sequence log-ratio) on held-out pairs.
With ``data.paths`` (JSONL ``{prompt, chosen, rejected}``, HH-RLHF / UltraFeedback shape; byte
tokens, truncated) the SFT uses the chosen responses and only KL / preference accuracy are
reported (there is no programmatic reward). Results to ``exp.results_dir``.
``exp.packing=document`` packs up to ``exp.pack_slots`` pairs per row of ``exp.pack_len`` tokens
(``rl.pref_packing``; same pairs, same loss up to float rounding, fewer padded tokens); the
default ``none`` keeps today's one-pair-per-row batches.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.base import build, main, prepare_run_dir
from experiments.config import Config, RunCfg
from lm import lora
from lm import sharding as sh
from lm.checkpoint import Checkpointer, abstract_target, load_params_npz, save_params_npz
from lm.data import DataCfg
from lm.losses import bind
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.pretrained import prompt_ids, run_tokenizer
from lm.sample import SampleCfg, generate, splice
from lm.sharding import ConfigError, MeshCfg
from lm.train import TrainCfg, to_host
from rl import report
from rl import rewards as RW
from rl.arithmetic import ArithmeticFormat, greedy_accuracy, problem_sets
from rl.losses import LossCfg, pref_logps
from rl.pref_packing import pack_pairs
from tokenization.bytes import ByteTokenizer

TOK = ByteTokenizer()
PACKINGS = ("none", "document")
TASKS = ("sorted", "arithmetic")


@dataclasses.dataclass(frozen=True)
class PairExpCfg:
    methods: tuple[str, ...] = ("dpo", "cdpo", "ipo", "simpo", "tdpo1", "tdpo2")
    sft_steps: int = 300
    sft_lr: float = 3e-3
    n_prompts: int = 1500
    n_eval_pairs: int = 256
    n_eval_samples: int = 128
    comp_len: int = 6
    eval_every: int = 20
    max_prompt: int = 48  # bytes kept of a JSONL prompt
    max_completion: int = 48
    results_dir: str = "results/tdpo_pairs"
    # "document": several pairs per row (rl.pref_packing), attention kept inside each sequence
    packing: str = "none"
    pack_slots: int = 4  # at most this many pairs per packed row
    pack_len: int = 0  # packed row length; 0 = 2 * train.seq_len
    # "sorted": the digit task above; "arithmetic": a chat model (model.init_from) asked "What is
    # a + b? Answer with the number only." through its chat template, pairs from its own samples
    task: str = "sorted"
    system: str = ""  # arithmetic: the system message ("" = none)
    prompt_len: int = 0  # arithmetic: prompt width in tokens
    samples_per_prompt: int = 4  # arithmetic: reference samples drawn per prompt for the pairs
    digits: tuple[int, ...] = (1, 2)  # arithmetic: operand digits (pairs, held-out)
    long_digits: tuple[int, ...] = (3, 3)  # arithmetic: longer-operand held-out set
    eval_n: int = 128  # arithmetic: problems per greedy-accuracy set
    sample_batch: int = 128  # arithmetic: rows per sampling call
    pair_temperature: float = 1.0  # arithmetic: sampling temperature of the pair candidates

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"exp.task={self.task!r} is not one of {list(TASKS)}")
        if self.task == "arithmetic" and self.prompt_len < 1:
            raise ConfigError("exp.task=arithmetic needs exp.prompt_len (prompt width in tokens)")
        if self.packing not in PACKINGS:
            raise ConfigError(f"exp.packing={self.packing!r} is not one of {list(PACKINGS)}")
        if self.pack_slots < 1 or self.pack_len < 0 or self.pack_len == 1:
            raise ConfigError(f"exp.pack_slots={self.pack_slots} must be >= 1 and "
                              f"exp.pack_len={self.pack_len} 0 (= 2 * seq_len) or >= 2")


@dataclasses.dataclass(frozen=True)
class PairConfig(Config):
    loss: LossCfg = LossCfg()
    exp: PairExpCfg = PairExpCfg()


def tiny() -> PairConfig:
    return PairConfig(
        model=ModelCfg(vocab_size=264, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=32),
        opt=OptCfg(lr=5e-4, warmup=5, schedule="constant", weight_decay=0.0),
        data=DataCfg(source="synthetic"), mesh=MeshCfg(data=-1),
        train=TrainCfg(loss="dpo", steps=60, batch_size=32, seq_len=16, ckpt_every=20),
        run=RunCfg(name="tdpo_pairs_tiny", sample_tokens=0, progress=False))


SMOLLM2_DIR = "data_cache/smollm2-135m-instruct"  # `make smollm2`
SMOLLM2_SYSTEM = "You are a helpful assistant."


def smollm2() -> PairConfig:
    """SmolLM2-135M-Instruct (``make smollm2``) as its own reference (no SFT), full fine-tuning;
    pairs from its own answers to chat arithmetic questions (``arith_pairs``)."""
    return PairConfig(
        model=ModelCfg(init_from=SMOLLM2_DIR, max_len=64),  # 40 prompt + 16 answer tokens
        opt=OptCfg(lr=5e-6, warmup=0, schedule="constant", weight_decay=0.0),
        data=DataCfg(source="synthetic"), mesh=MeshCfg(data=-1),
        train=TrainCfg(loss="dpo", steps=40, batch_size=8, seq_len=56, ckpt_every=10),
        exp=PairExpCfg(methods=("dpo", "tdpo2"), task="arithmetic", sft_steps=0,
                       n_prompts=192, n_eval_pairs=48, n_eval_samples=32, comp_len=15,
                       eval_every=20, system=SMOLLM2_SYSTEM, prompt_len=40, eval_n=128,
                       pair_temperature=0.7,
                       results_dir="results/tdpo_pairs/smollm2"),
        run=RunCfg(name="tdpo_pairs_smollm2", sample_tokens=0, progress=False, max_to_keep=1))


PRESETS = {"tiny": tiny, "smollm2": smollm2}


def pack(prompts, completions, S, tok=TOK):
    """Right-padded [N, S] tokens and completion masks (EOS appended to completions)."""
    toks = np.full((len(prompts), S), tok.pad_id, np.int32)
    mask = np.zeros((len(prompts), S), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = np.concatenate([p, c, [tok.eos_id]])[:S]
        toks[i, : len(ids)] = ids
        mask[i, len(p): len(ids)] = 1.0
    return toks, mask


def pair_batch(prompts, chosen, rejected, S, e: PairExpCfg, row_multiple: int = 1, tok=TOK):
    """One train batch of pairs: today's right-padded [N, S] rows (``exp.packing="none"``) or
    ``rl.pref_packing.pack_pairs`` rows of ``exp.pack_len`` holding up to ``exp.pack_slots``
    pairs each (``"document"``), the row count a multiple of ``row_multiple``. The packed row
    count follows the sequence lengths, so ragged data can compile more than one step shape."""
    c_t, c_m = pack(prompts, chosen, S, tok)
    r_t, r_m = pack(prompts, rejected, S, tok)
    if e.packing == "none":
        return {"chosen_tokens": c_t, "chosen_mask": c_m, "rejected_tokens": r_t,
                "rejected_mask": r_m}
    length = lambda cs: [min(len(p) + len(c) + 1, S) for p, c in zip(prompts, cs)]  # noqa
    return pack_pairs(c_t, c_m, length(chosen), r_t, r_m, length(rejected),
                      row_len=e.pack_len or 2 * S, slots=e.pack_slots, pad_id=tok.pad_id,
                      row_multiple=row_multiple)


def synthetic_prompts(n, rng, tok=TOK):
    return [prompt_ids(tok, "S" + "".join(map(str, rng.integers(0, 10, 3))) + ":")
            for _ in range(n)]


def load_jsonl(paths, e: PairExpCfg, tok=TOK):
    import glob
    rows = []
    for pat in paths:
        for f in sorted(glob.glob(pat)):
            with open(f) as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
    if not rows:
        raise ConfigError(f"data.paths={paths} holds no JSONL {{prompt, chosen, rejected}} rows")
    enc = lambda s, n: tok.encode(s)[:n]  # noqa: E731
    return [(prompt_ids(tok, r["prompt"])[: e.max_prompt], enc(r["chosen"], e.max_completion),
             enc(r["rejected"], e.max_completion)) for r in rows]


def sft(cfg, prompts, completions, S, cache: str | None = None, tok=TOK):
    """The SFT reference (graphdef, params); cached in ``cache`` (.npz) so a rerun reuses it."""
    scfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, loss="xent", steps=cfg.exp.sft_steps, batch_size=64),
        opt=OptCfg(lr=cfg.exp.sft_lr, warmup=20))
    setup = build(scfg)
    if cfg.exp.sft_steps == 0:  # the initial (model.init_from) params are the reference
        return setup.graphdef, jax.device_get(setup.state["params"])
    if cache and os.path.exists(cache):
        return setup.graphdef, load_params_npz(cache, jax.device_get(setup.state["params"]))
    toks, mask = pack(prompts, completions, S + 1, tok)
    rng, state = np.random.default_rng(cfg.train.seed), setup.state
    for _ in range(cfg.exp.sft_steps):
        idx = rng.integers(0, len(toks), 64)
        b = {"inputs": toks[idx, :-1], "targets": toks[idx, 1:], "mask": mask[idx, 1:]}
        state, met = setup.train_step(state, sh.shard_batch(b, setup.mesh))
    print(f"SFT done: loss {to_host(met)['loss']:.4f}", flush=True)
    params = jax.device_get(state["params"])
    if cache:
        save_params_npz(cache, params)
    return setup.graphdef, params


def sample(gd, params, prompts, n_new, seed, tok=TOK, temperature: float = 1.0):
    P = max(len(p) for p in prompts)
    x = np.full((len(prompts), P), tok.pad_id, np.int32)
    for i, p in enumerate(prompts):
        x[i, : len(p)] = p
    lens = np.array([len(p) for p in prompts], np.int32)
    out = generate(gd, params, x, lens, SampleCfg(max_new_tokens=n_new, temperature=temperature,
                                                  eos_id=tok.eos_id, pad_id=tok.pad_id),
                   jax.random.key(seed))
    seq, mask = splice(x, lens, out["tokens_BxT"], out["mask_BxT"], tok.pad_id)
    comps = [t[: int(n)] for t, n in zip(np.asarray(out["tokens_BxT"]),
                                         np.asarray(out["lengths_B"]))]
    return np.asarray(seq), np.asarray(mask, np.float32), comps


@jax.jit
def _kl_entropy(gd_params, ref_params, tokens, mask):
    gd, params = gd_params
    lp = jax.nn.log_softmax(bind(gd, params)(tokens[:, :-1]), -1)
    lr = jax.nn.log_softmax(bind(gd, ref_params)(tokens[:, :-1]), -1)
    m = mask[:, 1:]
    kl = (jnp.exp(lp) * (lp - lr)).sum(-1)
    ent = -(jnp.exp(lp) * lp).sum(-1)
    return (kl * m).sum(-1).mean(), (ent * m).sum() / m.sum()


def distinct2(comps) -> float:
    grams = [tuple(c[i: i + 2]) for c in comps for i in range(len(c) - 1)]
    return len(set(grams)) / max(len(grams), 1)


def evaluate(gd, params, ref, eval_prompts, eval_pairs, e, step, has_reward, tok=TOK,
             extra=None):
    """``has_reward``: True (the sorted fraction), a ``texts -> rewards`` callable, or False;
    ``extra(gd, params) -> dict`` adds metrics (the arithmetic task's greedy accuracy)."""
    seq, mask, comps = sample(gd, params, eval_prompts, e.comp_len + 1, 1000 + step, tok)
    kl, ent = _kl_entropy((gd, params), ref, jnp.asarray(seq), jnp.asarray(mask))
    texts = [tok.decode(c) for c in comps]
    ct, cm, rt, rm = eval_pairs
    toks = jnp.asarray(np.concatenate([ct, rt]))
    lr = np.asarray(pref_logps(gd, params, toks) - pref_logps(gd, ref, toks))
    m = np.concatenate([cm, rm])
    r = (lr * m).sum(-1)
    n = len(ct)
    out = {"seq_kl": float(kl), "entropy": float(ent), "distinct2": distinct2(comps),
           "unique": len({tuple(c) for c in comps}) / len(comps),
           "pref_accuracy": float(np.mean(r[:n] > r[n:]))}
    if callable(has_reward):
        out["reward"] = float(np.mean(has_reward(texts)))
    elif has_reward:
        out["reward"] = float(RW.sorted_fraction(texts).mean())
    if extra is not None:
        out.update(extra(gd, params))
    return out


def make_pairs(gd, ref, prompts, e, seed, tok=TOK):
    """Two reference samples per prompt, chosen = higher sorted fraction, ties dropped."""
    _, _, comps = sample(gd, ref, prompts + prompts, e.comp_len + 1, seed, tok)
    n = len(prompts)
    score = RW.sorted_fraction([tok.decode(c) for c in comps])
    strip = lambda c: c[c != tok.eos_id]  # noqa: E731
    out = []
    for i in range(n):
        a, b = score[i], score[i + n]
        if a != b:
            w, lo = (i, i + n) if a > b else (i + n, i)
            out.append((prompts[i], strip(comps[w]), strip(comps[lo])))
    return out


def arith_pairs(gd, ref, items, fmt: ArithmeticFormat, e, seed, cache=None, tok=TOK):
    """Preference pairs in the reference's own words: ``exp.samples_per_prompt`` samples (at
    ``exp.pair_temperature``) per problem; chosen = the first correct sample (the rendered
    correct answer, e.g. "19", when none is correct), rejected = the first incorrect one
    (problems without one are dropped).
    Returns ``(triples, answers, info)``; cached as JSON in ``cache`` (a rerun reuses it)."""
    if cache and os.path.exists(cache):
        with open(cache) as fh:
            d = json.load(fh)
        return ([tuple(np.asarray(x, np.int32) for x in t) for t in d["triples"]], d["answers"],
                d["info"])
    K, n_new = e.samples_per_prompt, e.comp_len + 1
    prompts = [fmt.ids(p) for p, _ in items for _ in range(K)]
    comps = []
    for s in range(0, len(prompts), e.sample_batch):
        comps += sample(gd, ref, prompts[s: s + e.sample_batch], n_new, seed * 100003 + s,
                        tok, e.pair_temperature)[2]
    eos = set(getattr(tok, "eos_ids", (tok.eos_id,)))
    strip = lambda c: np.asarray([t for t in c if t not in eos], np.int32)  # noqa: E731
    ok = fmt.score([tok.decode(c) for c in comps], [a for _, a in items for _ in range(K)])
    triples, answers, n_correct, n_rendered = [], [], 0, 0
    for i, (_, a) in enumerate(items):
        rows = range(i * K, (i + 1) * K)
        good = [r for r in rows if ok[r]]
        bad = [r for r in rows if not ok[r]]
        n_correct += bool(good)
        if not bad:
            continue
        chosen = strip(comps[good[0]]) if good else tok.encode(str(a))
        n_rendered += not good
        triples.append((prompts[i * K], chosen, strip(comps[bad[0]])))
        answers.append(int(a))
    info = {"problems": len(items), "with_a_correct_sample": n_correct,
            "sample_accuracy": float(ok.mean()), "pairs": len(triples),
            "chosen_rendered": n_rendered}
    if cache:
        tmp = cache + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"triples": [[x.tolist() for x in t] for t in triples],
                       "answers": answers, "info": info}, fh)
        os.replace(tmp, cache)
    return triples, answers, info


def run(cfg: PairConfig, workdir: str, argv=None) -> dict:
    from lm.losses import get_loss
    e = cfg.exp
    for m in e.methods:
        if getattr(get_loss(m), "kind", None) != "preference":
            raise ConfigError(f"exp.methods: {m!r} is not a registered preference loss")
    prepare_run_dir(workdir, cfg)
    tok = run_tokenizer(cfg.model, TOK)  # the checkpoint's with model.init_from
    ref_cache = os.path.join(workdir, "reference.npz")
    rng = np.random.default_rng(cfg.train.seed)
    S = cfg.train.seq_len
    if cfg.data.paths:
        triples = load_jsonl(cfg.data.paths, e, tok)
        gd, ref = sft(cfg, [t[0] for t in triples], [t[1] for t in triples], S, ref_cache,
                      tok)
        has_reward = False
    elif e.task == "arithmetic":
        fmt = ArithmeticFormat.chat(tok, width=e.prompt_len, system=e.system or None)
        items, held, long_ = problem_sets(e.n_prompts, e.eval_n, e.digits, e.long_digits,
                                          cfg.train.seed)
        gd, ref = sft(cfg, [fmt.ids(p) for p, _ in items],
                      [tok.encode(str(a)) for _, a in items], S, ref_cache, tok)
        triples, answers, info = arith_pairs(gd, ref, items, fmt, e, seed=1,
                                             cache=os.path.join(workdir, "pairs.json"), tok=tok)
        print(f"pairs: {info}", flush=True)
        has_reward = True
    else:
        prompts = synthetic_prompts(e.n_prompts, rng, tok)
        comps = [tok.encode("".join(map(str, rng.integers(0, 10, e.comp_len)))) for _ in prompts]
        gd, ref = sft(cfg, prompts, comps, S, ref_cache, tok)
        triples = make_pairs(gd, ref, prompts, e, seed=1, tok=tok)
        has_reward = True
    n_eval = min(e.n_eval_pairs, len(triples) // 4)
    ev_t, tr_t = triples[:n_eval], triples[n_eval:]
    ct, cm = pack([t[0] for t in ev_t], [t[1] for t in ev_t], S, tok)
    rt, rm = pack([t[0] for t in ev_t], [t[2] for t in ev_t], S, tok)
    eval_pairs = (ct, cm, rt, rm)
    eval_prompts = [t[0] for t in ev_t][: e.n_eval_samples]
    extra = None
    if e.task == "arithmetic" and not cfg.data.paths:  # reward = T=1 sample accuracy
        ev_answers = answers[: len(eval_prompts)]
        has_reward = lambda texts: fmt.score(texts, ev_answers)  # noqa: E731

        def extra(gd, params):
            n_new = e.comp_len + 1
            return {"acc_heldout": greedy_accuracy(gd, params, held, n_new, fmt,
                                                   e.sample_batch)[0],
                    "acc_long": greedy_accuracy(gd, params, long_, n_new, fmt,
                                                e.sample_batch)[0]}
    print(f"{len(tr_t)} train pairs, {n_eval} held-out pairs", flush=True)
    records = {}
    base = evaluate(gd, ref, ref, eval_prompts, eval_pairs, e, 0, has_reward, tok, extra)
    for m in e.methods:
        mcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss=m))
        setup = build(mcfg, loss_state={"ref_params": ref})
        state = dict(setup.state)
        if mcfg.model.lora.on:  # adapters on ``ref``; the reference is it, adapters off
            state["params"] = lora.on_base(state["params"], ref, setup.state_sharding["params"],
                                           setup.cfg.model)
        else:
            state["params"] = jax.tree.map(lambda x, s: jax.device_put(x, s), ref,
                                           setup.state_sharding["params"])
        ckpt = Checkpointer(os.path.join(workdir, m, "checkpoints"),
                            max_to_keep=cfg.run.max_to_keep,
                            frozen=lora.frozen_state_fn(setup.cfg.model))  # LoRA: adapters
        start, recs = 0, [{"step": 0, "split": "eval", **base}]
        if ckpt.latest_step() is not None:  # resume this method where a killed run stopped
            target = abstract_target(state, setup.state_sharding)
            state, data = ckpt.restore(ckpt.latest_step(), target, fill=state)
            start, recs = int(data["step"]), data["records"]
            print(f"[{m}] resumed at step {start}", flush=True)
        B = cfg.train.batch_size
        rows = cfg.train.microbatches * int(np.prod([setup.mesh.shape[a]
                                                     for a in sh.BATCH_AXES]))
        prng = np.random.default_rng([cfg.train.seed, 7])
        for _ in range(start):  # replay the batch draws of the steps already taken
            prng.integers(0, len(tr_t), B)
        for step in range(start, cfg.train.steps):
            idx = prng.integers(0, len(tr_t), B)
            b = sh.shard_batch(pair_batch([tr_t[i][0] for i in idx], [tr_t[i][1] for i in idx],
                                          [tr_t[i][2] for i in idx], S, e, rows, tok),
                               setup.mesh)
            state, met = setup.train_step(state, b)
            recs.append({"step": step + 1, "split": "train", **to_host(met)})
            if (step + 1) % e.eval_every == 0 or step + 1 == cfg.train.steps:
                ev = evaluate(gd, jax.device_get(state["params"]), ref, eval_prompts,
                              eval_pairs, e, step + 1, has_reward, tok, extra)
                recs.append({"step": step + 1, "split": "eval", **ev})
                print(f"[{m}] step {step + 1}: " + " ".join(f"{k} {v:.3f}"
                                                            for k, v in ev.items()), flush=True)
            if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == cfg.train.steps:
                ckpt.save(step + 1, state, {"step": step + 1, "records": recs})
        ckpt.close()
        records[m] = recs
    md = table(records, base, has_reward)
    print(md)
    os.makedirs(e.results_dir, exist_ok=True)
    plot(records, has_reward, os.path.join(e.results_dir, "plot.png"))
    report.write(e.results_dir, cfg, argv, records, {"reference": base}, md)
    return {"records": records, "reference": base, "table": md}


def table(records, base, has_reward) -> str:
    cols = (["reward"] if has_reward else []) + ["seq_kl", "pref_accuracy", "distinct2",
                                                 "unique", "entropy"]
    cols += [c for c in ("acc_heldout", "acc_long") if c in base]
    head = "| method | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols)
    rows = ["| reference (SFT) | " + " | ".join(f"{base[c]:.3f}" for c in cols) + " |"]
    for m, recs in records.items():
        ev = [r for r in recs if r["split"] == "eval"][-1]
        rows.append(f"| {m} | " + " | ".join(f"{ev[c]:.3f}" for c in cols) + " |")
    return head + "\n" + "\n".join(rows)


def plot(records, has_reward, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ykey = "reward" if has_reward else "pref_accuracy"
    for m, recs in records.items():
        ev = [r for r in recs if r["split"] == "eval"]
        axes[0].plot([r["seq_kl"] for r in ev], [r[ykey] for r in ev], "o-", label=m)
        axes[1].plot([r["step"] for r in ev], [r["distinct2"] for r in ev], "o-", label=m)
    axes[0].set(xlabel="sequence KL(policy || reference), nats", ylabel=ykey,
                title=f"{ykey} vs KL frontier (points = evals over training)")
    axes[1].set(xlabel="step", ylabel="distinct-2 of samples", title="diversity")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
