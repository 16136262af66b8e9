"""Tables and the headline plot of the DLR arithmetic study (pure functions of its eval records).

A record: ``{"task", "method", "seed", "correct": {mode: [0/1 per test example]}, "mi_carry",
"mi_op", "codes_used"}``; modes ``route`` (router argmax codes), ``off`` (steering scale -> 0, the
only mode of ``sft`` and ``base``) and ``random`` (uniform random codes).
"""

from __future__ import annotations

import numpy as np

from lm.stats import fmt_interval, paired_t


def _acc(recs, mode):
    rows = [r["correct"][mode] for r in recs if mode in r["correct"]]
    return np.asarray(rows, np.float64) if rows else None


def table(results: list[dict], bootstrap_ci) -> dict:
    """Per (task, method): accuracy per seed, mean, 95% CI, the ablations, delta vs SFT."""
    out, lines = {"rows": []}, []
    lines.append("| task | method | seeds | exact match (routed) | per seed | 95% CI | "
                 "scale->0 | random codes | vs SFT (pp, 95% CI over examples) | "
                 "vs SFT (pp, seed-level t 95%) | "
                 "MI(code;carry) | MI(code;op) | codes used | digit acc |")
    lines.append("|" + "---|" * 14)
    for task in dict.fromkeys(r["task"] for r in results):
        sft = _acc([r for r in results if r["task"] == task and r["method"] == "sft"], "off")
        for method in dict.fromkeys(r["method"] for r in results if r["task"] == task):
            recs = [r for r in results if r["task"] == task and r["method"] == method]
            main_mode = "route" if "route" in recs[0]["correct"] else "off"
            acc = _acc(recs, main_mode)
            mean, lo, hi = bootstrap_ci(acc)
            row = {"task": task, "method": method, "seeds": [r["seed"] for r in recs],
                   "acc": mean, "ci": [lo, hi], "per_seed": acc.mean(1).tolist()}
            for mode in ("off", "random"):
                a = _acc(recs, mode)
                row[f"acc_{mode}"] = None if a is None or main_mode == "off" else float(a.mean())
            if sft is not None and method not in ("sft", "base") and sft.shape == acc.shape:
                d = acc - sft  # paired: same test examples, same seeds
                dm, dlo, dhi = bootstrap_ci(d)
                row["delta_pp"] = [100 * dm, 100 * dlo, 100 * dhi]
                if len(recs) > 1:  # t over the per-seed paired differences
                    row["delta_pp_seed_t"] = [100 * v for v in paired_t(acc.mean(1),
                                                                        sft.mean(1))]
            for k in ("mi_carry", "mi_op", "codes_used", f"digit_{main_mode}"):
                vals = [r[k] for r in recs if k in r]
                row[k] = float(np.mean(vals)) if vals else None
            out["rows"].append(row)
            f = lambda v, fmt="{:.3f}": "–" if v is None else fmt.format(v)
            delta, dseed = row.get("delta_pp"), row.get("delta_pp_seed_t")
            lines.append(
                f"| {task} | {method} | {len(recs)} | {mean:.3f} | "
                f"{', '.join(f'{x:.3f}' for x in row['per_seed'])} | [{lo:.3f}, {hi:.3f}] | "
                f"{f(row['acc_off'])} | {f(row['acc_random'])} | "
                + ("–" if delta is None else f"{delta[0]:+.1f} [{delta[1]:+.1f}, {delta[2]:+.1f}]")
                + " | " + ("–" if dseed is None else fmt_interval(*dseed))
                + f" | {f(row['mi_carry'])} | {f(row['mi_op'])} | "
                f"{f(row['codes_used'], '{:.1f}')} | {f(row[f'digit_{main_mode}'])} |")
    out["markdown"] = "\n".join(lines) + "\n"
    return out


def plot(summary: dict, path: str):
    """Grouped bars: exact match per method (routed, scale->0, random codes) for each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in summary["rows"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in summary["rows"] if r["task"] == task]
        x = np.arange(len(rows))
        acc = np.array([r["acc"] for r in rows])
        err = np.array([[r["acc"] - r["ci"][0], r["ci"][1] - r["acc"]] for r in rows]).T
        ax.bar(x - 0.27, acc, 0.27, yerr=err, capsize=3, label="routed (95% CI)")
        for off, key, lab in ((0.0, "acc_off", "scale -> 0"), (0.27, "acc_random", "random codes")):
            vals = [np.nan if r[key] is None else r[key] for r in rows]
            ax.bar(x + off, vals, 0.27, label=lab)
        for r, xi in zip(rows, x):
            ax.scatter([xi - 0.27] * len(r["per_seed"]), r["per_seed"], s=8, c="k", zorder=3)
        ax.set_xticks(x, [r["method"] for r in rows], rotation=20)
        ax.set_ylabel("exact match")
        ax.set_title(f"{task}: post-training at equal steps")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
