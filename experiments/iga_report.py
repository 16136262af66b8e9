"""Table, plot and README of an ``experiments.iga_rules`` run (mean +- std over seeds)."""

from __future__ import annotations

import os

import numpy as np

from rl.iga.sail import relative_improvement

PAPER = ("IGP: +73.12% relative rule alignment for Claude 3.5 Sonnet; IGA: +86.20% for "
         "Llama3-8B-Instruct, which then beats Claude 3.5 Sonnet (arXiv 2408.16667 abstract)")


def _ms(xs) -> str:
    xs = [x for x in xs if x is not None and x == x]
    if not xs:
        return "-"
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


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
                "compliance": _ms([r["compliance"] for r in rs]),
                "direct": _ms([r["direct"] for r in rs]),
                "indirect": _ms([r["indirect"] for r in rs]),
                "neutral": _ms([r["neutral"] for r in rs]),
                "rel_vs_base_%": _ms(rel) if arm != "base" else "-",
                "gaps": _ms([r.get("n_gaps") for r in rs]),
                "regressions": _ms([r.get("regressions") for r in rs]),
                "diversity": _ms([r.get("diversity") for r in rs]),
                "mean": float(np.mean([r["compliance"] for r in rs])),
                "std": float(np.std([r["compliance"] for r in rs]))}
        src = {}
        for r in rs:
            for s, n in (r.get("sources") or {}).items():
                src[s] = src.get(s, 0) + n / max(r.get("n_pairs", 1), 1) / len(rs)
        line["sources"] = ", ".join(f"{s} {v:.2f}" for s, v in sorted(src.items()))
        out.append(line)
    return out


COLS = ("arm", "iteration", "steps", "compliance", "direct", "indirect", "neutral",
        "rel_vs_base_%", "gaps", "regressions", "diversity", "sources")


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


def write_report(workdir: str, cfg, rows: list[dict], argv, seconds: float):
    from lm.metrics import write_provenance
    lines = aggregate(rows)
    plot(workdir, lines)
    write_provenance(workdir, argv=argv)
    with open(os.path.join(workdir, "README.md"), "w") as fh:
        fh.write(f"# IGA on five synthetic rule scenarios ({cfg.run.name})\n\n"
                 f"Command: `python -m experiments.iga_rules {' '.join(argv or [])}` "
                 f"({seconds:.0f} s on this machine).\n\n"
                 "Test-split rule compliance by exact checkers, mean ± std over seeds; "
                 "`rel_vs_base_%` = (after − base)/base × 100 per seed. `sources` = fraction "
                 "of SFT pairs by origin.\n\n" + table(lines) + "\n## Per scenario\n\n" +
                 per_scenario(rows) + f"\n![plot](plot.png)\n\nPaper: {PAPER}.\n\n"
                 "VERDICT_PLACEHOLDER\n")
