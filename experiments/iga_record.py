"""Merge per-seed run directories of ``experiments.iga_rules`` into one record (seconds).

    python -m experiments.iga_record --out results/iga_rules/smollm2 /work/main/runs/iga_smollm2_s*/
    python -m experiments.seed_stats iga_rules         # seed-level intervals from results.jsonl

Each run dir (one process per seed: ``--set iga.first_seed=1 iga.seeds=1``) holds
``results.jsonl`` (teacher rows + that seed's rows; written when the process ends) or, for a run
still going, ``seed_rows.jsonl`` (each finished seed's rows). The runs must share one config apart
from ``iga.first_seed`` / ``iga.seeds`` (else one ``error:``); a seed recorded twice is refused.
Writes into ``--out``: ``results.jsonl`` (teacher rows once, then every seed's rows),
``config.json`` (the shared config), ``runs.json`` (dirs, commands, commits), ``report.md`` (the
table, per-seed comparisons and verdict of ``experiments.iga_report``) and ``plot.png``. The
hand-written ``README.md`` of the record is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from experiments.iga_report import aggregate, plot, readme
from lm.metrics import write_atomic
from rl.iga.sail import read_jsonl, write_jsonl_atomic

FREE = ("first_seed", "seeds")


def _shared(cfg: dict) -> dict:
    return {**cfg, "iga": {k: v for k, v in cfg["iga"].items() if k not in FREE}}


def merge(run_dirs: list[str], out: str) -> list[dict]:
    cfgs, teacher, rows, runs = [], None, [], []
    for d in run_dirs:
        res, part = os.path.join(d, "results.jsonl"), os.path.join(d, "seed_rows.jsonl")
        if not os.path.exists(os.path.join(d, "config.json")):
            print(f"skip {d}: no config.json (not started)", file=sys.stderr)
            continue
        recs = read_jsonl(res) if os.path.exists(res) else read_jsonl(part)
        seed_rows = [r for r in recs if r.get("seed") is not None]
        if not seed_rows:
            print(f"skip {d}: no finished seed yet", file=sys.stderr)
            continue
        cfgs.append(json.load(open(os.path.join(d, "config.json"))))
        teacher = teacher or [r for r in recs if r.get("seed") is None] or None
        rows += seed_rows
        ver = os.path.join(d, "provenance.json")
        prov = json.load(open(ver)) if os.path.exists(ver) else {}
        runs.append({"dir": os.path.abspath(d), "argv": prov.get("argv"),
                     "git": prov.get("git"), "seeds": sorted({r["seed"] for r in seed_rows})})
    if not cfgs:
        raise ValueError("no run directory with a finished seed")
    for d, c in zip(run_dirs, cfgs):
        if _shared(c) != _shared(cfgs[0]):
            diff = [k for k in c["iga"] if c["iga"][k] != cfgs[0]["iga"].get(k)]
            raise ValueError(f"{d}: config differs from the first run (iga keys {diff})")
    seeds = [s for r in runs for s in r["seeds"]]
    if len(seeds) != len(set(seeds)):
        raise ValueError(f"a seed is recorded twice: {sorted(seeds)}")
    rows = (teacher or []) + sorted(rows, key=lambda r: r["seed"])
    os.makedirs(out, exist_ok=True)
    write_jsonl_atomic(os.path.join(out, "results.jsonl"), rows)
    cfg = {**cfgs[0], "iga": {**cfgs[0]["iga"], "first_seed": min(seeds), "seeds": len(seeds)}}
    for name, obj in (("config.json", cfg), ("runs.json", runs)):
        with open(os.path.join(out, name), "w") as fh:
            json.dump(obj, fh, indent=2)
    plot(out, aggregate(rows))
    argv = [f"experiments.iga_record --out {out}"] + [r["dir"] for r in runs]
    write_atomic(os.path.join(out, "report.md"),
                 readme(cfg.get("run", {}).get("name", "iga_rules"), argv, 0.0, rows,
                        "RuleTeacher (offline)"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="record folder (results/...)")
    p.add_argument("runs", nargs="+", help="run directories (one per seed)")
    a = p.parse_args(argv)
    try:
        rows = merge(a.runs, a.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.out}: {len(rows)} rows; report.md, plot.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
