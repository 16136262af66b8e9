"""GDS on grid worlds with moving hazards and time-windowed costs: optimum, static gap, expansions.

    python -m experiments.gds_gridworld --preset tiny     # ~3 s on one CPU core
    python -m experiments.gds_gridworld --preset full     # ~15 s on one CPU core
    python -m experiments.gds_gridworld --preset tiny --set det_seeds=5 --workdir /tmp/gds

Cases: a corridor and a walled gate whose hazard is on for a time window (waiting is optimal),
random deterministic grids with patrolling hazards and windows, windy (slippery) grids with a goal
region (reach), and a perpendicular-slip grid (cover). For each: GDS (``rl.gds``) vs the
brute-force optimum over time-indexed decision rules, the deterministic fast path and backward DP,
and a static baseline: the greedy policy of value iteration on time-averaged costs (the
time-collapsed MDP), run in the real DMDP (a heuristic, not the best static policy).
Writes README.md (command, table, verdict), config.json, versions.json, results.jsonl, plot.png
to ``--workdir`` (default ``results/gds_gridworld``). Self-contained CLI (no experiments.base).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from rl import gds, gds_exact, gds_grid


@dataclass(frozen=True)
class Cfg:
    preset: str = "tiny"
    gamma: float = 0.9
    hazard: float = 5.0
    step_cost: float = 0.1
    det_size: int = 4
    det_T: int = 7
    det_seeds: int = 3
    stoch_size: int = 4
    stoch_T: int = 3
    stoch_seeds: int = 2
    slip: float = 0.2
    allow_dirty: bool = False  # record into results/ from a tree with uncommitted changes


PRESETS = {"tiny": Cfg(), "full": Cfg(preset="full", det_T=8, det_seeds=10, stoch_seeds=8)}


def cases(cfg: Cfg):
    """Yield (name, kind, mode, grid, cost, mdp, s0, goal)."""
    g = gds_grid.Grid(1, 4)
    cost = gds_grid.hazard_cost(g, 6, windows=[((0, 1), 1, 3)], hazard=cfg.hazard)
    yield "corridor-window", "det", "reach", g, cost, 0, [3]
    g = gds_grid.Grid(3, 3, walls={(1, 0), (1, 2)})
    cost = gds_grid.hazard_cost(g, 6, windows=[((1, 1), 1, 3)], hazard=cfg.hazard)
    yield "gate-window", "det", "reach", g, cost, g.idx((0, 0)), [g.idx((2, 2))]
    n = cfg.det_size
    for seed in range(cfg.det_seeds):
        g = gds_grid.Grid(n, n)
        rng = np.random.default_rng(seed)
        patrols, windows = gds_grid.random_hazards(rng, g, cfg.det_T, 2, 3,
                                                   protect=((0, 0), (n - 1, n - 1)))
        cost = gds_grid.hazard_cost(g, cfg.det_T, patrols, windows, cfg.hazard)
        yield f"det-{n}x{n}-s{seed}", "det", "reach", g, cost, 0, [g.S - 1]
    n = cfg.stoch_size
    for seed in range(cfg.stoch_seeds):
        g = gds_grid.Grid(n, n)
        rng = np.random.default_rng(100 + seed)
        patrols, windows = gds_grid.random_hazards(rng, g, cfg.stoch_T, 1, 2, protect=((0, 0),))
        cost = gds_grid.hazard_cost(g, cfg.stoch_T, patrols, windows, cfg.hazard)
        goal = [s for s in range(g.S) if sum(g.cell(s)) >= n - 1]
        yield f"wind-{n}x{n}-s{seed}", "wind", "reach", g, cost, 0, goal
    g = gds_grid.Grid(2, 3)
    cost = gds_grid.hazard_cost(g, 2, patrols=[[(0, 1), (1, 1)]], hazard=cfg.hazard)
    yield "slip-cover-2x3", "slip", "cover", g, cost, g.idx((0, 1)), [g.idx((1, 0)), g.idx((1, 2))]


def run_case(cfg: Cfg, name, kind, mode, grid, cost, s0, goal) -> dict:
    slip = 0.0 if kind == "det" else cfg.slip
    mdp = gds_grid.grid_dmdp(grid, cost, cfg.gamma, step_cost=cfg.step_cost, slip=slip,
                             slip_mode="wind" if kind == "wind" else "perpendicular")
    t0 = time.perf_counter()
    res = gds.search(mdp, s0, goal, mode=mode)
    t1 = time.perf_counter()
    bf = gds_exact.brute_force(mdp, s0, goal, mode=mode)
    t2 = time.perf_counter()
    static = (gds_exact.evaluate_static(mdp, s0, goal, gds_exact.static_policy(mdp, goal))
              if mode == "reach" else None)           # the static baseline is a reach planner
    row = dict(case=name, kind=kind, mode=mode, S=grid.S, T=mdp.T, gamma=cfg.gamma,
               gds_value=res.value, brute_value=bf.value,
               static_value=None if static is None else static.value,
               gds_equals_brute=bool(res.value == bf.value or np.isclose(res.value, bf.value)),
               gds_pops=res.pops, gds_expansions=res.expansions, gds_pushes=res.pushes,
               gds_pruned=res.pruned, brute_nodes=bf.pops, brute_expansions=bf.expansions,
               gds_s=t1 - t0, brute_s=t2 - t1, horizon=res.horizon, policy=None, path=None)
    row["static_gap"] = (res.value - static.value) if res.feasible and static else None
    if res.feasible:
        row["policy"] = [{str(s): gds_grid.NAMES[a] for s, a in rule.items()}
                         for rule in res.policy]
    if kind == "det" and res.feasible:
        row["fast_value"] = gds_exact.fast_reach(mdp, s0, goal).value
        row["dp_value"] = gds_exact.backward_dp(mdp, s0, goal).value
        nxt, path = mdp.next_states(), [s0]
        for a in res.actions():
            path.append(int(nxt[path[-1], a]))
        row["path"] = path
        row["waits"] = sum(a == b for a, b in zip(path, path[1:]))
    else:
        row["waits"] = None
    return row


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "infeasible" if x == -np.inf else "inf" if x == np.inf else f"{x:.3f}"
    return str(x)


def table(rows: list[dict]) -> str:
    head = ("| case | mode | T | GDS value | brute value | static value | static gap | waits "
            "| GDS exp. | brute exp. | brute/GDS | GDS s | brute s |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        ratio = r["brute_expansions"] / max(r["gds_expansions"], 1)
        lines.append("| " + " | ".join(fmt(x) for x in (
            r["case"], r["mode"], r["T"], r["gds_value"], r["brute_value"], r["static_value"],
            r["static_gap"], r["waits"], r["gds_expansions"], r["brute_expansions"],
            f"{ratio:.1f}", f"{r['gds_s']:.2f}", f"{r['brute_s']:.2f}")) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], frames: tuple, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    name, grid, cost, states, goal = frames
    n = len(states)
    fig = plt.figure(figsize=(max(2.0 * n, 8), 6.5))
    gs = fig.add_gridspec(2, n, height_ratios=(1, 1.4))
    for t, s in enumerate(states):
        ax = fig.add_subplot(gs[0, t])
        img = np.zeros((grid.h, grid.w, 3)) + 1.0
        for c in range(grid.S):
            i, j = grid.cell(c)
            if (i, j) in grid.walls:
                img[i, j] = 0.3
            elif t < len(cost) and cost[t, c] > 0:
                img[i, j] = (1.0, 0.55, 0.5)
            elif c in goal:
                img[i, j] = (0.7, 0.95, 0.7)
        ax.imshow(img)
        i, j = grid.cell(s)
        ax.plot(j, i, "o", color="navy", ms=12)
        ax.set_title(f"t={t}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.5, 0.93, f"{name}: GDS optimal path (blue), hazards red, goal green", ha="center")
    ax = fig.add_subplot(gs[1, :])
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["brute_expansions"] for r in rows], 0.4, label="brute force")
    ax.bar(x + 0.2, [max(r["gds_expansions"], 1) for r in rows], 0.4, label="GDS")
    ax.set_yscale("log")
    ax.set_xticks(x, [r["case"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("node expansions")
    ax.legend()
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> tuple[Cfg, str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--workdir", default=os.path.join("results", "gds_gridworld"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg, fields = PRESETS[args.preset], {f.name: f for f in dataclasses.fields(Cfg)}
    for item in args.set:
        key, sep, val = item.partition("=")
        key = {"run.allow_dirty": "allow_dirty"}.get(key, key)  # the name other runs use
        if not sep or key not in fields or key == "preset":
            p.error(f"--set {item!r}: unknown key; allowed: {sorted(set(fields) - {'preset'})}")
        try:
            typ = type(getattr(cfg, key))
            if typ is bool and val.lower() not in ("true", "false", "1", "0"):
                raise ValueError(val)
            cfg = dataclasses.replace(cfg, **{key: val.lower() in ("true", "1") if typ is bool
                                              else typ(val)})
        except ValueError:
            p.error(f"--set {key}={val!r}: expected {type(getattr(cfg, key)).__name__}")
    return cfg, args.workdir


def main(argv: list[str] | None = None) -> list[dict]:
    from lm.metrics import check_clean, write_provenance
    cfg, workdir = parse(argv)
    check_clean(workdir, cfg.allow_dirty)  # before any work: a refused record writes nothing
    os.makedirs(workdir, exist_ok=True)
    rows, frames = [], None
    for name, kind, mode, grid, cost, s0, goal in cases(cfg):
        row = run_case(cfg, name, kind, mode, grid, cost, s0, goal)
        rows.append(row)
        print(f"{name:>16}: GDS {fmt(row['gds_value'])} brute {fmt(row['brute_value'])} "
              f"static {fmt(row['static_value'])} exp {row['gds_expansions']}/"
              f"{row['brute_expansions']}", flush=True)
        if row["path"] and row["waits"] and (frames is None or grid.h > 1):
            frames = (name, grid, cost, row["path"], set(goal))
    with open(os.path.join(workdir, "results.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")
    write_provenance(workdir, cfg, argv, allow_dirty=cfg.allow_dirty)
    if frames is not None:
        plot(rows, frames, os.path.join(workdir, "plot.png"))
    with open(os.path.join(workdir, "README.md"), "w") as f:
        f.write(readme(cfg, rows, argv))
    print(table(rows))
    return rows


WHERE_EACH_WINS = (
    "GDS vs backward DP: on the deterministic grids the solver a peer would use is backward DP "
    "over (state, t) (`rl.gds_exact.backward_dp`), and it wins on wall time: it fills all "
    "(T+1)·S cells, but vectorised, while GDS's fast path (uniform-cost search over (s, t)) "
    "pops fewer cells (only those cheaper than the optimum) one at a time in Python; "
    "`benchmarks/bench_gds.py` measures both on a 64x64 grid, T=128 (`gds/dp time ratio` in "
    "the top-level README's benchmark table). GDS is the method for the stochastic cases: "
    "their criterion is on the whole terminal support (one stopping time for every outcome; "
    "for cover, the support must contain the goal set), which does not decompose over "
    "(state, t), so backward DP does not apply there and brute force is the oracle.")


def readme(cfg: Cfg, rows: list[dict], argv: list[str] | None) -> str:
    cmd = "python -m experiments.gds_gridworld " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    feas = [r for r in rows if r["gds_value"] > -np.inf]
    cmp = [r for r in feas if r["static_gap"] is not None]
    gaps = [r for r in cmp if r["static_gap"] > 1e-9]
    waits = [r for r in rows if r["waits"]]
    ratios = [r["brute_expansions"] / max(r["gds_expansions"], 1) for r in rows]
    ok = all(r["gds_equals_brute"] for r in rows) and all(
        np.isclose(r["fast_value"], r["gds_value"]) and np.isclose(r["dp_value"], r["gds_value"])
        for r in rows if "fast_value" in r)
    verdict = (
        f"GDS {'matched' if ok else 'DID NOT match'} the brute-force optimum (and, on "
        f"deterministic grids, the fast path and backward DP) on {len(rows)} cases "
        f"({len(feas)} feasible). "
        f"The static baseline (greedy value iteration on time-averaged costs) was strictly "
        f"worse on {len(gaps)}/{len(cmp)} feasible reach cases "
        f"(infeasible counts as worse); the optimal deterministic path waits on {len(waits)} cases "
        f"({', '.join(r['case'] for r in waits) or 'none'}). Brute/GDS expansions: median "
        f"{np.median(ratios):.1f}x, range {min(ratios):.1f}-{max(ratios):.1f}x. GDS pushes every "
        "child, so its *pushes* can approach brute force's node count; its saving is in "
        "expansions.")
    return (f"# GDS on grid worlds ({cfg.preset})\n\nCommand: `{cmd}`\n\n"
            f"Config: `{json.dumps(dataclasses.asdict(cfg))}`\n\n{table(rows)}\n\n"
            f"Static value: greedy policy of value iteration on the time-collapsed MDP "
            f"(mean_t r_t; rl/gds_exact.py), run in the real DMDP; static gap = GDS - static "
            f"(inf: the static policy is not in the goal set within T; '-': cover case, "
            f"no static baseline). Expansions: pops whose children were generated; brute force "
            f"expands every prefix shorter than T.\n\n"
            f"![plot](plot.png)\n\n## Verdict\n\n{verdict}\n\n{WHERE_EACH_WINS}\n")


if __name__ == "__main__":
    import sys

    from lm.sharding import ConfigError
    try:
        main()
    except ConfigError as e:  # e.g. recording into results/ from a dirty tree
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
