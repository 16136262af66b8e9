"""GDS node expansions and time vs brute force; deterministic fast path vs backward DP.

    .venv/bin/python benchmarks/bench_gds.py          # ~3 s on one CPU core

Part 1: general GDS (``rl.gds.reach``, default "timed" eps_t pruning) vs exhaustive enumeration
(``rl.gds_exact.brute_force``) on a 4x4 deterministic hazard grid at T=8 (5^0+...+5^7 = 97,656
prefixes expanded by brute force) and on a 4x4 windy grid at T=3. Part 2: the deterministic fast
path (uniform-cost search over (state, t)) vs vectorised backward DP on a 64x64 grid, T=128.
All numbers measured side by side in this run. The last line is the deterministic case's ratio.
"""

from __future__ import annotations

import time

import numpy as np

from rl import gds, gds_exact, gds_grid


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def same(a: float, b: float) -> bool:
    return a == b or bool(np.isclose(a, b, rtol=1e-9))


def gds_vs_brute() -> list[dict]:
    rows = []
    g = gds_grid.Grid(4, 4)
    rng = np.random.default_rng(0)
    patrols, windows = gds_grid.random_hazards(rng, g, 8, 2, 3, protect=((0, 0), (3, 3)))
    det = gds_grid.grid_dmdp(g, gds_grid.hazard_cost(g, 8, patrols, windows), 0.9)
    cases = [("det 4x4 T=8", det, [g.S - 1])]
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
    return rows


def fast_vs_dp(n: int = 64, T: int = 128) -> dict:
    g = gds_grid.Grid(n, n)
    rng = np.random.default_rng(0)
    patrols, windows = gds_grid.random_hazards(rng, g, T, 12, 300, protect=((0, 0), (n - 1, n - 1)))
    mdp = gds_grid.grid_dmdp(g, gds_grid.hazard_cost(g, T, patrols, windows), 0.99, sparse=True)
    goal = [g.S - 1]
    dp, t_dp = timed(gds_exact.backward_dp, mdp, 0, goal)
    fast, t_fast = timed(gds_exact.fast_reach, mdp, 0, goal)
    assert fast.feasible and same(fast.value, dp.value), (fast.value, dp.value)
    return dict(value=fast.value, horizon=fast.horizon, fast_pops=fast.pops,
                fast_exp=fast.expansions, fast_s=t_fast, dp_cells=(T + 1) * g.S, dp_s=t_dp,
                space=T * g.S)


def main() -> None:
    rows = gds_vs_brute()
    print("GDS vs brute force (values equal in every case)")
    print(f"{'case':<14}{'value':>9}{'GDS exp':>10}{'GDS pops':>10}{'GDS push':>10}{'GDS s':>8}"
          f"{'brute exp':>11}{'brute nodes':>13}{'brute s':>9}{'exp ratio':>11}")
    for r in rows:
        print(f"{r['case']:<14}{r['value']:>9.3f}{r['gds_exp']:>10}{r['gds_pops']:>10}"
              f"{r['gds_pushes']:>10}{r['gds_s']:>8.2f}{r['bf_exp']:>11}{r['bf_nodes']:>13}"
              f"{r['bf_s']:>9.2f}{r['bf_exp'] / max(r['gds_exp'], 1):>11.1f}")
    f = fast_vs_dp()
    print("\nDeterministic 64x64 grid, T=128 (values equal)")
    print(f"fast path (UCS over (s,t)): {f['fast_pops']} pops / {f['space']} (s,t) pairs, "
          f"{f['fast_s']:.2f} s;  backward DP: {f['dp_cells']} cells, {f['dp_s']:.3f} s;  "
          f"value {f['value']:.4f}, horizon {f['horizon']};  fast/DP time ratio "
          f"{f['fast_s'] / f['dp_s']:.1f}")
    det = rows[0]
    print(f"gds brute/gds expansions ratio: {det['bf_exp'] / max(det['gds_exp'], 1):.1f}")


if __name__ == "__main__":
    main()
