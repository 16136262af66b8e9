"""GDS (rl/gds.py) against exact oracles: spec dlr_gds.md §2.4, plus input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl import gds, gds_exact, gds_grid

TOL = dict(rtol=1e-9, atol=1e-12)


def random_dmdp(seed: int, S: int, A: int, T: int, det: bool, gamma: float) -> gds.DMDP:
    rng = np.random.default_rng(seed)
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            if det:
                P[s, a, rng.integers(S)] = 1.0
            else:
                idx = rng.choice(S, int(rng.integers(1, 3)), replace=False)
                P[s, a, idx] = rng.dirichlet(np.ones(len(idx)))
    r = -rng.integers(0, 4, size=(T, S, A)) * float(rng.choice([0.1, 1.0]))
    return gds.DMDP(P, r, gamma)


def same(a: float, b: float) -> bool:
    return a == b or bool(np.isclose(a, b, **TOL))


def check_policy(mdp, s0, goal, res, mode="reach"):
    """The returned policy's recomputed value equals the reported one and it is feasible."""
    if not res.feasible:
        return
    v, d = gds.evaluate(mdp, s0, res.policy)
    assert same(v, res.value)
    assert gds.feasible(sum(1 << s for s in d), gds.goal_mask(goal, mdp.S), mode)


problems = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**31), S=st.integers(2, 5), A=st.integers(1, 3),
    gamma=st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99]), goal_seed=st.integers(0, 2**31)))


def draw(p, det: bool, T: int):
    mdp = random_dmdp(p["seed"], p["S"], p["A"], T, det, p["gamma"])
    rng = np.random.default_rng(p["goal_seed"])
    goal = rng.choice(p["S"], int(rng.integers(1, p["S"])), replace=False).tolist()
    return mdp, int(rng.integers(p["S"])), goal


@settings(max_examples=300, deadline=None)
@given(problems, st.integers(1, 6))
def test_deterministic_gds_equals_brute_force_fast_path_and_dp(p, T):
    mdp, s0, goal = draw(p, True, T)
    bf = gds_exact.brute_force(mdp, s0, goal)
    res = gds.reach(mdp, s0, goal)
    fast = gds_exact.fast_reach(mdp, s0, goal)
    dp = gds_exact.backward_dp(mdp, s0, goal)
    for other in (res, fast, dp):
        assert same(other.value, bf.value)
        check_policy(mdp, s0, goal, other)
    fixed = [f(mdp, s0, goal, fixed_horizon=True) for f in
             (gds.reach, gds_exact.brute_force, gds_exact.fast_reach, gds_exact.backward_dp)]
    assert all(same(f.value, fixed[1].value) for f in fixed)
    assert all(f.horizon in (-1, T) for f in fixed)


@settings(max_examples=250, deadline=None)
@given(problems, st.integers(1, 3), st.sampled_from(["reach", "cover"]))
def test_stochastic_gds_equals_brute_force(p, T, mode):
    mdp, s0, goal = draw(p, False, T)
    bf = gds_exact.brute_force(mdp, s0, goal, mode=mode)
    res = gds.search(mdp, s0, goal, mode=mode)
    assert same(res.value, bf.value)
    check_policy(mdp, s0, goal, res, mode)


@settings(max_examples=250, deadline=None)
@given(problems, st.integers(1, 4), st.booleans(), st.sampled_from(["reach", "cover"]))
def test_pruning_keeps_value_and_never_adds_pops(p, T, det, mode):
    mdp, s0, goal = draw(p, det, T if det else min(T, 3))
    off = gds.search(mdp, s0, goal, mode=mode, prune=None)
    on = gds.search(mdp, s0, goal, mode=mode, prune="timed")
    assert same(on.value, off.value)
    assert on.pops <= off.pops and off.pruned == 0


def test_pruning_fires_and_stays_exact_on_seeded_problems():
    fired = 0
    for seed in range(300):
        mdp = random_dmdp(seed, 4, 2, 5, seed % 2 == 0, 0.3)
        goal = [3] if seed % 3 else [2, 3]
        on = gds.reach(mdp, 0, goal)
        assert same(on.value, gds_exact.brute_force(mdp, 0, goal).value)
        fired += on.pruned > 0
    assert fired > 0, "the eps_t prune never fired: the pruning test would be vacuous"


def test_paper_literal_prune_is_unsound_on_documented_counterexample():
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 0] = 1.0   # a0 = stay, a1 = switch
    r = np.zeros((4, 2, 2))
    r[:, 0, :] = [[0, -1], [-1, -2], [0, -2], [0, 0]]
    mdp = gds.DMDP(P, r, 0.3)
    assert same(gds_exact.brute_force(mdp, 0, [1]).value, -0.3)
    timed = gds.reach(mdp, 0, [1])
    assert same(timed.value, -0.3) and timed.actions() == [0, 0, 0, 1]
    paper = gds.reach(mdp, 0, [1], prune="paper")
    assert paper.pruned == 1 and same(paper.value, -0.48)


def test_static_gap_example():
    """Paper's one-state example shifted to r <= 0: time-varying 0 beats every static policy."""
    mdp = gds.DMDP(np.ones((1, 2, 1)), [[[-1.0, 0.0]], [[0.0, -1.0]]], 0.99)
    res = gds.reach(mdp, 0, [0], fixed_horizon=True)
    assert res.value == 0.0 and res.actions() == [1, 0]
    static = gds_exact.best_static_exhaustive(mdp, 0, [0], fixed_horizon=True)
    assert same(static.value, -0.99)
    free = gds.reach(mdp, 0, [0])          # free horizon: the empty policy is already optimal
    assert free.value == 0.0 and free.policy == () and free.pops == 1


@pytest.mark.parametrize("mode", ["reach", "cover"])
def test_start_in_goal_returns_empty_policy(mode):
    mdp = random_dmdp(0, 3, 2, 3, False, 0.9)
    res = gds.search(mdp, 1, [1] if mode == "cover" else [0, 1], mode=mode)
    assert res.policy == () and res.value == 0.0 and res.pops == 1 and res.terminal == {1: 1.0}


def corridor(T: int = 6):
    grid = gds_grid.Grid(1, 3)
    cost = gds_grid.hazard_cost(grid, T, windows=[((0, 1), 1, 2)], hazard=5.0)
    return grid, gds_grid.grid_dmdp(grid, cost, 0.9, step_cost=0.1)


def test_waiting_is_found_by_gds_and_missed_by_static_policy():
    grid, mdp = corridor()
    res = gds.reach(mdp, 0, [2])
    nxt, states = mdp.next_states(), [0]
    for a in res.actions():
        states.append(int(nxt[states[-1], a]))
    assert states == [0, 0, 1, 2]                       # wait one step, then walk through
    assert same(res.value, -0.1 * (1 + 0.9 + 0.81))
    assert same(res.value, gds_exact.backward_dp(mdp, 0, [2]).value)
    pi = gds_exact.static_policy(mdp, [2])
    static = gds_exact.evaluate_static(mdp, 0, [2], pi)
    assert static.feasible and static.horizon == 2      # a static policy cannot wait
    assert same(static.value, -0.1 - 0.9 * 5.1) and static.value < res.value - 4


def test_covering_on_slippery_grid():
    grid = gds_grid.Grid(2, 3)
    cost = gds_grid.hazard_cost(grid, 2, patrols=[[(0, 1), (1, 1)]], hazard=2.0)
    mdp = gds_grid.grid_dmdp(grid, cost, 0.9, slip=0.2)
    target = [grid.idx((1, 0)), grid.idx((1, 2))]
    res = gds.cover(mdp, grid.idx((0, 1)), target)
    bf = gds_exact.brute_force(mdp, grid.idx((0, 1)), target, mode="cover")
    assert res.feasible and same(res.value, bf.value) and res.pops < bf.pops
    assert set(target) <= set(res.terminal) and len(res.policy) >= 1
    check_policy(mdp, grid.idx((0, 1)), target, res, "cover")


def test_windy_reach_matches_brute_force():
    grid = gds_grid.Grid(3, 3)
    cost = gds_grid.hazard_cost(grid, 3, patrols=[[(2, 0), (2, 2)]], windows=[((1, 1), 0, 2)])
    mdp = gds_grid.grid_dmdp(grid, cost, 0.9, slip=0.3, slip_mode="wind")
    goal = [s for s in range(grid.S) if sum(grid.cell(s)) >= 3]
    res, bf = gds.reach(mdp, 0, goal), gds_exact.brute_force(mdp, 0, goal)
    assert res.feasible and len(res.terminal) > 1 and same(res.value, bf.value)


def test_fast_path_equals_dp_on_a_larger_grid():
    grid = gds_grid.Grid(8, 8)
    rng = np.random.default_rng(3)
    patrols, windows = gds_grid.random_hazards(rng, grid, 20, 3, 6, protect=((0, 0), (7, 7)))
    det = gds_grid.grid_dmdp(grid, gds_grid.hazard_cost(grid, 20, patrols, windows), 0.95,
                             sparse=True)
    fast, dp = gds_exact.fast_reach(det, 0, [63]), gds_exact.backward_dp(det, 0, [63])
    assert fast.feasible and same(fast.value, dp.value)
    assert same(gds.evaluate(det.dense(), 0, fast.policy)[0], fast.value)


def test_grid_transitions_are_distributions():
    grid = gds_grid.Grid(3, 4, walls={(1, 1)})
    for mode in ("perpendicular", "wind"):
        P = grid.transitions(0.2, mode)
        into_wall = np.delete(P[:, :, grid.idx((1, 1))], grid.idx((1, 1)), axis=0)
        assert np.allclose(P.sum(-1), 1.0) and into_wall.sum() == 0
    assert [gds_grid.patrol_position([(0, 0), (0, 2)], t) for t in range(5)] == [
        (0, 0), (0, 1), (0, 2), (0, 1), (0, 0)]


def test_max_pops_aborts():
    with pytest.raises(RuntimeError, match="max_pops"):
        gds.reach(corridor()[1], 0, [2], max_pops=2)


@pytest.mark.parametrize("make, match", [
    (lambda: gds.DMDP(np.ones((2, 2)), np.zeros((1, 2, 2)), 0.9), r"P must have shape"),
    (lambda: gds.DMDP(np.full((2, 1, 2), 0.4), np.zeros((1, 2, 1)), 0.9), r"sum to 1"),
    (lambda: gds.DMDP(np.ones((1, 1, 1)), np.zeros((1, 2, 1)), 0.9), r"r must have shape"),
    (lambda: gds.DMDP(np.ones((1, 1, 1)), np.full((2, 1, 1), 0.5), 0.9), r"must be <= 0"),
    (lambda: gds.DMDP(np.ones((1, 1, 1)), np.full((1, 1, 1), np.nan), 0.9), r"finite"),
    (lambda: gds.DMDP(np.ones((1, 1, 1)), np.zeros((1, 1, 1)), 1.0), r"gamma must be in"),
    (lambda: gds.DetDMDP(np.array([[2]]), np.zeros((1, 1, 1)), 0.5), r"nxt entries"),
    (lambda: gds.reach(corridor()[1], 5, [2]), r"s0 must be a state"),
    (lambda: gds.reach(corridor()[1], 0, []), r"goal set is empty"),
    (lambda: gds.reach(corridor()[1], 0, [7]), r"goal states must be"),
    (lambda: gds.reach(corridor()[1], 0, np.array([True, False])), r"boolean goal mask"),
    (lambda: gds.search(corridor()[1], 0, [2], mode="near"), r"mode must be"),
    (lambda: gds.search(corridor()[1], 0, [2], prune="yes"), r"prune must be"),
    (lambda: gds_exact.fast_reach(random_dmdp(0, 3, 2, 2, False, 0.9), 0, [1]), r"determin"),
    (lambda: gds_grid.grid_dmdp(gds_grid.Grid(2, 2), np.zeros((3, 5)), 0.9), r"cost must"),
])
def test_bad_inputs_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.slow
def test_experiment_tiny_preset_runs(tmp_path):
    from experiments import gds_gridworld
    rows = gds_gridworld.main(["--preset", "tiny", "--workdir", str(tmp_path),
                               "--set", "det_seeds=1", "--set", "stoch_seeds=1"])
    assert all(row["gds_equals_brute"] for row in rows)
    for name in ("README.md", "config.json", "versions.json", "results.jsonl", "plot.png"):
        assert (tmp_path / name).exists()
