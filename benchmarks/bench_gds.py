"""GDS wall time vs backward DP over (state, time); GDS node expansions vs brute force.

    .venv/bin/python benchmarks/bench_gds.py          # ~3 s on one CPU core

Baseline: backward DP over (state, t) (``rl.gds_exact.backward_dp``, numpy-vectorised over
states), the solver a peer would use for a finite-horizon time-varying deterministic MDP.
Part 1: general GDS (``rl.gds.reach``, default "timed" eps_t pruning) vs exhaustive enumeration
(``rl.gds_exact.brute_force``) on a 4x4 deterministic hazard grid at T=8 (5^0+...+5^7 = 97,656
prefixes expanded by brute force) and on a 4x4 windy grid at T=3 (stochastic: backward DP over
(state, t) does not apply to its support-in-goal criterion; brute force is the oracle there).
Part 2: GDS's deterministic fast path (uniform-cost search over (state, t)) vs backward DP on a
64x64 grid, T=128; general GDS vs backward DP on the 4x4 deterministic case too. Each time is
the best of 3 interleaved runs. Where each wins: DP visits all (T+1) S cells in vectorised numpy
and wins on wall time whenever the whole cost table r[T, S, A] is at hand; GDS touches only the
(s, t) pairs cheaper than the optimum (fewer "cells") and is the one that handles stochastic
reach/cover goals on the terminal support. The last two lines are
``gds brute/gds expansions ratio: X.X`` (4x4 T=8) and ``gds/dp time ratio: X.XX`` (GDS fast path
/ backward DP, 64x64; > 1 means DP is faster).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from rl import gds, gds_exact, gds_grid  # noqa: E402

T_DET, N_DP, T_DP = (6, 8, 16) if SMOKE else (8, 64, 128)


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def best_of(n: int, *calls):
    """Run each ``(fn, args...)`` n times interleaved; outputs and best times, in order."""
    outs, best = [None] * len(calls), [np.inf] * len(calls)
    for _ in range(n):
        for i, (fn, *args) in enumerate(calls):
            outs[i], t = timed(fn, *args)
            best[i] = min(best[i], t)
    return outs, best


def same(a: float, b: float) -> bool:
    return a == b or bool(np.isclose(a, b, rtol=1e-9))


def gds_vs_brute() -> list[dict]:
    rows = []
    g = gds_grid.Grid(4, 4)
    rng = np.random.default_rng(0)
    patrols, windows = gds_grid.random_hazards(rng, g, T_DET, 2, 3, protect=((0, 0), (3, 3)))
    det = gds_grid.grid_dmdp(g, gds_grid.hazard_cost(g, T_DET, patrols, windows), 0.9)
    cases = [(f"det 4x4 T={T_DET}", det, [g.S - 1])]
    rng = np.random.default_rng(100)
    patrols, windows = gds_grid.random_hazards(rng, g, 3, 1, 2, protect=((0, 0),))
    wind = gds_grid.grid_dmdp(g, gds_grid.hazard_cost(g, 3, patrols, windows), 0.9, slip=0.2,
                              slip_mode="wind")
    cases.append(("wind 4x4 T=3", wind, [s for s in range(g.S) if sum(g.cell(s)) >= 3]))
    for name, mdp, goal in cases:
        res, t_gds = timed(gds.reach, mdp, 0, goal)
        bf, t_bf = timed(gds_exact.brute_force, mdp, 0, goal)
        assert same(res.value, bf.value), (name, res.value, bf.value)
        rows.append(dict(case=name, value=res.value, gds_exp=res.expansions, gds_pops=res.pops,
                         gds_pushes=res.pushes, gds_s=t_gds, bf_exp=bf.expansions,
                         bf_nodes=bf.pops, bf_s=t_bf))
    (res, dp), (t_gds, t_dp) = best_of(3, (gds.reach, det, 0, [g.S - 1]),
                                       (gds_exact.backward_dp, det, 0, [g.S - 1]))
    assert same(res.value, dp.value), (res.value, dp.value)
    rows[0].update(dp_s=t_dp, gds_best_s=t_gds)
    return rows


def fast_vs_dp(n: int = N_DP, T: int = T_DP) -> dict:
    g = gds_grid.Grid(n, n)
    rng = np.random.default_rng(0)
    patrols, windows = gds_grid.random_hazards(rng, g, T, 12, 300, protect=((0, 0), (n - 1, n - 1)))
    mdp = gds_grid.grid_dmdp(g, gds_grid.hazard_cost(g, T, patrols, windows), 0.99, sparse=True)
    goal = [g.S - 1]
    (dp, fast), (t_dp, t_fast) = best_of(3, (gds_exact.backward_dp, mdp, 0, goal),
                                         (gds_exact.fast_reach, mdp, 0, goal))
    assert fast.feasible and same(fast.value, dp.value), (fast.value, dp.value)
    return dict(value=fast.value, horizon=fast.horizon, fast_pops=fast.pops,
                fast_exp=fast.expansions, fast_s=t_fast, dp_cells=(T + 1) * g.S, dp_s=t_dp,
                space=T * g.S)


def main() -> None:
    print_machine("backward DP over (state, t) for wall time; brute-force enumeration for "
                  "expansions")
    rows = gds_vs_brute()
    print("GDS vs brute force (values equal in every case)")
    print(f"{'case':<14}{'value':>9}{'GDS exp':>10}{'GDS pops':>10}{'GDS push':>10}{'GDS s':>8}"
          f"{'brute exp':>11}{'brute nodes':>13}{'brute s':>9}{'exp ratio':>11}")
    for r in rows:
        print(f"{r['case']:<14}{r['value']:>9.3f}{r['gds_exp']:>10}{r['gds_pops']:>10}"
              f"{r['gds_pushes']:>10}{r['gds_s']:>8.2f}{r['bf_exp']:>11}{r['bf_nodes']:>13}"
              f"{r['bf_s']:>9.2f}{r['bf_exp'] / max(r['gds_exp'], 1):>11.1f}")
    d0 = rows[0]
    print(f"{d0['case']}: general GDS {d0['gds_best_s'] * 1e3:.2f} ms vs backward DP "
          f"{d0['dp_s'] * 1e3:.2f} ms (best of 3; GDS/DP {d0['gds_best_s'] / d0['dp_s']:.1f})")
    f = fast_vs_dp()
    print(f"\nDeterministic {N_DP}x{N_DP} grid, T={T_DP} (values equal)")
    print(f"fast path (UCS over (s,t)): {f['fast_pops']} pops / {f['space']} (s,t) pairs, "
          f"{f['fast_s']:.2f} s;  backward DP: {f['dp_cells']} cells, {f['dp_s']:.3f} s;  "
          f"value {f['value']:.4f}, horizon {f['horizon']};  fast/DP time ratio "
          f"{f['fast_s'] / f['dp_s']:.1f}")
    print(f"gds brute/gds expansions ratio: {d0['bf_exp'] / max(d0['gds_exp'], 1):.1f}")
    print(f"gds/dp time ratio: {f['fast_s'] / f['dp_s']:.2f}")


if __name__ == "__main__":
    main()
