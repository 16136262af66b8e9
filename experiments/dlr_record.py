"""Merge per-run directories of ``experiments.dlr_arithmetic`` into one record (seconds).

    python -m experiments.dlr_record --out results/dlr_arithmetic/smollm2 \
        /work/main/runs/dlr_smollm2/*/
    python -m experiments.seed_stats dlr_arithmetic     # seed-level intervals from its raw.jsonl

Each run dir (one process: ``--set exp.methods=dlr exp.seeds=0``, say) holds ``records.jsonl``
(one record per evaluated (task, method, seed), per-example correctness included), ``raw.jsonl``
(training curves and eval lines), ``config.json`` and ``versions.json``. The merge checks that
the runs share one config apart from ``exp.methods`` / ``exp.seeds`` / ``exp.eval_base`` (else
one ``error:`` naming the key), refuses a (task, method, seed) recorded twice, and writes into
``--out``: ``records.jsonl``, ``raw.jsonl`` (what ``experiments.seed_stats`` reads),
``config.json`` (the shared config, methods and seeds = the union), ``runs.json`` (each run's
dir, command, commit and wall time), ``summary.json``, ``table.md`` and ``plot.png``
(``experiments.dlr_arithmetic.summarize``). Rerun it whenever a queued run finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from experiments.dlr_arithmetic import read_jsonl, summarize

FREE = ("methods", "seeds", "eval_base")  # exp keys that differ between the runs of one record


def _shared(cfg: dict) -> dict:
    return {**cfg, "exp": {k: v for k, v in cfg["exp"].items() if k not in FREE},
            "run": {k: v for k, v in cfg.get("run", {}).items() if k != "overwrite"}}


def merge(run_dirs: list[str], out: str) -> dict:
    cfgs, records, raw, runs = [], [], [], []
    for d in run_dirs:
        path = os.path.join(d, "config.json")
        if not os.path.exists(os.path.join(d, "records.jsonl")) or not os.path.exists(path):
            print(f"skip {d}: no records.jsonl/config.json (not started)", file=sys.stderr)
            continue
        with open(path) as fh:
            cfgs.append(json.load(fh))
        recs = read_jsonl(os.path.join(d, "records.jsonl"))
        records += recs
        raw += read_jsonl(os.path.join(d, "raw.jsonl"))
        ver = os.path.join(d, "versions.json")
        prov = json.load(open(ver)) if os.path.exists(ver) else {}
        runs.append({"dir": os.path.abspath(d), "argv": prov.get("argv"),
                     "commit": prov.get("git_commit", prov.get("commit")),
                     "runs": [[r["task"], r["method"], r["seed"], r.get("wall_s")]
                              for r in recs]})
    if not cfgs:
        raise ValueError("no run directory with records.jsonl")
    ref = _shared(cfgs[0])
    for d, c in zip(run_dirs, cfgs):
        if _shared(c) != ref:
            diff = [k for k in set(ref) | set(_shared(c)) if ref.get(k) != _shared(c).get(k)]
            raise ValueError(f"{d}: config differs from the first run at {diff}")
    keys = [(r["task"], r["method"], r["seed"]) for r in records]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"recorded twice: {dup}")
    order = {m: i for i, m in enumerate(("base", "sft", "dlr"))}
    records.sort(key=lambda r: (r["task"], order.get(r["method"], 9), r["method"], r["seed"]))
    os.makedirs(out, exist_ok=True)
    cfg = dict(cfgs[0])
    cfg["exp"] = {**cfg["exp"], "methods": sorted({m for c in cfgs for m in c["exp"]["methods"]}),
                  "seeds": sorted({s for c in cfgs for s in c["exp"]["seeds"]})}
    for name, rows in (("records.jsonl", records), ("raw.jsonl", raw)):
        with open(os.path.join(out, name), "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    for name, obj in (("config.json", cfg), ("runs.json", runs)):
        with open(os.path.join(out, name), "w") as fh:
            json.dump(obj, fh, indent=2)
    wall = sum(r.get("wall_s") or 0.0 for r in records)
    return summarize(records, out, wall)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="record folder (results/...)")
    p.add_argument("runs", nargs="+", help="run directories")
    a = p.parse_args(argv)
    try:
        s = merge(a.runs, a.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(s["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
