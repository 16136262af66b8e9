"""General Dijkstra Search (GDS) for dynamic MDPs with time-varying, non-positive rewards.

    from rl import gds
    mdp = gds.DMDP(P, r, gamma)               # P[S, A, S], r[T, S, A] <= 0, gamma in [0, 1)
    res = gds.reach(mdp, s0, goal)            # optimal goal-reaching time-indexed policy
    res.value, res.policy, res.pops, res.expansions

Spec: ``shared/specs/dlr_gds.md`` §2 (paper "Dynamic Latent Routing", Yu/Su/Abdullah, Algorithm 1
and 2). ``reach``/``cover`` are the best-first search over policy prefixes: a max-heap keyed on the
exact prefix value ``V_0^{pi_{1:t}}(s0)`` (no heuristic), each entry carrying the terminal state
*distribution* of its prefix; children are every one-step decision rule restricted to the current
support; the first popped prefix whose support lies inside the goal set (reach) or contains it
(cover) is optimal because rewards are <= 0. Exact oracles (brute force, the deterministic
uniform-cost fast path, backward DP, static value iteration) live in ``rl.gds_exact``.

Choices not fixed by the source, marked as in the spec:
- [inferred, paper typo 1] The value update uses the absolute clock:
  ``v_{t+1} = v_t + gamma^t E_{s_t}[r_t(s_t, pi(s_t))]`` (the paper writes ``V_0^pi(s_t)``).
- [inferred, paper typo 2] The last table update writes the entry of the *new* support
  ``G^{pi_{1:t+1}}`` (the paper writes ``G^{pi_{1:t}}``).
- [inferred] The table ``v(s, G)`` is keyed by the support (one search = one start state; plus t
  under the default ``prune="timed"``, below) and is maintained only when pruning is on (it is
  used for nothing else). Within one expansion the children are grouped by support and each group
  updates the table once with its best value, so the table does not depend on the (arbitrary)
  enumeration order of the decision rules.
- [source] ``eps_t = r_max gamma^t / (1 - gamma)^2`` with ``r_max = max |r|``; prune a popped prefix
  when a stored support ``G_s`` with ``G_s <= G_t`` (reach) / ``G_t <= G_s`` (cover) has
  ``v_t <= v(G_s) - eps_t``. [inferred, deviation] The paper's table ignores *when* a value was
  recorded; ``prune="paper"`` implements that literally and it is UNSOUND: with S={0,1}, a0 = stay,
  a1 = switch, goal {1}, gamma=0.3, T=4 and r_t(0, .) = (0,-1), (-1,-2), (0,-2), (0,0) the optimum
  waits at 0 and switches at t=3 (value -0.3), but the prefix "at 0, t=3" is pruned against the
  table entry of {0} written at t=1 (value 0), whose own continuation costs more, and GDS returns
  -0.48 (``tests/test_gds.py``; 24 of 6000 seeded random small DMDP searches hit it). The
  default ``prune="timed"`` keys the table on (support, t), which is sound: a survivor at the same
  t with the same-or-better support loses at most ``r_max gamma^t / (1-gamma) <= eps_t`` along
  any common continuation. ``prune=None`` switches pruning off. Ties pop first-pushed first.
  [inferred] The prune also needs ``v_t < v(G_s)`` strictly: when ``eps_t`` is 0 (gamma = 0, r = 0,
  or underflow) the popped prefix's own table entry would otherwise prune it.
- [inferred] Horizons 0..T are all allowed (the empty policy is returned when ``s0`` is in the goal
  set, value 0); ``fixed_horizon=True`` accepts a prefix only at t == T (spec §2.4.3).
- [inferred] A decision rule is stored as ``{state: action}`` over the support it acted on; the
  policy is the tuple of these rules, which is all that determines its value and support.
- [not found] No complexity bound in the paper: the search is exponential in the worst case
  (``|A|^{|support|}`` children per expansion); ``max_pops`` aborts with RuntimeError.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Mode = Literal["reach", "cover"]
Prune = Literal["paper", "timed"] | None


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.setflags(write=False)
    return x


def _check_rewards(r: np.ndarray, S: int, A: int) -> None:
    if r.ndim != 3 or r.shape[1:] != (S, A) or r.shape[0] < 1:
        raise ValueError(f"r must have shape [T, S, A] = [T>=1, {S}, {A}], got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("r must be finite (found nan/inf)")
    if r.max() > 0:
        t, s, a = np.unravel_index(int(np.argmax(r)), r.shape)
        raise ValueError(f"rewards must be <= 0 (costs); r[t={t}, s={s}, a={a}] = {r.max():g}; "
                         "shift all rewards by -max(r) first")


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= float(gamma) < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")


@dataclass(frozen=True, eq=False)
class DMDP:
    """Finite dynamic MDP: time-homogeneous ``P[S, A, S]``, rewards ``r[T, S, A] <= 0``.

    The horizon ``T`` is ``r.shape[0]``: ``r[t]`` is the reward at absolute time t."""

    P: np.ndarray
    r: np.ndarray
    gamma: float

    def __post_init__(self) -> None:
        P = np.asarray(self.P, dtype=np.float64)
        r = np.asarray(self.r, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2] or min(P.shape) < 1:
            raise ValueError(f"P must have shape [S, A, S], got {P.shape}")
        if not np.all(np.isfinite(P)) or P.min() < 0:
            raise ValueError("P must be finite and non-negative")
        sums = P.sum(-1)
        if not np.allclose(sums, 1.0, atol=1e-9):
            s, a = np.unravel_index(int(np.argmax(np.abs(sums - 1))), sums.shape)
            raise ValueError(f"P[s, a, :] must sum to 1; P[{s}, {a}, :] sums to {sums[s, a]:g}")
        _check_rewards(r, P.shape[0], P.shape[1])
        _check_gamma(self.gamma)
        object.__setattr__(self, "P", _readonly(P))
        object.__setattr__(self, "r", _readonly(r))
        object.__setattr__(self, "gamma", float(self.gamma))

    S = property(lambda self: self.P.shape[0], doc="number of states")
    A = property(lambda self: self.P.shape[1], doc="number of actions")
    T = property(lambda self: self.r.shape[0], doc="horizon")

    @property
    def deterministic(self) -> bool:
        return bool(np.all((self.P == 0) | (self.P == 1)))

    def next_states(self) -> np.ndarray:
        """``nxt[S, A]`` of a deterministic MDP (ValueError otherwise)."""
        if not self.deterministic:
            raise ValueError("next_states() needs a deterministic P (entries 0 or 1)")
        return np.argmax(self.P, axis=-1)


@dataclass(frozen=True, eq=False)
class DetDMDP:
    """Deterministic dynamic MDP stored sparsely: ``nxt[S, A]`` next states, ``r[T, S, A] <= 0``."""

    nxt: np.ndarray
    r: np.ndarray
    gamma: float

    def __post_init__(self) -> None:
        nxt = np.asarray(self.nxt)
        if nxt.ndim != 2 or not np.issubdtype(nxt.dtype, np.integer):
            raise ValueError(f"nxt must be an integer array [S, A], got {nxt.dtype} {nxt.shape}")
        if nxt.size == 0 or nxt.min() < 0 or nxt.max() >= nxt.shape[0]:
            raise ValueError(f"nxt entries must be states in [0, {nxt.shape[0]})")
        r = np.asarray(self.r, dtype=np.float64)
        _check_rewards(r, *nxt.shape)
        _check_gamma(self.gamma)
        object.__setattr__(self, "nxt", _readonly(nxt.astype(np.int64)))
        object.__setattr__(self, "r", _readonly(r))
        object.__setattr__(self, "gamma", float(self.gamma))

    S = property(lambda self: self.nxt.shape[0], doc="number of states")
    A = property(lambda self: self.nxt.shape[1], doc="number of actions")
    T = property(lambda self: self.r.shape[0], doc="horizon")

    def dense(self) -> DMDP:
        P = np.zeros((self.S, self.A, self.S))
        P[np.arange(self.S)[:, None], np.arange(self.A)[None, :], self.nxt] = 1.0
        return DMDP(P, self.r, self.gamma)


Policy = tuple[dict[int, int], ...]


@dataclass(frozen=True)
class SearchResult:
    """Optimal policy (None if infeasible), its value (-inf if infeasible) and search statistics.

    ``pops``: queue pops (brute force: prefixes visited); ``expansions``: pops whose children were
    generated; ``pushes``: children generated; ``pruned``: pops discarded by the eps_t test."""

    value: float
    policy: Policy | None
    terminal: dict[int, float] = field(default_factory=dict)
    pops: int = 0
    expansions: int = 0
    pushes: int = 0
    pruned: int = 0

    @property
    def feasible(self) -> bool:
        return self.policy is not None

    @property
    def horizon(self) -> int:
        return -1 if self.policy is None else len(self.policy)

    def actions(self) -> list[int]:
        """The action sequence of a single-state (deterministic) policy."""
        assert self.policy is not None and all(len(rule) == 1 for rule in self.policy)
        return [next(iter(rule.values())) for rule in self.policy]


def goal_mask(goal, S: int) -> int:
    """Goal set (iterable of states or boolean mask of length S) -> bitmask; validated."""
    g = np.asarray(list(goal) if not isinstance(goal, np.ndarray) else goal)
    if g.dtype == bool:
        if g.shape != (S,):
            raise ValueError(f"a boolean goal mask must have shape ({S},), got {g.shape}")
        g = np.flatnonzero(g)
    if g.size == 0:
        raise ValueError("goal set is empty")
    if not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() >= S:
        raise ValueError(f"goal states must be integers in [0, {S}), got {g.tolist()}")
    return sum(1 << int(s) for s in set(g.tolist()))


def check_start(s0: int, S: int) -> int:
    if not isinstance(s0, int | np.integer) or not 0 <= int(s0) < S:
        raise ValueError(f"s0 must be a state in [0, {S}), got {s0!r}")
    return int(s0)


def feasible(G: int, goal: int, mode: Mode) -> bool:
    """Reach: support inside the goal set; cover: goal set inside the support."""
    return (G & ~goal) == 0 if mode == "reach" else (goal & ~G) == 0


def _subset(a: int, b: int) -> bool:
    return (a & ~b) == 0


def _masks(d2: np.ndarray) -> list[int]:
    bits = np.packbits(d2 > 0, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in bits]


def _rules(A: int, k: int, cache: dict) -> np.ndarray:
    if k not in cache:
        cache[k] = np.array(list(itertools.product(range(A), repeat=k)), dtype=np.int64)
    return cache[k]


def evaluate(mdp: DMDP, s0: int, policy: Policy) -> tuple[float, dict[int, float]]:
    """Value ``V_0^pi(s0)`` and terminal distribution of a time-indexed policy prefix."""
    d, v = {check_start(s0, mdp.S): 1.0}, 0.0
    for t, rule in enumerate(policy):
        if t >= mdp.T:
            raise ValueError(f"policy is longer than the horizon T={mdp.T}")
        missing = set(d) - set(rule)
        if missing:
            raise ValueError(f"rule at t={t} has no action for support states {sorted(missing)}")
        v += mdp.gamma ** t * sum(p * mdp.r[t, s, rule[s]] for s, p in d.items())
        nd: dict[int, float] = {}
        for s, p in d.items():
            for s2 in np.flatnonzero(mdp.P[s, rule[s]]):
                nd[int(s2)] = nd.get(int(s2), 0.0) + p * mdp.P[s, rule[s], s2]
        d = nd
    return v, d


def search(mdp: DMDP | DetDMDP, s0: int, goal, *, mode: Mode = "reach", prune: Prune = "timed",
           fixed_horizon: bool = False, max_pops: int | None = None) -> SearchResult:
    """GDS (spec §2.2, Algorithms 1/2) from ``s0`` to ``goal``; see module docstring."""
    if isinstance(mdp, DetDMDP):
        mdp = mdp.dense()
    if mode not in ("reach", "cover"):
        raise ValueError(f"mode must be 'reach' or 'cover', got {mode!r}")
    if prune not in ("paper", "timed", None):
        raise ValueError(f"prune must be 'paper', 'timed' or None, got {prune!r}")
    S, A, T, gamma = mdp.S, mdp.A, mdp.T, mdp.gamma
    s0, goal = check_start(s0, S), goal_mask(goal, S)
    r_max = float(np.abs(mdp.r).max())
    eps = [r_max * gamma ** t / (1 - gamma) ** 2 for t in range(T + 1)]
    below = _subset if mode == "reach" else (lambda a, b: _subset(b, a))  # "a is at least as good"
    counter, cache = itertools.count(), {}
    # heap entry: (-v, tie, t, support, parent, rule index); the child's distribution is only
    # materialised when it is expanded or returned. parent = (states, probs, grandparent, rule).
    heap: list = [(-0.0, next(counter), 0, 1 << s0, None, -1)]
    table: dict = {}          # bucket (t, or None for "paper") -> {support: best value} = v(s, G)
    bucket = (lambda t: None) if prune == "paper" else (lambda t: t)
    popped: set = set()       # R: supports already popped
    pops = expansions = pushes = pruned = 0

    def materialise(parent, i: int) -> tuple:
        if parent is None:
            return np.array([s0]), np.array([1.0]), None, None
        states, probs = parent[0], parent[1]
        rule = cache[len(states)][i]
        d = probs @ mdp.P[states, rule]
        keep = np.flatnonzero(d > 0)
        return keep, d[keep], parent, dict(zip(states.tolist(), rule.tolist()))

    while heap:
        negv, _, t, G, parent, i = heapq.heappop(heap)
        v = -negv
        pops += 1
        popped.add(G)
        if feasible(G, goal, mode) and (t == T or not fixed_horizon):
            node = materialise(parent, i)
            policy: list[dict[int, int]] = []
            n = node
            while n[2] is not None:
                policy.append(n[3])
                n = n[2]
            return SearchResult(v, tuple(reversed(policy)), dict(zip(node[0].tolist(),
                                node[1].tolist())), pops, expansions, pushes, pruned)
        if max_pops is not None and pops >= max_pops:
            raise RuntimeError(f"GDS exceeded max_pops={max_pops}")
        if t == T:
            continue
        if prune is not None and any(below(Gs, G) and v <= val - eps[t] and v < val
                                     for Gs, val in table.get(bucket(t), {}).items()):
            pruned += 1
            continue
        expansions += 1
        node = materialise(parent, i)
        states, probs = node[0], node[1]
        rules = _rules(A, len(states), cache)                             # [N, k]
        v2 = v + gamma ** t * (mdp.r[t][states[None, :], rules] @ probs)  # [N]
        d2 = np.einsum("k,nks->ns", probs, mdp.P[states[None, :], rules])  # [N, S]
        masks = _masks(d2)
        group: dict[int, float] = {}
        for j, (G2, vj) in enumerate(zip(masks, v2.tolist())):
            heapq.heappush(heap, (-vj, next(counter), t + 1, G2, node, j))
            if G2 not in group or vj > group[G2]:
                group[G2] = vj
        pushes += len(masks)
        if prune is None:
            continue
        tab = table.setdefault(bucket(t + 1), {})
        for G2, best in group.items():     # table update, typo 2 fixed: entry of the new support
            for Gs, val in tab.items():
                if best > val and Gs not in popped and below(G2, Gs):
                    tab[Gs] = best
            tab.setdefault(G2, best)
    return SearchResult(-np.inf, None, {}, pops, expansions, pushes, pruned)


def reach(mdp: DMDP | DetDMDP, s0: int, goal, *, prune: Prune = "timed",
          fixed_horizon: bool = False, max_pops: int | None = None) -> SearchResult:
    """Optimal goal-reaching policy: terminal support inside ``goal`` (Algorithm 1)."""
    return search(mdp, s0, goal, mode="reach", prune=prune, fixed_horizon=fixed_horizon,
                  max_pops=max_pops)


def cover(mdp: DMDP | DetDMDP, s0: int, goal, *, prune: Prune = "timed",
          fixed_horizon: bool = False, max_pops: int | None = None) -> SearchResult:
    """Optimal covering policy: terminal support contains ``goal`` (Algorithm 2)."""
    return search(mdp, s0, goal, mode="cover", prune=prune, fixed_horizon=fixed_horizon,
                  max_pops=max_pops)
