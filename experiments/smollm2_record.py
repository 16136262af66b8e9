"""Record the SmolLM2 research runs (``runs/smollm2_*``) into ``results/<experiment>/smollm2/``.

    python -m experiments.smollm2_record            # seconds; rerun whenever a run finishes

The runs themselves are queued by ``results/grpo_arithmetic/smollm2/queue/`` (one job per arm and
seed: ``grpo_arithmetic --preset smollm2`` with ``exp.methods=<arm> train.seed=<s>``, and
``tdpo_pairs --preset smollm2``). For each run this copies its record folder (``config.json``,
``versions.json`` with the commit, ``metrics.jsonl``, ``table.md``, ``plot.png``) into
``results/<experiment>/smollm2/<run>/`` once it has finished, or its partial
``metrics.jsonl`` (marked in progress) while it runs, and writes ``stats.md``: per arm and seed the
base model's greedy accuracy and the last evaluated one (same evaluator, same problems), and for
arms with >= 2 seeds the seed-level Student-t interval of the change (``lm.stats``); one seed is
listed, never given an interval.

``runs/`` is not kept between machines, so a finished run's copy under ``results/`` is its record
from then on: a run whose ``runs/`` folder is gone is read back from that copy (one with
``versions.json``, i.e. finished), and an in-progress copy whose run folder is gone is left out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

from lm.stats import fmt_interval, mean_sd, separation, t_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_FILES = ("config.json", "versions.json", "provenance.json", "metrics.jsonl", "table.md",
                "plot.png")
KEYS = ("acc_heldout", "acc_long")


def _jsonl(path):
    with open(path) as fh:
        return [json.loads(x) for x in fh if x.strip()]


def _copy(src_dir, dst_dir, names):
    os.makedirs(dst_dir, exist_ok=True)
    for f in names:
        if os.path.exists(os.path.join(src_dir, f)):
            shutil.copy(os.path.join(src_dir, f), os.path.join(dst_dir, f))


def _names(runs: str, out: str) -> list[str]:
    """Run names in ``runs`` and, for runs whose folder is gone, their kept copies in ``out``."""
    found = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    return sorted(found | (set(os.listdir(out)) if os.path.isdir(out) else set()))


def _finished_copy(dst: str) -> bool:
    return all(os.path.exists(os.path.join(dst, f)) for f in ("versions.json", "metrics.jsonl"))


def grpo_runs(runs: str, out: str) -> list[dict]:
    """One row per ``smollm2_<arm>_s<seed>`` GRPO-family run: base and last eval accuracies."""
    rows = []
    for name in _names(runs, out):
        m = re.fullmatch(r"smollm2_(grpo|dr_grpo|dapo|gspo|cispo|dcpo|ppo)_s(\d+)", name)
        if not m:
            continue
        arm, seed, wd = m.group(1), int(m.group(2)), os.path.join(runs, name)
        rec, dst = os.path.join(wd, "record"), os.path.join(out, name)
        done = os.path.exists(os.path.join(rec, "metrics.jsonl"))
        if done:
            _copy(rec, dst, RECORD_FILES)
        elif not os.path.isdir(wd) and _finished_copy(dst):
            rec, wd, done = dst, dst, True  # the run folder is gone: its kept record is the source
        if done:
            recs = _jsonl(os.path.join(rec, "metrics.jsonl"))
            base = next(r for r in recs if r["method"] == "sft")
            recs = [r for r in recs if r["method"] == arm]
        elif os.path.exists(os.path.join(wd, arm, "metrics.jsonl")):
            _copy(os.path.join(wd, arm), dst, ("metrics.jsonl",))
            _copy(wd, dst, ("config.json",))
            recs = _jsonl(os.path.join(wd, arm, "metrics.jsonl"))
            base = next((r for r in recs if r["split"] == "eval" and r["step"] == 0), None)
        else:
            continue
        ev = [r for r in recs if r.get("split") == "eval"]
        trn = [r for r in recs if r.get("split") == "train"]
        if base is None or not ev:
            continue
        steps = json.load(open(os.path.join(wd, "config.json")))["train"]["steps"]
        rows.append({"arm": arm, "seed": seed, "done": done, "step": ev[-1]["step"],
                     "trained_steps": trn[-1]["step"] if trn else 0, "steps": steps,
                     **{f"base_{k}": base[k] for k in KEYS}, **{k: ev[-1][k] for k in KEYS},
                     "kl_ref": trn[-1].get("kl_ref") if trn else None,
                     "response_length": trn[-1].get("response_length") if trn else None})
    return rows


def grpo_stats(rows: list[dict]) -> str:
    lines = ["| arm | seed | state | base held-out | held-out (last eval) | base long | long (last "
             "eval) | k3 KL (last step) | resp. length |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        state = "done" if r["done"] else f"in progress (eval at step {r['step']}, trained " \
                                         f"{r['trained_steps']}/{r['steps']})"
        lines.append(f"| {r['arm']} | {r['seed']} | {state} | {r['base_acc_heldout']:.3f} | "
                     f"{r['acc_heldout']:.3f} | {r['base_acc_long']:.3f} | {r['acc_long']:.3f} | "
                     f"{(r['kl_ref'] or 0):.4f} | {(r['response_length'] or 0):.2f} |")
    out = ["\n".join(lines), ""]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        sel = [r for r in rows if r["arm"] == arm and r["done"]]
        for k in KEYS:
            d = [r[k] - r[f"base_{k}"] for r in sel]
            if len(d) >= 2:
                m, lo, hi = t_interval(d)
                out.append(f"- {arm}, {k} change over {len(d)} finished seeds: "
                           f"{mean_sd(d, '{:+.3f}')}; 95% t interval "
                           f"{fmt_interval(m, lo, hi, 100)} points: {separation(lo, hi)} from 0")
            elif d:
                out.append(f"- {arm}, {k} change (1 finished seed, no interval): {d[0]:+.3f}")
    return "\n".join(out) + "\n"


def tdpo_runs(runs: str, out: str) -> str:
    lines = []
    for name in _names(runs, out):
        if not re.fullmatch(r"smollm2_tdpo_s\d+", name):
            continue
        rec, dst = os.path.join(runs, name, "record"), os.path.join(out, name)
        pairs = os.path.join(runs, name, "pairs.json")
        if os.path.exists(os.path.join(rec, "metrics.jsonl")):
            _copy(rec, dst, RECORD_FILES)
            if os.path.exists(pairs):  # the pairs' summary, kept beside the record
                with open(os.path.join(dst, "pairs_info.json"), "w") as fh:
                    json.dump(json.load(open(pairs))["info"], fh)
        elif os.path.isdir(os.path.join(runs, name)) or not _finished_copy(dst):
            lines.append(f"### {name}: in progress (see its job log in the queue)\n")
            continue
        lines.append(f"### {name} (done)\n\n" + open(os.path.join(dst, "table.md")).read())
        info = os.path.join(dst, "pairs_info.json")
        if os.path.exists(info):
            lines.append(f"pairs: `{json.dumps(json.load(open(info)))}`\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    runs = (argv or sys.argv[1:] or [os.path.join(ROOT, "runs")])[0]
    g_out = os.path.join(ROOT, "results", "grpo_arithmetic", "smollm2")
    t_out = os.path.join(ROOT, "results", "tdpo_pairs", "smollm2")
    rows = grpo_runs(runs, g_out)
    os.makedirs(g_out, exist_ok=True)
    with open(os.path.join(g_out, "results.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    g_md = grpo_stats(rows)
    with open(os.path.join(g_out, "stats.md"), "w") as fh:
        fh.write(g_md)
    t_md = tdpo_runs(runs, t_out)
    os.makedirs(t_out, exist_ok=True)
    with open(os.path.join(t_out, "stats.md"), "w") as fh:
        fh.write(t_md + "\n")
    print(g_md + "\n" + t_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
