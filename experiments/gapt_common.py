"""Shared bits of the three GAPT experiments: the arms/seeds section, summaries, result files."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from experiments.config import Config
from lm.stats import mean_sd


@dataclasses.dataclass(frozen=True)
class ExpCfg:
    arms: tuple[str, ...] = ("ce", "gapt", "mbe", "l2")
    seeds: tuple[int, ...] = (0, 1)
    out: str = ""  # results folder (README, table, plot); "" = <workdir>/results


@dataclasses.dataclass(frozen=True)
class GaptConfig(Config):
    exp: ExpCfg = ExpCfg()


def mean_std(xs) -> str:
    """``"m ± s (each seed)"``: sample std, every seed listed up to ``lm.stats.LIST_SEEDS``."""
    out = mean_sd([x for x in xs if x is not None], "{:.4f}")
    return "n/a" if out == "-" else out


def rel_change(new, base) -> str:
    new, base = np.mean(new), np.mean(base)
    return f"{100.0 * (new - base) / abs(base):+.1f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(cfg, workdir: str, argv, *, module: str, title: str, paper: str, tab: str,
                  records: list[dict], plot) -> str:
    """The study's results folder (``exp.out`` or ``<workdir>/results``): ``plot(path)`` writes
    plot.png; then config.json, versions.json, results.jsonl (every record) and README.md
    (command, the paper's claim, the table). Prints the table; returns the folder."""
    from lm import metrics as M
    out = cfg.exp.out or os.path.join(workdir, "results")
    os.makedirs(out, exist_ok=True)
    plot(os.path.join(out, "plot.png"))
    cmd = f"python -m experiments.{module} " + " ".join(argv or [])
    readme = (f"# {title}\n\nCommand: `{cmd}`\n\nPaper claim: {paper}.\n\n{tab}\n\n"
              "![plot](plot.png)\n")
    M.write_provenance(out, cfg, argv)
    with open(os.path.join(out, "results.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write(readme)
    print(tab)
    return out
