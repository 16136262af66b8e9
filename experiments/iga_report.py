"""Table, plot and README of an ``experiments.iga_rules`` run (mean ± sample std over seeds).

No selection on the test split: the split the arms are scored on is the test split (the run has
no validation split), so the headline is each arm's *final* iteration, fixed before looking at
the scores; the other iterations are reported beside it, never picked from. Comparisons are
paired per seed with a t interval over seeds (``lm.stats``), worded "not separated" when it
includes 0.
"""

from __future__ import annotations

import os

import numpy as np

from lm.stats import fmt_interval, mean_sd, paired_t, sample_std, separation
from rl.iga.sail import relative_improvement

PAPER = ("IGP: +73.12% relative rule alignment for Claude 3.5 Sonnet; IGA: +86.20% for "
         "Llama3-8B-Instruct, which then beats Claude 3.5 Sonnet (arXiv 2408.16667 abstract)")


def _ms(xs, seeds: bool = False) -> str:
    return mean_sd(xs, seeds=seeds)


def aggregate(rows: list[dict]) -> list[dict]:
    """One line per (arm, iteration): means/stds over seeds, relative gain over each seed's
    base student (paper convention, %)."""
    base = {r["seed"]: r["compliance"] for r in rows if r["arm"] == "base"}
    out, seen = [], []
    for r in rows:
        k = (r["arm"], r.get("iteration"))
        if k not in seen:
            seen.append(k)
    for arm, it in seen:
        rs = [r for r in rows if r["arm"] == arm and r.get("iteration") == it]
        rel = [relative_improvement(base[r["seed"]], r["compliance"]) for r in rs
               if r["seed"] in base]
        line = {"arm": arm, "iteration": it, "n_seeds": len(rs), "steps": rs[0].get("steps"),
                "compliance": _ms([r["compliance"] for r in rs], seeds=True),
                "direct": _ms([r["direct"] for r in rs]),
                "indirect": _ms([r["indirect"] for r in rs]),
                "neutral": _ms([r["neutral"] for r in rs]),
                "rel_vs_base_%": _ms(rel) if arm != "base" else "-",
                "gaps": _ms([r.get("n_gaps") for r in rs]),
                "regressions": _ms([r.get("regressions") for r in rs]),
                "diversity": _ms([r.get("diversity") for r in rs]),
                "mean": float(np.mean([r["compliance"] for r in rs])),
                "std": sample_std([r["compliance"] for r in rs]) if len(rs) > 1 else 0.0}
        src = {}
        for r in rs:
            for s, n in (r.get("sources") or {}).items():
                src[s] = src.get(s, 0) + n / max(r.get("n_pairs", 1), 1) / len(rs)
        line["sources"] = ", ".join(f"{s} {v:.2f}" for s, v in sorted(src.items()))
        out.append(line)
    return out


COLS = ("arm", "iteration", "steps", "compliance", "direct", "indirect", "neutral",
        "rel_vs_base_%", "gaps", "regressions", "diversity", "sources")


def final_iteration(rows: list[dict]) -> int:
    """The headline iteration: the last one run (chosen before scoring; never the test-best)."""
    return max(r["iteration"] for r in rows if r["arm"] == "iga")


def comparisons(rows: list[dict]) -> str:
    """Markdown table: the final-iteration IGA arm against plain SFT (equal steps from base and
    equal total steps), the IGP teacher, the base student, and each ablation; paired per seed,
    in compliance points, with a 95% t interval over seeds."""
    k = final_iteration(rows)

    def arm(a, it):
        return {r["seed"]: r["compliance"] for r in rows
                if r["arm"] == a and r.get("iteration") == it}
    teacher = next((r["compliance"] for r in rows if r["arm"] == "teacher_igp"), None)
    iga = arm("iga", k)
    pairs = [(f"iga it {k} - plain_sft it 1 (100 steps from base each)", iga, arm("plain_sft", 1)),
             (f"iga it {k} - plain_sft it {k} (equal total steps)", iga, arm("plain_sft", k)),
             (f"iga it {k} - base student", iga, arm("base", 0))]
    if teacher is not None:
        pairs.append((f"iga it {k} - teacher_igp ({teacher:.3f}, deterministic)", iga,
                      {s: teacher for s in iga}))
    pairs += [(f"{a} it {k} - iga it {k}", arm(a, k), iga)
              for a in dict.fromkeys(r["arm"] for r in rows)
              if a not in ("iga", "plain_sft", "base", "teacher_naive", "teacher_igp")]
    out = ["| comparison (paired per seed) | seeds | per seed (pp) | mean [95% t over seeds] (pp) "
           "| verdict |", "|---|---|---|---|---|"]
    for name, a, b in pairs:
        seeds = sorted(set(a) & set(b))
        if len(seeds) < 2:
            continue
        d = [100 * (a[s] - b[s]) for s in seeds]
        m, lo, hi = paired_t(d, [0.0] * len(d))
        out.append(f"| {name} | {len(seeds)} | {', '.join(f'{x:+.1f}' for x in d)} | "
                   f"{fmt_interval(m, lo, hi)} | {separation(lo, hi)} |")
    return "\n".join(out) + "\n"


def table(lines: list[dict]) -> str:
    head = "| " + " | ".join(COLS) + " |\n|" + "---|" * len(COLS) + "\n"
    return head + "".join("| " + " | ".join(str(ln.get(c, "-")) for c in COLS) + " |\n"
                          for ln in lines)


def per_scenario(rows: list[dict]) -> str:
    arms = [(a, i) for a, i in dict.fromkeys((r["arm"], r.get("iteration")) for r in rows)]
    scen = list(rows[0]["per_scenario"])
    out = "| arm | it | " + " | ".join(scen) + " |\n|" + "---|" * (len(scen) + 2) + "\n"
    for a, i in arms:
        rs = [r for r in rows if r["arm"] == a and r.get("iteration") == i]
        out += f"| {a} | {i} | " + " | ".join(_ms([r["per_scenario"][s] for r in rs])
                                             for s in scen) + " |\n"
    return out


def plot(workdir: str, lines: list[dict]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    arms = list(dict.fromkeys(ln["arm"] for ln in lines if ln["iteration"]))
    for arm in arms:
        ls = [ln for ln in lines if ln["arm"] == arm]
        x = [ln["iteration"] for ln in ls]
        m = np.array([ln["mean"] for ln in ls])
        s = np.array([ln["std"] for ln in ls])
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=arm,
                    ls="--" if arm == "plain_sft" else "-")
    for arm, c in (("base", "k"), ("teacher_naive", "tab:gray"), ("teacher_igp", "tab:red")):
        ln = next((x for x in lines if x["arm"] == arm), None)
        if ln:
            ax.axhline(ln["mean"], color=c, ls=":", label=arm)
    ax.set_xlabel("iteration (plain_sft: blocks of sft_steps)")
    ax.set_ylabel("test rule compliance (macro, exact checker)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "plot.png"), dpi=120)
    plt.close(fig)


def readme(name: str, argv, seconds: float, rows: list[dict], teacher: str = "RuleTeacher",
           verdict: str = "VERDICT_PLACEHOLDER") -> str:
    """The README text: table (mean ± sample std, each seed's compliance), the final-iteration
    headline with seed-level paired intervals, per-scenario table, plot, the paper's claim."""
    lines = aggregate(rows)
    k = final_iteration(rows)
    teacher_line = ("the scripted offline `RuleTeacher` (deterministic rule code, not an LLM), so "
                    "the paper's Claude / Llama figures below are **not comparable**"
                    if teacher == "RuleTeacher" else f"`{teacher}`")
    return (f"# IGA on five synthetic rule scenarios ({name})\n\n"
            f"Command: `python -m experiments.iga_rules {' '.join(argv or [])}` "
            f"({seconds:.0f} s on this machine).\n\n"
            f"Teacher: {teacher_line}.\n\n"
            "Test-split rule compliance by exact checkers, mean ± sample std (ddof=1) over seeds, "
            "each seed's value in brackets; `rel_vs_base_%` = (after − base)/base × 100 per seed. "
            "`sources` = fraction of SFT pairs by origin.\n\n" + table(lines) +
            f"\n## Headline: final iteration ({k}), no selection on the test split\n\n"
            "The run has no validation split, so every arm is reported at its last iteration "
            "(fixed in advance); the other iterations above are shown, not chosen from. Paired "
            "per seed, compliance points, Student-t 95% interval over seeds:\n\n"
            + comparisons(rows) + "\n## Per scenario\n\n" + per_scenario(rows) +
            f"\n![plot](plot.png)\n\nPaper (not comparable: other teacher and students): "
            f"{PAPER}.\n\n{verdict}\n")


def write_report(workdir: str, cfg, rows: list[dict], argv, seconds: float, teacher: str):
    from lm.metrics import write_atomic, write_provenance
    plot(workdir, aggregate(rows))
    write_provenance(workdir, argv=argv, allow_dirty=cfg.run.allow_dirty)
    write_atomic(os.path.join(workdir, "README.md"),
                 readme(cfg.run.name, argv, seconds, rows, teacher))
