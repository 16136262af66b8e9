"""Exact oracles and baselines for GDS: brute force, fast path, backward DP, static policy.

    from rl import gds, gds_exact
    gds_exact.brute_force(mdp, s0, goal)      # exhaustive over time-indexed decision rules
    gds_exact.fast_reach(mdp, s0, goal)       # deterministic: uniform-cost search over (state, t)
    gds_exact.backward_dp(mdp, s0, goal)      # deterministic: W_t = max(stop, r_t + gamma W_{t+1})
    pi = gds_exact.static_policy(mdp, goal)   # value iteration on the time-collapsed MDP
    gds_exact.evaluate_static(mdp, s0, goal, pi)

All return ``gds.SearchResult`` with the same goal semantics as ``gds.search``: the policy may stop
at any t in 0..T (at t == T only with ``fixed_horizon``) and is feasible when its terminal support
lies inside (reach) / contains (cover) the goal set. [inferred] The brute force enumerates, at every
step, all deterministic decision rules on the current support only (behaviour off the support
changes neither value nor support), written with plain dicts so that it shares no code with GDS.
[inferred] "Time-collapsed" MDP: stationary reward ``mean_t r_t(s, a)`` with goal states absorbing.
A discounted infinite-horizon criterion there prefers never reaching the goal whenever the way in
costs more than ``r/(1-gamma)`` of loitering, so the static baseline is value iteration for the
undiscounted stochastic-shortest-path problem (cost ``-mean_t r_t + delta``, delta = 1e-3
max|mean r| so that loops are never free) over proper policies (actions that keep the goal
reachable w.p. 1). Its greedy static policy is then run in the real, time-varying DMDP and
stops at the first feasible t, exactly like a GDS policy (not feasible within T => value -inf).
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from rl.gds import (
    DMDP,
    DetDMDP,
    Mode,
    SearchResult,
    check_start,
    feasible,
    goal_mask,
)


def _mask_vector(goal: int, S: int) -> np.ndarray:
    return np.array([(goal >> s) & 1 for s in range(S)], dtype=bool)


def brute_force(mdp: DMDP | DetDMDP, s0: int, goal, *, mode: Mode = "reach",
                fixed_horizon: bool = False) -> SearchResult:
    """Exhaustive search over all prefixes of decision rules on the support, lengths 0..T."""
    if isinstance(mdp, DetDMDP):
        mdp = mdp.dense()
    S, A, T, gamma = mdp.S, mdp.A, mdp.T, mdp.gamma
    s0, g = check_start(s0, S), goal_mask(goal, S)
    r = mdp.r.tolist()
    succ = [[[(int(s2), float(mdp.P[s, a, s2])) for s2 in np.flatnonzero(mdp.P[s, a])]
             for a in range(A)] for s in range(S)]
    best: list = [-np.inf, None, {}]
    stats = [0, 0, 0]  # nodes, expansions, children

    def rec(t: int, d: dict[int, float], v: float, plan: tuple) -> None:
        stats[0] += 1
        support = sum(1 << s for s in d)
        if feasible(support, g, mode) and (t == T or not fixed_horizon) and v > best[0]:
            best[:] = [v, plan, d]
        if t == T:
            return
        stats[1] += 1
        states = sorted(d)
        for acts in itertools.product(range(A), repeat=len(states)):
            stats[2] += 1
            v2 = v + gamma ** t * sum(d[s] * r[t][s][a] for s, a in zip(states, acts))
            d2: dict[int, float] = {}
            for s, a in zip(states, acts):
                for s2, p in succ[s][a]:
                    d2[s2] = d2.get(s2, 0.0) + d[s] * p
            rec(t + 1, d2, v2, plan + (dict(zip(states, acts)),))

    rec(0, {s0: 1.0}, 0.0, ())
    return SearchResult(best[0], best[1], best[2], stats[0], stats[1], stats[2], 0)


def _det(mdp: DMDP | DetDMDP) -> DetDMDP:
    return mdp if isinstance(mdp, DetDMDP) else DetDMDP(mdp.next_states(), mdp.r, mdp.gamma)


def fast_reach(mdp: DMDP | DetDMDP, s0: int, goal, *, fixed_horizon: bool = False,
               max_pops: int | None = None) -> SearchResult:
    """Deterministic GDS: uniform-cost search over (state, t) with edge cost ``-gamma^t r_t``.

    Exact because the future of a prefix depends only on (state, t): one closed entry per pair."""
    det = _det(mdp)
    S, A, T, gamma = det.S, det.A, det.T, det.gamma
    s0, g = check_start(s0, S), goal_mask(goal, S)
    nxt = det.nxt.tolist()
    heap = [(0.0, 0, s0)]            # (cost = -value, t, state)
    best = {(s0, 0): 0.0}
    parent: dict[tuple[int, int], tuple[int, int]] = {}
    closed: set[tuple[int, int]] = set()
    pops = expansions = pushes = 0
    while heap:
        c, t, s = heapq.heappop(heap)
        if (s, t) in closed:
            continue
        closed.add((s, t))
        pops += 1
        if (g >> s) & 1 and (t == T or not fixed_horizon):
            plan, key = [], (s, t)
            while key in parent:
                ps, a = parent[key]
                plan.append({ps: a})
                key = (ps, key[1] - 1)
            return SearchResult(-c, tuple(reversed(plan)), {s: 1.0}, pops, expansions, pushes)
        if max_pops is not None and pops >= max_pops:
            raise RuntimeError(f"fast_reach exceeded max_pops={max_pops}")
        if t == T:
            continue
        expansions += 1
        gt, row = gamma ** t, det.r[t, s].tolist()
        for a in range(A):
            s2, c2 = nxt[s][a], c - gt * row[a]
            pushes += 1
            if (s2, t + 1) not in closed and c2 < best.get((s2, t + 1), np.inf):
                best[(s2, t + 1)] = c2
                parent[(s2, t + 1)] = (s, a)
                heapq.heappush(heap, (c2, t + 1, s2))
    return SearchResult(-np.inf, None, {}, pops, expansions, pushes)


def backward_dp(mdp: DMDP | DetDMDP, s0: int, goal, *,
                fixed_horizon: bool = False) -> SearchResult:
    """Deterministic oracle: ``W_T = 0 on goal else -inf``,
    ``W_t(s) = max(0 if s in goal, max_a r_t(s, a) + gamma W_{t+1}(nxt[s, a]))``; value W_0(s0)."""
    det = _det(mdp)
    S, T, gamma = det.S, det.T, det.gamma
    s0, g = check_start(s0, S), goal_mask(goal, S)
    stop = np.where(_mask_vector(g, S), 0.0, -np.inf)
    disc = lambda w: np.where(np.isneginf(w), -np.inf, gamma * np.nan_to_num(w, neginf=0.0))
    W = np.empty((T + 1, S))
    W[T] = stop
    for t in range(T - 1, -1, -1):
        W[t] = (det.r[t] + disc(W[t + 1])[det.nxt]).max(1)
        if not fixed_horizon:
            W[t] = np.maximum(W[t], stop)
    stats = dict(pops=0, expansions=T * S, pushes=T * S * det.A)
    if not np.isfinite(W[0, s0]):
        return SearchResult(-np.inf, None, {}, **stats)
    plan, s = [], s0
    for t in range(T):
        q = det.r[t, s] + disc(W[t + 1])[det.nxt[s]]
        if not fixed_horizon and stop[s] >= q.max():
            break
        a = int(np.argmax(q))
        plan.append({s: a})
        s = int(det.nxt[s, a])
    return SearchResult(float(W[0, s0]), tuple(plan), {s: 1.0}, **stats)


def _expect_next(mdp: DMDP | DetDMDP, V: np.ndarray) -> np.ndarray:
    return V[mdp.nxt] if isinstance(mdp, DetDMDP) else mdp.P @ V


def static_policy(mdp: DMDP | DetDMDP, goal, *, tol: float = 1e-10,
                  max_iter: int = 100_000) -> np.ndarray:
    """Greedy static policy ``pi[S]`` of value iteration on the time-collapsed MDP (see module
    docstring): undiscounted expected total cost ``-mean_t r_t + delta`` to the absorbing goal,
    over proper policies only (actions that keep the goal reachable with probability 1)."""
    S, in_goal = mdp.S, _mask_vector(goal_mask(goal, mdp.S), mdp.S)
    mass = lambda m: _expect_next(mdp, m.astype(np.float64))           # [S, A]: P(s' in m | s, a)
    proper = np.ones(S, dtype=bool)
    while True:                        # almost-sure reachability: greatest fixed point
        allowed = mass(proper) >= 1 - 1e-12
        reach = in_goal.copy()
        while True:
            grown = reach | (proper & np.any(allowed & (mass(reach) > 0), axis=1))
            if (grown == reach).all():
                break
            reach = grown
        if (reach == proper).all():
            break
        proper = reach
    rbar = mdp.r.mean(0)
    cost = rbar - 1e-3 * max(float(np.abs(rbar).max()), 1e-12)     # delta > 0: no free loops
    V = np.where(proper, 0.0, -np.inf)
    for _ in range(max_iter):
        Q = np.where(allowed, cost + _expect_next(mdp, np.where(proper, V, 0.0)), -np.inf)
        V2 = np.where(in_goal, 0.0, np.where(proper, Q.max(1), -np.inf))
        done = np.max(np.abs(V2[proper] - V[proper]), initial=0.0) < tol
        V = V2
        if done:
            break
    Q = np.where(allowed, cost + _expect_next(mdp, np.where(proper, V, 0.0)), -np.inf)
    return np.argmax(np.where(proper[:, None], Q, rbar), axis=1)


def evaluate_static(mdp: DMDP | DetDMDP, s0: int, goal, pi: np.ndarray, *, mode: Mode = "reach",
                    fixed_horizon: bool = False) -> SearchResult:
    """Run the static policy ``pi[S]`` in the time-varying DMDP; stop at the first feasible t."""
    S, T, gamma = mdp.S, mdp.T, mdp.gamma
    s0, g = check_start(s0, S), goal_mask(goal, S)
    pi = np.asarray(pi, dtype=np.int64)
    if pi.shape != (S,) or pi.min() < 0 or pi.max() >= mdp.A:
        raise ValueError(f"pi must be [S]={S} actions in [0, {mdp.A})")
    d, v, plan = np.zeros(S), 0.0, []
    d[s0] = 1.0
    for t in range(T + 1):
        support = np.flatnonzero(d)
        if feasible(sum(1 << int(s) for s in support), g, mode) and (t == T or not fixed_horizon):
            terminal = {int(s): float(d[s]) for s in support}
            return SearchResult(v, tuple(plan), terminal, pops=t)
        if t == T:
            break
        v += gamma ** t * float(d @ mdp.r[t, np.arange(S), pi])
        plan.append({int(s): int(pi[s]) for s in support})
        if isinstance(mdp, DetDMDP):
            d = np.bincount(mdp.nxt[np.arange(S), pi], weights=d, minlength=S)
        else:
            d = d @ mdp.P[np.arange(S), pi]
    return SearchResult(-np.inf, None, {}, pops=T)


def best_static_exhaustive(mdp: DMDP | DetDMDP, s0: int, goal, *, mode: Mode = "reach",
                           fixed_horizon: bool = False, limit: int = 100_000) -> SearchResult:
    """Best static policy by enumerating all ``A^S`` of them (tiny MDPs only)."""
    if mdp.A ** mdp.S > limit:
        raise ValueError(f"A^S = {mdp.A}^{mdp.S} static policies exceed limit={limit}")
    best = SearchResult(-np.inf, None)
    for pi in itertools.product(range(mdp.A), repeat=mdp.S):
        res = evaluate_static(mdp, s0, goal, np.array(pi), mode=mode,
                              fixed_horizon=fixed_horizon)
        if res.value > best.value:
            best = res
    return best
