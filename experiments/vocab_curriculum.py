"""Vocabulary curriculum vs from-scratch training across vocabulary sizes (arXiv 2502.17910).

    python -m experiments.vocab_curriculum --preset tiny     # CPU, ~7 min on 2 busy cores
    python -m experiments.vocab_curriculum --preset paper --set data.source=files \\
        data.paths=/data/enwik8                               # GPU/TPU, the paper's protocol

A character-level GPT trains on the corpus (stage 0); each of ``vocab.stages`` stages then
measures per-token surprisal on random train windows, adds the merged tokens of low-surprisal spans
(``lm.vocab_growth.expand``), grows the embedding rows from the right component, re-encodes the
data and continues training with a fresh optimizer and schedule. Baselines at every V_k > V_0,
trained from scratch: ``step`` (on V_k's tokenizer for ``stage_steps * (k+1)`` steps, the paper's
step-matched protocol), ``flop`` (as many steps as the curriculum's FLOPs up to stage k buy at
V_k, FLOPs per sequence = (6N + 12 L D T) T), ``bpe`` (HF byte-level BPE of the same size,
step-matched). Writes to the workdir (default ``runs/<run.name>``): results.json, metrics.jsonl,
tokenizer_stage<k>.json, bpc_by_token_len.json, config.json, versions.json, plot.png.

Protocol choices (spec §8): best-val params (``vocab.select_every``) seed the next stage; eval BPC
on the full held-out split (deterministic) and on ``eval_random_batches`` seeded random windows
(the paper's 10 x 256 x 256); the baselines keep the paper's LR span of one stage
(``vocab.baseline_lr_span="stage"``; "run" stretches the schedule over the whole baseline). Text is
whitespace-normalized and encoded in ~2048-character chunks (no dropped tokens, spec §7.4).

Vocabulary growth in the model (``lm.vocab_growth``): the **padded path** (``vocab.padded=true``,
default). Params are padded to ``V_pad`` rows (``V_k`` rounded up to ``vocab.pad_multiple``),
logits of ids ``>= V_k`` are ``-inf`` (``masked_xent``; the loss equals the unpadded one), and
``n_active = V_k`` rides in the train state's ``loss_state``, so one compiled train step and one
compiled eval function per ``(V_pad, LR span)`` serve every curriculum stage, every baseline and
the surprisal pass of ``expand``; a stage only gets a fresh optimizer state. Chosen because it
measured faster: ``benchmarks/bench_vocab_growth.py`` (tiny shapes, 5 stages x 150 steps, 2 CPU
cores) gave recompile/padded wall-time ratio 2.85 (200.8 s vs 70.4 s): a CPU compile costs more
than the extra masked logits. ``--set vocab.padded=false`` recompiles per stage and per run
(``StageTrainer`` at exactly ``V_k``). Both paths start from the same fresh init (the first
``V_k`` rows of a ``V_pad`` init equal an init at ``V_k``) and compute the same loss up to fp32
summation order (a wider logits matmul). Early high-LR training can amplify that last-bit noise:
in the tiny rerun 11 of 15 rows matched the recompiling run to 4 decimals, the longest from-scratch
runs (V_pad = 512) moved by up to 0.024 BPC, i.e. seed-level noise. FLOP matching counts the
nominal ``V_k``. ``--preset tiny`` took ~7 min on 2 busy cores (recompiling: ~12 min).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np

from experiments.base import main, prepare_run_dir
from experiments.config import Config, RunCfg
from lm import vocab_growth
from lm.data import DataCfg
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.sharding import ConfigError, MeshCfg
from lm.train import TrainCfg

BASELINES = ("step", "flop", "bpe")


@dataclasses.dataclass(frozen=True)
class VocabCfg:
    stages: int = 4  # expansion stages K after the character stage
    stage_steps: int = 150  # optimizer steps per stage (paper 5000)
    M: int = 300  # tuples selected per stage (paper 3000)
    tau: float = 1.0  # paper 0.3; a 150-step CPU model is rarely that sure (see the README)
    q: float = 0.6
    pool_windows: int = 64  # windows per surprisal batch (paper 256)
    pool_len: int = 128  # tokens per surprisal window (paper 256)
    max_pool_batches: int = 20
    chunk_chars: int = 2048
    train_chars: int = 3_900_000  # paper 50M
    val_chars: int = 100_000  # paper 2M
    clean: str = "auto"  # "auto" | "wiki" | "none"
    baselines: tuple[str, ...] = BASELINES
    baseline_lr_span: str = "stage"  # "stage" (paper) | "run"
    select_every: int = 50  # best-val selection interval (steps)
    select_batches: int = 2
    eval_batch: int = 32
    eval_random_batches: int = 10
    eval_random_len: int = 128
    padded: bool = True  # one compiled step at V_pad rows, masked logits (false: recompile)
    pad_multiple: int = 256  # V_pad = V_k rounded up to this (a new V_pad = one more compile)
    seed: int = 0

    def __post_init__(self):
        if self.clean not in ("auto", "wiki", "none"):
            raise ConfigError(f"vocab.clean={self.clean!r} is not one of ('auto', 'wiki', 'none')")
        if self.baseline_lr_span not in ("stage", "run"):
            raise ConfigError(f"vocab.baseline_lr_span={self.baseline_lr_span!r} is not one of "
                              "('stage', 'run')")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ConfigError(f"vocab.baselines has {bad}; allowed: {list(BASELINES)}")
        if self.stages < 1 or self.stage_steps < 1 or self.M < 1 or self.pad_multiple < 1:
            raise ConfigError("vocab.stages, vocab.stage_steps, vocab.M and vocab.pad_multiple "
                              "must be >= 1")


@dataclasses.dataclass(frozen=True)
class VocabConfig(Config):
    vocab: VocabCfg = VocabCfg()


def tiny() -> VocabConfig:
    return VocabConfig(
        model=ModelCfg(vocab_size=0, d_model=64, n_layers=2, n_heads=2, d_ff=256, max_len=128),
        opt=OptCfg(lr=3e-3, min_lr_ratio=1e-4 / 3e-3, warmup=15, b2=0.99),
        data=DataCfg(source="kjv"), mesh=MeshCfg(data=-1),
        train=TrainCfg(batch_size=16, seq_len=64, seed=1337),
        run=RunCfg(name="vocab_curriculum_tiny", sample_tokens=0), vocab=VocabCfg())


def paper() -> VocabConfig:
    """6L/6H/384, block 512, batch 64, 5000 steps a stage, 3e-3 -> 1e-4 cosine, dropout 0.2."""
    return VocabConfig(
        model=ModelCfg(vocab_size=0, d_model=384, n_layers=6, n_heads=6, d_ff=1536, max_len=512,
                       dropout=0.2, pos="learned", norm="layer", dtype="bfloat16"),
        opt=OptCfg(lr=3e-3, min_lr_ratio=1e-4 / 3e-3, warmup=100, b2=0.99, weight_decay=0.1,
                   decay_embeddings=True),
        data=DataCfg(source="files"), mesh=MeshCfg(data=-1),
        train=TrainCfg(batch_size=64, seq_len=512, seed=1337),
        run=RunCfg(name="vocab_curriculum_paper", sample_tokens=0),
        vocab=VocabCfg(stages=5, stage_steps=5000, M=3000, tau=0.3, pool_windows=256, pool_len=256,
                       train_chars=50_000_000, val_chars=2_000_000, select_every=250,
                       select_batches=200, eval_batch=64, eval_random_len=256))


PRESETS = {"tiny": tiny, "paper": paper}

# ----------------------------------------------------------------------------- data


def load_text(cfg: VocabConfig) -> str:
    from lm import data as data_lib
    from tokenization.wiki import clean_wiki, looks_like_wiki_xml

    if cfg.data.source == "kjv":
        path = data_lib.prepare_corpus(cfg.data)
        paths = [path]
    elif cfg.data.source == "files":
        paths = data_lib.resolve_paths(cfg.data)
    else:
        raise ConfigError(f"data.source={cfg.data.source!r}: this experiment reads 'kjv' or "
                          "'files' (plain text or enwik8 XML)")
    text = "".join(open(p, encoding="utf-8", errors="replace").read() for p in paths)
    if cfg.vocab.clean == "wiki" or (cfg.vocab.clean == "auto" and looks_like_wiki_xml(text)):
        text = clean_wiki(text)
    text = " ".join(text.split())  # whitespace normalization as the reference (spec §1)
    need = cfg.vocab.train_chars + cfg.vocab.val_chars
    if len(text) < need:
        raise ConfigError(f"the corpus has {len(text)} characters after cleaning; "
                          f"vocab.train_chars + vocab.val_chars = {need}")
    return text[:need]


def flops_per_token(V: int, m: ModelCfg, T: int) -> float:
    """(6N + 12 L D T) per token, N with the tied embedding (spec §3)."""
    body = m.n_layers * (4 * m.d_model ** 2 + 2 * m.d_model * m.d_ff)
    return 6 * (body + V * m.d_model) + 12 * m.n_layers * m.d_model * T


# ----------------------------------------------------------------------------- one training run


class Runner:
    """Trains one (tokenizer, params) pair and evaluates it; logs to one JSONL."""

    def __init__(self, cfg: VocabConfig, workdir: str, mesh):
        from lm.metrics import MetricsWriter
        self.cfg, self.mesh, self.workdir = cfg, mesh, workdir
        self.writer = MetricsWriter(workdir)
        self.trainers = {}  # (V_pad, lr_span) -> PaddedTrainer (one compile each)

    def padded(self, V: int, lr_span: int):
        from lm.vocab_growth import PaddedTrainer, pad_capacity
        key = (pad_capacity(V, self.cfg.vocab.pad_multiple), lr_span)
        if key not in self.trainers:
            self.trainers[key] = PaddedTrainer.create(self.cfg, self.mesh, key[0],
                                                      total_steps=lr_span)
        return self.trainers[key]

    def nll_fn(self, V: int, lr_span: int):
        """Eval ``nll(params [V, D], inputs, targets)`` for ``expand`` (padded: no new compile)."""
        from lm.vocab_growth import make_nll_fn, pad_params
        if not self.cfg.vocab.padded:
            return make_nll_fn(_graphdef(dataclasses.replace(self.cfg.model, vocab_size=V)))
        pt = self.padded(V, lr_span)
        f = pt.nll(V)
        return lambda p, x, y: f(pad_params(p, pt.v_pad), x, y)

    def train(self, name, train_T, val_T, V, params, steps, lr_span, len_V, pad_id):
        from lm import sharding as sh
        from lm.bpc import bpc, bpc_batch_mean, full_windows, random_windows, token_nll
        from lm.train import train_loop
        from lm.vocab_growth import StageTrainer

        cfg, vc, tr = self.cfg, self.cfg.vocab, self.cfg.train
        if not 0 <= pad_id < V:  # a masked target at an inactive id would give inf * 0
            raise ValueError(f"pad_id={pad_id} outside the active vocabulary of {V}")
        if vc.padded:
            pt = self.padded(V, lr_span)
            state, step_fn, nll_fn = pt.start(params, V), pt.train_step, pt.nll(V)
            unpad = lambda p: pt.unpad(p, V)
        else:
            c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=V))
            st = StageTrainer.create(c, self.mesh, params, total_steps=lr_span)
            state, step_fn, nll_fn, unpad = st.state, st.train_step, st.nll, jax_get
        rng = np.random.default_rng([vc.seed, V, steps])
        L = tr.seq_len

        def batches():
            while True:
                s = rng.integers(0, len(train_T) - L - 1, tr.batch_size)
                w = train_T[s[:, None] + np.arange(L + 1)[None, :]]
                yield sh.shard_batch({"inputs": w[:, :-1], "targets": w[:, 1:]}, self.mesh)

        sel = random_windows(val_T, vc.select_batches * vc.eval_batch, L, seed=vc.seed)
        best = {"loss": math.inf, "params": None, "step": 0}

        def on_metrics(step, m):
            if step % 10 == 0 or step == steps:
                self.writer.write(step, {"run": name, "V": V, **m}, "train")

        def on_step_end(step, state):
            if step % vc.select_every and step != steps:
                return
            p = state["params"]
            loss = float(token_nll(nll_fn, p, sel, vc.eval_batch).mean())
            self.writer.write(step, {"run": name, "V": V, "select_loss": loss}, "select")
            if loss < best["loss"]:
                best.update(loss=loss, params=jax_get(p), step=step)

        t0 = time.perf_counter()
        train_loop(state, step_fn, batches(), steps=steps, on_metrics=on_metrics,
                   on_step_end=on_step_end, sync_at=lambda s: s % vc.select_every == 0,
                   tokens_per_step=tr.batch_size * L)
        p = best["params"]
        full = full_windows(val_T, L, pad_id)
        nll = token_nll(nll_fn, p, full, vc.eval_batch)
        res = bpc(nll, full["targets"], full["mask"], len_V)
        rw = random_windows(val_T, vc.eval_random_batches * vc.eval_batch, vc.eval_random_len,
                            seed=vc.seed + 1)
        rnll = token_nll(nll_fn, p, rw, vc.eval_batch)
        out = {"run": name, "V": V, "steps": steps, "best_step": best["step"],
               "bpc": res["bpc"], "bpc_random": bpc_batch_mean(rnll, rw["targets"], len_V,
                                                               vc.eval_batch),
               "chars_per_token": res["chars"] / max(res["tokens"], 1),
               "seconds": time.perf_counter() - t0}
        self.writer.write(steps, out, "eval")
        print(f"[{name}] V={V} steps={steps} BPC={out['bpc']:.4f} "
              f"(random windows {out['bpc_random']:.4f}) {out['seconds']:.0f}s", flush=True)
        return out, unpad(p), (nll, full)


def jax_get(p):
    import jax
    return jax.device_get(p)


# ----------------------------------------------------------------------------- the experiment


def run(cfg: VocabConfig, workdir: str, argv=None) -> dict:
    from lm import metrics as M
    from lm import sharding as sh
    from lm.bpc import token_length_curve
    from tokenization.bpe import BPETokenizer
    from tokenization.curriculum import CurriculumTokenizer

    vc, tr = cfg.vocab, cfg.train
    if tr.seq_len > cfg.model.max_len or vc.eval_random_len > cfg.model.max_len:
        raise ConfigError(f"train.seq_len={tr.seq_len} and vocab.eval_random_len="
                          f"{vc.eval_random_len} must be <= model.max_len={cfg.model.max_len}")
    import jax

    from experiments.base import validate
    validate(cfg, jax.device_count())
    prepare_run_dir(workdir, cfg)
    mesh = sh.make_mesh(cfg.mesh)
    M.write_provenance(workdir, argv=argv, numba=_ver("numba"), tokenizers=_ver("tokenizers"),
                       allow_dirty=cfg.run.allow_dirty)
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        os.remove(os.path.join(workdir, "metrics.jsonl"))
    text = load_text(cfg)
    train_text, val_text = text[:vc.train_chars], text[vc.train_chars:]
    tok = CurriculumTokenizer.from_text(text)
    char_train, char_val = tok.base.encode(train_text), tok.base.encode(val_text)
    R = Runner(cfg, workdir, mesh)
    n = vc.stage_steps
    enc = lambda t: (t.encode_ids(char_train, vc.chunk_chars), t.encode_ids(char_val,
                                                                            vc.chunk_chars))

    # curriculum -----------------------------------------------------------------------------
    rows, toks, curves, reports = [], [tok], {}, []
    train_T, val_T = char_train, char_val
    res, params, (nll, full) = R.train("curriculum", train_T, val_T, tok.vocab_size, None, n, n,
                                       tok.lengths(), tok.pad_id)
    rows.append({**res, "stage": 0, "mean_token_len": tok.mean_token_len()})
    curves[0] = _curves(token_length_curve, nll, full, tok.lengths())
    tok.save(os.path.join(workdir, "tokenizer_stage0.json"))
    for k in range(1, vc.stages + 1):
        pool = _pool_batches(train_T, vc, k)
        t0 = time.perf_counter()
        tok, params, rep = vocab_growth.expand(tok, params, pool, model=None, M=vc.M, tau=vc.tau,
                                               q=vc.q, seed=vc.seed + k,
                                               nll_fn=R.nll_fn(tok.vocab_size, n))
        train_T, val_T = enc(tok)
        rep["expand_seconds"] = time.perf_counter() - t0
        print(f"[expand {k}] {rep}", flush=True)
        reports.append(rep)
        toks.append(tok)
        tok.save(os.path.join(workdir, f"tokenizer_stage{k}.json"))
        res, params, (nll, full) = R.train("curriculum", train_T, val_T, tok.vocab_size, params,
                                           n, n, tok.lengths(), tok.pad_id)
        rows.append({**res, "stage": k, "mean_token_len": tok.mean_token_len()})
        curves[k] = _curves(token_length_curve, nll, full, tok.lengths())

    # baselines ------------------------------------------------------------------------------
    T = tr.seq_len
    f_V = [flops_per_token(t.vocab_size, cfg.model, T) for t in toks]
    for k in range(1, vc.stages + 1):
        t = toks[k]
        V = t.vocab_size
        step_n = n * (k + 1)
        flop_n = int(round(sum(f_V[:k + 1]) * n / f_V[k]))
        span = lambda s: n if vc.baseline_lr_span == "stage" else s
        if "step" in vc.baselines or "flop" in vc.baselines:
            tr_T, va_T = enc(t)
        if "step" in vc.baselines:
            res, _, _ = R.train("scratch_step", tr_T, va_T, V, None, step_n, span(step_n),
                                t.lengths(), t.pad_id)
            rows.append({**res, "stage": k})
        if "flop" in vc.baselines:
            res, _, _ = R.train("scratch_flop", tr_T, va_T, V, None, flop_n, span(flop_n),
                                t.lengths(), t.pad_id)
            rows.append({**res, "stage": k})
        if "bpe" in vc.baselines and V < 258:
            print(f"[bpe_step] skipped at V={V}: byte-level BPE needs V >= 258", flush=True)
        elif "bpe" in vc.baselines:
            bpe = BPETokenizer.train(train_text, V)
            b_tr, b_va = bpe.encode(train_text), bpe.encode(val_text)
            res, _, _ = R.train("bpe_step", b_tr, b_va, bpe.vocab_size, None, step_n,
                                span(step_n), bpe.lengths(), bpe.pad_id)
            rows.append({**res, "stage": k})
    R.writer.close()
    out = summarize(rows, reports, curves, f_V, n, workdir)
    print(json.dumps(out["verdict"], indent=2))
    return out


def _ver(p):
    from importlib import metadata
    try:
        return metadata.version(p)
    except metadata.PackageNotFoundError:
        return None


def _graphdef(model_cfg):
    from flax import nnx

    from lm.model import GPT
    return nnx.graphdef(nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(0))))


def _pool_batches(train_T, vc: VocabCfg, k: int):
    rng = np.random.default_rng([vc.seed, 7, k])
    for _ in range(vc.max_pool_batches):
        s = rng.integers(0, len(train_T) - vc.pool_len - 1, vc.pool_windows)
        yield train_T[s[:, None] + np.arange(vc.pool_len + 1)[None, :]]


def _curves(fn, nll, full, len_V):
    m = full["mask"].reshape(-1) > 0
    args = (nll.reshape(-1)[m], full["inputs"].reshape(-1)[m], full["targets"].reshape(-1)[m],
            len_V)
    return {"target": fn(*args, by="target"), "input": fn(*args, by="input")}


def endpoint_slope(v0, b0, v1, b1) -> float:
    """BPC change per decade of vocabulary between two points (spec §4)."""
    return (b1 - b0) / math.log10(v1 / v0)


def summarize(rows, reports, curves, f_V, n, workdir) -> dict:
    cur = [r for r in rows if r["run"] == "curriculum"]
    base = cur[0]
    series = {name: [base] + [r for r in rows if r["run"] == name]
              for name in ("curriculum", "scratch_step", "scratch_flop", "bpe_step")}
    series["curriculum"] = cur
    slopes = {name: endpoint_slope(s[0]["V"], s[0]["bpc"], s[-1]["V"], s[-1]["bpc"])
              for name, s in series.items() if len(s) > 1}
    step = {r["stage"]: r["bpc"] for r in series["scratch_step"][1:]}
    wins = {r["stage"]: r["bpc"] < step[r["stage"]] for r in cur[1:] if r["stage"] in step}
    flops_curr = np.cumsum([f * n for f in f_V])
    verdict = {"curriculum_below_step_matched_at_every_V": bool(wins) and all(wins.values()),
               "wins_by_stage": wins, "slopes_per_decade": slopes,
               "paper_slopes": {"curriculum": -0.147, "scratch_step": -0.109},
               "flop_saving_vs_step_matched": [
                   float(1 - flops_curr[k] / (f_V[k] * n * (k + 1))) for k in range(1, len(f_V))]}
    out = {"rows": rows, "expansions": reports, "verdict": verdict}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    with open(os.path.join(workdir, "bpc_by_token_len.json"), "w") as f:
        json.dump({str(k): v for k, v in curves.items()}, f, indent=2)
    plot(series, curves, os.path.join(workdir, "plot.png"))
    return out


def plot(series, curves, out):
    """Left: BPC vs vocabulary size (log x), every series. Right: BPC by target-token length."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rs in series.items():
        if len(rs) > 1:
            a.plot([r["V"] for r in rs], [r["bpc"] for r in rs], "o-", label=name, ms=4)
    a.set_xscale("log")
    a.set_xlabel("vocabulary size V")
    a.set_ylabel("BPC (full held-out split)")
    a.set_title("BPC vs vocabulary size")
    a.grid(alpha=0.3)
    a.legend()
    for k, c in curves.items():
        lens = sorted(c["target"])
        b.errorbar(lens, [c["target"][n][0] for n in lens], [c["target"][n][1] for n in lens],
                   fmt="o-", ms=3, capsize=2, label=f"stage {k}")
    b.set_xlabel("target token length (characters)")
    b.set_ylabel("BPC of the token's characters")
    b.set_title("BPC by token length (mean over types +- std)")
    b.grid(alpha=0.3)
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
