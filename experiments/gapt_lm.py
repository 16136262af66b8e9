"""GAPT on language modelling: CE-only vs GAPT vs always-on MBE vs L2 (paper §4a, spec §4a).

    python -m experiments.gapt_lm --preset tiny                 # CPU, byte-level KJV, ~10 min
    python -m experiments.gapt_lm --preset tiny --set exp.seeds=0 exp.arms=ce,gapt
    python -m experiments.gapt_lm --preset gpu --set data.paths=/data/fineweb10B/fineweb_*.bin

Every arm trains the same model from the same seed on the same batches (``train.seed``) for the
same steps; only ``train.loss`` differs (ce=xent, gapt=gapt, mbe=iblm, l2=xent_l2). Each eval
also records, for every arm, the validation CE and per-block patch MBE (``val_ce``, ``val_mbe``,
``val_mbe_<i>``; β=0 so nothing is optimised there) and the cosine between ∇CE and ∇MBE on the
first validation batch (``grad_cos``, MBE = mean over the middle blocks): the paper's RQ1
memorisation-compression signal. GAPT's phase and stall counters are train metrics
(``gapt_phase`` ...). Runs go to ``<workdir>/<arm>_s<seed>/`` (resumable), the summary (README
with the table, config.json, versions.json, results.jsonl, plot.png) to ``exp.out``.

The ``gpu`` preset is the paper's GPT-2-small shape on GPT-2-tokenised FineWeb ``.bin`` shards
(``data.source=bin``, read by ``lm.data_bin``); the reference's U-net skips, value embeddings,
Muon and FlexAttention windows are not reproduced (our GPT is a plain pre-norm decoder, AdamW).
Tiny-preset GAPT patience is scaled down (p_m=50, p_a=30) as spec §7 suggests.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments.base import main, train
from experiments.config import RunCfg
from experiments.gapt_common import ExpCfg, GaptConfig, mean_std, rel_change, table, write_results
from experiments.lm_pretrain import BYTE_VOCAB
from lm.data import DataCfg
from lm.ib import IBCfg
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.sharding import ConfigError, MeshCfg
from lm.train import TrainCfg

ARM_LOSS = {"ce": "xent", "gapt": "gapt", "mbe": "iblm", "l2": "xent_l2"}
PAPER = "GAPT vs CE-only: MBE -50%, cross-entropy 4.8% better (GPT-2 small, FineWeb)"


def tiny() -> GaptConfig:
    return GaptConfig(
        model=ModelCfg(vocab_size=BYTE_VOCAB, d_model=64, n_layers=4, n_heads=4, d_ff=256,
                       max_len=128),
        opt=OptCfg(lr=3e-3, warmup=30),
        data=DataCfg(source="kjv"),
        mesh=MeshCfg(data=-1),
        train=TrainCfg(steps=250, batch_size=16, seq_len=128, eval_every=50, eval_batches=2,
                       ckpt_every=250),
        run=RunCfg(name="gapt_lm_tiny", sample_tokens=0, progress=False),
        ib=IBCfg(beta=1.0, layers="rotate", p_m=50, p_a=30),
        exp=ExpCfg(out="results/gapt_lm"),
    )


def gpu() -> GaptConfig:
    """GPT-2 small (12L/768/12H, ctx 1024, GPT-2 vocab) on FineWeb .bin shards, bf16."""
    return GaptConfig(
        model=ModelCfg(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                       max_len=1024, dtype="bfloat16"),
        opt=OptCfg(lr=6e-4, warmup=200, weight_decay=0.0),
        data=DataCfg(source="bin", paths=("data/fineweb10B/fineweb_*.bin",)),
        mesh=MeshCfg(data=-1),
        train=TrainCfg(steps=1750, batch_size=64, seq_len=1024, microbatches=4, eval_every=125,
                       eval_batches=20, ckpt_every=250),
        run=RunCfg(name="gapt_lm_gpu", sample_tokens=0),
        ib=IBCfg(beta=1.0, layers="rotate", p_m=125, p_a=75),
        exp=ExpCfg(seeds=(0,), out="results/gapt_lm_gpu"),
    )


PRESETS = {"tiny": tiny, "gpu": gpu}


def _probe_hook(cfg):
    """on_eval: validation CE + per-block MBE (β=0 iblm eval) and cos(∇CE, ∇MBE)."""
    import jax

    from lm import ib
    from lm.train import evaluate, make_eval_step
    cache = {}
    cfg0 = dataclasses.replace(cfg, ib=dataclasses.replace(cfg.ib, beta=0.0, layers="all"))

    def hook(step, state, setup, eval_batches):
        if "ev" not in cache:
            cache["ev"] = make_eval_step(ib.iblm, model=setup.graphdef, cfg=cfg0,
                                         mesh=setup.mesh)
            cache["cos"] = jax.jit(lambda p, b: ib.grad_cosine(p, b, model=setup.graphdef,
                                                               cfg=cfg))
        ev = evaluate(cache["ev"], state["params"], eval_batches)
        out = {f"val_{k}": v for k, v in ev.items() if k == "xent" or k.startswith("mbe")}
        out["val_ce"] = out.pop("val_xent")
        out.update({k: float(v) for k, v in cache["cos"](state["params"],
                                                           eval_batches[0]).items()})
        return out
    return hook


def arm_config(cfg, arm: str, seed: int):
    if arm not in ARM_LOSS:
        raise ConfigError(f"exp.arms: {arm!r} is not one of {sorted(ARM_LOSS)}")
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, loss=ARM_LOSS[arm], seed=seed),
        run=dataclasses.replace(cfg.run, name=f"{cfg.run.name}_{arm}_s{seed}"))


def summarise(runs: dict, unit: str = "byte") -> tuple[str, list[dict]]:
    """Markdown table (one row per arm, mean ± sd over seeds) and flat records; ``unit``: what
    the CE is per ("byte", or "token" with ``data.tokenizer``)."""
    records, final = [], {}
    for (arm, seed), recs in runs.items():
        for r in recs:
            records.append({"arm": arm, "seed": seed, **r})
        ev = [r for r in recs if r["split"] == "eval"][-1]
        tr = [r for r in recs if r["split"] == "train"]
        phases = [r["gapt_phase"] for r in tr if "gapt_phase" in r]
        switches = int(np.sum(np.abs(np.diff(phases)) > 0)) if phases else 0
        final.setdefault(arm, []).append((ev, np.mean(np.asarray(phases) == 2) if phases
                                          else None, switches))
    n_layers = len([k for k in next(iter(final.values()))[0][0]
                    if k.startswith("val_mbe_") and k[8:].isdigit()])
    base = final.get("ce")
    rows = []
    for arm, fs in final.items():
        ce = [f[0]["val_ce"] for f in fs]
        mbe = [f[0]["val_mbe"] for f in fs]
        rows.append([arm, len(fs), mean_std(ce), rel_change(ce, [b[0]["val_ce"] for b in base])
                     if base else "", mean_std(mbe),
                     rel_change(mbe, [b[0]["val_mbe"] for b in base]) if base else "",
                     " / ".join(f"{np.mean([f[0][f'val_mbe_{i}'] for f in fs]):.3f}"
                                for i in range(n_layers)),
                     mean_std([f[0]["grad_cos"] for f in fs]),
                     mean_std([f[1] for f in fs]) if fs[0][1] is not None else "",
                     f"{np.mean([f[2] for f in fs]):.1f}" if fs[0][1] is not None else ""])
    header = ["arm", "seeds", f"val CE (nats/{unit})", "ΔCE vs ce", "val MBE (mean blocks)",
              "ΔMBE vs ce", "per-block MBE", "cos(∇CE,∇MBE) final", "frac. steps phase 2",
              "phase switches"]
    return table(header, rows), records


def plot(runs: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = {"ce": "C0", "gapt": "C1", "mbe": "C2", "l2": "C3"}
    for (arm, seed), recs in runs.items():
        ev = [r for r in recs if r["split"] == "eval"]
        kw = dict(color=colors.get(arm), alpha=0.9 if seed == min(s for _, s in runs) else 0.45,
                  label=f"{arm}" if seed == min(s for _, s in runs) else None)
        x = [r["step"] for r in ev]
        axs[0, 0].plot(x, [r["val_ce"] for r in ev], "o-", ms=3, **kw)
        axs[0, 1].plot(x, [r["val_mbe"] for r in ev], "o-", ms=3, **kw)
        axs[1, 1].plot(x, [r["grad_cos"] for r in ev], "o-", ms=3, **kw)
        tr = [r for r in recs if r["split"] == "train" and "gapt_phase" in r]
        if tr:
            axs[1, 0].plot([r["step"] for r in tr], [r["gapt_phase"] + 0.04 * seed for r in tr],
                           lw=1, **kw)
    for ax, t in zip(axs.ravel(), ["validation CE", "validation MBE (mean over blocks)",
                                   "GAPT phase (1=memorise, 2=compress)",
                                   "cos(∇CE, ∇MBE) on a val batch"], strict=True):
        ax.set_title(t)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: GaptConfig, workdir: str, argv=None) -> dict:
    from lm import metrics as M
    hook_runs = {}
    for seed in cfg.exp.seeds:
        for arm in cfg.exp.arms:
            acfg = arm_config(cfg, arm, seed)
            wd = os.path.join(workdir, f"{arm}_s{seed}")
            train(acfg, wd, argv=argv, on_eval=_probe_hook(acfg))
            hook_runs[(arm, seed)] = M.read_jsonl(os.path.join(wd, "metrics.jsonl"))
            print(f"done {arm} seed {seed}")
    tab, records = summarise(hook_runs, "token" if cfg.data.tokenizer else "byte")
    out = write_results(cfg, workdir, argv, module="gapt_lm", title="GAPT on language modelling",
                        paper=PAPER, tab=tab, records=records,
                        plot=lambda path: plot(hook_runs, path))
    return {"table": tab, "runs": hook_runs, "out": out}


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
