"""Seed-level paired intervals of every multi-seed claim in ``results/``, from the recorded JSONL.

    python -m experiments.seed_stats            # prints one markdown section per study (seconds)
    python -m experiments.seed_stats gapt_lm    # one study

Nothing is rerun: each study's raw records (``results.jsonl`` / ``raw.jsonl``) are read and every
"A vs B" comparison that a results README states is recomputed as a paired difference per seed
(same seed, same data) with a Student-t 95% interval over seeds (``lm.stats.paired_t``), and
worded ``separated`` / ``not separated`` (``lm.stats.separation``). Relative changes are per
seed, ``100 (a - b) / |b|``, so their mean is not the ratio of means the tables show. The READMEs
quote these figures; rerunning this script after a new recorded run regenerates them.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from lm.stats import fmt_interval, paired_t, separation

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def _read(*parts) -> list[dict]:
    with open(os.path.join(ROOT, *parts)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _final(recs, arm, key, split="eval") -> dict[int, float]:
    """Per seed: ``key`` at the last step of ``split`` records of ``arm``."""
    out, last = {}, {}
    for r in recs:
        if r.get("arm") == arm and r.get("split", split) == split and key in r:
            if r.get("step", 0) >= last.get(r["seed"], -1):
                last[r["seed"]], out[r["seed"]] = r.get("step", 0), r[key]
    return out


def compare(a: dict, b: dict, rel: bool = True, scale: float = 1.0) -> dict:
    """Paired per-seed difference of two ``{seed: value}`` maps (relative % when ``rel``)."""
    seeds = sorted(set(a) & set(b))
    av, bv = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    d = 100 * (av - bv) / np.abs(bv) if rel else scale * (av - bv)
    if len(d) < 2:  # a record still being filled: listed, never given an interval
        return {"seeds": seeds, "per_seed": d.tolist(), "mean": None, "lo": None, "hi": None,
                "verdict": f"{len(d)} paired seed(s): no interval"}
    m, lo, hi = paired_t(d, np.zeros_like(d))
    return {"seeds": seeds, "per_seed": d.tolist(), "mean": m, "lo": lo, "hi": hi,
            "verdict": separation(lo, hi)}


def line(name: str, c: dict, unit: str = "%") -> str:
    per = ", ".join(f"{x:+.1f}" for x in c["per_seed"])
    ci = "–" if c["mean"] is None else fmt_interval(c["mean"], c["lo"], c["hi"]) + unit
    return f"| {name} | {len(c['seeds'])} | {per} | {ci} | {c['verdict']} |"


HEAD = ("| comparison (paired per seed) | seeds | per seed | mean [95% t over seeds] | verdict |\n"
        "|---|---|---|---|---|")


def gapt_lm() -> str:
    r = _read("gapt_lm", "results.jsonl")
    short = _read("gapt_lm", "gapt_pm15_pa10", "results.jsonl")
    rows = []
    for key, lab in (("val_ce", "val CE"), ("val_mbe", "val MBE")):
        ce = _final(r, "ce", key)
        for arm, recs in (("gapt", r), ("mbe", r), ("l2", r), ("gapt p_m=15/p_a=10", short)):
            other = _final(recs, "gapt" if arm.startswith("gapt") else arm, key)
            rows.append(line(f"{arm} vs ce: {lab} change", compare(other, ce)))
    return "\n".join([HEAD, *rows])


def gapt_arithmetic() -> str:
    r = _read("gapt_arithmetic", "results.jsonl")
    rows = [line(f"gapt vs ce: {lab} change",  # evals are logged on the train records there
                 compare(_final(r, "gapt", k, "train"), _final(r, "ce", k, "train")))
            for k, lab in (("ood_answer_ce", "OOD answer CE"), ("id_answer_ce", "ID answer CE"),
                           ("id_mbe", "ID MBE"))]
    return "\n".join([HEAD, *rows])


def gapt_forgetting() -> str:
    r = _read("gapt_forgetting", "results.jsonl")

    def by(arm, k):
        return {x["seed"]: x[k] for x in r if x["arm"] == arm}
    rows = [line(f"{arm} vs base: {lab} change", compare(by(arm, k), by("base", k)))
            for arm in ("gapt", "mbe")
            for k, lab in (("pre_separation", "separation (pre)"),
                           ("ft_separation", "separation (after ft)"),
                           ("forgetting", "forgetting"))]
    return "\n".join([HEAD, *rows])


def dlr_seed_t(folder: str) -> dict[tuple[str, str], dict]:
    """Per (task, method): paired seed-level difference to SFT in accuracy points."""
    ev = [x for x in _read("dlr_arithmetic", folder, "raw.jsonl") if x.get("phase") == "eval"]
    out = {}
    for task in dict.fromkeys(x["task"] for x in ev):
        sft = {x["seed"]: x["acc_off"] for x in ev if x["task"] == task and x["method"] == "sft"}
        for method in dict.fromkeys(x["method"] for x in ev if x["task"] == task):
            if method in ("sft", "base"):
                continue
            acc = {x["seed"]: x.get("acc_route", x.get("acc_off")) for x in ev
                   if x["task"] == task and x["method"] == method}
            out[(task, method)] = compare(acc, sft, rel=False, scale=100.0)
    return out


def dlr_ablations(folder: str) -> dict[str, dict]:
    """The C=8 arm's code ablations against its routed accuracy, paired per seed (points)."""
    ev = [x for x in _read("dlr_arithmetic", folder, "raw.jsonl")
          if x.get("phase") == "eval" and x["method"] == "dlr"]
    out = {}
    for task in dict.fromkeys(x["task"] for x in ev):
        acc = {m: {x["seed"]: x[f"acc_{m}"] for x in ev if x["task"] == task}
               for m in ("route", "off", "random")}
        for m in ("off", "random"):
            out[f"{task} dlr {m} - routed"] = compare(acc[m], acc["route"], rel=False,
                                                      scale=100.0)
    return out


def dlr_arithmetic() -> str:
    parts = []
    folders = ["hidden_long", "tiny", "addsub_mid", "addsub_9k"]
    if os.path.exists(os.path.join(ROOT, "dlr_arithmetic", "smollm2", "raw.jsonl")):
        folders.append("smollm2")  # SmolLM2-135M-Instruct (experiments.dlr_record merges it)
    for folder in folders:
        rows = [line(f"{folder} {t} {m} vs sft (pp)", c, unit="")
                for (t, m), c in dlr_seed_t(folder).items()]
        rows += [line(f"{folder} {k} (pp)", c, unit="") for k, c in dlr_ablations(folder).items()]
        parts.append("\n".join([HEAD, *rows]))
    return "\n\n".join(parts)


def iga_rules() -> str:
    from experiments.iga_report import comparisons  # the report's own table (final iteration)
    out = comparisons(_read("iga_rules", "results.jsonl")).rstrip()
    if os.path.exists(os.path.join(ROOT, "iga_rules", "smollm2", "results.jsonl")):
        out += "\n\nsmollm2 (SmolLM2-135M-Instruct, LoRA; experiments.iga_record merges it)\n\n"
        out += comparisons(_read("iga_rules", "smollm2", "results.jsonl")).rstrip()
    return out


STUDIES = {"gapt_lm": gapt_lm, "gapt_arithmetic": gapt_arithmetic,
           "gapt_forgetting": gapt_forgetting, "dlr_arithmetic": dlr_arithmetic,
           "iga_rules": iga_rules}


def main(argv=None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(STUDIES)
    for n in names:
        if n not in STUDIES:
            print(f"error: study {n!r} is not one of {sorted(STUDIES)}", file=sys.stderr)
            return 2
        print(f"## {n}\n\n{STUDIES[n]()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
